//! The bundled examples (real snapshots captured from the lab by `scripts/capture-examples.sh`)
//! give the answers their READMEs promise, and every JSON document netray prints for them
//! conforms to the schemas under `schemas/`. Needs no root: it reads checked-in bundles.

use std::path::PathBuf;
use std::process::Command;

use serde_json::Value;

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn example(name: &str) -> String {
    workspace()
        .join("examples")
        .join(name)
        .to_string_lossy()
        .into_owned()
}

fn validator(schema: &str) -> jsonschema::Validator {
    let path = workspace().join("schemas").join(schema);
    let text = std::fs::read_to_string(&path).unwrap();
    let schema: Value = serde_json::from_str(&text).unwrap();
    jsonschema::validator_for(&schema)
        .unwrap_or_else(|e| panic!("{} is not a valid JSON Schema: {e}", path.display()))
}

/// Run netray with `args`, check the exit code, parse stdout as JSON and validate it.
fn run_json(args: &[&str], schema: &jsonschema::Validator, exit: i32) -> Value {
    let out = Command::new(NETRAY).args(args).output().unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(
        out.status.code(),
        Some(exit),
        "netray {}: exit {:?}, stderr: {stderr}",
        args.join(" "),
        out.status.code()
    );
    let doc: Value = serde_json::from_slice(&out.stdout)
        .unwrap_or_else(|e| panic!("netray {}: stdout is not JSON: {e}", args.join(" ")));
    let errors: Vec<String> = schema
        .iter_errors(&doc)
        .map(|e| format!("{} at {}", e, e.instance_path()))
        .collect();
    assert!(
        errors.is_empty(),
        "netray {}: output does not conform to its schema:\n{}",
        args.join(" "),
        errors.join("\n")
    );
    doc
}

/// What an example's README says `netray diagnose` must answer.
struct Expect {
    bundle: &'static str,
    from: &'static str,
    to: &'static str,
    verdict: &'static str,
    /// `(code, node)` of every root cause, in any order.
    causes: &'static [(&'static str, &'static str)],
    /// Reachable endpoints, out of all endpoints.
    reachable: (usize, usize),
    /// A string some piece of evidence must contain.
    evidence: &'static str,
}

const CASES: &[Expect] = &[
    Expect {
        bundle: "healthy",
        from: "pod/default/web-0",
        to: "svc/default/web:80",
        verdict: "reachable",
        causes: &[],
        reachable: (6, 6),
        evidence: "",
    },
    Expect {
        bundle: "healthy",
        from: "external/192.168.60.200",
        to: "node/node1:32100",
        verdict: "reachable",
        causes: &[],
        reachable: (1, 1),
        evidence: "",
    },
    Expect {
        bundle: "000-bridge-nf-masq",
        from: "node/node0",
        to: "svc/default/vm:80",
        verdict: "unreachable",
        causes: &[("bridge-nf-snat-conflict", "node0")],
        reachable: (0, 1),
        evidence: "MASQUERADE --random-fully",
    },
    Expect {
        bundle: "001-checklist",
        from: "pod/default/web-0",
        to: "pod/default/web-2:8080",
        verdict: "unreachable",
        causes: &[("ip-forward-disabled", "node1")],
        reachable: (0, 1),
        evidence: "net.ipv4.ip_forward = 0",
    },
    Expect {
        bundle: "001-checklist",
        from: "external/192.168.50.100",
        to: "node/node2:30080",
        verdict: "unreachable",
        // rp_filter drops every client packet on node2; behind it (revealed by the fix proof)
        // the endpoints on node1 meet ip_forward=0 and web-1 on node0 has no default route.
        causes: &[
            ("rp-filter-drop", "node2"),
            ("ip-forward-disabled", "node1"),
            ("pod-no-default-route", "node0"),
        ],
        reachable: (0, 6),
        evidence: "eth1",
    },
    Expect {
        bundle: "001-checklist",
        from: "pod/default/web-1",
        to: "svc/default/web:80",
        verdict: "unreachable",
        // Behind the missing route (revealed by the fix proof): ip_forward=0 on node1.
        causes: &[
            ("pod-no-default-route", "node0"),
            ("ip-forward-disabled", "node1"),
        ],
        reachable: (0, 1),
        evidence: "10.244.0.0/24 dev eth0",
    },
    Expect {
        bundle: "002-stale-vtep",
        from: "pod/default/web-0",
        to: "svc/default/web:53/udp",
        verdict: "partial",
        causes: &[
            ("stale-vxlan-neighbor", "node2"),
            ("stale-vxlan-neighbor", "node3"),
        ],
        reachable: (2, 4),
        evidence: "lladdr 0e:6e:72:00:00:00 PERMANENT",
    },
    Expect {
        bundle: "003-forward-drop",
        from: "node/node0",
        to: "svc/default/web:80",
        verdict: "partial",
        causes: &[("forward-policy-drop", "node1")],
        reachable: (4, 6),
        evidence: ":FORWARD DROP",
    },
    Expect {
        bundle: "004-local-service-ip",
        from: "external/192.168.60.200",
        to: "node/node1:32100",
        verdict: "unreachable",
        causes: &[("martian-source", "node1")],
        reachable: (0, 1),
        evidence: "address 192.168.60.200/32 dev kube-ipvs0",
    },
    Expect {
        bundle: "005-stale-conntrack",
        from: "pod/default/web-0",
        to: "svc/default/web:53/udp",
        verdict: "reachable",
        causes: &[],
        reachable: (5, 5),
        evidence: "",
    },
    Expect {
        bundle: "006-dualstack-v6-forward-drop",
        from: "pod/default/client-0",
        to: "svc/default/web-remote:80",
        verdict: "partial",
        causes: &[("forward-policy-drop", "node1")],
        reachable: (1, 2),
        evidence: ":FORWARD DROP",
    },
    Expect {
        bundle: "006-dualstack-v6-forward-drop",
        from: "pod/default/client-0",
        to: "[fd00:96::11]:80",
        verdict: "unreachable",
        causes: &[("forward-policy-drop", "node1")],
        reachable: (0, 1),
        evidence: ":FORWARD DROP",
    },
    Expect {
        bundle: "006-dualstack-v6-forward-drop",
        from: "pod/default/client-0",
        to: "svc/default/web-local:80",
        verdict: "reachable",
        causes: &[],
        reachable: (2, 2),
        evidence: "",
    },
];

