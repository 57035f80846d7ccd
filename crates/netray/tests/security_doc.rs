//! SECURITY.md names every limit with its value; this test keeps the page true: each
//! `` `NAME` `` in a table row (`| `NAME` | VALUE | … |`) or written `` `NAME` = VALUE `` must be
//! a constant defined once in `crates/*/src` (`const NAME: T = EXPR;`) whose value is the
//! page's (units KiB/MiB/GiB, s, min understood), and the walk's `max_branches` / `max_steps`
//! rows must match `walk::Options::default()`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

fn root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// `256 MiB`, `1,000`, `120 s`, `5 min`, `8192 bytes`: the value in plain units (bytes,
/// seconds, a count); `None` when `text` does not start with a number.
fn doc_value(text: &str) -> Option<u64> {
    let text = text.trim_start();
    let digits: String = text
        .chars()
        .take_while(|c| c.is_ascii_digit() || *c == ',')
        .collect();
    let n: u64 = digits.replace(',', "").parse().ok()?;
    let unit = text[digits.len()..]
        .trim_start()
        .split(|c: char| !c.is_ascii_alphabetic())
        .next()
        .unwrap_or("");
    Some(match unit {
        "KiB" => n << 10,
        "MiB" => n << 20,
        "GiB" => n << 30,
        "min" => n * 60,
        _ => n,
    })
}

/// `4096`, `1_000_000`, `64 << 10`, `Duration::from_secs(120)`, `u32::MAX`.
fn code_value(expr: &str) -> Option<u64> {
    let e = expr.trim().replace('_', "");
    if let Some(s) = e
        .strip_prefix("Duration::fromsecs(")
        .and_then(|s| s.strip_suffix(')'))
    {
        return s.trim().parse().ok();
    }
    if let Some((a, b)) = e.split_once("<<") {
        let a: u64 = a.trim().parse().ok()?;
        let b: u32 = b.trim().parse().ok()?;
        return a.checked_shl(b);
    }
    e.parse().ok()
}

fn rust_files(dir: &Path, out: &mut Vec<PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap() {
        let p = e.unwrap().path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// Every `const NAME: T = EXPR;` of the crates' sources: name → (file, EXPR) for each one.
fn constants() -> BTreeMap<String, Vec<(PathBuf, String)>> {
    let mut files = Vec::new();
    for c in std::fs::read_dir(root().join("crates")).unwrap() {
        let src = c.unwrap().path().join("src");
        if src.is_dir() {
            rust_files(&src, &mut files);
        }
    }
    let mut out: BTreeMap<String, Vec<(PathBuf, String)>> = BTreeMap::new();
    for f in files {
        let text = std::fs::read_to_string(&f).unwrap();
        for line in text.lines() {
            let Some(at) = line.find("const ") else {
                continue;
            };
            let rest = &line[at + "const ".len()..];
            let Some((name, rest)) = rest.split_once(':') else {
                continue;
            };
            let Some((_, expr)) = rest.split_once('=') else {
                continue;
            };
            let Some(expr) = expr.trim().strip_suffix(';') else {
                continue;
            };
            out.entry(name.trim().to_string())
                .or_default()
                .push((f.clone(), expr.to_string()));
        }
    }
    out
}

fn is_const_name(s: &str) -> bool {
    s.len() > 2
        && s.chars().next().is_some_and(|c| c.is_ascii_uppercase())
        && s.chars()
            .all(|c| c.is_ascii_uppercase() || c.is_ascii_digit() || c == '_')
}

/// (name, value text) of every limit the page states.
fn documented(page: &str) -> Vec<(String, String)> {
    let mut out = Vec::new();
    for line in page.lines() {
        // Table rows: | `NAME` | VALUE | …
        let cells: Vec<&str> = line.split('|').map(str::trim).collect();
        if line.starts_with("| `") && cells.len() > 3 {
            let name = cells[1].trim_matches('`');
            if is_const_name(name) || name == "max_branches" || name == "max_steps" {
                out.push((name.to_string(), cells[2].to_string()));
                continue;
            }
        }
        // Prose: `NAME` = VALUE
        let mut rest = line;
        while let Some(i) = rest.find("` = ") {
            let before = &rest[..i];
            let name = before.rsplit('`').next().unwrap_or("");
            let value = &rest[i + "` = ".len()..];
            if is_const_name(name) {
                out.push((name.to_string(), value.to_string()));
            }
            rest = value;
        }
    }
    out
}

#[test]
fn every_limit_in_security_md_matches_the_code() {
    let page = std::fs::read_to_string(root().join("SECURITY.md")).unwrap();
    let consts = constants();
    let walk =
        std::fs::read_to_string(root().join("crates/netray-datapath/src/walk/mod.rs")).unwrap();
    let default_field = |field: &str| -> u64 {
        let body = &walk[walk
            .find("impl Default for Options")
            .expect("walk::Options has a Default")..];
        let at = body.find(&format!("{field}: ")).unwrap() + field.len() + 2;
        code_value(body[at..].split(',').next().unwrap()).unwrap()
    };
    let docs = documented(&page);
    let mut bad = Vec::new();
    for (name, text) in &docs {
        let Some(doc) = doc_value(text) else {
            bad.push(format!("{name}: no value in {text:?}"));
            continue;
        };
        let code = if name == "max_branches" || name == "max_steps" {
            default_field(name)
        } else {
            match consts.get(name).map(Vec::as_slice) {
                Some([(file, expr)]) => match code_value(expr) {
                    Some(v) => v,
                    None => {
                        bad.push(format!(
                            "{name} = {expr} ({}): not evaluated",
                            file.display()
                        ));
                        continue;
                    }
                },
                Some(many) => {
                    bad.push(format!("{name}: defined {} times", many.len()));
                    continue;
                }
                None => {
                    bad.push(format!("{name}: no such constant in crates/*/src"));
                    continue;
                }
            }
        };
        if code != doc {
            bad.push(format!(
                "{name}: SECURITY.md says {text:?} ({doc}), the code {code}"
            ));
        }
    }
    assert!(bad.is_empty(), "{}", bad.join("\n"));
    // The page states many limits; a parse that finds few would check nothing.
    assert!(
        docs.len() >= 30,
        "only {} limits found: {docs:?}",
        docs.len()
    );
}

#[test]
fn value_parsers() {
    assert_eq!(doc_value("256 MiB"), Some(256 << 20));
    assert_eq!(doc_value("1,000,000 | x"), Some(1_000_000));
    assert_eq!(doc_value("5 min"), Some(300));
    assert_eq!(doc_value("8192 bytes: a longer"), Some(8192));
    assert_eq!(doc_value("none"), None);
    assert_eq!(code_value("64 << 10"), Some(65536));
    assert_eq!(code_value("Duration::from_secs(180)"), Some(180));
    assert_eq!(code_value("1_000"), Some(1000));
}
