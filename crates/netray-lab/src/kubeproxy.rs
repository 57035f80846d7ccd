//! iptables rules laid out as kube-proxy (iptables mode) and flannel write them, as
//! `iptables-restore` input.
//!
//! The kube-proxy chains are written like kube-proxy's own sync: with `--noflush`, declaring
//! every chain it owns (which flushes it) and deleting chains that are gone, so a resync after
//! the cluster changed leaves other rules (flannel's, a fault's) alone.

use std::collections::BTreeSet;
use std::fmt::Write as _;

use crate::spec::{
    CLUSTER_CIDR, ClusterSpec, EndpointSpec, ServiceKind, ServicePortSpec, ServiceSpec,
};

/// The masquerade mark kube-proxy uses.
pub const MASQ_MARK: &str = "0x4000/0x4000";

/// Rules of one table: the chains kube-proxy owns there and its `-A` lines.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TableRules {
    /// Chains owned (declared in the restore input).
    pub chains: BTreeSet<String>,
    /// `-A …` lines.
    pub rules: Vec<String>,
}

impl TableRules {
    fn chain(&mut self, c: &str) {
        self.chains.insert(c.to_string());
    }
    fn add(&mut self, line: String) {
        self.rules.push(line);
    }
}

/// kube-proxy's rules for one node: `nat` and `filter`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct KubeRules {
    /// nat table.
    pub nat: TableRules,
    /// filter table.
    pub filter: TableRules,
}

/// kube-proxy's chain name: `PREFIX-` + 16 base32 characters of a hash of `key`.
pub fn chain_name(prefix: &str, key: &str) -> String {
    // Two FNV-1a passes give 128 bits; kube-proxy uses SHA-256 the same way (base32, 16 chars).
    let fnv = |seed: u64| {
        key.bytes().fold(seed, |h, b| {
            (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3)
        })
    };
    let mut bytes = Vec::with_capacity(16);
    bytes.extend_from_slice(&fnv(0xcbf2_9ce4_8422_2325).to_be_bytes());
    bytes.extend_from_slice(&fnv(0x6c62_272e_07bb_0142).to_be_bytes());
    const ALPHABET: &[u8; 32] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZ234567";
    let mut out = String::new();
    let mut acc: u32 = 0;
    let mut bits = 0;
    for b in bytes {
        acc = (acc << 8) | u32::from(b);
        bits += 8;
        while bits >= 5 && out.len() < 16 {
            bits -= 5;
            out.push(ALPHABET[((acc >> bits) & 31) as usize] as char);
        }
    }
    format!("{prefix}-{out}")
}

fn svc_chain(svc: &ServiceSpec, p: &ServicePortSpec) -> String {
    chain_name(
        "KUBE-SVC",
        &format!("{}{}", svc.port_name(p), p.proto.lower()),
    )
}
fn ext_chain(svc: &ServiceSpec, p: &ServicePortSpec) -> String {
    chain_name(
        "KUBE-EXT",
        &format!("{}{}", svc.port_name(p), p.proto.lower()),
    )
}
fn svl_chain(svc: &ServiceSpec, p: &ServicePortSpec) -> String {
    chain_name(
        "KUBE-SVL",
        &format!("{}{}", svc.port_name(p), p.proto.lower()),
    )
}
fn sep_chain(svc: &ServiceSpec, p: &ServicePortSpec, ep: &EndpointSpec) -> String {
    chain_name(
        "KUBE-SEP",
        &format!(
            "{}{}{}:{}",
            svc.port_name(p),
            p.proto.lower(),
            ep.ip,
            p.target_port
        ),
    )
}

/// Jumps from `chain` to the endpoint chains, balanced with `-m statistic` as kube-proxy does.
fn balance(
    nat: &mut TableRules,
    chain: &str,
    svc: &ServiceSpec,
    p: &ServicePortSpec,
    eps: &[&EndpointSpec],
) {
    let n = eps.len();
    for (i, ep) in eps.iter().enumerate() {
        let stat = if i + 1 < n {
            format!(
                " -m statistic --mode random --probability {:.10}",
                1.0 / (n - i) as f64
            )
        } else {
            String::new()
        };
        nat.add(format!(
            "-A {chain} -m comment --comment \"{} -> {}:{}\"{stat} -j {}",
            svc.port_name(p),
            ep.ip,
            p.target_port,
            sep_chain(svc, p, ep)
        ));
    }
}

