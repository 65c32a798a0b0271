//! A client's request body in the upstream's protocol: OpenAI Chat Completions → Anthropic Messages
//! ([`openai_to_anthropic_request`]) and back ([`anthropic_to_openai_request`]). What maps is translated; what
//! has no counterpart but can be left out without changing what the client asked for is dropped and named in
//! [`TranslatedRequest::dropped`] (for the [`DROPPED_FIELDS_HEADER`] response header); what cannot be honoured
//! (`n` > 1, audio input, server tools…) or is malformed is refused with a [`TranslateError`] naming the
//! parameter. A `null` field is treated as absent.

use serde_json::{Map, Value, json};

use super::TranslateError;

/// The response header naming, comma-separated, the request fields the translation dropped.
pub const DROPPED_FIELDS_HEADER: &str = "x-tollgate-dropped-fields";

/// A request body in the upstream's protocol.
#[derive(Debug, Clone, PartialEq)]
pub struct TranslatedRequest {
    /// The upstream request body.
    pub body: Value,
    /// The client's fields that were not carried, in the order met, each named once.
    pub dropped: Vec<String>,
    /// The client asked for a streamed answer.
    pub stream: bool,
    /// The translated stream must end with the usage: an OpenAI client's `stream_options.include_usage`;
    /// always for an Anthropic client (its stream reports usage in `message_delta`).
    pub include_usage: bool,
}

impl TranslatedRequest {
    /// The value of [`DROPPED_FIELDS_HEADER`]: the dropped fields comma-separated; `None` when nothing was
    /// dropped.
    pub fn dropped_header(&self) -> Option<String> {
        (!self.dropped.is_empty()).then(|| self.dropped.join(","))
    }
}

/// The names of dropped fields, each once.
#[derive(Debug, Default)]
pub(super) struct Dropped(pub(super) Vec<String>);

impl Dropped {
    pub(super) fn add(&mut self, name: &str) {
        if !self.0.iter().any(|n| n == name) {
            self.0.push(name.to_owned());
        }
    }
}

fn object(body: &Value) -> Result<&Map<String, Value>, TranslateError> {
    body.as_object().ok_or(TranslateError::NotAnObject)
}

pub(super) fn string<'a>(value: &'a Value, param: &str) -> Result<&'a str, TranslateError> {
    value
        .as_str()
        .ok_or_else(|| TranslateError::invalid(param, "expected a string"))
}

pub(super) fn array<'a>(value: &'a Value, param: &str) -> Result<&'a Vec<Value>, TranslateError> {
    value
        .as_array()
        .ok_or_else(|| TranslateError::invalid(param, "expected an array"))
}

pub(super) fn number(value: &Value, param: &str) -> Result<f64, TranslateError> {
    value
        .as_f64()
        .ok_or_else(|| TranslateError::invalid(param, "expected a number"))
}

pub(super) fn positive_integer(value: &Value, param: &str) -> Result<u64, TranslateError> {
    match value.as_u64() {
        Some(n) if n > 0 => Ok(n),
        _ => Err(TranslateError::invalid(param, "expected a positive integer")),
    }
}

/// An OpenAI `stop`: a string or an array of strings, as the list of stop sequences (empty: none).
pub(super) fn stop_sequences(value: &Value) -> Result<Vec<Value>, TranslateError> {
    match value {
        Value::String(s) => Ok(vec![Value::from(s.as_str())]),
        Value::Array(list) => {
            for stop in list {
                string(stop, "stop")?;
            }
            Ok(list.clone())
        }
        _ => Err(TranslateError::invalid(
            "stop",
            "expected a string or an array of strings",
        )),
    }
}

/// An OpenAI `n` where the upstream answers with one choice: 1 passes, more is refused with `why`.
pub(super) fn one_choice(value: &Value, why: &str) -> Result<(), TranslateError> {
    match value.as_u64() {
        Some(1) => Ok(()),
        Some(0) | None => Err(TranslateError::invalid("n", "expected a positive integer")),
        Some(_) => Err(TranslateError::unsupported("n", why)),
    }
}

pub(super) fn boolean(value: &Value, param: &str) -> Result<bool, TranslateError> {
    value
        .as_bool()
        .ok_or_else(|| TranslateError::invalid(param, "expected a boolean"))
}

