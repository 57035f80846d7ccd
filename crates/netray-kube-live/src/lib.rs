//! netray's live cluster view: the objects of a bundle's `cluster.json`, listed from the
//! Kubernetes API with the `kube` crate instead of read from a file.
//!
//! [`fetch_list`] lists Nodes, Pods, Services, EndpointSlices, the `kube-system/kube-proxy`
//! ConfigMap and flannel's `kube-flannel-cfg` ConfigMap (any namespace), and assembles them
//! into one Kubernetes `List` — exactly what `kubectl get … -o json` would print — so that the
//! live path and the file path share one parser, [`netray_kube::ClusterView::from_value`].
//!
//! The rest of netray is synchronous: each call builds its own current-thread tokio runtime.
//!
//! Bounded against a hostile or broken API server ([`Limits`]): one deadline for the whole
//! command, a cap on each response body and on all of them together, a cap on pages per list
//! and a refusal of a repeated `continue` token. Credentials never appear in messages: tokens,
//! passwords and key data of the kubeconfig (also found in its raw text, so that a malformed
//! file is covered) and the password of a `user:password@` server URL are replaced by
//! `[REDACTED]`. Credentials are sent over plain `http://` only to a loopback address, or when
//! `NETRAY_KUBE_ALLOW_HTTP=1` allows it; either way with a warning.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::time::Duration;

use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{GetParams, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::core::ObjectList;
use kube::{Client, Config};
use secrecy::ExposeSecret;
use serde_json::Value;

pub mod collect;

/// Name of kube-proxy's ConfigMap in `kube-system`.
pub const KUBE_PROXY_CONFIGMAP: &str = "kube-proxy";
/// Name of flannel's ConfigMap (any namespace: `kube-flannel` or `kube-system`).
pub const FLANNEL_CONFIGMAP: &str = "kube-flannel-cfg";

/// Objects requested per list call (the API server pages larger lists).
const PAGE: u32 = 500;

/// Default deadline for everything one command asks of the API (configuration, every list
/// and get, slow bodies included): 120 s. `NETRAY_KUBE_TIMEOUT=SECONDS` changes it.
pub const DEFAULT_DEADLINE: Duration = Duration::from_secs(120);
/// Largest response body: 64 MiB (a page of 500 large objects is a few MB).
pub const MAX_RESPONSE_BYTES: u64 = 64 << 20;
/// Largest total of the response bodies of one command: 1 GiB.
pub const MAX_TOTAL_BYTES: u64 = 1 << 30;
/// Most pages of one list (500 objects each, so 500,000 objects; Kubernetes supports at most
/// 150,000 pods): 1,000.
pub const MAX_LIST_PAGES: u32 = 1_000;
/// Longest kubeconfig text scanned for credentials to redact: 16 MiB.
const MAX_KUBECONFIG_SCAN_BYTES: u64 = 16 << 20;
/// Longest error reason kept from the API server or a library: 1000 characters.
const MAX_REASON_CHARS: usize = 1000;
/// Environment variable overriding [`DEFAULT_DEADLINE`], in seconds.
pub const TIMEOUT_ENV: &str = "NETRAY_KUBE_TIMEOUT";
/// Environment variable (`1`) allowing credentials over plain `http://` to a non-loopback
/// server.
pub const ALLOW_HTTP_ENV: &str = "NETRAY_KUBE_ALLOW_HTTP";
/// What replaces a credential in messages.
pub const REDACTED: &str = "[REDACTED]";

/// Bounds on what one command asks of the API; [`Limits::default`] is the constants above.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// See [`DEFAULT_DEADLINE`].
    pub deadline: Duration,
    /// See [`MAX_RESPONSE_BYTES`].
    pub response_bytes: u64,
    /// See [`MAX_TOTAL_BYTES`].
    pub total_bytes: u64,
    /// See [`MAX_LIST_PAGES`].
    pub pages: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            deadline: DEFAULT_DEADLINE,
            response_bytes: MAX_RESPONSE_BYTES,
            total_bytes: MAX_TOTAL_BYTES,
            pages: MAX_LIST_PAGES,
        }
    }
}

