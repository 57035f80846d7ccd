//! A running lab: every namespace of a [`ClusterSpec`], wired as flannel (VXLAN backend) and
//! kube-proxy (iptables mode) wire a real cluster, torn down on drop.
//!
//! Members and their namespaces (`TAG` from [`lab_tag`]):
//! - `sw` (`nrl-TAG-sw`): the underlay switch, bridge `br0` (no addresses, no netfilter);
//! - `gw` (`nrl-TAG-gw`): the router at 192.168.50.1, the nodes' default gateway; it also
//!   holds the LoadBalancer IP 192.168.60.200 on `lo` and plays the cloud load balancer that
//!   sends health probes from it;
//! - `ext` (`nrl-TAG-ext`): an external client at 192.168.50.100 that reaches the
//!   LoadBalancer IP through `node0`;
//! - `nodeI` (`nrl-TAG-nodeI`): `eth0` 192.168.50.(10+I)/24, `cni0` 10.244.I.1/24,
//!   `flannel.1` 10.244.I.0/32;
//! - each pod (`nrl-TAG-<pod>`): `eth0` on its node's `cni0`, running the agent server.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::net::Ipv4Addr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::cluster::cluster_list;
use crate::fault::Fault;
use crate::kubeproxy::{KubeRules, base_text, kube_rules, restore_text};
use crate::netns::{LAB_PREFIX, LabError, Netns, lab_tag};
use crate::probe::{PROBE_KILL_AFTER, PROBE_TIMEOUT, Probe, ProbeKind, ProbeResult, run_bounded};
use crate::spec::{
    ClusterSpec, EXTERNAL_IP, GATEWAY_IP, OVERLAY_MTU, PodNetwork, PodSpec, Proto, ServiceKind,
    ServicePortSpec, ServiceSpec, UNDERLAY_PREFIX, VXLAN_PORT, WEB_LB_HEALTH_PORT, WEB_LB_IP,
    cni_gateway, node_ip, vtep_ip, vtep_mac,
};

/// How to start the lab agent (server and probe client): a program plus leading arguments,
/// e.g. `nrl-agent` or `netray lab agent`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Agent {
    program: PathBuf,
    prefix: Vec<String>,
}

impl Agent {
    /// The standalone `nrl-agent` binary at `path`.
    pub fn binary(path: impl Into<PathBuf>) -> Agent {
        Agent {
            program: path.into(),
            prefix: Vec::new(),
        }
    }

    /// A program that runs the agent under a subcommand (`netray lab agent …`).
    pub fn subcommand(program: impl Into<PathBuf>, prefix: &[&str]) -> Agent {
        Agent {
            program: program.into(),
            prefix: prefix.iter().map(|s| s.to_string()).collect(),
        }
    }

    /// Find `nrl-agent`: `$NETRAY_LAB_AGENT`, else next to the running executable or one
    /// directory up (cargo puts tests in `target/*/deps`, examples in `target/*/examples`).
    pub fn locate() -> Option<Agent> {
        if let Some(p) = std::env::var_os("NETRAY_LAB_AGENT") {
            return Some(Agent::binary(PathBuf::from(p)));
        }
        let exe = std::env::current_exe().ok()?;
        let dir = exe.parent()?;
        [dir.join("nrl-agent"), dir.parent()?.join("nrl-agent")]
            .into_iter()
            .find(|p| p.is_file())
            .map(Agent::binary)
    }

    fn command_in(&self, ns: &str, args: &[String]) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", ns])
            .arg(&self.program)
            .args(&self.prefix)
            .args(args);
        c
    }
}

/// IP of the seed-000 VM.
pub const VM_IP: Ipv4Addr = Ipv4Addr::new(10, 50, 0, 10);
/// Router address on the VM network.
pub const VM_GATEWAY: Ipv4Addr = Ipv4Addr::new(10, 50, 0, 1);
/// Cluster IP of the seed-000 `vm` service.
pub const VM_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 150);

/// A running lab. Dropping it kills its servers and deletes every namespace, unless
/// [`Lab::keep`] was called.
pub struct Lab {
    tag: String,
    spec: ClusterSpec,
    agent: Agent,
    members: BTreeMap<String, Netns>,
    kube: Vec<KubeRules>,
    vtep_gen: Vec<u8>,
    faults: Vec<Fault>,
    servers: Vec<Child>,
    keep: bool,
}

