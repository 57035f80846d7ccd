//! Root causes and scans: from traces and state to findings with evidence and fixes.
//!
//! - [`scan::scan`] runs the check [`catalog::CATALOG`] (implemented in [`checks`]) over a
//!   whole bundle: state alone, no flow.
//! - [`audit::run`] walks every source class to every Service, node and pod network and
//!   groups the failures by cause.
//! - [`diagnose::diagnose`] turns the walks of one flow (netray-datapath) into a verdict, the
//!   outcome per endpoint and root causes, using the scan's findings as supporting evidence.

pub mod audit;
pub mod catalog;
pub mod checks;
pub mod diagnose;
pub mod diff;
pub mod finding;
mod fix;
pub mod scan;

pub use finding::{Finding, FixProof, Severity};
