//! `berth-runtime`: the OCI runtime command line (create/start/state/kill/delete/run/exec/...).

mod cli;
mod logging;

use std::io::Read;
use std::path::Path;

use anyhow::{bail, Context, Result};
use berth_runtime::container::{self, CreateOptions, ExecOptions, Loaded};
use berth_runtime::state::{Root, Status};
use clap::Parser;
use cli::{Cli, Command};
use oci_spec::runtime::{LinuxResources, Process};

fn main() {
    let cli = Cli::parse();
    logging::init(cli.log.as_deref(), cli.log_format, cli.debug);
    match run(cli) {
        Ok(code) => std::process::exit(code),
        Err(e) => {
            let msg = format!("{e:#}");
            tracing::error!("{msg}");
            if logging::logs_to_file() {
                eprintln!("berth-runtime: {msg}");
            }
            std::process::exit(1);
        }
    }
}

fn run(cli: Cli) -> Result<i32> {
    let root = Root::new(&cli.root);
    match cli.command {
        Command::Create(a) => {
            if a.preserve_fds > 0 {
                bail!("--preserve-fds is not supported");
            }
            container::create(&CreateOptions {
                root: &root,
                id: &a.id,
                bundle: &a.bundle,
                pid_file: a.pid_file.as_deref(),
                console_socket: a.console_socket.as_deref(),
                wait_for_start: true,
            })?;
        }
        Command::Start { id } => container::start(&root, &id)?,
        Command::State { id } => {
            let c = Loaded::load(&root, &id)?;
            println!("{}", serde_json::to_string_pretty(&c.record.oci_state(c.status))?);
        }
        Command::Kill { all, id, signal } => {
            let sig = container::parse_signal(&signal).with_context(|| format!("unknown signal {signal:?}"))?;
            container::kill(&root, &id, sig, all)?;
        }
        Command::Delete { force, id } => container::delete(&root, &id, force)?,
        Command::Run { create, detach, keep } => return run_container(&root, &create, detach, keep),
        Command::Exec(a) => return exec(&root, a),
        Command::Ps { format, id, ps_args } => ps(&root, &id, &format, &ps_args)?,
        Command::Pause { id } => container::pause(&root, &id)?,
        Command::Resume { id } => container::resume(&root, &id)?,
        Command::Update(a) => {
            let res = update_resources(&a)?;
            for w in container::update(&root, &a.id, &res)? {
                tracing::warn!("{w}");
            }
        }
        Command::Features => println!("{}", serde_json::to_string_pretty(&berth_runtime::features::features())?),
        Command::Spec { bundle, rootless } => write_default_spec(&bundle, rootless)?,
        Command::List { quiet, format } => list(&root, quiet, &format)?,
        Command::Events { stats, id } => {
            if !stats {
                bail!("only `events --stats` is supported");
            }
            let c = Loaded::load(&root, &id)?;
            let data = c.cgroup()?.stats();
            println!("{}", serde_json::json!({ "type": "stats", "id": id, "data": data }));
        }
    }
    Ok(0)
}

fn run_container(root: &Root, a: &cli::CreateArgs, detach: bool, keep: bool) -> Result<i32> {
    let created = container::create(&CreateOptions {
        root,
        id: &a.id,
        bundle: &a.bundle,
        pid_file: a.pid_file.as_deref(),
        console_socket: a.console_socket.as_deref(),
        wait_for_start: false,
    })?;
    let mut loaded = Loaded { dir: created.dir, record: created.record, status: Status::Running };
    container::run_poststart(&loaded);
    if detach {
        return Ok(0);
    }
    let code = container::wait_forwarding(created.pid);
    if !keep {
        // We reaped the init ourselves: the container is stopped, no need to re-read its state.
        loaded.status = Status::Stopped;
        container::delete_loaded(&loaded, &created.cgroup, true)?;
    }
    Ok(code)
}

fn exec(root: &Root, a: cli::ExecArgs) -> Result<i32> {
    let process = match &a.process {
        Some(path) => {
            let bytes = std::fs::read(path).with_context(|| format!("reading {}", path.display()))?;
            serde_json::from_slice::<Process>(&bytes).with_context(|| format!("parsing {}", path.display()))?
        }
        None => {
            let c = Loaded::load(root, &a.id)?;
            let mut p = c.record.config.process().clone().unwrap_or_default();
            if a.command.is_empty() {
                bail!("exec needs a command or --process");
            }
            p.set_args(Some(a.command.clone()));
            p.set_terminal(Some(a.tty));
            let mut env = p.env().clone().unwrap_or_default();
            for var in &a.env {
                let key = var.split('=').next().unwrap_or_default();
                env.retain(|e| e.split('=').next() != Some(key));
                env.push(var.clone());
            }
            p.set_env(Some(env));
            if let Some(cwd) = &a.cwd {
                p.set_cwd(cwd.clone());
            }
            if let Some(user) = &a.user {
                let (uid, gid) = user.split_once(':').unwrap_or((user, "0"));
                let u = p.user_mut();
                u.set_uid(uid.parse().with_context(|| format!("--user {user:?}: uid must be numeric"))?);
                u.set_gid(gid.parse().with_context(|| format!("--user {user:?}: gid must be numeric"))?);
            }
            if !a.additional_gids.is_empty() {
                p.user_mut().set_additional_gids(Some(a.additional_gids.clone()));
            }
            if a.no_new_privs {
                p.set_no_new_privileges(Some(true));
            }
            add_caps(&mut p, &a.cap)?;
            p
        }
    };
    Ok(container::exec(ExecOptions {
        root,
        id: &a.id,
        process,
        console_socket: a.console_socket.as_deref(),
        pid_file: a.pid_file.as_deref(),
        detach: a.detach,
    })?)
}

