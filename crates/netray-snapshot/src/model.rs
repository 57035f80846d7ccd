//! The node snapshot: everything netray knows about one node, as plain data.
//!
//! Kernel tables read over netlink are stored structured; firewall state is kept verbatim
//! from the tool that is its source of truth (`iptables-save`, `nft -j`, `ipset save`) so
//! evidence can quote the original line.

use std::collections::BTreeMap;
use std::net::IpAddr;

use ipnet::IpNet;
use serde::{Deserialize, Serialize};

/// Schema version written by this build and the only one it reads.
pub const SCHEMA_VERSION: u32 = 1;

/// One node: its host namespace and every other network namespace found on it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeSnapshot {
    /// Must equal [`SCHEMA_VERSION`].
    pub schema_version: u32,
    /// Who and when.
    pub node: NodeIdentity,
    /// The host namespace first (role `host`), then the others.
    pub namespaces: Vec<NetnsSnapshot>,
    /// Namespaces referenced (e.g. as a veth peer of a collected namespace) but not collected.
    #[serde(default)]
    pub referenced_netns: Vec<NetnsId>,
    /// What could not be collected, and why.
    #[serde(default)]
    pub not_collected: Vec<NotCollected>,
    /// BPF programs attached to cgroups (point `cgroup`): they act on the sockets of every
    /// process in the cgroup (and its descendants), whatever its network namespace.
    #[serde(default)]
    pub cgroup_programs: Vec<Attachment>,
}

/// Identity and provenance of a snapshot.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NodeIdentity {
    /// Kubernetes node name (`collect --node`, default the hostname).
    pub name: String,
    /// `uname -n` of the collecting namespace.
    pub hostname: String,
    /// `uname -r`.
    pub kernel: String,
    /// `/proc/sys/kernel/random/boot_id`: namespaces with the same boot id share one kernel,
    /// so equal inodes mean the same namespace (the lab's underlay switch seen from two nodes).
    pub boot_id: String,
    /// RFC 3339 UTC time of collection.
    pub collected_at: String,
    /// `netray <version>` that wrote this snapshot.
    pub collector: String,
}

/// Something the collector could not read.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NotCollected {
    /// What was not collected (e.g. `ipvs`, `conntrack`).
    pub what: String,
    /// Inode of the namespace concerned, if any.
    #[serde(default)]
    pub netns: Option<u64>,
    /// Why (e.g. "not supported by this kernel").
    pub reason: String,
}

/// Identity of a network namespace within one kernel.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetnsId {
    /// Inode of the namespace file (`stat -L /proc/PID/ns/net`).
    pub inode: u64,
    /// Name under `/run/netns`, if it has one.
    #[serde(default)]
    pub name: Option<String>,
    /// Some processes living in it (for pods without a `/run/netns` name).
    #[serde(default)]
    pub pids: Vec<u32>,
}

/// Why a namespace is in the snapshot.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum NetnsRole {
    /// The namespace `netray collect` ran in: the node's host namespace.
    Host,
    /// Found as the peer of a veth of the host namespace (pods, VMs, containers, a lab switch).
    VethPeer,
    /// Named with `--netns`.
    Requested,
}

/// Full state of one network namespace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NetnsSnapshot {
    /// Which namespace.
    pub id: NetnsId,
    /// Why it was collected.
    pub role: NetnsRole,
    /// Network interfaces.
    pub links: Vec<Link>,
    /// Interface addresses (v4 and v6).
    pub addresses: Vec<Address>,
    /// Routes of every table, `local` included.
    pub routes: Vec<Route>,
    /// Policy routing rules (`ip rule`, v4 and v6).
    pub rules: Vec<Rule>,
    /// Neighbour (ARP/NDP) entries, all states.
    pub neighbours: Vec<Neighbour>,
    /// Bridge and vxlan forwarding database.
    pub fdb: Vec<FdbEntry>,
    /// Sysctls by full dotted name (`net.ipv4.conf.eth0.rp_filter`) → value as read.
    pub sysctls: BTreeMap<String, String>,
    /// Firewall state, verbatim.
    pub firewall: Firewall,
    /// Conntrack table and counters.
    #[serde(default)]
    pub conntrack: Option<Conntrack>,
    /// Listening TCP sockets and bound UDP sockets.
    pub sockets: Vec<Socket>,
    /// What runs on this namespace's interfaces that netray does not model: tc filters on
    /// the clsact/ingress qdisc (every classifier kind), tcx and XDP programs.
    #[serde(default)]
    pub attachments: Vec<Attachment>,
}

