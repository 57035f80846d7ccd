//! `netray rules …`: one-host traces over firewall rules only (a pasted dump).
use std::net::IpAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use netray_netfilter::{
    Assumption, EvalOptions, Hook, HostContext, IpFamily, IptablesBackend, LocalAddr, Matched,
    NatAction, Outcome, Packet, Ruleset, Verdict, ct_status,
};
use netray_snapshot::{Firewall, IptablesDump};
use serde_json::json;

use super::CmdResult;
use crate::flow::{FlowArgs, PortRef, Proto, Target};

/// Subcommands of `netray rules`.
#[derive(clap::Subcommand)]
pub enum RulesCommand {
    /// Trace one packet through one host's rules (iptables-save / nft -j / ipset save dumps).
    ///
    /// A source that is one of --local enters at OUTPUT, otherwise at PREROUTING; a destination
    /// that is local (after DNAT) goes to INPUT, otherwise to FORWARD and POSTROUTING.
    Trace(TraceArgs),
}

/// Output format.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Format {
    /// Human-readable.
    Text,
    /// JSON (`outcomes[]`).
    Json,
}

/// Options of `netray rules trace`.
#[derive(clap::Args)]
pub struct TraceArgs {
    /// `iptables-save` / `ip6tables-save` output (repeatable).
    #[arg(long, value_name = "FILE")]
    pub iptables: Vec<PathBuf>,
    /// Which iptables backend wrote the --iptables files (decides which nft tables are
    /// iptables-nft's own).
    #[arg(long, value_name = "legacy|nft", default_value = "legacy")]
    pub backend: String,
    /// `nft -j list ruleset` output.
    #[arg(long, value_name = "FILE")]
    pub nft: Option<PathBuf>,
    /// `ipset save` output.
    #[arg(long, value_name = "FILE")]
    pub ipset: Option<PathBuf>,
    /// Addresses of this host (`IP` or `IP@IFACE`), repeatable or space separated.
    #[arg(long, value_name = "IP[@IFACE]", num_args = 1..)]
    pub local: Vec<String>,
    #[command(flatten)]
    pub flow: FlowArgs,
    /// Input interface of the packet.
    #[arg(long = "in", value_name = "IFACE")]
    pub iif: Option<String>,
    /// Output interface of the packet.
    #[arg(long = "out", value_name = "IFACE")]
    pub oif: Option<String>,
    /// Initial packet mark.
    #[arg(long, value_name = "MARK", default_value = "0")]
    pub mark: String,
    /// Also list rules that were evaluated and did not match.
    #[arg(long)]
    pub all_rules: bool,
    /// Output format.
    #[arg(short = 'o', long, value_enum, default_value = "text")]
    pub output: Format,
}

/// Run `netray rules …`.
pub fn run(c: RulesCommand) -> CmdResult {
    match c {
        RulesCommand::Trace(a) => trace(a),
    }
}

fn read(p: &PathBuf) -> Result<String, String> {
    std::fs::read_to_string(p).map_err(|e| format!("cannot read {}: {e}", p.display()))
}

fn addr_of(t: &Target, what: &str) -> Result<IpAddr, String> {
    match t {
        Target::Addr { ip, .. } | Target::External(ip) => Ok(*ip),
        _ => Err(format!(
            "rules trace needs an address for {what} (names need a cluster view)"
        )),
    }
}

/// One combined path through the hooks. The probabilities of all paths sum to 1: an unknown
/// fact splits its path 0.5 / 0.5 and is decided once per path, across hooks too.
struct Path {
    prob: f64,
    verdict: Verdict,
    outcomes: Vec<(Hook, Outcome)>,
}

