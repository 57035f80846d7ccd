//! `netray diagnose --kube` without `--bundle`: diagnose on demand. The cluster view is listed
//! from the API, the flow is resolved against it, and only the nodes the flow can touch are
//! collected (through `netray collect --kube`'s per-node collection): the source's node, the
//! destination's node, every node hosting an endpoint of a Service on the way (EndpointSlice
//! `nodeName`, else the node of the endpoint's address), and the entry node(s) of a flow from
//! outside the cluster. Snapshots younger than `--max-age` are taken from a cache directory
//! instead of being collected again. Nodes left out are not "missing": the answer names one
//! only when the walk reaches it (uncertain, naming the node and how to add it).

use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use netray_datapath::{MissingNode, Start, World};
use netray_kube::ClusterView;
use netray_snapshot::{Bundle, FailedNode, NodeSnapshot};

use super::{BundleArgs, ClusterArgs, CmdError};
use crate::flow::{FlowArgs, Target};
use crate::resolve::{ResolvedFlow, resolve};

/// Default `--max-age`: a cached node snapshot younger than this is used as is.
pub const DEFAULT_MAX_AGE: Duration = Duration::from_secs(300);

/// Beginning of the reason given to nodes left out on purpose (see [`OnDemand::missing`]).
const LEFT_OUT: &str = "not collected";

/// Options of diagnose on demand (`diagnose --kube` without `--bundle`).
#[derive(clap::Args, Debug, Clone, Default)]
pub struct OnDemandArgs {
    /// --kube without --bundle: also collect these nodes (comma separated, repeatable), besides
    /// the ones the flow can touch.
    #[arg(long, value_delimiter = ',', value_name = "NODE,…")]
    pub nodes: Vec<String>,
    /// --kube without --bundle: collect every node (and walk every entry node of a
    /// LoadBalancer) instead of only the ones the flow can touch.
    #[arg(long, conflicts_with = "nodes")]
    pub all: bool,
    /// --kube without --bundle: reuse a cached node snapshot younger than this (`90s`, `5m`,
    /// `1h`; `0` collects every node again) [default: 5m].
    #[arg(long, value_name = "DURATION", value_parser = parse_max_age)]
    pub max_age: Option<Duration>,
    /// --kube without --bundle: the snapshot cache; nodes are kept in
    /// DIR/<hash of the API server URL>/nodes/NAME.json [default: $XDG_CACHE_HOME/netray, else
    /// ~/.cache/netray].
    #[arg(long, value_name = "DIR")]
    pub cache: Option<PathBuf>,
    /// --kube without --bundle: nodes collected at once [default: 32].
    #[arg(long, value_name = "N", value_parser = clap::value_parser!(u16).range(1..=1024))]
    pub parallel: Option<u16>,
    /// --kube without --bundle: namespace of the collector pods [default: netray].
    #[arg(long, short = 'n', value_name = "NS")]
    pub namespace: Option<String>,
    /// --kube without --bundle: collector image [default: localhost/netray:VERSION].
    #[arg(long, value_name = "IMAGE")]
    pub image: Option<String>,
    /// --kube without --bundle: per-node collection timeout [default: 3m].
    #[arg(long, value_name = "DURATION", value_parser = super::collect::parse_duration)]
    pub timeout: Option<Duration>,
}

/// `--max-age`: a duration as for `--timeout`, or zero (`0`, `0s`: never use the cache).
fn parse_max_age(s: &str) -> Result<Duration, String> {
    super::collect::parse_duration(s).or_else(|e| {
        let num = s.trim().trim_end_matches(|c: char| c.is_ascii_alphabetic());
        match num.parse::<f64>() {
            Ok(0.0) => Ok(Duration::ZERO),
            _ => Err(e),
        }
    })
}

impl OnDemandArgs {
    /// The first option given, by name (they mean something only on demand).
    fn given(&self) -> Option<&'static str> {
        [
            ("--nodes", !self.nodes.is_empty()),
            ("--all", self.all),
            ("--max-age", self.max_age.is_some()),
            ("--cache", self.cache.is_some()),
            ("--parallel", self.parallel.is_some()),
            ("--namespace", self.namespace.is_some()),
            ("--image", self.image.is_some()),
            ("--timeout", self.timeout.is_some()),
        ]
        .into_iter()
        .find(|(_, g)| *g)
        .map(|(n, _)| n)
    }
}

