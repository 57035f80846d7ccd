//! TCP data after the handshake. TCP always sets DF, and the segments of an established
//! connection are as large as the MSS both ends advertise allows: a path that carries the
//! SYN (60 bytes) may still drop every full-size segment ("connects, then stalls"). For a TCP
//! flow walked without an explicit size, a full-size segment is walked each way (request,
//! then response) on the paths whose handshake succeeded; where it fails, that path's branch
//! is replaced by the data segment's branch.
//!
//! The data segment is walked with the handshake's packet otherwise (same tuple, flags and
//! conntrack decisions: it follows the connection the SYN created); only its length differs.

use std::collections::BTreeMap;

use crate::object::KernelObject;
use crate::result::{Branch, DataSegment, Disposition, Hop, Leg, Step, TcpDataCheck};
use crate::world::NsIdx;

use super::Walker;
use super::state::{RouteSel, St};

/// Cause of a data segment a router could not forward (it sent ICMP frag-needed / Packet
/// Too Big to the sender): resolved by [`check`], never left in a trace.
pub(super) const FRAG_NEEDED: &str = "pmtu-frag-needed";

/// PMTU discovery rounds per direction (each finds a smaller MTU further along).
const PMTU_ROUNDS: usize = 4;

/// IP + TCP header bytes of a segment (no options): MSS = MTU − this.
fn headers(v6: bool) -> u32 {
    if v6 { 60 } else { 40 }
}

impl<'w, 'a> Walker<'w, 'a> {
    /// Record the MSS the socket of this leg advertises, from the first output route it
    /// uses (`tcp_advertise_mss` ← `dst_metric_advmss`: the route's MTU, else its device's,
    /// minus the headers). An outer VXLAN packet's route is not a socket's.
    pub(super) fn note_mss(&self, st: &mut St, ns: NsIdx, sel: RouteSel) {
        let i = usize::from(st.leg == Leg::Reply);
        if st.pkt.proto != 6 || !st.encap.is_empty() || st.mss[i].is_some() {
            return;
        }
        let mtu = sel
            .mtu
            .filter(|m| *m > 0)
            .or_else(|| self.world.ns[ns].snap.links.get(sel.dev).map(|l| l.mtu))
            .filter(|m| *m > 0);
        st.mss[i] = mtu.map(|m| m.saturating_sub(headers(st.pkt.dst.is_ipv6())));
    }
}

