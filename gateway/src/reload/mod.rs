//! Live reload (`systemctl reload`, SIGHUP, `gateway reload`): what a new
//! configuration changes, whether it may change without a restart, and the
//! shared values new connections read.
//!
//! The daemon applies a reload in one place (`daemon.rs`): it loads and
//! validates the file as `check-config` does, asks [`diff`] what changed
//! and whether every change can apply live, builds the new serving side,
//! then swaps it in. Established connections keep the values they started
//! with (they hold an `Arc` of the old ones); new connections read the new.
//!
//! What cannot change without a restart is refused, whole: the old
//! configuration keeps running. See [`RESTART_ONLY`].

pub mod apply;

use std::{
    fmt::Debug,
    sync::{Arc, RwLock},
};

use crate::config::Config;

/// A value that new readers take a snapshot of and a reload replaces.
/// (A lock held only to clone or replace an `Arc`, never across I/O.)
pub struct Shared<T>(RwLock<Arc<T>>);

impl<T> Shared<T> {
    pub fn new(value: T) -> Self {
        Self(RwLock::new(Arc::new(value)))
    }

    /// The current value; unaffected by later stores.
    pub fn load(&self) -> Arc<T> {
        self.0.read().unwrap_or_else(|e| e.into_inner()).clone()
    }

    pub fn store(&self, value: Arc<T>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = value;
    }
}

/// The settings a reload refuses to change, and why each is bound to the
/// daemon's start: what is attached, bound, opened or pinned then.
pub const RESTART_ONLY: &[(&str, &str)] = &[
    (
        "devices.interfaces",
        "the program is attached to them at start",
    ),
    ("kernel.pin_path", "the kernel path is pinned there"),
    ("kernel.mark", "the policy routing rule matches it"),
    ("kernel.route_table", "the policy routing rule points to it"),
    ("kernel.rule_priority", "the policy routing rule has it"),
    ("kernel.attach", "the program is attached in that mode"),
    (
        "kernel.drop_flush_secs",
        "the kernel event reader is started with it",
    ),
    ("state_dir", "the pid file and control socket live there"),
    ("cache.dir", "the cache is opened and locked there"),
    (
        "cache.store",
        "the shared store's client is set up at start",
    ),
    ("audit.path", "the audit log is opened there"),
    ("proxy.port", "the transparent sockets are bound to it"),
    (
        "proxy.max_connections",
        "the connection caps are set at start",
    ),
    (
        "proxy.max_connections_per_device",
        "the connection caps are set at start",
    ),
    ("dns.enabled", "the DNS socket is bound (or not) at start"),
    ("time", "the NTP service is set up at start"),
    ("admin", "the admin listener is bound at start"),
    (
        "children",
        "the children listener is bound and its client CA read at start",
    ),
];

/// What a reload changes.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct Changes {
    /// Top-level keys whose value differs (`sites`, `passthrough`, …).
    pub keys: Vec<String>,
    pub sites_added: Vec<String>,
    pub sites_removed: Vec<String>,
    /// Sites present before and after whose settings differ.
    pub sites_changed: Vec<String>,
}

impl Changes {
    /// One line for the audit record and the `gateway reload` answer.
    pub fn summary(&self) -> String {
        if self.keys.is_empty() {
            // Still applied: a rotated password file or a CA is re-read.
            return "no key changed (sites rebuilt: credential files re-read)".into();
        }
        let mut out = format!("changed: {}", self.keys.join(", "));
        for (what, list) in [
            ("sites added", &self.sites_added),
            ("sites removed", &self.sites_removed),
            ("sites changed", &self.sites_changed),
        ] {
            if !list.is_empty() {
                out.push_str(&format!("; {what}: {}", list.join(", ")));
            }
        }
        out
    }
}

/// A reload refused: the old configuration keeps running.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The file does not load or validate (the message names the key).
    #[error("{0}")]
    Invalid(String),
    #[error("{key} cannot change without a restart ({why}); the old configuration keeps running")]
    RestartOnly { key: String, why: String },
    /// Building the new serving side failed (CA, password file, …).
    #[error("{0}; the old configuration keeps running")]
    Apply(String),
    #[error("the daemon runs with {running}, not {asked}: reload the file it was started with")]
    OtherFile { running: String, asked: String },
}

