//! Reading and parsing the client's request body, once. The body is read up to the configured limit and parsed
//! into a JSON object; the fields the gateway needs (`model`, `stream`, and the prompt: `messages`, `prompt` or
//! `input` by [`Endpoint`]) are checked and the rest is left for the upstream. The original bytes are kept so
//! that an instance without a model override receives exactly what the client sent.
//!
//! **Hostile bodies.** Reading is bounded three ways: a `Content-Length` over `server.max_request_bytes` is
//! refused before a byte is read (413), the body must arrive whole within `server.body_read_timeout` (408, so a
//! client trickling bytes cannot hold a request open), and the body's buffer is charged to the replica's
//! in-flight budget — the declared length before a byte is read, then its capacity as it grows
//! ([`crate::http::inflight`], 503 past it). Parsing is bounded by its shape, checked first by
//! [`scan`]: one pass over the bytes, no allocation, that counts nesting depth and values (every `[`, `{`, `,`
//! and `:` outside strings starts one) and refuses a body deeper than `server.max_json_depth` or with more than
//! `server.max_json_values` values (413) before a `serde_json::Value` exists. The cost of a parse is its values,
//! not its bytes: 8 MiB of `[],` is 2.8 million values, about 90 MB of `Value`s and doubled `Vec`s (8 MiB of
//! nested arrays parses into ~130 MB), while 8 MiB of prompt text is one value. So the values counted
//! are charged to the budget ([`crate::http::inflight::VALUE_COST`] each) before parsing, and the budget, not the
//! request count, bounds what parses hold at once. A borrowed or lighter parse would cut the cost per value but
//! not its growth with the value count, and the upstream body, the prompt estimate and the rewrite of `model`
//! all read the parsed tree; the pre-scan is one allocation-free pass, linear in the bytes, and leaves the rest
//! of the path unchanged. `tests/tests/memory.rs` measures what this bounds.

use actix_web::web;
use bytes::{Bytes, BytesMut};
use futures_util::StreamExt;
use std::borrow::Cow;
use std::time::Duration;

use serde::ser::{Serialize, SerializeMap, Serializer};
use serde_json::{Map, Value};

use crate::protocol::Endpoint;

use crate::error::GatewayError;
use crate::http::inflight::Permit;

/// How a body is read: its bound, its deadline, the budget it is charged to.
#[derive(Debug, Clone, Copy)]
pub struct BodyLimits {
    pub max_bytes: usize,
    pub timeout: Duration,
}

/// Reads the whole request body, refusing more than `limits.max_bytes` bytes (at once when the client's
/// `Content-Length` says so), a body that has not arrived whole within `limits.timeout`, and a buffer past the
/// in-flight budget `permit` is charged to.
pub async fn read_body(
    mut payload: web::Payload,
    content_length: Option<usize>,
    limits: BodyLimits,
    permit: &Permit,
) -> Result<Bytes, GatewayError> {
    let limit = limits.max_bytes;
    if content_length.is_some_and(|n| n > limit) {
        return Err(GatewayError::PayloadTooLarge { limit });
    }
    let read = async {
        // The declared length is charged and allocated at once (a lying one is charged only while the request
        // lasts, at most `body_read_timeout`), so an 8 MiB body is one allocation, not a series of doublings;
        // past it, the buffer's capacity is charged as it grows.
        let declared = content_length.unwrap_or(0);
        let mut body = BytesMut::new();
        let mut charged = 0;
        permit.grow(&mut body, declared, &mut charged)?;
        while let Some(chunk) = payload.next().await {
            let chunk = chunk.map_err(|e| GatewayError::RequestBody(e.to_string()))?;
            if body.len() + chunk.len() > limit {
                return Err(GatewayError::PayloadTooLarge { limit });
            }
            permit.grow(&mut body, chunk.len(), &mut charged)?;
            body.extend_from_slice(&chunk);
        }
        Ok(body.freeze())
    };
    tokio::time::timeout(limits.timeout, read)
        .await
        .map_err(|_| GatewayError::RequestTimeout {
            seconds: limits.timeout.as_secs().max(1),
        })?
}

