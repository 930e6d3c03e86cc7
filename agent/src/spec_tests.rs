use super::*;
use k8s_openapi::api::core::v1::{
    ConfigMapEnvSource, ConfigMapKeySelector, ContainerPort, EnvFromSource, EnvVarSource, ObjectFieldSelector, PodSpec,
    SecretKeySelector,
};
use k8s_openapi::apimachinery::pkg::api::resource::Quantity as Q;

struct Sources;

impl EnvSources for Sources {
    fn config_map(&self, _ns: &str, name: &str) -> Option<BTreeMap<String, String>> {
        (name == "cfg")
            .then(|| BTreeMap::from([("MODE".to_string(), "fast".to_string()), ("LEVEL".to_string(), "3".to_string())]))
    }
    fn secret(&self, _ns: &str, name: &str) -> Option<BTreeMap<String, String>> {
        (name == "creds").then(|| BTreeMap::from([("password".to_string(), "hunter2".to_string())]))
    }
    fn pod_ip(&self) -> Option<String> {
        Some("10.1.2.3".into())
    }
    fn host_ip(&self) -> Option<String> {
        Some("192.168.0.10".into())
    }
}

fn res(requests: &[(&str, &str)], limits: &[(&str, &str)]) -> Option<ResourceRequirements> {
    let m = |v: &[(&str, &str)]| {
        (!v.is_empty()).then(|| v.iter().map(|(k, q)| (k.to_string(), Q(q.to_string()))).collect())
    };
    Some(ResourceRequirements { requests: m(requests), limits: m(limits), ..Default::default() })
}

fn pod(containers: Vec<Container>) -> Pod {
    let mut p = Pod::default();
    p.metadata.name = Some("web".into());
    p.metadata.namespace = Some("prod".into());
    p.metadata.uid = Some("u-1".into());
    p.metadata.labels = Some(BTreeMap::from([("app".to_string(), "web".to_string())]));
    p.spec = Some(PodSpec { containers, node_name: Some("node-1".into()), ..Default::default() });
    p
}

fn container(name: &str) -> Container {
    Container { name: name.into(), image: Some("busybox".into()), ..Default::default() }
}

#[test]
fn qos_classes() {
    let mut c = container("a");
    assert_eq!(qos_class(&pod(vec![c.clone()])), QosClass::BestEffort);
    c.resources = res(&[], &[("cpu", "500m"), ("memory", "64Mi")]);
    assert_eq!(qos_class(&pod(vec![c.clone()])), QosClass::Guaranteed, "requests default to limits");
    c.resources = res(&[("cpu", "100m")], &[("cpu", "500m"), ("memory", "64Mi")]);
    assert_eq!(qos_class(&pod(vec![c.clone()])), QosClass::Burstable);
    let mut other = container("b");
    other.resources = res(&[], &[("cpu", "1"), ("memory", "1Gi")]);
    assert_eq!(qos_class(&pod(vec![other, container("c")])), QosClass::Burstable, "one container without limits");
}

#[test]
fn resources_as_kubelet_computes_them() {
    let mut c = container("a");
    c.resources = res(&[("cpu", "250m"), ("memory", "1Gi")], &[("cpu", "500m"), ("memory", "2Gi")]);
    let r = container_resources(&c, QosClass::Burstable, 8 << 30);
    assert_eq!((r.cpu_shares, r.cpu_period, r.cpu_quota, r.memory_limit_in_bytes), (256, 100_000, 50_000, 2 << 30));
    assert_eq!(r.oom_score_adj, 1000 - 1000 / 8);
    let r = container_resources(&container("b"), QosClass::BestEffort, 8 << 30);
    assert_eq!((r.cpu_shares, r.cpu_quota, r.memory_limit_in_bytes, r.oom_score_adj), (2, 0, 0, 1000));
    c.resources = res(&[], &[("cpu", "1m"), ("memory", "8Gi")]);
    let r = container_resources(&c, QosClass::Guaranteed, 8 << 30);
    assert_eq!((r.cpu_quota, r.oom_score_adj), (1000, -997), "minimum quota; guaranteed score");
    c.resources = res(&[("memory", "8Gi")], &[]);
    assert_eq!(container_resources(&c, QosClass::Burstable, 8 << 30).oom_score_adj, 3, "floor for burstable");
}

#[test]
fn expansion_follows_kubernetes_rules() {
    let env = HashMap::from([("A".to_string(), "x".to_string()), ("B".to_string(), "$(A)".to_string())]);
    assert_eq!(expand("$(A)-$(B)", &env), "x-$(A)");
    assert_eq!(expand("$$(A) $(MISSING) $", &env), "$(A) $(MISSING) $");
    assert_eq!(expand("$(A", &env), "$(A");
    assert_eq!(expand("a$b", &env), "a$b");
}

