//! berth-bridge configuration: the reference bridge plugin's options, validated before any I/O.

use std::path::PathBuf;

use serde::Deserialize;
use serde_json::Value;

use crate::cidr::Cidr;
use crate::error::{CniError, ErrorCode};
use crate::netlink::parse_mac;
use crate::skel::CmdArgs;
use crate::state::{fnv1a, DEFAULT_STATE_DIR};

#[derive(Debug, Default, Deserialize)]
#[serde(rename_all = "camelCase")]
struct Raw {
    bridge: Option<String>,
    #[serde(default)]
    is_gateway: bool,
    #[serde(default)]
    is_default_gateway: bool,
    #[serde(default)]
    force_address: bool,
    mtu: Option<u32>,
    #[serde(default)]
    hairpin_mode: bool,
    #[serde(default)]
    promisc_mode: bool,
    vlan: Option<u32>,
    #[serde(default)]
    macspoofchk: bool,
    /// Berth: destinations never masqueraded besides the pod subnets (e.g. the cluster CIDR).
    #[serde(default)]
    ip_masq_exclude: Vec<Cidr>,
    /// Berth: where attachment records live (default /run/berth/cni).
    state_dir: Option<PathBuf>,
}

/// A validated bridge configuration.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BridgeConf {
    pub bridge: String,
    pub is_gateway: bool,
    pub is_default_gateway: bool,
    pub force_address: bool,
    pub ip_masq: bool,
    pub ip_masq_exclude: Vec<Cidr>,
    pub mtu: Option<u32>,
    pub hairpin: bool,
    pub promisc: bool,
    pub vlan: Option<u16>,
    pub macspoofchk: bool,
    /// The IPAM plugin's type, if any (none = L2 only).
    pub ipam: Option<String>,
    /// The container interface's MAC from runtimeConfig.mac or CNI_ARGS MAC=.
    pub mac: Option<[u8; 6]>,
    pub state_dir: PathBuf,
}

fn invalid(msg: String) -> CniError {
    CniError::new(ErrorCode::InvalidNetworkConfig, msg)
}

/// Linux interface names: 1–15 bytes, no '/', whitespace or ':'.
pub fn valid_ifname(name: &str) -> bool {
    !name.is_empty()
        && name.len() <= 15
        && name != "."
        && name != ".."
        && !name.contains(|c: char| c == '/' || c == ':' || c.is_whitespace())
}

impl BridgeConf {
    pub fn parse(args: &CmdArgs) -> Result<BridgeConf, CniError> {
        let raw: Raw = serde_json::from_value(Value::Object(args.conf.plugin.clone()))
            .map_err(|e| invalid(format!("invalid bridge configuration: {e}")))?;
        let bridge = raw.bridge.unwrap_or_else(|| "cni0".to_string());
        if !valid_ifname(&bridge) {
            return Err(invalid(format!("bridge name {bridge:?} is not a valid interface name")));
        }
        if !valid_ifname(&args.env.ifname) {
            let msg = format!("CNI_IFNAME {:?} is not a valid interface name", args.env.ifname);
            return Err(CniError::new(ErrorCode::InvalidEnv, msg));
        }
        if let Some(mtu) = raw.mtu {
            if !(68..=65535).contains(&mtu) {
                return Err(invalid(format!("mtu {mtu} is outside 68..65535")));
            }
        }
        let vlan = match raw.vlan {
            None | Some(0) => None,
            Some(v) if v < 4095 => Some(v as u16),
            Some(v) => return Err(invalid(format!("vlan {v} is outside 1..4094"))),
        };
        let mac_text = args
            .conf
            .runtime("mac")
            .and_then(Value::as_str)
            .map(str::to_string)
            .or_else(|| args.env.arg("MAC").map(str::to_string));
        let mac = match mac_text {
            None => None,
            Some(t) => Some(parse_mac(&t).ok_or_else(|| invalid(format!("invalid MAC address {t:?}")))?),
        };
        let ipam = args.conf.ipam.as_ref().map(|i| i.plugin_type.clone()).filter(|t| !t.is_empty());
        Ok(BridgeConf {
            bridge,
            is_gateway: raw.is_gateway || raw.is_default_gateway,
            is_default_gateway: raw.is_default_gateway,
            force_address: raw.force_address,
            ip_masq: args.conf.ip_masq.unwrap_or(false),
            ip_masq_exclude: raw.ip_masq_exclude.iter().map(Cidr::masked).collect(),
            mtu: raw.mtu,
            hairpin: raw.hairpin_mode,
            promisc: raw.promisc_mode,
            vlan,
            macspoofchk: raw.macspoofchk,
            ipam,
            mac,
            state_dir: raw.state_dir.unwrap_or_else(|| PathBuf::from(DEFAULT_STATE_DIR)),
        })
    }
}

