//! Firewall checks: FORWARD policy drops, DROP rules that count packets, mixed backends, and
//! the br_netfilter + masquerade conflict of seed 000. Rules are read through netray-netfilter.

use std::net::IpAddr;

use netray_netfilter::ipt::{Dump, Policy, Target};
use netray_netfilter::{CtState, EvalOptions, Hook, Matched, NatAction, Packet, Verdict};
use netray_snapshot::{IptablesBackend, LinkKind, RouteType};

use crate::finding::{Finding, Severity};
use crate::scan::ScanInput;

fn is_masquerade(r: &netray_netfilter::ipt::Rule) -> bool {
    match &r.target {
        Target::Nat(n) => {
            let n: &NatAction = n;
            matches!(n, NatAction::Masquerade { .. })
        }
        _ => false,
    }
}

/// `filter FORWARD` policy DROP that drops cross-node pod traffic (seed 003).
pub(crate) fn forward_policy_drop(input: &ScanInput, out: &mut Vec<Finding>) {
    let cidrs = input.pod_cidrs();
    for n in &input.subjects().collect::<Vec<_>>() {
        if n.ns.role != netray_snapshot::NetnsRole::Host {
            continue;
        }
        let Some(Ok(rs)) = input.ruleset(n) else {
            continue;
        };
        // IPv4 only (the ip6tables FORWARD chain is checks::ipv6's).
        let policy_drop = input.dumps(n).iter().find_map(|d| {
            if d.family != netray_snapshot::IpFamily::Ipv4 {
                return None;
            }
            let t = d.table("filter")?;
            let c = t.chains.iter().find(|c| &*c.name == "FORWARD")?;
            (c.policy == Some(Policy::Drop)).then_some((d, c))
        });
        let Some((dump, chain)) = policy_drop else {
            continue;
        };
        let decl = dump.slice(chain.decl).to_string();
        // A packet from a pod on another node to a pod here, arriving on the overlay.
        let me = &n.node.node.name;
        let Some(local_pod) = input.workloads_on(n.node).find_map(|w| {
            w.ns.addresses
                .iter()
                .find(|a| a.scope == "global" && a.addr.addr().is_ipv4())
        }) else {
            continue;
        };
        let remote = cidrs
            .iter()
            .filter(|(node, _)| *node != me)
            .flat_map(|(_, c)| c.iter())
            .find(|c| c.addr().is_ipv4());
        let Some(remote) = remote else { continue };
        let src = nth_host(remote.network(), 2);
        let pod_net =
            covering(cidrs.values().flatten().filter(|c| c.addr().is_ipv4())).unwrap_or(*remote);
        let in_dev =
            n.ns.links
                .iter()
                .find(|l| matches!(l.kind, LinkKind::Vxlan { .. }))
                .map(|l| l.name.clone());
        let out_dev =
            n.ns.routes
                .iter()
                .filter(|r| {
                    r.table == 254
                        && r.route_type == RouteType::Unicast
                        && r.dst.contains(&local_pod.addr.addr())
                })
                .max_by_key(|r| r.dst.prefix_len())
                .and_then(|r| r.dev.clone());
        let mut pkt = Packet::new(src, local_pod.addr.addr(), 6, Some(40000), Some(80));
        pkt.iif = in_dev.clone();
        pkt.oif = out_dev.clone();
        pkt.ct.state = CtState::New;
        let outcomes = rs.evaluate(
            Hook::Forward,
            &pkt,
            &input.host_context(n),
            &EvalOptions {
                nat: false,
                ..EvalOptions::default()
            },
        );
        let dropped_by_policy = outcomes.iter().any(|o| {
            matches!(o.verdict, Verdict::Drop)
                && o.trail.last().is_some_and(|h| h.matched == Matched::Policy)
        });
        if dropped_by_policy {
            out.push(n.finding(
                "forward-policy-drop",
                Severity::Critical,
                vec![
                    format!("{} filter: {decl}", dump.source_name()),
                    format!(
                        "no FORWARD rule accepts {src} → {} (tcp/80, NEW) from {} to {}",
                        pkt.dst,
                        in_dev.as_deref().unwrap_or("?"),
                        out_dev.as_deref().unwrap_or("?")
                    ),
                ],
                format!(
                    "The filter FORWARD chain on {me} has policy DROP (Docker sets it) and no rule \
                     accepts new connections from pods on other nodes to pods here: cross-node \
                     pod traffic and Service traffic DNATed to pods on {me} is dropped."
                ),
                format!(
                    "on {me}: iptables -I FORWARD -s {} -j ACCEPT && iptables -I FORWARD -d {} -j \
                     ACCEPT (or iptables -P FORWARD ACCEPT; with Docker: rules in DOCKER-USER), \
                     made persistent",
                    pod_net, pod_net
                ),
            ).about([netray_datapath::KernelObject::Rule { at: n.place(), family: "ip".into(), table: "filter".into(), chain: "FORWARD".into(), index: None, text: decl.clone() }]));
        }
    }
}

