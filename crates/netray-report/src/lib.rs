//! netray's HTML report: one self-contained file (inline CSS, script and SVG; nothing is
//! fetched, and a Content-Security-Policy forbids it) rendered from the typed results.
//!
//! - [`diagnosis`]: verdict, endpoints, the path of every branch as a diagram (nodes, their
//!   namespaces and pods, interfaces, bridges, VXLAN tunnels, each hook and decision), the
//!   failing hop marked with its cause, and the causes with their evidence, deciding objects
//!   and fix commands (where to run them, proven or not). Clicking a hop or a cause shows
//!   its details.
//! - [`trace`]: the same diagram for a `netray trace`.
//! - [`scan`]: findings as a table grouped by cause code.
//! - [`audit`]: an audit's failure groups as a table, one row per cause (its code, node,
//!   deciding objects, how many flows, sources and endpoints fail, the fix), each expandable
//!   to its failing flows.
//!
//! Everything that comes from the input (names, rule texts and comments, evidence) is
//! HTML-escaped; the page's only script is pinned by its hash, so markup that slipped
//! through could not run.

use std::collections::BTreeMap;
use std::fmt::Write;

use netray_datapath::Trace;
use netray_datapath::result::{Leg, Step};
use netray_diagnose::audit::Audit;
use netray_diagnose::diagnose::{BranchReport, Diagnosis, Verdict};
use netray_diagnose::{Finding, Severity};
use netray_patch::FixCommand;

mod html;
mod path;

use html::E;
pub use html::escape;
use path::{Lane, LaneCause};

const CSS: &str = include_str!("report.css");
const JS: &str = include_str!("report.js");

/// What the report is about, shown in its header.
#[derive(Debug, Clone, Default)]
pub struct Meta {
    /// Where the snapshots came from (the bundle path, or `live`).
    pub source: String,
}

/// `0.25` → `25%`, `1/3` → `33.3%`.
pub(crate) fn pct(share: f64) -> String {
    let p = (share * 1000.0).round() / 10.0;
    if p.fract() == 0.0 {
        format!("{p:.0}%")
    } else {
        format!("{p:.1}%")
    }
}

fn page(kind: &str, title: &str, body: &str) -> String {
    let csp = format!(
        "default-src 'none'; style-src {}; script-src {}; img-src data:; base-uri 'none'; form-action 'none'",
        html::csp_hash(CSS),
        html::csp_hash(JS)
    );
    format!(
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">\
<meta http-equiv=\"Content-Security-Policy\" content=\"{csp}\">\
<meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
<meta name=\"generator\" content=\"netray {}\">\
<title>{}</title><style>{CSS}</style></head>\n<body data-report=\"{kind}\">\n{body}\n<script>{JS}</script></body></html>\n",
        env!("CARGO_PKG_VERSION"),
        E(title),
    )
}

fn header(o: &mut String, command: &str, title_html: &str, meta: &Meta) {
    let _ = write!(
        o,
        "<header class=\"top\"><div class=\"brand\">netray <span>{command}</span></div><h1>{title_html}</h1>"
    );
    let _ = write!(
        o,
        "<p class=\"meta\">snapshots: {} · netray {}</p>",
        E(&meta.source),
        env!("CARGO_PKG_VERSION")
    );
}

fn verdict_str(v: Verdict) -> &'static str {
    match v {
        Verdict::Reachable => "reachable",
        Verdict::Unreachable => "unreachable",
        Verdict::Partial => "partial",
        Verdict::Uncertain => "uncertain",
    }
}

/// Where a fix command runs: `node2 · host namespace`, `node0 · pod/default/web-1 (netns …)`.
fn fix_where(c: &FixCommand) -> String {
    match (&c.pod, c.netns.as_str()) {
        (Some(p), ns) => format!("{} · pod/{p} (netns {ns})", c.node),
        (None, "host") => format!("{} · host namespace", c.node),
        (None, ns) => format!("{} · netns {ns}", c.node),
    }
}

