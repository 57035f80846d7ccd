//! Link checks: interfaces down, bridge ports not forwarding, hairpin, duplicate addresses.

use std::collections::BTreeMap;
use std::net::IpAddr;

use netray_snapshot::{LinkKind, NetnsRole};

use crate::finding::{Finding, Severity};
use crate::scan::{Ns, ScanInput};

pub(crate) fn interfaces_down(input: &ScanInput, out: &mut Vec<Finding>) {
    for n in &input.namespaces {
        if n.ns.role != NetnsRole::Host && !input.is_workload(n) {
            continue;
        }
        for l in &n.ns.links {
            // kube-proxy's IPVS device is down by design: its addresses only need to be local.
            if l.name == "kube-ipvs0" {
                continue;
            }
            let used =
                n.ns.routes
                    .iter()
                    .any(|r| r.table != 255 && r.dev.as_deref() == Some(&l.name))
                    || n.ns
                        .addresses
                        .iter()
                        .any(|a| a.dev == l.name && a.scope == "global")
                    || l.master.is_some();
            let down = !l.is_up() || l.operstate == "down" || l.operstate == "lowerlayerdown";
            if (used || l.kind == LinkKind::Loopback) && down {
                out.push(n.finding(
                    "interface-down",
                    Severity::Critical,
                    vec![format!(
                        "{}: <{}> state {}",
                        l.name,
                        l.flags.join(","),
                        l.operstate.to_uppercase()
                    )],
                    format!(
                        "Interface {} is {} but carries addresses or routes (or is a bridge \
                         port): traffic through it is dropped.",
                        l.name,
                        if l.is_up() {
                            "up administratively but has no carrier"
                        } else {
                            "administratively down"
                        }
                    ),
                    format!("ip link set {} up (and check its peer/carrier)", l.name),
                ));
            }
        }
    }
}

pub(crate) fn bridge_ports(input: &ScanInput, out: &mut Vec<Finding>) {
    for h in input.hosts() {
        for (li, l) in h.ns.links.iter().enumerate() {
            let Some(bp) = &l.bridge_port else { continue };
            if bp.state != "forwarding" && bp.state != "disabled" {
                out.push(h.finding(
                    "bridge-port-blocked",
                    Severity::Critical,
                    vec![format!(
                        "{} master {} state {}",
                        l.name,
                        l.master.clone().unwrap_or_default(),
                        bp.state
                    )],
                    format!(
                        "Bridge port {} is in STP state {}: the bridge does not forward frames \
                         to or from it.",
                        l.name, bp.state
                    ),
                    "check STP on the bridge (bridge link show); disable STP on CNI bridges".into(),
                ));
            }
            // The peer namespace as the world resolved it: (boot_id, inode), never another
            // node's namespace that happens to share the inode number.
            let to_workload = matches!(
                l.kind,
                LinkKind::Veth {
                    peer_netns: Some(_),
                    ..
                }
            ) && input
                .veth_peer(&h, li)
                .is_some_and(|(p, _)| input.is_workload(&p));
            if to_workload && !bp.hairpin && input.cluster.is_some_and(|c| !c.services.is_empty()) {
                out.push(h.finding(
                    "hairpin-disabled",
                    Severity::Info,
                    vec![format!(
                        "{} master {} hairpin off",
                        l.name,
                        l.master.clone().unwrap_or_default()
                    )],
                    format!(
                        "Hairpin mode is off on bridge port {}: the pod behind it cannot reach \
                         itself through a Service (its own request is DNATed back to it and the \
                         bridge will not send a frame out of the port it came in).",
                        l.name
                    ),
                    format!(
                        "bridge link set dev {} hairpin on (flannel's CNI sets hairpinMode: true)",
                        l.name
                    ),
                ));
            }
        }
    }
}

