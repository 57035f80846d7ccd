//! Listening TCP and bound UDP sockets over sock_diag (`ss -ltun`).

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;

use netray_snapshot::{Socket as Sock, SocketProto};

use crate::nl::{NETLINK_SOCK_DIAG, Socket, attrs, u8_};

const SOCK_DIAG_BY_FAMILY: u16 = 20;
const TCP_LISTEN: u8 = 10;
const TCP_ESTABLISHED: u8 = 1;

/// Listening TCP and unconnected bound UDP sockets of the namespace, v4 and v6.
pub fn sockets(names: &HashMap<u32, String>) -> io::Result<Vec<Sock>> {
    let mut sock = Socket::open(NETLINK_SOCK_DIAG)?;
    let mut out = Vec::new();
    for (proto, ipproto, states) in [
        (
            SocketProto::Tcp,
            libc::IPPROTO_TCP as u8,
            1u32 << TCP_LISTEN,
        ),
        (SocketProto::Udp, libc::IPPROTO_UDP as u8, u32::MAX),
    ] {
        for fam in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            // inet_diag_req_v2: family, protocol, ext, pad, states, sockid (48 bytes).
            let mut body = vec![0u8; 56];
            body[0] = fam;
            body[1] = ipproto;
            body[4..8].copy_from_slice(&states.to_ne_bytes());
            let start = out.len();
            sock.dump(SOCK_DIAG_BY_FAMILY, &body, &mut |m| {
                let Some(m) = m else {
                    return Ok(());
                };
                if let Some(s) = parse(m.payload, proto, names) {
                    out.push(s);
                }
                Ok(())
            })?;
            let _ = start;
        }
    }
    out.sort_by(|a, b| {
        (a.proto as u8, a.addr, a.port, &a.dev).cmp(&(b.proto as u8, b.addr, b.port, &b.dev))
    });
    out.dedup();
    Ok(out)
}

fn parse(p: &[u8], proto: SocketProto, names: &HashMap<u32, String>) -> Option<Sock> {
    let h = p.get(..72)?;
    let family = h[0];
    let state = h[1];
    let sport = u16::from_be_bytes([h[4], h[5]]);
    let dport = u16::from_be_bytes([h[6], h[7]]);
    let src = &h[8..24];
    let ifindex = u32::from_ne_bytes([h[40], h[41], h[42], h[43]]);
    if proto == SocketProto::Udp && (dport != 0 || state == TCP_ESTABLISHED) {
        return None;
    }
    let addr: IpAddr = if family == libc::AF_INET as u8 {
        IpAddr::from(<[u8; 4]>::try_from(&src[..4]).ok()?)
    } else {
        IpAddr::from(<[u8; 16]>::try_from(src).ok()?)
    };
    let mut v6only = false;
    for (t, v) in attrs(&p[72..]) {
        // INET_DIAG_SKV6ONLY
        if t == 11 {
            v6only = u8_(v).unwrap_or(0) != 0;
        }
    }
    let dual_stack = family == libc::AF_INET6 as u8 && addr.is_unspecified() && !v6only;
    Some(Sock {
        proto,
        addr,
        port: sport,
        dev: if ifindex == 0 {
            None
        } else {
            Some(
                names
                    .get(&ifindex)
                    .cloned()
                    .unwrap_or_else(|| format!("if{ifindex}")),
            )
        },
        dual_stack,
    })
}
