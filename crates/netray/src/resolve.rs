//! From the flow syntax to flows the datapath can walk: names (`pod/…`, `svc/…`, `node/…`,
//! `external/…`) are resolved through the cluster view, or through the snapshots when the
//! bundle has no `cluster.json`.

use std::net::IpAddr;

use netray_datapath::walk::{Flow, Start};
use netray_kube::{ClusterView, IpFamily};
use netray_snapshot::{Bundle, NetnsRole};

use crate::flow::{Endpoint, FlowArgs, Place, PortRef, Proto, Target};

/// One concrete flow and how the user's words resolved into it.
#[derive(Debug, Clone)]
pub struct ResolvedFlow {
    /// `svc/default/web:80/tcp (10.96.0.20:80)`-style description of the destination.
    pub to_label: String,
    /// `pod/default/client (10.244.0.5)`-style description of the source.
    pub from_label: String,
    /// The flow.
    pub flow: Flow,
}

/// `; did you mean KIND/NS/NAME?` for a misspelt `NS/NAME` among `have`.
fn suggest<'a>(kind: &str, wanted: &str, have: impl IntoIterator<Item = &'a str>) -> String {
    netray_kube::suggest::did_you_mean(wanted, have, |c| format!("{kind}/{c}"))
}

/// `\n  pods in namespace default: a, b, …` (at most 8 names) to close a "no such" error.
fn listing(what: &str, names: &[String]) -> String {
    if names.is_empty() {
        return format!("\n  there are no {what}");
    }
    let mut v = names.to_vec();
    v.sort();
    let n = v.len();
    v.truncate(8);
    format!(
        "\n  {what}: {}{}",
        v.join(", "),
        if n > 8 {
            format!(", … ({n} in all)")
        } else {
            String::new()
        }
    )
}

fn need_cluster<'a>(
    cluster: Option<&'a ClusterView>,
    what: &str,
) -> Result<&'a ClusterView, String> {
    cluster.ok_or_else(|| {
        format!("`{what}` is a Kubernetes name but the bundle has no cluster.json; use an address")
    })
}

/// A node's address of `family` (IPv4 when not given): its InternalIP of that family from the
/// cluster view, else the first global address of that family of its host namespace that is
/// not on a bridge or overlay device.
fn node_ip(
    name: &str,
    bundle: &Bundle,
    cluster: Option<&ClusterView>,
    family: Option<IpFamily>,
) -> Result<IpAddr, String> {
    if let Some(n) = cluster.and_then(|c| c.node(name)) {
        let internal = match family {
            Some(f) => n.internal_ip(f),
            None => n
                .addresses
                .iter()
                .filter(|a| a.kind == "InternalIP")
                .find_map(|a| a.address.parse().ok()),
        };
        let any = n
            .ips()
            .into_iter()
            .find(|ip| family.is_none_or(|f| f.has(*ip)));
        if let Some(ip) = internal.or(any) {
            return Ok(ip);
        }
    }
    let family = family.unwrap_or(IpFamily::V4);
    let snap = bundle
        .nodes
        .iter()
        .find(|n| n.node.name == name)
        .ok_or_else(|| {
            let mut have: Vec<String> = bundle.nodes.iter().map(|n| n.node.name.clone()).collect();
            if let Some(c) = cluster {
                have.extend(c.nodes.iter().map(|n| n.name.clone()));
            }
            have.sort();
            have.dedup();
            format!(
                "no node `{name}` in the bundle{}{}",
                suggest("node", name, have.iter().map(String::as_str)),
                listing("nodes", &have)
            )
        })?;
    let host = snap
        .namespaces
        .iter()
        .find(|n| n.role == NetnsRole::Host)
        .ok_or_else(|| format!("node `{name}` has no host namespace"))?;
    host.addresses
        .iter()
        .filter(|a| a.scope == "global" && family.has(a.addr.addr()))
        .filter(|a| {
            host.link(&a.dev).is_some_and(|l| {
                !matches!(
                    l.kind,
                    netray_snapshot::LinkKind::Bridge { .. }
                        | netray_snapshot::LinkKind::Vxlan { .. }
                )
            })
        })
        .map(|a| a.addr.addr())
        .next()
        .ok_or_else(|| format!("node `{name}` has no usable {family} address"))
}

