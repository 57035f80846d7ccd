//! The cluster view: Nodes, Pods, Services, EndpointSlices and the kube-proxy / CNI
//! configuration, read from a `kubectl get nodes,pods,services,endpointslices,configmaps -A -o
//! json` List (a bundle's `cluster.json`). It names things; the snapshots decide what packets do.
//!
//! Dual-stack clusters are read in full: a Service's `ipFamilies` and `clusterIPs`, an
//! EndpointSlice's `addressType`, a pod's `podIPs` and a node's `InternalIP`s and `podCIDRs` of
//! both families; [`IpFamily`] picks one of them.
//!
//! Only the fields netray uses are read; unknown fields are ignored (Kubernetes objects carry
//! many), but a field netray uses with the wrong type is an error naming its JSON path.

pub mod suggest;

use std::net::IpAddr;

use ipnet::IpNet;
use serde::Deserialize;

/// A cluster.json could not be read.
#[derive(Debug, thiserror::Error)]
#[error("{file}: at {path}: {reason}")]
pub struct ClusterError {
    /// File concerned.
    pub file: String,
    /// JSON path of the fault.
    pub path: String,
    /// What is wrong.
    pub reason: String,
}

/// An IP family, as Kubernetes names them (`IPv4`, `IPv6`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum IpFamily {
    /// `IPv4`.
    V4,
    /// `IPv6`.
    V6,
}

impl IpFamily {
    /// The family of an address.
    pub fn of(ip: IpAddr) -> IpFamily {
        if ip.is_ipv4() {
            IpFamily::V4
        } else {
            IpFamily::V6
        }
    }

    /// Whether `ip` is of this family.
    pub fn has(self, ip: IpAddr) -> bool {
        IpFamily::of(ip) == self
    }

    /// `4` or `6`, as `--family` takes it.
    pub fn number(self) -> u8 {
        match self {
            IpFamily::V4 => 4,
            IpFamily::V6 => 6,
        }
    }

    /// Kubernetes' spelling: `IPv4`, `IPv6` (also the EndpointSlice `addressType`).
    pub fn name(self) -> &'static str {
        match self {
            IpFamily::V4 => "IPv4",
            IpFamily::V6 => "IPv6",
        }
    }

    /// Parse Kubernetes' spelling (`IPv4`, `IPv6`); anything else is `None`.
    pub fn from_name(s: &str) -> Option<IpFamily> {
        match s {
            "IPv4" => Some(IpFamily::V4),
            "IPv6" => Some(IpFamily::V6),
            _ => None,
        }
    }
}

impl std::fmt::Display for IpFamily {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// A node's address (`status.addresses[]`).
#[derive(Debug, Clone, PartialEq, Eq, Deserialize)]
pub struct NodeAddress {
    /// `InternalIP`, `ExternalIP`, `Hostname`, ...
    #[serde(rename = "type")]
    pub kind: String,
    /// The address or hostname.
    pub address: String,
}

/// A Kubernetes Node.
#[derive(Debug, Clone, PartialEq)]
pub struct Node {
    /// Node name.
    pub name: String,
    /// Status addresses.
    pub addresses: Vec<NodeAddress>,
    /// `spec.podCIDRs` (or `spec.podCIDR`).
    pub pod_cidrs: Vec<IpNet>,
}

impl Node {
    /// Every IP address of the node (InternalIP and ExternalIP).
    pub fn ips(&self) -> Vec<IpAddr> {
        self.addresses
            .iter()
            .filter_map(|a| a.address.parse().ok())
            .collect()
    }

    /// The node's first `InternalIP` of `family`, if it has one.
    pub fn internal_ip(&self, family: IpFamily) -> Option<IpAddr> {
        self.addresses
            .iter()
            .filter(|a| a.kind == "InternalIP")
            .filter_map(|a| a.address.parse::<IpAddr>().ok())
            .find(|ip| family.has(*ip))
    }

