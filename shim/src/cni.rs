//! CNI invocation as libcni does it: the first network configuration in the conf dir (in name
//! order), its plugins run in order for ADD (each given the previous result) and in reverse for
//! DEL, binaries looked up in the bin dirs, ADD results cached on disk for DEL and CHECK.

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use serde_json::{json, Map, Value};
use tokio::io::AsyncWriteExt;

const PLUGIN_TIMEOUT: Duration = Duration::from_secs(60);

#[derive(Debug, thiserror::Error)]
pub enum CniError {
    #[error("no network configuration in {dir}")]
    NoConfig { dir: PathBuf },
    #[error("{path}: {message}")]
    BadConfig { path: PathBuf, message: String },
    #[error("CNI plugin {plugin:?} not found in {dirs}")]
    NoPlugin { plugin: String, dirs: String },
    #[error("running CNI plugin {plugin}")]
    Spawn {
        plugin: String,
        #[source]
        source: std::io::Error,
    },
    #[error("CNI plugin {plugin} {command} failed: {message}")]
    Plugin { plugin: String, command: &'static str, message: String },
    #[error("CNI plugin {plugin} {command} timed out after {PLUGIN_TIMEOUT:?}")]
    Timeout { plugin: String, command: &'static str },
    #[error("CNI cache {path}")]
    Cache {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
}

/// A loaded network configuration list.
#[derive(Debug, Clone)]
pub struct NetworkList {
    pub path: PathBuf,
    pub name: String,
    pub cni_version: String,
    pub plugins: Vec<Value>,
    pub bytes: Vec<u8>,
}

/// What the runtime knows about the attachment.
#[derive(Debug, Clone)]
pub struct Attachment<'a> {
    pub container_id: &'a str,
    pub netns: &'a Path,
    pub ifname: &'a str,
    pub args: Vec<(String, String)>,
    pub port_mappings: Vec<Value>,
}

/// The addresses a successful ADD produced.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct AddResult {
    pub ips: Vec<String>,
    pub raw: Value,
}

/// Loads the first usable configuration in `dir`, in file-name order (as libcni and the kubelet do).
pub fn load_first(dir: &Path) -> Result<NetworkList, CniError> {
    let mut files: Vec<PathBuf> =
        std::fs::read_dir(dir).map(|rd| rd.filter_map(|e| e.ok().map(|e| e.path())).collect()).unwrap_or_default();
    files.retain(|p| matches!(p.extension().and_then(|e| e.to_str()), Some("conflist" | "conf" | "json")));
    files.sort();
    let mut last_error = None;
    for path in files {
        let parsed = std::fs::read(&path).map_err(|e| e.to_string()).and_then(|bytes| {
            parse_list(&bytes, path.extension().is_some_and(|e| e == "conflist")).map(|l| (l, bytes))
        });
        match parsed {
            Ok((mut list, bytes)) => {
                list.path = path;
                list.bytes = bytes;
                return Ok(list);
            }
            Err(message) => {
                tracing::warn!(path = %path.display(), %message, "skipping CNI configuration");
                last_error = Some(CniError::BadConfig { path, message });
            }
        }
    }
    Err(last_error.unwrap_or(CniError::NoConfig { dir: dir.to_path_buf() }))
}

/// Parses a `.conflist`, or a single plugin `.conf` wrapped into a list of one.
pub fn parse_list(bytes: &[u8], is_list: bool) -> Result<NetworkList, String> {
    let v: Value = serde_json::from_slice(bytes).map_err(|e| format!("not JSON: {e}"))?;
    let obj = v.as_object().ok_or("not a JSON object")?;
    let name = obj.get("name").and_then(Value::as_str).filter(|n| !n.is_empty()).ok_or("missing \"name\"")?.to_string();
    let cni_version = obj.get("cniVersion").and_then(Value::as_str).unwrap_or("0.1.0").to_string();
    let plugins = if is_list || obj.contains_key("plugins") {
        let list = obj.get("plugins").and_then(Value::as_array).ok_or("missing \"plugins\" array")?;
        if list.is_empty() {
            return Err("\"plugins\" is empty".into());
        }
        list.clone()
    } else {
        vec![v.clone()]
    };
    for (i, p) in plugins.iter().enumerate() {
        if p.get("type").and_then(Value::as_str).is_none_or(str::is_empty) {
            return Err(format!("plugins[{i}]: missing \"type\""));
        }
    }
    Ok(NetworkList { path: PathBuf::new(), name, cni_version, plugins, bytes: bytes.to_vec() })
}

/// The stdin of one plugin: its own config plus name, cniVersion, prevResult and the
/// runtimeConfig entries for capabilities it declares.
pub fn plugin_config(list: &NetworkList, plugin: &Value, prev: Option<&Value>, att: &Attachment<'_>) -> Value {
    let mut conf: Map<String, Value> = plugin.as_object().cloned().unwrap_or_default();
    conf.insert("name".into(), json!(list.name));
    conf.insert("cniVersion".into(), json!(list.cni_version));
    if let Some(prev) = prev {
        conf.insert("prevResult".into(), prev.clone());
    }
    let caps = plugin.get("capabilities").and_then(Value::as_object);
    let mut runtime = Map::new();
    if caps.is_some_and(|c| c.get("portMappings") == Some(&json!(true))) && !att.port_mappings.is_empty() {
        runtime.insert("portMappings".into(), json!(att.port_mappings));
    }
    conf.remove("capabilities");
    if !runtime.is_empty() {
        conf.insert("runtimeConfig".into(), Value::Object(runtime));
    }
    Value::Object(conf)
}

/// `CNI_ARGS`: `IgnoreUnknown=1;K=V;...`.
pub fn cni_args(args: &[(String, String)]) -> String {
    let mut s = String::from("IgnoreUnknown=1");
    for (k, v) in args {
        s.push_str(&format!(";{k}={v}"));
    }
    s
}

/// IP addresses (CIDR form) of a result in any spec version.
pub fn result_ips(result: &Value) -> Vec<String> {
    if let Some(ips) = result.get("ips").and_then(Value::as_array) {
        return ips.iter().filter_map(|ip| ip.get("address").and_then(Value::as_str).map(str::to_string)).collect();
    }
    ["ip4", "ip6"]
        .iter()
        .filter_map(|k| result.get(*k).and_then(|v| v.get("ip")).and_then(Value::as_str).map(str::to_string))
        .collect()
}

pub struct Cni {
    pub conf_dir: PathBuf,
    pub bin_dirs: Vec<PathBuf>,
    pub cache_dir: PathBuf,
}

impl Cni {
    fn find(&self, plugin: &str) -> Result<PathBuf, CniError> {
        self.bin_dirs.iter().map(|d| d.join(plugin)).find(|p| p.is_file()).ok_or_else(|| CniError::NoPlugin {
            plugin: plugin.into(),
            dirs: self.bin_dirs.iter().map(|d| d.display().to_string()).collect::<Vec<_>>().join(":"),
        })
    }

