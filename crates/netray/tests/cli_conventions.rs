//! The command line's conventions (issue 14): completions and the man page generated from the
//! CLI definition, `--version` with the git revision, colour only where asked and never from
//! input, `-o json|yaml|text` on every report, errors in one style with "did you mean", the
//! flow syntax's port rules, and the texts (counts, pods by name, rounded shares). Needs no
//! root: it reads the bundled examples.

use std::path::{Path, PathBuf};
use std::process::{Command, Output};

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");

fn example(name: &str) -> String {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn netray(args: &[&str]) -> Output {
    Command::new(NETRAY)
        .args(args)
        .env_remove("NO_COLOR")
        .env_remove("KUBECONFIG")
        .output()
        .unwrap()
}

/// Run, check the exit code, return (stdout, stderr).
fn run(args: &[&str], code: i32) -> (String, String) {
    let out = netray(args);
    let (o, e) = (
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    );
    assert_eq!(
        out.status.code(),
        Some(code),
        "netray {}: stdout:\n{o}\nstderr:\n{e}",
        args.join(" ")
    );
    (o, e)
}

#[test]
fn completions_for_each_shell_name_the_subcommands() {
    for shell in ["bash", "zsh", "fish"] {
        let (o, _) = run(&["completions", shell], 0);
        for sub in ["diagnose", "trace", "scan", "completions"] {
            assert!(o.contains(sub), "{shell} completion lacks {sub}");
        }
        assert!(
            o.contains("failing"),
            "{shell} completion lacks trace --failing"
        );
    }
    let (_, e) = run(&["completions", "tcsh"], 2);
    assert!(e.contains("invalid value 'tcsh'"), "{e}");
}

#[test]
fn man_page_is_generated_from_the_cli() {
    let (o, _) = run(&["man"], 0);
    assert!(
        o.starts_with(".ie") || o.contains(".TH netray"),
        "{}",
        &o[..200.min(o.len())]
    );
    assert!(o.contains("diagnose") && o.contains("completions"));
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().to_str().unwrap();
    run(&["man", "--out-dir", d], 0);
    for page in [
        "netray.1",
        "netray-diagnose.1",
        "netray-trace.1",
        "netray-rules-trace.1",
    ] {
        let text = std::fs::read_to_string(dir.path().join(page))
            .unwrap_or_else(|e| panic!("{page}: {e}"));
        assert!(text.contains(".TH"), "{page}");
    }
    let trace = std::fs::read_to_string(dir.path().join("netray-trace.1")).unwrap();
    assert!(trace.contains("failing"), "trace page lacks --failing");
}

#[test]
fn version_names_the_git_revision() {
    let (o, _) = run(&["--version"], 0);
    assert!(o.starts_with("netray 0."), "{o}");
    assert!(o.contains("(git "), "{o}");
}

#[test]
fn colour_only_when_asked_and_never_from_input() {
    let b = example("002-stale-vtep");
    let args = [
        "diagnose",
        "--bundle",
        &b,
        "--from",
        "pod/default/web-0",
        "--to",
        "svc/default/web:53/udp",
    ];
    // auto into a pipe: none.
    let (o, _) = run(&args, 1);
    assert!(!o.contains('\x1b'), "colour into a pipe");
    let mut always = args.to_vec();
    always.extend(["--color", "always"]);
    let (o, _) = run(&always, 1);
    assert!(o.starts_with("from "), "{o}");
    assert!(o.contains("\x1b[1;33mPARTIAL\x1b[0m: "), "{o}");
    assert!(o.contains("\x1b[1;31m  FAIL\x1b[0m"), "{o}");
    // Not in JSON, even when asked.
    always.extend(["-o", "json"]);
    let (o, _) = run(&always, 1);
    assert!(!o.contains('\x1b'));
    // NO_COLOR (no-color.org) turns off only the default: with auto, nothing; an explicit
    // `--color always` still colours.
    let no_color = |args: &[&str]| {
        let out = Command::new(NETRAY)
            .args(args)
            .env("NO_COLOR", "1")
            .env_remove("KUBECONFIG")
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(1), "netray {}", args.join(" "));
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    let o = no_color(&args);
    assert!(!o.contains('\x1b'), "NO_COLOR and auto: {o:?}");
    let o = no_color(&always[..always.len() - 2]);
    assert!(
        o.contains("\x1b[1;33mPARTIAL\x1b[0m: "),
        "NO_COLOR=1 --color always: {o:?}"
    );
    // An ESC sequence from input (here, an argument quoted in an error) stays escaped while
    // our own colour is around the error word.
    let (_, e) = run(
        &[
            "--color",
            "always",
            "trace",
            "--bundle",
            &b,
            "--from",
            "pod/default/web-0",
            "--to",
            "svc/default/web:53/udp",
            "--what-if",
            "node0\x1b[2J: sysctl -w net.ipv4.ip_forward=1",
        ],
        2,
    );
    assert!(e.starts_with("\x1b[1;31mnetray: error:\x1b[0m"), "{e:?}");
    assert!(
        !e.contains("\x1b[2J"),
        "input escape reached the terminal: {e:?}"
    );
    assert!(e.contains("\\x1b[2J"), "{e:?}");
}

/// What `netray ARGS` shows on a pseudo-terminal (script(1)) with `env` set, or `None`
/// without script(1).
fn on_a_terminal(args: &[&str], env: &[(&str, &str)]) -> Option<String> {
    if Command::new("script").arg("--version").output().is_err() {
        return None;
    }
    let quoted: Vec<String> = args
        .iter()
        .map(|a| format!("'{}'", a.replace('\'', "'\\''")))
        .collect();
    // Bounded: `timeout` ends netray if it ever waited on the terminal.
    let line = format!("timeout 60 {NETRAY} {}", quoted.join(" "));
    let mut cmd = Command::new("script");
    cmd.args(["-qec", &line, "/dev/null"])
        .env_remove("NO_COLOR")
        .env_remove("KUBECONFIG")
        .env("TERM", "xterm");
    for (k, v) in env {
        cmd.env(k, v);
    }
    let out = cmd.output().unwrap();
    let shown = String::from_utf8_lossy(&out.stdout).into_owned();
    assert_eq!(
        out.status.code(),
        Some(1),
        "script netray {}: {shown}",
        args.join(" ")
    );
    Some(shown)
}

#[test]
fn colour_on_a_terminal_unless_no_color_or_never() {
    let b = example("002-stale-vtep");
    let args = [
        "diagnose",
        "--bundle",
        &b,
        "--from",
        "pod/default/web-0",
        "--to",
        "svc/default/web:53/udp",
    ];
    let Some(shown) = on_a_terminal(&args, &[]) else {
        assert_ne!(
            std::env::var("CI").as_deref(),
            Ok("true"),
            "CI=true: script(1) (util-linux) is needed to test colour on a terminal"
        );
        eprintln!("SKIPPED colour_on_a_terminal_unless_no_color_or_never: no script(1)");
        return;
    };
    // auto on a terminal: colour.
    let coloured = |s: &str| s.contains("\x1b[1;33mPARTIAL\x1b[0m: ");
    assert!(coloured(&shown), "auto on a terminal: {shown:?}");
    assert!(shown.contains("\x1b[1;31m  FAIL\x1b[0m"), "{shown:?}");
    // NO_COLOR set to anything but the empty string turns the default off.
    for v in ["1", "0", "false"] {
        let shown = on_a_terminal(&args, &[("NO_COLOR", v)]).unwrap();
        assert!(!shown.contains('\x1b'), "NO_COLOR={v}: {shown:?}");
        assert!(shown.contains("PARTIAL: "), "{shown:?}");
    }
    let shown = on_a_terminal(&args, &[("NO_COLOR", "")]).unwrap();
    assert!(coloured(&shown), "NO_COLOR empty: {shown:?}");
    // An explicit choice wins over NO_COLOR either way; TERM=dumb turns auto off.
    let mut always = args.to_vec();
    always.extend(["--color", "always"]);
    let shown = on_a_terminal(&always, &[("NO_COLOR", "1")]).unwrap();
    assert!(coloured(&shown), "--color always with NO_COLOR: {shown:?}");
    let mut never = args.to_vec();
    never.extend(["--color", "never"]);
    let shown = on_a_terminal(&never, &[]).unwrap();
    assert!(!shown.contains('\x1b'), "--color never: {shown:?}");
    let shown = on_a_terminal(&args, &[("TERM", "dumb")]).unwrap();
    assert!(!shown.contains('\x1b'), "TERM=dumb: {shown:?}");
    // JSON on a terminal: never coloured.
    let mut json = args.to_vec();
    json.extend(["-o", "json"]);
    let shown = on_a_terminal(&json, &[]).unwrap();
    assert!(!shown.contains('\x1b'), "JSON: {shown:?}");
}

#[test]
fn every_report_speaks_json_and_yaml() {
    let b = example("002-stale-vtep");
    let h = example("healthy");
    let rules = PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/rules/iptables-save.txt")
        .to_string_lossy()
        .into_owned();
    let flow = [
        "--from",
        "pod/default/web-0",
        "--to",
        "svc/default/web:53/udp",
    ];
    let cases: Vec<(Vec<&str>, i32)> = vec![
        ([&["diagnose", "--bundle", &b][..], &flow[..]].concat(), 1),
        (
            [
                &["trace", "--bundle", &b][..],
                &flow[..],
                &["--failing"][..],
            ]
            .concat(),
            1,
        ),
        (vec!["scan", "--bundle", &h], 1),
        (vec!["scan", "--list-checks"], 0),
        (
            [&["diff", "--before", &b, "--after", &h][..], &flow[..]].concat(),
            1,
        ),
        (
            vec![
                "rules",
                "trace",
                "--iptables",
                &rules,
                "--local",
                "192.168.50.10",
                "--from",
                "10.244.1.5",
                "--to",
                "10.96.0.100:80/tcp",
            ],
            0,
        ),
    ];
    for (args, code) in cases {
        let mut j = args.clone();
        j.extend(["-o", "json"]);
        let (o, _) = run(&j, code);
        let json: serde_json::Value =
            serde_json::from_str(&o).unwrap_or_else(|e| panic!("{j:?}: not JSON: {e}\n{o}"));
        let mut y = args.clone();
        y.extend(["-o", "yaml"]);
        let (o, _) = run(&y, code);
        let yaml: serde_json::Value =
            serde_norway::from_str(&o).unwrap_or_else(|e| panic!("{y:?}: not YAML: {e}\n{o}"));
        assert_eq!(json, yaml, "{args:?}: JSON and YAML differ");
        // Shares and probabilities are rounded for people: no 0.24999999994179234.
        let long = fractions(&json).into_iter().find(|f| {
            f.to_string()
                .split_once('.')
                .is_some_and(|(_, d)| d.len() > 6)
        });
        assert!(long.is_none(), "{args:?}: unrounded number {long:?}");
    }
    let (o, _) = run(&["scan", "--list-checks", "-o", "json"], 0);
    let checks: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert!(checks.as_array().unwrap().len() > 20);
    assert!(checks[0]["codes"].is_array() && checks[0]["title"].is_string());
}

#[test]
fn trace_answers_first_names_pods_and_can_show_only_failures() {
    let h = example("healthy");
    let args = [
        "trace",
        "--bundle",
        &h,
        "--from",
        "pod/default/web-0",
        "--to",
        "svc/default/web:80",
    ];
    let (o, _) = run(&args, 0);
    assert!(
        o.starts_with("REACHABLE: every branch succeeds (6 branches)\n"),
        "{}",
        &o[..200]
    );
    assert!(!o.contains("branch(es)"));
    assert!(o.contains("[node0/pod/default/web-0]"), "pod not named");
    assert!(
        o.contains("(from node0/pod/default/web-0)"),
        "source not named as pod"
    );
    let mut failing = args.to_vec();
    failing.push("--failing");
    let (o, _) = run(&failing, 0);
    assert!(!o.contains("\nbranch 1 "), "{o}");
    assert!(
        o.contains("(6 succeeding branches not shown: --failing lists only the failing ones)"),
        "{o}"
    );
    assert!(o.lines().count() < 12, "{o}");
}

#[test]
fn flow_ports_are_checked_and_a_source_port_is_used() {
    let b = example("005-stale-conntrack");
    let base = ["diagnose", "--bundle", &b, "--to", "svc/default/web:53/udp"];
    let (_, e) = run(
        &[&base[..], &["--from", "pod/default/web-0", "--sport", "0"]].concat(),
        2,
    );
    assert!(e.contains("--sport"), "{e}");
    let (_, e) = run(
        &[
            "diagnose",
            "--bundle",
            &b,
            "--from",
            "pod/default/web-0",
            "--to",
            "svc/default/web:99999",
        ],
        2,
    );
    assert!(e.contains("port 99999 is out of range (1-65535)"), "{e}");
    assert!(!e.contains("port name"), "{e}");
    // `--from pod/…:PORT` is the source port: the same answer as --sport.
    let (a, _) = run(
        &[
            &base[..],
            &[
                "--from",
                "pod/default/web-0",
                "--sport",
                "5300",
                "-o",
                "json",
            ],
        ]
        .concat(),
        1,
    );
    let (b2, _) = run(
        &[
            &base[..],
            &["--from", "pod/default/web-0:5300", "-o", "json"],
        ]
        .concat(),
        1,
    );
    assert_eq!(a, b2);
    let (_, e) = run(
        &[
            &base[..],
            &["--from", "pod/default/web-0:5300", "--sport", "5301"],
        ]
        .concat(),
        2,
    );
    assert!(
        e.contains("--sport 5301 conflicts with the port 5300 on --from"),
        "{e}"
    );
}

#[test]
fn unknown_names_get_did_you_mean_in_one_error_style() {
    let b = example("healthy");
    let (_, e) = run(
        &[
            "diagnose",
            "--bundle",
            &b,
            "--from",
            "pod/default/wbe-0",
            "--to",
            "svc/default/web:80",
        ],
        2,
    );
    assert!(
        e.starts_with(
            "netray: error: no pod default/wbe-0 in the cluster view; did you mean pod/default/web-0?\n  pods in namespace default: "
        ),
        "{e}"
    );
    let (_, e) = run(
        &[
            "diagnose",
            "--bundle",
            &b,
            "--from",
            "pod/default/web-0",
            "--to",
            "svc/default/wbe:80",
        ],
        2,
    );
    assert!(e.contains("did you mean svc/default/web?"), "{e}");
    let (_, e) = run(
        &[
            "trace",
            "--bundle",
            &b,
            "--from",
            "node/nod0",
            "--to",
            "svc/default/web:80",
        ],
        2,
    );
    assert!(e.contains("did you mean node/node0?"), "{e}");
    assert!(e.contains("\n  nodes: node0, node1, node2"), "{e}");
}

#[cfg(feature = "live")]
#[test]
fn kubeconfig_errors_quote_paths_once_and_list_contexts() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope");
    let (_, e) = run(&["cluster", "--kubeconfig", missing.to_str().unwrap()], 2);
    assert!(
        e.contains(&format!(
            "kubeconfig {}: cannot read it: ",
            missing.display()
        )),
        "{e}"
    );
    assert!(!e.contains("'\""), "path quoted twice: {e}");
    let kc = dir.path().join("config");
    std::fs::write(
        &kc,
        "apiVersion: v1\nkind: Config\nclusters:\n- name: c1\n  cluster: {server: \"https://127.0.0.1:1\"}\n\
         users:\n- name: u1\n  user: {token: abc}\ncontexts:\n- name: kind-dev\n  context: {cluster: c1, user: u1}\n\
         - name: prod\n  context: {cluster: c1, user: u1}\ncurrent-context: kind-dev\n",
    )
    .unwrap();
    let (_, e) = run(
        &[
            "cluster",
            "--kubeconfig",
            kc.to_str().unwrap(),
            "--context",
            "kind-deb",
        ],
        2,
    );
    assert!(
        e.contains(
            "has no context \"kind-deb\"; did you mean --context kind-dev? (its contexts: \
             kind-dev, prod; choose one with --context NAME)"
        ),
        "{e}"
    );
    assert!(!e.contains("abc"), "credential in a message: {e}");
}

