//! Evaluator and parser unit tests, one group per match/target family.

use std::net::IpAddr;

use netray_netfilter::*;
use netray_snapshot::{Firewall, IptablesDump};

fn fw(text: &str) -> Ruleset {
    fw_full(text, None, None)
}

fn fw_full(text: &str, ipset: Option<&str>, nft: Option<&str>) -> Ruleset {
    let f = Firewall {
        iptables: vec![IptablesDump {
            backend: IptablesBackend::Legacy,
            family: IpFamily::Ipv4,
            text: text.to_string(),
        }],
        nft_json: nft.map(str::to_string),
        ipset: ipset.map(str::to_string),
        ipvs: None,
    };
    Ruleset::from_firewall(&f).expect("parse")
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn tcp(src: &str, dst: &str, dport: u16) -> Packet {
    Packet::new(ip(src), ip(dst), 6, Some(40000), Some(dport))
}

fn ctx() -> HostContext {
    HostContext {
        addresses: vec![
            LocalAddr {
                iface: "eth0".into(),
                addr: ip("192.168.1.10"),
                prefix_len: 24,
                broadcast: Some(ip("192.168.1.255")),
            },
            LocalAddr {
                iface: "lo".into(),
                addr: ip("127.0.0.1"),
                prefix_len: 8,
                broadcast: None,
            },
        ],
        ..Default::default()
    }
}

fn one(rs: &Ruleset, hook: Hook, p: &Packet) -> Outcome {
    let o = rs.evaluate(hook, p, &ctx(), &EvalOptions::default());
    assert_eq!(o.len(), 1, "expected one outcome: {o:#?}");
    o.into_iter().next().unwrap()
}

/// (chain, index) of the rules that matched, policies as index 0.
fn hits(o: &Outcome) -> Vec<(String, u32)> {
    o.matched_rules()
        .map(|h| (h.chain.to_string(), h.index))
        .collect()
}

fn filter(rules: &str) -> Ruleset {
    fw(&format!(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n{rules}COMMIT\n"
    ))
}

#[test]
fn policy_and_basic_matches() {
    let rs = filter("-A FORWARD -s 10.0.0.0/8 -d 10.1.0.5/32 -p tcp -m tcp --dport 80 -j ACCEPT\n");
    assert!(rs.diagnostics().is_empty(), "{:?}", rs.diagnostics());
    let o = one(&rs, Hook::Forward, &tcp("10.2.0.1", "10.1.0.5", 80));
    assert_eq!(o.verdict, Verdict::Accept);
    assert_eq!(hits(&o), vec![("FORWARD".into(), 1)]);
    let o = one(&rs, Hook::Forward, &tcp("10.2.0.1", "10.1.0.5", 81));
    assert_eq!(o.verdict, Verdict::Drop);
    assert_eq!(o.trail.last().unwrap().matched, Matched::Policy);
    let o = one(&rs, Hook::Forward, &tcp("11.2.0.1", "10.1.0.5", 80));
    assert_eq!(o.verdict, Verdict::Drop);
}

#[test]
fn negation_both_syntaxes() {
    let rs = filter(
        "-A FORWARD ! -s 10.0.0.0/8 -j ACCEPT\n-A FORWARD -p tcp -m tcp --dport ! 22 -j ACCEPT\n",
    );
    assert!(rs.diagnostics().is_empty(), "{:?}", rs.diagnostics());
    assert_eq!(
        one(&rs, Hook::Forward, &tcp("11.0.0.1", "1.1.1.1", 22)).verdict,
        Verdict::Accept
    );
    assert_eq!(
        one(&rs, Hook::Forward, &tcp("10.0.0.1", "1.1.1.1", 22)).verdict,
        Verdict::Drop
    );
    let o = one(&rs, Hook::Forward, &tcp("10.0.0.1", "1.1.1.1", 23));
    assert_eq!(o.verdict, Verdict::Accept);
    assert_eq!(hits(&o), vec![("FORWARD".into(), 2)]);
}

#[test]
fn jump_goto_return() {
    // -j A: A returns → continue in FORWARD. -g B: B ends → back to FORWARD's caller = policy.
    let rs = filter(
        "-A A -p tcp --dport 1 -j RETURN\n-A A -p tcp --dport 2 -j ACCEPT\n-A B -p tcp --dport 3 -j ACCEPT\n\
         -A FORWARD -j A\n-A FORWARD -p tcp --dport 1 -g B\n-A FORWARD -j ACCEPT\n",
    );
    assert!(rs.diagnostics().is_empty(), "{:?}", rs.diagnostics());
    let o = one(&rs, Hook::Forward, &tcp("1.1.1.1", "2.2.2.2", 2));
    assert_eq!(o.verdict, Verdict::Accept);
    assert_eq!(hits(&o), vec![("FORWARD".into(), 1), ("A".into(), 2)]);
    // dport 1: A returns, goto B, B has nothing for port 1 → the base chain's policy (DROP),
    // not FORWARD rule 3.
    let o = one(&rs, Hook::Forward, &tcp("1.1.1.1", "2.2.2.2", 1));
    assert_eq!(o.verdict, Verdict::Drop);
    assert_eq!(
        hits(&o),
        vec![
            ("FORWARD".into(), 1),
            ("A".into(), 1),
            ("FORWARD".into(), 2),
            ("FORWARD".into(), 0)
        ]
    );
    // dport 4: falls through A to FORWARD rule 3.
    let o = one(&rs, Hook::Forward, &tcp("1.1.1.1", "2.2.2.2", 4));
    assert_eq!(hits(&o), vec![("FORWARD".into(), 1), ("FORWARD".into(), 3)]);
}

#[test]
fn marks_and_connmark() {
    let rs = fw(
        "*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
-A PREROUTING -j MARK --set-xmark 0x4000/0x4000\n\
-A PREROUTING -j MARK --or-mark 0x1\n\
-A PREROUTING -j MARK --xor-mark 0x3\n\
-A PREROUTING -m mark --mark 0x4002/0xffff -j CONNMARK --save-mark\n\
-A PREROUTING -j MARK --set-mark 0x10/0xf0\n\
-A PREROUTING -m connmark --mark 0x4002 -j MARK --and-mark 0xff\n\
COMMIT\n",
    );
    assert!(rs.diagnostics().is_empty(), "{:?}", rs.diagnostics());
    let mut p = tcp("1.1.1.1", "2.2.2.2", 80);
    p.mark = 0x100;
    let o = one(&rs, Hook::Prerouting, &p);
    // 0x100 |0x4000 = 0x4100; |1 = 0x4101; ^3 = 0x4102 (mask 0xffff → 0x4102 != 0x4002: no save).
    assert_eq!(o.ct_mark, 0);
    assert_eq!(o.mark, (0x4102 & !0xf0) | 0x10);
    p.mark = 0;
    let o = one(&rs, Hook::Prerouting, &p);
    // 0x4000 → 0x4001 → 0x4002 → save: ctmark 0x4002 → set 0x10/0xf0: 0x4012 → and 0xff: 0x12.
    assert_eq!(o.ct_mark, 0x4002);
    assert_eq!(o.mark, 0x12);
}

#[test]
fn statistic_branches_and_dnat() {
    let rs = fw(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:SVC - [0:0]\n:EP1 - [0:0]\n:EP2 - [0:0]\n:EP3 - [0:0]\n\
-A PREROUTING -d 10.96.0.10/32 -p tcp -m tcp --dport 80 -j SVC\n\
-A SVC -m statistic --mode random --probability 0.33333333349 -j EP1\n\
-A SVC -m statistic --mode random --probability 0.50000000000 -j EP2\n\
-A SVC -j EP3\n\
-A EP1 -p tcp -m tcp -j DNAT --to-destination 10.244.1.2:8080\n\
-A EP2 -p tcp -m tcp -j DNAT --to-destination 10.244.2.2:8080\n\
-A EP3 -p tcp -m tcp -j DNAT --to-destination 10.244.3.2:8080\n\
COMMIT\n",
    );
    assert!(rs.diagnostics().is_empty(), "{:?}", rs.diagnostics());
    let o = rs.evaluate(
        Hook::Prerouting,
        &tcp("10.0.0.1", "10.96.0.10", 80),
        &ctx(),
        &EvalOptions::default(),
    );
    assert_eq!(o.len(), 3);
    let total: f64 = o.iter().map(|x| x.probability).sum();
    assert!((total - 1.0).abs() < 1e-9);
    for x in &o {
        assert!(
            (x.probability - 1.0 / 3.0).abs() < 1e-6,
            "{}",
            x.probability
        );
        assert_eq!(x.verdict, Verdict::Accept);
        match &x.nat {
            Some(NatAction::Dnat {
                addr: Some(a),
                ports: Some(p),
                ..
            }) => {
                assert!(a.lo.to_string().starts_with("10.244."));
                assert_eq!(p.lo, 8080);
            }
            n => panic!("no dnat: {n:?}"),
        }
    }
    // nat disabled: nothing happens.
    let o = rs.evaluate(
        Hook::Prerouting,
        &tcp("10.0.0.1", "10.96.0.10", 80),
        &ctx(),
        &EvalOptions {
            nat: false,
            ..Default::default()
        },
    );
    assert_eq!(o.len(), 1);
    assert!(o[0].nat.is_none());
}

#[test]
fn unknown_match_branches_with_assumptions() {
    let rs = filter(
        "-A FORWARD -m recent --rcheck --seconds 60 --name x -j DROP\n-A FORWARD -j ACCEPT\n",
    );
    assert!(rs.diagnostics().is_empty(), "{:?}", rs.diagnostics());
    let o = rs.evaluate(
        Hook::Forward,
        &tcp("1.1.1.1", "2.2.2.2", 80),
        &ctx(),
        &EvalOptions::default(),
    );
    assert_eq!(o.len(), 2);
    let drop = o.iter().find(|x| x.verdict == Verdict::Drop).unwrap();
    assert_eq!(drop.assumptions.len(), 1);
    assert!(drop.assumptions[0].matched);
    assert!(
        drop.assumptions[0].what.contains("recent"),
        "{:?}",
        drop.assumptions
    );
    let acc = o.iter().find(|x| x.verdict == Verdict::Accept).unwrap();
    assert!(!acc.assumptions[0].matched);
    // The two forks share the probability; same fact, same key.
    assert!((drop.probability - 0.5).abs() < 1e-12);
    assert!((acc.probability - 0.5).abs() < 1e-12);
    assert_eq!(drop.assumptions[0].key, acc.assumptions[0].key);
}

#[test]
fn unknown_target_is_unknown_verdict() {
    let rs = filter("-A FORWARD -p tcp -j SYNPROXY --sack-perm --timestamp\n");
    let o = one(&rs, Hook::Forward, &tcp("1.1.1.1", "2.2.2.2", 80));
    assert!(
        matches!(o.verdict, Verdict::Unknown { .. }),
        "{:?}",
        o.verdict
    );
}

#[test]
fn malformed_line_is_error_item_and_diagnostic() {
    let rs = filter("-A FORWARD -s 10.0.0.300 -j DROP\n-A FORWARD -j ACCEPT\n");
    let d = rs.diagnostics();
    assert_eq!(d.len(), 1, "{d:?}");
    assert_eq!(d[0].line, 7);
    assert_eq!(d[0].column, 15);
    assert!(d[0].message.contains("10.0.0.300"));
    let o = rs.evaluate(
        Hook::Forward,
        &tcp("1.1.1.1", "2.2.2.2", 80),
        &ctx(),
        &EvalOptions::default(),
    );
    // Nothing is known of the rule, not even its target: every packet reaching it is unknown,
    // and the verdict names the line.
    assert_eq!(o.len(), 1, "{o:?}");
    match &o[0].verdict {
        Verdict::Unknown { reason } => assert!(reason.contains("line 7"), "{reason}"),
        v => panic!("{v:?}"),
    }
}

#[test]
fn conntrack_and_state() {
    let rs = filter(
        "-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         -A FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A FORWARD -m conntrack --ctstate DNAT --ctorigdst 10.96.0.1 -j ACCEPT\n\
         -A FORWARD -m state ! --state NEW -j REJECT --reject-with tcp-reset\n",
    );
    assert!(rs.diagnostics().is_empty(), "{:?}", rs.diagnostics());
    let mut p = tcp("1.1.1.1", "10.244.0.5", 80);
    p.ct.state = CtState::Established;
    assert_eq!(
        hits(&one(&rs, Hook::Forward, &p)),
        vec![("FORWARD".into(), 1)]
    );
    p.ct.state = CtState::New;
    p.ct.status = ct_status::DST_NAT;
    p.ct.orig_dst = Some(ip("10.96.0.1"));
    assert_eq!(
        hits(&one(&rs, Hook::Forward, &p)),
        vec![("FORWARD".into(), 3)]
    );
    p.ct.status = 0;
    assert_eq!(one(&rs, Hook::Forward, &p).verdict, Verdict::Drop);
    p.ct.state = CtState::Untracked;
    assert_eq!(
        one(&rs, Hook::Forward, &p).verdict,
        Verdict::Reject {
            with: RejectWith::TcpReset
        }
    );
}

#[test]
fn addrtype_src_dst_and_limit_iface() {
    let rs = fw(
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:NP - [0:0]\n\
-A PREROUTING -m addrtype --dst-type LOCAL --limit-iface-in -j NP\n\
-A PREROUTING -m addrtype --src-type LOCAL -j ACCEPT\n\
-A PREROUTING -m addrtype --dst-type BROADCAST -j ACCEPT\n\
COMMIT\n",
    );
    assert!(rs.diagnostics().is_empty(), "{:?}", rs.diagnostics());
    let mut p = tcp("8.8.8.8", "192.168.1.10", 80);
    p.iif = Some("eth0".into());
    assert_eq!(
        hits(&one(&rs, Hook::Prerouting, &p))[0],
        ("PREROUTING".into(), 1)
    );
    p.iif = Some("eth1".into());
    assert!(
        hits(&one(&rs, Hook::Prerouting, &p))
            .iter()
            .all(|h| h.1 != 1)
    );
    let p = tcp("192.168.1.10", "8.8.8.8", 80);
    assert_eq!(
        hits(&one(&rs, Hook::Prerouting, &p))[0],
        ("PREROUTING".into(), 2)
    );
    let p = Packet::new(ip("8.8.8.8"), ip("192.168.1.255"), 17, Some(1), Some(2));
    assert_eq!(
        hits(&one(&rs, Hook::Prerouting, &p))[0],
        ("PREROUTING".into(), 3)
    );
}

#[test]
fn multiport_icmp_iprange_length_physdev_iface() {
    let rs = filter(
        "-A FORWARD -p tcp -m multiport --dports 22,80:90 -j ACCEPT\n\
         -A FORWARD -p icmp -m icmp --icmp-type 8 -j ACCEPT\n\
         -A FORWARD -m iprange --src-range 5.5.5.1-5.5.5.9 -j ACCEPT\n\
         -A FORWARD -m length --length 1000:2000 -j ACCEPT\n\
         -A FORWARD -m physdev --physdev-in veth+ --physdev-is-bridged -j ACCEPT\n\
         -A FORWARD -i cni+ ! -o eth0 -j ACCEPT\n",
    );
    assert!(rs.diagnostics().is_empty(), "{:?}", rs.diagnostics());
    let h = |p: &Packet| hits(&one(&rs, Hook::Forward, p));
    assert_eq!(
        h(&tcp("1.1.1.1", "2.2.2.2", 85)),
        vec![("FORWARD".into(), 1)]
    );
    let mut ping = Packet::new(ip("1.1.1.1"), ip("2.2.2.2"), 1, None, None);
    ping.icmp = Some((8, 0));
    assert_eq!(h(&ping), vec![("FORWARD".into(), 2)]);
    ping.icmp = Some((0, 0));
    assert_eq!(h(&ping), vec![("FORWARD".into(), 0)]);
    assert_eq!(
        h(&tcp("5.5.5.5", "2.2.2.2", 1)),
        vec![("FORWARD".into(), 3)]
    );
    let mut big = tcp("1.1.1.1", "2.2.2.2", 1);
    big.len = 1500;
    assert_eq!(h(&big), vec![("FORWARD".into(), 4)]);
    let mut br = tcp("1.1.1.1", "2.2.2.2", 1);
    br.bridged = true;
    br.physdev_in = Some("veth1".into());
    br.physdev_out = Some("veth2".into());
    assert_eq!(h(&br), vec![("FORWARD".into(), 5)]);
    let mut c = tcp("1.1.1.1", "2.2.2.2", 1);
    c.iif = Some("cni0".into());
    c.oif = Some("eth1".into());
    assert_eq!(h(&c), vec![("FORWARD".into(), 6)]);
    c.oif = Some("eth0".into());
    assert_eq!(h(&c), vec![("FORWARD".into(), 0)]);
}

#[test]
fn ipset_match_directions() {
    let sets = "create ALLOW hash:ip,port family inet\nadd ALLOW 2.2.2.2,tcp:443\ncreate NETS hash:net family inet\nadd NETS 1.1.0.0/16\n";
    let rs = fw_full(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
-A FORWARD -m set --match-set ALLOW dst,dst -j ACCEPT\n\
-A FORWARD -m set ! --match-set NETS src -j REJECT\n\
-A FORWARD -m set --match-set MISSING src -j ACCEPT\n\
COMMIT\n",
        Some(sets),
        None,
    );
    assert!(rs.diagnostics().is_empty(), "{:?}", rs.diagnostics());
    assert_eq!(
        one(&rs, Hook::Forward, &tcp("1.1.1.1", "2.2.2.2", 443)).verdict,
        Verdict::Accept
    );
    assert!(matches!(
        one(&rs, Hook::Forward, &tcp("9.1.1.1", "2.2.2.2", 80)).verdict,
        Verdict::Reject { .. }
    ));
    // Missing set: unknown → two outcomes.
    let o = rs.evaluate(
        Hook::Forward,
        &tcp("1.1.1.1", "2.2.2.2", 80),
        &ctx(),
        &EvalOptions::default(),
    );
    assert_eq!(o.len(), 2);
}

#[test]
fn hook_order_tables_and_nat_rewrite_seen_by_filter() {
    // OUTPUT: raw → mangle → nat (DNAT) → filter sees the new destination.
    let rs = fw(
        "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n-A OUTPUT -j CT --zone 5\nCOMMIT\n\
*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
-A OUTPUT -d 10.96.0.1/32 -p tcp -m tcp --dport 443 -j DNAT --to-destination 192.168.1.50:6443\n\
-A POSTROUTING -o eth0 -j MASQUERADE --random-fully\nCOMMIT\n\
*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
-A OUTPUT -d 192.168.1.50/32 -p tcp -m tcp --dport 6443 -j DROP\nCOMMIT\n",
    );
    assert!(rs.diagnostics().is_empty(), "{:?}", rs.diagnostics());
    let o = one(&rs, Hook::Output, &tcp("192.168.1.10", "10.96.0.1", 443));
    assert_eq!(o.verdict, Verdict::Drop);
    assert_eq!(o.ct.zone, Some(5));
    let tables: Vec<&str> = o
        .matched_rules()
        .filter(|h| h.index > 0)
        .map(|h| &*h.table)
        .collect();
    assert_eq!(tables, vec!["raw", "nat", "filter"]);
    let mut p = tcp("10.244.0.5", "8.8.8.8", 53);
    p.oif = Some("eth0".into());
    let o = one(&rs, Hook::Postrouting, &p);
    assert!(matches!(
        o.nat,
        Some(NatAction::Masquerade {
            random_fully: true,
            ..
        })
    ));
}

#[test]
fn parser_details() {
    let rs = fw(
        "# Generated by iptables-save\n*filter\n:INPUT DROP [10:600]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
[5:300] -A INPUT -m comment --comment \"a \\\"quoted\\\" comment\" -j ACCEPT\n\
-A INPUT -p tcp --syn -j LOG --log-prefix \"syn: \"\n\
COMMIT\n# Completed\n",
    );
    assert!(rs.diagnostics().is_empty(), "{:?}", rs.diagnostics());
    let d = &rs.iptables()[0];
    let c = d.table("filter").unwrap().chain("INPUT").unwrap();
    assert_eq!(c.counters, Some((10, 600)));
    assert_eq!(c.rules.len(), 2);
    assert_eq!(c.rules[0].counters, Some((5, 300)));
    match &c.rules[0].matches[0] {
        ipt::Match::Comment(s) => assert_eq!(d.str(s), "a \"quoted\" comment"),
        m => panic!("{m:?}"),
    }
    let o = one(&rs, Hook::Input, &tcp("1.1.1.1", "2.2.2.2", 1));
    assert_eq!(o.trail[0].counters, Some((5, 300)));
    assert!(o.trail[0].text.starts_with("-A INPUT -m comment"));
}

#[test]
fn restore_style_noflush_input() {
    // No built-in chain declarations, chain declared after use, -N and -I.
    let rs = fw(
        "*filter\n-A FORWARD -j LATE\n:LATE - [0:0]\n-N OTHER\n-A LATE -j OTHER\n-A OTHER -j DROP\n-I FORWARD 1 -p udp -j ACCEPT\nCOMMIT\n",
    );
    assert!(rs.diagnostics().is_empty(), "{:?}", rs.diagnostics());
    assert_eq!(
        one(&rs, Hook::Forward, &tcp("1.1.1.1", "2.2.2.2", 1)).verdict,
        Verdict::Drop
    );
    let p = Packet::new(ip("1.1.1.1"), ip("2.2.2.2"), 17, Some(1), Some(2));
    assert_eq!(one(&rs, Hook::Forward, &p).verdict, Verdict::Accept);
}

#[test]
fn undeclared_goto_is_diagnosed() {
    let rs = fw("*filter\n:FORWARD ACCEPT [0:0]\n-A FORWARD -g nowhere\nCOMMIT\n");
    assert_eq!(rs.diagnostics().len(), 1);
    assert_eq!(rs.diagnostics()[0].line, 3);
}

const NFT: &str = r#"{"nftables": [
 {"metainfo": {"version": "1.0.9", "json_schema_version": 1}},
 {"table": {"family": "ip", "name": "kube-proxy", "handle": 1}},
 {"chain": {"family": "ip", "table": "kube-proxy", "name": "nat-prerouting", "handle": 1, "type": "nat", "hook": "prerouting", "prio": -100, "policy": "accept"}},
 {"chain": {"family": "ip", "table": "kube-proxy", "name": "filter-forward", "handle": 2, "type": "filter", "hook": "forward", "prio": -110, "policy": "accept"}},
 {"chain": {"family": "ip", "table": "kube-proxy", "name": "services", "handle": 3}},
 {"chain": {"family": "ip", "table": "kube-proxy", "name": "svc-a", "handle": 4}},
 {"chain": {"family": "ip", "table": "kube-proxy", "name": "ep-1", "handle": 5}},
 {"chain": {"family": "ip", "table": "kube-proxy", "name": "ep-2", "handle": 6}},
 {"map": {"family": "ip", "name": "service-ips", "table": "kube-proxy", "type": ["ipv4_addr", "inet_proto", "inet_service"], "handle": 7, "map": "verdict",
   "elem": [[{"concat": ["10.96.0.10", "tcp", 80]}, {"goto": {"target": "svc-a"}}]]}},
 {"set": {"family": "ip", "name": "blocked", "table": "kube-proxy", "type": "ipv4_addr", "handle": 8, "flags": ["interval"],
   "elem": [{"prefix": {"addr": "6.6.0.0", "len": 16}}]}},
 {"rule": {"family": "ip", "table": "kube-proxy", "chain": "nat-prerouting", "handle": 10, "expr": [{"jump": {"target": "services"}}]}},
 {"rule": {"family": "ip", "table": "kube-proxy", "chain": "services", "handle": 11, "expr": [{"vmap": {"key": {"concat": [{"payload": {"protocol": "ip", "field": "daddr"}}, {"meta": {"key": "l4proto"}}, {"payload": {"protocol": "th", "field": "dport"}}]}, "data": "@service-ips"}}]}},
 {"rule": {"family": "ip", "table": "kube-proxy", "chain": "svc-a", "handle": 12, "expr": [{"mangle": {"key": {"meta": {"key": "mark"}}, "value": {"|": [{"meta": {"key": "mark"}}, 16384]}}}, {"vmap": {"key": {"numgen": {"mode": "random", "mod": 2, "offset": 0}}, "data": {"set": [[0, {"goto": {"target": "ep-1"}}], [1, {"goto": {"target": "ep-2"}}]]}}}]}},
 {"rule": {"family": "ip", "table": "kube-proxy", "chain": "ep-1", "handle": 13, "expr": [{"dnat": {"addr": "10.244.1.5", "port": 8080, "family": "ip"}}]}},
 {"rule": {"family": "ip", "table": "kube-proxy", "chain": "ep-2", "handle": 14, "expr": [{"dnat": {"addr": "10.244.2.5", "port": 8080, "family": "ip"}}]}},
 {"rule": {"family": "ip", "table": "kube-proxy", "chain": "filter-forward", "handle": 15, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@blocked"}}, {"counter": {"packets": 3, "bytes": 180}}, {"drop": null}]}},
 {"rule": {"family": "ip", "table": "kube-proxy", "chain": "filter-forward", "handle": 16, "expr": [{"match": {"op": "in", "left": {"ct": {"key": "state"}}, "right": ["established", "related"]}}, {"accept": null}]}},
 {"rule": {"family": "ip", "table": "kube-proxy", "chain": "filter-forward", "handle": 17, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "tcp", "field": "dport"}}, "right": {"set": [22, {"range": [8000, 8100]}]}}}, {"reject": {"type": "tcp reset"}}]}}
]}"#;

