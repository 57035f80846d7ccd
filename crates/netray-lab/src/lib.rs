//! Namespace labs: small Kubernetes-like clusters built from Linux network namespaces, for
//! tests that check netray against the real kernel.
//!
//! A [`ClusterSpec`] (nodes, pods, services) becomes a [`Lab`] with [`Lab::up`]: an underlay
//! switch, a router, an external client, nodes wired as flannel's VXLAN backend wires them,
//! pods on each node's `cni0` bridge running a TCP+UDP server, and kube-proxy-style iptables
//! rules. [`Lab::apply`] layers a [`Fault`] on top; [`Lab::probe`] sends real, time-bounded
//! requests; [`Lab::write_cluster_json`] writes the matching `kubectl … -o json` List.
//!
//! Safety rules (see the project brief): every namespace is named with [`LAB_PREFIX`] and a
//! per-lab tag, nothing is ever configured in the root namespace, every probe is bounded in
//! time, and namespaces are deleted on drop (also when a test panics).

pub mod agent;
pub mod calico;
mod capture;
pub mod cluster;
pub mod dualstack;
pub mod fault;
pub mod kubeproxy;
pub mod lab;
pub mod matrix;
pub mod netns;
pub mod probe;
pub mod spec;

pub use fault::Fault;
pub use lab::{Agent, Lab, Spread, down, labs_on_host};
pub use netns::{LAB_PREFIX, LabError, Netns, lab_tag, lab_tests_can_run, require_root};
pub use probe::{Probe, ProbeKind, ProbeResult};
pub use spec::{ClusterSpec, Proto};
