//! IPVS virtual services, parsed from `ipvsadm -Sn` (the snapshot's `Firewall.ipvs`).
//!
//! ```text
//! -A -t 10.96.0.10:53 -s rr                    virtual service (tcp | -u udp | --sctp-service)
//! -A -f 1 -s wrr -p 300                        fwmark service (`-6` for IPv6), persistence
//! -a -t 10.96.0.10:53 -r 10.244.1.5:53 -m -w 1 real server: -m masquerading (NAT),
//!                                              -g direct routing, -i IPIP tunnel; weight
//! ```
//!
//! The kernel side (`ip_vs_in` at LOCAL_IN / LOCAL_OUT, `ip_vs_out` at FORWARD / LOCAL_IN /
//! LOCAL_OUT) is in the walk; this module is the table and the scheduler approximation
//! ([`VirtualService::schedule`]). A line that cannot be parsed is a [`IpvsDiagnostic`]; the
//! service it names (when its `-t/-u/-f` part can be read) is then marked unknown, otherwise
//! the line is kept in [`IpvsTable::unattributed`] and any packet IPVS would look at in that
//! namespace without matching a service evaluates as unknown.

use std::collections::HashMap;
use std::net::IpAddr;

/// How a virtual service is addressed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum ServiceKey {
    /// `-t|-u|--sctp-service ADDR:PORT`.
    Addr {
        /// IP protocol (6, 17, 132).
        proto: u8,
        /// Virtual address.
        addr: IpAddr,
        /// Virtual port (0: any port, persistent services only).
        port: u16,
    },
    /// `-f MARK` (`-6` for IPv6): matched against the packet mark exactly.
    Fwmark {
        /// The firewall mark.
        mark: u32,
        /// True for an IPv6 fwmark service.
        v6: bool,
    },
}

impl std::fmt::Display for ServiceKey {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            ServiceKey::Addr { proto, addr, port } => {
                let p = match proto {
                    6 => "-t",
                    17 => "-u",
                    _ => "--sctp-service",
                };
                match addr {
                    IpAddr::V6(a) => write!(f, "{p} [{a}]:{port}"),
                    IpAddr::V4(a) => write!(f, "{p} {a}:{port}"),
                }
            }
            ServiceKey::Fwmark { mark, v6 } => {
                write!(f, "-f {mark}{}", if *v6 { " -6" } else { "" })
            }
        }
    }
}

/// How IPVS sends a packet to a real server.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Forward {
    /// `-m`: masquerading (NAT): the destination is rewritten, replies are de-NATed by
    /// `ip_vs_out`.
    Masq,
    /// `-g`: direct routing: the frame goes to the real server's MAC, the IP header unchanged.
    Route,
    /// `-i`: IPIP tunnel (not modelled by the walk).
    Tunnel,
}

impl Forward {
    /// `masquerading (-m)`, ...
    pub fn name(self) -> &'static str {
        match self {
            Forward::Masq => "masquerading (-m)",
            Forward::Route => "direct routing (-g)",
            Forward::Tunnel => "IPIP tunnel (-i)",
        }
    }
}

/// One `-a` line.
#[derive(Debug, Clone, PartialEq)]
pub struct RealServer {
    /// Real server address.
    pub addr: IpAddr,
    /// Real server port (0: the packet's destination port is kept).
    pub port: u16,
    /// Forwarding method.
    pub forward: Forward,
    /// Weight (0: never chosen for new connections).
    pub weight: u32,
    /// 1-based line number in the dump.
    pub line: usize,
    /// The line as written.
    pub text: String,
}

/// One `-A` line with its real servers.
#[derive(Debug, Clone, PartialEq)]
pub struct VirtualService {
    /// Address or fwmark.
    pub key: ServiceKey,
    /// Scheduler name (`rr`, `wrr`, `lc`...).
    pub scheduler: String,
    /// `-p TIMEOUT`: persistence in seconds.
    pub persistent: Option<u32>,
    /// 1-based line number of the `-A` line (0 when the service was only named by `-a` lines).
    pub line: usize,
    /// The `-A` line as written.
    pub text: String,
    /// Real servers in dump order.
    pub reals: Vec<RealServer>,
    /// Malformed lines about this service: a packet it matches evaluates as unknown.
    pub unknown: Vec<IpvsDiagnostic>,
}

