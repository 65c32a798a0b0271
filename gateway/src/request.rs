//! Reading and parsing the client's request body, once. The body is read up to the configured limit and parsed
//! into a JSON object; the fields the gateway needs (`model`, `stream`, `messages`) are checked and the rest is
//! left for the upstream. The original bytes are kept so that an instance without a model override receives
//! exactly what the client sent.

use actix_web::web;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use serde_json::{Map, Value};

use crate::error::GatewayError;

/// Reads the whole request body, refusing more than `limit` bytes.
pub async fn read_body(mut payload: web::Payload, limit: usize) -> Result<Bytes, GatewayError> {
    let mut body = BytesMut::new();
    while let Some(chunk) = payload.next().await {
        let chunk = chunk.map_err(|e| GatewayError::RequestBody(e.to_string()))?;
        if body.len() + chunk.len() > limit {
            return Err(GatewayError::PayloadTooLarge { limit });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body.freeze())
}

/// A chat completion request as the gateway sees it.
#[derive(Debug)]
pub struct ChatRequest {
    pub raw: Bytes,
    pub body: Map<String, Value>,
    pub model: String,
    pub stream: bool,
}

impl ChatRequest {
    pub fn parse(raw: Bytes) -> Result<Self, GatewayError> {
        let value: Value =
            serde_json::from_slice(&raw).map_err(|e| GatewayError::InvalidJson(e.to_string()))?;
        let Value::Object(body) = value else {
            return Err(GatewayError::InvalidJson("expected a JSON object".into()));
        };
        let model = match body.get("model") {
            None | Some(Value::Null) => return Err(GatewayError::MissingParameter("model")),
            Some(Value::String(m)) if !m.is_empty() => m.clone(),
            Some(_) => {
                return Err(GatewayError::InvalidParameter {
                    param: "model",
                    message: "expected a non-empty string".into(),
                });
            }
        };
        match body.get("messages") {
            None | Some(Value::Null) => return Err(GatewayError::MissingParameter("messages")),
            Some(Value::Array(m)) if !m.is_empty() => {}
            Some(_) => {
                return Err(GatewayError::InvalidParameter {
                    param: "messages",
                    message: "expected a non-empty array of messages".into(),
                });
            }
        }
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(_) => {
                return Err(GatewayError::InvalidParameter {
                    param: "stream",
                    message: "expected a boolean".into(),
                });
            }
        };
        Ok(Self {
            raw,
            body,
            model,
            stream,
        })
    }

    pub fn messages(&self) -> &Value {
        self.body.get("messages").unwrap_or(&Value::Null)
    }

    /// Whether the client asked for the usage chunk at the end of a stream (`stream_options.include_usage`).
    pub fn client_wants_usage(&self) -> bool {
        self.body
            .get("stream_options")
            .and_then(|o| o.get("include_usage"))
            .and_then(Value::as_bool)
            == Some(true)
    }

    /// The body to send to an instance: the client's bytes unchanged, unless the instance has its own model
    /// name, or the request streams without asking for usage — then the gateway asks for it
    /// (`stream_options.include_usage`), to bill from the provider's numbers, and removes that chunk again
    /// before it reaches the client.
    pub fn upstream_body(&self, model_override: Option<&str>) -> Result<Bytes, GatewayError> {
        let new_model = model_override.filter(|m| *m != self.model);
        let ask_usage = self.stream && !self.client_wants_usage();
        if new_model.is_none() && !ask_usage {
            return Ok(self.raw.clone());
        }
        let mut body = self.body.clone();
        if let Some(model) = new_model {
            body.insert("model".into(), Value::String(model.to_owned()));
        }
        if ask_usage {
            let options = body
                .entry("stream_options")
                .or_insert_with(|| Value::Object(Map::new()));
            if !options.is_object() {
                *options = Value::Object(Map::new());
            }
            if let Value::Object(options) = options {
                options.insert("include_usage".into(), Value::Bool(true));
            }
        }
        serde_json::to_vec(&body)
            .map(Bytes::from)
            .map_err(|_| GatewayError::Internal)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn parse(text: &str) -> Result<ChatRequest, GatewayError> {
        ChatRequest::parse(Bytes::copy_from_slice(text.as_bytes()))
    }

    #[test]
    fn a_valid_request_keeps_its_bytes() {
        let text = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"temperature":0.2}"#;
        let req = parse(text).unwrap();
        assert_eq!(req.model, "gpt-4o");
        assert!(!req.stream);
        assert_eq!(req.upstream_body(None).unwrap(), text.as_bytes());
        assert_eq!(req.upstream_body(Some("gpt-4o")).unwrap(), text.as_bytes());
    }

    #[test]
    fn a_model_override_replaces_only_the_model() {
        let req =
            parse(r#"{"model":"alias","messages":[{"role":"user","content":"hi"}],"top_p":1}"#).unwrap();
        let out: Value = serde_json::from_slice(&req.upstream_body(Some("real-model")).unwrap()).unwrap();
        assert_eq!(out["model"], "real-model");
        assert_eq!(out["top_p"], 1);
        assert_eq!(out["messages"][0]["content"], "hi");
    }

    #[test]
    fn a_stream_without_usage_asks_the_upstream_for_it_and_one_with_usage_is_left_alone() {
        let req =
            parse(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#).unwrap();
        assert!(!req.client_wants_usage());
        let out: Value = serde_json::from_slice(&req.upstream_body(None).unwrap()).unwrap();
        assert_eq!(out["stream_options"]["include_usage"], true);

        let text = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#;
        let req = parse(text).unwrap();
        assert!(req.client_wants_usage());
        assert_eq!(req.upstream_body(None).unwrap(), text.as_bytes());
    }

    #[test]
    fn malformed_bodies_name_the_problem() {
        assert!(matches!(parse("{"), Err(GatewayError::InvalidJson(_))));
        assert!(matches!(parse("[1]"), Err(GatewayError::InvalidJson(_))));
        assert!(matches!(
            parse(r#"{"messages":[{}]}"#),
            Err(GatewayError::MissingParameter("model"))
        ));
        assert!(matches!(
            parse(r#"{"model":"m"}"#),
            Err(GatewayError::MissingParameter("messages"))
        ));
        assert!(matches!(
            parse(r#"{"model":7,"messages":[{}]}"#),
            Err(GatewayError::InvalidParameter { param: "model", .. })
        ));
        assert!(matches!(
            parse(r#"{"model":"m","messages":[]}"#),
            Err(GatewayError::InvalidParameter {
                param: "messages",
                ..
            })
        ));
        assert!(matches!(
            parse(r#"{"model":"m","messages":[{}],"stream":"yes"}"#),
            Err(GatewayError::InvalidParameter { param: "stream", .. })
        ));
    }
}
