//! netray-netfilter: a host's firewall (iptables-legacy, iptables-nft, native nftables, ipset)
//! parsed into one rule model and evaluated like the kernel.
//!
//! ```text
//! Firewall (verbatim dumps) ──Ruleset::from_firewall──▶ Ruleset ──evaluate(hook, packet)──▶ [Outcome]
//! ```
//!
//! * [`Ruleset::from_firewall`] parses every `iptables-save` dump (both backends, v4 and v6),
//!   `nft -j list ruleset` (native tables only: tables managed by iptables-nft are taken from
//!   their `iptables-save` text) and `ipset save`. Malformed lines do not abort the parse: they
//!   become error items that evaluate as unknown, and are listed in [`Ruleset::diagnostics`].
//! * [`Ruleset::evaluate`] runs every table and base chain attached to a hook in kernel priority
//!   order and returns one [`Outcome`] per branch (`-m statistic`, nft `numgen`, unknown
//!   matches), each with its probability, verdict, rewrites and rule trail.
//!
//! Probabilities: branches created by `-m statistic` / `numgen` carry their probability.
//! Branches created by an *unknown fact* (a module netray does not model, an ipset that was
//! not collected, a field the packet does not give, ...) are not random: both values are
//! explored, each outcome lists the [`Assumption`]s it rests on, and the two forks share the
//! probability equally (0.5 / 0.5), so the outcomes of one evaluation always sum to 1. A fact is
//! identified by a stable key ([`Assumption::key`]: the construct with its arguments and the
//! values it looks at) and decided once per path: a later rule asking the same fact follows the
//! decision, and [`Ruleset::evaluate_given`] takes the facts decided at earlier hooks.
//!
//! Limits (see [`limits`]): evaluation is bounded in chain depth, in jumps + gotos per path, in
//! rule steps per evaluation and in branches ([`EvalOptions::max_branches`]). Hitting one ends
//! the branch with [`Verdict::Unknown`] naming the rule and the limit, never a confident verdict.
//! A line that does not parse (an `iptables-save` rule, a chain policy, an nft policy) evaluates
//! as [`Verdict::Unknown`] naming its line for every packet that reaches it.

#![warn(missing_docs)]

mod eval;
pub mod ipset;
pub mod ipt;
pub mod natrange;
pub mod nft;
pub mod synth;
mod text;

use std::net::IpAddr;
use std::sync::Arc;

use serde::Serialize;

pub use netray_snapshot::{IpFamily, IptablesBackend};
pub use text::Text;

/// A netfilter hook.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Hook {
    /// `NF_INET_PRE_ROUTING`: every received packet, before the routing decision.
    Prerouting,
    /// `NF_INET_LOCAL_IN`: packets delivered to this host.
    Input,
    /// `NF_INET_FORWARD`: packets routed through this host.
    Forward,
    /// `NF_INET_LOCAL_OUT`: packets sent by this host.
    Output,
    /// `NF_INET_POST_ROUTING`: every packet leaving, after routing.
    Postrouting,
}

impl Hook {
    /// The iptables built-in chain name (`PREROUTING`, ...).
    pub fn chain_name(self) -> &'static str {
        match self {
            Hook::Prerouting => "PREROUTING",
            Hook::Input => "INPUT",
            Hook::Forward => "FORWARD",
            Hook::Output => "OUTPUT",
            Hook::Postrouting => "POSTROUTING",
        }
    }

    /// Parse an iptables built-in chain name or an nft hook name (`prerouting`, ...).
    pub fn parse(s: &str) -> Option<Hook> {
        Some(match s.to_ascii_lowercase().as_str() {
            "prerouting" => Hook::Prerouting,
            "input" => Hook::Input,
            "forward" => Hook::Forward,
            "output" => Hook::Output,
            "postrouting" => Hook::Postrouting,
            _ => return None,
        })
    }
}

/// Where a rule comes from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Backend {
    /// `iptables-legacy` (x_tables).
    IptablesLegacy,
    /// `iptables-nft` (read from its `iptables-save` text).
    IptablesNft,
    /// Native nftables (read from `nft -j list ruleset`).
    Nftables,
}

