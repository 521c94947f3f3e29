//! The run's binaries: the test package's libtest binaries (as cargo built
//! them), the gateway and xtask itself, hard-linked into a stage directory
//! so that a rebuild during the run (cargo replaces files) cannot change
//! what the VM sees; and the tests each binary holds (`--list`).
use std::{
    collections::BTreeMap,
    fs,
    path::{Path, PathBuf},
    process::Stdio,
};

use anyhow::{Context as _, Result, bail};

use super::{Options, report::Expected};
use crate::cmd;

/// The tests' package, whose binaries the VM runs.
const TEST_PACKAGE: &str = "gateway-tests";

/// A libtest binary of the test package, as cargo built it.
pub struct TestBinary {
    /// `lib`, `bin-<name>` or the integration test's name.
    pub name: String,
    pub path: PathBuf,
}

/// Builds the test package's binaries and returns them
/// (`cargo test --no-run --message-format=json`).
pub fn test_binaries() -> Result<Vec<TestBinary>> {
    println!("vm: cargo test -p {TEST_PACKAGE} --no-run");
    let mut c = cmd::cargo();
    c.args([
        "test",
        "-p",
        TEST_PACKAGE,
        "--no-run",
        "--message-format=json-render-diagnostics",
    ])
    .stdout(Stdio::piped());
    let out = c
        .output()
        .with_context(|| format!("running `{}`", cmd::describe(&c)))?;
    if !out.status.success() {
        bail!(
            "`{}` failed ({}): see the compiler output above",
            cmd::describe(&c),
            out.status
        );
    }
    let binaries = parse_artifacts(&String::from_utf8_lossy(&out.stdout));
    if binaries.is_empty() {
        bail!("`{}` built no test binary", cmd::describe(&c));
    }
    Ok(binaries)
}

/// The test executables in cargo's JSON messages.
fn parse_artifacts(json_lines: &str) -> Vec<TestBinary> {
    let mut out = Vec::new();
    for line in json_lines.lines() {
        let Ok(msg) = serde_json::from_str::<serde_json::Value>(line) else {
            continue;
        };
        if msg["reason"] != "compiler-artifact" || msg["profile"]["test"] != true {
            continue;
        }
        let (Some(exe), Some(name)) = (msg["executable"].as_str(), msg["target"]["name"].as_str())
        else {
            continue;
        };
        let kind = msg["target"]["kind"][0].as_str().unwrap_or("");
        let name = match kind {
            "lib" => "lib".to_owned(),
            "bin" => format!("bin-{name}"),
            _ => name.to_owned(),
        };
        out.push(TestBinary {
            name,
            path: PathBuf::from(exe),
        });
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// Stage directories of runs whose process is gone.
pub fn remove_stale_stages(vm_dir: &Path) {
    let Ok(entries) = fs::read_dir(vm_dir) else {
        return;
    };
    for e in entries.flatten() {
        let name = e.file_name().to_string_lossy().into_owned();
        if let Some(pid) = name.strip_prefix("stage-")
            && !Path::new("/proc").join(pid).exists()
        {
            let _ = fs::remove_dir_all(e.path());
        }
    }
}

/// The binaries of one run, linked into its stage directory.
pub struct Staged {
    pub dir: PathBuf,
    pub gateway: PathBuf,
    /// xtask itself: the guest runner (`xtask vm-guest`).
    pub runner: PathBuf,
    pub binaries: Vec<TestBinary>,
}

/// Hard-links `src` to `dst` (a copy across filesystems).
fn stage_file(src: &Path, dst: &Path) -> Result<()> {
    if fs::hard_link(src, dst).is_err() {
        fs::copy(src, dst)
            .with_context(|| format!("copying {} to {}", src.display(), dst.display()))?;
    }
    Ok(())
}

impl Staged {
    pub fn new(dir: &Path, gateway: &Path, binaries: &[TestBinary]) -> Result<Self> {
        fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
        let staged_gateway = dir.join("gateway");
        stage_file(gateway, &staged_gateway)?;
        let runner = dir.join("xtask");
        let me = std::env::current_exe().context("finding xtask's own binary")?;
        stage_file(&me, &runner)?;
        let mut staged = Vec::new();
        for b in binaries {
            let path = dir.join(format!("test-{}", b.name));
            stage_file(&b.path, &path)?;
            staged.push(TestBinary {
                name: b.name.clone(),
                path,
            });
        }
        Ok(Self {
            dir: dir.to_owned(),
            gateway: staged_gateway,
            runner,
            binaries: staged,
        })
    }

    /// Every binary's tests (`--list` on the host) and those not to run.
    pub fn expected(&self, opts: &Options) -> Result<Vec<Expected>> {
        let mut out = Vec::new();
        for b in &self.binaries {
            let listing = cmd::stdout_of(cmd::new(&b.path).args(["--list", "--format", "terse"]))
                .with_context(|| format!("listing the tests of {}", b.name))?;
            let tests: Vec<String> = listing
                .lines()
                .filter_map(|l| l.trim_end().strip_suffix(": test"))
                .map(str::to_owned)
                .collect();
            let reason = if !opts.only.is_empty() && !opts.only.contains(&b.name) {
                Some("not selected (--only)".to_owned())
            } else {
                None
            };
            let skipped = match reason {
                Some(r) => tests.iter().map(|t| (t.clone(), r.clone())).collect(),
                None => BTreeMap::new(),
            };
            out.push(Expected {
                binary: b.name.clone(),
                tests,
                skipped,
            });
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn test_executables_from_cargo_json() {
        let json = r#"{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"gateway_tests"},"profile":{"test":false},"executable":null}
{"reason":"compiler-artifact","target":{"kind":["lib"],"name":"gateway_tests"},"profile":{"test":true},"executable":"/t/deps/gateway_tests-1"}
{"reason":"compiler-artifact","target":{"kind":["test"],"name":"passthrough"},"profile":{"test":true},"executable":"/t/deps/passthrough-2"}
{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"demo"},"profile":{"test":true},"executable":"/t/deps/demo-3"}
{"reason":"compiler-artifact","target":{"kind":["bin"],"name":"demo"},"profile":{"test":false},"executable":"/t/debug/demo"}
{"reason":"build-finished","success":true}
not json"#;
        let bins = parse_artifacts(json);
        let names: Vec<(&str, &str)> = bins
            .iter()
            .map(|b| (b.name.as_str(), b.path.to_str().unwrap_or("")))
            .collect();
        assert_eq!(
            names,
            [
                ("bin-demo", "/t/deps/demo-3"),
                ("lib", "/t/deps/gateway_tests-1"),
                ("passthrough", "/t/deps/passthrough-2"),
            ]
        );
    }
}
