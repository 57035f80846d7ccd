//! Transmission and frames (`ip_finish_output2`, `neigh_output`, `dev_queue_xmit`,
//! `netif_receive_skb`): device state, neighbour resolution (ARP / NDP answered by whoever
//! owns the address on the L2 segment, see `family`), frames leaving a veth, bridge, VXLAN or
//! physical device and arriving at the peer, the bridge or the IP layer.

use std::collections::HashSet;
use std::net::IpAddr;

use netray_snapshot::LinkKind;

use crate::result::{Disposition, Leg, Step};
use crate::world::{NsIdx, World};

use super::Walker;
use super::family::{self, Family};
use super::proxyarp::{self, ProxyArp};
use super::state::{End, Pos, St, end, is_up, mac_eq};

impl<'w, 'a> Walker<'w, 'a> {
    /// Transmit an IP packet: device state, MTU, neighbour.
    pub(super) fn xmit(&self, st: &mut St, ns: NsIdx, link: usize, nh: IpAddr) -> Result<(), End> {
        let l = self.up_link(ns, link, "output interface ")?;
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

    /// Interface `link` of `ns`, which must be up (`what` prefixes its name in the reason).
    fn up_link(
        &self,
        ns: NsIdx,
        link: usize,
        what: &str,
    ) -> Result<&'a netray_snapshot::Link, End> {
        let v = &self.world.ns[ns];
        let Some(l) = self.link(ns, link) else {
            return Err(end(Disposition::Unknown, "internal: bad link", None));
        };
        if !is_up(l) {
            // Administratively up but without carrier: the veth peer that is down decided.
            let peer = v
                .peer
                .get(link)
                .copied()
                .flatten()
                .filter(|&(pn, pi)| l.is_up() && self.link(pn, pi).is_some_and(|p| !is_up(p)));
            return Err(match peer {
                Some((pn, pi)) => end(
                    Disposition::Dropped,
                    format!(
                        "{what}{} in {} has no carrier: its veth peer {} in {} is down",
                        l.name,
                        v.label(),
                        self.world.ns[pn].link_name(pi),
                        self.world.ns[pn].label()
                    ),
                    Some("interface-down"),
                )
                .by(self.world.ns[pn].link_obj(pi, "down")),
                None => end(
                    Disposition::Dropped,
                    format!("{what}{} in {} is down", l.name, v.label()),
                    Some("interface-down"),
                )
                .by(v.link_obj(link, "down")),
            });
        }
        Ok(l)
    }

