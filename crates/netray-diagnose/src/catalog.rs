//! The check catalog: every check `netray scan` runs, with its stable code.

use crate::checks::{firewall, ipv6, links, overlay, routing, services, sysctl};
use crate::finding::Finding;
use crate::scan::ScanInput;

/// One check of the catalog.
pub struct Check {
    /// Codes this check can report.
    pub codes: &'static [&'static str],
    /// One line on what it looks for.
    pub title: &'static str,
    /// The check.
    pub run: fn(&ScanInput, &mut Vec<Finding>),
    /// Its findings name kernel objects ([`Finding::objects`]) of the namespaces it reports
    /// about, iterated through [`ScanInput::subjects`]: `diagnose` joins them to causes and
    /// runs them scoped to the flow's namespaces ([`crate::scan::scan_scoped`]).
    pub names_objects: bool,
}

/// The checks that read the cluster view (Services, EndpointSlices, pods, kube-proxy's
/// configuration): without one they do not run, and `scan` says so.
pub const NEEDS_CLUSTER: &[&str] = &[
    "no-endpoints",
    "lb-ip-in-local-table",
    "cluster-cidr-mismatch",
    "port-not-listening",
    "stale-conntrack-entry",
    "service-family-no-endpoints",
];

/// The checks that read a part of a node's state the collector may have been unable to
/// collect (`not_collected[].what` of its snapshot: a kernel module absent, a dump refused):
/// on such a node they do not run (or see nothing), and `scan` says which and why
/// ([`not_run_uncollected`]).
pub const NEEDS_COLLECTED: &[(&str, &[&str])] = &[
    ("sockets", &["port-not-listening"]),
    (
        "conntrack",
        &[
            "conntrack-table-full",
            "conntrack-drops",
            "stale-conntrack-entry",
        ],
    ),
    ("conntrack-stats", &["conntrack-drops"]),
    (
        "fdb",
        &[
            "stale-vxlan-neighbor",
            "stale-vxlan-fdb",
            "missing-vxlan-fdb",
        ],
    ),
    (
        "neighbours",
        &[
            "stale-vxlan-neighbor",
            "stale-vxlan-fdb",
            "missing-vxlan-fdb",
            "neighbor-unreachable",
        ],
    ),
    ("cgroup-bpf", &["bpf-datapath"]),
    ("tc-filters", &["bpf-datapath"]),
    ("tcx", &["bpf-datapath"]),
];

/// Checks that did not run on some nodes because a part of their state was not collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Uncollected {
    /// What was not collected (`sockets`, `conntrack`, …).
    pub what: &'static str,
    /// The checks that need it ([`NEEDS_COLLECTED`]).
    pub codes: &'static [&'static str],
    /// The nodes where it is missing, in bundle order.
    pub nodes: Vec<String>,
    /// Why, as the collector said: `node1: sock_diag is not loaded`, one per node.
    pub reasons: Vec<String>,
}

impl Uncollected {
    /// One sentence: what was not collected where and why, and that the checks did not run
    /// there.
    pub fn reason(&self) -> String {
        format!(
            "{} not collected on {} ({}): these checks did not run there",
            self.what,
            self.nodes.join(", "),
            self.reasons.join("; ")
        )
    }
}

/// The checks of [`NEEDS_COLLECTED`] that could not run on some node of `bundle`, one entry
/// per missing part, in [`NEEDS_COLLECTED`] order.
pub fn not_run_uncollected(bundle: &netray_snapshot::Bundle) -> Vec<Uncollected> {
    let mut out = Vec::new();
    for &(what, codes) in NEEDS_COLLECTED {
        let mut nodes: Vec<String> = Vec::new();
        let mut reasons: Vec<String> = Vec::new();
        for n in &bundle.nodes {
            let Some(nc) = n.not_collected.iter().find(|c| c.what == what) else {
                continue;
            };
            nodes.push(n.node.name.clone());
            reasons.push(format!("{}: {}", n.node.name, nc.reason));
        }
        if !nodes.is_empty() {
            out.push(Uncollected {
                what,
                codes,
                nodes,
                reasons,
            });
        }
    }
    out
}