impl Limits {
    /// The defaults, with the deadline from `NETRAY_KUBE_TIMEOUT` (seconds) when set.
    pub fn from_env() -> Result<Limits, LiveError> {
        let mut l = Limits::default();
        if let Ok(v) = std::env::var(TIMEOUT_ENV)
            && !v.trim().is_empty()
        {
            let secs = v
                .trim()
                .parse::<f64>()
                .ok()
                .filter(|s| *s > 0.0 && s.is_finite())
                .ok_or_else(|| {
                    LiveError::Config(format!(
                        "{TIMEOUT_ENV}={}: expected a positive number of seconds",
                        clip(&v)
                    ))
                })?;
            l.deadline = Duration::from_secs_f64(secs.min(86_400.0));
        }
        Ok(l)
    }
}

/// Where to find the API server and its credentials.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Source {
    /// Kubeconfig file; `None`: `$KUBECONFIG`, then `~/.kube/config`, then the in-cluster
    /// service account.
    pub kubeconfig: Option<PathBuf>,
    /// Kubeconfig context; `None`: the kubeconfig's current context.
    pub context: Option<String>,
}

/// The cluster could not be read from the API.
#[derive(Debug, thiserror::Error)]
pub enum LiveError {
    /// No usable configuration: no kubeconfig, an unreadable one, an unknown context, and not
    /// running in a pod.
    #[error("no Kubernetes API configuration: {0}")]
    Config(String),
    /// The API server answered with an error or could not be reached.
    #[error("Kubernetes API {target}: {what}: {reason}")]
    Api {
        /// The context and server (`context "kind" (server https://…)`).
        target: String,
        /// What was being done (`listing nodes`).
        what: String,
        /// Why it failed, with a hint for the common cases.
        reason: String,
    },
    /// The listed objects did not form a valid cluster view.
    #[error(transparent)]
    View(#[from] netray_kube::ClusterError),
}

/// The cluster as listed from the API.
#[derive(Debug, Clone)]
pub struct LiveList {
    /// A `v1` `List` of every object, each with `apiVersion` and `kind` set.
    pub list: Value,
    /// The context and server read (`context "kind" (server https://…)`), for messages.
    pub target: String,
    /// Non-fatal problems (an optional ConfigMap that could not be read).
    pub warnings: Vec<String>,
}

/// List the cluster's objects from the API as one `List` (see the crate docs), within
/// [`Limits::from_env`].
pub fn fetch_list(source: &Source) -> Result<LiveList, LiveError> {
    fetch_list_with(source, &Limits::from_env()?)
}

/// [`fetch_list`] within explicit limits.
pub fn fetch_list_with(source: &Source, limits: &Limits) -> Result<LiveList, LiveError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LiveError::Config(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(async {
        let deadline = tokio::time::Instant::now() + limits.deadline;
        let late = |target: &str, what: &str| LiveError::Api {
            target: target.to_string(),
            what: what.to_string(),
            reason: format!(
                "no complete answer within the deadline of {} s (set {TIMEOUT_ENV}=SECONDS to change it)",
                limits.deadline.as_secs_f64()
            ),
        };
        let (cfg, target, secrets) = tokio::time::timeout_at(deadline, config(source))
            .await
            .map_err(|_| late("(configuration)", "reading the configuration"))??;
        let mut session = Session {
            client: None,
            target: target.clone(),
            secrets,
            limits: *limits,
            used: 0,
            doing: "creating the client".into(),
        };
        match tokio::time::timeout_at(deadline, session.fetch(cfg)).await {
            Ok(r) => r,
            Err(_) => Err(late(&target, &session.doing)),
        }
    })
}

/// [`fetch_list`], then the cluster view of that List (the same parser as `cluster.json`).
pub fn fetch_view(source: &Source) -> Result<(netray_kube::ClusterView, LiveList), LiveError> {
    let live = fetch_list(source)?;
    let view = netray_kube::ClusterView::from_value(&live.target, &live.list)?;
    Ok((view, live))
}

/// Credentials known for one command, to be removed from every message.
#[derive(Debug, Default, Clone)]
struct Secrets(Vec<String>);

impl Secrets {
    fn add(&mut self, s: &str) {
        let s = s.trim().trim_matches(|c| c == '"' || c == '\'');
        // Shorter values would redact ordinary words; real credentials are longer.
        if s.len() >= 6 && !self.0.iter().any(|x| x == s) {
            self.0.push(s.to_string());
        }
    }

