//! Kernel routing tables over rtnetlink: links, addresses, routes, rules, neighbours, FDB,
//! and namespace ids.
//!
//! Requests and replies are `netlink-packet-route` messages sent over [`Conn`]; this module
//! maps them to the snapshot model, spelling values the way `ip` / `bridge` print them. A
//! message the crate cannot decode, or one that references something unknown, becomes a
//! problem string (a `not_collected` entry), never a panic.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;

use ipnet::IpNet;
use netlink_packet_route::address::{AddressAttribute, AddressMessage};
use netlink_packet_route::link::{
    AfSpecBridge, InfoBridge, InfoBridgePort, InfoData, InfoGre, InfoGre6, InfoIpTunnel,
    InfoMacVlan, InfoMacVtap, InfoPortData, InfoVlan, InfoVti, InfoVxlan, LinkAttribute,
    LinkExtentMask, LinkInfo, LinkMessage, LinkXdp, XdpAttached,
};
use netlink_packet_route::neighbour::{
    NeighbourAddress, NeighbourAttribute, NeighbourFlags, NeighbourMessage,
};
use netlink_packet_route::nsid::{NsidAttribute, NsidMessage};
use netlink_packet_route::route::{RouteAddress, RouteAttribute, RouteMessage, RouteMetric};
use netlink_packet_route::rule::{RuleAttribute, RuleMessage};
use netlink_packet_route::{AddressFamily, RouteNetlinkMessage};
use netray_snapshot::{
    Address, BridgePort, FdbEntry, Link, LinkKind, Neighbour, NextHop, PortVlan, Route, RouteType,
    Rule, RuleAction,
};

use crate::nl::{Conn, Event};

const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;

/// A link as dumped, with the raw references resolved later (names, namespaces).
pub struct RawLink {
    /// The snapshot link (kind data may lack names resolved from ifindexes).
    pub link: Link,
    /// `IFLA_LINK`: peer/parent ifindex.
    pub iflink: Option<u32>,
    /// `IFLA_LINK_NETNSID`: namespace id of `iflink` as seen from this namespace.
    pub link_netnsid: Option<i32>,
    /// `IFLA_MASTER`.
    pub master_index: Option<u32>,
    /// vxlan `IFLA_VXLAN_LINK`.
    pub vxlan_dev: Option<u32>,
    /// `IFLA_XDP`: attach mode (`IFLA_XDP_ATTACHED`, 0 = none) and program id.
    pub xdp: Option<(u8, Option<u32>)>,
}

fn family(fam: u8) -> AddressFamily {
    if fam == AF_INET6 {
        AddressFamily::Inet6
    } else {
        AddressFamily::Inet
    }
}

fn bad(what: &str, e: impl std::fmt::Display) -> String {
    format!("a {what} message could not be decoded: {e}")
}

/// Dump every link with kind data, resolving master/parent names within the namespace.
pub fn links(sock: &mut Conn, problems: &mut Vec<String>) -> io::Result<Vec<RawLink>> {
    let mut out: Vec<RawLink> = Vec::new();
    let req = RouteNetlinkMessage::GetLink(LinkMessage::default());
    sock.dump(req, &mut |ev| match ev {
        Event::Restart => {}
        Event::Msg(RouteNetlinkMessage::NewLink(m)) => out.push(parse_link(m)),
        Event::Msg(_) => {}
        Event::Bad(e) => problems.push(bad("link", e)),
    })?;
    // Restarts may duplicate: keep the last message per ifindex.
    let mut seen = HashMap::new();
    for (i, l) in out.iter().enumerate() {
        seen.insert(l.link.ifindex, i);
    }
    let mut keep: Vec<usize> = seen.into_values().collect();
    keep.sort_unstable();
    let mut out: Vec<RawLink> = keep.into_iter().rev().map(|i| out.swap_remove(i)).collect();
    out.sort_by_key(|l| l.link.ifindex);

    let names: HashMap<u32, String> = out
        .iter()
        .map(|l| (l.link.ifindex, l.link.name.clone()))
        .collect();
    for l in &mut out {
        if let Some(m) = l.master_index {
            l.link.master = names.get(&m).cloned();
        }
        let local_parent = if l.link_netnsid.is_none() {
            l.iflink
                .filter(|&i| i != l.link.ifindex)
                .and_then(|i| names.get(&i).cloned())
        } else {
            None
        };
        match &mut l.link.kind {
            LinkKind::Vxlan { dev, .. } => *dev = l.vxlan_dev.and_then(|i| names.get(&i).cloned()),
            LinkKind::Vlan { parent, .. }
            | LinkKind::Macvlan { parent, .. }
            | LinkKind::Ipvlan { parent } => *parent = local_parent,
            _ => {}
        }
    }
    Ok(out)
}

fn nonzero_ip(a: IpAddr) -> Option<IpAddr> {
    (!a.is_unspecified()).then_some(a)
}