/// Every check, in the order they run.
pub const CATALOG: &[Check] = &[
    Check {
        codes: &["ip-forward-disabled"],
        title: "net.ipv4.ip_forward is 0 on a node",
        run: sysctl::ip_forward,
        names_objects: true,
    },
    Check {
        codes: &["forwarding-disabled-iface"],
        title: "per-interface forwarding is 0 on a node interface",
        run: sysctl::iface_forwarding,
        names_objects: false,
    },
    Check {
        codes: &["ipv6-forwarding-disabled"],
        title: "net.ipv6.conf.all.forwarding is 0 on a node that routes IPv6 pod traffic",
        run: ipv6::forwarding,
        names_objects: true,
    },
    Check {
        codes: &["ip6-forward-policy-drop"],
        title: "ip6tables filter FORWARD policy DROP that drops cross-node IPv6 pod traffic",
        run: ipv6::forward_policy_drop,
        names_objects: true,
    },
    Check {
        codes: &["ipv6-accept-ra-forwarding"],
        title: "accept_ra=2 on an interface of an IPv6-forwarding node (RA routes on a router)",
        run: ipv6::accept_ra_forwarding,
        names_objects: true,
    },
    Check {
        codes: &["bridge-nf-call-disabled"],
        title: "br_netfilter off for a family kube-proxy DNATs, with pods on a bridge (same-bridge Service replies skip the de-DNAT)",
        run: ipv6::bridge_nf_disabled,
        names_objects: true,
    },
    Check {
        codes: &["ipv6-mtu-below-minimum"],
        title: "a link's MTU below IPv6's minimum (1280) where IPv6 is used: the kernel removes its IPv6 addresses",
        run: ipv6::min_mtu,
        names_objects: true,
    },
    Check {
        codes: &["service-family-no-endpoints"],
        title: "dual-stack Service with ready endpoints in one family only",
        run: ipv6::service_family_endpoints,
        names_objects: false,
    },
    Check {
        codes: &["bpf-datapath"],
        title: "tc / XDP / cgroup BPF programs attached: traces crossing them are uncertain",
        run: links::bpf_programs,
        names_objects: false,
    },
    Check {
        codes: &["sysctl-unparsable"],
        title: "a sysctl the datapath decides on (forwarding, rp_filter, …) holds no number",
        run: sysctl::unparsable,
        names_objects: true,
    },
    Check {
        codes: &["rp-filter-strict-asymmetric"],
        title: "strict rp_filter where routing is asymmetric (several defaults, ECMP, policy rules)",
        run: sysctl::rp_filter_asymmetric,
        names_objects: true,
    },
    Check {
        codes: &["tcp-tw-recycle"],
        title: "tcp_tw_recycle enabled (breaks clients behind NAT)",
        run: sysctl::tw_recycle,
        names_objects: false,
    },
    Check {
        codes: &["conntrack-table-full", "conntrack-drops"],
        title: "conntrack table near nf_conntrack_max; insert_failed / drop counters",
        run: sysctl::conntrack_pressure,
        names_objects: false,
    },
    Check {
        codes: &["pod-no-default-route"],
        title: "workload namespace without an IPv4 default route",
        run: routing::pod_default_route,
        names_objects: false,
    },
    Check {
        codes: &["no-route"],
        title: "node without a route to another node's pod CIDR",
        run: routing::pod_cidr_routes,
        names_objects: false,
    },
    Check {
        codes: &["blackhole-route"],
        title: "blackhole / unreachable / prohibit routes over pod CIDRs or default",
        run: routing::blackhole_routes,
        names_objects: false,
    },
    Check {
        codes: &["ip-rule-diverts"],
        title: "ip rules that send traffic to other tables or discard it",
        run: routing::policy_rules,
        names_objects: false,
    },
    Check {
        codes: &["neighbor-unreachable"],
        title: "route gateways whose neighbour entry is FAILED / INCOMPLETE",
        run: routing::gateway_neighbours,
        names_objects: false,
    },
    Check {
        codes: &[
            "stale-vxlan-neighbor",
            "stale-vxlan-fdb",
            "missing-vxlan-fdb",
        ],
        title: "VXLAN neighbour and FDB entries against the peers' real VTEP MAC and address",
        run: overlay::vxlan_consistency,
        names_objects: true,
    },
    Check {
        codes: &["mtu-blackhole"],
        title: "overlay MTU plus encapsulation above the underlay MTU",
        run: overlay::overlay_mtu,
        names_objects: false,
    },
    Check {
        codes: &["pod-mtu-exceeds-overlay"],
        title: "workload MTU above the node's overlay MTU",
        run: overlay::pod_mtu,
        names_objects: false,
    },
    Check {
        codes: &["interface-down"],
        title: "interfaces carrying addresses, routes or bridge ports that are down",
        run: links::interfaces_down,
        names_objects: false,
    },
    Check {
        codes: &["bridge-port-blocked", "hairpin-disabled"],
        title: "bridge ports not forwarding; hairpin off for pods",
        run: links::bridge_ports,
        names_objects: false,
    },
    Check {
        codes: &["duplicate-address"],
        title: "one address configured in several namespaces",
        run: links::duplicate_addresses,
        names_objects: false,
    },
    Check {
        codes: &["no-endpoints"],
        title: "Services without ready endpoints",
        run: services::services_without_endpoints,
        names_objects: false,
    },
    Check {
        codes: &["lb-ip-in-local-table"],
        title: "LoadBalancer / external IPs in a node's local table (martian health checks)",
        run: services::lb_ip_in_local_table,
        names_objects: true,
    },
    Check {
        codes: &["cluster-cidr-mismatch"],
        title: "kube-proxy clusterCIDR against the pods' real addresses",
        run: services::cluster_cidr,
        names_objects: false,
    },
    Check {
        codes: &["port-not-listening"],
        title: "ready endpoints with nothing listening on the target port",
        run: services::endpoints_listening,
        names_objects: false,
    },
    Check {
        codes: &["forward-policy-drop"],
        title: "filter FORWARD policy DROP that drops cross-node pod traffic",
        run: firewall::forward_policy_drop,
        names_objects: true,
    },
    Check {
        codes: &["iptables-drop-rule", "iptables-reject-rule"],
        title: "DROP / REJECT rules whose counters show matches",
        run: firewall::counted_drop_rules,
        names_objects: false,
    },
    Check {
        codes: &["mixed-iptables-backends"],
        title: "iptables-legacy and iptables-nft both holding rules",
        run: firewall::mixed_backends,
        names_objects: false,
    },
    Check {
        codes: &["missing-snat"],
        title: "pod traffic to outside the cluster leaving without SNAT/MASQUERADE",
        run: firewall::missing_snat,
        names_objects: false,
    },
    Check {
        codes: &["firewall-unreadable", "uncertain-rule"],
        title: "firewall input netray cannot read or does not model (uncertain verdicts)",
        run: firewall::unreadable_rules,
        names_objects: false,
    },
    Check {
        codes: &["stale-conntrack-entry"],
        title: "conntrack entries still DNATing Service traffic to backends that are no longer ready",
        run: services::stale_conntrack,
        names_objects: true,
    },
    Check {
        codes: &["bridge-nf-snat-conflict"],
        title: "bridge-nf-call-iptables with masquerade of host-originated Service traffic",
        run: firewall::bridge_nf_snat_conflict,
        names_objects: true,
    },
];

