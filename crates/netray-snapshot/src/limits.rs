//! Every limit netray applies when it reads a bundle, as named constants (listed in
//! `SECURITY.md`). A bundle that exceeds one is refused with an error naming the file, the
//! limit and its value; nothing is read past a limit.

/// Largest single file read from a bundle (`cluster.json` or one `nodes/*.json`): 256 MiB.
/// A `.tar.gz` entry is checked against its header before any of it is read; a directory
/// file is read through `take(limit + 1)`, so a device or a growing file cannot read forever.
pub const MAX_FILE_BYTES: u64 = 256 << 20;

/// Largest total of the files read from one bundle: 8 GiB (a 300-node bundle with 10,000
/// Services is about 5 GB). Raised with `NETRAY_MAX_BUNDLE_BYTES` (see [`Limits::from_env`]).
pub const MAX_BUNDLE_BYTES: u64 = 8 << 30;

/// Most `nodes/*.json` files in one bundle: 10,000. Raised with `NETRAY_MAX_NODE_FILES`.
pub const MAX_NODE_FILES: usize = 10_000;

/// Most entries of any kind in a `.tar.gz` bundle (unrelated entries are skipped unread but
/// counted): 100,000.
pub const MAX_ARCHIVE_ENTRIES: u64 = 100_000;

/// Most bytes decompressed from a `.tar.gz` bundle, skipped entries included: 16 GiB (bounds
/// the time spent on a gzip bomb). Raised with `NETRAY_MAX_ARCHIVE_STREAM_BYTES`.
pub const MAX_ARCHIVE_STREAM_BYTES: u64 = 16 << 30;

/// The environment variables that override a limit for a trusted bundle, and the limit each
/// one sets (see [`Limits::from_env`]).
pub const ENV_OVERRIDES: [&str; 3] = [
    "NETRAY_MAX_BUNDLE_BYTES",
    "NETRAY_MAX_NODE_FILES",
    "NETRAY_MAX_ARCHIVE_STREAM_BYTES",
];

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

impl Limits {
    /// The default limits, with those the environment overrides for a trusted bundle too
    /// large for them: `NETRAY_MAX_BUNDLE_BYTES`, `NETRAY_MAX_NODE_FILES` and
    /// `NETRAY_MAX_ARCHIVE_STREAM_BYTES`, each a positive integer (bytes may end in `K`, `M`,
    /// `G` or `T`, powers of 1024). A value that does not parse is an error naming it.
    pub fn from_env() -> Result<Limits, String> {
        Self::from_vars(|k| std::env::var(k).ok())
    }

    /// [`Limits::from_env`] over any variable source (tests).
    pub fn from_vars(var: impl Fn(&str) -> Option<String>) -> Result<Limits, String> {
        let mut l = Limits::default();
        let [bundle, nodes, stream] = ENV_OVERRIDES;
        if let Some(v) = var(bundle) {
            l.bundle_bytes = parse_size(bundle, &v)?;
        }
        if let Some(v) = var(nodes) {
            l.node_files = v
                .trim()
                .parse::<usize>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(|| format!("{nodes}={v:?}: not a positive integer"))?;
        }
        if let Some(v) = var(stream) {
            l.archive_stream_bytes = parse_size(stream, &v)?;
        }
        Ok(l)
    }
}

/// `123`, `64K`, `512M`, `8G`, `1T` (powers of 1024), positive.
fn parse_size(name: &str, v: &str) -> Result<u64, String> {
    let t = v.trim();
    let (num, shift) = match t.char_indices().last() {
        Some((i, c)) if c.is_ascii_alphabetic() => {
            let shift = match c.to_ascii_uppercase() {
                'K' => 10,
                'M' => 20,
                'G' => 30,
                'T' => 40,
                _ => return Err(format!("{name}={v:?}: unknown unit (K, M, G or T)")),
            };
            (&t[..i], shift)
        }
        _ => (t, 0),
    };
    num.parse::<u64>()
        .ok()
        .filter(|n| *n > 0)
        .and_then(|n| n.checked_mul(1u64 << shift))
        .ok_or_else(|| format!("{name}={v:?}: not a positive size (bytes, or with K, M, G, T)"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn environment_overrides() {
        let l = Limits::from_vars(|_| None).unwrap();
        assert_eq!(l, Limits::default());
        let l = Limits::from_vars(|k| match k {
            "NETRAY_MAX_BUNDLE_BYTES" => Some("16G".into()),
            "NETRAY_MAX_NODE_FILES" => Some("20000".into()),
            "NETRAY_MAX_ARCHIVE_STREAM_BYTES" => Some("1000".into()),
            _ => None,
        })
        .unwrap();
        assert_eq!(l.bundle_bytes, 16 << 30);
        assert_eq!(l.node_files, 20_000);
        assert_eq!(l.archive_stream_bytes, 1000);
        for bad in ["", "0", "-1", "8X", "G", "99999999999T"] {
            let e = Limits::from_vars(|k| (k == "NETRAY_MAX_BUNDLE_BYTES").then(|| bad.into()))
                .unwrap_err();
            assert!(e.starts_with("NETRAY_MAX_BUNDLE_BYTES="), "{bad}: {e}");
        }
    }
}
