//! Version, Status, RuntimeConfig, UpdateRuntimeConfig.

use berth_proto::runtime::v1 as cri;

use super::Shim;

pub const RUNTIME_NAME: &str = "berth";

impl Shim {
    pub fn version(&self) -> cri::VersionResponse {
        cri::VersionResponse {
            version: "0.1.0".into(),
            runtime_name: RUNTIME_NAME.into(),
            runtime_version: env!("CARGO_PKG_VERSION").into(),
            runtime_api_version: "v1".into(),
        }
    }

    /// RuntimeReady always (we answer); NetworkReady while a usable CNI configuration exists.
    pub fn status(&self, verbose: bool) -> cri::StatusResponse {
        let runtime = cri::RuntimeCondition {
            r#type: "RuntimeReady".into(),
            status: true,
            reason: String::new(),
            message: String::new(),
        };
        let network = match self.cni.ready() {
            Ok(_) => cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: true,
                reason: String::new(),
                message: String::new(),
            },
            Err(e) => cri::RuntimeCondition {
                r#type: "NetworkReady".into(),
                status: false,
                reason: "NetworkPluginNotReady".into(),
                message: format!(
                    "Network plugin returns error: cni plugin not initialized: {}",
                    crate::error_chain(&e)
                ),
            },
        };
        let mut info = std::collections::HashMap::new();
        if verbose {
            let cni = self.cni.ready().map(|l| l.path.display().to_string()).unwrap_or_default();
            info.insert("config".into(), serde_json::json!({ "cniConfig": cni, "cgroupDriver": "cgroupfs", "listen": self.cfg.listen, "stateDir": self.cfg.state_dir }).to_string());
        }
        cri::StatusResponse {
            status: Some(cri::RuntimeStatus { conditions: vec![runtime, network] }),
            info,
            runtime_handlers: vec![cri::RuntimeHandler {
                name: String::new(),
                // Pod user namespaces: layers are idmapped mounts (overlayfs over idmapped
                // lower layers, Linux 5.19 and newer).
                features: Some(cri::RuntimeHandlerFeatures { recursive_read_only_mounts: true, user_namespaces: true }),
            }],
            features: Some(cri::RuntimeFeatures {
                supplemental_groups_policy: true,
                user_namespaces_host_network: false,
                mount_options: false,
            }),
        }
    }

    pub fn runtime_config(&self) -> cri::RuntimeConfigResponse {
        cri::RuntimeConfigResponse {
            linux: Some(cri::LinuxRuntimeConfiguration { cgroup_driver: cri::CgroupDriver::Cgroupfs as i32 }),
        }
    }

    pub fn update_runtime_config(&self, req: cri::UpdateRuntimeConfigRequest) {
        if let Some(cidr) = req.runtime_config.and_then(|c| c.network_config).map(|n| n.pod_cidr) {
            tracing::info!(pod_cidr = %cidr, "runtime config updated");
            *self.pod_cidr.lock().expect("lock") = cidr;
        }
    }
}
