//! Findings and root causes: a stable code, where, the quoted evidence, why, and the fix.

use serde::Serialize;

/// How bad a finding is; findings are listed most severe first.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Severity {
    /// Breaks traffic now.
    Critical,
    /// Breaks some traffic or will under load.
    Warning,
    /// Worth knowing; may be intended.
    Info,
}

impl std::fmt::Display for Severity {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Severity::Critical => "critical",
            Severity::Warning => "warning",
            Severity::Info => "info",
        })
    }
}

/// One finding of `netray scan`, or one root cause of `netray diagnose`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Finding {
    /// Stable code (see [`crate::catalog::CATALOG`]).
    pub code: &'static str,
    /// Severity.
    pub severity: Severity,
    /// Node name.
    pub node: String,
    /// Namespace display name (`/run/netns` name, `netns:INODE`, or `host`).
    pub netns: String,
    /// Quoted state: the rule, route, neighbour or FDB entry, sysctl or counter line.
    pub evidence: Vec<String>,
    /// Why this breaks traffic, in plain words.
    pub explanation: String,
    /// What to do about it (command or config change).
    pub fix: String,
}

impl Finding {
    /// Sort key: severity, then code, node, namespace.
    pub fn sort_key(&self) -> (Severity, &'static str, &str, &str) {
        (self.severity, self.code, &self.node, &self.netns)
    }
}
