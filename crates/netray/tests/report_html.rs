//! The HTML report (`--html`) of every bundled example, loaded in headless Chromium (Debian's
//! `chromium`): assertions on the DOM after the page's script ran — the drawn path has the
//! nodes, namespaces and pods the walk crossed, the failing hop is marked with its cause code
//! and nodes, the fix commands appear, the side panel opened on the first failure — and a
//! screenshot of each diagnosis kept under `target/report-screenshots/`; the interfaces,
//! bridges and VXLAN tunnels every branch crossed are drawn. Scans and audits render as
//! tables grouped by cause code (an audit's groups expand to their failing flows); hostile
//! names are escaped and never run.
//!
//! Without Chromium the tests are skipped with a message, except under `CI=true` where they
//! fail. `NETRAY_CHROMIUM` names another binary.

use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use serde_json::Value;

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");

/// One Chromium at a time (2 cores shared with the build).
static CHROMIUM: Mutex<()> = Mutex::new(());

fn workspace() -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .unwrap()
}

/// `target/report-screenshots/`: the reports and their screenshots, kept as test artifacts.
fn artifacts() -> PathBuf {
    let dir = Path::new(env!("CARGO_TARGET_TMPDIR"))
        .parent()
        .expect("target dir")
        .join("report-screenshots");
    std::fs::create_dir_all(&dir).unwrap();
    dir
}

/// The Chromium binary, or `None` (skipped with a message; a failure under `CI=true`).
fn chromium(test: &str) -> Option<PathBuf> {
    let candidates: Vec<PathBuf> = match std::env::var_os("NETRAY_CHROMIUM") {
        Some(p) => vec![PathBuf::from(p)],
        None => ["chromium", "chromium-browser", "google-chrome"]
            .iter()
            .flat_map(|n| {
                std::env::split_paths(&std::env::var_os("PATH").unwrap_or_default())
                    .map(move |d| d.join(n))
                    .collect::<Vec<_>>()
            })
            .collect(),
    };
    match candidates.into_iter().find(|p| p.is_file()) {
        Some(p) => Some(p),
        None if std::env::var("CI").as_deref() == Ok("true") => {
            panic!(
                "{test}: chromium is not installed (CI=true: the HTML report tests must run; .ci/apt-packages lists it)"
            )
        }
        None => {
            eprintln!(
                "SKIPPED {test}: chromium is not installed (apt-get install chromium, or set NETRAY_CHROMIUM)"
            );
            None
        }
    }
}

/// Run headless Chromium on `page` with `mode` (`--dump-dom` or `--screenshot=…`), offline,
/// with a fresh profile; stdout.
fn run_chromium(bin: &Path, mode: &str, page: &Path) -> String {
    run_chromium_at(bin, mode, page, "")
}

