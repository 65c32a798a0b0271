//! Hostile input at the edge, on the real stack: well over a thousand malformed and hostile requests, generated
//! systematically, to every metered endpoint (`/v1/chat/completions`, `/v1/completions`, `/v1/embeddings`,
//! `/v1/messages`) and to the admin API (`/admin/v1/...`) — bad JSON, deep nesting, crowded bodies, non-UTF-8,
//! wrong types, duplicate fields, huge and lying lengths, header injection, malformed request lines, slowloris
//! heads and bodies. Every request is written byte by byte on a raw TCP connection, so nothing is cleaned up by
//! a client library on the way.
//!
//! What it specifies: every answer is a 4xx, none a 5xx; an answer from the gateway's own code has the OpenAI
//! error shape (`{"error":{"message","type","param","code"}}`) on OpenAI's endpoints, Anthropic's
//! (`{"type":"error","error":{"type","message"}}`) on `/v1/messages`, and the admin API's shape on `/admin/v1`. Requests whose head HTTP itself cannot parse
//! (a header line with a bare CR, a Content-Length that is not a number, a head that never ends) are refused by
//! the HTTP layer before any of Tollgate's code runs: a 4xx with an empty body, or the connection closed
//! (counted apart). Meanwhile and afterwards the gateway serves normal requests correctly, and nothing hostile
//! was forwarded to the provider or billed. The counts are printed (`--nocapture`).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::collections::BTreeMap;
use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Mutex;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use serde_json::{Value, json};
use tollgate_tests::admin::{ADMIN_KEY, VIEWER_KEY, admin_toml};
use tollgate_tests::mock_provider::{as_messages, completion_text};
use tollgate_tests::stack::{CONSUMERS, MODEL, Stack, StackOptions};

const CLAUDE: &str = r#"
[[instances]]
name = "claude"
provider = "anthropic"
endpoint = "{mock}"
api_key_env = "PROVIDER_KEY"
[[routes]]
name = "claude"
models = ["claude-sonnet"]
targets = [{ instance = "claude" }]
"#;

/// How long the gateway waits for a body in this test (`server.body_read_timeout`).
const BODY_READ_TIMEOUT: Duration = Duration::from_secs(2);

/// Which API a request is for: the shape its refusals must have.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Api {
    Gateway,
    Admin,
}

/// How the bytes go out.
#[derive(Debug, Clone, Copy)]
enum Pace {
    /// All at once.
    AtOnce,
    /// The first `head` bytes at once, then the rest one byte every `gap`, for at most `for_at_most`.
    Trickle {
        head: usize,
        gap: Duration,
        for_at_most: Duration,
    },
}

/// One hostile request.
#[derive(Debug, Clone)]
struct Case {
    label: String,
    api: Api,
    /// The HTTP layer may refuse it before Tollgate's code runs (an empty-bodied 4xx, or a closed connection).
    protocol: bool,
    bytes: Vec<u8>,
    pace: Pace,
}

/// What came back.
#[derive(Debug)]
struct Answer {
    status: Option<u16>,
    content_type: String,
    body: Vec<u8>,
}

