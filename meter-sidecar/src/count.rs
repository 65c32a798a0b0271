//! Token counting: the heart of the sidecar, as pure functions.
//!
//! In: an [`Encoding`] and either a text or OpenAI chat messages (raw JSON values), with the request's tool
//! definitions. Out: a token count. Nothing here touches HTTP, metrics, logs or the cache, and nothing panics on
//! any input. [`chat_tokens_with`] lets [`crate::cache`] apply the same chat rule with a cached text count.
//!
//! - **Text** is encoded as ordinary text: a special-token string such as `<|endoftext|>` inside the text counts
//!   as the plain characters it is, which is how providers bill it.
//! - **Chat** follows OpenAI's published rule (the cookbook's `num_tokens_from_messages`), so for plain
//!   text messages the count equals the `prompt_tokens` OpenAI reports: [`TOKENS_PER_MESSAGE`] per message, every
//!   string field of a message encoded (`role`, `content`, `name`, `tool_call_id`, …), [`TOKENS_PER_NAME`] more
//!   when the message has a `name`, and [`REPLY_PRIMING_TOKENS`] once for the assistant reply that follows.
//! - **Tool definitions** (the request's `tools` or legacy `functions`) add what [`crate::tools`] counts for
//!   them: OpenAI's cookbook rule for functions, JSON text plus overheads for Anthropic's and other tools
//!   ([`prompt_tokens`] is messages plus tools).
//!
//! Beyond the cookbook's plain-string messages:
//! - `content` may be an array of parts. `text` parts (and assistant `refusal` parts) are encoded; image parts
//!   (`image_url`, `input_image`, Anthropic's `image`) cost what [`crate::image`] computes from their size by
//!   OpenAI's tile formula — never the text of their URL or base64 data; Anthropic `tool_result` parts count
//!   their `content` (a string, or parts by these same rules) and `tool_use` parts their `name` and the
//!   compact JSON of their `input`. Other parts — audio, files — are **not counted** by this estimator.
//! - Assistant `tool_calls` (and the legacy `function_call`) count the function `name` and `arguments` strings
//!   as text. This is an approximation: the provider renders calls in its own format with a few extra tokens
//!   per call.
//! - Fields that are neither strings nor one of the shapes above (numbers, `null`, unknown objects) and
//!   messages that are not JSON objects add nothing.
//!
//! One deliberate deviation from tiktoken: a run of more than [`MAX_WHITESPACE_RUN`] whitespace characters is
//! encoded in slices of that length. tiktoken's split regex gives up on runs of about a million whitespace
//! characters (and tiktoken-rs then panics); slicing keeps the sidecar alive and changes the count by at most a
//! couple of tokens per slice. Text without such runs is counted exactly as tiktoken counts it.

use serde_json::{Map, Value};

use crate::encoding::Encoding;
use crate::{image, tools};

/// Tokens OpenAI adds around every chat message (`<|start|>{role}<|message|>…<|end|>`).
pub const TOKENS_PER_MESSAGE: usize = 3;

/// Extra token for a message that carries a `name`.
pub const TOKENS_PER_NAME: usize = 1;

/// Tokens that prime the assistant's reply (`<|start|>assistant<|message|>`), once per request.
pub const REPLY_PRIMING_TOKENS: usize = 3;

/// Longest whitespace run encoded in one piece; longer runs are encoded in slices of this many characters.
pub const MAX_WHITESPACE_RUN: usize = 64 * 1024;

/// Number of tokens in `text`, encoded as ordinary text (special-token strings are plain text).
pub fn text_tokens(encoding: Encoding, text: &str) -> usize {
    let bpe = encoding.bpe();
    segments(text)
        .map(|segment| bpe.encode_ordinary(segment).len())
        .sum()
}

/// Number of prompt tokens for OpenAI chat `messages`, including the per-message overhead and the reply
/// priming (see the module documentation for exactly what is counted).
///
/// Malformed shapes never fail: what cannot be read as text adds nothing. Callers that want to reject
/// malformed requests validate them before counting.
pub fn chat_tokens(encoding: Encoding, messages: &[Value]) -> usize {
    chat_tokens_with(messages, |text| text_tokens(encoding, text))
}

/// Prompt tokens of chat `messages` with the tool definitions `tools`: [`chat_tokens`] plus
/// [`tools::tools_tokens`].
pub fn prompt_tokens(encoding: Encoding, messages: &[Value], tools: &[Value]) -> usize {
    chat_tokens(encoding, messages).saturating_add(tools::tools_tokens(encoding, tools))
}

