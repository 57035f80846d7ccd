//! `netray collect`: this host, or (`--kube`) many nodes through the Kubernetes API.
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use super::CmdResult;

/// Whether standard error was a terminal when netray started (decided in `main` before the
/// escaping layer replaces the descriptor): `--kube` draws progress only then.
pub static STDERR_IS_TTY: AtomicBool = AtomicBool::new(false);

/// First word of the checksum line `--gzip` ends standard error with:
/// `netray-stream sha256=HEX bytes=N`, over the uncompressed snapshot JSON (the reader of the
/// stream, `netray collect --kube`, checks it).
pub const TRAILER: &str = "netray-stream";

/// Options of `netray collect`.
#[derive(clap::Args)]
pub struct Args {
    /// Write the snapshot here (`-` or nothing: standard output). With --kube: the bundle, a
    /// new directory or a FILE.tar.gz.
    #[arg(short, long, value_name = "FILE|DIR|-")]
    pub output: Option<PathBuf>,
    /// Kubernetes node name recorded in the snapshot (default: the hostname).
    #[arg(long)]
    pub node: Option<String>,
    /// Also collect this namespace: a name under /run/netns or a path (repeatable).
    #[arg(long = "netns", value_name = "NAME|PATH")]
    pub netns: Vec<String>,
    /// Record at most this many conntrack entries per namespace.
    #[arg(long, default_value_t = 65536)]
    pub conntrack_limit: usize,
    /// Compress standard output with gzip and end standard error with the line
    /// `netray-stream sha256=HEX bytes=N` (of the uncompressed JSON): what the collector pods of
    /// --kube run.
    #[arg(long, conflicts_with = "kube")]
    pub gzip: bool,
    /// Collect nodes of a Kubernetes cluster: one short-lived collector pod per node (see
    /// deploy/), the snapshot streamed back over exec, plus cluster.json; implied by
    /// --kubeconfig and --context.
    #[arg(long)]
    pub kube: bool,
    /// The API to use (--kube).
    #[command(flatten)]
    pub api: super::KubeArgs,
    /// --kube: collect these nodes (comma separated, repeatable).
    #[arg(long, value_delimiter = ',', value_name = "NODE,…", conflicts_with_all = ["selector", "all"])]
    pub nodes: Vec<String>,
    /// --kube: collect the nodes matching this label selector (k=v, k!=v, k in (a,b), …).
    #[arg(long, short = 'l', value_name = "SELECTOR", conflicts_with = "all")]
    pub selector: Option<String>,
    /// --kube: collect every node.
    #[arg(long)]
    pub all: bool,
    /// --kube: nodes collected at once [default: 32].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub parallel: Option<u16>,
    /// --kube: namespace of the collector pods (deploy/namespace.yaml) [default: netray].
    #[arg(long, short = 'n', value_name = "NS")]
    pub namespace: Option<String>,
    /// --kube: collector image, built from deploy/Containerfile [default:
    /// localhost/netray:VERSION].
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// --kube: per-node timeout (pod start, collection, transfer): `90`, `90s`, `3m`
    /// [default: 3m].
    #[arg(long, value_name = "DURATION", value_parser = parse_duration)]
    pub timeout: Option<Duration>,
    /// --kube: retries of an API request after a transient error (429, 500, 502-504, a reset
    /// connection, a dropped exec stream) [default: 4].
    #[arg(long, value_name = "N")]
    pub retries: Option<u32>,
    /// --kube: run the collector container privileged (for SELinux or other policies that
    /// refuse the listed capabilities; see deploy/README.md).
    #[arg(long)]
    pub privileged: bool,
    /// --kube: no progress display (it is drawn only when standard error is a terminal).
    #[arg(long, short = 'q')]
    pub quiet: bool,
}

