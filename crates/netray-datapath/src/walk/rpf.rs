//! The reverse lookups behind `-m rpfilter` (`rpfilter_mt`, net/ipv4/netfilter/ipt_rpfilter.c):
//! the route to the packet's source from its destination (the destination as source unless it
//! is multicast or broadcast), as if input on `lo`, with mark 0 — or the packet's mark under
//! `--validmark`. Computed here because the walk holds the routing tables; the match itself is
//! evaluated by `netray-netfilter`. IPv4 only: for IPv6 the match stays unknown.

use std::net::IpAddr;

use netray_netfilter::{Rpf, RpfRoute};
use netray_snapshot::{LinkKind, RouteType};

use crate::fib::{self, FibResult, FlowKey};
use crate::world::NsIdx;

use super::Walker;
use super::state::St;

impl<'w, 'a> Walker<'w, 'a> {
    /// The reverse lookups for the packet of `st` entering `ns` on `link` at PREROUTING.
    pub(super) fn rpf(&self, st: &St, ns: NsIdx, link: usize) -> Option<Rpf> {
        let (IpAddr::V4(src), IpAddr::V4(dst)) = (st.pkt.src, st.pkt.dst) else {
            return None;
        };
        let v = &self.world.ns[ns];
        let l = v.snap.links.get(link)?;
        let iname = l.name.as_str();
        let saddr = if dst.is_multicast() || dst.is_broadcast() {
            None
        } else {
            Some(IpAddr::V4(dst))
        };
        let look = |mark: u32| {
            let key = FlowKey {
                src: saddr,
                dst: IpAddr::V4(src),
                iif: None,
                oif: None,
                mark,
                tos: 0,
                proto: st.pkt.proto,
                sport: None,
                dport: None,
            };
            match fib::lookup(v, &key) {
                FibResult::Route { route, .. } => {
                    let text = fib::route_text(route);
                    let via_iif = route.dev.as_deref() == Some(iname)
                        || route
                            .multipath
                            .iter()
                            .any(|m| m.dev.as_deref() == Some(iname));
                    match route.route_type {
                        RouteType::Unicast => RpfRoute::Unicast {
                            via_iif,
                            route: text,
                        },
                        RouteType::Local => RpfRoute::Local {
                            via_iif,
                            route: text,
                        },
                        _ => RpfRoute::Other { route: text },
                    }
                }
                _ => RpfRoute::NoRoute,
            }
        };
        let mut selectors: Vec<(u32, u32)> = v
            .rules
            .iter()
            .filter(|r| r.family != "inet6")
            .filter_map(|r| r.fwmark.map(|m| (m, r.fwmask.unwrap_or(u32::MAX))))
            .collect();
        selectors.sort_unstable();
        selectors.dedup();
        let mark_sensitive = !selectors.is_empty();
        // One lookup per mark that a selector matches (its value), plus the packet's and 0:
        // every mark is equivalent to one of these unless it matches several selectors at
        // once in a combination none of them shows (then the match stays unknown).
        let mut marks = vec![0, st.pkt.mark];
        marks.extend(selectors.iter().map(|&(m, k)| m & k));
        marks.sort_unstable();
        marks.dedup();
        Some(Rpf {
            loopback: matches!(l.kind, LinkKind::Loopback),
            unmarked: look(0),
            marked: if mark_sensitive {
                marks.into_iter().map(|m| (m, look(m))).collect()
            } else {
                Vec::new()
            },
            mark_sensitive,
            selectors,
        })
    }
}