/// [`chat_tokens`] with the texts inside the messages counted by `text_tokens`, which must count as
/// [`text_tokens`] does with one encoding. [`crate::cache::CountCache`] passes its cached lookup here, so the
/// chat rule exists once.
pub fn chat_tokens_with(messages: &[Value], text_tokens: impl Fn(&str) -> usize) -> usize {
    REPLY_PRIMING_TOKENS
        + messages
            .iter()
            .filter_map(Value::as_object)
            .map(|message| message_tokens(&text_tokens, message))
            .sum::<usize>()
}

/// Tokens of one message: its overhead plus everything countable in it.
fn message_tokens(text_tokens: &impl Fn(&str) -> usize, message: &Map<String, Value>) -> usize {
    let mut tokens = TOKENS_PER_MESSAGE;
    for (field, value) in message {
        tokens += match (field.as_str(), value) {
            ("name", Value::String(name)) => TOKENS_PER_NAME + text_tokens(name),
            (_, Value::String(text)) => text_tokens(text),
            ("content", Value::Array(parts)) => parts.iter().map(|part| part_tokens(text_tokens, part)).sum(),
            ("tool_calls", Value::Array(calls)) => calls
                .iter()
                .filter_map(|call| call.get("function"))
                .map(|f| function_tokens(text_tokens, f))
                .sum(),
            ("function_call", function) => function_tokens(text_tokens, function),
            _ => 0,
        };
    }
    tokens
}

/// Tokens of one content part: text and refusal parts their text, images by their size, tool results their
/// content; other kinds (audio, files) nothing.
fn part_tokens(text_tokens: &impl Fn(&str) -> usize, part: &Value) -> usize {
    if image::is_image_part(part) {
        return image::image_part_tokens(part);
    }
    let text = match part.get("type").and_then(Value::as_str) {
        Some("text") => part.get("text"),
        Some("refusal") => part.get("refusal"),
        // Anthropic: a tool call's name and its input as compact JSON, like `tool_calls` arguments.
        Some("tool_use") => {
            let name = part.get("name").and_then(Value::as_str).map_or(0, text_tokens);
            let input = part
                .get("input")
                .map_or(0, |input| text_tokens(&tools::compact(input)));
            return name.saturating_add(input);
        }
        // Anthropic: a tool result's content is a string or an array of parts (nesting is bounded by the
        // JSON parser's depth limit).
        Some("tool_result") => match part.get("content") {
            Some(Value::Array(parts)) => {
                return parts
                    .iter()
                    .map(|part| part_tokens(text_tokens, part))
                    .fold(0, usize::saturating_add);
            }
            content => content,
        },
        _ => None,
    };
    text.and_then(Value::as_str).map_or(0, text_tokens)
}

/// Tokens of a called function: its `name` and `arguments` strings as text (an approximation).
fn function_tokens(text_tokens: &impl Fn(&str) -> usize, function: &Value) -> usize {
    ["name", "arguments"]
        .into_iter()
        .filter_map(|field| function.get(field).and_then(Value::as_str))
        .map(text_tokens)
        .sum()
}

/// Splits `text` into the pieces that are encoded separately: the whole text, except that whitespace runs
/// longer than [`MAX_WHITESPACE_RUN`] characters are cut every [`MAX_WHITESPACE_RUN`] characters.
fn segments(text: &str) -> impl Iterator<Item = &str> {
    let mut rest = text;
    std::iter::from_fn(move || {
        if rest.is_empty() {
            return None;
        }
        let cut = whitespace_cut(rest).unwrap_or(rest.len());
        let (segment, tail) = rest.split_at(cut);
        rest = tail;
        Some(segment)
    })
}

