//! Netfilter hooks (`NF_HOOK`): conntrack lookup at PREROUTING/OUTPUT (`nf_conntrack_in`),
//! the firewall's verdicts as branches, and NAT (`nf_nat_inet_fn`): decided by the nat table on
//! a connection's first packet, applied from the conntrack entry afterwards.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use crate::nf::{CtDir, CtEntry, CtState, Manip, NatAction, NfHook, NfPacket, NfVerdict, Tuple};
use crate::result::{CT_COLLECTED_ORIG, CT_COLLECTED_REPLY, Disposition, Leg, RuleRef, Step};
use crate::world::NsIdx;

use super::Walker;
use super::state::{End, Next, St, end, endpoint_of};

impl<'w, 'a> Walker<'w, 'a> {
    /// Run one netfilter hook with conntrack; returns the surviving states (others are ended
    /// into `out` as... no: ended states are returned as errors only when all end).
    pub(super) fn hook(
        &self,
        mut st: St,
        ns: NsIdx,
        hook: NfHook,
        iif: Option<usize>,
        oif: Option<usize>,
        phys: Option<(usize, Option<usize>)>,
    ) -> Vec<Next> {
        let v = &self.world.ns[ns];
        // Conntrack lookup at PREROUTING and OUTPUT, unless the skb is already associated.
        if matches!(hook, NfHook::Prerouting | NfHook::Output)
            && st.skb_ct.is_none()
            && st.untracked_ns != Some(ns)
        {
            let t = st.pkt.tuple();
            let mut collected = false;
            let mut found = st.cts.iter().enumerate().find_map(|(i, e)| {
                (e.ns == ns && e.proto == st.pkt.proto).then_some(())?;
                if e.orig == t {
                    Some((i, CtDir::Orig))
                } else if e.reply == t {
                    Some((i, CtDir::Reply))
                } else {
                    None
                }
            });
            if found.is_none()
                && self.opts.collected_conntrack
                && st.leg == Leg::Forward
                && let Some((e, dir)) = collected_entry(v.snap, ns, st.pkt.proto, t)
            {
                st.cts.push(e);
                found = Some((st.cts.len() - 1, dir));
                collected = true;
            }
            match found {
                Some((i, dir)) => {
                    st.skb_ct = Some((i, dir, false));
                    let text = st.cts[i].text();
                    let (orig, reply) = st.cts[i].tuples();
                    let state = match (dir, collected) {
                        (CtDir::Orig, false) => "established",
                        (CtDir::Reply, false) => "reply",
                        (CtDir::Orig, true) => CT_COLLECTED_ORIG,
                        (CtDir::Reply, true) => CT_COLLECTED_REPLY,
                    };
                    self.hop(
                        &mut st,
                        ns,
                        iif,
                        oif,
                        Step::Conntrack {
                            state: state.into(),
                            entry: text,
                            orig,
                            reply,
                        },
                    );
                }
                None => {
                    if st.leg == Leg::Reply
                        && st.pkt.proto == 6
                        && let Some(e) = st.cts.iter().find(|e| e.ns == ns)
                    {
                        let e = e.clone();
                        let bridged = if phys.is_some() {
                            " (inside the bridge)"
                        } else {
                            ""
                        };
                        let where_ = self.last_nat_hop(&st);
                        let mut stop = end(
                            Disposition::ReplyMismatch,
                            format!(
                                "the reply {t} does not match conntrack entry `{}` in {}{bridged}: TCP treats it as INVALID and the handshake dies{where_}",
                                e.text(),
                                v.label()
                            ),
                            Some("nat-reply-mismatch"),
                        )
                        .by(e.object(v.place(), false));
                        if phys.is_some() {
                            // The reply met netfilter inside the bridge only because of
                            // br_netfilter.
                            stop = stop.by(
                                v.sysctl_obj(super::family::Family::of(st.pkt.dst).br_nf_sysctl())
                            );
                        }
                        stop = stop.by_all(self.bridged_nat_objs(&st));
                        return vec![Next::Stop(st, stop)];
                    }
                    let e = CtEntry {
                        ns,
                        proto: st.pkt.proto,
                        orig: t,
                        reply: t.invert(),
                        snat: false,
                        dnat: false,
                        nat_done_dst: false,
                        nat_done_src: false,
                        mark: 0,
                    };
                    st.cts.push(e);
                    st.skb_ct = Some((st.cts.len() - 1, CtDir::Orig, true));
                }
            }
        }
        let (ct_state, ctmark, orig_dst, ct_status) = match st.skb_ct {
            Some((i, dir, new)) => {
                let e = &st.cts[i];
                let s = match (dir, new) {
                    (CtDir::Reply, _) => CtState::Reply,
                    (CtDir::Orig, true) => CtState::New,
                    (CtDir::Orig, false) => CtState::Established,
                };
                let mut status = 0;
                if e.snat {
                    status |= 1 << 4;
                }
                if e.dnat {
                    status |= 1 << 5;
                }
                if !new {
                    status |= 1 << 3;
                }
                if dir == CtDir::Reply {
                    status |= 1 << 1;
                }
                (s, e.mark, Some(e.orig.dst), status)
            }
            None => (CtState::Untracked, 0, None, 0),
        };
        let name = |i: Option<usize>| i.map(|i| v.link_name(i).to_string());
        let nfp = NfPacket {
            src: st.pkt.src,
            dst: st.pkt.dst,
            proto: st.pkt.proto,
            sport: st.pkt.has_ports().then_some(st.pkt.sport),
            dport: st.pkt.has_ports().then_some(st.pkt.dport),
            icmp_type: st.pkt.is_icmp().then_some(st.pkt.icmp_type),
            tcp_flags: st.pkt.tcp_flags,
            len: st.pkt.len,
            mark: st.pkt.mark,
            ctmark,
            ct: ct_state,
            ct_status,
            ct_orig_dst: orig_dst,
            iif: name(iif),
            oif: name(oif),
            physdev_in: phys.map(|p| v.link_name(p.0).to_string()),
            physdev_out: phys.and_then(|p| p.1).map(|o| v.link_name(o).to_string()),
            bridged: phys.is_some(),
            rpf: match (hook, iif) {
                (NfHook::Prerouting, Some(i)) if phys.is_none() => self.rpf(&st, ns, i),
                _ => None,
            },
        };
        let manip = hook.manip();
        let nat_allowed = match (st.skb_ct, manip) {
            (Some((i, CtDir::Orig, true)), Some(Manip::Dst)) => !st.cts[i].nat_done_dst,
            (Some((i, CtDir::Orig, true)), Some(Manip::Src)) => !st.cts[i].nat_done_src,
            _ => false,
        };
        let given: Vec<crate::nf::Fact> = st
            .facts
            .iter()
            .filter(|(n, _)| *n == ns)
            .map(|(_, f)| f.clone())
            .collect();
        let outcomes = self.nf.evaluate(ns, hook, &nfp, nat_allowed, &given);
        let total: f64 = outcomes.iter().map(|o| o.probability).sum();
        let mut alive = Vec::new();
        let n = outcomes.len();
        let mut pending = Some(st);
        for (k, o) in outcomes.into_iter().enumerate() {
            // Clone the state for every outcome but the last, which takes it.
            let mut s = match (k + 1 == n, pending.take()) {
                (true, Some(p)) => p,
                (_, Some(p)) => {
                    let c = p.clone();
                    pending = Some(p);
                    c
                }
                (_, None) => break,
            };
            if total > 0.0 {
                s.prob *= o.probability / total.max(1.0);
            }
            for f in &o.facts {
                if !s.facts.iter().any(|(n, g)| *n == ns && g.key == f.key) {
                    s.facts.push((ns, f.clone()));
                }
            }
            s.pkt.mark = o.mark;
            if let Some((i, _, _)) = s.skb_ct {
                s.cts[i].mark = o.ctmark;
            }
            for a in &o.assumptions {
                let a = format!("{a} in {} {}", v.label(), hook.name());
                if !s.assumptions.contains(&a) {
                    s.assumptions.push(a);
                }
            }
            let verdict = match &o.verdict {
                NfVerdict::Accept => "accept",
                NfVerdict::Drop => "drop",
                NfVerdict::Reject(_) => "reject",
                NfVerdict::Queue => "queue",
                NfVerdict::Unknown(_) => "unknown",
            };
            if !o.rules.is_empty() || o.verdict != NfVerdict::Accept {
                self.hop(
                    &mut s,
                    ns,
                    iif,
                    oif,
                    Step::Netfilter {
                        hook: hook.name().into(),
                        bridged: phys.is_some(),
                        verdict: verdict.into(),
                        rules: o.rules.clone(),
                    },
                );
            }
            let last_rule = o.rules.last();
            let brs = if phys.is_some() {
                " (br_netfilter, inside the bridge)"
            } else {
                ""
            };
            let place = v.place();
            let deciding: Vec<crate::KernelObject> =
                last_rule.map(|r| r.object(&place)).into_iter().collect();
            let res = match &o.verdict {
                NfVerdict::Accept => Ok(()),
                NfVerdict::Drop => Err(end(
                    Disposition::Dropped,
                    format!(
                        "dropped in {} by {}{brs} in {}",
                        hook.name(),
                        rule_desc(last_rule),
                        v.label()
                    ),
                    Some(drop_cause(hook, last_rule)),
                )
                .by_all(deciding)),
                NfVerdict::Reject(w) => Err(end(
                    Disposition::Rejected,
                    format!(
                        "rejected ({w}) in {} by {}{brs} in {}",
                        hook.name(),
                        rule_desc(last_rule),
                        v.label()
                    ),
                    Some("iptables-reject-rule"),
                )
                .by_all(deciding)),
                NfVerdict::Queue => Err(end(
                    Disposition::Unknown,
                    format!(
                        "queued to user space in {} by {}",
                        hook.name(),
                        rule_desc(last_rule)
                    ),
                    Some("uncertain-rule"),
                )
                .by_all(deciding)),
                NfVerdict::Unknown(why) => Err(end(
                    Disposition::Unknown,
                    format!("{} in {}: {why}", hook.name(), v.label()),
                    Some("uncertain-rule"),
                )
                .by_all(deciding)
                .by(crate::KernelObject::Unmodelled {
                    at: place.clone(),
                    what: netray_snapshot::text::clip(why, 300).into_owned(),
                })),
            };
            if let Err(e) = res {
                alive.push(Next::Stop(s, e));
                continue;
            }
            if o.notrack
                && let Some((i, _, new)) = s.skb_ct.take()
                && new
            {
                s.cts.remove(i);
            }
            if let Err(e) =
                self.apply_nat(&mut s, ns, hook, iif, oif, o.nat.as_ref(), phys.is_some())
            {
                alive.push(Next::Stop(s, e));
                continue;
            }
            alive.push(Next::Go(s));
        }
        alive
    }

