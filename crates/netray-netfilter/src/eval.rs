//! The evaluator.
use crate::*;

pub(crate) fn evaluate(
    _rs: &Ruleset,
    _hook: Hook,
    _pkt: &Packet,
    _ctx: &HostContext,
    _opts: &EvalOptions,
) -> Vec<Outcome> {
    Vec::new()
}
