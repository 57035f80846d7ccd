//! `iptables-save` / `ip6tables-save` text (both backends; restore-style input too) into the
//! rule model.
//!
//! The parser keeps the dump's text and refers to it by byte offsets ([`Span`]), so a 16 MB
//! kube-proxy dump costs one copy of the text plus a compact rule per line.
//!
//! Equality of the model ignores positions ([`Span`] always compares equal) and compares
//! strings by content ([`Str`]), so a ruleset read back from the kernel equals the one loaded.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::{
    AddrRange, CtEffects, Diagnostic, IpFamily, IptablesBackend, NatAction, PortRange, RejectWith,
    Text, Tproxy,
};

/// FxHash (rustc's): fast for short keys such as chain names and addresses.
#[derive(Default, Clone, Copy)]
pub(crate) struct FxHasher(u64);

impl std::hash::Hasher for FxHasher {
    fn write(&mut self, bytes: &[u8]) {
        for chunk in bytes.chunks(8) {
            let mut b = [0u8; 8];
            b[..chunk.len()].copy_from_slice(chunk);
            self.write_u64(u64::from_le_bytes(b));
        }
    }
    fn write_u8(&mut self, i: u8) {
        self.write_u64(i as u64);
    }
    fn write_u16(&mut self, i: u16) {
        self.write_u64(i as u64);
    }
    fn write_u32(&mut self, i: u32) {
        self.write_u64(i as u64);
    }
    fn write_u64(&mut self, i: u64) {
        self.0 = (self.0.rotate_left(5) ^ i).wrapping_mul(0x51_7c_c1_b7_27_22_0a_95);
    }
    fn write_usize(&mut self, i: usize) {
        self.write_u64(i as u64);
    }
    fn finish(&self) -> u64 {
        // Final avalanche: hashbrown takes bucket bits from the low end.
        let mut h = self.0;
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    }
}

/// `HashMap` with [`FxHasher`].
pub(crate) type FxMap<K, V> = HashMap<K, V, std::hash::BuildHasherDefault<FxHasher>>;

/// Byte range into the dump's text. Compares always equal: positions are not semantics.
#[derive(Debug, Clone, Copy, Default)]
pub struct Span {
    /// Start offset.
    pub start: u32,
    /// End offset (exclusive).
    pub end: u32,
}

impl PartialEq for Span {
    fn eq(&self, _: &Span) -> bool {
        true
    }
}

/// A string argument kept in the dump (raw token, possibly quoted). Compares by its unquoted
/// content (through a hash).
#[derive(Debug, Clone, Copy, Default)]
pub struct Str {
    /// The raw token.
    pub span: Span,
    hash: u64,
}

impl PartialEq for Str {
    fn eq(&self, o: &Str) -> bool {
        self.hash == o.hash
    }
}

/// Hash of a string's bytes, eight at a time (length mixed in, final avalanche).
fn str_hash(b: &[u8]) -> u64 {
    const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
    let mut h = (b.len() as u64).wrapping_mul(K);
    let mut chunks = b.chunks_exact(8);
    for c in &mut chunks {
        let w = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    let r = chunks.remainder().len();
    if r != 0 {
        // The last `r` bytes as a little-endian word (zero-padded), read with whole loads
        // rather than a copy into a stack buffer (which stalls the load that follows it).
        let n = b.len();
        let w = if n >= 8 {
            u64::from_le_bytes(word(&b[n - 8..])) >> (8 * (8 - r))
        } else if n >= 4 {
            let lo = u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]]));
            let hi = u64::from(u32::from_le_bytes([b[n - 4], b[n - 3], b[n - 2], b[n - 1]]));
            lo | hi << (8 * (n - 4))
        } else {
            u64::from(b[0])
                | u64::from(b[n / 2]) << (8 * (n / 2))
                | u64::from(b[n - 1]) << (8 * (n - 1))
        };
        h = (h.rotate_left(5) ^ w).wrapping_mul(K);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    h
}

/// The first eight bytes of `b` (which has at least eight).
#[inline]
fn word(b: &[u8]) -> [u8; 8] {
    [b[0], b[1], b[2], b[3], b[4], b[5], b[6], b[7]]
}

/// [`str_hash`] of the unquoted content of a raw token.
fn unquoted_hash(raw: &str) -> u64 {
    let b = raw.as_bytes();
    if b.len() >= 2 && (b[0] == b'"' || b[0] == b'\'') && b[b.len() - 1] == b[0] {
        let inner = &b[1..b.len() - 1];
        if memchr::memchr(b'\\', inner).is_none() {
            return str_hash(inner);
        }
        return str_hash(unquote(raw).as_bytes());
    }
    str_hash(b)
}

/// Unquote an iptables-save token (`"a b"`, `'a'`, `\"` escapes).
pub fn unquote(raw: &str) -> std::borrow::Cow<'_, str> {
    let b = raw.as_bytes();
    if b.len() >= 2 && (b[0] == b'"' || b[0] == b'\'') && b[b.len() - 1] == b[0] {
        let inner = &raw[1..raw.len() - 1];
        if inner.contains('\\') {
            let mut out = String::with_capacity(inner.len());
            let mut it = inner.chars();
            while let Some(c) = it.next() {
                if c == '\\' {
                    if let Some(n) = it.next() {
                        out.push(n);
                    }
                } else {
                    out.push(c);
                }
            }
            std::borrow::Cow::Owned(out)
        } else {
            std::borrow::Cow::Borrowed(inner)
        }
    } else {
        std::borrow::Cow::Borrowed(raw)
    }
}

/// An interface name as in `-i`/`-o`/`--physdev-in`, `+` meaning "any suffix".
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct IfName {
    bytes: [u8; 16],
    len: u8,
    /// Ends with `+`: matches every name starting with the rest.
    pub wildcard: bool,
}

impl IfName {
    /// Parse `eth0`, `veth+`; `None` when longer than 15 bytes.
    pub fn parse(s: &str) -> Option<IfName> {
        let (name, wildcard) = match s.strip_suffix('+') {
            Some(n) => (n, true),
            None => (s, false),
        };
        if name.len() > 15 {
            return None;
        }
        let mut bytes = [0u8; 16];
        bytes[..name.len()].copy_from_slice(name.as_bytes());
        Some(IfName {
            bytes,
            len: name.len() as u8,
            wildcard,
        })
    }

    /// The name without the `+`.
    pub fn name(&self) -> &str {
        std::str::from_utf8(&self.bytes[..self.len as usize]).unwrap_or("")
    }

    /// Whether interface `dev` matches.
    pub fn matches(&self, dev: &str) -> bool {
        if self.wildcard {
            dev.as_bytes().starts_with(&self.bytes[..self.len as usize])
        } else {
            dev.as_bytes() == &self.bytes[..self.len as usize]
        }
    }
}

impl std::fmt::Display for IfName {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}{}", self.name(), if self.wildcard { "+" } else { "" })
    }
}

/// A value with a `!` flag.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Neg<T> {
    /// The value.
    pub v: T,
    /// Negated with `!`.
    pub neg: bool,
}

/// ICMP type with a code range (`--icmp-type 3/3`); `any` is type 255 in the kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct IcmpType {
    /// Type (255 = any).
    pub ty: u8,
    /// Lowest code.
    pub code_lo: u8,
    /// Highest code.
    pub code_hi: u8,
}

/// `-m statistic` mode.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Stat {
    /// `--mode random --probability p`.
    Random(f64),
    /// `--mode nth --every n --packet p`.
    Nth {
        /// `--every`.
        every: u32,
        /// `--packet`.
        packet: u32,
    },
}

/// Which ports `-m multiport` looks at.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortSide {
    /// `--sports`.
    Src,
    /// `--dports`.
    Dst,
    /// `--ports`.
    Both,
}

/// `-m conntrack` options.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct CtMatch {
    /// `--ctstate` (bits as [`state`]).
    pub state: Option<Neg<u8>>,
    /// `--ctstatus` ([`crate::ct_status`] bits).
    pub status: Option<Neg<u32>>,
    /// `--ctproto`.
    pub proto: Option<Neg<u8>>,
    /// `--ctorigsrc`.
    pub orig_src: Option<Neg<IpNet>>,
    /// `--ctorigdst`.
    pub orig_dst: Option<Neg<IpNet>>,
    /// `--ctreplsrc`.
    pub repl_src: Option<Neg<IpNet>>,
    /// `--ctrepldst`.
    pub repl_dst: Option<Neg<IpNet>>,
    /// `--ctorigsrcport`.
    pub orig_sport: Option<Neg<PortRange>>,
    /// `--ctorigdstport`.
    pub orig_dport: Option<Neg<PortRange>>,
    /// `--ctreplsrcport`.
    pub repl_sport: Option<Neg<PortRange>>,
    /// `--ctrepldstport`.
    pub repl_dport: Option<Neg<PortRange>>,
    /// `--ctdir` (true = REPLY).
    pub dir_reply: Option<bool>,
    /// `--ctexpire` (not modelled: makes the match unknown).
    pub expire: Option<Neg<(u32, u32)>>,
}

/// State bits of `--state` / `--ctstate`.
pub mod state {
    /// INVALID.
    pub const INVALID: u8 = 1;
    /// ESTABLISHED.
    pub const ESTABLISHED: u8 = 2;
    /// RELATED.
    pub const RELATED: u8 = 4;
    /// NEW.
    pub const NEW: u8 = 8;
    /// UNTRACKED.
    pub const UNTRACKED: u8 = 16;
    /// SNAT (virtual, ctstate only).
    pub const SNAT: u8 = 32;
    /// DNAT (virtual, ctstate only).
    pub const DNAT: u8 = 64;
}

/// Address types of `-m addrtype` (bit = 1 << RTN_*).
pub mod addrtype {
    /// UNSPEC.
    pub const UNSPEC: u16 = 1 << 0;
    /// UNICAST.
    pub const UNICAST: u16 = 1 << 1;
    /// LOCAL.
    pub const LOCAL: u16 = 1 << 2;
    /// BROADCAST.
    pub const BROADCAST: u16 = 1 << 3;
    /// ANYCAST.
    pub const ANYCAST: u16 = 1 << 4;
    /// MULTICAST.
    pub const MULTICAST: u16 = 1 << 5;
    /// BLACKHOLE.
    pub const BLACKHOLE: u16 = 1 << 6;
    /// UNREACHABLE.
    pub const UNREACHABLE: u16 = 1 << 7;
    /// PROHIBIT.
    pub const PROHIBIT: u16 = 1 << 8;
    /// THROW.
    pub const THROW: u16 = 1 << 9;
    /// NAT.
    pub const NAT: u16 = 1 << 10;
    /// XRESOLVE.
    pub const XRESOLVE: u16 = 1 << 11;
}

/// Direction flags of `-m set --match-set NAME src,dst,...` (true = src).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SetDirs {
    /// Number of dimensions given.
    pub len: u8,
    /// Bit i set: dimension i is `src`.
    pub src_bits: u8,
}

impl SetDirs {
    /// Whether dimension `i` takes the source.
    pub fn is_src(&self, i: usize) -> bool {
        self.src_bits & (1 << i) != 0
    }
}

/// A comparison for `-m ttl`/`-m hl`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cmp {
    /// `--ttl-eq`.
    Eq,
    /// `--ttl-lt`.
    Lt,
    /// `--ttl-gt`.
    Gt,
}

/// `--src-range` / `--dst-range` of `-m iprange`.
pub type IpRangeSpec = Option<Neg<(IpAddr, IpAddr)>>;

/// One match module of a rule (the `-s/-d/-i/-o/-p/-f` basics live in [`Rule`]).
#[derive(Debug, Clone, PartialEq)]
pub enum Match {
    /// `-m tcp`.
    Tcp {
        /// `--sport`.
        sport: Option<Neg<PortRange>>,
        /// `--dport`.
        dport: Option<Neg<PortRange>>,
        /// `--tcp-flags mask comp` / `--syn`.
        flags: Option<Neg<(u8, u8)>>,
        /// `--tcp-option` (unknown: options are not modelled).
        option: Option<Neg<u8>>,
    },
    /// `-m udp`.
    Udp {
        /// `--sport`.
        sport: Option<Neg<PortRange>>,
        /// `--dport`.
        dport: Option<Neg<PortRange>>,
    },
    /// `-m sctp`.
    Sctp {
        /// `--sport`.
        sport: Option<Neg<PortRange>>,
        /// `--dport`.
        dport: Option<Neg<PortRange>>,
        /// `--chunk-types` present (not modelled: unknown).
        chunks: bool,
    },
    /// `-m icmp --icmp-type`.
    Icmp(Option<Neg<IcmpType>>),
    /// `-m icmp6 --icmpv6-type`.
    Icmp6(Option<Neg<IcmpType>>),
    /// `-m multiport`.
    Multiport {
        /// Which ports.
        side: PortSide,
        /// Ports and ranges.
        ports: Box<[PortRange]>,
        /// `!`.
        neg: bool,
    },
    /// `-m mark --mark v/m`.
    Mark(Neg<(u32, u32)>),
    /// `-m connmark --mark v/m`.
    Connmark(Neg<(u32, u32)>),
    /// `-m conntrack`.
    Conntrack(Box<CtMatch>),
    /// `-m state --state`.
    State(Neg<u8>),
    /// `-m addrtype`.
    Addrtype {
        /// `--src-type`.
        src: Option<Neg<u16>>,
        /// `--dst-type`.
        dst: Option<Neg<u16>>,
        /// `--limit-iface-in`.
        limit_in: bool,
        /// `--limit-iface-out`.
        limit_out: bool,
    },
    /// `-m comment --comment` (evidence; always matches).
    Comment(Str),
    /// `-m statistic`.
    Statistic(Neg<Stat>),
    /// `-m set --match-set NAME dirs`.
    Set {
        /// Set name.
        name: Str,
        /// Directions.
        dirs: SetDirs,
        /// `!`.
        neg: bool,
        /// `--return-nomatch`.
        return_nomatch: bool,
    },
    /// `-m physdev` (boxed: the largest match, rare; keeps [`Match`] at 32 bytes).
    Physdev(Box<PhysdevMatch>),
    /// `-m iprange`.
    Iprange(Box<(IpRangeSpec, IpRangeSpec)>),
    /// `-m length --length lo:hi`.
    Length(Neg<(u32, u32)>),
    /// `-m ttl` (v4) / `-m hl` (v6).
    Ttl {
        /// Comparison.
        op: Cmp,
        /// Value.
        v: u8,
        /// `!`.
        neg: bool,
    },
    /// `-m tos --tos v/m`.
    Tos(Neg<(u8, u8)>),
    /// `-m dscp --dscp v`.
    Dscp(Neg<u8>),
    /// `-m pkttype --pkt-type`.
    Pkttype(Neg<crate::PktType>),
    /// `-m mac --mac-source`.
    Mac(Neg<[u8; 6]>),
    /// `-m owner`.
    Owner {
        /// `--uid-owner lo[-hi]`.
        uid: Option<Neg<(u32, u32)>>,
        /// `--gid-owner lo[-hi]`.
        gid: Option<Neg<(u32, u32)>>,
        /// `--socket-exists`.
        socket_exists: Option<bool>,
    },
    /// `-m socket`.
    Socket {
        /// `--transparent`.
        transparent: bool,
        /// `--nowildcard`.
        nowildcard: bool,
    },
    /// `-m devgroup`.
    Devgroup {
        /// `--src-group v/m`.
        src: Option<Neg<(u32, u32)>>,
        /// `--dst-group v/m`.
        dst: Option<Neg<(u32, u32)>>,
    },
    /// `-m rpfilter`.
    Rpfilter {
        /// `--invert`.
        invert: bool,
        /// `--loose`: any unicast route back will do, whatever its device.
        loose: bool,
        /// `--validmark`: the reverse lookup uses the packet's mark.
        validmark: bool,
        /// `--accept-local`: a local route back (the source is one of ours) passes.
        accept_local: bool,
    },
    /// `-m nfacct` (accounting only: always matches).
    Nfacct,
    /// A module that is parsed but not modelled (recent, limit, hashlimit, u32, string,
    /// ipvs, ...) or not known: evaluates as unknown.
    Opaque {
        /// Module name.
        module: Str,
        /// The module's text (`-m NAME ...options`).
        span: Span,
    },
}

/// `-m physdev` options.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct PhysdevMatch {
    /// `--physdev-in`.
    pub phys_in: Option<Neg<IfName>>,
    /// `--physdev-out`.
    pub phys_out: Option<Neg<IfName>>,
    /// `--physdev-is-in`.
    pub is_in: Option<bool>,
    /// `--physdev-is-out`.
    pub is_out: Option<bool>,
    /// `--physdev-is-bridged`.
    pub is_bridged: Option<bool>,
}

const _: () = assert!(std::mem::size_of::<Match>() <= 32);

/// CONNMARK operation (new mark computed as in the kernel).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ConnmarkOp {
    /// `--set-xmark v/m`: ctmark = (ctmark & !m) ^ v.
    Set {
        /// Value.
        value: u32,
        /// Mask.
        mask: u32,
    },
    /// `--save-mark`: ctmark = (ctmark & !ctmask) | (mark & nfmask).
    Save {
        /// `--nfmask`.
        nfmask: u32,
        /// `--ctmask`.
        ctmask: u32,
    },
    /// `--restore-mark`: mark = (mark & !nfmask) | (ctmark & ctmask).
    Restore {
        /// `--nfmask`.
        nfmask: u32,
        /// `--ctmask`.
        ctmask: u32,
    },
}

/// A chain reference in a jump/goto target (by name; `id` indexes [`Table::chains`]).
#[derive(Debug, Clone, Copy)]
pub struct ChainRef {
    /// Index of the chain in its table.
    pub id: u32,
    /// Name as written.
    pub name: Str,
}

impl PartialEq for ChainRef {
    fn eq(&self, o: &ChainRef) -> bool {
        self.name == o.name
    }
}

