//! `netray audit`: every source class of the cluster to every Service, node and pod network,
//! walked like `diagnose` walks one flow, failures grouped by root cause.
//!
//! **What is walked** ([`plan`]). Sources: each node's host namespace (the kernel picks the
//! source address), the pods of each node in equivalence classes (below), and one client
//! outside the cluster. Targets: every port of every Service through its ClusterIP (the walk
//! branches to every endpoint, as kube-proxy balances), every node's InternalIP and one pod
//! per node (ICMP echo: the overlay between every pair of nodes), and every NodePort of every
//! node from the outside client. A flow is `(source member, target, endpoint)`; a walk is one
//! trace from a class's representative.
//!
//! **Pod classes.** Pods of one node share a class only when nothing in the snapshots can
//! tell them apart as *sources*: their namespaces are identical once their own addresses and
//! MACs are replaced by placeholders (interfaces, routes, rules, sysctls, neighbours, any
//! firewall; sockets and conntrack are left out: a client needs neither); their host-side veth
//! ports are identical once names and indexes are removed (MTU, state, bridge port flags,
//! per-interface sysctls), as are their node's neighbour and FDB entries for their address
//! and MAC; and no firewall rule, ipset, route or neighbour entry anywhere in the bundle names
//! an address or prefix that holds some of them but not their node's whole pod CIDR. Such
//! pods send packets that differ only in the source address, and every construct that could
//! treat addresses differently has been checked not to, so a walk from one stands for all.
//! One exception is made, and compensated: kube-proxy's per-endpoint chains (`KUBE-SEP-*`)
//! name their endpoint's address (hairpin masquerade), but are entered only once the Service
//! chose that endpoint; so a member that is an endpoint of a Service walks that Service itself
//! instead of being represented. Hosts are not merged (every node is walked), nor are Services
//! with the same rule shape: each Service port is walked from each class.
//!
//! **Grouping.** Each failing branch gets its cause exactly as `diagnose` names it (the
//! deciding objects, supporting scan findings, fix commands); causes are merged by the same
//! identity (code, node, namespace, deciding objects). Fixes are not proven here: `diagnose`
//! proves them for one of the group's flows.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use ipnet::IpNet;
use netray_datapath::walk::{Flow, Start};
use netray_datapath::{KernelObject, RulesetEngine, World, trace};
use netray_kube::ClusterView;
use serde::Serialize;

use crate::diagnose::{Context, TracedFlow, branch_causes, cause_identity};
use crate::finding::{Finding, Severity};

/// Schema identifier of the JSON document (see `schemas/audit.schema.json`).
pub const SCHEMA: &str = "netray.audit/v1";

/// What to walk and how.
#[derive(Debug, Clone)]
pub struct Options {
    /// Limits of each walk.
    pub walk: netray_datapath::Options,
    /// Only this IP protocol (6, 17, 132, or 1 for the ICMP probes to nodes and pods);
    /// `None`: every Service port's protocol and ICMP probes.
    pub proto: Option<u8>,
    /// IP packet size (MTU checks); `None`: a small packet.
    pub size: Option<u32>,
    /// Source port of every walk.
    pub sport: u16,
    /// The client outside the cluster that reaches NodePorts; `None`: a free address of the
    /// first node's underlay subnet (as a client next to the nodes), else 203.0.113.1.
    pub external: Option<IpAddr>,
    /// Also walk the existing UDP connections the collected conntrack tables hold with DNAT
    /// (each with its real source port, following its entry as the kernel does).
    pub existing: bool,
    /// Walk every pod instead of one per class.
    pub every_pod: bool,
    /// Worker threads (at least 1).
    pub threads: usize,
    /// List every failing walk in its group ([`Group::failing`]).
    pub list_flows: bool,
}

/// What a source class is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum SourceKind {
    /// A node's host namespace.
    Host,
    /// Pods of one node that are equivalent as sources.
    Pods,
    /// A client outside the cluster.
    External,
}

/// Sources that behave the same: one walk from the representative stands for every member.
#[derive(Debug, Clone, Serialize)]
pub struct SourceClass {
    /// What it is.
    pub kind: SourceKind,
    /// The node it is on (none for the outside client).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The member walked, in the flow syntax (`pod/NS/NAME`, `node/NAME`, `external/IP`).
    pub representative: String,
    /// Every member, in the flow syntax.
    pub members: Vec<String>,
    /// Member addresses (for pods), in `members` order.
    #[serde(skip)]
    ips: Vec<Vec<IpAddr>>,
    /// An outside client that only reaches this Service's NodePorts (its load balancer,
    /// probing from its ingress IP).
    #[serde(skip)]
    only_service: Option<(String, String)>,
}

/// What a target is.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum TargetKind {
    /// A Service port through its ClusterIP.
    Service,
    /// A node's InternalIP (ICMP echo).
    Node,
    /// One pod of a node (ICMP echo through the overlay).
    Pod,
    /// A NodePort on one node, from outside.
    NodePort,
    /// An existing UDP connection of the collected conntrack tables, walked with its real
    /// source port (it follows its entry, as the kernel does).
    Existing,
}

/// One destination.
#[derive(Debug, Clone, Serialize)]
pub struct Target {
    /// What it is.
    pub kind: TargetKind,
    /// In the flow syntax: `svc/NS/NAME:PORT/PROTO`, `node/NAME`, `pod/NS/NAME`,
    /// `IP:PORT/PROTO` (a NodePort).
    pub label: String,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number.
    pub proto: u8,
    /// Destination port.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub port: Option<u16>,
    /// The node a NodePort is walked into.
    #[serde(skip)]
    node: Option<String>,
    /// Ready endpoint addresses of a Service target (hairpin walks).
    #[serde(skip)]
    endpoints: Vec<IpAddr>,
    /// The Service `(namespace, name)` of a Service or NodePort target.
    #[serde(skip)]
    service: Option<(String, String)>,
    /// An existing connection's source address and port.
    #[serde(skip)]
    fixed: Option<(IpAddr, u16)>,
}

