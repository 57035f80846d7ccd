//! The packet walk: every branch of a flow through the world, forward and reply.
//!
//! This module holds the public API ([`trace`], [`Flow`], [`Start`], [`Options`],
//! [`TraceError`]), where a flow starts, and the [`Walker`]'s step loop: one packet position
//! (`state::Pos`) at a time, in the order the kernel takes them. The stages live beside it:
//!
//! * `state`: the packet, its position and the per-branch state, small shared helpers;
//! * `route`: the output route and what a FIB result selects (ECMP as branches), source
//!   address selection;
//! * `input`: the input route and its checks (martians, forwarding, `fib_validate_source`
//!   with rp_filter), and the MTU check;
//! * `hooks`: netfilter hooks with conntrack, and NAT;
//! * `ipvs`: `ip_vs_in` / `ip_vs_out` over the [`crate::ipvs`] model;
//! * `deliver`: local delivery, sockets, the reply and its matching;
//! * `l2`: transmission, neighbours, the L2 segment, frames out and in;
//! * `bridge`: bridge forwarding and br_netfilter;
//! * `vxlan`: VXLAN encapsulation and decapsulation.

mod bridge;
mod deliver;
mod hooks;
mod input;
mod ipvs;
mod l2;
mod route;
mod state;
mod vxlan;

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netray_snapshot::{LinkKind, RouteType};

use crate::fib::{self, FibResult, FlowKey};
use crate::nf::{Netfilter, NfHook, Tuple};
use crate::result::{Branch, Disposition, FlowView, Hop, Leg, Step, Trace};
use crate::world::{NsIdx, World};

use state::{End, Next, Pkt, Pos, St, TCP_SYN, end, fork, go, is_up};

/// Where a flow starts.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Start {
    /// In the namespace owning the source address (locally generated).
    Auto,
    /// Entering node NAME's host namespace from outside, on the interface facing the source
    /// (the route to it, else the default route's device). The source may be one of the
    /// node's own addresses: that is how a martian arrives (seed 004).
    Node(String),
    /// Entering a namespace (by `/run/netns` name or `netns:INODE`) from outside, same rule.
    Netns(String),
}

/// A flow to trace.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Flow {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// IP protocol (6, 17, 132, 1; 1 is turned into 58 for IPv6).
    pub proto: u8,
    /// Source port (TCP/UDP/SCTP; ICMP echo id).
    pub sport: u16,
    /// Destination port (TCP/UDP/SCTP).
    pub dport: Option<u16>,
    /// IP packet size; `None` for a small packet. ICMP with a size is sent with DF
    /// (like `ping -M do -s`).
    pub size: Option<u32>,
    /// Where it starts.
    pub start: Start,
}

/// Limits of a walk.
#[derive(Debug, Clone, Copy)]
pub struct Options {
    /// Stop exploring after this many branches (the trace is marked truncated).
    pub max_branches: usize,
    /// Steps per branch before it is declared a loop.
    pub max_steps: usize,
    /// Start from the conntrack tables collected in the snapshots: a UDP packet whose tuple
    /// an entry there already holds follows that entry (its NAT mapping, no nat table), as
    /// the kernel does. Meaningful when the flow's source port is the client's real one
    /// (`--sport`); with an invented ephemeral port it would only find accidental clashes.
    pub collected_conntrack: bool,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_branches: 4096,
            max_steps: 400,
            collected_conntrack: false,
        }
    }
}

/// Why a flow cannot be traced at all.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    /// The source or start place cannot be resolved.
    #[error("{0}")]
    Start(String),
}

/// The walker.
pub struct Walker<'w, 'a> {
    world: &'w World<'a>,
    nf: &'w dyn Netfilter,
    opts: Options,
    client_ns: Option<NsIdx>,
    orig: Tuple,
    orig_pkt: Pkt,
}

