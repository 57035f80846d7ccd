//! `netray collect --kube`: collect many nodes through the Kubernetes API, with no agent and
//! no open port.
//!
//! For each selected node a short-lived collector pod is created, pinned with `nodeName`
//! (see [`pod_manifest`] for its privileges and why), and once it runs,
//! `netray collect --node NAME -o - --gzip` is executed in it over the API's exec
//! subresource (WebSocket, `v5.channel.k8s.io` / `v4.channel.k8s.io`). Standard output carries
//! the gzip-compressed snapshot; the collector's last line on standard error is the
//! [`TRAILER`] with the SHA-256 and length of the uncompressed JSON. The stream is decompressed,
//! hashed and written as it arrives to a fresh temporary file in `nodes/`
//! ([`netray_snapshot::output::TempFile`]: `O_EXCL | O_NOFOLLOW`, removed on any failure),
//! checked (checksum, length, a valid snapshot of that node) and renamed to `nodes/NAME.json`;
//! then the pod is deleted.
//! Pod logs are never used (the kubelet limits and rotates them).
//!
//! Bounded: at most [`Options::parallel`] nodes at once, each within [`Options::timeout`]
//! (pod start, exec and transfer together); transient API errors (429, 500, 502, 503, 504, a
//! reset or refused connection, an exec stream that ends without a status) are retried with
//! exponential backoff. A node that fails is listed with its reason ([`FailedNode`]); the
//! others are kept (a partial bundle). SIGINT and SIGTERM stop the run and delete every pod it
//! created (also ones whose create request may have gone through unanswered: they are found by
//! the run's label). Pods also end by themselves: the container only sleeps for the per-node
//! timeout plus a margin and `activeDeadlineSeconds` stops it after that.

use std::collections::{BTreeMap, BTreeSet};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Node, Pod};
use kube::api::{Api, AttachParams, DeleteParams, ListParams, PostParams};
use kube::{Client, Config};
use serde_json::{Value, json};
use tokio::io::AsyncReadExt;

use crate::{Limits, LiveError, Secrets, Session, Source, chain, config};

/// Namespace of the collector pods unless `--namespace` says otherwise (`deploy/`).
pub const DEFAULT_NAMESPACE: &str = "netray";
/// Collector image unless `--image` says otherwise: built from `deploy/Containerfile` and
/// loaded onto the nodes (or pushed to a registry and named with `--image`). The `localhost/`
/// prefix never resolves to a public registry, so a missing image fails instead of pulling a
/// stranger's.
pub const DEFAULT_IMAGE: &str = concat!("localhost/netray:", env!("CARGO_PKG_VERSION"));
/// Default per-node timeout: pod start, exec, collection and transfer.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(180);
/// Default number of nodes collected at once. 5,000 nodes at ~10 s each take ~26 min with
/// 32 at once; each running node costs the API server one pod create, a few status reads, one
/// exec stream and one delete, well within the default API priority and fairness limits.
pub const DEFAULT_PARALLEL: usize = 32;
/// Default retries of one API request (or one exec) after a transient error.
pub const DEFAULT_RETRIES: u32 = 4;
/// Largest uncompressed snapshot accepted from one node: 1 GiB.
pub const MAX_SNAPSHOT_BYTES: u64 = 1 << 30;
/// Standard error kept from one collector (the end of it): 64 KiB.
const MAX_STDERR_BYTES: usize = 64 << 10;
/// Label every collector pod carries.
pub const MANAGED_BY: (&str, &str) = ("app.kubernetes.io/managed-by", "netray");
/// Label naming the component.
pub const NAME_LABEL: (&str, &str) = ("app.kubernetes.io/name", "netray-collector");
/// Label holding the run id (find a run's leftovers with `-l netray.io/run=ID`).
pub const RUN_LABEL: &str = "netray.io/run";
/// Annotation holding the node a pod collects.
pub const NODE_ANNOTATION: &str = "netray.io/node";
/// First word of the collector's checksum line on standard error:
/// `netray-stream sha256=HEX bytes=N` (over the uncompressed snapshot JSON).
pub const TRAILER: &str = "netray-stream";
/// Seconds the collector container stays up beyond the per-node timeout (then it exits).
const POD_MARGIN_SECS: u64 = 120;
/// Bound on the clean-up after an interrupt.
const CLEANUP_DEADLINE: Duration = Duration::from_secs(30);

/// Which nodes to collect.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Selection {
    /// These nodes, by name.
    Nodes(Vec<String>),
    /// Nodes matching a label selector (evaluated by the API server).
    Selector(String),
    /// Every node.
    All,
}

/// What [`collect_cluster`] does.
#[derive(Debug, Clone)]
pub struct Options {
    /// The API.
    pub source: Source,
    /// Which nodes.
    pub selection: Selection,
    /// Namespace of the collector pods.
    pub namespace: String,
    /// Collector image.
    pub image: String,
    /// Nodes collected at once (at least 1).
    pub parallel: usize,
    /// Per-node timeout.
    pub timeout: Duration,
    /// Retries of a request after a transient error.
    pub retries: u32,
    /// Run the collector container `privileged` instead of with the listed capabilities (for
    /// runtimes whose SELinux or AppArmor policy blocks reading other namespaces).
    pub privileged: bool,
    /// Bundle directory to write (`cluster.json`, `nodes/NAME.json`); must not exist or be
    /// empty.
    pub out_dir: PathBuf,
    /// Draw progress on the terminal (`/dev/tty`).
    pub progress: bool,
    /// Extra arguments for `netray collect` in the pod (e.g. `--conntrack-limit N`).
    pub collect_args: Vec<String>,
    /// First backoff delay after a transient error (doubles each time, at most 8 s).
    pub backoff: Duration,
    /// The cluster view already listed from the same API in this run (a `List`, as
    /// [`crate::fetch_list`] returns it): used for the node selection and `cluster.json`
    /// instead of listing again (`diagnose --kube` lists first to plan which nodes to collect).
    pub cluster_list: Option<Value>,
}

impl Options {
    /// Options with the defaults above for `selection`, writing to `out_dir`.
    pub fn new(source: Source, selection: Selection, out_dir: PathBuf) -> Options {
        Options {
            source,
            selection,
            namespace: DEFAULT_NAMESPACE.into(),
            image: DEFAULT_IMAGE.into(),
            parallel: DEFAULT_PARALLEL,
            timeout: DEFAULT_TIMEOUT,
            retries: DEFAULT_RETRIES,
            privileged: false,
            out_dir,
            progress: false,
            collect_args: Vec::new(),
            backoff: Duration::from_millis(500),
            cluster_list: None,
        }
    }
}

/// A node that was collected.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeDone {
    /// Node name.
    pub node: String,
    /// Compressed bytes received.
    pub wire_bytes: u64,
    /// Snapshot bytes written.
    pub bytes: u64,
    /// Lines the collector printed on standard error (what it could not collect).
    pub notes: Vec<String>,
}

