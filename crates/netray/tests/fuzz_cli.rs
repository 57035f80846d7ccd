//! Fuzz-style property test of the whole CLI (issue 15): `scan`, `diagnose` and `trace` on
//! bundles mutated at random from `examples/healthy` — bytes flipped, files cut, garbage and
//! control characters inserted, JSON values replaced by hostile ones (huge, negative, wrong
//! type, escape sequences), hostile entries added (FIFOs, links to devices, directories,
//! duplicates), sometimes packed as `.tar.gz`. Every run must exit 0, 1 or 2 (never a panic or
//! a signal), within a hang guard, with bounded standard error and no raw control character
//! in anything printed.
//!
//! Deterministic: `NETRAY_FUZZ_SEED` picks the seed (printed on failure), `NETRAY_FUZZ_RUNS`
//! the number of runs (default 400: about 25 s in a debug build, under a minute on a busy CI
//! machine).

use std::path::{Path, PathBuf};
use std::time::Duration;

use serde_json::Value;

mod common;

use common::Rng;
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/healthy");
/// A run longer than this is a hang.
const HANG_GUARD: Duration = Duration::from_secs(60);
/// Most standard error one run may print.
const MAX_STDERR: usize = 1 << 20;

fn hostile_value(rng: &mut Rng) -> Value {
    match rng.below(14) {
        0 => Value::Null,
        1 => Value::from(-1),
        2 => Value::from(u64::MAX),
        3 => Value::from(1e308),
        4 => Value::from(""),
        5 => Value::from("\x1b]0;pwned\x07\x1b[2J\r\u{9b}"),
        6 => Value::from("x".repeat(1 << 20)),
        7 => Value::from("10.0.0.1/33"),
        8 => Value::from("::ffff:1.2.3.4"),
        9 => Value::Array(vec![Value::Null; 3]),
        10 => serde_json::json!({"type": "veth", "peer_netns": 1}),
        11 => Value::from("../../etc/passwd"),
        12 => Value::from(true),
        _ => Value::from(String::from_utf8_lossy(&rng.bytes(24)).into_owned()),
    }
}

/// Replace the `n`-th JSON value (pre-order) of `v`.
fn replace_nth(v: &mut Value, n: &mut usize, with: &Value) -> bool {
    if *n == 0 {
        *v = with.clone();
        return true;
    }
    *n -= 1;
    match v {
        Value::Array(a) => a.iter_mut().any(|x| replace_nth(x, n, with)),
        Value::Object(o) => o.values_mut().any(|x| replace_nth(x, n, with)),
        _ => false,
    }
}

fn count(v: &Value) -> usize {
    1 + match v {
        Value::Array(a) => a.iter().map(count).sum(),
        Value::Object(o) => o.values().map(count).sum(),
        _ => 0,
    }
}

fn mkfifo(p: &Path) {
    let c = std::ffi::CString::new(p.to_str().unwrap()).unwrap();
    // SAFETY: plain mkfifo on a path the test owns.
    unsafe { libc::mkfifo(c.as_ptr(), 0o644) };
}

/// Copy the example into `dir` and apply one random mutation; returns what was done.
fn mutate(dir: &Path, rng: &mut Rng) -> String {
    std::fs::create_dir_all(dir.join("nodes")).unwrap();
    std::fs::copy(
        Path::new(EXAMPLE).join("cluster.json"),
        dir.join("cluster.json"),
    )
    .unwrap();
    for n in ["node0", "node1", "node2"] {
        std::fs::copy(
            Path::new(EXAMPLE).join(format!("nodes/{n}.json")),
            dir.join(format!("nodes/{n}.json")),
        )
        .unwrap();
    }
    let files = [
        "cluster.json",
        "nodes/node0.json",
        "nodes/node1.json",
        "nodes/node2.json",
    ];
    let target = dir.join(files[rng.below(files.len())]);
    let mut data = std::fs::read(&target).unwrap();
    let what = match rng.below(9) {
        0 => {
            let k = 1 + rng.below(8);
            for _ in 0..k {
                let i = rng.below(data.len());
                data[i] = rng.next() as u8;
            }
            format!("{k} bytes flipped")
        }
        1 => {
            let at = rng.below(data.len());
            data.truncate(at);
            format!("cut at {at}")
        }
        2 => {
            let at = rng.below(data.len());
            let len = 1 + rng.below(64);
            let mut junk = rng.bytes(len);
            junk.extend_from_slice(b"\x1b[2J\x00\xff");
            data.splice(at..at, junk);
            format!("garbage at {at}")
        }
        3..=5 => {
            let mut v: Value = serde_json::from_slice(&data).unwrap();
            let k = 1 + rng.below(3);
            for _ in 0..k {
                let mut n = rng.below(count(&v));
                let with = hostile_value(rng);
                replace_nth(&mut v, &mut n, &with);
            }
            data = v.to_string().into_bytes();
            format!("{k} JSON values replaced")
        }
        6 => {
            let extra = dir.join("nodes/extra.json");
            match rng.below(5) {
                0 => mkfifo(&extra),
                1 => std::os::unix::fs::symlink("/dev/zero", &extra).unwrap(),
                2 => std::fs::create_dir(&extra).unwrap(),
                3 => std::fs::copy(dir.join("nodes/node1.json"), &extra)
                    .map(|_| ())
                    .unwrap(),
                _ => std::fs::write(&extra, rng.bytes(256)).unwrap(),
            }
            "hostile entry nodes/extra.json".into()
        }
        7 => {
            let _ = std::fs::remove_file(dir.join("cluster.json"));
            std::os::unix::fs::symlink(dir.join("nodes"), dir.join("cluster.json")).unwrap();
            return "cluster.json is a link to a directory".into();
        }
        _ => {
            // A huge name where names go.
            let mut v: Value = serde_json::from_slice(&data).unwrap();
            if v.get("node").is_some() {
                v["node"]["name"] = Value::from("n\x1b".repeat(1 << 19));
            }
            data = v.to_string().into_bytes();
            "1 MB node name".into()
        }
    };
    std::fs::write(&target, data).unwrap();
    format!("{}: {what}", target.strip_prefix(dir).unwrap().display())
}

