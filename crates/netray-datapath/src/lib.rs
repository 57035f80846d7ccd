//! netray-datapath: the Linux datapath model and the packet walk behind `netray trace`.
//!
//! ```text
//! Bundle ──World::new──▶ World (namespaces by (boot_id, inode), IP/MAC owners, veth peers)
//!        ──RulesetEngine::new──▶ per-namespace firewall (netray-netfilter)
//! trace(&world, &engine, &Flow, Options) ──▶ Trace { branches[hops, disposition], shares }
//! ```
//!
//! The walk follows the kernel: output route (policy rules with every selector, tables,
//! route types, longest prefix then metric, ECMP as branches), OUTPUT, reroute, POSTROUTING;
//! on receive PREROUTING, martian and `fib_validate_source` checks (local source unless
//! `accept_local`, rp_filter with max(all, iface)), forwarding, FORWARD or INPUT; conntrack per
//! namespace with NAT decided on the first packet only and applied from the entry afterwards;
//! veth (a new receive in the peer namespace), bridges (FDB, flood, hairpin, br_netfilter with
//! `physdev`), VXLAN (neighbour → inner MAC → FDB → VTEP → underlay UDP → decapsulation by VNI
//! and port → inner MAC check), neighbours, MTU, IPVS virtual services (`ip_vs_in` at
//! LOCAL_IN/LOCAL_OUT scheduling to real servers, `ip_vs_out` de-NATing replies). Every delivered branch is followed by its
//! reply, which must reach the client with the exact tuple it expects.
//!
//! The result ([`Trace`]) is serializable; its JSON is documented in the crate README.

pub mod engine;
pub mod fib;
pub mod ipvs;
pub mod nf;
pub mod object;
pub mod result;
pub mod single;
pub mod sockprog;
pub mod testkit;
pub mod text;
pub mod walk;
pub mod world;

pub use engine::RulesetEngine;
pub use object::{CtTuple, KernelObject, Place};
pub use result::{
    Branch, DataSegment, Disposition, FlowView, Hop, Leg, PacketView, RuleRef, Step, TcpDataCheck,
    Trace,
};
pub use walk::{Flow, Options, Start, TraceError, trace};
pub use world::{MissingNode, World};
