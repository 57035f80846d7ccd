//! A synthetic but consistent Kubernetes bundle on disk, for benchmarks: `nodes` flannel-VXLAN
//! nodes (each the healthy example's node0, readdressed) with `pods_per_node` pods, `services`
//! ClusterIP Services of `endpoints` ready endpoints each (pods, round robin), the same
//! kube-proxy iptables rules on every node, and every node's routes, neighbours and FDB
//! entries for every other node's VTEP; nodes' eth0 are physical NICs on one underlay. Pod CIDRs are 10.244.K.0/24 and nodes 192.168.50.N/24
//! up to 240 nodes; above that, pod CIDRs are the largest blocks that fit every node into
//! 10.244.0.0/16 (/26 up to 1,024 nodes, /28 up to 4,096) and the underlay is 192.168.0.0/16.

use std::fmt::Write as _;
use std::io::Write as _;
use std::path::Path;

use serde_json::{Value, json};

/// Size of a generated bundle.
#[derive(Clone, Copy, Debug)]
pub struct Spec {
    pub nodes: usize,
    pub pods_per_node: usize,
    pub services: usize,
    pub endpoints: usize,
}

fn template() -> (Value, Value) {
    let src = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/healthy");
    let read = |p: &str| -> Value {
        serde_json::from_str(&std::fs::read_to_string(src.join(p)).expect("examples/healthy"))
            .expect("JSON")
    };
    (read("nodes/node0.json"), read("cluster.json"))
}

/// Pod CIDRs of /24 and an underlay /24 up to this many nodes (as the first version did).
const SMALL: usize = 240;

/// Prefix length of each node's pod CIDR.
fn cidr_len(spec: &Spec) -> u8 {
    let mut len = 24u8;
    while spec.nodes > SMALL && (spec.nodes << (32 - len)) > 65536 {
        len += 1;
    }
    len
}

/// Address `x` of node `k`'s pod CIDR (`x` = 255: its broadcast address, as in the template).
fn net_addr(spec: &Spec, k: usize, x: u32) -> std::net::Ipv4Addr {
    let size = 1u32 << (32 - cidr_len(spec));
    let x = if x == 255 { size - 1 } else { x };
    std::net::Ipv4Addr::from(
        u32::from(std::net::Ipv4Addr::new(10, 244, 0, 0)) + k as u32 * size + x,
    )
}

/// Node `k`'s pod CIDR.
fn pod_cidr(spec: &Spec, k: usize) -> String {
    format!("{}/{}", net_addr(spec, k, 0), cidr_len(spec))
}

/// Rewrite the template's pod-network addresses `10.244.0.X` (and their `/24`) into node
/// `k`'s pod CIDR, host number `X` mapped by `host`; the cluster network `10.244.0.0/16` stays.
fn readdress(text: &str, spec: &Spec, k: usize, host: impl Fn(u32) -> u32) -> String {
    const P: &str = "10.244.0.";
    let mut out = String::with_capacity(text.len());
    let mut rest = text;
    while let Some(i) = rest.find(P) {
        out.push_str(&rest[..i]);
        let after = &rest[i + P.len()..];
        let digits = after.bytes().take_while(u8::is_ascii_digit).count();
        let x: Option<u32> = after[..digits].parse().ok();
        let tail = &after[digits..];
        match x {
            Some(x)
                if !(tail.starts_with("/16")
                    || i > 0 && rest.as_bytes()[i - 1].is_ascii_digit()) =>
            {
                out.push_str(&net_addr(spec, k, host(x)).to_string());
                if let Some(t) = tail.strip_prefix("/24") {
                    out.push_str(&format!("/{}", cidr_len(spec)));
                    rest = t;
                } else {
                    rest = tail;
                }
            }
            _ => {
                out.push_str(&rest[i..i + P.len()]);
                rest = after;
            }
        }
    }
    out.push_str(rest);
    out
}

