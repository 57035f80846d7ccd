//! `netray diff`: the same flows walked over two snapshots (before and after a reboot, an
//! upgrade, a fix): which endpoints changed outcome, and which kernel objects on their paths
//! changed state, appeared or disappeared.

use std::collections::{BTreeMap, BTreeSet};

use netray_datapath::KernelObject;
use netray_datapath::result::Disposition;
use serde::Serialize;

use crate::diagnose::{TracedFlow, endpoint_of, used_objects};

/// Schema identifier of the JSON document.
pub const SCHEMA: &str = "netray.diff/v1";

/// The comparison of one flow's endpoints.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct EndpointChange {
    /// `from → to` of the flow.
    pub flow: String,
    /// Endpoint (after DNAT).
    pub endpoint: String,
    /// Dispositions before (empty: the endpoint was not reached at all).
    pub before: Vec<Disposition>,
    /// Dispositions after.
    pub after: Vec<Disposition>,
    /// `fixed`, `broken`, `changed` (different failure), `appeared`, `disappeared`,
    /// `unchanged`.
    pub change: &'static str,
    /// Objects on its paths (or deciding them) whose state differs between the snapshots.
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub objects: Vec<ObjectChange>,
}

/// One object whose state differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ObjectChange {
    /// The object as quoted before (absent: not on the paths before).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub before: Option<String>,
    /// The object as quoted after (absent: not on the paths after).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub after: Option<String>,
    /// `node/netns` where it lives.
    pub at: String,
}

/// The diff of every flow.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct FlowDiff {
    /// [`SCHEMA`].
    pub schema: &'static str,
    /// Every endpoint of every flow, changed ones first.
    pub endpoints: Vec<EndpointChange>,
    /// How many endpoints changed outcome.
    pub changed: usize,
}

/// Compare `before` and `after`, the same flows (same order) walked over two snapshots.
pub fn diff(before: &[TracedFlow], after: &[TracedFlow]) -> FlowDiff {
    let mut endpoints = Vec::new();
    for (b, a) in before.iter().zip(after) {
        let flow = format!("{} → {}", b.from, b.to);
        // Per endpoint: its dispositions, the objects its paths used, and the objects that
        // decided its failures.
        type Per = BTreeMap<String, (Vec<Disposition>, Vec<KernelObject>, Vec<KernelObject>)>;
        let per = |t: &TracedFlow| {
            let mut m: Per = BTreeMap::new();
            for br in &t.trace.branches {
                let e = m.entry(endpoint_of(br, &t.trace)).or_default();
                if !e.0.contains(&br.disposition) {
                    e.0.push(br.disposition);
                }
                e.1.extend(used_objects(br));
                e.1.extend(br.decided_by.iter().cloned());
                e.2.extend(br.decided_by.iter().cloned());
            }
            m
        };
        let (pb, pa) = (per(b), per(a));
        let keys: BTreeSet<&String> = pb.keys().chain(pa.keys()).collect();
        for ep in keys {
            let empty = (Vec::new(), Vec::new(), Vec::new());
            let (db, ob, xb) = pb.get(ep).unwrap_or(&empty);
            let (da, oa, xa) = pa.get(ep).unwrap_or(&empty);
            let ok = |d: &[Disposition]| !d.is_empty() && d.iter().all(|x| x.is_success());
            let change = match (db.is_empty(), da.is_empty()) {
                (true, _) => "appeared",
                (_, true) => "disappeared",
                _ if ok(db) && !ok(da) => "broken",
                _ if !ok(db) && ok(da) => "fixed",
                _ if db != da => "changed",
                _ => "unchanged",
            };
            endpoints.push(EndpointChange {
                flow: flow.clone(),
                endpoint: ep.clone(),
                before: db.clone(),
                after: da.clone(),
                change,
                objects: if change == "unchanged" {
                    Vec::new()
                } else {
                    object_changes(ob, oa, xb, xa)
                },
            });
        }
    }
    endpoints.sort_by_key(|e| e.change == "unchanged");
    let changed = endpoints.iter().filter(|e| e.change != "unchanged").count();
    FlowDiff {
        schema: SCHEMA,
        endpoints,
        changed,
    }
}

/// Objects (by identity) whose state differs between the two sides' paths, and the objects
/// that decided a failure on one side only.
fn object_changes(
    before: &[KernelObject],
    after: &[KernelObject],
    decided_before: &[KernelObject],
    decided_after: &[KernelObject],
) -> Vec<ObjectChange> {
    fn index(os: &[KernelObject]) -> BTreeMap<String, &KernelObject> {
        let mut m: BTreeMap<String, &KernelObject> = BTreeMap::new();
        for o in os.iter().filter(|o| comparable(o)) {
            m.entry(o.key()).or_insert(o);
        }
        m
    }
    let at = |o: &KernelObject| format!("{}/{}", o.place().node, o.place().netns);
    let (b, a) = (index(before), index(after));
    let deciding: BTreeSet<String> = decided_before
        .iter()
        .chain(decided_after)
        .map(KernelObject::key)
        .collect();
    let mut out = Vec::new();
    for (k, ob) in &b {
        match a.get(k) {
            Some(oa) if state_of(oa) == state_of(ob) => {}
            Some(oa) => out.push(ObjectChange {
                before: Some(ob.quote()),
                after: Some(oa.quote()),
                at: at(ob),
            }),
            None if deciding.contains(k) => out.push(ObjectChange {
                before: Some(ob.quote()),
                after: None,
                at: at(ob),
            }),
            None => {}
        }
    }
    for (k, oa) in &a {
        if !b.contains_key(k) && deciding.contains(k) {
            out.push(ObjectChange {
                before: None,
                after: Some(oa.quote()),
                at: at(oa),
            });
        }
    }
    out
}

/// Objects that are state of the snapshot (not made up by the walk, like the conntrack
/// entries of the walked connection).
fn comparable(o: &KernelObject) -> bool {
    !matches!(
        o,
        KernelObject::Conntrack {
            collected: false,
            ..
        }
    )
}

/// The state of an object that matters when comparing snapshots: rule text without
/// counters, a neighbour's MAC and whether it is usable, a sysctl's value, ….
fn state_of(o: &KernelObject) -> String {
    match o {
        KernelObject::Rule { text, .. } => strip_counters(text),
        KernelObject::Neighbour { lladdr, state, .. } => {
            let failed = state.contains("FAILED") || state.contains("INCOMPLETE");
            format!("{lladdr:?} {}", if failed { "failed" } else { "usable" })
        }
        KernelObject::Fdb { dst, present, .. } => format!("{dst:?} {present}"),
        KernelObject::Sysctl { value, .. } => format!("{value:?}"),
        KernelObject::Link { state, .. } => state.clone(),
        KernelObject::Socket { socket, .. } => format!("{socket:?}"),
        other => other.quote(),
    }
}

/// `:FORWARD DROP [2:120]` → `:FORWARD DROP`; `[5:300] -A …` → `-A …`.
fn strip_counters(text: &str) -> String {
    text.split_whitespace()
        .filter(|w| {
            !(w.starts_with('[')
                && w.ends_with(']')
                && w[1..w.len() - 1]
                    .split(':')
                    .all(|n| !n.is_empty() && n.bytes().all(|c| c.is_ascii_digit())))
        })
        .collect::<Vec<_>>()
        .join(" ")
}