/// Whether two values are the same setting. Config types are compared by
/// their `Debug` text: they hold no maps (whose order would vary), and
/// this needs no `PartialEq` on every config struct.
fn same<T: Debug>(a: &T, b: &T) -> bool {
    format!("{a:?}") == format!("{b:?}")
}

/// What changes from `old` to `new`, or the first setting that cannot
/// change live.
pub fn diff(old: &Config, new: &Config) -> Result<Changes, Refusal> {
    let restart = |key: &str| {
        let why = RESTART_ONLY
            .iter()
            .find(|(k, _)| *k == key)
            .map_or("", |(_, w)| w);
        Err(Refusal::RestartOnly {
            key: key.to_owned(),
            why: why.to_owned(),
        })
    };
    let (ok, nk) = (&old.kernel, &new.kernel);
    let fixed: [(&str, bool); 18] = [
        (
            "devices.interfaces",
            same(&old.devices.interfaces, &new.devices.interfaces),
        ),
        ("kernel.pin_path", ok.pin_path == nk.pin_path),
        ("kernel.mark", ok.mark == nk.mark),
        ("kernel.route_table", ok.route_table == nk.route_table),
        ("kernel.rule_priority", ok.rule_priority == nk.rule_priority),
        ("kernel.attach", ok.attach == nk.attach),
        (
            "kernel.drop_flush_secs",
            ok.drop_flush_secs == nk.drop_flush_secs,
        ),
        ("state_dir", old.state_dir == new.state_dir),
        ("cache.dir", old.cache.dir == new.cache.dir),
        ("cache.store", old.cache.store == new.cache.store),
        ("audit.path", old.audit.path == new.audit.path),
        ("proxy.port", old.proxy.port == new.proxy.port),
        (
            "proxy.max_connections",
            old.proxy.max_connections == new.proxy.max_connections,
        ),
        (
            "proxy.max_connections_per_device",
            old.proxy.max_connections_per_device == new.proxy.max_connections_per_device,
        ),
        ("dns.enabled", old.dns.enabled == new.dns.enabled),
        ("time", same(&old.time, &new.time)),
        ("admin", same(&old.admin, &new.admin)),
        ("children", same(&old.children, &new.children)),
    ];
    if let Some((key, _)) = fixed.iter().find(|(_, unchanged)| !unchanged) {
        return restart(key);
    }
    // The cache is opened at start only when some site is configured.
    if old.sites.is_empty() && !new.sites.is_empty() {
        return Err(Refusal::RestartOnly {
            key: "sites".into(),
            why: "the first site needs the cache and CA, which are opened at start when sites are configured".into(),
        });
    }

    let mut changes = Changes::default();
    let top: [(&str, bool); 15] = [
        ("devices", same(&old.devices, &new.devices)),
        ("manager", same(&old.manager, &new.manager)),
        ("passthrough", same(&old.passthrough, &new.passthrough)),
        ("dns", same(&old.dns, &new.dns)),
        ("intercept", same(&old.intercept, &new.intercept)),
        ("proxy", same(&old.proxy, &new.proxy)),
        ("upstream", same(&old.upstream, &new.upstream)),
        (
            "upstream_proxy",
            same(&old.upstream_proxy, &new.upstream_proxy),
        ),
        ("kernel", same(&old.kernel, &new.kernel)),
        ("tls", same(&old.tls, &new.tls)),
        ("sites", same(&old.sites, &new.sites)),
        ("cache", same(&old.cache, &new.cache)),
        ("time", same(&old.time, &new.time)),
        ("admin", same(&old.admin, &new.admin)),
        ("mirror", same(&old.mirror, &new.mirror)),
    ];
    changes.keys = top
        .iter()
        .filter(|(_, unchanged)| !unchanged)
        .map(|(k, _)| (*k).to_owned())
        .collect();
    let host = |s: &crate::config::Site| s.host.to_ascii_lowercase();
    for s in &new.sites {
        match old.sites.iter().find(|o| host(o) == host(s)) {
            None => changes.sites_added.push(host(s)),
            Some(o) if !same(o, s) => changes.sites_changed.push(host(s)),
            Some(_) => {}
        }
    }
    for o in &old.sites {
        if !new.sites.iter().any(|s| host(s) == host(o)) {
            changes.sites_removed.push(host(o));
        }
    }
    Ok(changes)
}

