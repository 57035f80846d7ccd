//! `netray diagnose`: walk every branch of a flow and answer with a verdict and root causes.

use std::process::ExitCode;

use netray_datapath::result::{Disposition, Leg};
use netray_datapath::{RulesetEngine, World, trace};
use netray_diagnose::diagnose::{
    Context, Diagnosis, FailurePoint, Rewalk, TracedFlow, Verdict, diagnose, findings_for,
};

use super::{ClusterArgs, CmdResult, Format, load_bundle};
use crate::flow::FlowArgs;
use crate::resolve::resolve;

/// Options of `netray diagnose`.
#[derive(clap::Args)]
pub struct Args {
    /// The snapshots: `--bundle` or `--live`.
    #[command(flatten)]
    pub source: super::BundleArgs,
    /// The flow.
    #[command(flatten)]
    pub flow: FlowArgs,
    /// Where the cluster view comes from (cluster.json or `--kube`).
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Output format (JSON schema: schemas/diagnose.schema.json).
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Format,
    /// Also print every branch hop by hop (text output).
    #[arg(long)]
    pub hops: bool,
    /// Also write a self-contained HTML report to FILE (the path as a diagram, causes, evidence, fixes).
    #[arg(long, value_name = "FILE")]
    pub html: Option<std::path::PathBuf>,
    /// Diagnose on demand (`--kube` without `--bundle`): which nodes to collect, the cache.
    #[command(flatten)]
    pub ondemand: super::ondemand::OnDemandArgs,
}

