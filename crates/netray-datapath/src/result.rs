//! The result of a trace: branches, hops and dispositions. Serializable; this is the JSON
//! schema documented in the crate README.

use std::collections::BTreeMap;
use std::net::IpAddr;

use serde::{Deserialize, Serialize};

/// How a branch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "kebab-case")]
pub enum Disposition {
    /// Reached a listening socket (or an ICMP echo responder) and the reply came back to the
    /// client with the expected tuple.
    Delivered,
    /// Reached local input of the destination host, but the snapshot has no socket list, and the
    /// reply came back.
    AcceptedByHost,
    /// Dropped by a firewall rule or chain policy, a bridge, or a device.
    Dropped,
    /// Rejected (REJECT target, or no listening socket: TCP RST / ICMP port unreachable).
    Rejected,
    /// No route (or an unreachable/prohibit/blackhole route or rule).
    NoRoute,
    /// Next hop has no usable neighbour entry and no interface on the segment owns it.
    NeighborUnreachable,
    /// Dropped by the input martian checks (local source from outside, loopback, zeronet...).
    MartianSource,
    /// Dropped by reverse path filtering.
    RpFilter,
    /// Forwarding is disabled on the input interface.
    ForwardingDisabled,
    /// The reply does not match the client's conntrack entry / socket tuple.
    ReplyMismatch,
    /// The packet is larger than the egress MTU and may not be fragmented.
    MtuExceeded,
    /// The packet leaves the collected namespaces (through a gateway or device whose other
    /// side was not collected): not a failure — where it goes next is outside the snapshot.
    Exits,
    /// The packet loops.
    Loop,
    /// Something the model does not know (named in `reason`).
    Unknown,
}

impl Disposition {
    /// True for the dispositions that are not failures: delivered, accepted by the host, or
    /// left the snapshot toward somewhere it does not cover.
    pub fn is_success(self) -> bool {
        matches!(
            self,
            Disposition::Delivered | Disposition::AcceptedByHost | Disposition::Exits
        )
    }

    /// The kebab-case name used in JSON and text.
    pub fn as_str(self) -> &'static str {
        match self {
            Disposition::Delivered => "delivered",
            Disposition::AcceptedByHost => "accepted-by-host",
            Disposition::Dropped => "dropped",
            Disposition::Rejected => "rejected",
            Disposition::NoRoute => "no-route",
            Disposition::NeighborUnreachable => "neighbor-unreachable",
            Disposition::MartianSource => "martian-source",
            Disposition::RpFilter => "rp-filter",
            Disposition::ForwardingDisabled => "forwarding-disabled",
            Disposition::ReplyMismatch => "reply-mismatch",
            Disposition::MtuExceeded => "mtu-exceeded",
            Disposition::Exits => "exits",
            Disposition::Loop => "loop",
            Disposition::Unknown => "unknown",
        }
    }
}

/// Which way the packet travels.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Leg {
    /// Client to server.
    Forward,
    /// Server back to client.
    Reply,
}

/// A packet's addresses as seen at a hop.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct PacketView {
    /// Source address.
    pub src: IpAddr,
    /// Destination address.
    pub dst: IpAddr,
    /// `tcp`, `udp`, `icmp` or the protocol number.
    pub proto: String,
    /// Source port (ICMP: echo id).
    pub sport: Option<u16>,
    /// Destination port.
    pub dport: Option<u16>,
    /// IP length in bytes.
    pub len: u32,
    /// Packet mark.
    pub mark: u32,
}

impl std::fmt::Display for PacketView {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let ep = |ip: &IpAddr, p: Option<u16>| match (ip, p) {
            (IpAddr::V6(a), Some(p)) => format!("[{a}]:{p}"),
            (a, Some(p)) => format!("{a}:{p}"),
            (a, None) => a.to_string(),
        };
        let ports = self.proto == "tcp" || self.proto == "udp" || self.proto == "sctp";
        let (sp, dp) = if ports {
            (self.sport, self.dport)
        } else {
            (None, None)
        };
        write!(
            f,
            "{} > {} {}",
            ep(&self.src, sp),
            ep(&self.dst, dp),
            self.proto
        )?;
        if !ports && let Some(id) = self.sport {
            write!(f, " id {id}")?;
        }
        write!(f, " len {}", self.len)?;
        if self.mark != 0 {
            write!(f, " mark {:#x}", self.mark)?;
        }
        Ok(())
    }
}

