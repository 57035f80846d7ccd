//! Properties: random commands never panic (and a failing one changes nothing); applying a
//! command and then its inverse gives back the snapshot.

mod common;

use common::*;
use netray_patch::FixCommand;
use proptest::prelude::*;

const WORDS: &[&str] = &[
    "sysctl",
    "-w",
    "net.ipv4.ip_forward=1",
    "net/ipv4/conf/flannel.1/rp_filter=2",
    "ip",
    "-4",
    "-6",
    "route",
    "r",
    "rule",
    "neigh",
    "n",
    "link",
    "addr",
    "a",
    "set",
    "add",
    "del",
    "delete",
    "replace",
    "change",
    "append",
    "default",
    "via",
    "dev",
    "src",
    "metric",
    "table",
    "proto",
    "scope",
    "onlink",
    "nexthop",
    "weight",
    "blackhole",
    "local",
    "throw",
    "10.0.0.0/8",
    "192.168.50.1",
    "10.244.0.0",
    "fe80::1",
    "2001:db8::/64",
    "eth0",
    "cni0",
    "flannel.1",
    "lo",
    "up",
    "down",
    "mtu",
    "1400",
    "address",
    "lladdr",
    "0e:6e:72:00:00:09",
    "nud",
    "permanent",
    "stale",
    "from",
    "to",
    "fwmark",
    "0x10/0xff",
    "lookup",
    "pref",
    "100",
    "not",
    "bridge",
    "fdb",
    "dst",
    "self",
    "master",
    "static",
    "iptables",
    "ip6tables",
    "iptables-legacy",
    "-t",
    "nat",
    "filter",
    "mangle",
    "-A",
    "-I",
    "-D",
    "-R",
    "-P",
    "-N",
    "-X",
    "-F",
    "FORWARD",
    "INPUT",
    "POSTROUTING",
    "KUBE-SERVICES",
    "1",
    "2",
    "-s",
    "-d",
    "-p",
    "tcp",
    "udp",
    "-m",
    "comment",
    "--comment",
    "conntrack",
    "--ctstate",
    "NEW,ESTABLISHED",
    "--dport",
    "80",
    "-j",
    "ACCEPT",
    "DROP",
    "REJECT",
    "MASQUERADE",
    "MARK",
    "--set-mark",
    "!",
    "-i",
    "-o",
    "nft",
    "rule",
    "inet",
    "fw",
    "input",
    "handle",
    "3",
    "position",
    "insert",
    "saddr",
    "dport",
    "{",
    "}",
    ",",
    "ct",
    "state",
    "established",
    "counter",
    "accept",
    "jump",
    "-p",
    "--orig-dst",
    "--orig-port-dst",
    "8472",
    "-F",
    "'",
    "\"",
    "\\",
    ";",
    "$(x)",
    "",
    "=",
    "/",
    "-",
];

fn command() -> impl Strategy<Value = String> {
    prop::collection::vec(
        prop_oneof![
            8 => prop::sample::select(WORDS).prop_map(str::to_string),
            1 => "[ -~]{0,12}",
        ],
        0..12,
    )
    .prop_map(|w| w.join(" "))
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 600, ..ProptestConfig::default() })]

    #[test]
    fn random_commands_never_panic(cmd in command(), ns in 0usize..3) {
        thread_local! {
            static B: netray_snapshot::Bundle = healthy();
        }
        let mut b = B.with(|b| b.clone());
        let netns = ["host", "nrl-7856x0-web-2", "nrl-7856x0-sw"][ns];
        let before = b.nodes.clone();
        if run(&mut b, "node1", netns, &cmd).is_err() {
            prop_assert_eq!(&b.nodes, &before);
        }
        let _ = FixCommand::parse_what_if(&cmd);
        let _ = FixCommand::parse_what_if(&format!("node1: {cmd}"));
    }
}

/// Apply `add`, check it changed something, apply `del`: the bundle is as before.
#[test]
fn inverse_pairs_restore_the_snapshot() {
    let pairs: &[(&str, &str, &str)] = &[
        (
            "host",
            "sysctl -w net.ipv4.conf.all.rp_filter=1",
            "sysctl -w net.ipv4.conf.all.rp_filter=0",
        ),
        (
            "host",
            "ip route add 10.9.0.0/16 via 192.168.50.1",
            "ip route del 10.9.0.0/16",
        ),
        (
            "host",
            "ip route add blackhole 10.8.0.0/16 table 7 metric 5",
            "ip route del blackhole 10.8.0.0/16 table 7",
        ),
        (
            "host",
            "ip route add 10.7.0.0/16 nexthop via 192.168.50.1 nexthop via 192.168.50.10 weight 3",
            "ip route del 10.7.0.0/16",
        ),
        (
            "host",
            "ip -6 route add 2001:db8::/64 dev eth0",
            "ip -6 route del 2001:db8::/64 dev eth0",
        ),
        (
            "nrl-7856x0-web-2",
            "ip route del default",
            "ip route add default via 10.244.1.1 dev eth0",
        ),
        (
            "host",
            "ip rule add from 10.244.1.0/24 lookup 100 pref 50",
            "ip rule del pref 50",
        ),
        (
            "host",
            "ip neigh add 10.244.9.0 lladdr 0e:6e:72:00:00:09 dev flannel.1",
            "ip neigh del 10.244.9.0 dev flannel.1",
        ),
        (
            "host",
            "ip addr add 10.99.0.1/24 dev eth0",
            "ip addr del 10.99.0.1/24 dev eth0",
        ),
        (
            "host",
            "ip link set eth0 mtu 1400",
            "ip link set eth0 mtu 1500",
        ),
        (
            "host",
            "bridge fdb add 0e:6e:72:00:00:09 dev flannel.1 dst 192.168.50.13",
            "bridge fdb del 0e:6e:72:00:00:09 dev flannel.1",
        ),
        (
            "host",
            "bridge fdb add 0e:6e:72:a0:00:09 dev veth77b7b8b2 master static",
            "bridge fdb del 0e:6e:72:a0:00:09 dev veth77b7b8b2 master",
        ),
        (
            "host",
            "iptables -P FORWARD DROP",
            "iptables -P FORWARD ACCEPT",
        ),
        (
            "host",
            "iptables -I FORWARD -s 10.244.0.0/16 -p tcp --dport 80 -j DROP",
            "iptables -D FORWARD -s 10.244.0.0/16 -p tcp -m tcp --dport 80 -j DROP",
        ),
        (
            "host",
            "iptables -t nat -A POSTROUTING -o eth0 -j MASQUERADE",
            "iptables -t nat -D POSTROUTING -o eth0 -j MASQUERADE",
        ),
        ("host", "iptables -N NETRAY", "iptables -X NETRAY"),
    ];
    let orig = healthy();
    for (ns, add, del) in pairs {
        let mut b = orig.clone();
        let a = run(&mut b, "node1", ns, add).unwrap_or_else(|e| panic!("{add}: {e}"));
        assert!(!a.changes.is_empty(), "{add}: no change");
        assert_ne!(b.nodes, orig.nodes, "{add}");
        run(&mut b, "node1", ns, del).unwrap_or_else(|e| panic!("{del}: {e}"));
        assert_eq!(b.nodes, orig.nodes, "{add} then {del}");
    }
}