/// A line that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IpvsDiagnostic {
    /// 1-based line number.
    pub line: usize,
    /// The line as written.
    pub text: String,
    /// What is wrong.
    pub message: String,
}

impl std::fmt::Display for IpvsDiagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "ipvsadm line {} `{}`: {}",
            self.line, self.text, self.message
        )
    }
}

/// The IPVS table of one namespace.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct IpvsTable {
    /// Virtual services in dump order.
    pub services: Vec<VirtualService>,
    /// Every malformed line.
    pub diagnostics: Vec<IpvsDiagnostic>,
    /// Malformed lines that name no service that could be read.
    pub unattributed: Vec<IpvsDiagnostic>,
    by_key: HashMap<ServiceKey, usize>,
}

fn parse_addr_port(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    let (a, p) = if let Some(rest) = s.strip_prefix('[') {
        let (a, tail) = rest
            .split_once(']')
            .ok_or_else(|| format!("`{s}`: missing `]`"))?;
        match tail.strip_prefix(':') {
            Some(p) => (a, Some(p)),
            None if tail.is_empty() => (a, None),
            None => return Err(format!("`{s}`: bad address")),
        }
    } else if s.matches(':').count() == 1 {
        let (a, p) = s.split_once(':').unwrap_or((s, ""));
        (a, Some(p))
    } else {
        (s, None)
    };
    let addr: IpAddr = a.parse().map_err(|_| format!("`{a}` is not an address"))?;
    let port = match p {
        Some(p) => Some(p.parse().map_err(|_| format!("`{p}` is not a port"))?),
        None => None,
    };
    Ok((addr, port))
}

fn parse_u32(s: &str) -> Result<u32, String> {
    match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    }
    .map_err(|_| format!("`{s}` is not a number"))
}

/// What one line says.
struct Line {
    add_service: bool,
    key: Option<ServiceKey>,
    scheduler: Option<String>,
    persistent: Option<u32>,
    real: Option<(IpAddr, Option<u16>)>,
    forward: Option<Forward>,
    weight: Option<u32>,
}

