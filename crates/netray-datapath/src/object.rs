//! Typed references to the kernel objects a walk used or that decided a branch's fate: the
//! rule or chain policy, the route (or the lookup that found none), the neighbour or FDB entry,
//! the sysctl, the link, the conntrack entry, the socket. Causes, evidence, supporting scan
//! findings and fixes are all built from these, never from rendered text.

use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// A conntrack tuple in one direction.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct CtTuple {
    /// `tcp`, `udp`, `icmp`, …
    pub proto: String,
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (ICMP: id).
    pub sport: u16,
    /// Destination port.
    pub dport: u16,
}

/// Where an object lives: a node and one of its network namespaces.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct Place {
    /// Node name.
    pub node: String,
    /// `host` for the node's own namespace, else the collected namespace name.
    pub netns: String,
}

/// A kernel object, with enough identity to find it again in a snapshot and enough state to
/// quote it as evidence.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(tag = "kind", rename_all = "kebab-case")]
pub enum KernelObject {
    /// A firewall rule (iptables or nft) or, with `index` absent, a built-in chain's policy.
    Rule {
        /// Where.
        #[serde(flatten)]
        at: Place,
        /// `ip` or `ip6` (iptables), or the nft table family.
        family: String,
        /// Table.
        table: String,
        /// Chain.
        chain: String,
        /// 1-based position in the chain; absent for the chain policy.
        #[serde(skip_serializing_if = "Option::is_none")]
        index: Option<usize>,
        /// The rule as the dump prints it (`-A …`, `:FORWARD DROP [0:0]`, nft text).
        text: String,
    },
    /// A route (and the `ip rule` that led to its table).
    Route {
        /// Where.
        #[serde(flatten)]
        at: Place,
        /// Routing table id.
        table: u32,
        /// The route as `ip route` prints it.
        route: String,
        /// The policy rule, as `ip rule` prints it, when rules were consulted.
        #[serde(skip_serializing_if = "Option::is_none")]
        rule: Option<String>,
    },
    /// A route lookup that found nothing usable for `dst`.
    RouteLookup {
        /// Where.
        #[serde(flatten)]
        at: Place,
        /// Destination looked up.
        dst: IpAddr,
        /// What the lookup returned.
        result: String,
        /// The priority of the `ip rule` that decided the lookup (a blackhole, unreachable or
        /// prohibit rule), when one did.
        #[serde(default, skip_serializing_if = "Option::is_none")]
        rule_priority: Option<u32>,
    },
    /// A neighbour (ARP/NDP) entry, or its absence.
    Neighbour {
        /// Where.
        #[serde(flatten)]
        at: Place,
        /// Device.
        dev: String,
        /// Address.
        addr: IpAddr,
        /// MAC the entry holds (absent when there is no entry).
        #[serde(skip_serializing_if = "Option::is_none")]
        lladdr: Option<String>,
        /// NUD state (`PERMANENT`, `REACHABLE`, `FAILED`, `missing`, …).
        state: String,
        /// The MAC the entry should hold (the owner's, found elsewhere in the bundle).
        #[serde(skip_serializing_if = "Option::is_none")]
        expected_lladdr: Option<String>,
    },
    /// A bridge / VXLAN forwarding database entry, or its absence.
    Fdb {
        /// Where.
        #[serde(flatten)]
        at: Place,
        /// Device (the VXLAN device or bridge port).
        dev: String,
        /// MAC.
        mac: String,
        /// Remote VTEP (VXLAN entries).
        #[serde(skip_serializing_if = "Option::is_none")]
        dst: Option<IpAddr>,
        /// False when the entry the packet needed does not exist.
        present: bool,
    },
    /// A sysctl (global or per interface).
    Sysctl {
        /// Where.
        #[serde(flatten)]
        at: Place,
        /// `net.ipv4.ip_forward`, `net.ipv4.conf.eth0.rp_filter`, …
        key: String,
        /// The collected value (absent when not collected: the kernel default applies).
        #[serde(skip_serializing_if = "Option::is_none")]
        value: Option<String>,
    },
    /// A network device.
    Link {
        /// Where.
        #[serde(flatten)]
        at: Place,
        /// Device name.
        name: String,
        /// The state that matters (`down`, `mtu 1400`, `hairpin off`, …).
        state: String,
        /// The device's MTU, when collected.
        #[serde(skip_serializing_if = "Option::is_none")]
        mtu: Option<u32>,
    },
    /// An address configured on a device.
    Address {
        /// Where.
        #[serde(flatten)]
        at: Place,
        /// Device.
        dev: String,
        /// Address with prefix length, as `ip addr` prints it.
        addr: String,
    },
    /// A conntrack entry: one the walk created, or one collected in the snapshot.
    Conntrack {
        /// Where.
        #[serde(flatten)]
        at: Place,
        /// The entry as `conntrack -L` shows its tuples.
        entry: String,
        /// True for an entry of the collected table.
        collected: bool,
        /// The original tuple.
        orig: CtTuple,
        /// The reply tuple (after NAT: its source is the backend a DNAT chose).
        reply: CtTuple,
    },
    /// A listening socket, or the absence of one.
    Socket {
        /// Where.
        #[serde(flatten)]
        at: Place,
        /// `tcp`, `udp`, `sctp`.
        proto: String,
        /// Port.
        port: u16,
        /// The listening socket (`tcp 0.0.0.0:8080`), absent when nothing listens.
        #[serde(skip_serializing_if = "Option::is_none")]
        socket: Option<String>,
    },
    /// A node whose state the bundle lacks (its collection failed, or it was not collected):
    /// `at` is the node's host namespace.
    MissingSnapshot {
        /// Where (the missing node, `host`).
        #[serde(flatten)]
        at: Place,
        /// Why it is missing (`failed-nodes.json`'s reason, or that the cluster view lists it).
        reason: String,
    },
    /// Something netray does not model or could not read (a match, target, interface kind,
    /// unparsed line, a limit of the walk).
    Unmodelled {
        /// Where.
        #[serde(flatten)]
        at: Place,
        /// What, in words.
        what: String,
    },
}

