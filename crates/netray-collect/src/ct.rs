//! Conntrack over ctnetlink (read-only dump) and `/proc/net/stat/nf_conntrack`.
//!
//! The dump goes through the same `netlink-sys` driver as rtnetlink ([`Conn`]); the entries
//! are decoded here rather than with `netlink-packet-netfilter` (0.4), which was evaluated
//! and lacks what a snapshot entry needs:
//! - `CTA_ZONE` (the entry's zone) and `CTA_TUPLE_ZONE` (a per-direction zone) are not
//!   typed: they arrive as opaque `ConntrackAttribute::Other` / `Tuple::Other` bytes;
//! - the ICMP / ICMPv6 tuple members (`CTA_PROTO_ICMP{,V6}_{ID,TYPE,CODE}`), which the
//!   snapshot stores as the entry's "ports", are not typed either (`ProtoTuple::Other`);
//! - one attribute the crate rejects (e.g. an unexpected length) fails the whole message,
//!   so a single odd entry could not be counted yet skipped field by field as here;
//! - it would add `derive_more` 0.99 (a proc-macro build) for its nflog types.
//!
//! Tuples, status, mark, timeout and the TCP state are typed there and would be usable, but
//! with zone and ICMP parsed by hand from raw bytes anyway, nothing would be saved. Revisit
//! when the crate types `CTA_ZONE`, `CTA_TUPLE_ZONE` and the ICMP tuple attributes.

use std::collections::BTreeMap;
use std::io;
use std::net::IpAddr;

use netray_snapshot::{ConntrackEntry, ConntrackTuple};

use crate::nl::{Conn, Event, NETLINK_NETFILTER, RawMsg, attrs};

/// `(NFNL_SUBSYS_CTNETLINK << 8) | IPCTNL_MSG_CT_GET`.
const CT_GET: u16 = (1 << 8) | 1;
/// `IPCTNL_MSG_CT_NEW`: the type of dumped entries.
const CT_NEW: u16 = 1 << 8;

fn ip(b: &[u8]) -> Option<IpAddr> {
    match b.len() {
        4 => Some(IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}
fn u8_(b: &[u8]) -> Option<u8> {
    b.first().copied()
}
fn u16_be(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(..2)?.try_into().ok()?))
}
fn u32_be(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}

/// Dump the conntrack table: (entries kept, total seen). Keeps at most `limit` entries but
/// counts all of them.
pub fn dump(limit: usize, problems: &mut Vec<String>) -> io::Result<(Vec<ConntrackEntry>, u64)> {
    let mut conn = Conn::open(NETLINK_NETFILTER)?;
    // nfgenmsg: family AF_UNSPEC (all), version 0, res_id 0.
    let req = RawMsg {
        ty: CT_GET,
        body: vec![0u8; 4],
    };
    let mut out = Vec::new();
    let mut total = 0u64;
    let mut bad = 0usize;
    conn.dump(req, &mut |ev| {
        let m = match ev {
            Event::Restart => {
                out.clear();
                total = 0;
                return;
            }
            Event::Msg(m) => m,
            Event::Bad(_) => {
                bad += 1;
                return;
            }
        };
        if m.ty != CT_NEW {
            return;
        }
        total += 1;
        if out.len() >= limit {
            return;
        }
        match parse_entry(m.body.get(4..).unwrap_or(&[])) {
            Some(e) => out.push(e),
            None => bad += 1,
        }
    })?;
    if bad > 0 {
        problems.push(format!(
            "{bad} conntrack entries were malformed and skipped"
        ));
    }
    Ok((out, total))
}

fn parse_tuple(b: &[u8]) -> Option<(u8, ConntrackTuple, u16)> {
    let (mut src, mut dst, mut proto, mut sport, mut dport, mut zone) =
        (None, None, 0u8, None, None, 0u16);
    let (mut icmp_type, mut icmp_code) = (None, None);
    for (t, v) in attrs(b) {
        match t {
            1 => {
                for (it, iv) in attrs(v) {
                    match it {
                        1 | 3 => src = ip(iv),
                        2 | 4 => dst = ip(iv),
                        _ => {}
                    }
                }
            }
            2 => {
                for (pt, pv) in attrs(v) {
                    match pt {
                        1 => proto = u8_(pv).unwrap_or(0),
                        2 => sport = u16_be(pv),
                        3 => dport = u16_be(pv),
                        4 | 7 => sport = u16_be(pv),
                        5 | 8 => icmp_type = u8_(pv),
                        6 | 9 => icmp_code = u8_(pv),
                        _ => {}
                    }
                }
            }
            3 => zone = u16_be(v).unwrap_or(0),
            _ => {}
        }
    }
    if let (Some(t), c) = (icmp_type, icmp_code) {
        dport = Some(((t as u16) << 8) | c.unwrap_or(0) as u16);
    }
    Some((
        proto,
        ConntrackTuple {
            src: src?,
            dst: dst?,
            sport,
            dport,
        },
        zone,
    ))
}

