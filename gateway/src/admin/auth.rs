//! Admin keys and roles. The key arrives in `X-API-KEY` (as APISIX's Admin API takes it); it is hashed with
//! SHA-256 and looked up among the configured hashes, the final comparison constant-time. The key itself is
//! never stored or logged: what leaves this module is an [`AdminPrincipal`], the key's public id and role.
//!
//! Roles: `admin` may use every method; `viewer` only GET and HEAD. The role is checked before routing, for
//! every method, so a write route added later is closed to viewers without touching it.

use std::collections::HashMap;
use std::sync::Arc;

use actix_web::http::Method;
use actix_web::http::header::HeaderMap;
use subtle::ConstantTimeEq;

use crate::admin::error::AdminError;
use crate::admission::auth::hash_key;
use crate::config::{AdminKey, AdminRole};

/// The header that carries the admin key.
pub const HEADER: &str = "x-api-key";

/// Who is using the admin API.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AdminPrincipal {
    pub key_id: Arc<str>,
    pub role: AdminRole,
}

/// Every admin key, by the SHA-256 of the key.
#[derive(Debug)]
pub struct AdminKeys {
    by_hash: HashMap<[u8; 32], AdminPrincipal>,
}

impl AdminKeys {
    pub fn new(keys: &[AdminKey]) -> Self {
        let by_hash = keys
            .iter()
            .map(|k| {
                (
                    k.sha256,
                    AdminPrincipal {
                        key_id: Arc::from(k.id.as_str()),
                        role: k.role,
                    },
                )
            })
            .collect();
        Self { by_hash }
    }

    /// The principal of the key in `X-API-KEY`.
    pub fn authenticate(&self, headers: &HeaderMap) -> Result<AdminPrincipal, AdminError> {
        let key = headers
            .get(HEADER)
            .map(|k| k.as_bytes().trim_ascii())
            .filter(|k| !k.is_empty())
            .ok_or(AdminError::MissingKey)?;
        let digest = hash_key(key);
        // The map lookup narrows by digest; the final comparison is constant-time over the whole digest.
        match self.by_hash.get_key_value(&digest) {
            Some((stored, principal)) if bool::from(stored.ct_eq(&digest)) => Ok(principal.clone()),
            _ => Err(AdminError::InvalidKey),
        }
    }
}

/// May `role` use `method`? Viewers read only.
pub fn authorize(role: AdminRole, method: &Method) -> Result<(), AdminError> {
    match role {
        AdminRole::Admin => Ok(()),
        AdminRole::Viewer if matches!(*method, Method::GET | Method::HEAD) => Ok(()),
        AdminRole::Viewer => Err(AdminError::ReadOnlyKey),
    }
}

#[cfg(test)]
mod tests {
    use actix_web::http::header::HeaderValue;

    use super::*;

    fn keys() -> AdminKeys {
        AdminKeys::new(&[
            AdminKey {
                id: "ops".into(),
                sha256: hash_key(b"adm-ops"),
                role: AdminRole::Admin,
            },
            AdminKey {
                id: "dash".into(),
                sha256: hash_key(b"adm-dash"),
                role: AdminRole::Viewer,
            },
        ])
    }

    fn headers(key: Option<&'static str>) -> HeaderMap {
        let mut headers = HeaderMap::new();
        if let Some(key) = key {
            headers.insert(
                actix_web::http::header::HeaderName::from_static(HEADER),
                HeaderValue::from_static(key),
            );
        }
        headers
    }

    #[test]
    fn a_known_key_gives_its_id_and_role() {
        let p = keys().authenticate(&headers(Some("adm-dash"))).unwrap();
        assert_eq!((&*p.key_id, p.role), ("dash", AdminRole::Viewer));
    }

    #[test]
    fn a_missing_or_unknown_key_is_refused() {
        assert!(matches!(
            keys().authenticate(&headers(None)),
            Err(AdminError::MissingKey)
        ));
        assert!(matches!(
            keys().authenticate(&headers(Some("adm-guess"))),
            Err(AdminError::InvalidKey)
        ));
    }

    #[test]
    fn viewers_read_and_admins_do_everything() {
        for method in [Method::GET, Method::HEAD] {
            assert!(authorize(AdminRole::Viewer, &method).is_ok());
        }
        for method in [Method::POST, Method::PUT, Method::PATCH, Method::DELETE] {
            assert!(matches!(
                authorize(AdminRole::Viewer, &method),
                Err(AdminError::ReadOnlyKey)
            ));
            assert!(authorize(AdminRole::Admin, &method).is_ok());
        }
    }
}