fn fix_table(o: &mut String, cmds: &[FixCommand]) {
    o.push_str("<table class=\"fixes\"><thead><tr><th>run as root on</th><th>command</th></tr></thead><tbody>");
    for c in cmds {
        let _ = write!(
            o,
            "<tr data-node=\"{}\" data-netns=\"{}\"><td class=\"where\">{}</td><td><code class=\"cmd\">{}</code></td></tr>",
            E(&c.node),
            E(&c.netns),
            E(&fix_where(c)),
            E(&c.run)
        );
    }
    o.push_str("</tbody></table>");
}

/// The root cause each failing branch is attributed to: the cause whose objects are the
/// branch's deciding objects, else the endpoint's failure point for that place.
fn lane_cause(d: &Diagnosis, b: &BranchReport) -> Option<LaneCause> {
    if b.reachable {
        return None;
    }
    let keys: Vec<String> = b.decided_by.iter().map(|o| o.key()).collect();
    let by_objects = (!keys.is_empty())
        .then(|| {
            d.causes
                .iter()
                .enumerate()
                .map(|(i, c)| {
                    let n = c.objects.iter().filter(|o| keys.contains(&o.key())).count();
                    (n, c.objects.len() == keys.len(), i)
                })
                .filter(|(n, ..)| *n > 0)
                .max_by_key(|(n, exact, i)| (*n, *exact, std::cmp::Reverse(*i)))
                .map(|(.., i)| i)
        })
        .flatten();
    if let Some(i) = by_objects {
        let c = &d.causes[i];
        return Some(LaneCause {
            code: c.code.to_string(),
            node: c.node.clone(),
            netns: c.netns.clone(),
            idx: Some(i),
        });
    }
    let last = b.hops.last()?;
    let leg = b
        .hops
        .iter()
        .rev()
        .map(|h| h.leg)
        .next()
        .unwrap_or(Leg::Forward);
    let f = d
        .endpoints
        .iter()
        .filter(|e| e.endpoint == b.endpoint)
        .flat_map(|e| &e.failures)
        .find(|f| {
            f.disposition == b.disposition
                && f.leg == leg
                && f.node == last.node
                && f.netns == last.netns
        })?;
    let idx = d
        .causes
        .iter()
        .position(|c| c.code == f.code && c.node == f.cause_node && c.netns == f.cause_netns);
    Some(LaneCause {
        code: f.code.clone(),
        node: f.cause_node.clone(),
        netns: f.cause_netns.clone(),
        idx,
    })
}

fn legend(o: &mut String) {
    o.push_str(
        "<div class=\"legend\"><span class=\"lg ns-pod\">pod namespace</span><span class=\"lg ns-host\">node (host namespace)</span>\
<span class=\"lg iface\">▸ interface</span><span class=\"lg t-nf\">netfilter hook</span><span class=\"lg t-route\">route</span>\
<span class=\"lg t-nat\">NAT</span><span class=\"lg t-bridge\">bridge</span><span class=\"lg t-tunnel\">VXLAN tunnel</span>\
<span class=\"lg decided\">used a deciding object</span><span class=\"lg fail\">where the packet was lost</span></div>",
    );
}