/// Parse one line; on error, also return the service key when it could be read.
fn parse_line(text: &str) -> Result<Line, (String, Option<ServiceKey>)> {
    let toks: Vec<&str> = text.split_whitespace().collect();
    let mut l = Line {
        add_service: false,
        key: None,
        scheduler: None,
        persistent: None,
        real: None,
        forward: None,
        weight: None,
    };
    // The key first, so an error later in the line can still name the service.
    let mut v6 = false;
    let mut i = 0;
    let mut proto_addr: Option<(u8, &str)> = None;
    let mut mark: Option<&str> = None;
    while i < toks.len() {
        match toks[i] {
            "-t" | "--tcp-service" => proto_addr = toks.get(i + 1).map(|a| (6, *a)),
            "-u" | "--udp-service" => proto_addr = toks.get(i + 1).map(|a| (17, *a)),
            "--sctp-service" => proto_addr = toks.get(i + 1).map(|a| (132, *a)),
            "-f" | "--fwmark-service" => mark = toks.get(i + 1).copied(),
            "-6" | "--ipv6" => v6 = true,
            _ => {}
        }
        i += 1;
    }
    l.key = match (proto_addr, mark) {
        (Some((proto, a)), None) => match parse_addr_port(a) {
            Ok((addr, port)) => Some(ServiceKey::Addr {
                proto,
                addr,
                port: port.unwrap_or(0),
            }),
            Err(e) => return Err((e, None)),
        },
        (None, Some(m)) => match parse_u32(m) {
            Ok(mark) => Some(ServiceKey::Fwmark { mark, v6 }),
            Err(e) => return Err((e, None)),
        },
        (Some(_), Some(_)) => {
            return Err(("both an address and a fwmark service".into(), None));
        }
        (None, None) => return Err(("no -t/-u/--sctp-service/-f service".into(), None)),
    };
    let key = l.key;
    let err = |m: String| (m, key);
    match toks.first() {
        Some(&"-A") | Some(&"--add-service") => l.add_service = true,
        Some(&"-a") | Some(&"--add-server") => {}
        Some(other) => return Err(err(format!("`{other}` is not -A or -a"))),
        None => return Err(err("empty line".into())),
    }
    let mut i = 1;
    let val = |i: usize| {
        toks.get(i + 1)
            .copied()
            .ok_or_else(|| format!("missing value after `{}`", toks[i]))
    };
    while i < toks.len() {
        let t = toks[i];
        match t {
            "-t" | "--tcp-service" | "-u" | "--udp-service" | "--sctp-service" | "-f"
            | "--fwmark-service" => i += 1,
            "-6" | "--ipv6" => {}
            "-s" | "--scheduler" if l.add_service => {
                l.scheduler = Some(val(i).map_err(err)?.to_string());
                i += 1;
            }
            "-p" | "--persistent" if l.add_service => {
                // The timeout is optional on input; `-S` always prints it.
                match toks.get(i + 1).map(|v| v.parse::<u32>()) {
                    Some(Ok(n)) => {
                        l.persistent = Some(n);
                        i += 1;
                    }
                    _ => l.persistent = Some(300),
                }
            }
            "-M" | "--netmask" | "-b" | "--sched-flags" | "--pe" if l.add_service => {
                val(i).map_err(err)?;
                i += 1;
            }
            "-o" | "--ops" if l.add_service => {}
            "-r" | "--real-server" if !l.add_service => {
                l.real = Some(parse_addr_port(val(i).map_err(err)?).map_err(err)?);
                i += 1;
            }
            "-m" | "--masquerading" if !l.add_service => l.forward = Some(Forward::Masq),
            "-g" | "--gatewaying" if !l.add_service => l.forward = Some(Forward::Route),
            "-i" | "--ipip" if !l.add_service => l.forward = Some(Forward::Tunnel),
            "-w" | "--weight" if !l.add_service => {
                let v = val(i).map_err(err)?;
                l.weight = Some(v.parse().map_err(|_| err(format!("bad weight `{v}`")))?);
                i += 1;
            }
            "-x" | "--u-threshold" | "-y" | "--l-threshold" | "--tun-type" | "--tun-port"
                if !l.add_service =>
            {
                val(i).map_err(err)?;
                i += 1;
            }
            "--tun-nocsum" | "--tun-csum" | "--tun-remcsum" if !l.add_service => {}
            other => return Err(err(format!("unexpected `{other}`"))),
        }
        i += 1;
    }
    if l.add_service && l.scheduler.is_none() {
        // ipvsadm's default scheduler.
        l.scheduler = Some("wlc".into());
    }
    if !l.add_service && l.real.is_none() {
        return Err(err("real server line without -r".into()));
    }
    Ok(l)
}

impl IpvsTable {
    /// Parse `ipvsadm -Sn` output. Never fails: bad lines become diagnostics.
    pub fn parse(text: &str) -> IpvsTable {
        let mut t = IpvsTable::default();
        if let Some(first) = text.lines().find(|l| !l.trim().is_empty())
            && first.starts_with("IP Virtual Server")
        {
            let d = IpvsDiagnostic {
                line: 1,
                text: first.trim().to_string(),
                message: "this is /proc/net/ip_vs, not `ipvsadm -Sn` output: not parsed".into(),
            };
            t.diagnostics.push(d.clone());
            t.unattributed.push(d);
            return t;
        }
        for (n, raw) in text.lines().enumerate() {
            let line = raw.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let lineno = n + 1;
            match parse_line(line) {
                Ok(l) => {
                    let Some(key) = l.key else { continue };
                    if l.add_service {
                        let idx = t.service_mut(key);
                        let s = &mut t.services[idx];
                        s.scheduler = l.scheduler.unwrap_or_default();
                        s.persistent = l.persistent;
                        s.line = lineno;
                        s.text = line.to_string();
                    } else {
                        let Some((addr, port)) = l.real else { continue };
                        let known = t.by_key.contains_key(&key);
                        let idx = t.service_mut(key);
                        if !known {
                            let d = IpvsDiagnostic {
                                line: lineno,
                                text: line.to_string(),
                                message: format!("real server for {key}, which no -A line defines"),
                            };
                            t.services[idx].unknown.push(d.clone());
                            t.diagnostics.push(d);
                        }
                        t.services[idx].reals.push(RealServer {
                            addr,
                            port: port.unwrap_or(0),
                            // ipvsadm's default is direct routing.
                            forward: l.forward.unwrap_or(Forward::Route),
                            weight: l.weight.unwrap_or(1),
                            line: lineno,
                            text: line.to_string(),
                        });
                    }
                }
                Err((message, key)) => {
                    let d = IpvsDiagnostic {
                        line: lineno,
                        text: line.to_string(),
                        message,
                    };
                    t.diagnostics.push(d.clone());
                    match key {
                        Some(k) => {
                            let idx = t.service_mut(k);
                            t.services[idx].unknown.push(d);
                        }
                        None => t.unattributed.push(d),
                    }
                }
            }
        }
        t
    }

