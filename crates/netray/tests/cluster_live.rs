//! The live cluster view (`netray cluster`, `--kube`) against a fake Kubernetes API: a small
//! HTTP server on 127.0.0.1 serving canned lists built from examples/healthy/cluster.json.
//! The live view must equal the file view of the same objects; errors must exit 2 and name
//! the context and server. Loopback only.
#![cfg(feature = "live")]

use std::collections::BTreeSet;
use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use netray_kube::ClusterView;
use serde_json::{Value, json};

const NETRAY: &str = env!("CARGO_BIN_EXE_netray");
/// The fake API server stops by itself after this long, whatever the test does.
const SERVER_LIFETIME: Duration = Duration::from_secs(120);

fn workspace() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

fn healthy() -> PathBuf {
    workspace().join("examples/healthy")
}

/// The healthy example's objects, each with its `kind`.
/// The healthy example's objects without its ConfigMaps (each test serves its own).
fn healthy_items() -> Vec<Value> {
    let text = std::fs::read_to_string(healthy().join("cluster.json")).unwrap();
    let v: Value = serde_json::from_str(&text).unwrap();
    v["items"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|i| i["kind"] != "ConfigMap")
        .cloned()
        .collect()
}

fn kube_proxy_cm(cluster_cidr: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "kube-proxy", "namespace": "kube-system"},
           "data": {"config.conf": format!("apiVersion: kubeproxy.config.k8s.io/v1alpha1\nkind: KubeProxyConfiguration\nclusterCIDR: {cluster_cidr}\nmode: iptables\n")}})
}

fn flannel_cm() -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "kube-flannel-cfg", "namespace": "kube-flannel"},
           "data": {"net-conf.json": "{\"Network\": \"10.244.0.0/16\", \"Backend\": {\"Type\": \"vxlan\"}}"}})
}

/// An unrelated ConfigMap the fake server returns despite the field selector.
fn other_cm() -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "coredns", "namespace": "kube-system"},
           "data": {"Corefile": ".:53 {}"}})
}

/// What the fake API answers for one request: status and JSON body.
type Handler = dyn Fn(&str, &str) -> (u16, Value) + Send + Sync;

/// A fake API server on 127.0.0.1, one thread, gone after [`SERVER_LIFETIME`] or on drop.
struct FakeApi {
    port: u16,
    requests: Arc<Mutex<Vec<String>>>,
    stop: Arc<AtomicBool>,
    thread: Option<JoinHandle<()>>,
}

impl FakeApi {
    fn start(handler: Box<Handler>) -> FakeApi {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let requests = Arc::new(Mutex::new(Vec::new()));
        let stop = Arc::new(AtomicBool::new(false));
        let (reqs, stop2) = (requests.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            let deadline = Instant::now() + SERVER_LIFETIME;
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((stream, _)) => {
                        if let Some(target) = serve_one(stream, &*handler) {
                            reqs.lock().unwrap().push(target);
                        }
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(5));
                    }
                    Err(_) => break,
                }
            }
        });
        FakeApi {
            port,
            requests,
            stop,
            thread: Some(thread),
        }
    }

    fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }

    fn requests(&self) -> Vec<String> {
        self.requests.lock().unwrap().clone()
    }
}

impl Drop for FakeApi {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// Answer one request (`Connection: close`); returns `METHOD PATH?QUERY`.
fn serve_one(stream: TcpStream, handler: &Handler) -> Option<String> {
    stream.set_nonblocking(false).ok()?;
    stream.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    let mut reader = BufReader::new(stream.try_clone().ok()?);
    let mut line = String::new();
    reader.read_line(&mut line).ok()?;
    let target = line.split_whitespace().nth(1)?.to_string();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h).ok()? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
    }
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let (code, body) = handler(path, query);
    let body = body.to_string();
    let reason = match code {
        200 => "OK",
        403 => "Forbidden",
        _ => "Not Found",
    };
    let mut stream = stream;
    let _ = write!(
        stream,
        "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
        body.len()
    );
    let _ = stream.flush();
    Some(format!(
        "{} {target}",
        line.split_whitespace().next().unwrap_or("")
    ))
}

fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// A list response as the API server sends it: items without `kind` / `apiVersion`.
fn list_of(kind: &str, api_version: &str, items: &[&Value], cont: Option<&str>) -> Value {
    let items: Vec<Value> = items
        .iter()
        .map(|i| {
            let mut i = (*i).clone();
            let m = i.as_object_mut().unwrap();
            m.remove("kind");
            m.remove("apiVersion");
            i
        })
        .collect();
    let mut meta = json!({"resourceVersion": "4242"});
    if let Some(c) = cont {
        meta["continue"] = json!(c);
    }
    json!({"kind": format!("{kind}List"), "apiVersion": api_version, "metadata": meta, "items": items})
}

/// A fake API serving `items` (any kinds) the way the real API server does: per-kind list
/// endpoints (pods in two pages), the kube-proxy ConfigMap by name, flannel's by field selector.
/// Paths containing one of `forbid` answer 403 Forbidden.
fn api_serving(items: Vec<Value>, forbid: &'static [&'static str]) -> FakeApi {
    FakeApi::start(Box::new(move |path, query| {
        if let Some(f) = forbid.iter().find(|f| path.contains(*f)) {
            let msg = format!("{f} is forbidden: User \"system:anonymous\" cannot list resource");
            return (403, status(403, "Forbidden", &msg));
        }
        let of =
            |kind: &str| -> Vec<&Value> { items.iter().filter(|i| i["kind"] == kind).collect() };
        match path {
            "/api/v1/nodes" => (200, list_of("Node", "v1", &of("Node"), None)),
            "/api/v1/pods" => {
                let pods = of("Pod");
                let half = pods.len() / 2;
                if query.contains("continue=page2") {
                    (200, list_of("Pod", "v1", &pods[half..], None))
                } else {
                    (200, list_of("Pod", "v1", &pods[..half], Some("page2")))
                }
            }
            "/api/v1/services" => (200, list_of("Service", "v1", &of("Service"), None)),
            "/apis/discovery.k8s.io/v1/endpointslices" => (
                200,
                list_of(
                    "EndpointSlice",
                    "discovery.k8s.io/v1",
                    &of("EndpointSlice"),
                    None,
                ),
            ),
            "/api/v1/namespaces/kube-system/configmaps/kube-proxy" => {
                match of("ConfigMap").into_iter().find(|c| {
                    c["metadata"]["name"] == "kube-proxy"
                        && c["metadata"]["namespace"] == "kube-system"
                }) {
                    Some(c) => (200, c.clone()),
                    None => (
                        404,
                        status(404, "NotFound", "configmaps \"kube-proxy\" not found"),
                    ),
                }
            }
            // Ignores the field selector: the client must keep only kube-flannel-cfg.
            "/api/v1/configmaps" => (200, list_of("ConfigMap", "v1", &of("ConfigMap"), None)),
            _ => (
                404,
                status(
                    404,
                    "NotFound",
                    "the server could not find the requested resource",
                ),
            ),
        }
    }))
}

/// A kubeconfig with contexts `live` (the fake API) and `dead` (a closed port), current
/// context `current`.
fn kubeconfig(dir: &Path, live_url: &str, dead_url: &str, current: &str) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: {current}\nclusters:\n\
             - name: fake\n  cluster:\n    server: {live_url}\n\
             - name: gone\n  cluster:\n    server: {dead_url}\n\
             contexts:\n\
             - name: live\n  context:\n    cluster: fake\n    user: nobody\n\
             - name: dead\n  context:\n    cluster: gone\n    user: nobody\n\
             users:\n- name: nobody\n  user: {{}}\n"
        ),
    )
    .unwrap();
    path
}

