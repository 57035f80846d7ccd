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
        "bridge vlan add dev eth0 vid 5",
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

fn ipt(b: &netray_snapshot::Bundle) -> String {
    host(b).firewall.iptables[0].text.clone()
}

#[test]
fn iptables_rules() {
    let mut b = healthy();
    let a = ok(
        &mut b,
        "iptables -A FORWARD -p tcp -s 10.244.0.5 --dport 80 -m comment --comment 'no web' -j DROP",
    );
    assert_eq!(
        a.changes[0].after.as_deref(),
        Some(
            "-A FORWARD -s 10.244.0.5/32 -p tcp -m tcp --dport 80 -m comment --comment \"no web\" -j DROP"
        )
    );
    let t = ipt(&b);
    let lines: Vec<&str> = t.lines().collect();
    let i = lines.iter().position(|l| l.contains("\"no web\"")).unwrap();
    assert!(lines[i].starts_with("[0:0] -A FORWARD"));
    assert!(
        lines[i - 1]
            .contains("-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD")
    );
    // Delete by another spelling of the same spec.
    ok(
        &mut b,
        "iptables -D FORWARD -s 10.244.0.5/32 -p 6 --destination-port 80 -m comment --comment \"no web\" -j DROP",
    );
    assert_eq!(ipt(&b), ipt(&healthy()));
    // Insert at a position; delete by number.
    ok(
        &mut b,
        "iptables -I FORWARD 2 -m conntrack --ctstate ESTABLISHED,RELATED -j ACCEPT",
    );
    let t = ipt(&b);
    let fwd: Vec<&str> = t.lines().filter(|l| l.contains("-A FORWARD ")).collect();
    assert_eq!(
        fwd[1],
        "[0:0] -A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT"
    );
    ok(&mut b, "iptables -D FORWARD 2");
    assert_eq!(ipt(&b), ipt(&healthy()));
    // Delete a collected rule by its saved text (as evidence quotes it).
    ok(
        &mut b,
        "iptables -t filter -D KUBE-SERVICES -d 10.96.0.200/32 -p tcp -m comment --comment \"default/empty:http has no endpoints\" -m tcp --dport 80 -j REJECT --reject-with icmp-port-unreachable",
    );
    assert!(!ipt(&b).contains("has no endpoints"));
    // Replace, new chain, flush, delete chain.
    ok(
        &mut b,
        "iptables -R FLANNEL-FWD 1 -s 10.244.0.0/16 -j ACCEPT",
    );
    assert!(ipt(&b).contains("[0:0] -A FLANNEL-FWD -s 10.244.0.0/16 -j ACCEPT\n"));
    ok(&mut b, "iptables -N NETRAY-TEST");
    err_kind(&mut b, "iptables -N NETRAY-TEST", ErrorKind::Exists);
    ok(
        &mut b,
        "iptables -A NETRAY-TEST -i eth0 ! -o cni0 -j RETURN",
    );
    assert!(ipt(&b).contains("[0:0] -A NETRAY-TEST -i eth0 ! -o cni0 -j RETURN\n"));
    ok(&mut b, "iptables -A INPUT -j NETRAY-TEST");
    err_kind(&mut b, "iptables -X NETRAY-TEST", ErrorKind::Invalid);
    ok(&mut b, "iptables -D INPUT -j NETRAY-TEST");
    ok(&mut b, "iptables -F NETRAY-TEST");
    ok(&mut b, "iptables -X NETRAY-TEST");
    assert!(!ipt(&b).contains("NETRAY-TEST"));
    // NAT and MARK targets in save form.
    let a = ok(
        &mut b,
        "iptables -t nat -A POSTROUTING -s 10.244.1.0/24 ! -d 10.244.0.0/16 -j MASQUERADE --random-fully",
    );
    assert_eq!(
        a.changes[0].after.as_deref(),
        Some("-A POSTROUTING -s 10.244.1.0/24 ! -d 10.244.0.0/16 -j MASQUERADE --random-fully")
    );
    let a = ok(
        &mut b,
        "iptables -t mangle -A PREROUTING -j MARK --set-mark 0x10",
    );
    assert_eq!(
        a.changes[0].after.as_deref(),
        Some("-A PREROUTING -j MARK --set-xmark 0x10/0xffffffff")
    );
    let a = ok(&mut b, "iptables -A INPUT -p udp --dport 53 -j REJECT");
    assert_eq!(
        a.changes[0].after.as_deref(),
        Some("-A INPUT -p udp -m udp --dport 53 -j REJECT --reject-with icmp-port-unreachable")
    );
}

