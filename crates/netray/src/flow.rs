//! The one flow syntax shared by every command that takes a flow (`trace`, `diagnose`,
//! `rules trace`, …): `--from`, `--to`, `--proto`, `--size`, `--family`.
//!
//! Families: an address on `--from` or `--to` fixes the flow's family; names (`pod/…`,
//! `node/…`) resolve to their address of that family. A `svc/NS/NAME` of a dual-stack Service
//! with no address to fix the family is walked once per family it has (one flow each);
//! `--family 4|6` restricts every name to that family.
//!
//! Endpoint forms:
//! - `IP` — an address; as a source, the packet is generated in the namespace owning it;
//! - `IP@node/NAME`, `IP@netns/NAME` — the address, entering at that node or namespace (on
//!   the interface holding the destination, else the one facing the source);
//!   `IP@node/NAME%IFACE`, `IP@netns/NAME%IFACE` — entering there on interface IFACE;
//! - `pod/NS/NAME`, `svc/NS/NAME`, `node/NAME`, `external/IP` — names from the cluster view;
//! - a destination may carry `:PORT` (or `:PORTNAME` for services) and `/PROTO`
//!   (`tcp`, `udp`, `sctp`, `icmp`); IPv6 with a port is written `[ADDR]:PORT`.

use std::fmt;
use std::net::IpAddr;
use std::str::FromStr;

/// Transport protocol of a flow.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Proto {
    /// TCP (the default when a port is given).
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
    /// ICMP echo (ICMPv6 for v6 addresses).
    Icmp,
}

impl Proto {
    /// IANA protocol number (ICMP is 1; callers use 58 for v6).
    pub fn number(self) -> u8 {
        match self {
            Proto::Tcp => 6,
            Proto::Udp => 17,
            Proto::Sctp => 132,
            Proto::Icmp => 1,
        }
    }
}

impl FromStr for Proto {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "tcp" => Ok(Proto::Tcp),
            "udp" => Ok(Proto::Udp),
            "sctp" => Ok(Proto::Sctp),
            "icmp" | "icmpv6" | "ping" => Ok(Proto::Icmp),
            other => Err(format!(
                "unknown protocol `{other}` (expected tcp, udp, sctp or icmp)"
            )),
        }
    }
}

impl fmt::Display for Proto {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
            Proto::Sctp => "sctp",
            Proto::Icmp => "icmp",
        })
    }
}

/// Where an address enters the world, when not where it lives.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Place {
    /// `@node/NAME`: the node's host namespace.
    Node(String),
    /// `@netns/NAME`: a namespace by its `/run/netns` name (or `netns:INODE`).
    Netns(String),
    /// `@node/NAME%IFACE`: the node's host namespace, entering on interface IFACE.
    NodeVia(String, String),
    /// `@netns/NAME%IFACE`: a namespace, entering on interface IFACE.
    NetnsVia(String, String),
}

/// What an endpoint names.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Target {
    /// An address, optionally entering at a given place.
    Addr {
        /// The address.
        ip: IpAddr,
        /// Where it enters (`IP@node/NAME`); `None`: the namespace owning it.
        at: Option<Place>,
    },
    /// `pod/NS/NAME`.
    Pod {
        /// Namespace.
        namespace: String,
        /// Pod name.
        name: String,
    },
    /// `svc/NS/NAME`.
    Service {
        /// Namespace.
        namespace: String,
        /// Service name.
        name: String,
    },
    /// `node/NAME`.
    Node(String),
    /// `external/IP`: a client outside the cluster.
    External(IpAddr),
}

/// A port by number or by service port name.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PortRef {
    /// A number.
    Number(u16),
    /// A named service port (`svc/NS/NAME:http`).
    Name(String),
}

/// One side of a flow as the user wrote it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Endpoint {
    /// What it names.
    pub target: Target,
    /// `:PORT` if given.
    pub port: Option<PortRef>,
    /// `/PROTO` if given.
    pub proto: Option<Proto>,
}

impl FromStr for Endpoint {
    type Err = String;

