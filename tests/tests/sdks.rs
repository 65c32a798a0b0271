//! The official client SDKs, unchanged, against the gateway on the real stack: the OpenAI Python SDK against a
//! route answered by an Anthropic instance, the Anthropic Python SDK against a route answered by an OpenAI
//! instance, the OpenAI SDK against a route answered by a Gemini instance, the OpenAI SDK's Responses API
//! against a route failing over between OpenAI instances, and all of them against an Azure OpenAI instance — whole answers, streams, tools, errors (and Anthropic's token count).
//! Each request the providers worked on is billed once.
//!
//! The SDKs run from a virtual environment that `compose/sdks` makes (`compose/test` does it first), found
//! through `TOLLGATE_TEST_PYTHON` or at `~/.cache/tollgate/sdk-venv/bin/python`. The scripts are in `tests/sdk/`.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::path::PathBuf;
use std::time::Duration;

use serde_json::Value;
use tollgate_tests::mock_provider::Behaviour;
use tollgate_tests::mock_responses::responses_usage;
use tollgate_tests::stack::{CONSUMERS, MIXED_ROUTE, Stack, StackOptions};

const AZURE: &str = r#"
[[instances]]
name = "azure"
provider = "azure_openai"
endpoint = "{mock_origin}"
api_key_env = "PROVIDER_KEY"
api_version = "2024-10-21"
deployments = { "gpt-4o" = "prod-gpt4o" }
[[routes]]
name = "gpt-4o"
models = ["gpt-4o"]
paths = ["/v1/chat/completions", "/v1/messages", "/v1/responses"]
targets = [{ instance = "azure" }]
"#;

/// `gemini-2.5-flash` on a Gemini instance (the mock, as Google's `v1beta` API).
const GEMINI: &str = r#"
[[instances]]
name = "gemini"
provider = "gemini"
endpoint = "{mock}beta"
api_key_env = "PROVIDER_KEY"
[[routes]]
name = "gemini-2.5-flash"
models = ["gemini-2.5-flash"]
targets = [{ instance = "gemini" }]
"#;

/// `gpt-4.1-mini` on two OpenAI instances: `first` (the mock, preferred) and `second` (the second mock).
const FAILOVER: &str = r#"
[[instances]]
name = "first"
endpoint = "{mock}"
api_key_env = "PROVIDER_KEY"
[[instances]]
name = "second"
endpoint = "{mock2}"
api_key_env = "PROVIDER_KEY"
[[routes]]
name = "gpt-4.1-mini"
models = ["gpt-4.1-mini"]
targets = [{ instance = "first", priority = 2 }, { instance = "second", priority = 1 }]
"#;

/// The Python of the SDKs' virtual environment.
fn python() -> PathBuf {
    let path = std::env::var_os("TOLLGATE_TEST_PYTHON").map_or_else(
        || {
            let home = std::env::var_os("HOME").expect("HOME");
            PathBuf::from(home).join(".cache/tollgate/sdk-venv/bin/python")
        },
        PathBuf::from,
    );
    assert!(
        path.exists(),
        "the SDKs' Python is missing at {}: run compose/sdks (compose/test does), or set TOLLGATE_TEST_PYTHON",
        path.display()
    );
    path
}

/// Runs `tests/sdk/{script}` against the stack's gateway; the checks it reported, one JSON object each.
async fn run_sdk(stack: &Stack, script: &str, key: &str, model: &str) -> Vec<Value> {
    let script = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("sdk").join(script);
    let mut command = std::process::Command::new(python());
    command
        .arg(&script)
        .env("TOLLGATE_BASE", &stack.gateway_url)
        .env("TOLLGATE_KEY", key)
        .env("TOLLGATE_MODEL", model);
    let output = actix_web::rt::task::spawn_blocking(move || command.output())
        .await
        .unwrap()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
    assert!(
        output.status.success(),
        "{} failed: {}\n{stdout}\n{}",
        script.display(),
        output.status,
        String::from_utf8_lossy(&output.stderr)
    );
    println!("{stdout}");
    stdout.lines().map(|l| serde_json::from_str(l).unwrap()).collect()
}

fn checks(reported: &[Value]) -> Vec<&str> {
    reported.iter().map(|r| r["check"].as_str().unwrap()).collect()
}