#[test]
fn iptables_errors_and_backends() {
    let mut b = healthy();
    err_kind(
        &mut b,
        "iptables -A FORWARD -m foo --bar 1 -j DROP",
        ErrorKind::Unsupported,
    );
    err_kind(
        &mut b,
        "iptables -A FORWARD -p tcp --dport http -j DROP",
        ErrorKind::Unsupported,
    );
    err_kind(
        &mut b,
        "iptables -A FORWARD --dport 80 -j DROP",
        ErrorKind::Unsupported,
    );
    err_kind(
        &mut b,
        "iptables -A FORWARD -j NOPE-CHAIN",
        ErrorKind::NotFound,
    );
    err_kind(&mut b, "iptables -A NOPE -j DROP", ErrorKind::NotFound);
    err_kind(
        &mut b,
        "iptables -D FORWARD -s 1.2.3.4 -j DROP",
        ErrorKind::NotFound,
    );
    err_kind(&mut b, "iptables -D FORWARD 99", ErrorKind::NotFound);
    err_kind(&mut b, "iptables -I FORWARD 99 -j DROP", ErrorKind::Invalid);
    err_kind(
        &mut b,
        "iptables -A FORWARD -j DNAT --to-destination 1.2.3.4",
        ErrorKind::Invalid,
    );
    err_kind(
        &mut b,
        "iptables -A FORWARD -s 1.2.3.4,5.6.7.8 -j DROP",
        ErrorKind::Unsupported,
    );
    err_kind(
        &mut b,
        "iptables -A FORWARD -j DROP -j ACCEPT",
        ErrorKind::Invalid,
    );
    // A legacy ruleset does not exist yet: it is started empty, and says so.
    let a = ok(&mut b, "iptables-legacy -A FORWARD -j DROP");
    assert!(
        a.notes
            .iter()
            .any(|n| n.contains("no iptables-legacy ipv4 rules")),
        "{a}"
    );
    let h = host(&b);
    assert_eq!(h.firewall.iptables.len(), 2);
    assert_eq!(
        h.firewall.iptables[1].text,
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n[0:0] -A FORWARD -j DROP\nCOMMIT\n"
    );
    // Plain iptables still picks the nft backend, and names the other one.
    let a = ok(&mut b, "iptables -A FORWARD -j ACCEPT");
    assert!(
        a.notes
            .iter()
            .any(|n| n.contains("iptables-nft ipv4")
                && n.contains("iptables-legacy also holds rules")),
        "{a}"
    );
    ok(&mut b, "ip6tables -P FORWARD DROP");
    assert!(
        host(&b)
            .firewall
            .iptables
            .iter()
            .any(|d| d.family == netray_snapshot::IpFamily::Ipv6)
    );
}

#[test]
fn rule_add_del() {
    let mut b = healthy();
    let a = ok(
        &mut b,
        "ip rule add from 10.244.1.0/24 fwmark 0x10/0xff lookup 100",
    );
    assert!(a.notes.iter().any(|n| n.contains("32765")), "{a}");
    let r = host(&b)
        .rules
        .iter()
        .find(|r| r.table == Some(100))
        .unwrap();
    assert_eq!(
        (r.priority, r.fwmark, r.fwmask),
        (32765, Some(0x10), Some(0xff))
    );
    // Without a priority the same rule is added again one step earlier, as on a real host.
    let a = ok(
        &mut b,
        "ip rule add from 10.244.1.0/24 fwmark 0x10/0xff lookup 100",
    );
    assert!(a.notes.iter().any(|n| n.contains("32764")), "{a}");
    ok(&mut b, "ip rule del priority 32764");
    err_kind(
        &mut b,
        "ip rule add from 10.244.1.0/24 fwmark 0x10/0xff lookup 100 pref 32765",
        ErrorKind::Exists,
    );
    ok(
        &mut b,
        "ip ru add not to 10.0.0.0/8 iif cni0 pref 100 blackhole",
    );
    let r = host(&b).rules.iter().find(|r| r.priority == 100).unwrap();
    assert!(r.invert && r.table.is_none());
    assert_eq!(r.action, netray_snapshot::RuleAction::Blackhole);
    let order: Vec<u32> = host(&b)
        .rules
        .iter()
        .filter(|r| r.family == "inet")
        .map(|r| r.priority)
        .collect();
    assert!(order.windows(2).all(|w| w[0] <= w[1]), "{order:?}");
    ok(&mut b, "ip rule del pref 100");
    ok(&mut b, "ip rule del from 10.244.1.0/24 table 100");
    assert_eq!(b.nodes, healthy().nodes);
    err_kind(&mut b, "ip rule del table 100", ErrorKind::NotFound);
    ok(
        &mut b,
        "ip -6 rule add from 2001:db8::/64 table 7 priority 5",
    );
    assert!(
        host(&b)
            .rules
            .iter()
            .any(|r| r.family == "inet6" && r.priority == 5)
    );
    err_kind(
        &mut b,
        "ip rule add from 1.2.3.4 nat 5.6.7.8",
        ErrorKind::Unsupported,
    );
}

