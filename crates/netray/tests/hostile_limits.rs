//! Hostile inputs through the whole CLI, with bounded time **and memory** asserted (issue 15):
//! each case runs netray as a child reaped by `wait4`, and its wall time and peak resident
//! memory (`ru_maxrss`) must stay below [`MAX_WALL`] and [`MAX_RSS_KIB`]. Without the guards
//! these inputs took minutes or gigabytes (issue 15: a goto loop grew to 2 GB, `numgen mod
//! 2³²−1` took 56 s for one rule, a 10 MB node name made `diagnose` use 3.5 GB), so each test
//! fails when its guard is removed. The bounds are generous: a debug build on a loaded 2-core
//! machine uses < 0.2 s and < 50 MB for each.

use std::io::Read;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

mod common;
use common::NETRAY;

/// Wall-time bound of one run.
const MAX_WALL: Duration = Duration::from_secs(10);
/// Peak resident memory bound of one run: 500 MB.
const MAX_RSS_KIB: i64 = 500 * 1024;
/// A run still going after this is killed (the test fails on [`MAX_WALL`] anyway).
const KILL_AFTER: Duration = Duration::from_secs(60);

/// How a bounded, measured run ended.
struct Measured {
    code: Option<i32>,
    stdout: String,
    stderr: String,
    wall: Duration,
    max_rss_kib: i64,
}

/// Run `netray ARGS`, reaped by `wait4` for its peak RSS; killed after [`KILL_AFTER`].
fn measured(args: &[&str]) -> Measured {
    let mut child = Command::new(NETRAY)
        .args(args)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let start = Instant::now();
    let mut so = child.stdout.take().unwrap();
    let mut se = child.stderr.take().unwrap();
    let t1 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = so.read_to_end(&mut v);
        v
    });
    let t2 = std::thread::spawn(move || {
        let mut v = Vec::new();
        let _ = se.read_to_end(&mut v);
        v
    });
    let pid = child.id() as libc::pid_t;
    let mut status = 0;
    // SAFETY: rusage is plain data, written by wait4.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    let mut killed = false;
    loop {
        // SAFETY: polls our own child; `status` and `usage` are valid for writes. The child
        // is reaped here (not by `Child::wait`) so that its rusage can be read.
        let r = unsafe { libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage) };
        assert!(r >= 0, "wait4: {}", std::io::Error::last_os_error());
        if r == pid {
            break;
        }
        if !killed && start.elapsed() > KILL_AFTER {
            // SAFETY: kill(2) on our own child, not yet reaped.
            unsafe { libc::kill(pid, libc::SIGKILL) };
            killed = true;
        }
        std::thread::sleep(Duration::from_millis(5));
    }
    let wall = start.elapsed();
    std::mem::forget(child); // reaped above
    let code = libc::WIFEXITED(status).then(|| libc::WEXITSTATUS(status));
    Measured {
        code,
        stdout: String::from_utf8_lossy(&t1.join().unwrap()).into_owned(),
        stderr: String::from_utf8_lossy(&t2.join().unwrap()).into_owned(),
        wall,
        max_rss_kib: usage.ru_maxrss,
    }
}

/// The run stayed within [`MAX_WALL`] and [`MAX_RSS_KIB`]; prints the figures.
fn assert_bounded(what: &str, m: &Measured) {
    eprintln!(
        "{what}: exit {:?}, {:.3} s, max RSS {} KiB",
        m.code,
        m.wall.as_secs_f64(),
        m.max_rss_kib
    );
    assert!(
        m.wall < MAX_WALL,
        "{what} took {:?} (bound {MAX_WALL:?})",
        m.wall
    );
    assert!(
        m.max_rss_kib < MAX_RSS_KIB,
        "{what} used {} KiB (bound {MAX_RSS_KIB} KiB)",
        m.max_rss_kib
    );
}

fn healthy() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/healthy")
}

