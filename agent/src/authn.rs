//! Who may call the kubelet API, and what for (kubelet's `--authentication-token-webhook` and
//! `--authorization-mode=Webhook`). Client certificates signed by the cluster CA are trusted as
//! before (other nodes' identities refused). A bearer token is checked with a TokenReview
//! against the control plane — positive answers cached for two minutes, keyed by the token's
//! SHA-256 — and the caller is then authorised with a SubjectAccessReview on the node's
//! subresource for the path (`nodes/stats`, `nodes/metrics`, `nodes/log`, `nodes/spec`,
//! `nodes/proxy` for the rest), unless `authorization.mode` is `AlwaysAllow`. An allowed
//! (user, verb, subresource) is trusted for five minutes, as kubelet's webhook cache does;
//! denials are asked again each time, so a new grant works at once.
//! No credential or a refused token → 401; a caller the review denies → 403.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use hyper::{Method, StatusCode};
use k8s_openapi::api::authentication::v1::{TokenReview, TokenReviewSpec};
use k8s_openapi::api::authorization::v1::{ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec};
use kube::api::PostParams;

/// How long a positive TokenReview is trusted (kubelet's `cacheTTL` default).
pub const TOKEN_CACHE_TTL: Duration = Duration::from_secs(120);
/// How long an allowed SubjectAccessReview is trusted (kubelet's `cacheAuthorizedTTL`).
pub const ALLOWED_CACHE_TTL: Duration = Duration::from_secs(300);

#[derive(Debug, thiserror::Error)]
pub enum AuthError {
    #[error("{what} against the control plane")]
    Review {
        what: &'static str,
        #[source]
        source: kube::Error,
    },
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Identity {
    pub name: String,
    pub groups: Vec<String>,
}

/// What a request asks to do: verb on `nodes/<subresource>` of this node.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Attributes {
    pub verb: &'static str,
    pub subresource: &'static str,
}

/// The API verb of an HTTP method, as kube-apiserver and kubelet map them.
fn verb(method: &Method) -> &'static str {
    match *method {
        Method::GET | Method::HEAD => "get",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "unknown",
    }
}

/// kubelet's mapping of a request to the node subresource it is authorised on.
pub fn attributes(method: &Method, path: &str) -> Attributes {
    let verb = verb(method);
    let first = path.trim_start_matches('/').split('/').next().unwrap_or_default();
    let subresource = match first {
        "stats" => "stats",
        "metrics" => "metrics",
        "logs" => "log",
        "spec" => "spec",
        _ => "proxy",
    };
    Attributes { verb, subresource }
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// The control plane's review APIs (a fake in unit tests).
pub trait Reviewer: Send + Sync + 'static {
    /// The token's user, None when the control plane says it is not valid.
    fn token_review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<Identity>, AuthError>>;
    /// Whether `who` may `attrs` on node `node`; the reason when not.
    fn access_review<'a>(
        &'a self,
        who: &'a Identity,
        node: &'a str,
        attrs: &'a Attributes,
    ) -> BoxFuture<'a, Result<(bool, String), AuthError>>;
}

/// TokenReview and SubjectAccessReview through the agent's API client.
pub struct ApiReviewer {
    pub client: kube::Client,
}

impl Reviewer for ApiReviewer {
    fn token_review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<Identity>, AuthError>> {
        Box::pin(async move {
            let api: kube::Api<TokenReview> = kube::Api::all(self.client.clone());
            let req = TokenReview {
                spec: TokenReviewSpec { token: Some(token.to_string()), audiences: None },
                ..Default::default()
            };
            let r = api
                .create(&PostParams::default(), &req)
                .await
                .map_err(|source| AuthError::Review { what: "TokenReview", source })?;
            let st = r.status.unwrap_or_default();
            if st.authenticated != Some(true) {
                tracing::debug!(error = st.error.as_deref().unwrap_or_default(), "token refused by TokenReview");
                return Ok(None);
            }
            let user = st.user.unwrap_or_default();
            Ok(Some(Identity { name: user.username.unwrap_or_default(), groups: user.groups.unwrap_or_default() }))
        })
    }

