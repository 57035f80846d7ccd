//! The evaluator: every table / base chain of a hook in priority order, jump/goto/return with a
//! call stack, three-valued matches, branches for `-m statistic` / `numgen` / unknowns.

use std::net::IpAddr;

use crate::ipset::Key;
use crate::ipt::{self, ConnmarkOp, Match, Neg, Target};
use crate::*;

/// The packet fields a hook may rewrite, as the rules currently see them.
#[derive(Debug, Clone, Copy)]
pub(crate) struct View {
    pub src: IpAddr,
    pub dst: IpAddr,
    pub sport: Option<u16>,
    pub dport: Option<u16>,
    pub mark: u32,
    pub ctmark: u32,
    /// Conntrack status bits set by NAT earlier in this hook.
    pub nat_status: u32,
}

/// Everything a match needs.
pub(crate) struct Cx<'a> {
    pub rs: &'a Ruleset,
    pub hook: Hook,
    pub pkt: &'a Packet,
    pub ctx: &'a HostContext,
    pub opts: &'a EvalOptions,
    /// Facts decided earlier on the path (at earlier hooks), given by the caller.
    pub given: &'a [Assumption],
}

/// An unknown fact a match depends on: its stable key and why it is unknown.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Unk {
    pub key: String,
    pub what: String,
}

/// Three-valued match result, with probability for random matches.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Tri {
    No,
    Yes,
    /// Matches with probability `p` (1.0 if only unknown); `unknown` is the first fact not yet
    /// decided on the path that the result depends on.
    Maybe {
        p: f64,
        unknown: Option<Box<Unk>>,
    },
}

impl Tri {
    pub(crate) fn from(b: bool) -> Tri {
        if b { Tri::Yes } else { Tri::No }
    }
    /// Conjunction.
    pub(crate) fn and(self, o: Tri) -> Tri {
        match (self, o) {
            (Tri::No, _) | (_, Tri::No) => Tri::No,
            (Tri::Yes, x) | (x, Tri::Yes) => x,
            (Tri::Maybe { p: p1, unknown: u1 }, Tri::Maybe { p: p2, unknown: u2 }) => Tri::Maybe {
                p: p1 * p2,
                unknown: u1.or(u2),
            },
        }
    }
    /// Negation (probabilities complement; an undecided fact stays undecided).
    pub(crate) fn not(self) -> Tri {
        match self {
            Tri::No => Tri::Yes,
            Tri::Yes => Tri::No,
            Tri::Maybe { p, unknown } => Tri::Maybe {
                p: 1.0 - p,
                unknown,
            },
        }
    }
    /// Negate when `neg`.
    pub(crate) fn neg_if(self, neg: bool) -> Tri {
        if neg { self.not() } else { self }
    }
}

/// The facts a path has decided, as a match sees them: the caller's (earlier hooks) and the
/// path's own (this evaluation). Records whether a match consulted one.
pub(crate) struct Fx<'a> {
    given: &'a [Assumption],
    path: &'a [Assumption],
    used: std::cell::Cell<bool>,
}

impl<'a> Fx<'a> {
    pub(crate) fn new(given: &'a [Assumption], path: &'a [Assumption]) -> Fx<'a> {
        Fx {
            given,
            path,
            used: std::cell::Cell::new(false),
        }
    }

    /// The decided value of fact `key`, if any.
    pub(crate) fn get(&self, key: &str) -> Option<bool> {
        let v = decided(self.given, self.path, key);
        if v.is_some() {
            self.used.set(true);
        }
        v
    }

    /// The truth of the fact `key` (the construct itself, before any `!`): its decided value,
    /// or `Maybe` naming it when the path has not decided it yet.
    pub(crate) fn fact(&self, key: String, what: impl Into<String>) -> Tri {
        match self.get(&key) {
            Some(b) => Tri::from(b),
            None => Tri::Maybe {
                p: 1.0,
                unknown: Some(Box::new(Unk {
                    key,
                    what: what.into(),
                })),
            },
        }
    }

    /// Whether a decided fact was consulted.
    pub(crate) fn used(&self) -> bool {
        self.used.get()
    }
}

/// Value of fact `key` among the given and the path's decisions.
pub(crate) fn decided(given: &[Assumption], path: &[Assumption], key: &str) -> Option<bool> {
    path.iter()
        .chain(given)
        .find(|a| a.key == key)
        .map(|a| a.matched)
}

/// The packet values a stateful or opaque match may look at, for fact keys.
pub(crate) fn view_key(pkt: &Packet, v: &View) -> String {
    let port = |p: Option<u16>| p.map(|p| format!(":{p}")).unwrap_or_default();
    format!(
        "[proto {} {}{} -> {}{}]",
        pkt.proto,
        v.src,
        port(v.sport),
        v.dst,
        port(v.dport)
    )
}

/// The work bounds of one evaluation ([`crate::limits`]).
#[derive(Debug)]
pub(crate) struct Budget {
    /// Forks left ([`EvalOptions::max_branches`]).
    pub branches: usize,
    /// Rule steps left ([`limits::MAX_RULE_STEPS`]).
    pub steps: u64,
}

impl Budget {
    /// Take one rule step; false when none is left.
    pub(crate) fn step(&mut self) -> bool {
        if self.steps == 0 {
            return false;
        }
        self.steps -= 1;
        true
    }

    /// Why a step was refused, at `at`.
    pub(crate) fn steps_exhausted(at: &str) -> String {
        format!(
            "evaluation stopped at {at}: more than {} rule steps in one evaluation \
             (limit MAX_RULE_STEPS; the ruleset is too large or loops)",
            limits::MAX_RULE_STEPS
        )
    }
}

/// Which chains a stage runs.
#[derive(Debug, Clone, Copy)]
pub(crate) enum StageKind {
    /// iptables: dump, table.
    Ipt { dump: u32, table: u32 },
    /// nft: table index.
    Nft { table: u32 },
    /// iptables: lines of the dump outside any table ([`ipt::Dump::orphans`]): unknown.
    Orphans { dump: u32 },
}

#[derive(Debug, Clone, Copy)]
pub(crate) struct Stage {
    pub prio: i32,
    pub kind: StageKind,
    pub base: u32,
    pub nat: bool,
}

#[derive(Debug, Clone, Copy)]
struct Frame {
    chain: u32,
    pos: u32,
}

#[derive(Debug, Clone)]
pub(crate) struct St {
    prob: f64,
    stage: usize,
    stack: Vec<Frame>,
    pub(crate) v: View,
    nat: Option<NatAction>,
    ct: CtEffects,
    tproxy: Option<Tproxy>,
    trail: Vec<RuleHit>,
    assumptions: Vec<Assumption>,
    /// Jumps and gotos taken on this path ([`limits::MAX_TRANSFERS_PER_PATH`]).
    transfers: u32,
    /// An action to apply before looking at the next rule (set on forked branches).
    pending: Option<Act>,
}

/// A non-verdict effect of a rule.
#[derive(Debug, Clone)]
pub(crate) enum Effect {
    /// mark = (mark & !mask) ^ value.
    Mark(u32, u32),
    /// ctmark = (ctmark & !mask) ^ value.
    CtMark(u32, u32),
    Connmark(ConnmarkOp),
    Nat(NatAction),
    Ct(CtEffects),
    Tproxy(Tproxy),
}

