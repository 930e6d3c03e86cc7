//! The HTTP side of the streaming server: route `/{exec,attach,portforward}/{token}`, redeem the
//! token, negotiate SPDY/3.1 or WebSocket and its subprotocol, answer 101, and hand the upgraded
//! connection to the protocol handler.

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::Full;
use hyper::body::Incoming;
use hyper::header::{HeaderMap, HeaderValue, CONNECTION, UPGRADE};
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;

use super::tokens::{Pending, TokenCache};
use super::{portforward, remotecommand, Backend};
use remotecommand::Target;

const STREAM_PROTOCOL_VERSION: &str = "x-stream-protocol-version";
const ACCEPTED_STREAM_PROTOCOL_VERSIONS: &str = "x-accepted-stream-protocol-versions";
const WEBSOCKET_PROTOCOL: &str = "sec-websocket-protocol";

/// What every request handler needs.
pub(crate) struct Shared {
    pub(crate) backend: Arc<dyn Backend>,
    pub(crate) tokens: TokenCache,
    pub(crate) creation_timeout: Duration,
}

type Reply = Response<Full<Bytes>>;

fn plain(status: StatusCode, text: impl Into<String>) -> Reply {
    let mut response = Response::new(Full::new(Bytes::from(text.into() + "\n")));
    *response.status_mut() = status;
    response
}

/// Serves one HTTP request.
pub(crate) async fn handle(shared: Arc<Shared>, req: Request<Incoming>) -> Result<Reply, Infallible> {
    if req.method() != Method::GET && req.method() != Method::POST {
        return Ok(plain(StatusCode::METHOD_NOT_ALLOWED, "only GET and POST"));
    }
    let mut parts = req.uri().path().trim_start_matches('/').splitn(2, '/');
    let (kind, token) = (parts.next().unwrap_or(""), parts.next().unwrap_or(""));
    let pending = match (kind, shared.tokens.take(token)) {
        ("exec", Some(p @ Pending::Exec(_)))
        | ("attach", Some(p @ Pending::Attach(_)))
        | ("portforward", Some(p @ Pending::PortForward(_))) => p,
        _ => return Ok(plain(StatusCode::NOT_FOUND, "404 page not found")),
    };
    let websocket = header_has(req.headers(), UPGRADE.as_str(), "websocket");
    let spdy = header_has(req.headers(), UPGRADE.as_str(), "spdy/3.1");
    if !header_has(req.headers(), CONNECTION.as_str(), "upgrade") || !(websocket || spdy) {
        return Ok(plain(StatusCode::BAD_REQUEST, "unable to upgrade: missing upgrade headers in request"));
    }
    Ok(if websocket { upgrade_websocket(shared, req, pending) } else { upgrade_spdy(shared, req, pending) })
}

/// Whether any value of header `name` contains `needle` (case-insensitive).
fn header_has(headers: &HeaderMap, name: &str, needle: &str) -> bool {
    headers.get_all(name).iter().filter_map(|v| v.to_str().ok()).any(|v| v.to_ascii_lowercase().contains(needle))
}

/// The comma-separated values of every `name` header, in order.
fn header_list(headers: &HeaderMap, name: &str) -> Vec<String> {
    headers
        .get_all(name)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(','))
        .map(|p| p.trim().to_string())
        .filter(|p| !p.is_empty())
        .collect()
}

/// The first of the client's protocols the server supports (the client lists best first).
pub(crate) fn negotiate(client: &[String], server: &[&'static str]) -> Option<&'static str> {
    client.iter().find_map(|c| server.iter().copied().find(|s| s == c))
}

fn upgrade_spdy(shared: Arc<Shared>, mut req: Request<Incoming>, pending: Pending) -> Reply {
    let supported = match pending {
        Pending::PortForward(_) => portforward::SPDY_PROTOCOLS,
        _ => remotecommand::SPDY_PROTOCOLS,
    };
    let offered = header_list(req.headers(), STREAM_PROTOCOL_VERSION);
    if offered.is_empty() {
        return plain(StatusCode::BAD_REQUEST, "unable to upgrade: no X-Stream-Protocol-Version header");
    }
    let Some(protocol) = negotiate(&offered, supported) else {
        let mut reply = plain(
            StatusCode::FORBIDDEN,
            format!("unable to upgrade: unable to negotiate protocol: client supports {offered:?}, server accepts {supported:?}"),
        );
        for p in supported {
            reply.headers_mut().append(ACCEPTED_STREAM_PROTOCOL_VERSIONS, HeaderValue::from_static(p));
        }
        return reply;
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(err) => return tracing::debug!(error = %err, "SPDY upgrade failed"),
        };
        let (backend, timeout) = (shared.backend.clone(), shared.creation_timeout);
        match pending {
            Pending::Exec(r) => {
                remotecommand::serve_spdy(backend, Target::Exec(r), protocol, io, Bytes::new(), timeout).await
            }
            Pending::Attach(r) => {
                remotecommand::serve_spdy(backend, Target::Attach(r), protocol, io, Bytes::new(), timeout).await
            }
            Pending::PortForward(r) => portforward::serve_spdy(backend, r, io, Bytes::new(), timeout).await,
        }
    });
    let mut reply = plain(StatusCode::SWITCHING_PROTOCOLS, "");
    *reply.body_mut() = Full::new(Bytes::new());
    let headers = reply.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("SPDY/3.1"));
    headers.insert(STREAM_PROTOCOL_VERSION, HeaderValue::from_static(protocol));
    reply
}

