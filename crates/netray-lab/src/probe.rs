//! Probes: one bounded request from one lab namespace, and its outcome.

use std::net::{Ipv4Addr, SocketAddrV4};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use crate::spec::Proto;

/// Per-try timeout of TCP/UDP probes (the agent gives up after this).
pub const PROBE_TIMEOUT: Duration = Duration::from_millis(1500);
/// Hard limit on any probe process; it is killed after this.
pub const PROBE_KILL_AFTER: Duration = Duration::from_secs(6);

/// What to send.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ProbeKind {
    /// TCP connect, one request line, one answer line.
    Tcp {
        /// Destination.
        dst: SocketAddrV4,
        /// Source address to bind (e.g. a load balancer's IP), if any.
        src: Option<Ipv4Addr>,
    },
    /// One UDP datagram and its answer.
    Udp {
        /// Destination.
        dst: SocketAddrV4,
        /// Source address to bind, if any.
        src: Option<Ipv4Addr>,
        /// Source port to bind (a client that keeps its port, as DNS resolvers may), if any.
        sport: Option<u16>,
    },
    /// `ping -c1 -W1 -M do -s SIZE DST` (don't fragment).
    Ping {
        /// Destination.
        dst: Ipv4Addr,
        /// ICMP payload size (IP packet = size + 28).
        size: u16,
    },
}

impl ProbeKind {
    /// TCP or UDP probe without source binding.
    pub fn l4(proto: Proto, dst: SocketAddrV4) -> ProbeKind {
        match proto {
            Proto::Tcp => ProbeKind::Tcp { dst, src: None },
            Proto::Udp => ProbeKind::Udp {
                dst,
                src: None,
                sport: None,
            },
        }
    }
}

/// A probe from a lab member (node, pod, `gw`, `ext`).
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Probe {
    /// Lab member name the probe runs in.
    pub from: String,
    /// What it sends.
    pub kind: ProbeKind,
}

impl Probe {
    /// TCP probe.
    pub fn tcp(from: &str, ip: Ipv4Addr, port: u16) -> Probe {
        Probe {
            from: from.into(),
            kind: ProbeKind::Tcp {
                dst: SocketAddrV4::new(ip, port),
                src: None,
            },
        }
    }
    /// UDP probe.
    pub fn udp(from: &str, ip: Ipv4Addr, port: u16) -> Probe {
        Probe {
            from: from.into(),
            kind: ProbeKind::Udp {
                dst: SocketAddrV4::new(ip, port),
                src: None,
                sport: None,
            },
        }
    }
    /// ICMP echo with DF and this payload size.
    pub fn ping(from: &str, ip: Ipv4Addr, size: u16) -> Probe {
        Probe {
            from: from.into(),
            kind: ProbeKind::Ping { dst: ip, size },
        }
    }
    /// Same probe with a bound source address (TCP/UDP only).
    pub fn from_source(mut self, src: Ipv4Addr) -> Probe {
        match &mut self.kind {
            ProbeKind::Tcp { src: s, .. } | ProbeKind::Udp { src: s, .. } => *s = Some(src),
            ProbeKind::Ping { .. } => {}
        }
        self
    }
}

impl Probe {
    /// Same UDP probe from a fixed source port (no effect on TCP and ping).
    pub fn from_port(mut self, port: u16) -> Probe {
        if let ProbeKind::Udp { sport, .. } = &mut self.kind {
            *sport = Some(port);
        }
        self
    }
}

impl std::fmt::Display for Probe {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match &self.kind {
            ProbeKind::Tcp { dst, .. } => write!(f, "{} -tcp-> {dst}", self.from)?,
            ProbeKind::Udp { dst, .. } => write!(f, "{} -udp-> {dst}", self.from)?,
            ProbeKind::Ping { dst, size } => {
                return write!(f, "{} -ping({size})-> {dst}", self.from);
            }
        }
        if let ProbeKind::Tcp { src: Some(s), .. } | ProbeKind::Udp { src: Some(s), .. } =
            &self.kind
        {
            write!(f, " (from {s})")?;
        }
        if let ProbeKind::Udp { sport: Some(p), .. } = &self.kind {
            write!(f, " (source port {p})")?;
        }
        Ok(())
    }
}

/// Outcome of one probe.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProbeResult {
    /// The probe.
    pub probe: Probe,
    /// A real answer came back.
    pub ok: bool,
    /// Name of the server that answered (TCP/UDP).
    pub answered_by: Option<String>,
    /// Error text on failure (`connect: Connection refused`, `timed out`, ping's output…).
    pub detail: String,
}

/// Run `cmd` with a hard deadline; returns (success, stdout, stderr).
pub(crate) fn run_bounded(mut cmd: Command, limit: Duration) -> (bool, String, String) {
    cmd.stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    let mut child = match cmd.spawn() {
        Ok(c) => c,
        Err(e) => return (false, String::new(), format!("spawn: {e}")),
    };
    let start = Instant::now();
    loop {
        match child.try_wait() {
            Ok(Some(_)) => break,
            Ok(None) if start.elapsed() < limit => std::thread::sleep(Duration::from_millis(5)),
            _ => {
                let _ = child.kill();
                let _ = child.wait();
                return (false, String::new(), "killed after deadline".into());
            }
        }
    }
    match child.wait_with_output() {
        Ok(out) => (
            out.status.success(),
            String::from_utf8_lossy(&out.stdout).trim().to_string(),
            String::from_utf8_lossy(&out.stderr).trim().to_string(),
        ),
        Err(e) => (false, String::new(), e.to_string()),
    }
}