    /// The node's pod CIDR of `family`, if it has one.
    pub fn pod_cidr(&self, family: IpFamily) -> Option<IpNet> {
        self.pod_cidrs
            .iter()
            .find(|c| family.has(c.addr()))
            .copied()
    }
}

/// A Kubernetes Pod.
#[derive(Debug, Clone, PartialEq)]
pub struct Pod {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `spec.nodeName`.
    pub node: Option<String>,
    /// `status.podIPs` (or `status.podIP`).
    pub ips: Vec<IpAddr>,
    /// `status.hostIP`.
    pub host_ip: Option<IpAddr>,
    /// `spec.hostNetwork`.
    pub host_network: bool,
    /// `status.phase`.
    pub phase: String,
}

impl Pod {
    /// The pod's IP of `family` (its `podIPs` entry of that family), if it has one.
    pub fn ip(&self, family: IpFamily) -> Option<IpAddr> {
        self.ips.iter().copied().find(|ip| family.has(*ip))
    }
}

/// A service port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePort {
    /// Port name (may be empty for single-port services).
    pub name: String,
    /// `TCP`, `UDP` or `SCTP`.
    pub protocol: String,
    /// Service port.
    pub port: u16,
    /// Target port number, when numeric.
    pub target_port: Option<u16>,
    /// Target port name, when named.
    pub target_port_name: Option<String>,
    /// NodePort, if allocated.
    pub node_port: Option<u16>,
}

/// A Kubernetes Service.
#[derive(Debug, Clone, PartialEq)]
pub struct Service {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// `ClusterIP`, `NodePort`, `LoadBalancer`, `ExternalName`.
    pub kind: String,
    /// `spec.clusterIPs` (or `spec.clusterIP`); empty for headless. The first is the
    /// primary family's.
    pub cluster_ips: Vec<IpAddr>,
    /// `spec.ipFamilies` (`IPv4`, `IPv6`, primary first); when the object does not say, the
    /// families of `cluster_ips`, else IPv4 (the API server's default before dual-stack).
    pub ip_families: Vec<IpFamily>,
    /// `spec.ipFamilyPolicy` (`SingleStack`, `PreferDualStack`, `RequireDualStack`); empty
    /// when not given.
    pub ip_family_policy: String,
    /// Ports.
    pub ports: Vec<ServicePort>,
    /// `spec.externalIPs`.
    pub external_ips: Vec<IpAddr>,
    /// `status.loadBalancer.ingress[].ip`.
    pub lb_ingress: Vec<IpAddr>,
    /// `Cluster` (default) or `Local`.
    pub external_traffic_policy: String,
    /// `Cluster` (default) or `Local`.
    pub internal_traffic_policy: String,
    /// `None` or `ClientIP`.
    pub session_affinity: String,
}

impl Service {
    /// The ClusterIP of `family` (`clusterIPs` holds at most one per family).
    pub fn cluster_ip(&self, family: IpFamily) -> Option<IpAddr> {
        self.cluster_ips.iter().copied().find(|ip| family.has(*ip))
    }

    /// The families the Service has a ClusterIP of, primary first.
    pub fn cluster_ip_families(&self) -> Vec<IpFamily> {
        let mut out: Vec<IpFamily> = Vec::new();
        for ip in &self.cluster_ips {
            let f = IpFamily::of(*ip);
            if !out.contains(&f) {
                out.push(f);
            }
        }
        out
    }
}

/// Conditions of one endpoint.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct EndpointConditions {
    /// Ready (nil counts as true, as kube-proxy does).
    pub ready: bool,
    /// Serving.
    pub serving: bool,
    /// Terminating.
    pub terminating: bool,
}

/// One endpoint of a slice.
#[derive(Debug, Clone, PartialEq)]
pub struct Endpoint {
    /// Addresses.
    pub addresses: Vec<IpAddr>,
    /// Conditions.
    pub conditions: EndpointConditions,
    /// `nodeName`.
    pub node: Option<String>,
    /// `targetRef` as `KIND/NS/NAME`.
    pub target: Option<String>,
}

/// A port of an EndpointSlice.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointPort {
    /// Matches the service port name.
    pub name: String,
    /// `TCP`, `UDP`, `SCTP`.
    pub protocol: String,
    /// Target port on the endpoints.
    pub port: u16,
}

/// A discovery.k8s.io/v1 EndpointSlice.
#[derive(Debug, Clone, PartialEq)]
pub struct EndpointSlice {
    /// Namespace.
    pub namespace: String,
    /// Name.
    pub name: String,
    /// Owning service (`kubernetes.io/service-name` label).
    pub service: Option<String>,
    /// `addressType`: `IPv4`, `IPv6` or `FQDN` (as written; `IPv4` when absent). kube-proxy
    /// programs an IPv4 slice's endpoints only into the IPv4 rules and an IPv6 slice's only
    /// into the IPv6 rules; FQDN slices into neither.
    pub address_type: String,
    /// Ports.
    pub ports: Vec<EndpointPort>,
    /// Endpoints.
    pub endpoints: Vec<Endpoint>,
}