/// Pack `dir` as `dir.tar.gz` (under a top-level directory `b/`, links kept as links, with
/// an unrelated file whose name and content are not UTF-8-clean).
fn pack(dir: &Path) -> PathBuf {
    let out = dir.with_extension("tar.gz");
    let gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&out).unwrap(),
        flate2::Compression::fast(),
    );
    let mut b = tar::Builder::new(gz);
    b.follow_symlinks(false);
    // A FIFO cannot be archived by the builder: such a run keeps the directory's other files.
    let _ = b.append_dir_all("b", dir);
    let mut h = tar::Header::new_gnu();
    h.set_size(3);
    h.set_mode(0o644);
    b.append_data(&mut h, "b/README\u{1b}.txt", &b"\xff\xfe\x00"[..])
        .unwrap();
    b.into_inner().unwrap().finish().unwrap();
    out
}

fn run(args: &[&str]) -> (Option<i32>, Option<i32>, Vec<u8>, Vec<u8>) {
    use std::os::unix::process::ExitStatusExt;
    let o = common::netray_bounded(args, HANG_GUARD);
    (o.status.code(), o.status.signal(), o.stdout, o.stderr)
}

fn raw_control(bytes: &[u8]) -> Option<u8> {
    bytes
        .iter()
        .copied()
        .find(|&b| (b < 0x20 && b != b'\n' && b != b'\t') || b == 0x7f)
}

#[test]
fn mutated_bundles_never_crash_hang_or_leak_control_characters() {
    let seed: u64 = std::env::var("NETRAY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x6e65_7472_6179_0015);
    let runs: usize = std::env::var("NETRAY_FUZZ_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(400);
    let mut rng = Rng(seed | 1);
    let mut codes = [0usize; 3];
    for i in 0..runs {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("bundle");
        let what = mutate(&dir, &mut rng);
        let bundle = if rng.below(4) == 0 {
            pack(&dir)
        } else {
            dir.clone()
        };
        let b = bundle.to_str().unwrap();
        let args: Vec<&str> = match rng.below(3) {
            0 => vec!["scan", "--bundle", b],
            1 => vec![
                "diagnose",
                "--bundle",
                b,
                "--from",
                "pod/default/web-0",
                "--to",
                "svc/default/web:80",
            ],
            _ => vec![
                "trace",
                "--bundle",
                b,
                "--from",
                "10.244.0.2",
                "--to",
                "10.244.1.2:8080",
            ],
        };
        let (code, signal, stdout, stderr) = run(&args);
        let ctx = format!(
            "run {i} (NETRAY_FUZZ_SEED={seed}): {what}; netray {}\nstderr: {}",
            args.join(" "),
            String::from_utf8_lossy(&stderr[..stderr.len().min(2000)])
        );
        match code {
            Some(c @ 0..=2) => codes[c as usize] += 1,
            _ => panic!("exit {code:?} signal {signal:?}: {ctx}"),
        }
        assert!(
            stderr.len() <= MAX_STDERR,
            "{} bytes of stderr: {ctx}",
            stderr.len()
        );
        if let Some(b) = raw_control(&stdout).or(raw_control(&stderr)) {
            panic!("raw control byte {b:#04x} printed: {ctx}");
        }
    }
    eprintln!(
        "{runs} runs: exit 0 ×{}, exit 1 ×{}, exit 2 ×{}",
        codes[0], codes[1], codes[2]
    );
    assert!(
        codes[2] > 0,
        "no mutation was refused: the mutations are too weak"
    );
}
