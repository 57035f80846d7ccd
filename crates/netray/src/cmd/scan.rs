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
}

/// Run `netray scan`.
pub fn run(args: Args) -> CmdResult {
    if args.list_checks {
        for c in CATALOG {
            println!("{:<60} {}", c.codes.join(", "), c.title);
        }
        return Ok(ExitCode::SUCCESS);
    }
    let (bundle, cluster) = load_bundle(&args.source, &args.cluster)?;
    let findings = scan(&bundle, cluster.as_ref());
    match args.output {
        Format::Json => {
            let report = ScanReport {
                schema: "netray.scan/v1",
                bundle: args.source.describe(),
                nodes: bundle.nodes.iter().map(|n| n.node.name.as_str()).collect(),
                findings: &findings,
            };
            println!("{}", serde_json::to_string_pretty(&report)?);
        }
        Format::Text => print_text(&bundle, &findings),
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

fn print_text(bundle: &netray_snapshot::Bundle, findings: &[Finding]) {
    let nodes: Vec<&str> = bundle.nodes.iter().map(|n| n.node.name.as_str()).collect();
    let namespaces: usize = bundle.nodes.iter().map(|n| n.namespaces.len()).sum();
    println!(
        "scanned {} nodes ({}), {namespaces} namespaces, {} checks",
        nodes.len(),
        nodes.join(", "),
        CATALOG.len()
    );
    if findings.is_empty() {
        println!("no findings: clean");
        return;
    }
    for f in findings {
        println!();
        println!(
            "[{}] {}  node {}  netns {}",
            f.severity.to_string().to_uppercase(),
            f.code,
            f.node,
            f.netns
        );
        for e in &f.evidence {
            println!("    evidence: {e}");
        }
        println!("    why:      {}", f.explanation);
        println!("    fix:      {}", f.fix);
    }
    let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    println!();
    println!(
        "{} findings: {} critical, {} warning, {} info",
        findings.len(),
        count(Severity::Critical),
        count(Severity::Warning),
        count(Severity::Info)
    );
}
