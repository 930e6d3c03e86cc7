//! berth-control: the Kubernetes API server, scheduler and node controllers in one process.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use clap::{Parser, Subcommand};
use serde_json::json;

use berth_control::api::registry::{FieldValidation, Registry};
use berth_control::api::{resources, Api};
use berth_control::auth::Authenticator;
use berth_control::controllers::{self, Settings};
use berth_control::kubelet::KubeletClient;
use berth_control::pki::Pki;
use berth_control::store::{Embedded, EmbeddedOptions, Etcd, EtcdOptions, Store};

#[derive(Parser)]
#[command(name = "berth-control", about = "Berth's control plane: Kubernetes API, scheduler and node controllers")]
struct Cli {
    /// State directory: the store, the PKI and the admin kubeconfig.
    #[arg(long, default_value = "/var/lib/berth/control", global = true)]
    data_dir: PathBuf,
    #[command(subcommand)]
    cmd: Option<Cmd>,
    #[command(flatten)]
    serve: ServeArgs,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// Address to serve HTTPS on.
    #[arg(long, default_value = "127.0.0.1:6443")]
    listen: SocketAddr,
    /// Extra names/addresses for the serving certificate (first start only).
    #[arg(long = "tls-san")]
    tls_san: Vec<String>,
    /// Pod network; each node gets a subnet of it.
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    #[arg(long, default_value_t = 24)]
    node_cidr_mask_size: u8,
    /// Services' ClusterIPs; the first is the `kubernetes` Service's.
    #[arg(long, default_value = berth_control::api::registry::DEFAULT_SERVICE_RANGE)]
    service_cluster_ip_range: String,
    /// A node whose Lease is older than this turns NotReady.
    #[arg(long, default_value = "40", value_parser = parse_secs)]
    node_monitor_grace_period: Duration,
    /// Interval of watch bookmarks.
    #[arg(long, default_value = "30", value_parser = parse_secs)]
    bookmark_interval: Duration,
    /// etcd v3 endpoints (`http://host:2379`, comma-separated); the embedded store when empty.
    #[arg(long, value_delimiter = ',')]
    etcd_servers: Vec<String>,
    /// Store events (embedded) or revisions (etcd) kept for watches that resume.
    #[arg(long, default_value_t = 50_000)]
    watch_history: usize,
    #[arg(long, default_value = "info")]
    log_level: String,
}

#[derive(Subcommand)]
enum Cmd {
    /// Prints a kubeconfig with a new client certificate signed by the cluster CA.
    Kubeconfig {
        /// User name (CN); nodes are `system:node:NAME`.
        #[arg(long)]
        user: String,
        /// Groups (O); nodes are in `system:nodes`.
        #[arg(long = "group")]
        groups: Vec<String>,
        /// Server URL to put in the kubeconfig.
        #[arg(long)]
        server: String,
    },
}

fn parse_secs(s: &str) -> Result<Duration, String> {
    let s = s.trim_end_matches('s');
    s.parse::<f64>().map(Duration::from_secs_f64).map_err(|e| e.to_string())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let pki_dir = cli.data_dir.join("pki");
    if let Some(Cmd::Kubeconfig { user, groups, server }) = &cli.cmd {
        let pki = Pki::load_or_create(&pki_dir, &[])?;
        let g: Vec<&str> = groups.iter().map(String::as_str).collect();
        let cert = pki.issue_client(user, &g)?;
        print!("{}", pki.kubeconfig(server, user, &cert));
        return Ok(());
    }
    let a = &cli.serve;
    let level: tracing_subscriber::filter::LevelFilter = a.log_level.parse().context("--log-level")?;
    tracing_subscriber::fmt().with_max_level(level).with_writer(std::io::stderr).init();
    tokio::runtime::Builder::new_multi_thread().enable_all().build()?.block_on(serve(&cli))
}

async fn serve(cli: &Cli) -> anyhow::Result<()> {
    let a = &cli.serve;
    let pki = Arc::new(Pki::load_or_create(&cli.data_dir.join("pki"), &a.tls_san).context("setting up the PKI")?);
    let store: Arc<dyn Store> = if a.etcd_servers.is_empty() {
        let s = Embedded::open(
            &cli.data_dir.join("store"),
            EmbeddedOptions { history: a.watch_history, ..Default::default() },
        )
        .context("opening the embedded store")?;
        Arc::new(s)
    } else {
        let opts = EtcdOptions { history: a.watch_history as u64, ..Default::default() };
        Arc::new(Etcd::connect(&a.etcd_servers, opts).await.context("connecting to etcd")?)
    };
    let reg = Registry::new(store)
        .with_service_range(&a.service_cluster_ip_range)
        .map_err(|e| anyhow::anyhow!("--service-cluster-ip-range {e}"))?;
    for ns in ["default", "kube-system", "kube-public", "kube-node-lease"] {
        let nsr = resources::by_kind("Namespace");
        if reg.get_opt(nsr, None, ns).await?.is_none() {
            reg.create(nsr, None, json!({"metadata": {"name": ns}}), FieldValidation::Ignore).await?;
        }
    }
    let listener = tokio::net::TcpListener::bind(a.listen).await.with_context(|| format!("binding {}", a.listen))?;
    let addr = listener.local_addr()?;
    // A wildcard listen is reached on loopback (in the serving certificate's names).
    let reach = match addr.ip().is_unspecified() {
        true => std::net::SocketAddr::from(([127, 0, 0, 1], addr.port())),
        false => addr,
    };
    let server_url = format!("https://{reach}");
    let kubeconfig = cli.data_dir.join("admin.kubeconfig");
    pki.write_admin_kubeconfig(&kubeconfig, &server_url)?;
    let advertise = match addr.ip().is_unspecified() {
        true => a.tls_san.iter().find_map(|s| s.parse::<std::net::IpAddr>().ok()).unwrap_or(reach.ip()),
        false => addr.ip(),
    };
    berth_control::controllers::endpoints::ensure_kubernetes_service(&reg, advertise, addr.port())
        .await
        .context("the `kubernetes` Service")?;
    let tls = berth_control::server::tls_config(&pki)?;
    let api = Arc::new(Api {
        reg: reg.clone(),
        authn: Authenticator { bootstrap_token: pki.bootstrap_token.clone() },
        server_addr: addr.to_string(),
        bookmark_every: a.bookmark_interval,
        kubelet: KubeletClient::new(&pki.kubelet_client).context("the kubelet client")?,
        tokens: berth_control::tokens::TokenSigner::new(&pki.sa_key_pkcs8)
            .context("the service-account signing key")?,
    });
    controllers::start_all(
        &reg,
        &Settings {
            cluster_cidr: a.cluster_cidr.clone(),
            node_cidr_prefix: a.node_cidr_mask_size,
            node_monitor_grace: a.node_monitor_grace_period,
        },
        pki.clone(),
    );
    tracing::info!(url = %server_url, kubeconfig = %kubeconfig.display(), "berth-control serving");
    println!("berth-control serving on {server_url}; admin kubeconfig: {}", kubeconfig.display());
    tokio::select! {
        _ = berth_control::server::serve(api, listener, tls) => {}
        _ = tokio::signal::ctrl_c() => tracing::info!("interrupted; stopping"),
    }
    Ok(())
}