/// What a rule does when it matches.
#[derive(Debug, Clone, PartialEq)]
pub enum Target {
    /// No `-j`: only counts.
    None,
    /// ACCEPT.
    Accept,
    /// DROP.
    Drop,
    /// RETURN.
    Return,
    /// QUEUE / NFQUEUE.
    Queue(u16),
    /// REJECT.
    Reject(RejectWith),
    /// `-j CHAIN`.
    Jump(ChainRef),
    /// `-g CHAIN`.
    Goto(ChainRef),
    /// DNAT / SNAT / MASQUERADE / REDIRECT.
    Nat(Box<NatAction>),
    /// MARK: mark = (mark & !mask) ^ value.
    Mark {
        /// Value.
        value: u32,
        /// Mask.
        mask: u32,
    },
    /// CONNMARK.
    Connmark(ConnmarkOp),
    /// LOG / NFLOG / ULOG / TRACE: non-terminal, no effect on the packet.
    Log(Str),
    /// NOTRACK / CT --notrack / CT --zone / CT --helper.
    Ct(Box<CtEffects>),
    /// TPROXY (terminal: accepts with the mark).
    Tproxy(Box<Tproxy>),
    /// Known non-terminal targets with no effect modelled (CHECKSUM, TCPMSS, CLASSIFY, ...).
    Noop(Str),
    /// Unknown target: the verdict is unknown.
    Unknown(Str),
}

/// The match modules of a rule; derefs to `[Match]`.
pub type Matches = smallvec::SmallVec<[Match; 2]>;

/// One `-A` rule, or an error item for a line that could not be parsed.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// 1-based line in the dump.
    pub line: Lineno,
    /// The line's text (without counters prefix).
    pub span: Span,
    /// `[packets:bytes]`.
    pub counters: Option<(u64, u64)>,
    /// `-s`.
    pub src: Option<Neg<IpNet>>,
    /// `-d`.
    pub dst: Option<Neg<IpNet>>,
    /// `-p` (0 = all).
    pub proto: Option<Neg<u8>>,
    /// `-f` (true) / `! -f` (false).
    pub frag: Option<bool>,
    /// Match modules in order (up to two kept inline: most rules have one or two).
    pub matches: Matches,
    /// Target.
    pub target: Target,
    /// Rarely set fields (`-i`, `-o`, the parse error), boxed so a rule is smaller; `None`
    /// when all of them are unset ([`Rule::iif`], [`Rule::oif`], [`Rule::error`]).
    rare: Option<Box<RuleRare>>,
}

/// The rarely set fields of a [`Rule`].
#[derive(Debug, Clone, Default, PartialEq)]
struct RuleRare {
    iif: Option<Neg<IfName>>,
    oif: Option<Neg<IfName>>,
    error: Option<Box<str>>,
}

impl Rule {
    /// A rule of line `line` with text `span` and nothing else set.
    pub(crate) fn empty(line: u32, span: Span, counters: Option<(u64, u64)>) -> Rule {
        Rule {
            line: Lineno(line),
            span,
            counters,
            src: None,
            dst: None,
            proto: None,
            frag: None,
            matches: Matches::new(),
            target: Target::None,
            rare: None,
        }
    }

    /// `-i`.
    #[inline]
    pub fn iif(&self) -> Option<&Neg<IfName>> {
        self.rare.as_ref().and_then(|r| r.iif.as_ref())
    }

    /// `-o`.
    #[inline]
    pub fn oif(&self) -> Option<&Neg<IfName>> {
        self.rare.as_ref().and_then(|r| r.oif.as_ref())
    }

    /// Set on an error item: the parse error (the rule evaluates as unknown).
    #[inline]
    pub fn error(&self) -> Option<&str> {
        self.rare.as_ref().and_then(|r| r.error.as_deref())
    }

    /// Set `-i`.
    pub fn set_iif(&mut self, v: Option<Neg<IfName>>) {
        self.rare_mut().iif = v;
        self.tidy_rare();
    }

    /// Set `-o`.
    pub fn set_oif(&mut self, v: Option<Neg<IfName>>) {
        self.rare_mut().oif = v;
        self.tidy_rare();
    }

    /// Set (or clear) the parse error.
    pub fn set_error(&mut self, v: Option<Box<str>>) {
        self.rare_mut().error = v;
        self.tidy_rare();
    }

    fn rare_mut(&mut self) -> &mut RuleRare {
        self.rare.get_or_insert_with(Box::default)
    }

    /// Keep `rare` `None` when nothing in it is set (so equal rules compare equal).
    fn tidy_rare(&mut self) {
        if self
            .rare
            .as_deref()
            .is_some_and(|r| *r == RuleRare::default())
        {
            self.rare = None;
        }
    }
}

/// A line number that compares always equal (positions are not semantics).
#[derive(Debug, Clone, Copy, Default)]
pub struct Lineno(pub u32);

impl PartialEq for Lineno {
    fn eq(&self, _: &Lineno) -> bool {
        true
    }
}

/// Chain policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Policy {
    /// ACCEPT.
    Accept,
    /// DROP.
    Drop,
    /// The declaration (`:FORWARD DORP`) or `-P` line did not parse: a packet reaching the
    /// policy gets an unknown verdict naming the line ([`Chain::decl`]); a diagnostic is kept.
    Unparsed,
}

/// A chain.
#[derive(Debug, Clone)]
pub struct Chain {
    /// Name (a slice of the dump's text when declared there: no allocation per chain).
    pub name: Text,
    /// The name as an `Arc<str>` for [`crate::RuleHit`], made on first use.
    name_arc: std::sync::OnceLock<Arc<str>>,
    /// Policy of a built-in chain (`-` for user chains: `None`).
    pub policy: Option<Policy>,
    /// Declaration counters.
    pub counters: Option<(u64, u64)>,
    /// The declaration line.
    pub decl: Span,
    /// Rules in order.
    pub rules: Vec<Rule>,
    pub(crate) index: Option<Box<ChainIndex>>,
}

impl Chain {
    /// The name as an `Arc<str>` (made once, then shared).
    pub(crate) fn name_arc(&self) -> Arc<str> {
        self.name_arc.get_or_init(|| Arc::from(&*self.name)).clone()
    }
}

impl PartialEq for Chain {
    fn eq(&self, o: &Chain) -> bool {
        self.name == o.name && self.policy == o.policy && self.rules == o.rules
    }
}

/// A table.
#[derive(Debug, Clone)]
pub struct Table {
    /// `filter`, `nat`, `mangle`, `raw`, `security`.
    pub name: Arc<str>,
    /// Chains in declaration order.
    pub chains: Vec<Chain>,
    /// Lines of this table that did not parse and could not be attributed to a chain (e.g. an
    /// unterminated quote before the chain name, an unknown command): any packet that reaches
    /// this table gets an unknown verdict naming the first of them.
    pub orphans: Vec<Rule>,
    pub(crate) by_name: ChainNames,
}

/// Chain name → chain id: open addressing over `(hash of the name, id)` slots, so a probe
/// touches one small slot; the name itself is compared only on a hash hit (against the
/// chain, or during the parse against a compact copy of the names).
#[derive(Debug, Clone, Default)]
pub(crate) struct ChainNames {
    slots: Vec<NameSlot>,
    len: usize,
}

#[derive(Debug, Clone, Copy)]
struct NameSlot {
    hash: u64,
    /// Chain id; `u32::MAX`: empty.
    id: u32,
    /// Offset of the name in the parser's name arena (meaningful during the parse only).
    at: u32,
}

const EMPTY_SLOT: NameSlot = NameSlot {
    hash: 0,
    id: u32::MAX,
    at: 0,
};

impl ChainNames {
    fn with_capacity(n: usize) -> ChainNames {
        let cap = (n + n / 3 + 1).next_power_of_two().max(16);
        ChainNames {
            slots: vec![EMPTY_SLOT; cap],
            len: 0,
        }
    }

    /// The id of the first slot with `hash` for which `eq(slot)` holds.
    #[inline]
    fn find(&self, hash: u64, mut eq: impl FnMut(u32, u32) -> bool) -> Option<u32> {
        if self.slots.is_empty() {
            return None;
        }
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        loop {
            let s = self.slots[i];
            if s.id == u32::MAX {
                return None;
            }
            if s.hash == hash && eq(s.id, s.at) {
                return Some(s.id);
            }
            i = (i + 1) & mask;
        }
    }

    /// Add an entry (the caller checked the name is not present).
    fn insert(&mut self, hash: u64, id: u32, at: u32) {
        if (self.len + 1) * 4 > self.slots.len() * 3 {
            let cap = (self.slots.len() * 2).max(16);
            let old = std::mem::replace(&mut self.slots, vec![EMPTY_SLOT; cap]);
            self.len = 0;
            for s in old.into_iter().filter(|s| s.id != u32::MAX) {
                self.insert(s.hash, s.id, s.at);
            }
        }
        let mask = self.slots.len() - 1;
        let mut i = hash as usize & mask;
        while self.slots[i].id != u32::MAX {
            i = (i + 1) & mask;
        }
        self.slots[i] = NameSlot { hash, id, at };
        self.len += 1;
    }

    /// Chain id of `name` among `chains`.
    fn get(&self, chains: &[Chain], name: &str) -> Option<u32> {
        self.find(str_hash(name.as_bytes()), |id, _| {
            &*chains[id as usize].name == name
        })
    }
}

/// Chain names of one table during the parse: each as `[len: u32 LE][bytes]`, in declaration
/// order (a hash hit in [`ChainNames`] is confirmed here with one nearby read).
/// Also `(hash, offset)` by chain id, to try likely chain ids first ([`NameArena::near`]).
#[derive(Debug, Default)]
struct NameArena {
    bytes: Vec<u8>,
    keys: Vec<(u64, u32)>,
}

impl NameArena {
    fn with_capacity(n: usize) -> NameArena {
        NameArena {
            bytes: Vec::with_capacity(n * 32),
            keys: Vec::with_capacity(n),
        }
    }

    /// Add the name of the next chain id.
    fn push(&mut self, name: &[u8], hash: u64) -> u32 {
        let at = self.bytes.len() as u32;
        self.bytes
            .extend_from_slice(&(name.len() as u32).to_le_bytes());
        self.bytes.extend_from_slice(name);
        self.keys.push((hash, at));
        at
    }

    #[inline]
    fn is(&self, at: u32, name: &[u8]) -> bool {
        let at = at as usize;
        let Some(l) = self.bytes.get(at..at + 4) else {
            return false;
        };
        let len = u32::from_le_bytes([l[0], l[1], l[2], l[3]]) as usize;
        len == name.len() && self.bytes.get(at + 4..at + 4 + len) == Some(name)
    }

    /// The chain id among `ids` (tried in order) called `name`, if any: chains are mostly
    /// declared in the order their rules and the jumps to them appear, so the caller's guesses
    /// usually hit without a probe of the hash table.
    #[inline]
    fn near(&self, ids: impl IntoIterator<Item = u32>, name: &[u8], hash: u64) -> Option<u32> {
        ids.into_iter().find(|&id| {
            self.keys
                .get(id as usize)
                .is_some_and(|&(h, at)| h == hash && self.is(at, name))
        })
    }
}

impl PartialEq for Table {
    fn eq(&self, o: &Table) -> bool {
        if self.name != o.name || self.chains.len() != o.chains.len() {
            return false;
        }
        // Chain order differs between backends; compare by name.
        self.chains
            .iter()
            .all(|c| o.chain(&c.name).is_some_and(|oc| oc == c))
    }
}

impl Table {
    /// The chain called `name`.
    pub fn chain(&self, name: &str) -> Option<&Chain> {
        self.chain_id(name).map(|i| &self.chains[i as usize])
    }

    /// Index in [`Table::chains`] of the chain called `name`.
    pub fn chain_id(&self, name: &str) -> Option<u32> {
        self.by_name.get(&self.chains, name)
    }
}

/// One parsed `iptables-save` dump.
#[derive(Debug, Clone)]
pub struct Dump {
    /// Backend.
    pub backend: IptablesBackend,
    /// Family.
    pub family: IpFamily,
    /// The text (kept: rules refer to it).
    pub text: Arc<str>,
    /// Tables in order.
    pub tables: Vec<Table>,
    /// Lines outside any table that look like content (rules, declarations): they belong to
    /// a table whose header is missing or broken, so any packet of this family that reaches
    /// a hook gets an unknown verdict naming the first of them.
    pub orphans: Vec<Rule>,
    /// Problems found.
    pub diagnostics: Vec<Diagnostic>,
}

impl PartialEq for Dump {
    fn eq(&self, o: &Dump) -> bool {
        self.family == o.family
            && self.tables.len() == o.tables.len()
            && self
                .tables
                .iter()
                .all(|t| o.table(&t.name).is_some_and(|ot| ot == t))
    }
}

impl Dump {
    /// The table called `name`.
    pub fn table(&self, name: &str) -> Option<&Table> {
        self.tables.iter().find(|t| &*t.name == name)
    }

    /// Text of a span.
    pub fn slice(&self, s: Span) -> &str {
        &self.text[s.start as usize..s.end as usize]
    }

    /// Kept text of a span.
    pub fn text_of(&self, s: Span) -> Text {
        Text::new(&self.text, s.start as usize, s.end as usize)
    }

    /// Unquoted content of a string argument.
    pub fn str(&self, s: &Str) -> std::borrow::Cow<'_, str> {
        unquote(self.slice(s.span))
    }

    /// Human name of this source (`iptables-save (legacy, ipv4)`).
    pub fn source_name(&self) -> String {
        source_name(self.backend, self.family)
    }

    /// 1-based line of the text at byte offset `at`.
    pub fn line_of(&self, at: u32) -> u32 {
        let at = (at as usize).min(self.text.len());
        memchr::memchr_iter(b'\n', &self.text.as_bytes()[..at]).count() as u32 + 1
    }
}

fn source_name(backend: IptablesBackend, family: IpFamily) -> String {
    format!(
        "{} ({}, {})",
        match family {
            IpFamily::Ipv4 => "iptables-save",
            IpFamily::Ipv6 => "ip6tables-save",
        },
        match backend {
            IptablesBackend::Legacy => "legacy",
            IptablesBackend::Nft => "nft",
        },
        match family {
            IpFamily::Ipv4 => "ipv4",
            IpFamily::Ipv6 => "ipv6",
        }
    )
}

// ---------------------------------------------------------------------------------------------
// Chain index: big chains (KUBE-SERVICES, KUBE-NODEPORTS) are indexed by exact destination
// address and by (protocol, destination port). Lookup yields a superset of the rules that can
// match, in order; every candidate is still evaluated in full.

/// Chains with at least this many rules get an index.
pub(crate) const INDEX_MIN_RULES: usize = 32;

#[derive(Debug, Clone, Default)]
pub(crate) struct ChainIndex {
    pub(crate) by_dst: FxMap<IpAddr, Vec<u32>>,
    pub(crate) by_port: FxMap<(u8, u16), Vec<u32>>,
    pub(crate) rest: Vec<u32>,
}

impl ChainIndex {
    fn build(rules: &[Rule]) -> ChainIndex {
        let mut ix = ChainIndex::default();
        for (i, r) in rules.iter().enumerate() {
            let i = i as u32;
            if r.error().is_none() {
                if let Some(Neg { v: net, neg: false }) = r.dst
                    && net.prefix_len() == net.max_prefix_len()
                {
                    ix.by_dst.entry(net.addr()).or_default().push(i);
                    continue;
                }
                if let Some(Neg { v: p, neg: false }) = r.proto
                    && p != 0
                {
                    let dport = r.matches.iter().find_map(|m| match m {
                        Match::Tcp {
                            dport: Some(Neg { v, neg: false }),
                            ..
                        }
                        | Match::Udp {
                            dport: Some(Neg { v, neg: false }),
                            ..
                        }
                        | Match::Sctp {
                            dport: Some(Neg { v, neg: false }),
                            ..
                        } if v.lo == v.hi => Some(v.lo),
                        _ => None,
                    });
                    if let Some(d) = dport {
                        ix.by_port.entry((p, d)).or_default().push(i);
                        continue;
                    }
                }
            }
            ix.rest.push(i);
        }
        ix
    }

    /// Candidate rule indices ≥ `from` for a packet, in order, merged from the three lists.
    pub(crate) fn candidates(
        &self,
        from: u32,
        dst: IpAddr,
        proto: u8,
        dport: Option<u16>,
    ) -> Candidates<'_> {
        let tail = |v: &'_ [u32]| -> usize { v.partition_point(|&x| x < from) };
        let a: &[u32] = self.by_dst.get(&dst).map(|v| v.as_slice()).unwrap_or(&[]);
        let b: &[u32] = dport
            .and_then(|d| self.by_port.get(&(proto, d)))
            .map(|v| v.as_slice())
            .unwrap_or(&[]);
        let c: &[u32] = &self.rest;
        Candidates {
            lists: [&a[tail(a)..], &b[tail(b)..], &c[tail(c)..]],
        }
    }
}

pub(crate) struct Candidates<'a> {
    lists: [&'a [u32]; 3],
}

impl Iterator for Candidates<'_> {
    type Item = u32;
    fn next(&mut self) -> Option<u32> {
        let mut best: Option<(usize, u32)> = None;
        for (i, l) in self.lists.iter().enumerate() {
            if let Some(&x) = l.first()
                && best.is_none_or(|(_, b)| x < b)
            {
                best = Some((i, x));
            }
        }
        let (i, x) = best?;
        self.lists[i] = &self.lists[i][1..];
        Some(x)
    }
}

// ---------------------------------------------------------------------------------------------
// Parser

/// Parse one dump. Never fails: problems become diagnostics and error items.
pub fn parse_dump(backend: IptablesBackend, family: IpFamily, text: Arc<str>) -> Dump {
    parse_dump_with(backend, family, text, true)
}

/// [`parse_dump`] without the fast path for common kube-proxy rule shapes (every line through
/// the general tokenizer and option parser): for differential tests of the fast path.
#[doc(hidden)]
pub fn parse_dump_general(backend: IptablesBackend, family: IpFamily, text: Arc<str>) -> Dump {
    parse_dump_with(backend, family, text, false)
}

