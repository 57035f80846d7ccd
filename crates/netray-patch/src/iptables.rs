//! `iptables` / `ip6tables` (and their `-legacy` / `-nft` variants) on the verbatim
//! `iptables-save -c` text of the namespace.
//!
//! Rule specs are normalised as `iptables-save` prints them (`-s A/32`, the implicit
//! `-m tcp`, states in kernel order, `--set-xmark`, quoting) for a documented subset of
//! matches and targets; anything else is an error naming the option. `-D CHAIN spec` finds
//! the rule by that normal form, or by the exact words of a saved line.

use netray_snapshot::{IpFamily, IptablesBackend, IptablesDump};

use crate::shell;
use crate::{Ctx, ObjectKind, Out, R, exists, invalid, not_found, unsupported};

#[derive(Debug, Clone, PartialEq, Eq)]
enum Op {
    Policy(String, String),
    New(String),
    DeleteChain(String),
    Flush(Option<String>),
    Append(String),
    Insert(String, usize),
    DeleteSpec(String),
    DeleteNum(String, usize),
    Replace(String, usize),
}

fn builtins(table: &str) -> &'static [&'static str] {
    match table {
        "filter" => &["INPUT", "FORWARD", "OUTPUT"],
        "nat" => &["PREROUTING", "INPUT", "OUTPUT", "POSTROUTING"],
        "mangle" => &["PREROUTING", "INPUT", "FORWARD", "OUTPUT", "POSTROUTING"],
        "raw" => &["PREROUTING", "OUTPUT"],
        "security" => &["INPUT", "FORWARD", "OUTPUT"],
        _ => &[],
    }
}

fn backend_name(b: IptablesBackend) -> &'static str {
    match b {
        IptablesBackend::Legacy => "iptables-legacy",
        IptablesBackend::Nft => "iptables-nft",
    }
}

fn family_name(f: IpFamily) -> &'static str {
    match f {
        IpFamily::Ipv4 => "ipv4",
        IpFamily::Ipv6 => "ipv6",
    }
}