#[test]
fn env_from_every_source_in_order() {
    let mut c = container("a");
    c.env_from = Some(vec![EnvFromSource {
        config_map_ref: Some(ConfigMapEnvSource { name: "cfg".into(), optional: None }),
        prefix: Some("CFG_".into()),
        ..Default::default()
    }]);
    let from = |s: EnvVarSource| EnvVar { value_from: Some(s), ..Default::default() };
    c.env = Some(vec![
        EnvVar { name: "GREETING".into(), value: Some("hi $(CFG_MODE)".into()), ..Default::default() },
        EnvVar {
            name: "POD".into(),
            ..from(EnvVarSource {
                field_ref: Some(ObjectFieldSelector { field_path: "metadata.name".into(), ..Default::default() }),
                ..Default::default()
            })
        },
        EnvVar {
            name: "APP".into(),
            ..from(EnvVarSource {
                field_ref: Some(ObjectFieldSelector {
                    field_path: "metadata.labels['app']".into(),
                    ..Default::default()
                }),
                ..Default::default()
            })
        },
        EnvVar {
            name: "IP".into(),
            ..from(EnvVarSource {
                field_ref: Some(ObjectFieldSelector { field_path: "status.podIP".into(), ..Default::default() }),
                ..Default::default()
            })
        },
        EnvVar {
            name: "PW".into(),
            ..from(EnvVarSource {
                secret_key_ref: Some(SecretKeySelector {
                    name: "creds".into(),
                    key: "password".into(),
                    optional: None,
                }),
                ..Default::default()
            })
        },
        EnvVar {
            name: "OPT".into(),
            ..from(EnvVarSource {
                config_map_key_ref: Some(ConfigMapKeySelector {
                    name: "nope".into(),
                    key: "x".into(),
                    optional: Some(true),
                }),
                ..Default::default()
            })
        },
        EnvVar { name: "CFG_LEVEL".into(), value: Some("override".into()), ..Default::default() },
    ]);
    let p = pod(vec![c.clone()]);
    let env = container_env(&p, &c, &Sources).unwrap();
    let got: Vec<(&str, &str)> = env.iter().map(|(k, v)| (k.as_str(), v.as_str())).collect();
    assert_eq!(
        got,
        vec![
            ("CFG_LEVEL", "override"),
            ("CFG_MODE", "fast"),
            ("GREETING", "hi fast"),
            ("POD", "web"),
            ("APP", "web"),
            ("IP", "10.1.2.3"),
            ("PW", "hunter2")
        ]
    );

    c.env = Some(vec![EnvVar {
        name: "X".into(),
        ..from(EnvVarSource {
            config_map_key_ref: Some(ConfigMapKeySelector { name: "cfg".into(), key: "NOPE".into(), optional: None }),
            ..Default::default()
        })
    }]);
    let err = container_env(&p, &c, &Sources).unwrap_err();
    assert_eq!(err.to_string(), "env X: key \"NOPE\" not found in configMap \"cfg\"");
}

#[test]
fn sandbox_and_container_configs_carry_identity_and_ports() {
    let mut c = container("app");
    c.ports = Some(vec![
        ContainerPort { container_port: 80, host_port: Some(8080), ..Default::default() },
        ContainerPort { container_port: 9090, ..Default::default() },
    ]);
    c.command = Some(vec!["sh".into(), "-c".into()]);
    c.args = Some(vec!["echo $(NAME)".into()]);
    let p = pod(vec![c.clone()]);
    let node = NodeFacts {
        log_root: "/var/log/pods".into(),
        cluster_dns: vec!["10.96.0.10".into()],
        cluster_domain: "cluster.local".into(),
        cgroup_parent: "/kubepods".into(),
    };
    let sb = sandbox_config(&p, 1, &node);
    assert_eq!(sb.metadata.as_ref().unwrap().attempt, 1);
    assert_eq!(sb.linux.as_ref().unwrap().cgroup_parent, "/kubepods/besteffort/podu-1", "the QoS hierarchy");
    assert_eq!(sb.log_directory, "/var/log/pods/prod_web_u-1");
    assert_eq!(sb.port_mappings.len(), 1, "only host ports");
    assert_eq!(sb.labels[LABEL_POD_UID], "u-1");
    assert_eq!(sb.dns_config.as_ref().unwrap().searches[0], "prod.svc.cluster.local");
    let env = vec![("NAME".to_string(), "berth".to_string())];
    let cfg = container_config(
        &p,
        &ContainerInput {
            container: &c,
            restart_count: 2,
            env: &env,
            mounts: vec![],
            image: "busybox".into(),
            qos: QosClass::BestEffort,
            memory_capacity: 1 << 30,
        },
    );
    assert_eq!(cfg.args, vec!["echo berth"]);
    assert_eq!(cfg.log_path, "app/2.log");
    assert_eq!(cfg.metadata.unwrap().attempt, 2);
    assert_eq!(cfg.annotations[ANN_RESTART_COUNT], "2");
}

#[test]
fn pull_secrets_match_the_image_registry() {
    let cfg = br#"{"auths":{"registry.example:5000":{"username":"u","password":"p"},"https://index.docker.io/v1/":{"auth":"dTpw"}}}"#.to_vec();
    let a = pull_auth(std::slice::from_ref(&cfg), "registry.example:5000/team/app:1").unwrap();
    assert_eq!((a.username.as_str(), a.password.as_str()), ("u", "p"));
    assert_eq!(pull_auth(std::slice::from_ref(&cfg), "busybox").unwrap().auth, "dTpw", "short names are docker.io");
    assert!(pull_auth(&[cfg], "quay.io/x/y").is_none());
    assert_eq!(registry_of("localhost:5000/x"), "localhost:5000");
}