/// The host-side veth name of an attachment: deterministic, so DEL and GC find it without state.
pub fn host_veth_name(network: &str, container_id: &str, ifname: &str) -> String {
    let h = fnv1a(&[network, container_id, ifname]);
    format!("bv{:012x}", h & 0xffff_ffff_ffff)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::env::{CniEnv, Command};
    use crate::netconf::NetConf;
    use serde_json::json;

    fn args(conf: Value, cni_args: &[(&str, &str)]) -> CmdArgs {
        CmdArgs {
            env: CniEnv {
                command: Command::Add,
                container_id: "c".into(),
                netns: "/run/netns/c".into(),
                ifname: "eth0".into(),
                args: cni_args.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect(),
                path: vec![],
            },
            conf: serde_json::from_value::<NetConf>(conf).unwrap(),
            stdin: vec![],
        }
    }

    #[test]
    fn defaults_and_options() {
        let c = BridgeConf::parse(&args(json!({"cniVersion": "1.1.0", "name": "n"}), &[])).unwrap();
        assert_eq!(c.bridge, "cni0");
        assert!(!c.is_gateway && !c.ip_masq && c.ipam.is_none() && c.vlan.is_none());
        let c = BridgeConf::parse(&args(
            json!({"cniVersion": "1.1.0", "name": "n", "bridge": "br9", "isDefaultGateway": true,
                   "ipMasq": true, "mtu": 1400, "vlan": 7, "hairpinMode": true,
                   "ipam": {"type": "host-local"}, "runtimeConfig": {"mac": "0a:00:00:00:00:01"}}),
            &[],
        ))
        .unwrap();
        assert!(c.is_gateway, "isDefaultGateway implies isGateway");
        assert_eq!((c.mtu, c.vlan, c.hairpin, c.ip_masq), (Some(1400), Some(7), true, true));
        assert_eq!(c.ipam.as_deref(), Some("host-local"));
        assert_eq!(c.mac, Some([0x0a, 0, 0, 0, 0, 1]));
        let c = BridgeConf::parse(&args(json!({"cniVersion": "1.1.0"}), &[("MAC", "0a:00:00:00:00:02")]));
        assert_eq!(c.unwrap().mac, Some([0x0a, 0, 0, 0, 0, 2]));
    }

    #[test]
    fn rejects_bad_values() {
        for bad in [
            json!({"cniVersion": "1.1.0", "bridge": "this-name-is-too-long"}),
            json!({"cniVersion": "1.1.0", "mtu": 20}),
            json!({"cniVersion": "1.1.0", "vlan": 5000}),
            json!({"cniVersion": "1.1.0", "isGateway": "yes"}),
            json!({"cniVersion": "1.1.0", "runtimeConfig": {"mac": "nope"}}),
        ] {
            let err = BridgeConf::parse(&args(bad.clone(), &[])).unwrap_err();
            assert_eq!(err.code, ErrorCode::InvalidNetworkConfig, "{bad}");
        }
    }

    #[test]
    fn veth_names_fit_and_differ() {
        let a = host_veth_name("net", "c1", "eth0");
        assert_eq!(a.len(), 14);
        assert!(valid_ifname(&a));
        assert_eq!(a, host_veth_name("net", "c1", "eth0"));
        assert_ne!(a, host_veth_name("net", "c1", "eth1"));
    }
}
