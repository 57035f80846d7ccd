//! A dual-stack cluster lab (issue 11): nodes, pods and Services with an IPv4 and an IPv6
//! address each, kube-proxy's rules for both families (`iptables-restore` and
//! `ip6tables-restore`, NAT66 as kube-proxy writes it for IPv6 Services), torn down on drop.
//!
//! Members and their namespaces (`TAG` from [`lab_tag`]):
//! - `sw` (`nrl-TAG-sw`): the underlay switch, bridge `br0` (no addresses, no netfilter);
//! - `nodeI`: `eth0` 192.168.50.(10+I)/24 and fd00:50::(10+I)/64 on the switch, `cni0`
//!   10.244.I.1/24 and fd00:10:244:I::1/64; `net.ipv4.ip_forward=1`,
//!   `net.ipv6.conf.all.forwarding=1`, br_netfilter on for both families (kubeadm's
//!   requirement: a pod reaching a Service backed by a pod on its own bridge gets its reply
//!   de-NATed inside the bridge);
//! - each pod: `eth0` on its node's `cni0` with both addresses and both default routes; web
//!   pods run `nc -6 -lk` on [`DS_POD_PORT`] (a dual-stack socket: it answers IPv4 too).
//!
//! Pod networks between nodes: IPv4 by plain routes (`10.244.J.0/24 via NODEJ`, host-gw
//! style); IPv6 by plain routes as well, or — [`V6Overlay::Vxlan`] — as flannel's dual-stack
//! VXLAN backend wires it: `flannel-v6.1` (VNI 1, IPv6 underlay) with address
//! `fd00:10:244:I::/128`, `fd00:10:244:J::/64 via fd00:10:244:J:: dev flannel-v6.1 onlink`, a
//! permanent neighbour entry for that next hop (the peer's VTEP MAC) and an FDB entry sending
//! that MAC to the peer's IPv6 underlay address.
//!
//! Safety: every namespace is `nrl-`-prefixed with this lab's tag and deleted on drop (also on
//! panic); nothing is configured in the root namespace; probes are bounded in time.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::path::Path;
use std::process::{Child, Command, Stdio};

use serde_json::{Value, json};

use crate::kubeproxy::{MASQ_MARK, chain_name};
use crate::netns::{LabError, Netns, lab_tag, run, run_with_input};

/// The port every web pod listens on (TCP, both families).
pub const DS_POD_PORT: u16 = 8080;
/// The Services' port.
pub const DS_SERVICE_PORT: u16 = 80;
/// VXLAN UDP port of `flannel-v6.1`.
pub const DS_VXLAN_PORT: u16 = 8472;
/// IPv4 cluster (pod) CIDR.
pub const DS_CLUSTER_CIDR_V4: &str = "10.244.0.0/16";
/// IPv6 cluster (pod) CIDR.
pub const DS_CLUSTER_CIDR_V6: &str = "fd00:10:244::/56";

/// An address family of the lab.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum DsFamily {
    /// IPv4.
    V4,
    /// IPv6.
    V6,
}

impl DsFamily {
    /// The cluster CIDR of the family.
    pub fn cluster_cidr(self) -> &'static str {
        match self {
            DsFamily::V4 => DS_CLUSTER_CIDR_V4,
            DsFamily::V6 => DS_CLUSTER_CIDR_V6,
        }
    }
    fn host_len(self) -> u8 {
        match self {
            DsFamily::V4 => 32,
            DsFamily::V6 => 128,
        }
    }
    /// `iptables` / `ip6tables`.
    pub fn iptables(self) -> &'static str {
        match self {
            DsFamily::V4 => "iptables",
            DsFamily::V6 => "ip6tables",
        }
    }
}

/// Node `i`'s underlay IPv4 address.
pub fn ds_node_v4(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 50, 10 + i as u8)
}
/// Node `i`'s underlay IPv6 address.
pub fn ds_node_v6(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x50, 0, 0, 0, 0, 0, 0x10 + i as u16)
}
/// Node `i`'s IPv4 pod CIDR.
pub fn ds_pod_cidr_v4(i: usize) -> String {
    format!("10.244.{i}.0/24")
}
/// Node `i`'s IPv6 pod CIDR.
pub fn ds_pod_cidr_v6(i: usize) -> String {
    format!("{}/64", ds_v6_net(i))
}
fn ds_v6_net(i: usize) -> Ipv6Addr {
    Ipv6Addr::new(0xfd00, 0x10, 0x244, i as u16, 0, 0, 0, 0)
}
/// Node `i`'s `cni0` addresses (the pods' gateways).
pub fn ds_cni_gateways(i: usize) -> (Ipv4Addr, Ipv6Addr) {
    (
        Ipv4Addr::new(10, 244, i as u8, 1),
        Ipv6Addr::new(0xfd00, 0x10, 0x244, i as u16, 0, 0, 0, 1),
    )
}
/// Node `i`'s `flannel-v6.1` MAC in generation `generation` (a VTEP MAC change bumps it).
pub fn ds_vtep6_mac(i: usize, generation: u8) -> String {
    format!("0e:6e:76:{generation:02x}:00:{i:02x}")
}

/// How IPv6 pod networks reach each other between nodes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum V6Overlay {
    /// Plain routes over the underlay (`fd00:10:244:J::/64 via fd00:50::(10+J)`).
    Routes,
    /// flannel's IPv6 VXLAN device `flannel-v6.1`.
    Vxlan,
}

/// A pod of the dual-stack lab.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsPod {
    /// Name (also the lab member name).
    pub name: String,
    /// Index of its node.
    pub node: usize,
    /// IPv4 address.
    pub v4: Ipv4Addr,
    /// IPv6 address.
    pub v6: Ipv6Addr,
    /// `app` label; Services select on it. Web pods (`app` other than `client`) serve.
    pub app: String,
}

