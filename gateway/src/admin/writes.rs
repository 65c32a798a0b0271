//! Changing the live configuration under `/admin/v1/{collection}/{id}`:
//! - `PUT` creates (201) or replaces (200) the resource with the body — the fields of its TOML table; the id may
//!   be left out of the body (it comes from the URL). The same body twice changes nothing the second time
//!   (`"changed": false`).
//! - `PATCH` applies a JSON merge patch (RFC 7386) to the stored resource; not for prices.
//! - `DELETE` removes it.
//!
//! Every write is judged as the whole configuration it would produce ([`LiveConfig::write`]): a route naming a
//! missing instance, or deleting an instance a route needs, is refused with 400 and every problem; nothing
//! changes. An accepted write answers once this replica has applied it.
//!
//! **Consumer keys are made here.** A body lists keys by `id` (with optional `expires_at` and `models`), never
//! the key or its hash. A key id the consumer already has keeps its key; a new id gets a new random key
//! (`tg-` and 256 bits in base64url), returned once, in this answer's `api_keys`, and stored only as its SHA-256.
//! Leaving an id out revokes that key.
//!
//! **Price versions never change**: billed events name them. Re-putting one with other figures is 409, and so is
//! deleting one already in force.

use actix_web::http::StatusCode;
use actix_web::{HttpMessage, HttpRequest, HttpResponse, web};
use base64::Engine;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::{Map, Value, json};
use tollgate_schemas::config::ResourceKind;

use crate::admin::error::AdminError;
use crate::admin::resources::{VERSION_HEADER, collection};
use crate::admission::auth::hash_key;
use crate::live::{LiveConfig, WriteError, Written, shown};
use crate::protocol::request::BodyLimits;

/// The admin key id of the request, put there by the guard: who a change is recorded as made by.
#[derive(Debug, Clone)]
pub struct Actor(pub String);

/// `PUT /admin/v1/{collection}/{id}`
pub async fn put(
    req: HttpRequest,
    live: web::Data<LiveConfig>,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    limits: web::Data<BodyLimits>,
) -> Result<HttpResponse, AdminError> {
    let (name, id) = path.into_inner();
    let kind = collection(&req, &name)?;
    let body = read_body(payload, &limits).await?;
    let mut resource = object(&body)?;
    let (set, _) = live.resources();
    let existing = set.get(kind, &id).cloned();
    let id_field = match kind {
        ResourceKind::Limit => "id",
        _ => "name",
    };
    match kind {
        ResourceKind::Price => fill_price_id(&mut resource, &id),
        _ => {
            resource
                .entry(id_field)
                .or_insert_with(|| Value::String(id.clone()));
        }
    }
    let mut created_keys = Map::new();
    if kind == ResourceKind::Consumer {
        created_keys = make_keys(&mut resource, existing.as_ref(), &id)?;
    }
    let resource = Value::Object(resource);
    if kind == ResourceKind::Price
        && let Some(existing) = &existing
        && *existing != resource
    {
        return Err(AdminError::PriceVersionImmutable(id));
    }
    if kind == ResourceKind::Price && existing.is_none() && price_in_force(&resource) {
        return Err(AdminError::PriceVersionBackdated(id));
    }
    let written = write(&live, &req, kind, &id, Some(resource.clone())).await?;
    Ok(answer(
        kind,
        &id,
        existing.is_none(),
        &written,
        Some(&resource),
        created_keys,
    ))
}

/// `PATCH /admin/v1/{collection}/{id}`: a JSON merge patch on the stored resource.
pub async fn patch(
    req: HttpRequest,
    live: web::Data<LiveConfig>,
    path: web::Path<(String, String)>,
    payload: web::Payload,
    limits: web::Data<BodyLimits>,
) -> Result<HttpResponse, AdminError> {
    let (name, id) = path.into_inner();
    let kind = collection(&req, &name)?;
    if kind == ResourceKind::Price {
        return Err(AdminError::MethodNotAllowed {
            method: "PATCH".into(),
            path: req.path().to_owned(),
        });
    }
    let body = read_body(payload, &limits).await?;
    let patch = object(&body)?;
    let (set, _) = live.resources();
    let existing = set.get(kind, &id).cloned().ok_or_else(|| AdminError::NotFound {
        kind: kind.as_str(),
        name: id.clone(),
    })?;
    let mut merged = existing.clone();
    merge_patch(&mut merged, &Value::Object(patch.clone()));
    let mut created_keys = Map::new();
    if kind == ResourceKind::Consumer && patch.contains_key("keys") {
        let Value::Object(object) = &mut merged else {
            return Err(AdminError::InvalidBody(
                "the patched consumer is not an object".into(),
            ));
        };
        created_keys = make_keys(object, Some(&existing), &id)?;
    }
    let written = write(&live, &req, kind, &id, Some(merged.clone())).await?;
    Ok(answer(kind, &id, false, &written, Some(&merged), created_keys))
}

