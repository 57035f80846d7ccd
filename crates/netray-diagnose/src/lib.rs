//! Root causes and scans: from traces and state to findings with evidence and fixes.
//!
//! - [`scan::scan`] runs the check [`catalog::CATALOG`] over a whole bundle.

pub mod catalog;
pub mod checks;
pub mod diagnose;
pub mod finding;
pub mod scan;

pub use finding::{Finding, Severity};
