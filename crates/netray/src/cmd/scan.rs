//! `netray scan`: the check catalog over every node and namespace of a bundle.

use std::process::ExitCode;

use netray_diagnose::{Finding, Severity, catalog::CATALOG, scan::scan};

use super::{ClusterArgs, CmdResult, Format, load_bundle};

/// Options of `netray scan`.
#[derive(clap::Args)]
pub struct Args {
    /// The snapshots: `--bundle` or `--live`.
    #[command(flatten)]
    pub source: super::BundleArgs,
    /// Where the cluster view comes from (cluster.json or `--kube`).
    #[command(flatten)]
    pub cluster: ClusterArgs,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value_t)]
    pub output: Format,
    /// List the checks of the catalog and their codes, then exit.
    #[arg(long)]
    pub list_checks: bool,
    /// Lowest severity that makes the exit code 1 (findings below it are still listed).
    #[arg(long, value_enum, default_value_t = FailOn::Warning)]
    pub fail_on: FailOn,
    /// Also write a self-contained HTML report to FILE (findings grouped by cause code).
    #[arg(long, value_name = "FILE")]
    pub html: Option<std::path::PathBuf>,
}

/// Severity threshold of `--fail-on`.
#[derive(Clone, Copy, Debug, clap::ValueEnum)]
pub enum FailOn {
    /// Exit 1 only on critical findings.
    Critical,
    /// Exit 1 on warnings or worse.
    Warning,
    /// Exit 1 on any finding.
    Info,
}

impl FailOn {
    fn threshold(self) -> Severity {
        match self {
            FailOn::Critical => Severity::Critical,
            FailOn::Warning => Severity::Warning,
            FailOn::Info => Severity::Info,
        }
    }
}

/// JSON document printed by `netray scan -o json`.
#[derive(serde::Serialize)]
struct ScanReport<'a> {
    /// Schema identifier.
    schema: &'static str,
    /// Bundle scanned.
    bundle: String,
    /// Nodes in the bundle.
    nodes: Vec<&'a str>,
    /// Findings, most severe first.
    findings: &'a [Finding],
    /// Checks that did not run, and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    not_run: Vec<NotRun>,
    /// Nodes whose state is missing from the bundle (not checked), and why.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    missing_nodes: Vec<MissingNode>,
}

/// A node whose snapshot is missing.
#[derive(serde::Serialize)]
struct MissingNode {
    /// Node name.
    node: String,
    /// Why its snapshot is missing.
    reason: String,
}

/// Checks that did not run.
#[derive(serde::Serialize)]
struct NotRun {
    /// Their codes.
    codes: Vec<&'static str>,
    /// Why, and how to make them run.
    reason: String,
    /// The nodes where they did not run (empty: on every node).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    nodes: Vec<String>,
}

/// One check of the catalog, for `--list-checks -o json|yaml`.
#[derive(serde::Serialize)]
struct CheckInfo {
    codes: &'static [&'static str],
    title: &'static str,
    needs_cluster_view: bool,
}

/// The checks that did not run: the Kubernetes checks without a usable cluster view, then
/// the checks of each part of a node's state that was not collected
/// ([`netray_diagnose::catalog::not_run_uncollected`]; those already listed as Kubernetes
/// checks that did not run are not repeated).
fn not_run(
    bundle: &netray_snapshot::Bundle,
    cluster: Option<&netray_kube::ClusterView>,
) -> Vec<NotRun> {
    let mut out = not_run_kubernetes(cluster);
    let skipped: Vec<&str> = out.iter().flat_map(|n| n.codes.iter().copied()).collect();
    for u in netray_diagnose::catalog::not_run_uncollected(bundle) {
        let codes: Vec<&'static str> = u
            .codes
            .iter()
            .copied()
            .filter(|c| !skipped.contains(c))
            .collect();
        if !codes.is_empty() {
            out.push(NotRun {
                codes,
                reason: u.reason(),
                nodes: u.nodes,
            });
        }
    }
    out
}

/// The Kubernetes checks that cannot run on this cluster view.
fn not_run_kubernetes(cluster: Option<&netray_kube::ClusterView>) -> Vec<NotRun> {
    let reason = match cluster {
        None => {
            "the bundle has no cluster view (cluster.json): the Kubernetes checks did not run; \
                 add one with `netray cluster -o BUNDLE/cluster.json`, or pass --kube"
                .to_string()
        }
        Some(c) if c.services.is_empty() && c.pods.is_empty() => {
            "the cluster view lists no pods and no Services: the Kubernetes checks found nothing \
             to check; is cluster.json from this cluster (`netray cluster`)?"
                .to_string()
        }
        Some(_) => return Vec::new(),
    };
    vec![NotRun {
        codes: netray_diagnose::catalog::NEEDS_CLUSTER.to_vec(),
        reason,
        nodes: Vec::new(),
    }]
}

