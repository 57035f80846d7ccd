//! Hostile and broken input: every limit of the evaluator and every line that does not parse
//! ends in an `Unknown` verdict that names the rule / line and the limit, never in a confident
//! verdict and never in unbounded work (the large inputs are generated here). Also: unknown
//! facts are decided once per path.

use std::fmt::Write as _;
use std::net::IpAddr;

use netray_netfilter::*;
use netray_snapshot::{Firewall, IptablesDump};

fn fw_full(text: &str, ipset: Option<&str>, nft: Option<&str>) -> Ruleset {
    let f = Firewall {
        iptables: if text.is_empty() {
            Vec::new()
        } else {
            vec![IptablesDump {
                backend: IptablesBackend::Legacy,
                family: IpFamily::Ipv4,
                text: text.to_string(),
            }]
        },
        nft_json: nft.map(str::to_string),
        ipset: ipset.map(str::to_string),
        ipvs: None,
    };
    Ruleset::from_firewall(&f).expect("parse")
}

fn filter(rules: &str) -> Ruleset {
    fw_full(
        &format!(
            "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n{rules}COMMIT\n"
        ),
        None,
        None,
    )
}

fn ip(s: &str) -> IpAddr {
    s.parse().unwrap()
}

fn pkt() -> Packet {
    Packet::new(ip("10.0.0.1"), ip("10.0.0.2"), 6, Some(40000), Some(80))
}

fn eval(rs: &Ruleset, hook: Hook) -> Vec<Outcome> {
    rs.evaluate(
        hook,
        &pkt(),
        &HostContext::default(),
        &EvalOptions::default(),
    )
}

fn sum(o: &[Outcome]) -> f64 {
    o.iter().map(|x| x.probability).sum()
}

/// The single outcome's unknown reason.
fn unknown_reason(o: &[Outcome]) -> String {
    assert_eq!(o.len(), 1, "{o:#?}");
    match &o[0].verdict {
        Verdict::Unknown { reason } => reason.clone(),
        v => panic!("expected unknown, got {v:?}"),
    }
}

#[test]
fn iptables_goto_loop_is_unknown_naming_the_limit() {
    let rs = filter("-A FORWARD -g A\n-A A -j MARK --set-xmark 0x1/0x1\n-A A -g B\n-A B -g A\n");
    let r = unknown_reason(&eval(&rs, Hook::Forward));
    assert!(r.contains("MAX_TRANSFERS_PER_PATH"), "{r}");
    assert!(r.contains("filter/A#2") || r.contains("filter/B#1"), "{r}");
    // The trail is bounded by the limit too.
    let o = eval(&rs, Hook::Forward);
    assert!(o[0].trail.len() <= 3 * limits::MAX_TRANSFERS_PER_PATH as usize);
}

#[test]
fn iptables_goto_self_loop_and_jump_loop() {
    let rs = filter("-A FORWARD -j A\n-A A -g A\n");
    let r = unknown_reason(&eval(&rs, Hook::Forward));
    assert!(
        r.contains("MAX_TRANSFERS_PER_PATH") && r.contains("filter/A#1"),
        "{r}"
    );
    let rs = filter("-A FORWARD -j A\n-A A -j B\n-A B -j A\n");
    let r = unknown_reason(&eval(&rs, Hook::Forward));
    assert!(r.contains("MAX_CHAIN_DEPTH"), "{r}");
}

#[test]
fn loop_with_forks_stays_bounded() {
    // Every pass through the loop forks on a random match: branches and steps are bounded,
    // every branch ends unknown, the probabilities still sum to 1.
    let rs = filter(
        "-A FORWARD -g A\n-A A -m statistic --mode random --probability 0.5 -j MARK --set-xmark 0x1/0x1\n-A A -g A\n",
    );
    let o = eval(&rs, Hook::Forward);
    assert!(o.len() <= limits::DEFAULT_MAX_BRANCHES + 1);
    assert!(
        o.iter()
            .all(|x| matches!(x.verdict, Verdict::Unknown { .. }))
    );
    assert!((sum(&o) - 1.0).abs() < 1e-9, "{}", sum(&o));
}

#[test]
fn rule_step_limit_is_unknown() {
    // 1000 jumps (under the per-path limit) into a chain of 2000 rules that do not match:
    // 2,000,000 rule steps, more than MAX_RULE_STEPS.
    let mut rules = String::new();
    for _ in 0..1000 {
        rules.push_str("-A FORWARD -j A\n");
    }
    for i in 0..2000 {
        writeln!(rules, "-A A -s 192.0.2.{}/32 -j DROP", i % 250).unwrap();
    }
    let rs = filter(&rules);
    let r = unknown_reason(&eval(&rs, Hook::Forward));
    assert!(r.contains("MAX_RULE_STEPS"), "{r}");
    assert!(r.contains("filter/A#"), "{r}");
}

