//! Bundles: `cluster.json` (optional Kubernetes `List`) plus `nodes/*.json` and, for a partial
//! bundle, `failed-nodes.json` (the nodes whose snapshot could not be taken, with why), as a
//! directory or a `.tar.gz` of one; a single snapshot file is a one-node bundle. Loading
//! validates everything and names the file and JSON path of any fault.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::io::Read;
use std::os::unix::fs::{FileTypeExt, OpenOptionsExt};
use std::path::{Path, PathBuf};

use crate::limits::{self, Limits};
use crate::model::{LinkKind, NodeSnapshot, SCHEMA_VERSION};
use crate::text::{clip, clip_quote, escape_line};
use serde::{Deserialize, Serialize};

/// An error message that may quote input, bounded and on one line.
fn bounded(msg: &str) -> String {
    escape_line(&clip(msg, 1000)).into_owned()
}

/// A loaded, validated bundle.
#[derive(Debug, Clone, Default)]
pub struct Bundle {
    /// Where it was loaded from.
    pub source: PathBuf,
    /// `cluster.json` as raw JSON (interpreted by `netray-kube`).
    pub cluster: Option<serde_json::Value>,
    /// Node snapshots, sorted by node name.
    pub nodes: Vec<NodeSnapshot>,
    /// Nodes whose snapshot is missing because collecting it failed (`failed-nodes.json`),
    /// sorted by node name; none of them is in [`Bundle::nodes`].
    pub failed: Vec<FailedNode>,
}

/// Name of the file listing a partial bundle's failed nodes, next to `cluster.json`.
pub const FAILED_NODES_FILE: &str = "failed-nodes.json";

/// Longest `reason` of a [`FailedNode`] read from a bundle, in bytes.
pub const MAX_FAILED_REASON_BYTES: usize = 4096;

/// A node whose snapshot could not be taken, and why (one entry of `failed-nodes.json`, which
/// holds a JSON array of them).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FailedNode {
    /// Kubernetes node name.
    pub node: String,
    /// Why its snapshot is missing (one line, e.g. "collector pod timed out after 120 s").
    pub reason: String,
}

impl FailedNode {
    /// A failed node; `reason` is made one bounded line (control characters escaped, at most
    /// 1000 characters) so that any error text can be passed.
    pub fn new(node: impl Into<String>, reason: &str) -> FailedNode {
        FailedNode {
            node: node.into(),
            reason: bounded(reason),
        }
    }

    /// `failed-nodes.json` text for `list` (sorted by node, pretty JSON array).
    pub fn list_to_json(list: &[FailedNode]) -> String {
        let mut sorted = list.to_vec();
        sorted.sort();
        serde_json::to_string_pretty(&sorted).expect("failed nodes serialize")
    }

    /// Parse and validate `failed-nodes.json` text; `file` names it in errors. Node names
    /// follow the rules of snapshot node names; a node listed twice is an error.
    pub fn list_from_json(file: &str, text: &str) -> Result<Vec<FailedNode>, LoadError> {
        let mut de = serde_json::Deserializer::from_str(text);
        let mut list: Vec<FailedNode> =
            serde_path_to_error::deserialize(&mut de).map_err(|e| json_err(file, e))?;
        de.end().map_err(|e| LoadError::Json {
            file: file.to_string(),
            path: format!("line {} column {}", e.line(), e.column()),
            reason: bounded(&e.to_string()),
        })?;
        let invalid = |path: String, reason: String| LoadError::Invalid {
            file: file.to_string(),
            path,
            reason,
        };
        let mut seen = BTreeSet::new();
        for (i, f) in list.iter().enumerate() {
            check_name(&f.node, limits::MAX_NODE_NAME_BYTES, NameRule::Path)
                .map_err(|r| invalid(format!("[{i}].node"), format!("node name {r}")))?;
            check_name(&f.reason, MAX_FAILED_REASON_BYTES, NameRule::Text)
                .map_err(|r| invalid(format!("[{i}].reason"), format!("reason {r}")))?;
            if !seen.insert(f.node.as_str()) {
                return Err(invalid(
                    format!("[{i}].node"),
                    format!("node `{}` is listed twice", f.node),
                ));
            }
        }
        list.sort();
        Ok(list)
    }
}

/// Write `failed-nodes.json` for `failed` into bundle directory `dir` (atomically, never
/// through a planted link: [`crate::output::write_file_atomic`]); an empty list removes the
/// file. For a `.tar.gz`
/// bundle, add an entry [`FAILED_NODES_FILE`] holding [`FailedNode::list_to_json`].
pub fn write_failed_nodes(dir: &Path, failed: &[FailedNode]) -> std::io::Result<()> {
    let path = dir.join(FAILED_NODES_FILE);
    if failed.is_empty() {
        return match fs::remove_file(&path) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        };
    }
    crate::output::write_file_atomic(&path, FailedNode::list_to_json(failed).as_bytes())
}