/// What a matched rule does to control flow.
#[derive(Debug, Clone)]
pub(crate) enum Act {
    Continue,
    Accept,
    Drop,
    Reject(RejectWith),
    Queue(u16),
    Return,
    Jump(u32),
    Goto(u32),
    Unknown(String),
}

fn family_of(pkt: &Packet) -> IpFamily {
    pkt.family()
}

fn ipt_prio(table: &str, hook: Hook) -> Option<(i32, bool)> {
    Some(match (table, hook) {
        ("raw", Hook::Prerouting | Hook::Output) => (-300, false),
        ("mangle", _) => (-150, false),
        ("nat", Hook::Prerouting | Hook::Output) => (-100, true),
        ("nat", Hook::Input | Hook::Postrouting) => (100, true),
        ("filter", Hook::Input | Hook::Forward | Hook::Output) => (0, false),
        ("security", Hook::Input | Hook::Forward | Hook::Output) => (50, false),
        _ => return None,
    })
}

/// The stages of a hook, in kernel order (stable: legacy, then iptables-nft, then native nft at
/// equal priority).
pub(crate) fn stages(rs: &Ruleset, hook: Hook, pkt: &Packet, opts: &EvalOptions) -> Vec<Stage> {
    let fam = family_of(pkt);
    let mut out = Vec::new();
    let mut order: Vec<usize> = (0..rs.ipt.len()).collect();
    order.sort_by_key(|&i| match rs.ipt[i].backend {
        IptablesBackend::Legacy => 0,
        IptablesBackend::Nft => 1,
    });
    for di in order {
        let d = &rs.ipt[di];
        if d.family != fam {
            continue;
        }
        if !d.orphans.is_empty() {
            out.push(Stage {
                prio: i32::MIN,
                kind: StageKind::Orphans { dump: di as u32 },
                base: 0,
                nat: false,
            });
        }
        for (ti, t) in d.tables.iter().enumerate() {
            let Some((prio, nat)) = ipt_prio(&t.name, hook) else {
                continue;
            };
            if nat && !opts.nat {
                continue;
            }
            let Some(base) = t.chain_id(hook.chain_name()) else {
                continue;
            };
            out.push(Stage {
                prio,
                kind: StageKind::Ipt {
                    dump: di as u32,
                    table: ti as u32,
                },
                base,
                nat,
            });
        }
    }
    rs.nft.stages(hook, fam, opts, &mut out);
    out.sort_by_key(|s| s.prio);
    out
}

pub(crate) fn evaluate(
    rs: &Ruleset,
    hook: Hook,
    pkt: &Packet,
    ctx: &HostContext,
    opts: &EvalOptions,
    given: &[Assumption],
) -> Vec<Outcome> {
    let stages = stages(rs, hook, pkt, opts);
    let cx = Cx {
        rs,
        hook,
        pkt,
        ctx,
        opts,
        given,
    };
    let init = St {
        prob: 1.0,
        stage: 0,
        stack: Vec::with_capacity(8),
        v: View {
            src: pkt.src,
            dst: pkt.dst,
            sport: pkt.sport,
            dport: pkt.dport,
            mark: pkt.mark,
            ctmark: pkt.ct.mark,
            nat_status: 0,
        },
        nat: None,
        ct: CtEffects::default(),
        tproxy: None,
        trail: Vec::new(),
        assumptions: Vec::new(),
        transfers: 0,
        pending: None,
    };
    let mut work = vec![init];
    let mut out = Vec::new();
    let mut budget = Budget {
        branches: opts.max_branches.max(1),
        steps: limits::MAX_RULE_STEPS,
    };
    while let Some(mut st) = work.pop() {
        let verdict = run(&cx, &stages, &mut st, &mut work, &mut budget);
        out.push(Outcome {
            probability: st.prob,
            verdict,
            mark: st.v.mark,
            ct_mark: st.v.ctmark,
            nat: st.nat,
            ct: st.ct,
            tproxy: st.tproxy,
            trail: st.trail,
            assumptions: st.assumptions,
        });
    }
    out
}

/// `table/chain#N` of the rule at 1-based `index` of `chain` in a stage (for limit messages).
fn where_in(cx: &Cx, stage: Stage, chain: u32, index: u32) -> String {
    match stage.kind {
        StageKind::Ipt { dump, table } => {
            let t = &cx.rs.ipt[dump as usize].tables[table as usize];
            rule_label(&t.name, &t.chains[chain as usize].name, index)
        }
        StageKind::Nft { table } => {
            let t = &cx.rs.nft.tables[table as usize];
            format!(
                "{} {}/{}#{}",
                t.family, t.name, t.chains[chain as usize].name, index
            )
        }
        StageKind::Orphans { .. } => String::new(),
    }
}

/// Unknown verdict for an error item that belongs to no chain.
fn orphan_verdict(d: &ipt::Dump, table: Option<&str>, r: &ipt::Rule) -> Verdict {
    Verdict::Unknown {
        reason: format!(
            "line {} of {}{} could not be parsed ({}) and its chain is unknown: `{}`",
            r.line.0,
            d.source_name(),
            table.map(|t| format!(", table {t}")).unwrap_or_default(),
            r.error().unwrap_or("error"),
            d.slice(r.span)
        ),
    }
}