#[test]
fn scan_counts_in_words_and_says_which_checks_did_not_run() {
    let h = example("healthy");
    let (o, _) = run(&["scan", "--bundle", &h], 1);
    assert!(
        o.contains("\n1 finding: 0 critical, 1 warning, 0 info\n"),
        "{o}"
    );
    assert!(
        o.starts_with("scanned 3 nodes (node0, node1, node2), "),
        "{o}"
    );
    // Without cluster.json: the Kubernetes checks did not run, and it says so.
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&Path::new(&h).join("nodes"), &dir.path().join("nodes"));
    let d = dir.path().to_str().unwrap();
    let (o, _) = run(&["scan", "--bundle", d], 0);
    assert!(o.contains("(6 Kubernetes checks did not run)"), "{o}");
    assert!(
        o.contains("note: the bundle has no cluster view (cluster.json)"),
        "{o}"
    );
    assert!(!o.contains("clean"), "{o}");
    let (o, e) = run(&["scan", "--bundle", d, "-o", "json"], 0);
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert_eq!(v["not_run"][0]["codes"][0], "no-endpoints");
    assert!(
        e.contains("netray: warning: the bundle has no cluster view"),
        "{e}"
    );
}

/// A check that needs a part of a node's state the collector could not collect (sockets
/// without sock_diag, conntrack without ctnetlink) did not run on that node, and scan says
/// which check, where and why — in the text, in JSON `not_run` and on standard error.
#[test]
fn scan_says_which_checks_did_not_run_for_uncollected_state() {
    let h = example("healthy");
    let (o, _) = run(&["scan", "--bundle", &h, "-o", "json"], 1);
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert!(v.get("not_run").is_none(), "healthy: every check ran: {o}");
    let dir = tempfile::tempdir().unwrap();
    copy_dir(&Path::new(&h).join("nodes"), &dir.path().join("nodes"));
    std::fs::copy(
        Path::new(&h).join("cluster.json"),
        dir.path().join("cluster.json"),
    )
    .unwrap();
    let missing = [
        ("node1", "sockets", "sock_diag is not loaded and cannot be"),
        ("node2", "conntrack", "nf_conntrack_netlink is absent"),
    ];
    for (node, what, reason) in missing {
        let f = dir.path().join(format!("nodes/{node}.json"));
        let mut snap: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&f).unwrap()).unwrap();
        for ns in snap["namespaces"].as_array_mut().unwrap() {
            let ns = ns.as_object_mut().unwrap();
            match what {
                "sockets" => ns.insert("sockets".into(), serde_json::json!([])),
                _ => ns.remove("conntrack"),
            };
        }
        snap["not_collected"]
            .as_array_mut()
            .unwrap()
            .push(serde_json::json!({"what": what, "reason": reason}));
        std::fs::write(&f, serde_json::to_string(&snap).unwrap()).unwrap();
    }
    let d = dir.path().to_str().unwrap();
    let (o, e) = run(&["scan", "--bundle", d, "-o", "json"], 1);
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    let not_run = v["not_run"].as_array().unwrap_or_else(|| panic!("{o}"));
    assert_eq!(not_run.len(), 2, "{o}");
    assert_eq!(
        not_run[0]["codes"],
        serde_json::json!(["port-not-listening"])
    );
    assert_eq!(not_run[0]["nodes"], serde_json::json!(["node1"]));
    assert_eq!(
        not_run[0]["reason"],
        "sockets not collected on node1 (node1: sock_diag is not loaded and cannot be): \
         these checks did not run there"
    );
    assert_eq!(
        not_run[1]["codes"],
        serde_json::json!([
            "conntrack-table-full",
            "conntrack-drops",
            "stale-conntrack-entry"
        ])
    );
    assert_eq!(not_run[1]["nodes"], serde_json::json!(["node2"]));
    assert!(
        e.contains("netray: warning: sockets not collected on node1 (node1: sock_diag"),
        "{e}"
    );
    assert!(
        e.contains("netray: warning: conntrack not collected on node2"),
        "{e}"
    );
    // Text: counted in the first line, then one note per part not collected.
    let (o, _) = run(&["scan", "--bundle", d], 1);
    let first = o.lines().next().unwrap();
    assert!(
        first.ends_with("(4 checks did not run on some nodes)"),
        "{first}"
    );
    assert!(
        o.contains(
            "note: sockets not collected on node1 (node1: sock_diag is not loaded and cannot \
             be): these checks did not run there (port-not-listening)"
        ),
        "{o}"
    );
    assert!(
        o.contains("these checks did not run there (conntrack-table-full, conntrack-drops, stale-conntrack-entry)"),
        "{o}"
    );
    // Without the cluster view, the Kubernetes checks are not listed twice.
    std::fs::remove_file(dir.path().join("cluster.json")).unwrap();
    let (o, _) = run(&["scan", "--bundle", d, "-o", "json"], 0);
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    let not_run = v["not_run"].as_array().unwrap();
    assert!(not_run[0].get("nodes").is_none(), "{o}");
    assert_eq!(
        not_run[1]["codes"],
        serde_json::json!(["conntrack-table-full", "conntrack-drops"]),
        "stale-conntrack-entry is a Kubernetes check: {o}"
    );
    assert_eq!(not_run.len(), 2, "port-not-listening is listed once: {o}");
    let (o, _) = run(&["scan", "--bundle", d], 0);
    assert!(
        o.lines()
            .next()
            .unwrap()
            .ends_with("(6 Kubernetes checks did not run; 2 checks did not run on some nodes)"),
        "{o}"
    );
}