/// A copy of examples/healthy in `dir` with node0's snapshot changed by `edit`.
fn healthy_with(dir: &Path, edit: impl FnOnce(&mut Value)) -> PathBuf {
    let b = dir.join("bundle");
    std::fs::create_dir_all(b.join("nodes")).unwrap();
    std::fs::copy(healthy().join("cluster.json"), b.join("cluster.json")).unwrap();
    for n in ["node1", "node2"] {
        let f = format!("nodes/{n}.json");
        std::fs::copy(healthy().join(&f), b.join(&f)).unwrap();
    }
    let mut node0: Value =
        serde_json::from_slice(&std::fs::read(healthy().join("nodes/node0.json")).unwrap())
            .unwrap();
    edit(&mut node0);
    std::fs::write(
        b.join("nodes/node0.json"),
        serde_json::to_vec(&node0).unwrap(),
    )
    .unwrap();
    b
}

/// A `-g` loop at the top of node0's FORWARD (FORWARD -g LOOP-A, LOOP-A -g LOOP-B, LOOP-B -g
/// LOOP-A): a goto never deepens the chain stack, so only `MAX_TRANSFERS_PER_PATH` stops it.
/// A pod on node0 to a pod on node1 crosses node0's FORWARD: `diagnose` and `trace` answer
/// uncertain (exit 1), name the limit, in bounded time and memory.
#[test]
fn a_goto_loop_in_a_node_dump_is_uncertain_naming_the_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let mut edited = 0;
    let b = healthy_with(tmp.path(), |node| {
        for ns in node["namespaces"].as_array_mut().unwrap() {
            for dump in ns["firewall"]["iptables"]
                .as_array_mut()
                .into_iter()
                .flatten()
            {
                let text = dump["text"].as_str().unwrap_or("");
                let Some(at) = text.find("*filter\n:INPUT ACCEPT") else {
                    continue;
                };
                // Declare the two chains after the filter table's header, and the loop first
                // in FORWARD.
                let head_end = at + "*filter\n".len();
                let first_rule = text[head_end..].find("\n[").unwrap() + head_end + 1;
                let text = format!(
                    "{}:LOOP-A - [0:0]\n:LOOP-B - [0:0]\n-A FORWARD -g LOOP-A\n\
                     -A LOOP-A -g LOOP-B\n-A LOOP-B -g LOOP-A\n{}",
                    &text[..first_rule],
                    &text[first_rule..]
                );
                dump["text"] = Value::String(text);
                edited += 1;
            }
        }
    });
    assert_eq!(edited, 1, "node0's host filter table");
    let bundle = b.to_str().unwrap();
    let flow = [
        "--bundle",
        bundle,
        "--from",
        "pod/default/web-0",
        "--to",
        "pod/default/web-2:8080",
    ];
    let d = measured(&[&["diagnose"][..], &flow[..]].concat());
    assert_bounded("diagnose (goto loop)", &d);
    assert_eq!(d.code, Some(1), "{}{}", d.stdout, d.stderr);
    assert!(d.stdout.contains("UNCERTAIN:"), "{}", d.stdout);
    assert!(d.stdout.contains("MAX_TRANSFERS_PER_PATH"), "{}", d.stdout);
    assert!(d.stdout.contains("LOOP-"), "names the rule: {}", d.stdout);
    let t = measured(&[&["trace"][..], &flow[..]].concat());
    assert_bounded("trace (goto loop)", &t);
    assert_eq!(t.code, Some(1), "{}{}", t.stdout, t.stderr);
    assert!(t.stdout.starts_with("UNCERTAIN:"), "{}", t.stdout);
    assert!(t.stdout.contains("MAX_TRANSFERS_PER_PATH"), "{}", t.stdout);
    // The HTML report says the same.
    let html = tmp.path().join("trace.html");
    let h = measured(
        &[
            &["trace"][..],
            &flow[..],
            &["--html", html.to_str().unwrap()][..],
        ]
        .concat(),
    );
    assert_bounded("trace --html (goto loop)", &h);
    let page = std::fs::read_to_string(&html).unwrap();
    assert!(page.contains("data-verdict=\"uncertain\""), "{}", h.stderr);
    // The same in JSON: every branch unknown, none a confident failure.
    let j = measured(&[&["trace"][..], &flow[..], &["-o", "json"][..]].concat());
    assert_bounded("trace -o json (goto loop)", &j);
    let v: Value = serde_json::from_str(&j.stdout).unwrap();
    let branches = v["branches"].as_array().unwrap();
    assert!(!branches.is_empty());
    for b in branches {
        assert_eq!(b["disposition"], "unknown", "{b}");
        assert!(
            b["reason"]
                .as_str()
                .unwrap()
                .contains("MAX_TRANSFERS_PER_PATH"),
            "{b}"
        );
    }
}

