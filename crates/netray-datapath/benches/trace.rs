//! Benchmarks: load a 3-node bundle whose nodes carry the 10,000-service kube-proxy ruleset
//! (target ≤ 1 s), and trace one flow through it, every branch forward and reply (≤ 5 ms).
//!
//! The bundle is `examples/healthy` (a real 3-node lab capture) with each node's host
//! iptables replaced by `netray_netfilter::synth::kube_proxy_dump(10_000, 3)`.

use std::hint::black_box;
use std::net::IpAddr;
use std::path::Path;
use std::time::{Duration, Instant};

use criterion::{Criterion, criterion_group, criterion_main};
use netray_datapath::{Flow, Options, RulesetEngine, Start, World, trace};
use netray_snapshot::{Bundle, IpFamily, IptablesBackend, IptablesDump, NetnsRole};

fn big_bundle(dir: &Path) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/healthy");
    let mut b = Bundle::load(&src).expect("examples/healthy");
    let dump = netray_netfilter::synth::kube_proxy_dump(10_000, 3);
    for n in &mut b.nodes {
        for ns in &mut n.namespaces {
            if ns.role == NetnsRole::Host {
                ns.firewall.iptables = vec![IptablesDump {
                    backend: IptablesBackend::Legacy,
                    family: IpFamily::Ipv4,
                    text: dump.clone(),
                }];
                ns.firewall.nft_json = None;
            }
        }
    }
    b.write_dir(dir).expect("write bundle");
}

fn load(dir: &Path) -> Bundle {
    Bundle::load(dir).expect("load")
}

fn bench(c: &mut Criterion) {
    let tmp = tempfile::tempdir().expect("tempdir");
    big_bundle(tmp.path());
    let t0 = Instant::now();
    let bundle = load(tmp.path());
    let world = World::new(&bundle);
    let engine = RulesetEngine::new(&world);
    eprintln!("load + index + parse (one run): {:?}", t0.elapsed());
    // web-0 (node0) → ClusterIP of service 85, whose endpoints are 10.244.1.1-3 on node1,
    // and of service 7777 (endpoints outside the lab: they exit), from node0's host.
    let flows: Vec<(&str, Flow)> = vec![
        (
            "pod -> svc #85 (3 endpoints on another node)",
            Flow {
                src: "10.244.0.2".parse::<IpAddr>().unwrap(),
                dst: IpAddr::V4(netray_netfilter::synth::service_ip(85)),
                proto: 6,
                sport: 40000,
                dport: Some(80),
                size: None,
                start: Start::Auto,
            },
        ),
        (
            "node -> svc #7777",
            Flow {
                src: "192.168.50.10".parse::<IpAddr>().unwrap(),
                dst: IpAddr::V4(netray_netfilter::synth::service_ip(7777)),
                proto: 6,
                sport: 40000,
                dport: Some(80),
                size: None,
                start: Start::Auto,
            },
        ),
    ];
    for (name, f) in &flows {
        let t = trace(&world, &engine, f, Options::default()).expect("trace");
        eprintln!(
            "{name}: {} branches, shares {:?}",
            t.branches.len(),
            t.shares
        );
    }
    let mut g = c.benchmark_group("datapath-10k-services");
    g.sample_size(10)
        .measurement_time(Duration::from_secs(8))
        .warm_up_time(Duration::from_secs(1));
    g.bench_function("load bundle + world + rulesets (3 nodes)", |b| {
        b.iter(|| {
            let bundle = load(tmp.path());
            let world = World::new(&bundle);
            let engine = RulesetEngine::new(&world);
            black_box((world.ns.len(), engine.diagnostics().len()))
        })
    });
    g.finish();
    let mut g = c.benchmark_group("datapath-trace");
    g.sample_size(30).measurement_time(Duration::from_secs(4));
    for (name, f) in &flows {
        g.bench_function(*name, |b| {
            b.iter(|| black_box(trace(&world, &engine, f, Options::default()).expect("trace")))
        });
    }
    g.finish();
}

criterion_group!(benches, bench);
criterion_main!(benches);