/// A node that could not be collected, and why (an entry of the bundle's `failed-nodes.json`).
pub use netray_snapshot::FailedNode;

/// What a run did.
#[derive(Debug, Clone)]
pub struct Report {
    /// The context and server (`context "x" (server https://…)`).
    pub target: String,
    /// Run id (the value of the [`RUN_LABEL`] label).
    pub run_id: String,
    /// Nodes collected, by name.
    pub done: Vec<NodeDone>,
    /// Nodes that failed, by name.
    pub failed: Vec<FailedNode>,
    /// Nodes selected but never started because the run was interrupted.
    pub not_started: Vec<String>,
    /// Non-fatal problems (an unreadable ConfigMap).
    pub warnings: Vec<String>,
    /// SIGINT or SIGTERM stopped the run.
    pub interrupted: bool,
    /// Collector pods created (or possibly created) and the ones deleted again.
    pub pods_created: usize,
    /// See `pods_created`.
    pub pods_deleted: usize,
    /// Pods that could not be deleted (name and reason): delete them by hand.
    pub pods_left: Vec<(String, String)>,
    /// Wall time of the run.
    pub elapsed: Duration,
}

/// Collect the cluster view and the selected nodes into [`Options::out_dir`]. `Err` when
/// nothing could be done (no configuration, the nodes cannot be listed, an unknown node, the
/// output directory); per-node failures are in the [`Report`].
pub fn collect_cluster(opts: &Options) -> Result<Report, LiveError> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .map_err(|e| LiveError::Config(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(run(opts))
}

/// Why one request failed, and whether trying again may help.
#[derive(Debug)]
struct ReqError {
    msg: String,
    transient: bool,
    code: Option<u16>,
    /// Earlier attempts failed transiently (one of them may have been carried out).
    retried: bool,
}

fn classify(e: &kube::Error) -> ReqError {
    match e {
        kube::Error::Api(s) => {
            let code = s.code;
            // A namespace ResourceQuota on pods refuses creates with 403 until earlier
            // collector pods are gone: worth waiting for, unlike other 403s.
            let quota = code == 403 && s.message.contains("exceeded quota");
            let hint = match code {
                401 => " (the credentials were refused; log in again or check the user entry)",
                403 if quota => " (the namespace's ResourceQuota: lower --parallel or raise it)",
                403 => " (forbidden: apply deploy/rbac.yaml and bind its roles to this user)",
                409 => " (already exists)",
                _ => "",
            };
            ReqError {
                msg: format!("HTTP {code}: {}{hint}", s.message),
                transient: matches!(code, 429 | 500 | 502 | 503 | 504) || quota,
                code: Some(code),
                retried: false,
            }
        }
        kube::Error::UpgradeConnection(u) => ReqError {
            msg: format!("exec: {u}"),
            transient: matches!(
                u,
                kube::client::UpgradeConnectionError::ProtocolSwitch(s)
                    if matches!(s.as_u16(), 429 | 500 | 502 | 503 | 504)
            ),
            code: None,
            retried: false,
        },
        // Transport: reset, refused, closed mid-answer, timed out.
        kube::Error::HyperError(_) | kube::Error::Service(_) => ReqError {
            msg: chain(e),
            transient: true,
            code: None,
            retried: false,
        },
        other => ReqError {
            msg: chain(other),
            transient: false,
            code: None,
            retried: false,
        },
    }
}

/// Requests on the collector pods, each answer read within [`MAX_RESPONSE_BYTES`] (the
/// limit of every other answer netray reads from the API).
struct PodRequests {
    client: Client,
    request: kube::core::Request,
}

impl PodRequests {
    fn new(client: Client, namespace: &str) -> PodRequests {
        PodRequests {
            client,
            request: kube::core::Request::new(<Pod as kube::Resource>::url_path(
                &(),
                Some(namespace),
            )),
        }
    }

    async fn create(&self, pod: &Pod) -> Result<Pod, ReqError> {
        let body = serde_json::to_vec(pod).map_err(|e| ReqError {
            msg: format!("cannot serialize the pod: {e}"),
            transient: false,
            code: None,
            retried: false,
        })?;
        self.call(self.request.create(&PostParams::default(), body))
            .await
    }

    async fn get(&self, name: &str) -> Result<Pod, ReqError> {
        self.call(self.request.get(name, &kube::api::GetParams::default()))
            .await
    }

    async fn delete(&self, name: &str) -> Result<(), ReqError> {
        let dp = DeleteParams {
            grace_period_seconds: Some(0),
            ..DeleteParams::default()
        };
        // The answer is the Pod or a Status: only its HTTP status matters.
        self.call::<Value>(self.request.delete(name, &dp))
            .await
            .map(|_| ())
    }

    async fn list(&self, lp: &ListParams) -> Result<kube::core::ObjectList<Pod>, ReqError> {
        self.call(self.request.list(lp)).await
    }

    async fn call<T: serde::de::DeserializeOwned>(
        &self,
        req: Result<http::Request<Vec<u8>>, kube::core::request::Error>,
    ) -> Result<T, ReqError> {
        use http_body_util::BodyExt;
        let plain = |msg: String, transient: bool| ReqError {
            msg,
            transient,
            code: None,
            retried: false,
        };
        let req = req.map_err(|e| plain(format!("building the request: {e}"), false))?;
        let res = self
            .client
            .send(req.map(kube::client::Body::from))
            .await
            .map_err(|e| classify(&e))?;
        let status = res.status();
        let mut body = res.into_body();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            // A connection lost in the middle of an answer: try again.
            let frame = frame.map_err(|e| plain(chain(&e), true))?;
            if let Ok(data) = frame.into_data() {
                if (buf.len() + data.len()) as u64 > crate::MAX_RESPONSE_BYTES {
                    return Err(plain(
                        format!(
                            "a response of more than {} bytes (MAX_RESPONSE_BYTES); stopped reading",
                            crate::MAX_RESPONSE_BYTES
                        ),
                        false,
                    ));
                }
                buf.extend_from_slice(&data);
            }
        }
        if !status.is_success() {
            let message = serde_json::from_slice::<kube::core::Status>(&buf)
                .ok()
                .map(|s| s.message)
                .filter(|m| !m.is_empty())
                .unwrap_or_else(|| {
                    String::from_utf8_lossy(&buf[..buf.len().min(200)]).into_owned()
                });
            let status = kube::core::Status {
                code: status.as_u16(),
                message,
                ..kube::core::Status::default()
            };
            return Err(classify(&kube::Error::Api(Box::new(status))));
        }
        serde_json::from_slice(&buf)
            .map_err(|e| plain(format!("not the expected JSON: {e}"), false))
    }
}

