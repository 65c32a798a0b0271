//! Tool definitions: the prompt tokens a request's `tools` (or legacy `functions`) add beside its messages.
//!
//! In: an [`Encoding`] and the definitions as sent (raw JSON values). Out: their tokens. Pure and panic-free,
//! like [`crate::count`]; [`tools_tokens_with`] lets [`crate::cache`] count each definition through the cache.
//!
//! **OpenAI functions** — a tool `{"type": "function", "function": {"name", "description", "parameters"}}`, the
//! flattened `{"type": "function", "name", …}`, or a legacy `functions` entry `{"name", "description",
//! "parameters"}` — follow OpenAI's cookbook (*How to count tokens with tiktoken*, `num_tokens_for_tools`),
//! which matches the `prompt_tokens` OpenAI reports:
//! - [`FUNC_INIT_O200K`] (7) per function for o200k_base models, [`FUNC_INIT_CL100K`] (10) for the others;
//! - the encoded line `{name}:{description}`, the description without one trailing `.`;
//! - when `parameters.properties` is a non-empty object, [`PROP_INIT`] (3), and for each property
//!   [`PROP_KEY`] (3) plus the encoded line `{name}:{type}:{description}` (again without a trailing `.`);
//! - for a property with an `enum` array, [`ENUM_ITEM`] (3) plus the encoded value per item, and
//!   [`ENUM_INIT`] (−3) once;
//! - [`FUNC_END`] (12) once for the whole list, when it has at least one function.
//!
//! The cookbook covers flat schemas of strings. Beyond it (Tollgate's extensions, so that nothing in a schema
//! is free): a `type` that is not a string and a non-string enum value are encoded as their compact JSON; a
//! missing name, type or description is an empty string; a property that has its own `properties` (a nested
//! object) counts them by the same rule, [`PROP_INIT`] included; and every other keyword of a property or of
//! `parameters` (`items`, `anyOf`, `default`, `format`, `$defs`, …) is encoded as `{keyword}:{compact JSON}`.
//! Only `required` and `additionalProperties`, which OpenAI does not render as text, add nothing.
//!
//! **Other tools** — Anthropic's `{"name", "description", "input_schema"}`, server tools such as
//! `{"type": "web_search_20250305", "name": "web_search"}`, and any other object — count the encoded compact
//! JSON of the whole definition plus [`OTHER_TOOL_OVERHEAD`] (10) per tool, the wrapper each definition gets in
//! the provider's tool prompt (no provider publishes a per-tool figure; 10 is the larger of OpenAI's two
//! per-function figures). When at least one tool has an `input_schema` (Anthropic's shape), the list adds
//! [`ANTHROPIC_TOOL_SYSTEM_PROMPT`] (346) once: the tool-use system prompt Anthropic documents it adds, and
//! bills, whenever tools are given (its figure for current Claude models with `tool_choice` `auto`/`none`).
//!
//! Definitions that are not JSON objects add nothing (the API refuses them before counting).

use serde_json::{Map, Value};

use crate::count::text_tokens;
use crate::encoding::Encoding;

/// Tokens that open each function definition, for o200k_base models (gpt-4o and later).
pub const FUNC_INIT_O200K: usize = 7;

/// Tokens that open each function definition, for the other encodings (gpt-4, gpt-3.5-turbo).
pub const FUNC_INIT_CL100K: usize = 10;

/// Tokens that open a function's non-empty property list.
pub const PROP_INIT: usize = 3;

/// Tokens per property.
pub const PROP_KEY: usize = 3;

/// Tokens once per property that has an `enum` (negative: the cookbook's −3, applied as a subtraction).
pub const ENUM_INIT: isize = -3;

/// Tokens per enum value, beside the value itself.
pub const ENUM_ITEM: usize = 3;

/// Tokens that close a list of function definitions, once per request that has any.
pub const FUNC_END: usize = 12;

/// Tokens per tool definition that is not an OpenAI function, beside its JSON text.
pub const OTHER_TOOL_OVERHEAD: usize = 10;

/// Tokens of Anthropic's tool-use system prompt, once per request with Anthropic-shaped tools.
pub const ANTHROPIC_TOOL_SYSTEM_PROMPT: usize = 346;

/// Keywords of a schema that are not rendered as text and so add nothing.
const SILENT_KEYWORDS: &[&str] = &["required", "additionalProperties"];