/// The backend an `iptables-save` header names: `# Generated by iptables-nft-save …` or a
/// version marked `(nf_tables)` is the nft backend; `…-legacy-save`, `(legacy)` or an
/// unmarked `iptables-save vX` (every nft variant marks itself) is legacy. With the header's
/// 1-based line and text; `None` without a `# Generated by` line before the first table.
pub fn header_backend(text: &str) -> Option<(IptablesBackend, u32, &str)> {
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.is_empty() {
            continue;
        }
        let c = l.strip_prefix('#')?;

        let Some(rest) = c.trim_start().strip_prefix("Generated by ") else {
            continue;
        };
        let tool = rest.split_whitespace().next().unwrap_or("");
        if !tool.ends_with("tables-save") && !tool.ends_with("-save") {
            return None;
        }
        let b = if tool.contains("-nft-") || rest.contains("(nf_tables)") {
            IptablesBackend::Nft
        } else {
            IptablesBackend::Legacy
        };
        return Some((b, i as u32 + 1, line));
    }
    None
}

/// The lines of `text` holding U+FFFD: bytes that were not UTF-8, replaced when the dump was
/// read (see `netray_snapshot::text`): 1-based line numbers.
pub fn replaced_lines(text: &str) -> Vec<u32> {
    let mut out: Vec<u32> = Vec::new();
    let mut line = 1u32;
    let mut from = 0usize;
    for at in memchr::memmem::find_iter(text.as_bytes(), "\u{FFFD}".as_bytes()) {
        line += memchr::memchr_iter(b'\n', &text.as_bytes()[from..at]).count() as u32;
        from = at;
        if out.last() != Some(&line) {
            out.push(line);
        }
    }
    out
}

fn parse_dump_with(backend: IptablesBackend, family: IpFamily, text: Arc<str>, fast: bool) -> Dump {
    // The header is the tool's own word on its backend.
    let given = backend;
    let (backend, header) = match header_backend(&text) {
        Some((b, line, hdr)) => (b, (b != given).then(|| (line, hdr.to_string()))),
        None => (backend, None),
    };
    let mut p = Parser {
        fast,
        text: text.clone(),
        family,
        source: source_name(backend, family),
        tables: Vec::new(),
        orphans: Vec::new(),
        names: Vec::new(),
        diags: Vec::new(),
        toks: Vec::with_capacity(32),
        matches: Vec::with_capacity(8),
        pending: Vec::new(),
        cur: None,
        last_chain: None,
        near: (usize::MAX, 0, 0),
        ahead: Vec::new(),
        ahead_i: 0,
    };
    p.run();
    let name = |b: IptablesBackend| match b {
        IptablesBackend::Legacy => "legacy",
        IptablesBackend::Nft => "nft",
    };
    if let Some((line, hdr)) = header {
        p.diags.insert(
            0,
            Diagnostic {
                source: p.source.clone(),
                line,
                column: 1,
                message: format!(
                    "the header names the {} backend: read as {}, not as the {} backend it was given as",
                    name(backend),
                    name(backend),
                    name(given)
                ),
                text: hdr.chars().take(200).collect(),
            },
        );
    }
    let bad = replaced_lines(&text);
    for &line in bad.iter().take(10) {
        p.diags.push(Diagnostic {
            source: p.source.clone(),
            line,
            column: 1,
            message: "bytes that are not UTF-8 were read as U+FFFD on this line".into(),
            text: text
                .lines()
                .nth(line as usize - 1)
                .unwrap_or("")
                .chars()
                .take(200)
                .collect(),
        });
    }
    if bad.len() > 10 {
        p.diags.push(Diagnostic {
            source: p.source.clone(),
            line: bad[10],
            column: 1,
            message: format!(
                "… and {} more lines with bytes that are not UTF-8",
                bad.len() - 10
            ),
            text: String::new(),
        });
    }
    Dump {
        backend,
        family,
        text,
        tables: p.tables,
        orphans: p.orphans,
        diagnostics: p.diags,
    }
}

struct Parser {
    text: Arc<str>,
    family: IpFamily,
    source: String,
    tables: Vec<Table>,
    /// Content lines outside any table ([`Dump::orphans`]).
    orphans: Vec<Rule>,
    /// Per table: its chain names, for [`ChainNames`] lookups during the parse.
    names: Vec<NameArena>,
    diags: Vec<Diagnostic>,
    toks: Vec<(u32, u32)>,
    matches: Vec<Match>,
    /// Per table: rules with a jump/goto still to resolve at COMMIT.
    pending: Vec<bool>,
    cur: Option<usize>,
    last_chain: Option<(usize, u32)>,
    /// Guesses for chain lookups in the fast path: (table, highest chain id that got a rule,
    /// last jump target).
    near: (usize, u32, u32),
    /// Use the fast path for common rule shapes ([`Parser::fast_rule_line`]).
    fast: bool,
    /// Ends (`\n` offsets) of the lines after the current one, found by the look-ahead that
    /// sizes a chain ([`same_prefix_lines`]); [`Parser::run`] takes them from `ahead_i` on
    /// instead of searching for them again.
    ahead: Vec<u32>,
    ahead_i: usize,
}

/// A parse error inside a line: message and the token span concerned.
struct PErr {
    msg: String,
    at: (u32, u32),
}

type PResult<T> = Result<T, PErr>;

fn builtin_chains(table: &str) -> &'static [&'static str] {
    match table {
        "filter" => &["INPUT", "FORWARD", "OUTPUT"],
        "nat" => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
        "mangle" => &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
        "raw" => &["PREROUTING", "OUTPUT"],
        "security" => &["INPUT", "FORWARD", "OUTPUT"],
        _ => &[],
    }
}

impl Parser {
    fn run(&mut self) {
        let text = self.text.clone();
        let text: &str = &text;
        let bytes = text.as_bytes();
        let mut pos = 0usize;
        let mut lineno = 0u32;
        while pos < bytes.len() {
            lineno += 1;
            let end = match self.ahead.get(self.ahead_i) {
                Some(&e) => {
                    self.ahead_i += 1;
                    e as usize
                }
                None => memchr::memchr(b'\n', &bytes[pos..]).map_or(bytes.len(), |i| pos + i),
            };
            let mut line_end = end;
            if line_end > pos && bytes[line_end - 1] == b'\r' {
                line_end -= 1;
            }
            self.line(text, lineno, pos, line_end);
            pos = end + 1;
        }
        if let Some(t) = self.cur.take() {
            self.finish_table(t);
        }
    }

    fn diag(&mut self, line: u32, line_start: usize, line_end: usize, at: usize, msg: String) {
        self.diags.push(Diagnostic {
            source: self.source.clone(),
            line,
            column: (at.saturating_sub(line_start) + 1) as u32,
            message: msg,
            text: self.text[line_start..line_end].to_string(),
        });
    }

    fn line(&mut self, text: &str, lineno: u32, start: usize, end: usize) {
        let b = &text.as_bytes()[start..end];
        // Trim leading whitespace.
        let mut s = start;
        while s < end && (text.as_bytes()[s] == b' ' || text.as_bytes()[s] == b'\t') {
            s += 1;
        }
        if s == end || b.is_empty() {
            return;
        }
        match text.as_bytes()[s] {
            b'#' => {}
            b'*' => {
                if let Some(t) = self.cur.take() {
                    self.diag(
                        lineno,
                        start,
                        end,
                        s,
                        "table started before COMMIT of the previous one".into(),
                    );
                    self.finish_table(t);
                }
                let name = text[s + 1..end].trim();
                if name.is_empty() || name.contains(' ') {
                    self.diag(lineno, start, end, s, "bad table header".into());
                    return;
                }
                let idx = match self.tables.iter().position(|t| &*t.name == name) {
                    Some(i) => i,
                    None => {
                        // Room for the chain declarations that follow (up to the first rule).
                        let rest = &text.as_bytes()[end..];
                        let decls = memchr::memmem::find(rest, b"\n-A").unwrap_or(rest.len());
                        let n = memchr::memchr_iter(b'\n', &rest[..decls]).count() + 8;
                        let mut t = Table {
                            name: Arc::from(name),
                            chains: Vec::with_capacity(n),
                            orphans: Vec::new(),
                            by_name: ChainNames::with_capacity(n),
                        };
                        let mut names = NameArena::with_capacity(n);
                        // Restore-style input may omit built-in chain declarations.
                        for c in builtin_chains(name) {
                            add_chain(
                                &mut t,
                                &mut names,
                                &self.text,
                                c,
                                Some(Policy::Accept),
                                None,
                                Span::default(),
                            );
                        }
                        self.tables.push(t);
                        self.names.push(names);
                        self.tables.len() - 1
                    }
                };
                self.cur = Some(idx);
            }
            b':' => {
                let Some(t) = self.cur else {
                    let msg = "chain declaration outside a table";
                    self.diag(lineno, start, end, s, msg.into());
                    self.orphan(None, lineno, s, end, msg);
                    return;
                };
                if self.fast && self.fast_chain_decl(text, t, s, end) {
                    return;
                }
                self.chain_decl(text, t, lineno, start, s, end);
            }
            b'C' if text[s..end].trim_end() == "COMMIT" => {
                if let Some(t) = self.cur.take() {
                    self.finish_table(t);
                } else {
                    self.diag(lineno, start, end, s, "COMMIT outside a table".into());
                }
            }
            _ => {
                let Some(t) = self.cur else {
                    let msg = "rule outside a table (missing `*table`)";
                    self.diag(lineno, start, end, s, msg.into());
                    self.orphan(None, lineno, s, end, msg);
                    return;
                };
                self.rule_line(text, t, lineno, start, s, end);
            }
        }
    }

    /// `:NAME POLICY [p:b]` (single spaces, no quotes) as [`Parser::chain_decl`] reads it;
    /// `false`: another form, nothing done.
    fn fast_chain_decl(&mut self, text: &str, t: usize, s: usize, end: usize) -> bool {
        let mut c = Cursor {
            b: &text.as_bytes()[..end],
            pos: s + 1,
        };
        let (Some(n), Some(p), Some(k)) = (c.plain(), c.plain(), c.plain()) else {
            return false;
        };
        if !c.at_end() {
            return false;
        }
        let policy = match &text[p.0..p.1] {
            "ACCEPT" => Some(Policy::Accept),
            "DROP" => Some(Policy::Drop),
            "-" => None,
            _ => return false,
        };
        let counters = match &text[k.0..k.1] {
            "[0:0]" => Some((0, 0)),
            k => match parse_counters(k) {
                Some(x) => Some(x),
                None => return false,
            },
        };
        add_chain(
            &mut self.tables[t],
            &mut self.names[t],
            &self.text,
            &text[n.0..n.1],
            policy,
            counters,
            Span {
                start: s as u32,
                end: end as u32,
            },
        );
        true
    }

    /// `:NAME POLICY [p:b]` in any other form than [`Parser::fast_chain_decl`] reads. Never
    /// drops the line: a policy that does not parse becomes [`Policy::Unparsed`], bad counters
    /// are left out, and a line without a usable name is a table orphan; each with a diagnostic.
    fn chain_decl(
        &mut self,
        text: &str,
        t: usize,
        lineno: u32,
        line_start: usize,
        s: usize,
        end: usize,
    ) {
        let b = text.as_bytes();
        // Whitespace-separated tokens (chain names and policies are never quoted).
        let mut toks: Vec<(usize, usize)> = Vec::with_capacity(3);
        let mut i = s + 1;
        while i < end && toks.len() < 3 {
            while i < end && (b[i] == b' ' || b[i] == b'\t') {
                i += 1;
            }
            if i >= end {
                break;
            }
            let st = i;
            while i < end && b[i] != b' ' && b[i] != b'\t' {
                i += 1;
            }
            toks.push((st, i));
        }
        let Some(&(na, nb)) = toks.first() else {
            let msg = "chain name missing";
            self.diag(lineno, line_start, end, s, msg.into());
            self.orphan(Some(t), lineno, s, end, msg);
            return;
        };
        let name = &text[na..nb];
        if name.starts_with(['"', '\'']) {
            let msg = "quoted chain name";
            self.diag(lineno, line_start, end, na, msg.into());
            self.orphan(Some(t), lineno, s, end, msg);
            return;
        }
        let policy = match toks.get(1).map(|&(a, b)| (a, &text[a..b])) {
            Some((_, "ACCEPT")) => Some(Policy::Accept),
            Some((_, "DROP")) => Some(Policy::Drop),
            Some((_, "-")) | None => None,
            Some((a, p)) => {
                self.diag(
                    lineno,
                    line_start,
                    end,
                    a,
                    format!("bad chain policy `{p}`: a packet reaching it is unknown"),
                );
                Some(Policy::Unparsed)
            }
        };
        let counters = match toks.get(2) {
            Some(&(a, b)) => {
                let c = parse_counters(&text[a..b]);
                if c.is_none() {
                    self.diag(lineno, line_start, end, a, "bad counters".into());
                }
                c
            }
            None => None,
        };
        add_chain(
            &mut self.tables[t],
            &mut self.names[t],
            &self.text,
            name,
            policy,
            counters,
            Span {
                start: s as u32,
                end: end as u32,
            },
        );
    }

    /// Keep a line that did not parse and belongs to no known chain as an error item of table
    /// `t` (or of the dump when `None`), so that evaluation cannot ignore it.
    fn orphan(&mut self, t: Option<usize>, lineno: u32, s: usize, end: usize, msg: &str) {
        let span = Span {
            start: s as u32,
            end: end as u32,
        };
        let r = error_rule(lineno, span, None, msg);
        match t {
            Some(t) => self.tables[t].orphans.push(r),
            None => self.orphans.push(r),
        }
    }

    fn finish_table(&mut self, t: usize) {
        if self.pending.get(t).copied().unwrap_or(false) {
            self.resolve_jumps(t);
        }
        for c in &mut self.tables[t].chains {
            c.rules.shrink_to_fit();
            c.index =
                (c.rules.len() >= INDEX_MIN_RULES).then(|| Box::new(ChainIndex::build(&c.rules)));
        }
    }

    /// Resolve jumps to chains declared after the rule (restore-style input).
    fn resolve_jumps(&mut self, t: usize) {
        let mut still = false;
        let table = &mut self.tables[t];
        let names = &self.names[t];
        let by_name = &table.by_name;
        let text = &self.text;
        for c in &mut table.chains {
            for r in &mut c.rules {
                let (cr, is_jump) = match &r.target {
                    Target::Jump(cr) if cr.id == u32::MAX => (*cr, true),
                    Target::Goto(cr) if cr.id == u32::MAX => (*cr, false),
                    _ => continue,
                };
                let n = unquote(&text[cr.name.span.start as usize..cr.name.span.end as usize]);
                match lookup(by_name, names, n.as_bytes()) {
                    Some(id) => {
                        let cr = ChainRef { id, name: cr.name };
                        r.target = if is_jump {
                            Target::Jump(cr)
                        } else {
                            Target::Goto(cr)
                        };
                    }
                    // Not a chain: a target extension netray does not know.
                    None if is_jump
                        && n.bytes()
                            .all(|b| b.is_ascii_uppercase() || b.is_ascii_digit() || b == b'_') =>
                    {
                        r.target = Target::Unknown(cr.name);
                    }
                    None => {
                        still = true;
                        r.set_error(Some(format!("jump to undeclared chain {n}").into()));
                        self.diags.push(Diagnostic {
                            source: self.source.clone(),
                            line: r.line.0,
                            column: (cr.name.span.start - r.span.start) + 1,
                            message: format!("target chain `{n}` is not declared in the table"),
                            text: text[r.span.start as usize..r.span.end as usize].to_string(),
                        });
                    }
                }
            }
        }
        self.pending[t] = still;
    }

