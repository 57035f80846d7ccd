//! Write one generated bundle for the end-to-end measurements (scripts/scale-measure.sh):
//! `cargo bench -p netray-diagnose --bench gen_bundle -- DIR NODES SERVICES [PODS_PER_NODE]
//! [ENDPOINTS]` (10 pods per node and 3 endpoints per Service unless given). Not a timing:
//! the binary only writes the bundle (see support/synth_bundle.rs for its shape).

#[path = "support/synth_bundle.rs"]
mod synth_bundle;

fn main() {
    // cargo bench passes `--bench`; the rest are ours.
    let args: Vec<String> = std::env::args()
        .skip(1)
        .filter(|a| !a.starts_with("--"))
        .collect();
    if args.len() < 3 {
        eprintln!("usage: gen_bundle DIR NODES SERVICES [PODS_PER_NODE] [ENDPOINTS]");
        std::process::exit(2);
    }
    let num = |i: usize, default: usize| -> usize {
        args.get(i)
            .map(|a| a.parse().expect("a number"))
            .unwrap_or(default)
    };
    let spec = synth_bundle::Spec {
        nodes: num(1, 0),
        pods_per_node: num(3, 10),
        services: num(2, 0),
        endpoints: num(4, 3),
    };
    let dir = std::path::Path::new(&args[0]);
    synth_bundle::write_bundle(dir, &spec).expect("write the bundle");
    eprintln!("{}: {spec:?}", dir.display());
}
