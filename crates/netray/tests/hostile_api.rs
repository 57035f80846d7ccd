//! The Kubernetes API client against a hostile server (issue 15, items 7 and 8): a plain-HTTP
//! server on 127.0.0.1 that never stops paging, drips its body, sends an endless body or
//! echoes credentials. Each run ends quickly (within the limits, under a generous hang guard)
//! with exit code 2, a clear message, and no credential in anything printed.
#![cfg(feature = "live")]

use std::io::{BufRead, BufReader, Write};
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

mod common;

use common::NETRAY;
/// A run that takes longer than this is a hang.
const HANG_GUARD: Duration = Duration::from_secs(90);

const TOKEN: &str = "tok-Zq8Vb3xN1pL0sW7e";
const PASSWORD: &str = "pw-Hk2Jm9Qr4Tz";

/// How the fake server answers every request.
#[derive(Clone, Copy)]
enum Mode {
    /// A list page with a new `continue` token every time.
    EndlessContinue,
    /// The same `continue` token every time.
    SameContinue,
    /// A body of promised length, one byte every 300 ms.
    SlowDrip,
    /// A body without end (no length, bytes forever).
    EndlessBody,
    /// 401 with a message echoing the request's Authorization header.
    EchoAuth,
}

struct Server {
    port: u64,
    requests: Arc<AtomicU64>,
}

fn serve(mode: Mode) -> Server {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = u64::from(listener.local_addr().unwrap().port());
    let requests = Arc::new(AtomicU64::new(0));
    let reqs = requests.clone();
    std::thread::spawn(move || {
        for conn in listener.incoming() {
            let Ok(conn) = conn else { continue };
            let reqs = reqs.clone();
            std::thread::spawn(move || {
                let _ = handle(conn, mode, &reqs);
            });
        }
    });
    Server { port, requests }
}

fn handle(conn: TcpStream, mode: Mode, reqs: &AtomicU64) -> std::io::Result<()> {
    conn.set_read_timeout(Some(Duration::from_secs(30)))?;
    let mut reader = BufReader::new(conn.try_clone()?);
    conn.set_nodelay(true)?;
    let mut out = conn;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line)? == 0 {
            return Ok(());
        }
        let mut auth = String::new();
        loop {
            let mut h = String::new();
            if reader.read_line(&mut h)? == 0 || h == "\r\n" || h == "\n" {
                break;
            }
            if h.to_ascii_lowercase().starts_with("authorization:") {
                auth = h.trim_end().to_string();
            }
        }
        let n = reqs.fetch_add(1, Ordering::Relaxed);
        match mode {
            Mode::EndlessContinue | Mode::SameContinue => {
                let token = match mode {
                    Mode::SameContinue => "again".to_string(),
                    _ => format!("page-{n}"),
                };
                let body = format!(
                    r#"{{"kind":"NodeList","apiVersion":"v1","metadata":{{"continue":"{token}"}},"items":[]}}"#
                );
                // One write: split writes meet Nagle and delayed ACKs (40 ms a request).
                out.write_all(
                    format!(
                        "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                        body.len()
                    )
                    .as_bytes(),
                )?;
            }
            Mode::SlowDrip => {
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100000\r\n\r\n"
                )?;
                loop {
                    out.write_all(b" ")?;
                    out.flush()?;
                    std::thread::sleep(Duration::from_millis(300));
                }
            }
            Mode::EndlessBody => {
                write!(
                    out,
                    "HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{{\"items\":["
                )?;
                let chunk = "{},".repeat(20_000);
                loop {
                    out.write_all(chunk.as_bytes())?;
                }
            }
            Mode::EchoAuth => {
                let body = format!(
                    r#"{{"kind":"Status","apiVersion":"v1","status":"Failure","message":"bad credentials: {auth}","code":401}}"#
                );
                write!(
                    out,
                    "HTTP/1.1 401 Unauthorized\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}",
                    body.len()
                )?;
            }
        }
    }
}

fn kubeconfig(dir: &Path, server: &str, user: &str) -> PathBuf {
    let path = dir.join("kubeconfig");
    std::fs::write(
        &path,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: c\nclusters:\n\
             - name: k\n  cluster:\n    server: {server}\n\
             contexts:\n- name: c\n  context:\n    cluster: k\n    user: u\n\
             users:\n- name: u\n  user:\n{user}"
        ),
    )
    .unwrap();
    path
}

struct Run {
    code: Option<i32>,
    stdout: String,
    stderr: String,
}

/// `netray cluster --kubeconfig KC` with a clean environment; killed (and failed) after
/// [`HANG_GUARD`].
fn netray_cluster(kc: &Path, timeout_secs: &str) -> Run {
    let home = kc.parent().unwrap();
    let mut cmd = Command::new(NETRAY);
    cmd.args(["cluster", "--kubeconfig", kc.to_str().unwrap()])
        .env_clear()
        .env("HOME", home)
        .env("PATH", std::env::var_os("PATH").unwrap_or_default())
        .env("NETRAY_KUBE_TIMEOUT", timeout_secs);
    let o = common::run_bounded(cmd, "netray cluster", HANG_GUARD);
    Run {
        code: o.status.code(),
        stdout: String::from_utf8_lossy(&o.stdout).into_owned(),
        stderr: String::from_utf8_lossy(&o.stderr).into_owned(),
    }
}