/// kube-proxy configuration found in the cluster (`kube-system/kube-proxy` ConfigMap).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeProxyConfig {
    /// `iptables`, `ipvs`, `nftables` (empty means the default, iptables).
    pub mode: String,
    /// `clusterCIDR`, possibly empty; dual-stack clusters give one CIDR per family, comma
    /// separated.
    pub cluster_cidr: String,
}

impl KubeProxyConfig {
    /// The `clusterCIDR` entry of `family`, when one parses.
    pub fn cluster_cidr_of(&self, family: IpFamily) -> Option<IpNet> {
        self.cluster_cidr
            .split(',')
            .filter_map(|c| c.trim().parse::<IpNet>().ok())
            .find(|c| family.has(c.addr()))
    }
}

/// The whole cluster view.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct ClusterView {
    /// Nodes.
    pub nodes: Vec<Node>,
    /// Pods.
    pub pods: Vec<Pod>,
    /// Services.
    pub services: Vec<Service>,
    /// EndpointSlices.
    pub endpoint_slices: Vec<EndpointSlice>,
    /// kube-proxy configuration, when the List includes its ConfigMap.
    pub kube_proxy: Option<KubeProxyConfig>,
    /// flannel `net-conf.json` `Network`, when the List includes its ConfigMap.
    pub flannel_network: Option<IpNet>,
    /// flannel `net-conf.json` `IPv6Network` (dual-stack flannel, `EnableIPv6`), when given.
    pub flannel_network_v6: Option<IpNet>,
}

// ---- raw serde shapes (only the fields used) ----

#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct Meta {
    #[serde(default)]
    name: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    labels: std::collections::BTreeMap<String, String>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawNode {
    metadata: Meta,
    #[serde(default)]
    spec: RawNodeSpec,
    #[serde(default)]
    status: RawNodeStatus,
}
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawNodeSpec {
    #[serde(default, rename = "podCIDR")]
    pod_cidr: Option<IpNet>,
    #[serde(default, rename = "podCIDRs")]
    pod_cidrs: Vec<IpNet>,
}
#[derive(Deserialize, Default)]
struct RawNodeStatus {
    #[serde(default)]
    addresses: Vec<NodeAddress>,
}

