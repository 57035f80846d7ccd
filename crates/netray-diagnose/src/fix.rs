//! Fixes derived from the kernel objects that decided a branch: each one a command to run as
//! root in the namespace holding the object, in the vocabulary `netray-patch` applies to a
//! snapshot (so diagnose can prove it by walking again, and `--what-if` speaks the same
//! language).

use std::net::IpAddr;

use netray_datapath::result::{Branch, Step};
use netray_datapath::{KernelObject, Place};
use netray_patch::FixCommand;
use netray_snapshot::{LinkKind, RouteType};

use crate::diagnose::Context;

/// The fix of a cause with `code` decided by `objects`: a sentence for people and the
/// commands (empty when the fix is not a node- or pod-level change).
pub(crate) fn fix_for(
    code: &str,
    objects: &[KernelObject],
    b: &Branch,
    ctx: &Context,
) -> (String, Vec<FixCommand>) {
    let cmds = commands(code, objects, b, ctx);
    let why = advice(code);
    let text = if cmds.is_empty() {
        why.to_string()
    } else {
        let runs: Vec<String> = cmds
            .iter()
            .map(|c| format!("on {}: {}", where_(c), c.run))
            .collect();
        format!("{} — {why}", runs.join("; "))
    };
    (text, cmds)
}

/// `node1 (host)` or `node0 (pod default/web-0)`.
pub(crate) fn where_(c: &FixCommand) -> String {
    match (&c.pod, c.netns.as_str()) {
        (Some(p), _) => format!("{} (pod {p}, netns {})", c.node, c.netns),
        (None, "host") => format!("{} (host)", c.node),
        (None, ns) => format!("{} (netns {ns})", c.node),
    }
}

fn advice(code: &str) -> &'static str {
    match code {
        "forward-policy-drop" => {
            "accept the pod network in FORWARD (as flannel does), or set the policy to ACCEPT; with Docker put the rules in DOCKER-USER; make it persistent"
        }
        "chain-policy-drop" => {
            "accept this traffic before the chain policy applies; make it persistent"
        }
        "iptables-drop-rule" | "iptables-reject-rule" | "nft-drop-rule" => {
            "remove or narrow the rule (and whatever generates it, or it comes back)"
        }
        "network-policy-drop" => {
            "the rule is generated from a NetworkPolicy: allow this traffic in the policy (deleting the rule lasts only until the controller resyncs)"
        }
        "no-endpoints" => {
            "make the Service's pods Ready or fix its selector (kubectl get endpointslices)"
        }
        "port-not-listening" => "start the server or fix the Service's targetPort",
        "no-route" => {
            "restore the route (normally the CNI agent installs it: check it on this node)"
        }
        "pod-no-default-route" => {
            "restore the pod's default route (recreate the pod, or check the CNI plugin)"
        }
        "blackhole-route" | "blackhole-rule" => "delete the blackhole/unreachable route or rule",
        "neighbor-unreachable" => "check that the next hop is up on that segment (ip neigh show)",
        "martian-source" => {
            "keep the address out of the local table of a host that receives packets from it (or set accept_local=1 where that is intended)"
        }
        "rp-filter-drop" => {
            "use loose reverse-path filtering (rp_filter=2), or make routing symmetric"
        }
        "ip-forward-disabled" => "enable forwarding; make it persistent (/etc/sysctl.d)",
        "stale-vxlan-neighbor" | "stale-vxlan-fdb" | "missing-vxlan-fdb" => {
            "point the VTEP's neighbour and FDB entries at the MAC its device has now (restarting flannel on this node rewrites them)"
        }
        "interface-down" => "bring the interface up (and find out why it went down)",
        "bridge-nf-snat-conflict" | "nat-reply-mismatch" => {
            "keep bridged replies out of iptables (bridge-nf-call-iptables=0), or route the reply back through the host that NATed the request"
        }
        "stale-conntrack-entry" => {
            "delete the stale entry (kube-proxy should have when the endpoint went away)"
        }
        "mtu-blackhole" => {
            "lower the sending MTU below the path MTU (overlay MTU = underlay MTU − 50)"
        }
        "hairpin-off" => "turn hairpin mode on for the bridge port (the CNI's hairpinMode)",
        "bridge-port-blocked" => {
            "put the bridge port back in the forwarding state (and find out what blocked it: STP, a manual state change)"
        }
        "routing-loop" => "fix the routes that send the packet back where it came from",
        "ipv6-disabled" => {
            "enable IPv6 on the interface (sysctl -w net.ipv6.conf.IFACE.disable_ipv6=0), then restore its IPv6 addresses"
        }
        "ipv6-mtu-below-minimum" => {
            "raise the interface's MTU to at least 1280 (for an overlay: the underlay's or the CNI's MTU), then restore its IPv6 addresses (they do not come back by themselves)"
        }
        "walk-step-limit" => {
            "see the hops: the packet keeps being rewritten or re-encapsulated; look for NAT or tunnel rules that apply to their own output"
        }
        "node-snapshot-missing" => {
            "collect the missing node again (`netray collect --kube --nodes NODE -o DIR`, or `netray collect` on it and `netray bundle add DIR NODE.json --replace`) and ask again"
        }
        _ => "see the evidence",
    }
}

