//! `cargo xtask vm --split`: what `cargo xtask test` runs when its VMs
//! run under TCG. The kernel-path suites run on every kernel; each
//! registry-client suite runs on one of them, so that every suite runs
//! inside a VM in every test run and the run stays inside its time budget.
//!
//! Why not all of them everywhere: on the 2-core machine (both kernels side
//! by side, one vCPU each, release gateway, 2026-11-30) the registry-client
//! suites took about 1,150 s per kernel under TCG (skopeo, podman,
//! containerd, the registry and Prometheus are Go programs, and every
//! process start and TLS handshake is emulated), the kernel-path suites
//! about 600 s; with both on both kernels `cargo xtask test` would take
//! about an hour, against its 45-minute budget. Plain `cargo xtask vm`
//! runs every suite on every kernel.

use std::collections::BTreeMap;

use super::report::Expected;

/// Registry-client suites and the kernel each runs on under `--split`,
/// balanced by their measured times (seconds under TCG, in the comments):
/// about 560 s of them per kernel, beside about 600 s of kernel-path
/// suites.
/// Their kernel-dependent part (TLS beside splice passthrough, the sockmap
/// listener lookup, socket options) is exercised on both kernels by the
/// suites every kernel runs (`oci_tls`, `oci_smuggling`, `metrics`,
/// `reload`, `ca_rotation`: TLS and HTTP through the kernel path to the
/// gateway, a registry behind it).
const SPLIT: &[(&str, &str)] = &[
    ("oci", "6.1"),          // 258
    ("oci_margo", "6.1"),    // 104
    ("oci_bounds", "6.1"),   // 71-88
    ("real_site", "6.1"),    // 50
    ("ssrf", "6.1"),         // ~45
    ("faults", "6.12"),      // 140-172
    ("hub_harness", "6.12"), // 124
    ("oci_fill", "6.12"),    // 115-136
    ("oci_harness", "6.12"), // 94-97
    ("oci_tags", "6.12"),    // 40
];

/// The kernel that runs `binary` under `--split`, if it is split.
pub fn home_of(binary: &str) -> Option<&'static str> {
    SPLIT.iter().find(|(b, _)| *b == binary).map(|(_, k)| *k)
}

/// `expected` with the split suites of other kernels skipped, each with a
/// reason naming where it runs.
pub fn apply(expected: &[Expected], kernel: &str) -> Vec<Expected> {
    expected
        .iter()
        .map(|e| {
            let mut skipped: BTreeMap<String, String> = e.skipped.clone();
            if let Some(home) = home_of(&e.binary).filter(|home| *home != kernel) {
                let reason = format!(
                    "runs in the {home} VM of this run: the registry-client suites are split \
                     between the kernels to keep `cargo xtask test` inside 45 minutes under TCG \
                     (`cargo xtask vm` runs every suite on every kernel)"
                );
                for t in &e.tests {
                    skipped.entry(t.clone()).or_insert_with(|| reason.clone());
                }
            }
            Expected {
                binary: e.binary.clone(),
                tests: e.tests.clone(),
                skipped,
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::vm::kernels::KERNELS;

    #[test]
    fn every_split_suite_runs_on_exactly_one_known_kernel() {
        for (binary, kernel) in SPLIT {
            assert!(
                KERNELS.iter().any(|k| k.name == *kernel),
                "{binary} is assigned to unknown kernel {kernel}"
            );
            assert_eq!(SPLIT.iter().filter(|(b, _)| b == binary).count(), 1);
        }
        let expected: Vec<Expected> = ["oci", "faults", "passthrough"]
            .into_iter()
            .map(|b| Expected {
                binary: b.into(),
                tests: vec!["t".into()],
                skipped: BTreeMap::new(),
            })
            .collect();
        let skipped = |kernel| -> Vec<bool> {
            apply(&expected, kernel)
                .iter()
                .map(|e| e.skipped.contains_key("t"))
                .collect()
        };
        assert_eq!(skipped("6.1"), [false, true, false]);
        assert_eq!(skipped("6.12"), [true, false, false]);
    }
}