    /// `msg` with every known credential and every URL password replaced, on one line and
    /// bounded.
    fn scrub(&self, msg: &str) -> String {
        let mut s = redact_url_passwords(msg);
        // Longest first, so that a value containing another is replaced whole.
        let mut all: Vec<&String> = self.0.iter().collect();
        all.sort_by_key(|x| std::cmp::Reverse(x.len()));
        for secret in all {
            if s.contains(secret.as_str()) {
                s = s.replace(secret.as_str(), REDACTED);
            }
        }
        clip(&s)
    }

    /// Credential values in a kubeconfig's text, found line by line (so a file that does not
    /// parse is covered too): `token`, `password`, `*-key-data`, `*-secret`, id and refresh
    /// tokens, and their base64 forms as written.
    fn scan_text(&mut self, text: &str) {
        const KEYS: &[&str] = &[
            "token",
            "password",
            "client-key-data",
            "client-secret",
            "id-token",
            "refresh-token",
            "access-token",
            "secret",
        ];
        for line in text.lines() {
            let l = line.trim_start().trim_start_matches("- ").trim_start();
            let Some((key, value)) = l.split_once(':') else {
                continue;
            };
            let key = key.trim().trim_matches(|c| c == '"' || c == '\'');
            if KEYS.contains(&key.to_ascii_lowercase().as_str()) {
                let value = value.trim();
                self.add(value);
                // A malformed line may hold the credential with other text around it.
                for word in value.split(|c: char| c.is_whitespace() || ",{}[]\"'".contains(c)) {
                    self.add(word);
                }
            }
        }
    }

    fn scan_file(&mut self, path: &Path) {
        use std::io::Read;
        if let Ok(f) = std::fs::File::open(path) {
            let mut text = String::new();
            if f.take(MAX_KUBECONFIG_SCAN_BYTES)
                .read_to_string(&mut text)
                .is_ok()
            {
                self.scan_text(&text);
            }
        }
    }