impl std::fmt::Debug for Lab {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Lab")
            .field("tag", &self.tag)
            .field("members", &self.members.keys().collect::<Vec<_>>())
            .field("faults", &self.faults)
            .finish()
    }
}

fn mac(kind: u8, a: usize, b: usize) -> String {
    format!("0e:6e:72:{kind:02x}:{a:02x}:{b:02x}")
}

/// Host-side veth name of a pod (`veth` + 8 hex digits, as CNI plugins name them).
fn host_veth(pod: &str) -> String {
    let h = pod.bytes().fold(0x811c_9dc5u32, |h, b| {
        (h ^ u32::from(b)).wrapping_mul(0x0100_0193)
    });
    format!("veth{h:08x}")
}

impl Lab {
    /// Build the lab for `spec`. On any error everything built so far is torn down.
    pub fn up(spec: &ClusterSpec, agent: &Agent) -> Result<Lab, LabError> {
        let mut lab = Lab {
            tag: lab_tag(),
            spec: spec.clone(),
            agent: agent.clone(),
            members: BTreeMap::new(),
            kube: Vec::new(),
            vtep_gen: vec![0; spec.nodes.len()],
            faults: Vec::new(),
            servers: Vec::new(),
            keep: false,
        };
        lab.build()?;
        Ok(lab)
    }

    /// A lab with no namespaces yet, for other topologies built beside this module
    /// ([`crate::calico`]): they add members with `add_member` and reuse servers, probes and
    /// teardown.
    pub(crate) fn bare(spec: &ClusterSpec, agent: &Agent) -> Lab {
        Lab {
            tag: lab_tag(),
            spec: spec.clone(),
            agent: agent.clone(),
            members: BTreeMap::new(),
            kube: Vec::new(),
            vtep_gen: vec![0; spec.nodes.len()],
            faults: Vec::new(),
            servers: Vec::new(),
            keep: false,
        }
    }

    pub(crate) fn add_member(&mut self, member: &str) -> Result<&Netns, LabError> {
        let ns = Netns::create(&format!("{}-{member}", self.tag))?;
        self.members.insert(member.to_string(), ns);
        Ok(&self.members[member])
    }

    /// The namespace of a member (`sw`, `gw`, `ext`, a node or a pod name).
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

    fn build(&mut self) -> Result<(), LabError> {
        let n = self.spec.nodes.len();
        // Underlay switch.
        let sw = self.add_member("sw")?;
        sw.ip_batch(&["link add br0 type bridge".into(), "link set br0 up".into()])?;
        sw.sysctl("net.bridge.bridge-nf-call-iptables", "0")?;
        sw.sysctl("net.ipv6.conf.all.disable_ipv6", "1")?;
        // Router / load balancer.
        self.add_member("gw")?;
        self.underlay_port("gw", "p-gw", GATEWAY_IP, &mac(0x50, 0, 1))?;
        let gw = self.ns("gw")?;
        gw.sysctl("net.ipv4.ip_forward", "1")?;
        gw.ip(&["addr", "add", &format!("{WEB_LB_IP}/32"), "dev", "lo"])?;
        // External client: reaches the LB IP through node0 (as a BGP/ECMP-announced VIP).
        self.add_member("ext")?;
        self.underlay_port("ext", "p-ext", EXTERNAL_IP, &mac(0x50, 0, 2))?;
        self.ns("ext")?.ip_batch(&[
            format!("route add default via {GATEWAY_IP}"),
            format!("route add {WEB_LB_IP}/32 via {}", node_ip(0)),
        ])?;
        for i in 0..n {
            self.build_node(i)?;
        }
        for p in self.spec.pods.clone() {
            self.build_pod(&p)?;
        }
        for i in 0..n {
            let node = self.node_ns(i)?;
            node.iptables_restore(&["-w"], &base_text(i))?;
        }
        self.sync_kube_proxy()?;
        for p in self.spec.pods.clone() {
            self.start_pod_server(&p)?;
        }
        for i in 0..n {
            let name = format!("{} healthz", self.spec.nodes[i].name);
            let member = self.spec.nodes[i].name.clone();
            self.start_server(&member, &name, &[WEB_LB_HEALTH_PORT], &[])?;
        }
        Ok(())
    }