/// Checks a body's shape without parsing it: nesting at most `max_depth` deep, at most `max_values` values
/// (counted as the `[`, `{`, `,` and `:` outside strings, which bounds the values and keys a parse makes).
/// Returns the values counted. Malformed JSON is left for the parser to name.
pub fn scan(raw: &[u8], max_depth: usize, max_values: usize) -> Result<usize, GatewayError> {
    let mut depth = 0usize;
    let mut values = 1usize;
    let mut in_string = false;
    let mut escaped = false;
    for &byte in raw {
        if in_string {
            if escaped {
                escaped = false;
            } else if byte == b'\\' {
                escaped = true;
            } else if byte == b'"' {
                in_string = false;
            }
            continue;
        }
        match byte {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                values += 1;
                if depth > max_depth {
                    return Err(GatewayError::JsonTooComplex(format!(
                        "arrays and objects are nested deeper than {max_depth} levels"
                    )));
                }
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            b',' | b':' => values += 1,
            _ => continue,
        }
        if values > max_values {
            return Err(GatewayError::JsonTooComplex(format!(
                "it holds more than {max_values} JSON values"
            )));
        }
    }
    Ok(values)
}

/// What is counted as a request's prompt.
#[derive(Debug, Clone, PartialEq)]
pub enum Prompt<'a> {
    /// Chat messages, counted with OpenAI's chat overhead (images by the tile rule), and the tool definitions the
    /// provider also reads as prompt (`tools`, the legacy `functions`).
    Chat {
        messages: Cow<'a, Value>,
        tools: Option<&'a Value>,
        functions: Option<&'a Value>,
    },
    /// Texts counted one by one, plus tokens the client sent already tokenized.
    Texts { texts: Vec<&'a str>, pretokenized: u32 },
}

/// A request to a metered endpoint as the gateway sees it.
#[derive(Debug)]
pub struct ApiRequest {
    pub endpoint: Endpoint,
    pub raw: Bytes,
    pub body: Map<String, Value>,
    pub model: String,
    pub stream: bool,
}