fn cmd(at: &Place, b: &Branch, run: String) -> FixCommand {
    FixCommand {
        node: at.node.clone(),
        netns: at.netns.clone(),
        pod: b
            .hops
            .iter()
            .find(|h| h.node == at.node && h.netns == at.netns)
            .and_then(|h| h.pod.clone()),
        run,
    }
}

/// `iptables` or `ip6tables` for a rule family.
fn ipt_tool(family: &str) -> &'static str {
    if family == "ip6" {
        "ip6tables"
    } else {
        "iptables"
    }
}

fn commands(code: &str, objects: &[KernelObject], b: &Branch, ctx: &Context) -> Vec<FixCommand> {
    let mut out = Vec::new();
    match code {
        "forward-policy-drop" | "chain-policy-drop" => {
            for o in objects {
                let KernelObject::Rule {
                    at,
                    family,
                    table,
                    chain,
                    index: None,
                    ..
                } = o
                else {
                    continue;
                };
                let tool = ipt_tool(family);
                // The pod network only of the rule's own family (a dual-stack cluster's
                // IPv4 network means nothing to ip6tables): else the flow's own tuple.
                match ctx
                    .pod_network
                    .filter(|n| chain == "FORWARD" && n.addr().is_ipv6() == (family == "ip6"))
                {
                    Some(net) => {
                        // As flannel does: the pod network in both directions.
                        out.push(cmd(
                            at,
                            b,
                            format!("{tool} -t {table} -I {chain} 1 -s {net} -j ACCEPT"),
                        ));
                        out.push(cmd(
                            at,
                            b,
                            format!("{tool} -t {table} -I {chain} 1 -d {net} -j ACCEPT"),
                        ));
                    }
                    None => {
                        if let Some(spec) = flow_spec(b, at) {
                            out.push(cmd(
                                at,
                                b,
                                format!("{tool} -t {table} -I {chain} 1 {spec} -j ACCEPT"),
                            ));
                        }
                    }
                }
            }
        }
        "iptables-drop-rule" | "iptables-reject-rule" | "network-policy-drop" | "nft-drop-rule" => {
            for o in objects {
                let KernelObject::Rule {
                    at,
                    family,
                    table,
                    chain,
                    index: Some(_),
                    text,
                } = o
                else {
                    continue;
                };
                if let Some(spec) = text.strip_prefix("-A ") {
                    out.push(cmd(
                        at,
                        b,
                        format!("{} -t {table} -D {spec}", ipt_tool(family)),
                    ));
                } else if let Some(h) = nft_handle(b, at, table, chain) {
                    out.push(cmd(
                        at,
                        b,
                        format!("nft delete rule {family} {table} {chain} handle {h}"),
                    ));
                }
            }
        }
        "ip-forward-disabled" => {
            // Writing net.ipv4.ip_forward sets every interface's switch, as the kernel does:
            // when it is 0, that one command is the fix; otherwise the interface's own.
            let global_off = objects.iter().find(|o| {
                matches!(o, KernelObject::Sysctl { key, value, .. }
                    if key == "net.ipv4.ip_forward" && value.as_deref() != Some("1"))
            });
            for o in global_off.into_iter().chain(objects.iter()) {
                if let KernelObject::Sysctl { at, key, .. } = o {
                    out.push(cmd(at, b, format!("sysctl -w {key}=1")));
                }
                if global_off.is_some() {
                    break;
                }
            }
        }
        "rp-filter-drop" => {
            for o in objects {
                if let KernelObject::Sysctl { at, key, .. } = o
                    && key.ends_with(".rp_filter")
                {
                    out.push(cmd(at, b, format!("sysctl -w {key}=2")));
                }
            }
        }
        "bridge-nf-snat-conflict" => {
            // Take the conflicting bridge out of iptables only: every other bridge of the
            // namespace keeps br_netfilter through its own switch (pods on one bridge calling
            // a Service need it), then the namespace-wide switch goes off.
            for o in objects {
                if let KernelObject::Sysctl { at, key, .. } = o
                    && key.contains("bridge-nf-call")
                {
                    let crossed: Vec<&str> = b
                        .hops
                        .iter()
                        .filter(|h| h.node == at.node && h.netns == at.netns)
                        .filter_map(|h| match &h.step {
                            Step::Bridge { bridge, .. } => Some(bridge.as_str()),
                            _ => None,
                        })
                        .collect();
                    if let Some(v) = ns_at(ctx, at) {
                        for l in &v.snap.links {
                            let in_use = v
                                .snap
                                .links
                                .iter()
                                .any(|p| p.master.as_deref() == Some(l.name.as_str()));
                            if matches!(l.kind, LinkKind::Bridge { .. })
                                && in_use
                                && !crossed.contains(&l.name.as_str())
                            {
                                out.push(cmd(
                                    at,
                                    b,
                                    format!(
                                        "ip link set {} type bridge nf_call_iptables 1",
                                        l.name
                                    ),
                                ));
                            }
                        }
                    }
                    out.push(cmd(at, b, format!("sysctl -w {key}=0")));
                }
            }
        }
        "martian-source" => {
            // Only an address that should not be in the local table: on a device that is
            // down (kube-ipvs0-style holders of Service IPs), never a node's working address.
            for o in objects {
                if let KernelObject::Address { at, dev, addr } = o
                    && address_is_parked(ctx, at, dev)
                {
                    out.push(cmd(at, b, format!("ip addr del {addr} dev {dev}")));
                }
            }
        }
        "stale-vxlan-neighbor" | "stale-vxlan-fdb" | "missing-vxlan-fdb" => {
            out.extend(vtep_fix(objects, b, ctx));
        }
        "interface-down" => {
            for o in objects {
                if let KernelObject::Link { at, name, .. } = o {
                    out.push(cmd(at, b, format!("ip link set {name} up")));
                }
            }
        }
        "blackhole-route" => {
            for o in objects {
                if let KernelObject::Route { at, route, .. } = o {
                    out.push(cmd(at, b, format!("ip route del {route}")));
                }
            }
        }
        "blackhole-rule" => {
            for o in objects {
                if let KernelObject::RouteLookup {
                    at,
                    dst,
                    rule_priority: Some(prio),
                    ..
                } = o
                {
                    let ip = if dst.is_ipv6() { "ip -6" } else { "ip" };
                    out.push(cmd(at, b, format!("{ip} rule del priority {prio}")));
                }
            }
        }
        "no-route" => {
            for o in objects {
                if let KernelObject::RouteLookup { at, dst, .. } = o
                    && let Some(route) =
                        peer_route(ctx, at, *dst).or_else(|| route_to_owner(ctx, at, *dst))
                {
                    out.push(cmd(at, b, format!("ip route add {route}")));
                }
            }
        }
        "pod-no-default-route" => {
            for o in objects {
                if let KernelObject::RouteLookup { at, .. } = o
                    && let Some((gw, dev)) = pod_gateway(ctx, at)
                {
                    out.push(cmd(
                        at,
                        b,
                        format!("ip route add default via {gw} dev {dev}"),
                    ));
                }
            }
        }
        "mtu-blackhole" => {
            // Dropped on receive by a device whose MTU is below the sender's (a veth peer, a
            // bridge port): give it the sender's MTU. A packet too big for its own egress
            // (DF) needs the sender's MTU lowered instead: no command.
            let links: Vec<(&Place, &String, u32)> = objects
                .iter()
                .filter_map(|o| match o {
                    KernelObject::Link {
                        at,
                        name,
                        mtu: Some(m),
                        ..
                    } => Some((at, name, *m)),
                    _ => None,
                })
                .collect();
            if let (Some(small), Some(big)) = (
                links.iter().min_by_key(|l| l.2),
                links.iter().max_by_key(|l| l.2),
            ) && small.2 < big.2
            {
                out.push(cmd(
                    small.0,
                    b,
                    format!("ip link set {} mtu {}", small.1, big.2),
                ));
            }
        }
        "bridge-port-blocked" => {
            for o in objects {
                if let KernelObject::Link { at, name, .. } = o {
                    out.push(cmd(at, b, format!("bridge link set dev {name} state 3")));
                }
            }
        }
        "hairpin-off" => {
            for o in objects {
                if let KernelObject::Link { at, name, .. } = o {
                    out.push(cmd(at, b, format!("bridge link set dev {name} hairpin on")));
                }
            }
        }
        _ => {}
    }
    out.dedup();
    out
}