#[derive(Deserialize)]
struct RawIp {
    ip: IpAddr,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawPod {
    metadata: Meta,
    #[serde(default)]
    spec: RawPodSpec,
    #[serde(default)]
    status: RawPodStatus,
}
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawPodSpec {
    #[serde(default)]
    node_name: Option<String>,
    #[serde(default)]
    host_network: bool,
}
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawPodStatus {
    #[serde(default, rename = "podIP")]
    pod_ip: Option<IpAddr>,
    #[serde(default, rename = "podIPs")]
    pod_ips: Vec<RawIp>,
    #[serde(default, rename = "hostIP")]
    host_ip: Option<IpAddr>,
    #[serde(default)]
    phase: String,
}

#[derive(Deserialize)]
#[serde(untagged)]
enum IntOrString {
    Int(u16),
    Str(String),
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawServicePort {
    #[serde(default)]
    name: String,
    #[serde(default = "tcp")]
    protocol: String,
    port: u16,
    #[serde(default)]
    target_port: Option<IntOrString>,
    #[serde(default)]
    node_port: Option<u16>,
}
fn tcp() -> String {
    "TCP".into()
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawService {
    metadata: Meta,
    #[serde(default)]
    spec: RawServiceSpec,
    #[serde(default)]
    status: RawServiceStatus,
}
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawServiceSpec {
    #[serde(default, rename = "type")]
    kind: Option<String>,
    #[serde(default, rename = "clusterIP")]
    cluster_ip: Option<String>,
    #[serde(default, rename = "clusterIPs")]
    cluster_ips: Vec<String>,
    #[serde(default)]
    ports: Vec<RawServicePort>,
    #[serde(default, rename = "externalIPs")]
    external_ips: Vec<IpAddr>,
    #[serde(default)]
    external_traffic_policy: Option<String>,
    #[serde(default)]
    internal_traffic_policy: Option<String>,
    #[serde(default)]
    session_affinity: Option<String>,
    #[serde(default)]
    ip_families: Vec<String>,
    #[serde(default)]
    ip_family_policy: Option<String>,
}
#[derive(Deserialize, Default)]
#[serde(rename_all = "camelCase")]
struct RawServiceStatus {
    #[serde(default)]
    load_balancer: RawLbStatus,
}
#[derive(Deserialize, Default)]
struct RawLbStatus {
    #[serde(default)]
    ingress: Vec<RawLbIngress>,
}
#[derive(Deserialize)]
struct RawLbIngress {
    #[serde(default)]
    ip: Option<IpAddr>,
}

#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawSlice {
    metadata: Meta,
    #[serde(default)]
    address_type: Option<String>,
    #[serde(default)]
    ports: Option<Vec<RawSlicePort>>,
    #[serde(default)]
    endpoints: Option<Vec<RawEndpoint>>,
}
#[derive(Deserialize)]
struct RawSlicePort {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    protocol: Option<String>,
    #[serde(default)]
    port: Option<u16>,
}
#[derive(Deserialize)]
#[serde(rename_all = "camelCase")]
struct RawEndpoint {
    addresses: Vec<IpAddr>,
    #[serde(default)]
    conditions: RawConditions,
    #[serde(default)]
    node_name: Option<String>,
    #[serde(default)]
    target_ref: Option<RawTargetRef>,
}
#[derive(Deserialize, Default)]
struct RawConditions {
    #[serde(default)]
    ready: Option<bool>,
    #[serde(default)]
    serving: Option<bool>,
    #[serde(default)]
    terminating: Option<bool>,
}
#[derive(Deserialize)]
struct RawTargetRef {
    #[serde(default)]
    kind: String,
    #[serde(default)]
    namespace: String,
    #[serde(default)]
    name: String,
}

#[derive(Deserialize)]
struct RawConfigMap {
    metadata: Meta,
    #[serde(default)]
    data: std::collections::BTreeMap<String, String>,
}

impl ClusterView {
    /// Read a Kubernetes `List` (or a single object); `file` names it in errors.
    pub fn from_value(file: &str, value: &serde_json::Value) -> Result<ClusterView, ClusterError> {
        let err = |path: String, reason: String| ClusterError {
            file: file.to_string(),
            path,
            reason,
        };
        let items: Vec<(String, &serde_json::Value)> = match value.get("items") {
            Some(serde_json::Value::Array(a)) => a
                .iter()
                .enumerate()
                .map(|(i, v)| (format!(".items[{i}]"), v))
                .collect(),
            Some(_) => return Err(err(".items".into(), "expected an array".into())),
            None if value.get("kind").is_some() => vec![(".".into(), value)],
            None => {
                return Err(err(
                    ".".into(),
                    "expected a Kubernetes List (an object with `items`)".into(),
                ));
            }
        };
        let mut view = ClusterView::default();
        for (path, item) in items {
            let kind = item.get("kind").and_then(|k| k.as_str()).unwrap_or("");
            macro_rules! de {
                ($t:ty) => {
                    serde_path_to_error::deserialize::<_, $t>(item).map_err(|e| {
                        let inner = e.path().to_string();
                        let at = if inner == "." {
                            path.clone()
                        } else {
                            format!("{path}.{inner}")
                        };
                        err(at, e.inner().to_string())
                    })?
                };
            }
            match kind {
                "Node" => {
                    let n = de!(RawNode);
                    let mut cidrs = n.spec.pod_cidrs;
                    if cidrs.is_empty() {
                        cidrs.extend(n.spec.pod_cidr);
                    }
                    view.nodes.push(Node {
                        name: n.metadata.name,
                        addresses: n.status.addresses,
                        pod_cidrs: cidrs,
                    });
                }
                "Pod" => {
                    let p = de!(RawPod);
                    let mut ips: Vec<IpAddr> = p.status.pod_ips.iter().map(|r| r.ip).collect();
                    if ips.is_empty() {
                        ips.extend(p.status.pod_ip);
                    }
                    view.pods.push(Pod {
                        namespace: p.metadata.namespace,
                        name: p.metadata.name,
                        node: p.spec.node_name,
                        ips,
                        host_ip: p.status.host_ip,
                        host_network: p.spec.host_network,
                        phase: p.status.phase,
                    });
                }
                "Service" => {
                    let s = de!(RawService);
                    let mut raw_ips = s.spec.cluster_ips;
                    if raw_ips.is_empty() {
                        raw_ips.extend(s.spec.cluster_ip);
                    }
                    let cluster_ips: Vec<IpAddr> =
                        raw_ips.iter().filter_map(|s| s.parse().ok()).collect();
                    let mut ip_families = Vec::new();
                    for (i, f) in s.spec.ip_families.iter().enumerate() {
                        let fam = IpFamily::from_name(f).ok_or_else(|| {
                            err(
                                format!("{path}.spec.ipFamilies[{i}]"),
                                format!("`{f}` is not an IP family (IPv4 or IPv6)"),
                            )
                        })?;
                        ip_families.push(fam);
                    }
                    if ip_families.is_empty() {
                        for ip in &cluster_ips {
                            if !ip_families.contains(&IpFamily::of(*ip)) {
                                ip_families.push(IpFamily::of(*ip));
                            }
                        }
                    }
                    if ip_families.is_empty() {
                        ip_families.push(IpFamily::V4);
                    }
                    view.services.push(Service {
                        namespace: s.metadata.namespace,
                        name: s.metadata.name,
                        kind: s.spec.kind.unwrap_or_else(|| "ClusterIP".into()),
                        cluster_ips,
                        ip_families,
                        ip_family_policy: s.spec.ip_family_policy.unwrap_or_default(),
                        ports: s
                            .spec
                            .ports
                            .into_iter()
                            .map(|p| {
                                let (tp, tpn) = match p.target_port {
                                    Some(IntOrString::Int(n)) => (Some(n), None),
                                    Some(IntOrString::Str(s)) => match s.parse() {
                                        Ok(n) => (Some(n), None),
                                        Err(_) => (None, Some(s)),
                                    },
                                    None => (Some(p.port), None),
                                };
                                ServicePort {
                                    name: p.name,
                                    protocol: p.protocol,
                                    port: p.port,
                                    target_port: tp,
                                    target_port_name: tpn,
                                    node_port: p.node_port,
                                }
                            })
                            .collect(),
                        external_ips: s.spec.external_ips,
                        lb_ingress: s
                            .status
                            .load_balancer
                            .ingress
                            .iter()
                            .filter_map(|i| i.ip)
                            .collect(),
                        external_traffic_policy: s
                            .spec
                            .external_traffic_policy
                            .unwrap_or_else(|| "Cluster".into()),
                        internal_traffic_policy: s
                            .spec
                            .internal_traffic_policy
                            .unwrap_or_else(|| "Cluster".into()),
                        session_affinity: s.spec.session_affinity.unwrap_or_else(|| "None".into()),
                    });
                }
                "EndpointSlice" => {
                    let s = de!(RawSlice);
                    view.endpoint_slices.push(EndpointSlice {
                        service: s.metadata.labels.get("kubernetes.io/service-name").cloned(),
                        address_type: s.address_type.unwrap_or_else(|| "IPv4".into()),
                        namespace: s.metadata.namespace,
                        name: s.metadata.name,
                        ports: s
                            .ports
                            .unwrap_or_default()
                            .into_iter()
                            .filter_map(|p| {
                                Some(EndpointPort {
                                    name: p.name.unwrap_or_default(),
                                    protocol: p.protocol.unwrap_or_else(tcp),
                                    port: p.port?,
                                })
                            })
                            .collect(),
                        endpoints: s
                            .endpoints
                            .unwrap_or_default()
                            .into_iter()
                            .map(|e| {
                                let ready = e.conditions.ready.unwrap_or(true);
                                Endpoint {
                                    addresses: e.addresses,
                                    conditions: EndpointConditions {
                                        ready,
                                        serving: e.conditions.serving.unwrap_or(ready),
                                        terminating: e.conditions.terminating.unwrap_or(false),
                                    },
                                    node: e.node_name,
                                    target: e
                                        .target_ref
                                        .map(|t| format!("{}/{}/{}", t.kind, t.namespace, t.name)),
                                }
                            })
                            .collect(),
                    });
                }
                "ConfigMap" => {
                    let c = de!(RawConfigMap);
                    if c.metadata.namespace == "kube-system" && c.metadata.name == "kube-proxy" {
                        let conf = c
                            .data
                            .get("config.conf")
                            .or_else(|| c.data.values().next())
                            .cloned()
                            .unwrap_or_default();
                        view.kube_proxy = Some(KubeProxyConfig {
                            mode: yaml_scalar(&conf, "mode"),
                            cluster_cidr: yaml_scalar(&conf, "clusterCIDR"),
                        });
                    } else if c.metadata.name.contains("flannel")
                        && let Some(nc) = c.data.get("net-conf.json")
                    {
                        let v: serde_json::Value = serde_json::from_str(nc).map_err(|e| {
                            err(
                                format!("{path}.data.net-conf.json"),
                                format!("not JSON: {e}"),
                            )
                        })?;
                        view.flannel_network = v
                            .get("Network")
                            .and_then(|n| n.as_str())
                            .and_then(|n| n.parse().ok());
                        view.flannel_network_v6 = v
                            .get("IPv6Network")
                            .and_then(|n| n.as_str())
                            .and_then(|n| n.parse().ok());
                    }
                }
                _ => {}
            }
        }
        Ok(view)
    }

