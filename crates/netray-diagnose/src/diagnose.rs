//! `netray diagnose`: from the traces of a flow to a verdict, root causes and proven fixes.
//!
//! A failing branch ends with the kernel objects that decided its fate
//! ([`Branch::decided_by`]: the DROP rule or policy, the failed route lookup, the stale
//! neighbour or FDB entry and the MAC it should hold, the sysctl, the link, the missing
//! socket). The cause is named from those objects, on the node and namespace where they live
//! — not where the packet happened to die. Scan findings join a cause only as supporting
//! evidence, when they are about one of the objects the branch used; they never replace it.
//! Each cause carries `fix_commands` derived from its objects; with a [`Context::rewalk`],
//! every fix is applied to a copy of the snapshots and the flow walked again: the fix is
//! proven only when every branch it targets then succeeds (faults further along the same
//! path are revealed and fixed in the same proof).

use std::collections::{BTreeMap, BTreeSet};

use ipnet::IpNet;
use netray_datapath::KernelObject;
use netray_datapath::Place;
use netray_datapath::World;
use netray_datapath::result::{
    Branch, CT_COLLECTED_ORIG, DataSegment, Disposition, Hop, Leg, Step, TcpDataCheck, Trace,
};
use netray_patch::FixCommand;
use serde::Serialize;

use crate::finding::{Finding, FixProof, Severity};
use crate::fix::fix_for;

/// Schema identifier of the JSON document (see `schemas/diagnose.schema.json`).
pub const SCHEMA: &str = "netray.diagnose/v1";

/// The answer for a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    /// Every branch delivers (or leaves the snapshot) and the reply returns.
    Reachable,
    /// No branch does.
    Unreachable,
    /// Some endpoints (or branches) work, others do not.
    Partial,
    /// The outcome depends on something netray does not model or did not explore (named in
    /// the causes).
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

/// Re-walks the diagnosed flows on a copy of the snapshots with commands applied, in the
/// same order as the flows given to [`diagnose`]; an error names the command that could not
/// be applied.
pub type Rewalk<'a> = dyn Fn(&[FixCommand]) -> Result<Vec<TracedFlow>, String> + 'a;

/// What a diagnosis reads besides the traces.
pub struct Context<'a, 'w> {
    /// The scan's findings: supporting evidence for causes about the same objects.
    pub findings: &'a [Finding],
    /// The walked world (MAC owners, VTEPs, peers' routes for fixes).
    pub world: &'a World<'w>,
    /// The cluster's pod network (fix ranges), from cluster.json / kube-proxy / flannel.
    pub pod_network: Option<IpNet>,
    /// Proves fixes by walking again; `None` leaves every proof out.
    pub rewalk: Option<&'a Rewalk<'a>>,
    /// Walks a sample of the cluster's other flows with commands applied: a fix that breaks
    /// one of them that works today is not proven. `None`: no such check (said in the proof).
    pub collateral: Option<&'a Rewalk<'a>>,
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
    /// Namespace the root cause is in.
    pub cause_netns: String,
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
    /// The kernel objects that decided how it ended.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub decided_by: Vec<KernelObject>,
    /// Assumptions about unmodelled constructs this branch rests on.
    pub assumptions: Vec<String>,
    /// Set when the branch walked a full-size TCP data segment after a successful handshake
    /// (the connection is established, then this segment fails).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub data_segment: Option<DataSegment>,
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
    /// TCP: the full-size data segments walked after the handshake (per MSS pair).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub tcp_data: Vec<TcpDataCheck>,
    /// Every cause's fix commands applied together, and the flow walked again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub all_fixes: Option<FixProof>,
    /// What the operator should know that the verdict does not say (existing connections
    /// that behave differently from the new one walked, where the flow leaves the snapshot,
    /// a truncated exploration).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub notes: Vec<String>,
}

/// The namespaces (by [`World`] index) the branches of `flows` visited or were decided in:
/// every hop's namespace, forward and reply, and the place of every deciding object.
pub fn visited_namespaces(world: &World<'_>, flows: &[TracedFlow]) -> Vec<usize> {
    let index: std::collections::HashMap<(&str, String), usize> = world
        .ns
        .iter()
        .enumerate()
        .map(|(i, v)| ((v.node, v.netns_label()), i))
        .collect();
    let mut out = BTreeSet::new();
    let mut add = |node: &str, netns: &str| {
        if let Some(&i) = index.get(&(node, netns.to_string())) {
            out.insert(i);
        }
    };
    for b in flows.iter().flat_map(|f| &f.trace.branches) {
        for h in &b.hops {
            add(&h.node, &h.netns);
        }
        for o in &b.decided_by {
            let p = o.place();
            add(&p.node, &p.netns);
        }
    }
    out.into_iter().collect()
}

/// The scan findings a diagnosis of `flows` can use: [`crate::scan::scan_scoped`] over the
/// namespaces the flows' branches visited ([`visited_namespaces`]). Equal to the findings of
/// a whole-cluster scan that name an object of those namespaces, which are the only ones
/// [`diagnose`] joins to causes (by object key) or reads for its notes.
pub fn findings_for(
    world: &World<'_>,
    engine: &netray_datapath::RulesetEngine,
    cluster: Option<&netray_kube::ClusterView>,
    flows: &[TracedFlow],
) -> Vec<Finding> {
    crate::scan::scan_scoped(world, engine, cluster, &visited_namespaces(world, flows))
}

/// The cause of every failing branch of `flow`, with the branch's endpoint (see
/// [`EndpointOutcome::endpoint`]) and probability: what [`diagnose`] tallies, one entry per
/// branch, for callers that group failures over many flows (`netray audit`). No fix is proven.
pub fn branch_causes(flow: &TracedFlow, ctx: &Context) -> Vec<(String, f64, Finding)> {
    flow.trace
        .branches
        .iter()
        .filter(|b| !b.disposition.is_success())
        .map(|b| (endpoint_of(b, &flow.trace), b.probability, cause_of(b, ctx)))
        .collect()
}