fn add_caps(p: &mut Process, caps: &[String]) -> Result<()> {
    if caps.is_empty() {
        return Ok(());
    }
    let mut all = p.capabilities().clone().unwrap_or_default();
    for name in caps {
        let full = if name.to_ascii_uppercase().starts_with("CAP_") {
            name.to_ascii_uppercase()
        } else {
            format!("CAP_{}", name.to_ascii_uppercase())
        };
        let cap: oci_spec::runtime::Capability = serde_json::from_value(serde_json::Value::String(full.clone()))
            .with_context(|| format!("--cap {name:?}: unknown capability"))?;
        let mut b = all.bounding().clone().unwrap_or_default();
        b.insert(cap);
        all.set_bounding(Some(b));
        let mut e = all.effective().clone().unwrap_or_default();
        e.insert(cap);
        all.set_effective(Some(e));
        let mut pe = all.permitted().clone().unwrap_or_default();
        pe.insert(cap);
        all.set_permitted(Some(pe));
    }
    p.set_capabilities(Some(all));
    Ok(())
}

fn ps(root: &Root, id: &str, format: &str, ps_args: &[String]) -> Result<()> {
    let c = Loaded::load(root, id)?;
    let pids = c.cgroup()?.procs()?;
    if format == "json" {
        println!("{}", serde_json::to_string(&pids)?);
        return Ok(());
    }
    let args: Vec<String> = if ps_args.is_empty() { vec!["-ef".into()] } else { ps_args.to_vec() };
    let out = std::process::Command::new("ps").args(&args).output().context("running ps")?;
    let text = String::from_utf8_lossy(&out.stdout);
    let mut lines = text.lines();
    let header = lines.next().unwrap_or_default();
    let pid_col = header.split_whitespace().position(|h| h == "PID").context("ps output has no PID column")?;
    println!("{header}");
    for line in lines {
        let pid = line.split_whitespace().nth(pid_col).and_then(|p| p.parse::<i32>().ok());
        if pid.is_some_and(|p| pids.contains(&p)) {
            println!("{line}");
        }
    }
    Ok(())
}

fn update_resources(a: &cli::UpdateArgs) -> Result<LinuxResources> {
    let mut v: serde_json::Value = match &a.resources {
        Some(p) if p == Path::new("-") => {
            let mut s = String::new();
            std::io::stdin().read_to_string(&mut s)?;
            serde_json::from_str(&s).context("parsing resources from stdin")?
        }
        Some(p) => serde_json::from_slice(&std::fs::read(p).with_context(|| format!("reading {}", p.display()))?)
            .with_context(|| format!("parsing {}", p.display()))?,
        None => serde_json::json!({}),
    };
    let size = |s: &Option<String>| s.as_deref().map(cli::parse_size).transpose().map_err(anyhow::Error::msg);
    let set = |v: &mut serde_json::Value, section: &str, key: &str, val: serde_json::Value| {
        v.as_object_mut().expect("object").entry(section).or_insert_with(|| serde_json::json!({}))[key] = val;
    };
    if let Some(m) = size(&a.memory)? {
        set(&mut v, "memory", "limit", m.into());
    }
    if let Some(m) = size(&a.memory_reservation)? {
        set(&mut v, "memory", "reservation", m.into());
    }
    if let Some(m) = size(&a.memory_swap)? {
        set(&mut v, "memory", "swap", m.into());
    }
    if let Some(s) = a.cpu_shares {
        set(&mut v, "cpu", "shares", s.into());
    }
    if let Some(q) = a.cpu_quota {
        set(&mut v, "cpu", "quota", q.into());
    }
    if let Some(p) = a.cpu_period {
        set(&mut v, "cpu", "period", p.into());
    }
    if let Some(c) = &a.cpuset_cpus {
        set(&mut v, "cpu", "cpus", c.clone().into());
    }
    if let Some(m) = &a.cpuset_mems {
        set(&mut v, "cpu", "mems", m.clone().into());
    }
    if let Some(p) = a.pids_limit {
        set(&mut v, "pids", "limit", p.into());
    }
    if let Some(w) = a.blkio_weight {
        set(&mut v, "blockIO", "weight", w.into());
    }
    serde_json::from_value(v).context("resources")
}

fn write_default_spec(bundle: &Path, rootless: bool) -> Result<()> {
    let path = bundle.join("config.json");
    if path.exists() {
        bail!("{} already exists", path.display());
    }
    let spec = berth_runtime::features::default_spec(rootless);
    std::fs::write(&path, serde_json::to_string_pretty(&spec)?)
        .with_context(|| format!("writing {}", path.display()))?;
    Ok(())
}

fn list(root: &Root, quiet: bool, format: &str) -> Result<()> {
    let mut states = Vec::new();
    for id in root.list()? {
        if let Ok(c) = Loaded::load(root, &id) {
            states.push(c.record.oci_state(c.status));
        }
    }
    if quiet {
        states.iter().for_each(|s| println!("{}", s["id"].as_str().unwrap_or_default()));
    } else if format == "json" {
        println!("{}", serde_json::to_string(&states)?);
    } else {
        println!("{:<24} {:<8} {:<8} {:<40} CREATED", "ID", "PID", "STATUS", "BUNDLE");
        for s in &states {
            println!(
                "{:<24} {:<8} {:<8} {:<40} {}",
                s["id"].as_str().unwrap_or_default(),
                s["pid"],
                s["status"].as_str().unwrap_or_default(),
                s["bundle"].as_str().unwrap_or_default(),
                s["created"].as_str().unwrap_or_default()
            );
        }
    }
    Ok(())
}