/// [`run_chromium`] on `page` + `fragment` (`#cause-1`).
fn run_chromium_at(bin: &Path, mode: &str, page: &Path, fragment: &str) -> String {
    let _one = CHROMIUM.lock().unwrap_or_else(|e| e.into_inner());
    let profile = tempfile::tempdir().unwrap();
    let url = format!(
        "file://{}{fragment}",
        page.canonicalize()
            .unwrap()
            .display()
            .to_string()
            .replace(' ', "%20")
    );
    let mut child = Command::new(bin)
        .args([
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--disable-quic",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            "--hide-scrollbars",
            "--window-size=1400,1000",
        ])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .arg(mode)
        .arg(&url)
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("cannot start {}: {e}", bin.display()));
    let mut stdout = child.stdout.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut s = String::new();
        std::io::Read::read_to_string(&mut stdout, &mut s).unwrap();
        s
    });
    let start = Instant::now();
    loop {
        if let Some(status) = child.try_wait().unwrap() {
            assert!(status.success(), "chromium {mode} {url}: {status}");
            break;
        }
        if start.elapsed() > Duration::from_secs(120) {
            let _ = child.kill();
            let _ = child.wait();
            panic!("chromium {mode} {url}: no answer in 120 s");
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    reader.join().unwrap()
}

/// Run netray; return (exit code, stdout).
fn netray(args: &[&str]) -> (i32, String) {
    let out = Command::new(NETRAY).args(args).output().unwrap();
    assert!(
        matches!(out.status.code(), Some(0 | 1)),
        "netray {}: {:?}\n{}",
        args.join(" "),
        out.status.code(),
        String::from_utf8_lossy(&out.stderr)
    );
    (
        out.status.code().unwrap(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
    )
}

/// Start tags named `name` in a serialized DOM, with their attributes (values unescaped).
fn tags(dom: &str, name: &str) -> Vec<BTreeMap<String, String>> {
    let open = format!("<{name}");
    let mut out = Vec::new();
    let mut rest = dom;
    while let Some(i) = rest.find(&open) {
        rest = &rest[i + open.len()..];
        if !rest.starts_with([' ', '>']) {
            continue;
        }
        let mut attrs = BTreeMap::new();
        let b = rest.as_bytes();
        let mut p = 0;
        loop {
            while p < b.len() && b[p] == b' ' {
                p += 1;
            }
            if p >= b.len() || b[p] == b'>' {
                break;
            }
            let start = p;
            while p < b.len() && !matches!(b[p], b'=' | b' ' | b'>') {
                p += 1;
            }
            let key = rest[start..p].to_string();
            let mut value = String::new();
            if p < b.len() && b[p] == b'=' {
                p += 2; // `="`
                let vstart = p;
                while p < b.len() && b[p] != b'"' {
                    p += 1;
                }
                value = unescape(&rest[vstart..p]);
                p += 1;
            }
            attrs.insert(key, value);
        }
        out.push(attrs);
    }
    out
}

fn unescape(s: &str) -> String {
    s.replace("&quot;", "\"")
        .replace("&lt;", "<")
        .replace("&gt;", ">")
        .replace("&nbsp;", "\u{a0}")
        .replace("&amp;", "&")
}

/// Text as the DOM serializer writes it.
fn text(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
}

fn has_class(t: &BTreeMap<String, String>, class: &str) -> bool {
    t.get("class")
        .is_some_and(|c| c.split_whitespace().any(|x| x == class))
}

/// The `<aside id="panel">` element's serialization.
fn panel(dom: &str) -> &str {
    let start = dom
        .find("<aside id=\"panel\"")
        .expect("the page has a panel");
    let end = dom[start..].find("</aside>").expect("panel closes") + start;
    &dom[start..end]
}

fn slug(parts: &[&str]) -> String {
    parts
        .join("--")
        .chars()
        .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
        .collect()
}

/// The flows of `crates/netray/tests/examples.rs` (bundle, from, to, verdict, causes).
type Case = (
    &'static str,
    &'static str,
    &'static str,
    &'static str,
    &'static [(&'static str, &'static str)],
);
const CASES: &[Case] = &[
    (
        "healthy",
        "pod/default/web-0",
        "svc/default/web:80",
        "reachable",
        &[],
    ),
    (
        "healthy",
        "external/192.168.60.200",
        "node/node1:32100",
        "reachable",
        &[],
    ),
    (
        "000-bridge-nf-masq",
        "node/node0",
        "svc/default/vm:80",
        "unreachable",
        &[("bridge-nf-snat-conflict", "node0")],
    ),
    (
        "001-checklist",
        "pod/default/web-0",
        "pod/default/web-2:8080",
        "unreachable",
        &[("ip-forward-disabled", "node1")],
    ),
    (
        "001-checklist",
        "external/192.168.50.100",
        "node/node2:30080",
        "unreachable",
        &[
            ("rp-filter-drop", "node2"),
            ("ip-forward-disabled", "node1"),
            ("pod-no-default-route", "node0"),
        ],
    ),
    (
        "001-checklist",
        "pod/default/web-1",
        "svc/default/web:80",
        "unreachable",
        &[
            ("pod-no-default-route", "node0"),
            ("ip-forward-disabled", "node1"),
        ],
    ),
    (
        "002-stale-vtep",
        "pod/default/web-0",
        "svc/default/web:53/udp",
        "partial",
        &[
            ("stale-vxlan-neighbor", "node2"),
            ("stale-vxlan-neighbor", "node3"),
        ],
    ),
    (
        "003-forward-drop",
        "node/node0",
        "svc/default/web:80",
        "partial",
        &[("forward-policy-drop", "node1")],
    ),
    (
        "004-local-service-ip",
        "external/192.168.60.200",
        "node/node1:32100",
        "unreachable",
        &[("martian-source", "node1")],
    ),
    (
        "005-stale-conntrack",
        "pod/default/web-0",
        "svc/default/web:53/udp",
        "reachable",
        &[],
    ),
    (
        "006-dualstack-v6-forward-drop",
        "pod/default/client-0",
        "svc/default/web-remote:80",
        "partial",
        &[("forward-policy-drop", "node1")],
    ),
    (
        "006-dualstack-v6-forward-drop",
        "pod/default/client-0",
        "svc/default/web-local:80",
        "reachable",
        &[],
    ),
];

/// The serialization of every lane (`<details class="lane …">`) drawn for `endpoint`.
fn lanes_of<'a>(dom: &'a str, endpoint: &str) -> Vec<&'a str> {
    let mut out = Vec::new();
    let mut rest = dom;
    while let Some(i) = rest.find("<details class=\"lane") {
        let lane = &rest[i..];
        let end = lane.find("</details>").expect("lane closes");
        let head = &tags(&lane[..end], "details")[0];
        if head.get("data-endpoint").map(String::as_str) == Some(endpoint) {
            out.push(&lane[..end]);
        }
        rest = &lane[end..];
    }
    out
}

