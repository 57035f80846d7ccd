//! netray's snapshot format.
//!
//! A [`NodeSnapshot`] is one JSON document per node holding the host network namespace and
//! every other namespace found on it; a [`Bundle`] is a set of them plus an optional
//! Kubernetes `cluster.json`. Loading validates and names the file and JSON path of any fault.

pub mod bundle;
pub mod limits;
pub mod model;
pub mod output;
pub mod text;

pub use bundle::{Bundle, FAILED_NODES_FILE, FailedNode, LoadError, write_failed_nodes};
pub use limits::Limits;
pub use model::*;
