//! Findings and root causes: a stable code, where, the quoted evidence, why, and the fix.

use netray_datapath::KernelObject;
use netray_patch::FixCommand;
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
    /// The pod (`NS/NAME`) the namespace belongs to, when the cluster view names it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// The kernel objects this finding is about (the rule, sysctl, entry…): a diagnose cause
    /// is the objects that decided a branch; a scan finding supports a cause only when it
    /// names one of the objects the branch used.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<KernelObject>,
    /// Quoted state: the rule, route, neighbour or FDB entry, sysctl or counter line.
    pub evidence: Vec<String>,
    /// Why this breaks traffic, in plain words.
    pub explanation: String,
    /// What to do about it (command or config change).
    pub fix: String,
    /// The fix as commands to run as root in the named namespaces (empty when the fix is not
    /// a node- or pod-level change, e.g. a Service without endpoints).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub fix_commands: Vec<FixCommand>,
    /// Whether netray proved the fix (diagnose only): the commands applied to a copy of the
    /// snapshots and the flow walked again.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub proof: Option<FixProof>,
}

/// The result of applying a cause's `fix_commands` to a copy of the snapshots and walking the
/// flow again.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct FixProof {
    /// Every branch the cause was named for succeeds after the fix (together with the fixes of
    /// `with`, when the branch crosses several faults).
    pub proven: bool,
    /// Codes of other causes whose fixes were needed too (faults on the same path).
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub with: Vec<String>,
    /// What the re-walk showed, in a sentence.
    pub detail: String,
}

impl Finding {
    /// Attach the objects this finding is about.
    pub fn about(mut self, objects: impl IntoIterator<Item = KernelObject>) -> Finding {
        self.objects.extend(objects);
        self
    }

    /// Sort key: severity, then code, node, namespace.
    pub fn sort_key(&self) -> (Severity, &'static str, &str, &str) {
        (self.severity, self.code, &self.node, &self.netns)
    }
}