#[cfg(test)]
mod tests {
    use super::*;

    const BASE: &str = "devices: {interfaces: [dev0]}\n\
        passthrough: [{name: wfm.example, addresses: [\"10.0.0.5:8443\"]}]\n\
        intercept: {tcp_ports: [80, 443]}\n\
        sites: [{host: registry.example, kind: oci}, {host: Quay.example, kind: oci}]\n";

    fn parse(text: &str) -> Config {
        Config::parse(text).expect(text)
    }

    #[test]
    fn nothing_changed_is_an_empty_diff() {
        let c = diff(&parse(BASE), &parse(BASE)).expect("diff");
        assert_eq!(c, Changes::default());
        assert!(c.summary().contains("no key changed"), "{}", c.summary());
    }

    #[test]
    fn live_changes_are_listed_by_key_and_site() {
        let new = BASE
            .replace("[80, 443]", "[443, 8080]")
            .replace("10.0.0.5:8443", "10.0.0.6:8443")
            .replace(
                "{host: Quay.example, kind: oci}",
                "{host: ghcr.example, kind: oci}, {host: registry.example.net, kind: oci}",
            )
            .replace(
                "{host: registry.example, kind: oci}",
                "{host: registry.example, kind: oci, upstream: \"https://mirror.example\"}",
            )
            + "dns: {ttl: 30}\ncache: {max_size: 1000000, tag_ttl: 5m}\n";
        let c = diff(&parse(BASE), &parse(&new)).expect("diff");
        assert_eq!(
            c.keys,
            ["passthrough", "dns", "intercept", "sites", "cache"]
        );
        assert_eq!(c.sites_added, ["ghcr.example", "registry.example.net"]);
        // Host names compare case-insensitively.
        assert_eq!(c.sites_removed, ["quay.example"]);
        assert_eq!(c.sites_changed, ["registry.example"]);
        let s = c.summary();
        assert!(
            s.starts_with("changed: passthrough, dns, intercept, sites, cache"),
            "{s}"
        );
        assert!(
            s.contains("sites added: ghcr.example, registry.example.net"),
            "{s}"
        );
        assert!(s.contains("sites removed: quay.example"), "{s}");
    }

    #[test]
    fn settings_bound_at_start_are_refused_by_name() {
        let cases = [
            (
                "devices: {interfaces: [dev0]}",
                "devices: {interfaces: [dev0, dev1]}",
                "devices.interfaces",
            ),
            (
                "intercept:",
                "kernel: {pin_path: /sys/fs/bpf/other}\nintercept:",
                "kernel.pin_path",
            ),
            ("intercept:", "kernel: {mark: 7}\nintercept:", "kernel.mark"),
            (
                "intercept:",
                "state_dir: /var/lib/other\nintercept:",
                "state_dir",
            ),
            (
                "intercept:",
                "cache: {dir: /var/cache/other}\nintercept:",
                "cache.dir",
            ),
            (
                "intercept:",
                "audit: {path: /tmp/other.jsonl}\nintercept:",
                "audit.path",
            ),
            (
                "intercept:",
                "proxy: {port: 15002}\nintercept:",
                "proxy.port",
            ),
            (
                "intercept:",
                "proxy: {max_connections: 1000}\nintercept:",
                "proxy.max_connections",
            ),
            (
                "intercept:",
                "dns: {enabled: false}\nintercept:",
                "dns.enabled",
            ),
            ("intercept:", "time: {serve: false}\nintercept:", "time"),
            ("intercept:", "admin: {enabled: false}\nintercept:", "admin"),
        ];
        for (from, to, key) in cases {
            let new = BASE.replacen(from, to, 1);
            match diff(&parse(BASE), &parse(&new)) {
                Err(e @ Refusal::RestartOnly { .. }) => {
                    let text = e.to_string();
                    assert!(
                        text.starts_with(&format!("{key} cannot change without a restart")),
                        "{key}: {text}"
                    );
                    assert!(text.contains("old configuration keeps running"), "{text}");
                }
                other => panic!("{key}: {other:?}"),
            }
        }
        // Timeouts and the kernel's event interval are live.
        let live = BASE.to_owned()
            + "proxy: {idle_timeout_secs: 300}\nkernel: {drop_event_interval_ms: 500}\n";
        let c = diff(&parse(BASE), &parse(&live)).expect("live");
        assert_eq!(c.keys, ["proxy", "kernel"]);
    }

