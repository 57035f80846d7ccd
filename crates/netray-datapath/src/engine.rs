//! The real netfilter engine: `netray-netfilter` rulesets, one per namespace.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use netray_netfilter as nfl;

use crate::nf::{CtState, Fact, NatAction, Netfilter, NfHook, NfOutcome, NfPacket, NfVerdict};
use crate::result::RuleRef;
use crate::world::{NsIdx, World};

/// A namespace's parsed firewall: `None` when it holds no rules at all, an error message when
/// a source could not be read.
type Parsed = Option<Result<nfl::Ruleset, String>>;

/// Per-namespace rulesets and host contexts, built on first use: a namespace's firewall dumps
/// are parsed the first time the walk (or a check) asks about it, at most once per engine, and
/// an engine made with [`RulesetEngine::reusing`] takes the parsed rulesets of every namespace
/// whose firewall is unchanged from its base.
pub struct RulesetEngine<'a> {
    /// Each namespace's snapshot, by [`NsIdx`].
    snaps: Vec<&'a netray_snapshot::NetnsSnapshot>,
    /// Each namespace's identity (boot id, inode), to match namespaces with a base engine.
    keys: Vec<(&'a str, u64)>,
    rulesets: Vec<OnceLock<Arc<Parsed>>>,
    contexts: Vec<OnceLock<nfl::HostContext>>,
    /// The engine this one reuses, and each namespace's index there.
    base: Option<(&'a RulesetEngine<'a>, Vec<Option<NsIdx>>)>,
    /// Firewalls this engine parsed itself.
    parses: AtomicUsize,
}

impl std::fmt::Debug for RulesetEngine<'_> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RulesetEngine")
            .field("namespaces", &self.snaps.len())
            .field("parsed", &self.parse_count())
            .finish()
    }
}

impl<'a> RulesetEngine<'a> {
    /// The parsed firewall of namespace `ns`: `None` when it holds no rules at all, an error
    /// message when a source could not be read. Parses it on first use.
    pub fn ruleset(&self, ns: NsIdx) -> Option<&Result<nfl::Ruleset, String>> {
        self.parsed(ns).and_then(|p| p.as_ref().as_ref())
    }

    /// The host context (local addresses, sockets, interface groups) of namespace `ns`.
    pub fn context(&self, ns: NsIdx) -> Option<&nfl::HostContext> {
        let snap = self.snaps.get(ns)?;
        Some(self.contexts[ns].get_or_init(|| host_context(snap)))
    }

