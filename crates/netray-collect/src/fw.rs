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

/// Run `tool args…` (in the current thread's namespace); stdout or a reason.
pub fn run(tool: &str, args: &[&str]) -> Result<String, String> {
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
    String::from_utf8(out.stdout).map_err(|_| format!("`{tool}` printed invalid UTF-8"))
}

/// Whether an `iptables-save` text holds at least one table.
fn has_table(text: &str) -> bool {
    text.lines().any(|l| l.starts_with('*'))
}

/// Collect the firewall of the current thread's namespace; failures go to `problems` as
/// (what, reason).
pub fn collect(firewall: &mut Firewall, problems: &mut Vec<(String, String)>) {
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
        match run(tool, &["-c"]) {
            Ok(text) => firewall.iptables.push(IptablesDump {
                backend: IptablesBackend::Legacy,
                family: fam,
                text,
            }),
            Err(r) => problems.push((tool.to_string(), r)),
        }
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
        match run(tool, &["-c"]) {
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
        match run("nft", &["-j", "list", "ruleset"]) {
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
        match run("nft", &["-j", "list", "table", fam, name]) {
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
pub fn ipset() -> Result<String, String> {
    if ipset_any() == Some(false) {
        return Ok(String::new());
    }
    run("ipset", &["save"])
}

/// IPVS services, where the kernel has IPVS.
pub fn ipvs() -> Result<Option<String>, String> {
    if !std::path::Path::new("/proc/thread-self/net/ip_vs").exists() {
        return Ok(None);
    }
    run("ipvsadm", &["-Sn"]).map(Some)
}
