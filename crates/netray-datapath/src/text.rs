//! Text rendering of a trace: a hop list a person can follow.

use std::fmt::Write;

use crate::result::{Branch, Disposition, Hop, Leg, Step, Trace};

/// Render a whole trace.
pub fn render(t: &Trace) -> String {
    render_with(t, false)
}

/// Render a trace; with `failing_only`, only the branches that do not succeed are listed in
/// full (the summary still counts every branch).
pub fn render_with(t: &Trace, failing_only: bool) -> String {
    let places = pod_places(std::slice::from_ref(t));
    let mut s = String::new();
    // A branch that ended unknown (a construct or limit netray does not model, e.g. a rule
    // loop) is neither a success nor a failure: with no success, the answer is uncertain.
    let unknown = t
        .branches
        .iter()
        .filter(|b| b.disposition == Disposition::Unknown)
        .count();
    let failing = t
        .branches
        .iter()
        .filter(|b| !b.disposition.is_success())
        .count()
        - unknown;
    let verdict = if t.reachable {
        "reachable"
    } else if t.branches.iter().any(|b| b.disposition.is_success()) {
        "partially reachable"
    } else if unknown > 0 || (t.truncated && failing == 0) {
        "uncertain"
    } else {
        "unreachable"
    };
    // The answer first, before hundreds of lines of hops.
    let n = t.branches.len();
    let summary = if failing == 0 && unknown == 0 {
        format!(
            "every branch succeeds ({})",
            netray_snapshot::text::count(n, "branch", "branches")
        )
    } else {
        let all = netray_snapshot::text::count(n, "branch", "branches");
        let mut parts = Vec::new();
        if failing > 0 {
            parts.push(format!(
                "{failing} of {all} {}",
                if failing == 1 { "fails" } else { "fail" }
            ));
        }
        if unknown > 0 {
            parts.push(format!(
                "{unknown} of {all} {} unknown (see why)",
                if unknown == 1 { "ends" } else { "end" }
            ));
        }
        parts.join("; ")
    };
    let _ = writeln!(s, "{}: {summary}", verdict.to_uppercase());
    let _ = writeln!(
        s,
        "flow: {}  (from {})",
        t.flow.packet,
        name_pods(&t.flow.start, &places)
    );
    for (d, p) in &t.shares {
        let _ = writeln!(s, "  {:>6.1}%  {}", p * 100.0, d.as_str());
    }
    if t.truncated {
        let _ = writeln!(s, "  (branch limit reached: not every branch was explored)");
    }
    for c in &t.tcp_data {
        let ok = |b: bool| if b { "pass" } else { "FAIL" };
        let _ = writeln!(
            s,
            "  TCP data: MSS {} (client) / {} (server): {}-byte segments, requests {}, responses {}",
            c.client_mss,
            c.server_mss,
            c.segment_len,
            ok(c.request_ok),
            ok(c.reply_ok)
        );
        for p in &c.pmtu {
            let _ = writeln!(s, "    PMTU discovery: {p}");
        }
    }
    let mut shown = 0;
    for (i, b) in t.branches.iter().enumerate() {
        if failing_only && b.disposition.is_success() {
            continue;
        }
        shown += 1;
        s.push('\n');
        s.push_str(&name_pods(&render_branch(i + 1, b), &places));
    }
    if failing_only && shown < t.branches.len() {
        let _ = writeln!(
            s,
            "\n({} not shown: --failing lists only the failing ones)",
            netray_snapshot::text::count(
                t.branches.len() - shown,
                "succeeding branch",
                "succeeding branches"
            )
        );
    }
    s
}

/// `(node/netns, node/pod/NS/NAME)` for every pod namespace the traces pass through, longest
/// first: see [`name_pods`].
pub fn pod_places(traces: &[Trace]) -> Vec<(String, String)> {
    let mut v: Vec<(String, String)> = traces
        .iter()
        .flat_map(|t| &t.branches)
        .flat_map(|b| &b.hops)
        .filter_map(|h| {
            h.pod.as_ref().map(|p| {
                (
                    format!("{}/{}", h.node, h.netns),
                    format!("{}/pod/{p}", h.node),
                )
            })
        })
        .collect();
    v.sort_by(|a, b| b.0.len().cmp(&a.0.len()).then(a.cmp(b)));
    v.dedup();
    v
}

/// `text` with every `node/netns` of a pod namespace written `node/pod/NS/NAME` (a pod's
/// namespace is called `cni-<uuid>` on a real node: the pod's name is what a person knows).
pub fn name_pods(text: &str, places: &[(String, String)]) -> String {
    let mut out = text.to_string();
    for (from, to) in places {
        if !out.contains(from.as_str()) {
            continue;
        }
        let mut next = String::with_capacity(out.len());
        let mut rest = out.as_str();
        while let Some(i) = rest.find(from.as_str()) {
            let end = i + from.len();
            let before_ok = rest[..i]
                .chars()
                .next_back()
                .is_none_or(|c| !is_name_char(c));
            let after_ok = rest[end..].chars().next().is_none_or(|c| !is_name_char(c));
            next.push_str(&rest[..i]);
            next.push_str(if before_ok && after_ok { to } else { from });
            rest = &rest[end..];
        }
        next.push_str(rest);
        out = next;
    }
    out
}

fn is_name_char(c: char) -> bool {
    c.is_alphanumeric() || matches!(c, '-' | '_')
}

