//! A three-node Garage cluster (an S3-compatible distributed object store,
//! built by `cargo xtask setup`) for the shared cache tier of issue 16,
//! each node in a namespace of its own behind a store router:
//!
//! ```text
//!  {P}-s1 10.77.11.2 ─┐                         ┌─ gateway ns 10.77.N.2
//!  {P}-s2 10.77.12.2 ─┼─ {P}-st (forwarding) ───┤   (Garage::attach, one
//!  {P}-s3 10.77.13.2 ─┘  10.77.1i.1, 10.77.N.1  └─  link per gateway)
//! ```
//!
//! Each node answers S3 on :3900, RPC on :3901 and the admin API on :3903
//! of its address; replication factor 3, consistency mode `consistent`, so
//! reads and writes need 2 of the 3 nodes. Set-up goes through the admin
//! API in-process ([`admin`]): connect the nodes, assign and apply the
//! layout, import a key, create the bucket and allow the key on it; then
//! one curl (`--aws-sigv4`) writes through one node and reads through the
//! others. A gateway reaches the store over a link of its own, which
//! [`Link::cut`] cuts alone. Nodes are killed by pid (only the ones this
//! harness started); the namespaces go with the site.
//!
//! A test that uses this cluster has `garage` in its name: `cargo xtask
//! test` runs the other root tests while Garage is still building in the
//! background, and these ones (filter `garage`) only after.

mod admin;

use std::{
    fs::File,
    net::{Ipv4Addr, SocketAddr, TcpStream},
    os::unix::fs::PermissionsExt as _,
    path::{Path, PathBuf},
    process::{Child, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context as _, Result, bail};
use serde_json::{Value, json};

use self::admin::Admin;
use crate::{
    netns::{in_ns, ip_batch_in},
    registry::{CurlResponse, curl},
    site::{Link, Site},
};

pub const S3_PORT: u16 = 3900;
const RPC_PORT: u16 = 3901;
const ADMIN_PORT: u16 = 3903;
/// The S3 region the nodes answer for (the SigV4 scope).
pub const REGION: &str = "garage";
pub const BUCKET: &str = "gateway-cache";
/// The version `cargo xtask setup` builds (xtask/src/setup.rs).
pub const VERSION: &str = "2.5.0";
/// Bound on the cluster's set-up, from spawn to the S3 probe (under TCG
/// each debug node takes seconds to start, and a layout change more).
const READY_TIMEOUT: Duration = Duration::from_secs(180);

/// The garage binary: `$GARAGE_BIN`, else cargo's bin dir (where `cargo
/// xtask setup` installs it: `$CARGO_HOME/bin`, `~/.cargo/bin`), else
/// `garage` on `PATH`. Inside `cargo xtask vm` the host passes
/// `GARAGE_BIN`.
pub fn binary() -> Result<PathBuf> {
    if let Some(p) = std::env::var_os("GARAGE_BIN") {
        let p = PathBuf::from(p);
        if !p.is_file() {
            bail!("GARAGE_BIN={} is not a file", p.display());
        }
        return Ok(p);
    }
    let mut candidates = Vec::new();
    if let Some(home) = std::env::var_os("CARGO_HOME") {
        candidates.push(PathBuf::from(home).join("bin/garage"));
    }
    if let Some(home) = std::env::var_os("HOME") {
        candidates.push(PathBuf::from(home).join(".cargo/bin/garage"));
    }
    if let Some(path) = std::env::var_os("PATH") {
        candidates.extend(std::env::split_paths(&path).map(|d| d.join("garage")));
    }
    candidates
        .into_iter()
        .find(|p| p.is_file())
        .with_context(|| {
            format!(
                "no garage binary (GARAGE_BIN, cargo's bin dir, PATH): `cargo xtask setup` builds \
             Garage {VERSION} into cargo's bin dir"
            )
        })
}

/// A Garage process in its namespace.
pub struct Node {
    pub ns: String,
    pub v4: Ipv4Addr,
    pub dir: PathBuf,
    /// The node's id (hex public key), from the admin API.
    pub id: String,
    child: Option<Child>,
}

impl Node {
    pub fn s3_endpoint(&self) -> String {
        format!("http://{}:{S3_PORT}", self.v4)
    }

    pub fn is_running(&mut self) -> bool {
        matches!(self.child.as_mut().map(Child::try_wait), Some(Ok(None)))
    }

    fn log_tail(&self) -> String {
        let text = std::fs::read_to_string(self.dir.join("garage.log")).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(20)..].join("\n")
    }
}