const STATUS: [&str; 16] = [
    "EXPECTED",
    "SEEN_REPLY",
    "ASSURED",
    "CONFIRMED",
    "SRC_NAT",
    "DST_NAT",
    "SEQ_ADJUST",
    "SRC_NAT_DONE",
    "DST_NAT_DONE",
    "DYING",
    "FIXED_TIMEOUT",
    "TEMPLATE",
    "NAT_CLASH",
    "HELPER",
    "OFFLOAD",
    "HW_OFFLOAD",
];

const TCP_STATES: [&str; 10] = [
    "NONE",
    "SYN_SENT",
    "SYN_RECV",
    "ESTABLISHED",
    "FIN_WAIT",
    "CLOSE_WAIT",
    "LAST_ACK",
    "TIME_WAIT",
    "CLOSE",
    "SYN_SENT2",
];

fn parse_entry(b: &[u8]) -> Option<ConntrackEntry> {
    let (mut orig, mut reply) = (None, None);
    let mut e = ConntrackEntry {
        proto: 0,
        orig: ConntrackTuple {
            src: [0u8; 4].into(),
            dst: [0u8; 4].into(),
            sport: None,
            dport: None,
        },
        reply: ConntrackTuple {
            src: [0u8; 4].into(),
            dst: [0u8; 4].into(),
            sport: None,
            dport: None,
        },
        tcp_state: None,
        status: Vec::new(),
        mark: 0,
        zone: 0,
        timeout: 0,
    };
    for (t, v) in attrs(b) {
        match t {
            1 => orig = parse_tuple(v),
            2 => reply = parse_tuple(v),
            3 => {
                let s = u32_be(v).unwrap_or(0);
                for (i, name) in STATUS.iter().enumerate() {
                    if s & (1 << i) != 0 {
                        e.status.push(name.to_string());
                    }
                }
            }
            4 => {
                for (pt, pv) in attrs(v) {
                    if pt == 1 {
                        for (tt, tv) in attrs(pv) {
                            if tt == 1 {
                                let st = u8_(tv).unwrap_or(0) as usize;
                                e.tcp_state = Some(
                                    TCP_STATES
                                        .get(st)
                                        .map(|s| s.to_string())
                                        .unwrap_or_else(|| format!("state-{st}")),
                                );
                            }
                        }
                    }
                }
            }
            7 => e.timeout = u32_be(v).unwrap_or(0),
            8 => e.mark = u32_be(v).unwrap_or(0),
            18 => e.zone = u16_be(v).unwrap_or(0),
            _ => {}
        }
    }
    let (proto, o, oz) = orig?;
    let (_, r, _) = reply?;
    e.proto = proto;
    e.orig = o;
    e.reply = r;
    if e.zone == 0 {
        e.zone = oz;
    }
    Some(e)
}

/// `/proc/net/stat/nf_conntrack` (hex, one row per CPU) summed over CPUs. `entries` is a
/// global gauge repeated on every row, so it is taken once, not summed.
pub fn stats(text: &str) -> Option<BTreeMap<String, u64>> {
    let mut lines = text.lines();
    let header: Vec<&str> = lines.next()?.split_whitespace().collect();
    let mut out: BTreeMap<String, u64> = header.iter().map(|h| (h.to_string(), 0)).collect();
    let mut first = true;
    for line in lines {
        let vals: Vec<&str> = line.split_whitespace().collect();
        if vals.len() != header.len() {
            continue;
        }
        for (h, v) in header.iter().zip(vals) {
            let n = u64::from_str_radix(v, 16).ok()?;
            let slot = out.entry(h.to_string()).or_default();
            if *h == "entries" {
                if first {
                    *slot = n;
                }
            } else {
                *slot += n;
            }
        }
        first = false;
    }
    Some(out)
}

#[cfg(test)]
mod tests {
    #[test]
    fn stats_sum_cpus_but_not_entries() {
        let t = "entries  found insert_failed drop\n00000005  00000001 00000002 00000000\n00000005  00000003 00000000 0000000a\n";
        let s = super::stats(t).expect("parses");
        assert_eq!(s["entries"], 5);
        assert_eq!(s["found"], 4);
        assert_eq!(s["insert_failed"], 2);
        assert_eq!(s["drop"], 10);
    }

    #[test]
    fn odd_entries_never_panic() {
        let mut x: u64 = 88172645463325252;
        for _ in 0..20_000 {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            let len = (x % 200) as usize;
            let buf: Vec<u8> = (0..len)
                .map(|i| (x.rotate_left(i as u32 % 64) & 0xff) as u8)
                .collect();
            let _ = super::parse_entry(&buf);
        }
    }
}