#[test]
fn diagnose_gives_each_example_its_documented_answer() {
    let schema = validator("diagnose.schema.json");
    for case in CASES {
        let bundle = example(case.bundle);
        let exit = if case.verdict == "reachable" { 0 } else { 1 };
        let args = [
            "diagnose", "--bundle", &bundle, "--from", case.from, "--to", case.to, "-o", "json",
        ];
        let doc = run_json(&args, &schema, exit);
        let what = format!("{}: {} → {}", case.bundle, case.from, case.to);
        assert_eq!(doc["verdict"], case.verdict, "{what}: {doc:#}");
        let endpoints = doc["endpoints"].as_array().unwrap();
        let ok = endpoints.iter().filter(|e| e["reachable"] == true).count();
        assert_eq!((ok, endpoints.len()), case.reachable, "{what}: endpoints");
        let causes: Vec<(String, String)> = doc["causes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|c| {
                let code = c["code"].as_str().unwrap();
                assert!(
                    netray_diagnose::catalog::known_code(code).is_some(),
                    "{what}: cause code {code} is not documented in the catalog"
                );
                (code.to_string(), c["node"].as_str().unwrap().to_string())
            })
            .collect();
        let mut want: Vec<(String, String)> = case
            .causes
            .iter()
            .map(|(c, n)| (c.to_string(), n.to_string()))
            .collect();
        let mut got = causes.clone();
        want.sort();
        got.sort();
        assert_eq!(got, want, "{what}: root causes");
        if !case.evidence.is_empty() {
            let found = doc["causes"].as_array().unwrap().iter().any(|c| {
                c["evidence"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .any(|e| e.as_str().unwrap().contains(case.evidence))
            });
            assert!(
                found,
                "{what}: no evidence contains {:?}: {doc:#}",
                case.evidence
            );
        }
        // Every failing endpoint says where and why it failed, naming one of the causes.
        for e in endpoints.iter().filter(|e| e["reachable"] == false) {
            let failures = e["failures"].as_array().unwrap();
            assert!(!failures.is_empty(), "{what}: {e} has no failure point");
            for f in failures {
                assert!(
                    causes.iter().any(|(c, _)| f["code"] == c.as_str()),
                    "{what}: failure {f} names no listed cause"
                );
            }
        }
    }
}

