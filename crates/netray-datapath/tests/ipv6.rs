//! IPv6 semantics of the walk on hand-built snapshots (the kernel's behaviour, measured in
//! `crates/netray/tests/ipv6_lab.rs`): forwarding by `conf.all.forwarding` alone (or the
//! input interface's `force_forwarding`), no rp_filter, IPv6 martians, NDP answered only for
//! the receiving interface's addresses or a proxy entry, link-local next hops, no
//! fragmentation in transit, ICMPv6 echo.

use netray_datapath::testkit::Kit;
use netray_datapath::{
    Disposition, Flow, Options, RulesetEngine, Start, Step, Trace, World, trace,
};
use netray_snapshot::{Neighbour, SocketProto};

fn run(kit: &Kit, src: &str, dst: &str, proto: u8, size: Option<u32>, start: Start) -> Trace {
    let b = kit.bundle();
    let w = World::new(&b);
    let e = RulesetEngine::new(&w);
    let f = Flow {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        proto,
        sport: 40000,
        dport: (proto == 6).then_some(80),
        size,
        start,
    };
    let t = trace(&w, &e, &f, Options::default()).unwrap_or_else(|e| panic!("trace: {e}"));
    eprintln!("{}", netray_datapath::text::render(&t));
    t
}

fn ping(kit: &Kit, src: &str, dst: &str) -> Trace {
    run(kit, src, dst, 1, None, Start::Auto)
}

fn only(t: &Trace) -> Disposition {
    assert_eq!(t.branches.len(), 1, "expected one branch");
    t.branches[0].disposition
}

fn neighbour_texts(t: &Trace) -> Vec<String> {
    t.branches[0]
        .hops
        .iter()
        .filter_map(|h| match &h.step {
            Step::Neighbour { state, .. } => Some(state.clone()),
            _ => None,
        })
        .collect()
}

/// a -- vc [router r] vs -- b, IPv6 only, forwarding on.
fn routed6() -> Kit {
    let mut k = Kit::new();
    k.node("r").netns("r", "a").netns("r", "b");
    k.veth("r:a", "eth0", "r", "vc");
    k.veth("r:b", "eth0", "r", "vs");
    k.addr("r:a", "eth0", "fd00:1::2/64")
        .route("r:a", "::/0 via fd00:1::1 dev eth0");
    k.addr("r:b", "eth0", "fd00:2::2/64")
        .route("r:b", "::/0 via fd00:2::1 dev eth0")
        .listen("r:b", SocketProto::Tcp, "::", 80);
    k.addr("r", "vc", "fd00:1::1/64")
        .addr("r", "vs", "fd00:2::1/64");
    for (key, val) in [
        ("net.ipv6.conf.all.forwarding", "1"),
        ("net.ipv6.conf.vc.forwarding", "1"),
        ("net.ipv6.conf.vs.forwarding", "1"),
        // IPv4 forwarding off must not matter for IPv6.
        ("net.ipv4.ip_forward", "0"),
        ("net.ipv4.conf.all.rp_filter", "1"),
    ] {
        k.sysctl("r", key, val);
    }
    k
}

#[test]
fn icmpv6_echo_and_tcp_are_delivered_with_ndp_wording() {
    let k = routed6();
    let t = ping(&k, "fd00:1::2", "fd00:2::2");
    assert_eq!(only(&t), Disposition::Delivered);
    let texts = neighbour_texts(&t);
    assert!(texts.iter().all(|s| !s.contains("ARP")), "{texts:?}");
    assert!(texts.iter().any(|s| s.contains("NDP")), "{texts:?}");
    assert_eq!(t.flow.packet.proto, "icmpv6");
    let t = run(&k, "fd00:1::2", "fd00:2::2", 6, None, Start::Auto);
    assert_eq!(only(&t), Disposition::Delivered);
}

#[test]
fn forwarding_is_decided_by_conf_all_only() {
    // all=0, every interface 1: not forwarded (measured).
    let mut k = routed6();
    k.sysctl("r", "net.ipv6.conf.all.forwarding", "0");
    let t = ping(&k, "fd00:1::2", "fd00:2::2");
    assert_eq!(only(&t), Disposition::ForwardingDisabled);
    let b = &t.branches[0];
    assert_eq!(b.cause.as_deref(), Some("ip-forward-disabled"));
    assert!(
        b.reason.contains("net.ipv6.conf.all.forwarding"),
        "{}",
        b.reason
    );
    assert!(b.reason.contains("does not forward"), "{}", b.reason);
    // all=1, both interfaces 0: forwarded (measured).
    let mut k = routed6();
    k.sysctl("r", "net.ipv6.conf.vc.forwarding", "0");
    k.sysctl("r", "net.ipv6.conf.vs.forwarding", "0");
    assert_eq!(
        only(&ping(&k, "fd00:1::2", "fd00:2::2")),
        Disposition::Delivered
    );
    // force_forwarding on both input interfaces forwards with all=0.
    let mut k = routed6();
    k.sysctl("r", "net.ipv6.conf.all.forwarding", "0");
    k.sysctl("r", "net.ipv6.conf.vc.force_forwarding", "1");
    let t = ping(&k, "fd00:1::2", "fd00:2::2");
    assert_eq!(only(&t), Disposition::ForwardingDisabled);
    assert_eq!(t.branches[0].ended_on, netray_datapath::Leg::Reply);
    k.sysctl("r", "net.ipv6.conf.vs.force_forwarding", "1");
    assert_eq!(
        only(&ping(&k, "fd00:1::2", "fd00:2::2")),
        Disposition::Delivered
    );
    // Not collected: the kernel default (0).
    let mut k = routed6();
    k.ns("r").sysctls.retain(|s, _| !s.starts_with("net.ipv6"));
    assert_eq!(
        only(&ping(&k, "fd00:1::2", "fd00:2::2")),
        Disposition::ForwardingDisabled
    );
}

