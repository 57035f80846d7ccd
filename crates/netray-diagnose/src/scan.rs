//! `netray scan`: the check catalog over every node and namespace of a bundle.
//!
//! Each check reads the snapshots (and the cluster view when there is one) and reports
//! findings with quoted evidence. Checks are independent; [`scan`] runs them all.

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;

use ipnet::IpNet;
use netray_kube::ClusterView;
use netray_snapshot::{Bundle, LinkKind, NetnsRole, NetnsSnapshot, NodeSnapshot, Route, RouteType};

use crate::finding::{Finding, Severity};
use crate::firewall::FirewallView;
pub use netray_datapath::fib::route_text;

/// A namespace of the bundle with the node it was collected on.
#[derive(Clone, Copy)]
pub struct Ns<'a> {
    /// Node snapshot it came from.
    pub node: &'a NodeSnapshot,
    /// The namespace.
    pub ns: &'a NetnsSnapshot,
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
            evidence,
            explanation,
            fix,
        }
    }
}

/// Everything the checks read, indexed once.
pub struct ScanInput<'a> {
    /// The bundle.
    pub bundle: &'a Bundle,
    /// The cluster view, when the bundle has one.
    pub cluster: Option<&'a ClusterView>,
    /// Every namespace once (a namespace seen from two nodes of one kernel counts once).
    pub namespaces: Vec<Ns<'a>>,
    /// Parsed firewall of each namespace, in `namespaces` order.
    pub firewalls: Vec<FirewallView>,
}

