//! Synchronous netlink requests and dumps over a [`netlink_sys::Socket`], with messages
//! typed by the `netlink-packet-*` crates.
//!
//! The crates build requests and decode replies; this module only drives the exchange:
//! sequence numbers, whole-datagram reads, `NLMSG_DONE` / `NLMSG_ERROR`, and restarting a
//! dump the kernel marks as interrupted. A reply the crate cannot decode is handed to the
//! caller as [`Event::Bad`] (it becomes a `not_collected` entry), never a panic, and the
//! rest of the dump continues.

use std::io;

use netlink_packet_core::{
    DecodeError, DefaultNla, Emitable, ErrorBuffer, NLM_F_DUMP, NLM_F_DUMP_INTR, NLM_F_REQUEST,
    NLMSG_DONE, NLMSG_ERROR, NetlinkBuffer, NetlinkDeserializable, NetlinkHeader, NetlinkMessage,
    NetlinkPayload, NetlinkSerializable, NlasIterator,
};
use netlink_sys::Socket;

pub use netlink_sys::protocols::{NETLINK_NETFILTER, NETLINK_ROUTE, NETLINK_SOCK_DIAG};

/// A netlink socket of one protocol, bound in the namespace of the thread that opened it.
pub struct Conn {
    sock: Socket,
    seq: u32,
    buf: Vec<u8>,
}

/// What a dump reports to its callback.
pub enum Event<I> {
    /// The dump (re)starts: drop whatever was gathered so far.
    Restart,
    /// One decoded reply message.
    Msg(I),
    /// A reply message that could not be decoded.
    Bad(DecodeError),
}

/// One netlink message as read from the socket, before decoding.
struct Frame {
    ty: u16,
    flags: u16,
    seq: u32,
    start: usize,
    end: usize,
}

impl Conn {
    /// Open and bind a netlink socket of `proto` (e.g. [`NETLINK_ROUTE`]).
    pub fn open(proto: isize) -> io::Result<Conn> {
        let mut sock = Socket::new(proto)?;
        sock.bind_auto()?;
        // A large receive buffer lets the kernel pack big dumps into fewer reads; failing
        // to get one is harmless.
        let _ = sock.set_rx_buf_sz(1usize << 20);
        Ok(Conn {
            sock,
            seq: 0,
            buf: Vec::with_capacity(1 << 17),
        })
    }