/// The HTML report of a diagnosis (`netray diagnose --html`).
pub fn diagnosis(d: &Diagnosis, meta: &Meta) -> String {
    let mut o = String::new();
    let title_html = format!(
        "<span class=\"from\">{}</span> <span class=\"to-arrow\">→</span> <span class=\"to\">{}</span>",
        E(&d.from),
        E(&d.to)
    );
    header(&mut o, "diagnose", &title_html, meta);
    let v = verdict_str(d.verdict);
    let _ = write!(
        o,
        "<div class=\"verdict-row\"><span class=\"verdict v-{v}\" id=\"verdict\" data-verdict=\"{v}\">{}</span><p class=\"summary\">{}</p></div></header>",
        v.to_uppercase(),
        E(&d.summary)
    );
    o.push_str("<div class=\"layout\"><main>");
    // Endpoints.
    o.push_str("<section id=\"endpoints\"><h2>Endpoints</h2><table class=\"endpoints\"><thead><tr><th></th><th>endpoint</th><th>share</th><th>outcome</th></tr></thead><tbody>");
    let flows: std::collections::BTreeSet<&str> =
        d.branches.iter().map(|b| b.flow.as_str()).collect();
    let multi = flows.len() > 1;
    let mut lanes: Vec<Lane> = Vec::new();
    let mut order: Vec<&netray_diagnose::diagnose::EndpointOutcome> = d.endpoints.iter().collect();
    order.sort_by_key(|e| e.reachable);
    for e in &order {
        let first_lane = lanes.len();
        for b in d.branches.iter().filter(|b| b.endpoint == e.endpoint) {
            lanes.push(Lane {
                flow: multi.then_some(b.flow.as_str()),
                endpoint: b.endpoint.clone(),
                disposition: b.disposition,
                probability: b.probability,
                reason: &b.reason,
                decided_by: &b.decided_by,
                assumptions: &b.assumptions,
                hops: &b.hops,
                cause: lane_cause(d, b),
            });
        }
        let outcome = if e.failures.is_empty() {
            E(&e.dispositions.join(", ")).to_string()
        } else {
            e.failures
                .iter()
                .map(|f| {
                    let leg = match f.leg {
                        Leg::Forward => "request",
                        Leg::Reply => "reply",
                    };
                    format!(
                        "{leg} {} at {}/{} — <b class=\"code\">{}</b> on {}",
                        f.disposition.as_str(),
                        E(&f.node),
                        E(&f.netns),
                        E(&f.code),
                        E(&f.cause_node)
                    )
                })
                .collect::<Vec<_>>()
                .join("<br>")
        };
        let _ = write!(
            o,
            "<tr class=\"{}\" data-endpoint=\"{}\"><td class=\"mark\">{}</td><td><a href=\"#lane-{first_lane}\">{}</a></td><td class=\"share\"><svg width=\"60\" height=\"8\" aria-hidden=\"true\"><rect class=\"bar-bg\" width=\"60\" height=\"8\"/><rect class=\"bar\" width=\"{:.1}\" height=\"8\"/></svg> {}</td><td>{outcome}</td></tr>",
            if e.reachable { "ok" } else { "fail" },
            E(&e.endpoint),
            if e.reachable { "✔" } else { "✖" },
            E(&e.endpoint),
            (e.share * 60.0).clamp(0.0, 60.0),
            pct(e.share),
        );
    }
    o.push_str("</tbody></table></section>");
    // The path.
    o.push_str("<section id=\"path\"><h2>Path</h2>");
    legend(&mut o);
    path::render_lanes(&mut o, &lanes);
    o.push_str("</section>");
    // Causes.
    o.push_str("<section id=\"causes\"><h2>Root causes</h2>");
    if d.causes.is_empty() {
        o.push_str("<p class=\"none\">none: every branch succeeds.</p>");
    }
    for (i, c) in d.causes.iter().enumerate() {
        let attributed = lanes
            .iter()
            .any(|l| l.cause.as_ref().is_some_and(|lc| lc.idx == Some(i)));
        cause_card(&mut o, i, c, attributed);
    }
    if let Some(all) = &d.all_fixes
        && d.causes.iter().any(|c| !c.fix_commands.is_empty())
    {
        let _ = write!(
            o,
            "<p class=\"all-fixes {}\" id=\"all-fixes\">all fixes together: <b>{}</b> — {}</p>",
            if all.proven { "proven" } else { "unproven" },
            if all.proven { "proven" } else { "not enough" },
            E(&all.detail)
        );
    }
    o.push_str("</section>");
    if !d.notes.is_empty() {
        o.push_str("<section id=\"notes\"><h2>Notes</h2><ul>");
        for n in &d.notes {
            let _ = write!(o, "<li>{}</li>", E(n));
        }
        o.push_str("</ul></section>");
    }
    o.push_str("</main>");
    panel(&mut o);
    o.push_str("</div>");
    page(
        "diagnose",
        &format!("netray diagnose: {} → {} ({v})", d.from, d.to),
        &o,
    )
}

fn panel(o: &mut String) {
    o.push_str("<aside id=\"panel\" aria-live=\"polite\"><div class=\"panel-empty\">Click a hop of the path, or a root cause, to see its evidence, the objects that decided it and how to fix it.</div></aside>");
}

