//! IPVS virtual services in the walk (kube-proxy IPVS mode), on hand-built snapshots.
//!
//! Node `n`: eth0 192.168.0.10/24 (external clients), cni0 10.244.0.1/24 with pods p1..p3
//! (10.244.0.11..13, listening on 8080), `kube-ipvs0` (dummy, down) holding the service
//! addresses, kube-proxy IPVS-mode iptables and ipsets, br_netfilter on.

use netray_datapath::testkit::Kit;
use netray_datapath::{
    Branch, Disposition, Flow, Leg, Options, RulesetEngine, Start, Step, Trace, World, trace,
};
use netray_snapshot::{LinkKind, SocketProto};

const VIP: &str = "10.96.0.10";
const LB: &str = "203.0.113.50";

const IPTABLES: &str = "*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:KUBE-MARK-MASQ - [0:0]
:KUBE-NODE-PORT - [0:0]
:KUBE-LOAD-BALANCER - [0:0]
-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING
-A KUBE-LOAD-BALANCER -j KUBE-MARK-MASQ
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000
-A KUBE-POSTROUTING -m comment --comment \"Kubernetes endpoints dst ip:port, source ip for solving hairpin purpose\" -m set --match-set KUBE-LOOP-BACK dst,dst,src -j MASQUERADE
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE
-A KUBE-SERVICES ! -s 10.244.0.0/16 -m comment --comment \"Kubernetes service cluster ip + port for masquerade purpose\" -m set --match-set KUBE-CLUSTER-IP dst,dst -j KUBE-MARK-MASQ
-A KUBE-SERVICES -m comment --comment \"Kubernetes service lb portal\" -m set --match-set KUBE-LOAD-BALANCER dst,dst -j KUBE-LOAD-BALANCER
-A KUBE-SERVICES -m addrtype --dst-type LOCAL -j KUBE-NODE-PORT
-A KUBE-SERVICES -m set --match-set KUBE-CLUSTER-IP dst,dst -j ACCEPT
-A KUBE-SERVICES -m set --match-set KUBE-LOAD-BALANCER dst,dst -j ACCEPT
COMMIT
*mangle
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
-A PREROUTING -d 10.96.0.30/32 -p tcp --dport 443 -j MARK --set-mark 7
COMMIT
*filter
:INPUT ACCEPT [0:0]
:FORWARD DROP [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-IPVS-FILTER - [0:0]
-A INPUT -m comment --comment \"kubernetes ipvs access filter\" -j KUBE-IPVS-FILTER
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD
-A KUBE-FORWARD -m mark --mark 0x4000/0x4000 -j ACCEPT
-A KUBE-FORWARD -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A KUBE-IPVS-FILTER -m set --match-set KUBE-LOAD-BALANCER dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m set --match-set KUBE-CLUSTER-IP dst,dst -j RETURN
-A KUBE-IPVS-FILTER -m conntrack --ctstate NEW -m set --match-set KUBE-IPVS-IPS dst -j REJECT --reject-with icmp-port-unreachable
COMMIT
";

const IPSET: &str = "create KUBE-CLUSTER-IP hash:ip,port family inet hashsize 1024 maxelem 65536
add KUBE-CLUSTER-IP 10.96.0.10,tcp:80
add KUBE-CLUSTER-IP 10.96.0.20,tcp:80
add KUBE-CLUSTER-IP 10.96.0.40,tcp:80
add KUBE-CLUSTER-IP 10.96.0.50,tcp:80
create KUBE-LOAD-BALANCER hash:ip,port family inet hashsize 1024 maxelem 65536
add KUBE-LOAD-BALANCER 203.0.113.50,tcp:80
create KUBE-LOOP-BACK hash:ip,port,ip family inet hashsize 1024 maxelem 65536
add KUBE-LOOP-BACK 10.244.0.11,tcp:8080,10.244.0.11
add KUBE-LOOP-BACK 10.244.0.12,tcp:8080,10.244.0.12
add KUBE-LOOP-BACK 10.244.0.13,tcp:8080,10.244.0.13
create KUBE-IPVS-IPS hash:ip family inet hashsize 1024 maxelem 65536
add KUBE-IPVS-IPS 10.96.0.10
add KUBE-IPVS-IPS 10.96.0.20
add KUBE-IPVS-IPS 10.96.0.40
add KUBE-IPVS-IPS 10.96.0.50
add KUBE-IPVS-IPS 203.0.113.50
";

/// ClusterIP 10.96.0.10:80 over three pods; 10.96.0.20:80 wrr 1/3/0; fwmark 7 for
/// 10.96.0.30:443; 10.96.0.40:80 direct routing; 10.96.0.50:80 without real servers; the LB.
const IPVS: &str = "-A -t 10.96.0.10:80 -s rr
-a -t 10.96.0.10:80 -r 10.244.0.11:8080 -m -w 1
-a -t 10.96.0.10:80 -r 10.244.0.12:8080 -m -w 1
-a -t 10.96.0.10:80 -r 10.244.0.13:8080 -m -w 1
-A -t 10.96.0.20:80 -s wrr
-a -t 10.96.0.20:80 -r 10.244.0.11:8080 -m -w 1
-a -t 10.96.0.20:80 -r 10.244.0.12:8080 -m -w 3
-a -t 10.96.0.20:80 -r 10.244.0.13:8080 -m -w 0
-A -f 7 -s rr
-a -f 7 -r 10.244.0.12:0 -m -w 1
-A -t 10.96.0.40:80 -s rr
-a -t 10.96.0.40:80 -r 10.244.0.13:80 -g -w 1
-A -t 10.96.0.50:80 -s rr
-A -t 203.0.113.50:80 -s rr -p 10800
-a -t 203.0.113.50:80 -r 10.244.0.11:8080 -m -w 1
-a -t 203.0.113.50:80 -r 10.244.0.12:8080 -m -w 1
";

fn node(ipvs: &str) -> Kit {
    let mut k = Kit::new();
    k.node("n");
    k.link("n", "eth0", LinkKind::Device, 1500);
    k.addr("n", "eth0", "192.168.0.10/24")
        .route("n", "default via 192.168.0.1 dev eth0");
    k.neigh(
        "n",
        "192.168.0.1 dev eth0 lladdr 02:aa:00:00:00:01 REACHABLE",
    );
    k.bridge("n", "cni0");
    k.addr("n", "cni0", "10.244.0.1/24");
    k.link("n", "kube-ipvs0", LinkKind::Dummy, 1500);
    k.down("n", "kube-ipvs0");
    for a in [
        VIP,
        "10.96.0.20",
        "10.96.0.30",
        "10.96.0.40",
        "10.96.0.50",
        LB,
    ] {
        k.addr("n", "kube-ipvs0", &format!("{a}/32"));
    }
    k.sysctl("n", "net.ipv4.ip_forward", "1").sysctl(
        "n",
        "net.bridge.bridge-nf-call-iptables",
        "1",
    );
    for i in 1..=3 {
        let p = format!("n:p{i}");
        k.netns("n", &format!("p{i}"));
        k.veth(&p, "eth0", "n", &format!("veth{i}")).enslave(
            "n",
            &format!("veth{i}"),
            "cni0",
            true,
        );
        k.addr(&p, "eth0", &format!("10.244.0.1{i}/24"))
            .route(&p, "default via 10.244.0.1 dev eth0")
            .listen(&p, SocketProto::Tcp, "0.0.0.0", 8080);
    }
    k.listen("n:p2", SocketProto::Tcp, "0.0.0.0", 443);
    k.iptables("n", IPTABLES).ipset("n", IPSET).ipvs("n", ipvs);
    k
}

fn run(k: &Kit, src: &str, dst: &str, dport: u16, start: Start) -> Trace {
    let b = k.bundle();
    let w = World::new(&b);
    let e = RulesetEngine::new(&w);
    assert!(e.diagnostics().is_empty(), "{:?}", e.diagnostics());
    let f = Flow {
        src: src.parse().unwrap(),
        dst: dst.parse().unwrap(),
        proto: 6,
        sport: 40000,
        dport: Some(dport),
        size: None,
        start,
    };
    let t = trace(&w, &e, &f, Options::default()).expect("trace");
    eprintln!("{}", netray_datapath::text::render(&t));
    t
}

fn ext(k: &Kit, src: &str, dst: &str, dport: u16) -> Trace {
    run(k, src, dst, dport, Start::Node("n".into()))
}

fn by_endpoint<'t>(t: &'t Trace, ep: &str) -> &'t Branch {
    t.branches
        .iter()
        .find(|b| b.endpoint.as_deref() == Some(ep))
        .unwrap_or_else(|| panic!("no branch to {ep}"))
}

