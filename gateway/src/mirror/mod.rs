//! Mirroring (`mirror:` entries): runs of an entry over its repositories
//! (the sync itself: registry/oci/mirror.rs), their audit records, and the
//! daemon's schedule (schedule.rs).
//!
//! Runs of one entry never overlap: a scheduled run finding one under way
//! (a `gateway mirror run`) skips its turn, and `gateway mirror run` waits
//! for a scheduled run to end.

pub mod rate;
pub mod schedule;

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
    time::Instant,
};

use serde::Serialize;

use crate::{
    audit::{Audit, Event, Record},
    config::Mirror,
    registry::oci::mirror::{Options, RepoReport, sync_repository},
    sites::Handlers,
};

/// Where a run says what it does.
pub trait Watch: Send + Sync {
    /// A line for a human (a tag's outcome).
    fn line(&self, text: String);
    /// Bytes pulled of those planned so far; `note` is empty on a tick.
    fn bytes(&self, done: u64, total: u64, note: &str);
}

/// A [`Watch`] that logs lines and ignores byte counts (scheduled runs).
pub struct Log;

impl Watch for Log {
    fn line(&self, text: String) {
        tracing::info!("mirror: {text}");
    }
    fn bytes(&self, _: u64, _: u64, _: &str) {}
}

/// How a run is asked for.
#[derive(Debug, Clone, Copy, Default)]
pub struct RunMode {
    pub dry_run: bool,
    /// Start only inside the entry's window, stop fetching when it closes
    /// (scheduled runs; `mirror run --respect-window`).
    pub respect_window: bool,
}

/// What a run of one entry did.
#[derive(Debug, Serialize)]
pub struct EntryReport {
    pub entry: String,
    pub repositories: Vec<RepoReport>,
    /// Why the entry failed as a whole (no such site, a tag list that
    /// could not be read), per repository or for all.
    pub errors: Vec<String>,
    /// Why it did not run (outside its window).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub skipped: Option<String>,
}

impl EntryReport {
    /// Whether anything failed.
    pub fn failed(&self) -> bool {
        !self.errors.is_empty() || self.repositories.iter().any(|r| !r.failed.is_empty())
    }
}

/// Runs entries, one run per entry at a time, auditing each repository.
#[derive(Default)]
pub struct Runner {
    /// Taken at shutdown ([`Runner::release_audit`]): the audit writer
    /// closes only once every handle is gone.
    audit: Mutex<Option<Audit>>,
    busy: Mutex<HashMap<String, Arc<tokio::sync::Mutex<()>>>>,
}

impl Runner {
    pub fn new(audit: Option<Audit>) -> Self {
        Self {
            audit: Mutex::new(audit),
            busy: Mutex::default(),
        }
    }

    fn lock_of(&self, entry: &Mirror) -> Arc<tokio::sync::Mutex<()>> {
        self.busy
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(entry.label())
            .or_default()
            .clone()
    }

    /// Runs `entry` now (waiting for a run of it under way), or returns
    /// `None` when `skip_if_busy` and one is under way.
    pub async fn run(
        &self,
        handlers: &Handlers,
        entry: &Mirror,
        mode: RunMode,
        skip_if_busy: bool,
        watch: &dyn Watch,
    ) -> Option<EntryReport> {
        let lock = self.lock_of(entry);
        let _running = if skip_if_busy {
            lock.try_lock_owned().ok()?
        } else {
            lock.lock_owned().await
        };
        Some(self.run_locked(handlers, entry, mode, watch).await)
    }

    async fn run_locked(
        &self,
        handlers: &Handlers,
        entry: &Mirror,
        mode: RunMode,
        watch: &dyn Watch,
    ) -> EntryReport {
        let mut report = EntryReport {
            entry: entry.label(),
            repositories: Vec::new(),
            errors: Vec::new(),
            skipped: None,
        };
        let host = entry.site.to_ascii_lowercase();
        let Some(site) = handlers.oci.get(&host).cloned() else {
            let e = format!("{host} is not a configured oci site of the running gateway");
            self.failed(&host, "", &e, 0).await;
            report.errors.push(e);
            return report;
        };
        let mut deadline = None;
        if mode.respect_window
            && let Some(window) = entry.window()
        {
            let sod = schedule::local_second_of_day();
            if !window.contains(sod) {
                report.skipped = Some(format!(
                    "outside its window {}",
                    entry.window.as_deref().unwrap_or_default()
                ));
                return report;
            }
            deadline = Some(
                tokio::time::Instant::now()
                    + std::time::Duration::from_secs(u64::from(window.until_close(sod))),
            );
        }
        let opts = Options {
            dry_run: mode.dry_run,
            deadline,
            pull: Arc::new(rate::Pull::new(entry.rate())),
        };
        for repo in &entry.repositories {
            let started = Instant::now();
            match sync_repository(&site, repo, entry, &opts, watch).await {
                Ok(r) => {
                    if !mode.dry_run {
                        self.synced(&r, started).await;
                    }
                    report.repositories.push(r);
                }
                Err(e) => {
                    let e = format!("{host}/{repo}: {e:#}");
                    watch.line(format!("failed: {e}"));
                    self.failed(&host, repo, &e, elapsed_ms(started)).await;
                    report.errors.push(e);
                }
            }
        }
        report
    }

    /// Lets the audit log go: the daemon calls it before it closes the
    /// audit writer; records of a run still going are then not written.
    pub fn release_audit(&self) {
        self.audit.lock().unwrap_or_else(|e| e.into_inner()).take();
    }

    fn audit(&self) -> Option<Audit> {
        self.audit.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }

    async fn synced(&self, r: &RepoReport, started: Instant) {
        let Some(audit) = self.audit() else {
            return;
        };
        let mut detail = format!(
            "{} tag(s) synced, {} unchanged, {} blob(s) fetched",
            r.synced.len(),
            r.unchanged.len(),
            r.blobs
        );
        if !r.synced.is_empty() {
            detail.push_str(&format!(" (synced: {})", r.synced.join(", ")));
        }
        if !r.unpinned.is_empty() {
            detail.push_str(&format!("; unpinned {}", r.unpinned.join(", ")));
        }
        if let Some(s) = &r.stopped {
            detail.push_str(&format!("; stopped: {s}"));
        }
        let (event, fault) = if r.failed.is_empty() {
            (Event::MirrorSynced, None)
        } else {
            let failures: Vec<String> = r
                .failed
                .iter()
                .map(|f| format!("{}: {}", f.tag, f.error))
                .collect();
            detail.push_str(&format!("; failed: {}", failures.join("; ")));
            (Event::MirrorFailed, Some(crate::audit::Fault::Upstream))
        };
        let mut rec = Record::new(event).detail(detail);
        rec.host = Some(r.site.clone());
        rec.name = Some(r.repository.clone());
        rec.bytes = Some(r.bytes);
        rec.duration_ms = Some(elapsed_ms(started));
        rec.fault = fault;
        // The metrics count it from the record (Audit::log).
        audit.log(rec).await;
    }

    async fn failed(&self, host: &str, repo: &str, error: &str, ms: u64) {
        let Some(audit) = self.audit() else {
            return;
        };
        let mut rec = Record::new(Event::MirrorFailed).detail(error);
        rec.host = Some(host.to_owned());
        rec.name = (!repo.is_empty()).then(|| repo.to_owned());
        rec.duration_ms = Some(ms);
        rec.fault = Some(crate::audit::Fault::Upstream);
        audit.log(rec).await;
    }
}

fn elapsed_ms(started: Instant) -> u64 {
    u64::try_from(started.elapsed().as_millis()).unwrap_or(u64::MAX)
}
