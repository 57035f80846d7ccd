//! `netray collect` against the kernel's own tools: in a lab node, the snapshot's links,
//! addresses, routes (all tables), rules, neighbours, FDB, sysctls and iptables text equal
//! what `ip -j -d`, `bridge -j`, `sysctl` and `iptables-save` report for the host and pod
//! namespaces — field by field on the fields both have.

mod collect_lab;

use std::collections::BTreeMap;

use collect_lab::{build, collect, inode, json, root_or_skip, text};
use netray_lab::Netns;
use serde_json::{Value, json};

fn s(v: &Value) -> String {
    match v {
        Value::String(x) => x.clone(),
        Value::Null => String::new(),
        other => other.to_string(),
    }
}

fn table_num(name: &str) -> u64 {
    match name {
        "local" => 255,
        "main" => 254,
        "default" => 253,
        n => n.parse().unwrap_or_else(|_| panic!("table {n}")),
    }
}

fn sorted(mut v: Vec<String>) -> Vec<String> {
    v.sort();
    v
}

fn strs(v: &Value) -> Vec<String> {
    v.as_array()
        .map(|a| a.iter().map(s).collect())
        .unwrap_or_default()
}

/// Links: every field `ip -j -d link` and the snapshot share.
fn compare_links(ns: &Netns, snap: &Value, peers: &BTreeMap<String, u64>) {
    let ip = json(ns, "ip", &["-j", "-d", "link", "show"]);
    let links = snap["links"].as_array().expect("links");
    let ip = ip.as_array().expect("ip links");
    assert_eq!(links.len(), ip.len(), "{}: link count", ns.name());
    let own = inode(ns);
    for l in ip {
        let idx = &l["ifindex"];
        let name = s(&l["ifname"]);
        let ctx = format!("{} link {name}", ns.name());
        let sl = links
            .iter()
            .find(|x| &x["ifindex"] == idx)
            .unwrap_or_else(|| panic!("{ctx}: missing in snapshot"));
        assert_eq!(s(&sl["name"]), name, "{ctx}: name");
        assert_eq!(sl["mtu"], l["mtu"], "{ctx}: mtu");
        assert_eq!(sl["flags"], l["flags"], "{ctx}: flags");
        assert_eq!(
            s(&sl["operstate"]),
            s(&l["operstate"]).to_lowercase(),
            "{ctx}: operstate"
        );
        assert_eq!(s(&sl["master"]), s(&l["master"]), "{ctx}: master");
        if matches!(s(&l["link_type"]).as_str(), "ether" | "loopback") {
            assert_eq!(s(&sl["mac"]), s(&l["address"]), "{ctx}: mac");
        }
        let group = if s(&l["group"]) == "default" {
            0
        } else {
            l["group"].as_u64().unwrap_or(0)
        };
        assert_eq!(sl["group"].as_u64(), Some(group), "{ctx}: group");
        let info = &l["linkinfo"];
        let kind = &sl["kind"];
        let ik = s(&info["info_kind"]);
        let d = &info["info_data"];
        match ik.as_str() {
            "" => {
                let want = if s(&l["link_type"]) == "loopback" {
                    "loopback"
                } else {
                    "device"
                };
                assert_eq!(s(&kind["type"]), want, "{ctx}: kind");
            }
            "veth" => {
                assert_eq!(s(&kind["type"]), "veth", "{ctx}: kind");
                assert_eq!(kind["peer_ifindex"], l["link_index"], "{ctx}: peer ifindex");
                let want = if l.get("link_netnsid").is_some() {
                    *peers
                        .get(&name)
                        .unwrap_or_else(|| panic!("{ctx}: test lacks the expected peer"))
                } else {
                    own
                };
                assert_eq!(kind["peer_netns"].as_u64(), Some(want), "{ctx}: peer netns");
            }
            "bridge" => {
                assert_eq!(s(&kind["type"]), "bridge", "{ctx}: kind");
                assert_eq!(kind["stp_state"], d["stp_state"], "{ctx}: stp");
                assert_eq!(
                    kind["vlan_filtering"].as_bool(),
                    Some(d["vlan_filtering"].as_u64() == Some(1)),
                    "{ctx}: vlan_filtering"
                );
                for k in ["nf_call_iptables", "nf_call_ip6tables", "nf_call_arptables"] {
                    assert_eq!(
                        kind[k].as_bool(),
                        Some(d[k].as_u64() == Some(1)),
                        "{ctx}: {k}"
                    );
                }
                if let Some(p) = d.get("vlan_default_pvid") {
                    assert_eq!(&kind["default_pvid"], p, "{ctx}: pvid");
                }
            }
            "vxlan" => {
                assert_eq!(s(&kind["type"]), "vxlan", "{ctx}: kind");
                assert_eq!(kind["vni"], d["id"], "{ctx}: vni");
                assert_eq!(kind["port"], d["port"], "{ctx}: port");
                assert_eq!(s(&kind["local"]), s(&d["local"]), "{ctx}: local");
                assert_eq!(s(&kind["dev"]), s(&d["link"]), "{ctx}: dev");
                assert_eq!(kind["learning"], d["learning"], "{ctx}: learning");
                let group = if d.get("group").is_some() {
                    s(&d["group"])
                } else {
                    s(&d["remote"])
                };
                assert_eq!(s(&kind["group"]), group, "{ctx}: group");
            }
            other => assert_eq!(s(&kind["kind"]), other, "{ctx}: other kind"),
        }
        if s(&info["info_slave_kind"]) == "bridge" {
            let sd = &info["info_slave_data"];
            let bp = &sl["bridge_port"];
            assert_eq!(s(&bp["state"]), s(&sd["state"]), "{ctx}: port state");
            assert_eq!(bp["hairpin"], sd["hairpin"], "{ctx}: hairpin");
            assert_eq!(bp["learning"], sd["learning"], "{ctx}: learning");
        } else {
            assert!(sl["bridge_port"].is_null(), "{ctx}: not a bridge port");
        }
    }
}

