//! Live collection of a node's network state into a [`NodeSnapshot`], strictly read-only.
//!
//! The namespace the process runs in is the node's host namespace; every namespace that is
//! the peer of one of its veths is collected too (found through `/run/netns/*` and
//! `/proc/*/ns/net`, deduplicated by inode, matched by the kernel's namespace ids), plus
//! any namespace named explicitly. Each namespace is read by a worker thread that has
//! entered it with `setns(CLONE_NEWNET)`: its netlink sockets, `/proc/thread-self/net`,
//! `/proc/sys/net` and the child processes it starts all see that namespace.
//!
//! Kernel tables come over netlink (rtnetlink, ctnetlink, sock_diag); firewall state
//! verbatim from `iptables-save`/`nft`/`ipset`, which are run only in ways that do not
//! change state (see [`fw`]).

pub mod bpf;
pub mod ct;
pub mod diag;
pub mod fw;
pub mod modules;
pub mod nl;
pub mod output;
pub mod rtnl;
pub mod sysctl;
mod time;

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::fs::File;
use std::os::fd::AsRawFd;
use std::os::unix::fs::MetadataExt;
use std::path::{Path, PathBuf};
use std::sync::Mutex;

use netray_snapshot::{
    Conntrack, Firewall, LinkKind, NetnsId, NetnsRole, NetnsSnapshot, NodeIdentity, NodeSnapshot,
    NotCollected, SCHEMA_VERSION,
};

/// What to collect.
#[derive(Debug, Clone)]
pub struct Options {
    /// Node name; default the hostname.
    pub node: Option<String>,
    /// Extra namespaces: a `/run/netns` name or a path to a namespace file.
    pub netns: Vec<String>,
    /// At most this many conntrack entries per namespace.
    pub conntrack_limit: usize,
    /// Worker threads (namespaces collected in parallel).
    pub workers: usize,
}

impl Default for Options {
    fn default() -> Self {
        Options {
            node: None,
            netns: Vec::new(),
            conntrack_limit: 65536,
            workers: 4,
        }
    }
}

