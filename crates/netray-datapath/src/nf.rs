//! The seam between the walk and the netfilter engine, and the conntrack model.
//!
//! The walk asks "what does hook H of namespace N do to this packet?" through [`Netfilter`];
//! [`crate::engine::RulesetEngine`] answers with `netray-netfilter`. Conntrack (lookup, NAT
//! bindings on the first packet, applying them to the rest and to replies) lives here.

use std::net::IpAddr;

use crate::result::RuleRef;
use crate::world::NsIdx;

/// Netfilter hooks.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum NfHook {
    /// PREROUTING.
    Prerouting,
    /// INPUT.
    Input,
    /// FORWARD.
    Forward,
    /// OUTPUT.
    Output,
    /// POSTROUTING.
    Postrouting,
}

impl NfHook {
    /// Upper-case name.
    pub fn name(self) -> &'static str {
        match self {
            NfHook::Prerouting => "PREROUTING",
            NfHook::Input => "INPUT",
            NfHook::Forward => "FORWARD",
            NfHook::Output => "OUTPUT",
            NfHook::Postrouting => "POSTROUTING",
        }
    }

    /// The NAT manipulation done at this hook: destination at PREROUTING/OUTPUT, source at
    /// INPUT/POSTROUTING; none at FORWARD.
    pub fn manip(self) -> Option<Manip> {
        match self {
            NfHook::Prerouting | NfHook::Output => Some(Manip::Dst),
            NfHook::Input | NfHook::Postrouting => Some(Manip::Src),
            NfHook::Forward => None,
        }
    }
}

/// Which side NAT rewrites.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Manip {
    /// Source (SNAT, MASQUERADE).
    Src,
    /// Destination (DNAT, REDIRECT).
    Dst,
}

/// Conntrack state as rules see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CtState {
    /// First packet.
    New,
    /// A later packet in the original direction.
    Established,
    /// A reply (`--ctstate ESTABLISHED`, `--ctdir REPLY`).
    Reply,
    /// Not tracked (NOTRACK in raw).
    Untracked,
    /// Invalid.
    Invalid,
}

/// What the engine is asked about.
#[derive(Debug, Clone)]
pub struct NfPacket {
    /// Source.
    pub src: IpAddr,
    /// Destination.
    pub dst: IpAddr,
    /// IP protocol.
    pub proto: u8,
    /// Source port (TCP/UDP/SCTP).
    pub sport: Option<u16>,
    /// Destination port.
    pub dport: Option<u16>,
    /// ICMP type.
    pub icmp_type: Option<u8>,
    /// TCP flags byte (FIN 0x01, SYN 0x02, RST 0x04, PSH 0x08, ACK 0x10).
    pub tcp_flags: u8,
    /// IP length.
    pub len: u32,
    /// skb mark.
    pub mark: u32,
    /// Conntrack mark.
    pub ctmark: u32,
    /// Conntrack state.
    pub ct: CtState,
    /// Conntrack status bits (`IPS_*`: 1<<4 SRC_NAT, 1<<5 DST_NAT, 1<<3 CONFIRMED, 1<<1
    /// SEEN_REPLY).
    pub ct_status: u32,
    /// Original destination (for `--ctorigdst`), when tracked.
    pub ct_orig_dst: Option<IpAddr>,
    /// Input interface.
    pub iif: Option<String>,
    /// Output interface.
    pub oif: Option<String>,
    /// Bridge port in (br_netfilter), if bridged.
    pub physdev_in: Option<String>,
    /// Bridge port out (br_netfilter), if bridged.
    pub physdev_out: Option<String>,
    /// True when called by br_netfilter.
    pub bridged: bool,
    /// Reverse-path lookups for `-m rpfilter`, computed by the walk at PREROUTING.
    pub rpf: Option<netray_netfilter::Rpf>,
}

/// A NAT action decided by the nat table (only on the first packet of a connection).
#[derive(Debug, Clone, PartialEq)]
pub enum NatAction {
    /// DNAT to an address and/or port.
    Dnat {
        /// New destination address (`None`: unchanged).
        addr: Option<IpAddr>,
        /// New destination port.
        port: Option<u16>,
    },
    /// SNAT to an address and/or port.
    Snat {
        /// New source address.
        addr: Option<IpAddr>,
        /// New source port.
        port: Option<u16>,
        /// `--random-fully` (the port is rewritten).
        random_fully: bool,
    },
    /// MASQUERADE: the source becomes the output interface's address.
    Masquerade {
        /// `--to-ports` first port.
        port: Option<u16>,
        /// `--random-fully` / `--random`: the source port is rewritten.
        random_fully: bool,
    },
    /// REDIRECT to a local port.
    Redirect {
        /// New destination port.
        port: Option<u16>,
    },
}

/// Verdict of a hook.
#[derive(Debug, Clone, PartialEq)]
pub enum NfVerdict {
    /// Continue.
    Accept,
    /// Dropped.
    Drop,
    /// Rejected (with the `--reject-with` type).
    Reject(String),
    /// Queued to user space.
    Queue,
    /// The engine cannot decide (named construct).
    Unknown(String),
}