    fn rule_line(
        &mut self,
        text: &str,
        t: usize,
        lineno: u32,
        line_start: usize,
        s: usize,
        end: usize,
    ) {
        if self.fast_rule_line(text, t, lineno, s, end) {
            return;
        }
        if let Err(at) = tokenize(text, s, end, &mut self.toks) {
            self.diag(lineno, line_start, end, at, "unterminated quote".into());
            self.error_rule(text, t, lineno, s, end, at, "unterminated quote");
            return;
        }
        let toks = std::mem::take(&mut self.toks);
        let mut i = 0;
        let mut counters = None;
        let tok = |k: usize| &text[toks[k].0 as usize..toks[k].1 as usize];
        if !toks.is_empty() && tok(0).starts_with('[') {
            counters = parse_counters(tok(0));
            if counters.is_none() {
                self.diag(
                    lineno,
                    line_start,
                    end,
                    toks[0].0 as usize,
                    "bad counters".into(),
                );
            }
            i = 1;
        }
        let rule_start = toks.get(i).map_or(s, |t| t.0 as usize);
        let cmd = if i < toks.len() { tok(i) } else { "" };
        let r = match cmd {
            "-A" | "--append" | "-I" | "--insert" => {
                let Some(&chain_t) = toks.get(i + 1) else {
                    let msg = "chain name missing";
                    self.diag(lineno, line_start, end, rule_start, msg.into());
                    self.orphan(Some(t), lineno, s, end, msg);
                    self.toks = toks;
                    return;
                };
                let chain = &text[chain_t.0 as usize..chain_t.1 as usize];
                let mut k = i + 2;
                let mut insert_at = None;
                if cmd == "-I" || cmd == "--insert" {
                    insert_at = Some(0usize);
                    if let Some(n) = toks
                        .get(k)
                        .and_then(|&(a, b)| text[a as usize..b as usize].parse::<usize>().ok())
                    {
                        insert_at = Some(n.saturating_sub(1));
                        k += 1;
                    }
                }
                let cached = self
                    .last_chain
                    .filter(|&(lt, lc)| {
                        lt == t && &*self.tables[t].chains[lc as usize].name == chain
                    })
                    .map(|(_, lc)| lc);
                let chain_id = match cached
                    .or_else(|| lookup(&self.tables[t].by_name, &self.names[t], chain.as_bytes()))
                {
                    Some(c) => c,
                    None => {
                        self.diag(
                            lineno,
                            line_start,
                            end,
                            chain_t.0 as usize,
                            format!("chain `{chain}` is not declared"),
                        );
                        add_chain(
                            &mut self.tables[t],
                            &mut self.names[t],
                            &self.text,
                            chain,
                            None,
                            None,
                            Span::default(),
                        )
                    }
                };
                let span = Span {
                    start: rule_start as u32,
                    end: end as u32,
                };
                let mut rp = RuleParser {
                    text,
                    toks: &toks,
                    k,
                    family: self.family,
                    by_name: &self.tables[t].by_name,
                    names: &self.names[t],
                    matches: &mut self.matches,
                };
                rp.matches.clear();
                let rule = match rp.parse(lineno, span, counters) {
                    Ok(r) => r,
                    Err(e) => {
                        self.diag(lineno, line_start, end, e.at.0 as usize, e.msg.clone());
                        error_rule(lineno, span, counters, &e.msg)
                    }
                };
                self.add_rule(
                    text,
                    t,
                    chain_id,
                    chain_t.1 as usize,
                    s,
                    end,
                    insert_at,
                    rule,
                );
                Ok(())
            }
            "-N" | "--new-chain" => match toks.get(i + 1) {
                Some(&(a, b)) => {
                    let name = text[a as usize..b as usize].to_string();
                    add_chain(
                        &mut self.tables[t],
                        &mut self.names[t],
                        &self.text,
                        &name,
                        None,
                        None,
                        Span {
                            start: s as u32,
                            end: end as u32,
                        },
                    );
                    Ok(())
                }
                // Declares nothing: no rule is lost.
                None => Err(("chain name missing".to_string(), false)),
            },
            "-P" | "--policy" => match (toks.get(i + 1), toks.get(i + 2)) {
                (Some(&(a, b)), Some(&(c, d))) => {
                    let name = &text[a as usize..b as usize];
                    let pol = match &text[c as usize..d as usize] {
                        "ACCEPT" => Some(Policy::Accept),
                        "DROP" => Some(Policy::Drop),
                        _ => None,
                    };
                    match (
                        lookup(&self.tables[t].by_name, &self.names[t], name.as_bytes()),
                        pol,
                    ) {
                        (Some(id), Some(p)) => {
                            self.tables[t].chains[id as usize].policy = Some(p);
                            Ok(())
                        }
                        (None, _) => Err((format!("no built-in chain `{name}`"), true)),
                        (Some(id), None) => {
                            // The policy is unknown from here on: a packet reaching it is too.
                            let ch = &mut self.tables[t].chains[id as usize];
                            ch.policy = Some(Policy::Unparsed);
                            ch.decl = Span {
                                start: s as u32,
                                end: end as u32,
                            };
                            Err((
                                format!(
                                    "bad policy `{}`: a packet reaching it is unknown",
                                    &text[c as usize..d as usize]
                                ),
                                false,
                            ))
                        }
                    }
                }
                _ => Err(("-P needs a chain and a policy".to_string(), true)),
            },
            "-F" | "--flush" => {
                match toks.get(i + 1) {
                    Some(&(a, b)) => {
                        let name = &text[a as usize..b as usize];
                        if let Some(id) =
                            lookup(&self.tables[t].by_name, &self.names[t], name.as_bytes())
                        {
                            self.tables[t].chains[id as usize].rules.clear();
                        }
                    }
                    None => self.tables[t]
                        .chains
                        .iter_mut()
                        .for_each(|c| c.rules.clear()),
                }
                Ok(())
            }
            _ => Err((
                format!("unsupported command `{cmd}` (expected -A, -I, -N, -P or -F)"),
                true,
            )),
        };
        if let Err((msg, orphan)) = r {
            if orphan {
                self.orphan(Some(t), lineno, s, end, &msg);
            }
            self.diag(lineno, line_start, end, rule_start, msg);
        }
        self.toks = toks;
    }

    /// Append (or insert) a parsed rule to chain `chain_id` of table `t`.
    #[allow(clippy::too_many_arguments)]
    fn add_rule(
        &mut self,
        text: &str,
        t: usize,
        chain_id: u32,
        chain_end: usize,
        s: usize,
        end: usize,
        insert_at: Option<usize>,
        rule: Rule,
    ) {
        if rule.span.start as usize == s {
            self.before_rule(text, t, chain_id, chain_end, s, end);
        } else {
            self.shrink_previous(t, chain_id);
        }
        if let Target::Jump(ChainRef { id: u32::MAX, .. })
        | Target::Goto(ChainRef { id: u32::MAX, .. }) = rule.target
        {
            if self.pending.len() <= t {
                self.pending.resize(t + 1, false);
            }
            self.pending[t] = true;
        }
        let rules = &mut self.tables[t].chains[chain_id as usize].rules;
        match insert_at {
            Some(n) => rules.insert(n.min(rules.len()), rule),
            None => rules.push(rule),
        }
    }

    /// Before a rule is added to chain `chain_id` (its text starting at `s`): the previous
    /// chain gives back spare capacity, and a chain's first rule sizes the chain.
    fn before_rule(
        &mut self,
        text: &str,
        t: usize,
        chain_id: u32,
        chain_end: usize,
        s: usize,
        end: usize,
    ) {
        self.shrink_previous(t, chain_id);
        let rules = &mut self.tables[t].chains[chain_id as usize].rules;
        if rules.capacity() == 0 {
            // First rule of the chain: size it for the run of lines that follow with
            // the same `-A CHAIN ` prefix (no regrowth, no spare capacity).
            self.ahead.clear();
            self.ahead_i = 0;
            let n = same_prefix_lines(text, end, chain_end, s, &mut self.ahead);
            self.tables[t].chains[chain_id as usize]
                .rules
                .reserve_exact(1 + n);
        }
    }

    fn shrink_previous(&mut self, t: usize, chain_id: u32) {
        // Rules of one chain are usually contiguous: give back the spare capacity of
        // the previous chain when moving on (keeps peak memory near the final size).
        if let Some((pt, pc)) = self.last_chain
            && (pt, pc) != (t, chain_id)
            // Only small chains: a big chain interleaved with others (KUBE-SERVICES)
            // would be copied again on every regrowth.
            && let Some(c) = self.tables.get_mut(pt).and_then(|tb| tb.chains.get_mut(pc as usize))
            && c.rules.len() < 64
        {
            c.rules.shrink_to_fit();
        }
        self.last_chain = Some((t, chain_id));
    }

    /// The common kube-proxy rule shapes without the general tokenizer and option parser.
    /// `false`: not handled (the model is as before; the general path parses the line and
    /// gives the same model for every line accepted here).
    fn fast_rule_line(&mut self, text: &str, t: usize, lineno: u32, s: usize, end: usize) -> bool {
        if !self.fast {
            return false;
        }
        let b = &text.as_bytes()[..end];
        if !b[s..].starts_with(b"-A ") {
            return false;
        }
        let mut c = Cursor { b, pos: s + 3 };
        let Some((ca, cb)) = c.plain() else {
            return false;
        };
        let chain = &text.as_bytes()[ca..cb];
        if self.near.0 != t {
            self.near = (t, 0, u32::MAX);
        }
        let (_, frontier, last_target) = self.near;
        let names = &self.names[t];
        let hash = str_hash(chain);
        let last = self.last_chain.filter(|&(lt, _)| lt == t).map(|(_, lc)| lc);
        let Some(chain_id) = names
            .near(
                [last.unwrap_or(u32::MAX), frontier.wrapping_add(1)],
                chain,
                hash,
            )
            .or_else(|| lookup_hashed(&self.tables[t].by_name, names, chain, hash))
        else {
            return false;
        };
        // Capacity bookkeeping as for any rule of this chain (harmless if the line then goes
        // to the general path, which finds it done).
        self.before_rule(text, t, chain_id, cb, s, end);
        let Table {
            chains, by_name, ..
        } = &mut self.tables[t];
        let mut rp = RuleParser {
            text,
            toks: &[(0, 0)],
            k: 1,
            family: self.family,
            by_name,
            names: &self.names[t],
            matches: &mut self.matches,
        };
        let c1 = chain_id.wrapping_add(1);
        let near = [
            last_target,
            c1,
            c1.wrapping_add(1),
            c1.wrapping_add(2),
            c1.wrapping_add(3),
            c1.wrapping_add(4),
            frontier.max(chain_id).wrapping_add(1),
        ];
        // Parsed in place at the end of the chain (a rule is a few hundred bytes).
        let rules = &mut chains[chain_id as usize].rules;
        rules.push(Rule::empty(
            lineno,
            Span {
                start: s as u32,
                end: end as u32,
            },
            None,
        ));
        let Some(r) = rules.last_mut() else {
            return false;
        };
        if rp.fast(r, c, near).is_none() {
            rules.pop();
            return false;
        }
        if let Target::Jump(ChainRef { id, .. }) = r.target {
            self.near.2 = id;
        }
        self.near.1 = frontier.max(chain_id);
        true
    }

    /// A rule line that could not be tokenized (the problem at byte `at`): an error item in
    /// its chain when `[counters] -A|-I CHAIN [N]` is readable before `at`, else a table
    /// orphan. Either way a packet reaching it is unknown.
    #[allow(clippy::too_many_arguments)]
    fn error_rule(
        &mut self,
        text: &str,
        t: usize,
        lineno: u32,
        s: usize,
        end: usize,
        at: usize,
        msg: &str,
    ) {
        let head = &text[s..at.min(end)];
        // Tokens wholly before `at` (followed by whitespace inside `head`).
        let mut toks: Vec<(usize, usize)> = Vec::new();
        let hb = head.as_bytes();
        let mut i = 0;
        while i < hb.len() {
            while i < hb.len() && (hb[i] == b' ' || hb[i] == b'\t') {
                i += 1;
            }
            let st = i;
            while i < hb.len() && hb[i] != b' ' && hb[i] != b'\t' {
                i += 1;
            }
            if i > st && i < hb.len() {
                toks.push((s + st, s + i));
            }
        }
        let tok = |k: usize| toks.get(k).map(|&(a, b)| &text[a..b]);
        let mut k = 0;
        let mut counters = None;
        if tok(0).is_some_and(|x| x.starts_with('[')) {
            counters = tok(0).and_then(parse_counters);
            k = 1;
        }
        let rule_start = toks.get(k).map_or(s, |t| t.0);
        let insert = match tok(k) {
            Some("-A" | "--append") => false,
            Some("-I" | "--insert") => true,
            _ => {
                self.orphan(Some(t), lineno, s, end, msg);
                return;
            }
        };
        let (Some(chain), Some(&(_, chain_end))) = (tok(k + 1), toks.get(k + 1)) else {
            self.orphan(Some(t), lineno, s, end, msg);
            return;
        };
        let insert_at = insert.then(|| {
            tok(k + 2)
                .and_then(|n| n.parse::<usize>().ok())
                .map_or(0, |n| n.saturating_sub(1))
        });
        let chain_id = match lookup(&self.tables[t].by_name, &self.names[t], chain.as_bytes()) {
            Some(c) => c,
            None => add_chain(
                &mut self.tables[t],
                &mut self.names[t],
                &self.text,
                chain,
                None,
                None,
                Span::default(),
            ),
        };
        let span = Span {
            start: rule_start as u32,
            end: end as u32,
        };
        let rule = error_rule(lineno, span, counters, msg);
        self.add_rule(text, t, chain_id, chain_end, s, end, insert_at, rule);
    }
}

/// Number of lines after the one ending at `end` that start with `text[s..name_end]` and a
/// space (the rules of the same chain in a row). A capacity hint only. The ends (`\n`
/// offsets) of those lines are pushed to `ends`.
fn same_prefix_lines(
    text: &str,
    end: usize,
    name_end: usize,
    s: usize,
    ends: &mut Vec<u32>,
) -> usize {
    let b = text.as_bytes();
    let prefix = &b[s..name_end];
    let mut p = end;
    let mut n = 0;
    let mut first = true;
    loop {
        let Some(i) = memchr::memchr(b'\n', &b[p.min(b.len())..]) else {
            return n;
        };
        let nl = p + i;
        // The first one ends the current line (the caller knows it).
        if !first {
            ends.push(nl as u32);
        }
        first = false;
        p = nl + 1;
        let line = &b[p..];
        if line.len() > prefix.len() && line.starts_with(prefix) && line[prefix.len()] == b' ' {
            n += 1;
        } else {
            return n;
        }
    }
}

fn error_rule(lineno: u32, span: Span, counters: Option<(u64, u64)>, msg: &str) -> Rule {
    let mut r = Rule::empty(lineno, span, counters);
    r.set_error(Some(msg.into()));
    r
}

/// Chain id of `name` during the parse.
#[inline]
fn lookup(by_name: &ChainNames, names: &NameArena, name: &[u8]) -> Option<u32> {
    lookup_hashed(by_name, names, name, str_hash(name))
}

#[inline]
fn lookup_hashed(by_name: &ChainNames, names: &NameArena, name: &[u8], hash: u64) -> Option<u32> {
    by_name.find(hash, |_, at| names.is(at, name))
}

fn add_chain(
    t: &mut Table,
    names: &mut NameArena,
    src: &Arc<str>,
    name: &str,
    policy: Option<Policy>,
    counters: Option<(u64, u64)>,
    decl: Span,
) -> u32 {
    let hash = str_hash(name.as_bytes());
    let next = t.chains.len() as u32;
    let id = match lookup_hashed(&t.by_name, names, name.as_bytes(), hash) {
        Some(id) => id,
        None => {
            let at = names.push(name.as_bytes(), hash);
            t.by_name.insert(hash, next, at);
            next
        }
    };
    if id != next {
        let c = &mut t.chains[id as usize];
        if policy.is_some() {
            c.policy = policy;
        }
        if counters.is_some() {
            c.counters = counters;
        }
        c.decl = decl;
        return id;
    }
    // A slice of the dump's text when `name` is one (the usual case), else its own copy.
    let base = src.as_ptr() as usize;
    let at = (name.as_ptr() as usize).wrapping_sub(base);
    let name = if at <= src.len() && name.len() <= src.len() - at {
        Text::new(src, at, at + name.len())
    } else {
        Text::owned(name)
    };
    t.chains.push(Chain {
        name,
        name_arc: std::sync::OnceLock::new(),
        policy,
        counters,
        decl,
        rules: Vec::new(),
        index: None,
    });
    id
}

fn parse_counters(s: &str) -> Option<(u64, u64)> {
    let inner = s.strip_prefix('[')?.strip_suffix(']')?;
    let (a, b) = inner.split_once(':')?;
    Some((a.parse().ok()?, b.parse().ok()?))
}

/// Split `text[s..end]` into whitespace-separated tokens, honouring `"..."` / `'...'` quotes.
/// Err(offset) on an unterminated quote.
fn tokenize(text: &str, s: usize, end: usize, out: &mut Vec<(u32, u32)>) -> Result<(), usize> {
    out.clear();
    let b = &text.as_bytes()[..end];
    let mut i = s;
    loop {
        while i < end && (b[i] == b' ' || b[i] == b'\t') {
            i += 1;
        }
        if i >= end {
            break;
        }
        let st = i;
        let c = b[i];
        if c == b'"' || c == b'\'' {
            i += 1;
            loop {
                match memchr::memchr2(c, b'\\', &b[i..]) {
                    None => return Err(st),
                    Some(n) if b[i + n] == c => {
                        i += n + 1;
                        break;
                    }
                    // A backslash escapes the next byte (which may be the end of the line).
                    Some(n) => i += n + 2,
                }
                if i >= end {
                    return Err(st);
                }
            }
        } else {
            i = token_end(b, i + 1);
        }
        out.push((st as u32, i as u32));
    }
    Ok(())
}

/// First offset ≥ `i` in `b` holding a space or a tab (or `b.len()`), eight bytes at a time.
#[inline]
fn token_end(b: &[u8], mut i: usize) -> usize {
    const LO: u64 = 0x0101_0101_0101_0101;
    const HI: u64 = 0x8080_8080_8080_8080;
    while let Some(w) = b.get(i..i + 8) {
        let w = u64::from_le_bytes(w.try_into().unwrap_or([0; 8]));
        let sp = w ^ (LO * b' ' as u64);
        let tab = w ^ (LO * b'\t' as u64);
        // Zero-byte detection: exact for the lowest zero byte.
        let m = (sp.wrapping_sub(LO) & !sp & HI) | (tab.wrapping_sub(LO) & !tab & HI);
        if m != 0 {
            return i + (m.trailing_zeros() / 8) as usize;
        }
        i += 8;
    }
    while i < b.len() && b[i] != b' ' && b[i] != b'\t' {
        i += 1;
    }
    i
}

/// Reads the tokens of a line the way [`tokenize`] splits them, for the fast path: only
/// single spaces between tokens, no tabs, no quotes outside [`Cursor::value_quoted`].
#[derive(Clone, Copy)]
struct Cursor<'a> {
    /// The text up to the end of the line.
    b: &'a [u8],
    pos: usize,
}

impl Cursor<'_> {
    fn at_end(&self) -> bool {
        self.pos >= self.b.len()
    }

    /// Step over the separator after a token ending at `e`; `None` if it is not exactly one
    /// space followed by another token (or the end of the line).
    #[inline]
    fn advance(&mut self, e: usize) -> Option<()> {
        if e < self.b.len() {
            if self.b[e] != b' ' || matches!(self.b.get(e + 1), None | Some(b' ' | b'\t')) {
                return None;
            }
            self.pos = e + 1;
        } else {
            self.pos = e;
        }
        Some(())
    }

    /// Next token, unquoted.
    #[inline]
    fn plain(&mut self) -> Option<(usize, usize)> {
        let st = self.pos;
        match self.b.get(st) {
            None | Some(b'"' | b'\'' | b' ' | b'\t') => return None,
            _ => {}
        }
        let e = token_end(self.b, st + 1);
        self.advance(e)?;
        Some((st, e))
    }

    /// Next token, which may be a `"..."` string without backslashes.
    #[inline]
    fn value_quoted(&mut self) -> Option<(usize, usize)> {
        if self.b.get(self.pos) != Some(&b'"') {
            return self.plain();
        }
        let st = self.pos;
        let n = memchr::memchr2(b'"', b'\\', &self.b[st + 1..])?;
        let q = st + 1 + n;
        if self.b[q] != b'"' {
            return None;
        }
        self.advance(q + 1)?;
        Some((st, q + 1))
    }
}

/// Parses the options of one rule.
struct RuleParser<'a> {
    text: &'a str,
    toks: &'a [(u32, u32)],
    k: usize,
    family: IpFamily,
    by_name: &'a ChainNames,
    names: &'a NameArena,
    /// Matches of the rule being parsed (scratch, reused across rules).
    matches: &'a mut Vec<Match>,
}

