//! `bridge fdb add|append|replace|del MAC dev DEV [dst IP] [vni N] [port N] [vlan V]
//! [self|master] [permanent|local|static|dynamic]`.
//!
//! iproute2's defaults: `self` when neither `self` nor `master` is given, state `permanent`
//! unless `static`/`dynamic`. A `master` entry goes into the port's bridge table (in the
//! snapshot: `master` is the bridge, no `self` flag); `permanent` there means a *local*
//! address of the bridge, `static` a forwarding entry.

use std::net::IpAddr;

use netray_snapshot::{FdbEntry, LinkKind};

use crate::util::{self, matches, next};
use crate::{Ctx, ObjectKind, Out, R, exists, invalid, not_found, unsupported};

/// An entry as `bridge fdb show` prints it.
pub fn fmt_fdb(e: &FdbEntry) -> String {
    let mut s = format!("{} dev {}", e.mac, e.dev);
    if let Some(v) = e.vlan {
        s.push_str(&format!(" vlan {v}"));
    }
    if let Some(d) = &e.dst {
        s.push_str(&format!(" dst {d}"));
    }
    if let Some(p) = e.port {
        s.push_str(&format!(" port {p}"));
    }
    if let Some(v) = e.vni {
        s.push_str(&format!(" vni {v}"));
    }
    if let Some(m) = &e.master {
        s.push_str(&format!(" master {m}"));
    }
    for f in &e.flags {
        s.push(' ');
        s.push_str(f);
    }
    for st in &e.state {
        s.push(' ');
        s.push_str(st);
    }
    s
}

pub fn run(ctx: &mut Ctx<'_>, args: &[String]) -> R<Out> {
    let mut i = 0;
    while args.get(i).is_some_and(|w| w.starts_with('-')) {
        let w = &args[i];
        match w.trim_start_matches('-') {
            "s" | "d" | "j" | "p" | "c" | "statistics" | "details" | "json" | "pretty" => {}
            "n" | "netns" => {
                return Err(unsupported(format!(
                    "`bridge {w}`: the namespace is the command's target; run the command inside it"
                )));
            }
            _ => {
                return Err(unsupported(format!(
                    "`bridge` option `{w}` is not supported"
                )));
            }
        }
        i += 1;
    }
    match args.get(i).map(String::as_str) {
        Some(o) if matches(o, "fdb") => fdb(ctx, &args[i + 1..]),
        Some(o) if matches(o, "link") => link(ctx, &args[i + 1..]),
        Some(o) => Err(unsupported(format!(
            "`bridge {o}` is not supported (only `bridge fdb` and `bridge link set`)"
        ))),
        None => Err(invalid("`bridge`: no object given")),
    }
}

#[derive(Clone, Copy, PartialEq, Eq, Debug)]
enum FVerb {
    Add,
    Append,
    Replace,
    Del,
}