fn node_ip(spec: &Spec, k: usize) -> String {
    if spec.nodes <= SMALL {
        format!("192.168.50.{}", 10 + k)
    } else {
        format!("192.168.{}.{}", 50 + k / 200, 10 + k % 200)
    }
}
fn vtep_mac(k: usize) -> String {
    format!("0e:6e:72:00:{:02x}:{:02x}", k >> 8, k & 255)
}
fn eth0_mac(k: usize) -> String {
    format!("0e:6e:72:50:{:02x}:{:02x}", 1 + (k >> 8), k & 255)
}
fn pod_ip(spec: &Spec, q: usize) -> String {
    net_addr(
        spec,
        q / spec.pods_per_node,
        2 + (q % spec.pods_per_node) as u32,
    )
    .to_string()
}
fn host_inode(k: usize) -> u64 {
    4_000_000_000 + 1000 * k as u64
}

/// kube-proxy (iptables mode) and flannel rules of node `k`, as `iptables-save` prints them.
fn dump(spec: &Spec, k: usize, kube_nat: &str) -> String {
    let mut s = String::from(
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n\
:FLANNEL-FWD - [0:0]\n:KUBE-FORWARD - [0:0]\n:KUBE-SERVICES - [0:0]\n\
-A FORWARD -m comment --comment \"kubernetes forwarding rules\" -j KUBE-FORWARD\n\
-A FORWARD -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A FORWARD -m comment --comment \"flanneld forward\" -j FLANNEL-FWD\n\
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A FLANNEL-FWD -s 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
-A FLANNEL-FWD -d 10.244.0.0/16 -m comment --comment \"flanneld forward\" -j ACCEPT\n\
-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP\n\
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark 0x4000/0x4000 -j ACCEPT\n\
-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT\n\
COMMIT\n*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n\
:FLANNEL-POSTRTG - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-POSTROUTING - [0:0]\n:KUBE-SERVICES - [0:0]\n",
    );
    for i in 0..spec.services {
        let _ = writeln!(s, ":KUBE-SVC-S{i:015} - [0:0]");
        for e in 0..spec.endpoints {
            let _ = writeln!(s, ":KUBE-SEP-S{i:011}E{e:03} - [0:0]");
        }
    }
    let c = pod_cidr(spec, k);
    let _ = write!(
        s,
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n\
-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n\
-A POSTROUTING -m comment --comment \"flanneld masq\" -j FLANNEL-POSTRTG\n\
-A FLANNEL-POSTRTG -m mark --mark 0x4000/0x4000 -m comment --comment \"flanneld masq\" -j RETURN\n\
-A FLANNEL-POSTRTG -s {c} -d 10.244.0.0/16 -m comment --comment \"flanneld masq\" -j RETURN\n\
-A FLANNEL-POSTRTG -s 10.244.0.0/16 -d {c} -m comment --comment \"flanneld masq\" -j RETURN\n\
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d {c} -m comment --comment \"flanneld masq\" -j RETURN\n\
-A FLANNEL-POSTRTG -s 10.244.0.0/16 ! -d 224.0.0.0/4 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully\n\
-A FLANNEL-POSTRTG ! -s 10.244.0.0/16 -d 10.244.0.0/16 -m comment --comment \"flanneld masq\" -j MASQUERADE --random-fully\n\
-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n\
-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n\
-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n\
-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n"
    );
    s.push_str(kube_nat);
    s.push_str("COMMIT\n");
    s
}

/// The Service rules of the nat table (the same on every node).
fn kube_nat(spec: &Spec) -> String {
    let mut s = String::new();
    for i in 0..spec.services {
        let name = format!("ns-{}/svc-{i}:http", i % 97);
        let ip = netray_netfilter::synth::service_ip(i);
        let _ = writeln!(
            s,
            "-A KUBE-SERVICES -d {ip}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport 80 -j KUBE-SVC-S{i:015}"
        );
        let _ = writeln!(
            s,
            "-A KUBE-SVC-S{i:015} ! -s 10.244.0.0/16 -d {ip}/32 -p tcp -m comment --comment \"{name} cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ"
        );
        for e in 0..spec.endpoints {
            let ep = pod_ip(spec, endpoint(spec, i, e));
            let left = spec.endpoints - e;
            let stat = if left > 1 {
                format!(
                    " -m statistic --mode random --probability {:.11}",
                    1.0 / left as f64
                )
            } else {
                String::new()
            };
            let _ = writeln!(
                s,
                "-A KUBE-SVC-S{i:015} -m comment --comment \"{name} -> {ep}:8080\"{stat} -j KUBE-SEP-S{i:011}E{e:03}"
            );
        }
        for e in 0..spec.endpoints {
            let ep = pod_ip(spec, endpoint(spec, i, e));
            let _ = writeln!(
                s,
                "-A KUBE-SEP-S{i:011}E{e:03} -s {ep}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ\n\
-A KUBE-SEP-S{i:011}E{e:03} -p tcp -m comment --comment \"{name}\" -m tcp -j DNAT --to-destination {ep}:8080"
            );
        }
    }
    s.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\n");
    s
}

