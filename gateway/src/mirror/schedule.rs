//! The daemon's mirror schedule: one task per `mirror:` entry. `every`
//! counts from the daemon's start (the first run [`FIRST_RUN`] after it,
//! or after the entry appeared); `at` runs daily at that local time. An
//! entry with a `window` waits for it to open and stops fetching when it
//! closes. A reload replaces the tasks of entries that changed and leaves
//! the others' schedules alone.

use std::{collections::HashMap, sync::Arc, time::Duration};

use tokio::{sync::watch, task::JoinHandle};

use super::{Log, RunMode, Runner};
use crate::{
    config::{Config, Mirror, Schedule},
    reload::Shared,
    sites::Handlers,
};

/// The first run of an `every` entry: soon, not in the middle of start.
pub const FIRST_RUN: Duration = Duration::from_secs(10);
/// How often the task compares the running config's entries with its own:
/// a reload stores the new config in one place, and this is cheaper than
/// a hook in every reload path.
const RECHECK: Duration = Duration::from_secs(2);

/// The second of the local day now (the host's time zone, as `cron`
/// reads it).
pub fn local_second_of_day() -> u32 {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let t = libc::time_t::try_from(now).unwrap_or_default();
    // SAFETY: localtime_r only writes the `tm` it is given; `tm` is
    // plain data for which all zeroes is a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are valid for the call; localtime_r is the
    // thread-safe variant (no shared static result).
    let ok = unsafe { !libc::localtime_r(&t, &mut tm).is_null() };
    if !ok {
        // No local time: UTC.
        return u32::try_from(now % 86_400).unwrap_or(0);
    }
    u32::try_from(tm.tm_hour * 3600 + tm.tm_min * 60 + tm.tm_sec).unwrap_or(0)
}

/// Keeps one task per entry of the running config until `stop`.
/// `control` holds the site handlers a reload replaces.
pub fn spawn(
    runner: Arc<Runner>,
    config: Arc<Shared<Config>>,
    control: Arc<crate::control::server::Control>,
    mut stop: watch::Receiver<bool>,
) -> JoinHandle<()> {
    tokio::spawn(async move {
        let mut tasks: HashMap<String, JoinHandle<()>> = HashMap::new();
        loop {
            let entries = config.load().mirror.clone();
            let keys: Vec<String> = entries.iter().map(|e| format!("{e:?}")).collect();
            tasks.retain(|k, task| {
                let keep = keys.contains(k);
                if !keep {
                    task.abort();
                }
                keep
            });
            for (key, entry) in keys.into_iter().zip(entries) {
                tasks.entry(key).or_insert_with(|| {
                    tokio::spawn(entry_task(runner.clone(), control.clone(), entry))
                });
            }
            tokio::select! {
                () = tokio::time::sleep(RECHECK) => {}
                _ = stop.changed() => break,
            }
        }
        // Awaited, so that their handles (the runner's audit log among
        // them) are gone when the daemon's teardown goes on.
        for task in tasks.into_values() {
            task.abort();
            let _ = task.await;
        }
    })
}

/// Runs one entry on its schedule, forever.
async fn entry_task(
    runner: Arc<Runner>,
    control: Arc<crate::control::server::Control>,
    entry: Mirror,
) {
    let mut next = tokio::time::Instant::now()
        + match entry.schedule() {
            Schedule::Every(_) => FIRST_RUN,
            Schedule::At(minute) => secs(crate::config::mirror_until(
                local_second_of_day(),
                minute * 60,
            )),
        };
    loop {
        tokio::time::sleep_until(next).await;
        if let Some(window) = entry.window() {
            let wait = window.until_open(local_second_of_day());
            if wait > 0 {
                tokio::time::sleep(secs(wait)).await;
            }
        }
        let handlers: Arc<Handlers> = control.handlers.load();
        let mode = RunMode {
            dry_run: false,
            respect_window: true,
        };
        match runner.run(&handlers, &entry, mode, true, &Log).await {
            None => {
                tracing::info!(entry = %entry.label(), "mirror: a run is under way; this turn is skipped")
            }
            Some(r) if r.failed() => {
                tracing::warn!(entry = %entry.label(), errors = ?r.errors, "mirror run failed");
            }
            Some(_) => {}
        }
        next = match entry.schedule() {
            Schedule::Every(every) => {
                // The next turn after now (a run longer than `every`
                // skips the turns it overran).
                let mut n = next + every;
                while n <= tokio::time::Instant::now() {
                    n += every;
                }
                n
            }
            Schedule::At(minute) => {
                tokio::time::Instant::now()
                    + secs(crate::config::mirror_until(
                        local_second_of_day(),
                        minute * 60,
                    ))
            }
        };
    }
}

fn secs(s: u32) -> Duration {
    Duration::from_secs(u64::from(s))
}