/// The running cluster, its key and bucket.
pub struct Garage {
    pub nodes: Vec<Node>,
    /// The router namespace every node and gateway link goes through.
    pub router_ns: String,
    pub access_key_id: String,
    pub secret_access_key: String,
    /// A file (mode 0600) holding the secret: `secret_access_key_file`.
    pub secret_file: PathBuf,
    admin_token: String,
    dir: PathBuf,
}

impl Garage {
    /// Makes the namespaces and links (`{P}-st`, `{P}-s1..s3`), starts
    /// three nodes and sets up the cluster, key and bucket; returns once S3
    /// answers on every node.
    pub fn start(site: &mut Site) -> Result<Self> {
        let bin = binary()?;
        let router_ns = site.add_namespace("st")?;
        let node_ns: Vec<String> = (1..=3)
            .map(|i| site.add_namespace(&format!("s{i}")))
            .collect::<Result<_>>()?;
        in_ns(&router_ns, || {
            std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")
                .context("enabling forwarding in the store router")
        })??;
        let dir = site.tmp_dir().join("garage");
        let rpc_secret = hex::encode(crate::device::random_bytes(32));
        let admin_token = hex::encode(crate::device::random_bytes(16));
        let mut nodes = Vec::new();
        for (i, ns) in node_ns.into_iter().enumerate() {
            let net = 11 + i as u8;
            let link = site.link(&router_ns, &ns, net)?;
            ip_batch_in(
                &ns,
                &[&["route", "add", "default", "via", &link.a_v4.to_string()]],
            )?;
            let node_dir = dir.join(format!("s{}", i + 1));
            std::fs::create_dir_all(&node_dir)
                .with_context(|| format!("creating {}", node_dir.display()))?;
            nodes.push(Node {
                ns,
                v4: link.b_v4,
                dir: node_dir,
                id: String::new(),
                child: None,
            });
        }
        let mut garage = Self {
            nodes,
            router_ns,
            access_key_id: format!("GK{}", hex::encode(crate::device::random_bytes(12))),
            secret_access_key: hex::encode(crate::device::random_bytes(32)),
            secret_file: dir.join("s3.secret"),
            admin_token,
            dir,
        };
        std::fs::write(&garage.secret_file, &garage.secret_access_key)?;
        std::fs::set_permissions(&garage.secret_file, std::fs::Permissions::from_mode(0o600))?;
        let started = Instant::now();
        let deadline = started + READY_TIMEOUT;
        for i in 0..garage.nodes.len() {
            garage.spawn(i, &bin, &rpc_secret)?;
        }
        garage
            .configure(started, deadline)
            .with_context(|| format!("setting up the Garage cluster\n{}", garage.diagnostics()))?;
        Ok(garage)
    }

    fn spawn(&mut self, i: usize, bin: &Path, rpc_secret: &str) -> Result<()> {
        let node = &mut self.nodes[i];
        let d = node.dir.display();
        let v4 = node.v4;
        // Compression off and no scrub: under TCG every byte costs
        // emulated CPU, and the tests' blobs are random anyway.
        let config = format!(
            r#"metadata_dir = "{d}/meta"
data_dir = "{d}/data"
db_engine = "lmdb"
lmdb_map_size = "1GiB"
replication_factor = 3
consistency_mode = "consistent"
compression_level = "none"
disable_scrub = true
rpc_bind_addr = "{v4}:{RPC_PORT}"
rpc_public_addr = "{v4}:{RPC_PORT}"
rpc_secret = "{rpc_secret}"

[s3_api]
s3_region = "{REGION}"
api_bind_addr = "{v4}:{S3_PORT}"
root_domain = ".s3.garage.test"

[admin]
api_bind_addr = "{v4}:{ADMIN_PORT}"
admin_token = "{token}"
"#,
            token = self.admin_token
        );
        let config_path = node.dir.join("garage.toml");
        std::fs::write(&config_path, config)?;
        std::fs::set_permissions(&config_path, std::fs::Permissions::from_mode(0o600))?;
        let log = File::create(node.dir.join("garage.log"))?;
        let child = crate::netns::exec_in(&node.ns, bin)
            .arg("-c")
            .arg(&config_path)
            .arg("server")
            .env_clear()
            .env("PATH", "/usr/sbin:/usr/bin:/sbin:/bin")
            .env("HOME", &node.dir)
            .env("RUST_LOG", "garage=info,garage_api_s3=warn")
            .stdin(Stdio::null())
            .stdout(log.try_clone()?)
            .stderr(log)
            .spawn()
            .with_context(|| format!("spawning {}", bin.display()))?;
        node.child = Some(child);
        Ok(())
    }

