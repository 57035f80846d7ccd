//! Unit tests of the datapath semantics on hand-built snapshots.

use netray_datapath::testkit::Kit;
use netray_datapath::{
    Disposition, Flow, Options, RulesetEngine, Start, Step, Trace, World, trace,
};
use netray_snapshot::SocketProto;

fn run(
    kit: &Kit,
    src: &str,
    dst: &str,
    proto: u8,
    dport: Option<u16>,
    size: Option<u32>,
    start: Start,
) -> Trace {
    let b = kit.bundle();
    let w = World::new(&b);
    let e = RulesetEngine::new(&w);
    let f = Flow {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        proto,
        sport: 40000,
        dport,
        size,
        start,
    };
    let t = trace(&w, &e, &f, Options::default()).expect("trace");
    eprintln!("{}", netray_datapath::text::render(&t));
    t
}

fn tcp(kit: &Kit, src: &str, dst: &str, port: u16) -> Trace {
    run(kit, src, dst, 6, Some(port), None, Start::Auto)
}

fn only(t: &Trace) -> Disposition {
    assert_eq!(t.branches.len(), 1, "expected one branch");
    t.branches[0].disposition
}

/// client netns -- veth -- router (host of node r) -- veth -- server netns.
fn routed() -> Kit {
    let mut k = Kit::new();
    k.node("r").netns("r", "client").netns("r", "server");
    k.veth("r:client", "eth0", "r", "vc");
    k.veth("r:server", "eth0", "r", "vs");
    k.addr("r:client", "eth0", "10.0.1.2/24")
        .route("r:client", "default via 10.0.1.1 dev eth0");
    k.addr("r:server", "eth0", "10.0.2.2/24")
        .route("r:server", "default via 10.0.2.1 dev eth0")
        .listen("r:server", SocketProto::Tcp, "0.0.0.0", 80);
    k.addr("r", "vc", "10.0.1.1/24")
        .addr("r", "vs", "10.0.2.1/24");
    k.sysctl("r", "net.ipv4.ip_forward", "1");
    k
}

#[test]
fn routed_tcp_is_delivered_and_replied() {
    let k = routed();
    let t = tcp(&k, "10.0.1.2", "10.0.2.2", 80);
    assert_eq!(only(&t), Disposition::Delivered);
    assert!(t.reachable);
    let b = &t.branches[0];
    assert_eq!(b.endpoint.as_deref(), Some("10.0.2.2:80"));
    assert!(b.hops.iter().any(|h| h.leg == netray_datapath::Leg::Reply));
}

#[test]
fn no_listener_is_rejected() {
    let k = routed();
    let t = tcp(&k, "10.0.1.2", "10.0.2.2", 81);
    assert_eq!(only(&t), Disposition::Rejected);
    assert_eq!(t.branches[0].cause.as_deref(), Some("port-not-listening"));
}

#[test]
fn forwarding_disabled() {
    let mut k = routed();
    k.sysctl("r", "net.ipv4.ip_forward", "0");
    assert_eq!(
        only(&tcp(&k, "10.0.1.2", "10.0.2.2", 80)),
        Disposition::ForwardingDisabled
    );
    // Per-interface forwarding wins over ip_forward.
    k.sysctl("r", "net.ipv4.ip_forward", "1");
    k.sysctl("r", "net.ipv4.conf.vc.forwarding", "0");
    assert_eq!(
        only(&tcp(&k, "10.0.1.2", "10.0.2.2", 80)),
        Disposition::ForwardingDisabled
    );
}

#[test]
fn missing_route_and_missing_default_route() {
    let mut k = routed();
    k.ns("r:client").routes.retain(|r| r.dst.prefix_len() != 0);
    let t = tcp(&k, "10.0.1.2", "10.0.2.2", 80);
    assert_eq!(only(&t), Disposition::NoRoute);
    // Server without a default route: the forward leg arrives, the reply has no route.
    let mut k = routed();
    k.ns("r:server").routes.retain(|r| r.dst.prefix_len() != 0);
    let t = tcp(&k, "10.0.1.2", "10.0.2.2", 80);
    assert_eq!(only(&t), Disposition::NoRoute);
    assert_eq!(t.branches[0].ended_on, netray_datapath::Leg::Reply);
}

