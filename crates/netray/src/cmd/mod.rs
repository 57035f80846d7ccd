//! One module per subcommand; each exposes `Args`/`*Command` (clap) and `run`.

pub mod audit;
pub mod bundle;
pub mod cluster;
pub mod collect;
pub mod diagnose;
pub mod diff;
pub mod lab;
pub mod ondemand;
pub mod output;
pub mod rules;
pub mod scan;
pub mod trace;

/// Error type of every subcommand: a message for the user; exit code 2.
pub type CmdError = Box<dyn std::error::Error>;
/// Result of a subcommand: the process exit code on success.
pub type CmdResult = Result<std::process::ExitCode, CmdError>;

/// Output format of commands that print a report.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum Format {
    /// Readable text (default).
    #[default]
    Text,
    /// JSON (documented schema; stable field names).
    Json,
    /// YAML (the same document as JSON).
    Yaml,
}

/// How to reach the Kubernetes API: `netray cluster`, and the bundle commands with `--kube`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct KubeArgs {
    /// Kubeconfig file [default: $KUBECONFIG, then ~/.kube/config, then the in-cluster service
    /// account].
    #[arg(long, value_name = "FILE")]
    pub kubeconfig: Option<std::path::PathBuf>,
    /// Kubeconfig context [default: the kubeconfig's current context].
    #[arg(long, value_name = "NAME")]
    pub context: Option<String>,
}

/// Where a bundle command's cluster view comes from: the bundle's `cluster.json`, or (`--kube`)
/// live from the Kubernetes API. Flattened into `diagnose`, `scan` and `trace`.
#[derive(clap::Args, Debug, Clone, Default)]
pub struct ClusterArgs {
    /// Read the cluster view (nodes, pods, services, endpointslices, kube-proxy and flannel
    /// ConfigMaps) live from the Kubernetes API instead of the bundle's cluster.json; implied by
    /// --kubeconfig and --context.
    #[arg(long)]
    pub kube: bool,
    /// The API to read.
    #[command(flatten)]
    pub api: KubeArgs,
}

impl ClusterArgs {
    /// Whether the cluster view comes from the API.
    pub fn live(&self) -> bool {
        self.kube || self.api.kubeconfig.is_some() || self.api.context.is_some()
    }
}

/// Where the node snapshots come from: a bundle, or this host collected now.
#[derive(Debug, Clone, clap::Args)]
#[group(multiple = false)]
pub struct BundleArgs {
    /// Bundle directory or .tar.gz (cluster.json + nodes/*.json [+ failed-nodes.json]), or a
    /// single snapshot FILE.json (`netray collect -o FILE.json`) as a one-node bundle.
    #[arg(long, value_name = "DIR|FILE.tar.gz|FILE.json")]
    pub bundle: Option<std::path::PathBuf>,
    /// Collect this host now (as `netray collect` does; needs root) and use it as a one-node
    /// bundle.
    #[arg(long)]
    pub live: bool,
}

impl BundleArgs {
    /// How to name the source in reports.
    pub fn describe(&self) -> String {
        match &self.bundle {
            Some(p) => p.display().to_string(),
            None => "live".to_string(),
        }
    }
}

/// Load a bundle (directory or .tar.gz) and its cluster view, if any: the bundle's
/// `cluster.json`, or with `--kube` the live cluster (which then replaces it).
pub fn load_bundle(
    source: &BundleArgs,
    cluster: &ClusterArgs,
) -> Result<(netray_snapshot::Bundle, Option<netray_kube::ClusterView>), CmdError> {
    let (bundle, path) = match &source.bundle {
        Some(path) => (netray_snapshot::Bundle::load(path)?, path.clone()),
        None if !source.live => {
            return Err(
                "give the snapshots: --bundle DIR|FILE.tar.gz|FILE.json, or --live to collect this host now"
                    .into(),
            );
        }
        None => {
            // `--live`: this host, collected now, as a one-node bundle.
            let snap = netray_collect::collect(&netray_collect::Options::default())?;
            snap.validate("live snapshot")?;
            let path = std::path::PathBuf::from(format!("live:{}", snap.node.name));
            let bundle = netray_snapshot::Bundle {
                source: path.clone(),
                cluster: None,
                nodes: vec![snap],
                failed: Vec::new(),
            };
            (bundle, path)
        }
    };
    let path = path.as_path();
    if cluster.live() {
        let (list, target) = live_list(&cluster.api)?;
        let view = netray_kube::ClusterView::from_value(&target, &list)?;
        return Ok((bundle, Some(view)));
    }
    let view = match &bundle.cluster {
        Some(v) => Some(netray_kube::ClusterView::from_value(
            &format!("{}/cluster.json", path.display()),
            v,
        )?),
        None => None,
    };
    Ok((bundle, view))
}