/// Tunnel endpoints (local, remote) from the kind data of ipip/sit/ip6tnl, gre*, erspan*,
/// vti*.
fn tunnel_ends(d: Option<&InfoData>) -> (Option<IpAddr>, Option<IpAddr>) {
    let (mut local, mut remote) = (None, None);
    match d {
        Some(InfoData::IpTunnel(v)) => {
            for a in v {
                match a {
                    InfoIpTunnel::Local(x) => local = nonzero_ip(*x),
                    InfoIpTunnel::Remote(x) => remote = nonzero_ip(*x),
                    _ => {}
                }
            }
        }
        Some(InfoData::GreTun(v) | InfoData::GreTap(v) | InfoData::ErSpan(v)) => {
            for a in v {
                match a {
                    InfoGre::Local(x) => local = nonzero_ip((*x).into()),
                    InfoGre::Remote(x) => remote = nonzero_ip((*x).into()),
                    _ => {}
                }
            }
        }
        Some(InfoData::GreTun6(v) | InfoData::GreTap6(v) | InfoData::Ip6ErSpan(v)) => {
            for a in v {
                match a {
                    InfoGre6::Local(x) => local = nonzero_ip((*x).into()),
                    InfoGre6::Remote(x) => remote = nonzero_ip((*x).into()),
                    _ => {}
                }
            }
        }
        Some(InfoData::Vti(v)) => {
            for a in v {
                match a {
                    InfoVti::Local(x) => local = nonzero_ip(*x),
                    InfoVti::Remote(x) => remote = nonzero_ip(*x),
                    _ => {}
                }
            }
        }
        _ => {}
    }
    (local, remote)
}