/// Where an [`Attachment`] runs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum AttachPoint {
    /// XDP on `dev`: every frame `dev` receives, before tc, netfilter and routing.
    Xdp,
    /// tc ingress (clsact or ingress qdisc filter, or tcx) on `dev`: every packet `dev`
    /// receives, after XDP, before netfilter PREROUTING and routing.
    TcIngress,
    /// tc egress (clsact filter, or tcx) on `dev`: every packet `dev` transmits, after
    /// netfilter POSTROUTING.
    TcEgress,
    /// A cgroup hook (`attach_type`): sockets of the cgroup's processes.
    Cgroup,
}

/// A tc filter, tcx/XDP program or cgroup BPF program: it may drop, redirect or rewrite what
/// crosses it, and netray does not model what it does.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Attachment {
    /// Where it runs.
    pub point: AttachPoint,
    /// Interface (xdp, tc); `None` for cgroup programs.
    #[serde(default)]
    pub dev: Option<String>,
    /// tc: the classifier (`bpf`, `u32`, `flower`, `matchall`, …); `tcx` for a tcx program;
    /// `bpf` for XDP and cgroup programs.
    pub kind: String,
    /// The BPF program, when there is one (and the kernel said which).
    #[serde(default)]
    pub prog: Option<BpfProgram>,
    /// tc: filter priority (`pref`).
    #[serde(default)]
    pub pref: Option<u16>,
    /// tc: filter chain.
    #[serde(default)]
    pub chain: Option<u32>,
    /// tc: filter handle.
    #[serde(default)]
    pub handle: Option<u32>,
    /// tc `bpf`: direct-action (the program's return code is the verdict, e.g. `TC_ACT_SHOT`
    /// drops); always true for tcx.
    #[serde(default)]
    pub direct_action: bool,
    /// XDP: `driver`, `generic`, `offload` or `multi`.
    #[serde(default)]
    pub mode: Option<String>,
    /// cgroup: the cgroup's path under the cgroup2 mount (`/` for the root).
    #[serde(default)]
    pub cgroup: Option<String>,
    /// cgroup: the attach type (`cgroup_inet4_connect`, `cgroup_inet_ingress`, …).
    #[serde(default)]
    pub attach_type: Option<String>,
}

/// A loaded BPF program, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BpfProgram {
    /// Kernel-wide program id (`bpftool prog show id N`).
    pub id: u32,
    /// Program name (at most 15 characters), or tc's name for it (object file and section).
    #[serde(default)]
    pub name: Option<String>,
    /// Program tag (hex).
    #[serde(default)]
    pub tag: Option<String>,
}

/// A network interface.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Link {
    /// Interface index in its namespace.
    pub ifindex: u32,
    /// Interface name.
    pub name: String,
    /// Kind with kind-specific data.
    pub kind: LinkKind,
    /// MTU in bytes.
    pub mtu: u32,
    /// Hardware address, lowercase `aa:bb:..`; `None` for devices without one.
    #[serde(default)]
    pub mac: Option<String>,
    /// `IFLA_OPERSTATE`: `up`, `down`, `unknown`, `lowerlayerdown`, ...
    pub operstate: String,
    /// Interface flags as `ip` prints them: `UP`, `LOWER_UP`, `NOARP`, `PROMISC`, ...
    pub flags: Vec<String>,
    /// Name of the master device (bridge) if enslaved.
    #[serde(default)]
    pub master: Option<String>,
    /// Port settings when this link is a bridge port.
    #[serde(default)]
    pub bridge_port: Option<BridgePort>,
    /// Interface group.
    #[serde(default)]
    pub group: u32,
    /// Drop and error counters at collection time (`IFLA_STATS64`); `None` in snapshots
    /// taken before they were collected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<LinkStats>,
}

/// A link's drop and error counters since it was created, as `ip -s link` shows them.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct LinkStats {
    /// Received packets.
    pub rx_packets: u64,
    /// Transmitted packets.
    pub tx_packets: u64,
    /// Received packets dropped (no buffer, unknown protocol, too big for the MTU, …).
    pub rx_dropped: u64,
    /// Packets dropped on transmit (a veth: the peer refused them, e.g. larger than its MTU).
    pub tx_dropped: u64,
    /// Receive errors (CRC, length, over-MTU frames on drivers that count them so, …).
    pub rx_errors: u64,
    /// Transmit errors.
    pub tx_errors: u64,
}