/// One walk: a source class (or one member of it) to a target.
#[derive(Debug, Clone)]
struct Walk {
    source: usize,
    /// Member walked (index in the class's members).
    member: usize,
    target: usize,
    /// Members this walk stands for.
    weight: usize,
}

/// Everything an audit walks.
#[derive(Debug, Clone)]
pub struct Plan {
    /// Source classes.
    pub sources: Vec<SourceClass>,
    /// Targets.
    pub targets: Vec<Target>,
    walks: Vec<Walk>,
    /// Sources or targets left out, and why.
    pub skipped: Vec<String>,
}

impl Plan {
    /// Number of walks.
    pub fn walks(&self) -> usize {
        self.walks.len()
    }
}

/// A flow that could not be walked.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct NotWalked {
    /// Source, flow syntax.
    pub from: String,
    /// Target, flow syntax.
    pub to: String,
    /// Why.
    pub error: String,
}

/// Failures that share a root cause.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Group {
    /// `412 flows from node17's pods to endpoints on 9 nodes fail: stale-vxlan-neighbor on node17`.
    pub summary: String,
    /// Failing flows (source member × target × endpoint) this cause decides.
    pub flows: usize,
    /// Walks in which it decided a branch.
    pub walks: usize,
    /// Source classes affected (representatives, flow syntax).
    pub sources: Vec<String>,
    /// Nodes of the affected sources.
    pub source_nodes: Vec<String>,
    /// Targets affected (flow syntax).
    pub targets: Vec<String>,
    /// Endpoints whose branches fail (after DNAT).
    pub endpoints: Vec<String>,
    /// Nodes of those endpoints (where known).
    pub endpoint_nodes: Vec<String>,
    /// One affected flow to hand to `netray diagnose` (which proves the fix).
    pub example: Example,
    /// Every failing walk (with `list_flows`): the member walked, the target, the endpoint,
    /// and how many members the walk stands for.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failing: Vec<FailingFlow>,
    /// The cause is in the namespace of the source pod itself: every member of the source
    /// class has its own copy of it (named here for the member walked).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub in_source: bool,
    /// The cause, as `diagnose` names it (fix commands included, not proven).
    pub cause: Finding,
}

/// One failing walk of a group.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct FailingFlow {
    /// The member walked (flow syntax).
    pub from: String,
    /// The target (flow syntax).
    pub to: String,
    /// The endpoint whose branch failed.
    pub endpoint: String,
    /// Members of the source class this walk stands for.
    pub members: usize,
}

/// One flow, in the flow syntax.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Example {
    /// `--from`.
    pub from: String,
    /// `--to`.
    pub to: String,
    /// `--sport` (an existing connection's real source port).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sport: Option<u16>,
}

/// Counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Summary {
    /// Source classes.
    pub source_classes: usize,
    /// Source members (pods, nodes, the outside client).
    pub sources: usize,
    /// Targets.
    pub targets: usize,
    /// Traces walked.
    pub walks: usize,
    /// Flows (source member × target × endpoint) the walks stand for.
    pub flows: usize,
    /// Of those, flows with a failing branch.
    pub failing_flows: usize,
    /// Flows that could not be walked.
    pub not_walked: usize,
}

/// The audit: what `netray audit -o json` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Audit {
    /// [`SCHEMA`].
    pub schema: &'static str,
    /// Counts.
    pub summary: Summary,
    /// Failures grouped by cause, most severe and largest first.
    pub groups: Vec<Group>,
    /// Flows that could not be walked.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub not_walked: Vec<NotWalked>,
    /// Source classes (who stood for whom).
    pub classes: Vec<SourceClassReport>,
    /// What was left out of the plan, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub skipped: Vec<String>,
}

/// A source class as reported.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct SourceClassReport {
    /// What it is.
    pub kind: SourceKind,
    /// Its node.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub node: Option<String>,
    /// The member walked.
    pub representative: String,
    /// How many members it stands for.
    pub members: usize,
}

impl Audit {
    /// The most severe cause, if any failure was found (flows that could not be walked
    /// count as warnings).
    pub fn worst(&self) -> Option<Severity> {
        let g = self.groups.iter().map(|g| g.cause.severity).min();
        if self.not_walked.is_empty() {
            g
        } else {
            Some(g.map_or(Severity::Warning, |s| s.min(Severity::Warning)))
        }
    }
}

fn proto_name(p: u8) -> &'static str {
    match p {
        6 => "tcp",
        17 => "udp",
        132 => "sctp",
        _ => "icmp",
    }
}

fn proto_number(p: &str) -> u8 {
    match p.to_ascii_lowercase().as_str() {
        "udp" => 17,
        "sctp" => 132,
        _ => 6,
    }
}

/// A node's InternalIP of `dst`'s family (any address when it has no InternalIP).
fn node_addr(n: &netray_kube::Node, v4: bool) -> Option<IpAddr> {
    let parsed = |kind: Option<&str>| {
        n.addresses
            .iter()
            .filter(|a| kind.is_none_or(|k| a.kind == k))
            .filter_map(|a| a.address.parse::<IpAddr>().ok())
            .find(|ip| ip.is_ipv4() == v4)
    };
    parsed(Some("InternalIP")).or_else(|| parsed(None))
}