impl DsPod {
    /// The pod's address of `family`.
    pub fn ip(&self, family: DsFamily) -> IpAddr {
        match family {
            DsFamily::V4 => IpAddr::V4(self.v4),
            DsFamily::V6 => IpAddr::V6(self.v6),
        }
    }
}

/// A dual-stack ClusterIP Service (`ipFamilies: [IPv4, IPv6]`, `RequireDualStack`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DsService {
    /// Name (namespace `default`).
    pub name: String,
    /// IPv4 ClusterIP.
    pub v4: Ipv4Addr,
    /// IPv6 ClusterIP.
    pub v6: Ipv6Addr,
    /// Pods with this `app` label are its endpoints.
    pub app: String,
}

impl DsService {
    /// The ClusterIP of `family`.
    pub fn ip(&self, family: DsFamily) -> IpAddr {
        match family {
            DsFamily::V4 => IpAddr::V4(self.v4),
            DsFamily::V6 => IpAddr::V6(self.v6),
        }
    }
}

/// What to build.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DualStackSpec {
    /// Number of nodes (`node0`, `node1`, …).
    pub nodes: usize,
    /// Pods.
    pub pods: Vec<DsPod>,
    /// Services.
    pub services: Vec<DsService>,
    /// How the IPv6 pod networks are joined.
    pub v6_overlay: V6Overlay,
}

impl DualStackSpec {
    /// Two nodes; `client-0` and `web-0` on node0, `web-1` on node1; Services `web-local`
    /// (endpoint web-0, on the client's node) and `web-remote` (endpoint web-1).
    pub fn standard(v6_overlay: V6Overlay) -> DualStackSpec {
        let pod = |name: &str, node: usize, k: u8, app: &str| DsPod {
            name: name.into(),
            node,
            v4: Ipv4Addr::new(10, 244, node as u8, 10 + k),
            v6: Ipv6Addr::new(
                0xfd00,
                0x10,
                0x244,
                node as u16,
                0,
                0,
                0,
                0x10 + u16::from(k),
            ),
            app: app.into(),
        };
        DualStackSpec {
            nodes: 2,
            pods: vec![
                pod("client-0", 0, 0, "client"),
                pod("web-0", 0, 1, "web-0"),
                pod("web-1", 1, 0, "web-1"),
            ],
            services: vec![
                DsService {
                    name: "web-local".into(),
                    v4: Ipv4Addr::new(10, 96, 0, 10),
                    v6: Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x10),
                    app: "web-0".into(),
                },
                DsService {
                    name: "web-remote".into(),
                    v4: Ipv4Addr::new(10, 96, 0, 11),
                    v6: Ipv6Addr::new(0xfd00, 0x96, 0, 0, 0, 0, 0, 0x11),
                    app: "web-1".into(),
                },
            ],
            v6_overlay,
        }
    }

    /// Node `i`'s name.
    pub fn node_name(i: usize) -> String {
        format!("node{i}")
    }

    /// The index of node `name` (`nodeI`).
    pub fn node_index(name: &str) -> Option<usize> {
        name.strip_prefix("node")?.parse().ok()
    }

    /// The pod named `name`.
    pub fn pod(&self, name: &str) -> Option<&DsPod> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// The Service named `name`.
    pub fn service(&self, name: &str) -> Option<&DsService> {
        self.services.iter().find(|s| s.name == name)
    }

    /// A Service's endpoints (pods with its `app`).
    pub fn endpoints(&self, svc: &DsService) -> Vec<&DsPod> {
        self.pods.iter().filter(|p| p.app == svc.app).collect()
    }
}

fn bracket(ip: IpAddr, port: u16) -> String {
    std::net::SocketAddr::new(ip, port).to_string()
}