    #[test]
    fn the_upstream_proxy_changes_live() {
        let proxy = "upstream_proxy: {url: \"http://proxy.example:3128\"}\n";
        let with = BASE.to_owned() + proxy;
        let c = diff(&parse(BASE), &parse(&with)).expect("proxy added");
        assert_eq!(c.keys, ["upstream_proxy"]);
        let site_direct = with.replace(
            "{host: registry.example, kind: oci}",
            "{host: registry.example, kind: oci, upstream_proxy: direct}",
        );
        let c = diff(&parse(&with), &parse(&site_direct)).expect("site direct");
        assert_eq!(c.keys, ["sites"]);
        assert_eq!(c.sites_changed, ["registry.example"]);
    }

    #[test]
    fn the_first_site_needs_a_restart_but_the_last_may_go() {
        let none = "devices: {interfaces: [dev0]}\n\
            passthrough: [{name: wfm.example, addresses: [\"10.0.0.5:8443\"]}]\n";
        let e = diff(&parse(none), &parse(BASE)).expect_err("first site");
        assert!(
            e.to_string()
                .starts_with("sites cannot change without a restart"),
            "{e}"
        );
        let c = diff(&parse(BASE), &parse(none)).expect("last site removed");
        assert_eq!(c.sites_removed, ["registry.example", "quay.example"]);
    }

    #[test]
    fn every_restart_only_key_is_documented() {
        // The list the refusals quote is the list the README gives.
        let readme = include_str!("../../../README.md");
        for (key, _) in RESTART_ONLY {
            assert!(
                readme.contains(&format!("`{key}`")),
                "README does not list `{key}`"
            );
        }
    }

    async fn rcode(dns: &crate::dns::Responder, bytes: &[u8]) -> hickory_proto::op::ResponseCode {
        let query = crate::dns::Query {
            bytes,
            device: "10.0.3.7:5353".parse().expect("device"),
            dst: "10.0.3.1:53".parse().expect("dst"),
            ifindex: None,
            transport: crate::dns::Transport::Udp,
        };
        let answer = dns.handle(query).await.expect("an answer");
        hickory_proto::op::Message::from_vec(&answer)
            .expect("answer")
            .metadata
            .response_code
    }

    /// A reload swaps the DNS responder's zone: a removed site's name is
    /// refused from then on, an added one answered.
    #[tokio::test]
    async fn a_reloaded_zone_answers_the_new_names_only() {
        use hickory_proto::{
            op::{Message, MessageType, OpCode, Query, ResponseCode},
            rr::{Name, RecordType},
        };
        let dir = tempfile::tempdir().expect("tempdir");
        let (audit, writer) = crate::audit::Audit::open(&dir.path().join("audit.jsonl"))
            .await
            .expect("audit");
        let with_answer = |c: &str| parse(&format!("{c}dns: {{answer: [\"10.0.0.1\"]}}\n"));
        let old = with_answer(BASE);
        let new = with_answer(&BASE.replace("Quay.example", "ghcr.example"));
        let dns = crate::dns::Responder::new(&old, audit);
        let ask = |name: &str| {
            let mut m = Message::new(7, MessageType::Query, OpCode::Query);
            m.metadata.recursion_desired = true;
            m.add_query(Query::query(
                Name::from_ascii(name).expect("name"),
                RecordType::A,
            ));
            m.to_vec().expect("query")
        };
        let (quay, ghcr) = (ask("quay.example."), ask("ghcr.example."));
        assert_eq!(rcode(&dns, &quay).await, ResponseCode::NoError);
        assert_eq!(rcode(&dns, &ghcr).await, ResponseCode::NXDomain);
        dns.set_zone(&new);
        assert_eq!(rcode(&dns, &quay).await, ResponseCode::NXDomain);
        assert_eq!(rcode(&dns, &ghcr).await, ResponseCode::NoError);
        drop(dns);
        writer.close().await;
    }

    #[test]
    fn a_shared_value_keeps_old_snapshots() {
        let shared = Shared::new(1);
        let before = shared.load();
        shared.store(Arc::new(2));
        assert_eq!((*before, *shared.load()), (1, 2));
    }
}