/// Run `netray diagnose`. Exit 0 reachable, 1 not (fully) reachable or uncertain.
pub fn run(args: Args) -> CmdResult {
    // On demand (`--kube` without a bundle): only the nodes the flow can touch, collected now
    // or taken from the cache (see `ondemand`).
    let (mut bundle, cluster, od) =
        if super::ondemand::wanted(&args.source, &args.cluster, &args.ondemand)? {
            let (b, c, od) =
                match super::ondemand::prepare(&args.cluster, &args.flow, &args.ondemand) {
                    Ok(p) => p,
                    Err(e) if e.is::<super::ondemand::Interrupted>() => {
                        eprintln!("netray: {e}");
                        return Ok(ExitCode::from(130));
                    }
                    Err(e) => return Err(e),
                };
            (b, Some(c), Some(od))
        } else {
            let (b, c) = load_bundle(&args.source, &args.cluster)?;
            (b, c, None)
        };
    super::apply_what_if(&mut bundle, cluster.as_ref(), &args.flow.what_if)?;
    let missing = match &od {
        Some(od) => od.missing(&bundle, cluster.as_ref()),
        None => super::missing_nodes(&bundle, cluster.as_ref()),
    };
    let mut flows = resolve(&args.flow, &bundle, cluster.as_ref())
        .map_err(|e| super::explain_missing(e.into(), &missing))?;
    let mut od_notes = Vec::new();
    if let Some(od) = &od {
        let (keep, note) = od.walkable(flows, &bundle, &missing);
        flows = keep;
        od_notes.extend(note);
        if flows.is_empty() {
            return Err(od_notes.join("; ").into());
        }
    }
    let pods = cluster.as_ref().map(super::pod_names).unwrap_or_default();
    let opts = args.flow.walk_options();
    match &od {
        Some(od) => od.warn(&missing),
        None => super::warn_missing_nodes(&missing),
    }
    // Walk every flow over a world.
    let walk_all = |world: &World<'_>,
                    engine: &RulesetEngine<'_>,
                    flows: &[crate::resolve::ResolvedFlow]|
     -> Result<Vec<TracedFlow>, String> {
        let mut traced = Vec::new();
        for f in flows {
            let mut t = trace(world, engine, &f.flow, opts).map_err(|e| e.to_string())?;
            // A socket of the node (a pod's or its own) sending to a Service: cgroup programs
            // may rewrite the address before any packet exists.
            if matches!(
                f.flow.start,
                netray_datapath::Start::Auto | netray_datapath::Start::Host(_)
            ) && crate::bpf::is_service_destination(
                cluster.as_ref(),
                &bundle,
                f.flow.dst,
                f.flow.dport,
            ) {
                netray_datapath::sockprog::mark_socket_programs(world, &mut t, f.flow.proto);
            }
            // A node's own socket: say which source the kernel picked; a packet from outside:
            // say where it entered (node and interface).
            let from = match f.flow.start {
                netray_datapath::Start::Host(_) => {
                    format!("{} ({})", f.from_label, t.flow.packet.src)
                }
                netray_datapath::Start::Auto => f.from_label.clone(),
                _ => entering(&f.from_label, &t),
            };
            traced.push(TracedFlow {
                from,
                to: f.to_label.clone(),
                trace: t,
            });
        }
        Ok(traced)
    };
    let name = |world: &mut World<'_>| {
        world.name_pods(pods.iter().cloned());
        world.set_missing_nodes(missing.iter().cloned());
    };
    let mut world = World::new(&bundle);
    name(&mut world);
    // Firewalls are parsed on first use, once: the walk parses those of the namespaces it
    // visits, and the proof re-walks below reuse them where a fix leaves them unchanged.
    let engine = RulesetEngine::new(&world);
    let traced = walk_all(&world, &engine, &flows)
        .map_err(|e| super::explain_missing(e.into(), &missing))?;
    // Only the checks about the namespaces the walk visited: the findings diagnose can
    // join to a cause (netray_diagnose::diagnose::findings_for).
    let findings = findings_for(&world, &engine, cluster.as_ref(), &traced);
    super::warn_parsed_input_problems(&world, &engine);
    // A fix is proven by applying its commands to a copy of the nodes they touch and walking
    // again: the diagnosed flow must then work, and a sample of the cluster's other flows
    // must not break.
    let patched =
        |cmds: &[netray_patch::FixCommand]| -> Result<Vec<netray_snapshot::NodeSnapshot>, String> {
            let mut copy = netray_snapshot::Bundle {
                nodes: bundle
                    .nodes
                    .iter()
                    .filter(|n| cmds.iter().any(|c| c.node == n.node.name))
                    .cloned()
                    .collect(),
                ..Default::default()
            };
            if let Err(e) = netray_patch::apply_all(&mut copy, cmds) {
                // Said about the whole bundle (the nodes it knows), not the copy.
                let mut whole = bundle.clone();
                return Err(netray_patch::apply_all(&mut whole, cmds)
                    .err()
                    .unwrap_or(e)
                    .to_string());
            }
            Ok(copy.nodes)
        };
    let rewalk_over = |cmds: &[netray_patch::FixCommand],
                       flows: &[crate::resolve::ResolvedFlow]|
     -> Result<Vec<TracedFlow>, String> {
        let nodes = patched(cmds)?;
        let mut w = World::with_nodes(&bundle, &nodes);
        name(&mut w);
        let e = RulesetEngine::reusing(&w, &engine);
        walk_all(&w, &e, flows)
    };
    let rewalk = |cmds: &[netray_patch::FixCommand]| rewalk_over(cmds, &flows);
    let mut sample = sample_flows(&args.flow, &flows, &bundle, cluster.as_ref());
    if let Some(od) = &od {
        od.collected_flows(&mut sample, &world);
    }
    // The sample before any fix is walked once; after a fix, only the sample flows whose walk
    // entered a namespace the fix changed are walked again (see `changed_places`).
    let sample_before: std::cell::OnceCell<Vec<TracedFlow>> = std::cell::OnceCell::new();
    let collateral = |cmds: &[netray_patch::FixCommand]| -> Result<Vec<TracedFlow>, String> {
        let before = match sample_before.get() {
            Some(b) => b,
            None => {
                let b = rewalk_over(&[], &sample)?;
                sample_before.get_or_init(|| b)
            }
        };
        if cmds.is_empty() {
            return Ok(before.clone());
        }
        let nodes = patched(cmds)?;
        let Some(changed) = changed_places(&bundle, &nodes) else {
            return rewalk_over(cmds, &sample);
        };
        let again: Vec<usize> = (0..sample.len())
            .filter(|&i| {
                before[i]
                    .trace
                    .branches
                    .iter()
                    .flat_map(|b| b.hops.iter())
                    .any(|h| changed.iter().any(|(n, ns)| *n == h.node && *ns == h.netns))
            })
            .collect();
        let subset: Vec<crate::resolve::ResolvedFlow> =
            again.iter().map(|&i| sample[i].clone()).collect();
        let mut walked = rewalk_over(cmds, &subset)?.into_iter();
        let mut out = before.clone();
        for i in again {
            if let Some(t) = walked.next() {
                out[i] = t;
            }
        }
        Ok(out)
    };
    let ctx = Context {
        findings: &findings,
        world: &world,
        pod_network: cluster.as_ref().and_then(super::pod_network),
        rewalk: Some(&rewalk),
        collateral: (!sample.is_empty()).then_some(&collateral as &Rewalk),
    };
    // Every distinct source label (flows entering at several nodes may differ).
    let mut froms: Vec<&str> = Vec::new();
    for t in &traced {
        if !froms.contains(&t.from.as_str()) {
            froms.push(&t.from);
        }
    }
    let from = join_sources(&froms);
    let to = if flows.len() == 1 {
        flows[0].to_label.clone()
    } else {
        flows
            .iter()
            .map(|f| f.to_label.as_str())
            .collect::<Vec<_>>()
            .join(" + ")
    };
    let mut d = diagnose(&from, &to, &traced, &ctx);
    // Said first: nodes on the path (the source's included) whose datapath runs BPF.
    let up_front = crate::bpf::datapath_notes(
        &bundle,
        cluster.as_ref(),
        &traced.iter().map(|t| &t.trace).collect::<Vec<_>>(),
    );
    d.notes.splice(0..0, up_front.iter().cloned());
    match &od {
        Some(od) => {
            d.notes.extend(od_notes);
            d.notes.extend(od.notes(&missing, &traced));
        }
        None => d.notes.extend(super::missing_note(&missing)),
    }
    super::output::print(&d, args.output, || {
        print_text(&d, &traced, args.hops, up_front.len())
    })?;
    if let Some(path) = &args.html {
        let meta = netray_report::Meta {
            source: args.source.describe(),
        };
        let html = netray_report::diagnosis(&d, &meta);
        netray_collect::output::write_file_atomic(path, html.as_bytes())
            .map_err(|e| format!("--html {}: {e}", path.display()))?;
    }
    Ok(match d.verdict {
        Verdict::Reachable => ExitCode::SUCCESS,
        _ => ExitCode::from(1),
    })
}