    fn admin(&self, i: usize) -> Admin<'_> {
        Admin {
            ns: &self.nodes[i].ns,
            addr: SocketAddr::from((self.nodes[i].v4, ADMIN_PORT)),
            token: &self.admin_token,
        }
    }

    /// Set-up through the admin API; each phase's time goes to stderr
    /// (the test's output), for runs on slow machines.
    fn configure(&mut self, started: Instant, deadline: Instant) -> Result<()> {
        let phase = |what: &str| eprintln!("garage: {what} after {:?}", started.elapsed());
        for i in 0..self.nodes.len() {
            self.wait_listening(i, deadline)?;
            let info = self.admin(i).get("GetNodeInfo?node=self")?;
            let id = info["success"]
                .as_object()
                .and_then(|m| m.keys().next().cloned())
                .with_context(|| format!("no node id in {info}"))?;
            self.nodes[i].id = id;
        }
        phase("every node answering");
        let peers: Vec<String> = self.nodes[1..]
            .iter()
            .map(|n| format!("{}@{}:{RPC_PORT}", n.id, n.v4))
            .collect();
        let connected = self.admin(0).post("ConnectClusterNodes", &json!(peers))?;
        if connected
            .as_array()
            .is_none_or(|a| a.iter().any(|r| r["success"] != true))
        {
            bail!("connecting the nodes: {connected}");
        }
        let roles: Vec<Value> = self
            .nodes
            .iter()
            .enumerate()
            .map(|(i, n)| json!({"id": n.id, "zone": format!("z{}", i + 1), "capacity": 1u64 << 30, "tags": []}))
            .collect();
        self.admin(0)
            .post("UpdateClusterLayout", &json!({ "roles": roles }))?;
        self.admin(0)
            .post("ApplyClusterLayout", &json!({ "version": 1 }))?;
        phase("nodes connected, layout applied");
        // Writes need the layout on a quorum of nodes: retried until then.
        let key = json!({
            "accessKeyId": self.access_key_id,
            "secretAccessKey": self.secret_access_key,
            "name": "gateways",
        });
        retry(deadline, || self.admin(0).post("ImportKey", &key))?;
        let bucket = retry(deadline, || {
            self.admin(0)
                .post("CreateBucket", &json!({ "globalAlias": BUCKET }))
        })?;
        let bucket_id = bucket["id"]
            .as_str()
            .with_context(|| format!("no bucket id in {bucket}"))?
            .to_owned();
        let allow = json!({
            "bucketId": bucket_id,
            "accessKeyId": self.access_key_id,
            "permissions": {"read": true, "write": true, "owner": true},
        });
        retry(deadline, || self.admin(0).post("AllowBucketKey", &allow))?;
        phase("key and bucket made");
        retry(deadline, || self.probe())?;
        phase("S3 answering");
        Ok(())
    }

    /// Waits until node `i`'s admin port accepts connections.
    fn wait_listening(&mut self, i: usize, deadline: Instant) -> Result<()> {
        let addr = SocketAddr::from((self.nodes[i].v4, ADMIN_PORT));
        loop {
            if !self.nodes[i].is_running() {
                bail!("garage node s{} exited", i + 1);
            }
            let up = in_ns(&self.nodes[i].ns, || {
                TcpStream::connect_timeout(&addr, Duration::from_millis(200)).is_ok()
            })?;
            if up {
                return Ok(());
            }
            if Instant::now() > deadline {
                bail!("garage node s{} not listening on {addr}", i + 1);
            }
            thread::sleep(Duration::from_millis(100));
        }
    }

    /// A probe object PUT through the first node and read back through
    /// the last: S3, the key, the bucket and replication work.
    fn probe(&self) -> Result<()> {
        let body = self.dir.join("probe.txt");
        std::fs::write(&body, "probe\n")?;
        let put = self.s3(0, &["-T", &body.to_string_lossy()], "probe/ready")?;
        if !put.complete() || put.code != 200 {
            bail!(
                "S3 probe PUT: {}: {}",
                put.describe(),
                String::from_utf8_lossy(&put.body())
            );
        }
        let get = self.s3(self.nodes.len() - 1, &[], "probe/ready")?;
        if !get.complete() || get.code != 200 || get.body() != b"probe\n" {
            bail!(
                "S3 probe GET: {}: {}",
                get.describe(),
                String::from_utf8_lossy(&get.body())
            );
        }
        Ok(())
    }

    /// curl options that sign with the cluster's key (SigV4, region
    /// [`REGION`]). Garage wants the payload's hash header on every
    /// request, which curl sends only when given: unsigned (curl signs
    /// the header itself).
    pub fn s3_args(&self) -> Vec<String> {
        vec![
            "--aws-sigv4".to_owned(),
            format!("aws:amz:{REGION}:s3"),
            "--user".to_owned(),
            format!("{}:{}", self.access_key_id, self.secret_access_key),
            "-H".to_owned(),
            "x-amz-content-sha256: UNSIGNED-PAYLOAD".to_owned(),
        ]
    }

    /// `http://<node i>:3900/<bucket>/<key>` (path-style).
    pub fn object_url(&self, i: usize, key: &str) -> String {
        format!("{}/{BUCKET}/{key}", self.nodes[i].s3_endpoint())
    }

    /// A signed S3 request through node `i` from the router namespace:
    /// `args` (e.g. `-I`, `-X DELETE`) come before the object's URL.
    pub fn s3(&self, i: usize, args: &[&str], key: &str) -> Result<CurlResponse> {
        let mut all = self.s3_args();
        all.extend(args.iter().map(|s| s.to_string()));
        all.push(self.object_url(i, key));
        curl::curl(
            &self.router_ns,
            &self.dir.join("curl"),
            &all,
            Duration::from_secs(20),
        )
    }

    /// Whether the bucket holds `key` (a signed HEAD through node `i`).
    pub fn has_object(&self, i: usize, key: &str) -> Result<bool> {
        let r = self.s3(i, &["-I"], key)?;
        match r.code {
            200 => Ok(true),
            404 => Ok(false),
            _ => bail!("HEAD {key}: {}", r.describe()),
        }
    }

    /// Links the store router to `ns` (a gateway namespace, of this
    /// site or another) on `10.77.{net}.0/24` and routes the nodes'
    /// subnets over it; `ns` reaches every node, and the returned link's
    /// [`Link::cut`] (the router's end) cuts it off the store alone.
    pub fn attach(&self, site: &Site, ns: &str, net: u8) -> Result<Link> {
        let link = site.link(&self.router_ns, ns, net)?;
        let via = link.a_v4.to_string();
        let routes: Vec<String> = self
            .nodes
            .iter()
            .map(|n| {
                let o = n.v4.octets();
                format!("{}.{}.{}.0/24", o[0], o[1], o[2])
            })
            .collect();
        let commands: Vec<[&str; 5]> = routes
            .iter()
            .map(|r| ["route", "add", r.as_str(), "via", via.as_str()])
            .collect();
        let refs: Vec<&[&str]> = commands.iter().map(|c| c.as_slice()).collect();
        ip_batch_in(ns, &refs)?;
        Ok(link)
    }

    /// The `store:` block of a gateway's `cache:` section (indented for
    /// it) that points at node `i`.
    pub fn store_yaml(&self, i: usize) -> String {
        let q = |s: &str| Value::String(s.to_owned()).to_string();
        format!(
            "  store:\n    endpoint: {}\n    bucket: {}\n    region: {}\n    access_key_id: {}\n    secret_access_key_file: {}\n",
            q(&self.nodes[i].s3_endpoint()),
            q(BUCKET),
            q(REGION),
            q(&self.access_key_id),
            q(&self.secret_file.to_string_lossy()),
        )
    }

    /// Kills node `i` (SIGKILL, by the pid this harness started).
    pub fn kill_node(&mut self, i: usize) -> Result<()> {
        let node = &mut self.nodes[i];
        let mut child = node
            .child
            .take()
            .with_context(|| format!("node s{} is not running", i + 1))?;
        child.kill().context("killing the garage node")?;
        child.wait().context("reaping the garage node")?;
        Ok(())
    }

    /// Each node's state and the tail of its log, for failure messages.
    pub fn diagnostics(&mut self) -> String {
        let mut s = String::new();
        for (i, n) in self.nodes.iter_mut().enumerate() {
            let state = if n.is_running() {
                "running"
            } else {
                "not running"
            };
            s.push_str(&format!(
                "garage s{} ({}, {state}) log:\n{}\n",
                i + 1,
                n.v4,
                n.log_tail()
            ));
        }
        s
    }
}

impl Drop for Garage {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}

/// `f` until it succeeds or `deadline` passes (then its last error).
fn retry<T>(deadline: Instant, mut f: impl FnMut() -> Result<T>) -> Result<T> {
    loop {
        match f() {
            Ok(v) => return Ok(v),
            Err(e) if Instant::now() > deadline => return Err(e),
            Err(_) => thread::sleep(Duration::from_millis(250)),
        }
    }
}