/// A loopback URL nothing listens on.
fn closed_port_url() -> String {
    let l = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = l.local_addr().unwrap().port();
    drop(l);
    format!("http://127.0.0.1:{port}")
}

/// Run netray with a clean environment for the kube client: no ambient kubeconfig, no
/// in-cluster variables, HOME in `home`.
fn netray(args: &[&str], home: &Path, kubeconfig_env: Option<&Path>) -> Output {
    let mut c = Command::new(NETRAY);
    c.args(args)
        .env("HOME", home)
        .env_remove("KUBECONFIG")
        .env_remove("KUBERNETES_SERVICE_HOST")
        .env_remove("KUBERNETES_SERVICE_PORT")
        .env("NO_PROXY", "127.0.0.1")
        .current_dir(workspace());
    if let Some(k) = kubeconfig_env {
        c.env("KUBECONFIG", k);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn view_of(items: Vec<Value>) -> ClusterView {
    ClusterView::from_value("test", &json!({"kind": "List", "items": items})).unwrap()
}

#[test]
fn cluster_command_writes_the_list_the_file_path_reads() {
    let mut items = healthy_items();
    items.extend([kube_proxy_cm("10.244.0.0/16"), flannel_cm(), other_cm()]);
    let api = api_serving(items.clone(), &[]);
    let tmp = tempfile::tempdir().unwrap();
    let kc = kubeconfig(tmp.path(), &api.url(), &closed_port_url(), "live");
    let out = tmp.path().join("cluster.json");
    let o = netray(
        &[
            "cluster",
            "--kubeconfig",
            kc.to_str().unwrap(),
            "-o",
            out.to_str().unwrap(),
        ],
        tmp.path(),
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("3 nodes, 6 pods, 4 services, 4 endpointslices"),
        "{}",
        stderr(&o)
    );

    let list: Value = serde_json::from_str(&std::fs::read_to_string(&out).unwrap()).unwrap();
    assert_eq!(list["kind"], "List");
    let got = list["items"].as_array().unwrap();
    // Every object carries its kind and apiVersion, though the API's list items do not.
    for i in got {
        assert!(i["kind"].is_string() && i["apiVersion"].is_string(), "{i}");
    }
    let cms: BTreeSet<&str> = got
        .iter()
        .filter(|i| i["kind"] == "ConfigMap")
        .map(|i| i["metadata"]["name"].as_str().unwrap())
        .collect();
    assert_eq!(cms, BTreeSet::from(["kube-proxy", "kube-flannel-cfg"]));

    // One parser: the live List reads to the same view as the file's objects.
    let live = ClusterView::from_value("cluster.json", &list).unwrap();
    let file = view_of(items);
    assert_eq!(live, file);
    assert_eq!(live.pods.len(), 6, "both pages of pods");
    assert_eq!(
        live.kube_proxy.as_ref().unwrap().cluster_cidr,
        "10.244.0.0/16"
    );
    assert_eq!(live.flannel_network, Some("10.244.0.0/16".parse().unwrap()));

    let reqs = api.requests();
    assert!(
        reqs.iter()
            .any(|r| r.contains("/api/v1/pods?") && r.contains("continue=page2")),
        "{reqs:?}"
    );
    assert!(
        reqs.iter().any(|r| r.contains("/api/v1/configmaps?")
            && r.contains("fieldSelector=metadata.name%3Dkube-flannel-cfg")),
        "{reqs:?}"
    );
    assert!(
        reqs.iter().all(|r| r.starts_with("GET ")),
        "read-only: {reqs:?}"
    );
}

#[test]
fn cluster_command_prints_to_stdout_and_reads_kubeconfig_from_env() {
    let items = healthy_items();
    let api = api_serving(items.clone(), &[]);
    let tmp = tempfile::tempdir().unwrap();
    let kc = kubeconfig(tmp.path(), &api.url(), &closed_port_url(), "live");
    let o = netray(&["cluster"], tmp.path(), Some(&kc));
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let list: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        ClusterView::from_value("stdout", &list).unwrap(),
        view_of(items)
    );
}

#[test]
fn scan_and_diagnose_with_kube_match_the_bundle_for_the_same_objects() {
    let api = api_serving(healthy_items(), &[]);
    let tmp = tempfile::tempdir().unwrap();
    let kc = kubeconfig(tmp.path(), &api.url(), &closed_port_url(), "live");
    let b = healthy();
    let b = b.to_str().unwrap();
    let kc = kc.to_str().unwrap();
    for cmd in [
        vec!["scan", "--bundle", b, "-o", "json"],
        vec![
            "diagnose",
            "--bundle",
            b,
            "--from",
            "pod/default/web-0",
            "--to",
            "svc/default/web:80",
            "-o",
            "json",
        ],
        vec![
            "trace",
            "--bundle",
            b,
            "--from",
            "10.244.0.2",
            "--to",
            "10.96.0.100:80",
            "-o",
            "json",
        ],
    ] {
        let file = netray(&cmd, tmp.path(), None);
        let mut live_args = cmd.clone();
        live_args.extend(["--kube", "--kubeconfig", kc]);
        let live = netray(&live_args, tmp.path(), None);
        assert_eq!(
            live.status.code(),
            file.status.code(),
            "{cmd:?}: {}",
            stderr(&live)
        );
        assert!(
            file.status.code().unwrap() < 2,
            "{cmd:?}: {}",
            stderr(&file)
        );
        assert_eq!(
            String::from_utf8_lossy(&live.stdout),
            String::from_utf8_lossy(&file.stdout),
            "{cmd:?}"
        );
    }
    assert!(
        api.requests()
            .iter()
            .any(|r| r.starts_with("GET /api/v1/nodes"))
    );
}

#[test]
fn kube_replaces_the_bundle_cluster_json() {
    // The live kube-proxy config says clusterCIDR 10.99.0.0/16 while the pods are on
    // 10.244.0.0/16: only the live view can produce that finding.
    let mut items = healthy_items();
    items.push(kube_proxy_cm("10.99.0.0/16"));
    let api = api_serving(items, &[]);
    let tmp = tempfile::tempdir().unwrap();
    let kc = kubeconfig(tmp.path(), &api.url(), &closed_port_url(), "dead");
    let b = healthy();
    let file = netray(
        &["scan", "--bundle", b.to_str().unwrap(), "-o", "json"],
        tmp.path(),
        None,
    );
    // --context alone implies --kube, and picks the live context over the dead current one.
    let live = netray(
        &[
            "scan",
            "--bundle",
            b.to_str().unwrap(),
            "-o",
            "json",
            "--context",
            "live",
        ],
        tmp.path(),
        Some(&kc),
    );
    assert_eq!(live.status.code(), Some(1), "{}", stderr(&live));
    let has = |o: &Output| String::from_utf8_lossy(&o.stdout).contains("\"cluster-cidr-mismatch\"");
    assert!(has(&live), "{}", String::from_utf8_lossy(&live.stdout));
    assert!(!has(&file));
}

#[test]
fn unreachable_api_exits_2_naming_context_and_server() {
    let tmp = tempfile::tempdir().unwrap();
    let dead = closed_port_url();
    let kc = kubeconfig(tmp.path(), "http://127.0.0.1:1", &dead, "dead");
    let b = healthy();
    for args in [
        vec!["cluster", "--kubeconfig", kc.to_str().unwrap()],
        vec![
            "scan",
            "--bundle",
            b.to_str().unwrap(),
            "--kube",
            "--kubeconfig",
            kc.to_str().unwrap(),
        ],
    ] {
        let t0 = Instant::now();
        let o = netray(&args, tmp.path(), None);
        assert_eq!(o.status.code(), Some(2), "{args:?}");
        assert!(o.stdout.is_empty());
        let e = stderr(&o);
        assert!(e.contains("context \"dead\""), "{e}");
        assert!(e.contains(&dead.replace("http://", "")), "{e}");
        assert!(e.contains("listing nodes"), "{e}");
        assert!(t0.elapsed() < Duration::from_secs(30));
    }
}

#[test]
fn forbidden_exits_2_with_the_api_message() {
    let api = api_serving(healthy_items(), &["/api/v1/pods"]);
    let tmp = tempfile::tempdir().unwrap();
    let kc = kubeconfig(tmp.path(), &api.url(), &closed_port_url(), "live");
    let o = netray(
        &["cluster", "--kubeconfig", kc.to_str().unwrap()],
        tmp.path(),
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(o.stdout.is_empty());
    let e = stderr(&o);
    assert!(e.contains("listing pods") && e.contains("HTTP 403"), "{e}");
    assert!(e.contains("cannot list resource"), "{e}");
    assert!(
        e.contains("context \"live\"") && e.contains(&api.url()),
        "{e}"
    );
}

#[test]
fn forbidden_configmaps_are_a_warning() {
    let items = healthy_items();
    let api = api_serving(items.clone(), &["configmaps"]);
    let tmp = tempfile::tempdir().unwrap();
    let kc = kubeconfig(tmp.path(), &api.url(), &closed_port_url(), "live");
    let o = netray(
        &["cluster", "--kubeconfig", kc.to_str().unwrap()],
        tmp.path(),
        None,
    );
    assert_eq!(o.status.code(), Some(0), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("warning") && e.contains("kube-system/kube-proxy"),
        "{e}"
    );
    assert!(e.contains("kube-flannel-cfg"), "{e}");
    let list: Value = serde_json::from_slice(&o.stdout).unwrap();
    assert_eq!(
        ClusterView::from_value("stdout", &list).unwrap(),
        view_of(items)
    );
}

#[test]
fn no_configuration_exits_2() {
    let tmp = tempfile::tempdir().unwrap();
    let o = netray(&["cluster"], tmp.path(), None);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("no kubeconfig") && e.contains("--kubeconfig"),
        "{e}"
    );
    let missing = tmp.path().join("nope.yaml");
    let o = netray(
        &[
            "diagnose",
            "--bundle",
            healthy().to_str().unwrap(),
            "--from",
            "pod/default/web-0",
            "--to",
            "svc/default/web:80",
            "--kubeconfig",
            missing.to_str().unwrap(),
        ],
        tmp.path(),
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nope.yaml"), "{}", stderr(&o));
    let kc = kubeconfig(
        tmp.path(),
        "http://127.0.0.1:1",
        "http://127.0.0.1:1",
        "live",
    );
    let o = netray(
        &[
            "cluster",
            "--kubeconfig",
            kc.to_str().unwrap(),
            "--context",
            "nosuch",
        ],
        tmp.path(),
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(stderr(&o).contains("nosuch"), "{}", stderr(&o));
}

#[test]
fn a_bad_live_object_names_the_context_and_its_path() {
    let mut items = healthy_items();
    let pod = items.iter_mut().find(|i| i["kind"] == "Pod").unwrap();
    pod["status"]["podIP"] = json!("not-an-ip");
    pod["status"]["podIPs"] = json!([{"ip": "not-an-ip"}]);
    let api = api_serving(items, &[]);
    let tmp = tempfile::tempdir().unwrap();
    let kc = kubeconfig(tmp.path(), &api.url(), &closed_port_url(), "live");
    let o = netray(
        &["cluster", "--kubeconfig", kc.to_str().unwrap()],
        tmp.path(),
        None,
    );
    assert_eq!(o.status.code(), Some(2));
    assert!(
        o.stdout.is_empty(),
        "nothing written when the view does not load"
    );
    let e = stderr(&o);
    assert!(
        e.contains("context \"live\"") && e.contains(".status.pod"),
        "{e}"
    );
}