#[test]
fn blackhole_and_unreachable_routes() {
    let mut k = routed();
    k.route("r", "blackhole 10.0.2.2");
    assert_eq!(
        only(&tcp(&k, "10.0.1.2", "10.0.2.2", 80)),
        Disposition::Dropped
    );
    let mut k = routed();
    k.route("r", "unreachable 10.0.2.0/25");
    assert_eq!(
        only(&tcp(&k, "10.0.1.2", "10.0.2.2", 80)),
        Disposition::NoRoute
    );
}

#[test]
fn policy_routing_by_source_and_fwmark() {
    // A rule sends the client's subnet to table 100, whose route is unreachable.
    let mut k = routed();
    k.rule("r", "100: from 10.0.1.0/24 lookup 100")
        .route("r", "unreachable 10.0.2.0/24 table 100");
    assert_eq!(
        only(&tcp(&k, "10.0.1.2", "10.0.2.2", 80)),
        Disposition::NoRoute
    );
    // fwmark selector does not match an unmarked packet.
    let mut k = routed();
    k.rule("r", "100: from all fwmark 0x1/0x1 lookup 100")
        .route("r", "unreachable 10.0.2.0/24 table 100");
    assert_eq!(
        only(&tcp(&k, "10.0.1.2", "10.0.2.2", 80)),
        Disposition::Delivered
    );
    // `not` inverts; iif selector.
    let mut k = routed();
    k.rule("r", "100: not from 10.9.0.0/16 iif vc lookup 100")
        .route("r", "blackhole 10.0.2.0/24 table 100");
    assert_eq!(
        only(&tcp(&k, "10.0.1.2", "10.0.2.2", 80)),
        Disposition::Dropped
    );
    // A throw route continues with the next rule.
    let mut k = routed();
    k.rule("r", "100: from all lookup 100")
        .route("r", "throw 10.0.2.0/24 table 100");
    assert_eq!(
        only(&tcp(&k, "10.0.1.2", "10.0.2.2", 80)),
        Disposition::Delivered
    );
}

#[test]
fn longest_prefix_then_metric() {
    let mut k = routed();
    // A more specific blackhole beats the connected /24; a worse metric loses.
    k.route("r", "blackhole 10.0.2.0/28 metric 10");
    k.route("r", "10.0.2.0/28 dev vs metric 5");
    assert_eq!(
        only(&tcp(&k, "10.0.1.2", "10.0.2.2", 80)),
        Disposition::Delivered
    );
    let mut k = routed();
    k.route("r", "10.0.2.0/28 dev vs metric 10");
    k.route("r", "blackhole 10.0.2.0/28 metric 5");
    assert_eq!(
        only(&tcp(&k, "10.0.1.2", "10.0.2.2", 80)),
        Disposition::Dropped
    );
}

#[test]
fn ecmp_branches() {
    let mut k = routed();
    k.netns("r", "server2");
    k.veth("r:server2", "eth0", "r", "vs2");
    k.addr("r", "vs2", "10.0.3.1/24");
    k.addr("r:server2", "eth0", "10.0.3.2/24");
    // server2 answers for 10.0.9.9 too but nothing listens there.
    k.addr("r:server", "eth0", "10.0.9.9/32")
        .addr("r:server2", "eth0", "10.0.9.9/32");
    k.route("r:server2", "default via 10.0.3.1 dev eth0");
    k.route(
        "r",
        "10.0.9.9 nexthop via 10.0.2.2 dev vs weight 1 nexthop via 10.0.3.2 dev vs2 weight 3",
    );
    let t = tcp(&k, "10.0.1.2", "10.0.9.9", 80);
    assert_eq!(t.branches.len(), 2);
    let d = t
        .shares
        .get(&Disposition::Delivered)
        .copied()
        .unwrap_or(0.0);
    let r = t.shares.get(&Disposition::Rejected).copied().unwrap_or(0.0);
    assert!(
        (d - 0.25).abs() < 1e-9 && (r - 0.75).abs() < 1e-9,
        "{:?}",
        t.shares
    );
}

#[test]
fn rp_filter_strict_with_asymmetric_route() {
    let mut k = routed();
    // The router's route back to the client goes out of vs (asymmetric).
    k.route("r", "10.0.1.2 via 10.0.2.2 dev vs");
    k.sysctl("r", "net.ipv4.conf.all.rp_filter", "0");
    k.sysctl("r", "net.ipv4.conf.vc.rp_filter", "1");
    let t = tcp(&k, "10.0.1.2", "10.0.2.2", 80);
    assert_eq!(t.branches[0].disposition, Disposition::RpFilter);
    // Loose mode: max(all=2, iface=1) = 2 passes.
    k.sysctl("r", "net.ipv4.conf.all.rp_filter", "2");
    let t = tcp(&k, "10.0.1.2", "10.0.2.2", 80);
    assert_ne!(t.branches[0].disposition, Disposition::RpFilter);
}