    fn scan_auth(&mut self, a: &kube::config::AuthInfo) {
        if let Some(t) = &a.token {
            self.add(t.expose_secret());
        }
        if let Some(p) = &a.password {
            self.add(p.expose_secret());
        }
        if let Some(k) = &a.client_key_data {
            self.add(k.expose_secret());
        }
    }
}

/// `text` with the password of every `scheme://user:password@host` replaced by
/// [`REDACTED`] (a user without password, which may be a token, too).
pub fn redact_url_passwords(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find("://") {
        let (head, tail) = rest.split_at(i + 3);
        out.push_str(head);
        // The authority ends at the first character that cannot be in it.
        let end = tail
            .find(|c: char| c.is_whitespace() || "/?#\"'<>`(),;".contains(c))
            .unwrap_or(tail.len());
        let authority = &tail[..end];
        match authority.rfind('@') {
            Some(at) => {
                let userinfo = &authority[..at];
                match userinfo.split_once(':') {
                    Some((user, _)) => {
                        out.push_str(user);
                        out.push(':');
                        out.push_str(REDACTED);
                    }
                    None => out.push_str(REDACTED),
                }
                out.push_str(&authority[at..]);
            }
            None => out.push_str(authority),
        }
        rest = &tail[end..];
    }
    out.push_str(rest);
    out
}

/// One line, control characters escaped, at most [`MAX_REASON_CHARS`].
fn clip(s: &str) -> String {
    let mut out = String::new();
    for (n, c) in s.chars().enumerate() {
        if n == MAX_REASON_CHARS {
            out.push_str(&format!("… ({} bytes)", s.len()));
            break;
        }
        if c.is_control() || ('\u{80}'..='\u{9f}').contains(&c) {
            out.push_str(&c.escape_default().to_string());
        } else {
            out.push(c);
        }
    }
    out
}

/// The kubeconfig files `$KUBECONFIG` or the default names, for credential scanning.
fn kubeconfig_paths(source: &Source) -> Vec<PathBuf> {
    if let Some(p) = &source.kubeconfig {
        return vec![p.clone()];
    }
    if let Some(v) = std::env::var_os("KUBECONFIG").filter(|v| !v.is_empty()) {
        return std::env::split_paths(&v).collect();
    }
    std::env::var_os("HOME")
        .map(|h| vec![Path::new(&h).join(".kube/config")])
        .unwrap_or_default()
}

/// Resolve the client configuration and describe it (`context "x" (server …)`); the
/// credentials found on the way are returned for redaction.
async fn config(source: &Source) -> Result<(Config, String, Secrets), LiveError> {
    let mut secrets = Secrets::default();
    for p in kubeconfig_paths(source) {
        secrets.scan_file(&p);
    }
    let options = KubeConfigOptions {
        context: source.context.clone(),
        ..KubeConfigOptions::default()
    };
    let cfg_err = |s: &Secrets, msg: String| LiveError::Config(s.scrub(&msg));
    let (kubeconfig, origin) = match &source.kubeconfig {
        Some(path) => (
            Kubeconfig::read_from(path).map_err(|e| {
                let msg = match &e {
                    // kube's own message quotes the path twice over: say it once.
                    kube::config::KubeconfigError::ReadConfig(io, _) => {
                        format!("kubeconfig {}: cannot read it: {io}", path.display())
                    }
                    e => format!("kubeconfig {}: {}", path.display(), kubeconfig_reason(e)),
                };
                cfg_err(&secrets, msg)
            })?,
            path.display().to_string(),
        ),
        None => match Kubeconfig::read() {
            Ok(k) => (
                k,
                std::env::var("KUBECONFIG")
                    .ok()
                    .filter(|v| !v.is_empty())
                    .unwrap_or_else(|| "~/.kube/config".into()),
            ),
            Err(kerr) => {
                if let Some(ctx) = &source.context {
                    return Err(cfg_err(
                        &secrets,
                        format!(
                            "context \"{ctx}\" was asked for but no kubeconfig could be read \
                             ($KUBECONFIG, ~/.kube/config): {}",
                            kubeconfig_reason(&kerr)
                        ),
                    ));
                }
                let mut cfg = Config::incluster().map_err(|ierr| {
                    cfg_err(
                        &secrets,
                        format!(
                            "no kubeconfig ($KUBECONFIG, ~/.kube/config: {}) and not running in a pod \
                             (in-cluster config: {}); pass --kubeconfig FILE",
                            kubeconfig_reason(&kerr),
                            chain(&ierr)
                        ),
                    )
                })?;
                secrets.scan_auth(&cfg.auth_info);
                let target = secrets.scrub(&format!("in-cluster (server {})", cfg.cluster_url));
                tune(&mut cfg);
                check_plain_http(&cfg, &target)?;
                return Ok((cfg, target, secrets));
            }
        },
    };
    for named in &kubeconfig.auth_infos {
        if let Some(a) = &named.auth_info {
            secrets.scan_auth(a);
        }
    }
    let context = source
        .context
        .clone()
        .or_else(|| kubeconfig.current_context.clone())
        .unwrap_or_default();
    let known: Vec<String> = kubeconfig.contexts.iter().map(|c| c.name.clone()).collect();
    if !known.contains(&context) {
        // An unknown context: say which ones the file has, and the closest.
        let hint =
            netray_kube::suggest::did_you_mean(&context, known.iter().map(String::as_str), |c| {
                format!("--context {c}")
            });
        let what = if source.context.is_some() {
            format!("has no context \"{context}\"")
        } else if context.is_empty() {
            "sets no current-context".to_string()
        } else {
            format!("names current-context \"{context}\", which it does not define")
        };
        return Err(cfg_err(
            &secrets,
            format!(
                "kubeconfig {origin} {what}{hint} (its contexts: {}; choose one with --context NAME)",
                if known.is_empty() {
                    "none".to_string()
                } else {
                    known.join(", ")
                }
            ),
        ));
    }
    let mut cfg = Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| {
            cfg_err(
                &secrets,
                format!(
                    "kubeconfig {origin}, context \"{context}\": {}",
                    kubeconfig_reason(&e)
                ),
            )
        })?;
    secrets.scan_auth(&cfg.auth_info);
    let target = secrets.scrub(&format!(
        "context \"{context}\" (server {})",
        cfg.cluster_url
    ));
    tune(&mut cfg);
    check_plain_http(&cfg, &target)?;
    Ok((cfg, target, secrets))
}