/// `DELETE /admin/v1/{collection}/{id}`
pub async fn delete(
    req: HttpRequest,
    live: web::Data<LiveConfig>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, AdminError> {
    let (name, id) = path.into_inner();
    let kind = collection(&req, &name)?;
    let (set, _) = live.resources();
    let existing = set.get(kind, &id).ok_or_else(|| AdminError::NotFound {
        kind: kind.as_str(),
        name: id.clone(),
    })?;
    if kind == ResourceKind::Price && price_in_force(existing) {
        return Err(AdminError::PriceVersionInForce(id));
    }
    let written = write(&live, &req, kind, &id, None).await?;
    Ok(answer(kind, &id, false, &written, None, Map::new()))
}

async fn write(
    live: &LiveConfig,
    req: &HttpRequest,
    kind: ResourceKind,
    id: &str,
    resource: Option<Value>,
) -> Result<Written, AdminError> {
    let actor = req
        .extensions()
        .get::<Actor>()
        .map_or_else(|| "unknown".to_owned(), |a| a.0.clone());
    live.write(kind, id, resource, &actor).await.map_err(|e| match e {
        WriteError::Invalid(problems) => AdminError::InvalidConfig(problems),
        WriteError::Conflict(problems) => AdminError::Conflict(problems),
        WriteError::Publish(reason) => AdminError::StoreUnavailable(reason),
        WriteError::NotApplied(_) => AdminError::NotApplied,
    })
}

fn answer(
    kind: ResourceKind,
    id: &str,
    created: bool,
    written: &Written,
    resource: Option<&Value>,
    api_keys: Map<String, Value>,
) -> HttpResponse {
    let mut body = json!({
        "kind": kind.as_str(),
        "id": id,
        "action": if resource.is_some() { "put" } else { "delete" },
        "changed": written.changed,
        "change_id": written.change_id,
        "version": written.version,
        "resource": resource.map(|r| shown(kind, r)),
    });
    if !api_keys.is_empty() {
        body["api_keys"] = Value::Object(api_keys);
    }
    let mut response = if created && written.changed {
        HttpResponse::Created()
    } else {
        HttpResponse::Ok()
    };
    response
        .insert_header((VERSION_HEADER, written.version.to_string()))
        .json(body)
}

/// Reads a write's body: at most `limits.max_bytes`, whole within `limits.timeout` (`server.body_read_timeout`),
/// so that a client announcing more than it sends cannot hold the admin API's one worker.
async fn read_body(mut payload: web::Payload, limits: &BodyLimits) -> Result<Bytes, AdminError> {
    let read = async {
        let mut body = BytesMut::new();
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| AdminError::Unreadable {
                status: StatusCode::BAD_REQUEST,
                message: e.to_string(),
            })?;
            if body.len() + chunk.len() > limits.max_bytes {
                return Err(AdminError::Unreadable {
                    status: StatusCode::PAYLOAD_TOO_LARGE,
                    message: format!("the body is larger than {} bytes", limits.max_bytes),
                });
            }
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(limits.timeout, read)
        .await
        .map_err(|_| AdminError::Unreadable {
            status: StatusCode::REQUEST_TIMEOUT,
            message: format!(
                "the body did not arrive within {} seconds",
                limits.timeout.as_secs().max(1)
            ),
        })?
}

fn object(body: &[u8]) -> Result<Map<String, Value>, AdminError> {
    match serde_json::from_slice::<Value>(body) {
        Ok(Value::Object(object)) => Ok(object),
        Ok(_) => Err(AdminError::InvalidBody("The body must be a JSON object.".into())),
        Err(e) => Err(AdminError::InvalidBody(format!(
            "The body is not valid JSON: {e}"
        ))),
    }
}

/// A price's id is `model@effective_from`: either may be left out of the body.
fn fill_price_id(resource: &mut Map<String, Value>, id: &str) {
    if let Some((model, from)) = id.rsplit_once('@') {
        resource
            .entry("model")
            .or_insert_with(|| Value::String(model.to_owned()));
        resource
            .entry("effective_from")
            .or_insert_with(|| Value::String(from.to_owned()));
    }
}

/// Whether a price version's `effective_from` is now or past (an unreadable one counts as in force).
fn price_in_force(price: &Value) -> bool {
    tollgate_schemas::prices::in_force(price, chrono::Utc::now().timestamp_millis())
}

/// Gives every key of `consumer` its hash: the existing one for a key id the consumer has, a new random key
/// for a new id. Returns the new keys by id, to be shown once.
fn make_keys(
    consumer: &mut Map<String, Value>,
    existing: Option<&Value>,
    id: &str,
) -> Result<Map<String, Value>, AdminError> {
    let mut created = Map::new();
    let Some(keys) = consumer.get_mut("keys").and_then(Value::as_array_mut) else {
        return Ok(created);
    };
    let mut problems = Vec::new();
    for (j, key) in keys.iter_mut().enumerate() {
        let Some(key) = key.as_object_mut() else {
            problems.push(format!("consumers/{id}.keys[{j}]: must be an object with an id"));
            continue;
        };
        if key.contains_key("sha256") {
            problems.push(format!(
                "consumers/{id}.keys[{j}].sha256: keys are created by the server; list a key by its id only"
            ));
            continue;
        }
        let Some(key_id) = key.get("id").and_then(Value::as_str).map(str::to_owned) else {
            problems.push(format!("consumers/{id}.keys[{j}].id: required"));
            continue;
        };
        let kept = existing
            .and_then(|c| c.get("keys"))
            .and_then(Value::as_array)
            .into_iter()
            .flatten()
            .find(|k| k.get("id").and_then(Value::as_str) == Some(key_id.as_str()))
            .and_then(|k| k.get("sha256"))
            .cloned();
        let sha256 = match kept {
            Some(sha256) => sha256,
            None => {
                let secret = new_key().map_err(|e| AdminError::StoreUnavailable(e.to_string()))?;
                let sha256 = Value::String(hex::encode(hash_key(secret.as_bytes())));
                created.insert(key_id, Value::String(secret));
                sha256
            }
        };
        key.insert("sha256".into(), sha256);
    }
    if problems.is_empty() {
        Ok(created)
    } else {
        Err(AdminError::InvalidConfig(problems))
    }
}

/// A new consumer key: `tg-` and 32 random bytes in base64url.
fn new_key() -> Result<String, getrandom::Error> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes)?;
    Ok(format!(
        "tg-{}",
        base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes)
    ))
}

