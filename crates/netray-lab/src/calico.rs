//! A Calico-style lab: routing instead of a bridge, as Calico's CNI, Felix and BIRD wire a
//! node (BGP mode without encapsulation; this kernel has no IPIP, see LAB-NOTES).
//!
//! Members and their namespaces (`TAG` from [`crate::lab_tag`]):
//! - `sw`, `gw`: the underlay switch and router, as in [`crate::Lab`];
//! - `nodeI`: `eth0` 192.168.50.(10+I)/24, default via the router; `blackhole 10.244.I.0/26
//!   proto bird` for its own IPAM block and `10.244.M.0/26 via 192.168.50.(10+M) dev eth0
//!   proto bird` for every peer's block (what BIRD installs from BGP);
//! - each pod: `eth0` with `POD/32`, `169.254.1.1 dev eth0 scope link` and `default via
//!   169.254.1.1 dev eth0`; its host end `caliXXXXXXXXXXX` has MAC `ee:ee:ee:ee:ee:ee`, no
//!   address, and `POD/32 dev caliX scope link` on the node; Felix's per-interface sysctls
//!   (`proxy_arp=1`, `rp_filter=1`, `route_localnet=1`, `neigh.caliX.proxy_delay=0`) make the
//!   veth answer the pod's ARP for 169.254.1.1.
//!
//! Rules (iptables, as Felix lays them out): raw `cali-PREROUTING` marks workload traffic
//! `0x40000` and drops it with `-m rpfilter --validmark --invert`; filter `cali-FORWARD` →
//! `cali-from-wl-dispatch` / `cali-to-wl-dispatch` (`-i/-o caliX -g cali-fw-caliX /
//! cali-tw-caliX`), a namespace profile and an ingress policy `cali-pi-…` that accepts (MARK
//! `0x10000/0x10000`) TCP 8080 and UDP 8053 from the ipset `cali40s:…` of every pod address
//! and from the node subnet; `-m mark --mark 0x10000/0x10000 -j ACCEPT` at the end of FORWARD;
//! nat `cali-nat-outgoing` with `-m set --match-set cali40masq-ipam-pools src -m set !
//! --match-set cali40all-ipam-pools dst -j MASQUERADE`; kube-proxy's chains from
//! [`crate::kubeproxy`].
//!
//! Kernel truth is measured as in [`crate::matrix`] with counters on `eth0` instead of
//! `flannel.1`: requests arriving in the endpoint's pod, requests arriving at the endpoint's node
//! from the underlay, replies arriving back at the entry node.

use std::collections::BTreeMap;
use std::fmt;
use std::net::Ipv4Addr;
use std::path::Path;
use std::str::FromStr;

use serde_json::{Value, json};

use crate::kubeproxy::{kube_rules, restore_text};
use crate::lab::{Agent, Lab};
use crate::matrix::{
    DIRECT_TRIES, FlowTruth, Leg, MatrixFlow, TargetTruth, pod_flow, service_flow,
};
use crate::netns::{LabError, Netns};
use crate::probe::ProbeKind;
use crate::spec::{
    CLUSTER_CIDR, ClusterSpec, EXTERNAL_IP, GATEWAY_IP, PodSpec, Proto, UNDERLAY_PREFIX, node_ip,
};

/// The gateway every Calico pod routes through (answered by proxy ARP on its host veth).
pub const CALI_GATEWAY: Ipv4Addr = Ipv4Addr::new(169, 254, 1, 1);
/// MAC of every host-side `cali*` veth (Calico sets it so).
pub const CALI_MAC: &str = "ee:ee:ee:ee:ee:ee";
/// The ipset of the ingress policy's allowed sources (every pod address).
pub const CLIENTS_SET: &str = "cali40s:Zm9yLXdlYi1jbGllbnRz";
/// Felix's "policy accepted" mark bit.
pub const ACCEPT_MARK: &str = "0x10000/0x10000";
/// Underlay subnet (the ingress policy also allows the nodes).
const UNDERLAY_NET: &str = "192.168.50.0/24";
/// Pod MTU (no encapsulation).
const MTU: u32 = 1500;

/// Node `i`'s IPAM block (`10.244.i.0/26`).
pub fn block(i: usize) -> String {
    format!("10.244.{i}.0/26")
}

/// Host-side veth of a pod: `cali` + 11 hex digits, as Calico's CNI names it.
pub fn cali_veth(pod: &str) -> String {
    let h = pod.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| {
        (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
    });
    format!("cali{:011x}", h & 0xfff_ffff_ffff)
}

fn mac(kind: u8, a: usize, b: usize) -> String {
    format!("0e:6e:72:{kind:02x}:{a:02x}:{b:02x}")
}

/// A fault of the Calico lab (none of them was designed together with the model).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CalicoFault {
    /// `net.ipv4.conf.caliX.proxy_arp=0` on the pod's host veth: nobody answers the pod's
    /// ARP for 169.254.1.1 (`proxy-arp-off:POD`).
    ProxyArpOff {
        /// Pod.
        pod: String,
    },
    /// The pod's `/32 dev caliX scope link` route is gone from its node
    /// (`pod-route-missing:POD`).
    PodRouteMissing {
        /// Pod.
        pod: String,
    },
    /// `member`'s address is missing from the policy ipset on `node`
    /// (`ipset-missing:NODE:POD`).
    IpsetMissing {
        /// Node whose ipset lacks the member.
        node: String,
        /// Pod whose address is missing.
        member: String,
    },
}

