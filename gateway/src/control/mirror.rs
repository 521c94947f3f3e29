//! `{"cmd":"mirror"}`: runs the entries the client sent through the
//! daemon's runner (so runs of one entry never overlap with its schedule,
//! and the daemon's cache and single-flight fills are used), reporting
//! lines and byte steps on the control socket.

use std::sync::Arc;

use tokio::sync::mpsc;

use super::{Reply, Step, server::Control};
use crate::{
    config::Mirror,
    mirror::{RunMode, Runner, Watch},
};

/// Progress onto the control socket.
struct Socket(mpsc::UnboundedSender<Reply>);

impl Watch for Socket {
    fn line(&self, text: String) {
        let _ = self.0.send(Reply::Progress(text));
    }

    fn bytes(&self, done: u64, total: u64, note: &str) {
        let _ = self.0.send(Reply::Step(Step {
            done,
            total: total.max(done),
            line: note.to_owned(),
        }));
    }
}

pub(super) async fn run(
    control: &Control,
    entries: &[Mirror],
    mode: RunMode,
    progress: &mpsc::UnboundedSender<Reply>,
) -> anyhow::Result<serde_json::Value> {
    // Without a daemon (the offline path) a runner of its own, unaudited.
    let runner = control
        .mirror
        .clone()
        .unwrap_or_else(|| Arc::new(Runner::new(None)));
    let handlers = control.handlers.load();
    let watch = Socket(progress.clone());
    let mut reports = Vec::new();
    for entry in entries {
        if let Some(r) = runner.run(&handlers, entry, mode, false, &watch).await {
            reports.push(r);
        }
    }
    Ok(serde_json::json!({ "dry_run": mode.dry_run, "entries": reports }))
}
