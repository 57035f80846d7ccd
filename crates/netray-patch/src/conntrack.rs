//! `conntrack -D [filters]` and `conntrack -F` on the collected entries.
//!
//! Filters: `-p/--proto`, `-s/--src/--orig-src`, `-d/--dst/--orig-dst`,
//! `--sport/--orig-port-src`, `--dport/--orig-port-dst`, `-r/--reply-src`,
//! `-q/--reply-dst`, `--reply-port-src`, `--reply-port-dst`, `-m/--mark`, `-w/--zone`,
//! `-f/--family`. Port filters need `-p`, as in the tool. Like the tool, deleting nothing is a
//! failure (`0 flow entries have been deleted`, exit 1): an error of kind `NotFound`.

use std::net::IpAddr;

use netray_snapshot::ConntrackEntry;

use crate::util::{self, next};
use crate::{Ctx, ObjectKind, Out, R, invalid, not_found, unsupported};

fn proto_num(s: &str) -> R<u8> {
    Ok(match s.to_ascii_lowercase().as_str() {
        "tcp" => 6,
        "udp" => 17,
        "icmp" => 1,
        "icmpv6" => 58,
        "sctp" => 132,
        "udplite" => 136,
        "dccp" => 33,
        "gre" => 47,
        n => n
            .parse()
            .map_err(|_| invalid(format!("conntrack: unknown protocol `{s}`")))?,
    })
}

fn proto_name(p: u8) -> String {
    match p {
        6 => "tcp".into(),
        17 => "udp".into(),
        1 => "icmp".into(),
        58 => "icmpv6".into(),
        132 => "sctp".into(),
        n => n.to_string(),
    }
}

/// An entry as `conntrack -L` prints it (shortened).
pub fn fmt_entry(e: &ConntrackEntry) -> String {
    let t = |x: &netray_snapshot::ConntrackTuple| {
        let mut s = format!("src={} dst={}", x.src, x.dst);
        if let Some(p) = x.sport {
            s.push_str(&format!(" sport={p}"));
        }
        if let Some(p) = x.dport {
            s.push_str(&format!(" dport={p}"));
        }
        s
    };
    let mut s = proto_name(e.proto);
    if let Some(st) = &e.tcp_state {
        s.push_str(&format!(" {st}"));
    }
    s.push_str(&format!(" {} {}", t(&e.orig), t(&e.reply)));
    if e.mark != 0 {
        s.push_str(&format!(" mark={}", e.mark));
    }
    if e.zone != 0 {
        s.push_str(&format!(" zone={}", e.zone));
    }
    s
}

#[derive(Default)]
struct Filter {
    proto: Option<u8>,
    osrc: Option<IpAddr>,
    odst: Option<IpAddr>,
    osport: Option<u16>,
    odport: Option<u16>,
    rsrc: Option<IpAddr>,
    rdst: Option<IpAddr>,
    rsport: Option<u16>,
    rdport: Option<u16>,
    mark: Option<(u32, u32)>,
    zone: Option<u16>,
    v6: Option<bool>,
}

impl Filter {
    fn matches(&self, e: &ConntrackEntry) -> bool {
        self.proto.is_none_or(|p| e.proto == p)
            && self.osrc.is_none_or(|a| e.orig.src == a)
            && self.odst.is_none_or(|a| e.orig.dst == a)
            && self.osport.is_none_or(|p| e.orig.sport == Some(p))
            && self.odport.is_none_or(|p| e.orig.dport == Some(p))
            && self.rsrc.is_none_or(|a| e.reply.src == a)
            && self.rdst.is_none_or(|a| e.reply.dst == a)
            && self.rsport.is_none_or(|p| e.reply.sport == Some(p))
            && self.rdport.is_none_or(|p| e.reply.dport == Some(p))
            && self.mark.is_none_or(|(v, m)| e.mark & m == v)
            && self.zone.is_none_or(|z| e.zone == z)
            && self.v6.is_none_or(|v6| e.orig.src.is_ipv6() == v6)
    }
}

