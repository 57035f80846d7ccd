//! Shared helpers of the lab tests.
#![allow(dead_code)]

use std::collections::BTreeMap;
use std::net::Ipv4Addr;

use netray_lab::spec::{ClusterSpec, POD_TCP_PORT};
use netray_lab::{Agent, Lab, Probe, ProbeResult};

/// The agent binary cargo built for these tests.
pub fn agent() -> Agent {
    Agent::binary(env!("CARGO_BIN_EXE_nrl-agent"))
}

/// Whether the lab test can run (skips without root, fails under `CI=true`).
pub fn can_run(test: &str) -> bool {
    netray_lab::lab_tests_can_run(test)
}

/// The standard 3-node lab, 2 pods per node (web-0,1 on node0; web-2,3 on node1; web-4,5 on
/// node2).
pub fn standard_lab() -> Lab {
    Lab::up(&ClusterSpec::standard(3, 2), &agent()).expect("lab up")
}

/// A probe source in the reachability matrix.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub enum Src {
    /// A pod.
    Pod(String),
    /// A node's host namespace.
    Host(String),
}

impl Src {
    pub fn member(&self) -> &str {
        match self {
            Src::Pod(p) | Src::Host(p) => p,
        }
    }
}

/// Node (name) of a source.
pub fn src_node(lab: &Lab, s: &Src) -> String {
    match s {
        Src::Host(n) => n.clone(),
        Src::Pod(p) => pod_node(lab, p),
    }
}

/// Node name of a pod.
pub fn pod_node(lab: &Lab, pod: &str) -> String {
    let p = lab.spec().pod(pod).expect("pod");
    lab.spec().nodes[p.node].name.clone()
}

/// Every (source, web pod) pair with the outcome of a direct TCP request: pods and node hosts
/// as sources, every `web-*` pod as destination, a pod never probing itself.
pub fn tcp_matrix(lab: &Lab) -> BTreeMap<(Src, String), ProbeResult> {
    let spec = lab.spec();
    let web: Vec<(String, Ipv4Addr)> = spec
        .pods
        .iter()
        .filter(|p| p.app == "web")
        .map(|p| (p.name.clone(), p.ip))
        .collect();
    let mut sources: Vec<Src> = web.iter().map(|(n, _)| Src::Pod(n.clone())).collect();
    sources.extend(spec.nodes.iter().map(|n| Src::Host(n.name.clone())));
    let mut keys = Vec::new();
    let mut probes = Vec::new();
    for s in &sources {
        for (dst, ip) in &web {
            if s == &Src::Pod(dst.clone()) {
                continue;
            }
            keys.push((s.clone(), dst.clone()));
            probes.push(Probe::tcp(s.member(), *ip, POD_TCP_PORT));
        }
    }
    let results = lab.probe_all(&probes);
    keys.into_iter().zip(results).collect()
}

/// Assert the matrix outcome equals `expect_ok(src, dst)` for every pair, and that answers
/// come from the right pod.
pub fn assert_matrix(lab: &Lab, what: &str, expect_ok: impl Fn(&Src, &str) -> bool) {
    let m = tcp_matrix(lab);
    let mut wrong = Vec::new();
    for ((s, d), r) in &m {
        let want = expect_ok(s, d);
        if r.ok != want || (r.ok && r.answered_by.as_deref() != Some(d.as_str())) {
            wrong.push(format!(
                "  {s:?} -> {d}: expected {}, got {} ({})",
                if want { "ok" } else { "failure" },
                if r.ok { "ok" } else { "failure" },
                r.detail
            ));
        }
    }
    assert!(
        wrong.is_empty(),
        "{what}: {} of {} matrix probes differ:\n{}",
        wrong.len(),
        m.len(),
        wrong.join("\n")
    );
}

/// Probe and assert the outcome.
pub fn expect(lab: &Lab, probe: Probe, ok: bool) -> ProbeResult {
    let r = lab.probe(&probe);
    assert_eq!(
        r.ok,
        ok,
        "{probe}: expected {}, got {:?}",
        if ok { "success" } else { "failure" },
        r
    );
    r
}
