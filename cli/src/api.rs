//! What the CLI asks the API server: this node's podCIDR and Ready condition, with the node's
//! own credentials (the Node authoriser lets a node read its Node object).

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context;
use k8s_openapi::api::core::v1::Node;

pub async fn client(kubeconfig: &Path) -> anyhow::Result<kube::Client> {
    let kc =
        kube::config::Kubeconfig::read_from(kubeconfig).with_context(|| format!("reading {}", kubeconfig.display()))?;
    let config = kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
        .await
        .with_context(|| format!("kubeconfig {}", kubeconfig.display()))?;
    Ok(kube::Client::try_from(config)?)
}

/// The node name a node kubeconfig carries: its user `system:node:NAME`.
pub fn node_name_of(kubeconfig: &Path) -> anyhow::Result<String> {
    let kc =
        kube::config::Kubeconfig::read_from(kubeconfig).with_context(|| format!("reading {}", kubeconfig.display()))?;
    kc.auth_infos
        .iter()
        .find_map(|a| a.name.strip_prefix("system:node:").map(String::from))
        .with_context(|| format!("{}: no user named system:node:NAME (make one with `berth-control kubeconfig --user system:node:NAME --group system:nodes`)", kubeconfig.display()))
}

/// Creates the Node object when it is absent, so the control plane allocates its podCIDR
/// before the agent first reports (the agent then adopts the object). Best-effort.
pub async fn preregister(client: &kube::Client, name: &str) {
    let api = kube::Api::<Node>::all(client.clone());
    if matches!(api.get_opt(name).await, Ok(None)) {
        let mut n = Node::default();
        n.metadata.name = Some(name.to_string());
        let _ = api.create(&kube::api::PostParams::default(), &n).await;
    }
}

async fn node(client: &kube::Client, name: &str) -> Option<Node> {
    kube::Api::<Node>::all(client.clone()).get_opt(name).await.ok().flatten()
}

/// Waits up to `timeout` for the node's podCIDR: None when it is registered without one (a
/// control plane that allocates none); an error when it is not registered at all.
pub async fn wait_pod_cidr(
    client: &kube::Client,
    name: &str,
    timeout: Duration,
    stop: &AtomicBool,
) -> anyhow::Result<Option<String>> {
    let deadline = Instant::now() + timeout;
    let mut registered = false;
    while Instant::now() < deadline {
        if stop.load(Ordering::SeqCst) {
            anyhow::bail!("interrupted while waiting for node {name} to register");
        }
        if let Some(n) = node(client, name).await {
            registered = true;
            if let Some(cidr) = n.spec.and_then(|s| s.pod_cidr) {
                return Ok(Some(cidr));
            }
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    match registered {
        true => Ok(None),
        false => anyhow::bail!("node {name} did not register within {timeout:?}"),
    }
}

/// Ready, by a heartbeat at or after `since` (unix seconds): a Ready condition left in the
/// store by an earlier run of the node does not count.
pub async fn node_ready(client: &kube::Client, name: &str, since: i64) -> bool {
    let Some(n) = node(client, name).await else { return false };
    n.status.and_then(|s| s.conditions).unwrap_or_default().iter().any(|c| {
        c.type_ == "Ready"
            && c.status == "True"
            && c.last_heartbeat_time.as_ref().is_some_and(|t| t.0.timestamp() >= since)
    })
}

pub fn unix_now() -> i64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map(|d| d.as_secs() as i64).unwrap_or(0)
}