/// Trace `flow` through `world`, asking `nf` for the firewall.
pub fn trace(
    world: &World<'_>,
    nf: &dyn Netfilter,
    flow: &Flow,
    opts: Options,
) -> Result<Trace, TraceError> {
    let proto = if flow.proto == 1 && flow.dst.is_ipv6() {
        58
    } else {
        flow.proto
    };
    if flow.src.is_ipv4() != flow.dst.is_ipv4() {
        return Err(TraceError::Start(
            "source and destination are of different address families".into(),
        ));
    }
    let is_icmp = proto == 1 || proto == 58;
    let pkt = Pkt {
        src: flow.src,
        dst: flow.dst,
        proto,
        sport: flow.sport,
        dport: flow.dport.unwrap_or(0),
        icmp_type: if proto == 58 { 128 } else { 8 },
        tcp_flags: if proto == 6 { TCP_SYN } else { 0 },
        len: flow.size.unwrap_or(match proto {
            6 => 60,
            1 | 58 => 84,
            _ => 60,
        }),
        df: proto == 6 || (is_icmp && flow.size.is_some()),
        mark: 0,
    };
    let (pos, client_ns, label) = resolve_start(world, flow)?;
    let w = Walker {
        world,
        nf,
        opts,
        client_ns,
        orig: pkt.tuple(),
        orig_pkt: pkt.clone(),
    };
    let st = St {
        prob: 1.0,
        leg: Leg::Forward,
        pkt: pkt.clone(),
        pos,
        hops: Vec::new(),
        cts: Vec::new(),
        skb_ct: None,
        route: None,
        encap: Vec::new(),
        steps: 0,
        seen: HashSet::new(),
        fwd_disp: None,
        endpoint: None,
        ipvs: Vec::new(),
        untracked_ns: None,
        assumptions: Vec::new(),
        facts: Vec::new(),
    };
    let (branches, truncated) = w.run(st);
    let mut shares = std::collections::BTreeMap::new();
    for b in &branches {
        *shares.entry(b.disposition).or_insert(0.0) += b.probability;
    }
    let reachable = !branches.is_empty() && branches.iter().all(|b| b.disposition.is_success());
    Ok(Trace {
        flow: FlowView {
            packet: pkt.view(),
            start: label,
        },
        branches,
        shares,
        reachable,
        truncated,
    })
}

fn resolve_start(
    world: &World<'_>,
    flow: &Flow,
) -> Result<(Pos, Option<NsIdx>, String), TraceError> {
    let place = match &flow.start {
        Start::Auto => {
            let mut nss: Vec<NsIdx> = world.owners_of(flow.src).iter().map(|o| o.0).collect();
            nss.sort_unstable();
            nss.dedup();
            return match nss.as_slice() {
                [ns] => Ok((
                    Pos::Out { ns: *ns, oif: None },
                    Some(*ns),
                    world.ns[*ns].label(),
                )),
                [] => Err(TraceError::Start(format!(
                    "no collected namespace owns {}; say where the packet enters with {}@node/NAME or {}@netns/NAME",
                    flow.src, flow.src, flow.src
                ))),
                many => Err(TraceError::Start(format!(
                    "{} is owned by several namespaces ({}); pick one with {}@netns/NAME",
                    flow.src,
                    many.iter()
                        .map(|&n| world.ns[n].label())
                        .collect::<Vec<_>>()
                        .join(", "),
                    flow.src
                ))),
            };
        }
        Start::Node(n) => world
            .host_of(n)
            .ok_or_else(|| TraceError::Start(format!("no node named `{n}` in the bundle")))?,
        Start::Netns(n) => world
            .ns_by_name(n)
            .ok_or_else(|| TraceError::Start(format!("no namespace named `{n}` in the bundle")))?,
    };
    let v = &world.ns[place];
    // Entering from outside: the interface facing the source (route to it; for a source that
    // is local here, the default route's), else the first non-loopback interface that is up.
    let facing = |dst: IpAddr| {
        let key = FlowKey {
            src: None,
            dst,
            iif: None,
            oif: None,
            mark: 0,
            tos: 0,
            proto: flow.proto,
            sport: None,
            dport: None,
        };
        match fib::lookup(v, &key) {
            FibResult::Route { route, .. } if route.route_type == RouteType::Unicast => route
                .dev
                .as_deref()
                .or_else(|| route.multipath.first().and_then(|n| n.dev.as_deref()))
                .and_then(|d| v.link(d)),
            _ => None,
        }
    };
    let any = if flow.src.is_ipv4() {
        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
    } else {
        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
    };
    // An interface whose subnet holds the source (the client is on-link there) first.
    let onlink = v
        .snap
        .addresses
        .iter()
        .filter(|a| a.addr.prefix_len() < if a.addr.addr().is_ipv4() { 32 } else { 128 })
        .filter(|a| a.addr.contains(&flow.src) && a.addr.addr() != flow.src)
        .max_by_key(|a| a.addr.prefix_len())
        .and_then(|a| v.link(&a.dev));
    let link = onlink
        .or_else(|| facing(flow.src))
        .or_else(|| facing(any))
        .or_else(|| {
            v.snap
                .links
                .iter()
                .position(|l| !matches!(l.kind, LinkKind::Loopback) && l.is_up())
        })
        .ok_or_else(|| TraceError::Start(format!("{} has no interface to enter", v.label())))?;
    let label = format!("{} (entering on {})", v.label(), v.link_name(link));
    Ok((
        Pos::IpIn {
            ns: place,
            link,
            skip_pre: false,
            from_lo: false,
        },
        None,
        label,
    ))
}

