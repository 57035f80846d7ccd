//! Namespace labs: small clusters built from Linux network namespaces, for tests that check
//! netray against the real kernel.
//!
//! Safety rules (see the project brief): every namespace is named with [`LAB_PREFIX`] and a
//! per-lab tag, nothing is ever configured in the root namespace, every probe is bounded in
//! time, and namespaces are deleted on drop (also when a test panics).

pub mod netns;

pub use netns::{LAB_PREFIX, LabError, Netns, lab_tag, require_root};