/// Pod (global index) serving endpoint `e` of Service `i`.
fn endpoint(spec: &Spec, i: usize, e: usize) -> usize {
    (i * spec.endpoints + e) % (spec.nodes * spec.pods_per_node)
}

fn retext(v: &Value, pairs: &[(&str, &str)]) -> Value {
    let mut t = v.to_string();
    for (a, b) in pairs {
        t = t.replace(a, b);
    }
    serde_json::from_str(&t).expect("JSON")
}

fn node(spec: &Spec, k: usize, tpl: &Value, kube_nat: &str) -> Value {
    let ns = tpl["namespaces"].as_array().expect("namespaces");
    let find = |suffix: &str| {
        ns.iter()
            .find(|n| {
                n["id"]["name"]
                    .as_str()
                    .is_some_and(|x| x.ends_with(suffix))
            })
            .expect("template namespace")
    };
    let (host_t, pod_t) = (find("-node0"), find("-web-0"));
    let ip = node_ip(spec, k);
    let mut host = host_t.clone();
    host["firewall"]["iptables"] = json!([]);
    let underlay = if spec.nodes <= SMALL {
        vec![("192.168.50.10/", format!("{ip}/"))]
    } else {
        vec![
            ("192.168.50.10/24", format!("{ip}/16")),
            ("192.168.50.0/24", "192.168.0.0/16".to_string()),
            ("192.168.50.255/", "192.168.255.255/".to_string()),
            ("192.168.50.10/", format!("{ip}/")),
        ]
    };
    let mut pairs: Vec<(&str, String)> = vec![("192.168.50.10\"", format!("{ip}\""))];
    pairs.extend(underlay);
    pairs.push(("0e:6e:72:00:00:00", vtep_mac(k)));
    pairs.push(("0e:6e:72:50:01:00", eth0_mac(k)));
    let pairs: Vec<(&str, &str)> = pairs.iter().map(|(a, b)| (*a, b.as_str())).collect();
    let host = retext(&host, &pairs);
    let mut host: Value =
        serde_json::from_str(&readdress(&host.to_string(), spec, k, |x| x)).expect("JSON");
    host["id"] = json!({"inode": host_inode(k), "name": format!("node{k}"), "pids": [1]});
    host["firewall"]["iptables"] =
        json!([{"backend": "nft", "family": "ipv4", "text": dump(spec, k, kube_nat)}]);
    if host["conntrack"].is_object() {
        host["conntrack"]["entries"] = json!([]);
    }
    let veth = |v: &Value| v["dev"].as_str().is_some_and(|d| d.starts_with("veth"));
    let other_vtep = |v: &Value| {
        v["dev"] == "flannel.1"
            || v["dev"] == "eth0" && v["dst"] != "0.0.0.0/0" && v["table"].is_null()
    };
    let port_t = host_t["links"]
        .as_array()
        .unwrap()
        .iter()
        .find(|l| l["name"].as_str().is_some_and(|n| n.starts_with("veth")))
        .unwrap()
        .clone();
    let route_t = host_t["routes"]
        .as_array()
        .unwrap()
        .iter()
        .find(|r| r["dst"] == "10.244.1.0/24")
        .unwrap()
        .clone();
    let links = host["links"].as_array_mut().unwrap();
    links.retain(|l| !l["name"].as_str().unwrap_or("").starts_with("veth"));
    // eth0 is a physical NIC on one underlay: the node owning a frame's MAC receives it.
    for l in links.iter_mut().filter(|l| l["name"] == "eth0") {
        l["kind"] = json!({"type": "device"});
    }
    for p in 0..spec.pods_per_node {
        let mut l = port_t.clone();
        l["name"] = format!("veth{k:04x}{p:04x}").into();
        l["ifindex"] = (10 + p).into();
        l["mac"] = format!("0e:6e:72:b0:{k:02x}:{p:02x}").into();
        l["kind"]["peer_netns"] = (host_inode(k) + 1 + p as u64).into();
        l["kind"]["peer_ifindex"] = 2.into();
        links.push(l);
    }
    let routes = host["routes"].as_array_mut().unwrap();
    routes.retain(|r| {
        !(veth(r) || r["dev"] == "flannel.1" && r["table"] == 254 && !r["gateway"].is_null())
    });
    for j in (0..spec.nodes).filter(|j| *j != k) {
        let mut r = route_t.clone();
        r["dst"] = pod_cidr(spec, j).into();
        r["gateway"] = net_addr(spec, j, 0).to_string().into();
        routes.push(r);
    }
    host["addresses"]
        .as_array_mut()
        .unwrap()
        .retain(|a| !veth(a));
    let neigh = host["neighbours"].as_array_mut().unwrap();
    neigh.retain(|n| !veth(n) && !other_vtep(n) && n["dev"] != "cni0");
    for j in (0..spec.nodes).filter(|j| *j != k) {
        neigh.push(json!({"dev": "eth0", "dst": node_ip(spec, j), "lladdr": eth0_mac(j), "state": ["REACHABLE"], "flags": []}));
        neigh.push(json!({"dev": "flannel.1", "dst": net_addr(spec, j, 0).to_string(), "lladdr": vtep_mac(j), "state": ["PERMANENT"], "flags": []}));
    }
    let fdb = host["fdb"].as_array_mut().unwrap();
    fdb.retain(|f| !veth(f) && f["dev"] != "flannel.1");
    for j in (0..spec.nodes).filter(|j| *j != k) {
        fdb.push(json!({"dev": "flannel.1", "mac": vtep_mac(j), "master": null, "vlan": null, "dst": node_ip(spec, j), "vni": null, "port": null, "state": ["permanent"], "flags": ["self"]}));
    }
    let mut namespaces = vec![host];
    for p in 0..spec.pods_per_node {
        let pod = retext(
            pod_t,
            &[("0e:6e:72:a0:00:00", &format!("0e:6e:72:a0:{k:02x}:{p:02x}"))],
        );
        let own = 2 + p as u32;
        let mut pod: Value = serde_json::from_str(&readdress(&pod.to_string(), spec, k, |x| {
            if x == 2 { own } else { x }
        }))
        .expect("JSON");
        pod["id"] = json!({"inode": host_inode(k) + 1 + p as u64, "name": format!("pod-{k}-{p}"), "pids": []});
        for l in pod["links"].as_array_mut().unwrap() {
            if l["kind"]["type"] == "veth" {
                l["kind"]["peer_netns"] = host_inode(k).into();
                l["kind"]["peer_ifindex"] = (10 + p).into();
            }
        }
        if pod["conntrack"].is_object() {
            pod["conntrack"]["entries"] = json!([]);
        }
        namespaces.push(pod);
    }
    let mut n = tpl.clone();
    n["node"]["name"] = format!("node{k}").into();
    n["node"]["hostname"] = format!("node{k}").into();
    n["node"]["boot_id"] = format!("00000000-0000-4000-8000-{k:012}").into();
    n["namespaces"] = namespaces.into();
    n["referenced_netns"] = json!([]);
    n
}

