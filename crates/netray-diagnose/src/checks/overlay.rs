//! Overlay checks: VXLAN neighbour and FDB entries against the peers' real VTEPs, overlay and pod MTU.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use netray_snapshot::{FdbEntry, LinkKind, Neighbour, NetnsSnapshot};

use crate::finding::{Finding, Severity};
use crate::scan::{Ns, ScanInput};

/// A node's VXLAN device as seen from the cluster.
struct Vtep<'a> {
    node: &'a str,
    dev: &'a str,
    mac: &'a str,
    local: Option<IpAddr>,
    vni: u32,
    overlay_addrs: Vec<IpAddr>,
}

fn vteps<'a>(input: &'a ScanInput) -> Vec<Vtep<'a>> {
    let mut out = Vec::new();
    for h in input.hosts() {
        for l in &h.ns.links {
            if let LinkKind::Vxlan { vni, local, .. } = &l.kind
                && let Some(mac) = &l.mac
            {
                out.push(Vtep {
                    node: &h.node.node.name,
                    dev: &l.name,
                    mac,
                    local: *local,
                    vni: *vni,
                    overlay_addrs: h
                        .ns
                        .addresses
                        .iter()
                        .filter(|a| a.dev == l.name)
                        .map(|a| a.addr.addr())
                        .collect(),
                });
            }
        }
    }
    out
}