fn nat_kinds(b: &Branch, leg: Leg) -> Vec<String> {
    b.hops
        .iter()
        .filter(|h| h.leg == leg)
        .filter_map(|h| match &h.step {
            Step::Nat { kind, .. } => Some(kind.clone()),
            _ => None,
        })
        .collect()
}

fn has_ipvs_hop(b: &Branch) -> bool {
    b.hops.iter().any(|h| matches!(h.step, Step::Ipvs { .. }))
}

/// The last packet of the reply leg (what the client receives).
fn reply_at_client(b: &Branch) -> String {
    b.hops
        .iter()
        .rev()
        .find(|h| h.leg == Leg::Reply)
        .map(|h| h.packet.to_string())
        .unwrap_or_default()
}

#[test]
fn masquerade_service_branches_per_real_server_with_dnat_and_reply_de_nat() {
    let k = node(IPVS);
    let t = ext(&k, "192.168.0.99", VIP, 80);
    assert_eq!(t.branches.len(), 3, "one branch per real server");
    assert!(t.reachable);
    for i in 1..=3 {
        let b = by_endpoint(&t, &format!("10.244.0.1{i}:8080"));
        assert_eq!(b.disposition, Disposition::Delivered, "{}", b.reason);
        assert!((b.probability - 1.0 / 3.0).abs() < 1e-9);
        assert!(has_ipvs_hop(b));
        let fwd = nat_kinds(b, Leg::Forward);
        // IPVS DNAT at LOCAL_IN, then kube-proxy's KUBE-POSTROUTING masquerade (mark 0x4000
        // set by KUBE-MARK-MASQ through the KUBE-CLUSTER-IP ipset).
        assert!(
            fwd.iter()
                .any(|k| k.starts_with("ipvs dnat (masquerading (-m)) in INPUT")),
            "{fwd:?}"
        );
        assert!(fwd.iter().any(|k| k.starts_with("masquerade")), "{fwd:?}");
        // The reply: de-SNAT by conntrack, then IPVS's own de-DNAT (ip_vs_out) in FORWARD.
        let rep = nat_kinds(b, Leg::Reply);
        assert!(rep.iter().any(|k| k.starts_with("de-snat")), "{rep:?}");
        assert!(
            rep.iter()
                .any(|k| k.starts_with("ipvs de-dnat in FORWARD (ip_vs_out")),
            "{rep:?}"
        );
        assert!(
            reply_at_client(b).starts_with("10.96.0.10:80 > 192.168.0.99:40000 tcp"),
            "{}",
            reply_at_client(b)
        );
    }
    // The JSON carries the IPVS step.
    let j = serde_json::to_string(&t).unwrap();
    assert!(j.contains("\"type\":\"ipvs\""));
}