    /// The pod `namespace/name`.
    pub fn pod(&self, namespace: &str, name: &str) -> Option<&Pod> {
        self.pods
            .iter()
            .find(|p| p.namespace == namespace && p.name == name)
    }

    /// The service `namespace/name`.
    pub fn service(&self, namespace: &str, name: &str) -> Option<&Service> {
        self.services
            .iter()
            .find(|s| s.namespace == namespace && s.name == name)
    }

    /// The node named `name`.
    pub fn node(&self, name: &str) -> Option<&Node> {
        self.nodes.iter().find(|n| n.name == name)
    }

    /// The slices of service `namespace/name`.
    pub fn slices_of<'a>(
        &'a self,
        namespace: &'a str,
        name: &'a str,
    ) -> impl Iterator<Item = &'a EndpointSlice> + 'a {
        self.endpoint_slices
            .iter()
            .filter(move |s| s.namespace == namespace && s.service.as_deref() == Some(name))
    }

    /// Ready endpoint addresses and target ports of service port `port`.
    pub fn ready_endpoints(&self, svc: &Service, port: &ServicePort) -> Vec<(IpAddr, u16)> {
        let mut out = Vec::new();
        for slice in self.slices_of(&svc.namespace, &svc.name) {
            let Some(p) = slice
                .ports
                .iter()
                .find(|p| p.name == port.name && p.protocol.eq_ignore_ascii_case(&port.protocol))
            else {
                continue;
            };
            for e in &slice.endpoints {
                if e.conditions.ready {
                    out.extend(e.addresses.iter().map(|a| (*a, p.port)));
                }
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// Ready endpoints of service port `port` in the slices of `family` (`addressType`), as
    /// kube-proxy programs them into that family's rules. Addresses of the other family in a
    /// slice (which the API server refuses) are left out.
    pub fn ready_endpoints_of(
        &self,
        svc: &Service,
        port: &ServicePort,
        family: IpFamily,
    ) -> Vec<(IpAddr, u16)> {
        let mut out = Vec::new();
        for slice in self.slices_of(&svc.namespace, &svc.name) {
            if slice.address_type != family.name() {
                continue;
            }
            let Some(p) = slice
                .ports
                .iter()
                .find(|p| p.name == port.name && p.protocol.eq_ignore_ascii_case(&port.protocol))
            else {
                continue;
            };
            for e in slice.endpoints.iter().filter(|e| e.conditions.ready) {
                out.extend(
                    e.addresses
                        .iter()
                        .filter(|a| family.has(**a))
                        .map(|a| (*a, p.port)),
                );
            }
        }
        out.sort();
        out.dedup();
        out
    }

    /// The families a flow to Service `svc` can take: those it has a ClusterIP of, restricted
    /// to `want` when given. Empty when `want` names a family the Service does not have.
    pub fn service_families(&self, svc: &Service, want: Option<IpFamily>) -> Vec<IpFamily> {
        svc.cluster_ip_families()
            .into_iter()
            .filter(|f| want.is_none_or(|w| w == *f))
            .collect()
    }

    /// Who owns this address: a pod, a node, or a service.
    pub fn owner_of(&self, ip: IpAddr) -> Option<String> {
        if let Some(p) = self
            .pods
            .iter()
            .find(|p| !p.host_network && p.ips.contains(&ip))
        {
            return Some(format!("pod/{}/{}", p.namespace, p.name));
        }
        if let Some(n) = self.nodes.iter().find(|n| n.ips().contains(&ip)) {
            return Some(format!("node/{}", n.name));
        }
        if let Some(s) = self.services.iter().find(|s| {
            s.cluster_ips.contains(&ip)
                || s.external_ips.contains(&ip)
                || s.lb_ingress.contains(&ip)
        }) {
            return Some(format!("svc/{}/{}", s.namespace, s.name));
        }
        None
    }
}

/// `key: value` from a flat YAML document (kube-proxy's config.conf), unquoted.
fn yaml_scalar(doc: &str, key: &str) -> String {
    doc.lines()
        .find_map(|l| {
            let t = l.trim_start();
            t.strip_prefix(key)
                .and_then(|r| r.strip_prefix(':'))
                .filter(|_| l.len() - t.len() == 0)
                .map(|v| v.trim().trim_matches('"').trim_matches('\'').to_string())
        })
        .unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> serde_json::Value {
        serde_json::json!({
          "apiVersion": "v1", "kind": "List",
          "items": [
            {"kind": "Node", "metadata": {"name": "node-a"},
             "spec": {"podCIDR": "10.244.0.0/24"},
             "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.10"}]}},
            {"kind": "Pod", "metadata": {"name": "web-1", "namespace": "default"},
             "spec": {"nodeName": "node-a"},
             "status": {"podIP": "10.244.0.2", "hostIP": "192.168.50.10", "phase": "Running"}},
            {"kind": "Service", "metadata": {"name": "web", "namespace": "default"},
             "spec": {"type": "ClusterIP", "clusterIP": "10.96.0.20",
                      "ports": [{"name": "http", "port": 80, "targetPort": 8080, "protocol": "TCP"}]}},
            {"kind": "EndpointSlice", "metadata": {"name": "web-x", "namespace": "default",
              "labels": {"kubernetes.io/service-name": "web"}},
             "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
             "endpoints": [{"addresses": ["10.244.0.2"], "conditions": {"ready": true}, "nodeName": "node-a"},
                           {"addresses": ["10.244.0.3"], "conditions": {"ready": false}}]},
            {"kind": "ConfigMap", "metadata": {"name": "kube-proxy", "namespace": "kube-system"},
             "data": {"config.conf": "mode: iptables\nclusterCIDR: 10.244.0.0/16\n"}}
          ]
        })
    }