impl LinkStats {
    /// Whether any drop or error counter is non-zero.
    pub fn any_loss(&self) -> bool {
        self.rx_dropped + self.tx_dropped + self.rx_errors + self.tx_errors > 0
    }
}

impl std::fmt::Display for LinkStats {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "rx {} packets ({} dropped, {} errors), tx {} packets ({} dropped, {} errors)",
            self.rx_packets,
            self.rx_dropped,
            self.rx_errors,
            self.tx_packets,
            self.tx_dropped,
            self.tx_errors
        )
    }
}

impl Link {
    /// Administratively up (`IFF_UP`).
    pub fn is_up(&self) -> bool {
        self.flags.iter().any(|f| f == "UP")
    }
}

/// Kind-specific link data.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case", deny_unknown_fields)]
pub enum LinkKind {
    /// Loopback.
    Loopback,
    /// Physical or unknown-kind device with no further data.
    Device,
    /// veth pair end.
    Veth {
        /// Peer interface index in the peer namespace.
        peer_ifindex: Option<u32>,
        /// Inode of the peer's namespace (equal to this namespace's for a local pair).
        peer_netns: Option<u64>,
    },
    /// Linux bridge.
    Bridge {
        /// VLAN filtering enabled.
        vlan_filtering: bool,
        /// STP state (0 off, 1 kernel, 2 user).
        stp_state: u32,
        /// Default PVID.
        #[serde(default)]
        default_pvid: Option<u16>,
        /// Per-bridge `nf_call_iptables` (`ip link … type bridge nf_call_iptables 1`): bridged
        /// IPv4 traverses iptables when this **or** the namespace's
        /// `net.bridge.bridge-nf-call-iptables` is set (br_netfilter loaded).
        #[serde(default)]
        nf_call_iptables: bool,
        /// Per-bridge `nf_call_ip6tables` (same rule for IPv6).
        #[serde(default)]
        nf_call_ip6tables: bool,
        /// Per-bridge `nf_call_arptables`.
        #[serde(default)]
        nf_call_arptables: bool,
    },
    /// VXLAN device.
    Vxlan {
        /// VXLAN network identifier.
        vni: u32,
        /// UDP destination port.
        port: u16,
        /// Local VTEP address.
        local: Option<IpAddr>,
        /// Remote or multicast group address.
        group: Option<IpAddr>,
        /// Underlay device name.
        dev: Option<String>,
        /// FDB learning enabled.
        learning: bool,
    },
    /// 802.1Q VLAN device.
    Vlan {
        /// VLAN id.
        id: u16,
        /// Parent device name.
        parent: Option<String>,
    },
    /// macvlan device.
    Macvlan {
        /// Mode (`bridge`, `private`, `vepa`, `passthru`, `source`).
        mode: String,
        /// Parent device name.
        parent: Option<String>,
    },
    /// ipvlan device.
    Ipvlan {
        /// Parent device name.
        parent: Option<String>,
    },
    /// tun or tap device.
    Tun,
    /// dummy device.
    Dummy,
    /// IP-in-IP or GRE style tunnel.
    Tunnel {
        /// `ipip`, `gre`, `gretap`, `sit`, `ip6tnl`, ...
        kind: String,
        /// Local address.
        local: Option<IpAddr>,
        /// Remote address.
        remote: Option<IpAddr>,
    },
    /// Any other kind, by name; the datapath reports it as unmodelled.
    Other {
        /// `IFLA_INFO_KIND`.
        kind: String,
    },
}

/// Bridge port settings (`IFLA_PROTINFO` / `bridge -d link`).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BridgePort {
    /// STP port state: `disabled`, `listening`, `learning`, `forwarding`, `blocking`.
    pub state: String,
    /// Hairpin mode (reflect frames back out of the port they came in).
    pub hairpin: bool,
    /// Learning enabled.
    pub learning: bool,
    /// VLANs on this port (only meaningful with VLAN filtering).
    #[serde(default)]
    pub vlans: Vec<PortVlan>,
}

/// One VLAN membership of a bridge port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PortVlan {
    /// VLAN id.
    pub vid: u16,
    /// Port VLAN id (untagged ingress goes here).
    pub pvid: bool,
    /// Egress untagged.
    pub untagged: bool,
}

