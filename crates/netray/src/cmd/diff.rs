//! `netray diff`: the same flows over two snapshots — what changed outcome and which objects
//! on the paths changed.

use std::process::ExitCode;

use netray_datapath::{RulesetEngine, World, trace};
use netray_diagnose::diagnose::TracedFlow;
use netray_diagnose::diff::{FlowDiff, diff};

use super::{ClusterArgs, CmdResult, Format};
use crate::flow::{Endpoint, FlowArgs, Proto};
use crate::resolve::resolve;

/// Options of `netray diff`.
#[derive(clap::Args)]
pub struct Args {
    /// The snapshots before (bundle directory or .tar.gz).
    #[arg(long, value_name = "DIR|FILE.tar.gz")]
    pub before: std::path::PathBuf,
    /// The snapshots after.
    #[arg(long, value_name = "DIR|FILE.tar.gz")]
    pub after: std::path::PathBuf,
    /// Source of the flow (the forms of `diagnose --from`).
    #[arg(long, value_name = "SRC", required_unless_present = "flows")]
    pub from: Option<Endpoint>,
    /// Destination of the flow (the forms of `diagnose --to`).
    #[arg(long, value_name = "DST", required_unless_present = "flows")]
    pub to: Option<Endpoint>,
    /// Many flows: a file with one `FROM TO` pair per line (`#` comments).
    #[arg(long, value_name = "FILE", conflicts_with_all = ["from", "to"])]
    pub flows: Option<std::path::PathBuf>,
    /// Protocol, when not given as /PROTO on the destination.
    #[arg(long, value_enum)]
    pub proto: Option<Proto>,
    /// IP packet size in bytes, for MTU checks.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u16).range(20..))]
    pub size: Option<u16>,
    /// Address family, 4 or 6 (as on the other flow commands).
    #[arg(long, value_name = "4|6", value_parser = crate::flow::parse_family)]
    pub family: Option<netray_kube::IpFamily>,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Format,
}

/// Run `netray diff`. Exit 0 when no endpoint changed outcome, 1 when some did.
pub fn run(args: Args) -> CmdResult {
    let pairs: Vec<(Endpoint, Endpoint)> = match &args.flows {
        Some(file) => {
            let text =
                std::fs::read_to_string(file).map_err(|e| format!("{}: {e}", file.display()))?;
            let mut v = Vec::new();
            for (i, line) in text.lines().enumerate() {
                let line = line.trim();
                if line.is_empty() || line.starts_with('#') {
                    continue;
                }
                let mut w = line.split_whitespace();
                let (Some(f), Some(t), None) = (w.next(), w.next(), w.next()) else {
                    return Err(format!(
                        "{}:{}: expected `FROM TO`, got `{line}`",
                        file.display(),
                        i + 1
                    )
                    .into());
                };
                let at = |e: String| format!("{}:{}: {e}", file.display(), i + 1);
                v.push((f.parse().map_err(at)?, t.parse().map_err(at)?));
            }
            v
        }
        None => vec![(
            args.from.clone().ok_or("--from is required")?,
            args.to.clone().ok_or("--to is required")?,
        )],
    };
    let walk = |path: &std::path::Path| -> Result<Vec<TracedFlow>, super::CmdError> {
        let source = super::BundleArgs {
            bundle: Some(path.to_path_buf()),
            live: false,
        };
        let (bundle, cluster) = super::load_bundle(&source, &ClusterArgs::default())?;
        let mut world = World::new(&bundle);
        if let Some(c) = &cluster {
            world.name_pods(super::pod_names(c));
        }
        let engine = RulesetEngine::new(&world);
        let mut out = Vec::new();
        for (from, to) in &pairs {
            let fa = FlowArgs {
                from: from.clone(),
                to: to.clone(),
                proto: args.proto,
                size: args.size,
                sport: None,
                what_if: Vec::new(),
                family: args.family,
                max_branches: 4096,
            };
            for f in resolve(&fa, &bundle, cluster.as_ref())
                .map_err(|e| format!("{}: {e}", path.display()))?
            {
                out.push(TracedFlow {
                    from: f.from_label.clone(),
                    to: f.to_label.clone(),
                    trace: trace(&world, &engine, &f.flow, fa.walk_options())?,
                });
            }
        }
        Ok(out)
    };
    let before = walk(&args.before)?;
    let after = walk(&args.after)?;
    if before.len() != after.len() {
        return Err(format!(
            "the flows resolve differently in the two snapshots ({} vs {} flows: a Service's ports changed?)",
            before.len(),
            after.len()
        )
        .into());
    }
    let d = diff(&before, &after);
    super::output::print(&d, args.output, || print_text(&d))?;
    Ok(if d.changed == 0 {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn print_text(d: &FlowDiff) {
    let names = |v: &[netray_datapath::result::Disposition]| {
        if v.is_empty() {
            "-".to_string()
        } else {
            v.iter().map(|x| x.as_str()).collect::<Vec<_>>().join(",")
        }
    };
    println!(
        "{} endpoint{} changed outcome",
        d.changed,
        if d.changed == 1 { "" } else { "s" }
    );
    let mut flow = "";
    for e in &d.endpoints {
        if e.flow != flow {
            println!();
            println!("{}", e.flow);
            flow = &e.flow;
        }
        println!(
            "  {:<11} {:<24} {} → {}",
            e.change,
            e.endpoint,
            names(&e.before),
            names(&e.after)
        );
        if e.change == "unchanged" {
            continue;
        }
        for o in &e.objects {
            match (&o.before, &o.after) {
                (Some(b), Some(a)) => println!("      {}: {b}  →  {a}", o.at),
                (Some(b), None) => println!("      {}: gone from the path: {b}", o.at),
                (None, Some(a)) => println!("      {}: new on the path: {a}", o.at),
                (None, None) => {}
            }
        }
    }
}
