//! The path diagram: one lane per branch; each leg (request, reply) a row of node frames
//! holding the namespaces the packet crossed, each namespace box listing its hooks and
//! decisions in order; veth/underlay transmissions and VXLAN tunnels as connectors between
//! the boxes. Every hop is a button whose details sit in an inert `<template>`.

use std::collections::BTreeSet;
use std::fmt::Write;

use netray_datapath::result::{Disposition, Hop, Leg, Step};
use netray_datapath::{KernelObject, Place};

use crate::html::E;
use crate::pct;

/// The cause a failing lane is attributed to.
pub(crate) struct LaneCause {
    /// Stable code.
    pub code: String,
    /// Node the cause lives on.
    pub node: String,
    /// Namespace the cause lives in.
    pub netns: String,
    /// Index of the cause card (diagnose), when there is one.
    pub idx: Option<usize>,
}

/// One branch as drawn.
pub(crate) struct Lane<'a> {
    /// `from → to` when the report holds several flows.
    pub flow: Option<&'a str>,
    /// Endpoint reached (after DNAT) or the destination.
    pub endpoint: String,
    pub disposition: Disposition,
    pub probability: f64,
    pub reason: &'a str,
    pub decided_by: &'a [KernelObject],
    pub assumptions: &'a [String],
    pub hops: &'a [Hop],
    pub cause: Option<LaneCause>,
}

/// Consecutive hops of one leg in one namespace; `exit` is the transmission leaving it.
struct Seg<'h> {
    node: &'h str,
    netns: &'h str,
    pod: Option<&'h str>,
    hops: Vec<usize>,
    exit: Option<usize>,
}

fn segments(hops: &[Hop], leg: Leg) -> Vec<Seg<'_>> {
    let mut segs: Vec<Seg> = Vec::new();
    for (i, h) in hops.iter().enumerate().filter(|(_, h)| h.leg == leg) {
        let same = segs
            .last()
            .is_some_and(|s| s.exit.is_none() && s.node == h.node && s.netns == h.netns);
        if !same {
            segs.push(Seg {
                node: &h.node,
                netns: &h.netns,
                pod: h.pod.as_deref(),
                hops: Vec::new(),
                exit: None,
            });
        }
        let s = segs.last_mut().expect("pushed above");
        if matches!(h.step, Step::Transmit { .. }) {
            s.exit = Some(i);
        } else {
            s.hops.push(i);
        }
    }
    segs
}

/// `pod/NS/NAME` for a pod's namespace, `host` for the node's own, else the netns name.
pub(crate) fn ns_label(netns: &str, pod: Option<&str>) -> String {
    match pod {
        Some(p) => format!("pod/{p}"),
        None => netns.to_string(),
    }
}

/// Keys ([`KernelObject::key`]) of the objects a hop used, to mark the hops whose objects
/// decided the branch.
fn hop_keys(h: &Hop) -> Vec<String> {
    let at = Place {
        node: h.node.clone(),
        netns: h.netns.clone(),
    };
    let one = |o: KernelObject| vec![o.key()];
    match &h.step {
        Step::Netfilter { rules, .. } => rules.iter().map(|r| r.object(&at).key()).collect(),
        Step::Route { table, route, .. } => one(KernelObject::Route {
            at,
            table: *table,
            route: route.clone(),
            rule: None,
        }),
        Step::Neighbour { addr, .. } => match &h.oif {
            Some(dev) => one(KernelObject::Neighbour {
                at,
                dev: dev.clone(),
                addr: *addr,
                lladdr: None,
                state: String::new(),
                expected_lladdr: None,
            }),
            None => Vec::new(),
        },
        Step::Encap {
            dev, inner_dst_mac, ..
        } => one(KernelObject::Fdb {
            at,
            dev: dev.clone(),
            mac: inner_dst_mac.clone(),
            dst: None,
            present: true,
        }),
        Step::Conntrack {
            entry, orig, reply, ..
        } => one(KernelObject::Conntrack {
            at,
            entry: entry.clone(),
            collected: false,
            orig: orig.clone(),
            reply: reply.clone(),
        }),
        Step::Deliver { .. } => match h.packet.dport {
            Some(port) => one(KernelObject::Socket {
                at,
                proto: h.packet.proto.clone(),
                port,
                socket: None,
            }),
            None => Vec::new(),
        },
        _ => Vec::new(),
    }
}