/// The identity [`diagnose`] merges causes by: code, node, namespace and the keys of the
/// deciding objects (sorted).
pub fn cause_identity(f: &Finding) -> (&'static str, String, String, Vec<String>) {
    cause_key(f)
}

/// Build the diagnosis of `flows`.
pub fn diagnose(from: &str, to: &str, flows: &[TracedFlow], ctx: &Context) -> Diagnosis {
    let mut branches = Vec::new();
    let mut per_endpoint: BTreeMap<String, (bool, f64, Vec<String>)> = BTreeMap::new();
    let mut failures: BTreeMap<String, Vec<FailurePoint>> = BTreeMap::new();
    let mut tally = Tally::default();
    let total_mass: f64 = flows
        .iter()
        .map(|f| f.trace.branches.iter().map(|b| b.probability).sum::<f64>())
        .sum::<f64>()
        .max(f64::MIN_POSITIVE);
    for (fi, f) in flows.iter().enumerate() {
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
                decided_by: b.decided_by.clone(),
                assumptions: b.assumptions.clone(),
                data_segment: b.data_segment,
                hops: b.hops.clone(),
            });
            if ok {
                continue;
            }
            let cause = cause_of(b, ctx);
            // Where the packet was lost: where the walk ended, except for a packet with no
            // route inside the cluster, lost where the lookup failed (it may have left the
            // snapshot further on, through a switch).
            let lost_at = b
                .decided_by
                .iter()
                .find_map(|o| match o {
                    KernelObject::RouteLookup { at, .. }
                        if b.disposition == Disposition::NoRoute =>
                    {
                        Some((at.node.clone(), at.netns.clone()))
                    }
                    _ => None,
                })
                .or_else(|| b.hops.last().map(|h| (h.node.clone(), h.netns.clone())))
                .unwrap_or_default();
            let point = FailurePoint {
                disposition: b.disposition,
                leg: b.ended_on,
                node: lost_at.0,
                netns: lost_at.1,
                code: cause.code.to_string(),
                cause_node: cause.node.clone(),
                cause_netns: cause.netns.clone(),
            };
            let points = failures.entry(endpoint.clone()).or_default();
            if !points.contains(&point) {
                points.push(point);
            }
            tally.add(cause, b.probability / total_mass, (fi, endpoint.clone()));
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
    let truncated = flows.iter().any(|f| f.trace.truncated);
    // A branch is uncertain when it ends on something unmodelled or rests on an assumption.
    let uncertain =
        |b: &BranchReport| b.disposition == Disposition::Unknown || !b.assumptions.is_empty();
    let any_failed_known = branches.iter().any(|b| !b.reachable && !uncertain(b));
    let verdict = if branches.is_empty() || truncated {
        Verdict::Uncertain
    } else if branches.iter().all(|b| b.reachable) {
        if branches.iter().any(|b| !b.assumptions.is_empty()) {
            Verdict::Uncertain
        } else {
            Verdict::Reachable
        }
    } else if !any_failed_known {
        // Every failure rests on something netray does not model.
        Verdict::Uncertain
    } else if k == 0 {
        Verdict::Unreachable
    } else {
        Verdict::Partial
    };
    let mut merged = tally.finish(n);
    let all_fixes = ctx.rewalk.map(|rw| prove(&mut merged, flows, ctx, rw));
    // The causes the walk met first, most severe first; then those found behind them.
    merged.sort_by(|a, b| {
        (a.revealed, a.finding.sort_key()).cmp(&(b.revealed, b.finding.sort_key()))
    });
    let causes: Vec<Finding> = merged.into_iter().map(|m| m.finding).collect();
    // Two causes with the same code on the same node (different objects) are named once.
    let list = |cs: &[Finding]| {
        let mut seen = BTreeSet::new();
        cs.iter()
            .map(|c| format!("{} on {}", c.code, c.node))
            .filter(|s| seen.insert(s.clone()))
            .collect::<Vec<_>>()
            .join(", ")
    };
    let tcp_data: Vec<TcpDataCheck> = flows
        .iter()
        .flat_map(|f| f.trace.tcp_data.iter().cloned())
        .collect();
    // Paths whose handshake succeeds while a full-size segment fails for certain.
    let stalls: Vec<&BranchReport> = branches
        .iter()
        .filter(|b| !b.reachable && !uncertain(b) && b.data_segment.is_some())
        .collect();
    let stall_text = stall_sentence(&stalls);
    let summary = match verdict {
        Verdict::Reachable => format!(
            "{to} is reachable from {from} ({n} endpoint{}; replies return{})",
            if n == 1 { "" } else { "s" },
            data_passes(&tcp_data)
        ),
        Verdict::Unreachable if stalls.len() == branches.len() => format!(
            "connections from {from} to {to} are established (the TCP handshake passes) but \
             full-size data stalls: {stall_text}; {}",
            list(&causes)
        ),
        Verdict::Unreachable => format!("{to} is unreachable from {from}: {}", list(&causes)),
        Verdict::Partial => format!(
            "{to} is partially reachable from {from}: {k} of {n} endpoints work; {}{}",
            list(&causes),
            if stalls.is_empty() {
                String::new()
            } else {
                format!(
                    " (on some paths the handshake passes but full-size data stalls: {stall_text})"
                )
            }
        ),
        Verdict::Uncertain if truncated => format!(
            "reachability of {to} from {from} is uncertain: the exploration was cut at the branch limit (--max-branches), so branches were not walked{}",
            if causes.is_empty() {
                String::new()
            } else {
                format!("; among those walked: {}", list(&causes))
            }
        ),
        Verdict::Uncertain => format!(
            "reachability of {to} from {from} is uncertain: it rests on what netray does not know ({})",
            {
                let mut u: Vec<String> = causes
                    .iter()
                    .filter(|c| c.code == "uncertain-rule" || c.severity == Severity::Warning)
                    .flat_map(|c| c.evidence.first())
                    .cloned()
                    .collect();
                u.extend(
                    branches
                        .iter()
                        .filter(|b| b.reachable)
                        .flat_map(|b| b.assumptions.iter().cloned()),
                );
                u.dedup();
                u.truncate(4);
                u.join("; ")
            }
        ),
    };
    let mut notes: Vec<String> = flows
        .iter()
        .filter_map(|f| stale_entries_note(f, ctx.findings))
        .collect();
    notes.extend(exit_notes(flows));
    if truncated {
        notes.push(
            "the walk stopped at the branch limit: the verdict covers only the branches walked; raise --max-branches to walk them all"
                .into(),
        );
    }
    Diagnosis {
        schema: SCHEMA,
        from: from.to_string(),
        to: to.to_string(),
        verdict,
        summary,
        endpoints,
        branches,
        causes,
        tcp_data,
        all_fixes,
        notes,
    }
}