/// Conntrack state as `-m conntrack --ctstate` / `ct state` see it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "UPPERCASE")]
pub enum CtState {
    /// First packet of a connection not yet in the table.
    #[default]
    New,
    /// Packet of a known connection that has seen traffic both ways (or is a later packet).
    Established,
    /// Related to an existing connection (ICMP errors, FTP data, ...).
    Related,
    /// Conntrack could not classify the packet.
    Invalid,
    /// `NOTRACK` / `CT --notrack` applied in raw.
    Untracked,
}

/// Direction of a packet relative to its conntrack entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum CtDir {
    /// Same direction as the packet that created the entry.
    #[default]
    Original,
    /// The reply direction.
    Reply,
}

/// Conntrack status bits (`IPS_*`), as used by `--ctstatus` and `ct status`.
pub mod ct_status {
    /// `IPS_EXPECTED`.
    pub const EXPECTED: u32 = 1 << 0;
    /// `IPS_SEEN_REPLY`.
    pub const SEEN_REPLY: u32 = 1 << 1;
    /// `IPS_ASSURED`.
    pub const ASSURED: u32 = 1 << 2;
    /// `IPS_CONFIRMED`.
    pub const CONFIRMED: u32 = 1 << 3;
    /// `IPS_SRC_NAT`.
    pub const SRC_NAT: u32 = 1 << 4;
    /// `IPS_DST_NAT`.
    pub const DST_NAT: u32 = 1 << 5;
    /// `IPS_DYING`.
    pub const DYING: u32 = 1 << 9;
}

/// What conntrack knows about the packet's connection.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
pub struct CtInfo {
    /// State of the packet.
    pub state: CtState,
    /// Direction.
    pub dir: CtDir,
    /// Status bits ([`ct_status`]).
    pub status: u32,
    /// Connection mark.
    pub mark: u32,
    /// Zone.
    pub zone: u16,
    /// Original-direction source (for `--ctorigsrc`); `None`: the packet's own source.
    pub orig_src: Option<IpAddr>,
    /// Original-direction destination (for `--ctorigdst`); `None`: the packet's own destination.
    pub orig_dst: Option<IpAddr>,
    /// Original-direction destination port (for `--ctorigdstport`).
    pub orig_dport: Option<u16>,
    /// Reply-direction source (for `--ctreplsrc`), if known.
    pub reply_src: Option<IpAddr>,
    /// Reply-direction destination (for `--ctrepldst`), if known.
    pub reply_dst: Option<IpAddr>,
    /// Helper attached to the connection.
    pub helper: Option<String>,
}

/// TCP flag bits as in the TCP header (`--tcp-flags`, `tcp flags`).
pub mod tcp_flags {
    /// FIN.
    pub const FIN: u8 = 0x01;
    /// SYN.
    pub const SYN: u8 = 0x02;
    /// RST.
    pub const RST: u8 = 0x04;
    /// PSH.
    pub const PSH: u8 = 0x08;
    /// ACK.
    pub const ACK: u8 = 0x10;
    /// URG.
    pub const URG: u8 = 0x20;
    /// ECE.
    pub const ECE: u8 = 0x40;
    /// CWR.
    pub const CWR: u8 = 0x80;
}

/// Link-layer packet type (`-m pkttype`, `meta pkttype`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Default)]
#[serde(rename_all = "lowercase")]
pub enum PktType {
    /// To this host's MAC (or locally generated).
    #[default]
    Unicast,
    /// Link broadcast.
    Broadcast,
    /// Link multicast.
    Multicast,
    /// Unicast to another host (promiscuous).
    Otherhost,
}

