//! Consumer authentication. The client's key arrives as `Authorization: Bearer …`; the gateway hashes it with
//! SHA-256 and looks the digest up among the configured key hashes. Keys exist in memory only for the length of
//! that hash: they are never stored, logged, put in events or sent upstream. What leaves this module is a
//! [`Principal`]: the consumer's name and the key's public id.

use std::collections::HashMap;
use std::sync::Arc;

use chrono::{DateTime, Utc};
use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::{Consumer, TeamPath};
use crate::error::GatewayError;

/// Who a request is billed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub consumer: Arc<str>,
    /// The consumer's class: a bounded metrics label.
    pub class: Arc<str>,
    pub key_id: Arc<str>,
    /// The models this key may use; all when `None`.
    pub models: Option<Arc<[String]>>,
    /// The consumer's team and organisation, as configured when the request arrived.
    pub team: Option<Arc<TeamPath>>,
}

impl Principal {
    /// May this key use `model`?
    pub fn may_use(&self, model: &str) -> bool {
        self.models
            .as_ref()
            .is_none_or(|models| models.iter().any(|m| m == model))
    }
}

#[derive(Debug)]
struct Entry {
    principal: Principal,
    sha256: [u8; 32],
    expires_at: Option<DateTime<Utc>>,
}

/// Every consumer key, by the SHA-256 of the key.
#[derive(Debug, Default)]
pub struct KeyStore {
    by_hash: HashMap<[u8; 32], Entry>,
}

impl KeyStore {
    pub fn new(consumers: &[Consumer]) -> Self {
        let by_hash = consumers
            .iter()
            .flat_map(|c| {
                let consumer: Arc<str> = Arc::from(c.name.as_str());
                let class: Arc<str> = Arc::from(c.class.as_str());
                let team = c.team.clone().map(Arc::new);
                c.keys.iter().map(move |k| {
                    let principal = Principal {
                        consumer: consumer.clone(),
                        class: class.clone(),
                        key_id: Arc::from(k.id.as_str()),
                        models: k.models.as_deref().map(Arc::from),
                        team: team.clone(),
                    };
                    (
                        k.sha256,
                        Entry {
                            principal,
                            sha256: k.sha256,
                            expires_at: k.expires_at,
                        },
                    )
                })
            })
            .collect();
        Self { by_hash }
    }

    /// Authenticates the key in an `Authorization: Bearer` header or, as Anthropic's SDKs send it, `x-api-key`.
    pub fn authenticate_request(
        &self,
        headers: &actix_web::http::header::HeaderMap,
    ) -> Result<Principal, GatewayError> {
        match headers.get(actix_web::http::header::AUTHORIZATION) {
            Some(authorization) => self.authenticate(Some(authorization.as_bytes())),
            None => match headers
                .get("x-api-key")
                .map(|k| k.as_bytes().trim_ascii())
                .filter(|k| !k.is_empty())
            {
                Some(key) => self.check(key),
                None => Err(GatewayError::MissingApiKey),
            },
        }
    }

    /// Authenticates the value of an `Authorization` header.
    pub fn authenticate(&self, authorization: Option<&[u8]>) -> Result<Principal, GatewayError> {
        let key = authorization
            .and_then(bearer_token)
            .ok_or(GatewayError::MissingApiKey)?;
        self.check(key)
    }

    fn check(&self, key: &[u8]) -> Result<Principal, GatewayError> {
        self.check_at(key, Utc::now())
    }

    fn check_at(&self, key: &[u8], now: DateTime<Utc>) -> Result<Principal, GatewayError> {
        let digest = hash_key(key);
        // The map lookup narrows by digest; the final comparison is constant-time over the whole digest.
        match self.by_hash.get(&digest) {
            Some(entry) if bool::from(entry.sha256.ct_eq(&digest)) => {
                if entry.expires_at.is_some_and(|at| now >= at) {
                    return Err(GatewayError::ExpiredApiKey);
                }
                Ok(entry.principal.clone())
            }
            _ => Err(GatewayError::InvalidApiKey),
        }
    }
}