fn cause_card(o: &mut String, i: usize, c: &Finding, attributed: bool) {
    let (proof_class, proof_text) = match &c.proof {
        _ if c.fix_commands.is_empty() => ("unchecked", "no commands".to_string()),
        Some(p) if p.proven && p.with.is_empty() => ("proven", "fix proven".to_string()),
        Some(p) if p.proven => (
            "proven",
            format!("fix proven together with {}", p.with.join(", ")),
        ),
        Some(_) => ("unproven", "fix NOT proven".to_string()),
        None => ("unchecked", "fix not checked".to_string()),
    };
    let _ = write!(
        o,
        "<article class=\"cause sev-{}\" id=\"cause-{i}\" data-cause-idx=\"{i}\" data-code=\"{}\" data-node=\"{}\" data-netns=\"{}\">",
        c.severity,
        E(c.code),
        E(&c.node),
        E(&c.netns)
    );
    let _ = write!(
        o,
        "<header tabindex=\"0\"><span class=\"sev\">{}</span><span class=\"code\">{}</span><span class=\"where\">on {} · {}",
        c.severity,
        E(c.code),
        E(&c.node),
        E(&path::ns_label(&c.netns, c.pod.as_deref()))
    );
    if c.pod.is_some() {
        let _ = write!(o, " (netns {})", E(&c.netns));
    }
    let _ = write!(
        o,
        "</span><span class=\"proof {proof_class}\">{}</span>",
        E(&proof_text)
    );
    if !attributed {
        o.push_str("<span class=\"revealed\" title=\"no branch of the walk ended here: the fix proof found it behind another cause\">revealed by a fix</span>");
    }
    o.push_str("</header><div class=\"cause-body\">");
    o.push_str("<h4>Fix</h4>");
    if c.fix_commands.is_empty() {
        let _ = write!(o, "<p class=\"fix-text\">{}</p>", E(&c.fix));
    } else {
        if let Some(p) = &c.proof {
            let _ = write!(
                o,
                "<p class=\"proof-line {proof_class}\"><b>{}</b>: {}</p>",
                E(&proof_text),
                E(&p.detail)
            );
        }
        fix_table(o, &c.fix_commands);
    }
    let _ = write!(o, "<h4>Why</h4><p class=\"why\">{}</p>", E(&c.explanation));
    if !c.evidence.is_empty() {
        o.push_str("<h4>Evidence</h4><ul class=\"evidence\">");
        for e in &c.evidence {
            let _ = write!(o, "<li><code>{}</code></li>", E(e));
        }
        o.push_str("</ul>");
    }
    if !c.objects.is_empty() {
        o.push_str("<h4>Decided by</h4>");
        path::objects_list(o, &c.objects);
    }
    o.push_str("</div></article>");
}

