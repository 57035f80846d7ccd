//! `nft add|insert rule [FAMILY] TABLE CHAIN [position H|index I] EXPR…`,
//! `nft replace rule … handle H EXPR…` and `nft delete rule [FAMILY] TABLE CHAIN handle H` on
//! the namespace's `nft -j` document.
//!
//! Expressions: `ip|ip6 saddr|daddr [!=] ADDR|PREFIX|{…}`, `ip protocol P`, `meta l4proto P`,
//! `tcp|udp|sctp sport|dport [!=] N|A-B|{…}`, `[meta] iifname|oifname [!=] NAME`,
//! `ct state [!=] S[,S…]|{…}`, `[meta] mark [!=] N`, `counter`, `log [prefix S]`,
//! `accept|drop|return|continue`, `jump|goto CHAIN`,
//! `reject [with tcp reset | with icmp|icmpv6|icmpx type T]`, `comment S`; written as
//! `nft -j` prints them. Anything else is an error naming the word.

use serde_json::{Value as J, json};

use crate::shell;
use crate::{Ctx, ObjectKind, Out, R, invalid, not_found, unsupported};

const FAMILIES: &[&str] = &["ip", "ip6", "inet", "arp", "bridge", "netdev"];

/// Words of an nft expression: braces and commas are words of their own.
fn tokens(args: &[String]) -> R<Vec<String>> {
    let mut out = Vec::new();
    let mut after_comment = false;
    for a in args {
        let parts: Vec<String> = if after_comment {
            vec![a.clone()]
        } else if a.contains(char::is_whitespace) {
            shell::split(a).map_err(invalid)?
        } else {
            vec![a.clone()]
        };
        for p in parts {
            if after_comment || p.starts_with('"') {
                after_comment = false;
                out.push(p);
                continue;
            }
            let mut cur = String::new();
            for c in p.chars() {
                if matches!(c, '{' | '}' | ',') {
                    if !cur.is_empty() {
                        out.push(std::mem::take(&mut cur));
                    }
                    out.push(c.to_string());
                } else {
                    cur.push(c);
                }
            }
            if !cur.is_empty() {
                if cur == "comment" {
                    after_comment = true;
                }
                out.push(cur);
            }
        }
    }
    Ok(out)
}