/// SIGINT or SIGTERM stopped the collection (its collector pods were deleted first): diagnose
/// says so and exits 130, like `collect --kube`.
#[derive(Debug)]
pub struct Interrupted(String);

impl std::fmt::Display for Interrupted {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.0)
    }
}

impl std::error::Error for Interrupted {}

/// What an on-demand run collected, for the rest of diagnose.
pub struct OnDemand {
    /// Nodes of the cluster view left out on purpose.
    left_out: BTreeSet<String>,
    /// Whether `--all` was given.
    all: bool,
}

/// Whether this diagnose runs on demand: `--kube` (or --kubeconfig/--context) without
/// `--bundle` or `--live`. On-demand options without it are refused.
pub fn wanted(
    source: &BundleArgs,
    cluster: &ClusterArgs,
    od: &OnDemandArgs,
) -> Result<bool, CmdError> {
    let on = cluster.live() && source.bundle.is_none() && !source.live;
    if !on && let Some(flag) = od.given() {
        return Err(format!(
            "{flag} is an option of diagnose on demand (--kube without --bundle or --live: the \
             nodes the flow touches are collected through the API)"
        )
        .into());
    }
    Ok(on)
}

/// List the cluster, collect (or take from the cache) the nodes the flow can touch, and
/// return the bundle they make with the cluster view.
pub fn prepare(
    cluster: &ClusterArgs,
    flow: &FlowArgs,
    od: &OnDemandArgs,
) -> Result<(Bundle, ClusterView, OnDemand), CmdError> {
    imp::prepare(cluster, flow, od)
}

impl OnDemand {
    /// The nodes whose state the bundle lacks: those that failed to be collected (with why),
    /// and those left out on purpose, whose reason says how to add them. The walk ends
    /// uncertain at any of them it reaches.
    pub fn missing(&self, bundle: &Bundle, cluster: Option<&ClusterView>) -> Vec<MissingNode> {
        let mut out = super::missing_nodes(bundle, cluster);
        for m in &mut out {
            if self.left_out.contains(&m.name) {
                m.reason = format!(
                    "{LEFT_OUT}: diagnose --kube collects only the nodes the flow was expected to \
                     touch; add it with --nodes {} or collect every node with --all",
                    m.name
                );
            }
        }
        out
    }

    /// Warn about the nodes whose collection failed (not those left out on purpose).
    pub fn warn(&self, missing: &[MissingNode]) {
        let failed: Vec<MissingNode> = missing
            .iter()
            .filter(|m| !self.left_out.contains(&m.name))
            .cloned()
            .collect();
        super::warn_missing_nodes(&failed);
    }

    /// Drop the flows that start on a node without a snapshot (entry nodes of a LoadBalancer
    /// that were not collected): the note says which and why.
    pub fn walkable(
        &self,
        flows: Vec<ResolvedFlow>,
        bundle: &Bundle,
        missing: &[MissingNode],
    ) -> (Vec<ResolvedFlow>, Option<String>) {
        let (keep, dropped): (Vec<_>, Vec<_>) = flows
            .into_iter()
            .partition(|f| start_node(&f.flow.start).is_none_or(|n| has(bundle, n)));
        if dropped.is_empty() {
            return (keep, None);
        }
        let mut names: Vec<String> = dropped
            .iter()
            .filter_map(|f| start_node(&f.flow.start).map(str::to_string))
            .collect();
        names.sort();
        names.dedup();
        let failed: Vec<String> = names
            .iter()
            .filter(|n| !self.left_out.contains(*n))
            .map(|n| {
                let why = missing
                    .iter()
                    .find(|m| &m.name == n)
                    .map(|m| m.reason.clone())
                    .unwrap_or_default();
                format!("{n} ({why})")
            })
            .collect();
        let skipped = names.len() - failed.len();
        let mut parts = Vec::new();
        if skipped > 0 {
            parts.push(format!(
                "{} the load balancer may also send to {} not walked (not collected; --all walks \
                 every one)",
                netray_snapshot::text::count(skipped, "entry node", "entry nodes"),
                if skipped == 1 { "was" } else { "were" }
            ));
        }
        if !failed.is_empty() {
            parts.push(format!(
                "not walked entering at {}: the collection failed",
                failed.join(", ")
            ));
        }
        (keep, Some(parts.join("; ")))
    }

