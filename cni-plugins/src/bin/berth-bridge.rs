//! `berth-bridge`: the bridge plugin binary, run by a CNI runtime.

fn main() {
    std::process::exit(berth_cni::run(&berth_cni::bridge::Bridge));
}
