//! Differential tests of the iptables-save parser's fast path for common kube-proxy rule
//! shapes: the model (with positions, hashes and chain ids, through `{:?}`) and the
//! diagnostics equal those of the general path, on the synthetic dumps, on hand-written
//! corpora and on mutations of kube-proxy lines.

use std::sync::Arc;

use netray_netfilter::{IpFamily, IptablesBackend, ipt, synth};
use proptest::prelude::*;

fn both(family: IpFamily, text: &str) -> (String, String) {
    let t: Arc<str> = Arc::from(text);
    let f = ipt::parse_dump(IptablesBackend::Legacy, family, t.clone());
    let g = ipt::parse_dump_general(IptablesBackend::Legacy, family, t);
    (
        format!("{:?}\n{:?}", f.tables, f.diagnostics),
        format!("{:?}\n{:?}", g.tables, g.diagnostics),
    )
}

fn check(family: IpFamily, text: &str) {
    let (f, g) = both(family, text);
    if f != g {
        let at = f
            .bytes()
            .zip(g.bytes())
            .position(|(a, b)| a != b)
            .unwrap_or(0);
        panic!(
            "fast path differs for\n{text}\nfast:    {}\ngeneral: {}",
            &f[at.saturating_sub(200)..(at + 200).min(f.len())],
            &g[at.saturating_sub(200)..(at + 200).min(g.len())]
        );
    }
}

const CORPUS: &str = "*nat\n:PREROUTING ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:SVC - [0:0]\n:DNAT - [0:0]\n\
[3:180] -A PREROUTING -d 10.96.0.10/32 -p tcp -m comment --comment \"a b\" -m tcp --dport 80 -j SVC\n\
-A PREROUTING -d 10.96.0.11/32 -p udp -m comment --comment \"a b\" -m udp --dport domain -j SVC\n\
-A PREROUTING -d 10.96.0.12/32 -p tcp -m comment --comment x -m tcp --sport 1:2 -j SVC\n\
-A PREROUTING ! -d 10.96.0.0/255.255.0.0 ! -p tcp -m tcp --dport 80 --sport 7 -j RETURN\n\
-A PREROUTING -d 10.96.0.13 -p 6 -m comment --comment \"\" -j ACCEPT\n\
-A PREROUTING -s 10.0.0.1/8 -m comment --comment \"quote \\\" inside\" -j DROP\n\
-A PREROUTING -s 10.0.0.1/33 -j DROP\n\
-A PREROUTING -s fe80::1 -j DROP\n\
-A PREROUTING -j DNAT\n\
-A PREROUTING -j LATER\n\
-A SVC -m statistic --mode random --probability 0.33333333349 -j DNAT --to-destination 10.244.1.2:8080\n\
-A SVC -m statistic --mode random --probability 1.5 -j DNAT --to-destination 10.244.1.2:8080\n\
-A SVC -m statistic --mode nth --every 2 --packet 0 -j DNAT --to-destination 10.244.1.2\n\
-A SVC -p tcp -j DNAT --to-destination 10.244.1.2-10.244.1.9:80-90\n\
-A SVC -p tcp -j DNAT --to-destination [fe80::1]:80\n\
-A SVC -p tcp -j DNAT --to-destination 10.244.1.2:8080 --random\n\
-A SVC -j SVC extra\n\
-A SVC  -j ACCEPT\n\
-A SVC\t-j ACCEPT\n\
-A SVC -j ACCEPT \n\
-A UNDECLARED -j ACCEPT\n\
-A POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
-A POSTROUTING -o eth+ -j MASQUERADE --random-fully\n\
:LATER - [0:0]\n: SPACED - [0:0]\n:\"Q\" - [0:0]\n:TAB\t- [0:0]\n:NOCOUNT -\n:BADPOL MAYBE [0:0]\n\
:BADCOUNT - [x:0]\n:EXTRA - [1:2] more\n:LATER DROP [5:6]\n:SVC - [0:0] \nCOMMIT\n\
*filter\n:INPUT DROP [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:A - [0:0]\n\
-A INPUT -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
-A INPUT -p tcp -m multiport --dports 22,80:90 -g A\n\
-A INPUT -p tcp --dport 22 -j A\n\
-A A -s 10.0.0.0/8 ! -i lo -m recent --rcheck -j REJECT --reject-with tcp-reset\n\
-A A -j MARK --set-xmark 0x1/0xff\nCOMMIT\n";

