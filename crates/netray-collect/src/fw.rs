//! Firewall state, verbatim from the tools that are its source of truth. Every tool runs
//! as a child of the thread that entered the namespace, so it inherits that namespace.
//!
//! Read-only by construction: a legacy `*-save` runs only when `/proc/net/ip*_tables_names`
//! already lists tables (so no table is instantiated and no module requested); the nft
//! variants run only when nf_tables holds tables of their family (listed over nfnetlink).
//!
//! `nft_json` holds the *native* nf_tables tables: when iptables-nft-save already recorded
//! some tables, those are not listed again as JSON (each table is recorded once; tables
//! iptables-nft-save calls incompatible stay in `nft_json`).

use std::io;
use std::path::PathBuf;
use std::process::{Command, Stdio};

use netray_snapshot::{Firewall, IpFamily, IptablesBackend, IptablesDump};

use crate::nl::{Conn, Event, NETLINK_NETFILTER, RawMsg, attrs};

/// `(NFNL_SUBSYS_NFTABLES << 8) | NFT_MSG_GETTABLE`.
const NFT_GETTABLE: u16 = (10 << 8) | 1;
const NFT_NEWTABLE: u16 = 10 << 8;

/// nf_tables tables of the namespace as (family, name); family is `NFPROTO_*`.
pub fn nft_tables() -> io::Result<Vec<(u8, String)>> {
    let mut conn = Conn::open(NETLINK_NETFILTER)?;
    let mut out = Vec::new();
    let req = RawMsg {
        ty: NFT_GETTABLE,
        body: vec![0u8; 4],
    };
    conn.dump(req, &mut |ev| {
        let Event::Msg(m) = ev else {
            return;
        };
        if m.ty != NFT_NEWTABLE || m.body.len() < 4 {
            return;
        }
        let fam = m.body[0];
        let name = attrs(&m.body[4..])
            .find(|(t, _)| *t == 1)
            .map(|(_, v)| {
                let end = v.iter().position(|&c| c == 0).unwrap_or(v.len());
                String::from_utf8_lossy(&v[..end]).into_owned()
            })
            .unwrap_or_default();
        out.push((fam, name));
    })?;
    out.sort();
    out.dedup();
    Ok(out)
}

/// Find a tool on `PATH`, then in the sbin directories (which a non-login PATH may lack).
pub fn find_tool(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(
            ["/usr/sbin", "/sbin", "/usr/bin", "/bin", "/usr/local/sbin"]
                .iter()
                .map(PathBuf::from),
        )
        .map(|d| d.join(name))
        .find(|p| p.is_file())
}

/// Run `tool args…` (in the current thread's namespace); stdout or a reason. Output that is
/// not UTF-8 is read with U+FFFD for the bad bytes, and each such line is reported to
/// `problems` (the rest of the output is kept).
pub fn run(
    tool: &str,
    args: &[&str],
    problems: &mut Vec<(String, String)>,
) -> Result<String, String> {
    let Some(path) = find_tool(tool) else {
        return Err(format!("`{tool}` is not installed"));
    };
    let out = Command::new(path)
        .args(args)
        .stdin(Stdio::null())
        .env("LC_ALL", "C")
        .output()
        .map_err(|e| format!("cannot run `{tool}`: {e}"))?;
    if !out.status.success() {
        return Err(format!(
            "`{tool} {}` failed ({}): {}",
            args.join(" "),
            out.status,
            String::from_utf8_lossy(&out.stderr).trim()
        ));
    }
    Ok(lossy(tool, args, out.stdout, problems))
}