#[test]
fn nft_goto_and_vmap_goto_loops_are_unknown() {
    let json = r#"{"nftables": [{"table": {"family": "inet", "name": "t", "handle": 1}},
 {"chain": {"family": "inet", "table": "t", "name": "fwd", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
 {"chain": {"family": "inet", "table": "t", "name": "a", "handle": 2}},
 {"chain": {"family": "inet", "table": "t", "name": "b", "handle": 3}},
 {"rule": {"family": "inet", "table": "t", "chain": "fwd", "handle": 4, "expr": [{"goto": {"target": "a"}}]}},
 {"rule": {"family": "inet", "table": "t", "chain": "a", "handle": 5, "expr": [{"counter": {"packets": 0, "bytes": 0}}, {"goto": {"target": "b"}}]}},
 {"rule": {"family": "inet", "table": "t", "chain": "b", "handle": 6, "expr": [{"vmap": {"key": {"payload": {"protocol": "th", "field": "dport"}}, "data": {"set": [[80, {"goto": {"target": "a"}}]]}}}]}}
]}"#;
    let rs = fw_full("", None, Some(json));
    assert!(rs.diagnostics().is_empty(), "{:?}", rs.diagnostics());
    let r = unknown_reason(&eval(&rs, Hook::Forward));
    assert!(r.contains("MAX_TRANSFERS_PER_PATH"), "{r}");
    assert!(r.contains("inet t/"), "{r}");
}

fn numgen_json(modulus: u64, expr: &str) -> String {
    format!(
        r#"{{"nftables": [{{"table": {{"family": "ip", "name": "t", "handle": 1}}}},
 {{"chain": {{"family": "ip", "table": "t", "name": "fwd", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}}},
 {{"rule": {{"family": "ip", "table": "t", "chain": "fwd", "handle": 2, "expr": [{}]}}}}
]}}"#,
        expr.replace("MOD", &modulus.to_string())
    )
}

#[test]
fn numgen_huge_modulus_is_interval_mass() {
    let m = 4_294_967_295u64;
    // Comparison: half the values (rounded) drop.
    let rs = fw_full(
        "",
        None,
        Some(&numgen_json(
            m,
            r#"{"match": {"op": "<", "left": {"numgen": {"mode": "random", "mod": MOD, "offset": 0}}, "right": 2147483648}}, {"drop": null}"#,
        )),
    );
    let o = eval(&rs, Hook::Forward);
    assert_eq!(o.len(), 2, "{o:#?}");
    let drop = o.iter().find(|x| x.verdict == Verdict::Drop).unwrap();
    assert!((drop.probability - 2147483648.0 / m as f64).abs() < 1e-12);
    assert!((sum(&o) - 1.0).abs() < 1e-12);
    // Verdict map: two single values, a range, and the rest continue (accept by policy).
    let rs = fw_full(
        "",
        None,
        Some(&numgen_json(
            m,
            r#"{"vmap": {"key": {"numgen": {"mode": "random", "mod": MOD, "offset": 0}}, "data": {"set": [[0, {"drop": null}], [1, {"accept": null}], [{"range": [10, 4000000000]}, {"drop": null}]]}}}"#,
        )),
    );
    let o = eval(&rs, Hook::Forward);
    // One branch per element hit, plus the values no element holds.
    assert_eq!(o.len(), 4, "{o:#?}");
    assert!((sum(&o) - 1.0).abs() < 1e-12);
    let drops: f64 = o
        .iter()
        .filter(|x| x.verdict == Verdict::Drop)
        .map(|x| x.probability)
        .sum();
    assert!((drops - (1.0 + 3_999_999_991.0) / m as f64).abs() < 1e-12);
    // Flags (`in` with a bit mask): values 0..8 with bit 2 (value 4) set: 4, 5, 6, 7.
    let rs = fw_full(
        "",
        None,
        Some(&numgen_json(
            8,
            r#"{"match": {"op": "in", "left": {"numgen": {"mode": "random", "mod": MOD, "offset": 0}}, "right": 4}}, {"drop": null}"#,
        )),
    );
    let o = eval(&rs, Hook::Forward);
    let drop = o.iter().find(|x| x.verdict == Verdict::Drop).unwrap();
    assert!((drop.probability - 0.5).abs() < 1e-12);
}

