//! Apply shell commands, as an operator would run them as root inside one network namespace
//! of one node, to an in-memory copy of a netray [`Bundle`].
//!
//! netray uses this to prove a fix (re-walk the flow on the patched snapshot) and to answer
//! `--what-if`. Every command is given the kernel's or the tool's real semantics on the
//! snapshot model; a command, option or value this crate does not model is an error naming it,
//! never silently ignored. See the crate README for the vocabulary and its limits.

use std::fmt;

use netray_snapshot::{Bundle, NetnsRole, NetnsSnapshot, NodeSnapshot};
use serde::{Deserialize, Serialize};

mod bridge;
mod conntrack;
mod ip;
mod iptables;
mod nft;
pub mod shell;
mod sysctl;
mod util;

/// One command to run as root inside one namespace of one node.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FixCommand {
    /// Node name, as in the snapshot (`NodeIdentity::name`).
    pub node: String,
    /// `host` for the node's own namespace, else the collected namespace's display name
    /// (its `/run/netns` name, else `netns:<inode>`).
    pub netns: String,
    /// `NS/NAME` of the pod owning the namespace, when it is a pod's (informational).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// One shell command, without any `ip netns exec` / `nsenter` wrapper.
    pub run: String,
}

impl FixCommand {
    /// A command for the node's host namespace.
    pub fn host(node: &str, run: &str) -> FixCommand {
        FixCommand {
            node: node.to_string(),
            netns: "host".to_string(),
            pod: None,
            run: run.to_string(),
        }
    }

    /// Parse a `--what-if` argument: `NODE: COMMAND` (host namespace) or
    /// `NODE/NETNS: COMMAND`. The separator is the first `:` followed by white space, so
    /// namespace names such as `netns:4026532811` work.
    pub fn parse_what_if(s: &str) -> Result<FixCommand, PatchError> {
        let bad = |reason: &str| PatchError {
            node: String::new(),
            netns: String::new(),
            run: s.to_string(),
            kind: ErrorKind::Syntax,
            reason: reason.to_string(),
        };
        let b = s.as_bytes();
        let sep = (0..b.len())
            .find(|&i| b[i] == b':' && b.get(i + 1).is_some_and(|c| c.is_ascii_whitespace()))
            .ok_or_else(|| {
                bad("expected `NODE: COMMAND` or `NODE/NETNS: COMMAND` (a colon and a space after the target)")
            })?;
        let target = s[..sep].trim();
        let run = s[sep + 1..].trim();
        if run.is_empty() {
            return Err(bad("no command after the target"));
        }
        let (node, netns) = match target.split_once('/') {
            Some((n, ns)) => (n.trim(), ns.trim()),
            None => (target, "host"),
        };
        if node.is_empty() || netns.is_empty() || node.contains(char::is_whitespace) {
            return Err(bad(
                "expected `NODE: COMMAND` or `NODE/NETNS: COMMAND` with a node name",
            ));
        }
        Ok(FixCommand {
            node: node.to_string(),
            netns: netns.to_string(),
            pod: None,
            run: run.to_string(),
        })
    }
}

impl fmt::Display for FixCommand {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.netns == "host" {
            write!(f, "{}: {}", self.node, self.run)
        } else {
            write!(f, "{}/{}: {}", self.node, self.netns, self.run)
        }
    }
}

/// Kind of kernel object a [`Change`] touched.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ObjectKind {
    /// A sysctl.
    Sysctl,
    /// A route (any table).
    Route,
    /// A policy routing rule.
    Rule,
    /// A neighbour (ARP/NDP) entry.
    Neighbour,
    /// A bridge / vxlan FDB entry.
    Fdb,
    /// A network interface.
    Link,
    /// An interface address.
    Address,
    /// A built-in iptables chain's policy.
    IptablesPolicy,
    /// An iptables chain (created, flushed or deleted).
    IptablesChain,
    /// An iptables rule line.
    IptablesRule,
    /// An nftables rule.
    NftRule,
    /// A conntrack entry.
    ConntrackEntry,
}

impl ObjectKind {
    /// Short name as in the JSON (`iptables-rule`, ...).
    pub fn as_str(self) -> &'static str {
        match self {
            ObjectKind::Sysctl => "sysctl",
            ObjectKind::Route => "route",
            ObjectKind::Rule => "rule",
            ObjectKind::Neighbour => "neighbour",
            ObjectKind::Fdb => "fdb",
            ObjectKind::Link => "link",
            ObjectKind::Address => "address",
            ObjectKind::IptablesPolicy => "iptables-policy",
            ObjectKind::IptablesChain => "iptables-chain",
            ObjectKind::IptablesRule => "iptables-rule",
            ObjectKind::NftRule => "nft-rule",
            ObjectKind::ConntrackEntry => "conntrack-entry",
        }
    }
}

