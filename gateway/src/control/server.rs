//! The daemon's side of the control socket.

use std::{collections::HashMap, os::unix::fs::PermissionsExt as _, path::Path, sync::Arc};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, watch},
};

use super::{Reply, Request, listing, parse_reference, socket_path};
use crate::{cache::Cache, registry::oci::OciSite};

/// What the control socket can act on.
pub struct Control {
    pub cache: Cache,
    pub oci: HashMap<String, Arc<OciSite>>,
}

/// Listens until `stop`; removes the socket file afterwards.
pub async fn serve(
    control: Arc<Control>,
    state_dir: &Path,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let path = socket_path(state_dir);
    tokio::fs::create_dir_all(state_dir).await?;
    // A socket left by a daemon that was killed.
    let _ = tokio::fs::remove_file(&path).await;
    let listener = UnixListener::bind(&path)?;
    tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).await?;
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    let control = control.clone();
                    tokio::spawn(async move { handle(control, stream).await });
                }
                Err(e) => tracing::warn!(error = %e, "control socket accept failed"),
            },
            _ = stop.changed() => break,
        }
    }
    let _ = tokio::fs::remove_file(&path).await;
    Ok(())
}

async fn handle(control: Arc<Control>, stream: UnixStream) {
    let (read, mut write) = stream.into_split();
    let mut line = String::new();
    let mut reader = BufReader::new(read);
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    let (tx, mut rx) = mpsc::unbounded_channel::<Reply>();
    let work = tokio::spawn(async move {
        let result = match serde_json::from_str::<Request>(&line) {
            Ok(req) => execute(&control, req, &tx).await,
            Err(e) => Err(anyhow::anyhow!("bad request: {e}")),
        };
        let _ = tx.send(match result {
            Ok(v) => Reply::Ok(v),
            Err(e) => Reply::Error(format!("{e:#}")),
        });
    });
    while let Some(reply) = rx.recv().await {
        let Ok(mut bytes) = serde_json::to_vec(&reply) else {
            continue;
        };
        bytes.push(b'\n');
        if write.write_all(&bytes).await.is_err() {
            break;
        }
    }
    let _ = work.await;
}

pub async fn execute(
    control: &Control,
    req: Request,
    progress: &mpsc::UnboundedSender<Reply>,
) -> anyhow::Result<serde_json::Value> {
    match req {
        Request::Ls => listing::listing(&control.cache).await,
        Request::Seed { reference } => {
            let (host, repo, reference) = parse_reference(&reference)?;
            let site = control
                .oci
                .get(&host)
                .ok_or_else(|| anyhow::anyhow!("{host} is not a configured oci site"))?;
            let tx = progress.clone();
            let report = crate::registry::oci::seed::seed(site, &repo, &reference, &move |line| {
                let _ = tx.send(Reply::Progress(line));
            })
            .await?;
            Ok(serde_json::to_value(report)?)
        }
    }
}