/// The error about `schema_version` a snapshot text deserves, if any: missing, not an integer,
/// or another version than this build's; a syntax error is reported as such.
fn version_first(file: &str, text: &str) -> Result<(), LoadError> {
    /// Only the version; everything else is skipped unallocated.
    #[derive(Deserialize)]
    struct Probe {
        #[serde(default, deserialize_with = "present")]
        schema_version: Option<serde_json::Value>,
    }
    /// `Some` whenever the field is there, `null` included.
    fn present<'de, D: serde::Deserializer<'de>>(
        d: D,
    ) -> Result<Option<serde_json::Value>, D::Error> {
        serde_json::Value::deserialize(d).map(Some)
    }
    let probe: Probe = serde_json::from_str(text).map_err(|e| {
        if e.is_data() {
            LoadError::Json {
                file: file.to_string(),
                path: ".".into(),
                reason: bounded(&format!("{e} (a netray snapshot is a JSON object)")),
            }
        } else {
            LoadError::Json {
                file: file.to_string(),
                path: format!("line {} column {}", e.line(), e.column()),
                reason: bounded(&e.to_string()),
            }
        }
    })?;
    let Some(v) = probe.schema_version else {
        return Err(LoadError::Json {
            file: file.to_string(),
            path: ".schema_version".into(),
            reason: "missing field `schema_version` (is this a netray snapshot?)".into(),
        });
    };
    match v.as_u64() {
        Some(n) if n == u64::from(SCHEMA_VERSION) => Ok(()),
        Some(n) => Err(LoadError::Version {
            file: file.to_string(),
            found: n,
        }),
        None => Err(LoadError::Json {
            file: file.to_string(),
            path: ".schema_version".into(),
            reason: format!("expected an integer, found {}", clip_quote(&v.to_string())),
        }),
    }
}