impl fmt::Display for CalicoFault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            CalicoFault::ProxyArpOff { pod } => write!(f, "proxy-arp-off:{pod}"),
            CalicoFault::PodRouteMissing { pod } => write!(f, "pod-route-missing:{pod}"),
            CalicoFault::IpsetMissing { node, member } => {
                write!(f, "ipset-missing:{node}:{member}")
            }
        }
    }
}

impl FromStr for CalicoFault {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        let parts: Vec<&str> = s.split(':').collect();
        match parts.as_slice() {
            ["proxy-arp-off", pod] => Ok(CalicoFault::ProxyArpOff {
                pod: pod.to_string(),
            }),
            ["pod-route-missing", pod] => Ok(CalicoFault::PodRouteMissing {
                pod: pod.to_string(),
            }),
            ["ipset-missing", node, member] => Ok(CalicoFault::IpsetMissing {
                node: node.to_string(),
                member: member.to_string(),
            }),
            _ => Err(format!(
                "unknown Calico lab fault `{s}` (proxy-arp-off:POD, pod-route-missing:POD, ipset-missing:NODE:POD)"
            )),
        }
    }
}

/// A running Calico-style lab (see the module documentation); deleted on drop.
#[derive(Debug)]
pub struct CalicoLab {
    lab: Lab,
    faults: Vec<CalicoFault>,
}

fn unknown(what: &str, name: &str) -> LabError {
    LabError::Command {
        cmd: format!("{what} {name}"),
        status: "unknown".into(),
        stderr: format!("no such {what} `{name}` in the Calico lab"),
    }
}

impl CalicoLab {
    /// Build the lab for `spec` (its nodes, pods and services; pod addresses must lie in
    /// their node's [`block`]). On error everything built so far is torn down.
    pub fn up(spec: &ClusterSpec, agent: &Agent) -> Result<CalicoLab, LabError> {
        let mut lab = Lab::bare(spec, agent);
        let sw = lab.add_member("sw")?;
        sw.ip_batch(&["link add br0 type bridge".into(), "link set br0 up".into()])?;
        sw.sysctl("net.bridge.bridge-nf-call-iptables", "0")?;
        sw.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        lab.add_member("gw")?;
        underlay_port(&lab, "gw", "p-gw", GATEWAY_IP, &mac(0x50, 0, 1))?;
        lab.ns("gw")?.sysctl("net.ipv4.ip_forward", "1")?;
        lab.add_member("ext")?;
        underlay_port(&lab, "ext", "p-ext", EXTERNAL_IP, &mac(0x50, 0, 2))?;
        lab.ns("ext")?
            .ip(&["route", "add", "default", "via", &GATEWAY_IP.to_string()])?;
        for i in 0..spec.nodes.len() {
            build_node(&mut lab, spec, i)?;
        }
        for p in &spec.pods {
            build_pod(&mut lab, spec, p)?;
        }
        for i in 0..spec.nodes.len() {
            let node = lab.ns(&spec.nodes[i].name)?;
            node.iptables_restore(&["-w"], &calico_rules(spec, i))?;
            let kube = kube_rules(spec, i);
            node.iptables_restore(&["-w", "--noflush"], &restore_text(&kube, None))?;
        }
        for p in &spec.pods {
            lab.start_server(
                &p.name,
                &p.name,
                &[crate::spec::POD_TCP_PORT],
                &[crate::spec::POD_UDP_PORT],
            )?;
        }
        Ok(CalicoLab {
            lab,
            faults: Vec::new(),
        })
    }

    /// The underlying lab (namespaces, servers, probes).
    pub fn lab(&self) -> &Lab {
        &self.lab
    }

    /// The cluster.
    pub fn spec(&self) -> &ClusterSpec {
        self.lab.spec()
    }

    /// Faults applied so far.
    pub fn faults(&self) -> &[CalicoFault] {
        &self.faults
    }

    fn pod(&self, pod: &str) -> Result<(PodSpec, String), LabError> {
        let p = self
            .spec()
            .pod(pod)
            .ok_or_else(|| unknown("pod", pod))?
            .clone();
        let node = self.spec().nodes[p.node].name.clone();
        Ok((p, node))
    }

    /// Apply one fault.
    pub fn apply(&mut self, fault: &CalicoFault) -> Result<(), LabError> {
        match fault {
            CalicoFault::ProxyArpOff { pod } => {
                let (_, node) = self.pod(pod)?;
                self.lab
                    .ns(&node)?
                    .sysctl(&format!("net.ipv4.conf.{}.proxy_arp", cali_veth(pod)), "0")?;
            }
            CalicoFault::PodRouteMissing { pod } => {
                let (p, node) = self.pod(pod)?;
                self.lab.ns(&node)?.ip(&[
                    "route",
                    "del",
                    &format!("{}/32", p.ip),
                    "dev",
                    &cali_veth(pod),
                ])?;
            }
            CalicoFault::IpsetMissing { node, member } => {
                let (p, _) = self.pod(member)?;
                if self.spec().node_index(node).is_none() {
                    return Err(unknown("node", node));
                }
                self.lab
                    .ns(node)?
                    .exec("ipset", &["del", CLIENTS_SET, &format!("{}/32", p.ip)])?;
            }
        }
        self.faults.push(fault.clone());
        Ok(())
    }

