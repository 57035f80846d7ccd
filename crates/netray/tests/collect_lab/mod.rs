//! A small node for `netray collect` tests: a node namespace with a `cni0` bridge and two
//! pods on veths, an underlay switch namespace on `eth0`, a flannel-style `flannel.1`
//! (VNI 1, port 8472) with PERMANENT neighbour and FDB `dst` entries, a custom routing
//! table with rules, multipath routes (v4 and v6), iptables rules in both the legacy and
//! the nft backend, a native nft table, an ipset, a listening socket and a conntrack entry.
//!
//! Nothing is configured in the root namespace; every namespace is `nrl-`-prefixed and
//! deleted on drop.
#![allow(dead_code)]

use std::process::Command;

use netray_lab::{Netns, lab_tag};
use serde_json::Value;

/// The lab's namespaces (dropped, i.e. deleted, together).
pub struct Lab {
    /// Pods (eth0 ↔ vethN on the node).
    pub pods: Vec<Netns>,
    /// The node: where `netray collect` runs.
    pub node: Netns,
    /// The underlay switch (veth peer of the node's eth0).
    pub ul: Netns,
}

/// Whether the lab test can run (skips without root, fails under `CI=true`).
pub fn root_or_skip(test: &str) -> bool {
    netray_lab::lab_tests_can_run(test)
}

fn sh(ns: &Netns, script: &str) {
    if let Err(e) = ns.sh(script) {
        panic!("lab setup in {} failed: {e}", ns.name());
    }
}

