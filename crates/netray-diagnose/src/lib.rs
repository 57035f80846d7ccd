//! netray-diagnose (to be written).