    /// Keep the sample flows (walked to check a fix breaks nothing else) that start on a
    /// collected node.
    pub fn collected_flows(&self, flows: &mut Vec<ResolvedFlow>, world: &World<'_>) {
        flows.retain(|f| match start_node(&f.flow.start) {
            Some(n) => has(world.bundle, n),
            None => !world.owners_of(f.flow.src).is_empty(),
        });
    }

    /// Notes for the answer: the nodes whose collection failed, and the nodes left out on
    /// purpose that the walk reached anyway (named, with how to add them).
    pub fn notes(
        &self,
        missing: &[MissingNode],
        traced: &[netray_diagnose::diagnose::TracedFlow],
    ) -> Vec<String> {
        let mut out = Vec::new();
        let failed: Vec<MissingNode> = missing
            .iter()
            .filter(|m| !self.left_out.contains(&m.name))
            .cloned()
            .collect();
        out.extend(super::missing_note(&failed));
        let mut reached: BTreeSet<&str> = BTreeSet::new();
        for b in traced.iter().flat_map(|t| t.trace.branches.iter()) {
            if b.cause.as_deref() != Some("node-snapshot-missing") {
                continue;
            }
            // The missing node the branch went towards is the place of the object that
            // decided it (see the walk's `node-snapshot-missing` end).
            for o in &b.decided_by {
                if let Some(m) = missing
                    .iter()
                    .find(|m| m.name == o.place().node && self.left_out.contains(&m.name))
                {
                    reached.insert(m.name.as_str());
                }
            }
        }
        if !reached.is_empty() {
            let names: Vec<&str> = reached.into_iter().collect();
            out.push(format!(
                "the walk reached {} {}, which diagnose --kube did not collect (the cluster view \
                 gave no reason to expect the flow there): run again with --nodes {}{}",
                if names.len() == 1 { "node" } else { "nodes" },
                names.join(", "),
                names.join(","),
                if self.all { "" } else { " or --all" }
            ));
        }
        out
    }
}

fn has(bundle: &Bundle, node: &str) -> bool {
    bundle.nodes.iter().any(|n| n.node.name == node)
}

fn start_node(s: &Start) -> Option<&str> {
    match s {
        Start::Node(n) | Start::Host(n) | Start::NodeVia(n, _) => Some(n),
        _ => None,
    }
}

/// The nodes a flow can touch, each with why.
#[derive(Debug, Default)]
struct Plan {
    nodes: BTreeMap<String, BTreeSet<String>>,
}

impl Plan {
    fn add(&mut self, node: &str, why: String) {
        self.nodes.entry(node.to_string()).or_default().insert(why);
    }
}

/// The node an address lives on, by the cluster view: a pod's, a node's own, a host-network
/// pod's node, or the node whose pod CIDR holds it.
fn node_of_ip(c: &ClusterView, ip: IpAddr) -> Option<String> {
    if let Some(p) = c
        .pods
        .iter()
        .find(|p| !p.host_network && p.ips.contains(&ip))
    {
        return p.node.clone();
    }
    if let Some(n) = c.nodes.iter().find(|n| n.ips().contains(&ip)) {
        return Some(n.name.clone());
    }
    if let Some(p) = c
        .pods
        .iter()
        .find(|p| p.host_network && p.ips.contains(&ip))
    {
        return p.node.clone();
    }
    c.nodes
        .iter()
        .find(|n| n.pod_cidrs.iter().any(|net| net.contains(&ip)))
        .map(|n| n.name.clone())
}

/// Every node hosting an endpoint of Service `ns/name` (ready or not: the collected rules
/// may still send there).
fn endpoint_nodes(c: &ClusterView, ns: &str, name: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    for s in c.slices_of(ns, name) {
        for e in &s.endpoints {
            let node = e
                .node
                .clone()
                .or_else(|| e.addresses.iter().find_map(|a| node_of_ip(c, *a)));
            out.extend(node);
        }
    }
    out
}

