//! The container process's argv, environment and working directory: CRI command/args/envs/
//! working_dir merged with the image's Entrypoint/Cmd/Env/WorkingDir as Kubernetes defines.

use std::path::PathBuf;

use berth_proto::runtime::v1::ContainerConfig;

use super::{Ctx, ImageDefaults, SpecError, DEFAULT_PATH_ENV};

/// argv: `command` replaces the image Entrypoint and drops its Cmd; `args` alone replace Cmd;
/// neither gives Entrypoint + Cmd (an Entrypoint of `[""]` counts as none, as in Docker).
pub(crate) fn args(ctx: &Ctx, config: &ContainerConfig, image: &ImageDefaults) -> Result<Vec<String>, SpecError> {
    let mut argv: Vec<String> = if !config.command.is_empty() {
        config.command.clone()
    } else if image.entrypoint.len() == 1 && image.entrypoint[0].is_empty() {
        Vec::new()
    } else {
        image.entrypoint.clone()
    };
    if !config.args.is_empty() {
        argv.extend(config.args.iter().cloned());
    } else if config.command.is_empty() {
        argv.extend(image.cmd.iter().cloned());
    }
    match argv.first() {
        None => Err(ctx.invalid("command", "neither the container config nor the image gives a command to run")),
        Some(a) if a.is_empty() => Err(ctx.invalid("command", "the program to run is an empty string")),
        Some(_) => Ok(argv),
    }
}

/// Environment: PATH (default), HOSTNAME, then the image's Env, then the CRI envs; a later
/// entry replaces an earlier one with the same name, in place. An image entry without '='
/// unsets the name (Docker's rule).
pub(crate) fn env(
    ctx: &Ctx,
    config: &ContainerConfig,
    image: &ImageDefaults,
    hostname: &str,
) -> Result<Vec<String>, SpecError> {
    let mut out: Vec<String> = vec![DEFAULT_PATH_ENV.to_owned(), format!("HOSTNAME={hostname}")];
    apply_env(&mut out, image.env.iter().cloned());
    let mut cri = Vec::with_capacity(config.envs.len());
    for (i, kv) in config.envs.iter().enumerate() {
        if kv.key.is_empty() || kv.key.contains('=') {
            return Err(ctx.invalid(&format!("envs[{i}].key"), format!("{:?} is not a valid variable name", kv.key)));
        }
        let value = std::str::from_utf8(&kv.value)
            .map_err(|_| ctx.invalid(&format!("envs[{i}].value"), format!("the value of {} is not UTF-8", kv.key)))?;
        cri.push(format!("{}={value}", kv.key));
    }
    apply_env(&mut out, cri.into_iter());
    Ok(out)
}

fn apply_env(env: &mut Vec<String>, overrides: impl Iterator<Item = String>) {
    for entry in overrides {
        let (key, set) = match entry.split_once('=') {
            Some((k, _)) => (k.to_owned(), true),
            None => (entry.clone(), false),
        };
        let pos = env.iter().position(|e| e.split_once('=').map_or(e.as_str(), |(k, _)| k) == key);
        match (pos, set) {
            (Some(i), true) => env[i] = entry,
            (None, true) => env.push(entry),
            (Some(i), false) => {
                env.remove(i);
            }
            (None, false) => {}
        }
    }
}

/// Working directory: the CRI's, else the image's, else "/".
pub(crate) fn cwd(ctx: &Ctx, config: &ContainerConfig, image: &ImageDefaults) -> Result<PathBuf, SpecError> {
    let (dir, field) = if !config.working_dir.is_empty() {
        (config.working_dir.as_str(), "working_dir")
    } else if !image.working_dir.is_empty() {
        (image.working_dir.as_str(), "image.working_dir")
    } else {
        ("/", "")
    };
    if !dir.starts_with('/') {
        return Err(ctx.invalid(field, format!("{dir:?} is not an absolute path")));
    }
    Ok(PathBuf::from(dir))
}

#[cfg(test)]
mod tests {
    use super::*;
    use berth_proto::runtime::v1::KeyValue;

    fn ctx() -> Ctx {
        Ctx::new("containers[web]")
    }

    fn v(s: &[&str]) -> Vec<String> {
        s.iter().map(|s| s.to_string()).collect()
    }

    fn image(entrypoint: &[&str], cmd: &[&str]) -> ImageDefaults {
        ImageDefaults { entrypoint: v(entrypoint), cmd: v(cmd), ..Default::default() }
    }

    fn config(command: &[&str], args: &[&str]) -> ContainerConfig {
        ContainerConfig { command: v(command), args: v(args), ..Default::default() }
    }