/// The packet being evaluated.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Packet {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol number (6 tcp, 17 udp, 132 sctp, 1 icmp, 58 icmpv6).
    pub proto: u8,
    /// Source port (tcp/udp/sctp).
    pub sport: Option<u16>,
    /// Destination port (tcp/udp/sctp).
    pub dport: Option<u16>,
    /// ICMP / ICMPv6 type and code.
    pub icmp: Option<(u8, u8)>,
    /// TCP flags ([`tcp_flags`]); 0 for other protocols.
    pub tcp_flags: u8,
    /// Total IP length in bytes.
    pub len: u32,
    /// TTL / hop limit.
    pub ttl: u8,
    /// TOS / traffic class byte (DSCP in the upper 6 bits).
    pub tos: u8,
    /// A non-first fragment (`-f`).
    pub fragment: bool,
    /// Packet mark (`skb->mark`).
    pub mark: u32,
    /// Conntrack information.
    pub ct: CtInfo,
    /// Input interface (PREROUTING, INPUT, FORWARD).
    pub iif: Option<String>,
    /// Output interface (FORWARD, OUTPUT, POSTROUTING).
    pub oif: Option<String>,
    /// Bridge port the frame entered on (br_netfilter).
    pub physdev_in: Option<String>,
    /// Bridge port the frame leaves on (br_netfilter).
    pub physdev_out: Option<String>,
    /// The packet is being bridged (br_netfilter calls iptables for it).
    pub bridged: bool,
    /// Link-layer packet type.
    pub pkttype: PktType,
    /// Source MAC (`-m mac`), lowercase `aa:bb:..`.
    pub src_mac: Option<String>,
    /// Owning socket's uid, for locally generated packets (`-m owner`).
    pub uid: Option<u32>,
    /// Owning socket's gid, for locally generated packets (`-m owner`).
    pub gid: Option<u32>,
    /// Reverse-path lookups for `-m rpfilter` (PREROUTING); `None` makes it unknown.
    pub rpf: Option<Rpf>,
}

impl Packet {
    /// A new-connection packet with defaults: TTL 64, length 60, SYN for TCP.
    pub fn new(
        src: IpAddr,
        dst: IpAddr,
        proto: u8,
        sport: Option<u16>,
        dport: Option<u16>,
    ) -> Packet {
        Packet {
            src,
            dst,
            proto,
            sport,
            dport,
            icmp: None,
            tcp_flags: if proto == 6 { tcp_flags::SYN } else { 0 },
            len: 60,
            ttl: 64,
            tos: 0,
            fragment: false,
            mark: 0,
            ct: CtInfo::default(),
            iif: None,
            oif: None,
            physdev_in: None,
            physdev_out: None,
            bridged: false,
            pkttype: PktType::Unicast,
            src_mac: None,
            uid: None,
            gid: None,
            rpf: None,
        }
    }

    /// Address family of the packet.
    pub fn family(&self) -> IpFamily {
        match self.dst {
            IpAddr::V4(_) => IpFamily::Ipv4,
            IpAddr::V6(_) => IpFamily::Ipv6,
        }
    }
}

/// A local address of the host.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LocalAddr {
    /// Interface it is configured on.
    pub iface: String,
    /// The address.
    pub addr: IpAddr,
    /// Prefix length.
    pub prefix_len: u8,
    /// The subnet's broadcast address, if any (v4).
    pub broadcast: Option<IpAddr>,
}

/// A listening / bound socket, for `-m socket` and `socket` expressions.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ListenSocket {
    /// IP protocol (6 or 17).
    pub proto: u8,
    /// Bound address (unspecified = any).
    pub addr: IpAddr,
    /// Bound port.
    pub port: u16,
    /// `IP_TRANSPARENT` set.
    pub transparent: bool,
}

/// Host state the matches need beyond the packet itself.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct HostContext {
    /// Local addresses by interface (addrtype `LOCAL`, `BROADCAST`; MASQUERADE source).
    pub addresses: Vec<LocalAddr>,
    /// Listening sockets (`-m socket`).
    pub sockets: Vec<ListenSocket>,
    /// Interface groups (`-m devgroup`, `meta iifgroup`), name → group.
    pub iface_groups: Vec<(String, u32)>,
    /// One reverse-path verdict for every packet, if the caller has only that (`-m rpfilter`
    /// whatever its flags); [`Packet::rpf`], when given, takes precedence. `None` with no
    /// [`Packet::rpf`] makes the match unknown.
    pub rpfilter_ok: Option<bool>,
}

