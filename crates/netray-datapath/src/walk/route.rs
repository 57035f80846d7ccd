//! Routing (`fib_lookup` and what the kernel makes of its result): the flow key, the output
//! route (`ip_route_output_key`), the selections a FIB result gives (local delivery, unicast
//! next hops with ECMP as weighted branches, blackhole/unreachable/prohibit, policy-rule
//! actions) and source address selection (`inet_select_addr`).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netray_snapshot::{LinkKind, RouteType, RuleAction};

use crate::fib::{self, FibResult, FlowKey};
use crate::result::{Disposition, Step};
use crate::world::NsIdx;

use super::Walker;
use super::state::{End, RouteSel, St, end};

impl<'w, 'a> Walker<'w, 'a> {
    pub(super) fn key<'k>(&self, st: &'k St, iif: Option<usize>) -> FlowKey<'k> {
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
    pub(super) fn route_out(
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

    pub(super) fn selections(
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
            )
            .by(crate::KernelObject::RouteLookup {
                at: v.place(),
                dst,
                result: "no route".into(),
                rule_priority: None,
            })),
            FibResult::RuleAction { rule } => {
                let (d, c) = match rule.action {
                    RuleAction::Blackhole => (Disposition::Dropped, "blackhole-rule"),
                    _ => (Disposition::NoRoute, "no-route"),
                };
                Err(end(
                    d,
                    format!("ip rule `{}` in {}", fib::rule_text(rule), v.label()),
                    Some(c),
                )
                .by(crate::KernelObject::RouteLookup {
                    at: v.place(),
                    dst,
                    result: format!("ip rule `{}`", fib::rule_text(rule)),
                    rule_priority: Some(rule.priority),
                }))
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
                let route_obj = crate::KernelObject::Route {
                    at: v.place(),
                    table,
                    route: rtext.clone(),
                    rule: rule_t.clone(),
                };
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
                    )
                    .by(route_obj)),
                    RouteType::Unreachable | RouteType::Prohibit => Err(end(
                        Disposition::NoRoute,
                        format!("{:?} route `{rtext}` in {}", route.route_type, v.label())
                            .to_lowercase(),
                        Some("blackhole-route"),
                    )
                    .by(route_obj)),
                    other => Err(end(
                        Disposition::Unknown,
                        format!("route type {other:?} (`{rtext}`) is not modelled"),
                        Some("unmodelled-route-type"),
                    )
                    .by(route_obj)),
                }
            }
        }
    }

    pub(super) fn primary_addr(&self, ns: NsIdx, link: usize, v4: bool) -> Option<IpAddr> {
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
    pub(super) fn select_src(
        &self,
        ns: NsIdx,
        dev: usize,
        nh: IpAddr,
        prefsrc: Option<IpAddr>,
    ) -> IpAddr {
        select_src(&self.world.ns[ns], dev, nh, prefsrc)
    }
}

/// Source address selection (`inet_select_addr`): the route's preferred source, else an
/// address of `dev` in the next hop's subnet, else its primary address, else any global
/// address of the namespace.
pub(super) fn select_src(
    v: &crate::world::NsView<'_>,
    dev: usize,
    nh: IpAddr,
    prefsrc: Option<IpAddr>,
) -> IpAddr {
    if let Some(p) = prefsrc {
        return p;
    }
    let name = v.link_name(dev);
    let v4 = nh.is_ipv4();
    if let IpAddr::V6(d) = nh {
        return select_src_v6(v, name, d).unwrap_or(IpAddr::V6(Ipv6Addr::UNSPECIFIED));
    }
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

/// The source the kernel gives a packet a socket in `v` sends to `dst` without binding: the
/// output route's preferred source, else the address selection on its device (`None` when
/// there is no usable route).
pub(super) fn kernel_source(
    v: &crate::world::NsView<'_>,
    dst: IpAddr,
    proto: u8,
) -> Option<IpAddr> {
    let key = FlowKey {
        src: None,
        dst,
        iif: None,
        oif: None,
        mark: 0,
        tos: 0,
        proto,
        sport: None,
        dport: None,
    };
    match fib::lookup(v, &key) {
        FibResult::Route { route, .. } => {
            if let Some(p) = route.prefsrc {
                return Some(p);
            }
            if matches!(route.route_type, RouteType::Local | RouteType::Broadcast) {
                return Some(dst);
            }
            let (dev, gw) = match route.dev.as_deref() {
                Some(d) => (d, route.gateway),
                None => {
                    let nh = route.multipath.first()?;
                    (nh.dev.as_deref()?, nh.gateway)
                }
            };
            let src = match dst {
                // RFC 6724 picks by the destination, not by a (link-local) gateway.
                IpAddr::V6(d) => select_src_v6(v, dev, d)?,
                _ => select_src(v, v.link(dev)?, gw.unwrap_or(dst), None),
            };
            (!src.is_unspecified()).then_some(src)
        }
        _ => None,
    }
}

/// IPv6 source address selection as `ipv6_dev_get_saddr` does it (RFC 6724), over the
/// namespace's usable addresses (not tentative or failed DAD): the destination itself, then
/// the smallest scope not below the destination's, then not deprecated, then on the outgoing
/// device `dev`, then the longest prefix shared with `dst`.
fn select_src_v6(v: &crate::world::NsView<'_>, dev: &str, dst: Ipv6Addr) -> Option<IpAddr> {
    let scope = |a: Ipv6Addr| -> u8 {
        if a.is_loopback() {
            1
        } else if super::family::is_link_local(a) {
            2
        } else if a.is_multicast() {
            a.segments()[0] as u8 & 0x0f
        } else {
            14
        }
    };
    let dscope = scope(dst);
    v.snap
        .addresses
        .iter()
        .filter_map(|a| match a.addr.addr() {
            IpAddr::V6(x) => Some((a, x)),
            IpAddr::V4(_) => None,
        })
        .filter(|(a, x)| {
            !a.flags.iter().any(|f| f == "tentative" || f == "dadfailed")
                && (!x.is_loopback() || dst.is_loopback())
        })
        .max_by_key(|(a, x)| {
            let s = scope(*x);
            (
                *x == dst,
                // Rule 2: enough scope, and then the smallest; too small scopes last.
                if s >= dscope {
                    32 - s as i32
                } else {
                    s as i32 - 32
                },
                !a.flags.iter().any(|f| f == "deprecated"),
                a.dev == dev,
                (u128::from(*x) ^ u128::from(dst)).leading_zeros(),
            )
        })
        .map(|(_, x)| IpAddr::V6(x))
}
