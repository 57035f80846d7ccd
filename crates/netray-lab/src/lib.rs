//! netray-lab (to be written).