    /// The flows compared with the kernel: every pod → every other pod (TCP), every pod →
    /// Service `web` (TCP and UDP), every node → every pod (TCP) and every node → `web`
    /// (TCP).
    pub fn flows(&self) -> Vec<MatrixFlow> {
        let spec = self.spec();
        let mut v = Vec::new();
        for a in &spec.pods {
            for b in &spec.pods {
                if a.name != b.name {
                    v.push(pod_flow(spec, &a.name, &b.name, Proto::Tcp));
                }
            }
            if spec.service("web").is_some() {
                v.push(service_flow(spec, &a.name, "web", Proto::Tcp));
                v.push(service_flow(spec, &a.name, "web", Proto::Udp));
            }
        }
        for n in &spec.nodes {
            for b in &spec.pods {
                v.push(pod_flow(spec, &n.name, &b.name, Proto::Tcp));
            }
            if spec.service("web").is_some() {
                v.push(service_flow(spec, &n.name, "web", Proto::Tcp));
            }
        }
        v
    }

    /// The cluster as a Kubernetes `List`, with Calico's IPPool and per-node IPAM blocks
    /// (no flannel annotations or ConfigMap).
    pub fn cluster_json(&self) -> Value {
        let spec = self.spec();
        let mut v = crate::cluster::cluster_list(spec, &[]);
        let items = v["items"].as_array_mut().expect("items");
        items.retain(|i| i["metadata"]["name"] != "kube-flannel-cfg");
        for (k, item) in items.iter_mut().enumerate() {
            if item["kind"] == "Node" {
                let ann = json!({
                    "projectcalico.org/IPv4Address":
                        format!("{}/{UNDERLAY_PREFIX}", node_ip(k)),
                    "projectcalico.org/IPv4IPIPTunnelAddr": Value::Null,
                });
                item["metadata"]["annotations"] = ann;
            }
        }
        items.push(json!({
            "apiVersion": "crd.projectcalico.org/v1",
            "kind": "IPPool",
            "metadata": {"name": "default-ipv4-ippool"},
            "spec": {"cidr": CLUSTER_CIDR, "blockSize": 26, "ipipMode": "Never",
                     "vxlanMode": "Never", "natOutgoing": true},
        }));
        v
    }

    /// Collect every node (`netray collect` inside its namespace) into `DIR/nodes/` and write
    /// `DIR/cluster.json`. Before collecting, the pods' neighbour tables are flushed, so the
    /// bundle does not hold the 169.254.1.1 entries the probes left: netray must derive the
    /// proxy ARP answer (or its absence) from the host's state, as for a pod that has not sent
    /// anything yet.
    pub fn collect_bundle(&self, netray: &Path, dir: &Path) -> Result<(), LabError> {
        for p in &self.spec().pods {
            self.lab.ns(&p.name)?.ip(&["neigh", "flush", "all"])?;
        }
        self.lab.collect_bundle(netray, dir)?;
        serde_json::to_string_pretty(&self.cluster_json())
            .map_err(std::io::Error::other)
            .and_then(|t| std::fs::write(dir.join("cluster.json"), t + "\n"))
            .map_err(|source| LabError::Spawn {
                cmd: format!("write {}/cluster.json", dir.display()),
                source,
            })
    }

    /// Probe `flow` for real and decide, per endpoint, whether it answered and where the
    /// packets of those that never did were lost (counters on `eth0`, see the module
    /// documentation).
    pub fn kernel_truth(&self, flow: &MatrixFlow) -> Result<FlowTruth, LabError> {
        self.kernel_truth_in(flow, 0)
    }

    /// [`CalicoLab::kernel_truth`] of every flow, `lanes` flows at a time: flows from the same
    /// client run one after the other in one lane, and the counters match the client's
    /// address, so concurrent flows do not count each other's packets. Results in order.
    pub fn kernel_truths(
        &self,
        flows: &[MatrixFlow],
        lanes: usize,
    ) -> Result<Vec<FlowTruth>, LabError> {
        let lanes = lanes.max(1);
        let mut clients: Vec<&str> = Vec::new();
        for f in flows {
            if !clients.contains(&f.probe.from.as_str()) {
                clients.push(&f.probe.from);
            }
        }
        let lane_of =
            |f: &MatrixFlow| clients.iter().position(|c| *c == f.probe.from).unwrap_or(0) % lanes;
        let mut out: Vec<Option<Result<FlowTruth, LabError>>> =
            flows.iter().map(|_| None).collect();
        let done: Vec<Vec<(usize, Result<FlowTruth, LabError>)>> = std::thread::scope(|s| {
            let hs: Vec<_> = (0..lanes)
                .map(|lane| {
                    let mine: Vec<(usize, &MatrixFlow)> = flows
                        .iter()
                        .enumerate()
                        .filter(|(_, f)| lane_of(f) == lane)
                        .collect();
                    s.spawn(move || {
                        mine.into_iter()
                            .map(|(i, f)| (i, self.kernel_truth_in(f, lane)))
                            .collect::<Vec<_>>()
                    })
                })
                .collect();
            hs.into_iter()
                .map(|h| h.join().expect("probe lane"))
                .collect()
        });
        for (i, r) in done.into_iter().flatten() {
            out[i] = Some(r);
        }
        out.into_iter()
            .map(|r| r.expect("every flow probed"))
            .collect()
    }