    /// The rewrites the reply went through so far (evidence for a reply mismatch).
    /// The br_netfilter switch of every namespace where the reply was NATed inside a bridge:
    /// what put the bridged reply through iptables (seed 000).
    pub(super) fn bridged_nat_objs(&self, st: &St) -> Vec<crate::KernelObject> {
        let mut out: Vec<crate::KernelObject> = Vec::new();
        for h in st.hops.iter().filter(|h| h.leg == Leg::Reply) {
            if let Step::Nat { kind, .. } = &h.step
                && kind.contains("inside the bridge")
                && let Some(v) = self
                    .world
                    .ns
                    .iter()
                    .find(|v| v.node == h.node && v.netns_label() == h.netns)
            {
                let o = v.sysctl_obj(super::family::Family::of(st.pkt.dst).br_nf_sysctl());
                if !out.contains(&o) {
                    out.push(o);
                }
                // The source NAT of the request whose mapping the bridged reply reversed.
                for f in st
                    .hops
                    .iter()
                    .filter(|f| f.leg == Leg::Forward && f.node == h.node && f.netns == h.netns)
                {
                    if let Step::Netfilter { rules, .. } = &f.step {
                        for r in rules.iter().filter(|r| {
                            r.text.contains("-j MASQUERADE") || r.text.contains("-j SNAT")
                        }) {
                            let o = r.object(&v.place());
                            if !out.contains(&o) {
                                out.push(o);
                            }
                        }
                    }
                }
            }
        }
        out
    }

