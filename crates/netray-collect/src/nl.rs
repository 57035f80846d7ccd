//! A minimal synchronous netlink client: dump requests and attribute parsing.
//!
//! Hand-written over `libc` so every field the kernel sends is read by us, bounds-checked,
//! and never trusted: malformed messages become errors, not panics.

use std::io;
use std::os::fd::{AsRawFd, FromRawFd, OwnedFd};

pub const NETLINK_ROUTE: i32 = 0;
pub const NETLINK_SOCK_DIAG: i32 = 4;
pub const NETLINK_NETFILTER: i32 = 12;

pub const NLMSG_ERROR: u16 = 2;
pub const NLMSG_DONE: u16 = 3;
pub const NLM_F_REQUEST: u16 = 1;
pub const NLM_F_DUMP: u16 = 0x300;
pub const NLM_F_DUMP_INTR: u16 = 0x10;

/// Attribute type without the nested / byte-order flags.
const NLA_TYPE_MASK: u16 = 0x3fff;

/// A netlink socket of one protocol, bound in the namespace of the thread that opened it.
pub struct Socket {
    fd: OwnedFd,
    seq: u32,
    buf: Vec<u8>,
}

/// One received message: type, flags, payload (after the 16-byte header).
pub struct Msg<'a> {
    pub ty: u16,
    pub payload: &'a [u8],
}

impl Socket {
    /// Open a netlink socket of `proto` (e.g. [`NETLINK_ROUTE`]).
    pub fn open(proto: i32) -> io::Result<Socket> {
        // SAFETY: plain syscall; the result is checked.
        let fd =
            unsafe { libc::socket(libc::AF_NETLINK, libc::SOCK_RAW | libc::SOCK_CLOEXEC, proto) };
        if fd < 0 {
            return Err(io::Error::last_os_error());
        }
        // SAFETY: fd is a fresh, owned descriptor.
        let fd = unsafe { OwnedFd::from_raw_fd(fd) };
        // SAFETY: zeroed sockaddr_nl is valid (pid 0: kernel assigns).
        let mut sa: libc::sockaddr_nl = unsafe { std::mem::zeroed() };
        sa.nl_family = libc::AF_NETLINK as u16;
        // SAFETY: sa is a valid sockaddr_nl of the given size.
        let rc = unsafe {
            libc::bind(
                fd.as_raw_fd(),
                &sa as *const libc::sockaddr_nl as *const libc::sockaddr,
                std::mem::size_of::<libc::sockaddr_nl>() as u32,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        // A large receive buffer lets the kernel pack big dumps into fewer reads.
        let size: libc::c_int = 1 << 20;
        // SAFETY: valid option pointer and length; failure is harmless.
        unsafe {
            libc::setsockopt(
                fd.as_raw_fd(),
                libc::SOL_SOCKET,
                libc::SO_RCVBUF,
                &size as *const libc::c_int as *const libc::c_void,
                std::mem::size_of::<libc::c_int>() as u32,
            );
        }
        Ok(Socket {
            fd,
            seq: 0,
            buf: vec![0u8; 1 << 17],
        })
    }

    fn send(&mut self, ty: u16, flags: u16, body: &[u8]) -> io::Result<u32> {
        self.seq = self.seq.wrapping_add(1);
        let len = 16 + body.len();
        let mut m = Vec::with_capacity(align(len));
        m.extend_from_slice(&(len as u32).to_ne_bytes());
        m.extend_from_slice(&ty.to_ne_bytes());
        m.extend_from_slice(&flags.to_ne_bytes());
        m.extend_from_slice(&self.seq.to_ne_bytes());
        m.extend_from_slice(&0u32.to_ne_bytes());
        m.extend_from_slice(body);
        // SAFETY: m is a valid buffer of m.len() bytes.
        let rc = unsafe {
            libc::send(
                self.fd.as_raw_fd(),
                m.as_ptr() as *const libc::c_void,
                m.len(),
                0,
            )
        };
        if rc < 0 {
            return Err(io::Error::last_os_error());
        }
        Ok(self.seq)
    }

    fn recv(&mut self) -> io::Result<usize> {
        loop {
            // Peek the size first so a datagram larger than the buffer is never truncated.
            // SAFETY: null buffer with MSG_TRUNC|MSG_PEEK only reports the length.
            let need = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    std::ptr::null_mut(),
                    0,
                    libc::MSG_PEEK | libc::MSG_TRUNC,
                )
            };
            if need < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            if need as usize > self.buf.len() {
                self.buf.resize(need as usize, 0);
            }
            // SAFETY: buf is valid for buf.len() bytes.
            let n = unsafe {
                libc::recv(
                    self.fd.as_raw_fd(),
                    self.buf.as_mut_ptr() as *mut libc::c_void,
                    self.buf.len(),
                    0,
                )
            };
            if n < 0 {
                let e = io::Error::last_os_error();
                if e.kind() == io::ErrorKind::Interrupted {
                    continue;
                }
                return Err(e);
            }
            return Ok(n as usize);
        }
    }