/// Shared state of one run.
struct Ctx {
    secrets: Secrets,
    opts: Options,
    run_id: String,
    /// Exec (kube's WebSocket client).
    pods: Api<Pod>,
    /// Create, get, delete, list.
    requests: PodRequests,
    nodes_dir: PathBuf,
    /// Pods created or possibly created → deleted yet.
    created: Mutex<BTreeMap<String, bool>>,
    /// A pod create refused in a way that holds for every node (401, 403, 404): the nodes not
    /// tried yet fail with it instead of asking again.
    refused: Mutex<Option<String>>,
    /// Snapshots parsed at once (see [`VALIDATIONS`]).
    validations: tokio::sync::Semaphore,
    stats: Stats,
}

/// Received snapshots checked (parsed) at once: parsing is CPU-bound and takes several times
/// the snapshot's size in memory, so it is not done `--parallel` times over.
const VALIDATIONS: usize = 2;

#[derive(Default)]
struct Stats {
    done: AtomicUsize,
    failed: AtomicUsize,
    running: AtomicUsize,
    wire_bytes: AtomicU64,
}

impl Ctx {
    fn scrub(&self, s: &str) -> String {
        self.secrets.scrub(s)
    }

    /// `f` with retries and exponential backoff on transient errors.
    async fn retry<T, F, Fut>(&self, what: &str, mut f: F) -> Result<T, ReqError>
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = Result<T, ReqError>>,
    {
        let mut delay = self.opts.backoff;
        let mut attempt = 0;
        loop {
            match f().await {
                Ok(v) => return Ok(v),
                Err(mut c) => {
                    if c.transient && attempt < self.opts.retries {
                        attempt += 1;
                        tokio::time::sleep(delay).await;
                        delay = (delay * 2).min(Duration::from_secs(8));
                        continue;
                    }
                    if attempt > 0 {
                        c.msg = format!("{c_msg} (after {attempt} retries)", c_msg = c.msg);
                        c.retried = true;
                    }
                    c.msg = format!("{what}: {}", self.scrub(&c.msg));
                    return Err(c);
                }
            }
        }
    }
}

/// A run id: 8 random lowercase hex digits.
fn new_run_id() -> String {
    use ring::rand::SecureRandom;
    let mut b = [0u8; 4];
    if ring::rand::SystemRandom::new().fill(&mut b).is_err() {
        let t = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        b = (t ^ std::process::id()).to_be_bytes();
    }
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// Whether `name` can be a file name under `nodes/` (Kubernetes node names are DNS
/// subdomains; anything else from a hostile API is refused).
pub fn safe_node_name(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 253
        && name != "."
        && name != ".."
        && name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '-' || c == '.' || c == '_')
}

async fn run(opts: &Options) -> Result<Report, LiveError> {
    let start = Instant::now();
    // From here on SIGINT/SIGTERM are ours: no pod can be created before they are caught.
    let mut signals = Signals::new();
    let (mut cfg, target, secrets): (Config, String, Secrets) = config(&opts.source).await?;
    // Our own retries (bounded, with 500 and resets) instead of kube's 15 silent ones; exec
    // streams may be quiet while the collector works, so no read timeout on them (the
    // per-node timeout bounds them).
    cfg.default_retry = false;
    cfg.read_timeout = None;
    let client = Client::try_from(cfg).map_err(|e| LiveError::Api {
        target: target.clone(),
        what: "creating the client".into(),
        reason: secrets.scrub(&chain(&e)),
    })?;
    check_out_dir(&opts.out_dir)?;
    // The cluster view, from the same API in the same run.
    let mut session = Session {
        client: None,
        target: target.clone(),
        secrets: secrets.clone(),
        limits: Limits::from_env()?,
        used: 0,
        doing: "listing".into(),
    };
    let deadline = session.limits.deadline;
    let listed = tokio::select! {
        r = tokio::time::timeout(deadline, async {
            let live = match &opts.cluster_list {
                Some(list) => crate::LiveList {
                    list: list.clone(),
                    target: target.clone(),
                    warnings: Vec::new(),
                },
                None => session.fetch_with(client.clone()).await?,
            };
            let nodes = select_nodes(opts, &live.list, &mut session, &target).await?;
            Ok::<_, LiveError>((live, nodes))
        }) => Some(r),
        _ = signals.recv() => None,
    };
    let Some(listed) = listed else {
        // Interrupted while listing: nothing was created.
        return Ok(Report {
            target,
            run_id: String::new(),
            done: Vec::new(),
            failed: Vec::new(),
            not_started: Vec::new(),
            warnings: Vec::new(),
            interrupted: true,
            pods_created: 0,
            pods_deleted: 0,
            pods_left: Vec::new(),
            elapsed: start.elapsed(),
        });
    };
    let (live, (nodes, skipped)) = listed.map_err(|_| LiveError::Api {
        target: target.clone(),
        what: session.doing.clone(),
        reason: format!("no complete answer within {} s", deadline.as_secs()),
    })??;
    check_out_dir(&opts.out_dir)?;
    std::fs::create_dir_all(&opts.out_dir).map_err(|e| {
        LiveError::Config(format!("{}: cannot create it: {e}", opts.out_dir.display()))
    })?;
    write_json(&opts.out_dir.join("cluster.json"), &live.list)
        .map_err(|e| LiveError::Config(format!("{}/cluster.json: {e}", opts.out_dir.display())))?;
    let nodes_dir = opts.out_dir.join("nodes");
    std::fs::create_dir_all(&nodes_dir)
        .map_err(|e| LiveError::Config(format!("{}: {e}", nodes_dir.display())))?;
    let run_id = new_run_id();
    let ctx = Arc::new(Ctx {
        pods: Api::namespaced(client.clone(), &opts.namespace),
        requests: PodRequests::new(client, &opts.namespace),
        secrets,
        opts: opts.clone(),
        run_id: run_id.clone(),
        nodes_dir,
        created: Mutex::new(BTreeMap::new()),
        refused: Mutex::new(None),
        validations: tokio::sync::Semaphore::new(VALIDATIONS),
        stats: Stats::default(),
    });
    let total = nodes.len();
    let stop = Arc::new(AtomicBool::new(false));
    let progress = opts
        .progress
        .then(|| spawn_progress(ctx.clone(), total, stop.clone()));
    let sem = Arc::new(tokio::sync::Semaphore::new(opts.parallel.max(1)));
    let mut set = tokio::task::JoinSet::new();
    let started: Arc<Mutex<BTreeSet<String>>> = Arc::default();
    for (i, node) in nodes.iter().enumerate() {
        let (ctx, sem, node, started) = (ctx.clone(), sem.clone(), node.clone(), started.clone());
        set.spawn(async move {
            // Closed on an interrupt: a node not started yet is not started then.
            let Ok(_permit) = sem.acquire_owned().await else {
                return None;
            };
            started.lock().expect("lock").insert(node.clone());
            ctx.stats.running.fetch_add(1, Ordering::Relaxed);
            let r = collect_node(&ctx, i, &node).await;
            ctx.stats.running.fetch_sub(1, Ordering::Relaxed);
            match &r {
                Ok(_) => ctx.stats.done.fetch_add(1, Ordering::Relaxed),
                Err(_) => ctx.stats.failed.fetch_add(1, Ordering::Relaxed),
            };
            Some((node, r))
        });
    }
    let mut results: BTreeMap<String, Result<NodeDone, String>> = BTreeMap::new();
    let interrupted = tokio::select! {
        _ = async {
            while let Some(j) = set.join_next().await {
                if let Ok(Some((node, r))) = j {
                    results.insert(node, r);
                }
            }
        } => false,
        _ = signals.recv() => true,
    };
    if interrupted {
        // Close first: the slots freed by the aborted nodes must not start new ones (an
        // aborted task runs on until its next await, and a create may already be on the wire).
        sem.close();
        set.abort_all();
        while set.join_next().await.is_some() {}
    }
    stop.store(true, Ordering::Relaxed);
    if let Some(p) = progress {
        let _ = p.await;
    }
    // Clean up: every pod this run created and did not delete yet; after an interrupt also
    // any pod carrying the run's label (a create whose answer never came).
    let (pods_left, deleted_now) = cleanup(&ctx, interrupted).await;
    let created = ctx.created.lock().expect("lock");
    let pods_created = created.len();
    // Pods found by label after an interrupt were never tracked: they count as created too.
    let pods_created = pods_created + deleted_now;
    let pods_deleted = created.values().filter(|d| **d).count() + deleted_now;
    drop(created);
    let started = started.lock().expect("lock").clone();
    let mut done = Vec::new();
    let mut failed = skipped;
    let mut not_started = Vec::new();
    for node in &nodes {
        match results.remove(node) {
            Some(Ok(d)) => done.push(d),
            Some(Err(reason)) => failed.push(FailedNode::new(node.clone(), &reason)),
            None if started.contains(node) => failed.push(FailedNode::new(
                node.clone(),
                "interrupted (SIGINT/SIGTERM) while collecting",
            )),
            None => not_started.push(node.clone()),
        }
    }
    Ok(Report {
        target,
        run_id,
        done,
        failed,
        not_started,
        warnings: live.warnings,
        interrupted,
        pods_created,
        pods_deleted,
        pods_left,
        elapsed: start.elapsed(),
    })
}

