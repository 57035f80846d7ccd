//! One module per subcommand; each exposes `Args`/`*Command` (clap) and `run`.

pub mod collect;
pub mod diagnose;
pub mod lab;
pub mod rules;
pub mod scan;
pub mod trace;

/// Error type of every subcommand: a message for the user; exit code 2.
pub type CmdError = Box<dyn std::error::Error>;
/// Result of a subcommand: the process exit code on success.
pub type CmdResult = Result<std::process::ExitCode, CmdError>;

/// Output format of commands that print a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Readable text (default).
    #[default]
    Text,
    /// JSON (documented schema; stable field names).
    Json,
}

/// Load a bundle (directory or .tar.gz) and its cluster view, if any.
pub fn load_bundle(
    path: &std::path::Path,
) -> Result<(netray_snapshot::Bundle, Option<netray_kube::ClusterView>), CmdError> {
    let bundle = netray_snapshot::Bundle::load(path)?;
    let cluster = match &bundle.cluster {
        Some(v) => Some(netray_kube::ClusterView::from_value(
            &format!("{}/cluster.json", path.display()),
            v,
        )?),
        None => None,
    };
    Ok((bundle, cluster))
}
