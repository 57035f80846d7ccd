//! Which kernel subsystems may be asked without loading a module.
//!
//! Asking nf_tables, ctnetlink or ipset over nfnetlink (or running `nft`, `iptables-nft-save`,
//! `ipset`, `conntrack`) makes the kernel `request_module()` the subsystem when it is absent:
//! collecting would change the host. Each subsystem is touched only when its module is
//! already there — loaded (`/sys/module/NAME`, `/proc/modules`) or built in
//! (`modules.builtin`) — or when the kernel cannot load modules at all (no `/proc/modules`:
//! everything it has is built in). Otherwise the subsystem is skipped and the snapshot's
//! `not_collected` says so.

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

/// Where module presence is read from; [`HostModules`] on a real host, a fake in tests.
pub trait ModuleSource {
    /// Whether the kernel can load modules at all (`/proc/modules` exists).
    fn loadable(&self) -> bool;
    /// Whether module `name` (underscores, as in `/sys/module`) is loaded or built in.
    fn present(&self, name: &str) -> bool;
}

/// The running kernel: `/proc/modules`, `/sys/module`, `/lib/modules/$(uname -r)/modules.builtin`.
pub struct HostModules {
    loaded: Option<BTreeSet<String>>,
    builtin: BTreeSet<String>,
    sys_module: PathBuf,
}

impl HostModules {
    /// Read the module lists once.
    pub fn read(kernel_release: &str) -> HostModules {
        let loaded = std::fs::read_to_string("/proc/modules").ok().map(|t| {
            t.lines()
                .filter_map(|l| l.split_whitespace().next())
                .map(str::to_string)
                .collect()
        });
        let builtin = std::fs::read_to_string(
            Path::new("/lib/modules")
                .join(kernel_release)
                .join("modules.builtin"),
        )
        .map(|t| t.lines().filter_map(builtin_name).collect())
        .unwrap_or_default();
        HostModules {
            loaded,
            builtin,
            sys_module: PathBuf::from("/sys/module"),
        }
    }
}

/// `kernel/net/netfilter/nf_tables.ko` → `nf_tables`.
fn builtin_name(line: &str) -> Option<String> {
    let file = line.trim().rsplit('/').next()?;
    let stem = file.strip_suffix(".ko").unwrap_or(file);
    (!stem.is_empty()).then(|| stem.replace('-', "_"))
}

impl ModuleSource for HostModules {
    fn loadable(&self) -> bool {
        self.loaded.is_some()
    }
    fn present(&self, name: &str) -> bool {
        self.sys_module.join(name).exists()
            || self.loaded.as_ref().is_some_and(|l| l.contains(name))
            || self.builtin.contains(name)
    }
}

/// Environment variable naming modules (comma separated) that [`crate::collect`] treats as
/// absent on a kernel that loads modules: for tests on hosts where everything is built in.
pub const ASSUME_ABSENT_ENV: &str = "NETRAY_TEST_ASSUME_ABSENT_MODULES";

/// `inner`, except that the kernel loads modules and the listed ones are absent.
pub struct AssumeAbsent<'a> {
    inner: &'a dyn ModuleSource,
    absent: Vec<String>,
}

impl<'a> AssumeAbsent<'a> {
    /// `list`: module names, comma separated.
    pub fn new(inner: &'a dyn ModuleSource, list: &str) -> AssumeAbsent<'a> {
        AssumeAbsent {
            inner,
            absent: list
                .split(',')
                .map(|m| m.trim().to_string())
                .filter(|m| !m.is_empty())
                .collect(),
        }
    }
}

impl ModuleSource for AssumeAbsent<'_> {
    fn loadable(&self) -> bool {
        true
    }
    fn present(&self, name: &str) -> bool {
        !self.absent.iter().any(|a| a == name)
            && (!self.inner.loadable() || self.inner.present(name))
    }
}

/// A subsystem the collector asks through an interface that can load its module.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Subsystem {
    /// nf_tables over nfnetlink; `nft`, `iptables-nft-save`.
    NfTables,
    /// The conntrack table over ctnetlink.
    Ctnetlink,
    /// ipsets over nfnetlink; `ipset save`.
    Ipset,
    /// Listening sockets over sock_diag (`inet_diag`, `tcp_diag`, `udp_diag`).
    SockDiag,
}

impl Subsystem {
    /// Modules that must all be present before the subsystem is asked.
    pub fn modules(self) -> &'static [&'static str] {
        match self {
            Subsystem::NfTables => &["nfnetlink", "nf_tables"],
            Subsystem::Ctnetlink => &["nfnetlink", "nf_conntrack", "nf_conntrack_netlink"],
            Subsystem::Ipset => &["nfnetlink", "ip_set"],
            Subsystem::SockDiag => &["inet_diag", "tcp_diag", "udp_diag"],
        }
    }

    /// The `not_collected` key of what is skipped.
    pub fn what(self) -> &'static str {
        match self {
            Subsystem::NfTables => "nftables",
            Subsystem::Ctnetlink => "conntrack",
            Subsystem::Ipset => "ipset",
            Subsystem::SockDiag => "sockets",
        }
    }
}

