//! Routing checks: default routes, routes to every pod CIDR, blackholes, policy rules, gateway neighbours.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use netray_snapshot::{NetnsSnapshot, Route, RouteType};

use crate::finding::{Finding, Severity};
use crate::scan::{ScanInput, has_default_route, lookup, route_text};

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

/// One routing table indexed by destination prefix, answering as [`lookup`] does (longest
/// prefix, then lowest metric, the last of equals) without a scan of the whole table per
/// question: every node holds a route per other node, and is asked about every other node.
struct RouteIndex<'a> {
    by_prefix: HashMap<IpNet, Vec<&'a Route>>,
}

impl<'a> RouteIndex<'a> {
    fn new(ns: &'a NetnsSnapshot, table: u32) -> Self {
        let mut by_prefix: HashMap<IpNet, Vec<&Route>> = HashMap::new();
        for r in ns.routes.iter().filter(|r| r.table == table) {
            by_prefix.entry(r.dst.trunc()).or_default().push(r);
        }
        RouteIndex { by_prefix }
    }

    fn lookup(&self, dst: IpAddr) -> Option<&'a Route> {
        let max = if dst.is_ipv4() { 32 } else { 128 };
        (0..=max).rev().find_map(|len| {
            let net = IpNet::new(dst, len).ok()?.trunc();
            self.by_prefix
                .get(&net)?
                .iter()
                .copied()
                .max_by_key(|r| std::cmp::Reverse(r.metric))
        })
    }
}

pub(crate) fn pod_cidr_routes(input: &ScanInput, out: &mut Vec<Finding>) {
    let cidrs = input.pod_cidrs();
    for h in input.hosts() {
        let me = &h.node.node.name;
        let main = RouteIndex::new(h.ns, 254);
        for (peer, peer_cidrs) in cidrs {
            if peer == me {
                continue;
            }
            for cidr in peer_cidrs {
                let probe = cidr.network();
                debug_assert_eq!(
                    main.lookup(probe).map(|r| r as *const Route),
                    lookup(h.ns, 254, probe).map(|r| r as *const Route)
                );
                match main.lookup(probe) {
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
                             {} onlink), usually by restarting the CNI agent",
                            cidr.network(),
                            if cidr.addr().is_ipv6() {
                                "flannel-v6.1"
                            } else {
                                "flannel.1"
                            }
                        ),
                    )),
                }
            }
        }
    }
}

pub(crate) fn blackhole_routes(input: &ScanInput, out: &mut Vec<Finding>) {
    let cidrs: Vec<IpNet> = input.pod_cidrs().values().flatten().copied().collect();
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
        // Neighbour entries by address, in table order.
        let mut by_dst: HashMap<IpAddr, Vec<&netray_snapshot::Neighbour>> = HashMap::new();
        for ne in &n.ns.neighbours {
            by_dst.entry(ne.dst).or_default().push(ne);
        }
        for r in n.ns.routes.iter().filter(|r| r.table != 255) {
            let (Some(gw), Some(dev)) = (r.gateway, &r.dev) else {
                continue;
            };
            for ne in by_dst.get(&gw).into_iter().flatten() {
                if &ne.dev == dev && ne.state.iter().any(|s| s == "FAILED" || s == "INCOMPLETE") {
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
