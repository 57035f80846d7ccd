//! `ip neigh add|replace|change|del ADDR [lladdr MAC] dev DEV [nud STATE] [router]`.

use netray_snapshot::Neighbour;

use super::{Verb, verb};
use crate::util::{self, Fam, next};
use crate::{Ctx, ObjectKind, Out, R, exists, invalid, not_found, unsupported};

/// A neighbour as `ip neigh` prints it.
pub fn fmt_neigh(n: &Neighbour) -> String {
    let mut s = format!("{} dev {}", n.dst, n.dev);
    if let Some(l) = &n.lladdr {
        s.push_str(&format!(" lladdr {l}"));
    }
    for f in &n.flags {
        s.push(' ');
        s.push_str(f);
    }
    for st in &n.state {
        s.push(' ');
        s.push_str(st);
    }
    s
}

const STATES: &[&str] = &[
    "permanent",
    "noarp",
    "reachable",
    "stale",
    "none",
    "incomplete",
    "delay",
    "probe",
    "failed",
];

pub fn run(ctx: &mut Ctx<'_>, fam: Fam, args: &[String]) -> R<Out> {
    let v = verb("neigh", args.first())?;
    if matches!(v, Verb::Append | Verb::Prepend) {
        return Err(unsupported("`ip neigh append|prepend` does not exist"));
    }
    let (mut dst, mut lladdr, mut dev, mut nud, mut router) = (None, None, None, None, false);
    let mut it = args[1..].iter();
    while let Some(w) = it.next() {
        let w = w.as_str();
        match w {
            "lladdr" => lladdr = Some(util::mac(next(&mut it, w)?)?),
            "dev" => dev = Some(next(&mut it, w)?.to_string()),
            "nud" => {
                let s = next(&mut it, w)?;
                if !STATES.contains(&s) {
                    return Err(invalid(format!(
                        "nud state `{s}` is not one of {}",
                        STATES.join(", ")
                    )));
                }
                nud = Some(s.to_string());
            }
            "permanent" => nud = Some("permanent".into()),
            "router" => router = true,
            "proxy" | "extern_learn" | "managed" | "protocol" | "use" => {
                return Err(unsupported(format!(
                    "`ip neigh` option `{w}` is not supported"
                )));
            }
            _ => {
                let w = if w == "to" { next(&mut it, w)? } else { w };
                if dst.is_some() {
                    return Err(invalid(format!(
                        "`ip neigh`: unexpected `{w}` (address already given)"
                    )));
                }
                dst = Some(util::addr(w, "neighbour address").map_err(|_| {
                    unsupported(format!(
                        "`ip neigh`: `{w}` is neither a known option nor an address"
                    ))
                })?);
            }
        }
    }
    let dst = dst.ok_or_else(|| invalid("`ip neigh`: no address given"))?;
    fam.check(&dst, "neighbour address")?;
    let dev = dev.ok_or_else(|| invalid("Device and destination are required arguments."))?;
    let ns = ctx.ns();
    if ns.link(&dev).is_none() {
        return Err(invalid(format!("Cannot find device \"{dev}\"")));
    }
    let pos = ns
        .neighbours
        .iter()
        .position(|n| n.dst == dst && n.dev == dev);
    let id = format!("{dst} dev {dev}");
    let mut out = Out::default();
    if v == Verb::Del {
        let Some(i) = pos else {
            return Err(not_found(format!(
                "RTNETLINK answers: No such file or directory (no neighbour {id})"
            )));
        };
        let n = ns.neighbours.remove(i);
        out.change(ObjectKind::Neighbour, id, Some(fmt_neigh(&n)), None);
        return Ok(out);
    }
    let nud = nud.unwrap_or_else(|| "permanent".into());
    let needs_ll = !matches!(nud.as_str(), "noarp" | "none" | "incomplete" | "failed");
    let old = pos.map(|i| ns.neighbours[i].clone());
    let lladdr = match (lladdr, &old) {
        (Some(l), _) => Some(l),
        // `change`/`replace` without lladdr keep the known address.
        (None, Some(o)) if v != Verb::Add => o.lladdr.clone(),
        (None, _) if needs_ll => {
            return Err(invalid(format!(
                "`ip neigh`: state `{nud}` needs `lladdr MAC`"
            )));
        }
        (None, _) => None,
    };
    let n = Neighbour {
        dev: dev.clone(),
        dst,
        lladdr,
        state: vec![nud.to_ascii_uppercase()],
        flags: if router {
            vec!["router".into()]
        } else {
            Vec::new()
        },
    };
    match (v, pos) {
        (Verb::Add, Some(_)) => Err(exists(format!(
            "RTNETLINK answers: File exists (`{}`)",
            fmt_neigh(old.as_ref().unwrap())
        ))),
        (Verb::Change, None) => Err(not_found(format!(
            "RTNETLINK answers: No such file or directory (no neighbour {id})"
        ))),
        (_, Some(i)) => {
            if old.as_ref() != Some(&n) {
                out.change(
                    ObjectKind::Neighbour,
                    id,
                    old.as_ref().map(fmt_neigh),
                    Some(fmt_neigh(&n)),
                );
                ns.neighbours[i] = n;
            }
            Ok(out)
        }
        (_, None) => {
            out.change(ObjectKind::Neighbour, id, None, Some(fmt_neigh(&n)));
            ns.neighbours.push(n);
            Ok(out)
        }
    }
}