#[test]
fn weighted_shares_and_weight_zero_excluded() {
    let k = node(IPVS);
    let t = ext(&k, "192.168.0.99", "10.96.0.20", 80);
    assert_eq!(t.branches.len(), 2, "the weight-0 server is never chosen");
    assert!((by_endpoint(&t, "10.244.0.11:8080").probability - 0.25).abs() < 1e-9);
    assert!((by_endpoint(&t, "10.244.0.12:8080").probability - 0.75).abs() < 1e-9);
    assert!(
        t.branches
            .iter()
            .all(|b| b.endpoint.as_deref() != Some("10.244.0.13:8080"))
    );
    assert!(t.reachable);
}

#[test]
fn pod_to_service_on_the_same_bridge_needs_ip_vs_out_in_bridged_forward() {
    let mut k = node(IPVS);
    let t = run(&k, "10.244.0.11", VIP, 80, Start::Auto);
    assert_eq!(t.branches.len(), 3);
    assert!(t.reachable, "every branch reaches its pod and comes back");
    // To itself: the KUBE-LOOP-BACK hairpin masquerade.
    let own = by_endpoint(&t, "10.244.0.11:8080");
    assert!(
        nat_kinds(own, Leg::Forward)
            .iter()
            .any(|k| k.starts_with("masquerade"))
    );
    // To a neighbour pod: the reply is bridged pod to pod, de-NATed by ip_vs_out in the
    // br_netfilter FORWARD hook.
    let other = by_endpoint(&t, "10.244.0.12:8080");
    assert!(
        other.hops.iter().any(|h| h.leg == Leg::Reply
            && matches!(&h.step, Step::Nat { kind, .. } if kind.starts_with("ipvs de-dnat in FORWARD"))),
    );
    assert!(reply_at_client(other).starts_with("10.96.0.10:80 > 10.244.0.11:40000"));
    // Without br_netfilter the reply goes from pod to pod directly: wrong source.
    k.sysctl("n", "net.bridge.bridge-nf-call-iptables", "0");
    let t = run(&k, "10.244.0.11", VIP, 80, Start::Auto);
    let other = by_endpoint(&t, "10.244.0.12:8080");
    assert_eq!(
        other.disposition,
        Disposition::ReplyMismatch,
        "{}",
        other.reason
    );
}