/// kube-proxy's (iptables mode) and flannel's rules of one family for node `node`, as
/// `iptables-restore` / `ip6tables-restore` input for a fresh namespace. The IPv6 rules are the
/// IPv4 ones with IPv6 addresses, `/128` host prefixes and `DNAT --to-destination [ADDR]:PORT`,
/// as kube-proxy's IPv6 proxier writes them into the ip6tables tables.
pub fn ds_rules(spec: &DualStackSpec, node: usize, family: DsFamily) -> String {
    let cidr = family.cluster_cidr();
    let host = family.host_len();
    let subnet = match family {
        DsFamily::V4 => ds_pod_cidr_v4(node),
        DsFamily::V6 => ds_pod_cidr_v6(node),
    };
    let mut nat_chains = vec![
        "KUBE-SERVICES".to_string(),
        "KUBE-NODEPORTS".into(),
        "KUBE-POSTROUTING".into(),
        "KUBE-MARK-MASQ".into(),
        "FLANNEL-POSTRTG".into(),
    ];
    let mut nat = vec![
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".to_string(),
        "-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES".into(),
        "-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING".into(),
        "-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG".into(),
        "-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000".into(),
        format!("-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK} -j RETURN"),
        "-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0".into(),
        "-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully".into(),
        format!("-A FLANNEL-POSTRTG -m mark --mark {MASQ_MARK} -m comment --comment \"flanneld masq\" -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s {subnet} -d {cidr} -m comment --comment \"flanneld masq\" -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s {cidr} -d {subnet} -m comment --comment \"flanneld masq\" -j RETURN"),
        format!("-A FLANNEL-POSTRTG ! -s {cidr} -d {subnet} -m comment --comment \"flanneld masq\" -j RETURN"),
        format!("-A FLANNEL-POSTRTG -s {cidr} ! -d {} -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully",
            match family { DsFamily::V4 => "224.0.0.0/4", DsFamily::V6 => "ff00::/8" }),
        format!("-A FLANNEL-POSTRTG ! -s {cidr} -d {cidr} -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully"),
    ];
    for svc in &spec.services {
        let name = format!("default/{}:http", svc.name);
        let cip = svc.ip(family);
        let eps = spec.endpoints(svc);
        if eps.is_empty() {
            continue;
        }
        let svc_c = chain_name("KUBE-SVC", &format!("{name}tcp"));
        nat_chains.push(svc_c.clone());
        nat.push(format!("-A KUBE-SERVICES -d {cip}/{host} -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport {DS_SERVICE_PORT} -j {svc_c}"));
        nat.push(format!("-A {svc_c} ! -s {cidr} -d {cip}/{host} -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport {DS_SERVICE_PORT} -j KUBE-MARK-MASQ"));
        let n = eps.len();
        for (i, ep) in eps.iter().enumerate() {
            let dest = bracket(ep.ip(family), DS_POD_PORT);
            let sep = chain_name("KUBE-SEP", &format!("{name}tcp{dest}"));
            let stat = if i + 1 < n {
                format!(
                    " -m statistic --mode random --probability {:.10}",
                    1.0 / (n - i) as f64
                )
            } else {
                String::new()
            };
            nat.push(format!(
                "-A {svc_c} -m comment --comment \"{name} -> {dest}\"{stat} -j {sep}"
            ));
            nat_chains.push(sep.clone());
            nat.push(format!(
                "-A {sep} -s {}/{host} -m comment --comment \"{name}\" -j KUBE-MARK-MASQ",
                ep.ip(family)
            ));
            nat.push(format!("-A {sep} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT --to-destination {dest}"));
        }
    }
    nat.push("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS".into());

    let mut out = String::new();
    let _ = writeln!(
        out,
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         :KUBE-SERVICES - [0:0]\n:KUBE-FORWARD - [0:0]\n:FLANNEL-FWD - [0:0]\n\
         -A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
         -A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n\
         -A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
         -A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK} -j ACCEPT\n\
         -A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
         -A FLANNEL-FWD -s {cidr} -m comment --comment \"flanneld forward\" -j ACCEPT\n\
         -A FLANNEL-FWD -d {cidr} -m comment --comment \"flanneld forward\" -j ACCEPT\nCOMMIT"
    );
    let _ = writeln!(
        out,
        "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]"
    );
    for c in &nat_chains {
        let _ = writeln!(out, ":{c} - [0:0]");
    }
    for r in &nat {
        let _ = writeln!(out, "{r}");
    }
    out.push_str("COMMIT\n");
    out
}

/// A fault of the dual-stack lab; each can be undone with [`DualStackLab::undo`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum DsFault {
    /// `net.ipv6.conf.all.forwarding=0` on a node (IPv4 forwarding untouched).
    V6ForwardingOff {
        /// Node index.
        node: usize,
    },
    /// `ip6tables -P FORWARD DROP` on a node, and flannel's IPv6 accept rules gone
    /// (the `FLANNEL-FWD` jump deleted): nothing accepts new pod traffic.
    Ip6ForwardDrop {
        /// Node index.
        node: usize,
    },
    /// The route to a peer's IPv6 pod CIDR deleted on a node.
    MissingV6Route {
        /// Node whose route goes.
        node: usize,
        /// Peer whose pod CIDR is no longer routed.
        peer: usize,
    },
    /// `net.bridge.bridge-nf-call-ip6tables=0` on a node (IPv4's switch untouched): bridged
    /// IPv6 skips ip6tables and conntrack.
    BridgeNfV6Off {
        /// Node index.
        node: usize,
    },
    /// `net.ipv6.conf.eth0.accept_ra=2` on a node (router advertisements accepted while
    /// forwarding). No flow changes: nothing on the lab's links sends RAs.
    AcceptRa2 {
        /// Node index.
        node: usize,
    },
    /// Node `node`'s underlay `eth0` (and its switch port) at MTU 1400 while its overlay
    /// devices keep theirs: full-size encapsulated packets no longer fit.
    UnderlayMtu {
        /// Node index.
        node: usize,
    },
    /// Node `node`'s `flannel-v6.1` MAC changes (a rebuilt device) and `stale_on` keeps the
    /// old MAC in its neighbour and FDB entries ([`V6Overlay::Vxlan`] only). Not undoable.
    StaleV6Vtep {
        /// The node whose VTEP MAC changes.
        node: usize,
        /// The peer that keeps the stale entries.
        stale_on: usize,
    },
}

/// A running dual-stack lab; dropping it kills the servers and deletes every namespace.
pub struct DualStackLab {
    tag: String,
    spec: DualStackSpec,
    members: BTreeMap<String, Netns>,
    servers: Vec<Child>,
    vtep_gen: Vec<u8>,
    counting: Vec<(String, String)>,
}

impl std::fmt::Debug for DualStackLab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("DualStackLab")
            .field("tag", &self.tag)
            .field("members", &self.members.keys().collect::<Vec<_>>())
            .finish()
    }
}

fn mac(kind: u8, a: usize, b: usize) -> String {
    format!("0e:6e:76:{kind:02x}:{a:02x}:{b:02x}")
}

/// Host-side veth name of a pod.
fn host_veth(pod: &str) -> String {
    let h = pod.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("veth{h:08x}")
}