#[test]
fn martian_local_source_unless_accept_local() {
    // Seed 004: a packet arrives at the router from outside with one of the router's own
    // addresses as source.
    let mut k = routed();
    let t = run(
        &k,
        "10.0.2.1",
        "10.0.2.2",
        1,
        None,
        None,
        Start::Node("r".into()),
    );
    assert_eq!(only(&t), Disposition::MartianSource);
    assert_eq!(t.branches[0].cause.as_deref(), Some("martian-source"));
    // Generated by the router itself (plain address): fine.
    let t = run(&k, "10.0.2.1", "10.0.2.2", 1, None, None, Start::Auto);
    assert_eq!(only(&t), Disposition::Delivered);
    // accept_local lets it in (and the reply then stays on the router: not the client).
    k.sysctl("r", "net.ipv4.conf.all.accept_local", "1");
    let t = run(
        &k,
        "10.0.2.1",
        "10.0.2.2",
        1,
        None,
        None,
        Start::Node("r".into()),
    );
    assert_ne!(t.branches[0].disposition, Disposition::MartianSource);
    // Same with rp_filter on: the reverse lookup finds a local route.
    let mut k = routed();
    k.sysctl("r", "net.ipv4.conf.all.rp_filter", "1");
    let t = run(
        &k,
        "10.0.2.1",
        "10.0.2.2",
        1,
        None,
        None,
        Start::Node("r".into()),
    );
    assert_eq!(only(&t), Disposition::MartianSource);
}

#[test]
fn external_client_reply_exits_cluster() {
    // A client outside the bundle entering the router on vc; the reply leaves toward it.
    let mut k = routed();
    k.link("r", "up0", netray_snapshot::LinkKind::Device, 1500);
    k.addr("r", "up0", "198.51.100.1/24");
    k.route("r", "203.0.113.0/24 via 198.51.100.254 dev up0");
    let t = run(
        &k,
        "203.0.113.9",
        "10.0.2.2",
        6,
        Some(80),
        None,
        Start::Node("r".into()),
    );
    assert_eq!(only(&t), Disposition::Delivered);
    assert!(t.flow.start.contains("entering on up0"));
    // The server's own traffic to the internet just exits.
    let t = run(&k, "10.0.2.2", "203.0.113.9", 1, None, None, Start::Auto);
    assert_eq!(only(&t), Disposition::Exits);
}

#[test]
fn neighbour_failed_without_owner_is_unreachable() {
    let mut k = routed();
    k.ns("r:client").routes.retain(|r| r.dst.prefix_len() != 0);
    k.route("r:client", "default via 10.0.1.99 dev eth0");
    k.neigh("r:client", "10.0.1.99 dev eth0 FAILED");
    assert_eq!(
        only(&tcp(&k, "10.0.1.2", "10.0.2.2", 80)),
        Disposition::NeighborUnreachable
    );
}

#[test]
fn stale_permanent_neighbour_is_a_blackhole() {
    let mut k = routed();
    k.neigh(
        "r:client",
        "10.0.1.1 dev eth0 lladdr 02:de:ad:be:ef:01 PERMANENT",
    );
    let t = tcp(&k, "10.0.1.2", "10.0.2.2", 80);
    assert_eq!(only(&t), Disposition::Dropped);
    assert_eq!(t.branches[0].cause.as_deref(), Some("stale-neighbor"));
}

#[test]
fn mtu_exceeded_for_df_icmp() {
    let mut k = routed();
    k.ns("r")
        .links
        .iter_mut()
        .find(|l| l.name == "vs")
        .unwrap()
        .mtu = 1400;
    let t = run(&k, "10.0.1.2", "10.0.2.2", 1, None, Some(1450), Start::Auto);
    assert_eq!(only(&t), Disposition::MtuExceeded);
    let t = run(&k, "10.0.1.2", "10.0.2.2", 1, None, Some(1400), Start::Auto);
    assert_eq!(only(&t), Disposition::Delivered);
}