#[test]
fn link_down_up() {
    let mut b = healthy();
    let routes = host(&b).routes.clone();
    let a = ok(&mut b, "ip link set cni0 down");
    assert_eq!(a.changes[0].kind, ObjectKind::Link);
    let h = host(&b);
    let l = h.link("cni0").unwrap();
    assert!(!l.is_up() && l.operstate == "down");
    assert!(!h.routes.iter().any(|r| r.dev.as_deref() == Some("cni0")));
    assert!(!h.neighbours.iter().any(|n| n.dev == "cni0"));
    let a = ok(&mut b, "ip link set dev cni0 up");
    let h = host(&b);
    assert!(h.link("cni0").unwrap().is_up());
    // The kernel routes of cni0's address come back (v4: prefix, local, broadcast).
    for r in routes
        .iter()
        .filter(|r| r.dev.as_deref() == Some("cni0") && r.dst.addr().is_ipv4())
    {
        assert!(h.routes.contains(r), "{r:?} not restored: {a}");
    }
    // A veth end going down takes the carrier off its peer in the pod namespace.
    let a = ok(&mut b, "ip link set veth77b7b8b2 down");
    assert!(a.notes.iter().any(|n| n.contains("loses carrier")), "{a}");
    let pod = b.nodes.iter().find(|n| n.node.name == "node1").unwrap().namespaces.iter()
        .find(|n| n.links.iter().any(|l| matches!(l.kind, netray_snapshot::LinkKind::Veth { peer_ifindex: Some(i), .. } if i == host(&b).link("veth77b7b8b2").unwrap().ifindex)))
        .unwrap();
    let eth0 = pod.link("eth0").unwrap();
    assert_eq!(eth0.operstate, "lowerlayerdown");
    ok(&mut b, "ip link set veth77b7b8b2 up");
    ok(&mut b, "ip link set eth0 mtu 1400");
    assert_eq!(host(&b).link("eth0").unwrap().mtu, 1400);
    ok(&mut b, "ip link set flannel.1 address 0e:6e:72:00:00:99");
    assert_eq!(
        host(&b).link("flannel.1").unwrap().mac.as_deref(),
        Some("0e:6e:72:00:00:99")
    );
    err_kind(&mut b, "ip link set eth0 mtu 20", ErrorKind::Invalid);
    err_kind(&mut b, "ip link set nope up", ErrorKind::Invalid);
    err_kind(&mut b, "ip link add foo type dummy", ErrorKind::Unsupported);
    err_kind(
        &mut b,
        "ip link set eth0 promisc on",
        ErrorKind::Unsupported,
    );
    // Up when already up: valid, nothing changes.
    assert!(ok(&mut b, "ip link set eth0 up").changes.is_empty());
}

#[test]
fn addr_add_del() {
    let mut b = healthy();
    let a = ok(&mut b, "ip addr add 10.99.0.1/24 dev eth0");
    let kinds: Vec<_> = a.changes.iter().map(|c| c.kind).collect();
    assert_eq!(
        kinds.iter().filter(|k| **k == ObjectKind::Route).count(),
        3,
        "{a}"
    );
    let h = host(&b);
    assert!(h.routes.iter().any(|r| r.table == 254
        && r.dst.to_string() == "10.99.0.0/24"
        && r.prefsrc.map(|p| p.to_string()) == Some("10.99.0.1".into())));
    assert!(h.routes.iter().any(|r| r.table == 255
        && r.dst.to_string() == "10.99.0.255/32"
        && r.route_type == RouteType::Broadcast));
    err_kind(
        &mut b,
        "ip addr add 10.99.0.1/24 dev eth0",
        ErrorKind::Exists,
    );
    ok(&mut b, "ip a add 10.99.0.2/24 dev eth0");
    assert!(host(&b).addresses.iter().any(
        |a| a.addr.to_string() == "10.99.0.2/24" && a.flags.contains(&"secondary".to_string())
    ));
    ok(&mut b, "ip addr del 10.99.0.2/24 dev eth0");
    ok(&mut b, "ip addr del 10.99.0.1/24 dev eth0");
    assert_eq!(b.nodes, healthy().nodes);
    err_kind(
        &mut b,
        "ip addr del 10.99.0.1/24 dev eth0",
        ErrorKind::NotFound,
    );
    err_kind(&mut b, "ip addr add 10.99.0.1/24", ErrorKind::Invalid);
    err_kind(
        &mut b,
        "ip addr add 10.99.0.1/24 dev eth0 label eth0:1",
        ErrorKind::Unsupported,
    );
    ok(&mut b, "ip -6 addr add 2001:db8::1/64 dev eth0");
    assert!(
        host(&b)
            .routes
            .iter()
            .any(|r| r.dst.to_string() == "2001:db8::/64" && r.metric == 256)
    );
}