/// One object changed by a command: created (`before` is `None`), deleted (`after` is
/// `None`) or modified. `before`/`after` are rendered as the object's own tool prints it
/// (`ip route`, `iptables-save`, `nft -j`, `conntrack -L` style).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Change {
    /// What kind of object.
    pub kind: ObjectKind,
    /// Which object: a stable identity such as `net.ipv4.ip_forward`,
    /// `table main 10.0.0.0/24 metric 0`, `iptables-nft ipv4 filter FORWARD`.
    pub object: String,
    /// State before, if it existed.
    pub before: Option<String>,
    /// State after, if it exists.
    pub after: Option<String>,
}

impl fmt::Display for Change {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match (&self.before, &self.after) {
            (None, Some(a)) => write!(f, "+ {} {}: {a}", self.kind.as_str(), self.object),
            (Some(b), None) => write!(f, "- {} {}: {b}", self.kind.as_str(), self.object),
            (Some(b), Some(a)) => {
                write!(f, "~ {} {}: {b} -> {a}", self.kind.as_str(), self.object)
            }
            (None, None) => write!(f, "  {} {}: unchanged", self.kind.as_str(), self.object),
        }
    }
}

/// What one command changed.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Applied {
    /// The command as given.
    pub command: FixCommand,
    /// Objects changed, in order. Empty when the command was valid but changed nothing
    /// (e.g. setting a sysctl to the value it has).
    pub changes: Vec<Change>,
    /// Remarks: the iptables backend chosen, side effects, approximations.
    pub notes: Vec<String>,
}

impl fmt::Display for Applied {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.command)?;
        if self.changes.is_empty() {
            write!(f, "\n  (no change)")?;
        }
        for c in &self.changes {
            write!(f, "\n  {c}")?;
        }
        for n in &self.notes {
            write!(f, "\n  note: {n}")?;
        }
        Ok(())
    }
}

/// Why a command could not be applied.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum ErrorKind {
    /// Not one simple command, or not `NODE[/NETNS]: COMMAND`.
    Syntax,
    /// A command, option or value this crate does not model.
    Unsupported,
    /// No such node or namespace in the bundle.
    Target,
    /// The real tool or kernel would refuse it (bad value, missing device, ...).
    Invalid,
    /// The object to add already exists (`File exists`).
    Exists,
    /// The object to change or delete does not exist.
    NotFound,
}

/// A command that could not be applied: which command, and why.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("{}: `{run}`: {reason}", target(node, netns))]
pub struct PatchError {
    /// Node of the command.
    pub node: String,
    /// Namespace of the command.
    pub netns: String,
    /// The command.
    pub run: String,
    /// Category.
    pub kind: ErrorKind,
    /// Human-readable reason, naming the offending word.
    pub reason: String,
}

fn target(node: &str, netns: &str) -> String {
    match (node.is_empty(), netns) {
        (true, _) => "what-if".to_string(),
        (false, "host") => node.to_string(),
        (false, ns) => format!("{node}/{ns}"),
    }
}

/// Internal failure before the command is known to the error.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) struct Fail {
    pub kind: ErrorKind,
    pub reason: String,
}

pub(crate) type R<T> = Result<T, Fail>;

pub(crate) fn unsupported(reason: impl Into<String>) -> Fail {
    Fail {
        kind: ErrorKind::Unsupported,
        reason: reason.into(),
    }
}

pub(crate) fn invalid(reason: impl Into<String>) -> Fail {
    Fail {
        kind: ErrorKind::Invalid,
        reason: reason.into(),
    }
}

pub(crate) fn exists(reason: impl Into<String>) -> Fail {
    Fail {
        kind: ErrorKind::Exists,
        reason: reason.into(),
    }
}

pub(crate) fn not_found(reason: impl Into<String>) -> Fail {
    Fail {
        kind: ErrorKind::NotFound,
        reason: reason.into(),
    }
}

/// What a handler produced.
#[derive(Debug, Default)]
pub(crate) struct Out {
    pub changes: Vec<Change>,
    pub notes: Vec<String>,
}

impl Out {
    pub fn change(
        &mut self,
        kind: ObjectKind,
        object: String,
        before: Option<String>,
        after: Option<String>,
    ) {
        self.changes.push(Change {
            kind,
            object,
            before,
            after,
        });
    }
}

/// Where a command runs: the node and the index of the namespace in it.
pub(crate) struct Ctx<'a> {
    pub node: &'a mut NodeSnapshot,
    pub ns: usize,
}

impl Ctx<'_> {
    pub fn ns(&mut self) -> &mut NetnsSnapshot {
        &mut self.node.namespaces[self.ns]
    }
    pub fn ns_ref(&self) -> &NetnsSnapshot {
        &self.node.namespaces[self.ns]
    }
}