/// A kubeconfig error without the parser's quote of the file (which may hold a credential):
/// parse errors keep their first line only, and everything is scrubbed by the caller.
fn kubeconfig_reason(e: &kube::config::KubeconfigError) -> String {
    use kube::config::KubeconfigError as K;
    match e {
        K::Parse(inner) => {
            let msg = inner.to_string();
            let first = msg.lines().next().unwrap_or("").trim();
            format!("not a valid kubeconfig (YAML): {first}")
        }
        K::ReadConfig(io, path) => format!("cannot read {}: {io}", path.display()),
        other => chain(other),
    }
}

/// Credentials over plain `http://`: allowed to a loopback address or with
/// `NETRAY_KUBE_ALLOW_HTTP=1`, with a warning on standard error; refused otherwise.
fn check_plain_http(cfg: &Config, target: &str) -> Result<(), LiveError> {
    if cfg.cluster_url.scheme_str() != Some("http") {
        return Ok(());
    }
    let a = &cfg.auth_info;
    let creds = a.token.is_some()
        || a.token_file.is_some()
        || a.password.is_some()
        || a.exec.is_some()
        || a.auth_provider.is_some()
        || a.client_key.is_some()
        || a.client_key_data.is_some()
        || cfg
            .cluster_url
            .authority()
            .is_some_and(|x| x.as_str().contains('@'));
    if !creds {
        return Ok(());
    }
    let loopback = cfg
        .cluster_url
        .host()
        .map(|h| h.trim_start_matches('[').trim_end_matches(']'))
        .is_some_and(|h| {
            h == "localhost"
                || h.parse::<std::net::IpAddr>()
                    .is_ok_and(|ip| ip.is_loopback())
        });
    let allowed = std::env::var(ALLOW_HTTP_ENV).is_ok_and(|v| v == "1");
    if loopback || allowed {
        eprintln!(
            "netray: warning: Kubernetes API {target}: sending credentials over plain http:// \
             (unencrypted{}); use https://",
            if loopback {
                ", loopback only"
            } else {
                ", allowed by NETRAY_KUBE_ALLOW_HTTP=1"
            }
        );
        return Ok(());
    }
    Err(LiveError::Api {
        target: target.to_string(),
        what: "checking the connection".into(),
        reason: format!(
            "refusing to send credentials over plain http:// to a non-loopback server; use \
             https://, or set {ALLOW_HTTP_ENV}=1 to allow it"
        ),
    })
}

/// Timeouts suited to a one-shot command line tool (the overall deadline is separate).
fn tune(cfg: &mut Config) {
    cfg.connect_timeout = Some(Duration::from_secs(10));
    cfg.read_timeout = Some(Duration::from_secs(60));
    cfg.write_timeout = Some(Duration::from_secs(60));
}