impl KernelObject {
    /// Where the object lives.
    pub fn place(&self) -> &Place {
        match self {
            KernelObject::Rule { at, .. }
            | KernelObject::Route { at, .. }
            | KernelObject::RouteLookup { at, .. }
            | KernelObject::Neighbour { at, .. }
            | KernelObject::Fdb { at, .. }
            | KernelObject::Sysctl { at, .. }
            | KernelObject::Link { at, .. }
            | KernelObject::Address { at, .. }
            | KernelObject::Conntrack { at, .. }
            | KernelObject::Socket { at, .. }
            | KernelObject::MissingSnapshot { at, .. }
            | KernelObject::Unmodelled { at, .. } => at,
        }
    }

    /// The kind as serialized (`rule`, `route`, `sysctl`, …).
    pub fn kind(&self) -> &'static str {
        match self {
            KernelObject::Rule { .. } => "rule",
            KernelObject::Route { .. } => "route",
            KernelObject::RouteLookup { .. } => "route-lookup",
            KernelObject::Neighbour { .. } => "neighbour",
            KernelObject::Fdb { .. } => "fdb",
            KernelObject::Sysctl { .. } => "sysctl",
            KernelObject::Link { .. } => "link",
            KernelObject::Address { .. } => "address",
            KernelObject::Conntrack { .. } => "conntrack",
            KernelObject::Socket { .. } => "socket",
            KernelObject::MissingSnapshot { .. } => "missing-snapshot",
            KernelObject::Unmodelled { .. } => "unmodelled",
        }
    }

    /// Identity of the object regardless of its state: two references with the same key are
    /// the same object (a scan finding and a walk's hop can be joined on it).
    pub fn key(&self) -> String {
        let Place { node, netns } = self.place();
        let id = match self {
            KernelObject::Rule {
                family,
                table,
                chain,
                index,
                ..
            } => match index {
                Some(i) => format!("{family}/{table}/{chain}#{i}"),
                None => format!("{family}/{table}/{chain}/policy"),
            },
            KernelObject::Route { table, route, .. } => format!("table {table}: {route}"),
            KernelObject::RouteLookup { dst, .. } => format!("lookup {dst}"),
            KernelObject::Neighbour { dev, addr, .. } => format!("{addr} dev {dev}"),
            KernelObject::Fdb { dev, mac, .. } => format!("{} dev {dev}", mac.to_ascii_lowercase()),
            KernelObject::Sysctl { key, .. } => key.clone(),
            KernelObject::Link { name, .. } => name.clone(),
            KernelObject::Address { dev, addr, .. } => format!("{addr} dev {dev}"),
            KernelObject::Conntrack { entry, .. } => entry.clone(),
            KernelObject::Socket { proto, port, .. } => format!("{proto}/{port}"),
            KernelObject::MissingSnapshot { .. } => "snapshot".to_string(),
            KernelObject::Unmodelled { what, .. } => what.clone(),
        };
        format!("{node}/{netns}/{}/{id}", self.kind())
    }

    /// The object quoted as evidence, in the syntax of the tool that shows it.
    pub fn quote(&self) -> String {
        match self {
            KernelObject::Rule {
                table,
                chain,
                index,
                text,
                ..
            } => match index {
                Some(i) => format!("{table} {chain} #{i}: {text}"),
                None => format!("{table} {chain} policy: {text}"),
            },
            KernelObject::Route {
                table, route, rule, ..
            } => match rule {
                Some(r) => format!("ip rule `{r}` → table {table}: {route}"),
                None => format!("route (table {table}): {route}"),
            },
            KernelObject::RouteLookup { dst, result, .. } => {
                format!("route lookup for {dst}: {result}")
            }
            KernelObject::Neighbour {
                dev,
                addr,
                lladdr,
                state,
                expected_lladdr,
                ..
            } => {
                let mut s = match lladdr {
                    Some(l) => format!("neighbour {addr} dev {dev} lladdr {l} {state}"),
                    None => format!("neighbour {addr} dev {dev}: {state}"),
                };
                if let Some(e) = expected_lladdr
                    && lladdr.as_deref().map(|l| !l.eq_ignore_ascii_case(e)) != Some(false)
                {
                    s.push_str(&format!(" (the owner's MAC is {e})"));
                }
                s
            }
            KernelObject::Fdb {
                dev,
                mac,
                dst,
                present,
                ..
            } => {
                let d = dst.map(|d| format!(" dst {d}")).unwrap_or_default();
                if *present {
                    format!("bridge fdb: {mac} dev {dev}{d}")
                } else {
                    format!("bridge fdb: no entry for {mac} dev {dev}")
                }
            }
            KernelObject::Sysctl { key, value, .. } => match value {
                Some(v) => format!("{key} = {v}"),
                None => format!("{key} not collected (kernel default)"),
            },
            KernelObject::Link { name, state, .. } => format!("link {name}: {state}"),
            KernelObject::Address { dev, addr, .. } => format!("address {addr} dev {dev}"),
            KernelObject::Conntrack {
                entry, collected, ..
            } => {
                if *collected {
                    format!("conntrack (collected): {entry}")
                } else {
                    format!("conntrack: {entry}")
                }
            }
            KernelObject::Socket {
                proto,
                port,
                socket,
                ..
            } => match socket {
                Some(s) => format!("socket {s}"),
                None => format!("no socket listens on {proto} port {port}"),
            },
            KernelObject::MissingSnapshot { at, reason } => {
                format!("no snapshot of node {} in the bundle: {reason}", at.node)
            }
            KernelObject::Unmodelled { what, .. } => format!("not modelled: {what}"),
        }
    }
}
