//! Fixes, `--what-if` and `diff` over the bundled examples (no root needed): every example
//! with a node-level fault prints fix commands that diagnose proved; the same commands given
//! as `--what-if` make the flow reachable; applied to a copy of the bundle on disk, `netray
//! diff` reports the failing endpoints as fixed and names the objects that changed. (The
//! kernel side — the same commands run in the lab — is `fix_proof.rs`.)

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");

fn example(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn netray(args: &[&str]) -> (i32, String, String) {
    let out = Command::new(NETRAY).args(args).output().unwrap();
    (
        out.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

/// (bundle, from, to) of every example whose fault has a node- or pod-level fix.
const FIXABLE: &[(&str, &str, &str)] = &[
    ("000-bridge-nf-masq", "node/node0", "svc/default/vm:80"),
    (
        "001-checklist",
        "pod/default/web-0",
        "pod/default/web-2:8080",
    ),
    (
        "001-checklist",
        "external/192.168.50.100",
        "node/node2:30080",
    ),
    ("001-checklist", "pod/default/web-1", "svc/default/web:80"),
    (
        "002-stale-vtep",
        "pod/default/web-0",
        "svc/default/web:53/udp",
    ),
    ("003-forward-drop", "node/node0", "svc/default/web:80"),
    (
        "004-local-service-ip",
        "external/192.168.60.200",
        "node/node1:32100",
    ),
];

fn diagnose(bundle: &str, from: &str, to: &str, extra: &[String]) -> (i32, Value) {
    let b = example(bundle);
    let mut args: Vec<&str> = vec![
        "diagnose", "--bundle", &b, "--from", from, "--to", to, "-o", "json",
    ];
    args.extend(extra.iter().map(String::as_str));
    let (code, out, err) = netray(&args);
    let v = serde_json::from_str(&out)
        .unwrap_or_else(|e| panic!("{bundle} {from} → {to}: not JSON ({e}): {out}\n{err}"));
    (code, v)
}

/// Every cause's commands, as `--what-if` arguments.
fn what_ifs(d: &Value) -> Vec<String> {
    let mut out = Vec::new();
    for c in d["causes"].as_array().unwrap() {
        for f in c["fix_commands"].as_array().into_iter().flatten() {
            let arg = format!(
                "--what-if={}/{}: {}",
                f["node"].as_str().unwrap(),
                f["netns"].as_str().unwrap(),
                f["run"].as_str().unwrap()
            );
            if !out.contains(&arg) {
                out.push(arg);
            }
        }
    }
    out
}

#[test]
fn every_fixable_example_gets_proven_fixes_that_what_if_confirms() {
    for (bundle, from, to) in FIXABLE {
        let what = format!("{bundle}: {from} → {to}");
        let (code, d) = diagnose(bundle, from, to, &[]);
        assert_eq!(code, 1, "{what}: the example fails");
        assert_eq!(
            d["all_fixes"]["proven"], true,
            "{what}: all fixes together must make the flow work: {:#}",
            d["all_fixes"]
        );
        for c in d["causes"].as_array().unwrap() {
            assert!(
                !c["fix_commands"].as_array().unwrap().is_empty(),
                "{what}: cause {} has no fix command",
                c["code"]
            );
        }
        // The first cause's own proof: alone, or with the causes behind it.
        assert_eq!(
            d["causes"][0]["proof"]["proven"], true,
            "{what}: {:#}",
            d["causes"][0]
        );
        let args = what_ifs(&d);
        let (code, after) = diagnose(bundle, from, to, &args);
        assert_eq!(
            (code, after["verdict"].as_str()),
            (0, Some("reachable")),
            "{what}: with {args:?}: {}",
            after["summary"]
        );
    }
}

#[test]
fn what_if_rejects_what_it_cannot_apply() {
    let b = example("003-forward-drop");
    for bad in [
        "node1: reboot",
        "node9: sysctl -w net.ipv4.ip_forward=1",
        "node1: iptables -D FORWARD -s 1.2.3.4/32 -j ACCEPT",
        "no-colon-here",
    ] {
        let (code, _, err) = netray(&[
            "diagnose",
            "--bundle",
            &b,
            "--from",
            "node/node0",
            "--to",
            "svc/default/web:80",
            "--what-if",
            bad,
        ]);
        assert_eq!(code, 2, "--what-if {bad}: {err}");
        assert!(err.contains("what-if"), "--what-if {bad}: {err}");
    }
}

#[test]
fn diff_reports_the_fixed_endpoints_and_the_changed_objects() {
    let (_, d) = diagnose(
        "002-stale-vtep",
        "pod/default/web-0",
        "svc/default/web:53/udp",
        &[],
    );
    let mut bundle =
        netray_snapshot::Bundle::load(std::path::Path::new(&example("002-stale-vtep"))).unwrap();
    for c in d["causes"].as_array().unwrap() {
        for f in c["fix_commands"].as_array().unwrap() {
            let cmd = netray_patch::FixCommand {
                node: f["node"].as_str().unwrap().into(),
                netns: f["netns"].as_str().unwrap().into(),
                pod: None,
                run: f["run"].as_str().unwrap().into(),
            };
            netray_patch::apply(&mut bundle, &cmd).unwrap();
        }
    }
    let dir = tempfile::tempdir().unwrap();
    bundle.write_dir(dir.path()).unwrap();
    let before = example("002-stale-vtep");
    let after = dir.path().to_string_lossy().into_owned();
    let (code, out, err) = netray(&[
        "diff",
        "--before",
        &before,
        "--after",
        &after,
        "--from",
        "pod/default/web-0",
        "--to",
        "svc/default/web:53/udp",
        "-o",
        "json",
    ]);
    assert_eq!(code, 1, "{out}{err}");
    let v: Value = serde_json::from_str(&out).unwrap();
    let fixed: Vec<&str> = v["endpoints"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["change"] == "fixed")
        .map(|e| e["endpoint"].as_str().unwrap())
        .collect();
    assert_eq!(fixed, ["10.244.2.2:8053", "10.244.3.2:8053"], "{v:#}");
    assert_eq!(v["changed"], 2, "{v:#}");
    let objects = v["endpoints"][0]["objects"].to_string();
    assert!(
        objects.contains("neighbour 10.244.0.0 dev flannel.1 lladdr 0e:6e:72:00:00:00"),
        "the stale neighbour is named as changed: {objects}"
    );
    // The same bundle against itself: nothing changed.
    let (code, out, _) = netray(&[
        "diff",
        "--before",
        &before,
        "--after",
        &before,
        "--from",
        "pod/default/web-0",
        "--to",
        "svc/default/web:53/udp",
    ]);
    assert_eq!(code, 0, "{out}");
}