/// Plan which nodes `flow` can touch. `extra` (from `--nodes`) lets an unplaceable source
/// through (the user named its node).
fn plan(flow: &FlowArgs, c: &ClusterView, extra: bool) -> Result<Plan, String> {
    let empty = Bundle::default();
    let outside = matches!(flow.from.target, Target::External(_));
    let mut flows = match resolve(flow, &empty, Some(c)) {
        Ok(f) => f,
        // An outside client to a destination that is not a LoadBalancer enters at the node
        // owning the destination (a NodePort on a node IP), else at the first node: resolve
        // the destination with the source placed on any node, then pick the entry.
        Err(_) if outside => {
            let Target::External(ip) = flow.from.target else {
                unreachable!("outside")
            };
            let Some(first) = c.nodes.iter().map(|n| n.name.as_str()).min() else {
                return Err("the cluster view lists no nodes".into());
            };
            let mut probe = flow.clone();
            probe.from = crate::flow::Endpoint {
                target: Target::Addr {
                    ip,
                    at: Some(crate::flow::Place::Node(first.to_string())),
                },
                port: flow.from.port.clone(),
                proto: None,
            };
            let mut f = resolve(&probe, &empty, Some(c))?;
            for r in &mut f {
                let entry = c
                    .nodes
                    .iter()
                    .find(|n| n.ips().contains(&r.flow.dst))
                    .map_or(first, |n| n.name.as_str());
                r.flow.start = Start::Node(entry.to_string());
                // Named as given, not as the probe placed it.
                r.from_label = format!("external/{ip}");
            }
            f
        }
        Err(e) => return Err(e),
    };
    let mut p = Plan::default();
    let svc_by_ip = |ip: IpAddr| {
        c.services.iter().find(|s| {
            s.cluster_ips.contains(&ip)
                || s.external_ips.contains(&ip)
                || s.lb_ingress.contains(&ip)
        })
    };
    // A LoadBalancer with externalTrafficPolicy Cluster may send to every node: walk the ones
    // hosting an endpoint and one other (the rest behave like it unless their own state
    // differs; --all walks them all).
    if outside && flows.len() > 1 {
        let mut eps = BTreeSet::new();
        for f in &flows {
            if let Some(s) = svc_by_ip(f.flow.dst) {
                eps.extend(endpoint_nodes(c, &s.namespace, &s.name));
            }
        }
        let mut other_kept: Option<String> = None;
        flows.retain(|f| {
            let Some(n) = start_node(&f.flow.start) else {
                return true;
            };
            if eps.contains(n) {
                return true;
            }
            match &other_kept {
                Some(o) => o == n,
                None => {
                    other_kept = Some(n.to_string());
                    true
                }
            }
        });
    }
    for f in &flows {
        let from = f.from_label.as_str();
        match &f.flow.start {
            Start::Node(n) if outside => p.add(n, format!("entry of {from}")),
            Start::Node(n) | Start::Host(n) | Start::NodeVia(n, _) => {
                p.add(n, format!("source {from}"))
            }
            Start::Auto => match node_of_ip(c, f.flow.src) {
                Some(n) => p.add(&n, format!("source {from}")),
                None if extra => {}
                None => {
                    return Err(format!(
                        "cannot tell which node holds the source {} (no pod, node or pod CIDR of \
                         the cluster view has it): write it as {}@node/NAME, name the node with \
                         --nodes NAME, or collect every node with --all",
                        f.flow.src, f.flow.src
                    ));
                }
            },
            _ if extra => {}
            other => {
                return Err(format!(
                    "cannot tell which node the source {from} ({other:?}) is on: name the node \
                     with --nodes NAME, or collect every node with --all"
                ));
            }
        }
        let dst = f.flow.dst;
        let to = f.to_label.as_str();
        if let Some(s) = svc_by_ip(dst) {
            for n in endpoint_nodes(c, &s.namespace, &s.name) {
                p.add(&n, format!("endpoint of svc/{}/{}", s.namespace, s.name));
            }
        } else if let Some(n) = node_of_ip(c, dst) {
            p.add(&n, format!("destination {to}"));
            // A NodePort on a node's address: the Service's endpoints too.
            if c.nodes.iter().any(|x| x.ips().contains(&dst))
                && let Some(port) = f.flow.dport
            {
                for s in c
                    .services
                    .iter()
                    .filter(|s| s.ports.iter().any(|sp| sp.node_port == Some(port)))
                {
                    for n in endpoint_nodes(c, &s.namespace, &s.name) {
                        p.add(&n, format!("endpoint of svc/{}/{}", s.namespace, s.name));
                    }
                }
            }
        }
    }
    Ok(p)
}

