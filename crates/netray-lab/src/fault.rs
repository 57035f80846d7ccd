//! Faults a lab can be broken with, one call each ([`crate::Lab::apply`]).

use std::fmt;
use std::str::FromStr;

/// One fault. Nodes, pods and services are named as in the cluster (`node1`, `web-3`, `web`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Fault {
    /// `filter FORWARD` policy DROP (as Docker sets it) on a node whose flannel has no
    /// FORWARD accept rules (seed 003): traffic forwarded to its pods from other nodes dies.
    ForwardDrop {
        /// Node.
        node: String,
    },
    /// `net.ipv4.ip_forward=0` on a node (seed 001).
    IpForwardOff {
        /// Node.
        node: String,
    },
    /// `node`'s `flannel.1` gets a new MAC (a reboot); the nodes in `stale_on` keep the old
    /// PERMANENT neighbour and FDB entries, the other peers are refreshed (seed 002).
    StaleVtep {
        /// The rebooted node.
        node: String,
        /// Peers left stale; empty means every peer.
        stale_on: Vec<String>,
    },
    /// Strict `rp_filter` on a node whose route back to the external client leaves by a
    /// second interface (`eth1` to the router): the client's packets, arriving on `eth0`, are
    /// dropped (seed 001).
    RpFilterAsymmetric {
        /// Node.
        node: String,
    },
    /// The flannel route to `peer`'s pod subnet is missing on `node`.
    MissingRoute {
        /// Node missing the route.
        node: String,
        /// Peer whose subnet is unreachable.
        peer: String,
    },
    /// A pod without its default route (seed 001).
    PodNoDefaultRoute {
        /// Pod.
        pod: String,
    },
    /// A NetworkPolicy-like chain (kube-router layout) on the pod's node drops every new
    /// connection forwarded to the pod.
    PolicyDrop {
        /// Pod.
        pod: String,
    },
    /// The underlay switch's ports drop to MTU 1400 while nodes keep 1500 on `eth0` and 1450
    /// on the overlay: full-size packets between nodes no longer fit once encapsulated and the
    /// switch drops them silently.
    OverlayMtu,
    /// Seed 000: a VM-like workload `vm-0` on a bridge `br-vm` of `node` whose gateway is the
    /// router, behind Service `vm` (10.96.0.150:80); host-originated traffic to the ClusterIP is
    /// masqueraded (`--random-fully`) and, with `bridge-nf-call-iptables=1` (the kernel's
    /// default), the bridged reply meets iptables early.
    BridgeNfMasq {
        /// Node hosting the VM.
        node: String,
    },
    /// Seed 004: the LoadBalancer IP is bound to a local, down interface `kube-ipvs0` on the
    /// node (IPVS-style); health probes sourced from the LB IP become martians. No dummy or
    /// IPVS here, so `kube-ipvs0` is one end of a veth pair kept down.
    LocalServiceIp {
        /// Node.
        node: String,
    },
    /// The service's endpoints go away (selector matches nothing): kube-proxy REJECTs.
    NoEndpoints {
        /// Service.
        service: String,
    },
    /// The pod is deleted as a CNI deletes it (its veth, hence its IP, disappears) and
    /// kube-proxy drops its endpoint; conntrack entries that DNAT to it are left in place, as
    /// when kube-proxy's UDP conntrack cleanup misses them.
    PodGone {
        /// Pod.
        pod: String,
    },
    /// A hand-written `filter FORWARD` rule on the pod's node, first in the chain, DROPs every
    /// packet forwarded to the pod's IP (cross-node, Service and bridged same-node traffic;
    /// the node's own connections to the pod leave by OUTPUT and still work).
    DropRule {
        /// Pod.
        pod: String,
    },
    /// The flannel route to `peer`'s pod subnet on `node` is replaced by a `blackhole` route.
    BlackholeRoute {
        /// Node holding the blackhole route.
        node: String,
        /// Peer whose subnet it swallows.
        peer: String,
    },
    /// The node-side end of the pod's veth (on `cni0`) is set down.
    VethDown {
        /// Pod.
        pod: String,
    },
}

impl Fault {
    /// Every fault name with its argument syntax.
    pub const NAMES: &'static [&'static str] = &[
        "forward-drop:NODE",
        "ip-forward-off:NODE",
        "stale-vtep:NODE[:STALE_NODE+STALE_NODE...]",
        "rp-filter-asymmetric:NODE",
        "missing-route:NODE:PEER",
        "pod-no-default-route:POD",
        "policy-drop:POD",
        "overlay-mtu",
        "bridge-nf-masq:NODE",
        "local-service-ip:NODE",
        "no-endpoints:SERVICE",
        "pod-gone:POD",
        "drop-rule:POD",
        "blackhole-route:NODE:PEER",
        "veth-down:POD",
    ];

    /// The fault's name (`forward-drop`, …).
    pub fn name(&self) -> &'static str {
        match self {
            Fault::ForwardDrop { .. } => "forward-drop",
            Fault::IpForwardOff { .. } => "ip-forward-off",
            Fault::StaleVtep { .. } => "stale-vtep",
            Fault::RpFilterAsymmetric { .. } => "rp-filter-asymmetric",
            Fault::MissingRoute { .. } => "missing-route",
            Fault::PodNoDefaultRoute { .. } => "pod-no-default-route",
            Fault::PolicyDrop { .. } => "policy-drop",
            Fault::OverlayMtu => "overlay-mtu",
            Fault::BridgeNfMasq { .. } => "bridge-nf-masq",
            Fault::LocalServiceIp { .. } => "local-service-ip",
            Fault::NoEndpoints { .. } => "no-endpoints",
            Fault::PodGone { .. } => "pod-gone",
            Fault::DropRule { .. } => "drop-rule",
            Fault::BlackholeRoute { .. } => "blackhole-route",
            Fault::VethDown { .. } => "veth-down",
        }
    }
}