fn parse_link(m: LinkMessage) -> RawLink {
    let ifindex = m.header.index;
    let flags = m.header.flags.bits();
    let mut name = String::new();
    let mut mtu = 0;
    let mut addr = None;
    let mut operstate = 0u8;
    let mut master_index = None;
    let mut iflink = None;
    let mut link_netnsid = None;
    let mut group = 0;
    let mut kind_name: Option<String> = None;
    let mut info_data: Option<InfoData> = None;
    let mut slave_kind: Option<String> = None;
    let mut slave_data: Option<InfoPortData> = None;
    let mut xdp: Option<(u8, Option<u32>)> = None;
    let mut stats = None;
    for a in m.attributes {
        match a {
            LinkAttribute::Stats64(v) => {
                stats = Some(netray_snapshot::LinkStats {
                    rx_packets: v.rx_packets,
                    tx_packets: v.tx_packets,
                    rx_dropped: v.rx_dropped,
                    tx_dropped: v.tx_dropped,
                    rx_errors: v.rx_errors,
                    tx_errors: v.tx_errors,
                })
            }
            LinkAttribute::Xdp(x) => {
                let (mut mode, mut id) = (0u8, None);
                for i in x {
                    match i {
                        LinkXdp::Attached(a) => {
                            mode = match a {
                                XdpAttached::None => 0,
                                XdpAttached::Driver => 1,
                                XdpAttached::SocketBuffer => 2,
                                XdpAttached::Hardware => 3,
                                XdpAttached::Multiple => 4,
                                XdpAttached::Other(x) => x,
                                _ => 255,
                            }
                        }
                        LinkXdp::ProgId(p) => id = Some(p),
                        _ => {}
                    }
                }
                xdp = Some((mode, id));
            }
            LinkAttribute::Address(v) => addr = Some(v),
            LinkAttribute::IfName(v) => name = v,
            LinkAttribute::Mtu(v) => mtu = v,
            LinkAttribute::Link(v) => iflink = Some(v),
            LinkAttribute::Controller(v) => master_index = Some(v).filter(|&m| m != 0),
            LinkAttribute::OperState(v) => operstate = v.into(),
            LinkAttribute::Group(v) => group = v,
            LinkAttribute::LinkNetNsId(v) => link_netnsid = Some(v),
            LinkAttribute::LinkInfo(infos) => {
                for i in infos {
                    match i {
                        LinkInfo::Kind(k) => kind_name = Some(k.to_string()),
                        LinkInfo::Data(d) => info_data = Some(d),
                        LinkInfo::PortKind(k) => slave_kind = Some(k.to_string()),
                        LinkInfo::PortData(d) => slave_data = Some(d),
                        _ => {}
                    }
                }
            }
            _ => {}
        }
    }
    let mut vxlan_dev = None;
    let kind = match kind_name.as_deref() {
        None if flags & libc::IFF_LOOPBACK as u32 != 0 => LinkKind::Loopback,
        None => LinkKind::Device,
        Some("veth") => LinkKind::Veth {
            peer_ifindex: iflink.filter(|&i| i != 0),
            peer_netns: None,
        },
        Some("bridge") => {
            let (mut vf, mut stp, mut pvid) = (false, 0, None);
            let (mut nf4, mut nf6, mut nfarp) = (false, false, false);
            if let Some(InfoData::Bridge(v)) = &info_data {
                for a in v {
                    match a {
                        InfoBridge::StpState(x) => stp = u32::from(*x),
                        InfoBridge::VlanFiltering(x) => vf = *x,
                        InfoBridge::NfCallIpTables(x) => nf4 = *x,
                        InfoBridge::NfCallIp6Tables(x) => nf6 = *x,
                        InfoBridge::NfCallArpTables(x) => nfarp = *x,
                        InfoBridge::VlanDefaultPvid(x) => pvid = Some(*x),
                        _ => {}
                    }
                }
            }
            LinkKind::Bridge {
                vlan_filtering: vf,
                stp_state: stp,
                default_pvid: pvid,
                nf_call_iptables: nf4,
                nf_call_ip6tables: nf6,
                nf_call_arptables: nfarp,
            }
        }
        Some("vxlan") => {
            let (mut vni, mut port, mut local, mut group, mut learning) = (0, 0, None, None, true);
            if let Some(InfoData::Vxlan(v)) = &info_data {
                for a in v {
                    match a {
                        InfoVxlan::Id(x) => vni = *x,
                        InfoVxlan::Group(x) => group = Some(IpAddr::V4(*x)),
                        InfoVxlan::Group6(x) => group = Some(IpAddr::V6(*x)),
                        InfoVxlan::Link(x) => vxlan_dev = Some(*x).filter(|&i| i != 0),
                        InfoVxlan::Local(x) => local = Some(IpAddr::V4(*x)),
                        InfoVxlan::Local6(x) => local = Some(IpAddr::V6(*x)),
                        InfoVxlan::Learning(x) => learning = *x,
                        InfoVxlan::Port(x) => port = *x,
                        _ => {}
                    }
                }
            }
            LinkKind::Vxlan {
                vni,
                port,
                local,
                group,
                dev: None,
                learning,
            }
        }
        Some("vlan") => {
            let mut id = 0;
            if let Some(InfoData::Vlan(v)) = &info_data {
                for a in v {
                    if let InfoVlan::Id(x) = a {
                        id = *x;
                    }
                }
            }
            LinkKind::Vlan { id, parent: None }
        }
        Some(k @ ("macvlan" | "macvtap")) => {
            let mut mode = 0u32;
            match &info_data {
                Some(InfoData::MacVlan(v)) => {
                    for a in v {
                        if let InfoMacVlan::Mode(x) = a {
                            mode = u32::from(*x);
                        }
                    }
                }
                Some(InfoData::MacVtap(v)) => {
                    for a in v {
                        if let InfoMacVtap::Mode(x) = a {
                            mode = u32::from(*x);
                        }
                    }
                }
                _ => {}
            }
            let mode = match mode {
                1 => "private".to_string(),
                2 => "vepa".to_string(),
                4 => "bridge".to_string(),
                8 => "passthru".to_string(),
                16 => "source".to_string(),
                m => format!("{k}-mode-{m}"),
            };
            LinkKind::Macvlan { mode, parent: None }
        }
        Some("ipvlan" | "ipvtap") => LinkKind::Ipvlan { parent: None },
        Some("tun") => LinkKind::Tun,
        Some("dummy") => LinkKind::Dummy,
        Some(
            k @ ("ipip" | "sit" | "ip6tnl" | "gre" | "gretap" | "ip6gre" | "ip6gretap" | "erspan"
            | "ip6erspan" | "vti" | "vti6"),
        ) => {
            let (local, remote) = tunnel_ends(info_data.as_ref());
            LinkKind::Tunnel {
                kind: k.to_string(),
                local,
                remote,
            }
        }
        Some(k) => LinkKind::Other {
            kind: k.to_string(),
        },
    };
    let bridge_port = if slave_kind.as_deref() == Some("bridge") {
        let mut bp = BridgePort {
            state: "disabled".into(),
            hairpin: false,
            learning: true,
            vlans: Vec::new(),
        };
        if let Some(InfoPortData::BridgePort(v)) = &slave_data {
            for a in v {
                match a {
                    InfoBridgePort::State(s) => {
                        bp.state = match u8::from(*s) {
                            0 => "disabled".into(),
                            1 => "listening".into(),
                            2 => "learning".into(),
                            3 => "forwarding".into(),
                            4 => "blocking".into(),
                            s => format!("state-{s}"),
                        }
                    }
                    InfoBridgePort::HairpinMode(x) => bp.hairpin = *x,
                    InfoBridgePort::Learning(x) => bp.learning = *x,
                    _ => {}
                }
            }
        }
        Some(bp)
    } else {
        None
    };
    let mac = addr.filter(|a| a.len() == 6).map(|a| mac(&a));
    RawLink {
        link: Link {
            ifindex,
            name,
            kind,
            mtu,
            mac,
            operstate: operstate_name(operstate),
            flags: link_flags(flags),
            master: None,
            bridge_port,
            group,
            stats,
        },
        iflink,
        link_netnsid,
        master_index,
        vxlan_dev,
        xdp,
    }
}

/// `aa:bb:cc:..` lowercase.
fn mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

