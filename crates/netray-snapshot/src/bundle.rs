//! Bundles: `cluster.json` (optional Kubernetes `List`) plus `nodes/*.json`, as a directory or a
//! `.tar.gz` of one. Loading validates everything and names the file and JSON path of any fault.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::path::{Path, PathBuf};

use crate::model::{LinkKind, NodeSnapshot, SCHEMA_VERSION};

/// A loaded, validated bundle.
#[derive(Debug, Clone)]
pub struct Bundle {
    /// Where it was loaded from.
    pub source: PathBuf,
    /// `cluster.json` as raw JSON (interpreted by `netray-kube`).
    pub cluster: Option<serde_json::Value>,
    /// Node snapshots, sorted by node name.
    pub nodes: Vec<NodeSnapshot>,
}

/// Why a snapshot or bundle could not be loaded. Every variant names the file.
#[derive(Debug, thiserror::Error)]
pub enum LoadError {
    /// The file could not be read.
    #[error("{file}: cannot read: {source}")]
    Io {
        /// File concerned.
        file: String,
        /// Underlying error.
        source: std::io::Error,
    },
    /// Not valid JSON or wrong shape.
    #[error("{file}: at {path}: {reason}")]
    Json {
        /// File concerned.
        file: String,
        /// JSON path of the fault (`.` for the document).
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// Schema version this build does not read.
    #[error(
        "{file}: at .schema_version: unsupported schema version {found} (this netray reads version {SCHEMA_VERSION})"
    )]
    Version {
        /// File concerned.
        file: String,
        /// Version found.
        found: u64,
    },
    /// Structurally valid JSON whose content is inconsistent.
    #[error("{file}: at {path}: {reason}")]
    Invalid {
        /// File concerned.
        file: String,
        /// JSON path of the fault.
        path: String,
        /// What is wrong.
        reason: String,
    },
    /// The bundle as a whole is unusable.
    #[error("{file}: {reason}")]
    Bundle {
        /// Bundle path.
        file: String,
        /// What is wrong.
        reason: String,
    },
}

impl NodeSnapshot {
    /// Parse and validate a snapshot from JSON text; `file` names it in errors.
    pub fn from_json(file: &str, text: &str) -> Result<NodeSnapshot, LoadError> {
        // Check the version before the shape so a future format gets the right message.
        let value: serde_json::Value = serde_json::from_str(text).map_err(|e| LoadError::Json {
            file: file.to_string(),
            path: format!("line {} column {}", e.line(), e.column()),
            reason: e.to_string(),
        })?;
        match value.get("schema_version") {
            None => {
                return Err(LoadError::Json {
                    file: file.to_string(),
                    path: ".schema_version".into(),
                    reason: "missing field `schema_version` (is this a netray snapshot?)".into(),
                });
            }
            Some(v) => match v.as_u64() {
                Some(n) if n == u64::from(SCHEMA_VERSION) => {}
                Some(n) => {
                    return Err(LoadError::Version {
                        file: file.to_string(),
                        found: n,
                    });
                }
                None => {
                    return Err(LoadError::Json {
                        file: file.to_string(),
                        path: ".schema_version".into(),
                        reason: format!("expected an integer, found {v}"),
                    });
                }
            },
        }
        let snap: NodeSnapshot =
            serde_path_to_error::deserialize(value).map_err(|e| LoadError::Json {
                file: file.to_string(),
                path: json_path(e.path()),
                reason: e.inner().to_string(),
            })?;
        snap.validate(file)?;
        Ok(snap)
    }