/// A request with a `Content-Length` that tells the truth (the lying ones are written out where they are made).
fn request(method: &str, path: &str, headers: &[(&str, &[u8])], body: &[u8]) -> Vec<u8> {
    let mut out = format!("{method} {path} HTTP/1.1\r\nHost: tollgate\r\nConnection: close\r\n").into_bytes();
    for (name, value) in headers {
        out.extend_from_slice(name.as_bytes());
        out.extend_from_slice(b": ");
        out.extend_from_slice(value);
        out.extend_from_slice(b"\r\n");
    }
    out.extend_from_slice(format!("Content-Length: {}\r\n", body.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out
}

/// The metered endpoints, each with a model it routes and its prompt field.
const ENDPOINTS: [(&str, &str, &str); 4] = [
    ("/v1/chat/completions", MODEL, "messages"),
    ("/v1/completions", MODEL, "prompt"),
    ("/v1/embeddings", MODEL, "input"),
    ("/v1/messages", "claude-sonnet", "messages"),
];

fn bearer() -> String {
    format!("Bearer {}", CONSUMERS[0].2)
}

/// A valid body for an endpoint.
fn valid(path: &str, model: &str, field: &str) -> Value {
    let prompt = if field == "messages" {
        json!([{"role": "user", "content": "hello"}])
    } else {
        json!("hello")
    };
    let mut body = json!({"model": model, field: prompt});
    if path == "/v1/messages" {
        body["max_tokens"] = json!(16);
    }
    body
}

/// Bodies that are not JSON, or not a JSON object.
fn bad_json() -> Vec<(String, Vec<u8>)> {
    let texts: &[&str] = &[
        "",
        " ",
        "{",
        "}",
        "{\"model\":",
        "{\"model\":\"gpt-4o-mini\"",
        "{\"model\":\"gpt-4o-mini\",}",
        "{'model':'gpt-4o-mini'}",
        "{model:\"gpt-4o-mini\"}",
        "{\"model\":\"gpt-4o-mini\"}}",
        "{\"model\":\"gpt-4o-mini\"}{\"model\":\"x\"}",
        "{\"model\":\"gpt-4o-mini\"} trailing",
        "{\"model\":NaN}",
        "{\"model\":Infinity}",
        "{\"model\":\"gpt-4o-mini\" /* comment */}",
        "{\"model\":\"unterminated}",
        "{\"model\":\"bad escape \\x41\"}",
        "{\"model\":\"lone surrogate \\ud800\"}",
        "{\"model\":\"control \u{1}char\"}",
        "{\"model\":01}",
        "{\"model\":1e999999}",
        "{\"a\":[1,2,]}",
        "[]",
        "[1]",
        "1",
        "\"a string\"",
        "null",
        "true",
        "\u{feff}{\"model\":\"gpt-4o-mini\"}",
        "<xml/>",
        "model=gpt-4o-mini&messages=hi",
    ];
    texts
        .iter()
        .enumerate()
        .map(|(i, t)| (format!("bad-json-{i}"), t.as_bytes().to_vec()))
        .collect()
}

/// Bodies that are not UTF-8.
fn not_utf8(model: &str) -> Vec<(String, Vec<u8>)> {
    let wrap = |bytes: &[u8]| {
        let mut out =
            format!("{{\"model\":\"{model}\",\"messages\":[{{\"role\":\"user\",\"content\":\"").into_bytes();
        out.extend_from_slice(bytes);
        out.extend_from_slice(b"\"}]}");
        out
    };
    vec![
        ("utf8-ff".into(), wrap(b"\xff\xfe")),
        ("utf8-continuation".into(), wrap(b"a\x80b")),
        ("utf8-overlong".into(), wrap(b"\xc0\xaf")),
        ("utf8-surrogate".into(), wrap(b"\xed\xa0\x80")),
        ("utf8-latin1".into(), wrap(b"caf\xe9")),
        ("utf8-truncated".into(), wrap(b"\xe2\x82")),
        ("utf16-bom".into(), b"\xff\xfe{\x00}\x00".to_vec()),
        (
            "utf8-in-key".into(),
            format!("{{\"\u{0}\":1,\"model\":\"{model}\"}}").into_bytes(),
        ),
        ("binary".into(), (0u8..=255).collect()),
    ]
}

/// Bodies nested too deep, or holding too many values.
fn too_complex(valid: &Value) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    for depth in [65usize, 100, 127, 128, 129, 1_000, 100_000] {
        let nested = format!("{}{}", "[".repeat(depth), "]".repeat(depth));
        let mut text = valid.to_string();
        text.insert_str(text.len() - 1, &format!(",\"metadata\":{nested}"));
        out.push((format!("deep-arrays-{depth}"), text.into_bytes()));
        let objects = format!("{}1{}", "{\"a\":".repeat(depth), "}".repeat(depth));
        out.push((format!("deep-objects-{depth}"), objects.into_bytes()));
    }
    // Just over the default 1,048,576 values.
    let crowded = format!("{{\"metadata\":[{}0]}}", "0,".repeat(1 << 20));
    out.push(("crowded-numbers".into(), crowded.into_bytes()));
    let objects = format!("{{\"metadata\":[{}{{}}]}}", "{},".repeat(1 << 20));
    out.push(("crowded-objects".into(), objects.into_bytes()));
    out
}

/// Valid JSON objects with a field of the wrong type, a field missing, repeated or unknown to the route.
fn wrong_types(path: &str, valid: &Value, field: &str) -> Vec<(String, Vec<u8>)> {
    let mut out = Vec::new();
    let mut with = |label: String, key: &str, value: Option<Value>| {
        let mut body = valid.clone();
        match value {
            Some(v) => body[key] = v,
            None => {
                body.as_object_mut().unwrap().remove(key);
            }
        }
        out.push((label, body.to_string().into_bytes()));
    };
    for (i, model) in [
        json!(7),
        json!([]),
        json!({}),
        json!(null),
        json!(""),
        json!(true),
        json!("no-such-model"),
    ]
    .into_iter()
    .enumerate()
    {
        with(format!("model-{i}"), "model", Some(model));
    }
    with("model-missing".into(), "model", None);
    with(format!("{field}-missing"), field, None);
    let prompts = if field == "messages" {
        vec![
            json!(5),
            json!("text"),
            json!({}),
            json!([]),
            json!(null),
            json!(true),
        ]
    } else {
        vec![
            json!({}),
            json!(null),
            json!(true),
            json!([{}]),
            json!([[1, "x"]]),
        ]
    };
    for (i, prompt) in prompts.into_iter().enumerate() {
        with(format!("{field}-{i}"), field, Some(prompt));
    }
    for (i, stream) in [json!("yes"), json!(1), json!([]), json!({})]
        .into_iter()
        .enumerate()
    {
        with(format!("stream-{i}"), "stream", Some(stream));
    }
    if path == "/v1/embeddings" {
        with("embeddings-stream".into(), "stream", Some(json!(true)));
    }
    // A repeated field the gateway reads: metered as one thing, served as another.
    let text = valid.to_string();
    for key in ["model", "stream", "max_tokens", "messages", "n"] {
        let mut dup = text.clone();
        dup.insert_str(dup.len() - 1, &format!(",\"{key}\":1,\"{key}\":2"));
        out.push((format!("duplicate-{key}"), dup.into_bytes()));
    }
    out
}

/// Every hostile request to the metered endpoints.
fn gateway_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let key = bearer();
    for (path, model, field) in ENDPOINTS {
        let valid = valid(path, model, field);
        let mut bodies = bad_json();
        bodies.extend(not_utf8(model));
        bodies.extend(too_complex(&valid));
        bodies.extend(wrong_types(path, &valid, field));
        for (label, body) in &bodies {
            for content_type in ["application/json", "text/plain"] {
                cases.push(Case {
                    label: format!("{path} {label} ({content_type})"),
                    api: Api::Gateway,
                    protocol: false,
                    bytes: request(
                        "POST",
                        path,
                        &[
                            ("Authorization", key.as_bytes()),
                            ("Content-Type", content_type.as_bytes()),
                        ],
                        body,
                    ),
                    pace: Pace::AtOnce,
                });
            }
        }
        let good = valid.to_string().into_bytes();
        // Keys: missing, malformed, wrong, huge, not UTF-8 — on an otherwise valid request.
        let long = format!("Bearer {}", "k".repeat(16 << 10));
        let keys: Vec<(&str, Vec<u8>)> = vec![
            ("Authorization", Vec::new()),
            ("Authorization", b"Bearer".to_vec()),
            ("Authorization", b"Bearer ".to_vec()),
            ("Authorization", b"Basic dXNlcjpwYXNz".to_vec()),
            ("Authorization", b"Bearer sk-team-a-wrong".to_vec()),
            ("Authorization", format!("{key}x").into_bytes()),
            ("Authorization", long.into_bytes()),
            ("Authorization", b"Bearer \xff\xfe\xfd".to_vec()),
            ("x-api-key", b"sk-team-a-wrong".to_vec()),
            ("X-Unrelated", b"1".to_vec()),
        ];
        for (i, (name, value)) in keys.iter().enumerate() {
            cases.push(Case {
                label: format!("{path} key-{i}"),
                api: Api::Gateway,
                protocol: false,
                bytes: request("POST", path, &[(name, value)], &good),
                pace: Pace::AtOnce,
            });
        }
        // Methods and paths next to the endpoint.
        for method in ["GET", "PUT", "DELETE", "PATCH", "OPTIONS"] {
            cases.push(Case {
                label: format!("{method} {path}"),
                api: Api::Gateway,
                protocol: false,
                bytes: request(method, path, &[("Authorization", key.as_bytes())], &good),
                pace: Pace::AtOnce,
            });
        }
        for (i, odd) in [
            format!("{path}/"),
            format!("{path}/x"),
            format!("{path}%ff%00"),
            format!("/{path}"),
            format!("{path}%00"),
            path.to_uppercase(),
            format!("/v1/../admin/v1/routes/{}", &path[4..]),
            format!("{path}/{}", "a".repeat(4000)),
        ]
        .iter()
        .enumerate()
        {
            cases.push(Case {
                label: format!("{path} path-{i}"),
                api: Api::Gateway,
                protocol: false,
                bytes: request("POST", odd, &[("Authorization", key.as_bytes())], &good),
                pace: Pace::AtOnce,
            });
        }
        // Lengths that lie, bodies too large, bodies that trickle.
        let auth = format!("Authorization: {key}\r\n");
        let head = |extra: &str| format!("POST {path} HTTP/1.1\r\nHost: tollgate\r\n{auth}{extra}\r\n");
        let lying: Vec<(&str, Vec<u8>, bool)> = vec![
            (
                "longer-than-sent",
                [head("Content-Length: 4096\r\n").as_bytes(), &good].concat(),
                false,
            ),
            (
                "longer-nothing-sent",
                head("Content-Length: 100\r\n").into_bytes(),
                false,
            ),
            (
                "huge-declared",
                [head("Content-Length: 1000000000000\r\n").as_bytes(), &good].concat(),
                false,
            ),
            (
                "over-max-declared",
                [head("Content-Length: 8388609\r\n").as_bytes(), b"{"].concat(),
                false,
            ),
            (
                "shorter-than-sent",
                [
                    head("Content-Length: 5\r\nConnection: close\r\n").as_bytes(),
                    &good,
                ]
                .concat(),
                false,
            ),
            (
                "zero-with-body",
                [
                    head("Content-Length: 0\r\nConnection: close\r\n").as_bytes(),
                    &good,
                ]
                .concat(),
                false,
            ),
            (
                "negative",
                [head("Content-Length: -1\r\n").as_bytes(), &good].concat(),
                true,
            ),
            (
                "not-a-number",
                [head("Content-Length: abc\r\n").as_bytes(), &good].concat(),
                true,
            ),
            (
                "overflowing",
                [
                    head("Content-Length: 99999999999999999999999\r\n").as_bytes(),
                    &good,
                ]
                .concat(),
                true,
            ),
            (
                "two-different",
                [
                    head("Content-Length: 5\r\nContent-Length: 6\r\n").as_bytes(),
                    &good,
                ]
                .concat(),
                true,
            ),
            (
                "length-and-chunked",
                [
                    head("Content-Length: 5\r\nTransfer-Encoding: chunked\r\n").as_bytes(),
                    b"5\r\nhello\r\n0\r\n\r\n",
                ]
                .concat(),
                true,
            ),
            (
                "chunked-bad-size",
                [
                    head("Transfer-Encoding: chunked\r\n").as_bytes(),
                    b"zz\r\nhello\r\n0\r\n\r\n",
                ]
                .concat(),
                true,
            ),
            (
                "chunked-overflowing-size",
                [
                    head("Transfer-Encoding: chunked\r\n").as_bytes(),
                    b"ffffffffffffffffffff\r\nhello\r\n",
                ]
                .concat(),
                true,
            ),
            (
                "chunked-unfinished",
                [head("Transfer-Encoding: chunked\r\n").as_bytes(), b"5\r\nhel"].concat(),
                false,
            ),
            (
                "unknown-encoding",
                [head("Transfer-Encoding: gzip\r\n").as_bytes(), &good].concat(),
                true,
            ),
        ];
        for (label, bytes, protocol) in lying {
            cases.push(Case {
                label: format!("{path} length-{label}"),
                api: Api::Gateway,
                protocol,
                bytes,
                pace: Pace::AtOnce,
            });
        }
        // A chunked body past 8 MiB: read until it is over the limit, then refused.
        let mut huge = head("Transfer-Encoding: chunked\r\n").into_bytes();
        let chunk = vec![b' '; 1 << 20];
        for _ in 0..9 {
            huge.extend_from_slice(format!("{:x}\r\n", chunk.len()).as_bytes());
            huge.extend_from_slice(&chunk);
            huge.extend_from_slice(b"\r\n");
        }
        huge.extend_from_slice(b"0\r\n\r\n");
        cases.push(Case {
            label: format!("{path} chunked-over-max"),
            api: Api::Gateway,
            protocol: false,
            bytes: huge,
            pace: Pace::AtOnce,
        });
        // Header injection and heads HTTP cannot parse.
        let injected: Vec<(&str, Vec<u8>, bool)> = vec![
            ("bare-lf-header", head("X-A: 1\nX-Injected: 2\r\nContent-Length: 1\r\n").into_bytes(), false),
            ("bare-cr-header", head("X-A: 1\rX-Injected: 2\r\nContent-Length: 1\r\n").into_bytes(), true),
            ("nul-in-value", head("X-A: a\0b\r\nContent-Length: 1\r\n").into_bytes(), true),
            ("space-in-name", head("X Bad: 1\r\nContent-Length: 1\r\n").into_bytes(), true),
            ("no-colon", head("NoColonHere\r\nContent-Length: 1\r\n").into_bytes(), true),
            ("obs-fold", head("X-Folded: a\r\n b\r\nContent-Length: 1\r\n").into_bytes(), true),
            ("injected-auth", head(&format!("Authorization: Bearer evil\r\nX: y\r\n{auth}Content-Length: 1\r\n")).into_bytes(), false),
            ("high-bytes-value", [head("").trim_end().as_bytes(), b"\r\nX-A: \xff\xfe\r\nContent-Length: 1\r\n\r\n"].concat(), false),
            ("high-bytes-name", [head("").trim_end().as_bytes(), b"\r\nX-\xff: 1\r\nContent-Length: 1\r\n\r\n"].concat(), true),
            ("huge-header", head(&format!("X-Huge: {}\r\nContent-Length: 1\r\n", "h".repeat(128 << 10))).into_bytes(), true),
            (
                "many-headers",
                head(&(0..300).map(|i| format!("X-{i}: {i}\r\n")).collect::<String>()).into_bytes(),
                true,
            ),
            ("expect-continue", head("Expect: 100-continue\r\nContent-Length: 1\r\n").into_bytes(), false),
            ("upgrade-h2c", head("Connection: Upgrade, HTTP2-Settings\r\nUpgrade: h2c\r\nHTTP2-Settings: AAMAAABkAARAAAAAAAIAAAAA\r\nContent-Length: 1\r\n").into_bytes(), true),
            ("upgrade-websocket", head("Connection: Upgrade\r\nUpgrade: websocket\r\nSec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\nContent-Length: 1\r\n").into_bytes(), true),
        ];
        for (label, mut bytes, protocol) in injected {
            bytes.push(b'{');
            cases.push(Case {
                label: format!("{path} header-{label}"),
                api: Api::Gateway,
                protocol,
                bytes,
                pace: Pace::AtOnce,
            });
        }
        let lines: Vec<&[u8]> = vec![
            b"POST  /v1/chat/completions HTTP/1.1\r\n",
            b"POST /v1/chat/completions HTTP/1.1 extra\r\n",
            b"POST /v1/chat/completions\r\n",
            b"POST /v1/chat/completions HTTP/2.0\r\n",
            b"POST /v1/chat/completions HTTP/9.9\r\n",
            b"P@ST /v1/chat/completions HTTP/1.1\r\n",
            b"post /v1/chat/completions HTTP/1.1\r\n",
            b"POST /v1/chat/\xff\xfe HTTP/1.1\r\n",
            b"POST * HTTP/1.1\r\n",
            b"POST http://evil.example/v1/chat/completions HTTP/1.1\r\n",
            b"\x16\x03\x01\x02\x00\x01\x00\x01\xfc\x03\x03",
            b"\r\n\r\n\r\n",
        ];
        for (i, line) in lines.into_iter().enumerate() {
            let line = String::from_utf8_lossy(line).replace("/v1/chat/completions", path);
            let mut bytes = line.into_bytes();
            bytes
                .extend_from_slice(format!("Host: tollgate\r\n{auth}Content-Length: 1\r\n\r\n{{").as_bytes());
            cases.push(Case {
                label: format!("{path} request-line-{i}"),
                api: Api::Gateway,
                protocol: true,
                bytes,
                pace: Pace::AtOnce,
            });
        }
        // Slowloris: a body one byte at a time (the gateway's deadline), a head one byte at a time (HTTP's).
        cases.push(Case {
            label: format!("{path} slowloris-body"),
            api: Api::Gateway,
            protocol: false,
            bytes: request("POST", path, &[("Authorization", key.as_bytes())], &good),
            pace: Pace::Trickle {
                head: request("POST", path, &[("Authorization", key.as_bytes())], b"").len() + 14,
                gap: Duration::from_millis(300),
                for_at_most: Duration::from_secs(20),
            },
        });
        cases.push(Case {
            label: format!("{path} slowloris-head"),
            api: Api::Gateway,
            protocol: true,
            bytes: request(
                "POST",
                path,
                &[("Authorization", key.as_bytes()), ("X-Pad", &[b'p'; 64])],
                &good,
            ),
            pace: Pace::Trickle {
                head: 10,
                gap: Duration::from_millis(250),
                for_at_most: Duration::from_secs(20),
            },
        });
    }
    cases
}

