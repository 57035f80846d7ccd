//! `netray diagnose`: from the traces of a flow to a verdict and root causes.
//!
//! Each failed branch of the walk ends at a hop with a disposition; the cause is named from
//! that hop's evidence (the rule, route, neighbour entry, check) and, where the scan catalog
//! found state that explains it on the same node (a stale VXLAN neighbour, a FORWARD policy, an
//! LB address in the local table), from that finding's evidence and fix.

use std::collections::BTreeMap;

use netray_datapath::result::{Branch, CT_COLLECTED_ORIG, Disposition, Hop, Leg, Step, Trace};
use serde::Serialize;

use crate::finding::{Finding, Severity};

/// Schema identifier of the JSON document (see `schemas/diagnose.schema.json`).
pub const SCHEMA: &str = "netray.diagnose/v1";

/// The answer for a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every branch delivers and the reply returns.
    Reachable,
    /// No branch does.
    Unreachable,
    /// Some endpoints (or branches) work, others do not.
    Partial,
    /// The outcome depends on something netray does not model (named in the causes).
    Uncertain,
}

/// One traced flow (a service with several ports gives several).
#[derive(Debug, Clone)]
pub struct TracedFlow {
    /// How the source was named and resolved.
    pub from: String,
    /// How the destination was named and resolved.
    pub to: String,
    /// The walk.
    pub trace: Trace,
}

/// Outcome per endpoint reached (after DNAT) or per destination.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointOutcome {
    /// `IP:PORT` after DNAT, or the destination when there is no DNAT.
    pub endpoint: String,
    /// Every branch to it succeeded.
    pub reachable: bool,
    /// Probability mass of this endpoint among the flow's branches.
    pub share: f64,
    /// Dispositions of its branches.
    pub dispositions: Vec<String>,
    /// Where its failing branches ended, one entry per distinct place and cause.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub failures: Vec<FailurePoint>,
}

/// Where and why one endpoint's branch failed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FailurePoint {
    /// The branch's disposition.
    pub disposition: Disposition,
    /// Whether the request or the reply was lost.
    pub leg: Leg,
    /// Node where the packet was lost.
    pub node: String,
    /// Namespace where the packet was lost.
    pub netns: String,
    /// The root cause's code (see `causes[]`).
    pub code: String,
    /// Node the root cause is on (may differ from `node`: a stale VTEP entry on the sender
    /// drops the frame at the receiver).
    pub cause_node: String,
}

/// One branch, for the report.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct BranchReport {
    /// Which flow (`from → to`).
    pub flow: String,
    /// Endpoint (see [`EndpointOutcome::endpoint`]).
    pub endpoint: String,
    /// How it ended.
    pub disposition: Disposition,
    /// Success.
    pub reachable: bool,
    /// Probability.
    pub probability: f64,
    /// The walk's reason.
    pub reason: String,
    /// Assumptions about unmodelled constructs this branch rests on.
    pub assumptions: Vec<String>,
    /// Every hop, forward and reply.
    pub hops: Vec<Hop>,
}

/// The diagnosis: what `netray diagnose -o json` prints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Diagnosis {
    /// [`SCHEMA`].
    pub schema: &'static str,
    /// Source as given and resolved.
    pub from: String,
    /// Destination as given and resolved.
    pub to: String,
    /// The verdict.
    pub verdict: Verdict,
    /// One sentence.
    pub summary: String,
    /// Per endpoint.
    pub endpoints: Vec<EndpointOutcome>,
    /// Every branch.
    pub branches: Vec<BranchReport>,
    /// Root causes, most severe first.
    pub causes: Vec<Finding>,
    /// What the operator should know that the verdict does not say (e.g. existing
    /// connections that behave differently from the new one walked).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The endpoint of a branch: the destination after the first DNAT on the forward leg, else
/// the branch's own endpoint, else the packet's destination.
fn endpoint_of(b: &Branch, trace: &Trace) -> String {
    let dnat = b.hops.iter().find(|h| {
        h.leg == Leg::Forward
            && matches!(&h.step, Step::Nat { kind, .. } if kind.contains("dnat") || kind.contains("redirect"))
    });
    if let Some(h) = dnat {
        return addr_port(h.packet.dst, h.packet.dport, &h.packet.proto);
    }
    if let Some(e) = &b.endpoint {
        return e.clone();
    }
    let p = &trace.flow.packet;
    addr_port(p.dst, p.dport, &p.proto)
}