/// `bytes` as text, bad bytes as U+FFFD, each line holding some reported as (tool, reason).
pub fn lossy(
    tool: &str,
    args: &[&str],
    bytes: Vec<u8>,
    problems: &mut Vec<(String, String)>,
) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            let bytes = e.into_bytes();
            let mut bad: Vec<usize> = Vec::new();
            for (i, line) in bytes.split(|&b| b == b'\n').enumerate() {
                if std::str::from_utf8(line).is_err() {
                    bad.push(i + 1);
                }
            }
            let shown: Vec<String> = bad.iter().take(10).map(|l| l.to_string()).collect();
            problems.push((
                tool.to_string(),
                format!(
                    "`{tool} {}` printed bytes that are not UTF-8 on line{} {}{}: kept as U+FFFD",
                    args.join(" "),
                    if bad.len() == 1 { "" } else { "s" },
                    shown.join(", "),
                    if bad.len() > 10 { ", …" } else { "" }
                ),
            ));
            String::from_utf8_lossy(&bytes).into_owned()
        }
    }
}

/// Whether an `iptables-save` text holds at least one table.
fn has_table(text: &str) -> bool {
    text.lines().any(|l| l.starts_with('*'))
}

/// Collect the firewall of the current thread's namespace; failures go to `problems` as
/// (what, reason).
/// nf_tables is asked only when `nftables` (its module is present, see [`crate::modules`]).
pub fn collect(firewall: &mut Firewall, nftables: bool, problems: &mut Vec<(String, String)>) {
    let proc_net = "/proc/thread-self/net";
    // Legacy x_tables: only tables that already exist are listed in *_names.
    for (fam, names, tool) in [
        (IpFamily::Ipv4, "ip_tables_names", "iptables-legacy-save"),
        (IpFamily::Ipv6, "ip6_tables_names", "ip6tables-legacy-save"),
    ] {
        let listed = std::fs::read_to_string(format!("{proc_net}/{names}")).unwrap_or_default();
        if listed.trim().is_empty() {
            continue;
        }
        match run(tool, &["-c"], problems) {
            Ok(text) => firewall.iptables.push(IptablesDump {
                backend: IptablesBackend::Legacy,
                family: fam,
                text,
            }),
            Err(r) => problems.push((tool.to_string(), r)),
        }
    }
    if !nftables {
        // Reported once per node.
        return;
    }
    let tables = match nft_tables() {
        Ok(t) => t,
        Err(e) => {
            problems.push((
                "nftables".into(),
                format!("cannot list nf_tables tables: {e}"),
            ));
            return;
        }
    };
    // Tables that an iptables-nft-save dump already holds (compatible xtables tables).
    let mut covered: Vec<(u8, String)> = Vec::new();
    for (fam, nfproto, tool) in [
        (IpFamily::Ipv4, 2u8, "iptables-nft-save"),
        (IpFamily::Ipv6, 10u8, "ip6tables-nft-save"),
    ] {
        if !tables.iter().any(|(f, _)| *f == nfproto) {
            continue;
        }
        match run(tool, &["-c"], problems) {
            Ok(text) if has_table(&text) => {
                for (f, name) in tables.iter().filter(|(f, _)| *f == nfproto) {
                    let listed = text.lines().any(|l| l.strip_prefix('*') == Some(name));
                    let incompatible = text.contains(&format!("# Table `{name}' is incompatible"));
                    if listed && !incompatible {
                        covered.push((*f, name.clone()));
                    }
                }
                firewall.iptables.push(IptablesDump {
                    backend: IptablesBackend::Nft,
                    family: fam,
                    text,
                })
            }
            Ok(_) => {}
            Err(r) => problems.push((tool.to_string(), r)),
        }
    }
    let native: Vec<&(u8, String)> = tables.iter().filter(|t| !covered.contains(t)).collect();
    if native.is_empty() {
        return;
    }
    if covered.is_empty() {
        // Only native tables: the whole ruleset, verbatim.
        match run("nft", &["-j", "list", "ruleset"], problems) {
            Ok(text) => firewall.nft_json = Some(text),
            Err(r) => problems.push(("nft".into(), r)),
        }
        return;
    }
    // Mixed: list each native table (the iptables-nft ones are already recorded as
    // iptables-save text, and listing them as JSON can cost tens of seconds at kube-proxy
    // scale), merged into one `{"nftables": [...]}` document with a single metainfo.
    let mut items: Vec<serde_json::Value> = Vec::new();
    for (f, name) in native {
        let Some(fam) = nfproto_name(*f) else {
            problems.push(("nft".into(), format!("table {name} of unknown family {f}")));
            continue;
        };
        match run("nft", &["-j", "list", "table", fam, name], problems) {
            Ok(text) => match serde_json::from_str::<serde_json::Value>(&text) {
                Ok(serde_json::Value::Object(mut o)) => {
                    if let Some(serde_json::Value::Array(a)) = o.remove("nftables") {
                        for it in a {
                            if it.get("metainfo").is_some()
                                && items.iter().any(|x| x.get("metainfo").is_some())
                            {
                                continue;
                            }
                            items.push(it);
                        }
                    }
                }
                _ => problems.push((
                    "nft".into(),
                    format!("`nft -j list table {fam} {name}` printed no JSON object"),
                )),
            },
            Err(r) => problems.push(("nft".into(), r)),
        }
    }
    firewall.nft_json = serde_json::to_string(&serde_json::json!({ "nftables": items })).ok();
}