/// Why one request failed.
enum Fail {
    /// Transport or client error.
    Kube(kube::Error),
    /// An HTTP error status with the server's message.
    Status(u16, String),
    /// A limit was hit or the answer made no sense.
    Other(String),
}

/// One command's conversation with the API.
struct Session {
    client: Option<Client>,
    target: String,
    secrets: Secrets,
    limits: Limits,
    /// Response bytes read so far.
    used: u64,
    /// What is being done now (for the deadline message).
    doing: String,
}

impl Session {
    fn fail(&self, what: &str, f: Fail) -> LiveError {
        LiveError::Api {
            target: self.target.clone(),
            what: what.into(),
            reason: self.secrets.scrub(&reason(&f)),
        }
    }

    async fn fetch(&mut self, cfg: Config) -> Result<LiveList, LiveError> {
        let client = Client::try_from(cfg).map_err(|e| LiveError::Api {
            target: self.target.clone(),
            what: "creating the client".into(),
            reason: self.secrets.scrub(&chain(&e)),
        })?;
        self.fetch_with(client).await
    }

    /// [`Session::fetch`] through an existing client.
    async fn fetch_with(&mut self, client: Client) -> Result<LiveList, LiveError> {
        self.client = Some(client);
        let mut items = Vec::new();
        let mut warnings = Vec::new();
        self.list_into::<Node>("listing nodes", ListParams::default(), &mut items)
            .await?;
        self.list_into::<Pod>("listing pods", ListParams::default(), &mut items)
            .await?;
        self.list_into::<Service>("listing services", ListParams::default(), &mut items)
            .await?;
        self.list_into::<EndpointSlice>(
            "listing endpointslices",
            ListParams::default(),
            &mut items,
        )
        .await?;
        // The ConfigMaps refine the view (kube-proxy mode and clusterCIDR, flannel's network)
        // but are not needed for it, and read-only roles often may not read ConfigMaps: warn,
        // go on. Limits (size, pages) still stop the command.
        let what = format!("reading ConfigMap kube-system/{KUBE_PROXY_CONFIGMAP}");
        self.doing = what.clone();
        let path = <ConfigMap as kube::Resource>::url_path(&(), Some("kube-system"));
        match kube::core::Request::new(path).get(KUBE_PROXY_CONFIGMAP, &GetParams::default()) {
            Ok(req) => match self.request::<ConfigMap>(req, true).await {
                Ok(Some(cm)) => items.push(item(&cm)?),
                Ok(None) => {}
                Err(Fail::Other(r)) => return Err(self.fail(&what, Fail::Other(r))),
                Err(e) => warnings.push(format!(
                    "{}: {what}: {} (kube-proxy mode and clusterCIDR unknown)",
                    self.target,
                    self.secrets.scrub(&reason(&e))
                )),
            },
            Err(e) => return Err(self.fail(&what, Fail::Other(e.to_string()))),
        }
        let what = format!("listing ConfigMaps {FLANNEL_CONFIGMAP}");
        let flannel = ListParams::default().fields(&format!("metadata.name={FLANNEL_CONFIGMAP}"));
        match self.list_all::<ConfigMap>(&what, flannel).await {
            Ok(cms) => {
                for cm in cms
                    .iter()
                    .filter(|cm| cm.metadata.name.as_deref() == Some(FLANNEL_CONFIGMAP))
                {
                    items.push(item(cm)?);
                }
            }
            Err(Fail::Other(r)) => return Err(self.fail(&what, Fail::Other(r))),
            Err(e) => warnings.push(format!(
                "{}: {what}: {} (flannel network unknown)",
                self.target,
                self.secrets.scrub(&reason(&e))
            )),
        }
        Ok(LiveList {
            list: serde_json::json!({
                "apiVersion": "v1",
                "kind": "List",
                "metadata": {"resourceVersion": ""},
                "items": items,
            }),
            target: self.target.clone(),
            warnings,
        })
    }