fn trace(a: TraceArgs) -> CmdResult {
    let backend = match a.backend.as_str() {
        "legacy" => IptablesBackend::Legacy,
        "nft" => IptablesBackend::Nft,
        b => return Err(format!("--backend must be legacy or nft, not `{b}`").into()),
    };
    let src = addr_of(&a.flow.from.target, "--from")?;
    let dst = addr_of(&a.flow.to.target, "--to")?;
    if src.is_ipv4() != dst.is_ipv4() {
        return Err("--from and --to are of different address families".into());
    }
    let proto = a.flow.protocol()?;
    let dport = match &a.flow.to.port {
        Some(PortRef::Number(p)) => Some(*p),
        Some(PortRef::Name(n)) => {
            return Err(format!("named port `{n}` needs a cluster view").into());
        }
        None => None,
    };
    let family = if dst.is_ipv4() {
        IpFamily::Ipv4
    } else {
        IpFamily::Ipv6
    };
    let mut fw = Firewall::default();
    for p in &a.iptables {
        fw.iptables.push(IptablesDump {
            backend,
            family,
            text: read(p)?,
        });
    }
    fw.nft_json = a.nft.as_ref().map(read).transpose()?;
    fw.ipset = a.ipset.as_ref().map(read).transpose()?;
    if fw.iptables.is_empty() && fw.nft_json.is_none() {
        return Err("give at least one of --iptables FILE or --nft FILE".into());
    }
    let rs = Ruleset::from_firewall(&fw).map_err(|e| e.to_string())?;
    let mut ctx = HostContext::default();
    for l in a
        .local
        .iter()
        .flat_map(|s| s.split([' ', ',']))
        .filter(|s| !s.is_empty())
    {
        let (ip, iface) = l.split_once('@').unwrap_or((l, ""));
        let addr: IpAddr = ip
            .parse()
            .map_err(|_| format!("--local: `{ip}` is not an address"))?;
        ctx.addresses.push(LocalAddr {
            iface: iface.to_string(),
            addr,
            prefix_len: if addr.is_ipv4() { 32 } else { 128 },
            broadcast: None,
        });
    }
    let is_local = |ip: IpAddr| ctx.addresses.iter().any(|l| l.addr == ip) || ip.is_loopback();
    let proto_num = match (proto, dst) {
        (Proto::Icmp, IpAddr::V6(_)) => 58,
        (p, _) => p.number(),
    };
    let ports = !matches!(proto, Proto::Icmp);
    let mut pkt = Packet::new(
        src,
        dst,
        proto_num,
        ports.then(|| a.flow.source_port()),
        if ports {
            Some(dport.unwrap_or(0))
        } else {
            None
        },
    );
    if !ports {
        pkt.icmp = Some((if proto_num == 58 { 128 } else { 8 }, 0));
    }
    if let Some(s) = a.flow.size {
        pkt.len = s as u32;
    }
    pkt.mark = netray_netfilter_mark(&a.mark)?;
    let local_src = is_local(src);
    if !local_src {
        pkt.iif = a.iif.clone();
    }
    pkt.oif = a.oif.clone();
    let opts = EvalOptions {
        record_misses: a.all_rules,
        ..Default::default()
    };
    let first = if local_src {
        Hook::Output
    } else {
        Hook::Prerouting
    };
    let mut paths = Vec::new();
    walk(
        &rs,
        &ctx,
        &opts,
        first,
        pkt,
        1.0,
        Vec::new(),
        &[],
        &is_local,
        local_src,
        &mut paths,
    );

    let all_accept = paths.iter().all(|p| p.verdict == Verdict::Accept);
    match a.output {
        Format::Json => {
            let outs: Vec<_> = paths.iter().map(path_json).collect();
            let diags: Vec<_> = rs.diagnostics().iter().map(|d| json!(d)).collect();
            let v = json!({ "outcomes": outs, "diagnostics": diags });
            println!("{}", serde_json::to_string_pretty(&v)?);
        }
        Format::Text => {
            for d in rs.diagnostics() {
                eprintln!("warning: {d}");
            }
            for (i, p) in paths.iter().enumerate() {
                print_path(i + 1, p);
            }
        }
    }
    Ok(if all_accept {
        ExitCode::SUCCESS
    } else {
        ExitCode::from(1)
    })
}