/// `-s SRC -d DST -p PROTO --dport PORT` of the packet as it was where `at` judged it.
fn flow_spec(b: &Branch, at: &Place) -> Option<String> {
    let h = b
        .hops
        .iter()
        .rev()
        .find(|h| h.node == at.node && h.netns == at.netns)?;
    let p = &h.packet;
    let (s, d) = match (p.src, p.dst) {
        (IpAddr::V4(s), IpAddr::V4(d)) => (format!("{s}/32"), format!("{d}/32")),
        (s, d) => (format!("{s}/128"), format!("{d}/128")),
    };
    let mut spec = format!("-s {s} -d {d}");
    match (p.proto.as_str(), p.dport) {
        ("tcp" | "udp" | "sctp", Some(port)) => {
            spec.push_str(&format!(" -p {} -m {} --dport {port}", p.proto, p.proto))
        }
        ("icmp", _) => spec.push_str(" -p icmp"),
        _ => {}
    }
    Some(spec)
}

/// The nft handle of the rule a netfilter hop matched last in `table`/`chain` at `at`.
fn nft_handle(b: &Branch, at: &Place, table: &str, chain: &str) -> Option<u64> {
    b.hops.iter().rev().find_map(|h| match &h.step {
        Step::Netfilter { rules, .. } if h.node == at.node && h.netns == at.netns => rules
            .iter()
            .rev()
            .find(|r| r.table == table && r.chain == chain)
            .and_then(|r| r.handle),
        _ => None,
    })
}