/// Collection could not even start (the host namespace is unreadable).
#[derive(Debug, thiserror::Error)]
pub enum CollectError {
    /// A required read failed.
    #[error("{what}: {source}")]
    Io {
        /// What was being read.
        what: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// A `--netns` argument names no namespace.
    #[error("--netns {arg}: {reason}")]
    Netns {
        /// The argument.
        arg: String,
        /// Why it does not work.
        reason: String,
    },
}

/// A namespace that may be collected or referenced: its identity and an open handle.
struct Candidate {
    id: NetnsId,
    file: File,
}

/// All namespaces visible on the node, by inode.
struct Candidates {
    /// In discovery order, host first.
    list: Vec<Candidate>,
    by_inode: HashMap<u64, usize>,
}

impl Candidates {
    fn get(&self, inode: u64) -> Option<&Candidate> {
        self.by_inode.get(&inode).map(|&i| &self.list[i])
    }
}

fn nsfs_dev_ino(p: &Path) -> Option<(u64, u64)> {
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Find every namespace under `/run/netns` and `/proc/*/ns/net`.
fn discover(host: (u64, u64)) -> Candidates {
    let (nsfs_dev, host_ino) = host;
    // inode → (name under /run/netns, some pids, paths that open it)
    type Found = (Option<String>, Vec<u32>, Vec<PathBuf>);
    let mut found: BTreeMap<u64, Found> = BTreeMap::new();
    if let Ok(rd) = std::fs::read_dir("/run/netns") {
        let mut names: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        for n in names {
            let p = Path::new("/run/netns").join(&n);
            // A file that is not an nsfs bind mount (a stale name) has another device.
            if let Some((dev, ino)) = nsfs_dev_ino(&p)
                && dev == nsfs_dev
            {
                let e = found.entry(ino).or_default();
                e.0.get_or_insert(n);
                e.2.push(p);
            }
        }
    }
    if let Ok(rd) = std::fs::read_dir("/proc") {
        let mut pids: Vec<u32> = rd
            .filter_map(|e| e.ok())
            .filter_map(|e| e.file_name().to_str().and_then(|s| s.parse().ok()))
            .collect();
        pids.sort_unstable();
        for pid in pids {
            let p = PathBuf::from(format!("/proc/{pid}/ns/net"));
            if let Some((dev, ino)) = nsfs_dev_ino(&p)
                && dev == nsfs_dev
            {
                let e = found.entry(ino).or_default();
                if e.1.len() < 8 {
                    e.1.push(pid);
                    e.2.push(p);
                }
            }
        }
    }
    let mut list = Vec::new();
    // The host first: it is everyone's likeliest veth peer.
    let mut order: Vec<u64> = found.keys().copied().collect();
    order.sort_by_key(|&i| i != host_ino);
    for ino in order {
        let (name, pids, paths) = found.remove(&ino).unwrap_or_default();
        let file = if ino == host_ino {
            File::open("/proc/thread-self/ns/net").ok()
        } else {
            paths.iter().find_map(|p| {
                File::open(p)
                    .ok()
                    .filter(|f| f.metadata().map(|m| m.ino() == ino).unwrap_or(false))
            })
        };
        if let Some(file) = file {
            list.push(Candidate {
                id: NetnsId {
                    inode: ino,
                    name,
                    pids,
                },
                file,
            });
        }
    }
    let by_inode = list
        .iter()
        .enumerate()
        .map(|(i, c)| (c.id.inode, i))
        .collect();
    Candidates { list, by_inode }
}

/// Enter the namespace open at `fd` (this thread only).
fn enter(fd: i32) -> std::io::Result<()> {
    // SAFETY: setns on a valid fd; affects only the calling thread.
    if unsafe { libc::setns(fd, libc::CLONE_NEWNET) } != 0 {
        return Err(std::io::Error::last_os_error());
    }
    Ok(())
}

/// nsid → inode as seen from the current thread's namespace, resolved lazily.
struct NsidMap<'a> {
    cands: &'a Candidates,
    known: HashMap<i32, u64>,
    next: usize,
}

impl NsidMap<'_> {
    fn resolve(&mut self, sock: &mut nl::Conn, nsid: i32) -> Option<u64> {
        while !self.known.contains_key(&nsid) && self.next < self.cands.list.len() {
            let c = &self.cands.list[self.next];
            self.next += 1;
            if let Ok(Some(id)) = rtnl::nsid_of(sock, c.file.as_raw_fd()) {
                self.known.entry(id).or_insert(c.id.inode);
            }
        }
        self.known.get(&nsid).copied()
    }
}

/// Links of the current thread's namespace with veth peers resolved to namespace inodes.
fn links_with_peers(
    sock: &mut nl::Conn,
    cands: &Candidates,
    self_ino: u64,
    problems: &mut Vec<(String, String)>,
    attachments: &mut Vec<netray_snapshot::Attachment>,
) -> std::io::Result<Vec<netray_snapshot::Link>> {
    let mut raw_problems = Vec::new();
    let raw = rtnl::links(sock, &mut raw_problems)?;
    problems.extend(raw_problems.into_iter().map(|p| ("links".to_string(), p)));
    let mut map = NsidMap {
        cands,
        known: HashMap::new(),
        next: 0,
    };
    let mut out = Vec::with_capacity(raw.len());
    for mut r in raw {
        if let Some((mode, id)) = r.xdp
            && let Some(a) = bpf::xdp(&r.link.name, mode, id)
        {
            attachments.push(a);
        }
        if let LinkKind::Veth { peer_netns, .. } = &mut r.link.kind {
            *peer_netns = match r.link_netnsid {
                None => Some(self_ino),
                Some(id) => {
                    let found = map.resolve(sock, id);
                    if found.is_none() {
                        problems.push((
                            "veth-peer".into(),
                            format!(
                                "veth {}: peer namespace (nsid {id}) is not under /run/netns or /proc/*/ns/net",
                                r.link.name
                            ),
                        ));
                    }
                    found
                }
            };
        }
        out.push(r.link);
    }
    Ok(out)
}