/// Find the namespace `netns` names on `node`: `host`, the display name, the `/run/netns`
/// name, `netns:<inode>` or the inode.
fn find_netns(node: &NodeSnapshot, netns: &str) -> Option<usize> {
    let ns = &node.namespaces;
    if netns == "host" {
        return ns.iter().position(|n| n.role == NetnsRole::Host);
    }
    ns.iter()
        .position(|n| n.display_name() == netns)
        .or_else(|| ns.iter().position(|n| n.id.name.as_deref() == Some(netns)))
        .or_else(|| {
            let ino = netns.strip_prefix("netns:").unwrap_or(netns);
            let ino: u64 = ino.parse().ok()?;
            ns.iter().position(|n| n.id.inode == ino)
        })
}

/// Apply one command to the bundle in place. On error the bundle is unchanged.
pub fn apply(bundle: &mut Bundle, cmd: &FixCommand) -> Result<Applied, PatchError> {
    let err = |kind: ErrorKind, reason: String| PatchError {
        node: cmd.node.clone(),
        netns: cmd.netns.clone(),
        run: cmd.run.clone(),
        kind,
        reason,
    };
    let Some(ni) = bundle.nodes.iter().position(|n| n.node.name == cmd.node) else {
        let known: Vec<&str> = bundle.nodes.iter().map(|n| n.node.name.as_str()).collect();
        return Err(err(
            ErrorKind::Target,
            format!(
                "no node `{}` in the bundle (nodes: {})",
                cmd.node,
                known.join(", ")
            ),
        ));
    };
    let Some(nsi) = find_netns(&bundle.nodes[ni], &cmd.netns) else {
        let known: Vec<String> = bundle.nodes[ni]
            .namespaces
            .iter()
            .map(|n| {
                if n.role == NetnsRole::Host {
                    "host".to_string()
                } else {
                    n.display_name()
                }
            })
            .collect();
        return Err(err(
            ErrorKind::Target,
            format!(
                "no namespace `{}` on node `{}` (namespaces: {})",
                cmd.netns,
                cmd.node,
                known.join(", ")
            ),
        ));
    };
    let words = shell::split(&cmd.run).map_err(|r| err(ErrorKind::Syntax, r))?;
    // Work on a copy of the node so a failing command leaves the bundle untouched.
    let mut node = bundle.nodes[ni].clone();
    let mut ctx = Ctx {
        node: &mut node,
        ns: nsi,
    };
    let out = dispatch(&mut ctx, &words).map_err(|f| err(f.kind, f.reason))?;
    bundle.nodes[ni] = node;
    Ok(Applied {
        command: cmd.clone(),
        changes: out.changes,
        notes: out.notes,
    })
}

/// Apply commands in order. Stops at the first error; the bundle then holds the effects of
/// the commands before it (apply to a clone when that matters).
pub fn apply_all(bundle: &mut Bundle, cmds: &[FixCommand]) -> Result<Vec<Applied>, PatchError> {
    cmds.iter().map(|c| apply(bundle, c)).collect()
}

fn dispatch(ctx: &mut Ctx<'_>, words: &[String]) -> R<Out> {
    let mut words: &[String] = words;
    let mut notes = Vec::new();
    if words.first().map(String::as_str) == Some("sudo") {
        if words.get(1).is_some_and(|w| w.starts_with('-')) {
            return Err(unsupported(format!(
                "`sudo {}`: sudo options are not supported; the command runs as root",
                words[1]
            )));
        }
        words = &words[1..];
        notes.push("`sudo` dropped: the command runs as root".to_string());
    }
    let Some(prog) = words.first() else {
        return Err(Fail {
            kind: ErrorKind::Syntax,
            reason: "empty command".into(),
        });
    };
    let prog_name = prog.rsplit('/').next().unwrap_or(prog);
    let args = &words[1..];
    let mut out = match prog_name {
        "sysctl" => sysctl::run(ctx, args)?,
        "ip" => ip::run(ctx, args)?,
        "bridge" => bridge::run(ctx, args)?,
        "iptables" | "iptables-legacy" | "iptables-nft" | "ip6tables" | "ip6tables-legacy"
        | "ip6tables-nft" => iptables::run(ctx, prog_name, args)?,
        "nft" => nft::run(ctx, args)?,
        "conntrack" => conntrack::run(ctx, args)?,
        "nsenter" | "ip-netns" => {
            return Err(unsupported(format!(
                "`{prog_name}`: give the namespace as the command's target, not a wrapper"
            )));
        }
        other => {
            return Err(unsupported(format!(
                "command `{other}` is not supported (supported: sysctl, ip, bridge, iptables, ip6tables, nft, conntrack)"
            )));
        }
    };
    notes.append(&mut out.notes);
    out.notes = notes;
    Ok(out)
}
