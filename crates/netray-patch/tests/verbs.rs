//! Every verb on the `examples/healthy` bundle (node1's host namespace unless said).

mod common;

use common::*;
use netray_patch::{ErrorKind, FixCommand, ObjectKind, apply_all};
use netray_snapshot::RouteType;

#[test]
fn sysctl_forwarding_like_the_kernel() {
    let mut b = healthy();
    let a = ok(&mut b, "sysctl -w net.ipv4.ip_forward=0");
    let h = host(&b);
    assert_eq!(h.sysctl("net.ipv4.ip_forward"), Some("0"));
    assert_eq!(h.sysctl("net.ipv4.conf.all.forwarding"), Some("0"));
    assert_eq!(h.sysctl("net.ipv4.conf.cni0.forwarding"), Some("0"));
    assert_eq!(h.sysctl("net.ipv4.conf.flannel/1.forwarding"), Some("0"));
    assert!(a.changes.iter().all(|c| c.kind == ObjectKind::Sysctl));
    assert!(a.changes.len() > 5, "{a}");
    // Per-interface only touches that interface; slash form with a dotted name.
    ok(&mut b, "sysctl net/ipv4/conf/flannel.1/forwarding=1");
    let h = host(&b);
    assert_eq!(h.sysctl("net.ipv4.conf.flannel/1.forwarding"), Some("1"));
    assert_eq!(h.sysctl("net.ipv4.conf.cni0.forwarding"), Some("0"));
    let a = ok(&mut b, "sysctl -w net.ipv4.conf.all.rp_filter=2");
    assert_eq!(a.changes.len(), 1);
    assert_eq!(a.changes[0].before.as_deref(), Some("0"));
    // Same value: valid, no change.
    assert!(
        ok(&mut b, "sysctl -w net.ipv4.conf.all.rp_filter=2")
            .changes
            .is_empty()
    );
}

#[test]
fn sysctl_errors() {
    let mut b = healthy();
    err_kind(
        &mut b,
        "sysctl -w net.ipv4.ip_foward=1",
        ErrorKind::Unsupported,
    );
    err_kind(
        &mut b,
        "sysctl -w net.ipv4.conf.eth9.rp_filter=1",
        ErrorKind::Invalid,
    );
    err_kind(
        &mut b,
        "sysctl -w net.ipv4.ip_forward=yes",
        ErrorKind::Invalid,
    );
    err_kind(&mut b, "sysctl net.ipv4.ip_forward", ErrorKind::Invalid);
    err_kind(&mut b, "sysctl -p", ErrorKind::Unsupported);
}