/// `Ok` when `s` may be asked; otherwise why not (for `not_collected`).
pub fn gate(src: &dyn ModuleSource, s: Subsystem) -> Result<(), String> {
    if !src.loadable() {
        return Ok(());
    }
    let missing: Vec<&str> = s
        .modules()
        .iter()
        .copied()
        .filter(|m| !src.present(m))
        .collect();
    if missing.is_empty() {
        return Ok(());
    }
    Err(format!(
        "kernel module{} {} not loaded (no /sys/module entry, not in /proc/modules or \
         modules.builtin); not asked, since asking would load {}",
        if missing.len() == 1 { "" } else { "s" },
        missing.join(", "),
        if missing.len() == 1 { "it" } else { "them" },
    ))
}

/// The decision for every subsystem, taken once per node.
#[derive(Debug, Clone)]
pub struct Gates {
    /// [`Subsystem::NfTables`].
    pub nftables: Result<(), String>,
    /// [`Subsystem::Ctnetlink`].
    pub conntrack: Result<(), String>,
    /// [`Subsystem::Ipset`].
    pub ipset: Result<(), String>,
    /// [`Subsystem::SockDiag`].
    pub sockets: Result<(), String>,
}

impl Gates {
    /// Decide every subsystem from `src`.
    pub fn from(src: &dyn ModuleSource) -> Gates {
        Gates {
            nftables: gate(src, Subsystem::NfTables),
            conntrack: gate(src, Subsystem::Ctnetlink),
            ipset: gate(src, Subsystem::Ipset),
            sockets: gate(src, Subsystem::SockDiag),
        }
    }

    /// Everything allowed (tests, and kernels that cannot load modules).
    pub fn all() -> Gates {
        Gates {
            nftables: Ok(()),
            conntrack: Ok(()),
            ipset: Ok(()),
            sockets: Ok(()),
        }
    }

    /// The skipped subsystems as (what, reason).
    pub fn skipped(&self) -> Vec<(&'static str, String)> {
        [
            (Subsystem::NfTables, &self.nftables),
            (Subsystem::Ctnetlink, &self.conntrack),
            (Subsystem::Ipset, &self.ipset),
            (Subsystem::SockDiag, &self.sockets),
        ]
        .into_iter()
        .filter_map(|(s, g)| g.as_ref().err().map(|r| (s.what(), r.clone())))
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Fake {
        loadable: bool,
        present: &'static [&'static str],
    }

    impl ModuleSource for Fake {
        fn loadable(&self) -> bool {
            self.loadable
        }
        fn present(&self, name: &str) -> bool {
            self.present.contains(&name)
        }
    }

    #[test]
    fn a_kernel_without_module_loading_is_asked_everything() {
        let g = Gates::from(&Fake {
            loadable: false,
            present: &[],
        });
        assert!(g.skipped().is_empty());
    }

    #[test]
    fn absent_modules_skip_their_subsystem_and_say_which() {
        let g = Gates::from(&Fake {
            loadable: true,
            present: &[
                "nfnetlink",
                "nf_conntrack",
                "inet_diag",
                "tcp_diag",
                "udp_diag",
            ],
        });
        assert!(g.sockets.is_ok());
        let nft = g.nftables.as_ref().unwrap_err();
        assert!(nft.contains("module nf_tables not loaded"), "{nft}");
        let ct = g.conntrack.as_ref().unwrap_err();
        assert!(ct.contains("nf_conntrack_netlink"), "{ct}");
        assert!(!ct.contains("nf_conntrack,"), "{ct}");
        assert!(g.ipset.as_ref().unwrap_err().contains("ip_set"));
        let what: Vec<&str> = g.skipped().iter().map(|(w, _)| *w).collect();
        assert_eq!(what, ["nftables", "conntrack", "ipset"]);
    }

    #[test]
    fn present_modules_are_asked() {
        let all = [
            "nfnetlink",
            "nf_tables",
            "nf_conntrack",
            "nf_conntrack_netlink",
            "ip_set",
            "inet_diag",
            "tcp_diag",
            "udp_diag",
        ];
        let g = Gates::from(&Fake {
            loadable: true,
            present: Box::leak(Box::new(all)),
        });
        assert!(g.skipped().is_empty());
    }

    #[test]
    fn builtin_lines_name_modules() {
        assert_eq!(
            builtin_name("kernel/net/netfilter/nf_tables.ko").as_deref(),
            Some("nf_tables")
        );
        assert_eq!(
            builtin_name("kernel/net/netfilter/nf_conntrack-netlink.ko").as_deref(),
            Some("nf_conntrack_netlink")
        );
    }

    #[test]
    fn this_host_reads() {
        // Whatever the host, reading never fails and the decision is total.
        let h = HostModules::read("no-such-release");
        let _ = Gates::from(&h).skipped();
    }
}
