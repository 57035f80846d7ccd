//! `netray audit`: every source class to every Service, node and pod network of a bundle,
//! failures grouped by root cause (see `netray_diagnose::audit`).

use std::io::Write as _;
use std::net::IpAddr;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use netray_datapath::{RulesetEngine, World};
use netray_diagnose::Severity;
use netray_diagnose::audit::{self, Audit};
use netray_diagnose::scan::scan_world;

use super::scan::FailOn;
use super::{ClusterArgs, CmdResult, Format, load_bundle};
use crate::flow::Proto;

/// Options of `netray audit`.
#[derive(clap::Args)]
pub struct Args {
    /// The snapshots: `--bundle` or `--live`.
    #[command(flatten)]
    pub source: super::BundleArgs,
    /// Where the cluster view comes from (cluster.json or `--kube`); audit needs one.
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Only Service ports and NodePorts of this protocol (`icmp`: only the echo probes to
    /// nodes and pods) [default: every protocol and the echo probes].
    #[arg(long, value_enum)]
    pub proto: Option<Proto>,
    /// IP packet size in bytes (headers included) of every walk, for MTU checks.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u16).range(20..))]
    pub size: Option<u16>,
    /// Source port of every walk (an ephemeral port, 40000, by default). Collected conntrack
    /// entries are not followed: every walk is of a new connection.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub sport: Option<u16>,
    /// The client outside the cluster that reaches every node's NodePorts [default: a free
    /// address of the first node's underlay subnet, else 203.0.113.1]. LoadBalancer Services
    /// are also probed from their ingress IPs, as their load balancer does.
    #[arg(long, value_name = "IP")]
    pub external: Option<IpAddr>,
    /// Do not walk the existing UDP connections of the collected conntrack tables (by default
    /// each one with DNAT is walked with its real source port, following its entry).
    #[arg(long)]
    pub no_existing: bool,
    /// Walk from every pod instead of one per class of equivalent pods.
    #[arg(long)]
    pub every_pod: bool,
    /// List every failing walk in its group (JSON `groups[].failing`; text: the first few).
    #[arg(long)]
    pub list_flows: bool,
    /// Walk the snapshots as if COMMAND had been run as root there first (repeatable; the
    /// same targets and vocabulary as `diagnose --what-if`): audit a fix cluster-wide.
    #[arg(long = "what-if", value_name = "TARGET: COMMAND")]
    pub what_if: Vec<String>,
    /// Stop exploring a flow after this many branches (its failures are then uncertain).
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_branches: usize,
    /// Worker threads [default: the number of cores].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..))]
    pub threads: Option<u16>,
    /// Lowest severity that makes the exit code 1 (groups below it are still listed).
    #[arg(long, value_enum, default_value_t = FailOn::Warning)]
    pub fail_on: FailOn,
    /// Output format (JSON schema: schemas/audit.schema.json).
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Format,
    /// Also write a self-contained HTML report to FILE: one row per cause (its node, deciding
    /// objects, how many flows, sources and endpoints fail, the fix), each expandable to its
    /// failing flows.
    #[arg(long, value_name = "FILE")]
    pub html: Option<std::path::PathBuf>,
}

/// Run `netray audit`. Exit 0 when no group is at or above `--fail-on`, 1 otherwise.
pub fn run(args: Args) -> CmdResult {
    let (mut bundle, cluster) = load_bundle(&args.source, &args.cluster)?;
    let cluster = cluster.ok_or(
        "audit needs the cluster view to know the Services, pods and nodes to walk: the bundle \
         has no cluster.json; add one with `netray cluster -o BUNDLE/cluster.json`, or pass --kube",
    )?;
    super::apply_what_if(&mut bundle, Some(&cluster), &args.what_if)?;
    let mut world = World::new(&bundle);
    world.name_pods(super::pod_names(&cluster));
    let engine = RulesetEngine::new(&world);
    super::warn_input_problems(&world, &engine);
    let opts = audit::Options {
        walk: netray_datapath::Options {
            max_branches: args.max_branches.max(1),
            ..netray_datapath::Options::default()
        },
        proto: args.proto.map(Proto::number),
        size: args.size.map(u32::from),
        sport: args.sport.unwrap_or(40000),
        external: args.external,
        existing: !args.no_existing,
        every_pod: args.every_pod,
        // The HTML report lists the failing flows of each group.
        list_flows: args.list_flows || args.html.is_some(),
        threads: args.threads.map(usize::from).unwrap_or_else(|| {
            std::thread::available_parallelism().map_or(1, std::num::NonZeroUsize::get)
        }),
    };
    let plan = audit::plan(&world, &cluster, &opts);
    // Supporting evidence for the causes: the whole cluster is walked, so the whole scan.
    let findings = scan_world(&world, &engine, Some(&cluster));
    let done = AtomicUsize::new(0);
    let stop = AtomicBool::new(false);
    let tty = super::collect::STDERR_IS_TTY.load(Ordering::Relaxed);
    let mut report = std::thread::scope(|s| {
        if tty {
            s.spawn(|| progress(&done, plan.walks(), &stop));
        }
        let r = audit::run(&world, &engine, &cluster, &findings, &plan, &opts, &done);
        stop.store(true, Ordering::Relaxed);
        r
    });
    let bundle_name = args.source.describe();
    if let Some(path) = &args.html {
        let meta = netray_report::Meta {
            source: bundle_name.clone(),
        };
        let html = netray_report::audit(&report, &meta);
        netray_collect::output::write_file_atomic(path, html.as_bytes())
            .map_err(|e| format!("--html {}: {e}", path.display()))?;
        if !args.list_flows {
            // Listed for the HTML report only: the text and JSON stay as without --html.
            for g in &mut report.groups {
                g.failing.clear();
            }
        }
    }
    super::output::print(&report, args.output, || print_text(&report, &bundle_name))?;
    let threshold = match args.fail_on {
        FailOn::Critical => Severity::Critical,
        FailOn::Warning => Severity::Warning,
        FailOn::Info => Severity::Info,
    };
    // Severity orders most severe first: Critical < Warning < Info.
    Ok(if report.worst().is_some_and(|s| s <= threshold) {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

/// Redraw `walked/total, ETA` on the terminal (`/dev/tty`) a few times a second until `stop`.
fn progress(done: &AtomicUsize, total: usize, stop: &AtomicBool) {
    let Ok(mut tty) = std::fs::OpenOptions::new().write(true).open("/dev/tty") else {
        return;
    };
    let start = Instant::now();
    while !stop.load(Ordering::Relaxed) {
        let n = done.load(Ordering::Relaxed);
        let eta = if n > 0 && n < total {
            let left = start.elapsed().as_secs_f64() / n as f64 * (total - n) as f64;
            format!(", ETA {:.0} s", left)
        } else {
            String::new()
        };
        let _ = write!(tty, "\r\x1b[Knetray: audit: {n}/{total} flows walked{eta}");
        let _ = tty.flush();
        std::thread::sleep(Duration::from_millis(200));
    }
    let _ = tty.write_all(b"\r\x1b[K");
}

fn print_text(a: &Audit, bundle: &str) {
    use netray_snapshot::text::count;
    let s = &a.summary;
    println!(
        "audited {bundle}: {} in {} to {}; {} walked, standing for {}",
        count(s.sources, "source", "sources"),
        count(s.source_classes, "class", "classes"),
        count(s.targets, "target", "targets"),
        count(s.walks, "flow", "flows"),
        count(s.flows, "flow", "flows"),
    );
    if a.groups.is_empty() && a.not_walked.is_empty() {
        println!("every flow works: clean");
    } else {
        println!(
            "{} of {} fail, {}",
            s.failing_flows,
            count(s.flows, "flow", "flows"),
            count(a.groups.len(), "cause", "causes")
        );
    }
    for (i, g) in a.groups.iter().enumerate() {
        let c = &g.cause;
        println!();
        println!("{}. [{}] {}", i + 1, c.severity, g.summary);
        println!("   why: {}", c.explanation);
        for e in c.evidence.iter().take(4) {
            println!("   evidence: {e}");
        }
        if c.fix_commands.is_empty() {
            println!("   fix: {}", c.fix);
        } else {
            println!("   fix (not proven here; diagnose proves it):");
            for f in &c.fix_commands {
                let at = match (&f.pod, f.netns.as_str()) {
                    (Some(p), ns) => format!("{} in pod/{p} (netns {ns})", f.node),
                    (None, "host") => format!("{} (host namespace)", f.node),
                    (None, ns) => format!("{} (netns {ns})", f.node),
                };
                println!("     on {at}: {}", f.run);
            }
        }
        for f in g.failing.iter().take(8) {
            println!(
                "   fails: {} → {} (endpoint {}{})",
                f.from,
                f.to,
                f.endpoint,
                if f.members > 1 {
                    format!(", for {} members of its class", f.members)
                } else {
                    String::new()
                }
            );
        }
        if g.failing.len() > 8 {
            println!(
                "   … ({} failing walks in all; -o json lists them)",
                g.failing.len()
            );
        }
        let shown: Vec<&str> = g.targets.iter().take(4).map(String::as_str).collect();
        println!(
            "   targets: {}{}",
            shown.join(", "),
            if g.targets.len() > 4 {
                format!(" … ({} in all)", g.targets.len())
            } else {
                String::new()
            }
        );
        println!(
            "   one of them: netray diagnose --bundle {bundle} --from {} --to {}{}",
            g.example.from,
            g.example.to,
            g.example
                .sport
                .map(|p| format!(" --sport {p}"))
                .unwrap_or_default()
        );
    }
    if !a.not_walked.is_empty() {
        println!();
        println!(
            "{} could not be walked:",
            count(a.not_walked.len(), "flow", "flows")
        );
        for n in a.not_walked.iter().take(10) {
            println!("  {} → {}: {}", n.from, n.to, n.error);
        }
        if a.not_walked.len() > 10 {
            println!("  … ({} in all; -o json lists them)", a.not_walked.len());
        }
    }
    for s in &a.skipped {
        println!("note: {s}");
    }
}