impl DualStackLab {
    /// Build the lab; on error everything built so far is torn down.
    pub fn up(spec: &DualStackSpec) -> Result<DualStackLab, LabError> {
        let mut lab = DualStackLab {
            tag: lab_tag(),
            spec: spec.clone(),
            members: BTreeMap::new(),
            servers: Vec::new(),
            vtep_gen: vec![0; spec.nodes],
            counting: Vec::new(),
        };
        lab.build()?;
        Ok(lab)
    }

    /// The spec the lab was built from.
    pub fn spec(&self) -> &DualStackSpec {
        &self.spec
    }

    /// The namespace of member `member` (`sw`, `nodeI`, a pod name).
    pub fn ns(&self, member: &str) -> Result<&Netns, LabError> {
        self.members.get(member).ok_or_else(|| LabError::Command {
            cmd: format!("lab member {member}"),
            status: "unknown".into(),
            stderr: format!(
                "no such lab member; members: {}",
                self.members.keys().cloned().collect::<Vec<_>>().join(", ")
            ),
        })
    }

    fn add_member(&mut self, member: &str) -> Result<&Netns, LabError> {
        let ns = Netns::create(&format!("{}-{member}", self.tag))?;
        // No duplicate address detection: addresses (link-local ones too) are usable at once.
        ns.sysctl("net.ipv6.conf.all.accept_dad", "0")?;
        ns.sysctl("net.ipv6.conf.default.accept_dad", "0")?;
        self.members.insert(member.to_string(), ns);
        Ok(&self.members[member])
    }

    /// The pods' MTU: flannel's, the overlay device's (1500 − 70 for VXLAN over IPv6), or
    /// the underlay's with plain routes.
    pub fn pod_mtu(&self) -> u32 {
        match self.spec.v6_overlay {
            V6Overlay::Routes => 1500,
            V6Overlay::Vxlan => 1430,
        }
    }

    fn build(&mut self) -> Result<(), LabError> {
        let sw = self.add_member("sw")?;
        sw.ip_batch(&["link add br0 type bridge".into(), "link set br0 up".into()])?;
        sw.sysctl("net.bridge.bridge-nf-call-iptables", "0")?;
        sw.sysctl("net.bridge.bridge-nf-call-ip6tables", "0")?;
        for i in 0..self.spec.nodes {
            self.build_node(i)?;
        }
        for i in 0..self.spec.nodes {
            self.node_routes(i)?;
        }
        for p in self.spec.pods.clone() {
            self.build_pod(&p)?;
        }
        for i in 0..self.spec.nodes {
            let node = self.ns(&DualStackSpec::node_name(i))?;
            for fam in [DsFamily::V4, DsFamily::V6] {
                let mut cmd = node.command(&format!("{}-restore", fam.iptables()));
                cmd.arg("-w");
                run_with_input(&mut cmd, &ds_rules(&self.spec, i, fam), None)?;
            }
        }
        for p in self.spec.pods.clone() {
            if p.app != "client" {
                self.start_server(&p.name)?;
            }
        }
        Ok(())
    }

    fn build_node(&mut self, i: usize) -> Result<(), LabError> {
        let name = DualStackSpec::node_name(i);
        self.add_member(&name)?;
        let sw = self.ns("sw")?;
        let node = self.ns(&name)?;
        let port = format!("p-{name}");
        sw.veth(&port, node, "eth0")?;
        sw.ip_batch(&[
            format!("link set {port} master br0"),
            format!("link set {port} up"),
        ])?;
        let (g4, g6) = ds_cni_gateways(i);
        let mtu = self.pod_mtu();
        let mut lines = vec![
            format!("link set eth0 address {}", mac(0x50, 1, i)),
            format!("addr add {}/24 dev eth0", ds_node_v4(i)),
            format!("addr add {}/64 dev eth0 nodad", ds_node_v6(i)),
            "link set eth0 up".into(),
            "link add cni0 type bridge".into(),
            format!("link set cni0 address {} mtu {mtu}", mac(0xc0, 0, i)),
            format!("addr add {g4}/24 dev cni0"),
            format!("addr add {g6}/64 dev cni0 nodad"),
            "link set cni0 up".into(),
        ];
        if self.spec.v6_overlay == V6Overlay::Vxlan {
            lines.extend([
                format!(
                    "link add flannel-v6.1 address {} type vxlan id 1 local {} dev eth0 dstport {DS_VXLAN_PORT} nolearning",
                    ds_vtep6_mac(i, 0),
                    ds_node_v6(i)
                ),
                format!("addr add {}/128 dev flannel-v6.1 nodad", ds_v6_net(i)),
                "link set flannel-v6.1 up".into(),
            ]);
        }
        node.ip_batch(&lines)?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        node.sysctl("net.ipv6.conf.all.forwarding", "1")?;
        node.sysctl("net.bridge.bridge-nf-call-iptables", "1")?;
        node.sysctl("net.bridge.bridge-nf-call-ip6tables", "1")?;
        Ok(())
    }

    fn node_routes(&mut self, i: usize) -> Result<(), LabError> {
        let node = self.ns(&DualStackSpec::node_name(i))?;
        let mut lines = Vec::new();
        let mut fdb = Vec::new();
        for m in (0..self.spec.nodes).filter(|&m| m != i) {
            lines.push(format!(
                "route add {} via {}",
                ds_pod_cidr_v4(m),
                ds_node_v4(m)
            ));
            match self.spec.v6_overlay {
                V6Overlay::Routes => lines.push(format!(
                    "route add {} via {}",
                    ds_pod_cidr_v6(m),
                    ds_node_v6(m)
                )),
                V6Overlay::Vxlan => {
                    lines.push(format!(
                        "route add {} via {} dev flannel-v6.1 onlink",
                        ds_pod_cidr_v6(m),
                        ds_v6_net(m)
                    ));
                    lines.push(format!(
                        "neigh add {} lladdr {} dev flannel-v6.1 nud permanent",
                        ds_v6_net(m),
                        ds_vtep6_mac(m, 0)
                    ));
                    fdb.push(format!(
                        "fdb append {} dev flannel-v6.1 dst {}",
                        ds_vtep6_mac(m, 0),
                        ds_node_v6(m)
                    ));
                }
            }
        }
        node.ip_batch(&lines)?;
        node.bridge_batch(&fdb)
    }

