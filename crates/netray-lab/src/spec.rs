//! What a lab cluster consists of: nodes, pods and services, with the address plan real
//! flannel + kube-proxy clusters use. Plain data; [`crate::Lab::up`] turns it into namespaces.

use std::net::Ipv4Addr;

/// Cluster CIDR (flannel's default network).
pub const CLUSTER_CIDR: &str = "10.244.0.0/16";
/// Underlay subnet the nodes share (exists only inside lab namespaces).
pub const UNDERLAY_PREFIX: u8 = 24;
/// Router on the underlay (nodes' default gateway).
pub const GATEWAY_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 1);
/// External client on the underlay.
pub const EXTERNAL_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 50, 100);
/// TCP port every pod serves.
pub const POD_TCP_PORT: u16 = 8080;
/// UDP port every pod serves.
pub const POD_UDP_PORT: u16 = 8053;
/// MTU of pod interfaces, `cni0` and `flannel.1` (underlay 1500 minus VXLAN's 50).
pub const OVERLAY_MTU: u32 = 1450;
/// VXLAN UDP port (flannel's default).
pub const VXLAN_PORT: u16 = 8472;

/// Underlay address of node `i`.
pub fn node_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(192, 168, 50, 10 + i as u8)
}

/// Pod subnet of node `i` (`10.244.i.0/24`).
pub fn pod_cidr(i: usize) -> String {
    format!("10.244.{i}.0/24")
}

/// `cni0` address of node `i` (`10.244.i.1`), the pods' gateway.
pub fn cni_gateway(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, i as u8, 1)
}

/// `flannel.1` address of node `i` (`10.244.i.0`).
pub fn vtep_ip(i: usize) -> Ipv4Addr {
    Ipv4Addr::new(10, 244, i as u8, 0)
}

/// Deterministic `flannel.1` MAC of node `i`; `generation` changes after a "reboot".
pub fn vtep_mac(i: usize, generation: u8) -> String {
    format!("0e:6e:72:{generation:02x}:00:{i:02x}")
}

/// Transport protocol of a service port or probe.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Proto {
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
}

impl Proto {
    /// `tcp` / `udp`.
    pub fn lower(self) -> &'static str {
        match self {
            Proto::Tcp => "tcp",
            Proto::Udp => "udp",
        }
    }
    /// `TCP` / `UDP` as Kubernetes writes it.
    pub fn upper(self) -> &'static str {
        match self {
            Proto::Tcp => "TCP",
            Proto::Udp => "UDP",
        }
    }
    /// The pod port serving this protocol.
    pub fn pod_port(self) -> u16 {
        match self {
            Proto::Tcp => POD_TCP_PORT,
            Proto::Udp => POD_UDP_PORT,
        }
    }
}

/// A node of the lab cluster.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeSpec {
    /// Kubernetes node name (`node0`, …).
    pub name: String,
    /// Underlay address (`eth0`).
    pub ip: Ipv4Addr,
    /// `spec.podCIDR`.
    pub pod_cidr: String,
}

/// How a pod is attached to its node.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PodNetwork {
    /// On the node's `cni0` bridge with an address from the node's pod CIDR.
    Cni,
    /// A VM-like workload on a separate bridge `br-vm` whose gateway is the lab router, not
    /// the node (seed 000's KubeVirt VM on a VLAN bridge).
    VmBridge,
}

/// A pod (one network namespace running the TCP+UDP server).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PodSpec {
    /// Pod name; also the lab member name and the namespace suffix.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Index of its node in [`ClusterSpec::nodes`].
    pub node: usize,
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Value of the `app` label services select on.
    pub app: String,
    /// How it is attached.
    pub network: PodNetwork,
}

/// Service type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServiceKind {
    /// ClusterIP only.
    ClusterIp,
    /// ClusterIP + node ports.
    NodePort,
    /// ClusterIP + node ports + load-balancer ingress IP.
    LoadBalancer,
}

/// One port of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServicePortSpec {
    /// Port name (`http`, `dns`).
    pub name: String,
    /// Protocol.
    pub proto: Proto,
    /// Service port.
    pub port: u16,
    /// Pod port.
    pub target_port: u16,
    /// Node port (NodePort and LoadBalancer services).
    pub node_port: Option<u16>,
}

/// A Service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ServiceSpec {
    /// Service name.
    pub name: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Type.
    pub kind: ServiceKind,
    /// Cluster IP.
    pub cluster_ip: Ipv4Addr,
    /// Ports.
    pub ports: Vec<ServicePortSpec>,
    /// Pods selected by their `app` label.
    pub selector_app: String,
    /// `status.loadBalancer.ingress[0].ip` for LoadBalancer services.
    pub load_balancer_ip: Option<Ipv4Addr>,
    /// `externalTrafficPolicy: Local`.
    pub external_traffic_local: bool,
    /// `healthCheckNodePort` (LoadBalancer with `externalTrafficPolicy: Local`).
    pub health_check_node_port: Option<u16>,
}

impl ServiceSpec {
    /// `namespace/name:port` as kube-proxy names a service port.
    pub fn port_name(&self, p: &ServicePortSpec) -> String {
        format!("{}/{}:{}", self.namespace, self.name, p.name)
    }
    /// The port with this protocol, if any.
    pub fn port(&self, proto: Proto) -> Option<&ServicePortSpec> {
        self.ports.iter().find(|p| p.proto == proto)
    }
}

/// One ready endpoint of a service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EndpointSpec {
    /// Pod name.
    pub pod: String,
    /// Pod IP.
    pub ip: Ipv4Addr,
    /// Node index.
    pub node: usize,
}

