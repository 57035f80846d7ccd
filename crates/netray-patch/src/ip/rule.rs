//! `ip rule add|del`.

use netray_snapshot::{Rule, RuleAction};

use super::{Verb, verb};
use crate::util::{self, Fam, matches, next};
use crate::{Ctx, ObjectKind, Out, R, exists, invalid, not_found, unsupported};

/// A rule as `ip rule` prints it.
pub fn fmt_rule(r: &Rule) -> String {
    let mut s = format!("{}:\t", r.priority);
    if r.invert {
        s.push_str("not ");
    }
    match &r.src {
        Some(p) if p.prefix_len() == p.max_prefix_len() => {
            s.push_str(&format!("from {}", p.addr()))
        }
        Some(p) => s.push_str(&format!("from {p}")),
        None => s.push_str("from all"),
    }
    if let Some(p) = &r.dst {
        if p.prefix_len() == p.max_prefix_len() {
            s.push_str(&format!(" to {}", p.addr()));
        } else {
            s.push_str(&format!(" to {p}"));
        }
    }
    if r.tos != 0 {
        s.push_str(&format!(" tos 0x{:02x}", r.tos));
    }
    if let Some(m) = r.fwmark {
        match r.fwmask {
            Some(k) if k != u32::MAX => s.push_str(&format!(" fwmark {m:#x}/{k:#x}")),
            _ => s.push_str(&format!(" fwmark {m:#x}")),
        }
    }
    if let Some(i) = &r.iif {
        s.push_str(&format!(" iif {i}"));
    }
    if let Some(o) = &r.oif {
        s.push_str(&format!(" oif {o}"));
    }
    if let Some(p) = r.ipproto {
        s.push_str(&format!(" ipproto {p}"));
    }
    if let Some((a, b)) = r.sport {
        s.push_str(&port_range(" sport", a, b));
    }
    if let Some((a, b)) = r.dport {
        s.push_str(&port_range(" dport", a, b));
    }
    if let Some((a, b)) = r.uid_range {
        s.push_str(&format!(" uidrange {a}-{b}"));
    }
    if r.l3mdev {
        s.push_str(" lookup [l3mdev-table]");
    }
    match r.action {
        RuleAction::Lookup => {
            if !r.l3mdev {
                s.push_str(&format!(
                    " lookup {}",
                    util::table_name(r.table.unwrap_or(254))
                ))
            }
        }
        RuleAction::Goto => s.push_str(&format!(" goto {}", r.goto.unwrap_or(0))),
        RuleAction::Nop => s.push_str(" nop"),
        RuleAction::Blackhole => s.push_str(" blackhole"),
        RuleAction::Unreachable => s.push_str(" unreachable"),
        RuleAction::Prohibit => s.push_str(" prohibit"),
    }
    if let Some(p) = r.suppress_prefixlen {
        s.push_str(&format!(" suppress_prefixlength {p}"));
    }
    if let Some(g) = r.suppress_ifgroup {
        s.push_str(&format!(" suppress_ifgroup {g}"));
    }
    s
}

fn port_range(k: &str, a: u16, b: u16) -> String {
    if a == b {
        format!("{k} {a}")
    } else {
        format!("{k} {a}-{b}")
    }
}

fn ports(s: &str) -> R<(u16, u16)> {
    let p = |x: &str| {
        x.parse::<u16>()
            .map_err(|_| invalid(format!("port range `{s}` is not valid")))
    };
    match s.split_once('-') {
        Some((a, b)) => Ok((p(a)?, p(b)?)),
        None => {
            let v = p(s)?;
            Ok((v, v))
        }
    }
}

fn ipproto(s: &str) -> R<u8> {
    Ok(match s {
        "tcp" => 6,
        "udp" => 17,
        "icmp" => 1,
        "sctp" => 132,
        "ipv6-icmp" | "icmpv6" => 58,
        _ => s
            .parse()
            .map_err(|_| invalid(format!("ipproto `{s}` is not known")))?,
    })
}

/// Which selectors were given (for `del`, only those are compared).
#[derive(Default)]
struct Given {
    priority: bool,
    table: bool,
    action: bool,
}

