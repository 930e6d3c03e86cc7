//! pods/log, pods/exec, pods/attach, pods/portforward and nodes/proxy: authorised here, then
//! forwarded to the node's agent (kubelet API) as kube-apiserver does. Plain responses (logs,
//! `follow` included) stream back frame by frame; an upgrade (SPDY/3.1 or WebSocket, which is
//! how exec, attach and port-forward run) is passed through with its negotiation headers and,
//! once the agent answers 101, both connections are spliced byte for byte.

use std::convert::Infallible;

use bytes::Bytes;
use http::{header, HeaderMap, HeaderName, Method, Request, Response, StatusCode};
use http_body_util::{BodyExt, Empty, Full, Limited, StreamBody};
use hyper::body::Incoming;
use hyper_util::rt::TokioIo;
use serde_json::Value;

use super::authz::{self, Attrs};
use super::resources;
use super::selector::FieldSelector;
use super::status::ApiError;
use super::{Api, Body, MAX_BODY};
use crate::auth::User;
use crate::kubelet::OutBody;

/// The agent's port when the Node does not say (kubelet's default).
const DEFAULT_KUBELET_PORT: u16 = 10250;

/// Log options kube-apiserver passes on to `/containerLogs` (PodLogOptions).
const LOG_PARAMS: &[&str] =
    &["follow", "previous", "sinceSeconds", "sinceTime", "timestamps", "tailLines", "limitBytes"];

/// A request this module serves.
#[derive(Debug, PartialEq)]
pub enum Target {
    /// `/api/v1/namespaces/NS/pods/NAME/{log,exec,attach,portforward}`
    Pod { ns: String, name: String, sub: String },
    /// `/api/v1/nodes/NAME/proxy/REST` (REST without its leading slash, as sent).
    Node { name: String, rest: String },
}

/// Recognises a proxied path.
pub fn match_path(path: &str) -> Option<Target> {
    let seg: Vec<&str> = path.trim_start_matches('/').split('/').collect();
    match seg.as_slice() {
        ["api", "v1", "namespaces", ns, "pods", name, sub @ ("log" | "exec" | "attach" | "portforward")] => {
            Some(Target::Pod { ns: ns.to_string(), name: name.to_string(), sub: sub.to_string() })
        }
        ["api", "v1", "nodes", name, "proxy", rest @ ..] => {
            Some(Target::Node { name: name.to_string(), rest: rest.join("/") })
        }
        _ => None,
    }
}

/// The authorisation verb of a non-resource request's HTTP method, as kube-apiserver and
/// kubelet map it (the agent authorises its API with this too).
pub fn verb(m: &Method) -> &'static str {
    match *m {
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "unknown",
    }
}

