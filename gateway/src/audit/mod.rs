//! The audit log: one JSON line per decision.
//!
//! Records are sent to a single writer task through a bounded channel, so
//! writers never interleave lines and a slow disk pushes back instead of
//! growing memory. Each line is written whole and flushed; the file is
//! opened for append, so a restarted daemon continues the same log.
//!
//! Fields that carry what a device or upstream sent (paths, names, error
//! text) are cut to [`FIELD_MAX`] bytes with a marker, so no one can make a
//! line huge. [`Audit::reopen`] (SIGUSR1, logrotate's `postrotate`) makes
//! the writer open the path anew after the file was moved away.

mod record;

use std::{
    future::Future,
    io,
    path::{Path, PathBuf},
    pin::Pin,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
};

use thiserror::Error;
use tokio::{
    fs::OpenOptions,
    io::AsyncWriteExt as _,
    sync::{Notify, mpsc},
    task::JoinHandle,
};

pub use record::{CacheStatus, Event, Fault, Record, Source, addr_text, ip_port_text};

/// Records queued before senders wait for the writer.
const QUEUE: usize = 4096;
/// Longest text field written, in bytes; longer ones are cut and marked.
pub const FIELD_MAX: usize = 1024;

#[derive(Debug, Error)]
pub enum AuditError {
    #[error("cannot create the audit directory {path}: {source}")]
    CreateDir {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
    #[error("cannot open the audit log {path} for appending: {source}")]
    Open {
        path: PathBuf,
        #[source]
        source: io::Error,
    },
}

/// Where records go. Cheap to clone; every clone feeds the same writer.
#[derive(Clone, Debug)]
pub struct Audit {
    tx: mpsc::Sender<Record>,
    reopen: std::sync::Arc<Notify>,
    counts: Arc<Counts>,
}

/// What became of the records, since the daemon started: `gateway status`
/// shows it, so that a log that stopped growing (a full disk, a file
/// removed from under the daemon) is seen, not only logged.
#[derive(Debug, Default)]
struct Counts {
    written: AtomicU64,
    write_failures: AtomicU64,
    /// Records that never reached the writer (it had stopped).
    lost: AtomicU64,
}

/// Reads the counts of an [`Audit`]; see [`Audit::counter`].
#[derive(Clone, Debug)]
pub struct AuditCounter(Arc<Counts>);

impl AuditCounter {
    pub fn stats(&self) -> AuditStats {
        AuditStats {
            written: self.0.written.load(Ordering::Relaxed),
            write_failures: self.0.write_failures.load(Ordering::Relaxed),
            lost: self.0.lost.load(Ordering::Relaxed),
        }
    }
}

/// A snapshot of [`Counts`].
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct AuditStats {
    pub written: u64,
    pub write_failures: u64,
    pub lost: u64,
}

/// The writer task; [`AuditWriter::close`] waits until every queued record
/// is on disk.
pub struct AuditWriter {
    task: JoinHandle<()>,
}

impl Audit {
    /// Opens (creating if needed) the log at `path` and starts its writer.
    pub async fn open(path: &Path) -> Result<(Self, AuditWriter), AuditError> {
        if let Some(dir) = path.parent() {
            tokio::fs::create_dir_all(dir)
                .await
                .map_err(|source| AuditError::CreateDir {
                    path: dir.to_owned(),
                    source,
                })?;
        }
        let file = open_log(path).await?;
        let (tx, rx) = mpsc::channel(QUEUE);
        let reopen = std::sync::Arc::new(Notify::new());
        let counts = Arc::new(Counts::default());
        let task = tokio::spawn(write_records(
            file,
            rx,
            path.to_owned(),
            reopen.clone(),
            counts.clone(),
        ));
        Ok((Self { tx, reopen, counts }, AuditWriter { task }))
    }

    /// How many records were written, failed to be written, or lost.
    pub fn stats(&self) -> AuditStats {
        self.counter().stats()
    }

    /// A handle that reads the counts without holding the log open: the
    /// writer ends only once every [`Audit`] is dropped, so whatever lives
    /// past that (the control socket's state) must hold this instead.
    pub fn counter(&self) -> AuditCounter {
        AuditCounter(self.counts.clone())
    }

    /// Makes the writer close the log and open its path again (after
    /// logrotate moved the file away), before the next record.
    pub fn reopen(&self) {
        self.reopen.notify_one();
    }