impl<'w, 'a> Walker<'w, 'a> {
    fn run(&self, first: St) -> (Vec<Branch>, bool) {
        let mut stack = vec![first];
        let mut done: Vec<Branch> = Vec::new();
        let mut truncated = false;
        while let Some(mut st) = stack.pop() {
            if done.len() + stack.len() >= self.opts.max_branches {
                truncated = true;
                if done.len() >= self.opts.max_branches {
                    break;
                }
            }
            st.steps += 1;
            let key = (st.pos.clone(), st.pkt.clone(), st.leg, st.encap.len());
            if st.steps > self.opts.max_steps || !st.seen.insert(key) {
                let e = end(
                    Disposition::Loop,
                    "the packet comes back to a place it has already been, unchanged",
                    Some("routing-loop"),
                );
                self.finish(st, e, &mut done);
                continue;
            }
            let mut next = Vec::new();
            self.step(st, &mut next);
            for n in next.into_iter().rev() {
                match n {
                    Next::Go(s) => stack.push(s),
                    Next::Stop(s, e) => self.finish(s, e, &mut done),
                }
            }
        }
        (done, truncated)
    }

    fn finish(&self, mut st: St, e: End, done: &mut Vec<Branch>) {
        let (ns_label, node, pod) = match self.pos_ns(&st.pos) {
            Some(ns) => (
                self.world.ns[ns].netns_label(),
                self.world.ns[ns].node.to_string(),
                self.world.pod_of(ns).map(str::to_string),
            ),
            None => (String::new(), String::new(), None),
        };
        st.hops.push(Hop {
            leg: st.leg,
            node,
            netns: ns_label,
            pod,
            iif: None,
            oif: None,
            packet: st.pkt.view(),
            step: Step::End {
                disposition: e.disp,
                reason: e.reason.clone(),
            },
        });
        let b = Branch {
            probability: st.prob,
            endpoint: st.endpoint.clone(),
            disposition: e.disp,
            cause: e.cause.map(str::to_string),
            reason: e.reason,
            decided_by: e.by,
            ended_on: st.leg,
            assumptions: st.assumptions,
            hops: st.hops,
        };
        if let Some(prev) = done.iter_mut().find(|p| {
            p.disposition == b.disposition
                && p.hops == b.hops
                && p.assumptions == b.assumptions
                && p.decided_by == b.decided_by
        }) {
            prev.probability += b.probability;
        } else {
            done.push(b);
        }
    }

