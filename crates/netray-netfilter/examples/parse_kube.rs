//! Parse a synthetic kube-proxy dump N times (for `valgrind --tool=callgrind` / `perf`):
//! `cargo run --release -p netray-netfilter --example parse_kube -- [services] [iterations]`.
//! `... -- debug [services] [endpoints]` prints the parsed model with positions (`{:?}`), to
//! compare two versions of the parser.

use std::sync::Arc;
use std::time::Instant;

use netray_netfilter::{IpFamily, IptablesBackend, ipt, synth};

fn main() {
    let mut args = std::env::args().skip(1).peekable();
    if args.peek().map(String::as_str) == Some("debug") {
        args.next();
        let services: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1000);
        let endpoints: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(3);
        let text: Arc<str> = Arc::from(synth::kube_proxy_dump(services, endpoints));
        let d = ipt::parse_dump(IptablesBackend::Legacy, IpFamily::Ipv4, text);
        for t in &d.tables {
            println!("table {}", t.name);
            for c in &t.chains {
                println!(
                    "chain {} {:?} {:?} {:?}",
                    c.name, c.policy, c.counters, c.decl
                );
                for r in &c.rules {
                    println!("  {r:?}");
                }
            }
        }
        println!("{:?}", d.diagnostics);
        return;
    }
    let services: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(10_000);
    let iters: usize = args.next().and_then(|s| s.parse().ok()).unwrap_or(1);
    let text: Arc<str> = Arc::from(synth::kube_proxy_dump(services, 3));
    let mut times = Vec::with_capacity(iters);
    for _ in 0..iters {
        let t = Instant::now();
        let d = ipt::parse_dump(IptablesBackend::Legacy, IpFamily::Ipv4, text.clone());
        let el = t.elapsed().as_secs_f64() * 1e3;
        times.push(el);
        assert!(d.diagnostics.is_empty());
        std::hint::black_box(&d);
        drop(d);
    }
    times.sort_by(f64::total_cmp);
    let best = times.first().copied().unwrap_or(0.0);
    let median = times.get(times.len() / 2).copied().unwrap_or(0.0);
    let mean = times.iter().sum::<f64>() / times.len().max(1) as f64;
    eprintln!(
        "{services} services, {} bytes: best {best:.2} ms, median {median:.2} ms, mean {mean:.2} ms",
        text.len()
    );
}