/// The live cluster as one Kubernetes `List` (the shape of a bundle's `cluster.json`) and the
/// context and server it came from; warnings (an unreadable optional ConfigMap) go to standard
/// error.
#[cfg(feature = "live")]
pub fn live_list(api: &KubeArgs) -> Result<(serde_json::Value, String), CmdError> {
    let live = netray_kube_live::fetch_list(&netray_kube_live::Source {
        kubeconfig: api.kubeconfig.clone(),
        context: api.context.clone(),
    })?;
    for w in &live.warnings {
        eprintln!("netray: warning: {w}");
    }
    Ok((live.list, live.target))
}

/// The live cluster: unavailable in a build without the `live` feature.
#[cfg(not(feature = "live"))]
pub fn live_list(_api: &KubeArgs) -> Result<(serde_json::Value, String), CmdError> {
    Err(
        "this netray was built without the `live` feature (the Kubernetes API client); \
         use a bundle's cluster.json, or rebuild with `--features live`"
            .into(),
    )
}

/// [`warn_input_problems`] for the namespaces whose firewall has been parsed so far: call it
/// after the walk, so that a run parsing only the namespaces it visits warns about those.
pub fn warn_parsed_input_problems(
    world: &netray_datapath::World<'_>,
    engine: &netray_datapath::RulesetEngine,
) {
    let parsed = engine.parsed_diagnostics();
    for (ns, d) in &parsed {
        eprintln!("netray: warning: {}: firewall: {d}", world.ns[*ns].label());
    }
    for (ns, d) in world.ipvs_diagnostics() {
        eprintln!("netray: warning: {}: ipvs: {d}", world.ns[ns].label());
    }
}

/// Print what could not be read from the snapshots' firewall and IPVS state: the affected
/// rules evaluate as unknown, and the user should know why a verdict may say "uncertain".
/// Parses every namespace's firewall.
pub fn warn_input_problems(
    world: &netray_datapath::World<'_>,
    engine: &netray_datapath::RulesetEngine,
) {
    for (ns, d) in engine.diagnostics() {
        eprintln!("netray: warning: {}: firewall: {d}", world.ns[ns].label());
    }
    for (ns, d) in world.ipvs_diagnostics() {
        eprintln!("netray: warning: {}: ipvs: {d}", world.ns[ns].label());
    }
}

pub use netray_diagnose::scan::pod_names;

/// The nodes whose state the bundle lacks: those its `failed-nodes.json` lists (with why), and
/// every node of the cluster view without a snapshot; with their addresses, pod CIDRs and
/// pods' addresses when the cluster view knows them.
pub fn missing_nodes(
    bundle: &netray_snapshot::Bundle,
    cluster: Option<&netray_kube::ClusterView>,
) -> Vec<netray_datapath::MissingNode> {
    let have: std::collections::HashSet<&str> =
        bundle.nodes.iter().map(|n| n.node.name.as_str()).collect();
    let reason = |name: &str| match bundle.failed_node(name) {
        Some(f) => format!("collection failed: {}", f.reason),
        None => "the cluster view lists it but the bundle has no snapshot of it".to_string(),
    };
    let mut out: Vec<netray_datapath::MissingNode> = Vec::new();
    if let Some(c) = cluster {
        for n in c.nodes.iter().filter(|n| !have.contains(n.name.as_str())) {
            let mut addrs = n.ips();
            addrs.extend(
                c.pods
                    .iter()
                    .filter(|p| p.node.as_deref() == Some(n.name.as_str()) && !p.host_network)
                    .flat_map(|p| p.ips.iter().copied()),
            );
            out.push(netray_datapath::MissingNode {
                name: n.name.clone(),
                reason: reason(&n.name),
                addrs,
                pod_cidrs: n.pod_cidrs.clone(),
            });
        }
    }
    for f in &bundle.failed {
        if !out.iter().any(|m| m.name == f.node) {
            out.push(netray_datapath::MissingNode {
                name: f.node.clone(),
                reason: reason(&f.node),
                addrs: Vec::new(),
                pod_cidrs: Vec::new(),
            });
        }
    }
    out.sort_by(|a, b| a.name.cmp(&b.name));
    out
}

/// One line per missing node for reports: `node2 (collection failed: timed out)`.
pub fn missing_note(missing: &[netray_datapath::MissingNode]) -> Option<String> {
    if missing.is_empty() {
        return None;
    }
    const SHOWN: usize = 20;
    let mut list: Vec<String> = missing
        .iter()
        .take(SHOWN)
        .map(|m| format!("{} ({})", m.name, m.reason))
        .collect();
    if missing.len() > SHOWN {
        list.push(format!("and {} more", missing.len() - SHOWN));
    }
    Some(format!(
        "the state of {} is missing from the bundle: {}; paths through {} end uncertain",
        netray_snapshot::text::count(missing.len(), "node", "nodes"),
        list.join(", "),
        if missing.len() == 1 { "it" } else { "them" }
    ))
}

