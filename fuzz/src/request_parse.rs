//! Fuzzes the reading of a client's request body ([`tollgate_gateway::protocol::request::ApiRequest`]) on each
//! metered endpoint — chat completions, completions, embeddings, Anthropic messages — and what the gateway derives
//! from it: the prompt it meters, the in-process prompt estimate, the output tokens reserved, and the body sent
//! upstream.
//!
//! Input: one byte choosing the endpoint (its value modulo 4, in [`Endpoint::ALL`] order; bit 2 makes the instance
//! rename the model), then the body as the client sent it.
//!
//! Invariants beyond "no panic":
//! - a parsed request has a non-empty model, and streams only on an endpoint that streams;
//! - the upstream body is the client's bytes unchanged when nothing needs rewriting;
//! - a rewritten upstream body parses again on the same endpoint, names the instance's model, streams as the
//!   client asked, asks for the usage chunk whenever the gateway needs it, and is metered as the same prompt.

use bytes::Bytes;
use tollgate_gateway::metering::sidecar::fallback_estimate;
use tollgate_gateway::protocol::Endpoint;
use tollgate_gateway::protocol::request::ApiRequest;

/// The model name an instance with its own name for the model is sent.
const OVERRIDE: &str = "instance-model-name";

/// Runs one input; panics when an invariant does not hold.
pub fn run(data: &[u8]) {
    let Some((&selector, body)) = data.split_first() else {
        return;
    };
    let endpoint = Endpoint::ALL[usize::from(selector % 4)];
    let rename = selector & 4 != 0;
    let raw = Bytes::copy_from_slice(body);
    let Ok(request) = ApiRequest::parse(endpoint, raw.clone()) else {
        return;
    };

    assert!(!request.model.is_empty(), "a parsed request without a model");
    assert!(
        !request.stream || endpoint != Endpoint::Embeddings,
        "embeddings never stream"
    );
    let estimate = fallback_estimate(&request.prompt());
    let _ = request.max_output_tokens();

    // Neither a new model nor the usage chunk to ask for: the client's bytes go upstream as they are.
    let unchanged = request.upstream_body(None, false).unwrap_or_default();
    assert_eq!(
        unchanged, raw,
        "an unchanged request must go upstream byte for byte"
    );
    let same_model = request
        .upstream_body(Some(&request.model), false)
        .unwrap_or_default();
    assert_eq!(
        same_model, raw,
        "renaming a model to its own name must not rewrite the body"
    );

    let model_override = rename.then_some(OVERRIDE);
    let upstream = match request.upstream_body(model_override, true) {
        Ok(upstream) => upstream,
        Err(error) => panic!("a parsed request could not be written upstream: {error}"),
    };
    let again = match ApiRequest::parse(endpoint, upstream) {
        Ok(again) => again,
        Err(error) => panic!("the body sent upstream does not parse again: {error}"),
    };
    let expected_model = model_override.unwrap_or(request.model.as_str());
    assert_eq!(
        again.model, expected_model,
        "the upstream body names the wrong model"
    );
    assert_eq!(
        again.stream, request.stream,
        "the upstream body streams differently"
    );
    let openai_stream = matches!(endpoint, Endpoint::ChatCompletions | Endpoint::Completions);
    if openai_stream && request.stream {
        assert!(
            again.client_wants_usage(),
            "a metered OpenAI stream must ask for the usage chunk"
        );
    }
    assert_eq!(
        again.max_output_tokens(),
        request.max_output_tokens(),
        "the output reservation changed"
    );
    assert_eq!(
        fallback_estimate(&again.prompt()),
        estimate,
        "the upstream body is metered differently"
    );
}
