//! `berth-vxlan`: the VXLAN overlay (one VXLAN device per node, pods on the node's bridge).
//! `berth-vxlan sync` applies the peer list of the config on stdin without a pod.

use berth_cni::overlay::{sync_command, Mode, Overlay};

fn main() {
    if std::env::args().nth(1).as_deref() == Some("sync") {
        std::process::exit(sync_command(Mode::Vxlan));
    }
    std::process::exit(berth_cni::run(&Overlay(Mode::Vxlan)));
}
