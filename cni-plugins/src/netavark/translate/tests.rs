//! Unit tests of the netavark translation: create defaults and refusals, setup's CNI
//! configuration, port mapping expansion and the status block.

use super::*;
use crate::netavark::types::{PerNetworkOptions, PortMapping};
use crate::result::{Interface, IpConfig};

fn network(extra: Value) -> Network {
    let mut v = json!({"name": "podnet", "id": "2f259bab93aaaaa2542ba43ef33eb990d0999ee1b9924b557b7be53c0b7a1bb9",
                       "driver": "berth-bridge", "subnets": [{"subnet": "10.89.0.0/24"}],
                       "ipv6_enabled": false, "internal": false, "dns_enabled": true,
                       "created": "2024-01-01T00:00:00Z", "labels": {"a": "b"}});
    for (k, val) in extra.as_object().unwrap() {
        v[k] = val.clone();
    }
    serde_json::from_value(v).unwrap()
}

fn exec(net: Network) -> PluginExec {
    PluginExec {
        container_id: "c1".into(),
        container_name: "ctr".into(),
        port_mappings: None,
        network: net,
        network_options: PerNetworkOptions {
            interface_name: "eth0".into(),
            static_ips: None,
            static_mac: None,
            aliases: None,
            options: None,
        },
    }
}

#[test]
fn create_fills_defaults_and_keeps_the_rest() {
    let net = complete(network(json!({"subnets": [{"subnet": "10.89.0.7/24"}, {"subnet": "fd10::/64"}]}))).unwrap();
    let s = net.subnets.as_ref().unwrap();
    assert_eq!((s[0].subnet.as_str(), s[0].gateway), ("10.89.0.0/24", Some("10.89.0.1".parse().unwrap())));
    assert_eq!(s[1].gateway, Some("fd10::1".parse().unwrap()));
    assert!(net.ipv6_enabled && !net.dns_enabled);
    assert_eq!(net.network_interface.as_deref(), Some("bn2f259bab93aa"));
    assert_eq!(net.ipam_options.as_ref().unwrap()["driver"], "host-local");
    let out = serde_json::to_value(&net).unwrap();
    assert_eq!((out["name"].as_str(), out["driver"].as_str()), (Some("podnet"), Some("berth-bridge")));
    assert_eq!(out["labels"]["a"], "b", "unknown fields survive");
    assert_eq!(out["created"], "2024-01-01T00:00:00Z");
}

#[test]
fn create_rejects_what_it_cannot_serve() {
    let err = |extra| complete(network(extra)).unwrap_err();
    assert!(matches!(err(json!({"subnets": []})), TranslateError::NoSubnet { .. }));
    assert!(matches!(err(json!({"subnets": [{"subnet": "10.89.0.0/33"}]})), TranslateError::BadSubnet { .. }));
    assert!(matches!(
        err(json!({"subnets": [{"subnet": "10.89.0.0/16"}, {"subnet": "10.89.3.0/24"}]})),
        TranslateError::Overlap { .. }
    ));
    assert!(matches!(
        err(json!({"subnets": [{"subnet": "10.89.0.0/24", "gateway": "10.90.0.1"}]})),
        TranslateError::GatewayOutside { .. }
    ));
    assert!(matches!(err(json!({"options": {"isolate": "true"}})), TranslateError::UnknownOption { .. }));
    assert!(matches!(err(json!({"options": {"mtu": "9"}})), TranslateError::BadOption { .. }));
    assert!(matches!(err(json!({"ipam_options": {"driver": "dhcp"}})), TranslateError::IpamDriver { .. }));
    assert!(matches!(err(json!({"network_interface": "a/b"})), TranslateError::BadIfname { .. }));
    let none = complete(network(json!({"subnets": [], "ipam_options": {"driver": "none"}}))).unwrap();
    assert!(bridge_conf(&exec(none)).unwrap().get("ipam").is_none());
}

