//! `netray rules …`.
use super::CmdResult;

/// Subcommands of `netray rules`.
#[derive(clap::Subcommand)]
pub enum RulesCommand {
    /// Trace one packet through one host's rules.
    Trace,
}

/// Run `netray rules …`.
pub fn run(_c: RulesCommand) -> CmdResult {
    Err("rules: not written yet".into())
}