#[test]
fn forward_policy_drop_and_accept_rule() {
    let mut k = routed();
    k.iptables(
        "r",
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [7:420]\n:OUTPUT ACCEPT [0:0]\nCOMMIT\n",
    );
    let t = tcp(&k, "10.0.1.2", "10.0.2.2", 80);
    assert_eq!(only(&t), Disposition::Dropped);
    assert_eq!(t.branches[0].cause.as_deref(), Some("forward-policy-drop"));
    let mut k = routed();
    k.iptables(
        "r",
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n-A FORWARD -i vc -o vs -j ACCEPT\n-A FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\nCOMMIT\n",
    );
    assert_eq!(
        only(&tcp(&k, "10.0.1.2", "10.0.2.2", 80)),
        Disposition::Delivered
    );
    // Without the ESTABLISHED rule the reply dies in FORWARD.
    let mut k = routed();
    k.iptables(
        "r",
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n-A FORWARD -i vc -o vs -j ACCEPT\nCOMMIT\n",
    );
    let t = tcp(&k, "10.0.1.2", "10.0.2.2", 80);
    assert_eq!(only(&t), Disposition::Dropped);
    assert_eq!(t.branches[0].ended_on, netray_datapath::Leg::Reply);
}

#[test]
fn dnat_with_statistic_and_reply_de_dnat() {
    let mut k = routed();
    k.netns("r", "server2");
    k.veth("r:server2", "eth0", "r", "vs2");
    k.addr("r", "vs2", "10.0.3.1/24");
    k.addr("r:server2", "eth0", "10.0.3.2/24")
        .route("r:server2", "default via 10.0.3.1 dev eth0");
    k.iptables(
        "r",
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:SVC - [0:0]\n-A PREROUTING -d 10.96.0.10/32 -p tcp --dport 80 -j SVC\n-A SVC -m statistic --mode random --probability 0.50000000000 -j DNAT --to-destination 10.0.2.2:80\n-A SVC -j DNAT --to-destination 10.0.3.2:8080\nCOMMIT\n",
    );
    let t = tcp(&k, "10.0.1.2", "10.96.0.10", 80);
    assert_eq!(t.branches.len(), 2);
    // 10.0.2.2:80 listens; 10.0.3.2:8080 does not.
    let ok = t
        .branches
        .iter()
        .find(|b| b.endpoint.as_deref() == Some("10.0.2.2:80"))
        .expect("branch");
    assert_eq!(ok.disposition, Disposition::Delivered);
    assert!((ok.probability - 0.5).abs() < 1e-9);
    // The reply is de-DNATed back to the service address.
    assert!(
        ok.hops
            .iter()
            .any(|h| matches!(&h.step, Step::Nat { kind, .. } if kind.starts_with("de-dnat")))
    );
    let bad = t
        .branches
        .iter()
        .find(|b| b.endpoint.as_deref() == Some("10.0.3.2:8080"))
        .expect("rejected branch");
    assert_eq!(bad.disposition, Disposition::Rejected);
}

/// Two nodes, flannel-style: pods on cni0, flannel.1 VXLAN, underlay through a switch namespace.
fn flannel() -> Kit {
    let mut k = Kit::new();
    k.node("a").node("b");
    k.netns("a", "sw").netns("a", "pa").netns("b", "pb");
    // Underlay: both node eth0s plug into a bridge in the switch namespace.
    k.bridge("a:sw", "br0");
    k.veth("a", "eth0", "a:sw", "pa0")
        .enslave("a:sw", "pa0", "br0", false);
    k.veth("b", "eth0", "a:sw", "pb0")
        .enslave("a:sw", "pb0", "br0", false);
    k.addr("a", "eth0", "192.168.0.1/24")
        .addr("b", "eth0", "192.168.0.2/24");
    for (n, other) in [("a", "b"), ("b", "a")] {
        let (me, peer) = if n == "a" { (1, 2) } else { (2, 1) };
        let _ = other;
        k.sysctl(n, "net.ipv4.ip_forward", "1");
        k.vxlan(n, "flannel.1", 1, 8472, &format!("192.168.0.{me}"), "eth0");
        k.addr(n, "flannel.1", &format!("10.244.{me}.0/32"));
        k.bridge(n, "cni0");
        k.addr(n, "cni0", &format!("10.244.{me}.1/24"));
        k.route(
            n,
            &format!("10.244.{peer}.0/24 via 10.244.{peer}.0 dev flannel.1 onlink"),
        );
    }
    // Pods.
    k.veth("a:pa", "eth0", "a", "veth-pa")
        .enslave("a", "veth-pa", "cni0", true);
    k.veth("b:pb", "eth0", "b", "veth-pb")
        .enslave("b", "veth-pb", "cni0", true);
    k.addr("a:pa", "eth0", "10.244.1.5/24")
        .route("a:pa", "default via 10.244.1.1 dev eth0")
        .route("a:pa", "10.244.0.0/16 via 10.244.1.1 dev eth0");
    k.addr("b:pb", "eth0", "10.244.2.7/24")
        .route("b:pb", "default via 10.244.2.1 dev eth0")
        .listen("b:pb", SocketProto::Tcp, "0.0.0.0", 8080)
        .listen("b:pb", SocketProto::Udp, "0.0.0.0", 5353);
    // Neighbours and FDB for the VTEPs, as flanneld writes them.
    let ma = k.mac_of("a", "flannel.1");
    let mb = k.mac_of("b", "flannel.1");
    k.neigh(
        "a",
        &format!("10.244.2.0 dev flannel.1 lladdr {mb} PERMANENT"),
    );
    k.fdb(
        "a",
        &format!("{mb} dev flannel.1 dst 192.168.0.2 self permanent"),
    );
    k.neigh(
        "b",
        &format!("10.244.1.0 dev flannel.1 lladdr {ma} PERMANENT"),
    );
    k.fdb(
        "b",
        &format!("{ma} dev flannel.1 dst 192.168.0.1 self permanent"),
    );
    k
}