/// `1440-byte response segments are dropped at mtu 1400 of eth0 in node1/host`, per distinct
/// segment and place.
fn stall_sentence(stalls: &[&BranchReport]) -> String {
    let mut parts: Vec<String> = Vec::new();
    for b in stalls {
        let Some(seg) = b.data_segment else { continue };
        let link = b.decided_by.iter().find_map(|o| match o {
            KernelObject::Link {
                at,
                name,
                mtu: Some(m),
                ..
            } => Some((at, name, *m)),
            _ => None,
        });
        let what = if seg.direction == Leg::Forward {
            "request"
        } else {
            "response"
        };
        let part = match link {
            Some((at, name, m)) => format!(
                "{}-byte {what} segments do not fit the MTU {m} of {name} on {}/{}",
                seg.len, at.node, at.netns
            ),
            None => format!("{}-byte {what} segments are lost ({})", seg.len, b.reason),
        };
        if !parts.contains(&part) {
            parts.push(part);
        }
    }
    parts.join("; ")
}

/// `; full-size data (1500-byte segments) passes both ways` when data segments were walked.
fn data_passes(checks: &[TcpDataCheck]) -> String {
    let mut lens: Vec<u32> = checks
        .iter()
        .filter(|c| c.request_ok && c.reply_ok)
        .map(|c| c.segment_len)
        .collect();
    lens.sort_unstable();
    lens.dedup();
    if lens.is_empty() {
        return String::new();
    }
    let lens: Vec<String> = lens.iter().map(u32::to_string).collect();
    let pmtu = checks.iter().any(|c| !c.pmtu.is_empty());
    format!(
        "; full-size TCP data ({}-byte segments, DF) passes both ways{}",
        lens.join("/"),
        if pmtu {
            " after PMTU discovery (see tcp_data)"
        } else {
            ""
        }
    )
}

/// Evidence from the drop and error counters of the links among `objects`, where non-zero:
/// they count every loss on the interface since it was created, not only this flow's, so
/// they support a cause and never decide one.
fn link_counter_evidence(world: &World<'_>, objects: &[KernelObject]) -> Vec<String> {
    let mut out = Vec::new();
    for o in objects {
        let KernelObject::Link { at, name, .. } = o else {
            continue;
        };
        let Some(stats) = ns_at(world, at)
            .and_then(|v| v.snap.links.iter().find(|l| &l.name == name))
            .and_then(|l| l.stats)
        else {
            continue;
        };
        if stats.any_loss() {
            let line = format!(
                "counters of {name} on {}/{} when collected: {stats} (all traffic on the interface, not only this flow)",
                at.node, at.netns
            );
            if !out.contains(&line) {
                out.push(line);
            }
        }
    }
    out
}

/// Where exiting branches leave the snapshot (one note per distinct place).
fn exit_notes(flows: &[TracedFlow]) -> Vec<String> {
    let mut out: Vec<String> = Vec::new();
    for b in flows.iter().flat_map(|f| &f.trace.branches) {
        if b.disposition == Disposition::Exits {
            let note = format!("{} (netray cannot follow it further)", b.reason);
            if !out.contains(&note) {
                out.push(note);
            }
        }
    }
    out
}

/// A merged cause: the finding, its branches' probability mass, and the (flow, endpoint)
/// pairs it was named for.
struct Merged {
    finding: Finding,
    /// Found only by walking again after another cause's fix (listed after the others).
    revealed: bool,
    branches: usize,
    share: f64,
    targets: BTreeSet<(usize, String)>,
}

/// Causes merged by code and deciding objects.
#[derive(Default)]
struct Tally {
    causes: Vec<Merged>,
}

impl Tally {
    fn add(&mut self, f: Finding, share: f64, target: (usize, String)) {
        let key = cause_key(&f);
        match self
            .causes
            .iter_mut()
            .find(|m| cause_key(&m.finding) == key)
        {
            Some(m) => {
                m.branches += 1;
                m.share += share;
                m.targets.insert(target);
                for e in f.evidence {
                    if !m.finding.evidence.contains(&e) {
                        m.finding.evidence.push(e);
                    }
                }
            }
            None => self.causes.push(Merged {
                finding: f,
                revealed: false,
                branches: 1,
                share,
                targets: BTreeSet::from([target]),
            }),
        }
    }

