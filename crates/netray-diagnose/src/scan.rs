//! `netray scan`: the check catalog over every node and namespace of a bundle.
//!
//! Each check reads the snapshots (and the cluster view when there is one) and reports
//! findings with quoted evidence. Checks are independent; [`scan`] runs them all.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;
use netray_datapath::world::NsIdx;
use netray_datapath::{RulesetEngine, World};
use netray_kube::{ClusterView, EndpointSlice, Service, ServicePort};
use netray_netfilter::ipt::Dump;
use netray_netfilter::{HostContext, Ruleset};
use netray_snapshot::{Bundle, LinkKind, NetnsRole, NetnsSnapshot, NodeSnapshot, Route, RouteType};

use crate::finding::{Finding, Severity};
pub use netray_datapath::fib::route_text;

/// A namespace of the bundle with the node it was collected on.
#[derive(Clone, Copy)]
pub struct Ns<'a> {
    /// Node snapshot it came from.
    pub node: &'a NodeSnapshot,
    /// The namespace.
    pub ns: &'a NetnsSnapshot,
    /// Its index in the datapath's [`World`] (and [`RulesetEngine`]).
    pub idx: NsIdx,
}

impl<'a> Ns<'a> {
    /// `host` for the host namespace, else the namespace's display name.
    pub fn label(&self) -> String {
        if self.ns.role == NetnsRole::Host {
            "host".to_string()
        } else {
            self.ns.display_name()
        }
    }

    /// Where this namespace is, for [`netray_datapath::KernelObject`] references.
    pub fn place(&self) -> netray_datapath::Place {
        netray_datapath::Place {
            node: self.node.node.name.clone(),
            netns: self.label(),
        }
    }

    /// A reference to sysctl `key` as collected here.
    pub fn sysctl_obj(&self, key: &str) -> netray_datapath::KernelObject {
        netray_datapath::KernelObject::Sysctl {
            at: self.place(),
            key: netray_snapshot::sysctl_key(key),
            value: self.ns.sysctl(key).map(|v| v.trim().to_string()),
        }
    }

    /// A finding about this namespace.
    pub fn finding(
        &self,
        code: &'static str,
        severity: Severity,
        evidence: Vec<String>,
        explanation: String,
        fix: String,
    ) -> Finding {
        Finding {
            code,
            severity,
            node: self.node.node.name.clone(),
            netns: self.label(),
            pod: None,
            objects: Vec::new(),
            evidence,
            explanation,
            fix,
            fix_commands: Vec::new(),
            proof: None,
        }
    }
}

/// Everything the checks read, indexed once: the datapath's [`World`] (one entry per
/// namespace, a namespace seen from several nodes of one kernel counted once) and its parsed
/// firewalls, so a `diagnose` that also walks flows parses each ruleset once.
pub struct ScanInput<'a> {
    /// The bundle.
    pub bundle: &'a Bundle,
    /// The cluster view, when the bundle has one.
    pub cluster: Option<&'a ClusterView>,
    /// Every namespace once, host namespaces first.
    pub namespaces: Vec<Ns<'a>>,
    /// The parsed firewalls, by [`Ns::idx`].
    pub engine: &'a RulesetEngine<'a>,
    /// Position in `namespaces` of each [`World`] namespace index.
    pos: Vec<Option<usize>>,
    /// The veth peer (namespace, link) of each link, by [`World`] namespace index: resolved by
    /// the world on `(boot_id, inode)`, so a pod of another node sharing an inode is not it.
    peers: Vec<Vec<Option<(NsIdx, usize)>>>,
    /// Whether `namespaces[i]` is a workload (see [`ScanInput::is_workload`]).
    workload: Vec<bool>,
    /// Workloads (positions in `namespaces`) by the node snapshot they were seen in.
    by_node: HashMap<usize, Vec<usize>>,
    /// The first of `namespaces` holding each interface address.
    owners: HashMap<IpAddr, usize>,
    /// [`ScanInput::pod_cidrs`], computed once.
    pod_cidrs: BTreeMap<String, Vec<IpNet>>,
    /// EndpointSlices by Service `(namespace, name)`, in the cluster view's order.
    slices: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>>,
    /// The namespaces checks report about, by [`World`] namespace index (`None`: every one;
    /// see [`scan_scoped`]). Checks still read every namespace as context.
    scope: Option<Vec<bool>>,
}