    async fn list_into<K>(
        &mut self,
        what: &str,
        params: ListParams,
        items: &mut Vec<Value>,
    ) -> Result<(), LiveError>
    where
        K: kube::Resource<DynamicType = ()>
            + k8s_openapi::Resource
            + serde::Serialize
            + Clone
            + std::fmt::Debug
            + serde::de::DeserializeOwned,
    {
        let objs = self
            .list_all::<K>(what, params)
            .await
            .map_err(|e| self.fail(what, e))?;
        for o in &objs {
            items.push(item(o)?);
        }
        Ok(())
    }

    /// Every object of a list call, following `continue` tokens: at most
    /// [`Limits::pages`] pages, and never the same token twice.
    async fn list_all<K>(&mut self, what: &str, params: ListParams) -> Result<Vec<K>, Fail>
    where
        K: kube::Resource<DynamicType = ()> + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
    {
        self.doing = what.to_string();
        let request = kube::core::Request::new(K::url_path(&(), None));
        let mut out = Vec::new();
        let mut params = params.limit(PAGE);
        let mut seen: HashSet<String> = HashSet::new();
        for page_no in 1..=self.limits.pages {
            let req = request
                .list(&params)
                .map_err(|e| Fail::Other(e.to_string()))?;
            let page: ObjectList<K> = self
                .request(req, false)
                .await?
                .ok_or_else(|| Fail::Other("empty answer".into()))?;
            out.extend(page.items);
            match page.metadata.continue_.filter(|c| !c.is_empty()) {
                None => return Ok(out),
                Some(token) => {
                    if !seen.insert(token.clone()) {
                        return Err(Fail::Other(format!(
                            "the API server sent the same continue token twice (page {page_no}); \
                             it would never end"
                        )));
                    }
                    params = params.continue_token(&token);
                }
            }
        }
        Err(Fail::Other(format!(
            "more than {} pages of {PAGE} (MAX_LIST_PAGES); the API server keeps sending continue tokens",
            self.limits.pages
        )))
    }

    /// Send `req` and decode its JSON answer, reading at most [`Limits::response_bytes`] (and
    /// what is left of [`Limits::total_bytes`]). `None` for a 404 when `missing_ok`.
    async fn request<T: serde::de::DeserializeOwned>(
        &mut self,
        req: http::Request<Vec<u8>>,
        missing_ok: bool,
    ) -> Result<Option<T>, Fail> {
        let Some(client) = &self.client else {
            return Err(Fail::Other("no client".into()));
        };
        let res = client
            .send(req.map(kube::client::Body::from))
            .await
            .map_err(Fail::Kube)?;
        let status = res.status();
        let cap = self
            .limits
            .response_bytes
            .min(self.limits.total_bytes.saturating_sub(self.used));
        let mut body = res.into_body();
        let mut buf: Vec<u8> = Vec::new();
        while let Some(frame) = body.frame().await {
            let frame = frame.map_err(Fail::Kube)?;
            if let Ok(data) = frame.into_data() {
                if (buf.len() + data.len()) as u64 > cap {
                    let which = if cap < self.limits.response_bytes {
                        format!(
                            "the responses add up to more than {} bytes (MAX_TOTAL_BYTES)",
                            self.limits.total_bytes
                        )
                    } else {
                        format!(
                            "a response of more than {} bytes (MAX_RESPONSE_BYTES)",
                            self.limits.response_bytes
                        )
                    };
                    return Err(Fail::Other(format!("{which}; stopped reading")));
                }
                buf.extend_from_slice(&data);
            }
        }
        self.used += buf.len() as u64;
        if status == http::StatusCode::NOT_FOUND && missing_ok {
            return Ok(None);
        }
        if !status.is_success() {
            #[derive(serde::Deserialize)]
            struct StatusBody {
                message: Option<String>,
            }
            let message = serde_json::from_slice::<StatusBody>(&buf)
                .ok()
                .and_then(|s| s.message)
                .unwrap_or_else(|| {
                    String::from_utf8_lossy(&buf[..buf.len().min(200)]).into_owned()
                });
            return Err(Fail::Status(status.as_u16(), message));
        }
        serde_json::from_slice(&buf)
            .map(Some)
            .map_err(|e| Fail::Other(format!("not the expected JSON: {e}")))
    }
}

