//! `ip route add|del|replace|change|append|prepend`.

use std::net::IpAddr;

use ipnet::IpNet;
use netray_snapshot::{NetnsSnapshot, NextHop, Route, RouteType};

use super::{Verb, verb};
use crate::util::{self, Fam, matches, next};
use crate::{Ctx, ObjectKind, Out, R, exists, invalid, not_found, unsupported};

/// A route as `ip route show table all` prints it.
pub fn fmt_route(r: &Route) -> String {
    let mut s = String::new();
    if r.route_type != RouteType::Unicast {
        s.push_str(type_name(r.route_type));
        s.push(' ');
    }
    if r.dst.prefix_len() == 0 {
        s.push_str("default");
    } else if r.dst.prefix_len() == r.dst.max_prefix_len() {
        s.push_str(&r.dst.addr().to_string());
    } else {
        s.push_str(&r.dst.to_string());
    }
    if let Some(src) = &r.src {
        s.push_str(&format!(" from {src}"));
    }
    if r.tos != 0 {
        s.push_str(&format!(" tos 0x{:02x}", r.tos));
    }
    if let Some(g) = &r.gateway {
        s.push_str(&format!(" via {g}"));
    }
    if let Some(d) = &r.dev {
        s.push_str(&format!(" dev {d}"));
    }
    if r.table != 254 {
        s.push_str(&format!(" table {}", util::table_name(r.table)));
    }
    if r.protocol != "boot" && r.protocol != "unspec" {
        s.push_str(&format!(" proto {}", r.protocol));
    }
    if r.scope != "global" {
        s.push_str(&format!(" scope {}", r.scope));
    }
    if let Some(p) = &r.prefsrc {
        s.push_str(&format!(" src {p}"));
    }
    if r.metric != 0 {
        s.push_str(&format!(" metric {}", r.metric));
    }
    for f in &r.flags {
        s.push(' ');
        s.push_str(f);
    }
    if let Some(m) = r.mtu {
        s.push_str(&format!(" mtu {m}"));
    }
    for h in &r.multipath {
        s.push_str(" nexthop");
        if let Some(g) = &h.gateway {
            s.push_str(&format!(" via {g}"));
        }
        if let Some(d) = &h.dev {
            s.push_str(&format!(" dev {d}"));
        }
        s.push_str(&format!(" weight {}", h.weight));
        for f in &h.flags {
            s.push(' ');
            s.push_str(f);
        }
    }
    s
}

/// Identity of a route in the kernel FIB: table, destination, tos, metric.
pub fn route_id(r: &Route) -> String {
    let mut s = format!("table {} {}", util::table_name(r.table), r.dst);
    if let Some(src) = &r.src {
        s.push_str(&format!(" from {src}"));
    }
    if r.tos != 0 {
        s.push_str(&format!(" tos 0x{:02x}", r.tos));
    }
    s.push_str(&format!(" metric {}", r.metric));
    s
}

fn type_name(t: RouteType) -> &'static str {
    match t {
        RouteType::Unicast => "unicast",
        RouteType::Local => "local",
        RouteType::Broadcast => "broadcast",
        RouteType::Anycast => "anycast",
        RouteType::Multicast => "multicast",
        RouteType::Blackhole => "blackhole",
        RouteType::Unreachable => "unreachable",
        RouteType::Prohibit => "prohibit",
        RouteType::Throw => "throw",
        RouteType::Nat => "nat",
        RouteType::Unspec => "unspec",
    }
}

fn parse_type(s: &str) -> Option<RouteType> {
    Some(match s {
        "unicast" => RouteType::Unicast,
        "local" => RouteType::Local,
        "broadcast" => RouteType::Broadcast,
        "anycast" => RouteType::Anycast,
        "multicast" => RouteType::Multicast,
        "blackhole" => RouteType::Blackhole,
        "unreachable" => RouteType::Unreachable,
        "prohibit" => RouteType::Prohibit,
        "throw" => RouteType::Throw,
        "nat" => RouteType::Nat,
        _ => return None,
    })
}

/// Parsed arguments; `None` means "not given".
#[derive(Default, Debug)]
struct Args {
    dst: Option<String>,
    rtype: Option<RouteType>,
    src: Option<String>,
    gateway: Option<IpAddr>,
    dev: Option<String>,
    prefsrc: Option<IpAddr>,
    metric: Option<u32>,
    tos: Option<u8>,
    table: Option<u32>,
    proto: Option<String>,
    scope: Option<String>,
    onlink: bool,
    mtu: Option<u32>,
    hops: Vec<Hop>,
}