#[test]
fn node_local_client_is_scheduled_at_local_out() {
    let k = node(IPVS);
    let t = run(&k, "192.168.0.10", VIP, 80, Start::Auto);
    assert_eq!(t.branches.len(), 3);
    assert!(t.reachable);
    let b = by_endpoint(&t, "10.244.0.13:8080");
    assert!(
        b.hops
            .iter()
            .any(|h| matches!(&h.step, Step::Ipvs { hook, .. } if hook == "OUTPUT"))
    );
    assert!(
        nat_kinds(b, Leg::Reply)
            .iter()
            .any(|k| k.starts_with("ipvs de-dnat in INPUT")),
        "{:?}",
        nat_kinds(b, Leg::Reply)
    );
}

#[test]
fn fwmark_service_keeps_the_port_with_real_server_port_zero() {
    let k = node(IPVS);
    let t = ext(&k, "192.168.0.99", "10.96.0.30", 443);
    assert_eq!(t.branches.len(), 1);
    let b = &t.branches[0];
    assert_eq!(b.disposition, Disposition::Delivered, "{}", b.reason);
    assert_eq!(b.endpoint.as_deref(), Some("10.244.0.12:443"));
    assert!(
        b.hops.iter().any(
            |h| matches!(&h.step, Step::Ipvs { service, .. } if service.starts_with("-A -f 7"))
        )
    );
    assert!(reply_at_client(b).starts_with("10.96.0.30:443 > 192.168.0.99:40000"));
    // The fwmark is compared with the whole skb mark: with kube-proxy's 0x4000 masquerade
    // bit set as well, the service does not match and the host's own stack answers.
    let mut k = node(IPVS);
    k.ns("n").firewall.ipset = Some(format!("{IPSET}add KUBE-CLUSTER-IP 10.96.0.30,tcp:443\n"));
    let t = ext(&k, "192.168.0.99", "10.96.0.30", 443);
    assert_eq!(t.branches.len(), 1);
    assert!(!has_ipvs_hop(&t.branches[0]));
    assert_eq!(t.branches[0].cause.as_deref(), Some("port-not-listening"));
}

#[test]
fn direct_routing_sends_the_unchanged_packet_to_the_real_server_mac() {
    let mut k = node(IPVS);
    // Without the VIP the pod would have to forward it: it does not.
    let t = ext(&k, "192.168.0.99", "10.96.0.40", 80);
    assert_eq!(t.branches.len(), 1);
    let b = &t.branches[0];
    assert!(has_ipvs_hop(b));
    assert!(
        nat_kinds(b, Leg::Forward)
            .iter()
            .all(|k| !k.contains("ipvs"))
    );
    assert!(b.hops.iter().any(|h| h.netns == "p3"
        && matches!(h.step, Step::Receive)
        && h.packet.dst.to_string() == "10.96.0.40"));
    assert_eq!(
        b.disposition,
        Disposition::ForwardingDisabled,
        "{}",
        b.reason
    );
    // The classic DR set-up: the VIP on the real server's loopback. It is delivered there;
    // its direct reply comes back through the node, for which the VIP is local: martian.
    k.addr("n:p3", "lo", "10.96.0.40/32")
        .listen("n:p3", SocketProto::Tcp, "0.0.0.0", 80);
    let t = ext(&k, "192.168.0.99", "10.96.0.40", 80);
    let b = &t.branches[0];
    assert!(b.hops.iter().any(|h| h.netns == "p3"
        && h.leg == Leg::Forward
        && matches!(h.step, Step::Deliver { .. })));
    assert_eq!(b.disposition, Disposition::MartianSource, "{}", b.reason);
    assert_eq!(b.ended_on, Leg::Reply);
}

#[test]
fn tunnel_forwarding_is_unknown_naming_the_service() {
    let k = node("-A -t 10.96.0.10:80 -s rr\n-a -t 10.96.0.10:80 -r 10.244.0.11:8080 -i -w 1\n");
    let t = ext(&k, "192.168.0.99", VIP, 80);
    assert_eq!(t.branches.len(), 1);
    assert_eq!(t.branches[0].disposition, Disposition::Unknown);
    assert!(t.branches[0].reason.contains("-A -t 10.96.0.10:80 -s rr"));
    assert!(t.branches[0].reason.contains("IPIP"));
}