/// Run `netray scan`.
pub fn run(args: Args) -> CmdResult {
    if args.list_checks {
        let checks: Vec<CheckInfo> = CATALOG
            .iter()
            .map(|c| CheckInfo {
                codes: c.codes,
                title: c.title,
                needs_cluster_view: c
                    .codes
                    .iter()
                    .any(|k| netray_diagnose::catalog::NEEDS_CLUSTER.contains(k)),
            })
            .collect();
        super::output::print(&checks, args.output, || {
            for c in &checks {
                println!(
                    "{:<60} {}{}",
                    c.codes.join(", "),
                    c.title,
                    if c.needs_cluster_view {
                        " (needs the cluster view)"
                    } else {
                        ""
                    }
                );
            }
        })?;
        return Ok(ExitCode::SUCCESS);
    }
    let (bundle, cluster) = load_bundle(&args.source, &args.cluster)?;
    let findings = scan(&bundle, cluster.as_ref());
    let not_run = not_run(&bundle, cluster.as_ref());
    let missing = super::missing_nodes(&bundle, cluster.as_ref());
    let report = ScanReport {
        schema: "netray.scan/v1",
        bundle: args.source.describe(),
        nodes: bundle.nodes.iter().map(|n| n.node.name.as_str()).collect(),
        findings: &findings,
        not_run,
        missing_nodes: missing
            .iter()
            .map(|m| MissingNode {
                node: m.name.clone(),
                reason: m.reason.clone(),
            })
            .collect(),
    };
    super::output::print(&report, args.output, || {
        print_text(&bundle, &findings, &report.not_run, &missing)
    })?;
    if args.output != Format::Text {
        for n in &report.not_run {
            eprintln!("netray: warning: {}", n.reason);
        }
        super::warn_missing_nodes(&missing);
    }
    if let Some(path) = &args.html {
        let meta = netray_report::Meta {
            source: args.source.describe(),
        };
        let nodes: Vec<&str> = bundle.nodes.iter().map(|n| n.node.name.as_str()).collect();
        let html = netray_report::scan(&findings, &nodes, &meta);
        netray_collect::output::write_file_atomic(path, html.as_bytes())
            .map_err(|e| format!("--html {}: {e}", path.display()))?;
    }
    // Severity orders most severe first: Critical < Warning < Info.
    let threshold = args.fail_on.threshold();
    let actionable = findings.iter().any(|f| f.severity <= threshold);
    Ok(if actionable {
        ExitCode::from(1)
    } else {
        ExitCode::SUCCESS
    })
}

fn print_text(
    bundle: &netray_snapshot::Bundle,
    findings: &[Finding],
    not_run: &[NotRun],
    missing: &[netray_datapath::MissingNode],
) {
    use netray_snapshot::text::count;
    let nodes: Vec<&str> = bundle.nodes.iter().map(|n| n.node.name.as_str()).collect();
    let namespaces: usize = bundle.nodes.iter().map(|n| n.namespaces.len()).sum();
    // Everywhere: the Kubernetes checks; on some nodes: those of uncollected state.
    let (everywhere, some): (Vec<&NotRun>, Vec<&NotRun>) =
        not_run.iter().partition(|n| n.nodes.is_empty());
    let distinct = |v: &[&NotRun]| {
        let mut c: Vec<&str> = v.iter().flat_map(|n| n.codes.iter().copied()).collect();
        c.sort_unstable();
        c.dedup();
        c.len()
    };
    let mut skipped = Vec::new();
    if !everywhere.is_empty() {
        skipped.push(format!(
            "{} did not run",
            count(
                distinct(&everywhere),
                "Kubernetes check",
                "Kubernetes checks"
            )
        ));
    }
    if !some.is_empty() {
        skipped.push(format!(
            "{} did not run on some nodes",
            count(distinct(&some), "check", "checks")
        ));
    }
    println!(
        "scanned {} ({}), {}, {}{}",
        count(nodes.len(), "node", "nodes"),
        nodes.join(", "),
        count(namespaces, "namespace", "namespaces"),
        count(CATALOG.len(), "check", "checks"),
        if skipped.is_empty() {
            String::new()
        } else {
            format!(" ({})", skipped.join("; "))
        }
    );
    for n in not_run {
        println!("note: {} ({})", n.reason, n.codes.join(", "));
    }
    for m in missing {
        println!(
            "note: no snapshot of node {} ({}): its state was not checked",
            m.name, m.reason
        );
    }
    if findings.is_empty() {
        if not_run.is_empty() {
            println!("no findings: clean");
        } else {
            println!("no findings from the checks that ran");
        }
        return;
    }
    for f in findings {
        println!();
        let place = match &f.pod {
            Some(p) => format!("node {}  pod/{p}  (netns {})", f.node, f.netns),
            None => format!("node {}  netns {}", f.node, f.netns),
        };
        println!(
            "[{}] {}  {place}",
            f.severity.to_string().to_uppercase(),
            f.code,
        );
        for e in &f.evidence {
            println!("    evidence: {e}");
        }
        println!("    why:      {}", f.explanation);
        println!("    fix:      {}", f.fix);
    }
    let by = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    println!();
    println!(
        "{}: {} critical, {} warning, {} info",
        count(findings.len(), "finding", "findings"),
        by(Severity::Critical),
        by(Severity::Warning),
        by(Severity::Info)
    );
}