/// What a reverse lookup found (`rpfilter_lookup_reverse`: the route to the packet's source,
/// from its destination, as if it came in on `lo`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum RpfRoute {
    /// No route (or a rule that refuses).
    NoRoute,
    /// A unicast route; `via_iif` when one of its next hops uses the input interface.
    Unicast {
        /// A next hop leaves by the input interface.
        via_iif: bool,
        /// The route, as `ip route` prints it.
        route: String,
    },
    /// A local route (the source is an address of this host).
    Local {
        /// Its device is the input interface.
        via_iif: bool,
        /// The route.
        route: String,
    },
    /// Any other route type (blackhole, unreachable, prohibit, broadcast, …).
    Other {
        /// The route.
        route: String,
    },
}

/// The reverse-path lookups `-m rpfilter` needs, computed by the caller (which holds the
/// routing tables) for the packet as it enters the hook.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Rpf {
    /// The packet came in on a loopback device (`rpfilter_is_loopback`: always passes).
    pub loopback: bool,
    /// The lookup with mark 0 (without `--validmark`).
    pub unmarked: RpfRoute,
    /// Lookups with a mark (`--validmark`), for the marks the caller evaluated.
    pub marked: Vec<(u32, RpfRoute)>,
    /// Policy rules select on fwmark: the mark can change the lookup. When false every mark
    /// gives [`Rpf::unmarked`].
    pub mark_sensitive: bool,
    /// The `fwmark VALUE/MASK` selectors of the policy rules: two marks that match the same
    /// selectors get the same lookup, so a mark not in [`Rpf::marked`] takes the result of one
    /// that is equivalent.
    pub selectors: Vec<(u32, u32)>,
}

impl Rpf {
    /// The lookup for `mark`: computed for it, or for an equivalent mark (same selectors
    /// match), or `None`.
    pub fn for_mark(&self, mark: u32) -> Option<&RpfRoute> {
        if !self.mark_sensitive {
            return Some(&self.unmarked);
        }
        let sig = |m: u32| -> Vec<bool> {
            self.selectors
                .iter()
                .map(|&(v, k)| (m ^ v) & k == 0)
                .collect()
        };
        let want = sig(mark);
        self.marked
            .iter()
            .find(|(m, _)| *m == mark)
            .or_else(|| self.marked.iter().find(|(m, _)| sig(*m) == want))
            .map(|(_, r)| r)
    }
}

/// The bounds that keep one evaluation finite on hostile or looping rulesets. Reaching one ends
/// the branch concerned with [`Verdict::Unknown`] naming the rule and the limit.
pub mod limits {
    /// Deepest call stack of chains (jumps not yet returned from). The kernel allows fewer
    /// (x_tables refuses loops at load time; nft's jump stack is 16 deep).
    pub const MAX_CHAIN_DEPTH: usize = 64;
    /// Most jumps and gotos together on one path of one evaluation (a `-g`/`goto` loop never
    /// deepens the stack, so the depth bound alone does not stop it).
    pub const MAX_TRANSFERS_PER_PATH: u32 = 1024;
    /// Most rule steps of one evaluation, all branches together: every rule examined counts
    /// one, and a fork counts the size of the state it copies (trail and assumptions), so
    /// this bounds both the time and the memory of an evaluation.
    pub const MAX_RULE_STEPS: u64 = 1_000_000;
    /// Default of [`crate::EvalOptions::max_branches`]: most branches (forks) per evaluation.
    pub const DEFAULT_MAX_BRANCHES: usize = 4096;
}

/// Options of one evaluation.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EvalOptions {
    /// Run nat tables / nat-type base chains (only the first packet of a connection sees them).
    pub nat: bool,
    /// Evaluate as a bridged packet (br_netfilter; also runs `bridge`-family base chains).
    pub bridged: bool,
    /// Record rules that were evaluated and did not match in the trail (default: only
    /// matched rules, policies and unknowns).
    pub record_misses: bool,
    /// Upper bound on explored branches (forks); beyond it the branch that would fork ends as
    /// unknown, naming the rule ([`limits::DEFAULT_MAX_BRANCHES`] by default).
    pub max_branches: usize,
}

impl Default for EvalOptions {
    fn default() -> Self {
        EvalOptions {
            nat: true,
            bridged: false,
            record_misses: false,
            max_branches: limits::DEFAULT_MAX_BRANCHES,
        }
    }
}

