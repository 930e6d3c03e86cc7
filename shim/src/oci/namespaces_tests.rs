use super::*;
use berth_proto::runtime::v1::UserNamespace;

fn ctx() -> Ctx {
    Ctx::new("sandbox[p]")
}

fn m(network: NamespaceMode, ipc: NamespaceMode, pid: NamespaceMode) -> Modes {
    Modes { network, ipc, pid, user: None }
}

fn types(v: &[LinuxNamespace]) -> Vec<(LinuxNamespaceType, bool)> {
    v.iter().map(|n| (n.typ(), n.path().is_some())).collect()
}

#[test]
fn modes_default_to_pod_and_refuse_unsupported() {
    let got = modes(&ctx(), None).unwrap();
    assert_eq!(got, m(NamespaceMode::Pod, NamespaceMode::Pod, NamespaceMode::Pod));
    let opts = NamespaceOption { network: NamespaceMode::Container as i32, ..Default::default() };
    assert_eq!(
        modes(&ctx(), Some(&opts)).unwrap_err().field(),
        "sandbox[p].linux.security_context.namespace_options.network"
    );
    let opts = NamespaceOption { pid: 17, ..Default::default() };
    assert_eq!(
        modes(&ctx(), Some(&opts)).unwrap_err().field(),
        "sandbox[p].linux.security_context.namespace_options.pid"
    );
    let node = NamespaceOption {
        userns_options: Some(UserNamespace { mode: NamespaceMode::Node as i32, ..Default::default() }),
        ..Default::default()
    };
    assert!(modes(&ctx(), Some(&node)).is_ok());
    let target = NamespaceOption {
        userns_options: Some(UserNamespace { mode: NamespaceMode::Target as i32, ..Default::default() }),
        ..Default::default()
    };
    assert!(modes(&ctx(), Some(&target)).is_err());
}

#[test]
fn sandbox_gets_new_namespaces_unless_host() {
    use LinuxNamespaceType::*;
    let pod = m(NamespaceMode::Pod, NamespaceMode::Pod, NamespaceMode::Container);
    assert_eq!(types(&sandbox_namespaces(pod, None)), vec![(Network, false), (Uts, false), (Ipc, false), (Pid, false)]);
    let joined = sandbox_namespaces(pod, Some(Path::new("/run/netns/x")));
    assert_eq!(joined[0].path().as_deref(), Some(Path::new("/run/netns/x")));
    let host = m(NamespaceMode::Node, NamespaceMode::Node, NamespaceMode::Node);
    assert_eq!(types(&sandbox_namespaces(host, None)), vec![]);
}

#[test]
fn missing_pod_namespace_paths_are_errors() {
    let c = Ctx::new("containers[c]");
    let pod = m(NamespaceMode::Pod, NamespaceMode::Pod, NamespaceMode::Pod);
    let err =
        container_namespaces(&c, pod, NamespaceMode::Pod, "", &PodNamespaces::default(), None, false).unwrap_err();
    assert_eq!(err.field(), "containers[c].linux.security_context.namespace_options.network");
    let paths = PodNamespaces { pid: None, ..PodNamespaces::of_pid(1) };
    let err = container_namespaces(&c, pod, NamespaceMode::Pod, "", &paths, None, false).unwrap_err();
    assert_eq!(err.field(), "containers[c].linux.security_context.namespace_options.pid");
    let err =
        container_namespaces(&c, pod, NamespaceMode::Target, "", &paths, Some(Path::new("/x")), false).unwrap_err();
    assert_eq!(err.field(), "containers[c].linux.security_context.namespace_options.target_id");
}

#[test]
fn sysctls_must_be_namespaced_and_owned() {
    let pod = m(NamespaceMode::Pod, NamespaceMode::Pod, NamespaceMode::Pod);
    let s =
        |pairs: &[(&str, &str)]| pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect::<HashMap<_, _>>();
    let got = sandbox_sysctls(
        &ctx(),
        &s(&[("net/ipv4/ip_forward", "1"), ("kernel.shmmax", "1"), ("fs.mqueue.msg_max", "20")]),
        pod,
        false,
        false,
    )
    .unwrap();
    assert_eq!(got, s(&[("net.ipv4.ip_forward", "1"), ("kernel.shmmax", "1"), ("fs.mqueue.msg_max", "20")]));
    let err = sandbox_sysctls(&ctx(), &s(&[("vm.swappiness", "1")]), pod, false, false).unwrap_err();
    assert_eq!(err.field(), "sandbox[p].linux.sysctls[vm.swappiness]");
    let host_net = m(NamespaceMode::Node, NamespaceMode::Pod, NamespaceMode::Pod);
    assert!(sandbox_sysctls(&ctx(), &s(&[("net.core.somaxconn", "1")]), host_net, false, false).is_err());
    let host_ipc = m(NamespaceMode::Pod, NamespaceMode::Node, NamespaceMode::Pod);
    assert!(sandbox_sysctls(&ctx(), &s(&[("kernel.msgmax", "1")]), host_ipc, false, false).is_err());
}

