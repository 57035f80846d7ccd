//! IPv6 through a router, checked against the kernel (issue 11): host `a` — router `r` — host
//! `b`, each its own lab namespace and its own node in the bundle (`netray collect` inside
//! each). `a` reaches the router through a link-local next hop (`via fe80::1 dev eth0`).
//! Per case, the kernel's answer comes from `ping -6` and `nc -6 -z` and where the request was
//! lost from each namespace's `/proc/net/snmp6`; netray's from `netray trace` over the bundle
//! collected right after. Verdict, drop node and disposition must agree.
//!
//! Cases: forwarding on; `conf.all.forwarding=0`; `all` on with both interfaces' own
//! `forwarding` off (the kernel forwards); `all` off with both interfaces on (the kernel does
//! not); ip6tables FORWARD policy DROP; a router egress MTU of 1280 for a 1448-byte
//! `ping -6 -M do`.
//!
//! Lab safety: every address, route and veth lives in `nrl-`-prefixed namespaces created here
//! (deleted on drop, also on failure); the root namespace is never touched; every probe is
//! bounded in time.

use std::collections::BTreeMap;
use std::path::Path;
use std::process::{Child, Command, Stdio};

use netray_lab::{Netns, lab_tag};
use serde_json::Value;

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");
const A: &str = "fd00:6:1::2";
const B: &str = "fd00:6:2::2";
const PORT: u16 = 8080;

/// A TCP server in `b`, killed and reaped on drop (before the namespaces go).
struct Server(Child);

impl Drop for Server {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The three namespaces (fields drop in order: the server first).
struct Topo {
    _server: Server,
    a: Netns,
    r: Netns,
    b: Netns,
}

fn sh(ns: &Netns, script: &str) {
    if let Err(e) = ns.sh(script) {
        panic!("lab step in {} failed: {e}", ns.name());
    }
}

fn build() -> Topo {
    let tag = lab_tag();
    let mk = |role: &str| {
        let ns = Netns::create(&format!("6{role}{tag}")).expect("create namespace");
        // No DAD: addresses are usable at once (also the link-local ones of new links).
        sh(
            &ns,
            "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0",
        );
        ns
    };
    let (a, r, b) = (mk("a"), mk("r"), mk("b"));
    a.veth("eth0", &r, "ra").expect("veth a-r");
    b.veth("eth0", &r, "rb").expect("veth b-r");
    sh(
        &r,
        "ip addr add fd00:6:1::1/64 dev ra nodad; ip addr add fe80::1/64 dev ra nodad
         ip addr add fd00:6:2::1/64 dev rb nodad
         ip link set ra up; ip link set rb up
         sysctl -qw net.ipv6.conf.all.forwarding=1",
    );
    sh(
        &a,
        "ip addr add fd00:6:1::2/64 dev eth0 nodad; ip link set eth0 up
         ip -6 route add default via fe80::1 dev eth0",
    );
    sh(
        &b,
        "ip addr add fd00:6:2::2/64 dev eth0 nodad; ip link set eth0 up
         ip -6 route add default via fd00:6:2::1 dev eth0",
    );
    let server = b
        .command("nc")
        .args(["-6", "-lk", &PORT.to_string()])
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("start nc server");
    let topo = Topo {
        _server: Server(server),
        a,
        r,
        b,
    };
    // Warm up neighbour discovery (the very first probe of a fresh link can miss its 1 s).
    let ok = (0..10).any(|_| ping(&topo.a, B, None));
    assert!(ok, "the healthy lab does not pass IPv6 ping");
    assert!(
        (0..10).any(|_| {
            std::thread::sleep(std::time::Duration::from_millis(100));
            tcp(&topo.a)
        }),
        "the healthy lab does not pass TCP"
    );
    topo
}

/// `ping -6 -c1 -W1 [-s SIZE -M do]`: did the echo reply come back?
fn ping(from: &Netns, to: &str, size: Option<u32>) -> bool {
    let mut c = from.command("timeout");
    c.args(["5", "ping", "-6", "-c1", "-W1"]);
    if let Some(s) = size {
        c.args(["-s", &s.to_string(), "-M", "do"]);
    }
    c.arg(to);
    c.output().map(|o| o.status.success()).unwrap_or(false)
}

/// `nc -6 -z -w 2` to b's server.
fn tcp(from: &Netns) -> bool {
    from.command("timeout")
        .args(["5", "nc", "-6", "-z", "-w", "2", B, &PORT.to_string()])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}

/// `/proc/net/snmp6` of a namespace, plus `Tcp:InSegs` from `/proc/net/snmp`.
fn snmp6(ns: &Netns) -> BTreeMap<String, i64> {
    let out = ns
        .exec("cat", &["/proc/net/snmp6", "/proc/net/snmp"])
        .expect("snmp");
    let text = String::from_utf8_lossy(&out.stdout).into_owned();
    let mut m: BTreeMap<String, i64> = text
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            Some((w.next()?.to_string(), w.next()?.parse().ok()?))
        })
        .collect();
    // `/proc/net/snmp`: a header line then a values line per protocol.
    let tcp: Vec<&str> = text.lines().filter(|l| l.starts_with("Tcp:")).collect();
    if let [head, vals] = tcp[..] {
        for (k, v) in head.split_whitespace().zip(vals.split_whitespace()).skip(1) {
            if let Ok(v) = v.parse() {
                m.insert(format!("Tcp{k}"), v);
            }
        }
    }
    m
}