/// Short label of a hop (its full text is the button's title and the details).
fn chip(h: &Hop) -> (&'static str, String) {
    match &h.step {
        Step::Originate => ("t-local", "originate (local socket)".into()),
        Step::Receive => ("t-local", "receive".into()),
        Step::Route { table, route, .. } => {
            let t = match table {
                254 => String::new(),
                255 => "local table: ".into(),
                t => format!("table {t}: "),
            };
            ("t-route", format!("route {t}{route}"))
        }
        Step::Netfilter {
            hook,
            bridged,
            verdict,
            rules,
        } => {
            let br = if *bridged { " (bridge)" } else { "" };
            let n = match rules.len() {
                0 => String::new(),
                1 => " · 1 rule".into(),
                n => format!(" · {n} rules"),
            };
            ("t-nf", format!("{hook}{br} {verdict}{n}"))
        }
        Step::Conntrack { state, .. } => ("t-ct", format!("conntrack {state}")),
        Step::Nat { kind, after, .. } => {
            let short = kind.split(" in ").next().unwrap_or(kind);
            ("t-nat", format!("{short} → {after}"))
        }
        Step::Check { check, detail } => ("t-check", format!("{check}: {detail}")),
        Step::Neighbour {
            addr,
            lladdr,
            state,
        } => {
            let st = state.split_whitespace().next().unwrap_or("");
            let mac = lladdr.as_deref().unwrap_or("(none)");
            ("t-neigh", format!("neigh {addr} → {mac} {st}"))
        }
        Step::Bridge {
            bridge,
            in_port,
            out_port,
            ..
        } => (
            "t-bridge",
            format!("bridge {bridge}: {in_port} → {out_port}"),
        ),
        Step::Transmit { to, .. } => ("t-link", format!("→ {to}")),
        Step::Encap {
            dev,
            vni,
            remote,
            port,
            ..
        } => (
            "t-tunnel",
            format!("VXLAN encap {dev} vni {vni} → {remote}:{port}"),
        ),
        Step::Decap { dev, vni } => ("t-tunnel", format!("VXLAN decap {dev} vni {vni}")),
        Step::Ipvs {
            hook, real_server, ..
        } => (
            "t-nat",
            format!(
                "IPVS {hook}: {}",
                real_server.as_deref().unwrap_or("no real server")
            ),
        ),
        Step::Deliver { socket } => (
            "t-local",
            format!(
                "deliver to {}",
                socket.as_deref().unwrap_or("the host (no socket list)")
            ),
        ),
        Step::End { disposition, .. } => ("t-end", disposition.as_str().to_string()),
    }
}

/// Write every lane, then the hops' detail templates.
pub(crate) fn render_lanes(o: &mut String, lanes: &[Lane]) {
    let any_failing = lanes.iter().any(|l| !l.disposition.is_success());
    for (li, lane) in lanes.iter().enumerate() {
        let open = !lane.disposition.is_success() || (!any_failing && li == 0);
        render_lane(o, li, lane, open);
    }
    o.push_str("<div class=\"templates\">");
    for (li, lane) in lanes.iter().enumerate() {
        let decided = decided_keys(lane);
        for (hi, h) in lane.hops.iter().enumerate() {
            let _ = write!(o, "<template id=\"hd-{li}-{hi}\">");
            hop_detail(o, lane, h, &decided);
            o.push_str("</template>");
        }
    }
    o.push_str("</div>");
}

fn decided_keys(lane: &Lane) -> BTreeSet<String> {
    lane.decided_by.iter().map(KernelObject::key).collect()
}

/// Index of the hop where the branch ended (its `end` step, else the last hop).
fn end_hop(lane: &Lane) -> Option<usize> {
    lane.hops
        .iter()
        .rposition(|h| matches!(h.step, Step::End { .. }))
        .or_else(|| lane.hops.len().checked_sub(1))
}