/// The root-cause codes of `netray diagnose` (a cause found by the scan keeps its own code
/// only when it is one of these; otherwise the walk's code names it, with the scan's evidence).
pub const ROOT_CAUSE_CODES: &[&str] = &[
    "forward-policy-drop",
    "iptables-drop-rule",
    "iptables-reject-rule",
    "nft-drop-rule",
    "no-endpoints",
    "ip-forward-disabled",
    "rp-filter-drop",
    "martian-source",
    "stale-vxlan-neighbor",
    "stale-vxlan-fdb",
    "missing-vxlan-fdb",
    "no-route",
    "blackhole-route",
    "neighbor-unreachable",
    "pod-no-default-route",
    "bridge-nf-snat-conflict",
    "nat-reply-mismatch",
    "mtu-blackhole",
    "port-not-listening",
    "interface-down",
    "network-policy-drop",
    "mixed-iptables-backends",
    "stale-conntrack-entry",
    "uncertain-rule",
];

/// Codes that only `netray diagnose` reports (from a walk, not from state alone).
pub const WALK_CODES: &[&str] = &[
    "iptables-drop-rule",
    "iptables-reject-rule",
    "nft-drop-rule",
    "network-policy-drop",
    "no-endpoints",
    "port-not-listening",
    "no-route",
    "blackhole-route",
    "neighbor-unreachable",
    "martian-source",
    "rp-filter-drop",
    "ip-forward-disabled",
    "nat-reply-mismatch",
    "mtu-blackhole",
    "reply-leaves-snapshot",
    "node-snapshot-missing",
    "bpf-program",
    "routing-loop",
    "walk-step-limit",
    "ipv6-disabled",
    "ipv6-mtu-below-minimum",
    "uncertain-rule",
    "dropped",
    "interface-down",
    "pod-no-default-route",
    "stale-vxlan-neighbor",
    "stale-vxlan-fdb",
    "missing-vxlan-fdb",
    "forward-policy-drop",
    "bridge-nf-snat-conflict",
    "mixed-iptables-backends",
    "firewall-unreadable",
    "bridge-no-fdb",
    "bridge-port-blocked",
    "dummy-device",
    "hairpin-off",
    "icmp-echo-ignored",
    "ipvs-no-destination",
    "ipvs-unmodelled-forwarding",
    "ipvs-unparsed",
    "masquerade-no-address",
    "stale-neighbor",
    "unmodelled-interface",
    "unmodelled-route-type",
    "vxlan-mismatch",
    "chain-policy-drop",
    "blackhole-rule",
];

/// The static code equal to `code`, if it is one netray documents.
pub fn known_code(code: &str) -> Option<&'static str> {
    WALK_CODES
        .iter()
        .copied()
        .chain(CATALOG.iter().flat_map(|c| c.codes.iter().copied()))
        .find(|c| *c == code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn needs_name_catalog_codes() {
        let codes: Vec<&str> = CATALOG
            .iter()
            .flat_map(|c| c.codes.iter().copied())
            .collect();
        for code in NEEDS_CLUSTER
            .iter()
            .chain(NEEDS_COLLECTED.iter().flat_map(|(_, c)| c.iter()))
        {
            assert!(codes.contains(code), "{code} is not a catalog code");
        }
    }
}