pub(crate) fn duplicate_addresses(input: &ScanInput, out: &mut Vec<Finding>) {
    let mut owners: BTreeMap<IpAddr, Vec<(Ns, &str)>> = BTreeMap::new();
    for n in &input.namespaces {
        for a in &n.ns.addresses {
            if a.scope == "global" && !a.addr.addr().is_loopback() {
                owners
                    .entry(a.addr.addr())
                    .or_default()
                    .push((*n, a.dev.as_str()));
            }
        }
    }
    for (ip, list) in owners {
        if list.len() < 2 {
            continue;
        }
        let evidence: Vec<String> = list
            .iter()
            .map(|(n, dev)| format!("{ip} on {}/{} dev {dev}", n.node.node.name, n.label()))
            .collect();
        let first = list[0].0;
        out.push(first.finding(
            "duplicate-address",
            Severity::Warning,
            evidence,
            format!(
                "{ip} is configured in {} namespaces: which one receives traffic depends on \
                 ARP races and routing, so connections reach the wrong place at random. (A \
                 Service or LB address bound on purpose on several nodes is expected with IPVS.)",
                list.len()
            ),
            "remove the stray address (ip addr del ...)".into(),
        ));
    }
}

/// BPF datapaths (Cilium, Calico eBPF) and other tc filters are not modelled: say up front which
/// devices carry programs, so a confident-looking trace elsewhere is read with that in mind.
pub(crate) fn bpf_programs(input: &ScanInput, out: &mut Vec<Finding>) {
    for n in &input.namespaces {
        if n.ns.attachments.is_empty() {
            continue;
        }
        let evidence: Vec<String> =
            n.ns.attachments
                .iter()
                .take(12)
                .map(|a| {
                    format!(
                        "{:?} {} on {}{}",
                        a.point,
                        a.kind,
                        a.dev.as_deref().unwrap_or("-"),
                        a.prog
                            .as_ref()
                            .map(|p| format!(
                                ": program id {}{}",
                                p.id,
                                p.name
                                    .as_deref()
                                    .map(|x| format!(" `{x}`"))
                                    .unwrap_or_default()
                            ))
                            .unwrap_or_default()
                    )
                })
                .collect();
        let devs: std::collections::BTreeSet<&str> =
            n.ns.attachments
                .iter()
                .filter_map(|a| a.dev.as_deref())
                .collect();
        out.push(n.finding(
            "bpf-datapath",
            Severity::Warning,
            evidence,
            format!(
                "{} program{} or tc filter{} attached to {} device{} here ({}): netray does not \
                 model what they do, so every branch crossing them is uncertain, named. If this \
                 is a BPF dataplane (Cilium, Calico eBPF), kube-proxy may be replaced and the \
                 iptables rules are not what forwards traffic.",
                n.ns.attachments.len(),
                if n.ns.attachments.len() == 1 { "" } else { "s" },
                if n.ns.attachments.len() == 1 { "" } else { "s" },
                devs.len(),
                if devs.len() == 1 { "" } else { "s" },
                devs.into_iter().collect::<Vec<_>>().join(", ")
            ),
            "check the programs with bpftool (bpftool net show; bpftool prog show id N)".into(),
        ));
    }
    for node in &input.bundle.nodes {
        if node.cgroup_programs.is_empty() {
            continue;
        }
        if let Some(h) = input.hosts().find(|h| h.node.node.name == node.node.name) {
            out.push(h.finding(
                "bpf-datapath",
                Severity::Info,
                node.cgroup_programs
                    .iter()
                    .take(12)
                    .map(|a| {
                        format!(
                            "cgroup {} {}",
                            a.cgroup.as_deref().unwrap_or("?"),
                            a.attach_type.as_deref().unwrap_or("?")
                        )
                    })
                    .collect(),
                "cgroup BPF programs act on sockets of this node (socket-level load balancing \
                 replaces kube-proxy's DNAT for connect() when present); netray does not model them."
                    .into(),
                "check them with bpftool cgroup tree".into(),
            ));
        }
    }
}
