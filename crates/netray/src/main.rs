//! `netray`: why does a packet not arrive?

mod cmd;
mod flow;
mod resolve;
mod term;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

/// Why does a packet not arrive? netray snapshots the real networking state of Linux and
/// Kubernetes nodes and simulates a packet and its reply through the kernel's datapath,
/// naming the rule, route, neighbour entry or sysctl that drops or rewrites it.
///
/// Exit codes: 0 success (reachable / clean), 1 not reachable or findings, 2 usage or input error.
#[derive(Parser)]
#[command(name = "netray", version, propagate_version = true)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Snapshot this host's network state (host namespace and every pod namespace) as JSON.
    #[command(
        after_help = "Examples:\n  sudo netray collect --node node-a -o node-a.json\n  sudo ip netns exec NODE netray collect --node NODE -o nodes/NODE.json\n\nA bundle is a directory with nodes/*.json and an optional cluster.json (netray cluster).\nStrictly read-only: nothing on the host is changed."
    )]
    Collect(cmd::collect::Args),
    /// Trace a flow through the bundle's nodes hop by hop: every branch, forward and reply.
    #[command(
        after_help = "Examples:\n  netray trace --bundle examples/003-forward-drop --from node/node0 --to svc/default/web:80\n  netray trace --bundle b --from 192.168.50.100@node/node1 --to 192.168.50.11:30080\n  netray trace --bundle b --from pod/default/web-0 --to pod/default/web-2 --proto icmp --size 1450\n\nExit codes: 0 every branch delivered, 1 otherwise, 2 usage or input error."
    )]
    Trace(cmd::trace::Args),
    /// Answer "does A reach B, and if not, why": verdict, per-endpoint outcome, root causes, fixes.
    #[command(
        after_help = "Examples:\n  netray diagnose --bundle examples/002-stale-vtep --from pod/default/web-0 --to svc/default/web:53/udp\n  netray diagnose --bundle b.tar.gz --from node/node-a --to svc/default/web:http -o json\n  netray diagnose --bundle examples/005-stale-conntrack --from pod/default/web-0 --to svc/default/web:53/udp --sport 5300\n  sudo netray diagnose --live --from 10.244.0.5 --to 10.244.0.7:8080\n\nExit codes: 0 reachable, 1 unreachable / partial / uncertain, 2 usage or input error."
    )]
    Diagnose(cmd::diagnose::Args),
    /// Compare the same flows over two snapshots: which endpoints changed outcome and which
    /// objects on their paths changed (before/after a reboot, an upgrade, a fix).
    #[command(
        after_help = "Examples:\n  netray diff --before b1 --after b2 --from pod/default/web-0 --to svc/default/web:80\n  netray diff --before b1 --after b2 --flows flows.txt -o json\n\nExit codes: 0 no endpoint changed outcome, 1 some did, 2 usage or input error."
    )]
    Diff(cmd::diff::Args),
    /// Check every node and namespace of a bundle for known-bad state (the check catalog).
    #[command(
        after_help = "Examples:\n  netray scan --bundle examples/001-checklist\n  netray scan --bundle b.tar.gz -o json\n  netray scan --bundle examples/healthy --fail-on critical\n  netray scan --list-checks\n\nExit codes: 0 clean (nothing at or above --fail-on, default warning), 1 findings, 2 usage or input error."
    )]
    Scan(cmd::scan::Args),
    /// Write the cluster view's objects, listed live from the Kubernetes API, as a bundle's
    /// cluster.json (a List of Nodes, Pods, Services, EndpointSlices and ConfigMaps).
    Cluster(cmd::cluster::Args),
    /// One-host trace over firewall rules only (iptables-save / nft dumps someone pasted).
    #[command(subcommand)]
    Rules(cmd::rules::RulesCommand),
    /// Build, list and tear down namespace labs (small clusters made of network namespaces).
    #[command(subcommand)]
    Lab(cmd::lab::LabCommand),
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`netray … | head`) like other Unix tools, instead of
    // panicking in `println!`.
    // SAFETY: setting a signal disposition to SIG_DFL before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    let cli = Cli::parse();
    // Everything printed from here on may quote input (rule comments, node names, API
    // answers): it goes through one escaping layer (see `term`). Not for `lab`, whose
    // background servers inherit standard output and outlive this process.
    let guard = match cli.command {
        Command::Lab(_) => None,
        _ => term::install(),
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match cli.command {
        Command::Collect(a) => cmd::collect::run(a),
        Command::Trace(a) => cmd::trace::run(a),
        Command::Diagnose(a) => cmd::diagnose::run(a),
        Command::Diff(a) => cmd::diff::run(a),
        Command::Scan(a) => cmd::scan::run(a),
        Command::Cluster(a) => cmd::cluster::run(a),
        Command::Rules(c) => cmd::rules::run(c),
        Command::Lab(c) => cmd::lab::run(c),
    }));
    let code = match result {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            eprintln!("netray: error: {e}");
            ExitCode::from(2)
        }
        // The panic message was printed by the hook; let it through the layer first.
        Err(_) => ExitCode::from(101),
    };
    if let Some(g) = guard {
        g.finish();
    }
    code
}