    fn service_mut(&mut self, key: ServiceKey) -> usize {
        if let Some(&i) = self.by_key.get(&key) {
            return i;
        }
        self.services.push(VirtualService {
            key,
            scheduler: String::new(),
            persistent: None,
            line: 0,
            text: format!("{key} (no -A line)"),
            reals: Vec::new(),
            unknown: Vec::new(),
        });
        self.by_key.insert(key, self.services.len() - 1);
        self.services.len() - 1
    }

    /// `ip_vs_service_find`: the fwmark table first (when the packet has a mark), then
    /// (protocol, address, port), then the port-zero catch-all of a persistent service.
    pub fn find(&self, proto: u8, dst: IpAddr, dport: u16, mark: u32) -> Option<&VirtualService> {
        let get = |k: ServiceKey| self.by_key.get(&k).map(|&i| &self.services[i]);
        if mark != 0
            && let Some(s) = get(ServiceKey::Fwmark {
                mark,
                v6: dst.is_ipv6(),
            })
        {
            return Some(s);
        }
        get(ServiceKey::Addr {
            proto,
            addr: dst,
            port: dport,
        })
        .or_else(|| {
            get(ServiceKey::Addr {
                proto,
                addr: dst,
                port: 0,
            })
            .filter(|s| s.persistent.is_some())
        })
    }
}

