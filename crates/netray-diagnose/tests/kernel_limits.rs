//! Checks whose trigger this lab kernel cannot produce (tcp_tw_recycle is gone since Linux
//! 4.12; nf_conntrack_max is not writable outside the initial namespace; conntrack drop
//! counters need real overload): the healthy example's real snapshots with the one value
//! changed that a kernel in that state would report.

use std::path::Path;

use netray_diagnose::scan::scan;
use netray_kube::ClusterView;
use netray_snapshot::Bundle;

fn healthy() -> Bundle {
    Bundle::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/healthy")).unwrap()
}

fn codes(b: &Bundle) -> Vec<(&'static str, String)> {
    let c = b
        .cluster
        .as_ref()
        .map(|v| ClusterView::from_value("cluster.json", v).unwrap());
    scan(b, c.as_ref())
        .into_iter()
        .map(|f| (f.code, f.node))
        .collect()
}

fn host_mut(b: &mut Bundle, node: usize) -> &mut netray_snapshot::NetnsSnapshot {
    b.nodes[node]
        .namespaces
        .iter_mut()
        .find(|n| n.role == netray_snapshot::NetnsRole::Host)
        .unwrap()
}

#[test]
fn healthy_example_has_none_of_these() {
    let found = codes(&healthy());
    for c in ["tcp-tw-recycle", "conntrack-table-full", "conntrack-drops"] {
        assert!(!found.iter().any(|(f, _)| *f == c), "{c} in {found:?}");
    }
}

#[test]
fn tcp_tw_recycle() {
    let mut b = healthy();
    host_mut(&mut b, 1)
        .sysctls
        .insert("net.ipv4.tcp_tw_recycle".into(), "1".into());
    assert!(codes(&b).contains(&("tcp-tw-recycle", "node1".into())));
}

#[test]
fn conntrack_table_full_and_drops() {
    let mut b = healthy();
    let h = host_mut(&mut b, 2);
    let count = h.conntrack.as_ref().unwrap().count.max(1);
    h.sysctls
        .insert("net.netfilter.nf_conntrack_max".into(), count.to_string());
    h.conntrack
        .as_mut()
        .unwrap()
        .stats
        .insert("insert_failed".into(), 7);
    let found = codes(&b);
    assert!(
        found.contains(&("conntrack-table-full", "node2".into())),
        "{found:?}"
    );
    assert!(
        found.contains(&("conntrack-drops", "node2".into())),
        "{found:?}"
    );
}

#[test]
fn unreadable_or_unparsed_firewall_input_is_reported() {
    let mut b = healthy();
    let h = host_mut(&mut b, 0);
    let dump = &mut h.firewall.iptables[0].text;
    let at = dump.find("COMMIT").unwrap();
    dump.insert_str(at, "-A FORWARD -s 10.0.0.300/8 -j DROP\n");
    host_mut(&mut b, 1).firewall.nft_json = Some("{ not json".into());
    let found = codes(&b);
    assert!(
        found.contains(&("uncertain-rule", "node0".into())),
        "{found:?}"
    );
    assert!(
        found.contains(&("firewall-unreadable", "node1".into())),
        "{found:?}"
    );
}