impl<'a> ScanInput<'a> {
    /// Index the namespaces of `world`, whose firewalls `engine` parsed.
    pub fn new(
        world: &World<'a>,
        engine: &'a RulesetEngine,
        cluster: Option<&'a ClusterView>,
    ) -> ScanInput<'a> {
        let bundle = world.bundle;
        let mut namespaces: Vec<Ns<'a>> = world
            .ns
            .iter()
            .enumerate()
            .filter_map(|(idx, v)| {
                let node = bundle.nodes.iter().find(|n| n.node.name == v.node)?;
                Some(Ns {
                    node,
                    ns: v.snap,
                    idx,
                })
            })
            .collect();
        namespaces.sort_by_key(|n| n.ns.role != NetnsRole::Host);
        let mut pos = vec![None; world.ns.len()];
        for (i, n) in namespaces.iter().enumerate() {
            pos[n.idx] = Some(i);
        }
        let peers = world.ns.iter().map(|v| v.peer.clone()).collect();
        // Pod IPs of the cluster view, and the namespaces plugged into a bridge of their
        // node's host namespace (node snapshot, peer inode).
        let pod_ips: HashSet<IpAddr> = cluster
            .iter()
            .flat_map(|c| &c.pods)
            .filter(|p| !p.host_network)
            .flat_map(|p| p.ips.iter().copied())
            .collect();
        let mut bridged: HashSet<(usize, u64)> = HashSet::new();
        for node in &bundle.nodes {
            for l in node.host().iter().flat_map(|h| &h.links) {
                if let (
                    Some(_),
                    LinkKind::Veth {
                        peer_netns: Some(p),
                        ..
                    },
                ) = (&l.master, &l.kind)
                {
                    bridged.insert((node_key(node), *p));
                }
            }
        }
        let with_pods = cluster.is_some_and(|c| !c.pods.is_empty());
        let workload: Vec<bool> = namespaces
            .iter()
            .map(|n| {
                if n.ns.role == NetnsRole::Host {
                    return false;
                }
                let addrs: Vec<IpAddr> =
                    n.ns.addresses
                        .iter()
                        .filter(|a| a.scope == "global" && a.dev != "lo")
                        .map(|a| a.addr.addr())
                        .collect();
                if addrs.is_empty() {
                    false
                } else if with_pods {
                    addrs.iter().any(|ip| pod_ips.contains(ip))
                } else {
                    bridged.contains(&(node_key(n.node), n.ns.id.inode))
                }
            })
            .collect();
        let mut by_node: HashMap<usize, Vec<usize>> = HashMap::new();
        for (i, n) in namespaces.iter().enumerate() {
            if workload[i] {
                by_node.entry(node_key(n.node)).or_default().push(i);
            }
        }
        let mut owners: HashMap<IpAddr, usize> = HashMap::new();
        for (i, n) in namespaces.iter().enumerate() {
            for a in &n.ns.addresses {
                owners.entry(a.addr.addr()).or_insert(i);
            }
        }
        let mut slices: HashMap<(&'a str, &'a str), Vec<&'a EndpointSlice>> = HashMap::new();
        for s in cluster.iter().flat_map(|c| &c.endpoint_slices) {
            if let Some(svc) = &s.service {
                slices
                    .entry((s.namespace.as_str(), svc.as_str()))
                    .or_default()
                    .push(s);
            }
        }
        let mut input = ScanInput {
            bundle,
            cluster,
            namespaces,
            engine,
            pos,
            peers,
            workload,
            by_node,
            owners,
            pod_cidrs: BTreeMap::new(),
            slices,
            scope: None,
        };
        input.pod_cidrs = input.compute_pod_cidrs();
        input
    }

    /// The namespace at the other end of link `link` (an index into `n.ns.links`) when it is
    /// a veth whose peer the [`World`] resolved, with the peer link's index.
    pub fn veth_peer(&self, n: &Ns, link: usize) -> Option<(Ns<'a>, usize)> {
        let (pns, pl) = (*self.peers.get(n.idx)?.get(link)?)?;
        Some((self.namespaces[self.pos[pns]?], pl))
    }

    /// Ready endpoint addresses and target ports of Service port `port`, as
    /// [`ClusterView::ready_endpoints`] gives them, through the index of EndpointSlices.
    pub fn ready_endpoints(&self, svc: &Service, port: &ServicePort) -> Vec<(IpAddr, u16)> {
        let mut out = Vec::new();
        let slices = self
            .slices
            .get(&(svc.namespace.as_str(), svc.name.as_str()))
            .map(Vec::as_slice)
            .unwrap_or(&[]);
        for slice in slices {
            let Some(p) = slice
                .ports
                .iter()
                .find(|p| p.name == port.name && p.protocol.eq_ignore_ascii_case(&port.protocol))
            else {
                continue;
            };
            for e in &slice.endpoints {
                if e.conditions.ready {
                    out.extend(e.addresses.iter().map(|a| (*a, p.port)));
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The parsed firewall of a namespace: `None` when it holds no rules, an error message when
    /// a source could not be read.
    pub fn ruleset(&self, n: &Ns) -> Option<&'a Result<Ruleset, String>> {
        self.engine.ruleset(n.idx)
    }

    /// The parsed `iptables-save` dumps of a namespace (none when unreadable or empty).
    pub fn dumps(&self, n: &Ns) -> &'a [Dump] {
        match self.ruleset(n) {
            Some(Ok(r)) => r.iptables(),
            _ => &[],
        }
    }

    /// The host context netfilter matches need (addrtype, masquerade source).
    pub fn host_context(&self, n: &Ns) -> HostContext {
        self.engine.context(n.idx).cloned().unwrap_or_default()
    }

    /// Whether a host namespace must route for others: it is a Kubernetes node of the
    /// cluster view, hosts workload namespaces, or has a bridge or an overlay device.
    pub fn routes_for_others(&self, h: &Ns) -> bool {
        self.cluster
            .is_some_and(|c| c.node(&h.node.node.name).is_some())
            || self.by_node.contains_key(&node_key(h.node))
            || h.ns
                .links
                .iter()
                .any(|l| matches!(l.kind, LinkKind::Bridge { .. } | LinkKind::Vxlan { .. }))
    }

    /// Whether checks report about namespace `n` in this run (always, in a full scan).
    pub fn in_scope(&self, n: &Ns) -> bool {
        self.scope
            .as_ref()
            .is_none_or(|s| s.get(n.idx).copied().unwrap_or(false))
    }

    /// The namespaces checks report about: every one in a full scan, those on the walked
    /// paths in a [`scan_scoped`] run. Checks whose findings name kernel objects iterate these
    /// (and read everything else only as context).
    pub fn subjects(&self) -> impl Iterator<Item = Ns<'a>> + '_ {
        self.namespaces.iter().copied().filter(|n| self.in_scope(n))
    }

    /// The host namespaces among [`ScanInput::subjects`].
    pub fn subject_hosts(&self) -> impl Iterator<Item = Ns<'a>> + '_ {
        self.subjects().filter(|n| n.ns.role == NetnsRole::Host)
    }

    /// Host namespaces (one per node).
    pub fn hosts(&self) -> impl Iterator<Item = Ns<'a>> + '_ {
        self.namespaces
            .iter()
            .copied()
            .filter(|n| n.ns.role == NetnsRole::Host)
    }

    /// Whether a namespace is a workload (pod, VM, container): not a host namespace, with a
    /// global address, holding a pod IP of the cluster view — or, without a cluster view,
    /// plugged into a bridge of its node's host namespace. A lab switch or router is not.
    pub fn is_workload(&self, n: &Ns) -> bool {
        self.pos
            .get(n.idx)
            .copied()
            .flatten()
            .is_some_and(|i| self.workload[i])
    }

    /// Workload namespaces (pods, VMs).
    pub fn workloads(&self) -> impl Iterator<Item = Ns<'a>> + '_ {
        self.namespaces
            .iter()
            .zip(&self.workload)
            .filter(|(_, w)| **w)
            .map(|(n, _)| *n)
    }

    /// Workload namespaces seen in node snapshot `node`, in [`ScanInput::workloads`] order.
    pub fn workloads_on(&self, node: &NodeSnapshot) -> impl Iterator<Item = Ns<'a>> + '_ {
        self.by_node
            .get(&node_key(node))
            .into_iter()
            .flatten()
            .map(|&i| self.namespaces[i])
    }

    /// The namespace owning `ip` as an interface address.
    pub fn owner(&self, ip: IpAddr) -> Option<Ns<'a>> {
        self.owners.get(&ip).map(|&i| self.namespaces[i])
    }

    /// Pod CIDRs per node: from the cluster view, else the subnets of the nodes' `cni0`-like
    /// bridges (a bridge with workload ports and an address).
    pub fn pod_cidrs(&self) -> &BTreeMap<String, Vec<IpNet>> {
        &self.pod_cidrs
    }

    fn compute_pod_cidrs(&self) -> BTreeMap<String, Vec<IpNet>> {
        let mut out: BTreeMap<String, Vec<IpNet>> = BTreeMap::new();
        if let Some(c) = self.cluster {
            for n in &c.nodes {
                if !n.pod_cidrs.is_empty() {
                    out.insert(n.name.clone(), n.pod_cidrs.clone());
                }
            }
        }
        for h in self.hosts() {
            if out.contains_key(&h.node.node.name) {
                continue;
            }
            let cidrs: Vec<IpNet> =
                h.ns.links
                    .iter()
                    .filter(|l| matches!(l.kind, LinkKind::Bridge { .. }))
                    .flat_map(|l| {
                        h.ns.addresses
                            .iter()
                            .filter(move |a| a.dev == l.name && a.scope == "global")
                            .map(|a| a.addr.trunc())
                    })
                    .collect();
            if !cidrs.is_empty() {
                out.insert(h.node.node.name.clone(), cidrs);
            }
        }
        out
    }
}

