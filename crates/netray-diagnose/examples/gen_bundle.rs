//! Write a synthetic Kubernetes-scale bundle for end-to-end timing of the `netray` binary:
//! `cargo run --release -p netray-diagnose --example gen_bundle -- DIR NODES SERVICES`
//! (10 pods per node, 3 endpoints per Service), then e.g. `hyperfine 'netray scan --bundle DIR'`.

#[path = "../benches/support/synth_bundle.rs"]
mod synth_bundle;

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [dir, nodes, services] = args.as_slice() else {
        eprintln!("usage: gen_bundle DIR NODES SERVICES");
        std::process::exit(2);
    };
    let spec = synth_bundle::Spec {
        nodes: nodes.parse().expect("NODES"),
        pods_per_node: 10,
        services: services.parse().expect("SERVICES"),
        endpoints: 3,
    };
    synth_bundle::write_bundle(std::path::Path::new(dir), &spec).expect("write bundle");
}
