//! Reading the log's files line by line into a [`Report`].
//!
//! A line is held only while it is parsed, and a line longer than
//! [`LINE_MAX`] is skipped without being held (a gateway line is at most
//! a few KiB: its text fields are cut at 1 KiB), so a file without
//! newlines cannot make the reader hold it whole.

use std::{
    fs::File,
    io::{self, BufRead, BufReader, Read},
};

use flate2::read::MultiGzDecoder;
use indicatif::{ProgressBar, ProgressStyle};

use super::{
    aggregate::{FileRead, Report},
    files::Source,
    filter::Filter,
    record::{self, Parsed},
};

/// Longest line read, in bytes.
pub const LINE_MAX: usize = 64 * 1024;

/// One line, or the news that one was too long.
#[derive(Debug, PartialEq, Eq)]
pub enum Line<'a> {
    Text(&'a [u8]),
    TooLong,
}

/// Splits a reader into lines of at most `max` bytes.
pub struct LineReader<R> {
    inner: R,
    buf: Vec<u8>,
    max: usize,
}

impl<R: BufRead> LineReader<R> {
    pub fn new(inner: R, max: usize) -> Self {
        Self {
            inner,
            buf: Vec::new(),
            max,
        }
    }

    /// Bytes the line buffer holds room for (tests check a long line
    /// was not kept).
    pub fn capacity(&self) -> usize {
        self.buf.capacity()
    }

    /// The next line without its newline; `None` at the end.
    pub fn next_line(&mut self) -> io::Result<Option<Line<'_>>> {
        self.buf.clear();
        let mut any = false;
        let mut too_long = false;
        loop {
            let avail = match self.inner.fill_buf() {
                Ok(b) => b,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            if avail.is_empty() {
                if !any {
                    return Ok(None);
                }
                break;
            }
            any = true;
            let newline = avail.iter().position(|&b| b == b'\n');
            let chunk = &avail[..newline.unwrap_or(avail.len())];
            if !too_long {
                if self.buf.len() + chunk.len() > self.max {
                    too_long = true;
                    self.buf = Vec::new();
                } else {
                    self.buf.extend_from_slice(chunk);
                }
            }
            let used = newline.map_or(avail.len(), |i| i + 1);
            self.inner.consume(used);
            if newline.is_some() {
                break;
            }
        }
        if too_long {
            return Ok(Some(Line::TooLong));
        }
        let line = self.buf.strip_suffix(b"\r").unwrap_or(&self.buf);
        Ok(Some(Line::Text(line)))
    }
}

/// A bar on stderr, by bytes read from disk.
pub fn progress_bar(total: u64) -> ProgressBar {
    let bar = ProgressBar::new(total);
    if let Ok(style) = ProgressStyle::with_template(
        "{spinner} reading the audit log {wide_bar} {bytes}/{total_bytes} ({eta})",
    ) {
        bar.set_style(style);
    }
    bar
}

/// Reads one file into `report`; an error stops this file (noted in the
/// report) but not the run.
pub fn read_source(source: &Source, filter: &Filter, report: &mut Report, progress: &ProgressBar) {
    let mut done = FileRead {
        path: source.path.clone(),
        gz: source.gz,
        lines: 0,
        error: None,
    };
    match File::open(&source.path) {
        Err(e) => done.error = Some(format!("cannot open: {e}")),
        Ok(file) => {
            let counted = progress.wrap_read(file);
            let reader: Box<dyn Read> = if source.gz {
                Box::new(MultiGzDecoder::new(BufReader::new(counted)))
            } else {
                Box::new(counted)
            };
            let mut lines = LineReader::new(BufReader::with_capacity(256 * 1024, reader), LINE_MAX);
            if let Err(e) = fold(&mut lines, filter, report, &mut done.lines) {
                done.error = Some(format!("stopped after {} lines: {e}", done.lines));
            }
        }
    }
    report.files.push(done);
}

/// Folds every line of `lines` into `report`.
pub fn fold<R: BufRead>(
    lines: &mut LineReader<R>,
    filter: &Filter,
    report: &mut Report,
    count: &mut u64,
) -> io::Result<()> {
    while let Some(line) = lines.next_line()? {
        *count += 1;
        report.lines.read += 1;
        let text = match line {
            Line::TooLong => {
                report.lines.too_long += 1;
                continue;
            }
            Line::Text(t) if t.iter().all(u8::is_ascii_whitespace) => continue,
            Line::Text(t) => t,
        };
        match record::parse(text) {
            Parsed::NotUnderstood => report.lines.not_understood += 1,
            Parsed::NoDevice => report.lines.no_device += 1,
            Parsed::Gateway(ts) => {
                if filter.in_window(ts) {
                    report.lines.gateway += 1;
                } else {
                    report.lines.outside_window += 1;
                }
            }
            Parsed::Device(o) => {
                if !filter.in_window(o.ts) {
                    report.lines.outside_window += 1;
                } else if !filter.wants_device(o.device) {
                    report.lines.other_devices += 1;
                } else {
                    report.add(*o);
                }
            }
        }
    }
    Ok(())
}