/// What the path diagram draws of the branches to one endpoint: interfaces (in a namespace's
/// steps, or on the link a packet leaves by), bridge hops, VXLAN encapsulations and tunnel
/// labels.
#[derive(Debug, Default, PartialEq)]
struct Drawn {
    ifaces: BTreeSet<String>,
    bridges: usize,
    encaps: usize,
    tunnels: BTreeSet<String>,
}

/// What the diagram must draw for `branches` (the diagnosis JSON's), per endpoint.
fn expected_drawing(branches: &[Value]) -> BTreeMap<String, Drawn> {
    let mut want: BTreeMap<String, Drawn> = BTreeMap::new();
    for b in branches {
        let d = want
            .entry(b["endpoint"].as_str().unwrap().to_string())
            .or_default();
        for h in b["hops"].as_array().unwrap() {
            let step = &h["step"];
            match step["type"].as_str().unwrap() {
                "bridge" => d.bridges += 1,
                "encap" => {
                    d.encaps += 1;
                    d.tunnels.insert(format!(
                        "VXLAN {} vni {}",
                        step["dev"].as_str().unwrap(),
                        step["vni"]
                    ));
                }
                _ => {
                    for k in ["iif", "oif"] {
                        if let Some(i) = h[k].as_str() {
                            d.ifaces.insert(i.to_string());
                        }
                    }
                }
            }
        }
    }
    want
}

/// What the diagram in `dom` draws for `endpoint`.
fn drawing(dom: &str, endpoint: &str) -> Drawn {
    let mut d = Drawn::default();
    for lane in lanes_of(dom, endpoint) {
        for t in tags(lane, "li") {
            if has_class(&t, "iface") {
                d.ifaces.insert(t["data-iface"].clone());
            }
        }
        for t in tags(lane, "button") {
            match t.get("data-step").map(String::as_str) {
                Some("bridge") => d.bridges += 1,
                Some("encap") => d.encaps += 1,
                // A link between namespaces: `IFACE → NODE/NETNS/PEER`, drawn on the arrow.
                Some("transmit") if has_class(&t, "link") => {
                    let from = t["title"].split(" → ").next().unwrap();
                    d.ifaces.insert(from.to_string());
                }
                _ => {}
            }
        }
        let mut rest = lane;
        let open = "<span class=\"tunnel-lbl\">";
        while let Some(i) = rest.find(open) {
            rest = &rest[i + open.len()..];
            let end = rest.find("</span>").unwrap();
            d.tunnels.insert(unescape(&rest[..end]));
        }
    }
    d
}

