//! A bounded cache of token counts, so that a text seen before is not tokenized again.
//!
//! System prompts, tool descriptions and few-shot examples recur from request to request, and tokenizing is
//! the sidecar's only real work (roughly 10 MB/s per core). [`CountCache`] remembers, for each
//! (encoding, text) pair, how many tokens the text has. In: an [`Encoding`] and a text, or a [`CountInput`].
//! Out: the same count [`crate::count`] gives — the cache never changes a result, only how fast it comes.
//!
//! - **Key.** The encoding and a 128-bit hash of the text: two SipHash-1-3 passes with keys drawn at random when
//!   the cache is built. The text itself is not stored, so an entry is small whatever the text's size. Random
//!   keys mean a client cannot craft two texts that collide (and get one billed at the other's count), and 128
//!   bits make an accidental collision negligible.
//! - **Granularity.** Chat messages are cached per string (each `content`, each tool-call `arguments`, …), not
//!   per request, so a repeated system prompt is a hit even when the user message differs. Tool definitions are
//!   cached one per definition, keyed by its compact JSON (in a key space of their own, so a text can never
//!   hit a definition's entry); images are not tokenized and need no cache.
//! - **Threshold.** Texts shorter than [`MIN_CACHED_BYTES`] (128) are tokenized directly: for them a lookup
//!   saves a few microseconds at most, a miss costs more than that, and caching them would push the long,
//!   valuable texts out (see `BENCHMARKS.md` for the figures).
//! - **Bound.** At most `capacity` entries, evicted by moka's TinyLFU policy; capacity 0 disables the cache.
//! - **Metrics.** Every lookup of a cacheable text is a hit or a miss in `meter_cache_hits_total` /
//!   `meter_cache_misses_total`; [`CountCache::stats`] gives the same figures for this one cache.

use std::fmt;
use std::hash::{BuildHasher, Hasher, RandomState};
use std::sync::atomic::{AtomicU64, Ordering};

use serde_json::Value;

use crate::api::CountInput;
use crate::encoding::Encoding;
use crate::{count, metrics, tools};

/// Texts shorter than this many bytes are never cached. Measured (`BENCHMARKS.md`): a hit costs 0.2–0.3 µs at
/// any short size, but a miss adds about 1–2.5 µs of insertion to tokenizing, which for 16–64 bytes takes only
/// 1.5–4 µs. From 128 bytes a miss costs about 25 % more than tokenizing and a hit rate of about 20 % pays for
/// the misses; below it, one-off texts (short user turns) cost more than they save and would crowd the cache.
pub const MIN_CACHED_BYTES: usize = 128;

/// What a cache entry counts: a text, or one tool definition (its compact JSON).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Subject {
    Text,
    Tool,
}

/// Cache key: the encoding, what is counted, and a 128-bit hash of the text.
type Key = (Encoding, Subject, u64, u64);

/// Token counts of recently seen texts, shared by every worker.
pub struct CountCache {
    /// `None` when the cache is disabled (capacity 0).
    entries: Option<moka::sync::Cache<Key, usize>>,
    /// Texts shorter than this are not cached.
    min_cached_bytes: usize,
    /// The two independently keyed hashers whose outputs form the 128-bit key.
    hashers: [RandomState; 2],
    hits: AtomicU64,
    misses: AtomicU64,
}

/// What one cache has served since it was built.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CacheStats {
    /// Lookups answered from the cache.
    pub hits: u64,
    /// Lookups that had to tokenize (and then stored the count).
    pub misses: u64,
}

impl CountCache {
    /// A cache holding at most `capacity` counts of texts of [`MIN_CACHED_BYTES`] or more; 0 disables it
    /// (every count tokenizes).
    pub fn new(capacity: u64) -> CountCache {
        CountCache::with_threshold(capacity, MIN_CACHED_BYTES)
    }

    /// A cache holding at most `capacity` counts of texts of `min_cached_bytes` or more (the benchmarks use it
    /// to measure where caching starts to pay).
    pub fn with_threshold(capacity: u64, min_cached_bytes: usize) -> CountCache {
        let entries = (capacity > 0).then(|| moka::sync::Cache::builder().max_capacity(capacity).build());
        CountCache {
            entries,
            min_cached_bytes,
            hashers: [RandomState::new(), RandomState::new()],
            hits: AtomicU64::new(0),
            misses: AtomicU64::new(0),
        }
    }

    /// A cache that never stores anything: counting through it is counting directly.
    pub fn disabled() -> CountCache {
        CountCache::new(0)
    }

    /// Whether counts are cached at all.
    pub fn is_enabled(&self) -> bool {
        self.entries.is_some()
    }

