//! IPv6 below its minimum MTU, checked against the kernel (issue 11): two hosts `a` and `b`
//! joined by an IPv4 underlay veth, with a VXLAN device each carrying IPv6 (static neighbour
//! and FDB entries, as flannel writes them). When `b`'s VXLAN device is set to MTU 1230 (what
//! a 1300-byte underlay gives flannel-v6.1), the kernel removes the device's IPv6 state:
//! `a` still sends (its entries are static), the frame arrives on `b`'s device, and
//! `ip6_rcv_core` discards it (`Ip6InDiscards`). netray, over the bundle collected right
//! after, must say the same: the request is dropped on `b`'s device with cause
//! `ipv6-mtu-below-minimum`, and scan must raise that finding; with the MTU healthy both
//! agree the ping works.
//!
//! Lab safety: every address, route and link lives in `nrl-`-prefixed namespaces created
//! here (deleted on drop, also on failure); the root namespace is never touched; every probe
//! is bounded in time.

use std::path::Path;
use std::process::Command;

use netray_lab::{Netns, lab_tag};
use serde_json::Value;

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");

fn sh(ns: &Netns, script: &str) -> String {
    match ns.sh(script) {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => panic!("lab step in {} failed: {e}", ns.name()),
    }
}

fn ping(a: &Netns) -> bool {
    a.command("ping")
        .args(["-6", "-c1", "-W1", "fd01::2"])
        .output()
        .is_ok_and(|o| o.status.success())
}

fn counter(b: &Netns, script: &str) -> i64 {
    sh(b, script).trim().parse().unwrap_or(-1)
}

fn collect(dir: &Path, nodes: &[(&str, &Netns)]) {
    std::fs::create_dir_all(dir.join("nodes")).unwrap();
    for (node, ns) in nodes {
        let out = Command::new("ip")
            .args([
                "netns",
                "exec",
                ns.name(),
                NETRAY,
                "collect",
                "--node",
                node,
            ])
            .arg("-o")
            .arg(dir.join("nodes").join(format!("{node}.json")))
            .output()
            .expect("netray collect");
        assert!(
            out.status.success(),
            "collect {node}: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

fn netray(args: &[&str]) -> Value {
    let out = Command::new(NETRAY).args(args).output().expect("netray");
    assert!(
        out.status.code().is_some_and(|c| c <= 1),
        "netray {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("json")
}

#[test]
fn ipv6_below_its_minimum_mtu_matches_the_kernel() {
    if !netray_lab::lab_tests_can_run("ipv6_below_its_minimum_mtu_matches_the_kernel") {
        return;
    }
    let tag = lab_tag();
    let a = Netns::create(&format!("m6a{tag}")).expect("namespace a");
    let b = Netns::create(&format!("m6b{tag}")).expect("namespace b");
    a.veth("u0", &b, "u0").expect("veth");
    for (ns, me, peer, mac, peer_mac, v6) in [
        (
            &a,
            "1",
            "2",
            "02:00:00:00:00:01",
            "02:00:00:00:00:02",
            "fd01::1",
        ),
        (
            &b,
            "2",
            "1",
            "02:00:00:00:00:02",
            "02:00:00:00:00:01",
            "fd01::2",
        ),
    ] {
        let peer_v6 = if v6 == "fd01::1" {
            "fd01::2"
        } else {
            "fd01::1"
        };
        sh(
            ns,
            &format!(
                "sysctl -qw net.ipv6.conf.all.accept_dad=0 net.ipv6.conf.default.accept_dad=0
                 ip link set lo up; ip link set u0 up
                 ip addr add 192.168.99.{me}/24 dev u0
                 ip link add vx type vxlan id 2 local 192.168.99.{me} dstport 4789 nolearning
                 ip link set vx address {mac} mtu 1450 up
                 ip addr add {v6}/64 dev vx nodad
                 ip -6 neigh add {peer_v6} lladdr {peer_mac} dev vx nud permanent
                 bridge fdb add {peer_mac} dev vx dst 192.168.99.{peer} self permanent"
            ),
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let mut bad = Vec::new();
    for (case, mtu) in [("healthy", 1450), ("mtu-1230", 1230)] {
        sh(&b, &format!("ip link set vx mtu {mtu}"));
        let rx0 = counter(&b, "cat /sys/class/net/vx/statistics/rx_packets");
        let kernel_ok = (0..3).any(|_| ping(&a));
        let rx1 = counter(&b, "cat /sys/class/net/vx/statistics/rx_packets");
        let bundle = dir.path().join(case);
        collect(&bundle, &[("a", &a), ("b", &b)]);
        let bs = bundle.to_str().unwrap();
        let t = netray(&[
            "trace",
            "--bundle",
            bs,
            "--from",
            "fd01::1",
            "--to",
            "fd01::2/icmp",
            "-o",
            "json",
        ]);
        let netray_ok = t["reachable"].as_bool().unwrap_or(false);
        let failing =
            t["branches"].as_array().into_iter().flatten().find(|b| {
                b["disposition"] != "delivered" && b["disposition"] != "accepted-by-host"
            });
        let cause = failing.and_then(|f| f["cause"].as_str()).unwrap_or("-");
        let at = failing
            .and_then(|f| f["hops"].as_array().and_then(|h| h.last()))
            .and_then(|h| h["node"].as_str())
            .unwrap_or("-");
        eprintln!(
            "{case:<9} kernel {} (b's vx received {}) | netray {} at {at} ({cause})",
            if kernel_ok { "ok" } else { "FAIL" },
            rx1 - rx0,
            if netray_ok { "ok" } else { "FAIL" },
        );
        if kernel_ok != netray_ok {
            bad.push(format!(
                "{case}: kernel ok={kernel_ok}, netray ok={netray_ok}"
            ));
        }
        let scan = netray(&["scan", "--bundle", bs, "-o", "json"]).to_string();
        let flagged = scan.contains("ipv6-mtu-below-minimum");
        if mtu < 1280 {
            // The request reached b's device (the kernel dropped it there) …
            if rx1 <= rx0 {
                bad.push(format!("{case}: b's vx received nothing: lost before b"));
            }
            // … and b's device has no IPv6 state left.
            let v6 = sh(&b, "ip -6 addr show dev vx");
            if v6.contains("fd01::2") {
                bad.push(format!("{case}: the kernel kept fd01::2 on vx: {v6}"));
            }
            if (at, cause) != ("b", "ipv6-mtu-below-minimum") {
                bad.push(format!(
                    "{case}: netray loses the request at {at} ({cause}), want b (ipv6-mtu-below-minimum)"
                ));
            }
            if !flagged {
                bad.push(format!(
                    "{case}: scan does not raise ipv6-mtu-below-minimum"
                ));
            }
        } else if flagged {
            bad.push(format!("{case}: scan raises ipv6-mtu-below-minimum"));
        }
    }
    assert!(
        bad.is_empty(),
        "netray disagrees with the kernel:\n{}",
        bad.join("\n")
    );
}