/// Authorises, resolves the agent and forwards.
pub async fn handle<B>(
    api: &Api,
    mut req: Request<B>,
    t: Target,
    user: Option<&User>,
) -> Result<Response<Body>, ApiError>
where
    B: hyper::body::Body<Data = Bytes> + Send + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    let user = user.ok_or_else(ApiError::unauthorized)?;
    let query: Vec<(String, String)> =
        req.uri().query().map(|q| form_urlencoded::parse(q.as_bytes()).into_owned().collect()).unwrap_or_default();
    let fields = FieldSelector::default();
    let (r, ns, name, sub) = match &t {
        Target::Pod { ns, name, sub } => (resources::by_kind("Pod"), Some(ns.as_str()), name.as_str(), sub.as_str()),
        Target::Node { name, .. } => (resources::by_kind("Node"), None, name.as_str(), "proxy"),
    };
    let attrs = Attrs {
        verb: verb(req.method()),
        resource: r,
        sub: Some(sub),
        namespace: ns,
        name: Some(name),
        fields: &fields,
    };
    authz::authorize(&api.reg, user, &attrs).await?;
    let (node, path_and_query) = match &t {
        Target::Pod { ns, name, sub } => {
            let pod = api.reg.get(r, Some(ns), name).await?;
            let node = pod["spec"]["nodeName"]
                .as_str()
                .filter(|n| !n.is_empty())
                .ok_or_else(|| ApiError::bad_request(format!("pod {name} does not have a host assigned")))?
                .to_string();
            (node, agent_path(&pod, sub, &query)?)
        }
        Target::Node { name, rest } => {
            (name.clone(), format!("/{rest}{}", req.uri().query().map(|q| format!("?{q}")).unwrap_or_default()))
        }
    };
    let node_obj = api.reg.get(resources::by_kind("Node"), None, &node).await?;
    let (host, port) = agent_endpoint(&node_obj)
        .ok_or_else(|| ApiError::bad_request(format!("node {node} has no address to reach its agent at")))?;
    let upgrade = is_upgrade(req.headers());
    let client_upgrade = upgrade.then(|| hyper::upgrade::on(&mut req));
    let (parts, body) = req.into_parts();
    let out_body: OutBody = if upgrade {
        Empty::new().boxed()
    } else {
        let b = Limited::new(body, MAX_BODY)
            .collect()
            .await
            .map_err(|e| ApiError::bad_request(format!("request body: {e}")))?
            .to_bytes();
        Full::new(b).boxed()
    };
    let mut out = Request::builder()
        .method(parts.method.clone())
        .uri(&path_and_query)
        .body(out_body)
        .map_err(|e| ApiError::bad_request(format!("agent request: {e}")))?;
    *out.headers_mut() = forward_headers(&parts.headers, upgrade);
    let authority = if host.contains(':') { format!("[{host}]:{port}") } else { format!("{host}:{port}") };
    out.headers_mut().insert(
        header::HOST,
        authority.parse().map_err(|_| ApiError::bad_request("node address is not a valid host"))?,
    );
    tracing::debug!(%node, %host, port, path = %path_and_query, upgrade, "proxying to the agent");
    let resp = api.kubelet.send(&host, port, out).await.map_err(|e| ApiError {
        code: 502,
        reason: "InternalError",
        message: format!("error dialing backend: {}", chain(&e)),
        details: None,
    })?;
    match client_upgrade {
        Some(client) if resp.status() == StatusCode::SWITCHING_PROTOCOLS => Ok(splice(client, resp)),
        _ => Ok(stream_back(resp)),
    }
}

/// The agent's path and query for a pod subresource.
fn agent_path(pod: &Value, sub: &str, query: &[(String, String)]) -> Result<String, ApiError> {
    let (ns, name) = (
        pod["metadata"]["namespace"].as_str().unwrap_or_default(),
        pod["metadata"]["name"].as_str().unwrap_or_default(),
    );
    let mut q = form_urlencoded::Serializer::new(String::new());
    let path = if sub == "portforward" {
        for (k, v) in query {
            q.append_pair(k, v);
        }
        format!("/portForward/{ns}/{name}")
    } else {
        let container = container_of(pod, query.iter().find(|(k, _)| k == "container").map(|(_, v)| v.as_str()))?;
        for (k, v) in query.iter().filter(|(k, _)| k != "container") {
            if sub != "log" || LOG_PARAMS.contains(&k.as_str()) {
                q.append_pair(k, v);
            }
        }
        let prefix = match sub {
            "log" => "containerLogs",
            other => other,
        };
        format!("/{prefix}/{ns}/{name}/{container}")
    };
    let q = q.finish();
    Ok(if q.is_empty() { path } else { format!("{path}?{q}") })
}

/// The named container (any of init, regular and ephemeral), or the only one.
fn container_of(pod: &Value, asked: Option<&str>) -> Result<String, ApiError> {
    let spec = &pod["spec"];
    let names = |list: &str| -> Vec<String> {
        spec[list].as_array().into_iter().flatten().filter_map(|c| c["name"].as_str().map(String::from)).collect()
    };
    let pod_name = pod["metadata"]["name"].as_str().unwrap_or_default();
    let containers = names("containers");
    match asked.filter(|a| !a.is_empty()) {
        Some(c) => {
            let all: Vec<String> = [names("initContainers"), containers, names("ephemeralContainers")].concat();
            if all.iter().any(|n| n == c) {
                Ok(c.to_string())
            } else {
                Err(ApiError::bad_request(format!("container {c} is not valid for pod {pod_name}")))
            }
        }
        None if containers.len() == 1 => Ok(containers[0].clone()),
        None => Err(ApiError::bad_request(format!(
            "a container name must be specified for pod {pod_name}, choose one of: [{}]",
            containers.join(" ")
        ))),
    }
}

