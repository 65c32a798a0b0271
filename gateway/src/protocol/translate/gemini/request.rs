//! An OpenAI chat completion request in Gemini's `generateContent` protocol ([`openai_object_to_gemini`]):
//! `messages` become `contents` and `systemInstruction`, tools become `functionDeclarations`, the sampling
//! fields become `generationConfig`. The model and whether to stream are not part of Gemini's body (they are in
//! the URL the caller builds), so they are returned beside it in [`GeminiRequest`]. As for Anthropic, what has no
//! counterpart but can be left out is dropped and named ([`GeminiRequest::dropped`]); what cannot be honoured
//! (`n` > 1, audio input, the deprecated function calling) or is malformed is refused with a [`TranslateError`]
//! naming the parameter. A `null` field is treated as absent.

use std::collections::HashMap;

use serde_json::{Map, Value, json};

use super::super::TranslateError;
use super::super::request::{
    Dropped, array, boolean, number, one_choice, positive_integer, stop_sequences, string,
};

/// A request body in Gemini's protocol, and what the caller needs beside it to send it.
#[derive(Debug, Clone, PartialEq)]
pub struct GeminiRequest {
    /// The `generateContent` / `streamGenerateContent` request body (it names no model).
    pub body: Value,
    /// The client's `model`, for the URL (`models/{model}:generateContent`); routing may replace it.
    pub model: String,
    /// The client asked for a streamed answer: send to `streamGenerateContent?alt=sse`.
    pub stream: bool,
    /// The translated stream must end with a usage chunk (`stream_options.include_usage`). Gemini streams always
    /// report usage, so nothing is sent upstream for it.
    pub include_usage: bool,
    /// The client's fields that were not carried, in the order met, each named once.
    pub dropped: Vec<String>,
}

impl GeminiRequest {
    /// The value of [`DROPPED_FIELDS_HEADER`](super::super::DROPPED_FIELDS_HEADER): the dropped fields
    /// comma-separated; `None` when nothing was dropped.
    pub fn dropped_header(&self) -> Option<String> {
        (!self.dropped.is_empty()).then(|| self.dropped.join(","))
    }
}

/// JSON Schema keywords Gemini's `Schema` (tool `parameters`, `responseSchema`) refuses as unknown fields. They
/// are removed at every level of a schema (a property that merely has one of these names is kept). Besides, a
/// `type` list of one type and `"null"` becomes that type with `nullable: true` (its `enum` losing `null`).
pub const STRIPPED_SCHEMA_KEYWORDS: &[&str] = &[
    "$schema",
    "$id",
    "$comment",
    "additionalProperties",
    "unevaluatedProperties",
    "patternProperties",
    "strict",
    "examples",
];

/// `reasoning_effort` → `thinkingConfig.thinkingBudget`, in tokens.
fn thinking_budget(effort: &str) -> Option<u64> {
    match effort {
        // Turns thinking off where the model allows it (Gemini's Pro models refuse a budget of 0).
        "none" => Some(0),
        // 1024 is within every thinking model's accepted range.
        "minimal" | "low" => Some(1024),
        "medium" => Some(8192),
        "high" => Some(24576),
        _ => None,
    }
}