    /// NetworkReady: a configuration exists and every plugin it names is installed.
    pub fn ready(&self) -> Result<NetworkList, CniError> {
        let list = load_first(&self.conf_dir)?;
        for p in &list.plugins {
            self.find(p["type"].as_str().unwrap_or_default())?;
        }
        Ok(list)
    }

    fn cache_path(&self, list_name: &str, att: &Attachment<'_>) -> PathBuf {
        self.cache_dir.join(format!("{list_name}-{}-{}.json", att.container_id, att.ifname))
    }

    pub async fn add(&self, att: &Attachment<'_>) -> Result<AddResult, CniError> {
        let list = load_first(&self.conf_dir)?;
        let mut prev: Option<Value> = None;
        for (i, plugin) in list.plugins.iter().enumerate() {
            let conf = plugin_config(&list, plugin, prev.as_ref(), att);
            match self.invoke(plugin, "ADD", &conf, att).await {
                Ok(result) => prev = Some(result),
                Err(e) => {
                    // Undo what the earlier plugins (and this one) may have made.
                    let _ = self.del_plugins(&list, &list.plugins[..=i], prev.as_ref(), att).await;
                    return Err(e);
                }
            }
        }
        let raw = prev.unwrap_or(Value::Null);
        let cache = self.cache_path(&list.name, att);
        let entry = json!({ "kind": "cniCacheV1", "config": String::from_utf8_lossy(&list.bytes), "result": raw, "netns": att.netns });
        crate::store::write_json(&cache, &entry, true)
            .map_err(|source| CniError::Cache { path: cache.clone(), source })?;
        Ok(AddResult { ips: result_ips(&raw), raw })
    }