/// Per-port VLANs from an `AF_BRIDGE` link dump (only filled with VLAN filtering).
pub fn bridge_vlans(sock: &mut Conn) -> io::Result<HashMap<u32, Vec<PortVlan>>> {
    let mut req = LinkMessage::default();
    req.header.interface_family = AddressFamily::Bridge;
    req.attributes
        .push(LinkAttribute::ExtMask(vec![LinkExtentMask::Brvlan]));
    let mut out: HashMap<u32, Vec<PortVlan>> = HashMap::new();
    sock.dump(RouteNetlinkMessage::GetLink(req), &mut |ev| {
        let m = match ev {
            Event::Restart => {
                out.clear();
                return;
            }
            Event::Msg(RouteNetlinkMessage::NewLink(m)) => m,
            Event::Msg(_) | Event::Bad(_) => return,
        };
        let ifindex = m.header.index;
        for a in &m.attributes {
            let LinkAttribute::AfSpecBridge(spec) = a else {
                continue;
            };
            let mut range_start: Option<u16> = None;
            for s in spec {
                let AfSpecBridge::VlanInfo(info) = s else {
                    continue;
                };
                let flags = info.flags.bits();
                let vid = info.vid;
                let pvid = flags & 0x2 != 0;
                let untagged = flags & 0x4 != 0;
                // BRIDGE_VLAN_INFO_RANGE_BEGIN / _END
                if flags & 0x8 != 0 {
                    range_start = Some(vid);
                    continue;
                }
                let start = if flags & 0x10 != 0 {
                    range_start.take().unwrap_or(vid)
                } else {
                    vid
                };
                let e = out.entry(ifindex).or_default();
                for v in start..=vid {
                    e.push(PortVlan {
                        vid: v,
                        pvid,
                        untagged,
                    });
                }
            }
        }
    })?;
    Ok(out)
}

fn route_ip(a: &RouteAddress) -> Option<IpAddr> {
    match a {
        RouteAddress::Inet(x) => Some(IpAddr::V4(*x)),
        RouteAddress::Inet6(x) => Some(IpAddr::V6(*x)),
        _ => None,
    }
}

fn neigh_ip(a: &NeighbourAddress) -> Option<IpAddr> {
    match a {
        NeighbourAddress::Inet(x) => Some(IpAddr::V4(*x)),
        NeighbourAddress::Inet6(x) => Some(IpAddr::V6(*x)),
        // In an AF_BRIDGE (FDB) message the crate cannot tell the remote's family from the
        // header and keeps the bytes: a vxlan `dst` is 4 or 16 of them.
        NeighbourAddress::Other(b) => match b.len() {
            4 => <[u8; 4]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            16 => <[u8; 16]>::try_from(b.as_slice()).ok().map(IpAddr::from),
            _ => None,
        },
        _ => None,
    }
}

/// Dump v4 and v6 addresses.
pub fn addresses(
    sock: &mut Conn,
    names: &HashMap<u32, String>,
    problems: &mut Vec<String>,
) -> io::Result<Vec<Address>> {
    let mut out = Vec::new();
    for fam in [AF_INET, AF_INET6] {
        let mut req = AddressMessage::default();
        req.header.family = family(fam);
        sock.dump(RouteNetlinkMessage::GetAddress(req), &mut |ev| {
            let m = match ev {
                Event::Restart => {
                    out.retain(|a: &Address| family_of(&a.addr) != fam);
                    return;
                }
                Event::Msg(RouteNetlinkMessage::NewAddress(m)) => m,
                Event::Msg(_) => return,
                Event::Bad(e) => {
                    problems.push(bad("address", e));
                    return;
                }
            };
            let plen = m.header.prefix_len;
            let mut flags = u32::from(m.header.flags.bits());
            let scope = u8::from(m.header.scope);
            let ifindex = m.header.index;
            let (mut address, mut local) = (None, None);
            for a in &m.attributes {
                match a {
                    AddressAttribute::Address(v) => address = Some(*v),
                    AddressAttribute::Local(v) => local = Some(*v),
                    AddressAttribute::Flags(v) => flags = v.bits(),
                    _ => {}
                }
            }
            let local = local.or(address);
            let address = address.or(local);
            let (Some(local), Some(address)) = (local, address) else {
                problems.push(format!("an address on ifindex {ifindex} has no address"));
                return;
            };
            let Some(addr) = prefix(local, plen) else {
                problems.push(format!("address {local}/{plen} is invalid"));
                return;
            };
            let peer = if address != local {
                prefix(address, plen)
            } else {
                None
            };
            let Some(dev) = names.get(&ifindex).cloned() else {
                problems.push(format!("address {addr} on unknown ifindex {ifindex}"));
                return;
            };
            out.push(Address {
                dev,
                addr,
                peer,
                scope: scope_name(scope),
                flags: addr_flags(flags, fam),
            });
        })?;
    }
    Ok(out)
}

/// Dump routes of every table, v4 and v6.
pub fn routes(
    sock: &mut Conn,
    names: &HashMap<u32, String>,
    problems: &mut Vec<String>,
) -> io::Result<Vec<Route>> {
    let mut out: Vec<Route> = Vec::new();
    for fam in [AF_INET, AF_INET6] {
        let mut req = RouteMessage::default();
        req.header.address_family = family(fam);
        sock.dump(RouteNetlinkMessage::GetRoute(req), &mut |ev| match ev {
            Event::Restart => out.retain(|r| family_of(&r.dst) != fam),
            Event::Msg(RouteNetlinkMessage::NewRoute(m)) => match parse_route(&m, fam, names) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(e) => problems.push(e),
            },
            Event::Msg(_) => {}
            Event::Bad(e) => problems.push(bad("route", e)),
        })?;
    }
    Ok(out)
}