/// The walk plan: source classes, targets and walks (see the module doc).
pub fn plan(world: &World<'_>, cluster: &ClusterView, opts: &Options) -> Plan {
    let mut skipped = Vec::new();
    let mut sources: Vec<SourceClass> = Vec::new();
    let have_node: HashSet<&str> = world.ns.iter().map(|v| v.node).collect();
    for n in &cluster.nodes {
        if !have_node.contains(n.name.as_str()) {
            skipped.push(format!(
                "node/{}: no snapshot in the bundle (not walked as a source)",
                n.name
            ));
            continue;
        }
        sources.push(SourceClass {
            kind: SourceKind::Host,
            node: Some(n.name.clone()),
            representative: format!("node/{}", n.name),
            members: vec![format!("node/{}", n.name)],
            ips: vec![
                n.addresses
                    .iter()
                    .filter_map(|a| a.address.parse().ok())
                    .collect(),
            ],
            only_service: None,
        });
    }
    sources.extend(pod_classes(world, cluster, opts.every_pod, &mut skipped));
    let external = opts
        .external
        .or_else(|| free_underlay_address(world, cluster))
        .unwrap_or(IpAddr::from([203, 0, 113, 1]));
    let mut outside = vec![(external, None)];
    if opts.external.is_none() {
        // Clients the nodes route differently: one per route of a node towards the outside.
        for ip in routed_clients(world, cluster) {
            if !outside.iter().any(|(o, _)| *o == ip) {
                outside.push((ip, None));
            }
        }
    }
    // A load balancer probes the NodePorts of its Service from its ingress IP.
    for s in cluster
        .services
        .iter()
        .filter(|s| s.ports.iter().any(|p| p.node_port.is_some()))
    {
        for ip in &s.lb_ingress {
            outside.push((*ip, Some((s.namespace.clone(), s.name.clone()))));
        }
    }
    for (ip, only) in outside {
        let ext = format!("external/{ip}");
        sources.push(SourceClass {
            kind: SourceKind::External,
            node: None,
            representative: ext.clone(),
            members: vec![ext],
            ips: vec![vec![ip]],
            only_service: only,
        });
    }
    let wanted = |p: u8| opts.proto.is_none_or(|w| w == p);
    let mut targets: Vec<Target> = Vec::new();
    for s in &cluster.services {
        let ready: HashMap<(String, String), Vec<IpAddr>> = cluster
            .endpoint_slices
            .iter()
            .filter(|e| e.namespace == s.namespace && e.service.as_deref() == Some(&s.name))
            .flat_map(|e| {
                e.ports.iter().map(move |p| {
                    (
                        (p.name.clone(), p.protocol.to_ascii_lowercase()),
                        e.endpoints
                            .iter()
                            .filter(|x| x.conditions.ready)
                            .flat_map(|x| x.addresses.iter().copied())
                            .collect::<Vec<_>>(),
                    )
                })
            })
            .fold(HashMap::new(), |mut m, (k, v)| {
                m.entry(k).or_insert_with(Vec::new).extend(v);
                m
            });
        for p in &s.ports {
            let proto = proto_number(&p.protocol);
            if !wanted(proto) {
                continue;
            }
            let endpoints = ready
                .get(&(p.name.clone(), p.protocol.to_ascii_lowercase()))
                .cloned()
                .unwrap_or_default();
            for ip in &s.cluster_ips {
                targets.push(Target {
                    kind: TargetKind::Service,
                    label: format!(
                        "svc/{}/{}:{}/{}",
                        s.namespace,
                        s.name,
                        p.port,
                        proto_name(proto)
                    ),
                    dst: *ip,
                    proto,
                    port: Some(p.port),
                    node: None,
                    endpoints: endpoints.clone(),
                    service: Some((s.namespace.clone(), s.name.clone())),
                    fixed: None,
                });
            }
            if let Some(np) = p.node_port {
                for n in cluster
                    .nodes
                    .iter()
                    .filter(|n| have_node.contains(n.name.as_str()))
                {
                    for v4 in [true, false] {
                        if let Some(ip) = node_addr(n, v4) {
                            targets.push(Target {
                                kind: TargetKind::NodePort,
                                label: match ip {
                                    IpAddr::V6(a) => format!("[{a}]:{np}/{}", proto_name(proto)),
                                    a => format!("{a}:{np}/{}", proto_name(proto)),
                                },
                                dst: ip,
                                proto,
                                port: Some(np),
                                node: Some(n.name.clone()),
                                endpoints: Vec::new(),
                                service: Some((s.namespace.clone(), s.name.clone())),
                                fixed: None,
                            });
                        }
                    }
                }
            }
        }
    }
    if wanted(1) {
        for n in cluster
            .nodes
            .iter()
            .filter(|n| have_node.contains(n.name.as_str()))
        {
            for v4 in [true, false] {
                if let Some(ip) = node_addr(n, v4) {
                    targets.push(Target {
                        kind: TargetKind::Node,
                        label: format!("node/{}", n.name),
                        dst: ip,
                        proto: 1,
                        port: None,
                        node: Some(n.name.clone()),
                        endpoints: Vec::new(),
                        service: None,
                        fixed: None,
                    });
                }
            }
        }
        // One pod per node: the first class's representative.
        let mut seen = HashSet::new();
        for (ci, c) in sources.iter().enumerate() {
            if c.kind != SourceKind::Pods || !seen.insert(c.node.clone()) {
                continue;
            }
            for ip in &c.ips[0] {
                targets.push(Target {
                    kind: TargetKind::Pod,
                    label: c.representative.clone(),
                    dst: *ip,
                    proto: 1,
                    port: None,
                    node: c.node.clone(),
                    endpoints: Vec::new(),
                    service: None,
                    fixed: None,
                });
            }
            let _ = ci;
        }
    }
    if opts.existing {
        existing_connections(world, &mut targets, &wanted);
    }
    let mut walks = Vec::new();
    for (ti, t) in targets.iter().enumerate() {
        if let Some((src, _)) = t.fixed {
            // An existing connection: from the member that holds its source address.
            let found = sources.iter().enumerate().find_map(|(si, s)| {
                let m = s.ips.iter().position(|ips| ips.contains(&src))?;
                (s.kind != SourceKind::External).then_some((si, m))
            });
            match found {
                Some((si, m)) => walks.push(Walk {
                    source: si,
                    member: m,
                    target: ti,
                    weight: 1,
                }),
                None => skipped.push(format!(
                    "{}: its client {src} is no pod or node of the cluster view",
                    t.label
                )),
            }
            continue;
        }
        for (si, s) in sources.iter().enumerate() {
            // NodePorts from outside; everything else from inside.
            if (t.kind == TargetKind::NodePort) != (s.kind == SourceKind::External) {
                continue;
            }
            if s.only_service.is_some() && s.only_service != t.service {
                continue;
            }
            if s.kind == SourceKind::Pods
                && !s.ips[0].iter().any(|ip| ip.is_ipv4() == t.dst.is_ipv4())
            {
                continue;
            }
            if s.kind == SourceKind::External && s.ips[0][0].is_ipv4() != t.dst.is_ipv4() {
                continue;
            }
            // A pod probing itself says nothing; members that are endpoints of this Service
            // (hairpin: kube-proxy's per-endpoint chain names them) walk it themselves; one
            // of the rest stands for the rest.
            let mut rest: Vec<usize> = Vec::new();
            for m in 0..s.members.len() {
                let mine = |ip: &IpAddr| s.kind == SourceKind::Pods && s.ips[m].contains(ip);
                if t.kind == TargetKind::Pod && mine(&t.dst) {
                    continue;
                }
                if t.endpoints.iter().any(mine) {
                    walks.push(Walk {
                        source: si,
                        member: m,
                        target: ti,
                        weight: 1,
                    });
                } else {
                    rest.push(m);
                }
            }
            if let Some(&m) = rest.first() {
                walks.push(Walk {
                    source: si,
                    member: m,
                    target: ti,
                    weight: rest.len(),
                });
            }
        }
    }
    Plan {
        sources,
        targets,
        walks,
        skipped,
    }
}

