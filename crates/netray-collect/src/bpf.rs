//! What runs on the datapath that netray does not model: tc filters on the clsact/ingress
//! qdisc (rtnetlink `RTM_GETQDISC`, `RTM_GETTFILTER`), tcx programs (`BPF_PROG_QUERY`), XDP
//! programs (`IFLA_XDP` of the link dump, see [`crate::rtnl`]) and cgroup BPF programs
//! (`BPF_PROG_QUERY` on every cgroup of the cgroup2 hierarchy). Programs are named with
//! `BPF_PROG_GET_FD_BY_ID` + `BPF_OBJ_GET_INFO_BY_FD`. All reads: nothing is attached,
//! detached or loaded, and none of these interfaces loads a module.

use std::collections::HashMap;
use std::io;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use netray_snapshot::{AttachPoint, Attachment, BpfProgram};

use crate::nl::{Conn, Event, RawMsg, attrs};

const RTM_NEWQDISC: u16 = 36;
const RTM_GETQDISC: u16 = 38;
const RTM_NEWTFILTER: u16 = 44;
const RTM_GETTFILTER: u16 = 46;
const TCA_KIND: u16 = 1;
const TCA_OPTIONS: u16 = 2;
const TCA_CHAIN: u16 = 11;
const TCA_BPF_NAME: u16 = 7;
const TCA_BPF_FLAGS: u16 = 8;
const TCA_BPF_TAG: u16 = 10;
const TCA_BPF_ID: u16 = 11;
/// `TC_H_MAKE(TC_H_CLSACT, TC_H_MIN_INGRESS)` / `…_EGRESS`.
const PARENT_INGRESS: u32 = 0xFFFF_FFF2;
const PARENT_EGRESS: u32 = 0xFFFF_FFF3;

/// A `struct tcmsg` request body.
fn tcmsg(ifindex: i32, parent: u32) -> Vec<u8> {
    let mut b = vec![0u8; 20];
    b[4..8].copy_from_slice(&ifindex.to_ne_bytes());
    b[12..16].copy_from_slice(&parent.to_ne_bytes());
    b
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    Some(u32::from_ne_bytes(b.get(at..at + 4)?.try_into().ok()?))
}

