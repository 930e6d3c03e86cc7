//! The `berth-shim` binary: loads the config, opens the stores, serves CRI on a unix socket
//! (mode 0660, root) until SIGTERM/SIGINT. Containers keep running when it stops.

use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};

use anyhow::Context;
use berth_proto::runtime::v1::image_service_server::ImageServiceServer;
use berth_proto::runtime::v1::runtime_service_server::RuntimeServiceServer;
use berth_shim::config::Config;
use berth_shim::server::service::Service;
use berth_shim::server::Shim;
use clap::Parser;

#[derive(Parser)]
#[command(name = "berth-shim", version, about = "Berth's CRI runtime (RuntimeService + ImageService)")]
struct Args {
    /// Configuration file (TOML); a missing file at the default path means defaults.
    #[arg(long, default_value = "/etc/berth/shim.toml")]
    config: PathBuf,
    /// The CRI socket (overrides `listen` in the config).
    #[arg(long)]
    listen: Option<PathBuf>,
    /// Log level filter: error, warn, info, debug, trace.
    #[arg(long, default_value = "info")]
    log_level: tracing::Level,
}

/// A helper binary: the configured path, else next to this executable.
fn sibling(configured: &Path, name: &str) -> anyhow::Result<PathBuf> {
    if !configured.as_os_str().is_empty() {
        return Ok(configured.to_path_buf());
    }
    let exe = std::env::current_exe().context("locating berth-shim")?;
    Ok(exe.with_file_name(name))
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    let filter = tracing_subscriber::filter::Targets::new()
        .with_target("berth_shim", args.log_level)
        .with_target("berth_runtime", args.log_level)
        .with_default(tracing::Level::WARN);
    tracing_subscriber::registry()
        .with(tracing_subscriber::fmt::layer().with_writer(std::io::stderr))
        .with(filter)
        .init();
    let mut cfg = Config::load(&args.config, args.config != Path::new("/etc/berth/shim.toml"))
        .context("loading the configuration")?;
    if let Some(listen) = args.listen {
        cfg.listen = listen;
    }
    let monitor = sibling(&cfg.monitor, "berth-monitor")?;
    let pause = sibling(&cfg.pause, "berth-pause")?;
    let listen = cfg.listen.clone();
    let shim = Shim::new(cfg, monitor, pause).await.map_err(|e| anyhow::anyhow!(berth_shim::error_chain(&e)))?;
    let streaming = shim.start_streaming().await.map_err(|e| anyhow::anyhow!(berth_shim::error_chain(&e)))?;
    tracing::info!(address = %streaming, "streaming server (exec/attach/port-forward) listening");

    if let Some(dir) = listen.parent() {
        std::fs::create_dir_all(dir).with_context(|| format!("creating {}", dir.display()))?;
    }
    let _ = std::fs::remove_file(&listen);
    let uds = tokio::net::UnixListener::bind(&listen).with_context(|| format!("binding {}", listen.display()))?;
    std::fs::set_permissions(&listen, std::fs::Permissions::from_mode(0o660))
        .context("chmod 0660 on the CRI socket")?;
    tracing::info!(socket = %listen.display(), "serving CRI");

    let service = Service(shim);
    let shutdown = async {
        let mut term =
            tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()).expect("SIGTERM handler");
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        tracing::info!("shutting down (containers keep running)");
    };
    tonic::transport::Server::builder()
        .add_service(
            RuntimeServiceServer::new(service.clone())
                .max_decoding_message_size(16 << 20)
                .max_encoding_message_size(16 << 20),
        )
        .add_service(ImageServiceServer::new(service))
        .serve_with_incoming_shutdown(tokio_stream::wrappers::UnixListenerStream::new(uds), shutdown)
        .await
        .context("serving CRI")?;
    Ok(())
}