fn json_err(file: &str, e: serde_path_to_error::Error<serde_json::Error>) -> LoadError {
    let inner = e.inner();
    if inner.is_syntax() || inner.is_eof() {
        return LoadError::Json {
            file: file.to_string(),
            path: format!("line {} column {}", inner.line(), inner.column()),
            reason: bounded(&inner.to_string()),
        };
    }
    LoadError::Json {
        file: file.to_string(),
        path: bounded(&json_path(e.path())),
        reason: bounded(&inner.to_string()),
    }
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
    /// Parse and validate a snapshot from JSON text; `file` names it in errors. The text is
    /// deserialized straight into the snapshot's types (no intermediate JSON tree), in one
    /// pass when it is good; when it is not, a second pass reads only `schema_version` so
    /// that a snapshot of another format version gets that message rather than a shape error.
    pub fn from_json(file: &str, text: &str) -> Result<NodeSnapshot, LoadError> {
        let syntax = |e: serde_json::Error| LoadError::Json {
            file: file.to_string(),
            path: format!("line {} column {}", e.line(), e.column()),
            reason: bounded(&e.to_string()),
        };
        // serde would also read a struct from an array: a snapshot is an object.
        if let Some(c) = text.trim_start().chars().next()
            && c != '{'
        {
            return Err(LoadError::Json {
                file: file.to_string(),
                path: ".".into(),
                reason: format!(
                    "found `{}` where a JSON object was expected (a netray snapshot is a JSON object)",
                    clip_quote(&c.to_string())
                ),
            });
        }
        let mut de = serde_json::Deserializer::from_str(text);
        let typed = serde_path_to_error::deserialize::<_, NodeSnapshot>(&mut de);
        let snap = match typed {
            Ok(snap) => {
                de.end().map_err(syntax)?;
                if snap.schema_version != SCHEMA_VERSION {
                    return Err(LoadError::Version {
                        file: file.to_string(),
                        found: u64::from(snap.schema_version),
                    });
                }
                snap
            }
            Err(e) => {
                version_first(file, text)?;
                return Err(json_err(file, e));
            }
        };
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
        self.validate_names(file)?;
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
                        format!(
                            "interface `{}` is not a link of this namespace",
                            clip_quote(dev)
                        ),
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
                            clip_quote(&l.name)
                        ),
                    ));
                }
                if let Some(m) = &l.master
                    && !names.contains(m.as_str())
                {
                    return Err(invalid(
                        format!(".namespaces[{i}].links[{j}].master"),
                        format!("master `{}` is not a link of this namespace", clip_quote(m)),
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

impl NodeSnapshot {
    /// Check names against the limits in [`crate::limits`], so that a huge or hostile name
    /// (control characters, `/`) is refused at load instead of being copied into every label.
    fn validate_names(&self, file: &str) -> Result<(), LoadError> {
        let invalid = |path: String, reason: String| LoadError::Invalid {
            file: file.to_string(),
            path,
            reason,
        };
        let id = &self.node;
        check_name(&id.name, limits::MAX_NODE_NAME_BYTES, NameRule::Path)
            .map_err(|r| invalid(".node.name".into(), format!("node name {r}")))?;
        for (field, value) in [
            ("hostname", &id.hostname),
            ("kernel", &id.kernel),
            ("boot_id", &id.boot_id),
            ("collected_at", &id.collected_at),
            ("collector", &id.collector),
        ] {
            check_name(value, limits::MAX_IDENTITY_FIELD_BYTES, NameRule::Text)
                .map_err(|r| invalid(format!(".node.{field}"), format!("{field} {r}")))?;
        }
        let netns_name = |path: String, n: &Option<String>| match n {
            Some(n) => check_name(n, limits::MAX_NETNS_NAME_BYTES, NameRule::Path)
                .map_err(|r| invalid(path, format!("namespace name {r}"))),
            None => Ok(()),
        };
        for (i, r) in self.referenced_netns.iter().enumerate() {
            netns_name(format!(".referenced_netns[{i}].name"), &r.name)?;
        }
        for (i, ns) in self.namespaces.iter().enumerate() {
            netns_name(format!(".namespaces[{i}].id.name"), &ns.id.name)?;
            let ifname = |path: String, n: &str| {
                check_name(n, limits::MAX_IFNAME_BYTES, NameRule::Interface)
                    .map_err(|r| invalid(path, format!("interface name {r}")))
            };
            let opt_ifname = |path: String, n: &Option<String>| match n {
                Some(n) => ifname(path, n),
                None => Ok(()),
            };
            for (j, l) in ns.links.iter().enumerate() {
                ifname(format!(".namespaces[{i}].links[{j}].name"), &l.name)?;
                opt_ifname(format!(".namespaces[{i}].links[{j}].master"), &l.master)?;
                let at = |f: &str| format!(".namespaces[{i}].links[{j}].kind.{f}");
                match &l.kind {
                    LinkKind::Vxlan { dev, .. } => opt_ifname(at("dev"), dev)?,
                    LinkKind::Vlan { parent, .. }
                    | LinkKind::Macvlan { parent, .. }
                    | LinkKind::Ipvlan { parent } => opt_ifname(at("parent"), parent)?,
                    _ => {}
                }
            }
            for (j, a) in ns.addresses.iter().enumerate() {
                ifname(format!(".namespaces[{i}].addresses[{j}].dev"), &a.dev)?;
            }
            for (j, r) in ns.routes.iter().enumerate() {
                opt_ifname(format!(".namespaces[{i}].routes[{j}].dev"), &r.dev)?;
                for (k, h) in r.multipath.iter().enumerate() {
                    opt_ifname(
                        format!(".namespaces[{i}].routes[{j}].multipath[{k}].dev"),
                        &h.dev,
                    )?;
                }
            }
            for (j, r) in ns.rules.iter().enumerate() {
                opt_ifname(format!(".namespaces[{i}].rules[{j}].iif"), &r.iif)?;
                opt_ifname(format!(".namespaces[{i}].rules[{j}].oif"), &r.oif)?;
            }
            for (j, n) in ns.neighbours.iter().enumerate() {
                ifname(format!(".namespaces[{i}].neighbours[{j}].dev"), &n.dev)?;
            }
            for (j, f) in ns.fdb.iter().enumerate() {
                ifname(format!(".namespaces[{i}].fdb[{j}].dev"), &f.dev)?;
                opt_ifname(format!(".namespaces[{i}].fdb[{j}].master"), &f.master)?;
            }
            for (j, s) in ns.sockets.iter().enumerate() {
                opt_ifname(format!(".namespaces[{i}].sockets[{j}].dev"), &s.dev)?;
            }
        }
        Ok(())
    }
}

/// What characters a name may hold.
#[derive(Clone, Copy, PartialEq, Eq)]
enum NameRule {
    /// Free text without control characters.
    Text,
    /// Also used in paths and endpoint syntax: no `/`, not `.` or `..`, not empty.
    Path,
    /// A Linux interface name (`dev_valid_name`): also no `:` and no white space.
    Interface,
}

/// Why `name` breaks `rule` or is longer than `max` bytes, as "is …" text (quoting at most
/// [`crate::text::MAX_QUOTE_CHARS`] of it).
fn check_name(name: &str, max: usize, rule: NameRule) -> Result<(), String> {
    if name.len() > max {
        return Err(format!(
            "is {} bytes long, more than the limit of {max} (`{}`)",
            name.len(),
            clip_quote(name)
        ));
    }
    if let Some(c) = name.chars().find(|&c| crate::text::is_unsafe_control(c)) {
        return Err(format!(
            "`{}` holds the control character {:?}",
            clip_quote(name),
            c
        ));
    }
    if rule == NameRule::Text {
        return Ok(());
    }
    if name.is_empty() || name == "." || name == ".." || name.contains('/') {
        return Err(format!(
            "`{}` is not a valid name (empty, `.`, `..`, or holds `/`)",
            clip_quote(name)
        ));
    }
    if rule == NameRule::Interface && name.chars().any(|c| c == ':' || c.is_whitespace()) {
        return Err(format!(
            "`{}` is not a valid interface name (holds `:` or white space)",
            clip_quote(name)
        ));
    }
    Ok(())
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
    /// Load a bundle from a directory or a `.tar.gz` / `.tgz` file, with the default
    /// [`Limits`] as the environment adjusts them ([`Limits::from_env`]). Only `cluster.json`
    /// and `nodes/*.json` are read, and only when they are regular files (or, in a directory,
    /// symbolic links to them) within the limits.
    pub fn load(path: &Path) -> Result<Bundle, LoadError> {
        let limits = Limits::from_env().map_err(|e| bundle_err(path.display(), e))?;
        Self::load_with(path, &limits)
    }

    /// [`Bundle::load`] with explicit limits. A path that is a single snapshot file (JSON, as
    /// `netray collect -o FILE` writes it) loads as a one-node bundle without a cluster view.
    pub fn load_with(path: &Path, limits: &Limits) -> Result<Bundle, LoadError> {
        let items = if path.is_dir() {
            read_dir_files(path, limits)?
        } else if is_json_file(path)? {
            return Self::load_snapshot_file(path, limits);
        } else {
            read_tar_gz(path, limits)?
        };
        Self::from_items(path, items)
    }

    /// One snapshot file as a one-node bundle.
    fn load_snapshot_file(path: &Path, limits: &Limits) -> Result<Bundle, LoadError> {
        let mut budget = Budget { limits, used: 0 };
        let data = read_regular(path, &mut budget)?;
        let shown = path.display().to_string();
        let text = std::str::from_utf8(&data).map_err(|e| LoadError::Json {
            file: shown.clone(),
            path: ".".into(),
            reason: format!("not UTF-8: {e}"),
        })?;
        let snap = NodeSnapshot::from_json(&shown, text).map_err(|e| {
            #[derive(Deserialize)]
            struct Kind {
                kind: Option<String>,
            }
            match serde_json::from_str::<Kind>(text) {
                Ok(Kind { kind: Some(k) }) => bundle_err(
                    &shown,
                    format!(
                        "is a Kubernetes `{}` (a cluster view?), not a netray snapshot or bundle: \
                         put it in a bundle directory as cluster.json next to nodes/*.json \
                         (`netray bundle add DIR NODE.json…` builds one)",
                        clip_quote(&k)
                    ),
                ),
                _ => e,
            }
        })?;
        Ok(Bundle {
            source: path.to_path_buf(),
            cluster: None,
            nodes: vec![snap],
            failed: Vec::new(),
        })
    }

    /// Build a bundle from parsed `(relative path, item)` pairs.
    fn from_items(source: &Path, items: Vec<(String, Item)>) -> Result<Bundle, LoadError> {
        let shown = |rel: &str| format!("{}/{}", source.display(), rel);
        let mut cluster = None;
        let mut nodes = Vec::new();
        let mut failed = Vec::new();
        for (_, item) in items {
            match item {
                Item::Cluster(v) => cluster = Some(v),
                Item::Node(n) => nodes.push(*n),
                Item::Failed(f) => failed = f,
            }
        }
        if nodes.is_empty() {
            let why = if failed.is_empty() {
                String::new()
            } else {
                format!(
                    "; {FAILED_NODES_FILE} lists {} whose collection failed ({})",
                    crate::text::count(failed.len(), "node", "nodes"),
                    failed
                        .iter()
                        .take(3)
                        .map(|f: &FailedNode| format!("{}: {}", f.node, f.reason))
                        .collect::<Vec<_>>()
                        .join("; ")
                )
            };
            return Err(LoadError::Bundle {
                file: source.display().to_string(),
                reason: format!("no node snapshots (expected nodes/*.json){why}"),
            });
        }
        nodes.sort_by(|a, b| a.node.name.cmp(&b.node.name));
        let mut names = BTreeSet::new();
        for n in &nodes {
            if !names.insert(n.node.name.as_str()) {
                return Err(LoadError::Bundle {
                    file: source.display().to_string(),
                    reason: format!("two snapshots for node `{}`", n.node.name),
                });
            }
        }
        if let Some(f) = failed.iter().find(|f| names.contains(f.node.as_str())) {
            return Err(LoadError::Invalid {
                file: shown(FAILED_NODES_FILE),
                path: ".".into(),
                reason: format!(
                    "node `{}` is listed as failed but the bundle has its snapshot",
                    f.node
                ),
            });
        }
        Ok(Bundle {
            source: source.to_path_buf(),
            cluster,
            nodes,
            failed,
        })
    }

    /// The failed-collection entry of node `name`, when the bundle lists it as missing.
    pub fn failed_node(&self, name: &str) -> Option<&FailedNode> {
        self.failed.iter().find(|f| f.node == name)
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
        write_failed_nodes(dir, &self.failed)
    }
}

/// A parsed bundle file.
enum Item {
    /// `cluster.json`.
    Cluster(serde_json::Value),
    /// `nodes/NAME.json`.
    Node(Box<NodeSnapshot>),
    /// `failed-nodes.json`.
    Failed(Vec<FailedNode>),
}

/// Parse bundle file `rel` (shown as `shown` in errors) right after it was read, so that
/// its bytes are freed before the next file is read.
fn parse_item(shown: &str, rel: &str, data: &[u8]) -> Result<Item, LoadError> {
    let text = std::str::from_utf8(data).map_err(|e| LoadError::Json {
        file: shown.to_string(),
        path: ".".into(),
        reason: format!("not UTF-8: {e}"),
    })?;
    if rel == "cluster.json" {
        let v: serde_json::Value = serde_json::from_str(text).map_err(|e| LoadError::Json {
            file: shown.to_string(),
            path: format!("line {} column {}", e.line(), e.column()),
            reason: bounded(&e.to_string()),
        })?;
        Ok(Item::Cluster(v))
    } else if rel == FAILED_NODES_FILE {
        Ok(Item::Failed(FailedNode::list_from_json(shown, text)?))
    } else {
        Ok(Item::Node(Box::new(NodeSnapshot::from_json(shown, text)?)))
    }
}

/// A parsed bundle file, by the index of its [`Job`].
type Parsed = (usize, Result<Item, LoadError>);

/// A bundle file read and waiting to be parsed.
struct Job {
    /// Position in the caller's order.
    index: usize,
    /// The file as errors name it.
    shown: String,
    /// Its path relative to the bundle root.
    rel: String,
    /// Its contents.
    data: Vec<u8>,
}

/// Run `read`, which reads bundle files in order and hands each to `submit`, while worker
/// threads (one per core, at most 8) parse what was handed over: the JSON of several node
/// files is parsed at once, and at most two files per worker wait in memory. Returns what
/// `read` returned and every parsed file by index, sorted.
fn parse_in_parallel(
    read: impl FnOnce(&mut dyn FnMut(Job)) -> Result<(), LoadError>,
) -> (Result<(), LoadError>, Vec<Parsed>) {
    let workers = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
        .clamp(1, 8);
    let parse = |j: Job| (j.index, parse_item(&j.shown, &j.rel, &j.data));
    if workers == 1 {
        let mut out = Vec::new();
        let r = read(&mut |j| out.push(parse(j)));
        return (r, out);
    }
    let results = std::sync::Mutex::new(Vec::new());
    let (tx, rx) = std::sync::mpsc::sync_channel::<Job>(workers);
    let rx = std::sync::Mutex::new(rx);
    let r = std::thread::scope(|s| {
        for _ in 0..workers {
            s.spawn(|| {
                loop {
                    // The lock is held only to take the next job.
                    let job = match rx.lock() {
                        Ok(rx) => rx.recv(),
                        Err(_) => return,
                    };
                    let Ok(job) = job else { return };
                    let done = parse(job);
                    if let Ok(mut v) = results.lock() {
                        v.push(done);
                    }
                }
            });
        }
        let r = {
            let mut submit = |j: Job| {
                // A worker can only be gone if it panicked; the scope then re-raises that.
                let _ = tx.send(j);
            };
            read(&mut submit)
        };
        drop(tx);
        r
    });
    let mut out = results
        .into_inner()
        .unwrap_or_else(std::sync::PoisonError::into_inner);
    out.sort_by_key(|(i, _)| *i);
    (r, out)
}

/// Is `path` a single JSON file rather than an archive? Decided by its first bytes: not the
/// gzip magic, and `{` first after white space.
fn is_json_file(path: &Path) -> Result<bool, LoadError> {
    let (file, _) = open_regular(path)?;
    let mut head = Vec::with_capacity(64);
    file.take(64).read_to_end(&mut head).map_err(io_err(path))?;
    if head.starts_with(&[0x1f, 0x8b]) {
        return Ok(false);
    }
    Ok(head
        .iter()
        .find(|b| !b.is_ascii_whitespace())
        .is_some_and(|&b| b == b'{'))
}

fn io_err(file: &Path) -> impl FnOnce(std::io::Error) -> LoadError + '_ {
    move |source| LoadError::Io {
        file: file.display().to_string(),
        source,
    }
}

/// What a file that is not a regular file is, for messages.
fn kind_of(ft: fs::FileType) -> &'static str {
    if ft.is_fifo() {
        "a FIFO"
    } else if ft.is_char_device() {
        "a character device"
    } else if ft.is_block_device() {
        "a block device"
    } else if ft.is_socket() {
        "a socket"
    } else if ft.is_dir() {
        "a directory"
    } else if ft.is_symlink() {
        "a symbolic link"
    } else {
        "not a regular file"
    }
}

fn bundle_err(file: impl std::fmt::Display, reason: String) -> LoadError {
    LoadError::Bundle {
        file: file.to_string(),
        reason,
    }
}

/// Bytes read so far from one bundle, against [`Limits::bundle_bytes`].
struct Budget<'a> {
    limits: &'a Limits,
    used: u64,
}