/// kube-proxy's chains and rules as node `node` of `spec` would have them.
pub fn kube_rules(spec: &ClusterSpec, node: usize) -> KubeRules {
    let mut r = KubeRules::default();
    let (nat, filter) = (&mut r.nat, &mut r.filter);
    for c in [
        "KUBE-SERVICES",
        "KUBE-NODEPORTS",
        "KUBE-POSTROUTING",
        "KUBE-MARK-MASQ",
    ] {
        nat.chain(c);
    }
    for c in [
        "KUBE-SERVICES",
        "KUBE-EXTERNAL-SERVICES",
        "KUBE-FORWARD",
        "KUBE-NODEPORTS",
    ] {
        filter.chain(c);
    }
    nat.add("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000".into());
    nat.add(format!(
        "-A KUBE-POSTROUTING -m mark ! --mark {MASQ_MARK} -j RETURN"
    ));
    nat.add("-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0".into());
    nat.add("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully".into());
    filter.add("-A KUBE-FORWARD -m conntrack --ctstate INVALID -j DROP".into());
    filter.add(format!("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding rules\" -m mark --mark {MASQ_MARK} -j ACCEPT"));
    filter.add("-A KUBE-FORWARD -m comment --comment \"kubernetes forwarding conntrack rule\" -m conntrack --ctstate RELATED,ESTABLISHED -j ACCEPT".into());

    for svc in &spec.services {
        let eps = spec.endpoints(svc);
        for p in &svc.ports {
            let name = svc.port_name(p);
            let proto = p.proto.lower();
            let cip = svc.cluster_ip;
            let svc_c = svc_chain(svc, p);
            let ext_c = ext_chain(svc, p);
            let has_external = svc.kind != ServiceKind::ClusterIp;
            if eps.is_empty() {
                filter.add(format!("-A KUBE-SERVICES -d {cip}/32 -p {proto} -m comment --comment \"{name} has no endpoints\" -m {proto} --dport {} -j REJECT --reject-with icmp-port-unreachable", p.port));
                if let Some(np) = p.node_port.filter(|_| has_external) {
                    filter.add(format!("-A KUBE-EXTERNAL-SERVICES -p {proto} -m comment --comment \"{name} has no endpoints\" -m addrtype --dst-type LOCAL -m {proto} --dport {np} -j REJECT --reject-with icmp-port-unreachable"));
                }
                if let Some(lb) = svc.load_balancer_ip {
                    filter.add(format!("-A KUBE-EXTERNAL-SERVICES -d {lb}/32 -p {proto} -m comment --comment \"{name} has no endpoints\" -m {proto} --dport {} -j REJECT --reject-with icmp-port-unreachable", p.port));
                }
                continue;
            }
            nat.chain(&svc_c);
            nat.add(format!("-A KUBE-SERVICES -d {cip}/32 -p {proto} -m comment --comment \"{name} cluster IP\" -m {proto} --dport {} -j {svc_c}", p.port));
            nat.add(format!("-A {svc_c} ! -s {CLUSTER_CIDR} -d {cip}/32 -p {proto} -m comment --comment \"{name} cluster IP\" -m {proto} --dport {} -j KUBE-MARK-MASQ", p.port));
            let all: Vec<&EndpointSpec> = eps.iter().collect();
            balance(nat, &svc_c, svc, p, &all);
            for ep in &eps {
                let sep = sep_chain(svc, p, ep);
                nat.chain(&sep);
                nat.add(format!(
                    "-A {sep} -s {}/32 -m comment --comment \"{name}\" -j KUBE-MARK-MASQ",
                    ep.ip
                ));
                nat.add(format!("-A {sep} -p {proto} -m comment --comment \"{name}\" -m {proto} -j DNAT --to-destination {}:{}", ep.ip, p.target_port));
            }
            if !has_external {
                continue;
            }
            nat.chain(&ext_c);
            if svc.external_traffic_local {
                let svl = svl_chain(svc, p);
                nat.chain(&svl);
                nat.add(format!("-A {ext_c} -s {CLUSTER_CIDR} -m comment --comment \"pod traffic for {name} external destinations\" -j {svc_c}"));
                nat.add(format!("-A {ext_c} -m comment --comment \"masquerade LOCAL traffic for {name} external destinations\" -m addrtype --src-type LOCAL -j KUBE-MARK-MASQ"));
                nat.add(format!("-A {ext_c} -m comment --comment \"route LOCAL traffic for {name} external destinations\" -m addrtype --src-type LOCAL -j {svc_c}"));
                nat.add(format!("-A {ext_c} -j {svl}"));
                let local: Vec<&EndpointSpec> = eps.iter().filter(|e| e.node == node).collect();
                if local.is_empty() {
                    if let Some(np) = p.node_port {
                        filter.add(format!("-A KUBE-EXTERNAL-SERVICES -p {proto} -m comment --comment \"{name} has no local endpoints\" -m addrtype --dst-type LOCAL -m {proto} --dport {np} -j DROP"));
                    }
                    if let Some(lb) = svc.load_balancer_ip {
                        filter.add(format!("-A KUBE-EXTERNAL-SERVICES -d {lb}/32 -p {proto} -m comment --comment \"{name} has no local endpoints\" -m {proto} --dport {} -j DROP", p.port));
                    }
                } else {
                    balance(nat, &svl, svc, p, &local);
                }
            } else {
                nat.add(format!("-A {ext_c} -m comment --comment \"masquerade traffic for {name} external destinations\" -j KUBE-MARK-MASQ"));
                nat.add(format!("-A {ext_c} -j {svc_c}"));
            }
            if let Some(np) = p.node_port {
                nat.add(format!("-A KUBE-NODEPORTS -p {proto} -m comment --comment \"{name}\" -m {proto} --dport {np} -j {ext_c}"));
            }
            if let Some(lb) = svc.load_balancer_ip {
                nat.add(format!("-A KUBE-SERVICES -d {lb}/32 -p {proto} -m comment --comment \"{name} loadbalancer IP\" -m {proto} --dport {} -j {ext_c}", p.port));
            }
        }
        if let Some(hc) = svc.health_check_node_port {
            filter.add(format!("-A KUBE-NODEPORTS -p tcp -m comment --comment \"{}/{} health check node port\" -m tcp --dport {hc} -j ACCEPT", svc.namespace, svc.name));
        }
    }
    nat.add("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports; NOTE: this must be the last rule in this chain\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS".into());
    r
}

