//! Compiles the vendored CRI `runtime.v1` API (proto/runtime/v1/api.proto) into tonic server and
//! client code with protoc from Debian's `protobuf-compiler` package (installed by scripts/deps).

use std::path::{Path, PathBuf};
use std::process::Command;

const CRI_PROTO: &str = "proto/runtime/v1/api.proto";

fn main() {
    println!("cargo:rerun-if-changed={CRI_PROTO}");
    println!("cargo:rerun-if-env-changed=PROTOC");
    let protoc = std::env::var_os("PROTOC").map_or_else(|| PathBuf::from("protoc"), PathBuf::from);
    check_protoc(&protoc);
    // prost-build resolves protoc the same way: $PROTOC, else `protoc` on PATH.
    tonic_prost_build::configure()
        .compile_protos(&[CRI_PROTO], &["proto"])
        .unwrap_or_else(|e| panic!("compiling {CRI_PROTO} with {}: {e}", protoc.display()));
}

/// Fails the build with a message naming the Debian package when protoc cannot be run.
fn check_protoc(protoc: &Path) {
    match Command::new(protoc).arg("--version").output() {
        Ok(out) if out.status.success() => {}
        Ok(out) => panic!(
            "`{} --version` failed ({}): install Debian's `protobuf-compiler` package \
             (scripts/deps does) or point PROTOC at a working protoc",
            protoc.display(),
            out.status
        ),
        Err(e) => panic!(
            "cannot run protoc (`{}`: {e}): install Debian's `protobuf-compiler` package \
             (scripts/deps does) or point PROTOC at a protoc binary",
            protoc.display()
        ),
    }
}