fn fdb(ctx: &mut Ctx<'_>, args: &[String]) -> R<Out> {
    let v = match args.first().map(String::as_str) {
        Some(w) if matches(w, "add") => FVerb::Add,
        Some(w) if matches(w, "append") => FVerb::Append,
        Some(w) if matches(w, "replace") => FVerb::Replace,
        Some(w) if matches(w, "delete") => FVerb::Del,
        Some(w) if matches(w, "show") || matches(w, "get") => {
            return Err(invalid(format!(
                "`bridge fdb {w}` only reads, changes nothing"
            )));
        }
        Some(w) => {
            return Err(unsupported(format!("`bridge fdb {w}` is not supported")));
        }
        None => return Err(invalid("`bridge fdb` without a verb only lists")),
    };
    let (mut mac, mut dev, mut dst): (Option<String>, Option<String>, Option<IpAddr>) =
        (None, None, None);
    let (mut vni, mut port, mut vlan) = (None, None, None);
    let (mut is_self, mut is_master, mut router, mut state) = (false, false, false, None);
    let mut it = args[1..].iter();
    while let Some(w) = it.next() {
        let w = w.as_str();
        match w {
            "dev" => dev = Some(next(&mut it, w)?.to_string()),
            "dst" => dst = Some(util::addr(next(&mut it, w)?, "dst")?),
            "vni" => vni = Some(util::u32_c(next(&mut it, w)?, "vni")?),
            "port" | "dst_port" => {
                let p = next(&mut it, w)?;
                port = Some(
                    p.parse::<u16>()
                        .map_err(|_| invalid(format!("port `{p}` is not valid")))?,
                );
            }
            "vlan" => {
                let p = next(&mut it, w)?;
                let n = p
                    .parse::<u16>()
                    .ok()
                    .filter(|n| (1..4095).contains(n))
                    .ok_or_else(|| invalid(format!("vlan `{p}` is not valid")))?;
                vlan = Some(n);
            }
            "self" => is_self = true,
            "master" => is_master = true,
            "router" => router = true,
            "local" | "permanent" => state = Some("permanent"),
            "temp" | "static" => state = Some("static"),
            "dynamic" => state = Some(""),
            "use" | "extern_learn" | "sticky" | "via" | "src_vni" | "nhid" | "norouter"
            | "activity_notify" | "inactive" | "norefresh" => {
                return Err(unsupported(format!(
                    "`bridge fdb` option `{w}` is not supported"
                )));
            }
            _ => {
                if mac.is_some() {
                    return Err(invalid(format!(
                        "`bridge fdb`: unexpected `{w}` (address already given)"
                    )));
                }
                mac = Some(util::mac(w).map_err(|_| {
                    invalid(format!(
                        "`bridge fdb`: `{w}` is not a MAC address or a known option"
                    ))
                })?);
            }
        }
    }
    let mac = mac.ok_or_else(|| invalid("`bridge fdb`: no MAC address given"))?;
    let dev = dev.ok_or_else(|| invalid("Device and address are required arguments."))?;
    let ns = ctx.ns();
    let Some(link) = ns.link(&dev) else {
        return Err(invalid(format!("Cannot find device \"{dev}\"")));
    };
    let is_vxlan = matches!(link.kind, LinkKind::Vxlan { .. });
    if (dst.is_some() || vni.is_some() || port.is_some()) && !is_vxlan {
        return Err(invalid(format!(
            "`bridge fdb`: `dst`/`vni`/`port` apply to vxlan devices; `{dev}` is not one"
        )));
    }
    if !is_self && !is_master {
        is_self = true;
    }
    if is_self && is_master {
        return Err(unsupported(
            "`bridge fdb … self master` (both tables at once) is not supported",
        ));
    }
    let master = if is_master {
        match &link.master {
            Some(m) => Some(m.clone()),
            None => {
                return Err(invalid(format!(
                    "RTNETLINK answers: Operation not supported (`{dev}` has no master bridge)"
                )));
            }
        }
    } else {
        None
    };
    let mut flags = Vec::new();
    if is_self {
        flags.push("self".to_string());
    }
    if router {
        flags.push("router".to_string());
    }
    let entry = FdbEntry {
        dev: dev.clone(),
        mac: mac.clone(),
        master: master.clone(),
        vlan,
        dst,
        vni,
        port,
        state: match state.unwrap_or("permanent") {
            "" => Vec::new(),
            s => vec![s.to_string()],
        },
        flags,
    };
    // Same entry: device, MAC, VLAN and table (self vs master).
    let same = |e: &FdbEntry| {
        e.dev == dev && e.mac == mac && e.vlan == vlan && e.master.is_some() == master.is_some()
    };
    let id = format!(
        "{mac} dev {dev}{}{}",
        vlan.map(|v| format!(" vlan {v}")).unwrap_or_default(),
        master
            .as_ref()
            .map(|m| format!(" master {m}"))
            .unwrap_or_default()
    );
    let mut out = Out::default();
    let positions: Vec<usize> = ns
        .fdb
        .iter()
        .enumerate()
        .filter(|(_, e)| same(e))
        .map(|(i, _)| i)
        .collect();
    match v {
        FVerb::Del => {
            let victims: Vec<usize> = positions
                .into_iter()
                .filter(|&i| dst.is_none() || ns.fdb[i].dst == dst)
                .collect();
            if victims.is_empty() {
                return Err(not_found(format!(
                    "RTNETLINK answers: No such file or directory (no fdb entry {id}{})",
                    dst.map(|d| format!(" dst {d}")).unwrap_or_default()
                )));
            }
            for &i in victims.iter().rev() {
                let e = ns.fdb.remove(i);
                out.change(ObjectKind::Fdb, id.clone(), Some(fmt_fdb(&e)), None);
            }
            out.changes.reverse();
        }
        FVerb::Add => {
            if let Some(&i) = positions.first() {
                return Err(exists(format!(
                    "RTNETLINK answers: File exists (`{}`)",
                    fmt_fdb(&ns.fdb[i])
                )));
            }
            out.change(ObjectKind::Fdb, id, None, Some(fmt_fdb(&entry)));
            ns.fdb.push(entry);
        }
        FVerb::Append => {
            if !is_vxlan {
                return Err(unsupported(
                    "`bridge fdb append` applies to vxlan devices (several remotes for one MAC)",
                ));
            }
            if positions.iter().any(|&i| ns.fdb[i].dst == dst) {
                return Err(exists(format!(
                    "RTNETLINK answers: File exists ({id} already has dst {})",
                    dst.map(|d| d.to_string()).unwrap_or_default()
                )));
            }
            out.change(ObjectKind::Fdb, id, None, Some(fmt_fdb(&entry)));
            let at = positions.last().map(|i| i + 1).unwrap_or(ns.fdb.len());
            ns.fdb.insert(at, entry);
        }
        FVerb::Replace => match positions.first() {
            Some(&i) => {
                let before = ns.fdb[i].clone();
                if before != entry {
                    out.change(
                        ObjectKind::Fdb,
                        id,
                        Some(fmt_fdb(&before)),
                        Some(fmt_fdb(&entry)),
                    );
                    ns.fdb[i] = entry;
                }
            }
            None => {
                out.change(ObjectKind::Fdb, id, None, Some(fmt_fdb(&entry)));
                ns.fdb.push(entry);
            }
        },
    }
    Ok(out)
}