fn addr_port(ip: std::net::IpAddr, port: Option<u16>, proto: &str) -> String {
    match (port, proto) {
        (Some(p), "tcp" | "udp" | "sctp") if ip.is_ipv6() => format!("[{ip}]:{p}"),
        (Some(p), "tcp" | "udp" | "sctp") => format!("{ip}:{p}"),
        _ => ip.to_string(),
    }
}

/// Quoted evidence from the hops that led to the end: the last few steps in the namespace
/// where the branch died (rules with counters, routes, neighbours, checks, encapsulation).
fn evidence_of(b: &Branch) -> Vec<String> {
    let Some(last) = b.hops.last() else {
        return vec![];
    };
    let mut ev = Vec::new();
    // The routing decision is evidence only for routing dispositions, and then only the last
    // one (earlier lookups, such as the local-table hit of an arriving underlay packet, are
    // noise). Accepting firewall hooks are not evidence.
    let routing_matters = matches!(
        b.disposition,
        Disposition::NoRoute
            | Disposition::NeighborUnreachable
            | Disposition::Exits
            | Disposition::RpFilter
            | Disposition::MartianSource
            | Disposition::Loop
            | Disposition::MtuExceeded
            | Disposition::ForwardingDisabled
    );
    let tail: Vec<&Hop> = b
        .hops
        .iter()
        .rev()
        .take_while(|h| h.node == last.node && h.netns == last.netns && h.leg == last.leg)
        .collect::<Vec<_>>()
        .into_iter()
        .rev()
        .collect();
    let last_route = tail
        .iter()
        .rposition(|h| matches!(h.step, Step::Route { .. }));
    for (i, h) in tail.iter().enumerate() {
        match &h.step {
            Step::Route { .. } if !routing_matters || Some(i) != last_route => {}
            Step::Route {
                rule, table, route, ..
            } => {
                if let Some(r) = rule {
                    ev.push(format!("ip rule: {r}"));
                }
                ev.push(format!("route (table {table}): {route}"));
            }
            Step::Netfilter {
                hook,
                bridged,
                verdict,
                rules,
            } if verdict != "accept" => {
                for r in rules {
                    let counters = match (r.packets, r.bytes) {
                        (Some(p), Some(by)) => format!(" [{p} pkts, {by} bytes]"),
                        _ => String::new(),
                    };
                    let at = match r.index {
                        Some(i) => format!("{} {} #{i}", r.table, r.chain),
                        None => format!("{} {} policy", r.table, r.chain),
                    };
                    ev.push(format!(
                        "{hook}{}: {at}: {}{counters}",
                        if *bridged {
                            " (bridged, br_netfilter)"
                        } else {
                            ""
                        },
                        r.text
                    ));
                }
            }
            Step::Neighbour {
                addr,
                lladdr,
                state,
            } => ev.push(format!(
                "neighbour {addr} {} {state}",
                lladdr
                    .as_deref()
                    .map(|l| format!("lladdr {l}"))
                    .unwrap_or_default()
            )),
            Step::Check { check, detail } => ev.push(format!("{check}: {detail}")),
            Step::Encap {
                dev,
                vni,
                inner_dst_mac,
                remote,
                port,
                fdb,
            } => ev.push(format!(
                "{dev}: vxlan vni {vni} inner dst {inner_dst_mac} → {remote}:{port} (fdb: {fdb})"
            )),
            Step::Nat {
                kind,
                before,
                after,
            } => ev.push(format!("{kind}: {before} → {after}")),
            Step::Conntrack { state, entry } => ev.push(format!("conntrack {state}: {entry}")),
            Step::Bridge {
                bridge,
                in_port,
                out_port,
                fdb,
            } => ev.push(format!("{bridge}: {in_port} → {out_port} ({fdb})")),
            _ => {}
        }
    }
    if ev.is_empty() {
        ev.push(b.reason.clone());
    }
    ev
}