fn netray_netfilter_mark(s: &str) -> Result<u32, String> {
    let r = match s.strip_prefix("0x") {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    };
    r.map_err(|_| format!("--mark: `{s}` is not a number"))
}

/// Walk the hooks from `hook`; `decided`: the unknown facts this path decided at earlier
/// hooks (followed, not decided again).
#[allow(clippy::too_many_arguments)]
fn walk(
    rs: &Ruleset,
    ctx: &HostContext,
    opts: &EvalOptions,
    hook: Hook,
    pkt: Packet,
    prob: f64,
    done: Vec<(Hook, Outcome)>,
    decided: &[Assumption],
    is_local: &dyn Fn(IpAddr) -> bool,
    local_src: bool,
    out: &mut Vec<Path>,
) {
    for o in rs.evaluate_given(hook, &pkt, ctx, opts, decided) {
        let p = prob * o.probability;
        let mut facts = decided.to_vec();
        facts.extend(o.assumptions.iter().cloned());
        let mut next_pkt = pkt.clone();
        o.apply_marks(&mut next_pkt);
        if let Some(n) = &o.nat {
            apply_nat(&mut next_pkt, n, ctx);
        }
        let verdict = o.verdict.clone();
        let mut trail = done.clone();
        trail.push((hook, o));
        if verdict != Verdict::Accept {
            out.push(Path {
                prob: p,
                verdict,
                outcomes: trail,
            });
            continue;
        }
        let dst_local = is_local(next_pkt.dst);
        let next = match (hook, local_src) {
            (Hook::Output, _) => Some(Hook::Postrouting),
            (Hook::Prerouting, _) if dst_local => Some(Hook::Input),
            (Hook::Prerouting, _) => Some(Hook::Forward),
            (Hook::Forward, _) => Some(Hook::Postrouting),
            (Hook::Postrouting, true) if dst_local => Some(Hook::Input),
            _ => None,
        };
        match next {
            Some(h) => walk(
                rs, ctx, opts, h, next_pkt, p, trail, &facts, is_local, local_src, out,
            ),
            None => out.push(Path {
                prob: p,
                verdict,
                outcomes: trail,
            }),
        }
    }
}

fn apply_nat(pkt: &mut Packet, n: &NatAction, ctx: &HostContext) {
    match n {
        NatAction::Dnat { addr, ports, .. } => {
            pkt.ct.orig_dst = Some(pkt.dst);
            pkt.ct.status |= ct_status::DST_NAT;
            if let Some(a) = addr {
                pkt.dst = a.lo;
            }
            if let (Some(p), Some(_)) = (ports, pkt.dport) {
                pkt.dport = Some(p.lo);
            }
        }
        NatAction::Redirect { ports, .. } => {
            pkt.ct.orig_dst = Some(pkt.dst);
            pkt.ct.status |= ct_status::DST_NAT;
            if let Some(l) = ctx
                .addresses
                .iter()
                .find(|l| l.addr.is_ipv4() == pkt.dst.is_ipv4())
            {
                pkt.dst = l.addr;
            }
            if let (Some(p), Some(_)) = (ports, pkt.dport) {
                pkt.dport = Some(p.lo);
            }
        }
        NatAction::Snat { addr, .. } => {
            pkt.ct.status |= ct_status::SRC_NAT;
            if let Some(a) = addr {
                pkt.src = a.lo;
            }
        }
        NatAction::Masquerade { .. } => pkt.ct.status |= ct_status::SRC_NAT,
    }
}

fn dnat_str(o: &[(Hook, Outcome)]) -> Option<String> {
    o.iter().find_map(|(_, o)| match &o.nat {
        Some(NatAction::Dnat { addr, ports, .. }) => {
            Some(fmt_addr_port(addr.map(|a| a.lo), ports.map(|p| p.lo)))
        }
        Some(NatAction::Redirect { ports, .. }) => Some(format!(
            "redirect{}",
            ports.map(|p| format!(":{}", p.lo)).unwrap_or_default()
        )),
        _ => None,
    })
}