    fn from_str(input: &str) -> Result<Self, String> {
        let s = input.trim();
        if s.is_empty() {
            return Err("empty endpoint".into());
        }
        // `/PROTO` suffix: only when the last segment is a protocol name, so that
        // `pod/NS/NAME` is not mistaken for one.
        let (body, proto) = match s.rsplit_once('/') {
            Some((b, p)) if p.parse::<Proto>().is_ok() && !b.is_empty() => {
                (b, Some(p.parse::<Proto>()?))
            }
            _ => (s, None),
        };
        let bad = |why: &str| format!("cannot read endpoint `{input}`: {why}");
        if let Some(rest) = body.strip_prefix("pod/") {
            let (ns, name) = rest
                .split_once('/')
                .ok_or_else(|| bad("expected pod/NAMESPACE/NAME"))?;
            let (name, port) = split_port(name).map_err(|e| bad(&e))?;
            return Ok(Endpoint {
                target: Target::Pod {
                    namespace: nonempty(ns).map_err(|e| bad(&e))?,
                    name: nonempty(name).map_err(|e| bad(&e))?,
                },
                port,
                proto,
            });
        }
        if let Some(rest) = body.strip_prefix("svc/") {
            let (ns, name) = rest
                .split_once('/')
                .ok_or_else(|| bad("expected svc/NAMESPACE/NAME[:PORT]"))?;
            let (name, port) = split_port(name).map_err(|e| bad(&e))?;
            return Ok(Endpoint {
                target: Target::Service {
                    namespace: nonempty(ns).map_err(|e| bad(&e))?,
                    name: nonempty(name).map_err(|e| bad(&e))?,
                },
                port,
                proto,
            });
        }
        if let Some(rest) = body.strip_prefix("node/") {
            let (name, port) = split_port(rest).map_err(|e| bad(&e))?;
            return Ok(Endpoint {
                target: Target::Node(nonempty(name).map_err(|e| bad(&e))?),
                port,
                proto,
            });
        }
        if let Some(rest) = body.strip_prefix("external/") {
            let (ip, port) = split_addr_port(rest).map_err(|e| bad(&e))?;
            return Ok(Endpoint {
                target: Target::External(ip),
                port: port.map(PortRef::Number),
                proto,
            });
        }
        // IP[:PORT][@node/NAME | @netns/NAME]
        let (addr, at) = match body.split_once('@') {
            Some((a, place)) => {
                // `%IFACE`: the interface it enters on.
                let (place, iface) = match place.split_once('%') {
                    Some((p, i)) => (p, Some(nonempty(i).map_err(|e| bad(&e))?)),
                    None => (place, None),
                };
                let place = match (place.strip_prefix("node/"), place.strip_prefix("netns/")) {
                    (Some(n), _) => {
                        let n = nonempty(n).map_err(|e| bad(&e))?;
                        match iface {
                            Some(i) => Place::NodeVia(n, i),
                            None => Place::Node(n),
                        }
                    }
                    (_, Some(n)) => {
                        let n = nonempty(n).map_err(|e| bad(&e))?;
                        match iface {
                            Some(i) => Place::NetnsVia(n, i),
                            None => Place::Netns(n),
                        }
                    }
                    _ => {
                        return Err(bad(
                            "after `@` expected node/NAME[%IFACE] or netns/NAME[%IFACE]",
                        ));
                    }
                };
                (a, Some(place))
            }
            None => (body, None),
        };
        let (ip, port) = split_addr_port(addr).map_err(|e| bad(&e))?;
        Ok(Endpoint {
            target: Target::Addr { ip, at },
            port: port.map(PortRef::Number),
            proto,
        })
    }
}

fn nonempty(s: &str) -> Result<String, String> {
    if s.is_empty() || s.contains('/') {
        Err(format!("`{s}` is not a valid name"))
    } else {
        Ok(s.to_string())
    }
}

/// `NAME[:PORT|:PORTNAME]`.
fn split_port(s: &str) -> Result<(&str, Option<PortRef>), String> {
    match s.split_once(':') {
        None => Ok((s, None)),
        Some((n, p)) => match p.parse::<u16>() {
            Ok(0) => Err("port 0 is not a port (1-65535)".into()),
            Ok(num) => Ok((n, Some(PortRef::Number(num)))),
            // All digits but too large: a number out of range, not a name.
            Err(_) if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => {
                Err(format!("port {p} is out of range (1-65535)"))
            }
            Err(_)
                if !p.is_empty()
                    && p.chars().any(|c| c.is_ascii_alphabetic())
                    && p.chars().all(|c| c.is_ascii_alphanumeric() || c == '-') =>
            {
                Ok((n, Some(PortRef::Name(p.to_string()))))
            }
            Err(_) => Err(format!("`{p}` is not a port number or name")),
        },
    }
}