#[derive(Default, Debug)]
struct Hop {
    gateway: Option<IpAddr>,
    dev: Option<String>,
    weight: u32,
    onlink: bool,
}

fn gw_arg(it: &mut std::slice::Iter<'_, String>) -> R<IpAddr> {
    let mut a = next(it, "via")?;
    if a == "inet" || a == "inet6" {
        a = next(it, "via")?;
    }
    util::addr(a, "via")
}

fn parse(args: &[String]) -> R<Args> {
    let pos = args
        .iter()
        .position(|w| w == "nexthop")
        .unwrap_or(args.len());
    let mut a = parse_main(&args[..pos])?;
    parse_hops(&mut a, &args[pos..])?;
    Ok(a)
}

fn parse_main(args: &[String]) -> R<Args> {
    let mut a = Args::default();
    let mut it = args.iter();
    while let Some(w) = it.next() {
        let w = w.as_str();
        match w {
            "src" => a.prefsrc = Some(util::addr(next(&mut it, w)?, "src")?),
            "via" => a.gateway = Some(gw_arg(&mut it)?),
            "from" => a.src = Some(next(&mut it, w)?.to_string()),
            "tos" | "dsfield" => {
                let v = next(&mut it, w)?;
                let n = u8::from_str_radix(v.trim_start_matches("0x"), 16)
                    .map_err(|_| invalid(format!("tos `{v}` is not valid")))?;
                a.tos = Some(n);
            }
            "preference" => a.metric = Some(util::u32_c(next(&mut it, w)?, "metric")?),
            _ if matches(w, "metric") || matches(w, "priority") => {
                a.metric = Some(util::u32_c(next(&mut it, w)?, "metric")?)
            }
            "scope" => a.scope = Some(util::scope(next(&mut it, w)?)?),
            "dev" | "oif" => a.dev = Some(next(&mut it, w)?.to_string()),
            "mtu" => {
                let mut v = next(&mut it, w)?;
                if v == "lock" {
                    v = next(&mut it, w)?;
                }
                a.mtu = Some(util::u32_c(v, "mtu")?);
            }
            "onlink" => a.onlink = true,
            _ if matches(w, "protocol") => a.proto = Some(util::proto(next(&mut it, w)?)?),
            _ if matches(w, "table") => a.table = Some(util::table(next(&mut it, w)?)?),
            "expires" | "as" | "vrf" | "realm" | "realms" | "pref" | "nhid" | "encap"
            | "advmss" | "rtt" | "rttvar" | "reordering" | "window" | "cwnd" | "initcwnd"
            | "initrwnd" | "ssthresh" | "features" | "quickack" | "congctl" | "rto_min"
            | "hoplimit" | "fastopen_no_cookie" | "ttl-propagate" | "cache" | "cloned" => {
                return Err(unsupported(format!(
                    "`ip route` option `{w}` is not supported"
                )));
            }
            _ => {
                let mut w = w;
                if w == "to" {
                    w = next(&mut it, "to")?;
                }
                if !w.starts_with(|c: char| c.is_ascii_digit())
                    && let Some(t) = parse_type(w)
                {
                    a.rtype = Some(t);
                    w = next(&mut it, "route type")?;
                }
                if a.dst.is_some() {
                    return Err(invalid(format!(
                        "`ip route`: unexpected `{w}` (destination already given as `{}`)",
                        a.dst.as_deref().unwrap_or("")
                    )));
                }
                if w.starts_with(|c: char| c.is_ascii_alphabetic())
                    && !matches!(w, "default" | "all" | "any")
                    // An IPv6 destination may start with a letter (`fd00::/64`).
                    && w.split('/').next().unwrap_or(w).parse::<IpAddr>().is_err()
                {
                    return Err(unsupported(format!(
                        "`ip route`: `{w}` is neither a known option nor a destination"
                    )));
                }
                a.dst = Some(w.to_string());
            }
        }
    }
    Ok(a)
}

