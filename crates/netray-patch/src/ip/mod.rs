//! `ip [-4|-6] route|rule|neigh|link|addr …` with iproute2's abbreviations.

use crate::util::{Fam, matches};
use crate::{Ctx, Out, R, invalid, unsupported};

mod addr;
mod link;
mod neigh;
mod route;
mod rule;

#[allow(unused_imports)]
pub(crate) use route::{fmt_route, insert_route};

pub fn run(ctx: &mut Ctx<'_>, args: &[String]) -> R<Out> {
    let mut fam = Fam::Any;
    let mut i = 0;
    while let Some(w) = args.get(i) {
        if !w.starts_with('-') || w == "-" {
            break;
        }
        let o = w.trim_start_matches('-');
        match o {
            "4" => fam = Fam::V4,
            "6" => fam = Fam::V6,
            "n" | "netns" => {
                return Err(unsupported(format!(
                    "`ip {w}`: the namespace is the command's target; run the command inside it"
                )));
            }
            "b" | "batch" | "force" => {
                return Err(unsupported(format!(
                    "`ip {w}` (batch mode) is not supported"
                )));
            }
            _ if o == "f" || matches(o, "family") => {
                i += 1;
                let f = args
                    .get(i)
                    .ok_or_else(|| invalid(format!("option `{w}` needs an argument")))?;
                fam = match f.as_str() {
                    "inet" => Fam::V4,
                    "inet6" => Fam::V6,
                    other => {
                        return Err(unsupported(format!("`ip -f {other}`: only inet and inet6")));
                    }
                };
            }
            _ if ["s", "d", "c", "j", "p", "o", "br", "h", "r", "N", "a"].contains(&o)
                || matches(o, "statistics")
                || matches(o, "stats")
                || matches(o, "details")
                || matches(o, "color")
                || matches(o, "json")
                || matches(o, "pretty")
                || matches(o, "oneline")
                || matches(o, "brief")
                || matches(o, "human")
                || matches(o, "resolve")
                || matches(o, "numeric")
                || matches(o, "all") => {}
            _ => return Err(unsupported(format!("`ip` option `{w}` is not supported"))),
        }
        i += 1;
    }
    let Some(obj) = args.get(i) else {
        return Err(invalid(
            "`ip`: no object given (route, rule, neigh, link, addr)",
        ));
    };
    let rest = &args[i + 1..];
    // iproute2's object table, in its order: the first name `obj` abbreviates wins.
    const OBJECTS: &[&str] = &[
        "address",
        "addrlabel",
        "maddress",
        "route",
        "rule",
        "neighbor",
        "neighbour",
        "ntable",
        "ntbl",
        "link",
        "l2tp",
        "fou",
        "ila",
        "macsec",
        "tunnel",
        "tunl",
        "tuntap",
        "tap",
        "token",
        "tcpmetrics",
        "tcp_metrics",
        "monitor",
        "xfrm",
        "mroute",
        "mrule",
        "netns",
        "netconf",
        "vrf",
        "sr",
        "nexthop",
        "mptcp",
        "ioam",
        "stats",
    ];
    let Some(full) = OBJECTS.iter().find(|o| matches(obj, o)) else {
        return Err(invalid(format!("`ip {obj}`: unknown object")));
    };
    match *full {
        "address" => addr::run(ctx, fam, rest),
        "route" => route::run(ctx, fam, rest),
        "rule" => rule::run(ctx, fam, rest),
        "neighbor" | "neighbour" => neigh::run(ctx, fam, rest),
        "link" => link::run(ctx, rest),
        "netns" => Err(unsupported(
            "`ip netns …`: give the namespace as the command's target and run the command inside it",
        )),
        other => Err(unsupported(format!(
            "`ip {other}` is not supported (supported: route, rule, neigh, link set, addr add/del)"
        ))),
    }
}

/// The verb of `ip route|rule|neigh|addr`, with iproute2's abbreviation order.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verb {
    Add,
    Change,
    Replace,
    Prepend,
    Append,
    Del,
}

/// Parse the verb; read-only verbs are an error (they change nothing).
pub fn verb(obj: &str, w: Option<&String>) -> R<Verb> {
    let Some(w) = w else {
        return Err(invalid(format!(
            "`ip {obj}` without a verb only lists; give add, del, replace or change"
        )));
    };
    let w = w.as_str();
    Ok(if matches(w, "add") {
        Verb::Add
    } else if matches(w, "change") || w == "chg" {
        Verb::Change
    } else if matches(w, "replace") {
        Verb::Replace
    } else if matches(w, "prepend") {
        Verb::Prepend
    } else if matches(w, "append") {
        Verb::Append
    } else if matches(w, "delete") {
        Verb::Del
    } else if ["list", "show", "lst", "get", "save"]
        .iter()
        .any(|v| matches(w, v))
    {
        return Err(invalid(format!(
            "`ip {obj} {w}` only reads, changes nothing"
        )));
    } else {
        return Err(unsupported(format!("`ip {obj} {w}` is not supported")));
    })
}