/// `LABEL (entering node/NODE on IFACE)`: where a packet from outside entered, from the
/// walk's first hop (a label already naming the node gets the interface added).
fn entering(label: &str, t: &netray_datapath::Trace) -> String {
    let Some(h) = t.branches.first().and_then(|b| b.hops.first()) else {
        return label.to_string();
    };
    let Some(iif) = &h.iif else {
        return label.to_string();
    };
    match label.strip_suffix(')') {
        Some(l) if l.contains(" (entering node/") => format!("{l} on {iif})"),
        _ => format!("{label} (entering node/{} on {iif})", h.node),
    }
}

/// The header's source: one label, or labels differing only in where they entered as
/// `SRC (entering A, B)`, else every label joined with ` + `.
fn join_sources(froms: &[&str]) -> String {
    let split: Vec<Option<(&str, &str)>> = froms
        .iter()
        .map(|f| {
            f.strip_suffix(')')
                .and_then(|f| f.split_once(" (entering "))
        })
        .collect();
    match split.first() {
        Some(Some((base, _)))
            if froms.len() > 1 && split.iter().all(|s| s.is_some_and(|(b, _)| b == *base)) =>
        {
            let entries: Vec<&str> = split.iter().flatten().map(|(_, e)| *e).collect();
            format!("{base} (entering {})", entries.join(", "))
        }
        _ => froms.join(" + "),
    }
}

