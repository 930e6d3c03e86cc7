//! `berth-bridge`: the bridge plugin binary, run by a CNI runtime (CNI_COMMAND set) or, with a
//! subcommand argument (`info`, `create`, `setup`, `teardown`), by netavark as a Podman network
//! driver.

use berth_cni::netavark::{self, Subcommand};

fn main() {
    let argv1 = std::env::args().nth(1);
    let cni_command = std::env::var("CNI_COMMAND").ok();
    let code = match Subcommand::detect(argv1.as_deref(), cni_command.as_deref()) {
        Some(sub) => netavark::run(sub, std::env::args().nth(2).as_deref()),
        None => berth_cni::run(&berth_cni::bridge::Bridge),
    };
    std::process::exit(code);
}
