//! Kernel-checked flow matrices: the flows a test asks netray about, the kernel's answer for
//! each of them per endpoint (who answered, and for the endpoints that never did, on which leg
//! and at which node the packets were lost), and netray's answer (`netray diagnose -o json`)
//! read back for comparison.
//!
//! Where packets are lost is measured, not assumed: while a flow is probed, a counting-only
//! nftables table (`nrl_watch`, hook prerouting, priority -400, no verdicts) in the involved
//! namespaces counts requests arriving in the endpoint's pod, requests arriving at the
//! endpoint's node over `flannel.1` and replies arriving back at the entry node over
//! `flannel.1`; the `otherhost` drop counter of `flannel.1` counts decapsulated frames whose
//! inner MAC the node does not own (a stale VXLAN neighbour: the frame reached that node and
//! died there, below IP). The table is deleted after each flow, so a bundle collected later
//! does not see it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{Ipv4Addr, SocketAddrV4};
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use serde_json::Value;

use crate::fault::Fault;
use crate::lab::Lab;
use crate::netns::LabError;
use crate::probe::{Probe, ProbeKind, run_bounded};
use crate::spec::{ClusterSpec, Proto, node_ip};

/// Tries per round for a load-balanced flow (all at once: they mostly wait for timeouts).
pub const ROUND: usize = 36;
/// Most tries for a load-balanced flow (rounds stop early once every endpoint answered).
pub const MAX_TRIES: usize = 72;
/// Tries for a flow to one destination.
pub const DIRECT_TRIES: usize = 2;

/// Which way a lost packet was going.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Leg {
    /// The request.
    Forward,
    /// The reply.
    Reply,
}

impl Leg {
    /// `forward` / `reply`, as netray's JSON writes it.
    pub fn as_str(self) -> &'static str {
        match self {
            Leg::Forward => "forward",
            Leg::Reply => "reply",
        }
    }
}

/// One endpoint a flow can end at: a pod behind a Service, the pod addressed, or a node.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Target {
    /// Name the server answers with (pod name, `nodeN healthz`).
    pub server: String,
    /// Address after DNAT.
    pub ip: Ipv4Addr,
    /// Port after DNAT (`None` for ICMP).
    pub port: Option<u16>,
    /// Node hosting it.
    pub node: String,
    /// Lab member of the pod, when it is one (where arrivals are counted).
    pub pod: Option<String>,
}

/// A flow of the matrix: how netray is asked about it and how the kernel is probed.
#[derive(Debug, Clone)]
pub struct MatrixFlow {
    /// Short name for tables (`web-0 -> svc web:80/tcp`).
    pub name: String,
    /// `netray diagnose --from`.
    pub from: String,
    /// `netray diagnose --to`.
    pub to: String,
    /// Further `netray diagnose` arguments (`--proto icmp --size 1420`).
    pub args: Vec<String>,
    /// The real probe.
    pub probe: Probe,
    /// Node where the request enters the cluster's datapath (the client's node, or the node
    /// an external client sends to).
    pub entry: String,
    /// Endpoints it can end at.
    pub targets: Vec<Target>,
    /// Load-balanced: probed many times, judged per endpoint.
    pub balanced: bool,
    /// Proto of the probe (`None` for ICMP).
    pub proto: Option<Proto>,
}

fn pod_target(spec: &ClusterSpec, pod: &str, port: Option<u16>) -> Target {
    let p = spec.pod(pod).unwrap_or_else(|| panic!("no pod {pod}"));
    Target {
        server: p.name.clone(),
        ip: p.ip,
        port,
        node: spec.nodes[p.node].name.clone(),
        pod: Some(p.name.clone()),
    }
}

fn node_of_member(spec: &ClusterSpec, member: &str) -> String {
    match spec.pod(member) {
        Some(p) => spec.nodes[p.node].name.clone(),
        None => member.to_string(),
    }
}

fn diag_source(spec: &ClusterSpec, member: &str) -> String {
    match spec.pod(member) {
        Some(p) => format!("pod/{}/{}", p.namespace, p.name),
        None => format!("node/{member}"),
    }
}

