//! Every limit netray applies when it reads a bundle, as named constants (listed in
//! `SECURITY.md`). A bundle that exceeds one is refused with an error naming the file, the
//! limit and its value; nothing is read past a limit.

/// Largest single file read from a bundle (`cluster.json` or one `nodes/*.json`): 256 MiB.
/// A `.tar.gz` entry is checked against its header before any of it is read; a directory
/// file is read through `take(limit + 1)`, so a device or a growing file cannot read forever.
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// Largest total of the files read from one bundle: 1 GiB.
pub const MAX_BUNDLE_BYTES: u64 = 1 << 30;

/// Most `nodes/*.json` files in one bundle: 4096.
pub const MAX_NODE_FILES: usize = 4096;

/// Most entries of any kind in a `.tar.gz` bundle (unrelated entries are skipped unread but
/// counted): 100,000.
pub const MAX_ARCHIVE_ENTRIES: u64 = 100_000;

/// Most bytes decompressed from a `.tar.gz` bundle, skipped entries included: 4 GiB (bounds
/// the time spent on a gzip bomb).
pub const MAX_ARCHIVE_STREAM_BYTES: u64 = 4 << 30;

/// Largest GNU long-name / long-link or pax extended header in a `.tar.gz`: 64 KiB.
pub const MAX_ARCHIVE_HEADER_BYTES: u64 = 64 << 10;

/// Longest node name (`node.name`): 253 bytes, a Kubernetes (DNS subdomain) name.
pub const MAX_NODE_NAME_BYTES: usize = 253;

/// Longest network namespace name (`namespaces[].id.name`): 255 bytes (`NAME_MAX`).
pub const MAX_NETNS_NAME_BYTES: usize = 255;

/// Longest interface name (links, `dev`, `master`, …): 15 bytes (`IFNAMSIZ - 1`).
pub const MAX_IFNAME_BYTES: usize = 15;

/// Longest other identity field (`node.hostname`, `kernel`, `boot_id`, `collected_at`,
/// `collector`): 1024 bytes.
pub const MAX_IDENTITY_FIELD_BYTES: usize = 1024;

/// The limits one bundle load applies; [`Limits::default`] is the constants above. Smaller
/// values are for tests and embedders.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// See [`MAX_FILE_BYTES`].
    pub file_bytes: u64,
    /// See [`MAX_BUNDLE_BYTES`].
    pub bundle_bytes: u64,
    /// See [`MAX_NODE_FILES`].
    pub node_files: usize,
    /// See [`MAX_ARCHIVE_ENTRIES`].
    pub archive_entries: u64,
    /// See [`MAX_ARCHIVE_STREAM_BYTES`].
    pub archive_stream_bytes: u64,
    /// See [`MAX_ARCHIVE_HEADER_BYTES`].
    pub archive_header_bytes: u64,
}

impl Default for Limits {
    fn default() -> Self {
        Limits {
            file_bytes: MAX_FILE_BYTES,
            bundle_bytes: MAX_BUNDLE_BYTES,
            node_files: MAX_NODE_FILES,
            archive_entries: MAX_ARCHIVE_ENTRIES,
            archive_stream_bytes: MAX_ARCHIVE_STREAM_BYTES,
            archive_header_bytes: MAX_ARCHIVE_HEADER_BYTES,
        }
    }
}
