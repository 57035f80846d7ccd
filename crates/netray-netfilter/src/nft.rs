//! `nft -j list ruleset` (native nftables) into the rule model, and its evaluation.
//!
//! The common subset is modelled: payload (ip/ip6/tcp/udp/sctp/th/icmp fields), meta, ct, fib
//! type, comparisons, prefixes, ranges, named and anonymous sets and maps (verdict maps,
//! concatenations, intervals), numgen, jump/goto/return, nat, mark / ct mark statements,
//! counter, log, reject. Anything else is kept as an unknown item with its JSON.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

use serde_json::Value as J;

use crate::eval::{self, Act, Budget, Cx, Effect, St, Stage, StageKind, Step, Tri, Unk};
use crate::{
    AddrRange, Backend, CtDir, Diagnostic, EvalOptions, Hook, IpFamily, Matched, NatAction,
    ParseError, PortRange, RejectWith, RuleHit, Text, Verdict,
};

/// A value of a field.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Val {
    /// Integers (ports, marks, protocol numbers, flags, ...).
    Int(u128),
    /// Addresses.
    Addr(IpAddr),
    /// Strings (interface names).
    Str(String),
    /// Concatenation.
    Cat(Vec<Val>),
}

/// A packet field an expression reads.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Field {
    /// `ip saddr` / `ip6 saddr`.
    Saddr,
    /// `ip daddr` / `ip6 daddr`.
    Daddr,
    /// `ip protocol`, `ip6 nexthdr`, `meta l4proto`.
    L4proto,
    /// `th/tcp/udp/sctp sport`.
    Sport,
    /// `th/tcp/udp/sctp dport`.
    Dport,
    /// `tcp flags`.
    TcpFlags,
    /// `icmp type` / `icmpv6 type`.
    IcmpType,
    /// `icmp code` / `icmpv6 code`.
    IcmpCode,
    /// `ip ttl` / `ip6 hoplimit`.
    Ttl,
    /// `ip length` / `meta length`.
    Length,
    /// `ip dscp`.
    Dscp,
    /// `meta mark`.
    Mark,
    /// `meta iif` / `meta iifname`.
    Iif,
    /// `meta oif` / `meta oifname`.
    Oif,
    /// `meta nfproto` (2 ipv4, 10 ipv6).
    Nfproto,
    /// `meta pkttype`.
    Pkttype,
    /// `meta skuid`.
    Skuid,
    /// `meta skgid`.
    Skgid,
    /// `meta iifgroup`.
    Iifgroup,
    /// `meta oifgroup`.
    Oifgroup,
    /// `ct state` (bits as iptables state bits).
    CtState,
    /// `ct status`.
    CtStatus,
    /// `ct mark`.
    CtMark,
    /// `ct direction` (0 original, 1 reply).
    CtDirection,
    /// `ct original ip saddr`.
    CtOrigSaddr,
    /// `ct original ip daddr`.
    CtOrigDaddr,
    /// `ct original proto-dst`.
    CtOrigDport,
    /// `fib daddr type` (addrtype bit index as RTN_*).
    FibDaddrType,
    /// `fib saddr type`.
    FibSaddrType,
}

/// Left-hand side of a comparison or key of a lookup.
#[derive(Debug, Clone, PartialEq)]
pub enum Lhs {
    /// A field.
    F(Field),
    /// A field with a mask (`ct mark & 0x10`).
    And(Field, u128),
    /// Concatenation.
    Cat(Vec<Field>),
    /// `numgen random|inc mod N offset O`: uniform over N values.
    Numgen {
        /// Modulus.
        modulus: u32,
        /// Offset.
        offset: u32,
    },
}

/// Right-hand side pattern.
#[derive(Debug, Clone, PartialEq)]
pub enum Pat {
    /// One value.
    V(Val),
    /// Prefix (address network).
    Prefix(ipnet::IpNet),
    /// Inclusive range.
    Range(Val, Val),
    /// Concatenation of patterns.
    Cat(Vec<Pat>),
    /// Anonymous set.
    Set(Vec<Pat>),
    /// Named set `@name`.
    Ref(String),
}

/// A verdict in a rule or map.
#[derive(Debug, Clone, PartialEq)]
pub enum NVerdict {
    /// accept.
    Accept,
    /// drop.
    Drop,
    /// continue.
    Continue,
    /// return.
    Return,
    /// jump CHAIN (index into the table's chains).
    Jump(u32),
    /// goto CHAIN.
    Goto(u32),
    /// queue.
    Queue(u16),
}

/// One item of a rule, evaluated in order.
#[derive(Debug, Clone, PartialEq)]
pub enum Item {
    /// `match`.
    Cmp {
        /// Left.
        lhs: Lhs,
        /// Operator (`==`, `!=`, `<`, `>`, `<=`, `>=`, `in`).
        op: String,
        /// Right.
        rhs: Pat,
    },
    /// A terminal or control verdict.
    Verdict(NVerdict),
    /// `vmap`: key looked up in a verdict map (no entry: continue with the next rule... no:
    /// the rule simply ends).
    Vmap {
        /// Key.
        key: Lhs,
        /// Anonymous elements or a named map.
        map: Pat,
        /// Verdicts for anonymous elements, parallel to `map`'s set.
        verdicts: Vec<NVerdict>,
    },
    /// A statement with an effect.
    Effect(EffectSpec),
    /// reject.
    Reject(RejectWith),
    /// counter, log, limit-free statements with no effect modelled.
    Noop(&'static str),
    /// Anything else: unknown (its JSON).
    Unknown(String),
}

/// Effects of statements.
#[derive(Debug, Clone, PartialEq)]
pub enum EffectSpec {
    /// `meta mark set` (value, mask): mark = (mark & !mask) ^ value.
    Mark(u32, u32),
    /// `ct mark set` (value, mask).
    CtMark(u32, u32),
    /// `ct mark set meta mark` (save).
    SaveMark,
    /// `meta mark set ct mark` (restore).
    RestoreMark,
    /// nat.
    Nat(NatAction),
    /// notrack.
    Notrack,
}

/// A rule.
#[derive(Debug, Clone, PartialEq)]
pub struct NftRule {
    /// Handle.
    pub handle: u64,
    /// Items in order.
    pub items: Vec<Item>,
    /// The rule's JSON (evidence).
    pub text: Text,
    /// Counter if present.
    pub counters: Option<(u64, u64)>,
}

/// A chain.
#[derive(Debug, Clone, PartialEq)]
pub struct NftChain {
    /// Name.
    pub name: Arc<str>,
    /// Base chain: hook, priority, type, policy (true = accept).
    pub base: Option<BaseChain>,
    /// Rules.
    pub rules: Vec<NftRule>,
}

/// Base chain attributes.
#[derive(Debug, Clone, PartialEq)]
pub struct BaseChain {
    /// Hook.
    pub hook: Hook,
    /// Priority.
    pub prio: i32,
    /// `filter`, `nat`, `route`.
    pub kind: String,
    /// Policy accept (true) or drop.
    pub accept: bool,
    /// The policy as written when it is neither `accept` nor `drop`: a packet reaching it
    /// gets an unknown verdict (`accept` is then meaningless).
    pub policy_unparsed: Option<String>,
}

/// A named set or map.
#[derive(Debug, Clone, PartialEq)]
pub struct NftSet {
    /// Name.
    pub name: String,
    /// Elements.
    pub elems: Vec<Pat>,
    /// Map data (verdicts) parallel to `elems`, for verdict maps.
    pub verdicts: Vec<NVerdict>,
    /// Map data (values) parallel to `elems`, for data maps.
    pub data: Vec<Val>,
    /// Exact elements → index.
    exact: HashMap<Val, usize>,
}

/// A table.
#[derive(Debug, Clone, PartialEq)]
pub struct NftTable {
    /// `ip`, `ip6`, `inet`, `bridge`, `netdev`, `arp`.
    pub family: &'static str,
    /// Name.
    pub name: Arc<str>,
    /// Chains.
    pub chains: Vec<NftChain>,
    /// Sets and maps by name.
    pub sets: HashMap<String, NftSet>,
    /// Chain name → index in `chains` (the first chain of that name).
    by_name: HashMap<Arc<str>, u32>,
    /// Indexes of the base chains, in declaration order.
    bases: Vec<u32>,
}

impl NftTable {
    /// Index in [`NftTable::chains`] of the chain called `name`.
    pub fn chain_id(&self, name: &str) -> Option<u32> {
        self.by_name.get(name).copied()
    }
}

/// Native nftables tables.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NftRuleset {
    /// Tables.
    pub tables: Vec<NftTable>,
    /// Problems found.
    pub diagnostics: Vec<Diagnostic>,
}

