//! The cache key: a SHA-256 over the namespace, the model's id and the request's
//! [`cache_identity`](agent_core::ChatRequest::cache_identity).

use std::fmt;

use agent_core::ChatRequest;
use sha2::{Digest, Sha256};

/// Bumped when the key's material or the entry format changes, so old entries stop matching
/// instead of being misread.
const KEY_VERSION: &str = "turnstile-response-cache/1";

/// Identifies one response: equal keys mean the same namespace, model and request (everything
/// that determines the answer — messages, tools, sampling, seed, response format). Never
/// contains a credential: providers keep their keys, and requests carry none.
///
/// ```
/// use agent_core::{ChatRequest, Message};
/// use agent_runtime::cache::CacheKey;
///
/// let request = ChatRequest::new(vec![Message::user("hi")]).with_temperature(0.0);
/// let key = CacheKey::new("eval-1", "openai/gpt-4o-mini", &request);
/// assert_eq!(key, CacheKey::new("eval-1", "openai/gpt-4o-mini", &request.clone()));
/// assert_ne!(key, CacheKey::new("eval-2", "openai/gpt-4o-mini", &request));
/// assert_eq!(key.as_str().len(), 64);
/// ```
#[derive(Clone, PartialEq, Eq, Hash)]
pub struct CacheKey(String);

impl CacheKey {
    /// The key of `request` to model `model_id` in `namespace`.
    pub fn new(namespace: &str, model_id: &str, request: &ChatRequest) -> Self {
        let mut hasher = Sha256::new();
        // Each part is length-prefixed, so no two different (namespace, model) pairs can hash the
        // same material.
        for part in [KEY_VERSION, namespace, model_id] {
            hasher.update((part.len() as u64).to_le_bytes());
            hasher.update(part.as_bytes());
        }
        // serde_json writes struct fields in declaration order and maps in key order (no
        // `preserve_order` here), so the serialization is canonical for a given request. It
        // cannot fail: the identity holds strings, numbers and JSON values only.
        let identity = serde_json::to_vec(&request.cache_identity()).unwrap_or_default();
        hasher.update(identity);
        let digest = hasher.finalize();
        let mut hex = String::with_capacity(64);
        for byte in digest {
            hex.push(char::from(HEX[usize::from(byte >> 4)]));
            hex.push(char::from(HEX[usize::from(byte & 0xf)]));
        }
        Self(hex)
    }

    /// The key as 64 lowercase hex digits.
    pub fn as_str(&self) -> &str {
        &self.0
    }
}

const HEX: &[u8; 16] = b"0123456789abcdef";

impl fmt::Debug for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_tuple("CacheKey").field(&&self.0[..12]).finish()
    }
}

impl fmt::Display for CacheKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use agent_core::{Message, ResponseFormat};

    #[test]
    fn the_key_covers_model_namespace_and_request_but_not_usage() {
        let request = ChatRequest::new(vec![Message::user("hi")]);
        let key = |ns: &str, model: &str, r: &ChatRequest| CacheKey::new(ns, model, r);
        let base = key("ns", "m", &request);
        assert_ne!(base, key("ns", "other", &request));
        assert_ne!(base, key("ns2", "m", &request));
        // Length prefixes: moving a character between namespace and model changes the key.
        assert_ne!(key("ab", "c", &request), key("a", "bc", &request));
        assert_ne!(
            base,
            key(
                "ns",
                "m",
                &request
                    .clone()
                    .with_response_format(ResponseFormat::JsonObject)
            )
        );
        let mut reported = request.clone();
        reported.messages[0].usage = Some(agent_core::Usage::new(1, 1));
        assert_eq!(base, key("ns", "m", &reported));
        // Stable across processes and versions of this code: a fixed request has a fixed key.
        assert_eq!(
            base,
            key("ns", "m", &ChatRequest::new(vec![Message::user("hi")]))
        );
    }
}
