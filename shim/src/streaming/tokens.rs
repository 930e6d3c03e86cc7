//! Single-use, expiring tokens that name a pending Exec/Attach/PortForward request in its URL.

use std::collections::HashMap;
use std::io::Read;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use base64::Engine;

use super::{AttachRequest, ExecRequest, PortForwardRequest, StreamingError};

/// At most this many unexpired URLs exist at once (the kubelet's streaming server has the same cap).
pub(crate) const MAX_IN_FLIGHT: usize = 1000;

/// A request waiting for its client to connect.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Pending {
    Exec(ExecRequest),
    Attach(AttachRequest),
    PortForward(PortForwardRequest),
}

/// Tokens to pending requests; `take` removes, so each URL works once.
#[derive(Debug)]
pub(crate) struct TokenCache {
    ttl: Duration,
    entries: Mutex<HashMap<String, (Instant, Pending)>>,
}

impl TokenCache {
    pub(crate) fn new(ttl: Duration) -> Self {
        TokenCache { ttl, entries: Mutex::new(HashMap::new()) }
    }

    /// Stores `pending` under a fresh random token and returns the token.
    pub(crate) fn insert(&self, pending: Pending) -> Result<String, StreamingError> {
        let token = random_token()?;
        let now = Instant::now();
        let mut entries = self.entries.lock().unwrap_or_else(|poison| poison.into_inner());
        entries.retain(|_, (expires, _)| *expires > now);
        if entries.len() >= MAX_IN_FLIGHT {
            return Err(StreamingError::TooManyRequests { limit: MAX_IN_FLIGHT });
        }
        entries.insert(token.clone(), (now + self.ttl, pending));
        Ok(token)
    }

    /// Removes and returns the request of `token` if it exists and has not expired.
    pub(crate) fn take(&self, token: &str) -> Option<Pending> {
        let mut entries = self.entries.lock().unwrap_or_else(|poison| poison.into_inner());
        let (expires, pending) = entries.remove(token)?;
        (expires > Instant::now()).then_some(pending)
    }
}

/// 16 bytes from the kernel's CSPRNG, URL-safe base64 without padding (22 characters).
fn random_token() -> Result<String, StreamingError> {
    let mut bytes = [0u8; 16];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| f.read_exact(&mut bytes))
        .map_err(|source| StreamingError::Random { source })?;
    Ok(base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn exec() -> Pending {
        Pending::Exec(ExecRequest { container_id: "c1".into(), ..Default::default() })
    }

    #[test]
    fn a_token_works_once() {
        let cache = TokenCache::new(Duration::from_secs(60));
        let token = cache.insert(exec()).expect("insert");
        assert_eq!(token.len(), 22);
        assert_eq!(cache.take(&token), Some(exec()));
        assert_eq!(cache.take(&token), None);
        assert_eq!(cache.take("nonsense"), None);
    }

    #[test]
    fn tokens_are_distinct() {
        let cache = TokenCache::new(Duration::from_secs(60));
        let a = cache.insert(exec()).expect("insert");
        let b = cache.insert(exec()).expect("insert");
        assert_ne!(a, b);
    }

    #[test]
    fn an_expired_token_is_gone() {
        let cache = TokenCache::new(Duration::ZERO);
        let token = cache.insert(exec()).expect("insert");
        assert_eq!(cache.take(&token), None);
    }

    #[test]
    fn in_flight_requests_are_capped() {
        let cache = TokenCache::new(Duration::from_secs(60));
        for _ in 0..MAX_IN_FLIGHT {
            cache.insert(exec()).expect("insert");
        }
        assert!(matches!(cache.insert(exec()), Err(StreamingError::TooManyRequests { .. })));
    }
}