impl VirtualService {
    /// The real servers a new connection may go to, with the share of connections each gets,
    /// and a word on the approximation. Weight-0 servers are never chosen. `rr` and `lc`
    /// ignore weights (equal shares; `lc` assumes equal load); `wrr`, `wlc`, `sed`, `nq`,
    /// `lblc`, `lblcr`, `sh`, `dh`, `mh`, `twos` and unknown schedulers are approximated by
    /// weight-proportional shares (the long-run split of a weighted scheduler under even
    /// load; hashing schedulers spread clients by weight); `fo` and `ovf` pick the first
    /// server with the highest weight. Empty: no destination (`ip_vs_leave`).
    pub fn schedule(&self) -> (Vec<(&RealServer, f64)>, String) {
        let live: Vec<&RealServer> = self.reals.iter().filter(|r| r.weight > 0).collect();
        if live.is_empty() {
            return (Vec::new(), String::new());
        }
        let sched = self.scheduler.as_str();
        match sched {
            "rr" | "lc" => {
                let n = live.len() as f64;
                let note = format!(
                    "{sched}: equal shares among the {} with weight > 0",
                    netray_snapshot::text::count(live.len(), "server", "servers")
                );
                (live.into_iter().map(|r| (r, 1.0 / n)).collect(), note)
            }
            "fo" | "ovf" => {
                let max = live.iter().map(|r| r.weight).max().unwrap_or(0);
                let first = live
                    .into_iter()
                    .find(|r| r.weight == max)
                    .expect("non-empty");
                (
                    vec![(first, 1.0)],
                    format!("{sched}: the first server with the highest weight ({max})"),
                )
            }
            _ => {
                let total: u64 = live.iter().map(|r| u64::from(r.weight)).sum();
                let known = matches!(
                    sched,
                    "wrr" | "wlc" | "sed" | "nq" | "lblc" | "lblcr" | "sh" | "dh" | "mh" | "twos"
                );
                let note = if known {
                    format!("{sched}: shares by weight (of {total})")
                } else {
                    format!("scheduler `{sched}` is not known: shares by weight (of {total})")
                };
                (
                    live.into_iter()
                        .map(|r| (r, r.weight as f64 / total as f64))
                        .collect(),
                    note,
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DUMP: &str = "-A -t 10.96.0.10:53 -s rr\n\
-a -t 10.96.0.10:53 -r 10.244.1.5:53 -m -w 1\n\
-a -t 10.96.0.10:53 -r 10.244.2.7:53 -m -w 1\n\
-A -u [fd00::a]:53 -s wrr -p 10800\n\
-a -u [fd00::a]:53 -r [fd00:1::5]:5353 -m -w 3\n\
-a -u [fd00::a]:53 -r [fd00:1::6]:5353 -m -w 0\n\
-A -f 7 -s sh -b sh-port\n\
-a -f 7 -r 192.168.0.9:0 -g -w 2\n\
-A -t 10.0.0.1:80 -s wlc --bogus\n\
-a -t 10.0.0.1:80 -r 10.244.1.5:8080 -m -w 1\n\
garbage here\n";

    #[test]
    fn parses_services_and_reals() {
        let t = IpvsTable::parse(DUMP);
        assert_eq!(t.services.len(), 4);
        let s = t
            .find(6, "10.96.0.10".parse().unwrap(), 53, 0)
            .expect("tcp svc");
        assert_eq!(s.scheduler, "rr");
        assert_eq!(s.reals.len(), 2);
        assert_eq!(s.reals[0].forward, Forward::Masq);
        assert!(t.find(17, "10.96.0.10".parse().unwrap(), 53, 0).is_none());
        let s6 = t.find(17, "fd00::a".parse().unwrap(), 53, 0).expect("v6");
        assert_eq!(s6.persistent, Some(10800));
        assert_eq!(s6.reals[0].port, 5353);
        let (sh, _) = s6.schedule();
        assert_eq!(sh.len(), 1, "weight 0 excluded");
        let f = t.find(6, "1.2.3.4".parse().unwrap(), 9, 7).expect("fwmark");
        assert_eq!(f.reals[0].forward, Forward::Route);
        assert_eq!(f.reals[0].port, 0);
        // Fwmark first even when an address service matches too.
        assert!(matches!(
            t.find(6, "10.96.0.10".parse().unwrap(), 53, 7).unwrap().key,
            ServiceKey::Fwmark { .. }
        ));
        // The bad -A line names its service: that service is unknown; `garbage` names none.
        let bad = t
            .find(6, "10.0.0.1".parse().unwrap(), 80, 0)
            .expect("bad svc");
        assert_eq!(bad.unknown.len(), 1);
        assert_eq!(bad.unknown[0].line, 9);
        assert_eq!(t.unattributed.len(), 1);
        assert_eq!(t.unattributed[0].line, 11);
        assert_eq!(t.diagnostics.len(), 2);
        assert!(t.diagnostics[0].to_string().contains("line 9"));
    }

    #[test]
    fn proc_format_is_one_diagnostic() {
        let t = IpvsTable::parse(
            "IP Virtual Server version 1.2.1 (size=4096)\nProt LocalAddress:Port Scheduler Flags\nTCP  0A600001:01BB rr\n",
        );
        assert!(t.services.is_empty());
        assert_eq!(t.diagnostics.len(), 1);
        assert_eq!(t.unattributed.len(), 1);
    }

    #[test]
    fn shares() {
        let t = IpvsTable::parse(
            "-A -t 1.1.1.1:80 -s wrr\n-a -t 1.1.1.1:80 -r 2.2.2.2:80 -m -w 1\n-a -t 1.1.1.1:80 -r 2.2.2.3:80 -m -w 3\n-a -t 1.1.1.1:80 -r 2.2.2.4:80 -m -w 0\n",
        );
        let (s, note) = t.services[0].schedule();
        assert_eq!(s.len(), 2);
        assert!((s[0].1 - 0.25).abs() < 1e-9 && (s[1].1 - 0.75).abs() < 1e-9);
        assert!(note.contains("weight"));
        let t = IpvsTable::parse(
            "-A -t 1.1.1.1:80 -s rr\n-a -t 1.1.1.1:80 -r 2.2.2.2:80 -m -w 1\n-a -t 1.1.1.1:80 -r 2.2.2.3:80 -m -w 3\n",
        );
        let (s, note) = t.services[0].schedule();
        assert!((s[0].1 - 0.5).abs() < 1e-9);
        assert_eq!(note, "rr: equal shares among the 2 servers with weight > 0");
        let t =
            IpvsTable::parse("-A -t 1.1.1.1:80 -s lc\n-a -t 1.1.1.1:80 -r 2.2.2.2:80 -m -w 1\n");
        let (_, note) = t.services[0].schedule();
        assert_eq!(note, "lc: equal shares among the 1 server with weight > 0");
    }
}