#[test]
fn diagnose_report_draws_each_example_in_chromium() {
    let Some(bin) = chromium("diagnose_report_draws_each_example_in_chromium") else {
        return;
    };
    let dir = artifacts();
    // The bridges and tunnels drawn over all cases.
    let mut crossed = Drawn::default();
    for &(bundle, from, to, verdict, causes) in CASES {
        let what = format!("{bundle}: {from} → {to}");
        let name = slug(&[bundle, from, to]);
        let html = dir.join(format!("{name}.html"));
        let path = workspace().join("examples").join(bundle);
        let (code, json) = netray(&[
            "diagnose",
            "--bundle",
            path.to_str().unwrap(),
            "--from",
            from,
            "--to",
            to,
            "-o",
            "json",
            "--html",
            html.to_str().unwrap(),
        ]);
        assert_eq!(code, i32::from(verdict != "reachable"), "{what}");
        let doc: Value = serde_json::from_str(&json).unwrap();
        let dom = run_chromium(&bin, "--dump-dom", &html);

        // The page's script ran, and the verdict is the diagnosis's.
        let body = &tags(&dom, "body")[0];
        assert_eq!(
            body.get("data-ready").map(String::as_str),
            Some("true"),
            "{what}: script did not run"
        );
        let v = tags(&dom, "span")
            .into_iter()
            .find(|t| t.get("id").map(String::as_str) == Some("verdict"))
            .unwrap_or_else(|| panic!("{what}: no verdict"));
        assert_eq!(v["data-verdict"], verdict, "{what}");

        // The drawn path: one lane per branch, every node and namespace the walk crossed,
        // pods named pod/NS/NAME.
        let branches = doc["branches"].as_array().unwrap();
        let lanes = tags(&dom, "details")
            .into_iter()
            .filter(|t| has_class(t, "lane"))
            .count();
        assert_eq!(lanes, branches.len(), "{what}: lanes");
        let divs = tags(&dom, "div");
        let drawn_nodes: BTreeSet<&str> = divs
            .iter()
            .filter(|t| has_class(t, "node"))
            .map(|t| t["data-node"].as_str())
            .collect();
        let drawn_ns: BTreeSet<(&str, &str)> = divs
            .iter()
            .filter(|t| has_class(t, "ns"))
            .map(|t| (t["data-node"].as_str(), t["data-netns"].as_str()))
            .collect();
        let drawn_pods: BTreeSet<&str> = divs
            .iter()
            .filter_map(|t| t.get("data-pod").map(String::as_str))
            .collect();
        let hops = branches.iter().flat_map(|b| b["hops"].as_array().unwrap());
        for h in hops {
            let node = h["node"].as_str().unwrap();
            let netns = h["netns"].as_str().unwrap();
            assert!(drawn_nodes.contains(node), "{what}: node {node} not drawn");
            assert!(
                drawn_ns.contains(&(node, netns)),
                "{what}: namespace {node}/{netns} not drawn"
            );
            if let Some(pod) = h["pod"].as_str() {
                let want = format!("pod/{pod}");
                assert!(
                    drawn_pods.contains(want.as_str()),
                    "{what}: {want} not drawn"
                );
            }
        }
        if from.starts_with("pod/") {
            assert!(
                drawn_pods.contains(from),
                "{what}: the client {from} is not drawn"
            );
        }

        // Every interface, bridge hop and VXLAN tunnel the branches crossed is drawn.
        for (endpoint, want) in expected_drawing(branches) {
            let got = drawing(&dom, &endpoint);
            assert_eq!(got, want, "{what}: drawing of the branches to {endpoint}");
            crossed.bridges += want.bridges;
            crossed.encaps += want.encaps;
            crossed.tunnels.extend(want.tunnels);
        }

        // The failing hops: one per failing branch, marked with the cause code, the node
        // the cause is on and the node where the packet was lost — as the JSON says.
        let buttons = tags(&dom, "button");
        let failing: Vec<&BTreeMap<String, String>> =
            buttons.iter().filter(|t| has_class(t, "fail")).collect();
        let failing_branches = branches.iter().filter(|b| b["reachable"] == false).count();
        assert_eq!(failing.len(), failing_branches, "{what}: failing hops");
        let marked: BTreeSet<(String, String, String)> = failing
            .iter()
            .map(|t| {
                (
                    t.get("data-cause").cloned().unwrap_or_default(),
                    t.get("data-cause-node").cloned().unwrap_or_default(),
                    t.get("data-node").cloned().unwrap_or_default(),
                )
            })
            .collect();
        let expected: BTreeSet<(String, String, String)> = doc["endpoints"]
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|e| e["failures"].as_array().cloned().unwrap_or_default())
            .map(|f| {
                (
                    f["code"].as_str().unwrap().to_string(),
                    f["cause_node"].as_str().unwrap().to_string(),
                    f["node"].as_str().unwrap().to_string(),
                )
            })
            .collect();
        assert_eq!(marked, expected, "{what}: failing hops' causes");
        for (code, node, _) in &marked {
            assert!(
                causes.contains(&(code.as_str(), node.as_str())),
                "{what}: {code} on {node} is not one of the example's causes"
            );
        }

        // Every root cause has its card, with its fix commands and where to run them.
        let cards: BTreeSet<(String, String)> = tags(&dom, "article")
            .into_iter()
            .filter(|t| has_class(t, "cause") && t.contains_key("id"))
            .map(|t| (t["data-code"].clone(), t["data-node"].clone()))
            .collect();
        let want: BTreeSet<(String, String)> = causes
            .iter()
            .map(|(c, n)| (c.to_string(), n.to_string()))
            .collect();
        assert_eq!(cards, want, "{what}: cause cards");
        for c in doc["causes"].as_array().unwrap() {
            for f in c["fix_commands"].as_array().cloned().unwrap_or_default() {
                let run = f["run"].as_str().unwrap();
                assert!(
                    dom.contains(&format!("<code class=\"cmd\">{}</code>", text(run))),
                    "{what}: fix command {run:?} not shown"
                );
                let node = f["node"].as_str().unwrap();
                assert!(
                    tags(&dom, "tr")
                        .iter()
                        .any(|t| t.get("data-node").map(String::as_str) == Some(node)
                            && t.get("data-netns").map(String::as_str) == f["netns"].as_str()),
                    "{what}: fix command {run:?} does not say where to run it"
                );
            }
        }

        // The script opened the panel on the first failing hop, with its cause and fix.
        let p = panel(&dom);
        if failing.is_empty() {
            assert!(p.contains("panel-empty"), "{what}: panel should be empty");
        } else {
            assert!(
                p.contains("data-selected=\"hop-"),
                "{what}: panel not opened"
            );
            let first = &failing[0];
            assert!(
                p.contains(&format!("data-code=\"{}\"", first["data-cause"])),
                "{what}: panel does not show the failing hop's cause"
            );
            let first_cause = doc["causes"]
                .as_array()
                .unwrap()
                .iter()
                .find(|c| {
                    c["code"] == first["data-cause"].as_str()
                        && c["node"] == first["data-cause-node"].as_str()
                })
                .unwrap();
            if let Some(f) = first_cause["fix_commands"]
                .as_array()
                .and_then(|f| f.first())
            {
                assert!(
                    p.contains(&text(f["run"].as_str().unwrap())),
                    "{what}: panel does not show the fix"
                );
            }
        }

        // A screenshot, kept as an artifact.
        let png = dir.join(format!("{name}.png"));
        let _ = std::fs::remove_file(&png);
        run_chromium(&bin, &format!("--screenshot={}", png.display()), &html);
        let bytes = std::fs::read(&png).unwrap_or_else(|e| panic!("{what}: no screenshot: {e}"));
        assert!(
            bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000,
            "{what}: screenshot"
        );
        eprintln!("{what}: {}", png.display());
    }
    // The cross-node paths went over bridges (cni0, the underlay switch) and through both
    // flannel VXLAN devices (IPv4 flannel.1, IPv6 flannel-v6.1 in the dual-stack example).
    assert!(crossed.bridges > 0 && crossed.encaps > 0, "{crossed:?}");
    for dev in ["flannel.1", "flannel-v6.1"] {
        assert!(
            crossed
                .tunnels
                .iter()
                .any(|t| t.starts_with(&format!("VXLAN {dev} "))),
            "no {dev} tunnel drawn: {crossed:?}"
        );
    }
}