fn render_lane(o: &mut String, li: usize, lane: &Lane, open: bool) {
    let ok = lane.disposition.is_success();
    let _ = write!(
        o,
        "<details class=\"lane {}\" id=\"lane-{li}\" data-lane=\"{li}\" data-endpoint=\"{}\" data-disposition=\"{}\"",
        if ok { "ok" } else { "fail" },
        E(&lane.endpoint),
        lane.disposition.as_str()
    );
    if let Some(c) = &lane.cause {
        let _ = write!(
            o,
            " data-cause=\"{}\" data-cause-node=\"{}\"",
            E(&c.code),
            E(&c.node)
        );
    }
    o.push_str(if open { " open>" } else { ">" });
    let _ = write!(
        o,
        "<summary class=\"lane-head\"><span class=\"mark\">{}</span><span class=\"ep\">{}</span><span class=\"disp d-{}\">{}</span><span class=\"prob\" title=\"probability of this branch\">{}</span>",
        if ok { "✔" } else { "✖" },
        E(&lane.endpoint),
        lane.disposition.as_str(),
        lane.disposition.as_str(),
        pct(lane.probability)
    );
    if let Some(c) = &lane.cause {
        let _ = write!(
            o,
            "<span class=\"lane-cause\">{} <span class=\"on\">on {}</span></span>",
            E(&c.code),
            E(&c.node)
        );
    }
    if let Some(f) = lane.flow {
        let _ = write!(o, "<span class=\"flow\">{}</span>", E(f));
    }
    let _ = write!(o, "<span class=\"reason\">{}</span>", E(lane.reason));
    o.push_str("</summary>");
    if !lane.assumptions.is_empty() {
        o.push_str("<ul class=\"assumptions\">");
        for a in lane.assumptions {
            let _ = write!(o, "<li>assumes {}</li>", E(a));
        }
        o.push_str("</ul>");
    }
    let decided = decided_keys(lane);
    let end = end_hop(lane);
    let legs: Vec<(Leg, &str, Vec<Seg>)> = [(Leg::Forward, "request"), (Leg::Reply, "reply")]
        .into_iter()
        .map(|(leg, name)| (leg, name, segments(lane.hops, leg)))
        .filter(|(.., segs)| !segs.is_empty())
        .collect();
    overview(o, li, lane, &legs, end);
    for (_, name, segs) in &legs {
        let tunnels = tunnels_after(lane, segs);
        let _ = write!(
            o,
            "<div class=\"leg\" data-leg=\"{name}\"><div class=\"leg-label\">{name}</div><div class=\"track\">"
        );
        let mut i = 0;
        while i < segs.len() {
            let node = segs[i].node;
            let _ = write!(
                o,
                "<div class=\"node\" data-node=\"{}\"><div class=\"node-name\">{}</div><div class=\"node-body\">",
                E(node),
                E(node)
            );
            loop {
                render_seg(o, li, &format!("{name}-{i}"), lane, &segs[i], &decided, end);
                match segs.get(i + 1) {
                    Some(next) if next.node == node => {
                        link(o, li, lane, segs[i].exit, &tunnels[i]);
                        i += 1;
                    }
                    _ => break,
                }
            }
            o.push_str("</div></div>");
            if i + 1 < segs.len() {
                link(o, li, lane, segs[i].exit, &tunnels[i]);
            }
            i += 1;
        }
        o.push_str("</div></div>");
    }
    o.push_str("</details>");
}

/// The VXLAN tunnel the packet is in when it leaves each segment (`None`: not encapsulated).
fn tunnels_after(lane: &Lane, segs: &[Seg]) -> Vec<Option<String>> {
    let mut tunnel = None;
    segs.iter()
        .map(|s| {
            for &hi in &s.hops {
                match &lane.hops[hi].step {
                    Step::Encap { dev, vni, .. } => tunnel = Some(format!("VXLAN {dev} vni {vni}")),
                    Step::Decap { .. } => tunnel = None,
                    _ => {}
                }
            }
            tunnel.clone()
        })
        .collect()
}

