//! Service-account tokens for projected `serviceAccountToken` volume sources, as kubelet's
//! token manager: one TokenRequest per (pod, service account, audience, expirationSeconds),
//! bound to the pod, cached, and requested again once 80% of its lifetime has passed (or 24 h,
//! whichever is first), so the file a pod reads is always fresh. The pod's volume sync writes
//! the tokens with the other projected files.

use std::collections::{BTreeMap, HashMap};
use std::future::Future;
use std::pin::Pin;
use std::sync::Mutex;
use std::time::{Duration, SystemTime};

use k8s_openapi::api::authentication::v1::{BoundObjectReference, TokenRequest, TokenRequestSpec};
use k8s_openapi::api::core::v1::{Pod, ServiceAccount};
use kube::api::PostParams;

use crate::spec;

/// kubelet's default and minimum `expirationSeconds`.
pub const DEFAULT_EXPIRATION_SECS: i64 = 3600;
pub const MIN_EXPIRATION_SECS: i64 = 600;
const MAX_AGE: Duration = Duration::from_secs(24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("TokenRequest for service account {namespace}/{service_account}")]
    Request {
        namespace: String,
        service_account: String,
        #[source]
        source: kube::Error,
    },
    #[error("TokenRequest for service account {namespace}/{service_account} returned no token")]
    Empty { namespace: String, service_account: String },
}

/// A token and when it expires.
#[derive(Debug, Clone, PartialEq)]
pub struct Issued {
    pub token: String,
    pub expires: SystemTime,
}

type BoxFuture<'a, T> = Pin<Box<dyn Future<Output = T> + Send + 'a>>;

/// Where tokens come from (the API's TokenRequest; a fake in tests).
pub trait TokenSource: Send + Sync {
    fn request<'a>(
        &'a self,
        pod: &'a Pod,
        audience: Option<&'a str>,
        expiration_secs: i64,
    ) -> BoxFuture<'a, Result<Issued, TokenError>>;
}

/// TokenRequest through the agent's API client, bound to the pod.
pub struct ApiTokens {
    pub client: kube::Client,
}

impl TokenSource for ApiTokens {
    fn request<'a>(
        &'a self,
        pod: &'a Pod,
        audience: Option<&'a str>,
        expiration_secs: i64,
    ) -> BoxFuture<'a, Result<Issued, TokenError>> {
        Box::pin(async move {
            let (ns, name, uid) = spec::ids(pod);
            let sa = service_account(pod);
            let api: kube::Api<ServiceAccount> = kube::Api::namespaced(self.client.clone(), ns);
            let req = TokenRequest {
                spec: TokenRequestSpec {
                    audiences: audience.map(|a| vec![a.to_string()]).unwrap_or_default(),
                    expiration_seconds: Some(expiration_secs),
                    bound_object_ref: Some(BoundObjectReference {
                        kind: Some("Pod".into()),
                        api_version: Some("v1".into()),
                        name: Some(name.into()),
                        uid: Some(uid.into()),
                    }),
                },
                ..Default::default()
            };
            let err = |source| TokenError::Request { namespace: ns.into(), service_account: sa.clone(), source };
            let body = serde_json::to_vec(&req).expect("TokenRequest serialises");
            let r: TokenRequest =
                api.create_subresource("token", &sa, &PostParams::default(), body).await.map_err(err)?;
            let st = r
                .status
                .filter(|s| !s.token.is_empty())
                .ok_or_else(|| TokenError::Empty { namespace: ns.into(), service_account: sa.clone() })?;
            Ok(Issued { token: st.token, expires: SystemTime::from(st.expiration_timestamp.0) })
        })
    }
}

fn service_account(pod: &Pod) -> String {
    pod.spec
        .as_ref()
        .and_then(|s| s.service_account_name.clone())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "default".into())
}

/// The key a volume source's token is found under.
pub fn source_key(audience: Option<&str>, expiration_secs: i64) -> String {
    format!("{}|{expiration_secs}", audience.unwrap_or_default())
}

/// The (audience, expirationSeconds) of every serviceAccountToken projection of the pod.
pub fn projections(pod: &Pod) -> Vec<(Option<String>, i64)> {
    let mut out: Vec<(Option<String>, i64)> = pod
        .spec
        .iter()
        .flat_map(|s| s.volumes.iter().flatten())
        .flat_map(|v| v.projected.iter().flat_map(|p| p.sources.iter().flatten()))
        .filter_map(|s| s.service_account_token.as_ref())
        .map(|t| {
            (t.audience.clone().filter(|a| !a.is_empty()), t.expiration_seconds.unwrap_or(DEFAULT_EXPIRATION_SECS))
        })
        .collect();
    out.sort();
    out.dedup();
    out
}

struct Cached {
    issued: Issued,
    at: SystemTime,
}

