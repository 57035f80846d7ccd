//! netray-collect (to be written).
