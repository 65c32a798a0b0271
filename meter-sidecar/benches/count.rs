//! Counting speed of the meter sidecar: tokenizer throughput, the latency of 1 KB and 100 KB prompts with and
//! without the count cache, and the text size from which caching pays (`MIN_CACHED_BYTES`).
//!
//! `cargo bench -p tollgate-meter-sidecar --bench count`; the figures and the machine are in `BENCHMARKS.md`.

use std::hint::black_box;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use criterion::{BatchSize, BenchmarkId, Criterion, Throughput, criterion_group, criterion_main};
use serde_json::{Value, json};
use tollgate_meter_sidecar::cache::CountCache;
use tollgate_meter_sidecar::count;
use tollgate_meter_sidecar::encoding::Encoding;

/// Prompt-like text: prose, a code fragment, numbers, punctuation and some non-English words.
const PARAGRAPH: &str = "Tollgate meters every request that goes through the gateway: the prompt is estimated \
before forwarding and the completion is counted when the stream ends. Rules: 1) answer in at most 3 sentences; \
2) cite the section, e.g. \"Configuration > meter\"; 3) never invent a price. Prices (EUR/1M tokens): 0.15 in, \
0.60 out.\n```rust\nfn settle(usage: &Usage) -> Result<u64, Error> { Ok(usage.prompt + usage.completion) }\n```\n\
Größenverhältnisse, naïve café, 東京, Привет — and an emoji 🦀.\n\n";

/// Exactly `bytes` bytes (rounded down to a char boundary) of numbered paragraphs, so no two are identical.
fn text_of(bytes: usize) -> String {
    let mut text = String::with_capacity(bytes + PARAGRAPH.len());
    let mut n = 0;
    while text.len() < bytes {
        text.push_str(&format!("[{n}] {PARAGRAPH}"));
        n += 1;
    }
    let mut cut = bytes;
    while !text.is_char_boundary(cut) {
        cut -= 1;
    }
    text.truncate(cut);
    text
}

/// A chat of about `bytes` bytes: a system prompt of three quarters, a user message of one quarter.
fn chat_of(bytes: usize) -> Vec<Value> {
    let text = text_of(bytes);
    let mut split = bytes * 3 / 4;
    while !text.is_char_boundary(split) {
        split -= 1;
    }
    let (system, user) = text.split_at(split);
    vec![
        json!({"role": "system", "content": system}),
        json!({"role": "user", "content": user}),
    ]
}

fn size_label(bytes: usize) -> String {
    if bytes >= 1024 {
        format!("{}KB", bytes / 1024)
    } else {
        format!("{bytes}B")
    }
}

/// Tokens per second of plain text counting, per encoding (criterion's `elem/s` is tokens/s).
fn throughput(c: &mut Criterion) {
    let text = text_of(100 * 1024);
    let mut group = c.benchmark_group("throughput_text_100KB");
    for encoding in [Encoding::O200kBase, Encoding::Cl100kBase] {
        let tokens = count::text_tokens(encoding, &text);
        group.throughput(Throughput::Elements(tokens as u64));
        group.bench_function(encoding.name(), |b| {
            b.iter(|| count::text_tokens(encoding, black_box(&text)))
        });
    }
    group.finish();
}

/// One prompt's latency, o200k_base, through a disabled cache (every count tokenizes), a warm one (every
/// text a hit), and a warm one that has the system prompt but not the user turn.
fn latency(c: &mut Criterion) {
    let encoding = Encoding::O200kBase;
    let uncached = CountCache::disabled();
    let cached = CountCache::new(10_000);
    let mut group = c.benchmark_group("latency");
    for bytes in [1024, 100 * 1024] {
        let text = text_of(bytes);
        let chat = chat_of(bytes);
        cached.text_tokens(encoding, &text);
        cached.chat_tokens(encoding, &chat);
        for (mode, cache) in [("uncached", &uncached), ("cached", &cached)] {
            let size = size_label(bytes);
            group.bench_function(BenchmarkId::new(format!("text_{mode}"), &size), |b| {
                b.iter(|| cache.text_tokens(encoding, black_box(&text)))
            });
            group.bench_function(BenchmarkId::new(format!("chat_{mode}"), &size), |b| {
                b.iter(|| cache.chat_tokens(encoding, black_box(&chat)))
            });
        }
        // The common case: the system prompt is cached, the user turn (a quarter of the bytes) is new.
        let unique = AtomicU64::new(0);
        group.bench_function(
            BenchmarkId::new("chat_system_cached_new_user_turn", size_label(bytes)),
            |b| {
                b.iter_batched(
                    || {
                        let mut fresh = chat.clone();
                        let n = unique.fetch_add(1, Ordering::Relaxed);
                        if let Some(Value::String(user)) = fresh[1].get_mut("content") {
                            user.insert_str(0, &format!("{n:016}"));
                        }
                        fresh
                    },
                    |fresh| cached.chat_tokens(encoding, &fresh),
                    BatchSize::SmallInput,
                )
            },
        );
    }
    group.finish();
}

/// Where caching starts to pay: tokenizing directly, a cache hit, and a cache miss (hash, lookup, tokenize,
/// insert) for short texts, through a cache that caches every size.
fn threshold(c: &mut Criterion) {
    let encoding = Encoding::O200kBase;
    let mut group = c.benchmark_group("threshold");
    let unique = AtomicU64::new(0);
    for bytes in [16, 32, 64, 128, 256, 1024] {
        let text = text_of(bytes);
        let size = size_label(bytes);
        group.bench_function(BenchmarkId::new("tokenize", &size), |b| {
            b.iter(|| count::text_tokens(encoding, black_box(&text)))
        });
        let cache = CountCache::with_threshold(1_000_000, 0);
        cache.text_tokens(encoding, &text);
        group.bench_function(BenchmarkId::new("hit", &size), |b| {
            b.iter(|| cache.text_tokens(encoding, black_box(&text)))
        });
        group.bench_function(BenchmarkId::new("miss_and_insert", &size), |b| {
            b.iter_batched(
                || {
                    // Same length, new content: overwrite the head with a fresh number.
                    let n = unique.fetch_add(1, Ordering::Relaxed);
                    let head = format!("{n:016}");
                    let mut fresh = text.clone();
                    fresh.replace_range(..head.len(), &head);
                    fresh
                },
                |fresh| cache.text_tokens(encoding, &fresh),
                BatchSize::SmallInput,
            )
        });
    }
    group.finish();
}

criterion_group! {
    name = benches;
    // Short runs: the figures are for orders of magnitude on a shared 2-core machine, not for 1 % changes.
    config = Criterion::default()
        .sample_size(20)
        .warm_up_time(Duration::from_millis(500))
        .measurement_time(Duration::from_secs(2));
    targets = throughput, latency, threshold
}
criterion_main!(benches);