#[test]
fn vxlan_between_nodes() {
    let k = flannel();
    let t = tcp(&k, "10.244.1.5", "10.244.2.7", 8080);
    assert_eq!(
        only(&t),
        Disposition::Delivered,
        "{}",
        netray_datapath::text::render(&t)
    );
    let b = &t.branches[0];
    assert!(b.hops.iter().any(|h| matches!(
        &h.step,
        Step::Encap {
            vni: 1,
            port: 8472,
            ..
        }
    )));
    assert!(b.hops.iter().any(|h| matches!(&h.step, Step::Decap { .. })));
    let t = run(
        &k,
        "10.244.1.5",
        "10.244.2.7",
        17,
        Some(5353),
        None,
        Start::Auto,
    );
    assert_eq!(only(&t), Disposition::Delivered);
}

#[test]
fn vxlan_stale_neighbour_mac_seed_002() {
    let mut k = flannel();
    // a still maps b's VTEP to b's old flannel.1 MAC.
    let old = "02:0b:0b:0b:0b:0b";
    k.ns("a").neighbours.clear();
    k.ns("a").fdb.retain(|e| e.dev != "flannel.1");
    k.neigh(
        "a",
        &format!("10.244.2.0 dev flannel.1 lladdr {old} PERMANENT"),
    );
    k.fdb(
        "a",
        &format!("{old} dev flannel.1 dst 192.168.0.2 self permanent"),
    );
    let t = tcp(&k, "10.244.1.5", "10.244.2.7", 8080);
    assert_eq!(only(&t), Disposition::Dropped);
    assert_eq!(t.branches[0].cause.as_deref(), Some("stale-vxlan-neighbor"));
    // The other direction still works (b's entries are right).
    let t = run(&k, "10.244.2.7", "10.244.1.5", 1, None, None, Start::Auto);
    // b → a forward is fine, but the echo reply from a goes through the stale entry.
    assert_eq!(t.branches[0].ended_on, netray_datapath::Leg::Reply);
}

#[test]
fn vxlan_missing_fdb_and_vni_mismatch() {
    let mut k = flannel();
    k.ns("a").fdb.retain(|e| e.dev != "flannel.1");
    let t = tcp(&k, "10.244.1.5", "10.244.2.7", 8080);
    assert_eq!(t.branches[0].cause.as_deref(), Some("missing-vxlan-fdb"));
    let mut k = flannel();
    if let Some(l) = k.ns("b").links.iter_mut().find(|l| l.name == "flannel.1")
        && let netray_snapshot::LinkKind::Vxlan { vni, .. } = &mut l.kind
    {
        *vni = 2;
    }
    let t = tcp(&k, "10.244.1.5", "10.244.2.7", 8080);
    assert_eq!(t.branches[0].cause.as_deref(), Some("vxlan-mismatch"));
}

