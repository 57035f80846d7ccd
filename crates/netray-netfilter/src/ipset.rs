//! `ipset save` output: every `hash:*`, `bitmap:*` and `list:set` type, for `-m set`.

use std::collections::{HashMap, HashSet};
use std::net::IpAddr;

use ipnet::IpNet;

use crate::{Diagnostic, PortRange};

/// What one dimension of a set holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Dim {
    /// `ip` (with ranges/CIDR expanded or kept as ranges).
    Ip,
    /// `net`.
    Net,
    /// `port` (with protocol).
    Port,
    /// `iface`.
    Iface,
    /// `mark`.
    Mark,
    /// `mac`.
    Mac,
}

/// One component of a set entry.
#[derive(Debug, Clone, PartialEq)]
pub enum Comp {
    /// An address range (inclusive), used for ip and net dimensions.
    Addr {
        /// First address.
        lo: IpAddr,
        /// Last address.
        hi: IpAddr,
        /// Prefix length when written as CIDR (more specific wins for `nomatch`).
        prefix: u8,
    },
    /// Protocol and port range.
    Port(u8, PortRange),
    /// Interface (`physdev:` prefix for bridge ports).
    Iface(String, bool),
    /// Mark.
    Mark(u32),
    /// MAC.
    Mac([u8; 6]),
}

/// One `add` line.
#[derive(Debug, Clone, PartialEq)]
pub struct Entry {
    /// Components, one per dimension.
    pub comps: Vec<Comp>,
    /// `nomatch` flag (hash:net types): excludes the element.
    pub nomatch: bool,
}

/// One set.
#[derive(Debug, Clone, PartialEq)]
pub struct Ipset {
    /// Name.
    pub name: String,
    /// Type as written (`hash:ip,port`).
    pub kind: String,
    /// Dimensions.
    pub dims: Vec<Dim>,
    /// Entries (for `list:set`, empty: see `members`).
    pub entries: Vec<Entry>,
    /// Member sets of a `list:set`.
    pub members: Vec<String>,
    /// Mark mask of `hash:ip,mark` (`markmask`).
    pub markmask: u32,
    /// Fast path for one-dimensional address sets without ranges: exact addresses.
    exact: HashSet<IpAddr>,
}

/// A value the packet provides for one dimension.
#[derive(Debug, Clone, Copy)]
pub enum Key<'a> {
    /// Address.
    Ip(IpAddr),
    /// Protocol and port (port `None` for protocols without ports).
    Port(u8, Option<u16>),
    /// Interface name, if known.
    Iface(Option<&'a str>),
    /// Packet mark.
    Mark(u32),
    /// MAC address, if known.
    Mac(Option<[u8; 6]>),
}

/// Every set, by name.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Ipsets {
    /// Sets by name.
    pub sets: HashMap<String, Ipset>,
    /// Problems found.
    pub diagnostics: Vec<Diagnostic>,
}

fn dims_of(kind: &str) -> Option<Vec<Dim>> {
    let (_, d) = kind.split_once(':')?;
    if kind == "list:set" {
        return Some(Vec::new());
    }
    d.split(',')
        .map(|p| {
            Some(match p {
                "ip" => Dim::Ip,
                "net" => Dim::Net,
                "port" => Dim::Port,
                "iface" => Dim::Iface,
                "mark" => Dim::Mark,
                "mac" => Dim::Mac,
                _ => return None,
            })
        })
        .collect()
}

impl Ipsets {
    /// Parse `ipset save` (also `ipset restore` input: `create`/`add`, `-exist`, `-!`).
    pub fn parse(text: &str) -> Ipsets {
        let mut out = Ipsets::default();
        for (n, line) in text.lines().enumerate() {
            let lineno = n as u32 + 1;
            let t = line.trim();
            if t.is_empty() || t.starts_with('#') || t == "COMMIT" {
                continue;
            }
            if let Err((col, msg)) = out.line(t) {
                out.diagnostics.push(Diagnostic {
                    source: "ipset save".into(),
                    line: lineno,
                    column: (line.len() - line.trim_start().len() + col + 1) as u32,
                    message: msg,
                    text: line.to_string(),
                });
            }
        }
        out
    }

