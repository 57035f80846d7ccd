//! The walk's state: the packet (`Pkt`), where it is in the datapath (`Pos`: one variant per
//! kernel stage, from `ip_local_out` to the bridge's hooks), the per-branch state (`St`: skb
//! conntrack association, route, VXLAN encapsulation stack, IPVS connections, hops so far),
//! how a step ends (`Next`, `End`) and small helpers shared by the stages.

use std::collections::HashSet;
use std::net::IpAddr;

use crate::nf::{CtDir, CtEntry, Tuple, proto_name};
use crate::object::KernelObject;
use crate::result::{Disposition, Hop, Leg, PacketView};
use crate::world::NsIdx;

use super::ipvs::IpvsConn;

pub(super) const TCP_SYN: u8 = 0x02;
pub(super) const TCP_ACK: u8 = 0x10;

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) struct Pkt {
    pub(super) src: IpAddr,
    pub(super) dst: IpAddr,
    pub(super) proto: u8,
    pub(super) sport: u16,
    pub(super) dport: u16,
    pub(super) icmp_type: u8,
    pub(super) tcp_flags: u8,
    pub(super) len: u32,
    pub(super) df: bool,
    pub(super) mark: u32,
}

impl Pkt {
    pub(super) fn is_icmp(&self) -> bool {
        self.proto == 1 || self.proto == 58
    }
    pub(super) fn has_ports(&self) -> bool {
        matches!(self.proto, 6 | 17 | 132)
    }
    pub(super) fn tuple(&self) -> Tuple {
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
    pub(super) fn view(&self) -> PacketView {
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
    pub(super) fn set_src(&mut self, t_addr: IpAddr, t_port: u16) {
        self.src = t_addr;
        if self.has_ports() {
            self.sport = t_port;
        }
    }
    pub(super) fn set_dst(&mut self, t_addr: IpAddr, t_port: u16) {
        self.dst = t_addr;
        if self.has_ports() {
            self.dport = t_port;
        }
    }
}

#[derive(Debug, Clone)]
pub(super) struct Inner {
    pub(super) pkt: Pkt,
    pub(super) mac: String,
    pub(super) vni: u32,
    pub(super) port: u16,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub(super) struct RouteSel {
    pub(super) local: bool,
    pub(super) dev: usize,
    pub(super) nh: IpAddr,
    pub(super) mtu: Option<u32>,
}

#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(super) enum Pos {
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
pub(super) struct St {
    pub(super) prob: f64,
    pub(super) leg: Leg,
    pub(super) pkt: Pkt,
    pub(super) pos: Pos,
    pub(super) hops: Vec<Hop>,
    pub(super) cts: Vec<CtEntry>,
    /// Conntrack association of the skb in the current namespace: entry, direction, first packet.
    pub(super) skb_ct: Option<(usize, CtDir, bool)>,
    pub(super) route: Option<RouteSel>,
    pub(super) encap: Vec<Inner>,
    pub(super) steps: usize,
    pub(super) seen: HashSet<(Pos, Pkt, Leg, usize)>,
    pub(super) fwd_disp: Option<Disposition>,
    pub(super) endpoint: Option<String>,
    /// IPVS connections created on this branch (per namespace), for `ip_vs_out`.
    pub(super) ipvs: Vec<IpvsConn>,
    /// The skb left IPVS untracked (`net.ipv4.vs.conntrack=0`) in this namespace.
    pub(super) untracked_ns: Option<NsIdx>,
    /// Assumptions about unmodelled rule matches this branch rests on.
    pub(super) assumptions: Vec<String>,
    /// The unknown facts this branch decided, per namespace: later hooks follow them.
    pub(super) facts: Vec<(NsIdx, crate::nf::Fact)>,
    /// The TCP MSS the client (0) and the server (1) advertise: from the output route each
    /// leg's socket used first (`tcp_advertise_mss`: route MTU − 40 for IPv4, − 60 for IPv6).
    pub(super) mss: [Option<u32>; 2],
}

pub(super) enum Next {
    Go(St),
    Stop(St, End),
}

/// Push the stopped states to `out`, return the others.
pub(super) fn go(v: Vec<Next>, out: &mut Vec<Next>) -> Vec<St> {
    let mut r = Vec::new();
    for n in v {
        match n {
            Next::Go(s) => r.push(s),
            stop => out.push(stop),
        }
    }
    r
}

pub(super) struct End {
    pub(super) disp: Disposition,
    pub(super) reason: String,
    pub(super) cause: Option<&'static str>,
    /// The objects whose state decided this end (the DROP rule, the sysctl, the stale entry).
    pub(super) by: Vec<KernelObject>,
}

impl End {
    /// Name an object that decided this end.
    pub(super) fn by(mut self, o: KernelObject) -> End {
        if !self.by.contains(&o) {
            self.by.push(o);
        }
        self
    }

    /// Name several objects that decided this end.
    pub(super) fn by_all(mut self, os: impl IntoIterator<Item = KernelObject>) -> End {
        for o in os {
            self = self.by(o);
        }
        self
    }
}

pub(super) fn end(
    disp: Disposition,
    reason: impl Into<String>,
    cause: Option<&'static str>,
) -> End {
    End {
        disp,
        reason: reason.into(),
        cause,
        by: Vec::new(),
    }
}

pub(super) fn is_up(l: &netray_snapshot::Link) -> bool {
    l.is_up()
        && !matches!(
            l.operstate.as_str(),
            "down" | "lowerlayerdown" | "notpresent"
        )
}

pub(super) fn sysctl_or(v: &crate::world::NsView<'_>, name: &str, dflt: i64) -> i64 {
    v.sysctl_int(name).unwrap_or(dflt)
}

pub(super) fn mac_eq(a: &str, b: &str) -> bool {
    a.eq_ignore_ascii_case(b)
}

/// `n` copies of `st`, the last one being `st` itself.
pub(super) fn fork(st: St, n: usize) -> Vec<St> {
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
pub(super) fn endpoint_of(p: &Pkt) -> String {
    if p.has_ports() {
        match p.dst {
            IpAddr::V6(a) => format!("[{a}]:{}", p.dport),
            a => format!("{a}:{}", p.dport),
        }
    } else {
        p.dst.to_string()
    }
}