    fn access_review<'a>(
        &'a self,
        who: &'a Identity,
        node: &'a str,
        attrs: &'a Attributes,
    ) -> BoxFuture<'a, Result<(bool, String), AuthError>> {
        Box::pin(async move {
            let api: kube::Api<SubjectAccessReview> = kube::Api::all(self.client.clone());
            let ra = ResourceAttributes {
                verb: Some(attrs.verb.into()),
                resource: Some("nodes".into()),
                subresource: Some(attrs.subresource.into()),
                name: Some(node.into()),
                version: Some("v1".into()),
                ..Default::default()
            };
            let spec = SubjectAccessReviewSpec {
                user: Some(who.name.clone()),
                groups: Some(who.groups.clone()),
                resource_attributes: Some(ra),
                ..Default::default()
            };
            let r = api
                .create(&PostParams::default(), &SubjectAccessReview { spec, ..Default::default() })
                .await
                .map_err(|source| AuthError::Review { what: "SubjectAccessReview", source })?;
            let st = r.status.unwrap_or_default();
            Ok((st.allowed, st.reason.unwrap_or_default()))
        })
    }
}

/// `authorization.mode` of the agent's configuration.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, serde::Deserialize)]
pub enum AuthorizationMode {
    #[default]
    Webhook,
    AlwaysAllow,
}

/// The kubelet API's gate.
pub struct KubeletAuth {
    reviewer: Box<dyn Reviewer>,
    node: String,
    mode: AuthorizationMode,
    cache: Mutex<HashMap<[u8; 32], (Identity, Instant)>>,
    allowed: Mutex<HashMap<(Identity, Attributes), Instant>>,
}

type Refusal = (StatusCode, String);

impl KubeletAuth {
    pub fn new(reviewer: Box<dyn Reviewer>, node: String, mode: AuthorizationMode) -> KubeletAuth {
        KubeletAuth { reviewer, node, mode, cache: Mutex::new(HashMap::new()), allowed: Mutex::new(HashMap::new()) }
    }

    /// The caller's name, or the status to answer with.
    pub async fn check(
        &self,
        cert: Option<&[u8]>,
        authorization: Option<&str>,
        method: &Method,
        path: &str,
    ) -> Result<String, Refusal> {
        if cert.is_some() {
            return crate::server::authorize(cert);
        }
        let Some(token) =
            authorization.and_then(|a| a.strip_prefix("Bearer ")).map(str::trim).filter(|t| !t.is_empty())
        else {
            return Err((
                StatusCode::UNAUTHORIZED,
                "a client certificate signed by the cluster CA or a bearer token is required".into(),
            ));
        };
        let who = self.authenticate(token).await?;
        if self.mode == AuthorizationMode::AlwaysAllow {
            return Ok(who.name);
        }
        let attrs = attributes(method, path);
        let key = (who.clone(), attrs.clone());
        {
            let mut allowed = self.allowed.lock().expect("authorisation cache");
            allowed.retain(|_, at| at.elapsed() < ALLOWED_CACHE_TTL);
            if allowed.contains_key(&key) {
                return Ok(who.name);
            }
        }
        match self.reviewer.access_review(&who, &self.node, &attrs).await {
            Ok((true, _)) => {
                self.allowed.lock().expect("authorisation cache").insert(key, Instant::now());
                Ok(who.name)
            }
            Ok((false, reason)) => Err((
                StatusCode::FORBIDDEN,
                format!(
                    "Forbidden (user={}, verb={}, resource=nodes, subresource={}){}",
                    who.name,
                    attrs.verb,
                    attrs.subresource,
                    if reason.is_empty() { String::new() } else { format!(": {reason}") }
                ),
            )),
            Err(e) => {
                Err((StatusCode::INTERNAL_SERVER_ERROR, format!("authorising the request: {e}: {}", source_text(&e))))
            }
        }
    }

    async fn authenticate(&self, token: &str) -> Result<Identity, Refusal> {
        let key: [u8; 32] = ring::digest::digest(&ring::digest::SHA256, token.as_bytes())
            .as_ref()
            .try_into()
            .expect("SHA-256 is 32 bytes");
        {
            let mut cache = self.cache.lock().expect("token cache");
            cache.retain(|_, (_, at)| at.elapsed() < TOKEN_CACHE_TTL);
            if let Some((who, _)) = cache.get(&key) {
                return Ok(who.clone());
            }
        }
        match self.reviewer.token_review(token).await {
            Ok(Some(who)) => {
                self.cache.lock().expect("token cache").insert(key, (who.clone(), Instant::now()));
                Ok(who)
            }
            Ok(None) => Err((StatusCode::UNAUTHORIZED, "Unauthorized: the bearer token is not valid".into())),
            Err(e) => Err((StatusCode::UNAUTHORIZED, format!("Unauthorized: {e}: {}", source_text(&e)))),
        }
    }
}