    /// A member's `eth0` on the underlay switch with `ip/24`.
    fn underlay_port(
        &self,
        member: &str,
        port: &str,
        ip: Ipv4Addr,
        mac: &str,
    ) -> Result<(), LabError> {
        let sw = self.ns("sw")?;
        let ns = self.ns(member)?;
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

    fn node_ns(&self, i: usize) -> Result<&Netns, LabError> {
        self.ns(&self.spec.nodes[i].name.clone())
    }

    fn build_node(&mut self, i: usize) -> Result<(), LabError> {
        let name = self.spec.nodes[i].name.clone();
        let ip = self.spec.nodes[i].ip;
        self.add_member(&name)?;
        self.underlay_port(&name, &format!("p-{name}"), ip, &mac(0x50, 1, i))?;
        let node = self.ns(&name)?;
        let gw = cni_gateway(i);
        let mut lines = vec![
            format!("route add default via {GATEWAY_IP}"),
            "link add cni0 type bridge".into(),
            format!(
                "link set cni0 address {} mtu {OVERLAY_MTU}",
                mac(0xc0, 0, i)
            ),
            format!("addr add {gw}/24 dev cni0"),
            "link set cni0 up".into(),
            format!(
                "link add flannel.1 address {} mtu {OVERLAY_MTU} type vxlan id 1 local {ip} dev eth0 dstport {VXLAN_PORT} nolearning",
                vtep_mac(i, 0)
            ),
            format!("addr add {}/32 dev flannel.1", vtep_ip(i)),
            "link set flannel.1 up".into(),
        ];
        let mut fdb = Vec::new();
        for (m, peer) in self.spec.nodes.iter().enumerate() {
            if m == i {
                continue;
            }
            lines.push(format!(
                "route add {} via {} dev flannel.1 onlink",
                peer.pod_cidr,
                vtep_ip(m)
            ));
            lines.push(format!(
                "neigh add {} lladdr {} dev flannel.1 nud permanent",
                vtep_ip(m),
                vtep_mac(m, 0)
            ));
            fdb.push(format!(
                "fdb append {} dev flannel.1 dst {}",
                vtep_mac(m, 0),
                peer.ip
            ));
        }
        node.ip_batch(&lines)?;
        node.bridge_batch(&fdb)?;
        node.sysctl("net.ipv4.ip_forward", "1")?;
        // The kernel's default, and what kubeadm requires; said explicitly for the record.
        node.sysctl("net.bridge.bridge-nf-call-iptables", "1")?;
        Ok(())
    }

    fn build_pod(&mut self, p: &PodSpec) -> Result<(), LabError> {
        self.add_member(&p.name)?;
        let node = self.ns(&self.spec.nodes[p.node].name.clone())?;
        let pod = self.ns(&p.name)?;
        let hv = host_veth(&p.name);
        let idx = self
            .spec
            .pods
            .iter()
            .position(|q| q.name == p.name)
            .unwrap_or(0);
        node.veth(&hv, pod, "eth0")?;
        let (master, gateway, mtu) = match p.network {
            PodNetwork::Cni => ("cni0", cni_gateway(p.node), OVERLAY_MTU),
            PodNetwork::VmBridge => ("br-vm", VM_GATEWAY, 1500),
        };
        node.ip_batch(&[
            format!("link set {hv} mtu {mtu} master {master}"),
            format!("link set {hv} type bridge_slave hairpin on"),
            format!("link set {hv} up"),
        ])?;
        pod.ip_batch(&[
            format!(
                "link set eth0 address {} mtu {mtu}",
                mac(0xa0, idx >> 8, idx & 0xff)
            ),
            format!("addr add {}/24 dev eth0", p.ip),
            "link set eth0 up".into(),
            format!("route add default via {gateway}"),
        ])
    }

    /// (Re)install kube-proxy's chains on every node from the current spec.
    fn sync_kube_proxy(&mut self) -> Result<(), LabError> {
        let mut installed = Vec::new();
        for i in 0..self.spec.nodes.len() {
            let new = kube_rules(&self.spec, i);
            let text = restore_text(&new, self.kube.get(i));
            self.node_ns(i)?
                .iptables_restore(&["-w", "--noflush"], &text)?;
            installed.push(new);
        }
        self.kube = installed;
        Ok(())
    }

    fn start_pod_server(&mut self, p: &PodSpec) -> Result<(), LabError> {
        let (name, member) = (p.name.clone(), p.name.clone());
        self.start_server(
            &member,
            &name,
            &[crate::spec::POD_TCP_PORT],
            &[crate::spec::POD_UDP_PORT],
        )
    }

    /// Start the agent server in a member namespace and wait until it listens.
    pub fn start_server(
        &mut self,
        member: &str,
        name: &str,
        tcp: &[u16],
        udp: &[u16],
    ) -> Result<(), LabError> {
        let ns = self.ns(member)?.name().to_string();
        let mut args = vec!["serve".to_string(), "--name".into(), name.into()];
        for p in tcp {
            args.extend(["--tcp".to_string(), p.to_string()]);
        }
        for p in udp {
            args.extend(["--udp".to_string(), p.to_string()]);
        }
        let mut cmd = self.agent.command_in(&ns, &args);
        let shown = format!("{cmd:?}").replace('"', "");
        // Own process group: a Ctrl-C on `netray lab up` must not take the servers with it.
        std::os::unix::process::CommandExt::process_group(&mut cmd, 0);
        let mut child = cmd
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|source| LabError::Spawn {
                cmd: shown.clone(),
                source,
            })?;
        let stdout = child.stdout.take();
        let (tx, rx) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let mut line = String::new();
            if let Some(out) = stdout {
                let _ = BufReader::new(out).read_line(&mut line);
            }
            let _ = tx.send(line);
        });
        let line = rx.recv_timeout(Duration::from_secs(10)).unwrap_or_default();
        if line.trim() != "ready" {
            let _ = child.kill();
            let _ = child.wait();
            return Err(LabError::Command {
                cmd: shown,
                status: "server did not start".into(),
                stderr: line,
            });
        }
        self.servers.push(child);
        Ok(())
    }

    /// The lab's tag (namespaces are `nrl-TAG-MEMBER`).
    pub fn tag(&self) -> &str {
        &self.tag
    }

    /// The cluster as it is now (faults may have changed it).
    pub fn spec(&self) -> &ClusterSpec {
        &self.spec
    }

    /// Member names (`sw`, `gw`, `ext`, nodes, pods) → namespace names.
    pub fn namespaces(&self) -> BTreeMap<String, String> {
        self.members
            .iter()
            .map(|(m, ns)| (m.clone(), ns.name().to_string()))
            .collect()
    }

    /// Faults applied so far.
    pub fn faults(&self) -> &[Fault] {
        &self.faults
    }

    /// Current `flannel.1` MAC of every node.
    pub fn vtep_macs(&self) -> Vec<String> {
        self.vtep_gen
            .iter()
            .enumerate()
            .map(|(i, g)| vtep_mac(i, *g))
            .collect()
    }

    /// The cluster as a Kubernetes `List` (`kubectl get nodes,pods,services,endpointslices -A
    /// -o json`).
    pub fn cluster_json(&self) -> serde_json::Value {
        cluster_list(&self.spec, &self.vtep_macs())
    }

    /// Write [`Lab::cluster_json`] to `path`.
    pub fn write_cluster_json(&self, path: &Path) -> std::io::Result<()> {
        let text =
            serde_json::to_string_pretty(&self.cluster_json()).map_err(std::io::Error::other)?;
        std::fs::write(path, text + "\n")
    }

    /// Keep the namespaces (and servers) after this value is dropped, e.g. for `netray lab up`;
    /// returns the tag. `netray lab down TAG` removes them later.
    pub fn keep(mut self) -> String {
        self.keep = true;
        self.tag.clone()
    }

    /// Run one probe (bounded in time).
    pub fn probe(&self, probe: &Probe) -> ProbeResult {
        let ns = match self.ns(&probe.from) {
            Ok(ns) => ns.name().to_string(),
            Err(e) => {
                return ProbeResult {
                    probe: probe.clone(),
                    ok: false,
                    answered_by: None,
                    detail: e.to_string(),
                };
            }
        };
        let timeout = PROBE_TIMEOUT.as_millis().to_string();
        let cmd = match &probe.kind {
            ProbeKind::Tcp { dst, src } | ProbeKind::Udp { dst, src, .. } => {
                let proto = if matches!(probe.kind, ProbeKind::Tcp { .. }) {
                    "tcp"
                } else {
                    "udp"
                };
                let mut args = vec![
                    "probe".to_string(),
                    proto.into(),
                    dst.to_string(),
                    "--timeout-ms".into(),
                    timeout,
                ];
                if let Some(s) = src {
                    args.extend(["--bind".to_string(), s.to_string()]);
                }
                if let ProbeKind::Udp { sport: Some(p), .. } = &probe.kind {
                    args.extend(["--sport".to_string(), p.to_string()]);
                }
                self.agent.command_in(&ns, &args)
            }
            ProbeKind::Ping { dst, size } => {
                let mut c = Command::new("ip");
                c.args([
                    "netns", "exec", &ns, "ping", "-n", "-q", "-c1", "-W1", "-M", "do", "-s",
                ])
                .arg(size.to_string())
                .arg(dst.to_string());
                c
            }
        };
        let (ok, stdout, stderr) = run_bounded(cmd, PROBE_KILL_AFTER);
        let answered_by = match &probe.kind {
            ProbeKind::Ping { .. } => None,
            _ if ok => Some(stdout.clone()),
            _ => None,
        };
        ProbeResult {
            probe: probe.clone(),
            ok,
            answered_by,
            detail: if ok || stderr.is_empty() {
                stdout
            } else {
                stderr
            },
        }
    }

    /// Run many probes, several at a time; results in the same order.
    pub fn probe_all(&self, probes: &[Probe]) -> Vec<ProbeResult> {
        const PARALLEL: usize = 16;
        let mut out = Vec::with_capacity(probes.len());
        for chunk in probes.chunks(PARALLEL) {
            let results: Vec<ProbeResult> = std::thread::scope(|s| {
                let handles: Vec<_> = chunk
                    .iter()
                    .map(|p| s.spawn(move || self.probe(p)))
                    .collect();
                handles
                    .into_iter()
                    .map(|h| h.join().expect("probe thread"))
                    .collect()
            });
            out.extend(results);
        }
        out
    }

    /// Probe a load-balanced destination `tries` times (a partially broken Service fails only
    /// some tries, and less often than 1/n: LAB-NOTES) and count who answered.
    pub fn spread(&self, probe: &Probe, tries: usize) -> Spread {
        let results = self.probe_all(&vec![probe.clone(); tries]);
        let mut spread = Spread::default();
        for r in results {
            match r.answered_by {
                Some(name) if r.ok => *spread.answered.entry(name).or_default() += 1,
                _ => {
                    spread.failed += 1;
                    spread.last_error = r.detail;
                }
            }
        }
        spread
    }

    /// Probe for service port `proto` of `service` at its cluster IP.
    pub fn service_probe(&self, from: &str, service: &str, proto: Proto) -> Option<Probe> {
        let s = self.spec.service(service)?;
        let p = s.port(proto)?;
        Some(Probe {
            from: from.into(),
            kind: ProbeKind::l4(proto, std::net::SocketAddrV4::new(s.cluster_ip, p.port)),
        })
    }

    /// Probe straight at a pod's server (no Service), the endpoint-specific probe.
    pub fn pod_probe(&self, from: &str, pod: &str, proto: Proto) -> Option<Probe> {
        let p = self.spec.pod(pod)?;
        Some(Probe {
            from: from.into(),
            kind: ProbeKind::l4(proto, std::net::SocketAddrV4::new(p.ip, proto.pod_port())),
        })
    }

    /// Run a shell snippet in a member namespace.
    pub fn sh(&self, member: &str, script: &str) -> Result<String, LabError> {
        let out = self.ns(member)?.sh(script)?;
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    fn node_index(&self, node: &str) -> Result<usize, LabError> {
        self.spec
            .node_index(node)
            .ok_or_else(|| unknown("node", node))
    }

    /// Apply one fault.
    pub fn apply(&mut self, fault: &Fault) -> Result<(), LabError> {
        match fault {
            Fault::ForwardDrop { node } => {
                self.node_index(node)?;
                let ns = self.ns(node)?;
                ns.exec("iptables", &["-w", "-P", "FORWARD", "DROP"])?;
                ns.exec(
                    "iptables",
                    &[
                        "-w",
                        "-D",
                        "FORWARD",
                        "-m",
                        "comment",
                        "--comment",
                        "flanneld forward",
                        "-j",
                        "FLANNEL-FWD",
                    ],
                )?;
            }
            Fault::IpForwardOff { node } => {
                self.node_index(node)?;
                self.ns(node)?.sysctl("net.ipv4.ip_forward", "0")?;
            }
            Fault::StaleVtep { node, stale_on } => {
                let a = self.node_index(node)?;
                for s in stale_on {
                    if self.node_index(s)? == a {
                        return Err(unknown("stale peer (the rebooted node itself)", s));
                    }
                }
                let old = vtep_mac(a, self.vtep_gen[a]);
                self.vtep_gen[a] = self.vtep_gen[a].wrapping_add(1);
                let new = vtep_mac(a, self.vtep_gen[a]);
                let ns = self.ns(node)?;
                ns.ip(&["link", "set", "flannel.1", "address", &new])?;
                // A MAC change flushes the device's neighbours, PERMANENT ones included; the
                // rebooted node's flanneld writes its own entries again.
                let lines: Vec<String> = (0..self.spec.nodes.len())
                    .filter(|&m| m != a)
                    .map(|m| {
                        format!(
                            "neigh replace {} lladdr {} dev flannel.1 nud permanent",
                            vtep_ip(m),
                            vtep_mac(m, self.vtep_gen[m])
                        )
                    })
                    .collect();
                ns.ip_batch(&lines)?;
                for (m, peer) in self.spec.nodes.iter().enumerate() {
                    let stale = stale_on.is_empty() || stale_on.contains(&peer.name);
                    if m == a || stale {
                        continue;
                    }
                    let ns = self.ns(&peer.name)?;
                    ns.ip(&[
                        "neigh",
                        "replace",
                        &vtep_ip(a).to_string(),
                        "lladdr",
                        &new,
                        "dev",
                        "flannel.1",
                        "nud",
                        "permanent",
                    ])?;
                    ns.bridge_batch(&[
                        format!("fdb del {old} dev flannel.1 dst {}", node_ip(a)),
                        format!("fdb append {new} dev flannel.1 dst {}", node_ip(a)),
                    ])?;
                }
            }
            Fault::RpFilterAsymmetric { node } => {
                let i = self.node_index(node)?;
                let gw = self.ns("gw")?;
                let ns = self.ns(node)?;
                let port = format!("to-{node}");
                ns.veth("eth1", gw, &port)?;
                gw.ip_batch(&[
                    format!("addr add 172.31.{i}.1/30 dev {port}"),
                    format!("link set {port} up"),
                ])?;
                ns.ip_batch(&[
                    format!("addr add 172.31.{i}.2/30 dev eth1"),
                    "link set eth1 up".into(),
                    format!("route add {EXTERNAL_IP}/32 via 172.31.{i}.1 dev eth1"),
                ])?;
                ns.sysctl("net.ipv4.conf.all.rp_filter", "1")?;
                ns.sysctl("net.ipv4.conf.eth0.rp_filter", "1")?;
            }
            Fault::MissingRoute { node, peer } => {
                self.node_index(node)?;
                let p = self.node_index(peer)?;
                let cidr = self.spec.nodes[p].pod_cidr.clone();
                self.ns(node)?.ip(&["route", "del", &cidr])?;
            }
            Fault::PodNoDefaultRoute { pod } => {
                self.spec.pod(pod).ok_or_else(|| unknown("pod", pod))?;
                self.ns(pod)?.ip(&["route", "del", "default"])?;
            }
            Fault::PolicyDrop { pod } => {
                let p = self
                    .spec
                    .pod(pod)
                    .ok_or_else(|| unknown("pod", pod))?
                    .clone();
                let node = self.spec.nodes[p.node].name.clone();
                let chain = crate::kubeproxy::chain_name(
                    "KUBE-POD-FW",
                    &format!("{}{}", p.name, p.namespace),
                );
                let rules = format!(
                    "*filter\n:KUBE-ROUTER-FORWARD - [0:0]\n:{chain} - [0:0]\n\
                     -I FORWARD 1 -m comment --comment \"kube-router netpol - TEMCG2JMHZYE7H7T\" -j KUBE-ROUTER-FORWARD\n\
                     -A KUBE-ROUTER-FORWARD -d {ip}/32 -m comment --comment \"rule to jump traffic destined to POD name:{name} namespace: {ns} to chain {chain}\" -j {chain}\n\
                     -A {chain} -m comment --comment \"rule for stateful firewall for pod\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
                     -A {chain} -m comment --comment \"default/deny-all: drop traffic not allowed by any network policy\" -j DROP\nCOMMIT\n",
                    ip = p.ip,
                    name = p.name,
                    ns = p.namespace,
                );
                self.ns(&node)?
                    .iptables_restore(&["-w", "--noflush"], &rules)?;
            }
            Fault::OverlayMtu => {
                let sw = self.ns("sw")?;
                let out = sw.exec("ip", &["-o", "link", "show", "master", "br0"])?;
                let ports: Vec<String> = String::from_utf8_lossy(&out.stdout)
                    .lines()
                    .filter_map(|l| l.split(':').nth(1))
                    .map(|s| s.trim().split('@').next().unwrap_or("").to_string())
                    .collect();
                sw.ip_batch(
                    &ports
                        .iter()
                        .map(|p| format!("link set {p} mtu 1400"))
                        .collect::<Vec<_>>(),
                )?;
                // The nodes still believe in 1500 (eth0) and 1450 (overlay): nobody fragments,
                // the switch silently drops what does not fit, as an underlay fabric does.
            }
            Fault::BridgeNfMasq { node } => self.add_vm(node)?,
            Fault::LocalServiceIp { node } => {
                self.node_index(node)?;
                let lb = self
                    .spec
                    .services
                    .iter()
                    .find_map(|s| s.load_balancer_ip)
                    .ok_or_else(|| unknown("LoadBalancer service", "any"))?;
                self.ns(node)?.ip_batch(&[
                    "link add kube-ipvs0 type veth peer name kube-ipvs0p".into(),
                    format!("addr add {lb}/32 dev kube-ipvs0"),
                ])?;
            }
            Fault::NoEndpoints { service } => {
                let s = self
                    .spec
                    .services
                    .iter_mut()
                    .find(|s| &s.name == service)
                    .ok_or_else(|| unknown("service", service))?;
                s.selector_app = format!("{}-scaled-to-zero", s.selector_app);
                self.sync_kube_proxy()?;
            }
            Fault::PodGone { pod } => {
                let at = self
                    .spec
                    .pods
                    .iter()
                    .position(|p| &p.name == pod)
                    .ok_or_else(|| unknown("pod", pod))?;
                // Deleting the pod's end of the veth deletes the pair (and the pod's address);
                // the namespace itself stays a lab member and is torn down with the lab.
                self.ns(pod)?.ip(&["link", "del", "eth0"])?;
                self.spec.pods.remove(at);
                self.sync_kube_proxy()?;
            }
            Fault::DropRule { pod } => {
                let p = self.spec.pod(pod).ok_or_else(|| unknown("pod", pod))?;
                let node = self.spec.nodes[p.node].name.clone();
                let ip = format!("{}/32", p.ip);
                let comment = format!("block {pod}");
                self.ns(&node)?.exec(
                    "iptables",
                    &[
                        "-w",
                        "-I",
                        "FORWARD",
                        "1",
                        "-d",
                        &ip,
                        "-m",
                        "comment",
                        "--comment",
                        &comment,
                        "-j",
                        "DROP",
                    ],
                )?;
            }
            Fault::BlackholeRoute { node, peer } => {
                self.node_index(node)?;
                let p = self.node_index(peer)?;
                let cidr = self.spec.nodes[p].pod_cidr.clone();
                self.ns(node)?
                    .ip(&["route", "replace", "blackhole", &cidr])?;
            }
            Fault::VethDown { pod } => {
                let p = self.spec.pod(pod).ok_or_else(|| unknown("pod", pod))?;
                let node = self.spec.nodes[p.node].name.clone();
                self.ns(&node)?
                    .ip(&["link", "set", &host_veth(pod), "down"])?;
            }
        }
        self.faults.push(fault.clone());
        Ok(())
    }

    /// Seed 000's VM: `vm-0` on bridge `br-vm` of `node`, gateway the router, Service `vm`.
    fn add_vm(&mut self, node: &str) -> Result<(), LabError> {
        let i = self.node_index(node)?;
        let pod = PodSpec {
            name: "vm-0".into(),
            namespace: "default".into(),
            node: i,
            ip: VM_IP,
            app: "vm".into(),
            network: PodNetwork::VmBridge,
        };
        let gw = self.ns("gw")?;
        let ns = self.ns(node)?;
        ns.ip_batch(&[
            "link add br-vm type bridge".into(),
            format!("link set br-vm address {}", mac(0xb0, 0, i)),
            "link set br-vm up".into(),
        ])?;
        ns.veth("vm-uplink", gw, "eth-vm")?;
        ns.ip_batch(&[
            "link set vm-uplink master br-vm".into(),
            "link set vm-uplink up".into(),
        ])?;
        gw.ip_batch(&[
            format!("addr add {VM_GATEWAY}/24 dev eth-vm"),
            "link set eth-vm up".into(),
        ])?;
        self.spec.pods.push(pod.clone());
        self.build_pod(&pod)?;
        self.spec.services.push(ServiceSpec {
            name: "vm".into(),
            namespace: "default".into(),
            kind: ServiceKind::ClusterIp,
            cluster_ip: VM_CLUSTER_IP,
            ports: vec![ServicePortSpec {
                name: "http".into(),
                proto: Proto::Tcp,
                port: 80,
                target_port: crate::spec::POD_TCP_PORT,
                node_port: None,
            }],
            selector_app: "vm".into(),
            load_balancer_ip: None,
            external_traffic_local: false,
            health_check_node_port: None,
        });
        // In seed 000 the SYN reaches the VM through the trunk uplink VLAN-tagged, which
        // br_netfilter leaves alone (bridge-nf-filter-vlan-tagged=0), while the VM's untagged
        // reply is bridged through iptables. This kernel has no VLAN devices, so the router
        // delivers to the VM over a direct link instead: the request bypasses the node's bridge
        // hooks, the reply crosses them, as there.
        let gw = self.ns("gw")?;
        gw.veth("eth-vmd", self.ns("vm-0")?, "eth1")?;
        gw.ip_batch(&[
            "link set eth-vmd up".into(),
            format!("route add {VM_IP}/32 dev eth-vmd"),
        ])?;
        self.ns("vm-0")?.ip(&["link", "set", "eth1", "up"])?;
        self.sync_kube_proxy()?;
        self.start_pod_server(&pod)
    }
}

