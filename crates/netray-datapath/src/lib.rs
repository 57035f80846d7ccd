//! netray-datapath (to be written).