/// Collect one namespace from a thread that has entered it.
fn collect_here(
    id: NetnsId,
    role: NetnsRole,
    cands: &Candidates,
    opts: &Options,
    gates: &modules::Gates,
) -> (NetnsSnapshot, Vec<NotCollected>) {
    let ino = id.inode;
    let mut problems: Vec<(String, String)> = Vec::new();
    let mut snap = NetnsSnapshot {
        id,
        role,
        links: Vec::new(),
        addresses: Vec::new(),
        routes: Vec::new(),
        rules: Vec::new(),
        neighbours: Vec::new(),
        fdb: Vec::new(),
        sysctls: BTreeMap::new(),
        firewall: Firewall::default(),
        conntrack: None,
        sockets: Vec::new(),
        attachments: Vec::new(),
    };
    match nl::Conn::open(nl::NETLINK_ROUTE) {
        Err(e) => problems.push(("rtnetlink".into(), e.to_string())),
        Ok(mut sock) => {
            match links_with_peers(&mut sock, cands, ino, &mut problems, &mut snap.attachments) {
                Ok(l) => snap.links = l,
                Err(e) => problems.push(("links".into(), e.to_string())),
            }
            let names: HashMap<u32, String> = snap
                .links
                .iter()
                .map(|l| (l.ifindex, l.name.clone()))
                .collect();
            if snap
                .links
                .iter()
                .any(|l| matches!(l.kind, LinkKind::Bridge { .. }))
            {
                match rtnl::bridge_vlans(&mut sock) {
                    Ok(mut v) => {
                        for l in &mut snap.links {
                            if let (Some(bp), Some(vl)) = (&mut l.bridge_port, v.remove(&l.ifindex))
                            {
                                bp.vlans = vl;
                            }
                        }
                    }
                    Err(e) => problems.push(("bridge-vlans".into(), e.to_string())),
                }
            }
            match bpf::tc_filters(&mut sock, &names) {
                Ok(v) => snap.attachments.extend(v),
                Err(e) => problems.push(("tc-filters".into(), e.to_string())),
            }
            match bpf::tcx(&names) {
                Ok(v) => snap.attachments.extend(v),
                Err(e) => problems.push(("tcx".into(), e)),
            }
            let mut p = Vec::new();
            match rtnl::addresses(&mut sock, &names, &mut p) {
                Ok(v) => snap.addresses = v,
                Err(e) => problems.push(("addresses".into(), e.to_string())),
            }
            problems.extend(p.drain(..).map(|x| ("addresses".to_string(), x)));
            match rtnl::routes(&mut sock, &names, &mut p) {
                Ok(v) => snap.routes = v,
                Err(e) => problems.push(("routes".into(), e.to_string())),
            }
            problems.extend(p.drain(..).map(|x| ("routes".to_string(), x)));
            match rtnl::rules(&mut sock, &mut p) {
                Ok(v) => snap.rules = v,
                Err(e) => problems.push(("rules".into(), e.to_string())),
            }
            problems.extend(p.drain(..).map(|x| ("rules".to_string(), x)));
            match rtnl::neighbours(&mut sock, &names, &mut p) {
                Ok(v) => snap.neighbours = v,
                Err(e) => problems.push(("neighbours".into(), e.to_string())),
            }
            problems.extend(p.drain(..).map(|x| ("neighbours".to_string(), x)));
            match rtnl::fdb(&mut sock, &names, &mut p) {
                Ok(v) => snap.fdb = v,
                Err(e) => problems.push(("fdb".into(), e.to_string())),
            }
            problems.extend(p.drain(..).map(|x| ("fdb".to_string(), x)));
            if gates.sockets.is_ok() {
                match diag::sockets(&names) {
                    Ok(v) => snap.sockets = v,
                    Err(e) => problems.push(("sockets".into(), e.to_string())),
                }
            }
        }
    }
    snap.sysctls = sysctl::read(Path::new("/proc/sys"));

    fw::collect(&mut snap.firewall, gates.nftables.is_ok(), &mut problems);
    if gates.ipset.is_ok() {
        match fw::ipset(&mut problems) {
            Ok(t) => snap.firewall.ipset = Some(t),
            Err(r) => problems.push(("ipset".into(), r)),
        }
    }
    match fw::ipvs(&mut problems) {
        Ok(Some(t)) => snap.firewall.ipvs = Some(t),
        Ok(None) => {
            // Reported once per node (the kernel either has IPVS or not).
        }
        Err(r) => problems.push(("ipvs".into(), r)),
    }

    let mut ctp = Vec::new();
    // A ctnetlink dump walks the kernel's global conntrack hash (milliseconds per
    // namespace): skip it when this namespace's own count says it is empty.
    let ct_empty = snap
        .sysctls
        .get("net.netfilter.nf_conntrack_count")
        .is_some_and(|c| c.trim() == "0");
    let dumped = if gates.conntrack.is_err() {
        // Reported once per node.
        None
    } else if ct_empty {
        Some(Ok((Vec::new(), 0)))
    } else {
        Some(ct::dump(opts.conntrack_limit, &mut ctp))
    };
    match dumped {
        None => {}
        Some(Ok((entries, total))) => {
            let stats = std::fs::read_to_string("/proc/thread-self/net/stat/nf_conntrack")
                .ok()
                .and_then(|t| ct::stats(&t));
            if stats.is_none() {
                problems.push((
                    "conntrack-stats".into(),
                    "/proc/net/stat/nf_conntrack is missing or malformed".into(),
                ));
            }
            snap.conntrack = Some(Conntrack {
                count: total,
                truncated: (entries.len() as u64) < total,
                entries,
                stats: stats.unwrap_or_default(),
            });
        }
        Some(Err(e)) => problems.push(("conntrack".into(), format!("ctnetlink dump failed: {e}"))),
    }
    problems.extend(ctp.into_iter().map(|x| ("conntrack".to_string(), x)));

    let nc = problems
        .into_iter()
        .map(|(what, reason)| NotCollected {
            what,
            netns: Some(ino),
            reason,
        })
        .collect();
    (snap, nc)
}