impl Budget<'_> {
    /// Refuse `size` bytes of `file` when over the per-file or total limit; otherwise the most
    /// that may still be read from it.
    fn admit(&self, file: &dyn std::fmt::Display, size: u64) -> Result<u64, LoadError> {
        let per_file = self.limits.file_bytes;
        if size > per_file {
            return Err(bundle_err(
                file,
                format!(
                    "{size} bytes, more than the limit of {per_file} bytes per file (MAX_FILE_BYTES)"
                ),
            ));
        }
        let left = self.limits.bundle_bytes.saturating_sub(self.used);
        if size > left {
            return Err(bundle_err(
                file,
                format!(
                    "the bundle's files add up to more than the limit of {} bytes (MAX_BUNDLE_BYTES; for a trusted bundle, raise it with NETRAY_MAX_BUNDLE_BYTES=SIZE)",
                    self.limits.bundle_bytes
                ),
            ));
        }
        Ok(per_file.min(left))
    }

    /// Read at most what [`Budget::admit`] allows from `r`; more is an error.
    fn read(
        &mut self,
        file: &dyn std::fmt::Display,
        announced: u64,
        r: impl Read,
    ) -> Result<Vec<u8>, LoadError> {
        let max = self.admit(file, announced)?;
        let mut data = Vec::with_capacity(announced.min(max) as usize);
        r.take(max + 1)
            .read_to_end(&mut data)
            .map_err(|e| bundle_err(file, format!("cannot read: {e}")))?;
        self.admit(file, data.len() as u64)?;
        self.used += data.len() as u64;
        Ok(data)
    }
}