pub fn run(ctx: &mut Ctx<'_>, prog: &str, args: &[String]) -> R<Out> {
    let family = if prog.starts_with("ip6") {
        IpFamily::Ipv6
    } else {
        IpFamily::Ipv4
    };
    let explicit = if prog.ends_with("-legacy") {
        Some(IptablesBackend::Legacy)
    } else if prog.ends_with("-nft") {
        Some(IptablesBackend::Nft)
    } else {
        None
    };
    let mut table = "filter".to_string();
    let mut op: Option<Op> = None;
    let mut spec: Vec<String> = Vec::new();
    let mut i = 0;
    let num = |s: &str| s.parse::<usize>().ok().filter(|&n| n >= 1);
    let set_op = |op: &mut Option<Op>, new: Op| -> R<()> {
        if op.is_some() {
            return Err(invalid(
                "iptables: only one command (-A, -I, -D, -R, -P, -N, -X, -F) per invocation",
            ));
        }
        *op = Some(new);
        Ok(())
    };
    let chain_arg = |i: usize, opt: &str| -> R<String> {
        args.get(i + 1)
            .filter(|c| !c.starts_with('-') || c.len() == 1)
            .cloned()
            .ok_or_else(|| invalid(format!("iptables: option `{opt}` requires a chain name")))
    };
    while i < args.len() {
        let w = args[i].as_str();
        match w {
            "-t" | "--table" => {
                table = args
                    .get(i + 1)
                    .cloned()
                    .ok_or_else(|| invalid("iptables: option `-t` requires a table name"))?;
                if builtins(&table).is_empty() {
                    return Err(invalid(format!(
                        "iptables: can't initialize table `{table}`: Table does not exist"
                    )));
                }
                i += 2;
            }
            "-w" | "--wait" | "-W" | "--wait-interval" => {
                i += 1;
                if args.get(i).is_some_and(|a| a.parse::<f64>().is_ok()) {
                    i += 1;
                }
            }
            "-v" | "--verbose" | "-n" | "--numeric" | "-x" | "--exact" | "--line-numbers" => i += 1,
            "-P" | "--policy" => {
                let c = chain_arg(i, w)?;
                let p = args
                    .get(i + 2)
                    .cloned()
                    .ok_or_else(|| invalid("iptables: -P requires a chain and a policy"))?;
                set_op(&mut op, Op::Policy(c, p))?;
                i += 3;
            }
            "-N" | "--new-chain" | "--new" => {
                set_op(&mut op, Op::New(chain_arg(i, w)?))?;
                i += 2;
            }
            "-X" | "--delete-chain" => {
                set_op(&mut op, Op::DeleteChain(chain_arg(i, w)?))?;
                i += 2;
            }
            "-F" | "--flush" => match args.get(i + 1).filter(|c| !c.starts_with('-')) {
                Some(c) => {
                    set_op(&mut op, Op::Flush(Some(c.clone())))?;
                    i += 2;
                }
                None => {
                    set_op(&mut op, Op::Flush(None))?;
                    i += 1;
                }
            },
            "-A" | "--append" => {
                set_op(&mut op, Op::Append(chain_arg(i, w)?))?;
                i += 2;
            }
            "-I" | "--insert" => {
                let c = chain_arg(i, w)?;
                match args.get(i + 2).and_then(|n| num(n)) {
                    Some(n) => {
                        set_op(&mut op, Op::Insert(c, n))?;
                        i += 3;
                    }
                    None => {
                        set_op(&mut op, Op::Insert(c, 1))?;
                        i += 2;
                    }
                }
            }
            "-D" | "--delete" => {
                let c = chain_arg(i, w)?;
                match args.get(i + 2).and_then(|n| num(n)) {
                    Some(n) => {
                        set_op(&mut op, Op::DeleteNum(c, n))?;
                        i += 3;
                    }
                    None => {
                        set_op(&mut op, Op::DeleteSpec(c))?;
                        i += 2;
                    }
                }
            }
            "-R" | "--replace" => {
                let c = chain_arg(i, w)?;
                let n = args
                    .get(i + 2)
                    .and_then(|n| num(n))
                    .ok_or_else(|| invalid("iptables: -R requires a chain and a rule number"))?;
                set_op(&mut op, Op::Replace(c, n))?;
                i += 3;
            }
            "-L" | "--list" | "-S" | "--list-rules" | "-C" | "--check" => {
                return Err(invalid(format!("iptables {w} only reads, changes nothing")));
            }
            "-Z" | "--zero" | "-E" | "--rename-chain" => {
                return Err(unsupported(format!("iptables {w} is not supported")));
            }
            _ => {
                spec.push(w.to_string());
                i += 1;
            }
        }
    }
    let Some(op) = op else {
        return Err(invalid(
            "iptables: no command given (-A, -I, -D, -R, -P, -N, -X, -F)",
        ));
    };
    let takes_spec = matches!(
        op,
        Op::Append(_) | Op::Insert(..) | Op::DeleteSpec(_) | Op::Replace(..)
    );
    if !takes_spec && !spec.is_empty() {
        return Err(unsupported(format!(
            "iptables: unexpected `{}` for this command",
            spec.join(" ")
        )));
    }
    let mut out = Out::default();
    let ns = ctx.ns();
    let dumps = &mut ns.firewall.iptables;
    let pick = match explicit {
        Some(b) => dumps
            .iter()
            .position(|d| d.backend == b && d.family == family),
        None => dumps
            .iter()
            .position(|d| d.backend == IptablesBackend::Nft && d.family == family)
            .or_else(|| {
                dumps
                    .iter()
                    .position(|d| d.backend == IptablesBackend::Legacy && d.family == family)
            }),
    };
    let di = match pick {
        Some(i) => i,
        None => {
            let backend = explicit
                .or_else(|| dumps.iter().map(|d| d.backend).next())
                .unwrap_or(IptablesBackend::Nft);
            out.notes.push(format!(
                "the namespace had no {} {} rules: starting an empty ruleset",
                backend_name(backend),
                family_name(family)
            ));
            dumps.push(IptablesDump {
                backend,
                family,
                text: String::new(),
            });
            dumps.len() - 1
        }
    };
    let others: Vec<String> = dumps
        .iter()
        .enumerate()
        .filter(|(i, d)| *i != di && d.family == family)
        .map(|(_, d)| backend_name(d.backend).to_string())
        .collect();
    let dump = &mut dumps[di];
    let label = format!("{} {}", backend_name(dump.backend), family_name(family));
    out.notes.push(format!(
        "edited the {label} ruleset{}",
        if others.is_empty() {
            String::new()
        } else {
            format!(
                " ({} also holds rules; name it as the program to edit it instead)",
                others.join(", ")
            )
        }
    ));
    let mut doc = Doc::parse(&dump.text);
    let created = doc.ensure_table(&table);
    if created {
        out.notes
            .push(format!("created table `{table}` in the {label} ruleset"));
    }
    let ipv6 = family == IpFamily::Ipv6;
    edit(&mut doc, &table, &label, op, &spec, ipv6, &mut out)?;
    dump.text = doc.render(&dump.text);
    Ok(out)
}

/// The dump as lines, with the table blocks located.
struct Doc {
    lines: Vec<String>,
    trailing_newline: bool,
}

/// A parsed rule line.
struct RuleLine {
    idx: usize,
    chain: String,
    /// The text after the counters (`-A CHAIN …`).
    text: String,
}

impl Doc {
    fn parse(text: &str) -> Doc {
        Doc {
            lines: text.lines().map(str::to_string).collect(),
            trailing_newline: text.is_empty() || text.ends_with('\n'),
        }
    }

    fn render(&self, _orig: &str) -> String {
        let mut s = self.lines.join("\n");
        if self.trailing_newline && !s.is_empty() {
            s.push('\n');
        }
        s
    }

    /// `(start, commit)` line indices of `*table` … `COMMIT`.
    fn table(&self, table: &str) -> Option<(usize, usize)> {
        let start = self
            .lines
            .iter()
            .position(|l| l.trim_end() == format!("*{table}"))?;
        let commit = self.lines[start..]
            .iter()
            .position(|l| l.trim_end() == "COMMIT")
            .map(|i| i + start)
            .unwrap_or(self.lines.len());
        Some((start, commit))
    }

    fn ensure_table(&mut self, table: &str) -> bool {
        if self.table(table).is_some() {
            return false;
        }
        self.lines.push(format!("*{table}"));
        for c in builtins(table) {
            self.lines.push(format!(":{c} ACCEPT [0:0]"));
        }
        self.lines.push("COMMIT".to_string());
        true
    }