fn parse_route(
    m: &RouteMessage,
    fam: u8,
    names: &HashMap<u32, String>,
) -> Result<Option<Route>, String> {
    let h = &m.header;
    let (dst_len, src_len, tos) = (h.destination_prefix_length, h.source_prefix_length, h.tos);
    let (proto, scope, ty) = (u8::from(h.protocol), u8::from(h.scope), u8::from(h.kind));
    let rflags = h.flags.bits();
    // RTM_F_CLONED: cached exceptions are not configuration.
    if rflags & 0x200 != 0 {
        return Ok(None);
    }
    let mut table = h.table as u32;
    let (mut dst, mut src, mut gateway, mut oif, mut prio, mut prefsrc, mut mtu) =
        (None, None, None, None, 0, None, None);
    let mut multipath = Vec::new();
    let mut nhid = None;
    for a in &m.attributes {
        match a {
            RouteAttribute::Destination(v) => dst = route_ip(v),
            RouteAttribute::Source(v) => src = route_ip(v),
            RouteAttribute::Oif(v) => oif = Some(*v),
            RouteAttribute::Gateway(v) => gateway = route_ip(v),
            RouteAttribute::Priority(v) => prio = *v,
            RouteAttribute::PrefSource(v) => prefsrc = route_ip(v),
            RouteAttribute::Metrics(ms) => {
                for x in ms {
                    if let RouteMetric::Mtu(v) = x {
                        mtu = Some(*v);
                    }
                }
            }
            RouteAttribute::MultiPath(hops) => {
                for nh in hops {
                    let mut gw = None;
                    for na in &nh.attributes {
                        if let RouteAttribute::Gateway(v) = na {
                            gw = route_ip(v);
                        }
                    }
                    multipath.push(NextHop {
                        gateway: gw,
                        dev: names.get(&nh.interface_index).cloned(),
                        weight: nh.hops as u32 + 1,
                        flags: nh_flags(nh.flags.bits() as u32),
                    });
                }
            }
            RouteAttribute::Table(v) => table = *v,
            RouteAttribute::NhId(v) => nhid = Some(*v),
            _ => {}
        }
    }
    let unspecified = if fam == AF_INET {
        IpAddr::from([0u8; 4])
    } else {
        IpAddr::from([0u8; 16])
    };
    let dst = prefix(dst.unwrap_or(unspecified), dst_len)
        .ok_or_else(|| format!("route with invalid destination prefix length {dst_len}"))?;
    let src = match src {
        Some(s) => Some(prefix(s, src_len).ok_or("route with invalid source prefix")?),
        None => None,
    };
    let mut flags = nh_flags(rflags & 0xff);
    if let Some(id) = nhid {
        flags.push(format!("nhid:{id}"));
    }
    let dev = match oif {
        Some(i) => match names.get(&i) {
            Some(n) => Some(n.clone()),
            None => return Err(format!("route to {dst} via unknown ifindex {i}")),
        },
        None => None,
    };
    Ok(Some(Route {
        table,
        dst,
        src,
        route_type: route_type(ty),
        protocol: protocol_name(proto),
        scope: scope_name(scope),
        prefsrc,
        metric: prio,
        tos,
        gateway,
        dev,
        flags,
        multipath,
        mtu,
    }))
}

/// Dump policy rules, v4 and v6.
pub fn rules(sock: &mut Conn, problems: &mut Vec<String>) -> io::Result<Vec<Rule>> {
    let mut out: Vec<Rule> = Vec::new();
    for fam in [AF_INET, AF_INET6] {
        let fname = if fam == AF_INET { "inet" } else { "inet6" };
        let mut req = RuleMessage::default();
        req.header.family = family(fam);
        sock.dump(RouteNetlinkMessage::GetRule(req), &mut |ev| match ev {
            Event::Restart => out.retain(|r| r.family != fname),
            Event::Msg(RouteNetlinkMessage::NewRule(m)) => match parse_rule(&m, fname) {
                Some(r) => out.push(r),
                None => problems.push("a rule message has an unknown action".into()),
            },
            Event::Msg(_) => {}
            Event::Bad(e) => problems.push(bad("rule", e)),
        })?;
    }
    Ok(out)
}