/// Whether `dev` at `at` is down: an address parked there (IPVS-style Service IPs) is not
/// one the host serves traffic on.
fn address_is_parked(ctx: &Context, at: &Place, dev: &str) -> bool {
    let Some(v) = ns_at(ctx, at) else {
        return false;
    };
    v.snap
        .links
        .iter()
        .find(|l| l.name == dev)
        .is_some_and(|l| !l.is_up() || dev == "kube-ipvs0")
}

fn ns_at<'w>(ctx: &'w Context, at: &Place) -> Option<&'w netray_datapath::world::NsView<'w>> {
    ctx.world
        .ns
        .iter()
        .find(|v| v.node == at.node && v.netns_label() == at.netns)
}

/// The neighbour and FDB entries a stale or missing VTEP needs: the neighbour pointed at the
/// MAC the remote device has now, the FDB entry for that MAC pointed at its VTEP, and the
/// stale FDB entry removed.
fn vtep_fix(objects: &[KernelObject], b: &Branch, ctx: &Context) -> Vec<FixCommand> {
    let mut out = Vec::new();
    let neigh = objects.iter().find_map(|o| match o {
        KernelObject::Neighbour {
            at,
            dev,
            addr,
            lladdr,
            expected_lladdr,
            ..
        } => Some((at, dev, addr, lladdr, expected_lladdr)),
        _ => None,
    });
    let fdb = objects.iter().find_map(|o| match o {
        KernelObject::Fdb {
            at,
            dev,
            mac,
            dst,
            present,
        } => Some((at, dev, mac, dst, present)),
        _ => None,
    });
    // The MAC the remote VTEP device has now.
    let want = neigh
        .and_then(|n| n.4.clone())
        .or_else(|| fdb.filter(|f| !*f.4).map(|f| f.2.clone()));
    let Some(want) = want else {
        return out;
    };
    let vtep = vtep_of_mac(ctx, &want).or_else(|| fdb.and_then(|f| *f.3));
    if let Some((at, dev, addr, lladdr, _)) = neigh
        && lladdr.as_deref().map(|l| !l.eq_ignore_ascii_case(&want)) != Some(false)
    {
        out.push(cmd(
            at,
            b,
            format!("ip neigh replace {addr} lladdr {want} dev {dev} nud permanent"),
        ));
    }
    let (at, dev) = match (fdb, neigh) {
        (Some(f), _) => (f.0, f.1),
        (None, Some(n)) => (n.0, n.1),
        (None, None) => return out,
    };
    if let Some(vtep) = vtep {
        out.push(cmd(
            at,
            b,
            format!("bridge fdb replace {want} dev {dev} dst {vtep} self permanent"),
        ));
    }
    if let Some((_, _, mac, _, true)) = fdb
        && !mac.eq_ignore_ascii_case(&want)
    {
        out.push(cmd(at, b, format!("bridge fdb del {mac} dev {dev} self")));
    }
    out
}

/// The underlay address of the VXLAN device that has `mac`.
fn vtep_of_mac(ctx: &Context, mac: &str) -> Option<IpAddr> {
    ctx.world.mac_owners(mac).iter().find_map(|&(n, i)| {
        match ctx.world.ns[n].snap.links.get(i).map(|l| &l.kind) {
            Some(LinkKind::Vxlan { local, .. }) => *local,
            _ => None,
        }
    })
}