    /// Chain declarations: `(line, name, policy)`.
    fn chains(&self, table: &str) -> Vec<(usize, String, String)> {
        let (s, e) = self.table(table).unwrap();
        (s + 1..e)
            .filter_map(|i| {
                let l = self.lines[i].strip_prefix(':')?;
                let mut w = l.split_whitespace();
                Some((
                    i,
                    w.next()?.to_string(),
                    w.next().unwrap_or("-").to_string(),
                ))
            })
            .collect()
    }

    fn rules(&self, table: &str) -> Vec<RuleLine> {
        let (s, e) = self.table(table).unwrap();
        (s + 1..e)
            .filter_map(|i| {
                let l = self.lines[i].trim_end();
                let text = match l.strip_prefix('[') {
                    Some(rest) => rest.split_once("] ")?.1,
                    None => l,
                };
                let rest = text.strip_prefix("-A ")?;
                let chain = rest.split_whitespace().next()?.to_string();
                Some(RuleLine {
                    idx: i,
                    chain,
                    text: text.to_string(),
                })
            })
            .collect()
    }

    /// Line index where a rule appended to `chain` goes.
    fn append_at(&self, table: &str, chain: &str) -> usize {
        let rules = self.rules(table);
        if let Some(last) = rules.iter().rfind(|r| r.chain == chain) {
            return last.idx + 1;
        }
        // Empty chain: after the rules of the chains declared before it.
        let order: Vec<String> = self.chains(table).into_iter().map(|c| c.1).collect();
        let me = order.iter().position(|c| c == chain).unwrap_or(order.len());
        let before: Vec<&String> = order[..me].iter().collect();
        if let Some(r) = rules.iter().rfind(|r| before.contains(&&r.chain)) {
            return r.idx + 1;
        }
        if let Some(r) = rules.first() {
            return r.idx;
        }
        let decls = self.chains(table);
        match decls.last() {
            Some(d) => d.0 + 1,
            None => self.table(table).unwrap().0 + 1,
        }
    }
}

fn counters_of(line: &str) -> &str {
    if line.starts_with('[') {
        line.split_once("] ")
            .map(|(c, _)| &line[..c.len() + 1])
            .unwrap_or("[0:0]")
    } else {
        ""
    }
}

