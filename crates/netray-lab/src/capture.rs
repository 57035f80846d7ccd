//! Capture a lab as a bundle: `netray collect` run inside every node namespace (as an operator
//! would run it on each node), plus the lab's `cluster.json`.

use std::path::Path;
use std::process::Command;

use crate::lab::Lab;
use crate::netns::{LabError, run};

impl Lab {
    /// Run `<netray> collect --node NAME -o DIR/nodes/NAME.json` inside each node namespace
    /// (`ip netns exec`), and write `DIR/cluster.json`. `netray` is the path of the binary.
    pub fn collect_bundle(&self, netray: &Path, dir: &Path) -> Result<(), LabError> {
        let nodes = dir.join("nodes");
        std::fs::create_dir_all(&nodes).map_err(|source| LabError::Spawn {
            cmd: format!("mkdir -p {}", nodes.display()),
            source,
        })?;
        for node in &self.spec().nodes {
            let ns = self.ns(&node.name)?;
            let out = nodes.join(format!("{}.json", node.name));
            run(Command::new("ip")
                .args(["netns", "exec", ns.name()])
                .arg(netray)
                .args(["collect", "--node", &node.name, "-o"])
                .arg(&out))?;
        }
        self.write_cluster_json(&dir.join("cluster.json"))
            .map_err(|source| LabError::Spawn {
                cmd: format!("write {}/cluster.json", dir.display()),
                source,
            })
    }
}
