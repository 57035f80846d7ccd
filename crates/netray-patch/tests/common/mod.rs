#![allow(dead_code)]
use std::path::Path;

use netray_patch::{Applied, ErrorKind, FixCommand, PatchError, apply};
use netray_snapshot::{Bundle, NetnsSnapshot};

pub fn healthy() -> Bundle {
    let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/healthy");
    Bundle::load(&p).expect("examples/healthy loads")
}

pub fn run(b: &mut Bundle, node: &str, netns: &str, cmd: &str) -> Result<Applied, PatchError> {
    apply(
        b,
        &FixCommand {
            node: node.into(),
            netns: netns.into(),
            pod: None,
            run: cmd.into(),
        },
    )
}

pub fn ok(b: &mut Bundle, cmd: &str) -> Applied {
    match run(b, "node1", "host", cmd) {
        Ok(a) => a,
        Err(e) => panic!("{cmd}: {e}"),
    }
}

pub fn err(b: &mut Bundle, cmd: &str) -> PatchError {
    let before = b.nodes.clone();
    match run(b, "node1", "host", cmd) {
        Ok(a) => panic!("{cmd}: expected an error, got {a}"),
        Err(e) => {
            assert_eq!(
                b.nodes, before,
                "{cmd}: a failed command changed the bundle"
            );
            e
        }
    }
}

pub fn err_kind(b: &mut Bundle, cmd: &str, kind: ErrorKind) -> PatchError {
    let e = err(b, cmd);
    assert_eq!(e.kind, kind, "{cmd}: {e}");
    e
}

pub fn host(b: &Bundle) -> &NetnsSnapshot {
    b.nodes
        .iter()
        .find(|n| n.node.name == "node1")
        .unwrap()
        .host()
        .unwrap()
}
