//! The README's example commands, run top to bottom against the bundled examples by
//! `scripts/readme-commands.sh`: each must exit with the code the README says (`# exit N`,
//! default 0). Commands that need root, a Kubernetes API or create labs are skipped unless
//! the script is told to run them (see the script).

use std::path::PathBuf;
use std::process::Command;

#[test]
fn every_readme_command_runs_as_written() {
    let root = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../..");
    let out = Command::new("bash")
        .arg(root.join("scripts/readme-commands.sh"))
        .arg(root.join("README.md"))
        .env("NETRAY", env!("CARGO_BIN_EXE_netray"))
        // Never bring labs up or down from here: other tests may have labs running.
        .env_remove("NETRAY_README_LAB")
        .env_remove("NETRAY_README_SYSTEM")
        .output()
        .expect("bash runs");
    let stdout = String::from_utf8_lossy(&out.stdout);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success(),
        "scripts/readme-commands.sh failed:\n{stdout}\n{stderr}"
    );
    // It did run the examples (a script that found nothing would prove nothing).
    let ran: usize = stdout
        .lines()
        .find_map(|l| l.strip_prefix("readme-commands: "))
        .and_then(|l| l.split(' ').next())
        .and_then(|n| n.parse().ok())
        .unwrap_or(0);
    assert!(ran >= 10, "only {ran} README commands ran:\n{stdout}");
}
