//! Rendering without a browser: self-contained, escaped, the script pinned by its hash.

use netray_datapath::Trace;

const HOSTILE: &str =
    "\"'><img src=x onerror=alert(1)></template><script>alert(2)</script>\u{1b}[2J\u{202e}";

/// A two-branch trace (one dropped by a rule whose comment is hostile, one delivered), in
/// the JSON of `netray trace -o json`, names planted with `HOSTILE`.
fn trace() -> Trace {
    let h = serde_json::to_string(HOSTILE).unwrap();
    let h = &h[1..h.len() - 1];
    let packet = r#"{"src":"10.244.0.2","dst":"10.244.1.2","proto":"tcp","sport":40000,"dport":8080,"len":60,"mark":0}"#;
    let json = format!(
        r#"{{
  "flow": {{"packet": {packet}, "start": "node0/web-0{h}"}},
  "branches": [
    {{"probability": 0.5, "endpoint": "10.244.1.2:8080", "disposition": "dropped",
      "cause": "iptables-drop-rule", "reason": "dropped by {h}", "ended_on": "forward",
      "decided_by": [{{"kind": "rule", "node": "node1", "netns": "host", "family": "ip",
                       "table": "filter", "chain": "FORWARD", "index": 1,
                       "text": "-A FORWARD -m comment --comment \"{h}\" -j DROP"}}],
      "hops": [
        {{"leg": "forward", "node": "node0", "netns": "web-0{h}", "pod": "default/web-0{h}",
          "iif": null, "oif": "eth0{h}", "packet": {packet}, "step": {{"type": "originate"}}}},
        {{"leg": "forward", "node": "node0", "netns": "web-0{h}", "pod": "default/web-0{h}",
          "iif": null, "oif": "eth0{h}", "packet": {packet},
          "step": {{"type": "transmit", "to": "node1/host/veth{h}", "dst_mac": null}}}},
        {{"leg": "forward", "node": "node1", "netns": "host", "iif": "veth{h}", "oif": "cni0",
          "packet": {packet},
          "step": {{"type": "netfilter", "hook": "FORWARD", "bridged": false, "verdict": "drop",
                   "rules": [{{"family": "ip", "table": "filter", "chain": "FORWARD", "index": 1,
                              "text": "-A FORWARD -m comment --comment \"{h}\" -j DROP",
                              "packets": 3, "bytes": 180}}]}}}},
        {{"leg": "forward", "node": "node1", "netns": "host", "iif": "veth{h}", "oif": "cni0",
          "packet": {packet},
          "step": {{"type": "end", "disposition": "dropped", "reason": "dropped by {h}"}}}}
      ]}},
    {{"probability": 0.5, "endpoint": "10.244.1.3:8080", "disposition": "delivered",
      "cause": null, "reason": "ok", "ended_on": "reply",
      "hops": [
        {{"leg": "forward", "node": "node0", "netns": "host", "iif": null, "oif": null,
          "packet": {packet}, "step": {{"type": "deliver", "socket": "tcp 0.0.0.0:8080"}}}}
      ]}}
  ],
  "shares": {{"dropped": 0.5, "delivered": 0.5}},
  "reachable": false,
  "truncated": false
}}"#
    );
    serde_json::from_str(&json).unwrap()
}

fn meta() -> netray_report::Meta {
    netray_report::Meta {
        source: format!("bundle{HOSTILE}"),
    }
}

#[test]
fn hostile_input_is_escaped_everywhere() {
    let html = netray_report::trace(&trace(), &meta());
    for raw in [
        "<img",
        "<script>alert",
        "</template><script",
        "\u{1b}",
        "\u{202e}",
        "onerror=alert(1)>",
    ] {
        assert!(!html.contains(raw), "raw {raw:?} in the report");
    }
    assert!(html.contains("&lt;img src=x onerror=alert(1)&gt;"));
    assert!(html.contains("\\u{1b}[2J\\u{202e}"));
    // Exactly one script element: the report's own.
    assert_eq!(html.matches("<script").count(), 1);
}

#[test]
fn the_report_is_self_contained_and_pins_its_script() {
    let html = netray_report::trace(&trace(), &meta());
    for url in [
        "http://",
        "https://",
        "//fonts",
        "src=\"",
        "href=\"http",
        "@import",
        "url(",
    ] {
        assert!(!html.contains(url), "{url} in the report");
    }
    let csp_start = html.find("Content-Security-Policy").expect("a CSP");
    let csp = &html[csp_start..html[csp_start..].find('>').unwrap() + csp_start];
    assert!(csp.contains("default-src 'none'"), "{csp}");
    assert!(csp.contains("script-src 'sha256-"), "{csp}");
    assert!(!csp.contains("unsafe-inline"), "{csp}");
}

#[test]
fn the_failing_hop_carries_its_cause_and_the_deciding_rule_is_marked() {
    let html = netray_report::trace(&trace(), &meta());
    let fail = html
        .split("<button")
        .find(|b| b.contains("class=\"hop t-end fail\""))
        .expect("a failing hop");
    assert!(
        fail.contains("data-cause=\"iptables-drop-rule\" data-cause-node=\"node1\""),
        "{fail}"
    );
    let decided = html
        .split("<button")
        .find(|b| b.contains("decided") && b.contains("data-step=\"netfilter\""))
        .expect("the FORWARD hop is marked as using the deciding rule");
    assert!(decided.contains("FORWARD drop"));
    // Pods are named pod/NS/NAME, the failing lane is listed first and open.
    assert!(html.contains("data-pod=\"pod/default/web-0"));
    let first_lane = html.find("<details class=\"lane").unwrap();
    assert!(html[first_lane..].starts_with("<details class=\"lane fail\""));
}

#[test]
fn an_empty_scan_says_clean_and_the_output_is_deterministic() {
    let a = netray_report::scan(&[], &["node0", "node1"], &meta());
    assert!(a.contains("no findings: clean"));
    assert!(a.contains("data-verdict=\"clean\""));
    assert_eq!(a, netray_report::scan(&[], &["node0", "node1"], &meta()));
    assert_eq!(
        netray_report::trace(&trace(), &meta()),
        netray_report::trace(&trace(), &meta())
    );
}
