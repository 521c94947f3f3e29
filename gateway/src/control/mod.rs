//! The control socket: how `gateway cache ls` and `gateway cache seed` talk
//! to a running daemon (which holds the cache open), and what they do
//! themselves when no daemon runs.
//!
//! The other cache commands (`pin`, `unpin`, `rm`, `verify`, `du`) go
//! the same way: manage.rs.
//!
//! Protocol: a Unix socket at `<state_dir>/control/control.sock`, in a
//! directory of mode 0700 (so no one else can reach the socket even in the
//! moment between its creation and its chmod), mode 0600, answering only
//! root and the daemon's own user (`SO_PEERCRED`). The client writes one
//! JSON request line (at most [`REQUEST_MAX`] bytes), `{"cmd":"ls"}` or
//! `{"cmd":"seed","reference":"host/repo:tag"}` or `{"cmd":"stats"}` (what
//! `gateway status` adds about the daemon: see `stats.rs`) or
//! `{"cmd":"reload","path":"/etc/gateway/gateway.yaml"}`, or
//! `{"cmd":"pin"|"rm","reference":"host/repo:tag"}`, `{"cmd":"unpin","name":"..."}`,
//! `{"cmd":"verify"}`, `{"cmd":"du"}`,
//! `{"cmd":"mirror","entries":[...],"dry_run":false,"respect_window":false}`; the server answers with
//! `{"progress":"..."}` lines (and `{"step":{...}}` for a progress bar) and
//! ends with `{"ok":...}` or `{"error":"..."}`. The daemon always serves the socket, with or
//! without sites.

pub mod client;
mod listing;
mod manage;
mod mirror;
pub mod server;
mod stats;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub const SOCKET_NAME: &str = "control.sock";
/// The directory of the socket, inside `state_dir`.
pub const SOCKET_DIR: &str = "control";
/// The longest request line the daemon reads.
pub const REQUEST_MAX: u64 = 64 * 1024;

pub fn socket_dir(state_dir: &Path) -> PathBuf {
    state_dir.join(SOCKET_DIR)
}

pub fn socket_path(state_dir: &Path) -> PathBuf {
    socket_dir(state_dir).join(SOCKET_NAME)
}

/// Whether a peer with user id `peer` may use the socket of a daemon
/// running as `own`: root, or the daemon's own user.
pub fn peer_allowed(peer: u32, own: u32) -> bool {
    peer == 0 || peer == own
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(tag = "cmd", rename_all = "lowercase")]
pub enum Request {
    Ls,
    Seed {
        reference: String,
    },
    /// The running daemon's own counts (the audit log's).
    Stats,
    /// Re-read the daemon's config file and apply it (`gateway reload`).
    /// `path` is the file the client named, absolute: the daemon refuses
    /// when it runs with another one.
    Reload {
        path: String,
    },
    /// Pin what a cached reference holds, fetching nothing.
    Pin {
        reference: String,
    },
    /// Remove a pin by its name.
    Unpin {
        name: String,
    },
    /// Forget a reference and delete the blobs nothing else names.
    Rm {
        reference: String,
    },
    /// Hash every blob again; quarantine the damaged.
    Verify,
    /// Bytes per site and repository.
    Du,
    /// Run these `mirror:` entries now (`gateway mirror run`: the entries
    /// of the file the client read).
    Mirror {
        entries: Vec<crate::config::Mirror>,
        #[serde(default)]
        dry_run: bool,
        #[serde(default)]
        respect_window: bool,
    },
}

#[derive(Debug, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Reply {
    Progress(String),
    /// Where a long command is: a bar on a terminal, `line` otherwise.
    Step(Step),
    Ok(serde_json::Value),
    Error(String),
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct Step {
    pub done: u64,
    pub total: u64,
    pub line: String,
}

/// `host/repo:tag` or `host/repo@sha256:...`, split.
pub fn parse_reference(text: &str) -> anyhow::Result<(String, String, String)> {
    let (host, rest) = text
        .split_once('/')
        .ok_or_else(|| anyhow::anyhow!("`{text}` has no host: write <host>/<repository>:<tag>"))?;
    let (repo, reference) = if let Some((repo, digest)) = rest.split_once('@') {
        (repo, digest)
    } else {
        match rest.rsplit_once(':') {
            Some((repo, tag)) if !tag.contains('/') => (repo, tag),
            _ => (rest, "latest"),
        }
    };
    if host.is_empty() || repo.is_empty() || reference.is_empty() {
        anyhow::bail!("`{text}` is not <host>/<repository>:<tag>");
    }
    Ok((
        host.to_ascii_lowercase(),
        repo.to_owned(),
        reference.to_owned(),
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn references() {
        let r = |s: &str| parse_reference(s).expect(s);
        assert_eq!(
            r("reg.test/a/b:v1"),
            ("reg.test".into(), "a/b".into(), "v1".into())
        );
        assert_eq!(
            r("Reg.Test/a"),
            ("reg.test".into(), "a".into(), "latest".into())
        );
        let d = "sha256:e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
        assert_eq!(r(&format!("reg.test/a@{d}")).2, d);
        assert!(parse_reference("nohost").is_err());
        assert!(parse_reference("/a:b").is_err());
    }

    #[test]
    fn only_root_and_the_daemons_user_may_connect() {
        assert!(peer_allowed(0, 0));
        assert!(peer_allowed(0, 998));
        assert!(peer_allowed(998, 998));
        assert!(!peer_allowed(1000, 998));
        assert!(!peer_allowed(1000, 0));
    }

    #[test]
    fn wire_format() {
        let req: Request =
            serde_json::from_str(r#"{"cmd":"seed","reference":"r/a:b"}"#).expect("seed");
        assert!(matches!(req, Request::Seed { .. }));
        let req: Request =
            serde_json::from_str(r#"{"cmd":"reload","path":"/etc/gateway/gateway.yaml"}"#)
                .expect("reload");
        assert!(
            matches!(&req, Request::Reload { path } if path == "/etc/gateway/gateway.yaml"),
            "{req:?}"
        );
        assert_eq!(
            serde_json::to_string(&Request::Ls).expect("ls"),
            r#"{"cmd":"ls"}"#
        );
        assert_eq!(
            serde_json::to_string(&Reply::Progress("x".into())).expect("p"),
            r#"{"progress":"x"}"#
        );
        let req: Request =
            serde_json::from_str(r#"{"cmd":"unpin","name":"r/a:b"}"#).expect("unpin");
        assert!(
            matches!(&req, Request::Unpin { name } if name == "r/a:b"),
            "{req:?}"
        );
        for (text, cmd) in [(r#"{"cmd":"verify"}"#, "verify"), (r#"{"cmd":"du"}"#, "du")] {
            let req: Request = serde_json::from_str(text).expect(cmd);
            assert_eq!(serde_json::to_string(&req).expect(cmd), text);
        }
        let step = Reply::Step(Step {
            done: 1,
            total: 2,
            line: "x".into(),
        });
        assert_eq!(
            serde_json::to_string(&step).expect("step"),
            r#"{"step":{"done":1,"total":2,"line":"x"}}"#
        );
    }
}