fn cluster(spec: &Spec, tpl: &Value) -> Value {
    let items = tpl["items"].as_array().unwrap();
    let item = |kind: &str, name: &str| {
        items
            .iter()
            .find(|i| i["kind"] == kind && i["metadata"]["name"] == name)
            .unwrap()
            .clone()
    };
    let mut out = Vec::new();
    for k in 0..spec.nodes {
        let n = retext(
            &item("Node", "node0"),
            &[
                ("192.168.50.10\"", &format!("{}\"", node_ip(spec, k))),
                ("0e:6e:72:00:00:00", &vtep_mac(k)),
                ("\"node0\"", &format!("\"node{k}\"")),
            ],
        );
        let n: Value =
            serde_json::from_str(&readdress(&n.to_string(), spec, k, |x| x)).expect("JSON");
        out.push(n);
    }
    let pod_t = item("Pod", "web-0");
    for q in 0..spec.nodes * spec.pods_per_node {
        let k = q / spec.pods_per_node;
        let mut p = retext(
            &pod_t,
            &[
                ("10.244.0.2\"", &format!("{}\"", pod_ip(spec, q))),
                ("192.168.50.10\"", &format!("{}\"", node_ip(spec, k))),
                ("\"node0\"", &format!("\"node{k}\"")),
            ],
        );
        p["metadata"]["name"] = format!("pod-{k}-{}", q % spec.pods_per_node).into();
        out.push(p);
    }
    let svc_t = item("Service", "web");
    let slice_t = item("EndpointSlice", "web-tuv2k");
    for i in 0..spec.services {
        let ns = format!("ns-{}", i % 97);
        let name = format!("svc-{i}");
        let ip = netray_netfilter::synth::service_ip(i).to_string();
        let mut s = svc_t.clone();
        s["metadata"] = json!({"name": name, "namespace": ns});
        s["spec"]["clusterIP"] = ip.clone().into();
        s["spec"]["clusterIPs"] = json!([ip]);
        s["spec"]["ports"] =
            json!([{"name": "http", "port": 80, "protocol": "TCP", "targetPort": 8080}]);
        out.push(s);
        let mut sl = slice_t.clone();
        sl["metadata"]["name"] = format!("{name}-abcde").into();
        sl["metadata"]["namespace"] = ns.clone().into();
        sl["metadata"]["labels"]["kubernetes.io/service-name"] = name.clone().into();
        sl["metadata"]["ownerReferences"][0]["name"] = name.clone().into();
        sl["ports"] = json!([{"name": "http", "port": 8080, "protocol": "TCP"}]);
        sl["endpoints"] = (0..spec.endpoints)
            .map(|e| {
                let q = endpoint(spec, i, e);
                let k = q / spec.pods_per_node;
                json!({"addresses": [pod_ip(spec, q)], "conditions": {"ready": true, "serving": true, "terminating": false},
                       "nodeName": format!("node{k}"),
                       "targetRef": {"kind": "Pod", "name": format!("pod-{k}-{}", q % spec.pods_per_node), "namespace": "default"}})
            })
            .collect();
        out.push(sl);
    }
    out.extend(items.iter().filter(|i| i["kind"] == "ConfigMap").cloned());
    let mut c = tpl.clone();
    c["items"] = out.into();
    c
}

/// Write the bundle (`cluster.json`, `nodes/nodeK.json`) into `dir`.
pub fn write_bundle(dir: &Path, spec: &Spec) -> std::io::Result<()> {
    assert!(
        spec.nodes <= 4096 && spec.pods_per_node + 3 <= 1 << (32 - cidr_len(spec)),
        "{} nodes × {} pods do not fit 10.244.0.0/16 in /{} pod CIDRs",
        spec.nodes,
        spec.pods_per_node,
        cidr_len(spec)
    );
    let (node_t, cluster_t) = template();
    std::fs::create_dir_all(dir.join("nodes"))?;
    let write = |p: &Path, v: &Value| -> std::io::Result<()> {
        let mut f = std::io::BufWriter::new(std::fs::File::create(p)?);
        serde_json::to_writer(&mut f, v)?;
        f.flush()
    };
    write(&dir.join("cluster.json"), &cluster(spec, &cluster_t))?;
    let nat = kube_nat(spec);
    for k in 0..spec.nodes {
        write(
            &dir.join(format!("nodes/node{k}.json")),
            &node(spec, k, &node_t, &nat),
        )?;
    }
    Ok(())
}