/// Run one state to its verdict, pushing branches to `work`.
fn run(cx: &Cx, stages: &[Stage], st: &mut St, work: &mut Vec<St>, budget: &mut Budget) -> Verdict {
    'stages: while st.stage < stages.len() {
        let stage = stages[st.stage];
        if stage.nat && st.nat.is_some() && nat_manip_done(cx.hook, st.nat.as_ref()) {
            // A NAT binding for this manipulation exists: later nat chains are not consulted.
            st.stage += 1;
            continue;
        }
        if st.stack.is_empty() {
            match stage.kind {
                StageKind::Orphans { dump } => {
                    let d = &cx.rs.ipt[dump as usize];
                    if let Some(r) = d.orphans.first() {
                        return orphan_verdict(d, None, r);
                    }
                    st.stage += 1;
                    continue;
                }
                StageKind::Ipt { dump, table } if st.pending.is_none() => {
                    let d = &cx.rs.ipt[dump as usize];
                    let t = &d.tables[table as usize];
                    if let Some(r) = t.orphans.first() {
                        return orphan_verdict(d, Some(&t.name), r);
                    }
                }
                _ => {}
            }
            st.stack.push(Frame {
                chain: stage.base,
                pos: 0,
            });
        }
        loop {
            let Some(frame) = st.stack.last().copied() else {
                // Base chain ended: its policy.
                match policy(cx, stage, st) {
                    Some(Verdict::Accept) | None => {
                        st.stage += 1;
                        continue 'stages;
                    }
                    Some(v) => return v,
                }
            };
            let pending = st.pending.take();
            let (act, at) = match pending {
                Some(act) => (act, frame.pos),
                None => {
                    let step = match stage.kind {
                        StageKind::Ipt { dump, table } => {
                            ipt_step(cx, dump, table, frame, st, work, budget)
                        }
                        StageKind::Nft { table } => cx.rs.nft.step(
                            cx,
                            stage,
                            table,
                            frame.chain,
                            frame.pos,
                            st,
                            work,
                            budget,
                        ),
                        StageKind::Orphans { .. } => Step::End,
                    };
                    match step {
                        Step::End => {
                            st.stack.pop();
                            continue;
                        }
                        Step::Act(pos, act) => {
                            if let Some(f) = st.stack.last_mut() {
                                f.pos = pos;
                            }
                            (act, pos)
                        }
                    }
                }
            };
            match act {
                Act::Continue => {}
                Act::Accept => {
                    st.stack.clear();
                    st.stage += 1;
                    continue 'stages;
                }
                Act::Drop => return Verdict::Drop,
                Act::Reject(with) => return Verdict::Reject { with },
                Act::Queue(num) => return Verdict::Queue { num },
                Act::Unknown(reason) => return Verdict::Unknown { reason },
                Act::Return => {
                    st.stack.pop();
                }
                Act::Jump(c) | Act::Goto(c) => {
                    let goto = matches!(act, Act::Goto(_));
                    st.transfers += 1;
                    if st.transfers > limits::MAX_TRANSFERS_PER_PATH {
                        return Verdict::Unknown {
                            reason: format!(
                                "evaluation stopped at {}: more than {} jumps and gotos on one \
                                 path (limit MAX_TRANSFERS_PER_PATH; a chain loop?)",
                                where_in(cx, stage, frame.chain, at),
                                limits::MAX_TRANSFERS_PER_PATH
                            ),
                        };
                    }
                    if goto {
                        st.stack.pop();
                    }
                    if st.stack.len() >= limits::MAX_CHAIN_DEPTH {
                        return Verdict::Unknown {
                            reason: format!(
                                "evaluation stopped at {}: chains nested deeper than {} \
                                 (limit MAX_CHAIN_DEPTH; a chain loop?)",
                                where_in(cx, stage, frame.chain, at),
                                limits::MAX_CHAIN_DEPTH
                            ),
                        };
                    }
                    st.stack.push(Frame { chain: c, pos: 0 });
                }
            }
        }
    }
    Verdict::Accept
}

fn nat_manip_done(hook: Hook, nat: Option<&NatAction>) -> bool {
    match nat {
        Some(n) => match hook {
            Hook::Prerouting | Hook::Output => n.is_dnat(),
            Hook::Input | Hook::Postrouting => !n.is_dnat(),
            Hook::Forward => false,
        },
        None => false,
    }
}

/// Record the policy of the stage's base chain and return its verdict (None: accept).
fn policy(cx: &Cx, stage: Stage, st: &mut St) -> Option<Verdict> {
    match stage.kind {
        StageKind::Ipt { dump, table } => {
            let d = &cx.rs.ipt[dump as usize];
            let t = &d.tables[table as usize];
            let c = &t.chains[stage.base as usize];
            let pol = c.policy.unwrap_or(ipt::Policy::Accept);
            let unparsed = pol == ipt::Policy::Unparsed;
            st.trail.push(RuleHit {
                backend: ipt_backend(d.backend),
                family: ipt_family(d.family),
                table: t.name.clone(),
                chain: c.name_arc(),
                index: 0,
                handle: None,
                text: if c.decl.end > c.decl.start {
                    d.text_of(c.decl)
                } else {
                    Text::owned(&format!(
                        ":{} {}",
                        c.name,
                        match pol {
                            ipt::Policy::Drop => "DROP",
                            ipt::Policy::Accept => "ACCEPT",
                            ipt::Policy::Unparsed => "?",
                        }
                    ))
                },
                counters: c.counters,
                matched: Matched::Policy,
            });
            match pol {
                ipt::Policy::Accept => None,
                ipt::Policy::Drop => Some(Verdict::Drop),
                ipt::Policy::Unparsed => Some(Verdict::Unknown {
                    reason: format!(
                        "the policy of chain {}/{} could not be parsed (line {} of {}: `{}`)",
                        t.name,
                        c.name,
                        if unparsed && c.decl.end > c.decl.start {
                            d.line_of(c.decl.start)
                        } else {
                            0
                        },
                        d.source_name(),
                        d.slice(c.decl)
                    ),
                }),
            }
        }
        StageKind::Nft { table } => cx.rs.nft.policy(table, stage.base, st),
        StageKind::Orphans { .. } => None,
    }
}

pub(crate) fn ipt_backend(b: IptablesBackend) -> Backend {
    match b {
        IptablesBackend::Legacy => Backend::IptablesLegacy,
        IptablesBackend::Nft => Backend::IptablesNft,
    }
}

fn ipt_family(f: IpFamily) -> &'static str {
    match f {
        IpFamily::Ipv4 => "ip",
        IpFamily::Ipv6 => "ip6",
    }
}

/// Result of looking at the next rule of a frame.
pub(crate) enum Step {
    /// No more rules in the chain.
    End,
    /// A rule matched: continue at this position after the action.
    Act(u32, Act),
}

impl St {
    pub(crate) fn push_hit(&mut self, h: RuleHit) {
        self.trail.push(h);
    }

    /// Decide the unknown fact `u` on this path (asked first by `rule`).
    pub(crate) fn decide(&mut self, u: &Unk, rule: &str, matched: bool) {
        self.assumptions.push(Assumption {
            key: u.key.clone(),
            rule: rule.to_string(),
            what: u.what.clone(),
            matched,
        });
    }

    /// The decided value of fact `key` on this path (own or given), if any.
    pub(crate) fn decided(&self, cx: &Cx, key: &str) -> Option<bool> {
        decided(cx.given, &self.assumptions, key)
    }

    /// Decide the undecided fact `u` both ways: this state takes `mine`, the returned copy the
    /// other value; each keeps half of the probability. Err: a limit refused the fork (why).
    pub(crate) fn split_on(
        &mut self,
        u: &Unk,
        rule: &str,
        mine: bool,
        budget: &mut Budget,
    ) -> Result<St, String> {
        let mut alt = self.fork(budget)?;
        let half = self.prob * 0.5;
        alt.prob = half;
        alt.decide(u, rule, !mine);
        self.prob = half;
        self.decide(u, rule, mine);
        Ok(alt)
    }