/// An OpenAI chat completion request (parsed into an object) → a Gemini `generateContent` request.
pub fn openai_object_to_gemini(body: &Map<String, Value>) -> Result<GeminiRequest, TranslateError> {
    let mut out = Map::new();
    let mut config = Map::new();
    let mut dropped = Dropped::default();
    let mut model = None;
    let mut stream = false;
    let mut include_usage = false;
    let mut max_tokens = None;
    let mut max_completion_tokens = None;
    let mut messages = None;

    for (key, value) in body {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model" => model = Some(string(value, "model")?.to_owned()),
            "messages" => messages = Some(array(value, "messages")?),
            "stream" => stream = boolean(value, "stream")?,
            "stream_options" => {
                include_usage = match value.get("include_usage") {
                    None | Some(Value::Null) => false,
                    Some(flag) => boolean(flag, "stream_options.include_usage")?,
                }
            }
            "max_tokens" => max_tokens = Some(positive_integer(value, "max_tokens")?),
            "max_completion_tokens" => {
                max_completion_tokens = Some(positive_integer(value, "max_completion_tokens")?)
            }
            "temperature" => {
                let t = number(value, "temperature")?;
                if !(0.0..=2.0).contains(&t) {
                    return Err(TranslateError::invalid(
                        "temperature",
                        "expected a number from 0 to 2",
                    ));
                }
                config.insert("temperature".to_owned(), Value::from(t));
            }
            "top_p" => {
                config.insert("topP".to_owned(), Value::from(number(value, "top_p")?));
            }
            "presence_penalty" | "frequency_penalty" => {
                let p = number(value, key)?;
                if !(-2.0..=2.0).contains(&p) {
                    return Err(TranslateError::invalid(key, "expected a number from -2 to 2"));
                }
                let field = if key == "presence_penalty" {
                    "presencePenalty"
                } else {
                    "frequencyPenalty"
                };
                config.insert(field.to_owned(), Value::from(p));
            }
            "seed" => {
                let seed = value
                    .as_i64()
                    .ok_or_else(|| TranslateError::invalid("seed", "expected an integer"))?;
                config.insert("seed".to_owned(), Value::from(seed));
            }
            "stop" => {
                let stops = stop_sequences(value)?;
                if !stops.is_empty() {
                    config.insert("stopSequences".to_owned(), Value::Array(stops));
                }
            }
            "n" => one_choice(
                value,
                "Tollgate sends Gemini one candidate per request; send one request per choice",
            )?,
            "response_format" => response_format(value, &mut config)?,
            "reasoning_effort" => {
                let budget = thinking_budget(string(value, "reasoning_effort")?).ok_or_else(|| {
                    TranslateError::invalid(
                        "reasoning_effort",
                        "expected \"none\", \"minimal\", \"low\", \"medium\" or \"high\"",
                    )
                })?;
                config.insert("thinkingConfig".to_owned(), json!({"thinkingBudget": budget}));
            }
            "tools" => {
                let declarations = array(value, "tools")?
                    .iter()
                    .enumerate()
                    .map(|(i, tool)| function_declaration(tool, i, &mut dropped))
                    .collect::<Result<Vec<_>, _>>()?;
                if !declarations.is_empty() {
                    out.insert(
                        "tools".to_owned(),
                        json!([{"functionDeclarations": declarations}]),
                    );
                }
            }
            "tool_choice" => {
                out.insert("toolConfig".to_owned(), tool_config(value)?);
            }
            // Gemini may call several functions in one answer and has no switch to forbid it.
            "parallel_tool_calls" => {
                if !boolean(value, "parallel_tool_calls")? {
                    dropped.add(key);
                }
            }
            "functions" | "function_call" => {
                return Err(TranslateError::unsupported(
                    key,
                    "the deprecated function calling is not translated; use `tools` and `tool_choice`",
                ));
            }
            // Values that ask for nothing are not worth a mention.
            _ if value == &Value::Bool(false) => {}
            // `logprobs`, `top_logprobs`, `logit_bias`, `user`, `metadata`, `store`, `service_tier`,
            // `modalities`, `audio`, `prediction`, `web_search_options`, … and any unknown field.
            _ => dropped.add(key),
        }
    }

    let model = model.ok_or_else(|| TranslateError::invalid("model", "required"))?;
    let messages = messages.ok_or_else(|| TranslateError::invalid("messages", "required"))?;
    let (system, contents) = gemini_contents(messages)?;
    if contents.is_empty() {
        return Err(TranslateError::invalid(
            "messages",
            "Gemini needs at least one user or assistant message with content",
        ));
    }
    out.insert("contents".to_owned(), Value::Array(contents));
    if !system.is_empty() {
        out.insert(
            "systemInstruction".to_owned(),
            json!({"parts": [{"text": system.join("\n\n")}]}),
        );
    }
    if let Some(limit) = max_completion_tokens.or(max_tokens) {
        config.insert("maxOutputTokens".to_owned(), Value::from(limit));
    }
    if !config.is_empty() {
        out.insert("generationConfig".to_owned(), Value::Object(config));
    }
    Ok(GeminiRequest {
        body: Value::Object(out),
        model,
        stream,
        include_usage: stream && include_usage,
        dropped: dropped.0,
    })
}