#[test]
fn vxlan_overhead_exceeds_underlay_mtu() {
    let mut k = flannel();
    for n in ["a", "b"] {
        k.ns(n)
            .links
            .iter_mut()
            .find(|l| l.name == "flannel.1")
            .unwrap()
            .mtu = 1500;
        k.ns(n)
            .links
            .iter_mut()
            .find(|l| l.name == "cni0")
            .unwrap()
            .mtu = 1500;
    }
    let t = run(
        &k,
        "10.244.1.5",
        "10.244.2.7",
        1,
        None,
        Some(1480),
        Start::Auto,
    );
    assert_eq!(only(&t), Disposition::MtuExceeded);
    assert!(t.branches[0].reason.contains("VXLAN overhead"));
    let t = run(
        &k,
        "10.244.1.5",
        "10.244.2.7",
        1,
        None,
        Some(1400),
        Start::Auto,
    );
    assert_eq!(only(&t), Disposition::Delivered);
}

#[test]
fn pod_to_own_service_needs_hairpin_and_masquerade() {
    let mut k = flannel();
    k.sysctl("b", "net.bridge.bridge-nf-call-iptables", "1");
    let dnat = "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n-A PREROUTING -d 10.96.0.1/32 -p tcp --dport 80 -j DNAT --to-destination 10.244.2.7:8080\n";
    // Without masquerade the pod receives a packet from its own address: martian.
    k.iptables("b", &format!("{dnat}COMMIT\n"));
    let t = tcp(&k, "10.244.2.7", "10.96.0.1", 80);
    assert_eq!(only(&t), Disposition::MartianSource);
    // With kube-proxy's hairpin masquerade (in br_netfilter POSTROUTING) it works.
    k.ns("b").firewall.iptables.clear();
    k.iptables(
        "b",
        &format!("{dnat}-A POSTROUTING -s 10.244.2.7/32 -d 10.244.2.7/32 -j MASQUERADE\nCOMMIT\n"),
    );
    let t = tcp(&k, "10.244.2.7", "10.96.0.1", 80);
    assert_eq!(only(&t), Disposition::Delivered);
    assert!(
        t.branches[0]
            .hops
            .iter()
            .any(|h| matches!(&h.step, Step::Netfilter { bridged: true, .. }))
    );
    // Hairpin off: the bridged DNAT frame cannot go back out of the port it came in on.
    if let Some(l) = k.ns("b").links.iter_mut().find(|l| l.name == "veth-pb") {
        l.bridge_port.as_mut().unwrap().hairpin = false;
    }
    let t = tcp(&k, "10.244.2.7", "10.96.0.1", 80);
    assert_eq!(only(&t), Disposition::Dropped);
    assert_eq!(t.branches[0].cause.as_deref(), Some("hairpin-off"));
}

#[test]
fn duplicate_switch_namespace_is_one_namespace() {
    let mut k = flannel();
    // The switch namespace also appears in node b's snapshot (same boot id, same inode).
    let sw = k.ns("a:sw").clone();
    let a_host = k.ns("a").id.clone();
    let nb = k.nodes.iter_mut().find(|n| n.node.name == "b").unwrap();
    nb.namespaces.push(sw);
    nb.referenced_netns.push(a_host);
    let b = k.bundle();
    let w = World::new(&b);
    assert_eq!(
        w.ns.iter()
            .filter(|v| v.snap.id.name.as_deref() == Some("sw"))
            .count(),
        1
    );
    let t = tcp(&k, "10.244.1.5", "10.244.2.7", 8080);
    assert_eq!(only(&t), Disposition::Delivered);
}

#[test]
fn routing_loop_is_detected() {
    let mut k = routed();
    k.route("r:server", "10.7.0.0/16 via 10.0.2.1 dev eth0");
    k.route("r", "10.7.0.0/16 via 10.0.2.2 dev vs");
    k.sysctl("r:server", "net.ipv4.ip_forward", "1");
    let t = tcp(&k, "10.0.1.2", "10.7.0.1", 80);
    assert_eq!(only(&t), Disposition::Loop);
}

#[test]
fn unknown_interface_kind_is_named() {
    let mut k = routed();
    k.link(
        "r",
        "wg0",
        netray_snapshot::LinkKind::Other {
            kind: "wireguard".into(),
        },
        1420,
    );
    k.route("r", "10.50.0.0/16 dev wg0");
    let t = tcp(&k, "10.0.1.2", "10.50.0.1", 80);
    assert_eq!(only(&t), Disposition::Unknown);
    assert!(t.branches[0].reason.contains("wireguard"));
}

#[test]
fn json_roundtrip() {
    let k = flannel();
    let t = tcp(&k, "10.244.1.5", "10.244.2.7", 8080);
    let j = serde_json::to_string(&t).unwrap();
    let back: Trace = serde_json::from_str(&j).unwrap();
    assert_eq!(back, t);
    assert!(j.contains("\"disposition\":\"delivered\""));
}

