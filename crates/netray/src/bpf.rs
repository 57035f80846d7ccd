//! BPF programs netray does not model, as they bear on one flow (issue 10): which nodes a
//! walk touched carry a BPF datapath (said up front by `diagnose` and `trace`), and cgroup
//! socket programs that can rewrite a Service address at `connect()`/`sendmsg()` before any
//! packet exists (Cilium's socket-level load balancing replaces kube-proxy's DNAT so): a
//! Service flow from a socket of such a node is uncertain, naming them.

use std::net::IpAddr;

use netray_datapath::Trace;
use netray_datapath::result::{Disposition, Leg};
use netray_kube::ClusterView;
use netray_snapshot::{AttachPoint, Attachment, Bundle, NodeSnapshot};

/// `point dev program id N \`name\``: one attachment as the notes name it.
fn describe(a: &Attachment) -> String {
    let point = match a.point {
        AttachPoint::Xdp => "XDP".to_string(),
        AttachPoint::TcIngress => "tc ingress".into(),
        AttachPoint::TcEgress => "tc egress".into(),
        AttachPoint::Cgroup => format!(
            "cgroup {} {}",
            a.cgroup.as_deref().unwrap_or("?"),
            a.attach_type.as_deref().unwrap_or("?")
        ),
    };
    let on = a
        .dev
        .as_deref()
        .map(|d| format!(" on {d}"))
        .unwrap_or_default();
    let prog = match &a.prog {
        Some(p) => format!(
            " program id {}{}",
            p.id,
            p.name
                .as_deref()
                .map(|n| format!(" `{n}`"))
                .unwrap_or_default()
        ),
        None => format!(" {} filter", a.kind),
    };
    format!("{point}{on}{prog}")
}

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

/// cgroup socket-address programs of `node` that run before a socket of protocol `proto`
/// (6, 17, 132) sends to an address of `dst`'s family: connect for TCP/SCTP, connect and
/// sendmsg for UDP.
fn socket_programs(node: &NodeSnapshot, proto: u8, dst: IpAddr) -> Vec<&Attachment> {
    let fam = if dst.is_ipv4() { '4' } else { '6' };
    node.cgroup_programs
        .iter()
        .filter(|a| {
            let t = a.attach_type.as_deref().unwrap_or("");
            let connect = t == format!("cgroup_inet{fam}_connect");
            let sendmsg = t == format!("cgroup_udp{fam}_sendmsg");
            match proto {
                6 | 132 => connect,
                17 => connect || sendmsg,
                _ => false,
            }
        })
        .collect()
}

/// A flow sent by a socket of a node (a pod's or the node's own) to a Service address: when
/// the node has cgroup programs that run at `connect()`/`sendmsg()`, the address the walk
/// followed may never be used (the program can rewrite it to a backend, or refuse the call).
/// Every branch then ends uncertain at the socket, naming the programs. Returns whether the
/// trace was changed.
pub fn mark_socket_programs(bundle: &Bundle, trace: &mut Trace, proto: u8) -> bool {
    let Some(first) = trace.branches.first().and_then(|b| b.hops.first()) else {
        return false;
    };
    let (node_name, netns) = (first.node.clone(), first.netns.clone());
    let Some(node) = bundle.nodes.iter().find(|n| n.node.name == node_name) else {
        return false;
    };
    let progs = socket_programs(node, proto, trace.flow.packet.dst);
    if progs.is_empty() {
        return false;
    }
    let what = progs
        .iter()
        .map(|a| describe(a))
        .collect::<Vec<_>>()
        .join(", ");
    let reason = format!(
        "the socket on node {node_name} runs {what} at connect()/sendmsg(): the program can \
         rewrite the Service address to a backend of its choosing (socket-level load \
         balancing, as Cilium's kube-proxy replacement does) or refuse the call, before any \
         packet exists; netray does not model it"
    );
    let at = netray_datapath::Place {
        node: node_name.clone(),
        netns,
    };
    let mut merged: Option<netray_datapath::result::Branch> = None;
    for mut b in std::mem::take(&mut trace.branches) {
        b.hops.truncate(1);
        b.disposition = Disposition::Unknown;
        b.cause = Some("bpf-program".into());
        b.reason = reason.clone();
        b.endpoint = None;
        b.ended_on = Leg::Forward;
        b.decided_by = progs
            .iter()
            .map(|a| netray_datapath::KernelObject::Unmodelled {
                at: at.clone(),
                what: describe(a),
            })
            .collect();
        match &mut merged {
            Some(m) => m.probability += b.probability,
            None => merged = Some(b),
        }
    }
    trace.branches.extend(merged);
    trace.shares = trace
        .branches
        .iter()
        .map(|b| (b.disposition, b.probability))
        .collect();
    trace.reachable = false;
    true
}