fn edit(
    doc: &mut Doc,
    table: &str,
    label: &str,
    op: Op,
    spec: &[String],
    ipv6: bool,
    out: &mut Out,
) -> R<()> {
    let chains = doc.chains(table);
    let chain_names: Vec<String> = chains.iter().map(|c| c.1.clone()).collect();
    let need_chain = |c: &str| -> R<()> {
        if chain_names.iter().any(|n| n == c) {
            Ok(())
        } else {
            Err(not_found(format!(
                "iptables: No chain/target/match by that name (no chain `{c}` in table `{table}` of the {label} ruleset)"
            )))
        }
    };
    let id = |c: &str| format!("{label} {table} {c}");
    if let Op::Append(c) | Op::Insert(c, _) | Op::Replace(c, _) | Op::DeleteSpec(c) = &op {
        need_chain(c)?;
    }
    match op {
        Op::Policy(c, p) => {
            let Some((li, _, old)) = chains.iter().find(|x| x.1 == c) else {
                return Err(not_found(format!(
                    "iptables: Bad built-in chain name (no chain `{c}` in table `{table}`)"
                )));
            };
            if old == "-" {
                return Err(invalid(format!(
                    "iptables: Bad built-in chain name (`{c}` is a user chain; only built-in chains have a policy)"
                )));
            }
            if p != "ACCEPT" && p != "DROP" {
                return Err(invalid(format!(
                    "iptables: Bad policy name `{p}` (ACCEPT or DROP)"
                )));
            }
            let line = doc.lines[*li].clone();
            let counters = line.split_whitespace().nth(2).unwrap_or("[0:0]");
            let new = format!(":{c} {p} {counters}");
            if *old != p {
                out.change(
                    ObjectKind::IptablesPolicy,
                    id(&c),
                    Some(old.clone()),
                    Some(p.clone()),
                );
                doc.lines[*li] = new;
            }
        }
        Op::New(c) => {
            if chain_names.contains(&c) {
                return Err(exists(format!("iptables: Chain already exists (`{c}`)")));
            }
            if c.len() > 28 || c.is_empty() || c.starts_with('-') || c.starts_with('!') {
                return Err(invalid(format!("iptables: Invalid chain name `{c}`")));
            }
            let at = chains
                .last()
                .map(|x| x.0 + 1)
                .unwrap_or_else(|| doc.table(table).unwrap().0 + 1);
            doc.lines.insert(at, format!(":{c} - [0:0]"));
            out.change(
                ObjectKind::IptablesChain,
                id(&c),
                None,
                Some(format!(":{c} - [0:0]")),
            );
        }
        Op::DeleteChain(c) => {
            need_chain(&c)?;
            let (li, _, pol) = chains.iter().find(|x| x.1 == c).unwrap();
            if pol != "-" {
                return Err(invalid(format!(
                    "iptables: Can't delete chain with references left (`{c}` is built-in)"
                )));
            }
            let rules = doc.rules(table);
            if rules.iter().any(|r| r.chain == c) {
                return Err(invalid(format!(
                    "iptables: Directory not empty (chain `{c}` has rules; flush it first)"
                )));
            }
            if rules.iter().any(|r| {
                let w = shell::split(&r.text).unwrap_or_default();
                w.windows(2)
                    .any(|p| (p[0] == "-j" || p[0] == "-g") && p[1] == c)
            }) {
                return Err(invalid(format!(
                    "iptables: Too many links (chain `{c}` is referenced by a rule)"
                )));
            }
            let old = doc.lines.remove(*li);
            out.change(ObjectKind::IptablesChain, id(&c), Some(old), None);
        }
        Op::Flush(c) => {
            if let Some(c) = &c {
                need_chain(c)?;
            }
            let victims: Vec<usize> = doc
                .rules(table)
                .into_iter()
                .filter(|r| c.as_ref().is_none_or(|c| &r.chain == c))
                .map(|r| r.idx)
                .collect();
            for &i in victims.iter().rev() {
                let old = doc.lines.remove(i);
                out.change(
                    ObjectKind::IptablesRule,
                    id(&rule_chain(&old)),
                    Some(strip_counters(&old)),
                    None,
                );
            }
            out.changes.reverse();
        }
        Op::Append(c) => {
            let (text, counters) = canon(&c, spec, ipv6, table, &chain_names)?;
            let at = doc.append_at(table, &c);
            out.change(ObjectKind::IptablesRule, id(&c), None, Some(text.clone()));
            doc.lines.insert(at, format!("{counters} {text}"));
        }
        Op::Insert(c, n) => {
            let (text, counters) = canon(&c, spec, ipv6, table, &chain_names)?;
            let rules: Vec<RuleLine> = doc
                .rules(table)
                .into_iter()
                .filter(|r| r.chain == c)
                .collect();
            let at = if n == rules.len() + 1 || rules.is_empty() && n == 1 {
                doc.append_at(table, &c)
            } else if let Some(r) = rules.get(n - 1) {
                r.idx
            } else {
                return Err(invalid(format!(
                    "iptables: Index of insertion too big (chain `{c}` has {} rules)",
                    rules.len()
                )));
            };
            out.change(
                ObjectKind::IptablesRule,
                format!("{} #{n}", id(&c)),
                None,
                Some(text.clone()),
            );
            doc.lines.insert(at, format!("{counters} {text}"));
        }
        Op::Replace(c, n) => {
            let (text, counters) = canon(&c, spec, ipv6, table, &chain_names)?;
            let rules: Vec<RuleLine> = doc
                .rules(table)
                .into_iter()
                .filter(|r| r.chain == c)
                .collect();
            let Some(r) = rules.get(n - 1) else {
                return Err(not_found(format!(
                    "iptables: Index of replacement too big (chain `{c}` has {} rules)",
                    rules.len()
                )));
            };
            out.change(
                ObjectKind::IptablesRule,
                format!("{} #{n}", id(&c)),
                Some(r.text.clone()),
                Some(text.clone()),
            );
            doc.lines[r.idx] = format!("{counters} {text}");
        }
        Op::DeleteNum(c, n) => {
            need_chain(&c)?;
            let rules: Vec<RuleLine> = doc
                .rules(table)
                .into_iter()
                .filter(|r| r.chain == c)
                .collect();
            let Some(r) = rules.get(n - 1) else {
                return Err(not_found(format!(
                    "iptables: Index of deletion too big (chain `{c}` has {} rules)",
                    rules.len()
                )));
            };
            out.change(
                ObjectKind::IptablesRule,
                format!("{} #{n}", id(&c)),
                Some(r.text.clone()),
                None,
            );
            doc.lines.remove(r.idx);
        }
        Op::DeleteSpec(c) => {
            let rules: Vec<RuleLine> = doc
                .rules(table)
                .into_iter()
                .filter(|r| r.chain == c)
                .collect();
            // Exact words of a saved line first, then the normal form.
            let mut want = vec!["-A".to_string(), c.clone()];
            want.extend(spec.iter().cloned());
            let mut found = rules
                .iter()
                .position(|r| shell::split(&r.text).ok().as_ref() == Some(&want));
            let mut canon_err = None;
            if found.is_none() {
                match canon(&c, spec, ipv6, table, &chain_names) {
                    Ok((text, _)) => {
                        let tw = shell::split(&text).ok();
                        found = rules.iter().position(|r| {
                            r.text == text || (tw.is_some() && shell::split(&r.text).ok() == tw)
                        });
                    }
                    Err(e) => canon_err = Some(e),
                }
            }
            let Some(k) = found else {
                if let Some(e) = canon_err {
                    return Err(e);
                }
                return Err(not_found(format!(
                    "iptables: Bad rule (does a matching rule exist in that chain?) — no rule `-A {c} {}` in table `{table}` of the {label} ruleset",
                    spec.iter()
                        .map(|w| shell::quote(w))
                        .collect::<Vec<_>>()
                        .join(" ")
                )));
            };
            let r = &rules[k];
            out.change(
                ObjectKind::IptablesRule,
                format!("{} #{}", id(&c), k + 1),
                Some(r.text.clone()),
                None,
            );
            doc.lines.remove(r.idx);
        }
    }
    Ok(())
}

fn strip_counters(l: &str) -> String {
    let c = counters_of(l);
    l[c.len()..].trim_start().to_string()
}

fn rule_chain(l: &str) -> String {
    strip_counters(l)
        .split_whitespace()
        .nth(1)
        .unwrap_or("")
        .to_string()
}