fn unknown(what: &str, name: &str) -> LabError {
    LabError::Command {
        cmd: format!("{what} {name}"),
        status: "unknown".into(),
        stderr: format!("no such {what} `{name}` in the lab"),
    }
}

/// Who answered a repeated probe.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Spread {
    /// Server name → answers.
    pub answered: BTreeMap<String, usize>,
    /// Tries without an answer.
    pub failed: usize,
    /// Error text of the last failure.
    pub last_error: String,
}

impl Drop for Lab {
    fn drop(&mut self) {
        if self.keep {
            for (_, ns) in std::mem::take(&mut self.members) {
                ns.leak();
            }
            return;
        }
        for c in &mut self.servers {
            let _ = c.kill();
            let _ = c.wait();
        }
        // Members drop (and delete their namespaces) with the map.
    }
}

/// Lab namespaces grouped by tag (`nrl-TAG-MEMBER` → TAG → namespaces).
pub fn labs_on_host() -> BTreeMap<String, Vec<String>> {
    let mut by_tag: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for ns in crate::netns::list_lab_namespaces() {
        let tag = ns
            .strip_prefix(&format!("{LAB_PREFIX}-"))
            .and_then(|r| r.split('-').next())
            .unwrap_or("")
            .to_string();
        by_tag.entry(tag).or_default().push(ns);
    }
    by_tag
}

/// Delete every namespace of lab `tag` (or of every lab when `tag` is `None`); returns the
/// names deleted. Only `nrl-` namespaces are ever touched.
pub fn down(tag: Option<&str>) -> Result<Vec<String>, LabError> {
    let mut deleted = Vec::new();
    for (t, names) in labs_on_host() {
        if tag.is_some_and(|want| want != t) {
            continue;
        }
        for ns in names {
            crate::netns::delete_by_name(&ns)?;
            deleted.push(ns);
        }
    }
    Ok(deleted)
}
