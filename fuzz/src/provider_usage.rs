//! Fuzzes the reading of a whole (not streamed) answer of each provider ([`tollgate_gateway::protocol::usage`]):
//! its usage and served model ([`read_answer`], [`from_body`], [`from_response_body`]), its completion text
//! ([`completion_text`], counted when the provider reported no usage), and the rules that settle what is billed
//! ([`at_least_streamed`], [`estimated`]).
//!
//! Input: one byte choosing the provider (bit 0: Anthropic instead of OpenAI; the other bits feed the figures of
//! the settlement rules), then the answer's body.
//!
//! Invariants beyond "no panic":
//! - the usage [`read_answer`] reads is the one [`from_body`] reads, and for OpenAI the one
//!   [`from_response_body`] (the stream chunks' reader) reads;
//! - a served model is never empty;
//! - an Anthropic prompt includes the cached prompt tokens, and its total is prompt plus completion;
//! - a body that is not JSON yields no usage, no model and no text. Only checked for valid UTF-8: serde_json does
//!   not check the UTF-8 of the values it skips, so an answer with invalid UTF-8 in a field the gateway does not
//!   read still gives its usage and model (billed from the provider's figures, as wanted) but no text;
//! - settling never bills fewer completion tokens than were counted, nor more prompt tokens than reported or
//!   estimated, and its total is prompt plus completion.

use tollgate_gateway::protocol::Provider;
use tollgate_gateway::protocol::usage::{
    at_least_streamed, completion_text, estimated, from_body, from_response_body, read_answer,
};
use tollgate_schemas::UsageSource;

/// Runs one input; panics when an invariant does not hold.
pub fn run(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let provider = if selector & 1 == 0 {
        Provider::Openai
    } else {
        Provider::Anthropic
    };
    let facts = read_answer(provider, body);
    assert_eq!(
        facts.usage,
        from_body(provider, body),
        "two readers of one answer disagree"
    );
    if provider == Provider::Openai {
        assert_eq!(
            facts.usage,
            from_response_body(body),
            "the stream chunk reader disagrees"
        );
    }
    assert_ne!(facts.model.as_deref(), Some(""), "an empty served model");
    let text = completion_text(provider, body);
    if std::str::from_utf8(body).is_ok() && serde_json::from_slice::<serde_json::Value>(body).is_err() {
        assert!(
            facts.usage.is_none() && facts.model.is_none() && text.is_none(),
            "facts read from non-JSON"
        );
    }
    if let Some(usage) = facts.usage {
        assert_eq!(usage.source, UsageSource::Provider);
        if provider == Provider::Anthropic {
            assert!(
                usage.cached_prompt_tokens.unwrap_or(0) <= usage.prompt_tokens,
                "{usage:?}"
            );
            let written = u64::from(usage.cache_write_5m_tokens.unwrap_or(0))
                + u64::from(usage.cache_write_1h_tokens.unwrap_or(0));
            assert!(
                written <= u64::from(usage.prompt_tokens) || usage.prompt_tokens == u32::MAX,
                "cache writes are prompt tokens: {usage:?}"
            );
            assert_eq!(
                usage.total_tokens,
                usage.prompt_tokens.saturating_add(usage.completion_tokens),
                "{usage:?}"
            );
        }
    }

    let estimate = u32::from(selector >> 1) * 1000;
    let counted = text
        .as_deref()
        .map_or(0, |t| u32::try_from(t.len()).unwrap_or(u32::MAX));
    let settled = at_least_streamed(facts.usage, estimate, counted, UsageSource::Counted);
    assert!(
        settled.completion_tokens >= counted,
        "billed fewer tokens than were counted: {settled:?}"
    );
    assert_eq!(
        settled.prompt_tokens,
        facts.usage.map_or(estimate, |u| u.prompt_tokens)
    );
    assert_eq!(
        settled.total_tokens,
        settled.prompt_tokens.saturating_add(settled.completion_tokens)
    );
    for succeeded in [true, false] {
        let fallback = estimated(estimate, succeeded);
        assert_eq!(fallback.prompt_tokens, if succeeded { estimate } else { 0 });
        assert_eq!(fallback.total_tokens, fallback.prompt_tokens);
    }
}
