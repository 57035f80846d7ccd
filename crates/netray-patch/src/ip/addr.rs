//! `ip addr add|del A/N dev DEV [noprefixroute] [scope S]`, with the kernel routes an
//! address brings (local and broadcast routes in table local, the prefix route in main).

use std::net::IpAddr;

use ipnet::IpNet;
use netray_snapshot::{Address, NetnsSnapshot, Route, RouteType};

use super::{Verb, insert_route, verb};
use crate::util::{self, Fam, next};
use crate::{Ctx, ObjectKind, Out, R, exists, invalid, not_found, unsupported};

use super::route::{fmt_route, route_id};

/// An address as `ip addr` prints it.
pub fn fmt_addr(a: &Address) -> String {
    let fam = if a.addr.addr().is_ipv4() {
        "inet"
    } else {
        "inet6"
    };
    let mut s = format!("{fam} {} scope {} dev {}", a.addr, a.scope, a.dev);
    for f in &a.flags {
        s.push(' ');
        s.push_str(f);
    }
    s
}

fn kroute(
    table: u32,
    dst: IpNet,
    t: RouteType,
    scope: &str,
    src: Option<IpAddr>,
    dev: &str,
    metric: u32,
) -> Route {
    Route {
        table,
        dst,
        src: None,
        route_type: t,
        protocol: "kernel".into(),
        scope: scope.into(),
        prefsrc: src,
        metric,
        tos: 0,
        gateway: None,
        dev: Some(dev.into()),
        flags: Vec::new(),
        multipath: Vec::new(),
        mtu: None,
    }
}

/// The routes the kernel creates for address `a` on an up device.
pub fn kernel_routes(a: &Address) -> Vec<Route> {
    let ip = a.addr.addr();
    let secondary = a.flags.iter().any(|f| f == "secondary");
    let noprefix = a.flags.iter().any(|f| f == "noprefixroute");
    let mut v = Vec::new();
    match a.addr {
        IpNet::V4(n) => {
            let local = if ip.is_loopback() && n.prefix_len() < 32 {
                IpNet::V4(n.trunc())
            } else {
                IpNet::from(ip)
            };
            v.push(kroute(
                255,
                IpNet::from(ip),
                RouteType::Local,
                "host",
                Some(ip),
                &a.dev,
                0,
            ));
            if local != IpNet::from(ip) {
                v.push(kroute(
                    255,
                    local,
                    RouteType::Local,
                    "host",
                    Some(ip),
                    &a.dev,
                    0,
                ));
            }
            if n.prefix_len() < 31 && !secondary {
                v.push(kroute(
                    255,
                    IpNet::from(IpAddr::V4(n.broadcast())),
                    RouteType::Broadcast,
                    "link",
                    Some(ip),
                    &a.dev,
                    0,
                ));
            }
            if n.prefix_len() < 32 && !secondary && !noprefix && !ip.is_loopback() {
                v.push(kroute(
                    254,
                    IpNet::V4(n.trunc()),
                    RouteType::Unicast,
                    "link",
                    Some(ip),
                    &a.dev,
                    0,
                ));
            }
        }
        IpNet::V6(n) => {
            v.push(kroute(
                255,
                IpNet::from(ip),
                RouteType::Local,
                "global",
                None,
                &a.dev,
                0,
            ));
            if n.prefix_len() < 128 && !noprefix {
                v.push(kroute(
                    254,
                    IpNet::V6(n.trunc()),
                    RouteType::Unicast,
                    "global",
                    None,
                    &a.dev,
                    256,
                ));
            }
        }
    }
    v
}