/// A free address of the first node's underlay subnet (the prefix of the host address that is
/// its InternalIP): the highest one no namespace of the bundle owns.
fn free_underlay_address(world: &World<'_>, cluster: &ClusterView) -> Option<IpAddr> {
    for n in &cluster.nodes {
        let Some(ip) = node_addr(n, true) else {
            continue;
        };
        let Some(net) = world
            .ns
            .iter()
            .filter(|v| v.is_host && v.node == n.name)
            .flat_map(|v| &v.snap.addresses)
            .find(|a| a.addr.addr() == ip)
            .map(|a| a.addr.trunc())
        else {
            continue;
        };
        let (IpAddr::V4(first), IpAddr::V4(last)) = (net.network(), net.broadcast()) else {
            continue;
        };
        let (first, last) = (u32::from(first), u32::from(last));
        return (first + 1..last)
            .rev()
            .take(4096)
            .map(|a| IpAddr::from(std::net::Ipv4Addr::from(a)))
            .find(|a| world.owners_of(*a).is_empty());
    }
    None
}

/// Most outside clients chosen from the nodes' routes (see [`routed_clients`]).
const ROUTED_CLIENTS: usize = 16;

/// One outside client per distinct route of the nodes' host namespaces (table main, unicast,
/// not the default route) towards addresses outside the pod network: the highest address of
/// the route's prefix that no namespace of the bundle owns. The kernel treats clients behind
/// different routes differently (rp_filter, asymmetric replies); clients behind the same route
/// alike. At most [`ROUTED_CLIENTS`].
fn routed_clients(world: &World<'_>, cluster: &ClusterView) -> Vec<IpAddr> {
    let pod_nets: Vec<IpNet> = cluster
        .nodes
        .iter()
        .flat_map(|n| n.pod_cidrs.iter().copied())
        .chain(cluster.flannel_network)
        .collect();
    let mut out: Vec<IpAddr> = Vec::new();
    let mut prefixes: BTreeSet<IpNet> = BTreeSet::new();
    for v in world.ns.iter().filter(|v| v.is_host) {
        for r in &v.snap.routes {
            if r.table != 254
                || r.route_type != netray_snapshot::RouteType::Unicast
                || r.dst.prefix_len() == 0
                || !r.dst.addr().is_ipv4()
                || pod_nets
                    .iter()
                    .any(|p| p.contains(&r.dst.network()) || r.dst.contains(&p.network()))
            {
                continue;
            }
            prefixes.insert(r.dst.trunc());
        }
    }
    for p in prefixes {
        let (IpAddr::V4(first), IpAddr::V4(last)) = (p.network(), p.broadcast()) else {
            continue;
        };
        let (first, last) = (u32::from(first), u32::from(last));
        let range = if p.prefix_len() >= 31 {
            first..last + 1
        } else {
            first + 1..last
        };
        if let Some(ip) = range
            .rev()
            .take(4096)
            .map(|a| IpAddr::from(std::net::Ipv4Addr::from(a)))
            .find(|a| world.owners_of(*a).is_empty())
            && !out.contains(&ip)
        {
            out.push(ip);
        }
        if out.len() >= ROUTED_CLIENTS {
            break;
        }
    }
    out
}

/// Existing UDP connections with DNAT in the collected conntrack tables, one target each
/// (deduplicated by tuple): walked with their real source port, they follow their entry.
fn existing_connections(world: &World<'_>, targets: &mut Vec<Target>, wanted: &dyn Fn(u8) -> bool) {
    if !wanted(17) {
        return;
    }
    let mut seen = HashSet::new();
    for v in &world.ns {
        for e in v.snap.conntrack.iter().flat_map(|c| &c.entries) {
            if e.proto != 17 || !e.status.iter().any(|x| x == "DST_NAT") {
                continue;
            }
            let (Some(sport), Some(dport)) = (e.orig.sport, e.orig.dport) else {
                continue;
            };
            if !seen.insert((e.orig.src, sport, e.orig.dst, dport)) {
                continue;
            }
            targets.push(Target {
                kind: TargetKind::Existing,
                label: match e.orig.dst {
                    IpAddr::V6(a) => format!("[{a}]:{dport}/udp"),
                    a => format!("{a}:{dport}/udp"),
                },
                dst: e.orig.dst,
                proto: 17,
                port: Some(dport),
                node: None,
                endpoints: Vec::new(),
                service: None,
                fixed: Some((e.orig.src, sport)),
            });
        }
    }
}

/// Clusters with at most this many pods walk every pod (no classes).
pub const EVERY_POD_UP_TO: usize = 64;