fn parse_rule(m: &RuleMessage, family: &str) -> Option<Rule> {
    let h = &m.header;
    let (dst_len, src_len, tos) = (h.dst_len, h.src_len, h.tos);
    let action = u8::from(h.action);
    let flags = h.flags.bits();
    let mut r = Rule {
        family: family.to_string(),
        priority: 0,
        invert: flags & 0x2 != 0,
        src: None,
        dst: None,
        iif: None,
        oif: None,
        fwmark: None,
        fwmask: None,
        tos,
        ipproto: None,
        sport: None,
        dport: None,
        uid_range: None,
        l3mdev: false,
        action: RuleAction::Nop,
        table: None,
        goto: None,
        suppress_prefixlen: None,
        suppress_ifgroup: None,
    };
    let mut table = h.table as u32;
    for a in &m.attributes {
        match a {
            RuleAttribute::Destination(v) => r.dst = prefix(*v, dst_len),
            RuleAttribute::Source(v) => r.src = prefix(*v, src_len),
            RuleAttribute::Iifname(v) => r.iif = Some(v.clone()),
            RuleAttribute::Goto(v) => r.goto = Some(*v),
            RuleAttribute::Priority(v) => r.priority = *v,
            RuleAttribute::FwMark(v) => r.fwmark = Some(*v),
            RuleAttribute::SuppressIfGroup(v) => {
                r.suppress_ifgroup = Some(*v).filter(|&x| x != u32::MAX)
            }
            RuleAttribute::SuppressPrefixLen(v) => {
                r.suppress_prefixlen = Some(*v).filter(|&x| x != u32::MAX)
            }
            RuleAttribute::Table(v) => table = *v,
            RuleAttribute::FwMask(v) => r.fwmask = Some(*v),
            RuleAttribute::Oifname(v) => r.oif = Some(v.clone()),
            RuleAttribute::L3MDev(v) => r.l3mdev = *v,
            RuleAttribute::UidRange(v) => r.uid_range = Some((v.start, v.end)),
            RuleAttribute::IpProtocol(v) => r.ipproto = Some(u8::from(*v)),
            RuleAttribute::SourcePortRange(v) => r.sport = Some((v.start, v.end)),
            RuleAttribute::DestinationPortRange(v) => r.dport = Some((v.start, v.end)),
            _ => {}
        }
    }
    // A mark of 0 with no mask set is "no fwmark selector"; the kernel reports the pair
    // only when one of them is set.
    if r.fwmark.is_none() && r.fwmask.is_some() {
        r.fwmark = Some(0);
    }
    r.action = match action {
        1 => RuleAction::Lookup,
        2 => RuleAction::Goto,
        3 => RuleAction::Nop,
        6 => RuleAction::Blackhole,
        7 => RuleAction::Unreachable,
        8 => RuleAction::Prohibit,
        _ => return None,
    };
    if r.action == RuleAction::Lookup {
        r.table = Some(table);
    }
    Some(r)
}

/// Dump ARP and NDP neighbours, all states, and the proxy entries (`ip neigh show proxy`,
/// `ip -6 neigh show proxy`: a dump lists them only when asked with `NTF_PROXY`), which carry
/// the flag `proxy`.
pub fn neighbours(
    sock: &mut Conn,
    names: &HashMap<u32, String>,
    problems: &mut Vec<String>,
) -> io::Result<Vec<Neighbour>> {
    let mut out: Vec<Neighbour> = Vec::new();
    for (fam, proxy) in [
        (AF_INET, false),
        (AF_INET6, false),
        (AF_INET, true),
        (AF_INET6, true),
    ] {
        let mut req = NeighbourMessage::default();
        req.header.family = family(fam);
        if proxy {
            req.header.flags = NeighbourFlags::Proxy;
        }
        let is_this_dump = move |n: &Neighbour| {
            n.dst.is_ipv4() == (fam == AF_INET) && n.flags.iter().any(|f| f == "proxy") == proxy
        };
        sock.dump(RouteNetlinkMessage::GetNeighbour(req), &mut |ev| {
            let m = match ev {
                Event::Restart => {
                    out.retain(|n| !is_this_dump(n));
                    return;
                }
                Event::Msg(RouteNetlinkMessage::NewNeighbour(m)) => m,
                Event::Msg(_) => return,
                Event::Bad(e) => {
                    problems.push(bad("neighbour", e));
                    return;
                }
            };
            let ifindex = m.header.ifindex;
            let state = u16::from(m.header.state);
            let flags = m.header.flags.bits();
            let (mut dst, mut ll) = (None, None);
            for a in &m.attributes {
                match a {
                    NeighbourAttribute::Destination(v) => dst = neigh_ip(v),
                    NeighbourAttribute::LinkLayerAddress(v) => ll = Some(mac(v)),
                    _ => {}
                }
            }
            let Some(dst) = dst else {
                problems.push(format!("a neighbour on ifindex {ifindex} has no address"));
                return;
            };
            let Some(dev) = names.get(&ifindex).cloned() else {
                problems.push(format!("neighbour {dst} on unknown ifindex {ifindex}"));
                return;
            };
            out.push(Neighbour {
                dev,
                dst,
                lladdr: ll,
                state: nud_states(state),
                flags: ntf_flags(flags),
            });
        })?;
    }
    Ok(out)
}