fn cstr(v: &[u8]) -> String {
    let end = v.iter().position(|&c| c == 0).unwrap_or(v.len());
    String::from_utf8_lossy(&v[..end]).into_owned()
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Interfaces with an ingress-capable qdisc: ifindex → `clsact` (ingress and egress hooks) or
/// `ingress` (ingress only).
fn ingress_qdiscs(sock: &mut Conn) -> io::Result<HashMap<u32, bool>> {
    let mut out = HashMap::new();
    let req = RawMsg {
        ty: RTM_GETQDISC,
        body: tcmsg(0, 0),
    };
    sock.dump(req, &mut |ev| match ev {
        Event::Restart => out.clear(),
        Event::Msg(m) if m.ty == RTM_NEWQDISC && m.body.len() >= 20 => {
            let ifindex = u32_at(&m.body, 4).unwrap_or(0);
            let kind = attrs(&m.body[20..])
                .find(|(t, _)| *t == TCA_KIND)
                .map(|(_, v)| cstr(v));
            match kind.as_deref() {
                Some("clsact") => {
                    out.insert(ifindex, true);
                }
                Some("ingress") => {
                    out.entry(ifindex).or_insert(false);
                }
                _ => {}
            }
        }
        _ => {}
    })?;
    Ok(out)
}

/// One `RTM_NEWTFILTER` reply as an attachment; `None` for the per-priority header the kernel
/// sends before a filter's elements (handle 0).
pub fn parse_filter(body: &[u8], point: AttachPoint, dev: &str) -> Option<Attachment> {
    if body.len() < 20 {
        return None;
    }
    let handle = u32_at(body, 8)?;
    let info = u32_at(body, 16)?;
    if handle == 0 {
        return None;
    }
    let mut a = Attachment {
        point,
        dev: Some(dev.to_string()),
        kind: String::new(),
        prog: None,
        pref: Some((info >> 16) as u16),
        chain: None,
        handle: Some(handle),
        direct_action: false,
        mode: None,
        cgroup: None,
        attach_type: None,
    };
    let mut options: &[u8] = &[];
    for (t, v) in attrs(&body[20..]) {
        match t {
            TCA_KIND => a.kind = cstr(v),
            TCA_CHAIN => a.chain = u32_at(v, 0),
            TCA_OPTIONS => options = v,
            _ => {}
        }
    }
    if a.kind == "bpf" {
        let (mut id, mut name, mut tag) = (None, None, None);
        for (t, v) in attrs(options) {
            match t {
                TCA_BPF_ID => id = u32_at(v, 0),
                TCA_BPF_NAME => name = Some(cstr(v)),
                TCA_BPF_TAG => tag = Some(hex(v)),
                TCA_BPF_FLAGS => a.direct_action = u32_at(v, 0).is_some_and(|f| f & 1 != 0),
                _ => {}
            }
        }
        // The kernel's name for the program (as bpftool shows it) over tc's `obj:[section]`.
        a.prog = id.map(|id| {
            let k = program(id);
            BpfProgram {
                id,
                name: k.name.or(name),
                tag: k.tag.or(tag),
            }
        });
    }
    Some(a)
}

/// tc filters on every interface's clsact/ingress qdisc, in the current thread's namespace.
/// Other classifiers are kept once per (hook, priority, chain, kind): their elements (u32
/// hash nodes, flower keys) are not told apart.
pub fn tc_filters(sock: &mut Conn, names: &HashMap<u32, String>) -> io::Result<Vec<Attachment>> {
    let mut out: Vec<Attachment> = Vec::new();
    let mut qdiscs: Vec<(u32, bool)> = ingress_qdiscs(sock)?.into_iter().collect();
    qdiscs.sort_unstable();
    for (ifindex, clsact) in qdiscs {
        let dev = names
            .get(&ifindex)
            .cloned()
            .unwrap_or_else(|| format!("if{ifindex}"));
        let hooks: &[(u32, AttachPoint)] = if clsact {
            &[
                (PARENT_INGRESS, AttachPoint::TcIngress),
                (PARENT_EGRESS, AttachPoint::TcEgress),
            ]
        } else {
            &[(PARENT_INGRESS, AttachPoint::TcIngress)]
        };
        for &(parent, point) in hooks {
            let mut got: Vec<Attachment> = Vec::new();
            let req = RawMsg {
                ty: RTM_GETTFILTER,
                body: tcmsg(ifindex as i32, parent),
            };
            sock.dump(req, &mut |ev| match ev {
                Event::Restart => got.clear(),
                Event::Msg(m) if m.ty == RTM_NEWTFILTER => {
                    if let Some(a) = parse_filter(&m.body, point, &dev) {
                        got.push(a);
                    }
                }
                _ => {}
            })?;
            for a in got {
                let dup = a.kind != "bpf"
                    && out.iter().any(|b| {
                        b.point == a.point
                            && b.dev == a.dev
                            && b.kind == a.kind
                            && b.pref == a.pref
                            && b.chain == a.chain
                    });
                if !dup {
                    out.push(a);
                }
            }
        }
    }
    Ok(out)
}

// ---------------------------------------------------------------------------------------------
// bpf(2)

const BPF_PROG_GET_FD_BY_ID: i64 = 13;
const BPF_OBJ_GET_INFO_BY_FD: i64 = 15;
const BPF_PROG_QUERY: i64 = 16;
const BPF_TCX_INGRESS: u32 = 46;
const BPF_TCX_EGRESS: u32 = 47;

fn bpf(cmd: i64, attr: &mut [u64]) -> io::Result<i64> {
    // SAFETY: `attr` is a valid, writable buffer of the size passed; the commands used here
    // only read it and write back into it (and into the buffers its pointers name).
    let r = unsafe {
        libc::syscall(
            libc::SYS_bpf,
            cmd,
            attr.as_mut_ptr(),
            std::mem::size_of_val(attr),
        )
    };
    if r < 0 {
        Err(io::Error::last_os_error())
    } else {
        Ok(r)
    }
}

/// Program ids attached at `attach_type` of `target` (an ifindex for tcx, a cgroup fd),
/// attached there directly (not inherited).
pub fn prog_query(target: u32, attach_type: u32) -> io::Result<Vec<u32>> {
    let mut ids = [0u32; 64];
    let mut attr = [0u64; 8];
    attr[0] = u64::from(target) | (u64::from(attach_type) << 32);
    attr[2] = ids.as_mut_ptr() as u64;
    attr[3] = ids.len() as u64;
    bpf(BPF_PROG_QUERY, &mut attr)?;
    let n = (attr[3] & 0xffff_ffff) as usize;
    Ok(ids[..n.min(ids.len())].to_vec())
}

/// Name and tag of program `id` (a bare id when the kernel does not say).
pub fn program(id: u32) -> BpfProgram {
    let bare = BpfProgram {
        id,
        name: None,
        tag: None,
    };
    let mut attr = [0u64; 2];
    attr[0] = u64::from(id);
    let Ok(fd) = bpf(BPF_PROG_GET_FD_BY_ID, &mut attr) else {
        return bare;
    };
    // SAFETY: the kernel just returned this descriptor to us; OwnedFd closes it.
    let fd = unsafe { <std::os::fd::OwnedFd as std::os::fd::FromRawFd>::from_raw_fd(fd as i32) };
    // struct bpf_prog_info up to `name` (offset 64, 16 bytes).
    let mut info = [0u8; 80];
    let mut attr = [0u64; 2];
    attr[0] = (fd.as_raw_fd() as u32 as u64) | ((info.len() as u64) << 32);
    attr[1] = info.as_mut_ptr() as u64;
    if bpf(BPF_OBJ_GET_INFO_BY_FD, &mut attr).is_err() {
        return bare;
    }
    let name = cstr(&info[64..80]);
    BpfProgram {
        id,
        name: (!name.is_empty()).then_some(name),
        tag: Some(hex(&info[8..16])),
    }
}

/// tcx programs (Linux 6.6+: attached through bpf links, invisible to tc) on every interface.
/// `Err` when the kernel does not know tcx (reported once, not per interface).
pub fn tcx(names: &HashMap<u32, String>) -> Result<Vec<Attachment>, String> {
    let mut out = Vec::new();
    let mut idx: Vec<(&u32, &String)> = names.iter().collect();
    idx.sort();
    for (&ifindex, dev) in idx {
        for (ty, point) in [
            (BPF_TCX_INGRESS, AttachPoint::TcIngress),
            (BPF_TCX_EGRESS, AttachPoint::TcEgress),
        ] {
            match prog_query(ifindex, ty) {
                Ok(ids) => out.extend(ids.into_iter().map(|id| Attachment {
                    point,
                    dev: Some(dev.clone()),
                    kind: "tcx".into(),
                    prog: Some(program(id)),
                    pref: None,
                    chain: None,
                    handle: None,
                    direct_action: true,
                    mode: None,
                    cgroup: None,
                    attach_type: None,
                })),
                Err(e) if e.raw_os_error() == Some(libc::ENODEV) => {}
                Err(e) => return Err(format!("BPF_PROG_QUERY (tcx) on {dev}: {e}")),
            }
        }
    }
    Ok(out)
}

/// An XDP attachment from a link's `IFLA_XDP` (`mode`: `IFLA_XDP_ATTACHED`).
pub fn xdp(dev: &str, mode: u8, prog_id: Option<u32>) -> Option<Attachment> {
    let mode = match mode {
        0 => return None,
        1 => "driver",
        2 => "generic",
        3 => "offload",
        4 => "multi",
        _ => "unknown",
    };
    Some(Attachment {
        point: AttachPoint::Xdp,
        dev: Some(dev.to_string()),
        kind: "bpf".into(),
        prog: prog_id.filter(|&i| i != 0).map(program),
        pref: None,
        chain: None,
        handle: None,
        direct_action: false,
        mode: Some(mode.into()),
        cgroup: None,
        attach_type: None,
    })
}

/// The cgroup attach types that act on sockets, with bpftool's names.
const CGROUP_TYPES: &[(u32, &str)] = &[
    (0, "cgroup_inet_ingress"),
    (1, "cgroup_inet_egress"),
    (2, "cgroup_inet_sock_create"),
    (3, "cgroup_sock_ops"),
    (8, "cgroup_inet4_bind"),
    (9, "cgroup_inet6_bind"),
    (10, "cgroup_inet4_connect"),
    (11, "cgroup_inet6_connect"),
    (12, "cgroup_inet4_post_bind"),
    (13, "cgroup_inet6_post_bind"),
    (14, "cgroup_udp4_sendmsg"),
    (15, "cgroup_udp6_sendmsg"),
    (19, "cgroup_udp4_recvmsg"),
    (20, "cgroup_udp6_recvmsg"),
    (21, "cgroup_getsockopt"),
    (22, "cgroup_setsockopt"),
    (29, "cgroup_inet4_getpeername"),
    (30, "cgroup_inet6_getpeername"),
    (31, "cgroup_inet4_getsockname"),
    (32, "cgroup_inet6_getsockname"),
    (34, "cgroup_inet_sock_release"),
];

/// At most this many cgroups are queried (a node has hundreds).
pub const MAX_CGROUPS: usize = 20_000;

/// The cgroup2 mount point: init's (through `/proc/1/root`: `ip netns exec` remounts `/sys`
/// and hides it), else this process's.
fn cgroup2_mount() -> Option<PathBuf> {
    let find = |mountinfo: &str| -> Option<String> {
        let t = std::fs::read_to_string(mountinfo).ok()?;
        t.lines().find_map(|l| {
            let (pre, post) = l.split_once(" - ")?;
            (post.split_whitespace().next() == Some("cgroup2"))
                .then(|| pre.split_whitespace().nth(4).map(str::to_string))
                .flatten()
        })
    };
    if let Some(m) = find("/proc/1/mountinfo") {
        let p = PathBuf::from(format!("/proc/1/root{m}"));
        if p.is_dir() {
            return Some(p);
        }
    }
    find("/proc/self/mountinfo").map(PathBuf::from)
}

/// BPF programs attached to any cgroup of the cgroup2 hierarchy (socket hooks). `Err` when
/// there is no cgroup2 hierarchy or the kernel refuses the query.
pub fn cgroup_programs() -> Result<(Vec<Attachment>, bool), String> {
    let root = cgroup2_mount().ok_or(
        "no cgroup2 hierarchy is visible (not mounted, or hidden: `ip netns exec` remounts /sys)",
    )?;
    let mut out = Vec::new();
    let mut stack = vec![root.clone()];
    let mut seen = 0usize;
    while let Some(dir) = stack.pop() {
        seen += 1;
        if seen > MAX_CGROUPS {
            return Ok((out, true));
        }
        let Ok(f) = std::fs::File::open(&dir) else {
            continue;
        };
        let rel = Path::new("/").join(dir.strip_prefix(&root).unwrap_or(Path::new("")));
        for &(ty, name) in CGROUP_TYPES {
            match prog_query(f.as_raw_fd() as u32, ty) {
                Ok(ids) => out.extend(ids.into_iter().map(|id| Attachment {
                    point: AttachPoint::Cgroup,
                    dev: None,
                    kind: "bpf".into(),
                    prog: Some(program(id)),
                    pref: None,
                    chain: None,
                    handle: None,
                    direct_action: false,
                    mode: None,
                    cgroup: Some(rel.display().to_string()),
                    attach_type: Some(name.into()),
                })),
                Err(e) if e.raw_os_error() == Some(libc::EINVAL) => {}
                Err(e) => {
                    return Err(format!("BPF_PROG_QUERY on cgroup {}: {e}", rel.display()));
                }
            }
        }
        if let Ok(rd) = std::fs::read_dir(&dir) {
            let mut subs: Vec<PathBuf> = rd
                .filter_map(|e| e.ok())
                .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                .map(|e| e.path())
                .collect();
            subs.sort();
            stack.extend(subs.into_iter().rev());
        }
    }
    Ok((out, false))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn attr(kind: u16, v: &[u8]) -> Vec<u8> {
        let mut b = Vec::new();
        crate::nl::push_attr(&mut b, kind, v);
        b
    }

    #[test]
    fn a_bpf_filter_reply_names_its_program() {
        let mut body = vec![0u8; 20];
        body[8..12].copy_from_slice(&1u32.to_ne_bytes());
        body[16..20].copy_from_slice(&((49152u32 << 16) | 0x0300).to_ne_bytes());
        body.extend(attr(TCA_KIND, b"bpf\0"));
        body.extend(attr(TCA_CHAIN, &0u32.to_ne_bytes()));
        let mut opts = attr(TCA_BPF_ID, &42u32.to_ne_bytes());
        opts.extend(attr(TCA_BPF_NAME, b"bpf_lxc.o:[from-container]\0"));
        opts.extend(attr(TCA_BPF_FLAGS, &1u32.to_ne_bytes()));
        opts.extend(attr(TCA_BPF_TAG, &[0xde, 0xad, 0xbe, 0xef, 0, 1, 2, 3]));
        body.extend(attr(TCA_OPTIONS | 0x8000, &opts));
        let a = parse_filter(&body, AttachPoint::TcIngress, "lxc1").unwrap();
        assert_eq!(a.kind, "bpf");
        assert_eq!(a.pref, Some(49152));
        assert_eq!(a.handle, Some(1));
        assert_eq!(a.chain, Some(0));
        assert!(a.direct_action);
        let p = a.prog.unwrap();
        assert_eq!(p.id, 42);
        // No program 42 here: tc's name stands.
        assert_eq!(p.name.as_deref(), Some("bpf_lxc.o:[from-container]"));
        assert_eq!(p.tag.as_deref(), Some("deadbeef00010203"));
        // The per-priority header (handle 0) is not an attachment.
        body[8..12].copy_from_slice(&0u32.to_ne_bytes());
        assert!(parse_filter(&body, AttachPoint::TcIngress, "lxc1").is_none());
    }

    #[test]
    fn odd_filter_replies_never_panic() {
        let mut seed = 7u64;
        for len in 0..200 {
            let body: Vec<u8> = (0..len)
                .map(|_| {
                    seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1);
                    (seed >> 33) as u8
                })
                .collect();
            let _ = parse_filter(&body, AttachPoint::TcEgress, "x");
        }
    }

    #[test]
    fn cgroups_are_queried_without_error_where_cgroup2_is_mounted() {
        // Read-only: BPF_PROG_QUERY on each cgroup.
        match cgroup_programs() {
            Ok((v, _)) => assert!(v.iter().all(|a| a.point == AttachPoint::Cgroup)),
            Err(e) => assert!(
                e.contains("cgroup2") || e.contains("Operation not permitted"),
                "{e}"
            ),
        }
    }

    #[test]
    fn xdp_modes() {
        assert!(xdp("eth0", 0, None).is_none());
        let a = xdp("eth0", 2, None).unwrap();
        assert_eq!(a.mode.as_deref(), Some("generic"));
        assert_eq!(a.point, AttachPoint::Xdp);
    }
}