    pub(crate) fn apply(&mut self, cx: &Cx, e: &Effect) {
        match e {
            Effect::Mark(value, mask) => self.v.mark = (self.v.mark & !mask) ^ value,
            Effect::CtMark(value, mask) => self.v.ctmark = (self.v.ctmark & !mask) ^ value,
            Effect::Connmark(op) => match *op {
                ConnmarkOp::Set { value, mask } => self.v.ctmark = (self.v.ctmark & !mask) ^ value,
                ConnmarkOp::Save { nfmask, ctmask } => {
                    self.v.ctmark = (self.v.ctmark & !ctmask) ^ (self.v.mark & nfmask);
                }
                ConnmarkOp::Restore { nfmask, ctmask } => {
                    self.v.mark = (self.v.mark & !nfmask) ^ (self.v.ctmark & ctmask);
                }
            },
            Effect::Nat(n) => {
                apply_nat(cx, &mut self.v, n);
                self.v.nat_status |= if n.is_dnat() {
                    crate::ct_status::DST_NAT
                } else {
                    crate::ct_status::SRC_NAT
                };
                self.nat = Some(n.clone());
            }
            Effect::Ct(c) => {
                self.ct.notrack |= c.notrack;
                if c.zone.is_some() {
                    self.ct.zone = c.zone;
                }
                if c.helper.is_some() {
                    self.ct.helper = c.helper.clone();
                }
            }
            Effect::Tproxy(t) => {
                if let Some((v, m)) = t.mark {
                    self.v.mark = (self.v.mark & !m) ^ v;
                }
                self.tproxy = Some(t.clone());
            }
        }
    }

    /// A copy of this state for an alternative branch (the caller sets its probability).
    /// Charges one branch and the size of the copy in rule steps; Err names the limit hit.
    pub(crate) fn fork(&self, budget: &mut Budget) -> Result<St, String> {
        if budget.branches == 0 {
            return Err(
                "more branches than EvalOptions::max_branches; the rest are not explored".into(),
            );
        }
        let cost = 1 + self.trail.len() as u64 + self.assumptions.len() as u64;
        if budget.steps < cost {
            return Err(format!(
                "more than {} rule steps in one evaluation (limit MAX_RULE_STEPS)",
                limits::MAX_RULE_STEPS
            ));
        }
        budget.branches -= 1;
        budget.steps -= cost;
        Ok(self.clone())
    }

    /// This state with an action to apply when it resumes.
    pub(crate) fn with_pending(mut self, act: Act) -> St {
        self.pending = Some(act);
        self
    }

    /// Set the resume position of the current frame.
    pub(crate) fn set_top_pos(&mut self, pos: u32) {
        if let Some(f) = self.stack.last_mut() {
            f.pos = pos;
        }
    }

    pub(crate) fn prob(&self) -> f64 {
        self.prob
    }

    pub(crate) fn set_prob(&mut self, p: f64) {
        self.prob = p;
    }
}

/// The packet as the rules see it after a NAT statement in the same hook.
fn apply_nat(cx: &Cx, v: &mut View, n: &NatAction) {
    match n {
        NatAction::Dnat { addr, ports, .. } => {
            if let Some(a) = addr {
                v.dst = a.lo;
            }
            if let (Some(p), Some(_)) = (ports, v.dport) {
                v.dport = Some(p.lo);
            }
        }
        NatAction::Redirect { ports, .. } => {
            let local = match cx.hook {
                Hook::Output => match v.dst {
                    IpAddr::V4(_) => Some(IpAddr::from([127, 0, 0, 1])),
                    IpAddr::V6(_) => Some(IpAddr::from(std::net::Ipv6Addr::LOCALHOST)),
                },
                _ => cx
                    .pkt
                    .iif
                    .as_deref()
                    .and_then(|i| primary_addr(cx.ctx, i, v.dst)),
            };
            if let Some(a) = local {
                v.dst = a;
            }
            if let (Some(p), Some(_)) = (ports, v.dport) {
                v.dport = Some(p.lo);
            }
        }
        NatAction::Snat { addr, ports, .. } => {
            if let Some(a) = addr {
                v.src = a.lo;
            }
            if let (Some(p), Some(_)) = (ports, v.sport) {
                v.sport = Some(p.lo);
            }
        }
        NatAction::Masquerade { ports, .. } => {
            if let Some(a) = cx
                .pkt
                .oif
                .as_deref()
                .and_then(|o| primary_addr(cx.ctx, o, v.dst))
            {
                v.src = a;
            }
            if let (Some(p), Some(_)) = (ports, v.sport) {
                v.sport = Some(p.lo);
            }
        }
    }
}

/// First address of the same family on `iface`.
pub(crate) fn primary_addr(ctx: &HostContext, iface: &str, like: IpAddr) -> Option<IpAddr> {
    ctx.addresses
        .iter()
        .find(|a| a.iface == iface && a.addr.is_ipv4() == like.is_ipv4())
        .map(|a| a.addr)
}

// ---------------------------------------------------------------------------------------------
// iptables

fn rule_label(table: &str, chain: &str, idx: u32) -> String {
    format!("{table}/{chain}#{idx}")
}

fn ipt_step(
    cx: &Cx,
    dump: u32,
    table: u32,
    frame: Frame,
    st: &mut St,
    work: &mut Vec<St>,
    budget: &mut Budget,
) -> Step {
    let d = &cx.rs.ipt[dump as usize];
    let t = &d.tables[table as usize];
    let c = &t.chains[frame.chain as usize];
    let set_pos = |st: &mut St, p: u32| {
        if let Some(f) = st.stack.last_mut() {
            f.pos = p;
        }
    };
    loop {
        let pos = st.stack.last().map_or(frame.pos, |f| f.pos);
        let idx = match &c.index {
            Some(ix) => match ix
                .candidates(pos, st.v.dst, cx.pkt.proto, st.v.dport)
                .next()
            {
                Some(i) => i,
                None => return Step::End,
            },
            None => {
                if pos as usize >= c.rules.len() {
                    return Step::End;
                }
                pos
            }
        };
        let r = &c.rules[idx as usize];
        let next = idx + 1;
        if !budget.step() {
            let at = rule_label(&t.name, &c.name, next);
            return Step::Act(next, Act::Unknown(Budget::steps_exhausted(&at)));
        }
        let hit = |m: Matched| RuleHit {
            backend: ipt_backend(d.backend),
            family: ipt_family(d.family),
            table: t.name.clone(),
            chain: c.name_arc(),
            index: next,
            handle: None,
            text: d.text_of(r.span),
            counters: r.counters,
            matched: m,
        };
        if let Some(e) = r.error() {
            // Nothing is known of this rule, not even its target: the packet's fate is unknown.
            st.trail.push(hit(Matched::AssumedYes));
            return Step::Act(
                next,
                Act::Unknown(format!(
                    "line {} of {} could not be parsed ({e}): `{}`",
                    r.line.0,
                    d.source_name(),
                    d.slice(r.span)
                )),
            );
        }
        let fx = Fx::new(cx.given, &st.assumptions);
        let res = ipt_rule_matches(cx, d, r, &st.v, &st.ct, &fx);
        let assumed = fx.used();
        match res {
            Tri::No => {
                if assumed {
                    st.trail.push(hit(Matched::AssumedNo));
                } else if cx.opts.record_misses {
                    st.trail.push(hit(Matched::No));
                }
                set_pos(st, next);
                continue;
            }
            Tri::Yes => {
                st.trail.push(hit(if assumed {
                    Matched::AssumedYes
                } else {
                    Matched::Yes
                }));
                return Step::Act(next, ipt_target(cx, d, t, r, st));
            }
            Tri::Maybe {
                unknown: Some(u), ..
            } => {
                if matches!(r.target, Target::None | Target::Log(_) | Target::Noop(_)) {
                    // Matching or not changes nothing but the trail: not worth deciding.
                    st.trail.push(hit(Matched::AssumedYes));
                    set_pos(st, next);
                    continue;
                }
                // Decide the fact both ways; both branches look at this rule again.
                let label = rule_label(&t.name, &c.name, next);
                match st.split_on(&u, &label, true, budget) {
                    Ok(mut alt) => {
                        if let Some(f) = alt.stack.last_mut() {
                            f.pos = idx;
                        }
                        work.push(alt);
                    }
                    Err(why) => {
                        return Step::Act(
                            next,
                            Act::Unknown(format!(
                                "evaluation stopped at {label} ({} is unknown): {why}",
                                u.what
                            )),
                        );
                    }
                }
                set_pos(st, idx);
                continue;
            }
            Tri::Maybe { p, unknown: None } => {
                // Random split (not worth a branch when the target changes nothing).
                if matches!(r.target, Target::None | Target::Log(_) | Target::Noop(_)) {
                    st.trail.push(hit(Matched::Random));
                    set_pos(st, next);
                    continue;
                }
                if p <= 0.0 {
                    if cx.opts.record_misses {
                        st.trail.push(hit(Matched::RandomNot));
                    }
                    set_pos(st, next);
                    continue;
                }
                let total = st.prob;
                match st.fork(budget) {
                    Ok(mut alt) => {
                        alt.prob = total * (1.0 - p);
                        alt.trail.push(hit(Matched::RandomNot));
                        if let Some(f) = alt.stack.last_mut() {
                            f.pos = next;
                        }
                        if alt.prob > 0.0 {
                            work.push(alt);
                        }
                    }
                    Err(why) => {
                        return Step::Act(
                            next,
                            Act::Unknown(format!(
                                "evaluation stopped at {}: {why}",
                                rule_label(&t.name, &c.name, next)
                            )),
                        );
                    }
                }
                st.prob = total * p;
                st.trail.push(hit(Matched::Random));
                return Step::Act(next, ipt_target(cx, d, t, r, st));
            }
        }
    }
}

