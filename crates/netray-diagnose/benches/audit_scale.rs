//! `diagnose` with the whole cluster's scan against the scoped scan, and `audit`, on generated
//! bundles (10 pods per node, 3 endpoints per Service, kube-proxy rules on every node):
//! `cargo bench -p netray-diagnose --bench audit_scale`.
//!
//! - `diagnose/{full,scoped}/N`: what `netray diagnose` does for one pod → Service flow,
//!   end to end in the library: load the bundle from disk, index it, parse every firewall,
//!   walk the flow, scan (the whole catalog over every namespace, or only the checks that name
//!   objects over the namespaces the walk visited), diagnose (no fix proofs: they re-walk the
//!   same way in both).
//! - `audit/N`: plan and run `netray audit` after loading (both cores), 30 and 100 nodes with
//!   every target; 300 nodes with the Service targets only (`--proto tcp`: the node and pod
//!   echo probes are nodes², see the report in the issue).
//!
//! Pod CIDRs are /26 above 240 nodes (see support/synth_bundle.rs).

#[path = "support/synth_bundle.rs"]
mod synth_bundle;

use std::path::Path;
use std::sync::atomic::AtomicUsize;

use criterion::{Criterion, criterion_group, criterion_main};
use netray_datapath::walk::{Flow, Start};
use netray_datapath::{RulesetEngine, World, trace};
use netray_diagnose::audit;
use netray_diagnose::diagnose::{Context, Diagnosis, TracedFlow, diagnose, findings_for};
use netray_diagnose::scan::{pod_names, scan_world};
use netray_kube::ClusterView;
use netray_snapshot::Bundle;

fn load(dir: &Path) -> (Bundle, ClusterView) {
    let b = Bundle::load(dir).expect("load");
    let view = ClusterView::from_value("cluster.json", b.cluster.as_ref().expect("cluster.json"))
        .expect("cluster");
    (b, view)
}

/// `netray diagnose --from pod/default/pod-1-0 --to svc/ns-0/svc-0:80`, end to end.
fn diagnose_once(dir: &Path, scoped: bool) -> Diagnosis {
    let (bundle, view) = load(dir);
    let mut world = World::new(&bundle);
    world.name_pods(pod_names(&view));
    let engine = RulesetEngine::new(&world);
    let pod = view
        .pods
        .iter()
        .find(|p| p.name == "pod-1-0")
        .expect("pod-1-0");
    let svc = view
        .services
        .iter()
        .find(|s| s.name == "svc-0")
        .expect("svc-0");
    let flow = Flow {
        src: pod.ips[0],
        dst: svc.cluster_ips[0],
        proto: 6,
        sport: 40000,
        dport: Some(80),
        size: None,
        start: Start::Auto,
    };
    let t = trace(&world, &engine, &flow, netray_datapath::Options::default()).expect("trace");
    let traced = vec![TracedFlow {
        from: "pod/default/pod-1-0".into(),
        to: "svc/ns-0/svc-0:80".into(),
        trace: t,
    }];
    let findings = if scoped {
        findings_for(&world, &engine, Some(&view), &traced)
    } else {
        scan_world(&world, &engine, Some(&view))
    };
    let ctx = Context {
        findings: &findings,
        world: &world,
        pod_network: None,
        rewalk: None,
        collateral: None,
    };
    diagnose("pod/default/pod-1-0", "svc/ns-0/svc-0:80", &traced, &ctx)
}

fn audit_opts(proto: Option<u8>) -> audit::Options {
    audit::Options {
        walk: netray_datapath::Options::default(),
        proto,
        size: None,
        sport: 40000,
        external: None,
        existing: true,
        every_pod: false,
        list_flows: false,
        threads: std::thread::available_parallelism().map_or(1, |n| n.get()),
    }
}

fn bench(c: &mut Criterion) {
    let mut dirs = Vec::new();
    for nodes in [30, 100, 300] {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = synth_bundle::Spec {
            nodes,
            pods_per_node: 10,
            services: 100,
            endpoints: 3,
        };
        synth_bundle::write_bundle(dir.path(), &spec).expect("bundle");
        // The scoped scan must not change the answer.
        let (full, scoped) = (
            diagnose_once(dir.path(), false),
            diagnose_once(dir.path(), true),
        );
        assert_eq!(full, scoped, "{nodes} nodes");
        assert_eq!(full.verdict, netray_diagnose::diagnose::Verdict::Reachable);
        dirs.push((nodes, dir));
    }
    let mut g = c.benchmark_group("diagnose");
    g.sample_size(10);
    for (nodes, dir) in &dirs {
        g.bench_function(format!("full/{nodes}"), |b| {
            b.iter(|| diagnose_once(dir.path(), false))
        });
        g.bench_function(format!("scoped/{nodes}"), |b| {
            b.iter(|| diagnose_once(dir.path(), true))
        });
    }
    g.finish();

    let mut g = c.benchmark_group("audit");
    g.sample_size(10);
    for (nodes, services) in [(30, 20), (100, 20), (300, 20)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = synth_bundle::Spec {
            nodes,
            pods_per_node: 10,
            services,
            endpoints: 3,
        };
        synth_bundle::write_bundle(dir.path(), &spec).expect("bundle");
        let (bundle, view) = load(dir.path());
        let mut world = World::new(&bundle);
        world.name_pods(pod_names(&view));
        let engine = RulesetEngine::new(&world);
        let findings = scan_world(&world, &engine, Some(&view));
        let opts = audit_opts(if nodes >= 300 { Some(6) } else { None });
        let plan = audit::plan(&world, &view, &opts);
        let walks = plan.walks();
        let a = audit::run(
            &world,
            &engine,
            &view,
            &findings,
            &plan,
            &opts,
            &AtomicUsize::new(0),
        );
        assert!(a.groups.is_empty(), "{nodes} nodes: {:#?}", a.groups);
        g.bench_function(
            format!(
                "{nodes}n_{services}svc_{walks}walks{}",
                if opts.proto.is_some() { "_tcp" } else { "" }
            ),
            |b| {
                b.iter(|| {
                    let plan = audit::plan(&world, &view, &opts);
                    audit::run(
                        &world,
                        &engine,
                        &view,
                        &findings,
                        &plan,
                        &opts,
                        &AtomicUsize::new(0),
                    )
                })
            },
        );
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
