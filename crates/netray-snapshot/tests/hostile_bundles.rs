//! Hostile and careless bundles (issue 15, items 4, 5 and 11): each is refused with a clear
//! error naming the file and reason, or loads; none reads without bound or hangs. Large inputs
//! are generated here (most compress to almost nothing); limits are checked through small
//! [`Limits`] or headers that claim huge sizes, not through wall-clock asserts.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::mpsc;
use std::time::Duration;

use netray_snapshot::{Bundle, Limits, LoadError};
use serde_json::Value;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/healthy");

fn example(rel: &str) -> Vec<u8> {
    std::fs::read(Path::new(EXAMPLE).join(rel)).unwrap()
}

/// Load on another thread; a hang (over 60 s) fails the test instead of blocking it forever.
fn load(path: &Path, limits: Limits) -> Result<Bundle, LoadError> {
    let (tx, rx) = mpsc::channel();
    let p = path.to_path_buf();
    std::thread::spawn(move || {
        let _ = tx.send(Bundle::load_with(&p, &limits));
    });
    rx.recv_timeout(Duration::from_secs(60))
        .expect("Bundle::load hung (no answer within 60 s)")
}

fn load_err(path: &Path, limits: Limits) -> String {
    match load(path, limits) {
        Ok(_) => panic!("{} loaded, expected an error", path.display()),
        Err(e) => {
            let msg = e.to_string();
            assert!(msg.len() < 2000, "unbounded message: {} bytes", msg.len());
            msg
        }
    }
}

/// Entries of a test archive.
enum E<'a> {
    File(&'a str, Vec<u8>),
    Symlink(&'a str, &'a str),
    Dir(&'a str),
    /// A raw header claiming `size` bytes of type `kind`, with no data after it.
    Claim(&'a str, u8, u64),
    /// A regular file whose stored name is exactly this.
    Raw(&'a str, Vec<u8>),
}

fn targz(dir: &Path, name: &str, entries: Vec<E<'_>>) -> PathBuf {
    let path = dir.join(name);
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&path).unwrap(),
        flate2::Compression::fast(),
    );
    let mut b = tar::Builder::new(gz);
    for e in entries {
        match e {
            E::File(n, data) => {
                let mut h = tar::Header::new_gnu();
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                b.append_data(&mut h, n, data.as_slice()).unwrap();
            }
            E::Symlink(n, target) => {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Symlink);
                h.set_size(0);
                b.append_link(&mut h, n, target).unwrap();
            }
            E::Dir(n) => {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::Directory);
                h.set_size(0);
                h.set_mode(0o755);
                b.append_data(&mut h, n, std::io::empty()).unwrap();
            }
            E::Claim(n, kind, size) => {
                let mut h = tar::Header::new_gnu();
                h.set_entry_type(tar::EntryType::new(kind));
                h.as_gnu_mut().unwrap().name[..n.len()].copy_from_slice(n.as_bytes());
                h.set_size(size);
                h.set_cksum();
                b.get_mut().write_all(h.as_bytes()).unwrap();
            }
            E::Raw(n, data) => {
                // The name exactly as given (the builder would normalize `./x` to `x`).
                let mut h = tar::Header::new_gnu();
                h.as_gnu_mut().unwrap().name[..n.len()].copy_from_slice(n.as_bytes());
                h.set_size(data.len() as u64);
                h.set_mode(0o644);
                h.set_cksum();
                let w = b.get_mut();
                w.write_all(h.as_bytes()).unwrap();
                w.write_all(&data).unwrap();
                w.write_all(&vec![0u8; (512 - data.len() % 512) % 512])
                    .unwrap();
            }
        }
    }
    b.into_inner().unwrap().finish().unwrap();
    path
}

fn healthy_entries(prefix: &str) -> Vec<(String, Vec<u8>)> {
    let mut v = vec![(format!("{prefix}cluster.json"), example("cluster.json"))];
    for n in ["node0", "node1", "node2"] {
        v.push((
            format!("{prefix}nodes/{n}.json"),
            example(&format!("nodes/{n}.json")),
        ));
    }
    v
}

fn files<'a>(v: &'a [(String, Vec<u8>)]) -> Vec<E<'a>> {
    v.iter().map(|(n, d)| E::File(n, d.clone())).collect()
}

fn small() -> Limits {
    Limits {
        file_bytes: 200_000,
        bundle_bytes: 1_000_000,
        ..Limits::default()
    }
}

#[test]
fn unrelated_entries_are_skipped_unread_even_huge_or_not_utf8() {
    let tmp = tempfile::tempdir().unwrap();
    let h = healthy_entries("");
    let mut entries = files(&h);
    // 8 MB, more than the whole bundle may hold under `small()`: not read, so no error.
    entries.insert(0, E::File("junk/big.bin", vec![0u8; 8 << 20]));
    entries.push(E::File("README.txt", vec![0xff, 0xfe, 0x00, 0x9b]));
    entries.push(E::File("nodes/notes.txt", b"\xc3\x28".to_vec()));
    let p = targz(tmp.path(), "b.tar.gz", entries);
    let b = load(&p, small()).unwrap();
    assert_eq!(b.nodes.len(), 3);
    assert!(b.cluster.is_some());
}