/// `xtables_save_string`: bare when only `[A-Za-z0-9_-]`, else double-quoted with `"`, `\`
/// and `'` escaped.
fn save_string(v: &str) -> String {
    if !v.is_empty()
        && v.chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-')
    {
        v.to_string()
    } else {
        let mut s = String::from("\"");
        for c in v.chars() {
            if matches!(c, '"' | '\\' | '\'') {
                s.push('\\');
            }
            s.push(c);
        }
        s.push('"');
        s
    }
}

fn proto_name(p: &str, ipv6: bool) -> R<Option<String>> {
    let p = p.to_ascii_lowercase();
    Ok(Some(
        match p.as_str() {
            "all" | "0" => return Ok(None),
            "tcp" | "6" => "tcp",
            "udp" | "17" => "udp",
            "icmp" | "1" => "icmp",
            "ipv6-icmp" | "icmpv6" | "58" => "ipv6-icmp",
            "sctp" | "132" => "sctp",
            "udplite" | "136" => "udplite",
            "gre" | "47" => "gre",
            "esp" | "50" => "esp",
            "ah" | "51" => "ah",
            "ipip" | "4" => "ipip",
            "ospf" | "89" => "ospf",
            other => {
                return Err(unsupported(format!(
                    "{}: protocol `{other}` is not supported",
                    if ipv6 { "ip6tables" } else { "iptables" }
                )));
            }
        }
        .to_string(),
    ))
}

fn addr_canon(v: &str, ipv6: bool, opt: &str) -> R<String> {
    if v.contains(',') {
        return Err(unsupported(format!(
            "iptables {opt} `{v}`: several addresses (one rule each) are not supported; give one"
        )));
    }
    let fam = if ipv6 {
        crate::util::Fam::V6
    } else {
        crate::util::Fam::V4
    };
    let n = crate::util::prefix_trunc(v, fam, opt)?;
    Ok(n.to_string())
}

fn hex(v: &str, opt: &str) -> R<u32> {
    crate::util::u32_c(v, opt)
}

fn mark_canon(v: &str) -> R<String> {
    Ok(match v.split_once('/') {
        Some((a, m)) => format!("{:#x}/{:#x}", hex(a, "--mark")?, hex(m, "--mark")?),
        None => format!("{:#x}", hex(v, "--mark")?),
    })
}

fn states_canon(v: &str) -> R<String> {
    const ORDER: &[&str] = &[
        "INVALID",
        "NEW",
        "RELATED",
        "ESTABLISHED",
        "UNTRACKED",
        "SNAT",
        "DNAT",
    ];
    let given: Vec<String> = v
        .split(',')
        .map(|s| s.trim().to_ascii_uppercase())
        .collect();
    for g in &given {
        if !ORDER.contains(&g.as_str()) {
            return Err(invalid(format!("iptables: bad ctstate `{g}`")));
        }
    }
    Ok(ORDER
        .iter()
        .filter(|s| given.iter().any(|g| g == *s))
        .copied()
        .collect::<Vec<_>>()
        .join(","))
}

fn port_canon(v: &str) -> R<String> {
    let ok = |p: &str| p.is_empty() || p.parse::<u16>().is_ok();
    let parts: Vec<&str> = v.split(':').collect();
    if parts.len() > 2 || !parts.iter().all(|p| ok(p)) || v.is_empty() {
        return Err(unsupported(format!(
            "iptables: port `{v}` (numbers and `A:B` ranges only; service names are not resolved)"
        )));
    }
    Ok(v.to_string())
}

fn ports_canon(v: &str) -> R<String> {
    for p in v.split(',') {
        port_canon(p)?;
    }
    Ok(v.to_string())
}

/// Option arity and value normaliser of the supported matches.
type Norm = fn(&[&str]) -> R<String>;

/// A target: goto (else jump), name, options with their values.
type Target = (bool, String, Vec<(String, Vec<String>)>);

fn match_opt(module: &str, opt: &str) -> Option<(usize, Norm)> {
    let verbatim: fn(&[&str]) -> R<String> = |v| Ok(v.join(" "));
    let port: fn(&[&str]) -> R<String> = |v| port_canon(v[0]);
    let ports: fn(&[&str]) -> R<String> = |v| ports_canon(v[0]);
    let states: fn(&[&str]) -> R<String> = |v| states_canon(v[0]);
    let mark: fn(&[&str]) -> R<String> = |v| mark_canon(v[0]);
    let string: fn(&[&str]) -> R<String> = |v| Ok(save_string(v[0]));
    let upper: fn(&[&str]) -> R<String> = |v| Ok(v[0].to_ascii_uppercase());
    let prob: fn(&[&str]) -> R<String> = |v| {
        let p: f64 = v[0]
            .parse()
            .map_err(|_| invalid(format!("--probability `{}` is not a number", v[0])))?;
        Ok(format!("{p:.11}"))
    };
    Some(match (module, opt) {
        ("tcp" | "udp" | "sctp" | "udplite", "--sport" | "--source-port") => (1, port),
        ("tcp" | "udp" | "sctp" | "udplite", "--dport" | "--destination-port") => (1, port),
        ("tcp", "--tcp-flags") => (2, verbatim),
        ("tcp", "--syn") => (0, verbatim),
        ("icmp", "--icmp-type") => (1, verbatim),
        ("icmp6", "--icmpv6-type") => (1, verbatim),
        (
            "multiport",
            "--dports" | "--destination-ports" | "--sports" | "--source-ports" | "--ports",
        ) => (1, ports),
        ("conntrack", "--ctstate") | ("state", "--state") => (1, states),
        ("conntrack", "--ctstatus" | "--ctdir" | "--ctproto") => (1, upper),
        ("conntrack", "--ctorigsrc" | "--ctorigdst" | "--ctreplsrc" | "--ctrepldst") => {
            (1, verbatim)
        }
        (
            "conntrack",
            "--ctorigsrcport" | "--ctorigdstport" | "--ctreplsrcport" | "--ctrepldstport",
        ) => (1, verbatim),
        ("comment", "--comment") => (1, string),
        ("mark" | "connmark", "--mark") => (1, mark),
        ("addrtype", "--src-type" | "--dst-type") => (1, upper),
        ("addrtype", "--limit-iface-in" | "--limit-iface-out") => (0, verbatim),
        ("physdev", "--physdev-in" | "--physdev-out") => (1, verbatim),
        ("physdev", "--physdev-is-in" | "--physdev-is-out" | "--physdev-is-bridged") => {
            (0, verbatim)
        }
        ("set", "--match-set") => (2, verbatim),
        ("set", "--return-nomatch") => (0, verbatim),
        ("statistic", "--mode" | "--every" | "--packet") => (1, verbatim),
        ("statistic", "--probability") => (1, prob),
        ("mac", "--mac-source") => (1, upper),
        ("iprange", "--src-range" | "--dst-range") => (1, verbatim),
        _ => return None,
    })
}