#[test]
fn service_without_real_servers_and_firewall_first() {
    let k = node(IPVS);
    // No real server: ip_vs_leave answers ICMP port unreachable.
    let t = ext(&k, "192.168.0.99", "10.96.0.50", 80);
    assert_eq!(t.branches.len(), 1);
    assert_eq!(t.branches[0].disposition, Disposition::Rejected);
    assert_eq!(t.branches[0].cause.as_deref(), Some("ipvs-no-destination"));
    // A VIP port that is no service: kube-proxy's KUBE-IPVS-FILTER rejects it in filter INPUT,
    // before IPVS.
    let t = ext(&k, "192.168.0.99", VIP, 81);
    assert_eq!(t.branches.len(), 1);
    assert_eq!(t.branches[0].disposition, Disposition::Rejected);
    assert_eq!(t.branches[0].cause.as_deref(), Some("iptables-reject-rule"));
    assert!(!has_ipvs_hop(&t.branches[0]));
}

#[test]
fn malformed_lines_are_diagnosed_and_unknown() {
    let dump =
        format!("{IPVS}-a -t 10.96.0.20:80 -r 10.244.0.14:8080 -m -w lots\n-X what is this\n");
    let k = node(&dump);
    let b = k.bundle();
    let w = World::new(&b);
    let d = w.ipvs_diagnostics();
    assert_eq!(d.len(), 2, "{d:?}");
    assert!(
        d[0].1.contains("line 17") && d[0].1.contains("-w lots"),
        "{d:?}"
    );
    assert!(d[1].1.contains("line 18") && d[1].1.contains("-X what is this"));
    // The service the bad line names is unknown...
    let t = ext(&k, "192.168.0.99", "10.96.0.20", 80);
    assert_eq!(t.branches.len(), 1);
    assert_eq!(t.branches[0].disposition, Disposition::Unknown);
    assert_eq!(t.branches[0].cause.as_deref(), Some("ipvs-unparsed"));
    assert!(t.branches[0].reason.contains("-w lots"));
    // ...a service the bad lines do not touch still works...
    let t = ext(&k, "192.168.0.99", VIP, 80);
    assert!(t.reachable);
    // ...and a packet that matches no service could be for the unreadable line.
    let t = ext(&k, "192.168.0.99", "192.168.0.10", 22);
    assert_eq!(t.branches[0].disposition, Disposition::Unknown);
    assert!(t.branches[0].reason.contains("-X what is this"));
}

#[test]
fn conntrack_off_means_no_masquerade_after_ipvs() {
    let mut k = node(IPVS);
    k.sysctl("n", "net.ipv4.vs.conntrack", "0");
    let t = ext(&k, "192.168.0.99", VIP, 80);
    let b = by_endpoint(&t, "10.244.0.11:8080");
    assert!(
        nat_kinds(b, Leg::Forward)
            .iter()
            .all(|k| !k.starts_with("masquerade"))
    );
    assert!(
        b.hops
            .iter()
            .any(|h| matches!(&h.step, Step::Check { check, .. } if check == "ipvs-conntrack"))
    );
}

#[test]
fn seed_004_lb_probe_from_the_lb_ip_is_a_martian_before_ipvs() {
    let k = node(IPVS);
    // A client of the LoadBalancer is scheduled by IPVS.
    let t = ext(&k, "198.51.100.7", LB, 80);
    assert_eq!(t.branches.len(), 2);
    assert!(t.reachable);
    assert!(t.branches.iter().all(has_ipvs_hop));
    assert!(t.branches.iter().all(|b| b.hops.iter().any(|h| matches!(
        &h.step,
        Step::Ipvs { detail, .. } if detail.contains("persistent 10800 s")
    ))));
    // The LB's health probe carries the LB IP as source: the node has it on kube-ipvs0, so
    // it is a martian on eth0, dropped before INPUT and IPVS.
    for (dst, port) in [(LB, 80), ("192.168.0.10", 31000)] {
        let t = ext(&k, LB, dst, port);
        assert_eq!(t.branches.len(), 1);
        let b = &t.branches[0];
        assert_eq!(b.disposition, Disposition::MartianSource, "{}", b.reason);
        assert!(b.reason.contains("203.0.113.50"));
        assert!(!has_ipvs_hop(b));
    }
}