fn delta(before: &BTreeMap<String, i64>, after: &BTreeMap<String, i64>, k: &str) -> i64 {
    after.get(k).copied().unwrap_or(0) - before.get(k).copied().unwrap_or(0)
}

/// What the kernel did with one probe kind.
#[derive(Debug)]
struct Kernel {
    ok: bool,
    /// Where the request was lost (`a`, `r`, `b`), or `None` when it reached b.
    lost_at: Option<&'static str>,
    /// The router's counter that names why (`Ip6InAddrErrors`, `Ip6InTooBigErrors`, …).
    router_counters: Vec<String>,
}

/// Probe (once, or up to 3 times for an ordinary ping/TCP: any success counts) and read the
/// counters around it.
fn measure(t: &Topo, probe: &dyn Fn() -> bool, tries: usize) -> Kernel {
    let (r0, b0) = (snmp6(&t.r), snmp6(&t.b));
    let ok = (0..tries).any(|_| probe());
    let (r1, b1) = (snmp6(&t.r), snmp6(&t.b));
    // The request reached b: an echo request or a TCP segment arrived there.
    let reached_b = delta(&b0, &b1, "Icmp6InEchos") > 0 || delta(&b0, &b1, "TcpInSegs") > 0;
    let reached_r = delta(&r0, &r1, "Ip6InReceives") > 0;
    let lost_at = if reached_b {
        None
    } else if reached_r {
        Some("r")
    } else {
        Some("a")
    };
    let router_counters = [
        "Ip6InAddrErrors",
        "Ip6InTooBigErrors",
        "Ip6OutForwDatagrams",
        "Icmp6OutPktTooBigs",
    ]
    .iter()
    .filter(|k| delta(&r0, &r1, k) > 0)
    .map(|k| format!("{k}+{}", delta(&r0, &r1, k)))
    .collect();
    Kernel {
        ok,
        lost_at,
        router_counters,
    }
}

/// `netray collect` in each namespace: nodes `a`, `r`, `b`.
fn collect(t: &Topo, dir: &Path) {
    std::fs::create_dir_all(dir.join("nodes")).expect("bundle dir");
    for (node, ns) in [("a", &t.a), ("r", &t.r), ("b", &t.b)] {
        let out = dir.join("nodes").join(format!("{node}.json"));
        let st = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns.name(),
                NETRAY,
                "collect",
                "--node",
                node,
                "-o",
            ])
            .arg(&out)
            .output()
            .expect("run netray collect");
        assert!(
            st.status.success(),
            "netray collect in {}: {}",
            ns.name(),
            String::from_utf8_lossy(&st.stderr)
        );
    }
}