    /// Queues a record; the returned future waits only if the writer is
    /// behind.
    ///
    /// The record is queued at once when the channel has room (the usual
    /// case): the future is then already done and allocates nothing. Only
    /// when it is full is the wait boxed: a channel send holding a record
    /// is about 2 KiB, and every connection's task that may log (all of
    /// them) would otherwise carry that room for its whole life, kept-alive
    /// ones included.
    pub fn log(&self, record: Record) -> Logged<'_> {
        // Every decision passes here: the metrics count it before it is
        // queued, so a stalled log does not hide traffic from them.
        crate::metrics::global().observe(&record);
        match self.tx.try_send(record) {
            Ok(()) => Logged(None),
            Err(mpsc::error::TrySendError::Full(record)) => Logged(Some(Box::pin(async move {
                if self.tx.send(record).await.is_err() {
                    self.lost();
                }
            }))),
            Err(mpsc::error::TrySendError::Closed(_)) => {
                self.lost();
                Logged(None)
            }
        }
    }

    fn lost(&self) {
        self.counts.lost.fetch_add(1, Ordering::Relaxed);
        tracing::error!("audit writer has stopped; record lost");
    }
}

/// [`Audit::log`]'s wait: done at once when the record went straight into
/// the channel, else the boxed send (16 bytes either way).
#[must_use = "a record the channel had no room for is queued only when awaited"]
pub struct Logged<'a>(Option<Pin<Box<dyn Future<Output = ()> + Send + 'a>>>);

impl Future for Logged<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<()> {
        match self.0.as_mut() {
            None => std::task::Poll::Ready(()),
            Some(wait) => {
                let done = wait.as_mut().poll(cx);
                if done.is_ready() {
                    self.0 = None;
                }
                done
            }
        }
    }
}

impl AuditWriter {
    /// Waits until every record queued by every (now dropped) [`Audit`]
    /// handle is written.
    pub async fn close(self) {
        if let Err(e) = self.task.await {
            tracing::error!(error = %e, "audit writer failed");
        }
    }
}

async fn open_log(path: &Path) -> Result<tokio::fs::File, AuditError> {
    OpenOptions::new()
        .create(true)
        .append(true)
        // Readable by the owner and the group of auditors, no one else.
        .mode(0o640)
        .open(path)
        .await
        .map_err(|source| AuditError::Open {
            path: path.to_owned(),
            source,
        })
}

async fn write_records(
    mut file: tokio::fs::File,
    mut rx: mpsc::Receiver<Record>,
    path: PathBuf,
    reopen: std::sync::Arc<Notify>,
    counts: Arc<Counts>,
) {
    loop {
        let mut record = tokio::select! {
            // Reopening first: records after the signal go to the new file.
            biased;
            () = reopen.notified() => {
                let _ = file.sync_all().await;
                match open_log(&path).await {
                    Ok(f) => {
                        file = f;
                        tracing::info!(path = %path.display(), "audit log reopened");
                    }
                    Err(e) => tracing::error!(error = %e, "cannot reopen the audit log; writing to the old file"),
                }
                continue;
            }
            r = rx.recv() => match r {
                Some(r) => r,
                None => break,
            },
        };
        record.truncate_fields(FIELD_MAX);
        let mut line = match serde_json::to_vec(&record) {
            Ok(line) => line,
            Err(e) => {
                tracing::error!(error = %e, "cannot serialise an audit record");
                continue;
            }
        };
        line.push(b'\n');
        // A failed write is logged loudly but does not stop the gateway:
        // the kernel keeps enforcing whatever happens to the log.
        // Counted, so that `gateway status` shows a log that stopped.
        if let Err(e) = file.write_all(&line).await {
            counts.write_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(path = %path.display(), error = %e, "cannot write the audit log");
            continue;
        }
        if let Err(e) = file.flush().await {
            counts.write_failures.fetch_add(1, Ordering::Relaxed);
            tracing::error!(path = %path.display(), error = %e, "cannot flush the audit log");
            continue;
        }
        counts.written.fetch_add(1, Ordering::Relaxed);
    }
    if let Err(e) = file.sync_all().await {
        tracing::error!(path = %path.display(), error = %e, "cannot sync the audit log");
    }
}

#[cfg(test)]
mod tests;