    /// Send a dump request and call `each` for every reply message until `NLMSG_DONE`.
    /// A dump the kernel marks as interrupted (changed while dumping) is retried up to 3
    /// times; `each(None)` announces every (re)start, and the callback must drop what it
    /// gathered so far.
    pub fn dump(
        &mut self,
        ty: u16,
        body: &[u8],
        each: &mut dyn FnMut(Option<Msg<'_>>) -> io::Result<()>,
    ) -> io::Result<()> {
        let mut tries = 0;
        loop {
            tries += 1;
            each(None)?;
            let seq = self.send(ty, NLM_F_REQUEST | NLM_F_DUMP, body)?;
            let intr = self.read_until_done(seq, each)?;
            if !intr || tries >= 3 {
                return Ok(());
            }
        }
    }

    /// Send a single request (no dump) and return the first reply message's type and payload.
    pub fn request(&mut self, ty: u16, body: &[u8]) -> io::Result<(u16, Vec<u8>)> {
        let seq = self.send(ty, NLM_F_REQUEST, body)?;
        loop {
            let n = self.recv()?;
            let mut off = 0;
            while let Some((hty, _flags, hseq, payload, next)) = header(&self.buf[..n], off) {
                off = next;
                if hseq != seq {
                    continue;
                }
                if hty == NLMSG_ERROR {
                    let code = payload
                        .get(..4)
                        .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                        .unwrap_or(-libc::EPROTO);
                    if code != 0 {
                        return Err(io::Error::from_raw_os_error(-code));
                    }
                    continue;
                }
                return Ok((hty, payload.to_vec()));
            }
        }
    }

    fn read_until_done(
        &mut self,
        seq: u32,
        each: &mut dyn FnMut(Option<Msg<'_>>) -> io::Result<()>,
    ) -> io::Result<bool> {
        let mut intr = false;
        loop {
            let n = self.recv()?;
            let buf = std::mem::take(&mut self.buf);
            let mut off = 0;
            let mut done = false;
            let mut result = Ok(());
            while let Some((ty, flags, hseq, payload, next)) = header(&buf[..n], off) {
                off = next;
                if hseq != seq {
                    continue;
                }
                if flags & NLM_F_DUMP_INTR != 0 {
                    intr = true;
                }
                match ty {
                    NLMSG_DONE => {
                        done = true;
                        break;
                    }
                    NLMSG_ERROR => {
                        let code = payload
                            .get(..4)
                            .map(|b| i32::from_ne_bytes([b[0], b[1], b[2], b[3]]))
                            .unwrap_or(-libc::EPROTO);
                        done = true;
                        if code != 0 {
                            result = Err(io::Error::from_raw_os_error(-code));
                        }
                        break;
                    }
                    _ => {
                        if result.is_ok() {
                            result = each(Some(Msg { ty, payload }));
                        }
                    }
                }
            }
            self.buf = buf;
            result?;
            if done {
                return Ok(intr);
            }
        }
    }
}

/// Parse the netlink header at `off`: (type, flags, seq, payload, next offset).
fn header(buf: &[u8], off: usize) -> Option<(u16, u16, u32, &[u8], usize)> {
    let h = buf.get(off..off + 16)?;
    let len = u32::from_ne_bytes([h[0], h[1], h[2], h[3]]) as usize;
    if len < 16 || off + len > buf.len() {
        return None;
    }
    let ty = u16::from_ne_bytes([h[4], h[5]]);
    let flags = u16::from_ne_bytes([h[6], h[7]]);
    let seq = u32::from_ne_bytes([h[8], h[9], h[10], h[11]]);
    Some((ty, flags, seq, &buf[off + 16..off + len], off + align(len)))
}

/// Round up to the netlink alignment (4).
pub fn align(n: usize) -> usize {
    (n + 3) & !3
}

/// Iterate the attributes in `buf`: yields (type without flags, payload).
pub fn attrs(buf: &[u8]) -> Attrs<'_> {
    Attrs { buf, off: 0 }
}

/// Iterator over netlink attributes.
pub struct Attrs<'a> {
    buf: &'a [u8],
    off: usize,
}