/// A pod's IP of `family` (its primary, first, IP when not given).
fn pod_ip(
    namespace: &str,
    name: &str,
    cluster: Option<&ClusterView>,
    family: Option<IpFamily>,
) -> Result<IpAddr, String> {
    let c = need_cluster(cluster, &format!("pod/{namespace}/{name}"))?;
    let p = c.pod(namespace, name).ok_or_else(|| {
        let all: Vec<String> = c
            .pods
            .iter()
            .map(|p| format!("{}/{}", p.namespace, p.name))
            .collect();
        let here: Vec<String> = c
            .pods
            .iter()
            .filter(|p| p.namespace == namespace)
            .map(|p| p.name.clone())
            .collect();
        format!(
            "no pod {namespace}/{name} in the cluster view{}{}",
            suggest(
                "pod",
                &format!("{namespace}/{name}"),
                all.iter().map(String::as_str)
            ),
            listing(&format!("pods in namespace {namespace}"), &here)
        )
    })?;
    let Some(f) = family else {
        return p
            .ips
            .first()
            .copied()
            .ok_or_else(|| format!("pod {namespace}/{name} has no IP (phase {})", p.phase));
    };
    p.ip(f).ok_or_else(|| {
        let have: Vec<String> = p.ips.iter().map(IpAddr::to_string).collect();
        format!(
            "pod {namespace}/{name} has no {f} address (podIPs: {}){}",
            if have.is_empty() {
                "none".to_string()
            } else {
                have.join(", ")
            },
            match f {
                IpFamily::V4 if !have.is_empty() => "; try --family 6",
                IpFamily::V6 if !have.is_empty() => "; try --family 4",
                _ => "",
            }
        )
    })
}

/// `%IFACE` on a source: the namespace chosen by `is_place` (a namespace and its node's
/// name) must have that interface; else an error naming its interfaces, with a did-you-mean.
/// A place the bundle does not have is left to the walk's own error.
fn check_interface(
    bundle: &Bundle,
    iface: &str,
    is_place: impl Fn(&netray_snapshot::NetnsSnapshot, &str) -> bool,
) -> Result<(), String> {
    let Some((node, ns)) = bundle.nodes.iter().find_map(|n| {
        n.namespaces
            .iter()
            .find(|ns| is_place(ns, &n.node.name))
            .map(|ns| (&n.node.name, ns))
    }) else {
        return Ok(());
    };
    if ns.links.iter().any(|l| l.name == iface) {
        return Ok(());
    }
    let names: Vec<&str> = ns.links.iter().map(|l| l.name.as_str()).collect();
    let place = match &ns.id.name {
        Some(n) if ns.role != NetnsRole::Host => format!("namespace {n} on node {node}"),
        _ => format!("node {node}"),
    };
    Err(format!(
        "{place} has no interface `{iface}` (it has {}){}",
        names.join(", "),
        netray_kube::suggest::did_you_mean(iface, names.iter().copied(), |c| format!("%{c}"))
    ))
}

/// Resolve the source: address, where it starts, label.
fn resolve_source(
    ep: &Endpoint,
    bundle: &Bundle,
    cluster: Option<&ClusterView>,
    dst_ip: IpAddr,
) -> Result<(IpAddr, Start, String), String> {
    match &ep.target {
        Target::Addr { ip, at } => {
            let start = match at {
                None => Start::Auto,
                Some(Place::Node(n)) => Start::Node(n.clone()),
                Some(Place::Netns(n)) => Start::Netns(n.clone()),
                Some(Place::NodeVia(n, i)) => {
                    check_interface(bundle, i, |ns, node| {
                        node == n && ns.role == NetnsRole::Host
                    })?;
                    Start::NodeVia(n.clone(), i.clone())
                }
                Some(Place::NetnsVia(n, i)) => {
                    check_interface(bundle, i, |ns, _| {
                        ns.id.name.as_deref() == Some(n.as_str())
                            || format!("netns:{}", ns.id.inode) == *n
                    })?;
                    Start::NetnsVia(n.clone(), i.clone())
                }
            };
            let label = match at {
                None => ip.to_string(),
                Some(Place::Node(n)) => format!("{ip}@node/{n}"),
                Some(Place::Netns(n)) => format!("{ip}@netns/{n}"),
                Some(Place::NodeVia(n, i)) => format!("{ip}@node/{n}%{i}"),
                Some(Place::NetnsVia(n, i)) => format!("{ip}@netns/{n}%{i}"),
            };
            Ok((*ip, start, label))
        }
        Target::Pod { namespace, name } => {
            let ip = pod_ip(namespace, name, cluster, Some(IpFamily::of(dst_ip)))?;
            Ok((ip, Start::Auto, format!("pod/{namespace}/{name} ({ip})")))
        }
        Target::Node(name) => {
            let ip = node_ip(name, bundle, cluster, Some(IpFamily::of(dst_ip)))?;
            // Generated by the node itself, unbound: the kernel picks the source per
            // destination (a route's src, the egress device's address), not always the
            // InternalIP.
            Ok((ip, Start::Host(name.clone()), format!("node/{name}")))
        }
        Target::External(ip) => {
            // An outside client enters the cluster at the node owning the destination address
            // (NodePort, node IP); otherwise at the first node (LoadBalancer, external IPs).
            let entry = bundle
                .nodes
                .iter()
                .find(|n| {
                    n.namespaces.iter().any(|ns| {
                        ns.role == NetnsRole::Host
                            && ns.addresses.iter().any(|a| a.addr.addr() == dst_ip)
                    })
                })
                .or_else(|| bundle.nodes.first())
                .map(|n| n.node.name.clone())
                .ok_or("the bundle has no nodes")?;
            Ok((
                *ip,
                Start::Node(entry.clone()),
                format!("external/{ip} (entering node/{entry})"),
            ))
        }
        Target::Service { .. } => Err("a Service cannot be the source of a flow".into()),
    }
}