/// One line per leg naming the namespaces crossed, the tunnels, and how the leg ended.
fn overview(
    o: &mut String,
    li: usize,
    lane: &Lane,
    legs: &[(Leg, &str, Vec<Seg>)],
    end: Option<usize>,
) {
    o.push_str("<div class=\"overview\">");
    for (_, name, segs) in legs {
        let tunnels = tunnels_after(lane, segs);
        let _ = write!(
            o,
            "<div class=\"ov-leg\" data-leg=\"{name}\"><span class=\"ov-name\">{name}</span>"
        );
        for (i, s) in segs.iter().enumerate() {
            if i > 0 {
                match &tunnels[i - 1] {
                    Some(t) => {
                        let _ = write!(o, "<span class=\"ov-arrow tunnel\">⇢ {} ⇢</span>", E(t));
                    }
                    None => o.push_str("<span class=\"ov-arrow\">→</span>"),
                }
            }
            let label = match (s.pod, s.netns) {
                (Some(p), _) => format!("pod/{p}"),
                (None, "host") => s.node.to_string(),
                (None, ns) => format!("{}/{ns}", s.node),
            };
            let failed = end.is_some_and(|e| s.hops.contains(&e)) && !lane.disposition.is_success();
            let _ = write!(
                o,
                "<a class=\"ov-ns{}{}\" href=\"#seg-{li}-{name}-{i}\">{}</a>",
                if s.pod.is_some() { " pod" } else { "" },
                if failed { " fail" } else { "" },
                E(&label)
            );
            if failed {
                let code = lane
                    .cause
                    .as_ref()
                    .map(|c| format!(" — {} on {}", c.code, c.node));
                let _ = write!(
                    o,
                    "<span class=\"ov-end fail\">✖ {}{}</span>",
                    lane.disposition.as_str(),
                    E(&code.unwrap_or_default())
                );
            } else if end.is_some_and(|e| s.hops.contains(&e)) {
                let _ = write!(
                    o,
                    "<span class=\"ov-end ok\">✔ {}</span>",
                    lane.disposition.as_str()
                );
            }
        }
        o.push_str("</div>");
    }
    o.push_str("</div>");
}

fn render_seg(
    o: &mut String,
    li: usize,
    id: &str,
    lane: &Lane,
    seg: &Seg,
    decided: &BTreeSet<String>,
    end: Option<usize>,
) {
    let kind = if seg.pod.is_some() {
        "pod"
    } else if seg.netns == "host" {
        "host"
    } else {
        "other"
    };
    let _ = write!(
        o,
        "<div class=\"ns ns-{kind}\" id=\"seg-{li}-{id}\" data-node=\"{}\" data-netns=\"{}\"",
        E(seg.node),
        E(seg.netns)
    );
    if let Some(p) = seg.pod {
        let _ = write!(o, " data-pod=\"pod/{}\"", E(p));
    }
    let label = ns_label(seg.netns, seg.pod);
    let _ = write!(
        o,
        "><div class=\"ns-head\"><span class=\"ns-name\">{}</span>",
        E(&label)
    );
    if seg.pod.is_some() {
        let _ = write!(o, "<span class=\"ns-sub\">netns {}</span>", E(seg.netns));
    } else if seg.netns == "host" {
        let _ = write!(o, "<span class=\"ns-sub\">{} namespace</span>", E(seg.node));
    }
    o.push_str("</div><ol class=\"steps\">");
    let mut shown_in: Option<&str> = None;
    let mut shown_out: Option<&str> = None;
    for &hi in &seg.hops {
        let h = &lane.hops[hi];
        let bridge = matches!(h.step, Step::Bridge { .. });
        if !bridge
            && let Some(i) = h.iif.as_deref()
            && shown_in != Some(i)
        {
            let _ = write!(
                o,
                "<li class=\"iface in\" data-iface=\"{}\" title=\"input interface\">▸ {}</li>",
                E(i),
                E(i)
            );
            shown_in = Some(i);
        }
        hop_button(o, li, hi, lane, h, decided, end);
        if !bridge
            && let Some(out) = h.oif.as_deref()
            && shown_out != Some(out)
        {
            let _ = write!(
                o,
                "<li class=\"iface out\" data-iface=\"{}\" title=\"output interface\">{} ▸</li>",
                E(out),
                E(out)
            );
            shown_out = Some(out);
        }
    }
    o.push_str("</ol></div>");
}