/// Identity of a node snapshot of the bundle (its address), as [`std::ptr::eq`] compares them.
fn node_key(n: &NodeSnapshot) -> usize {
    n as *const NodeSnapshot as usize
}

/// The sysctl name of a per-interface IPv4 setting, as `sysctl` prints it (dots in interface
/// names become slashes: `net.ipv4.conf.flannel/1.forwarding`).
pub fn conf_key(iface: &str, key: &str) -> String {
    format!("net.ipv4.conf.{}.{key}", iface.replace('.', "/"))
}

/// The effective value of an integer per-interface IPv4 sysctl as the kernel combines it:
/// `max(all, IFACE)` for rp_filter, arp_ignore, and the like.
pub fn conf_max(ns: &NetnsSnapshot, iface: &str, key: &str) -> Option<u32> {
    let all = ns
        .sysctl(&format!("net.ipv4.conf.all.{key}"))
        .and_then(|v| v.trim().parse::<u32>().ok());
    let dev = ns
        .sysctl(&conf_key(iface, key))
        .and_then(|v| v.trim().parse::<u32>().ok());
    match (all, dev) {
        (Some(a), Some(d)) => Some(a.max(d)),
        (a, d) => a.or(d),
    }
}

pub(crate) fn sysctl_line(ns: &NetnsSnapshot, key: &str) -> Option<String> {
    ns.sysctl(key).map(|v| format!("{key} = {}", v.trim()))
}