/// Pods of every node, in equivalence classes (see the module doc); every pod its own class
/// with `every_pod`.
fn pod_classes(
    world: &World<'_>,
    cluster: &ClusterView,
    every_pod: bool,
    skipped: &mut Vec<String>,
) -> Vec<SourceClass> {
    let by_pod: HashMap<&str, usize> = world.pods.iter().map(|(i, n)| (n.as_str(), *i)).collect();
    // A small cluster: every pod is walked.
    let every_pod = every_pod || cluster.pods.len() <= EVERY_POD_UP_TO;
    let mentions = if every_pod {
        Vec::new()
    } else {
        address_mentions(world)
    };
    // (node, fingerprint) → (pod name, its addresses).
    type Members = Vec<(String, Vec<IpAddr>)>;
    let mut classes: BTreeMap<(String, String), Members> = BTreeMap::new();
    for p in cluster
        .pods
        .iter()
        .filter(|p| !p.host_network && !p.ips.is_empty())
    {
        let name = format!("{}/{}", p.namespace, p.name);
        let Some(&ns) = by_pod.get(name.as_str()) else {
            skipped.push(format!(
                "pod/{name}: its namespace is not in the bundle (not walked as a source)"
            ));
            continue;
        };
        let node = world.ns[ns].node.to_string();
        let fp = if every_pod {
            name.clone()
        } else {
            let cidrs: Vec<IpNet> = cluster
                .node(&node)
                .map(|n| n.pod_cidrs.clone())
                .unwrap_or_default();
            fingerprint(world, ns, &p.ips, &cidrs, &mentions)
        };
        classes
            .entry((node, fp))
            .or_default()
            .push((name, p.ips.clone()));
    }
    classes
        .into_iter()
        .map(|((node, _), mut members)| {
            members.sort();
            SourceClass {
                kind: SourceKind::Pods,
                node: Some(node),
                only_service: None,
                representative: format!("pod/{}", members[0].0),
                ips: members.iter().map(|m| m.1.clone()).collect(),
                members: members
                    .into_iter()
                    .map(|m| format!("pod/{}", m.0))
                    .collect(),
            }
        })
        .collect()
}

/// Every address or prefix that a firewall rule (outside kube-proxy's per-endpoint chains),
/// an ipset, a route or a neighbour entry of any namespace names.
fn address_mentions(world: &World<'_>) -> Vec<(IpNet, BTreeSet<usize>)> {
    let mut out: HashMap<IpNet, BTreeSet<usize>> = HashMap::new();
    let scan =
        |text: &str, ns: usize, out: &mut HashMap<IpNet, BTreeSet<usize>>, skip_sep: bool| {
            for line in text.lines() {
                if skip_sep && line.starts_with("-A KUBE-SEP-") {
                    continue;
                }
                let line = strip_comments(line);
                for tok in line.split(|c: char| {
                    !(c.is_ascii_hexdigit() || c == '.' || c == ':' || c == '/' || c == '-')
                }) {
                    for part in tok.split('-') {
                        let part = part.trim_matches(':');
                        let net = match part.parse::<IpNet>() {
                            Ok(n) => n.trunc(),
                            Err(_) => match part.parse::<IpAddr>() {
                                Ok(a) => IpNet::from(a),
                                Err(_) => continue,
                            },
                        };
                        out.entry(net).or_default().insert(ns);
                    }
                }
            }
        };
    for (i, v) in world.ns.iter().enumerate() {
        let fw = &v.snap.firewall;
        for d in &fw.iptables {
            scan(&d.text, i, &mut out, true);
        }
        for t in fw.nft_json.iter().chain(&fw.ipset) {
            scan(t, i, &mut out, false);
        }
        for r in &v.snap.routes {
            out.entry(r.dst.trunc()).or_default().insert(i);
        }
        for n in &v.snap.neighbours {
            if !v.is_host
                || !v.snap.links.iter().any(|l| {
                    l.name == n.dev && matches!(l.kind, netray_snapshot::LinkKind::Bridge { .. })
                })
            {
                out.entry(IpNet::from(n.dst)).or_default().insert(i);
            }
        }
    }
    out.into_iter().collect()
}

/// An `iptables-save` line without its `-m comment --comment …` texts (words, not matches).
fn strip_comments(line: &str) -> std::borrow::Cow<'_, str> {
    const C: &str = "--comment ";
    if !line.contains(C) {
        return line.into();
    }
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(i) = rest.find(C) {
        out.push_str(&rest[..i]);
        let after = &rest[i + C.len()..];
        rest = if let Some(q) = after.strip_prefix('"') {
            // A quoted comment ends at the next unescaped quote.
            let mut end = q.len();
            let mut esc = false;
            for (j, c) in q.char_indices() {
                match c {
                    '\\' if !esc => esc = true,
                    '"' if !esc => {
                        end = j + 1;
                        break;
                    }
                    _ => esc = false,
                }
            }
            &q[end.min(q.len())..]
        } else {
            after.find(' ').map_or("", |j| &after[j..])
        };
    }
    out.push_str(rest);
    out.into()
}

