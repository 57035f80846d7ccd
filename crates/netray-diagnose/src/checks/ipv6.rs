//! IPv6 and dual-stack checks (issue 11): IPv6 forwarding off on a node that routes IPv6 pod
//! traffic, an ip6tables FORWARD policy DROP that nothing overrides for pod traffic,
//! `accept_ra=2` on a forwarding node, and dual-stack Services with endpoints in one family
//! only. (Routes to other nodes' IPv6 pod CIDRs are checked with the IPv4 ones by
//! `no-route`; stale VXLAN neighbour/FDB entries and overlay MTU by the overlay checks, which
//! are family-agnostic.)
//!
//! Kernel semantics as measured on Linux 6.18 (`crates/netray/tests/ipv6_lab.rs`,
//! `dualstack_lab.rs`): only `net.ipv6.conf.all.forwarding` decides IPv6 forwarding (an
//! interface's own `forwarding` does not), except that an input interface with
//! `force_forwarding = 1` forwards regardless.

use std::net::IpAddr;

use ipnet::IpNet;
use netray_netfilter::ipt::Policy;
use netray_netfilter::{CtState, EvalOptions, Hook, Matched, Packet, Verdict};
use netray_snapshot::text::count;
use netray_snapshot::{IpFamily, LinkKind, RouteType};

use crate::finding::{Finding, Severity};
use crate::scan::{Ns, ScanInput};

const ALL_FORWARDING: &str = "net.ipv6.conf.all.forwarding";

/// The sysctl name of a per-interface IPv6 setting (dots in interface names become slashes).
fn conf6(iface: &str, key: &str) -> String {
    format!("net.ipv6.conf.{}.{key}", iface.replace('.', "/"))
}

/// This node's IPv6 pod CIDRs (cluster view), else the IPv6 subnets of its workloads.
fn v6_pod_nets(input: &ScanInput, h: &Ns) -> Vec<IpNet> {
    let mine: Vec<IpNet> = input
        .pod_cidrs()
        .get(&h.node.node.name)
        .into_iter()
        .flatten()
        .filter(|c| c.addr().is_ipv6())
        .copied()
        .collect();
    if !mine.is_empty() {
        return mine;
    }
    input
        .workloads_on(h.node)
        .flat_map(|w| {
            w.ns.addresses
                .iter()
                .filter(|a| a.scope == "global" && a.addr.addr().is_ipv6())
                .map(|a| a.addr.trunc())
        })
        .collect()
}

/// A global IPv6 address of a workload on this node, if any.
fn local_v6_pod(input: &ScanInput, h: &Ns) -> Option<IpAddr> {
    input.workloads_on(h.node).find_map(|w| {
        w.ns.addresses
            .iter()
            .find(|a| a.scope == "global" && a.addr.addr().is_ipv6())
            .map(|a| a.addr.addr())
    })
}

/// `net.ipv6.conf.all.forwarding = 0` on a node that routes IPv6 pod traffic.
pub(crate) fn forwarding(input: &ScanInput, out: &mut Vec<Finding>) {
    for h in input.subject_hosts().filter(|h| input.routes_for_others(h)) {
        if h.ns.sysctl(ALL_FORWARDING).map(str::trim) != Some("0") {
            continue;
        }
        let nets = v6_pod_nets(input, &h);
        if nets.is_empty() {
            continue;
        }
        let forced: Vec<&str> =
            h.ns.links
                .iter()
                .filter(|l| {
                    h.ns.sysctl(&conf6(&l.name, "force_forwarding"))
                        .map(str::trim)
                        == Some("1")
                })
                .map(|l| l.name.as_str())
                .collect();
        let me = &h.node.node.name;
        let mut evidence = vec![
            format!("{ALL_FORWARDING} = 0"),
            format!(
                "IPv6 pod networks routed here: {}",
                nets.iter()
                    .map(IpNet::to_string)
                    .collect::<Vec<_>>()
                    .join(", ")
            ),
        ];
        if !forced.is_empty() {
            evidence.push(format!(
                "force_forwarding = 1 on {} (packets arriving there are still forwarded)",
                forced.join(", ")
            ));
        }
        out.push(
            h.finding(
                "ipv6-forwarding-disabled",
                if forced.is_empty() {
                    Severity::Critical
                } else {
                    Severity::Warning
                },
                evidence,
                format!(
                    "IPv6 forwarding is off on {me}: IPv6 packets to and from its pods that must be \
                     routed (other nodes' pods, IPv6 Service backends elsewhere, the pods' own \
                     IPv6 traffic leaving the node) are dropped{}. The kernel decides IPv6 \
                     forwarding by conf.all.forwarding alone (an interface's own `forwarding` \
                     does not turn it on). IPv4 is not affected.",
                    if forced.is_empty() {
                        String::new()
                    } else {
                        format!(" except what arrives on {}", forced.join(", "))
                    }
                ),
                format!(
                    "on {me}: sysctl -w {ALL_FORWARDING}=1 (and persist it in /etc/sysctl.d/)"
                ),
            )
            .about([h.sysctl_obj(ALL_FORWARDING)]),
        );
    }
}