/// `err` with a line per missing node it concerns (named in it, or owning an address it
/// quotes): "no node named `node2`" becomes understandable when node2's snapshot is missing.
pub fn explain_missing(err: CmdError, missing: &[netray_datapath::MissingNode]) -> CmdError {
    let msg = err.to_string();
    let words: Vec<&str> = msg
        .split(|c: char| !(c.is_ascii_alphanumeric() || matches!(c, '.' | ':' | '-' | '_')))
        .filter(|w| !w.is_empty())
        .collect();
    let concerned: Vec<&netray_datapath::MissingNode> = missing
        .iter()
        .filter(|m| {
            words.iter().any(|w| {
                *w == m.name
                    || w.trim_end_matches('.')
                        .parse::<std::net::IpAddr>()
                        .is_ok_and(|ip| m.holds(ip))
            })
        })
        .collect();
    if concerned.is_empty() {
        return err;
    }
    let mut out = msg;
    for m in concerned {
        out.push_str(&format!(
            "\nnode {}'s snapshot is missing from the bundle ({})",
            m.name, m.reason
        ));
    }
    out.into()
}

/// Say on standard error which nodes' state is missing (see [`missing_note`]).
pub fn warn_missing_nodes(missing: &[netray_datapath::MissingNode]) {
    if let Some(n) = missing_note(missing) {
        eprintln!("netray: warning: {n}");
    }
}

/// The cluster's pod network: flannel's `Network`, else kube-proxy's `clusterCIDR`, else the
/// smallest prefix covering every node's pod CIDR.
pub fn pod_network(c: &netray_kube::ClusterView) -> Option<ipnet::IpNet> {
    if let Some(n) = c.flannel_network {
        return Some(n);
    }
    if let Some(n) = c
        .kube_proxy
        .as_ref()
        .and_then(|k| k.cluster_cidr.split(',').next())
        .and_then(|s| s.trim().parse().ok())
    {
        return Some(n);
    }
    let mut acc: Option<ipnet::IpNet> = None;
    for n in c.nodes.iter().flat_map(|n| n.pod_cidrs.iter()) {
        acc = Some(match acc {
            None => *n,
            Some(a) if a.contains(n) => a,
            Some(a) => {
                let mut w = a.trunc();
                while !w.contains(n) && w.prefix_len() > 0 {
                    w = w.supernet()?;
                }
                w
            }
        });
    }
    acc
}

/// Parse `--what-if` targets into commands: `NODE: CMD`, `NODE/NETNS: CMD`, or
/// `pod/NS/NAME: CMD` (the pod's namespace found through its IP in the snapshots).
pub fn what_if_commands(
    bundle: &netray_snapshot::Bundle,
    cluster: Option<&netray_kube::ClusterView>,
    specs: &[String],
) -> Result<Vec<netray_patch::FixCommand>, CmdError> {
    let mut out = Vec::new();
    for s in specs {
        if let Some(rest) = s.strip_prefix("pod/") {
            let (target, run) = rest
                .split_once(": ")
                .ok_or_else(|| format!("--what-if `{s}`: expected `pod/NS/NAME: COMMAND`"))?;
            let (ns, name) = target
                .split_once('/')
                .ok_or_else(|| format!("--what-if `{s}`: expected `pod/NS/NAME: COMMAND`"))?;
            let c = cluster.ok_or_else(|| {
                format!(
                    "--what-if `{s}`: naming a pod needs the cluster view (cluster.json or --kube)"
                )
            })?;
            let pod = c
                .pods
                .iter()
                .find(|p| p.namespace == ns && p.name == name)
                .ok_or_else(|| {
                    format!("--what-if `{s}`: no pod {ns}/{name} in the cluster view")
                })?;
            let world = netray_datapath::World::new(bundle);
            let place = pod
                .ips
                .iter()
                .flat_map(|ip| world.owners_of(*ip).iter())
                .map(|o| &world.ns[o.0])
                .find(|v| !v.is_host)
                .ok_or_else(|| {
                    format!("--what-if `{s}`: the snapshots hold no namespace with the pod's IP")
                })?;
            out.push(netray_patch::FixCommand {
                node: place.node.to_string(),
                netns: place.netns_label(),
                pod: Some(format!("{ns}/{name}")),
                run: run.trim().to_string(),
            });
        } else {
            let s = s.strip_prefix("node/").unwrap_or(s);
            out.push(
                netray_patch::FixCommand::parse_what_if(s)
                    .map_err(|e| format!("--what-if: {e}"))?,
            );
        }
    }
    Ok(out)
}

/// Apply `--what-if` commands to the loaded snapshots (in memory), saying what changed on
/// standard error.
pub fn apply_what_if(
    bundle: &mut netray_snapshot::Bundle,
    cluster: Option<&netray_kube::ClusterView>,
    specs: &[String],
) -> Result<(), CmdError> {
    if specs.is_empty() {
        return Ok(());
    }
    let cmds = what_if_commands(bundle, cluster, specs)?;
    for c in &cmds {
        let applied = netray_patch::apply(bundle, c).map_err(|e| format!("--what-if: {e}"))?;
        eprintln!("netray: what-if {applied}");
    }
    Ok(())
}