#[test]
fn synthetic_dumps() {
    for (s, e) in [(0, 0), (1, 1), (7, 1), (40, 2), (200, 3), (50, 5)] {
        check(IpFamily::Ipv4, &synth::kube_proxy_dump(s, e));
    }
}

#[test]
fn corpus() {
    check(IpFamily::Ipv4, CORPUS);
    check(IpFamily::Ipv6, CORPUS);
    check(IpFamily::Ipv6, &synth::kube_proxy_dump(5, 2));
}

/// Tokens that make or break the fast path's shapes.
const TOKENS: &[&str] = &[
    "!",
    "-s",
    "-d",
    "-p",
    "-m",
    "-j",
    "-g",
    "-i",
    "tcp",
    "udp",
    "sctp",
    "comment",
    "--comment",
    "\"a b\"",
    "\"\"",
    "'q'",
    "\"x\\\"y\"",
    "--dport",
    "--sport",
    "80",
    "1:2",
    "http",
    "statistic",
    "--mode",
    "random",
    "nth",
    "--probability",
    "0.5",
    "2",
    "DNAT",
    "--to-destination",
    "10.0.0.1:80",
    "10.0.0.1",
    "10.0.0.0/8",
    "10.0.0.1/0",
    "10.0.0.1/05",
    "10.0.0.1/33",
    "10.0.0.1/255.255.255.0",
    "010.0.0.1",
    "10.0.0.256/32",
    "1.2.3.4:99999",
    "1.2.3.4:",
    "1.2.3.4:080",
    ":80",
    "1.2.3.4:+80",
    "fe80::1",
    "ACCEPT",
    "RETURN",
    "MARK",
    "KUBE-MARK-MASQ",
    "KUBE-SERVICES",
    "NOPE",
    "[1:2]",
    "",
];

/// Rule and chain declaration lines of a small kube-proxy dump, and the dump around them.
fn small() -> (String, Vec<(usize, usize)>) {
    let text = synth::kube_proxy_dump(2, 2);
    let mut lines = Vec::new();
    let mut pos = 0;
    for l in text.split_inclusive('\n') {
        if l.starts_with("-A ") || l.starts_with(':') {
            lines.push((pos, pos + l.len() - 1));
        }
        pos += l.len();
    }
    (text, lines)
}

fn with_line(text: &str, (a, b): (usize, usize), line: &str) -> String {
    format!("{}{}{}", &text[..a], line, &text[b..])
}

#[test]
fn every_token_deleted_or_inserted() {
    let (text, lines) = small();
    for &(a, b) in &lines {
        let toks: Vec<&str> = text[a..b].split(' ').collect();
        for i in 0..=toks.len() {
            if i < toks.len() {
                let mut t = toks.clone();
                t.remove(i);
                check(IpFamily::Ipv4, &with_line(&text, (a, b), &t.join(" ")));
            }
            for ins in TOKENS {
                let mut t = toks.clone();
                t.insert(i, ins);
                check(IpFamily::Ipv4, &with_line(&text, (a, b), &t.join(" ")));
            }
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 2000, ..ProptestConfig::default() })]

    #[test]
    fn mutated_kube_proxy_lines(
        line in any::<prop::sample::Index>(),
        ops in proptest::collection::vec(
            (any::<prop::sample::Index>(), 0u8..5, any::<prop::sample::Index>(),
             proptest::sample::select(b" \t\"'\\!:/-.09ax+".to_vec())),
            1..5,
        ),
    ) {
        let (text, lines) = small();
        let span = lines[line.index(lines.len())];
        let mut toks: Vec<String> =
            text[span.0..span.1].split(' ').map(str::to_string).collect();
        for (at, op, tok, byte) in ops {
            let i = at.index(toks.len() + 1);
            match op {
                0 if i < toks.len() => { toks.remove(i); }
                1 => toks.insert(i, TOKENS[tok.index(TOKENS.len())].to_string()),
                2 if i < toks.len() => {
                    let t = &mut toks[i];
                    let j = tok.index(t.len() + 1);
                    if t.is_char_boundary(j) { t.insert(j, byte as char); }
                }
                3 if i < toks.len() => {
                    let t = &mut toks[i];
                    if !t.is_empty() { let j = tok.index(t.len()); if t.is_char_boundary(j) && t.is_char_boundary(j + 1) { t.remove(j); } }
                }
                4 if i + 1 < toks.len() => toks.swap(i, i + 1),
                _ => {}
            }
        }
        check(IpFamily::Ipv4, &with_line(&text, span, &toks.join(" ")));
    }
}
