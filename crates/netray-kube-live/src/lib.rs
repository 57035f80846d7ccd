//! netray's live cluster view: the objects of a bundle's `cluster.json`, listed from the
//! Kubernetes API with the `kube` crate instead of read from a file.
//!
//! [`fetch_list`] lists Nodes, Pods, Services, EndpointSlices, the `kube-system/kube-proxy`
//! ConfigMap and flannel's `kube-flannel-cfg` ConfigMap (any namespace), and assembles them
//! into one Kubernetes `List` — exactly what `kubectl get … -o json` would print — so that the
//! live path and the file path share one parser, [`netray_kube::ClusterView::from_value`].
//!
//! The rest of netray is synchronous: each call builds its own current-thread tokio runtime.

use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Node, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};
use serde_json::Value;

/// Name of kube-proxy's ConfigMap in `kube-system`.
pub const KUBE_PROXY_CONFIGMAP: &str = "kube-proxy";
/// Name of flannel's ConfigMap (any namespace: `kube-flannel` or `kube-system`).
pub const FLANNEL_CONFIGMAP: &str = "kube-flannel-cfg";

/// Objects requested per list call (the API server pages larger lists).
const PAGE: u32 = 500;

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

/// List the cluster's objects from the API as one `List` (see the crate docs).
pub fn fetch_list(source: &Source) -> Result<LiveList, LiveError> {
    let rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .map_err(|e| LiveError::Config(format!("cannot start the async runtime: {e}")))?;
    rt.block_on(fetch_list_async(source))
}

/// [`fetch_list`], then the cluster view of that List (the same parser as `cluster.json`).
pub fn fetch_view(source: &Source) -> Result<(netray_kube::ClusterView, LiveList), LiveError> {
    let live = fetch_list(source)?;
    let view = netray_kube::ClusterView::from_value(&live.target, &live.list)?;
    Ok((view, live))
}

/// Resolve the client configuration and describe it (`context "x" (server …)`).
async fn config(source: &Source) -> Result<(Config, String), LiveError> {
    let options = KubeConfigOptions {
        context: source.context.clone(),
        ..KubeConfigOptions::default()
    };
    let (kubeconfig, origin) = match &source.kubeconfig {
        Some(path) => (
            Kubeconfig::read_from(path).map_err(|e| {
                LiveError::Config(format!("kubeconfig {}: {}", path.display(), chain(&e)))
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
                    return Err(LiveError::Config(format!(
                        "context \"{ctx}\" was asked for but no kubeconfig could be read \
                         ($KUBECONFIG, ~/.kube/config): {}",
                        chain(&kerr)
                    )));
                }
                let mut cfg = Config::incluster().map_err(|ierr| {
                    LiveError::Config(format!(
                        "no kubeconfig ($KUBECONFIG, ~/.kube/config: {}) and not running in a pod \
                         (in-cluster config: {}); pass --kubeconfig FILE",
                        chain(&kerr),
                        chain(&ierr)
                    ))
                })?;
                let target = format!("in-cluster (server {})", cfg.cluster_url);
                tune(&mut cfg);
                return Ok((cfg, target));
            }
        },
    };
    let context = source
        .context
        .clone()
        .or_else(|| kubeconfig.current_context.clone())
        .unwrap_or_default();
    let mut cfg = Config::from_custom_kubeconfig(kubeconfig, &options)
        .await
        .map_err(|e| {
            LiveError::Config(format!(
                "kubeconfig {origin}, context \"{context}\": {}",
                chain(&e)
            ))
        })?;
    let target = format!("context \"{context}\" (server {})", cfg.cluster_url);
    tune(&mut cfg);
    Ok((cfg, target))
}

/// Timeouts suited to a one-shot command line tool.
fn tune(cfg: &mut Config) {
    cfg.connect_timeout = Some(Duration::from_secs(10));
    cfg.read_timeout = Some(Duration::from_secs(120));
}