#[test]
fn route_add_del_replace() {
    let mut b = healthy();
    let n = host(&b).routes.len();
    let a = ok(&mut b, "ip route add 10.9.0.0/16 via 192.168.50.1");
    assert_eq!(a.changes[0].kind, ObjectKind::Route);
    let r = host(&b)
        .routes
        .iter()
        .find(|r| r.dst.to_string() == "10.9.0.0/16")
        .unwrap();
    assert_eq!(
        r.dev.as_deref(),
        Some("eth0"),
        "device found from the connected route"
    );
    assert_eq!(
        (r.table, r.protocol.as_str(), r.scope.as_str()),
        (254, "boot", "global")
    );
    assert_eq!(host(&b).routes.len(), n + 1);
    err_kind(
        &mut b,
        "ip route add 10.9.0.0/16 dev cni0",
        ErrorKind::Exists,
    );
    ok(&mut b, "ip r replace 10.9.0.0/16 dev cni0 metric 0");
    let r = host(&b)
        .routes
        .iter()
        .find(|r| r.dst.to_string() == "10.9.0.0/16")
        .unwrap();
    assert_eq!(
        (r.gateway, r.dev.as_deref(), r.scope.as_str()),
        (None, Some("cni0"), "link")
    );
    ok(&mut b, "ip route del 10.9.0.0/16");
    assert_eq!(host(&b).routes.len(), n);
    err_kind(&mut b, "ip route del 10.9.0.0/16", ErrorKind::NotFound);
    // Types, tables, onlink, multipath.
    ok(&mut b, "ip route add blackhole 10.8.0.0/16");
    assert!(
        host(&b)
            .routes
            .iter()
            .any(|r| r.route_type == RouteType::Blackhole)
    );
    ok(
        &mut b,
        "ip ro add 10.244.3.0/24 via 10.244.3.0 dev flannel.1 onlink table 100 proto static",
    );
    let r = host(&b).routes.iter().find(|r| r.table == 100).unwrap();
    assert_eq!(r.flags, ["onlink"]);
    assert_eq!(r.protocol, "static");
    ok(
        &mut b,
        "ip route add 10.7.0.0/16 nexthop via 192.168.50.1 weight 2 nexthop via 192.168.50.10",
    );
    let r = host(&b)
        .routes
        .iter()
        .find(|r| r.dst.to_string() == "10.7.0.0/16")
        .unwrap();
    assert_eq!(r.multipath.len(), 2);
    assert_eq!(r.multipath[0].weight, 2);
    ok(&mut b, "ip route change default via 192.168.50.10");
    ok(&mut b, "ip -6 route add 2001:db8::/64 dev eth0");
    let r = host(&b)
        .routes
        .iter()
        .find(|r| r.dst.to_string() == "2001:db8::/64")
        .unwrap();
    assert_eq!(r.metric, 1024);
    ok(&mut b, "ip route add local 10.6.0.1 dev lo");
    assert!(
        host(&b)
            .routes
            .iter()
            .any(|r| r.table == 255 && r.dst.to_string() == "10.6.0.1/32")
    );
}

#[test]
fn route_errors() {
    let mut b = healthy();
    err_kind(
        &mut b,
        "ip route add 10.9.0.1/16 dev eth0",
        ErrorKind::Invalid,
    );
    err_kind(
        &mut b,
        "ip route add 10.9.0.0/16 via 172.16.0.1",
        ErrorKind::Invalid,
    );
    err_kind(
        &mut b,
        "ip route add 10.9.0.0/16 dev eth9",
        ErrorKind::Invalid,
    );
    err_kind(
        &mut b,
        "ip route add 10.9.0.0/16 dev eth0 src 10.1.1.1",
        ErrorKind::Invalid,
    );
    err_kind(
        &mut b,
        "ip route add 10.9.0.0/16 dev eth0 realms 3",
        ErrorKind::Unsupported,
    );
    err_kind(
        &mut b,
        "ip route add 10.9.0.0/16 dev eth0 table foo",
        ErrorKind::Unsupported,
    );
    err_kind(
        &mut b,
        "ip route change 10.9.0.0/16 dev eth0",
        ErrorKind::NotFound,
    );
    err_kind(
        &mut b,
        "ip -n x route add 10.9.0.0/16 dev eth0",
        ErrorKind::Unsupported,
    );
    err_kind(
        &mut b,
        "ip netns exec x ip route add 10.9.0.0/16 dev eth0",
        ErrorKind::Unsupported,
    );
    err_kind(&mut b, "ip route show", ErrorKind::Invalid);
    err_kind(
        &mut b,
        "ip route add 10.9.0.0/16 dev eth0; reboot",
        ErrorKind::Syntax,
    );
    err_kind(
        &mut b,
        "ip -6 route add 10.9.0.0/16 dev eth0",
        ErrorKind::Invalid,
    );
}