pub fn run(ctx: &mut Ctx<'_>, args: &[String]) -> R<Out> {
    let mut i = 0;
    while let Some(w) = args.get(i).filter(|w| w.starts_with('-')) {
        match w.as_str() {
            "-a" | "--handle" | "-j" | "--json" | "-e" | "--echo" | "-n" | "--numeric" | "-s"
            | "--stateless" => {}
            "-c" | "--check" => {
                return Err(invalid("`nft -c` only checks, changes nothing"));
            }
            o => return Err(unsupported(format!("`nft` option `{o}` is not supported"))),
        }
        i += 1;
    }
    let t = tokens(&args[i..])?;
    if t.iter().any(|w| w == ";") {
        return Err(unsupported("several nft commands (`;`): give one per fix"));
    }
    let verb = t.first().map(String::as_str).unwrap_or("");
    let obj = t.get(1).map(String::as_str).unwrap_or("");
    if !matches!(verb, "add" | "insert" | "delete" | "replace") {
        return Err(unsupported(format!(
            "`nft {verb}` is not supported (add|insert|replace|delete rule)"
        )));
    }
    if obj != "rule" {
        return Err(unsupported(format!(
            "`nft {verb} {obj}` is not supported (only rules)"
        )));
    }
    let mut k = 2;
    let family = match t.get(k) {
        Some(f) if FAMILIES.contains(&f.as_str()) => {
            k += 1;
            f.clone()
        }
        _ => "ip".to_string(),
    };
    let table = t
        .get(k)
        .cloned()
        .ok_or_else(|| invalid("nft: table name missing"))?;
    let chain = t
        .get(k + 1)
        .cloned()
        .ok_or_else(|| invalid("nft: chain name missing"))?;
    k += 2;
    let mut pos: Option<(&str, u64)> = None;
    if let Some(w) = t.get(k).map(String::as_str)
        && matches!(w, "position" | "index" | "handle")
    {
        let n = t
            .get(k + 1)
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| invalid(format!("nft: `{w}` needs a number")))?;
        pos = Some((w, n));
        k += 2;
    }
    let rest = &t[k..];
    let ns = ctx.ns();
    let Some(text) = ns.firewall.nft_json.clone() else {
        return Err(not_found(format!(
            "nft: Error: No such file or directory (the namespace has no native nftables table `{family} {table}`; iptables-nft tables are edited with iptables)"
        )));
    };
    let mut doc: J = serde_json::from_str(&text)
        .map_err(|e| invalid(format!("nft: the snapshot's nft JSON does not parse: {e}")))?;
    let Some(items) = doc.get_mut("nftables").and_then(J::as_array_mut) else {
        return Err(invalid(
            "nft: the snapshot's nft JSON has no `nftables` array",
        ));
    };
    let is = |o: &J, kind: &str| -> bool {
        o.get(kind).is_some_and(|x| {
            x["family"] == family.as_str()
                && (if kind == "table" {
                    x["name"] == table.as_str()
                } else {
                    x["table"] == table.as_str()
                })
        })
    };
    if !items.iter().any(|o| is(o, "table")) {
        return Err(not_found(format!(
            "nft: Error: No such file or directory (no table `{family} {table}`)"
        )));
    }
    let chains: Vec<String> = items
        .iter()
        .filter(|o| is(o, "chain"))
        .filter_map(|o| o["chain"]["name"].as_str().map(str::to_string))
        .collect();
    if !chains.contains(&chain) {
        return Err(not_found(format!(
            "nft: Error: No such file or directory (no chain `{chain}` in table `{family} {table}`)"
        )));
    }
    let rule_idx: Vec<usize> = items
        .iter()
        .enumerate()
        .filter(|(_, o)| is(o, "rule") && o["rule"]["chain"] == chain.as_str())
        .map(|(i, _)| i)
        .collect();
    let by_handle = |items: &Vec<J>, h: u64| {
        rule_idx
            .iter()
            .copied()
            .find(|&i| items[i]["rule"]["handle"].as_u64() == Some(h))
    };
    let id = |h: u64| format!("{family} {table} {chain} handle {h}");
    let mut out = Out::default();
    if verb == "delete" {
        let Some(("handle", h)) = pos else {
            return Err(unsupported(
                "`nft delete rule` needs `handle N` (deleting by expression is not supported)",
            ));
        };
        if !rest.is_empty() {
            return Err(invalid(format!(
                "nft: unexpected `{}` after the handle",
                rest.join(" ")
            )));
        }
        let Some(i) = by_handle(items, h) else {
            return Err(not_found(format!(
                "nft: Error: Could not process rule: No such file or directory (no rule {})",
                id(h)
            )));
        };
        let old = items.remove(i);
        out.change(
            ObjectKind::NftRule,
            id(h),
            Some(old["rule"].to_string()),
            None,
        );
    } else {
        let (expr, comment) = exprs(rest, &chains, &family)?;
        let handle = items
            .iter()
            .filter(|o| {
                ["table", "chain", "rule", "set", "map"]
                    .iter()
                    .any(|k| is(o, k))
            })
            .filter_map(|o| o.as_object()?.values().next()?.get("handle")?.as_u64())
            .max()
            .unwrap_or(0)
            + 1;
        let mut rule = serde_json::Map::new();
        rule.insert("family".into(), json!(family));
        rule.insert("table".into(), json!(table));
        rule.insert("chain".into(), json!(chain));
        rule.insert("handle".into(), json!(handle));
        if let Some(c) = comment {
            rule.insert("comment".into(), json!(c));
        }
        rule.insert("expr".into(), J::Array(expr));
        let new = json!({ "rule": J::Object(rule) });
        let (at, h) = match (verb, pos) {
            ("replace", Some(("handle", h))) => {
                let Some(i) = by_handle(items, h) else {
                    return Err(not_found(format!(
                        "nft: Error: Could not process rule: No such file or directory (no rule {})",
                        id(h)
                    )));
                };
                let mut new = new;
                new["rule"]["handle"] = json!(h);
                out.change(
                    ObjectKind::NftRule,
                    id(h),
                    Some(items[i]["rule"].to_string()),
                    Some(new["rule"].to_string()),
                );
                items[i] = new;
                ctx.ns().firewall.nft_json = Some(doc.to_string());
                return Ok(out);
            }
            ("replace", _) => {
                return Err(invalid("`nft replace rule` needs `handle N`"));
            }
            (_, Some(("handle", _))) => {
                return Err(invalid(format!(
                    "`nft {verb} rule … handle N`: use `position N`"
                )));
            }
            ("add", None) => (
                rule_idx
                    .last()
                    .map(|i| i + 1)
                    .unwrap_or_else(|| after_chain(items, &chain, &is)),
                handle,
            ),
            (_, None) => (
                rule_idx
                    .first()
                    .copied()
                    .unwrap_or_else(|| after_chain(items, &chain, &is)),
                handle,
            ),
            (_, Some(("position", h))) => {
                let Some(i) = by_handle(items, h) else {
                    return Err(not_found(format!(
                        "nft: Error: Could not process rule: No such file or directory (no rule {})",
                        id(h)
                    )));
                };
                (if verb == "add" { i + 1 } else { i }, handle)
            }
            (_, Some((_, n))) => {
                let n = n as usize;
                let at = if verb == "add" {
                    rule_idx.get(n).map(|i| i + 1)
                } else {
                    rule_idx.get(n).copied()
                };
                let Some(at) = at else {
                    return Err(not_found(format!(
                        "nft: Error: Could not process rule: No such file or directory (no rule at index {n} of {chain})"
                    )));
                };
                (at, handle)
            }
        };
        out.change(
            ObjectKind::NftRule,
            id(h),
            None,
            Some(new["rule"].to_string()),
        );
        items.insert(at, new);
    }
    ctx.ns().firewall.nft_json = Some(doc.to_string());
    Ok(out)
}