/// Tokens of the tool definitions `tools`, with the list overheads (see the module documentation).
pub fn tools_tokens(encoding: Encoding, tools: &[Value]) -> usize {
    tools_tokens_with(tools, |tool| tool_tokens(encoding, tool))
}

/// [`tools_tokens`] with each definition counted by `tool_tokens`, which must count as [`tool_tokens`] does
/// with one encoding ([`crate::cache::CountCache`] passes its cached lookup here).
pub fn tools_tokens_with(tools: &[Value], tool_tokens: impl Fn(&Value) -> usize) -> usize {
    let mut tokens = 0usize;
    let (mut functions, mut anthropic) = (false, false);
    for tool in tools.iter().filter(|tool| tool.is_object()) {
        match function_of(tool) {
            Some(_) => functions = true,
            None => anthropic |= tool.get("input_schema").is_some(),
        }
        tokens = tokens.saturating_add(tool_tokens(tool));
    }
    if functions {
        tokens = tokens.saturating_add(FUNC_END);
    }
    if anthropic {
        tokens = tokens.saturating_add(ANTHROPIC_TOOL_SYSTEM_PROMPT);
    }
    tokens
}

/// Tokens of one tool definition, its per-tool overhead included (the list overheads are not).
pub fn tool_tokens(encoding: Encoding, tool: &Value) -> usize {
    if !tool.is_object() {
        return 0;
    }
    let text = |text: &str| text_tokens(encoding, text);
    match function_of(tool) {
        Some(function) => {
            let func_init = match encoding {
                Encoding::O200kBase => FUNC_INIT_O200K,
                _ => FUNC_INIT_CL100K,
            };
            let name = string_field(function, "name");
            let description = string_field(function, "description");
            let mut tokens = func_init + text(&format!("{name}:{}", strip_period(description)));
            if let Some(parameters) = function.get("parameters").and_then(Value::as_object) {
                tokens = tokens.saturating_add(schema_tokens(&text, parameters));
            }
            tokens
        }
        None => OTHER_TOOL_OVERHEAD.saturating_add(text(&compact(tool))),
    }
}

/// The function definition inside an OpenAI tool: `function` of `{"type": "function", "function": {…}}`, or
/// the tool itself when flattened (`{"type": "function", "name", …}`).
fn function_of(tool: &Value) -> Option<&Map<String, Value>> {
    if tool.get("type").and_then(Value::as_str) != Some("function") {
        return None;
    }
    match tool.get("function").and_then(Value::as_object) {
        Some(function) => Some(function),
        None => tool.as_object(),
    }
}

/// Tokens of an object schema: its properties by the cookbook's rule, its other keywords as text. Used for
/// `parameters` and, recursively, for nested object properties (the recursion is bounded by the JSON parser's
/// nesting limit).
fn schema_tokens(text: &impl Fn(&str) -> usize, schema: &Map<String, Value>) -> usize {
    let mut tokens = 0usize;
    for (keyword, value) in schema {
        let add = match keyword.as_str() {
            "type" => 0,
            "properties" => properties_tokens(text, value),
            keyword if SILENT_KEYWORDS.contains(&keyword) => 0,
            keyword => text(&format!("{keyword}:{}", compact(value))),
        };
        tokens = tokens.saturating_add(add);
    }
    tokens
}

/// Tokens of a `properties` object: [`PROP_INIT`] and each property, or nothing when it is empty or not an
/// object.
fn properties_tokens(text: &impl Fn(&str) -> usize, value: &Value) -> usize {
    match value.as_object() {
        Some(properties) if !properties.is_empty() => properties
            .iter()
            .map(|(name, property)| property_tokens(text, name, property))
            .fold(PROP_INIT, usize::saturating_add),
        _ => 0,
    }
}

