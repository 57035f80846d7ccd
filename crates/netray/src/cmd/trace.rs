//! `netray trace`: every path a flow can take across the bundle, forward and reply.
use super::CmdResult;
use crate::flow::FlowArgs;

/// Options of `netray trace`.
#[derive(clap::Args)]
pub struct Args {
    /// Bundle directory or .tar.gz (cluster.json + nodes/*.json).
    #[arg(long, value_name = "DIR|FILE.tar.gz")]
    pub bundle: std::path::PathBuf,
    /// The flow.
    #[command(flatten)]
    pub flow: FlowArgs,
}

/// Run `netray trace`.
pub fn run(args: Args) -> CmdResult {
    let _ = (
        &args.bundle,
        args.flow.protocol()?,
        args.flow.size,
        args.flow.source_port(),
    );
    Err("trace: the datapath walk is not written yet".into())
}