/// Apply a matched rule's target: effects on the state, control flow returned.
fn ipt_target(cx: &Cx, d: &ipt::Dump, t: &ipt::Table, r: &ipt::Rule, st: &mut St) -> Act {
    match &r.target {
        Target::None | Target::Log(_) | Target::Noop(_) => Act::Continue,
        Target::Accept => Act::Accept,
        Target::Drop => Act::Drop,
        Target::Return => Act::Return,
        Target::Queue(n) => Act::Queue(*n),
        Target::Reject(w) => Act::Reject(w.clone()),
        Target::Jump(c) => Act::Jump(c.id),
        Target::Goto(c) => Act::Goto(c.id),
        Target::Nat(n) => {
            if &*t.name != "nat" {
                return Act::Unknown(format!("{} outside the nat table", d.slice(r.span)));
            }
            st.apply(cx, &Effect::Nat((**n).clone()));
            Act::Accept
        }
        Target::Mark { value, mask } => {
            st.apply(cx, &Effect::Mark(*value, *mask));
            Act::Continue
        }
        Target::Connmark(op) => {
            st.apply(cx, &Effect::Connmark(*op));
            Act::Continue
        }
        Target::Ct(e) => {
            st.apply(cx, &Effect::Ct((**e).clone()));
            Act::Continue
        }
        Target::Tproxy(tp) => {
            st.apply(cx, &Effect::Tproxy((**tp).clone()));
            Act::Accept
        }
        Target::Unknown(name) => Act::Unknown(format!(
            "target {} is not modelled ({}/{}: {})",
            d.str(name),
            t.name,
            "rule",
            d.slice(r.span)
        )),
    }
}

fn fmt_mac(m: &[u8; 6]) -> String {
    m.iter()
        .map(|b| format!("{b:02x}"))
        .collect::<Vec<_>>()
        .join(":")
}

fn port_in(p: Option<u16>, r: &Option<Neg<PortRange>>) -> Tri {
    match r {
        None => Tri::Yes,
        Some(Neg { v, neg: n }) => match p {
            Some(p) => Tri::from(v.contains(p) != *n),
            None => Tri::No,
        },
    }
}

/// Conntrack state bit of the packet (`state` module bits).
pub(crate) fn state_bit(pkt: &Packet, ct: &CtEffects) -> u8 {
    if ct.notrack {
        return ipt::state::UNTRACKED;
    }
    match pkt.ct.state {
        CtState::New => ipt::state::NEW,
        CtState::Established => ipt::state::ESTABLISHED,
        CtState::Related => ipt::state::RELATED,
        CtState::Invalid => ipt::state::INVALID,
        CtState::Untracked => ipt::state::UNTRACKED,
    }
}

fn has_ct(pkt: &Packet, ct: &CtEffects) -> bool {
    !ct.notrack && !matches!(pkt.ct.state, CtState::Invalid | CtState::Untracked)
}

/// addrtype of `addr` (bit of [`ipt::addrtype`]), optionally limited to `dev`'s addresses.
pub(crate) fn addr_type(ctx: &HostContext, addr: IpAddr, dev: Option<&str>) -> u16 {
    use ipt::addrtype::*;
    match addr {
        IpAddr::V4(a) => {
            if a.octets()[0] == 0 || a.is_broadcast() {
                return BROADCAST;
            }
            if a.is_multicast() {
                return MULTICAST;
            }
        }
        IpAddr::V6(a) => {
            if a.is_multicast() {
                return MULTICAST;
            }
        }
    }
    let on_dev = |iface: &str| dev.is_none_or(|d| d == iface);
    for la in &ctx.addresses {
        if !on_dev(&la.iface) {
            continue;
        }
        if la.addr == addr {
            return LOCAL;
        }
        if la.iface == "lo"
            && let Ok(net) = ipnet::IpNet::new(la.addr, la.prefix_len)
            && net.contains(&addr)
        {
            return LOCAL;
        }
        if la.broadcast == Some(addr) {
            return BROADCAST;
        }
    }
    if dev.is_none_or(|d| d == "lo") {
        match addr {
            IpAddr::V4(a) if a.is_loopback() => return LOCAL,
            IpAddr::V6(a) if a.is_loopback() => return LOCAL,
            _ => {}
        }
    }
    UNICAST
}

fn ipt_rule_matches(
    cx: &Cx,
    d: &ipt::Dump,
    r: &ipt::Rule,
    v: &View,
    ct: &CtEffects,
    fx: &Fx,
) -> Tri {
    let pkt = cx.pkt;
    if let Some(Neg { v: net, neg: n }) = &r.src
        && net.contains(&v.src) == *n
    {
        return Tri::No;
    }
    if let Some(Neg { v: net, neg: n }) = &r.dst
        && net.contains(&v.dst) == *n
    {
        return Tri::No;
    }
    if let Some(Neg { v: p, neg: n }) = r.proto {
        let m = p == 0 || p == pkt.proto;
        if m == n {
            return Tri::No;
        }
    }
    if let Some(Neg { v: i, neg: n }) = r.iif()
        && i.matches(pkt.iif.as_deref().unwrap_or("")) == *n
    {
        return Tri::No;
    }
    if let Some(Neg { v: i, neg: n }) = r.oif()
        && i.matches(pkt.oif.as_deref().unwrap_or("")) == *n
    {
        return Tri::No;
    }
    if let Some(f) = r.frag
        && f != pkt.fragment
    {
        return Tri::No;
    }
    let mut acc = Tri::Yes;
    for m in &r.matches {
        let t = ipt_match(cx, d, m, v, ct, fx);
        acc = acc.and(t);
        if acc == Tri::No {
            return Tri::No;
        }
    }
    acc
}

