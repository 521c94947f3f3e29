//! `gateway cache ls|seed|pin|unpin|rm|verify|du`: through the running daemon's control socket,
//! or, when no daemon runs, on the cache directly.

use tokio::{
    io::{AsyncBufReadExt as _, AsyncWriteExt as _, BufReader},
    net::UnixStream,
    sync::mpsc,
};

use std::io::IsTerminal as _;

use indicatif::{ProgressBar, ProgressStyle};

use super::{Reply, Request, listing, server, socket_path};
use crate::config::Config;

/// What `gateway cache verify` exits with when it quarantined a blob (1
/// stays "could not verify").
pub const EXIT_QUARANTINED: u8 = 3;

/// `cache verify` found damaged blobs (and quarantined them).
#[derive(Debug, thiserror::Error)]
#[error("{count} blob(s) no longer matched their digest and were moved to {dir}")]
pub struct Quarantined {
    pub count: usize,
    pub dir: String,
}

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

pub async fn pin(config: &Config, reference: &str) -> anyhow::Result<()> {
    let req = Request::Pin {
        reference: reference.to_owned(),
    };
    let v = run(config, req).await?;
    println!(
        "pinned {}: {} blobs, {} bytes",
        v["pin"].as_str().unwrap_or(reference),
        v["blobs"],
        v["bytes"]
    );
    Ok(())
}

pub async fn unpin(config: &Config, name: &str) -> anyhow::Result<()> {
    let req = Request::Unpin {
        name: name.to_owned(),
    };
    let v = run(config, req).await?;
    println!(
        "unpinned {} (its blobs may be evicted now unless another pin names them)",
        v["unpinned"].as_str().unwrap_or(name)
    );
    Ok(())
}

pub async fn rm(config: &Config, reference: &str) -> anyhow::Result<()> {
    let req = Request::Rm {
        reference: reference.to_owned(),
    };
    let v = run(config, req).await?;
    for r in v["references"].as_array().into_iter().flatten() {
        println!("forgot {}", r.as_str().unwrap_or("?"));
    }
    if v["unpinned"].as_bool() == Some(true) {
        println!("unpinned {reference}");
    }
    println!(
        "removed {} blobs ({} bytes); kept {} that other references, objects or pins name",
        v["removed_blobs"], v["freed_bytes"], v["kept_blobs"]
    );
    Ok(())
}

/// Fails with [`Quarantined`] when a blob was damaged.
pub async fn verify(config: &Config, json: bool) -> anyhow::Result<()> {
    let v = run(config, Request::Verify).await?;
    let quarantined = v["quarantined"].as_array().cloned().unwrap_or_default();
    if json {
        println!("{v}");
    } else {
        for q in &quarantined {
            println!(
                "damaged {}: content hashes to {} ({} bytes, {} expected); moved to {}",
                q["digest"].as_str().unwrap_or("?"),
                q["actual_digest"].as_str().unwrap_or("?"),
                q["actual_size"],
                q["size"],
                q["path"]
                    .as_str()
                    .unwrap_or("(could not be moved: removed)"),
            );
        }
        println!(
            "verified {} blobs, {} bytes: {} damaged{}",
            v["checked"],
            v["bytes"],
            quarantined.len(),
            match v["vanished"].as_u64() {
                Some(n) if n > 0 => format!(", {n} evicted or removed meanwhile"),
                _ => String::new(),
            }
        );
    }
    if quarantined.is_empty() {
        Ok(())
    } else {
        Err(Quarantined {
            count: quarantined.len(),
            dir: v["quarantine_dir"].as_str().unwrap_or("?").to_owned(),
        }
        .into())
    }
}