/// What getopt_long makes of a `--opt` token (see `RuleParser::expand`).
enum Expanded {
    /// Exact, or unknown to every table (the caller reports it).
    Same,
    /// A unique abbreviation of this option.
    To(&'static str),
    /// A prefix of several options.
    Ambiguous(Vec<&'static str>),
}

/// iptables' own long options (`xtables` `original_opts`), one id per option.
const BASE_OPTIONS: &[(&str, u8)] = &[
    ("--append", 0),
    ("--delete", 1),
    ("--check", 2),
    ("--insert", 3),
    ("--replace", 4),
    ("--list", 5),
    ("--list-rules", 6),
    ("--flush", 7),
    ("--zero", 8),
    ("--new-chain", 9),
    ("--delete-chain", 10),
    ("--rename-chain", 11),
    ("--policy", 12),
    ("--source", 13),
    ("--src", 14),
    ("--destination", 15),
    ("--dst", 16),
    ("--protocol", 17),
    ("--in-interface", 18),
    ("--jump", 19),
    ("--table", 20),
    ("--verbose", 21),
    ("--numeric", 22),
    ("--out-interface", 23),
    ("--exact", 24),
    ("--fragment", 25),
    ("--version", 26),
    ("--help", 27),
    ("--line-numbers", 28),
    ("--modprobe", 29),
    ("--set-counters", 30),
    ("--goto", 31),
    ("--ipv4", 32),
    ("--ipv6", 33),
    ("--match", 34),
    ("--wait", 35),
    ("--wait-interval", 36),
];

/// The long options of a modelled match module (aliases share an id), as its iptables
/// extension declares them.
fn option_table(module: &str) -> &'static [(&'static str, u8)] {
    const PORTS: &[(&str, u8)] = &[
        ("--source-port", 0),
        ("--sport", 0),
        ("--destination-port", 1),
        ("--dport", 1),
    ];
    match module {
        "tcp" => &[
            ("--source-port", 0),
            ("--sport", 0),
            ("--destination-port", 1),
            ("--dport", 1),
            ("--syn", 2),
            ("--tcp-flags", 3),
            ("--tcp-option", 4),
        ],
        "udp" => PORTS,
        "sctp" => &[
            ("--source-port", 0),
            ("--sport", 0),
            ("--destination-port", 1),
            ("--dport", 1),
            ("--chunk-types", 2),
        ],
        "icmp" => &[("--icmp-type", 0)],
        "icmp6" => &[("--icmpv6-type", 0)],
        "multiport" => &[
            ("--source-ports", 0),
            ("--sports", 0),
            ("--destination-ports", 1),
            ("--dports", 1),
            ("--ports", 2),
        ],
        "mark" | "connmark" => &[("--mark", 0)],
        "conntrack" => &[
            ("--ctstate", 0),
            ("--ctproto", 1),
            ("--ctorigsrc", 2),
            ("--ctorigdst", 3),
            ("--ctreplsrc", 4),
            ("--ctrepldst", 5),
            ("--ctstatus", 6),
            ("--ctexpire", 7),
            ("--ctorigsrcport", 8),
            ("--ctorigdstport", 9),
            ("--ctreplsrcport", 10),
            ("--ctrepldstport", 11),
            ("--ctdir", 12),
        ],
        "state" => &[("--state", 0)],
        "addrtype" => &[
            ("--src-type", 0),
            ("--dst-type", 1),
            ("--limit-iface-in", 2),
            ("--limit-iface-out", 3),
        ],
        "comment" => &[("--comment", 0)],
        "statistic" => &[
            ("--mode", 0),
            ("--probability", 1),
            ("--every", 2),
            ("--packet", 3),
        ],
        "set" => &[
            ("--match-set", 0),
            ("--set", 1),
            ("--return-nomatch", 2),
            ("--update-counters", 3),
            ("--update-subcounters", 4),
            ("--no-update-counters", 5),
            ("--no-update-subcounters", 6),
            ("--packets-eq", 7),
            ("--packets-lt", 8),
            ("--packets-gt", 9),
            ("--bytes-eq", 10),
            ("--bytes-lt", 11),
            ("--bytes-gt", 12),
        ],
        "physdev" => &[
            ("--physdev-in", 0),
            ("--physdev-out", 1),
            ("--physdev-is-in", 2),
            ("--physdev-is-out", 3),
            ("--physdev-is-bridged", 4),
        ],
        "iprange" => &[("--src-range", 0), ("--dst-range", 1)],
        "length" => &[("--length", 0)],
        "ttl" => &[
            ("--ttl-eq", 0),
            ("--ttl-lt", 1),
            ("--ttl-gt", 2),
            ("--ttl", 3),
            ("--hl-eq", 4),
            ("--hl-lt", 5),
            ("--hl-gt", 6),
        ],
        "tos" => &[("--tos", 0)],
        "dscp" => &[("--dscp", 0), ("--dscp-class", 1)],
        "pkttype" => &[("--pkt-type", 0)],
        "mac" => &[("--mac-source", 0)],
        "owner" => &[
            ("--uid-owner", 0),
            ("--gid-owner", 1),
            ("--socket-exists", 2),
            ("--suppl-groups", 3),
        ],
        "socket" => &[
            ("--transparent", 0),
            ("--nowildcard", 1),
            ("--restore-skmark", 2),
        ],
        "devgroup" => &[("--src-group", 0), ("--dst-group", 1)],
        "rpfilter" => &[
            ("--loose", 0),
            ("--validmark", 1),
            ("--accept-local", 2),
            ("--invert", 3),
        ],
        "nfacct" => &[("--nfacct-name", 0)],
        _ => &[],
    }
}

/// The module name of a modelled match (the key of [`option_table`]).
fn match_name(m: &Match) -> &'static str {
    match m {
        Match::Tcp { .. } => "tcp",
        Match::Udp { .. } => "udp",
        Match::Sctp { .. } => "sctp",
        Match::Icmp(_) => "icmp",
        Match::Icmp6(_) => "icmp6",
        Match::Multiport { .. } => "multiport",
        Match::Mark(_) => "mark",
        Match::Connmark(_) => "connmark",
        Match::Conntrack(_) => "conntrack",
        Match::State(_) => "state",
        Match::Addrtype { .. } => "addrtype",
        Match::Comment(_) => "comment",
        Match::Statistic(_) => "statistic",
        Match::Set { .. } => "set",
        Match::Physdev(_) => "physdev",
        Match::Iprange(_) => "iprange",
        Match::Length(_) => "length",
        Match::Ttl { .. } => "ttl",
        Match::Tos(_) => "tos",
        Match::Dscp(_) => "dscp",
        Match::Pkttype(_) => "pkttype",
        Match::Mac(_) => "mac",
        Match::Owner { .. } => "owner",
        Match::Socket { .. } => "socket",
        Match::Devgroup { .. } => "devgroup",
        Match::Rpfilter { .. } => "rpfilter",
        Match::Nfacct => "nfacct",
        Match::Opaque { .. } => "",
    }
}

/// Whether modelled match `m` has option `o` (exact name).
fn match_owns(m: &Match, o: &str) -> bool {
    option_table(match_name(m)).iter().any(|(n, _)| *n == o)
}

/// The match iptables loads implicitly for `-p PROTO` (not for `! -p`).
fn implicit_proto(r: &Rule) -> Option<&'static str> {
    match r.proto {
        Some(Neg { v: 6, neg: false }) => Some("tcp"),
        Some(Neg { v: 17, neg: false }) => Some("udp"),
        Some(Neg { v: 132, neg: false }) => Some("sctp"),
        Some(Neg { v: 1, neg: false }) => Some("icmp"),
        Some(Neg { v: 58, neg: false }) => Some("icmp6"),
        _ => None,
    }
}

/// A match module being built while its options are read.
enum Building {
    None,
    M(Match),
    Opaque { name: Str, start: u32, end: u32 },
}