#[test]
fn neigh() {
    let mut b = healthy();
    err_kind(
        &mut b,
        "ip neigh add 10.244.0.0 lladdr 0e:6e:72:00:00:09 dev flannel.1 nud permanent",
        ErrorKind::Exists,
    );
    let a = ok(
        &mut b,
        "ip neigh replace 10.244.0.0 lladdr 0E:6E:72:00:00:09 dev flannel.1 nud permanent",
    );
    assert_eq!(a.changes[0].kind, ObjectKind::Neighbour);
    assert!(
        a.changes[0]
            .before
            .as_deref()
            .unwrap()
            .contains("0e:6e:72:00:00:00")
    );
    let n = host(&b)
        .neighbours
        .iter()
        .find(|n| n.dst.to_string() == "10.244.0.0")
        .unwrap();
    assert_eq!(n.lladdr.as_deref(), Some("0e:6e:72:00:00:09"));
    assert_eq!(n.state, ["PERMANENT"]);
    ok(&mut b, "ip n change 10.244.0.0 dev flannel.1 nud stale");
    let n = host(&b)
        .neighbours
        .iter()
        .find(|n| n.dst.to_string() == "10.244.0.0")
        .unwrap();
    assert_eq!(
        (n.lladdr.as_deref(), n.state[0].as_str()),
        (Some("0e:6e:72:00:00:09"), "STALE")
    );
    ok(&mut b, "ip neigh del 10.244.0.0 dev flannel.1");
    err_kind(
        &mut b,
        "ip neigh del 10.244.0.0 dev flannel.1",
        ErrorKind::NotFound,
    );
    err_kind(
        &mut b,
        "ip neigh add 10.244.0.0 dev flannel.1",
        ErrorKind::Invalid,
    );
    err_kind(
        &mut b,
        "ip neigh add 10.244.0.0 lladdr zz dev flannel.1",
        ErrorKind::Invalid,
    );
    err_kind(
        &mut b,
        "ip neigh add 10.244.0.0 lladdr 0e:6e:72:00:00:09 dev nope",
        ErrorKind::Invalid,
    );
    ok(
        &mut b,
        "ip neighbour add 10.244.0.0 lladdr 0e:6e:72:00:00:00 dev flannel.1",
    );
}

#[test]
fn bridge_fdb() {
    let mut b = healthy();
    err_kind(
        &mut b,
        "bridge fdb add 0e:6e:72:00:00:02 dev flannel.1 dst 192.168.50.12",
        ErrorKind::Exists,
    );
    let a = ok(
        &mut b,
        "bridge fdb replace 0e:6e:72:00:00:02 dev flannel.1 dst 192.168.50.99 self permanent",
    );
    assert!(
        a.changes[0]
            .before
            .as_deref()
            .unwrap()
            .contains("192.168.50.12")
    );
    let e = host(&b)
        .fdb
        .iter()
        .find(|e| e.mac == "0e:6e:72:00:00:02")
        .unwrap();
    assert_eq!(e.dst.unwrap().to_string(), "192.168.50.99");
    assert_eq!(
        (e.flags.clone(), e.state.clone()),
        (vec!["self".to_string()], vec!["permanent".to_string()])
    );
    ok(&mut b, "bridge fdb del 0e:6e:72:00:00:02 dev flannel.1");
    assert!(!host(&b).fdb.iter().any(|e| e.mac == "0e:6e:72:00:00:02"));
    ok(
        &mut b,
        "bridge fdb add 00:00:00:00:00:00 dev flannel.1 dst 192.168.50.10",
    );
    ok(
        &mut b,
        "bridge fdb append 00:00:00:00:00:00 dev flannel.1 dst 192.168.50.12",
    );
    assert_eq!(
        host(&b)
            .fdb
            .iter()
            .filter(|e| e.mac == "00:00:00:00:00:00")
            .count(),
        2
    );
    ok(
        &mut b,
        "bridge fdb del 00:00:00:00:00:00 dev flannel.1 dst 192.168.50.10",
    );
    assert_eq!(
        host(&b)
            .fdb
            .iter()
            .filter(|e| e.mac == "00:00:00:00:00:00")
            .count(),
        1
    );
    // Bridge table entries.
    ok(
        &mut b,
        "bridge fdb add 0e:6e:72:a0:00:09 dev veth77b7b8b2 master static",
    );
    let e = host(&b)
        .fdb
        .iter()
        .find(|e| e.mac == "0e:6e:72:a0:00:09")
        .unwrap();
    assert_eq!(
        (e.master.as_deref(), e.state[0].as_str()),
        (Some("cni0"), "static")
    );
    assert!(e.flags.is_empty());
    err_kind(
        &mut b,
        "bridge fdb add 0e:6e:72:a0:00:0a dev eth0 master",
        ErrorKind::Invalid,
    );
    err_kind(
        &mut b,
        "bridge fdb add 0e:6e:72:a0:00:0a dev cni0 dst 1.2.3.4",
        ErrorKind::Invalid,
    );
    err_kind(
        &mut b,
        "bridge fdb del 0e:6e:72:a0:00:0a dev eth0",
        ErrorKind::NotFound,
    );
    err_kind(
        &mut b,
        "bridge link set dev eth0 hairpin on",
        ErrorKind::Unsupported,
    );
}