/// `from` (a pod or node member) → pod `to`, straight at its server port.
pub fn pod_flow(spec: &ClusterSpec, from: &str, to: &str, proto: Proto) -> MatrixFlow {
    let t = pod_target(spec, to, Some(proto.pod_port()));
    let ns = &spec.pod(to).expect("pod").namespace;
    let suffix = if proto == Proto::Udp { "/udp" } else { "" };
    MatrixFlow {
        name: format!("{from} -> {to}:{}/{}", proto.pod_port(), proto.lower()),
        from: diag_source(spec, from),
        to: format!("pod/{ns}/{to}:{}{suffix}", proto.pod_port()),
        args: Vec::new(),
        probe: Probe {
            from: from.into(),
            kind: ProbeKind::l4(proto, SocketAddrV4::new(t.ip, proto.pod_port())),
        },
        entry: node_of_member(spec, from),
        targets: vec![t],
        balanced: false,
        proto: Some(proto),
    }
}

/// `from` (a pod or node member) → the ClusterIP of `service`, port with `proto`.
pub fn service_flow(spec: &ClusterSpec, from: &str, service: &str, proto: Proto) -> MatrixFlow {
    let s = spec.service(service).expect("service");
    let port = s.port(proto).expect("service port");
    let targets = spec
        .endpoints(s)
        .iter()
        .map(|e| pod_target(spec, &e.pod, Some(port.target_port)))
        .collect();
    let suffix = if proto == Proto::Udp { "/udp" } else { "" };
    MatrixFlow {
        name: format!("{from} -> svc {service}:{}/{}", port.port, proto.lower()),
        from: diag_source(spec, from),
        to: format!("svc/{}/{}:{}{suffix}", s.namespace, s.name, port.port),
        args: Vec::new(),
        probe: Probe {
            from: from.into(),
            kind: ProbeKind::l4(proto, SocketAddrV4::new(s.cluster_ip, port.port)),
        },
        entry: node_of_member(spec, from),
        targets,
        balanced: true,
        proto: Some(proto),
    }
}

/// The external client → `node`'s NodePort of `service` (TCP).
pub fn node_port_flow(spec: &ClusterSpec, service: &str, node: &str) -> MatrixFlow {
    let s = spec.service(service).expect("service");
    let port = s.port(Proto::Tcp).expect("tcp port");
    let np = port.node_port.expect("node port");
    let i = spec.node_index(node).expect("node");
    let targets = spec
        .endpoints(s)
        .iter()
        .map(|e| pod_target(spec, &e.pod, Some(port.target_port)))
        .collect();
    MatrixFlow {
        name: format!("ext -> {node}:{np}/tcp ({service})"),
        from: format!("external/{}", crate::spec::EXTERNAL_IP),
        to: format!("{}:{np}", node_ip(i)),
        args: Vec::new(),
        probe: Probe::tcp("ext", node_ip(i), np),
        entry: node.into(),
        targets,
        balanced: true,
        proto: Some(Proto::Tcp),
    }
}

/// A DF ping of `ip_size` bytes (IP packet) from pod `from` to pod `to`.
pub fn ping_flow(spec: &ClusterSpec, from: &str, to: &str, ip_size: u16) -> MatrixFlow {
    let t = pod_target(spec, to, None);
    let ns = &spec.pod(to).expect("pod").namespace;
    MatrixFlow {
        name: format!("{from} -> {to} ping {ip_size}B"),
        from: diag_source(spec, from),
        to: format!("pod/{ns}/{to}"),
        args: vec![
            "--proto".into(),
            "icmp".into(),
            "--size".into(),
            ip_size.to_string(),
        ],
        probe: Probe::ping(from, t.ip, ip_size - 28),
        entry: node_of_member(spec, from),
        targets: vec![t],
        balanced: false,
        proto: None,
    }
}

/// A TCP connection from lab member `from` bound to source `src` (e.g. the LB health
/// prober at the LoadBalancer IP) to `node`'s `port`, served by the node itself.
pub fn node_port_from(
    spec: &ClusterSpec,
    from: &str,
    src: Ipv4Addr,
    node: &str,
    port: u16,
) -> MatrixFlow {
    let i = spec.node_index(node).expect("node");
    MatrixFlow {
        name: format!("{from}({src}) -> {node}:{port}/tcp"),
        from: format!("external/{src}"),
        to: format!("{}:{port}", node_ip(i)),
        args: Vec::new(),
        probe: Probe::tcp(from, node_ip(i), port).from_source(src),
        entry: node.into(),
        targets: vec![Target {
            server: format!("{node} healthz"),
            ip: node_ip(i),
            port: Some(port),
            node: node.into(),
            pod: None,
        }],
        balanced: false,
        proto: Some(Proto::Tcp),
    }
}