/// `iptables-restore --noflush` input installing `new`, replacing `old` (chains of `old` that
/// `new` lacks are deleted).
pub fn restore_text(new: &KubeRules, old: Option<&KubeRules>) -> String {
    let mut out = String::new();
    let empty = KubeRules::default();
    let old = old.unwrap_or(&empty);
    for (table, n, o) in [
        ("filter", &new.filter, &old.filter),
        ("nat", &new.nat, &old.nat),
    ] {
        let _ = writeln!(out, "*{table}");
        for c in n.chains.union(&o.chains) {
            let _ = writeln!(out, ":{c} - [0:0]");
        }
        for rule in &n.rules {
            let _ = writeln!(out, "{rule}");
        }
        for c in o.chains.difference(&n.chains) {
            let _ = writeln!(out, "-X {c}");
        }
        let _ = writeln!(out, "COMMIT");
    }
    out
}

/// The rules outside kube-proxy's own chains: the jumps kube-proxy installs into the built-in
/// chains, and flannel's forward-accept and masquerade rules for node `node`
/// (`iptables-restore` input for a fresh namespace).
pub fn base_text(node: usize) -> String {
    let subnet = crate::spec::pod_cidr(node);
    format!(
        r#"*filter
:INPUT ACCEPT [0:0]
:FORWARD ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-EXTERNAL-SERVICES - [0:0]
:KUBE-FORWARD - [0:0]
:KUBE-NODEPORTS - [0:0]
:FLANNEL-FWD - [0:0]
-A INPUT -m comment --comment "kubernetes health check service ports" -j KUBE-NODEPORTS
-A INPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -m comment --comment "kubernetes forwarding rules" -j KUBE-FORWARD
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FORWARD -m conntrack --ctstate NEW -m comment --comment "kubernetes externally-visible service portals" -j KUBE-EXTERNAL-SERVICES
-A FORWARD -m comment --comment "flanneld forward" -j FLANNEL-FWD
-A OUTPUT -m conntrack --ctstate NEW -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A FLANNEL-FWD -s {CLUSTER_CIDR} -m comment --comment "flanneld forward" -j ACCEPT
-A FLANNEL-FWD -d {CLUSTER_CIDR} -m comment --comment "flanneld forward" -j ACCEPT
COMMIT
*nat
:PREROUTING ACCEPT [0:0]
:INPUT ACCEPT [0:0]
:OUTPUT ACCEPT [0:0]
:POSTROUTING ACCEPT [0:0]
:KUBE-SERVICES - [0:0]
:KUBE-POSTROUTING - [0:0]
:FLANNEL-POSTRTG - [0:0]
-A PREROUTING -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A OUTPUT -m comment --comment "kubernetes service portals" -j KUBE-SERVICES
-A POSTROUTING -m comment --comment "kubernetes postrouting rules" -j KUBE-POSTROUTING
-A POSTROUTING -m comment --comment "flanneld masq" -j FLANNEL-POSTRTG
-A FLANNEL-POSTRTG -m mark --mark {MASQ_MARK} -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s {subnet} -d {CLUSTER_CIDR} -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s {CLUSTER_CIDR} -d {subnet} -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG ! -s {CLUSTER_CIDR} -d {subnet} -m comment --comment "flanneld masq" -j RETURN
-A FLANNEL-POSTRTG -s {CLUSTER_CIDR} ! -d 224.0.0.0/4 -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
-A FLANNEL-POSTRTG ! -s {CLUSTER_CIDR} -d {CLUSTER_CIDR} -m comment --comment "flanneld masq" -j MASQUERADE --random-fully
COMMIT
"#
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn chain_names_look_like_kube_proxy() {
        let c = chain_name("KUBE-SVC", "default/web:httptcp");
        assert_eq!(c.len(), "KUBE-SVC-".len() + 16);
        assert!(
            c[9..]
                .bytes()
                .all(|b| b.is_ascii_uppercase() || (b'2'..=b'7').contains(&b))
        );
        assert_ne!(c, chain_name("KUBE-SVC", "default/web:dnsudp"));
    }

    #[test]
    fn statistic_branches_and_reject() {
        let spec = ClusterSpec::standard(3, 1);
        let r = kube_rules(&spec, 0);
        let text = r.nat.rules.join("\n");
        assert!(text.contains("--probability 0.3333333333"), "{text}");
        assert!(text.contains("--probability 0.5000000000"));
        let f = r.filter.rules.join("\n");
        assert!(f.contains("default/empty:http has no endpoints"));
        // node0 has a local web endpoint: no "no local endpoints" drop there, but node1 too.
        assert!(!f.contains("no local endpoints"));
        let mut spec1 = spec.clone();
        spec1.pods.retain(|p| p.node != 1);
        let f1 = kube_rules(&spec1, 1).filter.rules.join("\n");
        assert!(f1.contains("default/web-lb:http has no local endpoints"));
    }

    #[test]
    fn resync_deletes_stale_chains() {
        let spec = ClusterSpec::standard(2, 1);
        let old = kube_rules(&spec, 0);
        let mut spec2 = spec.clone();
        spec2.pods.clear();
        let new = kube_rules(&spec2, 0);
        let text = restore_text(&new, Some(&old));
        let svc = old
            .nat
            .chains
            .iter()
            .find(|c| c.starts_with("KUBE-SVC-"))
            .unwrap();
        assert!(text.contains(&format!("-X {svc}")));
    }
}
