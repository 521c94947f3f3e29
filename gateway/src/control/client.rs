//! `gateway cache ls|seed`: through the running daemon's control socket,
//! or, when no daemon runs, on the cache directly.

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
    sync::mpsc,
};

use super::{Reply, Request, listing, server, socket_path};
use crate::config::Config;

pub async fn ls(config: &Config, json: bool) -> anyhow::Result<()> {
    let value = run(config, Request::Ls).await?;
    if json {
        println!("{value}");
    } else {
        print!("{}", listing::render(&value));
    }
    Ok(())
}

pub async fn seed(config: &Config, reference: &str) -> anyhow::Result<()> {
    let value = run(
        config,
        Request::Seed {
            reference: reference.to_owned(),
        },
    )
    .await?;
    let pin = value["pin"].as_str().unwrap_or(reference);
    // Helm charts and files have no manifests: a chart (and its
    // provenance) or a file are blobs.
    if value["manifests"].as_u64().unwrap_or(0) == 0 {
        println!(
            "seeded {pin}: {} blobs, {} bytes",
            value["blobs"], value["bytes"]
        );
    } else {
        println!(
            "seeded {pin}: {} manifests, {} blobs, {} bytes",
            value["manifests"], value["blobs"], value["bytes"]
        );
    }
    Ok(())
}

/// What `gateway reload` exits with.
pub enum ReloadOutcome {
    /// Applied: the daemon's summary.
    Applied(serde_json::Value),
    /// The daemon refused the config (it keeps the old one): why.
    Refused(String),
    /// No daemon answered on the control socket.
    NoDaemon(String),
}

/// Asks the running daemon to re-read its config file (`path`, as the
/// client named it) and apply it.
pub async fn reload(config: &Config, path: &std::path::Path) -> ReloadOutcome {
    let path = std::fs::canonicalize(path).unwrap_or_else(|_| path.to_owned());
    let socket = socket_path(&config.state_dir);
    let stream = match UnixStream::connect(&socket).await {
        Ok(s) => s,
        Err(e) => {
            return ReloadOutcome::NoDaemon(format!(
                "no gateway daemon answers on {} ({e}): nothing to reload",
                socket.display()
            ));
        }
    };
    let req = Request::Reload {
        path: path.to_string_lossy().into_owned(),
    };
    match through_daemon(stream, &req).await {
        Ok(v) => ReloadOutcome::Applied(v),
        Err(e) => ReloadOutcome::Refused(format!("{e:#}")),
    }
}

/// The running daemon's own counts, or `None` when no daemon answers on
/// the control socket within a second or two (never the offline path).
pub async fn daemon_stats(config: &Config) -> Option<serde_json::Value> {
    let ask = async {
        let stream = UnixStream::connect(socket_path(&config.state_dir))
            .await
            .ok()?;
        through_daemon(stream, &Request::Stats).await.ok()
    };
    tokio::time::timeout(std::time::Duration::from_secs(2), ask)
        .await
        .ok()
        .flatten()
}

async fn run(config: &Config, req: Request) -> anyhow::Result<serde_json::Value> {
    match UnixStream::connect(socket_path(&config.state_dir)).await {
        Ok(stream) => through_daemon(stream, &req).await,
        Err(_) => offline(config, req).await,
    }
}

async fn through_daemon(stream: UnixStream, req: &Request) -> anyhow::Result<serde_json::Value> {
    let (read, mut write) = stream.into_split();
    let mut line = serde_json::to_vec(req)?;
    line.push(b'\n');
    write.write_all(&line).await?;
    let mut lines = BufReader::new(read).lines();
    while let Some(line) = lines.next_line().await? {
        match serde_json::from_str::<Reply>(&line)? {
            Reply::Progress(p) => eprintln!("{p}"),
            Reply::Ok(v) => return Ok(v),
            Reply::Error(e) => anyhow::bail!("{e}"),
        }
    }
    anyhow::bail!("the gateway closed the control socket without an answer")
}

/// No daemon: open the cache (and the upstreams, for a seed) here.
async fn offline(config: &Config, req: Request) -> anyhow::Result<serde_json::Value> {
    let serving = crate::sites::build_content(config).await?;
    let control = server::Control {
        cache: Some(serving.cache),
        handlers: crate::reload::Shared::new(serving.handlers),
        audit: None,
        daemon: None,
        reload: None,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let printer = tokio::spawn(async move {
        while let Some(Reply::Progress(p)) = rx.recv().await {
            eprintln!("{p}");
        }
    });
    let result = server::execute(&control, req, &tx).await;
    drop(tx);
    let _ = printer.await;
    drop(control.handlers);
    if let Some(cache) = control.cache
        && let Err(e) = cache.close().await
    {
        tracing::warn!(error = %e, "closing the cache");
    }
    result
}