// -----------------------------------------------------------------------------------------------------------
// OpenAI Chat Completions → Anthropic Messages
// -----------------------------------------------------------------------------------------------------------

/// An OpenAI chat completion request → an Anthropic Messages request. `default_max_tokens` is used when the
/// client gave neither `max_completion_tokens` nor `max_tokens` (Anthropic requires a limit).
pub fn openai_to_anthropic_request(
    body: &Value,
    default_max_tokens: u64,
) -> Result<TranslatedRequest, TranslateError> {
    openai_object_to_anthropic(object(body)?, default_max_tokens)
}

/// [`openai_to_anthropic_request`] of a body already parsed into an object (the request path's, read in place).
pub fn openai_object_to_anthropic(
    body: &Map<String, Value>,
    default_max_tokens: u64,
) -> Result<TranslatedRequest, TranslateError> {
    let mut out = Map::new();
    let mut dropped = Dropped::default();
    let mut stream = false;
    let mut include_usage = false;
    let mut max_tokens = None;
    let mut max_completion_tokens = None;
    let mut tool_choice = None;
    let mut parallel_tool_calls = true;
    let mut messages = None;

    for (key, value) in body {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model" => {
                out.insert("model".to_owned(), Value::from(string(value, "model")?));
            }
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
                out.insert("temperature".to_owned(), Value::from(t.min(1.0)));
            }
            "top_p" => {
                out.insert("top_p".to_owned(), Value::from(number(value, "top_p")?));
            }
            "stop" => {
                let stops = stop_sequences(value)?;
                if !stops.is_empty() {
                    out.insert("stop_sequences".to_owned(), Value::Array(stops));
                }
            }
            "n" => one_choice(
                value,
                "Anthropic answers with one choice; send one request per choice",
            )?,
            "user" => {
                out.insert("metadata".to_owned(), json!({"user_id": string(value, "user")?}));
            }
            "tools" => {
                let tools = array(value, "tools")?
                    .iter()
                    .enumerate()
                    .map(|(i, tool)| anthropic_tool(tool, i, &mut dropped))
                    .collect::<Result<Vec<_>, _>>()?;
                if !tools.is_empty() {
                    out.insert("tools".to_owned(), Value::Array(tools));
                }
            }
            "tool_choice" => tool_choice = Some(anthropic_tool_choice(value)?),
            "parallel_tool_calls" => parallel_tool_calls = boolean(value, "parallel_tool_calls")?,
            "functions" | "function_call" => {
                return Err(TranslateError::unsupported(
                    key,
                    "the deprecated function calling is not translated; use `tools` and `tool_choice`",
                ));
            }
            // Values that ask for nothing are not worth a mention.
            _ if value == &Value::Bool(false) => {}
            // `response_format`, `logprobs`, `top_logprobs`, `presence_penalty`, `frequency_penalty`,
            // `logit_bias`, `seed`, `service_tier`, `store`, `metadata`, `reasoning_effort`, … and any unknown
            // field: nothing in Anthropic's request carries them.
            _ => dropped.add(key),
        }
    }

    let messages = messages.ok_or_else(|| TranslateError::invalid("messages", "required"))?;
    let (system, turns) = anthropic_messages(messages)?;
    if !system.is_empty() {
        let system = match system.as_slice() {
            [Value::String(only)] => Value::from(only.as_str()),
            _ => Value::Array(
                system
                    .into_iter()
                    .map(|text| json!({"type": "text", "text": text}))
                    .collect(),
            ),
        };
        out.insert("system".to_owned(), system);
    }
    out.insert("messages".to_owned(), Value::Array(turns));
    out.insert(
        "max_tokens".to_owned(),
        Value::from(max_completion_tokens.or(max_tokens).unwrap_or(default_max_tokens)),
    );
    if !parallel_tool_calls {
        let choice = tool_choice.get_or_insert_with(|| json!({"type": "auto"}));
        if let Some(choice) = choice.as_object_mut()
            && choice.get("type").and_then(Value::as_str) != Some("none")
        {
            choice.insert("disable_parallel_tool_use".to_owned(), Value::Bool(true));
        }
    }
    if let Some(choice) = tool_choice {
        out.insert("tool_choice".to_owned(), choice);
    }
    if stream {
        out.insert("stream".to_owned(), Value::Bool(true));
    }
    Ok(TranslatedRequest {
        body: Value::Object(out),
        dropped: dropped.0,
        stream,
        include_usage: stream && include_usage,
    })
}