pub fn run(ctx: &mut Ctx<'_>, fam: Fam, args: &[String]) -> R<Out> {
    let v = verb("rule", args.first())?;
    if !matches!(v, Verb::Add | Verb::Del) {
        return Err(unsupported(
            "`ip rule` supports add and del only (the kernel has no rule replace)",
        ));
    }
    let mut r = Rule {
        family: String::new(),
        priority: 0,
        invert: false,
        src: None,
        dst: None,
        iif: None,
        oif: None,
        fwmark: None,
        fwmask: None,
        tos: 0,
        ipproto: None,
        sport: None,
        dport: None,
        uid_range: None,
        l3mdev: false,
        action: RuleAction::Lookup,
        table: None,
        goto: None,
        suppress_prefixlen: None,
        suppress_ifgroup: None,
    };
    let mut g = Given::default();
    let mut fam = fam;
    let mut it = args[1..].iter();
    while let Some(w) = it.next() {
        let w = w.as_str();
        match w {
            "not" => r.invert = true,
            "from" | "to" => {
                let a = next(&mut it, w)?;
                let p = if a == "all" {
                    None
                } else {
                    let p = util::prefix_trunc(a, fam, w)?;
                    fam = if p.addr().is_ipv4() { Fam::V4 } else { Fam::V6 };
                    Some(p)
                };
                if w == "from" {
                    r.src = p;
                } else {
                    r.dst = p;
                }
            }
            "tos" | "dsfield" => {
                let a = next(&mut it, w)?;
                r.tos = u8::from_str_radix(a.trim_start_matches("0x"), 16)
                    .map_err(|_| invalid(format!("tos `{a}` is not valid")))?;
            }
            "fwmark" => {
                let a = next(&mut it, w)?;
                let (m, k) = match a.split_once('/') {
                    Some((m, k)) => (util::u32_c(m, "fwmark")?, util::u32_c(k, "fwmark mask")?),
                    None => (util::u32_c(a, "fwmark")?, u32::MAX),
                };
                r.fwmark = Some(m);
                r.fwmask = Some(k);
            }
            "dev" | "iif" => r.iif = Some(next(&mut it, w)?.to_string()),
            "oif" => r.oif = Some(next(&mut it, w)?.to_string()),
            "l3mdev" => r.l3mdev = true,
            "uidrange" => {
                let a = next(&mut it, w)?;
                let (x, y) = a
                    .split_once('-')
                    .ok_or_else(|| invalid(format!("uidrange `{a}`: expected A-B")))?;
                let p = |s: &str| {
                    s.parse::<u32>()
                        .map_err(|_| invalid(format!("uidrange `{a}` is not valid")))
                };
                r.uid_range = Some((p(x)?, p(y)?));
            }
            "ipproto" => r.ipproto = Some(ipproto(next(&mut it, w)?)?),
            "sport" => r.sport = Some(ports(next(&mut it, w)?)?),
            "dport" => r.dport = Some(ports(next(&mut it, w)?)?),
            "suppress_prefixlength" | "sup_pl" => {
                r.suppress_prefixlen = Some(util::u32_c(next(&mut it, w)?, w)?)
            }
            "suppress_ifgroup" | "sup_group" => {
                r.suppress_ifgroup = Some(util::u32_c(next(&mut it, w)?, w)?)
            }
            "goto" => {
                r.goto = Some(util::u32_c(next(&mut it, w)?, w)?);
                r.action = RuleAction::Goto;
                g.action = true;
            }
            "nop" => {
                r.action = RuleAction::Nop;
                g.action = true;
            }
            "blackhole" | "unreachable" | "prohibit" | "unicast" => {
                r.action = match w {
                    "blackhole" => RuleAction::Blackhole,
                    "unreachable" => RuleAction::Unreachable,
                    "prohibit" => RuleAction::Prohibit,
                    _ => RuleAction::Lookup,
                };
                g.action = true;
            }
            "type" => {
                return Err(unsupported(
                    "`ip rule … type T`: write the action word itself (blackhole, unreachable, prohibit, nop)",
                ));
            }
            _ if matches(w, "preference") || matches(w, "order") || matches(w, "priority") => {
                r.priority = util::u32_c(next(&mut it, w)?, "priority")?;
                g.priority = true;
            }
            _ if matches(w, "table") || matches(w, "lookup") => {
                r.table = Some(util::table(next(&mut it, w)?)?);
                g.table = true;
            }
            other => {
                return Err(unsupported(format!(
                    "`ip rule` option `{other}` is not supported"
                )));
            }
        }
    }
    r.family = if fam == Fam::V6 { "inet6" } else { "inet" }.to_string();
    if r.action == RuleAction::Lookup && v == Verb::Add && r.table.is_none() {
        r.table = Some(254);
    }
    if r.action != RuleAction::Lookup && r.table.is_some() {
        return Err(invalid(
            "`ip rule`: `lookup TABLE` together with a non-lookup action",
        ));
    }
    let ns = ctx.ns();
    let mut out = Out::default();
    if v == Verb::Del {
        let m = |x: &Rule| {
            x.family == r.family
                && (!g.priority || x.priority == r.priority)
                && (!g.table || x.table == r.table)
                && (!g.action || x.action == r.action)
                && (!r.invert || x.invert)
                && (r.src.is_none() || x.src == r.src)
                && (r.dst.is_none() || x.dst == r.dst)
                && (r.iif.is_none() || x.iif == r.iif)
                && (r.oif.is_none() || x.oif == r.oif)
                && (r.fwmark.is_none() || (x.fwmark == r.fwmark && x.fwmask == r.fwmask))
                && (r.tos == 0 || x.tos == r.tos)
                && (r.ipproto.is_none() || x.ipproto == r.ipproto)
                && (r.sport.is_none() || x.sport == r.sport)
                && (r.dport.is_none() || x.dport == r.dport)
                && (r.uid_range.is_none() || x.uid_range == r.uid_range)
                && (r.goto.is_none() || x.goto == r.goto)
                && (!r.l3mdev || x.l3mdev)
                && (r.suppress_prefixlen.is_none() || x.suppress_prefixlen == r.suppress_prefixlen)
                && (r.suppress_ifgroup.is_none() || x.suppress_ifgroup == r.suppress_ifgroup)
        };
        let Some(i) = ns.rules.iter().position(m) else {
            return Err(not_found(format!(
                "RTNETLINK answers: No such file or directory (no {} rule matches `{}`)",
                r.family,
                args[1..].join(" ")
            )));
        };
        let old = ns.rules.remove(i);
        out.change(
            ObjectKind::Rule,
            format!("{} priority {}", old.family, old.priority),
            Some(fmt_rule(&old)),
            None,
        );
        return Ok(out);
    }
    if !g.priority {
        // fib_default_rule_pref: one less than the second rule's, when that is not 0.
        let mut fam_rules: Vec<u32> = ns
            .rules
            .iter()
            .filter(|x| x.family == r.family)
            .map(|x| x.priority)
            .collect();
        fam_rules.sort();
        r.priority = match fam_rules.get(1) {
            Some(&p) if p > 0 => p - 1,
            _ => 0,
        };
        out.notes.push(format!(
            "no priority given: the kernel assigns {}",
            r.priority
        ));
    }
    if let Some(x) = ns.rules.iter().find(|x| **x == r) {
        return Err(exists(format!(
            "RTNETLINK answers: File exists (`{}`)",
            fmt_rule(x)
        )));
    }
    // After every rule of the family with a priority <= this one.
    let pos = ns
        .rules
        .iter()
        .rposition(|x| x.family == r.family && x.priority <= r.priority)
        .map(|i| i + 1)
        .or_else(|| ns.rules.iter().position(|x| x.family == r.family))
        .unwrap_or(ns.rules.len());
    out.change(
        ObjectKind::Rule,
        format!("{} priority {}", r.family, r.priority),
        None,
        Some(fmt_rule(&r)),
    );
    ns.rules.insert(pos, r);
    Ok(out)
}
