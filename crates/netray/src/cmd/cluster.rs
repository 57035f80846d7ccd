//! `netray cluster`: the cluster view's objects, listed live from the Kubernetes API, written as
//! the List a bundle's `cluster.json` holds.

use std::io::Write;
use std::process::ExitCode;

use super::{CmdResult, KubeArgs, live_list};

/// Options of `netray cluster`.
///
/// Lists Nodes, Pods, Services, EndpointSlices, the kube-system/kube-proxy ConfigMap and
/// flannel's kube-flannel-cfg ConfigMap, and writes them as one `kubectl … -o json` style List:
/// with `nodes/*.json` from `netray collect`, it makes a bundle. Exit 0, or 2 when the API
/// cannot be read.
#[derive(clap::Args)]
pub struct Args {
    /// The API to read.
    #[command(flatten)]
    pub api: KubeArgs,
    /// Write the List to FILE (a bundle's `cluster.json`) instead of standard output.
    #[arg(short = 'o', long, value_name = "FILE")]
    pub output: Option<std::path::PathBuf>,
}

/// Run `netray cluster`.
pub fn run(args: Args) -> CmdResult {
    let (list, target) = live_list(&args.api)?;
    // The same parser as for a bundle: what is written is known to load.
    let view = netray_kube::ClusterView::from_value(&target, &list)?;
    let mut text = serde_json::to_string_pretty(&list)?;
    text.push('\n');
    match &args.output {
        // As `collect -o`: never through a planted link, never half written.
        Some(path) => netray_collect::output::write_file_atomic(path, text.as_bytes())
            .map_err(|e| format!("cannot write {}: {e}", path.display()))?,
        None => std::io::stdout().lock().write_all(text.as_bytes())?,
    }
    eprintln!(
        "netray: {target}: {} nodes, {} pods, {} services, {} endpointslices{}{}{}",
        view.nodes.len(),
        view.pods.len(),
        view.services.len(),
        view.endpoint_slices.len(),
        if view.kube_proxy.is_some() {
            ", kube-proxy config"
        } else {
            ""
        },
        if view.flannel_network.is_some() {
            ", flannel config"
        } else {
            ""
        },
        match &args.output {
            Some(p) => format!(" -> {}", p.display()),
            None => String::new(),
        }
    );
    Ok(ExitCode::SUCCESS)
}
