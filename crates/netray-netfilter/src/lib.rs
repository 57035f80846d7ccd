//! netray-netfilter (to be written).