fn fam(s: &str) -> Option<&'static str> {
    Some(match s {
        "ip" => "ip",
        "ip6" => "ip6",
        "inet" => "inet",
        "bridge" => "bridge",
        "netdev" => "netdev",
        "arp" => "arp",
        _ => return None,
    })
}

fn diag(pos: usize, msg: impl Into<String>, j: &J) -> Diagnostic {
    Diagnostic {
        source: "nft -j".into(),
        line: pos as u32 + 1,
        column: 1,
        message: msg.into(),
        text: j.to_string(),
    }
}

/// What to say about `nft list ruleset` text given where the JSON form is read.
pub const NFT_TEXT_FORM: &str = "this is the text form of `nft list ruleset`; netray reads \
its JSON form: run `nft -j list ruleset > ruleset.json` as root on that host (in a \
namespace: `ip netns exec NAME nft -j list ruleset > ruleset.json`) and give that file";

/// The first line that shows `text` is nft's text form (`table inet filter {`,
/// `flush ruleset`, `add table …`, `#!/usr/sbin/nft -f`), skipping blank and `#` lines; `None`
/// for anything else (JSON, garbage). 1-based line and its text.
pub fn nft_text_form(text: &str) -> Option<(u32, &str)> {
    for (i, line) in text.lines().enumerate() {
        let l = line.trim();
        if l.starts_with("#!") && l.contains("nft") {
            return Some((i as u32 + 1, line));
        }
        if l.is_empty() || l.starts_with('#') {
            continue;
        }
        let mut w = l.split_whitespace();
        let first = w.next().unwrap_or("");
        let second = w.next().unwrap_or("");
        let text_form = match first {
            "table" => l.ends_with('{'),
            "flush" => second == "ruleset" || second == "table",
            "add" | "create" | "insert" | "delete" | "destroy" => {
                matches!(
                    second,
                    "table" | "chain" | "rule" | "set" | "map" | "element"
                )
            }
            "define" | "include" => true,
            _ => false,
        };
        return text_form.then_some((i as u32 + 1, line));
    }
    None
}

