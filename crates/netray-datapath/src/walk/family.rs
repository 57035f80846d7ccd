//! What differs between IPv4 and IPv6 in the kernel's datapath, in one place: the receive
//! path's martian checks (`ip_route_input_slow` / `ip6_rcv_core`), who decides forwarding
//! (`ip_forward` / `ip6_forward`), the forwarded-source checks of `ip6_forward`, reverse-path
//! filtering (an IPv4 sysctl only), fragmentation in transit, and neighbour resolution (ARP
//! with the weak host model / NDP answered only for the receiving interface's addresses,
//! `proxy_ndp`).
//!
//! IPv6 forwarding, as measured on Linux 6.18 with real packets (see `crates/netray/tests/
//! ipv6_lab.rs`): only `net.ipv6.conf.all.forwarding` decides; an interface's own
//! `forwarding` (input or output) changes nothing for forwarding, and writing `all` rewrites
//! every interface's. `net.ipv6.conf.IFACE.force_forwarding` (kernels ≥ 6.17) on the input
//! interface forwards even with `all` off. An interface's `forwarding` does matter for proxy
//! NDP: the receiving interface answers for a proxy entry only when its own `forwarding` and
//! `proxy_ndp` (its own or `all`) are on.

use std::net::{IpAddr, Ipv6Addr};

use netray_snapshot::Neighbour;

use crate::result::Disposition;
use crate::world::{NsIdx, NsView, World};

use super::state::{End, end, sysctl_or};

/// An address family and the kernel behaviour that goes with it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Family {
    V4,
    V6,
}

/// The sysctl that switches IPv6 forwarding for the whole namespace.
const V6_ALL_FORWARDING: &str = "net.ipv6.conf.all.forwarding";

impl Family {
    pub(super) fn of(ip: IpAddr) -> Family {
        if ip.is_ipv4() { Family::V4 } else { Family::V6 }
    }