/// `gateway mirror run`: the file's `mirror:` entries (those of `site`
/// only, if given) now, through the daemon; fails naming every entry that
/// failed.
pub async fn mirror_run(
    config: &Config,
    site: Option<&str>,
    dry_run: bool,
    respect_window: bool,
) -> anyhow::Result<()> {
    let entries: Vec<crate::config::Mirror> = config
        .mirror
        .iter()
        .filter(|m| site.is_none_or(|s| m.site.eq_ignore_ascii_case(s)))
        .cloned()
        .collect();
    if entries.is_empty() {
        match site {
            Some(s) => anyhow::bail!("no `mirror:` entry names site {s}"),
            None => anyhow::bail!("the config has no `mirror:` entries"),
        }
    }
    let req = Request::Mirror {
        entries,
        dry_run,
        respect_window,
    };
    let v = run(config, req).await?;
    let mut failed = Vec::new();
    for e in v["entries"].as_array().into_iter().flatten() {
        let label = e["entry"].as_str().unwrap_or("?");
        if let Some(why) = e["skipped"].as_str() {
            println!("{label}: skipped, {why}");
        }
        for r in e["repositories"].as_array().into_iter().flatten() {
            let list = |k: &str| {
                r[k].as_array()
                    .into_iter()
                    .flatten()
                    .filter_map(|t| t.as_str())
                    .collect::<Vec<_>>()
                    .join(", ")
            };
            let (synced, verb) = if dry_run {
                ("would sync", "to fetch")
            } else {
                ("synced", "fetched")
            };
            println!(
                "{}/{}: {synced} [{}], unchanged [{}], {} blob(s) {verb}, {} bytes{}",
                r["site"].as_str().unwrap_or("?"),
                r["repository"].as_str().unwrap_or("?"),
                list("synced"),
                list("unchanged"),
                r["blobs"],
                r["bytes"],
                r["stopped"]
                    .as_str()
                    .map(|s| format!("; stopped: {s}"))
                    .unwrap_or_default(),
            );
            for f in r["failed"].as_array().into_iter().flatten() {
                failed.push(format!(
                    "{label}: tag {}: {}",
                    f["tag"].as_str().unwrap_or("?"),
                    f["error"].as_str().unwrap_or("?")
                ));
            }
        }
        for err in e["errors"].as_array().into_iter().flatten() {
            failed.push(format!("{label}: {}", err.as_str().unwrap_or("?")));
        }
    }
    if failed.is_empty() {
        Ok(())
    } else {
        anyhow::bail!("mirror run failed:\n  {}", failed.join("\n  "))
    }
}

pub async fn du(config: &Config, json: bool) -> anyhow::Result<()> {
    let v = run(config, Request::Du).await?;
    if json {
        println!("{v}");
    } else {
        print!("{}", listing::render_usage(&v));
    }
    Ok(())
}

/// Shows what the daemon says while it works, on stderr: progress lines
/// as they come, and steps as a bar on a terminal (as lines otherwise, for
/// logs).
struct Progress {
    bar: Option<ProgressBar>,
}

impl Progress {
    fn new() -> Self {
        Self { bar: None }
    }

    fn show(&mut self, reply: &Reply) {
        match reply {
            Reply::Progress(p) => match &self.bar {
                Some(bar) => bar.println(p),
                None => eprintln!("{p}"),
            },
            Reply::Step(step) if std::io::stderr().is_terminal() => {
                let bar = self.bar.get_or_insert_with(|| {
                    let bar = ProgressBar::new(step.total);
                    if let Ok(style) = ProgressStyle::with_template(
                        "{wide_bar} {bytes}/{total_bytes} {bytes_per_sec} ({eta}) {msg}",
                    ) {
                        bar.set_style(style);
                    }
                    bar
                });
                bar.set_length(step.total);
                bar.set_position(step.done);
                // An empty line is a tick: the bar moves, the text stays.
                if !step.line.is_empty() {
                    bar.set_message(step.line.clone());
                }
            }
            // Ticks are for the bar only.
            Reply::Step(step) if step.line.is_empty() => {}
            Reply::Step(step) => eprintln!("{}", step.line),
            Reply::Ok(_) | Reply::Error(_) => {}
        }
    }

    fn finish(&mut self) {
        if let Some(bar) = self.bar.take() {
            bar.finish_and_clear();
        }
    }
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
    let mut progress = Progress::new();
    while let Some(line) = lines.next_line().await? {
        let reply = serde_json::from_str::<Reply>(&line)?;
        progress.show(&reply);
        match reply {
            Reply::Progress(_) | Reply::Step(_) => {}
            Reply::Ok(v) => {
                progress.finish();
                return Ok(v);
            }
            Reply::Error(e) => {
                progress.finish();
                anyhow::bail!("{e}")
            }
        }
    }
    progress.finish();
    anyhow::bail!("the gateway closed the control socket without an answer")
}

/// No daemon: open the cache (and the upstreams, for a seed) here.
async fn offline(config: &Config, req: Request) -> anyhow::Result<serde_json::Value> {
    // Only a seed starts a cache; the others would make an empty one where
    // a mistyped cache.dir points.
    let index = config.cache.dir.join("index.redb");
    if !matches!(req, Request::Seed { .. } | Request::Mirror { .. }) && !index.exists() {
        anyhow::bail!(
            "no cache in {} (cache.dir; no gateway daemon answers on {} either): nothing cached yet",
            config.cache.dir.display(),
            socket_path(&config.state_dir).display()
        );
    }
    let serving = crate::sites::build_content(config).await?;
    let control = server::Control {
        cache: Some(serving.cache),
        handlers: crate::reload::Shared::new(serving.handlers),
        audit: None,
        daemon: None,
        reload: None,
        mirror: None,
    };
    let (tx, mut rx) = mpsc::unbounded_channel();
    let printer = tokio::spawn(async move {
        let mut progress = Progress::new();
        while let Some(reply) = rx.recv().await {
            progress.show(&reply);
        }
        progress.finish();
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