fn hop_button(
    o: &mut String,
    li: usize,
    hi: usize,
    lane: &Lane,
    h: &Hop,
    decided: &BTreeSet<String>,
    end: Option<usize>,
) {
    let (class, label) = chip(h);
    let is_end = end == Some(hi);
    let failing = is_end && !lane.disposition.is_success();
    let used = !failing && hop_keys(h).iter().any(|k| decided.contains(k));
    let mut classes = format!("hop {class}");
    if failing {
        classes.push_str(" fail");
    } else if is_end {
        classes.push_str(" done");
    }
    if used {
        classes.push_str(" decided");
    }
    if let Step::Netfilter { verdict, .. } = &h.step
        && verdict != "accept"
    {
        classes.push_str(" v-block");
    }
    let _ = write!(
        o,
        "<li><button type=\"button\" class=\"{classes}\" data-hop=\"{li}-{hi}\" data-step=\"{}\" title=\"{}\"",
        step_type(&h.step),
        E(&label)
    );
    if failing {
        let _ = write!(
            o,
            " data-node=\"{}\" data-netns=\"{}\"",
            E(&h.node),
            E(&h.netns)
        );
        if let Some(c) = &lane.cause {
            let _ = write!(
                o,
                " data-cause=\"{}\" data-cause-node=\"{}\" data-cause-netns=\"{}\"",
                E(&c.code),
                E(&c.node),
                E(&c.netns)
            );
            if let Some(i) = c.idx {
                let _ = write!(o, " data-cause-idx=\"{i}\"");
            }
        }
    }
    let _ = write!(o, "><span class=\"lbl\">{}</span>", E(&label));
    if failing && let Some(c) = &lane.cause {
        let _ = write!(
            o,
            "<span class=\"badge\">{} <span class=\"on\">on {}</span></span>",
            E(&c.code),
            E(&c.node)
        );
    }
    if used {
        o.push_str("<span class=\"badge decided-badge\">decided</span>");
    }
    o.push_str("</button></li>");
}

fn step_type(s: &Step) -> &'static str {
    match s {
        Step::Originate => "originate",
        Step::Receive => "receive",
        Step::Route { .. } => "route",
        Step::Netfilter { .. } => "netfilter",
        Step::Conntrack { .. } => "conntrack",
        Step::Nat { .. } => "nat",
        Step::Check { .. } => "check",
        Step::Neighbour { .. } => "neighbour",
        Step::Bridge { .. } => "bridge",
        Step::Transmit { .. } => "transmit",
        Step::Encap { .. } => "encap",
        Step::Decap { .. } => "decap",
        Step::Ipvs { .. } => "ipvs",
        Step::Deliver { .. } => "deliver",
        Step::End { .. } => "end",
    }
}

/// The connector after a namespace: its transmission (veth, underlay) or a plain arrow; a
/// VXLAN tunnel when the packet is encapsulated.
fn link(o: &mut String, li: usize, lane: &Lane, exit: Option<usize>, tunnel: &Option<String>) {
    let class = if tunnel.is_some() {
        "link tunnel"
    } else {
        "link"
    };
    let arrow = "<svg class=\"arrow\" viewBox=\"0 0 40 12\" width=\"40\" height=\"12\" aria-hidden=\"true\"><line x1=\"0\" y1=\"6\" x2=\"32\" y2=\"6\"/><polygon points=\"32,1 40,6 32,11\"/></svg>";
    let label = match exit.map(|i| (i, &lane.hops[i])) {
        Some((i, h)) => {
            let Step::Transmit { to, dst_mac } = &h.step else {
                unreachable!("exits are transmissions")
            };
            let from = h.oif.as_deref().unwrap_or("?");
            let to_if = to.rsplit('/').next().unwrap_or(to);
            let title = match dst_mac {
                Some(m) => format!("{from} → {to} (dst MAC {m})"),
                None => format!("{from} → {to}"),
            };
            let _ = write!(
                o,
                "<button type=\"button\" class=\"{class}\" data-hop=\"{li}-{i}\" data-step=\"transmit\" title=\"{}\">",
                E(&title)
            );
            format!("{from} → {to_if}")
        }
        None => {
            let _ = write!(o, "<span class=\"{class}\">");
            String::new()
        }
    };
    if let Some(t) = tunnel {
        let _ = write!(o, "<span class=\"tunnel-lbl\">{}</span>", E(t));
    }
    o.push_str(arrow);
    let _ = write!(o, "<span class=\"lbl\">{}</span>", E(&label));
    o.push_str(if exit.is_some() {
        "</button>"
    } else {
        "</span>"
    });
}