#[test]
fn nft_many_chains_parse_and_resolve() {
    // 100,000 chains, each with a rule; the base chain jumps to the last one, which drops.
    const N: usize = 100_000;
    let mut j = String::from(
        r#"{"nftables": [{"table": {"family": "ip", "name": "t", "handle": 1}},
{"chain": {"family": "ip", "table": "t", "name": "fwd", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}"#,
    );
    for i in 0..N {
        write!(
            j,
            r#",{{"chain": {{"family": "ip", "table": "t", "name": "c{i}", "handle": {}}}}}"#,
            i + 2
        )
        .unwrap();
    }
    for i in 0..N {
        let verdict = if i + 1 == N { "drop" } else { "accept" };
        write!(
            j,
            r#",{{"rule": {{"family": "ip", "table": "t", "chain": "c{i}", "handle": {}, "expr": [{{"{verdict}": null}}]}}}}"#,
            N + i + 2
        )
        .unwrap();
    }
    write!(
        j,
        r#",{{"rule": {{"family": "ip", "table": "t", "chain": "fwd", "handle": 1, "expr": [{{"jump": {{"target": "c{}"}}}}]}}}}]}}"#,
        N - 1
    )
    .unwrap();
    let rs = fw_full("", None, Some(&j));
    assert!(rs.diagnostics().is_empty());
    assert_eq!(rs.nftables().tables[0].chains.len(), N + 1);
    assert_eq!(
        rs.nftables().tables[0].chain_id(&format!("c{}", N - 1)),
        Some(N as u32)
    );
    let o = eval(&rs, Hook::Forward);
    assert_eq!(o.len(), 1);
    assert_eq!(o[0].verdict, Verdict::Drop);
}

#[test]
fn unterminated_quote_is_unknown_naming_the_line() {
    // In a rule after the chain name: an error item of that chain.
    let rs = filter(
        "-A FORWARD -s 192.0.2.1/32 -j DROP\n-A FORWARD -m comment --comment \"oops -j ACCEPT\n-A FORWARD -j ACCEPT\n",
    );
    assert!(
        rs.diagnostics()
            .iter()
            .any(|d| d.line == 8 && d.message.contains("unterminated quote"))
    );
    let r = unknown_reason(&eval(&rs, Hook::Forward));
    assert!(r.contains("line 8"), "{r}");
    // A packet the rule before drops never reaches it: still a confident drop.
    let mut p = pkt();
    p.src = ip("192.0.2.1");
    let o = rs.evaluate(
        Hook::Forward,
        &p,
        &HostContext::default(),
        &EvalOptions::default(),
    );
    assert_eq!(o[0].verdict, Verdict::Drop);
    // Before the chain name: its chain is unknown, so is any packet reaching the table.
    let rs = filter("-A \"FORWARD -j ACCEPT\n");
    let r = unknown_reason(&eval(&rs, Hook::Forward));
    assert!(
        r.contains("line 7") && r.contains("chain is unknown"),
        "{r}"
    );
    // An unsupported command and a rule outside any table are kept the same way.
    let rs = filter("-Z FORWARD\n");
    assert!(unknown_reason(&eval(&rs, Hook::Forward)).contains("line 7"));
    let rs = fw_full(
        "-A FORWARD -j DROP\n*filter\n:FORWARD ACCEPT [0:0]\nCOMMIT\n",
        None,
        None,
    );
    assert!(unknown_reason(&eval(&rs, Hook::Forward)).contains("line 1"));
}

#[test]
fn unparsed_policy_is_unknown_naming_the_line() {
    let rs = fw_full(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DORP [0:0]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n",
        None,
        None,
    );
    assert!(
        rs.diagnostics()
            .iter()
            .any(|d| d.line == 3 && d.message.contains("DORP")),
        "{:?}",
        rs.diagnostics()
    );
    let r = unknown_reason(&eval(&rs, Hook::Forward));
    assert!(
        r.contains("policy") && r.contains("line 3") && r.contains("DORP"),
        "{r}"
    );
    // Other chains are unaffected.
    assert_eq!(eval(&rs, Hook::Input)[0].verdict, Verdict::Accept);
    // The same through `-P`, and with bad counters the policy is still kept.
    let rs = fw_full(
        "*filter\n:FORWARD ACCEPT [0:0]\n-P FORWARD DORP\nCOMMIT\n",
        None,
        None,
    );
    assert!(unknown_reason(&eval(&rs, Hook::Forward)).contains("line 3"));
    let rs = fw_full("*filter\n:FORWARD DROP [x]\nCOMMIT\n", None, None);
    assert_eq!(eval(&rs, Hook::Forward)[0].verdict, Verdict::Drop);
    // nft: a policy that is neither accept nor drop.
    let json = r#"{"nftables": [{"table": {"family": "ip", "name": "t", "handle": 1}},
 {"chain": {"family": "ip", "table": "t", "name": "fwd", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "dorp"}}]}"#;
    let rs = fw_full("", None, Some(json));
    assert!(!rs.diagnostics().is_empty());
    let r = unknown_reason(&eval(&rs, Hook::Forward));
    assert!(r.contains("dorp"), "{r}");
}

