//! `netray lab …`: namespace labs (small flannel + kube-proxy clusters) for trying netray
//! against the real kernel.
use std::process::ExitCode;

use netray_lab::{Agent, ClusterSpec, Fault, Lab};

use super::CmdResult;

/// Subcommands of `netray lab`.
#[derive(clap::Subcommand)]
pub enum LabCommand {
    /// Build a lab and leave it running (remove it with `netray lab down TAG`).
    ///
    /// Members: `sw` (underlay switch), `gw` (router, LB health prober), `ext` (external
    /// client), `node0`…, pods `web-0`…; each in namespace `nrl-TAG-MEMBER`. Needs root.
    Up {
        /// Number of nodes.
        #[arg(long, default_value_t = 3)]
        nodes: usize,
        /// Pods per node.
        #[arg(long, default_value_t = 2)]
        pods_per_node: usize,
        /// Fault to apply, as NAME[:ARG[:ARG]] (repeatable); see `netray lab faults`.
        #[arg(long = "fault", value_name = "FAULT")]
        faults: Vec<String>,
        /// Write the cluster (`kubectl get nodes,pods,services,endpointslices -A -o json`) here.
        #[arg(long, value_name = "FILE")]
        cluster_json: Option<std::path::PathBuf>,
    },
    /// Delete a lab's namespaces (only `nrl-` namespaces are ever touched).
    Down {
        /// Tag of the lab to delete.
        #[arg(required_unless_present = "all", conflicts_with = "all")]
        tag: Option<String>,
        /// Delete every lab namespace on this machine.
        #[arg(long)]
        all: bool,
    },
    /// List lab namespaces, grouped by lab tag.
    List {
        /// Output format (JSON/YAML: `{"labs": {TAG: [NAMESPACE, …]}}`).
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: super::Format,
    },
    /// List the faults `lab up --fault` accepts.
    Faults {
        /// Output format (JSON/YAML: `{"faults": [NAME, …]}`).
        #[arg(short = 'o', long, value_enum, default_value_t)]
        output: super::Format,
    },
    /// The lab's pod server and probe client (used inside lab namespaces).
    #[command(hide = true)]
    Agent {
        /// `serve …` or `probe …`.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true)]
        args: Vec<String>,
    },
}

/// Run `netray lab …`.
pub fn run(c: LabCommand) -> CmdResult {
    match c {
        LabCommand::Up {
            nodes,
            pods_per_node,
            faults,
            cluster_json,
        } => {
            netray_lab::require_root()?;
            if !(1..=50).contains(&nodes) || pods_per_node > 200 {
                return Err("--nodes must be 1..=50 and --pods-per-node at most 200".into());
            }
            let faults = faults
                .iter()
                .map(|f| f.parse::<Fault>())
                .collect::<Result<Vec<_>, _>>()?;
            let agent = Agent::subcommand(std::env::current_exe()?, &["lab", "agent"]);
            // On any error the lab is dropped, which tears it down.
            let mut lab = Lab::up(&ClusterSpec::standard(nodes, pods_per_node), &agent)?;
            for f in &faults {
                lab.apply(f)?;
            }
            if let Some(path) = &cluster_json {
                lab.write_cluster_json(path)
                    .map_err(|e| format!("{}: {e}", path.display()))?;
            }
            println!("tag: {}", lab.tag());
            for f in lab.faults() {
                println!("fault: {f}");
            }
            for (member, ns) in lab.namespaces() {
                println!("{member:<8} {ns}");
            }
            let tag = lab.keep();
            eprintln!(
                "lab {tag} is up; try `ip netns exec nrl-{tag}-web-0 netray lab agent probe tcp 10.96.0.100:80`; remove it with `netray lab down {tag}`"
            );
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Down { tag, all } => {
            if let Some(t) = tag.as_deref().filter(|_| !all) {
                // An unknown tag is an error (exit 2), with the tags there are.
                let labs = netray_lab::labs_on_host();
                if !labs.contains_key(t) {
                    let tags: Vec<&str> = labs.keys().map(String::as_str).collect();
                    return Err(format!(
                        "no lab `{t}` on this host{}\n  {}",
                        netray_kube::suggest::did_you_mean(t, tags.iter().copied(), |c| {
                            format!("`netray lab down {c}`")
                        }),
                        if tags.is_empty() {
                            "there are no labs (`netray lab list`)".to_string()
                        } else {
                            format!("labs on this host: {}", tags.join(", "))
                        }
                    )
                    .into());
                }
            }
            let deleted = netray_lab::down(if all { None } else { tag.as_deref() })?;
            for ns in &deleted {
                println!("deleted {ns}");
            }
            if deleted.is_empty() {
                eprintln!("netray: no lab namespaces to delete");
            }
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::List { output } => {
            let labs = netray_lab::labs_on_host();
            let doc = serde_json::json!({ "labs": &labs });
            super::output::print(&doc, output, || {
                if labs.is_empty() {
                    println!("no labs on this host (start one with `sudo netray lab up`)");
                }
                for (tag, names) in &labs {
                    println!("{tag}: {}", names.join(" "));
                }
            })?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Faults { output } => {
            let doc = serde_json::json!({ "faults": Fault::NAMES });
            super::output::print(&doc, output, || {
                for f in Fault::NAMES {
                    println!("{f}");
                }
            })?;
            Ok(ExitCode::SUCCESS)
        }
        LabCommand::Agent { args } => {
            let code = netray_lab::agent::main_with_args(&args);
            Ok(ExitCode::from(code.clamp(0, 255) as u8))
        }
    }
}