/// `12 s`, `3m05s`.
fn age(d: Duration) -> String {
    let s = d.as_secs();
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s} s")
    }
}

/// `DIR/<16 hex digits of SHA-256 of the API server URL>`.
fn cache_dir(root: Option<&Path>, target: &str) -> Result<PathBuf, String> {
    let root = match root {
        Some(r) => r.to_path_buf(),
        None => match std::env::var_os("XDG_CACHE_HOME").filter(|v| !v.is_empty()) {
            Some(x) => PathBuf::from(x).join("netray"),
            None => match std::env::var_os("HOME").filter(|v| !v.is_empty()) {
                Some(h) => PathBuf::from(h).join(".cache/netray"),
                None => {
                    return Err(
                        "no cache directory: set $XDG_CACHE_HOME or $HOME, or give --cache DIR"
                            .into(),
                    );
                }
            },
        },
    };
    // `context "x" (server https://…)`: the server names the cluster, whatever the context.
    let server = target
        .rsplit_once("(server ")
        .map(|(_, s)| s.trim_end_matches(')'))
        .unwrap_or(target);
    let sum = ring::digest::digest(&ring::digest::SHA256, server.as_bytes());
    let hex: String = sum.as_ref()[..8]
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    Ok(root.join(hex))
}

/// A cached snapshot of `node` and its age, when younger than `max_age` and valid.
fn cached(dir: &Path, node: &str, max_age: Duration) -> Option<(NodeSnapshot, Duration)> {
    let path = dir.join("nodes").join(format!("{node}.json"));
    let meta = std::fs::symlink_metadata(&path).ok()?;
    if !meta.is_file() {
        return None;
    }
    // A modification time in the future (a clock set back, a copied file) says nothing about
    // the snapshot's age: collected again.
    let age = SystemTime::now()
        .duration_since(meta.modified().ok()?)
        .ok()?;
    if age >= max_age {
        return None;
    }
    // Read at most MAX_FILE_BYTES (+1 to tell a larger file), as bundles are: the cache is
    // a directory others may write to.
    let limit = netray_snapshot::limits::MAX_FILE_BYTES;
    let mut text = String::new();
    let read = std::fs::File::open(&path).and_then(|f| {
        std::io::Read::read_to_string(&mut std::io::Read::take(f, limit + 1), &mut text)
    });
    match read {
        Ok(n) if n as u64 > limit => {
            eprintln!(
                "netray: warning: {}: larger than {limit} bytes (MAX_FILE_BYTES); collecting it again",
                path.display()
            );
            return None;
        }
        Ok(_) => {}
        Err(_) => return None,
    }
    match NodeSnapshot::from_json(&path.display().to_string(), &text) {
        Ok(s) if s.node.name == node => Some((s, age)),
        Ok(_) | Err(_) => {
            eprintln!(
                "netray: warning: {}: not a valid snapshot of node {node}; collecting it again",
                path.display()
            );
            None
        }
    }
}

#[cfg(feature = "live")]
mod imp {
    use super::*;
    use netray_kube_live::collect as kc;