impl ApiRequest {
    pub fn parse(endpoint: Endpoint, raw: Bytes) -> Result<Self, GatewayError> {
        let Body { map: body, duplicate } =
            serde_json::from_slice(&raw).map_err(|e| GatewayError::InvalidJson(e.to_string()))?;
        if let Some(param) = duplicate {
            return Err(GatewayError::InvalidParameter {
                param,
                message: format!(
                    "the key `{param}` appears more than once; send each of the request's fields once"
                ),
            });
        }
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
        let field = endpoint.prompt_field();
        let valid = match (endpoint, body.get(field)) {
            (_, None | Some(Value::Null)) => return Err(GatewayError::MissingParameter(field)),
            (Endpoint::ChatCompletions | Endpoint::Messages, Some(Value::Array(m))) => !m.is_empty(),
            (Endpoint::ChatCompletions | Endpoint::Messages, Some(_)) => false,
            (Endpoint::Responses, Some(Value::String(text))) => !text.is_empty(),
            (Endpoint::Responses, Some(Value::Array(items))) => {
                !items.is_empty() && items.iter().all(|i| i.is_object() || i.is_string())
            }
            (Endpoint::Responses, Some(_)) => false,
            (_, Some(Value::String(_))) => true,
            (_, Some(Value::Array(items))) => !items.is_empty() && items.iter().all(is_prompt_item),
            (_, Some(_)) => false,
        };
        if !valid {
            let message = match endpoint {
                Endpoint::ChatCompletions | Endpoint::Messages => "expected a non-empty array of messages",
                Endpoint::Responses => "expected a non-empty string or a non-empty array of input items",
                Endpoint::Completions | Endpoint::Embeddings => {
                    "expected a string, an array of strings, an array of token ids, or an array of token id arrays"
                }
            };
            return Err(GatewayError::InvalidParameter {
                param: field,
                message: message.into(),
            });
        }
        let stream = match body.get("stream") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) if endpoint.streams() => *b,
            Some(Value::Bool(_)) => {
                return Err(GatewayError::InvalidParameter {
                    param: "stream",
                    message: "this endpoint does not stream".into(),
                });
            }
            Some(_) => {
                return Err(GatewayError::InvalidParameter {
                    param: "stream",
                    message: "expected a boolean".into(),
                });
            }
        };
        Ok(Self {
            endpoint,
            raw,
            body,
            model,
            stream,
        })
    }

    /// The most output tokens the request can produce, when it says: the larger of `max_completion_tokens` and
    /// `max_tokens` (an upstream may honour either; the Responses API's `max_output_tokens`), times `n` choices. Quota admission reserves it besides the
    /// prompt. A value that is not a non-negative integer counts as absent here; the provider refuses it with its
    /// own error.
    pub fn max_output_tokens(&self) -> Option<u64> {
        let fields: &[&str] = match self.endpoint {
            Endpoint::Responses => &["max_output_tokens"],
            _ => &["max_completion_tokens", "max_tokens"],
        };
        let limit = fields
            .iter()
            .filter_map(|field| self.body.get(*field).and_then(Value::as_u64))
            .max()?;
        let choices = self.body.get("n").and_then(Value::as_u64).unwrap_or(1).max(1);
        Some(limit.saturating_mul(choices))
    }

    /// What to count as the prompt.
    pub fn prompt(&self) -> Prompt<'_> {
        let value = self
            .body
            .get(self.endpoint.prompt_field())
            .unwrap_or(&Value::Null);
        match self.endpoint {
            Endpoint::ChatCompletions => {
                return Prompt::Chat {
                    messages: Cow::Borrowed(value),
                    tools: self.field("tools"),
                    functions: self.field("functions"),
                };
            }
            // Anthropic's `system` is a separate field: estimate it as the leading system message it stands for.
            Endpoint::Messages => {
                let mut messages = Vec::new();
                if let Some(system) = self.body.get("system").filter(|s| !s.is_null()) {
                    messages.push(serde_json::json!({"role": "system", "content": system}));
                }
                messages.extend(value.as_array().into_iter().flatten().cloned());
                return Prompt::Chat {
                    messages: Cow::Owned(Value::Array(messages)),
                    tools: self.field("tools"),
                    functions: None,
                };
            }
            // Instructions and input items: estimated as the chat messages they stand for.
            Endpoint::Responses => {
                return Prompt::Chat {
                    messages: Cow::Owned(super::responses::input_as_messages(&self.body)),
                    tools: self.field("tools"),
                    functions: None,
                };
            }
            Endpoint::Completions | Endpoint::Embeddings => {}
        }
        let mut texts = Vec::new();
        let mut pretokenized = 0u32;
        let mut visit = |v: &'_ Value| match v {
            Value::Array(tokens) => pretokenized = pretokenized.saturating_add(len_u32(tokens.len())),
            Value::Number(_) => pretokenized = pretokenized.saturating_add(1),
            _ => {}
        };
        match value {
            Value::String(text) => texts.push(text.as_str()),
            Value::Array(items) => {
                for item in items {
                    match item {
                        Value::String(text) => texts.push(text.as_str()),
                        other => visit(other),
                    }
                }
            }
            _ => {}
        }
        Prompt::Texts { texts, pretokenized }
    }

    /// A field of the body, unless absent or `null`.
    fn field(&self, name: &str) -> Option<&Value> {
        self.body.get(name).filter(|v| !v.is_null())
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
    /// name, or the request is `metered` and streams without asking for usage — then the gateway asks for it
    /// (`stream_options.include_usage`), to bill from the provider's numbers, and removes that chunk again
    /// before it reaches the client.
    pub fn upstream_body(&self, model_override: Option<&str>, metered: bool) -> Result<Bytes, GatewayError> {
        let new_model = model_override.filter(|m| *m != self.model);
        let openai_stream = matches!(self.endpoint, Endpoint::ChatCompletions | Endpoint::Completions);
        let ask_usage = metered && openai_stream && self.stream && !self.client_wants_usage();
        if new_model.is_none() && !ask_usage {
            return Ok(self.raw.clone());
        }
        let rewritten = Rewritten {
            body: &self.body,
            model: new_model,
            include_usage: ask_usage,
        };
        serde_json::to_vec(&rewritten)
            .map(Bytes::from)
            .map_err(|_| GatewayError::Internal)
    }
}