/// SIGINT and SIGTERM, caught from [`Signals::new`] on.
struct Signals(Option<(tokio::signal::unix::Signal, tokio::signal::unix::Signal)>);

impl Signals {
    fn new() -> Signals {
        use tokio::signal::unix::{SignalKind, signal};
        // Without handlers (cannot happen on Linux) the default disposition stays.
        Signals(
            signal(SignalKind::interrupt())
                .ok()
                .zip(signal(SignalKind::terminate()).ok()),
        )
    }

    /// The next SIGINT or SIGTERM.
    async fn recv(&mut self) {
        match &mut self.0 {
            Some((int, term)) => {
                tokio::select! {
                    _ = int.recv() => {}
                    _ = term.recv() => {}
                }
            }
            None => std::future::pending::<()>().await,
        }
    }
}

/// The output directory must not exist or be empty (a bundle never mixes two runs).
fn check_out_dir(dir: &Path) -> Result<(), LiveError> {
    match std::fs::read_dir(dir) {
        Ok(mut rd) => {
            if rd.next().is_some() {
                return Err(LiveError::Config(format!(
                    "{}: the output directory exists and is not empty; choose a new one",
                    dir.display()
                )));
            }
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(e) => Err(LiveError::Config(format!("{}: {e}", dir.display()))),
    }
}

/// Write `v` as pretty JSON to `path`, never through a planted link.
fn write_json(path: &Path, v: &Value) -> std::io::Result<()> {
    let mut f = netray_snapshot::output::TempFile::beside(path)?;
    serde_json::to_writer_pretty(&mut f, v)?;
    f.write_all(b"\n")?;
    f.persist(path)
}

/// The names of the selected nodes, checked against the cluster's nodes, and the selected
/// nodes that are not collected: those whose `kubernetes.io/os` label names another system
/// than Linux (netray reads Linux kernels only; no pod is created for them).
async fn select_nodes(
    opts: &Options,
    list: &Value,
    session: &mut Session,
    target: &str,
) -> Result<(Vec<String>, Vec<FailedNode>), LiveError> {
    let known: Vec<String> = list["items"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter(|i| i["kind"] == "Node")
                .filter_map(|i| i["metadata"]["name"].as_str().map(str::to_string))
                .collect()
        })
        .unwrap_or_default();
    let names: Vec<String> = match &opts.selection {
        Selection::All => known.clone(),
        Selection::Nodes(want) => {
            for w in want {
                if !known.contains(w) {
                    let hint = netray_kube::suggest::did_you_mean(
                        w,
                        known.iter().map(String::as_str),
                        |c| format!("--nodes {c}"),
                    );
                    return Err(LiveError::Api {
                        target: target.to_string(),
                        what: "selecting nodes".into(),
                        reason: format!(
                            "no node \"{w}\" in the cluster{hint} ({} nodes)",
                            known.len()
                        ),
                    });
                }
            }
            let mut seen = BTreeSet::new();
            want.iter()
                .filter(|w| seen.insert(w.to_string()))
                .cloned()
                .collect()
        }
        Selection::Selector(sel) => {
            let what = format!("listing nodes with selector {sel}");
            let nodes: Vec<Node> = session
                .list_all::<Node>(&what, ListParams::default().labels(sel))
                .await
                .map_err(|e| session.fail(&what, e))?;
            nodes.into_iter().filter_map(|n| n.metadata.name).collect()
        }
    };
    if names.is_empty() {
        return Err(LiveError::Api {
            target: target.to_string(),
            what: "selecting nodes".into(),
            reason: "no node selected (the cluster lists none, or none matches the selector)"
                .into(),
        });
    }
    if let Some(bad) = names.iter().find(|n| !safe_node_name(n)) {
        return Err(LiveError::Api {
            target: target.to_string(),
            what: "selecting nodes".into(),
            reason: format!(
                "node name {} is not a valid Kubernetes node name",
                netray_snapshot::text::clip_quote(bad)
            ),
        });
    }
    let os_of = |name: &str| -> Option<String> {
        list["items"]
            .as_array()?
            .iter()
            .find(|i| i["kind"] == "Node" && i["metadata"]["name"] == name)?["metadata"]["labels"]
            ["kubernetes.io/os"]
            .as_str()
            .map(str::to_string)
    };
    let mut linux = Vec::new();
    let mut other = Vec::new();
    for n in names {
        match os_of(&n) {
            Some(os) if os != "linux" => other.push(FailedNode::new(
                n.clone(),
                &format!(
                    "not a Linux node (kubernetes.io/os={os}): netray collects Linux nodes only"
                ),
            )),
            _ => linux.push(n),
        }
    }
    Ok((linux, other))
}