#[test]
fn stray_cluster_json_in_a_sub_folder_does_not_move_the_root() {
    let tmp = tempfile::tempdir().unwrap();
    // A stray one listed first, at the top and deeper.
    let h = healthy_entries("bundle/");
    let mut entries = vec![
        E::File("docs/cluster.json", b"not json".to_vec()),
        E::File("bundle/old/cluster.json", b"{".to_vec()),
    ];
    entries.extend(files(&h));
    let p = targz(tmp.path(), "sub.tar.gz", entries);
    let b = load(&p, Limits::default()).unwrap();
    assert_eq!(b.nodes.len(), 3);
    assert!(b.cluster.is_some());

    let h = healthy_entries("");
    let mut entries = vec![E::File("extra/cluster.json", b"{".to_vec())];
    entries.extend(files(&h));
    let p = targz(tmp.path(), "top.tar.gz", entries);
    assert_eq!(load(&p, Limits::default()).unwrap().nodes.len(), 3);
}

#[test]
fn two_bundles_in_one_archive_is_an_error_naming_both() {
    let tmp = tempfile::tempdir().unwrap();
    let mut h = healthy_entries("a/");
    h.extend(healthy_entries("b/"));
    let p = targz(tmp.path(), "two.tar.gz", files(&h));
    let e = load_err(&p, Limits::default());
    assert!(
        e.contains("several bundles") && e.contains("`a/`") && e.contains("`b/`"),
        "{e}"
    );
}

#[test]
fn symlinked_cluster_json_in_an_archive_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let h = healthy_entries("");
    let mut entries = files(&h);
    entries.remove(0);
    entries.push(E::Symlink("cluster.json", "/etc/passwd"));
    let p = targz(tmp.path(), "link.tar.gz", entries);
    let e = load_err(&p, Limits::default());
    assert!(
        e.contains("link.tar.gz") && e.contains("`cluster.json`") && e.contains("symbolic link"),
        "{e}"
    );
    // A directory named like a node file, too.
    let mut entries = files(&h);
    entries.push(E::Dir("nodes/x.json/"));
    let p = targz(tmp.path(), "dir.tar.gz", entries);
    let e = load_err(&p, Limits::default());
    assert!(e.contains("nodes/x.json") && e.contains("directory"), "{e}");
}

#[test]
fn duplicate_cluster_json_or_node_file_is_an_error_naming_both() {
    let tmp = tempfile::tempdir().unwrap();
    let h = healthy_entries("");
    let mut entries = files(&h);
    entries.push(E::Raw("./cluster.json", b"{}".to_vec()));
    let p = targz(tmp.path(), "dup.tar.gz", entries);
    let e = load_err(&p, Limits::default());
    assert!(
        e.contains("`cluster.json`") && e.contains("`./cluster.json`"),
        "{e}"
    );
    let mut entries = files(&h);
    entries.push(E::File("nodes/node1.json", example("nodes/node1.json")));
    let p = targz(tmp.path(), "dupnode.tar.gz", entries);
    let e = load_err(&p, Limits::default());
    assert!(e.contains("nodes/node1.json") && e.contains("both"), "{e}");
}

#[test]
fn sizes_are_checked_from_the_header_before_reading() {
    let tmp = tempfile::tempdir().unwrap();
    // A header claiming 1 GiB for a node file, with no data behind it: refused by its header.
    let h = healthy_entries("");
    let mut entries = files(&h);
    entries.push(E::Claim("nodes/huge.json", b'0', 1 << 30));
    let p = targz(tmp.path(), "claim.tar.gz", entries);
    let e = load_err(&p, Limits::default());
    assert!(
        e.contains("nodes/huge.json")
            && e.contains("1073741824 bytes")
            && e.contains("MAX_FILE_BYTES"),
        "{e}"
    );
    // A 1 GiB GNU long name: refused by its header, not read into memory.
    let p = targz(
        tmp.path(),
        "longname.tar.gz",
        vec![E::Claim("././@LongLink", b'L', 1 << 30)],
    );
    let e = load_err(&p, Limits::default());
    assert!(
        e.contains("GNU long name") && e.contains("MAX_ARCHIVE_HEADER_BYTES"),
        "{e}"
    );
    // Real data over the per-file and total limits.
    let p = targz(tmp.path(), "real.tar.gz", files(&h));
    let e = load_err(
        &p,
        Limits {
            file_bytes: 50_000,
            ..Limits::default()
        },
    );
    assert!(e.contains("MAX_FILE_BYTES"), "{e}");
    let e = load_err(
        &p,
        Limits {
            bundle_bytes: 200_000,
            ..Limits::default()
        },
    );
    assert!(e.contains("MAX_BUNDLE_BYTES"), "{e}");
    let e = load_err(
        &p,
        Limits {
            node_files: 2,
            ..Limits::default()
        },
    );
    assert!(e.contains("MAX_NODE_FILES"), "{e}");
    let e = load_err(
        &p,
        Limits {
            archive_entries: 2,
            ..Limits::default()
        },
    );
    assert!(e.contains("MAX_ARCHIVE_ENTRIES"), "{e}");
}