/// Open `path` for reading only if it is a regular file (a symbolic link to one is fine):
/// checked before opening, and again on the opened descriptor, which is opened with
/// `O_NONBLOCK` so that a FIFO swapped in between cannot block.
fn open_regular(path: &Path) -> Result<(fs::File, u64), LoadError> {
    let meta = fs::metadata(path).map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(bundle_err(
            path.display(),
            format!("is {}, not a regular file", kind_of(meta.file_type())),
        ));
    }
    let file = fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NONBLOCK | libc::O_NOCTTY)
        .open(path)
        .map_err(io_err(path))?;
    let meta = file.metadata().map_err(io_err(path))?;
    if !meta.is_file() {
        return Err(bundle_err(
            path.display(),
            format!("is {}, not a regular file", kind_of(meta.file_type())),
        ));
    }
    Ok((file, meta.len()))
}

fn read_regular(path: &Path, budget: &mut Budget<'_>) -> Result<Vec<u8>, LoadError> {
    let (file, len) = open_regular(path)?;
    budget.read(&path.display(), len, file)
}

fn read_dir_files(dir: &Path, limits: &Limits) -> Result<Vec<(String, Item)>, LoadError> {
    let mut budget = Budget { limits, used: 0 };
    let mut files = Vec::new();
    for rel in ["cluster.json", FAILED_NODES_FILE] {
        let p = dir.join(rel);
        match fs::symlink_metadata(&p) {
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
            Err(e) => return Err(io_err(&p)(e)),
            Ok(_) => {
                let data = read_regular(&p, &mut budget)?;
                files.push((
                    rel.to_string(),
                    parse_item(&p.display().to_string(), rel, &data)?,
                ));
            }
        }
    }
    let nodes_dir = dir.join("nodes");
    let entries = fs::read_dir(&nodes_dir).map_err(io_err(&nodes_dir))?;
    let mut names = Vec::new();
    for e in entries {
        let e = e.map_err(io_err(&nodes_dir))?;
        let name = e.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.ends_with(".json") {
            names.push(name.to_string());
            if names.len() > limits.node_files {
                return Err(bundle_err(
                    nodes_dir.display(),
                    format!(
                        "more than {} node snapshots (MAX_NODE_FILES; for a trusted bundle, raise it with NETRAY_MAX_NODE_FILES=N)",
                        limits.node_files
                    ),
                ));
            }
        }
    }
    names.sort();
    let (read, parsed) = parse_in_parallel(|submit| {
        for (i, name) in names.iter().enumerate() {
            let p = nodes_dir.join(name);
            let rel = format!("nodes/{name}");
            let data = read_regular(&p, &mut budget)?;
            submit(Job {
                index: i,
                shown: format!("{}/{rel}", dir.display()),
                rel,
                data,
            });
        }
        Ok(())
    });
    // The first fault in name order: a parse error of an earlier file comes before a read
    // error of a later one (every file before a read error was read and parsed).
    let mut parsed = parsed.into_iter().peekable();
    for (i, name) in names.iter().enumerate() {
        match parsed.next_if(|(j, _)| *j == i) {
            Some((_, item)) => files.push((format!("nodes/{name}"), item?)),
            None => break,
        }
    }
    read?;
    Ok(files)
}