    #[test]
    fn reads_a_list() {
        let v = ClusterView::from_value("cluster.json", &sample()).unwrap();
        assert_eq!(v.nodes[0].pod_cidrs, vec!["10.244.0.0/24".parse().unwrap()]);
        let svc = v.service("default", "web").unwrap();
        assert_eq!(svc.ports[0].target_port, Some(8080));
        assert_eq!(
            v.ready_endpoints(svc, &svc.ports[0]),
            vec![("10.244.0.2".parse().unwrap(), 8080)]
        );
        assert_eq!(
            v.owner_of("10.96.0.20".parse().unwrap()).as_deref(),
            Some("svc/default/web")
        );
        let kp = v.kube_proxy.unwrap();
        assert_eq!(kp.mode, "iptables");
        assert_eq!(kp.cluster_cidr, "10.244.0.0/16");
    }

    fn dual_stack_sample() -> serde_json::Value {
        serde_json::json!({
          "apiVersion": "v1", "kind": "List",
          "items": [
            {"kind": "Node", "metadata": {"name": "node-a"},
             "spec": {"podCIDRs": ["10.244.0.0/24", "fd00:10:244::/64"]},
             "status": {"addresses": [{"type": "InternalIP", "address": "192.168.50.10"},
                                      {"type": "InternalIP", "address": "fd00:50::10"},
                                      {"type": "Hostname", "address": "node-a"}]}},
            {"kind": "Pod", "metadata": {"name": "web-1", "namespace": "default"},
             "spec": {"nodeName": "node-a"},
             "status": {"podIP": "10.244.0.2",
                        "podIPs": [{"ip": "10.244.0.2"}, {"ip": "fd00:10:244::2"}],
                        "phase": "Running"}},
            {"kind": "Service", "metadata": {"name": "web", "namespace": "default"},
             "spec": {"clusterIP": "fd00:96::20", "clusterIPs": ["fd00:96::20", "10.96.0.20"],
                      "ipFamilies": ["IPv6", "IPv4"], "ipFamilyPolicy": "RequireDualStack",
                      "ports": [{"name": "http", "port": 80, "targetPort": 8080}]}},
            {"kind": "Service", "metadata": {"name": "old", "namespace": "default"},
             "spec": {"clusterIP": "10.96.0.21", "ports": [{"port": 80}]}},
            {"kind": "EndpointSlice", "metadata": {"name": "web-4", "namespace": "default",
              "labels": {"kubernetes.io/service-name": "web"}},
             "addressType": "IPv4",
             "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
             "endpoints": [{"addresses": ["10.244.0.2"]}]},
            {"kind": "EndpointSlice", "metadata": {"name": "web-6", "namespace": "default",
              "labels": {"kubernetes.io/service-name": "web"}},
             "addressType": "IPv6",
             "ports": [{"name": "http", "port": 8080, "protocol": "TCP"}],
             "endpoints": [{"addresses": ["fd00:10:244::2"]}]},
            {"kind": "ConfigMap", "metadata": {"name": "kube-proxy", "namespace": "kube-system"},
             "data": {"config.conf": "clusterCIDR: 10.244.0.0/16,fd00:10:244::/56\n"}},
            {"kind": "ConfigMap", "metadata": {"name": "kube-flannel-cfg", "namespace": "kube-flannel"},
             "data": {"net-conf.json": "{\"Network\": \"10.244.0.0/16\", \"EnableIPv6\": true, \"IPv6Network\": \"fd00:10:244::/56\"}"}}
          ]
        })
    }