    fn build_pod(&mut self, p: &DsPod) -> Result<(), LabError> {
        self.add_member(&p.name)?;
        let idx = self
            .spec
            .pods
            .iter()
            .position(|q| q.name == p.name)
            .unwrap_or(0);
        let node = self.ns(&DualStackSpec::node_name(p.node))?;
        let pod = self.ns(&p.name)?;
        let hv = host_veth(&p.name);
        node.veth(&hv, pod, "eth0")?;
        let mtu = self.pod_mtu();
        node.ip_batch(&[
            format!("link set {hv} mtu {mtu} master cni0"),
            format!("link set {hv} type bridge_slave hairpin on"),
            format!("link set {hv} up"),
        ])?;
        let (g4, g6) = ds_cni_gateways(p.node);
        pod.ip_batch(&[
            format!("link set eth0 address {} mtu {mtu}", mac(0xa0, 0, idx)),
            format!("addr add {}/24 dev eth0", p.v4),
            format!("addr add {}/64 dev eth0 nodad", p.v6),
            "link set eth0 up".into(),
            format!("route add default via {g4}"),
            format!("route add ::/0 via {g6}"),
        ])
    }

    /// `nc -6 -lk PORT` in a pod (a dual-stack socket), killed on drop.
    fn start_server(&mut self, member: &str) -> Result<(), LabError> {
        let ns = self.ns(member)?;
        let mut cmd = ns.command("nc");
        cmd.args(["-6", "-lk", &DS_POD_PORT.to_string()]);
        let shown = format!("{cmd:?}").replace('"', "");
        let child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| LabError::Spawn { cmd: shown, source })?;
        self.servers.push(child);
        let ns = self.ns(member)?;
        // Wait (bounded) until the socket listens.
        for _ in 0..50 {
            let out = ns.exec("ss", &["-Hltn", &format!("sport = :{DS_POD_PORT}")])?;
            if !out.stdout.is_empty() {
                return Ok(());
            }
            std::thread::sleep(std::time::Duration::from_millis(50));
        }
        Err(LabError::Command {
            cmd: format!("nc -6 -lk {DS_POD_PORT} in {member}"),
            status: "server did not start".into(),
            stderr: String::new(),
        })
    }

    fn underlay_mtu(&self, node: usize, mtu: u32) -> Result<(), LabError> {
        let name = DualStackSpec::node_name(node);
        let m = mtu.to_string();
        self.ns(&name)?.ip(&["link", "set", "eth0", "mtu", &m])?;
        self.ns("sw")?
            .ip(&["link", "set", &format!("p-{name}"), "mtu", &m])
            .map(|_| ())
    }

    /// Apply a fault.
    pub fn apply(&mut self, fault: &DsFault) -> Result<(), LabError> {
        match *fault {
            DsFault::V6ForwardingOff { node } => self
                .ns(&DualStackSpec::node_name(node))?
                .sysctl("net.ipv6.conf.all.forwarding", "0"),
            DsFault::Ip6ForwardDrop { node } => {
                let ns = self.ns(&DualStackSpec::node_name(node))?;
                ns.exec("ip6tables", &["-w", "-P", "FORWARD", "DROP"])?;
                ns.exec("ip6tables", &flannel_jump("-D")).map(|_| ())
            }
            DsFault::MissingV6Route { node, peer } => self
                .ns(&DualStackSpec::node_name(node))?
                .ip(&["-6", "route", "del", &ds_pod_cidr_v6(peer)])
                .map(|_| ()),
            DsFault::BridgeNfV6Off { node } => self
                .ns(&DualStackSpec::node_name(node))?
                .sysctl("net.bridge.bridge-nf-call-ip6tables", "0"),
            DsFault::AcceptRa2 { node } => self
                .ns(&DualStackSpec::node_name(node))?
                .sysctl("net.ipv6.conf.eth0.accept_ra", "2"),
            DsFault::UnderlayMtu { node } => self.underlay_mtu(node, 1400),
            DsFault::StaleV6Vtep { node, stale_on } => {
                if self.spec.v6_overlay != V6Overlay::Vxlan || node == stale_on {
                    return Err(LabError::Command {
                        cmd: format!("{fault:?}"),
                        status: "refused".into(),
                        stderr: "needs the VXLAN overlay and two different nodes".into(),
                    });
                }
                let old = ds_vtep6_mac(node, self.vtep_gen[node]);
                self.vtep_gen[node] = self.vtep_gen[node].wrapping_add(1);
                let new = ds_vtep6_mac(node, self.vtep_gen[node]);
                let ns = self.ns(&DualStackSpec::node_name(node))?;
                ns.ip(&["link", "set", "flannel-v6.1", "address", &new])?;
                // A MAC change flushes the device's neighbours; flanneld writes its own again.
                let lines: Vec<String> = (0..self.spec.nodes)
                    .filter(|&m| m != node)
                    .map(|m| {
                        format!(
                            "neigh replace {} lladdr {} dev flannel-v6.1 nud permanent",
                            ds_v6_net(m),
                            ds_vtep6_mac(m, self.vtep_gen[m])
                        )
                    })
                    .collect();
                ns.ip_batch(&lines)?;
                for m in (0..self.spec.nodes).filter(|&m| m != node && m != stale_on) {
                    let peer = self.ns(&DualStackSpec::node_name(m))?;
                    peer.ip(&[
                        "-6",
                        "neigh",
                        "replace",
                        &ds_v6_net(node).to_string(),
                        "lladdr",
                        &new,
                        "dev",
                        "flannel-v6.1",
                        "nud",
                        "permanent",
                    ])?;
                    peer.bridge_batch(&[
                        format!("fdb del {old} dev flannel-v6.1 dst {}", ds_node_v6(node)),
                        format!("fdb append {new} dev flannel-v6.1 dst {}", ds_node_v6(node)),
                    ])?;
                }
                Ok(())
            }
        }
    }

    /// Undo a fault applied with [`DualStackLab::apply`] (a VTEP MAC change cannot be undone).
    pub fn undo(&mut self, fault: &DsFault) -> Result<(), LabError> {
        match *fault {
            DsFault::V6ForwardingOff { node } => self
                .ns(&DualStackSpec::node_name(node))?
                .sysctl("net.ipv6.conf.all.forwarding", "1"),
            DsFault::Ip6ForwardDrop { node } => {
                let ns = self.ns(&DualStackSpec::node_name(node))?;
                ns.exec("ip6tables", &["-w", "-P", "FORWARD", "ACCEPT"])?;
                ns.exec("ip6tables", &flannel_jump("-A")).map(|_| ())
            }
            DsFault::MissingV6Route { node, peer } => {
                let ns = self.ns(&DualStackSpec::node_name(node))?;
                match self.spec.v6_overlay {
                    V6Overlay::Routes => ns.ip(&[
                        "-6",
                        "route",
                        "replace",
                        &ds_pod_cidr_v6(peer),
                        "via",
                        &ds_node_v6(peer).to_string(),
                    ]),
                    V6Overlay::Vxlan => ns.ip(&[
                        "-6",
                        "route",
                        "replace",
                        &ds_pod_cidr_v6(peer),
                        "via",
                        &ds_v6_net(peer).to_string(),
                        "dev",
                        "flannel-v6.1",
                        "onlink",
                    ]),
                }
                .map(|_| ())
            }
            DsFault::BridgeNfV6Off { node } => self
                .ns(&DualStackSpec::node_name(node))?
                .sysctl("net.bridge.bridge-nf-call-ip6tables", "1"),
            DsFault::AcceptRa2 { node } => self
                .ns(&DualStackSpec::node_name(node))?
                .sysctl("net.ipv6.conf.eth0.accept_ra", "1"),
            DsFault::UnderlayMtu { node } => self.underlay_mtu(node, 1500),
            DsFault::StaleV6Vtep { .. } => Err(LabError::Command {
                cmd: format!("undo {fault:?}"),
                status: "refused".into(),
                stderr: "a VTEP MAC change cannot be undone; build a new lab".into(),
            }),
        }
    }

    /// `nc -z -w 2` (with `-4`/`-6`) from `from` to `dst:port`: did the handshake complete?
    pub fn tcp(&self, from: &str, dst: IpAddr, port: u16) -> bool {
        let Ok(ns) = self.ns(from) else { return false };
        let fam = if dst.is_ipv4() { "-4" } else { "-6" };
        ns.command("timeout")
            .args([
                "5",
                "nc",
                fam,
                "-z",
                "-w",
                "2",
                &dst.to_string(),
                &port.to_string(),
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// `ping [-6] -c1 -W1` from `from` to `dst`: did the echo reply come back?
    pub fn ping(&self, from: &str, dst: IpAddr) -> bool {
        let Ok(ns) = self.ns(from) else { return false };
        let fam = if dst.is_ipv4() { "-4" } else { "-6" };
        ns.command("timeout")
            .args(["5", "ping", fam, "-n", "-q", "-c1", "-W1", &dst.to_string()])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// `ping [-6] -c1 -W1 -M do -s PAYLOAD` from `from` to `dst`: did a packet of that payload
    /// (not fragmented by the sender) get its echo reply?
    pub fn ping_size(&self, from: &str, dst: IpAddr, payload: u32) -> bool {
        let Ok(ns) = self.ns(from) else { return false };
        let fam = if dst.is_ipv4() { "-4" } else { "-6" };
        let size = payload.to_string();
        ns.command("timeout")
            .args([
                "5",
                "ping",
                fam,
                "-n",
                "-q",
                "-c1",
                "-W1",
                "-M",
                "do",
                "-s",
                &size,
                &dst.to_string(),
            ])
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    }

    /// The kernel's counters of a member: `/proc/net/snmp6` (`Ip6…`, `Icmp6…`) and
    /// `/proc/net/snmp` (`Ip…`, `Icmp…`, `Tcp…`, keyed `SectionField`).
    pub fn counters(&self, member: &str) -> Result<BTreeMap<String, i64>, LabError> {
        let out = self
            .ns(member)?
            .exec("cat", &["/proc/net/snmp6", "/proc/net/snmp"])?;
        let text = String::from_utf8_lossy(&out.stdout).into_owned();
        let mut m: BTreeMap<String, i64> = BTreeMap::new();
        let mut header: Option<Vec<&str>> = None;
        for l in text.lines() {
            let w: Vec<&str> = l.split_whitespace().collect();
            match w.as_slice() {
                [k, v] if !k.ends_with(':') => {
                    if let Ok(v) = v.parse() {
                        m.insert((*k).to_string(), v);
                    }
                }
                [sec, ..] if sec.ends_with(':') => {
                    if let Some(h) = header.take().filter(|h| h[0] == *sec) {
                        for (k, v) in h.iter().zip(&w).skip(1) {
                            if let Ok(v) = v.parse() {
                                m.insert(format!("{}{k}", sec.trim_end_matches(':')), v);
                            }
                        }
                    } else {
                        header = Some(w.clone());
                    }
                }
                _ => {}
            }
        }
        Ok(m)
    }

    /// Packets to `dst` that left node member `node` (counted by a target-less rule in the
    /// mangle table's POSTROUTING chain, which a forwarded packet reaches only after the
    /// FORWARD hook accepted it and a route and neighbour were found). The kernel's
    /// `Ip6OutForwDatagrams` cannot serve: `ip6_forward` counts it before the FORWARD hook, so
    /// ip6tables' drops count as forwarded.
    pub fn sent_to(&mut self, node: &str, dst: IpAddr) -> Result<u64, LabError> {
        self.count(
            node,
            dst.is_ipv4(),
            "POSTROUTING",
            &["-d", &dst.to_string()],
        )
    }

    /// Packets that arrived at node member `node` for `dst` (mangle PREROUTING), or — with
    /// `vxlan_from` — encapsulated packets from that underlay address to the VXLAN port
    /// (frames the overlay device may still drop after decapsulation).
    pub fn arrived(
        &mut self,
        node: &str,
        dst: IpAddr,
        vxlan_from: Option<IpAddr>,
    ) -> Result<u64, LabError> {
        let inner = self.count(node, dst.is_ipv4(), "PREROUTING", &["-d", &dst.to_string()])?;
        let outer = match vxlan_from {
            Some(src) => self.count(
                node,
                src.is_ipv4(),
                "PREROUTING",
                &[
                    "-s",
                    &src.to_string(),
                    "-p",
                    "udp",
                    "--dport",
                    &DS_VXLAN_PORT.to_string(),
                ],
            )?,
            None => 0,
        };
        Ok(inner + outer)
    }

    /// A counting rule (no target) `spec` in the mangle table's `chain` of `node`, installed on
    /// first use and named by a comment; its packet count.
    /// [`DualStackLab::clear_counting`] removes every such rule.
    fn count(&mut self, node: &str, v4: bool, chain: &str, spec: &[&str]) -> Result<u64, LabError> {
        let tool = if v4 { "iptables" } else { "ip6tables" };
        let key = format!("{tool} {chain} {}", spec.join(" "));
        let i = match self
            .counting
            .iter()
            .position(|(n, k)| n == node && *k == key)
        {
            Some(i) => i,
            None => {
                let comment = format!("nrl-count-{}", self.counting.len());
                let mut args = vec!["-w", "-t", "mangle", "-I", chain];
                args.extend_from_slice(spec);
                args.extend(["-m", "comment", "--comment", &comment]);
                self.ns(node)?.exec(tool, &args)?;
                self.counting.push((node.to_string(), key));
                self.counting.len() - 1
            }
        };
        let out = self
            .ns(node)?
            .exec(tool, &["-w", "-t", "mangle", "-L", chain, "-nvx"])?;
        let tag = format!("/* nrl-count-{i} */");
        Ok(String::from_utf8_lossy(&out.stdout)
            .lines()
            .filter(|l| l.contains(&tag))
            .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
            .sum())
    }

    /// Remove the counting rules [`DualStackLab::sent_to`] and [`DualStackLab::arrived`]
    /// installed.
    pub fn clear_counting(&mut self) -> Result<(), LabError> {
        for (i, (node, key)) in std::mem::take(&mut self.counting).into_iter().enumerate() {
            let mut w = key.split(' ');
            let (Some(tool), Some(chain)) = (w.next(), w.next()) else {
                continue;
            };
            let comment = format!("nrl-count-{i}");
            let mut args = vec!["-w", "-t", "mangle", "-D", chain];
            args.extend(w);
            args.extend(["-m", "comment", "--comment", &comment]);
            self.ns(&node)?.exec(tool, &args)?;
        }
        Ok(())
    }

    /// The cluster as `kubectl get nodes,pods,services,endpointslices,configmaps -A -o json`
    /// prints it: dual-stack nodes (two InternalIPs, two podCIDRs), pods with two podIPs,
    /// Services with `ipFamilies: [IPv4, IPv6]` and one EndpointSlice per family.
    pub fn cluster_json(&self) -> Value {
        let mut items = Vec::new();
        for i in 0..self.spec.nodes {
            let name = DualStackSpec::node_name(i);
            let mut ann = serde_json::Map::new();
            if self.spec.v6_overlay == V6Overlay::Vxlan {
                ann.insert(
                    "flannel.alpha.coreos.com/backend-v6-data".into(),
                    json!({"VNI": 1, "VtepMAC": ds_vtep6_mac(i, self.vtep_gen[i])})
                        .to_string()
                        .into(),
                );
                ann.insert(
                    "flannel.alpha.coreos.com/public-ipv6".into(),
                    ds_node_v6(i).to_string().into(),
                );
            }
            items.push(json!({
                "apiVersion": "v1", "kind": "Node",
                "metadata": {"name": name, "annotations": ann},
                "spec": {"podCIDR": ds_pod_cidr_v4(i), "podCIDRs": [ds_pod_cidr_v4(i), ds_pod_cidr_v6(i)]},
                "status": {"addresses": [
                    {"type": "InternalIP", "address": ds_node_v4(i).to_string()},
                    {"type": "InternalIP", "address": ds_node_v6(i).to_string()},
                    {"type": "Hostname", "address": name},
                ]},
            }));
        }
        for p in &self.spec.pods {
            items.push(json!({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": p.name, "namespace": "default", "labels": {"app": p.app}},
                "spec": {"nodeName": DualStackSpec::node_name(p.node)},
                "status": {
                    "phase": "Running",
                    "hostIP": ds_node_v4(p.node).to_string(),
                    "podIP": p.v4.to_string(),
                    "podIPs": [{"ip": p.v4.to_string()}, {"ip": p.v6.to_string()}],
                },
            }));
        }
        for s in &self.spec.services {
            items.push(json!({
                "apiVersion": "v1", "kind": "Service",
                "metadata": {"name": s.name, "namespace": "default"},
                "spec": {
                    "type": "ClusterIP",
                    "clusterIP": s.v4.to_string(),
                    "clusterIPs": [s.v4.to_string(), s.v6.to_string()],
                    "ipFamilies": ["IPv4", "IPv6"],
                    "ipFamilyPolicy": "RequireDualStack",
                    "selector": {"app": s.app},
                    "ports": [{"name": "http", "port": DS_SERVICE_PORT, "targetPort": DS_POD_PORT, "protocol": "TCP"}],
                },
            }));
            for fam in [DsFamily::V4, DsFamily::V6] {
                let (suffix, at) = match fam {
                    DsFamily::V4 => ("v4", "IPv4"),
                    DsFamily::V6 => ("v6", "IPv6"),
                };
                let eps: Vec<Value> = self
                    .spec
                    .endpoints(s)
                    .iter()
                    .map(|p| {
                        json!({
                            "addresses": [p.ip(fam).to_string()],
                            "conditions": {"ready": true, "serving": true, "terminating": false},
                            "nodeName": DualStackSpec::node_name(p.node),
                            "targetRef": {"kind": "Pod", "namespace": "default", "name": p.name},
                        })
                    })
                    .collect();
                items.push(json!({
                    "apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
                    "metadata": {"name": format!("{}-{suffix}", s.name), "namespace": "default",
                                 "labels": {"kubernetes.io/service-name": s.name}},
                    "addressType": at,
                    "ports": [{"name": "http", "port": DS_POD_PORT, "protocol": "TCP"}],
                    "endpoints": eps,
                }));
            }
        }
        items.push(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kube-proxy", "namespace": "kube-system"},
            "data": {"config.conf": format!("mode: iptables\nclusterCIDR: {DS_CLUSTER_CIDR_V4},{DS_CLUSTER_CIDR_V6}\n")},
        }));
        items.push(json!({
            "apiVersion": "v1", "kind": "ConfigMap",
            "metadata": {"name": "kube-flannel-cfg", "namespace": "kube-flannel"},
            "data": {"net-conf.json": json!({
                "Network": DS_CLUSTER_CIDR_V4, "EnableIPv6": true, "IPv6Network": DS_CLUSTER_CIDR_V6,
                "Backend": {"Type": "vxlan"}}).to_string()},
        }));
        json!({"apiVersion": "v1", "kind": "List", "items": items})
    }

    /// `netray collect` in every node (`DIR/nodes/nodeI.json`) and `DIR/cluster.json`.
    pub fn collect_bundle(&self, netray: &Path, dir: &Path) -> Result<(), LabError> {
        let io = |what: String| move |source| LabError::Spawn { cmd: what, source };
        let nodes = dir.join("nodes");
        std::fs::create_dir_all(&nodes).map_err(io(format!("mkdir -p {}", nodes.display())))?;
        for i in 0..self.spec.nodes {
            let name = DualStackSpec::node_name(i);
            let ns = self.ns(&name)?;
            let out = nodes.join(format!("{name}.json"));
            run(Command::new("ip")
                .args(["netns", "exec", ns.name()])
                .arg(netray)
                .args(["collect", "--node", &name, "-o"])
                .arg(&out))?;
        }
        let text = serde_json::to_string_pretty(&self.cluster_json()).unwrap_or_default();
        let path = dir.join("cluster.json");
        std::fs::write(&path, text + "\n").map_err(io(format!("write {}", path.display())))
    }
}

fn flannel_jump(op: &str) -> [&str; 9] {
    [
        "-w",
        op,
        "FORWARD",
        "-m",
        "comment",
        "--comment",
        "flanneld forward",
        "-j",
        "FLANNEL-FWD",
    ]
}

impl Drop for DualStackLab {
    fn drop(&mut self) {
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Members drop (and delete their namespaces) with the map.
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ip6tables_rules_are_nat66_like_kube_proxy() {
        let spec = DualStackSpec::standard(V6Overlay::Routes);
        let v6 = ds_rules(&spec, 0, DsFamily::V6);
        assert!(
            v6.contains("-A KUBE-SERVICES -d fd00:96::10/128 -p tcp"),
            "{v6}"
        );
        assert!(
            v6.contains("-j DNAT --to-destination [fd00:10:244:0:0:0:0:11]:8080")
                || v6.contains("-j DNAT --to-destination [fd00:10:244::11]:8080"),
            "{v6}"
        );
        assert!(v6.contains(&format!("! -s {DS_CLUSTER_CIDR_V6} -d fd00:96::10/128")));
        assert!(!v6.contains("10.244."), "{v6}");
        let v4 = ds_rules(&spec, 0, DsFamily::V4);
        assert!(
            v4.contains("-j DNAT --to-destination 10.244.0.11:8080"),
            "{v4}"
        );
        assert!(!v4.contains("fd00:"), "{v4}");
        // Same Service port, same chain names in both families (separate tables).
        let svc = |t: &str| {
            t.lines()
                .find(|l| l.starts_with(":KUBE-SVC-"))
                .map(str::to_string)
        };
        assert_eq!(svc(&v4), svc(&v6));
    }
}
