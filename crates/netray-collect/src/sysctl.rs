//! Sysctls that decide forwarding and filtering, read from `/proc/sys/net` by the thread
//! that has entered the namespace (procfs' sysctl tree follows the reading task's netns).

use std::collections::BTreeMap;
use std::path::Path;

/// Global sysctls (`/proc/sys/` relative, `/`-separated).
const GLOBAL: &[&str] = &[
    "net/ipv4/ip_forward",
    "net/ipv4/ip_nonlocal_bind",
    "net/ipv4/ip_local_port_range",
    "net/ipv4/tcp_tw_reuse",
    "net/ipv4/tcp_tw_recycle",
    "net/ipv4/fib_multipath_hash_policy",
    "net/ipv6/ip_nonlocal_bind",
    "net/ipv6/fib_multipath_hash_policy",
    "net/bridge/bridge-nf-call-iptables",
    "net/bridge/bridge-nf-call-ip6tables",
    "net/bridge/bridge-nf-call-arptables",
    "net/bridge/bridge-nf-filter-vlan-tagged",
    "net/netfilter/nf_conntrack_max",
    "net/netfilter/nf_conntrack_count",
    "net/netfilter/nf_conntrack_buckets",
    "net/netfilter/nf_conntrack_tcp_loose",
    "net/netfilter/nf_conntrack_tcp_be_liberal",
    "net/netfilter/nf_conntrack_udp_timeout",
    "net/netfilter/nf_conntrack_udp_timeout_stream",
];

/// Per-interface IPv4 settings under `net/ipv4/conf/{all,default,IFACE}/`.
const CONF4: &[&str] = &[
    "forwarding",
    "rp_filter",
    "accept_local",
    "route_localnet",
    "arp_ignore",
    "arp_announce",
    "arp_filter",
    "proxy_arp",
    "src_valid_mark",
    "send_redirects",
    "accept_redirects",
];

/// Per-interface IPv6 settings under `net/ipv6/conf/{all,default,IFACE}/`.
const CONF6: &[&str] = &[
    "forwarding",
    "force_forwarding",
    "disable_ipv6",
    "accept_ra",
    "proxy_ndp",
    "accept_dad",
];

/// Read the sysctls of the current thread's namespace. `root` is `/proc/sys` (a parameter
/// for tests). Missing files (a module not loaded, an older kernel) are simply absent.
pub fn read(root: &Path) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    let mut put = |rel: &str| {
        if let Ok(v) = std::fs::read_to_string(root.join(rel)) {
            out.insert(dotted(rel), v.trim_end_matches('\n').to_string());
        }
    };
    for g in GLOBAL {
        put(g);
    }
    for (dir, keys) in [("net/ipv4/conf", CONF4), ("net/ipv6/conf", CONF6)] {
        let Ok(rd) = std::fs::read_dir(root.join(dir)) else {
            continue;
        };
        let mut ifaces: Vec<String> = rd
            .filter_map(|e| e.ok())
            .map(|e| e.file_name().to_string_lossy().into_owned())
            .collect();
        ifaces.sort();
        for i in &ifaces {
            for k in keys {
                put(&format!("{dir}/{i}/{k}"));
            }
        }
    }
    out
}

/// `net/ipv4/conf/eth0.100/rp_filter` → `net.ipv4.conf.eth0/100.rp_filter` (as `sysctl`
/// prints it: dots inside a component become slashes).
fn dotted(rel: &str) -> String {
    rel.split('/')
        .map(|c| c.replace('.', "/"))
        .collect::<Vec<_>>()
        .join(".")
}

#[cfg(test)]
mod tests {
    #[test]
    fn dotted_names() {
        assert_eq!(
            super::dotted("net/ipv4/conf/eth0.100/rp_filter"),
            "net.ipv4.conf.eth0/100.rp_filter"
        );
    }
}