#[test]
fn trace_report_draws_every_branch_in_chromium() {
    let Some(bin) = chromium("trace_report_draws_every_branch_in_chromium") else {
        return;
    };
    let dir = artifacts();
    let html = dir.join("trace--003-forward-drop.html");
    let bundle = workspace().join("examples/003-forward-drop");
    let (code, json) = netray(&[
        "trace",
        "--bundle",
        bundle.to_str().unwrap(),
        "--from",
        "192.168.50.10",
        "--to",
        "10.96.0.100:80",
        "-o",
        "json",
        "--html",
        html.to_str().unwrap(),
    ]);
    assert_eq!(code, 1);
    let trace: Value = serde_json::from_str(&json).unwrap();
    let dom = run_chromium(&bin, "--dump-dom", &html);
    assert_eq!(tags(&dom, "body")[0]["data-report"], "trace");
    assert_eq!(tags(&dom, "body")[0]["data-ready"], "true");
    let branches = trace["branches"].as_array().unwrap();
    let lanes: Vec<_> = tags(&dom, "details")
        .into_iter()
        .filter(|t| has_class(t, "lane"))
        .collect();
    assert_eq!(lanes.len(), branches.len());
    let want: BTreeSet<(String, String)> = branches
        .iter()
        .filter(|b| b["disposition"] != "delivered")
        .map(|b| {
            (
                b["cause"].as_str().unwrap().to_string(),
                b["decided_by"][0]["node"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    assert_eq!(
        want,
        BTreeSet::from([("forward-policy-drop".to_string(), "node1".to_string())])
    );
    let got: BTreeSet<(String, String)> = tags(&dom, "button")
        .into_iter()
        .filter(|t| has_class(t, "fail"))
        .map(|t| (t["data-cause"].clone(), t["data-cause-node"].clone()))
        .collect();
    assert_eq!(got, want);
    // The deciding object (the FORWARD policy) is quoted in the panel.
    assert!(panel(&dom).contains(":FORWARD DROP"), "{}", panel(&dom));
    let png = dir.join("trace--003-forward-drop.png");
    run_chromium(&bin, &format!("--screenshot={}", png.display()), &html);
    assert!(png.is_file());
}

#[test]
fn scan_report_groups_findings_by_code_in_chromium() {
    let Some(bin) = chromium("scan_report_groups_findings_by_code_in_chromium") else {
        return;
    };
    let dir = artifacts();
    for bundle in ["healthy", "001-checklist", "002-stale-vtep"] {
        let html = dir.join(format!("scan--{bundle}.html"));
        let path = workspace().join("examples").join(bundle);
        let (_, json) = netray(&[
            "scan",
            "--bundle",
            path.to_str().unwrap(),
            "-o",
            "json",
            "--html",
            html.to_str().unwrap(),
        ]);
        let doc: Value = serde_json::from_str(&json).unwrap();
        let mut want: BTreeMap<String, usize> = BTreeMap::new();
        for f in doc["findings"].as_array().unwrap() {
            *want
                .entry(f["code"].as_str().unwrap().to_string())
                .or_default() += 1;
        }
        let dom = run_chromium(&bin, "--dump-dom", &html);
        assert_eq!(tags(&dom, "body")[0]["data-ready"], "true", "{bundle}");
        let got: BTreeMap<String, usize> = tags(&dom, "tbody")
            .into_iter()
            .filter(|t| has_class(t, "group"))
            .map(|t| (t["data-code"].clone(), t["data-count"].parse().unwrap()))
            .collect();
        assert_eq!(got, want, "{bundle}: groups");
        let rows = tags(&dom, "tr")
            .into_iter()
            .filter(|t| has_class(t, "finding"))
            .count();
        assert_eq!(
            rows,
            doc["findings"].as_array().unwrap().len(),
            "{bundle}: rows"
        );
        if want.is_empty() {
            assert!(dom.contains("no findings: clean"), "{bundle}");
        }
        let png = dir.join(format!("scan--{bundle}.png"));
        run_chromium(&bin, &format!("--screenshot={}", png.display()), &html);
        assert!(png.is_file(), "{bundle}: screenshot");
    }
}

#[test]
fn hostile_names_are_escaped_and_never_run_in_chromium() {
    let Some(bin) = chromium("hostile_names_are_escaped_and_never_run_in_chromium") else {
        return;
    };
    // A real trace, with attacker-controlled strings planted where a cluster's names, rule
    // comments and socket names end up.
    let bundle = workspace().join("examples/003-forward-drop");
    let (_, json) = netray(&[
        "trace",
        "--bundle",
        bundle.to_str().unwrap(),
        "--from",
        "192.168.50.10",
        "--to",
        "10.96.0.100:80",
        "-o",
        "json",
    ]);
    let payload = "\"'><img src=x onerror=\"document.body.dataset.pwned=1\"></template></script><script>document.body.dataset.pwned=2</script>\u{202e}";
    let mut v: Value = serde_json::from_str(&json).unwrap();
    fn plant(v: &mut Value, payload: &str) {
        match v {
            Value::Object(m) => {
                for (k, x) in m.iter_mut() {
                    match (k.as_str(), &*x) {
                        (
                            "netns" | "text" | "reason" | "start" | "bridge" | "to",
                            Value::String(s),
                        ) => {
                            *x = Value::String(format!("{s}{payload}"));
                        }
                        _ => plant(x, payload),
                    }
                }
            }
            Value::Array(a) => a.iter_mut().for_each(|x| plant(x, payload)),
            _ => {}
        }
    }
    plant(&mut v, payload);
    let trace: netray_datapath::Trace = serde_json::from_value(v).unwrap();
    let meta = netray_report::Meta {
        source: format!("bundle{payload}"),
    };
    let html = netray_report::trace(&trace, &meta);
    assert!(!html.contains("<img"), "raw markup in the report");
    assert!(
        !html.contains("<script>document"),
        "raw script in the report"
    );
    let path = artifacts().join("hostile.html");
    std::fs::write(&path, &html).unwrap();
    let dom = run_chromium(&bin, "--dump-dom", &path);
    let body = &tags(&dom, "body")[0];
    assert_eq!(body.get("data-ready").map(String::as_str), Some("true"));
    assert!(!body.contains_key("data-pwned"), "injected script ran");
    assert!(tags(&dom, "img").is_empty(), "injected element");
    assert_eq!(
        tags(&dom, "script").len(),
        1,
        "only the report's own script"
    );
}

#[test]
fn clicking_a_cause_or_hop_selects_it_in_chromium() {
    let Some(bin) = chromium("clicking_a_cause_or_hop_selects_it_in_chromium") else {
        return;
    };
    // A selection is kept in the address (`#cause-N`, `#hop-L-H`), so loading one is what a
    // click does.
    let html = artifacts().join("select--002-stale-vtep.html");
    let bundle = workspace().join("examples/002-stale-vtep");
    let (_, json) = netray(&[
        "diagnose",
        "--bundle",
        bundle.to_str().unwrap(),
        "--from",
        "pod/default/web-0",
        "--to",
        "svc/default/web:53/udp",
        "-o",
        "json",
        "--html",
        html.to_str().unwrap(),
    ]);
    let doc: Value = serde_json::from_str(&json).unwrap();
    let second = &doc["causes"][1];
    let dom = run_chromium_at(&bin, "--dump-dom", &html, "#cause-1");
    let p = panel(&dom);
    assert!(p.contains("data-selected=\"cause-1\""), "{p}");
    assert!(p.contains(&format!(
        "data-code=\"{}\" data-node=\"{}\"",
        second["code"].as_str().unwrap(),
        second["node"].as_str().unwrap()
    )));
    for f in second["fix_commands"].as_array().unwrap() {
        assert!(p.contains(&text(f["run"].as_str().unwrap())), "{p}");
    }
    // The hops that cause decided are highlighted, and only those.
    let selected: Vec<BTreeMap<String, String>> = tags(&dom, "button")
        .into_iter()
        .filter(|t| has_class(t, "sel"))
        .collect();
    assert!(!selected.is_empty());
    for t in &selected {
        assert_eq!(t["data-cause-idx"], "1");
        assert_eq!(t["data-cause-node"], second["node"].as_str().unwrap());
    }
    // A hop: its details (the route it took) in the panel.
    let dom = run_chromium_at(&bin, "--dump-dom", &html, "#hop-0-1");
    let p = panel(&dom);
    assert!(p.contains("data-selected=\"hop-0-1\""), "{p}");
    assert!(p.contains("class=\"detail\"") && p.contains("route"), "{p}");
}

#[test]
fn audit_report_groups_failures_by_cause_in_chromium() {
    let Some(bin) = chromium("audit_report_groups_failures_by_cause_in_chromium") else {
        return;
    };
    let dir = artifacts();
    let html = dir.join("audit--003-forward-drop.html");
    let bundle = workspace().join("examples/003-forward-drop");
    let (code, json) = netray(&[
        "audit",
        "--bundle",
        bundle.to_str().unwrap(),
        "--list-flows",
        "-o",
        "json",
        "--html",
        html.to_str().unwrap(),
    ]);
    assert_eq!(code, 1, "003's FORWARD DROP is critical");
    let doc: Value = serde_json::from_str(&json).unwrap();
    let groups = doc["groups"].as_array().unwrap();
    assert!(
        groups
            .iter()
            .any(|g| g["cause"]["code"] == "forward-policy-drop" && g["cause"]["node"] == "node1"),
        "{json}"
    );
    let dom = run_chromium(&bin, "--dump-dom", &html);
    let body = &tags(&dom, "body")[0];
    assert_eq!(body["data-report"], "audit");
    assert_eq!(body["data-ready"], "true");
    let v = tags(&dom, "span")
        .into_iter()
        .find(|t| t.get("id").map(String::as_str) == Some("verdict"))
        .unwrap();
    assert_eq!(v["data-verdict"], "critical");

    // One row group per failure group, in the audit's order, with its counts.
    let drawn: Vec<BTreeMap<String, String>> = tags(&dom, "tbody")
        .into_iter()
        .filter(|t| has_class(t, "group"))
        .collect();
    assert_eq!(drawn.len(), groups.len(), "groups");
    for (t, g) in drawn.iter().zip(groups) {
        let c = &g["cause"];
        let what = format!("{} on {}", c["code"], c["node"]);
        assert_eq!(t["data-code"], c["code"].as_str().unwrap(), "{what}");
        assert_eq!(t["data-node"], c["node"].as_str().unwrap(), "{what}");
        assert_eq!(t["data-netns"], c["netns"].as_str().unwrap(), "{what}");
        assert_eq!(t["data-flows"], g["flows"].to_string(), "{what}");
        let len = |k: &str| g[k].as_array().unwrap().len().to_string();
        assert_eq!(t["data-sources"], len("sources"), "{what}");
        assert_eq!(t["data-endpoints"], len("endpoints"), "{what}");
        assert_eq!(t["data-failing"], len("failing"), "{what}");
        assert!(has_class(
            t,
            &format!("sev-{}", c["severity"].as_str().unwrap())
        ));
        // The deciding objects and the fix are in the row.
        for o in c["objects"].as_array().unwrap() {
            let kind = o["kind"].as_str().unwrap();
            assert!(
                dom.contains(&format!("<li data-kind=\"{kind}\">")),
                "{what}: object {kind} not shown"
            );
        }
        for f in c["fix_commands"].as_array().cloned().unwrap_or_default() {
            let run = f["run"].as_str().unwrap();
            assert!(
                dom.contains(&format!("<code class=\"cmd\">{}</code>", text(run))),
                "{what}: fix {run:?} not shown"
            );
        }
        if c["fix_commands"].as_array().is_none_or(Vec::is_empty) {
            assert!(
                dom.contains(&format!(
                    "<p class=\"fix-text\">{}</p>",
                    text(c["fix"].as_str().unwrap())
                )),
                "{what}: fix text not shown"
            );
        }
    }
    // Each group expands to its failing flows: every failing walk of the JSON, in its group.
    let summaries = tags(&dom, "details")
        .into_iter()
        .filter(|t| has_class(t, "failing"))
        .count();
    assert_eq!(summaries, groups.len(), "one expandable list per group");
    let want: BTreeSet<(String, String, String)> = groups
        .iter()
        .flat_map(|g| g["failing"].as_array().unwrap())
        .map(|f| {
            (
                f["from"].as_str().unwrap().to_string(),
                f["to"].as_str().unwrap().to_string(),
                f["endpoint"].as_str().unwrap().to_string(),
            )
        })
        .collect();
    let rows: Vec<BTreeMap<String, String>> = tags(&dom, "tr")
        .into_iter()
        .filter(|t| has_class(t, "flow"))
        .collect();
    let total: usize = groups
        .iter()
        .map(|g| g["failing"].as_array().unwrap().len())
        .sum();
    assert_eq!(rows.len(), total, "failing flow rows");
    let got: BTreeSet<(String, String, String)> = rows
        .iter()
        .map(|t| {
            (
                t["data-from"].clone(),
                t["data-to"].clone(),
                t["data-endpoint"].clone(),
            )
        })
        .collect();
    assert_eq!(got, want, "failing flows");
    let png = dir.join("audit--003-forward-drop.png");
    let _ = std::fs::remove_file(&png);
    run_chromium(&bin, &format!("--screenshot={}", png.display()), &html);
    let bytes = std::fs::read(&png).expect("audit screenshot");
    assert!(bytes.starts_with(b"\x89PNG") && bytes.len() > 10_000);

    // --html lists the failing flows in the page only: without --list-flows the JSON is as
    // without --html.
    let html2 = dir.join("audit--003-forward-drop-nolist.html");
    let (_, json) = netray(&[
        "audit",
        "--bundle",
        bundle.to_str().unwrap(),
        "-o",
        "json",
        "--html",
        html2.to_str().unwrap(),
    ]);
    let doc: Value = serde_json::from_str(&json).unwrap();
    for g in doc["groups"].as_array().unwrap() {
        assert!(
            g["failing"].as_array().is_none_or(Vec::is_empty),
            "failing flows in the JSON without --list-flows"
        );
    }
    let page = std::fs::read_to_string(&html2).unwrap();
    assert_eq!(
        page.matches("<tr class=\"flow\"").count(),
        total,
        "the page lists the failing flows anyway"
    );
}