/// SHA-256 of a key, as stored in the configuration.
pub fn hash_key(key: &[u8]) -> [u8; 32] {
    Sha256::digest(key).into()
}

/// Extracts the token from `Bearer <token>` (scheme case-insensitive, as RFC 6750 allows).
fn bearer_token(header: &[u8]) -> Option<&[u8]> {
    let (scheme, rest) = header.split_at_checked(7)?;
    if !scheme.eq_ignore_ascii_case(b"bearer ") {
        return None;
    }
    let token = rest.trim_ascii();
    (!token.is_empty()).then_some(token)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ConsumerKey;

    fn key(id: &str, secret: &[u8]) -> ConsumerKey {
        ConsumerKey {
            id: id.into(),
            sha256: hash_key(secret),
            expires_at: None,
            models: None,
        }
    }

    fn store() -> KeyStore {
        let limited = ConsumerKey {
            expires_at: Some(expiry()),
            models: Some(vec!["gpt-4o".into()]),
            ..key("a-2", b"sk-a-two")
        };
        KeyStore::new(&[
            Consumer {
                team: None,
                name: "team-a".into(),
                class: "default".into(),
                keys: vec![key("a-1", b"sk-a-one"), limited],
                limit_count: None,
                token_limits: Vec::new(),
            },
            Consumer {
                team: None,
                name: "team-b".into(),
                class: "default".into(),
                keys: vec![key("b-1", b"sk-b")],
                limit_count: None,
                token_limits: Vec::new(),
            },
        ])
    }

    #[test]
    fn a_known_key_identifies_its_consumer_and_key_id() {
        let p = store().authenticate(Some(b"Bearer sk-a-two")).unwrap();
        assert_eq!(&*p.consumer, "team-a");
        assert_eq!(&*p.key_id, "a-2");
        let p = store().authenticate(Some(b"bearer   sk-b ")).unwrap();
        assert_eq!(&*p.consumer, "team-b");
    }

    #[test]
    fn a_missing_or_malformed_header_is_missing_key() {
        for header in [
            None,
            Some(&b""[..]),
            Some(b"Bearer "),
            Some(b"Basic abc"),
            Some(b"sk-a-one"),
        ] {
            assert!(
                matches!(store().authenticate(header), Err(GatewayError::MissingApiKey)),
                "{header:?}"
            );
        }
    }

    fn expiry() -> DateTime<Utc> {
        DateTime::parse_from_rfc3339("2030-01-01T00:00:00Z")
            .unwrap()
            .to_utc()
    }

    #[test]
    fn a_key_is_refused_from_its_expiry_on() {
        let store = store();
        assert!(
            store
                .check_at(b"sk-a-two", expiry() - chrono::Duration::seconds(1))
                .is_ok()
        );
        assert!(matches!(
            store.check_at(b"sk-a-two", expiry()),
            Err(GatewayError::ExpiredApiKey)
        ));
        assert!(
            store.check_at(b"sk-a-one", expiry()).is_ok(),
            "a key without expiry never expires"
        );
    }

    #[test]
    fn a_key_with_models_may_use_only_those() {
        let limited = store()
            .check_at(b"sk-a-two", expiry() - chrono::Duration::days(1))
            .unwrap();
        assert!(limited.may_use("gpt-4o"));
        assert!(!limited.may_use("gpt-4o-mini"));
        let open = store().authenticate(Some(b"Bearer sk-b")).unwrap();
        assert!(open.may_use("anything"));
    }

    #[test]
    fn an_unknown_key_is_invalid() {
        assert!(matches!(
            store().authenticate(Some(b"Bearer sk-a-three")),
            Err(GatewayError::InvalidApiKey)
        ));
    }

    #[test]
    fn hashes_match_sha256sum() {
        // printf 'tg-demo-key-0123456789abcdef' | sha256sum
        assert_eq!(
            hex::encode(hash_key(b"tg-demo-key-0123456789abcdef")),
            "75cf857b6872c3d729faf2b92788a91fff3bc594f5a693ed02e6175a5bbac874"
        );
    }
}