/// `netray trace -o json` over the bundle.
fn trace(dir: &Path, to: &str, extra: &[&str]) -> Value {
    let out = Command::new(NETRAY)
        .args(["trace", "--bundle"])
        .arg(dir)
        .args(["--from", A, "--to", to, "-o", "json"])
        .args(extra)
        .output()
        .expect("run netray trace");
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "netray trace --to {to}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("trace json")
}

/// netray's verdict: reachable, and for a failure the node of the last hop and the
/// disposition (and cause) of the failing branch.
#[derive(Debug)]
struct Netray {
    ok: bool,
    lost_at: Option<String>,
    disposition: Option<String>,
    cause: Option<String>,
    leg: Option<String>,
}

fn netray(t: &Value) -> Netray {
    let ok = t["reachable"].as_bool().unwrap_or(false);
    let failing = t["branches"]
        .as_array()
        .into_iter()
        .flatten()
        .find(|b| b["disposition"] != "delivered" && b["disposition"] != "accepted-by-host");
    let s = |v: &Value| v.as_str().map(str::to_string);
    Netray {
        ok,
        lost_at: failing.and_then(|b| {
            b["hops"]
                .as_array()
                .and_then(|h| h.last())
                .and_then(|h| s(&h["node"]))
        }),
        disposition: failing.and_then(|b| s(&b["disposition"])),
        cause: failing.and_then(|b| s(&b["cause"])),
        leg: failing.and_then(|b| s(&b["ended_on"])),
    }
}

struct Case {
    name: &'static str,
    setup: &'static str,
    undo: &'static str,
    /// The disposition netray must give when the kernel loses the request at the router.
    disposition: &'static str,
    /// …and the cause code.
    cause: &'static str,
    /// The router counter the kernel must show for that loss.
    counter: &'static str,
    /// `ping -s SIZE -M do` instead of an ordinary ping, and no TCP probe.
    size: Option<u32>,
}

fn check(t: &Topo, dir: &Path, c: &Case, table: &mut Vec<String>) -> Vec<String> {
    sh(&t.r, c.setup);
    let mut bad = Vec::new();
    let pinged = match c.size {
        Some(s) => measure(t, &|| ping(&t.a, B, Some(s)), 1),
        None => measure(t, &|| ping(&t.a, B, None), 3),
    };
    let tcped = c.size.is_none().then(|| measure(t, &|| tcp(&t.a), 3));
    let bundle = dir.join(c.name);
    collect(t, &bundle);
    sh(&t.r, c.undo);
    let mut probes = vec![("icmp", pinged, trace_icmp(&bundle, c.size))];
    if let Some(k) = tcped {
        probes.push(("tcp", k, trace(&bundle, &format!("[{B}]:{PORT}"), &[])));
    }
    for (what, k, tr) in probes {
        let n = netray(&tr);
        table.push(format!(
            "{:<24} {what:<4} kernel {:<4} lost at {:<4} {:<40} | netray {:<4} lost at {:<4} {} ({}, {})",
            c.name,
            if k.ok { "ok" } else { "FAIL" },
            k.lost_at.unwrap_or("-"),
            k.router_counters.join(","),
            if n.ok { "ok" } else { "FAIL" },
            n.lost_at.as_deref().unwrap_or("-"),
            n.disposition.as_deref().unwrap_or("-"),
            n.cause.as_deref().unwrap_or("-"),
            n.leg.as_deref().unwrap_or("-"),
        ));
        let ctx = format!("{} {what}", c.name);
        if k.ok != n.ok {
            bad.push(format!("{ctx}: kernel ok={} netray ok={}", k.ok, n.ok));
            continue;
        }
        if k.ok {
            continue;
        }
        if k.lost_at != n.lost_at.as_deref() {
            bad.push(format!(
                "{ctx}: kernel lost the request at {:?}, netray at {:?}",
                k.lost_at, n.lost_at
            ));
        }
        if n.disposition.as_deref() != Some(c.disposition)
            || n.cause.as_deref() != Some(c.cause)
            || n.leg.as_deref() != Some("forward")
        {
            bad.push(format!(
                "{ctx}: netray says {:?} ({:?}) on the {:?} leg, want {} ({}) on the forward leg",
                n.disposition, n.cause, n.leg, c.disposition, c.cause
            ));
        }
        if !c.counter.is_empty() && !k.router_counters.iter().any(|x| x.starts_with(c.counter)) {
            bad.push(format!(
                "{ctx}: the router's {} did not move ({:?}): the kernel dropped elsewhere",
                c.counter, k.router_counters
            ));
        }
    }
    bad
}