    /// Serialize as pretty JSON.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("snapshot serializes")
    }

    /// Check internal references: unique namespaces, a host namespace, link names used by
    /// addresses/routes/neighbours exist, veth peers point at a known namespace.
    pub fn validate(&self, file: &str) -> Result<(), LoadError> {
        let invalid = |path: String, reason: String| LoadError::Invalid {
            file: file.to_string(),
            path,
            reason,
        };
        let hosts = self
            .namespaces
            .iter()
            .filter(|n| n.role == crate::model::NetnsRole::Host)
            .count();
        if hosts != 1 {
            return Err(invalid(
                ".namespaces".into(),
                format!("expected exactly one namespace with role `host`, found {hosts}"),
            ));
        }
        let mut known: BTreeSet<u64> = self.referenced_netns.iter().map(|n| n.inode).collect();
        let mut seen = BTreeSet::new();
        for (i, ns) in self.namespaces.iter().enumerate() {
            if !seen.insert(ns.id.inode) {
                return Err(invalid(
                    format!(".namespaces[{i}].id.inode"),
                    format!("namespace inode {} appears twice", ns.id.inode),
                ));
            }
            known.insert(ns.id.inode);
        }
        for (i, ns) in self.namespaces.iter().enumerate() {
            let names: BTreeSet<&str> = ns.links.iter().map(|l| l.name.as_str()).collect();
            let check_dev = |what: &str, j: usize, dev: &str| {
                if names.contains(dev) {
                    Ok(())
                } else {
                    Err(invalid(
                        format!(".namespaces[{i}].{what}[{j}].dev"),
                        format!("interface `{dev}` is not a link of this namespace"),
                    ))
                }
            };
            for (j, l) in ns.links.iter().enumerate() {
                if let LinkKind::Veth {
                    peer_netns: Some(p),
                    ..
                } = l.kind
                    && !known.contains(&p)
                {
                    return Err(invalid(
                        format!(".namespaces[{i}].links[{j}].kind.peer_netns"),
                        format!(
                            "veth `{}` has its peer in namespace inode {p}, which is neither in the snapshot nor in `referenced_netns`",
                            l.name
                        ),
                    ));
                }
                if let Some(m) = &l.master
                    && !names.contains(m.as_str())
                {
                    return Err(invalid(
                        format!(".namespaces[{i}].links[{j}].master"),
                        format!("master `{m}` is not a link of this namespace"),
                    ));
                }
            }
            for (j, a) in ns.addresses.iter().enumerate() {
                check_dev("addresses", j, &a.dev)?;
            }
            for (j, r) in ns.routes.iter().enumerate() {
                if let Some(d) = &r.dev {
                    check_dev("routes", j, d)?;
                }
            }
            for (j, n) in ns.neighbours.iter().enumerate() {
                check_dev("neighbours", j, &n.dev)?;
            }
            for (j, f) in ns.fdb.iter().enumerate() {
                check_dev("fdb", j, &f.dev)?;
            }
        }
        Ok(())
    }
}

/// Render a `serde_path_to_error` path as `.a.b[3].c`.
fn json_path(path: &serde_path_to_error::Path) -> String {
    let s = path.to_string();
    if s == "." || s.is_empty() {
        ".".to_string()
    } else {
        // serde_path_to_error prints `a.b[3].c`; prefix a dot for jq-style paths.
        format!(".{s}")
    }
}

impl Bundle {
    /// Load a bundle from a directory or a `.tar.gz` / `.tgz` file.
    pub fn load(path: &Path) -> Result<Bundle, LoadError> {
        let files = if path.is_dir() {
            read_dir_files(path)?
        } else {
            read_tar_gz(path)?
        };
        Self::from_files(path, files)
    }

    /// Build a bundle from `(relative path, contents)` pairs.
    fn from_files(source: &Path, files: Vec<(String, Vec<u8>)>) -> Result<Bundle, LoadError> {
        let shown = |rel: &str| format!("{}/{}", source.display(), rel);
        let mut cluster = None;
        let mut nodes = Vec::new();
        for (rel, data) in &files {
            let text = std::str::from_utf8(data).map_err(|e| LoadError::Json {
                file: shown(rel),
                path: ".".into(),
                reason: format!("not UTF-8: {e}"),
            })?;
            if rel == "cluster.json" {
                let v: serde_json::Value =
                    serde_json::from_str(text).map_err(|e| LoadError::Json {
                        file: shown(rel),
                        path: format!("line {} column {}", e.line(), e.column()),
                        reason: e.to_string(),
                    })?;
                cluster = Some(v);
            } else if rel.starts_with("nodes/") && rel.ends_with(".json") {
                nodes.push(NodeSnapshot::from_json(&shown(rel), text)?);
            }
        }
        if nodes.is_empty() {
            return Err(LoadError::Bundle {
                file: source.display().to_string(),
                reason: "no node snapshots (expected nodes/*.json)".into(),
            });
        }
        nodes.sort_by(|a, b| a.node.name.cmp(&b.node.name));
        let mut names = BTreeMap::new();
        for n in &nodes {
            if names.insert(n.node.name.clone(), ()).is_some() {
                return Err(LoadError::Bundle {
                    file: source.display().to_string(),
                    reason: format!("two snapshots for node `{}`", n.node.name),
                });
            }
        }
        Ok(Bundle {
            source: source.to_path_buf(),
            cluster,
            nodes,
        })
    }