/// The collector pod for `node` (see the crate README and `deploy/` for the why):
/// - `nodeName` pins it (no scheduler; tolerates every taint, so tainted and control-plane
///   nodes are collected too); `hostNetwork` puts it in the node's own network namespace and
///   `hostPID` lets it find every pod's namespace through `/proc/PID/ns/net`.
/// - Capabilities, everything else dropped: `NET_ADMIN` (netlink dumps of conntrack and
///   nf_tables, `iptables-save`), `NET_RAW` (legacy `iptables-save` opens a raw socket),
///   `SYS_ADMIN` (`setns` into pod namespaces, listing BPF programs), `SYS_PTRACE` (opening
///   `/proc/PID/ns/net` of processes of other users), `SYS_CHROOT` (running the host's own
///   `iptables-save`/`nft`/`ipset`/`conntrack` from `/host`, whose backend matches the host's
///   rules). Root (uid 0) because file capabilities are not used; read-only root file system,
///   no privilege escalation, the runtime's default seccomp profile. AppArmor is unconfined:
///   the runtime's default profile forbids reading the namespaces of unconfined host
///   processes. `privileged` replaces all this for SELinux or other policies that still refuse.
/// - The host's `/` mounted read-only at `/host` (recursively where the kernel can);
///   `/run/netns` and `/lib/modules` in the image point into it.
/// - The container only sleeps (the work is the exec); it ends by itself after the per-node
///   timeout plus two minutes, and `activeDeadlineSeconds` stops the pod then too.
pub fn pod_manifest(
    name: &str,
    node: &str,
    run_id: &str,
    opts: &Options,
) -> Result<Pod, serde_json::Error> {
    let life = opts.timeout.as_secs() + POD_MARGIN_SECS;
    let security = if opts.privileged {
        json!({"privileged": true, "runAsUser": 0, "readOnlyRootFilesystem": true})
    } else {
        json!({
            "runAsUser": 0,
            "runAsNonRoot": false,
            "readOnlyRootFilesystem": true,
            "allowPrivilegeEscalation": false,
            "capabilities": {
                "drop": ["ALL"],
                "add": ["NET_ADMIN", "NET_RAW", "SYS_ADMIN", "SYS_PTRACE", "SYS_CHROOT"]
            },
            "seccompProfile": {"type": "RuntimeDefault"},
            "appArmorProfile": {"type": "Unconfined"}
        })
    };
    serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": name,
            "namespace": opts.namespace,
            "labels": {
                MANAGED_BY.0: MANAGED_BY.1,
                NAME_LABEL.0: NAME_LABEL.1,
                RUN_LABEL: run_id,
            },
            "annotations": {NODE_ANNOTATION: node},
        },
        "spec": {
            "nodeName": node,
            "hostNetwork": true,
            "hostPID": true,
            "restartPolicy": "Never",
            "automountServiceAccountToken": false,
            "enableServiceLinks": false,
            "terminationGracePeriodSeconds": 1,
            "activeDeadlineSeconds": life,
            "tolerations": [{"operator": "Exists"}],
            "containers": [{
                "name": "collector",
                "image": opts.image,
                "imagePullPolicy": "IfNotPresent",
                "command": ["sleep", life.to_string()],
                "securityContext": security,
                "resources": {
                    "requests": {"cpu": "100m", "memory": "64Mi"},
                    "limits": {"memory": "2Gi"}
                },
                "volumeMounts": [{
                    "name": "host",
                    "mountPath": "/host",
                    "readOnly": true,
                    "recursiveReadOnly": "IfPossible"
                }]
            }],
            "volumes": [{"name": "host", "hostPath": {"path": "/", "type": "Directory"}}]
        }
    }))
}

/// The collector pod's name for the `i`th node of run `run_id`.
fn pod_name(run_id: &str, i: usize) -> String {
    format!("netray-{run_id}-{i}")
}

/// One node, within the per-node timeout; the pod is deleted afterwards in every case.
async fn collect_node(ctx: &Arc<Ctx>, i: usize, node: &str) -> Result<NodeDone, String> {
    let name = pod_name(&ctx.run_id, i);
    let stage = Mutex::new(String::from("creating the collector pod"));
    let r = tokio::time::timeout(ctx.opts.timeout, node_steps(ctx, &name, node, &stage)).await;
    let r = match r {
        Ok(r) => r,
        Err(_) => Err(format!(
            "timed out after {} s while {}",
            ctx.opts.timeout.as_secs(),
            stage.lock().expect("lock")
        )),
    };
    if ctx.created.lock().expect("lock").contains_key(&name) {
        // A pod that cannot be deleted now stays marked and is tried again (and reported) by
        // the clean-up at the end of the run.
        let _ = delete_pod(ctx, &name).await;
    }
    r
}

async fn delete_pod(ctx: &Ctx, name: &str) -> Result<(), String> {
    match ctx
        .retry(&format!("deleting pod {name}"), || {
            ctx.requests.delete(name)
        })
        .await
    {
        Ok(_) => {}
        Err(e) if e.code == Some(404) => {}
        Err(e) => return Err(e.msg),
    }
    if let Some(d) = ctx.created.lock().expect("lock").get_mut(name) {
        *d = true;
    }
    Ok(())
}