#[test]
fn nft_kube_proxy_style() {
    let rs = fw_full("", None, Some(NFT));
    assert!(rs.diagnostics().is_empty(), "{:?}", rs.diagnostics());
    let o = rs.evaluate(
        Hook::Prerouting,
        &tcp("1.1.1.1", "10.96.0.10", 80),
        &ctx(),
        &EvalOptions::default(),
    );
    assert_eq!(o.len(), 2, "{o:#?}");
    for x in &o {
        assert!((x.probability - 0.5).abs() < 1e-9);
        assert_eq!(x.mark, 0x4000);
        assert!(matches!(x.nat, Some(NatAction::Dnat { .. })));
    }
    let o = one(&rs, Hook::Prerouting, &tcp("1.1.1.1", "10.96.0.11", 80));
    assert!(o.nat.is_none());
    let o = one(&rs, Hook::Forward, &tcp("6.6.1.1", "2.2.2.2", 80));
    assert_eq!(o.verdict, Verdict::Drop);
    assert_eq!(o.trail[0].counters, Some((3, 180)));
    assert_eq!(o.trail[0].handle, Some(15));
    let o = one(&rs, Hook::Forward, &tcp("1.1.1.1", "2.2.2.2", 8050));
    assert_eq!(
        o.verdict,
        Verdict::Reject {
            with: RejectWith::TcpReset
        }
    );
    let mut p = tcp("1.1.1.1", "2.2.2.2", 8050);
    p.ct.state = CtState::Established;
    assert_eq!(one(&rs, Hook::Forward, &p).verdict, Verdict::Accept);
}