/// `90`, `90s`, `3m`, `1h`, `500ms`.
pub(crate) fn parse_duration(s: &str) -> Result<Duration, String> {
    let t = s.trim();
    let (num, unit) = t
        .find(|c: char| !c.is_ascii_digit() && c != '.')
        .map(|i| t.split_at(i))
        .unwrap_or((t, "s"));
    let n: f64 = num
        .parse()
        .map_err(|_| format!("`{s}`: expected a duration such as 90s, 3m or 1h"))?;
    let mult = match unit {
        "ms" => 0.001,
        "s" => 1.0,
        "m" => 60.0,
        "h" => 3600.0,
        _ => return Err(format!("`{s}`: unknown unit `{unit}` (use ms, s, m or h)")),
    };
    let secs = n * mult;
    if !(secs > 0.0 && secs <= 86_400.0) {
        return Err(format!("`{s}`: must be more than 0 and at most 24h"));
    }
    Ok(Duration::from_secs_f64(secs))
}

impl Args {
    fn kube_mode(&self) -> bool {
        self.kube || self.api.kubeconfig.is_some() || self.api.context.is_some()
    }
}

/// Run `netray collect`.
pub fn run(args: Args) -> CmdResult {
    if args.kube_mode() {
        return kube::run(args);
    }
    if !args.nodes.is_empty() || args.selector.is_some() || args.all {
        return Err("--nodes, --selector and --all choose nodes of a cluster: add --kube".into());
    }
    let kube_only = [
        ("--parallel", args.parallel.is_some()),
        ("--namespace", args.namespace.is_some()),
        ("--image", args.image.is_some()),
        ("--timeout", args.timeout.is_some()),
        ("--retries", args.retries.is_some()),
        ("--privileged", args.privileged),
        ("--quiet", args.quiet),
    ];
    if let Some((flag, _)) = kube_only.iter().find(|(_, given)| *given) {
        return Err(format!("{flag} is an option of collect --kube (collecting a cluster)").into());
    }
    let to_stdout = args.output.as_deref().is_none_or(|p| p == Path::new("-"));
    if args.gzip && !to_stdout {
        return Err("--gzip writes to standard output: use it with `-o -` or without -o".into());
    }
    let opts = netray_collect::Options {
        node: args.node,
        netns: args.netns,
        conntrack_limit: args.conntrack_limit,
        ..Default::default()
    };
    let snap = netray_collect::collect(&opts)?;
    let mut data = serde_json::to_string_pretty(&snap)?.into_bytes();
    data.push(b'\n');
    for nc in &snap.not_collected {
        let ns = nc
            .netns
            .map(|i| format!(" (netns {i})"))
            .unwrap_or_default();
        eprintln!("netray: not collected: {}{ns}: {}", nc.what, nc.reason);
    }
    match &args.output {
        Some(p) if !to_stdout => {
            // A fresh O_EXCL|O_NOFOLLOW file next to the target, renamed over it: a reader
            // never sees half a snapshot and a planted link is never written through.
            netray_collect::output::write_file_atomic(p, &data)
                .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        }
        _ if args.gzip => {
            let mut out = std::io::stdout().lock();
            let mut gz = flate2::write::GzEncoder::new(&mut out, flate2::Compression::fast());
            gz.write_all(&data)?;
            gz.finish()?;
            out.flush()?;
            let sum = ring::digest::digest(&ring::digest::SHA256, &data);
            let hex: String = sum.as_ref().iter().map(|b| format!("{b:02x}")).collect();
            // Last on standard error, after every note: the reader takes the last such line.
            eprintln!("{TRAILER} sha256={hex} bytes={}", data.len());
        }
        _ => {
            let mut out = std::io::stdout().lock();
            out.write_all(&data)?;
            out.flush()?;
        }
    }
    Ok(std::process::ExitCode::SUCCESS)
}

#[cfg(feature = "live")]
mod kube {
    use super::*;
    use netray_kube_live::collect as kc;

