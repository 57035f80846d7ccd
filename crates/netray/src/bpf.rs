//! BPF programs netray does not model, as they bear on one flow (issue 10): which nodes a
//! walk touched carry a BPF datapath (said up front by `diagnose` and `trace`), and which
//! destinations are Services, whose flows from a node's sockets cgroup socket programs make
//! uncertain (`netray_datapath::sockprog`).

use std::net::IpAddr;

use netray_datapath::Trace;
use netray_datapath::sockprog::describe;
use netray_kube::ClusterView;
use netray_snapshot::{Bundle, NodeSnapshot};

/// The BPF programs of a node (tc and XDP in any of its namespaces, cgroup programs), named.
fn programs(node: &NodeSnapshot) -> Vec<String> {
    let mut out: Vec<String> = node
        .namespaces
        .iter()
        .flat_map(|ns| {
            ns.attachments.iter().map(move |a| {
                let place = if ns.role == netray_snapshot::NetnsRole::Host {
                    String::new()
                } else {
                    format!(" (netns {})", ns.id.name.as_deref().unwrap_or("?"))
                };
                format!("{}{place}", describe(a))
            })
        })
        .collect();
    out.extend(node.cgroup_programs.iter().map(describe));
    out
}

/// Whether the node's host namespace holds kube-proxy's Service rules: the `KUBE-SERVICES`
/// chain (iptables, either backend), nftables' `kube-proxy` table, or IPVS virtual services.
fn has_kube_proxy_rules(node: &NodeSnapshot) -> bool {
    node.namespaces
        .iter()
        .filter(|ns| ns.role == netray_snapshot::NetnsRole::Host)
        .any(|ns| {
            let fw = &ns.firewall;
            fw.iptables
                .iter()
                .any(|d| d.text.contains(":KUBE-SERVICES "))
                || fw
                    .nft_json
                    .as_deref()
                    .is_some_and(|j| j.contains("\"kube-proxy\""))
                || fw
                    .ipvs
                    .as_deref()
                    .is_some_and(|v| v.lines().any(|l| l.starts_with("-A ")))
        })
}

/// One note per node the traces touched (in the order first touched) that carries BPF
/// programs: they may drop, redirect or rewrite what the walk shows, and a BPF dataplane may
/// replace kube-proxy's rules (said when the node has none while the cluster has Services).
pub fn datapath_notes(
    bundle: &Bundle,
    cluster: Option<&ClusterView>,
    traces: &[&Trace],
) -> Vec<String> {
    let services = cluster.is_some_and(|c| c.services.iter().any(|s| !s.cluster_ips.is_empty()));
    let mut nodes: Vec<&str> = Vec::new();
    for h in traces
        .iter()
        .flat_map(|t| &t.branches)
        .flat_map(|b| &b.hops)
    {
        if !nodes.contains(&h.node.as_str()) {
            nodes.push(&h.node);
        }
    }
    const SHOWN: usize = 6;
    nodes
        .into_iter()
        .filter_map(|n| bundle.nodes.iter().find(|s| s.node.name == n))
        .filter_map(|node| {
            let progs = programs(node);
            if progs.is_empty() {
                return None;
            }
            let more = progs.len().saturating_sub(SHOWN);
            let replaced = if services && !has_kube_proxy_rules(node) {
                " It has no kube-proxy rules (no KUBE-SERVICES chain, kube-proxy nftables table \
                 or IPVS service) although the cluster has Services: kube-proxy is replaced \
                 here, and what the walk shows of Service traffic through this node is not \
                 what its BPF programs do."
            } else {
                ""
            };
            Some(format!(
                "node {} has a BPF datapath: {}{}. netray does not model BPF programs: a branch \
                 crossing a tc or XDP program ends uncertain, naming it; cgroup socket programs \
                 can rewrite Service addresses at connect() (kube-proxy may be replaced), and \
                 the iptables rules walked may not be what forwards this traffic.{replaced}",
                node.node.name,
                progs.into_iter().take(SHOWN).collect::<Vec<_>>().join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            ))
        })
        .collect()
}

/// Whether `dst:dport` is a Service address of the cluster view: a ClusterIP, LoadBalancer
/// ingress or external IP, or a NodePort on one of the nodes' addresses.
pub fn is_service_destination(
    cluster: Option<&ClusterView>,
    bundle: &Bundle,
    dst: IpAddr,
    dport: Option<u16>,
) -> bool {
    let Some(c) = cluster else {
        return false;
    };
    c.services.iter().any(|s| {
        s.cluster_ips
            .iter()
            .chain(&s.lb_ingress)
            .chain(&s.external_ips)
            .any(|ip| *ip == dst)
            || (dport.is_some()
                && s.ports
                    .iter()
                    .any(|p| p.node_port.is_some() && p.node_port == dport)
                && bundle.nodes.iter().any(|n| {
                    n.namespaces.iter().any(|ns| {
                        ns.role == netray_snapshot::NetnsRole::Host
                            && ns.addresses.iter().any(|a| a.addr.addr() == dst)
                    })
                }))
    })
}