pub(crate) fn has_default_route(ns: &NetnsSnapshot, v4: bool) -> bool {
    ns.routes.iter().any(|r| {
        r.dst.prefix_len() == 0
            && r.dst.addr().is_ipv4() == v4
            && r.table != 255
            && r.route_type == RouteType::Unicast
    })
}

/// Longest-prefix match over the unicast/blackhole/... routes of `table`.
pub fn lookup(ns: &NetnsSnapshot, table: u32, dst: IpAddr) -> Option<&Route> {
    ns.routes
        .iter()
        .filter(|r| r.table == table && r.dst.contains(&dst))
        .max_by_key(|r| (r.dst.prefix_len(), std::cmp::Reverse(r.metric)))
}

/// Run every check over a bundle; findings sorted most severe first.
pub fn scan(bundle: &Bundle, cluster: Option<&ClusterView>) -> Vec<Finding> {
    let mut world = World::new(bundle);
    if let Some(c) = cluster {
        world.name_pods(pod_names(c));
    }
    let engine = RulesetEngine::new(&world);
    scan_world(&world, &engine, cluster)
}

/// `(pod IP, "NS/NAME")` of every pod that is not host-network, for
/// [`World::name_pods`].
pub fn pod_names(c: &ClusterView) -> Vec<(IpAddr, String)> {
    c.pods
        .iter()
        .filter(|p| !p.host_network)
        .flat_map(|p| {
            p.ips
                .iter()
                .map(move |ip| (*ip, format!("{}/{}", p.namespace, p.name)))
        })
        .collect()
}