    /// The client's address as the counters see it: a pod's IP, or a node's underlay
    /// address (what the kernel selects for its traffic here, and what masquerading picks).
    fn client_ip(&self, flow: &MatrixFlow) -> Option<Ipv4Addr> {
        let spec = self.spec();
        match spec.pod(&flow.probe.from) {
            Some(p) => Some(p.ip),
            None => spec.node_index(&flow.probe.from).map(node_ip),
        }
    }

    fn kernel_truth_in(&self, flow: &MatrixFlow, lane: usize) -> Result<FlowTruth, LabError> {
        let table = format!("{WATCH}{lane}");
        let client = self.client_ip(flow);
        let from = |m: String| match client {
            Some(c) => format!("ip saddr {c} {m}"),
            None => m,
        };
        let to = |m: String| match client {
            Some(c) => format!("ip daddr {c} {m}"),
            None => m,
        };
        let mut rules: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for (k, t) in flow.targets.iter().enumerate() {
            if let Some(pod) = &t.pod {
                rules
                    .entry(pod.clone())
                    .or_default()
                    .push((format!("a{k}"), from(request_match(t, flow.proto))));
            }
            if t.node != flow.entry {
                rules.entry(t.node.clone()).or_default().push((
                    format!("n{k}"),
                    format!("iifname \"eth0\" {}", from(request_match(t, flow.proto))),
                ));
                rules.entry(flow.entry.clone()).or_default().push((
                    format!("r{k}"),
                    format!("iifname \"eth0\" {}", to(reply_match(t, flow.proto))),
                ));
            }
        }
        let result = (|| {
            for (member, r) in &rules {
                watch(self.lab.ns(member)?, &table, r)?;
            }
            let mut truth = FlowTruth {
                tries: 0,
                failed: 0,
                last_error: String::new(),
                targets: BTreeMap::new(),
                strays: BTreeMap::new(),
            };
            let mut answered: BTreeMap<String, usize> = BTreeMap::new();
            let (round, max) = if flow.balanced {
                (BALANCED_ROUND, BALANCED_MAX)
            } else {
                (DIRECT_TRIES, DIRECT_TRIES)
            };
            while truth.tries < max {
                let results: Vec<_> = std::thread::scope(|s| {
                    let handles: Vec<_> = (0..round)
                        .map(|_| s.spawn(|| self.lab.probe(&flow.probe)))
                        .collect();
                    handles
                        .into_iter()
                        .map(|h| h.join().expect("probe thread"))
                        .collect()
                });
                for r in results {
                    truth.tries += 1;
                    match (&r.answered_by, &flow.probe.kind) {
                        (_, ProbeKind::Ping { .. }) if r.ok => {
                            *answered.entry(flow.targets[0].server.clone()).or_default() += 1
                        }
                        (Some(by), _) if r.ok => *answered.entry(by.clone()).or_default() += 1,
                        _ => {
                            truth.failed += 1;
                            truth.last_error = r.detail.lines().next().unwrap_or("").into();
                        }
                    }
                }
                if flow
                    .targets
                    .iter()
                    .all(|t| answered.contains_key(&t.server))
                {
                    break;
                }
            }
            let mut counters: BTreeMap<(String, String), u64> = BTreeMap::new();
            for member in rules.keys() {
                if let Ok(ns) = self.lab.ns(member) {
                    for (name, v) in unwatch(ns, &table) {
                        counters.insert((member.clone(), name), v);
                    }
                }
            }
            let get = |member: &str, name: String| {
                counters
                    .get(&(member.to_string(), name))
                    .copied()
                    .unwrap_or(0)
            };
            for (k, t) in flow.targets.iter().enumerate() {
                let n = answered.remove(&t.server).unwrap_or(0);
                let mut tt = TargetTruth {
                    answered: n,
                    lost: None,
                    detail: String::new(),
                };
                if let (0, Some(pod)) = (n, &t.pod) {
                    let at_pod = get(pod, format!("a{k}"));
                    let remote = t.node != flow.entry;
                    let at_node = if remote {
                        get(&t.node, format!("n{k}"))
                    } else {
                        0
                    };
                    let back = if remote {
                        get(&flow.entry, format!("r{k}"))
                    } else {
                        0
                    };
                    tt.detail = format!(
                        "requests at pod {at_pod}; at {} via eth0 {at_node}; replies back at {} {back}",
                        t.node, flow.entry
                    );
                    tt.lost = Some(if at_pod > 0 {
                        let node = if remote && back == 0 {
                            t.node.clone()
                        } else {
                            flow.entry.clone()
                        };
                        (Leg::Reply, node)
                    } else {
                        let node = if remote && at_node > 0 {
                            t.node.clone()
                        } else {
                            flow.entry.clone()
                        };
                        (Leg::Forward, node)
                    });
                }
                truth.targets.insert(t.ip, tt);
            }
            answered.retain(|_, n| *n > 0);
            truth.strays = answered;
            Ok(truth)
        })();
        for member in rules.keys() {
            if let Ok(ns) = self.lab.ns(member) {
                let _ = unwatch(ns, &table);
            }
        }
        result
    }
}