fn nfproto_name(f: u8) -> Option<&'static str> {
    Some(match f {
        1 => "inet",
        2 => "ip",
        3 => "arp",
        5 => "netdev",
        7 => "bridge",
        10 => "ip6",
        _ => return None,
    })
}

/// Whether the namespace holds any ipset, asked over nfnetlink (`IPSET_CMD_LIST` with
/// `LIST_SETNAME`: names only). `None` when the kernel did not answer the question.
pub fn ipset_any() -> Option<bool> {
    let mut conn = Conn::open(NETLINK_NETFILTER).ok()?;
    // nfgenmsg (NFPROTO_IPV4, v0), IPSET_ATTR_PROTOCOL = 7, IPSET_ATTR_FLAGS = LIST_SETNAME.
    let mut body = vec![libc::AF_INET as u8, 0, 0, 0];
    crate::nl::push_attr(&mut body, 1, &[7]);
    crate::nl::push_attr(&mut body, 6 | 0x4000, &(1u32 << 1).to_be_bytes());
    let mut any = false;
    let req = RawMsg {
        ty: (6 << 8) | 7,
        body,
    };
    conn.dump(req, &mut |ev| {
        if let Event::Msg(m) = ev
            && m.ty == (6 << 8) | 7
        {
            any = true;
        }
    })
    .ok()?;
    Some(any)
}

/// `ipset save` of the current thread's namespace; `Ok("")` without spawning when the
/// kernel says the namespace has no set.
pub fn ipset(problems: &mut Vec<(String, String)>) -> Result<String, String> {
    if ipset_any() == Some(false) {
        return Ok(String::new());
    }
    run("ipset", &["save"], problems)
}

/// IPVS services, where the kernel has IPVS.
pub fn ipvs(problems: &mut Vec<(String, String)>) -> Result<Option<String>, String> {
    if !std::path::Path::new("/proc/thread-self/net/ip_vs").exists() {
        return Ok(None);
    }
    run("ipvsadm", &["-Sn"], problems).map(Some)
}

#[cfg(test)]
mod tests {
    #[test]
    fn output_that_is_not_utf8_is_kept_and_its_lines_named() {
        let mut problems = Vec::new();
        let text = super::lossy(
            "iptables-nft-save",
            &["-c"],
            b"*filter\n-A INPUT -m comment --comment \"caf\xe9\" -j DROP\nCOMMIT\n".to_vec(),
            &mut problems,
        );
        assert!(text.contains("caf\u{FFFD}"));
        assert!(text.ends_with("COMMIT\n"));
        assert_eq!(problems.len(), 1);
        assert_eq!(problems[0].0, "iptables-nft-save");
        assert!(problems[0].1.contains("on line 2:"), "{problems:?}");
        let mut none = Vec::new();
        assert_eq!(super::lossy("x", &[], b"ok\n".to_vec(), &mut none), "ok\n");
        assert!(none.is_empty());
    }
}