    pub(super) fn last_nat_hop(&self, st: &St) -> String {
        let nats: Vec<String> = st
            .hops
            .iter()
            .filter(|h| h.leg == Leg::Reply)
            .filter_map(|h| match &h.step {
                Step::Nat {
                    kind,
                    before,
                    after,
                } => Some(format!(
                    "{kind} in {}/{}: {before} -> {after}",
                    h.node, h.netns
                )),
                _ => None,
            })
            .collect();
        if nats.is_empty() {
            String::new()
        } else {
            format!(" (the reply was rewritten earlier: {})", nats.join("; "))
        }
    }

    #[allow(clippy::too_many_arguments)]
    fn apply_nat(
        &self,
        s: &mut St,
        ns: NsIdx,
        hook: NfHook,
        iif: Option<usize>,
        oif: Option<usize>,
        nat: Option<&NatAction>,
        bridged: bool,
    ) -> Result<(), End> {
        let Some(manip) = hook.manip() else {
            return Ok(());
        };
        let Some((i, dir, new)) = s.skb_ct else {
            return Ok(());
        };
        let before = s.pkt.view().to_string();
        let inside = if bridged {
            " inside the bridge (br_netfilter)"
        } else {
            ""
        };
        let mut kind: Option<String> = None;
        if new && dir == CtDir::Orig {
            let done = match manip {
                Manip::Dst => s.cts[i].nat_done_dst,
                Manip::Src => s.cts[i].nat_done_src,
            };
            if !done {
                match manip {
                    Manip::Dst => s.cts[i].nat_done_dst = true,
                    Manip::Src => s.cts[i].nat_done_src = true,
                }
                if let Some(a) = nat {
                    let t0 = s.cts[i].orig;
                    match a {
                        NatAction::Dnat { addr, port } if manip == Manip::Dst => {
                            let (a, p) = (addr.unwrap_or(s.pkt.dst), port.unwrap_or(s.pkt.dport));
                            s.pkt.set_dst(a, p);
                            if s.leg == Leg::Forward && s.endpoint.is_none() {
                                s.endpoint = Some(endpoint_of(&s.pkt));
                            }
                            kind = Some("dnat".into());
                        }
                        NatAction::Redirect { port } if manip == Manip::Dst => {
                            let a = match hook {
                                NfHook::Output => {
                                    if s.pkt.dst.is_ipv4() {
                                        IpAddr::V4(Ipv4Addr::LOCALHOST)
                                    } else {
                                        IpAddr::V6(Ipv6Addr::LOCALHOST)
                                    }
                                }
                                _ => iif
                                    .and_then(|l| self.primary_addr(ns, l, s.pkt.dst.is_ipv4()))
                                    .unwrap_or(s.pkt.dst),
                            };
                            s.pkt.set_dst(a, port.unwrap_or(s.pkt.dport));
                            kind = Some("redirect".into());
                        }
                        NatAction::Snat {
                            addr,
                            port,
                            random_fully,
                        } if manip == Manip::Src => {
                            let p = port.unwrap_or(if *random_fully {
                                random_port(&t0)
                            } else {
                                s.pkt.sport
                            });
                            s.pkt.set_src(addr.unwrap_or(s.pkt.src), p);
                            kind = Some(
                                if *random_fully {
                                    "snat --random-fully"
                                } else {
                                    "snat"
                                }
                                .into(),
                            );
                        }
                        NatAction::Masquerade { port, random_fully } if manip == Manip::Src => {
                            let Some(o) = oif else {
                                return Err(end(
                                    Disposition::Unknown,
                                    "MASQUERADE without an output interface",
                                    None,
                                ));
                            };
                            let nh = s.route.map(|r| r.nh).unwrap_or(s.pkt.dst);
                            let a = self.select_src(ns, o, nh, None);
                            if a.is_unspecified() {
                                return Err(end(
                                    Disposition::Dropped,
                                    format!(
                                        "MASQUERADE: {} has no address",
                                        self.world.ns[ns].link_name(o)
                                    ),
                                    Some("masquerade-no-address"),
                                ));
                            }
                            let p = port.unwrap_or(if *random_fully {
                                random_port(&t0)
                            } else {
                                s.pkt.sport
                            });
                            s.pkt.set_src(a, p);
                            kind = Some(
                                if *random_fully {
                                    "masquerade --random-fully"
                                } else {
                                    "masquerade"
                                }
                                .into(),
                            );
                        }
                        _ => {}
                    }
                    let e = &mut s.cts[i];
                    match manip {
                        Manip::Dst => {
                            if s.pkt.dst != e.orig.dst || s.pkt.tuple().dport != e.orig.dport {
                                e.dnat = true;
                                e.reply.src = s.pkt.dst;
                                e.reply.sport = s.pkt.tuple().dport;
                            }
                        }
                        Manip::Src => {
                            if s.pkt.src != e.orig.src || s.pkt.tuple().sport != e.orig.sport {
                                e.snat = true;
                                e.reply.dst = s.pkt.src;
                                e.reply.dport = s.pkt.tuple().sport;
                            }
                        }
                    }
                }
                if manip == Manip::Src
                    && kind.is_none()
                    && let Some(p) = clash_free_port(&s.cts, i)
                {
                    // nf_nat_alloc_null_binding → get_unique_tuple: this connection's reply
                    // tuple is already another connection's (e.g. a host connection's request,
                    // bridged back through this host), so the kernel moves the source port to
                    // a free one, picked at random; the reply then finds this entry alone.
                    let src = s.pkt.src;
                    s.pkt.set_src(src, p);
                    let e = &mut s.cts[i];
                    e.snat = true;
                    e.reply.dport = p;
                    kind = Some(
                        "null binding: source port moved, the reply tuple was another connection's (the kernel picks a random free port; shown as the first free one)"
                            .into(),
                    );
                }
            }
        } else {
            let e = &s.cts[i];
            let (ip, port, k) = match (dir, manip) {
                (CtDir::Orig, Manip::Dst) if e.dnat => {
                    (e.reply.src, e.reply.sport, "dnat (conntrack)")
                }
                (CtDir::Orig, Manip::Src) if e.snat => {
                    (e.reply.dst, e.reply.dport, "snat (conntrack)")
                }
                (CtDir::Reply, Manip::Dst) if e.snat => (e.orig.src, e.orig.sport, "de-snat"),
                (CtDir::Reply, Manip::Src) if e.dnat => (e.orig.dst, e.orig.dport, "de-dnat"),
                _ => return Ok(()),
            };
            let changed = match manip {
                Manip::Dst => s.pkt.dst != ip || (s.pkt.has_ports() && s.pkt.dport != port),
                Manip::Src => s.pkt.src != ip || (s.pkt.has_ports() && s.pkt.sport != port),
            };
            if changed {
                match manip {
                    Manip::Dst => s.pkt.set_dst(ip, port),
                    Manip::Src => s.pkt.set_src(ip, port),
                }
                // A forward packet DNATed by an existing (collected) entry reaches the endpoint
                // that entry chose.
                if manip == Manip::Dst && dir == CtDir::Orig && s.endpoint.is_none() {
                    s.endpoint = Some(endpoint_of(&s.pkt));
                }
                kind = Some(k.into());
            }
        }
        if let Some(k) = kind {
            let after = s.pkt.view().to_string();
            if after != before {
                let text = s.cts[i].text();
                let (orig, reply) = s.cts[i].tuples();
                self.hop(
                    s,
                    ns,
                    iif,
                    oif,
                    Step::Nat {
                        kind: format!("{k} in {}{inside}", hook.name()),
                        before,
                        after,
                    },
                );
                let st = if dir == CtDir::Reply { "reply" } else { "new" };
                if dir == CtDir::Orig && new {
                    self.hop(
                        s,
                        ns,
                        iif,
                        oif,
                        Step::Conntrack {
                            state: st.into(),
                            entry: text,
                            orig,
                            reply,
                        },
                    );
                }
            }
        }
        Ok(())
    }
}