    fn line(&mut self, t: &str) -> Result<(), (usize, String)> {
        let words: Vec<(usize, &str)> = t
            .split_ascii_whitespace()
            .map(|w| (w.as_ptr() as usize - t.as_ptr() as usize, w))
            .filter(|(_, w)| *w != "-exist" && *w != "-!")
            .collect();
        let cmd = words[0].1;
        match cmd {
            "create" | "-N" | "n" | "new" => {
                let (_, name) = *words.get(1).ok_or((0, "set name missing".to_string()))?;
                let (c, kind) = *words.get(2).ok_or((0, "set type missing".to_string()))?;
                let dims = dims_of(kind).ok_or((c, format!("unknown set type `{kind}`")))?;
                let mut markmask = u32::MAX;
                let mut i = 3;
                while i < words.len() {
                    if words[i].1 == "markmask"
                        && let Some(v) = words.get(i + 1).and_then(|w| crate::ipt::parse_u32(w.1))
                    {
                        markmask = v;
                    }
                    i += 1;
                }
                self.sets.insert(
                    name.to_string(),
                    Ipset {
                        name: name.to_string(),
                        kind: kind.to_string(),
                        dims,
                        entries: Vec::new(),
                        members: Vec::new(),
                        markmask,
                        exact: HashSet::new(),
                    },
                );
                Ok(())
            }
            "add" | "-A" | "a" => {
                let (c0, name) = *words.get(1).ok_or((0, "set name missing".to_string()))?;
                let (c, elem) = *words.get(2).ok_or((0, "element missing".to_string()))?;
                let set = self
                    .sets
                    .get_mut(name)
                    .ok_or((c0, format!("set `{name}` not created before `add`")))?;
                if set.kind == "list:set" {
                    set.members.push(elem.to_string());
                    return Ok(());
                }
                let nomatch = words[3..].iter().any(|w| w.1 == "nomatch");
                let parts: Vec<&str> = elem.split(',').collect();
                if parts.len() != set.dims.len() {
                    return Err((
                        c,
                        format!("element `{elem}` does not have {} parts", set.dims.len()),
                    ));
                }
                let mut comps = Vec::with_capacity(parts.len());
                for (d, p) in set.dims.iter().zip(&parts) {
                    comps.push(comp(*d, p).ok_or((c, format!("bad element part `{p}`")))?);
                }
                if set.dims.len() == 1
                    && !nomatch
                    && let Comp::Addr { lo, hi, .. } = comps[0]
                    && lo == hi
                {
                    set.exact.insert(lo);
                    return Ok(());
                }
                set.entries.push(Entry { comps, nomatch });
                Ok(())
            }
            "flush" | "destroy" | "swap" | "rename" | "del" => Ok(()),
            _ => Err((0, format!("unknown ipset command `{cmd}`"))),
        }
    }

