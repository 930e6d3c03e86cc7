//! `berth-host-gw`: the host-gw overlay (a route per peer's pod subnet via its underlay IP).
//! `berth-host-gw sync` applies the peer list of the config on stdin without a pod.

use berth_cni::overlay::{sync_command, Mode, Overlay};

fn main() {
    if std::env::args().nth(1).as_deref() == Some("sync") {
        std::process::exit(sync_command(Mode::HostGw));
    }
    std::process::exit(berth_cni::run(&Overlay(Mode::HostGw)));
}