#[test]
fn iptables_policy() {
    let mut b = healthy();
    let a = ok(&mut b, "iptables -P FORWARD DROP");
    assert_eq!(a.changes[0].kind, ObjectKind::IptablesPolicy);
    assert!(
        a.changes[0]
            .object
            .contains("iptables-nft ipv4 filter FORWARD"),
        "{a}"
    );
    let t = &host(&b).firewall.iptables[0].text;
    assert!(t.contains("\n:FORWARD DROP [0:0]\n"), "counters kept");
    err_kind(&mut b, "iptables -P FORWARD REJECT", ErrorKind::Invalid);
    err_kind(&mut b, "iptables -P FLANNEL-FWD DROP", ErrorKind::Invalid);
    err_kind(&mut b, "iptables -t nat -P NOPE DROP", ErrorKind::NotFound);
    err_kind(
        &mut b,
        "iptables -t bogus -P INPUT DROP",
        ErrorKind::Invalid,
    );
    err_kind(&mut b, "iptables -L", ErrorKind::Invalid);
    ok(&mut b, "iptables -t filter --policy FORWARD ACCEPT");
    assert_eq!(b.nodes, healthy().nodes);
}

#[test]
fn targets_and_what_if() {
    let mut b = healthy();
    let c = FixCommand::parse_what_if("node2: sysctl -w net.ipv4.ip_forward=0").unwrap();
    assert_eq!((c.node.as_str(), c.netns.as_str()), ("node2", "host"));
    let c2 = FixCommand::parse_what_if("node1/nrl-7856x0-web-2: ip route del default").unwrap();
    assert_eq!(c2.netns, "nrl-7856x0-web-2");
    let c3 = FixCommand::parse_what_if("node1/netns:4026533171: ip route del default").unwrap();
    assert_eq!(c3.netns, "netns:4026533171");
    assert!(FixCommand::parse_what_if("sysctl -w x=1").is_err());
    assert!(FixCommand::parse_what_if("node1:").is_err());
    let applied = apply_all(&mut b, &[c, c2, c3.clone()]);
    // c3 names the same namespace by inode: its default route is already gone.
    let e = applied.unwrap_err();
    assert_eq!(e.kind, ErrorKind::NotFound);
    assert!(e.to_string().contains("node1/netns:4026533171"), "{e}");
    let e = run(&mut b, "node9", "host", "sysctl -w net.ipv4.ip_forward=1").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Target);
    let e = run(&mut b, "node1", "nope", "sysctl -w net.ipv4.ip_forward=1").unwrap_err();
    assert_eq!(e.kind, ErrorKind::Target);
    err_kind(&mut b, "reboot", ErrorKind::Unsupported);
    err_kind(&mut b, "", ErrorKind::Syntax);
}