fn target_opt(target: &str, opt: &str) -> Option<usize> {
    Some(match (target, opt) {
        ("REJECT", "--reject-with") => 1,
        ("LOG", "--log-prefix" | "--log-level") => 1,
        ("LOG", "--log-uid" | "--log-ip-options" | "--log-tcp-options" | "--log-tcp-sequence") => 0,
        ("MARK", "--set-xmark" | "--set-mark" | "--or-mark" | "--and-mark" | "--xor-mark") => 1,
        ("CONNMARK", "--set-xmark" | "--set-mark" | "--mask") => 1,
        ("CONNMARK", "--save-mark" | "--restore-mark") => 0,
        ("MASQUERADE" | "REDIRECT", "--to-ports") => 1,
        ("MASQUERADE" | "SNAT" | "DNAT" | "REDIRECT", "--random") => 0,
        ("MASQUERADE" | "SNAT", "--random-fully") => 0,
        ("SNAT" | "DNAT", "--persistent") => 0,
        ("SNAT", "--to-source") | ("DNAT", "--to-destination") => 1,
        _ => return None,
    })
}

const TARGETS: &[&str] = &[
    "ACCEPT",
    "DROP",
    "RETURN",
    "REJECT",
    "LOG",
    "MARK",
    "CONNMARK",
    "MASQUERADE",
    "SNAT",
    "DNAT",
    "REDIRECT",
    "NOTRACK",
    "TRACE",
];

struct Module {
    name: String,
    opts: Vec<(bool, String, Vec<String>)>,
}