    fn pos_ns(&self, p: &Pos) -> Option<NsIdx> {
        Some(match p {
            Pos::Out { ns, .. }
            | Pos::OutHook { ns, .. }
            | Pos::Post { ns, .. }
            | Pos::IpIn { ns, .. }
            | Pos::InRoute { ns, .. }
            | Pos::Input { ns, .. }
            | Pos::Fwd { ns, .. }
            | Pos::Xmit { ns, .. }
            | Pos::FrameOut { ns, .. }
            | Pos::FrameIn { ns, .. }
            | Pos::BrIn { ns, .. }
            | Pos::BrDecide { ns, .. }
            | Pos::BrFwd { ns, .. }
            | Pos::BrPost { ns, .. } => *ns,
        })
    }

    fn hop(&self, st: &mut St, ns: NsIdx, iif: Option<usize>, oif: Option<usize>, step: Step) {
        let v = &self.world.ns[ns];
        st.hops.push(Hop {
            leg: st.leg,
            node: v.node.to_string(),
            netns: v.netns_label(),
            pod: self.world.pod_of(ns).map(str::to_string),
            iif: iif.map(|i| v.link_name(i).to_string()),
            oif: oif.map(|i| v.link_name(i).to_string()),
            packet: st.pkt.view(),
            step,
        });
    }

