//! `ip link set [dev] DEV [up|down] [mtu N] [address MAC]`.
//!
//! Down, as the kernel does: clears `UP`/`LOWER_UP`, removes the device's routes (a multipath
//! route loses that hop, marked `dead linkdown`; it goes when no hop is left) and its
//! neighbours, and takes the carrier off a veth peer collected in the same node. Up: sets
//! `UP`, carrier from the veth peer (or from a bridge's ports), and restores the kernel routes of
//! the device's addresses. Routes an operator had added by hand do not come back, as in the
//! kernel.

use netray_snapshot::{Link, LinkKind, NetnsSnapshot};

use super::addr::add_kernel_routes;
use super::route::{fmt_route, route_id};
use crate::util::{self, matches, next};
use crate::{Ctx, ObjectKind, Out, R, invalid, unsupported};

/// A link as `ip link` prints its state.
pub fn fmt_link(l: &Link) -> String {
    format!(
        "{}: <{}> mtu {} state {}{}",
        l.name,
        l.flags.join(","),
        l.mtu,
        l.operstate.to_uppercase(),
        l.mac
            .as_ref()
            .map(|m| format!(" link/ether {m}"))
            .unwrap_or_default()
    )
}

pub fn run(ctx: &mut Ctx<'_>, args: &[String]) -> R<Out> {
    match args.first().map(String::as_str) {
        Some(w) if matches(w, "set") => {}
        Some(w) if matches(w, "show") || matches(w, "list") => {
            return Err(invalid(format!(
                "`ip link {w}` only reads, changes nothing"
            )));
        }
        Some(w) => {
            return Err(unsupported(format!(
                "`ip link {w}` is not supported (only `ip link set`)"
            )));
        }
        None => return Err(invalid("`ip link` without a verb only lists")),
    }
    let mut dev: Option<String> = None;
    let (mut state, mut mtu, mut mac) = (None, None, None);
    // `type bridge nf_call_iptables 0|1`: the bridge's own br_netfilter switch.
    let mut nf_call: Option<bool> = None;
    let mut it = args[1..].iter();
    while let Some(w) = it.next() {
        let w = w.as_str();
        match w {
            "dev" => dev = Some(next(&mut it, w)?.to_string()),
            "up" => state = Some(true),
            "down" => state = Some(false),
            "mtu" => {
                let v = next(&mut it, w)?;
                mtu = Some(util::u32_c(v, "mtu")?);
            }
            "address" => mac = Some(util::mac(next(&mut it, w)?)?),
            "type" => {
                let kind = next(&mut it, w)?;
                if kind != "bridge" {
                    return Err(unsupported(format!(
                        "`ip link set … type {kind}` is not supported (only `type bridge nf_call_iptables 0|1`)"
                    )));
                }
                let opt = next(&mut it, kind)?;
                if opt != "nf_call_iptables" {
                    return Err(unsupported(format!(
                        "`ip link set … type bridge {opt}` is not supported (only nf_call_iptables)"
                    )));
                }
                nf_call = Some(match next(&mut it, opt)? {
                    "0" => false,
                    "1" => true,
                    v => return Err(invalid(format!("nf_call_iptables takes 0 or 1, not `{v}`"))),
                });
            }
            "arp" | "multicast" | "allmulticast" | "promisc" | "master" | "nomaster" | "name"
            | "alias" | "txqueuelen" | "qlen" | "netns" | "vf" | "xdp" | "group" | "carrier"
            | "trailers" | "dynamic" | "broadcast" | "brd" | "peer" | "link-netns" => {
                return Err(unsupported(format!("`ip link set … {w}` is not supported")));
            }
            _ if dev.is_none() => dev = Some(w.to_string()),
            _ => {
                return Err(unsupported(format!(
                    "`ip link set`: `{w}` is not supported"
                )));
            }
        }
    }
    let dev =
        dev.ok_or_else(|| invalid("Not enough of information: \"dev\" argument is required."))?;
    if state.is_none() && mtu.is_none() && mac.is_none() && nf_call.is_none() {
        return Err(invalid(
            "`ip link set`: nothing to change (up, down, mtu, address, type bridge nf_call_iptables)",
        ));
    }
    let ni = ctx.ns;
    let Some(li) = ctx.ns_ref().links.iter().position(|l| l.name == dev) else {
        return Err(invalid(format!("Cannot find device \"{dev}\"")));
    };
    let mut out = Out::default();
    let before = ctx.ns_ref().links[li].clone();
    if let Some(m) = mtu {
        let min = 68;
        if m < min || m > 65535 {
            return Err(invalid(format!(
                "Error: mtu {m} is out of range for `{dev}` ({min}..65535)"
            )));
        }
        ctx.ns().links[li].mtu = m;
    }
    if let Some(on) = nf_call {
        match &mut ctx.ns().links[li].kind {
            LinkKind::Bridge {
                nf_call_iptables, ..
            } => *nf_call_iptables = on,
            _ => return Err(invalid(format!("`{dev}` is not a bridge"))),
        }
    }
    if let Some(m) = &mac {
        if matches!(before.kind, LinkKind::Loopback) || before.mac.is_none() {
            return Err(invalid(format!("`{dev}` has no link-layer address to set")));
        }
        let old = before.mac.clone();
        ctx.ns().links[li].mac = Some(m.clone());
        // The device's own (local) FDB entries follow its address.
        for e in ctx.ns().fdb.iter_mut() {
            if e.dev == dev
                && Some(&e.mac) == old.as_ref()
                && e.state.iter().any(|s| s == "permanent")
            {
                e.mac = m.clone();
            }
        }
    }
    match state {
        Some(false) if before.is_up() => down(ctx.node, ni, li, &mut out),
        Some(true) if !before.is_up() => up(ctx.node, ni, li, &mut out),
        _ => {}
    }
    let after = ctx.ns_ref().links[li].clone();
    if after != before {
        out.changes.insert(
            0,
            crate::Change {
                kind: ObjectKind::Link,
                object: dev.clone(),
                before: Some(fmt_link(&before)),
                after: Some(fmt_link(&after)),
            },
        );
    }
    Ok(out)
}