    /// Tokens in `text`, as [`count::text_tokens`] counts them.
    pub fn text_tokens(&self, encoding: Encoding, text: &str) -> usize {
        self.cached(encoding, Subject::Text, text, || {
            count::text_tokens(encoding, text)
        })
    }

    /// Tokens of one tool definition, as [`tools::tool_tokens`] counts them, keyed by its compact JSON.
    pub fn tool_tokens(&self, encoding: Encoding, tool: &Value) -> usize {
        if self.entries.is_none() {
            return tools::tool_tokens(encoding, tool);
        }
        let json = tools::compact(tool);
        self.cached(encoding, Subject::Tool, &json, || {
            tools::tool_tokens(encoding, tool)
        })
    }

    /// The count of `text` as `subject`: from the cache, or from `count` (and then stored) when `text` is long
    /// enough to be cached.
    fn cached(
        &self,
        encoding: Encoding,
        subject: Subject,
        text: &str,
        count: impl FnOnce() -> usize,
    ) -> usize {
        let Some(entries) = self
            .entries
            .as_ref()
            .filter(|_| text.len() >= self.min_cached_bytes)
        else {
            return count();
        };
        let key = (encoding, subject, self.hash(0, text), self.hash(1, text));
        if let Some(tokens) = entries.get(&key) {
            self.hits.fetch_add(1, Ordering::Relaxed);
            metrics::record_cache_hit();
            return tokens;
        }
        let tokens = count();
        entries.insert(key, tokens);
        self.misses.fetch_add(1, Ordering::Relaxed);
        metrics::record_cache_miss();
        tokens
    }

    /// Prompt tokens of chat `messages`, as [`count::chat_tokens`] counts them, each string looked up on its own.
    pub fn chat_tokens(&self, encoding: Encoding, messages: &[Value]) -> usize {
        count::chat_tokens_with(messages, |text| self.text_tokens(encoding, text))
    }

    /// Tokens of the tool definitions `tools`, as [`tools::tools_tokens`] counts them, each definition looked
    /// up on its own.
    pub fn tools_tokens(&self, encoding: Encoding, tools: &[Value]) -> usize {
        tools::tools_tokens_with(tools, |tool| self.tool_tokens(encoding, tool))
    }

    /// Tokens of `input` with `encoding`.
    pub fn tokens(&self, encoding: Encoding, input: &CountInput) -> usize {
        match input {
            CountInput::Text(text) => self.text_tokens(encoding, text),
            CountInput::Chat { messages, tools } => self
                .chat_tokens(encoding, messages)
                .saturating_add(self.tools_tokens(encoding, tools)),
        }
    }

    /// Hits and misses of this cache since it was built.
    pub fn stats(&self) -> CacheStats {
        CacheStats {
            hits: self.hits.load(Ordering::Relaxed),
            misses: self.misses.load(Ordering::Relaxed),
        }
    }

    /// One 64-bit half of a text's key.
    fn hash(&self, half: usize, text: &str) -> u64 {
        let mut hasher = self.hashers[half].build_hasher();
        hasher.write(text.as_bytes());
        hasher.finish()
    }
}

impl fmt::Debug for CountCache {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("CountCache")
            .field(
                "capacity",
                &self.entries.as_ref().and_then(|e| e.policy().max_capacity()),
            )
            .field(
                "entries",
                &self.entries.as_ref().map(moka::sync::Cache::entry_count),
            )
            .field("stats", &self.stats())
            .finish()
    }
}

#[cfg(test)]
mod tests {
    use serde_json::json;

    use super::*;

    fn long(word: &str) -> String {
        format!("{word} ").repeat(MIN_CACHED_BYTES)
    }

    #[test]
    fn a_repeated_text_is_counted_once_and_gives_the_same_count() {
        let cache = CountCache::new(100);
        let text = long("system");
        let first = cache.text_tokens(Encoding::O200kBase, &text);
        let second = cache.text_tokens(Encoding::O200kBase, &text);
        assert_eq!(first, count::text_tokens(Encoding::O200kBase, &text));
        assert_eq!(second, first);
        assert_eq!(cache.stats(), CacheStats { hits: 1, misses: 1 });
    }

    #[test]
    fn the_encoding_is_part_of_the_key() {
        let cache = CountCache::new(100);
        let text = "Größenverhältnisse der Bevölkerungsentwicklung ".repeat(4);
        for encoding in Encoding::ALL {
            assert_eq!(
                cache.text_tokens(encoding, &text),
                count::text_tokens(encoding, &text),
                "{encoding}"
            );
        }
        assert_eq!(cache.stats(), CacheStats { hits: 0, misses: 4 });
    }