    /// Write the bundle as a directory (`cluster.json`, `nodes/NAME.json`).
    pub fn write_dir(&self, dir: &Path) -> std::io::Result<()> {
        fs::create_dir_all(dir.join("nodes"))?;
        if let Some(c) = &self.cluster {
            fs::write(
                dir.join("cluster.json"),
                serde_json::to_string_pretty(c).expect("json value serializes"),
            )?;
        }
        for n in &self.nodes {
            fs::write(
                dir.join("nodes").join(format!("{}.json", n.node.name)),
                n.to_json(),
            )?;
        }
        Ok(())
    }
}

fn io_err(file: &Path) -> impl FnOnce(std::io::Error) -> LoadError + '_ {
    move |source| LoadError::Io {
        file: file.display().to_string(),
        source,
    }
}

fn read_dir_files(dir: &Path) -> Result<Vec<(String, Vec<u8>)>, LoadError> {
    let mut files = Vec::new();
    let cluster = dir.join("cluster.json");
    if cluster.exists() {
        files.push((
            "cluster.json".to_string(),
            fs::read(&cluster).map_err(io_err(&cluster))?,
        ));
    }
    let nodes_dir = dir.join("nodes");
    let entries = fs::read_dir(&nodes_dir).map_err(io_err(&nodes_dir))?;
    let mut names = Vec::new();
    for e in entries {
        let e = e.map_err(io_err(&nodes_dir))?;
        let name = e.file_name().to_string_lossy().into_owned();
        if name.ends_with(".json") {
            names.push(name);
        }
    }
    names.sort();
    for name in names {
        let p = nodes_dir.join(&name);
        files.push((format!("nodes/{name}"), fs::read(&p).map_err(io_err(&p))?));
    }
    Ok(files)
}

/// Read a `.tar.gz` bundle; entries may sit under one top-level directory.
fn read_tar_gz(path: &Path) -> Result<Vec<(String, Vec<u8>)>, LoadError> {
    let file = fs::File::open(path).map_err(io_err(path))?;
    let mut archive = tar::Archive::new(flate2::read::GzDecoder::new(file));
    let bad = |e: std::io::Error| LoadError::Bundle {
        file: path.display().to_string(),
        reason: format!("not a readable .tar.gz bundle: {e}"),
    };
    let mut raw = Vec::new();
    for entry in archive.entries().map_err(bad)? {
        let mut entry = entry.map_err(bad)?;
        if !entry.header().entry_type().is_file() {
            continue;
        }
        let name = entry.path().map_err(bad)?.to_string_lossy().into_owned();
        let name = name.trim_start_matches("./").to_string();
        let mut data = Vec::new();
        entry.read_to_end(&mut data).map_err(bad)?;
        raw.push((name, data));
    }
    // Strip a common top-level directory (`bundle/cluster.json` → `cluster.json`).
    let prefix = raw
        .iter()
        .find_map(|(n, _)| {
            n.strip_suffix("cluster.json")
                .or_else(|| n.find("nodes/").map(|i| &n[..i]))
                .map(str::to_string)
        })
        .unwrap_or_default();
    let mut files: Vec<_> = raw
        .into_iter()
        .filter_map(|(n, d)| n.strip_prefix(prefix.as_str()).map(|s| (s.to_string(), d)))
        .collect();
    files.sort_by(|a, b| a.0.cmp(&b.0));
    Ok(files)
}