/// Normal form of `-A CHAIN spec` as `iptables-save` prints it, and the counters to give.
fn canon(
    chain: &str,
    spec: &[String],
    ipv6: bool,
    table: &str,
    chains: &[String],
) -> R<(String, String)> {
    let mut base: [Option<(bool, String)>; 6] = Default::default(); // s d i o p f
    let mut modules: Vec<Module> = Vec::new();
    let mut target: Option<Target> = None;
    let mut counters = "[0:0]".to_string();
    let mut neg = false;
    let mut i = 0;
    let arg = |i: usize, opt: &str| -> R<String> {
        spec.get(i + 1)
            .cloned()
            .ok_or_else(|| invalid(format!("iptables: option `{opt}` requires an argument")))
    };
    while i < spec.len() {
        let w = spec[i].as_str();
        if w == "!" {
            if neg {
                return Err(invalid("iptables: double `!`"));
            }
            neg = true;
            i += 1;
            continue;
        }
        let base_slot = match w {
            "-s" | "--source" | "--src" => Some(0),
            "-d" | "--destination" | "--dst" => Some(1),
            "-i" | "--in-interface" => Some(2),
            "-o" | "--out-interface" => Some(3),
            "-p" | "--protocol" => Some(4),
            _ => None,
        };
        if let Some(k) = base_slot {
            if target.is_some() {
                return Err(invalid(format!("iptables: `{w}` after the target")));
            }
            let v = arg(i, w)?;
            let v = match k {
                0 | 1 => addr_canon(&v, ipv6, w)?,
                4 => match proto_name(&v, ipv6)? {
                    Some(p) => p,
                    None => {
                        i += 2;
                        neg = false;
                        continue;
                    }
                },
                _ => v,
            };
            if base[k].is_some() {
                return Err(invalid(format!(
                    "iptables: multiple `{w}` flags not allowed"
                )));
            }
            base[k] = Some((neg, v));
            neg = false;
            i += 2;
            continue;
        }
        match w {
            "-f" | "--fragment" => {
                if ipv6 {
                    return Err(invalid("ip6tables: `-f` does not exist (use -m frag)"));
                }
                base[5] = Some((neg, String::new()));
                neg = false;
                i += 1;
            }
            "-c" | "--set-counters" => {
                let p = arg(i, w)?;
                let b = spec
                    .get(i + 2)
                    .cloned()
                    .ok_or_else(|| invalid("iptables: -c requires packets and bytes"))?;
                if p.parse::<u64>().is_err() || b.parse::<u64>().is_err() {
                    return Err(invalid(format!("iptables: bad counters `{p} {b}`")));
                }
                counters = format!("[{p}:{b}]");
                i += 3;
            }
            "-m" | "--match" => {
                let m = arg(i, w)?;
                let known = [
                    "tcp",
                    "udp",
                    "sctp",
                    "udplite",
                    "icmp",
                    "icmp6",
                    "multiport",
                    "conntrack",
                    "state",
                    "comment",
                    "mark",
                    "connmark",
                    "addrtype",
                    "physdev",
                    "set",
                    "statistic",
                    "mac",
                    "iprange",
                ];
                if !known.contains(&m.as_str()) {
                    return Err(unsupported(format!(
                        "iptables: match `-m {m}` is not supported (supported: {})",
                        known.join(", ")
                    )));
                }
                modules.push(Module {
                    name: m,
                    opts: Vec::new(),
                });
                i += 2;
            }
            "-j" | "--jump" | "-g" | "--goto" => {
                let t = arg(i, w)?;
                if target.is_some() {
                    return Err(invalid("iptables: multiple targets"));
                }
                let goto = w == "-g" || w == "--goto";
                if !TARGETS.contains(&t.as_str()) && !chains.contains(&t) {
                    return Err(if t.chars().all(|c| c.is_ascii_uppercase() || c == '_') {
                        unsupported(format!(
                            "iptables: target `{t}` is neither a supported target ({}) nor a chain of table `{table}`",
                            TARGETS.join(", ")
                        ))
                    } else {
                        not_found(format!(
                            "iptables: Couldn't load target `{t}`: no chain `{t}` in table `{table}`"
                        ))
                    });
                }
                if goto && TARGETS.contains(&t.as_str()) {
                    return Err(invalid(format!("iptables: `-g {t}`: goto needs a chain")));
                }
                if matches!(t.as_str(), "MASQUERADE" | "SNAT" | "DNAT" | "REDIRECT")
                    && table != "nat"
                {
                    return Err(invalid(format!(
                        "iptables: target `{t}` is only valid in the nat table"
                    )));
                }
                if t == chain {
                    return Err(invalid(format!(
                        "iptables: `-j {t}`: a chain cannot jump to itself"
                    )));
                }
                target = Some((goto, t, Vec::new()));
                i += 2;
            }
            o if o.starts_with("--") => {
                if let Some((_, t, topts)) = &mut target {
                    let Some(n) = target_opt(t, o) else {
                        return Err(unsupported(format!(
                            "iptables: option `{o}` of target `{t}` is not supported"
                        )));
                    };
                    if neg {
                        return Err(invalid(format!("iptables: `!` before target option `{o}`")));
                    }
                    let vals: Vec<String> = spec[i + 1..].iter().take(n).cloned().collect();
                    if vals.len() < n {
                        return Err(invalid(format!(
                            "iptables: option `{o}` requires an argument"
                        )));
                    }
                    topts.push((o.to_string(), vals));
                    i += 1 + n;
                    continue;
                }
                // The current module, else an implicit protocol match.
                let cur = modules.last().map(|m| m.name.clone());
                let module = match cur.filter(|m| match_opt(m, o).is_some()) {
                    Some(m) => m,
                    None => {
                        let proto = base[4].as_ref().map(|p| p.1.clone());
                        let implicit = match proto.as_deref() {
                            Some("ipv6-icmp") => Some("icmp6".to_string()),
                            Some(p) => Some(p.to_string()),
                            None => None,
                        };
                        match implicit.filter(|m| match_opt(m, o).is_some()) {
                            Some(m) => {
                                if !modules.iter().any(|x| x.name == m) {
                                    modules.push(Module {
                                        name: m.clone(),
                                        opts: Vec::new(),
                                    });
                                }
                                m
                            }
                            None => {
                                return Err(unsupported(format!(
                                    "iptables: option `{o}` is not supported here{}",
                                    modules
                                        .last()
                                        .map(|m| format!(" (after `-m {}`)", m.name))
                                        .unwrap_or_default()
                                )));
                            }
                        }
                    }
                };
                let (n, f) = match_opt(&module, o).unwrap();
                let vals: Vec<&str> = spec[i + 1..].iter().take(n).map(String::as_str).collect();
                if vals.len() < n {
                    return Err(invalid(format!(
                        "iptables: option `{o}` requires an argument"
                    )));
                }
                let v = f(&vals)?;
                let m = modules.iter_mut().rfind(|x| x.name == module).unwrap();
                if o == "--syn" {
                    m.opts.push((
                        neg,
                        "--tcp-flags".into(),
                        vec!["FIN,SYN,RST,ACK".into(), "SYN".into()],
                    ));
                } else {
                    let o = match o {
                        "--source-port" => "--sport",
                        "--destination-port" => "--dport",
                        "--destination-ports" => "--dports",
                        "--source-ports" => "--sports",
                        o => o,
                    };
                    m.opts
                        .push((neg, o.to_string(), if n == 0 { vec![] } else { vec![v] }));
                }
                neg = false;
                i += 1 + n;
            }
            other => {
                return Err(unsupported(format!(
                    "iptables: `{other}` is not a supported option"
                )));
            }
        }
    }
    if neg {
        return Err(invalid("iptables: `!` at the end of the rule"));
    }
    let mut s = format!("-A {chain}");
    let flags = ["-s", "-d", "-i", "-o", "-p", "-f"];
    for (k, b) in base.iter().enumerate() {
        if let Some((n, v)) = b {
            if *n {
                s.push_str(" !");
            }
            s.push(' ');
            s.push_str(flags[k]);
            if !v.is_empty() {
                s.push(' ');
                s.push_str(v);
            }
        }
    }
    for m in &modules {
        if matches!(m.name.as_str(), "tcp" | "udp" | "sctp" | "udplite") {
            let p = base[4].as_ref().map(|p| p.1.as_str());
            if p != Some(m.name.as_str()) {
                return Err(invalid(format!(
                    "iptables: `-m {}` needs `-p {}`",
                    m.name, m.name
                )));
            }
        }
        s.push_str(&format!(" -m {}", m.name));
        let mut opts = m.opts.clone();
        if matches!(m.name.as_str(), "tcp" | "udp" | "sctp" | "udplite") {
            let rank = |o: &str| match o {
                "--sport" => 0,
                "--dport" => 1,
                _ => 2,
            };
            opts.sort_by_key(|o| rank(&o.1));
        }
        for (n, o, v) in opts {
            if n {
                s.push_str(" !");
            }
            s.push(' ');
            s.push_str(&o);
            for x in v {
                s.push(' ');
                s.push_str(&x);
            }
        }
    }
    if let Some((goto, t, topts)) = &target {
        s.push_str(if *goto { " -g " } else { " -j " });
        s.push_str(t);
        s.push_str(&target_canon(t, topts, ipv6)?);
    }
    Ok((s, counters))
}