    #[test]
    fn short_texts_bypass_the_cache() {
        let cache = CountCache::new(100);
        let short = "x".repeat(MIN_CACHED_BYTES - 1);
        cache.text_tokens(Encoding::O200kBase, &short);
        cache.text_tokens(Encoding::O200kBase, &short);
        assert_eq!(cache.stats(), CacheStats::default());
    }

    #[test]
    fn a_disabled_cache_counts_directly() {
        let cache = CountCache::disabled();
        assert!(!cache.is_enabled());
        let text = long("again");
        for _ in 0..2 {
            assert_eq!(
                cache.text_tokens(Encoding::Cl100kBase, &text),
                count::text_tokens(Encoding::Cl100kBase, &text)
            );
        }
        assert_eq!(cache.stats(), CacheStats::default());
    }

    #[test]
    fn a_repeated_system_prompt_hits_even_when_the_user_message_differs() {
        let cache = CountCache::new(100);
        let system = long("You are a careful assistant.");
        for question in ["first question", "a different, second question"] {
            let chat = [
                json!({"role": "system", "content": system}),
                json!({"role": "user", "content": question}),
            ];
            assert_eq!(
                cache.chat_tokens(Encoding::O200kBase, &chat),
                count::chat_tokens(Encoding::O200kBase, &chat)
            );
        }
        assert_eq!(cache.stats(), CacheStats { hits: 1, misses: 1 });
    }

    #[test]
    fn cached_and_uncached_counts_agree_on_every_shape_of_message() {
        let cache = CountCache::new(1_000);
        let text = long("Bonjour, ça va? 漢字 🦀 <|endoftext|>");
        let chat = [
            json!({"role": "system", "content": text, "name": long("alice")}),
            json!({"role": "user", "content": [
                {"type": "text", "text": text},
                {"type": "image_url", "image_url": {"url": long("data:image/png;base64,AAAA")}},
                {"type": "refusal", "refusal": long("no")},
            ]}),
            json!({"role": "assistant", "content": null, "tool_calls": [
                {"id": "call_1", "type": "function", "function": {"name": "lookup", "arguments": long("{\"q\":1}")}},
            ], "function_call": {"name": "f", "arguments": long("[]")}}),
            json!(42),
        ];
        for encoding in Encoding::ALL {
            let expected = count::chat_tokens(encoding, &chat);
            assert_eq!(cache.chat_tokens(encoding, &chat), expected, "{encoding} cold");
            assert_eq!(cache.chat_tokens(encoding, &chat), expected, "{encoding} warm");
            assert_eq!(
                cache.tokens(encoding, &CountInput::Text(text.clone())),
                count::text_tokens(encoding, &text)
            );
        }
        assert!(cache.stats().hits > 0);
    }

    #[test]
    fn tool_definitions_are_cached_one_per_definition_and_never_collide_with_texts() {
        let cache = CountCache::new(100);
        let tool = json!({"type": "function", "function": {"name": "lookup", "description": long("Look it up"),
            "parameters": {"type": "object", "properties": {"q": {"type": "string", "description": "query"}}}}});
        let other =
            json!({"name": "search", "description": long("Search"), "input_schema": {"type": "object"}});
        let tools = [tool.clone(), other];
        for encoding in Encoding::ALL {
            let expected = tools::tools_tokens(encoding, &tools);
            assert_eq!(cache.tools_tokens(encoding, &tools), expected, "{encoding} cold");
            assert_eq!(cache.tools_tokens(encoding, &tools), expected, "{encoding} warm");
        }
        assert_eq!(cache.stats(), CacheStats { hits: 8, misses: 8 });
        // The definition's own JSON as a text is counted as a text, not answered with the definition's count.
        let json = tools::compact(&tool);
        assert_eq!(
            cache.text_tokens(Encoding::O200kBase, &json),
            count::text_tokens(Encoding::O200kBase, &json)
        );
        assert_eq!(cache.stats().misses, 9);
    }

    #[test]
    fn a_chat_input_counts_messages_and_tools() {
        let cache = CountCache::new(100);
        let messages = vec![json!({"role": "user", "content": "Hi"})];
        let tools = vec![json!({"type": "function", "function": {"name": "f"}})];
        let input = CountInput::Chat {
            messages: messages.clone(),
            tools: tools.clone(),
        };
        assert_eq!(
            cache.tokens(Encoding::O200kBase, &input),
            count::prompt_tokens(Encoding::O200kBase, &messages, &tools)
        );
    }

    #[test]
    fn the_cache_is_bounded() {
        let cache = CountCache::new(10);
        for i in 0..200 {
            cache.text_tokens(Encoding::O200kBase, &long(&i.to_string()));
        }
        let entries = cache.entries.as_ref().unwrap();
        entries.run_pending_tasks();
        assert!(entries.entry_count() <= 10, "{}", entries.entry_count());
    }
}