/// The standard matrix: from the first pod of every node to the `web` Service (TCP and UDP)
/// and to every pod on the other nodes plus its same-node neighbour (TCP); from every node to
/// the `web` Service (TCP).
pub fn standard_flows(spec: &ClusterSpec) -> Vec<MatrixFlow> {
    let mut v = Vec::new();
    let first: Vec<String> = (0..spec.nodes.len())
        .filter_map(|i| {
            spec.pods
                .iter()
                .find(|p| p.node == i)
                .map(|p| p.name.clone())
        })
        .collect();
    let has_web = spec.service("web").is_some();
    for src in &first {
        if has_web {
            v.push(service_flow(spec, src, "web", Proto::Tcp));
            v.push(service_flow(spec, src, "web", Proto::Udp));
        }
        for p in &spec.pods {
            if &p.name != src && p.network == crate::spec::PodNetwork::Cni {
                v.push(pod_flow(spec, src, &p.name, Proto::Tcp));
            }
        }
    }
    if has_web {
        for n in &spec.nodes {
            v.push(service_flow(spec, &n.name, "web", Proto::Tcp));
        }
    }
    v
}

/// The kernel's outcome for one endpoint of a flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TargetTruth {
    /// Tries it answered.
    pub answered: usize,
    /// For an endpoint that never answered: the leg and node where its packets were lost
    /// (`None` when not measurable, e.g. a node's own server).
    pub lost: Option<(Leg, String)>,
    /// Measured evidence (counters) behind `lost`.
    pub detail: String,
}

impl TargetTruth {
    /// Answered at least once.
    pub fn reachable(&self) -> bool {
        self.answered > 0
    }
}

/// The kernel's outcome for one flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowTruth {
    /// Tries.
    pub tries: usize,
    /// Tries without an answer.
    pub failed: usize,
    /// Error of the last failed try.
    pub last_error: String,
    /// Endpoint address → outcome.
    pub targets: BTreeMap<Ipv4Addr, TargetTruth>,
    /// Answers from servers that are not targets of the flow.
    pub strays: BTreeMap<String, usize>,
}

impl FlowTruth {
    /// `reachable`, `unreachable` or `partial`, as netray's verdicts are named.
    pub fn verdict(&self) -> &'static str {
        let ok = self.targets.values().filter(|t| t.reachable()).count();
        if ok == self.targets.len() && self.failed == 0 {
            "reachable"
        } else if ok == 0 {
            "unreachable"
        } else {
            "partial"
        }
    }

    /// Addresses of the endpoints that never answered.
    pub fn failing(&self) -> BTreeSet<Ipv4Addr> {
        self.targets
            .iter()
            .filter(|(_, t)| !t.reachable())
            .map(|(ip, _)| *ip)
            .collect()
    }
}

/// nftables match of a request to `t` (`ip daddr … tcp dport …`).
fn request_match(t: &Target, proto: Option<Proto>) -> String {
    match (proto, t.port) {
        (Some(p), Some(port)) => format!("ip daddr {} {} dport {port}", t.ip, p.lower()),
        _ => format!("ip daddr {} ip protocol icmp", t.ip),
    }
}

/// nftables match of a reply from `t`.
fn reply_match(t: &Target, proto: Option<Proto>) -> String {
    match (proto, t.port) {
        (Some(p), Some(port)) => format!("ip saddr {} {} sport {port}", t.ip, p.lower()),
        _ => format!("ip saddr {} ip protocol icmp", t.ip),
    }
}

const WATCH: &str = "nrl_watch";

impl Lab {
    /// `flannel.1`'s (rx packets, otherhost drops) on `node`.
    fn vxlan_rx(&self, node: &str) -> (u64, u64) {
        let Ok(ns) = self.ns(node) else {
            return (0, 0);
        };
        let Ok(out) = ns.ip(&["-s", "-s", "-j", "link", "show", "flannel.1"]) else {
            return (0, 0);
        };
        let v: Value = serde_json::from_slice(&out.stdout).unwrap_or(Value::Null);
        let rx = &v[0]["stats64"]["rx"];
        (
            rx["packets"].as_u64().unwrap_or(0),
            rx["otherhost"].as_u64().unwrap_or(0),
        )
    }

