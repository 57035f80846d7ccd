//! One lab network namespace, deleted on drop.

use std::process::{Command, Output};
use std::sync::atomic::{AtomicU32, Ordering};

/// Prefix of every namespace a lab creates; `netray lab down` deletes only these.
pub const LAB_PREFIX: &str = "nrl";

/// A lab command failed.
#[derive(Debug, thiserror::Error)]
pub enum LabError {
    /// A command ran and failed.
    #[error("`{cmd}` failed ({status}): {stderr}")]
    Command {
        /// The command line.
        cmd: String,
        /// Exit status.
        status: String,
        /// Its standard error.
        stderr: String,
    },
    /// A command could not be started.
    #[error("cannot run `{cmd}`: {source}")]
    Spawn {
        /// The command line.
        cmd: String,
        /// Underlying error.
        source: std::io::Error,
    },
}

/// A short tag unique to this process and call, to keep concurrent labs apart
/// (`<pid % 10000>x<counter>`). Namespace names must stay short: interface names
/// derived from them are limited to 15 bytes.
pub fn lab_tag() -> String {
    static NEXT: AtomicU32 = AtomicU32::new(0);
    format!(
        "{}x{}",
        std::process::id() % 10000,
        NEXT.fetch_add(1, Ordering::Relaxed)
    )
}

/// Whether lab tests can run: root is needed to create namespaces. Returns `Err(reason)` when
/// they cannot. Under `CI=true` callers must fail rather than skip.
pub fn require_root() -> Result<(), String> {
    // SAFETY-free check: read the effective uid from /proc.
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let euid = status
        .lines()
        .find(|l| l.starts_with("Uid:"))
        .and_then(|l| l.split_whitespace().nth(2))
        .unwrap_or("");
    if euid == "0" {
        Ok(())
    } else {
        Err("lab tests need root (network namespaces); run them as root".to_string())
    }
}

/// Run a command, failing with its stderr.
pub fn run(cmd: &mut Command) -> Result<Output, LabError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let out = cmd.output().map_err(|source| LabError::Spawn {
        cmd: shown.clone(),
        source,
    })?;
    if out.status.success() {
        Ok(out)
    } else {
        Err(LabError::Command {
            cmd: shown,
            status: out.status.to_string(),
            stderr: String::from_utf8_lossy(&out.stderr).trim().to_string(),
        })
    }
}

/// A network namespace created by the lab; deleted (with everything in it) on drop.
#[derive(Debug)]
pub struct Netns {
    name: String,
}

impl Netns {
    /// Create `nrl-<name>` (the prefix is added here; `name` should include a [`lab_tag`]).
    /// Loopback is brought up.
    pub fn create(name: &str) -> Result<Netns, LabError> {
        let full = format!("{LAB_PREFIX}-{name}");
        // A leftover of a crashed run with the same name is ours by construction: remove it.
        let _ = Command::new("ip").args(["netns", "del", &full]).output();
        run(Command::new("ip").args(["netns", "add", &full]))?;
        let ns = Netns { name: full };
        ns.ip(&["link", "set", "lo", "up"])?;
        Ok(ns)
    }

    /// The full namespace name (`nrl-…`), as in `/run/netns`.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// A `Command` that runs `program` inside this namespace (`ip netns exec`).
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.name, program]);
        c
    }

    /// Run `program args…` inside the namespace; error on failure.
    pub fn exec(&self, program: &str, args: &[&str]) -> Result<Output, LabError> {
        run(self.command(program).args(args))
    }

    /// Run a shell snippet inside the namespace; error on failure.
    pub fn sh(&self, script: &str) -> Result<Output, LabError> {
        self.exec("sh", &["-ec", script])
    }

    /// `ip ARGS…` inside the namespace.
    pub fn ip(&self, args: &[&str]) -> Result<Output, LabError> {
        run(Command::new("ip").args(["-n", &self.name]).args(args))
    }

    /// Set a sysctl inside the namespace.
    pub fn sysctl(&self, key: &str, value: &str) -> Result<(), LabError> {
        self.exec("sysctl", &["-qw", &format!("{key}={value}")])
            .map(|_| ())
    }

    /// Create a veth pair `here` (in this namespace) ↔ `there` (in `peer`).
    pub fn veth(&self, here: &str, peer: &Netns, there: &str) -> Result<(), LabError> {
        self.ip(&[
            "link", "add", here, "type", "veth", "peer", "name", there, "netns", &peer.name,
        ])?;
        Ok(())
    }
}

impl Drop for Netns {
    fn drop(&mut self) {
        // Kill processes left in the namespace (servers), then delete it.
        if let Ok(out) = Command::new("ip")
            .args(["netns", "pids", &self.name])
            .output()
        {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = Command::new("kill").args(["-9", pid]).output();
            }
        }
        let _ = Command::new("ip").args(["netns", "del", &self.name]).output();
    }
}