fn uname() -> (String, String) {
    // SAFETY: zeroed utsname is valid; uname fills it.
    let mut u: libc::utsname = unsafe { std::mem::zeroed() };
    // SAFETY: valid pointer.
    if unsafe { libc::uname(&mut u) } != 0 {
        return (String::new(), String::new());
    }
    let s = |f: &[libc::c_char]| {
        let b: Vec<u8> = f
            .iter()
            .take_while(|&&c| c != 0)
            .map(|&c| c as u8)
            .collect();
        String::from_utf8_lossy(&b).into_owned()
    };
    (s(&u.nodename), s(&u.release))
}

fn resolve_netns_arg(arg: &str) -> PathBuf {
    if arg.contains('/') {
        PathBuf::from(arg)
    } else {
        Path::new("/run/netns").join(arg)
    }
}

/// `NS_GET_NSTYPE` (`_IO(0xb7, 0x3)`, Linux 4.11): the `CLONE_NEW*` type of a namespace file.
const NS_GET_NSTYPE: libc::c_ulong = 0xb703;

/// Open a `--netns` argument, checking that it is a network namespace: opened with
/// `O_NONBLOCK` (a FIFO cannot block), a regular nsfs file on the namespace file system
/// (`nsfs_dev`), and of type `CLONE_NEWNET` by `NS_GET_NSTYPE`.
fn open_netns(arg: &str, nsfs_dev: u64) -> Result<(File, u64), CollectError> {
    use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
    let path = resolve_netns_arg(arg);
    let fail = |reason: String| CollectError::Netns {
        arg: netray_snapshot::text::clip_quote(arg),
        reason,
    };
    let shown = netray_snapshot::text::clip_quote(&path.display().to_string());
    let file = std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY | libc::O_CLOEXEC)
        .open(&path)
        .map_err(|e| fail(format!("{shown}: {e}")))?;
    let meta = file.metadata().map_err(|e| fail(format!("{shown}: {e}")))?;
    let ft = meta.file_type();
    if !ft.is_file() {
        let what = if ft.is_fifo() {
            "a FIFO"
        } else if ft.is_dir() {
            "a directory"
        } else if ft.is_char_device() || ft.is_block_device() {
            "a device"
        } else if ft.is_socket() {
            "a socket"
        } else {
            "not a regular file"
        };
        return Err(fail(format!("{shown} is {what}, not a network namespace")));
    }
    if meta.dev() != nsfs_dev {
        return Err(fail(format!(
            "{shown} is not a namespace file (expected /run/netns/NAME or /proc/PID/ns/net)"
        )));
    }
    // SAFETY: ioctl without argument on a valid, open descriptor.
    let kind = unsafe { libc::ioctl(file.as_raw_fd(), NS_GET_NSTYPE as _) };
    if kind >= 0 && kind != libc::CLONE_NEWNET {
        let what = match kind {
            libc::CLONE_NEWNS => "mount",
            libc::CLONE_NEWUTS => "UTS",
            libc::CLONE_NEWIPC => "IPC",
            libc::CLONE_NEWUSER => "user",
            libc::CLONE_NEWPID => "PID",
            libc::CLONE_NEWCGROUP => "cgroup",
            0x80 => "time",
            _ => "non-network",
        };
        return Err(fail(format!(
            "{shown} is a {what} namespace, not a network namespace"
        )));
    }
    Ok((file, meta.ino()))
}