/// A route to `dst` that another node's host namespace has through a gateway, over a device
/// this namespace also has (the CNI installs the same shape on every node): `ip route` syntax.
fn peer_route(ctx: &Context, at: &Place, dst: IpAddr) -> Option<String> {
    let me = ns_at(ctx, at)?;
    ctx.world
        .ns
        .iter()
        .filter(|v| v.is_host && v.node != at.node)
        .flat_map(|v| v.snap.routes.iter())
        .filter(|r| {
            r.table == 254
                && r.route_type == RouteType::Unicast
                && r.dst.prefix_len() > 0
                && r.dst.contains(&dst)
                && r.gateway.is_some()
                && r.dev.as_deref().is_some_and(|d| me.link(d).is_some())
        })
        .max_by_key(|r| r.dst.prefix_len())
        .map(netray_datapath::fib::route_text)
}

/// A route to the pod subnet holding `dst`, derived from the node that owns it (when no other
/// node has such a route to copy, e.g. in a two-node cluster): over the overlay when this
/// node has a VXLAN device of `dst`'s family (`SUBNET via PEER-VTEP dev DEV onlink`, as
/// flannel writes it; `flannel.1` or `flannel-v6.1`), else via the owner's address of that
/// family on a subnet this node is directly connected to (host-gw style).
fn route_to_owner(ctx: &Context, at: &Place, dst: IpAddr) -> Option<String> {
    let me = ns_at(ctx, at)?;
    let v4 = dst.is_ipv4();
    // The owner: a host namespace with a bridge address whose subnet holds dst.
    let (owner, subnet) = ctx
        .world
        .ns
        .iter()
        .filter(|v| v.is_host && v.node != at.node)
        .find_map(|v| {
            v.snap.addresses.iter().find_map(|a| {
                let on_bridge = v
                    .snap
                    .links
                    .iter()
                    .any(|l| l.name == a.dev && matches!(l.kind, LinkKind::Bridge { .. }));
                (on_bridge && a.scope == "global" && a.addr.trunc().contains(&dst))
                    .then(|| (v, a.addr.trunc()))
            })
        })?;
    let family_addr = |v: &netray_datapath::world::NsView, dev: &str| {
        v.snap
            .addresses
            .iter()
            .find(|a| a.dev == dev && a.addr.addr().is_ipv4() == v4)
            .map(|a| a.addr.addr())
    };
    // Overlay: my VXLAN device carrying this family, the owner's device of the same VNI.
    for l in &me.snap.links {
        let LinkKind::Vxlan { vni, .. } = &l.kind else {
            continue;
        };
        if family_addr(me, &l.name).is_none() {
            continue;
        }
        let peer_vtep = owner.snap.links.iter().find_map(|pl| match &pl.kind {
            LinkKind::Vxlan { vni: pv, .. } if pv == vni => family_addr(owner, &pl.name),
            _ => None,
        });
        if let Some(gw) = peer_vtep {
            return Some(format!("{subnet} via {gw} dev {} onlink", l.name));
        }
    }
    // Underlay: the owner's address of this family in one of my connected subnets.
    me.snap.addresses.iter().find_map(|mine| {
        if mine.scope != "global" || mine.addr.addr().is_ipv4() != v4 {
            return None;
        }
        let net = mine.addr.trunc();
        owner
            .snap
            .addresses
            .iter()
            .find(|a| a.scope == "global" && net.contains(&a.addr.addr()) && a.addr != mine.addr)
            .map(|a| format!("{subnet} via {} dev {}", a.addr.addr(), mine.dev))
    })
}

/// A pod's gateway: the address in its interface's subnet that the host side owns (the
/// bridge), and the pod's interface.
fn pod_gateway(ctx: &Context, at: &Place) -> Option<(IpAddr, String)> {
    let me = ns_at(ctx, at)?;
    for a in &me.snap.addresses {
        if a.scope != "global" || a.addr.prefix_len() >= 31 && a.addr.addr().is_ipv4() {
            continue;
        }
        let net = a.addr.trunc();
        let gw = ctx
            .world
            .ns
            .iter()
            .filter(|v| v.is_host && v.node == at.node)
            .find_map(|v| {
                v.snap
                    .addresses
                    .iter()
                    .find(|h| net.contains(&h.addr.addr()) && h.addr.addr() != a.addr.addr())
                    .map(|h| h.addr.addr())
            });
        if let Some(gw) = gw {
            return Some((gw, a.dev.clone()));
        }
    }
    None
}