#[test]
fn veth_peer_mtu_drops_silently() {
    let mut k = routed();
    k.ns("r:server")
        .links
        .iter_mut()
        .find(|l| l.name == "eth0")
        .unwrap()
        .mtu = 1400;
    // 1450 fits the router's vs (1500) but not the server's end of the pair.
    let t = run(&k, "10.0.1.2", "10.0.2.2", 1, None, Some(1450), Start::Auto);
    assert_eq!(only(&t), Disposition::MtuExceeded);
    assert!(t.branches[0].reason.contains("dropped on receive"));
}

#[test]
fn weak_host_arp_unless_arp_ignore() {
    // The router's gateway address for the client lives on vs, not vc: with arp_ignore=0 the
    // router still answers ARP on vc.
    let mut k = routed();
    k.ns("r:client").routes.retain(|r| r.dst.prefix_len() != 0);
    k.route("r:client", "default via 10.0.2.1 dev eth0 onlink");
    assert_eq!(
        only(&tcp(&k, "10.0.1.2", "10.0.2.2", 80)),
        Disposition::Delivered
    );
    k.sysctl("r", "net.ipv4.conf.all.arp_ignore", "1");
    assert_eq!(
        only(&tcp(&k, "10.0.1.2", "10.0.2.2", 80)),
        Disposition::NeighborUnreachable
    );
}

/// Seed 000's shape: host h, a VM on h's bridge br-vm behind ClusterIP 10.96.0.150
/// (masqueraded with --random-fully), router g whose eth-vm is a port of br-vm.
fn seed_000_kit() -> Kit {
    let mut k = Kit::new();
    k.node("h").netns("h", "vm").netns("h", "g");
    k.bridge("h", "br-vm");
    k.veth("h:vm", "eth0", "h", "vm-port")
        .enslave("h", "vm-port", "br-vm", false);
    k.veth("h:g", "eth-vm", "h", "uplink")
        .enslave("h", "uplink", "br-vm", false);
    k.veth("h", "eth0", "h:g", "eth0");
    k.addr("h", "eth0", "192.168.50.10/24")
        .route("h", "default via 192.168.50.1 dev eth0");
    k.addr("h:g", "eth0", "192.168.50.1/24")
        .addr("h:g", "eth-vm", "10.50.0.1/24");
    k.sysctl("h:g", "net.ipv4.ip_forward", "1");
    k.addr("h:vm", "eth0", "10.50.0.10/24")
        .route("h:vm", "default via 10.50.0.1 dev eth0")
        .listen("h:vm", SocketProto::Tcp, "0.0.0.0", 8080);
    k.sysctl("h", "net.bridge.bridge-nf-call-iptables", "1");
    k.iptables(
        "h",
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n-A OUTPUT -d 10.96.0.150/32 -p tcp --dport 80 -j MARK --set-xmark 0x4000/0x4000\n-A OUTPUT -d 10.96.0.150/32 -p tcp --dport 80 -j DNAT --to-destination 10.50.0.10:8080\n-A POSTROUTING -m mark --mark 0x4000/0x4000 -j MASQUERADE --random-fully\nCOMMIT\n",
    );
    k
}

/// Issue 10 item 4 (kernel: `fidelity_lab::bridged_request_and_masquerade`): when g reaches
/// the VM through br-vm too, the bridged request gets its own conntrack entry whose reply
/// tuple is the host connection's; NAT's null binding moves its source port and the reply
/// finds that entry, so the flow works.
#[test]
fn bridged_request_and_reply_with_masquerade_work() {
    let k = seed_000_kit();
    let t = tcp(&k, "192.168.50.10", "10.96.0.150", 80);
    assert_eq!(only(&t), Disposition::Delivered);
    let text = format!("{t:?}");
    assert!(text.contains("null binding"), "{text}");
}

