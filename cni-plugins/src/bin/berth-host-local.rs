//! `berth-host-local`: the host-local IPAM plugin binary, run by a CNI runtime.

fn main() {
    std::process::exit(berth_cni::run(&berth_cni::ipam::HostLocal));
}
