//! Hostile-input benchmarks (issue 15): a huge `numgen` modulus, many nft chains, and a goto
//! loop. Each is bounded by construction (interval mass, name indexes, the evaluation limits);
//! these keep the figures honest. Measured on the project's 2-core box (release):
//!
//! | case | before | after |
//! |---|---|---|
//! | `numgen mod 10000000` comparison, one evaluation | 104 ms | 10 µs |
//! | `numgen mod 4294967295`, one evaluation | ~56 s | 9 µs |
//! | nft parse, 100,000 chains | 18.0 s | 1.04 s |
//! | iptables goto loop A → B → A, one evaluation | abort at 2 GB after 4.7 s | 0.2 ms, 2.7 MB |

use std::fmt::Write as _;
use std::hint::black_box;

use criterion::{Criterion, criterion_group, criterion_main};
use netray_netfilter::{
    EvalOptions, Hook, HostContext, IpFamily, IptablesBackend, Packet, Ruleset,
};
use netray_snapshot::{Firewall, IptablesDump};

fn pkt() -> Packet {
    Packet::new(
        "10.0.0.1".parse().unwrap(),
        "10.0.0.2".parse().unwrap(),
        6,
        Some(1),
        Some(80),
    )
}

fn nft(j: String) -> Firewall {
    Firewall {
        nft_json: Some(j),
        ..Default::default()
    }
}

fn numgen(m: u64) -> Ruleset {
    let j = format!(
        r#"{{"nftables": [{{"table": {{"family": "ip", "name": "t", "handle": 1}}}},
 {{"chain": {{"family": "ip", "table": "t", "name": "fwd", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}}},
 {{"rule": {{"family": "ip", "table": "t", "chain": "fwd", "handle": 2, "expr": [{{"match": {{"op": "<", "left": {{"numgen": {{"mode": "random", "mod": {m}, "offset": 0}}}}, "right": 2}}}}, {{"drop": null}}]}}}}]}}"#
    );
    Ruleset::from_firewall(&nft(j)).unwrap()
}

fn chains(n: usize) -> String {
    let mut j =
        String::from(r#"{"nftables": [{"table": {"family": "ip", "name": "t", "handle": 1}}"#);
    for i in 0..n {
        write!(
            j,
            r#",{{"chain": {{"family": "ip", "table": "t", "name": "c{i}", "handle": {}}}}}"#,
            i + 2
        )
        .unwrap();
    }
    for i in 0..n {
        write!(
            j,
            r#",{{"rule": {{"family": "ip", "table": "t", "chain": "c{i}", "handle": 1, "expr": [{{"accept": null}}]}}}}"#
        )
        .unwrap();
    }
    j.push_str("]}");
    j
}

fn goto_loop() -> Ruleset {
    let text = "*filter\n:FORWARD ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n-A FORWARD -g A\n-A A -j MARK --set-xmark 0x1/0x1\n-A A -g B\n-A B -g A\nCOMMIT\n";
    Ruleset::from_firewall(&Firewall {
        iptables: vec![IptablesDump {
            backend: IptablesBackend::Legacy,
            family: IpFamily::Ipv4,
            text: text.into(),
        }],
        ..Default::default()
    })
    .unwrap()
}

fn bench(c: &mut Criterion) {
    let ctx = HostContext::default();
    let opts = EvalOptions::default();
    let p = pkt();
    let rs = numgen(4_294_967_295);
    c.bench_function("numgen mod 4294967295: evaluate", |b| {
        b.iter(|| black_box(rs.evaluate(Hook::Forward, &p, &ctx, &opts)))
    });
    let j = chains(100_000);
    let mut g = c.benchmark_group("nft parse");
    g.sample_size(10);
    g.bench_function("100000 chains", |b| {
        b.iter(|| black_box(Ruleset::from_firewall(&nft(j.clone())).unwrap()))
    });
    g.finish();
    let rs = goto_loop();
    c.bench_function("goto loop: evaluate", |b| {
        b.iter(|| black_box(rs.evaluate(Hook::Forward, &p, &ctx, &opts)))
    });
}

criterion_group!(benches, bench);
criterion_main!(benches);