#[test]
fn bridged_reply_de_snat_breaks_the_handshake_seed_000() {
    // Host h reaches a VM on bridge br-vm through a ClusterIP; kube-proxy masquerades with
    // --random-fully; the VM's gateway is router g, reached *through* br-vm, while g reaches
    // the VM over a direct link (seed 000's VLAN trunk: the request does not cross h's
    // bridge hooks). With bridge-nf-call-iptables=1 the VM's reply is de-NATed inside the
    // bridge, so what reaches g no longer matches g's conntrack entry (the handshake dies).
    let mut k = seed_000_kit();
    k.veth("h:g", "eth-vmd", "h:vm", "eth1");
    k.route("h:g", "10.50.0.10/32 dev eth-vmd");
    let t = tcp(&k, "192.168.50.10", "10.96.0.150", 80);
    assert_eq!(only(&t), Disposition::ReplyMismatch);
    let r = &t.branches[0].reason;
    assert!(r.contains("inside the bridge"), "{r}");
    assert!(
        r.contains("de-snat"),
        "the early de-SNAT (port rewrite) is named: {r}"
    );
    // Direct to the VM (no NAT) works; without br_netfilter the ClusterIP works too.
    assert_eq!(
        only(&tcp(&k, "192.168.50.10", "10.50.0.10", 8080)),
        Disposition::Delivered
    );
    k.sysctl("h", "net.bridge.bridge-nf-call-iptables", "0");
    assert_eq!(
        only(&tcp(&k, "192.168.50.10", "10.96.0.150", 80)),
        Disposition::Delivered
    );
}

/// Issue 10, item 3: an outside client reaching an address of the node arrives on the
/// interface holding that address (the router on its subnet delivers it there), so that
/// interface's strict rp_filter decides — not the interface facing the client's route.
#[test]
fn external_client_enters_on_the_interface_holding_the_destination() {
    let mut k = routed();
    k.link("r", "up0", netray_snapshot::LinkKind::Device, 1500);
    k.addr("r", "up0", "198.51.100.1/24");
    k.route("r", "192.0.2.0/24 via 198.51.100.254 dev up0");
    k.sysctl("r", "net.ipv4.conf.all.rp_filter", "1");
    // To the address on vc (a second LAN): enters on vc, and the route back leaves by up0.
    let t = run(
        &k,
        "192.0.2.9",
        "10.0.1.1",
        1,
        None,
        None,
        Start::Node("r".into()),
    );
    assert!(t.flow.start.contains("entering on vc"), "{}", t.flow.start);
    assert_eq!(only(&t), Disposition::RpFilter);
    // To the address on up0: enters there and passes.
    let t = run(
        &k,
        "192.0.2.9",
        "198.51.100.1",
        1,
        None,
        None,
        Start::Node("r".into()),
    );
    assert!(t.flow.start.contains("entering on up0"), "{}", t.flow.start);
    assert_eq!(only(&t), Disposition::Delivered);
}

/// Calico in IPIP mode: a pod block routed `via NODE dev tunl0 onlink`. No ipip on the lab
/// kernel, so the walk does not follow it: the branch ends unknown, naming the tunnel.
#[test]
fn ipip_route_is_uncertain_and_named() {
    let mut k = routed();
    k.link(
        "r",
        "tunl0",
        netray_snapshot::LinkKind::Tunnel {
            kind: "ipip".into(),
            local: None,
            remote: None,
        },
        1480,
    );
    k.route("r", "10.244.1.0/26 via 10.0.2.2 dev tunl0 onlink");
    let t = tcp(&k, "10.0.1.2", "10.244.1.5", 80);
    assert_eq!(only(&t), Disposition::Unknown);
    let r = &t.branches[0].reason;
    assert!(r.contains("tunl0") && r.contains("ipip"), "{r}");
}

/// A branch longer than `max_steps` ends unknown naming the limit (`walk-step-limit`): a path
/// that keeps changing the packet is not proven a loop.
#[test]
fn step_limit_is_unknown_not_a_loop() {
    let k = routed();
    let b = k.bundle();
    let w = World::new(&b);
    let e = RulesetEngine::new(&w);
    let f = Flow {
        src: "10.0.1.2".parse().unwrap(),
        dst: "10.0.2.2".parse().unwrap(),
        proto: 6,
        sport: 40000,
        dport: Some(80),
        size: None,
        start: Start::Auto,
    };
    let opts = Options {
        max_steps: 3,
        ..Options::default()
    };
    let t = trace(&w, &e, &f, opts).expect("trace");
    assert_eq!(only(&t), Disposition::Unknown);
    let br = &t.branches[0];
    assert_eq!(br.cause.as_deref(), Some("walk-step-limit"));
    assert!(br.reason.contains("after 3 steps"), "{}", br.reason);
    assert!(!t.reachable);
    let t = trace(&w, &e, &f, Options::default()).expect("trace");
    assert_eq!(only(&t), Disposition::Delivered);
}
