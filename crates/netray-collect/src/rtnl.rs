//! Kernel routing tables over rtnetlink: links, addresses, routes, rules, neighbours, FDB,
//! and namespace ids.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;

use ipnet::IpNet;
use netray_snapshot::{
    Address, BridgePort, FdbEntry, Link, LinkKind, Neighbour, NextHop, PortVlan, Route, RouteType,
    Rule, RuleAction,
};

use crate::nl::{self, Socket, attrs, ip, mac, string, u8_, u16_be, u16_ne, u32_ne};

const RTM_GETLINK: u16 = 18;
const RTM_GETADDR: u16 = 22;
const RTM_GETROUTE: u16 = 26;
const RTM_GETNEIGH: u16 = 30;
const RTM_GETRULE: u16 = 34;
const RTM_GETNSID: u16 = 90;

const AF_INET: u8 = libc::AF_INET as u8;
const AF_INET6: u8 = libc::AF_INET6 as u8;
const AF_BRIDGE: u8 = libc::AF_BRIDGE as u8;

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
}

fn ifinfomsg(family: u8) -> Vec<u8> {
    let mut b = vec![0u8; 16];
    b[0] = family;
    b
}

/// Dump every link with kind data, resolving master/parent names within the namespace.
pub fn links(sock: &mut Socket, problems: &mut Vec<String>) -> io::Result<Vec<RawLink>> {
    let mut out: Vec<RawLink> = Vec::new();
    sock.dump(RTM_GETLINK, &ifinfomsg(0), &mut |m| {
        let Some(m) = m else {
            return Ok(());
        };
        if m.ty != 16 {
            return Ok(());
        }
        match parse_link(m.payload) {
            Some(l) => out.push(l),
            None => problems.push("a link message was malformed".into()),
        }
        Ok(())
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

fn parse_link(p: &[u8]) -> Option<RawLink> {
    let hdr = p.get(..16)?;
    let ifindex = i32::from_ne_bytes(hdr[4..8].try_into().ok()?) as u32;
    let flags = u32::from_ne_bytes(hdr[8..12].try_into().ok()?);
    let mut name = String::new();
    let mut mtu = 0;
    let mut addr = None;
    let mut operstate = 0u8;
    let mut master_index = None;
    let mut iflink = None;
    let mut link_netnsid = None;
    let mut group = 0;
    let mut kind_name: Option<String> = None;
    let mut info_data: &[u8] = &[];
    let mut slave_kind: Option<String> = None;
    let mut slave_data: &[u8] = &[];
    for (ty, v) in attrs(&p[16..]) {
        match ty {
            1 => addr = Some(v),
            3 => name = string(v),
            4 => mtu = u32_ne(v).unwrap_or(0),
            5 => iflink = u32_ne(v),
            10 => master_index = u32_ne(v).filter(|&m| m != 0),
            16 => operstate = u8_(v).unwrap_or(0),
            27 => group = u32_ne(v).unwrap_or(0),
            37 => link_netnsid = u32_ne(v).map(|x| x as i32),
            18 => {
                for (t, d) in attrs(v) {
                    match t {
                        1 => kind_name = Some(string(d)),
                        2 => info_data = d,
                        4 => slave_kind = Some(string(d)),
                        5 => slave_data = d,
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
            for (t, d) in attrs(info_data) {
                match t {
                    5 => stp = u32_ne(d).unwrap_or(0),
                    7 => vf = u8_(d).unwrap_or(0) != 0,
                    36 => nf4 = u8_(d).unwrap_or(0) != 0,
                    37 => nf6 = u8_(d).unwrap_or(0) != 0,
                    38 => nfarp = u8_(d).unwrap_or(0) != 0,
                    39 => pvid = u16_ne(d),
                    _ => {}
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
            for (t, d) in attrs(info_data) {
                match t {
                    1 => vni = u32_ne(d).unwrap_or(0),
                    2 | 16 => group = ip(d),
                    3 => vxlan_dev = u32_ne(d).filter(|&i| i != 0),
                    4 | 17 => local = ip(d),
                    7 => learning = u8_(d).unwrap_or(1) != 0,
                    15 => port = u16_be(d).unwrap_or(0),
                    _ => {}
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
            let id = attrs(info_data)
                .find(|(t, _)| *t == 1)
                .and_then(|(_, d)| u16_ne(d))
                .unwrap_or(0);
            LinkKind::Vlan { id, parent: None }
        }
        Some(k @ ("macvlan" | "macvtap")) => {
            let mode = attrs(info_data)
                .find(|(t, _)| *t == 1)
                .and_then(|(_, d)| u32_ne(d))
                .unwrap_or(0);
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
            let (loc_t, rem_t) = if k.contains("gre") || k.contains("erspan") {
                (6, 7)
            } else if k.starts_with("vti") {
                (4, 5)
            } else {
                (2, 3)
            };
            let mut local = None;
            let mut remote = None;
            for (t, d) in attrs(info_data) {
                if t == loc_t {
                    local = ip(d).filter(|a| !a.is_unspecified());
                } else if t == rem_t {
                    remote = ip(d).filter(|a| !a.is_unspecified());
                }
            }
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
        for (t, d) in attrs(slave_data) {
            match t {
                1 => {
                    bp.state = match u8_(d).unwrap_or(0) {
                        0 => "disabled".into(),
                        1 => "listening".into(),
                        2 => "learning".into(),
                        3 => "forwarding".into(),
                        4 => "blocking".into(),
                        s => format!("state-{s}"),
                    }
                }
                4 => bp.hairpin = u8_(d).unwrap_or(0) != 0,
                8 => bp.learning = u8_(d).unwrap_or(1) != 0,
                _ => {}
            }
        }
        Some(bp)
    } else {
        None
    };
    let mac = addr.filter(|a| a.len() == 6).map(mac);
    Some(RawLink {
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
        },
        iflink,
        link_netnsid,
        master_index,
        vxlan_dev,
    })
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

/// Per-port VLANs from an `AF_BRIDGE` link dump (only filled with VLAN filtering).
pub fn bridge_vlans(sock: &mut Socket) -> io::Result<HashMap<u32, Vec<PortVlan>>> {
    let mut body = ifinfomsg(AF_BRIDGE);
    // IFLA_EXT_MASK = RTEXT_FILTER_BRVLAN
    nl::push_attr(&mut body, 29, &2u32.to_ne_bytes());
    let mut out: HashMap<u32, Vec<PortVlan>> = HashMap::new();
    sock.dump(RTM_GETLINK, &body, &mut |m| {
        let Some(m) = m else {
            out.clear();
            return Ok(());
        };
        let Some(h) = m.payload.get(..16) else {
            return Ok(());
        };
        let ifindex = i32::from_ne_bytes([h[4], h[5], h[6], h[7]]) as u32;
        for (t, v) in attrs(&m.payload[16..]) {
            if t != 26 {
                continue;
            }
            let mut range_start: Option<u16> = None;
            for (t2, d) in attrs(v) {
                if t2 != 2 || d.len() < 4 {
                    continue;
                }
                let flags = u16::from_ne_bytes([d[0], d[1]]);
                let vid = u16::from_ne_bytes([d[2], d[3]]);
                if flags & 0x1 != 0 && !out.contains_key(&ifindex) {
                    // BRIDGE_VLAN_INFO_MASTER: the bridge's own VLAN entry.
                }
                let pvid = flags & 0x2 != 0;
                let untagged = flags & 0x4 != 0;
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
        Ok(())
    })?;
    Ok(out)
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

/// Dump v4 and v6 addresses.
pub fn addresses(
    sock: &mut Socket,
    names: &HashMap<u32, String>,
    problems: &mut Vec<String>,
) -> io::Result<Vec<Address>> {
    let mut out = Vec::new();
    for fam in [AF_INET, AF_INET6] {
        let mut body = vec![0u8; 8];
        body[0] = fam;
        sock.dump(RTM_GETADDR, &body, &mut |m| {
            let Some(m) = m else {
                out.retain(|a: &Address| family_of(&a.addr) != fam);
                return Ok(());
            };
            if m.ty != 20 {
                return Ok(());
            }
            let p = m.payload;
            let Some(h) = p.get(..8) else {
                problems.push("an address message was malformed".into());
                return Ok(());
            };
            let (plen, mut flags, scope) = (h[1], h[2] as u32, h[3]);
            let ifindex = u32::from_ne_bytes([h[4], h[5], h[6], h[7]]);
            let (mut address, mut local) = (None, None);
            for (t, v) in attrs(&p[8..]) {
                match t {
                    1 => address = ip(v),
                    2 => local = ip(v),
                    8 => flags = u32_ne(v).unwrap_or(flags),
                    _ => {}
                }
            }
            let local = local.or(address);
            let address = address.or(local);
            let (Some(local), Some(address)) = (local, address) else {
                problems.push(format!("an address on ifindex {ifindex} has no address"));
                return Ok(());
            };
            let Some(addr) = prefix(local, plen) else {
                problems.push(format!("address {local}/{plen} is invalid"));
                return Ok(());
            };
            let peer = if address != local {
                prefix(address, plen)
            } else {
                None
            };
            let Some(dev) = names.get(&ifindex).cloned() else {
                problems.push(format!("address {addr} on unknown ifindex {ifindex}"));
                return Ok(());
            };
            out.push(Address {
                dev,
                addr,
                peer,
                scope: scope_name(scope),
                flags: addr_flags(flags, fam),
            });
            Ok(())
        })?;
    }
    Ok(out)
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

/// Dump routes of every table, v4 and v6.
pub fn routes(
    sock: &mut Socket,
    names: &HashMap<u32, String>,
    problems: &mut Vec<String>,
) -> io::Result<Vec<Route>> {
    let mut out: Vec<Route> = Vec::new();
    for fam in [AF_INET, AF_INET6] {
        let mut body = vec![0u8; 12];
        body[0] = fam;
        sock.dump(RTM_GETROUTE, &body, &mut |m| {
            let Some(m) = m else {
                out.retain(|r| family_of(&r.dst) != fam);
                return Ok(());
            };
            if m.ty != 24 {
                return Ok(());
            }
            match parse_route(m.payload, fam, names) {
                Ok(Some(r)) => out.push(r),
                Ok(None) => {}
                Err(e) => problems.push(e),
            }
            Ok(())
        })?;
    }
    Ok(out)
}

fn parse_route(p: &[u8], fam: u8, names: &HashMap<u32, String>) -> Result<Option<Route>, String> {
    let h = p.get(..12).ok_or("a route message was malformed")?;
    let (dst_len, src_len, tos, table8, proto, scope, ty) =
        (h[1], h[2], h[3], h[4], h[5], h[6], h[7]);
    let rflags = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
    // RTM_F_CLONED: cached exceptions are not configuration.
    if rflags & 0x200 != 0 {
        return Ok(None);
    }
    let mut table = table8 as u32;
    let (mut dst, mut src, mut gateway, mut oif, mut prio, mut prefsrc, mut mtu) =
        (None, None, None, None, 0, None, None);
    let mut multipath = Vec::new();
    let mut nhid = None;
    for (t, v) in attrs(&p[12..]) {
        match t {
            1 => dst = ip(v),
            2 => src = ip(v),
            4 => oif = u32_ne(v),
            5 => gateway = ip(v),
            6 => prio = u32_ne(v).unwrap_or(0),
            7 => prefsrc = ip(v),
            8 => {
                for (mt, mv) in attrs(v) {
                    if mt == 2 {
                        mtu = u32_ne(mv);
                    }
                }
            }
            9 => {
                let mut off = 0;
                while let Some(nh) = v.get(off..off + 8) {
                    let len = u16::from_ne_bytes([nh[0], nh[1]]) as usize;
                    if len < 8 || off + len > v.len() {
                        return Err("a multipath route has a malformed next hop".into());
                    }
                    let flags = nh[2] as u32;
                    let hops = nh[3] as u32;
                    let ifindex = u32::from_ne_bytes([nh[4], nh[5], nh[6], nh[7]]);
                    let mut gw = None;
                    for (nt, nv) in attrs(&v[off + 8..off + len]) {
                        if nt == 5 {
                            gw = ip(nv);
                        }
                    }
                    multipath.push(NextHop {
                        gateway: gw,
                        dev: names.get(&ifindex).cloned(),
                        weight: hops + 1,
                        flags: nh_flags(flags),
                    });
                    off += nl::align(len);
                }
            }
            15 => table = u32_ne(v).unwrap_or(table),
            30 => nhid = u32_ne(v),
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
        None if src_len > 0 => None,
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
pub fn rules(sock: &mut Socket, problems: &mut Vec<String>) -> io::Result<Vec<Rule>> {
    let mut out: Vec<Rule> = Vec::new();
    for fam in [AF_INET, AF_INET6] {
        let fname = if fam == AF_INET { "inet" } else { "inet6" };
        let mut body = vec![0u8; 12];
        body[0] = fam;
        sock.dump(RTM_GETRULE, &body, &mut |m| {
            let Some(m) = m else {
                out.retain(|r| r.family != fname);
                return Ok(());
            };
            if m.ty != 32 {
                return Ok(());
            }
            match parse_rule(m.payload, fname) {
                Some(r) => out.push(r),
                None => problems.push("a rule message was malformed".into()),
            }
            Ok(())
        })?;
    }
    Ok(out)
}

fn parse_rule(p: &[u8], family: &str) -> Option<Rule> {
    let h = p.get(..12)?;
    let (dst_len, src_len, tos, table8, action) = (h[1], h[2], h[3], h[4], h[7]);
    let flags = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
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
    let mut table = table8 as u32;
    let range16 = |v: &[u8]| -> Option<(u16, u16)> { Some((u16_ne(v)?, u16_ne(v.get(2..)?)?)) };
    for (t, v) in attrs(&p[12..]) {
        match t {
            1 => r.dst = ip(v).and_then(|a| prefix(a, dst_len)),
            2 => r.src = ip(v).and_then(|a| prefix(a, src_len)),
            3 => r.iif = Some(string(v)),
            4 => r.goto = u32_ne(v),
            6 => r.priority = u32_ne(v).unwrap_or(0),
            10 => r.fwmark = u32_ne(v),
            13 => r.suppress_ifgroup = u32_ne(v).filter(|&x| x != u32::MAX),
            14 => r.suppress_prefixlen = u32_ne(v).filter(|&x| x != u32::MAX),
            15 => table = u32_ne(v).unwrap_or(table),
            16 => r.fwmask = u32_ne(v),
            17 => r.oif = Some(string(v)),
            19 => r.l3mdev = u8_(v).unwrap_or(0) != 0,
            20 => r.uid_range = Some((u32_ne(v)?, u32_ne(v.get(4..)?)?)),
            22 => r.ipproto = u8_(v),
            23 => r.sport = range16(v),
            24 => r.dport = range16(v),
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

/// Dump ARP and NDP neighbours, all states.
pub fn neighbours(
    sock: &mut Socket,
    names: &HashMap<u32, String>,
    problems: &mut Vec<String>,
) -> io::Result<Vec<Neighbour>> {
    let mut out: Vec<Neighbour> = Vec::new();
    for fam in [AF_INET, AF_INET6] {
        let mut body = vec![0u8; 12];
        body[0] = fam;
        sock.dump(RTM_GETNEIGH, &body, &mut |m| {
            let Some(m) = m else {
                out.retain(|n| n.dst.is_ipv4() != (fam == AF_INET));
                return Ok(());
            };
            if m.ty != 28 {
                return Ok(());
            }
            let p = m.payload;
            let Some(h) = p.get(..12) else {
                problems.push("a neighbour message was malformed".into());
                return Ok(());
            };
            let ifindex = u32::from_ne_bytes([h[4], h[5], h[6], h[7]]);
            let state = u16::from_ne_bytes([h[8], h[9]]);
            let flags = h[10];
            let (mut dst, mut ll) = (None, None);
            for (t, v) in attrs(&p[12..]) {
                match t {
                    1 => dst = ip(v),
                    2 => ll = Some(mac(v)),
                    _ => {}
                }
            }
            let Some(dst) = dst else {
                problems.push(format!("a neighbour on ifindex {ifindex} has no address"));
                return Ok(());
            };
            let Some(dev) = names.get(&ifindex).cloned() else {
                problems.push(format!("neighbour {dst} on unknown ifindex {ifindex}"));
                return Ok(());
            };
            out.push(Neighbour {
                dev,
                dst,
                lladdr: ll,
                state: nud_states(state),
                flags: ntf_flags(flags),
            });
            Ok(())
        })?;
    }
    Ok(out)
}

/// Dump the bridge / vxlan forwarding database (`bridge fdb show`).
pub fn fdb(
    sock: &mut Socket,
    names: &HashMap<u32, String>,
    problems: &mut Vec<String>,
) -> io::Result<Vec<FdbEntry>> {
    let mut out: Vec<FdbEntry> = Vec::new();
    let mut body = vec![0u8; 12];
    body[0] = AF_BRIDGE;
    sock.dump(RTM_GETNEIGH, &body, &mut |m| {
        let Some(m) = m else {
            out.clear();
            return Ok(());
        };
        if m.ty != 28 {
            return Ok(());
        }
        let p = m.payload;
        let Some(h) = p.get(..12) else {
            problems.push("an fdb message was malformed".into());
            return Ok(());
        };
        let ifindex = u32::from_ne_bytes([h[4], h[5], h[6], h[7]]);
        let state = u16::from_ne_bytes([h[8], h[9]]);
        let flags = h[10];
        let mut e = FdbEntry {
            dev: String::new(),
            mac: String::new(),
            master: None,
            vlan: None,
            dst: None,
            vni: None,
            port: None,
            state: Vec::new(),
            flags: ntf_flags(flags),
        };
        for (t, v) in attrs(&p[12..]) {
            match t {
                1 => e.dst = ip(v),
                2 => e.mac = mac(v),
                5 => e.vlan = u16_ne(v),
                6 => e.port = u16_be(v),
                7 => e.vni = u32_ne(v),
                9 => e.master = u32_ne(v).and_then(|i| names.get(&i).cloned()),
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
                return Ok(());
            }
        }
        out.push(e);
        Ok(())
    })?;
    Ok(out)
}

/// The id this namespace's socket has for the namespace open at `fd` (`RTM_GETNSID`), if
/// one is assigned. Never assigns one (the kernel's `peernet2id`, not `…_alloc`).
pub fn nsid_of(sock: &mut Socket, fd: i32) -> io::Result<Option<i32>> {
    let mut body = vec![0u8; 4];
    // NETNSA_FD
    nl::push_attr(&mut body, 3, &(fd as u32).to_ne_bytes());
    let (ty, payload) = sock.request(RTM_GETNSID, &body)?;
    if ty != 88 {
        return Ok(None);
    }
    for (t, v) in attrs(payload.get(4..).unwrap_or(&[])) {
        if t == 1 {
            let id = u32_ne(v).map(|x| x as i32);
            return Ok(id.filter(|&i| i >= 0));
        }
    }
    Ok(None)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Bounded random inputs: no parser may panic on odd kernel data.
    #[test]
    fn parsers_never_panic() {
        let mut x: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = || {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x
        };
        let names: HashMap<u32, String> = [(1, "lo".to_string())].into();
        for _ in 0..20_000 {
            let len = (next() % 160) as usize;
            let mut buf: Vec<u8> = (0..len).map(|_| next() as u8).collect();
            // Make some attribute headers plausible so nested parsing is exercised.
            if len > 20 {
                let alen = (next() % (len as u64 - 16)) as u16 + 4;
                buf[16..18].copy_from_slice(&alen.to_ne_bytes());
            }
            let _ = parse_link(&buf);
            let _ = parse_route(&buf, AF_INET, &names);
            let _ = parse_route(&buf, AF_INET6, &names);
            let _ = parse_rule(&buf, "inet");
            let _ = crate::ct::stats(&String::from_utf8_lossy(&buf));
        }
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
