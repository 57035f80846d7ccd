//! Records the git revision netray is built from for `netray --version`
//! (`0.1.0 (git 1a2b3c4)`); a build outside a git checkout (a source tarball, `cargo install`
//! from a registry) says `(git revision unknown)` instead.

use std::process::Command;

fn main() {
    let dir = std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| ".".into());
    let git = |args: &[&str]| -> Option<String> {
        let out = Command::new("git")
            .args(args)
            .current_dir(&dir)
            .output()
            .ok()?;
        if !out.status.success() {
            return None;
        }
        let s = String::from_utf8(out.stdout).ok()?.trim().to_string();
        (!s.is_empty()).then_some(s)
    };
    let rev = git(&["rev-parse", "--short", "HEAD"]);
    let describe = match &rev {
        Some(r) => format!("git {r}"),
        None => "git revision unknown".to_string(),
    };
    println!("cargo:rustc-env=NETRAY_GIT_REV={describe}");
    // Rebuild when HEAD moves: the HEAD file, and the ref it points to.
    // (Only files that exist: a missing one would rerun this script on every build.)
    let mut watch = vec![git(&["rev-parse", "--git-path", "HEAD"])];
    if let Some(r) = git(&["symbolic-ref", "-q", "HEAD"]) {
        watch.push(git(&["rev-parse", "--git-path", &r]));
    }
    watch.push(git(&["rev-parse", "--git-path", "packed-refs"]));
    for p in watch.into_iter().flatten() {
        let p = abs(&dir, &p);
        if std::path::Path::new(&p).exists() {
            println!("cargo:rerun-if-changed={p}");
        }
    }
    println!("cargo:rerun-if-changed=build.rs");
}

fn abs(dir: &str, p: &str) -> String {
    let path = std::path::Path::new(p);
    if path.is_absolute() {
        p.to_string()
    } else {
        std::path::Path::new(dir).join(path).display().to_string()
    }
}