fn set_flag(l: &mut Link, f: &str, on: bool) {
    let has = l.flags.iter().any(|x| x == f);
    if on && !has {
        // `ip` order: … UP, LOWER_UP.
        let pos = match f {
            "UP" => l
                .flags
                .iter()
                .position(|x| x == "LOWER_UP")
                .unwrap_or(l.flags.len()),
            "NO-CARRIER" => 0,
            _ => l.flags.len(),
        };
        l.flags.insert(pos, f.to_string());
    } else if !on && has {
        l.flags.retain(|x| x != f);
    }
}

/// Carrier of `l` from what the snapshot shows: a veth's peer must be up; a bridge needs an
/// up port; other kinds are assumed to have carrier.
fn carrier(node: &netray_snapshot::NodeSnapshot, ni: usize, l: &Link) -> bool {
    match &l.kind {
        LinkKind::Veth {
            peer_ifindex: Some(pi),
            peer_netns: Some(pn),
        } => node
            .namespaces
            .iter()
            .find(|n| n.id.inode == *pn)
            .and_then(|n| n.links.iter().find(|x| x.ifindex == *pi))
            .is_none_or(|p| p.is_up()),
        LinkKind::Bridge { .. } => node.namespaces[ni]
            .links
            .iter()
            .any(|p| p.master.as_deref() == Some(l.name.as_str()) && p.is_up()),
        _ => true,
    }
}

fn oper(l: &mut Link, carrier: bool) {
    // A bridge port forwards once it is up with carrier and is `disabled` otherwise (without
    // STP the kernel moves it straight to forwarding; with STP it would pass through
    // listening/learning first: not modelled, the port is put to forwarding).
    let running = l.is_up() && carrier;
    if let Some(bp) = l.bridge_port.as_mut() {
        bp.state = if running { "forwarding" } else { "disabled" }.into();
    }
    if !l.is_up() {
        l.operstate = "down".into();
        set_flag(l, "LOWER_UP", false);
        set_flag(l, "NO-CARRIER", false);
        return;
    }
    set_flag(l, "NO-CARRIER", !carrier);
    set_flag(l, "LOWER_UP", carrier);
    l.operstate = match (&l.kind, carrier) {
        (LinkKind::Loopback | LinkKind::Vxlan { .. } | LinkKind::Dummy | LinkKind::Tun, true) => {
            "unknown".into()
        }
        (_, true) => "up".into(),
        (LinkKind::Veth { .. }, false) => "lowerlayerdown".into(),
        (_, false) => "down".into(),
    };
}

/// The veth peer of `l` in this node: (namespace index, link index).
fn peer(node: &netray_snapshot::NodeSnapshot, l: &Link) -> Option<(usize, usize)> {
    let LinkKind::Veth {
        peer_ifindex: Some(pi),
        peer_netns: Some(pn),
    } = &l.kind
    else {
        return None;
    };
    let n = node.namespaces.iter().position(|n| n.id.inode == *pn)?;
    let k = node.namespaces[n]
        .links
        .iter()
        .position(|x| x.ifindex == *pi)?;
    Some((n, k))
}

fn peer_carrier(
    node: &mut netray_snapshot::NodeSnapshot,
    ni: usize,
    li: usize,
    on: bool,
    out: &mut Out,
) {
    let l = node.namespaces[ni].links[li].clone();
    let Some((pn, pk)) = peer(node, &l) else {
        return;
    };
    let before = node.namespaces[pn].links[pk].clone();
    oper(&mut node.namespaces[pn].links[pk], on);
    let after = node.namespaces[pn].links[pk].clone();
    if after != before {
        out.notes.push(format!(
            "veth peer `{}` in {} {} carrier",
            after.name,
            node.namespaces[pn].display_name(),
            if on { "regains" } else { "loses" }
        ));
        out.change(
            ObjectKind::Link,
            format!("{} (peer)", after.name),
            Some(fmt_link(&before)),
            Some(fmt_link(&after)),
        );
        set_linkdown(&mut node.namespaces[pn], &after.name, !on || !after.is_up());
    }
}