async fn node_steps(
    ctx: &Arc<Ctx>,
    name: &str,
    node: &str,
    stage: &Mutex<String>,
) -> Result<NodeDone, String> {
    let set_stage = |s: String| *stage.lock().expect("lock") = s;
    if let Some(r) = ctx.refused.lock().expect("lock").clone() {
        return Err(format!(
            "not tried: another node's pod create was refused: {r}"
        ));
    }
    let pod = pod_manifest(name, node, &ctx.run_id, &ctx.opts)
        .map_err(|e| format!("building the pod: {e}"))?;
    ctx.created.lock().expect("lock").insert(name.into(), false);
    let ns = &ctx.opts.namespace;
    match ctx
        .retry(&format!("creating pod {ns}/{name}"), || {
            ctx.requests.create(&pod)
        })
        .await
    {
        Ok(_) => {}
        // An earlier attempt got through but its answer was lost: the pod is ours (the name
        // holds the run id).
        Err(e) if e.code == Some(409) => {}
        Err(e) => {
            let msg = if e.code == Some(404) {
                format!(
                    "{}; does namespace {ns} exist? (kubectl apply -f deploy/)",
                    e.msg
                )
            } else {
                e.msg
            };
            // Refused outright: there is no pod (after a transient failure there may be one,
            // which the clean-up deletes).
            if e.code.is_some_and(|c| (400..500).contains(&c)) && !e.transient && !e.retried {
                ctx.created.lock().expect("lock").remove(name);
            }
            if matches!(e.code, Some(401 | 403 | 404)) && !e.transient {
                ctx.refused
                    .lock()
                    .expect("lock")
                    .get_or_insert_with(|| msg.clone());
            }
            return Err(msg);
        }
    }
    // Wait for Running.
    set_stage("waiting for the collector pod to start".into());
    let mut delay = Duration::from_millis(250);
    loop {
        let p = ctx
            .retry(&format!("reading pod {ns}/{name}"), || {
                ctx.requests.get(name)
            })
            .await
            .map_err(|e| e.msg)?;
        let (phase, why, fatal) = pod_state(&p);
        match phase.as_str() {
            "Running" => break,
            "Succeeded" | "Failed" => {
                return Err(format!(
                    "the collector pod ended ({phase}{why}) before its exec"
                ));
            }
            _ => {}
        }
        if fatal {
            return Err(format!(
                "the collector pod cannot start ({phase}{why}); image {}",
                ctx.opts.image
            ));
        }
        set_stage(format!(
            "waiting for the collector pod to start (phase {phase}{why})"
        ));
        tokio::time::sleep(delay).await;
        delay = (delay * 2).min(Duration::from_secs(2));
    }
    // Exec, retried when the stream breaks before the collector's status arrives.
    let mut attempt = 0;
    let mut delay = ctx.opts.backoff;
    loop {
        set_stage(if attempt == 0 {
            "running the collector".into()
        } else {
            format!("running the collector (attempt {})", attempt + 1)
        });
        match exec_collect(ctx, name, node).await {
            Ok(d) => return Ok(d),
            Err(e) if e.transient && attempt < ctx.opts.retries => {
                attempt += 1;
                tokio::time::sleep(delay).await;
                delay = (delay * 2).min(Duration::from_secs(8));
            }
            Err(e) => {
                return Err(if attempt > 0 {
                    format!("{} (after {attempt} retries)", e.msg)
                } else {
                    e.msg
                });
            }
        }
    }
}

/// Phase, the waiting reason (`, ContainerCreating: …`) and whether the pod cannot start.
fn pod_state(p: &Pod) -> (String, String, bool) {
    let status = p.status.as_ref();
    let phase = status
        .and_then(|s| s.phase.clone())
        .unwrap_or_else(|| "Pending".into());
    let mut why = String::new();
    let mut fatal = false;
    for cs in status
        .and_then(|s| s.container_statuses.as_ref())
        .into_iter()
        .flatten()
    {
        if let Some(w) = cs.state.as_ref().and_then(|s| s.waiting.as_ref()) {
            let reason = w.reason.clone().unwrap_or_default();
            fatal |= matches!(
                reason.as_str(),
                "ErrImagePull"
                    | "ImagePullBackOff"
                    | "InvalidImageName"
                    | "ErrImageNeverPull"
                    | "CreateContainerConfigError"
                    | "CreateContainerError"
                    | "RunContainerError"
            );
            why = format!(", {reason}");
            if let Some(m) = &w.message {
                why.push_str(": ");
                why.push_str(&netray_snapshot::text::clip(m, 300));
            }
        }
    }
    if why.is_empty()
        && let Some(c) = status.and_then(|s| s.conditions.as_ref()).and_then(|c| {
            c.iter()
                .find(|c| c.status == "False" && c.message.is_some())
        })
    {
        why = format!(", {}: {}", c.type_, c.message.clone().unwrap_or_default());
    }
    (phase, why, fatal)
}

/// Where the decompressed snapshot goes: a temporary file next to `nodes/NAME.json` (removed
/// if the node fails), hashed and counted.
struct Sink {
    file: netray_snapshot::output::TempFile,
    hash: ring::digest::Context,
    bytes: u64,
}

impl Write for Sink {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        if self.bytes + buf.len() as u64 > MAX_SNAPSHOT_BYTES {
            return Err(std::io::Error::other(format!(
                "the snapshot is larger than {MAX_SNAPSHOT_BYTES} bytes (MAX_SNAPSHOT_BYTES)"
            )));
        }
        let n = self.file.write(buf)?;
        self.hash.update(&buf[..n]);
        self.bytes += n as u64;
        Ok(n)
    }
    fn flush(&mut self) -> std::io::Result<()> {
        self.file.flush()
    }
}

/// The collector's checksum line: (sha256 hex, bytes).
fn parse_trailer(stderr: &str) -> Option<(String, u64)> {
    let line = stderr.lines().rev().find(|l| l.starts_with(TRAILER))?;
    let mut sha = None;
    let mut bytes = None;
    for w in line.split_whitespace().skip(1) {
        if let Some(v) = w.strip_prefix("sha256=") {
            sha = Some(v.to_ascii_lowercase());
        } else if let Some(v) = w.strip_prefix("bytes=") {
            bytes = v.parse().ok();
        }
    }
    Some((sha?, bytes?))
}

fn hex(d: &[u8]) -> String {
    d.iter().map(|b| format!("{b:02x}")).collect()
}