/// Tokens of one property: [`PROP_KEY`], the line `{name}:{type}:{description}`, its enum, and (extension)
/// its nested properties and other keywords.
fn property_tokens(text: &impl Fn(&str) -> usize, name: &str, property: &Value) -> usize {
    let Some(property) = property.as_object() else {
        // A property that is not a schema object (`true`, say): its name and the value as text.
        return PROP_KEY.saturating_add(text(&format!("{name}:{}", compact(property))));
    };
    let kind = match property.get("type") {
        None | Some(Value::Null) => String::new(),
        Some(Value::String(kind)) => kind.clone(),
        Some(other) => compact(other),
    };
    let description = strip_period(string_field(property, "description"));
    let mut tokens = PROP_KEY.saturating_add(text(&format!("{name}:{kind}:{description}")));
    for (keyword, value) in property {
        let add = match keyword.as_str() {
            "type" | "description" => 0,
            "enum" => match value.as_array() {
                Some(values) => values
                    .iter()
                    .map(|value| match value {
                        Value::String(value) => text(value),
                        other => text(&compact(other)),
                    })
                    .fold(0usize, |sum, item| {
                        sum.saturating_add(ENUM_ITEM).saturating_add(item)
                    }),
                None => text(&format!("enum:{}", compact(value))),
            },
            "properties" => properties_tokens(text, value),
            keyword if SILENT_KEYWORDS.contains(&keyword) => 0,
            keyword => text(&format!("{keyword}:{}", compact(value))),
        };
        tokens = tokens.saturating_add(add);
    }
    if property.get("enum").is_some_and(Value::is_array) {
        tokens = tokens.saturating_sub(ENUM_INIT.unsigned_abs());
    }
    tokens
}

/// `object[field]` when it is a string, else the empty string.
fn string_field<'a>(object: &'a Map<String, Value>, field: &str) -> &'a str {
    object.get(field).and_then(Value::as_str).unwrap_or_default()
}

/// `text` without one trailing `.`, as the cookbook encodes descriptions.
fn strip_period(text: &str) -> &str {
    text.strip_suffix('.').unwrap_or(text)
}