/// `A.B.C.D`, `A.B.C.D:PORT`, `V6`, `[V6]:PORT`.
fn split_addr_port(s: &str) -> Result<(IpAddr, Option<u16>), String> {
    let port = |p: &str| -> Result<u16, String> {
        match p.parse::<u16>() {
            Ok(n) if n > 0 => Ok(n),
            _ if !p.is_empty() && p.chars().all(|c| c.is_ascii_digit()) => {
                Err(format!("port {p} is out of range (1-65535)"))
            }
            _ => Err(format!("`{p}` is not a port (1-65535)")),
        }
    };
    if let Some(rest) = s.strip_prefix('[') {
        let (a, tail) = rest
            .split_once(']')
            .ok_or_else(|| "missing `]` after IPv6 address".to_string())?;
        let ip: IpAddr = a.parse().map_err(|_| format!("`{a}` is not an address"))?;
        return match tail.strip_prefix(':') {
            Some(p) => Ok((ip, Some(port(p)?))),
            None if tail.is_empty() => Ok((ip, None)),
            None => Err(format!("unexpected `{tail}` after address")),
        };
    }
    if let Ok(ip) = s.parse::<IpAddr>() {
        return Ok((ip, None));
    }
    match s.rsplit_once(':') {
        Some((a, p)) if !a.contains(':') => {
            let ip: IpAddr = a.parse().map_err(|_| format!("`{a}` is not an address"))?;
            Ok((ip, Some(port(p)?)))
        }
        _ => Err(format!(
            "`{s}` is not an address (IP, IP:PORT or [IPv6]:PORT)"
        )),
    }
}

/// The flow options every flow-taking command accepts.
#[derive(Debug, Clone, clap::Args)]
pub struct FlowArgs {
    /// Source: IP, IP@node/NAME, IP@netns/NAME, pod/NS/NAME, node/NAME, external/IP; a
    /// `:PORT` on it is the source port (as --sport). `IP@node/NAME%IFACE` (or
    /// `@netns/NAME%IFACE`) enters on interface IFACE (default: the interface holding the
    /// destination, else the one facing the source).
    #[arg(long, value_name = "SRC")]
    pub from: Endpoint,
    /// Destination: IP[:PORT][/PROTO], svc/NS/NAME[:PORT|:PORTNAME][/PROTO], pod/NS/NAME[:PORT],
    /// node/NAME[:PORT], [IPv6]:PORT.
    #[arg(long, value_name = "DST")]
    pub to: Endpoint,
    /// Protocol, when not given as /PROTO on --to (default: tcp with a port, icmp without).
    #[arg(long, value_enum)]
    pub proto: Option<Proto>,
    /// IP packet size in bytes (headers included), for MTU checks.
    #[arg(long, value_name = "BYTES", value_parser = clap::value_parser!(u16).range(20..))]
    pub size: Option<u16>,
    /// Source port (default: an ephemeral port, 40000). Given explicitly it is taken as the
    /// client's real port: a UDP packet whose tuple the collected conntrack table already holds
    /// follows that entry (its DNAT, no new load-balancing), as the kernel would.
    #[arg(long, value_name = "PORT", value_parser = clap::value_parser!(u16).range(1..))]
    pub sport: Option<u16>,
    /// Walk the snapshots as if COMMAND had been run as root in that namespace first
    /// (repeatable, applied in order): `NODE: sysctl -w net.ipv4.ip_forward=1`,
    /// `NODE/NETNS: ip route add …`, `pod/NS/NAME: ip route add default via …`. The vocabulary
    /// of the `fix_commands` diagnose prints: sysctl -w, ip route|rule|neigh|link|addr,
    /// bridge fdb, iptables/ip6tables -P/-A/-I/-D/-R/-N/-F, nft add|insert|delete rule,
    /// conntrack -D. The snapshots on disk are not changed.
    #[arg(long = "what-if", value_name = "TARGET: COMMAND")]
    pub what_if: Vec<String>,
    /// Address family, 4 or 6: names resolve to their address of this family (a dual-stack
    /// Service is walked in this family only). Default: the family of an address given on
    /// --from/--to, else every family the destination Service has (one flow each), else the
    /// pod's primary (first) IP.
    #[arg(long, value_name = "4|6", value_parser = parse_family)]
    pub family: Option<netray_kube::IpFamily>,
    /// Stop exploring after this many branches (the verdict is then uncertain).
    #[arg(long, default_value_t = 4096, value_name = "N")]
    pub max_branches: usize,
}

