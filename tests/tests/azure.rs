//! Azure OpenAI instances on the real stack: an OpenAI client's request reaches the deployment of its model
//! (`/openai/deployments/{deployment}/chat/completions?api-version=…`) with the instance's key in `api-key` —
//! never the client's key, never `Authorization` — whole and streamed, and is billed once, as the model the
//! deployment runs, with provider `azure_openai`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::time::Duration;

use serde_json::{Value, json};
use tollgate_tests::mock_provider::reported_usage;
use tollgate_tests::stack::{CONSUMERS, PROVIDER_KEY, Stack, StackOptions};

const AZURE: &str = r#"
[[instances]]
name = "azure-east"
provider = "azure_openai"
endpoint = "{mock_origin}"
api_key_env = "PROVIDER_KEY"
api_version = "2024-10-21"
deployments = { "gpt-4o" = "prod-gpt4o-east" }
[[routes]]
name = "gpt-4o"
models = ["gpt-4o"]
targets = [{ instance = "azure-east" }]
"#;

async fn chat(stack: &Stack, stream: bool) -> (u16, String, Vec<u8>) {
    let body = json!({
        "model": "gpt-4o", "stream": stream,
        "messages": [{"role": "user", "content": "Say hello from Azure."}]
    });
    let auth = format!("Bearer {}", CONSUMERS[0].2);
    let reply = stack
        .post_json("/v1/chat/completions", &[("authorization", auth.as_str())], &body)
        .await;
    (reply.status, reply.request_id, reply.body)
}

#[actix_rt::test]
async fn a_chat_completion_reaches_the_models_deployment_with_the_api_key_and_is_billed_once() {
    let stack = Stack::start(StackOptions {
        extra_toml: AZURE.into(),
        ..StackOptions::default()
    })
    .await;
    let (status, request_id, bytes) = chat(&stack, false).await;
    assert_eq!(status, 200, "{}", String::from_utf8_lossy(&bytes));
    let answer: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(answer["object"], "chat.completion");

    let received = &stack.mock.received()[0];
    assert_eq!(
        received.path,
        "/openai/deployments/prod-gpt4o-east/chat/completions"
    );
    assert_eq!(received.query, "api-version=2024-10-21");
    assert_eq!(
        received.header("api-key"),
        Some(PROVIDER_KEY),
        "the instance's key"
    );
    assert_eq!(received.header("authorization"), None, "never the client's key");

    let rows = stack.wait_for_usage_rows(1, Duration::from_secs(30)).await;
    let row = rows
        .iter()
        .find(|r| r["request_id"] == request_id.as_str())
        .expect("a usage row");
    let (prompt, completion, _) = reported_usage(&received.body["messages"]);
    assert_eq!(row["provider"], "azure_openai");
    assert_eq!(row["instance"], "azure-east");
    assert_eq!(row["usage_source"], "provider");
    assert_eq!(
        (row["prompt_tokens"].as_u64(), row["completion_tokens"].as_u64()),
        (Some(prompt.into()), Some(completion.into()))
    );
    assert_eq!(rows.len(), 1);
    stack.stop().await;
}

#[actix_rt::test]
async fn a_streamed_chat_completion_through_azure_is_relayed_and_billed_from_its_usage_chunk() {
    let stack = Stack::start(StackOptions {
        extra_toml: AZURE.into(),
        ..StackOptions::default()
    })
    .await;
    let (status, request_id, bytes) = chat(&stack, true).await;
    assert_eq!(status, 200);
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.trim_end().ends_with("data: [DONE]"), "{text}");
    let received = &stack.mock.received()[0];
    assert_eq!(
        received.path,
        "/openai/deployments/prod-gpt4o-east/chat/completions"
    );
    assert_eq!(
        received.body["stream_options"]["include_usage"], true,
        "the gateway asks Azure for the usage chunk to bill from"
    );
    let rows = stack.wait_for_usage_rows(1, Duration::from_secs(30)).await;
    let row = rows
        .iter()
        .find(|r| r["request_id"] == request_id.as_str())
        .expect("a usage row");
    let (prompt, completion, _) = reported_usage(&received.body["messages"]);
    assert_eq!(row["provider"], "azure_openai");
    assert_eq!(row["stream"], 1);
    assert_eq!(
        (row["prompt_tokens"].as_u64(), row["completion_tokens"].as_u64()),
        (Some(prompt.into()), Some(completion.into()))
    );
    stack.stop().await;
}