/// The HTML report of a trace (`netray trace --html`): the path diagram of every branch.
pub fn trace(t: &Trace, meta: &Meta) -> String {
    let mut o = String::new();
    let title_html = format!(
        "<span class=\"from\">{}</span> <span class=\"to-arrow\">from</span> <span class=\"to\">{}</span>",
        E(&t.flow.packet.to_string()),
        E(&t.flow.start)
    );
    header(&mut o, "trace", &title_html, meta);
    // As the text: a trace with no success and some branch unknown (a limit or a construct
    // netray does not model) is uncertain, not unreachable.
    let v = if t.reachable {
        "reachable"
    } else if !t.branches.iter().any(|b| b.disposition.is_success())
        && t.branches
            .iter()
            .any(|b| b.disposition == netray_datapath::Disposition::Unknown)
    {
        "uncertain"
    } else {
        "unreachable"
    };
    let shares = t
        .shares
        .iter()
        .map(|(d, s)| format!("{} {}", d.as_str(), pct(*s)))
        .collect::<Vec<_>>()
        .join(", ");
    let _ = write!(
        o,
        "<div class=\"verdict-row\"><span class=\"verdict v-{v}\" id=\"verdict\" data-verdict=\"{v}\">{}</span><p class=\"summary\">{} branch{}: {}{}</p></div></header>",
        v.to_uppercase(),
        t.branches.len(),
        if t.branches.len() == 1 { "" } else { "es" },
        E(&shares),
        if t.truncated {
            " (cut at the branch limit)"
        } else {
            ""
        }
    );
    let mut order: Vec<&netray_datapath::result::Branch> = t.branches.iter().collect();
    order.sort_by_key(|b| b.disposition.is_success());
    let lanes: Vec<Lane> = order
        .into_iter()
        .map(|b| {
            let end = b
                .hops
                .iter()
                .rev()
                .find(|h| matches!(h.step, Step::End { .. }));
            let cause = (!b.disposition.is_success()).then(|| {
                let place = b
                    .decided_by
                    .first()
                    .map(|o| o.place().clone())
                    .or_else(|| {
                        end.or(b.hops.last()).map(|h| netray_datapath::Place {
                            node: h.node.clone(),
                            netns: h.netns.clone(),
                        })
                    })
                    .unwrap_or(netray_datapath::Place {
                        node: String::new(),
                        netns: String::new(),
                    });
                LaneCause {
                    code: b
                        .cause
                        .clone()
                        .unwrap_or_else(|| b.disposition.as_str().to_string()),
                    node: place.node,
                    netns: place.netns,
                    idx: None,
                }
            });
            Lane {
                flow: None,
                endpoint: b
                    .endpoint
                    .clone()
                    .unwrap_or_else(|| format!("{} (not delivered)", t.flow.packet.dst)),
                disposition: b.disposition,
                probability: b.probability,
                reason: &b.reason,
                decided_by: &b.decided_by,
                assumptions: &b.assumptions,
                hops: &b.hops,
                cause,
            }
        })
        .collect();
    o.push_str("<div class=\"layout\"><main><section id=\"path\"><h2>Path</h2>");
    legend(&mut o);
    path::render_lanes(&mut o, &lanes);
    o.push_str("</section></main>");
    panel(&mut o);
    o.push_str("</div>");
    page("trace", &format!("netray trace: {}", t.flow.packet), &o)
}

/// The HTML report of a scan (`netray scan --html`): findings grouped by cause code, most
/// severe group first. `nodes` are the bundle's node names.
pub fn scan(findings: &[Finding], nodes: &[&str], meta: &Meta) -> String {
    let mut o = String::new();
    let title_html = format!(
        "{} node{}: {}",
        nodes.len(),
        if nodes.len() == 1 { "" } else { "s" },
        E(&nodes.join(", "))
    );
    header(&mut o, "scan", &title_html, meta);
    let count = |s: Severity| findings.iter().filter(|f| f.severity == s).count();
    let v = if findings.is_empty() {
        "clean"
    } else if count(Severity::Critical) > 0 {
        "critical"
    } else if count(Severity::Warning) > 0 {
        "warning"
    } else {
        "info"
    };
    let _ = write!(
        o,
        "<div class=\"verdict-row\"><span class=\"verdict v-{v}\" id=\"verdict\" data-verdict=\"{v}\">{}</span><p class=\"summary\">{} finding{}: {} critical, {} warning, {} info</p></div></header>",
        v.to_uppercase(),
        findings.len(),
        if findings.len() == 1 { "" } else { "s" },
        count(Severity::Critical),
        count(Severity::Warning),
        count(Severity::Info)
    );
    o.push_str("<main class=\"wide\"><section id=\"findings\">");
    if findings.is_empty() {
        o.push_str("<p class=\"none\">no findings: clean</p>");
    } else {
        let mut groups: BTreeMap<&str, Vec<&Finding>> = BTreeMap::new();
        for f in findings {
            groups.entry(f.code).or_default().push(f);
        }
        let mut groups: Vec<(&str, Vec<&Finding>)> = groups.into_iter().collect();
        groups.sort_by_key(|(code, fs)| (fs.iter().map(|f| f.severity).min(), *code));
        o.push_str("<table class=\"scan\"><thead><tr><th>severity</th><th>where</th><th>evidence and why</th><th>fix</th></tr></thead>");
        for (code, fs) in groups {
            let title = netray_diagnose::catalog::CATALOG
                .iter()
                .find(|c| c.codes.contains(&code))
                .map(|c| c.title)
                .unwrap_or("");
            let _ = write!(
                o,
                "<tbody class=\"group\" data-code=\"{}\" data-count=\"{}\"><tr class=\"group-head\"><th colspan=\"4\"><span class=\"code\">{}</span> <span class=\"count\">{}</span> <span class=\"title\">{}</span></th></tr>",
                E(code),
                fs.len(),
                E(code),
                fs.len(),
                E(title)
            );
            for f in fs {
                let _ = write!(
                    o,
                    "<tr class=\"finding sev-{}\" data-node=\"{}\" data-netns=\"{}\"><td><span class=\"sev\">{}</span></td><td class=\"where\">{}<br><span class=\"place-ns\">{}</span></td><td>",
                    f.severity,
                    E(&f.node),
                    E(&f.netns),
                    f.severity,
                    E(&f.node),
                    E(&path::ns_label(&f.netns, f.pod.as_deref()))
                );
                if !f.evidence.is_empty() {
                    o.push_str("<ul class=\"evidence\">");
                    for e in &f.evidence {
                        let _ = write!(o, "<li><code>{}</code></li>", E(e));
                    }
                    o.push_str("</ul>");
                }
                let _ = write!(o, "<p class=\"why\">{}</p></td><td>", E(&f.explanation));
                if f.fix_commands.is_empty() {
                    let _ = write!(o, "<p class=\"fix-text\">{}</p>", E(&f.fix));
                } else {
                    fix_table(&mut o, &f.fix_commands);
                }
                o.push_str("</td></tr>");
            }
            o.push_str("</tbody>");
        }
        o.push_str("</table>");
    }
    o.push_str("</section></main>");
    page("scan", &format!("netray scan: {} ({v})", meta.source), &o)
}