impl<'a> ScanInput<'a> {
    /// Index a bundle.
    pub fn new(bundle: &'a Bundle, cluster: Option<&'a ClusterView>) -> ScanInput<'a> {
        let mut seen = BTreeSet::new();
        let mut namespaces = Vec::new();
        // Host namespaces first so a namespace shared by nodes is attributed to a host
        // namespace's node only when it is that node's host.
        for node in &bundle.nodes {
            for ns in &node.namespaces {
                if ns.role == NetnsRole::Host
                    && seen.insert((node.node.boot_id.clone(), ns.id.inode))
                {
                    namespaces.push(Ns { node, ns });
                }
            }
        }
        for node in &bundle.nodes {
            for ns in &node.namespaces {
                if seen.insert((node.node.boot_id.clone(), ns.id.inode)) {
                    namespaces.push(Ns { node, ns });
                }
            }
        }
        let firewalls = namespaces
            .iter()
            .map(|n| FirewallView::new(&n.ns.firewall))
            .collect();
        ScanInput {
            bundle,
            cluster,
            namespaces,
            firewalls,
        }
    }

    /// Whether a host namespace must route for others: it is a Kubernetes node of the
    /// cluster view, hosts workload namespaces, or has a bridge or an overlay device.
    pub fn routes_for_others(&self, h: &Ns) -> bool {
        self.cluster
            .is_some_and(|c| c.node(&h.node.node.name).is_some())
            || self.workloads().any(|w| std::ptr::eq(w.node, h.node))
            || h.ns
                .links
                .iter()
                .any(|l| matches!(l.kind, LinkKind::Bridge { .. } | LinkKind::Vxlan { .. }))
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
            return false;
        }
        let pod_ip = self.cluster.is_some_and(|c| {
            c.pods
                .iter()
                .any(|p| !p.host_network && p.ips.iter().any(|ip| addrs.contains(ip)))
        });
        let on_bridge = n.node.host().is_some_and(|h| {
            h.links.iter().any(|l| {
                l.master.is_some()
                    && matches!(l.kind, LinkKind::Veth { peer_netns: Some(p), .. } if p == n.ns.id.inode)
            })
        });
        match self.cluster {
            Some(c) if !c.pods.is_empty() => pod_ip,
            _ => on_bridge,
        }
    }

    /// Workload namespaces (pods, VMs).
    pub fn workloads(&self) -> impl Iterator<Item = Ns<'a>> + '_ {
        self.namespaces
            .iter()
            .copied()
            .filter(|n| self.is_workload(n))
    }

    /// The namespace owning `ip` as an interface address.
    pub fn owner(&self, ip: IpAddr) -> Option<Ns<'a>> {
        self.namespaces
            .iter()
            .copied()
            .find(|n| n.ns.addresses.iter().any(|a| a.addr.addr() == ip))
    }

    /// Pod CIDRs per node: from the cluster view, else the subnets of the nodes' `cni0`-like
    /// bridges (a bridge with workload ports and an address).
    pub fn pod_cidrs(&self) -> BTreeMap<String, Vec<IpNet>> {
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

fn sysctl_line(ns: &NetnsSnapshot, key: &str) -> Option<String> {
    ns.sysctl(key).map(|v| format!("{key} = {}", v.trim()))
}

fn has_default_route(ns: &NetnsSnapshot, v4: bool) -> bool {
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

/// Run every check; findings sorted most severe first.
pub fn scan(bundle: &Bundle, cluster: Option<&ClusterView>) -> Vec<Finding> {
    let input = ScanInput::new(bundle, cluster);
    let mut out = Vec::new();
    for check in crate::catalog::CATALOG {
        (check.run)(&input, &mut out);
    }
    out.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    out.dedup();
    out
}

// ---------------------------------------------------------------- sysctl checks

pub(crate) fn ip_forward(input: &ScanInput, out: &mut Vec<Finding>) {
    for h in input.hosts().filter(|h| input.routes_for_others(h)) {
        if h.ns.sysctl("net.ipv4.ip_forward").map(str::trim) == Some("0") {
            out.push(h.finding(
                "ip-forward-disabled",
                Severity::Critical,
                vec!["net.ipv4.ip_forward = 0".into()],
                "IPv4 forwarding is off on this node: packets between pods on different nodes, to \
                 Service backends on other nodes and from pods to the outside are dropped \
                 instead of routed."
                    .into(),
                "sysctl -w net.ipv4.ip_forward=1 (and persist it in /etc/sysctl.d/)".into(),
            ));
        }
    }
}

pub(crate) fn iface_forwarding(input: &ScanInput, out: &mut Vec<Finding>) {
    for h in input.hosts() {
        if h.ns.sysctl("net.ipv4.ip_forward").map(str::trim) != Some("1") {
            continue;
        }
        for l in &h.ns.links {
            if l.kind == LinkKind::Loopback {
                continue;
            }
            let key = conf_key(&l.name, "forwarding");
            if h.ns.sysctl(&key).map(str::trim) == Some("0") {
                out.push(h.finding(
                    "forwarding-disabled-iface",
                    Severity::Critical,
                    vec![format!("{key} = 0"), "net.ipv4.ip_forward = 1".into()],
                    format!(
                        "Forwarding is off for interface {}: packets arriving on it that must be \
                         routed onwards are dropped.",
                        l.name
                    ),
                    format!("sysctl -w {key}=1"),
                ));
            }
        }
    }
}

pub(crate) fn rp_filter_asymmetric(input: &ScanInput, out: &mut Vec<Finding>) {
    for n in &input.namespaces {
        // Where asymmetric routing can happen: several interfaces carry routes.
        let mut route_devs: BTreeMap<&str, Vec<&Route>> = BTreeMap::new();
        for r in n.ns.routes.iter().filter(|r| r.table != 255) {
            if let Some(d) = &r.dev {
                route_devs.entry(d.as_str()).or_default().push(r);
            }
        }
        let policy_rules: Vec<_> =
            n.ns.rules
                .iter()
                .filter(|r| r.family == "inet" && ![0, 32766, 32767].contains(&r.priority))
                .collect();
        let defaults: Vec<&Route> =
            n.ns.routes
                .iter()
                .filter(|r| r.dst.prefix_len() == 0 && r.dst.addr().is_ipv4() && r.table != 255)
                .collect();
        let ecmp = n.ns.routes.iter().any(|r| r.multipath.len() > 1);
        // Gateway routes leaving through different devices: replies to some sources take
        // another interface than their requests came in on.
        let gateway_devs: BTreeSet<&str> =
            n.ns.routes
                .iter()
                .filter(|r| r.table == 254 && r.gateway.is_some() && r.dst.addr().is_ipv4())
                .filter_map(|r| r.dev.as_deref())
                .filter(|d| {
                    !n.ns
                        .link(d)
                        .is_some_and(|l| matches!(l.kind, LinkKind::Vxlan { .. }))
                })
                .collect();
        let asymmetric =
            defaults.len() > 1 || !policy_rules.is_empty() || ecmp || gateway_devs.len() > 1;
        if !asymmetric {
            continue;
        }
        // Only the interfaces packets can arrive on from elsewhere: those with gateway
        // routes (or every routed one when policy rules or ECMP make any path possible).
        let strict: Vec<&str> = n
            .ns
            .links
            .iter()
            .filter(|l| l.kind != LinkKind::Loopback && route_devs.contains_key(l.name.as_str()))
            .filter(|l| gateway_devs.contains(l.name.as_str()) || !policy_rules.is_empty() || ecmp)
            .filter(|l| conf_max(n.ns, &l.name, "rp_filter") == Some(1))
            .map(|l| l.name.as_str())
            .collect();
        if strict.is_empty() {
            continue;
        }
        let mut evidence = vec![];
        evidence.extend(sysctl_line(n.ns, "net.ipv4.conf.all.rp_filter"));
        for dev in &strict {
            evidence.extend(sysctl_line(n.ns, &conf_key(dev, "rp_filter")));
        }
        evidence.extend(
            n.ns.routes
                .iter()
                .filter(|r| r.table == 254 && r.gateway.is_some() && r.dst.addr().is_ipv4())
                .filter(|r| r.dev.as_deref().is_some_and(|d| gateway_devs.contains(d)))
                .map(route_text),
        );
        evidence.extend(policy_rules.iter().map(|r| {
            format!(
                "ip rule {}: {}lookup {}",
                r.priority,
                r.src.map(|s| format!("from {s} ")).unwrap_or_default(),
                r.table.map(|t| t.to_string()).unwrap_or_default()
            )
        }));
        let list = strict.join(", ");
        out.push(n.finding(
            "rp-filter-strict-asymmetric",
            Severity::Warning,
            evidence,
            format!(
                "Strict reverse-path filtering (effective rp_filter = max(all, IFACE) = 1 on \
                 {list}) is on while this namespace routes asymmetrically (gateway routes through \
                 several interfaces, several default routes, ECMP or policy rules): a packet \
                 arriving on one interface from a source that the routing table reaches through \
                 another is dropped silently."
            ),
            format!(
                "use loose mode: sysctl -w net.ipv4.conf.all.rp_filter=2 {}",
                strict
                    .iter()
                    .map(|d| format!("{}=2", conf_key(d, "rp_filter")))
                    .collect::<Vec<_>>()
                    .join(" ")
            ),
        ));
    }
}

pub(crate) fn tw_recycle(input: &ScanInput, out: &mut Vec<Finding>) {
    for h in input.hosts() {
        if h.ns.sysctl("net.ipv4.tcp_tw_recycle").map(str::trim) == Some("1") {
            out.push(h.finding(
                "tcp-tw-recycle",
                Severity::Warning,
                vec!["net.ipv4.tcp_tw_recycle = 1".into()],
                "tcp_tw_recycle drops SYNs whose TCP timestamp is older than the last one seen \
                 from the same address; behind NAT (many clients, one address) new connections \
                 fail at random (PAWS)."
                    .into(),
                "sysctl -w net.ipv4.tcp_tw_recycle=0".into(),
            ));
        }
    }
}

pub(crate) fn conntrack_pressure(input: &ScanInput, out: &mut Vec<Finding>) {
    for n in &input.namespaces {
        let Some(ct) = &n.ns.conntrack else { continue };
        let max =
            n.ns.sysctl("net.netfilter.nf_conntrack_max")
                .or_else(|| n.ns.sysctl("net.nf_conntrack_max"))
                .and_then(|v| v.trim().parse::<u64>().ok());
        if let Some(max) = max
            && max > 0
            && ct.count * 10 >= max * 8
        {
            out.push(
                n.finding(
                    "conntrack-table-full",
                    if ct.count >= max {
                        Severity::Critical
                    } else {
                        Severity::Warning
                    },
                    vec![
                        format!("conntrack entries: {}", ct.count),
                        format!("net.netfilter.nf_conntrack_max = {max}"),
                    ],
                    "The conntrack table is (nearly) full: new connections are dropped once it is \
                 (the kernel logs 'nf_conntrack: table full, dropping packet')."
                        .into(),
                    "raise net.netfilter.nf_conntrack_max, or find the source of the entries \
                 (conntrack -L | sort by source)"
                        .into(),
                ),
            );
        }
        let bad: Vec<String> = ["insert_failed", "drop", "early_drop", "invalid"]
            .iter()
            .filter_map(|k| {
                ct.stats
                    .get(*k)
                    .filter(|v| **v > 0)
                    .map(|v| format!("{k}={v}"))
            })
            .collect();
        if !bad.is_empty() {
            let severe = ct.stats.get("insert_failed").copied().unwrap_or(0) > 0
                || ct.stats.get("drop").copied().unwrap_or(0) > 0;
            out.push(n.finding(
                "conntrack-drops",
                if severe {
                    Severity::Warning
                } else {
                    Severity::Info
                },
                vec![format!("/proc/net/stat/nf_conntrack (summed): {}", bad.join(" "))],
                "Conntrack has dropped or failed to insert entries: insert_failed usually means \
                 a SNAT/DNAT race (concurrent UDP, e.g. DNS) and shows up as sporadic timeouts."
                    .into(),
                "for DNS races use TCP or single-request-reopen in resolv.conf, or \
                 --random-fully masquerade; for drops raise nf_conntrack_max"
                    .into(),
            ));
        }
    }
}

// ---------------------------------------------------------------- routing checks

pub(crate) fn pod_default_route(input: &ScanInput, out: &mut Vec<Finding>) {
    for w in input.workloads() {
        let has_v4 =
            w.ns.addresses
                .iter()
                .any(|a| a.addr.addr().is_ipv4() && a.scope == "global");
        if has_v4 && !has_default_route(w.ns, true) {
            let routes: Vec<String> =
                w.ns.routes
                    .iter()
                    .filter(|r| r.table == 254 && r.dst.addr().is_ipv4())
                    .map(route_text)
                    .collect();
            out.push(w.finding(
                "pod-no-default-route",
                Severity::Critical,
                if routes.is_empty() {
                    vec!["(main table has no IPv4 routes)".into()]
                } else {
                    routes
                },
                "This workload namespace has no IPv4 default route: it reaches only its own \
                 subnet, so Services, pods on other nodes and everything outside fail with \
                 'Network is unreachable'."
                    .into(),
                "add the default route via the node's bridge address (ip route add default via \
                 GATEWAY dev eth0), or fix the CNI configuration that should have set it"
                    .into(),
            ));
        }
    }
}

pub(crate) fn pod_cidr_routes(input: &ScanInput, out: &mut Vec<Finding>) {
    let cidrs = input.pod_cidrs();
    for h in input.hosts() {
        let me = &h.node.node.name;
        for (peer, peer_cidrs) in &cidrs {
            if peer == me {
                continue;
            }
            for cidr in peer_cidrs {
                let probe = cidr.network();
                match lookup(h.ns, 254, probe) {
                    Some(r) if r.dst.prefix_len() > 0 && r.route_type == RouteType::Unicast => {}
                    Some(r)
                        if matches!(
                            r.route_type,
                            RouteType::Blackhole | RouteType::Unreachable | RouteType::Prohibit
                        ) => {} // reported by blackhole_routes
                    other => out.push(h.finding(
                        "no-route",
                        Severity::Critical,
                        vec![match other {
                            Some(r) => format!("best match for {cidr}: {}", route_text(r)),
                            None => format!("no route matches {cidr}"),
                        }],
                        format!(
                            "Node {me} has no route to node {peer}'s pod CIDR {cidr}: pod traffic \
                             to it {} instead of entering the overlay.",
                            if other.is_some() {
                                "follows the default route to the underlay gateway"
                            } else {
                                "fails with 'Network is unreachable'"
                            }
                        ),
                        format!(
                            "restore the overlay route (flannel: ip route add {cidr} via {} dev \
                             flannel.1 onlink), usually by restarting the CNI agent",
                            cidr.network()
                        ),
                    )),
                }
            }
        }
    }
}

pub(crate) fn blackhole_routes(input: &ScanInput, out: &mut Vec<Finding>) {
    let cidrs: Vec<IpNet> = input.pod_cidrs().into_values().flatten().collect();
    for n in &input.namespaces {
        for r in &n.ns.routes {
            if !matches!(
                r.route_type,
                RouteType::Blackhole | RouteType::Unreachable | RouteType::Prohibit
            ) || r.table == 255
            {
                continue;
            }
            let hits: Vec<&IpNet> = cidrs
                .iter()
                .filter(|c| {
                    c.contains(&r.dst) || r.dst.contains(*c) || r.dst.contains(&c.network())
                })
                .collect();
            let default = r.dst.prefix_len() == 0;
            if hits.is_empty() && !default {
                continue;
            }
            out.push(
                n.finding(
                    "blackhole-route",
                    Severity::Critical,
                    vec![route_text(r)],
                    format!(
                        "A {:?} route covers {}: matching packets are discarded{}.",
                        r.route_type,
                        if default {
                            "every destination without a more specific route".to_string()
                        } else {
                            hits.iter()
                                .map(|c| c.to_string())
                                .collect::<Vec<_>>()
                                .join(", ")
                        },
                        match r.route_type {
                            RouteType::Blackhole => " silently",
                            RouteType::Unreachable => " with ICMP host unreachable",
                            _ => " with ICMP administratively prohibited",
                        }
                    )
                    .to_lowercase()
                    .replacen('a', "A", 1),
                    format!("ip route del {}", route_text(r)),
                ),
            );
        }
    }
}

pub(crate) fn policy_rules(input: &ScanInput, out: &mut Vec<Finding>) {
    for n in &input.namespaces {
        for r in &n.ns.rules {
            if r.family != "inet" || [0, 32766, 32767].contains(&r.priority) {
                continue;
            }
            let text = format!(
                "{}: {}{}{}{}{}",
                r.priority,
                if r.invert { "not " } else { "" },
                r.src
                    .map(|s| format!("from {s} "))
                    .unwrap_or_else(|| "from all ".into()),
                r.dst.map(|s| format!("to {s} ")).unwrap_or_default(),
                r.fwmark
                    .map(|m| format!("fwmark {m:#x}/{:#x} ", r.fwmask.unwrap_or(u32::MAX)))
                    .unwrap_or_default(),
                match r.action {
                    netray_snapshot::RuleAction::Lookup =>
                        format!("lookup {}", r.table.unwrap_or(0)),
                    a => format!("{a:?}").to_lowercase(),
                }
            );
            let Some(table) = r
                .table
                .filter(|_| r.action == netray_snapshot::RuleAction::Lookup)
            else {
                if r.action != netray_snapshot::RuleAction::Nop
                    && r.action != netray_snapshot::RuleAction::Goto
                {
                    out.push(n.finding(
                        "ip-rule-diverts",
                        Severity::Warning,
                        vec![format!("ip rule {text}")],
                        "A policy routing rule discards matching packets before the main table \
                         is consulted."
                            .into(),
                        format!("ip rule del priority {}", r.priority),
                    ));
                }
                continue;
            };
            let routes: Vec<&Route> = n.ns.routes.iter().filter(|x| x.table == table).collect();
            let has_default = routes.iter().any(|x| x.dst.prefix_len() == 0);
            let (severity, why) = if routes.is_empty() {
                (
                    Severity::Warning,
                    format!("table {table} is empty, so the lookup falls through to later rules"),
                )
            } else if !has_default {
                (
                    Severity::Info,
                    format!("table {table} has {} routes and no default", routes.len()),
                )
            } else {
                (
                    Severity::Info,
                    format!("table {table} has its own default route"),
                )
            };
            let mut evidence = vec![format!("ip rule {text}")];
            evidence.extend(routes.iter().take(5).map(|x| route_text(x)));
            out.push(n.finding(
                "ip-rule-diverts",
                severity,
                evidence,
                format!(
                    "Policy routing sends matching packets to another table before main: {why}. \
                     Traffic that matches may leave by a different path than `ip route` shows."
                ),
                "check that the rule is intended (ip rule show; ip route show table TABLE)".into(),
            ));
        }
    }
}

pub(crate) fn gateway_neighbours(input: &ScanInput, out: &mut Vec<Finding>) {
    for n in &input.namespaces {
        for r in n.ns.routes.iter().filter(|r| r.table != 255) {
            let (Some(gw), Some(dev)) = (r.gateway, &r.dev) else {
                continue;
            };
            for ne in &n.ns.neighbours {
                if ne.dst == gw
                    && &ne.dev == dev
                    && ne.state.iter().any(|s| s == "FAILED" || s == "INCOMPLETE")
                {
                    out.push(n.finding(
                        "neighbor-unreachable",
                        Severity::Warning,
                        vec![
                            route_text(r),
                            format!("{} dev {} {}", ne.dst, ne.dev, ne.state.join(",")),
                        ],
                        format!(
                            "The gateway {gw} of this route did not answer ARP/NDP on {dev}: \
                             packets using the route are dropped."
                        ),
                        format!("check that {gw} is up and on the same segment as {dev}"),
                    ));
                }
            }
        }
    }
}

// ---------------------------------------------------------------- overlay checks

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
    for h in input.hosts() {
        let me = h.node.node.name.as_str();
        for mine in all.iter().filter(|v| v.node == me) {
            let fdb: Vec<_> = h.ns.fdb.iter().filter(|f| f.dev == mine.dev).collect();
            let has_default_dst = fdb.iter().any(|f| f.mac == "00:00:00:00:00:00");
            for peer in all.iter().filter(|v| v.node != me && v.vni == mine.vni) {
                // Neighbour entry for the peer's overlay address.
                for addr in &peer.overlay_addrs {
                    let Some(ne) =
                        h.ns.neighbours
                            .iter()
                            .find(|n| n.dev == mine.dev && n.dst == *addr)
                    else {
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
                        ));
                    }
                    // The FDB must map the neighbour's MAC to the peer's underlay address.
                    match fdb.iter().find(|f| f.mac.eq_ignore_ascii_case(ll)) {
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
                for f in &fdb {
                    if f.dst == peer.local
                        && f.mac != "00:00:00:00:00:00"
                        && !all.iter().any(|v| v.mac.eq_ignore_ascii_case(&f.mac))
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

/// The MTU of the other end of a veth, when that namespace is in the bundle: a veth drops
/// packets larger than the receiving end's MTU.
fn veth_peer_mtu<'a>(
    input: &'a ScanInput,
    link: &netray_snapshot::Link,
) -> Option<(Ns<'a>, &'a str, u32)> {
    let LinkKind::Veth {
        peer_ifindex: Some(idx),
        peer_netns: Some(inode),
    } = link.kind
    else {
        return None;
    };
    input.namespaces.iter().find_map(|n| {
        (n.ns.id.inode == inode)
            .then(|| n.ns.links.iter().find(|l| l.ifindex == idx))
            .flatten()
            .map(|l| (*n, l.name.as_str(), l.mtu))
    })
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
            if let Some(link) = h.ns.link(&udev)
                && let Some((peer_ns, peer_dev, peer_mtu)) = veth_peer_mtu(input, link)
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

// ---------------------------------------------------------------- link checks

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
        for l in &h.ns.links {
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
            let to_workload = matches!(l.kind, LinkKind::Veth { peer_netns: Some(p), .. }
                if input.namespaces.iter().any(|n| n.ns.id.inode == p && input.is_workload(n)));
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

// ---------------------------------------------------------------- service checks

pub(crate) fn services_without_endpoints(input: &ScanInput, out: &mut Vec<Finding>) {
    let Some(c) = input.cluster else { return };
    for s in &c.services {
        if s.kind == "ExternalName" || s.cluster_ips.is_empty() {
            continue;
        }
        for p in &s.ports {
            if c.ready_endpoints(s, p).is_empty() {
                out.push(Finding {
                    code: "no-endpoints",
                    severity: Severity::Warning,
                    node: "-".into(),
                    netns: "-".into(),
                    evidence: vec![format!(
                        "svc/{}/{} port {}/{}: no ready endpoints in its EndpointSlices",
                        s.namespace, s.name, p.port, p.protocol
                    )],
                    explanation: format!(
                        "Service {}/{} has no ready endpoint for port {}: kube-proxy installs a \
                         REJECT rule, so clients get 'connection refused' (TCP) or ICMP \
                         port unreachable.",
                        s.namespace, s.name, p.port
                    ),
                    fix: format!(
                        "check the selector and the pods' readiness: kubectl -n {} get \
                         endpointslices -l kubernetes.io/service-name={}",
                        s.namespace, s.name
                    ),
                });
            }
        }
    }
}

pub(crate) fn lb_ip_in_local_table(input: &ScanInput, out: &mut Vec<Finding>) {
    let Some(c) = input.cluster else { return };
    for s in &c.services {
        let vips: Vec<IpAddr> = s
            .lb_ingress
            .iter()
            .chain(&s.external_ips)
            .copied()
            .collect();
        for h in input.hosts() {
            for vip in &vips {
                if let Some(r) = h.ns.routes.iter().find(|r| {
                    r.table == 255 && r.route_type == RouteType::Local && r.dst.contains(vip)
                }) {
                    let local = s.external_traffic_policy == "Local";
                    out.push(
                        h.finding(
                            "lb-ip-in-local-table",
                            if local {
                                Severity::Critical
                            } else {
                                Severity::Warning
                            },
                            vec![
                                route_text(r),
                                format!(
                                    "svc/{}/{}: type {} ingress {vip} externalTrafficPolicy {}",
                                    s.namespace, s.name, s.kind, s.external_traffic_policy
                                ),
                            ],
                            format!(
                                "The load balancer address {vip} is a local address of node {} (it \
                             is in the `local` routing table, e.g. bound to kube-ipvs0). Packets \
                             arriving from outside with {vip} as their *source* — the cloud LB's \
                             health checks{} — are martians and dropped silently, so the LB \
                             marks the node unhealthy.",
                                h.node.node.name,
                                if local {
                                    ", which decide where externalTrafficPolicy: Local traffic goes"
                                } else {
                                    ""
                                }
                            ),
                            "keep the LB address out of the local table (kube-proxy IPVS: do not \
                         bind LB IPs, or use the LB's ipMode: Proxy), or have the LB probe from \
                         another source address"
                                .into(),
                        ),
                    );
                }
            }
        }
    }
}

pub(crate) fn cluster_cidr(input: &ScanInput, out: &mut Vec<Finding>) {
    let Some(c) = input.cluster else { return };
    let Some(kp) = &c.kube_proxy else { return };
    if kp.cluster_cidr.is_empty() {
        return;
    }
    let cidrs: Vec<IpNet> = kp
        .cluster_cidr
        .split(',')
        .filter_map(|s| s.trim().parse().ok())
        .collect();
    if cidrs.is_empty() {
        out.push(Finding {
            code: "cluster-cidr-mismatch",
            severity: Severity::Warning,
            node: "-".into(),
            netns: "-".into(),
            evidence: vec![format!("kube-proxy clusterCIDR: {}", kp.cluster_cidr)],
            explanation: "kube-proxy's clusterCIDR is not a valid CIDR list.".into(),
            fix: "fix clusterCIDR in the kube-proxy ConfigMap".into(),
        });
        return;
    }
    let mut outside = Vec::new();
    for n in &c.nodes {
        for pc in &n.pod_cidrs {
            if !cidrs.iter().any(|c| c.contains(pc)) {
                outside.push(format!("node/{} podCIDR {pc}", n.name));
            }
        }
    }
    for p in c.pods.iter().filter(|p| !p.host_network) {
        for ip in &p.ips {
            if !cidrs.iter().any(|c| c.contains(ip)) {
                outside.push(format!("pod/{}/{} {ip}", p.namespace, p.name));
            }
        }
    }
    if !outside.is_empty() {
        let mut evidence = vec![format!("kube-proxy clusterCIDR: {}", kp.cluster_cidr)];
        evidence.extend(outside.into_iter().take(10));
        out.push(Finding {
            code: "cluster-cidr-mismatch",
            severity: Severity::Warning,
            node: "-".into(),
            netns: "-".into(),
            evidence,
            explanation: "kube-proxy's clusterCIDR does not cover these pod addresses: \
                          kube-proxy treats their Service traffic as coming from outside the \
                          cluster and masquerades it (KUBE-MARK-MASQ), so backends see the \
                          node's address instead of the client's and NAT interacts with \
                          bridges and policies in surprising ways."
                .into(),
            fix: "set clusterCIDR to the pod network (or leave it empty and use \
                  --detect-local-mode)"
                .into(),
        });
    }
}

pub(crate) fn endpoints_listening(input: &ScanInput, out: &mut Vec<Finding>) {
    let Some(c) = input.cluster else { return };
    for s in &c.services {
        for p in &s.ports {
            let proto = match p.protocol.to_ascii_uppercase().as_str() {
                "TCP" => netray_snapshot::SocketProto::Tcp,
                "UDP" => netray_snapshot::SocketProto::Udp,
                _ => continue,
            };
            for (ip, port) in c.ready_endpoints(s, p) {
                let Some(owner) = input.owner(ip) else {
                    continue;
                };
                if owner.ns.sockets.is_empty()
                    && input
                        .bundle
                        .nodes
                        .iter()
                        .flat_map(|n| &n.not_collected)
                        .any(|m| m.what.starts_with("sockets"))
                {
                    continue;
                }
                let listening = owner.ns.sockets.iter().any(|so| {
                    so.proto == proto
                        && so.port == port
                        && (so.addr == ip
                            || so.addr.is_unspecified()
                                && (so.addr.is_ipv4() == ip.is_ipv4() || so.dual_stack))
                });
                if !listening {
                    out.push(owner.finding(
                        "port-not-listening",
                        Severity::Critical,
                        vec![format!(
                            "svc/{}/{} → {ip}:{port}/{}: no socket listens on {port}/{} in {}",
                            s.namespace,
                            s.name,
                            p.protocol,
                            p.protocol,
                            owner.label()
                        )],
                        format!(
                            "Endpoint {ip} of Service {}/{} is marked ready but nothing listens \
                             on port {port}/{}: connections are refused.",
                            s.namespace, s.name, p.protocol
                        ),
                        "fix the targetPort or the application's listen address; check the \
                         readiness probe"
                            .into(),
                    ));
                }
            }
        }
    }
}