    #[test]
    fn neither_command_nor_args_uses_entrypoint_then_cmd() {
        let got = args(&ctx(), &config(&[], &[]), &image(&["/entry"], &["-x"])).unwrap();
        assert_eq!(got, v(&["/entry", "-x"]));
    }

    #[test]
    fn command_replaces_entrypoint_and_drops_cmd() {
        let got = args(&ctx(), &config(&["/bin/sh"], &[]), &image(&["/entry"], &["-x"])).unwrap();
        assert_eq!(got, v(&["/bin/sh"]));
        let got = args(&ctx(), &config(&["/bin/sh"], &["-c", "true"]), &image(&["/entry"], &["-x"])).unwrap();
        assert_eq!(got, v(&["/bin/sh", "-c", "true"]));
    }

    #[test]
    fn args_alone_replace_cmd() {
        let got = args(&ctx(), &config(&[], &["-y"]), &image(&["/entry"], &["-x"])).unwrap();
        assert_eq!(got, v(&["/entry", "-y"]));
        let got = args(&ctx(), &config(&[], &["/bin/top"]), &image(&[], &["sh"])).unwrap();
        assert_eq!(got, v(&["/bin/top"]));
    }

    #[test]
    fn empty_string_entrypoint_counts_as_none() {
        let got = args(&ctx(), &config(&[], &[]), &image(&[""], &["sh"])).unwrap();
        assert_eq!(got, v(&["sh"]));
    }

    #[test]
    fn nothing_to_run_names_the_container() {
        let err = args(&ctx(), &config(&[], &[]), &image(&[], &[])).unwrap_err();
        assert_eq!(err.field(), "containers[web].command");
        let err = args(&ctx(), &config(&[""], &[]), &image(&[], &[])).unwrap_err();
        assert_eq!(err.field(), "containers[web].command");
    }

    fn kv(k: &str, val: &str) -> KeyValue {
        KeyValue { key: k.into(), value: val.as_bytes().to_vec() }
    }

    #[test]
    fn env_merges_image_then_cri_with_defaults() {
        let img = ImageDefaults { env: v(&["PATH=/img", "A=1", "B=2"]), ..Default::default() };
        let cfg = ContainerConfig { envs: vec![kv("B", "3"), kv("C", "x=y")], ..Default::default() };
        let got = env(&ctx(), &cfg, &img, "pod-1").unwrap();
        assert_eq!(got, v(&["PATH=/img", "HOSTNAME=pod-1", "A=1", "B=3", "C=x=y"]));
    }

    #[test]
    fn env_keeps_default_path_and_cri_can_override_hostname() {
        let cfg = ContainerConfig { envs: vec![kv("HOSTNAME", "mine")], ..Default::default() };
        let got = env(&ctx(), &cfg, &ImageDefaults::default(), "pod-1").unwrap();
        assert_eq!(got, v(&[DEFAULT_PATH_ENV, "HOSTNAME=mine"]));
    }

    #[test]
    fn image_entry_without_equals_unsets() {
        let img = ImageDefaults { env: v(&["A=1", "A"]), ..Default::default() };
        let got = env(&ctx(), &ContainerConfig::default(), &img, "h").unwrap();
        assert_eq!(got, v(&[DEFAULT_PATH_ENV, "HOSTNAME=h"]));
    }

    #[test]
    fn bad_env_names_the_entry() {
        let cfg = ContainerConfig { envs: vec![kv("OK", "1"), kv("A=B", "x")], ..Default::default() };
        assert_eq!(
            env(&ctx(), &cfg, &ImageDefaults::default(), "h").unwrap_err().field(),
            "containers[web].envs[1].key"
        );
        let cfg = ContainerConfig { envs: vec![KeyValue { key: "K".into(), value: vec![0xff] }], ..Default::default() };
        assert_eq!(
            env(&ctx(), &cfg, &ImageDefaults::default(), "h").unwrap_err().field(),
            "containers[web].envs[0].value"
        );
    }

    #[test]
    fn cwd_prefers_cri_then_image_then_root() {
        let img = ImageDefaults { working_dir: "/app".into(), ..Default::default() };
        let cfg = ContainerConfig { working_dir: "/work".into(), ..Default::default() };
        assert_eq!(cwd(&ctx(), &cfg, &img).unwrap(), PathBuf::from("/work"));
        assert_eq!(cwd(&ctx(), &ContainerConfig::default(), &img).unwrap(), PathBuf::from("/app"));
        assert_eq!(cwd(&ctx(), &ContainerConfig::default(), &ImageDefaults::default()).unwrap(), PathBuf::from("/"));
        let rel = ContainerConfig { working_dir: "rel".into(), ..Default::default() };
        assert_eq!(cwd(&ctx(), &rel, &img).unwrap_err().field(), "containers[web].working_dir");
    }
}