    /// DEL with the configuration and result cached at ADD (falling back to the current
    /// configuration); missing netns, links and allocations are the plugins' success cases.
    pub async fn del(&self, att: &Attachment<'_>) -> Result<(), CniError> {
        let current = load_first(&self.conf_dir);
        let cached: Option<(NetworkList, Value, PathBuf)> = std::fs::read_dir(&self.cache_dir).ok().and_then(|rd| {
            rd.filter_map(|e| e.ok().map(|e| e.path()))
                .filter(|p| {
                    p.file_name()
                        .and_then(|n| n.to_str())
                        .is_some_and(|n| n.ends_with(&format!("-{}-{}.json", att.container_id, att.ifname)))
                })
                .find_map(|p| {
                    let v: Value = serde_json::from_slice(&std::fs::read(&p).ok()?).ok()?;
                    let list = parse_list(v["config"].as_str()?.as_bytes(), true).ok()?;
                    Some((list, v["result"].clone(), p))
                })
        });
        let (list, prev, cache) = match cached {
            Some((l, r, p)) => (l, Some(r), Some(p)),
            None => match current {
                Ok(l) => (l, None, None),
                // Nothing was ever added with a config we can find: nothing to delete.
                Err(_) => return Ok(()),
            },
        };
        self.del_plugins(&list, &list.plugins, prev.as_ref(), att).await?;
        if let Some(cache) = cache {
            let _ = std::fs::remove_file(cache);
        }
        Ok(())
    }

    async fn del_plugins(
        &self,
        list: &NetworkList,
        plugins: &[Value],
        prev: Option<&Value>,
        att: &Attachment<'_>,
    ) -> Result<(), CniError> {
        let mut first_error = None;
        for plugin in plugins.iter().rev() {
            let conf = plugin_config(list, plugin, prev.filter(|_| version_at_least(&list.cni_version, 0, 4)), att);
            if let Err(e) = self.invoke(plugin, "DEL", &conf, att).await {
                tracing::warn!(error = %crate::error_chain(&e), "CNI DEL");
                first_error.get_or_insert(e);
            }
        }
        first_error.map_or(Ok(()), Err)
    }

    async fn invoke(
        &self,
        plugin: &Value,
        command: &'static str,
        conf: &Value,
        att: &Attachment<'_>,
    ) -> Result<Value, CniError> {
        let name = plugin["type"].as_str().unwrap_or_default().to_string();
        let binary = self.find(&name)?;
        let netns = if att.netns.exists() { att.netns.display().to_string() } else { String::new() };
        let mut cmd = tokio::process::Command::new(&binary);
        cmd.env_clear()
            .env("PATH", std::env::var_os("PATH").unwrap_or_else(|| "/usr/sbin:/usr/bin:/sbin:/bin".into()))
            .env("CNI_COMMAND", command)
            .env("CNI_CONTAINERID", att.container_id)
            .env("CNI_NETNS", netns)
            .env("CNI_IFNAME", att.ifname)
            .env("CNI_ARGS", cni_args(&att.args))
            .env("CNI_PATH", std::env::join_paths(&self.bin_dirs).unwrap_or_default())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true);
        let mut child = cmd.spawn().map_err(|source| CniError::Spawn { plugin: name.clone(), source })?;
        let input = serde_json::to_vec(conf).unwrap_or_default();
        if let Some(mut stdin) = child.stdin.take() {
            let _ = stdin.write_all(&input).await;
        }
        let out = match tokio::time::timeout(PLUGIN_TIMEOUT, child.wait_with_output()).await {
            Ok(r) => r.map_err(|source| CniError::Spawn { plugin: name.clone(), source })?,
            Err(_) => return Err(CniError::Timeout { plugin: name, command }),
        };
        if !out.status.success() {
            let message = match serde_json::from_slice::<Value>(&out.stdout) {
                Ok(v) if v.get("msg").is_some() => {
                    let details = v.get("details").and_then(Value::as_str).filter(|d| !d.is_empty());
                    format!(
                        "code {}: {}{}",
                        v["code"],
                        v["msg"].as_str().unwrap_or_default(),
                        details.map(|d| format!(" ({d})")).unwrap_or_default()
                    )
                }
                _ => format!("{}: {}", out.status, String::from_utf8_lossy(&out.stderr).trim()),
            };
            return Err(CniError::Plugin { plugin: name, command, message });
        }
        if command != "ADD" {
            return Ok(Value::Null);
        }
        serde_json::from_slice(&out.stdout).map_err(|e| CniError::Plugin {
            plugin: name,
            command,
            message: format!("result is not JSON: {e}"),
        })
    }
}