impl fmt::Display for Fault {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.name())?;
        match self {
            Fault::ForwardDrop { node }
            | Fault::IpForwardOff { node }
            | Fault::RpFilterAsymmetric { node }
            | Fault::BridgeNfMasq { node }
            | Fault::LocalServiceIp { node } => write!(f, ":{node}"),
            Fault::StaleVtep { node, stale_on } if stale_on.is_empty() => write!(f, ":{node}"),
            Fault::StaleVtep { node, stale_on } => write!(f, ":{node}:{}", stale_on.join("+")),
            Fault::MissingRoute { node, peer } | Fault::BlackholeRoute { node, peer } => {
                write!(f, ":{node}:{peer}")
            }
            Fault::PodNoDefaultRoute { pod }
            | Fault::PolicyDrop { pod }
            | Fault::PodGone { pod }
            | Fault::DropRule { pod }
            | Fault::VethDown { pod } => write!(f, ":{pod}"),
            Fault::NoEndpoints { service } => write!(f, ":{service}"),
            Fault::OverlayMtu => Ok(()),
        }
    }
}

impl FromStr for Fault {
    type Err = String;

    /// Parse `NAME[:ARG[:ARG]]` as listed in [`Fault::NAMES`].
    fn from_str(s: &str) -> Result<Fault, String> {
        let parts: Vec<&str> = s.split(':').collect();
        let arg = |i: usize| -> Result<String, String> {
            parts
                .get(i)
                .filter(|a| !a.is_empty())
                .map(|a| a.to_string())
                .ok_or_else(|| {
                    format!(
                        "fault `{s}`: missing argument; expected one of {}",
                        Fault::NAMES.join(", ")
                    )
                })
        };
        let max_args = match parts[0] {
            "overlay-mtu" => 0,
            "stale-vtep" | "missing-route" | "blackhole-route" => 2,
            _ => 1,
        };
        if parts.len() > max_args + 1 {
            return Err(format!("fault `{s}`: too many arguments"));
        }
        Ok(match parts[0] {
            "forward-drop" => Fault::ForwardDrop { node: arg(1)? },
            "ip-forward-off" => Fault::IpForwardOff { node: arg(1)? },
            "stale-vtep" => Fault::StaleVtep {
                node: arg(1)?,
                stale_on: parts
                    .get(2)
                    .map(|l| {
                        l.split('+')
                            .filter(|n| !n.is_empty())
                            .map(String::from)
                            .collect()
                    })
                    .unwrap_or_default(),
            },
            "rp-filter-asymmetric" => Fault::RpFilterAsymmetric { node: arg(1)? },
            "missing-route" => Fault::MissingRoute {
                node: arg(1)?,
                peer: arg(2)?,
            },
            "pod-no-default-route" => Fault::PodNoDefaultRoute { pod: arg(1)? },
            "policy-drop" => Fault::PolicyDrop { pod: arg(1)? },
            "overlay-mtu" => Fault::OverlayMtu,
            "bridge-nf-masq" => Fault::BridgeNfMasq { node: arg(1)? },
            "local-service-ip" => Fault::LocalServiceIp { node: arg(1)? },
            "no-endpoints" => Fault::NoEndpoints { service: arg(1)? },
            "pod-gone" => Fault::PodGone { pod: arg(1)? },
            "drop-rule" => Fault::DropRule { pod: arg(1)? },
            "blackhole-route" => Fault::BlackholeRoute {
                node: arg(1)?,
                peer: arg(2)?,
            },
            "veth-down" => Fault::VethDown { pod: arg(1)? },
            other => {
                return Err(format!(
                    "unknown fault `{other}`; expected one of {}",
                    Fault::NAMES.join(", ")
                ));
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parse_and_display_round_trip() {
        for s in [
            "forward-drop:node1",
            "stale-vtep:node0:node2+node3",
            "stale-vtep:node0",
            "missing-route:node0:node1",
            "overlay-mtu",
            "no-endpoints:web",
            "pod-gone:web-3",
            "local-service-ip:node0",
            "drop-rule:web-2",
            "blackhole-route:node2:node0",
            "veth-down:web-5",
        ] {
            let f: Fault = s.parse().unwrap();
            assert_eq!(f.to_string(), s);
        }
        assert!("forward-drop".parse::<Fault>().is_err());
        assert!("overlay-mtu:x".parse::<Fault>().is_err());
        assert!("bogus:x".parse::<Fault>().is_err());
    }
}