/// What tells pod namespace `ns` apart from its node's other pods as a source (see the module
/// doc): its namespace and host port with its own addresses and MACs replaced, its node's
/// neighbour and FDB entries for it, and the prefixes inside its node's pod CIDR that hold it.
fn fingerprint(
    world: &World<'_>,
    ns: usize,
    ips: &[IpAddr],
    cidrs: &[IpNet],
    mentions: &[(IpNet, BTreeSet<usize>)],
) -> String {
    let v = &world.ns[ns];
    let mut own: Vec<String> = v
        .snap
        .addresses
        .iter()
        .map(|a| a.addr.addr().to_string())
        .collect();
    own.extend(ips.iter().map(IpAddr::to_string));
    let macs: Vec<String> = v
        .snap
        .links
        .iter()
        .filter(|l| !matches!(l.kind, netray_snapshot::LinkKind::Loopback))
        .filter_map(|l| l.mac.as_deref().map(str::to_ascii_lowercase))
        .collect();
    let scrub = |mut j: serde_json::Value, drop: &[&str]| -> String {
        fn walk(j: &mut serde_json::Value, drop: &[&str]) {
            match j {
                serde_json::Value::Object(m) => {
                    for k in drop {
                        m.remove(*k);
                    }
                    m.values_mut().for_each(|x| walk(x, drop));
                }
                serde_json::Value::Array(a) => a.iter_mut().for_each(|x| walk(x, drop)),
                _ => {}
            }
        }
        walk(&mut j, drop);
        let mut t = j.to_string();
        for (i, a) in own.iter().enumerate() {
            t = t
                .replace(&format!("\"{a}\""), &format!("\"SELF{i}\""))
                .replace(&format!("\"{a}/"), &format!("\"SELF{i}/"));
        }
        for (i, m) in macs.iter().enumerate() {
            t = t.replace(&format!("\"{m}\""), &format!("\"MAC{i}\""));
        }
        t
    };
    let mut fp = scrub(
        serde_json::to_value(v.snap).unwrap_or_default(),
        &["id", "conntrack", "sockets", "peer_netns", "peer_ifindex"],
    );
    // The host side of each veth, and the node's entries about this pod.
    for (li, peer) in v.peer.iter().enumerate() {
        let Some((hn, hl)) = *peer else {
            fp.push_str(&format!("|link{li}:no-peer"));
            continue;
        };
        let h = &world.ns[hn];
        let Some(link) = h.snap.links.get(hl) else {
            continue;
        };
        fp.push_str(&format!(
            "|host:{}",
            scrub(
                serde_json::to_value(link).unwrap_or_default(),
                &["name", "ifindex", "mac", "peer_netns", "peer_ifindex"],
            )
        ));
        let infix = format!(".{}.", link.name.replace('.', "/"));
        for (k, val) in &h.snap.sysctls {
            if k.contains(&infix) {
                fp.push_str(&format!("|{}={}", k.replace(&infix, ".PORT."), val.trim()));
            }
        }
        for n in h
            .snap
            .neighbours
            .iter()
            .filter(|n| own.contains(&n.dst.to_string()))
        {
            let mac_ok = n
                .lladdr
                .as_deref()
                .is_some_and(|l| macs.contains(&l.to_ascii_lowercase()));
            fp.push_str(&format!(
                "|neigh:{}:{}:{:?}:{mac_ok}",
                n.dev == link.name,
                own.iter()
                    .position(|a| *a == n.dst.to_string())
                    .unwrap_or(0),
                n.state
            ));
        }
        for f in h
            .snap
            .fdb
            .iter()
            .filter(|f| macs.contains(&f.mac.to_ascii_lowercase()))
        {
            fp.push_str(&format!("|fdb:{}:{:?}", f.dev == link.name, f.state));
        }
    }
    // Prefixes strictly inside the node's pod CIDR that hold this pod.
    // (Its own namespace's entries are in the fingerprint already, with its address replaced.)
    let mut inside: Vec<String> = mentions
        .iter()
        .filter(|(_, by)| by.iter().any(|&n| n != ns))
        .map(|(m, _)| m)
        .filter(|m| {
            let holds = ips.iter().any(|ip| m.contains(ip));
            holds
                && (cidrs
                    .iter()
                    .any(|c| c.contains(&m.network()) && m.prefix_len() > c.prefix_len())
                    || cidrs.is_empty() && m.prefix_len() == m.max_prefix_len())
        })
        .map(ToString::to_string)
        .collect();
    inside.sort();
    fp.push_str(&format!("|mentions:{}", inside.join(",")));
    fp
}

/// Walk the plan over `cores` threads, counting finished walks in `progress`, and group the
/// failures by cause. `findings` are the scan's findings (supporting evidence for causes).
pub fn run(
    world: &World<'_>,
    engine: &RulesetEngine,
    cluster: &ClusterView,
    findings: &[Finding],
    plan: &Plan,
    opts: &Options,
    progress: &AtomicUsize,
) -> Audit {
    let next = AtomicUsize::new(0);
    let results: Mutex<Vec<WalkResult>> = Mutex::new(Vec::with_capacity(plan.walks.len()));
    // Each worker takes the next walk until none is left.
    let work = || {
        let ctx = Context {
            findings,
            world,
            pod_network: None,
            rewalk: None,
            collateral: None,
        };
        let mut local = Vec::new();
        loop {
            let i = next.fetch_add(1, Ordering::Relaxed);
            let Some(w) = plan.walks.get(i) else { break };
            local.push(match walk_one(world, engine, &ctx, plan, w, opts) {
                Ok((c, n)) => (i, Ok(c), n),
                Err(e) => (i, Err(e), 0),
            });
            progress.fetch_add(1, Ordering::Relaxed);
        }
        results
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(local);
    };
    std::thread::scope(|s| {
        for _ in 1..opts.threads.max(1) {
            s.spawn(work);
        }
        work();
    });
    let mut results = results.into_inner().unwrap_or_else(|e| e.into_inner());
    results.sort_by_key(|r| r.0);
    group(world, cluster, plan, results, opts.list_flows)
}

