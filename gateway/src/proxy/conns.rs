//! The connections an accept loop started, and how they end when the
//! daemon stops.
//!
//! A stop must not wait on devices. An HTTP connection kept alive between
//! pulls, or a manager flow open for hours, would otherwise hold the
//! daemon (and through it the audit log, whose writer closes only once
//! every handle is gone) until it idles out: far past systemd's stop
//! timeout. So when `stop` turns true every connection is asked to end
//! (HTTP finishes the requests in flight and closes; a passthrough flow
//! closes and records its bytes), and whatever still runs after
//! [`STOP_GRACE`] is dropped.

use std::{future::Future, time::Duration};

use tokio::{sync::watch, task::JoinSet};

/// How long connections get to end on their own once the daemon stops: a
/// request in flight (a blob half sent) may finish; one that needs longer
/// is cut, as the process exit would cut it.
pub const STOP_GRACE: Duration = Duration::from_secs(5);

/// The tasks of one accept loop's connections.
#[derive(Default)]
pub struct Connections {
    tasks: JoinSet<()>,
}

impl Connections {
    pub fn spawn(&mut self, connection: impl Future<Output = ()> + Send + 'static) {
        self.tasks.spawn(connection);
    }

    /// Reaps one finished connection; never resolves while none runs, so
    /// an accept loop can `select!` on it beside `accept`.
    pub async fn reap(&mut self) {
        if self.tasks.is_empty() {
            std::future::pending::<()>().await;
        }
        let _ = self.tasks.join_next().await;
    }

    /// After a stop: waits up to `grace` for the connections to end, then
    /// drops the rest. Returns how many were dropped.
    pub async fn drain(mut self, grace: Duration) -> usize {
        let _ = tokio::time::timeout(grace, async {
            while self.tasks.join_next().await.is_some() {}
        })
        .await;
        let left = self.tasks.len();
        self.tasks.shutdown().await;
        left
    }
}

/// Resolves once the daemon is stopping (at once if it is already, or if
/// the daemon's side of the channel is gone).
pub async fn stopping(stop: &mut watch::Receiver<bool>) {
    // The guard `wait_for` returns is not Send: it is dropped at once.
    let _ = stop.wait_for(|stopping| *stopping).await;
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn connections_that_end_are_reaped_and_the_rest_dropped_after_the_grace() {
        let mut conns = Connections::default();
        let (tx, rx) = watch::channel(false);
        // One ends when asked to, one never does, one has ended already.
        let mut polite = rx.clone();
        conns.spawn(async move { stopping(&mut polite).await });
        conns.spawn(std::future::pending());
        conns.spawn(async {});
        conns.reap().await;
        assert_eq!(conns.tasks.len(), 2);
        tx.send(true).expect("send stop");
        let started = tokio::time::Instant::now();
        assert_eq!(conns.drain(STOP_GRACE).await, 1);
        assert_eq!(started.elapsed(), STOP_GRACE);
    }

    #[tokio::test(start_paused = true)]
    async fn a_drain_without_stragglers_does_not_wait() {
        let mut conns = Connections::default();
        conns.spawn(async {});
        let started = tokio::time::Instant::now();
        assert_eq!(conns.drain(STOP_GRACE).await, 0);
        assert!(started.elapsed() < Duration::from_millis(1));
    }
}