#[test]
fn nft_skips_iptables_nft_tables() {
    let json = r#"{"nftables": [{"table": {"family": "ip", "name": "filter", "handle": 1}},
 {"chain": {"family": "ip", "table": "filter", "name": "FORWARD", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}}]}"#;
    let f = Firewall {
        iptables: vec![IptablesDump {
            backend: IptablesBackend::Nft,
            family: IpFamily::Ipv4,
            text:
                "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n"
                    .into(),
        }],
        nft_json: Some(json.into()),
        ipset: None,
        ipvs: None,
    };
    let rs = Ruleset::from_firewall(&f).unwrap();
    assert!(rs.nftables().tables.is_empty());
    let o = one(&rs, Hook::Forward, &tcp("1.1.1.1", "2.2.2.2", 1));
    // One policy hit only (not two: the table is not counted twice).
    assert_eq!(o.trail.len(), 1);
    assert_eq!(o.trail[0].backend, Backend::IptablesNft);
}

#[test]
fn nft_bad_json_is_an_error_with_position() {
    let f = Firewall {
        nft_json: Some("{\"nftables\": [\n  {\"table\": }\n]}".into()),
        ..Default::default()
    };
    let e = Ruleset::from_firewall(&f).unwrap_err();
    assert_eq!(e.0.line, 2);
}