#[test]
fn unprivileged_ports_and_icmp_defaults() {
    let pod = m(NamespaceMode::Pod, NamespaceMode::Pod, NamespaceMode::Pod);
    let given: HashMap<String, String> = [("net.ipv4.ip_unprivileged_port_start".to_string(), "80".to_string())].into();
    let got = sandbox_sysctls(&ctx(), &given, pod, true, true).unwrap();
    assert_eq!(got["net.ipv4.ip_unprivileged_port_start"], "80");
    assert_eq!(got["net.ipv4.ping_group_range"], "0 2147483647");
    let host_net = m(NamespaceMode::Node, NamespaceMode::Pod, NamespaceMode::Pod);
    assert!(sandbox_sysctls(&ctx(), &HashMap::new(), host_net, true, true).unwrap().is_empty());
}

fn userns(uids: Vec<(u32, u32, u32)>) -> NamespaceOption {
    let maps = |v: &[(u32, u32, u32)]| {
        v.iter()
            .map(|&(container_id, host_id, length)| berth_proto::runtime::v1::IdMapping {
                container_id,
                host_id,
                length,
            })
            .collect::<Vec<_>>()
    };
    let gids = maps(&[(0, 1000, 100_000)]);
    NamespaceOption {
        userns_options: Some(UserNamespace { mode: NamespaceMode::Pod as i32, uids: maps(&uids), gids }),
        ..Default::default()
    }
}

#[test]
fn pod_user_namespaces_take_one_range_from_zero() {
    let got = modes(&ctx(), Some(&userns(vec![(0, 1000, 100_000)]))).unwrap();
    let range = IdRange { host_id: 1000, length: 100_000 };
    assert_eq!(got.user, Some(UserNs { uids: range, gids: range }));
    let field = "sandbox[p].linux.security_context.namespace_options.userns_options.uids";
    for bad in [
        vec![(0, 1000, 100_000), (0, 2000, 100_000)],
        vec![(1, 1000, 100_000)],
        vec![(0, 1000, 0)],
        vec![(0, 0, 65536)],
        vec![(0, u32::MAX, 2)],
        vec![],
    ] {
        let err = modes(&ctx(), Some(&userns(bad.clone()))).unwrap_err();
        assert_eq!(err.field(), field, "{bad:?}");
    }
    for mode in [NamespaceMode::Container, NamespaceMode::Target] {
        let opts = NamespaceOption {
            userns_options: Some(UserNamespace { mode: mode as i32, ..Default::default() }),
            ..Default::default()
        };
        assert!(modes(&ctx(), Some(&opts)).unwrap_err().to_string().contains("not supported"), "{mode:?}");
    }
    let host_net = NamespaceOption { network: NamespaceMode::Node as i32, ..userns(vec![(0, 1000, 100_000)]) };
    assert!(modes(&ctx(), Some(&host_net)).is_err(), "no pod user namespace with the host network");
}

#[test]
fn a_user_namespace_pod_owns_a_new_network_namespace() {
    use LinuxNamespaceType::*;
    let pod = modes(&ctx(), Some(&userns(vec![(0, 1000, 100_000)]))).unwrap();
    let got = sandbox_namespaces(pod, Some(Path::new("/run/netns/x")));
    assert_eq!(
        types(&got),
        vec![(Mount, false), (User, false), (Network, false), (Uts, false), (Ipc, false), (Pid, false)]
    );
    let sysctls = sandbox_sysctls(&ctx(), &HashMap::new(), pod, true, true).unwrap();
    assert_eq!(sysctls["net.ipv4.ping_group_range"], "0 99999", "only mapped groups");
}