fn compare_addresses(ns: &Netns, snap: &Value) {
    let ip = json(ns, "ip", &["-j", "addr", "show"]);
    let mut want = Vec::new();
    for l in ip.as_array().expect("ip addr") {
        for a in l["addr_info"].as_array().into_iter().flatten() {
            let peer = a.get("address").map(s).unwrap_or_default();
            want.push(format!(
                "{} {}/{} peer={} scope={}",
                s(&l["ifname"]),
                s(&a["local"]),
                a["prefixlen"],
                peer,
                s(&a["scope"])
            ));
        }
    }
    let got: Vec<String> = snap["addresses"]
        .as_array()
        .expect("addresses")
        .iter()
        .map(|a| {
            let peer = a["peer"]
                .as_str()
                .map(|p| p.split('/').next().unwrap_or("").to_string())
                .unwrap_or_default();
            format!(
                "{} {} peer={} scope={}",
                s(&a["dev"]),
                s(&a["addr"]),
                peer,
                s(&a["scope"])
            )
        })
        .collect();
    assert_eq!(sorted(got), sorted(want), "{}: addresses", ns.name());
}

fn ip_dst(d: &str, v6: bool) -> String {
    if d == "default" {
        return if v6 { "::/0" } else { "0.0.0.0/0" }.into();
    }
    if d.contains('/') {
        d.into()
    } else if v6 {
        format!("{d}/128")
    } else {
        format!("{d}/32")
    }
}