/// The whole cluster: nodes, pods, services. Build one with [`ClusterSpec::standard`] and
/// adjust it before [`crate::Lab::up`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ClusterSpec {
    /// Nodes, in order; node `i` owns `10.244.i.0/24` and `192.168.50.(10+i)`.
    pub nodes: Vec<NodeSpec>,
    /// Pods.
    pub pods: Vec<PodSpec>,
    /// Services.
    pub services: Vec<ServiceSpec>,
}

/// Cluster IP of the standard `web` service.
pub const WEB_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 100);
/// Cluster IP of the standard `web-np` NodePort service.
pub const WEB_NP_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 101);
/// Cluster IP of the standard `web-lb` LoadBalancer service.
pub const WEB_LB_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 102);
/// Load-balancer ingress IP of `web-lb` (held by the lab router, routed to `node0`).
pub const WEB_LB_IP: Ipv4Addr = Ipv4Addr::new(192, 168, 60, 200);
/// Cluster IP of the standard `empty` service (no endpoints: REJECT).
pub const EMPTY_CLUSTER_IP: Ipv4Addr = Ipv4Addr::new(10, 96, 0, 200);
/// NodePorts of `web-np` (TCP, UDP).
pub const WEB_NODE_PORTS: (u16, u16) = (30080, 30053);
/// NodePorts of `web-lb` (TCP, UDP).
pub const WEB_LB_NODE_PORTS: (u16, u16) = (30081, 30054);
/// `healthCheckNodePort` of `web-lb`.
pub const WEB_LB_HEALTH_PORT: u16 = 32100;

fn web_ports(node_ports: Option<(u16, u16)>) -> Vec<ServicePortSpec> {
    vec![
        ServicePortSpec {
            name: "http".into(),
            proto: Proto::Tcp,
            port: 80,
            target_port: POD_TCP_PORT,
            node_port: node_ports.map(|p| p.0),
        },
        ServicePortSpec {
            name: "dns".into(),
            proto: Proto::Udp,
            port: 53,
            target_port: POD_UDP_PORT,
            node_port: node_ports.map(|p| p.1),
        },
    ]
}

impl ClusterSpec {
    /// `nodes` nodes with `pods_per_node` `web-K` pods each (K counts across the cluster) and
    /// the standard services: `web` (ClusterIP 10.96.0.100, 80/TCP and 53/UDP), `web-np`
    /// (NodePort 30080/30053), `web-lb` (LoadBalancer 192.168.60.200, NodePort 30081/30054,
    /// `externalTrafficPolicy: Local`, health check 32100) and `empty` (no endpoints).
    pub fn standard(nodes: usize, pods_per_node: usize) -> ClusterSpec {
        assert!((1..=50).contains(&nodes), "1..=50 nodes");
        assert!(pods_per_node <= 200, "at most 200 pods per node");
        let node_specs = (0..nodes)
            .map(|i| NodeSpec {
                name: format!("node{i}"),
                ip: node_ip(i),
                pod_cidr: pod_cidr(i),
            })
            .collect();
        let mut pods = Vec::new();
        for n in 0..nodes {
            for j in 0..pods_per_node {
                pods.push(PodSpec {
                    name: format!("web-{}", pods.len()),
                    namespace: "default".into(),
                    node: n,
                    ip: Ipv4Addr::new(10, 244, n as u8, 2 + j as u8),
                    app: "web".into(),
                    network: PodNetwork::Cni,
                });
            }
        }
        let svc = |name: &str, kind, ip, ports, app: &str| ServiceSpec {
            name: name.into(),
            namespace: "default".into(),
            kind,
            cluster_ip: ip,
            ports,
            selector_app: app.into(),
            load_balancer_ip: None,
            external_traffic_local: false,
            health_check_node_port: None,
        };
        let mut lb = svc(
            "web-lb",
            ServiceKind::LoadBalancer,
            WEB_LB_CLUSTER_IP,
            web_ports(Some(WEB_LB_NODE_PORTS)),
            "web",
        );
        lb.load_balancer_ip = Some(WEB_LB_IP);
        lb.external_traffic_local = true;
        lb.health_check_node_port = Some(WEB_LB_HEALTH_PORT);
        let mut empty = svc(
            "empty",
            ServiceKind::ClusterIp,
            EMPTY_CLUSTER_IP,
            web_ports(None),
            "nothing",
        );
        empty.ports.truncate(1);
        ClusterSpec {
            nodes: node_specs,
            pods,
            services: vec![
                svc(
                    "web",
                    ServiceKind::ClusterIp,
                    WEB_CLUSTER_IP,
                    web_ports(None),
                    "web",
                ),
                svc(
                    "web-np",
                    ServiceKind::NodePort,
                    WEB_NP_CLUSTER_IP,
                    web_ports(Some(WEB_NODE_PORTS)),
                    "web",
                ),
                lb,
                empty,
            ],
        }
    }

    /// Ready endpoints of a service: the pods whose `app` matches its selector.
    pub fn endpoints(&self, svc: &ServiceSpec) -> Vec<EndpointSpec> {
        self.pods
            .iter()
            .filter(|p| p.app == svc.selector_app)
            .map(|p| EndpointSpec {
                pod: p.name.clone(),
                ip: p.ip,
                node: p.node,
            })
            .collect()
    }

    /// The pod with this name.
    pub fn pod(&self, name: &str) -> Option<&PodSpec> {
        self.pods.iter().find(|p| p.name == name)
    }

    /// The service with this name.
    pub fn service(&self, name: &str) -> Option<&ServiceSpec> {
        self.services.iter().find(|s| s.name == name)
    }

    /// Index of the node with this name.
    pub fn node_index(&self, name: &str) -> Option<usize> {
        self.nodes.iter().position(|n| n.name == name)
    }
}
