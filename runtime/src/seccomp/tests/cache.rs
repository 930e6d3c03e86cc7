//! `compile_cached`: what it hands out is what `compile` gives.

use super::super::{compile, compile_cached, Filter};

fn words(f: &Filter) -> Vec<(u16, u8, u8, u32)> {
    f.program.iter().map(|i| (i.code, i.jt, i.jf, i.k)).collect()
}

#[test]
fn remembered_profiles_give_the_programs_a_fresh_compile_gives() {
    let deny = |name: &str| -> oci_spec::runtime::LinuxSeccomp {
        serde_json::from_value(serde_json::json!({"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": [name], "action": "SCMP_ACT_ERRNO"}]})).expect("profile")
    };
    // More profiles than are remembered, twice over: hits, misses and evictions.
    for _ in 0..2 {
        for name in ["mkdir", "chmod", "mount", "umount2", "unshare", "setns"] {
            let p = deny(name);
            assert_eq!(words(&compile_cached(&p).unwrap()), words(&compile(&p).unwrap()), "{name}");
        }
    }
    assert_ne!(words(&compile_cached(&deny("mkdir")).unwrap()), words(&compile_cached(&deny("chmod")).unwrap()));
}