fn ipt_match(cx: &Cx, d: &ipt::Dump, m: &Match, v: &View, ct: &CtEffects, fx: &Fx) -> Tri {
    let pkt = cx.pkt;
    match m {
        Match::Tcp {
            sport,
            dport,
            flags,
            option,
        } => {
            if pkt.fragment || pkt.proto != 6 {
                return Tri::No;
            }
            let mut t = port_in(v.sport, sport).and(port_in(v.dport, dport));
            if let Some(Neg {
                v: (mask, comp),
                neg: n,
            }) = flags
            {
                t = t.and(Tri::from(((pkt.tcp_flags & mask) == *comp) != *n));
            }
            if let Some(Neg { v: opt, neg: n }) = option {
                t = t.and(
                    fx.fact(
                        format!("--tcp-option {opt} {}", view_key(pkt, v)),
                        "-m tcp --tcp-option (TCP options are not modelled)",
                    )
                    .neg_if(*n),
                );
            }
            t
        }
        Match::Udp { sport, dport } => {
            if pkt.fragment || !matches!(pkt.proto, 17 | 136) {
                return Tri::No;
            }
            port_in(v.sport, sport).and(port_in(v.dport, dport))
        }
        Match::Sctp {
            sport,
            dport,
            chunks,
        } => {
            if pkt.fragment || pkt.proto != 132 {
                return Tri::No;
            }
            let t = port_in(v.sport, sport).and(port_in(v.dport, dport));
            if *chunks {
                t.and(fx.fact(
                    format!("sctp --chunk-types {}", view_key(pkt, v)),
                    "-m sctp --chunk-types (chunks are not modelled)",
                ))
            } else {
                t
            }
        }
        Match::Icmp(ty) | Match::Icmp6(ty) => {
            let want = if matches!(m, Match::Icmp(_)) { 1 } else { 58 };
            if pkt.fragment || pkt.proto != want {
                return Tri::No;
            }
            match ty {
                None => Tri::Yes,
                Some(Neg { v: it, neg: n }) => match pkt.icmp {
                    Some((t, c)) => {
                        let hit =
                            it.ty == 255 || (it.ty == t && it.code_lo <= c && c <= it.code_hi);
                        Tri::from(hit != *n)
                    }
                    None => fx
                        .fact(
                            format!(
                                "icmp type {}/{}-{} {}",
                                it.ty,
                                it.code_lo,
                                it.code_hi,
                                view_key(pkt, v)
                            ),
                            "ICMP type of the packet not given",
                        )
                        .neg_if(*n),
                },
            }
        }
        Match::Multiport {
            side,
            ports,
            neg: n,
        } => {
            let any = |p: Option<u16>| p.is_some_and(|p| ports.iter().any(|r| r.contains(p)));
            let hit = match side {
                ipt::PortSide::Src => any(v.sport),
                ipt::PortSide::Dst => any(v.dport),
                ipt::PortSide::Both => any(v.sport) || any(v.dport),
            };
            if v.sport.is_none() && v.dport.is_none() {
                return Tri::No;
            }
            Tri::from(hit != *n)
        }
        Match::Mark(Neg {
            v: (val, mask),
            neg: n,
        }) => Tri::from(((v.mark & mask) == *val) != *n),
        Match::Connmark(Neg {
            v: (val, mask),
            neg: n,
        }) => Tri::from(((v.ctmark & mask) == *val) != *n),
        Match::State(Neg { v: bits, neg: n }) => {
            Tri::from(((state_bit(pkt, ct) & bits) != 0) != *n)
        }
        Match::Conntrack(c) => conntrack_match(pkt, v, ct, c, fx),
        Match::Addrtype {
            src,
            dst,
            limit_in,
            limit_out,
        } => {
            let dev = if *limit_in {
                Some(pkt.iif.as_deref().unwrap_or(""))
            } else if *limit_out {
                Some(pkt.oif.as_deref().unwrap_or(""))
            } else {
                None
            };
            let mut t = Tri::Yes;
            if let Some(Neg { v: bits, neg: n }) = src {
                t = t.and(Tri::from(
                    ((addr_type(cx.ctx, v.src, dev) & bits) != 0) != *n,
                ));
            }
            if let Some(Neg { v: bits, neg: n }) = dst {
                t = t.and(Tri::from(
                    ((addr_type(cx.ctx, v.dst, dev) & bits) != 0) != *n,
                ));
            }
            t
        }
        Match::Comment(_) | Match::Nfacct => Tri::Yes,
        Match::Statistic(Neg { v: s, neg: n }) => {
            let p = match s {
                ipt::Stat::Random(p) => *p,
                ipt::Stat::Nth { every, .. } => 1.0 / (*every as f64),
            };
            let p = if *n { 1.0 - p } else { p };
            if p >= 1.0 {
                Tri::Yes
            } else if p <= 0.0 {
                Tri::No
            } else {
                Tri::Maybe { p, unknown: None }
            }
        }
        Match::Set {
            name,
            dirs,
            neg: n,
            return_nomatch,
        } => {
            let sname = d.str(name);
            let Some(set) = cx.rs.ipsets.sets.get(&*sname) else {
                // Its type is unknown too: the fact is about every value a direction names.
                let mut vals = Vec::with_capacity(dirs.len as usize);
                for i in 0..dirs.len as usize {
                    let port = |p: Option<u16>| p.map(|p| format!(":{p}")).unwrap_or_default();
                    vals.push(if dirs.is_src(i) {
                        format!("src {}{}", v.src, port(v.sport))
                    } else {
                        format!("dst {}{}", v.dst, port(v.dport))
                    });
                }
                return fx
                    .fact(
                        format!(
                            "ipset {sname} contains [proto {} {}]",
                            pkt.proto,
                            vals.join(",")
                        ),
                        format!("ipset {sname} is not in the snapshot"),
                    )
                    .neg_if(*n);
            };
            let dims = if set.kind == "list:set" {
                dirs.len as usize
            } else {
                set.dims.len()
            };
            if (dirs.len as usize) < dims {
                return Tri::from(*n);
            }
            let mut keys: Vec<Key> = Vec::with_capacity(dims);
            let set_dims: Vec<ipset::Dim> = if set.kind == "list:set" {
                // Members decide; give addresses for every direction (most common).
                vec![ipset::Dim::Ip; dims]
            } else {
                set.dims.clone()
            };
            for (i, dim) in set_dims.iter().enumerate() {
                let src = dirs.is_src(i);
                keys.push(match dim {
                    ipset::Dim::Ip | ipset::Dim::Net => Key::Ip(if src { v.src } else { v.dst }),
                    ipset::Dim::Port => {
                        let port = if src { v.sport } else { v.dport };
                        let port = match (pkt.proto, pkt.icmp) {
                            (1 | 58, Some((t, c))) => Some(((t as u16) << 8) | c as u16),
                            _ => port,
                        };
                        Key::Port(pkt.proto, port)
                    }
                    ipset::Dim::Iface => Key::Iface(if src {
                        pkt.iif.as_deref()
                    } else {
                        pkt.oif.as_deref()
                    }),
                    ipset::Dim::Mark => Key::Mark(v.mark),
                    ipset::Dim::Mac => Key::Mac(if src {
                        pkt.src_mac.as_deref().and_then(ipt::parse_mac)
                    } else {
                        None
                    }),
                });
            }
            match cx.rs.ipsets.test(&sname, &keys, *return_nomatch) {
                Some(b) => Tri::from(b != *n),
                None => fx
                    .fact(
                        format!(
                            "ipset {sname} contains {keys:?}{}",
                            if *return_nomatch {
                                " (--return-nomatch)"
                            } else {
                                ""
                            }
                        ),
                        format!("ipset {sname} ({}) membership is not modelled", set.kind),
                    )
                    .neg_if(*n),
            }
        }
        Match::Physdev(p) => {
            let ipt::PhysdevMatch {
                phys_in,
                phys_out,
                is_in,
                is_out,
                is_bridged,
            } = &**p;
            let bridged = pkt.bridged || cx.opts.bridged;
            if !bridged {
                let positive = is_bridged == &Some(true)
                    || is_in == &Some(true)
                    || is_out == &Some(true)
                    || phys_in.is_some_and(|p| !p.neg)
                    || phys_out.is_some_and(|p| !p.neg);
                return Tri::from(!positive);
            }
            let mut ok = true;
            if let Some(b) = is_bridged {
                ok &= pkt.physdev_out.is_some() == *b;
            }
            if let Some(b) = is_in {
                ok &= pkt.physdev_in.is_some() == *b;
            }
            if let Some(b) = is_out {
                ok &= pkt.physdev_out.is_some() == *b;
            }
            if let Some(Neg { v: i, neg: n }) = phys_in {
                ok &= i.matches(pkt.physdev_in.as_deref().unwrap_or("")) != *n;
            }
            if let Some(Neg { v: i, neg: n }) = phys_out {
                ok &= i.matches(pkt.physdev_out.as_deref().unwrap_or("")) != *n;
            }
            Tri::from(ok)
        }
        Match::Iprange(b) => {
            let inr = |a: IpAddr, (lo, hi): (IpAddr, IpAddr)| {
                lo <= a && a <= hi && lo.is_ipv4() == a.is_ipv4()
            };
            let mut ok = true;
            if let Some(Neg { v: r, neg: n }) = b.0 {
                ok &= inr(v.src, r) != n;
            }
            if let Some(Neg { v: r, neg: n }) = b.1 {
                ok &= inr(v.dst, r) != n;
            }
            Tri::from(ok)
        }
        Match::Length(Neg {
            v: (lo, hi),
            neg: n,
        }) => Tri::from((*lo <= pkt.len && pkt.len <= *hi) != *n),
        Match::Ttl { op, v: val, neg: n } => {
            let hit = match op {
                ipt::Cmp::Eq => pkt.ttl == *val,
                ipt::Cmp::Lt => pkt.ttl < *val,
                ipt::Cmp::Gt => pkt.ttl > *val,
            };
            Tri::from(hit != *n)
        }
        Match::Tos(Neg {
            v: (val, mask),
            neg: n,
        }) => Tri::from(((pkt.tos & mask) == *val) != *n),
        Match::Dscp(Neg { v: val, neg: n }) => Tri::from(((pkt.tos >> 2) == *val) != *n),
        Match::Pkttype(Neg { v: t, neg: n }) => {
            let actual = match v.dst {
                IpAddr::V4(a) if a.is_multicast() => PktType::Multicast,
                IpAddr::V4(a) if a.is_broadcast() => PktType::Broadcast,
                IpAddr::V6(a) if a.is_multicast() => PktType::Multicast,
                _ => pkt.pkttype,
            };
            Tri::from((actual == *t) != *n)
        }
        Match::Mac(Neg { v: mac, neg: n }) => match pkt.src_mac.as_deref().and_then(ipt::parse_mac)
        {
            Some(m) => Tri::from((m == *mac) != *n),
            None => fx
                .fact(
                    format!("source MAC is {}", fmt_mac(mac)),
                    "source MAC of the packet not given",
                )
                .neg_if(*n),
        },
        Match::Owner {
            uid,
            gid,
            socket_exists,
        } => {
            if !matches!(cx.hook, Hook::Output | Hook::Postrouting) {
                return Tri::No;
            }
            if pkt.uid.is_none() && pkt.gid.is_none() {
                // No socket: matches only if every option is negated.
                let all_neg = uid.is_none_or(|u| u.neg)
                    && gid.is_none_or(|g| g.neg)
                    && socket_exists.is_none_or(|s| !s);
                return Tri::from(all_neg);
            }
            let mut ok = true;
            if let Some(Neg {
                v: (lo, hi),
                neg: n,
            }) = uid
            {
                ok &= pkt.uid.is_some_and(|u| *lo <= u && u <= *hi) != *n;
            }
            if let Some(Neg {
                v: (lo, hi),
                neg: n,
            }) = gid
            {
                ok &= pkt.gid.is_some_and(|g| *lo <= g && g <= *hi) != *n;
            }
            if let Some(s) = socket_exists {
                ok &= *s;
            }
            Tri::from(ok)
        }
        Match::Socket {
            transparent,
            nowildcard,
        } => {
            if pkt.ct.state == CtState::Established {
                return fx.fact(
                    format!(
                        "-m socket{}{} {}",
                        if *transparent { " --transparent" } else { "" },
                        if *nowildcard { " --nowildcard" } else { "" },
                        view_key(pkt, v)
                    ),
                    "-m socket for an established connection (sockets of connections are not \
                     collected)",
                );
            }
            let (Some(dport), true) = (v.dport, matches!(pkt.proto, 6 | 17)) else {
                return Tri::No;
            };
            let hit = cx.ctx.sockets.iter().any(|s| {
                s.proto == pkt.proto
                    && s.port == dport
                    && (s.addr == v.dst || (!nowildcard && s.addr.is_unspecified()))
                    && (!transparent || s.transparent)
            });
            Tri::from(hit)
        }
        Match::Devgroup { src, dst } => {
            let group = |dev: Option<&str>| {
                dev.and_then(|d| {
                    cx.ctx
                        .iface_groups
                        .iter()
                        .find(|(n, _)| n == d)
                        .map(|(_, g)| *g)
                })
            };
            let mut t = Tri::Yes;
            for (spec, dev, side) in [
                (src, pkt.iif.as_deref(), "--src-group"),
                (dst, pkt.oif.as_deref(), "--dst-group"),
            ] {
                if let Some(Neg {
                    v: (val, mask),
                    neg: n,
                }) = spec
                {
                    t = t.and(match group(dev) {
                        Some(g) => Tri::from(((g & mask) == *val) != *n),
                        None => fx
                            .fact(
                                format!(
                                    "devgroup {side} {val:#x}/{mask:#x} of {}",
                                    dev.unwrap_or("?")
                                ),
                                "interface group not known",
                            )
                            .neg_if(*n),
                    });
                }
            }
            t
        }
        Match::Rpfilter {
            invert,
            loose,
            validmark,
            accept_local,
        } => match (&pkt.rpf, cx.ctx.rpfilter_ok) {
            (None, Some(ok)) => Tri::from(ok != *invert),
            _ => rpfilter_match(pkt, v, fx, *invert, *loose, *validmark, *accept_local),
        },
        Match::Opaque { module, span } => fx.fact(
            format!("{} {}", d.slice(*span), view_key(pkt, v)),
            format!("-m {} is not modelled", d.str(module)),
        ),
    }
}