/// nft `numgen random mod 4294967295` (2³²−1): evaluated as interval masses, not value by
/// value, through `rules trace`: the two outcomes with their exact probabilities, in bounded
/// time and memory.
#[test]
fn numgen_with_a_huge_modulus_is_exact_and_bounded() {
    let tmp = tempfile::tempdir().unwrap();
    let m: u64 = 4_294_967_295;
    let nft = tmp.path().join("numgen.json");
    std::fs::write(
        &nft,
        format!(
            r#"{{"nftables": [{{"table": {{"family": "ip", "name": "t", "handle": 1}}}},
 {{"chain": {{"family": "ip", "table": "t", "name": "fwd", "handle": 1, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}}},
 {{"rule": {{"family": "ip", "table": "t", "chain": "fwd", "handle": 2, "expr": [{{"match": {{"op": "<", "left": {{"numgen": {{"mode": "random", "mod": {m}, "offset": 0}}}}, "right": 1000000000}}}}, {{"drop": null}}]}}}}
]}}"#
        ),
    )
    .unwrap();
    let r = measured(&[
        "rules",
        "trace",
        "--nft",
        nft.to_str().unwrap(),
        "--from",
        "10.0.0.1",
        "--to",
        "10.0.1.1:80",
        "-o",
        "json",
    ]);
    assert_bounded("rules trace (numgen mod 2^32-1)", &r);
    assert_eq!(r.code, Some(1), "a drop share: {}", r.stderr);
    let v: Value = serde_json::from_str(&r.stdout).unwrap();
    let outcomes = v["outcomes"].as_array().unwrap();
    assert_eq!(outcomes.len(), 2, "{outcomes:#?}");
    let p = |verdict: &str| -> f64 {
        outcomes
            .iter()
            .filter(|o| o["verdict"] == verdict)
            .map(|o| o["probability"].as_f64().unwrap())
            .sum()
    };
    // 10⁹ of the 2³²−1 values drop (JSON probabilities have 6 decimals).
    let want = 1_000_000_000.0 / m as f64;
    assert!((p("drop") - want).abs() < 1e-6, "{outcomes:#?}");
    assert!((p("accept") - (1.0 - want)).abs() < 1e-6, "{outcomes:#?}");
}

/// A 10 MB `node.name`: refused at load (exit 2) naming the file, the field and the limit
/// `MAX_NODE_NAME_BYTES`, with a bounded message, in bounded time and memory.
#[test]
fn a_10_mb_node_name_is_refused_in_bounded_time_and_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let b = healthy_with(tmp.path(), |node| {
        node["node"]["name"] = Value::String("n".repeat(10 << 20));
    });
    let r = measured(&[
        "diagnose",
        "--bundle",
        b.to_str().unwrap(),
        "--from",
        "pod/default/web-0",
        "--to",
        "pod/default/web-2:8080",
    ]);
    assert_bounded("diagnose (10 MB node name)", &r);
    assert_eq!(r.code, Some(2), "{}", r.stderr);
    assert!(r.stderr.contains("node0.json"), "{}", r.stderr);
    assert!(r.stderr.contains("node.name"), "{}", r.stderr);
    assert!(r.stderr.contains("253"), "{}", r.stderr);
    assert!(r.stderr.len() < 4096, "{} bytes of stderr", r.stderr.len());
    assert!(r.stdout.is_empty());
}