/// `response_format`: `text` asks for nothing; `json_object` → `responseMimeType: application/json`;
/// `json_schema` → that and `responseSchema` (the schema with [`STRIPPED_SCHEMA_KEYWORDS`] removed). Gemini
/// always holds its output to a given schema, so `strict` needs no carrying.
fn response_format(value: &Value, config: &mut Map<String, Value>) -> Result<(), TranslateError> {
    match value.get("type").and_then(Value::as_str) {
        Some("text") => {}
        Some("json_object") => {
            config.insert("responseMimeType".to_owned(), Value::from("application/json"));
        }
        Some("json_schema") => {
            let spec = value
                .get("json_schema")
                .filter(|s| s.is_object())
                .ok_or_else(|| {
                    TranslateError::invalid("response_format.json_schema", "expected an object")
                })?;
            config.insert("responseMimeType".to_owned(), Value::from("application/json"));
            match spec.get("schema") {
                None | Some(Value::Null) => {}
                Some(schema) if schema.is_object() => {
                    config.insert("responseSchema".to_owned(), gemini_schema(schema));
                }
                Some(_) => {
                    return Err(TranslateError::invalid(
                        "response_format.json_schema.schema",
                        "expected a JSON Schema object",
                    ));
                }
            }
        }
        Some(other) => {
            return Err(TranslateError::unsupported(
                "response_format.type",
                format!("`{other}` has no Gemini counterpart"),
            ));
        }
        None => return Err(TranslateError::invalid("response_format.type", "required")),
    }
    Ok(())
}

/// A JSON Schema in the subset Gemini's `Schema` reads: [`STRIPPED_SCHEMA_KEYWORDS`] removed at every schema
/// position (the schemas under `properties`, `items`, `anyOf`…, not the property names), and a nullable type
/// list (`["string", "null"]`) as `type` + `nullable` (and without the `null` of its `enum`).
fn gemini_schema(schema: &Value) -> Value {
    let map = match schema {
        Value::Object(map) => map,
        Value::Array(list) => return Value::Array(list.iter().map(gemini_schema).collect()),
        other => return other.clone(),
    };
    let mut out = Map::new();
    for (key, value) in map {
        if STRIPPED_SCHEMA_KEYWORDS.contains(&key.as_str()) {
            continue;
        }
        let value = match (key.as_str(), value) {
            ("properties" | "$defs" | "definitions", Value::Object(schemas)) => Value::Object(
                schemas
                    .iter()
                    .map(|(name, s)| (name.clone(), gemini_schema(s)))
                    .collect(),
            ),
            ("items" | "not" | "contains" | "anyOf" | "oneOf" | "allOf" | "prefixItems", v) => {
                gemini_schema(v)
            }
            (_, v) => v.clone(),
        };
        out.insert(key.clone(), value);
    }
    if let Some(Value::Array(types)) = out.get("type") {
        let named: Vec<&Value> = types.iter().filter(|t| t.as_str() != Some("null")).collect();
        if let [only] = named.as_slice()
            && named.len() < types.len()
        {
            let only = (*only).clone();
            out.insert("type".to_owned(), only);
            out.entry("nullable").or_insert(Value::Bool(true));
            // Gemini's enums are strings: the `null` member is what `nullable` now says.
            if let Some(Value::Array(members)) = out.get_mut("enum") {
                members.retain(|m| !m.is_null());
            }
        }
    }
    Value::Object(out)
}

/// `{"type":"function","function":{name, description, parameters}}` → a `functionDeclaration`. Parameters that
/// declare no property are left out (Gemini refuses an object schema without properties).
fn function_declaration(tool: &Value, i: usize, dropped: &mut Dropped) -> Result<Value, TranslateError> {
    let param = format!("tools[{i}]");
    match tool.get("type").and_then(Value::as_str) {
        Some("function") => {}
        Some(other) => {
            return Err(TranslateError::unsupported(
                format!("{param}.type"),
                format!("only function tools translate, not `{other}`"),
            ));
        }
        None => return Err(TranslateError::invalid(format!("{param}.type"), "required")),
    }
    let function = tool
        .get("function")
        .filter(|f| f.is_object())
        .ok_or_else(|| TranslateError::invalid(format!("{param}.function"), "expected an object"))?;
    let name = function
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::invalid(format!("{param}.function.name"), "expected a string"))?;
    let mut out = Map::new();
    out.insert("name".to_owned(), Value::from(name));
    if let Some(description) = function.get("description").filter(|d| !d.is_null()) {
        let description = string(description, &format!("{param}.function.description"))?;
        out.insert("description".to_owned(), Value::from(description));
    }
    match function.get("parameters") {
        None | Some(Value::Null) => {}
        Some(schema) if schema.is_object() => {
            let empty_object = schema
                .get("properties")
                .and_then(Value::as_object)
                .is_none_or(Map::is_empty)
                && schema
                    .get("type")
                    .and_then(Value::as_str)
                    .is_none_or(|t| t == "object");
            if !empty_object {
                out.insert("parameters".to_owned(), gemini_schema(schema));
            }
        }
        Some(_) => {
            return Err(TranslateError::invalid(
                format!("{param}.function.parameters"),
                "expected a JSON Schema object",
            ));
        }
    }
    if function.get("strict").and_then(Value::as_bool) == Some(true) {
        dropped.add("tools.function.strict");
    }
    Ok(Value::Object(out))
}

