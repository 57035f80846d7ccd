//! The real netfilter engine: `netray-netfilter` rulesets, one per namespace.

use std::net::IpAddr;

use netray_netfilter as nfl;

use crate::nf::{CtState, Fact, NatAction, Netfilter, NfHook, NfOutcome, NfPacket, NfVerdict};
use crate::result::RuleRef;
use crate::world::{NsIdx, World};

/// Per-namespace parsed rulesets and host contexts.
pub struct RulesetEngine {
    rulesets: Vec<Option<Result<nfl::Ruleset, String>>>,
    contexts: Vec<nfl::HostContext>,
}

impl RulesetEngine {
    /// The parsed firewall of namespace `ns`: `None` when it holds no rules at all, an error
    /// message when a source could not be read.
    pub fn ruleset(&self, ns: NsIdx) -> Option<&Result<nfl::Ruleset, String>> {
        self.rulesets.get(ns).and_then(Option::as_ref)
    }

    /// The host context (local addresses, sockets, interface groups) of namespace `ns`.
    pub fn context(&self, ns: NsIdx) -> Option<&nfl::HostContext> {
        self.contexts.get(ns)
    }

    /// Parse every namespace's firewall. Namespaces without any rules accept everything.
    pub fn new(world: &World<'_>) -> RulesetEngine {
        let mut rulesets = Vec::with_capacity(world.ns.len());
        let mut contexts = Vec::with_capacity(world.ns.len());
        for v in &world.ns {
            let fw = &v.snap.firewall;
            let empty = fw.iptables.iter().all(|d| d.text.trim().is_empty())
                && fw.nft_json.is_none()
                && fw.ipset.is_none();
            rulesets.push(if empty {
                None
            } else {
                Some(nfl::Ruleset::from_firewall(fw).map_err(|e| e.to_string()))
            });
            let addresses = v
                .snap
                .addresses
                .iter()
                .map(|a| nfl::LocalAddr {
                    iface: a.dev.clone(),
                    addr: a.addr.addr(),
                    prefix_len: a.addr.prefix_len(),
                    broadcast: match a.addr {
                        ipnet::IpNet::V4(n) if n.prefix_len() < 31 => {
                            Some(IpAddr::V4(n.broadcast()))
                        }
                        _ => None,
                    },
                })
                .collect();
            let sockets = v
                .snap
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
            let iface_groups = v
                .snap
                .links
                .iter()
                .map(|l| (l.name.clone(), l.group))
                .collect();
            contexts.push(nfl::HostContext {
                addresses,
                sockets,
                iface_groups,
                rpfilter_ok: None,
            });
        }
        RulesetEngine { rulesets, contexts }
    }

    /// Parse problems per namespace index (unparseable sources and bad lines).
    pub fn diagnostics(&self) -> Vec<(NsIdx, String)> {
        let mut out = Vec::new();
        for (i, r) in self.rulesets.iter().enumerate() {
            match r {
                Some(Ok(rs)) => out.extend(rs.diagnostics().iter().map(|d| (i, d.to_string()))),
                Some(Err(e)) => out.push((i, e.clone())),
                None => {}
            }
        }
        out
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

impl Netfilter for RulesetEngine {
    fn evaluate(
        &self,
        ns: NsIdx,
        hook: NfHook,
        pkt: &NfPacket,
        nat: bool,
        given: &[Fact],
    ) -> Vec<NfOutcome> {
        match self.rulesets.get(ns) {
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
                let ctx = &self.contexts[ns];
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
                outs.iter().map(from_outcome).collect()
            }
        }
    }
}