    /// Say how much of the flow each cause affects (when there are several endpoints).
    fn finish(self, n: usize) -> Vec<Merged> {
        self.causes
            .into_iter()
            .map(|mut m| {
                if n > 1 {
                    let eps: Vec<&str> = m
                        .targets
                        .iter()
                        .map(|t| t.1.as_str())
                        .collect::<BTreeSet<_>>()
                        .into_iter()
                        .collect();
                    m.finding.explanation = format!(
                        "Affects {} of {n} endpoints ({}; {:.0}% of connections, {} branch{}). {}",
                        eps.len(),
                        eps.join(", "),
                        m.share * 100.0,
                        m.branches,
                        if m.branches == 1 { "" } else { "es" },
                        m.finding.explanation
                    );
                }
                m
            })
            .collect()
    }
}

/// Identity of a cause: its code, place and the keys of its deciding objects.
fn cause_key(f: &Finding) -> (&'static str, String, String, Vec<String>) {
    let mut keys: Vec<String> = f.objects.iter().map(KernelObject::key).collect();
    keys.sort();
    (f.code, f.node.clone(), f.netns.clone(), keys)
}

/// Apply each cause's fix to a copy of the snapshots and walk again (see the module doc);
/// then every fix together. Causes revealed behind a fixed one are added to `merged`.
fn prove(merged: &mut Vec<Merged>, flows: &[TracedFlow], ctx: &Context, rw: &Rewalk) -> FixProof {
    const ROUNDS: usize = 4;
    // The sample of other flows that work today (none when there is no sample).
    // The sample of other flows that work today, walked only once a fix needs checking.
    let baseline: std::cell::OnceCell<BTreeSet<(String, String)>> = std::cell::OnceCell::new();
    // Causes found behind a fixed one, with the index of the cause that revealed them.
    let mut revealed: Vec<(Merged, usize)> = Vec::new();
    for i in 0..merged.len() {
        if merged[i].finding.fix_commands.is_empty() {
            merged[i].finding.proof = Some(FixProof {
                proven: false,
                with: Vec::new(),
                detail: "no command to prove: the fix is not a node- or pod-level change".into(),
            });
            continue;
        }
        let targets = merged[i].targets.clone();
        let mut cmds = merged[i].finding.fix_commands.clone();
        let mut with: Vec<String> = Vec::new();
        let mut proof = None;
        for _ in 0..ROUNDS {
            let traces = match rw(&cmds) {
                Ok(t) => t,
                Err(e) => {
                    proof = Some(FixProof {
                        proven: false,
                        with: with.clone(),
                        detail: format!("the fix could not be applied to the snapshot: {e}"),
                    });
                    break;
                }
            };
            let all: Vec<(usize, &Branch, String)> = traces
                .iter()
                .enumerate()
                .flat_map(|(fi, t)| {
                    t.trace
                        .branches
                        .iter()
                        .map(move |b| (fi, b, endpoint_of(b, &t.trace)))
                })
                .collect();
            // A target whose endpoint no longer appears (the fix let the packet reach a DNAT
            // it never reached before) stands for every branch of its flow.
            let whole_flow: BTreeSet<usize> = targets
                .iter()
                .filter(|(fi, ep)| !all.iter().any(|(f, _, e)| f == fi && e == ep))
                .map(|(fi, _)| *fi)
                .collect();
            let failing: Vec<(usize, &Branch, String)> = all
                .into_iter()
                .filter(|(fi, b, ep)| {
                    !b.disposition.is_success()
                        && (whole_flow.contains(fi) || targets.contains(&(*fi, ep.clone())))
                })
                .collect();
            if failing.is_empty() {
                proof = Some(FixProof {
                    proven: true,
                    with: with.clone(),
                    detail: format!(
                        "applied to a copy of the snapshots, every targeted branch ({} endpoint{}) then succeeds",
                        targets.len(),
                        if targets.len() == 1 { "" } else { "s" }
                    ),
                });
                break;
            }
            // Something else still stops these branches: the next cause on their path.
            let mut added = false;
            for (fi, b, ep) in &failing {
                let next = cause_of(b, ctx);
                let new_cmds: Vec<FixCommand> = next
                    .fix_commands
                    .iter()
                    .filter(|c| !cmds.contains(c))
                    .cloned()
                    .collect();
                if !new_cmds.is_empty() {
                    cmds.extend(new_cmds);
                    added = true;
                    if !with.contains(&next.code.to_string()) {
                        with.push(next.code.to_string());
                    }
                }
                let key = cause_key(&next);
                let known = merged.iter().any(|m| cause_key(&m.finding) == key)
                    || revealed.iter().any(|(m, _)| cause_key(&m.finding) == key);
                if !known {
                    let mut f = next.clone();
                    f.explanation = format!(
                        "Revealed once {} on {} is fixed: {}",
                        merged[i].finding.code, merged[i].finding.node, f.explanation
                    );
                    revealed.push((
                        Merged {
                            finding: f,
                            revealed: true,
                            branches: 1,
                            share: 0.0,
                            targets: BTreeSet::from([(*fi, ep.clone())]),
                        },
                        i,
                    ));
                }
            }
            if !added {
                let (_, b, ep) = &failing[0];
                proof = Some(FixProof {
                    proven: false,
                    with: with.clone(),
                    detail: format!(
                        "after the fix, {ep} still fails: {} (no further fix netray can derive)",
                        b.reason
                    ),
                });
                break;
            }
        }
        let mut proof = proof.unwrap_or(FixProof {
            proven: false,
            with,
            detail: format!("still failing after {ROUNDS} rounds of fixes"),
        });
        if proof.proven {
            add_damage(&mut proof, collateral_damage(ctx, &baseline, &cmds));
        }
        merged[i].finding.proof = Some(proof);
    }
    // A revealed cause's fix was proven (or not) together with the cause that revealed it.
    for (mut r, parent) in revealed {
        let p = &merged[parent].finding;
        let proven = p.proof.as_ref().is_some_and(|x| x.proven);
        r.finding.proof = Some(FixProof {
            proven,
            with: vec![p.code.to_string()],
            detail: format!(
                "found behind {} on {}; {} together with its fix",
                p.code,
                p.node,
                if proven { "proven" } else { "not proven" }
            ),
        });
        merged.push(r);
    }
    // Every fix together: the whole flow must work, and nothing that worked may break.
    let mut all: Vec<FixCommand> = Vec::new();
    for m in merged.iter() {
        for c in &m.finding.fix_commands {
            if !all.contains(c) {
                all.push(c.clone());
            }
        }
    }
    if all.is_empty() {
        return FixProof {
            proven: flows
                .iter()
                .all(|f| f.trace.branches.iter().all(|b| b.disposition.is_success())),
            with: Vec::new(),
            detail: "no fix command to apply".into(),
        };
    }
    match rw(&all) {
        Err(e) => FixProof {
            proven: false,
            with: Vec::new(),
            detail: format!("the fixes could not be applied together: {e}"),
        },
        Ok(traces) => {
            let bad: Vec<String> = traces
                .iter()
                .flat_map(|t| {
                    t.trace
                        .branches
                        .iter()
                        .filter(|b| !b.disposition.is_success())
                        .map(move |b| format!("{}: {}", endpoint_of(b, &t.trace), b.reason))
                })
                .collect();
            let mut p = FixProof {
                proven: bad.is_empty(),
                with: merged.iter().map(|m| m.finding.code.to_string()).collect(),
                detail: if bad.is_empty() {
                    format!(
                        "with all {} fix command{} applied, every branch of the flow succeeds",
                        all.len(),
                        if all.len() == 1 { "" } else { "s" }
                    )
                } else {
                    format!(
                        "with all fixes applied, {} branch{} still fail{}: {}",
                        bad.len(),
                        if bad.len() == 1 { "" } else { "es" },
                        if bad.len() == 1 { "s" } else { "" },
                        bad.first().cloned().unwrap_or_default()
                    )
                },
            };
            if p.proven {
                add_damage(&mut p, collateral_damage(ctx, &baseline, &all));
            }
            p
        }
    }
}

