//! The stand-in Kubernetes API server of the `--kube` tests (issue 12), shared by
//! `collect_kube.rs` and `diagnose_kube.rs` (`#[path = "common/kube_standin.rs"] mod
//! kube_standin;`): an HTTP server on 127.0.0.1 answering with the API's response shapes —
//! lists of nodes, pods, services, endpointslices and configmaps; pod create (201), get
//! (Pending → Running), delete; the exec subresource as a WebSocket upgrade
//! (`v4.channel.k8s.io` / `v5.channel.k8s.io`: channel 1 stdout, 2 stderr, 3 the status JSON);
//! errors 401/403/404/409/429/500/503; a node whose pod never starts; dropped connections.
//! Behind the exec, either the real collector runs inside a lab node's namespace
//! (`ip netns exec NODE netray collect --node NODE -o - --gzip`, the command the pod receives)
//! or a recorded snapshot is streamed in the same format. Every request is recorded
//! ([`StandIn::log`], [`StandIn::created`]).
#![allow(dead_code)] // each test binary uses a part

use std::collections::{BTreeMap, BTreeSet};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::{Shutdown, TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::common;
use crate::common::NETRAY;

/// A run longer than this is a hang.
pub const HANG_GUARD: Duration = Duration::from_secs(120);

/// What the exec of one node's collector pod does.
#[derive(Clone)]
pub enum Exec {
    /// Run the real collector inside this network namespace (a lab node).
    Netns(String),
    /// Stream this recorded snapshot JSON as the collector would (gzip + trailer).
    Recorded(Arc<Vec<u8>>),
    /// As `Recorded`, but the first exec's connection drops halfway through the stream.
    DropFirst(Arc<Vec<u8>>),
    /// As `Recorded`, with a wrong checksum in the trailer.
    BadChecksum(Arc<Vec<u8>>),
    /// The collector exits with code 2.
    ExitFails,
}

/// How one node's collector pod behaves.
#[derive(Clone)]
pub struct NodeBehaviour {
    pub exec: Exec,
    /// The pod never leaves Pending (`ContainerCreating`).
    pub never_runs: bool,
    /// The image cannot be pulled.
    pub pull_fails: bool,
}

impl NodeBehaviour {
    pub fn exec(exec: Exec) -> NodeBehaviour {
        NodeBehaviour {
            exec,
            never_runs: false,
            pull_fails: false,
        }
    }
}

/// Injected API faults, each consumed once when its counter is above zero.
#[derive(Default)]
pub struct Faults {
    /// Answer everything with 401.
    pub unauthorized: bool,
    /// Pod creates answer 403.
    pub create_forbidden: bool,
    /// Pod creates answer 404 (namespace missing).
    pub create_no_namespace: bool,
    /// The next N pod creates answer 429 with Retry-After.
    pub create_429: u32,
    /// The next N pod creates answer 403 "exceeded quota" (a namespace ResourceQuota).
    pub create_quota: u32,
    /// The next N pod creates are carried out, then answered 500 (the retry meets 409).
    pub create_500_after_create: u32,
    /// The next N pod reads answer 503.
    pub get_503: u32,
    /// The next N pod reads are dropped without an answer.
    pub get_drop: u32,
}

#[derive(Default)]
pub struct PodRec {
    pub node: String,
    pub body: Value,
    pub gets: u32,
    pub deleted: bool,
    pub execs: u32,
}

pub struct State {
    pub items: Vec<Value>,
    pub nodes: BTreeMap<String, NodeBehaviour>,
    pub faults: Faults,
    pub pods: BTreeMap<String, PodRec>,
    pub log: Vec<String>,
    /// Exec commands as received.
    pub exec_commands: Vec<Vec<String>>,
    pub protocol: &'static str,
}

/// The stand-in API server: one thread per connection; stops accepting on drop.
pub struct StandIn {
    pub port: u16,
    pub state: Arc<Mutex<State>>,
    pub stop: Arc<AtomicBool>,
}

impl Drop for StandIn {
    fn drop(&mut self) {
        self.stop.store(true, Ordering::Relaxed);
    }
}

impl StandIn {
    pub fn start(
        items: Vec<Value>,
        nodes: BTreeMap<String, NodeBehaviour>,
        faults: Faults,
        protocol: &'static str,
    ) -> StandIn {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        listener.set_nonblocking(true).unwrap();
        let port = listener.local_addr().unwrap().port();
        let state = Arc::new(Mutex::new(State {
            items,
            nodes,
            faults,
            pods: BTreeMap::new(),
            log: Vec::new(),
            exec_commands: Vec::new(),
            protocol,
        }));
        let stop = Arc::new(AtomicBool::new(false));
        let (st, stop2) = (state.clone(), stop.clone());
        std::thread::spawn(move || {
            let deadline = Instant::now() + Duration::from_secs(240);
            while !stop2.load(Ordering::Relaxed) && Instant::now() < deadline {
                match listener.accept() {
                    Ok((s, _)) => {
                        let st = st.clone();
                        std::thread::spawn(move || {
                            let _ = serve(s, &st);
                        });
                    }
                    Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                        std::thread::sleep(Duration::from_millis(2));
                    }
                    Err(_) => break,
                }
            }
        });
        StandIn { port, state, stop }
    }

    pub fn kubeconfig(&self, dir: &Path) -> PathBuf {
        let path = dir.join("kubeconfig");
        std::fs::write(
            &path,
            format!(
                "apiVersion: v1\nkind: Config\ncurrent-context: standin\nclusters:\n\
                 - name: k\n  cluster:\n    server: http://127.0.0.1:{}\n\
                 contexts:\n- name: standin\n  context:\n    cluster: k\n    user: u\n\
                 users:\n- name: u\n  user: {{}}\n",
                self.port
            ),
        )
        .unwrap();
        path
    }

    pub fn created(&self) -> BTreeSet<String> {
        self.state.lock().unwrap().pods.keys().cloned().collect()
    }

    pub fn not_deleted(&self) -> Vec<String> {
        let st = self.state.lock().unwrap();
        st.pods
            .iter()
            .filter(|(_, p)| !p.deleted)
            .map(|(n, _)| n.clone())
            .collect()
    }

    pub fn log(&self) -> Vec<String> {
        self.state.lock().unwrap().log.clone()
    }
}