fn assert_clean(r: &Run, needles: &[&str]) {
    assert_eq!(r.code, Some(2), "stderr: {}", r.stderr);
    for n in needles {
        assert!(r.stderr.contains(n), "missing {n:?} in: {}", r.stderr);
    }
    for secret in [TOKEN, PASSWORD] {
        assert!(
            !r.stderr.contains(secret) && !r.stdout.contains(secret),
            "secret printed: {}",
            r.stderr
        );
    }
    assert!(r.stderr.len() < 4000, "stderr of {} bytes", r.stderr.len());
    // Memory: the largest peak of every netray this test binary has reaped so far
    // (RUSAGE_CHILDREN), hence also this one's, stays small: the API limits (response size,
    // pages, deadline) bound it whatever the server sends.
    // SAFETY: rusage is plain data, written by getrusage.
    let mut u: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `u` is valid for writes.
    assert_eq!(unsafe { libc::getrusage(libc::RUSAGE_CHILDREN, &mut u) }, 0);
    assert!(
        u.ru_maxrss < 500 * 1024,
        "a netray run peaked at {} KiB (bound 500 MiB)",
        u.ru_maxrss
    );
}

fn url(s: &Server) -> String {
    format!("http://127.0.0.1:{}", s.port)
}

#[test]
fn endless_continue_tokens_stop_at_the_page_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let s = serve(Mode::EndlessContinue);
    let r = netray_cluster(&kubeconfig(tmp.path(), &url(&s), "    {}\n"), "60");
    assert_clean(&r, &["listing nodes", "MAX_LIST_PAGES"]);
    let n = s.requests.load(Ordering::Relaxed);
    assert!(n <= 1_000, "{n} requests");
}

#[test]
fn a_repeated_continue_token_is_an_error() {
    let tmp = tempfile::tempdir().unwrap();
    let s = serve(Mode::SameContinue);
    let r = netray_cluster(&kubeconfig(tmp.path(), &url(&s), "    {}\n"), "60");
    assert_clean(&r, &["listing nodes", "same continue token"]);
    assert!(s.requests.load(Ordering::Relaxed) <= 3);
}

#[test]
fn a_slow_drip_body_stops_at_the_deadline() {
    let tmp = tempfile::tempdir().unwrap();
    let s = serve(Mode::SlowDrip);
    let r = netray_cluster(&kubeconfig(tmp.path(), &url(&s), "    {}\n"), "2");
    assert_clean(
        &r,
        &["listing nodes", "deadline of 2 s", "NETRAY_KUBE_TIMEOUT"],
    );
}

#[test]
fn an_endless_body_stops_at_the_size_limit() {
    let tmp = tempfile::tempdir().unwrap();
    let s = serve(Mode::EndlessBody);
    let r = netray_cluster(&kubeconfig(tmp.path(), &url(&s), "    {}\n"), "60");
    assert_clean(&r, &["listing nodes", "MAX_RESPONSE_BYTES"]);
}

#[test]
fn a_password_in_the_server_url_is_never_printed() {
    let tmp = tempfile::tempdir().unwrap();
    let s = serve(Mode::EchoAuth);
    let server = format!("http://alice:{PASSWORD}@127.0.0.1:{}", s.port);
    let r = netray_cluster(&kubeconfig(tmp.path(), &server, "    {}\n"), "60");
    assert_clean(&r, &["alice:[REDACTED]@127.0.0.1", "HTTP 401"]);
}

#[test]
fn a_token_echoed_by_the_server_is_redacted_and_plain_http_warns() {
    let tmp = tempfile::tempdir().unwrap();
    let s = serve(Mode::EchoAuth);
    let user = format!("    token: {TOKEN}\n");
    let r = netray_cluster(&kubeconfig(tmp.path(), &url(&s), &user), "60");
    assert_clean(&r, &["HTTP 401", "[REDACTED]", "plain http://"]);
}

#[test]
fn a_token_is_not_sent_over_plain_http_to_another_host() {
    let tmp = tempfile::tempdir().unwrap();
    let user = format!("    token: {TOKEN}\n");
    // TEST-NET-1: never contacted, the client refuses first.
    let r = netray_cluster(
        &kubeconfig(tmp.path(), "http://192.0.2.1:6443", &user),
        "60",
    );
    assert_clean(
        &r,
        &["refusing to send credentials", "NETRAY_KUBE_ALLOW_HTTP"],
    );
}

#[test]
fn a_malformed_kubeconfig_does_not_quote_the_token() {
    let tmp = tempfile::tempdir().unwrap();
    for user in [
        format!("    token: [{TOKEN}\n"),
        format!("    token: {{{TOKEN}\n   bad: : :\n"),
        format!("    password: \"{PASSWORD}\n"),
        format!("\ttoken: {TOKEN}\n"),
    ] {
        let r = netray_cluster(&kubeconfig(tmp.path(), "https://127.0.0.1:1", &user), "60");
        assert_clean(&r, &["kubeconfig"]);
    }
}