/// The (code, node) pairs netray may name for `fault`; node `None` means any node. The
/// missing /32 route breaks both directions: traffic to the pod falls to the node's block
/// blackhole; the pod's own ARP request for 169.254.1.1 fails the strict rp_filter of its veth
/// (the route back is that blackhole), so it sends nothing. A missing policy member is dropped
/// by the pod's `cali-tw-` chain (a NetworkPolicy drop; netray-diagnose names it
/// `iptables-drop-rule` today, so both are accepted).
pub fn expected_causes(fault: &CalicoFault, spec: &ClusterSpec) -> Vec<(String, Option<String>)> {
    let pod_node = |pod: &str| spec.pod(pod).map(|p| spec.nodes[p.node].name.clone());
    let at = |codes: &[&str], node: Option<String>| {
        codes
            .iter()
            .map(|c| (c.to_string(), node.clone()))
            .collect::<Vec<_>>()
    };
    match fault {
        CalicoFault::ProxyArpOff { pod } => at(&["neighbor-unreachable"], pod_node(pod)),
        CalicoFault::PodRouteMissing { pod } => {
            at(&["blackhole-route", "rp-filter-drop"], pod_node(pod))
        }
        CalicoFault::IpsetMissing { node, .. } => at(
            &["network-policy-drop", "iptables-drop-rule"],
            Some(node.clone()),
        ),
    }
}

/// A member's `eth0` on the underlay switch with `ip/24`.
fn underlay_port(
    lab: &Lab,
    member: &str,
    port: &str,
    ip: Ipv4Addr,
    mac: &str,
) -> Result<(), LabError> {
    let sw = lab.ns("sw")?;
    let ns = lab.ns(member)?;
    sw.veth(port, ns, "eth0")?;
    sw.ip_batch(&[
        format!("link set {port} master br0"),
        format!("link set {port} up"),
    ])?;
    ns.ip_batch(&[
        format!("link set eth0 address {mac}"),
        format!("addr add {ip}/{UNDERLAY_PREFIX} dev eth0"),
        "link set eth0 up".into(),
    ])
}

fn build_node(lab: &mut Lab, spec: &ClusterSpec, i: usize) -> Result<(), LabError> {
    let name = spec.nodes[i].name.clone();
    lab.add_member(&name)?;
    underlay_port(
        lab,
        &name,
        &format!("p-{name}"),
        node_ip(i),
        &mac(0x50, 1, i),
    )?;
    let node = lab.ns(&name)?;
    let mut lines = vec![
        format!("route add default via {GATEWAY_IP}"),
        format!("route add blackhole {} proto bird", block(i)),
    ];
    for m in (0..spec.nodes.len()).filter(|&m| m != i) {
        lines.push(format!(
            "route add {} via {} dev eth0 proto bird",
            block(m),
            node_ip(m)
        ));
    }
    node.ip_batch(&lines)?;
    node.sysctl("net.ipv4.ip_forward", "1")?;
    // Felix's ipsets: the policy's sources (every pod), and the IPAM pools for NAT outgoing.
    let mut sets = vec![
        format!("create {CLIENTS_SET} hash:net family inet hashsize 1024 maxelem 1048576"),
        "create cali40masq-ipam-pools hash:net family inet hashsize 1024 maxelem 1048576".into(),
        "create cali40all-ipam-pools hash:net family inet hashsize 1024 maxelem 1048576".into(),
        format!("add cali40masq-ipam-pools {CLUSTER_CIDR}"),
        format!("add cali40all-ipam-pools {CLUSTER_CIDR}"),
    ];
    for p in &spec.pods {
        sets.push(format!("add {CLIENTS_SET} {}/32", p.ip));
    }
    let mut cmd = node.command("ipset");
    cmd.arg("restore");
    crate::netns::run_with_input(&mut cmd, &sets.join("\n"), None)
}

fn build_pod(lab: &mut Lab, spec: &ClusterSpec, p: &PodSpec) -> Result<(), LabError> {
    lab.add_member(&p.name)?;
    let node: &Netns = lab.ns(&spec.nodes[p.node].name)?;
    let pod = lab.ns(&p.name)?;
    let cv = cali_veth(&p.name);
    let idx = spec.pods.iter().position(|q| q.name == p.name).unwrap_or(0);
    node.veth(&cv, pod, "eth0")?;
    node.ip_batch(&[
        format!("link set {cv} address {CALI_MAC} mtu {MTU}"),
        format!("link set {cv} up"),
        format!("route add {}/32 dev {cv} scope link", p.ip),
    ])?;
    for (k, v) in [
        ("proxy_arp", "1"),
        ("rp_filter", "1"),
        ("route_localnet", "1"),
        ("forwarding", "1"),
    ] {
        node.sysctl(&format!("net.ipv4.conf.{cv}.{k}"), v)?;
    }
    node.sysctl(&format!("net.ipv4.neigh.{cv}.proxy_delay"), "0")?;
    pod.ip_batch(&[
        format!(
            "link set eth0 address {} mtu {MTU}",
            mac(0xa0, idx >> 8, idx & 0xff)
        ),
        format!("addr add {}/32 dev eth0", p.ip),
        "link set eth0 up".into(),
        format!("route add {CALI_GATEWAY} dev eth0 scope link"),
        format!("route add default via {CALI_GATEWAY} dev eth0"),
    ])
}

/// Felix-style chain names for a pod's interface.
fn fw_chain(cv: &str) -> String {
    format!("cali-fw-{cv}")
}
fn tw_chain(cv: &str) -> String {
    format!("cali-tw-{cv}")
}
const POLICY_CHAIN: &str = "cali-pi-_Zm9yLXdlYi1jbGllbn";