/// Where the node's agent listens: its InternalIP (else ExternalIP, else Hostname) and
/// `status.daemonEndpoints.kubeletEndpoint.Port` (10250 when unset).
pub fn agent_endpoint(node: &Value) -> Option<(String, u16)> {
    let addrs = node["status"]["addresses"].as_array()?;
    let host = ["InternalIP", "ExternalIP", "Hostname"].iter().find_map(|t| {
        addrs.iter().find(|a| a["type"] == *t).and_then(|a| a["address"].as_str()).filter(|a| !a.is_empty())
    })?;
    let port = node["status"]["daemonEndpoints"]["kubeletEndpoint"]["Port"]
        .as_u64()
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p != 0)
        .unwrap_or(DEFAULT_KUBELET_PORT);
    Some((host.to_string(), port))
}

fn is_upgrade(h: &HeaderMap) -> bool {
    h.contains_key(header::UPGRADE)
        && h.get_all(header::CONNECTION)
            .iter()
            .any(|v| v.to_str().is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("upgrade"))))
}

/// Hop-by-hop headers, which never cross the proxy (except Connection/Upgrade on an upgrade).
fn hop_by_hop(n: &HeaderName) -> bool {
    matches!(
        n.as_str(),
        "connection"
            | "upgrade"
            | "keep-alive"
            | "proxy-connection"
            | "proxy-authenticate"
            | "proxy-authorization"
            | "te"
            | "trailer"
            | "transfer-encoding"
    )
}

/// The client's headers minus its credentials, impersonation, Host and hop-by-hop headers;
/// an upgrade keeps Connection and Upgrade (and all the `Sec-WebSocket-*` and
/// `X-Stream-Protocol-Version` negotiation).
fn forward_headers(h: &HeaderMap, upgrade: bool) -> HeaderMap {
    let mut out = HeaderMap::new();
    for (n, v) in h {
        let drop = n == header::AUTHORIZATION
            || n == header::HOST
            || n == header::CONTENT_LENGTH
            || n.as_str().starts_with("impersonate-")
            || (hop_by_hop(n) && !(upgrade && (n == header::CONNECTION || n == header::UPGRADE)));
        if !drop {
            out.append(n.clone(), v.clone());
        }
    }
    out
}

/// The agent's answer, body streamed as it arrives (so `logs -f` follows).
fn stream_back(resp: Response<Incoming>) -> Response<Body> {
    let (parts, incoming) = resp.into_parts();
    let frames = futures_util::stream::unfold(incoming, |mut b| async move {
        match b.frame().await {
            Some(Ok(f)) => Some((Ok::<_, Infallible>(f), b)),
            Some(Err(e)) => {
                tracing::debug!(error = %e, "agent response body ended with an error");
                None
            }
            None => None,
        }
    });
    let mut out = Response::new(BodyExt::boxed(StreamBody::new(frames)));
    *out.status_mut() =
        if parts.status == StatusCode::SWITCHING_PROTOCOLS { StatusCode::BAD_GATEWAY } else { parts.status };
    for (n, v) in &parts.headers {
        if !hop_by_hop(n) {
            out.headers_mut().append(n.clone(), v.clone());
        }
    }
    out
}

/// Answers 101 with the agent's negotiation headers and splices the two upgraded connections.
fn splice(client: hyper::upgrade::OnUpgrade, mut resp: Response<Incoming>) -> Response<Body> {
    let mut out = Response::new(BodyExt::boxed(Empty::<Bytes>::new().map_err(|e: Infallible| match e {})));
    *out.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    for (n, v) in resp.headers() {
        if !hop_by_hop(n) || n == header::CONNECTION || n == header::UPGRADE {
            out.headers_mut().append(n.clone(), v.clone());
        }
    }
    let agent = hyper::upgrade::on(&mut resp);
    tokio::spawn(async move {
        let (client, agent) = match tokio::try_join!(client, agent) {
            Ok(pair) => pair,
            Err(e) => {
                tracing::debug!(error = %e, "upgrade failed");
                return;
            }
        };
        let (mut c, mut a) = (TokioIo::new(client), TokioIo::new(agent));
        match tokio::io::copy_bidirectional(&mut c, &mut a).await {
            Ok((up, down)) => tracing::debug!(up, down, "upgraded stream closed"),
            Err(e) => tracing::debug!(error = %e, "upgraded stream ended with an error"),
        }
    });
    out
}

