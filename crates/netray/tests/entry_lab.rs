//! Where a flow enters, checked against the kernel (issue 10 items 2, 3 and 5), in the
//! flannel lab of `netray-lab`:
//!
//! - item 2, node-originated traffic: the kernel picks the source per destination (a route's
//!   `src`, else the egress device's address), not the node's InternalIP; netray's walk must
//!   pick the same one and agree on what follows from it;
//! - item 3, an outside client reaching a node address on a secondary interface (a storage
//!   LAN) arrives on that interface, whose `rp_filter` decides; netray must enter there (and,
//!   when the router sends it over another interface, `IP@node/NAME%IFACE` says so);
//! - item 5, an outside client reaching a LoadBalancer Service by name: one walk per node the
//!   load balancer sends to (`externalTrafficPolicy` Cluster and Local), compared per entry
//!   node and endpoint with the kernel.
//!
//! Per case: the lab is built, TCP probes are sent for real (each server answers with its
//! name), where the kernel lost a flow is read from its counters (`/proc/net/netstat`,
//! iptables rule counters), the nodes are collected and `netray diagnose -o json` asked about
//! the same flows. Per flow the servers that answered must be the endpoints netray calls
//! reachable; a flow the kernel never completed must be unreachable for netray, failing at the
//! node and for the reason the kernel's counters show. Needs root (skipped with a message
//! otherwise, failing under `CI=true`).

use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::process::Command;
use std::sync::Mutex;

use netray_lab::{Agent, ClusterSpec, Lab, Probe, lab_tests_can_run};
use serde_json::Value;

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");
static SERIAL: Mutex<()> = Mutex::new(());

fn agent() -> Agent {
    Agent::subcommand(NETRAY, &["lab", "agent"])
}

fn sh(lab: &Lab, member: &str, script: &str) -> String {
    lab.sh(member, script)
        .unwrap_or_else(|e| panic!("{member}: {script}: {e}"))
}

/// A counter of a member's namespace from `/proc/net/netstat` or `/proc/net/snmp` (pairs
/// of header and value lines).
fn netstat(lab: &Lab, member: &str, file: &str, field: &str) -> u64 {
    let text = sh(lab, member, &format!("cat /proc/net/{file}"));
    let lines: Vec<&str> = text.lines().collect();
    for pair in lines.chunks(2) {
        let [names, values] = pair else { continue };
        let names: Vec<&str> = names.split_whitespace().collect();
        let values: Vec<&str> = values.split_whitespace().collect();
        if let Some(i) = names.iter().position(|n| *n == field) {
            return values.get(i).and_then(|v| v.parse().ok()).unwrap_or(0);
        }
    }
    panic!("{member}: no {field} in /proc/net/{file}");
}

/// Packets counted by the rules of `table`/`chain` whose text contains `needle`.
fn rule_packets(lab: &Lab, member: &str, table: &str, chain: &str, needle: &str) -> u64 {
    sh(
        lab,
        member,
        &format!("iptables -w -t {table} -L {chain} -v -n -x"),
    )
    .lines()
    .filter(|l| l.contains(needle))
    .filter_map(|l| l.split_whitespace().next()?.parse::<u64>().ok())
    .sum()
}

/// What the kernel did with one flow: the servers that answered and how many tries failed.
struct Kernel {
    answered: BTreeSet<String>,
    failed: usize,
    last_error: String,
}

fn kernel(lab: &Lab, from: &str, dst: &str, tries: usize) -> Kernel {
    let (ip, port) = dst.rsplit_once(':').expect("IP:PORT");
    let probe = Probe::tcp(from, ip.parse().expect("ip"), port.parse().expect("port"));
    let s = lab.spread(&probe, tries);
    Kernel {
        answered: s.answered.keys().cloned().collect(),
        failed: s.failed,
        last_error: s.last_error,
    }
}

/// netray's answer for one walked flow (one entry node of a LoadBalancer Service, or the
/// whole flow): the servers it calls reachable, where its failing branches end, the sources
/// its walks gave the packet and how it says the flow started.
#[derive(Debug, Default)]
struct Ours {
    reachable: BTreeSet<String>,
    failures: BTreeSet<(String, String)>,
    sources: BTreeSet<String>,
    starts: BTreeSet<String>,
}

