//! `scan` over generated Kubernetes-scale bundles (10 pods per node, 3 endpoints per Service,
//! kube-proxy rules on every node): `cargo bench -p netray-diagnose --bench scan_scale`.
//! Times what `netray scan` does after loading: index the world, parse every firewall, run
//! every check.

#[path = "support/synth_bundle.rs"]
mod synth_bundle;

use criterion::{Criterion, criterion_group, criterion_main};
use netray_diagnose::scan::scan;
use netray_kube::ClusterView;
use netray_snapshot::Bundle;

fn bench(c: &mut Criterion) {
    let mut g = c.benchmark_group("scan");
    g.sample_size(10);
    for (nodes, services) in [(10, 1000), (30, 1000)] {
        let dir = tempfile::tempdir().expect("tempdir");
        let spec = synth_bundle::Spec {
            nodes,
            pods_per_node: 10,
            services,
            endpoints: 3,
        };
        synth_bundle::write_bundle(dir.path(), &spec).expect("bundle");
        let b = Bundle::load(dir.path()).expect("load");
        let view = b
            .cluster
            .as_ref()
            .map(|v| ClusterView::from_value("cluster.json", v).expect("cluster"));
        g.bench_function(format!("{nodes}n_{services}svc"), |bch| {
            bch.iter(|| scan(&b, view.as_ref()))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