/// `tool_choice` → `toolConfig.functionCallingConfig`.
fn tool_config(choice: &Value) -> Result<Value, TranslateError> {
    let invalid = || {
        TranslateError::invalid(
            "tool_choice",
            "expected \"auto\", \"none\", \"required\" or {\"type\":\"function\",\"function\":{\"name\":…}}",
        )
    };
    let config = match choice {
        Value::String(s) => match s.as_str() {
            "auto" => json!({"mode": "AUTO"}),
            "none" => json!({"mode": "NONE"}),
            "required" => json!({"mode": "ANY"}),
            _ => return Err(invalid()),
        },
        Value::Object(_) => {
            let name = choice
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(invalid)?;
            json!({"mode": "ANY", "allowedFunctionNames": [name]})
        }
        _ => return Err(invalid()),
    };
    Ok(json!({"functionCallingConfig": config}))
}

/// The media type of an image URL, from its path's extension; `image/jpeg` when it says nothing.
fn image_media_type(url: &str) -> &'static str {
    let path = url.split(['?', '#']).next().unwrap_or_default();
    let extension = path
        .rsplit('/')
        .next()
        .and_then(|name| name.rsplit_once('.'))
        .map(|(_, extension)| extension.to_ascii_lowercase());
    match extension.as_deref() {
        Some("png") => "image/png",
        Some("webp") => "image/webp",
        Some("gif") => "image/gif",
        Some("heic") => "image/heic",
        Some("heif") => "image/heif",
        _ => "image/jpeg",
    }
}

/// An `image_url` part's URL → a Gemini part: `data:<type>;base64,<data>` → `inlineData`, http(s) →
/// `fileData` with the media type guessed from the extension.
fn image_part(url: &str, param: &str) -> Result<Value, TranslateError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (header, data) = rest
            .split_once(',')
            .ok_or_else(|| TranslateError::invalid(param, "a data: URL without data"))?;
        let media_type = header
            .strip_suffix(";base64")
            .ok_or_else(|| TranslateError::invalid(param, "only base64 data: URLs translate"))?;
        return Ok(json!({"inlineData": {"mimeType": media_type, "data": data}}));
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Ok(json!({"fileData": {"mimeType": image_media_type(url), "fileUri": url}}));
    }
    Err(TranslateError::invalid(param, "expected a data: or http(s) URL"))
}

/// The content of an OpenAI message (a string or parts) → Gemini parts. Empty texts are left out (Gemini
/// refuses empty parts); images only where `images`.
fn gemini_parts(content: &Value, param: &str, images: bool) -> Result<Vec<Value>, TranslateError> {
    let text = |t: &str| json!({"text": t});
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![text(s)]),
        Value::Array(parts) => {
            let mut out = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let param = format!("{param}[{j}]");
                match part.get("type").and_then(Value::as_str) {
                    Some(kind @ ("text" | "refusal")) => {
                        let t = part.get(kind).and_then(Value::as_str).ok_or_else(|| {
                            TranslateError::invalid(format!("{param}.{kind}"), "expected a string")
                        })?;
                        if !t.is_empty() {
                            out.push(text(t));
                        }
                    }
                    Some("image_url") if images => {
                        let image = part.get("image_url");
                        let url = image
                            .and_then(|i| i.get("url").or(Some(i)))
                            .and_then(Value::as_str)
                            .ok_or_else(|| {
                                TranslateError::invalid(format!("{param}.image_url.url"), "expected a string")
                            })?;
                        out.push(image_part(url, &format!("{param}.image_url.url"))?);
                    }
                    Some(other) => {
                        return Err(TranslateError::unsupported(
                            format!("{param}.type"),
                            format!("`{other}` content does not translate here"),
                        ));
                    }
                    None => return Err(TranslateError::invalid(format!("{param}.type"), "required")),
                }
            }
            Ok(out)
        }
        _ => Err(TranslateError::invalid(
            param,
            "expected a string or an array of parts",
        )),
    }
}

/// The texts of `parts` (from [`gemini_parts`] without images) concatenated.
fn joined_text(parts: &[Value]) -> String {
    parts
        .iter()
        .filter_map(|p| p.get("text").and_then(Value::as_str))
        .collect()
}