/// `-m rpfilter` (`rpfilter_mt`): loopback input passes; a zero source to a broadcast or
/// local-multicast destination passes; otherwise the reverse lookup must give a unicast route
/// (or, with `--accept-local`, a local one) whose next hop uses the input interface, or any
/// such route with `--loose`.
#[allow(clippy::too_many_arguments)]
fn rpfilter_match(
    pkt: &Packet,
    v: &View,
    fx: &Fx,
    invert: bool,
    loose: bool,
    validmark: bool,
    accept_local: bool,
) -> Tri {
    let unknown = |why: &str| {
        fx.fact(format!("-m rpfilter {}", view_key(pkt, v)), why.to_string())
            .neg_if(invert)
    };
    let Some(r) = &pkt.rpf else {
        return unknown("-m rpfilter (needs the routing result)");
    };
    if v.src != pkt.src || v.dst != pkt.dst {
        return unknown("-m rpfilter after NAT in the same hook is not modelled");
    }
    if r.loopback {
        return Tri::from(!invert);
    }
    if let (IpAddr::V4(s), IpAddr::V4(d)) = (pkt.src, pkt.dst)
        && s.is_unspecified()
        && (d.is_broadcast() || (d.octets()[0..3] == [224, 0, 0]))
    {
        return Tri::from(!invert);
    }
    let route = if validmark {
        match r.for_mark(v.mark) {
            Some(route) => route,
            None => {
                return unknown(&format!(
                    "-m rpfilter --validmark with mark {:#x} (policy rules select on fwmark; that lookup was not computed)",
                    v.mark
                ));
            }
        }
    } else {
        &r.unmarked
    };
    let ok = match route {
        RpfRoute::NoRoute | RpfRoute::Other { .. } => false,
        RpfRoute::Local { via_iif, .. } => accept_local && (*via_iif || loose),
        RpfRoute::Unicast { via_iif, .. } => *via_iif || loose,
    };
    Tri::from(ok != invert)
}