/// One destination: address, port, protocol, label, and the nodes an outside client's
/// packets enter at (empty: the default entry, see `resolve_source`).
type Dest = (IpAddr, Option<u16>, Proto, String, Vec<String>);

fn resolve_destination(
    args: &FlowArgs,
    bundle: &Bundle,
    cluster: Option<&ClusterView>,
) -> Result<Vec<Dest>, String> {
    let ep = &args.to;
    let number = |p: &Option<PortRef>| -> Result<Option<u16>, String> {
        match p {
            None => Ok(None),
            Some(PortRef::Number(n)) => Ok(Some(*n)),
            Some(PortRef::Name(n)) => Err(format!(
                "port name `{n}` only works with svc/NS/NAME destinations"
            )),
        }
    };
    let proto = args.protocol()?;
    let family = args.fixed_family()?;
    let one = |ip: IpAddr, label: String| -> Result<Vec<Dest>, String> {
        let port = number(&ep.port)?;
        let label = match port {
            Some(p) if proto != Proto::Icmp => format!("{label} port {p}/{proto}"),
            _ => format!("{label} {proto}"),
        };
        Ok(vec![(ip, port, proto, label, Vec::new())])
    };
    match &ep.target {
        Target::Addr { ip, at: None } => one(*ip, ip.to_string()),
        Target::Addr { at: Some(_), .. } => {
            Err("a destination is an address, not an address@place".into())
        }
        Target::External(ip) => one(*ip, format!("external/{ip}")),
        Target::Pod { namespace, name } => {
            let ip = pod_ip(namespace, name, cluster, family)?;
            one(ip, format!("pod/{namespace}/{name} ({ip})"))
        }
        Target::Node(name) => {
            let ip = node_ip(name, bundle, cluster, family)?;
            one(ip, format!("node/{name} ({ip})"))
        }
        Target::Service { namespace, name } => {
            let c = need_cluster(cluster, &format!("svc/{namespace}/{name}"))?;
            let svc = c.service(namespace, name).ok_or_else(|| {
                let all: Vec<String> = c
                    .services
                    .iter()
                    .map(|s| format!("{}/{}", s.namespace, s.name))
                    .collect();
                let here: Vec<String> = c
                    .services
                    .iter()
                    .filter(|s| s.namespace == *namespace)
                    .map(|s| s.name.clone())
                    .collect();
                format!(
                    "no service {namespace}/{name} in the cluster view{}{}",
                    suggest(
                        "svc",
                        &format!("{namespace}/{name}"),
                        all.iter().map(String::as_str)
                    ),
                    listing(&format!("Services in namespace {namespace}"), &here)
                )
            })?;
            // A client outside the cluster reaches a LoadBalancer Service at its ingress
            // address (or an external IP), entering at the nodes the load balancer sends to:
            // with externalTrafficPolicy Local only those hosting a ready endpoint (the others
            // fail its health check), else every node.
            let outside = matches!(args.from.target, Target::External(_));
            let ext_ip = svc
                .lb_ingress
                .iter()
                .chain(&svc.external_ips)
                .find(|ip| family.is_none_or(|f| f.has(**ip)))
                .copied()
                .filter(|_| outside);
            if outside && ext_ip.is_none() {
                let np: Vec<String> = svc
                    .ports
                    .iter()
                    .filter_map(|p| p.node_port.map(|n| format!("node/NAME:{n}")))
                    .collect();
                return Err(format!(
                    "service {namespace}/{name} has no LoadBalancer ingress or external IP: a \
                     client outside the cluster cannot reach its ClusterIP{}",
                    if np.is_empty() {
                        String::new()
                    } else {
                        format!("; try its NodePort ({})", np.join(", "))
                    }
                ));
            }
            // One destination address per family walked: the external address, or the
            // ClusterIP of every family the Service has (restricted to the flow's family).
            let ips: Vec<IpAddr> = match ext_ip {
                Some(ip) => vec![ip],
                None if svc.cluster_ips.is_empty() => {
                    return Err(format!(
                        "service {namespace}/{name} is headless (no ClusterIP); trace a pod instead"
                    ));
                }
                None => {
                    let fams = c.service_families(svc, family);
                    if fams.is_empty() {
                        let have: Vec<String> =
                            svc.ip_families.iter().map(|f| f.to_string()).collect();
                        return Err(format!(
                            "service {namespace}/{name} has no {} ClusterIP (ipFamilies: {}; \
                             clusterIPs: {})",
                            family.map(|f| f.name()).unwrap_or("IPv4"),
                            have.join(", "),
                            svc.cluster_ips
                                .iter()
                                .map(IpAddr::to_string)
                                .collect::<Vec<_>>()
                                .join(", ")
                        ));
                    }
                    fams.into_iter().filter_map(|f| svc.cluster_ip(f)).collect()
                }
            };
            let dual = svc.cluster_ip_families().len() > 1;
            let entries = |port: &netray_kube::ServicePort, ip: IpAddr| -> Vec<String> {
                if ext_ip.is_none() {
                    return Vec::new();
                }
                let nodes: Vec<String> = c.nodes.iter().map(|n| n.name.clone()).collect();
                if svc.external_traffic_policy != "Local" {
                    return nodes;
                }
                let ready = c.ready_endpoints_of(svc, port, IpFamily::of(ip));
                nodes
                    .into_iter()
                    .filter(|n| {
                        c.pods.iter().any(|p| {
                            p.node.as_deref() == Some(n.as_str())
                                && p.ips.iter().any(|ip| ready.iter().any(|(a, _)| a == ip))
                        })
                    })
                    .collect()
            };
            let explicit_proto = args.proto.or(ep.proto);
            let ports: Vec<_> = svc
                .ports
                .iter()
                .filter(|p| match &ep.port {
                    None => true,
                    Some(PortRef::Number(n)) => p.port == *n,
                    Some(PortRef::Name(n)) => &p.name == n,
                })
                .filter(|p| {
                    explicit_proto
                        .is_none_or(|want| p.protocol.eq_ignore_ascii_case(&want.to_string()))
                })
                .collect();
            if ports.is_empty() {
                let have: Vec<String> = svc
                    .ports
                    .iter()
                    .map(|p| format!("{}:{}/{}", p.name, p.port, p.protocol))
                    .collect();
                return Err(format!(
                    "service {namespace}/{name} has no such port (it has {})",
                    have.join(", ")
                ));
            }
            let mut out = Vec::new();
            for p in ports {
                let proto: Proto = p.protocol.parse()?;
                for &ip in &ips {
                    let at = std::net::SocketAddr::new(ip, p.port);
                    let fam = if dual {
                        format!("{}, ", IpFamily::of(ip))
                    } else {
                        String::new()
                    };
                    out.push((
                        ip,
                        Some(p.port),
                        proto,
                        format!("svc/{namespace}/{name}:{}/{} ({fam}{at})", p.port, proto),
                        entries(p, ip),
                    ));
                }
            }
            Ok(out)
        }
    }
}