/// `text` ending with a full stop.
fn sentence(text: &str) -> String {
    let t = text.trim_end();
    let mut out: String = t
        .chars()
        .take(1)
        .flat_map(char::to_uppercase)
        .chain(t.chars().skip(1))
        .collect();
    if !out.ends_with(['.', '!', '?']) {
        out.push('.');
    }
    out
}

/// Scan codes that explain a disposition when found on the node where a branch died.
fn explaining_codes(d: Disposition) -> &'static [&'static str] {
    match d {
        Disposition::Dropped => &[
            "stale-vxlan-neighbor",
            "stale-vxlan-fdb",
            "missing-vxlan-fdb",
            "forward-policy-drop",
            "interface-down",
            "bridge-port-blocked",
        ],
        Disposition::NeighborUnreachable => &[
            "stale-vxlan-neighbor",
            "stale-vxlan-fdb",
            "missing-vxlan-fdb",
            "no-route",
            "pod-no-default-route",
            "neighbor-unreachable",
        ],
        Disposition::NoRoute => &[
            "pod-no-default-route",
            "no-route",
            "blackhole-route",
            "ip-rule-diverts",
        ],
        Disposition::ForwardingDisabled => &["ip-forward-disabled", "forwarding-disabled-iface"],
        Disposition::MartianSource => &["lb-ip-in-local-table"],
        Disposition::RpFilter => &["rp-filter-strict-asymmetric"],
        Disposition::MtuExceeded => &["mtu-blackhole", "pod-mtu-exceeds-overlay"],
        Disposition::ReplyMismatch => &["bridge-nf-snat-conflict"],
        Disposition::Rejected => &["no-endpoints", "port-not-listening"],
        Disposition::Exits => &["no-route", "pod-no-default-route"],
        _ => &[],
    }
}

/// The `stale-conntrack-entry` finding, when `b`'s request followed a collected conntrack
/// entry (a flow given with its real source port) that the scan found stale: same node, same
/// original tuple. Its evidence is narrowed to this flow's entry, its explanation and fix
/// rewritten for it.
fn stale_entry_followed(b: &Branch, findings: &[Finding]) -> Option<Finding> {
    b.hops
        .iter()
        .filter(|h| h.leg == Leg::Forward)
        .find_map(|h| match &h.step {
            Step::Conntrack { state, entry }
                if state == CT_COLLECTED_ORIG && entry.contains("[DST_NAT]") =>
            {
                // `udp src=A dst=B sport=P dport=Q src=...`: protocol and original tuple.
                let orig: Vec<&str> = entry.split_whitespace().take(5).collect();
                let orig = orig.join(" ");
                let f = findings.iter().find(|f| {
                    f.code == "stale-conntrack-entry"
                        && f.node == h.node
                        && f.evidence.iter().any(|e| e.starts_with(&orig))
                })?;
                let mut f = f.clone();
                f.evidence.retain(|e| e.starts_with(&orig));
                // `udp src=A dst=B sport=P dport=Q → backend IP:PORT (...)`
                let backend = f
                    .evidence
                    .first()
                    .and_then(|e| e.split_once("→ backend "))
                    .and_then(|(_, r)| r.split_whitespace().next())
                    .unwrap_or("a backend")
                    .to_string();
                let field = |k: &str| {
                    orig.split_whitespace()
                        .find_map(|w| w.strip_prefix(k))
                        .unwrap_or("?")
                        .to_string()
                };
                f.explanation = format!(
                    "This flow's tuple is already in {}'s conntrack table, and that entry DNATs \
                     it to {backend}, which is no longer a ready endpoint of the Service. The \
                     packet skips the nat table (no new load-balancing) and follows the entry \
                     to the old backend until the entry expires; every retry from the same \
                     source port refreshes it. Where it then dies: {}",
                    h.node,
                    sentence(&b.reason)
                );
                f.fix = format!(
                    "on {}: conntrack -D -p {} --orig-src {} --orig-dst {} --orig-port-src {} \
                     --orig-port-dst {} (kube-proxy should have deleted it when the endpoint \
                     went away)",
                    h.node,
                    orig.split_whitespace().next().unwrap_or("udp"),
                    field("src="),
                    field("dst="),
                    field("sport="),
                    field("dport="),
                );
                Some(f)
            }
            _ => None,
        })
}

