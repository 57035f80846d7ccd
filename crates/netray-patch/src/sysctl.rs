//! `sysctl [-w] KEY=VALUE...` on the namespace's recorded sysctls.
//!
//! Keys are normalised as procps does: when the first separator is `/` the key is a path
//! (`net/ipv4/conf/flannel.1/rp_filter`), otherwise dotted with `/` standing for a dot in an
//! interface name (`net.ipv4.conf.flannel/1.rp_filter`, the form snapshots store). Writing
//! `net.ipv4.ip_forward` or `net.ipv4.conf.all.forwarding` sets both and the `default` and
//! every interface's `forwarding`, as the kernel does; `net.ipv6.conf.all.forwarding` likewise
//! for IPv6.

use crate::{Ctx, ObjectKind, Out, R, invalid, unsupported};

/// Dotted key (the snapshot's form) from what the user typed.
pub fn normalize_key(k: &str) -> String {
    let k = k.strip_prefix("/proc/sys/").unwrap_or(k);
    let first = k.find(['.', '/']);
    let path = match first {
        Some(i) if k.as_bytes()[i] == b'/' => k.to_string(),
        // Dotted: swap `.` and `/` to get the path.
        _ => swap(k),
    };
    swap(path.trim_matches('/'))
}

fn swap(s: &str) -> String {
    s.chars()
        .map(|c| match c {
            '.' => '/',
            '/' => '.',
            c => c,
        })
        .collect()
}

pub fn run(ctx: &mut Ctx<'_>, args: &[String]) -> R<Out> {
    let mut out = Out::default();
    let mut assigns = Vec::new();
    let mut write = false;
    for a in args {
        match a.as_str() {
            "-w" | "--write" => write = true,
            "-q" | "--quiet" | "-e" | "--ignore" => {}
            o if o.starts_with('-') => {
                return Err(unsupported(format!(
                    "sysctl option `{o}` is not supported (only `-w KEY=VALUE`)"
                )));
            }
            kv => assigns.push(kv),
        }
    }
    if assigns.is_empty() {
        return Err(invalid("sysctl: no `KEY=VALUE` given"));
    }
    for kv in assigns {
        let Some((k, v)) = kv.split_once('=') else {
            return Err(invalid(format!(
                "sysctl `{kv}`{}: only reads, changes nothing (write `KEY=VALUE`)",
                if write { " with -w" } else { "" }
            )));
        };
        set(ctx, k.trim(), v.trim(), &mut out)?;
    }
    Ok(out)
}

fn set(ctx: &mut Ctx<'_>, key: &str, value: &str, out: &mut Out) -> R<()> {
    let key = normalize_key(key);
    let path = format!("/proc/sys/{}", swap(&key));
    let ns = ctx.ns_ref();
    let parts: Vec<&str> = key.split('.').collect();
    // Per-interface keys: the interface must exist.
    if parts.len() == 5 && parts[0] == "net" && parts[2] == "conf" {
        let ifname = parts[3].replace('/', ".");
        if !matches!(ifname.as_str(), "all" | "default") && ns.link(&ifname).is_none() {
            return Err(invalid(format!(
                "sysctl: cannot stat {path}: No such file or directory (no interface `{ifname}` in this namespace)"
            )));
        }
    }
    let old = ns.sysctl(&key).map(str::to_string);
    let sibling = if parts.len() == 5 && parts[0] == "net" && parts[2] == "conf" {
        ["all", "default"].iter().find_map(|s| {
            ns.sysctl(&format!("net.{}.conf.{s}.{}", parts[1], parts[4]))
                .map(str::to_string)
        })
    } else {
        None
    };
    if old.is_none() && sibling.is_none() {
        return Err(unsupported(format!(
            "sysctl `{key}` is not recorded in this namespace's snapshot (the collector records the sysctls netray models; the key may be misspelt, or its module not loaded: `cannot stat {path}`)"
        )));
    }
    if value.is_empty() {
        return Err(invalid(format!("sysctl `{key}`: empty value")));
    }
    // Integer-valued keys take integers (the kernel says `Invalid argument`).
    let value: String = value.split_whitespace().collect::<Vec<_>>().join("\t");
    let reference = old.clone().or(sibling);
    if let Some(r) = &reference {
        let is_int = |s: &str| {
            let ws: Vec<&str> = s.split_whitespace().collect();
            !ws.is_empty() && ws.iter().all(|w| w.parse::<i64>().is_ok())
        };
        if is_int(r) && !is_int(&value) {
            return Err(invalid(format!(
                "sysctl: setting key \"{key}\": Invalid argument (`{value}` is not an integer)"
            )));
        }
    }
    let mut keys = vec![key.clone()];
    let fwd_v4 = key == "net.ipv4.ip_forward" || key == "net.ipv4.conf.all.forwarding";
    let fwd_v6 = key == "net.ipv6.conf.all.forwarding";
    if fwd_v4 || fwd_v6 {
        let fam = if fwd_v4 { "ipv4" } else { "ipv6" };
        let mut side: Vec<String> = ctx
            .ns_ref()
            .sysctls
            .keys()
            .filter(|k| {
                k.strip_prefix(&format!("net.{fam}.conf."))
                    .is_some_and(|rest| rest.ends_with(".forwarding"))
            })
            .cloned()
            .collect();
        if fwd_v4 {
            side.push("net.ipv4.ip_forward".into());
            side.push("net.ipv4.conf.all.forwarding".into());
        }
        side.sort();
        side.dedup();
        side.retain(|k| *k != key);
        out.notes.push(format!(
            "the kernel applies `{key}` to `all`, `default` and every interface's `forwarding`{}",
            if fwd_v4 {
                " (net.ipv4.ip_forward is the same setting as conf.all.forwarding)"
            } else {
                ""
            }
        ));
        keys.extend(side);
    }
    let ns = ctx.ns();
    for k in keys {
        let before = ns.sysctls.get(&k).cloned();
        if before.as_deref() == Some(value.as_str()) {
            continue;
        }
        ns.sysctls.insert(k.clone(), value.clone());
        out.change(ObjectKind::Sysctl, k, before, Some(value.clone()));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys() {
        assert_eq!(normalize_key("net.ipv4.ip_forward"), "net.ipv4.ip_forward");
        assert_eq!(normalize_key("net/ipv4/ip_forward"), "net.ipv4.ip_forward");
        assert_eq!(
            normalize_key("net/ipv4/conf/flannel.1/rp_filter"),
            "net.ipv4.conf.flannel/1.rp_filter"
        );
        assert_eq!(
            normalize_key("net.ipv4.conf.flannel/1.rp_filter"),
            "net.ipv4.conf.flannel/1.rp_filter"
        );
        assert_eq!(
            normalize_key("/proc/sys/net/ipv4/conf/eth0/rp_filter"),
            "net.ipv4.conf.eth0.rp_filter"
        );
    }
}