#[test]
fn a_gzip_bomb_stops_at_the_stream_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let p = targz(
        tmp.path(),
        "bomb.tar.gz",
        vec![E::File("junk.bin", vec![0u8; 16 << 20])],
    );
    let e = load_err(
        &p,
        Limits {
            archive_stream_bytes: 1 << 20,
            ..Limits::default()
        },
    );
    assert!(e.contains("MAX_ARCHIVE_STREAM_BYTES"), "{e}");
}

/// A copy of the healthy example as a directory.
fn healthy_dir() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("nodes")).unwrap();
    for (rel, data) in healthy_entries("") {
        std::fs::write(tmp.path().join(rel), data).unwrap();
    }
    tmp
}

#[test]
fn a_fifo_in_a_directory_bundle_is_refused_without_hanging() {
    let tmp = healthy_dir();
    let fifo = tmp.path().join("nodes/x.json");
    let c = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: plain mkfifo on a path we own.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let e = load_err(tmp.path(), Limits::default());
    assert!(e.contains("nodes/x.json") && e.contains("FIFO"), "{e}");
    // And as cluster.json.
    std::fs::remove_file(&fifo).unwrap();
    let cl = tmp.path().join("cluster.json");
    std::fs::remove_file(&cl).unwrap();
    let c = std::ffi::CString::new(cl.to_str().unwrap()).unwrap();
    // SAFETY: as above.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
    let e = load_err(tmp.path(), Limits::default());
    assert!(e.contains("cluster.json") && e.contains("FIFO"), "{e}");
}

#[test]
fn a_symlink_to_dev_zero_is_refused_and_big_files_stop_at_the_limit() {
    let tmp = healthy_dir();
    std::os::unix::fs::symlink("/dev/zero", tmp.path().join("nodes/zero.json")).unwrap();
    let e = load_err(tmp.path(), Limits::default());
    assert!(
        e.contains("nodes/zero.json") && e.contains("character device"),
        "{e}"
    );
    std::fs::remove_file(tmp.path().join("nodes/zero.json")).unwrap();
    // A symlink to a regular file is fine.
    let node0 = tmp.path().join("node0-copy");
    std::fs::rename(tmp.path().join("nodes/node0.json"), &node0).unwrap();
    std::os::unix::fs::symlink(&node0, tmp.path().join("nodes/node0.json")).unwrap();
    assert_eq!(load(tmp.path(), Limits::default()).unwrap().nodes.len(), 3);
    // Over the per-file limit.
    std::fs::write(tmp.path().join("nodes/big.json"), vec![b' '; 300_000]).unwrap();
    let e = load_err(tmp.path(), small());
    assert!(
        e.contains("nodes/big.json") && e.contains("MAX_FILE_BYTES"),
        "{e}"
    );
}

fn with_node0(edit: impl FnOnce(&mut Value)) -> tempfile::TempDir {
    let tmp = healthy_dir();
    let mut v: Value = serde_json::from_slice(&example("nodes/node0.json")).unwrap();
    edit(&mut v);
    std::fs::write(tmp.path().join("nodes/node0.json"), v.to_string()).unwrap();
    tmp
}

#[test]
fn a_10_mb_node_name_is_refused_at_load_with_a_bounded_message() {
    let tmp = with_node0(|v| v["node"]["name"] = Value::from("n".repeat(10 << 20)));
    let e = load_err(tmp.path(), Limits::default());
    assert!(
        e.contains("nodes/node0.json")
            && e.contains(".node.name")
            && e.contains("10485760 bytes")
            && e.contains("253"),
        "{e}"
    );
}

/// An edit of node0's JSON.
type Edit = Box<dyn FnOnce(&mut Value)>;

#[test]
fn hostile_names_are_refused() {
    let cases: Vec<(Edit, &str)> = vec![
        (
            Box::new(|v: &mut Value| v["node"]["name"] = Value::from("evil\x1b]0;pwned\x07")),
            ".node.name",
        ),
        (
            Box::new(|v: &mut Value| v["node"]["name"] = Value::from("../../etc/x")),
            ".node.name",
        ),
        (
            Box::new(|v: &mut Value| {
                v["namespaces"][0]["links"][0]["name"] = Value::from("a".repeat(16))
            }),
            ".namespaces[0].links[0].name",
        ),
        (
            Box::new(|v: &mut Value| {
                v["namespaces"][0]["id"]["name"] = Value::from("x".repeat(300))
            }),
            ".namespaces[0].id.name",
        ),
        (
            Box::new(|v: &mut Value| v["node"]["hostname"] = Value::from("h\x1b[2J")),
            ".node.hostname",
        ),
    ];
    for (edit, path) in cases {
        let tmp = with_node0(edit);
        let e = load_err(tmp.path(), Limits::default());
        assert!(e.contains("nodes/node0.json") && e.contains(path), "{e}");
        assert!(!e.contains('\x1b'), "raw ESC in the message: {e:?}");
    }
}