/// Resolve `--from`/`--to` into one flow per destination port.
pub fn resolve(
    args: &FlowArgs,
    bundle: &Bundle,
    cluster: Option<&ClusterView>,
) -> Result<Vec<ResolvedFlow>, String> {
    let dests = resolve_destination(args, bundle, cluster)?;
    args.given_source_port()?;
    let mut out = Vec::new();
    for (dst, dport, proto, to_label, entries) in dests {
        if matches!(proto, Proto::Tcp | Proto::Udp | Proto::Sctp) && dport.is_none() {
            return Err(format!(
                "{proto} needs a destination port (--to {to_label}:PORT), or use --proto icmp"
            ));
        }
        let mut starts = Vec::new();
        if entries.is_empty() {
            starts.push((
                resolve_source(&args.from, bundle, cluster, dst)?,
                to_label.clone(),
            ));
        } else if let Target::External(ip) = &args.from.target {
            // One flow per node the load balancer sends to; the entry node is said by the
            // destination's label ("… via node/NAME").
            for n in &entries {
                starts.push((
                    (*ip, Start::Node(n.clone()), format!("external/{ip}")),
                    format!("{to_label} via node/{n}"),
                ));
            }
        }
        if starts.is_empty() {
            return Err(format!(
                "{to_label}: no node can receive it from the load balancer (externalTrafficPolicy Local and no node hosts a ready endpoint)"
            ));
        }
        for ((src, start, from_label), to_label) in starts {
            out.push(ResolvedFlow {
                to_label,
                from_label,
                flow: Flow {
                    src,
                    dst,
                    proto: proto.number(),
                    sport: args.source_port(),
                    dport: if proto == Proto::Icmp { None } else { dport },
                    size: args.size.map(u32::from),
                    start,
                },
            });
        }
    }
    Ok(out)
}
