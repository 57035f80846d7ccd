//! The checks of the scan catalog, one module per area. Each check is a
//! `fn(&ScanInput, &mut Vec<Finding>)` listed in [`crate::catalog::CATALOG`].

pub mod firewall;
pub(crate) mod ipv6;
pub(crate) mod links;
pub(crate) mod overlay;
pub(crate) mod routing;
pub(crate) mod services;
pub(crate) mod sysctl;
