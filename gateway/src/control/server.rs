//! The daemon's side of the control socket.

use std::{os::unix::fs::PermissionsExt as _, path::Path, sync::Arc};

use tokio::{
    io::{AsyncBufReadExt as _, AsyncReadExt as _, AsyncWriteExt as _, BufReader},
    net::{UnixListener, UnixStream},
    sync::{mpsc, watch},
};

use super::{
    REQUEST_MAX, Reply, Request, listing, parse_reference, peer_allowed, socket_dir, socket_path,
};
use crate::{
    audit::AuditCounter, cache::Cache, config::Service, proxy::limits::Limits,
    registry::oci::seed::SeedReport, reload::Shared, sites::Handlers,
};

/// What the control socket can act on.
pub struct Control {
    /// `None` when the daemon serves no sites (and so opened no cache).
    pub cache: Option<Cache>,
    /// Replaced by a config reload.
    pub handlers: Shared<Handlers>,
    /// The daemon's audit counts; `None` when a command works on the
    /// cache without a daemon. (Not the log itself: the daemon closes the
    /// log while this lives on.)
    pub audit: Option<AuditCounter>,
    /// What `gateway status` shows of the running daemon; `None` without
    /// one.
    pub daemon: Option<Shared<DaemonInfo>>,
    /// Where `reload` requests go: the daemon's main loop, which applies
    /// them one at a time (as it does SIGHUP). `None` without a daemon.
    pub reload: Option<mpsc::Sender<ReloadAsk>>,
    /// Runs `mirror:` entries (the daemon's, shared with its schedule, so
    /// runs of one entry never overlap); `None` without a daemon.
    pub mirror: Option<Arc<crate::mirror::Runner>>,
}

/// A `reload` request handed to the daemon's main loop; the answer is the
/// reload's summary or why it was refused.
pub struct ReloadAsk {
    pub path: std::path::PathBuf,
    pub answer: tokio::sync::oneshot::Sender<Result<serde_json::Value, String>>,
}

/// The running daemon's configuration and live state, for `stats`.
#[derive(Clone)]
pub struct DaemonInfo {
    pub limits: Arc<Limits>,
    pub services: Vec<Service>,
    pub sites: Vec<String>,
    pub generation: u64,
}

impl Control {
    fn cache(&self) -> anyhow::Result<&Cache> {
        self.cache.as_ref().ok_or_else(|| {
            anyhow::anyhow!("the running gateway serves no sites, so it has no cache open")
        })
    }
}