/// The (flow, endpoint) pairs of `flows` that succeed.
fn working(flows: &[TracedFlow]) -> BTreeSet<(String, String)> {
    let mut ok = BTreeSet::new();
    let mut bad = BTreeSet::new();
    for f in flows {
        for b in &f.trace.branches {
            let k = (format!("{} → {}", f.from, f.to), endpoint_of(b, &f.trace));
            if b.disposition.is_success() {
                ok.insert(k);
            } else {
                bad.insert(k);
            }
        }
    }
    ok.difference(&bad).cloned().collect()
}

/// What a fix breaks among the sample of other flows: the pairs that worked before and do not
/// after, as `FLOW (ENDPOINT)`; an error when the sample could not be walked.
fn collateral_damage(
    ctx: &Context,
    baseline: &std::cell::OnceCell<BTreeSet<(String, String)>>,
    cmds: &[FixCommand],
) -> Result<Vec<String>, String> {
    let Some(walk) = ctx.collateral else {
        return Ok(Vec::new());
    };
    let before = match baseline.get() {
        Some(b) => b,
        None => {
            let b = working(&walk(&[])?);
            baseline.get_or_init(|| b)
        }
    };
    let after = working(&walk(cmds)?);
    Ok(before
        .difference(&after)
        .map(|(f, e)| format!("{f} ({e})"))
        .collect())
}

/// Turn a proof into "not proven" when the fix breaks other flows.
fn add_damage(p: &mut FixProof, broken: Result<Vec<String>, String>) {
    match broken {
        Ok(b) if b.is_empty() => {}
        Ok(b) => {
            p.proven = false;
            p.detail = format!(
                "{}; but it breaks {} flow{} that work{} today: {}",
                p.detail,
                b.len(),
                if b.len() == 1 { "" } else { "s" },
                if b.len() == 1 { "s" } else { "" },
                b.iter().take(3).cloned().collect::<Vec<_>>().join("; ")
            );
        }
        Err(e) => {
            p.proven = false;
            p.detail = format!("{}; the other flows could not be checked: {e}", p.detail);
        }
    }
}