/// `4` or `6` (also `ipv4`/`ipv6`, `IPv4`/`IPv6`).
pub(crate) fn parse_family(s: &str) -> Result<netray_kube::IpFamily, String> {
    match s.to_ascii_lowercase().as_str() {
        "4" | "ipv4" | "inet" => Ok(netray_kube::IpFamily::V4),
        "6" | "ipv6" | "inet6" => Ok(netray_kube::IpFamily::V6),
        _ => Err(format!("`{s}` is not an address family (4 or 6)")),
    }
}

/// The address an endpoint names literally, if any.
fn literal_ip(t: &Target) -> Option<IpAddr> {
    match t {
        Target::Addr { ip, .. } | Target::External(ip) => Some(*ip),
        _ => None,
    }
}

impl FlowArgs {
    /// The flow's family as far as the words fix it: `--family`, else the family of an
    /// address on `--from`/`--to`. Addresses of different families on the two sides, or an
    /// address contradicting `--family`, are errors naming both.
    pub fn fixed_family(&self) -> Result<Option<netray_kube::IpFamily>, String> {
        use netray_kube::IpFamily;
        let mut fam = self.family;
        let mut said = self.family.map(|f| format!("--family {}", f.number()));
        for (opt, ep) in [("--from", &self.from), ("--to", &self.to)] {
            let Some(ip) = literal_ip(&ep.target) else {
                continue;
            };
            let f = IpFamily::of(ip);
            match (fam, &said) {
                (Some(g), Some(by)) if g != f => {
                    return Err(format!(
                        "{opt} {ip} is an {f} address but {by} asks for {g}; give addresses of one family"
                    ));
                }
                _ => {
                    fam = Some(f);
                    said.get_or_insert_with(|| format!("{opt} {ip}"));
                }
            }
        }
        Ok(fam)
    }

    /// The protocol in force: `--proto`, else `/PROTO` on `--to`, else tcp when a port is
    /// given and icmp otherwise. Conflicting `--proto` and `/PROTO` is an error.
    pub fn protocol(&self) -> Result<Proto, String> {
        match (self.proto, self.to.proto) {
            (Some(a), Some(b)) if a != b => Err(format!(
                "--proto {a} conflicts with /{b} on --to; give the protocol once"
            )),
            (Some(p), _) | (None, Some(p)) => Ok(p),
            (None, None) if self.to.port.is_some() => Ok(Proto::Tcp),
            (None, None) => Ok(Proto::Icmp),
        }
    }

    /// The source port the user gave: `--sport`, or a `:PORT` on `--from` (the same thing;
    /// both given and different is an error, as is a port name on the source).
    pub fn given_source_port(&self) -> Result<Option<u16>, String> {
        let on_from = match &self.from.port {
            None => None,
            Some(PortRef::Number(n)) => Some(*n),
            Some(PortRef::Name(n)) => {
                return Err(format!(
                    "--from: `{n}` is a port name; a source port is a number (--from …:PORT or \
                     --sport PORT)"
                ));
            }
        };
        match (self.sport, on_from) {
            (Some(a), Some(b)) if a != b => Err(format!(
                "--sport {a} conflicts with the port {b} on --from; give the source port once"
            )),
            (a, b) => Ok(a.or(b)),
        }
    }

    /// Source port in force: the one given, else an ephemeral port, 40000.
    pub fn source_port(&self) -> u16 {
        self.given_source_port().ok().flatten().unwrap_or(40000)
    }