pub fn status(code: u16, reason: &str, message: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "metadata": {}, "status": "Failure",
           "message": message, "reason": reason, "code": code})
}

/// A list as the API server sends it: items without `kind`/`apiVersion`.
pub fn list_of(kind: &str, api_version: &str, items: Vec<Value>) -> Value {
    let items: Vec<Value> = items
        .into_iter()
        .map(|mut i| {
            let m = i.as_object_mut().unwrap();
            m.remove("kind");
            m.remove("apiVersion");
            i
        })
        .collect();
    json!({"kind": format!("{kind}List"), "apiVersion": api_version,
           "metadata": {"resourceVersion": "4242"}, "items": items})
}

pub fn pct_decode(s: &str) -> String {
    let b = s.as_bytes();
    let mut out = Vec::new();
    let mut i = 0;
    while i < b.len() {
        match b[i] {
            b'%' if i + 2 < b.len() => {
                let h = u8::from_str_radix(&s[i + 1..i + 3], 16).unwrap_or(b'?');
                out.push(h);
                i += 3;
            }
            b'+' => {
                out.push(b' ');
                i += 1;
            }
            c => {
                out.push(c);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

pub fn query_values(query: &str, key: &str) -> Vec<String> {
    query
        .split('&')
        .filter_map(|kv| kv.split_once('='))
        .filter(|(k, _)| *k == key)
        .map(|(_, v)| pct_decode(v))
        .collect()
}

pub fn respond(mut s: &TcpStream, code: u16, body: &Value, extra: &str) {
    let body = body.to_string();
    let reason = match code {
        200 => "OK",
        201 => "Created",
        401 => "Unauthorized",
        403 => "Forbidden",
        404 => "Not Found",
        409 => "Conflict",
        429 => "Too Many Requests",
        500 => "Internal Server Error",
        503 => "Service Unavailable",
        _ => "Other",
    };
    let _ = s.write_all(
        format!(
            "HTTP/1.1 {code} {reason}\r\nContent-Type: application/json\r\n{extra}Content-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .as_bytes(),
    );
    let _ = s.flush();
    let _ = s.shutdown(Shutdown::Write);
}

pub fn container_status(image: &str, state: Value, ready: bool) -> Value {
    json!([{"name": "collector", "ready": ready, "restartCount": 0, "image": image,
            "imageID": "", "state": state}])
}

/// Serve one connection (one request; `Connection: close`).
pub fn serve(stream: TcpStream, state: &Arc<Mutex<State>>) -> std::io::Result<()> {
    stream.set_nonblocking(false)?;
    stream.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(stream.try_clone()?);
    let mut line = String::new();
    reader.read_line(&mut line)?;
    let mut parts = line.split_whitespace();
    let method = parts.next().unwrap_or("").to_string();
    let target = parts.next().unwrap_or("").to_string();
    let mut headers = BTreeMap::new();
    loop {
        let mut h = String::new();
        if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
            break;
        }
        if let Some((k, v)) = h.split_once(':') {
            headers.insert(k.trim().to_ascii_lowercase(), v.trim().to_string());
        }
    }
    let len: usize = headers
        .get("content-length")
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let mut body = vec![0u8; len];
    reader.read_exact(&mut body)?;
    let (path, query) = target.split_once('?').unwrap_or((&target, ""));
    let (path, query) = (path.to_string(), query.to_string());
    let mut st = state.lock().unwrap();
    st.log.push(format!("{method} {path}"));
    if st.faults.unauthorized {
        respond(
            &stream,
            401,
            &status(401, "Unauthorized", "Unauthorized"),
            "",
        );
        return Ok(());
    }
    let of = |st: &State, kind: &str| -> Vec<Value> {
        st.items
            .iter()
            .filter(|i| i["kind"] == kind)
            .cloned()
            .collect()
    };
    const PODS: &str = "/api/v1/namespaces/netray/pods";
    match (method.as_str(), path.as_str()) {
        ("GET", "/api/v1/nodes") => {
            let sel = query_values(&query, "labelSelector");
            let nodes: Vec<Value> = of(&st, "Node")
                .into_iter()
                .filter(|n| {
                    sel.iter().all(|s| {
                        s.split(',').all(|kv| match kv.split_once('=') {
                            Some((k, v)) => n["metadata"]["labels"][k] == v,
                            None => !n["metadata"]["labels"][kv].is_null(),
                        })
                    })
                })
                .collect();
            respond(&stream, 200, &list_of("Node", "v1", nodes), "");
        }
        ("GET", "/api/v1/pods") => {
            let pods = of(&st, "Pod");
            respond(&stream, 200, &list_of("Pod", "v1", pods), "");
        }
        ("GET", "/api/v1/services") => {
            let s = of(&st, "Service");
            respond(&stream, 200, &list_of("Service", "v1", s), "");
        }
        ("GET", "/apis/discovery.k8s.io/v1/endpointslices") => {
            let s = of(&st, "EndpointSlice");
            respond(
                &stream,
                200,
                &list_of("EndpointSlice", "discovery.k8s.io/v1", s),
                "",
            );
        }
        ("GET", "/api/v1/namespaces/kube-system/configmaps/kube-proxy") => {
            match of(&st, "ConfigMap")
                .into_iter()
                .find(|c| c["metadata"]["name"] == "kube-proxy")
            {
                Some(c) => respond(&stream, 200, &c, ""),
                None => respond(
                    &stream,
                    404,
                    &status(404, "NotFound", "configmaps \"kube-proxy\" not found"),
                    "",
                ),
            }
        }
        ("GET", "/api/v1/configmaps") => {
            let c: Vec<Value> = of(&st, "ConfigMap")
                .into_iter()
                .filter(|c| c["metadata"]["name"] == "kube-flannel-cfg")
                .collect();
            respond(&stream, 200, &list_of("ConfigMap", "v1", c), "");
        }
        ("GET", PODS) => {
            // The run's pods by label (the clean-up after an interrupt).
            let sel = query_values(&query, "labelSelector");
            let pods: Vec<Value> = st
                .pods
                .values()
                .filter(|p| !p.deleted)
                .filter(|p| {
                    sel.iter().all(|s| {
                        s.split(',').all(|kv| match kv.split_once('=') {
                            Some((k, v)) => p.body["metadata"]["labels"][k] == v,
                            None => true,
                        })
                    })
                })
                .map(|p| p.body.clone())
                .collect();
            respond(&stream, 200, &list_of("Pod", "v1", pods), "");
        }
        ("POST", PODS) => {
            if st.faults.create_forbidden {
                respond(
                    &stream,
                    403,
                    &status(
                        403,
                        "Forbidden",
                        "pods is forbidden: User \"system:serviceaccount:default:x\" cannot create resource \"pods\" in API group \"\" in the namespace \"netray\"",
                    ),
                    "",
                );
                return Ok(());
            }
            if st.faults.create_no_namespace {
                respond(
                    &stream,
                    404,
                    &status(404, "NotFound", "namespaces \"netray\" not found"),
                    "",
                );
                return Ok(());
            }
            if st.faults.create_quota > 0 {
                st.faults.create_quota -= 1;
                respond(
                    &stream,
                    403,
                    &status(
                        403,
                        "Forbidden",
                        "pods \"netray-x\" is forbidden: exceeded quota: netray-pods, requested: pods=1, used: pods=4, limited: pods=4",
                    ),
                    "",
                );
                return Ok(());
            }
            if st.faults.create_429 > 0 {
                st.faults.create_429 -= 1;
                respond(
                    &stream,
                    429,
                    &status(
                        429,
                        "TooManyRequests",
                        "the server has received too many requests and has asked us to try again later",
                    ),
                    "Retry-After: 1\r\n",
                );
                return Ok(());
            }
            let mut pod: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
            let name = pod["metadata"]["name"].as_str().unwrap_or("").to_string();
            if name.is_empty() {
                respond(&stream, 422, &status(422, "Invalid", "name required"), "");
                return Ok(());
            }
            if st.pods.contains_key(&name) {
                respond(
                    &stream,
                    409,
                    &status(
                        409,
                        "AlreadyExists",
                        &format!("pods \"{name}\" already exists"),
                    ),
                    "",
                );
                return Ok(());
            }
            let node = pod["spec"]["nodeName"].as_str().unwrap_or("").to_string();
            pod["metadata"]["uid"] = json!(format!("uid-{name}"));
            pod["metadata"]["creationTimestamp"] = json!("2026-12-03T13:00:00Z");
            pod["status"] = json!({"phase": "Pending", "qosClass": "Burstable"});
            st.pods.insert(
                name.clone(),
                PodRec {
                    node,
                    body: pod.clone(),
                    ..PodRec::default()
                },
            );
            if st.faults.create_500_after_create > 0 {
                st.faults.create_500_after_create -= 1;
                respond(
                    &stream,
                    500,
                    &status(500, "InternalError", "etcdserver: request timed out"),
                    "",
                );
                return Ok(());
            }
            respond(&stream, 201, &pod, "");
        }
        (m, p) if p.starts_with(PODS) => {
            let rest = &p[PODS.len() + 1..];
            let (name, sub) = rest.split_once('/').unwrap_or((rest, ""));
            let name = name.to_string();
            let Some(rec) = st.pods.get(&name).filter(|r| !r.deleted) else {
                respond(
                    &stream,
                    404,
                    &status(404, "NotFound", &format!("pods \"{name}\" not found")),
                    "",
                );
                return Ok(());
            };
            let node = rec.node.clone();
            let behaviour = st.nodes.get(&node).cloned();
            match (m, sub) {
                ("GET", "") => {
                    if st.faults.get_503 > 0 {
                        st.faults.get_503 -= 1;
                        respond(
                            &stream,
                            503,
                            &status(
                                503,
                                "ServiceUnavailable",
                                "the server is currently unable to handle the request",
                            ),
                            "",
                        );
                        return Ok(());
                    }
                    if st.faults.get_drop > 0 {
                        st.faults.get_drop -= 1;
                        let _ = stream.shutdown(Shutdown::Both);
                        return Ok(());
                    }
                    let rec = st.pods.get_mut(&name).unwrap();
                    rec.gets += 1;
                    let image = rec.body["spec"]["containers"][0]["image"]
                        .as_str()
                        .unwrap_or("")
                        .to_string();
                    let b = behaviour.unwrap_or(NodeBehaviour::exec(Exec::ExitFails));
                    let status_v = if b.pull_fails && rec.gets > 1 {
                        json!({"phase": "Pending", "containerStatuses": container_status(&image,
                            json!({"waiting": {"reason": "ErrImagePull", "message": format!("rpc error: code = NotFound desc = failed to pull and unpack image \"{image}\": not found")}}), false)})
                    } else if b.never_runs || rec.gets < 2 || b.pull_fails {
                        json!({"phase": "Pending", "conditions": [{"type": "PodScheduled", "status": "True"}],
                               "containerStatuses": container_status(&image, json!({"waiting": {"reason": "ContainerCreating"}}), false)})
                    } else {
                        json!({"phase": "Running", "containerStatuses": container_status(&image,
                            json!({"running": {"startedAt": "2026-12-03T13:00:01Z"}}), true)})
                    };
                    rec.body["status"] = status_v;
                    let body = rec.body.clone();
                    respond(&stream, 200, &body, "");
                }
                ("DELETE", "") => {
                    let rec = st.pods.get_mut(&name).unwrap();
                    rec.deleted = true;
                    let body = rec.body.clone();
                    respond(&stream, 200, &body, "");
                }
                ("GET", "exec") => {
                    let command = query_values(&query, "command");
                    st.exec_commands.push(command.clone());
                    let rec = st.pods.get_mut(&name).unwrap();
                    rec.execs += 1;
                    let first = rec.execs == 1;
                    let protocol = st.protocol;
                    drop(st);
                    let key = headers
                        .get("sec-websocket-key")
                        .cloned()
                        .unwrap_or_default();
                    let offered = headers
                        .get("sec-websocket-protocol")
                        .cloned()
                        .unwrap_or_default();
                    assert!(
                        offered.contains(protocol),
                        "client offered {offered:?}, not {protocol}"
                    );
                    let b = behaviour.unwrap_or(NodeBehaviour::exec(Exec::ExitFails));
                    return exec(stream, &key, protocol, &command, &b.exec, first);
                }
                _ => respond(
                    &stream,
                    405,
                    &status(405, "MethodNotAllowed", "not here"),
                    "",
                ),
            }
        }
        _ => respond(
            &stream,
            404,
            &status(
                404,
                "NotFound",
                "the server could not find the requested resource",
            ),
            "",
        ),
    }
    Ok(())
}

/// The gzip stream and trailer `netray collect --gzip` writes for `json`.
pub fn collector_stream(json: &[u8], sha_override: Option<&str>) -> (Vec<u8>, String) {
    let mut gz = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
    gz.write_all(json).unwrap();
    let out = gz.finish().unwrap();
    let sum = ring::digest::digest(&ring::digest::SHA256, json);
    let hex: String = sum.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    let hex = sha_override.map(str::to_string).unwrap_or(hex);
    (
        out,
        format!("netray-stream sha256={hex} bytes={}\n", json.len()),
    )
}

/// The exec subresource: upgrade to a WebSocket and run the collector behind it.
pub fn exec(
    stream: TcpStream,
    key: &str,
    protocol: &str,
    command: &[String],
    behaviour: &Exec,
    first: bool,
) -> std::io::Result<()> {
    use tungstenite::protocol::{Message, Role};
    let mut s = &stream;
    s.write_all(
        format!(
            "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
             Sec-WebSocket-Accept: {}\r\nSec-WebSocket-Protocol: {protocol}\r\n\r\n",
            tungstenite::handshake::derive_accept_key(key.as_bytes())
        )
        .as_bytes(),
    )?;
    let mut ws = tungstenite::WebSocket::from_raw_socket(stream.try_clone()?, Role::Server, None);
    let frame = |ch: u8, data: &[u8]| {
        let mut v = Vec::with_capacity(data.len() + 1);
        v.push(ch);
        v.extend_from_slice(data);
        Message::binary(v)
    };
    let success = json!({"metadata": {}, "status": "Success"});
    let send_recorded = |ws: &mut tungstenite::WebSocket<TcpStream>,
                         json: &[u8],
                         sha: Option<&str>,
                         drop_half: bool|
     -> std::io::Result<()> {
        let (gz, trailer) = collector_stream(json, sha);
        let cut = if drop_half { gz.len() / 2 } else { gz.len() };
        for chunk in gz[..cut].chunks(16 << 10) {
            ws.send(frame(1, chunk)).map_err(std::io::Error::other)?;
        }
        if drop_half {
            ws.flush().map_err(std::io::Error::other)?;
            let _ = stream.shutdown(Shutdown::Both);
            return Ok(());
        }
        ws.send(frame(2, trailer.as_bytes()))
            .map_err(std::io::Error::other)?;
        ws.send(frame(3, success.to_string().as_bytes()))
            .map_err(std::io::Error::other)?;
        let _ = ws.close(None);
        let _ = ws.flush();
        Ok(())
    };
    match behaviour {
        Exec::Recorded(json) => send_recorded(&mut ws, json, None, false),
        Exec::DropFirst(json) => send_recorded(&mut ws, json, None, first),
        Exec::BadChecksum(json) => send_recorded(&mut ws, json, Some(&"0".repeat(64)), false),
        Exec::ExitFails => {
            ws.send(frame(
                2,
                b"netray: error: cannot read /proc/thread-self/ns/net: Permission denied\n",
            ))
            .map_err(std::io::Error::other)?;
            let st = json!({"metadata": {}, "status": "Failure",
                "message": format!("command terminated with non-zero exit code: error executing command {command:?}, exit code 2"),
                "reason": "NonZeroExitCode",
                "details": {"causes": [{"reason": "ExitCode", "message": "2"}]}});
            ws.send(frame(3, st.to_string().as_bytes()))
                .map_err(std::io::Error::other)?;
            let _ = ws.close(None);
            let _ = ws.flush();
            Ok(())
        }
        Exec::Netns(ns) => {
            // The pod's command, with the image's `netray` replaced by the binary under test,
            // inside the lab node's namespace.
            assert_eq!(command.first().map(String::as_str), Some("netray"));
            let mut child = Command::new("ip")
                .args(["netns", "exec", ns])
                .arg(NETRAY)
                .args(&command[1..])
                .stdin(Stdio::null())
                .stdout(Stdio::piped())
                .stderr(Stdio::piped())
                .spawn()?;
            let (tx, rx) = std::sync::mpsc::channel::<(u8, Vec<u8>)>();
            let mut out = child.stdout.take().unwrap();
            let mut err = child.stderr.take().unwrap();
            let tx2 = tx.clone();
            let t1 = std::thread::spawn(move || {
                let mut buf = vec![0u8; 16 << 10];
                while let Ok(n) = out.read(&mut buf) {
                    if n == 0 || tx.send((1, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            });
            let t2 = std::thread::spawn(move || {
                let mut buf = vec![0u8; 4 << 10];
                while let Ok(n) = err.read(&mut buf) {
                    if n == 0 || tx2.send((2, buf[..n].to_vec())).is_err() {
                        break;
                    }
                }
            });
            for (ch, data) in rx {
                ws.send(frame(ch, &data)).map_err(std::io::Error::other)?;
            }
            let _ = (t1.join(), t2.join());
            let code = child.wait()?.code().unwrap_or(-1);
            let st = if code == 0 {
                success
            } else {
                json!({"metadata": {}, "status": "Failure",
                       "message": format!("command terminated with non-zero exit code: exit code {code}"),
                       "reason": "NonZeroExitCode"})
            };
            ws.send(frame(3, st.to_string().as_bytes()))
                .map_err(std::io::Error::other)?;
            let _ = ws.close(None);
            let _ = ws.flush();
            Ok(())
        }
    }
}

pub struct Run {
    pub code: Option<i32>,
    pub stderr: String,
}

/// `netray collect --kube --kubeconfig KC ARGS`, bounded.
pub fn collect(kc: &Path, args: &[&str]) -> Run {
    let mut cmd = Command::new(NETRAY);
    cmd.args(["collect", "--kube", "--kubeconfig", kc.to_str().unwrap()])
        .args(args)
        .env("NETRAY_KUBE_BACKOFF_MS", "50");
    let o = common::run_bounded(cmd, "netray collect --kube", HANG_GUARD);
    Run {
        code: o.status.code(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

pub fn diagnose_json(bundle: &Path, from: &str, to: &str) -> (Option<i32>, Value) {
    let o = common::netray_bounded(
        &[
            "diagnose",
            "--bundle",
            bundle.to_str().unwrap(),
            "--from",
            from,
            "--to",
            to,
            "-o",
            "json",
        ],
        HANG_GUARD,
    );
    let v = serde_json::from_slice(&o.stdout).unwrap_or_else(|e| {
        panic!(
            "diagnose {from} → {to} on {}: no JSON ({e}): {}",
            bundle.display(),
            String::from_utf8_lossy(&o.stderr)
        )
    });
    (o.status.code(), v)
}

pub fn items_of(cluster_json: &Value) -> Vec<Value> {
    cluster_json["items"].as_array().unwrap().clone()
}

pub fn read_json(p: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(p).unwrap()).unwrap()
}
