//! cgroup socket programs that run before a packet exists (issue 10): `connect()` and
//! `sendmsg()` hooks (Cilium's socket-level load balancing replaces kube-proxy's DNAT with
//! them) can rewrite a Service address to a backend or refuse the call, so a Service flow
//! sent by a socket of such a node is uncertain from its first step, naming the programs.
//! Callers decide what is a Service (the cluster view is theirs).

use std::net::IpAddr;

use netray_snapshot::{AttachPoint, Attachment, NodeSnapshot};

use crate::result::{Branch, Disposition, Leg};
use crate::{KernelObject, Place, Trace, World};

/// `point dev program id N \`name\``: one attachment as the notes name it.
pub fn describe(a: &Attachment) -> String {
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
pub fn mark_socket_programs(world: &World<'_>, trace: &mut Trace, proto: u8) -> bool {
    let Some(first) = trace.branches.first().and_then(|b| b.hops.first()) else {
        return false;
    };
    let (node_name, netns) = (first.node.clone(), first.netns.clone());
    let Some(node) = world.bundle.nodes.iter().find(|n| n.node.name == node_name) else {
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
    let at = Place {
        node: node_name.clone(),
        netns,
    };
    let mut merged: Option<Branch> = None;
    for mut b in std::mem::take(&mut trace.branches) {
        b.hops.truncate(1);
        b.disposition = Disposition::Unknown;
        b.cause = Some("bpf-program".into());
        b.reason = reason.clone();
        b.endpoint = None;
        b.ended_on = Leg::Forward;
        b.decided_by = progs
            .iter()
            .map(|a| KernelObject::Unmodelled {
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
