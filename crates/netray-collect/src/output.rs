//! Writing output files without following planted links (shared with the other writers:
//! [`netray_snapshot::output`]).

pub use netray_snapshot::output::{TempFile, write_file_atomic};
