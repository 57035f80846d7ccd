//! Service checks against the cluster view: endpoints, LB addresses in the local table, clusterCIDR, listening ports.

use std::collections::HashMap;
use std::net::IpAddr;

use ipnet::IpNet;
use netray_snapshot::RouteType;

use crate::finding::{Finding, Severity};
use crate::scan::{ScanInput, route_text};

pub(crate) fn services_without_endpoints(input: &ScanInput, out: &mut Vec<Finding>) {
    let Some(c) = input.cluster else { return };
    for s in &c.services {
        if s.kind == "ExternalName" || s.cluster_ips.is_empty() {
            continue;
        }
        for p in &s.ports {
            if input.ready_endpoints(s, p).is_empty() {
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
                    pod: None,
                    objects: Vec::new(),
                    fix_commands: Vec::new(),
                    proof: None,
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
        if vips.is_empty() {
            continue;
        }
        for h in input.subject_hosts() {
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
                        )
                        .about(
                            std::iter::once(netray_datapath::KernelObject::Route {
                                at: h.place(),
                                table: 255,
                                route: route_text(r),
                                rule: None,
                            })
                            .chain(
                                h.ns.addresses
                                    .iter()
                                    .filter(|a| a.addr.addr() == *vip)
                                    .map(|a| netray_datapath::KernelObject::Address {
                                        at: h.place(),
                                        dev: a.dev.clone(),
                                        addr: a.addr.to_string(),
                                    }),
                            ),
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
            pod: None,
            objects: Vec::new(),
            fix_commands: Vec::new(),
            proof: None,
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
            pod: None,
            objects: Vec::new(),
            fix_commands: Vec::new(),
            proof: None,
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
            for (ip, port) in input.ready_endpoints(s, p) {
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

/// Conntrack entries that still DNAT a Service address to a backend that is no longer a ready
/// endpoint: later packets of that flow (UDP above all: DNS clients reuse their source port)
/// keep going to the old backend until the entry expires, whatever kube-proxy's rules say now.
pub(crate) fn stale_conntrack(input: &ScanInput, out: &mut Vec<Finding>) {
    let Some(c) = input.cluster else { return };
    // Services by the addresses clients use (ClusterIP, external, LB), in the view's order.
    let mut by_addr: HashMap<IpAddr, Vec<usize>> = HashMap::new();
    for (i, s) in c.services.iter().enumerate() {
        for a in s
            .cluster_ips
            .iter()
            .chain(&s.external_ips)
            .chain(&s.lb_ingress)
        {
            let v = by_addr.entry(*a).or_default();
            if v.last() != Some(&i) {
                v.push(i);
            }
        }
    }
    for n in input.subjects() {
        let Some(ct) = &n.ns.conntrack else { continue };
        let mut stale: Vec<String> = Vec::new();
        let mut vips: Vec<String> = Vec::new();
        let mut objects = Vec::new();
        let mut fix_commands = Vec::new();
        for e in &ct.entries {
            if !e.status.iter().any(|s| s == "DST_NAT") {
                continue;
            }
            let (Some(dport), Some(backend_port)) = (e.orig.dport, e.reply.sport) else {
                continue;
            };
            let proto = match e.proto {
                6 => "TCP",
                17 => "UDP",
                132 => "SCTP",
                _ => continue,
            };
            // The Service whose ClusterIP (or external address) and port the client used.
            let Some((svc, port)) = by_addr
                .get(&e.orig.dst)
                .into_iter()
                .flatten()
                .find_map(|&i| {
                    let s = &c.services[i];
                    let p = s
                        .ports
                        .iter()
                        .find(|p| p.port == dport && p.protocol.eq_ignore_ascii_case(proto))?;
                    Some((s, p))
                })
            else {
                continue;
            };
            let ready = input.ready_endpoints(svc, port);
            if ready.contains(&(e.reply.src, backend_port)) {
                continue;
            }
            stale.push(format!(
                "{} src={} dst={} sport={} dport={} → backend {}:{} ({}; svc/{}/{} ready: {})",
                proto.to_ascii_lowercase(),
                e.orig.src,
                e.orig.dst,
                e.orig.sport.unwrap_or(0),
                dport,
                e.reply.src,
                backend_port,
                e.status.join(","),
                svc.namespace,
                svc.name,
                if ready.is_empty() {
                    "none".to_string()
                } else {
                    ready
                        .iter()
                        .map(|(a, p)| format!("{a}:{p}"))
                        .collect::<Vec<_>>()
                        .join(" ")
                }
            ));
            let entry = netray_datapath::nf::CtEntry::from_collected(n.idx, e);
            fix_commands.push(netray_patch::FixCommand {
                node: n.node.node.name.clone(),
                netns: n.label(),
                pod: None,
                run: format!(
                    "conntrack -D -p {} --orig-src {} --orig-dst {} --orig-port-src {} --orig-port-dst {}",
                    proto.to_ascii_lowercase(),
                    entry.orig.src,
                    entry.orig.dst,
                    entry.orig.sport,
                    entry.orig.dport
                ),
            });
            objects.push(entry.object(n.place(), true));
            let v = format!("{}/{}", e.orig.dst, proto.to_ascii_lowercase());
            if !vips.contains(&v) {
                vips.push(v);
            }
        }
        if stale.is_empty() {
            continue;
        }
        let count = stale.len();
        stale.truncate(8);
        let mut f = n.finding(
            "stale-conntrack-entry",
            Severity::Warning,
            stale,
            format!(
                "{count} conntrack entr{} still send{} Service traffic to backends that are no \
                 longer ready endpoints. Packets of those flows skip the nat table and follow the \
                 entry until it expires — the classic \"DNS fails after a pod was replaced\" \
                 (UDP clients keep their source port).",
                if count == 1 { "y" } else { "ies" },
                if count == 1 { "s" } else { "" }
            ),
            format!(
                "delete them: {} (kube-proxy normally does this when an endpoint goes away)",
                vips.iter()
                    .map(|v| {
                        let (ip, p) = v.split_once('/').unwrap_or((v, "udp"));
                        format!("conntrack -D -p {p} --orig-dst {ip}")
                    })
                    .collect::<Vec<_>>()
                    .join("; ")
            ),
        );
        f.objects = objects;
        f.fix_commands = fix_commands;
        out.push(f);
    }
}