fn version_at_least(v: &str, major: u32, minor: u32) -> bool {
    let mut it = v.split('.').map(|p| p.parse::<u32>().unwrap_or(0));
    let (a, b) = (it.next().unwrap_or(0), it.next().unwrap_or(0));
    (a, b) >= (major, minor)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn att() -> Attachment<'static> {
        Attachment {
            container_id: "abc",
            netns: Path::new("/run/netns/x"),
            ifname: "eth0",
            args: vec![("K8S_POD_NAME".into(), "web".into())],
            port_mappings: vec![json!({"hostPort": 8080, "containerPort": 80, "protocol": "tcp"})],
        }
    }

    #[test]
    fn a_single_conf_becomes_a_list_of_one() {
        let l = parse_list(br#"{"cniVersion":"0.3.1","name":"n","type":"bridge"}"#, false).unwrap();
        assert_eq!((l.name.as_str(), l.cni_version.as_str(), l.plugins.len()), ("n", "0.3.1", 1));
    }

    #[test]
    fn bad_lists_are_named() {
        assert!(parse_list(b"{", true).unwrap_err().contains("not JSON"));
        assert!(parse_list(br#"{"plugins":[]}"#, true).unwrap_err().contains("name"));
        assert!(parse_list(br#"{"name":"n","plugins":[]}"#, true).unwrap_err().contains("empty"));
        assert!(parse_list(br#"{"name":"n","plugins":[{"x":1}]}"#, true).unwrap_err().contains("plugins[0]"));
    }

    #[test]
    fn plugin_config_gets_name_version_prev_and_declared_capabilities_only() {
        let list = parse_list(br#"{"cniVersion":"1.0.0","name":"pods","plugins":[{"type":"bridge"},{"type":"portmap","capabilities":{"portMappings":true}}]}"#, true).unwrap();
        let prev = json!({"ips":[{"address":"10.1.0.2/24"}]});
        let bridge = plugin_config(&list, &list.plugins[0], None, &att());
        assert_eq!(bridge["name"], "pods");
        assert_eq!(bridge["cniVersion"], "1.0.0");
        assert!(bridge.get("runtimeConfig").is_none() && bridge.get("prevResult").is_none());
        let pm = plugin_config(&list, &list.plugins[1], Some(&prev), &att());
        assert_eq!(pm["prevResult"], prev);
        assert_eq!(pm["runtimeConfig"]["portMappings"][0]["hostPort"], 8080);
        assert!(pm.get("capabilities").is_none());
    }

    #[test]
    fn result_ips_reads_every_version() {
        assert_eq!(
            result_ips(&json!({"ips":[{"address":"10.0.0.2/24"},{"address":"fd00::2/64"}]})),
            vec!["10.0.0.2/24", "fd00::2/64"]
        );
        assert_eq!(result_ips(&json!({"ip4":{"ip":"10.0.0.3/24"}})), vec!["10.0.0.3/24"]);
    }

    #[test]
    fn first_config_in_name_order_wins_and_broken_ones_are_skipped() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("00-broken.conflist"), "{").unwrap();
        std::fs::write(
            dir.path().join("10-b.conflist"),
            r#"{"name":"b","cniVersion":"1.0.0","plugins":[{"type":"bridge"}]}"#,
        )
        .unwrap();
        std::fs::write(dir.path().join("20-a.conf"), r#"{"name":"a","type":"bridge"}"#).unwrap();
        std::fs::write(dir.path().join("README"), "x").unwrap();
        assert_eq!(load_first(dir.path()).unwrap().name, "b");
        let empty = tempfile::tempdir().unwrap();
        assert!(matches!(load_first(empty.path()), Err(CniError::NoConfig { .. })));
    }

    #[test]
    fn cni_args_start_with_ignore_unknown() {
        assert_eq!(cni_args(&att().args), "IgnoreUnknown=1;K8S_POD_NAME=web");
        assert!(version_at_least("0.4.0", 0, 4) && version_at_least("1.1.0", 0, 4) && !version_at_least("0.3.1", 0, 4));
    }
}
