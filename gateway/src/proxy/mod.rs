//! The transparent proxy: accept what the kernel redirected, decide by
//! policy, splice or refuse, and audit each connection.

mod listener;
mod passthrough;

use std::{sync::Arc, time::Duration};

use tokio::{net::TcpListener, sync::watch, task::JoinSet};

pub use listener::bind;

use crate::{
    audit::{Audit, Event, Record},
    policy::{Decision, Policy},
};

pub struct Proxy {
    pub policy: Policy,
    pub audit: Audit,
    pub connect_timeout: Duration,
}

/// Accepts on every listener until `stop` turns true.
pub async fn serve(proxy: Arc<Proxy>, listeners: Vec<TcpListener>, stop: watch::Receiver<bool>) {
    let mut tasks = JoinSet::new();
    for listener in listeners {
        tasks.spawn(accept_loop(proxy.clone(), listener, stop.clone()));
    }
    while tasks.join_next().await.is_some() {}
}

async fn accept_loop(proxy: Arc<Proxy>, listener: TcpListener, mut stop: watch::Receiver<bool>) {
    loop {
        let accepted = tokio::select! {
            a = listener.accept() => a,
            _ = stop.changed() => return,
        };
        let (stream, device) = match accepted {
            Ok(a) => a,
            Err(e) => {
                // EMFILE and friends: back off instead of spinning.
                tracing::warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let proxy = proxy.clone();
        tokio::spawn(async move { handle(proxy, stream, device).await });
    }
}

async fn handle(proxy: Arc<Proxy>, stream: tokio::net::TcpStream, device: std::net::SocketAddr) {
    // The local address of a transparently accepted socket is where the
    // device sent its SYN.
    let original_dst = match stream.local_addr() {
        Ok(a) => a,
        Err(e) => {
            tracing::warn!(error = %e, %device, "no original destination; closing");
            return;
        }
    };
    let record = match proxy.policy.decide(original_dst) {
        Decision::Passthrough { upstream } => {
            passthrough::splice(
                stream,
                device,
                original_dst,
                upstream,
                proxy.connect_timeout,
            )
            .await
        }
        Decision::Deny { reason } => {
            drop(stream);
            Record::new(Event::FlowDenied)
                .tcp(device, original_dst)
                .reason(reason)
        }
    };
    proxy.audit.log(record).await;
}