/// Listens until `stop`; removes the socket file afterwards.
pub async fn serve(
    control: Arc<Control>,
    state_dir: &Path,
    mut stop: watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let path = socket_path(state_dir);
    let dir = socket_dir(state_dir);
    tokio::fs::create_dir_all(&dir).await?;
    // Tightened before the socket exists: binding happens inside it.
    tokio::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700)).await?;
    // A socket left by a daemon that was killed.
    let _ = tokio::fs::remove_file(&path).await;
    let listener = UnixListener::bind(&path)?;
    tokio::fs::set_permissions(&path, std::fs::Permissions::from_mode(0o600)).await?;
    let own_uid = nix::unistd::geteuid().as_raw();
    loop {
        tokio::select! {
            accepted = listener.accept() => match accepted {
                Ok((stream, _)) => {
                    match stream.peer_cred() {
                        Ok(cred) if peer_allowed(cred.uid(), own_uid) => {}
                        Ok(cred) => {
                            tracing::warn!(uid = cred.uid(), pid = ?cred.pid(), "control socket: refused a peer of another user");
                            continue;
                        }
                        Err(e) => {
                            tracing::warn!(error = %e, "control socket: no peer credentials; refused");
                            continue;
                        }
                    }
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
    // A peer that never ends its line cannot make the daemon buffer more.
    let mut reader = BufReader::new(read.take(REQUEST_MAX));
    if reader.read_line(&mut line).await.is_err() {
        return;
    }
    if !line.ends_with('\n') && line.len() as u64 >= REQUEST_MAX {
        let mut bytes = serde_json::to_vec(&Reply::Error(format!(
            "request longer than {REQUEST_MAX} bytes"
        )))
        .unwrap_or_default();
        bytes.push(b'\n');
        let _ = write.write_all(&bytes).await;
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
        Request::Ls => listing::listing(control.cache()?).await,
        Request::Seed { reference } => {
            let tx = progress.clone();
            let progress = move |line| {
                let _ = tx.send(Reply::Progress(line));
            };
            let report = seed(&control.handlers.load(), &reference, &progress).await?;
            Ok(serde_json::to_value(report)?)
        }
        Request::Pin { reference } => super::manage::pin(control.cache()?, &reference).await,
        Request::Unpin { name } => super::manage::unpin(control.cache()?, &name).await,
        Request::Rm { reference } => super::manage::rm(control.cache()?, &reference).await,
        Request::Verify => super::manage::verify(control.cache()?, progress).await,
        Request::Du => super::manage::du(control.cache()?).await,
        Request::Mirror {
            entries,
            dry_run,
            respect_window,
        } => {
            let mode = crate::mirror::RunMode {
                dry_run,
                respect_window,
            };
            super::mirror::run(control, &entries, mode, progress).await
        }
        Request::Stats => match (&control.audit, &control.daemon) {
            (Some(audit), Some(daemon)) => Ok(super::stats::stats(
                audit,
                &daemon.load(),
                control.cache.as_ref(),
                crate::metrics::global(),
            )),
            _ => anyhow::bail!("no gateway daemon is running"),
        },
        Request::Reload { path } => {
            let Some(reload) = &control.reload else {
                anyhow::bail!("no gateway daemon is running: nothing to reload");
            };
            let (answer, answered) = tokio::sync::oneshot::channel();
            reload
                .send(ReloadAsk {
                    path: path.into(),
                    answer,
                })
                .await
                .map_err(|_| anyhow::anyhow!("the gateway is stopping"))?;
            match answered.await {
                Ok(Ok(v)) => Ok(v),
                Ok(Err(refused)) => Err(anyhow::anyhow!("{refused}")),
                Err(_) => anyhow::bail!("the gateway is stopping"),
            }
        }
    }
}

/// `gateway cache seed` by the kind of the site `reference` names:
/// `host/repo:tag` (oci), `host/chart@version` (helm), `https://host/path`
/// or `host/path` (files).
async fn seed(
    handlers: &Handlers,
    reference: &str,
    progress: &(dyn Fn(String) + Send + Sync),
) -> anyhow::Result<SeedReport> {
    let bare = reference
        .strip_prefix("https://")
        .or_else(|| reference.strip_prefix("http://"))
        .unwrap_or(reference);
    let (host, rest) = bare.split_once('/').unwrap_or((bare, ""));
    let host = host.to_ascii_lowercase();
    if let Some(site) = handlers.files.get(&host) {
        return crate::registry::files::seed(site, &format!("/{rest}"), progress).await;
    }
    if let Some(site) = handlers.helm.get(&host) {
        let (chart, version) = rest.split_once('@').ok_or_else(|| {
            anyhow::anyhow!("`{reference}` names a helm site: write <host>/<chart>@<version>")
        })?;
        return crate::registry::helm::seed(site, chart, version, progress).await;
    }
    let (host, repo, reference) = parse_reference(reference)?;
    let site = handlers
        .oci
        .get(&host)
        .cloned()
        .ok_or_else(|| anyhow::anyhow!("{host} is not a configured site"))?;
    crate::registry::oci::seed::seed(&site, &repo, &reference, progress).await
}

#[cfg(test)]
mod tests {
    use tokio::io::AsyncReadExt as _;

    use super::*;

    /// `reload` goes to the daemon's main loop and comes back with its
    /// answer; without a daemon (the offline cache commands) it is refused.
    #[tokio::test]
    async fn reload_requests_reach_the_main_loop_and_carry_its_answer() {
        let (tx, mut rx) = mpsc::channel::<ReloadAsk>(1);
        let control = Control {
            cache: None,
            handlers: Shared::new(Handlers::default()),
            audit: None,
            daemon: None,
            reload: Some(tx),
            mirror: None,
        };
        let main_loop = tokio::spawn(async move {
            let ask = rx.recv().await.expect("a request");
            assert_eq!(ask.path, std::path::Path::new("/etc/gateway/gateway.yaml"));
            let _ = ask
                .answer
                .send(Err("proxy.port cannot change without a restart".into()));
        });
        let (progress, _) = mpsc::unbounded_channel();
        let req = Request::Reload {
            path: "/etc/gateway/gateway.yaml".into(),
        };
        let e = execute(&control, req, &progress)
            .await
            .expect_err("refused");
        assert!(e.to_string().starts_with("proxy.port cannot change"), "{e}");
        main_loop.await.expect("main loop");

        let offline = Control {
            reload: None,
            ..control
        };
        let req = Request::Reload { path: "/x".into() };
        let e = execute(&offline, req, &progress)
            .await
            .expect_err("no daemon");
        assert!(
            e.to_string().contains("no gateway daemon is running"),
            "{e}"
        );
    }

    #[tokio::test]
    async fn an_endless_request_line_is_cut_off() {
        let dir = tempfile::tempdir().expect("tempdir");
        let cache = Cache::open(dir.path(), 1 << 20).await.expect("cache");
        let control = Arc::new(Control {
            cache: Some(cache),
            handlers: Shared::new(Handlers::default()),
            audit: None,
            daemon: None,
            reload: None,
            mirror: None,
        });
        let (mut client, server) = UnixStream::pair().expect("pair");
        let task = tokio::spawn(handle(control, server));
        // More than the limit and no newline: the daemon must not wait for
        // the rest or buffer it.
        // (Exactly the limit: bytes left unread would make the close a reset.)
        let junk = vec![b'x'; REQUEST_MAX as usize];
        let _ = client.write_all(&junk).await;
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.expect("read");
        assert!(answer.contains("longer than"), "{answer}");
        task.await.expect("handler");
        // A normal request still works.
        let dir2 = tempfile::tempdir().expect("tempdir");
        let control = Arc::new(Control {
            cache: Some(Cache::open(dir2.path(), 1 << 20).await.expect("cache")),
            handlers: Shared::new(Handlers::default()),
            audit: None,
            daemon: None,
            reload: None,
            mirror: None,
        });
        let (mut client, server) = UnixStream::pair().expect("pair");
        let task = tokio::spawn(handle(control, server));
        client
            .write_all(b"{\"cmd\":\"ls\"}\n")
            .await
            .expect("write");
        let mut answer = String::new();
        client.read_to_string(&mut answer).await.expect("read");
        assert!(answer.contains("\"ok\""), "{answer}");
        task.await.expect("handler");
    }
}
