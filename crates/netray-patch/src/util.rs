//! Small parsers shared by the command handlers.

use std::net::IpAddr;

use ipnet::IpNet;

use crate::{R, invalid, unsupported};

/// iproute2's `matches(word, full)`: `word` is a non-empty prefix of `full`.
pub fn matches(word: &str, full: &str) -> bool {
    !word.is_empty() && full.starts_with(word)
}

/// Address family selected with `-4` / `-6`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Fam {
    /// Not given.
    Any,
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl Fam {
    /// Does `a` belong to this family?
    pub fn admits(self, a: &IpAddr) -> bool {
        match self {
            Fam::Any => true,
            Fam::V4 => a.is_ipv4(),
            Fam::V6 => a.is_ipv6(),
        }
    }

    /// The family of `a`, checked against this one.
    pub fn check(self, a: &IpAddr, what: &str) -> R<Fam> {
        if !self.admits(a) {
            return Err(invalid(format!(
                "{what} `{a}` is not of the address family selected ({})",
                if self == Fam::V4 { "-4" } else { "-6" }
            )));
        }
        Ok(if a.is_ipv4() { Fam::V4 } else { Fam::V6 })
    }
}

/// Parse an address.
pub fn addr(s: &str, what: &str) -> R<IpAddr> {
    s.parse()
        .map_err(|_| invalid(format!("{what}: `{s}` is not an IP address")))
}

/// Parse `A[/N]` as iproute2 does for a destination: `default`/`all`/`any` need `fam`;
/// a bare address is a host prefix; host bits set are refused as the kernel does.
pub fn prefix(s: &str, fam: Fam, what: &str) -> R<IpNet> {
    if matches!(s, "default" | "all" | "any") {
        return Ok(match fam {
            Fam::V6 => "::/0".parse().unwrap(),
            _ => "0.0.0.0/0".parse().unwrap(),
        });
    }
    let net = match s.split_once('/') {
        Some((a, l)) => {
            let a = addr(a, what)?;
            let l: u8 = l
                .parse()
                .map_err(|_| invalid(format!("{what}: `{s}`: bad prefix length")))?;
            IpNet::new(a, l).map_err(|_| invalid(format!("{what}: `{s}`: bad prefix length")))?
        }
        None => IpNet::from(addr(s, what)?),
    };
    fam.check(&net.addr(), what)?;
    if net.trunc() != net {
        return Err(invalid(format!(
            "{what} `{s}`: Invalid prefix for given prefix length (host bits set; the network is {})",
            net.trunc()
        )));
    }
    Ok(net)
}

/// Like [`prefix`] but a prefix with host bits set is truncated (`ip rule`, iptables).
pub fn prefix_trunc(s: &str, fam: Fam, what: &str) -> R<IpNet> {
    if matches!(s, "default" | "all" | "any") {
        return prefix(s, fam, what);
    }
    let net = match s.split_once('/') {
        Some((a, l)) => {
            let a = addr(a, what)?;
            let l: u8 = l
                .parse()
                .map_err(|_| invalid(format!("{what}: `{s}`: bad prefix length")))?;
            IpNet::new(a, l).map_err(|_| invalid(format!("{what}: `{s}`: bad prefix length")))?
        }
        None => IpNet::from(addr(s, what)?),
    };
    fam.check(&net.addr(), what)?;
    Ok(net.trunc())
}

/// Parse a MAC address (`aa:bb:cc:dd:ee:ff`, `-` separators too) to lowercase `aa:bb:..`.
pub fn mac(s: &str) -> R<String> {
    let parts: Vec<&str> = s.split([':', '-']).collect();
    if parts.len() != 6
        || parts
            .iter()
            .any(|p| p.is_empty() || p.len() > 2 || !p.chars().all(|c| c.is_ascii_hexdigit()))
    {
        return Err(invalid(format!("`{s}` is not a MAC address")));
    }
    Ok(parts
        .iter()
        .map(|p| format!("{:0>2}", p.to_ascii_lowercase()))
        .collect::<Vec<_>>()
        .join(":"))
}