fn nexthops(v: &Value) -> String {
    v.as_array()
        .map(|a| {
            a.iter()
                .map(|h| {
                    format!(
                        "{}@{}w{}{:?}",
                        s(&h["gateway"]),
                        s(&h["dev"]),
                        h["weight"],
                        sorted(strs(&h["flags"]))
                    )
                })
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn compare_routes(ns: &Netns, snap: &Value) {
    let mut want = Vec::new();
    for (fam, v6) in [("-4", false), ("-6", true)] {
        let ip = json(
            ns,
            "ip",
            &[fam, "-d", "-j", "route", "show", "table", "all"],
        );
        for r in ip.as_array().expect("routes") {
            want.push(format!(
                "t{} {} {} gw={} dev={} proto={} scope={} src={} metric={} flags={:?} nh={}",
                table_num(&s(&r["table"])),
                s(&r["type"]),
                ip_dst(&s(&r["dst"]), v6),
                s(&r["gateway"]),
                s(&r["dev"]),
                s(&r["protocol"]),
                s(&r["scope"]),
                s(&r["prefsrc"]),
                r["metric"].as_u64().unwrap_or(0),
                sorted(strs(&r["flags"])),
                nexthops(&r["nexthops"]),
            ));
        }
    }
    let got: Vec<String> = snap["routes"]
        .as_array()
        .expect("routes")
        .iter()
        .map(|r| {
            format!(
                "t{} {} {} gw={} dev={} proto={} scope={} src={} metric={} flags={:?} nh={}",
                r["table"],
                s(&r["type"]),
                s(&r["dst"]),
                s(&r["gateway"]),
                s(&r["dev"]),
                s(&r["protocol"]),
                s(&r["scope"]),
                s(&r["prefsrc"]),
                r["metric"].as_u64().unwrap_or(0),
                sorted(strs(&r["flags"])),
                nexthops(&r["multipath"]),
            )
        })
        .collect();
    assert_eq!(sorted(got), sorted(want), "{}: routes", ns.name());
}

fn hex(v: &Value) -> Option<u64> {
    v.as_str()
        .and_then(|x| u64::from_str_radix(x.trim_start_matches("0x"), 16).ok())
}

fn compare_rules(ns: &Netns, snap: &Value) {
    let mut want = Vec::new();
    for (fam, name) in [("-4", "inet"), ("-6", "inet6")] {
        let ip = json(ns, "ip", &[fam, "-d", "-j", "rule", "show"]);
        for r in ip.as_array().expect("rules") {
            let pfx = |k: &str, kl: &str| {
                let v = s(&r[k]);
                if v.is_empty() || v == "all" {
                    String::new()
                } else {
                    format!("{v}/{}", r[kl])
                }
            };
            // ip prints the action as the table name for lookups, else `action`.
            let action = if r.get("table").is_some() {
                format!("lookup {}", table_num(&s(&r["table"])))
            } else {
                s(&r["action"])
            };
            // A single port prints as `dport`, a range as `dport_start`/`dport_end`.
            let range = |k: &str| match (
                r.get(k),
                r.get(format!("{k}_start").as_str()),
                r.get(format!("{k}_end").as_str()),
            ) {
                (Some(p), _, _) => format!("{p}-{p}"),
                (None, Some(a), Some(b)) => format!("{a}-{b}"),
                _ => String::new(),
            };
            want.push(format!(
                "{name} {} not={} from={} to={} iif={} oif={} fwmark={:?}/{:?} proto={} sport={} dport={} {action}",
                r["priority"],
                r.get("not").is_some(),
                pfx("src", "srclen"),
                pfx("dst", "dstlen"),
                s(&r["iif"]),
                s(&r["oif"]),
                hex(&r["fwmark"]),
                hex(&r["fwmask"]),
                s(&r["ipproto"]),
                range("sport"),
                range("dport"),
            ));
        }
    }
    let got: Vec<String> = snap["rules"]
        .as_array()
        .expect("rules")
        .iter()
        .map(|r| {
            let action = match s(&r["action"]).as_str() {
                "lookup" => format!("lookup {}", r["table"]),
                a => a.to_string(),
            };
            let range = |k: &str| {
                r[k].as_array()
                    .map(|p| format!("{}-{}", p[0], p[1]))
                    .unwrap_or_default()
            };
            let proto = match r["ipproto"].as_u64() {
                Some(6) => "tcp".to_string(),
                Some(17) => "udp".to_string(),
                Some(n) => n.to_string(),
                None => String::new(),
            };
            // ip prints the mask only when it is not the default all-ones.
            let mask = r["fwmask"].as_u64().filter(|&m| m != 0xffff_ffff);
            format!(
                "{} {} not={} from={} to={} iif={} oif={} fwmark={:?}/{:?} proto={} sport={} dport={} {action}",
                s(&r["family"]),
                r["priority"],
                r["invert"].as_bool().unwrap_or(false),
                s(&r["src"]),
                s(&r["dst"]),
                s(&r["iif"]),
                s(&r["oif"]),
                r["fwmark"].as_u64(),
                mask,
                proto,
                range("sport"),
                range("dport"),
            )
        })
        .collect();
    assert_eq!(sorted(got), sorted(want), "{}: rules", ns.name());
}

/// Neighbour states; the reachability timers move between the two reads, so the dynamic
/// states (REACHABLE, STALE, DELAY, PROBE) compare as one. PERMANENT, NOARP, FAILED and
/// INCOMPLETE are compared exactly.
fn nud(v: &Value) -> Vec<String> {
    strs(v)
        .into_iter()
        .map(|x| match x.as_str() {
            "REACHABLE" | "STALE" | "DELAY" | "PROBE" => "DYNAMIC".to_string(),
            _ => x,
        })
        .collect()
}

fn compare_neighbours(ns: &Netns, snap: &Value) {
    let mut want = Vec::new();
    for fam in ["-4", "-6"] {
        // `nud all`: plain `ip neigh show` hides NOARP entries, the snapshot keeps them.
        let ip = json(ns, "ip", &[fam, "-j", "neigh", "show", "nud", "all"]);
        for n in ip.as_array().expect("neigh") {
            want.push(format!(
                "{} {} {} {:?}",
                s(&n["dev"]),
                s(&n["dst"]),
                s(&n["lladdr"]),
                nud(&n["state"])
            ));
        }
    }
    let got: Vec<String> = snap["neighbours"]
        .as_array()
        .expect("neighbours")
        .iter()
        .map(|n| {
            format!(
                "{} {} {} {:?}",
                s(&n["dev"]),
                s(&n["dst"]),
                s(&n["lladdr"]),
                nud(&n["state"])
            )
        })
        .collect();
    assert_eq!(sorted(got), sorted(want), "{}: neighbours", ns.name());
}

fn compare_fdb(ns: &Netns, snap: &Value) {
    let b = json(ns, "bridge", &["-j", "fdb", "show"]);
    let want: Vec<String> = b
        .as_array()
        .expect("fdb")
        .iter()
        .map(|e| {
            format!(
                "{} {} master={} vlan={} dst={} state={} flags={:?}",
                s(&e["ifname"]),
                s(&e["mac"]),
                s(&e["master"]),
                s(&e["vlan"]),
                s(&e["dst"]),
                s(&e["state"]),
                sorted(strs(&e["flags"]))
            )
        })
        .collect();
    let got: Vec<String> = snap["fdb"]
        .as_array()
        .expect("fdb")
        .iter()
        .map(|e| {
            format!(
                "{} {} master={} vlan={} dst={} state={} flags={:?}",
                s(&e["dev"]),
                s(&e["mac"]),
                s(&e["master"]),
                s(&e["vlan"]),
                s(&e["dst"]),
                strs(&e["state"]).join(","),
                sorted(strs(&e["flags"]))
            )
        })
        .collect();
    assert_eq!(sorted(got), sorted(want), "{}: fdb", ns.name());
}

fn compare_sysctls(ns: &Netns, snap: &Value) {
    let all = text(ns, "sysctl", &["-a"]);
    let sys: BTreeMap<&str, &str> = all.lines().filter_map(|l| l.split_once(" = ")).collect();
    let got = snap["sysctls"].as_object().expect("sysctls");
    assert!(got.len() > 20, "{}: too few sysctls", ns.name());
    for (k, v) in got {
        // The conntrack count is a live gauge; everything else is configuration.
        if k == "net.netfilter.nf_conntrack_count" {
            continue;
        }
        let want = sys
            .get(k.as_str())
            .unwrap_or_else(|| panic!("{}: sysctl {k} not in `sysctl -a`", ns.name()));
        assert_eq!(s(v), *want, "{}: sysctl {k}", ns.name());
    }
    for key in [
        "net.ipv4.ip_forward",
        "net.ipv4.conf.all.rp_filter",
        "net.ipv4.conf.eth0.rp_filter",
        "net.ipv6.conf.all.forwarding",
        "net.netfilter.nf_conntrack_max",
    ] {
        assert!(got.contains_key(key), "{}: {key} missing", ns.name());
    }
}

/// `iptables-save` text without its time-stamped comment lines.
fn untimed(t: &str) -> String {
    t.lines()
        .filter(|l| !l.starts_with("# Generated by") && !l.starts_with("# Completed on"))
        .collect::<Vec<_>>()
        .join("\n")
}

fn compare_iptables(ns: &Netns, snap: &Value, expect_both: bool) {
    let dumps = snap["firewall"]["iptables"].as_array().expect("iptables");
    let mut seen = Vec::new();
    for (backend, family, tool) in [
        ("legacy", "ipv4", "iptables-legacy-save"),
        ("legacy", "ipv6", "ip6tables-legacy-save"),
        ("nft", "ipv4", "iptables-nft-save"),
        ("nft", "ipv6", "ip6tables-nft-save"),
    ] {
        let want = untimed(&text(ns, tool, &["-c"]));
        let got = dumps
            .iter()
            .find(|d| d["backend"] == backend && d["family"] == family);
        let holds_rules = want.lines().any(|l| l.starts_with('*'));
        match got {
            Some(d) => {
                assert_eq!(untimed(&s(&d["text"])), want, "{}: {tool}", ns.name());
                seen.push(tool);
            }
            None => assert!(
                !holds_rules,
                "{}: {tool} holds tables but the snapshot has no dump",
                ns.name()
            ),
        }
    }
    if expect_both {
        assert!(seen.contains(&"iptables-legacy-save"), "legacy dump");
        assert!(seen.contains(&"iptables-nft-save"), "nft dump");
        assert!(seen.contains(&"ip6tables-nft-save"), "ip6 nft dump");
        let nft = s(&snap["firewall"]["nft_json"]);
        let v: Value = serde_json::from_str(&nft).expect("nft json");
        assert!(nft.contains("nrtest"), "native nft table in nft_json: {v}");
        assert!(
            s(&snap["firewall"]["ipset"]).contains("add KUBE-TEST 10.244.1.11"),
            "ipset"
        );
    }
}

#[test]
fn collect_matches_kernel_tools() {
    if !root_or_skip("collect_matches_kernel_tools") {
        return;
    }
    let lab = build();
    let snap = collect(&lab.node, &["--node", "lab-node-1"]);
    assert_eq!(snap["schema_version"], json!(1));
    assert_eq!(snap["node"]["name"], json!("lab-node-1"));
    // It loads as a valid snapshot (references resolve).
    netray_snapshot::NodeSnapshot::from_json("snapshot", &snap.to_string())
        .expect("the snapshot validates");

    let nss = snap["namespaces"].as_array().expect("namespaces");
    let by_inode = |i: u64| {
        nss.iter()
            .find(|n| n["id"]["inode"].as_u64() == Some(i))
            .unwrap_or_else(|| panic!("namespace {i} not collected"))
    };
    let node = by_inode(inode(&lab.node));
    assert_eq!(node["role"], json!("host"));
    assert_eq!(s(&node["id"]["name"]), lab.node.name());
    // Pods and the underlay switch are veth peers of the node.
    let mut peers = BTreeMap::new();
    peers.insert("eth0".to_string(), inode(&lab.ul));
    for (i, p) in lab.pods.iter().enumerate() {
        let n = by_inode(inode(p));
        assert_eq!(n["role"], json!("veth-peer"));
        assert_eq!(s(&n["id"]["name"]), p.name());
        peers.insert(format!("veth{}", i + 1), inode(p));
    }
    assert_eq!(s(&by_inode(inode(&lab.ul))["role"]), "veth-peer");

    compare_links(&lab.node, node, &peers);
    compare_addresses(&lab.node, node);
    compare_routes(&lab.node, node);
    compare_rules(&lab.node, node);
    compare_neighbours(&lab.node, node);
    compare_fdb(&lab.node, node);
    compare_sysctls(&lab.node, node);
    compare_iptables(&lab.node, node, true);
    for p in &lab.pods {
        let n = by_inode(inode(p));
        let mut pp = BTreeMap::new();
        pp.insert("eth0".to_string(), inode(&lab.node));
        compare_links(p, n, &pp);
        compare_addresses(p, n);
        compare_routes(p, n);
        compare_rules(p, n);
        compare_neighbours(p, n);
        compare_fdb(p, n);
        compare_sysctls(p, n);
        compare_iptables(p, n, false);
    }

    // Spot checks on what the tools above do not cover.
    let ct = &node["conntrack"];
    assert!(
        ct["count"].as_u64().unwrap_or(0) >= 1,
        "conntrack count: {ct}"
    );
    assert!(
        ct["entries"]
            .as_array()
            .into_iter()
            .flatten()
            .any(|e| e["proto"] == json!(1) && e["orig"]["dst"] == json!("10.244.1.11")),
        "the ping's ICMP conntrack entry: {ct}"
    );
    assert!(ct["stats"].get("insert_failed").is_some(), "ct stats");
    let pod_a = by_inode(inode(&lab.pods[0]));
    let socks = pod_a["sockets"].as_array().expect("sockets");
    assert!(
        socks.iter().any(|x| x["proto"] == json!("tcp")
            && x["port"] == json!(8080)
            && x["addr"] == json!("0.0.0.0")),
        "listening TCP socket: {socks:?}"
    );
    assert!(
        socks.iter().any(|x| x["proto"] == json!("udp")
            && x["port"] == json!(5353)
            && x["addr"] == json!("10.244.1.11")),
        "bound UDP socket: {socks:?}"
    );
    // The switch's own veth peers other than the node are not collected → referenced.
    let nc = snap["not_collected"].as_array().expect("not_collected");
    assert!(
        nc.iter().any(|x| x["what"] == json!("ipvs")),
        "ipvs absence is explained: {nc:?}"
    );

    // --netns adds a namespace that is not a veth peer, with role `requested`.
    let extra = Netns::create(&format!("cx{}", netray_lab::lab_tag())).expect("netns");
    let snap2 = collect(&lab.node, &["--netns", extra.name()]);
    let got = snap2["namespaces"]
        .as_array()
        .expect("namespaces")
        .iter()
        .find(|n| n["id"]["inode"].as_u64() == Some(inode(&extra)))
        .expect("requested netns collected")
        .clone();
    assert_eq!(got["role"], json!("requested"));
}