/// The cause of one failing branch: the objects that decided it, on their node and
/// namespace, with evidence, supporting findings about the same objects, and the fix.
fn cause_of(b: &Branch, ctx: &Context) -> Finding {
    if let Some(f) = stale_entry_followed(b, ctx.findings) {
        return f;
    }
    let last = b.hops.last();
    let objects = b.decided_by.clone();
    // The cause lives where the deciding state is; a conntrack entry is where the packet
    // met the consequence (a mismatching reply), not what decided it when something else is
    // named.
    let place = objects
        .iter()
        .min_by_key(|o| matches!(o, KernelObject::Conntrack { .. }))
        .map(|o| o.place().clone())
        .unwrap_or_else(|| Place {
            node: last.map(|h| h.node.clone()).unwrap_or_default(),
            netns: last.map(|h| h.netns.clone()).unwrap_or_default(),
        });
    let mut code = root_code(b, &objects, ctx);
    let mut evidence: Vec<String> = Vec::new();
    let certain = b.assumptions.is_empty();
    if !certain {
        evidence.extend(b.assumptions.iter().cloned());
        code = "uncertain-rule";
    }
    for o in &objects {
        evidence.push(match o {
            // "nothing listens" is the why already: the evidence is what does listen there.
            KernelObject::Socket {
                at,
                proto,
                socket: None,
                ..
            } => listening_evidence(ctx.world, at, proto),
            o => quote_with_counters(o, b),
        });
    }
    if objects.is_empty() {
        evidence.push(b.reason.clone());
    }
    evidence.extend(link_counter_evidence(ctx.world, &objects));
    // A failed lookup is shown with what the table does hold.
    if matches!(code, "no-route" | "pod-no-default-route")
        && let Some(v) = ns_at(ctx.world, &place)
    {
        let routes: Vec<String> = v
            .snap
            .routes
            .iter()
            .filter(|r| r.table == 254)
            .take(8)
            .map(netray_datapath::fib::route_text)
            .collect();
        evidence.push(if routes.is_empty() {
            "routes (table main): none".to_string()
        } else {
            format!("routes (table main): {}", routes.join("; "))
        });
    }
    let explanation = if let (Some(seg), true) = (b.data_segment, certain) {
        format!(
            "The TCP handshake passes on this path, but a full-size {} segment ({} bytes, DF set) does not: the connection is established, then stalls as soon as it carries data. {}",
            if seg.direction == Leg::Forward {
                "request"
            } else {
                "response"
            },
            seg.len,
            sentence(&b.reason)
        )
    } else if certain {
        sentence(&b.reason)
    } else {
        format!(
            "This branch fails ({}) only if the assumption above holds: netray does not model that match, so it explores both outcomes. {}",
            b.disposition.as_str(),
            sentence(&b.reason)
        )
    };
    // Scan findings about an object this branch decided on or used: supporting evidence.
    let mut used: BTreeSet<String> = objects.iter().map(KernelObject::key).collect();
    used.extend(used_objects(b).iter().map(KernelObject::key));
    for f in ctx.findings {
        if f.objects.iter().any(|o| used.contains(&o.key())) {
            // Named, not quoted: a scan check's evidence can be about its own probe packet.
            let line = format!(
                "scan finding {} ({}) on {}/{} is about the same object",
                f.code, f.severity, f.node, f.netns
            );
            // Named in the evidence only: its explanation would repeat the walk's "why"
            // (`netray scan` shows it in full).
            if !evidence.contains(&line) {
                evidence.push(line);
            }
        }
    }
    let (fix, fix_commands) = if certain {
        fix_for(code, &objects, b, ctx)
    } else {
        (
            "netray does not model the construct named in the evidence; check it by hand (rule counters, nft monitor trace)".to_string(),
            Vec::new(),
        )
    };
    Finding {
        code,
        severity: if b.disposition == Disposition::Unknown || !certain {
            Severity::Warning
        } else {
            Severity::Critical
        },
        pod: pod_at(b, &place),
        node: place.node,
        netns: place.netns,
        objects,
        evidence,
        explanation,
        fix,
        fix_commands,
        proof: None,
    }
}

/// The pod a place belongs to, as the branch's hops name it.
fn pod_at(b: &Branch, at: &Place) -> Option<String> {
    b.hops
        .iter()
        .find(|h| h.node == at.node && h.netns == at.netns)
        .and_then(|h| h.pod.clone())
}

/// A rule quoted with the counters the walk saw for it.
fn quote_with_counters(o: &KernelObject, b: &Branch) -> String {
    let q = o.quote();
    let KernelObject::Rule {
        at,
        table,
        chain,
        index,
        ..
    } = o
    else {
        return q;
    };
    let counters = b.hops.iter().find_map(|h| match &h.step {
        Step::Netfilter { rules, .. } if h.node == at.node && h.netns == at.netns => rules
            .iter()
            .find(|r| &r.table == table && &r.chain == chain && &r.index == index)
            .and_then(|r| r.packets.zip(r.bytes)),
        _ => None,
    });
    match counters {
        Some((p, by)) => format!("{q} [{p} pkts, {by} bytes]"),
        None => q,
    }
}

/// The objects a branch used on its way (routes, rules, neighbours, FDB entries, conntrack
/// entries), as typed references.
pub(crate) fn used_objects(b: &Branch) -> Vec<KernelObject> {
    let mut out = Vec::new();
    for h in &b.hops {
        let at = Place {
            node: h.node.clone(),
            netns: h.netns.clone(),
        };
        match &h.step {
            Step::Route {
                rule, table, route, ..
            } => out.push(KernelObject::Route {
                at,
                table: *table,
                route: route.clone(),
                rule: rule.clone(),
            }),
            Step::Netfilter { rules, .. } => out.extend(rules.iter().map(|r| r.object(&at))),
            Step::Neighbour {
                addr,
                lladdr,
                state,
            } => out.push(KernelObject::Neighbour {
                at,
                dev: h.oif.clone().unwrap_or_default(),
                addr: *addr,
                lladdr: lladdr.clone(),
                state: state.split(' ').next().unwrap_or("").to_string(),
                expected_lladdr: None,
            }),
            Step::Encap {
                dev,
                inner_dst_mac,
                remote,
                ..
            } => out.push(KernelObject::Fdb {
                at,
                dev: dev.clone(),
                mac: inner_dst_mac.clone(),
                dst: Some(*remote),
                present: true,
            }),
            Step::Conntrack {
                state,
                entry,
                orig,
                reply,
            } => out.push(KernelObject::Conntrack {
                at,
                entry: entry.clone(),
                collected: state.contains("collected"),
                orig: orig.clone(),
                reply: reply.clone(),
            }),
            _ => {}
        }
    }
    out
}