/// `{"type":"function","function":{name, description, parameters}}` → `{name, description, input_schema}`.
fn anthropic_tool(tool: &Value, i: usize, dropped: &mut Dropped) -> Result<Value, TranslateError> {
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
    let schema = match function.get("parameters") {
        None | Some(Value::Null) => json!({"type": "object", "properties": {}}),
        Some(schema) if schema.is_object() => schema.clone(),
        Some(_) => {
            return Err(TranslateError::invalid(
                format!("{param}.function.parameters"),
                "expected a JSON Schema object",
            ));
        }
    };
    out.insert("input_schema".to_owned(), schema);
    if function.get("strict").and_then(Value::as_bool) == Some(true) {
        dropped.add("tools.function.strict");
    }
    Ok(Value::Object(out))
}

fn anthropic_tool_choice(choice: &Value) -> Result<Value, TranslateError> {
    let invalid = || {
        TranslateError::invalid(
            "tool_choice",
            "expected \"auto\", \"none\", \"required\" or {\"type\":\"function\",\"function\":{\"name\":…}}",
        )
    };
    match choice {
        Value::String(s) => match s.as_str() {
            "auto" => Ok(json!({"type": "auto"})),
            "none" => Ok(json!({"type": "none"})),
            "required" => Ok(json!({"type": "any"})),
            _ => Err(invalid()),
        },
        Value::Object(_) => {
            let name = choice
                .get("function")
                .and_then(|f| f.get("name"))
                .and_then(Value::as_str)
                .ok_or_else(invalid)?;
            Ok(json!({"type": "tool", "name": name}))
        }
        _ => Err(invalid()),
    }
}

/// An `image_url` part's URL → Anthropic's image source: `data:<media type>;base64,<data>` → base64, http(s)
/// → url.
fn image_source(url: &str, param: &str) -> Result<Value, TranslateError> {
    if let Some(rest) = url.strip_prefix("data:") {
        let (header, data) = rest
            .split_once(',')
            .ok_or_else(|| TranslateError::invalid(param, "a data: URL without data"))?;
        let media_type = header
            .strip_suffix(";base64")
            .ok_or_else(|| TranslateError::invalid(param, "only base64 data: URLs translate"))?;
        return Ok(json!({"type": "base64", "media_type": media_type, "data": data}));
    }
    let lower = url.get(..8).unwrap_or(url).to_ascii_lowercase();
    if lower.starts_with("https://") || lower.starts_with("http://") {
        return Ok(json!({"type": "url", "url": url}));
    }
    Err(TranslateError::invalid(param, "expected a data: or http(s) URL"))
}

