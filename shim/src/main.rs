//! The `berth-shim` binary.

fn main() {
    eprintln!("berth-shim: not yet serving");
    std::process::exit(1);
}