/// A rule generated from a Kubernetes NetworkPolicy (kube-router, Calico layouts, or a
/// comment saying so).
fn is_network_policy(r: &netray_datapath::result::RuleRef) -> bool {
    let chain = r.chain.to_ascii_uppercase();
    let text = r.text.to_ascii_lowercase();
    [
        "KUBE-NWPLCY",
        "KUBE-POD-FW",
        "KUBE-ROUTER-",
        "NETPOL",
        "POLICY",
        "CALI-PI-",
        "CALI-PO-",
    ]
    .iter()
    .any(|p| chain.contains(p))
        || text.contains("network policy")
        || text.contains("netpol")
}

/// The code a branch's disposition maps to when no finding explains it better.
fn default_code(b: &Branch) -> &'static str {
    let last_nf = b.hops.iter().rev().find_map(|h| match &h.step {
        Step::Netfilter {
            hook,
            rules,
            verdict,
            ..
        } if verdict != "accept" => Some((hook, rules)),
        _ => None,
    });
    let nft = |rules: &[netray_datapath::result::RuleRef]| {
        rules
            .last()
            .is_some_and(|r| r.text.starts_with('{') || r.text.contains("\"expr\""))
    };
    match b.disposition {
        Disposition::Dropped => match last_nf {
            Some((hook, rules))
                if hook == "FORWARD" && rules.last().is_some_and(|r| r.index.is_none()) =>
            {
                "forward-policy-drop"
            }
            Some((_, rules)) if rules.iter().any(is_network_policy) => "network-policy-drop",
            Some((_, rules)) if nft(rules) => "nft-drop-rule",
            Some(_) => "iptables-drop-rule",
            None => "dropped",
        },
        Disposition::Rejected => match last_nf {
            Some((_, rules)) if rules.iter().any(|r| r.text.contains("has no endpoints")) => {
                "no-endpoints"
            }
            Some(_) => "iptables-reject-rule",
            None => "port-not-listening",
        },
        Disposition::NoRoute => {
            if b.reason.contains("blackhole")
                || b.reason.contains("unreachable route")
                || b.reason.contains("prohibit")
            {
                "blackhole-route"
            } else {
                "no-route"
            }
        }
        Disposition::NeighborUnreachable => "neighbor-unreachable",
        Disposition::MartianSource => "martian-source",
        Disposition::RpFilter => "rp-filter-drop",
        Disposition::ForwardingDisabled => "ip-forward-disabled",
        Disposition::ReplyMismatch => "nat-reply-mismatch",
        Disposition::MtuExceeded => "mtu-blackhole",
        Disposition::Exits => "exits-cluster",
        Disposition::Loop => "routing-loop",
        Disposition::Unknown => "uncertain-rule",
        Disposition::Delivered | Disposition::AcceptedByHost => "ok",
    }
}

fn default_fix(code: &str, b: &Branch) -> String {
    let last = b.hops.last();
    let node = last.map(|h| h.node.as_str()).unwrap_or("?");
    match code {
        "forward-policy-drop" => format!(
            "on {node}: accept the traffic in FORWARD (iptables -I FORWARD -i IN -o OUT -j ACCEPT, \
             with Docker in DOCKER-USER) or set the policy to ACCEPT; make it persistent"
        ),
        "iptables-drop-rule" | "iptables-reject-rule" | "nft-drop-rule" | "network-policy-drop" => {
            format!("on {node}: remove or narrow the rule quoted in the evidence (or the policy that generated it)")
        }
        "no-endpoints" => "make the Service's pods Ready or fix its selector (kubectl get endpointslices)".into(),
        "port-not-listening" => "start the server or fix the Service's targetPort".into(),
        "no-route" => format!("on {node}: add the missing route (or restart the CNI agent that owns it)"),
        "blackhole-route" => format!("on {node}: delete the blackhole/unreachable route quoted in the evidence"),
        "neighbor-unreachable" => format!("on {node}: check that the next hop is up on that segment; ip neigh show"),
        "martian-source" => "do not send packets whose source is one of the receiving host's own addresses (or set accept_local=1 where that is intended)".into(),
        "rp-filter-drop" => format!("on {node}: use loose reverse-path filtering (rp_filter=2) or make routing symmetric"),
        "ip-forward-disabled" => format!("on {node}: sysctl -w net.ipv4.ip_forward=1"),
        "nat-reply-mismatch" => "make the reply return through the host that NATed the request before anything reverses the NAT (see bridge-nf-call-iptables)".into(),
        "mtu-blackhole" => "lower the sending MTU below the path MTU (overlay MTU = underlay MTU − 50)".into(),
        "exits-cluster" => "the destination is outside the collected nodes: collect the missing node, or check the address".into(),
        "routing-loop" => "fix the routes that send the packet back where it came from".into(),
        "uncertain-rule" => "netray does not model the construct named in the evidence; check it by hand (counters, nft monitor trace)".into(),
        _ => "see the evidence".into(),
    }
}

