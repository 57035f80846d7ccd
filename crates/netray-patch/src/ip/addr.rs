//! `ip addr add|del A/N dev DEV`.

use crate::util::Fam;
use crate::{Ctx, Out, R, unsupported};

pub fn run(_ctx: &mut Ctx<'_>, _fam: Fam, _args: &[String]) -> R<Out> {
    Err(unsupported("`ip addr` is not supported yet"))
}