/// ip6tables `filter FORWARD` policy DROP with no rule accepting new IPv6 pod traffic from
/// other nodes to pods here.
pub(crate) fn forward_policy_drop(input: &ScanInput, out: &mut Vec<Finding>) {
    for h in input.subject_hosts() {
        let Some(Ok(rs)) = input.ruleset(&h) else {
            continue;
        };
        let policy_drop = input.dumps(&h).iter().find_map(|d| {
            if d.family != IpFamily::Ipv6 {
                return None;
            }
            let t = d.table("filter")?;
            let c = t.chains.iter().find(|c| &*c.name == "FORWARD")?;
            (c.policy == Some(Policy::Drop)).then_some((d, c))
        });
        let Some((dump, chain)) = policy_drop else {
            continue;
        };
        let Some(local) = local_v6_pod(input, &h) else {
            continue;
        };
        let me = &h.node.node.name;
        // A pod on another node (its IPv6 pod CIDR) to a pod here.
        let remote = input
            .pod_cidrs()
            .iter()
            .filter(|(node, _)| *node != me)
            .flat_map(|(_, c)| c.iter())
            .find(|c| c.addr().is_ipv6())
            .copied();
        let Some(remote) = remote else { continue };
        let src = match remote.network() {
            IpAddr::V6(a) => IpAddr::V6((u128::from(a).wrapping_add(2)).into()),
            other => other,
        };
        let route_dev = |dst: IpAddr| {
            h.ns.routes
                .iter()
                .filter(|r| {
                    r.table == 254 && r.route_type == RouteType::Unicast && r.dst.contains(&dst)
                })
                .max_by_key(|r| r.dst.prefix_len())
                .and_then(|r| r.dev.clone())
        };
        let in_dev = route_dev(src).or_else(|| {
            h.ns.links
                .iter()
                .find(|l| matches!(l.kind, LinkKind::Vxlan { .. }))
                .map(|l| l.name.clone())
        });
        let out_dev = route_dev(local);
        let mut pkt = Packet::new(src, local, 6, Some(40000), Some(80));
        pkt.iif = in_dev.clone();
        pkt.oif = out_dev.clone();
        pkt.ct.state = CtState::New;
        let outcomes = rs.evaluate(
            Hook::Forward,
            &pkt,
            &input.host_context(&h),
            &EvalOptions {
                nat: false,
                ..EvalOptions::default()
            },
        );
        let by_policy = outcomes.iter().any(|o| {
            matches!(o.verdict, Verdict::Drop)
                && o.trail.last().is_some_and(|t| t.matched == Matched::Policy)
        });
        if !by_policy {
            continue;
        }
        let decl = dump.slice(chain.decl).to_string();
        let pod_net = input
            .cluster
            .and_then(|c| c.flannel_network_v6)
            .or_else(|| {
                input.cluster.and_then(|c| {
                    c.kube_proxy
                        .as_ref()
                        .and_then(|k| k.cluster_cidr_of(netray_kube::IpFamily::V6))
                })
            })
            .unwrap_or(remote);
        out.push(
            h.finding(
                "ip6-forward-policy-drop",
                Severity::Critical,
                vec![
                    format!("{} filter: {decl}", dump.source_name()),
                    format!(
                        "no ip6tables FORWARD rule accepts {src} → {local} (tcp/80, NEW) from {} \
                         to {}",
                        in_dev.as_deref().unwrap_or("?"),
                        out_dev.as_deref().unwrap_or("?")
                    ),
                ],
                format!(
                    "The ip6tables filter FORWARD chain on {me} has policy DROP and no rule accepts \
                     new IPv6 connections from pods on other nodes to pods here: cross-node IPv6 \
                     pod traffic and IPv6 Service traffic DNATed to pods on {me} is dropped \
                     (IPv4 has its own FORWARD chain and may well work)."
                ),
                format!(
                    "on {me}: ip6tables -I FORWARD -s {pod_net} -j ACCEPT && ip6tables -I FORWARD \
                     -d {pod_net} -j ACCEPT (or ip6tables -P FORWARD ACCEPT), made persistent"
                ),
            )
            .about([netray_datapath::KernelObject::Rule {
                at: h.place(),
                family: "ip6".into(),
                table: "filter".into(),
                chain: "FORWARD".into(),
                index: None,
                text: decl,
            }]),
        );
    }
}

