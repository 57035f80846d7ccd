//! `nrl-agent`: the lab's pod server and probe client (see `netray_lab::agent`).

fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    std::process::exit(netray_lab::agent::main_with_args(&args));
}