async fn fetch_list_async(source: &Source) -> Result<LiveList, LiveError> {
    let (cfg, target) = config(source).await?;
    let client = Client::try_from(cfg).map_err(|e| LiveError::Api {
        target: target.clone(),
        what: "creating the client".into(),
        reason: chain(&e),
    })?;
    let fail = |what: &str, e: kube::Error| LiveError::Api {
        target: target.clone(),
        what: what.into(),
        reason: reason(&e),
    };
    let mut items = Vec::new();
    let mut warnings = Vec::new();
    let objs = list_all(Api::<Node>::all(client.clone()), ListParams::default())
        .await
        .map_err(|e| fail("listing nodes", e))?;
    items.extend(objs.iter().map(item).collect::<Result<Vec<_>, _>>()?);
    let objs = list_all(Api::<Pod>::all(client.clone()), ListParams::default())
        .await
        .map_err(|e| fail("listing pods", e))?;
    items.extend(objs.iter().map(item).collect::<Result<Vec<_>, _>>()?);
    let objs = list_all(Api::<Service>::all(client.clone()), ListParams::default())
        .await
        .map_err(|e| fail("listing services", e))?;
    items.extend(objs.iter().map(item).collect::<Result<Vec<_>, _>>()?);
    let objs = list_all(
        Api::<EndpointSlice>::all(client.clone()),
        ListParams::default(),
    )
    .await
    .map_err(|e| fail("listing endpointslices", e))?;
    items.extend(objs.iter().map(item).collect::<Result<Vec<_>, _>>()?);
    // The ConfigMaps refine the view (kube-proxy mode and clusterCIDR, flannel's network) but
    // are not needed for it, and read-only roles often may not read ConfigMaps: warn, go on.
    let kube_system = Api::<ConfigMap>::namespaced(client.clone(), "kube-system");
    match kube_system.get_opt(KUBE_PROXY_CONFIGMAP).await {
        Ok(Some(cm)) => items.push(item(&cm)?),
        Ok(None) => {}
        Err(e) => warnings.push(format!(
            "{target}: reading ConfigMap kube-system/{KUBE_PROXY_CONFIGMAP}: {} \
             (kube-proxy mode and clusterCIDR unknown)",
            reason(&e)
        )),
    }
    let flannel = ListParams::default().fields(&format!("metadata.name={FLANNEL_CONFIGMAP}"));
    match list_all(Api::<ConfigMap>::all(client), flannel).await {
        Ok(cms) => {
            for cm in cms
                .iter()
                .filter(|cm| cm.metadata.name.as_deref() == Some(FLANNEL_CONFIGMAP))
            {
                items.push(item(cm)?);
            }
        }
        Err(e) => warnings.push(format!(
            "{target}: listing ConfigMaps {FLANNEL_CONFIGMAP}: {} (flannel network unknown)",
            reason(&e)
        )),
    }
    Ok(LiveList {
        list: serde_json::json!({
            "apiVersion": "v1",
            "kind": "List",
            "metadata": {"resourceVersion": ""},
            "items": items,
        }),
        target,
        warnings,
    })
}

/// Every object of a list call, following `continue` tokens.
async fn list_all<K>(api: Api<K>, params: ListParams) -> Result<Vec<K>, kube::Error>
where
    K: kube::Resource + Clone + std::fmt::Debug + serde::de::DeserializeOwned,
{
    let mut out = Vec::new();
    let mut params = params.limit(PAGE);
    loop {
        let page = api.list(&params).await?;
        out.extend(page.items);
        match page.metadata.continue_.filter(|c| !c.is_empty()) {
            Some(token) => params = params.continue_token(&token),
            None => return Ok(out),
        }
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

/// A readable reason for an API error, with a hint for the usual causes.
fn reason(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(status) => {
            let hint = match status.code {
                401 => " (the credentials were refused; log in again or check the user entry)",
                403 => " (forbidden: the user may not read this; netray needs get/list on it)",
                404 => " (not found: does this API server serve that resource?)",
                _ => "",
            };
            format!("HTTP {}: {}{hint}", status.code, status.message)
        }
        _ => format!("{} (is the API server reachable?)", chain(e)),
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