    pub fn prepare(
        cluster: &ClusterArgs,
        flow: &FlowArgs,
        od: &OnDemandArgs,
    ) -> Result<(Bundle, ClusterView, OnDemand), CmdError> {
        let source = netray_kube_live::Source {
            kubeconfig: cluster.api.kubeconfig.clone(),
            context: cluster.api.context.clone(),
        };
        let live = netray_kube_live::fetch_list(&source)?;
        for w in &live.warnings {
            eprintln!("netray: warning: {w}");
        }
        let view = ClusterView::from_value(&live.target, &live.list)?;
        let all: BTreeSet<String> = view.nodes.iter().map(|n| n.name.clone()).collect();
        for n in &od.nodes {
            if !all.contains(n) {
                let hint =
                    netray_kube::suggest::did_you_mean(n, all.iter().map(String::as_str), |c| {
                        format!("--nodes {c}")
                    });
                return Err(format!(
                    "--nodes: no node \"{n}\" in the cluster{hint} ({} nodes)",
                    all.len()
                )
                .into());
            }
        }
        let mut wanted: BTreeMap<String, BTreeSet<String>> = if od.all {
            all.iter()
                .map(|n| (n.clone(), BTreeSet::from(["--all".to_string()])))
                .collect()
        } else {
            plan(flow, &view, !od.nodes.is_empty())?.nodes
        };
        for n in &od.nodes {
            wanted
                .entry(n.clone())
                .or_default()
                .insert("--nodes".into());
        }
        for n in wanted.keys() {
            if !kc::safe_node_name(n) {
                return Err(format!(
                    "node name {} cannot be a file name",
                    netray_snapshot::text::clip_quote(n)
                )
                .into());
            }
        }
        if wanted.is_empty() {
            return Err(
                "the flow touches no node of the cluster view: name nodes with --nodes \
                        NAME or use --all"
                    .into(),
            );
        }
        let shown: Vec<String> = wanted
            .iter()
            .map(|(n, why)| {
                format!(
                    "{n} ({})",
                    why.iter().cloned().collect::<Vec<_>>().join(", ")
                )
            })
            .collect();
        eprintln!(
            "netray: diagnose --kube: {} of {} nodes to read: {}",
            wanted.len(),
            all.len(),
            shown.join("; ")
        );
        let dir = cache_dir(od.cache.as_deref(), &live.target)?;
        let nodes_dir = dir.join("nodes");
        std::fs::create_dir_all(&nodes_dir)
            .map_err(|e| format!("cache {}: cannot create it: {e}", nodes_dir.display()))?;
        // Snapshots hold every rule and address of a node: for the user only.
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(&dir, std::fs::Permissions::from_mode(0o700));
        }
        let max_age = od.max_age.unwrap_or(DEFAULT_MAX_AGE);
        let mut snaps: Vec<NodeSnapshot> = Vec::new();
        let mut from_cache: Vec<String> = Vec::new();
        let mut to_collect: Vec<String> = Vec::new();
        for n in wanted.keys() {
            match cached(&dir, n, max_age) {
                Some((s, a)) => {
                    from_cache.push(format!("{n} ({} old)", age(a)));
                    snaps.push(s);
                }
                None => to_collect.push(n.clone()),
            }
        }
        if !from_cache.is_empty() {
            eprintln!(
                "netray: from the cache {} (younger than --max-age {}): {}",
                dir.display(),
                age(max_age),
                from_cache.join(", ")
            );
        }
        let mut failed: Vec<FailedNode> = Vec::new();
        if !to_collect.is_empty() {
            let work = dir.join(format!(
                ".collect-{}-{}",
                std::process::id(),
                SystemTime::now()
                    .duration_since(SystemTime::UNIX_EPOCH)
                    .map(|d| d.subsec_nanos())
                    .unwrap_or(0)
            ));
            let r = collect(od, &source, &live.list, &to_collect, &work, &nodes_dir);
            let _ = std::fs::remove_dir_all(&work);
            let (got, lost) = r?;
            snaps.extend(got);
            failed = lost;
        }
        if snaps.is_empty() {
            let mut msg = format!("{}: no node could be collected", live.target);
            for f in failed.iter().take(20) {
                msg.push_str(&format!("\n{}: {}", f.node, f.reason));
            }
            return Err(msg.into());
        }
        snaps.sort_by(|a, b| a.node.name.cmp(&b.node.name));
        let have: BTreeSet<String> = snaps.iter().map(|s| s.node.name.clone()).collect();
        let failed_names: BTreeSet<&str> = failed.iter().map(|f| f.node.as_str()).collect();
        let left_out = all
            .iter()
            .filter(|n| !have.contains(*n) && !failed_names.contains(n.as_str()))
            .cloned()
            .collect();
        let bundle = Bundle {
            source: PathBuf::from(format!("kube:{}", live.target)),
            cluster: Some(live.list),
            nodes: snaps,
            failed,
        };
        Ok((
            bundle,
            view,
            OnDemand {
                left_out,
                all: od.all,
            },
        ))
    }

    /// Collect `nodes` through collector pods into `work`, move the snapshots into the cache
    /// `nodes_dir`, and return them parsed with the nodes that failed.
    fn collect(
        od: &OnDemandArgs,
        source: &netray_kube_live::Source,
        list: &serde_json::Value,
        nodes: &[String],
        work: &Path,
        nodes_dir: &Path,
    ) -> Result<(Vec<NodeSnapshot>, Vec<FailedNode>), CmdError> {
        let mut opts = kc::Options::new(
            source.clone(),
            kc::Selection::Nodes(nodes.to_vec()),
            work.to_path_buf(),
        );
        opts.cluster_list = Some(list.clone());
        if let Some(ns) = &od.namespace {
            opts.namespace = ns.clone();
        }
        if let Some(i) = &od.image {
            opts.image = i.clone();
        }
        if let Some(p) = od.parallel {
            opts.parallel = usize::from(p);
        }
        if let Some(t) = od.timeout {
            opts.timeout = t;
        }
        opts.progress =
            super::super::collect::STDERR_IS_TTY.load(std::sync::atomic::Ordering::Relaxed);
        if let Ok(ms) = std::env::var("NETRAY_KUBE_BACKOFF_MS")
            && let Ok(ms) = ms.parse::<u64>()
        {
            // Tests shorten the backoff; operators have no reason to.
            opts.backoff = Duration::from_millis(ms);
        }
        let report = kc::collect_cluster(&opts)?;
        for w in &report.warnings {
            eprintln!("netray: warning: {w}");
        }
        for (pod, why) in &report.pods_left {
            eprintln!(
                "netray: warning: pod {}/{pod} may be left behind ({why}); delete leftovers with \
                 kubectl delete pods -n {} -l netray.io/run={}",
                opts.namespace, opts.namespace, report.run_id
            );
        }
        if report.interrupted {
            return Err(Box::new(Interrupted(format!(
                "interrupted while collecting; {} collector pod{} created and {} deleted (run {})",
                report.pods_created,
                if report.pods_created == 1 { "" } else { "s" },
                report.pods_deleted,
                report.run_id
            ))));
        }
        let mut snaps = Vec::new();
        let mut failed = report.failed.clone();
        for d in &report.done {
            for n in &d.notes {
                eprintln!(
                    "netray: {}: {}",
                    d.node,
                    n.strip_prefix("netray: ").unwrap_or(n)
                );
            }
            let from = work.join("nodes").join(format!("{}.json", d.node));
            let to = nodes_dir.join(format!("{}.json", d.node));
            let text =
                std::fs::read_to_string(&from).map_err(|e| format!("{}: {e}", from.display()))?;
            match NodeSnapshot::from_json(&from.display().to_string(), &text) {
                Ok(s) => snaps.push(s),
                Err(e) => {
                    failed.push(FailedNode::new(d.node.clone(), &e.to_string()));
                    continue;
                }
            }
            // Same file system (both under the cache directory): an atomic replacement.
            if let Err(e) = std::fs::rename(&from, &to) {
                eprintln!(
                    "netray: warning: cache {}: {e} (the snapshot is used but not kept)",
                    to.display()
                );
            }
        }
        let names: Vec<&str> = report.done.iter().map(|d| d.node.as_str()).collect();
        eprintln!(
            "netray: collected {} in {:.1} s ({} collector pod{} created, {} deleted; run {}){}",
            if names.is_empty() {
                "no node".to_string()
            } else {
                names.join(", ")
            },
            report.elapsed.as_secs_f64(),
            report.pods_created,
            if report.pods_created == 1 { "" } else { "s" },
            report.pods_deleted,
            report.run_id,
            if failed.is_empty() {
                String::new()
            } else {
                format!(
                    "; failed: {}",
                    failed
                        .iter()
                        .map(|f| format!("{} ({})", f.node, f.reason))
                        .collect::<Vec<_>>()
                        .join(", ")
                )
            }
        );
        Ok((snaps, failed))
    }
}

#[cfg(not(feature = "live"))]
mod imp {
    use super::*;

    pub fn prepare(
        _cluster: &ClusterArgs,
        _flow: &FlowArgs,
        _od: &OnDemandArgs,
    ) -> Result<(Bundle, ClusterView, OnDemand), CmdError> {
        Err(
            "this netray was built without the `live` feature (the Kubernetes API client); \
             diagnose --kube without --bundle needs it: rebuild with `--features live`"
                .into(),
        )
    }
}