/// The client's body as it goes upstream when something in it changes: serialised straight from the parsed
/// body, with `model` replaced and `stream_options.include_usage` set, without copying the body first.
struct Rewritten<'a> {
    body: &'a Map<String, Value>,
    model: Option<&'a str>,
    include_usage: bool,
}

impl Serialize for Rewritten<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.body {
            match key.as_str() {
                "model" if self.model.is_some() => map.serialize_entry(key, &self.model)?,
                // Options that are not an object are replaced, as OpenAI would refuse them anyway.
                "stream_options" if self.include_usage => {
                    map.serialize_entry(key, &WithUsage(value.as_object()))?;
                }
                _ => map.serialize_entry(key, value)?,
            }
        }
        if self.include_usage && !self.body.contains_key("stream_options") {
            map.serialize_entry("stream_options", &WithUsage(None))?;
        }
        map.end()
    }
}

/// `stream_options` with `include_usage: true`, keeping the client's other options.
struct WithUsage<'a>(Option<&'a Map<String, Value>>);

impl Serialize for WithUsage<'_> {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        let mut map = serializer.serialize_map(None)?;
        for (key, value) in self.0.into_iter().flatten() {
            if key != "include_usage" {
                map.serialize_entry(key, value)?;
            }
        }
        map.serialize_entry("include_usage", &true)?;
        map.end()
    }
}

/// A prompt item: a string, a token id, or an array of token ids.
/// The top-level fields the gateway reads. A body that repeats one is refused: the gateway would read one value
/// (serde keeps the last) and an upstream that receives the client's bytes might read another (many keep the
/// first), so a client could be metered for one request and served another.
const READ_FIELDS: [&str; 7] = [
    "model",
    "stream",
    "max_tokens",
    "max_completion_tokens",
    "n",
    "messages",
    "stream_options",
];

/// A request body as a JSON object, read in one pass that also notes the first repeated [`READ_FIELDS`] key.
struct Body {
    map: Map<String, Value>,
    duplicate: Option<&'static str>,
}

impl<'de> serde::Deserialize<'de> for Body {
    fn deserialize<D: serde::Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        deserializer.deserialize_any(BodyVisitor)
    }
}

struct BodyVisitor;

impl<'de> serde::de::Visitor<'de> for BodyVisitor {
    type Value = Body;

    fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("a JSON object")
    }

    fn visit_map<A: serde::de::MapAccess<'de>>(self, mut access: A) -> Result<Body, A::Error> {
        let mut map = Map::new();
        let mut duplicate = None;
        while let Some(key) = access.next_key::<String>()? {
            let value: Value = access.next_value()?;
            if duplicate.is_none()
                && let Some(field) = READ_FIELDS.iter().find(|f| **f == key)
                && map.contains_key(*field)
            {
                duplicate = Some(*field);
            }
            map.insert(key, value);
        }
        Ok(Body { map, duplicate })
    }
}

fn is_prompt_item(item: &Value) -> bool {
    match item {
        Value::String(_) | Value::Number(_) => true,
        Value::Array(tokens) => tokens.iter().all(Value::is_number),
        _ => false,
    }
}