/// Run every check over an indexed world whose firewalls are already parsed.
pub fn scan_world(
    world: &World<'_>,
    engine: &RulesetEngine,
    cluster: Option<&ClusterView>,
) -> Vec<Finding> {
    let input = ScanInput::new(world, engine, cluster);
    let mut out = Vec::new();
    for check in crate::catalog::CATALOG {
        (check.run)(&input, &mut out);
    }
    finish(world, out)
}

/// The findings `netray diagnose` can use about the namespaces in `scope` (by [`World`]
/// namespace index): only the checks whose findings name kernel objects
/// ([`crate::catalog::Check::names_objects`]), each reporting only about namespaces in scope,
/// and of their findings only those that name objects.
///
/// Diagnose joins a finding to a cause only through an object the branch used or that
/// decided it, and such an object lives in a namespace the branch visited; every one of those
/// checks names objects of the namespace it reports about. So with `scope` = the namespaces
/// the flow's branches visited, the result is exactly the findings of [`scan_world`] that
/// diagnose could join, without checking the rest of the cluster (tested on every example).
pub fn scan_scoped(
    world: &World<'_>,
    engine: &RulesetEngine,
    cluster: Option<&ClusterView>,
    scope: &[NsIdx],
) -> Vec<Finding> {
    let mut input = ScanInput::new(world, engine, cluster);
    let mut mask = vec![false; world.ns.len()];
    for &i in scope {
        if let Some(m) = mask.get_mut(i) {
            *m = true;
        }
    }
    input.scope = Some(mask);
    let mut out = Vec::new();
    for check in crate::catalog::CATALOG.iter().filter(|c| c.names_objects) {
        (check.run)(&input, &mut out);
    }
    // A finding naming no object never joins a cause.
    out.retain(|f| !f.objects.is_empty());
    finish(world, out)
}

/// Name the pods of findings, sort most severe first, drop duplicates.
fn finish(world: &World<'_>, mut out: Vec<Finding>) -> Vec<Finding> {
    // Name the pod of every finding about a pod's namespace.
    for f in &mut out {
        if f.pod.is_none()
            && let Some(i) = world
                .ns
                .iter()
                .position(|v| v.node == f.node && v.netns_label() == f.netns)
        {
            f.pod = world.pod_of(i).map(str::to_string);
        }
    }
    out.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    out.dedup();
    out
}