/// Appends `parts` as a `role` content, merged into the previous content when it has the same role.
fn push_content(contents: &mut Vec<Value>, role: &str, parts: Vec<Value>) {
    if parts.is_empty() {
        return;
    }
    if let Some(last) = contents.last_mut()
        && last.get("role").and_then(Value::as_str) == Some(role)
        && let Some(existing) = last.get_mut("parts").and_then(Value::as_array_mut)
    {
        existing.extend(parts);
        return;
    }
    contents.push(json!({"role": role, "parts": parts}));
}

/// OpenAI's `messages` → the system texts and Gemini's `contents`.
fn gemini_contents(messages: &[Value]) -> Result<(Vec<String>, Vec<Value>), TranslateError> {
    let mut system = Vec::new();
    let mut contents: Vec<Value> = Vec::with_capacity(messages.len());
    // Tool call id → function name, for the results (Gemini names the function, OpenAI the call). A later call
    // with the same id replaces an earlier one: a result answers the latest call before it.
    let mut calls: HashMap<String, String> = HashMap::new();
    for (i, message) in messages.iter().enumerate() {
        let param = format!("messages[{i}]");
        let role = message
            .get("role")
            .and_then(Value::as_str)
            .ok_or_else(|| TranslateError::invalid(format!("{param}.role"), "expected a string"))?;
        let content = message.get("content").unwrap_or(&Value::Null);
        let content_param = format!("{param}.content");
        match role {
            "system" | "developer" => {
                let text = joined_text(&gemini_parts(content, &content_param, false)?);
                if !text.is_empty() {
                    system.push(text);
                }
            }
            "user" => push_content(
                &mut contents,
                "user",
                gemini_parts(content, &content_param, true)?,
            ),
            "assistant" => {
                let mut parts = gemini_parts(content, &content_param, false)?;
                if let Some(tool_calls) = message.get("tool_calls").filter(|c| !c.is_null()) {
                    let tool_calls = array(tool_calls, &format!("{param}.tool_calls"))?;
                    for (j, call) in tool_calls.iter().enumerate() {
                        parts.push(function_call_part(
                            call,
                            &format!("{param}.tool_calls[{j}]"),
                            &mut calls,
                        )?);
                    }
                }
                push_content(&mut contents, "model", parts);
            }
            "tool" => {
                let id_param = format!("{param}.tool_call_id");
                let id = message
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| TranslateError::invalid(&id_param, "expected a string"))?;
                let name = match calls.get(id) {
                    Some(name) => name.clone(),
                    None => message
                        .get("name")
                        .and_then(Value::as_str)
                        .map(str::to_owned)
                        .ok_or_else(|| {
                            TranslateError::invalid(
                                id_param,
                                "no earlier assistant tool call has this id (Gemini needs the function name)",
                            )
                        })?,
                };
                let text = joined_text(&gemini_parts(content, &content_param, false)?);
                let result = match serde_json::from_str::<Value>(text.trim()) {
                    Ok(object @ Value::Object(_)) => object,
                    _ => Value::String(text),
                };
                push_content(
                    &mut contents,
                    "user",
                    vec![json!({"functionResponse": {"name": name, "response": {"content": result}}})],
                );
            }
            "function" => {
                return Err(TranslateError::unsupported(
                    format!("{param}.role"),
                    "the deprecated `function` role is not translated; use `tool`",
                ));
            }
            other => {
                return Err(TranslateError::invalid(
                    format!("{param}.role"),
                    format!("unknown role `{other}`"),
                ));
            }
        }
    }
    Ok((system, contents))
}

/// An assistant's `tool_calls[j]` → a `functionCall` part, remembering its id; the arguments must be a JSON
/// object (or empty).
fn function_call_part(
    call: &Value,
    param: &str,
    calls: &mut HashMap<String, String>,
) -> Result<Value, TranslateError> {
    let id = call
        .get("id")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::invalid(format!("{param}.id"), "expected a string"))?;
    let function = call.get("function");
    let name = function
        .and_then(|f| f.get("name"))
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::invalid(format!("{param}.function.name"), "expected a string"))?;
    let arguments_param = format!("{param}.function.arguments");
    let args = match function.and_then(|f| f.get("arguments")) {
        None | Some(Value::Null) => json!({}),
        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(args @ Value::Object(_)) => args,
            Ok(_) => return Err(TranslateError::invalid(arguments_param, "expected a JSON object")),
            Err(e) => {
                return Err(TranslateError::invalid(
                    arguments_param,
                    format!("not valid JSON ({e})"),
                ));
            }
        },
        Some(_) => return Err(TranslateError::invalid(arguments_param, "expected a string")),
    };
    calls.insert(id.to_owned(), name.to_owned());
    Ok(json!({"functionCall": {"name": name, "args": args}}))
}
