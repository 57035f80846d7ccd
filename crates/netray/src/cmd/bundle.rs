//! `netray bundle add`: assemble or extend a bundle directory from snapshots collected by hand
//! (`netray collect -o FILE` over ssh, `kubectl debug node`, …).

use std::collections::BTreeMap;
use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::ExitCode;

use netray_snapshot::{FailedNode, NodeSnapshot, limits::MAX_FILE_BYTES};

use super::CmdResult;

/// `netray bundle …`.
#[derive(clap::Subcommand)]
pub enum BundleCommand {
    /// Add node snapshots (and a cluster view) to a bundle directory, creating it if needed.
    /// Every file is validated first; nothing is written unless all of them are good.
    #[command(
        after_help = "Examples:\n  ssh node-a sudo netray collect --node node-a -o - > node-a.json\n  netray bundle add bundle node-a.json node-b.json --cluster cluster.json\n  netray bundle add bundle node-a.json --replace      # a newer snapshot of node-a\n\nA snapshot may be gzip-compressed (`collect --gzip`). Exit codes: 0 added, 2 a file was refused (nothing written)."
    )]
    Add(AddArgs),
}

/// Options of `netray bundle add`.
#[derive(clap::Args)]
pub struct AddArgs {
    /// The bundle directory (created with nodes/ when missing).
    #[arg(value_name = "DIR")]
    pub dir: PathBuf,
    /// Node snapshots (`netray collect` output, JSON or gzip-compressed JSON).
    #[arg(value_name = "NODE.json", required_unless_present = "cluster")]
    pub files: Vec<PathBuf>,
    /// Also install this cluster view (`netray cluster -o FILE`, or a `kubectl get … -o json`
    /// List) as DIR/cluster.json, replacing the bundle's.
    #[arg(long, value_name = "FILE")]
    pub cluster: Option<PathBuf>,
    /// Replace a node the bundle already has (by node name) instead of refusing.
    #[arg(long)]
    pub replace: bool,
}

/// Run `netray bundle …`.
pub fn run(c: BundleCommand) -> CmdResult {
    match c {
        BundleCommand::Add(a) => add(a),
    }
}

/// Read at most [`MAX_FILE_BYTES`] of `path` (a regular file), gunzipping when it starts with
/// the gzip magic.
fn read_input(path: &Path) -> Result<Vec<u8>, String> {
    let shown = path.display();
    let meta = std::fs::metadata(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    if !meta.is_file() {
        return Err(format!("{shown}: not a regular file"));
    }
    let file = std::fs::File::open(path).map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let mut raw = Vec::new();
    file.take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut raw)
        .map_err(|e| format!("{shown}: cannot read: {e}"))?;
    let too_big = || {
        format!("{shown}: more than the limit of {MAX_FILE_BYTES} bytes per file (MAX_FILE_BYTES)")
    };
    if raw.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big());
    }
    if !raw.starts_with(&[0x1f, 0x8b]) {
        return Ok(raw);
    }
    let mut out = Vec::new();
    flate2::read::MultiGzDecoder::new(raw.as_slice())
        .take(MAX_FILE_BYTES + 1)
        .read_to_end(&mut out)
        .map_err(|e| format!("{shown}: not readable gzip: {e}"))?;
    if out.len() as u64 > MAX_FILE_BYTES {
        return Err(too_big());
    }
    Ok(out)
}

/// A snapshot file, validated.
fn read_snapshot(path: &Path) -> Result<NodeSnapshot, String> {
    let data = read_input(path)?;
    let shown = path.display().to_string();
    let text = std::str::from_utf8(&data).map_err(|e| format!("{shown}: not UTF-8: {e}"))?;
    NodeSnapshot::from_json(&shown, text).map_err(|e| e.to_string())
}

/// The node names of the snapshots already in `dir/nodes` (read without building them), by
/// name → file.
fn existing_nodes(dir: &Path) -> Result<BTreeMap<String, PathBuf>, String> {
    #[derive(serde::Deserialize)]
    struct Probe {
        node: Ident,
    }
    #[derive(serde::Deserialize)]
    struct Ident {
        name: String,
    }
    let nodes = dir.join("nodes");
    let mut out = BTreeMap::new();
    let entries = match std::fs::read_dir(&nodes) {
        Ok(e) => e,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(out),
        Err(e) => return Err(format!("{}: cannot read: {e}", nodes.display())),
    };
    for e in entries {
        let e = e.map_err(|e| format!("{}: cannot read: {e}", nodes.display()))?;
        let p = e.path();
        if p.extension().is_none_or(|x| x != "json") {
            continue;
        }
        let data = read_input(&p)?;
        let probe: Probe = serde_json::from_slice(&data).map_err(|e| {
            format!(
                "{}: already in the bundle but not a readable snapshot: {e}",
                p.display()
            )
        })?;
        if let Some(first) = out.insert(probe.node.name.clone(), p.clone()) {
            return Err(format!(
                "{} and {} in the bundle are both node `{}`",
                first.display(),
                p.display(),
                probe.node.name
            ));
        }
    }
    Ok(out)
}