fn after_chain(items: &[J], chain: &str, is: &dyn Fn(&J, &str) -> bool) -> usize {
    items
        .iter()
        .position(|o| is(o, "chain") && o["chain"]["name"] == chain)
        .map(|i| i + 1)
        .unwrap_or(items.len())
}

fn m(op: &str, left: J, right: J) -> J {
    json!({"match": {"op": op, "left": left, "right": right}})
}

/// One value (address, prefix, number, range, name) as nft JSON.
fn value(w: &str, kind: &str) -> R<J> {
    match kind {
        "addr" => {
            if let Some((a, l)) = w.split_once('/') {
                let _: std::net::IpAddr = a
                    .parse()
                    .map_err(|_| invalid(format!("nft: `{w}` is not an address or prefix")))?;
                let l: u8 = l
                    .parse()
                    .map_err(|_| invalid(format!("nft: `{w}`: bad prefix length")))?;
                let n = ipnet::IpNet::new(a.parse().unwrap(), l)
                    .map_err(|_| invalid(format!("nft: `{w}`: bad prefix length")))?;
                if n.prefix_len() == n.max_prefix_len() {
                    return Ok(json!(n.addr().to_string()));
                }
                Ok(json!({"prefix": {"addr": n.trunc().addr().to_string(), "len": l}}))
            } else {
                let a: std::net::IpAddr = w
                    .parse()
                    .map_err(|_| invalid(format!("nft: `{w}` is not an address or prefix")))?;
                Ok(json!(a.to_string()))
            }
        }
        "port" => {
            let p = |s: &str| {
                s.parse::<u16>()
                    .map_err(|_| unsupported(format!("nft: port `{s}` (numbers only)")))
            };
            match w.split_once('-') {
                Some((a, b)) => Ok(json!({"range": [p(a)?, p(b)?]})),
                None => Ok(json!(p(w)?)),
            }
        }
        "int" => Ok(json!(crate::util::u32_c(w, "mark")?)),
        "proto" => Ok(match w {
            "tcp" | "udp" | "icmp" | "icmpv6" | "sctp" | "udplite" | "esp" | "ah" | "gre" => {
                json!(w)
            }
            n => json!(
                n.parse::<u8>()
                    .map_err(|_| invalid(format!("nft: unknown protocol `{n}`")))?
            ),
        }),
        "state" => {
            if !["invalid", "established", "related", "new", "untracked"].contains(&w) {
                return Err(invalid(format!("nft: unknown ct state `{w}`")));
            }
            Ok(json!(w))
        }
        _ => Ok(json!(w)),
    }
}