/// Walk one flow: the causes of its failing branches by endpoint, and its endpoint count.
#[allow(clippy::type_complexity)]
fn walk_one(
    world: &World<'_>,
    engine: &RulesetEngine,
    ctx: &Context,
    plan: &Plan,
    w: &Walk,
    opts: &Options,
) -> Result<(Vec<(String, Finding)>, usize), String> {
    let s = &plan.sources[w.source];
    let t = &plan.targets[w.target];
    let v4 = t.dst.is_ipv4();
    let mut walk_opts = opts.walk;
    let mut sport = opts.sport;
    let (src, start) = match (s.kind, t.fixed) {
        (_, Some((src, port))) => {
            walk_opts.collected_conntrack = true;
            sport = port;
            (src, Start::Auto)
        }
        _ => match s.kind {
            SourceKind::Host => (
                s.ips[0]
                    .iter()
                    .copied()
                    .find(|ip| ip.is_ipv4() == v4)
                    .unwrap_or(t.dst),
                Start::Host(s.node.clone().unwrap_or_default()),
            ),
            SourceKind::Pods => (
                s.ips[w.member]
                    .iter()
                    .copied()
                    .find(|ip| ip.is_ipv4() == v4)
                    .ok_or("the pod has no address of the target's family")?,
                Start::Auto,
            ),
            // A client the bundle holds outside the nodes and pods (a load balancer's or router's
            // namespace owning the address) sends from there; any other enters the target's node
            // from outside (also when a node wrongly holds the address: seed 004).
            SourceKind::External
                if world
                    .owners_of(s.ips[0][0])
                    .iter()
                    .any(|(n, _)| !world.ns[*n].is_host && world.pod_of(*n).is_none()) =>
            {
                (s.ips[0][0], Start::Auto)
            }
            SourceKind::External => (s.ips[0][0], Start::Node(t.node.clone().unwrap_or_default())),
        },
    };
    let flow = Flow {
        src,
        dst: t.dst,
        proto: t.proto,
        sport,
        dport: t.port,
        size: opts.size,
        start,
    };
    let mut tr = trace(world, engine, &flow, walk_opts).map_err(|e| e.to_string())?;
    // A new connection from a node's socket (a pod's or its own) to a Service: cgroup socket
    // programs may rewrite the address first.
    if t.service.is_some()
        && t.fixed.is_none()
        && matches!(flow.start, Start::Auto | Start::Host(_))
    {
        netray_datapath::sockprog::mark_socket_programs(world, &mut tr, flow.proto);
    }
    let traced = TracedFlow {
        from: s.members[w.member].clone(),
        to: t.label.clone(),
        trace: tr,
    };
    let endpoints: BTreeSet<String> = traced
        .trace
        .branches
        .iter()
        .map(|b| crate::diagnose::endpoint_of(b, &traced.trace))
        .collect();
    let mut causes: Vec<(String, Finding)> = branch_causes(&traced, ctx)
        .into_iter()
        .map(|(e, _, mut f)| {
            // kube-proxy rejects a Service without ready endpoints by design: worth listing,
            // not a datapath failure.
            if f.code == "no-endpoints" {
                f.severity = Severity::Info;
            }
            (e, f)
        })
        .collect();
    if traced.trace.truncated {
        causes.push((
            t.label.clone(),
            Finding {
                code: "uncertain-rule",
                severity: Severity::Warning,
                node: s.node.clone().unwrap_or_default(),
                netns: "host".into(),
                pod: None,
                objects: Vec::new(),
                evidence: vec!["the walk stopped at the branch limit (--max-branches)".into()],
                explanation: "Not every branch was walked: raise --max-branches.".into(),
                fix: "netray audit --max-branches N with a larger N".into(),
                fix_commands: Vec::new(),
                proof: None,
            },
        ));
    }
    Ok((causes, endpoints.len().max(1)))
}

type WalkResult = (usize, Result<Vec<(String, Finding)>, String>, usize);