fn random_port(t: &Tuple) -> u16 {
    // Deterministic stand-in for a random port: different from the original.
    let mut h: u32 = 2166136261;
    for b in format!("{t}").bytes() {
        h = (h ^ u32::from(b)).wrapping_mul(16777619);
    }
    let p = 32768 + (h % 28000) as u16;
    if p == t.sport { p + 1 } else { p }
}

fn rule_desc(r: Option<&RuleRef>) -> String {
    match r {
        Some(r) => match r.index {
            Some(i) => format!("{} {} rule {i} `{}`", r.table, r.chain, r.text),
            None => format!("the {} {} chain policy ({})", r.table, r.chain, r.text),
        },
        None => "the firewall".into(),
    }
}

fn drop_cause(hook: NfHook, r: Option<&RuleRef>) -> &'static str {
    match r {
        Some(r) if r.index.is_none() && hook == NfHook::Forward => "forward-policy-drop",
        Some(r) if r.index.is_none() => "chain-policy-drop",
        _ => "iptables-drop-rule",
    }
}

/// A UDP entry of namespace `ns`'s collected conntrack table (zone 0) holding tuple `t`, as a
/// confirmed entry whose NAT bindings are decided, and the direction `t` has in it.
fn collected_entry(
    snap: &netray_snapshot::NetnsSnapshot,
    ns: NsIdx,
    proto: u8,
    t: Tuple,
) -> Option<(CtEntry, CtDir)> {
    // TCP and SCTP entries have their own state machines (a SYN meeting an ESTABLISHED entry
    // is not simply "established"); only UDP is followed.
    if proto != 17 {
        return None;
    }
    snap.conntrack.as_ref()?.entries.iter().find_map(|e| {
        if e.proto != proto || e.zone != 0 {
            return None;
        }
        let entry = CtEntry::from_collected(ns, e);
        let dir = if entry.orig == t {
            CtDir::Orig
        } else if entry.reply == t {
            CtDir::Reply
        } else {
            return None;
        };
        Some((entry, dir))
    })
}

/// A free source port for entry `i` when its reply tuple equals a tuple (either direction) of
/// another entry in the same namespace (`nf_nat_used_tuple`); `None` when there is no clash or
/// the protocol has no ports.
fn clash_free_port(cts: &[CtEntry], i: usize) -> Option<u16> {
    let me = &cts[i];
    if !matches!(me.proto, 6 | 17 | 132) {
        return None;
    }
    let same = |e: &CtEntry| e.ns == me.ns && e.proto == me.proto;
    let clash = cts
        .iter()
        .enumerate()
        .any(|(j, e)| j != i && same(e) && (e.reply == me.reply || e.orig == me.reply));
    if !clash {
        return None;
    }
    (1024..=u16::MAX).find(|&p| {
        let mut r = me.reply;
        r.dport = p;
        !cts.iter().any(|e| {
            same(e)
                && (e.reply == r || e.orig == r || e.orig.sport == p && e.orig.src == me.orig.src)
        })
    })
}
