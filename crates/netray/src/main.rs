//! `netray`: why does a packet not arrive?

mod bpf;
mod cmd;
mod flow;
mod resolve;
mod term;

use std::process::ExitCode;

use clap::{CommandFactory, FromArgMatches, Parser, Subcommand};

/// `0.1.0 (git 1a2b3c4)`: the version with the git revision built from (see build.rs).
const VERSION: &str = concat!(env!("CARGO_PKG_VERSION"), " (", env!("NETRAY_GIT_REV"), ")");

/// Why does a packet not arrive? netray snapshots the real networking state of Linux and
/// Kubernetes nodes and simulates a packet and its reply through the kernel's datapath,
/// naming the rule, route, neighbour entry or sysctl that drops or rewrites it.
///
/// Exit codes: 0 success (reachable / clean), 1 the answer is "no" (not reachable, partial or
/// uncertain; findings; a changed endpoint), 2 usage or input error.
#[derive(Parser)]
#[command(name = "netray", version = VERSION, propagate_version = true)]
struct Cli {
    /// Colour: auto (on a terminal, unless NO_COLOR is set to a non-empty value or TERM=dumb),
    /// always or never. As no-color.org asks, NO_COLOR turns off only the default: an explicit
    /// `--color always` still colours.
    #[arg(long, global = true, value_enum, default_value_t = term::ColorChoice::Auto)]
    color: term::ColorChoice,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Snapshot this host's network state (host namespace and every pod namespace) as JSON, or
    /// with --kube the nodes of a Kubernetes cluster into a bundle (one collector pod per node).
    #[command(
        after_help = "Examples:\n  sudo netray collect --node node-a -o node-a.json\n  sudo ip netns exec NODE netray collect --node NODE -o nodes/NODE.json\n  netray collect --kube --all -o bundle            # one collector pod per node (deploy/)\n  kubectl netray --context prod collect --kube --nodes a,b -o b.tar.gz\n\nExit codes (--kube): 0 every node collected, 1 partial (failed-nodes.json), 2 error, 130 interrupted.\n\nA bundle is a directory with nodes/*.json and an optional cluster.json (netray cluster).\nStrictly read-only: nothing on the host is changed."
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
    /// Walk every source class (each node, its pods, an outside client) to every Service,
    /// node and NodePort, and group the failures by root cause.
    #[command(
        after_help = "Examples:\n  netray audit --bundle examples/002-stale-vtep\n  netray audit --bundle b.tar.gz -o json --fail-on critical\n  netray audit --bundle b --proto udp --size 1400\n\nExit codes: 0 no failure at or above --fail-on (default warning), 1 failures, 2 usage or input error."
    )]
    Audit(cmd::audit::Args),
    /// Assemble a bundle from snapshots collected by hand: `netray bundle add DIR NODE.json…`.
    #[command(subcommand)]
    Bundle(cmd::bundle::BundleCommand),
    /// Write the cluster view's objects, listed live from the Kubernetes API, as a bundle's
    /// cluster.json (a List of Nodes, Pods, Services, EndpointSlices and ConfigMaps).
    Cluster(cmd::cluster::Args),
    /// One-host trace over firewall rules only (iptables-save / nft dumps someone pasted).
    #[command(subcommand)]
    Rules(cmd::rules::RulesCommand),
    /// Build, list and tear down namespace labs (small clusters made of network namespaces).
    #[command(subcommand)]
    Lab(cmd::lab::LabCommand),
    /// Print a shell completion script (bash, zsh, fish, elvish, powershell).
    #[command(
        after_help = "Install:\n  netray completions bash > /etc/bash_completion.d/netray\n  netray completions zsh > \"${fpath[1]}/_netray\"\n  netray completions fish > ~/.config/fish/completions/netray.fish"
    )]
    Completions {
        /// The shell.
        #[arg(value_enum)]
        shell: clap_complete::Shell,
    },
    /// Print the man page (roff), generated from this command line's definition.
    #[command(
        after_help = "Examples:\n  netray man | man -l -\n  netray man --out-dir /usr/local/share/man/man1   # netray.1 and netray-SUBCOMMAND.1"
    )]
    Man {
        /// Write netray.1 and one page per subcommand (netray-trace.1, …) into DIR instead.
        #[arg(long, value_name = "DIR")]
        out_dir: Option<std::path::PathBuf>,
    },
}

impl Command {
    /// The output format of a command that prints a report (colour is for text only).
    fn format(&self) -> cmd::Format {
        match self {
            Command::Trace(a) => a.output,
            Command::Diagnose(a) => a.output,
            Command::Diff(a) => a.output,
            Command::Scan(a) => a.output,
            Command::Audit(a) => a.output,
            Command::Rules(cmd::rules::RulesCommand::Trace(a)) => a.output,
            Command::Collect(_) | Command::Cluster(_) | Command::Completions { .. } => {
                cmd::Format::Json
            }
            Command::Man { .. } => cmd::Format::Json,
            Command::Lab(_) | Command::Bundle(_) => cmd::Format::Text,
        }
    }
}

/// `netray completions SHELL`.
fn completions(shell: clap_complete::Shell) -> cmd::CmdResult {
    let mut c = Cli::command();
    clap_complete::generate(shell, &mut c, "netray", &mut std::io::stdout());
    Ok(ExitCode::SUCCESS)
}