    /// Install the counting table in `member` with `rules` (name, match).
    fn watch(&self, member: &str, rules: &[(String, String)]) -> Result<(), LabError> {
        let mut script = format!("table ip {WATCH} {{\n");
        for (name, _) in rules {
            script += &format!("  counter {name} {{ }}\n");
        }
        script += "  chain pre {\n    type filter hook prerouting priority -400; policy accept;\n";
        for (name, m) in rules {
            script += &format!("    {m} counter name \"{name}\"\n");
        }
        script += "  }\n}\n";
        let ns = self.ns(member)?;
        let _ = ns.exec("nft", &["delete", "table", "ip", WATCH]);
        let mut cmd = ns.command("nft");
        cmd.args(["-f", "-"]);
        crate::netns::run_with_input(&mut cmd, &script, None)
    }

    /// Read and delete the counting table in `member`: counter name → packets.
    fn unwatch(&self, member: &str) -> BTreeMap<String, u64> {
        let mut out = BTreeMap::new();
        let Ok(ns) = self.ns(member) else {
            return out;
        };
        if let Ok(o) = ns.exec("nft", &["-j", "list", "table", "ip", WATCH]) {
            let v: Value = serde_json::from_slice(&o.stdout).unwrap_or(Value::Null);
            for item in v["nftables"].as_array().into_iter().flatten() {
                let c = &item["counter"];
                if let (Some(n), Some(p)) = (c["name"].as_str(), c["packets"].as_u64()) {
                    out.insert(n.to_string(), p);
                }
            }
        }
        let _ = ns.exec("nft", &["delete", "table", "ip", WATCH]);
        out
    }

