//! `conntrack -D|-F` on the collected entries.

use crate::{Ctx, Out, R, unsupported};

pub fn run(_ctx: &mut Ctx<'_>, _args: &[String]) -> R<Out> {
    Err(unsupported("`conntrack` is not supported yet"))
}