fn trace_icmp(bundle: &Path, size: Option<u32>) -> Value {
    match size {
        // ping's payload + 8 bytes of ICMPv6 header + 40 bytes of IPv6 header.
        Some(s) => trace(
            bundle,
            &format!("{B}/icmp"),
            &["--size", &(s + 48).to_string()],
        ),
        None => trace(bundle, &format!("{B}/icmp"), &[]),
    }
}

#[test]
fn ipv6_through_a_router_matches_the_kernel() {
    if !netray_lab::lab_tests_can_run("ipv6_through_a_router_matches_the_kernel") {
        return;
    }
    let t = build();
    let dir = tempfile::tempdir().expect("tempdir");
    let healthy = "sysctl -qw net.ipv6.conf.all.forwarding=1";
    let cases = [
        Case {
            name: "forwarding-on",
            setup: healthy,
            undo: healthy,
            disposition: "",
            cause: "",
            counter: "",
            size: None,
        },
        Case {
            name: "all-forwarding-0",
            setup: "sysctl -qw net.ipv6.conf.all.forwarding=0",
            undo: healthy,
            disposition: "forwarding-disabled",
            cause: "ip-forward-disabled",
            counter: "Ip6InAddrErrors",
            size: None,
        },
        Case {
            // `all` on, both interfaces' own switches off: the kernel forwards.
            name: "all-1-ifaces-0",
            setup: "sysctl -qw net.ipv6.conf.all.forwarding=1
                    sysctl -qw net.ipv6.conf.ra.forwarding=0 net.ipv6.conf.rb.forwarding=0",
            undo: healthy,
            disposition: "",
            cause: "",
            counter: "",
            size: None,
        },
        Case {
            // `all` off, both interfaces' own switches on: the kernel does not forward.
            name: "all-0-ifaces-1",
            setup: "sysctl -qw net.ipv6.conf.all.forwarding=0
                    sysctl -qw net.ipv6.conf.ra.forwarding=1 net.ipv6.conf.rb.forwarding=1",
            undo: healthy,
            disposition: "forwarding-disabled",
            cause: "ip-forward-disabled",
            counter: "Ip6InAddrErrors",
            size: None,
        },
        Case {
            name: "ip6tables-forward-drop",
            setup: "ip6tables -P FORWARD DROP",
            undo: "ip6tables -P FORWARD ACCEPT",
            disposition: "dropped",
            cause: "forward-policy-drop",
            counter: "",
            size: None,
        },
        Case {
            name: "egress-mtu-1280",
            setup: "ip link set rb mtu 1280",
            undo: "ip link set rb mtu 1500",
            disposition: "mtu-exceeded",
            cause: "mtu-blackhole",
            counter: "Ip6InTooBigErrors",
            size: Some(1400),
        },
    ];
    let mut table = Vec::new();
    let mut bad = Vec::new();
    for c in &cases {
        bad.extend(check(&t, dir.path(), c, &mut table));
    }
    eprintln!("{}", table.join("\n"));
    assert!(
        bad.is_empty(),
        "netray disagrees with the kernel:\n{}",
        bad.join("\n")
    );
}
