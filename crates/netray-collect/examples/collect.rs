//! Development driver: `cargo run -p netray-collect --example collect -- [NETNS...]`
//! prints the snapshot as JSON (the real entry point is `netray collect`).

fn main() {
    let opts = netray_collect::Options {
        netns: std::env::args().skip(1).collect(),
        ..Default::default()
    };
    match netray_collect::collect(&opts) {
        Ok(s) => println!("{}", serde_json::to_string_pretty(&s).unwrap_or_default()),
        Err(e) => {
            eprintln!("error: {e}");
            std::process::exit(2);
        }
    }
}
