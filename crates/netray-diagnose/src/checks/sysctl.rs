//! Sysctl checks: forwarding, reverse-path filtering, TIME-WAIT recycling, conntrack pressure.

use std::collections::{BTreeMap, BTreeSet};

use netray_snapshot::{LinkKind, Route};

use crate::finding::{Finding, Severity};
use crate::scan::{ScanInput, conf_key, conf_max, route_text, sysctl_line};

pub(crate) fn ip_forward(input: &ScanInput, out: &mut Vec<Finding>) {
    for h in input.subject_hosts().filter(|h| input.routes_for_others(h)) {
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
            ).about([h.sysctl_obj("net.ipv4.ip_forward")]));
        }
    }
}

/// Sysctls the walk reads as integers whose collected value is not one: the walk answers
/// `uncertain` where they decide, and this says which and where.
pub(crate) fn unparsable(input: &ScanInput, out: &mut Vec<Finding>) {
    const DECIDING: &[&str] = &[
        ".forwarding",
        ".rp_filter",
        ".accept_local",
        ".route_localnet",
        ".arp_ignore",
        ".src_valid_mark",
        "net.ipv4.ip_forward",
        "net.bridge.bridge-nf-call-iptables",
        "net.bridge.bridge-nf-call-ip6tables",
        "net.ipv4.icmp_echo_ignore_all",
    ];
    for n in input.subjects() {
        let bad: Vec<(&String, &String)> =
            n.ns.sysctls
                .iter()
                .filter(|(k, _)| DECIDING.iter().any(|d| k.ends_with(d)))
                .filter(|(_, v)| v.trim().parse::<i64>().is_err())
                .collect();
        if bad.is_empty() {
            continue;
        }
        let keys: Vec<&str> = bad.iter().map(|(k, _)| k.as_str()).collect();
        out.push(
            n.finding(
                "sysctl-unparsable",
                Severity::Warning,
                bad.iter()
                    .map(|(k, v)| format!("{k} = `{}`", netray_snapshot::text::clip(v.trim(), 80)))
                    .collect(),
                format!(
                    "The snapshot holds {} that should be a number but is not ({}): packets whose \
                     fate depends on {} are reported as uncertain instead of guessed. The \
                     snapshot may be damaged or edited; collect it again.",
                    if bad.len() == 1 {
                        "a sysctl"
                    } else {
                        "sysctls"
                    },
                    keys.join(", "),
                    if bad.len() == 1 { "it" } else { "them" }
                ),
                "collect the node again (netray collect); check the value with sysctl KEY".into(),
            )
            .about(keys.iter().map(|k| n.sysctl_obj(k))),
        );
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
    for n in input.subjects() {
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
        out.push(
            n.finding(
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
            )
            .about(
                std::iter::once(n.sysctl_obj("net.ipv4.conf.all.rp_filter")).chain(
                    strict
                        .iter()
                        .map(|d| n.sysctl_obj(&conf_key(d, "rp_filter"))),
                ),
            ),
        );
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