/// `accept_ra = 2` on an interface of a forwarding node: router advertisements heard there
/// install default and prefix routes on a router, so any host on that link that sends one can
/// redirect the node's IPv6 traffic (pods' included).
pub(crate) fn accept_ra_forwarding(input: &ScanInput, out: &mut Vec<Finding>) {
    for h in input.subject_hosts() {
        if h.ns.sysctl(ALL_FORWARDING).map(str::trim) != Some("1") {
            continue;
        }
        let ra: Vec<String> =
            h.ns.links
                .iter()
                .filter(|l| l.kind != LinkKind::Loopback)
                .filter(|l| {
                    h.ns.sysctl(&conf6(&l.name, "accept_ra")).map(str::trim) == Some("2")
                        && h.ns.sysctl(&conf6(&l.name, "disable_ipv6")).map(str::trim) != Some("1")
                })
                .map(|l| l.name.clone())
                .collect();
        if ra.is_empty() {
            continue;
        }
        let ra_routes: Vec<String> =
            h.ns.routes
                .iter()
                .filter(|r| r.dst.addr().is_ipv6() && r.protocol == "ra")
                .map(crate::scan::route_text)
                .collect();
        let me = &h.node.node.name;
        let mut evidence = vec![format!("{ALL_FORWARDING} = 1")];
        evidence.extend(ra.iter().map(|d| format!("{} = 2", conf6(d, "accept_ra"))));
        evidence.extend(ra_routes.iter().map(|r| format!("route from an RA: {r}")));
        out.push(
            h.finding(
                "ipv6-accept-ra-forwarding",
                Severity::Warning,
                evidence,
                format!(
                    "{me} forwards IPv6 and accepts router advertisements on {} (accept_ra = 2): \
                     a default or prefix route learnt from any RA on that link steers the node's \
                     and its pods' IPv6 traffic{}.",
                    ra.join(", "),
                    if ra_routes.is_empty() {
                        String::new()
                    } else {
                        format!(
                            " ({} {} installed now)",
                            count(ra_routes.len(), "such route", "such routes"),
                            if ra_routes.len() == 1 { "is" } else { "are" }
                        )
                    }
                ),
                format!(
                    "on {me}: configure the IPv6 default route statically and set accept_ra to 0 \
                     on {} (sysctl -w net.ipv6.conf.IFACE.accept_ra=0), unless the RAs come from \
                     a router you control",
                    ra.join(", ")
                ),
            )
            .about(ra.iter().map(|d| h.sysctl_obj(&conf6(d, "accept_ra")))),
        );
    }
}

