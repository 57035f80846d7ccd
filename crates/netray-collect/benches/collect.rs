//! `netray collect` at kube-proxy scale: a node namespace holding a 10,000-service
//! kube-proxy-shaped ruleset (≈110k nat rules: 3 endpoints per service) plus 100 pod
//! namespaces on veths. Times a full collection against `iptables-save` alone, in the same
//! run, and reports the collector's peak RSS.
//!
//! Root only (skips otherwise). `NETRAY_BENCH_BACKEND=legacy|nft` picks the iptables
//! backend holding the ruleset (default `legacy`; with `nft`, iptables-nft-save itself takes
//! tens of seconds, so expect a long run). `NETRAY_BENCH_SERVICES` and `NETRAY_BENCH_PODS`
//! scale it down for a quick look.

use std::fmt::Write as _;
use std::io::Write as _;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use criterion::Criterion;
use netray_lab::{Netns, lab_tag, require_root};

const CHILD_ENV: &str = "NETRAY_BENCH_CHILD_NETNS";

fn env_num(k: &str, d: usize) -> usize {
    std::env::var(k)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(d)
}

/// An `iptables-restore` input shaped like kube-proxy's nat table.
fn kube_proxy_rules(services: usize) -> String {
    let mut w = String::with_capacity(services * 1200);
    w.push_str("*nat\n:PREROUTING ACCEPT [0:0]\n:INPUT ACCEPT [0:0]\n:OUTPUT ACCEPT [0:0]\n:POSTROUTING ACCEPT [0:0]\n:KUBE-SERVICES - [0:0]\n:KUBE-NODEPORTS - [0:0]\n:KUBE-MARK-MASQ - [0:0]\n:KUBE-POSTROUTING - [0:0]\n");
    for i in 0..services {
        let _ = writeln!(w, ":KUBE-SVC-{i:016X} - [0:0]");
        for e in 0..3 {
            let _ = writeln!(w, ":KUBE-SEP-{i:012X}{e:04X} - [0:0]");
        }
    }
    w.push_str(
        "-A PREROUTING -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n",
    );
    w.push_str("-A OUTPUT -m comment --comment \"kubernetes service portals\" -j KUBE-SERVICES\n");
    w.push_str("-A POSTROUTING -m comment --comment \"kubernetes postrouting rules\" -j KUBE-POSTROUTING\n");
    w.push_str("-A KUBE-MARK-MASQ -j MARK --set-xmark 0x4000/0x4000\n");
    w.push_str("-A KUBE-POSTROUTING -m mark ! --mark 0x4000/0x4000 -j RETURN\n");
    w.push_str("-A KUBE-POSTROUTING -j MARK --set-xmark 0x4000/0x0\n");
    w.push_str("-A KUBE-POSTROUTING -m comment --comment \"kubernetes service traffic requiring SNAT\" -j MASQUERADE --random-fully\n");
    for i in 0..services {
        let ip = format!("10.96.{}.{}", i / 256, i % 256);
        let svc = format!("KUBE-SVC-{i:016X}");
        let c = format!("ns{}/svc{i}:http", i % 50);
        let _ = writeln!(
            w,
            "-A KUBE-SERVICES -d {ip}/32 -p tcp -m comment --comment \"{c} cluster IP\" -m tcp --dport 80 -j {svc}"
        );
        let _ = writeln!(
            w,
            "-A {svc} ! -s 10.244.0.0/16 -d {ip}/32 -p tcp -m comment --comment \"{c} cluster IP\" -m tcp --dport 80 -j KUBE-MARK-MASQ"
        );
        for e in 0..3usize {
            let sep = format!("KUBE-SEP-{i:012X}{e:04X}");
            let n = i * 3 + e;
            let pod = format!("10.{}.{}.{}", 244 + n / 65536, (n / 256) % 256, n % 256);
            if e < 2 {
                let _ = writeln!(
                    w,
                    "-A {svc} -m comment --comment \"{c} -> {pod}:8080\" -m statistic --mode random --probability {:.11} -j {sep}",
                    1.0 / (3 - e) as f64
                );
            } else {
                let _ = writeln!(
                    w,
                    "-A {svc} -m comment --comment \"{c} -> {pod}:8080\" -j {sep}"
                );
            }
            let _ = writeln!(
                w,
                "-A {sep} -s {pod}/32 -m comment --comment \"{c}\" -j KUBE-MARK-MASQ"
            );
            let _ = writeln!(
                w,
                "-A {sep} -p tcp -m comment --comment \"{c}\" -m tcp -j DNAT --to-destination {pod}:8080"
            );
        }
    }
    w.push_str("-A KUBE-SERVICES -m comment --comment \"kubernetes service nodeports\" -m addrtype --dst-type LOCAL -j KUBE-NODEPORTS\nCOMMIT\n");
    w
}

fn feed(c: &mut Command, input: &str) {
    let mut child = c.stdin(Stdio::piped()).spawn().expect("spawn");
    child
        .stdin
        .take()
        .expect("stdin")
        .write_all(input.as_bytes())
        .expect("write");
    let st = child.wait().expect("wait");
    assert!(st.success(), "{c:?} failed");
}