    /// Neighbour resolution of `nh` on `link`.
    pub(super) fn neigh(
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
            .find(|n| n.dev == lname && n.dst == nh && !n.flags.iter().any(|f| f == "proxy"));
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
            return Err(self.exits(
                st,
                ns,
                link,
                format!("the external client {nh} on {lname} (not collected)"),
                None,
            ));
        }
        let fam = Family::of(nh);
        let l = self.link(ns, link);
        let is_vxlan = l.is_some_and(|l| matches!(l.kind, LinkKind::Vxlan { .. }));
        if !is_vxlan
            && let Some(owner) =
                self.segment_owner(ns, link, |w, n, i| fam.answers_neighbour(w, n, i, nh))
        {
            let how = match entry {
                Some(n) => format!("entry is {}; ", n.state.join(",")),
                None => "no entry; ".into(),
            };
            return Ok(self.arp_answered(st, ns, link, nh, &how, owner));
        }
        // Nobody owns it: an interface on the segment may answer by proxy ARP.
        let mut silent: Option<End> = None;
        if !is_vxlan && fam == Family::V4 {
            let sip = self.arp_sender(st, ns, link);
            let how = match entry {
                Some(n) => format!("entry is {}; ", n.state.join(",")),
                None => "no entry; ".into(),
            };
            if let Some((pn, pi)) = self.segment_owner(ns, link, |w, n, i| {
                matches!(proxyarp::check(w, n, i, nh, sip), ProxyArp::Answers(_))
            }) && let ProxyArp::Answers(why) = proxyarp::check(self.world, pn, pi, nh, sip)
            {
                let how = format!("{how}{why}; ");
                return Ok(self.arp_answered(st, ns, link, nh, &how, (pn, pi)));
            }
            if let Some((pn, pi)) = self.segment_owner(ns, link, |w, n, i| {
                matches!(
                    proxyarp::check(w, n, i, nh, sip),
                    ProxyArp::Off { .. } | ProxyArp::SourceInvalid { .. }
                )
            }) {
                silent = match proxyarp::check(self.world, pn, pi, nh, sip) {
                    ProxyArp::Off { why, by } => Some(
                        end(
                            Disposition::NeighborUnreachable,
                            format!(
                                "no neighbour entry for {nh} on {lname} in {} can be resolved: {why}",
                                v.label()
                            ),
                            Some("neighbor-unreachable"),
                        )
                        .by_all(by),
                    ),
                    ProxyArp::SourceInvalid { why, by } => Some(
                        end(
                            Disposition::RpFilter,
                            format!(
                                "the ARP request for {nh} from {} is dropped: {why}",
                                v.label()
                            ),
                            Some("rp-filter-drop"),
                        )
                        .by_all(by),
                    ),
                    _ => None,
                };
            }
        }
        // A physical device: the next hop may be outside what was collected.
        if !is_vxlan
            && l.is_some_and(|l| matches!(l.kind, LinkKind::Device))
            && !entry.is_some_and(|n| n.state.iter().any(|s| s == "FAILED"))
        {
            if let Some(&owner) = self
                .world
                .owners_of(nh)
                .iter()
                .find(|o| o.0 != ns && fam.owner_is_global(nh))
            {
                return Ok(self.arp_answered(st, ns, link, nh, "no entry; ", owner));
            }
            return Err(self.exits(
                st,
                ns,
                link,
                format!("next hop {nh} via {lname}, outside the collected snapshots"),
                None,
            ));
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
            let to = format!(
                "next hop {nh}: not in the collected namespaces; the segment continues behind {}/{} (peer not collected)",
                self.world.ns[un].label(),
                self.world.ns[un].link_name(ul)
            );
            return Err(self.exits(st, ns, link, to, None));
        }
        if let Some(e) = silent {
            return Err(e);
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
        )
        .by(crate::KernelObject::Neighbour {
            at: v.place(),
            dev: lname.to_string(),
            addr: nh,
            lladdr: entry.and_then(|n| n.lladdr.clone()),
            state: entry
                .map(|n| n.state.join(","))
                .unwrap_or_else(|| "missing".into()),
            expected_lladdr: self.world.owners_of(nh).iter().find_map(|&(n, i)| {
                self.world.ns[n]
                    .snap
                    .links
                    .get(i)
                    .and_then(|l| l.mac.clone())
            }),
        }))
    }

    /// The sender address of an ARP request from `ns` on `link` (`arp_solicit`): the packet's
    /// source when it is local, else an address of the device, else any of the namespace.
    fn arp_sender(&self, st: &St, ns: NsIdx, link: usize) -> IpAddr {
        let v = &self.world.ns[ns];
        if st.pkt.src.is_ipv4() && v.owns(st.pkt.src).is_some() {
            return st.pkt.src;
        }
        let name = v.link_name(link);
        let v4 = || v.snap.addresses.iter().filter(|a| a.addr.addr().is_ipv4());
        v4().find(|a| a.dev == name)
            .or_else(|| v4().find(|a| !a.addr.addr().is_loopback()))
            .map(|a| a.addr.addr())
            .unwrap_or(st.pkt.src)
    }

    /// Interface `ol` of namespace `ons` answers ARP / NDP for `nh`: its MAC is the neighbour's.
    fn arp_answered(
        &self,
        st: &mut St,
        ns: NsIdx,
        link: usize,
        nh: IpAddr,
        how: &str,
        (ons, ol): (NsIdx, usize),
    ) -> Option<String> {
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
                    "{how}{} {}/{}{}",
                    Family::of(nh).solicitation(),
                    self.world.ns[ons].label(),
                    self.world.ns[ons].link_name(ol),
                    if family::proxies(&self.world.ns[ons], self.world.ns[ons].link_name(ol), nh)
                        .is_some()
                    {
                        " (proxy NDP entry, proxy_ndp on)"
                    } else {
                        ""
                    }
                ),
            },
        );
        mac
    }

    /// Breadth-first search over the L2 segment behind `link` (veth peers and bridges, not
    /// tunnels) for an interface satisfying `pred`.
    pub(super) fn segment_owner(
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

    /// A frame leaves `link`: `Ok(None)` when `st` itself continues (updated in place),
    /// `Ok(Some(states))` when it forks.
    pub(super) fn frame_out(
        &self,
        st: &mut St,
        ns: NsIdx,
        link: usize,
        mac: Option<String>,
        nh: IpAddr,
    ) -> Result<Option<Vec<St>>, End> {
        let v = &self.world.ns[ns];
        let l = self.up_link(ns, link, "")?;
        match &l.kind {
            LinkKind::Veth { .. } => {
                let Some((pns, pl)) = v.peer.get(link).copied().flatten() else {
                    return Err(self.exits(
                        st,
                        ns,
                        link,
                        format!("the peer of veth {} (namespace not collected)", l.name),
                        mac,
                    ));
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
                    )
                    .by(self.world.ns[pns].link_obj(pl, format!("mtu {}", p.mtu)))
                    .by(v.link_obj(link, format!("sender, mtu {}", l.mtu))));
                }
                self.wire(st, ns, link, (pns, pl), mac);
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
            LinkKind::Vxlan { .. } => self.vxlan_encap(st, ns, link, l, mac),
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
                    Some(target) => {
                        self.wire(st, ns, link, target, mac);
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
                            )
                            .by_all(self.last_neighbour_obj(st, None)))
                        } else {
                            Err(self.exits(
                                st,
                                ns,
                                link,
                                format!("outside the cluster via {nh}"),
                                mac,
                            ))
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
                )
                .by(v.link_obj(link, format!("{kind} device (not modelled)"))))
            }
        }
    }

    /// The frame crosses the wire from `link` to interface `tl` of namespace `tn` (veth peer,
    /// physical device by MAC): received there anew, the skb's conntrack association and route
    /// dropped, the mark reset when it changes namespace (`skb_scrub_packet`).
    fn wire(
        &self,
        st: &mut St,
        ns: NsIdx,
        link: usize,
        (tn, tl): (NsIdx, usize),
        mac: Option<String>,
    ) {
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
    }

    pub(super) fn frame_in(
        &self,
        st: &mut St,
        ns: NsIdx,
        link: usize,
        mac: Option<String>,
    ) -> Result<(), End> {
        let v = &self.world.ns[ns];
        let l = self.up_link(ns, link, "")?;
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
            let is_vxlan = matches!(l.kind, LinkKind::Vxlan { .. });
            let by = if is_vxlan {
                self.stale_vtep_objs(st, &own)
            } else {
                self.last_neighbour_obj(st, Some(&own))
                    .into_iter()
                    .collect()
            };
            let (why, cause) = if is_vxlan {
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
            return Err(end(Disposition::Dropped, why, Some(cause)).by_all(by));
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