/// An error and its sources on one line.
fn chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut src = e.source();
    while let Some(c) = src {
        s.push_str(": ");
        s.push_str(&c.to_string());
        src = c.source();
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn paths() {
        assert_eq!(
            match_path("/api/v1/namespaces/d/pods/p/exec"),
            Some(Target::Pod { ns: "d".into(), name: "p".into(), sub: "exec".into() })
        );
        assert_eq!(
            match_path("/api/v1/nodes/n1/proxy/stats/summary"),
            Some(Target::Node { name: "n1".into(), rest: "stats/summary".into() })
        );
        assert_eq!(match_path("/api/v1/nodes/n1/proxy"), Some(Target::Node { name: "n1".into(), rest: String::new() }));
        assert_eq!(match_path("/api/v1/namespaces/d/pods/p/status"), None);
        assert_eq!(match_path("/api/v1/namespaces/d/pods/p"), None);
    }

    #[test]
    fn agent_paths_and_containers() {
        let pod = json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"initContainers": [{"name": "init"}], "containers": [{"name": "a"}, {"name": "b"}]}});
        let q = |s: &str| form_urlencoded::parse(s.as_bytes()).into_owned().collect::<Vec<_>>();
        assert_eq!(
            agent_path(&pod, "log", &q("container=b&follow=true&tailLines=3&pretty=1")).unwrap(),
            "/containerLogs/d/p/b?follow=true&tailLines=3"
        );
        assert_eq!(
            agent_path(&pod, "exec", &q("container=init&command=ls&command=-l&stdout=true")).unwrap(),
            "/exec/d/p/init?command=ls&command=-l&stdout=true"
        );
        assert_eq!(agent_path(&pod, "portforward", &q("ports=80")).unwrap(), "/portForward/d/p?ports=80");
        let e = agent_path(&pod, "log", &[]).unwrap_err();
        assert!(e.message.contains("choose one of: [a b]"), "{}", e.message);
        assert_eq!(agent_path(&pod, "attach", &q("container=zz")).unwrap_err().code, 400);
        let single = json!({"metadata": {"name": "p", "namespace": "d"}, "spec": {"containers": [{"name": "only"}]}});
        assert_eq!(agent_path(&single, "attach", &q("stdin=true")).unwrap(), "/attach/d/p/only?stdin=true");
    }

    #[test]
    fn endpoints_and_headers() {
        let n = json!({"status": {"addresses": [{"type": "Hostname", "address": "h"}, {"type": "InternalIP", "address": "10.0.0.5"}], "daemonEndpoints": {"kubeletEndpoint": {"Port": 11250}}}});
        assert_eq!(agent_endpoint(&n), Some(("10.0.0.5".into(), 11250)));
        let n = json!({"status": {"addresses": [{"type": "Hostname", "address": "h"}]}});
        assert_eq!(agent_endpoint(&n), Some(("h".into(), 10250)));
        assert_eq!(agent_endpoint(&json!({})), None);
        let mut h = HeaderMap::new();
        for (k, v) in [
            ("authorization", "Bearer x"),
            ("connection", "Upgrade"),
            ("upgrade", "websocket"),
            ("sec-websocket-protocol", "v5.channel.k8s.io"),
            ("impersonate-user", "x"),
            ("x-stream-protocol-version", "v4.channel.k8s.io"),
        ] {
            h.append(HeaderName::from_static(k), v.parse().unwrap());
        }
        assert!(is_upgrade(&h));
        let up = forward_headers(&h, true);
        let names: Vec<&str> = up.keys().map(|k| k.as_str()).collect();
        assert_eq!(names, ["connection", "upgrade", "sec-websocket-protocol", "x-stream-protocol-version"]);
        let plain = forward_headers(&h, false);
        assert!(!plain.contains_key("connection") && !plain.contains_key("authorization"));
    }
}