impl<'a> RuleParser<'a> {
    fn tok(&self, k: usize) -> &'a str {
        let (a, b) = self.toks[k];
        &self.text[a as usize..b as usize]
    }

    fn at(&self, k: usize) -> (u32, u32) {
        self.toks.get(k).copied().unwrap_or_else(|| {
            let e = self.toks.last().map_or(0, |t| t.1);
            (e, e)
        })
    }

    fn err<T>(&self, k: usize, msg: impl Into<String>) -> PResult<T> {
        Err(PErr {
            msg: msg.into(),
            at: self.at(k),
        })
    }

    /// The value of the option at `self.k - 1`: next token, with old-style `!` before it.
    fn value(&mut self, neg: &mut bool) -> PResult<&'a str> {
        if self.k >= self.toks.len() {
            return self.err(
                self.k - 1,
                format!("option `{}` needs a value", self.tok(self.k - 1)),
            );
        }
        let mut v = self.tok(self.k);
        if v == "!" {
            *neg = !*neg;
            self.k += 1;
            if self.k >= self.toks.len() {
                return self.err(self.k - 1, "value missing after `!`");
            }
            v = self.tok(self.k);
        }
        self.k += 1;
        Ok(v)
    }

    fn str_at(&self, k: usize) -> Str {
        let (a, b) = self.toks[k];
        let raw = &self.text[a as usize..b as usize];
        Str {
            span: Span { start: a, end: b },
            hash: unquoted_hash(raw),
        }
    }

    fn parse(&mut self, lineno: u32, span: Span, counters: Option<(u64, u64)>) -> PResult<Rule> {
        let mut r = Rule::empty(lineno, span, counters);
        let mut cur = Building::None;
        let mut target_set = false;
        // The implicit match of `-p` was loaded (iptables loads it at most once per rule).
        let mut proto_used = false;
        while self.k < self.toks.len() {
            let mut neg = false;
            let mut opt = self.tok(self.k);
            let opt_k = self.k;
            if opt == "!" {
                neg = true;
                self.k += 1;
                if self.k >= self.toks.len() {
                    return self.err(opt_k, "`!` at end of rule");
                }
                opt = self.tok(self.k);
            }
            if opt.starts_with("--") && !target_set {
                match self.expand(opt, &cur, &r, proto_used) {
                    Expanded::Same => {}
                    Expanded::To(full) => opt = full,
                    Expanded::Ambiguous(names) => {
                        return self.err(
                            self.k,
                            format!("option `{opt}` is ambiguous ({})", names.join(", ")),
                        );
                    }
                }
            }
            self.k += 1;
            match opt {
                "-s" | "--source" | "--src" => {
                    let v = self.value(&mut neg)?;
                    r.src = Some(Neg {
                        v: self.net(v)?,
                        neg,
                    });
                }
                "-d" | "--destination" | "--dst" => {
                    let v = self.value(&mut neg)?;
                    r.dst = Some(Neg {
                        v: self.net(v)?,
                        neg,
                    });
                }
                "-i" | "--in-interface" => {
                    let v = self.value(&mut neg)?;
                    r.set_iif(Some(Neg {
                        v: self.ifname(v)?,
                        neg,
                    }));
                }
                "-o" | "--out-interface" => {
                    let v = self.value(&mut neg)?;
                    r.set_oif(Some(Neg {
                        v: self.ifname(v)?,
                        neg,
                    }));
                }
                "-p" | "--protocol" => {
                    let v = self.value(&mut neg)?;
                    let p = proto_number(v).ok_or_else(|| PErr {
                        msg: format!("unknown protocol `{v}`"),
                        at: self.at(self.k - 1),
                    })?;
                    r.proto = Some(Neg { v: p, neg });
                }
                "-f" | "--fragment" => r.frag = Some(!neg),
                "-c" | "--set-counters" => {
                    let mut n = false;
                    let a = self.value(&mut n)?;
                    let b = self.value(&mut n)?;
                    r.counters = a.parse().ok().zip(b.parse().ok());
                }
                "-m" | "--match" => {
                    self.finish(&mut cur);
                    let name = self.value(&mut neg)?;
                    cur = self.start_module(name, opt_k)?;
                }
                "-j" | "--jump" | "-g" | "--goto" => {
                    self.finish(&mut cur);
                    if target_set {
                        return self.err(opt_k, "more than one target");
                    }
                    target_set = true;
                    let name = self.value(&mut neg)?;
                    let name_k = self.k - 1;
                    let goto = opt == "-g" || opt == "--goto";
                    r.target = self.target(name, name_k, goto)?;
                }
                o if o.starts_with('-') => {
                    if !self.any_module_option(&mut cur, &r, o, neg, opt_k, &mut proto_used)? {
                        return self.err(opt_k, format!("unknown option `{o}`"));
                    }
                }
                o => return self.err(opt_k, format!("unexpected `{o}`")),
            }
        }
        self.finish(&mut cur);
        // Inline (no allocation) for up to two matches.
        r.matches = self.matches.drain(..).collect();
        Ok(r)
    }

    /// The fast path: the options after `-A CHAIN ` when they are only `[!] -s/-d NET`,
    /// `-p PROTO`, `-m comment --comment C`, `-m tcp|udp [--dport P] [--sport P]`,
    /// `-m statistic --mode random --probability P` and a final `-j` to a declared chain, DNAT
    /// `--to-destination A[:P]`, ACCEPT, DROP or RETURN. `None` for anything else, including
    /// anything the general path would report as an error. Only reads `self` (no diagnostics).
    /// `r` is a fresh rule (line and span set); it is filled in.
    /// `near`: chain ids to try first for a jump target.
    fn fast(&mut self, r: &mut Rule, mut c: Cursor<'_>, near: [u32; 7]) -> Option<()> {
        let text = self.text;
        let t = |(a, b): (usize, usize)| &text[a..b];
        loop {
            let mut opt = t(c.plain()?);
            let mut neg = false;
            if opt == "!" {
                neg = true;
                opt = t(c.plain()?);
                if !matches!(opt, "-s" | "-d" | "-p") {
                    return None;
                }
            }
            match opt {
                "-s" | "-d" => {
                    let v = t(c.plain()?);
                    if v == "!" {
                        return None;
                    }
                    let n = Some(Neg {
                        v: match fast_net_v4(v.as_bytes(), self.family) {
                            Some(n) => n,
                            None => self.net(v).ok()?,
                        },
                        neg,
                    });
                    if opt == "-s" { r.src = n } else { r.dst = n }
                }
                "-p" => {
                    let v = t(c.plain()?);
                    if v == "!" {
                        return None;
                    }
                    r.proto = Some(Neg {
                        v: proto_number(v)?,
                        neg,
                    });
                }
                "-m" => match t(c.plain()?) {
                    "comment" => {
                        if t(c.plain()?) != "--comment" {
                            return None;
                        }
                        let (a, b) = c.value_quoted()?;
                        let raw = &text.as_bytes()[a..b];
                        if raw == b"!" {
                            return None;
                        }
                        let hash = if raw.len() >= 2 && raw[0] == b'"' {
                            // `value_quoted`: no backslash inside, closing quote last.
                            str_hash(&raw[1..raw.len() - 1])
                        } else {
                            unquoted_hash(&text[a..b])
                        };
                        r.matches.push(Match::Comment(Str {
                            span: Span {
                                start: a as u32,
                                end: b as u32,
                            },
                            hash,
                        }));
                    }
                    m @ ("tcp" | "udp") => {
                        let (mut sport, mut dport) = (None, None);
                        loop {
                            let mut peek = c;
                            let o = match peek.plain() {
                                Some(x) => t(x),
                                None => break,
                            };
                            if o != "--dport" && o != "--sport" {
                                break;
                            }
                            let v = t(peek.plain()?);
                            if v.contains(':') || v == "!" {
                                return None;
                            }
                            let p = Some(Neg {
                                v: PortRange::one(v.parse::<u16>().ok()?),
                                neg: false,
                            });
                            if o == "--dport" {
                                dport = p
                            } else {
                                sport = p
                            }
                            c = peek;
                        }
                        r.matches.push(if m == "tcp" {
                            Match::Tcp {
                                sport,
                                dport,
                                flags: None,
                                option: None,
                            }
                        } else {
                            Match::Udp { sport, dport }
                        });
                    }
                    "statistic" => {
                        if t(c.plain()?) != "--mode"
                            || t(c.plain()?) != "random"
                            || t(c.plain()?) != "--probability"
                        {
                            return None;
                        }
                        let p: f64 = t(c.plain()?)
                            .parse()
                            .ok()
                            .filter(|p: &f64| (0.0..=1.0).contains(p))?;
                        r.matches.push(Match::Statistic(Neg {
                            v: Stat::Random((p * 2147483648.0).round() / 2147483648.0),
                            neg: false,
                        }));
                    }
                    _ => return None,
                },
                "-j" => {
                    let (a, b) = c.plain()?;
                    let name = &text[a..b];
                    let hash = str_hash(name.as_bytes());
                    let id = self
                        .names
                        .near(near, name.as_bytes(), hash)
                        .or_else(|| lookup_hashed(self.by_name, self.names, name.as_bytes(), hash));
                    let target = match id {
                        Some(id) => Target::Jump(ChainRef {
                            id,
                            name: Str {
                                span: Span {
                                    start: a as u32,
                                    end: b as u32,
                                },
                                hash,
                            },
                        }),
                        None => match name {
                            "ACCEPT" => Target::Accept,
                            "DROP" => Target::Drop,
                            "RETURN" => Target::Return,
                            "DNAT" => {
                                if t(c.plain()?) != "--to-destination" {
                                    return None;
                                }
                                let v = t(c.plain()?);
                                if v == "!" {
                                    return None;
                                }
                                let (addr, ports) = match fast_addr_port(v) {
                                    Some(x) => x,
                                    None => self.nat_range(v).ok()?,
                                };
                                Target::Nat(Box::new(NatAction::Dnat {
                                    addr,
                                    ports,
                                    random: false,
                                    persistent: false,
                                }))
                            }
                            _ => return None,
                        },
                    };
                    if !c.at_end() {
                        return None;
                    }
                    r.target = target;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn finish(&mut self, cur: &mut Building) {
        match std::mem::replace(cur, Building::None) {
            Building::None => {}
            Building::M(m) => self.matches.push(m),
            Building::Opaque { name, start, end } => self.matches.push(Match::Opaque {
                module: name,
                span: Span { start, end },
            }),
        }
    }

    fn start_module(&mut self, name: &str, opt_k: usize) -> PResult<Building> {
        let name_k = self.k - 1;
        Ok(Building::M(match name {
            "tcp" => Match::Tcp {
                sport: None,
                dport: None,
                flags: None,
                option: None,
            },
            "udp" => Match::Udp {
                sport: None,
                dport: None,
            },
            "sctp" => Match::Sctp {
                sport: None,
                dport: None,
                chunks: false,
            },
            "icmp" => Match::Icmp(None),
            "icmp6" | "icmpv6" | "ipv6-icmp" => Match::Icmp6(None),
            "multiport" => Match::Multiport {
                side: PortSide::Both,
                ports: Box::new([]),
                neg: false,
            },
            "mark" => Match::Mark(Neg {
                v: (0, 0),
                neg: false,
            }),
            "connmark" => Match::Connmark(Neg {
                v: (0, 0),
                neg: false,
            }),
            "conntrack" => Match::Conntrack(Box::default()),
            "state" => Match::State(Neg { v: 0, neg: false }),
            "addrtype" => Match::Addrtype {
                src: None,
                dst: None,
                limit_in: false,
                limit_out: false,
            },
            "comment" => Match::Comment(Str::default()),
            "statistic" => Match::Statistic(Neg {
                v: Stat::Random(1.0),
                neg: false,
            }),
            "set" => Match::Set {
                name: Str::default(),
                dirs: SetDirs {
                    len: 0,
                    src_bits: 0,
                },
                neg: false,
                return_nomatch: false,
            },
            "physdev" => Match::Physdev(Box::default()),
            "iprange" => Match::Iprange(Box::new((None, None))),
            "length" => Match::Length(Neg {
                v: (0, u32::MAX),
                neg: false,
            }),
            "ttl" | "hl" => Match::Ttl {
                op: Cmp::Eq,
                v: 0,
                neg: false,
            },
            "tos" => Match::Tos(Neg {
                v: (0, 0xff),
                neg: false,
            }),
            "dscp" => Match::Dscp(Neg { v: 0, neg: false }),
            "pkttype" => Match::Pkttype(Neg {
                v: crate::PktType::Unicast,
                neg: false,
            }),
            "mac" => Match::Mac(Neg {
                v: [0; 6],
                neg: false,
            }),
            "owner" => Match::Owner {
                uid: None,
                gid: None,
                socket_exists: None,
            },
            "socket" => Match::Socket {
                transparent: false,
                nowildcard: false,
            },
            "devgroup" => Match::Devgroup {
                src: None,
                dst: None,
            },
            "rpfilter" => Match::Rpfilter {
                invert: false,
                loose: false,
                validmark: false,
                accept_local: false,
            },
            "nfacct" => Match::Nfacct,
            _ => {
                let (a, _) = self.at(opt_k);
                let (_, b) = self.at(name_k);
                return Ok(Building::Opaque {
                    name: self.str_at(name_k),
                    start: a,
                    end: b,
                });
            }
        }))
    }

    /// Handle `--opt` for the module being built (or an implicit protocol match).
    /// Ok(false) if nobody takes it.
    fn module_option(&mut self, cur: &mut Building, o: &str, neg: bool) -> PResult<bool> {
        if let Building::Opaque { end, .. } = cur {
            // Swallow the option and its values up to the next option.
            while self.k < self.toks.len() {
                let t = self.tok(self.k);
                if t.starts_with("--")
                    || t == "-m"
                    || t == "-j"
                    || t == "-g"
                    || (t == "!"
                        && self.k + 1 < self.toks.len()
                        && self.tok(self.k + 1).starts_with('-'))
                {
                    break;
                }
                self.k += 1;
            }
            *end = self.at(self.k.saturating_sub(1)).1;
            return Ok(true);
        }
        let Building::M(m) = cur else {
            return Ok(false);
        };
        self.match_option(m, o, neg)
    }

    /// Hand `--opt` to the module that owns it, as iptables does: the module being built,
    /// else the modules loaded earlier in the rule (newest first), else the implicit match of
    /// `-p` (`-p tcp -m conntrack --ctstate NEW --dport 22`: loaded here, once per rule, at
    /// this position). Ok(false) if nobody takes it.
    fn any_module_option(
        &mut self,
        cur: &mut Building,
        r: &Rule,
        o: &str,
        neg: bool,
        opt_k: usize,
        proto_used: &mut bool,
    ) -> PResult<bool> {
        if matches!(cur, Building::Opaque { .. }) {
            // An unmodelled module swallows its options, except one that a modelled match of
            // this rule (or the implicit match of `-p`) owns by that exact name.
            let implicit = (!*proto_used)
                .then(|| implicit_proto(r))
                .flatten()
                .is_some_and(|n| option_table(n).iter().any(|(x, _)| *x == o));
            if !implicit && !self.matches.iter().any(|m| match_owns(m, o)) {
                return self.module_option(cur, o, neg);
            }
        } else if self.module_option(cur, o, neg)? {
            return Ok(true);
        }
        let mut earlier = std::mem::take(self.matches);
        let mut taken = Ok(false);
        for m in earlier.iter_mut().rev() {
            taken = self.match_option(m, o, neg);
            if !matches!(taken, Ok(false)) {
                break;
            }
        }
        earlier.append(self.matches);
        *self.matches = earlier;
        if !matches!(taken, Ok(false)) {
            return taken;
        }
        if *proto_used {
            return Ok(false);
        }
        let Some(name) = implicit_proto(r) else {
            return Ok(false);
        };
        *proto_used = true;
        let Building::M(mut m) = self.start_module(name, opt_k)? else {
            return Ok(false);
        };
        if !self.match_option(&mut m, o, neg)? {
            return Ok(false);
        }
        if matches!(cur, Building::Opaque { .. }) {
            // The unmodelled module keeps the options that follow.
            self.matches.push(m);
        } else {
            self.finish(cur);
            *cur = Building::M(m);
        }
        Ok(true)
    }

    /// getopt_long's reading of `--opt`: an exact name of iptables' own options or of a
    /// module loaded in this rule stands; otherwise a unique prefix of one is that option
    /// (`--dpo` is `--dport`; with `-m multiport` loaded, `--dport` is its `--dports`). When
    /// nothing matches, iptables loads the implicit match of `-p` and asks again.
    fn expand(&self, opt: &str, cur: &Building, r: &Rule, proto_used: bool) -> Expanded {
        let loaded: Vec<&Match> = self
            .matches
            .iter()
            .chain(match cur {
                Building::M(m) => Some(m),
                _ => None,
            })
            .collect();
        // An unmodelled module's options are unknown: take the token as it is.
        if matches!(cur, Building::Opaque { .. })
            || self
                .matches
                .iter()
                .any(|m| matches!(m, Match::Opaque { .. }))
        {
            return Expanded::Same;
        }
        let name = &opt[2..];
        let mut tables: Vec<(usize, &'static [(&'static str, u8)])> = vec![(0, BASE_OPTIONS)];
        for (i, m) in loaded.iter().enumerate() {
            tables.push((i + 1, option_table(match_name(m))));
        }
        let exact = |tables: &[(usize, &'static [(&'static str, u8)])]| {
            tables
                .iter()
                .any(|(_, t)| t.iter().any(|(n, _)| n.strip_prefix("--") == Some(name)))
        };
        let prefix = |tables: &[(usize, &'static [(&'static str, u8)])]| {
            let mut found: Vec<(usize, u8, &'static str)> = Vec::new();
            for (owner, t) in tables {
                for (n, id) in t.iter() {
                    if n[2..].starts_with(name)
                        && !found.iter().any(|(o, i, _)| o == owner && i == id)
                    {
                        found.push((*owner, *id, n));
                    }
                }
            }
            found
        };
        if exact(&tables) {
            return Expanded::Same;
        }
        let mut found = prefix(&tables);
        if found.is_empty()
            && !proto_used
            && let Some(p) = implicit_proto(r)
        {
            tables.push((usize::MAX, option_table(p)));
            if exact(&tables) {
                return Expanded::Same;
            }
            found = prefix(&tables);
        }
        match found.as_slice() {
            [] => Expanded::Same,
            [(_, _, full)] => Expanded::To(full),
            many => Expanded::Ambiguous(many.iter().map(|(_, _, n)| *n).collect()),
        }
    }

    /// Apply `--opt` to match `m`; Ok(false), consuming nothing, if `m` has no such option.
    fn match_option(&mut self, m: &mut Match, o: &str, neg: bool) -> PResult<bool> {
        let mut neg = neg;
        match m {
            Match::Tcp {
                sport,
                dport,
                flags,
                option,
            } => match o {
                "--sport" | "--source-port" => {
                    if sport.is_some() {
                        return self.err(self.k - 1, "only one `--source-port` allowed");
                    }
                    *sport = Some(self.port_range(&mut neg)?)
                }
                "--dport" | "--destination-port" => {
                    if dport.is_some() {
                        return self.err(self.k - 1, "only one `--destination-port` allowed");
                    }
                    *dport = Some(self.port_range(&mut neg)?)
                }
                "--syn" => {
                    use crate::tcp_flags::*;
                    *flags = Some(Neg {
                        v: (SYN | RST | ACK | FIN, SYN),
                        neg,
                    })
                }
                "--tcp-flags" => {
                    let mask = self.value(&mut neg)?;
                    let mk = self.k - 1;
                    let comp = self.value(&mut neg)?;
                    let ck = self.k - 1;
                    let mask = tcp_flag_list(mask).ok_or_else(|| PErr {
                        msg: "bad TCP flags".into(),
                        at: self.at(mk),
                    })?;
                    let comp = tcp_flag_list(comp).ok_or_else(|| PErr {
                        msg: "bad TCP flags".into(),
                        at: self.at(ck),
                    })?;
                    *flags = Some(Neg {
                        v: (mask, comp),
                        neg,
                    });
                }
                "--tcp-option" => {
                    let v = self.value(&mut neg)?;
                    *option = Some(Neg {
                        v: self.num::<u8>(v)?,
                        neg,
                    });
                }
                _ => return Ok(false),
            },
            Match::Udp { sport, dport } => match o {
                "--sport" | "--source-port" => {
                    if sport.is_some() {
                        return self.err(self.k - 1, "only one `--source-port` allowed");
                    }
                    *sport = Some(self.port_range(&mut neg)?)
                }
                "--dport" | "--destination-port" => {
                    if dport.is_some() {
                        return self.err(self.k - 1, "only one `--destination-port` allowed");
                    }
                    *dport = Some(self.port_range(&mut neg)?)
                }
                _ => return Ok(false),
            },
            Match::Sctp {
                sport,
                dport,
                chunks,
            } => match o {
                "--sport" | "--source-port" => {
                    if sport.is_some() {
                        return self.err(self.k - 1, "only one `--source-port` allowed");
                    }
                    *sport = Some(self.port_range(&mut neg)?)
                }
                "--dport" | "--destination-port" => {
                    if dport.is_some() {
                        return self.err(self.k - 1, "only one `--destination-port` allowed");
                    }
                    *dport = Some(self.port_range(&mut neg)?)
                }
                "--chunk-types" => {
                    self.value(&mut neg)?;
                    self.value(&mut neg)?;
                    *chunks = true;
                }
                _ => return Ok(false),
            },
            Match::Icmp(slot) | Match::Icmp6(slot) => {
                let v6 = o == "--icmpv6-type";
                if o != "--icmp-type" && !v6 {
                    return Ok(false);
                }
                let v = self.value(&mut neg)?;
                let ty = icmp_type(v, v6).ok_or_else(|| PErr {
                    msg: format!("unknown ICMP type `{v}`"),
                    at: self.at(self.k - 1),
                })?;
                *slot = Some(Neg { v: ty, neg });
            }
            Match::Multiport {
                side,
                ports,
                neg: mneg,
            } => {
                *side = match o {
                    "--sports" | "--source-ports" => PortSide::Src,
                    "--dports" | "--destination-ports" => PortSide::Dst,
                    "--ports" => PortSide::Both,
                    _ => return Ok(false),
                };
                let v = self.value(&mut neg)?;
                let mut list = Vec::new();
                for p in v.split(',') {
                    list.push(self.parse_port_range(p)?);
                }
                *ports = list.into_boxed_slice();
                *mneg = neg;
            }
            Match::Mark(mv) | Match::Connmark(mv) => match o {
                "--mark" => {
                    let v = self.value(&mut neg)?;
                    *mv = Neg {
                        v: self.value_mask(v)?,
                        neg,
                    };
                }
                _ => return Ok(false),
            },
            Match::Conntrack(c) => {
                let c = &mut **c;
                match o {
                    "--ctstate" => {
                        let v = self.value(&mut neg)?;
                        c.state = Some(Neg {
                            v: self.states(v, true)?,
                            neg,
                        });
                    }
                    "--ctstatus" => {
                        let v = self.value(&mut neg)?;
                        let mut bits = 0;
                        for s in v.split(',') {
                            bits |= match s {
                                "NONE" => 0,
                                "EXPECTED" => crate::ct_status::EXPECTED,
                                "SEEN_REPLY" => crate::ct_status::SEEN_REPLY,
                                "ASSURED" => crate::ct_status::ASSURED,
                                "CONFIRMED" => crate::ct_status::CONFIRMED,
                                _ => {
                                    return self.err(self.k - 1, format!("unknown ctstatus `{s}`"));
                                }
                            };
                        }
                        c.status = Some(Neg { v: bits, neg });
                    }
                    "--ctproto" => {
                        let v = self.value(&mut neg)?;
                        let p = proto_number(v).ok_or_else(|| PErr {
                            msg: format!("unknown protocol `{v}`"),
                            at: self.at(self.k - 1),
                        })?;
                        c.proto = Some(Neg { v: p, neg });
                    }
                    "--ctorigsrc" | "--ctorigdst" | "--ctreplsrc" | "--ctrepldst" => {
                        let v = self.value(&mut neg)?;
                        let n = Some(Neg {
                            v: self.net(v)?,
                            neg,
                        });
                        match o {
                            "--ctorigsrc" => c.orig_src = n,
                            "--ctorigdst" => c.orig_dst = n,
                            "--ctreplsrc" => c.repl_src = n,
                            _ => c.repl_dst = n,
                        }
                    }
                    "--ctorigsrcport" | "--ctorigdstport" | "--ctreplsrcport"
                    | "--ctrepldstport" => {
                        let p = Some(self.port_range(&mut neg)?);
                        match o {
                            "--ctorigsrcport" => c.orig_sport = p,
                            "--ctorigdstport" => c.orig_dport = p,
                            "--ctreplsrcport" => c.repl_sport = p,
                            _ => c.repl_dport = p,
                        }
                    }
                    "--ctdir" => {
                        let v = self.value(&mut neg)?;
                        c.dir_reply = Some(match v {
                            "ORIGINAL" => false,
                            "REPLY" => true,
                            _ => return self.err(self.k - 1, "--ctdir takes ORIGINAL or REPLY"),
                        });
                    }
                    "--ctexpire" => {
                        let v = self.value(&mut neg)?;
                        let (a, b) = v.split_once(':').unwrap_or((v, v));
                        c.expire = Some(Neg {
                            v: (self.num(a)?, self.num(b)?),
                            neg,
                        });
                    }
                    _ => return Ok(false),
                }
            }
            Match::State(s) => match o {
                "--state" => {
                    let v = self.value(&mut neg)?;
                    *s = Neg {
                        v: self.states(v, false)?,
                        neg,
                    };
                }
                _ => return Ok(false),
            },
            Match::Addrtype {
                src,
                dst,
                limit_in,
                limit_out,
            } => match o {
                "--src-type" | "--dst-type" => {
                    let v = self.value(&mut neg)?;
                    let mut bits = 0u16;
                    for t in v.split(',') {
                        bits |= addrtype_bit(t).ok_or_else(|| PErr {
                            msg: format!("unknown address type `{t}`"),
                            at: self.at(self.k - 1),
                        })?;
                    }
                    let n = Some(Neg { v: bits, neg });
                    if o == "--src-type" {
                        *src = n
                    } else {
                        *dst = n
                    }
                }
                "--limit-iface-in" => *limit_in = true,
                "--limit-iface-out" => *limit_out = true,
                _ => return Ok(false),
            },
            Match::Comment(c) => match o {
                "--comment" => {
                    self.value(&mut neg)?;
                    *c = self.str_at(self.k - 1);
                }
                _ => return Ok(false),
            },
            Match::Statistic(st) => match o {
                "--mode" => {
                    let v = self.value(&mut neg)?;
                    st.v = match v {
                        "random" => Stat::Random(1.0),
                        "nth" => Stat::Nth {
                            every: 1,
                            packet: 0,
                        },
                        _ => return self.err(self.k - 1, "--mode takes random or nth"),
                    };
                }
                "--probability" => {
                    let v = self.value(&mut neg)?;
                    let p: f64 = v
                        .parse()
                        .ok()
                        .filter(|p: &f64| (0.0..=1.0).contains(p))
                        .ok_or_else(|| PErr {
                            msg: format!("bad probability `{v}`"),
                            at: self.at(self.k - 1),
                        })?;
                    // The kernel keeps p as a 31-bit fraction; so do we (round trips compare equal).
                    st.v = Stat::Random((p * 2147483648.0).round() / 2147483648.0);
                    st.neg ^= neg;
                }
                "--every" | "--packet" => {
                    let v = self.value(&mut neg)?;
                    let n: u32 = self.num(v)?;
                    let (mut every, mut packet) = match st.v {
                        Stat::Nth { every, packet } => (every, packet),
                        _ => (1, 0),
                    };
                    if o == "--every" {
                        if n == 0 {
                            return self.err(self.k - 1, "--every must be at least 1");
                        }
                        every = n;
                        st.neg ^= neg;
                    } else {
                        packet = n;
                    }
                    st.v = Stat::Nth { every, packet };
                }
                _ => return Ok(false),
            },
            Match::Set {
                name,
                dirs,
                neg: sneg,
                return_nomatch,
            } => match o {
                "--match-set" | "--set" => {
                    self.value(&mut neg)?;
                    *name = self.str_at(self.k - 1);
                    let d = self.value(&mut neg)?;
                    let mut nd = SetDirs {
                        len: 0,
                        src_bits: 0,
                    };
                    for (i, part) in d.split(',').enumerate() {
                        if i >= 6 {
                            return self.err(self.k - 1, "too many set dimensions");
                        }
                        match part {
                            "src" => nd.src_bits |= 1 << i,
                            "dst" => {}
                            _ => {
                                return self.err(self.k - 1, format!("bad set direction `{part}`"));
                            }
                        }
                        nd.len += 1;
                    }
                    *dirs = nd;
                    *sneg = neg;
                }
                "--return-nomatch" => *return_nomatch = true,
                "--update-counters"
                | "--update-subcounters"
                | "--no-update-counters"
                | "--no-update-subcounters" => {}
                "--packets-eq" | "--packets-lt" | "--packets-gt" | "--bytes-eq" | "--bytes-lt"
                | "--bytes-gt" => {
                    self.value(&mut neg)?;
                }
                _ => return Ok(false),
            },
            Match::Physdev(p) => match o {
                "--physdev-in" => {
                    let v = self.value(&mut neg)?;
                    p.phys_in = Some(Neg {
                        v: self.ifname(v)?,
                        neg,
                    });
                }
                "--physdev-out" => {
                    let v = self.value(&mut neg)?;
                    p.phys_out = Some(Neg {
                        v: self.ifname(v)?,
                        neg,
                    });
                }
                "--physdev-is-in" => p.is_in = Some(!neg),
                "--physdev-is-out" => p.is_out = Some(!neg),
                "--physdev-is-bridged" => p.is_bridged = Some(!neg),
                _ => return Ok(false),
            },
            Match::Iprange(b) => match o {
                "--src-range" | "--dst-range" => {
                    let v = self.value(&mut neg)?;
                    let (a, z) = v.split_once('-').unwrap_or((v, v));
                    let a: IpAddr = self.addr(a)?;
                    let z: IpAddr = self.addr(z)?;
                    let n = Some(Neg { v: (a, z), neg });
                    if o == "--src-range" { b.0 = n } else { b.1 = n }
                }
                _ => return Ok(false),
            },
            Match::Length(l) => match o {
                "--length" => {
                    let v = self.value(&mut neg)?;
                    let (a, b) = v.split_once(':').unwrap_or((v, v));
                    let lo = if a.is_empty() { 0 } else { self.num(a)? };
                    let hi = if b.is_empty() { 65535 } else { self.num(b)? };
                    *l = Neg { v: (lo, hi), neg };
                }
                _ => return Ok(false),
            },
            Match::Ttl { op, v, neg: tneg } => {
                *op = match o {
                    "--ttl-eq" | "--hl-eq" | "--ttl" => Cmp::Eq,
                    "--ttl-lt" | "--hl-lt" => Cmp::Lt,
                    "--ttl-gt" | "--hl-gt" => Cmp::Gt,
                    _ => return Ok(false),
                };
                let s = self.value(&mut neg)?;
                *v = self.num(s)?;
                *tneg = neg;
            }
            Match::Tos(t) => match o {
                "--tos" => {
                    let s = self.value(&mut neg)?;
                    let (v, m) = match s.split_once('/') {
                        Some((v, m)) => (self.num_u32(v)? as u8, self.num_u32(m)? as u8),
                        None => (
                            match s {
                                "Minimize-Delay" => 0x10,
                                "Maximize-Throughput" => 0x08,
                                "Maximize-Reliability" => 0x04,
                                "Minimize-Cost" => 0x02,
                                "Normal-Service" => 0,
                                _ => self.num_u32(s)? as u8,
                            },
                            0x3f,
                        ),
                    };
                    *t = Neg { v: (v, m), neg };
                }
                _ => return Ok(false),
            },
            Match::Dscp(d) => match o {
                "--dscp" => {
                    let s = self.value(&mut neg)?;
                    *d = Neg {
                        v: self.num_u32(s)? as u8,
                        neg,
                    };
                }
                "--dscp-class" => {
                    let s = self.value(&mut neg)?;
                    let v = dscp_class(s).ok_or_else(|| PErr {
                        msg: format!("unknown DSCP class `{s}`"),
                        at: self.at(self.k - 1),
                    })?;
                    *d = Neg { v, neg };
                }
                _ => return Ok(false),
            },
            Match::Pkttype(p) => match o {
                "--pkt-type" => {
                    let s = self.value(&mut neg)?;
                    let v = match s {
                        "unicast" => crate::PktType::Unicast,
                        "broadcast" => crate::PktType::Broadcast,
                        "multicast" => crate::PktType::Multicast,
                        "host" => crate::PktType::Unicast,
                        "otherhost" => crate::PktType::Otherhost,
                        _ => return self.err(self.k - 1, format!("unknown packet type `{s}`")),
                    };
                    *p = Neg { v, neg };
                }
                _ => return Ok(false),
            },
            Match::Mac(mac) => match o {
                "--mac-source" => {
                    let s = self.value(&mut neg)?;
                    let v = parse_mac(s).ok_or_else(|| PErr {
                        msg: format!("bad MAC address `{s}`"),
                        at: self.at(self.k - 1),
                    })?;
                    *mac = Neg { v, neg };
                }
                _ => return Ok(false),
            },
            Match::Owner {
                uid,
                gid,
                socket_exists,
            } => match o {
                "--uid-owner" | "--gid-owner" => {
                    let s = self.value(&mut neg)?;
                    let (a, b) = s.split_once('-').unwrap_or((s, s));
                    let r = Some(Neg {
                        v: (self.num(a)?, self.num(b)?),
                        neg,
                    });
                    if o == "--uid-owner" {
                        *uid = r
                    } else {
                        *gid = r
                    }
                }
                "--socket-exists" => *socket_exists = Some(!neg),
                _ => return Ok(false),
            },
            Match::Socket {
                transparent,
                nowildcard,
            } => match o {
                "--transparent" => *transparent = true,
                "--nowildcard" => *nowildcard = true,
                "--restore-skmark" => {}
                _ => return Ok(false),
            },
            Match::Devgroup { src, dst } => match o {
                "--src-group" | "--dst-group" => {
                    let s = self.value(&mut neg)?;
                    let v = self.value_mask(s)?;
                    let n = Some(Neg { v, neg });
                    if o == "--src-group" {
                        *src = n
                    } else {
                        *dst = n
                    }
                }
                _ => return Ok(false),
            },
            Match::Rpfilter {
                invert,
                loose,
                validmark,
                accept_local,
            } => match o {
                "--invert" => *invert = true,
                "--loose" => *loose = true,
                "--validmark" => *validmark = true,
                "--accept-local" => *accept_local = true,
                _ => return Ok(false),
            },
            Match::Nfacct => match o {
                "--nfacct-name" => {
                    self.value(&mut neg)?;
                }
                _ => return Ok(false),
            },
            Match::Opaque { .. } => return Ok(false),
        }
        Ok(true)
    }

    fn target(&mut self, name: &'a str, name_k: usize, goto: bool) -> PResult<Target> {
        let (a, b) = self.toks[name_k];
        let hash = unquoted_hash(name);
        // A quoted name never matches here (chains are looked up by the raw token), so the
        // hash of an unquoted token doubles as the lookup key.
        let quoted = name.starts_with(['"', '\'']);
        let id = if quoted {
            lookup(self.by_name, self.names, name.as_bytes())
        } else {
            lookup_hashed(self.by_name, self.names, name.as_bytes(), hash)
        };
        if let Some(id) = id {
            let cr = ChainRef {
                id,
                name: Str {
                    span: Span { start: a, end: b },
                    hash,
                },
            };
            self.no_more_options()?;
            return Ok(if goto {
                Target::Goto(cr)
            } else {
                Target::Jump(cr)
            });
        }
        if goto {
            // Resolved at COMMIT.
            return Ok(Target::Goto(ChainRef {
                id: u32::MAX,
                name: self.str_at(name_k),
            }));
        }
        let mut neg = false;
        let t = match name {
            "ACCEPT" => Target::Accept,
            "DROP" => Target::Drop,
            "RETURN" => Target::Return,
            "QUEUE" => Target::Queue(0),
            "NFQUEUE" => {
                let mut num = 0u16;
                while self.k < self.toks.len() {
                    let o = self.tok(self.k);
                    self.k += 1;
                    match o {
                        "--queue-num" => {
                            let v = self.value(&mut neg)?;
                            num = self.num(v)?;
                        }
                        "--queue-balance" => {
                            let v = self.value(&mut neg)?;
                            num = self.num(v.split(':').next().unwrap_or(v))?;
                        }
                        "--queue-bypass" | "--fail-open" | "--queue-cpu-fanout" => {}
                        _ => return self.err(self.k - 1, format!("unknown NFQUEUE option `{o}`")),
                    }
                }
                Target::Queue(num)
            }
            "REJECT" => {
                let mut with = match self.family {
                    IpFamily::Ipv4 => RejectWith::IcmpPortUnreachable,
                    IpFamily::Ipv6 => RejectWith::Icmp6PortUnreachable,
                };
                while self.k < self.toks.len() {
                    let o = self.tok(self.k);
                    self.k += 1;
                    match o {
                        "--reject-with" => {
                            let v = self.value(&mut neg)?;
                            with = match v {
                                "icmp-port-unreachable" | "port-unreach" => {
                                    RejectWith::IcmpPortUnreachable
                                }
                                "icmp6-port-unreachable" => RejectWith::Icmp6PortUnreachable,
                                "tcp-reset" | "tcp-rst" => RejectWith::TcpReset,
                                o => RejectWith::Other(o.to_string()),
                            };
                        }
                        _ => return self.err(self.k - 1, format!("unknown REJECT option `{o}`")),
                    }
                }
                Target::Reject(with)
            }
            "DNAT" | "SNAT" => {
                let dnat = name == "DNAT";
                let mut addr = None;
                let mut ports = None;
                let (mut random, mut persistent, mut random_fully) = (false, false, false);
                let mut seen = false;
                while self.k < self.toks.len() {
                    let o = self.tok(self.k);
                    self.k += 1;
                    match o {
                        "--to-destination" | "--to-source" | "--to" => {
                            let v = self.value(&mut neg)?;
                            if !seen {
                                let (a, p) = self.nat_range(v)?;
                                addr = a;
                                ports = p;
                                seen = true;
                            }
                        }
                        "--random" => random = true,
                        "--random-fully" => random_fully = true,
                        "--persistent" => persistent = true,
                        _ => return self.err(self.k - 1, format!("unknown {name} option `{o}`")),
                    }
                }
                Target::Nat(Box::new(if dnat {
                    NatAction::Dnat {
                        addr,
                        ports,
                        random,
                        persistent,
                    }
                } else {
                    NatAction::Snat {
                        addr,
                        ports,
                        random,
                        random_fully,
                        persistent,
                    }
                }))
            }
            "MASQUERADE" | "REDIRECT" => {
                let mut ports = None;
                let (mut random, mut random_fully) = (false, false);
                while self.k < self.toks.len() {
                    let o = self.tok(self.k);
                    self.k += 1;
                    match o {
                        "--to-ports" | "--to-port" => {
                            let v = self.value(&mut neg)?;
                            ports = Some(self.parse_port_range(&v.replace('-', ":"))?);
                        }
                        "--random" => random = true,
                        "--random-fully" => random_fully = true,
                        _ => return self.err(self.k - 1, format!("unknown {name} option `{o}`")),
                    }
                }
                Target::Nat(Box::new(if name == "MASQUERADE" {
                    NatAction::Masquerade {
                        ports,
                        random,
                        random_fully,
                    }
                } else {
                    NatAction::Redirect { ports, random }
                }))
            }
            "MARK" => {
                let mut r = None;
                while self.k < self.toks.len() {
                    let o = self.tok(self.k);
                    self.k += 1;
                    let v = self.value(&mut neg)?;
                    r = Some(match o {
                        "--set-xmark" => {
                            let (v, m) = self.value_mask(v)?;
                            (v, m)
                        }
                        "--set-mark" => {
                            let (v, m) = self.value_mask(v)?;
                            (v, m | v)
                        }
                        "--and-mark" => (0, !self.num_u32(v)?),
                        "--or-mark" => {
                            let b = self.num_u32(v)?;
                            (b, b)
                        }
                        "--xor-mark" => (self.num_u32(v)?, 0),
                        _ => return self.err(self.k - 2, format!("unknown MARK option `{o}`")),
                    });
                }
                let (value, mask) = r.ok_or_else(|| PErr {
                    msg: "MARK needs an option".into(),
                    at: self.at(name_k),
                })?;
                Target::Mark { value, mask }
            }
            "CONNMARK" => {
                let mut op = None;
                let (mut nfmask, mut ctmask) = (u32::MAX, u32::MAX);
                let mut mask = None;
                while self.k < self.toks.len() {
                    let o = self.tok(self.k);
                    self.k += 1;
                    match o {
                        "--set-xmark" | "--set-mark" => {
                            let v = self.value(&mut neg)?;
                            let (v, m) = self.value_mask(v)?;
                            op = Some(ConnmarkOp::Set {
                                value: v,
                                mask: if o == "--set-mark" { m | v } else { m },
                            });
                        }
                        "--and-mark" | "--or-mark" | "--xor-mark" => {
                            let v = self.value(&mut neg)?;
                            let b = self.num_u32(v)?;
                            let (value, mask) = match o {
                                "--and-mark" => (0, !b),
                                "--or-mark" => (b, b),
                                _ => (b, 0),
                            };
                            op = Some(ConnmarkOp::Set { value, mask });
                        }
                        "--save-mark" => {
                            op = Some(ConnmarkOp::Save {
                                nfmask: 0,
                                ctmask: 0,
                            })
                        }
                        "--restore-mark" => {
                            op = Some(ConnmarkOp::Restore {
                                nfmask: 0,
                                ctmask: 0,
                            })
                        }
                        "--nfmask" => {
                            let v = self.value(&mut neg)?;
                            nfmask = self.num_u32(v)?;
                        }
                        "--ctmask" => {
                            let v = self.value(&mut neg)?;
                            ctmask = self.num_u32(v)?;
                        }
                        "--mask" => {
                            let v = self.value(&mut neg)?;
                            mask = Some(self.num_u32(v)?);
                        }
                        _ => return self.err(self.k - 1, format!("unknown CONNMARK option `{o}`")),
                    }
                }
                if let Some(m) = mask {
                    nfmask = m;
                    ctmask = m;
                }
                match op {
                    Some(ConnmarkOp::Save { .. }) => {
                        Target::Connmark(ConnmarkOp::Save { nfmask, ctmask })
                    }
                    Some(ConnmarkOp::Restore { .. }) => {
                        Target::Connmark(ConnmarkOp::Restore { nfmask, ctmask })
                    }
                    Some(s) => Target::Connmark(s),
                    None => return self.err(name_k, "CONNMARK needs an option"),
                }
            }
            "LOG" | "NFLOG" | "ULOG" | "TRACE" => {
                self.skip_options();
                Target::Log(self.str_at(name_k))
            }
            "NOTRACK" => {
                self.no_more_options()?;
                Target::Ct(Box::new(CtEffects {
                    notrack: true,
                    ..Default::default()
                }))
            }
            "CT" => {
                let mut e = CtEffects::default();
                while self.k < self.toks.len() {
                    let o = self.tok(self.k);
                    self.k += 1;
                    match o {
                        "--notrack" => e.notrack = true,
                        "--zone" | "--zone-orig" | "--zone-reply" => {
                            let v = self.value(&mut neg)?;
                            e.zone = Some(self.num(v)?);
                        }
                        "--helper" => {
                            let v = self.value(&mut neg)?;
                            e.helper = Some(unquote(v).into_owned());
                        }
                        "--ctevents" | "--expevents" | "--timeout" => {
                            self.value(&mut neg)?;
                        }
                        _ => return self.err(self.k - 1, format!("unknown CT option `{o}`")),
                    }
                }
                Target::Ct(Box::new(e))
            }
            "TPROXY" => {
                let mut t = Tproxy {
                    addr: None,
                    port: 0,
                    mark: None,
                };
                while self.k < self.toks.len() {
                    let o = self.tok(self.k);
                    self.k += 1;
                    match o {
                        "--on-port" => {
                            let v = self.value(&mut neg)?;
                            t.port = self.num(v)?;
                        }
                        "--on-ip" => {
                            let v = self.value(&mut neg)?;
                            t.addr = Some(self.addr(v)?);
                        }
                        "--tproxy-mark" => {
                            let v = self.value(&mut neg)?;
                            t.mark = Some(self.value_mask(v)?);
                        }
                        _ => return self.err(self.k - 1, format!("unknown TPROXY option `{o}`")),
                    }
                }
                Target::Tproxy(Box::new(t))
            }
            "CHECKSUM" | "TCPMSS" | "CLASSIFY" | "DSCP" | "TOS" | "TTL" | "HL" | "SECMARK"
            | "CONNSECMARK" | "AUDIT" | "IDLETIMER" | "LED" | "RATEEST" | "SET" | "TEE" => {
                self.skip_options();
                Target::Noop(self.str_at(name_k))
            }
            _ => {
                if name.is_empty() || !name.bytes().all(|b| b.is_ascii_graphic()) {
                    return self.err(name_k, "bad target name");
                }
                if self.k >= self.toks.len() {
                    // A jump to a chain declared later (restore-style input), resolved at
                    // COMMIT; an unknown target extension if no such chain appears.
                    return Ok(Target::Jump(ChainRef {
                        id: u32::MAX,
                        name: self.str_at(name_k),
                    }));
                }
                self.skip_options();
                Target::Unknown(self.str_at(name_k))
            }
        };
        Ok(t)
    }

    fn skip_options(&mut self) {
        self.k = self.toks.len();
    }

    fn no_more_options(&self) -> PResult<()> {
        if self.k < self.toks.len() {
            return self.err(
                self.k,
                format!("unexpected `{}` after the target", self.tok(self.k)),
            );
        }
        Ok(())
    }

    fn net(&self, v: &str) -> PResult<IpNet> {
        let k = self.k - 1;
        let bad = || PErr {
            msg: format!("bad address `{v}`"),
            at: self.at(k),
        };
        let (a, len) = match v.split_once('/') {
            Some((a, l)) => (a, Some(l)),
            None => (v, None),
        };
        let addr: IpAddr = parse_ip(a).ok_or_else(bad)?;
        if matches!(
            (addr, self.family),
            (IpAddr::V4(_), IpFamily::Ipv6) | (IpAddr::V6(_), IpFamily::Ipv4)
        ) {
            return Err(PErr {
                msg: format!("address `{v}` is not of the dump's family"),
                at: self.at(k),
            });
        }
        let max = if addr.is_ipv4() { 32 } else { 128 };
        let plen = match len {
            None => max,
            Some(l) => match l.parse::<u8>() {
                Ok(n) if n <= max => n,
                _ => {
                    // Dotted mask (`/255.255.255.0`).
                    let m: IpAddr = l.parse().map_err(|_| bad())?;
                    match m {
                        IpAddr::V4(m) => u32::from(m).count_ones() as u8,
                        IpAddr::V6(m) => u128::from(m).count_ones() as u8,
                    }
                }
            },
        };
        Ok(IpNet::new(addr, plen).map_err(|_| bad())?.trunc())
    }

    fn addr(&self, v: &str) -> PResult<IpAddr> {
        // `trim_start_matches('[').trim_end_matches(']')`, on bytes.
        let vb = v.as_bytes();
        let start = vb.iter().take_while(|&&c| c == b'[').count();
        let end = vb.len() - vb[start..].iter().rev().take_while(|&&c| c == b']').count();
        let v = &v[start..end];
        parse_ip(v).ok_or_else(|| PErr {
            msg: format!("bad address `{v}`"),
            at: self.at(self.k - 1),
        })
    }

    fn ifname(&self, v: &str) -> PResult<IfName> {
        IfName::parse(v).ok_or_else(|| PErr {
            msg: format!("interface name `{v}` longer than 15 bytes"),
            at: self.at(self.k - 1),
        })
    }

    fn num<T: std::str::FromStr>(&self, v: &str) -> PResult<T> {
        v.parse().map_err(|_| PErr {
            msg: format!("bad number `{v}`"),
            at: self.at(self.k - 1),
        })
    }

    fn num_u32(&self, v: &str) -> PResult<u32> {
        parse_u32(v).ok_or_else(|| PErr {
            msg: format!("bad number `{v}`"),
            at: self.at(self.k - 1),
        })
    }

    /// `v[/m]` with `m` defaulting to all ones.
    fn value_mask(&self, v: &str) -> PResult<(u32, u32)> {
        match v.split_once('/') {
            Some((a, b)) => Ok((self.num_u32(a)?, self.num_u32(b)?)),
            None => Ok((self.num_u32(v)?, u32::MAX)),
        }
    }

    fn port_range(&mut self, neg: &mut bool) -> PResult<Neg<PortRange>> {
        let v = self.value(neg)?;
        Ok(Neg {
            v: self.parse_port_range(v)?,
            neg: *neg,
        })
    }

    fn parse_port_range(&self, v: &str) -> PResult<PortRange> {
        let (a, b) = match v.split_once(':') {
            Some((a, b)) => (a, b),
            None => (v, v),
        };
        let lo = if a.is_empty() { 0 } else { self.port(a)? };
        let hi = if b.is_empty() { 65535 } else { self.port(b)? };
        Ok(PortRange { lo, hi })
    }

    fn port(&self, v: &str) -> PResult<u16> {
        if let Ok(p) = v.parse::<u16>() {
            return Ok(p);
        }
        service_port(v).ok_or_else(|| PErr {
            msg: format!("bad port `{v}`"),
            at: self.at(self.k - 1),
        })
    }

    /// `[addr[-addr]][:port[-port]]`, v6 as `[a]:p`.
    fn nat_range(&self, v: &str) -> PResult<(Option<AddrRange>, Option<PortRange>)> {
        let vb = v.as_bytes();
        if !vb.iter().any(|&c| matches!(c, b'[' | b']' | b'-' | b'/')) {
            // Common shape `addr[:port]` (no ranges, brackets or masks): same result as below.
            let (a, p) = match vb.iter().position(|&c| c == b':') {
                Some(i) if vb[i + 1..].contains(&b':') => (v, None),
                Some(i) => (&v[..i], Some(&v[i + 1..])),
                None => (v, None),
            };
            let addr = if a.is_empty() {
                None
            } else {
                let x = self.addr(a)?;
                Some(AddrRange { lo: x, hi: x })
            };
            let ports = match p {
                Some(p) if !p.is_empty() => {
                    let x = self.port(p)?;
                    Some(PortRange { lo: x, hi: x })
                }
                _ => None,
            };
            return Ok((addr, ports));
        }
        let (a, p): (&str, Option<&str>) = if let Some(rest) = v.strip_prefix('[') {
            // [v6]:port or [v6]-[v6]:port
            match rest.rsplit_once("]:") {
                Some((a, p)) => (a, Some(p)),
                None => (rest.trim_end_matches(']'), None),
            }
        } else {
            match memchr::memchr(b':', v.as_bytes()) {
                Some(i) if memchr::memchr(b':', &v.as_bytes()[i + 1..]).is_some() => (v, None),
                Some(i) => (&v[..i], Some(&v[i + 1..])),
                None => (v, None),
            }
        };
        let a: std::borrow::Cow<'_, str> = if memchr::memchr2(b'[', b']', a.as_bytes()).is_some() {
            a.replace(['[', ']'], "").into()
        } else {
            a.into()
        };
        let addr = if a.is_empty() {
            None
        } else {
            match a.split_once('-') {
                Some((lo, hi)) => Some(AddrRange {
                    lo: self.addr(lo)?,
                    hi: self.addr(hi)?,
                }),
                None => {
                    let x = self.addr(&a)?;
                    Some(AddrRange { lo: x, hi: x })
                }
            }
        };
        let ports = match p {
            Some(p) if !p.is_empty() => {
                let p = p.split('/').next().unwrap_or(p);
                let (lo, hi) = p.split_once('-').unwrap_or((p, p));
                Some(PortRange {
                    lo: self.port(lo)?,
                    hi: self.port(hi)?,
                })
            }
            _ => None,
        };
        Ok((addr, ports))
    }

    fn states(&self, v: &str, ct: bool) -> PResult<u8> {
        let mut bits = 0;
        for s in v.split(',') {
            bits |= match s {
                "INVALID" => state::INVALID,
                "ESTABLISHED" => state::ESTABLISHED,
                "RELATED" => state::RELATED,
                "NEW" => state::NEW,
                "UNTRACKED" => state::UNTRACKED,
                "SNAT" if ct => state::SNAT,
                "DNAT" if ct => state::DNAT,
                _ => return self.err(self.k - 1, format!("unknown state `{s}`")),
            };
        }
        Ok(bits)
    }
}

