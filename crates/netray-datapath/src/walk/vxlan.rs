//! VXLAN: encapsulation when a frame leaves a VXLAN device (`vxlan_xmit`: FDB lookup, outer
//! UDP to the remote VTEP through the underlay namespace) and decapsulation when such a UDP
//! packet is delivered locally (`vxlan_rcv`: matching VNI and port, then the inner frame).

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use netray_snapshot::LinkKind;

use crate::result::{Disposition, Step};
use crate::world::NsIdx;

use super::Walker;
use super::state::{End, Inner, Next, Pkt, Pos, St, end, mac_eq};

impl<'w, 'a> Walker<'w, 'a> {
    /// VXLAN transmit (`vxlan_xmit`): inner MAC → FDB entry (exact, else the all-zero
    /// default: one branch per remote) → outer UDP to the VTEP, routed from the underlay
    /// namespace like a locally generated packet.
    pub(super) fn vxlan_encap(
        &self,
        st: &St,
        ns: NsIdx,
        link: usize,
        l: &netray_snapshot::Link,
        mac: Option<String>,
    ) -> Result<Option<Vec<St>>, End> {
        let v = &self.world.ns[ns];
        let LinkKind::Vxlan {
            vni,
            port,
            local,
            dev,
            ..
        } = &l.kind
        else {
            return Err(end(
                Disposition::Unknown,
                "internal: not a VXLAN device",
                None,
            ));
        };
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
                .filter(|e| e.dev == l.name && e.mac == "00:00:00:00:00:00" && e.dst.is_some())
                .collect()
        } else {
            exact
        };
        if entries.is_empty() {
            // The FDB entry the frame needed, and the neighbour entry that chose its MAC.
            let expected_dst = self.vtep_of_mac(&m);
            return Err(end(
                Disposition::Dropped,
                format!(
                    "{} in {} has no FDB entry for inner MAC {m} (bridge fdb show dev {})",
                    l.name,
                    v.label(),
                    l.name
                ),
                Some("missing-vxlan-fdb"),
            )
            .by(crate::KernelObject::Fdb {
                at: v.place(),
                dev: l.name.clone(),
                mac: m.clone(),
                dst: expected_dst,
                present: false,
            })
            .by_all(self.last_neighbour_obj(st, None)));
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
            let fdb_text = format!("{} dev {} dst {remote} {}", e.mac, e.dev, e.state.join(" "));
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

    /// VXLAN receive (`vxlan_rcv`): a UDP packet delivered locally that carries a frame is
    /// decapsulated by the device matching its VNI and port; the inner frame arrives on it.
    pub(super) fn vxlan_decap(&self, mut st: St, ns: NsIdx, inner: Inner) -> Next {
        let v = &self.world.ns[ns];
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
                Next::Go(st)
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
                Next::Stop(st, end(Disposition::Dropped, why, Some("vxlan-mismatch")))
            }
        }
    }
}

impl Walker<'_, '_> {
    /// The underlay address of the VTEP whose device has MAC `mac` (its `local`), if collected.
    pub(super) fn vtep_of_mac(&self, mac: &str) -> Option<IpAddr> {
        self.world.mac_owners(mac).iter().find_map(|&(n, i)| {
            match self.world.ns[n].snap.links.get(i).map(|l| &l.kind) {
                Some(LinkKind::Vxlan { local, .. }) => *local,
                _ => None,
            }
        })
    }

    /// The neighbour entry of the last resolution on this branch (a VXLAN next hop), with the
    /// MAC it should hold: `expected` when given, else the MAC of the device owning the
    /// address.
    pub(super) fn last_neighbour_obj(
        &self,
        st: &St,
        expected: Option<&str>,
    ) -> Option<crate::KernelObject> {
        self.neighbour_obj_before(st, st.hops.len(), expected)
    }

    /// Same as [`Self::last_neighbour_obj`], among the hops before `upto`.
    pub(super) fn neighbour_obj_before(
        &self,
        st: &St,
        upto: usize,
        expected: Option<&str>,
    ) -> Option<crate::KernelObject> {
        let h = st.hops[..upto.min(st.hops.len())]
            .iter()
            .rev()
            .find(|h| matches!(h.step, Step::Neighbour { .. }))?;
        let Step::Neighbour {
            addr,
            lladdr,
            state,
        } = &h.step
        else {
            return None;
        };
        let owner_mac = || {
            self.world.owners_of(*addr).iter().find_map(|&(n, i)| {
                self.world.ns[n]
                    .snap
                    .links
                    .get(i)
                    .and_then(|l| l.mac.clone())
            })
        };
        Some(crate::KernelObject::Neighbour {
            at: crate::Place {
                node: h.node.clone(),
                netns: h.netns.clone(),
            },
            dev: h.oif.clone().unwrap_or_default(),
            addr: *addr,
            lladdr: lladdr.clone(),
            state: state.split(' ').next().unwrap_or("").to_string(),
            expected_lladdr: expected.map(str::to_string).or_else(owner_mac),
        })
    }

    /// The sender's objects behind a VXLAN frame whose inner MAC the receiving device
    /// (`own_mac`) does not have: the neighbour entry that chose the MAC and the FDB entry
    /// that sent it to this VTEP.
    pub(super) fn stale_vtep_objs(&self, st: &St, own_mac: &str) -> Vec<crate::KernelObject> {
        let Some(enc_at) = st
            .hops
            .iter()
            .rposition(|h| matches!(h.step, Step::Encap { .. }))
        else {
            return Vec::new();
        };
        let enc = &st.hops[enc_at];
        let Step::Encap {
            dev,
            inner_dst_mac,
            remote,
            ..
        } = &enc.step
        else {
            return Vec::new();
        };
        let at = crate::Place {
            node: enc.node.clone(),
            netns: enc.netns.clone(),
        };
        let mut out: Vec<crate::KernelObject> = self
            .neighbour_obj_before(st, enc_at, Some(own_mac))
            .into_iter()
            .collect();
        out.push(crate::KernelObject::Fdb {
            at,
            dev: dev.clone(),
            mac: inner_dst_mac.clone(),
            dst: Some(*remote),
            present: true,
        });
        out
    }
}

fn exact_is_default(e: &netray_snapshot::FdbEntry) -> bool {
    e.mac == "00:00:00:00:00:00"
}