/// `--reject-with` / nft `reject with`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum RejectWith {
    /// ICMP port unreachable (the iptables default for v4).
    IcmpPortUnreachable,
    /// ICMPv6 port unreachable (the ip6tables default).
    Icmp6PortUnreachable,
    /// TCP RST.
    TcpReset,
    /// Any other ICMP/ICMPv6 code, by its iptables name.
    Other(String),
}

/// The final fate of the packet at this hook.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum Verdict {
    /// Every table let it through.
    Accept,
    /// Silently dropped.
    Drop,
    /// Dropped with an error sent back.
    Reject {
        /// Kind of error.
        with: RejectWith,
    },
    /// Sent to userspace (`NFQUEUE`/`QUEUE`); fate unknown.
    Queue {
        /// Queue number.
        num: u16,
    },
    /// Could not be decided: an unmodelled target, a line or policy that did not parse, or a
    /// [`limits`] bound reached (too many branches, steps, jumps + gotos or nesting).
    Unknown {
        /// Why, naming the rule.
        reason: String,
    },
}

impl Verdict {
    /// Short lowercase name (`accept`, `drop`, `reject`, `queue`, `unknown`).
    pub fn name(&self) -> &'static str {
        match self {
            Verdict::Accept => "accept",
            Verdict::Drop => "drop",
            Verdict::Reject { .. } => "reject",
            Verdict::Queue { .. } => "queue",
            Verdict::Unknown { .. } => "unknown",
        }
    }
}

/// An inclusive address range (`--to-destination A-B`); `lo == hi` for one address.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct AddrRange {
    /// First address.
    pub lo: IpAddr,
    /// Last address.
    pub hi: IpAddr,
}

/// An inclusive port range; `lo == hi` for one port.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
pub struct PortRange {
    /// First port.
    pub lo: u16,
    /// Last port.
    pub hi: u16,
}

impl PortRange {
    /// One port.
    pub fn one(p: u16) -> PortRange {
        PortRange { lo: p, hi: p }
    }
    /// Whether `p` is inside.
    pub fn contains(&self, p: u16) -> bool {
        self.lo <= p && p <= self.hi
    }
}

/// A NAT action, as data (the datapath applies it and records the conntrack mapping).
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "kebab-case", tag = "kind")]
pub enum NatAction {
    /// Destination NAT.
    Dnat {
        /// New destination address(es); `None` keeps the address (port-only DNAT).
        addr: Option<AddrRange>,
        /// New destination port(s); `None` keeps the port.
        ports: Option<PortRange>,
        /// `--random`.
        random: bool,
        /// `--persistent`.
        persistent: bool,
    },
    /// Source NAT.
    Snat {
        /// New source address(es); `None` keeps the address.
        addr: Option<AddrRange>,
        /// New source port(s).
        ports: Option<PortRange>,
        /// `--random`.
        random: bool,
        /// `--random-fully`.
        random_fully: bool,
        /// `--persistent`.
        persistent: bool,
    },
    /// Source NAT to the output interface's address.
    Masquerade {
        /// `--to-ports`.
        ports: Option<PortRange>,
        /// `--random`.
        random: bool,
        /// `--random-fully`.
        random_fully: bool,
    },
    /// Destination NAT to the input interface's primary address (or 127.0.0.1 / ::1 in OUTPUT).
    Redirect {
        /// `--to-ports`.
        ports: Option<PortRange>,
        /// `--random`.
        random: bool,
    },
}

impl NatAction {
    /// Destination NAT (DNAT or REDIRECT) rather than source NAT.
    pub fn is_dnat(&self) -> bool {
        matches!(self, NatAction::Dnat { .. } | NatAction::Redirect { .. })
    }
}

/// Conntrack effects of raw-table style targets.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct CtEffects {
    /// `NOTRACK` / `CT --notrack` / nft `notrack`: the packet is untracked.
    pub notrack: bool,
    /// `CT --zone`.
    pub zone: Option<u16>,
    /// `CT --helper`.
    pub helper: Option<String>,
}

/// `TPROXY` target, as data.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Tproxy {
    /// `--on-ip` (None: the incoming interface's address).
    pub addr: Option<IpAddr>,
    /// `--on-port` (0: the packet's destination port).
    pub port: u16,
    /// `--tproxy-mark value/mask` applied.
    pub mark: Option<(u32, u32)>,
}