/// One object as JSON, with `apiVersion` and `kind` set (list items from the API lack them).
fn item<K: k8s_openapi::Resource + serde::Serialize>(obj: &K) -> Result<Value, LiveError> {
    let mut v = serde_json::to_value(obj)
        .map_err(|e| LiveError::Config(format!("cannot serialize a {}: {e}", K::KIND)))?;
    if let Value::Object(m) = &mut v {
        m.insert("apiVersion".into(), Value::String(K::API_VERSION.into()));
        m.insert("kind".into(), Value::String(K::KIND.into()));
    }
    Ok(v)
}

/// A readable reason for a failed request, with a hint for the usual causes (not scrubbed).
fn reason(f: &Fail) -> String {
    match f {
        Fail::Status(code, message) => {
            let hint = match code {
                401 => " (the credentials were refused; log in again or check the user entry)",
                403 => " (forbidden: the user may not read this; netray needs get/list on it)",
                404 => " (not found: does this API server serve that resource?)",
                _ => "",
            };
            format!("HTTP {code}: {message}{hint}")
        }
        Fail::Kube(e) => format!("{} (is the API server reachable?)", chain(e)),
        Fail::Other(s) => s.clone(),
    }
}

/// An error and its sources, joined with `: `.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let t = c.to_string();
        if !s.contains(&t) {
            s.push_str(": ");
            s.push_str(&t);
        }
        cur = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn items_carry_api_version_and_kind() {
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("kube-proxy".into());
        cm.metadata.namespace = Some("kube-system".into());
        cm.data = Some([("config.conf".to_string(), "mode: ipvs\n".to_string())].into());
        let v = item(&cm).unwrap();
        assert_eq!(v["kind"], "ConfigMap");
        assert_eq!(v["apiVersion"], "v1");
        let mut es = EndpointSlice::default();
        es.metadata.name = Some("web-x".into());
        let v = item(&es).unwrap();
        assert_eq!(v["kind"], "EndpointSlice");
        assert_eq!(v["apiVersion"], "discovery.k8s.io/v1");
        let list = serde_json::json!({"kind": "List", "items": [item(&cm).unwrap()]});
        let view = netray_kube::ClusterView::from_value("live", &list).unwrap();
        assert_eq!(view.kube_proxy.unwrap().mode, "ipvs");
    }

    #[test]
    fn url_passwords_are_redacted() {
        assert_eq!(
            redact_url_passwords("server http://alice:s3cret@10.0.0.1:6443/api, and https://h/"),
            "server http://alice:[REDACTED]@10.0.0.1:6443/api, and https://h/"
        );
        assert_eq!(
            redact_url_passwords("\"https://tok3n@[::1]:6443\""),
            "\"https://[REDACTED]@[::1]:6443\""
        );
    }

    #[test]
    fn kubeconfig_credentials_are_found_in_text_even_when_malformed() {
        let mut s = Secrets::default();
        s.scan_text(
            "users:\n- name: u\n  user:\n    token: [abcdef123456\n    password: \"hunter22\"\n",
        );
        let out = s.scrub("bad at `token: [abcdef123456` and hunter22");
        assert!(
            !out.contains("abcdef123456") && !out.contains("hunter22"),
            "{out}"
        );
    }

    #[test]
    fn missing_kubeconfig_file_is_a_config_error_naming_it() {
        let src = Source {
            kubeconfig: Some("/nonexistent/netray-kubeconfig".into()),
            context: None,
        };
        let e = fetch_list(&src).unwrap_err();
        assert!(matches!(e, LiveError::Config(_)), "{e}");
        assert!(
            e.to_string().contains("/nonexistent/netray-kubeconfig"),
            "{e}"
        );
    }
}