/// Render one branch.
pub fn render_branch(n: usize, b: &Branch) -> String {
    let mut s = String::new();
    let _ = write!(
        s,
        "branch {n} ({:.1}%): {}",
        b.probability * 100.0,
        b.disposition.as_str().to_uppercase()
    );
    if let Some(e) = &b.endpoint {
        let _ = write!(s, "  endpoint {e}");
    }
    s.push('\n');
    if let Some(d) = b.data_segment {
        let _ = writeln!(
            s,
            "  established, then stalls: the handshake passes on this path; a full-size {} segment ({} bytes, DF) does not",
            if d.direction == crate::result::Leg::Forward {
                "request"
            } else {
                "response"
            },
            d.len
        );
    }
    let _ = writeln!(s, "  why: {}", b.reason);
    if let Some(c) = &b.cause {
        let _ = writeln!(s, "  cause: {c}");
    }
    for a in &b.assumptions {
        let _ = writeln!(s, "  UNCERTAIN: {a}");
    }
    let mut leg = None;
    let mut place = String::new();
    for h in &b.hops {
        if matches!(h.step, Step::End { .. }) {
            continue;
        }
        if leg != Some(h.leg) {
            leg = Some(h.leg);
            let _ = writeln!(
                s,
                "  -- {} --",
                if h.leg == Leg::Forward {
                    "forward"
                } else {
                    "reply"
                }
            );
            place.clear();
        }
        let here = match &h.pod {
            Some(p) => format!("{}/pod/{p}", h.node),
            None => format!("{}/{}", h.node, h.netns),
        };
        if here != place {
            let _ = writeln!(s, "  [{here}]");
            place = here;
        }
        let _ = writeln!(s, "    {}", hop_line(h));
    }
    s
}

fn ifaces(h: &Hop) -> String {
    match (&h.iif, &h.oif) {
        (Some(i), Some(o)) => format!(" ({i} -> {o})"),
        (Some(i), None) => format!(" (in {i})"),
        (None, Some(o)) => format!(" (out {o})"),
        (None, None) => String::new(),
    }
}

/// One line (or a few) for a hop.
pub fn hop_line(h: &Hop) -> String {
    let io = ifaces(h);
    match &h.step {
        Step::Originate => format!("sent by a local socket: {}", h.packet),
        Step::Receive => format!("received{io}: {}", h.packet),
        Step::Route {
            rule, route, ecmp, ..
        } => {
            let mut s = format!("route{io}: {route}");
            if let Some(r) = rule {
                let _ = write!(s, "   [rule {r}]");
            }
            if let Some(e) = ecmp {
                let _ = write!(s, "   [ECMP {e}]");
            }
            s
        }
        Step::Netfilter {
            hook,
            bridged,
            verdict,
            rules,
        } => {
            let mut s = format!(
                "{hook}{}{io}: {verdict}",
                if *bridged { " (br_netfilter)" } else { "" }
            );
            for r in rules {
                let counters = match (r.packets, r.bytes) {
                    (Some(p), Some(b)) => format!("  [{p} pkts, {b} bytes]"),
                    _ => String::new(),
                };
                let loc = match r.index {
                    Some(i) if !r.table.is_empty() => format!("{}/{}#{i}: ", r.table, r.chain),
                    None if !r.table.is_empty() => format!("{}/{} policy: ", r.table, r.chain),
                    _ => String::new(),
                };
                let _ = write!(s, "\n        {loc}{}{counters}", r.text);
            }
            s
        }
        Step::Conntrack { state, entry, .. } => format!("conntrack {state}: {entry}"),
        Step::Nat {
            kind,
            before,
            after,
        } => format!("NAT {kind}: {before}  =>  {after}"),
        Step::Check { check, detail } => format!("check {check}: {detail}"),
        Step::Neighbour {
            addr,
            lladdr,
            state,
        } => format!(
            "neighbour {addr}{io} -> {}: {state}",
            lladdr.as_deref().unwrap_or("?")
        ),
        Step::Bridge {
            bridge,
            in_port,
            out_port,
            fdb,
        } => format!("bridge {bridge}: {in_port} -> {out_port} ({fdb})"),
        Step::Transmit { to, dst_mac } => match dst_mac {
            Some(m) => format!("sent{io} to {to} (dst MAC {m})"),
            None => format!("sent{io} to {to}"),
        },
        Step::Encap {
            dev,
            vni,
            inner_dst_mac,
            remote,
            port,
            fdb,
        } => format!(
            "VXLAN encap on {dev}: VNI {vni}, inner dst MAC {inner_dst_mac} -> VTEP {remote}:{port} [fdb {fdb}]"
        ),
        Step::Decap { dev, vni } => format!("VXLAN decap on {dev} (VNI {vni}): {}", h.packet),
        Step::Ipvs {
            hook,
            service,
            real_server,
            detail,
        } => match real_server {
            Some(r) => format!("IPVS ({hook}){io}: `{service}` -> `{r}`  [{detail}]"),
            None => format!("IPVS ({hook}){io}: `{service}`  [{detail}]"),
        },
        Step::Deliver { socket } => match socket {
            Some(s) => format!("delivered locally{io} to {s}"),
            None => format!("delivered locally{io}"),
        },
        Step::End {
            disposition,
            reason,
        } => format!("{}: {reason}", disposition.as_str()),
    }
}