const NFT: &str = r#"{"nftables":[{"metainfo":{"version":"1.0.9","release_name":"Old Doc Yak #3","json_schema_version":1}},{"table":{"family":"inet","name":"fw","handle":1}},{"chain":{"family":"inet","table":"fw","name":"input","handle":1,"type":"filter","hook":"input","prio":0,"policy":"accept"}},{"chain":{"family":"inet","table":"fw","name":"allowed","handle":2}},{"rule":{"family":"inet","table":"fw","chain":"input","handle":3,"expr":[{"match":{"op":"==","left":{"payload":{"protocol":"tcp","field":"dport"}},"right":22}},{"accept":null}]}}]}"#;

fn nft_doc(b: &netray_snapshot::Bundle) -> serde_json::Value {
    serde_json::from_str(host(b).firewall.nft_json.as_deref().unwrap()).unwrap()
}

fn with_nft() -> netray_snapshot::Bundle {
    let mut b = healthy();
    let n = b.nodes.iter_mut().find(|n| n.node.name == "node1").unwrap();
    n.namespaces[0].firewall.nft_json = Some(NFT.to_string());
    b
}

#[test]
fn nft_rules() {
    let mut b = with_nft();
    let a = ok(
        &mut b,
        r#"nft add rule inet fw input ip saddr 10.244.0.0/16 tcp dport { 80, 443 } iifname "eth0" ct state established,related counter accept comment "web in""#,
    );
    assert_eq!(a.changes[0].kind, ObjectKind::NftRule);
    let d = nft_doc(&b);
    let r = &d["nftables"][5]["rule"];
    assert_eq!(r["handle"], 4);
    assert_eq!(r["comment"], "web in");
    let e = &r["expr"];
    assert_eq!(e[0]["match"]["right"]["prefix"]["addr"], "10.244.0.0");
    assert_eq!(e[1]["match"]["right"]["set"], serde_json::json!([80, 443]));
    assert_eq!(e[2]["match"]["left"]["meta"]["key"], "iifname");
    assert_eq!(e[3]["match"]["op"], "in");
    assert_eq!(
        e[3]["match"]["right"],
        serde_json::json!(["established", "related"])
    );
    assert_eq!(e[4]["counter"]["packets"], 0);
    assert_eq!(e[5], serde_json::json!({"accept": null}));
    ok(&mut b, "nft insert rule inet fw input udp dport 53 drop");
    assert_eq!(nft_doc(&b)["nftables"][4]["rule"]["handle"], 5);
    ok(
        &mut b,
        "nft 'add rule inet fw input position 3 ip6 daddr != 2001:db8::/32 jump allowed'",
    );
    assert_eq!(nft_doc(&b)["nftables"][6]["rule"]["handle"], 6);
    ok(
        &mut b,
        "nft add rule inet fw input reject with icmpx type admin-prohibited",
    );
    ok(
        &mut b,
        "nft replace rule inet fw input handle 3 tcp dport 2222 accept",
    );
    for h in [4, 5, 6, 7] {
        ok(&mut b, &format!("nft delete rule inet fw input handle {h}"));
    }
    ok(
        &mut b,
        "nft replace rule inet fw input handle 3 tcp dport 22 accept",
    );
    assert_eq!(
        nft_doc(&b),
        serde_json::from_str::<serde_json::Value>(NFT).unwrap()
    );
    err_kind(
        &mut b,
        "nft delete rule inet fw input handle 42",
        ErrorKind::NotFound,
    );
    err_kind(
        &mut b,
        "nft add rule inet fw nochain accept",
        ErrorKind::NotFound,
    );
    err_kind(
        &mut b,
        "nft add rule inet nofw input accept",
        ErrorKind::NotFound,
    );
    err_kind(
        &mut b,
        "nft add rule inet fw input tcp flags syn accept",
        ErrorKind::Unsupported,
    );
    err_kind(
        &mut b,
        "nft add rule inet fw input limit rate 5/second accept",
        ErrorKind::Unsupported,
    );
    err_kind(
        &mut b,
        "nft add rule inet fw input jump nowhere",
        ErrorKind::NotFound,
    );
    err_kind(&mut b, "nft add table inet x", ErrorKind::Unsupported);
    err_kind(
        &mut b,
        "nft delete rule inet fw input tcp dport 22 accept",
        ErrorKind::Unsupported,
    );
    err_kind(&mut b, "nft list ruleset", ErrorKind::Unsupported);
    let mut h = healthy();
    err_kind(
        &mut h,
        "nft add rule inet fw input accept",
        ErrorKind::NotFound,
    );
}

