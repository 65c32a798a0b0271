//! Consumer authentication. The client's key arrives as `Authorization: Bearer …`; the gateway hashes it with
//! SHA-256 and looks the digest up among the configured key hashes. Keys exist in memory only for the length of
//! that hash: they are never stored, logged, put in events or sent upstream. What leaves this module is a
//! [`Principal`]: the consumer's name and the key's public id.

use std::collections::HashMap;
use std::sync::Arc;

use sha2::{Digest, Sha256};
use subtle::ConstantTimeEq;

use crate::config::Consumer;
use crate::error::GatewayError;

/// Who a request is billed to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Principal {
    pub consumer: Arc<str>,
    pub key_id: Arc<str>,
}

/// Every consumer key, by the SHA-256 of the key.
#[derive(Debug, Default)]
pub struct KeyStore {
    by_hash: HashMap<[u8; 32], (Principal, [u8; 32])>,
}

impl KeyStore {
    pub fn new(consumers: &[Consumer]) -> Self {
        let by_hash = consumers
            .iter()
            .flat_map(|c| {
                let consumer: Arc<str> = Arc::from(c.name.as_str());
                c.keys.iter().map(move |k| {
                    let principal = Principal {
                        consumer: consumer.clone(),
                        key_id: Arc::from(k.id.as_str()),
                    };
                    (k.sha256, (principal, k.sha256))
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
        let digest = hash_key(key);
        // The map lookup narrows by digest; the final comparison is constant-time over the whole digest.
        match self.by_hash.get(&digest) {
            Some((principal, stored)) if bool::from(stored.ct_eq(&digest)) => Ok(principal.clone()),
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

    fn store() -> KeyStore {
        KeyStore::new(&[
            Consumer {
                name: "team-a".into(),
                keys: vec![
                    ConsumerKey {
                        id: "a-1".into(),
                        sha256: hash_key(b"sk-a-one"),
                    },
                    ConsumerKey {
                        id: "a-2".into(),
                        sha256: hash_key(b"sk-a-two"),
                    },
                ],
            },
            Consumer {
                name: "team-b".into(),
                keys: vec![ConsumerKey {
                    id: "b-1".into(),
                    sha256: hash_key(b"sk-b"),
                }],
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