/// `nexthop via A dev D weight W [onlink]`, repeated.
fn parse_hops(a: &mut Args, args: &[String]) -> R<()> {
    let mut it = args.iter().peekable();
    while let Some(w) = it.next() {
        if w != "nexthop" {
            return Err(unsupported(format!(
                "`ip route`: after `nexthop`, `{w}` is not supported (only via, dev, weight, onlink)"
            )));
        }
        let mut h = Hop {
            weight: 1,
            ..Hop::default()
        };
        while let Some(x) = it.peek() {
            if *x == "nexthop" {
                break;
            }
            let x = it.next().unwrap().as_str();
            let mut arg = || {
                it.next()
                    .map(String::as_str)
                    .ok_or_else(|| invalid(format!("nexthop option `{x}` needs an argument")))
            };
            match x {
                "via" => {
                    let mut v = arg()?;
                    if v == "inet" || v == "inet6" {
                        v = arg()?;
                    }
                    h.gateway = Some(util::addr(v, "nexthop via")?);
                }
                "dev" => h.dev = Some(arg()?.to_string()),
                "weight" => {
                    let v = arg()?;
                    let n = util::u32_c(v, "weight")?;
                    if !(1..=256).contains(&n) {
                        return Err(invalid(format!("nexthop weight `{v}` is not in 1..256")));
                    }
                    h.weight = n;
                }
                "onlink" => h.onlink = true,
                other => {
                    return Err(unsupported(format!(
                        "nexthop option `{other}` is not supported (only via, dev, weight, onlink)"
                    )));
                }
            }
        }
        a.hops.push(h);
    }
    Ok(())
}

/// The family the command is about.
fn family(a: &Args, fam: Fam) -> R<Fam> {
    let mut f = fam;
    let mut seen: Vec<IpAddr> = Vec::new();
    seen.extend(a.gateway);
    seen.extend(a.prefsrc);
    seen.extend(a.hops.iter().filter_map(|h| h.gateway));
    if let Some(d) = &a.dst
        && let Ok(n) = util::prefix_trunc(d, Fam::Any, "destination")
        && !matches!(d.as_str(), "default" | "all" | "any")
    {
        seen.push(n.addr());
    }
    for x in seen {
        f = match (f, x.is_ipv4()) {
            (Fam::Any, true) => Fam::V4,
            (Fam::Any, false) => Fam::V6,
            (Fam::V4, true) | (Fam::V6, false) => f,
            _ => {
                return Err(invalid(format!(
                    "`{x}` is not of the route's address family"
                )));
            }
        };
    }
    Ok(if f == Fam::Any { Fam::V4 } else { f })
}