/// A firewall rule that matched (or a chain policy that applied).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct RuleRef {
    /// `iptables-legacy`, `iptables-nft` or `nft`.
    #[serde(default)]
    pub backend: String,
    /// `ip`, `ip6`, `inet`, `bridge`, `netdev`.
    #[serde(default)]
    pub family: String,
    /// Table (`nat`, `filter`, or an nft table name).
    pub table: String,
    /// Chain.
    pub chain: String,
    /// 1-based rule number in the chain; `None` for the chain policy.
    pub index: Option<usize>,
    /// nft rule handle (native nft rules).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub handle: Option<u64>,
    /// The rule's own text (or `policy DROP`).
    pub text: String,
    /// Packet counter from the snapshot, when recorded.
    pub packets: Option<u64>,
    /// Byte counter from the snapshot, when recorded.
    pub bytes: Option<u64>,
}

impl RuleRef {
    /// The rule as a [`KernelObject`] of namespace `at`.
    pub fn object(&self, at: &crate::Place) -> crate::KernelObject {
        crate::KernelObject::Rule {
            at: at.clone(),
            family: self.family.clone(),
            table: self.table.clone(),
            chain: self.chain.clone(),
            index: self.index,
            text: self.text.clone(),
        }
    }
}

/// What happened at a hop.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(tag = "type", rename_all = "kebab-case")]
pub enum Step {
    /// The packet is generated by a local socket.
    Originate,
    /// The packet is received on `iface` (as an IP packet).
    Receive,
    /// A policy rule + route was chosen.
    Route {
        /// The `ip rule` that led to the table (text), if rules were consulted.
        rule: Option<String>,
        /// Table id.
        table: u32,
        /// The route as `ip route` prints it.
        route: String,
        /// Next hop chosen (gateway or the destination itself), for unicast routes.
        nexthop: Option<IpAddr>,
        /// Weight share when this is one ECMP branch.
        ecmp: Option<String>,
    },
    /// A netfilter hook was traversed.
    Netfilter {
        /// `PREROUTING`, `INPUT`, `FORWARD`, `OUTPUT`, `POSTROUTING`.
        hook: String,
        /// True when run by br_netfilter inside a bridge.
        bridged: bool,
        /// `accept`, `drop`, `reject`, `queue`, `unknown`.
        verdict: String,
        /// Rules that matched, in order.
        rules: Vec<RuleRef>,
    },
    /// Conntrack lookup or creation.
    Conntrack {
        /// `new`, `established` (original direction) or `reply`; [`CT_COLLECTED_ORIG`] or
        /// [`CT_COLLECTED_REPLY`] when the entry is one collected in the snapshot.
        state: String,
        /// The entry as `conntrack -L` would show the tuples.
        entry: String,
        /// The entry's original tuple.
        orig: crate::CtTuple,
        /// The entry's reply tuple.
        reply: crate::CtTuple,
    },
    /// An address/port rewrite.
    Nat {
        /// `dnat`, `snat`, `masquerade`, `redirect`, `de-snat`, `de-dnat`, `dnat (conntrack)`...
        kind: String,
        /// Packet before.
        before: String,
        /// Packet after.
        after: String,
    },
    /// A sysctl or kernel check passed (evidence) or failed.
    Check {
        /// `rp_filter`, `forwarding`, `martian`, `accept_local`, `mtu`...
        check: String,
        /// What was found.
        detail: String,
    },
    /// Neighbour resolution.
    Neighbour {
        /// Next hop.
        addr: IpAddr,
        /// Resolved MAC.
        lladdr: Option<String>,
        /// Entry state or how it was resolved.
        state: String,
    },
    /// A bridge forwarding decision.
    Bridge {
        /// Bridge device.
        bridge: String,
        /// Ingress port.
        in_port: String,
        /// Egress port, or `local` for the bridge itself.
        out_port: String,
        /// FDB entry used, or `flood`.
        fdb: String,
    },
    /// Transmission out of a device into the peer of a veth or another segment.
    Transmit {
        /// Where the frame arrives next (`node/netns/iface`).
        to: String,
        /// Destination MAC of the frame.
        dst_mac: Option<String>,
    },
    /// VXLAN encapsulation.
    Encap {
        /// VXLAN device.
        dev: String,
        /// VNI.
        vni: u32,
        /// Inner destination MAC.
        inner_dst_mac: String,
        /// Remote VTEP.
        remote: IpAddr,
        /// UDP port.
        port: u16,
        /// FDB entry used.
        fdb: String,
    },
    /// VXLAN decapsulation.
    Decap {
        /// VXLAN device receiving the inner frame.
        dev: String,
        /// VNI.
        vni: u32,
    },
    /// An IPVS decision (`ip_vs_in` scheduling a new connection to a real server).
    Ipvs {
        /// Hook where IPVS ran (`INPUT` for LOCAL_IN, `OUTPUT` for LOCAL_OUT).
        hook: String,
        /// The virtual service's `-A` line.
        service: String,
        /// The chosen real server's `-a` line, if one was chosen.
        real_server: Option<String>,
        /// Scheduler, share and forwarding method (or why nothing was chosen).
        detail: String,
    },
    /// Local delivery.
    Deliver {
        /// The socket, when the snapshot lists sockets.
        socket: Option<String>,
    },
    /// The end of the branch (with the reason).
    End {
        /// Disposition.
        disposition: Disposition,
        /// Why.
        reason: String,
    },
}

