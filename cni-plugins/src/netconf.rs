//! The network configuration a runtime passes on stdin (one plugin entry of a conflist).

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

/// DNS settings in a config or a result.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Dns {
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub nameservers: Vec<String>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub domain: Option<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub search: Vec<String>,
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub options: Vec<String>,
}

impl Dns {
    pub fn is_empty(&self) -> bool {
        self.nameservers.is_empty() && self.domain.is_none() && self.search.is_empty() && self.options.is_empty()
    }
}

/// One attachment named in a GC request's `cni.dev/valid-attachments`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub struct Attachment {
    #[serde(rename = "containerID")]
    pub container_id: String,
    pub ifname: String,
}

/// The `ipam` section: its `type` plus the IPAM plugin's own fields.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct IpamConf {
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(flatten)]
    pub fields: Map<String, Value>,
}

/// A plugin's network configuration (spec section "Network configuration" / "Plugin configuration").
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct NetConf {
    pub cni_version: String,
    #[serde(default)]
    pub name: String,
    #[serde(rename = "type", default)]
    pub plugin_type: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub args: Option<Value>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_masq: Option<bool>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ipam: Option<IpamConf>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub dns: Option<Dns>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub runtime_config: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub capabilities: Option<Map<String, Value>>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prev_result: Option<Value>,
    /// GC only (CNI 1.1): attachments the runtime still uses.
    #[serde(rename = "cni.dev/valid-attachments", default, skip_serializing_if = "Option::is_none")]
    pub valid_attachments: Option<Vec<Attachment>>,
    /// Plugin-specific fields (e.g. a bridge's `bridge`, `isGateway`).
    #[serde(flatten)]
    pub plugin: Map<String, Value>,
}

impl NetConf {
    /// A runtimeConfig entry (capability arguments such as `ips`).
    pub fn runtime(&self, key: &str) -> Option<&Value> {
        self.runtime_config.as_ref().and_then(|m| m.get(key))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_full_entry() {
        let raw = r#"{
            "cniVersion": "1.1.0", "name": "pods", "type": "berth-bridge",
            "bridge": "berth0", "isGateway": true, "ipMasq": true,
            "args": {"cni": {"ips": ["10.0.0.5"]}},
            "ipam": {"type": "berth-host-local", "subnet": "10.0.0.0/24"},
            "dns": {"nameservers": ["10.96.0.10"], "search": ["svc.cluster.local"]},
            "runtimeConfig": {"ips": ["10.0.0.7/24"]},
            "capabilities": {"ips": true},
            "prevResult": {"cniVersion": "1.1.0", "ips": []},
            "cni.dev/valid-attachments": [{"containerID": "a", "ifname": "eth0"}]
        }"#;
        let c: NetConf = serde_json::from_str(raw).unwrap();
        assert_eq!(c.name, "pods");
        assert_eq!(c.plugin_type, "berth-bridge");
        assert_eq!(c.ip_masq, Some(true));
        assert_eq!(c.plugin["bridge"], "berth0");
        assert_eq!(c.plugin["isGateway"], true);
        let ipam = c.ipam.as_ref().unwrap();
        assert_eq!(ipam.plugin_type, "berth-host-local");
        assert_eq!(ipam.fields["subnet"], "10.0.0.0/24");
        assert_eq!(c.dns.as_ref().unwrap().nameservers, vec!["10.96.0.10"]);
        assert_eq!(c.runtime("ips").unwrap()[0], "10.0.0.7/24");
        assert!(c.prev_result.is_some());
        assert_eq!(c.valid_attachments.unwrap()[0].ifname, "eth0");
        assert!(!c.plugin.contains_key("ipam"), "known fields are not duplicated");
    }

    #[test]
    fn minimal_entry() {
        let c: NetConf = serde_json::from_str(r#"{"cniVersion":"0.4.0"}"#).unwrap();
        assert_eq!(c.cni_version, "0.4.0");
        assert!(c.ipam.is_none() && c.plugin.is_empty());
        assert!(serde_json::from_str::<NetConf>("{}").is_err(), "cniVersion is required");
    }
}