    #[test]
    fn reads_dual_stack() {
        let v = ClusterView::from_value("cluster.json", &dual_stack_sample()).unwrap();
        let n = &v.nodes[0];
        assert_eq!(
            n.internal_ip(IpFamily::V6),
            Some("fd00:50::10".parse().unwrap())
        );
        assert_eq!(
            n.internal_ip(IpFamily::V4),
            Some("192.168.50.10".parse().unwrap())
        );
        assert_eq!(
            n.pod_cidr(IpFamily::V6),
            Some("fd00:10:244::/64".parse().unwrap())
        );
        let p = v.pod("default", "web-1").unwrap();
        assert_eq!(p.ip(IpFamily::V6), Some("fd00:10:244::2".parse().unwrap()));
        let svc = v.service("default", "web").unwrap();
        assert_eq!(svc.ip_families, vec![IpFamily::V6, IpFamily::V4]);
        assert_eq!(svc.ip_family_policy, "RequireDualStack");
        assert_eq!(
            svc.cluster_ip(IpFamily::V4),
            Some("10.96.0.20".parse().unwrap())
        );
        assert_eq!(
            v.service_families(svc, None),
            vec![IpFamily::V6, IpFamily::V4]
        );
        assert_eq!(
            v.service_families(svc, Some(IpFamily::V4)),
            vec![IpFamily::V4]
        );
        assert_eq!(
            v.ready_endpoints_of(svc, &svc.ports[0], IpFamily::V6),
            vec![("fd00:10:244::2".parse().unwrap(), 8080)]
        );
        assert_eq!(
            v.ready_endpoints_of(svc, &svc.ports[0], IpFamily::V4),
            vec![("10.244.0.2".parse().unwrap(), 8080)]
        );
        // A single-stack Service from before dual-stack: IPv4 only.
        let old = v.service("default", "old").unwrap();
        assert_eq!(old.ip_families, vec![IpFamily::V4]);
        assert!(v.service_families(old, Some(IpFamily::V6)).is_empty());
        let kp = v.kube_proxy.as_ref().unwrap();
        assert_eq!(
            kp.cluster_cidr_of(IpFamily::V6),
            Some("fd00:10:244::/56".parse().unwrap())
        );
        assert_eq!(
            v.flannel_network_v6,
            Some("fd00:10:244::/56".parse().unwrap())
        );
        assert_eq!(
            v.owner_of("fd00:10:244::2".parse().unwrap()).as_deref(),
            Some("pod/default/web-1")
        );
    }

    #[test]
    fn unknown_ip_family_names_its_path() {
        let mut s = dual_stack_sample();
        s["items"][2]["spec"]["ipFamilies"][1] = serde_json::json!("IPv5");
        let e = ClusterView::from_value("cluster.json", &s).unwrap_err();
        assert_eq!(e.path, ".items[2].spec.ipFamilies[1]");
        assert!(e.reason.contains("IPv5"), "{}", e.reason);
    }

    #[test]
    fn ill_typed_field_names_its_path() {
        let mut s = sample();
        s["items"][2]["spec"]["ports"][0]["port"] = serde_json::json!("eighty");
        let e = ClusterView::from_value("cluster.json", &s).unwrap_err();
        assert_eq!(e.path, ".items[2].spec.ports[0].port");
    }
}