/// One step of a branch, with where it happened.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Hop {
    /// Forward or reply.
    pub leg: Leg,
    /// Node name.
    pub node: String,
    /// Namespace display name.
    pub netns: String,
    /// The pod (`NS/NAME`) the namespace belongs to, when the cluster view names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod: Option<String>,
    /// Input interface.
    pub iif: Option<String>,
    /// Output interface.
    pub oif: Option<String>,
    /// The packet after this step.
    pub packet: PacketView,
    /// What happened.
    pub step: Step,
}

/// One way the flow can go, forward and reply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Branch {
    /// Probability of this branch (statistic/ECMP splits multiply).
    pub probability: f64,
    /// The server endpoint reached (address:port after DNAT), if the forward leg was delivered.
    pub endpoint: Option<String>,
    /// How it ended.
    pub disposition: Disposition,
    /// A short stable cause code when known (`forward-policy-drop`, `stale-vxlan-neighbor`...).
    pub cause: Option<String>,
    /// Why, in a sentence.
    pub reason: String,
    /// Which leg it ended on.
    pub ended_on: Leg,
    /// The kernel objects whose state decided how the branch ended: the DROP rule or policy,
    /// the failed route lookup, the stale neighbour/FDB entry, the sysctl, the link, the
    /// missing socket. Empty for a success.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub decided_by: Vec<crate::KernelObject>,
    /// What this branch assumes about constructs netray does not model (unknown matches,
    /// explored both ways); empty when the branch is certain.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub assumptions: Vec<String>,
    /// Set when this branch walked a full-size TCP data segment rather than the handshake
    /// (see [`Trace::tcp_data`]): the handshake of the same path succeeded and this segment
    /// did not.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub data_segment: Option<DataSegment>,
    /// Every hop.
    pub hops: Vec<Hop>,
}

/// A full-size TCP data segment walked after the handshake.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct DataSegment {
    /// `forward`: a request segment (client to server); `reply`: a response segment.
    pub direction: Leg,
    /// Its IP length in bytes (MSS + IP and TCP headers), DF set.
    pub len: u32,
}

/// How full-size TCP data segments were sized and how they fared, for one pair of MSS
/// values (the endpoints of a flow usually share one).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TcpDataCheck {
    /// MSS the client advertises: its output route's MTU (route `mtu`, else the device's)
    /// minus 40 (IPv4) or 60 (IPv6); for a client outside the snapshot, from the MTU of the
    /// interface it enters on.
    pub client_mss: u32,
    /// MSS the server advertises, from the route its replies take.
    pub server_mss: u32,
    /// IP length of a full-size segment: the smaller MSS plus the headers.
    pub segment_len: u32,
    /// Endpoints (`IP:PORT` after DNAT) whose handshake succeeded with these values.
    pub endpoints: Vec<String>,
    /// Whether a full-size request segment reaches the server on every such path.
    pub request_ok: bool,
    /// Whether a full-size response segment reaches the client on every such path.
    pub reply_ok: bool,
    /// PMTU discovery the walk applied: a router that could not forward a segment sent
    /// ICMP frag-needed back, and the sender's smaller segments were walked instead.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub pmtu: Vec<String>,
}

/// The flow that was traced, as resolved.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct FlowView {
    /// The packet as generated.
    pub packet: PacketView,
    /// Where it starts (`node/netns`, and the interface when it enters from outside).
    pub start: String,
}

/// [`Step::Conntrack`] state of a packet that follows an entry of the collected conntrack
/// table (original direction): a flow given with its real source port.
pub const CT_COLLECTED_ORIG: &str = "established (collected entry)";
/// Same, the packet matching the collected entry's reply tuple.
pub const CT_COLLECTED_REPLY: &str = "reply (collected entry)";

/// A full trace.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Trace {
    /// The flow.
    pub flow: FlowView,
    /// Every distinct branch.
    pub branches: Vec<Branch>,
    /// Probability mass per disposition.
    pub shares: BTreeMap<Disposition, f64>,
    /// True if every branch succeeded.
    pub reachable: bool,
    /// Branches cut because of the branch limit.
    pub truncated: bool,
    /// TCP without an explicit size: besides the handshake (the SYN, in `branches`), a
    /// full-size data segment was walked each way on the paths whose handshake succeeded. A
    /// path where the segment fails has its branch replaced by the data segment's (marked
    /// with [`Branch::data_segment`]): the connection is established, then stalls.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub tcp_data: Vec<TcpDataCheck>,
}