/// Server name of an endpoint `IP:PORT` netray names: a pod's name, or `NODE healthz` for a
/// node's own address (the lab's node servers).
fn server_name(lab: &Lab, endpoint: &str, node_addrs: &BTreeMap<String, String>) -> String {
    let ip = endpoint.rsplit_once(':').map_or(endpoint, |(a, _)| a);
    if let Some(p) = lab.spec().pods.iter().find(|p| p.ip.to_string() == ip) {
        return p.name.clone();
    }
    match node_addrs.get(ip) {
        Some(n) => format!("{n} healthz"),
        None => endpoint.to_string(),
    }
}

/// `netray diagnose -o json` and `netray trace -o json` for `from` → `to`; per walked flow
/// (a branch's `flow` label), what netray says.
fn netray(
    lab: &Lab,
    dir: &Path,
    from: &str,
    to: &str,
    node_addrs: &BTreeMap<String, String>,
    with_trace: bool,
) -> (Value, BTreeMap<String, Ours>) {
    let run = |cmd: &str| -> Value {
        let out = Command::new(NETRAY)
            .args([cmd, "--bundle"])
            .arg(dir)
            .args(["--from", from, "--to", to, "-o", "json"])
            .output()
            .expect("netray");
        serde_json::from_slice(&out.stdout).unwrap_or_else(|e| {
            panic!(
                "{cmd} {from} -> {to}: no JSON ({e}): {}",
                String::from_utf8_lossy(&out.stderr)
            )
        })
    };
    let d = run("diagnose");
    let mut per: BTreeMap<String, Ours> = BTreeMap::new();
    for b in d["branches"].as_array().into_iter().flatten() {
        let flow = b["flow"].as_str().unwrap_or("").to_string();
        let o = per.entry(flow).or_default();
        let ep = b["endpoint"].as_str().unwrap_or("");
        if b["reachable"].as_bool() == Some(true) {
            o.reachable.insert(server_name(lab, ep, node_addrs));
        } else {
            // The hop the branch ended at and the diagnose failure code for it.
            let last = b["hops"].as_array().and_then(|h| h.last());
            let node = last.and_then(|h| h["node"].as_str()).unwrap_or("");
            let reason = b["reason"].as_str().unwrap_or("");
            o.failures.insert((node.to_string(), reason.to_string()));
        }
    }
    // Failure codes per endpoint, from diagnose's endpoint table (the branch JSON has none).
    let codes: BTreeSet<(String, String)> = d["endpoints"]
        .as_array()
        .into_iter()
        .flatten()
        .flat_map(|e| e["failures"].as_array().into_iter().flatten())
        .map(|f| {
            (
                f["node"].as_str().unwrap_or("").to_string(),
                f["code"].as_str().unwrap_or("").to_string(),
            )
        })
        .collect();
    for o in per.values_mut() {
        if !o.failures.is_empty() {
            o.failures = o
                .failures
                .iter()
                .flat_map(|(n, _)| codes.iter().filter(move |(m, _)| m == n).cloned())
                .collect();
        }
    }
    if !with_trace {
        return (d, per);
    }
    let t = run("trace");
    let traces: Vec<&Value> = match t.as_array() {
        Some(a) => a.iter().collect(),
        None => vec![&t],
    };
    for t in traces {
        let start = t["flow"]["start"].as_str().unwrap_or("").to_string();
        let src = t["flow"]["packet"]["src"]
            .as_str()
            .unwrap_or("")
            .to_string();
        for o in per.values_mut() {
            o.starts.insert(start.clone());
            o.sources.insert(src.clone());
        }
    }
    (d, per)
}

/// One flow of a case: client member, netray's `--from`, the probed `IP:PORT`, netray's
/// `--to`, tries, and the flow label of the walk to compare (a substring; empty: every walk).
struct Flow<'a> {
    client: &'a str,
    from: &'a str,
    dst: &'a str,
    to: &'a str,
    entry: &'a str,
    tries: usize,
    /// Where the kernel lost it (node, netray's code), proved by `lost` before and after.
    drop: Option<(&'a str, &'a str)>,
    /// The source the kernel uses (read from the client's conntrack table), when checked.
    source: Option<&'a str>,
    /// A kernel counter that must grow while the flow is lost (where the kernel lost it).
    counter: Option<Counter>,
    /// Run in a member before probing (member, script).
    setup: Option<(&'a str, &'a str)>,
    /// The client's connect() itself fails with this error (no packet leaves).
    refused: Option<&'a str>,
    /// Words netray's walk must use for where the flow starts (`entering on eth1`).
    start: Option<&'a str>,
}

