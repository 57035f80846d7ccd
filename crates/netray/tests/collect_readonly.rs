//! `netray collect` is strictly read-only: every table of every lab namespace dumps
//! byte-identically before and after a collection, after masking fields the kernel changes
//! by itself (each mask is justified where it is applied).

mod collect_lab;

use collect_lab::{build, collect, have, root_or_skip};
use netray_lab::Netns;

/// Replace the token following each `key` (e.g. `gc_timer 123.45`) with `*`.
fn mask_after(line: &str, keys: &[&str]) -> String {
    let mut out = Vec::new();
    let mut mask_next = false;
    for tok in line.split(' ') {
        if mask_next {
            if tok.is_empty() {
                // `ip` pads timer values with spaces.
                continue;
            }
            out.push("*".to_string());
            mask_next = false;
            continue;
        }
        mask_next = keys.contains(&tok);
        out.push(tok.to_string());
    }
    out.join(" ")
}

/// `/proc/modules` as text ("" when the kernel cannot load modules).
fn modules() -> String {
    std::fs::read_to_string("/proc/modules").unwrap_or_default()
}

/// Whether running a tool that needs `module` cannot load it: the module is there already,
/// or the kernel cannot load modules at all. The dumps below skip tools whose module is
/// absent, so that the comparison itself loads nothing and cannot mask a load by collect.
fn may_use(module: &str) -> bool {
    !std::path::Path::new("/proc/modules").exists()
        || std::path::Path::new("/sys/module").join(module).exists()
        || modules()
            .lines()
            .any(|l| l.split_whitespace().next() == Some(module))
}

fn run(ns: &Netns, program: &str, args: &[&str]) -> String {
    match ns.command(program).args(args).output() {
        Ok(o) => format!(
            "{}{}",
            String::from_utf8_lossy(&o.stdout),
            // `ip` says this when a veth peer's namespace is being created or deleted by
            // another test at that moment: about the peer, not about this namespace's state.
            String::from_utf8_lossy(&o.stderr)
                .lines()
                .filter(|l| !l.contains("Peer netns reference is invalid"))
                .map(|l| format!("{l}\n"))
                .collect::<String>()
        ),
        Err(e) => format!("cannot run {program}: {e}"),
    }
}

/// Every table of `ns`, as text, volatile fields masked.
fn dump(ns: &Netns) -> Vec<(String, String)> {
    let mut out = Vec::new();
    let mut add = |what: &str, text: String| out.push((what.to_string(), text));
    // Bridge and bridge-port timers count down in real time.
    add(
        "ip -d link",
        run(ns, "ip", &["-d", "link", "show"])
            .lines()
            .map(|l| {
                mask_after(
                    l,
                    &[
                        "hello_timer",
                        "tcn_timer",
                        "topology_change_timer",
                        "gc_timer",
                        "hold_timer",
                        "message_age_timer",
                        "forward_delay_timer",
                    ],
                )
            })
            .collect::<Vec<_>>()
            .join("\n"),
    );
    add("ip addr", run(ns, "ip", &["addr", "show"]));
    for fam in ["-4", "-6"] {
        add(
            &format!("ip {fam} route"),
            run(ns, "ip", &[fam, "-d", "route", "show", "table", "all"]),
        );
        add(
            &format!("ip {fam} rule"),
            run(ns, "ip", &[fam, "rule", "show"]),
        );
        // Reachability timers move dynamic entries between REACHABLE/STALE/DELAY/PROBE on
        // their own; an entry appearing or vanishing, its address and static states are
        // still compared.
        add(
            &format!("ip {fam} neigh"),
            run(ns, "ip", &[fam, "neigh", "show", "nud", "all"])
                .lines()
                .map(|l| {
                    ["REACHABLE", "STALE", "DELAY", "PROBE"]
                        .iter()
                        .fold(l.to_string(), |a, s| a.replace(s, "DYNAMIC"))
                })
                .collect::<Vec<_>>()
                .join("\n"),
        );
    }
    add("bridge fdb", run(ns, "bridge", &["fdb", "show"]));
    add(
        "ip_tables_names",
        run(
            ns,
            "sh",
            &[
                "-c",
                "cat /proc/net/ip_tables_names /proc/net/ip6_tables_names 2>&1",
            ],
        ),
    );
    // Without -c: packet counters move with background traffic (IPv6 MLD/ND). The header
    // and footer comments carry the time of the dump.
    for (tool, module) in [
        ("iptables-legacy-save", "ip_tables"),
        ("ip6tables-legacy-save", "ip6_tables"),
        ("iptables-nft-save", "nf_tables"),
        ("ip6tables-nft-save", "nf_tables"),
    ] {
        if !may_use(module) {
            add(tool, format!("skipped: module {module} is not loaded"));
            continue;
        }
        add(
            tool,
            run(ns, tool, &[])
                .lines()
                .filter(|l| !l.starts_with("# Generated by") && !l.starts_with("# Completed on"))
                .collect::<Vec<_>>()
                .join("\n"),
        );
    }
    // nft counters move with traffic, like iptables counters.
    add(
        "nft list ruleset",
        if !may_use("nf_tables") {
            "skipped: module nf_tables is not loaded".to_string()
        } else {
            run(ns, "nft", &["list", "ruleset"])
        }
        .lines()
        .map(|l| mask_after(l, &["packets", "bytes"]))
        .collect::<Vec<_>>()
        .join("\n"),
    );
    add(
        "ipset save",
        if may_use("ip_set") {
            run(ns, "ipset", &["save"])
        } else {
            "skipped: module ip_set is not loaded".to_string()
        },
    );
    // The conntrack count is a live gauge.
    add(
        "sysctl net.*",
        run(ns, "sysctl", &["-a"])
            .lines()
            .filter(|l| l.starts_with("net.") && !l.starts_with("net.netfilter.nf_conntrack_count"))
            .collect::<Vec<_>>()
            .join("\n"),
    );
    if have("conntrack") && may_use("nf_conntrack_netlink") {
        // Each entry's remaining timeout (third field) counts down.
        add(
            "conntrack -L",
            run(ns, "conntrack", &["-L"])
                .lines()
                .filter(|l| !l.contains("flow entries have been shown"))
                .map(|l| {
                    let mut t: Vec<&str> = l.split_whitespace().collect();
                    if t.len() > 2 {
                        t[2] = "*";
                    }
                    t.join(" ")
                })
                .collect::<Vec<_>>()
                .join("\n"),
        );
    }
    out
}