    /// How the neighbour's link-layer address is asked for, for hop texts.
    pub(super) fn solicitation(self) -> &'static str {
        match self {
            Family::V4 => "ARP is answered by",
            Family::V6 => "NDP neighbour solicitation is answered by",
        }
    }

    /// The sysctl that makes br_netfilter pass this family's bridged packets through the IP
    /// hooks (`bridge-nf-call-iptables` / `bridge-nf-call-ip6tables`).
    pub(super) fn br_nf_sysctl(self) -> &'static str {
        match self {
            Family::V4 => "net.bridge.bridge-nf-call-iptables",
            Family::V6 => "net.bridge.bridge-nf-call-ip6tables",
        }
    }

    /// Whether `fib_validate_source` (local source from outside, `rp_filter`) runs on input.
    /// IPv6 has no such sysctl: reverse-path filtering there is `-m rpfilter` / `fib saddr`.
    pub(super) fn validates_source(self) -> bool {
        self == Family::V4
    }

    /// Whether a forwarded packet larger than the egress MTU is dropped whatever its DF bit
    /// (IPv6 routers never fragment: ICMPv6 Packet Too Big goes back to the source).
    pub(super) fn no_transit_fragmentation(self) -> bool {
        self == Family::V6
    }

    /// The smallest MTU the family allows (`ip6_forward` raises a smaller route MTU to it).
    pub(super) fn min_mtu(self) -> u32 {
        match self {
            Family::V4 => 68,
            Family::V6 => 1280,
        }
    }

    /// Whether this family is off on input link `link` of `v` (`ip6_rcv_core` drops before
    /// PREROUTING when the device has no IPv6 state): `disable_ipv6 = 1` on the device, or
    /// an MTU below IPv6's minimum, at which the kernel removes the device's IPv6 state
    /// (measured on Linux 6.18: addresses and routes gone, `ip -6 addr add` refused).
    pub(super) fn off_on(self, v: &NsView<'_>, link: usize) -> Option<End> {
        if self != Family::V6 {
            return None;
        }
        let l = v.snap.links.get(link)?;
        if l.kind == netray_snapshot::LinkKind::Loopback {
            return None;
        }
        let key = format!("net.ipv6.conf.{}.disable_ipv6", l.name.replace('.', "/"));
        if v.sysctl_int(&key) == Some(1) {
            return Some(
                end(
                    Disposition::Dropped,
                    format!(
                        "IPv6 is disabled on {} ({key} = 1): received IPv6 packets are dropped",
                        l.name
                    ),
                    Some("ipv6-disabled"),
                )
                .by(v.sysctl_obj(&key)),
            );
        }
        if l.mtu < self.min_mtu() {
            return Some(
                end(
                    Disposition::Dropped,
                    format!(
                        "{} has MTU {}, below IPv6's minimum of {}: the kernel turned IPv6 off on it, \
                         received IPv6 packets are dropped",
                        l.name,
                        l.mtu,
                        self.min_mtu()
                    ),
                    Some("ipv6-mtu-below-minimum"),
                )
                .by(v.link_obj(link, format!("mtu {}", l.mtu))),
            );
        }
        None
    }

    /// Whether `ip` may be looked up across the whole bundle as a next hop's owner (a link-local
    /// address means something only on its own link).
    pub(super) fn owner_is_global(self, ip: IpAddr) -> bool {
        match (self, ip) {
            (Family::V6, IpAddr::V6(a)) => !is_link_local(a),
            _ => true,
        }
    }

    /// Martian source or destination of a packet received from outside on `iname`
    /// (`ip_route_input_slow` / `ip6_rcv_core`).
    pub(super) fn input_martian(
        self,
        v: &NsView<'_>,
        iname: &str,
        src: IpAddr,
        dst: IpAddr,
    ) -> Option<End> {
        let martian =
            |why: String| Some(end(Disposition::MartianSource, why, Some("martian-source")));
        match (src, dst) {
            (IpAddr::V4(s), IpAddr::V4(d)) => {
                let conf = |k: &str| {
                    sysctl_or(v, &format!("net.ipv4.conf.all.{k}"), 0) != 0
                        || sysctl_or(v, &format!("net.ipv4.conf.{iname}.{k}"), 0) != 0
                };
                if s.is_multicast() || s.is_broadcast() || s.octets()[0] == 0 {
                    return martian(format!(
                        "martian source {s} on {iname} (multicast, broadcast or 0.0.0.0/8)"
                    ));
                }
                if d.octets()[0] == 0 {
                    return martian(format!("martian destination {d} on {iname}"));
                }
                if (s.is_loopback() || d.is_loopback()) && !conf("route_localnet") {
                    return martian(format!(
                        "127.0.0.0/8 address ({s} > {d}) received on {iname} and route_localnet is 0"
                    ));
                }
                None
            }
            (IpAddr::V6(s), IpAddr::V6(d)) => {
                if s.is_multicast() {
                    return martian(format!(
                        "IPv6 multicast source {s} on {iname} (RFC 4291 2.7: dropped by ip6_rcv_core)"
                    ));
                }
                if s.is_loopback() || d.is_loopback() {
                    return martian(format!(
                        "IPv6 loopback address ({s} > {d}) received on {iname} from outside (dropped by ip6_rcv_core)"
                    ));
                }
                // Multicast with reserved (0) or interface-local (1) scope from another node.
                if d.is_multicast() && (d.segments()[0] & 0x000f) <= 1 {
                    return martian(format!(
                        "IPv6 multicast destination {d} of scope {} received on {iname} (dropped by ip6_rcv_core)",
                        d.segments()[0] & 0x000f
                    ));
                }
                None
            }
            _ => None,
        }
    }

    /// Whether a packet received on `iname` and routed to another host may be forwarded:
    /// `Err` ends the branch with the sysctl that decided.
    pub(super) fn forwarding(self, v: &NsView<'_>, iname: &str) -> Result<(), End> {
        match self {
            Family::V4 => forwarding_v4(v, iname),
            Family::V6 => forwarding_v6(v, iname),
        }
    }

    /// `ip6_forward`'s checks of the source of a packet leaving by another interface than it
    /// came in on (`iname` → `oname`): unspecified, multicast and loopback sources are dropped,
    /// a link-local source gets ICMPv6 destination unreachable (beyond scope). IPv4: none.
    pub(super) fn forward_source(
        self,
        v: &NsView<'_>,
        iname: &str,
        oname: &str,
        src: IpAddr,
    ) -> Result<(), End> {
        let IpAddr::V6(s) = src else {
            return Ok(());
        };
        if self != Family::V6 || iname == oname {
            return Ok(());
        }
        if s.is_unspecified() || s.is_multicast() || s.is_loopback() {
            return Err(end(
                Disposition::MartianSource,
                format!(
                    "IPv6 source {s} may not be forwarded (ip6_forward drops unspecified, multicast and loopback sources) in {}",
                    v.label()
                ),
                Some("martian-source"),
            ));
        }
        if is_link_local(s) {
            return Err(end(
                Disposition::MartianSource,
                format!(
                    "link-local source {s} arrived on {iname} and would leave by {oname} in {}: link-local addresses are not routed off-link (ICMPv6 destination unreachable, beyond scope of source address)",
                    v.label()
                ),
                Some("martian-source"),
            ));
        }
        Ok(())
    }

    /// Would interface `i` of namespace `n` answer the neighbour solicitation for `ip` (ARP
    /// request / NDP neighbour solicitation received on it)?
    ///
    /// IPv4 answers for any local address on any interface (weak host model) unless
    /// `arp_ignore` >= 1 requires it on the receiving interface. IPv6 answers only for
    /// addresses of the receiving interface (`ndisc_recv_ns`), or for a proxy entry
    /// (`ip -6 neigh add proxy IP dev IFACE`) when that interface forwards and `proxy_ndp` is
    /// on (its own or `all`).
    pub(super) fn answers_neighbour(self, w: &World<'_>, n: NsIdx, i: usize, ip: IpAddr) -> bool {
        let v = &w.ns[n];
        let name = v.link_name(i);
        let noarp = v
            .snap
            .links
            .get(i)
            .is_some_and(|l| l.flags.iter().any(|f| f == "NOARP"));
        match self {
            Family::V4 => {
                let Some(owner) = v.owns(ip) else {
                    return false;
                };
                let ignore = sysctl_or(v, "net.ipv4.conf.all.arp_ignore", 0).max(sysctl_or(
                    v,
                    &format!("net.ipv4.conf.{name}.arp_ignore"),
                    0,
                ));
                owner == i || (ignore == 0 && !noarp)
            }
            Family::V6 => {
                if noarp {
                    return false;
                }
                let on_iface = v
                    .snap
                    .addresses
                    .iter()
                    .any(|a| a.dev == name && a.addr.addr() == ip);
                on_iface || proxies(v, name, ip).is_some()
            }
        }
    }
}