    fn send<I: NetlinkSerializable>(&mut self, payload: I, flags: u16) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let mut header = NetlinkHeader::default();
        header.flags = flags;
        header.sequence_number = self.seq;
        let mut msg = NetlinkMessage::new(header, NetlinkPayload::InnerMessage(payload));
        msg.finalize();
        let mut out = vec![0u8; msg.buffer_len()];
        msg.serialize(&mut out);
        self.sock.send(&out, 0)?;
        Ok(self.seq)
    }

    /// Read one whole datagram into `self.buf` and split it into frames.
    fn recv(&mut self) -> io::Result<Vec<Frame>> {
        let n = loop {
            // Peek the size first so a datagram larger than the buffer is never truncated.
            let mut peek: Vec<u8> = Vec::new();
            let need = match self.sock.recv(&mut peek, libc::MSG_PEEK | libc::MSG_TRUNC) {
                Ok(n) => n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            };
            self.buf.clear();
            self.buf.reserve(need);
            match self.sock.recv(&mut self.buf, 0) {
                Ok(n) => break n.min(self.buf.len()),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => continue,
                Err(e) => return Err(e),
            }
        };
        let mut frames = Vec::new();
        let mut off = 0;
        while off < n {
            let Ok(b) = NetlinkBuffer::new_checked(&self.buf[off..n]) else {
                break;
            };
            let len = b.length() as usize;
            frames.push(Frame {
                ty: b.message_type(),
                flags: b.flags(),
                seq: b.sequence_number(),
                start: off,
                end: off + len,
            });
            off += (len + 3) & !3;
        }
        Ok(frames)
    }

    /// The error an `NLMSG_ERROR` frame carries, if it is not an acknowledgement.
    fn error_of(&self, f: &Frame) -> Option<io::Error> {
        let payload = self.buf.get(f.start + 16..f.end).unwrap_or(&[]);
        match ErrorBuffer::new_checked(payload) {
            Ok(e) => e.code().map(|c| io::Error::from_raw_os_error(-c.get())),
            Err(_) => Some(io::Error::from_raw_os_error(libc::EPROTO)),
        }
    }

    fn decode<I>(&self, f: &Frame) -> Result<Option<I>, DecodeError>
    where
        I: NetlinkDeserializable,
    {
        let m = NetlinkMessage::<I>::deserialize(&self.buf[f.start..f.end])?;
        Ok(match m.payload {
            NetlinkPayload::InnerMessage(i) => Some(i),
            _ => None,
        })
    }

    /// Send `req` as a dump request and report every reply until `NLMSG_DONE`. A dump the
    /// kernel marks as interrupted (changed while dumping) is retried up to 3 times; every
    /// (re)start is announced with [`Event::Restart`].
    pub fn dump<I>(&mut self, req: I, each: &mut dyn FnMut(Event<I>)) -> io::Result<()>
    where
        I: NetlinkSerializable + NetlinkDeserializable + Clone,
    {
        let mut tries = 0;
        loop {
            tries += 1;
            each(Event::Restart);
            let seq = self.send(req.clone(), NLM_F_REQUEST | NLM_F_DUMP)?;
            let mut intr = false;
            'dump: loop {
                for f in self.recv()? {
                    if f.seq != seq {
                        continue;
                    }
                    if f.flags & NLM_F_DUMP_INTR != 0 {
                        intr = true;
                    }
                    match f.ty {
                        NLMSG_DONE => break 'dump,
                        NLMSG_ERROR => match self.error_of(&f) {
                            Some(e) => return Err(e),
                            None => continue,
                        },
                        _ => match self.decode::<I>(&f) {
                            Ok(Some(m)) => each(Event::Msg(m)),
                            Ok(None) => {}
                            Err(e) => each(Event::Bad(e)),
                        },
                    }
                }
            }
            if !intr || tries >= 3 {
                return Ok(());
            }
        }
    }

    /// Send a single request (no dump) and return the first reply message.
    pub fn request<I>(&mut self, req: I) -> io::Result<Option<I>>
    where
        I: NetlinkSerializable + NetlinkDeserializable,
    {
        let seq = self.send(req, NLM_F_REQUEST)?;
        loop {
            for f in self.recv()? {
                if f.seq != seq {
                    continue;
                }
                if f.ty == NLMSG_ERROR {
                    match self.error_of(&f) {
                        Some(e) => return Err(e),
                        None => continue,
                    }
                }
                return self
                    .decode::<I>(&f)
                    .map_err(|e| io::Error::new(io::ErrorKind::InvalidData, e.to_string()));
            }
        }
    }
}

/// A message kept as its type and raw payload, for the nfnetlink requests whose replies are
/// decoded by hand (see [`crate::ct`] and [`crate::fw`] for why).
#[derive(Debug, Clone)]
pub struct RawMsg {
    /// Netlink message type.
    pub ty: u16,
    /// Payload after the netlink header.
    pub body: Vec<u8>,
}

impl NetlinkSerializable for RawMsg {
    fn message_type(&self) -> u16 {
        self.ty
    }
    fn buffer_len(&self) -> usize {
        self.body.len()
    }
    fn serialize(&self, buffer: &mut [u8]) {
        buffer[..self.body.len()].copy_from_slice(&self.body);
    }
}

impl NetlinkDeserializable for RawMsg {
    type Error = DecodeError;
    fn deserialize(header: &NetlinkHeader, payload: &[u8]) -> Result<Self, DecodeError> {
        Ok(RawMsg {
            ty: header.message_type,
            body: payload.to_vec(),
        })
    }
}

/// Iterate the attributes in `buf` as (type without flags, payload); stops at the first
/// malformed one.
pub fn attrs(buf: &[u8]) -> impl Iterator<Item = (u16, &[u8])> {
    NlasIterator::new(buf)
        .map_while(|r| r.ok())
        .filter_map(|n| {
            let (kind, len) = (n.kind(), n.length() as usize);
            Some((kind, n.into_inner().get(4..len)?))
        })
}

/// Append an attribute (`kind` may carry the `NLA_F_*` flags) to a request body.
pub fn push_attr(body: &mut Vec<u8>, kind: u16, value: &[u8]) {
    let nla = DefaultNla::new(kind, value.to_vec());
    let start = body.len();
    body.resize(start + nla.buffer_len(), 0);
    nla.emit(&mut body[start..]);
}