/// The smallest prefix covering every network in `nets` (the pod network from the per-node
/// pod CIDRs).
fn covering<'a>(nets: impl Iterator<Item = &'a ipnet::IpNet>) -> Option<ipnet::IpNet> {
    let mut acc: Option<ipnet::IpNet> = None;
    for n in nets {
        acc = Some(match acc {
            None => *n,
            Some(mut a) => {
                while !a.contains(n) {
                    a = a.supernet()?;
                }
                a
            }
        });
    }
    acc
}

fn nth_host(net: IpAddr, n: u32) -> IpAddr {
    match net {
        IpAddr::V4(a) => IpAddr::V4((u32::from(a).wrapping_add(n)).into()),
        IpAddr::V6(a) => IpAddr::V6((u128::from(a).wrapping_add(n as u128)).into()),
    }
}

/// DROP / REJECT rules that have counted packets (seed 001: "DROP rules with growing counters").
pub(crate) fn counted_drop_rules(input: &ScanInput, out: &mut Vec<Finding>) {
    for n in &input.namespaces {
        for d in input.dumps(n) {
            for t in &d.tables {
                for c in &t.chains {
                    // kube-proxy's own bookkeeping drops (ctstate INVALID) and its no-endpoint
                    // REJECTs are reported by their own checks.
                    if c.name.starts_with("KUBE-") {
                        continue;
                    }
                    for (idx, r) in c.rules.iter().enumerate() {
                        let Some((pkts, bytes)) = r.counters.filter(|c| c.0 > 0) else {
                            continue;
                        };
                        let what = match &r.target {
                            Target::Drop => "DROP",
                            Target::Reject(_) => "REJECT",
                            _ => continue,
                        };
                        out.push(n.finding(
                            if what == "DROP" {
                                "iptables-drop-rule"
                            } else {
                                "iptables-reject-rule"
                            },
                            Severity::Warning,
                            vec![format!(
                                "{} {} {} #{}: [{pkts}:{bytes}] {}",
                                d.source_name(),
                                t.name,
                                c.name,
                                idx + 1,
                                d.slice(r.span)
                            )],
                            format!(
                                "This {what} rule has matched {pkts} packets ({bytes} bytes) since \
                                 its counters were last reset: something is being {} here. If \
                                 the counter grows while a flow fails, this rule is why.",
                                if what == "DROP" {
                                    "dropped"
                                } else {
                                    "rejected"
                                }
                            ),
                            format!(
                                "watch it (iptables -t {} -nvL {} --line-numbers) and remove or \
                                 narrow the rule if it matches wanted traffic",
                                t.name, c.name
                            ),
                        ));
                    }
                }
            }
        }
    }
}

fn holds_kube_rules(d: &Dump) -> bool {
    d.tables.iter().any(|t| {
        t.chains
            .iter()
            .any(|c| c.name.starts_with("KUBE-") && !c.rules.is_empty())
    })
}

fn holds_rules(d: &Dump) -> bool {
    d.tables
        .iter()
        .any(|t| t.chains.iter().any(|c| !c.rules.is_empty()))
}