/// `A.B.C.D[/N]` (N one or two digits) in an IPv4 dump as [`RuleParser::net`] reads it;
/// `None`: another form (the caller then asks `net`).
#[inline]
fn fast_net_v4(v: &[u8], family: IpFamily) -> Option<IpNet> {
    if family != IpFamily::Ipv4 {
        return None;
    }
    let (a, plen) = match memchr::memchr(b'/', v) {
        None => (v, 32),
        Some(i) => {
            let l = &v[i + 1..];
            let n = match *l {
                [d] if d.is_ascii_digit() => d - b'0',
                [d, e] if d.is_ascii_digit() && e.is_ascii_digit() => (d - b'0') * 10 + (e - b'0'),
                _ => return None,
            };
            if n > 32 {
                return None;
            }
            (&v[..i], n)
        }
    };
    let addr = fast_ipv4(a)?;
    Some(IpNet::V4(ipnet::Ipv4Net::new(addr, plen).ok()?.trunc()))
}

/// `A.B.C.D:PORT` (decimal port) as [`RuleParser::nat_range`] reads it; `None`: another form.
#[inline]
fn fast_addr_port(v: &str) -> Option<(Option<AddrRange>, Option<PortRange>)> {
    let vb = v.as_bytes();
    let i = memchr::memchr(b':', vb)?;
    let addr = IpAddr::V4(fast_ipv4(&vb[..i])?);
    let p = &vb[i + 1..];
    if p.is_empty() || p.len() > 5 || !p.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let port = v[i + 1..].parse::<u16>().ok()?;
    Some((
        Some(AddrRange { lo: addr, hi: addr }),
        Some(PortRange { lo: port, hi: port }),
    ))
}

