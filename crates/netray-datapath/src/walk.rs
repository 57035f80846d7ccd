//! The packet walk: every branch of a flow through the world, forward and reply.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netray_snapshot::{LinkKind, RouteType, RuleAction};

use crate::fib::{self, FibResult, FlowKey};
use crate::ipvs::Forward;
use crate::nf::{
    CtDir, CtEntry, CtState, Manip, NatAction, Netfilter, NfHook, NfPacket, NfVerdict, Tuple,
    proto_name,
};
use crate::result::{Branch, Disposition, FlowView, Hop, Leg, PacketView, RuleRef, Step, Trace};
use crate::world::{NsIdx, World};

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
}

impl Default for Options {
    fn default() -> Self {
        Options {
            max_branches: 4096,
            max_steps: 400,
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

const TCP_SYN: u8 = 0x02;
const TCP_ACK: u8 = 0x10;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Pkt {
    src: IpAddr,
    dst: IpAddr,
    proto: u8,
    sport: u16,
    dport: u16,
    icmp_type: u8,
    tcp_flags: u8,
    len: u32,
    df: bool,
    mark: u32,
}

impl Pkt {
    fn is_icmp(&self) -> bool {
        self.proto == 1 || self.proto == 58
    }
    fn has_ports(&self) -> bool {
        matches!(self.proto, 6 | 17 | 132)
    }
    fn tuple(&self) -> Tuple {
        if self.is_icmp() {
            // Echo request: (id, 0); echo reply: (0, id), so the reply tuple is the inverse.
            if self.icmp_type == 8 || self.icmp_type == 128 {
                Tuple {
                    src: self.src,
                    dst: self.dst,
                    sport: self.sport,
                    dport: 0,
                }
            } else {
                Tuple {
                    src: self.src,
                    dst: self.dst,
                    sport: 0,
                    dport: self.sport,
                }
            }
        } else {
            Tuple {
                src: self.src,
                dst: self.dst,
                sport: self.sport,
                dport: self.dport,
            }
        }
    }
    fn view(&self) -> PacketView {
        PacketView {
            src: self.src,
            dst: self.dst,
            proto: proto_name(self.proto),
            sport: Some(self.sport),
            dport: if self.is_icmp() {
                None
            } else {
                Some(self.dport)
            },
            len: self.len,
            mark: self.mark,
        }
    }
    fn set_src(&mut self, t_addr: IpAddr, t_port: u16) {
        self.src = t_addr;
        if self.has_ports() {
            self.sport = t_port;
        }
    }
    fn set_dst(&mut self, t_addr: IpAddr, t_port: u16) {
        self.dst = t_addr;
        if self.has_ports() {
            self.dport = t_port;
        }
    }
}

#[derive(Debug, Clone)]
struct Inner {
    pkt: Pkt,
    mac: String,
    vni: u32,
    port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
struct RouteSel {
    local: bool,
    dev: usize,
    nh: IpAddr,
    mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
enum Pos {
    /// Locally generated: route lookup then OUTPUT.
    Out { ns: NsIdx, oif: Option<usize> },
    /// After the output route: OUTPUT hook.
    OutHook { ns: NsIdx, oif: Option<usize> },
    /// POSTROUTING, then transmit along `st.route`.
    Post { ns: NsIdx, iif: Option<usize> },
    /// IP packet received on `link`.
    IpIn {
        ns: NsIdx,
        link: usize,
        skip_pre: bool,
        from_lo: bool,
    },
    /// Input route decision.
    InRoute {
        ns: NsIdx,
        link: usize,
        from_lo: bool,
    },
    /// INPUT hook then local delivery.
    Input { ns: NsIdx, link: usize },
    /// FORWARD hook.
    Fwd { ns: NsIdx, link: usize },
    /// Transmit an IP packet via `link` to `nh`.
    Xmit { ns: NsIdx, link: usize, nh: IpAddr },
    /// A frame leaves `link`.
    FrameOut {
        ns: NsIdx,
        link: usize,
        mac: Option<String>,
        nh: IpAddr,
    },
    /// A frame arrives on `link`.
    FrameIn {
        ns: NsIdx,
        link: usize,
        mac: Option<String>,
    },
    /// A frame enters bridge `br` on `port`.
    BrIn {
        ns: NsIdx,
        br: usize,
        port: usize,
        mac: String,
    },
    /// Bridge decision after (br_netfilter) PREROUTING.
    BrDecide {
        ns: NsIdx,
        br: usize,
        port: usize,
        mac: String,
        dst_before: IpAddr,
    },
    /// Bridged FORWARD (br_netfilter).
    BrFwd {
        ns: NsIdx,
        br: usize,
        port: usize,
        out: usize,
        mac: String,
    },
    /// Bridged POSTROUTING (br_netfilter).
    BrPost {
        ns: NsIdx,
        br: usize,
        port: usize,
        out: usize,
        mac: String,
    },
}

#[derive(Debug, Clone)]
struct St {
    prob: f64,
    leg: Leg,
    pkt: Pkt,
    pos: Pos,
    hops: Vec<Hop>,
    cts: Vec<CtEntry>,
    /// Conntrack association of the skb in the current namespace: entry, direction, first packet.
    skb_ct: Option<(usize, CtDir, bool)>,
    route: Option<RouteSel>,
    encap: Vec<Inner>,
    steps: usize,
    seen: HashSet<(Pos, Pkt, Leg, usize)>,
    fwd_disp: Option<Disposition>,
    endpoint: Option<String>,
    /// IPVS connections created on this branch (per namespace), for `ip_vs_out`.
    ipvs: Vec<IpvsConn>,
    /// The skb left IPVS untracked (`net.ipv4.vs.conntrack=0`) in this namespace.
    untracked_ns: Option<NsIdx>,
    /// Assumptions about unmodelled rule matches this branch rests on.
    assumptions: Vec<String>,
}

/// An IPVS connection entry: client → virtual service, sent to a real server.
#[derive(Debug, Clone, PartialEq, Eq)]
struct IpvsConn {
    ns: NsIdx,
    proto: u8,
    client: (IpAddr, u16),
    vip: (IpAddr, u16),
    rs: (IpAddr, u16),
    forward: Forward,
}

impl IpvsConn {
    fn text(&self) -> String {
        format!(
            "{} client {}:{} vip {}:{} rs {}:{} {}",
            proto_name(self.proto),
            self.client.0,
            self.client.1,
            self.vip.0,
            self.vip.1,
            self.rs.0,
            self.rs.1,
            self.forward.name()
        )
    }
}

enum Next {
    Go(St),
    Stop(St, End),
}

/// Push the stopped states to `out`, return the others.
fn go(v: Vec<Next>, out: &mut Vec<Next>) -> Vec<St> {
    let mut r = Vec::new();
    for n in v {
        match n {
            Next::Go(s) => r.push(s),
            stop => out.push(stop),
        }
    }
    r
}

struct End {
    disp: Disposition,
    reason: String,
    cause: Option<&'static str>,
}

fn end(disp: Disposition, reason: impl Into<String>, cause: Option<&'static str>) -> End {
    End {
        disp,
        reason: reason.into(),
        cause,
    }
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

fn is_up(l: &netray_snapshot::Link) -> bool {
    l.is_up()
        && !matches!(
            l.operstate.as_str(),
            "down" | "lowerlayerdown" | "notpresent"
        )
}

fn sysctl_or(v: &crate::world::NsView<'_>, name: &str, dflt: i64) -> i64 {
    v.sysctl_int(name).unwrap_or(dflt)
}

fn mac_eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
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
        let (ns_label, node) = match self.pos_ns(&st.pos) {
            Some(ns) => (
                self.world.ns[ns].snap.display_name(),
                self.world.ns[ns].node.to_string(),
            ),
            None => (String::new(), String::new()),
        };
        st.hops.push(Hop {
            leg: st.leg,
            node,
            netns: ns_label,
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
            ended_on: st.leg,
            assumptions: st.assumptions,
            hops: st.hops,
        };
        if let Some(prev) = done.iter_mut().find(|p| {
            p.disposition == b.disposition && p.hops == b.hops && p.assumptions == b.assumptions
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
            netns: v.snap.display_name(),
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
                    fail!(end(
                        Disposition::Dropped,
                        format!("bridge {} is down", bl.name),
                        Some("interface-down")
                    ));
                }
                if let Some(bp) = &pl.bridge_port
                    && bp.state != "forwarding"
                {
                    fail!(end(
                        Disposition::Dropped,
                        format!("bridge port {} is in state {}", pl.name, bp.state),
                        Some("bridge-port-blocked")
                    ));
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
                    match fib::lookup(&self.world.ns[ns], &key) {
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

    /// br_netfilter runs iptables for bridged IPv4 when the namespace's
    /// `net.bridge.bridge-nf-call-iptables` or the bridge's own `nf_call_iptables` is set.
    fn br_nf(&self, ns: NsIdx, br: usize, v4: bool) -> bool {
        let v = &self.world.ns[ns];
        if !v4 {
            return false;
        }
        let per_bridge = matches!(
            self.link(ns, br).map(|l| &l.kind),
            Some(LinkKind::Bridge {
                nf_call_iptables: true,
                ..
            })
        );
        per_bridge || sysctl_or(v, "net.bridge.bridge-nf-call-iptables", 0) == 1
    }

    fn key<'k>(&self, st: &'k St, iif: Option<usize>) -> FlowKey<'k> {
        let _ = iif;
        FlowKey {
            src: Some(st.pkt.src),
            dst: st.pkt.dst,
            iif: None,
            oif: None,
            mark: st.pkt.mark,
            tos: 0,
            proto: st.pkt.proto,
            sport: st.pkt.has_ports().then_some(st.pkt.sport),
            dport: st.pkt.has_ports().then_some(st.pkt.dport),
        }
    }

    /// Output route: rule + route, branches for ECMP.
    fn route_out(
        &self,
        st: &mut St,
        ns: NsIdx,
        oif: Option<usize>,
    ) -> Result<Vec<(f64, RouteSel, Step)>, End> {
        let v = &self.world.ns[ns];
        let mut key = self.key(st, None);
        if st.pkt.src.is_unspecified() {
            key.src = None;
        }
        let oif_name = oif.map(|o| v.link_name(o));
        key.oif = oif_name;
        let res = fib::lookup(v, &key);
        self.selections(ns, res, st.pkt.dst, None)
    }

    fn selections(
        &self,
        ns: NsIdx,
        res: FibResult<'a>,
        dst: IpAddr,
        iif: Option<usize>,
    ) -> Result<Vec<(f64, RouteSel, Step)>, End> {
        let v = &self.world.ns[ns];
        match res {
            FibResult::NoRoute => Err(end(
                Disposition::NoRoute,
                format!("no route to {dst} in {}", v.label()),
                Some("no-route"),
            )),
            FibResult::RuleAction { rule } => {
                let (d, c) = match rule.action {
                    RuleAction::Blackhole => (Disposition::Dropped, "blackhole-rule"),
                    _ => (Disposition::NoRoute, "no-route"),
                };
                Err(end(
                    d,
                    format!("ip rule `{}` in {}", fib::rule_text(rule), v.label()),
                    Some(c),
                ))
            }
            FibResult::OnLink { dev } => {
                let d = v.link(dev).unwrap_or(0);
                Ok(vec![(
                    1.0,
                    RouteSel {
                        local: false,
                        dev: d,
                        nh: dst,
                        mtu: None,
                    },
                    Step::Route {
                        rule: None,
                        table: 0,
                        route: format!("{dst} dev {dev} (assumed on-link: socket bound to {dev})"),
                        nexthop: Some(dst),
                        ecmp: None,
                    },
                )])
            }
            FibResult::Route { rule, table, route } => {
                let rule_t = rule.map(fib::rule_text);
                let rtext = fib::route_text(route);
                let step = |nh: Option<IpAddr>, ecmp: Option<String>| Step::Route {
                    rule: rule_t.clone(),
                    table,
                    route: rtext.clone(),
                    nexthop: nh,
                    ecmp,
                };
                match route.route_type {
                    RouteType::Local | RouteType::Broadcast => {
                        let lo = if iif.is_some() {
                            iif.unwrap_or(0)
                        } else {
                            v.snap
                                .links
                                .iter()
                                .position(|l| matches!(l.kind, LinkKind::Loopback))
                                .or_else(|| route.dev.as_deref().and_then(|d| v.link(d)))
                                .unwrap_or(0)
                        };
                        Ok(vec![(
                            1.0,
                            RouteSel {
                                local: true,
                                dev: lo,
                                nh: dst,
                                mtu: None,
                            },
                            step(None, None),
                        )])
                    }
                    RouteType::Unicast => {
                        if !route.multipath.is_empty() {
                            let total: u32 = route.multipath.iter().map(|n| n.weight.max(1)).sum();
                            let mut r = Vec::new();
                            for nh in &route.multipath {
                                let Some(d) = nh.dev.as_deref().and_then(|d| v.link(d)) else {
                                    continue;
                                };
                                let gw = nh.gateway.unwrap_or(dst);
                                let p = f64::from(nh.weight.max(1)) / f64::from(total.max(1));
                                r.push((
                                    p,
                                    RouteSel {
                                        local: false,
                                        dev: d,
                                        nh: gw,
                                        mtu: route.mtu,
                                    },
                                    step(
                                        Some(gw),
                                        Some(format!(
                                            "nexthop via {gw} dev {} ({}/{})",
                                            v.link_name(d),
                                            nh.weight.max(1),
                                            total
                                        )),
                                    ),
                                ));
                            }
                            if r.is_empty() {
                                return Err(end(
                                    Disposition::Unknown,
                                    format!("multipath route `{rtext}` has no usable next hop"),
                                    None,
                                ));
                            }
                            return Ok(r);
                        }
                        let Some(d) = route.dev.as_deref().and_then(|d| v.link(d)) else {
                            return Err(end(
                                Disposition::Unknown,
                                format!("route `{rtext}` names no device"),
                                None,
                            ));
                        };
                        let gw = route.gateway.unwrap_or(dst);
                        Ok(vec![(
                            1.0,
                            RouteSel {
                                local: false,
                                dev: d,
                                nh: gw,
                                mtu: route.mtu,
                            },
                            step(Some(gw), None),
                        )])
                    }
                    RouteType::Blackhole => Err(end(
                        Disposition::Dropped,
                        format!("blackhole route `{rtext}` in {}", v.label()),
                        Some("blackhole-route"),
                    )),
                    RouteType::Unreachable | RouteType::Prohibit => Err(end(
                        Disposition::NoRoute,
                        format!("{:?} route `{rtext}` in {}", route.route_type, v.label())
                            .to_lowercase(),
                        Some("no-route"),
                    )),
                    other => Err(end(
                        Disposition::Unknown,
                        format!("route type {other:?} (`{rtext}`) is not modelled"),
                        Some("unmodelled-route-type"),
                    )),
                }
            }
        }
    }

    /// Input checks and input route.
    fn route_in(&self, st: &mut St, ns: NsIdx, link: usize) -> Result<Vec<(f64, RouteSel)>, End> {
        let v = &self.world.ns[ns];
        let iname = v.link_name(link);
        let conf = |k: &str| {
            (
                sysctl_or(v, &format!("net.ipv4.conf.all.{k}"), 0),
                v.sysctl_int(&format!("net.ipv4.conf.{iname}.{k}"))
                    .unwrap_or(0),
            )
        };
        let src = st.pkt.src;
        let dst = st.pkt.dst;
        if let (IpAddr::V4(s), IpAddr::V4(d)) = (src, dst) {
            let localnet = {
                let (a, i) = conf("route_localnet");
                a != 0 || i != 0
            };
            if s.is_multicast() || s.is_broadcast() || s.octets()[0] == 0 {
                return Err(end(
                    Disposition::MartianSource,
                    format!("martian source {s} on {iname} (multicast, broadcast or 0.0.0.0/8)"),
                    Some("martian-source"),
                ));
            }
            if d.octets()[0] == 0 {
                return Err(end(
                    Disposition::MartianSource,
                    format!("martian destination {d} on {iname}"),
                    Some("martian-source"),
                ));
            }
            if (s.is_loopback() || d.is_loopback()) && !localnet {
                return Err(end(
                    Disposition::MartianSource,
                    format!(
                        "127.0.0.0/8 address ({s} > {d}) received on {iname} and route_localnet is 0"
                    ),
                    Some("martian-source"),
                ));
            }
        }
        let mut key = self.key(st, Some(link));
        key.iif = Some(iname);
        let res = fib::lookup(v, &key);
        let sels = self.selections(ns, res, dst, Some(link))?;
        let mut r = Vec::new();
        for (p, sel, step) in sels {
            self.hop(st, ns, Some(link), (!sel.local).then_some(sel.dev), step);
            if !sel.local && dst.is_ipv4() {
                let fwd = v
                    .sysctl_int(&format!("net.ipv4.conf.{iname}.forwarding"))
                    .or_else(|| v.sysctl_int("net.ipv4.ip_forward"))
                    .or_else(|| v.sysctl_int("net.ipv4.conf.all.forwarding"))
                    .unwrap_or(0);
                if fwd == 0 {
                    return Err(end(
                        Disposition::ForwardingDisabled,
                        format!(
                            "forwarding is disabled on {iname} in {} (net.ipv4.conf.{iname}.forwarding / net.ipv4.ip_forward = 0)",
                            v.label()
                        ),
                        Some("ip-forward-disabled"),
                    ));
                }
            }
            if dst.is_ipv4() {
                self.validate_source(st, ns, link, &conf)?;
            }
            r.push((p, sel));
        }
        Ok(r)
    }

    /// `fib_validate_source`: local source from outside (martian) and reverse path filter.
    fn validate_source(
        &self,
        st: &mut St,
        ns: NsIdx,
        link: usize,
        conf: &dyn Fn(&str) -> (i64, i64),
    ) -> Result<(), End> {
        let v = &self.world.ns[ns];
        let iname = v.link_name(link);
        let (ra, ri) = conf("rp_filter");
        let rp = ra.max(ri);
        let (aa, ai) = conf("accept_local");
        let accept_local = aa != 0 || ai != 0;
        let src = st.pkt.src;
        if rp == 0 {
            if !accept_local && v.owns(src).is_some() {
                return Err(end(
                    Disposition::MartianSource,
                    format!(
                        "source {src} is a local address of {} and arrives on {iname} from outside (accept_local=0)",
                        v.label()
                    ),
                    Some("martian-source"),
                ));
            }
            return Ok(());
        }
        let key = FlowKey {
            src: Some(st.pkt.dst),
            dst: src,
            iif: None,
            oif: None,
            mark: if sysctl_or(v, "net.ipv4.conf.all.src_valid_mark", 0) != 0 {
                st.pkt.mark
            } else {
                0
            },
            tos: 0,
            proto: st.pkt.proto,
            sport: None,
            dport: None,
        };
        let mode = if rp == 1 { "strict" } else { "loose" };
        let rpf_vals = format!("rp_filter={rp} ({mode}; all={ra}, {iname}={ri})");
        match fib::lookup(v, &key) {
            FibResult::Route { route, .. } => match route.route_type {
                RouteType::Local if !accept_local => Err(end(
                    Disposition::MartianSource,
                    format!(
                        "source {src} is a local address of {} and arrives on {iname} from outside (accept_local=0)",
                        v.label()
                    ),
                    Some("martian-source"),
                )),
                RouteType::Local => Ok(()),
                RouteType::Unicast => {
                    let via_iif = route.dev.as_deref() == Some(iname)
                        || route
                            .multipath
                            .iter()
                            .any(|n| n.dev.as_deref() == Some(iname));
                    if rp == 1 && !via_iif {
                        let back = route.dev.clone().unwrap_or_default();
                        Err(end(
                            Disposition::RpFilter,
                            format!(
                                "reverse path filter: {rpf_vals}; the route back to {src} is `{}` (via {back}), not {iname}",
                                fib::route_text(route)
                            ),
                            Some("rp-filter-drop"),
                        ))
                    } else {
                        self.hop(
                            st,
                            ns,
                            Some(link),
                            None,
                            Step::Check {
                                check: "rp_filter".into(),
                                detail: format!(
                                    "{rpf_vals}: route back to {src} is `{}`: ok",
                                    fib::route_text(route)
                                ),
                            },
                        );
                        Ok(())
                    }
                }
                _ => Err(end(
                    Disposition::MartianSource,
                    format!(
                        "source {src}: the route back is `{}` (not unicast)",
                        fib::route_text(route)
                    ),
                    Some("martian-source"),
                )),
            },
            _ => Err(end(
                Disposition::RpFilter,
                format!("reverse path filter: {rpf_vals}; no route back to {src}"),
                Some("rp-filter-drop"),
            )),
        }
    }

    fn mtu_check(
        &self,
        st: &mut St,
        ns: NsIdx,
        link: usize,
        route_mtu: Option<u32>,
    ) -> Result<(), End> {
        let Some(l) = self.link(ns, link) else {
            return Ok(());
        };
        if matches!(l.kind, LinkKind::Loopback) {
            return Ok(());
        }
        let mtu = route_mtu.filter(|m| *m > 0).unwrap_or(l.mtu);
        if mtu == 0 || st.pkt.len <= mtu {
            return Ok(());
        }
        let v = &self.world.ns[ns];
        if let Some(inner) = st.encap.last() {
            if inner.pkt.df {
                return Err(end(
                    Disposition::MtuExceeded,
                    format!(
                        "inner packet of {} bytes + {} bytes of VXLAN overhead = {} > MTU {} of {} in {} (DF set)",
                        inner.pkt.len,
                        st.pkt.len - inner.pkt.len,
                        st.pkt.len,
                        mtu,
                        l.name,
                        v.label()
                    ),
                    Some("mtu-blackhole"),
                ));
            }
        } else if st.pkt.df {
            return Err(end(
                Disposition::MtuExceeded,
                format!(
                    "packet of {} bytes > MTU {} of {} in {} and DF is set",
                    st.pkt.len,
                    mtu,
                    l.name,
                    v.label()
                ),
                Some("mtu-blackhole"),
            ));
        }
        self.hop(
            st,
            ns,
            None,
            Some(link),
            Step::Check {
                check: "mtu".into(),
                detail: format!(
                    "{} bytes > MTU {mtu} of {}: fragmented (DF not set)",
                    st.pkt.len, l.name
                ),
            },
        );
        Ok(())
    }

    /// Run one netfilter hook with conntrack; returns the surviving states (others are ended
    /// into `out` as... no: ended states are returned as errors only when all end).
    fn hook(
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
            let found = st.cts.iter().enumerate().find_map(|(i, e)| {
                (e.ns == ns && e.proto == st.pkt.proto).then_some(())?;
                if e.orig == t {
                    Some((i, CtDir::Orig))
                } else if e.reply == t {
                    Some((i, CtDir::Reply))
                } else {
                    None
                }
            });
            match found {
                Some((i, dir)) => {
                    st.skb_ct = Some((i, dir, false));
                    let text = st.cts[i].text();
                    let state = if dir == CtDir::Orig {
                        "established"
                    } else {
                        "reply"
                    };
                    self.hop(
                        &mut st,
                        ns,
                        iif,
                        oif,
                        Step::Conntrack {
                            state: state.into(),
                            entry: text,
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
                        return vec![Next::Stop(
                            st,
                            end(
                                Disposition::ReplyMismatch,
                                format!(
                                    "the reply {t} does not match conntrack entry `{}` in {}{bridged}: TCP treats it as INVALID and the handshake dies{where_}",
                                    e.text(),
                                    v.label()
                                ),
                                Some("nat-reply-mismatch"),
                            ),
                        )];
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
        };
        let manip = hook.manip();
        let nat_allowed = match (st.skb_ct, manip) {
            (Some((i, CtDir::Orig, true)), Some(Manip::Dst)) => !st.cts[i].nat_done_dst,
            (Some((i, CtDir::Orig, true)), Some(Manip::Src)) => !st.cts[i].nat_done_src,
            _ => false,
        };
        let outcomes = self.nf.evaluate(ns, hook, &nfp, nat_allowed);
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
                )),
                NfVerdict::Reject(w) => Err(end(
                    Disposition::Rejected,
                    format!(
                        "rejected ({w}) in {} by {}{brs} in {}",
                        hook.name(),
                        rule_desc(last_rule),
                        v.label()
                    ),
                    Some("iptables-reject-rule"),
                )),
                NfVerdict::Queue => Err(end(
                    Disposition::Unknown,
                    format!(
                        "queued to user space in {} by {}",
                        hook.name(),
                        rule_desc(last_rule)
                    ),
                    Some("uncertain-rule"),
                )),
                NfVerdict::Unknown(why) => Err(end(
                    Disposition::Unknown,
                    format!("{} in {}: {why}", hook.name(), v.label()),
                    Some("uncertain-rule"),
                )),
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
    fn last_nat_hop(&self, st: &St) -> String {
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
                kind = Some(k.into());
            }
        }
        if let Some(k) = kind {
            let after = s.pkt.view().to_string();
            if after != before {
                let text = s.cts[i].text();
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
                        },
                    );
                }
            }
        }
        Ok(())
    }

    /// `ip_vs_out`: a reply of an IPVS/NAT connection of this namespace gets the virtual
    /// service's address and port back as its source, from IPVS's own connection table.
    fn ipvs_out(
        &self,
        st: &mut St,
        ns: NsIdx,
        hook: NfHook,
        iif: Option<usize>,
        oif: Option<usize>,
    ) {
        if st.ipvs.is_empty() || !st.pkt.has_ports() {
            return;
        }
        let p = &st.pkt;
        let Some(c) = st
            .ipvs
            .iter()
            .find(|c| {
                c.ns == ns
                    && c.forward == Forward::Masq
                    && c.proto == p.proto
                    && (p.src, p.sport) == c.rs
                    && (p.dst, p.dport) == c.client
            })
            .cloned()
        else {
            return;
        };
        let before = st.pkt.view().to_string();
        st.pkt.set_src(c.vip.0, c.vip.1);
        let after = st.pkt.view().to_string();
        self.hop(
            st,
            ns,
            iif,
            oif,
            Step::Nat {
                kind: format!(
                    "ipvs de-dnat in {} (ip_vs_out, IPVS connection {})",
                    hook.name(),
                    c.text()
                ),
                before,
                after,
            },
        );
    }

    /// `ip_vs_in` at LOCAL_IN (after filter INPUT) or LOCAL_OUT: a new connection to a
    /// virtual service is scheduled to its real servers (one branch each). Returns the state
    /// when IPVS lets the packet continue (no service, or a real server on this host).
    fn ipvs_in(
        &self,
        st: St,
        ns: NsIdx,
        hook: NfHook,
        link: Option<usize>,
        out: &mut Vec<Next>,
    ) -> Option<St> {
        let v = &self.world.ns[ns];
        let Some(table) = &v.ipvs else {
            return Some(st);
        };
        // IPVS schedules TCP, UDP and SCTP; replies are not new connections.
        if st.leg != Leg::Forward || !st.pkt.has_ports() {
            return Some(st);
        }
        let p = &st.pkt;
        // A packet IPVS already sent (`skb->ipvs_property`) is not scheduled again.
        if st.ipvs.iter().any(|c| {
            c.ns == ns
                && c.proto == p.proto
                && (p.src, p.sport) == c.client
                && ((p.dst, p.dport) == c.rs || (p.dst, p.dport) == c.vip)
        }) {
            return Some(st);
        }
        let hname = hook.name();
        let (iif, oif) = match hook {
            NfHook::Output => (None, st.route.map(|r| r.dev)),
            _ => (link, None),
        };
        let Some(svc) = table.find(p.proto, p.dst, p.dport, p.mark) else {
            // An unreadable line might be a service for this packet (to a local address:
            // a VIP or the node's own).
            let to_local = hook == NfHook::Input || st.route.is_some_and(|r| r.local);
            if to_local && !table.unattributed.is_empty() {
                let lines: Vec<String> = table.unattributed.iter().map(|d| d.to_string()).collect();
                out.push(Next::Stop(
                    st,
                    end(
                        Disposition::Unknown,
                        format!(
                            "IPVS in {}: {}; a line that cannot be read might be a virtual service for this packet",
                            v.label(),
                            lines.join("; ")
                        ),
                        Some("ipvs-unparsed"),
                    ),
                ));
                return None;
            }
            return Some(st);
        };
        let mut st = st;
        if !svc.unknown.is_empty() {
            let lines: Vec<String> = svc.unknown.iter().map(|d| d.to_string()).collect();
            self.hop(
                &mut st,
                ns,
                iif,
                oif,
                Step::Ipvs {
                    hook: hname.into(),
                    service: svc.text.clone(),
                    real_server: None,
                    detail: "malformed line(s) for this service".into(),
                },
            );
            out.push(Next::Stop(
                st,
                end(
                    Disposition::Unknown,
                    format!(
                        "IPVS virtual service {} in {}: {}",
                        svc.key,
                        v.label(),
                        lines.join("; ")
                    ),
                    Some("ipvs-unparsed"),
                ),
            ));
            return None;
        }
        let (choices, note) = svc.schedule();
        if choices.is_empty() {
            self.hop(
                &mut st,
                ns,
                iif,
                oif,
                Step::Ipvs {
                    hook: hname.into(),
                    service: svc.text.clone(),
                    real_server: None,
                    detail: format!(
                        "no real server with weight > 0 ({} configured)",
                        svc.reals.len()
                    ),
                },
            );
            out.push(Next::Stop(
                st,
                end(
                    Disposition::Rejected,
                    format!(
                        "IPVS virtual service `{}` in {} has no real server with weight > 0: the kernel (ip_vs_leave) answers ICMP port unreachable and drops the packet",
                        svc.text,
                        v.label()
                    ),
                    Some("ipvs-no-destination"),
                ),
            ));
            return None;
        }
        let ct_sysctl = v.sysctl_int("net.ipv4.vs.conntrack");
        let ct_on = ct_sysctl.unwrap_or(1) != 0;
        let persist = svc
            .persistent
            .map(|p| format!("; persistent {p} s: later connections of this client stick to it"))
            .unwrap_or_default();
        let n = choices.len();
        for ((rs, share), mut s) in choices.into_iter().zip(fork(st, n)) {
            s.prob *= share;
            let port = if rs.port == 0 { s.pkt.dport } else { rs.port };
            self.hop(
                &mut s,
                ns,
                iif,
                oif,
                Step::Ipvs {
                    hook: hname.into(),
                    service: svc.text.clone(),
                    real_server: Some(rs.text.clone()),
                    detail: format!(
                        "{note}; this server {:.1}% (weight {}){persist}; {}",
                        share * 100.0,
                        rs.weight,
                        rs.forward.name()
                    ),
                },
            );
            if rs.forward == Forward::Tunnel {
                out.push(Next::Stop(
                    s,
                    end(
                        Disposition::Unknown,
                        format!(
                            "IPVS virtual service `{}` in {} sends to real server {} by IPIP tunnel (-i), which the walk does not model",
                            svc.text,
                            v.label(),
                            rs.addr
                        ),
                        Some("ipvs-unmodelled-forwarding"),
                    ),
                ));
                continue;
            }
            let conn = IpvsConn {
                ns,
                proto: s.pkt.proto,
                client: (s.pkt.src, s.pkt.sport),
                vip: (s.pkt.dst, s.pkt.dport),
                rs: (rs.addr, port),
                forward: rs.forward,
            };
            if rs.forward == Forward::Masq {
                let before = s.pkt.view().to_string();
                s.pkt.set_dst(rs.addr, port);
                let after = s.pkt.view().to_string();
                self.hop(
                    &mut s,
                    ns,
                    iif,
                    oif,
                    Step::Nat {
                        kind: format!("ipvs dnat ({}) in {hname}", rs.forward.name()),
                        before,
                        after,
                    },
                );
                s.endpoint = Some(endpoint_of(&s.pkt));
            }
            // Conntrack: with net.ipv4.vs.conntrack=1 the entry stays and its reply tuple is
            // altered to the real server (`ip_vs_update_conntrack`); with 0 the skb leaves
            // IPVS untracked, so no netfilter NAT applies after this.
            match s.skb_ct {
                Some((i, CtDir::Orig, new)) if !ct_on => {
                    s.skb_ct = None;
                    if new {
                        s.cts.remove(i);
                    }
                    s.untracked_ns = Some(ns);
                    self.hop(
                        &mut s,
                        ns,
                        iif,
                        oif,
                        Step::Check {
                            check: "ipvs-conntrack".into(),
                            detail: "net.ipv4.vs.conntrack=0: the packet leaves IPVS untracked (no MASQUERADE after this)".into(),
                        },
                    );
                }
                Some((i, CtDir::Orig, _)) if rs.forward == Forward::Masq => {
                    let t = s.pkt.tuple();
                    let e = &mut s.cts[i];
                    e.reply.src = t.dst;
                    e.reply.sport = t.dport;
                    let assumed = if ct_sysctl.is_none() {
                        "net.ipv4.vs.conntrack not in the snapshot: assumed 1, as kube-proxy sets it"
                    } else {
                        "net.ipv4.vs.conntrack=1"
                    };
                    let text = format!("{} (reply tuple altered by IPVS; {assumed})", e.text());
                    self.hop(
                        &mut s,
                        ns,
                        iif,
                        oif,
                        Step::Conntrack {
                            state: "new".into(),
                            entry: text,
                        },
                    );
                }
                _ => {}
            }
            // IPVS (priority 99 at LOCAL_IN) takes the packet before nat INPUT (100): the
            // source manipulation is still to be decided, at POSTROUTING.
            if hook == NfHook::Input
                && let Some((i, CtDir::Orig, true)) = s.skb_ct
            {
                s.cts[i].nat_done_src = false;
            }
            let dr_nh = (rs.forward == Forward::Route).then_some(rs.addr);
            s.ipvs.push(conn);
            self.ipvs_send(s, ns, hook, link, rs.addr, dr_nh, out);
        }
        None
    }

    /// IPVS transmits to a real server: route to it (`__ip_vs_get_out_rt`, no source, no
    /// mark); a real server on this host continues locally, others go out through LOCAL_OUT
    /// and POSTROUTING (`ip_vs_nat_send_or_cont` / `ip_vs_send_or_cont`). Direct routing
    /// keeps the IP header and uses the real server as the next hop.
    #[allow(clippy::too_many_arguments)]
    fn ipvs_send(
        &self,
        s: St,
        ns: NsIdx,
        hook: NfHook,
        link: Option<usize>,
        target: IpAddr,
        dr_nh: Option<IpAddr>,
        out: &mut Vec<Next>,
    ) {
        let v = &self.world.ns[ns];
        let key = FlowKey {
            src: None,
            dst: target,
            iif: None,
            oif: None,
            mark: 0,
            tos: 0,
            proto: s.pkt.proto,
            sport: Some(s.pkt.sport),
            dport: Some(s.pkt.dport),
        };
        let sels = match self.selections(ns, fib::lookup(v, &key), target, None) {
            Ok(x) => x,
            Err(e) => {
                out.push(Next::Stop(s, e));
                return;
            }
        };
        let n = sels.len();
        for ((p, sel, step), mut t) in sels.into_iter().zip(fork(s, n)) {
            t.prob *= p;
            self.hop(&mut t, ns, None, (!sel.local).then_some(sel.dev), step);
            if sel.local {
                // The real server is this host: IPVS returns NF_ACCEPT and delivery goes on.
                match (hook, link) {
                    (NfHook::Input, Some(l)) => out.push(self.deliver(t, ns, l)),
                    _ => {
                        t.route = Some(sel);
                        t.pos = Pos::Post { ns, iif: None };
                        out.push(Next::Go(t));
                    }
                }
                continue;
            }
            t.route = Some(RouteSel {
                nh: dr_nh.unwrap_or(sel.nh),
                ..sel
            });
            // Sent through LOCAL_OUT again; from OUTPUT with an unchanged header (direct
            // routing) straight to POSTROUTING (the second OUTPUT pass is not repeated).
            t.pos = if hook == NfHook::Output && dr_nh.is_some() {
                Pos::Post { ns, iif: None }
            } else {
                Pos::OutHook { ns, oif: None }
            };
            out.push(Next::Go(t));
        }
    }

    fn primary_addr(&self, ns: NsIdx, link: usize, v4: bool) -> Option<IpAddr> {
        let v = &self.world.ns[ns];
        let name = v.link_name(link);
        v.snap
            .addresses
            .iter()
            .filter(|a| a.dev == name && a.addr.addr().is_ipv4() == v4)
            .find(|a| !a.flags.iter().any(|f| f == "secondary"))
            .map(|a| a.addr.addr())
    }

    /// Source address selection (`inet_select_addr`): an address of `dev` in the next hop's
    /// subnet, else its primary address, else any global address of the namespace.
    fn select_src(&self, ns: NsIdx, dev: usize, nh: IpAddr, prefsrc: Option<IpAddr>) -> IpAddr {
        if let Some(p) = prefsrc {
            return p;
        }
        let v = &self.world.ns[ns];
        let name = v.link_name(dev);
        let v4 = nh.is_ipv4();
        let fam = |a: &&netray_snapshot::Address| a.addr.addr().is_ipv4() == v4;
        v.snap
            .addresses
            .iter()
            .filter(fam)
            .find(|a| a.dev == name && a.addr.contains(&nh))
            .or_else(|| {
                v.snap
                    .addresses
                    .iter()
                    .filter(fam)
                    .find(|a| a.dev == name && a.scope != "host")
            })
            .or_else(|| {
                v.snap
                    .addresses
                    .iter()
                    .filter(fam)
                    .find(|a| a.scope == "global" && !a.addr.addr().is_loopback())
            })
            .map(|a| a.addr.addr())
            .unwrap_or(if v4 {
                IpAddr::V4(Ipv4Addr::UNSPECIFIED)
            } else {
                IpAddr::V6(Ipv6Addr::UNSPECIFIED)
            })
    }

    /// Local delivery (or VXLAN decapsulation, or the switch to the reply).
    fn deliver(&self, mut st: St, ns: NsIdx, link: usize) -> Next {
        let v = &self.world.ns[ns];
        // VXLAN decapsulation.
        if st.pkt.proto == 17 && !st.encap.is_empty() {
            let inner = st.encap.last().cloned();
            if let Some(inner) = inner {
                let dport = st.pkt.dport;
                if dport != inner.port {
                    return Next::Stop(
                        st,
                        end(
                            Disposition::Dropped,
                            format!("UDP port {dport} is not the VXLAN port {}", inner.port),
                            Some("vxlan-mismatch"),
                        ),
                    );
                }
                let cand = v.snap.links.iter().position(|l| {
                    matches!(&l.kind, LinkKind::Vxlan { vni, port, local, .. }
                        if *vni == inner.vni && *port == dport && local.is_none_or(|a| a == st.pkt.dst))
                });
                match cand {
                    Some(vx) => {
                        st.encap.pop();
                        st.pkt = inner.pkt.clone();
                        st.pkt.mark = 0;
                        st.skb_ct = None;
                        let dev = v.link_name(vx).to_string();
                        self.hop(
                            &mut st,
                            ns,
                            Some(vx),
                            None,
                            Step::Decap {
                                dev,
                                vni: inner.vni,
                            },
                        );
                        st.pos = Pos::FrameIn {
                            ns,
                            link: vx,
                            mac: Some(inner.mac.clone()),
                        };
                        return Next::Go(st);
                    }
                    None => {
                        let same_port: Vec<String> = v
                            .snap
                            .links
                            .iter()
                            .filter_map(|l| match &l.kind {
                                LinkKind::Vxlan { vni, port, .. } if *port == dport => {
                                    Some(format!("{} (VNI {vni})", l.name))
                                }
                                _ => None,
                            })
                            .collect();
                        let why = if same_port.is_empty() {
                            format!(
                                "no VXLAN device listens on UDP port {dport} in {}",
                                v.label()
                            )
                        } else {
                            format!(
                                "VXLAN VNI {} on port {dport} does not match {} in {}",
                                inner.vni,
                                same_port.join(", "),
                                v.label()
                            )
                        };
                        return Next::Stop(
                            st,
                            end(Disposition::Dropped, why, Some("vxlan-mismatch")),
                        );
                    }
                }
            }
        }
        match st.leg {
            Leg::Forward => {
                let (disp, sock) = match self.socket_check(&st, ns, link) {
                    Ok(x) => x,
                    Err(e) => return Next::Stop(st, e),
                };
                self.hop(
                    &mut st,
                    ns,
                    Some(link),
                    None,
                    Step::Deliver { socket: sock },
                );
                st.fwd_disp = Some(disp);
                st.endpoint = Some(endpoint_of(&st.pkt));
                // The reply: generated by the server socket, through this namespace's conntrack.
                let p = &st.pkt;
                let reply = Pkt {
                    src: p.dst,
                    dst: p.src,
                    proto: p.proto,
                    sport: if p.is_icmp() { p.sport } else { p.dport },
                    dport: if p.is_icmp() { 0 } else { p.sport },
                    icmp_type: if p.proto == 58 { 129 } else { 0 },
                    tcp_flags: if p.proto == 6 { TCP_SYN | TCP_ACK } else { 0 },
                    len: if p.proto == 6 { 60 } else { p.len },
                    df: p.df,
                    mark: 0,
                };
                st.pkt = reply;
                st.leg = Leg::Reply;
                st.untracked_ns = None;
                st.route = None;
                st.pos = Pos::Out { ns, oif: None };
                self.hop(&mut st, ns, None, None, Step::Originate);
                Next::Go(st)
            }
            Leg::Reply => {
                if self.client_ns != Some(ns) {
                    let e = end(
                        Disposition::ReplyMismatch,
                        format!(
                            "the reply is delivered to {} instead of the client",
                            v.label()
                        ),
                        Some("nat-reply-mismatch"),
                    );
                    return Next::Stop(st, e);
                }
                match self.reply_matches(&st) {
                    Ok(()) => {
                        self.hop(
                            &mut st,
                            ns,
                            Some(link),
                            None,
                            Step::Deliver { socket: None },
                        );
                        let d = st.fwd_disp.unwrap_or(Disposition::Delivered);
                        let e = end(
                            d,
                            "the reply reached the client with the expected addresses and ports",
                            None,
                        );
                        Next::Stop(st, e)
                    }
                    Err(e) => Next::Stop(st, e),
                }
            }
        }
    }

    fn reply_matches(&self, st: &St) -> Result<(), End> {
        let want = self.orig.invert();
        let got = st.pkt.tuple();
        if got == want {
            return Ok(());
        }
        Err(end(
            Disposition::ReplyMismatch,
            format!(
                "the reply arrives as {got} but the client's socket expects {want}{}",
                self.last_nat_hop(st)
            ),
            Some("nat-reply-mismatch"),
        ))
    }

    fn socket_check(
        &self,
        st: &St,
        ns: NsIdx,
        link: usize,
    ) -> Result<(Disposition, Option<String>), End> {
        let v = &self.world.ns[ns];
        let p = &st.pkt;
        if p.is_icmp() {
            if sysctl_or(v, "net.ipv4.icmp_echo_ignore_all", 0) != 0 && p.dst.is_ipv4() {
                return Err(end(
                    Disposition::Dropped,
                    format!("net.ipv4.icmp_echo_ignore_all=1 in {}", v.label()),
                    Some("icmp-echo-ignored"),
                ));
            }
            return Ok((Disposition::Delivered, Some("icmp echo".into())));
        }
        let proto = match p.proto {
            6 => netray_snapshot::SocketProto::Tcp,
            17 => netray_snapshot::SocketProto::Udp,
            _ => return Ok((Disposition::AcceptedByHost, None)),
        };
        if !v.sockets_known {
            return Ok((Disposition::AcceptedByHost, None));
        }
        let iname = v.link_name(link);
        let found = v.snap.sockets.iter().find(|s| {
            s.proto == proto
                && s.port == p.dport
                && s.dev.as_deref().is_none_or(|d| d == iname)
                && (s.addr == p.dst
                    || (s.addr.is_unspecified()
                        && (s.addr.is_ipv4() == p.dst.is_ipv4()
                            || (s.addr.is_ipv6() && s.dual_stack))))
        });
        match found {
            Some(s) => Ok((
                Disposition::Delivered,
                Some(format!("{} {}:{}", proto_name(p.proto), s.addr, s.port)),
            )),
            None => Err(end(
                Disposition::Rejected,
                format!(
                    "nothing listens on {} {}:{} in {} ({})",
                    proto_name(p.proto),
                    p.dst,
                    p.dport,
                    v.label(),
                    if p.proto == 6 {
                        "TCP RST"
                    } else {
                        "ICMP port unreachable"
                    }
                ),
                Some("port-not-listening"),
            )),
        }
    }

    /// Transmit an IP packet: device state, MTU, neighbour.
    fn xmit(&self, st: &mut St, ns: NsIdx, link: usize, nh: IpAddr) -> Result<(), End> {
        let v = &self.world.ns[ns];
        let Some(l) = self.link(ns, link) else {
            return Err(end(Disposition::Unknown, "internal: bad link", None));
        };
        if !is_up(l) {
            return Err(end(
                Disposition::Dropped,
                format!("output interface {} in {} is down", l.name, v.label()),
                Some("interface-down"),
            ));
        }
        self.mtu_check(st, ns, link, st.route.and_then(|r| r.mtu))?;
        match &l.kind {
            LinkKind::Loopback => {
                st.pos = Pos::IpIn {
                    ns,
                    link,
                    skip_pre: false,
                    from_lo: true,
                };
                return Ok(());
            }
            LinkKind::Tun
            | LinkKind::Dummy
            | LinkKind::Vlan { .. }
            | LinkKind::Macvlan { .. }
            | LinkKind::Ipvlan { .. }
            | LinkKind::Tunnel { .. }
            | LinkKind::Other { .. } => {
                st.pos = Pos::FrameOut {
                    ns,
                    link,
                    mac: None,
                    nh,
                };
                return Ok(());
            }
            _ => {}
        }
        let noarp = l.flags.iter().any(|f| f == "NOARP" || f == "POINTOPOINT") || l.mac.is_none();
        let mac = if noarp && !matches!(l.kind, LinkKind::Vxlan { .. }) {
            None
        } else {
            self.neigh(st, ns, link, nh)?
        };
        st.pos = Pos::FrameOut { ns, link, mac, nh };
        Ok(())
    }

    /// Neighbour resolution of `nh` on `link`.
    fn neigh(
        &self,
        st: &mut St,
        ns: NsIdx,
        link: usize,
        nh: IpAddr,
    ) -> Result<Option<String>, End> {
        let v = &self.world.ns[ns];
        let lname = v.link_name(link);
        let entry = v
            .snap
            .neighbours
            .iter()
            .find(|n| n.dev == lname && n.dst == nh);
        let usable = entry.filter(|n| {
            n.lladdr.is_some()
                && !n
                    .state
                    .iter()
                    .any(|s| s == "FAILED" || s == "INCOMPLETE" || s == "NONE")
        });
        if let Some(n) = usable {
            let mac = n.lladdr.clone().unwrap_or_default();
            let state = n.state.join(",");
            // A PERMANENT entry to a MAC nobody owns is a blackhole (seed 002).
            self.hop(
                st,
                ns,
                None,
                Some(link),
                Step::Neighbour {
                    addr: nh,
                    lladdr: Some(mac.clone()),
                    state: format!("{state} (ip neigh: {nh} dev {lname} lladdr {mac} {state})"),
                },
            );
            return Ok(Some(mac));
        }
        if st.leg == Leg::Reply
            && self.client_ns.is_none()
            && nh == self.orig_pkt.src
            && !entry.is_some_and(|n| n.state.iter().any(|s| s == "FAILED"))
        {
            // The external client sent the request, so it answers ARP for itself.
            self.hop(
                st,
                ns,
                None,
                Some(link),
                Step::Transmit {
                    to: format!("the external client {nh} on {lname} (not collected)"),
                    dst_mac: None,
                },
            );
            return Err(self.exits(st));
        }
        let l = self.link(ns, link);
        let is_vxlan = l.is_some_and(|l| matches!(l.kind, LinkKind::Vxlan { .. }));
        if !is_vxlan
            && let Some((ons, ol)) =
                self.segment_owner(ns, link, |w, n, i| arp_answers(w, n, i, nh))
        {
            let mac = self.link(ons, ol).and_then(|l| l.mac.clone());
            let how = match entry {
                Some(n) => format!("entry is {}; ", n.state.join(",")),
                None => "no entry; ".into(),
            };
            self.hop(
                st,
                ns,
                None,
                Some(link),
                Step::Neighbour {
                    addr: nh,
                    lladdr: mac.clone(),
                    state: format!(
                        "{how}ARP is answered by {}/{}",
                        self.world.ns[ons].label(),
                        self.world.ns[ons].link_name(ol)
                    ),
                },
            );
            return Ok(mac);
        }
        // A physical device: the next hop may be outside what was collected.
        if !is_vxlan
            && l.is_some_and(|l| matches!(l.kind, LinkKind::Device))
            && !entry.is_some_and(|n| n.state.iter().any(|s| s == "FAILED"))
        {
            if let Some(&(ons, ol)) = self.world.owners_of(nh).iter().find(|o| o.0 != ns) {
                let mac = self.link(ons, ol).and_then(|l| l.mac.clone());
                self.hop(
                    st,
                    ns,
                    None,
                    Some(link),
                    Step::Neighbour {
                        addr: nh,
                        lladdr: mac.clone(),
                        state: format!(
                            "no entry; ARP is answered by {}/{}",
                            self.world.ns[ons].label(),
                            self.world.ns[ons].link_name(ol)
                        ),
                    },
                );
                return Ok(mac);
            }
            self.hop(
                st,
                ns,
                None,
                Some(link),
                Step::Transmit {
                    to: format!("next hop {nh} via {lname}, outside the collected snapshots"),
                    dst_mac: None,
                },
            );
            return Err(self.exits(st));
        }
        if !is_vxlan
            && entry.is_none()
            && let Some((un, ul)) = self.segment_owner(ns, link, |w, n, i| {
                matches!(
                    w.ns[n].snap.links.get(i).map(|l| &l.kind),
                    Some(LinkKind::Veth { .. })
                ) && w.ns[n].peer.get(i).is_some_and(|p| p.is_none())
            })
        {
            // Whoever owns the next hop may sit behind a namespace that was not collected.
            self.hop(
                st,
                ns,
                None,
                Some(link),
                Step::Transmit {
                    to: format!(
                        "next hop {nh}: not in the collected namespaces; the segment continues behind {}/{} (peer not collected)",
                        self.world.ns[un].label(),
                        self.world.ns[un].link_name(ul)
                    ),
                    dst_mac: None,
                },
            );
            return Err(self.exits(st));
        }
        let why = match entry {
            Some(n) => format!("neighbour entry {nh} dev {lname} is {}", n.state.join(",")),
            None => format!("no neighbour entry for {nh} on {lname}"),
        };
        Err(end(
            Disposition::NeighborUnreachable,
            format!(
                "{why} in {} and no interface on that segment owns {nh}",
                v.label()
            ),
            Some("neighbor-unreachable"),
        ))
    }

    /// Breadth-first search over the L2 segment behind `link` (veth peers and bridges, not
    /// tunnels) for an interface satisfying `pred`.
    fn segment_owner(
        &self,
        ns: NsIdx,
        link: usize,
        pred: impl Fn(&World<'a>, NsIdx, usize) -> bool,
    ) -> Option<(NsIdx, usize)> {
        let mut seen: HashSet<(NsIdx, usize)> = HashSet::new();
        let mut queue = std::collections::VecDeque::new();
        seen.insert((ns, link));
        // Start from the wire: the veth peer, or the ports of a bridge we send through (never
        // back into the bridge the start link is a port of).
        self.l2_neighbours(ns, link, false, &mut |x| {
            if seen.insert(x) {
                queue.push_back(x);
            }
        });
        while let Some((n, i)) = queue.pop_front() {
            if pred(self.world, n, i) {
                return Some((n, i));
            }
            if seen.len() > 10_000 {
                break;
            }
            self.l2_neighbours(n, i, true, &mut |x| {
                if seen.insert(x) {
                    queue.push_back(x);
                }
            });
        }
        None
    }

    fn l2_neighbours(&self, ns: NsIdx, link: usize, up: bool, f: &mut dyn FnMut((NsIdx, usize))) {
        let v = &self.world.ns[ns];
        let Some(l) = v.snap.links.get(link) else {
            return;
        };
        if let Some(Some(p)) = v.peer.get(link) {
            f(*p);
        }
        if up
            && let Some(m) = &l.master
            && let Some(b) = v.link(m)
        {
            f((ns, b));
        }
        if matches!(l.kind, LinkKind::Bridge { .. }) {
            for (i, p) in v.snap.links.iter().enumerate() {
                if p.master.as_deref() == Some(l.name.as_str()) {
                    f((ns, i));
                }
            }
        }
    }

    fn is_local_mac(&self, ns: NsIdx, br: usize, mac: &str) -> bool {
        let v = &self.world.ns[ns];
        let Some(b) = v.snap.links.get(br) else {
            return false;
        };
        if b.mac.as_deref().is_some_and(|m| mac_eq(m, mac)) {
            return true;
        }
        // Local FDB entries: the ports' own addresses.
        v.snap.links.iter().any(|p| {
            p.master.as_deref() == Some(b.name.as_str())
                && p.mac.as_deref().is_some_and(|m| mac_eq(m, mac))
                && !matches!(p.kind, LinkKind::Vxlan { .. })
                && v.snap.fdb.iter().any(|e| {
                    e.dev == p.name
                        && mac_eq(&e.mac, mac)
                        && e.state.iter().any(|s| s == "permanent")
                })
        })
    }

    /// Bridge forwarding: FDB lookup or flood; hairpin.
    fn bridge_ports(
        &self,
        st: &mut St,
        ns: NsIdx,
        br: usize,
        in_port: Option<usize>,
        mac: &str,
    ) -> Result<Vec<usize>, End> {
        let v = &self.world.ns[ns];
        let bname = v.link_name(br).to_string();
        let in_name = in_port
            .map(|p| v.link_name(p).to_string())
            .unwrap_or_else(|| bname.clone());
        let is_port = |name: &str| {
            v.link(name)
                .and_then(|i| v.snap.links.get(i))
                .is_some_and(|l| l.master.as_deref() == Some(bname.as_str()))
        };
        let fdb = v.snap.fdb.iter().find(|e| {
            mac_eq(&e.mac, mac) && is_port(&e.dev) && e.master.as_deref().is_none_or(|m| m == bname)
        });
        let (ports, fdb_text) = match fdb.and_then(|e| v.link(&e.dev).map(|i| (i, e))) {
            Some((i, e)) => (
                vec![i],
                format!(
                    "{} dev {} master {bname} {}",
                    e.mac,
                    e.dev,
                    e.state.join(" ")
                ),
            ),
            None => {
                // Flood: only ports behind which the MAC lives get a useful copy.
                let ports: Vec<usize> = v
                    .snap
                    .links
                    .iter()
                    .enumerate()
                    .filter(|(_, l)| l.master.as_deref() == Some(bname.as_str()))
                    .filter(|(i, _)| {
                        let own = self
                            .link(ns, *i)
                            .and_then(|l| l.mac.as_deref())
                            .is_some_and(|m| mac_eq(m, mac));
                        own || self
                            .segment_owner(ns, *i, |w, n, k| {
                                w.ns[n]
                                    .snap
                                    .links
                                    .get(k)
                                    .and_then(|l| l.mac.as_deref())
                                    .is_some_and(|m| mac_eq(m, mac))
                            })
                            .is_some()
                    })
                    .map(|(i, _)| i)
                    .collect();
                if ports.is_empty() {
                    return Err(end(
                        Disposition::Dropped,
                        format!(
                            "bridge {bname} in {}: no FDB entry for {mac} and no port leads to it (flooded, nobody answers)",
                            v.label()
                        ),
                        Some("bridge-no-fdb"),
                    ));
                }
                (ports, format!("no FDB entry for {mac}: flooded"))
            }
        };
        let mut outp = Vec::new();
        for p in ports {
            if let Some(pl) = self.link(ns, p)
                && pl.mtu > 0
                && st.pkt.len > pl.mtu + 4
            {
                return Err(end(
                    Disposition::MtuExceeded,
                    format!(
                        "bridge {bname} in {}: a {}-byte packet does not fit the MTU {} of port {}: dropped, silently",
                        v.label(),
                        st.pkt.len,
                        pl.mtu,
                        pl.name
                    ),
                    Some("mtu-blackhole"),
                ));
            }
            if Some(p) == in_port {
                let hair = self
                    .link(ns, p)
                    .and_then(|l| l.bridge_port.as_ref())
                    .is_some_and(|b| b.hairpin);
                if !hair {
                    return Err(end(
                        Disposition::Dropped,
                        format!(
                            "bridge {bname} would send the frame back out of {in_name}, where it came from, but hairpin mode is off",
                        ),
                        Some("hairpin-off"),
                    ));
                }
            }
            self.hop(
                st,
                ns,
                in_port,
                Some(p),
                Step::Bridge {
                    bridge: bname.clone(),
                    in_port: in_name.clone(),
                    out_port: v.link_name(p).to_string(),
                    fdb: fdb_text.clone(),
                },
            );
            outp.push(p);
        }
        Ok(outp)
    }

    /// A frame leaves `link`: `Ok(None)` when `st` itself continues (updated in place),
    /// `Ok(Some(states))` when it forks.
    fn frame_out(
        &self,
        st: &mut St,
        ns: NsIdx,
        link: usize,
        mac: Option<String>,
        nh: IpAddr,
    ) -> Result<Option<Vec<St>>, End> {
        let v = &self.world.ns[ns];
        let Some(l) = self.link(ns, link) else {
            return Err(end(Disposition::Unknown, "internal: bad link", None));
        };
        if !is_up(l) {
            return Err(end(
                Disposition::Dropped,
                format!("{} in {} is down", l.name, v.label()),
                Some("interface-down"),
            ));
        }
        match &l.kind {
            LinkKind::Veth { .. } => {
                let Some((pns, pl)) = v.peer.get(link).copied().flatten() else {
                    self.hop(
                        st,
                        ns,
                        None,
                        Some(link),
                        Step::Transmit {
                            to: format!("the peer of veth {} (namespace not collected)", l.name),
                            dst_mac: mac,
                        },
                    );
                    return Err(self.exits(st));
                };
                if let Some(p) = self.link(pns, pl)
                    && p.mtu > 0
                    && st.pkt.len > p.mtu + 4
                {
                    return Err(end(
                        Disposition::MtuExceeded,
                        format!(
                            "a {}-byte packet does not fit the MTU {} of {} in {}, the peer of {}: dropped on receive, silently",
                            st.pkt.len,
                            p.mtu,
                            p.name,
                            self.world.ns[pns].label(),
                            l.name
                        ),
                        Some("mtu-blackhole"),
                    ));
                }
                let to = format!(
                    "{}/{}",
                    self.world.ns[pns].label(),
                    self.world.ns[pns].link_name(pl)
                );
                self.hop(
                    st,
                    ns,
                    None,
                    Some(link),
                    Step::Transmit {
                        to,
                        dst_mac: mac.clone(),
                    },
                );
                if pns != ns {
                    st.pkt.mark = 0;
                }
                st.skb_ct = None;
                st.route = None;
                st.pos = Pos::FrameIn {
                    ns: pns,
                    link: pl,
                    mac,
                };
                Ok(None)
            }
            LinkKind::Bridge { .. } => {
                let Some(m) = mac else {
                    return Err(end(
                        Disposition::Unknown,
                        "frame without destination MAC on a bridge",
                        None,
                    ));
                };
                let ports = self.bridge_ports(st, ns, link, None, &m)?;
                Ok(Some(
                    ports
                        .into_iter()
                        .map(|p| {
                            let mut s = st.clone();
                            s.pos = Pos::FrameOut {
                                ns,
                                link: p,
                                mac: Some(m.clone()),
                                nh,
                            };
                            s
                        })
                        .collect(),
                ))
            }
            LinkKind::Vxlan {
                vni,
                port,
                local,
                dev,
                ..
            } => {
                let Some(m) = mac else {
                    return Err(end(
                        Disposition::Unknown,
                        "VXLAN frame without destination MAC",
                        None,
                    ));
                };
                let exact: Vec<_> = v
                    .snap
                    .fdb
                    .iter()
                    .filter(|e| e.dev == l.name && mac_eq(&e.mac, &m) && e.dst.is_some())
                    .collect();
                let entries = if exact.is_empty() {
                    v.snap
                        .fdb
                        .iter()
                        .filter(|e| {
                            e.dev == l.name && e.mac == "00:00:00:00:00:00" && e.dst.is_some()
                        })
                        .collect()
                } else {
                    exact
                };
                if entries.is_empty() {
                    return Err(end(
                        Disposition::Dropped,
                        format!(
                            "{} in {} has no FDB entry for inner MAC {m} (bridge fdb show dev {})",
                            l.name,
                            v.label(),
                            l.name
                        ),
                        Some("missing-vxlan-fdb"),
                    ));
                }
                let n = entries.len() as f64;
                let mut outv = Vec::new();
                for e in entries {
                    let Some(remote) = e.dst else { continue };
                    let mut s = st.clone();
                    if !exact_is_default(e) {
                        s.prob *= 1.0;
                    } else {
                        s.prob *= 1.0 / n;
                    }
                    let evni = e.vni.unwrap_or(*vni);
                    let eport = e.port.unwrap_or(*port);
                    let owners = self.world.mac_owners(&m);
                    let fdb_text =
                        format!("{} dev {} dst {remote} {}", e.mac, e.dev, e.state.join(" "));
                    self.hop(
                        &mut s,
                        ns,
                        None,
                        Some(link),
                        Step::Encap {
                            dev: l.name.clone(),
                            vni: evni,
                            inner_dst_mac: m.clone(),
                            remote,
                            port: eport,
                            fdb: if owners.is_empty() {
                                format!("{fdb_text} (warning: no collected device has MAC {m})")
                            } else {
                                fdb_text
                            },
                        },
                    );
                    let inner = Inner {
                        pkt: s.pkt.clone(),
                        mac: m.clone(),
                        vni: evni,
                        port: eport,
                    };
                    let src = local.unwrap_or(if remote.is_ipv4() {
                        IpAddr::V4(Ipv4Addr::UNSPECIFIED)
                    } else {
                        IpAddr::V6(Ipv6Addr::UNSPECIFIED)
                    });
                    let sport = 32768 + (s.pkt.sport ^ s.pkt.dport) % 28000;
                    s.pkt = Pkt {
                        src,
                        dst: remote,
                        proto: 17,
                        sport,
                        dport: eport,
                        icmp_type: 0,
                        tcp_flags: 0,
                        len: inner.pkt.len + if remote.is_ipv4() { 50 } else { 70 },
                        df: false,
                        mark: s.pkt.mark,
                    };
                    s.encap.push(inner);
                    s.skb_ct = None;
                    s.route = None;
                    s.pos = Pos::Out {
                        ns,
                        oif: dev.as_deref().and_then(|d| v.link(d)),
                    };
                    outv.push(s);
                }
                Ok(Some(outv))
            }
            LinkKind::Device => {
                // A physical wire: whoever owns the destination MAC receives it.
                let target = mac.as_deref().and_then(|m| {
                    self.world
                        .mac_owners(m)
                        .iter()
                        .copied()
                        .find(|&(n, i)| (n, i) != (ns, link))
                });
                match target {
                    Some((tn, tl)) => {
                        let to = format!(
                            "{}/{}",
                            self.world.ns[tn].label(),
                            self.world.ns[tn].link_name(tl)
                        );
                        self.hop(
                            st,
                            ns,
                            None,
                            Some(link),
                            Step::Transmit {
                                to,
                                dst_mac: mac.clone(),
                            },
                        );
                        if tn != ns {
                            st.pkt.mark = 0;
                        }
                        st.skb_ct = None;
                        st.route = None;
                        st.pos = Pos::FrameIn {
                            ns: tn,
                            link: tl,
                            mac,
                        };
                        Ok(None)
                    }
                    None => {
                        if !self.world.owners_of(nh).is_empty() {
                            Err(end(
                                Disposition::Dropped,
                                format!(
                                    "{} sends to {nh} at MAC {}, which no collected device has (stale neighbour entry)",
                                    l.name,
                                    mac.unwrap_or_default()
                                ),
                                Some("stale-neighbor"),
                            ))
                        } else {
                            self.hop(
                                st,
                                ns,
                                None,
                                Some(link),
                                Step::Transmit {
                                    to: format!("outside the cluster via {nh}"),
                                    dst_mac: mac,
                                },
                            );
                            Err(self.exits(st))
                        }
                    }
                }
            }
            LinkKind::Dummy => Err(end(
                Disposition::Dropped,
                format!(
                    "{} is a dummy device: what is routed to it is discarded",
                    l.name
                ),
                Some("dummy-device"),
            )),
            LinkKind::Loopback => {
                st.pos = Pos::IpIn {
                    ns,
                    link,
                    skip_pre: false,
                    from_lo: true,
                };
                Ok(None)
            }
            other => {
                let kind = match other {
                    LinkKind::Vlan { .. } => "vlan".to_string(),
                    LinkKind::Macvlan { .. } => "macvlan".to_string(),
                    LinkKind::Ipvlan { .. } => "ipvlan".to_string(),
                    LinkKind::Tun => "tun/tap".to_string(),
                    LinkKind::Tunnel { kind, .. } => kind.clone(),
                    LinkKind::Other { kind } => kind.clone(),
                    _ => "unknown".to_string(),
                };
                Err(end(
                    Disposition::Unknown,
                    format!(
                        "{} in {} is a {kind} device, which the datapath model does not follow",
                        l.name,
                        v.label()
                    ),
                    Some("unmodelled-interface"),
                ))
            }
        }
    }

    /// The packet leaves the collected world: success for a reply to an external client.
    fn exits(&self, st: &St) -> End {
        if st.leg == Leg::Reply && self.client_ns.is_none() && st.pkt.dst == self.orig_pkt.src {
            return match self.reply_matches(st) {
                Ok(()) => end(
                    st.fwd_disp.unwrap_or(Disposition::Delivered),
                    "the reply leaves the cluster toward the external client with the expected addresses and ports",
                    None,
                ),
                Err(e) => e,
            };
        }
        end(
            Disposition::ExitsCluster,
            format!("{} leaves the collected namespaces", st.pkt.dst),
            None,
        )
    }

    fn frame_in(
        &self,
        st: &mut St,
        ns: NsIdx,
        link: usize,
        mac: Option<String>,
    ) -> Result<(), End> {
        let v = &self.world.ns[ns];
        let Some(l) = self.link(ns, link) else {
            return Err(end(Disposition::Unknown, "internal: bad link", None));
        };
        if !is_up(l) {
            return Err(end(
                Disposition::Dropped,
                format!("{} in {} is down", l.name, v.label()),
                Some("interface-down"),
            ));
        }
        if let Some(m) = &l.master
            && let Some(b) = v.link(m)
        {
            let Some(mac) = mac else {
                return Err(end(
                    Disposition::Unknown,
                    "frame without MAC on a bridge port",
                    None,
                ));
            };
            st.pos = Pos::BrIn {
                ns,
                br: b,
                port: link,
                mac,
            };
            return Ok(());
        }
        let for_me = match (&mac, &l.mac) {
            (None, _) | (_, None) => true,
            (Some(m), Some(own)) => mac_eq(m, own) || m.eq_ignore_ascii_case("ff:ff:ff:ff:ff:ff"),
        };
        if !for_me {
            let m = mac.unwrap_or_default();
            let own = l.mac.clone().unwrap_or_default();
            let (why, cause) = if matches!(l.kind, LinkKind::Vxlan { .. }) {
                (
                    format!(
                        "the inner frame is addressed to MAC {m} but {} in {} has MAC {own}: the sender's neighbour/FDB entry for this VTEP is stale",
                        l.name,
                        v.label()
                    ),
                    "stale-vxlan-neighbor",
                )
            } else {
                (
                    format!(
                        "frame to MAC {m} arrives on {} ({own}) in {}: not for this host",
                        l.name,
                        v.label()
                    ),
                    "stale-neighbor",
                )
            };
            return Err(end(Disposition::Dropped, why, Some(cause)));
        }
        st.pos = Pos::IpIn {
            ns,
            link,
            skip_pre: false,
            from_lo: false,
        };
        Ok(())
    }
}

/// Would interface `i` of namespace `n` answer ARP for `ip`? Linux answers for any local
/// address on any interface (weak host model) unless `arp_ignore` >= 1, which requires the
/// address to be configured on the receiving interface.
fn arp_answers(w: &World<'_>, n: NsIdx, i: usize, ip: IpAddr) -> bool {
    let v = &w.ns[n];
    let Some(owner) = v.owns(ip) else {
        return false;
    };
    let name = v.link_name(i);
    let ignore = sysctl_or(v, "net.ipv4.conf.all.arp_ignore", 0).max(sysctl_or(
        v,
        &format!("net.ipv4.conf.{name}.arp_ignore"),
        0,
    ));
    owner == i
        || (ignore == 0
            && !v
                .snap
                .links
                .get(i)
                .is_some_and(|l| l.flags.iter().any(|f| f == "NOARP")))
}

/// `n` copies of `st`, the last one being `st` itself.
fn fork(st: St, n: usize) -> Vec<St> {
    let mut v = Vec::with_capacity(n);
    for _ in 1..n {
        v.push(st.clone());
    }
    if n > 0 {
        v.push(st);
    }
    v
}

/// `IP:PORT` (or `IP` for ICMP) of a packet's destination: the endpoint a branch reaches.
fn endpoint_of(p: &Pkt) -> String {
    if p.has_ports() {
        match p.dst {
            IpAddr::V6(a) => format!("[{a}]:{}", p.dport),
            a => format!("{a}:{}", p.dport),
        }
    } else {
        p.dst.to_string()
    }
}

fn exact_is_default(e: &netray_snapshot::FdbEntry) -> bool {
    e.mac == "00:00:00:00:00:00"
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