impl<'a> Iterator for Attrs<'a> {
    type Item = (u16, &'a [u8]);
    fn next(&mut self) -> Option<Self::Item> {
        let h = self.buf.get(self.off..self.off + 4)?;
        let len = u16::from_ne_bytes([h[0], h[1]]) as usize;
        let ty = u16::from_ne_bytes([h[2], h[3]]) & NLA_TYPE_MASK;
        if len < 4 || self.off + len > self.buf.len() {
            return None;
        }
        let payload = &self.buf[self.off + 4..self.off + len];
        self.off += align(len);
        Some((ty, payload))
    }
}

/// Append an attribute to a request body.
pub fn push_attr(body: &mut Vec<u8>, ty: u16, payload: &[u8]) {
    let len = 4 + payload.len();
    body.extend_from_slice(&(len as u16).to_ne_bytes());
    body.extend_from_slice(&ty.to_ne_bytes());
    body.extend_from_slice(payload);
    while !body.len().is_multiple_of(4) {
        body.push(0);
    }
}

/// Native-endian u32 of a payload, if it has at least 4 bytes.
pub fn u32_ne(b: &[u8]) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(..4)?.try_into().ok()?))
}
/// Native-endian u16.
pub fn u16_ne(b: &[u8]) -> Option<u16> {
    Some(u16::from_ne_bytes(b.get(..2)?.try_into().ok()?))
}
/// Big-endian u32 (netfilter attributes).
pub fn u32_be(b: &[u8]) -> Option<u32> {
    Some(u32::from_be_bytes(b.get(..4)?.try_into().ok()?))
}
/// Big-endian u16 (ports).
pub fn u16_be(b: &[u8]) -> Option<u16> {
    Some(u16::from_be_bytes(b.get(..2)?.try_into().ok()?))
}
/// First byte.
pub fn u8_(b: &[u8]) -> Option<u8> {
    b.first().copied()
}

/// An IP address from a 4- or 16-byte payload.
pub fn ip(b: &[u8]) -> Option<std::net::IpAddr> {
    match b.len() {
        4 => Some(std::net::IpAddr::from(<[u8; 4]>::try_from(b).ok()?)),
        16 => Some(std::net::IpAddr::from(<[u8; 16]>::try_from(b).ok()?)),
        _ => None,
    }
}

/// A NUL-terminated string payload.
pub fn string(b: &[u8]) -> String {
    let end = b.iter().position(|&c| c == 0).unwrap_or(b.len());
    String::from_utf8_lossy(&b[..end]).into_owned()
}

/// `aa:bb:cc:..` lowercase.
pub fn mac(b: &[u8]) -> String {
    b.iter()
        .map(|x| format!("{x:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}