/// Build the lab.
pub fn build() -> Lab {
    let tag = lab_tag();
    let mk = |role: &str| {
        Netns::create(&format!("c{role}{tag}"))
            .unwrap_or_else(|e| panic!("cannot create namespace: {e}"))
    };
    let ul = mk("u");
    let node = mk("n");
    let pods = vec![mk("a"), mk("b")];
    node.veth("eth0", &ul, "n1").expect("underlay veth");
    sh(
        &ul,
        "ip link set n1 up; ip addr add 192.168.50.1/24 dev n1; ip addr add fd00::1/64 dev n1 nodad",
    );
    sh(
        &node,
        r#"
ip link add cni0 type bridge
ip link set cni0 up
ip addr add 10.244.1.1/24 dev cni0
ip link set eth0 up
ip addr add 192.168.50.2/24 dev eth0
ip addr add fd00::2/64 dev eth0 nodad
ip link add flannel.1 type vxlan id 1 dev eth0 local 192.168.50.2 dstport 8472 nolearning
ip link set flannel.1 mtu 1450 up
ip addr add 10.244.1.0/32 dev flannel.1
ip route add 10.244.2.0/24 via 10.244.2.0 dev flannel.1 onlink
ip neigh add 10.244.2.0 lladdr 02:00:00:00:02:00 dev flannel.1 nud permanent
bridge fdb append 02:00:00:00:02:00 dev flannel.1 dst 192.168.50.3
bridge fdb append 00:00:00:00:00:00 dev flannel.1 dst 192.168.50.4
ip neigh add 192.168.50.9 lladdr 02:00:00:00:00:09 dev eth0 nud noarp
ip route add 10.99.0.0/16 via 192.168.50.1 table 100
ip route add unreachable 10.96.5.0/24 table 100
ip route add prohibit 10.96.6.0/24 table 100 metric 5
ip rule add from 10.244.1.0/24 fwmark 0x10/0xff lookup 100 pref 1000
ip rule add not to 10.0.0.0/8 iif cni0 table 100 pref 1001
ip rule add ipproto tcp dport 8000-8080 blackhole pref 1003
ip -6 rule add from fd00::/64 lookup 100 pref 1002
ip route add 10.98.0.0/16 nexthop via 192.168.50.1 dev eth0 weight 1 nexthop via 192.168.50.5 dev eth0 weight 2
ip route add blackhole 10.97.0.0/16
ip route add 10.95.0.0/16 via 192.168.50.1 src 192.168.50.2 metric 7 proto static
ip -6 route add fd01::/64 via fd00::1
ip -6 route add fd02::/64 nexthop via fd00::1 dev eth0 nexthop via fd00::5 dev eth0
sysctl -qw net.ipv4.ip_forward=1 net.ipv4.conf.eth0.rp_filter=2 net.ipv6.conf.all.forwarding=1
iptables-legacy -t nat -A POSTROUTING -s 10.244.0.0/16 ! -d 10.244.0.0/16 -j MASQUERADE
iptables-legacy -A FORWARD -s 10.244.0.0/16 -m comment --comment "flannel forward" -j ACCEPT
iptables-nft -t nat -N KUBE-SERVICES
iptables-nft -t nat -A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
iptables-nft -A FORWARD -m conntrack --ctstate INVALID -j DROP
ip6tables-nft -A INPUT -s fd00::/64 -j ACCEPT
nft add table inet nrtest
nft 'add chain inet nrtest input { type filter hook input priority 10; }'
nft add rule inet nrtest input tcp dport 9999 counter accept
ipset create KUBE-TEST hash:ip
ipset add KUBE-TEST 10.244.1.11
"#,
    );
    for (i, p) in pods.iter().enumerate() {
        let n = i + 1;
        node.veth(&format!("veth{n}"), p, "eth0").expect("pod veth");
        sh(
            &node,
            &format!("ip link set veth{n} master cni0 up; bridge link set dev veth{n} hairpin on"),
        );
        sh(
            p,
            &format!(
                "ip link set eth0 up; ip addr add 10.244.1.1{n}/24 dev eth0; ip route add default via 10.244.1.1"
            ),
        );
    }
    // A listening TCP socket and a bound UDP socket in pod a, for a bounded time.
    sh(
        &pods[0],
        "setsid timeout 120 python3 -c 'import socket,time\n\
t=socket.socket(); t.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1); t.bind((\"0.0.0.0\", 8080)); t.listen()\n\
u=socket.socket(socket.AF_INET, socket.SOCK_DGRAM); u.bind((\"10.244.1.11\", 5353))\n\
time.sleep(120)' </dev/null >/dev/null 2>&1 &",
    );
    // A conntrack entry in the node (its nat table makes conntrack active there).
    let _ = node.exec("ping", &["-c1", "-W1", "10.244.1.11"]);
    // Wait (bounded) for the listener.
    for _ in 0..50 {
        let out = pods[0]
            .exec("ss", &["-Hltn", "sport = :8080"])
            .map(|o| String::from_utf8_lossy(&o.stdout).to_string())
            .unwrap_or_default();
        if out.contains("8080") {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    // Let IPv6 settle (DAD, then the MLD reports that add NOARP neighbour entries), so the
    // comparisons do not race the kernel's own timers. Bounded: 6 s at most.
    for _ in 0..50 {
        let tentative = [&node, &ul, &pods[0], &pods[1]].iter().any(|n| {
            n.exec("ip", &["-6", "addr", "show", "tentative"])
                .map(|o| !o.stdout.is_empty())
                .unwrap_or(false)
        });
        if !tentative {
            break;
        }
        std::thread::sleep(std::time::Duration::from_millis(100));
    }
    std::thread::sleep(std::time::Duration::from_millis(1500));
    Lab { pods, node, ul }
}

/// Run `ip netns exec NS netray collect ARGS…` and parse the snapshot.
pub fn collect(ns: &Netns, args: &[&str]) -> Value {
    let out = ns
        .command(env!("CARGO_BIN_EXE_netray"))
        .arg("collect")
        .args(args)
        .output()
        .expect("run netray collect");
    assert!(
        out.status.success(),
        "netray collect failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).expect("snapshot is JSON")
}

/// stdout of `program args…` inside `ns`.
pub fn text(ns: &Netns, program: &str, args: &[&str]) -> String {
    match ns.exec(program, args) {
        Ok(o) => String::from_utf8_lossy(&o.stdout).into_owned(),
        Err(e) => panic!("{program} {args:?} in {}: {e}", ns.name()),
    }
}

/// JSON stdout of `program args…` inside `ns` (`[]` for empty output).
pub fn json(ns: &Netns, program: &str, args: &[&str]) -> Value {
    let t = text(ns, program, args);
    if t.trim().is_empty() {
        return Value::Array(Vec::new());
    }
    serde_json::from_str(&t).unwrap_or_else(|e| panic!("{program} {args:?}: {e}: {t}"))
}

/// Inode of a `/run/netns` namespace.
pub fn inode(ns: &Netns) -> u64 {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(format!("/run/netns/{}", ns.name()))
        .expect("netns file")
        .ino()
}

/// Whether a tool exists (for optional parts).
pub fn have(tool: &str) -> bool {
    Command::new("sh")
        .args(["-c", &format!("command -v {tool}")])
        .output()
        .map(|o| o.status.success())
        .unwrap_or(false)
}
