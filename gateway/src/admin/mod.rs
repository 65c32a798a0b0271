//! The admin API: a second HTTP server on `admin.listen` (default loopback), separate from the public API, that
//! reads and changes the live configuration ([`crate::live`]) under `/admin/v1`:
//! - `GET /{instances,routes,consumers,limits,prices}` and `GET /{collection}/{id}` ([`resources`]);
//! - `PUT`, `PATCH` (JSON merge patch) and `DELETE` on `/{collection}/{id}` ([`writes`]);
//! - `GET /history` — every change, newest first, with its admin key id, replica and time.
//!
//! The whole API is described in `docs/admin-api.openapi.json`.
//!
//! Every request passes one guard, before routing, in this order:
//! 1. source address — the TCP peer, or what a trusted proxy forwards, must be inside `admin.allow`, else 403
//!    ([`allowlist`]);
//! 2. admin key — `X-API-KEY`, SHA-256 and a constant-time compare; missing or unknown → 401 ([`auth`]);
//! 3. role — a viewer key may only GET and HEAD, else 403.
//!
//! Every refusal is logged (peer, judged client address, reason, key id when known — never the key) and every
//! answer counted in `tollgate_admin_requests_total`. There is no default key: without an admin key configured
//! the listener does not start.

pub mod allowlist;
pub mod auth;
pub mod error;
pub mod resources;
pub mod writes;

use std::net::{SocketAddr, TcpListener};
use std::sync::Arc;

use actix_web::body::{EitherBody, MessageBody};
use actix_web::dev::{ServerHandle, ServiceRequest, ServiceResponse};
use actix_web::middleware::{Next, from_fn};
use actix_web::{App, HttpMessage, HttpRequest, HttpResponse, HttpServer, ResponseError, web};

use crate::admin::allowlist::Allowlist;
use crate::admin::auth::AdminKeys;
use crate::admin::error::AdminError;
use crate::admin::writes::Actor;
use crate::config::{AdminConfig, ServerConfig};
use crate::live::LiveConfig;
use crate::metrics as m;
use crate::protocol::request::BodyLimits;

/// The largest admin request body: a resource is a few kilobytes.
const MAX_BODY_BYTES: usize = 1 << 20;

/// What the guard checks every admin request against.
#[derive(Debug)]
struct Guard {
    allowlist: Allowlist,
    keys: AdminKeys,
}

/// The running admin listener.
pub struct AdminServer {
    handle: ServerHandle,
    /// The server runs only while polled, so it is spawned; `stop` waits for it.
    task: actix_web::rt::task::JoinHandle<std::io::Result<()>>,
    addr: SocketAddr,
}

impl std::fmt::Debug for AdminServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AdminServer")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

impl AdminServer {
    /// Binds `admin.listen` and starts serving, or returns `None` (and says so in one log line) when no admin
    /// key is configured. Must be called inside an actix system.
    pub fn start(
        admin: &AdminConfig,
        server: &ServerConfig,
        live: Arc<LiveConfig>,
    ) -> std::io::Result<Option<Self>> {
        if admin.keys.is_empty() {
            tracing::info!("no admin key configured ([admin] keys): the admin API is not started");
            return Ok(None);
        }
        let listener = TcpListener::bind(admin.listen)?;
        let addr = listener.local_addr()?;
        let guard = web::Data::new(Guard {
            allowlist: Allowlist::new(admin.allow.clone(), admin.trusted_proxies.clone()),
            keys: AdminKeys::new(&admin.keys),
        });
        let live = web::Data::from(live);
        let body_limits = web::Data::new(BodyLimits {
            max_bytes: MAX_BODY_BYTES,
            timeout: server.body_read_timeout,
        });
        let server = HttpServer::new(move || {
            App::new()
                .app_data(guard.clone())
                .app_data(live.clone())
                .app_data(body_limits.clone())
                .wrap(from_fn(check))
                .service(
                    web::scope("/admin/v1")
                        .route("/history", web::get().to(resources::history))
                        .route("/usage", web::get().to(crate::http::usage::admin))
                        .route("/{collection}", web::get().to(resources::list))
                        .route("/{collection}/{id}", web::get().to(resources::one))
                        .route("/{collection}/{id}", web::put().to(writes::put))
                        .route("/{collection}/{id}", web::patch().to(writes::patch))
                        .route("/{collection}/{id}", web::delete().to(writes::delete)),
                )
                .default_service(web::to(unknown_url))
        })
        .workers(1)
        .shutdown_timeout(server.shutdown_timeout.as_secs())
        .disable_signals()
        .listen(listener)?
        .run();
        let handle = server.handle();
        let task = actix_web::rt::spawn(server);
        tracing::info!(listen = %addr, keys = admin.keys.len(), "admin API listening");
        Ok(Some(Self { handle, task, addr }))
    }

    /// The address the admin API is bound to (the real port when `admin.listen` asked for port 0).
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// Stops the admin listener gracefully and waits for it.
    pub async fn stop(self) -> std::io::Result<()> {
        self.handle.stop(true).await;
        self.task.await.map_err(std::io::Error::other)?
    }
}

