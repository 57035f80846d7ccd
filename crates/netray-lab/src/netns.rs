//! One lab network namespace, deleted on drop.

use std::io::Write as _;
use std::process::{Command, Output, Stdio};
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

/// Whether a lab test named `test` can run here. Without root it is skipped with a message on
/// standard error — except under `CI=true`, where lab tests must run, so this panics.
pub fn lab_tests_can_run(test: &str) -> bool {
    match require_root() {
        Ok(()) => true,
        Err(why) if std::env::var("CI").as_deref() == Ok("true") => {
            panic!("{test}: {why} (CI=true: lab tests must run)")
        }
        Err(why) => {
            eprintln!("SKIPPED {test}: {why}");
            false
        }
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

    /// Run many `ip` commands at once (`ip -n NS -batch -`), one per line.
    pub fn ip_batch(&self, lines: &[String]) -> Result<(), LabError> {
        self.batch("ip", lines)
    }

    /// Run many `bridge` commands at once (`bridge -n NS -batch -`), one per line.
    pub fn bridge_batch(&self, lines: &[String]) -> Result<(), LabError> {
        self.batch("bridge", lines)
    }

    fn batch(&self, tool: &str, lines: &[String]) -> Result<(), LabError> {
        if lines.is_empty() {
            return Ok(());
        }
        let mut cmd = Command::new(tool);
        cmd.args(["-n", &self.name, "-batch", "-"]);
        run_with_input(
            &mut cmd,
            &lines.join("\n"),
            lines.first().map(String::as_str),
        )
    }

    /// `iptables-restore ARGS…` inside the namespace with `input` on standard input.
    pub fn iptables_restore(&self, args: &[&str], input: &str) -> Result<(), LabError> {
        let mut cmd = self.command("iptables-restore");
        cmd.args(args);
        run_with_input(&mut cmd, input, None)
    }

    /// Give up ownership without deleting the namespace (for labs that outlive the process);
    /// returns its name.
    pub fn leak(self) -> String {
        let me = std::mem::ManuallyDrop::new(self);
        me.name.clone()
    }

    /// Create a veth pair `here` (in this namespace) ↔ `there` (in `peer`).
    pub fn veth(&self, here: &str, peer: &Netns, there: &str) -> Result<(), LabError> {
        self.ip(&[
            "link", "add", here, "type", "veth", "peer", "name", there, "netns", &peer.name,
        ])?;
        Ok(())
    }
}

/// Run `cmd` with `input` on its standard input; error with its stderr (and `hint`).
pub(crate) fn run_with_input(
    cmd: &mut Command,
    input: &str,
    hint: Option<&str>,
) -> Result<(), LabError> {
    let shown = format!("{cmd:?}").replace('"', "");
    let mut child = cmd
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .map_err(|source| LabError::Spawn {
            cmd: shown.clone(),
            source,
        })?;
    if let Some(mut stdin) = child.stdin.take() {
        let _ = stdin.write_all(input.as_bytes());
        let _ = stdin.write_all(b"\n");
    }
    let out = child.wait_with_output().map_err(|source| LabError::Spawn {
        cmd: shown.clone(),
        source,
    })?;
    if out.status.success() {
        Ok(())
    } else {
        let mut stderr = String::from_utf8_lossy(&out.stderr).trim().to_string();
        if let Some(h) = hint {
            stderr = format!("{stderr} (batch starting with `{h}`)");
        }
        Err(LabError::Command {
            cmd: shown,
            status: out.status.to_string(),
            stderr,
        })
    }
}

/// Delete a lab namespace by name, killing the processes inside first. Refuses names without
/// the lab prefix.
pub fn delete_by_name(name: &str) -> Result<(), LabError> {
    if !name.starts_with(&format!("{LAB_PREFIX}-")) {
        return Err(LabError::Command {
            cmd: format!("ip netns del {name}"),
            status: "refused".into(),
            stderr: format!("not a lab namespace (no `{LAB_PREFIX}-` prefix)"),
        });
    }
    kill_pids(name);
    run(Command::new("ip").args(["netns", "del", name])).map(|_| ())
}

fn kill_pids(name: &str) {
    if let Ok(out) = Command::new("ip").args(["netns", "pids", name]).output() {
        for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
            let _ = Command::new("kill").args(["-9", pid]).output();
        }
    }
}

/// Names of all lab namespaces on this machine (`nrl-…` under `/run/netns`), sorted.
pub fn list_lab_namespaces() -> Vec<String> {
    let mut names: Vec<String> = std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(&format!("{LAB_PREFIX}-")))
                .collect()
        })
        .unwrap_or_default();
    names.sort();
    names
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
        let _ = Command::new("ip")
            .args(["netns", "del", &self.name])
            .output();
    }
}