/// Every hostile request to the admin API.
fn admin_cases() -> Vec<Case> {
    let mut cases = Vec::new();
    let collections = ["instances", "routes", "consumers", "limits", "prices"];
    let mut bodies = bad_json();
    bodies.extend(not_utf8(MODEL));
    for depth in [65usize, 128, 129, 10_000] {
        bodies.push((
            format!("deep-{depth}"),
            format!("{{\"targets\":{}{}}}", "[".repeat(depth), "]".repeat(depth)).into_bytes(),
        ));
    }
    bodies.push((
        "too-large".into(),
        format!("{{\"x\":\"{}\"}}", "a".repeat((1 << 20) + 10)).into_bytes(),
    ));
    for (i, body) in [
        json!({"endpoint": 5}),
        json!({"targets": "all"}),
        json!({"models": {}}),
        json!({"name": "other-name"}),
        json!({"keys": [{"id": "k", "sha256": "00"}]}),
        json!({"provider": "nope", "endpoint": "http://x"}),
        json!({"limit": -1}),
    ]
    .iter()
    .enumerate()
    {
        bodies.push((format!("wrong-type-{i}"), body.to_string().into_bytes()));
    }
    for collection in collections {
        let path = format!("/admin/v1/{collection}/hostile");
        for (label, body) in &bodies {
            for method in ["PUT", "PATCH"] {
                cases.push(Case {
                    label: format!("{method} {path} {label}"),
                    api: Api::Admin,
                    protocol: false,
                    bytes: request(method, &path, &[("X-API-KEY", ADMIN_KEY.as_bytes())], body),
                    pace: Pace::AtOnce,
                });
            }
        }
        for (i, (name, value)) in [
            ("X-API-KEY", Vec::new()),
            ("X-API-KEY", b"adm-ops-wrong".to_vec()),
            ("X-API-KEY", VIEWER_KEY.as_bytes().to_vec()),
            ("X-API-KEY", b"\xff\xfe".to_vec()),
            ("Authorization", format!("Bearer {ADMIN_KEY}").into_bytes()),
        ]
        .iter()
        .enumerate()
        {
            cases.push(Case {
                label: format!("PUT {path} key-{i}"),
                api: Api::Admin,
                protocol: false,
                bytes: request("PUT", &path, &[(name, value)], b"{}"),
                pace: Pace::AtOnce,
            });
        }
        let auth = format!("X-API-KEY: {ADMIN_KEY}\r\n");
        let head = |extra: &str| format!("PUT {path} HTTP/1.1\r\nHost: tollgate\r\n{auth}{extra}\r\n");
        for (label, bytes, protocol) in [
            (
                "longer-than-sent",
                format!("{}{{\"x\":", head("Content-Length: 4096\r\n")).into_bytes(),
                false,
            ),
            (
                "huge-declared",
                format!("{}{{", head("Content-Length: 1000000000000\r\n")).into_bytes(),
                false,
            ),
            (
                "not-a-number",
                format!("{}{{", head("Content-Length: abc\r\n")).into_bytes(),
                true,
            ),
            (
                "bare-cr",
                format!("{}{{", head("X-A: 1\rX-B: 2\r\nContent-Length: 1\r\n")).into_bytes(),
                true,
            ),
        ] {
            cases.push(Case {
                label: format!("PUT {path} {label}"),
                api: Api::Admin,
                protocol,
                bytes,
                pace: Pace::AtOnce,
            });
        }
    }
    let key: &[u8] = ADMIN_KEY.as_bytes();
    for (i, (method, path)) in [
        ("GET", "/admin/v1/nothing"),
        ("GET", "/admin/v1/routes/%FF%FE"),
        ("PUT", "/admin/v1/routes/%FF%FE"),
        ("GET", "/admin/v1/routes/a/b/c"),
        ("GET", "/admin/v1/routes/does-not-exist"),
        ("DELETE", "/admin/v1/routes/does-not-exist"),
        ("PATCH", "/admin/v1/routes/does-not-exist"),
        ("PATCH", "/admin/v1/prices/gpt-4o-mini@2020-01-01"),
        ("POST", "/admin/v1/routes"),
        ("POST", "/admin/v1/routes/x"),
        ("OPTIONS", "/admin/v1/routes"),
        ("TRACE", "/admin/v1/routes"),
        ("GET", "/admin/v2/routes"),
        ("GET", "/admin/v1/../../etc/passwd"),
        ("GET", "/admin/v1/history?limit=-1"),
        ("GET", "/admin/v1/history?limit=abc"),
        ("GET", "/admin/v1/history?limit=99999999999999999999"),
        ("GET", "/v1/chat/completions"),
    ]
    .iter()
    .enumerate()
    {
        let body: &[u8] = if *method == "GET" || *method == "DELETE" {
            b""
        } else {
            b"{}"
        };
        cases.push(Case {
            label: format!("admin path-{i} {method} {path}"),
            api: Api::Admin,
            protocol: false,
            bytes: request(method, path, &[("X-API-KEY", key)], body),
            pace: Pace::AtOnce,
        });
    }
    cases.push(Case {
        label: "admin slowloris-body".into(),
        api: Api::Admin,
        protocol: false,
        bytes: request(
            "PUT",
            "/admin/v1/routes/slow",
            &[("X-API-KEY", key)],
            b"{\"models\":[\"x\"]}",
        ),
        pace: Pace::Trickle {
            head: request("PUT", "/admin/v1/routes/slow", &[("X-API-KEY", key)], b"").len() + 4,
            gap: Duration::from_millis(300),
            for_at_most: Duration::from_secs(20),
        },
    });
    cases
}

