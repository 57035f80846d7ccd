//! Build a lab with the faults given as arguments and print the kernel's outcome of the
//! standard flow matrix per endpoint, with where the packets of failing endpoints were lost:
//! `cargo run -p netray-lab --example matrix -- forward-drop:node1 stale-vtep:node2:node0`.
use netray_lab::matrix::standard_flows;
use netray_lab::{Agent, ClusterSpec, Fault, Lab};

fn main() {
    let agent = Agent::locate().expect("build nrl-agent first: cargo build -p netray-lab");
    let mut lab = Lab::up(&ClusterSpec::standard(3, 2), &agent).expect("lab up");
    for a in std::env::args().skip(1) {
        let f: Fault = a.parse().expect("fault");
        lab.apply(&f).expect("apply");
    }
    let spec = lab.spec().clone();
    for flow in standard_flows(&spec) {
        let t = lab.kernel_truth(&flow).expect("probe");
        println!(
            "{}: {} ({} of {} tries failed)",
            flow.name,
            t.verdict(),
            t.failed,
            t.tries
        );
        for (ip, tt) in &t.targets {
            let who = spec
                .pods
                .iter()
                .find(|p| p.ip == *ip)
                .map_or("?", |p| &p.name);
            match &tt.lost {
                _ if tt.reachable() => println!("    {who:6} ok {}x", tt.answered),
                Some((leg, node)) => {
                    println!("    {who:6} lost {} @{node}  [{}]", leg.as_str(), tt.detail)
                }
                None => println!("    {who:6} lost"),
            }
        }
    }
}