/// An interface address.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Address {
    /// Interface name.
    pub dev: String,
    /// Address with prefix length.
    pub addr: IpNet,
    /// Peer address for point-to-point.
    #[serde(default)]
    pub peer: Option<IpNet>,
    /// `host`, `link`, `global`, ...
    pub scope: String,
    /// Flags such as `secondary`, `noprefixroute`, `tentative`.
    #[serde(default)]
    pub flags: Vec<String>,
}

/// Route types (`RTN_*`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RouteType {
    /// Gateway or direct route.
    Unicast,
    /// Local address: deliver to this host.
    Local,
    /// Broadcast address.
    Broadcast,
    /// Anycast (v6).
    Anycast,
    /// Multicast.
    Multicast,
    /// Silently discard.
    Blackhole,
    /// ICMP host unreachable.
    Unreachable,
    /// ICMP administratively prohibited.
    Prohibit,
    /// Continue the rule lookup.
    Throw,
    /// NAT route (obsolete).
    Nat,
    /// Anything else.
    Unspec,
}

/// A route in some table.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Route {
    /// Routing table id (255 local, 254 main, 253 default).
    pub table: u32,
    /// Destination prefix (`0.0.0.0/0` for default).
    pub dst: IpNet,
    /// Source prefix (v6 source routing).
    #[serde(default)]
    pub src: Option<IpNet>,
    /// Route type.
    #[serde(rename = "type")]
    pub route_type: RouteType,
    /// `kernel`, `boot`, `static`, `dhcp`, numeric otherwise.
    pub protocol: String,
    /// `host`, `link`, `global`, ...
    pub scope: String,
    /// Preferred source address.
    #[serde(default)]
    pub prefsrc: Option<IpAddr>,
    /// Metric (priority).
    #[serde(default)]
    pub metric: u32,
    /// TOS/DSCP selector.
    #[serde(default)]
    pub tos: u8,
    /// Single next hop gateway.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Single next hop device.
    #[serde(default)]
    pub dev: Option<String>,
    /// Route flags (`onlink`, `linkdown`, ...).
    #[serde(default)]
    pub flags: Vec<String>,
    /// Multipath next hops (ECMP).
    #[serde(default)]
    pub multipath: Vec<NextHop>,
    /// Route MTU lock/metric if set.
    #[serde(default)]
    pub mtu: Option<u32>,
}

/// One next hop of a multipath route.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NextHop {
    /// Gateway address.
    #[serde(default)]
    pub gateway: Option<IpAddr>,
    /// Device.
    #[serde(default)]
    pub dev: Option<String>,
    /// Weight (`ip route` prints hops+1).
    pub weight: u32,
    /// Flags (`onlink`, ...).
    #[serde(default)]
    pub flags: Vec<String>,
}

/// `ip rule` action.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum RuleAction {
    /// Look up `table`.
    Lookup,
    /// Jump to rule `goto`.
    Goto,
    /// Do nothing.
    Nop,
    /// Discard.
    Blackhole,
    /// Unreachable.
    Unreachable,
    /// Prohibit.
    Prohibit,
}

/// A policy routing rule with every selector.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// `inet` or `inet6`.
    pub family: String,
    /// Priority (lower first).
    pub priority: u32,
    /// `not` before the selectors.
    #[serde(default)]
    pub invert: bool,
    /// Source prefix.
    #[serde(default)]
    pub src: Option<IpNet>,
    /// Destination prefix.
    #[serde(default)]
    pub dst: Option<IpNet>,
    /// Input interface.
    #[serde(default)]
    pub iif: Option<String>,
    /// Output interface.
    #[serde(default)]
    pub oif: Option<String>,
    /// Firewall mark.
    #[serde(default)]
    pub fwmark: Option<u32>,
    /// Mask for `fwmark` (default 0xffffffff).
    #[serde(default)]
    pub fwmask: Option<u32>,
    /// TOS selector.
    #[serde(default)]
    pub tos: u8,
    /// IP protocol number.
    #[serde(default)]
    pub ipproto: Option<u8>,
    /// Source port range.
    #[serde(default)]
    pub sport: Option<(u16, u16)>,
    /// Destination port range.
    #[serde(default)]
    pub dport: Option<(u16, u16)>,
    /// UID range.
    #[serde(default)]
    pub uid_range: Option<(u32, u32)>,
    /// `l3mdev` selector.
    #[serde(default)]
    pub l3mdev: bool,
    /// Action.
    pub action: RuleAction,
    /// Table for `lookup`.
    #[serde(default)]
    pub table: Option<u32>,
    /// Target priority for `goto`.
    #[serde(default)]
    pub goto: Option<u32>,
    /// `suppress_prefixlength`.
    #[serde(default)]
    pub suppress_prefixlen: Option<u32>,
    /// `suppress_ifgroup`.
    #[serde(default)]
    pub suppress_ifgroup: Option<u32>,
}

