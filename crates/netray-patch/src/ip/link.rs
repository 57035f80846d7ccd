//! `ip link set DEV up|down|mtu N|address MAC`.

use crate::{Ctx, Out, R, unsupported};

pub fn run(_ctx: &mut Ctx<'_>, _args: &[String]) -> R<Out> {
    Err(unsupported("`ip link` is not supported yet"))
}
