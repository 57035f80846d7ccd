//! `netray trace`: every path a flow can take across the bundle, forward and reply.
use std::process::ExitCode;

use super::{CmdResult, Format};
use crate::flow::FlowArgs;
use crate::resolve::resolve;

/// Options of `netray trace`.
///
/// Exit code: 0 when every branch is delivered (forward and reply), 1 otherwise, 2 on input
/// errors.
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
    pub cluster: super::ClusterArgs,
    /// Output format (JSON/YAML: one trace, schema in crates/netray-datapath/README.md).
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Format,
    /// List only the branches that fail (the summary still counts every branch; with -o
    /// json|yaml, only failing branches are in `branches`).
    #[arg(long)]
    pub failing: bool,
    /// Also write a self-contained HTML report to FILE (every branch's path as a diagram).
    #[arg(long, value_name = "FILE")]
    pub html: Option<std::path::PathBuf>,
}

/// Run `netray trace`.
pub fn run(args: Args) -> CmdResult {
    let (mut bundle, cluster) = super::load_bundle(&args.source, &args.cluster)?;
    super::apply_what_if(&mut bundle, cluster.as_ref(), &args.flow.what_if)?;
    let missing = super::missing_nodes(&bundle, cluster.as_ref());
    let mut flows = resolve(&args.flow, &bundle, cluster.as_ref())
        .map_err(|e| super::explain_missing(e.into(), &missing))?;
    if flows.len() > 1 && flows.iter().any(|f| f.flow.dst != flows[0].flow.dst) {
        let addrs: Vec<&str> = flows.iter().map(|f| f.to_label.as_str()).collect();
        return Err(format!(
            "the destination is a dual-stack Service ({}); trace one family (--family 4|6, or \
             --to [ADDR]:PORT) or use `netray diagnose`, which walks each family",
            addrs.join(", ")
        )
        .into());
    }
    if flows.len() > 1 && flows.iter().any(|f| f.flow.start != flows[0].flow.start) {
        // One flow per node a load balancer sends to (same address and port).
        let entries: Vec<String> = flows
            .iter()
            .filter_map(|f| match &f.flow.start {
                netray_datapath::Start::Node(n) => Some(format!("node/{n}")),
                _ => None,
            })
            .collect();
        let f = &flows[0].flow;
        let to = match f.dport {
            Some(p) => std::net::SocketAddr::new(f.dst, p).to_string(),
            None => f.dst.to_string(),
        };
        return Err(format!(
            "the load balancer sends to several nodes ({}); trace one entering there (--from \
             {}@{} --to {to}) or use `netray diagnose`, which walks them all",
            entries.join(", "),
            f.src,
            entries.first().map(String::as_str).unwrap_or("node/NAME"),
        )
        .into());
    }
    if flows.len() > 1 {
        let ports: Vec<&str> = flows.iter().map(|f| f.to_label.as_str()).collect();
        return Err(format!(
            "the destination has several ports ({}); trace one (svc/NS/NAME:PORT) or use \
             `netray diagnose`, which walks them all",
            ports.join(", ")
        )
        .into());
    }
    let flow = flows.remove(0).flow;
    let mut world = netray_datapath::World::new(&bundle);
    if let Some(c) = &cluster {
        world.name_pods(super::pod_names(c));
    }
    world.set_missing_nodes(missing.iter().cloned());
    super::warn_missing_nodes(&world.missing);
    let engine = netray_datapath::RulesetEngine::new(&world);
    let mut trace = netray_datapath::trace(&world, &engine, &flow, args.flow.walk_options())
        .map_err(|e| super::explain_missing(e.into(), &world.missing))?;
    super::warn_parsed_input_problems(&world, &engine);
    // A socket of the node sending to a Service: cgroup programs may rewrite the address.
    if matches!(
        flow.start,
        netray_datapath::Start::Auto | netray_datapath::Start::Host(_)
    ) && crate::bpf::is_service_destination(cluster.as_ref(), &bundle, flow.dst, flow.dport)
    {
        netray_datapath::sockprog::mark_socket_programs(&world, &mut trace, flow.proto);
    }
    // Said first: nodes on the path whose datapath runs BPF (standard error for JSON).
    for n in crate::bpf::datapath_notes(&bundle, cluster.as_ref(), &[&trace]) {
        if args.output == Format::Text {
            println!("note: {n}");
        } else {
            eprintln!("netray: note: {n}");
        }
    }
    if args.output == Format::Text {
        print!(
            "{}",
            netray_datapath::text::render_with(&trace, args.failing)
        );
    } else if args.failing {
        let mut only = trace.clone();
        only.branches.retain(|b| !b.disposition.is_success());
        super::output::print(&only, args.output, || {})?;
    } else {
        super::output::print(&trace, args.output, || {})?;
    }
    if let Some(path) = &args.html {
        let meta = netray_report::Meta {
            source: args.source.describe(),
        };
        let html = netray_report::trace(&trace, &meta);
        netray_collect::output::write_file_atomic(path, html.as_bytes())
            .map_err(|e| format!("--html {}: {e}", path.display()))?;
    }
    Ok(if trace.reachable {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
