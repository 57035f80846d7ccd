//! Issue 10 item 6 against the kernel: TCP data, not only handshakes. In the standard flannel
//! lab (pods at MTU 1450), the host side of one pod's veth is lowered to 1400 while the pod
//! keeps 1450, and the pod's `eth0` sends real segments (`gso_max_segs 1`: veth skips the MTU
//! check for GSO packets). The kernel then completes the handshake (`nc -z` succeeds) and
//! carries a large request (the node sends frag-needed, the client's PMTU discovery shrinks
//! its segments), but a large response never arrives: the pod's 1450-byte segments are
//! dropped silently by the veth peer. netray must say the connection is established and then
//! stalls, name the host-side veth and its MTU, quote its drop counters, and prove the fix;
//! the same lab without the fault must be fully reachable with full-size data both ways.
//! Needs root (skipped with a message otherwise, failing under `CI=true`).

use std::path::Path;
use std::process::Command;

use netray_lab::spec::{ClusterSpec, POD_TCP_PORT};
use netray_lab::{Agent, Fault, Lab};
use serde_json::Value;

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");
const CLIENT: &str = "web-0";
/// Bytes of the large request and response (many full-size segments).
const BIG: &str = "200000";

fn sh(lab: &Lab, member: &str, script: &str) -> String {
    lab.sh(member, script)
        .unwrap_or_else(|e| panic!("{member}: {script}: {e}"))
}

/// The kernel's answers for CLIENT → `server`: (handshake, small request, large request,
/// large response), each bounded in time.
fn kernel(lab: &Lab, server_ip: &str) -> [bool; 4] {
    let ns = lab.ns(CLIENT).expect("client ns");
    let ok = |args: &[&str]| {
        let out = ns
            .command(NETRAY)
            .args(["lab", "agent", "probe", "tcp"])
            .arg(format!("{server_ip}:{POD_TCP_PORT}"))
            .args(["--timeout-ms", "4000"])
            .args(args)
            .output()
            .expect("probe");
        println!(
            "  probe {args:?}: {} {}",
            String::from_utf8_lossy(&out.stdout).trim(),
            String::from_utf8_lossy(&out.stderr).trim()
        );
        out.status.success()
    };
    let handshake = ns
        .sh(&format!("nc -z -w 2 {server_ip} {POD_TCP_PORT}"))
        .is_ok();
    [
        handshake,
        ok(&[]),
        ok(&["--request-bytes", BIG]),
        ok(&["--response-bytes", BIG]),
    ]
}

fn diagnose(dir: &Path, to: &str) -> (i32, Value) {
    let out = Command::new(NETRAY)
        .args(["diagnose", "--bundle"])
        .arg(dir)
        .args(["--from", &format!("pod/default/{CLIENT}"), "--to", to])
        .args(["-o", "json"])
        .output()
        .expect("netray");
    let v = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("no JSON ({e}): {}", String::from_utf8_lossy(&out.stderr)));
    (out.status.code().unwrap_or(-1), v)
}

