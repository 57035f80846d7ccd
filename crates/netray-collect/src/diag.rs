//! Listening TCP and bound UDP sockets over sock_diag (`ss -ltun`), with requests and
//! replies typed by `netlink-packet-sock-diag`.

use std::collections::HashMap;
use std::io;

use netlink_packet_sock_diag::SockDiagMessage;
use netlink_packet_sock_diag::inet::{
    ExtensionFlags, InetRequest, InetResponse, SocketId, StateFlags, nlas::Nla,
};
use netray_snapshot::{Socket as Sock, SocketProto};

use crate::nl::{Conn, Event, NETLINK_SOCK_DIAG};

const TCP_ESTABLISHED: u8 = 1;

/// Listening TCP and unconnected bound UDP sockets of the namespace, v4 and v6.
pub fn sockets(names: &HashMap<u32, String>) -> io::Result<Vec<Sock>> {
    let mut conn = Conn::open(NETLINK_SOCK_DIAG)?;
    let mut out = Vec::new();
    for (proto, ipproto, states) in [
        (
            SocketProto::Tcp,
            libc::IPPROTO_TCP as u8,
            StateFlags::LISTEN,
        ),
        (
            SocketProto::Udp,
            libc::IPPROTO_UDP as u8,
            StateFlags::from_bits_retain(u32::MAX),
        ),
    ] {
        for fam in [libc::AF_INET as u8, libc::AF_INET6 as u8] {
            let socket_id = if fam == libc::AF_INET as u8 {
                SocketId::new_v4()
            } else {
                SocketId::new_v6()
            };
            let req = SockDiagMessage::InetRequest(InetRequest {
                family: fam,
                protocol: ipproto,
                extensions: ExtensionFlags::empty(),
                states: states.clone(),
                socket_id,
            });
            conn.dump(req, &mut |ev| {
                if let Event::Msg(SockDiagMessage::InetResponse(r)) = ev
                    && let Some(s) = parse(&r, proto, names)
                {
                    out.push(s);
                }
            })?;
        }
    }
    out.sort_by(|a, b| {
        (a.proto as u8, a.addr, a.port, &a.dev).cmp(&(b.proto as u8, b.addr, b.port, &b.dev))
    });
    out.dedup();
    Ok(out)
}

fn parse(r: &InetResponse, proto: SocketProto, names: &HashMap<u32, String>) -> Option<Sock> {
    let h = &r.header;
    let id = &h.socket_id;
    if proto == SocketProto::Udp && (id.destination_port != 0 || h.state == TCP_ESTABLISHED) {
        return None;
    }
    let addr = id.source_address;
    let v6only = r.nlas.iter().any(|n| matches!(n, Nla::SkV6Only(true)));
    let dual_stack = h.family == libc::AF_INET6 as u8 && addr.is_unspecified() && !v6only;
    let ifindex = id.interface_id;
    Some(Sock {
        proto,
        addr,
        port: id.source_port,
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