/// One outcome of a hook (several when statistic/numgen/unknown matches split the packet).
#[derive(Debug, Clone)]
pub struct NfOutcome {
    /// Probability of this outcome, relative to the call.
    pub probability: f64,
    /// Verdict.
    pub verdict: NfVerdict,
    /// skb mark after the hook.
    pub mark: u32,
    /// Conntrack mark after the hook.
    pub ctmark: u32,
    /// NAT decided at this hook (first packet only).
    pub nat: Option<NatAction>,
    /// NOTRACK / CT --notrack was applied.
    pub notrack: bool,
    /// Rules matched, in order.
    pub rules: Vec<RuleRef>,
    /// Unknown matches this outcome assumes the result of (`table/chain#N matches (-m recent
    /// is not modelled)`); empty when the outcome is certain.
    pub assumptions: Vec<String>,
    /// The unknown facts this outcome decided (to be kept for the rest of the path).
    pub facts: Vec<Fact>,
}

/// An unknown fact decided on a path (an ipset that was not collected, an unmodelled match
/// with its arguments): once decided, later rules and hooks asking it follow the decision.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Fact {
    /// Stable identity of the fact (the construct with its arguments and the packet values).
    pub key: String,
    /// The value assumed.
    pub matched: bool,
}

impl NfOutcome {
    /// Accept with nothing matched.
    pub fn accept(pkt: &NfPacket) -> NfOutcome {
        NfOutcome {
            probability: 1.0,
            verdict: NfVerdict::Accept,
            mark: pkt.mark,
            ctmark: pkt.ctmark,
            nat: None,
            notrack: false,
            rules: Vec::new(),
            assumptions: Vec::new(),
            facts: Vec::new(),
        }
    }
}

/// A netfilter engine: evaluates every table attached to `hook` in namespace `ns`, in the
/// kernel's priority order (conntrack lookup is done by the walk before the call).
pub trait Netfilter {
    /// Evaluate. `nat` is true when the nat table may run (first packet of a connection);
    /// `given` are the facts this path already decided in namespace `ns`. The probabilities
    /// of the outcomes sum to 1.
    fn evaluate(
        &self,
        ns: NsIdx,
        hook: NfHook,
        pkt: &NfPacket,
        nat: bool,
        given: &[Fact],
    ) -> Vec<NfOutcome>;
}

/// A conntrack tuple.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Tuple {
    /// Source.
    pub src: IpAddr,
    /// Destination.
    pub dst: IpAddr,
    /// Source port / ICMP id.
    pub sport: u16,
    /// Destination port (0 for ICMP).
    pub dport: u16,
}

impl Tuple {
    /// The opposite direction.
    pub fn invert(self) -> Tuple {
        Tuple {
            src: self.dst,
            dst: self.src,
            sport: self.dport,
            dport: self.sport,
        }
    }
}

impl std::fmt::Display for Tuple {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "src={} dst={} sport={} dport={}",
            self.src, self.dst, self.sport, self.dport
        )
    }
}

/// A conntrack entry created on this branch.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct CtEntry {
    /// Namespace (conntrack tables are per namespace).
    pub ns: NsIdx,
    /// IP protocol.
    pub proto: u8,
    /// Original tuple.
    pub orig: Tuple,
    /// Reply tuple (the inverse of the original after NAT).
    pub reply: Tuple,
    /// Source NAT was set up.
    pub snat: bool,
    /// Destination NAT was set up.
    pub dnat: bool,
    /// NAT bindings were decided (nat table consulted for both manips or the entry confirmed).
    pub nat_done_dst: bool,
    /// Source-manip binding decided.
    pub nat_done_src: bool,
    /// Conntrack mark.
    pub mark: u32,
}

impl CtEntry {
    /// The entry of a collected conntrack table, as the walk holds it (its NAT bindings
    /// decided, as for any confirmed entry).
    pub fn from_collected(ns: NsIdx, e: &netray_snapshot::ConntrackEntry) -> CtEntry {
        let tuple = |c: &netray_snapshot::ConntrackTuple| Tuple {
            src: c.src,
            dst: c.dst,
            sport: c.sport.unwrap_or(0),
            dport: c.dport.unwrap_or(0),
        };
        let status = |s: &str| e.status.iter().any(|x| x == s);
        CtEntry {
            ns,
            proto: e.proto,
            orig: tuple(&e.orig),
            reply: tuple(&e.reply),
            snat: status("SRC_NAT"),
            dnat: status("DST_NAT"),
            nat_done_dst: true,
            nat_done_src: true,
            mark: e.mark,
        }
    }

    /// The tuples, typed for reports.
    pub fn tuples(&self) -> (crate::CtTuple, crate::CtTuple) {
        let view = |t: &Tuple| crate::CtTuple {
            proto: proto_name(self.proto),
            src: t.src,
            dst: t.dst,
            sport: t.sport,
            dport: t.dport,
        };
        (view(&self.orig), view(&self.reply))
    }

    /// The entry as a [`crate::KernelObject`] of namespace `at`.
    pub fn object(&self, at: crate::Place, collected: bool) -> crate::KernelObject {
        let (orig, reply) = self.tuples();
        crate::KernelObject::Conntrack {
            at,
            entry: self.text(),
            collected,
            orig,
            reply,
        }
    }

    /// `conntrack -L` style text.
    pub fn text(&self) -> String {
        let mut s = format!("{} {} {}", proto_name(self.proto), self.orig, self.reply);
        if self.snat {
            s.push_str(" [SRC_NAT]");
        }
        if self.dnat {
            s.push_str(" [DST_NAT]");
        }
        if self.mark != 0 {
            s.push_str(&format!(" mark={}", self.mark));
        }
        s
    }
}

/// Direction of a packet relative to its conntrack entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum CtDir {
    /// Original direction.
    Orig,
    /// Reply direction.
    Reply,
}

/// `tcp`, `udp`, ... or the number.
pub fn proto_name(p: u8) -> String {
    match p {
        1 => "icmp".into(),
        6 => "tcp".into(),
        17 => "udp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}