fn len_u32(n: usize) -> u32 {
    u32::try_from(n).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_repeated_field_the_gateway_reads_is_refused_by_name() {
        for key in READ_FIELDS {
            let body = format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}],"{key}":1,"{key}":2}}"#
            );
            match parse(&body) {
                Err(GatewayError::InvalidParameter { param, message }) => {
                    assert_eq!(param, key);
                    assert!(message.contains(key), "{message}");
                }
                other => panic!("{key}: {other:?}"),
            }
        }
        // Fields the gateway does not read pass through as the client sent them.
        assert!(
            parse(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"user":"a","user":"b"}"#)
                .is_ok()
        );
        assert!(matches!(parse("[1]"), Err(GatewayError::InvalidJson(_))));
    }

    #[test]
    fn max_output_tokens_reads_either_field_and_multiplies_by_choices() {
        let with = |extra: &str| {
            parse(&format!(
                r#"{{"model":"m","messages":[{{"role":"user","content":"hi"}}]{extra}}}"#
            ))
            .unwrap()
            .max_output_tokens()
        };
        assert_eq!(with(""), None);
        assert_eq!(with(r#","max_tokens":100"#), Some(100));
        // Both: the larger, since an upstream may honour either.
        assert_eq!(with(r#","max_completion_tokens":50,"max_tokens":100"#), Some(100));
        assert_eq!(
            with(r#","max_completion_tokens":500,"max_tokens":100"#),
            Some(500)
        );
        assert_eq!(with(r#","max_tokens":100,"n":3"#), Some(300));
        assert_eq!(with(r#","max_tokens":-1"#), None);
        assert_eq!(with(r#","max_tokens":"lots""#), None);
    }

    #[test]
    fn the_shape_scan_refuses_deep_or_crowded_bodies_before_any_parse() {
        let deep = format!("{}{}", "[".repeat(65), "]".repeat(65));
        assert!(
            matches!(scan(deep.as_bytes(), 64, 1000), Err(GatewayError::JsonTooComplex(m)) if m.contains("64 levels"))
        );
        let ok = format!("{}{}", "[".repeat(64), "]".repeat(64));
        assert!(scan(ok.as_bytes(), 64, 1000).is_ok());
        // Brackets, commas and colons inside strings (escaped quotes too) are text, not structure.
        let text = r#"{"model":"m","messages":[{"role":"user","content":"[[[[,,,:::\"[[[["}]}"#;
        assert!(scan(text.as_bytes(), 4, 20).is_ok());
        let crowded = format!(r#"{{"model":"m","input":[{}1]}}"#, "1,".repeat(100));
        assert!(
            matches!(scan(crowded.as_bytes(), 64, 100), Err(GatewayError::JsonTooComplex(m)) if m.contains("100 JSON values"))
        );
        assert!(scan(crowded.as_bytes(), 64, 110).is_ok());
    }

    fn parse(text: &str) -> Result<ApiRequest, GatewayError> {
        ApiRequest::parse(Endpoint::ChatCompletions, Bytes::copy_from_slice(text.as_bytes()))
    }

    fn parse_at(endpoint: Endpoint, text: &str) -> Result<ApiRequest, GatewayError> {
        ApiRequest::parse(endpoint, Bytes::copy_from_slice(text.as_bytes()))
    }

    #[test]
    fn completions_and_embeddings_take_strings_arrays_and_token_ids() {
        let req = parse_at(Endpoint::Embeddings, r#"{"model":"e","input":["a b","c"]}"#).unwrap();
        assert_eq!(
            req.prompt(),
            Prompt::Texts {
                texts: vec!["a b", "c"],
                pretokenized: 0
            }
        );
        let req = parse_at(
            Endpoint::Completions,
            r#"{"model":"c","prompt":[[1,2,3],[4]],"stream":true}"#,
        )
        .unwrap();
        assert!(req.stream);
        assert_eq!(
            req.prompt(),
            Prompt::Texts {
                texts: vec![],
                pretokenized: 4
            }
        );
        let req = parse_at(Endpoint::Completions, r#"{"model":"c","prompt":[5,6]}"#).unwrap();
        assert_eq!(
            req.prompt(),
            Prompt::Texts {
                texts: vec![],
                pretokenized: 2
            }
        );
    }

    #[test]
    fn each_endpoint_names_its_own_missing_or_invalid_prompt() {
        assert!(matches!(
            parse_at(Endpoint::Embeddings, r#"{"model":"e"}"#),
            Err(GatewayError::MissingParameter("input"))
        ));
        assert!(matches!(
            parse_at(Endpoint::Completions, r#"{"model":"c","prompt":{"x":1}}"#),
            Err(GatewayError::InvalidParameter { param: "prompt", .. })
        ));
        assert!(matches!(
            parse_at(Endpoint::Embeddings, r#"{"model":"e","input":"x","stream":true}"#),
            Err(GatewayError::InvalidParameter { param: "stream", .. })
        ));
    }

    #[test]
    fn a_valid_request_keeps_its_bytes() {
        let text = r#"{"model":"gpt-4o","messages":[{"role":"user","content":"hi"}],"temperature":0.2}"#;
        let req = parse(text).unwrap();
        assert_eq!(req.model, "gpt-4o");
        assert!(!req.stream);
        assert_eq!(req.upstream_body(None, true).unwrap(), text.as_bytes());
        assert_eq!(req.upstream_body(Some("gpt-4o"), true).unwrap(), text.as_bytes());
    }

    #[test]
    fn a_model_override_replaces_only_the_model() {
        let req =
            parse(r#"{"model":"alias","messages":[{"role":"user","content":"hi"}],"top_p":1}"#).unwrap();
        let out: Value =
            serde_json::from_slice(&req.upstream_body(Some("real-model"), true).unwrap()).unwrap();
        assert_eq!(out["model"], "real-model");
        assert_eq!(out["top_p"], 1);
        assert_eq!(out["messages"][0]["content"], "hi");
    }

    #[test]
    fn a_stream_without_usage_asks_the_upstream_for_it_and_one_with_usage_is_left_alone() {
        let req =
            parse(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#).unwrap();
        assert!(!req.client_wants_usage());
        let out: Value = serde_json::from_slice(&req.upstream_body(None, true).unwrap()).unwrap();
        assert_eq!(out["stream_options"]["include_usage"], true);

        let text = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true}}"#;
        let req = parse(text).unwrap();
        assert!(req.client_wants_usage());
        assert_eq!(req.upstream_body(None, true).unwrap(), text.as_bytes());
    }

    #[test]
    fn asking_for_usage_keeps_the_clients_other_stream_options_and_replaces_options_that_are_not_an_object() {
        let req = parse(
            r#"{"model":"alias","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":false,"x":1}}"#,
        )
        .unwrap();
        let out: Value = serde_json::from_slice(&req.upstream_body(Some("real"), true).unwrap()).unwrap();
        assert_eq!(
            out,
            serde_json::json!({"model":"real","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":{"include_usage":true,"x":1}})
        );
        let req = parse(r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true,"stream_options":"yes"}"#).unwrap();
        let out: Value = serde_json::from_slice(&req.upstream_body(None, true).unwrap()).unwrap();
        assert_eq!(out["stream_options"], serde_json::json!({"include_usage": true}));
    }

    #[test]
    fn without_metering_a_stream_goes_upstream_as_the_client_sent_it() {
        let text = r#"{"model":"m","messages":[{"role":"user","content":"hi"}],"stream":true}"#;
        let req = parse(text).unwrap();
        assert_eq!(req.upstream_body(None, false).unwrap(), text.as_bytes());
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