impl<'a> Flow<'a> {
    fn new(client: &'a str, from: &'a str, dst: &'a str, to: &'a str) -> Flow<'a> {
        Flow {
            client,
            from,
            dst,
            to,
            entry: "",
            tries: 4,
            drop: None,
            source: None,
            counter: None,
            setup: None,
            refused: None,
            start: None,
        }
    }
    /// connect() fails in the client with `error` (the kernel's route lookup for the socket):
    /// netray must fail at `node` with `code`.
    fn refused(mut self, node: &'a str, code: &'a str, error: &'a str) -> Self {
        self.drop = Some((node, code));
        self.refused = Some(error);
        self
    }
    fn start(mut self, words: &'a str) -> Self {
        self.start = Some(words);
        self
    }
    fn entry(mut self, entry: &'a str) -> Self {
        self.entry = entry;
        self
    }
    fn tries(mut self, n: usize) -> Self {
        self.tries = n;
        self
    }
    fn source(mut self, src: &'a str) -> Self {
        self.source = Some(src);
        self
    }
    fn setup(mut self, member: &'a str, script: &'a str) -> Self {
        self.setup = Some((member, script));
        self
    }
    /// The kernel loses it at `node` (netray's code `code`), proved by `counter` growing.
    fn lost(mut self, node: &'a str, code: &'a str, counter: Counter) -> Self {
        self.drop = Some((node, code));
        self.counter = Some(counter);
        self
    }
}

/// A kernel counter: how to read it in a lab.
type Counter = Box<dyn Fn(&Lab) -> u64>;

/// Strict rp_filter drops counted in `member` (`TcpExt: IPReversePathFilter`).
fn rp_filter_drops(member: &'static str) -> Counter {
    Box::new(move |lab| netstat(lab, member, "netstat", "IPReversePathFilter"))
}

/// Locally generated packets (a SYN-ACK included) dropped for want of a route in `member`
/// (`Ip: OutNoRoutes`).
fn out_no_routes(member: &'static str) -> Counter {
    Box::new(move |lab| netstat(lab, member, "snmp", "OutNoRoutes"))
}

