//! `GET /v1/models`: the model names (and aliases) this gateway routes that the caller's key may use, in OpenAI's
//! list format — so OpenAI SDKs and tools that list models before calling one work unchanged.

use actix_web::{HttpRequest, HttpResponse, ResponseError, web};
use serde::Serialize;

use crate::http::state::AppState;

#[derive(Serialize)]
struct ModelList<'a> {
    object: &'static str,
    data: Vec<Model<'a>>,
}

#[derive(Serialize)]
struct Model<'a> {
    id: &'a str,
    object: &'static str,
    created: u64,
    owned_by: &'static str,
}

pub async fn list(req: HttpRequest, state: web::Data<AppState>) -> HttpResponse {
    let runtime = state.live.runtime();
    let principal = match runtime.keys.authenticate_request(req.headers()) {
        Ok(principal) => principal,
        Err(error) => return error.error_response(),
    };
    let data = runtime
        .router
        .models()
        .iter()
        .filter(|id| principal.may_use(id))
        .map(|id| Model {
            id,
            object: "model",
            created: 0,
            owned_by: "tollgate",
        })
        .collect();
    HttpResponse::Ok().json(ModelList { object: "list", data })
}