fn severity_of(d: Disposition) -> Severity {
    match d {
        Disposition::Unknown => Severity::Warning,
        _ => Severity::Critical,
    }
}

/// Causes are merged by (code, node, netns).
type CauseKey = (&'static str, String, String);
/// A merged cause: the finding, how many branches, their probability mass, their endpoints.
type CauseTally = (Finding, usize, f64, Vec<String>);

/// Build the diagnosis of `flows` using the bundle's scan findings as supporting evidence.
pub fn diagnose(from: &str, to: &str, flows: &[TracedFlow], findings: &[Finding]) -> Diagnosis {
    let mut branches = Vec::new();
    let mut per_endpoint: BTreeMap<String, (bool, f64, Vec<String>)> = BTreeMap::new();
    let mut causes: BTreeMap<CauseKey, CauseTally> = BTreeMap::new();
    let mut failures: BTreeMap<String, Vec<FailurePoint>> = BTreeMap::new();
    let total_mass: f64 = flows
        .iter()
        .map(|f| f.trace.branches.iter().map(|b| b.probability).sum::<f64>())
        .sum::<f64>()
        .max(f64::MIN_POSITIVE);
    for f in flows {
        for b in &f.trace.branches {
            let endpoint = endpoint_of(b, &f.trace);
            let ok = b.disposition.is_success();
            let e = per_endpoint
                .entry(endpoint.clone())
                .or_insert((true, 0.0, Vec::new()));
            e.0 &= ok;
            e.1 += b.probability / total_mass;
            if !e.2.contains(&b.disposition.as_str().to_string()) {
                e.2.push(b.disposition.as_str().to_string());
            }
            branches.push(BranchReport {
                flow: format!("{} → {}", f.from, f.to),
                endpoint: endpoint.clone(),
                disposition: b.disposition,
                reachable: ok,
                probability: b.probability,
                reason: b.reason.clone(),
                assumptions: b.assumptions.clone(),
                hops: b.hops.clone(),
            });
            if ok {
                continue;
            }
            let last = b.hops.last();
            let node = last.map(|h| h.node.clone()).unwrap_or_default();
            let netns = last.map(|h| h.netns.clone()).unwrap_or_default();
            // A scan finding on the node where it died that explains this disposition.
            // A finding that explains the disposition, on the node where the branch died or,
            // failing that, on the nodes it crossed before (latest first): a frame dropped at
            // decapsulation was addressed wrongly by the node that encapsulated it.
            let explaining = explaining_codes(b.disposition);
            let mut nodes_crossed: Vec<&str> = Vec::new();
            for h in b.hops.iter().rev() {
                if !nodes_crossed.contains(&h.node.as_str()) {
                    nodes_crossed.push(&h.node);
                }
            }
            // A packet that followed a collected conntrack entry to a backend that is no
            // longer an endpoint failed because of that entry, whatever happened next.
            let support: Option<Finding> = stale_entry_followed(b, findings).or_else(|| {
                nodes_crossed.iter().find_map(|n| {
                    explaining.iter().find_map(|code| {
                        findings
                            .iter()
                            .find(|x| x.code == *code && (x.node == *n || x.node == "-"))
                            .cloned()
                    })
                })
            });
            // The walk's own cause code, unless the rules show a NetworkPolicy at work.
            let walk_code = default_code(b);
            let branch_code = match b.cause.as_deref().and_then(crate::catalog::known_code) {
                Some(c) if walk_code != "network-policy-drop" => c,
                _ => walk_code,
            };
            let mut evidence = evidence_of(b);
            // A failure that rests on an assumption about an unmodelled match is uncertain:
            // name the rule, whatever the walk's own code says.
            let support = if b.assumptions.is_empty() {
                support
            } else {
                None
            };
            let branch_code = if b.assumptions.is_empty() {
                branch_code
            } else {
                evidence.splice(0..0, b.assumptions.iter().cloned());
                "uncertain-rule"
            };
            let cause = match support {
                Some(s) => {
                    // The walk's own observation is already quoted as evidence.
                    let explanation = if evidence.contains(&b.reason)
                        || s.explanation.contains(&sentence(&b.reason))
                    {
                        s.explanation.clone()
                    } else {
                        format!("{} {}", sentence(&b.reason), s.explanation)
                    };
                    evidence.extend(s.evidence.iter().cloned());
                    Finding {
                        // The flow-level root-cause vocabulary wins over a scan-only code
                        // (`rp-filter-strict-asymmetric` explains an `rp-filter-drop`).
                        code: if crate::catalog::ROOT_CAUSE_CODES.contains(&s.code) {
                            s.code
                        } else {
                            branch_code
                        },
                        severity: Severity::Critical,
                        node: if s.node == "-" {
                            node.clone()
                        } else {
                            s.node.clone()
                        },
                        netns: if s.node == "-" {
                            netns.clone()
                        } else {
                            s.netns.clone()
                        },
                        evidence,
                        explanation,
                        fix: s.fix.clone(),
                    }
                }
                None if !b.assumptions.is_empty() => Finding {
                    code: branch_code,
                    severity: Severity::Warning,
                    node: node.clone(),
                    netns: netns.clone(),
                    evidence,
                    explanation: format!(
                        "This branch fails ({}) only if the assumption above holds: netray does \
                         not model that match, so it explores both outcomes. {}",
                        b.disposition.as_str(),
                        sentence(&b.reason)
                    ),
                    fix: default_fix(branch_code, b),
                },
                None => Finding {
                    code: branch_code,
                    severity: severity_of(b.disposition),
                    node: node.clone(),
                    netns: netns.clone(),
                    evidence,
                    explanation: sentence(&b.reason),
                    fix: default_fix(branch_code, b),
                },
            };
            let point = FailurePoint {
                disposition: b.disposition,
                leg: b.ended_on,
                node: node.clone(),
                netns: netns.clone(),
                code: cause.code.to_string(),
                cause_node: cause.node.clone(),
            };
            let points = failures.entry(endpoint.clone()).or_default();
            if !points.contains(&point) {
                points.push(point);
            }
            let key = (cause.code, cause.node.clone(), cause.netns.clone());
            let entry = causes.entry(key).or_insert((cause, 0, 0.0, Vec::new()));
            entry.1 += 1;
            entry.2 += b.probability / total_mass;
            if !entry.3.contains(&endpoint) {
                entry.3.push(endpoint.clone());
            }
        }
    }
    let endpoints: Vec<EndpointOutcome> = per_endpoint
        .into_iter()
        .map(
            |(endpoint, (reachable, share, dispositions))| EndpointOutcome {
                failures: failures.remove(&endpoint).unwrap_or_default(),
                endpoint,
                reachable,
                share,
                dispositions,
            },
        )
        .collect();
    let n = endpoints.len();
    let k = endpoints.iter().filter(|e| e.reachable).count();
    // A branch is uncertain when it ends on something unmodelled or rests on an assumption.
    let uncertain =
        |b: &BranchReport| b.disposition == Disposition::Unknown || !b.assumptions.is_empty();
    let any_failed_known = branches.iter().any(|b| !b.reachable && !uncertain(b));
    let verdict = if branches.is_empty() {
        Verdict::Uncertain
    } else if branches.iter().all(|b| b.reachable) {
        Verdict::Reachable
    } else if !any_failed_known {
        // Every failure rests on something netray does not model.
        Verdict::Uncertain
    } else if k == 0 {
        Verdict::Unreachable
    } else {
        Verdict::Partial
    };
    let mut causes: Vec<Finding> = causes
        .into_values()
        .map(|(mut f, count, share, eps)| {
            if n > 1 {
                f.explanation = format!(
                    "Affects {} of {n} endpoints ({}; {:.0}% of connections, {count} branch{}). {}",
                    eps.len(),
                    eps.join(", "),
                    share * 100.0,
                    if count == 1 { "" } else { "es" },
                    f.explanation
                );
            }
            f
        })
        .collect();
    causes.sort_by(|a, b| a.sort_key().cmp(&b.sort_key()));
    let summary = match verdict {
        Verdict::Reachable => format!(
            "{to} is reachable from {from} ({n} endpoint{}; replies return)",
            if n == 1 { "" } else { "s" }
        ),
        Verdict::Unreachable => format!(
            "{to} is unreachable from {from}: {}",
            causes
                .first()
                .map(|c| format!("{} on {}", c.code, c.node))
                .unwrap_or_else(|| "no branch delivers".into())
        ),
        Verdict::Partial => format!(
            "{to} is partially reachable from {from}: {k} of {n} endpoints work; {}",
            causes
                .iter()
                .map(|c| format!("{} on {}", c.code, c.node))
                .collect::<Vec<_>>()
                .join(", ")
        ),
        Verdict::Uncertain => format!(
            "reachability of {to} from {from} is uncertain: it depends on constructs netray does not model ({})",
            causes
                .iter()
                .filter(|c| c.code == "uncertain-rule")
                .flat_map(|c| c.evidence.first())
                .cloned()
                .collect::<Vec<_>>()
                .join("; ")
        ),
    };
    Diagnosis {
        schema: SCHEMA,
        from: from.to_string(),
        to: to.to_string(),
        verdict,
        summary,
        endpoints,
        branches,
        causes,
        notes: flows
            .iter()
            .filter_map(|f| stale_entries_note(f, findings))
            .collect(),
    }
}

/// A walk of a new connection says nothing of the client's existing ones: when the scan found
/// stale conntrack entries for this very client and destination (UDP clients that keep their
/// source port keep following them), say so and how to walk one.
fn stale_entries_note(f: &TracedFlow, findings: &[Finding]) -> Option<String> {
    let p = &f.trace.flow.packet;
    let followed =
        f.trace.branches.iter().flat_map(|b| &b.hops).any(
            |h| matches!(&h.step, Step::Conntrack { state, .. } if state == CT_COLLECTED_ORIG),
        );
    if p.proto != "udp" || followed {
        return None;
    }
    let dport = p.dport?;
    let prefix = format!("udp src={} dst={} sport=", p.src, p.dst);
    let mut ports: Vec<&str> = Vec::new();
    let mut nodes: Vec<&str> = Vec::new();
    for fi in findings
        .iter()
        .filter(|x| x.code == "stale-conntrack-entry")
    {
        for e in &fi.evidence {
            let Some(rest) = e.strip_prefix(&prefix) else {
                continue;
            };
            let Some((sport, after)) = rest.split_once(' ') else {
                continue;
            };
            if after.starts_with(&format!("dport={dport} ")) {
                ports.push(sport);
                if !nodes.contains(&fi.node.as_str()) {
                    nodes.push(&fi.node);
                }
            }
        }
    }
    let first = ports.first()?;
    Some(format!(
        "{} existing UDP conntrack entr{} from {} to {}:{dport} on {} still point{} to backends that \
         are no longer endpoints (source port{} {}): a client that keeps its source port keeps \
         failing while new ones work. Walk it with --sport {first}.",
        ports.len(),
        if ports.len() == 1 { "y" } else { "ies" },
        p.src,
        p.dst,
        nodes.join(", "),
        if ports.len() == 1 { "s" } else { "" },
        if ports.len() == 1 { "" } else { "s" },
        ports.join(", ")
    ))
}
