//! `cluster.json`: the lab cluster as the Kubernetes `List` that
//! `kubectl get nodes,pods,services,endpointslices -A -o json` prints.

use serde_json::{Value, json};

use crate::kubeproxy::chain_name;
use crate::spec::{ClusterSpec, ServiceKind, VXLAN_PORT};

/// The cluster as a Kubernetes `List`. `vtep_macs[i]` is node `i`'s current `flannel.1` MAC
/// (flanneld publishes it in the node's `backend-data` annotation).
pub fn cluster_list(spec: &ClusterSpec, vtep_macs: &[String]) -> Value {
    let mut items = Vec::new();
    for (i, n) in spec.nodes.iter().enumerate() {
        let backend = json!({"VNI": 1, "VtepMAC": vtep_macs.get(i)}).to_string();
        items.push(json!({
            "apiVersion": "v1",
            "kind": "Node",
            "metadata": {
                "name": n.name,
                "labels": {
                    "kubernetes.io/hostname": n.name,
                    "kubernetes.io/os": "linux",
                },
                "annotations": {
                    "flannel.alpha.coreos.com/backend-data": backend,
                    "flannel.alpha.coreos.com/backend-type": "vxlan",
                    "flannel.alpha.coreos.com/kube-subnet-manager": "true",
                    "flannel.alpha.coreos.com/public-ip": n.ip.to_string(),
                    "netray.dev/vxlan-port": VXLAN_PORT.to_string(),
                },
            },
            "spec": {"podCIDR": n.pod_cidr, "podCIDRs": [n.pod_cidr]},
            "status": {
                "addresses": [
                    {"type": "InternalIP", "address": n.ip.to_string()},
                    {"type": "Hostname", "address": n.name},
                ],
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }));
    }
    for p in &spec.pods {
        let node = &spec.nodes[p.node];
        items.push(json!({
            "apiVersion": "v1",
            "kind": "Pod",
            "metadata": {"name": p.name, "namespace": p.namespace, "labels": {"app": p.app}},
            "spec": {
                "nodeName": node.name,
                "containers": [{
                    "name": "server",
                    "image": "netray-lab/agent",
                    "ports": [
                        {"containerPort": crate::spec::POD_TCP_PORT, "protocol": "TCP"},
                        {"containerPort": crate::spec::POD_UDP_PORT, "protocol": "UDP"},
                    ],
                }],
            },
            "status": {
                "phase": "Running",
                "hostIP": node.ip.to_string(),
                "hostIPs": [{"ip": node.ip.to_string()}],
                "podIP": p.ip.to_string(),
                "podIPs": [{"ip": p.ip.to_string()}],
                "conditions": [{"type": "Ready", "status": "True"}],
            },
        }));
    }
    for s in &spec.services {
        let kind = match s.kind {
            ServiceKind::ClusterIp => "ClusterIP",
            ServiceKind::NodePort => "NodePort",
            ServiceKind::LoadBalancer => "LoadBalancer",
        };
        let ports: Vec<Value> = s
            .ports
            .iter()
            .map(|p| {
                let mut v = json!({
                    "name": p.name,
                    "protocol": p.proto.upper(),
                    "port": p.port,
                    "targetPort": p.target_port,
                });
                if let Some(np) = p.node_port {
                    v["nodePort"] = json!(np);
                }
                v
            })
            .collect();
        let mut svc_spec = json!({
            "type": kind,
            "clusterIP": s.cluster_ip.to_string(),
            "clusterIPs": [s.cluster_ip.to_string()],
            "ports": ports,
            "selector": {"app": s.selector_app},
            "sessionAffinity": "None",
            "internalTrafficPolicy": "Cluster",
            "ipFamilies": ["IPv4"],
            "ipFamilyPolicy": "SingleStack",
        });
        if s.kind != ServiceKind::ClusterIp {
            svc_spec["externalTrafficPolicy"] = json!(if s.external_traffic_local {
                "Local"
            } else {
                "Cluster"
            });
        }
        if let Some(hc) = s.health_check_node_port {
            svc_spec["healthCheckNodePort"] = json!(hc);
        }
        let status = match s.load_balancer_ip {
            Some(ip) => {
                json!({"loadBalancer": {"ingress": [{"ip": ip.to_string(), "ipMode": "VIP"}]}})
            }
            None => json!({"loadBalancer": {}}),
        };
        items.push(json!({
            "apiVersion": "v1",
            "kind": "Service",
            "metadata": {"name": s.name, "namespace": s.namespace},
            "spec": svc_spec,
            "status": status,
        }));
        let eps = spec.endpoints(s);
        let endpoints: Value = if eps.is_empty() {
            Value::Null
        } else {
            eps.iter()
                .map(|e| {
                    json!({
                        "addresses": [e.ip.to_string()],
                        "conditions": {"ready": true, "serving": true, "terminating": false},
                        "nodeName": spec.nodes[e.node].name,
                        "targetRef": {"kind": "Pod", "name": e.pod, "namespace": s.namespace},
                    })
                })
                .collect()
        };
        let slice_ports: Value = if eps.is_empty() {
            Value::Null
        } else {
            s.ports
                .iter()
                .map(
                    |p| json!({"name": p.name, "port": p.target_port, "protocol": p.proto.upper()}),
                )
                .collect()
        };
        let suffix = chain_name("x", &format!("{}/{}", s.namespace, s.name))[2..7].to_lowercase();
        items.push(json!({
            "apiVersion": "discovery.k8s.io/v1",
            "kind": "EndpointSlice",
            "metadata": {
                "name": format!("{}-{suffix}", s.name),
                "namespace": s.namespace,
                "labels": {
                    "kubernetes.io/service-name": s.name,
                    "endpointslice.kubernetes.io/managed-by": "endpointslice-controller.k8s.io",
                },
                "ownerReferences": [{"apiVersion": "v1", "kind": "Service", "name": s.name}],
            },
            "addressType": "IPv4",
            "endpoints": endpoints,
            "ports": slice_ports,
        }));
    }
    // The CNI's and kube-proxy's configuration, as a cluster has them: the pod network.
    items.push(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "kube-flannel-cfg", "namespace": "kube-flannel"},
        "data": {"net-conf.json": format!(
            "{{\"Network\": \"{}\", \"Backend\": {{\"Type\": \"vxlan\", \"Port\": {}}}}}",
            crate::spec::CLUSTER_CIDR,
            VXLAN_PORT
        )},
    }));
    items.push(json!({
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": {"name": "kube-proxy", "namespace": "kube-system"},
        "data": {"config.conf": format!(
            "mode: iptables\nclusterCIDR: {}\n",
            crate::spec::CLUSTER_CIDR
        )},
    }));
    json!({"apiVersion": "v1", "kind": "List", "items": items, "metadata": {"resourceVersion": ""}})
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_has_every_object() {
        let spec = ClusterSpec::standard(2, 2);
        let macs = vec![crate::spec::vtep_mac(0, 0), crate::spec::vtep_mac(1, 0)];
        let v = cluster_list(&spec, &macs);
        let kinds: Vec<&str> = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .map(|i| i["kind"].as_str().unwrap())
            .collect();
        assert_eq!(kinds.iter().filter(|k| **k == "Node").count(), 2);
        assert_eq!(kinds.iter().filter(|k| **k == "Pod").count(), 4);
        assert_eq!(kinds.iter().filter(|k| **k == "Service").count(), 4);
        assert_eq!(kinds.iter().filter(|k| **k == "EndpointSlice").count(), 4);
        let lb = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| i["metadata"]["name"] == "web-lb" && i["kind"] == "Service")
            .unwrap();
        assert_eq!(
            lb["status"]["loadBalancer"]["ingress"][0]["ip"],
            "192.168.60.200"
        );
        assert_eq!(lb["spec"]["externalTrafficPolicy"], "Local");
        let empty = v["items"]
            .as_array()
            .unwrap()
            .iter()
            .find(|i| {
                i["kind"] == "EndpointSlice"
                    && i["metadata"]["labels"]["kubernetes.io/service-name"] == "empty"
            })
            .unwrap();
        assert!(empty["endpoints"].is_null());
    }
}