    /// `netray collect --kube`.
    pub fn run(args: Args) -> CmdResult {
        if args.gzip || args.node.is_some() || !args.netns.is_empty() {
            return Err(
                "--gzip, --node and --netns are for collecting this host; with --kube choose \
                 nodes with --nodes, --selector or --all"
                    .into(),
            );
        }
        let selection = if !args.nodes.is_empty() {
            kc::Selection::Nodes(args.nodes.clone())
        } else if let Some(s) = &args.selector {
            kc::Selection::Selector(s.clone())
        } else if args.all {
            kc::Selection::All
        } else {
            return Err("--kube: choose the nodes: --nodes a,b, --selector k=v or --all".into());
        };
        let Some(output) = args.output.clone() else {
            return Err("--kube: give the bundle to write: -o DIR or -o FILE.tar.gz".into());
        };
        if output == Path::new("-") {
            return Err("--kube writes a bundle (many files): -o DIR or -o FILE.tar.gz".into());
        }
        let name = output.to_string_lossy();
        let tarball = name.ends_with(".tar.gz") || name.ends_with(".tgz");
        if tarball && output.exists() {
            return Err(format!("{}: exists; choose a new file", output.display()).into());
        }
        // A tarball is assembled in a directory next to it, then packed.
        let dir = if tarball {
            PathBuf::from(format!("{name}.netray-partial"))
        } else {
            output.clone()
        };
        let mut opts = kc::Options::new(
            netray_kube_live::Source {
                kubeconfig: args.api.kubeconfig.clone(),
                context: args.api.context.clone(),
            },
            selection,
            dir.clone(),
        );
        let namespace = args
            .namespace
            .clone()
            .unwrap_or_else(|| kc::DEFAULT_NAMESPACE.to_string());
        opts.namespace = namespace.clone();
        if let Some(i) = &args.image {
            opts.image = i.clone();
        }
        if let Some(p) = args.parallel {
            opts.parallel = usize::from(p);
        }
        if let Some(t) = args.timeout {
            opts.timeout = t;
        }
        if let Some(r) = args.retries {
            opts.retries = r;
        }
        opts.privileged = args.privileged;
        opts.progress = !args.quiet && STDERR_IS_TTY.load(Ordering::Relaxed);
        if args.conntrack_limit != 65536 {
            opts.collect_args = vec!["--conntrack-limit".into(), args.conntrack_limit.to_string()];
        }
        if let Ok(ms) = std::env::var("NETRAY_KUBE_BACKOFF_MS")
            && let Ok(ms) = ms.parse::<u64>()
        {
            // Tests shorten the backoff; operators have no reason to.
            opts.backoff = Duration::from_millis(ms);
        }
        let report = kc::collect_cluster(&opts)?;
        for w in &report.warnings {
            eprintln!("netray: warning: {w}");
        }
        for d in &report.done {
            for n in &d.notes {
                // The collector's own notes start with `netray: ` too.
                eprintln!(
                    "netray: {}: {}",
                    d.node,
                    n.strip_prefix("netray: ").unwrap_or(n)
                );
            }
        }
        let mut failed = report.failed.clone();
        for n in &report.not_started {
            failed.push(kc::FailedNode::new(
                n.clone(),
                "not started: the run was interrupted",
            ));
        }
        netray_snapshot::write_failed_nodes(&dir, &failed)
            .map_err(|e| format!("{}/failed-nodes.json: {e}", dir.display()))?;
        let total = report.done.len() + failed.len();
        let bytes: u64 = report.done.iter().map(|d| d.bytes).sum();
        let wire: u64 = report.done.iter().map(|d| d.wire_bytes).sum();
        for (pod, why) in &report.pods_left {
            eprintln!(
                "netray: warning: pod {}/{pod} may be left behind ({why}); delete leftovers with \
                 kubectl delete pods -n {} -l netray.io/run={}",
                namespace, namespace, report.run_id
            );
        }
        if report.interrupted && report.done.is_empty() {
            let _ = std::fs::remove_dir_all(&dir);
            eprintln!(
                "netray: interrupted before any node was collected; {} collector pod{} created and {} deleted (run {})",
                report.pods_created,
                if report.pods_created == 1 { "" } else { "s" },
                report.pods_deleted,
                report.run_id
            );
            for f in report
                .failed
                .iter()
                .filter(|f| !f.reason.starts_with("interrupted"))
            {
                eprintln!("  failed before the interrupt: {}: {}", f.node, f.reason);
            }
            return Ok(std::process::ExitCode::from(130));
        }
        if report.done.is_empty() {
            let _ = std::fs::remove_dir_all(&dir);
            let mut msg = format!(
                "{}: no node could be collected ({total} selected, run {})",
                report.target, report.run_id
            );
            for f in failed.iter().take(20) {
                msg.push_str(&format!("\n{}: {}", f.node, f.reason));
            }
            if failed.len() > 20 {
                msg.push_str(&format!("\n… and {} more", failed.len() - 20));
            }
            return Err(msg.into());
        }
        if tarball {
            pack(&dir, &output)?;
            std::fs::remove_dir_all(&dir)
                .map_err(|e| format!("{}: cannot remove it: {e}", dir.display()))?;
        }
        eprintln!(
            "netray: collected {} of {total} node{} from {} into {} ({} of snapshots, {} received) in {:.1} s; {} collector pod{} created and {} deleted (run {})",
            report.done.len(),
            if total == 1 { "" } else { "s" },
            report.target,
            output.display(),
            kc::human_bytes(bytes),
            kc::human_bytes(wire),
            report.elapsed.as_secs_f64(),
            report.pods_created,
            if report.pods_created == 1 { "" } else { "s" },
            report.pods_deleted,
            report.run_id,
        );
        if !failed.is_empty() {
            eprintln!(
                "netray: PARTIAL: {} node{} missing (listed in failed-nodes.json):",
                failed.len(),
                if failed.len() == 1 { "" } else { "s" }
            );
            for f in &failed {
                eprintln!("  {}: {}", f.node, f.reason);
            }
        }
        if report.interrupted {
            eprintln!("netray: interrupted");
            return Ok(std::process::ExitCode::from(130));
        }
        Ok(if failed.is_empty() {
            std::process::ExitCode::SUCCESS
        } else {
            std::process::ExitCode::from(1)
        })
    }