/// Dump the bridge / vxlan forwarding database (`bridge fdb show`).
pub fn fdb(
    sock: &mut Conn,
    names: &HashMap<u32, String>,
    problems: &mut Vec<String>,
) -> io::Result<Vec<FdbEntry>> {
    let mut out: Vec<FdbEntry> = Vec::new();
    let mut req = NeighbourMessage::default();
    req.header.family = AddressFamily::Bridge;
    sock.dump(RouteNetlinkMessage::GetNeighbour(req), &mut |ev| {
        let m = match ev {
            Event::Restart => {
                out.clear();
                return;
            }
            Event::Msg(RouteNetlinkMessage::NewNeighbour(m)) => m,
            Event::Msg(_) => return,
            Event::Bad(e) => {
                problems.push(bad("fdb", e));
                return;
            }
        };
        let ifindex = m.header.ifindex;
        let state = u16::from(m.header.state);
        let mut e = FdbEntry {
            dev: String::new(),
            mac: String::new(),
            master: None,
            vlan: None,
            dst: None,
            vni: None,
            port: None,
            state: Vec::new(),
            flags: ntf_flags(m.header.flags.bits()),
        };
        for a in &m.attributes {
            match a {
                NeighbourAttribute::Destination(v) => e.dst = neigh_ip(v),
                NeighbourAttribute::LinkLayerAddress(v) => e.mac = mac(v),
                NeighbourAttribute::Vlan(v) => e.vlan = Some(*v),
                NeighbourAttribute::Port(v) => e.port = Some(*v),
                NeighbourAttribute::Vni(v) => e.vni = Some(*v),
                NeighbourAttribute::Controller(v) => e.master = names.get(v).cloned(),
                _ => {}
            }
        }
        if state & 0x80 != 0 {
            e.state.push("permanent".into());
        } else if state & 0x40 != 0 {
            e.state.push("static".into());
        } else if state & 0x04 != 0 {
            e.state.push("stale".into());
        }
        match names.get(&ifindex) {
            Some(n) => e.dev = n.clone(),
            None => {
                problems.push(format!("fdb entry {} on unknown ifindex {ifindex}", e.mac));
                return;
            }
        }
        out.push(e);
    })?;
    Ok(out)
}

/// The id this namespace's socket has for the namespace open at `fd` (`RTM_GETNSID`), if
/// one is assigned. Never assigns one (the kernel's `peernet2id`, not `…_alloc`).
pub fn nsid_of(sock: &mut Conn, fd: i32) -> io::Result<Option<i32>> {
    let mut req = NsidMessage::default();
    req.attributes.push(NsidAttribute::Fd(fd as u32));
    let Some(RouteNetlinkMessage::NewNsId(m)) = sock.request(RouteNetlinkMessage::GetNsId(req))?
    else {
        return Ok(None);
    };
    for a in &m.attributes {
        if let NsidAttribute::Id(id) = a {
            return Ok(Some(*id).filter(|&i| i >= 0));
        }
    }
    Ok(None)
}

fn operstate_name(s: u8) -> String {
    match s {
        0 => "unknown",
        1 => "notpresent",
        2 => "down",
        3 => "lowerlayerdown",
        4 => "testing",
        5 => "dormant",
        6 => "up",
        _ => return format!("operstate-{s}"),
    }
    .to_string()
}

/// Interface flags in the order and spelling of `ip link`.
fn link_flags(mut f: u32) -> Vec<String> {
    const IFF_UP: u32 = 0x1;
    const IFF_RUNNING: u32 = 0x40;
    let mut out = Vec::new();
    if f & IFF_UP != 0 && f & IFF_RUNNING == 0 {
        out.push("NO-CARRIER".to_string());
    }
    f &= !IFF_RUNNING;
    for (bit, name) in [
        (0x8, "LOOPBACK"),
        (0x2, "BROADCAST"),
        (0x10, "POINTOPOINT"),
        (0x1000, "MULTICAST"),
        (0x80, "NOARP"),
        (0x200, "ALLMULTI"),
        (0x100, "PROMISC"),
        (0x400, "MASTER"),
        (0x800, "SLAVE"),
        (0x4, "DEBUG"),
        (0x8000, "DYNAMIC"),
        (0x4000, "AUTOMEDIA"),
        (0x2000, "PORTSEL"),
        (0x20, "NOTRAILERS"),
        (0x1, "UP"),
        (0x10000, "LOWER_UP"),
        (0x20000, "DORMANT"),
        (0x40000, "ECHO"),
    ] {
        if f & bit != 0 {
            f &= !bit;
            out.push(name.to_string());
        }
    }
    if f != 0 {
        out.push(format!("{f:x}"));
    }
    out
}

fn scope_name(s: u8) -> String {
    match s {
        0 => "global".into(),
        200 => "site".into(),
        253 => "link".into(),
        254 => "host".into(),
        255 => "nowhere".into(),
        n => n.to_string(),
    }
}

fn prefix(a: IpAddr, len: u8) -> Option<IpNet> {
    IpNet::new(a, len).ok()
}

fn family_of(n: &IpNet) -> u8 {
    match n {
        IpNet::V4(_) => AF_INET,
        IpNet::V6(_) => AF_INET6,
    }
}

fn addr_flags(f: u32, fam: u8) -> Vec<String> {
    let mut out = Vec::new();
    for (bit, name) in [
        (
            0x01,
            if fam == AF_INET6 {
                "temporary"
            } else {
                "secondary"
            },
        ),
        (0x02, "nodad"),
        (0x04, "optimistic"),
        (0x08, "dadfailed"),
        (0x10, "home"),
        (0x20, "deprecated"),
        (0x40, "tentative"),
        (0x80, "permanent"),
        (0x100, "mngtmpaddr"),
        (0x200, "noprefixroute"),
        (0x400, "autojoin"),
        (0x800, "stable-privacy"),
    ] {
        if f & bit != 0 {
            out.push(name.to_string());
        }
    }
    out
}