/// Parse `[op] VALUE | { V, V }` from `t` at `*i`.
fn rhs(t: &[String], i: &mut usize, kind: &str) -> R<(String, J)> {
    let mut op = "==".to_string();
    if let Some(w) = t.get(*i).map(String::as_str)
        && matches!(w, "==" | "!=" | "eq" | "ne")
    {
        op = if matches!(w, "!=" | "ne") { "!=" } else { "==" }.into();
        *i += 1;
    }
    let Some(w) = t.get(*i) else {
        return Err(invalid("nft: a value is missing at the end"));
    };
    if w == "{" {
        let mut vals = Vec::new();
        *i += 1;
        loop {
            match t.get(*i).map(String::as_str) {
                Some("}") => {
                    *i += 1;
                    break;
                }
                Some(",") => *i += 1,
                Some(v) => {
                    vals.push(value(v, kind)?);
                    *i += 1;
                }
                None => return Err(invalid("nft: unterminated `{`")),
            }
        }
        if kind == "state" {
            return Ok((if op == "==" { "in".into() } else { op }, J::Array(vals)));
        }
        return Ok((op, json!({ "set": vals })));
    }
    *i += 1;
    // `ct state a,b` (comma list without braces).
    if kind == "state" {
        let mut vals = vec![value(w, kind)?];
        while t.get(*i).map(String::as_str) == Some(",") {
            let v = t
                .get(*i + 1)
                .ok_or_else(|| invalid("nft: a value is missing after `,`"))?;
            vals.push(value(v, kind)?);
            *i += 2;
        }
        let r = if vals.len() == 1 {
            vals.pop().unwrap()
        } else {
            J::Array(vals)
        };
        return Ok((if op == "==" { "in".into() } else { op }, r));
    }
    Ok((op, value(w, kind)?))
}