    fn link(&self, ns: NsIdx, i: usize) -> Option<&'a netray_snapshot::Link> {
        self.world.ns.get(ns).and_then(|v| v.snap.links.get(i))
    }

    fn step(&self, mut st: St, out: &mut Vec<Next>) {
        macro_rules! fail {
            ($e:expr) => {{
                out.push(Next::Stop(st, $e));
                return;
            }};
        }
        let pos = st.pos.clone();
        match pos {
            Pos::Out { ns, oif } => {
                if st.hops.is_empty() {
                    self.hop(&mut st, ns, None, None, Step::Originate);
                }
                match self.route_out(&mut st, ns, oif) {
                    Ok(sels) => {
                        let n = sels.len();
                        for ((p, sel, step), mut s) in sels.into_iter().zip(fork(st, n)) {
                            s.prob *= p;
                            s.route = Some(sel);
                            if !sel.local && s.pkt.src.is_unspecified() {
                                s.pkt.src = self.select_src(ns, sel.dev, sel.nh, None);
                            }
                            self.hop(&mut s, ns, None, Some(sel.dev), step);
                            s.pos = Pos::OutHook { ns, oif };
                            out.push(Next::Go(s));
                        }
                    }
                    Err(e) => fail!(e),
                }
            }
            Pos::OutHook { ns, oif } => {
                let dev = st.route.map(|r| r.dev);
                let before = (st.pkt.dst, st.pkt.mark);
                for mut s in go(self.hook(st, ns, NfHook::Output, None, dev, None), out) {
                    // IPVS at LOCAL_OUT: `ip_vs_local_reply4` (de-NAT of replies from a
                    // local real server), then `ip_vs_local_request4` (scheduling).
                    self.ipvs_out(&mut s, ns, NfHook::Output, None, dev);
                    let Some(mut s) = self.ipvs_in(s, ns, NfHook::Output, None, out) else {
                        continue;
                    };
                    if (s.pkt.dst, s.pkt.mark) != before {
                        // Reroute after OUTPUT changed the destination or the mark.
                        match self.route_out(&mut s, ns, oif) {
                            Ok(sels) => {
                                for (p, sel, step) in sels {
                                    let mut t = s.clone();
                                    t.prob *= p;
                                    t.route = Some(sel);
                                    self.hop(&mut t, ns, None, Some(sel.dev), step);
                                    t.pos = Pos::Post { ns, iif: None };
                                    out.push(Next::Go(t));
                                }
                            }
                            Err(e) => out.push(Next::Stop(s, e)),
                        }
                    } else {
                        s.pos = Pos::Post { ns, iif: None };
                        out.push(Next::Go(s));
                    }
                }
            }
            Pos::Post { ns, iif } => {
                let Some(sel) = st.route else {
                    fail!(end(
                        Disposition::Unknown,
                        "internal: no route selected",
                        None
                    ));
                };
                for mut s in go(
                    self.hook(st, ns, NfHook::Postrouting, iif, Some(sel.dev), None),
                    out,
                ) {
                    if sel.local {
                        s.pos = Pos::IpIn {
                            ns,
                            link: sel.dev,
                            skip_pre: false,
                            from_lo: true,
                        };
                    } else {
                        s.pos = Pos::Xmit {
                            ns,
                            link: sel.dev,
                            nh: sel.nh,
                        };
                    }
                    out.push(Next::Go(s));
                }
            }
            Pos::IpIn {
                ns,
                link,
                skip_pre,
                from_lo,
            } => {
                let Some(l) = self.link(ns, link) else {
                    fail!(end(Disposition::Unknown, "internal: bad link", None));
                };
                if !is_up(l) && !from_lo {
                    fail!(end(
                        Disposition::Dropped,
                        format!("interface {} is down", l.name),
                        Some("interface-down")
                    ));
                }
                if !from_lo {
                    st.skb_ct = st.skb_ct.filter(|_| skip_pre);
                    if !skip_pre {
                        st.untracked_ns = None;
                    }
                    if st.hops.is_empty()
                        || !matches!(st.hops.last().map(|h| &h.step), Some(Step::Receive))
                    {
                        self.hop(&mut st, ns, Some(link), None, Step::Receive);
                    }
                }
                if skip_pre {
                    st.pos = Pos::InRoute { ns, link, from_lo };
                    out.push(Next::Go(st));
                } else {
                    for mut s in go(
                        self.hook(st, ns, NfHook::Prerouting, Some(link), None, None),
                        out,
                    ) {
                        s.pos = Pos::InRoute { ns, link, from_lo };
                        out.push(Next::Go(s));
                    }
                }
            }
            Pos::InRoute { ns, link, from_lo } => {
                if from_lo {
                    st.pos = Pos::Input { ns, link };
                    out.push(Next::Go(st));
                    return;
                }
                match self.route_in(&mut st, ns, link) {
                    Ok(sels) => {
                        let n = sels.len();
                        for ((p, sel), mut s) in sels.into_iter().zip(fork(st, n)) {
                            s.prob *= p;
                            s.route = Some(sel);
                            s.pos = if sel.local {
                                Pos::Input { ns, link }
                            } else {
                                Pos::Fwd { ns, link }
                            };
                            out.push(Next::Go(s));
                        }
                    }
                    Err(e) => fail!(e),
                }
            }
            Pos::Input { ns, link } => {
                for mut s in go(
                    self.hook(st, ns, NfHook::Input, Some(link), None, None),
                    out,
                ) {
                    // IPVS at LOCAL_IN, after filter INPUT: `ip_vs_reply4` (de-NAT of
                    // replies), then `ip_vs_remote_request4` (scheduling).
                    self.ipvs_out(&mut s, ns, NfHook::Input, Some(link), None);
                    if let Some(s) = self.ipvs_in(s, ns, NfHook::Input, Some(link), out) {
                        out.push(self.deliver(s, ns, link));
                    }
                }
            }
            Pos::Fwd { ns, link } => {
                let Some(sel) = st.route else {
                    fail!(end(Disposition::Unknown, "internal: no route", None));
                };
                if let Err(e) = self.mtu_check(&mut st, ns, sel.dev, sel.mtu) {
                    fail!(e);
                }
                for mut s in go(
                    self.hook(st, ns, NfHook::Forward, Some(link), Some(sel.dev), None),
                    out,
                ) {
                    // `ip_vs_reply4` at FORWARD: replies of IPVS/NAT connections.
                    self.ipvs_out(&mut s, ns, NfHook::Forward, Some(link), Some(sel.dev));
                    s.pos = Pos::Post {
                        ns,
                        iif: Some(link),
                    };
                    out.push(Next::Go(s));
                }
            }
            Pos::Xmit { ns, link, nh } => match self.xmit(&mut st, ns, link, nh) {
                Ok(()) => out.push(Next::Go(st)),
                Err(e) => fail!(e),
            },
            Pos::FrameOut { ns, link, mac, nh } => {
                match self.frame_out(&mut st, ns, link, mac, nh) {
                    Ok(Some(v)) => out.extend(v.into_iter().map(Next::Go)),
                    Ok(None) => out.push(Next::Go(st)),
                    Err(e) => fail!(e),
                }
            }
            Pos::FrameIn { ns, link, mac } => match self.frame_in(&mut st, ns, link, mac) {
                Ok(()) => out.push(Next::Go(st)),
                Err(e) => fail!(e),
            },
            Pos::BrIn { ns, br, port, mac } => {
                let v = &self.world.ns[ns];
                let (Some(bl), Some(pl)) = (self.link(ns, br), self.link(ns, port)) else {
                    fail!(end(Disposition::Unknown, "internal: bad bridge", None));
                };
                if !is_up(bl) {
                    fail!(
                        end(
                            Disposition::Dropped,
                            format!("bridge {} is down", bl.name),
                            Some("interface-down")
                        )
                        .by(v.link_obj(br, "down"))
                    );
                }
                if let Some(bp) = &pl.bridge_port
                    && bp.state != "forwarding"
                {
                    fail!(
                        end(
                            Disposition::Dropped,
                            format!("bridge port {} is in state {}", pl.name, bp.state),
                            Some("bridge-port-blocked")
                        )
                        .by(v.link_obj(port, format!("bridge port state {}", bp.state)))
                    );
                }
                let dst_before = st.pkt.dst;
                if self.br_nf(ns, br, st.pkt.dst.is_ipv4()) {
                    st.skb_ct = None;
                    let _ = v;
                    for mut s in go(
                        self.hook(
                            st,
                            ns,
                            NfHook::Prerouting,
                            Some(br),
                            None,
                            Some((port, None)),
                        ),
                        out,
                    ) {
                        s.pos = Pos::BrDecide {
                            ns,
                            br,
                            port,
                            mac: mac.clone(),
                            dst_before,
                        };
                        out.push(Next::Go(s));
                    }
                } else {
                    st.pos = Pos::BrDecide {
                        ns,
                        br,
                        port,
                        mac,
                        dst_before,
                    };
                    out.push(Next::Go(st));
                }
            }
            Pos::BrDecide {
                ns,
                br,
                port,
                mac,
                dst_before,
            } => {
                let brnf = self.br_nf(ns, br, st.pkt.dst.is_ipv4());
                let mut mac = mac;
                if brnf && st.pkt.dst != dst_before {
                    // br_netfilter DNAT: route the new destination; bridged again if it is on
                    // this bridge, else handed to IP forwarding.
                    let key = self.key(&st, Some(br));
                    let res = fib::lookup(&self.world.ns[ns], &key);
                    // `br_nf_pre_routing_finish` routes the DNATed packet as input on the
                    // bridge: with forwarding off there, `ip_route_input` hands back the
                    // `ip_error` route (not an error), so the "bridged DNAT needs no
                    // forwarding" shortcut is not taken and the packet is dropped.
                    let to_local = matches!(&res, FibResult::Route { route, .. }
                        if matches!(route.route_type, RouteType::Local | RouteType::Broadcast));
                    if !to_local && st.pkt.dst.is_ipv4() {
                        let v = &self.world.ns[ns];
                        let bname = v.link_name(br).to_string();
                        let keys = [
                            format!("net.ipv4.conf.{bname}.forwarding"),
                            "net.ipv4.ip_forward".to_string(),
                        ];
                        let deciding = keys.iter().find(|k| v.snap.sysctl(k).is_some());
                        if deciding.and_then(|k| v.sysctl_int(k)).unwrap_or(0) == 0
                            && deciding.is_none_or(|k| v.sysctl_unparsable(k).is_none())
                        {
                            let key = deciding.cloned().unwrap_or_else(|| keys[1].clone());
                            let e = end(
                                    Disposition::ForwardingDisabled,
                                    format!(
                                        "the packet was DNATed to {} inside bridge {bname} (br_netfilter) and forwarding is off on {bname} in {} ({key} = 0): br_nf_pre_routing_finish gets the ip_error route and drops it",
                                        st.pkt.dst,
                                        v.label()
                                    ),
                                    Some("ip-forward-disabled"),
                                )
                                .by(v.sysctl_obj(&key));
                            fail!(e);
                        }
                    }
                    match res {
                        FibResult::Route { route, .. }
                            if route.route_type == RouteType::Unicast
                                && route.dev.as_deref()
                                    == self.link(ns, br).map(|l| l.name.as_str()) =>
                        {
                            let nh = route.gateway.unwrap_or(st.pkt.dst);
                            match self.neigh(&mut st, ns, br, nh) {
                                Ok(m) => mac = m.unwrap_or(mac),
                                Err(e) => fail!(e),
                            }
                        }
                        _ => {
                            st.pos = Pos::IpIn {
                                ns,
                                link: br,
                                skip_pre: true,
                                from_lo: false,
                            };
                            out.push(Next::Go(st));
                            return;
                        }
                    }
                }
                if self.is_local_mac(ns, br, &mac) {
                    let bname = self.world.ns[ns].link_name(br).to_string();
                    let pname = self.world.ns[ns].link_name(port).to_string();
                    self.hop(
                        &mut st,
                        ns,
                        Some(port),
                        Some(br),
                        Step::Bridge {
                            bridge: bname,
                            in_port: pname,
                            out_port: "local".into(),
                            fdb: format!("{mac} is the bridge's own address"),
                        },
                    );
                    st.pos = Pos::IpIn {
                        ns,
                        link: br,
                        skip_pre: brnf,
                        from_lo: false,
                    };
                    out.push(Next::Go(st));
                    return;
                }
                match self.bridge_ports(&mut st, ns, br, Some(port), &mac) {
                    Ok(ports) => {
                        let n = ports.len();
                        for (o, mut s) in ports.into_iter().zip(fork(st, n)) {
                            s.pos = if brnf {
                                Pos::BrFwd {
                                    ns,
                                    br,
                                    port,
                                    out: o,
                                    mac: mac.clone(),
                                }
                            } else {
                                Pos::FrameOut {
                                    ns,
                                    link: o,
                                    mac: Some(mac.clone()),
                                    nh: s.pkt.dst,
                                }
                            };
                            out.push(Next::Go(s));
                        }
                    }
                    Err(e) => fail!(e),
                }
            }
            Pos::BrFwd {
                ns,
                br,
                port,
                out: o,
                mac,
            } => {
                for mut s in go(
                    self.hook(
                        st,
                        ns,
                        NfHook::Forward,
                        Some(br),
                        Some(br),
                        Some((port, Some(o))),
                    ),
                    out,
                ) {
                    // br_netfilter runs the IPv4 FORWARD hook, IPVS's `ip_vs_reply4` included.
                    self.ipvs_out(&mut s, ns, NfHook::Forward, Some(br), Some(br));
                    s.pos = Pos::BrPost {
                        ns,
                        br,
                        port,
                        out: o,
                        mac: mac.clone(),
                    };
                    out.push(Next::Go(s));
                }
            }
            Pos::BrPost {
                ns,
                br,
                port,
                out: o,
                mac,
            } => {
                for mut s in go(
                    self.hook(
                        st,
                        ns,
                        NfHook::Postrouting,
                        Some(br),
                        Some(br),
                        Some((port, Some(o))),
                    ),
                    out,
                ) {
                    s.pos = Pos::FrameOut {
                        ns,
                        link: o,
                        mac: Some(mac.clone()),
                        nh: s.pkt.dst,
                    };
                    out.push(Next::Go(s));
                }
            }
        }
    }
}
