//! Bring up a lab, print its namespaces, apply faults given as arguments, wait for Enter,
//! tear down. For poking at the lab by hand: `cargo run -p netray-lab --example labshell -- forward-drop:node1`.
use netray_lab::{Agent, ClusterSpec, Fault, Lab};

fn main() {
    let agent = Agent::locate().expect("build nrl-agent first: cargo build -p netray-lab");
    let mut lab = Lab::up(&ClusterSpec::standard(3, 2), &agent).expect("lab up");
    for a in std::env::args().skip(1) {
        let f: Fault = a.parse().expect("fault");
        lab.apply(&f).expect("apply");
    }
    for (m, ns) in lab.namespaces() {
        println!("{m:8} {ns}");
    }
    let mut s = String::new();
    let _ = std::io::stdin().read_line(&mut s);
}