fn exprs(t: &[String], chains: &[String], family: &str) -> R<(Vec<J>, Option<String>)> {
    let mut out = Vec::new();
    let mut comment = None;
    let mut i = 0;
    let mut verdict = false;
    while i < t.len() {
        let w = t[i].as_str();
        if verdict && w != "comment" {
            return Err(invalid(format!("nft: `{w}` after the verdict")));
        }
        i += 1;
        match w {
            "ip" | "ip6" => {
                let f = t.get(i).map(String::as_str).unwrap_or("");
                i += 1;
                match f {
                    "saddr" | "daddr" => {
                        let (op, r) = rhs(t, &mut i, "addr")?;
                        out.push(m(&op, json!({"payload": {"protocol": w, "field": f}}), r));
                    }
                    "protocol" | "nexthdr" => {
                        let (op, r) = rhs(t, &mut i, "proto")?;
                        out.push(m(&op, json!({"payload": {"protocol": w, "field": f}}), r));
                    }
                    other => {
                        return Err(unsupported(format!("nft: `{w} {other}` is not supported")));
                    }
                }
            }
            "tcp" | "udp" | "sctp" => {
                let f = t.get(i).map(String::as_str).unwrap_or("");
                i += 1;
                if !matches!(f, "sport" | "dport") {
                    return Err(unsupported(format!("nft: `{w} {f}` is not supported")));
                }
                let (op, r) = rhs(t, &mut i, "port")?;
                out.push(m(&op, json!({"payload": {"protocol": w, "field": f}}), r));
            }
            "iifname" | "oifname" | "mark" | "meta" => {
                let key = if w == "meta" {
                    let k = t.get(i).map(String::as_str).unwrap_or("");
                    i += 1;
                    k
                } else {
                    w
                };
                let kind = match key {
                    "iifname" | "oifname" => "name",
                    "mark" => "int",
                    "l4proto" => "proto",
                    other => {
                        return Err(unsupported(format!("nft: `meta {other}` is not supported")));
                    }
                };
                let (op, r) = rhs(t, &mut i, kind)?;
                out.push(m(&op, json!({"meta": {"key": key}}), r));
            }
            "ct" => {
                let k = t.get(i).map(String::as_str).unwrap_or("");
                i += 1;
                if k != "state" {
                    return Err(unsupported(format!("nft: `ct {k}` is not supported")));
                }
                let (op, r) = rhs(t, &mut i, "state")?;
                out.push(m(&op, json!({"ct": {"key": "state"}}), r));
            }
            "counter" => out.push(json!({"counter": {"packets": 0, "bytes": 0}})),
            "log" => {
                if t.get(i).map(String::as_str) == Some("prefix") {
                    let p = t
                        .get(i + 1)
                        .ok_or_else(|| invalid("nft: `log prefix` needs a string"))?;
                    out.push(json!({"log": {"prefix": p.trim_matches('"')}}));
                    i += 2;
                } else {
                    out.push(json!({"log": null}));
                }
            }
            "accept" | "drop" | "return" | "continue" => {
                out.push(json!({ w: null }));
                verdict = true;
            }
            "jump" | "goto" => {
                let c = t
                    .get(i)
                    .ok_or_else(|| invalid(format!("nft: `{w}` needs a chain")))?;
                if !chains.contains(c) {
                    return Err(not_found(format!(
                        "nft: Error: Could not process rule: No such file or directory (no chain `{c}`)"
                    )));
                }
                out.push(json!({ w: {"target": c} }));
                i += 1;
                verdict = true;
            }
            "reject" => {
                if t.get(i).map(String::as_str) == Some("with") {
                    let ty = t.get(i + 1).map(String::as_str).unwrap_or("");
                    match ty {
                        "tcp" if t.get(i + 2).map(String::as_str) == Some("reset") => {
                            out.push(json!({"reject": {"type": "tcp reset"}}));
                            i += 3;
                        }
                        "icmp" | "icmpv6" | "icmpx"
                            if t.get(i + 2).map(String::as_str) == Some("type") =>
                        {
                            let e = t
                                .get(i + 3)
                                .ok_or_else(|| invalid("nft: `reject with … type` needs a type"))?;
                            out.push(json!({"reject": {"type": ty, "expr": e}}));
                            i += 4;
                        }
                        other => {
                            return Err(unsupported(format!(
                                "nft: `reject with {other}` is not supported"
                            )));
                        }
                    }
                } else {
                    out.push(json!({"reject": null}));
                }
                verdict = true;
            }
            "comment" => {
                let c = t
                    .get(i)
                    .ok_or_else(|| invalid("nft: `comment` needs a string"))?;
                comment = Some(c.trim_matches('"').to_string());
                i += 1;
            }
            other => {
                return Err(unsupported(format!(
                    "nft: `{other}` is not supported in a rule (family {family})"
                )));
            }
        }
    }
    if out.is_empty() {
        return Err(invalid("nft: the rule is empty"));
    }
    Ok((out, comment))
}