/// The proxy NDP entry of `name` for `ip` that the kernel would answer with: the entry must
/// be collected, and the interface must forward with `proxy_ndp` on.
pub(super) fn proxies<'a>(v: &NsView<'a>, name: &str, ip: IpAddr) -> Option<&'a Neighbour> {
    let entry = v
        .snap
        .neighbours
        .iter()
        .find(|e| e.dev == name && e.dst == ip && e.flags.iter().any(|f| f == "proxy"))?;
    let fwd = sysctl_or(v, &format!("net.ipv6.conf.{name}.forwarding"), 0) != 0;
    let proxy = sysctl_or(v, "net.ipv6.conf.all.proxy_ndp", 0) != 0
        || sysctl_or(v, &format!("net.ipv6.conf.{name}.proxy_ndp"), 0) != 0;
    (fwd && proxy).then_some(entry)
}

/// `fe80::/10`.
pub(super) fn is_link_local(a: Ipv6Addr) -> bool {
    (a.segments()[0] & 0xffc0) == 0xfe80
}

/// IPv4: the first of `conf.IFACE.forwarding`, `ip_forward`, `conf.all.forwarding` that was
/// collected decides (writing `ip_forward` sets every interface's switch).
fn forwarding_v4(v: &NsView<'_>, iname: &str) -> Result<(), End> {
    let keys = [
        format!("net.ipv4.conf.{iname}.forwarding"),
        "net.ipv4.ip_forward".to_string(),
        "net.ipv4.conf.all.forwarding".to_string(),
    ];
    let deciding = keys.iter().find(|k| v.snap.sysctl(k).is_some());
    if let Some(k) = deciding {
        unparsable(v, k, iname)?;
    }
    let fwd = deciding.and_then(|k| v.sysctl_int(k)).unwrap_or(0);
    if fwd != 0 {
        return Ok(());
    }
    let key = deciding.cloned().unwrap_or_else(|| keys[1].clone());
    let mut e = end(
        Disposition::ForwardingDisabled,
        format!(
            "forwarding is disabled on {iname} in {} ({key} = {})",
            v.label(),
            if deciding.is_some() {
                "0"
            } else {
                "not collected, kernel default 0"
            }
        ),
        Some("ip-forward-disabled"),
    )
    .by(v.sysctl_obj(&key));
    // `sysctl -w net.ipv4.ip_forward=1` resets every interface's switch; an interface switched
    // off on its own is named too.
    if key != keys[1] && v.snap.sysctl(&keys[1]).is_some() {
        e = e.by(v.sysctl_obj(&keys[1]));
    }
    Err(e)
}