/// The guard in front of every admin route: address, key, role — then the route.
async fn check(
    req: ServiceRequest,
    next: Next<impl MessageBody>,
) -> Result<ServiceResponse<EitherBody<impl MessageBody>>, actix_web::Error> {
    let Some(guard) = req.app_data::<web::Data<Guard>>().cloned() else {
        return Err(actix_web::error::ErrorInternalServerError("admin guard missing"));
    };
    let peer = req.peer_addr().map(|a| a.ip());
    let (client, allowed) = match peer {
        Some(peer) => guard.allowlist.judge(peer, req.headers()),
        None => (None, Err(AdminError::AddressNotAllowed)),
    };
    let mut key_id = None;
    let verdict = allowed
        .and_then(|()| guard.keys.authenticate(req.headers()))
        .and_then(|principal| {
            key_id = Some(principal.key_id.clone());
            auth::authorize(principal.role, req.method())
        });
    if let Some(key_id) = &key_id {
        req.extensions_mut().insert(Actor(key_id.to_string()));
    }
    if let Err(refusal) = verdict {
        tracing::warn!(
            peer = ?peer,
            client = ?client,
            method = %req.method(),
            path = req.path(),
            key_id = key_id.as_deref(),
            reason = refusal.outcome(),
            "admin request refused"
        );
        count(refusal.status_code().as_u16(), refusal.outcome());
        let response = refusal.error_response();
        return Ok(req.into_response(response).map_into_right_body());
    }
    let response = reshaped(next.call(req).await?);
    let status = response.status();
    let outcome = match status.as_u16() {
        200..=399 => "ok",
        404 => "not_found",
        _ => "error",
    };
    count(status.as_u16(), outcome);
    Ok(response)
}

/// An error answered by the HTTP layer rather than by an admin handler (an extractor's plain-text 413 or 404)
/// in the admin API's own JSON shape, with its status; every other answer as it is.
fn reshaped<B: MessageBody>(response: ServiceResponse<B>) -> ServiceResponse<EitherBody<B>> {
    let status = response.status();
    let is_json = response
        .headers()
        .get(actix_web::http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("application/json"));
    if !(status.is_client_error() || status.is_server_error()) || is_json {
        return response.map_into_left_body();
    }
    let message = response.response().error().map_or_else(
        || status.canonical_reason().unwrap_or("refused").to_owned(),
        ToString::to_string,
    );
    let error = AdminError::Unreadable { status, message };
    response
        .into_response(error.error_response())
        .map_into_right_body()
}

fn count(status: u16, outcome: &'static str) {
    metrics::counter!(
        m::ADMIN_REQUESTS_TOTAL,
        "status" => status.to_string(),
        "outcome" => outcome
    )
    .increment(1);
}

async fn unknown_url(req: HttpRequest) -> HttpResponse {
    AdminError::UnknownUrl {
        method: req.method().to_string(),
        path: req.path().to_owned(),
    }
    .error_response()
}

#[cfg(test)]
mod tests {
    use serde_json::Value;
    use tollgate_schemas::config::ResourceKind;

    use super::error::AdminError;

    fn openapi() -> Value {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/../docs/admin-api.openapi.json");
        serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
    }

    #[test]
    fn the_openapi_description_covers_every_route_and_method() {
        let doc = openapi();
        let paths = &doc["paths"];
        assert!(paths["/admin/v1/history"]["get"].is_object());
        for kind in ResourceKind::ALL {
            let collection = format!("/admin/v1/{}", kind.plural());
            assert!(paths[&collection]["get"].is_object(), "GET {collection}");
            let one = format!("{collection}/{{id}}");
            for method in ["get", "put", "patch", "delete"] {
                assert!(paths[&one][method].is_object(), "{method} {one}");
            }
        }
    }

    #[test]
    fn the_openapi_description_names_every_error_code() {
        let text = openapi().to_string();
        let every = [
            AdminError::MissingKey,
            AdminError::InvalidKey,
            AdminError::AddressNotAllowed,
            AdminError::BadForwardedAddress,
            AdminError::ReadOnlyKey,
            AdminError::NotFound {
                kind: "route",
                name: String::new(),
            },
            AdminError::UnknownUrl {
                method: String::new(),
                path: String::new(),
            },
            AdminError::InvalidBody(String::new()),
            AdminError::InvalidConfig(Vec::new()),
            AdminError::Conflict(Vec::new()),
            AdminError::PriceVersionImmutable(String::new()),
            AdminError::PriceVersionInForce(String::new()),
            AdminError::MethodNotAllowed {
                method: String::new(),
                path: String::new(),
            },
            AdminError::StoreUnavailable(String::new()),
            AdminError::NotApplied,
            AdminError::Unreadable {
                status: actix_web::http::StatusCode::PAYLOAD_TOO_LARGE,
                message: String::new(),
            },
        ];
        for error in every {
            assert!(
                text.contains(error.outcome()),
                "{} is not in the OpenAPI description",
                error.outcome()
            );
        }
    }
}
