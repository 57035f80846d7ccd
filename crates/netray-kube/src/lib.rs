//! netray-kube (to be written).