/// Collect the node: host namespace, its veth peers, and `opts.netns`.
pub fn collect(opts: &Options) -> Result<NodeSnapshot, CollectError> {
    let (_, kernel) = uname();
    let host = modules::HostModules::read(&kernel);
    match std::env::var(modules::ASSUME_ABSENT_ENV) {
        // Tests only: a host where these modules are absent (collects less, never more).
        Ok(list) => collect_with(opts, &modules::AssumeAbsent::new(&host, &list)),
        Err(_) => collect_with(opts, &host),
    }
}

/// [`collect`], with module presence read from `modules` (see [`modules`]).
pub fn collect_with(
    opts: &Options,
    modules: &dyn modules::ModuleSource,
) -> Result<NodeSnapshot, CollectError> {
    let gates = modules::Gates::from(modules);
    let io = |what: &str| {
        let what = what.to_string();
        move |source| CollectError::Io { what, source }
    };
    let host_meta =
        std::fs::metadata("/proc/thread-self/ns/net").map_err(io("/proc/thread-self/ns/net"))?;
    let host = (host_meta.dev(), host_meta.ino());
    let mut cands = discover(host);
    if cands.get(host.1).is_none() {
        // Always true in practice (our own pid is listed); keep a handle regardless.
        let file =
            File::open("/proc/thread-self/ns/net").map_err(io("/proc/thread-self/ns/net"))?;
        cands.by_inode.insert(host.1, cands.list.len());
        cands.list.push(Candidate {
            id: NetnsId {
                inode: host.1,
                name: None,
                pids: vec![std::process::id()],
            },
            file,
        });
    }
    let mut node_problems: Vec<NotCollected> = Vec::new();

    // Jobs: host, its veth peers, requested namespaces.
    let mut jobs: Vec<(u64, NetnsRole)> = vec![(host.1, NetnsRole::Host)];
    let mut extra_files: Vec<Candidate> = Vec::new();
    {
        let mut sock = nl::Conn::open(nl::NETLINK_ROUTE).map_err(io("rtnetlink"))?;
        let mut p = Vec::new();
        let links = links_with_peers(&mut sock, &cands, host.1, &mut p, &mut Vec::new())
            .map_err(io("links"))?;
        for l in links {
            if let LinkKind::Veth {
                peer_netns: Some(peer),
                ..
            } = l.kind
                && !jobs.iter().any(|(i, _)| *i == peer)
            {
                jobs.push((peer, NetnsRole::VethPeer));
            }
        }
    }
    for arg in &opts.netns {
        let (file, ino) = open_netns(arg, host.0)?;
        if cands.get(ino).is_none() {
            let name = (!arg.contains('/')).then(|| arg.clone());
            extra_files.push(Candidate {
                id: NetnsId {
                    inode: ino,
                    name,
                    pids: Vec::new(),
                },
                file,
            });
        }
        if !jobs.iter().any(|(i, _)| *i == ino) {
            jobs.push((ino, NetnsRole::Requested));
        }
    }
    for c in extra_files {
        cands.by_inode.insert(c.id.inode, cands.list.len());
        cands.list.push(c);
    }

    let queue = Mutex::new(jobs.iter().copied().enumerate().collect::<VecDeque<_>>());
    let results: Mutex<Vec<(usize, NetnsSnapshot, Vec<NotCollected>)>> = Mutex::new(Vec::new());
    let errors: Mutex<Vec<NotCollected>> = Mutex::new(Vec::new());
    let workers = opts.workers.clamp(1, jobs.len());
    std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                while let Some((order, (ino, role))) =
                    queue.lock().map(|mut q| q.pop_front()).ok().flatten()
                {
                    let Some(c) = cands.get(ino) else {
                        continue;
                    };
                    if let Err(e) = enter(c.file.as_raw_fd()) {
                        if let Ok(mut v) = errors.lock() {
                            v.push(NotCollected {
                                what: "netns".into(),
                                netns: Some(ino),
                                reason: format!("setns failed: {e}"),
                            });
                        }
                        continue;
                    }
                    let (snap, nc) = collect_here(c.id.clone(), role, &cands, opts, &gates);
                    if let Ok(mut r) = results.lock() {
                        r.push((order, snap, nc));
                    }
                }
            });
        }
    });
    let mut results = results.into_inner().unwrap_or_default();
    results.sort_by_key(|(o, _, _)| *o);
    node_problems.extend(errors.into_inner().unwrap_or_default());
    let mut namespaces = Vec::with_capacity(results.len());
    for (_, snap, nc) in results {
        namespaces.push(snap);
        node_problems.extend(nc);
    }
    if !namespaces.iter().any(|n| n.role == NetnsRole::Host) {
        return Err(CollectError::Io {
            what: "host namespace".into(),
            source: std::io::Error::other("could not be collected"),
        });
    }
    for (what, reason) in gates.skipped() {
        node_problems.push(NotCollected {
            what: what.into(),
            netns: None,
            reason,
        });
    }
    if !Path::new("/proc/net/ip_vs").exists() {
        node_problems.push(NotCollected {
            what: "ipvs".into(),
            netns: None,
            reason: "not supported by this kernel (no /proc/net/ip_vs)".into(),
        });
    }

    // Veth peers of collected namespaces that were not collected themselves.
    let collected: BTreeSet<u64> = namespaces.iter().map(|n| n.id.inode).collect();
    let mut referenced: BTreeSet<u64> = BTreeSet::new();
    for ns in &namespaces {
        for l in &ns.links {
            if let LinkKind::Veth {
                peer_netns: Some(p),
                ..
            } = l.kind
                && !collected.contains(&p)
            {
                referenced.insert(p);
            }
        }
    }
    let referenced_netns = referenced
        .into_iter()
        .map(|i| {
            cands.get(i).map(|c| c.id.clone()).unwrap_or(NetnsId {
                inode: i,
                name: None,
                pids: Vec::new(),
            })
        })
        .collect();

    let mut cgroup_programs = Vec::new();
    match bpf::cgroup_programs() {
        Ok((v, cut)) => {
            cgroup_programs = v;
            if cut {
                node_problems.push(NotCollected {
                    what: "cgroup-bpf".into(),
                    netns: None,
                    reason: format!(
                        "only the first {} cgroups were queried for BPF programs",
                        bpf::MAX_CGROUPS
                    ),
                });
            }
        }
        Err(reason) => node_problems.push(NotCollected {
            what: "cgroup-bpf".into(),
            netns: None,
            reason,
        }),
    }
    let (hostname, kernel) = uname();
    let boot_id = std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default();
    Ok(NodeSnapshot {
        schema_version: SCHEMA_VERSION,
        node: NodeIdentity {
            name: opts.node.clone().unwrap_or_else(|| hostname.clone()),
            hostname,
            kernel,
            boot_id,
            collected_at: time::now_rfc3339(),
            collector: format!("netray {}", env!("CARGO_PKG_VERSION")),
        },
        namespaces,
        referenced_netns,
        not_collected: node_problems,
        cgroup_programs,
    })
}