/// Exec the collector in pod `name` and write `nodes/NODE.json`.
async fn exec_collect(ctx: &Arc<Ctx>, name: &str, node: &str) -> Result<NodeDone, ReqError> {
    let mut command: Vec<String> = ["netray", "collect", "--node", node, "-o", "-", "--gzip"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    command.extend(ctx.opts.collect_args.iter().cloned());
    let ap = AttachParams {
        container: Some("collector".into()),
        stdin: false,
        stdout: true,
        stderr: true,
        tty: false,
        max_stdout_buf_size: Some(256 << 10),
        max_stderr_buf_size: Some(64 << 10),
        ..AttachParams::default()
    };
    let fail = |msg: String, transient: bool| ReqError {
        msg,
        transient,
        code: None,
        retried: false,
    };
    let mut proc = match ctx.pods.exec(name, command.clone(), &ap).await {
        Ok(p) => p,
        Err(e) => {
            let mut c = classify(&e);
            c.msg = format!(
                "exec in pod {}/{name}: {}",
                ctx.opts.namespace,
                ctx.scrub(&c.msg)
            );
            return Err(c);
        }
    };
    let dest = ctx.nodes_dir.join(format!("{node}.json"));
    let file = netray_snapshot::output::TempFile::beside(&dest).map_err(|e| {
        fail(
            format!(
                "{}: cannot create a temporary file: {e}",
                ctx.nodes_dir.display()
            ),
            false,
        )
    })?;
    let partial = file.path().to_path_buf();
    let mut decoder = flate2::write::GzDecoder::new(Sink {
        file,
        hash: ring::digest::Context::new(&ring::digest::SHA256),
        bytes: 0,
    });
    let mut stdout = proc
        .stdout()
        .ok_or_else(|| fail("no stdout".into(), false))?;
    let mut stderr = proc
        .stderr()
        .ok_or_else(|| fail("no stderr".into(), false))?;
    let status = proc
        .take_status()
        .ok_or_else(|| fail("no status channel".into(), false))?;
    let stats = &ctx.stats;
    // kube's exec task shuts the pipes down when the status arrives or the stream closes
    // cleanly, but not when the connection breaks: once the status future resolves, what is
    // buffered is read and a pipe that stays silent for DRAIN counts as ended.
    let (ended_tx, ended_rx) = tokio::sync::watch::channel(false);
    let status = async move {
        let s = status.await;
        let _ = ended_tx.send(true);
        s
    };
    let mut out_rx = ended_rx.clone();
    let read_out = async {
        let mut buf = vec![0u8; 64 << 10];
        let mut wire = 0u64;
        // After a bad byte the rest is still read (and dropped), so that the exec task is
        // never blocked on a full pipe and the status still arrives.
        let mut bad: Option<String> = None;
        while let Some(n) = read_or_end(&mut stdout, &mut buf, &mut out_rx).await {
            let n = n.map_err(|e| format!("reading the stream: {e}"))?;
            wire += n as u64;
            stats.wire_bytes.fetch_add(n as u64, Ordering::Relaxed);
            if bad.is_none()
                && let Err(e) = decoder.write_all(&buf[..n])
            {
                bad = Some(format!("the stream is not a valid gzip snapshot: {e}"));
            }
        }
        match bad {
            Some(b) => Err(b),
            None => Ok::<u64, String>(wire),
        }
    };
    let mut err_rx = ended_rx;
    let read_err = async {
        let mut kept: Vec<u8> = Vec::new();
        let mut buf = vec![0u8; 8 << 10];
        while let Some(Ok(n)) = read_or_end(&mut stderr, &mut buf, &mut err_rx).await {
            kept.extend_from_slice(&buf[..n]);
            if kept.len() > MAX_STDERR_BYTES {
                let cut = kept.len() - MAX_STDERR_BYTES;
                kept.drain(..cut);
            }
        }
        String::from_utf8_lossy(&kept).into_owned()
    };
    let (out, err_text, status) = tokio::join!(read_out, read_err, status);
    let _ = proc.join().await;
    let tail = |s: &str| -> String {
        let lines: Vec<&str> = s
            .lines()
            .filter(|l| !l.starts_with(TRAILER) && !l.trim().is_empty())
            .collect();
        let last = lines
            .iter()
            .rev()
            .take(3)
            .rev()
            .copied()
            .collect::<Vec<_>>();
        if last.is_empty() {
            String::new()
        } else {
            format!("; its standard error ends: {}", last.join(" | "))
        }
    };
    let wire = match out {
        Ok(w) => w,
        Err(e) => return Err(fail(e, false)),
    };
    match status {
        None => {
            return Err(fail(
                "the exec stream ended without the collector's exit status (connection dropped?)"
                    .into(),
                true,
            ));
        }
        Some(s) if s.status.as_deref() != Some("Success") => {
            return Err(fail(
                format!(
                    "the collector failed: {}{}",
                    ctx.scrub(s.message.as_deref().unwrap_or("no message")),
                    ctx.scrub(&tail(&err_text))
                ),
                false,
            ));
        }
        Some(_) => {}
    }
    let sink = decoder.finish().map_err(|e| {
        fail(
            format!("the stream is not a complete gzip snapshot: {e}"),
            true,
        )
    })?;
    let Some((want_sha, want_bytes)) = parse_trailer(&err_text) else {
        return Err(fail(
            format!(
                "the collector printed no `{TRAILER}` checksum line (is image {} a netray with \
                 `collect --gzip`?){}",
                ctx.opts.image,
                ctx.scrub(&tail(&err_text))
            ),
            false,
        ));
    };
    let got = hex(sink.hash.finish().as_ref());
    if got != want_sha || sink.bytes != want_bytes {
        return Err(fail(
            format!(
                "checksum mismatch: received {} bytes with sha256 {got}, the collector sent {want_bytes} bytes with sha256 {want_sha}",
                sink.bytes
            ),
            true,
        ));
    }
    sink.file
        .sync_all()
        .map_err(|e| fail(format!("{}: {e}", partial.display()), false))?;
    // A valid snapshot of this node, or nothing. Parsing is CPU and memory (a snapshot of
    // tens of MB, several times that parsed): at most VALIDATIONS at once, off the runtime.
    let permit = ctx.validations.acquire().await.expect("semaphore open");
    let (path, shown, want) = (
        partial.clone(),
        format!("{node} (from pod {name})"),
        node.to_string(),
    );
    let checked = tokio::task::spawn_blocking(move || -> Result<(), String> {
        let text =
            std::fs::read_to_string(&path).map_err(|e| format!("{}: {e}", path.display()))?;
        let snap = netray_snapshot::NodeSnapshot::from_json(&shown, &text)
            .map_err(|e| format!("not a valid snapshot: {e}"))?;
        if snap.node.name != want {
            return Err(format!(
                "the snapshot is of node {}, not {want}",
                netray_snapshot::text::clip_quote(&snap.node.name)
            ));
        }
        Ok(())
    })
    .await;
    drop(permit);
    match checked {
        Ok(Ok(())) => {}
        Ok(Err(e)) => return Err(fail(e, false)),
        Err(e) => return Err(fail(format!("checking the snapshot: {e}"), false)),
    }
    sink.file
        .persist(&dest)
        .map_err(|e| fail(format!("{}: {e}", dest.display()), false))?;
    let notes = err_text
        .lines()
        .filter(|l| !l.starts_with(TRAILER) && !l.trim().is_empty())
        .map(|l| ctx.scrub(l))
        .take(100)
        .collect();
    Ok(NodeDone {
        node: node.to_string(),
        wire_bytes: wire,
        bytes: want_bytes,
        notes,
    })
}

/// How long a pipe may stay silent after the exec's status resolved before it counts as ended.
const DRAIN: Duration = Duration::from_millis(300);

/// One read from an exec pipe; `None` when it has ended: EOF, or silent for [`DRAIN`] once
/// `ended` is set.
async fn read_or_end<R: tokio::io::AsyncRead + Unpin>(
    r: &mut R,
    buf: &mut [u8],
    ended: &mut tokio::sync::watch::Receiver<bool>,
) -> Option<std::io::Result<usize>> {
    loop {
        if *ended.borrow() {
            return match tokio::time::timeout(DRAIN, r.read(buf)).await {
                Ok(Ok(0)) | Err(_) => None,
                Ok(res) => Some(res),
            };
        }
        tokio::select! {
            // `read` is cancel safe: nothing is lost when the other branch wins.
            res = r.read(buf) => {
                return match res {
                    Ok(0) => None,
                    res => Some(res),
                };
            }
            changed = ended.changed() => {
                if changed.is_err() {
                    // The sender is gone only after it sent `true`.
                    return match tokio::time::timeout(DRAIN, r.read(buf)).await {
                        Ok(Ok(0)) | Err(_) => None,
                        Ok(res) => Some(res),
                    };
                }
            }
        }
    }
}

/// Delete what is left of the run; returns pods that could not be deleted and the number
/// deleted here that were not tracked.
async fn cleanup(ctx: &Arc<Ctx>, interrupted: bool) -> (Vec<(String, String)>, usize) {
    let work = async {
        let pending: Vec<String> = ctx
            .created
            .lock()
            .expect("lock")
            .iter()
            .filter(|(_, d)| !**d)
            .map(|(n, _)| n.clone())
            .collect();
        let mut left = Vec::new();
        for name in &pending {
            if let Err(e) = delete_pod(ctx, name).await {
                left.push((name.clone(), e));
            }
        }
        let mut extra = 0;
        if interrupted {
            // A create cut off by the interrupt may still be on its way (its DELETE above
            // then met 404): give it a moment to land, then sweep by label.
            tokio::time::sleep(Duration::from_millis(500)).await;
            let lp = ListParams::default().labels(&format!("{RUN_LABEL}={}", ctx.run_id));
            if let Ok(list) = ctx.requests.list(&lp).await {
                for p in list.items {
                    if p.metadata.deletion_timestamp.is_some() {
                        continue; // already going
                    }
                    let Some(name) = p.metadata.name else {
                        continue;
                    };
                    // Still there: tracked ones whose DELETE came before their create, and
                    // untracked ones.
                    let tracked = ctx.created.lock().expect("lock").contains_key(&name);
                    match delete_pod(ctx, &name).await {
                        Ok(()) if !tracked => extra += 1,
                        Ok(()) => {}
                        Err(e) => left.push((name, e)),
                    }
                }
            }
        }
        // A pod the sweep deleted is not left.
        let created = ctx.created.lock().expect("lock");
        left.retain(|(n, _)| created.get(n) != Some(&true));
        drop(created);
        (left, extra)
    };
    match tokio::time::timeout(CLEANUP_DEADLINE, work).await {
        Ok(r) => r,
        Err(_) => {
            let left = ctx
                .created
                .lock()
                .expect("lock")
                .iter()
                .filter(|(_, d)| !**d)
                .map(|(n, _)| (n.clone(), "clean-up timed out".to_string()))
                .collect();
            (left, 0)
        }
    }
}

/// Redraw `done/failed/running, bytes, ETA` on the terminal twice a second until `stop`.
fn spawn_progress(
    ctx: Arc<Ctx>,
    total: usize,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<()> {
    tokio::spawn(async move {
        let Ok(mut tty) = std::fs::OpenOptions::new().write(true).open("/dev/tty") else {
            return;
        };
        let start = Instant::now();
        loop {
            let s = &ctx.stats;
            let (done, failed, running) = (
                s.done.load(Ordering::Relaxed),
                s.failed.load(Ordering::Relaxed),
                s.running.load(Ordering::Relaxed),
            );
            let finished = done + failed;
            let eta = if finished > 0 && finished < total {
                let per = start.elapsed().as_secs_f64() / finished as f64;
                format!(", ETA {}", secs((per * (total - finished) as f64) as u64))
            } else {
                String::new()
            };
            let line = format!(
                "\r\x1b[Knetray: collect: {done}/{total} done, {failed} failed, {running} running, {} received{eta}",
                human_bytes(s.wire_bytes.load(Ordering::Relaxed))
            );
            let _ = tty.write_all(line.as_bytes());
            let _ = tty.flush();
            if stop.load(Ordering::Relaxed) {
                let _ = tty.write_all(b"\r\x1b[K");
                return;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
        }
    })
}

fn secs(s: u64) -> String {
    if s >= 3600 {
        format!("{}h{:02}m", s / 3600, (s % 3600) / 60)
    } else if s >= 60 {
        format!("{}m{:02}s", s / 60, s % 60)
    } else {
        format!("{s}s")
    }
}

/// `12.3 MB`.
pub fn human_bytes(b: u64) -> String {
    if b >= 1 << 30 {
        format!("{:.1} GB", b as f64 / f64::from(1u32 << 30))
    } else if b >= 1 << 20 {
        format!("{:.1} MB", b as f64 / f64::from(1u32 << 20))
    } else if b >= 1 << 10 {
        format!("{:.1} KB", b as f64 / 1024.0)
    } else {
        format!("{b} B")
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn opts() -> Options {
        Options::new(
            Source::default(),
            Selection::All,
            PathBuf::from("/nonexistent"),
        )
    }

    #[test]
    fn the_pod_is_pinned_least_privileged_and_labelled() {
        let pod = pod_manifest("netray-ab12cd34-0", "node-a", "ab12cd34", &opts()).unwrap();
        let v = serde_json::to_value(&pod).unwrap();
        assert_eq!(v["spec"]["nodeName"], "node-a");
        assert_eq!(v["spec"]["hostNetwork"], true);
        assert_eq!(v["spec"]["hostPID"], true);
        assert_eq!(v["metadata"]["labels"][RUN_LABEL], "ab12cd34");
        assert_eq!(
            v["metadata"]["labels"]["app.kubernetes.io/managed-by"],
            "netray"
        );
        let c = &v["spec"]["containers"][0];
        assert_eq!(c["securityContext"]["capabilities"]["drop"][0], "ALL");
        assert!(c["securityContext"]["privileged"].is_null());
        assert_eq!(c["securityContext"]["readOnlyRootFilesystem"], true);
        assert_eq!(c["volumeMounts"][0]["readOnly"], true);
        assert_eq!(c["volumeMounts"][0]["recursiveReadOnly"], "IfPossible");
        assert_eq!(
            c["securityContext"]["appArmorProfile"]["type"],
            "Unconfined"
        );
        let mut o = opts();
        o.privileged = true;
        let v = serde_json::to_value(pod_manifest("p", "n", "r", &o).unwrap()).unwrap();
        assert_eq!(
            v["spec"]["containers"][0]["securityContext"]["privileged"],
            true
        );
    }

    #[test]
    fn trailer_and_names() {
        let e = "netray: not collected: ipvs: no\nnetray-stream sha256=ABCDEF bytes=12\n";
        assert_eq!(parse_trailer(e), Some(("abcdef".into(), 12)));
        assert_eq!(parse_trailer("netray-stream sha256=ab\n"), None);
        assert!(safe_node_name("ip-10-0-0-1.ec2.internal"));
        assert!(!safe_node_name("../etc"));
        assert!(!safe_node_name("a/b"));
        assert!(!safe_node_name(".."));
    }
}
