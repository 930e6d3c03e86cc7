//! `berth-agent`: the node agent. Reads its configuration file (flags override it), connects to
//! the CRI runtime and the API server, and runs until stopped. Stopping it leaves every pod
//! running; the next start adopts them.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use berth_agent::agent::Agent;
use berth_agent::config::AgentConfig;
use berth_agent::cri::GrpcRuntime;
use clap::Parser;

const DEFAULT_CONFIG: &str = "/etc/berth/agent.yaml";
/// How long TLS bootstrap waits for its CSR to be approved and signed (then exits, and a
/// supervisor's restart tries again).
const BOOTSTRAP_TIMEOUT: Duration = Duration::from_secs(300);

#[derive(Parser)]
#[command(
    name = "berth-agent",
    about = "Berth's node agent (a kubelet): runs the pods the API server binds to this node through CRI"
)]
struct Args {
    /// Configuration file (KubeletConfiguration-style YAML; a missing default file means defaults).
    #[arg(long, default_value = DEFAULT_CONFIG)]
    config: PathBuf,
    /// Kubeconfig for the API server (overrides the file's `kubeconfig`).
    #[arg(long)]
    kubeconfig: Option<PathBuf>,
    /// Bootstrap kubeconfig for TLS bootstrap (overrides the file's `bootstrapKubeconfig`).
    #[arg(long)]
    bootstrap_kubeconfig: Option<PathBuf>,
    /// This node's name (default: the host name).
    #[arg(long)]
    node_name: Option<String>,
    /// CRI socket, unix:///path (default unix:///run/berth/cri.sock).
    #[arg(long)]
    container_runtime_endpoint: Option<String>,
    /// State directory for pod volumes.
    #[arg(long)]
    root_dir: Option<PathBuf>,
    /// The node's InternalIP.
    #[arg(long)]
    node_ip: Option<String>,
    /// Log level of the agent's own messages (error, warn, info, debug, trace).
    #[arg(long, default_value = "info")]
    log_level: tracing::Level,
}

/// The API client, and the cluster CA (DER) from the kubeconfig.
async fn client(path: Option<&PathBuf>) -> anyhow::Result<(kube::Client, Vec<Vec<u8>>)> {
    let config = match path {
        Some(p) => {
            let kc = kube::config::Kubeconfig::read_from(p)
                .with_context(|| format!("reading kubeconfig {}", p.display()))?;
            kube::Config::from_custom_kubeconfig(kc, &kube::config::KubeConfigOptions::default())
                .await
                .with_context(|| format!("kubeconfig {}", p.display()))?
        }
        None => kube::Config::infer()
            .await
            .context("no kubeconfig given and none found (KUBECONFIG, ~/.kube/config, in-cluster)")?,
    };
    let ca = config.root_cert.clone().unwrap_or_default();
    Ok((kube::Client::try_from(config)?, ca))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("berth_agent", args.log_level)
        .with_default(tracing::Level::WARN);
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .init();
    let mut cfg = AgentConfig::load(&args.config, args.config != std::path::Path::new(DEFAULT_CONFIG))?;
    if let Some(v) = args.kubeconfig {
        cfg.kubeconfig = Some(v);
    }
    if let Some(v) = args.bootstrap_kubeconfig {
        cfg.bootstrap_kubeconfig = Some(v);
    }
    if let Some(v) = args.node_name {
        cfg.node_name = Some(v);
    }
    if let Some(v) = args.container_runtime_endpoint {
        cfg.container_runtime_endpoint = v;
    }
    if let Some(v) = args.root_dir {
        cfg.root_dir = v;
    }
    if let Some(v) = args.node_ip {
        cfg.node_ip = Some(v);
    }
    // The node's credentials first, as kubelet does (before the runtime).
    if let Some((boot, kubeconfig)) = cfg.bootstrap_paths()? {
        let node = berth_agent::node::node_name(&cfg, &berth_agent::node::HostFacts::gather(&cfg));
        berth_agent::bootstrap::ensure_node_kubeconfig(boot, kubeconfig, &node, BOOTSTRAP_TIMEOUT)
            .await
            .with_context(|| format!("TLS bootstrap of node {node} with {}", boot.display()))?;
    }
    let socket = cfg.runtime_socket();
    let rt = GrpcRuntime::connect(&socket)
        .await
        .with_context(|| format!("connecting to the CRI runtime at {}", socket.display()))?;
    let (client, ca) = client(cfg.kubeconfig.as_ref()).await?;
    let agent = Agent::new(cfg, client, Arc::new(rt)).await?;
    tracing::info!(node = %agent.node_name, "berth-agent starting");
    tokio::select! {
        r = agent.run(ca) => r,
        _ = tokio::signal::ctrl_c() => {
            tracing::info!("stopping (pods keep running)");
            Ok(())
        }
    }
}