#[test]
fn port_not_listening_evidence_adds_what_does_listen() {
    let h = example("healthy");
    let (o, _) = run(
        &[
            "diagnose",
            "--bundle",
            &h,
            "--from",
            "pod/default/web-0",
            "--to",
            "pod/default/web-2:9999",
        ],
        1,
    );
    assert!(
        o.contains("1. port-not-listening  (node node1, pod/default/web-2, netns "),
        "{o}"
    );
    assert!(o.contains("     evidence: sockets (tcp) in node1/"), "{o}");
    assert!(o.contains(":8080"), "{o}");
    assert!(!o.contains("evidence: no socket listens"), "{o}");
    assert!(
        o.contains("node1/pod/default/web-2"),
        "pod namespace not named: {o}"
    );
}

#[test]
fn lab_list_says_when_empty_and_down_of_an_unknown_lab_fails() {
    let (o, _) = run(&["lab", "list"], 0);
    assert!(!o.trim().is_empty(), "lab list printed nothing");
    // `-o` here too: the labs by tag, and the faults `lab up --fault` takes.
    let (o, _) = run(&["lab", "list", "-o", "json"], 0);
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert!(v["labs"].is_object(), "{o}");
    let (o, _) = run(&["lab", "faults", "-o", "json"], 0);
    let v: serde_json::Value = serde_json::from_str(&o).unwrap();
    assert!(
        v["faults"]
            .as_array()
            .is_some_and(|f| f.iter().any(|x| x == "forward-drop:NODE")),
        "{o}"
    );
    let (_, e) = run(&["lab", "down", "no-such-lab-zz9"], 2);
    assert!(e.contains("no lab `no-such-lab-zz9` on this host"), "{e}");
}