/// iptables-legacy and iptables-nft both holding rules (kube rules especially).
pub(crate) fn mixed_backends(input: &ScanInput, out: &mut Vec<Finding>) {
    for n in &input.namespaces {
        let dumps = input.dumps(n);
        let with_rules =
            |b: IptablesBackend| dumps.iter().filter(|d| d.backend == b).any(holds_rules);
        let with_kube = |b: IptablesBackend| {
            dumps
                .iter()
                .filter(|d| d.backend == b)
                .any(holds_kube_rules)
        };
        if !(with_rules(IptablesBackend::Legacy) && with_rules(IptablesBackend::Nft)) {
            continue;
        }
        let kube_both = with_kube(IptablesBackend::Legacy) && with_kube(IptablesBackend::Nft);
        out.push(
            n.finding(
                "mixed-iptables-backends",
                if kube_both {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                vec![
                    "iptables-legacy-save: rules present".into(),
                    "iptables-nft-save: rules present".into(),
                    if kube_both {
                        "KUBE-* chains with rules in both backends".into()
                    } else {
                        "KUBE-* chains in at most one backend".into()
                    },
                ],
                "Both the legacy (x_tables) and the nf_tables iptables backends hold rules. The \
             kernel runs both, but each tool shows only its own: a rule that drops traffic can \
             be invisible to `iptables -L`, and two kube-proxy or CNI versions may fight."
                    .into(),
                "make every component use one backend (update-alternatives --set iptables \
             /usr/sbin/iptables-nft, or -legacy) and flush the other"
                    .into(),
            ),
        );
    }
}

/// Seed 000: br_netfilter on a bridge that carries Service backends whose replies are bridged
/// onwards, together with masquerade (`--random-fully`) of host-originated Service traffic.
pub(crate) fn bridge_nf_snat_conflict(input: &ScanInput, out: &mut Vec<Finding>) {
    for h in &input.subjects().collect::<Vec<_>>() {
        if h.ns.role != netray_snapshot::NetnsRole::Host
            || h.ns
                .sysctl("net.bridge.bridge-nf-call-iptables")
                .map(str::trim)
                != Some("1")
        {
            continue;
        }
        let masq: Vec<String> = input
            .dumps(h)
            .iter()
            .flat_map(|d| {
                d.table("nat").into_iter().flat_map(move |t| {
                    t.chains.iter().flat_map(move |c| {
                        c.rules
                            .iter()
                            .filter(|r| is_masquerade(r))
                            .map(move |r| format!("nat {}: {}", c.name, d.slice(r.span)))
                    })
                })
            })
            .collect();
        let random_fully = masq.iter().any(|m| m.contains("--random-fully"));
        if masq.is_empty() {
            continue;
        }
        // Workloads on a bridge of this host whose default gateway is not the bridge itself:
        // their replies are bridged towards that gateway after br_netfilter de-NATs them.
        for l in &h.ns.links {
            let LinkKind::Bridge { .. } = l.kind else {
                continue;
            };
            let bridge_addrs: Vec<IpAddr> =
                h.ns.addresses
                    .iter()
                    .filter(|a| a.dev == l.name)
                    .map(|a| a.addr.addr())
                    .collect();
            for (pi, port) in
                h.ns.links
                    .iter()
                    .enumerate()
                    .filter(|(_, p)| p.master.as_deref() == Some(&l.name))
            {
                let LinkKind::Veth {
                    peer_netns: Some(_),
                    ..
                } = port.kind
                else {
                    continue;
                };
                // The peer as the world resolved it, on this node's (boot_id, inode).
                let Some((w, _)) = input.veth_peer(h, pi).filter(|(w, _)| input.is_workload(w))
                else {
                    continue;
                };
                let gw = w
                    .ns
                    .routes
                    .iter()
                    .find(|r| r.dst.prefix_len() == 0 && r.table == 254 && r.dst.addr().is_ipv4())
                    .and_then(|r| r.gateway);
                let Some(gw) = gw else { continue };
                if bridge_addrs.contains(&gw) {
                    continue;
                }
                out.push(h.finding(
                    "bridge-nf-snat-conflict",
                    if random_fully { Severity::Critical } else { Severity::Warning },
                    {
                        let mut e = vec![
                            "net.bridge.bridge-nf-call-iptables = 1".to_string(),
                            format!(
                                "{} (in {}) sits on bridge {} and routes via {gw}, which is not an address of {}",
                                w.label(),
                                port.name,
                                l.name,
                                l.name
                            ),
                        ];
                        e.extend(masq.iter().take(3).cloned());
                        e
                    },
                    format!(
                        "Host-originated traffic to a Service whose backend is {} is masqueraded{}. \
                         The backend's reply is bridged by {} towards its gateway {gw}, and because \
                         bridge-nf-call-iptables=1 it passes iptables PREROUTING inside the bridge, \
                         where conntrack reverses the masquerade early. The packet that finally \
                         returns to the host no longer matches its connection (rewritten port), so \
                         the handshake times out.",
                        w.label(),
                        if random_fully { " with --random-fully (the source port changes)" } else { "" },
                        l.name
                    ),
                    format!(
                        "sysctl -w net.bridge.bridge-nf-call-iptables=0 on this node if the CNI does \
                         not need it, or make kube-proxy not masquerade host traffic (empty \
                         clusterCIDR / --detect-local-mode), or {}",
                        match bridge_addrs.iter().find(|a| a.is_ipv4()) {
                            Some(a) => format!("route {} via {a} (the node's address on {})", w.label(), l.name),
                            None => format!(
                                "give {} an address on {}'s subnet and route {} via it, so its replies \
                                 are routed by this node instead of bridged past it",
                                l.name,
                                w.label(),
                                w.label()
                            ),
                        }
                    ),
                ).about([h.sysctl_obj("net.bridge.bridge-nf-call-iptables")]));
            }
        }
    }
}

/// Pod traffic leaving the cluster without SNAT/MASQUERADE (seed 001: "wrong or missing SNAT"):
/// replies to a pod address would have to find their way back from outside, which they do
/// not.
pub(crate) fn missing_snat(input: &ScanInput, out: &mut Vec<Finding>) {
    // A documentation address (RFC 5737): outside any cluster.
    let outside: IpAddr = IpAddr::V4(std::net::Ipv4Addr::new(203, 0, 113, 1));
    let cidrs = input.pod_cidrs();
    for h in &input.namespaces {
        if h.ns.role != netray_snapshot::NetnsRole::Host {
            continue;
        }
        let Some(Ok(rs)) = input.ruleset(h) else {
            continue;
        };
        let Some(default) = h.ns.routes.iter().find(|r| {
            r.table == 254 && r.dst.prefix_len() == 0 && r.dst.addr().is_ipv4() && r.dev.is_some()
        }) else {
            continue;
        };
        let node_cidrs = cidrs
            .get(&h.node.node.name)
            .map(Vec::as_slice)
            .unwrap_or_default();
        let Some(pod_ip) = input
            .workloads_on(h.node)
            .flat_map(|w| w.ns.addresses.iter().map(|a| a.addr.addr()))
            .find(|a| node_cidrs.iter().any(|c| c.contains(a)))
        else {
            continue;
        };
        let mut pkt = Packet::new(pod_ip, outside, 6, Some(40000), Some(443));
        pkt.oif = default.dev.clone();
        pkt.ct.state = CtState::New;
        let outcomes = rs.evaluate(
            Hook::Postrouting,
            &pkt,
            &input.host_context(h),
            &EvalOptions::default(),
        );
        let snat = outcomes.iter().any(|o| {
            matches!(
                o.nat,
                Some(
                    netray_netfilter::NatAction::Snat { .. }
                        | netray_netfilter::NatAction::Masquerade { .. }
                )
            )
        });
        let unknown = outcomes
            .iter()
            .any(|o| matches!(o.verdict, Verdict::Unknown { .. }));
        if !snat && !unknown {
            out.push(h.finding(
                "missing-snat",
                Severity::Warning,
                vec![
                    format!("route: {}", crate::scan::route_text(default)),
                    format!(
                        "nat POSTROUTING: no SNAT/MASQUERADE for {pod_ip} → {outside} out {}",
                        default.dev.as_deref().unwrap_or("?")
                    ),
                ],
                format!(
                    "Pod traffic leaving node {} for addresses outside the cluster keeps its pod \
                     source address: the outside cannot route replies to the pod network, so \
                     connections from pods to the internet or to other hosts time out.",
                    h.node.node.name
                ),
                "restore the CNI's masquerade rule (flannel: FLANNEL-POSTRTG, ip-masq-agent, or \
                 iptables -t nat -A POSTROUTING -s POD_CIDR ! -d CLUSTER_CIDR -j MASQUERADE)"
                    .into(),
            ));
        }
    }
}

/// Firewall input netray could not read: a source that does not parse at all, or lines that
/// became unknown items. Checks that evaluate rules are blind or uncertain there, and the user
/// must know.
pub(crate) fn unreadable_rules(input: &ScanInput, out: &mut Vec<Finding>) {
    for n in &input.namespaces {
        match input.ruleset(n) {
            Some(Err(e)) => out.push(
                n.finding(
                    "firewall-unreadable",
                    Severity::Warning,
                    vec![e.clone()],
                    "netray could not read this namespace's firewall at all, so no check or trace \
                 can evaluate its rules here: every verdict through it is uncertain."
                        .into(),
                    "re-collect the snapshot (netray collect) or report the input that fails"
                        .into(),
                ),
            ),
            Some(Ok(rs)) if !rs.diagnostics().is_empty() => {
                let d = rs.diagnostics();
                let mut evidence: Vec<String> = d.iter().take(5).map(|d| d.to_string()).collect();
                if d.len() > 5 {
                    evidence.push(format!("… and {} more", d.len() - 5));
                }
                out.push(n.finding(
                    "uncertain-rule",
                    Severity::Info,
                    evidence,
                    format!(
                        "{} {} constructs netray does not model or could not parse; traces \
                         through them explore both outcomes and say 'uncertain'.",
                        netray_snapshot::text::count(d.len(), "firewall item", "firewall items"),
                        if d.len() == 1 { "uses" } else { "use" }
                    ),
                    "check those rules by hand (iptables -nvL counters, nft monitor trace)".into(),
                ));
            }
            _ => {}
        }
    }
}