async fn rows(stack: &Stack, expected: usize) -> Vec<Value> {
    let rows = stack.wait_for_usage_rows(expected, Duration::from_secs(30)).await;
    // Nothing more arrives: each request the providers worked on is billed once.
    actix_web::rt::time::sleep(Duration::from_millis(1500)).await;
    let again = stack.wait_for_usage_rows(expected, Duration::from_secs(5)).await;
    assert_eq!(again.len(), rows.len(), "{again:?}");
    rows
}

#[actix_rt::test]
async fn the_openai_sdk_is_served_by_claude_while_gpt_is_down() {
    let stack = Stack::start(StackOptions {
        extra_toml: MIXED_ROUTE.into(),
        second_mock: true,
        ..StackOptions::default()
    })
    .await;
    stack.mock.set_behaviour(Behaviour::Status {
        status: 503,
        retry_after: None,
    });
    let reported = run_sdk(&stack, "openai_client.py", CONSUMERS[0].2, "frontier").await;
    assert_eq!(
        checks(&reported),
        ["whole", "stream", "tools", "wrong key", "unknown model"]
    );
    // The tool call and its result went to Claude as Anthropic's tool_use and tool_result blocks.
    let claude = stack.mock2.as_ref().unwrap().received();
    let tools = claude
        .iter()
        .find(|r| r.body.get("tools").is_some())
        .expect("the tools request");
    assert_eq!(tools.body["tools"][0]["name"], "get_weather");
    assert!(tools.body["tools"][0]["input_schema"].is_object());
    let blocks = tools.body["messages"].to_string();
    assert!(
        blocks.contains("tool_use") && blocks.contains("tool_result"),
        "{blocks}"
    );

    let rows = rows(&stack, 3).await;
    assert_eq!(rows.len(), 3, "whole, stream and tools: {rows:?}");
    for row in &rows {
        assert_eq!(row["provider"], "anthropic");
        assert_eq!(row["model_served"], "claude-sonnet-4-5");
        assert_eq!(row["outcome"], "ok");
    }
    stack.stop().await;
}

#[actix_rt::test]
async fn the_anthropic_sdk_is_served_by_gpt_with_streams_tools_and_token_counts() {
    let stack = Stack::start(StackOptions {
        extra_toml: MIXED_ROUTE.into(),
        second_mock: true,
        ..StackOptions::default()
    })
    .await;
    let reported = run_sdk(&stack, "anthropic_client.py", CONSUMERS[1].2, "frontier").await;
    assert_eq!(
        checks(&reported),
        [
            "whole",
            "stream with tools",
            "count_tokens",
            "wrong key",
            "unknown model"
        ]
    );
    let gpt = stack.mock.received();
    let streamed = gpt
        .iter()
        .find(|r| r.body["stream"] == true)
        .expect("the streamed request");
    assert_eq!(streamed.body["tools"][0]["function"]["name"], "get_weather");
    let rows = rows(&stack, 2).await;
    assert_eq!(
        rows.len(),
        2,
        "whole and stream; a token count is not billed: {rows:?}"
    );
    for row in &rows {
        assert_eq!(row["provider"], "openai");
        assert_eq!(row["endpoint"], "/v1/messages");
    }
    stack.stop().await;
}

#[actix_rt::test]
async fn both_sdks_are_served_by_an_azure_openai_deployment() {
    let stack = Stack::start(StackOptions {
        extra_toml: AZURE.into(),
        ..StackOptions::default()
    })
    .await;
    let openai = run_sdk(&stack, "openai_client.py", CONSUMERS[0].2, "gpt-4o").await;
    assert_eq!(checks(&openai).len(), 5);
    let anthropic = run_sdk(&stack, "anthropic_client.py", CONSUMERS[1].2, "gpt-4o").await;
    assert_eq!(checks(&anthropic).len(), 5);
    let responses = run_sdk(&stack, "openai_responses_client.py", CONSUMERS[2].2, "gpt-4o").await;
    assert_eq!(checks(&responses).len(), 4);
    for received in stack.mock.received().iter().filter(|r| r.status == 200) {
        if received.path == "/openai/responses" {
            // Azure's Responses API takes the deployment as the body's model.
            assert_eq!(received.body["model"], "prod-gpt4o");
        } else {
            assert_eq!(received.path, "/openai/deployments/prod-gpt4o/chat/completions");
        }
        assert_eq!(received.query, "api-version=2024-10-21");
    }
    let rows = rows(&stack, 8).await;
    assert_eq!(
        rows.len(),
        8,
        "three OpenAI, two Anthropic and three Responses requests: {rows:?}"
    );
    assert!(rows.iter().all(|r| r["provider"] == "azure_openai"));
    assert_eq!(
        rows.iter().filter(|r| r["endpoint"] == "/v1/responses").count(),
        3
    );
    stack.stop().await;
}

