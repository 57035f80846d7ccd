//! `netray collect`.
use std::io::Write;

use super::CmdResult;

/// Options of `netray collect`.
#[derive(clap::Args)]
pub struct Args {
    /// Write the snapshot here instead of standard output.
    #[arg(short, long)]
    pub output: Option<std::path::PathBuf>,
    /// Kubernetes node name recorded in the snapshot (default: the hostname).
    #[arg(long)]
    pub node: Option<String>,
    /// Also collect this namespace: a name under /run/netns or a path (repeatable).
    #[arg(long = "netns", value_name = "NAME|PATH")]
    pub netns: Vec<String>,
    /// Record at most this many conntrack entries per namespace.
    #[arg(long, default_value_t = 65536)]
    pub conntrack_limit: usize,
}

/// Run `netray collect`.
pub fn run(args: Args) -> CmdResult {
    let opts = netray_collect::Options {
        node: args.node,
        netns: args.netns,
        conntrack_limit: args.conntrack_limit,
        ..Default::default()
    };
    let snap = netray_collect::collect(&opts)?;
    let json = serde_json::to_string_pretty(&snap)?;
    match &args.output {
        Some(p) => {
            // A fresh O_EXCL|O_NOFOLLOW file next to the target, renamed over it: a reader
            // never sees half a snapshot and a planted link is never written through.
            let mut data = json.into_bytes();
            data.push(b'\n');
            netray_collect::output::write_file_atomic(p, &data)
                .map_err(|e| format!("cannot write {}: {e}", p.display()))?;
        }
        None => {
            let mut out = std::io::stdout().lock();
            out.write_all(json.as_bytes())?;
            out.write_all(b"\n")?;
        }
    }
    for nc in &snap.not_collected {
        let ns = nc
            .netns
            .map(|i| format!(" (netns {i})"))
            .unwrap_or_default();
        eprintln!("netray: not collected: {}{ns}: {}", nc.what, nc.reason);
    }
    Ok(std::process::ExitCode::SUCCESS)
}
