//! Fuzzes the stream tee's reading of an upstream stream: SSE framing ([`tollgate_gateway::metering::sse`]) and
//! what a stream consumed ([`tollgate_gateway::metering::stream_usage`]), for OpenAI and Anthropic streams, with
//! the bytes cut into network reads at arbitrary points.
//!
//! Input: one flags byte (bit 0: Anthropic instead of OpenAI; bits 1–2: the event size limit, 4 MiB as in the tee
//! or a small one), one byte `n`, `n` chunk lengths (used in turn, 0 being an empty read), then the stream's
//! bytes. Each way of feeding also computes what the tee forwards when it strips the usage-only chunk.
//!
//! Invariants beyond "no panic":
//! - the events, the remainder and whether the stream fails do not depend on how it was cut (fed whole, or in
//!   the chunks given);
//! - the events returned plus the remainder are exactly the bytes pushed;
//! - the meter reads the same usage, text, model, chunk count and end from either cut;
//! - the bytes the tee forwards with the usage chunk stripped are the stream minus the usage-only events, and
//!   the stream itself when it has none;
//! - billed usage is consistent: `final_usage` is `provider_usage` when present, an Anthropic total is prompt
//!   plus completion, cached prompt tokens are part of the prompt.

use bytes::Bytes;
use tollgate_gateway::metering::sse::{EventSplitter, parse_event};
use tollgate_gateway::metering::stream_usage::{Observed, StreamMeter};
use tollgate_gateway::protocol::{Endpoint, Provider};
use tollgate_gateway::protocol::usage::Usage;

/// The tee's limit (`pipeline::stream::MAX_EVENT_BYTES`).
const TEE_MAX_EVENT_BYTES: usize = 4 << 20;

/// What one way of feeding the stream produced.
#[derive(Debug, PartialEq, Eq)]
struct Run {
    events: Vec<Bytes>,
    observed: Vec<Observed>,
    /// What the tee sends the client when it strips the usage chunk.
    forwarded: Vec<u8>,
    remainder: Vec<u8>,
    failed: bool,
    usage: Option<Usage>,
    final_usage: Option<Usage>,
    model: Option<String>,
    text: String,
    chunks: u64,
    done: bool,
}

fn feed(provider: Provider, limit: usize, chunks: &[&[u8]]) -> Run {
    let mut splitter = EventSplitter::new(limit);
    let mut meter = StreamMeter::new(provider, Endpoint::ChatCompletions);
    let mut events = Vec::new();
    let mut observed = Vec::new();
    let mut forwarded = Vec::new();
    let mut failed = false;
    let mut take = |raw: Bytes, meter: &mut StreamMeter, forwarded: &mut Vec<u8>| {
        let seen = meter.observe(&parse_event(&raw));
        if seen != Observed::UsageOnly {
            forwarded.extend_from_slice(&raw);
        }
        observed.push(seen);
        events.push(raw);
    };
    for chunk in chunks {
        match splitter.push(chunk) {
            Ok(found) => {
                for raw in found {
                    take(raw, &mut meter, &mut forwarded);
                }
            }
            Err(_) => {
                failed = true;
                break;
            }
        }
    }
    if !failed {
        if let Some(raw) = splitter.finish() {
            take(raw, &mut meter, &mut forwarded);
        }
        forwarded.extend_from_slice(splitter.remainder());
    }
    Run {
        events,
        observed,
        forwarded,
        remainder: splitter.remainder().to_vec(),
        failed,
        usage: meter.provider_usage(),
        final_usage: meter.final_usage(),
        model: meter.served_model().map(str::to_owned),
        text: meter.completion_text().to_owned(),
        chunks: meter.chunks(),
        done: meter.saw_done(),
    }
}

fn check_usage(provider: Provider, usage: &Usage) {
    if let Some(cached) = usage.cached_prompt_tokens
        && provider == Provider::Anthropic
    {
        assert!(
            cached <= usage.prompt_tokens,
            "cached tokens beyond the prompt: {usage:?}"
        );
    }
    if provider == Provider::Anthropic {
        assert_eq!(
            usage.total_tokens,
            usage.prompt_tokens.saturating_add(usage.completion_tokens),
            "an Anthropic total is prompt plus completion"
        );
    }
}

/// Runs one input; panics when an invariant does not hold.
pub fn run(data: &[u8]) {
    let Some((&flags, rest)) = data.split_first() else {
        return;
    };
    let Some((&n, rest)) = rest.split_first() else {
        return;
    };
    let n = usize::from(n).min(rest.len());
    let (lengths, stream) = rest.split_at(n);
    let provider = if flags & 1 == 0 {
        Provider::Openai
    } else {
        Provider::Anthropic
    };
    let limit = match (flags >> 1) & 3 {
        0 => TEE_MAX_EVENT_BYTES,
        1 => 64,
        2 => 1024,
        _ => 7,
    };

    let mut cut: Vec<&[u8]> = Vec::new();
    let mut at = 0;
    let mut i = 0;
    while at < stream.len() {
        let len = lengths
            .get(i % lengths.len().max(1))
            .map_or(stream.len(), |&l| usize::from(l));
        let end = (at + len).min(stream.len());
        cut.push(&stream[at..end]);
        at = end;
        i += 1;
        if lengths.iter().all(|&l| l == 0) && i > 4 {
            // Only empty reads: push the rest in one piece after a few of them.
            cut.push(&stream[at..]);
            break;
        }
    }

    let whole = feed(provider, limit, &[stream]);
    let pieces = feed(provider, limit, &cut);

    assert_eq!(
        whole.failed, pieces.failed,
        "failing must not depend on where the stream was cut"
    );
    if !whole.failed {
        assert_eq!(
            whole, pieces,
            "the events must not depend on where the stream was cut"
        );
        let mut joined: Vec<u8> = whole.events.iter().flat_map(|e| e.iter().copied()).collect();
        joined.extend_from_slice(&whole.remainder);
        assert_eq!(joined, stream, "events plus remainder must be the bytes pushed");
        if !whole.observed.contains(&Observed::UsageOnly) {
            assert_eq!(
                whole.forwarded, stream,
                "a stream without a usage-only chunk is forwarded unchanged"
            );
        }
        assert!(
            whole.events.iter().all(|e| e.len() <= limit),
            "an event beyond the limit was returned"
        );
        assert_eq!(whole.done, whole.observed.contains(&Observed::Done));
        assert!(whole.chunks <= whole.events.len() as u64);
    }
    for run in [&whole, &pieces] {
        if let Some(final_usage) = run.final_usage {
            assert_eq!(
                Some(final_usage),
                run.usage,
                "final usage is the provider's usage"
            );
        }
        if let Some(usage) = &run.usage {
            check_usage(provider, usage);
        }
        if run.model.as_deref() == Some("") {
            panic!("an empty served model was kept");
        }
    }
}
