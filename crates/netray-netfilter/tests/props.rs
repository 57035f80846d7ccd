//! Property tests: both parsers terminate without panicking on any input, including mutated
//! real dumps, and evaluation of whatever they produce does not panic either.

use netray_netfilter::*;
use netray_snapshot::{Firewall, IptablesDump};
use proptest::prelude::*;

const SEED: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:SVC - [0:0]\n\
[3:180] -A PREROUTING -d 10.96.0.10/32 -p tcp -m comment --comment \"a b\" -m tcp --dport 80 -j SVC\n\
-A SVC -m statistic --mode random --probability 0.5 -j DNAT --to-destination 10.244.1.2:8080\n\
-A SVC -j DNAT --to-destination [fe80::1]:80\n\
-A POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
-A POSTROUTING -o eth+ -j MASQUERADE --random-fully\nCOMMIT\n\
*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:A - [0:0]\n\
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
-A INPUT -p tcp -m multiport --dports 22,80:90 -g A\n\
-A INPUT -m set --match-set S src,dst -m addrtype --dst-type LOCAL -j ACCEPT\n\
-A A -s 10.0.0.0/8 ! -i lo -m recent --rcheck -j REJECT --reject-with tcp-reset\n\
-A A -j MARK --set-xmark 0x1/0xff\nCOMMIT\n";

const NFT: &str = r#"{"nftables": [{"table": {"family": "inet", "name": "t", "handle": 1}},
{"chain": {"family": "inet", "table": "t", "name": "c", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "drop"}},
{"chain": {"family": "inet", "table": "t", "name": "d", "handle": 2}},
{"set": {"family": "inet", "name": "s", "table": "t", "type": "ipv4_addr", "handle": 3, "flags": ["interval"], "elem": [{"prefix": {"addr": "6.6.0.0", "len": 16}}]}},
{"rule": {"family": "inet", "table": "t", "chain": "c", "handle": 4, "expr": [{"match": {"op": "==", "left": {"payload": {"protocol": "ip", "field": "saddr"}}, "right": "@s"}}, {"jump": {"target": "d"}}]}},
{"rule": {"family": "inet", "table": "t", "chain": "d", "handle": 5, "expr": [{"vmap": {"key": {"numgen": {"mode": "random", "mod": 3, "offset": 0}}, "data": {"set": [[0, {"accept": null}], [1, {"drop": null}]]}}}]}}]}"#;

fn exercise(fw: &Firewall) {
    if let Ok(rs) = Ruleset::from_firewall(fw) {
        for d in rs.diagnostics() {
            let _ = d.to_string();
        }
        let mut p = Packet::new(
            "6.6.1.1".parse().unwrap(),
            "10.96.0.10".parse().unwrap(),
            6,
            Some(1),
            Some(80),
        );
        p.iif = Some("eth0".into());
        for hook in [
            Hook::Prerouting,
            Hook::Input,
            Hook::Forward,
            Hook::Postrouting,
        ] {
            let o = rs.evaluate(hook, &p, &HostContext::default(), &EvalOptions::default());
            assert!(!o.is_empty());
        }
    }
}

fn ipt(text: String) -> Firewall {
    Firewall {
        iptables: vec![IptablesDump {
            backend: IptablesBackend::Legacy,
            family: IpFamily::Ipv4,
            text,
        }],
        ipset: Some("create S hash:ip,port\nadd S 6.6.1.1,tcp:80\n".into()),
        ..Default::default()
    }
}

/// Apply byte-level mutations (delete, duplicate, replace) to a seed.
fn mutate(seed: &str, ops: &[(usize, u8, u8)]) -> String {
    let mut b = seed.as_bytes().to_vec();
    for &(pos, kind, byte) in ops {
        if b.is_empty() {
            break;
        }
        let i = pos % b.len();
        match kind % 4 {
            0 => {
                b.remove(i);
            }
            1 => b.insert(i, byte),
            2 => b[i] = byte,
            _ => {
                // Duplicate a chunk (repeats tokens like `!`, quotes, options).
                let end = (i + (byte as usize % 16)).min(b.len());
                let chunk = b[i..end].to_vec();
                b.splice(i..i, chunk);
            }
        }
    }
    String::from_utf8_lossy(&b).into_owned()
}