/// The content of an OpenAI message (a string or parts) → Anthropic blocks. Empty texts are left out
/// (Anthropic refuses empty text blocks).
fn anthropic_blocks(content: &Value, param: &str, images: bool) -> Result<Vec<Value>, TranslateError> {
    let text = |t: &str| json!({"type": "text", "text": t});
    match content {
        Value::Null => Ok(Vec::new()),
        Value::String(s) if s.is_empty() => Ok(Vec::new()),
        Value::String(s) => Ok(vec![text(s)]),
        Value::Array(parts) => {
            let mut blocks = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let param = format!("{param}[{j}]");
                match part.get("type").and_then(Value::as_str) {
                    Some("text") => {
                        let t = part.get("text").and_then(Value::as_str).ok_or_else(|| {
                            TranslateError::invalid(format!("{param}.text"), "expected a string")
                        })?;
                        if !t.is_empty() {
                            blocks.push(text(t));
                        }
                    }
                    Some("refusal") => {
                        let t = part.get("refusal").and_then(Value::as_str).ok_or_else(|| {
                            TranslateError::invalid(format!("{param}.refusal"), "expected a string")
                        })?;
                        if !t.is_empty() {
                            blocks.push(text(t));
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
                        let source = image_source(url, &format!("{param}.image_url.url"))?;
                        blocks.push(json!({"type": "image", "source": source}));
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
            Ok(blocks)
        }
        _ => Err(TranslateError::invalid(
            param,
            "expected a string or an array of parts",
        )),
    }
}

/// Appends `blocks` as a `role` turn, merged into the previous turn when it has the same role (Anthropic wants
/// the roles to alternate).
fn push_turn(turns: &mut Vec<Value>, role: &str, blocks: Vec<Value>) {
    if blocks.is_empty() {
        return;
    }
    if let Some(last) = turns.last_mut()
        && last.get("role").and_then(Value::as_str) == Some(role)
        && let Some(content) = last.get_mut("content").and_then(Value::as_array_mut)
    {
        content.extend(blocks);
        return;
    }
    turns.push(json!({"role": role, "content": blocks}));
}

/// OpenAI's `messages` → Anthropic's system texts and turns.
fn anthropic_messages(messages: &[Value]) -> Result<(Vec<Value>, Vec<Value>), TranslateError> {
    let mut system = Vec::new();
    let mut turns: Vec<Value> = Vec::with_capacity(messages.len());
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
                for block in anthropic_blocks(content, &content_param, false)? {
                    if let Some(text) = block.get("text") {
                        system.push(text.clone());
                    }
                }
            }
            "user" => push_turn(
                &mut turns,
                "user",
                anthropic_blocks(content, &content_param, true)?,
            ),
            "assistant" => {
                let mut blocks = anthropic_blocks(content, &content_param, false)?;
                if let Some(calls) = message.get("tool_calls").filter(|c| !c.is_null()) {
                    let calls = array(calls, &format!("{param}.tool_calls"))?;
                    for (j, call) in calls.iter().enumerate() {
                        blocks.push(tool_use_block(call, &format!("{param}.tool_calls[{j}]"))?);
                    }
                }
                push_turn(&mut turns, "assistant", blocks);
            }
            "tool" => {
                let id = message
                    .get("tool_call_id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| {
                        TranslateError::invalid(format!("{param}.tool_call_id"), "expected a string")
                    })?;
                let result = match content {
                    Value::String(s) => Value::from(s.as_str()),
                    _ => Value::Array(anthropic_blocks(content, &content_param, false)?),
                };
                push_turn(
                    &mut turns,
                    "user",
                    vec![json!({"type": "tool_result", "tool_use_id": id, "content": result})],
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
    Ok((system, turns))
}

/// An assistant's `tool_calls[j]` → a `tool_use` block; the arguments must be a JSON object (or empty).
fn tool_use_block(call: &Value, param: &str) -> Result<Value, TranslateError> {
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
    let input = match function.and_then(|f| f.get("arguments")) {
        None | Some(Value::Null) => json!({}),
        Some(Value::String(s)) if s.trim().is_empty() => json!({}),
        Some(Value::String(s)) => match serde_json::from_str::<Value>(s) {
            Ok(input @ Value::Object(_)) => input,
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
    Ok(json!({"type": "tool_use", "id": id, "name": name, "input": input}))
}

// -----------------------------------------------------------------------------------------------------------
// Anthropic Messages → OpenAI Chat Completions
// -----------------------------------------------------------------------------------------------------------

/// An Anthropic Messages request → an OpenAI chat completion request. A streamed request also asks for the
/// usage (`stream_options.include_usage`), which the translated stream reports in `message_delta`.
pub fn anthropic_to_openai_request(body: &Value) -> Result<TranslatedRequest, TranslateError> {
    anthropic_object_to_openai(object(body)?)
}

/// [`anthropic_to_openai_request`] of a body already parsed into an object (the request path's, read in place).
pub fn anthropic_object_to_openai(body: &Map<String, Value>) -> Result<TranslatedRequest, TranslateError> {
    let mut out = Map::new();
    let mut dropped = Dropped::default();
    let mut stream = false;
    let mut messages: Vec<Value> = Vec::new();
    let mut turns = None;
    let mut parallel = None;

    for (key, value) in body {
        if value.is_null() {
            continue;
        }
        match key.as_str() {
            "model" => {
                out.insert("model".to_owned(), Value::from(string(value, "model")?));
            }
            "messages" => turns = Some(array(value, "messages")?),
            "system" => {
                if let Some(system) = openai_system(value, &mut dropped)? {
                    messages.push(system);
                }
            }
            "max_tokens" => {
                out.insert(
                    "max_tokens".to_owned(),
                    Value::from(positive_integer(value, "max_tokens")?),
                );
            }
            "stream" => stream = boolean(value, "stream")?,
            "temperature" => {
                out.insert(
                    "temperature".to_owned(),
                    Value::from(number(value, "temperature")?),
                );
            }
            "top_p" => {
                out.insert("top_p".to_owned(), Value::from(number(value, "top_p")?));
            }
            "stop_sequences" => {
                let stops = array(value, "stop_sequences")?;
                for stop in stops {
                    string(stop, "stop_sequences")?;
                }
                if !stops.is_empty() {
                    out.insert("stop".to_owned(), Value::Array(stops.clone()));
                }
            }
            "metadata" => {
                let metadata = value
                    .as_object()
                    .ok_or_else(|| TranslateError::invalid("metadata", "expected an object"))?;
                for (field, v) in metadata {
                    match field.as_str() {
                        "user_id" if !v.is_null() => {
                            out.insert("user".to_owned(), Value::from(string(v, "metadata.user_id")?));
                        }
                        _ if v.is_null() => {}
                        _ => dropped.add(&format!("metadata.{field}")),
                    }
                }
            }
            "tools" => {
                let tools = array(value, "tools")?
                    .iter()
                    .enumerate()
                    .map(|(i, tool)| openai_tool(tool, i, &mut dropped))
                    .collect::<Result<Vec<_>, _>>()?;
                if !tools.is_empty() {
                    out.insert("tools".to_owned(), Value::Array(tools));
                }
            }
            "tool_choice" => {
                let (choice, disable_parallel) = openai_tool_choice(value)?;
                out.insert("tool_choice".to_owned(), choice);
                if disable_parallel {
                    parallel = Some(false);
                }
            }
            _ => dropped.add(key),
        }
    }

    let turns = turns.ok_or_else(|| TranslateError::invalid("messages", "required"))?;
    for (i, turn) in turns.iter().enumerate() {
        openai_turn(turn, i, &mut messages, &mut dropped)?;
    }
    out.insert("messages".to_owned(), Value::Array(messages));
    if let Some(parallel) = parallel {
        out.insert("parallel_tool_calls".to_owned(), Value::Bool(parallel));
    }
    if stream {
        out.insert("stream".to_owned(), Value::Bool(true));
        out.insert("stream_options".to_owned(), json!({"include_usage": true}));
    }
    Ok(TranslatedRequest {
        body: Value::Object(out),
        dropped: dropped.0,
        stream,
        include_usage: stream,
    })
}

/// Text parts as OpenAI content: one part as a plain string, several as text parts.
fn openai_text_content(mut parts: Vec<Value>) -> Value {
    if parts.len() == 1
        && let Some(Value::String(text)) = parts.first_mut().and_then(|p| p.get_mut("text")).map(Value::take)
    {
        return Value::String(text);
    }
    Value::Array(parts)
}

fn note_cache_control(block: &Value, dropped: &mut Dropped) {
    if block.get("cache_control").is_some_and(|c| !c.is_null()) {
        dropped.add("cache_control");
    }
}

fn openai_system(system: &Value, dropped: &mut Dropped) -> Result<Option<Value>, TranslateError> {
    let content = match system {
        Value::String(s) if s.is_empty() => return Ok(None),
        Value::String(s) => Value::from(s.as_str()),
        Value::Array(blocks) => {
            let mut parts = Vec::with_capacity(blocks.len());
            for (i, block) in blocks.iter().enumerate() {
                let text = block
                    .get("text")
                    .and_then(Value::as_str)
                    .filter(|_| block.get("type").and_then(Value::as_str) == Some("text"))
                    .ok_or_else(|| {
                        TranslateError::invalid(format!("system[{i}]"), "expected a text block")
                    })?;
                note_cache_control(block, dropped);
                parts.push(json!({"type": "text", "text": text}));
            }
            if parts.is_empty() {
                return Ok(None);
            }
            openai_text_content(parts)
        }
        _ => {
            return Err(TranslateError::invalid(
                "system",
                "expected a string or text blocks",
            ));
        }
    };
    Ok(Some(json!({"role": "system", "content": content})))
}

/// `{name, description, input_schema}` → `{"type":"function","function":{name, description, parameters}}`.
/// Anthropic's server tools (a `type` other than `custom`) run at Anthropic and cannot be carried.
fn openai_tool(tool: &Value, i: usize, dropped: &mut Dropped) -> Result<Value, TranslateError> {
    let param = format!("tools[{i}]");
    if let Some(kind) = tool.get("type").and_then(Value::as_str)
        && kind != "custom"
    {
        return Err(TranslateError::unsupported(
            format!("{param}.type"),
            format!("the server tool `{kind}` runs only at Anthropic"),
        ));
    }
    let name = tool
        .get("name")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::invalid(format!("{param}.name"), "expected a string"))?;
    let mut function = Map::new();
    function.insert("name".to_owned(), Value::from(name));
    if let Some(description) = tool.get("description").filter(|d| !d.is_null()) {
        let description = string(description, &format!("{param}.description"))?;
        function.insert("description".to_owned(), Value::from(description));
    }
    match tool.get("input_schema") {
        Some(schema) if schema.is_object() => {
            function.insert("parameters".to_owned(), schema.clone());
        }
        _ => {
            return Err(TranslateError::invalid(
                format!("{param}.input_schema"),
                "expected a JSON Schema object",
            ));
        }
    }
    note_cache_control(tool, dropped);
    Ok(json!({"type": "function", "function": function}))
}

/// Anthropic's `tool_choice` → OpenAI's, and whether parallel tool use was disabled.
fn openai_tool_choice(choice: &Value) -> Result<(Value, bool), TranslateError> {
    let disable_parallel = choice
        .get("disable_parallel_tool_use")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    let choice = match choice.get("type").and_then(Value::as_str) {
        Some("auto") => Value::from("auto"),
        Some("any") => Value::from("required"),
        Some("none") => Value::from("none"),
        Some("tool") => {
            let name = choice
                .get("name")
                .and_then(Value::as_str)
                .ok_or_else(|| TranslateError::invalid("tool_choice.name", "expected a string"))?;
            json!({"type": "function", "function": {"name": name}})
        }
        _ => {
            return Err(TranslateError::invalid(
                "tool_choice.type",
                "expected \"auto\", \"any\", \"tool\" or \"none\"",
            ));
        }
    };
    Ok((choice, disable_parallel))
}

/// An image block's source → an OpenAI `image_url` part.
fn openai_image(block: &Value, param: &str) -> Result<Value, TranslateError> {
    let source = block.get("source");
    let field = |name: &str| source.and_then(|s| s.get(name)).and_then(Value::as_str);
    let url = match field("type") {
        Some("base64") => match (field("media_type"), field("data")) {
            (Some(media_type), Some(data)) => format!("data:{media_type};base64,{data}"),
            _ => {
                return Err(TranslateError::invalid(
                    format!("{param}.source"),
                    "expected media_type and data",
                ));
            }
        },
        Some("url") => field("url")
            .ok_or_else(|| TranslateError::invalid(format!("{param}.source.url"), "expected a string"))?
            .to_owned(),
        _ => {
            return Err(TranslateError::unsupported(
                format!("{param}.source.type"),
                "only base64 and url image sources translate",
            ));
        }
    };
    Ok(json!({"type": "image_url", "image_url": {"url": url}}))
}

/// One Anthropic turn → OpenAI messages: a user turn's `tool_result` blocks become `tool` messages (first, as
/// OpenAI wants them right after the assistant's tool calls), its other blocks one user message; an assistant
/// turn's `tool_use` blocks become `tool_calls`.
fn openai_turn(
    turn: &Value,
    i: usize,
    messages: &mut Vec<Value>,
    dropped: &mut Dropped,
) -> Result<(), TranslateError> {
    let param = format!("messages[{i}]");
    let role = turn
        .get("role")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::invalid(format!("{param}.role"), "expected a string"))?;
    if role != "user" && role != "assistant" {
        return Err(TranslateError::invalid(
            format!("{param}.role"),
            "expected \"user\" or \"assistant\"",
        ));
    }
    let blocks = match turn.get("content") {
        Some(Value::String(s)) => {
            messages.push(json!({"role": role, "content": s}));
            return Ok(());
        }
        Some(Value::Array(blocks)) => blocks,
        _ => {
            return Err(TranslateError::invalid(
                format!("{param}.content"),
                "expected a string or an array of blocks",
            ));
        }
    };
    let mut parts = Vec::new();
    let mut all_text = true;
    let mut tool_calls = Vec::new();
    for (j, block) in blocks.iter().enumerate() {
        let param = format!("{param}.content[{j}]");
        note_cache_control(block, dropped);
        match block.get("type").and_then(Value::as_str) {
            Some("text") => {
                let text = block
                    .get("text")
                    .and_then(Value::as_str)
                    .ok_or_else(|| TranslateError::invalid(format!("{param}.text"), "expected a string"))?;
                parts.push(json!({"type": "text", "text": text}));
            }
            Some("image") if role == "user" => {
                all_text = false;
                parts.push(openai_image(block, &param)?);
            }
            Some("tool_use") if role == "assistant" => {
                let id = block
                    .get("id")
                    .and_then(Value::as_str)
                    .ok_or_else(|| TranslateError::invalid(format!("{param}.id"), "expected a string"))?;
                let name = block
                    .get("name")
                    .and_then(Value::as_str)
                    .ok_or_else(|| TranslateError::invalid(format!("{param}.name"), "expected a string"))?;
                let input = block.get("input").cloned().unwrap_or_else(|| json!({}));
                tool_calls.push(json!({
                    "id": id,
                    "type": "function",
                    "function": {"name": name, "arguments": input.to_string()},
                }));
            }
            Some("tool_result") if role == "user" => {
                messages.push(openai_tool_message(block, &param, dropped)?);
            }
            Some("thinking" | "redacted_thinking") if role == "assistant" => dropped.add("thinking_blocks"),
            Some(other) => {
                return Err(TranslateError::unsupported(
                    format!("{param}.type"),
                    format!("`{other}` blocks in a {role} turn do not translate"),
                ));
            }
            None => return Err(TranslateError::invalid(format!("{param}.type"), "required")),
        }
    }
    if role == "assistant" {
        if parts.is_empty() && tool_calls.is_empty() {
            return Ok(());
        }
        let mut message = Map::new();
        message.insert("role".to_owned(), Value::from("assistant"));
        let content = if parts.is_empty() {
            Value::Null
        } else {
            openai_text_content(parts)
        };
        message.insert("content".to_owned(), content);
        if !tool_calls.is_empty() {
            message.insert("tool_calls".to_owned(), Value::Array(tool_calls));
        }
        messages.push(Value::Object(message));
    } else if !parts.is_empty() {
        let content = if all_text {
            openai_text_content(parts)
        } else {
            Value::Array(parts)
        };
        messages.push(json!({"role": "user", "content": content}));
    }
    Ok(())
}

/// A `tool_result` block → a `tool` message; its content must be text (OpenAI's tool messages carry no
/// images).
fn openai_tool_message(block: &Value, param: &str, dropped: &mut Dropped) -> Result<Value, TranslateError> {
    let id = block
        .get("tool_use_id")
        .and_then(Value::as_str)
        .ok_or_else(|| TranslateError::invalid(format!("{param}.tool_use_id"), "expected a string"))?;
    let content = match block.get("content") {
        None | Some(Value::Null) => Value::from(""),
        Some(Value::String(s)) => Value::from(s.as_str()),
        Some(Value::Array(inner)) => {
            let mut parts = Vec::with_capacity(inner.len());
            for (k, part) in inner.iter().enumerate() {
                let text = part
                    .get("text")
                    .and_then(Value::as_str)
                    .filter(|_| part.get("type").and_then(Value::as_str) == Some("text"))
                    .ok_or_else(|| {
                        TranslateError::unsupported(
                            format!("{param}.content[{k}]"),
                            "only text tool results translate",
                        )
                    })?;
                note_cache_control(part, dropped);
                parts.push(json!({"type": "text", "text": text}));
            }
            if parts.is_empty() {
                Value::from("")
            } else {
                openai_text_content(parts)
            }
        }
        Some(_) => {
            return Err(TranslateError::invalid(
                format!("{param}.content"),
                "expected a string or text blocks",
            ));
        }
    };
    if block.get("is_error").and_then(Value::as_bool) == Some(true) {
        dropped.add("tool_result.is_error");
    }
    Ok(json!({"role": "tool", "tool_call_id": id, "content": content}))
}