    /// Is the key tuple in set `name`? `None` when the set is not known.
    /// `return_nomatch`: report a `nomatch` hit as a match (`--return-nomatch`).
    pub fn test(&self, name: &str, keys: &[Key<'_>], return_nomatch: bool) -> Option<bool> {
        self.test_depth(name, keys, return_nomatch, 0)
    }

    fn test_depth(
        &self,
        name: &str,
        keys: &[Key<'_>],
        return_nomatch: bool,
        depth: u32,
    ) -> Option<bool> {
        let set = self.sets.get(name)?;
        if set.kind == "list:set" {
            if depth > 4 {
                return None;
            }
            let mut unknown = false;
            for m in &set.members {
                match self.test_depth(m, keys, return_nomatch, depth + 1) {
                    Some(true) => return Some(true),
                    Some(false) => {}
                    None => unknown = true,
                }
            }
            return if unknown { None } else { Some(false) };
        }
        if keys.len() < set.dims.len() {
            return Some(false);
        }
        if set.dims.len() == 1
            && let Key::Ip(a) = keys[0]
            && set.exact.contains(&a)
        {
            return Some(true);
        }
        // Most specific matching entry decides (nomatch entries exclude).
        let mut best: Option<(u32, bool)> = None;
        for e in &set.entries {
            let mut spec = 0u32;
            let ok = e.comps.iter().zip(keys).all(|(c, k)| match (c, k) {
                (Comp::Addr { lo, hi, prefix }, Key::Ip(a)) => {
                    spec += *prefix as u32;
                    in_range(*a, *lo, *hi)
                }
                (Comp::Port(p, r), Key::Port(kp, Some(port))) => p == kp && r.contains(*port),
                (Comp::Port(p, _), Key::Port(kp, None)) => p == kp && !matches!(p, 6 | 17 | 132),
                (Comp::Iface(n, _), Key::Iface(Some(d))) => {
                    if let Some(pre) = n.strip_suffix('+') {
                        d.starts_with(pre)
                    } else {
                        n == d
                    }
                }
                (Comp::Mark(m), Key::Mark(km)) => *m == (km & set.markmask),
                (Comp::Mac(m), Key::Mac(Some(km))) => m == km,
                _ => false,
            });
            if ok && best.is_none_or(|(s, _)| spec > s) {
                best = Some((spec, e.nomatch));
            }
        }
        Some(match best {
            Some((_, nomatch)) => !nomatch || return_nomatch,
            None => false,
        })
    }
}

fn in_range(a: IpAddr, lo: IpAddr, hi: IpAddr) -> bool {
    match (a, lo, hi) {
        (IpAddr::V4(a), IpAddr::V4(l), IpAddr::V4(h)) => l <= a && a <= h,
        (IpAddr::V6(a), IpAddr::V6(l), IpAddr::V6(h)) => l <= a && a <= h,
        _ => false,
    }
}

fn comp(d: Dim, p: &str) -> Option<Comp> {
    Some(match d {
        Dim::Ip | Dim::Net => {
            if let Some((a, b)) = p.split_once('-') {
                let lo: IpAddr = a.parse().ok()?;
                let hi: IpAddr = b.parse().ok()?;
                let max = if lo.is_ipv4() { 32 } else { 128 };
                Comp::Addr {
                    lo,
                    hi,
                    prefix: max,
                }
            } else {
                let net: IpNet = if p.contains('/') {
                    p.parse::<IpNet>().ok()?.trunc()
                } else {
                    IpNet::from(p.parse::<IpAddr>().ok()?)
                };
                Comp::Addr {
                    lo: net.network(),
                    hi: net.broadcast(),
                    prefix: net.prefix_len(),
                }
            }
        }
        Dim::Port => {
            let (proto, port) = match p.split_once(':') {
                Some((pr, po)) => (crate::ipt::proto_number(pr)?, po),
                None => (6, p),
            };
            let r = if proto == 1 || proto == 58 {
                // icmp:TYPE/CODE: stored as type<<8|code.
                let (t, c) = port.split_once('/').unwrap_or((port, "0"));
                let v = (t.parse::<u16>().ok()? << 8) | c.parse::<u16>().ok()?;
                PortRange::one(v)
            } else {
                let (a, b) = port.split_once('-').unwrap_or((port, port));
                PortRange {
                    lo: a.parse().ok()?,
                    hi: b.parse().ok()?,
                }
            };
            Comp::Port(proto, r)
        }
        Dim::Iface => match p.strip_prefix("physdev:") {
            Some(n) => Comp::Iface(n.to_string(), true),
            None => Comp::Iface(p.to_string(), false),
        },
        Dim::Mark => Comp::Mark(crate::ipt::parse_u32(p)?),
        Dim::Mac => Comp::Mac(crate::ipt::parse_mac(&p.to_ascii_lowercase())?),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const SAVE: &str = "create KUBE-X hash:ip,port family inet hashsize 1024 maxelem 65536\n\
add KUBE-X 10.0.0.1,tcp:80\n\
add KUBE-X 10.0.0.2,udp:53\n\
create NETS hash:net family inet\n\
add NETS 10.0.0.0/8\n\
add NETS 10.1.0.0/16 nomatch\n\
create IPS hash:ip family inet\n\
add IPS 192.168.1.1\n\
create PORTS bitmap:port range 0-65535\n\
add PORTS 8080-8090\n\
create L list:set size 8\n\
add L IPS\n\
add L NETS\n";

    fn ip(s: &str) -> IpAddr {
        s.parse().unwrap()
    }

    #[test]
    fn lookups() {
        let s = Ipsets::parse(SAVE);
        assert!(s.diagnostics.is_empty(), "{:?}", s.diagnostics);
        assert_eq!(
            s.test(
                "KUBE-X",
                &[Key::Ip(ip("10.0.0.1")), Key::Port(6, Some(80))],
                false
            ),
            Some(true)
        );
        assert_eq!(
            s.test(
                "KUBE-X",
                &[Key::Ip(ip("10.0.0.1")), Key::Port(17, Some(80))],
                false
            ),
            Some(false)
        );
        assert_eq!(
            s.test("KUBE-X", &[Key::Ip(ip("10.0.0.1"))], false),
            Some(false)
        );
        assert_eq!(
            s.test("NETS", &[Key::Ip(ip("10.2.3.4"))], false),
            Some(true)
        );
        assert_eq!(
            s.test("NETS", &[Key::Ip(ip("10.1.3.4"))], false),
            Some(false)
        );
        assert_eq!(s.test("NETS", &[Key::Ip(ip("10.1.3.4"))], true), Some(true));
        assert_eq!(
            s.test("IPS", &[Key::Ip(ip("192.168.1.1"))], false),
            Some(true)
        );
        assert_eq!(
            s.test("PORTS", &[Key::Port(6, Some(8085))], false),
            Some(true)
        );
        assert_eq!(
            s.test("PORTS", &[Key::Port(6, Some(8091))], false),
            Some(false)
        );
        assert_eq!(
            s.test("L", &[Key::Ip(ip("192.168.1.1"))], false),
            Some(true)
        );
        assert_eq!(s.test("L", &[Key::Ip(ip("11.0.0.1"))], false), Some(false));
        assert_eq!(s.test("NOPE", &[Key::Ip(ip("11.0.0.1"))], false), None);
    }

    #[test]
    fn errors_have_positions() {
        let s = Ipsets::parse("create A hash:ip\nadd A 10.0.0.300\nadd B 1.2.3.4\nfrob\n");
        assert_eq!(s.diagnostics.len(), 3);
        assert_eq!(s.diagnostics[0].line, 2);
        assert_eq!(s.diagnostics[0].column, 7);
        assert_eq!(s.diagnostics[1].line, 3);
    }
}