fn add(a: AddArgs) -> CmdResult {
    let dir = &a.dir;
    if dir.exists() && !dir.is_dir() {
        return Err(format!("{}: not a directory", dir.display()).into());
    }
    // Validate everything first.
    let cluster = match &a.cluster {
        Some(p) => {
            let data = read_input(p)?;
            let v: serde_json::Value = serde_json::from_slice(&data).map_err(|e| {
                format!(
                    "{}: at line {} column {}: {e}",
                    p.display(),
                    e.line(),
                    e.column()
                )
            })?;
            netray_kube::ClusterView::from_value(&p.display().to_string(), &v)?;
            Some(data)
        }
        None => None,
    };
    let existing = existing_nodes(dir)?;
    let mut new: BTreeMap<String, (PathBuf, NodeSnapshot)> = BTreeMap::new();
    for f in &a.files {
        let snap = read_snapshot(f)?;
        let name = snap.node.name.clone();
        if let Some((first, _)) = new.get(&name) {
            return Err(format!(
                "{} and {} are both node `{name}`: give one snapshot per node",
                first.display(),
                f.display()
            )
            .into());
        }
        if let Some(have) = existing.get(&name)
            && !a.replace
        {
            return Err(format!(
                "{}: node `{name}` is already in the bundle ({}); pass --replace to replace it",
                f.display(),
                have.display()
            )
            .into());
        }
        new.insert(name, (f.clone(), snap));
    }
    // Then write: each file atomically.
    std::fs::create_dir_all(dir.join("nodes"))
        .map_err(|e| format!("{}: cannot create: {e}", dir.join("nodes").display()))?;
    let write = |p: &Path, data: &[u8]| {
        netray_collect::output::write_file_atomic(p, data)
            .map_err(|e| format!("cannot write {}: {e}", p.display()))
    };
    if let Some(data) = &cluster {
        write(&dir.join("cluster.json"), data)?;
        eprintln!(
            "netray: cluster view installed as {}",
            dir.join("cluster.json").display()
        );
    }
    for (name, (from, snap)) in &new {
        let target = dir.join("nodes").join(format!("{name}.json"));
        let mut data = snap.to_json().into_bytes();
        data.push(b'\n');
        write(&target, &data)?;
        match existing.get(name) {
            Some(old) => {
                if *old != target {
                    // The old snapshot of this node lived under another file name.
                    std::fs::remove_file(old)
                        .map_err(|e| format!("cannot remove {}: {e}", old.display()))?;
                }
                eprintln!("netray: replaced node {name} (from {})", from.display());
            }
            None => eprintln!("netray: added node {name} (from {})", from.display()),
        }
    }
    // A node that now has a snapshot is no longer missing.
    let failed_path = dir.join(netray_snapshot::FAILED_NODES_FILE);
    if failed_path.exists() {
        let text = String::from_utf8(read_input(&failed_path)?)
            .map_err(|e| format!("{}: not UTF-8: {e}", failed_path.display()))?;
        let failed = FailedNode::list_from_json(&failed_path.display().to_string(), &text)?;
        let (now_here, still): (Vec<FailedNode>, Vec<FailedNode>) =
            failed.into_iter().partition(|f| new.contains_key(&f.node));
        if !now_here.is_empty() {
            netray_snapshot::write_failed_nodes(dir, &still)
                .map_err(|e| format!("cannot write {}: {e}", failed_path.display()))?;
            for f in now_here {
                eprintln!(
                    "netray: node {} is no longer listed as failed ({})",
                    f.node, f.reason
                );
            }
        }
    }
    let total = existing_nodes(dir)?.len();
    eprintln!(
        "netray: {} now holds {}",
        dir.display(),
        netray_snapshot::text::count(total, "node snapshot", "node snapshots")
    );
    Ok(ExitCode::SUCCESS)
}