#[test]
fn collect_changes_nothing() {
    if !root_or_skip("collect_changes_nothing") {
        return;
    }
    // Before any tool runs: what the lab and the dumps load is told apart from collect.
    let mods_start = modules();
    let lab = build();
    let mods_lab = modules();
    let all: Vec<&Netns> = [&lab.node, &lab.ul]
        .into_iter()
        .chain(lab.pods.iter())
        .collect();
    let before: Vec<_> = all.iter().map(|n| dump(n)).collect();
    let mods_before = modules();
    assert_eq!(
        mods_lab, mods_before,
        "the comparison dumps loaded a module (they must not: it would hide a load by collect)"
    );
    let snap = collect(&lab.node, &["--netns", lab.ul.name()]);
    // Right after collect, before the dumps run again.
    let mods_after = modules();
    assert!(
        snap["namespaces"].as_array().map(|a| a.len()).unwrap_or(0) >= 4,
        "all lab namespaces were collected"
    );
    let after: Vec<_> = all.iter().map(|n| dump(n)).collect();
    for ((ns, b), a) in all.iter().zip(&before).zip(&after) {
        for ((what, tb), (_, ta)) in b.iter().zip(a) {
            if tb != ta {
                let lb: Vec<&str> = tb.lines().collect();
                let la: Vec<&str> = ta.lines().collect();
                let gone: Vec<_> = lb.iter().filter(|l| !la.contains(l)).collect();
                let new: Vec<_> = la.iter().filter(|l| !lb.contains(l)).collect();
                panic!(
                    "{}: `{what}` changed during netray collect\n before only: {gone:#?}\n after only: {new:#?}",
                    ns.name()
                );
            }
        }
    }
    assert_eq!(
        mods_before, mods_after,
        "netray collect loaded a kernel module (modules at the start, before the lab: {mods_start:?})"
    );
}

/// On a kernel that loads modules, a subsystem whose module is absent is not asked (asking
/// would load it) and `not_collected` says so. This kernel has everything built in, so the
/// absence is simulated (`NETRAY_TEST_ASSUME_ABSENT_MODULES`); the decision itself is unit
/// tested in `netray_collect::modules`.
#[test]
fn collect_skips_subsystems_whose_module_is_absent() {
    if !root_or_skip("collect_skips_subsystems_whose_module_is_absent") {
        return;
    }
    let lab = build();
    let out = lab
        .node
        .command(env!("CARGO_BIN_EXE_netray"))
        .arg("collect")
        .env(
            "NETRAY_TEST_ASSUME_ABSENT_MODULES",
            "nf_tables,nf_conntrack_netlink,ip_set",
        )
        .output()
        .expect("run netray collect");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let snap: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let nc = snap["not_collected"].as_array().unwrap();
    for what in ["nftables", "conntrack", "ipset"] {
        let e = nc
            .iter()
            .find(|e| e["what"] == what && e["netns"].is_null())
            .unwrap_or_else(|| panic!("no node-level not_collected for {what}: {nc:#?}"));
        assert!(e["reason"].as_str().unwrap().contains("not loaded"), "{e}");
    }
    let host = &snap["namespaces"][0];
    let fw = &host["firewall"];
    assert!(fw["nft_json"].is_null(), "nf_tables was asked: {fw}");
    assert!(
        fw["iptables"]
            .as_array()
            .unwrap()
            .iter()
            .all(|d| d["backend"] == "legacy"),
        "iptables-nft-save ran: {fw}"
    );
    assert!(
        fw["iptables"]
            .as_array()
            .unwrap()
            .iter()
            .any(|d| d["backend"] == "legacy"),
        "the legacy tables (x_tables present) are still collected: {fw}"
    );
    assert!(fw["ipset"].is_null(), "ipset was asked: {fw}");
    assert!(host["conntrack"].is_null(), "ctnetlink was asked");
    assert!(
        !host["sockets"].as_array().unwrap().is_empty()
            || !snap["namespaces"]
                .as_array()
                .unwrap()
                .iter()
                .all(|n| n["sockets"].as_array().unwrap().is_empty()),
        "sockets (module present) are still collected"
    );
}