/// RFC 7386: objects merge member by member, `null` removes a member, anything else replaces.
fn merge_patch(target: &mut Value, patch: &Value) {
    let Value::Object(patch) = patch else {
        *target = patch.clone();
        return;
    };
    if !target.is_object() {
        *target = Value::Object(Map::new());
    }
    if let Value::Object(target) = target {
        for (name, value) in patch {
            if value.is_null() {
                target.remove(name);
            } else {
                merge_patch(target.entry(name.clone()).or_insert(Value::Null), value);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_patch_follows_rfc_7386() {
        let mut target = json!({"a": "b", "c": {"d": "e", "f": "g"}, "targets": [1, 2]});
        merge_patch(&mut target, &json!({"a": "z", "c": {"f": null}, "targets": [3]}));
        assert_eq!(target, json!({"a": "z", "c": {"d": "e"}, "targets": [3]}));
    }

    #[test]
    fn new_key_ids_get_new_keys_and_known_ids_keep_theirs() {
        let existing = json!({"name": "acme", "keys": [{"id": "old", "sha256": "ab"}]});
        let mut consumer = json!({"name": "acme", "keys": [{"id": "old"}, {"id": "new"}]});
        let Value::Object(object) = &mut consumer else {
            unreachable!()
        };
        let created = make_keys(object, Some(&existing), "acme").unwrap();
        assert_eq!(created.len(), 1);
        let key = created["new"].as_str().unwrap();
        assert!(key.starts_with("tg-") && key.len() == 46, "{key}");
        assert_eq!(consumer["keys"][0]["sha256"], "ab");
        assert_eq!(
            consumer["keys"][1]["sha256"],
            hex::encode(hash_key(key.as_bytes()))
        );
    }

    #[test]
    fn a_body_may_not_bring_its_own_key_hash() {
        let mut consumer = json!({"keys": [{"id": "k", "sha256": "00"}]});
        let Value::Object(object) = &mut consumer else {
            unreachable!()
        };
        let Err(AdminError::InvalidConfig(problems)) = make_keys(object, None, "acme") else {
            panic!("accepted a hash")
        };
        assert_eq!(problems.len(), 1);
        assert!(
            problems[0].starts_with("consumers/acme.keys[0].sha256"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_price_version_is_in_force_from_its_effective_time() {
        assert!(price_in_force(&json!({"effective_from": "2020-01-01"})));
        assert!(!price_in_force(&json!({"effective_from": "2999-01-01"})));
    }
}