fn upgrade_websocket(shared: Arc<Shared>, mut req: Request<Incoming>, pending: Pending) -> Reply {
    let headers = req.headers();
    let Some(key) = headers.get("sec-websocket-key").and_then(|k| k.to_str().ok()) else {
        return plain(StatusCode::BAD_REQUEST, "missing Sec-WebSocket-Key");
    };
    if headers.get("sec-websocket-version").and_then(|v| v.to_str().ok()) != Some("13") {
        let mut reply = plain(StatusCode::BAD_REQUEST, "unsupported WebSocket version");
        reply.headers_mut().insert("sec-websocket-version", HeaderValue::from_static("13"));
        return reply;
    }
    let accept = super::ws::frame::accept_key(key);
    let mut offered = header_list(headers, WEBSOCKET_PROTOCOL);
    if offered.is_empty() {
        offered.push(String::new());
    }
    let supported: Vec<&'static str> = match pending {
        Pending::PortForward(_) => {
            portforward::WS_TUNNEL_PROTOCOLS.iter().chain(portforward::WS_CHANNEL_PROTOCOLS).copied().collect()
        }
        _ => remotecommand::WS_PROTOCOLS.to_vec(),
    };
    let Some(protocol) = negotiate(&offered, &supported) else {
        return plain(
            StatusCode::FORBIDDEN,
            format!("requested protocol(s) are not supported: {offered:?}; supports {supported:?}"),
        );
    };
    let on_upgrade = hyper::upgrade::on(&mut req);
    tokio::spawn(async move {
        let io = match on_upgrade.await {
            Ok(upgraded) => TokioIo::new(upgraded),
            Err(err) => return tracing::debug!(error = %err, "WebSocket upgrade failed"),
        };
        let (backend, timeout) = (shared.backend.clone(), shared.creation_timeout);
        match pending {
            Pending::Exec(r) => remotecommand::serve_ws(backend, Target::Exec(r), protocol, io, Bytes::new()).await,
            Pending::Attach(r) => remotecommand::serve_ws(backend, Target::Attach(r), protocol, io, Bytes::new()).await,
            Pending::PortForward(r) if portforward::WS_TUNNEL_PROTOCOLS.contains(&protocol) => {
                portforward::serve_ws_tunnel(backend, r, io, Bytes::new(), timeout).await
            }
            Pending::PortForward(r) => portforward::serve_ws_channels(backend, r, protocol, io, Bytes::new()).await,
        }
    });
    let mut reply = Response::new(Full::new(Bytes::new()));
    *reply.status_mut() = StatusCode::SWITCHING_PROTOCOLS;
    let headers = reply.headers_mut();
    headers.insert(CONNECTION, HeaderValue::from_static("Upgrade"));
    headers.insert(UPGRADE, HeaderValue::from_static("websocket"));
    if let Ok(accept) = HeaderValue::from_str(&accept) {
        headers.insert("sec-websocket-accept", accept);
    }
    if !protocol.is_empty() {
        headers.insert(WEBSOCKET_PROTOCOL, HeaderValue::from_static(protocol));
    }
    reply
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn negotiation_takes_the_clients_first_supported_protocol() {
        let client = vec!["v9.channel.k8s.io".to_string(), "v4.channel.k8s.io".into(), "v5.channel.k8s.io".into()];
        assert_eq!(negotiate(&client, remotecommand::SPDY_PROTOCOLS), Some("v4.channel.k8s.io"));
        assert_eq!(negotiate(&["nope".to_string()], remotecommand::SPDY_PROTOCOLS), None);
        assert_eq!(negotiate(&[String::new()], remotecommand::WS_PROTOCOLS), Some(""));
    }
}