fn route_type(t: u8) -> RouteType {
    match t {
        1 => RouteType::Unicast,
        2 => RouteType::Local,
        3 => RouteType::Broadcast,
        4 => RouteType::Anycast,
        5 => RouteType::Multicast,
        6 => RouteType::Blackhole,
        7 => RouteType::Unreachable,
        8 => RouteType::Prohibit,
        9 => RouteType::Throw,
        10 => RouteType::Nat,
        _ => RouteType::Unspec,
    }
}

fn protocol_name(p: u8) -> String {
    match p {
        0 => "unspec",
        1 => "redirect",
        2 => "kernel",
        3 => "boot",
        4 => "static",
        8 => "gated",
        9 => "ra",
        10 => "mrt",
        11 => "zebra",
        12 => "bird",
        13 => "dnrouted",
        14 => "xorp",
        15 => "ntk",
        16 => "dhcp",
        17 => "mrouted",
        18 => "keepalived",
        42 => "babel",
        99 => "openr",
        186 => "bgp",
        187 => "isis",
        188 => "ospf",
        189 => "rip",
        192 => "eigrp",
        n => return n.to_string(),
    }
    .to_string()
}

/// Next-hop flags (`RTNH_F_*`, also the low byte of `rtm_flags`) as `ip route` prints them.
fn nh_flags(f: u32) -> Vec<String> {
    let mut out = Vec::new();
    for (bit, name) in [
        (0x1, "dead"),
        (0x2, "pervasive"),
        (0x4, "onlink"),
        (0x8, "offload"),
        (0x10, "linkdown"),
        (0x20, "unresolved"),
        (0x40, "trap"),
    ] {
        if f & bit != 0 {
            out.push(name.to_string());
        }
    }
    out
}

fn nud_states(s: u16) -> Vec<String> {
    if s == 0 {
        return vec!["NONE".into()];
    }
    let mut out = Vec::new();
    for (bit, name) in [
        (0x01, "INCOMPLETE"),
        (0x02, "REACHABLE"),
        (0x04, "STALE"),
        (0x08, "DELAY"),
        (0x10, "PROBE"),
        (0x20, "FAILED"),
        (0x40, "NOARP"),
        (0x80, "PERMANENT"),
    ] {
        if s & bit != 0 {
            out.push(name.to_string());
        }
    }
    out
}

fn ntf_flags(f: u8) -> Vec<String> {
    let mut out = Vec::new();
    for (bit, name) in [
        (0x01, "use"),
        (0x02, "self"),
        (0x04, "master"),
        (0x08, "proxy"),
        (0x10, "extern_learn"),
        (0x20, "offload"),
        (0x40, "sticky"),
        (0x80, "router"),
    ] {
        if f & bit != 0 {
            out.push(name.to_string());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bounded random inputs: neither the crate's decoding nor our mapping may panic on
    /// odd kernel data; what does not decode is an error, not a crash.
    #[test]
    fn parsers_never_panic() {
        use netlink_packet_core::{NetlinkDeserializable, NetlinkHeader};
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let names: HashMap<u32, String> = [(1, "lo".to_string())].into();
        let mut decoded = 0;
        for i in 0..20_000 {
            let len = (next() % 200) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Make some attribute headers plausible so nested parsing is exercised.
            let hlen = [16usize, 8, 12, 12, 12, 4][i % 6];
            if len > hlen + 4 {
                let alen = (next() % (len - hlen) as u64) as u16 + 4;
                buf[hlen..hlen + 2].copy_from_slice(&alen.to_ne_bytes());
            }
            let mut header = NetlinkHeader::default();
            header.message_type = [16u16, 20, 24, 28, 32, 88][i % 6];
            let Ok(m) = RouteNetlinkMessage::deserialize(&header, &buf) else {
                continue;
            };
            decoded += 1;
            match m {
                RouteNetlinkMessage::NewLink(l) => {
                    let _ = parse_link(l);
                }
                RouteNetlinkMessage::NewRoute(r) => {
                    let _ = parse_route(&r, AF_INET, &names);
                    let _ = parse_route(&r, AF_INET6, &names);
                }
                RouteNetlinkMessage::NewRule(r) => {
                    let _ = parse_rule(&r, "inet");
                }
                _ => {}
            }
            let _ = crate::ct::stats(&String::from_utf8_lossy(&buf));
        }
        assert!(decoded > 0);
    }

    #[test]
    fn flags_in_ip_order() {
        assert_eq!(
            link_flags(0x1 | 0x2 | 0x40 | 0x1000 | 0x10000),
            ["BROADCAST", "MULTICAST", "UP", "LOWER_UP"]
        );
        assert_eq!(link_flags(0x1 | 0x2), ["NO-CARRIER", "BROADCAST", "UP"]);
    }
}
