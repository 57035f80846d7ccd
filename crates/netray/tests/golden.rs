//! Snapshot tests of what an operator reads (issue 14): the whole text output — stdout,
//! stderr and exit code — of the main commands on the bundled examples, and of the main
//! errors, compared with the files under `tests/golden/`. Any change of wording, order,
//! counts or layout fails here and shows the difference; when the change is meant, refresh
//! the files with `NETRAY_BLESS=1 cargo test -p netray --test golden` and review the diff.

use std::path::{Path, PathBuf};
use std::process::Command;

mod common;
use common::NETRAY;

/// (file name, arguments). Paths are relative to this crate's directory (the tests' working
/// directory), so they print the same everywhere.
const CASES: &[(&str, &[&str])] = &[
    (
        "diagnose-002-stale-vtep",
        &[
            "diagnose",
            "--bundle",
            "../../examples/002-stale-vtep",
            "--from",
            "pod/default/web-0",
            "--to",
            "svc/default/web:53/udp",
        ],
    ),
    (
        "diagnose-003-forward-drop",
        &[
            "diagnose",
            "--bundle",
            "../../examples/003-forward-drop",
            "--from",
            "node/node0",
            "--to",
            "svc/default/web:80",
        ],
    ),
    (
        "diagnose-006-dualstack",
        &[
            "diagnose",
            "--bundle",
            "../../examples/006-dualstack-v6-forward-drop",
            "--from",
            "pod/default/client-0",
            "--to",
            "svc/default/web-remote:80",
        ],
    ),
    (
        "diagnose-healthy-exits",
        &[
            "diagnose",
            "--bundle",
            "../../examples/healthy",
            "--from",
            "pod/default/web-0",
            "--to",
            "1.1.1.1:443",
        ],
    ),
    (
        "trace-002-failing",
        &[
            "trace",
            "--bundle",
            "../../examples/002-stale-vtep",
            "--from",
            "pod/default/web-0",
            "--to",
            "svc/default/web:53/udp",
            "--failing",
        ],
    ),
    (
        "scan-003-forward-drop",
        &["scan", "--bundle", "../../examples/003-forward-drop"],
    ),
    (
        "scan-healthy",
        &["scan", "--bundle", "../../examples/healthy"],
    ),
    (
        "audit-002-stale-vtep",
        &["audit", "--bundle", "../../examples/002-stale-vtep"],
    ),
    (
        "diff-003-to-healthy",
        &[
            "diff",
            "--before",
            "../../examples/003-forward-drop",
            "--after",
            "../../examples/healthy",
            "--from",
            "node/node0",
            "--to",
            "svc/default/web:80",
        ],
    ),
    (
        "rules-trace",
        &[
            "rules",
            "trace",
            "--iptables",
            "../../examples/rules/iptables-save.txt",
            "--backend",
            "nft",
            "--local",
            "192.168.50.10",
            "--from",
            "10.244.1.5",
            "--to",
            "10.96.0.100:80/tcp",
        ],
    ),
    (
        "error-unknown-pod",
        &[
            "diagnose",
            "--bundle",
            "../../examples/healthy",
            "--from",
            "pod/default/web-9",
            "--to",
            "svc/default/web:80",
        ],
    ),
    (
        "error-missing-bundle",
        &["scan", "--bundle", "../../examples/no-such-bundle"],
    ),
    (
        "error-bad-port",
        &[
            "trace",
            "--bundle",
            "../../examples/healthy",
            "--from",
            "pod/default/web-0",
            "--to",
            "pod/default/web-2:99999",
        ],
    ),
];

fn golden_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/golden")
}

/// The transcript of one run: the command, its exit code, stdout and stderr.
fn transcript(args: &[&str]) -> String {
    let out = Command::new(NETRAY)
        .args(args)
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .env("NO_COLOR", "1")
        .env_remove("KUBECONFIG")
        .output()
        .expect("run netray");
    format!(
        "$ netray {}\n[exit {}]\n--- stdout\n{}--- stderr\n{}",
        args.join(" "),
        out.status
            .code()
            .map_or_else(|| "signal".to_string(), |c| c.to_string()),
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

#[test]
fn outputs_match_the_golden_files() {
    let bless = std::env::var_os("NETRAY_BLESS").is_some_and(|v| v == "1");
    let dir = golden_dir();
    let mut bad = Vec::new();
    for (name, args) in CASES {
        let got = transcript(args);
        let path = dir.join(format!("{name}.txt"));
        if bless {
            std::fs::create_dir_all(&dir).unwrap();
            std::fs::write(&path, &got).unwrap();
            continue;
        }
        match std::fs::read_to_string(&path) {
            Ok(want) if want == got => {}
            Ok(want) => {
                let first = want
                    .lines()
                    .zip(got.lines())
                    .position(|(a, b)| a != b)
                    .unwrap_or_else(|| want.lines().count().min(got.lines().count()));
                bad.push(format!(
                    "{name}: differs from line {}:\n  want: {}\n  got:  {}",
                    first + 1,
                    want.lines().nth(first).unwrap_or("<end>"),
                    got.lines().nth(first).unwrap_or("<end>")
                ));
            }
            Err(e) => bad.push(format!("{name}: {}: {e}", path.display())),
        }
    }
    assert!(
        bad.is_empty(),
        "{} of {} outputs differ from tests/golden (if the change is meant: NETRAY_BLESS=1 cargo \
         test -p netray --test golden, then review the diff):\n{}",
        bad.len(),
        CASES.len(),
        bad.join("\n")
    );
}

/// Every golden file belongs to a case (a renamed case leaves no stale file behind).
#[test]
fn no_stale_golden_files() {
    let names: Vec<String> = CASES.iter().map(|(n, _)| format!("{n}.txt")).collect();
    for e in std::fs::read_dir(golden_dir()).expect("tests/golden") {
        let f = e.unwrap().file_name().to_string_lossy().into_owned();
        assert!(names.contains(&f), "tests/golden/{f} belongs to no case");
    }
}