impl Cached {
    /// kubelet's rule: older than 80% of the lifetime, or than 24 h.
    fn stale(&self, now: SystemTime) -> bool {
        let life = self.issued.expires.duration_since(self.at).unwrap_or_default();
        let age = now.duration_since(self.at).unwrap_or_default();
        age >= life.mul_f64(0.8) || age >= MAX_AGE
    }
}

/// Cached tokens of every pod.
#[derive(Default)]
pub struct TokenManager {
    cache: Mutex<HashMap<(String, String), Cached>>,
}

impl TokenManager {
    /// The pod's tokens by [`source_key`]; a projection whose request failed is missing (and
    /// its error logged), so the volume sync reports it.
    pub async fn tokens_for(&self, src: &dyn TokenSource, pod: &Pod, now: SystemTime) -> BTreeMap<String, String> {
        let uid = spec::ids(pod).2.to_string();
        let mut out = BTreeMap::new();
        for (audience, secs) in projections(pod) {
            if secs < MIN_EXPIRATION_SECS {
                tracing::warn!(pod = %uid, expiration_seconds = secs, "serviceAccountToken expirationSeconds below 600 s is refused");
                continue;
            }
            let key = source_key(audience.as_deref(), secs);
            let cached = self
                .cache
                .lock()
                .expect("token cache")
                .get(&(uid.clone(), key.clone()))
                .filter(|c| !c.stale(now))
                .map(|c| c.issued.token.clone());
            if let Some(t) = cached {
                out.insert(key, t);
                continue;
            }
            match src.request(pod, audience.as_deref(), secs).await {
                Ok(issued) => {
                    tracing::debug!(pod = %uid, audience = audience.as_deref().unwrap_or_default(), expiration_seconds = secs, "service-account token (re)issued");
                    out.insert(key.clone(), issued.token.clone());
                    self.cache.lock().expect("token cache").insert((uid.clone(), key), Cached { issued, at: now });
                }
                Err(e) => {
                    tracing::warn!(pod = %uid, error = %e, source = %std::error::Error::source(&e).map(|s| s.to_string()).unwrap_or_default(), "requesting a service-account token")
                }
            }
        }
        out
    }

    /// Drops a gone pod's tokens.
    pub fn forget(&self, pod_uid: &str) {
        self.cache.lock().expect("token cache").retain(|(uid, _), _| uid != pod_uid);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    struct Fake {
        calls: AtomicUsize,
        now: SystemTime,
    }

    impl TokenSource for Fake {
        fn request<'a>(
            &'a self,
            _pod: &'a Pod,
            audience: Option<&'a str>,
            secs: i64,
        ) -> BoxFuture<'a, Result<Issued, TokenError>> {
            let n = self.calls.fetch_add(1, Ordering::SeqCst);
            let issued = Issued {
                token: format!("tok-{}-{n}", audience.unwrap_or("api")),
                expires: self.now + Duration::from_secs(secs as u64),
            };
            Box::pin(async move { Ok(issued) })
        }
    }

    fn pod() -> Pod {
        serde_json::from_value(serde_json::json!({
            "metadata": {"name": "p", "namespace": "d", "uid": "u1"},
            "spec": {"containers": [], "volumes": [{"name": "t", "projected": {"sources": [
                {"serviceAccountToken": {"path": "token"}},
                {"serviceAccountToken": {"path": "vault", "audience": "vault", "expirationSeconds": 1000}},
                {"serviceAccountToken": {"path": "short", "expirationSeconds": 60}}
            ]}}]}
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn tokens_are_cached_and_renewed_at_eighty_percent() {
        let t0 = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let src = Fake { calls: AtomicUsize::new(0), now: t0 };
        let m = TokenManager::default();
        let p = pod();
        let got = m.tokens_for(&src, &p, t0).await;
        assert_eq!(got.len(), 2, "the 60 s projection is refused: {got:?}");
        assert_eq!(got[&source_key(None, 3600)], "tok-api-0");
        assert_eq!(got[&source_key(Some("vault"), 1000)], "tok-vault-1");
        // 79% of the vault token's life: both cached; 80%: the vault token is renewed.
        let again = m.tokens_for(&src, &p, t0 + Duration::from_secs(790)).await;
        assert_eq!(again, got);
        assert_eq!(src.calls.load(Ordering::SeqCst), 2);
        let later = m.tokens_for(&src, &p, t0 + Duration::from_secs(800)).await;
        assert_eq!(later[&source_key(Some("vault"), 1000)], "tok-vault-2");
        assert_eq!(later[&source_key(None, 3600)], "tok-api-0");
        m.forget("u1");
        assert_eq!(m.tokens_for(&src, &p, t0 + Duration::from_secs(801)).await[&source_key(None, 3600)], "tok-api-3");
    }
}