/// A neighbour (ARP / NDP) entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Neighbour {
    /// Device.
    pub dev: String,
    /// Neighbour address.
    pub dst: IpAddr,
    /// Link-layer address.
    #[serde(default)]
    pub lladdr: Option<String>,
    /// States as `ip neigh` prints them: `PERMANENT`, `NOARP`, `REACHABLE`, `STALE`,
    /// `DELAY`, `PROBE`, `FAILED`, `INCOMPLETE`, `NONE`.
    pub state: Vec<String>,
    /// Flags: `router`, `proxy`, `extern_learn`.
    #[serde(default)]
    pub flags: Vec<String>,
}

/// A forwarding database entry (bridge or vxlan).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FdbEntry {
    /// Device the entry belongs to (bridge port or vxlan device).
    pub dev: String,
    /// MAC address (`00:00:00:00:00:00` is the vxlan default destination).
    pub mac: String,
    /// Master bridge, when the entry lives in a bridge's table.
    #[serde(default)]
    pub master: Option<String>,
    /// VLAN id.
    #[serde(default)]
    pub vlan: Option<u16>,
    /// Remote VTEP address (vxlan).
    #[serde(default)]
    pub dst: Option<IpAddr>,
    /// Remote VNI override (vxlan).
    #[serde(default)]
    pub vni: Option<u32>,
    /// Remote port override (vxlan).
    #[serde(default)]
    pub port: Option<u16>,
    /// `permanent`, `static`, or empty for learned.
    #[serde(default)]
    pub state: Vec<String>,
    /// `self`, `master`, `extern_learn`, `router`, ...
    #[serde(default)]
    pub flags: Vec<String>,
}

/// iptables backend.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IptablesBackend {
    /// `iptables-legacy` (x_tables).
    Legacy,
    /// `iptables-nft` (nf_tables with xt compat).
    Nft,
}

/// Address family of an iptables dump.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum IpFamily {
    /// IPv4 (`iptables-save`).
    Ipv4,
    /// IPv6 (`ip6tables-save`).
    Ipv6,
}

/// One `iptables-save` output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IptablesDump {
    /// Which backend produced it.
    pub backend: IptablesBackend,
    /// v4 or v6.
    pub family: IpFamily,
    /// Verbatim `*-save -c` text.
    pub text: String,
}

/// Firewall state of a namespace, verbatim.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Firewall {
    /// `iptables-save -c` / `ip6tables-save -c` per backend that holds rules.
    #[serde(default)]
    pub iptables: Vec<IptablesDump>,
    /// `nft -j` listing of the namespace's *native* nf_tables tables: `nft -j list ruleset`
    /// verbatim when no table belongs to iptables-nft; otherwise the `nft -j list table`
    /// output of every table not already recorded in an `iptables` dump of the nft backend,
    /// merged into one `{"nftables": [...]}` document. `None` when nf_tables holds no
    /// native table (or `nft` failed: then `not_collected` says why).
    #[serde(default)]
    pub nft_json: Option<String>,
    /// `ipset save`, verbatim.
    #[serde(default)]
    pub ipset: Option<String>,
    /// `ipvsadm -Sn` (or `/proc/net/ip_vs`), verbatim, where the kernel has IPVS.
    #[serde(default)]
    pub ipvs: Option<String>,
}

/// Conntrack state of a namespace.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Conntrack {
    /// Entries in the table when collected.
    pub count: u64,
    /// Entries recorded (at most `--conntrack-limit`).
    pub entries: Vec<ConntrackEntry>,
    /// True when `entries` is shorter than `count` because of the limit.
    pub truncated: bool,
    /// `/proc/net/stat/nf_conntrack` summed over CPUs: `insert_failed`, `drop`, ...
    pub stats: BTreeMap<String, u64>,
}

/// One direction of a conntrack entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConntrackTuple {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// Source port (or ICMP id).
    #[serde(default)]
    pub sport: Option<u16>,
    /// Destination port (or ICMP type/code packed).
    #[serde(default)]
    pub dport: Option<u16>,
}