pub(crate) fn vxlan_consistency(input: &ScanInput, out: &mut Vec<Finding>) {
    let all = vteps(input);
    // Every node holds entries for every other node: look them up by key, not by a scan of
    // the node's tables per peer (nodes³ over the cluster).
    let vtep_macs: HashSet<String> = all.iter().map(|v| v.mac.to_ascii_lowercase()).collect();
    for h in input.subject_hosts() {
        let me = h.node.node.name.as_str();
        for mine in all.iter().filter(|v| v.node == me) {
            let fdb: Vec<_> = h.ns.fdb.iter().filter(|f| f.dev == mine.dev).collect();
            let has_default_dst = fdb.iter().any(|f| f.mac == "00:00:00:00:00:00");
            // The first entry per key, as a search in table order finds it.
            let mut fdb_by_mac: HashMap<String, &FdbEntry> = HashMap::new();
            let mut fdb_by_dst: HashMap<Option<IpAddr>, Vec<&FdbEntry>> = HashMap::new();
            for f in &fdb {
                fdb_by_mac.entry(f.mac.to_ascii_lowercase()).or_insert(f);
                fdb_by_dst.entry(f.dst).or_default().push(f);
            }
            let mut neigh_by_dst: HashMap<IpAddr, &Neighbour> = HashMap::new();
            for n in
                h.ns.neighbours
                    .iter()
                    .filter(|n| n.dev == mine.dev && !n.flags.iter().any(|f| f == "proxy"))
            {
                neigh_by_dst.entry(n.dst).or_insert(n);
            }
            for peer in all.iter().filter(|v| v.node != me && v.vni == mine.vni) {
                // Neighbour entry for the peer's overlay address.
                for addr in &peer.overlay_addrs {
                    let Some(ne) = neigh_by_dst.get(addr) else {
                        continue;
                    };
                    let Some(ll) = &ne.lladdr else { continue };
                    if !ll.eq_ignore_ascii_case(peer.mac) {
                        let owner = all.iter().find(|v| v.mac.eq_ignore_ascii_case(ll));
                        out.push(h.finding(
                            "stale-vxlan-neighbor",
                            Severity::Critical,
                            vec![
                                format!(
                                    "{} on {me}: {addr} dev {} lladdr {ll} {}",
                                    "ip neigh",
                                    mine.dev,
                                    ne.state.join(",")
                                ),
                                format!("{} on {}: link/ether {}", peer.dev, peer.node, peer.mac),
                            ],
                            format!(
                                "Node {me} maps {}'s VTEP address {addr} to MAC {ll}, but {}'s {} \
                                 has MAC {} {}. Encapsulated frames from {me} to pods on {} carry \
                                 a destination MAC the receiver does not own and are dropped \
                                 after decapsulation: traffic from {me}'s pods to {}'s pods \
                                 blackholes in that direction only.",
                                peer.node,
                                peer.node,
                                peer.dev,
                                peer.mac,
                                match owner {
                                    Some(o) => format!("({ll} belongs to {}'s {})", o.node, o.dev),
                                    None => format!("({ll} belongs to no VXLAN device in the bundle, e.g. the MAC before a reboot)"),
                                },
                                peer.node,
                                peer.node
                            ),
                            format!(
                                "on {me}: ip neigh replace {addr} lladdr {} dev {} nud permanent \
                                 (or restart the CNI agent, e.g. flanneld, on {me})",
                                peer.mac, mine.dev
                            ),
                        ).about([netray_datapath::KernelObject::Neighbour { at: h.place(), dev: mine.dev.to_string(), addr: *addr, lladdr: Some(ll.clone()), state: ne.state.join(","), expected_lladdr: Some(peer.mac.to_string()) }]));
                    }
                    // The FDB must map the neighbour's MAC to the peer's underlay address.
                    match fdb_by_mac.get(&ll.to_ascii_lowercase()) {
                        None if !has_default_dst => out.push(h.finding(
                            "missing-vxlan-fdb",
                            Severity::Critical,
                            vec![format!(
                                "ip neigh on {me}: {addr} dev {} lladdr {ll}; bridge fdb has no \
                                 entry for {ll} on {} and no default (00:00:00:00:00:00) \
                                 destination",
                                mine.dev, mine.dev
                            )],
                            format!(
                                "{me} knows the inner MAC for {}'s VTEP but not where to send \
                                 the encapsulated packet: frames to {} are dropped.",
                                peer.node, peer.node
                            ),
                            format!(
                                "on {me}: bridge fdb append {} dev {} dst {}",
                                peer.mac,
                                mine.dev,
                                peer.local.map(|l| l.to_string()).unwrap_or("NODE_IP".into())
                            ),
                        )),
                        Some(f)
                            if ll.eq_ignore_ascii_case(peer.mac)
                                && f.dst.is_some()
                                && peer.local.is_some()
                                && f.dst != peer.local =>
                        {
                            out.push(h.finding(
                                "stale-vxlan-fdb",
                                Severity::Critical,
                                vec![
                                    format!(
                                        "bridge fdb on {me}: {} dev {} dst {}",
                                        f.mac,
                                        f.dev,
                                        f.dst.map(|d| d.to_string()).unwrap_or_default()
                                    ),
                                    format!(
                                        "{}'s VTEP ({}) is {}",
                                        peer.node,
                                        peer.dev,
                                        peer.local.map(|l| l.to_string()).unwrap_or_default()
                                    ),
                                ],
                                format!(
                                    "{me} sends {}'s encapsulated traffic to {} instead of its \
                                     VTEP address {}.",
                                    peer.node,
                                    f.dst.map(|d| d.to_string()).unwrap_or_default(),
                                    peer.local.map(|l| l.to_string()).unwrap_or_default()
                                ),
                                format!(
                                    "on {me}: bridge fdb replace {} dev {} dst {}",
                                    peer.mac,
                                    mine.dev,
                                    peer.local.map(|l| l.to_string()).unwrap_or_default()
                                ),
                            ))
                        }
                        _ => {}
                    }
                }
                // An FDB entry whose MAC is nobody's but points at the peer's address.
                for f in fdb_by_dst.get(&peer.local).into_iter().flatten() {
                    if f.mac != "00:00:00:00:00:00"
                        && !vtep_macs.contains(&f.mac.to_ascii_lowercase())
                    {
                        out.push(h.finding(
                            "stale-vxlan-fdb",
                            Severity::Warning,
                            vec![format!(
                                "bridge fdb on {me}: {} dev {} dst {}",
                                f.mac,
                                f.dev,
                                f.dst.map(|d| d.to_string()).unwrap_or_default()
                            )],
                            format!(
                                "{me} keeps an FDB entry for MAC {} at {}'s VTEP, but no VXLAN \
                                 device in the bundle has that MAC (left over from before {} \
                                 recreated its device).",
                                f.mac, peer.node, peer.node
                            ),
                            format!("on {me}: bridge fdb del {} dev {}", f.mac, f.dev),
                        ));
                    }
                }
            }
        }
    }
}

fn underlay_mtu(
    h: &NetnsSnapshot,
    dev: Option<&str>,
    local: Option<IpAddr>,
) -> Option<(String, u32)> {
    let name = dev.map(str::to_string).or_else(|| {
        let l = local?;
        h.addresses
            .iter()
            .find(|a| a.addr.addr() == l)
            .map(|a| a.dev.clone())
    })?;
    h.link(&name).map(|l| (name.clone(), l.mtu))
}

