//! Reading the live configuration under `/admin/v1`: `GET /{collection}` and `GET /{collection}/{id}` for
//! instances, routes, consumers, limits and prices, and `GET /history`. Resources are shown as stored — the
//! fields of their TOML tables — except that consumer keys never show their hashes. Every answer carries
//! `x-tollgate-config-version`, the version of the configuration it read.

use actix_web::{HttpRequest, HttpResponse, web};
use serde::Deserialize;
use serde_json::{Value, json};
use tollgate_schemas::config::ResourceKind;

use crate::admin::error::AdminError;
use crate::live::{LiveConfig, shown};

/// The response header naming the configuration version an answer read or wrote.
pub const VERSION_HEADER: &str = "x-tollgate-config-version";

/// The resource kind a URL's collection segment names.
pub fn collection(req: &HttpRequest, name: &str) -> Result<ResourceKind, AdminError> {
    ResourceKind::ALL
        .into_iter()
        .find(|k| k.plural() == name)
        .ok_or_else(|| AdminError::UnknownUrl {
            method: req.method().to_string(),
            path: req.path().to_owned(),
        })
}

/// `GET /admin/v1/{collection}`
pub async fn list(
    req: HttpRequest,
    live: web::Data<LiveConfig>,
    path: web::Path<String>,
) -> Result<HttpResponse, AdminError> {
    let kind = collection(&req, &path)?;
    let (set, version) = live.resources();
    let data: Vec<Value> = set
        .list(kind)
        .map(|(_, resource)| shown(kind, resource))
        .collect();
    Ok(HttpResponse::Ok()
        .insert_header((VERSION_HEADER, version.to_string()))
        .json(json!({ "data": data })))
}

/// `GET /admin/v1/{collection}/{id}`
pub async fn one(
    req: HttpRequest,
    live: web::Data<LiveConfig>,
    path: web::Path<(String, String)>,
) -> Result<HttpResponse, AdminError> {
    let (name, id) = path.into_inner();
    let kind = collection(&req, &name)?;
    let (set, version) = live.resources();
    match set.get(kind, &id) {
        Some(resource) => Ok(HttpResponse::Ok()
            .insert_header((VERSION_HEADER, version.to_string()))
            .json(shown(kind, resource))),
        None => Err(AdminError::NotFound {
            kind: kind.as_str(),
            name: id,
        }),
    }
}

#[derive(Debug, Deserialize)]
pub struct HistoryQuery {
    kind: Option<String>,
    id: Option<String>,
    limit: Option<usize>,
}

/// History entries per answer by default, and at most.
const HISTORY_DEFAULT: usize = 100;
const HISTORY_MAX: usize = 1000;

/// `GET /admin/v1/history?kind=route&id=chat&limit=100`: the change log, newest first.
pub async fn history(
    live: web::Data<LiveConfig>,
    query: web::Query<HistoryQuery>,
) -> Result<HttpResponse, AdminError> {
    let query = query.into_inner();
    let kind = match query.kind.as_deref() {
        None => None,
        Some(name) => Some(ResourceKind::parse(name).ok_or_else(|| {
            AdminError::InvalidBody(format!(
                "kind: `{name}` is not one of instance, route, team, consumer, limit, price"
            ))
        })?),
    };
    let limit = query.limit.unwrap_or(HISTORY_DEFAULT).clamp(1, HISTORY_MAX);
    let (_, version) = live.resources();
    let data = live.history(kind, query.id.as_deref(), limit);
    Ok(HttpResponse::Ok()
        .insert_header((VERSION_HEADER, version.to_string()))
        .json(json!({ "data": data })))
}
