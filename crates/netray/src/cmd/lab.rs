//! `netray lab …`.
use super::CmdResult;

/// Subcommands of `netray lab`.
#[derive(clap::Subcommand)]
pub enum LabCommand {
    /// List lab namespaces.
    List,
}

/// Run `netray lab …`.
pub fn run(_c: LabCommand) -> CmdResult {
    Err("lab: not written yet".into())
}