/// The HTML report of an audit (`netray audit --html`): one row per failure group (cause
/// code, where it is, its deciding objects, how many flows, sources and endpoints fail, the
/// fix), most severe and largest first, each expandable to its failing flows (listed when the
/// audit was run with `list_flows`), then the flows that could not be walked.
pub fn audit(a: &Audit, meta: &Meta) -> String {
    let mut o = String::new();
    let s = &a.summary;
    let title_html = format!(
        "{} source{} to {} target{}",
        s.sources,
        if s.sources == 1 { "" } else { "s" },
        s.targets,
        if s.targets == 1 { "" } else { "s" }
    );
    header(&mut o, "audit", &title_html, meta);
    let v = match a.worst() {
        None => "clean",
        Some(Severity::Critical) => "critical",
        Some(Severity::Warning) => "warning",
        Some(Severity::Info) => "info",
    };
    let _ = write!(
        o,
        "<div class=\"verdict-row\"><span class=\"verdict v-{v}\" id=\"verdict\" data-verdict=\"{v}\">{}</span><p class=\"summary\">{} of {} flow{} fail, {} cause{}; {} walked, {} not walked</p></div></header>",
        v.to_uppercase(),
        s.failing_flows,
        s.flows,
        if s.flows == 1 { "" } else { "s" },
        a.groups.len(),
        if a.groups.len() == 1 { "" } else { "s" },
        s.walks,
        s.not_walked
    );
    o.push_str("<main class=\"wide\"><section id=\"groups\">");
    if a.groups.is_empty() {
        o.push_str("<p class=\"none\">every flow works: clean</p>");
    } else {
        o.push_str("<table class=\"scan audit\"><thead><tr><th>cause</th><th>where</th><th>decided by</th><th>flows</th><th>sources</th><th>endpoints</th><th>fix</th></tr></thead>");
        for (i, g) in a.groups.iter().enumerate() {
            let c = &g.cause;
            let _ = write!(
                o,
                "<tbody class=\"group sev-{}\" id=\"group-{i}\" data-code=\"{}\" data-node=\"{}\" data-netns=\"{}\" data-flows=\"{}\" data-sources=\"{}\" data-endpoints=\"{}\" data-failing=\"{}\">",
                c.severity,
                E(c.code),
                E(&c.node),
                E(&c.netns),
                g.flows,
                g.sources.len(),
                g.endpoints.len(),
                g.failing.len()
            );
            let _ = write!(
                o,
                "<tr class=\"group-row\"><td><span class=\"sev\">{}</span> <span class=\"code\">{}</span></td><td class=\"where\">{}<br><span class=\"place-ns\">{}</span></td><td>",
                c.severity,
                E(c.code),
                E(&c.node),
                E(&path::ns_label(&c.netns, c.pod.as_deref()))
            );
            if c.objects.is_empty() {
                o.push_str("<span class=\"none\">—</span>");
            } else {
                path::objects_list(&mut o, &c.objects);
            }
            let _ = write!(
                o,
                "</td><td class=\"num flows\">{}</td><td class=\"num sources\" title=\"{}\">{}</td><td class=\"num endpoints\" title=\"{}\">{}</td><td>",
                g.flows,
                E(&g.sources.join(", ")),
                g.sources.len(),
                E(&g.endpoints.join(", ")),
                g.endpoints.len()
            );
            if c.fix_commands.is_empty() {
                let _ = write!(o, "<p class=\"fix-text\">{}</p>", E(&c.fix));
            } else {
                o.push_str("<p class=\"proof-line unchecked\">not proven here; <code>netray diagnose</code> on the example flow proves it</p>");
                fix_table(&mut o, &c.fix_commands);
            }
            o.push_str("</td></tr>");
            // The expandable details: why, evidence, the example flow, the failing flows.
            let _ = write!(
                o,
                "<tr class=\"group-detail\"><td colspan=\"7\"><details class=\"failing\"><summary>{}</summary>",
                E(&g.summary)
            );
            let _ = write!(o, "<p class=\"why\">{}</p>", E(&c.explanation));
            if !c.evidence.is_empty() {
                o.push_str("<ul class=\"evidence\">");
                for e in &c.evidence {
                    let _ = write!(o, "<li><code>{}</code></li>", E(e));
                }
                o.push_str("</ul>");
            }
            let _ = write!(
                o,
                "<p class=\"example\">one of them: <code>netray diagnose --from {} --to {}{}</code></p>",
                E(&g.example.from),
                E(&g.example.to),
                g.example
                    .sport
                    .map(|p| format!(" --sport {p}"))
                    .unwrap_or_default()
            );
            if g.failing.is_empty() {
                let _ = write!(
                    o,
                    "<p class=\"none\">targets: {} (run the audit with --list-flows to list every failing flow)</p>",
                    E(&g.targets.join(", "))
                );
            } else {
                o.push_str("<table class=\"flows\"><thead><tr><th>from</th><th>to</th><th>endpoint</th><th>members</th></tr></thead><tbody>");
                for f in &g.failing {
                    let _ = write!(
                        o,
                        "<tr class=\"flow\" data-from=\"{}\" data-to=\"{}\" data-endpoint=\"{}\"><td>{}</td><td>{}</td><td>{}</td><td class=\"num\">{}</td></tr>",
                        E(&f.from),
                        E(&f.to),
                        E(&f.endpoint),
                        E(&f.from),
                        E(&f.to),
                        E(&f.endpoint),
                        f.members
                    );
                }
                o.push_str("</tbody></table>");
            }
            o.push_str("</details></td></tr></tbody>");
        }
        o.push_str("</table>");
    }
    o.push_str("</section>");
    if !a.not_walked.is_empty() {
        o.push_str("<section id=\"not-walked\"><h2>Not walked</h2><table class=\"flows\"><thead><tr><th>from</th><th>to</th><th>why</th></tr></thead><tbody>");
        for n in &a.not_walked {
            let _ = write!(
                o,
                "<tr class=\"not-walked\"><td>{}</td><td>{}</td><td>{}</td></tr>",
                E(&n.from),
                E(&n.to),
                E(&n.error)
            );
        }
        o.push_str("</tbody></table></section>");
    }
    if !a.skipped.is_empty() {
        o.push_str("<section id=\"notes\"><h2>Notes</h2><ul>");
        for n in &a.skipped {
            let _ = write!(o, "<li>{}</li>", E(n));
        }
        o.push_str("</ul></section>");
    }
    o.push_str("</main>");
    page("audit", &format!("netray audit: {} ({v})", meta.source), &o)
}