/// Merge the walks' causes into groups.
fn group(
    world: &World<'_>,
    cluster: &ClusterView,
    plan: &Plan,
    results: Vec<WalkResult>,
    list_flows: bool,
) -> Audit {
    // Where endpoints live: pods and nodes of the cluster view, else the snapshot owning it.
    let mut node_of: HashMap<IpAddr, String> = HashMap::new();
    for p in &cluster.pods {
        if let Some(n) = &p.node {
            for ip in &p.ips {
                node_of.insert(*ip, n.clone());
            }
        }
    }
    for n in &cluster.nodes {
        for a in &n.addresses {
            if let Ok(ip) = a.address.parse::<IpAddr>() {
                node_of.insert(ip, n.name.clone());
            }
        }
    }
    let endpoint_node = |e: &str| -> Option<String> {
        let host = e
            .strip_prefix('[')
            .and_then(|x| x.split(']').next())
            .unwrap_or_else(|| e.rsplit_once(':').map_or(e, |(h, _)| h));
        let ip: IpAddr = host.parse().or_else(|_| e.parse()).ok()?;
        node_of.get(&ip).cloned().or_else(|| {
            world
                .owners_of(ip)
                .first()
                .map(|(ns, _)| world.ns[*ns].node.to_string())
        })
    };
    struct Acc {
        cause: Finding,
        flows: usize,
        walks: BTreeSet<usize>,
        sources: BTreeSet<usize>,
        targets: BTreeSet<usize>,
        endpoints: BTreeSet<String>,
        /// Failing (walk, endpoint) pairs already counted.
        counted: HashSet<(usize, String)>,
        example: Option<Example>,
        in_source: bool,
        failing: BTreeSet<FailingFlow>,
    }
    let mut groups: Vec<Acc> = Vec::new();
    let mut index: HashMap<(&'static str, String, String, Vec<String>), usize> = HashMap::new();
    let mut not_walked = Vec::new();
    let mut flows = 0;
    let mut failing: HashSet<(usize, String)> = HashSet::new();
    let mut failing_flows = 0;
    for (wi, r, n) in results {
        let w = &plan.walks[wi];
        let s = &plan.sources[w.source];
        let t = &plan.targets[w.target];
        let causes = match r {
            Ok(c) => c,
            Err(e) => {
                not_walked.push(NotWalked {
                    from: s.members[w.member].clone(),
                    to: t.label.clone(),
                    error: e,
                });
                continue;
            }
        };
        flows += n * w.weight;
        for (endpoint, cause) in causes {
            if failing.insert((wi, endpoint.clone())) {
                failing_flows += w.weight;
            }
            let key = group_key(&cause);
            let gi = *index.entry(key).or_insert_with(|| {
                groups.push(Acc {
                    cause,
                    flows: 0,
                    walks: BTreeSet::new(),
                    sources: BTreeSet::new(),
                    targets: BTreeSet::new(),
                    endpoints: BTreeSet::new(),
                    counted: HashSet::new(),
                    example: None,
                    in_source: false,
                    failing: BTreeSet::new(),
                });
                groups.len() - 1
            });
            let g = &mut groups[gi];
            if g.counted.insert((wi, endpoint.clone())) {
                g.flows += w.weight;
            }
            g.walks.insert(wi);
            if list_flows {
                g.failing.insert(FailingFlow {
                    from: s.members[w.member].clone(),
                    to: t.label.clone(),
                    endpoint: endpoint.clone(),
                    members: w.weight,
                });
            }
            g.in_source |= g.cause.pod.as_deref().map(|p| format!("pod/{p}")).as_ref()
                == Some(&s.members[w.member]);
            g.sources.insert(w.source);
            g.targets.insert(w.target);
            g.endpoints.insert(endpoint);
            g.example.get_or_insert_with(|| Example {
                from: s.members[w.member].clone(),
                to: t.label.clone(),
                sport: t.fixed.map(|f| f.1),
            });
        }
    }
    let mut out: Vec<Group> = groups
        .into_iter()
        .map(|g| {
            let sources: Vec<&SourceClass> = g.sources.iter().map(|&i| &plan.sources[i]).collect();
            let source_nodes: BTreeSet<String> =
                sources.iter().filter_map(|s| s.node.clone()).collect();
            let endpoint_nodes: BTreeSet<String> = g
                .endpoints
                .iter()
                .filter_map(|e| endpoint_node(e))
                .collect();
            let targets: BTreeSet<String> = g
                .targets
                .iter()
                .map(|&i| plan.targets[i].label.clone())
                .collect();
            let from = describe_sources(&sources);
            let to = if endpoint_nodes.len() == 1 {
                format!(
                    "{} on {}",
                    plural(g.endpoints.len(), "endpoint"),
                    endpoint_nodes.iter().next().cloned().unwrap_or_default()
                )
            } else if endpoint_nodes.is_empty() {
                plural(g.endpoints.len(), "endpoint")
            } else {
                format!(
                    "{} on {} nodes",
                    plural(g.endpoints.len(), "endpoint"),
                    endpoint_nodes.len()
                )
            };
            let classed = sources.iter().any(|s| s.members.len() > 1);
            let at = match &g.cause.pod {
                Some(p) if g.in_source && classed => format!(
                    "{} (in each source pod's own namespace, e.g. pod/{p})",
                    g.cause.node
                ),
                Some(p) => format!("{} (pod/{p})", g.cause.node),
                None if g.cause.netns == "host" => g.cause.node.clone(),
                None => format!("{}/{}", g.cause.node, g.cause.netns),
            };
            Group {
                summary: format!(
                    "{} from {from} to {to} fail{}: {} on {at}",
                    plural(g.flows, "flow"),
                    if g.flows == 1 { "s" } else { "" },
                    g.cause.code
                ),
                flows: g.flows,
                walks: g.walks.len(),
                sources: sources.iter().map(|s| s.representative.clone()).collect(),
                source_nodes: source_nodes.into_iter().collect(),
                targets: targets.into_iter().collect(),
                endpoints: g.endpoints.into_iter().collect(),
                endpoint_nodes: endpoint_nodes.into_iter().collect(),
                example: g.example.unwrap_or(Example {
                    from: String::new(),
                    to: String::new(),
                    sport: None,
                }),
                in_source: g.in_source,
                failing: g.failing.into_iter().collect(),
                cause: g.cause,
            }
        })
        .collect();
    out.sort_by(|a, b| {
        (a.cause.severity, std::cmp::Reverse(a.flows), &a.summary).cmp(&(
            b.cause.severity,
            std::cmp::Reverse(b.flows),
            &b.summary,
        ))
    });
    Audit {
        schema: SCHEMA,
        summary: Summary {
            source_classes: plan.sources.len(),
            sources: plan.sources.iter().map(|s| s.members.len()).sum(),
            targets: plan.targets.len(),
            walks: plan.walks.len(),
            flows,
            failing_flows,
            not_walked: not_walked.len(),
        },
        groups: out,
        not_walked,
        classes: plan
            .sources
            .iter()
            .map(|s| SourceClassReport {
                kind: s.kind,
                node: s.node.clone(),
                representative: s.representative.clone(),
                members: s.members.len(),
            })
            .collect(),
        skipped: plan.skipped.clone(),
    }
}

/// What groups failures: [`cause_identity`], except that a failed route lookup is one cause
/// whatever destination was looked up (the namespace lacks the route).
fn group_key(f: &Finding) -> (&'static str, String, String, Vec<String>) {
    let (code, node, netns, _) = cause_identity(f);
    let mut keys: Vec<String> = f
        .objects
        .iter()
        .map(|o| match o {
            KernelObject::RouteLookup { at, .. } => {
                format!("{}/{}/route-lookup", at.node, at.netns)
            }
            o => o.key(),
        })
        .collect();
    keys.sort();
    keys.dedup();
    (code, node, netns, keys)
}

fn plural(n: usize, what: &str) -> String {
    format!("{n} {what}{}", if n == 1 { "" } else { "s" })
}

/// `node17's pods`, `node node3`, `external/203.0.113.1`; several: listed up to three, else
/// counted by node.
fn describe_sources(sources: &[&SourceClass]) -> String {
    let mut parts: Vec<String> = Vec::new();
    for s in sources {
        let d = match (s.kind, &s.node) {
            (SourceKind::Pods, Some(n)) => format!("{n}'s pods"),
            (SourceKind::Host, Some(n)) => format!("node {n}"),
            _ => s.representative.clone(),
        };
        if !parts.contains(&d) {
            parts.push(d);
        }
    }
    if parts.len() <= 3 {
        return parts.join(", ");
    }
    let nodes: BTreeSet<&str> = sources.iter().filter_map(|s| s.node.as_deref()).collect();
    let pods = sources.iter().any(|s| s.kind == SourceKind::Pods);
    let hosts = sources.iter().any(|s| s.kind == SourceKind::Host);
    let what = match (pods, hosts) {
        (true, true) => "pods and hosts",
        (true, false) => "pods",
        _ => "hosts",
    };
    format!("{what} on {} nodes", nodes.len())
}