/// A reader that fails once more than `limit` bytes went through it.
struct Bounded<R> {
    inner: R,
    count: u64,
    limit: u64,
}

impl<R: Read> Read for Bounded<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        self.count += n as u64;
        if self.count > self.limit {
            return Err(std::io::Error::other(format!(
                "more than {} bytes once decompressed (MAX_ARCHIVE_STREAM_BYTES; for a trusted bundle, raise it with NETRAY_MAX_ARCHIVE_STREAM_BYTES=SIZE)",
                self.limit
            )));
        }
        Ok(n)
    }
}

/// The bundle files found under one candidate root of an archive (`""` or `"top/"`).
#[derive(Default)]
struct Root {
    /// Relative path → (entry name as stored, entry number, number of its parse job).
    files: BTreeMap<String, (String, u64, usize)>,
    /// Why these files cannot be used (a duplicate, a non-regular entry).
    problems: Vec<String>,
}

impl Root {
    fn has_nodes(&self) -> bool {
        self.files.keys().any(|k| k.starts_with("nodes/"))
    }
}

/// Where an archive entry belongs: `(root, path relative to it)` when it is `cluster.json` or
/// `nodes/NAME.json`, at the top or under one top-level directory; `None` for anything else.
fn classify(name: &str) -> Option<(String, String)> {
    let comps: Vec<&str> = name.split('/').collect();
    if comps
        .iter()
        .any(|c| c.is_empty() || *c == "." || *c == "..")
    {
        return None;
    }
    let node = |f: &str| f.ends_with(".json") && f.len() > ".json".len();
    match comps.as_slice() {
        ["cluster.json"] => Some((String::new(), "cluster.json".into())),
        [FAILED_NODES_FILE] => Some((String::new(), FAILED_NODES_FILE.into())),
        ["nodes", f] if node(f) => Some((String::new(), format!("nodes/{f}"))),
        [top, "cluster.json"] => Some((format!("{top}/"), "cluster.json".into())),
        [top, FAILED_NODES_FILE] => Some((format!("{top}/"), FAILED_NODES_FILE.into())),
        [top, "nodes", f] if node(f) => Some((format!("{top}/"), format!("nodes/{f}"))),
        _ => None,
    }
}

