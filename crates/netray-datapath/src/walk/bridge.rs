//! Bridges (`br_handle_frame`, `br_forward`): whether br_netfilter runs the IP hooks, frames
//! for the bridge itself (local FDB entries), and forwarding by FDB or flooding with port MTU
//! and hairpin checks. The bridge's steps (`Pos::BrIn` ... `Pos::BrPost`) are in the step loop.

use netray_snapshot::LinkKind;

use crate::result::{Disposition, Step};
use crate::world::NsIdx;

use super::Walker;
use super::family::Family;
use super::state::{End, St, end, mac_eq, sysctl_or};

impl<'w, 'a> Walker<'w, 'a> {
    /// br_netfilter runs the IP hooks for a bridged packet when the namespace's
    /// `net.bridge.bridge-nf-call-iptables` (IPv4) / `bridge-nf-call-ip6tables` (IPv6) or the
    /// bridge's own `nf_call_iptables` / `nf_call_ip6tables` is set.
    pub(super) fn br_nf(&self, ns: NsIdx, br: usize, v4: bool) -> bool {
        let v = &self.world.ns[ns];
        let fam = if v4 { Family::V4 } else { Family::V6 };
        let per_bridge = match self.link(ns, br).map(|l| &l.kind) {
            Some(LinkKind::Bridge {
                nf_call_iptables,
                nf_call_ip6tables,
                ..
            }) => {
                if v4 {
                    *nf_call_iptables
                } else {
                    *nf_call_ip6tables
                }
            }
            _ => false,
        };
        per_bridge || sysctl_or(v, fam.br_nf_sysctl(), 0) == 1
    }

    pub(super) fn is_local_mac(&self, ns: NsIdx, br: usize, mac: &str) -> bool {
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
    pub(super) fn bridge_ports(
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
                )
                .by(v.link_obj(p, format!("mtu {}", pl.mtu)))
                .by_all(in_port.map(|i| v.link_obj(i, "ingress port")))
                .by_all(in_port.is_none().then(|| v.link_obj(br, "routed out through the bridge"))));
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
                    )
                    .by(v.link_obj(p, "hairpin off")));
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
}