/// Sends a case and reads its answer (skipping `100 Continue`), or notes that the connection closed first.
fn send(addr: &str, case: &Case) -> Answer {
    let mut stream = TcpStream::connect(addr).unwrap();
    stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
    stream.set_nodelay(true).unwrap();
    match case.pace {
        Pace::AtOnce => {
            // The server may answer (413, 400) and close before it has read everything: not an error here.
            let _ = stream.write_all(&case.bytes);
        }
        Pace::Trickle {
            head,
            gap,
            for_at_most,
        } => {
            let _ = stream.write_all(&case.bytes[..head.min(case.bytes.len())]);
            let until = Instant::now() + for_at_most;
            for byte in &case.bytes[head.min(case.bytes.len())..] {
                std::thread::sleep(gap);
                if Instant::now() > until || stream.write_all(&[*byte]).is_err() {
                    break;
                }
            }
        }
    }
    let mut answer = Vec::new();
    let mut buf = vec![0u8; 64 << 10];
    loop {
        match parse(&answer) {
            Some(done) if done.status != Some(100) => return done,
            Some(_) => {
                // Drop the `100 Continue` and read on; the body was already sent.
                let end = find(&answer, b"\r\n\r\n").unwrap();
                answer.drain(..end + 4);
                continue;
            }
            None => {}
        }
        match stream.read(&mut buf) {
            Ok(0) | Err(_) => break,
            Ok(n) => answer.extend_from_slice(&buf[..n]),
        }
    }
    parse(&answer).unwrap_or(Answer {
        status: None,
        content_type: String::new(),
        body: answer,
    })
}