fn target_canon(t: &str, opts: &[(String, Vec<String>)], ipv6: bool) -> R<String> {
    let get = |o: &str| opts.iter().find(|x| x.0 == o).map(|x| x.1.clone());
    let mut s = String::new();
    match t {
        "REJECT" => {
            let w = get("--reject-with").map(|v| v[0].clone());
            let w = match w.as_deref() {
                None => {
                    if ipv6 {
                        "icmp6-port-unreachable".to_string()
                    } else {
                        "icmp-port-unreachable".to_string()
                    }
                }
                Some(x) => {
                    let x = match x {
                        "net-unreach" => "icmp-net-unreachable",
                        "host-unreach" => "icmp-host-unreachable",
                        "port-unreach" => "icmp-port-unreachable",
                        "proto-unreach" => "icmp-proto-unreachable",
                        "net-prohib" => "icmp-net-prohibited",
                        "host-prohib" => "icmp-host-prohibited",
                        "admin-prohib" => "icmp-admin-prohibited",
                        "tcp-rst" => "tcp-reset",
                        x => x,
                    };
                    x.to_string()
                }
            };
            s.push_str(&format!(" --reject-with {w}"));
        }
        "LOG" => {
            if let Some(p) = get("--log-prefix") {
                s.push_str(&format!(" --log-prefix {}", save_string(&p[0])));
            }
            if let Some(l) = get("--log-level") {
                let n = match l[0].as_str() {
                    "emerg" => 0,
                    "alert" => 1,
                    "crit" => 2,
                    "error" | "err" => 3,
                    "warning" | "warn" => 4,
                    "notice" => 5,
                    "info" => 6,
                    "debug" => 7,
                    x => x
                        .parse::<u8>()
                        .ok()
                        .filter(|n| *n <= 7)
                        .ok_or_else(|| invalid(format!("LOG: bad --log-level `{x}`")))?,
                };
                if n != 4 {
                    s.push_str(&format!(" --log-level {n}"));
                }
            }
            for f in [
                "--log-tcp-sequence",
                "--log-tcp-options",
                "--log-ip-options",
                "--log-uid",
            ] {
                if get(f).is_some() {
                    s.push_str(&format!(" {f}"));
                }
            }
        }
        "MARK" => {
            let (o, v) = opts
                .first()
                .map(|x| (x.0.as_str(), x.1[0].as_str()))
                .ok_or_else(|| invalid("MARK target needs --set-xmark/--set-mark/…"))?;
            let (val, mask) = match o {
                "--set-xmark" | "--set-mark" => match v.split_once('/') {
                    Some((a, m)) if o == "--set-xmark" => (hex(a, o)?, hex(m, o)?),
                    Some((a, m)) => {
                        let (a, m) = (hex(a, o)?, hex(m, o)?);
                        (a, m | a)
                    }
                    None => (hex(v, o)?, u32::MAX),
                },
                "--or-mark" => {
                    let x = hex(v, o)?;
                    (x, x)
                }
                "--and-mark" => (0, !hex(v, o)?),
                "--xor-mark" => (hex(v, o)?, 0),
                _ => return Err(unsupported(format!("MARK option `{o}`"))),
            };
            s.push_str(&format!(" --set-xmark {val:#x}/{mask:#x}"));
        }
        "ACCEPT" | "DROP" | "RETURN" | "NOTRACK" | "TRACE" => {}
        _ => {
            for (o, v) in opts {
                s.push(' ');
                s.push_str(o);
                for x in v {
                    s.push(' ');
                    s.push_str(x);
                }
            }
        }
    }
    if opts.iter().any(|(o, _)| target_opt(t, o).is_none()) {
        return Err(unsupported(format!("options of target `{t}`")));
    }
    Ok(s)
}