    /// An engine over `world`'s namespaces; nothing is parsed until asked. Namespaces without
    /// any rules accept everything.
    pub fn new(world: &World<'a>) -> RulesetEngine<'a> {
        let n = world.ns.len();
        RulesetEngine {
            snaps: world.ns.iter().map(|v| v.snap).collect(),
            keys: world
                .ns
                .iter()
                .map(|v| (v.boot_id, v.snap.id.inode))
                .collect(),
            rulesets: (0..n).map(|_| OnceLock::new()).collect(),
            contexts: (0..n).map(|_| OnceLock::new()).collect(),
            base: None,
            parses: AtomicUsize::new(0),
        }
    }

    /// An engine over `world` (typically a patched copy of `base`'s world) that takes from
    /// `base` the parsed ruleset of every namespace (same boot id and inode) whose firewall
    /// state is equal, parsing in `base` what neither has parsed yet, so that later engines
    /// reusing `base` find it too. Only changed firewalls are parsed here.
    pub fn reusing(world: &World<'a>, base: &'a RulesetEngine<'a>) -> RulesetEngine<'a> {
        let mut e = RulesetEngine::new(world);
        let index: HashMap<(&str, u64), NsIdx> =
            base.keys.iter().enumerate().map(|(i, k)| (*k, i)).collect();
        let map = e.keys.iter().map(|k| index.get(k).copied()).collect();
        e.base = Some((base, map));
        e
    }

    /// Parse (or take from the base engine) namespace `ns`'s firewall on first use.
    fn parsed(&self, ns: NsIdx) -> Option<&Arc<Parsed>> {
        let snap = *self.snaps.get(ns)?;
        Some(self.rulesets[ns].get_or_init(|| {
            if let Some((base, map)) = &self.base
                && let Some(Some(j)) = map.get(ns)
                && let Some(theirs) = base.snaps.get(*j)
                && (std::ptr::eq(&theirs.firewall, &snap.firewall)
                    || theirs.firewall == snap.firewall)
                && let Some(p) = base.parsed(*j)
            {
                return Arc::clone(p);
            }
            self.parses.fetch_add(1, Ordering::Relaxed);
            Arc::new(parse(&snap.firewall))
        }))
    }

    /// How many namespaces' firewalls this engine parsed itself (not taken from a base).
    pub fn parse_count(&self) -> usize {
        self.parses.load(Ordering::Relaxed)
    }

    /// Parse problems per namespace index (unparseable sources and bad lines), of every
    /// namespace: parses every firewall not parsed yet.
    pub fn diagnostics(&self) -> Vec<(NsIdx, String)> {
        for i in 0..self.snaps.len() {
            self.parsed(i);
        }
        self.parsed_diagnostics()
    }

    /// Parse problems of the namespaces whose firewall has been parsed so far (by the walk or
    /// a check): what a run that looked only at those can have met.
    pub fn parsed_diagnostics(&self) -> Vec<(NsIdx, String)> {
        let mut out = Vec::new();
        for (i, r) in self.rulesets.iter().enumerate() {
            match r.get().map(|p| p.as_ref()) {
                Some(Some(Ok(rs))) => {
                    out.extend(rs.diagnostics().iter().map(|d| (i, d.to_string())))
                }
                Some(Some(Err(e))) => out.push((i, e.clone())),
                _ => {}
            }
        }
        out
    }
}

/// Parse one namespace's firewall state.
fn parse(fw: &netray_snapshot::Firewall) -> Parsed {
    let empty = fw.iptables.iter().all(|d| d.text.trim().is_empty())
        && fw.nft_json.is_none()
        && fw.ipset.is_none();
    if empty {
        None
    } else {
        Some(nfl::Ruleset::from_firewall(fw).map_err(|e| e.to_string()))
    }
}

/// The host context of one namespace.
fn host_context(snap: &netray_snapshot::NetnsSnapshot) -> nfl::HostContext {
    let addresses = snap
        .addresses
        .iter()
        .map(|a| nfl::LocalAddr {
            iface: a.dev.clone(),
            addr: a.addr.addr(),
            prefix_len: a.addr.prefix_len(),
            broadcast: match a.addr {
                ipnet::IpNet::V4(n) if n.prefix_len() < 31 => Some(IpAddr::V4(n.broadcast())),
                _ => None,
            },
        })
        .collect();
    let sockets = snap
        .sockets
        .iter()
        .map(|s| nfl::ListenSocket {
            proto: match s.proto {
                netray_snapshot::SocketProto::Tcp => 6,
                netray_snapshot::SocketProto::Udp => 17,
            },
            addr: s.addr,
            port: s.port,
            transparent: false,
        })
        .collect();
    let iface_groups = snap
        .links
        .iter()
        .map(|l| (l.name.clone(), l.group))
        .collect();
    nfl::HostContext {
        addresses,
        sockets,
        iface_groups,
        rpfilter_ok: None,
    }
}

fn hook_of(h: NfHook) -> nfl::Hook {
    match h {
        NfHook::Prerouting => nfl::Hook::Prerouting,
        NfHook::Input => nfl::Hook::Input,
        NfHook::Forward => nfl::Hook::Forward,
        NfHook::Output => nfl::Hook::Output,
        NfHook::Postrouting => nfl::Hook::Postrouting,
    }
}

/// Convert the walk's packet to the engine's.
pub fn to_packet(p: &NfPacket) -> nfl::Packet {
    let mut pkt = nfl::Packet::new(p.src, p.dst, p.proto, p.sport, p.dport);
    pkt.icmp = p.icmp_type.map(|t| (t, 0));
    pkt.tcp_flags = p.tcp_flags;
    pkt.len = p.len;
    pkt.mark = p.mark;
    pkt.iif = p.iif.clone();
    pkt.oif = p.oif.clone();
    pkt.physdev_in = p.physdev_in.clone();
    pkt.physdev_out = p.physdev_out.clone();
    pkt.bridged = p.bridged;
    pkt.rpf = p.rpf.clone();
    let (state, dir) = match p.ct {
        CtState::New => (nfl::CtState::New, nfl::CtDir::Original),
        CtState::Established => (nfl::CtState::Established, nfl::CtDir::Original),
        CtState::Reply => (nfl::CtState::Established, nfl::CtDir::Reply),
        CtState::Untracked => (nfl::CtState::Untracked, nfl::CtDir::Original),
        CtState::Invalid => (nfl::CtState::Invalid, nfl::CtDir::Original),
    };
    pkt.ct = nfl::CtInfo {
        state,
        dir,
        status: p.ct_status,
        mark: p.ctmark,
        orig_dst: p.ct_orig_dst,
        ..nfl::CtInfo::default()
    };
    pkt
}

fn nat_of(a: &nfl::NatAction) -> NatAction {
    match a {
        nfl::NatAction::Dnat { addr, ports, .. } => NatAction::Dnat {
            addr: addr.map(|r| r.lo),
            port: ports.map(|r| r.lo),
        },
        nfl::NatAction::Snat {
            addr,
            ports,
            random,
            random_fully,
            ..
        } => NatAction::Snat {
            addr: addr.map(|r| r.lo),
            port: ports.map(|r| r.lo),
            random_fully: *random || *random_fully,
        },
        nfl::NatAction::Masquerade {
            ports,
            random,
            random_fully,
        } => NatAction::Masquerade {
            port: ports.map(|r| r.lo),
            random_fully: *random || *random_fully,
        },
        nfl::NatAction::Redirect { ports, .. } => NatAction::Redirect {
            port: ports.map(|r| r.lo),
        },
    }
}

/// Longest rule text quoted in a trace (characters); longer ones are cut, saying their size.
pub const MAX_RULE_QUOTE: usize = 2000;

/// Convert one engine outcome.
pub fn from_outcome(o: &nfl::Outcome) -> NfOutcome {
    let verdict = match &o.verdict {
        nfl::Verdict::Accept => NfVerdict::Accept,
        nfl::Verdict::Drop => NfVerdict::Drop,
        nfl::Verdict::Reject { with } => NfVerdict::Reject(match with {
            nfl::RejectWith::IcmpPortUnreachable => "icmp-port-unreachable".into(),
            nfl::RejectWith::Icmp6PortUnreachable => "icmp6-port-unreachable".into(),
            nfl::RejectWith::TcpReset => "tcp-reset".into(),
            nfl::RejectWith::Other(s) => s.clone(),
        }),
        nfl::Verdict::Queue { .. } => NfVerdict::Queue,
        nfl::Verdict::Unknown { reason } => {
            NfVerdict::Unknown(netray_snapshot::text::clip(reason, MAX_RULE_QUOTE).into_owned())
        }
    };
    let rules: Vec<RuleRef> = o
        .matched_rules()
        .map(|h| RuleRef {
            backend: match h.backend {
                nfl::Backend::IptablesLegacy => "iptables-legacy",
                nfl::Backend::IptablesNft => "iptables-nft",
                nfl::Backend::Nftables => "nft",
            }
            .to_string(),
            family: h.family.to_string(),
            handle: h.handle,
            table: h.table.to_string(),
            chain: h.chain.to_string(),
            index: (h.index != 0).then_some(h.index as usize),
            // A rule is quoted, not echoed: a hostile 10 MB line stays a bounded quote.
            text: netray_snapshot::text::clip(h.text.as_str(), MAX_RULE_QUOTE).into_owned(),
            packets: h.counters.map(|c| c.0),
            bytes: h.counters.map(|c| c.1),
        })
        .collect();
    let assumptions = o
        .assumptions
        .iter()
        .map(|a| {
            format!(
                "assumed `{}` is {} (asked first by {}; {})",
                a.key,
                if a.matched { "true" } else { "false" },
                a.rule,
                a.what
            )
        })
        .collect();
    NfOutcome {
        probability: o.probability,
        verdict,
        mark: o.mark,
        ctmark: o.ct_mark,
        nat: o.nat.as_ref().map(nat_of),
        notrack: o.ct.notrack,
        rules,
        assumptions,
        facts: o
            .assumptions
            .iter()
            .map(|a| Fact {
                key: a.key.clone(),
                matched: a.matched,
            })
            .collect(),
    }
}

impl Netfilter for RulesetEngine<'_> {
    fn evaluate(
        &self,
        ns: NsIdx,
        hook: NfHook,
        pkt: &NfPacket,
        nat: bool,
        given: &[Fact],
    ) -> Vec<NfOutcome> {
        match self.parsed(ns).map(|p| p.as_ref()) {
            None | Some(None) => vec![NfOutcome::accept(pkt)],
            Some(Some(Err(e))) => vec![NfOutcome {
                verdict: NfVerdict::Unknown(format!(
                    "the firewall of this namespace could not be parsed: {e}"
                )),
                ..NfOutcome::accept(pkt)
            }],
            Some(Some(Ok(rs))) => {
                let opts = nfl::EvalOptions {
                    nat,
                    bridged: pkt.bridged,
                    ..nfl::EvalOptions::default()
                };
                let Some(ctx) = self.context(ns) else {
                    return vec![NfOutcome::accept(pkt)];
                };
                let decided: Vec<nfl::Assumption> = given
                    .iter()
                    .map(|f| nfl::Assumption {
                        key: f.key.clone(),
                        rule: String::new(),
                        what: String::new(),
                        matched: f.matched,
                    })
                    .collect();
                let outs = rs.evaluate_given(hook_of(hook), &to_packet(pkt), ctx, &opts, &decided);
                if outs.is_empty() {
                    return vec![NfOutcome::accept(pkt)];
                }
                outs.iter().flat_map(|o| nat_outcomes(o, pkt)).collect()
            }
        }
    }
}

/// [`from_outcome`] with a NAT range resolved as the kernel resolves it for this connection
/// (`netray_netfilter::natrange`): one outcome for a deterministic choice, one per port (equal
/// shares) for a `--random` destination port range, unknown naming the rule when the choice
/// cannot be predicted.
fn nat_outcomes(o: &nfl::Outcome, pkt: &NfPacket) -> Vec<NfOutcome> {
    let base = from_outcome(o);
    let Some(n) = &o.nat else {
        return vec![base];
    };
    let zone = o.ct.zone.unwrap_or(0);
    match nfl::natrange::choose(n, pkt.src, pkt.dst, pkt.sport, pkt.dport, zone) {
        Ok(choices) => choices
            .into_iter()
            .map(|(w, a)| NfOutcome {
                probability: base.probability * w,
                nat: Some(nat_of(&a)),
                ..base.clone()
            })
            .collect(),
        Err(why) => {
            let rule = base
                .rules
                .last()
                .map(|r| format!(" ({})", r.text))
                .unwrap_or_default();
            vec![NfOutcome {
                verdict: NfVerdict::Unknown(format!("{why}{rule}")),
                ..base
            }]
        }
    }
}