pub fn run(ctx: &mut Ctx<'_>, args: &[String]) -> R<Out> {
    let mut cmd = None;
    let mut f = Filter::default();
    let mut ports_given = Vec::new();
    let mut it = args.iter();
    let port = |s: &str| {
        s.parse::<u16>()
            .map_err(|_| invalid(format!("conntrack: bad port `{s}`")))
    };
    while let Some(w) = it.next() {
        let w = w.as_str();
        match w {
            "-D" | "--delete" => cmd = Some("delete"),
            "-F" | "--flush" => cmd = Some("flush"),
            "-L" | "--dump" | "-G" | "--get" | "-C" | "--count" | "-E" | "--event" | "-S"
            | "--stats" => {
                return Err(invalid(format!(
                    "conntrack {w} only reads, changes nothing"
                )));
            }
            "-I" | "--create" | "-U" | "--update" | "-R" | "--load-file" => {
                return Err(unsupported(format!("conntrack {w} is not supported")));
            }
            "-p" | "--proto" | "--protonum" => f.proto = Some(proto_num(next(&mut it, w)?)?),
            "-s" | "--src" | "--orig-src" => f.osrc = Some(util::addr(next(&mut it, w)?, w)?),
            "-d" | "--dst" | "--orig-dst" => f.odst = Some(util::addr(next(&mut it, w)?, w)?),
            "-r" | "--reply-src" => f.rsrc = Some(util::addr(next(&mut it, w)?, w)?),
            "-q" | "--reply-dst" => f.rdst = Some(util::addr(next(&mut it, w)?, w)?),
            "--sport" | "--orig-port-src" => {
                f.osport = Some(port(next(&mut it, w)?)?);
                ports_given.push(w);
            }
            "--dport" | "--orig-port-dst" => {
                f.odport = Some(port(next(&mut it, w)?)?);
                ports_given.push(w);
            }
            "--reply-port-src" => {
                f.rsport = Some(port(next(&mut it, w)?)?);
                ports_given.push(w);
            }
            "--reply-port-dst" => {
                f.rdport = Some(port(next(&mut it, w)?)?);
                ports_given.push(w);
            }
            "-m" | "--mark" => {
                let v = next(&mut it, w)?;
                f.mark = Some(match v.split_once('/') {
                    Some((a, m)) => (util::u32_c(a, w)?, util::u32_c(m, w)?),
                    None => (util::u32_c(v, w)?, u32::MAX),
                });
            }
            "-w" | "--zone" => {
                let v = next(&mut it, w)?;
                f.zone = Some(
                    v.parse()
                        .map_err(|_| invalid(format!("conntrack: bad zone `{v}`")))?,
                );
            }
            "-f" | "--family" => {
                f.v6 = Some(match next(&mut it, w)? {
                    "ipv4" => false,
                    "ipv6" => true,
                    o => return Err(invalid(format!("conntrack: unknown family `{o}`"))),
                });
            }
            "-z" | "--zero" | "-o" | "--output" | "-n" | "-g" | "-j" | "--src-nat"
            | "--dst-nat" | "-t" | "--timeout" | "-u" | "--status" | "-c" | "--secmark"
            | "--label" | "--state" => {
                return Err(unsupported(format!(
                    "conntrack option `{w}` is not supported"
                )));
            }
            other => {
                return Err(unsupported(format!(
                    "conntrack: `{other}` is not a supported option"
                )));
            }
        }
    }
    let Some(cmd) = cmd else {
        return Err(invalid("conntrack: no command given (-D or -F)"));
    };
    if cmd == "flush" && (f.proto.is_some() || f.osrc.is_some() || f.odst.is_some()) {
        return Err(unsupported(
            "conntrack -F with filters: use -D with the filters",
        ));
    }
    if !ports_given.is_empty() && f.proto.is_none() {
        return Err(invalid(format!(
            "conntrack: `{}` needs the protocol (`-p tcp|udp|…`)",
            ports_given[0]
        )));
    }
    let ns = ctx.ns();
    let Some(ct) = ns.conntrack.as_mut() else {
        return Err(unsupported(
            "conntrack: the snapshot of this namespace has no conntrack table",
        ));
    };
    let mut out = Out::default();
    let mut k = 0;
    let mut n = 0u64;
    while k < ct.entries.len() {
        if f.matches(&ct.entries[k]) {
            let e = ct.entries.remove(k);
            out.change(
                ObjectKind::ConntrackEntry,
                format!(
                    "{} {}:{} -> {}:{}",
                    proto_name(e.proto),
                    e.orig.src,
                    e.orig.sport.map(|p| p.to_string()).unwrap_or_default(),
                    e.orig.dst,
                    e.orig.dport.map(|p| p.to_string()).unwrap_or_default()
                ),
                Some(fmt_entry(&e)),
                None,
            );
            n += 1;
        } else {
            k += 1;
        }
    }
    if ct.truncated {
        out.notes.push(
            "the snapshot's conntrack table was truncated: entries it did not record may match too"
                .into(),
        );
    }
    if n == 0 && cmd == "delete" {
        return Err(not_found(
            "conntrack: 0 flow entries have been deleted (no collected entry matches; the tool exits 1)",
        ));
    }
    ct.count = ct.count.saturating_sub(n);
    out.notes
        .push(format!("{n} flow entries have been deleted"));
    Ok(out)
}