/// Whether a rule matched the packet.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Matched {
    /// All matches held.
    Yes,
    /// Some match failed.
    No,
    /// Taken by the `-m statistic` / `numgen` branch that matched.
    Random,
    /// Not taken by the random branch.
    RandomNot,
    /// Rests on an unknown fact (or could not be parsed); on this branch the rule matched.
    AssumedYes,
    /// Rests on an unknown fact; on this branch the rule did not match.
    AssumedNo,
    /// A built-in chain's policy (not a rule).
    Policy,
}

/// One rule evaluated on the way (or a chain policy).
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct RuleHit {
    /// Which backend.
    pub backend: Backend,
    /// `ip`, `ip6`, `inet`, `bridge`, `netdev`.
    pub family: &'static str,
    /// Table name.
    pub table: Arc<str>,
    /// Chain name.
    pub chain: Arc<str>,
    /// 1-based position in the chain (`iptables -L --line-numbers`); 0 for a policy.
    pub index: u32,
    /// nft rule handle, if native nft.
    pub handle: Option<u64>,
    /// The rule's original text (iptables-save line, or the nft rule as JSON); for a policy,
    /// the chain declaration.
    pub text: Text,
    /// `[packets:bytes]` from the dump, if present.
    pub counters: Option<(u64, u64)>,
    /// Whether it matched.
    pub matched: Matched,
}

/// An unknown fact this outcome assumes the value of.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Assumption {
    /// Stable identity of the fact, independent of the rule that asked: the construct with its
    /// arguments and the packet values it looks at (e.g. `ipset KUBE-X contains 10.0.0.1`,
    /// `-m recent --rcheck --name x [tcp 1.1.1.1:1000 -> 2.2.2.2:80]`, an nft comparison).
    /// Two assumptions with the same key are the same fact.
    pub key: String,
    /// `table/chain#index` of the first rule on the path that asked.
    pub rule: String,
    /// Why the fact is unknown (e.g. `-m recent` is not modelled, the ipset was not collected).
    pub what: String,
    /// The value assumed for the construct itself (before any `!` of the rule that asked):
    /// `true` = the construct matches (e.g. the address is in the set).
    pub matched: bool,
}

/// One possible result of evaluating a hook.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Outcome {
    /// Probability of this branch (conditional on `assumptions`).
    pub probability: f64,
    /// Verdict.
    pub verdict: Verdict,
    /// Packet mark after the hook.
    pub mark: u32,
    /// Connection mark after the hook.
    pub ct_mark: u32,
    /// NAT set up at this hook (DNAT/REDIRECT at PREROUTING/OUTPUT, SNAT/MASQUERADE at
    /// POSTROUTING/INPUT). Later tables in the same hook already saw the rewritten packet.
    pub nat: Option<NatAction>,
    /// Conntrack effects.
    pub ct: CtEffects,
    /// TPROXY, if applied.
    pub tproxy: Option<Tproxy>,
    /// Rules passed, in order.
    pub trail: Vec<RuleHit>,
    /// Unknown matches and their assumed values.
    pub assumptions: Vec<Assumption>,
}

impl Outcome {
    /// Apply the mark and connmark changes of this outcome to `pkt` (not the NAT).
    pub fn apply_marks(&self, pkt: &mut Packet) {
        pkt.mark = self.mark;
        pkt.ct.mark = self.ct_mark;
    }

    /// The rules that decided: trail entries that matched (any `Matched` but `No`).
    pub fn matched_rules(&self) -> impl Iterator<Item = &RuleHit> {
        self.trail.iter().filter(|h| {
            !matches!(
                h.matched,
                Matched::No | Matched::RandomNot | Matched::AssumedNo
            )
        })
    }
}

/// A problem found while parsing, with its position.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Diagnostic {
    /// Which input (`iptables-save (legacy, ipv4)`, `nft -j`, `ipset save`).
    pub source: String,
    /// 1-based line (for JSON: the rule's position in the `nftables` array).
    pub line: u32,
    /// 1-based column (byte offset in the line + 1).
    pub column: u32,
    /// What is wrong.
    pub message: String,
    /// The offending text.
    pub text: String,
}