fn find(haystack: &[u8], needle: &[u8]) -> Option<usize> {
    haystack.windows(needle.len()).position(|w| w == needle)
}

/// A whole response in `bytes`, when there is one.
fn parse(bytes: &[u8]) -> Option<Answer> {
    let end = find(bytes, b"\r\n\r\n")?;
    let head = String::from_utf8_lossy(&bytes[..end]);
    let mut lines = head.lines();
    let status = lines.next()?.split_whitespace().nth(1)?.parse().ok();
    let mut length = 0;
    let mut content_type = String::new();
    for line in lines {
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            } else if name.eq_ignore_ascii_case("content-type") {
                content_type = value.trim().to_owned();
            }
        }
    }
    let body = bytes.get(end + 4..end + 4 + length)?.to_vec();
    Some(Answer {
        status,
        content_type,
        body,
    })
}

/// Why an answer breaks the rule, if it does.
fn judge(case: &Case, answer: &Answer) -> Option<String> {
    let Some(status) = answer.status else {
        return (!case.protocol).then(|| "closed without an answer".to_owned());
    };
    if !(400..500).contains(&status) {
        return Some(format!("status {status}"));
    }
    if case.protocol && answer.body.is_empty() {
        return None;
    }
    let body: Value = match serde_json::from_slice(&answer.body) {
        Ok(body) => body,
        Err(_) => {
            return Some(format!(
                "not JSON ({}): {}",
                answer.content_type,
                String::from_utf8_lossy(&answer.body)
            ));
        }
    };
    if !answer.content_type.starts_with("application/json") {
        return Some(format!("content type {}", answer.content_type));
    }
    let error = &body["error"];
    // The path the gateway saw: the request line's target (some cases write it as an absolute URI, or with
    // odd spacing), without scheme and host.
    let request_line = case.bytes.split(|b| *b == b'\n').next().unwrap_or_default();
    let target = request_line
        .split(|b| *b == b' ')
        .filter(|part| !part.is_empty())
        .nth(1)
        .unwrap_or_default();
    let path = match target.windows(3).position(|w| w == b"://") {
        Some(at) => {
            let rest = &target[at + 3..];
            &rest[rest.iter().position(|b| *b == b'/').unwrap_or(rest.len())..]
        }
        None => target,
    };
    let anthropic = path.starts_with(b"/v1/messages");
    let shaped = error["message"].as_str().is_some_and(|m| !m.is_empty())
        && error["type"].is_string()
        && match case.api {
            Api::Gateway if anthropic => body["type"] == "error" && error.get("code").is_none(),
            Api::Gateway => error.get("param").is_some() && error.get("code").is_some(),
            Api::Admin => error["code"].is_string(),
        };
    (!shaped).then(|| format!("not the error shape: {body}"))
}