    /// Walk options for this flow: the collected conntrack tables are consulted only for a
    /// source port the user gave (an invented one would only meet accidental clashes).
    pub fn walk_options(&self) -> netray_datapath::Options {
        netray_datapath::Options {
            collected_conntrack: self.given_source_port().ok().flatten().is_some(),
            max_branches: self.max_branches.max(1),
            ..netray_datapath::Options::default()
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ep(s: &str) -> Endpoint {
        s.parse().unwrap_or_else(|e| panic!("{s}: {e}"))
    }

    #[test]
    fn addresses_ports_and_protocols() {
        let e = ep("10.96.0.10:53/udp");
        assert_eq!(
            e.target,
            Target::Addr {
                ip: "10.96.0.10".parse().unwrap(),
                at: None
            }
        );
        assert_eq!(e.port, Some(PortRef::Number(53)));
        assert_eq!(e.proto, Some(Proto::Udp));
        let e = ep("[fd00::1]:80");
        assert_eq!(e.port, Some(PortRef::Number(80)));
        let e = ep("fd00::1");
        assert_eq!(e.port, None);
        let e = ep("192.168.50.1@node/node-a");
        assert_eq!(
            e.target,
            Target::Addr {
                ip: "192.168.50.1".parse().unwrap(),
                at: Some(Place::Node("node-a".into()))
            }
        );
        let e = ep("10.0.0.1:8080@netns/nrl-x");
        assert_eq!(e.port, Some(PortRef::Number(8080)));
        let e = ep("192.168.50.100@node/node0%eth1");
        assert_eq!(
            e.target,
            Target::Addr {
                ip: "192.168.50.100".parse().unwrap(),
                at: Some(Place::NodeVia("node0".into(), "eth1".into()))
            }
        );
        let e = ep("10.0.0.1:8080@netns/nrl-x%veth0");
        assert_eq!(
            e.target,
            Target::Addr {
                ip: "10.0.0.1".parse().unwrap(),
                at: Some(Place::NetnsVia("nrl-x".into(), "veth0".into()))
            }
        );
        assert_eq!(e.port, Some(PortRef::Number(8080)));
    }

    #[test]
    fn names() {
        assert_eq!(
            ep("pod/default/web-1").target,
            Target::Pod {
                namespace: "default".into(),
                name: "web-1".into()
            }
        );
        let e = ep("svc/kube-system/kube-dns:dns/udp");
        assert_eq!(e.port, Some(PortRef::Name("dns".into())));
        assert_eq!(e.proto, Some(Proto::Udp));
        assert_eq!(ep("node/node-a").target, Target::Node("node-a".into()));
        assert_eq!(
            ep("external/203.0.113.9").target,
            Target::External("203.0.113.9".parse().unwrap())
        );
    }

    fn args(from: &str, to: &str, family: Option<u8>) -> FlowArgs {
        use clap::Parser;
        #[derive(clap::Parser)]
        struct Cli {
            #[command(flatten)]
            flow: FlowArgs,
        }
        let mut argv = vec![
            "t".to_string(),
            "--from".into(),
            from.into(),
            "--to".into(),
            to.into(),
        ];
        if let Some(f) = family {
            argv.extend(["--family".to_string(), f.to_string()]);
        }
        Cli::try_parse_from(argv).expect("parse").flow
    }

    #[test]
    fn family_from_addresses_and_flag() {
        use netray_kube::IpFamily;
        let a = args("pod/default/a", "svc/default/web:80", None);
        assert_eq!(a.fixed_family(), Ok(None));
        let a = args("pod/default/a", "svc/default/web:80", Some(6));
        assert_eq!(a.fixed_family(), Ok(Some(IpFamily::V6)));
        let a = args("pod/default/a", "[fd00:96::10]:80", None);
        assert_eq!(a.fixed_family(), Ok(Some(IpFamily::V6)));
        let a = args("10.244.0.5", "pod/default/b:8080", None);
        assert_eq!(a.fixed_family(), Ok(Some(IpFamily::V4)));
        let e = args("pod/default/a", "[fd00:96::10]:80", Some(4))
            .fixed_family()
            .unwrap_err();
        assert!(
            e.contains("--to fd00:96::10 is an IPv6 address but --family 4"),
            "{e}"
        );
        let e = args("10.244.0.5", "[fd00:96::10]:80", None)
            .fixed_family()
            .unwrap_err();
        assert!(e.contains("but --from 10.244.0.5 asks for IPv4"), "{e}");
        assert_eq!(parse_family("ipv6"), Ok(IpFamily::V6));
        assert!(parse_family("5").unwrap_err().contains("4 or 6"));
    }

    #[test]
    fn rejects_garbage() {
        for bad in [
            "",
            "10.0.0.1:0",
            "10.0.0.1:99999",
            "pod/only",
            "svc//x",
            "1.2.3.4@moon/x",
            "1.2.3.4@node/n%",
            "1.2.3.4@node/%eth0",
            "1.2.3.4@moon/x%eth0",
            "nonsense",
            "[::1",
            "10.0.0.1:80:90",
            "svc/default/web:99999",
        ] {
            assert!(bad.parse::<Endpoint>().is_err(), "{bad} should be rejected");
        }
        let e = "svc/default/web:99999".parse::<Endpoint>().unwrap_err();
        assert!(e.contains("port 99999 is out of range (1-65535)"), "{e}");
        let e = "10.0.0.1:99999".parse::<Endpoint>().unwrap_err();
        assert!(e.contains("port 99999 is out of range (1-65535)"), "{e}");
    }
}