/// Felix's raw, mangle, filter and nat rules for node `i` (`iptables-restore` input; the
/// declared kube-proxy chains are filled by [`restore_text`] afterwards).
pub fn calico_rules(spec: &ClusterSpec, i: usize) -> String {
    let local: Vec<String> = spec
        .pods
        .iter()
        .filter(|p| p.node == i)
        .map(|p| cali_veth(&p.name))
        .collect();
    let mut s = String::new();
    s += "*raw\n:PREROUTING ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:cali-PREROUTING - [0:0]\n\
          :cali-rpf-skip - [0:0]\n:cali-from-host-endpoint - [0:0]\n\
          -A PREROUTING -m comment --comment \"cali:6gwbT8clXdHdC1b1\" -j cali-PREROUTING\n\
          -A cali-PREROUTING -m comment --comment \"cali:XFX5xbM8B9qR10JG\" -j MARK --set-xmark 0x0/0xf0000\n\
          -A cali-PREROUTING -i cali+ -m comment --comment \"cali:EWMPb0zVROM-woQp\" -j MARK --set-xmark 0x40000/0x40000\n\
          -A cali-PREROUTING -m comment --comment \"cali:PWuxTAIaFCtsg5Qa\" -m mark --mark 0x40000/0x40000 -j cali-rpf-skip\n\
          -A cali-PREROUTING -m comment --comment \"cali:fSSbGND7dgyemWU7\" -m mark --mark 0x40000/0x40000 -m rpfilter --validmark --invert -j DROP\n\
          -A cali-PREROUTING -m comment --comment \"cali:ImU0-4Rl2WoOI9Ou\" -m mark --mark 0x0/0x40000 -j cali-from-host-endpoint\n\
          -A cali-PREROUTING -m comment --comment \"cali:lV4V2MPoMBf0hl9T\" -m mark --mark 0x40000/0x40000 -j ACCEPT\n\
          COMMIT\n";
    s += "*mangle\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n\
          :OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:cali-PREROUTING - [0:0]\n\
          :cali-from-host-endpoint - [0:0]\n\
          -A PREROUTING -m comment --comment \"cali:6gwbT8clXdHdC1b1\" -j cali-PREROUTING\n\
          -A cali-PREROUTING -m comment --comment \"cali:6BJqBjBC7crtA-7-\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
          -A cali-PREROUTING -m comment --comment \"cali:KX7AGNd6rMcDUai6\" -m mark --mark 0x10000/0x10000 -j ACCEPT\n\
          -A cali-PREROUTING -m comment --comment \"cali:wNH7KsA3ILKJBsY9\" -j cali-from-host-endpoint\n\
          -A cali-PREROUTING -m comment --comment \"cali:Cg96MgVuoPm7UMRo\" -m comment --comment \"Host endpoint policy accepted packet.\" -m mark --mark 0x10000/0x10000 -j ACCEPT\n\
          COMMIT\n";
    // filter
    s += "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n";
    let mut chains = vec![
        "cali-FORWARD".to_string(),
        "cali-INPUT".into(),
        "cali-OUTPUT".into(),
        "cali-wl-to-host".into(),
        "cali-from-wl-dispatch".into(),
        "cali-to-wl-dispatch".into(),
        "cali-pro-kns.default".into(),
        "cali-pri-kns.default".into(),
        POLICY_CHAIN.into(),
        "KUBE-SERVICES".into(),
        "KUBE-EXTERNAL-SERVICES".into(),
        "KUBE-FORWARD".into(),
        "KUBE-NODEPORTS".into(),
    ];
    for cv in &local {
        chains.push(fw_chain(cv));
        chains.push(tw_chain(cv));
    }
    for c in &chains {
        s += &format!(":{c} - [0:0]\n");
    }
    s += &format!(
        r#"-A INPUT -m comment --comment "cali:Cz_u1IQiXIMmKD4c" -j cali-INPUT
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -m comment --comment "cali:wUHhoiAYhphO9Mso" -j cali-FORWARD
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -m comment --comment "cali:S93hcgKJrXEqnTfs" -m comment --comment "Policy explicitly accepted packet." -m mark --mark {ACCEPT_MARK} -j ACCEPT
-A FORWARD -m comment --comment "cali:mp77cMpurHhyjLrM" -j MARK --set-xmark 0x10000/0x10000
-A OUTPUT -m comment --comment "cali:tVnHkvAo15HuiPy0" -j cali-OUTPUT
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A cali-FORWARD -m comment --comment "cali:vjrMJCRpqwy5oRoX" -j MARK --set-xmark 0x0/0xe0000
-A cali-FORWARD -i cali+ -m comment --comment "cali:8ZoYfO5HKXWbB3pk" -j cali-from-wl-dispatch
-A cali-FORWARD -o cali+ -m comment --comment "cali:jdEuaPBe14V2hutn" -j cali-to-wl-dispatch
-A cali-INPUT -i cali+ -m comment --comment "cali:FewJpBykm9iJ-YNH" -g cali-wl-to-host
-A cali-INPUT -m comment --comment "cali:hder3ARWznqqv8Va" -m mark --mark {ACCEPT_MARK} -j ACCEPT
-A cali-wl-to-host -m comment --comment "cali:Ee9Sbo10IpVujdIY" -j cali-from-wl-dispatch
-A cali-wl-to-host -m comment --comment "cali:nSZbcOoG1xPONxb8" -m comment --comment "Configured DefaultEndpointToHostAction" -j ACCEPT
-A cali-OUTPUT -m comment --comment "cali:Mq1_rAdXXH3YkrzW" -m mark --mark {ACCEPT_MARK} -j ACCEPT
-A cali-OUTPUT -o cali+ -m comment --comment "cali:69FkRTJDvD5Vu6Vl" -j RETURN
-A cali-pro-kns.default -m comment --comment "cali:96HaP1sFtb-NYoYA" -j MARK --set-xmark 0x10000/0x10000
-A cali-pro-kns.default -m comment --comment "cali:VjkvfNSsIPwJ-t3I" -m mark --mark {ACCEPT_MARK} -j RETURN
-A cali-pri-kns.default -m comment --comment "cali:7Fnh7Pv3_98FtLW7" -j MARK --set-xmark 0x10000/0x10000
-A cali-pri-kns.default -m comment --comment "cali:ZbV6bJXWSRefjK0u" -m mark --mark {ACCEPT_MARK} -j RETURN
-A {POLICY_CHAIN} -p tcp -m comment --comment "cali:kWnY4qQ3J4hbLzYq" -m comment --comment "Policy default/knp.default.allow-web-clients ingress" -m set --match-set {CLIENTS_SET} src -m multiport --dports 8080 -j MARK --set-xmark 0x10000/0x10000
-A {POLICY_CHAIN} -m comment --comment "cali:0Lz3qlkR2Vb3uZ9W" -m mark --mark {ACCEPT_MARK} -j RETURN
-A {POLICY_CHAIN} -p udp -m comment --comment "cali:Xg5n0yB8ZK9w3oqV" -m comment --comment "Policy default/knp.default.allow-web-clients ingress" -m set --match-set {CLIENTS_SET} src -m multiport --dports 8053 -j MARK --set-xmark 0x10000/0x10000
-A {POLICY_CHAIN} -m comment --comment "cali:Q9m7b2Fv1x4dRtLw" -m mark --mark {ACCEPT_MARK} -j RETURN
-A {POLICY_CHAIN} -p tcp -s {UNDERLAY_NET} -m comment --comment "cali:t2k9WcY7pQ1nVx5E" -m comment --comment "Policy default/knp.default.allow-web-clients ingress" -m multiport --dports 8080 -j MARK --set-xmark 0x10000/0x10000
-A {POLICY_CHAIN} -m comment --comment "cali:R8pX4mZ0cJ6vHb1N" -m mark --mark {ACCEPT_MARK} -j RETURN
"#
    );
    for cv in &local {
        let (fw, tw) = (fw_chain(cv), tw_chain(cv));
        s += &format!(
            "-A cali-from-wl-dispatch -i {cv} -m comment --comment \"cali:from-{cv}\" -g {fw}\n"
        );
        s += &format!(
            "-A cali-to-wl-dispatch -o {cv} -m comment --comment \"cali:to-{cv}\" -g {tw}\n"
        );
        s += &format!(
            r#"-A {fw} -m comment --comment "cali:fw1" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A {fw} -m comment --comment "cali:fw2" -m conntrack --ctstate INVALID -j DROP
-A {fw} -m comment --comment "cali:fw3" -j MARK --set-xmark 0x0/0x10000
-A {fw} -p udp -m comment --comment "cali:fw4" -m comment --comment "Drop VXLAN encapped packets originating in workloads" -m multiport --dports 4789 -j DROP
-A {fw} -p ipencap -m comment --comment "cali:fw5" -m comment --comment "Drop IPinIP encapped packets originating in workloads" -j DROP
-A {fw} -m comment --comment "cali:fw6" -j cali-pro-kns.default
-A {fw} -m comment --comment "cali:fw7" -m comment --comment "Return if profile accepted" -m mark --mark {ACCEPT_MARK} -j RETURN
-A {fw} -m comment --comment "cali:fw8" -m comment --comment "Drop if no profiles matched" -j DROP
-A {tw} -m comment --comment "cali:tw1" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT
-A {tw} -m comment --comment "cali:tw2" -m conntrack --ctstate INVALID -j DROP
-A {tw} -m comment --comment "cali:tw3" -j MARK --set-xmark 0x0/0x10000
-A {tw} -m comment --comment "cali:tw4" -m comment --comment "Start of policies" -j MARK --set-xmark 0x0/0x20000
-A {tw} -m comment --comment "cali:tw5" -m mark --mark 0x0/0x20000 -j {POLICY_CHAIN}
-A {tw} -m comment --comment "cali:tw6" -m comment --comment "Return if policy accepted" -m mark --mark {ACCEPT_MARK} -j RETURN
-A {tw} -m comment --comment "cali:tw7" -m comment --comment "Drop if no policies passed packet" -m mark --mark 0x0/0x20000 -j DROP
-A {tw} -m comment --comment "cali:tw8" -j cali-pri-kns.default
-A {tw} -m comment --comment "cali:tw9" -m comment --comment "Return if profile accepted" -m mark --mark {ACCEPT_MARK} -j RETURN
-A {tw} -m comment --comment "cali:twa" -m comment --comment "Drop if no profiles matched" -j DROP
"#
        );
    }
    s += "-A cali-from-wl-dispatch -m comment --comment \"cali:RDmcT6TCSpYvrDNm\" -m comment --comment \"Unknown interface\" -j DROP\n\
          -A cali-to-wl-dispatch -m comment --comment \"cali:3lIuHjq5SRZVnEPB\" -m comment --comment \"Unknown interface\" -j DROP\n\
          COMMIT\n";
    // nat
    s += "*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
          :POSTROUTING ACCEPT [0:0]\n:cali-PREROUTING - [0:0]\n:cali-OUTPUT - [0:0]\n\
          :cali-POSTROUTING - [0:0]\n:cali-fip-dnat - [0:0]\n:cali-fip-snat - [0:0]\n\
          :cali-nat-outgoing - [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-POSTROUTING - [0:0]\n\
          -A PREROUTING -m comment --comment \"cali:6gwbT8clXdHdC1b1\" -j cali-PREROUTING\n\
          -A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
          -A OUTPUT -m comment --comment \"cali:tVnHkvAo15HuiPy0\" -j cali-OUTPUT\n\
          -A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
          -A POSTROUTING -m comment --comment \"cali:O3lYWMrLQYEMJtB5\" -j cali-POSTROUTING\n\
          -A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
          -A cali-PREROUTING -m comment --comment \"cali:r6XmIziWUJsdOK6Z\" -j cali-fip-dnat\n\
          -A cali-OUTPUT -m comment --comment \"cali:GBTAv2p5CwevEyJm\" -j cali-fip-dnat\n\
          -A cali-POSTROUTING -m comment --comment \"cali:Z-c7XtVd2Bq7s_hA\" -j cali-fip-snat\n\
          -A cali-POSTROUTING -m comment --comment \"cali:nYKhEzDlr11Jccal\" -j cali-nat-outgoing\n\
          -A cali-nat-outgoing -m comment --comment \"cali:flqWnvo8yq4ULQLa\" -m set --match-set cali40masq-ipam-pools src -m set ! --match-set cali40all-ipam-pools dst -j MASQUERADE --random-fully\n\
          COMMIT\n";
    s
}

/// nftables match of a request to `t`.
fn request_match(t: &crate::matrix::Target, proto: Option<Proto>) -> String {
    match (proto, t.port) {
        (Some(p), Some(port)) => format!("ip daddr {} {} dport {port}", t.ip, p.lower()),
        _ => format!("ip daddr {} ip protocol icmp", t.ip),
    }
}

/// nftables match of a reply from `t`.
fn reply_match(t: &crate::matrix::Target, proto: Option<Proto>) -> String {
    match (proto, t.port) {
        (Some(p), Some(port)) => format!("ip saddr {} {} sport {port}", t.ip, p.lower()),
        _ => format!("ip saddr {} ip protocol icmp", t.ip),
    }
}

const WATCH: &str = "nrl_cwatch";
/// Tries per round of a load-balanced flow (flows run in lanes, so rounds are smaller than
/// [`crate::matrix::ROUND`]; with 4 endpoints, one is missed by 3 rounds with p ≈ 4·(3/4)^48).
const BALANCED_ROUND: usize = 16;
/// Most tries of a load-balanced flow.
const BALANCED_MAX: usize = 48;

/// Install a counting-only table (prerouting, priority -400, no verdicts) in `ns`.
fn watch(ns: &Netns, table: &str, rules: &[(String, String)]) -> Result<(), LabError> {
    let mut script = format!("table ip {table} {{\n");
    for (name, _) in rules {
        script += &format!("  counter {name} {{ }}\n");
    }
    script += "  chain pre {\n    type filter hook prerouting priority -400; policy accept;\n";
    for (name, m) in rules {
        script += &format!("    {m} counter name \"{name}\"\n");
    }
    script += "  }\n}\n";
    let _ = ns.exec("nft", &["delete", "table", "ip", table]);
    let mut cmd = ns.command("nft");
    cmd.args(["-f", "-"]);
    crate::netns::run_with_input(&mut cmd, &script, None)
}

/// Read and delete the counting table: counter name → packets.
fn unwatch(ns: &Netns, table: &str) -> BTreeMap<String, u64> {
    let mut out = BTreeMap::new();
    if let Ok(o) = ns.exec("nft", &["-j", "list", "table", "ip", table]) {
        let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
        for item in v["nftables"].as_array().into_iter().flatten() {
            let c = &item["counter"];
            if let (Some(n), Some(p)) = (c["name"].as_str(), c["packets"].as_u64()) {
                out.insert(n.to_string(), p);
            }
        }
    }
    let _ = ns.exec("nft", &["delete", "table", "ip", table]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_faults() {
        let v = cali_veth("web-0");
        assert_eq!(v.len(), 15);
        assert!(v.starts_with("cali"));
        assert_ne!(v, cali_veth("web-1"));
        for f in [
            "proxy-arp-off:web-1",
            "pod-route-missing:web-2",
            "ipset-missing:node1:web-0",
        ] {
            assert_eq!(f.parse::<CalicoFault>().unwrap().to_string(), f);
        }
        assert!("proxy-arp-off".parse::<CalicoFault>().is_err());
    }

    #[test]
    fn rules_have_one_dispatch_per_local_pod() {
        let spec = ClusterSpec::standard(2, 2);
        let text = calico_rules(&spec, 0);
        assert_eq!(text.matches("-A cali-from-wl-dispatch -i cali").count(), 2);
        assert!(text.contains("-m rpfilter --validmark --invert -j DROP"));
        assert!(text.contains(&format!("--match-set {CLIENTS_SET} src")));
    }
}