#[test]
fn setup_conf_maps_options_ips_and_mac() {
    let net = network(json!({"network_interface": "br-x", "options": {"mtu": "1400", "vlan": "7"},
        "subnets": [{"subnet": "10.89.0.0/24", "lease_range": {"start_ip": "10.89.0.100", "end_ip": "10.89.0.200"}}],
        "routes": [{"destination": "10.200.0.0/16", "gateway": "10.89.0.254"}]}));
    let mut e = exec(net);
    e.network_options.static_ips = Some(vec!["10.89.0.150".parse().unwrap()]);
    e.network_options.static_mac = Some("0a:58:0a:59:00:96".into());
    let c = bridge_conf(&e).unwrap();
    assert_eq!((c["bridge"].as_str(), c["mtu"].as_u64(), c["vlan"].as_u64()), (Some("br-x"), Some(1400), Some(7)));
    assert_eq!((c["isDefaultGateway"].as_bool(), c["ipMasq"].as_bool()), (Some(true), Some(true)));
    let r = &c["ipam"]["ranges"][0][0];
    assert_eq!((r["rangeStart"].as_str(), r["gateway"].as_str()), (Some("10.89.0.100"), Some("10.89.0.1")));
    assert_eq!(c["ipam"]["routes"][0]["gw"], "10.89.0.254");
    assert_eq!(c["runtimeConfig"]["ips"][0], "10.89.0.150");
    assert_eq!(c["runtimeConfig"]["mac"], "0a:58:0a:59:00:96");
    let internal = bridge_conf(&exec(network(json!({"internal": true})))).unwrap();
    assert_eq!((internal["isDefaultGateway"].as_bool(), internal["ipMasq"].as_bool()), (Some(false), Some(false)));
}

#[test]
fn port_mappings_expand_ranges_and_protocols() {
    let mut e = exec(network(json!({})));
    assert_eq!(portmap_conf(&e, &Value::Null).unwrap(), None);
    e.port_mappings = Some(vec![PortMapping {
        container_port: 80,
        host_ip: "127.0.0.1".into(),
        host_port: 8080,
        protocol: "tcp,udp".into(),
        range: 2,
    }]);
    let c = portmap_conf(&e, &json!({"cniVersion": "1.1.0"})).unwrap().unwrap();
    let list = c["runtimeConfig"]["portMappings"].as_array().unwrap();
    assert_eq!(list.len(), 4);
    assert_eq!(list[1], json!({"hostPort": 8081, "containerPort": 81, "protocol": "tcp", "hostIP": "127.0.0.1"}));
    assert_eq!(c["prevResult"]["cniVersion"], "1.1.0");
    e.port_mappings.as_mut().unwrap()[0].host_port = 65535;
    assert!(matches!(portmap_conf(&e, &Value::Null), Err(TranslateError::BadPort { .. })));
}

#[test]
fn status_block_names_the_container_interface() {
    let result = CniResult {
        interfaces: vec![
            Interface { name: "br-x".into(), mac: Some("aa:aa:aa:aa:aa:aa".into()), ..Default::default() },
            Interface {
                name: "eth0".into(),
                mac: Some("0a:58:0a:59:00:96".into()),
                sandbox: Some("/run/netns/x".into()),
                ..Default::default()
            },
        ],
        ips: vec![IpConfig {
            interface: Some(1),
            address: "10.89.0.150/24".parse().unwrap(),
            gateway: Some("10.89.0.1".parse().unwrap()),
        }],
        ..Default::default()
    };
    let v = serde_json::to_value(status_block(&result, "eth0")).unwrap();
    assert_eq!(
        v,
        json!({"dns_search_domains": [], "dns_server_ips": [], "interfaces": {"eth0": {
        "mac_address": "0a:58:0a:59:00:96", "subnets": [{"ipnet": "10.89.0.150/24", "gateway": "10.89.0.1"}]}}})
    );
}