    /// Probe `flow` for real and decide, per endpoint, whether it answered and where the
    /// packets of those that never did were lost (see the module documentation).
    pub fn kernel_truth(&self, flow: &MatrixFlow) -> Result<FlowTruth, LabError> {
        // Counters: per namespace, (counter name, match).
        let mut rules: BTreeMap<String, Vec<(String, String)>> = BTreeMap::new();
        for (k, t) in flow.targets.iter().enumerate() {
            if let Some(pod) = &t.pod {
                rules
                    .entry(pod.clone())
                    .or_default()
                    .push((format!("a{k}"), request_match(t, flow.proto)));
            }
            if t.node != flow.entry {
                rules.entry(t.node.clone()).or_default().push((
                    format!("n{k}"),
                    format!("iifname \"flannel.1\" {}", request_match(t, flow.proto)),
                ));
                rules.entry(flow.entry.clone()).or_default().push((
                    format!("r{k}"),
                    format!("iifname \"flannel.1\" {}", reply_match(t, flow.proto)),
                ));
            }
        }
        let nodes: Vec<String> = self.spec().nodes.iter().map(|n| n.name.clone()).collect();
        let mut result = (|| {
            for (member, r) in &rules {
                self.watch(member, r)?;
            }
            let before: BTreeMap<&String, (u64, u64)> =
                nodes.iter().map(|n| (n, self.vxlan_rx(n))).collect();
            let mut truth = FlowTruth {
                tries: 0,
                failed: 0,
                last_error: String::new(),
                targets: BTreeMap::new(),
                strays: BTreeMap::new(),
            };
            let mut answered: BTreeMap<String, usize> = BTreeMap::new();
            let (round, max) = if flow.balanced {
                (ROUND, MAX_TRIES)
            } else {
                (DIRECT_TRIES, DIRECT_TRIES)
            };
            while truth.tries < max {
                let results: Vec<_> = std::thread::scope(|s| {
                    let handles: Vec<_> = (0..round)
                        .map(|_| s.spawn(|| self.probe(&flow.probe)))
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
            let after: BTreeMap<&String, (u64, u64)> =
                nodes.iter().map(|n| (n, self.vxlan_rx(n))).collect();
            let oh = |n: &String| -> u64 {
                let a = after.get(n).map_or(0, |a| a.1);
                let b = before.get(n).map_or(0, |b| b.1);
                a.saturating_sub(b)
            };
            let mut counters: BTreeMap<(String, String), u64> = BTreeMap::new();
            for member in rules.keys() {
                for (name, v) in self.unwatch(member) {
                    counters.insert((member.clone(), name), v);
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
                    let (oh_node, oh_entry) = (oh(&t.node), oh(&flow.entry));
                    tt.detail = format!(
                        "requests at pod {at_pod}; at {} via flannel.1 {at_node} (+{oh_node} otherhost); replies back at {} {back} (+{oh_entry} otherhost)",
                        t.node, flow.entry
                    );
                    tt.lost = Some(if at_pod > 0 {
                        let node = if remote && back == 0 && oh_entry == 0 {
                            t.node.clone()
                        } else {
                            flow.entry.clone()
                        };
                        (Leg::Reply, node)
                    } else {
                        let node = if remote && (at_node > 0 || oh_node > 0) {
                            t.node.clone()
                        } else {
                            flow.entry.clone()
                        };
                        (Leg::Forward, node)
                    });
                }
                truth.targets.insert(t.ip, tt);
            }
            truth.strays = answered;
            Ok(truth)
        })();
        // Never leave a counting table behind, also on error.
        for member in rules.keys() {
            let _ = self.unwatch(member);
        }
        if let Ok(t) = &mut result {
            t.strays.retain(|_, n| *n > 0);
        }
        result
    }

    /// The lab member whose namespace is `netns` (a full `nrl-…` name, as `netray collect`
    /// records pod namespaces), if it belongs to this lab.
    pub fn member_of_netns(&self, netns: &str) -> Option<String> {
        self.namespaces()
            .into_iter()
            .find(|(_, ns)| ns == netns)
            .map(|(m, _)| m)
    }

    /// Run one fix command (`sysctl`, `ip`, `bridge`, `iptables`, `ip6tables`, `nft`,
    /// `conntrack`; no namespace switching, no other programs) as root inside `member`'s
    /// namespace through `sh -c`, bounded in time. Returns its output, or why it was refused
    /// or failed.
    pub fn run_fix(&self, member: &str, run: &str) -> Result<String, String> {
        check_fix_command(run)?;
        let ns = self.ns(member).map_err(|e| e.to_string())?;
        let mut cmd = ns.command("sh");
        cmd.args(["-ec", run]);
        let (ok, out, err) = run_bounded(cmd, Duration::from_secs(20));
        if ok {
            Ok(out)
        } else {
            Err(format!("`{run}` in {}: {err}", ns.name()))
        }
    }
}

/// Refuse a fix command that is not in netray's fix vocabulary or could leave its namespace.
pub fn check_fix_command(run: &str) -> Result<(), String> {
    const ALLOWED: &[&str] = &[
        "sysctl",
        "ip",
        "bridge",
        "iptables",
        "ip6tables",
        "nft",
        "conntrack",
    ];
    if run.contains('`') || run.contains("$(") || run.contains('\n') {
        return Err(format!("fix command `{run}`: shell substitution refused"));
    }
    // `a && b` and `a; b` chains are several commands: each must qualify.
    for part in run
        .split("&&")
        .flat_map(|p| p.split(';'))
        .flat_map(|p| p.split("||"))
    {
        let words: Vec<&str> = part.split_whitespace().collect();
        let Some(prog) = words.first() else { continue };
        let prog = prog.rsplit('/').next().unwrap_or(prog);
        if !ALLOWED.contains(&prog) {
            return Err(format!(
                "fix command `{run}`: `{prog}` is not in the fix vocabulary ({})",
                ALLOWED.join(", ")
            ));
        }
        // `ip -n NS`, `ip netns exec`, `ip link set … netns NS`, `bridge -n NS`.
        if matches!(prog, "ip" | "bridge")
            && words.iter().any(|w| {
                matches!(*w, "netns" | "-n" | "-netns" | "--netns") || w.starts_with("-netns=")
            })
        {
            return Err(format!(
                "fix command `{run}`: switching namespaces is refused"
            ));
        }
        if part.contains('|') || part.contains('>') || part.contains('<') {
            return Err(format!(
                "fix command `{run}`: pipes and redirections refused"
            ));
        }
    }
    Ok(())
}

/// One failure of an endpoint, as `netray diagnose -o json` gives it (`endpoints[].failures[]`).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct NetrayFailure {
    /// Root-cause code.
    pub code: String,
    /// Node the cause is on.
    pub cause_node: String,
    /// Node where the packet was lost.
    pub node: String,
    /// `forward` or `reply`.
    pub leg: String,
    /// Disposition.
    pub disposition: String,
}

/// One endpoint of netray's answer.
#[derive(Debug, Clone, PartialEq)]
pub struct NetrayEndpoint {
    /// Endpoint address.
    pub ip: Ipv4Addr,
    /// Reachable according to netray.
    pub reachable: bool,
    /// Failures (empty when reachable).
    pub failures: Vec<NetrayFailure>,
}

/// netray's answer for one flow.
#[derive(Debug, Clone)]
pub struct Diagnosis {
    /// Exit code.
    pub code: i32,
    /// `verdict`.
    pub verdict: String,
    /// Endpoints by address.
    pub endpoints: BTreeMap<Ipv4Addr, NetrayEndpoint>,
    /// The whole JSON.
    pub json: Value,
}

impl Diagnosis {
    /// Parse `netray diagnose -o json` output.
    pub fn parse(code: i32, json: Value) -> Result<Diagnosis, String> {
        let mut endpoints = BTreeMap::new();
        for e in json["endpoints"].as_array().ok_or("no endpoints[]")? {
            let ep = e["endpoint"].as_str().unwrap_or("");
            let ip: Ipv4Addr = ep
                .split(':')
                .next()
                .unwrap_or("")
                .parse()
                .map_err(|_| format!("endpoint `{ep}` is not IPv4[:PORT]"))?;
            let s = |v: &Value, k: &str| v[k].as_str().unwrap_or("").to_string();
            let failures = e["failures"]
                .as_array()
                .into_iter()
                .flatten()
                .map(|f| NetrayFailure {
                    code: s(f, "code"),
                    cause_node: s(f, "cause_node"),
                    node: s(f, "node"),
                    leg: s(f, "leg"),
                    disposition: s(f, "disposition"),
                })
                .collect();
            let reachable = e["reachable"].as_bool().unwrap_or(false);
            // The same address can appear once per port; it is reachable only if all are.
            let entry = endpoints.entry(ip).or_insert(NetrayEndpoint {
                ip,
                reachable,
                failures: Vec::new(),
            });
            entry.reachable &= reachable;
            entry.failures.extend::<Vec<NetrayFailure>>(failures);
        }
        Ok(Diagnosis {
            code,
            verdict: json["verdict"].as_str().unwrap_or("").to_string(),
            endpoints,
            json,
        })
    }
}

/// Run `netray diagnose --bundle BUNDLE --from … --to … [args] [extra] -o json`. The
/// matrix's TCP probes carry a few bytes each way, so a TCP flow without a size is asked with
/// `--size 60` (the handshake's size): without it netray also walks full-size data segments,
/// which these probes do not send (that is compared with the kernel in `tcp_data_lab.rs`).
pub fn diagnose(
    netray: &Path,
    bundle: &Path,
    flow: &MatrixFlow,
    extra: &[String],
) -> Result<Diagnosis, String> {
    let mut cmd = Command::new(netray);
    cmd.arg("diagnose")
        .arg("--bundle")
        .arg(bundle)
        .args(["--from", &flow.from, "--to", &flow.to])
        .args(&flow.args)
        .args(extra)
        .args(["-o", "json"]);
    let sized = flow.args.iter().chain(extra).any(|a| a == "--size");
    if flow.proto == Some(Proto::Tcp) && !sized {
        cmd.args(["--size", "60"]);
    }
    let out = cmd
        .output()
        .map_err(|e| format!("cannot run {}: {e}", netray.display()))?;
    let code = out.status.code().unwrap_or(-1);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let json: Value = serde_json::from_str(&stdout).map_err(|e| {
        format!(
            "netray diagnose --from {} --to {} {:?} (exit {code}) printed no JSON ({e}): {}",
            flow.from,
            flow.to,
            extra,
            String::from_utf8_lossy(&out.stderr).trim()
        )
    })?;
    Diagnosis::parse(code, json)
}

/// The (code, node) pairs netray should name for `fault`; node `None` means any node.
pub fn expected_causes(fault: &Fault, spec: &ClusterSpec) -> Vec<(String, Option<String>)> {
    let pod_node = |pod: &str| spec.pod(pod).map(|p| spec.nodes[p.node].name.clone());
    let one = |code: &str, node: Option<String>| vec![(code.to_string(), node)];
    match fault {
        Fault::ForwardDrop { node } => one("forward-policy-drop", Some(node.clone())),
        Fault::IpForwardOff { node } => one("ip-forward-disabled", Some(node.clone())),
        Fault::StaleVtep { node, stale_on } => {
            let holders: Vec<String> = if stale_on.is_empty() {
                spec.nodes
                    .iter()
                    .map(|n| n.name.clone())
                    .filter(|n| n != node)
                    .collect()
            } else {
                stale_on.clone()
            };
            holders
                .into_iter()
                .flat_map(|h| {
                    [
                        ("stale-vxlan-neighbor".to_string(), Some(h.clone())),
                        ("stale-vxlan-fdb".to_string(), Some(h)),
                    ]
                })
                .collect()
        }
        Fault::RpFilterAsymmetric { node } => one("rp-filter-drop", Some(node.clone())),
        Fault::MissingRoute { node, .. } => one("no-route", Some(node.clone())),
        Fault::PodNoDefaultRoute { pod } => one("pod-no-default-route", pod_node(pod)),
        Fault::PolicyDrop { pod } => one("network-policy-drop", pod_node(pod)),
        Fault::OverlayMtu => one("mtu-blackhole", None),
        Fault::BridgeNfMasq { node } => one("bridge-nf-snat-conflict", Some(node.clone())),
        Fault::LocalServiceIp { node } => one("martian-source", Some(node.clone())),
        Fault::NoEndpoints { .. } => one("no-endpoints", None),
        Fault::PodGone { .. } => one("stale-conntrack-entry", None),
        Fault::DropRule { pod } => one("iptables-drop-rule", pod_node(pod)),
        Fault::BlackholeRoute { node, .. } => one("blackhole-route", Some(node.clone())),
        Fault::VethDown { pod } => one("interface-down", pod_node(pod)),
    }
}

/// Whether a failure's (code, cause node) is one of `fault`'s expected causes.
pub fn failure_is_from(f: &NetrayFailure, fault: &Fault, spec: &ClusterSpec) -> bool {
    expected_causes(fault, spec)
        .iter()
        .any(|(c, n)| *c == f.code && n.as_ref().is_none_or(|n| *n == f.cause_node))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fix_commands_stay_in_their_namespace_and_vocabulary() {
        for ok in [
            "iptables -t filter -I FORWARD 1 -s 10.244.0.0/16 -j ACCEPT",
            "sysctl -w net.ipv4.ip_forward=1",
            "ip neigh replace 10.244.2.0 lladdr 0e:6e:72:01:00:02 dev flannel.1 nud permanent && bridge fdb append 0e:6e:72:01:00:02 dev flannel.1 dst 192.168.50.12",
            "conntrack -D -p udp --orig-port-src 5300",
            "/usr/sbin/ip route replace 10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink",
        ] {
            assert_eq!(check_fix_command(ok), Ok(()), "{ok}");
        }
        for bad in [
            "ip netns exec other ip route flush all",
            "ip -n nrl-1x0-node1 route del default",
            "ip link set eth0 netns 1",
            "bridge -n other fdb flush",
            "rm -rf /",
            "sysctl -w net.ipv4.ip_forward=1; reboot",
            "ip route show | sh",
            "ip route add $(cat /etc/x) dev eth0",
            "echo 1 > /proc/sys/net/ipv4/ip_forward",
        ] {
            assert!(check_fix_command(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn diagnosis_endpoints_by_address() {
        let json = serde_json::json!({
            "verdict": "partial",
            "endpoints": [
                {"endpoint": "10.244.0.2:8080", "reachable": true},
                {"endpoint": "10.244.1.2:8080", "reachable": false, "failures": [
                    {"code": "forward-policy-drop", "cause_node": "node1", "node": "node1",
                     "leg": "forward", "disposition": "dropped"}]}
            ]
        });
        let d = Diagnosis::parse(1, json).unwrap();
        let ep = &d.endpoints[&"10.244.1.2".parse::<Ipv4Addr>().unwrap()];
        assert!(!ep.reachable);
        let f = &ep.failures[0];
        let spec = ClusterSpec::standard(3, 2);
        assert!(failure_is_from(
            f,
            &"forward-drop:node1".parse().unwrap(),
            &spec
        ));
        assert!(!failure_is_from(
            f,
            &"forward-drop:node2".parse().unwrap(),
            &spec
        ));
        assert!(!failure_is_from(
            f,
            &"stale-vtep:node1:node0".parse().unwrap(),
            &spec
        ));
    }
}
