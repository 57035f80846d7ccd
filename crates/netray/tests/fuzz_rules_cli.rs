//! Fuzz-style property test of the whole CLI on mutated rulesets (issue 15): the iptables-save
//! dump of a node is mutated line by line — characters cut, quotes left open, tokens swapped
//! for hostile ones, jumps and gotos pointed back up the chain (loops), lines duplicated or
//! dropped, policies garbled — and walked by `diagnose` and `trace` inside the bundle and by
//! `rules trace` from the file. Every run must exit 0, 1 or 2 (never a panic or a signal),
//! within a hang guard, with bounded output; a dump that does not parse never yields a
//! confident verdict through the damaged line (checked by `bad_input_answers.rs` and the
//! netfilter limits tests; here the property is "never crash, hang or explode").
//!
//! `NETRAY_FUZZ_SEED` picks the seed (printed on failure), `NETRAY_FUZZ_RUNS` the number of
//! mutated dumps (default 120, three commands each).

use std::path::Path;
use std::time::Duration;

use serde_json::Value;

mod common;

use common::Rng;
const EXAMPLE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/healthy");
const HANG_GUARD: Duration = Duration::from_secs(60);
const MAX_OUTPUT: usize = 8 << 20;

const TOKENS: &[&str] = &[
    "-j DROP",
    "-j REJECT",
    "-g KUBE-SERVICES",
    "-j FORWARD",
    "-m statistic --mode random --probability 0.5",
    "-m set --match-set NOPE src",
    "-m recent --rcheck --name x",
    "-m bogus --flag",
    "! !",
    "--comment \"",
    "-j DNAT --to-destination 10.244.9.9:1",
    "-j MASQUERADE --to-ports 0-65535",
    "-s 0.0.0.0/0",
    "-d 999.1.1.1/40",
    "-p 300",
    "--dport 99999",
    "\u{1b}[2J",
    ":FORWARD DORP [0:0]",
    "COMMIT",
    "*nat",
];

/// Mutate one iptables-save dump.
fn mutate_dump(text: &str, rng: &mut Rng) -> String {
    let mut lines: Vec<String> = text.lines().map(str::to_string).collect();
    for _ in 0..1 + rng.below(4) {
        if lines.is_empty() {
            break;
        }
        let i = rng.below(lines.len());
        match rng.below(8) {
            0 => {
                let cut = rng.below(lines[i].len() + 1);
                let mut s = lines[i].clone();
                s.truncate(s.floor_char_boundary(cut));
                lines[i] = s;
            }
            1 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                lines[i] = format!("{} {t}", lines[i]);
            }
            2 => {
                let t = TOKENS[rng.below(TOKENS.len())];
                let words: Vec<&str> = lines[i].split(' ').collect();
                let k = rng.below(words.len());
                let mut w: Vec<String> = words.iter().map(|s| s.to_string()).collect();
                w[k] = t.to_string();
                lines[i] = w.join(" ");
            }
            3 => {
                // Point a rule back at its own chain: a jump or goto loop.
                if let Some(chain) = lines[i]
                    .split_whitespace()
                    .skip_while(|w| *w != "-A")
                    .nth(1)
                {
                    let op = if rng.below(2) == 0 { "-g" } else { "-j" };
                    lines[i] = format!("-A {chain} {op} {chain}");
                }
            }
            4 => {
                let l = lines[i].clone();
                for _ in 0..rng.below(50) {
                    lines.insert(i, l.clone());
                }
            }
            5 => {
                lines.remove(i);
            }
            6 => lines[i] = lines[i].replace('"', ""),
            _ => {
                let j = rng.below(lines.len());
                lines.swap(i, j);
            }
        }
    }
    let mut s = lines.join("\n");
    s.push('\n');
    s
}

fn run(args: &[&str]) -> (Option<i32>, Option<i32>, usize, usize) {
    use std::os::unix::process::ExitStatusExt;
    let o = common::netray_bounded(args, HANG_GUARD);
    (
        o.status.code(),
        o.status.signal(),
        o.stdout.len(),
        o.stderr.len(),
    )
}

fn copy_dir(src: &Path, dst: &Path) {
    std::fs::create_dir_all(dst.join("nodes")).unwrap();
    std::fs::copy(src.join("cluster.json"), dst.join("cluster.json")).unwrap();
    for e in std::fs::read_dir(src.join("nodes")).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join("nodes").join(e.file_name())).unwrap();
    }
}

#[test]
fn mutated_rulesets_never_crash_hang_or_explode() {
    let seed: u64 = std::env::var("NETRAY_FUZZ_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(0x7275_6c65_7300_0015);
    let runs: usize = std::env::var("NETRAY_FUZZ_RUNS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(120);
    let mut rng = Rng(seed | 1);
    let src = Path::new(EXAMPLE);
    let node1 = src.join("nodes/node1.json");
    let original: Value = serde_json::from_str(&std::fs::read_to_string(&node1).unwrap()).unwrap();
    let dump = original["namespaces"]
        .as_array()
        .unwrap()
        .iter()
        .find(|n| n["role"] == "host")
        .unwrap()["firewall"]["iptables"][0]["text"]
        .as_str()
        .unwrap()
        .to_string();
    let mut codes = [0usize; 3];
    for run_no in 0..runs {
        let mutated = mutate_dump(&dump, &mut rng);
        let dir = tempfile::tempdir().unwrap();
        copy_dir(src, dir.path());
        let mut v = original.clone();
        for ns in v["namespaces"].as_array_mut().unwrap() {
            if ns["role"] == "host" {
                ns["firewall"]["iptables"][0]["text"] = mutated.clone().into();
            }
        }
        std::fs::write(
            dir.path().join("nodes/node1.json"),
            serde_json::to_string(&v).unwrap(),
        )
        .unwrap();
        let dump_file = dir.path().join("dump.txt");
        std::fs::write(&dump_file, &mutated).unwrap();
        let b = dir.path().to_str().unwrap();
        let d = dump_file.to_str().unwrap();
        for args in [
            vec![
                "diagnose",
                "--bundle",
                b,
                "--from",
                "pod/default/web-0",
                "--to",
                "svc/default/web:80",
                "-o",
                "json",
            ],
            vec![
                "trace",
                "--bundle",
                b,
                "--from",
                "node/node0",
                "--to",
                "pod/default/web-2:8080",
            ],
            vec![
                "rules",
                "trace",
                "--iptables",
                d,
                "--backend",
                "nft",
                "--local",
                "192.168.50.11",
                "--from",
                "10.244.0.2",
                "--to",
                "10.96.0.100:80",
            ],
        ] {
            let (code, signal, out, err) = run(&args);
            let what = format!("seed {seed:#x} run {run_no}: netray {}", args.join(" "));
            assert!(signal.is_none(), "{what}: killed by signal {signal:?}");
            let code = code.unwrap_or(-1);
            assert!((0..=2).contains(&code), "{what}: exit {code}");
            codes[code as usize] += 1;
            assert!(
                out <= MAX_OUTPUT && err <= MAX_OUTPUT,
                "{what}: output {out} + {err} bytes"
            );
        }
    }
    eprintln!("exit codes over {runs} mutated dumps × 3 commands: {codes:?}");
}