/// A normal chat request: must be 200 with the provider's completion.
async fn normal(stack: &Stack, n: usize) -> Result<(), String> {
    let body =
        json!({"model": MODEL, "messages": [{"role": "user", "content": format!("normal request {n}")}]});
    let reply = stack
        .post_json("/v1/chat/completions", &[("authorization", &bearer())], &body)
        .await;
    let answer = reply.json();
    let expected = completion_text(&as_messages(&body));
    if reply.status == 200 && answer["choices"][0]["message"]["content"] == expected.as_str() {
        Ok(())
    } else {
        Err(format!("normal request {n}: {} {}", reply.status, reply.text()))
    }
}

#[actix_rt::test]
async fn a_thousand_hostile_requests_to_the_api_and_the_admin_api_each_get_a_clear_4xx_and_the_gateway_keeps_serving()
 {
    let stack = Stack::start(StackOptions {
        quota_loop: false,
        extra_toml: format!("{}\n{CLAUDE}", admin_toml("config_topic = \"{config_topic}\"")),
        server_toml: format!("body_read_timeout = \"{}s\"", BODY_READ_TIMEOUT.as_secs()),
        ..StackOptions::default()
    })
    .await;
    let gateway = stack.gateway_url.trim_start_matches("http://").to_owned();
    let admin = stack
        .admin_url
        .clone()
        .unwrap()
        .trim_start_matches("http://")
        .to_owned();
    let mut cases = gateway_cases();
    cases.extend(admin_cases());
    let total = cases.len();
    assert!(total >= 1000, "only {total} cases");

    let done = std::sync::Arc::new(AtomicBool::new(false));
    let results: std::sync::Arc<Mutex<Vec<(Case, Answer)>>> = std::sync::Arc::default();
    let hostile = {
        let done = done.clone();
        let results = results.clone();
        actix_web::rt::task::spawn_blocking(move || {
            let next = AtomicUsize::new(0);
            std::thread::scope(|scope| {
                for _ in 0..24 {
                    scope.spawn(|| {
                        loop {
                            let i = next.fetch_add(1, Ordering::Relaxed);
                            let Some(case) = cases.get(i) else { break };
                            let addr = match case.api {
                                Api::Gateway => &gateway,
                                Api::Admin => &admin,
                            };
                            let answer = send(addr, case);
                            results.lock().unwrap().push((case.clone(), answer));
                        }
                    });
                }
            });
            done.store(true, Ordering::Release);
        })
    };
    // Normal requests all along: the gateway serves while it is being attacked.
    let mut served = 0;
    while !done.load(Ordering::Acquire) {
        normal(&stack, served).await.unwrap();
        served += 1;
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    hostile.await.unwrap();
    // And afterwards, on every endpoint.
    for n in 0..5 {
        normal(&stack, served + n).await.unwrap();
    }
    served += 5;
    for (path, model, field) in ENDPOINTS {
        let mut headers = vec![("authorization", bearer())];
        if path == "/v1/messages" {
            headers = vec![
                ("x-api-key", CONSUMERS[0].2.to_owned()),
                ("anthropic-version", "2023-06-01".into()),
            ];
        }
        let headers: Vec<(&str, &str)> = headers.iter().map(|(n, v)| (*n, v.as_str())).collect();
        let reply = stack.post_json(path, &headers, &valid(path, model, field)).await;
        assert_eq!(reply.status, 200, "{path}: {}", reply.text());
        served += 1;
    }

    let results = std::mem::take(&mut *results.lock().unwrap());
    let mut by_status: BTreeMap<String, usize> = BTreeMap::new();
    let mut broken = Vec::new();
    for (case, answer) in results.iter() {
        let key = match (case.api, answer.status) {
            (api, Some(status)) => format!("{api:?} {status}"),
            (api, None) => format!("{api:?} closed"),
        };
        *by_status.entry(key).or_default() += 1;
        if let Some(why) = judge(case, answer) {
            broken.push(format!("{}: {why}", case.label));
        }
    }
    let closed: Vec<&str> = results
        .iter()
        .filter(|(_, a)| a.status.is_none())
        .map(|(c, _)| c.label.as_str())
        .collect();
    let bare: Vec<String> = results
        .iter()
        .filter(|(_, a)| a.status.is_some() && a.body.is_empty())
        .map(|(c, a)| format!("{} {:?}", c.label, a.status))
        .collect();
    println!(
        "hostile requests sent: {total}; answered, by API and status: {by_status:?}; normal requests served \
         meanwhile and after: {served}\nanswered with an empty body (refused by the HTTP layer): {bare:?}\n\
         closed without an answer (HTTP could not parse the head): {closed:?}"
    );
    assert_eq!(results.len(), total);
    assert!(
        broken.is_empty(),
        "{} of {total} broke the rule:\n{}",
        broken.len(),
        broken.join("\n")
    );

    // Nothing hostile reached the provider, or the bill.
    assert_eq!(
        stack.mock.received().len(),
        served,
        "only the normal requests were forwarded"
    );
    let rows = stack.wait_for_usage_rows(served, Duration::from_secs(30)).await;
    actix_web::rt::time::sleep(Duration::from_secs(2)).await;
    let again = stack
        .wait_for_usage_rows(served + 1, Duration::from_secs(1))
        .await;
    assert_eq!(
        (rows.len(), again.len()),
        (served, served),
        "one usage event per normal request, none for the rest"
    );
    stack.stop().await;
}