/// Dotted-quad IPv4 the way `Ipv4Addr::from_str` reads it (no leading zeros, 0..=255);
/// `None` for anything else (the caller then asks the standard parser).
#[inline]
fn fast_ipv4(v: &[u8]) -> Option<std::net::Ipv4Addr> {
    let mut out = [0u8; 4];
    let mut i = 0;
    for (n, o) in out.iter_mut().enumerate() {
        if n > 0 {
            if v.get(i) != Some(&b'.') {
                return None;
            }
            i += 1;
        }
        let st = i;
        let mut x: u32 = 0;
        while i < v.len() && v[i].is_ascii_digit() && i - st < 3 {
            x = x * 10 + (v[i] - b'0') as u32;
            i += 1;
        }
        let len = i - st;
        if len == 0 || x > 255 || (len > 1 && v[st] == b'0') {
            return None;
        }
        *o = x as u8;
    }
    (i == v.len()).then_some(std::net::Ipv4Addr::from(out))
}

/// An IPv4 or IPv6 address, as `IpAddr::from_str`.
#[inline]
fn parse_ip(v: &str) -> Option<IpAddr> {
    match fast_ipv4(v.as_bytes()) {
        Some(a) => Some(IpAddr::V4(a)),
        None => v.parse().ok(),
    }
}

/// Decimal or `0x` hex.
pub(crate) fn parse_u32(v: &str) -> Option<u32> {
    if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u32::from_str_radix(h, 16).ok()
    } else {
        v.parse().ok()
    }
}

/// Protocol name or number (`all` = 0).
pub fn proto_number(v: &str) -> Option<u8> {
    if v.bytes().any(|b| b.is_ascii_uppercase()) {
        return proto_number(&v.to_ascii_lowercase());
    }
    Some(match v {
        "all" => 0,
        "icmp" => 1,
        "igmp" => 2,
        "ipip" | "ipencap" | "ipv4" => 4,
        "tcp" => 6,
        "udp" => 17,
        "ipv6" => 41,
        "gre" => 47,
        "esp" => 50,
        "ah" => 51,
        "icmpv6" | "ipv6-icmp" | "icmp6" => 58,
        "sctp" => 132,
        "udplite" => 136,
        "dccp" => 33,
        "ospf" => 89,
        "vrrp" => 112,
        n => return n.parse().ok(),
    })
}

fn service_port(v: &str) -> Option<u16> {
    Some(match v {
        "ftp-data" => 20,
        "ftp" => 21,
        "ssh" => 22,
        "telnet" => 23,
        "smtp" => 25,
        "domain" => 53,
        "bootps" => 67,
        "bootpc" => 68,
        "tftp" => 69,
        "http" | "www" => 80,
        "pop3" => 110,
        "ntp" => 123,
        "imap" | "imap2" => 143,
        "snmp" => 161,
        "bgp" => 179,
        "ldap" => 389,
        "https" => 443,
        "syslog" => 514,
        "submission" => 587,
        "imaps" => 993,
        "pop3s" => 995,
        "mysql" => 3306,
        "postgresql" => 5432,
        _ => return None,
    })
}

fn tcp_flag_list(v: &str) -> Option<u8> {
    use crate::tcp_flags::*;
    let mut bits = 0;
    for f in v.split(',') {
        bits |= match f {
            "FIN" => FIN,
            "SYN" => SYN,
            "RST" => RST,
            "PSH" => PSH,
            "ACK" => ACK,
            "URG" => URG,
            "ECE" => ECE,
            "CWR" => CWR,
            "ALL" => 0xff,
            "NONE" => 0,
            _ => return None,
        };
    }
    Some(bits)
}

fn addrtype_bit(t: &str) -> Option<u16> {
    use addrtype::*;
    Some(match t {
        "UNSPEC" => UNSPEC,
        "UNICAST" => UNICAST,
        "LOCAL" => LOCAL,
        "BROADCAST" => BROADCAST,
        "ANYCAST" => ANYCAST,
        "MULTICAST" => MULTICAST,
        "BLACKHOLE" => BLACKHOLE,
        "UNREACHABLE" => UNREACHABLE,
        "PROHIBIT" => PROHIBIT,
        "THROW" => THROW,
        "NAT" => NAT,
        "XRESOLVE" => XRESOLVE,
        _ => return None,
    })
}

fn dscp_class(s: &str) -> Option<u8> {
    let s = s.to_ascii_uppercase();
    Some(match s.as_str() {
        "BE" | "CS0" => 0,
        "CS1" => 8,
        "CS2" => 16,
        "CS3" => 24,
        "CS4" => 32,
        "CS5" => 40,
        "CS6" => 48,
        "CS7" => 56,
        "EF" => 46,
        "AF11" => 10,
        "AF12" => 12,
        "AF13" => 14,
        "AF21" => 18,
        "AF22" => 20,
        "AF23" => 22,
        "AF31" => 26,
        "AF32" => 28,
        "AF33" => 30,
        "AF41" => 34,
        "AF42" => 36,
        "AF43" => 38,
        _ => return None,
    })
}

pub(crate) fn parse_mac(s: &str) -> Option<[u8; 6]> {
    let mut out = [0u8; 6];
    let mut n = 0;
    for part in s.split(':') {
        if n == 6 || part.is_empty() || part.len() > 2 {
            return None;
        }
        out[n] = u8::from_str_radix(part, 16).ok()?;
        n += 1;
    }
    (n == 6).then_some(out)
}

/// ICMP (v4) or ICMPv6 type by name or `type[/code]`.
fn icmp_type(v: &str, v6: bool) -> Option<IcmpType> {
    let all = |ty| IcmpType {
        ty,
        code_lo: 0,
        code_hi: 255,
    };
    let one = |ty, c| IcmpType {
        ty,
        code_lo: c,
        code_hi: c,
    };
    if let Some(first) = v.bytes().next()
        && first.is_ascii_digit()
    {
        return match v.split_once('/') {
            Some((t, c)) => Some(one(t.parse().ok()?, c.parse().ok()?)),
            None => Some(all(v.parse().ok()?)),
        };
    }
    if v == "any" {
        return Some(all(255));
    }
    Some(if !v6 {
        match v {
            "echo-reply" | "pong" => all(0),
            "destination-unreachable" => all(3),
            "network-unreachable" => one(3, 0),
            "host-unreachable" => one(3, 1),
            "protocol-unreachable" => one(3, 2),
            "port-unreachable" => one(3, 3),
            "fragmentation-needed" => one(3, 4),
            "source-route-failed" => one(3, 5),
            "network-unknown" => one(3, 6),
            "host-unknown" => one(3, 7),
            "network-prohibited" => one(3, 9),
            "host-prohibited" => one(3, 10),
            "TOS-network-unreachable" => one(3, 11),
            "TOS-host-unreachable" => one(3, 12),
            "communication-prohibited" => one(3, 13),
            "host-precedence-violation" => one(3, 14),
            "precedence-cutoff" => one(3, 15),
            "source-quench" => all(4),
            "redirect" => all(5),
            "network-redirect" => one(5, 0),
            "host-redirect" => one(5, 1),
            "TOS-network-redirect" => one(5, 2),
            "TOS-host-redirect" => one(5, 3),
            "echo-request" | "ping" => all(8),
            "router-advertisement" => all(9),
            "router-solicitation" => all(10),
            "time-exceeded" | "ttl-exceeded" => all(11),
            "ttl-zero-during-transit" => one(11, 0),
            "ttl-zero-during-reassembly" => one(11, 1),
            "parameter-problem" => all(12),
            "ip-header-bad" => one(12, 0),
            "required-option-missing" => one(12, 1),
            "timestamp-request" => all(13),
            "timestamp-reply" => all(14),
            "address-mask-request" => all(17),
            "address-mask-reply" => all(18),
            _ => return None,
        }
    } else {
        match v {
            "destination-unreachable" => all(1),
            "no-route" => one(1, 0),
            "communication-prohibited" => one(1, 1),
            "beyond-scope" => one(1, 2),
            "address-unreachable" => one(1, 3),
            "port-unreachable" => one(1, 4),
            "failed-policy" => one(1, 5),
            "reject-route" => one(1, 6),
            "packet-too-big" => all(2),
            "time-exceeded" | "ttl-exceeded" => all(3),
            "ttl-zero-during-transit" => one(3, 0),
            "ttl-zero-during-reassembly" => one(3, 1),
            "parameter-problem" => all(4),
            "bad-header" => one(4, 0),
            "unknown-header-type" => one(4, 1),
            "unknown-option" => one(4, 2),
            "echo-request" | "ping" => all(128),
            "echo-reply" | "pong" => all(129),
            "mld-listener-query" => all(130),
            "mld-listener-report" => all(131),
            "mld-listener-done" | "mld-listener-reduction" => all(132),
            "router-solicitation" => all(133),
            "router-advertisement" => all(134),
            "neighbour-solicitation" | "neighbor-solicitation" => all(135),
            "neighbour-advertisement" | "neighbor-advertisement" => all(136),
            "redirect" => all(137),
            _ => return None,
        }
    })
}

#[cfg(test)]
mod tests {
    use super::str_hash;

    /// The hash as first written (tail copied into a zero-padded buffer).
    fn str_hash_reference(b: &[u8]) -> u64 {
        const K: u64 = 0x51_7c_c1_b7_27_22_0a_95;
        let mut h = (b.len() as u64).wrapping_mul(K);
        let mut chunks = b.chunks_exact(8);
        for c in &mut chunks {
            let w = u64::from_le_bytes(c.try_into().unwrap_or([0; 8]));
            h = (h.rotate_left(5) ^ w).wrapping_mul(K);
        }
        let rest = chunks.remainder();
        if !rest.is_empty() {
            let mut last = [0u8; 8];
            last[..rest.len()].copy_from_slice(rest);
            h = (h.rotate_left(5) ^ u64::from_le_bytes(last)).wrapping_mul(K);
        }
        h ^= h >> 33;
        h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
        h ^= h >> 33;
        h
    }

    #[test]
    fn str_hash_tail_loads() {
        let bytes: Vec<u8> = (0..64u32)
            .map(|i| (i.wrapping_mul(0x9e37_79b9) >> 13) as u8)
            .collect();
        for start in 0..8 {
            for len in 0..=(bytes.len() - start) {
                let b = &bytes[start..start + len];
                assert_eq!(str_hash(b), str_hash_reference(b), "len {len}");
            }
        }
    }
}
