//! TCP data after the handshake (issue 10 item 6) on hand-built snapshots: full-size segments
//! sized from both ends' MTUs, silent drops that stall an established connection, and PMTU
//! discovery at a router. The kernel side of the same cases is `netray/tests/tcp_data_lab.rs`.

use netray_datapath::testkit::Kit;
use netray_datapath::{Disposition, Flow, Leg, Options, RulesetEngine, Start, Trace, World, trace};
use netray_snapshot::SocketProto;

fn tcp(kit: &Kit, size: Option<u32>) -> Trace {
    let b = kit.bundle();
    let w = World::new(&b);
    let e = RulesetEngine::new(&w);
    let f = Flow {
        src: "10.0.1.2".parse().unwrap(),
        dst: "10.0.2.2".parse().unwrap(),
        proto: 6,
        sport: 40000,
        dport: Some(80),
        size,
        start: Start::Auto,
    };
    let t = trace(&w, &e, &f, Options::default()).expect("trace");
    eprintln!("{}", netray_datapath::text::render(&t));
    t
}

/// client -- veth -- router r -- veth -- server, every link at `mtu` unless changed.
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

fn set_mtu(k: &mut Kit, at: &str, dev: &str, mtu: u32) {
    let ns = k.ns(at);
    let l = ns.links.iter_mut().find(|l| l.name == dev).expect("link");
    l.mtu = mtu;
}

#[test]
fn healthy_path_carries_full_size_segments_both_ways() {
    let t = tcp(&routed(), None);
    assert!(t.reachable);
    assert_eq!(t.tcp_data.len(), 1);
    let c = &t.tcp_data[0];
    assert_eq!(
        (c.client_mss, c.server_mss, c.segment_len),
        (1460, 1460, 1500)
    );
    assert!(c.request_ok && c.reply_ok && c.pmtu.is_empty());
    assert_eq!(c.endpoints, ["10.0.2.2:80"]);
    // An explicit size walks that packet only.
    assert!(tcp(&routed(), Some(60)).tcp_data.is_empty());
}

#[test]
fn the_smaller_end_sets_the_segment_size() {
    let mut k = routed();
    set_mtu(&mut k, "r:server", "eth0", 1400);
    set_mtu(&mut k, "r", "vs", 1400);
    let t = tcp(&k, None);
    assert!(t.reachable);
    let c = &t.tcp_data[0];
    assert_eq!(
        (c.client_mss, c.server_mss, c.segment_len),
        (1460, 1360, 1400)
    );
}

/// The router's side of the server's veth is smaller than the server's own MTU: responses
/// are dropped silently by the veth peer; requests are routed out of that same smaller
/// device, so the router sends frag-needed back the way the SYN-ACK went (PMTU discovery).
#[test]
fn veth_peer_mismatch_stalls_responses_after_the_handshake() {
    let mut k = routed();
    set_mtu(&mut k, "r", "vs", 1400);
    let t = tcp(&k, None);
    assert!(!t.reachable);
    assert_eq!(t.branches.len(), 1);
    let b = &t.branches[0];
    assert_eq!(b.disposition, Disposition::MtuExceeded);
    let seg = b.data_segment.expect("a data segment branch");
    assert_eq!((seg.direction, seg.len), (Leg::Reply, 1500));
    assert!(b.reason.contains("MTU 1400 of vs"), "{}", b.reason);
    let c = &t.tcp_data[0];
    assert!(c.request_ok, "requests pass after PMTU discovery: {c:?}");
    assert!(!c.reply_ok);
    assert!(c.pmtu[0].contains("1400"), "{:?}", c.pmtu);
    assert!(
        netray_datapath::text::render(&t).contains("established, then stalls"),
        "the text says so"
    );
}

/// Replies leave the server through another interface of the same router: the router
/// still has the way back to the client, so its frag-needed returns and the request
/// segments shrink.
#[test]
fn asymmetric_through_the_same_router_still_discovers_the_path_mtu() {
    let mut k = routed();
    k.veth("r:server", "eth1", "r", "vs2");
    k.addr("r:server", "eth1", "10.0.3.2/24")
        .addr("r", "vs2", "10.0.3.1/24");
    k.route("r:server", "10.0.1.0/24 via 10.0.3.1 dev eth1");
    set_mtu(&mut k, "r", "vs", 1400);
    set_mtu(&mut k, "r:server", "eth0", 1400);
    let t = tcp(&k, None);
    assert!(t.reachable);
    assert!(t.tcp_data[0].pmtu[0].contains("1400"));
}

/// The error of a router the handshake did not pass the other way cannot be assumed to
/// return: the segment's fate is unknown, not a stall and not a success.
#[test]
fn frag_needed_without_the_way_back_is_uncertain() {
    let mut k = routed();
    // Replies go back through a second router, r2, straight to the client's eth1.
    k.netns("r", "r2");
    k.veth("r:server", "eth1", "r:r2", "s");
    k.veth("r:client", "eth1", "r:r2", "c");
    k.addr("r:server", "eth1", "10.0.3.2/24")
        .addr("r:r2", "s", "10.0.3.1/24")
        .addr("r:r2", "c", "10.0.4.1/24")
        .addr("r:client", "eth1", "10.0.4.2/24");
    k.route("r:server", "10.0.1.0/24 via 10.0.3.1 dev eth1")
        .route("r:r2", "10.0.1.0/24 via 10.0.4.2 dev c");
    k.sysctl("r:r2", "net.ipv4.ip_forward", "1");
    set_mtu(&mut k, "r", "vs", 1400);
    set_mtu(&mut k, "r:server", "eth0", 1400);
    let t = tcp(&k, None);
    let b = &t.branches[0];
    assert_eq!(b.disposition, Disposition::Unknown, "{}", b.reason);
    assert_eq!(b.cause.as_deref(), Some("pmtu-discovery"));
    assert_eq!(b.data_segment.map(|d| d.direction), Some(Leg::Forward));
    assert!(!t.reachable);
}
