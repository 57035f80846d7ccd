//! Kubernetes-scale benchmarks: parse + index of kube-proxy-shaped dumps (10k and 30k services
//! × 3 endpoints) and one packet through nat PREROUTING + filter FORWARD + nat POSTROUTING,
//! next to baselines measured in the same run (reading the file line by line;
//! `iptables-legacy-restore --test` in a scratch namespace when running as root).
//!
//! Peak memory of a parse is measured with a counting allocator and printed as a multiple of
//! the dump size.

use std::alloc::{GlobalAlloc, Layout, System};
use std::hint::black_box;
use std::io::BufRead;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use criterion::{BatchSize, Criterion, criterion_group, criterion_main};
use netray_netfilter::{
    EvalOptions, Hook, HostContext, IpFamily, IptablesBackend, Packet, Ruleset, synth,
};

struct Counting;
static CUR: AtomicUsize = AtomicUsize::new(0);
static PEAK: AtomicUsize = AtomicUsize::new(0);

unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, l: Layout) -> *mut u8 {
        let p = unsafe { System.alloc(l) };
        if !p.is_null() {
            let c = CUR.fetch_add(l.size(), Ordering::Relaxed) + l.size();
            PEAK.fetch_max(c, Ordering::Relaxed);
        }
        p
    }
    unsafe fn dealloc(&self, p: *mut u8, l: Layout) {
        unsafe { System.dealloc(p, l) };
        CUR.fetch_sub(l.size(), Ordering::Relaxed);
    }
}

#[global_allocator]
static A: Counting = Counting;

fn firewall(text: &str) -> netray_snapshot::Firewall {
    netray_snapshot::Firewall {
        iptables: vec![netray_snapshot::IptablesDump {
            backend: IptablesBackend::Legacy,
            family: IpFamily::Ipv4,
            text: text.to_string(),
        }],
        ..Default::default()
    }
}

fn restore_test(path: &std::path::Path) -> Option<Duration> {
    netray_lab::require_root().ok()?;
    let ns = netray_lab::Netns::create(&format!("bn{}", netray_lab::lab_tag())).ok()?;
    let file = std::fs::File::open(path).ok()?;
    let t = Instant::now();
    let out = ns
        .command("iptables-legacy-restore")
        .arg("--test")
        .stdin(file)
        .output()
        .ok()?;
    let d = t.elapsed();
    if !out.status.success() {
        eprintln!(
            "iptables-legacy-restore --test failed: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        return None;
    }
    Some(d)
}

fn bench(c: &mut Criterion) {
    for services in [10_000usize, 30_000] {
        let text = synth::kube_proxy_dump(services, 3);
        let mb = text.len() as f64 / 1e6;
        let path = std::env::temp_dir().join(format!("netray-bench-{services}.save"));
        std::fs::write(&path, &text).unwrap();
        let fw = firewall(&text);
        let arc: Arc<str> = Arc::from(text.as_str());

        // Peak memory of one parse (excluding the caller's copy of the text).
        let base = CUR.load(Ordering::Relaxed);
        PEAK.store(base, Ordering::Relaxed);
        let rs = Ruleset::from_firewall(&fw).unwrap();
        let peak = PEAK.load(Ordering::Relaxed) - base;
        let rules: usize = rs.iptables()[0]
            .tables
            .iter()
            .flat_map(|t| &t.chains)
            .map(|c| c.rules.len())
            .sum();
        eprintln!(
            "[{services} services] dump {mb:.1} MB, {rules} rules, parse peak memory {:.1} MB = {:.2}x dump",
            peak as f64 / 1e6,
            peak as f64 / text.len() as f64
        );
        assert!(rs.diagnostics().is_empty());

        let mut g = c.benchmark_group(format!("kube-proxy-{services}"));
        g.sample_size(10)
            .measurement_time(Duration::from_secs(4))
            .warm_up_time(Duration::from_secs(1));
        g.bench_function("baseline: read file line by line", |b| {
            b.iter(|| {
                let f = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
                let mut n = 0usize;
                for l in f.lines() {
                    n += l.unwrap().len();
                }
                black_box(n)
            })
        });
        g.bench_function("baseline: split in-memory text into lines", |b| {
            b.iter(|| black_box(arc.lines().map(|l| l.len()).sum::<usize>()))
        });
        g.bench_function("parse + index", |b| {
            // Dropping the result is not part of parsing (one result alive at a time).
            b.iter_batched(
                || arc.clone(),
                |t| netray_netfilter::ipt::parse_dump(IptablesBackend::Legacy, IpFamily::Ipv4, t),
                BatchSize::PerIteration,
            )
        });
        g.finish();
        if let Some(d) = restore_test(&path) {
            eprintln!(
                "[{services} services] iptables-legacy-restore --test (one run, in a scratch netns): {d:?}"
            );
        } else {
            eprintln!(
                "[{services} services] iptables-legacy-restore --test baseline skipped (needs root)"
            );
        }

        if services == 10_000 {
            let ctx = HostContext::default();
            let opts = EvalOptions::default();
            let dst = synth::service_ip(7777);
            let mut pkt = Packet::new(
                "192.168.7.7".parse().unwrap(),
                dst.into(),
                6,
                Some(40000),
                Some(80),
            );
            pkt.iif = Some("eth0".into());
            pkt.oif = Some("eth1".into());
            let mut g = c.benchmark_group("packet-10k");
            g.sample_size(50)
                .measurement_time(Duration::from_secs(3))
                .warm_up_time(Duration::from_secs(1));
            g.bench_function("nat PREROUTING + filter FORWARD + nat POSTROUTING", |b| {
                b.iter(|| {
                    let mut n = 0;
                    for o in rs.evaluate(Hook::Prerouting, &pkt, &ctx, &opts) {
                        let mut p = pkt.clone();
                        o.apply_marks(&mut p);
                        if let Some(netray_netfilter::NatAction::Dnat { addr: Some(a), .. }) =
                            &o.nat
                        {
                            p.dst = a.lo;
                        }
                        for f in rs.evaluate(Hook::Forward, &p, &ctx, &opts) {
                            n += rs.evaluate(Hook::Postrouting, &p, &ctx, &opts).len()
                                + f.trail.len();
                        }
                    }
                    black_box(n)
                })
            });
            g.finish();
        }
        let _ = std::fs::remove_file(&path);
    }
}

criterion_group!(benches, bench);
criterion_main!(benches);