/// Every non-integer number in a JSON document.
fn fractions(v: &serde_json::Value) -> Vec<f64> {
    match v {
        serde_json::Value::Number(n) if n.is_f64() => vec![n.as_f64().unwrap()],
        serde_json::Value::Array(a) => a.iter().flat_map(fractions).collect(),
        serde_json::Value::Object(o) => o.values().flat_map(fractions).collect(),
        _ => Vec::new(),
    }
}

fn copy_dir(from: &Path, to: &Path) {
    std::fs::create_dir_all(to).unwrap();
    for e in std::fs::read_dir(from).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), to.join(e.file_name())).unwrap();
    }
}

/// The string literals of a line of Rust (`"…"`, escapes kept as written).
fn string_literals(line: &str) -> Vec<&str> {
    let mut out = Vec::new();
    let b = line.as_bytes();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'/' if b.get(i + 1) == Some(&b'/') => break,
            // A char literal: `'"'`, `'\''`.
            b'\'' if b.get(i + 2) == Some(&b'\'') => i += 3,
            b'\'' if b.get(i + 1) == Some(&b'\\') && b.get(i + 3) == Some(&b'\'') => i += 4,
            b'"' => {
                let start = i + 1;
                i += 1;
                while i < b.len() && b[i] != b'"' {
                    i += if b[i] == b'\\' { 2 } else { 1 };
                }
                out.push(&line[start..i.min(b.len())]);
                i += 1;
            }
            _ => i += 1,
        }
    }
    out
}