const ALPHABET: &[u8] = b" -!\"'\\:/[]0123456789abcdmpstjgACDMNORT*\n.,+x";

proptest! {
    #![proptest_config(ProptestConfig { cases: 400, .. ProptestConfig::default() })]

    #[test]
    fn iptables_any_text(s in "\\PC{0,400}") {
        exercise(&ipt(s));
    }

    #[test]
    fn iptables_token_soup(bytes in proptest::collection::vec(0usize..ALPHABET.len(), 0..400)) {
        let s: String = bytes.iter().map(|&i| ALPHABET[i] as char).collect();
        exercise(&ipt(format!("*filter\n{s}\nCOMMIT\n")));
    }

    #[test]
    fn iptables_mutated_dump(ops in proptest::collection::vec((any::<usize>(), any::<u8>(), proptest::sample::select(ALPHABET.to_vec())), 1..12)) {
        exercise(&ipt(mutate(SEED, &ops)));
    }

    #[test]
    fn nft_mutated_json(ops in proptest::collection::vec((any::<usize>(), any::<u8>(), proptest::sample::select(b"{}[]\":,0123456789abc@-".to_vec())), 1..8)) {
        let fw = Firewall { nft_json: Some(mutate(NFT, &ops)), ..Default::default() };
        exercise(&fw);
    }

    #[test]
    fn nft_any_json(s in "\\PC{0,300}") {
        let fw = Firewall { nft_json: Some(s), ..Default::default() };
        exercise(&fw);
    }

    #[test]
    fn ipset_any_text(s in "\\PC{0,300}") {
        let fw = Firewall { ipset: Some(s), ..Default::default() };
        exercise(&fw);
    }
}

#[test]
fn seeds_parse_cleanly() {
    let rs = Ruleset::from_firewall(&ipt(SEED.to_string())).unwrap();
    // `-m recent` is parsed (opaque), so the seed has no diagnostics.
    assert!(rs.diagnostics().is_empty(), "{:?}", rs.diagnostics());
    let rs = Ruleset::from_firewall(&Firewall {
        nft_json: Some(NFT.into()),
        ..Default::default()
    })
    .unwrap();
    assert!(rs.diagnostics().is_empty(), "{:?}", rs.diagnostics());
    let o = rs.evaluate(
        Hook::Forward,
        &Packet::new(
            "6.6.1.1".parse().unwrap(),
            "1.1.1.1".parse().unwrap(),
            6,
            Some(1),
            Some(80),
        ),
        &HostContext::default(),
        &EvalOptions::default(),
    );
    // numgen mod 3: accept 1/3, drop 1/3, no element 1/3 → continue → policy drop.
    assert_eq!(o.len(), 3);
    let accept: f64 = o
        .iter()
        .filter(|x| x.verdict == Verdict::Accept)
        .map(|x| x.probability)
        .sum();
    assert!((accept - 1.0 / 3.0).abs() < 1e-9);
}

#[test]
fn synthetic_kube_proxy_dump_is_clean_and_indexed() {
    let text = synth::kube_proxy_dump(500, 3);
    let rs = Ruleset::from_firewall(&ipt(text)).unwrap();
    assert!(rs.diagnostics().is_empty(), "{:?}", &rs.diagnostics()[..1]);
    let dst = synth::service_ip(321);
    let p = Packet::new(
        "192.168.0.9".parse().unwrap(),
        dst.into(),
        6,
        Some(1),
        Some(80),
    );
    let o = rs.evaluate(
        Hook::Prerouting,
        &p,
        &HostContext::default(),
        &EvalOptions::default(),
    );
    assert_eq!(o.len(), 3);
    for (x, e) in o.iter().zip(0..) {
        let _ = e;
        assert!((x.probability - 1.0 / 3.0).abs() < 1e-6);
        let Some(NatAction::Dnat { addr: Some(a), .. }) = &x.nat else {
            panic!("{x:?}")
        };
        assert!((0..3).any(|e| a.lo == std::net::IpAddr::from(synth::endpoint_ip(321, e))));
    }
}