/// Text output; the first `up_front` notes (BPF datapaths) are printed under the verdict.
fn print_text(d: &Diagnosis, traced: &[TracedFlow], hops: bool, up_front: usize) {
    // Pod namespaces are named by their pods (`node0/pod/default/web-0`), not `cni-<uuid>`.
    let traces: Vec<netray_datapath::Trace> = traced.iter().map(|t| t.trace.clone()).collect();
    let places = netray_datapath::text::pod_places(&traces);
    let pods = |s: &str| netray_datapath::text::name_pods(s, &places);
    println!("from {}", d.from);
    println!("to   {}", d.to);
    println!();
    let verdict = match d.verdict {
        Verdict::Reachable => "REACHABLE",
        Verdict::Unreachable => "UNREACHABLE",
        Verdict::Partial => "PARTIAL",
        Verdict::Uncertain => "UNCERTAIN",
    };
    println!("{verdict}: {}", pods(&d.summary));
    for n in d.notes.iter().take(up_front) {
        println!("note: {}", pods(n));
    }
    println!();
    println!("endpoints:");
    for e in &d.endpoints {
        let outcome = if e.failures.is_empty() {
            e.dispositions.join(", ")
        } else {
            pods(
                &e.failures
                    .iter()
                    .map(describe_failure)
                    .collect::<Vec<_>>()
                    .join("; "),
            )
        };
        println!(
            "  {} {:<24} {:>5.1}%  {outcome}",
            if e.reachable { "ok  " } else { "FAIL" },
            e.endpoint,
            e.share * 100.0,
        );
    }
    if !d.causes.is_empty() {
        println!();
        println!("root causes:");
        for (i, c) in d.causes.iter().enumerate() {
            match &c.pod {
                Some(p) => println!(
                    "  {}. {}  (node {}, pod/{p}, netns {})",
                    i + 1,
                    c.code,
                    c.node,
                    c.netns
                ),
                None => println!(
                    "  {}. {}  (node {}, netns {})",
                    i + 1,
                    c.code,
                    c.node,
                    c.netns
                ),
            }
            println!("     why: {}", pods(&c.explanation));
            for e in &c.evidence {
                println!("     evidence: {}", pods(e));
            }
            if c.fix_commands.is_empty() {
                println!("     fix: {}", c.fix);
            } else {
                let status = match &c.proof {
                    Some(p) if p.proven && p.with.is_empty() => "proven: ".to_string() + &p.detail,
                    Some(p) if p.proven => format!(
                        "proven together with the fix of {}: {}",
                        p.with.join(", "),
                        p.detail
                    ),
                    Some(p) => format!("NOT proven: {}", p.detail),
                    None => "not checked".into(),
                };
                println!("     fix ({status}):");
                for f in &c.fix_commands {
                    println!("       on {}: {}", netray_diagnose_where(f), f.run);
                }
            }
        }
    }
    if let Some(all) = &d.all_fixes
        && d.causes.iter().any(|c| !c.fix_commands.is_empty())
    {
        println!();
        println!(
            "all fixes together: {}",
            if all.proven {
                format!("proven — {}", all.detail)
            } else {
                format!("not enough — {}", all.detail)
            }
        );
    }
    for n in d.notes.iter().skip(up_front) {
        println!();
        println!("note: {}", pods(n));
    }
    if hops {
        for t in traced {
            println!();
            print!("{}", netray_datapath::text::render(&t.trace));
        }
    } else if d.verdict != Verdict::Reachable {
        println!();
        println!("(add --hops for the hop-by-hop walk of every branch, or -o json)");
    }
}

/// The namespaces (node, netns label as the walk names them) whose state differs between
/// `bundle` and its patched nodes `patched`, when only state the walk reads inside that
/// namespace changed (routes, rules, neighbours, FDB, sysctls, firewall, conntrack, sockets):
/// a walk that never entered one of them is unchanged by the patch. `None` when the patch
/// changed what other namespaces see (addresses, links and their MACs, which namespaces
/// exist, node-wide state): then every walk must be redone.
fn changed_places(
    bundle: &netray_snapshot::Bundle,
    patched: &[netray_snapshot::NodeSnapshot],
) -> Option<Vec<(String, String)>> {
    let mut out = Vec::new();
    for p in patched {
        let o = bundle.nodes.iter().find(|n| n.node.name == p.node.name)?;
        if o.node != p.node
            || o.referenced_netns != p.referenced_netns
            || o.not_collected != p.not_collected
            || o.cgroup_programs != p.cgroup_programs
            || o.namespaces.len() != p.namespaces.len()
        {
            return None;
        }
        for (a, b) in o.namespaces.iter().zip(&p.namespaces) {
            if a == b {
                continue;
            }
            if a.id != b.id
                || a.role != b.role
                || a.addresses != b.addresses
                || a.links != b.links
                || a.attachments != b.attachments
            {
                return None;
            }
            let label = if a.role == netray_snapshot::NetnsRole::Host {
                "host".to_string()
            } else {
                a.display_name()
            };
            out.push((o.node.name.clone(), label));
        }
    }
    Some(out)
}

/// `reply dropped at node0/NETNS (stale-vxlan-neighbor on node2)`.
fn describe_failure(f: &FailurePoint) -> String {
    let leg = match f.leg {
        Leg::Forward => "request",
        Leg::Reply => "reply",
    };
    let cause = if f.cause_node == f.node || f.cause_node.is_empty() {
        f.code.clone()
    } else {
        format!("{} on {}", f.code, f.cause_node)
    };
    let what = match f.disposition {
        // The disposition already says it is the reply.
        Disposition::ReplyMismatch => f.disposition.as_str().to_string(),
        d => format!("{leg} {}", d.as_str()),
    };
    format!("{what} at {}/{} ({cause})", f.node, f.netns)
}