/// The root-cause code of a failing branch, from the walk's code refined by the deciding
/// objects.
fn root_code(b: &Branch, objects: &[KernelObject], ctx: &Context) -> &'static str {
    let walk = b
        .cause
        .as_deref()
        .and_then(crate::catalog::known_code)
        .unwrap_or(match b.disposition {
            Disposition::Dropped => "dropped",
            Disposition::Rejected => "port-not-listening",
            Disposition::NoRoute => "no-route",
            Disposition::NeighborUnreachable => "neighbor-unreachable",
            Disposition::MartianSource => "martian-source",
            Disposition::RpFilter => "rp-filter-drop",
            Disposition::ForwardingDisabled => "ip-forward-disabled",
            Disposition::ReplyMismatch => "nat-reply-mismatch",
            Disposition::MtuExceeded => "mtu-blackhole",
            Disposition::Loop => "routing-loop",
            _ => "uncertain-rule",
        });
    let rule = objects.iter().find_map(|o| match o {
        KernelObject::Rule {
            chain, text, index, ..
        } => Some((chain.as_str(), text.as_str(), *index)),
        _ => None,
    });
    let nft = b
        .hops
        .iter()
        .flat_map(|h| match &h.step {
            Step::Netfilter { rules, .. } => rules.last(),
            _ => None,
        })
        .next_back()
        .is_some_and(|r| r.backend == "nft");
    match walk {
        "iptables-drop-rule" | "iptables-reject-rule" | "chain-policy-drop" => match rule {
            Some((chain, text, _)) if is_network_policy(chain, text) => "network-policy-drop",
            Some((_, text, _)) if text.contains("has no endpoints") => "no-endpoints",
            Some((_, _, Some(_))) if nft => "nft-drop-rule",
            _ => walk,
        },
        "stale-vxlan-neighbor" | "missing-vxlan-fdb" => {
            // The neighbour holds the right MAC: then the FDB entry is what is wrong.
            let neigh_ok = objects.iter().any(|o| {
                matches!(o, KernelObject::Neighbour { lladdr: Some(l), expected_lladdr: Some(e), .. }
                    if l.eq_ignore_ascii_case(e))
            });
            let neigh_stale = objects.iter().any(|o| {
                matches!(o, KernelObject::Neighbour { lladdr: Some(l), expected_lladdr: Some(e), .. }
                    if !l.eq_ignore_ascii_case(e))
            });
            match (walk, neigh_ok, neigh_stale) {
                (_, _, true) => "stale-vxlan-neighbor",
                ("stale-vxlan-neighbor", true, _) => "stale-vxlan-fdb",
                _ => walk,
            }
        }
        "no-route" => {
            // A workload's namespace: a pod's, or one whose only interface is a veth.
            let in_pod = objects.iter().any(|o| match o {
                KernelObject::RouteLookup { at, .. } if at.netns != "host" => {
                    pod_at(b, at).is_some()
                        || ns_at(ctx.world, at).is_some_and(|v| {
                            let links: Vec<_> = v
                                .snap
                                .links
                                .iter()
                                .filter(|l| !matches!(l.kind, netray_snapshot::LinkKind::Loopback))
                                .collect();
                            links.len() == 1
                                && matches!(links[0].kind, netray_snapshot::LinkKind::Veth { .. })
                        })
                }
                _ => false,
            });
            if in_pod && !has_default_route(b, ctx) {
                "pod-no-default-route"
            } else {
                "no-route"
            }
        }
        "nat-reply-mismatch"
            if objects.iter().any(
                |o| matches!(o, KernelObject::Sysctl { key, .. } if key.contains("bridge-nf-call")),
            ) =>
        {
            "bridge-nf-snat-conflict"
        }
        w => w,
    }
}

/// Whether the namespace where the branch's failed lookup happened has a default route.
fn has_default_route(b: &Branch, ctx: &Context) -> bool {
    let Some(KernelObject::RouteLookup { at, .. }) = b
        .decided_by
        .iter()
        .find(|o| matches!(o, KernelObject::RouteLookup { .. }))
    else {
        return true;
    };
    ns_at(ctx.world, at).is_some_and(|v| {
        v.snap
            .routes
            .iter()
            .any(|r| r.dst.prefix_len() == 0 && r.table == 254)
    })
}

/// The namespace of the world at `at`.
/// What does listen in the namespace of a missing socket (`tcp` sockets for a TCP flow, …):
/// the evidence of `port-not-listening`, which adds to its "why" instead of repeating it.
fn listening_evidence(world: &World<'_>, at: &Place, proto: &str) -> String {
    let Some(v) = ns_at(world, at) else {
        return format!("no {proto} socket listens there");
    };
    let mut have: Vec<String> = v
        .snap
        .sockets
        .iter()
        .filter(|s| format!("{:?}", s.proto).eq_ignore_ascii_case(proto))
        .map(|s| match s.addr {
            std::net::IpAddr::V6(a) => format!("[{a}]:{}", s.port),
            a => format!("{a}:{}", s.port),
        })
        .collect();
    have.sort();
    have.dedup();
    if have.is_empty() {
        format!("sockets ({proto}) in {}/{}: none at all", at.node, at.netns)
    } else {
        let n = have.len();
        have.truncate(8);
        format!(
            "sockets ({proto}) in {}/{}: {}{}",
            at.node,
            at.netns,
            have.join(", "),
            if n > 8 {
                format!(" … ({n} in all)")
            } else {
                String::new()
            }
        )
    }
}

fn ns_at<'w>(world: &'w World<'_>, at: &Place) -> Option<&'w netray_datapath::world::NsView<'w>> {
    world
        .ns
        .iter()
        .find(|v| v.node == at.node && v.netns_label() == at.netns)
}