    /// Pack the bundle directory `dir` as the `.tar.gz` `out` (entries `cluster.json`,
    /// `nodes/NAME.json`, `failed-nodes.json`), through a temporary file renamed into place
    /// (never written through a planted link: [`netray_collect::output::TempFile`]).
    fn pack(dir: &Path, out: &Path) -> Result<(), super::super::CmdError> {
        let file = netray_collect::output::TempFile::beside(out)
            .map_err(|e| format!("{}: cannot create a temporary file: {e}", out.display()))?;
        let gz = flate2::write::GzEncoder::new(file, flate2::Compression::default());
        let mut tar = tar::Builder::new(gz);
        tar.mode(tar::HeaderMode::Deterministic);
        let err = |e: std::io::Error| format!("{}: {e}", out.display());
        for name in ["cluster.json", "failed-nodes.json"] {
            if dir.join(name).is_file() {
                tar.append_path_with_name(dir.join(name), name)
                    .map_err(err)?;
            }
        }
        let mut nodes: Vec<_> = std::fs::read_dir(dir.join("nodes"))
            .map_err(err)?
            .filter_map(Result::ok)
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .filter(|n| n.ends_with(".json"))
            .collect();
        nodes.sort();
        for n in nodes {
            tar.append_path_with_name(dir.join("nodes").join(&n), format!("nodes/{n}"))
                .map_err(err)?;
        }
        let gz = tar.into_inner().map_err(err)?;
        let file = gz.finish().map_err(err)?;
        file.persist(out).map_err(err)?;
        Ok(())
    }
}

#[cfg(not(feature = "live"))]
mod kube {
    use super::*;

    /// `--kube` needs the Kubernetes client.
    pub fn run(_args: Args) -> CmdResult {
        Err(
            "this netray was built without the `live` feature (the Kubernetes API client); \
             rebuild with `--features live` to use collect --kube"
                .into(),
        )
    }
}