fn fmt_addr_port(a: Option<IpAddr>, p: Option<u16>) -> String {
    match (a, p) {
        (Some(IpAddr::V6(a)), Some(p)) => format!("[{a}]:{p}"),
        (Some(a), Some(p)) => format!("{a}:{p}"),
        (Some(a), None) => a.to_string(),
        (None, Some(p)) => format!(":{p}"),
        (None, None) => String::new(),
    }
}

fn snat_str(o: &[(Hook, Outcome)]) -> Option<String> {
    o.iter().find_map(|(_, o)| match &o.nat {
        Some(NatAction::Snat { addr, ports, .. }) => {
            Some(fmt_addr_port(addr.map(|a| a.lo), ports.map(|p| p.lo)))
        }
        Some(NatAction::Masquerade { .. }) => Some("masquerade".to_string()),
        _ => None,
    })
}

fn hook_name(h: Hook) -> &'static str {
    h.chain_name()
}

fn path_json(p: &Path) -> serde_json::Value {
    let mut rules = Vec::new();
    let mut assumptions = Vec::new();
    for (h, o) in &p.outcomes {
        for r in &o.trail {
            rules.push(json!({
                "hook": hook_name(*h),
                "backend": r.backend,
                "family": r.family,
                "table": &*r.table,
                "chain": &*r.chain,
                "index": r.index,
                "handle": r.handle,
                "text": r.text.as_str(),
                "counters": r.counters.map(|(p, b)| json!({"packets": p, "bytes": b})),
                "matched": r.matched,
            }));
        }
        assumptions.extend(o.assumptions.iter().map(|a| json!(a)));
    }
    let last = p.outcomes.last().map(|(_, o)| o);
    json!({
        "probability": p.prob,
        "verdict": p.verdict.name(),
        "reject_with": match &p.verdict { Verdict::Reject { with } => Some(json!(with)), _ => None },
        "reason": match &p.verdict { Verdict::Unknown { reason } => Some(reason.clone()), _ => None },
        "hooks": p.outcomes.iter().map(|(h, _)| hook_name(*h)).collect::<Vec<_>>(),
        "dnat": dnat_str(&p.outcomes),
        "snat": snat_str(&p.outcomes),
        "mark": last.map(|o| o.mark),
        "ct_mark": last.map(|o| o.ct_mark),
        "rules": rules,
        "assumptions": assumptions,
    })
}

fn print_path(n: usize, p: &Path) {
    let verdict = match &p.verdict {
        Verdict::Reject { with } => format!("reject ({with:?})"),
        Verdict::Unknown { reason } => format!("unknown: {reason}"),
        v => v.name().to_string(),
    };
    println!("outcome {n}: {verdict}  (probability {:.4})", p.prob);
    if let Some(d) = dnat_str(&p.outcomes) {
        println!("  dnat → {d}");
    }
    if let Some(s) = snat_str(&p.outcomes) {
        println!("  snat → {s}");
    }
    for (h, o) in &p.outcomes {
        println!("  {}:", hook_name(*h));
        for r in &o.trail {
            let m = match r.matched {
                Matched::Yes => "match",
                Matched::No => "no",
                Matched::Random => "random: taken",
                Matched::RandomNot => "random: not taken",
                Matched::AssumedYes => "unknown: assumed match",
                Matched::AssumedNo => "unknown: assumed no match",
                Matched::Policy => "policy",
            };
            if r.index == 0 {
                println!("    {}/{} policy  {}", r.table, r.chain, r.text);
            } else {
                println!("    {}/{}#{} [{m}]  {}", r.table, r.chain, r.index, r.text);
            }
        }
        for a in &o.assumptions {
            println!(
                "    assumes {} {} (decided at {}: {})",
                a.key,
                if a.matched { "holds" } else { "does not hold" },
                a.rule,
                a.what
            );
        }
    }
}