pub fn run(ctx: &mut Ctx<'_>, fam: Fam, args: &[String]) -> R<Out> {
    let v = verb("route", args.first())?;
    if matches!(v, Verb::Prepend | Verb::Append) {
        return Err(unsupported(
            "`ip route append|prepend` (a second route with the same key) is not supported; use add or replace",
        ));
    }
    let a = parse(&args[1..])?;
    let fam = family(&a, fam)?;
    let Some(dst) = &a.dst else {
        return Err(invalid("`ip route`: no destination prefix given"));
    };
    let dst = util::prefix(dst, fam, "destination")?;
    let src = match &a.src {
        Some(s) => Some(util::prefix(s, fam, "from")?),
        None => None,
    };
    let is_local_type = matches!(
        a.rtype,
        Some(RouteType::Local | RouteType::Broadcast | RouteType::Nat | RouteType::Anycast)
    );
    let table = a.table.unwrap_or(if is_local_type { 255 } else { 254 });
    let mut out = Out::default();
    if v == Verb::Del {
        return delete(ctx, &a, fam, dst, src, table, out);
    }
    let rtype = a.rtype.unwrap_or(RouteType::Unicast);
    let has_nh = a.gateway.is_some() || !a.hops.is_empty();
    let scope = match &a.scope {
        Some(s) => s.clone(),
        None => match rtype {
            RouteType::Local | RouteType::Nat => "host".into(),
            RouteType::Broadcast | RouteType::Multicast | RouteType::Anycast => "link".into(),
            RouteType::Unicast if !has_nh => "link".into(),
            _ => "global".into(),
        },
    };
    let metric = a
        .metric
        .unwrap_or(0)
        .max(if fam == Fam::V6 && a.metric.unwrap_or(0) == 0 {
            1024
        } else {
            0
        });
    let ns = ctx.ns_ref();
    let mut r = Route {
        table,
        dst,
        src,
        route_type: rtype,
        protocol: a.proto.clone().unwrap_or_else(|| "boot".into()),
        scope,
        prefsrc: a.prefsrc,
        metric,
        tos: a.tos.unwrap_or(0),
        gateway: a.gateway,
        dev: a.dev.clone(),
        flags: if a.onlink {
            vec!["onlink".into()]
        } else {
            Vec::new()
        },
        multipath: Vec::new(),
        mtu: a.mtu,
    };
    if let Some(p) = &a.prefsrc
        && !ns.addresses.iter().any(|x| x.addr.addr() == *p)
    {
        return Err(invalid(format!(
            "Error: Invalid prefsrc address ({p} is not an address of this namespace)"
        )));
    }
    match rtype {
        RouteType::Unicast
        | RouteType::Local
        | RouteType::Broadcast
        | RouteType::Multicast
        | RouteType::Anycast => {
            if !a.hops.is_empty() {
                if a.gateway.is_some() || a.dev.is_some() {
                    return Err(unsupported(
                        "`ip route`: `via`/`dev` together with `nexthop` is not supported",
                    ));
                }
                for h in &a.hops {
                    let dev = check_nexthop(ns, fam, h.gateway, h.dev.as_deref(), h.onlink)?;
                    r.multipath.push(NextHop {
                        gateway: h.gateway,
                        dev: Some(dev),
                        weight: h.weight,
                        flags: if h.onlink {
                            vec!["onlink".into()]
                        } else {
                            Vec::new()
                        },
                    });
                }
            } else {
                if a.gateway.is_none() && a.dev.is_none() {
                    return Err(invalid(
                        "`ip route`: a unicast route needs `via GATEWAY` or `dev DEVICE`",
                    ));
                }
                if rtype != RouteType::Unicast && a.dev.is_none() {
                    return Err(invalid(format!(
                        "`ip route`: a {} route needs `dev DEVICE`",
                        type_name(rtype)
                    )));
                }
                r.dev = Some(check_nexthop(
                    ns,
                    fam,
                    a.gateway,
                    a.dev.as_deref(),
                    a.onlink,
                )?);
            }
        }
        RouteType::Blackhole | RouteType::Unreachable | RouteType::Prohibit | RouteType::Throw => {
            if a.gateway.is_some() || !a.hops.is_empty() {
                return Err(invalid(format!(
                    "`ip route`: a {} route takes no gateway",
                    type_name(rtype)
                )));
            }
            if let Some(d) = &a.dev {
                dev_exists(ns, d)?;
            }
        }
        _ => {
            return Err(unsupported(format!(
                "route type `{}` is not supported",
                type_name(rtype)
            )));
        }
    }
    let same = |x: &Route| {
        x.table == r.table
            && x.dst == r.dst
            && x.src == r.src
            && x.tos == r.tos
            && x.metric == r.metric
    };
    let ns = ctx.ns();
    let existing = ns.routes.iter().position(same);
    match (v, existing) {
        (Verb::Add, Some(i)) => {
            return Err(exists(format!(
                "RTNETLINK answers: File exists (`{}`)",
                fmt_route(&ns.routes[i])
            )));
        }
        (Verb::Change, None) => {
            return Err(not_found(format!(
                "RTNETLINK answers: No such file or directory (no route {})",
                route_id(&r)
            )));
        }
        (Verb::Replace | Verb::Change, Some(i)) => {
            let before = std::mem::replace(&mut ns.routes[i], r.clone());
            if before != r {
                out.change(
                    ObjectKind::Route,
                    route_id(&r),
                    Some(fmt_route(&before)),
                    Some(fmt_route(&r)),
                );
            }
        }
        _ => {
            out.change(ObjectKind::Route, route_id(&r), None, Some(fmt_route(&r)));
            insert_route(ns, r);
        }
    }
    Ok(out)
}

/// Insert keeping the snapshot's order (v4 before v6, by table, then destination).
pub fn insert_route(ns: &mut NetnsSnapshot, r: Route) {
    let key = |x: &Route| {
        (
            x.dst.addr().is_ipv6(),
            x.table,
            x.dst.addr(),
            x.dst.prefix_len(),
        )
    };
    let k = key(&r);
    let pos = ns
        .routes
        .iter()
        .position(|x| key(x) > k)
        .unwrap_or(ns.routes.len());
    ns.routes.insert(pos, r);
}