/// IPv6 (`ip6_forward`): `conf.all.forwarding` alone, unless the input interface has
/// `force_forwarding`; the interface's own `forwarding` is quoted but does not decide.
fn forwarding_v6(v: &NsView<'_>, iname: &str) -> Result<(), End> {
    let force = format!("net.ipv6.conf.{iname}.force_forwarding");
    if v.sysctl_int(&force).unwrap_or(0) != 0 {
        return Ok(());
    }
    if v.snap.sysctl(V6_ALL_FORWARDING).is_some() {
        unparsable(v, V6_ALL_FORWARDING, iname)?;
    }
    let all = v.sysctl_int(V6_ALL_FORWARDING);
    if all.unwrap_or(0) != 0 {
        return Ok(());
    }
    let ifk = format!("net.ipv6.conf.{iname}.forwarding");
    let note = match v.sysctl_int(&ifk) {
        Some(x) if x != 0 => format!(
            "; {ifk} = {x} does not forward: the kernel decides IPv6 forwarding by `all` (or the input interface's force_forwarding)"
        ),
        _ => String::new(),
    };
    Err(end(
        Disposition::ForwardingDisabled,
        format!(
            "IPv6 forwarding is disabled in {} ({V6_ALL_FORWARDING} = {}){note}",
            v.label(),
            if all.is_some() {
                "0"
            } else {
                "not collected, kernel default 0"
            }
        ),
        Some("ip-forward-disabled"),
    )
    .by(v.sysctl_obj(V6_ALL_FORWARDING)))
}

/// A deciding sysctl that is not a number: whether `iname` forwards is unknown.
fn unparsable(v: &NsView<'_>, k: &str, iname: &str) -> Result<(), End> {
    match v.sysctl_unparsable(k) {
        Some(raw) => Err(end(
            Disposition::Unknown,
            format!(
                "{k} in {} is `{}`, not a number: whether {iname} forwards is unknown",
                v.label(),
                netray_snapshot::text::clip(raw, 80)
            ),
            Some("uncertain-rule"),
        )
        .by(v.sysctl_obj(k))),
        None => Ok(()),
    }
}
