//! `netray collect`.
use super::CmdResult;

/// Options of `netray collect`.
#[derive(clap::Args)]
pub struct Args {
    /// Write the snapshot here instead of standard output.
    #[arg(short, long)]
    pub output: Option<std::path::PathBuf>,
}

/// Run `netray collect`.
pub fn run(_args: Args) -> CmdResult {
    Err("collect: not written yet".into())
}