#[test]
fn large_response_stalls_after_the_handshake_on_a_veth_mtu_mismatch() {
    if !netray_lab::lab_tests_can_run(
        "large_response_stalls_after_the_handshake_on_a_veth_mtu_mismatch",
    ) {
        return;
    }
    let mut spec = ClusterSpec::standard(2, 2);
    spec.services.clear();
    let agent = Agent::subcommand(NETRAY, &["lab", "agent"]);
    let mut lab = Lab::up(&spec, &agent).expect("lab up");
    let server = spec
        .pods
        .iter()
        .find(|p| p.node == 1)
        .expect("a pod on node1")
        .clone();
    let sip = server.ip.to_string();
    let to = format!("pod/default/{}:{POD_TCP_PORT}", server.name);
    // Real segments out of the server pod and the client pod (no GSO super-packets).
    for pod in [server.name.as_str(), CLIENT] {
        sh(&lab, pod, "ip link set eth0 gso_max_segs 1");
    }
    // The host side of the server pod's veth, by the peer index of its eth0.
    let peer = sh(&lab, &server.name, "cat /sys/class/net/eth0/iflink");
    let links = sh(&lab, "node1", "ip -o link show");
    let host_veth = links
        .lines()
        .find_map(|l| {
            let (idx, rest) = l.split_once(": ")?;
            (idx == peer.trim()).then(|| rest.split(['@', ':']).next().unwrap_or("").to_string())
        })
        .unwrap_or_default();
    assert!(host_veth.starts_with("veth"), "host veth: {host_veth:?}");

    // Control: nothing changed, everything works in the kernel and in netray.
    println!("healthy: {CLIENT} -> {sip}");
    let k = kernel(&lab, &sip);
    assert_eq!(
        k, [true; 4],
        "healthy lab: the kernel should carry everything"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    lab.collect_bundle(Path::new(NETRAY), dir.path())
        .expect("collect");
    let (code, d) = diagnose(dir.path(), &to);
    println!("healthy netray: {}", d["summary"]);
    assert_eq!(d["verdict"], "reachable", "{d:#}");
    assert_eq!(code, 0);
    let td = &d["tcp_data"][0];
    assert_eq!(td["segment_len"], 1450, "{td}");
    assert_eq!(
        (td["request_ok"].as_bool(), td["reply_ok"].as_bool()),
        (Some(true), Some(true))
    );
    assert!(
        d["summary"]
            .as_str()
            .unwrap()
            .contains("1450-byte segments")
    );

    // The fault: the host side of the server's veth at 1400, the pod still at 1450. Both
    // ways are silent drops on the same link: node1 routes requests into cni0 (1450) and the
    // bridge cannot forward them to the port (no ICMP from a bridge); the pod's responses are
    // refused by its veth peer.
    sh(&lab, "node1", &format!("ip link set {host_veth} mtu 1400"));
    println!("veth mtu mismatch: {CLIENT} -> {sip}");
    let k = kernel(&lab, &sip);
    assert_eq!(
        k,
        [true, true, false, false],
        "kernel: handshake and small request work, large request and response stall"
    );
    println!(
        "{}",
        sh(
            &lab,
            "node1",
            &format!("ip -s link show {host_veth}; ip -s link show cni0")
        )
    );
    println!("{}", sh(&lab, &server.name, "ip -s link show eth0"));
    let dir = tempfile::tempdir().expect("tempdir");
    lab.collect_bundle(Path::new(NETRAY), dir.path())
        .expect("collect");
    let (code, d) = diagnose(dir.path(), &to);
    let summary = d["summary"].as_str().unwrap_or_default();
    println!("mismatch netray: {summary}");
    assert_eq!(d["verdict"], "unreachable", "{d:#}");
    assert_eq!(code, 1);
    assert!(
        summary.contains("established") && summary.contains("stalls"),
        "{summary}"
    );
    assert!(
        summary.contains(&format!("MTU 1400 of {host_veth} on node1/host")),
        "{summary}"
    );
    let td = &d["tcp_data"][0];
    assert_eq!(
        (td["request_ok"].as_bool(), td["reply_ok"].as_bool()),
        (Some(false), Some(false)),
        "{td}"
    );
    let b = &d["branches"][0];
    assert_eq!(b["data_segment"]["direction"], "forward", "{b:#}");
    assert_eq!(b["data_segment"]["len"], 1450);
    let cause = &d["causes"][0];
    println!("cause: {cause:#}");
    assert_eq!(cause["code"], "mtu-blackhole", "{cause:#}");
    assert_eq!(cause["node"], "node1");
    let evidence = cause["evidence"].to_string();
    assert!(evidence.contains(&host_veth), "{evidence}");
    // Supporting evidence: the drop counters of the deciding link (the kernel counts the
    // responses its veth peer refused as rx drops there).
    let counters = cause["evidence"]
        .as_array()
        .unwrap()
        .iter()
        .filter_map(Value::as_str)
        .find(|e| e.starts_with(&format!("counters of {host_veth} on node1/host")))
        .unwrap_or_else(|| panic!("drop counters of {host_veth} quoted: {evidence}"));
    assert!(
        !counters.contains("packets (0 dropped, 0 errors), tx"),
        "rx drops counted: {counters}"
    );
    let fix = cause["fix_commands"].to_string();
    assert!(
        fix.contains(&format!("ip link set {host_veth} mtu 1450")),
        "{fix}"
    );
    assert_eq!(cause["proof"]["proven"], true, "{cause:#}");

    // PMTU discovery: the veth back at 1450, node1's cni0 at 1400. node1 routes requests
    // into cni0 and, unable to, sends frag-needed back to the client, which lowers its
    // segments; responses enter cni0 from a port (no MTU check there) and leave by
    // flannel.1. Everything works, and netray must not call it a stall.
    sh(
        &lab,
        "node1",
        &format!("ip link set {host_veth} mtu 1450; ip link set cni0 mtu 1400"),
    );
    println!("cni0 at 1400: {CLIENT} -> {sip}");
    let k = kernel(&lab, &sip);
    assert_eq!(
        k, [true; 4],
        "kernel: PMTU discovery carries the large request"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    lab.collect_bundle(Path::new(NETRAY), dir.path())
        .expect("collect");
    let (code, d) = diagnose(dir.path(), &to);
    println!("pmtu netray: {}", d["summary"]);
    assert_eq!(d["verdict"], "reachable", "{d:#}");
    assert_eq!(code, 0);
    let td = &d["tcp_data"][0];
    println!("tcp_data: {td}");
    assert!(td["pmtu"].to_string().contains("mtu 1400"), "{td}");
    assert!(
        d["summary"]
            .as_str()
            .unwrap()
            .contains("after PMTU discovery"),
        "{}",
        d["summary"]
    );

    // The lab's overlay-mtu fault: the underlay switch's ports at 1400, the nodes' eth0 and
    // the overlay still at 1500/1450. Full-size segments (1450 + 50 bytes of VXLAN) are
    // dropped by the switch, silently, both ways: a small request/response still works.
    sh(&lab, "node1", "ip link set cni0 mtu 1450");
    lab.apply(&"overlay-mtu".parse::<Fault>().expect("fault"))
        .expect("overlay-mtu");
    println!("underlay switch at 1400: {CLIENT} -> {sip}");
    let k = kernel(&lab, &sip);
    assert_eq!(
        k,
        [true, true, false, false],
        "kernel: established, then stalls"
    );
    let dir = tempfile::tempdir().expect("tempdir");
    lab.collect_bundle(Path::new(NETRAY), dir.path())
        .expect("collect");
    let (code, d) = diagnose(dir.path(), &to);
    let summary = d["summary"].as_str().unwrap_or_default();
    println!("overlay-mtu netray: {summary}");
    assert_eq!(d["verdict"], "unreachable", "{d:#}");
    assert_eq!(code, 1);
    assert!(
        summary.contains("established") && summary.contains("MTU 1400 of"),
        "{summary}"
    );
    let td = &d["tcp_data"][0];
    assert_eq!(
        (td["request_ok"].as_bool(), td["reply_ok"].as_bool()),
        (Some(false), Some(false)),
        "{td}"
    );
}