/// Mark (or clear) `linkdown` on the routes through `dev`.
fn set_linkdown(ns: &mut NetnsSnapshot, dev: &str, on: bool) {
    for r in ns.routes.iter_mut() {
        if r.dev.as_deref() == Some(dev) && r.route_type == netray_snapshot::RouteType::Unicast {
            let has = r.flags.iter().any(|f| f == "linkdown");
            if on && !has {
                r.flags.push("linkdown".into());
            } else if !on && has {
                r.flags.retain(|f| f != "linkdown");
            }
        }
    }
}

fn down(node: &mut netray_snapshot::NodeSnapshot, ni: usize, li: usize, out: &mut Out) {
    let name = node.namespaces[ni].links[li].name.clone();
    {
        let l = &mut node.namespaces[ni].links[li];
        set_flag(l, "UP", false);
        oper(l, false);
    }
    let ns = &mut node.namespaces[ni];
    let mut k = 0;
    while k < ns.routes.len() {
        if ns.routes[k].dev.as_deref() == Some(name.as_str()) {
            let old = ns.routes.remove(k);
            out.change(
                ObjectKind::Route,
                route_id(&old),
                Some(fmt_route(&old)),
                None,
            );
            continue;
        }
        let r = &mut ns.routes[k];
        if r.multipath
            .iter()
            .any(|h| h.dev.as_deref() == Some(name.as_str()))
        {
            let before = r.clone();
            for h in r.multipath.iter_mut() {
                if h.dev.as_deref() == Some(name.as_str()) {
                    for f in ["dead", "linkdown"] {
                        if !h.flags.iter().any(|x| x == f) {
                            h.flags.push(f.into());
                        }
                    }
                }
            }
            if r.multipath
                .iter()
                .all(|h| h.flags.iter().any(|f| f == "dead"))
            {
                let old = ns.routes.remove(k);
                out.change(
                    ObjectKind::Route,
                    route_id(&old),
                    Some(fmt_route(&before)),
                    None,
                );
                continue;
            }
            let after = r.clone();
            out.change(
                ObjectKind::Route,
                route_id(&after),
                Some(fmt_route(&before)),
                Some(fmt_route(&after)),
            );
        }
        k += 1;
    }
    let mut k = 0;
    while k < ns.neighbours.len() {
        if ns.neighbours[k].dev == name {
            let n = ns.neighbours.remove(k);
            out.change(
                ObjectKind::Neighbour,
                format!("{} dev {}", n.dst, n.dev),
                Some(super::neigh::fmt_neigh(&n)),
                None,
            );
        } else {
            k += 1;
        }
    }
    peer_carrier(node, ni, li, false, out);
    refresh_master(node, ni, li, out);
}

fn up(node: &mut netray_snapshot::NodeSnapshot, ni: usize, li: usize, out: &mut Out) {
    let c = {
        let l = node.namespaces[ni].links[li].clone();
        carrier(node, ni, &l)
    };
    let name = node.namespaces[ni].links[li].name.clone();
    {
        let l = &mut node.namespaces[ni].links[li];
        set_flag(l, "UP", true);
        oper(l, c);
    }
    let ns = &mut node.namespaces[ni];
    for r in ns.routes.iter_mut() {
        for h in r.multipath.iter_mut() {
            if h.dev.as_deref() == Some(name.as_str()) {
                h.flags.retain(|f| f != "dead" && f != "linkdown");
            }
        }
    }
    let addrs: Vec<_> = ns
        .addresses
        .iter()
        .filter(|a| a.dev == name)
        .cloned()
        .collect();
    for a in &addrs {
        add_kernel_routes(ns, a, out);
    }
    if addrs.iter().any(|a| a.addr.addr().is_ipv6()) {
        out.notes
            .push("IPv6: link-local and multicast routes of the device are not recreated".into());
    }
    set_linkdown(ns, &name, !c);
    // The peer sees carrier when both ends are up.
    peer_carrier(node, ni, li, true, out);
    refresh_master(node, ni, li, out);
}

/// A bridge's carrier follows its ports.
fn refresh_master(node: &mut netray_snapshot::NodeSnapshot, ni: usize, li: usize, out: &mut Out) {
    let Some(m) = node.namespaces[ni].links[li].master.clone() else {
        return;
    };
    let Some(bi) = node.namespaces[ni].links.iter().position(|l| l.name == m) else {
        return;
    };
    let before = node.namespaces[ni].links[bi].clone();
    if !before.is_up() {
        return;
    }
    let c = carrier(node, ni, &before);
    oper(&mut node.namespaces[ni].links[bi], c);
    let after = node.namespaces[ni].links[bi].clone();
    if after != before {
        out.change(
            ObjectKind::Link,
            m.clone(),
            Some(fmt_link(&before)),
            Some(fmt_link(&after)),
        );
    }
}
