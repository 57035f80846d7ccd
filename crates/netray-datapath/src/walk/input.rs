//! The receive path's checks (`ip_route_input_slow`): martian sources and destinations, the
//! input route, forwarding per input interface, `fib_validate_source` (local source from
//! outside, rp_filter); and the MTU check on the way out (`ip_forward` / `ip_finish_output`).

use std::net::IpAddr;

use netray_snapshot::{LinkKind, RouteType};

use crate::fib::{self, FibResult, FlowKey};
use crate::result::{Disposition, Step};
use crate::world::NsIdx;

use super::Walker;
use super::family::Family;
use super::state::{End, Pos, RouteSel, St, end, sysctl_or};

impl<'w, 'a> Walker<'w, 'a> {
    /// The addresses of `ns` equal to `ip` (a martian's local source) and the `local` routes
    /// they put in the local table.
    fn local_addr_objs(&self, ns: NsIdx, ip: IpAddr) -> Vec<crate::KernelObject> {
        let v = &self.world.ns[ns];
        let addrs = v
            .snap
            .addresses
            .iter()
            .filter(|a| a.addr.addr() == ip)
            .map(|a| crate::KernelObject::Address {
                at: v.place(),
                dev: a.dev.clone(),
                addr: a.addr.to_string(),
            });
        let routes = v
            .snap
            .routes
            .iter()
            .filter(|r| r.table == 255 && r.route_type == RouteType::Local && r.dst.contains(&ip))
            .map(|r| crate::KernelObject::Route {
                at: v.place(),
                table: 255,
                route: fib::route_text(r),
                rule: None,
            });
        addrs.chain(routes).collect()
    }

    /// Input checks and input route.
    pub(super) fn route_in(
        &self,
        st: &mut St,
        ns: NsIdx,
        link: usize,
    ) -> Result<Vec<(f64, RouteSel)>, End> {
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
        let fam = Family::of(dst);
        if let Some(e) = fam.input_martian(v, iname, src, dst) {
            return Err(e);
        }
        let mut key = self.key(st, Some(link));
        key.iif = Some(iname);
        let res = fib::lookup(v, &key);
        let sels = self.selections(ns, res, dst, Some(link))?;
        let mut r = Vec::new();
        for (p, sel, step) in sels {
            self.hop(st, ns, Some(link), (!sel.local).then_some(sel.dev), step);
            if !sel.local {
                fam.forwarding(v, iname)?;
                fam.forward_source(v, iname, v.link_name(sel.dev), src)?;
            }
            if fam.validates_source() {
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
                )
                .by_all(self.local_addr_objs(ns, src))
                .by(v.sysctl_obj("net.ipv4.conf.all.accept_local")));
            }
            return Ok(());
        }
        let key = FlowKey {
            src: Some(st.pkt.dst),
            dst: src,
            iif: None,
            oif: None,
            // IN_DEV_SRC_VMARK: conf.all OR conf.IFACE.
            mark: if sysctl_or(v, "net.ipv4.conf.all.src_valid_mark", 0) != 0
                || sysctl_or(v, &format!("net.ipv4.conf.{iname}.src_valid_mark"), 0) != 0
            {
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
                )
                .by_all(self.local_addr_objs(ns, src))
                .by(crate::KernelObject::Route {
                    at: v.place(),
                    table: route.table,
                    route: fib::route_text(route),
                    rule: None,
                })
                .by(v.sysctl_obj("net.ipv4.conf.all.accept_local"))),
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
                        )
                        .by_all(rp_objs(v, iname))
                        .by(crate::KernelObject::Route {
                            at: v.place(),
                            table: route.table,
                            route: fib::route_text(route),
                            rule: None,
                        }))
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
            )
            .by_all(rp_objs(v, iname))
            .by(crate::KernelObject::RouteLookup {
                at: v.place(),
                dst: src,
                result: "no route back".into(),
                rule_priority: None,
            })),
        }
    }

    pub(super) fn mtu_check(
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
        let fam = Family::of(st.pkt.dst);
        // A forwarded IPv6 packet is never fragmented (`ip6_forward`: Packet Too Big).
        let transit = fam.no_transit_fragmentation() && matches!(st.pos, Pos::Fwd { .. });
        let mut mtu = route_mtu.filter(|m| *m > 0).unwrap_or(l.mtu);
        if transit && mtu > 0 {
            mtu = mtu.max(fam.min_mtu());
        }
        if mtu == 0 || st.pkt.len <= mtu {
            return Ok(());
        }
        let v = &self.world.ns[ns];
        // A data segment of an established connection that a router cannot forward: the
        // router sends ICMP frag-needed / Packet Too Big to the sender, whose TCP lowers its
        // segments (PMTU discovery) if that error reaches it; `data::check` decides that.
        if self.data_walk
            && matches!(st.pos, Pos::Fwd { .. })
            && st.encap.is_empty()
            && (st.pkt.df || transit)
        {
            return Err(end(
                Disposition::MtuExceeded,
                format!(
                    "a {}-byte TCP data segment > MTU {mtu} of {} in {} (DF set): the kernel sends {} (mtu {mtu}) back to {}",
                    st.pkt.len,
                    l.name,
                    v.label(),
                    if fam.no_transit_fragmentation() {
                        "ICMPv6 Packet Too Big"
                    } else {
                        "ICMP fragmentation-needed"
                    },
                    st.pkt.src
                ),
                Some(super::data::FRAG_NEEDED),
            )
            .by(v.link_obj(link, format!("mtu {mtu}"))));
        }
        if transit && st.encap.is_empty() {
            return Err(end(
                Disposition::MtuExceeded,
                format!(
                    "IPv6 packet of {} bytes > MTU {} of {} in {}: routers do not fragment IPv6; ICMPv6 Packet Too Big (mtu {mtu}) goes back to {}",
                    st.pkt.len,
                    mtu,
                    l.name,
                    v.label(),
                    st.pkt.src
                ),
                Some("mtu-blackhole"),
            )
            .by(v.link_obj(link, format!("mtu {mtu}"))));
        }
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
                )
                .by(v.link_obj(link, format!("mtu {mtu}"))));
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
            )
            .by(v.link_obj(link, format!("mtu {mtu}"))));
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
}

/// The rp_filter sysctls that make up `max(conf.all, conf.IFACE)` on `iname`, the one that
/// decides first.
fn rp_objs(v: &crate::world::NsView<'_>, iname: &str) -> Vec<crate::KernelObject> {
    let all = "net.ipv4.conf.all.rp_filter";
    let ifk = format!("net.ipv4.conf.{iname}.rp_filter");
    let (a, i) = (
        v.sysctl_int(all).unwrap_or(0),
        v.sysctl_int(&ifk).unwrap_or(0),
    );
    let mut out = Vec::new();
    if i >= a {
        out.push(v.sysctl_obj(&ifk));
    }
    if a >= i && a != 0 {
        out.push(v.sysctl_obj(all));
    }
    out
}