/// Counts in output go through `netray_snapshot::text::count`: no "server(s)", "branch(es)"
/// is left in any string of the sources.
#[test]
fn no_parenthesised_plurals_in_output() {
    fn walk(dir: &Path, out: &mut Vec<PathBuf>) {
        for e in std::fs::read_dir(dir).unwrap() {
            let p = e.unwrap().path();
            if p.is_dir() {
                walk(&p, out);
            } else if p.extension().is_some_and(|x| x == "rs") {
                out.push(p);
            }
        }
    }
    let crates = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("..");
    let mut files = Vec::new();
    for c in std::fs::read_dir(&crates).unwrap() {
        let src = c.unwrap().path().join("src");
        if src.is_dir() {
            walk(&src, &mut files);
        }
    }
    assert!(
        files.len() > 50,
        "sources not found under {}",
        crates.display()
    );
    let mut bad = Vec::new();
    for f in &files {
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            for lit in string_literals(line) {
                let plural = ["(s)", "(es)"].iter().any(|p| {
                    lit.match_indices(p).any(|(i, _)| {
                        lit[..i]
                            .chars()
                            .next_back()
                            .is_some_and(|c| c.is_ascii_alphabetic())
                    })
                });
                if plural {
                    bad.push(format!("{}:{}: {lit}", f.display(), n + 1));
                }
            }
        }
    }
    assert!(bad.is_empty(), "use text::count:\n{}", bad.join("\n"));
    // The scanner itself finds one.
    assert_eq!(
        string_literals(r#"x("a {} server(s)", '"', 1) // "b(s)""#),
        ["a {} server(s)"]
    );
}