/// `netray man [--out-dir DIR]`.
fn man(out_dir: Option<std::path::PathBuf>) -> cmd::CmdResult {
    let c = Cli::command();
    match out_dir {
        None => {
            let mut out = Vec::new();
            clap_mangen::Man::new(c).render(&mut out)?;
            std::io::Write::write_all(&mut std::io::stdout(), &out)?;
        }
        Some(dir) => {
            std::fs::create_dir_all(&dir)
                .map_err(|e| format!("--out-dir {}: {e}", dir.display()))?;
            // As clap_mangen::generate_to names and renders them, but each page written
            // through write_file_atomic: never through a link planted at a page's name.
            let mut c = c.disable_help_subcommand(true);
            c.build();
            write_man_pages(&c, &dir).map_err(|e| format!("--out-dir {}: {e}", dir.display()))?;
            eprintln!("netray: man pages written to {}", dir.display());
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Write the man page of `cmd` and of each visible subcommand into `dir`
/// (`netray.1`, `netray-SUBCOMMAND.1`, …).
fn write_man_pages(cmd: &clap::Command, dir: &std::path::Path) -> std::io::Result<()> {
    for sub in cmd.get_subcommands().filter(|s| !s.is_hide_set()) {
        write_man_pages(sub, dir)?;
    }
    let man = clap_mangen::Man::new(cmd.clone());
    let mut page = Vec::new();
    man.render(&mut page)?;
    netray_collect::output::write_file_atomic(&dir.join(man.get_filename()), &page)
}

/// kubectl's options that a plugin user types before the subcommand
/// (`kubectl netray --context prod collect …`).
const KUBECTL_GLOBALS: &[&str] = &["--context", "--kubeconfig", "-n", "--namespace"];

/// The command line. Installed as `kubectl-netray` (a kubectl plugin, `kubectl netray …`),
/// kubectl's conventions apply: `--context`, `--kubeconfig` and `-n/--namespace` may also come
/// before the subcommand, and help says `kubectl netray`.
fn parse_cli() -> Cli {
    let mut args: Vec<std::ffi::OsString> = std::env::args_os().collect();
    let plugin = args.first().is_some_and(|a| {
        std::path::Path::new(a)
            .file_name()
            .is_some_and(|f| f.to_string_lossy().starts_with("kubectl-netray"))
    });
    if !plugin {
        return Cli::parse();
    }
    // Move leading kubectl options after the subcommand, where netray reads them.
    let mut moved = Vec::new();
    let i = 1;
    while i < args.len() {
        let a = args[i].to_string_lossy().into_owned();
        let name = a.split('=').next().unwrap_or("");
        if !KUBECTL_GLOBALS.contains(&name) {
            break;
        }
        let take = if a.contains('=') || i + 1 >= args.len() {
            1
        } else {
            2
        };
        moved.extend(args.drain(i..i + take));
    }
    if i < args.len() {
        let at = i + 1;
        args.splice(at..at, moved);
    } else {
        // No subcommand: put them back for clap to answer.
        args.extend(moved);
    }
    let matches = Cli::command()
        .name("kubectl-netray")
        .bin_name("kubectl netray")
        .get_matches_from(args);
    Cli::from_arg_matches(&matches).unwrap_or_else(|e| e.exit())
}

fn main() -> ExitCode {
    // Die quietly on a closed pipe (`netray … | head`) like other Unix tools, instead of
    // panicking in `println!`.
    // SAFETY: setting a signal disposition to SIG_DFL before any thread is started.
    unsafe {
        libc::signal(libc::SIGPIPE, libc::SIG_DFL);
    }
    // Decided before the escaping layer below replaces the descriptor.
    cmd::collect::STDERR_IS_TTY.store(
        // SAFETY: isatty on a descriptor number only reads its state.
        unsafe { libc::isatty(2) == 1 },
        std::sync::atomic::Ordering::Relaxed,
    );
    let cli = parse_cli();
    // Colour is decided on the real descriptors, before the layer below replaces them, and
    // only for text reports.
    let colors = term::Colors {
        stdout: cli.command.format() == cmd::Format::Text && cli.color.enabled(1),
        stderr: cli.color.enabled(2),
    };
    // Everything printed from here on may quote input (rule comments, node names, API
    // answers): it goes through one escaping layer (see `term`), which also adds colour to
    // the escaped text. Not for `lab`, whose background servers inherit standard output and
    // outlive this process.
    let guard = match &cli.command {
        Command::Lab(_) => None,
        // The collector pods' binary stream: bytes, not text (its reader escapes the notes).
        Command::Collect(a) if a.gzip => None,
        _ => term::install(colors),
    };
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| match cli.command {
        Command::Collect(a) => cmd::collect::run(a),
        Command::Trace(a) => cmd::trace::run(a),
        Command::Diagnose(a) => cmd::diagnose::run(a),
        Command::Diff(a) => cmd::diff::run(a),
        Command::Scan(a) => cmd::scan::run(a),
        Command::Audit(a) => cmd::audit::run(a),
        Command::Cluster(a) => cmd::cluster::run(a),
        Command::Bundle(c) => cmd::bundle::run(c),
        Command::Rules(c) => cmd::rules::run(c),
        Command::Lab(c) => cmd::lab::run(c),
        Command::Completions { shell } => completions(shell),
        Command::Man { out_dir } => man(out_dir),
    }));
    let code = match result {
        Ok(Ok(code)) => code,
        Ok(Err(e)) => {
            // One style: `netray: error: WHAT`, then indented lines saying where and how to
            // fix it (a list of known names, a "did you mean").
            let msg = e.to_string();
            let mut lines = msg.lines();
            eprintln!("netray: error: {}", lines.next().unwrap_or(""));
            for l in lines {
                eprintln!("  {}", l.trim_start());
            }
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