/// `bridge link set dev DEV [hairpin on|off] [learning on|off] [state N]` on the port's
/// [`BridgePort`](netray_snapshot::BridgePort) settings.
fn link(ctx: &mut Ctx<'_>, args: &[String]) -> R<Out> {
    match args.first().map(String::as_str) {
        Some("set") => {}
        Some(w) if matches(w, "show") => {
            return Err(invalid(format!(
                "`bridge link {w}` only reads, changes nothing"
            )));
        }
        Some(w) => return Err(unsupported(format!("`bridge link {w}` is not supported"))),
        None => return Err(invalid("`bridge link` without a verb only lists")),
    }
    let (mut dev, mut hairpin, mut learning, mut state) = (None, None, None, None);
    let onoff = |w: &str, v: &str| match v {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(invalid(format!(
            "`bridge link set … {w} {v}`: expected on or off"
        ))),
    };
    let mut it = args[1..].iter();
    while let Some(w) = it.next() {
        let w = w.as_str();
        match w {
            "dev" => dev = Some(next(&mut it, w)?.to_string()),
            "hairpin" => hairpin = Some(onoff(w, next(&mut it, w)?)?),
            "learning" => learning = Some(onoff(w, next(&mut it, w)?)?),
            "state" => {
                let v = next(&mut it, w)?;
                state = Some(
                    match v {
                        "0" | "disabled" => "disabled",
                        "1" | "listening" => "listening",
                        "2" | "learning" => "learning",
                        "3" | "forwarding" => "forwarding",
                        "4" | "blocking" => "blocking",
                        _ => return Err(invalid(format!("bridge link: bad state `{v}`"))),
                    }
                    .to_string(),
                );
            }
            other => {
                return Err(unsupported(format!(
                    "`bridge link set` option `{other}` is not supported (hairpin, learning, state)"
                )));
            }
        }
    }
    let dev = dev.ok_or_else(|| invalid("`bridge link set`: `dev DEV` is required"))?;
    let ns = ctx.ns();
    let Some(l) = ns.links.iter_mut().find(|l| l.name == dev) else {
        return Err(invalid(format!("Cannot find device \"{dev}\"")));
    };
    let Some(bp) = l.bridge_port.as_mut() else {
        return Err(invalid(format!(
            "RTNETLINK answers: Operation not supported (`{dev}` is not a bridge port)"
        )));
    };
    let before = bp.clone();
    if let Some(h) = hairpin {
        bp.hairpin = h;
    }
    if let Some(x) = learning {
        bp.learning = x;
    }
    if let Some(s) = state {
        bp.state = s;
    }
    let show = |p: &netray_snapshot::BridgePort| {
        format!(
            "state {} hairpin {} learning {}",
            p.state,
            if p.hairpin { "on" } else { "off" },
            if p.learning { "on" } else { "off" }
        )
    };
    let mut out = Out::default();
    if *bp != before {
        let after = show(bp);
        out.change(
            ObjectKind::Link,
            format!("{dev} (bridge port)"),
            Some(show(&before)),
            Some(after),
        );
    }
    Ok(out)
}
