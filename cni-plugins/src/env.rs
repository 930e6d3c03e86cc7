//! The CNI_* environment a runtime sets when it executes a plugin.

/// Errors in the CNI_* environment (reported as code 4).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum EnvError {
    #[error("CNI_COMMAND is not set")]
    MissingCommand,
    #[error("unknown CNI_COMMAND {value:?}")]
    UnknownCommand { value: String },
    #[error("{var} is required for {command:?}")]
    Missing { var: &'static str, command: Command },
    #[error("malformed CNI_ARGS pair {pair:?}: expected KEY=VALUE")]
    BadArgs { pair: String },
}

/// The operation requested by CNI_COMMAND.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Command {
    Add,
    Del,
    Check,
    Status,
    Gc,
    Version,
}

impl Command {
    pub fn parse(value: &str) -> Result<Self, EnvError> {
        Ok(match value {
            "ADD" => Command::Add,
            "DEL" => Command::Del,
            "CHECK" => Command::Check,
            "STATUS" => Command::Status,
            "GC" => Command::Gc,
            "VERSION" => Command::Version,
            other => return Err(EnvError::UnknownCommand { value: other.to_string() }),
        })
    }
}

/// The parsed CNI_* variables.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CniEnv {
    pub command: Command,
    pub container_id: String,
    pub netns: String,
    pub ifname: String,
    /// CNI_ARGS as ordered key/value pairs.
    pub args: Vec<(String, String)>,
    pub path: Vec<String>,
}

impl CniEnv {
    /// Reads the variables through `get` (e.g. `|k| std::env::var(k).ok()`).
    pub fn from_lookup(get: impl Fn(&str) -> Option<String>) -> Result<Self, EnvError> {
        let nonempty = |k: &str| get(k).filter(|v| !v.is_empty());
        let command = Command::parse(&nonempty("CNI_COMMAND").ok_or(EnvError::MissingCommand)?)?;
        let require = |var: &'static str, needed: bool| -> Result<String, EnvError> {
            match nonempty(var) {
                Some(v) => Ok(v),
                None if needed => Err(EnvError::Missing { var, command }),
                None => Ok(String::new()),
            }
        };
        let attach = matches!(command, Command::Add | Command::Del | Command::Check);
        let needs_netns = matches!(command, Command::Add | Command::Check);
        Ok(Self {
            command,
            container_id: require("CNI_CONTAINERID", attach)?,
            netns: require("CNI_NETNS", needs_netns)?,
            ifname: require("CNI_IFNAME", attach)?,
            args: parse_args(&get("CNI_ARGS").unwrap_or_default())?,
            path: get("CNI_PATH")
                .unwrap_or_default()
                .split(':')
                .filter(|p| !p.is_empty())
                .map(str::to_string)
                .collect(),
        })
    }

    /// The value of a CNI_ARGS key, if present.
    pub fn arg(&self, key: &str) -> Option<&str> {
        self.args.iter().find(|(k, _)| k == key).map(|(_, v)| v.as_str())
    }
}

/// Parses `K=V;K=V` (empty pairs ignored).
pub fn parse_args(raw: &str) -> Result<Vec<(String, String)>, EnvError> {
    raw.split(';')
        .filter(|p| !p.trim().is_empty())
        .map(|pair| match pair.split_once('=') {
            Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
            _ => Err(EnvError::BadArgs { pair: pair.to_string() }),
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::collections::HashMap;

    fn env(pairs: &[(&str, &str)]) -> Result<CniEnv, EnvError> {
        let map: HashMap<String, String> = pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect();
        CniEnv::from_lookup(|k| map.get(k).cloned())
    }

    #[test]
    fn full_add() {
        let e = env(&[
            ("CNI_COMMAND", "ADD"),
            ("CNI_CONTAINERID", "abc"),
            ("CNI_NETNS", "/var/run/netns/x"),
            ("CNI_IFNAME", "eth0"),
            ("CNI_ARGS", "IgnoreUnknown=1;IP=10.0.0.9"),
            ("CNI_PATH", "/opt/cni/bin:/usr/lib/cni"),
        ])
        .unwrap();
        assert_eq!(e.command, Command::Add);
        assert_eq!(e.arg("IP"), Some("10.0.0.9"));
        assert_eq!(e.path, vec!["/opt/cni/bin", "/usr/lib/cni"]);
    }

    #[test]
    fn requirements_per_command() {
        assert_eq!(env(&[]), Err(EnvError::MissingCommand));
        assert!(matches!(env(&[("CNI_COMMAND", "FOO")]), Err(EnvError::UnknownCommand { .. })));
        let missing = env(&[("CNI_COMMAND", "ADD"), ("CNI_CONTAINERID", "a"), ("CNI_IFNAME", "e")]);
        assert!(matches!(missing, Err(EnvError::Missing { var: "CNI_NETNS", .. })));
        let del = env(&[("CNI_COMMAND", "DEL"), ("CNI_CONTAINERID", "a"), ("CNI_IFNAME", "e")]);
        assert!(del.is_ok(), "DEL does not need a netns");
        assert!(env(&[("CNI_COMMAND", "VERSION")]).is_ok());
        assert!(env(&[("CNI_COMMAND", "GC")]).is_ok());
    }

    #[test]
    fn args_syntax() {
        assert_eq!(parse_args("").unwrap(), vec![]);
        assert_eq!(parse_args("A=1;;B=").unwrap().len(), 2);
        assert!(parse_args("novalue").is_err());
    }
}