fn kv(o: &mut String, k: &str, v: &str) {
    let _ = write!(o, "<dt>{}</dt><dd>{}</dd>", E(k), E(v));
}

fn kv_code(o: &mut String, k: &str, v: &str) {
    let _ = write!(o, "<dt>{}</dt><dd><code>{}</code></dd>", E(k), E(v));
}

/// Render kernel objects as a list: kind, place, quoted state.
pub(crate) fn objects_list(o: &mut String, objects: &[KernelObject]) {
    o.push_str("<ul class=\"objects\">");
    for obj in objects {
        let at = obj.place();
        let _ = write!(
            o,
            "<li data-kind=\"{}\"><span class=\"kind\">{}</span> <span class=\"at\">{} · {}</span> <code>{}</code></li>",
            obj.kind(),
            obj.kind(),
            E(&at.node),
            E(&at.netns),
            E(&obj.quote())
        );
    }
    o.push_str("</ul>");
}

fn hop_detail(o: &mut String, lane: &Lane, h: &Hop, decided: &BTreeSet<String>) {
    let (_, label) = chip(h);
    let _ = write!(
        o,
        "<div class=\"detail\"><div class=\"d-kind\">{} · {}</div><h3>{}</h3><dl class=\"kv\">",
        step_type(&h.step),
        match h.leg {
            Leg::Forward => "request",
            Leg::Reply => "reply",
        },
        E(&label)
    );
    let mut place = format!("{} · {}", h.node, ns_label(&h.netns, h.pod.as_deref()));
    if h.pod.is_some() {
        place.push_str(&format!(" (netns {})", h.netns));
    }
    kv(o, "where", &place);
    match (&h.iif, &h.oif) {
        (None, None) => {}
        (i, out) => kv(
            o,
            "interfaces",
            &format!(
                "in {} · out {}",
                i.as_deref().unwrap_or("-"),
                out.as_deref().unwrap_or("-")
            ),
        ),
    }
    kv_code(o, "packet", &h.packet.to_string());
    match &h.step {
        Step::Route {
            rule,
            table,
            route,
            nexthop,
            ecmp,
        } => {
            if let Some(r) = rule {
                kv_code(o, "ip rule", r);
            }
            kv(o, "table", &table.to_string());
            kv_code(o, "route", route);
            if let Some(n) = nexthop {
                kv(o, "next hop", &n.to_string());
            }
            if let Some(e) = ecmp {
                kv(o, "ECMP", e);
            }
        }
        Step::Netfilter {
            hook,
            bridged,
            verdict,
            ..
        } => {
            kv(o, "hook", hook);
            if *bridged {
                kv(o, "bridged", "yes (br_netfilter)");
            }
            kv(o, "verdict", verdict);
        }
        Step::Conntrack { state, entry, .. } => {
            kv(o, "state", state);
            kv_code(o, "entry", entry);
        }
        Step::Nat {
            kind,
            before,
            after,
        } => {
            kv(o, "kind", kind);
            kv_code(o, "before", before);
            kv_code(o, "after", after);
        }
        Step::Check { check, detail } => {
            kv(o, "check", check);
            kv(o, "detail", detail);
        }
        Step::Neighbour {
            addr,
            lladdr,
            state,
        } => {
            kv(o, "address", &addr.to_string());
            kv(o, "MAC", lladdr.as_deref().unwrap_or("(none)"));
            kv_code(o, "state", state);
        }
        Step::Bridge {
            bridge,
            in_port,
            out_port,
            fdb,
        } => {
            kv(o, "bridge", bridge);
            kv(o, "ports", &format!("{in_port} → {out_port}"));
            kv_code(o, "fdb", fdb);
        }
        Step::Transmit { to, dst_mac } => {
            kv(o, "to", to);
            if let Some(m) = dst_mac {
                kv(o, "destination MAC", m);
            }
        }
        Step::Encap {
            dev,
            vni,
            inner_dst_mac,
            remote,
            port,
            fdb,
        } => {
            kv(o, "VXLAN device", dev);
            kv(o, "VNI", &vni.to_string());
            kv(o, "inner destination MAC", inner_dst_mac);
            kv(o, "remote VTEP", &format!("{remote}:{port}"));
            kv_code(o, "fdb", fdb);
        }
        Step::Decap { dev, vni } => {
            kv(o, "VXLAN device", dev);
            kv(o, "VNI", &vni.to_string());
        }
        Step::Ipvs {
            hook,
            service,
            real_server,
            detail,
        } => {
            kv(o, "hook", hook);
            kv_code(o, "service", service);
            kv_code(o, "real server", real_server.as_deref().unwrap_or("none"));
            kv(o, "detail", detail);
        }
        Step::Deliver { socket } => kv(o, "socket", socket.as_deref().unwrap_or("(not listed)")),
        Step::End {
            disposition,
            reason,
        } => {
            kv(o, "disposition", disposition.as_str());
            kv(o, "why", reason);
        }
        Step::Originate | Step::Receive => {}
    }
    o.push_str("</dl>");
    if let Step::Netfilter { rules, .. } = &h.step
        && !rules.is_empty()
    {
        let at = Place {
            node: h.node.clone(),
            netns: h.netns.clone(),
        };
        o.push_str("<table class=\"rules\"><thead><tr><th>table/chain</th><th>#</th><th>rule</th><th>packets</th></tr></thead><tbody>");
        for r in rules {
            let hit = decided.contains(&r.object(&at).key());
            let _ = write!(
                o,
                "<tr{}><td>{}/{}</td><td>{}</td><td><code>{}</code></td><td>{}</td></tr>",
                if hit { " class=\"decided\"" } else { "" },
                E(&r.table),
                E(&r.chain),
                r.index.map_or("policy".to_string(), |i| i.to_string()),
                E(&r.text),
                r.packets.map_or("-".to_string(), |p| p.to_string())
            );
        }
        o.push_str("</tbody></table>");
    }
    let is_end = matches!(h.step, Step::End { .. });
    if is_end && !lane.disposition.is_success() {
        // A diagnosis shows the deciding objects in the cause card the panel adds.
        let card = lane.cause.as_ref().is_some_and(|c| c.idx.is_some());
        if !lane.decided_by.is_empty() && !card {
            o.push_str("<h4>Decided by</h4>");
            objects_list(o, lane.decided_by);
        }
        if let Some(c) = &lane.cause
            && !card
        {
            let _ = write!(
                o,
                "<p class=\"cause-ref\">cause <b>{}</b> on {} · {}</p>",
                E(&c.code),
                E(&c.node),
                E(&c.netns)
            );
        }
    } else if hop_keys(h).iter().any(|k| decided.contains(k)) {
        o.push_str("<p class=\"decided-note\">This hop used an object that decided how the branch ended:</p>");
        let used: Vec<KernelObject> = lane
            .decided_by
            .iter()
            .filter(|d| hop_keys(h).contains(&d.key()))
            .cloned()
            .collect();
        objects_list(o, &used);
    }
    if is_end && !lane.assumptions.is_empty() {
        o.push_str("<h4>Assumptions</h4><ul>");
        for a in lane.assumptions {
            let _ = write!(o, "<li>{}</li>", E(a));
        }
        o.push_str("</ul>");
    }
    o.push_str("</div>");
}
