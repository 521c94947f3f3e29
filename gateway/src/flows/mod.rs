//! `gateway flows`: what each device reached and what it was refused, read
//! from the audit log (and its rotated files, gzipped or not).
//!
//! Built for a security team's question, "which device reached what, and
//! what did it try that was refused", on logs of any size: the files are
//! read line by line and folded into per-device tables whose keys are
//! bounded ([`aggregate::Limits`]), so memory follows the number of
//! distinct (device, destination) pairs, never the size of the log. A
//! device that makes up a new name per query fills its own "other" row,
//! not the reader's memory. A line that is not an audit record is
//! counted and skipped.
//!
//! Output: aligned text tables ([`render_text`]), one JSON document
//! ([`json`], field names documented in the README), or one self-contained
//! HTML page with a picture of devices and destinations
//! ([`render_html`]).

pub mod aggregate;
pub mod files;
pub mod filter;
pub mod json;
pub mod read;
pub mod record;
pub mod render_html;
pub mod render_text;

use std::{io::IsTerminal as _, path::PathBuf};

use anyhow::Context as _;

use crate::config::Config;

/// The command line of `gateway flows`.
#[derive(clap::Args, Debug, Clone)]
pub struct FlowsArgs {
    /// The gateway's configuration; its `audit.path` is the log read.
    #[arg(long, short)]
    pub config: PathBuf,
    /// Read this log (and its rotated files) instead of `audit.path`.
    #[arg(long, value_name = "PATH")]
    pub log: Option<PathBuf>,
    /// Only records at or after this time: a duration back from now
    /// (`1h`, `30min`, `2days`) or an RFC 3339 time.
    #[arg(long, value_name = "WHEN")]
    pub since: Option<String>,
    /// Only records before this time (same forms as `--since`).
    #[arg(long, value_name = "WHEN")]
    pub until: Option<String>,
    /// Only devices in this prefix (`10.0.3.0/24`, `fd00:3::/64` or one
    /// address); repeat for several.
    #[arg(long = "device", value_name = "CIDR")]
    pub devices: Vec<String>,
    /// Show only what was refused.
    #[arg(long)]
    pub denied: bool,
    /// Print one JSON document instead of text.
    #[arg(long)]
    pub json: bool,
    /// Also write a self-contained HTML page (tables and a picture) here.
    #[arg(long, value_name = "FILE")]
    pub html: Option<PathBuf>,
}

/// Runs `gateway flows`: reads, aggregates, prints (and writes the page).
pub fn run(config: &Config, args: &FlowsArgs) -> anyhow::Result<()> {
    let now = time::OffsetDateTime::now_utc();
    let filter = filter::Filter::from_args(args, now)?;
    let live = args
        .log
        .clone()
        .unwrap_or_else(|| config.audit.path.clone());
    let sources = files::discover(&live)?;
    let progress = if std::io::stderr().is_terminal() {
        read::progress_bar(sources.iter().map(|s| s.size).sum())
    } else {
        indicatif::ProgressBar::hidden()
    };
    let mut report = aggregate::Report::new(aggregate::Limits::default());
    for source in &sources {
        read::read_source(source, &filter, &mut report, &progress);
    }
    progress.finish_and_clear();
    if args.denied {
        report.keep_only_refused();
    }
    let view = json::View {
        report: &report,
        filter: &filter,
        denied_only: args.denied,
    };
    if let Some(path) = &args.html {
        let page = render_html::page(&view);
        std::fs::write(path, page)
            .with_context(|| format!("cannot write the HTML report to {}", path.display()))?;
    }
    let text = if args.json {
        let mut t = serde_json::to_string_pretty(&json::document(&view))
            .context("cannot write the JSON report")?;
        t.push('\n');
        t
    } else {
        render_text::render(&view)
    };
    match std::io::Write::write_all(&mut std::io::stdout().lock(), text.as_bytes()) {
        // A reader that has seen enough (`| head`) is not an error.
        Err(e) if e.kind() == std::io::ErrorKind::BrokenPipe => {}
        r => r.context("cannot write the report")?,
    }
    Ok(())
}

#[cfg(test)]
mod tests;
