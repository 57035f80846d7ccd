//! The whole command is the benchmark: the `netray` binary run on generated Kubernetes-scale
//! bundles (10 pods per node, 3 endpoints per Service, kube-proxy rules on every node), as a
//! user waits for it — load, index, parse what the walk needs, walk, report.
//! `cargo bench -p netray --bench cli_load`; each case also prints the child's peak memory.
//!
//! Cases: `diagnose` of a flow to a Service whose endpoints are on another node (the diagnosis
//! with its root cause and fix proof), and `trace` of a flow to a Service with local endpoints.

#[path = "../../netray-diagnose/benches/support/synth_bundle.rs"]
mod synth_bundle;

use std::process::{Command, Stdio};

use criterion::{Criterion, criterion_group, criterion_main};

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");

/// Run netray with `args`; its exit code must be 0 or 1 (an answer, not an error). Returns
/// the child's peak resident memory in KiB (`wait4`).
// The child is reaped by `wait4` (for its rusage), which clippy cannot see.
#[allow(clippy::zombie_processes)]
fn run(args: &[&str]) -> i64 {
    let child = Command::new(NETRAY)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("netray runs");
    let mut status = 0;
    // SAFETY: rusage is plain data, written by wait4 for our own child.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: waits for the child we spawned; `status` and `usage` are valid for writes.
    let pid = unsafe { libc::wait4(child.id() as i32, &mut status, 0, &mut usage) };
    assert_eq!(pid, child.id() as i32, "wait4");
    let code = libc::WEXITSTATUS(status);
    assert!(
        libc::WIFEXITED(status) && code <= 1,
        "netray {args:?} exited with {status:#x}"
    );
    usage.ru_maxrss
}

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("cli");
    g.sample_size(10);
    for (nodes, services) in [(10, 1000), (30, 1000)] {
        let dir = tempfile::tempdir().expect("tempdir");
        synth_bundle::write_bundle(
            dir.path(),
            &synth_bundle::Spec {
                nodes,
                pods_per_node: 10,
                services,
                endpoints: 3,
            },
        )
        .expect("bundle");
        let b = dir.path().to_str().expect("UTF-8 path");
        // svc-7's endpoints are pods 21..23, on node2; svc-0's are on node0 with the client.
        let cases: [(&str, Vec<&str>); 2] = [
            (
                "diagnose",
                vec![
                    "diagnose",
                    "--bundle",
                    b,
                    "--from",
                    "pod/default/pod-0-0",
                    "--to",
                    "svc/ns-7/svc-7:80",
                ],
            ),
            (
                "trace",
                vec![
                    "trace",
                    "--bundle",
                    b,
                    "--from",
                    "pod/default/pod-0-0",
                    "--to",
                    "svc/ns-0/svc-0:80",
                ],
            ),
        ];
        for (name, args) in &cases {
            let id = format!("{name}/{nodes}n_{services}svc");
            eprintln!("{id}: peak memory {} MiB", run(args) / 1024);
            g.bench_function(id, |bch| bch.iter(|| run(args)));
        }
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