/// Byte offset just after the first [`MAX_WHITESPACE_RUN`] consecutive whitespace characters, if any.
fn whitespace_cut(text: &str) -> Option<usize> {
    let mut run = 0;
    for (offset, c) in text.char_indices() {
        if !c.is_whitespace() {
            run = 0;
            continue;
        }
        run += 1;
        if run == MAX_WHITESPACE_RUN {
            return Some(offset + c.len_utf8());
        }
    }
    None
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn messages(value: Value) -> Vec<Value> {
        match value {
            Value::Array(items) => items,
            other => vec![other],
        }
    }

    #[test]
    fn hello_world_is_two_tokens_in_every_encoding() {
        for encoding in Encoding::ALL {
            assert_eq!(text_tokens(encoding, "hello world"), 2, "{encoding}");
        }
    }

    #[test]
    fn empty_text_is_zero_tokens() {
        for encoding in Encoding::ALL {
            assert_eq!(text_tokens(encoding, ""), 0);
        }
    }

    #[test]
    fn special_token_strings_count_as_plain_text() {
        for encoding in Encoding::ALL {
            let plain = encoding.bpe().encode_ordinary("<|endoftext|>").len();
            assert!(
                plain > 1,
                "{encoding}: <|endoftext|> must not be the single special token"
            );
            assert_eq!(text_tokens(encoding, "<|endoftext|>"), plain);
            assert_eq!(text_tokens(encoding, "a <|endoftext|> b <|fim_prefix|>"), {
                encoding
                    .bpe()
                    .encode_ordinary("a <|endoftext|> b <|fim_prefix|>")
                    .len()
            });
        }
    }

    #[test]
    fn o200k_and_cl100k_differ_where_their_vocabularies_do() {
        // A non-English sentence shows that the encoding really is switched.
        let text = "Größenverhältnisse der Bevölkerungsentwicklung";
        assert_ne!(
            text_tokens(Encoding::O200kBase, text),
            text_tokens(Encoding::R50kBase, text)
        );
    }

    #[test]
    fn chat_overhead_follows_openais_rule() {
        let chat = messages(json!([
            {"role": "system", "content": "You are a helpful assistant."},
            {"role": "user", "content": "Hello!"},
        ]));
        for encoding in Encoding::ALL {
            let t = |s| text_tokens(encoding, s);
            let expected =
                (3 + t("system") + t("You are a helpful assistant.")) + (3 + t("user") + t("Hello!")) + 3;
            assert_eq!(chat_tokens(encoding, &chat), expected, "{encoding}");
        }
        // OpenAI's API reference shows `"prompt_tokens": 19` for exactly this request to gpt-4o-mini.
        assert_eq!(chat_tokens(Encoding::O200kBase, &chat), 19);
    }

    #[test]
    fn no_messages_is_just_the_reply_priming() {
        assert_eq!(chat_tokens(Encoding::O200kBase, &[]), REPLY_PRIMING_TOKENS);
    }

    #[test]
    fn a_name_adds_one_token_plus_the_name_itself() {
        let plain = messages(json!({"role": "user", "content": "Hi"}));
        let named = messages(json!({"role": "user", "content": "Hi", "name": "alice"}));
        let e = Encoding::O200kBase;
        assert_eq!(
            chat_tokens(e, &named),
            chat_tokens(e, &plain) + 1 + text_tokens(e, "alice")
        );
    }

    #[test]
    fn content_parts_count_their_text_and_images_by_size_not_by_url() {
        let e = Encoding::Cl100kBase;
        let as_string = messages(json!({"role": "user", "content": "What is in this picture?"}));
        let long_data = format!("data:image/png;base64,{}", "AAAA".repeat(10_000));
        let as_parts = messages(json!({"role": "user", "content": [
            {"type": "text", "text": "What is in "},
            {"type": "image_url", "image_url": {"url": long_data}},
            {"type": "image_url", "image_url": {"url": "https://example.com/a.png", "detail": "low"}},
            {"type": "text", "text": "this picture?"},
        ]}));
        let expected = chat_tokens(e, &as_string) - text_tokens(e, "What is in this picture?")
            + text_tokens(e, "What is in ")
            + text_tokens(e, "this picture?")
            + image::UNKNOWN_SIZE_TOKENS
            + image::LOW_DETAIL_TOKENS;
        assert_eq!(chat_tokens(e, &as_parts), expected);
    }

    #[test]
    fn anthropic_tool_results_count_their_text_and_images() {
        let e = Encoding::O200kBase;
        let chat = messages(json!({"role": "user", "content": [
            {"type": "tool_result", "tool_use_id": "t1", "content": "22 degrees"},
            {"type": "tool_result", "tool_use_id": "t2", "content": [
                {"type": "text", "text": "a chart"},
                {"type": "image", "source": {"type": "url", "url": "https://example.com/c.png"}, "width": 512, "height": 512},
            ]},
        ]}));
        let t = |s| text_tokens(e, s);
        let expected = 3 + t("user") + t("22 degrees") + t("a chart") + 255 + 3;
        assert_eq!(chat_tokens(e, &chat), expected);
        let call = messages(json!({"role": "assistant", "content": [
            {"type": "tool_use", "id": "t1", "name": "get_weather", "input": {"city": "Paris"}},
        ]}));
        let expected = 3 + t("assistant") + t("get_weather") + t("{\"city\":\"Paris\"}") + 3;
        assert_eq!(chat_tokens(e, &call), expected);
    }

    #[test]
    fn prompt_tokens_add_the_tools_to_the_messages() {
        let e = Encoding::O200kBase;
        let chat = messages(json!({"role": "user", "content": "Hi"}));
        let tools = [json!({"type": "function", "function": {"name": "f"}})];
        assert_eq!(
            prompt_tokens(e, &chat, &tools),
            chat_tokens(e, &chat) + tools::tools_tokens(e, &tools)
        );
        assert_eq!(prompt_tokens(e, &chat, &[]), chat_tokens(e, &chat));
    }

    #[test]
    fn null_content_counts_only_the_overhead_and_role() {
        let e = Encoding::O200kBase;
        let chat = messages(json!({"role": "assistant", "content": null}));
        assert_eq!(chat_tokens(e, &chat), 3 + text_tokens(e, "assistant") + 3);
    }

    #[test]
    fn tool_calls_count_function_names_and_arguments() {
        let e = Encoding::O200kBase;
        let chat = messages(json!([
            {"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function",
                 "function": {"name": "get_weather", "arguments": "{\"city\":\"Paris\"}"}},
            ]},
            {"role": "tool", "tool_call_id": "call_1", "content": "22°C"},
        ]));
        let t = |s| text_tokens(e, s);
        let expected = (3 + t("assistant") + t("get_weather") + t("{\"city\":\"Paris\"}"))
            + (3 + t("tool") + t("call_1") + t("22°C"))
            + 3;
        assert_eq!(chat_tokens(e, &chat), expected);
    }

    #[test]
    fn malformed_messages_add_nothing_and_do_not_panic() {
        let e = Encoding::O200kBase;
        let chat = messages(json!([
            42,
            "hello",
            null,
            {"role": 7, "content": {"unexpected": true}, "tool_calls": {"function": 1}, "function_call": 3},
            {"content": [1, null, {"type": "text"}, {"type": "text", "text": 5}, {"text": "untyped"}]},
        ]));
        assert_eq!(chat_tokens(e, &chat), 3 + 3 + 3);
    }

    #[test]
    fn long_whitespace_runs_are_sliced_instead_of_panicking() {
        // tiktoken's regex gives up on a run of about a million whitespace characters.
        let text = format!("start{}end", " ".repeat(1_200_000));
        let tokens = text_tokens(Encoding::O200kBase, &text);
        assert!(tokens > 2, "{tokens}");
        assert_eq!(segments(&text).count(), 1_200_000 / MAX_WHITESPACE_RUN + 1);
    }

    #[test]
    fn text_without_long_whitespace_runs_is_one_segment() {
        let text = format!(
            "a{}b\n\n{}",
            " ".repeat(MAX_WHITESPACE_RUN - 1),
            "word ".repeat(10_000)
        );
        assert_eq!(segments(&text).collect::<Vec<_>>(), vec![text.as_str()]);
        assert_eq!(segments("").count(), 0);
    }

    /// Deterministic pseudo-random texts mixing the character classes tiktoken's split regex cares about.
    fn generated_texts() -> impl Iterator<Item = String> {
        const ALPHABET: &[&str] = &[
            "a",
            "Z",
            "é",
            "\u{301}",
            "漢",
            "7",
            "'s",
            "'LL",
            " ",
            "  ",
            "\t",
            "\n",
            "\r\n",
            "\u{3000}",
            "^",
            "/",
            "<|endoftext|>",
            "<|fim_middle|>",
            "🦀",
            "\u{200d}",
            "\0",
        ];
        let mut state: u64 = 0x9e37_79b9_7f4a_7c15;
        let mut next = move || {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            state
        };
        (0..300).map(move |_| {
            let len = next() % 64;
            (0..len)
                .map(|_| ALPHABET[(next() % ALPHABET.len() as u64) as usize])
                .collect()
        })
    }

    #[test]
    fn counts_match_tiktoken_exactly_on_ordinary_texts() {
        for text in generated_texts() {
            for encoding in Encoding::ALL {
                let expected = encoding.bpe().encode_ordinary(&text).len();
                assert_eq!(text_tokens(encoding, &text), expected, "{encoding} {text:?}");
            }
        }
    }

    #[test]
    fn chat_counting_never_panics_on_odd_json() {
        let odd = [
            json!(null),
            json!([]),
            json!({}),
            json!({"content": [[[]]], "tool_calls": [null, {"function": null}, {"function": {"name": 1}}]}),
            json!({"name": null, "role": "", "content": ""}),
            json!({"function_call": {"name": "f", "arguments": {"not": "a string"}}}),
        ];
        for encoding in Encoding::ALL {
            assert!(chat_tokens(encoding, &odd) >= REPLY_PRIMING_TOKENS);
        }
    }

    #[test]
    fn slicing_keeps_every_byte_and_cuts_on_char_boundaries() {
        let text = format!("x{}y", "\u{3000}".repeat(MAX_WHITESPACE_RUN * 2 + 5));
        let joined: String = segments(&text).collect();
        assert_eq!(joined, text);
    }
}
