//! Options bind to the match iptables gives them to (no kernel needed; the differential
//! version against `iptables-restore` is in `kernel.rs`).

use netray_netfilter::ipt::{self, Match};
use netray_netfilter::{IpFamily, IptablesBackend};

fn one(rule: &str) -> (ipt::Dump, Vec<String>) {
    let text = format!("*filter\n:INPUT ACCEPT [0:0]\n-A INPUT {rule}\nCOMMIT\n");
    let d = ipt::parse_dump(IptablesBackend::Legacy, IpFamily::Ipv4, text.into());
    let diags = d.diagnostics.iter().map(|x| x.to_string()).collect();
    (d, diags)
}

fn matches(d: &ipt::Dump) -> Vec<Match> {
    d.table("filter").unwrap().chain("INPUT").unwrap().rules[0]
        .matches
        .to_vec()
}

#[test]
fn dport_after_another_match_binds_to_the_implicit_tcp_match() {
    let (d, diags) = one("-p tcp -m conntrack --ctstate NEW --dport 22 -j ACCEPT");
    assert!(diags.is_empty(), "{diags:?}");
    let m = matches(&d);
    assert_eq!(m.len(), 2);
    assert!(matches!(m[0], Match::Conntrack(_)));
    assert!(
        matches!(&m[1], Match::Tcp { dport: Some(p), .. } if p.v.lo == 22 && p.v.hi == 22),
        "{m:?}"
    );
}

#[test]
fn options_of_an_earlier_match_reach_it_after_a_later_one() {
    let (d, diags) =
        one("-p tcp --dport 22 -m conntrack --ctstate NEW --sport 1024:65535 -j ACCEPT");
    assert!(diags.is_empty(), "{diags:?}");
    let m = matches(&d);
    assert!(
        matches!(&m[0], Match::Tcp { sport: Some(s), dport: Some(_), .. } if s.v.lo == 1024),
        "{m:?}"
    );
}

#[test]
fn abbreviations_follow_getopt() {
    // `--dport` is a unique prefix of multiport's `--dports` once multiport is loaded.
    let (d, diags) = one("-p tcp -m multiport --dport 22,23 -j ACCEPT");
    assert!(diags.is_empty(), "{diags:?}");
    assert!(matches!(matches(&d)[0], Match::Multiport { .. }));
    let (d, diags) = one("-p tcp --dpo 22 -j ACCEPT");
    assert!(diags.is_empty(), "{diags:?}");
    assert!(matches!(matches(&d)[0], Match::Tcp { dport: Some(_), .. }));
    let (_, diags) = one("-p tcp -m conntrack --ctstat NEW -j ACCEPT");
    assert!(diags.iter().any(|d| d.contains("ambiguous")), "{diags:?}");
}

#[test]
fn what_iptables_refuses_is_an_error() {
    for rule in [
        "-m conntrack --ctstate NEW --dport 22 -j ACCEPT",
        "-p all -m conntrack --ctstate NEW --dport 22 -j ACCEPT",
        "-p tcp -m conntrack --ctstate NEW --dport 22 --dport 23 -j ACCEPT",
    ] {
        let (_, diags) = one(rule);
        assert!(!diags.is_empty(), "`{rule}` must not parse");
    }
}

#[test]
fn an_unmodelled_module_does_not_swallow_a_tcp_option() {
    let (d, diags) = one("-p tcp -m limit --limit 5/sec --dport 22 --limit-burst 3 -j ACCEPT");
    assert!(diags.is_empty(), "{diags:?}");
    let m = matches(&d);
    assert!(
        m.iter()
            .any(|x| matches!(x, Match::Tcp { dport: Some(_), .. })),
        "{m:?}"
    );
    assert!(m.iter().any(|x| matches!(x, Match::Opaque { .. })), "{m:?}");
}