struct Lab {
    _pods: Vec<Netns>,
    node: Netns,
    backend: String,
}

fn build(services: usize, pods: usize, backend: &str) -> Lab {
    let tag = lab_tag();
    let node = Netns::create(&format!("bn{tag}")).expect("node netns");
    let mut batch_node = String::from(
        "link add cni0 type bridge\nlink set cni0 up\naddr add 10.244.0.1/16 dev cni0\n",
    );
    let mut list = Vec::new();
    for i in 0..pods {
        let p = Netns::create(&format!("bp{tag}y{i}")).expect("pod netns");
        let _ = writeln!(
            batch_node,
            "link add veth{i} type veth peer name eth0 netns {}",
            p.name()
        );
        let _ = writeln!(batch_node, "link set veth{i} master cni0 up");
        list.push(p);
    }
    feed(
        Command::new("ip").args(["-n", node.name(), "-batch", "-"]),
        &batch_node,
    );
    for (i, p) in list.iter().enumerate() {
        let b = format!(
            "link set eth0 up\naddr add 10.244.{}.{}/16 dev eth0\nroute add default via 10.244.0.1\n",
            1 + i / 250,
            1 + i % 250
        );
        feed(Command::new("ip").args(["-n", p.name(), "-batch", "-"]), &b);
    }
    let rules = kube_proxy_rules(services);
    let t = Instant::now();
    feed(
        node.command(&format!("iptables-{backend}-restore"))
            .arg("-w"),
        &rules,
    );
    eprintln!(
        "bench lab: {services} services ({} nat rules) restored with iptables-{backend} in {:.1?}, {pods} pods",
        rules.lines().filter(|l| l.starts_with("-A")).count(),
        t.elapsed()
    );
    Lab {
        _pods: list,
        node,
        backend: backend.to_string(),
    }
}

/// Child mode: enter the namespace, collect, serialize, print own peak RSS (VmHWM, kB).
fn child(netns: &str) {
    let f = std::fs::File::open(format!("/run/netns/{netns}")).expect("netns");
    use std::os::fd::AsRawFd;
    // SAFETY: setns on a valid fd, single-threaded at this point.
    assert_eq!(
        unsafe { libc::setns(f.as_raw_fd(), libc::CLONE_NEWNET) },
        0,
        "setns"
    );
    let snap = netray_collect::collect(&netray_collect::Options::default()).expect("collect");
    let json = serde_json::to_string_pretty(&snap).expect("json");
    std::io::sink().write_all(json.as_bytes()).expect("sink");
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    let hwm = status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .unwrap_or("VmHWM: ? kB");
    println!(
        "{hwm} json_bytes={} namespaces={}",
        json.len(),
        snap.namespaces.len()
    );
}

fn run_collect(lab: &Lab) -> String {
    let exe = std::env::current_exe().expect("exe");
    let out = Command::new(exe)
        .env(CHILD_ENV, lab.node.name())
        .stderr(Stdio::inherit())
        .output()
        .expect("child");
    assert!(out.status.success(), "collect child failed");
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn run_save(lab: &Lab) {
    let out = lab
        .node
        .command(&format!("iptables-{}-save", lab.backend))
        .arg("-c")
        .stdout(Stdio::piped())
        .output()
        .expect("save");
    assert!(out.status.success());
    std::hint::black_box(out.stdout.len());
}

fn main() {
    if let Ok(ns) = std::env::var(CHILD_ENV) {
        child(&ns);
        return;
    }
    if let Err(why) = require_root() {
        eprintln!("SKIPPED collect benchmark: {why}");
        return;
    }
    let services = env_num("NETRAY_BENCH_SERVICES", 10_000);
    let pods = env_num("NETRAY_BENCH_PODS", 100);
    let backend = std::env::var("NETRAY_BENCH_BACKEND").unwrap_or_else(|_| "legacy".into());
    let lab = build(services, pods, &backend);

    // One timed shot of each first, with the collector's peak RSS.
    let t = Instant::now();
    run_save(&lab);
    let save = t.elapsed();
    let t = Instant::now();
    let info = run_collect(&lab);
    let coll = t.elapsed();
    eprintln!(
        "single shot: iptables-{backend}-save -c {save:.2?}; netray collect {coll:.2?} (+{:.2?}); collector {info}",
        coll.saturating_sub(save)
    );

    let mut c = Criterion::default()
        .sample_size(10)
        .warm_up_time(Duration::from_millis(100))
        .measurement_time(Duration::from_secs(5))
        .configure_from_args();
    let mut g = c.benchmark_group(format!("collect-{services}svc-{pods}pods-{backend}"));
    g.bench_function("iptables-save", |b| b.iter(|| run_save(&lab)));
    g.bench_function("netray-collect", |b| b.iter(|| run_collect(&lab)));
    g.finish();
    c.final_summary();
}