/// A rule generated from a Kubernetes NetworkPolicy (kube-router, Calico layouts, or a
/// comment saying so).
fn is_network_policy(chain: &str, text: &str) -> bool {
    let chain = chain.to_ascii_uppercase();
    let text = text.to_ascii_lowercase();
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

/// The endpoint of a branch: the destination after the first DNAT on the forward leg, else
/// the branch's own endpoint, else the packet's destination.
pub(crate) fn endpoint_of(b: &Branch, trace: &Trace) -> String {
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

/// `text` as a sentence (identifiers keep their spelling): see
/// [`netray_snapshot::text::sentence`].
fn sentence(text: &str) -> String {
    netray_snapshot::text::sentence(text)
}

/// The `stale-conntrack-entry` cause, when `b`'s request followed a collected conntrack entry
/// (a flow given with its real source port) that the scan found stale: the finding about that
/// very entry (same node, namespace and tuple), narrowed to it.
fn stale_entry_followed(b: &Branch, findings: &[Finding]) -> Option<Finding> {
    b.hops
        .iter()
        .filter(|h| h.leg == Leg::Forward)
        .find_map(|h| match &h.step {
            Step::Conntrack {
                state,
                orig,
                reply,
                entry,
            } if state == CT_COLLECTED_ORIG => {
                let at = Place {
                    node: h.node.clone(),
                    netns: h.netns.clone(),
                };
                let followed = KernelObject::Conntrack {
                    at: at.clone(),
                    entry: entry.clone(),
                    collected: true,
                    orig: orig.clone(),
                    reply: reply.clone(),
                };
                let key = followed.key();
                let f = findings.iter().find(|f| {
                    f.code == "stale-conntrack-entry" && f.objects.iter().any(|o| o.key() == key)
                })?;
                let pos = f.objects.iter().position(|o| o.key() == key)?;
                let mut f = f.clone();
                let backend = addr_port(reply.src, Some(reply.sport), &reply.proto);
                f.evidence = vec![followed.quote()];
                f.explanation = format!(
                    "This flow's tuple is already in {}'s conntrack table, and that entry DNATs \
                     it to {backend}, which is no longer a ready endpoint of the Service. The \
                     packet skips the nat table (no new load-balancing) and follows the entry \
                     to the old backend until the entry expires; every retry from the same \
                     source port refreshes it. Where it then dies: {}",
                    h.node,
                    sentence(&b.reason)
                );
                f.fix_commands = f.fix_commands.get(pos).cloned().into_iter().collect();
                f.fix_commands
                    .iter_mut()
                    .for_each(|c| c.pod = h.pod.clone());
                f.fix = format!(
                    "on {}: {} (kube-proxy should have deleted it when the endpoint went away)",
                    h.node,
                    f.fix_commands
                        .first()
                        .map(|c| c.run.as_str())
                        .unwrap_or("conntrack -D …")
                );
                f.objects = vec![followed];
                f.pod = h.pod.clone();
                Some(f)
            }
            _ => None,
        })
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
    let mut ports: Vec<u16> = Vec::new();
    let mut nodes: Vec<&str> = Vec::new();
    for fi in findings
        .iter()
        .filter(|x| x.code == "stale-conntrack-entry")
    {
        for o in &fi.objects {
            if let KernelObject::Conntrack { orig, .. } = o
                && orig.proto == "udp"
                && orig.src == p.src
                && orig.dst == p.dst
                && orig.dport == dport
            {
                ports.push(orig.sport);
                if !nodes.contains(&fi.node.as_str()) {
                    nodes.push(&fi.node);
                }
            }
        }
    }
    let first = ports.first()?;
    let list: Vec<String> = ports.iter().map(u16::to_string).collect();
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
        list.join(", ")
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use netray_datapath::result::{FlowView, PacketView};

    fn flow(to: &str, ok: bool) -> TracedFlow {
        let packet = PacketView {
            src: "10.0.0.1".parse().unwrap(),
            dst: "10.0.0.2".parse().unwrap(),
            proto: "tcp".into(),
            sport: Some(40000),
            dport: Some(80),
            len: 60,
            mark: 0,
        };
        let disposition = if ok {
            Disposition::Delivered
        } else {
            Disposition::Dropped
        };
        TracedFlow {
            from: "a".into(),
            to: to.into(),
            trace: Trace {
                flow: FlowView {
                    packet,
                    start: "n/host".into(),
                },
                branches: vec![Branch {
                    probability: 1.0,
                    endpoint: Some("10.0.0.2:80".into()),
                    disposition,
                    cause: None,
                    reason: "r".into(),
                    ended_on: Leg::Forward,
                    decided_by: Vec::new(),
                    assumptions: Vec::new(),
                    data_segment: None,
                    hops: Vec::new(),
                }],
                shares: Default::default(),
                reachable: ok,
                truncated: false,
                tcp_data: Vec::new(),
            },
        }
    }

    /// A fix that makes its own flow work but breaks one that works today is not proven.
    #[test]
    fn a_fix_that_breaks_another_flow_is_not_proven() {
        let bundle = netray_snapshot::Bundle {
            source: "t".into(),
            cluster: None,
            nodes: Vec::new(),
            failed: Vec::new(),
        };
        let world = World::new(&bundle);
        // Today x works and y works; with any command applied, y breaks.
        let sample = |cmds: &[FixCommand]| -> Result<Vec<TracedFlow>, String> {
            Ok(vec![flow("x", true), flow("y", cmds.is_empty())])
        };
        let ctx = Context {
            findings: &[],
            world: &world,
            pod_network: None,
            rewalk: None,
            collateral: Some(&sample),
        };
        let before = std::cell::OnceCell::new();
        assert_eq!(working(&sample(&[]).unwrap()).len(), 2);
        let cmd = FixCommand {
            node: "n".into(),
            netns: "host".into(),
            pod: None,
            run: "sysctl -w x=1".into(),
        };
        let mut p = FixProof {
            proven: true,
            with: Vec::new(),
            detail: "ok".into(),
        };
        add_damage(&mut p, collateral_damage(&ctx, &before, &[cmd]));
        assert!(!p.proven, "{p:?}");
        assert!(
            p.detail.contains("breaks 1 flow") && p.detail.contains("a → y"),
            "{p:?}"
        );
        let mut q = FixProof {
            proven: true,
            with: Vec::new(),
            detail: "ok".into(),
        };
        add_damage(&mut q, collateral_damage(&ctx, &before, &[]));
        assert!(q.proven);
    }
}