/// Parse an unsigned integer the way iproute2's `get_u32` does (decimal, `0x` hex, `0` octal).
pub fn u32_c(s: &str, what: &str) -> R<u32> {
    let r = if let Some(h) = s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        u32::from_str_radix(h, 16)
    } else if s.len() > 1 && s.starts_with('0') {
        u32::from_str_radix(&s[1..], 8)
    } else {
        s.parse()
    };
    r.map_err(|_| invalid(format!("{what}: `{s}` is not a valid number")))
}

/// Routing table by name or number (`/etc/iproute2/rt_tables` defaults only).
pub fn table(s: &str) -> R<u32> {
    Ok(match s {
        "local" => 255,
        "main" => 254,
        "default" => 253,
        "unspec" => 0,
        _ => s.parse().map_err(|_| {
            unsupported(format!(
                "table `{s}`: only `local`, `main`, `default` and numeric tables are known"
            ))
        })?,
    })
}

/// Table name as `ip` prints it.
pub fn table_name(t: u32) -> String {
    match t {
        255 => "local".into(),
        254 => "main".into(),
        253 => "default".into(),
        n => n.to_string(),
    }
}

/// Route protocol as the snapshot stores it, from a name or number.
pub fn proto(s: &str) -> R<String> {
    const NAMES: &[(u8, &str)] = &[
        (0, "unspec"),
        (1, "redirect"),
        (2, "kernel"),
        (3, "boot"),
        (4, "static"),
        (8, "gated"),
        (9, "ra"),
        (10, "mrt"),
        (11, "zebra"),
        (12, "bird"),
        (13, "dnrouted"),
        (14, "xorp"),
        (15, "ntk"),
        (16, "dhcp"),
        (17, "mrouted"),
        (18, "keepalived"),
        (42, "babel"),
        (99, "openr"),
        (186, "bgp"),
        (187, "isis"),
        (188, "ospf"),
        (189, "rip"),
        (192, "eigrp"),
    ];
    if let Some((_, n)) = NAMES.iter().find(|(_, n)| *n == s) {
        return Ok(n.to_string());
    }
    let n: u8 = s
        .parse()
        .map_err(|_| invalid(format!("protocol `{s}` is not a known route protocol")))?;
    Ok(NAMES
        .iter()
        .find(|(v, _)| *v == n)
        .map(|(_, name)| name.to_string())
        .unwrap_or_else(|| n.to_string()))
}

/// Route scope as the snapshot stores it.
pub fn scope(s: &str) -> R<String> {
    Ok(match s {
        "global" | "universe" | "0" => "global",
        "site" | "200" => "site",
        "link" | "253" => "link",
        "host" | "254" => "host",
        "nowhere" | "255" => "nowhere",
        _ => return Err(invalid(format!("scope `{s}` is not a known scope"))),
    }
    .to_string())
}

/// A word after an option, or an error naming the option.
pub fn next<'a>(it: &mut std::slice::Iter<'a, String>, opt: &str) -> R<&'a str> {
    it.next()
        .map(String::as_str)
        .ok_or_else(|| invalid(format!("option `{opt}` needs an argument")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse() {
        assert_eq!(mac("0E:6E:72:0:0:1").unwrap(), "0e:6e:72:00:00:01");
        assert!(mac("0e:6e:72:00:00").is_err());
        assert!(prefix("10.0.0.1/24", Fam::Any, "x").is_err());
        assert_eq!(prefix("default", Fam::V6, "x").unwrap().to_string(), "::/0");
        assert_eq!(
            prefix("10.0.0.1", Fam::Any, "x").unwrap().to_string(),
            "10.0.0.1/32"
        );
        assert!(prefix("10.0.0.1", Fam::V6, "x").is_err());
        assert_eq!(u32_c("0x10", "x").unwrap(), 16);
        assert!(matches("ro", "route") && !matches("", "route") && !matches("rx", "route"));
    }
}
