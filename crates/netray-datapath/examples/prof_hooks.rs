//! Where the time of a trace over the 10k-service ruleset goes: netfilter hook calls by
//! namespace and hook. `cargo run --release -p netray-datapath --example prof_hooks`.
use std::cell::RefCell;
use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use netray_datapath::nf::{Fact, Netfilter, NfHook, NfOutcome, NfPacket};
use netray_datapath::{Flow, Options, RulesetEngine, Start, World, trace};
use netray_snapshot::{Bundle, IpFamily, IptablesBackend, IptablesDump, NetnsRole};

type Stats = BTreeMap<String, (usize, Duration)>;

struct Timed<'a>(&'a RulesetEngine<'a>, RefCell<Stats>);

impl Netfilter for Timed<'_> {
    fn evaluate(
        &self,
        ns: usize,
        hook: NfHook,
        pkt: &NfPacket,
        nat: bool,
        given: &[Fact],
    ) -> Vec<NfOutcome> {
        let t = Instant::now();
        let r = self.0.evaluate(ns, hook, pkt, nat, given);
        let mut m = self.1.borrow_mut();
        let e = m
            .entry(format!(
                "ns{ns} {} nat={nat} bridged={}",
                hook.name(),
                pkt.bridged
            ))
            .or_default();
        e.0 += 1;
        e.1 += t.elapsed();
        r
    }
}

fn main() {
    let src = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/healthy");
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
    let w = World::new(&b);
    let e = RulesetEngine::new(&w);
    let timed = Timed(&e, RefCell::new(BTreeMap::new()));
    let f = Flow {
        src: "10.244.0.2".parse().expect("static"),
        dst: netray_netfilter::synth::service_ip(85).into(),
        proto: 6,
        sport: 40000,
        dport: Some(80),
        size: None,
        start: Start::Auto,
    };
    let t = Instant::now();
    let r = trace(&w, &timed, &f, Options::default()).expect("trace");
    println!("total {:?}, {} branches", t.elapsed(), r.branches.len());
    for (k, (n, d)) in timed.1.borrow().iter() {
        println!("{k:45} {n:3} calls {d:?}");
    }
}
