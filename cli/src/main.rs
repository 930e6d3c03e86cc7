//! `berth`: one command to a single-node cluster (`up`/`down`), adding a host to a control
//! plane (`join`), a systemd install (`install`), and the small services those use
//! (`registry`, `node-kubeconfig`).

mod api;
mod daemon;
mod down;
mod image;
mod install;
mod join;
mod layout;
mod registry;
mod render;
mod teardown;
mod units;
mod up;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context;
use clap::{Args, Parser, Subcommand};

use render::Network;

#[derive(Parser)]
#[command(name = "berth", version, about = "Berth: a Kubernetes node runtime — one command to a cluster")]
struct Cli {
    #[command(subcommand)]
    cmd: Cmd,
}

/// What `up`, `join` and `install` share.
#[derive(Args, Clone)]
struct CommonArgs {
    #[arg(long, value_enum, default_value = "bridge")]
    network: Network,
    /// This node's name (default: the host name; with a node kubeconfig: its user's).
    #[arg(long)]
    node_name: Option<String>,
    /// This node's InternalIP (default: the default route's source address, else 127.0.0.1).
    #[arg(long)]
    node_ip: Option<String>,
    #[arg(long, default_value = "10.244.0.0/16")]
    cluster_cidr: String,
    /// The local image registry (docker.io is mirrored to it).
    #[arg(long, default_value = "127.0.0.1:5000")]
    registry: String,
    /// The cgroup all pods of this node live under.
    #[arg(long, default_value = "/berth")]
    cgroup_root: String,
    /// Where Berth's binaries are (default: next to this one, then /usr/local/bin, /opt/cni/bin).
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

/// What `up` and `join` share.
#[derive(Args, Clone)]
struct NodeArgs {
    #[command(flatten)]
    common: CommonArgs,
    /// Everything durable: store, PKI, images, configuration, logs.
    #[arg(long, default_value = "/var/lib/berth")]
    data_dir: PathBuf,
    /// Per-boot state: the CRI socket, pid files, CNI records, pinned network namespaces.
    #[arg(long, default_value = "/run/berth")]
    run_dir: PathBuf,
    /// The static busybox the busybox image is made of (Debian's busybox-static).
    #[arg(long, default_value = "/bin/busybox")]
    busybox: PathBuf,
    #[arg(long, default_value = "berth0")]
    bridge: String,
    /// VXLAN underlay interface (default: the one holding the node's InternalIP).
    #[arg(long)]
    underlay_device: Option<String>,
    /// Seconds to wait for each step (API up, node Ready).
    #[arg(long, default_value_t = 120)]
    timeout: u64,
}

#[derive(Subcommand)]
enum Cmd {
    /// Start a single-node cluster (berth-control, berth-shim, berth-agent, a local image
    /// registry) in the foreground; Ctrl-C stops it and keeps its data.
    Up {
        #[command(flatten)]
        node: NodeArgs,
        /// The API server's address (0.0.0.0:6443 to let other hosts join).
        #[arg(long, default_value = "127.0.0.1:6443")]
        listen: SocketAddr,
    },
    /// Stop the node started from --data-dir and remove what it made (pods, netns, links,
    /// mounts, cgroups, nft tables); --purge also deletes the data.
    Down {
        #[arg(long, default_value = "/var/lib/berth")]
        data_dir: PathBuf,
        #[arg(long)]
        purge: bool,
    },
    /// Add this host to a control plane: berth-shim + berth-agent in the foreground, either with
    /// the cluster's bootstrap token (`--token --server --ca-cert`: the agent gets its node
    /// certificate by TLS bootstrap) or with a node kubeconfig made on the control-plane host by
    /// `berth-control kubeconfig`.
    Join {
        #[command(flatten)]
        node: NodeArgs,
        /// The node kubeconfig (user system:node:NAME).
        #[arg(long, conflicts_with_all = ["token", "server", "ca_cert"])]
        kubeconfig: Option<PathBuf>,
        /// The bootstrap token ID.SECRET (the control-plane host's DATA/control/pki/bootstrap-token).
        #[arg(long)]
        token: Option<String>,
        /// The API server, https://HOST:6443 (with --token).
        #[arg(long, requires = "token")]
        server: Option<String>,
        /// The cluster CA certificate, PEM (the control-plane host's DATA/control/pki/ca.crt; with --token).
        #[arg(long, requires = "token")]
        ca_cert: Option<PathBuf>,
    },
    /// Install binaries, configuration and systemd units under --root.
    Install {
        #[arg(long, default_value = "/")]
        root: PathBuf,
        /// This host runs berth-control too.
        #[arg(long)]
        control: bool,
        /// A worker's node kubeconfig.
        #[arg(long)]
        kubeconfig: Option<PathBuf>,
        #[arg(long, default_value = "0.0.0.0:6443")]
        listen: String,
        #[command(flatten)]
        common: CommonArgs,
    },
    /// Serve the OCI image layouts under --dir read-only (seeding busybox:latest).
    Registry {
        #[arg(long)]
        dir: PathBuf,
        #[arg(long, default_value = "127.0.0.1:5000")]
        listen: String,
        #[arg(long, default_value = "/bin/busybox")]
        busybox: PathBuf,
    },
    /// Make this control-plane host's node kubeconfig (systemd: the agent's ExecStartPre).
    NodeKubeconfig {
        #[arg(long, default_value = "/var/lib/berth/control")]
        control_dir: PathBuf,
        #[arg(long)]
        out: PathBuf,
        #[arg(long)]
        node: String,
        #[arg(long)]
        server: String,
    },
}

fn up_options(
    n: NodeArgs,
    listen: SocketAddr,
    join: Option<PathBuf>,
    join_token: Option<join::TokenJoin>,
) -> up::UpOptions {
    let c = n.common;
    up::UpOptions {
        data_dir: n.data_dir,
        run_dir: n.run_dir,
        network: c.network,
        listen,
        node_name: c.node_name,
        node_ip: c.node_ip,
        cluster_cidr: c.cluster_cidr,
        registry: c.registry,
        cgroup_root: c.cgroup_root,
        bin_dir: c.bin_dir,
        busybox: n.busybox,
        bridge: n.bridge,
        underlay_device: n.underlay_device,
        join_kubeconfig: join,
        join_token,
        timeout: Duration::from_secs(n.timeout),
    }
}

fn require_root() -> anyhow::Result<()> {
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        anyhow::bail!("run as root: a node creates namespaces, mounts, cgroups and network links");
    }
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let rt = || tokio::runtime::Builder::new_multi_thread().enable_all().build().context("starting the async runtime");
    match cli.cmd {
        Cmd::Up { node, listen } => {
            require_root()?;
            rt()?.block_on(up::run(up_options(node, listen, None, None)))
        }
        Cmd::Join { node, kubeconfig, token, server, ca_cert } => {
            let token_join = match (&kubeconfig, token) {
                (Some(_), _) => None,
                (None, Some(t)) => Some(join::TokenJoin::new(&t, server.as_deref(), ca_cert.as_deref())?),
                (None, None) => anyhow::bail!(
                    "berth join needs --token ID.SECRET --server https://HOST:6443 --ca-cert ca.crt (from the control-plane host's DATA/control/pki/), or --kubeconfig node.kubeconfig made there by\n    berth-control --data-dir /var/lib/berth/control kubeconfig --user system:node:NAME --group system:nodes --server https://HOST:6443"
                ),
            };
            require_root()?;
            rt()?.block_on(up::run(up_options(node, "127.0.0.1:0".parse()?, kubeconfig, token_join)))
        }
        Cmd::Down { data_dir, purge } => {
            require_root()?;
            rt()?.block_on(down::run(&data_dir, purge))
        }
        Cmd::Install { root, control, kubeconfig, listen, common: c } => install::run(&install::InstallOptions {
            root,
            control,
            kubeconfig,
            node_name: c.node_name,
            node_ip: c.node_ip,
            listen,
            cluster_cidr: c.cluster_cidr,
            network: c.network,
            registry: c.registry,
            cgroup_root: c.cgroup_root,
            bin_dir: c.bin_dir,
        }),
        Cmd::Registry { dir, listen, busybox } => {
            let layout = dir.join("library/busybox");
            if !layout.join("index.json").exists() {
                match image::write_busybox(&busybox, &layout, "latest") {
                    Ok(d) => eprintln!("berth registry: busybox:latest is {d} (from {})", busybox.display()),
                    Err(e) => eprintln!("berth registry: warning: no busybox image: {e}"),
                }
            }
            let listener = std::net::TcpListener::bind(&listen).with_context(|| format!("binding {listen}"))?;
            eprintln!("berth registry: serving {} on http://{listen}", dir.display());
            registry::serve(dir, listener)
        }
        Cmd::NodeKubeconfig { control_dir, out, node, server } => {
            install::node_kubeconfig(&control_dir, &out, &node, &server)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn join(args: &[&str]) -> Result<Cmd, clap::Error> {
        Cli::try_parse_from(["berth", "join"].iter().chain(args)).map(|c| c.cmd)
    }

    #[test]
    fn join_takes_a_token_or_a_kubeconfig() {
        let Ok(Cmd::Join { token, server, ca_cert, kubeconfig, .. }) =
            join(&["--token", "abcdef.0123456789abcdef", "--server", "https://h:6443", "--ca-cert", "/ca.crt"])
        else {
            panic!("token join")
        };
        assert_eq!(
            (token.as_deref(), server.as_deref(), ca_cert, kubeconfig),
            (Some("abcdef.0123456789abcdef"), Some("https://h:6443"), Some(PathBuf::from("/ca.crt")), None)
        );
        assert!(join(&["--kubeconfig", "/k", "--token", "t"]).is_err(), "one or the other");
        assert!(join(&["--server", "https://h:6443"]).is_err(), "--server goes with --token");
        assert!(join(&["--kubeconfig", "/k"]).is_ok());
    }
}