#[test]
fn conntrack_delete() {
    let mut b = healthy();
    let before = host(&b).conntrack.clone().unwrap();
    let a = ok(
        &mut b,
        "conntrack -D -p udp --orig-dst 192.168.50.10 --dport 8472",
    );
    let ct = host(&b).conntrack.clone().unwrap();
    let n = a.changes.len();
    assert!(n >= 1, "{a}");
    assert!(
        a.changes
            .iter()
            .all(|c| c.kind == ObjectKind::ConntrackEntry && c.after.is_none())
    );
    assert_eq!(ct.entries.len() + n, before.entries.len());
    assert_eq!(ct.count + n as u64, before.count);
    assert!(!ct.entries.iter().any(|e| e.proto == 17
        && e.orig.dst.to_string() == "192.168.50.10"
        && e.orig.dport == Some(8472)));
    err_kind(
        &mut b,
        "conntrack -D -p udp --orig-dst 192.168.50.10 --dport 8472",
        ErrorKind::NotFound,
    );
    err_kind(&mut b, "conntrack -D --dport 8472", ErrorKind::Invalid);
    err_kind(&mut b, "conntrack -L", ErrorKind::Invalid);
    err_kind(
        &mut b,
        "conntrack -D --status ASSURED",
        ErrorKind::Unsupported,
    );
    ok(&mut b, "conntrack -F");
    assert!(host(&b).conntrack.as_ref().unwrap().entries.is_empty());
}

#[test]
fn bridge_link_and_multipath_delete() {
    let mut b = healthy();
    let a = ok(&mut b, "bridge link set dev veth77b7b8b2 hairpin off");
    assert_eq!(a.changes.len(), 1);
    assert!(
        !host(&b)
            .link("veth77b7b8b2")
            .unwrap()
            .bridge_port
            .as_ref()
            .unwrap()
            .hairpin
    );
    ok(&mut b, "bridge link set dev veth77b7b8b2 hairpin on");
    assert_eq!(b.nodes, healthy().nodes);
    err_kind(
        &mut b,
        "bridge link set dev eth0 hairpin on",
        ErrorKind::Invalid,
    );
    err_kind(
        &mut b,
        "bridge link set dev veth77b7b8b2 isolated on",
        ErrorKind::Unsupported,
    );
    // `ip route del` with the text netray prints for a multipath route.
    ok(
        &mut b,
        "ip route add 10.7.0.0/16 nexthop via 192.168.50.1 dev eth0 weight 2 nexthop via 192.168.50.10 dev eth0 weight 1",
    );
    err_kind(
        &mut b,
        "ip route del 10.7.0.0/16 nexthop via 192.168.50.1 dev eth0 weight 1 nexthop via 192.168.50.10 dev eth0 weight 1",
        ErrorKind::NotFound,
    );
    ok(
        &mut b,
        "ip route del 10.7.0.0/16 nexthop via 192.168.50.1 dev eth0 weight 2 nexthop via 192.168.50.10 dev eth0 weight 1",
    );
    assert_eq!(b.nodes, healthy().nodes);
    // Route text as netray prints a local-table route.
    ok(
        &mut b,
        "ip route del broadcast 10.244.1.255 dev cni0 scope link src 10.244.1.1 table local",
    );
}

/// IPv6 destinations may start with a letter: `fd00::/64` is a destination, not an option.
#[test]
fn route_add_ipv6_destination() {
    let mut b = healthy();
    ok(&mut b, "ip route add fd00:9::/64 dev eth0");
    assert!(
        host(&b)
            .routes
            .iter()
            .any(|r| r.dst.to_string() == "fd00:9::/64" && r.dev.as_deref() == Some("eth0"))
    );
    err_kind(
        &mut b,
        "ip route add fdxx::/64 dev eth0",
        ErrorKind::Unsupported,
    );
}