/// The value of `key` in a pax extended header (`LEN KEY=VALUE\n` records).
fn pax_value<'a>(data: &'a [u8], key: &str) -> Option<&'a [u8]> {
    let mut rest = data;
    while !rest.is_empty() {
        let sp = rest.iter().position(|&b| b == b' ')?;
        let len: usize = std::str::from_utf8(&rest[..sp]).ok()?.parse().ok()?;
        if len <= sp || len > rest.len() {
            return None;
        }
        let record = &rest[sp + 1..len];
        let record = record.strip_suffix(b"\n").unwrap_or(record);
        if let Some(eq) = record.iter().position(|&b| b == b'=')
            && &record[..eq] == key.as_bytes()
        {
            return Some(&record[eq + 1..]);
        }
        rest = &rest[len..];
    }
    None
}

/// Read a `.tar.gz` bundle as a stream (see [`Bundle::load`]): entries other than
/// `cluster.json` and `nodes/*.json` (at the top or under one top-level directory) are skipped
/// unread; those are refused unless they are regular files, checked against the limits by
/// their header before they are read, and must not appear twice.
fn read_tar_gz(path: &Path, limits: &Limits) -> Result<Vec<(String, Item)>, LoadError> {
    let (file, _) = open_regular(path)?;
    let shown = path.display().to_string();
    let bad = |e: std::io::Error| {
        bundle_err(
            &shown,
            format!(
                "not a readable .tar.gz bundle: {}",
                clip_quote(&e.to_string())
            ),
        )
    };
    let stream = Bounded {
        inner: flate2::read::GzDecoder::new(file),
        count: 0,
        limit: limits.archive_stream_bytes,
    };
    let mut archive = tar::Archive::new(stream);
    // Raw: GNU long names and pax headers are read here, within a limit.
    let entries = archive.entries().map_err(bad)?.raw(true);
    let mut budget = Budget { limits, used: 0 };
    let mut roots: BTreeMap<String, Root> = BTreeMap::new();
    let mut node_files = 0usize;
    let mut long_name: Option<Vec<u8>> = None;
    let mut pax: Option<Vec<u8>> = None;
    let mut jobs = 0usize;
    let (read, parsed) = parse_in_parallel(|submit| {
        for (index, entry) in entries.enumerate() {
            let index = index as u64 + 1;
            if index > limits.archive_entries {
                return Err(bundle_err(
                    &shown,
                    format!(
                        "more than {} archive entries (MAX_ARCHIVE_ENTRIES)",
                        limits.archive_entries
                    ),
                ));
            }
            let mut entry = entry.map_err(bad)?;
            let kind = entry.header().entry_type();
            let size = entry.header().entry_size().map_err(bad)?;
            let small = |what: &str| {
                if size > limits.archive_header_bytes {
                    Err(bundle_err(
                        &shown,
                        format!(
                            "entry {index}: {what} of {size} bytes, more than the limit of {} bytes (MAX_ARCHIVE_HEADER_BYTES)",
                            limits.archive_header_bytes
                        ),
                    ))
                } else {
                    Ok(())
                }
            };
            if kind.is_gnu_longname() || kind.is_pax_local_extensions() {
                small(if kind.is_gnu_longname() {
                    "a GNU long name"
                } else {
                    "a pax header"
                })?;
                let mut data = Vec::new();
                (&mut entry)
                    .take(size)
                    .read_to_end(&mut data)
                    .map_err(bad)?;
                if kind.is_gnu_longname() {
                    while data.last() == Some(&0) {
                        data.pop();
                    }
                    long_name = Some(data);
                } else {
                    if pax_value(&data, "size").is_some() {
                        return Err(bundle_err(
                            &shown,
                            format!(
                                "entry {index}: a pax `size` record (files over 8 GiB), which netray does not read"
                            ),
                        ));
                    }
                    pax = Some(data);
                }
                continue;
            }
            if kind.is_gnu_longlink() || kind.is_pax_global_extensions() {
                // Not needed; skipped unread.
                continue;
            }
            let pax_path = pax
                .take()
                .and_then(|p| pax_value(&p, "path").map(<[u8]>::to_vec));
            let raw = pax_path
                .or(long_name.take())
                .unwrap_or_else(|| entry.path_bytes().into_owned());
            let Ok(name) = String::from_utf8(raw) else {
                continue;
            };
            let mut norm = name.as_str();
            while let Some(s) = norm.strip_prefix("./") {
                norm = s;
            }
            let norm = norm.trim_end_matches('/');
            let Some((root, rel)) = classify(norm) else {
                continue;
            };
            let quoted = clip_quote(&name);
            let r = roots.entry(root.clone()).or_default();
            let regular = kind.is_file() || kind.is_contiguous();
            if !regular {
                let what = if kind.is_symlink() {
                    "a symbolic link".to_string()
                } else if kind.is_hard_link() {
                    "a hard link".to_string()
                } else if kind.is_dir() {
                    "a directory".to_string()
                } else {
                    format!("of type {:?}", kind)
                };
                r.problems.push(format!(
                    "entry {index} `{quoted}` is {what}, not a regular file (bundle files must be regular files)"
                ));
                continue;
            }
            if let Some((first, at, _)) = r.files.get(&rel) {
                r.problems.push(format!(
                    "`{}` (entry {at}) and `{quoted}` (entry {index}) are both {root}{rel}: a bundle holds each file once",
                    clip_quote(first)
                ));
                continue;
            }
            if rel.starts_with("nodes/") {
                node_files += 1;
                if node_files > limits.node_files {
                    return Err(bundle_err(
                        &shown,
                        format!(
                            "more than {} node snapshots (MAX_NODE_FILES; for a trusted bundle, raise it with NETRAY_MAX_NODE_FILES=N)",
                            limits.node_files
                        ),
                    ));
                }
            }
            let data = budget.read(&format!("{shown}/{quoted}"), size, &mut entry)?;
            // Parsed by a worker while the next entries are read; an error counts only if this
            // root is chosen.
            submit(Job {
                index: jobs,
                shown: format!("{shown}/{rel}"),
                rel: rel.clone(),
                data,
            });
            r.files.insert(rel, (name, index, jobs));
            jobs += 1;
        }
        Ok(())
    });
    read?;
    let mut parsed: Vec<Option<Result<Item, LoadError>>> =
        parsed.into_iter().map(|(_, item)| Some(item)).collect();
    // The bundle's root: the top when it has node snapshots (or nothing else does), else the
    // one top-level directory that has them.
    let top_has_nodes = roots.get("").is_some_and(Root::has_nodes);
    let chosen = if top_has_nodes {
        String::new()
    } else {
        let with_nodes: Vec<&String> = roots
            .iter()
            .filter(|(_, r)| r.has_nodes())
            .map(|(k, _)| k)
            .collect();
        match with_nodes.as_slice() {
            [] => String::new(),
            [one] => (*one).clone(),
            many => {
                return Err(bundle_err(
                    &shown,
                    format!(
                        "several bundles in one archive ({}): pack one",
                        many.iter()
                            .take(5)
                            .map(|k| format!("`{}`", clip_quote(k)))
                            .collect::<Vec<_>>()
                            .join(", ")
                    ),
                ));
            }
        }
    };
    let root = roots.remove(&chosen).unwrap_or_default();
    if let Some(p) = root.problems.first() {
        return Err(bundle_err(&shown, p.clone()));
    }
    root.files
        .into_iter()
        .map(|(rel, (_, _, job))| {
            let item = parsed
                .get_mut(job)
                .and_then(Option::take)
                .ok_or_else(|| bundle_err(&shown, format!("internal: `{rel}` was not parsed")))?;
            item.map(|i| (rel, i))
        })
        .collect()
}
