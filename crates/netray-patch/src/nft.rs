//! `nft add|insert|delete rule …` on the `nft -j` JSON.

use crate::{Ctx, Out, R, unsupported};

pub fn run(_ctx: &mut Ctx<'_>, _args: &[String]) -> R<Out> {
    Err(unsupported("`nft` is not supported yet"))
}
