//! One module per subcommand; each exposes `Args`/`*Command` (clap) and `run`.

pub mod collect;
pub mod lab;
pub mod rules;
pub mod trace;

/// Error type of every subcommand: a message for the user; exit code 2.
pub type CmdError = Box<dyn std::error::Error>;
/// Result of a subcommand: the process exit code on success.
pub type CmdResult = Result<std::process::ExitCode, CmdError>;