impl std::fmt::Display for Diagnostic {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}:{}: {}: {}",
            self.source, self.line, self.column, self.message, self.text
        )
    }
}

/// A source could not be parsed at all (e.g. the nft JSON is not JSON).
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ParseError(pub Diagnostic);

/// Every firewall source of one network namespace, parsed and indexed.
#[derive(Debug, Clone)]
pub struct Ruleset {
    /// `iptables-save` dumps.
    pub(crate) ipt: Vec<ipt::Dump>,
    /// Native nftables.
    pub(crate) nft: nft::NftRuleset,
    /// ipsets.
    pub(crate) ipsets: ipset::Ipsets,
    pub(crate) diagnostics: Vec<Diagnostic>,
}

impl Ruleset {
    /// Parse everything in a snapshot's [`netray_snapshot::Firewall`].
    ///
    /// Errors only when a source cannot be read at all (nft JSON that is not JSON); bad lines
    /// become error items and [`Ruleset::diagnostics`].
    pub fn from_firewall(fw: &netray_snapshot::Firewall) -> Result<Ruleset, ParseError> {
        let mut diagnostics = Vec::new();
        let mut dumps = Vec::new();
        for d in &fw.iptables {
            let dump = ipt::parse_dump(d.backend, d.family, Arc::from(d.text.as_str()));
            diagnostics.extend(dump.diagnostics.iter().cloned());
            dumps.push(dump);
        }
        let ipsets = match &fw.ipset {
            Some(t) => ipset::Ipsets::parse(t),
            None => ipset::Ipsets::default(),
        };
        diagnostics.extend(ipsets.diagnostics.iter().cloned());
        let nft = match &fw.nft_json {
            Some(j) => {
                // Tables iptables-nft manages are read from their iptables-save text.
                let skip: Vec<(IpFamily, String)> = dumps
                    .iter()
                    .filter(|d| d.backend == IptablesBackend::Nft)
                    .flat_map(|d| d.tables.iter().map(move |t| (d.family, t.name.to_string())))
                    .collect();
                nft::NftRuleset::parse(j, &skip)?
            }
            None => nft::NftRuleset::default(),
        };
        diagnostics.extend(nft.diagnostics.iter().cloned());
        Ok(Ruleset {
            ipt: dumps,
            nft,
            ipsets,
            diagnostics,
        })
    }

    /// Problems found while parsing (each bad item also evaluates as unknown).
    pub fn diagnostics(&self) -> &[Diagnostic] {
        &self.diagnostics
    }

    /// The parsed `iptables-save` dumps.
    pub fn iptables(&self) -> &[ipt::Dump] {
        &self.ipt
    }

    /// The parsed native nftables ruleset.
    pub fn nftables(&self) -> &nft::NftRuleset {
        &self.nft
    }

    /// The parsed ipsets.
    pub fn ipsets(&self) -> &ipset::Ipsets {
        &self.ipsets
    }

    /// Evaluate `pkt` at `hook`: every table / base chain attached to the hook for the packet's
    /// family, in kernel priority order. Returns at least one outcome; the probabilities of
    /// the outcomes sum to 1. The same as [`Ruleset::evaluate_given`] with no decided facts.
    pub fn evaluate(
        &self,
        hook: Hook,
        pkt: &Packet,
        ctx: &HostContext,
        opts: &EvalOptions,
    ) -> Vec<Outcome> {
        eval::evaluate(self, hook, pkt, ctx, opts, &[])
    }

    /// [`Ruleset::evaluate`] on a path that already decided some unknown facts (the
    /// assumptions of the outcomes it followed at earlier hooks): a rule asking one of them
    /// follows that decision instead of forking. Only [`Assumption::key`] and
    /// [`Assumption::matched`] are read. Each outcome's `assumptions` lists only the facts
    /// decided in this evaluation; the caller appends them to its path's list.
    pub fn evaluate_given(
        &self,
        hook: Hook,
        pkt: &Packet,
        ctx: &HostContext,
        opts: &EvalOptions,
        decided: &[Assumption],
    ) -> Vec<Outcome> {
        eval::evaluate(self, hook, pkt, ctx, opts, decided)
    }
}