/// A conntrack entry.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ConntrackEntry {
    /// L4 protocol number.
    pub proto: u8,
    /// Original direction.
    pub orig: ConntrackTuple,
    /// Reply direction.
    pub reply: ConntrackTuple,
    /// TCP state (`ESTABLISHED`, `SYN_SENT`, ...).
    #[serde(default)]
    pub tcp_state: Option<String>,
    /// Status flags: `ASSURED`, `SEEN_REPLY`, `SRC_NAT`, `DST_NAT`, `CONFIRMED`, ...
    #[serde(default)]
    pub status: Vec<String>,
    /// Connection mark.
    #[serde(default)]
    pub mark: u32,
    /// Zone.
    #[serde(default)]
    pub zone: u16,
    /// Seconds left.
    #[serde(default)]
    pub timeout: u32,
}

/// Transport of a socket.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum SocketProto {
    /// TCP (listening).
    Tcp,
    /// UDP (bound).
    Udp,
}

/// A listening TCP or bound UDP socket.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Socket {
    /// TCP or UDP.
    pub proto: SocketProto,
    /// Bound address (`0.0.0.0` / `::` for any).
    pub addr: IpAddr,
    /// Bound port.
    pub port: u16,
    /// `SO_BINDTODEVICE` device, if any.
    #[serde(default)]
    pub dev: Option<String>,
    /// For `::` sockets: also accepts IPv4 (`IPV6_V6ONLY` off).
    #[serde(default)]
    pub dual_stack: bool,
}

impl NetnsSnapshot {
    /// A sysctl value as read, if recorded. `name` may spell an interface with dots
    /// (`net.ipv4.conf.flannel.1.rp_filter`); the snapshot stores it as sysctl(8) does
    /// (`net.ipv4.conf.flannel/1.rp_filter`), see [`sysctl_key`].
    pub fn sysctl(&self, name: &str) -> Option<&str> {
        self.sysctls
            .get(name)
            .or_else(|| self.sysctls.get(&sysctl_key(name)))
            .map(String::as_str)
    }

    /// The link named `name`.
    pub fn link(&self, name: &str) -> Option<&Link> {
        self.links.iter().find(|l| l.name == name)
    }

    /// Display name: the `/run/netns` name, else `netns:<inode>`.
    pub fn display_name(&self) -> String {
        self.id.display_name()
    }
}

impl NetnsId {
    /// The `/run/netns` name, else `netns:<inode>`.
    pub fn display_name(&self) -> String {
        match &self.name {
            Some(n) => n.clone(),
            None => format!("netns:{}", self.inode),
        }
    }
}

impl NodeSnapshot {
    /// The host namespace (the one `netray collect` ran in).
    pub fn host(&self) -> Option<&NetnsSnapshot> {
        self.namespaces.iter().find(|n| n.role == NetnsRole::Host)
    }
}

/// The key of a sysctl as sysctl(8) prints it: in the per-interface trees
/// (`net.ipv{4,6}.conf.IFACE.X`, `net.ipv{4,6}.neigh.IFACE.X`) the dots of the interface name
/// are written `/` (`flannel.1` → `flannel/1`). Other keys are returned unchanged.
pub fn sysctl_key(name: &str) -> String {
    for prefix in [
        "net.ipv4.conf.",
        "net.ipv6.conf.",
        "net.ipv4.neigh.",
        "net.ipv6.neigh.",
    ] {
        if let Some(rest) = name.strip_prefix(prefix)
            && let Some((iface, setting)) = rest.rsplit_once('.')
        {
            return format!("{prefix}{}.{setting}", iface.replace('.', "/"));
        }
    }
    name.to_string()
}

#[cfg(test)]
mod sysctl_key_tests {
    use super::sysctl_key;

    #[test]
    fn interface_dots_become_slashes() {
        assert_eq!(
            sysctl_key("net.ipv4.conf.flannel.1.rp_filter"),
            "net.ipv4.conf.flannel/1.rp_filter"
        );
        assert_eq!(
            sysctl_key("net.ipv4.conf.all.rp_filter"),
            "net.ipv4.conf.all.rp_filter"
        );
        assert_eq!(sysctl_key("net.ipv4.ip_forward"), "net.ipv4.ip_forward");
        assert_eq!(
            sysctl_key("net.ipv6.conf.eth0.100.forwarding"),
            "net.ipv6.conf.eth0/100.forwarding"
        );
    }
}