/// Compare every flow with the kernel.
fn compare(name: &str, lab: &Lab, flows: &[Flow<'_>]) -> tempfile::TempDir {
    let node_addrs: BTreeMap<String, String> = lab
        .spec()
        .nodes
        .iter()
        .map(|n| (n.ip.to_string(), n.name.clone()))
        .chain(std::iter::once((
            STORAGE_NODE0.to_string(),
            "node0".to_string(),
        )))
        .collect();
    let mut kernel_results = Vec::new();
    for f in flows {
        if let Some((member, script)) = f.setup {
            sh(lab, member, script);
        }
        let before = f.counter.as_ref().map(|c| c(lab));
        let k = kernel(lab, f.client, f.dst, f.tries);
        let after = f.counter.as_ref().map(|c| c(lab));
        let grew = match (before, after) {
            (Some(b), Some(a)) => Some(a > b),
            _ => None,
        };
        let src = f.source.map(|_| {
            let port = f.dst.rsplit_once(':').map(|(_, p)| p).unwrap_or("");
            let ip = f.dst.rsplit_once(':').map(|(a, _)| a).unwrap_or("");
            let ct = sh(
                lab,
                f.client,
                &format!("conntrack -L -p tcp -d {ip} --dport {port} 2>/dev/null"),
            );
            ct.lines()
                .filter_map(|l| l.split_whitespace().find_map(|w| w.strip_prefix("src=")))
                .map(str::to_string)
                .collect::<BTreeSet<_>>()
        });
        kernel_results.push((k, grew, src));
    }
    let dir = tempfile::tempdir().expect("tempdir");
    lab.collect_bundle(Path::new(NETRAY), dir.path())
        .expect("collect");
    let mut bad = Vec::new();
    let mut comparisons = 0;
    for (f, (k, grew, ksrc)) in flows.iter().zip(&kernel_results) {
        let (d, per) = netray(
            lab,
            dir.path(),
            f.from,
            f.to,
            &node_addrs,
            f.source.is_some() || f.start.is_some(),
        );
        let ours: Vec<(&String, &Ours)> = per.iter().filter(|(l, _)| l.contains(f.entry)).collect();
        let mut problems = Vec::new();
        if ours.is_empty() {
            problems.push(format!(
                "netray walked no flow matching `{}` (walks: {:?}; {})",
                f.entry,
                per.keys().collect::<Vec<_>>(),
                d["summary"]
            ));
        }
        for (label, o) in &ours {
            // Per endpoint: answered by the kernel ⇔ reachable for netray.
            let all: BTreeSet<&String> = k.answered.iter().chain(&o.reachable).collect();
            comparisons += all.len().max(1);
            if k.answered != o.reachable {
                problems.push(format!(
                    "{label}: kernel answered by {:?} ({} of {} failed: {}), netray reachable {:?}",
                    k.answered,
                    k.failed,
                    f.tries,
                    k.last_error.trim(),
                    o.reachable
                ));
            }
            if k.answered.is_empty() {
                match f.drop {
                    Some((node, code)) => {
                        if let Some(err) = f.refused {
                            if !k.last_error.contains(err) {
                                problems.push(format!(
                                    "the kernel failed with `{}`, not `{err}`",
                                    k.last_error.trim()
                                ));
                            }
                        } else if *grew != Some(true) {
                            problems.push(format!(
                                "the kernel's counter for a loss at {node} did not grow"
                            ));
                        }
                        if !o.failures.iter().any(|(n, c)| n == node && c == code) {
                            problems.push(format!(
                                "{label}: kernel lost it at {node} ({code}), netray fails at {:?}",
                                o.failures
                            ));
                        }
                    }
                    None => problems.push("a lost flow needs an expected drop point".into()),
                }
            }
            if let Some(words) = f.start
                && !o.starts.iter().any(|s| s.contains(words))
            {
                problems.push(format!(
                    "{label}: netray starts {:?}, not `{words}`",
                    o.starts
                ));
            }
            if let (Some(want), Some(ks)) = (f.source, ksrc) {
                if !ks.contains(want) {
                    problems.push(format!("the kernel used source {ks:?}, not {want}"));
                }
                if !o.sources.contains(want) {
                    problems.push(format!(
                        "{label}: kernel source {want}, netray's walk {:?} ({:?})",
                        o.sources, o.starts
                    ));
                }
            }
        }
        let agree = problems.is_empty();
        println!(
            "{name}: {} -> {}: kernel {:?} ({}/{} failed), netray {} {:?}{}",
            f.from,
            f.to,
            k.answered,
            k.failed,
            f.tries,
            d["verdict"],
            ours.iter()
                .map(|(l, o)| format!(
                    "[{l}: {:?} fails {:?} src {:?}]",
                    o.reachable, o.failures, o.sources
                ))
                .collect::<Vec<_>>(),
            if agree { "" } else { "   <-- DISAGREE" }
        );
        if !agree {
            bad.push(format!("{} -> {}: {}", f.from, f.to, problems.join("; ")));
        }
    }
    if bad.is_empty() {
        println!(
            "{name}: {} flows, {comparisons} comparisons, all agree",
            flows.len()
        );
    }
    assert!(bad.is_empty(), "{name}:\n{}", bad.join("\n"));
    dir
}

/// node0's address on the storage LAN (`eth1`, item 3).
const STORAGE_NODE0: &str = "172.30.0.10";

fn lab_for(name: &str, spec: &ClusterSpec) -> Option<(std::sync::MutexGuard<'static, ()>, Lab)> {
    if !lab_tests_can_run(name) {
        return None;
    }
    let g = SERIAL.lock().unwrap_or_else(|e| e.into_inner());
    let lab = Lab::up(spec, &agent()).expect("lab up");
    Some((g, lab))
}

/// Item 2: node0 has no default route and web-0 none either. Generated on node0, a
/// connection to web-0 leaves with cni0's 10.244.0.1 (the connected route's preferred
/// source), on-link for the pod, so it works although neither side has a default route; to
/// web-1 on node1 it leaves with flannel.1's 10.244.0.0 and works; to the ClusterIP connect()
/// fails at the route lookup (no route, no source).
#[test]
fn node_source_without_default_route() {
    let name = "node_source_without_default_route";
    let Some((_g, mut lab)) = lab_for(name, &ClusterSpec::standard(2, 1)) else {
        return;
    };
    lab.apply(&"pod-no-default-route:web-0".parse().expect("fault"))
        .expect("apply");
    sh(&lab, "node0", "ip route del default");
    compare(
        name,
        &lab,
        &[
            Flow::new(
                "node0",
                "node/node0",
                "10.244.0.2:8080",
                "pod/default/web-0:8080",
            )
            .source("10.244.0.1"),
            Flow::new(
                "node0",
                "node/node0",
                "10.244.1.2:8080",
                "pod/default/web-1:8080",
            )
            .source("10.244.0.0"),
            Flow::new(
                "node0",
                "node/node0",
                "10.96.0.100:80",
                "svc/default/web:80",
            )
            .refused("node0", "no-route", "unreachable"),
        ],
    );
}

/// Item 2, sources chosen by a route's `src`. node0's route to node1's pods says `src
/// 192.168.50.10`: the request leaves with it and flannel's masquerade (not a cluster source,
/// a cluster destination) rewrites it to flannel.1's address, so it works. node0's route to
/// node1's address says `src 192.168.70.10` (an address on node0's `lo` the underlay does not
/// know) and node1 has no default route: node1 cannot route its answer back (the SYN-ACK dies
/// at node1's route lookup). web-0 still works with cni0's address.
#[test]
fn route_src_decides() {
    let name = "route_src_decides";
    let Some((_g, lab)) = lab_for(name, &ClusterSpec::standard(2, 1)) else {
        return;
    };
    sh(
        &lab,
        "node0",
        "ip addr add 192.168.70.10/32 dev lo; \
         ip route replace 10.244.1.0/24 via 10.244.1.0 dev flannel.1 onlink src 192.168.50.10; \
         ip route add 192.168.50.11/32 dev eth0 src 192.168.70.10",
    );
    sh(&lab, "node1", "ip route del default");
    compare(
        name,
        &lab,
        &[
            Flow::new(
                "node0",
                "node/node0",
                "10.244.1.2:8080",
                "pod/default/web-1:8080",
            )
            .source("192.168.50.10"),
            Flow::new(
                "node0",
                "node/node0",
                "192.168.50.11:32100",
                "node/node1:32100",
            )
            .source("192.168.70.10")
            .lost("node1", "no-route", out_no_routes("node1")),
            Flow::new(
                "node0",
                "node/node0",
                "10.244.0.2:8080",
                "pod/default/web-0:8080",
            )
            .source("10.244.0.1"),
        ],
    );
}

/// Item 3: node0 has a second interface `eth1` on a storage LAN 172.30.0.0/24 whose router is
/// the lab router. The outside client reaching 172.30.0.10 arrives on eth1 (the router
/// delivers it there) while node0 answers over eth0 (the client is on-link there): strict
/// rp_filter on eth1 drops it, loose lets it through. The same client reaching node0's eth0
/// address enters on eth0 and works either way.
#[test]
fn storage_lan_rp_filter() {
    let name = "storage_lan_rp_filter";
    let Some((_g, lab)) = lab_for(name, &ClusterSpec::standard(1, 1)) else {
        return;
    };
    let gw = lab.ns("gw").expect("gw");
    lab.ns("node0")
        .expect("node0")
        .veth("eth1", gw, "to-stor")
        .expect("veth");
    sh(
        &lab,
        "gw",
        "ip addr add 172.30.0.1/24 dev to-stor; ip link set to-stor up",
    );
    sh(
        &lab,
        "node0",
        &format!(
            "ip addr add {STORAGE_NODE0}/24 dev eth1; ip link set eth1 up; \
             sysctl -qw net.ipv4.conf.all.rp_filter=0 net.ipv4.conf.eth0.rp_filter=1 \
             net.ipv4.conf.eth1.rp_filter=1"
        ),
    );
    let storage = format!("{STORAGE_NODE0}:32100");
    let flows = |strict: bool| {
        let lan = Flow::new("ext", "external/192.168.50.100", &storage, &storage)
            .start("entering on eth1");
        let lan = if strict {
            lan.lost("node0", "rp-filter-drop", rp_filter_drops("node0"))
        } else {
            lan
        };
        vec![
            lan,
            Flow::new(
                "ext",
                "external/192.168.50.100",
                "192.168.50.10:32100",
                "192.168.50.10:32100",
            )
            .start("entering on eth0"),
        ]
    };
    compare(&format!("{name} (strict)"), &lab, &flows(true));
    sh(&lab, "node0", "sysctl -qw net.ipv4.conf.eth1.rp_filter=2");
    compare(&format!("{name} (loose)"), &lab, &flows(false));
    // The router now sends the storage address over the underlay: it arrives on eth0, whose
    // strict rp_filter passes it (the way back is eth0), while eth1 is strict again. The
    // addresses alone cannot tell netray so; the user says where it enters (`%eth0`).
    sh(&lab, "node0", "sysctl -qw net.ipv4.conf.eth1.rp_filter=1");
    sh(
        &lab,
        "gw",
        &format!("ip route add {STORAGE_NODE0}/32 via 192.168.50.10"),
    );
    compare(
        &format!("{name} (routed over the underlay, %eth0)"),
        &lab,
        &[
            Flow::new("ext", "192.168.50.100@node/node0%eth0", &storage, &storage)
                .start("entering on eth0, as given"),
        ],
    );
}

/// `IP@node/NAME%IFACE` on the bundled example: the walk enters on that interface; an
/// interface the node does not have is an error naming its interfaces, with a did-you-mean.
#[test]
fn entry_interface_override() {
    let b = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/healthy");
    let run = |from: &str| {
        Command::new(NETRAY)
            .args(["trace", "--bundle", b, "--from", from])
            .args(["--to", "192.168.50.10:10250", "-o", "json"])
            .output()
            .expect("netray")
    };
    let out = run("192.168.50.100@node/node0%cni0");
    let t: Value = serde_json::from_slice(&out.stdout).expect("trace JSON");
    assert_eq!(
        t["flow"]["start"], "node0/host (entering on cni0, as given)",
        "{t:#}"
    );
    let hop = &t["branches"][0]["hops"][0];
    assert_eq!(
        (hop["node"].as_str(), hop["iif"].as_str()),
        (Some("node0"), Some("cni0"))
    );
    // Without it: the interface holding the destination.
    let out = run("external/192.168.50.100");
    let t: Value = serde_json::from_slice(&out.stdout).expect("trace JSON");
    assert_eq!(t["flow"]["start"], "node0/host (entering on eth0)");
    let out = run("192.168.50.100@node/node0%eht0");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("node node0 has no interface `eht0` (it has lo, eth0, cni0")
            && err.contains("did you mean %eth0?"),
        "{err}"
    );
    // The same words on every flow command (diagnose shares the flow syntax).
    let out = Command::new(NETRAY)
        .args([
            "diagnose",
            "--bundle",
            b,
            "--from",
            "192.168.50.100@node/node0%eht0",
        ])
        .args(["--to", "192.168.50.10:10250"])
        .output()
        .expect("netray");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("did you mean %eth0?"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// The standard cluster on three nodes with no pod on node2, and `web-lb`'s
/// externalTrafficPolicy as given.
fn lb_spec(local: bool) -> ClusterSpec {
    let mut spec = ClusterSpec::standard(3, 1);
    spec.pods.retain(|p| p.node != 2);
    for s in &mut spec.services {
        if s.name == "web-lb" {
            s.external_traffic_local = local;
            if !local {
                s.health_check_node_port = None;
            }
        }
    }
    spec
}

/// The outside client sends to the LoadBalancer IP through `node`: the route the load
/// balancer (here the client's own route, as with a BGP-announced VIP) takes.
fn via(node: usize) -> &'static str {
    [
        "ip route replace 192.168.60.200/32 via 192.168.50.10",
        "ip route replace 192.168.60.200/32 via 192.168.50.11",
        "ip route replace 192.168.60.200/32 via 192.168.50.12",
    ][node]
}

/// Packets kube-proxy's "has no local endpoints" rules dropped on `member`.
fn local_drops(member: &'static str) -> Counter {
    Box::new(move |lab| {
        rule_packets(
            lab,
            member,
            "filter",
            "KUBE-EXTERNAL-SERVICES",
            "no local endpoints",
        )
    })
}

/// Item 5, externalTrafficPolicy Local: entering node0 only web-0 answers, entering node1
/// only web-1; node2, with no endpoint, drops (kube-proxy's "has no local endpoints" rule) and
/// netray, walking the Service by name, does not send there (the load balancer's health check
/// fails); the address form entering node2 must fail where the kernel does. A load balancer
/// sending to the NodePort instead: node0's answers with web-0, node2's drops.
#[test]
fn load_balancer_local() {
    let name = "load_balancer_local";
    let Some((_g, lab)) = lab_for(name, &lb_spec(true)) else {
        return;
    };
    let ext = "external/192.168.50.100";
    let lb = "svc/default/web-lb:80";
    let dir = compare(
        name,
        &lab,
        &[
            Flow::new("ext", ext, "192.168.60.200:80", lb)
                .entry("via node/node0")
                .tries(8)
                .setup("ext", via(0)),
            Flow::new("ext", ext, "192.168.60.200:80", lb)
                .entry("via node/node1")
                .tries(8)
                .setup("ext", via(1)),
            Flow::new(
                "ext",
                "192.168.50.100@node/node2",
                "192.168.60.200:80",
                "192.168.60.200:80",
            )
            .setup("ext", via(2))
            .lost("node2", "iptables-drop-rule", local_drops("node2")),
            // A load balancer sending to NodePorts instead: node0's answers with its own pod,
            // node2's drops.
            Flow::new("ext", ext, "192.168.50.10:30081", "192.168.50.10:30081").tries(8),
            Flow::new("ext", ext, "192.168.50.12:30081", "192.168.50.12:30081").lost(
                "node2",
                "iptables-drop-rule",
                local_drops("node2"),
            ),
        ],
    );
    let (d, per) = netray(&lab, dir.path(), ext, lb, &BTreeMap::new(), false);
    let entries: Vec<&String> = per.keys().collect();
    assert!(
        per.keys().all(|l| !l.contains("via node/node2")),
        "netray sends to node2 (no local endpoint): {entries:?}"
    );
    // The header names no single entry node; each walk says where it enters.
    assert_eq!(
        d["from"], "external/192.168.50.100 (entering node/node0 on eth0, node/node1 on eth0)",
        "diagnose header"
    );
    assert_eq!(
        d["to"],
        "svc/default/web-lb:80/tcp (192.168.60.200:80) via node/node0 + \
         svc/default/web-lb:80/tcp (192.168.60.200:80) via node/node1"
    );
    // trace walks one flow: it names the entry nodes and how to pick one.
    let out = Command::new(NETRAY)
        .args(["trace", "--bundle"])
        .arg(dir.path())
        .args(["--from", ext, "--to", lb])
        .output()
        .expect("trace");
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        !out.status.success()
            && err.contains("sends to several nodes (node/node0, node/node1)")
            && err.contains("--from 192.168.50.100@node/node0 --to 192.168.60.200:80"),
        "{err}"
    );
}

/// Item 5, externalTrafficPolicy Cluster: every node the load balancer sends to reaches both
/// endpoints (masqueraded, forwarded over the overlay where the endpoint is elsewhere),
/// node2 without a pod included (by the LoadBalancer IP, and by node2's NodePort).
#[test]
fn load_balancer_cluster() {
    let name = "load_balancer_cluster";
    let Some((_g, lab)) = lab_for(name, &lb_spec(false)) else {
        return;
    };
    let ext = "external/192.168.50.100";
    let lb = "svc/default/web-lb:80";
    let mut flows: Vec<Flow<'_>> = (0..3)
        .map(|i| {
            Flow::new("ext", ext, "192.168.60.200:80", lb)
                .entry(["via node/node0", "via node/node1", "via node/node2"][i])
                .tries(12)
                .setup("ext", via(i))
        })
        .collect();
    // Through node2's NodePort (no pod there): both endpoints, masqueraded.
    flows.push(Flow::new("ext", ext, "192.168.50.12:30081", "192.168.50.12:30081").tries(12));
    compare(name, &lab, &flows);
}
