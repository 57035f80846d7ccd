//! Property test of honest uncertainty over random rulesets with unknown constructs (ipsets not
//! collected, unmodelled modules), random matches, jumps, gotos and loops: the outcomes of one
//! evaluation sum to 1, no outcome holds two assumptions about the same fact, and an
//! evaluation given the facts of an earlier hook never decides them again.

use std::collections::HashMap;

use netray_netfilter::*;
use netray_snapshot::{Firewall, IptablesDump};
use proptest::prelude::*;

const CHAINS: [&str; 4] = ["FORWARD", "A", "B", "C"];

fn match_text(k: u8) -> &'static str {
    match k % 10 {
        0 => "",
        1 => "-m set --match-set S0 src ",
        2 => "-m set ! --match-set S0 src ",
        3 => "-m set --match-set S1 src,dst ",
        4 => "-m recent --name r --rcheck ",
        5 => "-m statistic --mode random --probability 0.30000 ",
        6 => "-s 10.0.0.0/8 ",
        7 => "-m mark --mark 0x1/0x1 ",
        8 => "-m set --match-set S0 src -m recent --name q --rcheck ",
        _ => "-m hashlimit --hashlimit-above 5/sec --hashlimit-name h ",
    }
}

fn target_text(k: u8) -> &'static str {
    match k % 12 {
        0 => "-j ACCEPT",
        1 => "-j DROP",
        2 => "-j RETURN",
        3 => "-j A",
        4 => "-j B",
        5 => "-g C",
        6 => "-g A",
        7 => "-j MARK --set-xmark 0x1/0x1",
        8 => "-j REJECT",
        9 => "-j MARK --set-xmark 0x0/0x1",
        10 => "-j C",
        _ => "-j LOG",
    }
}

fn ruleset(rules: &[(u8, u8, u8, u8)]) -> Ruleset {
    let mut t = String::from(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:A - [0:0]\n:B - [0:0]\n:C - [0:0]\n",
    );
    for &(c, m1, m2, tg) in rules {
        t.push_str(&format!(
            "-A {} {}{}{}\n",
            CHAINS[c as usize % 4],
            match_text(m1),
            match_text(m2),
            target_text(tg)
        ));
    }
    t.push_str("COMMIT\n");
    let f = Firewall {
        iptables: vec![IptablesDump {
            backend: IptablesBackend::Legacy,
            family: IpFamily::Ipv4,
            text: t,
        }],
        ..Default::default()
    };
    Ruleset::from_firewall(&f).expect("parse")
}

fn check(o: &[Outcome], given: &[Assumption]) -> Result<(), TestCaseError> {
    prop_assert!(!o.is_empty());
    let total: f64 = o.iter().map(|x| x.probability).sum();
    prop_assert!((total - 1.0).abs() < 1e-9, "sum {total}: {o:#?}");
    for x in o {
        let mut seen: HashMap<&str, bool> =
            given.iter().map(|a| (a.key.as_str(), a.matched)).collect();
        for a in &x.assumptions {
            prop_assert!(
                seen.insert(&a.key, a.matched).is_none(),
                "fact {} decided twice on one path: {x:#?}",
                a.key
            );
        }
    }
    Ok(())
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 300, ..ProptestConfig::default() })]

    #[test]
    fn outcomes_sum_to_one_and_facts_are_decided_once(
        rules in proptest::collection::vec((0u8..4, any::<u8>(), any::<u8>(), any::<u8>()), 1..14),
        bridged in any::<bool>(),
    ) {
        let rs = ruleset(&rules);
        let p = Packet::new(
            "10.1.2.3".parse().unwrap(),
            "10.4.5.6".parse().unwrap(),
            6,
            Some(1234),
            Some(80),
        );
        let opts = EvalOptions { bridged, ..EvalOptions::default() };
        let ctx = HostContext::default();
        let first = rs.evaluate(Hook::Forward, &p, &ctx, &opts);
        check(&first, &[])?;
        // A second hook on each path, given what the path decided: the same rules ask the same
        // facts, which must be followed, not decided again.
        for o in first.iter().take(8) {
            let mut q = p.clone();
            o.apply_marks(&mut q);
            let again = rs.evaluate_given(Hook::Forward, &q, &ctx, &opts, &o.assumptions);
            check(&again, &o.assumptions)?;
        }
    }
}
