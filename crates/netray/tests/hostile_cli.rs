//! The CLI on hostile input and in hostile places (issue 15, items 5, 6, 10 and 11): no raw
//! control character from input reaches the terminal, a 10 MB garbage line is not echoed in
//! full, bundles with FIFOs or huge names are refused with exit 2, `collect -o` does not write
//! through a planted link, and `collect --netns` refuses a FIFO and a mount namespace.
//! Every run is killed (and fails) after a generous hang guard.

use std::path::Path;
use std::time::Duration;

mod common;

const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/healthy");
const HANG_GUARD: Duration = Duration::from_secs(120);

struct Run {
    code: Option<i32>,
    stdout: Vec<u8>,
    stderr: Vec<u8>,
}

impl Run {
    fn err(&self) -> String {
        String::from_utf8_lossy(&self.stderr).into_owned()
    }
}

fn netray(args: &[&str]) -> Run {
    let o = common::netray_bounded(args, HANG_GUARD);
    Run {
        code: o.status.code(),
        stdout: o.stdout,
        stderr: o.stderr,
    }
}

fn no_raw_controls(bytes: &[u8]) -> bool {
    !bytes
        .iter()
        .any(|&b| (b < 0x20 && b != b'\n' && b != b'\t') || b == 0x7f)
}

fn ruleset(dir: &Path, text: &str) -> String {
    let p = dir.join("rules.txt");
    std::fs::write(&p, text).unwrap();
    p.to_str().unwrap().to_string()
}

fn rules_trace(file: &str) -> Run {
    netray(&[
        "rules",
        "trace",
        "--iptables",
        file,
        "--local",
        "192.168.50.10",
        "--from",
        "10.244.1.5",
        "--to",
        "10.96.0.100:80/tcp",
    ])
}

#[test]
fn escape_sequences_in_rule_comments_never_reach_the_terminal_raw() {
    let tmp = tempfile::tempdir().unwrap();
    let f = ruleset(
        tmp.path(),
        "*filter\n:INPUT ACCEPT [0:0]\n:FORWARD DROP [0:0]\n:OUTPUT ACCEPT [0:0]\n\
         -A FORWARD -m comment --comment \"\x1b]0;pwned\x07\x1b[2J\r\u{9b}31m evil\x7f\" -j DROP\n\
         -A FORWARD -m bogus\x1b[5m -j DROP\nCOMMIT\n",
    );
    let r = rules_trace(&f);
    assert!(matches!(r.code, Some(0..=2)), "{}", r.err());
    let out = String::from_utf8_lossy(&r.stdout);
    assert!(out.contains("\\x1b]0;pwned\\x07\\x1b[2J"), "{out}");
    assert!(no_raw_controls(&r.stdout) && no_raw_controls(&r.stderr));
    assert!(!out.contains('\u{9b}'));
}

#[test]
fn a_10_mb_garbage_line_is_not_echoed_in_full_to_stderr() {
    let tmp = tempfile::tempdir().unwrap();
    let mut text = "G".repeat(10 << 20);
    text.push('\n');
    let f = ruleset(tmp.path(), &text);
    let r = rules_trace(&f);
    assert!(matches!(r.code, Some(0..=2)), "{}", r.err());
    // Every warning line is cut to MAX_STDERR_LINE (8192) bytes, with the length it had.
    assert!(
        r.stderr.len() < 64 << 10,
        "{} bytes of stderr",
        r.stderr.len()
    );
    assert!(r.err().contains("bytes)"), "{}", r.err());
}

/// A copy of the healthy example.
fn healthy() -> tempfile::TempDir {
    let tmp = tempfile::tempdir().unwrap();
    std::fs::create_dir(tmp.path().join("nodes")).unwrap();
    std::fs::copy(
        Path::new(EXAMPLE).join("cluster.json"),
        tmp.path().join("cluster.json"),
    )
    .unwrap();
    for n in ["node0", "node1", "node2"] {
        std::fs::copy(
            Path::new(EXAMPLE).join(format!("nodes/{n}.json")),
            tmp.path().join(format!("nodes/{n}.json")),
        )
        .unwrap();
    }
    tmp
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: plain mkfifo on a path the test owns.
    assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o644) }, 0);
}

#[test]
fn bundle_fifos_and_huge_names_are_exit_2_with_a_bounded_message() {
    let b = healthy();
    mkfifo(&b.path().join("nodes/fifo.json"));
    let r = netray(&["scan", "--bundle", b.path().to_str().unwrap()]);
    assert_eq!(r.code, Some(2), "{}", r.err());
    assert!(
        r.err().contains("nodes/fifo.json") && r.err().contains("FIFO"),
        "{}",
        r.err()
    );

    let b = healthy();
    let p = b.path().join("nodes/node0.json");
    let mut v: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&p).unwrap()).unwrap();
    v["node"]["name"] = serde_json::Value::from("\x1b[2J".repeat(10 << 18));
    std::fs::write(&p, v.to_string()).unwrap();
    let r = netray(&[
        "diagnose",
        "--bundle",
        b.path().to_str().unwrap(),
        "--from",
        "10.244.0.2",
        "--to",
        "10.244.1.2:8080",
    ]);
    assert_eq!(r.code, Some(2), "{}", r.err());
    assert!(r.err().contains(".node.name"), "{}", r.err());
    assert!(
        r.stderr.len() < 4096 && no_raw_controls(&r.stderr),
        "{}",
        r.err()
    );
}

fn root_or_skip(what: &str) -> bool {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } == 0 {
        return true;
    }
    eprintln!("skipping {what}: needs root (netray collect reads the host's namespaces)");
    false
}

#[test]
fn collect_output_is_not_written_through_a_planted_link() {
    if !root_or_skip("collect -o") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let victim = tmp.path().join("victim");
    std::fs::write(&victim, "untouched").unwrap();
    let out = tmp.path().join("node.json");
    std::os::unix::fs::symlink(&victim, tmp.path().join("node.json.partial")).unwrap();
    let r = netray(&["collect", "--node", "n1", "-o", out.to_str().unwrap()]);
    assert_eq!(r.code, Some(0), "{}", r.err());
    assert_eq!(std::fs::read_to_string(&victim).unwrap(), "untouched");
    let snap: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(snap["node"]["name"], "n1");
    // No temporary file left behind.
    let left: Vec<_> = std::fs::read_dir(tmp.path())
        .unwrap()
        .filter_map(|e| e.ok())
        .map(|e| e.file_name().to_string_lossy().into_owned())
        .filter(|n| n.starts_with(".node.json."))
        .collect();
    assert!(left.is_empty(), "{left:?}");
}

#[test]
fn collect_netns_refuses_a_fifo_a_plain_file_and_a_mount_namespace() {
    if !root_or_skip("collect --netns") {
        return;
    }
    let tmp = tempfile::tempdir().unwrap();
    let fifo = tmp.path().join("fifo");
    mkfifo(&fifo);
    let plain = tmp.path().join("plain");
    std::fs::write(&plain, "x").unwrap();
    for (arg, needle) in [
        (fifo.to_str().unwrap(), "FIFO"),
        (plain.to_str().unwrap(), "not a namespace file"),
        ("/proc/self/ns/mnt", "mount namespace"),
        ("/proc/self/ns/uts", "UTS namespace"),
    ] {
        let r = netray(&["collect", "--netns", arg, "-o", "/dev/null"]);
        assert_eq!(r.code, Some(2), "--netns {arg}: {}", r.err());
        assert!(
            r.err().contains("--netns") && r.err().contains(needle),
            "--netns {arg}: {}",
            r.err()
        );
    }
}