/// `node1 (host)` or `node0 (pod default/web-0, netns cni-…)`: where a fix command runs.
fn netray_diagnose_where(c: &netray_patch::FixCommand) -> String {
    match (&c.pod, c.netns.as_str()) {
        (Some(p), ns) => format!("{} in pod/{p} (netns {ns})", c.node),
        (None, "host") => format!("{} (host namespace)", c.node),
        (None, ns) => format!("{} (netns {ns})", c.node),
    }
}

/// Flows of the cluster besides the diagnosed ones, walked before and after a fix so a fix
/// that breaks something else is not called proven: from one pod per node and from every node
/// to each port of every Service with a cluster IP (at most 48 flows).
fn sample_flows(
    base: &FlowArgs,
    diagnosed: &[crate::resolve::ResolvedFlow],
    bundle: &netray_snapshot::Bundle,
    cluster: Option<&netray_kube::ClusterView>,
) -> Vec<crate::resolve::ResolvedFlow> {
    const MAX: usize = 48;
    let Some(c) = cluster else {
        return Vec::new();
    };
    let mut sources: Vec<String> = Vec::new();
    for n in &c.nodes {
        if let Some(p) = c
            .pods
            .iter()
            .find(|p| p.node.as_deref() == Some(n.name.as_str()) && !p.host_network)
        {
            sources.push(format!("pod/{}/{}", p.namespace, p.name));
        }
        sources.push(format!("node/{}", n.name));
    }
    let mut out: Vec<crate::resolve::ResolvedFlow> = Vec::new();
    'all: for svc in c.services.iter().filter(|s| !s.cluster_ips.is_empty()) {
        for port in &svc.ports {
            for src in &sources {
                let to = format!(
                    "svc/{}/{}:{}/{}",
                    svc.namespace,
                    svc.name,
                    port.port,
                    port.protocol.to_ascii_lowercase()
                );
                let (Ok(from), Ok(to)) = (src.parse(), to.parse()) else {
                    continue;
                };
                let fa = FlowArgs {
                    from,
                    to,
                    proto: None,
                    sport: None,
                    ..base.clone()
                };
                for f in resolve(&fa, bundle, cluster).unwrap_or_default() {
                    if diagnosed.iter().any(|d| d.flow == f.flow) {
                        continue;
                    }
                    out.push(f);
                    if out.len() >= MAX {
                        break 'all;
                    }
                }
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::changed_places;

    fn healthy() -> netray_snapshot::Bundle {
        netray_snapshot::Bundle::load(std::path::Path::new(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../../examples/healthy"
        )))
        .unwrap()
    }

    /// node0's snapshot with `run` applied in its host namespace.
    fn patched(b: &netray_snapshot::Bundle, run: &str) -> Vec<netray_snapshot::NodeSnapshot> {
        let mut copy = netray_snapshot::Bundle {
            nodes: vec![b.nodes[0].clone()],
            ..Default::default()
        };
        let cmd = netray_patch::FixCommand {
            node: b.nodes[0].node.name.clone(),
            netns: "host".into(),
            pod: None,
            run: run.into(),
        };
        netray_patch::apply(&mut copy, &cmd).unwrap();
        copy.nodes
    }

    #[test]
    fn a_change_read_only_inside_its_namespace_names_that_namespace() {
        let b = healthy();
        let p = patched(&b, "sysctl -w net.ipv4.ip_forward=0");
        assert_eq!(
            changed_places(&b, &p),
            Some(vec![("node0".to_string(), "host".to_string())])
        );
        let p = patched(&b, "iptables -I FORWARD -j DROP");
        assert_eq!(
            changed_places(&b, &p),
            Some(vec![("node0".to_string(), "host".to_string())])
        );
        // Nothing changed: no namespace.
        assert_eq!(changed_places(&b, &[b.nodes[0].clone()]), Some(Vec::new()));
    }

    #[test]
    fn a_change_other_namespaces_see_means_every_walk_again() {
        let b = healthy();
        // An address (owners), a link's state: other namespaces' walks read them.
        for run in ["ip addr add 10.9.9.9/32 dev eth0", "ip link set eth0 down"] {
            let p = patched(&b, run);
            assert_eq!(changed_places(&b, &p), None, "{run}");
        }
    }
}