#[test]
fn scan_reports_each_example_and_is_quiet_on_healthy() {
    let schema = validator("scan.schema.json");
    // (bundle, critical (code, node) findings the README promises)
    let cases: &[(&str, &[(&str, &str)])] = &[
        ("healthy", &[]),
        (
            "000-bridge-nf-masq",
            &[("bridge-nf-snat-conflict", "node0")],
        ),
        (
            "001-checklist",
            &[
                ("ip-forward-disabled", "node1"),
                ("pod-no-default-route", "node0"),
            ],
        ),
        (
            "002-stale-vtep",
            &[
                ("stale-vxlan-neighbor", "node2"),
                ("stale-vxlan-neighbor", "node3"),
            ],
        ),
        ("003-forward-drop", &[("forward-policy-drop", "node1")]),
        ("004-local-service-ip", &[("lb-ip-in-local-table", "node1")]),
        ("005-stale-conntrack", &[]),
        (
            "006-dualstack-v6-forward-drop",
            &[("ip6-forward-policy-drop", "node1")],
        ),
    ];
    for (bundle, want) in cases {
        let path = example(bundle);
        let exit = if want.is_empty() { 0 } else { 1 };
        let doc = run_json(
            &[
                "scan",
                "--bundle",
                &path,
                "-o",
                "json",
                "--fail-on",
                "critical",
            ],
            &schema,
            exit,
        );
        let findings = doc["findings"].as_array().unwrap();
        let mut critical: Vec<(&str, &str)> = findings
            .iter()
            .filter(|f| f["severity"] == "critical")
            .map(|f| (f["code"].as_str().unwrap(), f["node"].as_str().unwrap()))
            .collect();
        critical.sort();
        let mut want = want.to_vec();
        want.sort();
        assert_eq!(critical, want, "{bundle}: critical findings");
        // The healthy lab has one Service without endpoints by design, and nothing else.
        if *bundle == "healthy" {
            let codes: Vec<&str> = findings
                .iter()
                .map(|f| f["code"].as_str().unwrap())
                .collect();
            assert_eq!(codes, ["no-endpoints"], "healthy: findings");
        }
        // Severity order: most severe first.
        let rank = |s: &Value| match s.as_str().unwrap() {
            "critical" => 0,
            "warning" => 1,
            _ => 2,
        };
        assert!(
            findings
                .windows(2)
                .all(|w| rank(&w[0]["severity"]) <= rank(&w[1]["severity"])),
            "{bundle}: findings not ordered by severity"
        );
    }
    // The default threshold (warning) counts the healthy lab's by-design warning.
    let status = Command::new(NETRAY)
        .args(["scan", "--bundle", &example("healthy")])
        .output()
        .unwrap()
        .status;
    assert_eq!(status.code(), Some(1));
}

/// 005: the client's real source port (named by the scan) follows the stale entry; a new
/// connection works and the answer says which port does not.
#[test]
fn stale_conntrack_example_follows_the_collected_entry() {
    let bundle = example("005-stale-conntrack");
    let scan = run_json(
        &["scan", "--bundle", &bundle, "-o", "json"],
        &validator("scan.schema.json"),
        1,
    );
    let finding = scan["findings"]
        .as_array()
        .unwrap()
        .iter()
        .find(|f| f["code"] == "stale-conntrack-entry" && f["node"] == "node0")
        .expect("scan reports the stale entry on node0");
    let evidence = finding["evidence"][0].as_str().unwrap();
    let sport = evidence
        .split_whitespace()
        .find_map(|w| w.strip_prefix("sport="))
        .expect("the entry's source port");
    let diagnose = validator("diagnose.schema.json");
    let flow = [
        "diagnose",
        "--bundle",
        &bundle,
        "--from",
        "pod/default/web-0",
        "--to",
        "svc/default/web:53/udp",
        "-o",
        "json",
    ];
    let new = run_json(&flow, &diagnose, 0);
    assert!(
        new["notes"]
            .to_string()
            .contains(&format!("--sport {sport}")),
        "a new connection's answer names the stale port: {}",
        new["notes"]
    );
    let mut with_port = flow.to_vec();
    with_port.extend(["--sport", sport]);
    let old = run_json(&with_port, &diagnose, 1);
    assert_eq!(old["verdict"], "unreachable");
    assert_eq!(old["causes"][0]["code"], "stale-conntrack-entry");
    assert_eq!(old["causes"][0]["node"], "node0");
    let fix = old["causes"][0]["fix"].as_str().unwrap();
    assert!(fix.contains(&format!("--orig-port-src {sport}")), "{fix}");
}