/// Compact JSON of `value` (serialising a `Value` cannot fail; if it ever did, the empty string).
pub(crate) fn compact(value: &Value) -> String {
    serde_json::to_string(value).unwrap_or_default()
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;
    use crate::count::chat_tokens;

    /// The cookbook's example tool list (*How to count tokens with tiktoken*, section 7).
    fn cookbook_tools() -> Vec<Value> {
        vec![json!({
            "type": "function",
            "function": {
                "name": "get_current_weather",
                "description": "Get the current weather in a given location",
                "parameters": {
                    "type": "object",
                    "properties": {
                        "location": {
                            "type": "string",
                            "description": "The city and state, e.g. San Francisco, CA",
                        },
                        "unit": {
                            "type": "string",
                            "description": "The unit of temperature to return",
                            "enum": ["celsius", "fahrenheit"],
                        },
                    },
                    "required": ["location"],
                },
            }
        })]
    }

    fn cookbook_messages() -> Vec<Value> {
        vec![
            json!({"role": "system", "content": "You are a helpful assistant that can answer to questions about the weather."}),
            json!({"role": "user", "content": "What's the weather like in San Francisco?"}),
        ]
    }

    #[test]
    fn the_cookbook_example_matches_openais_reported_prompt_tokens() {
        // The cookbook prints, for these messages and tools, 101 prompt tokens from the OpenAI API for gpt-4o
        // and gpt-4o-mini (o200k_base) and 105 for gpt-4 and gpt-3.5-turbo (cl100k_base), and its
        // num_tokens_for_tools gives the same.
        let (messages, tools) = (cookbook_messages(), cookbook_tools());
        for (encoding, expected) in [(Encoding::O200kBase, 101), (Encoding::Cl100kBase, 105)] {
            let total = chat_tokens(encoding, &messages) + tools_tokens(encoding, &tools);
            assert_eq!(total, expected, "{encoding}");
        }
    }

    #[test]
    fn the_rule_term_by_term() {
        let e = Encoding::O200kBase;
        let t = |s: &str| text_tokens(e, s);
        let expected = FUNC_INIT_O200K
            + t("get_current_weather:Get the current weather in a given location")
            + PROP_INIT
            + (PROP_KEY + t("location:string:The city and state, e.g. San Francisco, CA"))
            + (PROP_KEY + t("unit:string:The unit of temperature to return") - 3
                + (ENUM_ITEM + t("celsius"))
                + (ENUM_ITEM + t("fahrenheit")))
            + FUNC_END;
        assert_eq!(tools_tokens(e, &cookbook_tools()), expected);
    }

    #[test]
    fn legacy_flattened_and_nested_function_shapes_count_alike() {
        let Some(function) = cookbook_tools()[0].get("function").cloned() else {
            unreachable!()
        };
        let mut flattened = function.clone();
        if let Some(object) = flattened.as_object_mut() {
            object.insert("type".into(), json!("function"));
        }
        for encoding in Encoding::ALL {
            let nested = tool_tokens(encoding, &cookbook_tools()[0]);
            assert_eq!(tool_tokens(encoding, &flattened), nested, "{encoding}");
            let legacy = json!({"type": "function", "function": function});
            assert_eq!(tool_tokens(encoding, &legacy), nested, "{encoding}");
        }
    }

    #[test]
    fn a_function_without_parameters_is_its_name_line_and_overheads() {
        let e = Encoding::Cl100kBase;
        let tools = [json!({"type": "function", "function": {"name": "ping", "description": "Ping."}})];
        assert_eq!(
            tools_tokens(e, &tools),
            FUNC_INIT_CL100K + text_tokens(e, "ping:Ping") + FUNC_END
        );
        let empty = [
            json!({"type": "function", "function": {"name": "ping", "parameters": {"type": "object", "properties": {}}}}),
        ];
        assert_eq!(
            tools_tokens(e, &empty),
            FUNC_INIT_CL100K + text_tokens(e, "ping:") + FUNC_END
        );
    }

    #[test]
    fn nested_objects_and_other_keywords_are_not_free() {
        let e = Encoding::O200kBase;
        let flat = json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object",
            "properties": {"a": {"type": "object"}}}}});
        let nested = json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object",
            "properties": {"a": {"type": "object", "properties": {"b": {"type": "string", "description": "B"}}}}}}});
        let with_items = json!({"type": "function", "function": {"name": "f", "parameters": {"type": "object",
            "properties": {"a": {"type": "object", "items": {"type": "string"}}}, "additionalProperties": false,
            "required": ["a"]}}});
        let base = tool_tokens(e, &flat);
        assert_eq!(
            tool_tokens(e, &nested),
            base + PROP_INIT + PROP_KEY + text_tokens(e, "b:string:B")
        );
        assert_eq!(
            tool_tokens(e, &with_items),
            base + text_tokens(e, "items:{\"type\":\"string\"}")
        );
    }

    #[test]
    fn anthropic_tools_count_their_json_the_per_tool_overhead_and_the_system_prompt_once() {
        let e = Encoding::O200kBase;
        let tool = |name: &str| {
            json!({"name": name, "description": "Get the weather", "input_schema": {"type": "object",
                "properties": {"city": {"type": "string"}}, "required": ["city"]}})
        };
        let tools = [tool("get_weather"), tool("get_time")];
        let expected = tools
            .iter()
            .map(|tool| OTHER_TOOL_OVERHEAD + text_tokens(e, &compact(tool)))
            .sum::<usize>()
            + ANTHROPIC_TOOL_SYSTEM_PROMPT;
        assert_eq!(tools_tokens(e, &tools), expected);
        // A server tool without input_schema is counted as JSON, without the system prompt.
        let server = [json!({"type": "web_search_20250305", "name": "web_search"})];
        assert_eq!(
            tools_tokens(e, &server),
            OTHER_TOOL_OVERHEAD + text_tokens(e, &compact(&server[0]))
        );
    }

    #[test]
    fn no_tools_and_odd_tools_do_not_panic() {
        for encoding in Encoding::ALL {
            assert_eq!(tools_tokens(encoding, &[]), 0);
            assert_eq!(tools_tokens(encoding, &[json!(1), json!(null), json!("x")]), 0);
            let odd = [
                json!({"type": "function"}),
                json!({"type": "function", "function": 3}),
                json!({"type": "function", "function": {"name": 1, "description": [], "parameters": {"properties": {
                    "a": null, "b": true, "c": {"type": ["string", "null"], "enum": [1, null, "x"]},
                    "d": {"enum": "not an array"}, "e": {"enum": []}}}}}),
            ];
            assert!(tools_tokens(encoding, &odd) > FUNC_END);
        }
    }

    #[test]
    fn an_empty_enum_never_goes_below_zero() {
        let e = Encoding::O200kBase;
        let tool = json!({"type": "function", "function": {"name": "f", "parameters": {"properties": {"a": {"enum": []}}}}});
        assert_eq!(
            tool_tokens(e, &tool),
            FUNC_INIT_O200K + text_tokens(e, "f:") + PROP_INIT + PROP_KEY + text_tokens(e, "a::") - 3
        );
    }
}