pub fn run(ctx: &mut Ctx<'_>, fam: Fam, args: &[String]) -> R<Out> {
    let v = verb("address", args.first())?;
    if !matches!(v, Verb::Add | Verb::Del) {
        return Err(unsupported("`ip addr` supports add and del only"));
    }
    let (mut local, mut dev, mut scope, mut noprefix) = (None, None, None, false);
    let mut it = args[1..].iter();
    while let Some(w) = it.next() {
        let w = w.as_str();
        match w {
            "dev" => dev = Some(next(&mut it, w)?.to_string()),
            "scope" => scope = Some(util::scope(next(&mut it, w)?)?),
            "noprefixroute" => noprefix = true,
            "brd" | "broadcast" => {
                let b = next(&mut it, w)?;
                if b != "+" {
                    return Err(unsupported(format!(
                        "`ip addr … {w} {b}`: only `brd +` (the computed broadcast) is supported"
                    )));
                }
            }
            "peer" | "label" | "valid_lft" | "preferred_lft" | "home" | "nodad" | "mngtmpaddr"
            | "autojoin" | "anycast" | "metric" | "optimistic" | "proto" => {
                return Err(unsupported(format!(
                    "`ip addr` option `{w}` is not supported"
                )));
            }
            _ => {
                let w = if w == "local" { next(&mut it, w)? } else { w };
                if local.is_some() {
                    return Err(invalid(format!("`ip addr`: unexpected `{w}`")));
                }
                local = Some(w.to_string());
            }
        }
    }
    let local = local.ok_or_else(|| invalid("`ip addr`: no address given"))?;
    let dev =
        dev.ok_or_else(|| invalid("Not enough information: \"dev\" argument is required."))?;
    let wildcard = !local.contains('/');
    let net = match local.split_once('/') {
        Some((a, l)) => {
            let a = util::addr(a, "address")?;
            let l: u8 = l
                .parse()
                .map_err(|_| invalid(format!("`{local}`: bad prefix length")))?;
            IpNet::new(a, l).map_err(|_| invalid(format!("`{local}`: bad prefix length")))?
        }
        None => IpNet::from(util::addr(&local, "address")?),
    };
    fam.check(&net.addr(), "address")?;
    let ns = ctx.ns();
    let Some(link) = ns.link(&dev) else {
        return Err(invalid(format!("Cannot find device \"{dev}\"")));
    };
    let up = link.is_up();
    let mut out = Out::default();
    if v == Verb::Del {
        let pos = ns.addresses.iter().position(|a| {
            a.dev == dev
                && a.addr.addr() == net.addr()
                && (wildcard || a.addr.prefix_len() == net.prefix_len())
        });
        let Some(i) = pos else {
            return Err(not_found(format!(
                "RTNETLINK answers: Cannot assign requested address (no address {local} on {dev})"
            )));
        };
        let old = ns.addresses.remove(i);
        out.change(
            ObjectKind::Address,
            format!("{} dev {dev}", old.addr),
            Some(fmt_addr(&old)),
            None,
        );
        if wildcard {
            out.notes.push(format!(
                "no prefix length given: deleted the first address {} on {dev} whatever its length, as ip does",
                net.addr()
            ));
        }
        let mut gone = vec![old.clone()];
        // Without promote_secondaries the kernel deletes the secondaries of a primary.
        if old.addr.addr().is_ipv4() && !old.flags.iter().any(|f| f == "secondary") {
            let promote = ns
                .sysctl(&format!(
                    "net.ipv4.conf.{}.promote_secondaries",
                    dev.replace('.', "/")
                ))
                .is_some_and(|v| v.trim() == "1");
            let sec: Vec<usize> = ns
                .addresses
                .iter()
                .enumerate()
                .filter(|(_, a)| {
                    a.dev == dev
                        && a.flags.iter().any(|f| f == "secondary")
                        && a.addr.trunc() == old.addr.trunc()
                })
                .map(|(i, _)| i)
                .collect();
            if promote && !sec.is_empty() {
                return Err(unsupported(
                    "deleting a primary address with promote_secondaries=1 is not supported",
                ));
            }
            for &i in sec.iter().rev() {
                let a = ns.addresses.remove(i);
                out.change(
                    ObjectKind::Address,
                    format!("{} dev {dev}", a.addr),
                    Some(fmt_addr(&a)),
                    None,
                );
                gone.push(a);
            }
        }
        for a in &gone {
            remove_kernel_routes(ns, a, &mut out);
        }
        return Ok(out);
    }
    if ns.addresses.iter().any(|a| a.dev == dev && a.addr == net) {
        return Err(exists(format!(
            "RTNETLINK answers: File exists ({net} on {dev})"
        )));
    }
    let ip = net.addr();
    let secondary = ip.is_ipv4()
        && ns.addresses.iter().any(|a| {
            a.dev == dev
                && a.addr.addr().is_ipv4()
                && a.addr.trunc() == net.trunc()
                && a.addr.contains(&ip)
        });
    let mut flags = Vec::new();
    if secondary {
        flags.push("secondary".to_string());
    }
    flags.push("permanent".to_string());
    if noprefix {
        flags.push("noprefixroute".to_string());
    }
    let scope = scope.unwrap_or_else(|| {
        match ip {
            IpAddr::V4(a) if a.is_loopback() => "host",
            IpAddr::V6(a) if a.is_loopback() => "host",
            IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80 => "link",
            _ => "global",
        }
        .to_string()
    });
    let a = Address {
        dev: dev.clone(),
        addr: net,
        peer: None,
        scope,
        flags,
    };
    out.change(
        ObjectKind::Address,
        format!("{net} dev {dev}"),
        None,
        Some(fmt_addr(&a)),
    );
    // After the device's last address of the same family.
    let pos = ns
        .addresses
        .iter()
        .rposition(|x| x.dev == dev && x.addr.addr().is_ipv4() == ip.is_ipv4())
        .map(|i| i + 1)
        .unwrap_or(ns.addresses.len());
    ns.addresses.insert(pos, a.clone());
    if up {
        add_kernel_routes(ns, &a, &mut out);
    } else {
        out.notes.push(format!(
            "`{dev}` is down: its kernel routes appear when it comes up"
        ));
    }
    Ok(out)
}

/// Add the kernel routes of `a` that are missing.
pub fn add_kernel_routes(ns: &mut NetnsSnapshot, a: &Address, out: &mut Out) {
    for r in kernel_routes(a) {
        let exists = ns.routes.iter().any(|x| {
            x.table == r.table
                && x.dst == r.dst
                && x.route_type == r.route_type
                && x.dev == r.dev
                && x.metric == r.metric
        });
        if !exists {
            out.change(ObjectKind::Route, route_id(&r), None, Some(fmt_route(&r)));
            insert_route(ns, r);
        }
    }
}

/// Remove the kernel routes of `a` that no remaining address needs.
pub fn remove_kernel_routes(ns: &mut NetnsSnapshot, a: &Address, out: &mut Out) {
    let still: Vec<Route> = ns
        .addresses
        .iter()
        .filter(|x| x.dev == a.dev)
        .flat_map(kernel_routes)
        .collect();
    for r in kernel_routes(a) {
        if still
            .iter()
            .any(|s| s.dst == r.dst && s.table == r.table && s.route_type == r.route_type)
        {
            continue;
        }
        if let Some(i) = ns.routes.iter().position(|x| {
            x.table == r.table
                && x.dst == r.dst
                && x.route_type == r.route_type
                && x.dev == r.dev
                && x.protocol == "kernel"
                && x.metric == r.metric
        }) {
            let old = ns.routes.remove(i);
            out.change(
                ObjectKind::Route,
                route_id(&old),
                Some(fmt_route(&old)),
                None,
            );
        }
    }
}