fn source_text(e: &AuthError) -> String {
    std::error::Error::source(e).map(|s| s.to_string()).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::Arc;

    #[derive(Default)]
    struct Fake {
        reviews: Arc<AtomicUsize>,
        asked: Arc<Mutex<Vec<Attributes>>>,
    }

    impl Reviewer for Fake {
        fn token_review<'a>(&'a self, token: &'a str) -> BoxFuture<'a, Result<Option<Identity>, AuthError>> {
            self.reviews.fetch_add(1, Ordering::SeqCst);
            let who = match token {
                "admin" => Some(Identity { name: "alice".into(), groups: vec!["system:masters".into()] }),
                "sa" => Some(Identity {
                    name: "system:serviceaccount:d:x".into(),
                    groups: vec!["system:serviceaccounts".into()],
                }),
                _ => None,
            };
            Box::pin(async move { Ok(who) })
        }
        fn access_review<'a>(
            &'a self,
            who: &'a Identity,
            node: &'a str,
            attrs: &'a Attributes,
        ) -> BoxFuture<'a, Result<(bool, String), AuthError>> {
            assert_eq!(node, "n1");
            self.asked.lock().unwrap().push(attrs.clone());
            let ok = who.groups.iter().any(|g| g == "system:masters");
            Box::pin(async move { Ok((ok, if ok { String::new() } else { "not an admin".into() })) })
        }
    }

    #[tokio::test]
    async fn bearer_tokens_are_reviewed_cached_and_authorised() {
        let fake = Fake::default();
        let (reviews, asked) = (fake.reviews.clone(), fake.asked.clone());
        let auth = KubeletAuth::new(Box::new(fake), "n1".into(), AuthorizationMode::Webhook);
        let get = Method::GET;
        assert_eq!(auth.check(None, Some("Bearer admin"), &get, "/pods").await, Ok("alice".into()));
        assert_eq!(auth.check(None, Some("Bearer admin"), &get, "/stats/summary").await, Ok("alice".into()));
        assert_eq!(auth.check(None, Some("Bearer admin"), &get, "/pods").await, Ok("alice".into()));
        assert_eq!(reviews.load(Ordering::SeqCst), 1, "later requests used the token cache");
        assert_eq!(
            asked.lock().unwrap().iter().map(|a| a.subresource).collect::<Vec<_>>(),
            ["proxy", "stats"],
            "and the allowed cache"
        );
        let e = auth.check(None, Some("Bearer sa"), &get, "/pods").await.unwrap_err();
        assert_eq!(e.0, StatusCode::FORBIDDEN);
        assert!(e.1.contains("subresource=proxy"), "{}", e.1);
        assert_eq!(auth.check(None, Some("Bearer sa"), &get, "/pods").await.unwrap_err().0, StatusCode::FORBIDDEN);
        assert_eq!(asked.lock().unwrap().len(), 4, "denials are asked again");
        assert_eq!(
            auth.check(None, Some("Bearer garbage"), &get, "/pods").await.unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(
            auth.check(None, Some("Bearer garbage"), &get, "/pods").await.unwrap_err().0,
            StatusCode::UNAUTHORIZED
        );
        assert_eq!(reviews.load(Ordering::SeqCst), 4, "refusals are not cached");
        assert_eq!(auth.check(None, None, &get, "/pods").await.unwrap_err().0, StatusCode::UNAUTHORIZED);
        let open = KubeletAuth::new(Box::new(Fake::default()), "n1".into(), AuthorizationMode::AlwaysAllow);
        assert!(open.check(None, Some("Bearer sa"), &get, "/pods").await.is_ok());
    }

    #[test]
    fn paths_map_to_kubelet_subresources() {
        assert_eq!(attributes(&Method::GET, "/metrics/resource"), Attributes { verb: "get", subresource: "metrics" });
        assert_eq!(attributes(&Method::POST, "/exec/ns/p/c"), Attributes { verb: "create", subresource: "proxy" });
        assert_eq!(attributes(&Method::GET, "/logs/"), Attributes { verb: "get", subresource: "log" });
    }
}