#[test]
fn branch_budget_is_unknown_and_keeps_probability() {
    let json = r#"{"nftables": [{"table": {"family": "ip", "name": "t", "handle": 1}},
 {"chain": {"family": "ip", "table": "t", "name": "fwd", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
 {"rule": {"family": "ip", "table": "t", "chain": "fwd", "handle": 2, "expr": [{"vmap": {"key": {"numgen": {"mode": "random", "mod": 4, "offset": 0}}, "data": {"set": [[0, {"drop": null}], [1, {"accept": null}], [2, {"drop": null}], [3, {"accept": null}]]}}}]}}
]}"#;
    let rs = fw_full("", None, Some(json));
    let o = rs.evaluate(
        Hook::Forward,
        &pkt(),
        &HostContext::default(),
        &EvalOptions {
            max_branches: 1,
            ..Default::default()
        },
    );
    assert!((sum(&o) - 1.0).abs() < 1e-12, "{o:#?}");
    assert!(o.iter().any(|x| matches!(
        &x.verdict,
        Verdict::Unknown { reason } if reason.contains("max_branches")
    )));
}

#[test]
fn an_unknown_fact_is_decided_once_per_path() {
    // The Weave + kube-proxy shape: two rules ask whether the source is in an ipset that was
    // not collected. Two outcomes, not four; each rests on one decision.
    let rs = filter(
        "-A FORWARD -m set --match-set weave-x src -j MARK --set-xmark 0x1/0x1\n-A FORWARD -m set ! --match-set weave-x src -j DROP\n-A FORWARD -j ACCEPT\n",
    );
    let o = eval(&rs, Hook::Forward);
    assert_eq!(o.len(), 2, "{o:#?}");
    assert!((sum(&o) - 1.0).abs() < 1e-12);
    for x in &o {
        assert_eq!(x.assumptions.len(), 1, "{x:#?}");
        assert!((x.probability - 0.5).abs() < 1e-12);
        let a = &x.assumptions[0];
        assert!(
            a.key.contains("weave-x") && a.key.contains("10.0.0.1"),
            "{a:?}"
        );
        if a.matched {
            assert_eq!(x.verdict, Verdict::Accept);
            assert_eq!(x.mark, 1);
        } else {
            assert_eq!(x.verdict, Verdict::Drop);
            // The second rule followed the decision: it is in the trail as assumed.
            assert!(
                x.trail
                    .iter()
                    .any(|h| h.index == 2 && h.matched == Matched::AssumedYes)
            );
        }
    }
    // Facts decided at an earlier hook are followed, not forked again.
    let taken = o.iter().find(|x| x.verdict == Verdict::Drop).unwrap();
    let again = rs.evaluate_given(
        Hook::Forward,
        &pkt(),
        &HostContext::default(),
        &EvalOptions::default(),
        &taken.assumptions,
    );
    assert_eq!(again.len(), 1, "{again:#?}");
    assert_eq!(again[0].verdict, Verdict::Drop);
    assert!(again[0].assumptions.is_empty());
    assert!((again[0].probability - 1.0).abs() < 1e-12);
}

#[test]
fn nft_unknown_fact_shared_by_eq_and_ne() {
    // `@missing` is not defined: `==` and `!=` ask the same fact.
    let json = r#"{"nftables": [{"table": {"family": "ip", "name": "t", "handle": 1}},
 {"chain": {"family": "ip", "table": "t", "name": "fwd", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}},
 {"rule": {"family": "ip", "table": "t", "chain": "fwd", "handle": 2, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@missing"}}, {"mangle": {"key": {"meta": {"key": "mark"}}, "value": 7}}]}},
 {"rule": {"family": "ip", "table": "t", "chain": "fwd", "handle": 3, "expr": [{"match": {"op": "!=", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@missing"}}, {"drop": null}]}}
]}"#;
    let rs = fw_full("", None, Some(json));
    let o = eval(&rs, Hook::Forward);
    assert_eq!(o.len(), 2, "{o:#?}");
    assert!((sum(&o) - 1.0).abs() < 1e-12);
    for x in &o {
        assert_eq!(x.assumptions.len(), 1);
        if x.assumptions[0].matched {
            assert_eq!((x.mark, &x.verdict), (7, &Verdict::Accept));
        } else {
            assert_eq!((x.mark, &x.verdict), (0, &Verdict::Drop));
        }
    }
}
