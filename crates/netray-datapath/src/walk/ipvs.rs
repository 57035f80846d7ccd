//! IPVS in the walk: `ip_vs_in` at LOCAL_IN/LOCAL_OUT (scheduling a new connection to the real
//! servers of a virtual service, one branch each, and sending it on: `ip_vs_nat_xmit`,
//! `ip_vs_dr_xmit`) and `ip_vs_out` (replies get the virtual address back). The service table
//! and schedulers are modelled in [`crate::ipvs`].

use std::net::IpAddr;

use crate::fib::{self, FlowKey};
use crate::ipvs::Forward;
use crate::nf::{CtDir, NfHook, proto_name};
use crate::result::{Disposition, Leg, Step};
use crate::world::NsIdx;

use super::Walker;
use super::state::{Next, Pos, RouteSel, St, end, endpoint_of, fork};

/// An IPVS connection entry: client → virtual service, sent to a real server.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) struct IpvsConn {
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

impl<'w, 'a> Walker<'w, 'a> {
    /// `ip_vs_out`: a reply of an IPVS/NAT connection of this namespace gets the virtual
    /// service's address and port back as its source, from IPVS's own connection table.
    pub(super) fn ipvs_out(
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
    pub(super) fn ipvs_in(
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
                    detail: format!(
                        "{} for this service",
                        netray_snapshot::text::count(
                            svc.unknown.len(),
                            "malformed line",
                            "malformed lines"
                        )
                    ),
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
                    let (orig, reply) = e.tuples();
                    self.hop(
                        &mut s,
                        ns,
                        iif,
                        oif,
                        Step::Conntrack {
                            state: "new".into(),
                            entry: text,
                            orig,
                            reply,
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
}