fn dev_exists(ns: &NetnsSnapshot, d: &str) -> R<()> {
    if ns.link(d).is_none() {
        return Err(invalid(format!("Cannot find device \"{d}\"")));
    }
    Ok(())
}

/// Check a next hop as the kernel does and return its device.
fn check_nexthop(
    ns: &NetnsSnapshot,
    fam: Fam,
    gw: Option<IpAddr>,
    dev: Option<&str>,
    onlink: bool,
) -> R<String> {
    if let Some(d) = dev {
        dev_exists(ns, d)?;
        if !ns.link(d).is_some_and(|l| l.is_up()) {
            return Err(invalid(format!(
                "Error: Nexthop device is not up (`{d}` is down)"
            )));
        }
    }
    let Some(gw) = gw else {
        return dev
            .map(str::to_string)
            .ok_or_else(|| invalid("a next hop needs `via` or `dev`"));
    };
    fam.check(&gw, "gateway")?;
    if onlink {
        return dev
            .map(str::to_string)
            .ok_or_else(|| invalid("Error: Nexthop device required for onlink"));
    }
    // The gateway must be on a link: covered by a link- or host-scoped route (a connected
    // route), on the given device if one is given.
    let connected = ns.routes.iter().filter(|r| {
        (r.table == 254 || r.table == 255)
            && r.gateway.is_none()
            && r.multipath.is_empty()
            && matches!(r.route_type, RouteType::Unicast | RouteType::Local)
            && r.scope != "global"
            && r.dst.contains(&gw)
            && r.dev.is_some()
            && dev.is_none_or(|d| r.dev.as_deref() == Some(d))
    });
    let best = connected.max_by_key(|r| r.dst.prefix_len());
    let link_local_v6 = matches!(gw, IpAddr::V6(a) if a.segments()[0] & 0xffc0 == 0xfe80);
    match best {
        Some(r) => Ok(r.dev.clone().unwrap()),
        None if link_local_v6 && dev.is_some() => Ok(dev.unwrap().to_string()),
        None => Err(invalid(format!(
            "Error: Nexthop has invalid gateway ({gw} is not on a connected route{}; add `onlink` to force it)",
            dev.map(|d| format!(" of `{d}`")).unwrap_or_default()
        ))),
    }
}

fn delete(
    ctx: &mut Ctx<'_>,
    a: &Args,
    _fam: Fam,
    dst: IpNet,
    src: Option<IpNet>,
    table: u32,
    mut out: Out,
) -> R<Out> {
    let ns = ctx.ns();
    let hops_match = |r: &Route| {
        a.hops.is_empty()
            || (r.multipath.len() == a.hops.len()
                && r.multipath.iter().zip(&a.hops).all(|(x, h)| {
                    h.gateway.is_none_or(|g| x.gateway == Some(g))
                        && h.dev.as_ref().is_none_or(|d| x.dev.as_ref() == Some(d))
                        && x.weight == h.weight
                }))
    };
    let m = |r: &Route| {
        r.table == table
            && r.dst == dst
            && (src.is_none() || r.src == src)
            && a.tos.is_none_or(|t| r.tos == t)
            && a.metric.is_none_or(|m| r.metric == m)
            && a.rtype.is_none_or(|t| r.route_type == t)
            && a.scope.as_ref().is_none_or(|s| &r.scope == s)
            && a.proto.as_ref().is_none_or(|p| &r.protocol == p)
            && a.prefsrc.is_none_or(|p| r.prefsrc == Some(p))
            && a.gateway.is_none_or(|g| {
                r.gateway == Some(g) || r.multipath.iter().any(|h| h.gateway == Some(g))
            })
            && a.dev.as_ref().is_none_or(|d| {
                r.dev.as_ref() == Some(d) || r.multipath.iter().any(|h| h.dev.as_ref() == Some(d))
            })
            && hops_match(r)
    };
    let Some(i) = ns.routes.iter().position(m) else {
        return Err(not_found(format!(
            "RTNETLINK answers: No such process (no route {dst} in table {} matches)",
            util::table_name(table)
        )));
    };
    let r = ns.routes.remove(i);
    out.change(ObjectKind::Route, route_id(&r), Some(fmt_route(&r)), None);
    Ok(out)
}