#[test]
fn no_rp_filter_for_ipv6() {
    // Asymmetric return path with rp_filter=1 (IPv4) set: IPv6 is not filtered.
    let mut k = routed6();
    k.sysctl("r", "net.ipv4.conf.vc.rp_filter", "1");
    k.ns("r")
        .routes
        .retain(|r| r.dst.to_string() != "fd00:1::/64");
    k.route("r", "fd00:1::/64 via fd00:2::2 dev vs");
    k.route("r", "fd00:1::2/128 dev vc");
    assert_eq!(
        only(&ping(&k, "fd00:1::2", "fd00:2::2")),
        Disposition::Delivered
    );
}

#[test]
fn ipv6_martians() {
    let k = routed6();
    // Loopback source from outside.
    let t = run(&k, "::1", "fd00:2::2", 1, None, Start::Node("r".into()));
    assert_eq!(only(&t), Disposition::MartianSource);
    // Multicast source.
    let t = run(&k, "ff02::1", "fd00:2::2", 1, None, Start::Node("r".into()));
    assert_eq!(only(&t), Disposition::MartianSource);
    // A link-local source is not forwarded off-link.
    let mut k = routed6();
    k.addr("r:a", "eth0", "fe80::2/64");
    let t = run(&k, "fe80::2", "fd00:2::2", 1, None, Start::Auto);
    assert_eq!(only(&t), Disposition::MartianSource);
    assert!(
        t.branches[0].reason.contains("link-local"),
        "{}",
        t.branches[0].reason
    );
}

#[test]
fn ndp_answers_only_for_the_receiving_interface_or_a_proxy_entry() {
    // The client thinks b is on-link: the router does not answer NDP for an address that is
    // not on vc (unlike ARP's weak host model)…
    let mut k = routed6();
    k.route("r:a", "fd00:2::2/128 dev eth0");
    assert_eq!(
        only(&ping(&k, "fd00:1::2", "fd00:2::2")),
        Disposition::NeighborUnreachable
    );
    // … unless vc has a proxy entry, proxy_ndp and forwarding on.
    k.ns("r").neighbours.push(Neighbour {
        dev: "vc".into(),
        dst: "fd00:2::2".parse().unwrap(),
        lladdr: None,
        state: Vec::new(),
        flags: vec!["proxy".into()],
    });
    assert_eq!(
        only(&ping(&k, "fd00:1::2", "fd00:2::2")),
        Disposition::NeighborUnreachable
    );
    k.sysctl("r", "net.ipv6.conf.vc.proxy_ndp", "1");
    let t = ping(&k, "fd00:1::2", "fd00:2::2");
    assert_eq!(only(&t), Disposition::Delivered);
    assert!(neighbour_texts(&t).iter().any(|s| s.contains("proxy")));
    // The interface's own forwarding switch gates proxy NDP (measured).
    k.sysctl("r", "net.ipv6.conf.vc.forwarding", "0");
    assert_eq!(
        only(&ping(&k, "fd00:1::2", "fd00:2::2")),
        Disposition::NeighborUnreachable
    );
}

#[test]
fn link_local_next_hop_and_source_selection() {
    let mut k = routed6();
    k.addr("r", "vc", "fe80::1/64");
    k.addr("r:a", "eth0", "fe80::2/64");
    k.ns("r:a").routes.retain(|r| r.dst.prefix_len() != 0);
    k.route("r:a", "::/0 via fe80::1 dev eth0");
    // A second namespace elsewhere with the same link-local address changes nothing.
    k.addr("r:b", "eth0", "fe80::1/64");
    let t = ping(&k, "fd00:1::2", "fd00:2::2");
    assert_eq!(only(&t), Disposition::Delivered);
    // A host socket picks the global address, not the link-local one the gateway shares a
    // prefix with.
    let t = run(&k, "::", "fd00:2::2", 1, None, Start::Host("r".into()));
    assert_eq!(t.flow.packet.src.to_string(), "fd00:2::1");
}

#[test]
fn no_fragmentation_in_transit() {
    let mut k = routed6();
    k.ns("r")
        .links
        .iter_mut()
        .find(|l| l.name == "vs")
        .unwrap()
        .mtu = 1280;
    // UDP without DF: an IPv4 router would fragment; IPv6 sends Packet Too Big.
    let t = run(&k, "fd00:1::2", "fd00:2::2", 17, Some(1448), Start::Auto);
    assert_eq!(only(&t), Disposition::MtuExceeded);
    let b = &t.branches[0];
    assert_eq!(b.cause.as_deref(), Some("mtu-blackhole"));
    assert!(b.reason.contains("Packet Too Big"), "{}", b.reason);
    // Exactly the MTU passes.
    let t = run(&k, "fd00:1::2", "fd00:2::2", 1, Some(1280), Start::Auto);
    assert_eq!(only(&t), Disposition::Delivered);
}