impl NftRuleset {
    /// Parse `nft -j list ruleset`, skipping tables in `skip` ((family, name) of iptables-nft
    /// managed tables, read from their iptables-save text instead).
    pub fn parse(json: &str, skip: &[(IpFamily, String)]) -> Result<NftRuleset, ParseError> {
        if let Some((line, text)) = nft_text_form(json) {
            return Err(ParseError(Diagnostic {
                source: "nft -j".into(),
                line,
                column: 1,
                message: NFT_TEXT_FORM.into(),
                text: text.chars().take(200).collect(),
            }));
        }
        let root: J = serde_json::from_str(json).map_err(|e| {
            ParseError(Diagnostic {
                source: "nft -j".into(),
                line: e.line() as u32,
                column: e.column() as u32,
                message: format!("not JSON: {e}"),
                text: json
                    .lines()
                    .nth(e.line().saturating_sub(1))
                    .unwrap_or("")
                    .chars()
                    .take(200)
                    .collect(),
            })
        })?;
        let Some(items) = root.get("nftables").and_then(|v| v.as_array()) else {
            return Err(ParseError(Diagnostic {
                source: "nft -j".into(),
                line: 1,
                column: 1,
                message: "no `nftables` array at the top level".into(),
                text: json.chars().take(200).collect(),
            }));
        };
        let mut rs = NftRuleset::default();
        let skipped = |f: &str, n: &str| {
            skip.iter().any(|(sf, sn)| {
                sn == n && matches!((sf, f), (IpFamily::Ipv4, "ip") | (IpFamily::Ipv6, "ip6"))
            })
        };
        // (family, name) → table index: lookups stay O(1) however many tables and chains.
        let mut tables_ix: HashMap<(&'static str, Arc<str>), usize> = HashMap::new();
        let tidx = |ix: &HashMap<(&'static str, Arc<str>), usize>, f: &str, n: &str| {
            let f = fam(f)?;
            ix.get(&(f, Arc::from(n))).copied()
        };
        // Pass 1: tables, chains, sets.
        for (pos, it) in items.iter().enumerate() {
            if let Some(t) = it.get("table") {
                let (Some(f), Some(n)) = (t["family"].as_str().and_then(fam), t["name"].as_str())
                else {
                    rs.diagnostics
                        .push(diag(pos, "table without family/name", it));
                    continue;
                };
                if skipped(f, n) || tidx(&tables_ix, f, n).is_some() {
                    continue;
                }
                tables_ix.insert((f, Arc::from(n)), rs.tables.len());
                rs.tables.push(NftTable {
                    family: f,
                    name: Arc::from(n),
                    chains: Vec::new(),
                    sets: HashMap::new(),
                    by_name: HashMap::new(),
                    bases: Vec::new(),
                });
            } else if let Some(c) = it.get("chain") {
                let (Some(f), Some(tn), Some(n)) = (
                    c["family"].as_str(),
                    c["table"].as_str(),
                    c["name"].as_str(),
                ) else {
                    rs.diagnostics
                        .push(diag(pos, "chain without family/table/name", it));
                    continue;
                };
                if skipped(f, tn) {
                    continue;
                }
                let Some(ti) = tidx(&tables_ix, f, tn) else {
                    rs.diagnostics
                        .push(diag(pos, "chain of an unknown table", it));
                    continue;
                };
                let base = match c.get("hook").and_then(|h| h.as_str()) {
                    Some(h) => Hook::parse(h).map(|hook| {
                        let (accept, policy_unparsed) = match c.get("policy") {
                            None | Some(J::Null) => (true, None),
                            Some(J::String(p)) if p == "accept" => (true, None),
                            Some(J::String(p)) if p == "drop" => (false, None),
                            Some(other) => {
                                let p = other.as_str().map_or(other.to_string(), String::from);
                                rs.diagnostics.push(diag(
                                    pos,
                                    format!(
                                        "chain {n}: policy `{p}` not understood: a packet \
                                         reaching it is unknown"
                                    ),
                                    it,
                                ));
                                (true, Some(p))
                            }
                        };
                        BaseChain {
                            hook,
                            prio: c["prio"].as_i64().unwrap_or(0) as i32,
                            kind: c["type"].as_str().unwrap_or("filter").to_string(),
                            accept,
                            policy_unparsed,
                        }
                    }),
                    None => None,
                };
                let t = &mut rs.tables[ti];
                let id = t.chains.len() as u32;
                if t.by_name.contains_key(n) {
                    rs.diagnostics
                        .push(diag(pos, format!("chain {n} declared twice"), it));
                    continue;
                }
                t.by_name.insert(Arc::from(n), id);
                if base.is_some() {
                    t.bases.push(id);
                }
                t.chains.push(NftChain {
                    name: Arc::from(n),
                    base,
                    rules: Vec::new(),
                });
            }
        }
        // Pass 2: sets and maps (verdict maps name chains).
        for (pos, it) in items.iter().enumerate() {
            if let Some(s) = it.get("set").or_else(|| it.get("map")) {
                let (Some(f), Some(tn), Some(n)) = (
                    s["family"].as_str(),
                    s["table"].as_str(),
                    s["name"].as_str(),
                ) else {
                    rs.diagnostics
                        .push(diag(pos, "set without family/table/name", it));
                    continue;
                };
                if skipped(f, tn) {
                    continue;
                }
                let Some(ti) = tidx(&tables_ix, f, tn) else {
                    continue;
                };
                let mut set = NftSet {
                    name: n.to_string(),
                    elems: Vec::new(),
                    verdicts: Vec::new(),
                    data: Vec::new(),
                    exact: HashMap::new(),
                };
                let is_vmap = s.get("map").and_then(|m| m.as_str()) == Some("verdict");
                let types = set_types(&s["type"]);
                let map_type = s.get("map").map(set_types).unwrap_or_default();
                if let Some(elems) = s.get("elem").and_then(|e| e.as_array()) {
                    for e in elems {
                        let (k, d) = match e.as_array() {
                            Some(kv) if kv.len() == 2 && s.get("map").is_some() => {
                                (&kv[0], Some(&kv[1]))
                            }
                            _ => (e, None),
                        };
                        let Some(p) = pat_typed(unwrap_elem(k), &types) else {
                            rs.diagnostics.push(diag(
                                pos,
                                format!("set {n}: element not understood: {k}"),
                                it,
                            ));
                            continue;
                        };
                        if let Some(d) = d {
                            if is_vmap {
                                // Chain names resolved after all chains are known.
                                match verdict_json(d, &rs.tables[ti]) {
                                    Some(v) => set.verdicts.push(v),
                                    None => {
                                        rs.diagnostics.push(diag(
                                            pos,
                                            format!("map {n}: verdict not understood: {d}"),
                                            it,
                                        ));
                                        continue;
                                    }
                                }
                            } else {
                                match pat_typed(unwrap_elem(d), &map_type) {
                                    Some(Pat::V(v)) => set.data.push(v),
                                    _ => {
                                        rs.diagnostics.push(diag(
                                            pos,
                                            format!("map {n}: data not understood: {d}"),
                                            it,
                                        ));
                                        continue;
                                    }
                                }
                            }
                        }
                        if let Pat::V(v) = &p {
                            set.exact.insert(v.clone(), set.elems.len());
                        }
                        set.elems.push(p);
                    }
                }
                rs.tables[ti].sets.insert(n.to_string(), set);
            }
        }
        // Pass 3: rules.
        for (pos, it) in items.iter().enumerate() {
            let Some(r) = it.get("rule") else { continue };
            let (Some(f), Some(tn), Some(cn)) = (
                r["family"].as_str(),
                r["table"].as_str(),
                r["chain"].as_str(),
            ) else {
                rs.diagnostics
                    .push(diag(pos, "rule without family/table/chain", it));
                continue;
            };
            if skipped(f, tn) {
                continue;
            }
            let Some(ti) = tidx(&tables_ix, f, tn) else {
                rs.diagnostics
                    .push(diag(pos, "rule of an unknown table", it));
                continue;
            };
            let Some(ci) = rs.tables[ti].chain_id(cn).map(|c| c as usize) else {
                rs.diagnostics
                    .push(diag(pos, "rule of an unknown chain", it));
                continue;
            };
            let mut items_ir = Vec::new();
            let mut counters = None;
            for e in r["expr"].as_array().map(|a| a.as_slice()).unwrap_or(&[]) {
                let item = stmt(e, &rs.tables[ti]);
                if let Item::Unknown(u) = &item {
                    rs.diagnostics
                        .push(diag(pos, format!("statement not modelled: {u}"), it));
                }
                if let Some(c) = e.get("counter") {
                    counters = c["packets"].as_u64().zip(c["bytes"].as_u64());
                }
                items_ir.push(item);
            }
            let text = Text::owned(&r["expr"].to_string());
            rs.tables[ti].chains[ci].rules.push(NftRule {
                handle: r["handle"].as_u64().unwrap_or(0),
                items: items_ir,
                text,
                counters,
            });
        }
        Ok(rs)
    }

    /// Base chains of native tables for this hook and family.
    pub(crate) fn stages(
        &self,
        hook: Hook,
        fam: IpFamily,
        opts: &EvalOptions,
        out: &mut Vec<Stage>,
    ) {
        for (ti, t) in self.tables.iter().enumerate() {
            let applies = match (t.family, fam) {
                ("ip", IpFamily::Ipv4) | ("ip6", IpFamily::Ipv6) | ("inet", _) => true,
                ("bridge", _) => opts.bridged,
                _ => false,
            };
            if !applies {
                continue;
            }
            for &ci in &t.bases {
                let c = &t.chains[ci as usize];
                let Some(b) = &c.base else { continue };
                if b.hook != hook {
                    continue;
                }
                let nat = b.kind == "nat";
                if nat && !opts.nat {
                    continue;
                }
                out.push(Stage {
                    prio: b.prio,
                    kind: StageKind::Nft { table: ti as u32 },
                    base: ci,
                    nat,
                });
            }
        }
    }

    pub(crate) fn policy(&self, table: u32, chain: u32, st: &mut St) -> Option<Verdict> {
        let t = &self.tables[table as usize];
        let c = &t.chains[chain as usize];
        let accept = c.base.as_ref().is_none_or(|b| b.accept);
        let unparsed = c.base.as_ref().and_then(|b| b.policy_unparsed.as_deref());
        st.push_hit(RuleHit {
            backend: Backend::Nftables,
            family: t.family,
            table: t.name.clone(),
            chain: c.name.clone(),
            index: 0,
            handle: None,
            text: Text::owned(&format!(
                "policy {}",
                match unparsed {
                    Some(p) => p,
                    None if accept => "accept",
                    None => "drop",
                }
            )),
            counters: None,
            matched: Matched::Policy,
        });
        if let Some(p) = unparsed {
            return Some(Verdict::Unknown {
                reason: format!(
                    "the policy `{p}` of chain {} {}/{} could not be parsed",
                    t.family, t.name, c.name
                ),
            });
        }
        if accept { None } else { Some(Verdict::Drop) }
    }

    /// Evaluate the rule at `pos` of `chain` (and following non-matching ones).
    #[allow(clippy::too_many_arguments)]
    pub(crate) fn step(
        &self,
        cx: &Cx,
        _stage: Stage,
        table: u32,
        chain: u32,
        pos: u32,
        st: &mut St,
        work: &mut Vec<St>,
        budget: &mut Budget,
    ) -> Step {
        let t = &self.tables[table as usize];
        let c = &t.chains[chain as usize];
        let mut pos = pos;
        while (pos as usize) < c.rules.len() {
            let r = &c.rules[pos as usize];
            let idx = pos + 1;
            pos += 1;
            st.set_top_pos(pos);
            let hit = |m: Matched| RuleHit {
                backend: Backend::Nftables,
                family: t.family,
                table: t.name.clone(),
                chain: c.name.clone(),
                index: idx,
                handle: Some(r.handle),
                text: r.text.clone(),
                counters: r.counters,
                matched: m,
            };
            let label = format!("{} {}/{}#{}", t.family, t.name, c.name, idx);
            if !budget.step() {
                return Step::Act(pos, Act::Unknown(Budget::steps_exhausted(&label)));
            }
            match run_rule(cx, t, r, st, work, budget, &label, &hit) {
                None => {
                    if cx.opts.record_misses {
                        st.push_hit(hit(Matched::No));
                    }
                    continue;
                }
                Some(act) => return Step::Act(pos, act),
            }
        }
        Step::End
    }
}

/// Stable key of the fact an unknown comparison rests on, and whether the item is its
/// negation (`!=` asks the same fact as `==`). `v`: the value compared, when known.
fn fact_key(lhs: &Lhs, op: &str, rhs: &Pat, v: Option<&Val>) -> (String, bool) {
    let (op, neg) = if op == "!=" {
        ("==", true)
    } else {
        (op, false)
    };
    let of = v.map(|v| format!(" (value {v:?})")).unwrap_or_default();
    (format!("nft {lhs:?} {op} {rhs:?}{of}"), neg)
}

/// Count of integers in `[lo, hi)` whose bits meet `bits` (`x & bits != 0`).
fn count_flag_hits(lo: u128, hi: u128, bits: u128) -> u128 {
    // Integers in [0, n) with no bit of `bits` set: walk n's bits from the top.
    fn none_set(n: u128, bits: u128) -> u128 {
        let mut count = 0u128;
        for i in (0..128).rev() {
            let b = 1u128 << i;
            if n & b != 0 {
                // Numbers with n's prefix above i, a 0 at i, anything allowed below.
                let free = (!bits & (b - 1)).count_ones();
                count += 1u128 << free;
                if bits & b != 0 {
                    // The prefix itself now has a forbidden bit: nothing more with it.
                    return count;
                }
            }
        }
        count
    }
    if hi <= lo {
        return 0;
    }
    (hi - lo) - (none_set(hi, bits) - none_set(lo, bits))
}

/// The numgen values `[lo, hi)` split into intervals on which a comparison against `pats` is
/// constant (bounds from every value and range in them); calls `f(first value, length)`.
fn numgen_intervals(lo: u128, hi: u128, pats: &[&Pat], mut f: impl FnMut(u128, u128)) {
    fn walk(p: &Pat, cuts: &mut Vec<u128>) {
        match p {
            Pat::V(Val::Int(x)) => {
                cuts.push(*x);
                cuts.push(x.saturating_add(1));
            }
            Pat::Range(a, b) => {
                for x in [a, b] {
                    if let Val::Int(x) = x {
                        cuts.push(*x);
                        cuts.push(x.saturating_add(1));
                    }
                }
            }
            Pat::Set(ps) | Pat::Cat(ps) => ps.iter().for_each(|p| walk(p, cuts)),
            _ => {}
        }
    }
    let mut cuts = vec![lo, hi];
    for p in pats {
        walk(p, &mut cuts);
    }
    cuts.retain(|&c| lo <= c && c <= hi);
    cuts.sort_unstable();
    cuts.dedup();
    for w in cuts.windows(2) {
        f(w[0], w[1] - w[0]);
    }
}

/// Probability that `numgen mod m offset o` satisfies `op rhs`: the mass of the intervals of
/// values that do, in time linear in the size of `rhs` (not in the modulus).
fn numgen_mass(t: &NftTable, modulus: u32, offset: u32, op: &str, rhs: &Pat) -> f64 {
    let m = (modulus as u128).max(1);
    let lo = offset as u128;
    let hi = lo + m;
    if op == "in"
        && let Pat::V(Val::Int(bits)) = rhs
    {
        return count_flag_hits(lo, hi, *bits) as f64 / m as f64;
    }
    let pats: Vec<&Pat> = match rhs {
        Pat::Ref(n) => match t.sets.get(n.trim_start_matches('@')) {
            Some(s) => s.elems.iter().collect(),
            None => Vec::new(),
        },
        p => vec![p],
    };
    let mut hits = 0u128;
    numgen_intervals(lo, hi, &pats, |rep, len| {
        if cmp_values(t, &Val::Int(rep), op, rhs) == Tri::Yes {
            hits += len;
        }
    });
    hits as f64 / m as f64
}

/// Run a rule's items. None: the rule did not match (go to the next rule).
#[allow(clippy::too_many_arguments)]
fn run_rule(
    cx: &Cx,
    t: &NftTable,
    r: &NftRule,
    st: &mut St,
    work: &mut Vec<St>,
    budget: &mut Budget,
    label: &str,
    hit: &dyn Fn(Matched) -> RuleHit,
) -> Option<Act> {
    let mut matched = Matched::Yes;
    let mut recorded = false;
    let record = |st: &mut St, m: Matched, recorded: &mut bool| {
        if !*recorded {
            st.push_hit(hit(m));
            *recorded = true;
        }
    };
    for item in &r.items {
        match item {
            Item::Cmp { lhs, op, rhs } => {
                if let Lhs::Numgen { modulus, offset } = lhs {
                    // Branch on the share of numgen values that satisfy the comparison.
                    let p = numgen_mass(t, *modulus, *offset, op, rhs);
                    if p <= 0.0 {
                        return None;
                    }
                    if p < 1.0 {
                        let total = st.prob();
                        match st.fork(budget) {
                            Ok(mut alt) => {
                                alt.set_prob(total * (1.0 - p));
                                alt.push_hit(hit(Matched::RandomNot));
                                // The alternative continues with the next rule.
                                work.push(alt_next(alt));
                            }
                            Err(why) => {
                                record(st, matched, &mut recorded);
                                return Some(Act::Unknown(format!(
                                    "evaluation stopped at {label}: {why}"
                                )));
                            }
                        }
                        st.set_prob(total * p);
                        matched = Matched::Random;
                    }
                    continue;
                }
                let (res, value) = match lhs_value(cx, st, lhs) {
                    Ok(v) => (cmp_values(t, &v, op, rhs), Some(v)),
                    Err(what) => (
                        Tri::Maybe {
                            p: 1.0,
                            unknown: Some(Box::new(Unk {
                                key: String::new(),
                                what,
                            })),
                        },
                        None,
                    ),
                };
                match res {
                    Tri::Yes => {}
                    Tri::No => return None,
                    Tri::Maybe { unknown, .. } => {
                        let (key, neg) = fact_key(lhs, op, rhs, value.as_ref());
                        let what = unknown.map_or_else(|| "comparison".to_string(), |u| u.what);
                        let u = Unk { key, what };
                        matched = Matched::AssumedYes;
                        match st.decided(cx, &u.key) {
                            Some(b) if b != neg => {}
                            Some(_) => {
                                // Decided earlier on this path: the item fails here.
                                st.push_hit(hit(Matched::AssumedNo));
                                return Some(Act::Continue);
                            }
                            None => {
                                // This state takes the value under which the item holds; the
                                // other one goes on with the next rule.
                                match st.split_on(&u, label, !neg, budget) {
                                    Ok(mut alt) => {
                                        alt.push_hit(hit(Matched::AssumedNo));
                                        work.push(alt_next(alt));
                                    }
                                    Err(why) => {
                                        record(st, matched, &mut recorded);
                                        return Some(Act::Unknown(format!(
                                            "evaluation stopped at {label} ({} is unknown): {why}",
                                            u.what
                                        )));
                                    }
                                }
                            }
                        }
                    }
                }
            }
            Item::Noop(_) => {}
            Item::Effect(e) => {
                record(st, matched, &mut recorded);
                let eff = match e {
                    EffectSpec::Mark(v, m) => Effect::Mark(*v, *m),
                    EffectSpec::CtMark(v, m) => Effect::CtMark(*v, *m),
                    EffectSpec::SaveMark => Effect::Connmark(crate::ipt::ConnmarkOp::Save {
                        nfmask: u32::MAX,
                        ctmask: u32::MAX,
                    }),
                    EffectSpec::RestoreMark => Effect::Connmark(crate::ipt::ConnmarkOp::Restore {
                        nfmask: u32::MAX,
                        ctmask: u32::MAX,
                    }),
                    EffectSpec::Nat(n) => {
                        st.apply(cx, &Effect::Nat(n.clone()));
                        return Some(Act::Accept);
                    }
                    EffectSpec::Notrack => Effect::Ct(crate::CtEffects {
                        notrack: true,
                        ..Default::default()
                    }),
                };
                st.apply(cx, &eff);
            }
            Item::Verdict(v) => {
                record(st, matched, &mut recorded);
                return Some(nverdict(v));
            }
            Item::Reject(w) => {
                record(st, matched, &mut recorded);
                return Some(Act::Reject(w.clone()));
            }
            Item::Vmap { key, map, verdicts } => {
                record(st, matched, &mut recorded);
                let (elems, verds): (&[Pat], &[NVerdict]) = match map {
                    Pat::Set(e) => (e, verdicts),
                    Pat::Ref(n) => match t.sets.get(n.trim_start_matches('@')) {
                        Some(s) => (&s.elems, &s.verdicts),
                        None => return Some(Act::Unknown(format!("{label}: map {n} not found"))),
                    },
                    _ => return Some(Act::Unknown(format!("{label}: vmap not understood"))),
                };
                if let Lhs::Numgen { modulus, offset } = key {
                    return Some(numgen_vmap(
                        st, work, budget, label, *modulus, *offset, elems, verds,
                    ));
                }
                let v = match lhs_value(cx, st, key) {
                    Ok(v) => v,
                    Err(what) => return Some(Act::Unknown(format!("{label}: {what}"))),
                };
                let i = match map {
                    Pat::Ref(n) => t
                        .sets
                        .get(n.trim_start_matches('@'))
                        .and_then(|s| s.lookup(&v)),
                    _ => elems.iter().position(|p| pat_match(&v, p) == Tri::Yes),
                };
                match i.and_then(|i| verds.get(i)) {
                    Some(vd) => return Some(nverdict(vd)),
                    None => {
                        // No element: the rule ends without verdict (next rule).
                        return Some(Act::Continue);
                    }
                }
            }
            Item::Unknown(u) => {
                record(st, matched, &mut recorded);
                return Some(Act::Unknown(format!("{label}: not modelled: {u}")));
            }
        }
    }
    record(st, matched, &mut recorded);
    Some(Act::Continue)
}

/// `numgen … vmap`: one branch per distinct element hit (the values without an element
/// continue with the next rule), each with the share of values that reach it. Work is linear
/// in the map's size, not in the modulus. The current state takes the first branch.
#[allow(clippy::too_many_arguments)]
fn numgen_vmap(
    st: &mut St,
    work: &mut Vec<St>,
    budget: &mut Budget,
    label: &str,
    modulus: u32,
    offset: u32,
    elems: &[Pat],
    verds: &[NVerdict],
) -> Act {
    let m = (modulus as u128).max(1);
    let lo = offset as u128;
    let pats: Vec<&Pat> = elems.iter().collect();
    // (element index or None, number of values), in order of first appearance.
    let mut groups: Vec<(Option<usize>, u128)> = Vec::new();
    numgen_intervals(lo, lo + m, &pats, |rep, len| {
        let kv = Val::Int(rep);
        let e = elems
            .iter()
            .position(|p| pat_match(&kv, p) == Tri::Yes)
            .filter(|&i| i < verds.len());
        match groups.iter_mut().find(|g| g.0 == e) {
            Some(g) => g.1 += len,
            None => groups.push((e, len)),
        }
    });
    let act_of = |e: Option<usize>| e.map(|i| nverdict(&verds[i])).unwrap_or(Act::Continue);
    let total = st.prob();
    let mut left = m;
    for &(e, n) in groups.iter().skip(1) {
        match st.fork(budget) {
            Ok(mut alt) => {
                alt.set_prob(total * n as f64 / m as f64);
                work.push(alt_act(alt, act_of(e)));
                left -= n;
            }
            Err(why) => {
                // The branches not explored keep their share, as unknown.
                st.set_prob(total * left as f64 / m as f64);
                return Act::Unknown(format!("evaluation stopped at {label}: {why}"));
            }
        }
    }
    st.set_prob(total * left as f64 / m as f64);
    act_of(groups.first().and_then(|g| g.0))
}

/// A forked state that did not match: it continues with the next rule (its frame's position
/// was already advanced by the caller's `pos`), encoded as a pending Continue.
fn alt_next(alt: St) -> St {
    alt.with_pending(Act::Continue)
}

fn alt_act(alt: St, act: Act) -> St {
    alt.with_pending(act)
}

fn nverdict(v: &NVerdict) -> Act {
    match v {
        NVerdict::Accept => Act::Accept,
        NVerdict::Drop => Act::Drop,
        NVerdict::Continue => Act::Continue,
        NVerdict::Return => Act::Return,
        NVerdict::Jump(c) => Act::Jump(*c),
        NVerdict::Goto(c) => Act::Goto(*c),
        NVerdict::Queue(n) => Act::Queue(*n),
    }
}

impl NftSet {
    fn lookup(&self, v: &Val) -> Option<usize> {
        if let Some(&i) = self.exact.get(v) {
            return Some(i);
        }
        if self.exact.len() == self.elems.len() {
            return None;
        }
        self.elems.iter().position(|p| pat_match(v, p) == Tri::Yes)
    }
}

fn field_value(cx: &Cx, st: &St, f: Field) -> Result<Val, String> {
    let pkt = cx.pkt;
    let v = &st.v;
    let int = |x: u128| Ok(Val::Int(x));
    match f {
        Field::Saddr => Ok(Val::Addr(v.src)),
        Field::Daddr => Ok(Val::Addr(v.dst)),
        Field::L4proto => int(pkt.proto as u128),
        Field::Sport => v
            .sport
            .map(|p| Val::Int(p as u128))
            .ok_or_else(|| "no source port".into()),
        Field::Dport => v
            .dport
            .map(|p| Val::Int(p as u128))
            .ok_or_else(|| "no destination port".into()),
        Field::TcpFlags => int(pkt.tcp_flags as u128),
        Field::IcmpType => pkt
            .icmp
            .map(|(t, _)| Val::Int(t as u128))
            .ok_or_else(|| "ICMP type not given".into()),
        Field::IcmpCode => pkt
            .icmp
            .map(|(_, c)| Val::Int(c as u128))
            .ok_or_else(|| "ICMP code not given".into()),
        Field::Ttl => int(pkt.ttl as u128),
        Field::Length => int(pkt.len as u128),
        Field::Dscp => int((pkt.tos >> 2) as u128),
        Field::Mark => int(v.mark as u128),
        Field::Iif => Ok(Val::Str(pkt.iif.clone().unwrap_or_default())),
        Field::Oif => Ok(Val::Str(pkt.oif.clone().unwrap_or_default())),
        Field::Nfproto => int(if pkt.dst.is_ipv4() { 2 } else { 10 }),
        Field::Pkttype => int(match pkt.pkttype {
            crate::PktType::Unicast => 0,
            crate::PktType::Broadcast => 1,
            crate::PktType::Multicast => 2,
            crate::PktType::Otherhost => 3,
        }),
        Field::Skuid => pkt
            .uid
            .map(|u| Val::Int(u as u128))
            .ok_or_else(|| "no socket uid".into()),
        Field::Skgid => pkt
            .gid
            .map(|u| Val::Int(u as u128))
            .ok_or_else(|| "no socket gid".into()),
        Field::Iifgroup | Field::Oifgroup => {
            let dev = if f == Field::Iifgroup {
                &pkt.iif
            } else {
                &pkt.oif
            };
            dev.as_deref()
                .and_then(|d| cx.ctx.iface_groups.iter().find(|(n, _)| n == d))
                .map(|(_, g)| Val::Int(*g as u128))
                .ok_or_else(|| "interface group not known".into())
        }
        Field::CtState => int(eval::state_bit(pkt, &Default::default()) as u128),
        Field::CtStatus => int((pkt.ct.status | v.nat_status) as u128),
        Field::CtMark => int(v.ctmark as u128),
        Field::CtDirection => int(if pkt.ct.dir == CtDir::Reply { 1 } else { 0 }),
        Field::CtOrigSaddr => match (pkt.ct.orig_src, pkt.ct.dir) {
            (Some(a), _) => Ok(Val::Addr(a)),
            (None, CtDir::Original) => Ok(Val::Addr(pkt.src)),
            _ => Err("ct original saddr not given".into()),
        },
        Field::CtOrigDaddr => match (pkt.ct.orig_dst, pkt.ct.dir) {
            (Some(a), _) => Ok(Val::Addr(a)),
            (None, CtDir::Original) => Ok(Val::Addr(pkt.dst)),
            _ => Err("ct original daddr not given".into()),
        },
        Field::CtOrigDport => match (pkt.ct.orig_dport, pkt.ct.dir) {
            (Some(p), _) => int(p as u128),
            (None, CtDir::Original) => pkt
                .dport
                .map(|p| Val::Int(p as u128))
                .ok_or_else(|| "no port".into()),
            _ => Err("ct original proto-dst not given".into()),
        },
        Field::FibDaddrType | Field::FibSaddrType => {
            let a = if f == Field::FibDaddrType {
                v.dst
            } else {
                v.src
            };
            let bit = eval::addr_type(cx.ctx, a, None);
            int(bit.trailing_zeros() as u128)
        }
    }
}

fn lhs_value(cx: &Cx, st: &St, l: &Lhs) -> Result<Val, String> {
    match l {
        Lhs::F(f) => field_value(cx, st, *f),
        Lhs::And(f, m) => match field_value(cx, st, *f)? {
            Val::Int(x) => Ok(Val::Int(x & m)),
            _ => Err("mask on a non-integer".into()),
        },
        Lhs::Cat(fs) => fs
            .iter()
            .map(|f| field_value(cx, st, *f))
            .collect::<Result<Vec<_>, _>>()
            .map(Val::Cat),
        Lhs::Numgen { .. } => Err("numgen".into()),
    }
}

fn ord(a: &Val, b: &Val) -> Option<std::cmp::Ordering> {
    match (a, b) {
        (Val::Int(x), Val::Int(y)) => Some(x.cmp(y)),
        (Val::Addr(x), Val::Addr(y)) if x.is_ipv4() == y.is_ipv4() => Some(x.cmp(y)),
        (Val::Str(x), Val::Str(y)) => Some(x.cmp(y)),
        _ => None,
    }
}

fn val_eq(a: &Val, b: &Val) -> bool {
    match (a, b) {
        (Val::Str(x), Val::Str(y)) => match y.strip_suffix('*') {
            Some(pre) => x.starts_with(pre),
            None => x == y,
        },
        _ => a == b,
    }
}

fn pat_match(v: &Val, p: &Pat) -> Tri {
    match p {
        Pat::V(x) => Tri::from_bool(val_eq(v, x)),
        Pat::Prefix(net) => match v {
            Val::Addr(a) => Tri::from_bool(net.contains(a)),
            _ => Tri::No,
        },
        Pat::Range(lo, hi) => Tri::from_bool(
            ord(v, lo).is_some_and(|o| o.is_ge()) && ord(v, hi).is_some_and(|o| o.is_le()),
        ),
        Pat::Cat(ps) => match v {
            Val::Cat(vs) if vs.len() == ps.len() => {
                let mut t = Tri::Yes;
                for (v, p) in vs.iter().zip(ps) {
                    t = t.and(pat_match(v, p));
                }
                t
            }
            _ => Tri::No,
        },
        Pat::Set(ps) => {
            if ps.iter().any(|p| pat_match(v, p) == Tri::Yes) {
                Tri::Yes
            } else {
                Tri::No
            }
        }
        Pat::Ref(_) => Tri::unknown_str("set reference outside a table"),
    }
}

trait TriExt {
    fn from_bool(b: bool) -> Tri;
    fn unknown_str(s: &str) -> Tri;
}

impl TriExt for Tri {
    fn from_bool(b: bool) -> Tri {
        if b { Tri::Yes } else { Tri::No }
    }
    fn unknown_str(s: &str) -> Tri {
        Tri::Maybe {
            p: 1.0,
            unknown: Some(Box::new(Unk {
                key: String::new(),
                what: s.to_string(),
            })),
        }
    }
}

fn cmp_values(t: &NftTable, v: &Val, op: &str, rhs: &Pat) -> Tri {
    let in_pat = |p: &Pat| -> Tri {
        match p {
            Pat::Ref(n) => match t.sets.get(n.trim_start_matches('@')) {
                Some(s) => Tri::from_bool(s.lookup(v).is_some()),
                None => Tri::unknown_str(&format!("set {n} not found")),
            },
            p => pat_match(v, p),
        }
    };
    match op {
        "==" => in_pat(rhs),
        "!=" => in_pat(rhs).not(),
        "in" => {
            // Flags: any bit set; otherwise membership.
            match (v, rhs) {
                (Val::Int(x), Pat::V(Val::Int(bits))) => Tri::from_bool(x & bits != 0),
                _ => in_pat(rhs),
            }
        }
        "<" | ">" | "<=" | ">=" => match rhs {
            Pat::V(r) => match ord(v, r) {
                Some(o) => Tri::from_bool(match op {
                    "<" => o.is_lt(),
                    ">" => o.is_gt(),
                    "<=" => o.is_le(),
                    _ => o.is_ge(),
                }),
                None => Tri::No,
            },
            _ => Tri::unknown_str("ordering against a non-value"),
        },
        o => Tri::unknown_str(&format!("operator {o}")),
    }
}

// ---------------------------------------------------------------------------------------------
// JSON → IR

/// Kind of a field, to read right-hand values.
#[derive(Debug, Clone, Copy, PartialEq)]
enum Kind {
    Addr,
    Int,
    Proto,
    Str,
    CtState,
    CtStatus,
    CtDir,
    FibType,
    TcpFlags,
    IcmpType(bool),
    Pkttype,
    Nfproto,
}

fn field_kind(f: Field) -> Kind {
    match f {
        Field::Saddr | Field::Daddr | Field::CtOrigSaddr | Field::CtOrigDaddr => Kind::Addr,
        Field::L4proto => Kind::Proto,
        Field::Iif | Field::Oif => Kind::Str,
        Field::CtState => Kind::CtState,
        Field::CtStatus => Kind::CtStatus,
        Field::CtDirection => Kind::CtDir,
        Field::FibDaddrType | Field::FibSaddrType => Kind::FibType,
        Field::TcpFlags => Kind::TcpFlags,
        Field::IcmpType => Kind::IcmpType(false),
        Field::Pkttype => Kind::Pkttype,
        Field::Nfproto => Kind::Nfproto,
        _ => Kind::Int,
    }
}

fn set_types(t: &J) -> Vec<Kind> {
    let one = |s: &str| match s {
        "ipv4_addr" | "ipv6_addr" => Kind::Addr,
        "inet_proto" => Kind::Proto,
        "ifname" => Kind::Str,
        "ct_state" => Kind::CtState,
        "icmp_type" => Kind::IcmpType(false),
        "icmpv6_type" => Kind::IcmpType(true),
        "tcp_flag" => Kind::TcpFlags,
        _ => Kind::Int,
    };
    match t {
        J::String(s) => vec![one(s)],
        J::Array(a) => a.iter().filter_map(|x| x.as_str()).map(one).collect(),
        _ => Vec::new(),
    }
}

fn unwrap_elem(j: &J) -> &J {
    match j.get("elem") {
        Some(e) => e.get("val").unwrap_or(e),
        None => j,
    }
}

fn payload_field(proto: &str, field: &str) -> Option<Field> {
    Some(match (proto, field) {
        ("ip" | "ip6", "saddr") => Field::Saddr,
        ("ip" | "ip6", "daddr") => Field::Daddr,
        ("ip", "protocol") | ("ip6", "nexthdr") => Field::L4proto,
        ("ip", "ttl") | ("ip6", "hoplimit") => Field::Ttl,
        ("ip", "length") => Field::Length,
        ("ip" | "ip6", "dscp") => Field::Dscp,
        ("tcp" | "udp" | "sctp" | "th" | "udplite" | "dccp", "sport") => Field::Sport,
        ("tcp" | "udp" | "sctp" | "th" | "udplite" | "dccp", "dport") => Field::Dport,
        ("tcp", "flags") => Field::TcpFlags,
        ("icmp" | "icmpv6", "type") => Field::IcmpType,
        ("icmp" | "icmpv6", "code") => Field::IcmpCode,
        _ => return None,
    })
}

fn lhs_json(j: &J) -> Option<Lhs> {
    if let Some(p) = j.get("payload") {
        return Some(Lhs::F(payload_field(
            p["protocol"].as_str()?,
            p["field"].as_str()?,
        )?));
    }
    if let Some(m) = j.get("meta") {
        return Some(Lhs::F(match m["key"].as_str()? {
            "l4proto" | "protocol" if m["key"] == "l4proto" => Field::L4proto,
            "mark" => Field::Mark,
            "iif" | "iifname" => Field::Iif,
            "oif" | "oifname" => Field::Oif,
            "nfproto" => Field::Nfproto,
            "pkttype" => Field::Pkttype,
            "length" => Field::Length,
            "skuid" => Field::Skuid,
            "skgid" => Field::Skgid,
            "iifgroup" => Field::Iifgroup,
            "oifgroup" => Field::Oifgroup,
            _ => return None,
        }));
    }
    if let Some(c) = j.get("ct") {
        let dir = c.get("dir").and_then(|d| d.as_str());
        return Some(Lhs::F(match (c["key"].as_str()?, dir) {
            ("state", None) => Field::CtState,
            ("status", None) => Field::CtStatus,
            ("mark", None) => Field::CtMark,
            ("direction", None) => Field::CtDirection,
            ("saddr" | "ip saddr" | "ip6 saddr", Some("original")) => Field::CtOrigSaddr,
            ("daddr" | "ip daddr" | "ip6 daddr", Some("original")) => Field::CtOrigDaddr,
            ("proto-dst", Some("original")) => Field::CtOrigDport,
            _ => return None,
        }));
    }
    if let Some(f) = j.get("fib") {
        if f["result"].as_str()? != "type" {
            return None;
        }
        let flags: Vec<&str> = f["flags"]
            .as_array()?
            .iter()
            .filter_map(|x| x.as_str())
            .collect();
        if flags.len() != 1 {
            return None;
        }
        return Some(Lhs::F(match flags[0] {
            "daddr" => Field::FibDaddrType,
            "saddr" => Field::FibSaddrType,
            _ => return None,
        }));
    }
    if let Some(c) = j.get("concat") {
        let mut fs = Vec::new();
        for e in c.as_array()? {
            match lhs_json(e)? {
                Lhs::F(f) => fs.push(f),
                _ => return None,
            }
        }
        return Some(Lhs::Cat(fs));
    }
    if let Some(a) = j.get("&") {
        let a = a.as_array()?;
        let Lhs::F(f) = lhs_json(a.first()?)? else {
            return None;
        };
        let m = int_json(a.get(1)?)?;
        return Some(Lhs::And(f, m));
    }
    if let Some(n) = j.get("numgen") {
        return Some(Lhs::Numgen {
            modulus: n["mod"].as_u64()? as u32,
            offset: n["offset"].as_u64().unwrap_or(0) as u32,
        });
    }
    None
}

fn int_json(j: &J) -> Option<u128> {
    match j {
        J::Number(n) => n.as_u64().map(|x| x as u128),
        J::String(s) => crate::ipt::parse_u32(s).map(|x| x as u128),
        _ => None,
    }
}

fn lhs_kinds(l: &Lhs) -> Vec<Kind> {
    match l {
        Lhs::F(f) | Lhs::And(f, _) => vec![field_kind(*f)],
        Lhs::Cat(fs) => fs.iter().map(|f| field_kind(*f)).collect(),
        Lhs::Numgen { .. } => vec![Kind::Int],
    }
}

fn scalar(j: &J, k: Kind) -> Option<Val> {
    Some(match (k, j) {
        (Kind::Addr, J::String(s)) => Val::Addr(s.parse().ok()?),
        (Kind::Str, J::String(s)) => Val::Str(s.clone()),
        (Kind::Proto, J::String(s)) => Val::Int(crate::ipt::proto_number(s)? as u128),
        (Kind::CtState, J::String(s)) => Val::Int(match s.as_str() {
            "invalid" => 1,
            "established" => 2,
            "related" => 4,
            "new" => 8,
            "untracked" => 16,
            _ => return None,
        }),
        (Kind::CtStatus, J::String(s)) => Val::Int(match s.as_str() {
            "expected" => 1,
            "seen-reply" => 2,
            "assured" => 4,
            "confirmed" => 8,
            "snat" => 16,
            "dnat" => 32,
            "dying" => 512,
            _ => return None,
        }),
        (Kind::CtDir, J::String(s)) => Val::Int(match s.as_str() {
            "original" => 0,
            "reply" => 1,
            _ => return None,
        }),
        (Kind::FibType, J::String(s)) => Val::Int(match s.as_str() {
            "unspec" => 0,
            "unicast" => 1,
            "local" => 2,
            "broadcast" => 3,
            "anycast" => 4,
            "multicast" => 5,
            "blackhole" => 6,
            "unreachable" => 7,
            "prohibit" => 8,
            _ => return None,
        }),
        (Kind::TcpFlags, J::String(s)) => Val::Int(match s.as_str() {
            "fin" => 1,
            "syn" => 2,
            "rst" => 4,
            "psh" => 8,
            "ack" => 16,
            "urg" => 32,
            "ecn" => 64,
            "cwr" => 128,
            _ => return None,
        }),
        (Kind::IcmpType(v6), J::String(s)) => Val::Int(match (s.as_str(), v6) {
            ("echo-reply", false) => 0,
            ("destination-unreachable", false) => 3,
            ("source-quench", false) => 4,
            ("redirect", false) => 5,
            ("echo-request", false) => 8,
            ("time-exceeded", false) => 11,
            ("parameter-problem", false) => 12,
            ("destination-unreachable", true) => 1,
            ("packet-too-big", true) => 2,
            ("time-exceeded", true) => 3,
            ("parameter-problem", true) => 4,
            ("echo-request", true) => 128,
            ("echo-reply", true) => 129,
            ("nd-router-solicit", true) => 133,
            ("nd-router-advert", true) => 134,
            ("nd-neighbor-solicit", true) => 135,
            ("nd-neighbor-advert", true) => 136,
            _ => return None,
        }),
        (Kind::Pkttype, J::String(s)) => Val::Int(match s.as_str() {
            "host" | "unicast" => 0,
            "broadcast" => 1,
            "multicast" => 2,
            "other" => 3,
            _ => return None,
        }),
        (Kind::Nfproto, J::String(s)) => Val::Int(match s.as_str() {
            "ipv4" => 2,
            "ipv6" => 10,
            _ => return None,
        }),
        (_, J::Number(n)) => Val::Int(n.as_u64()? as u128),
        (Kind::Int, J::String(s)) => Val::Int(crate::ipt::parse_u32(s)? as u128),
        _ => return None,
    })
}

/// A right-hand pattern for a field sequence of `kinds`.
fn pat_typed(j: &J, kinds: &[Kind]) -> Option<Pat> {
    let k = kinds.first().copied().unwrap_or(Kind::Int);
    if let Some(c) = j.get("concat") {
        let parts = c.as_array()?;
        let mut ps = Vec::new();
        for (i, p) in parts.iter().enumerate() {
            ps.push(pat_typed(p, &[kinds.get(i).copied().unwrap_or(Kind::Int)])?);
        }
        // All-exact concatenations become one value (hashable).
        if ps.iter().all(|p| matches!(p, Pat::V(_))) {
            return Some(Pat::V(Val::Cat(
                ps.into_iter()
                    .map(|p| match p {
                        Pat::V(v) => v,
                        _ => unreachable!(),
                    })
                    .collect(),
            )));
        }
        return Some(Pat::Cat(ps));
    }
    if let Some(p) = j.get("prefix") {
        let addr: IpAddr = p["addr"].as_str()?.parse().ok()?;
        let len = p["len"].as_u64()? as u8;
        return Some(Pat::Prefix(ipnet::IpNet::new(addr, len).ok()?.trunc()));
    }
    if let Some(r) = j.get("range") {
        let r = r.as_array()?;
        return Some(Pat::Range(scalar(r.first()?, k)?, scalar(r.get(1)?, k)?));
    }
    if let Some(s) = j.get("set") {
        let items = match s {
            J::Array(a) => a.clone(),
            other => vec![other.clone()],
        };
        let mut ps = Vec::new();
        for i in &items {
            ps.push(pat_typed(unwrap_elem(i), kinds)?);
        }
        return Some(Pat::Set(ps));
    }
    if let J::String(s) = j
        && let Some(n) = s.strip_prefix('@')
    {
        return Some(Pat::Ref(n.to_string()));
    }
    if let J::Array(a) = j {
        // Flag list (`ct state { established, related }` as ["established","related"]).
        let mut bits = 0u128;
        for x in a {
            match scalar(x, k)? {
                Val::Int(b) => bits |= b,
                _ => return None,
            }
        }
        return Some(Pat::V(Val::Int(bits)));
    }
    Some(Pat::V(scalar(j, k)?))
}

fn chain_index(t: &NftTable, name: &str) -> Option<u32> {
    t.chain_id(name)
}

fn verdict_json(j: &J, t: &NftTable) -> Option<NVerdict> {
    let obj = j.as_object()?;
    let (k, v) = obj.iter().next()?;
    Some(match k.as_str() {
        "accept" => NVerdict::Accept,
        "drop" => NVerdict::Drop,
        "continue" => NVerdict::Continue,
        "return" => NVerdict::Return,
        "jump" => NVerdict::Jump(chain_index(t, v["target"].as_str()?)?),
        "goto" => NVerdict::Goto(chain_index(t, v["target"].as_str()?)?),
        "queue" => NVerdict::Queue(v.get("num").and_then(|n| n.as_u64()).unwrap_or(0) as u16),
        _ => return None,
    })
}

fn nat_json(kind: &str, v: &J) -> Option<NatAction> {
    let flags: Vec<&str> = match v.get("flags") {
        Some(J::Array(a)) => a.iter().filter_map(|x| x.as_str()).collect(),
        Some(J::String(s)) => vec![s.as_str()],
        _ => Vec::new(),
    };
    let random = flags.contains(&"random");
    let random_fully = flags.contains(&"fully-random");
    let persistent = flags.contains(&"persistent");
    let addr = match v.get("addr") {
        None => None,
        Some(J::String(s)) => {
            let a: IpAddr = s.parse().ok()?;
            Some(AddrRange { lo: a, hi: a })
        }
        Some(r) => {
            let r = r.get("range")?.as_array()?;
            Some(AddrRange {
                lo: r.first()?.as_str()?.parse().ok()?,
                hi: r.get(1)?.as_str()?.parse().ok()?,
            })
        }
    };
    let ports = match v.get("port") {
        None => None,
        Some(J::Number(n)) => Some(PortRange::one(n.as_u64()? as u16)),
        Some(r) => {
            let r = r.get("range")?.as_array()?;
            Some(PortRange {
                lo: r.first()?.as_u64()? as u16,
                hi: r.get(1)?.as_u64()? as u16,
            })
        }
    };
    Some(match kind {
        "dnat" => NatAction::Dnat {
            addr,
            ports,
            random,
            persistent,
        },
        "snat" => NatAction::Snat {
            addr,
            ports,
            random,
            random_fully,
            persistent,
        },
        "masquerade" => NatAction::Masquerade {
            ports,
            random,
            random_fully,
        },
        "redirect" => NatAction::Redirect { ports, random },
        _ => return None,
    })
}

/// `meta mark set <expr>` value → (value, mask) in xmark form.
fn mark_set(value: &J, key: Field) -> Option<(u32, u32)> {
    if let Some(n) = int_json(value) {
        return Some((n as u32, u32::MAX));
    }
    // (mark & a) | b, mark | b, mark & a, mark ^ b.
    for (op, f) in [("|", 0), ("&", 1), ("^", 2)] {
        if let Some(a) = value.get(op).and_then(|a| a.as_array()) {
            let inner = a.first()?;
            let c = int_json(a.get(1)?)? as u32;
            let (mut v, mut m) = if lhs_json(inner) == Some(Lhs::F(key)) {
                (0u32, 0u32)
            } else {
                mark_set(inner, key)?
            };
            match f {
                0 => {
                    // x | c
                    m |= c;
                    v |= c;
                }
                1 => {
                    // x & c
                    v &= c;
                    m |= !c;
                }
                _ => v ^= c,
            }
            return Some((v, m));
        }
    }
    None
}

fn stmt(e: &J, t: &NftTable) -> Item {
    let unknown = || Item::Unknown(e.to_string());
    let Some((k, v)) = e.as_object().and_then(|o| o.iter().next()) else {
        return unknown();
    };
    match k.as_str() {
        "match" => {
            let (Some(lhs), Some(op)) = (lhs_json(&v["left"]), v["op"].as_str()) else {
                return unknown();
            };
            let kinds = lhs_kinds(&lhs);
            match pat_typed(&v["right"], &kinds) {
                Some(rhs) => Item::Cmp {
                    lhs,
                    op: op.to_string(),
                    rhs,
                },
                None => unknown(),
            }
        }
        "accept" | "drop" | "continue" | "return" | "jump" | "goto" | "queue" => {
            match verdict_json(e, t) {
                Some(v) => Item::Verdict(v),
                None => unknown(),
            }
        }
        "counter" => Item::Noop("counter"),
        "log" => Item::Noop("log"),
        "set" => Item::Noop("set update"),
        "reject" => {
            let ty = v.get("type").and_then(|x| x.as_str()).unwrap_or("");
            let ex = v.get("expr").and_then(|x| x.as_str()).unwrap_or("");
            Item::Reject(match (ty, ex) {
                ("tcp reset", _) => RejectWith::TcpReset,
                ("icmpx" | "icmp", "port-unreachable") | ("", "") => {
                    RejectWith::IcmpPortUnreachable
                }
                ("icmpv6", "port-unreachable") => RejectWith::Icmp6PortUnreachable,
                (_, other) => RejectWith::Other(format!("{ty} {other}").trim().to_string()),
            })
        }
        "dnat" | "snat" | "masquerade" | "redirect" => {
            match nat_json(k, if v.is_null() { &J::Null } else { v }) {
                Some(n) => Item::Effect(EffectSpec::Nat(n)),
                None => unknown(),
            }
        }
        "notrack" => Item::Effect(EffectSpec::Notrack),
        "mangle" => {
            let Some(key) = lhs_json(&v["key"]) else {
                return unknown();
            };
            let val = &v["value"];
            match key {
                Lhs::F(Field::Mark) => {
                    if lhs_json(val) == Some(Lhs::F(Field::CtMark)) {
                        return Item::Effect(EffectSpec::RestoreMark);
                    }
                    match mark_set(val, Field::Mark) {
                        Some((a, m)) => Item::Effect(EffectSpec::Mark(a, m)),
                        None => unknown(),
                    }
                }
                Lhs::F(Field::CtMark) => {
                    if lhs_json(val) == Some(Lhs::F(Field::Mark)) {
                        return Item::Effect(EffectSpec::SaveMark);
                    }
                    match mark_set(val, Field::CtMark) {
                        Some((a, m)) => Item::Effect(EffectSpec::CtMark(a, m)),
                        None => unknown(),
                    }
                }
                _ => unknown(),
            }
        }
        "vmap" => {
            let Some(key) = lhs_json(&v["key"]) else {
                return unknown();
            };
            let kinds = lhs_kinds(&key);
            let data = &v["data"];
            if let Some(n) = data.as_str().and_then(|s| s.strip_prefix('@')) {
                return Item::Vmap {
                    key,
                    map: Pat::Ref(n.to_string()),
                    verdicts: Vec::new(),
                };
            }
            let Some(elems) = data.get("set").and_then(|s| s.as_array()) else {
                return unknown();
            };
            let mut ps = Vec::new();
            let mut vs = Vec::new();
            for kv in elems {
                let Some(kv) = kv.as_array().filter(|a| a.len() == 2) else {
                    return unknown();
                };
                let (Some(p), Some(vd)) = (
                    pat_typed(unwrap_elem(&kv[0]), &kinds),
                    verdict_json(&kv[1], t),
                ) else {
                    return unknown();
                };
                ps.push(p);
                vs.push(vd);
            }
            Item::Vmap {
                key,
                map: Pat::Set(ps),
                verdicts: vs,
            }
        }
        _ => unknown(),
    }
}