#[actix_rt::test]
async fn the_openai_sdks_responses_api_fails_over_and_is_billed_from_response_completed() {
    let stack = Stack::start(StackOptions {
        extra_toml: FAILOVER.into(),
        second_mock: true,
        ..StackOptions::default()
    })
    .await;
    stack.mock.set_behaviour(Behaviour::Status {
        status: 503,
        retry_after: None,
    });
    let reported = run_sdk(
        &stack,
        "openai_responses_client.py",
        CONSUMERS[0].2,
        "gpt-4.1-mini",
    )
    .await;
    assert_eq!(
        checks(&reported),
        ["whole", "stream", "stream with tools", "wrong key"]
    );
    let second = stack.mock2.as_ref().unwrap().received();
    assert_eq!(second.len(), 3);
    assert!(second.iter().all(|r| r.path == "/v1/responses"));
    let rows = rows(&stack, 3).await;
    assert_eq!(rows.len(), 3, "whole, stream, stream with tools: {rows:?}");
    for row in &rows {
        assert_eq!(row["endpoint"], "/v1/responses");
        assert_eq!(row["instance"], "second");
        assert_eq!(row["attempt_count"], 2, "first's 503, then second");
        assert_eq!(row["outcome"], "ok");
        assert_eq!(row["usage_source"], "provider");
    }
    // Billed with the provider's figures: the usage of each response.
    let mut billed: Vec<(u64, u64)> = rows
        .iter()
        .map(|r| {
            (
                r["prompt_tokens"].as_u64().unwrap(),
                r["completion_tokens"].as_u64().unwrap(),
            )
        })
        .collect();
    let mut reported: Vec<(u64, u64)> = second
        .iter()
        .map(|r| {
            let (input, output, _, _) = responses_usage(&r.body);
            (u64::from(input), u64::from(output))
        })
        .collect();
    billed.sort_unstable();
    reported.sort_unstable();
    assert_eq!(billed, reported);
    stack.stop().await;
}

#[actix_rt::test]
async fn the_openai_sdk_is_served_by_gemini_with_streams_tools_and_errors() {
    let stack = Stack::start(StackOptions {
        extra_toml: GEMINI.into(),
        ..StackOptions::default()
    })
    .await;
    let reported = run_sdk(&stack, "openai_client.py", CONSUMERS[0].2, "gemini-2.5-flash").await;
    assert_eq!(
        checks(&reported),
        ["whole", "stream", "tools", "wrong key", "unknown model"]
    );
    let received = stack.mock.received();
    assert!(
        received
            .iter()
            .all(|r| r.path.starts_with("/v1beta/models/gemini-2.5-flash:")),
        "{:?}",
        received.iter().map(|r| &r.path).collect::<Vec<_>>()
    );
    // The tool call and its result went to Gemini as a functionCall and a functionResponse.
    let tools = received
        .iter()
        .find(|r| r.body.get("tools").is_some())
        .expect("the tools request");
    assert_eq!(
        tools.body["tools"][0]["functionDeclarations"][0]["name"],
        "get_weather"
    );
    let contents = tools.body["contents"].to_string();
    assert!(
        contents.contains("functionCall") && contents.contains("functionResponse"),
        "{contents}"
    );
    let rows = rows(&stack, 3).await;
    assert_eq!(rows.len(), 3, "whole, stream and tools: {rows:?}");
    for row in &rows {
        assert_eq!(row["provider"], "gemini");
        assert_eq!(row["model_served"], "gemini-2.5-flash");
        assert_eq!(row["outcome"], "ok");
        assert_eq!(row["usage_source"], "provider");
    }
    stack.stop().await;
}