/// The MTU of the other end of veth `link` (an index into `n.ns.links`), when the world
/// resolved its peer namespace (on this node's `(boot_id, inode)`): a veth drops packets larger
/// than the receiving end's MTU.
fn veth_peer_mtu<'a>(input: &ScanInput<'a>, n: &Ns, link: usize) -> Option<(Ns<'a>, &'a str, u32)> {
    let LinkKind::Veth {
        peer_netns: Some(_),
        ..
    } = n.ns.links.get(link)?.kind
    else {
        return None;
    };
    let (peer, pl) = input.veth_peer(n, link)?;
    let l = peer.ns.links.get(pl)?;
    Some((peer, l.name.as_str(), l.mtu))
}

pub(crate) fn overlay_mtu(input: &ScanInput, out: &mut Vec<Finding>) {
    for h in input.hosts() {
        for l in &h.ns.links {
            let LinkKind::Vxlan { dev, local, .. } = &l.kind else {
                continue;
            };
            let overhead = if local.is_some_and(|a| a.is_ipv6()) {
                70
            } else {
                50
            };
            let Some((mut udev, mut umtu)) = underlay_mtu(h.ns, dev.as_deref(), *local) else {
                continue;
            };
            let mut peer_note = String::new();
            if let Some(link) = h.ns.links.iter().position(|x| x.name == udev)
                && let Some((peer_ns, peer_dev, peer_mtu)) = veth_peer_mtu(input, &h, link)
                && peer_mtu < umtu
            {
                peer_note = format!(
                    " (its veth peer {peer_dev} in {} has MTU {peer_mtu})",
                    peer_ns.label()
                );
                udev = format!("{udev}→{peer_dev}");
                umtu = peer_mtu;
            }
            if l.mtu + overhead > umtu {
                out.push(h.finding(
                    "mtu-blackhole",
                    Severity::Critical,
                    vec![
                        format!("{}: mtu {}", l.name, l.mtu),
                        format!("{udev}: mtu {umtu}{peer_note}"),
                    ],
                    format!(
                        "The overlay device {} has MTU {} but its packets grow by {overhead} bytes \
                         of VXLAN encapsulation and leave through {udev} (MTU {umtu}): full-size \
                         packets are dropped on the underlay (small requests work, large \
                         transfers hang).",
                        l.name, l.mtu
                    ),
                    format!(
                        "set the overlay MTU to {} (ip link set {} mtu {}; flannel: remove the \
                         explicit MTU or fix the underlay)",
                        umtu - overhead,
                        l.name,
                        umtu - overhead
                    ),
                ));
            }
        }
    }
}

pub(crate) fn pod_mtu(input: &ScanInput, out: &mut Vec<Finding>) {
    let overlay: BTreeMap<&str, (&str, u32)> = input
        .hosts()
        .flat_map(|h| {
            h.ns.links
                .iter()
                .filter(|l| matches!(l.kind, LinkKind::Vxlan { .. }))
                .map(move |l| (h.node.node.name.as_str(), (l.name.as_str(), l.mtu)))
        })
        .collect();
    let cidrs = input.pod_cidrs();
    for w in input.workloads() {
        let Some((vdev, vmtu)) = overlay.get(w.node.node.name.as_str()) else {
            continue;
        };
        // Only pods addressed from the node's pod CIDR use the overlay (not a VM on another
        // bridge routed elsewhere).
        let node_cidrs = cidrs.get(&w.node.node.name).cloned().unwrap_or_default();
        if !w
            .ns
            .addresses
            .iter()
            .any(|a| node_cidrs.iter().any(|c| c.contains(&a.addr.addr())))
        {
            continue;
        }
        for l in &w.ns.links {
            if matches!(l.kind, LinkKind::Veth { .. }) && l.mtu > *vmtu {
                out.push(w.finding(
                    "pod-mtu-exceeds-overlay",
                    Severity::Warning,
                    vec![
                        format!("{}: mtu {}", l.name, l.mtu),
                        format!("{vdev}: mtu {vmtu}"),
                    ],
                    format!(
                        "The workload's {} has MTU {} but cross-node traffic goes through {vdev} \
                         (MTU {vmtu}): packets larger than {vmtu} bytes with DF set are dropped \
                         with 'frag needed', and break if that ICMP is filtered.",
                        l.name, l.mtu
                    ),
                    format!("set the CNI MTU to {vmtu} (or less)"),
                ));
            }
        }
    }
}