/// A dual-stack Service whose ClusterIP of one family has no ready endpoint of that family
/// while the other family has some: kube-proxy programs each family's rules from that family's
/// EndpointSlices only (`addressType`), so clients of that ClusterIP are rejected while the
/// other family works — typically pods without an address of that family, or an EndpointSlice
/// controller that dropped one family.
pub(crate) fn service_family_endpoints(input: &ScanInput, out: &mut Vec<Finding>) {
    let Some(c) = input.cluster else { return };
    for s in &c.services {
        let fams = s.cluster_ip_families();
        if s.kind == "ExternalName" || fams.len() < 2 {
            continue;
        }
        for p in &s.ports {
            let per: Vec<_> = fams
                .iter()
                .map(|f| (*f, c.ready_endpoints_of(s, p, *f)))
                .collect();
            if per.iter().all(|(_, e)| e.is_empty()) {
                continue; // no-endpoints says it for both
            }
            for (f, _) in per.iter().filter(|(_, e)| e.is_empty()) {
                let others: Vec<String> = per
                    .iter()
                    .filter(|(g, _)| g != f)
                    .map(|(g, e)| {
                        format!(
                            "{g}: {}",
                            count(e.len(), "ready endpoint", "ready endpoints")
                        )
                    })
                    .collect();
                let cip = s.cluster_ip(*f).map(|a| a.to_string()).unwrap_or_default();
                out.push(Finding {
                    code: "service-family-no-endpoints",
                    severity: Severity::Warning,
                    node: "-".into(),
                    netns: "-".into(),
                    pod: None,
                    objects: Vec::new(),
                    evidence: vec![
                        format!(
                            "svc/{}/{} port {}/{}: ClusterIPs {} (ipFamilies {})",
                            s.namespace,
                            s.name,
                            p.port,
                            p.protocol,
                            s.cluster_ips
                                .iter()
                                .map(IpAddr::to_string)
                                .collect::<Vec<_>>()
                                .join(", "),
                            s.ip_families
                                .iter()
                                .map(|f| f.name())
                                .collect::<Vec<_>>()
                                .join(", ")
                        ),
                        format!("{f}: no ready endpoint in its {f} EndpointSlices"),
                        others.join("; "),
                    ],
                    explanation: format!(
                        "Service {}/{} is dual-stack but has no ready {f} endpoint for port {}: \
                         kube-proxy programs each family from that family's EndpointSlices, so \
                         clients of its {f} ClusterIP {cip} are rejected while {} works.",
                        s.namespace,
                        s.name,
                        p.port,
                        per.iter()
                            .filter(|(g, _)| g != f)
                            .map(|(g, _)| g.name())
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                    fix: format!(
                        "check that the backing pods have {f} addresses (kubectl -n {} get pods \
                         -o wide; podIPs) and the EndpointSlices of both families: kubectl -n {} \
                         get endpointslices -l kubernetes.io/service-name={}",
                        s.namespace, s.namespace, s.name
                    ),
                    fix_commands: Vec::new(),
                    proof: None,
                });
            }
        }
    }
}

/// br_netfilter off for a family on a node whose pods sit on a bridge and whose kube-proxy
/// DNATs that family: a pod reaching a Service whose backend is on the same bridge gets the
/// backend's reply bridged straight back, without the de-DNAT (it comes from the pod's
/// address, not the Service's), and the connection fails. Measured for IPv6 in
/// `dualstack_lab.rs` (`bridge-nf-call-ip6tables=0`: the handshake dies, other flows work).
pub(crate) fn bridge_nf_disabled(input: &ScanInput, out: &mut Vec<Finding>) {
    for h in input.subject_hosts() {
        for (family, key, per_bridge_name) in [
            (
                IpFamily::Ipv4,
                "net.bridge.bridge-nf-call-iptables",
                "nf_call_iptables",
            ),
            (
                IpFamily::Ipv6,
                "net.bridge.bridge-nf-call-ip6tables",
                "nf_call_ip6tables",
            ),
        ] {
            if h.ns.sysctl(key).map(str::trim) != Some("0") {
                continue;
            }
            let v4 = family == IpFamily::Ipv4;
            let dnat = input
                .dumps(&h)
                .iter()
                .filter(|d| d.family == family)
                .find_map(|d| {
                    let t = d.table("nat")?;
                    t.chains.iter().flat_map(|c| c.rules.iter()).find_map(|r| {
                        matches!(
                            &r.target,
                            netray_netfilter::ipt::Target::Nat(n)
                                if matches!(**n, netray_netfilter::NatAction::Dnat { .. })
                        )
                        .then(|| d.slice(r.span).to_string())
                    })
                });
            let Some(dnat_text) = dnat else { continue };
            // Bridges holding a pod gateway of this family, without their own nf_call switch.
            let bridges: Vec<&str> = h
                .ns
                .links
                .iter()
                .filter(|l| match &l.kind {
                    LinkKind::Bridge {
                        nf_call_iptables,
                        nf_call_ip6tables,
                        ..
                    } => {
                        !(if v4 {
                            *nf_call_iptables
                        } else {
                            *nf_call_ip6tables
                        })
                    }
                    _ => false,
                })
                .filter(|l| {
                    h.ns.addresses.iter().any(|a| {
                        a.dev == l.name && a.scope == "global" && a.addr.addr().is_ipv4() == v4
                    })
                })
                .filter(|l| {
                    input
                        .workloads_on(h.node)
                        .filter(|w| {
                            w.ns.addresses.iter().any(|a| {
                                a.scope == "global"
                                    && a.addr.addr().is_ipv4() == v4
                                    && h.ns.addresses.iter().any(|b| {
                                        b.dev == l.name && b.addr.trunc().contains(&a.addr.addr())
                                    })
                            })
                        })
                        .count()
                        >= 2
                })
                .map(|l| l.name.as_str())
                .collect();
            if bridges.is_empty() {
                continue;
            }
            let me = &h.node.node.name;
            let fam = if v4 { "IPv4" } else { "IPv6" };
            out.push(
                h.finding(
                    "bridge-nf-call-disabled",
                    Severity::Critical,
                    vec![
                        format!("{key} = 0"),
                        format!(
                            "{per_bridge_name} off on {}, which carries pods' {fam} traffic",
                            bridges.join(", ")
                        ),
                        format!(
                            "{fam} DNAT here: {}",
                            netray_snapshot::text::clip(&dnat_text, 200)
                        ),
                    ],
                    format!(
                        "br_netfilter does not pass bridged {fam} traffic through the firewall on \
                         {me}: a pod reaching a Service whose backend is a pod on the same bridge \
                         gets the backend's reply bridged straight back without the de-DNAT \
                         (from the pod's address instead of the Service's), and the connection \
                         fails. Other {fam} flows are not affected."
                    ),
                    format!(
                        "on {me}: sysctl -w {key}=1 (kubeadm requires it; persist it in \
                         /etc/sysctl.d/, with the br_netfilter module loaded at boot)"
                    ),
                )
                .about([h.sysctl_obj(key)]),
            );
        }
    }
}

/// IPv6's minimum link MTU (RFC 8200): below it the kernel turns IPv6 off on the device.
const IPV6_MIN_MTU: u32 = 1280;

/// A link whose MTU is below IPv6's minimum where the cluster (or the namespace) uses IPv6.
/// Measured on Linux 6.18: setting a veth's MTU to 1200 removes its IPv6 addresses and the
/// routes through it (`ping -6`: "Network is unreachable"), `ip -6 addr add` is refused
/// (EINVAL) while the MTU stays low, and raising the MTU again does not bring the addresses
/// back. An overlay derived from a small underlay (flannel-v6.1 = underlay − 70) gets there
/// first.
pub(crate) fn min_mtu(input: &ScanInput, out: &mut Vec<Finding>) {
    // IPv6 is in use when the cluster has IPv6 pod networks or any namespace of the bundle has
    // a global IPv6 address (the device itself has none left: the kernel removed them).
    let v6_in_use = input
        .pod_cidrs()
        .values()
        .flatten()
        .any(|c| c.addr().is_ipv6())
        || input.namespaces.iter().any(|n| {
            n.ns.addresses
                .iter()
                .any(|a| a.addr.addr().is_ipv6() && a.scope == "global")
        });
    if !v6_in_use {
        return;
    }
    for n in input.subjects() {
        for l in n.ns.links.iter().filter(|l| {
            l.kind != LinkKind::Loopback
                && l.is_up()
                && l.mtu < IPV6_MIN_MTU
                && n.ns.sysctl(&conf6(&l.name, "disable_ipv6")).map(str::trim) != Some("1")
        }) {
            let v6_here =
                n.ns.addresses
                    .iter()
                    .filter(|a| a.dev == l.name && a.addr.addr().is_ipv6())
                    .count();
            let me = &n.node.node.name;
            let place = n.label();
            let mut f = n.finding(
                "ipv6-mtu-below-minimum",
                Severity::Critical,
                vec![
                    format!(
                        "{} mtu {} (IPv6 needs at least {IPV6_MIN_MTU})",
                        l.name, l.mtu
                    ),
                    format!(
                        "IPv6 addresses on {}: {}",
                        l.name,
                        if v6_here == 0 {
                            "none".to_string()
                        } else {
                            v6_here.to_string()
                        }
                    ),
                ],
                format!(
                    "{} in {me}/{place} has MTU {}, below IPv6's minimum of {IPV6_MIN_MTU}: the \
                     kernel removes the device's IPv6 addresses and routes and refuses new ones, \
                     so no IPv6 traffic uses it (IPv4 still does). Raising the MTU does not bring \
                     the addresses back.",
                    l.name, l.mtu
                ),
                format!(
                    "on {me} ({place}): ip link set {} mtu {IPV6_MIN_MTU} or more (for an overlay: \
                     raise the underlay MTU or the CNI's configured MTU), then restore the IPv6 \
                     addresses (restart the pod or the CNI agent that configures them)",
                    l.name
                ),
            );
            f.objects.push(netray_datapath::KernelObject::Link {
                at: n.place(),
                name: l.name.clone(),
                state: format!("mtu {}", l.mtu),
                mtu: Some(l.mtu),
            });
            out.push(f);
        }
    }
}
