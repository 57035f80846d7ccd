//! `-m rpfilter` (`rpfilter_mt`): flags against the reverse lookup the caller computed.

use std::net::IpAddr;

use netray_netfilter::*;
use netray_snapshot::{Firewall, IptablesDump};

fn raw(rules: &str) -> Ruleset {
    let f = Firewall {
        iptables: vec![IptablesDump {
            backend: IptablesBackend::Legacy,
            family: IpFamily::Ipv4,
            text: format!("*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n{rules}COMMIT\n"),
        }],
        nft_json: None,
        ipset: None,
        ipvs: None,
    };
    let rs = Ruleset::from_firewall(&f).expect("parse");
    assert!(rs.diagnostics().is_empty(), "{:?}", rs.diagnostics());
    rs
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn pkt(rpf: Option<Rpf>, mark: u32) -> Packet {
    let mut p = Packet::new(
        ip("10.244.1.2"),
        ip("10.244.0.2"),
        6,
        Some(40000),
        Some(8080),
    );
    p.iif = Some("cali1".into());
    p.mark = mark;
    p.rpf = rpf;
    p
}

fn verdict(rs: &Ruleset, p: &Packet) -> Vec<Verdict> {
    rs.evaluate(
        Hook::Prerouting,
        p,
        &HostContext::default(),
        &EvalOptions::default(),
    )
    .into_iter()
    .map(|o| o.verdict)
    .collect()
}

fn uni(via_iif: bool) -> RpfRoute {
    RpfRoute::Unicast {
        via_iif,
        route: "10.244.1.2 dev x".into(),
    }
}

fn rpf(unmarked: RpfRoute) -> Option<Rpf> {
    Some(Rpf {
        loopback: false,
        unmarked,
        marked: Vec::new(),
        mark_sensitive: false,
        selectors: Vec::new(),
    })
}

#[test]
fn strict_loose_invert_and_route_types() {
    let strict = raw("-A PREROUTING -m rpfilter --invert -j DROP\n");
    let loose = raw("-A PREROUTING -m rpfilter --loose --invert -j DROP\n");
    let plain = raw("-A PREROUTING -m rpfilter -j DROP\n");
    let local = raw("-A PREROUTING -m rpfilter --accept-local --invert -j DROP\n");
    // Route back via the input interface: passes; only the non-inverted rule drops.
    assert_eq!(verdict(&strict, &pkt(rpf(uni(true)), 0)), [Verdict::Accept]);
    assert_eq!(verdict(&plain, &pkt(rpf(uni(true)), 0)), [Verdict::Drop]);
    // Via another interface: strict fails, loose passes.
    assert_eq!(verdict(&strict, &pkt(rpf(uni(false)), 0)), [Verdict::Drop]);
    assert_eq!(verdict(&loose, &pkt(rpf(uni(false)), 0)), [Verdict::Accept]);
    // No route, blackhole: fail even loose.
    assert_eq!(
        verdict(&loose, &pkt(rpf(RpfRoute::NoRoute), 0)),
        [Verdict::Drop]
    );
    let bh = RpfRoute::Other {
        route: "blackhole 10.244.1.0/26".into(),
    };
    assert_eq!(verdict(&loose, &pkt(rpf(bh), 0)), [Verdict::Drop]);
    // A local source passes only with --accept-local.
    let lo = || RpfRoute::Local {
        via_iif: true,
        route: "local 10.244.1.2 dev cali1".into(),
    };
    assert_eq!(verdict(&strict, &pkt(rpf(lo()), 0)), [Verdict::Drop]);
    assert_eq!(verdict(&local, &pkt(rpf(lo()), 0)), [Verdict::Accept]);
    // Loopback input always passes.
    let mut r = rpf(RpfRoute::NoRoute);
    r.as_mut().unwrap().loopback = true;
    assert_eq!(verdict(&strict, &pkt(r, 0)), [Verdict::Accept]);
}

#[test]
fn validmark_uses_the_mark_at_the_rule_and_unknown_names_the_rule() {
    // Felix's layout: a mark is set before the check.
    let rs = raw("-A PREROUTING -j MARK --set-xmark 0x40000/0x40000\n\
         -A PREROUTING -m rpfilter --validmark --invert -j DROP\n");
    // Marks do not matter (no fwmark rules): the unmarked lookup decides.
    assert_eq!(verdict(&rs, &pkt(rpf(uni(true)), 0)), [Verdict::Accept]);
    // Marks matter, and the lookup for the mark at the rule (0x40000) was computed.
    let sensitive = |marked: Vec<(u32, RpfRoute)>, selectors: Vec<(u32, u32)>| {
        Some(Rpf {
            loopback: false,
            unmarked: uni(true),
            marked,
            mark_sensitive: true,
            selectors,
        })
    };
    let p = pkt(
        sensitive(vec![(0x40000, uni(false))], vec![(0x40000, 0x40000)]),
        0,
    );
    assert_eq!(verdict(&rs, &p), [Verdict::Drop]);
    // 0x40001 is not computed but matches the same selector as 0x40000: same lookup.
    let rs1 = raw("-A PREROUTING -j MARK --set-xmark 0x40001/0xffffffff\n\
         -A PREROUTING -m rpfilter --validmark --invert -j DROP\n");
    let p = pkt(
        sensitive(
            vec![(0x40000, uni(false)), (0, uni(true))],
            vec![(0x40000, 0x40000)],
        ),
        0,
    );
    assert_eq!(verdict(&rs1, &p), [Verdict::Drop]);
    // No computed mark is equivalent to the one at the rule: unknown, naming the rule.
    let p = pkt(
        sensitive(vec![(0, uni(false))], vec![(0x40000, 0x40000)]),
        0,
    );
    let out = rs.evaluate(
        Hook::Prerouting,
        &p,
        &HostContext::default(),
        &EvalOptions::default(),
    );
    assert!(
        out.len() > 1 || matches!(out[0].verdict, Verdict::Unknown { .. }),
        "{out:#?}"
    );
    let text = format!("{out:?}");
    assert!(text.contains("rpfilter"), "{text}");
    // Without the caller's lookups the match is unknown too.
    let out = rs.evaluate(
        Hook::Prerouting,
        &pkt(None, 0),
        &HostContext::default(),
        &EvalOptions::default(),
    );
    assert!(format!("{out:?}").contains("needs the routing result"));
}
