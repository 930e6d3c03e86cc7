//! `berth-portmap`: host port mappings (portMappings capability) as nftables DNAT, chained.

fn main() {
    std::process::exit(berth_cni::run(&berth_cni::portmap::Portmap));
}
