use super::*;

#[test]
fn capability_names_with_or_without_prefix() {
    assert_eq!(parse_capability("NET_ADMIN"), Some(Capability::NetAdmin));
    assert_eq!(parse_capability("CAP_NET_ADMIN"), Some(Capability::NetAdmin));
    assert_eq!(parse_capability("cap_sys_admin"), Some(Capability::SysAdmin));
    assert_eq!(parse_capability("bogus"), None);
}

#[test]
fn all_capabilities_follow_the_kernel() {
    assert_eq!(all_capabilities(40).len(), 41);
    assert_eq!(all_capabilities(37).len(), 38);
    assert!(!all_capabilities(37).contains(&Capability::Bpf));
}

#[test]
fn ambient_drop_wins() {
    let ctx = Ctx::new("c");
    let caps = CriCapability {
        add_ambient_capabilities: vec!["NET_ADMIN".into()],
        drop_capabilities: vec!["NET_ADMIN".into()],
        ..Default::default()
    };
    let got = container_capabilities(&ctx, Some(&caps), false, 40).unwrap();
    assert!(!got.effective().as_ref().unwrap().contains(&Capability::NetAdmin));
    assert!(got.ambient().as_ref().unwrap().is_empty());
}

#[test]
fn seccomp_choice_from_typed_and_string_fields() {
    let ctx = Ctx::new("c");
    let f = "linux.security_context.seccomp";
    let typed = |t: ProfileType, r: &str| SecurityProfile { profile_type: t as i32, localhost_ref: r.into() };
    assert_eq!(choose_seccomp(&ctx, f, None, "", Seccomp::Unconfined).unwrap(), Seccomp::Unconfined);
    assert_eq!(choose_seccomp(&ctx, f, None, "", Seccomp::RuntimeDefault).unwrap(), Seccomp::RuntimeDefault);
    assert_eq!(
        choose_seccomp(&ctx, f, Some(&typed(ProfileType::Localhost, "localhost//p.json")), "", Seccomp::Unconfined)
            .unwrap(),
        Seccomp::Localhost("/p.json".into())
    );
    let err = choose_seccomp(&ctx, f, Some(&typed(ProfileType::RuntimeDefault, "/p.json")), "", Seccomp::Unconfined)
        .unwrap_err();
    assert_eq!(err.field(), "c.linux.security_context.seccomp.localhost_ref");
    let err =
        choose_seccomp(&ctx, f, Some(&typed(ProfileType::Localhost, "rel.json")), "", Seccomp::Unconfined).unwrap_err();
    assert_eq!(err.field(), "c.linux.security_context.seccomp.localhost_ref");
    let err = choose_seccomp(&ctx, f, None, "localhost/rel", Seccomp::Unconfined).unwrap_err();
    assert_eq!(err.field(), "c.linux.security_context.seccomp_profile_path");
}

#[test]
fn parses_oci_profiles_and_compiles_them() {
    let p = br#"{"defaultAction": "SCMP_ACT_ALLOW", "syscalls": [{"names": ["chmod", "fchmodat"], "action": "SCMP_ACT_ERRNO"}]}"#;
    let got = parse_seccomp_profile(p, &Capabilities::new()).unwrap();
    assert_eq!(got.syscalls().as_ref().unwrap()[0].names().len(), 2);
    assert!(parse_seccomp_profile(b"[]", &Capabilities::new()).unwrap_err().contains("object"));
    assert!(parse_seccomp_profile(b"{", &Capabilities::new()).is_err());
    let bad_action = br#"{"defaultAction": "SCMP_ACT_FROB"}"#;
    assert!(parse_seccomp_profile(bad_action, &Capabilities::new()).is_err());
}

#[test]
fn parses_docker_profiles_with_conditions() {
    let p = br#"{
        "defaultAction": "SCMP_ACT_ERRNO",
        "defaultErrnoRet": 1,
        "archMap": [{"architecture": "SCMP_ARCH_X86_64", "subArchitectures": ["SCMP_ARCH_X86", "SCMP_ARCH_X32"]}],
        "syscalls": [
            {"names": ["read", "write", "exit_group"], "action": "SCMP_ACT_ALLOW", "comment": "basic"},
            {"name": "mount", "action": "SCMP_ACT_ALLOW", "includes": {"caps": ["CAP_SYS_ADMIN"]}},
            {"names": ["ptrace"], "action": "SCMP_ACT_ALLOW", "excludes": {"caps": ["CAP_SYS_PTRACE"]}},
            {"names": ["arch_prctl"], "action": "SCMP_ACT_ALLOW", "includes": {"arches": ["amd64", "arm64"], "minKernel": "4.8"}}
        ]
    }"#;
    let plain = parse_seccomp_profile(p, &Capabilities::new()).unwrap();
    let names =
        |s: &LinuxSeccomp| s.syscalls().as_ref().unwrap().iter().flat_map(|c| c.names().clone()).collect::<Vec<_>>();
    assert_eq!(plain.architectures().as_ref().unwrap().len(), 3);
    let got = names(&plain);
    assert!(got.contains(&"ptrace".to_string()) && !got.contains(&"mount".to_string()), "{got:?}");
    assert!(got.contains(&"arch_prctl".to_string()));
    let admin: Capabilities = [Capability::SysAdmin, Capability::SysPtrace].into();
    let got = names(&parse_seccomp_profile(p, &admin).unwrap());
    assert!(got.contains(&"mount".to_string()) && !got.contains(&"ptrace".to_string()), "{got:?}");
}

#[test]
fn masked_paths_defaults_and_overrides() {
    let (m, r) = masked_and_readonly(&[], &[], false);
    assert_eq!((m.len(), r.len()), (DEFAULT_MASKED_PATHS.len(), DEFAULT_READONLY_PATHS.len()));
    let (m, r) = masked_and_readonly(&["/a".into()], &[], false);
    assert_eq!(m, vec!["/a"]);
    assert_eq!(r.len(), DEFAULT_READONLY_PATHS.len());
    let (m, r) = masked_and_readonly(&["/a".into()], &["/b".into()], true);
    assert!(m.is_empty() && r.is_empty());
}

#[test]
fn deprecated_apparmor_string_warns() {
    assert_eq!(ignored_profiles(None, "runtime/default", false).len(), 1);
    assert!(ignored_profiles(None, "unconfined", false).is_empty());
    assert!(ignored_profiles(None, "", false).is_empty());
    let rd = SecurityProfile::default();
    assert!(ignored_profiles(Some(&rd), "", false)[0].contains("runtime/default"));
}

#[test]
fn runtime_default_widens_for_capabilities() {
    let base = runtime_default(&Capabilities::new());
    assert_eq!(base, berth_runtime::seccomp::default_profile());
    let caps: Capabilities = [Capability::SysAdmin, Capability::SysPtrace, Capability::Syslog].into();
    let wide = runtime_default(&caps);
    let extra = wide.syscalls().as_ref().unwrap().last().unwrap().names().clone();
    for name in ["mount", "sethostname", "unshare", "ptrace", "syslog"] {
        assert!(extra.contains(&name.to_string()), "{name} missing from {extra:?}");
    }
    assert_eq!(extra.iter().filter(|n| *n == "syslog").count(), 1);
    assert!(!extra.contains(&"clone".to_string()) && !extra.contains(&"reboot".to_string()));
    berth_runtime::seccomp::compile(&wide).unwrap();
}
