//! `netray trace`: every path a flow can take across the bundle, forward and reply.
use std::process::ExitCode;

use super::CmdResult;
use crate::flow::{FlowArgs, Place, PortRef, Target};

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// A readable hop list.
    Text,
    /// The trace as JSON (schema in crates/netray-datapath/README.md).
    Json,
}

/// Options of `netray trace`.
///
/// Exit code: 0 when every branch is delivered (forward and reply), 1 otherwise, 2 on input
/// errors.
#[derive(clap::Args)]
pub struct Args {
    /// Bundle directory or .tar.gz (cluster.json + nodes/*.json).
    #[arg(long, value_name = "DIR|FILE.tar.gz")]
    pub bundle: std::path::PathBuf,
    /// The flow.
    #[command(flatten)]
    pub flow: FlowArgs,
    /// Where the cluster view comes from (cluster.json or `--kube`).
    #[command(flatten)]
    pub cluster: super::ClusterArgs,
    /// Output format.
    #[arg(short = 'o', long = "output", value_enum, default_value = "text")]
    pub output: Format,
    /// Stop after this many branches.
    #[arg(long, default_value_t = 4096)]
    pub max_branches: usize,
}

/// Build the datapath flow from the CLI flow arguments (addresses only; names are resolved by
/// `netray diagnose`).
pub fn to_flow(f: &FlowArgs) -> Result<netray_datapath::Flow, String> {
    let proto = f.protocol()?;
    let (src, start) = match &f.from.target {
        Target::Addr { ip, at } => (
            *ip,
            match at {
                None => netray_datapath::Start::Auto,
                Some(Place::Node(n)) => netray_datapath::Start::Node(n.clone()),
                Some(Place::Netns(n)) => netray_datapath::Start::Netns(n.clone()),
            },
        ),
        _ => {
            return Err(
                "trace takes addresses (IP, IP@node/NAME, IP@netns/NAME); use `netray diagnose` for pod/, svc/ and node/ names"
                    .into(),
            );
        }
    };
    let dst = match &f.to.target {
        Target::Addr { ip, at: None } => *ip,
        Target::Addr { at: Some(_), .. } => {
            return Err("--to takes IP[:PORT][/PROTO] (no @place)".into());
        }
        _ => {
            return Err(
                "trace takes an address as --to; use `netray diagnose` for svc/ and pod/ names"
                    .into(),
            );
        }
    };
    let dport = match &f.to.port {
        Some(PortRef::Number(n)) => Some(*n),
        Some(PortRef::Name(n)) => {
            return Err(format!(
                "named port `{n}` needs a service (netray diagnose)"
            ));
        }
        None => None,
    };
    let pnum = proto.number();
    if matches!(pnum, 6 | 17 | 132) && dport.is_none() {
        return Err(format!("{proto} needs a destination port (--to IP:PORT)"));
    }
    Ok(netray_datapath::Flow {
        src,
        dst,
        proto: pnum,
        sport: f.source_port(),
        dport,
        size: f.size.map(u32::from),
        start,
    })
}

/// Run `netray trace`.
pub fn run(args: Args) -> CmdResult {
    let flow = to_flow(&args.flow)?;
    let (bundle, _cluster) = super::load_bundle(&args.bundle, &args.cluster)?;
    let world = netray_datapath::World::new(&bundle);
    let engine = netray_datapath::RulesetEngine::new(&world);
    for (ns, d) in engine.diagnostics() {
        eprintln!("netray: warning: {}: firewall: {d}", world.ns[ns].label());
    }
    let opts = netray_datapath::Options {
        max_branches: args.max_branches,
        ..netray_datapath::Options::default()
    };
    let trace = netray_datapath::trace(&world, &engine, &flow, opts)?;
    match args.output {
        Format::Text => print!("{}", netray_datapath::text::render(&trace)),
        Format::Json => println!("{}", serde_json::to_string_pretty(&trace)?),
    }
    Ok(if trace.reachable {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}