/// 100,000 nft chains (the parse was quadratic in chains: 31 s, 892 MB): parsed and walked in
/// bounded time and memory.
#[test]
fn a_hundred_thousand_nft_chains_parse_in_bounded_time_and_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let mut items = vec![
        r#"{"table": {"family": "ip", "name": "t", "handle": 1}}"#.to_string(),
        r#"{"chain": {"family": "ip", "table": "t", "name": "fwd", "handle": 2, "type": "filter", "hook": "forward", "prio": 0, "policy": "accept"}}"#.to_string(),
    ];
    for i in 0..100_000 {
        items.push(format!(
            r#"{{"chain": {{"family": "ip", "table": "t", "name": "c{i}", "handle": {}}}}}"#,
            i + 3
        ));
    }
    // The base chain jumps to the last one, which drops.
    items.push(
        r#"{"rule": {"family": "ip", "table": "t", "chain": "fwd", "handle": 200000, "expr": [{"jump": {"target": "c99999"}}]}}"#
            .to_string(),
    );
    items.push(
        r#"{"rule": {"family": "ip", "table": "t", "chain": "c99999", "handle": 200001, "expr": [{"drop": null}]}}"#
            .to_string(),
    );
    let nft = tmp.path().join("chains.json");
    std::fs::write(&nft, format!("{{\"nftables\": [{}]}}", items.join(",\n"))).unwrap();
    let r = measured(&[
        "rules",
        "trace",
        "--nft",
        nft.to_str().unwrap(),
        "--from",
        "10.0.0.1",
        "--to",
        "10.0.1.1:80",
        "-o",
        "json",
    ]);
    assert_bounded("rules trace (100,000 nft chains)", &r);
    assert_eq!(r.code, Some(1), "dropped in c99999: {}", r.stderr);
    assert!(r.stdout.contains("c99999"), "{}", r.stdout);
}

/// A `.tar.gz` bundle with a 768 MiB entry that is neither `cluster.json` nor `nodes/*.json`
/// (800 KB compressed; every entry used to be read into memory: a 1 MB archive took 1.1 GB):
/// skipped unread, the bundle loads in bounded time and memory.
#[test]
fn an_unrelated_huge_archive_entry_is_skipped_in_bounded_memory() {
    let tmp = tempfile::tempdir().unwrap();
    let src = tmp.path().join("b");
    std::fs::create_dir_all(src.join("nodes")).unwrap();
    std::fs::copy(healthy().join("cluster.json"), src.join("cluster.json")).unwrap();
    for e in std::fs::read_dir(healthy().join("nodes")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), src.join("nodes").join(e.file_name())).unwrap();
    }
    // Sparse: no disk used; tar reads zeros, gzip packs them small.
    std::fs::File::create(src.join("junk.bin"))
        .unwrap()
        .set_len(768 << 20)
        .unwrap();
    let archive = tmp.path().join("b.tar.gz");
    let st = Command::new("tar")
        .arg("czf")
        .arg(&archive)
        .arg("-C")
        .arg(&src)
        .args(["cluster.json", "nodes", "junk.bin"])
        .status()
        .expect("tar");
    assert!(st.success());
    assert!(std::fs::metadata(&archive).unwrap().len() < 4 << 20);
    let r = measured(&[
        "scan",
        "--bundle",
        archive.to_str().unwrap(),
        "--fail-on",
        "critical",
    ]);
    assert_bounded("scan (.tar.gz with a 768 MiB unrelated entry)", &r);
    assert_eq!(r.code, Some(0), "{}", r.stderr);
    assert!(r.stdout.starts_with("scanned 3 nodes"), "{}", r.stdout);
}

/// A directory bundle whose `nodes/node1.json` is a symbolic link to `/dev/zero` (read until
/// memory ran out) or a FIFO (hung for ever): refused (exit 2) naming the file, in bounded time
/// and memory.
#[test]
fn a_dev_zero_link_or_a_fifo_as_a_node_file_is_refused_in_bounded_time_and_memory() {
    for kind in ["/dev/zero link", "fifo"] {
        let tmp = tempfile::tempdir().unwrap();
        let b = healthy_with(tmp.path(), |_| {});
        let victim = b.join("nodes/node1.json");
        std::fs::remove_file(&victim).unwrap();
        if kind == "fifo" {
            let c = std::ffi::CString::new(victim.to_str().unwrap()).unwrap();
            // SAFETY: mkfifo(3) on a NUL-terminated path we own.
            assert_eq!(unsafe { libc::mkfifo(c.as_ptr(), 0o600) }, 0);
        } else {
            std::os::unix::fs::symlink("/dev/zero", &victim).unwrap();
        }
        let r = measured(&["scan", "--bundle", b.to_str().unwrap()]);
        assert_bounded(&format!("scan (node file is a {kind})"), &r);
        assert_eq!(r.code, Some(2), "{kind}: {}", r.stderr);
        assert!(r.stderr.contains("node1.json"), "{kind}: {}", r.stderr);
    }
}