fn conntrack_match(pkt: &Packet, v: &View, ct: &CtEffects, c: &ipt::CtMatch, fx: &Fx) -> Tri {
    use crate::ct_status as cs;
    let mut t = Tri::Yes;
    let status = pkt.ct.status | v.nat_status;
    if let Some(Neg { v: bits, neg: n }) = c.state {
        let mut sb = state_bit(pkt, ct);
        if has_ct(pkt, ct) {
            if status & cs::SRC_NAT != 0 {
                sb |= ipt::state::SNAT;
            }
            if status & cs::DST_NAT != 0 {
                sb |= ipt::state::DNAT;
            }
        }
        t = t.and(Tri::from(((sb & bits) != 0) != n));
        if t == Tri::No {
            return t;
        }
    }
    let others = c.status.is_some()
        || c.proto.is_some()
        || c.orig_src.is_some()
        || c.orig_dst.is_some()
        || c.repl_src.is_some()
        || c.repl_dst.is_some()
        || c.orig_sport.is_some()
        || c.orig_dport.is_some()
        || c.repl_sport.is_some()
        || c.repl_dport.is_some()
        || c.dir_reply.is_some()
        || c.expire.is_some();
    if !others {
        return t;
    }
    if !has_ct(pkt, ct) {
        return Tri::No;
    }
    let orig = pkt.ct.dir == CtDir::Original;
    if let Some(Neg { v: bits, neg: n }) = c.status {
        t = t.and(Tri::from(((status & bits) != 0) != n));
    }
    if let Some(Neg { v: p, neg: n }) = c.proto {
        t = t.and(Tri::from((p == pkt.proto) != n));
    }
    let addr = |given: Option<IpAddr>, fallback: IpAddr| given.or(orig.then_some(fallback));
    let net = |spec: &Option<Neg<ipnet::IpNet>>, a: Option<IpAddr>, what: &str| match spec {
        None => Tri::Yes,
        Some(Neg { v: net, neg: n }) => match a {
            Some(a) => Tri::from(net.contains(&a) != *n),
            None => fx
                .fact(
                    format!("{what} {net} {}", view_key(pkt, v)),
                    format!("{what} of the connection not given"),
                )
                .neg_if(*n),
        },
    };
    t = t.and(net(
        &c.orig_src,
        addr(pkt.ct.orig_src, pkt.src),
        "--ctorigsrc",
    ));
    t = t.and(net(
        &c.orig_dst,
        addr(pkt.ct.orig_dst, pkt.dst),
        "--ctorigdst",
    ));
    t = t.and(net(
        &c.repl_src,
        addr(pkt.ct.reply_src, v.dst),
        "--ctreplsrc",
    ));
    t = t.and(net(
        &c.repl_dst,
        addr(pkt.ct.reply_dst, v.src),
        "--ctrepldst",
    ));
    let port = |spec: &Option<Neg<PortRange>>, p: Option<u16>, what: &str| match spec {
        None => Tri::Yes,
        Some(Neg { v: r, neg: n }) => match p {
            Some(p) => Tri::from(r.contains(p) != *n),
            None => fx
                .fact(
                    format!("{what} {}:{} {}", r.lo, r.hi, view_key(pkt, v)),
                    format!("{what} of the connection not given"),
                )
                .neg_if(*n),
        },
    };
    let o =
        |given: Option<u16>, fallback: Option<u16>| given.or(if orig { fallback } else { None });
    t = t.and(port(&c.orig_sport, o(None, pkt.sport), "--ctorigsrcport"));
    t = t.and(port(
        &c.orig_dport,
        o(pkt.ct.orig_dport, pkt.dport),
        "--ctorigdstport",
    ));
    t = t.and(port(&c.repl_sport, o(None, v.dport), "--ctreplsrcport"));
    t = t.and(port(&c.repl_dport, o(None, v.sport), "--ctrepldstport"));
    if let Some(reply) = c.dir_reply {
        t = t.and(Tri::from((pkt.ct.dir == CtDir::Reply) == reply));
    }
    if let Some(Neg {
        v: (lo, hi),
        neg: n,
    }) = c.expire
    {
        t = t.and(
            fx.fact(
                format!("--ctexpire {lo}:{hi} {}", view_key(pkt, v)),
                "--ctexpire (timeouts are not modelled)",
            )
            .neg_if(n),
        );
    }
    t
}