/// Walk full-size data segments for the successful handshakes in `branches` (with the MSS
/// pairs `mss` recorded by their walks; `entry_mtu` stands for the client's MTU when it is
/// outside the snapshot) and replace each path whose segment fails by the failing branch.
/// `walk(len, direction)` walks a segment of IP length `len` in `direction` (the other way:
/// an ACK).
pub(super) fn check(
    branches: &mut Vec<Branch>,
    mss: &[[Option<u32>; 2]],
    entry_mtu: Option<u32>,
    v6: bool,
    mut walk: impl FnMut(u32, Leg) -> Vec<super::Walked>,
) -> Vec<TcpDataCheck> {
    let hdr = headers(v6);
    let mut groups: BTreeMap<(u32, u32), Vec<usize>> = BTreeMap::new();
    for (i, b) in branches.iter().enumerate() {
        if !b.disposition.is_success() {
            continue;
        }
        let [c, s] = mss.get(i).copied().unwrap_or([None, None]);
        let c = c.or_else(|| entry_mtu.map(|m| m.saturating_sub(hdr)));
        let (Some(c), Some(s)) = (c.or(s), s.or(c)) else {
            continue;
        };
        groups.entry((c, s)).or_default().push(i);
    }
    let mut out = Vec::new();
    // The handshake's branches, for matching paths while `branches` is being replaced.
    let syn = branches.clone();
    let mut replaced = vec![false; branches.len()];
    for ((client_mss, server_mss), idxs) in groups {
        let len = client_mss.min(server_mss) + hdr;
        let mut ok = [true, true];
        let mut pmtu: Vec<String> = Vec::new();
        for (k, dir) in [Leg::Forward, Leg::Reply].into_iter().enumerate() {
            let mut seg = len;
            for round in 0..PMTU_ROUNDS {
                let failed: Vec<Branch> = walk(seg, dir)
                    .into_iter()
                    .map(|(d, _)| d)
                    .filter(|d| !d.disposition.is_success())
                    .collect();
                // Routers that sent frag-needed toward a sender their way back reaches.
                let shrink = failed
                    .iter()
                    .filter(|d| d.cause.as_deref() == Some(FRAG_NEEDED))
                    .filter(|d| idxs.iter().any(|&i| error_returns(d, &syn[i], dir)))
                    .filter_map(|d| link_mtu(d).map(|m| (m, d)))
                    .min_by_key(|(m, _)| *m);
                if let Some((m, d)) = shrink
                    && round + 1 < PMTU_ROUNDS
                    && m < seg
                {
                    pmtu.push(format!(
                        "{} segments: {}; it returns the way the handshake's {} went, so the sender lowers its segments to {m} bytes (PMTU discovery)",
                        if dir == Leg::Forward { "request" } else { "response" },
                        d.reason,
                        if dir == Leg::Forward { "reply" } else { "request" },
                    ));
                    seg = m;
                    continue;
                }
                for mut d in failed {
                    if d.cause.as_deref() == Some(FRAG_NEEDED) {
                        d.disposition = Disposition::Unknown;
                        d.reason = format!(
                            "{}; the handshake's packets do not pass that router the other way, and netray does not walk the error's own way back: if it arrives, the sender lowers its segments (PMTU discovery), if not (firewall, rp_filter, no route), the connection stalls after the handshake",
                            d.reason
                        );
                        d.cause = Some("pmtu-discovery".into());
                    }
                    for &i in &idxs {
                        if !same_path(&d, &syn[i]) {
                            continue;
                        }
                        ok[k] = false;
                        // A path whose request already fails keeps that (first) failure.
                        if replaced[i] {
                            continue;
                        }
                        let mut nb = d.clone();
                        nb.probability = syn[i].probability;
                        nb.data_segment = Some(DataSegment {
                            direction: dir,
                            len: seg,
                        });
                        branches[i] = nb;
                        replaced[i] = true;
                    }
                }
                break;
            }
        }
        let mut endpoints: Vec<String> = idxs
            .iter()
            .filter_map(|&i| syn[i].endpoint.clone())
            .collect();
        endpoints.sort();
        endpoints.dedup();
        out.push(TcpDataCheck {
            client_mss,
            server_mss,
            segment_len: len,
            endpoints,
            request_ok: ok[0],
            reply_ok: ok[1],
            pmtu,
        });
    }
    // Paths that forked after the point where their segment died now hold the same branch.
    let mut merged: Vec<Branch> = Vec::with_capacity(branches.len());
    for b in branches.drain(..) {
        match merged.iter_mut().find(|m| {
            m.data_segment.is_some()
                && m.data_segment == b.data_segment
                && m.hops == b.hops
                && m.decided_by == b.decided_by
        }) {
            Some(m) => m.probability += b.probability,
            None => merged.push(b),
        }
    }
    *branches = merged;
    out
}

/// Whether the data segment's branch `d` took the handshake branch `s`'s path up to where
/// it ended (the packets differ only in length).
fn same_path(d: &Branch, s: &Branch) -> bool {
    let Some((_, before_end)) = d.hops.split_last() else {
        return false;
    };
    before_end.len() <= s.hops.len() && before_end.iter().zip(&s.hops).all(|(a, b)| same_hop(a, b))
}

fn same_hop(a: &Hop, b: &Hop) -> bool {
    let (mut pa, mut pb) = (a.packet.clone(), b.packet.clone());
    pa.len = 0;
    pb.len = 0;
    let step = match (&a.step, &b.step) {
        // NAT steps quote the packet, length included.
        (Step::Nat { kind: x, .. }, Step::Nat { kind: y, .. }) => x == y,
        (x, y) => x == y,
    };
    a.leg == b.leg
        && a.node == b.node
        && a.netns == b.netns
        && a.iif == b.iif
        && a.oif == b.oif
        && pa == pb
        && step
}

/// Whether the ICMP error of the router where `d` ended can reach the segment's sender: the
/// handshake `s` passed that namespace in the other direction (the SYN-ACK for a request
/// segment, the SYN for a response segment), so a route back exists and conntrack relates
/// the error to the connection. An assumption, stated where it is used.
fn error_returns(d: &Branch, s: &Branch, dir: Leg) -> bool {
    let Some(at) = d.hops.last() else {
        return false;
    };
    let back = if dir == Leg::Forward {
        Leg::Reply
    } else {
        Leg::Forward
    };
    same_path(d, s)
        && s.hops
            .iter()
            .any(|h| h.leg == back && h.node == at.node && h.netns == at.netns)
}

/// The MTU of the link that decided `d`.
fn link_mtu(d: &Branch) -> Option<u32> {
    d.decided_by.iter().find_map(|o| match o {
        KernelObject::Link { mtu: Some(m), .. } => Some(*m),
        _ => None,
    })
}
