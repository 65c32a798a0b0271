//! The settlement invariant on the real stack, as a leak matrix: every request the provider worked on is settled
//! and billed exactly once — one usage row per request that reached the upstream, whatever the client or the
//! upstream does — and never for less than the client received.
//!
//! Rows are the metered endpoints (chat whole and streamed, legacy completions, embeddings, Anthropic messages
//! whole and streamed, OpenAI Responses whole and streamed); columns are what can go wrong around a request (the client closes its socket with FIN
//! or RST while the provider works, stops reading, the upstream breaks off at a random byte, reports no usage,
//! answers a stream request with whole JSON, refuses with 429 or 503 and `Retry-After`, or is slower than the
//! instance's timeout). Every cell has its own route, model and instance, so its rows are told apart by
//! `model_requested` and its upstream requests by the model the mock received; the cells run one after the
//! other on one stack. For each cell:
//!
//! - the number of rows equals the number of requests the mock received (waited for until a deadline, then
//!   checked again a little later so that a late duplicate shows);
//! - no request id has two rows;
//! - every client that received a response head (and so an `x-request-id`) has a row with that request id,
//!   whose `completion_tokens` is at least what the client received: the final usage the answer reported to the
//!   client when it carried one (a whole body's `usage`, OpenAI's usage chunk, Anthropic's `message_delta`
//!   usage, `response.completed`'s usage), otherwise meter-sidecar's count of the completion text the client
//!   received — chat `content` and tool calls, legacy `text`, Anthropic `text_delta`, Responses output text and
//!   function calls — for the model it asked for. A client without a head
//!   received nothing (0 tokens); an error status carries no completion.
//!
//! Every mismatch of the whole matrix is collected and reported at the end in one table (run with
//! `--nocapture` to see it when it passes).

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::fmt::Write as _;
use std::time::{Duration, Instant};

use futures_util::StreamExt;
use serde_json::{Value, json};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpSocket, TcpStream};
use tollgate_tests::mock_provider::{Behaviour, MockProvider, long_event_text};
use tollgate_tests::stack::{CONSUMERS, Stack, StackOptions, http};

/// Gateway `[server]` settings the settlement guarantee needs:
///
/// - `send_timeout = "1s"`: how long a stream waits for a client that stopped reading before it is settled as
///   `client_cancelled` (the "stops reading" column waits a few seconds for that row);
/// - `drain_timeout`: the bound of a graceful stop.
const SETTLEMENT_SERVER_TOML: &str = "send_timeout = \"1s\"\ndrain_timeout = \"5s\"";

const PROMPT: &str = "Settle me exactly once: héllo wörld 🚀 日本語.";

/// How long a cell waits for its rows, and then how long for a row too many.
const ROWS_DEADLINE: Duration = Duration::from_secs(8);
const EXTRA_ROWS_GRACE: Duration = Duration::from_millis(600);

/// The metered endpoints, whole and streamed.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Row {
    ChatWhole,
    ChatStream,
    Completions,
    Embeddings,
    AnthropicWhole,
    AnthropicStream,
    ResponsesWhole,
    ResponsesStream,
}

const ROWS: [Row; 8] = [
    Row::ChatWhole,
    Row::ChatStream,
    Row::Completions,
    Row::Embeddings,
    Row::AnthropicWhole,
    Row::AnthropicStream,
    Row::ResponsesWhole,
    Row::ResponsesStream,
];

impl Row {
    fn name(self) -> &'static str {
        match self {
            Self::ChatWhole => "chat",
            Self::ChatStream => "chat-stream",
            Self::Completions => "completions",
            Self::Embeddings => "embeddings",
            Self::AnthropicWhole => "anthropic",
            Self::AnthropicStream => "anthropic-stream",
            Self::ResponsesWhole => "responses",
            Self::ResponsesStream => "responses-stream",
        }
    }

    fn path(self) -> &'static str {
        match self {
            Self::ChatWhole | Self::ChatStream => "/v1/chat/completions",
            Self::Completions => "/v1/completions",
            Self::Embeddings => "/v1/embeddings",
            Self::AnthropicWhole | Self::AnthropicStream => "/v1/messages",
            Self::ResponsesWhole | Self::ResponsesStream => "/v1/responses",
        }
    }

    fn anthropic(self) -> bool {
        matches!(self, Self::AnthropicWhole | Self::AnthropicStream)
    }

    fn stream(self) -> bool {
        matches!(
            self,
            Self::ChatStream | Self::AnthropicStream | Self::ResponsesStream
        )
    }

    fn responses(self) -> bool {
        matches!(self, Self::ResponsesWhole | Self::ResponsesStream)
    }

    /// The client's headers: consumer team-a with a bearer key for OpenAI, team-b with `x-api-key` for Anthropic.
    fn headers(self) -> Vec<(&'static str, String)> {
        if self.anthropic() {
            vec![
                ("x-api-key", CONSUMERS[1].2.to_owned()),
                ("anthropic-version", "2023-06-01".to_owned()),
            ]
        } else {
            vec![("authorization", format!("Bearer {}", CONSUMERS[0].2))]
        }
    }

    fn body(self, model: &str) -> Value {
        let messages = json!([{"role": "user", "content": PROMPT}]);
        match self {
            Self::ChatWhole => json!({"model": model, "messages": messages}),
            // The client asks for the usage chunk, so a stream that arrives whole tells it the provider's count;
            // a tool makes the mock stream tool-call arguments too.
            Self::ChatStream => json!({
                "model": model, "messages": messages, "stream": true,
                "stream_options": {"include_usage": true},
                "tools": [{"type": "function", "function": {"name": "get_weather", "parameters": {"type": "object"}}}]
            }),
            Self::Completions => json!({"model": model, "prompt": PROMPT, "max_tokens": 64}),
            Self::Embeddings => json!({"model": model, "input": PROMPT}),
            Self::AnthropicWhole | Self::AnthropicStream => json!({
                "model": model, "max_tokens": 64, "stream": self.stream(), "messages": messages
            }),
            // The streamed one has a tool, so the mock streams a function call's arguments too.
            Self::ResponsesWhole => json!({"model": model, "input": PROMPT, "max_output_tokens": 64}),
            Self::ResponsesStream => json!({
                "model": model, "stream": true, "instructions": "Answer briefly.",
                "input": [{"role": "user", "content": [{"type": "input_text", "text": PROMPT}]}],
                "tools": [{"type": "function", "name": "get_weather", "parameters": {"type": "object"}}]
            }),
        }
    }
}

/// What happens around a request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Column {
    Normal,
    /// The client closes its socket (FIN) while the provider works: whole answers during the mock's delay,
    /// streams after the first text arrived (the mock streams slowly).
    ClientFin,
    /// The same, with `SO_LINGER` 0: the close sends RST.
    ClientRst,
    /// Streams: a long stream whose client reads its head and first text, then nothing while it keeps the
    /// connection open. Whole answers: a big answer the client never reads.
    StopsReading,
    /// The upstream breaks the connection at a random byte of its answer.
    CutAtByte,
    /// The upstream reports no usage.
    NoUsage,
    /// Streams only: the upstream answers the stream request with a whole JSON body.
    JsonToStream,
    /// 429 with `Retry-After`.
    Status429,
    /// 503 with `Retry-After`.
    Status503,
    /// The upstream takes longer than the instance's timeout.
    SlowerThanTimeout,
}

const COLUMNS: [Column; 10] = [
    Column::Normal,
    Column::ClientFin,
    Column::ClientRst,
    Column::StopsReading,
    Column::CutAtByte,
    Column::NoUsage,
    Column::JsonToStream,
    Column::Status429,
    Column::Status503,
    Column::SlowerThanTimeout,
];

/// The mock's delay while a client leaves a whole request, and the instance timeout the slow upstream exceeds.
const WORKING_MILLIS: u64 = 1500;
const SHORT_TIMEOUT: &str = "300ms";

impl Column {
    fn name(self) -> &'static str {
        match self {
            Self::Normal => "normal",
            Self::ClientFin => "client-fin",
            Self::ClientRst => "client-rst",
            Self::StopsReading => "stops-reading",
            Self::CutAtByte => "cut-at-byte",
            Self::NoUsage => "no-usage",
            Self::JsonToStream => "json-to-stream",
            Self::Status429 => "429-retry-after",
            Self::Status503 => "503-retry-after",
            Self::SlowerThanTimeout => "slower-than-timeout",
        }
    }

    /// Whether the cell makes sense: a whole JSON answer to a stream request needs a stream request (embeddings
    /// and legacy completions are only asked for whole here; their streams, where they exist, are chat's).
    fn applies_to(self, row: Row) -> bool {
        self != Self::JsonToStream || row.stream()
    }

    fn requests(self) -> usize {
        match self {
            Self::StopsReading => 1,
            Self::CutAtByte => 3,
            _ => 2,
        }
    }

    fn behaviour(self, row: Row) -> Behaviour {
        match self {
            Self::Normal => Behaviour::Normal,
            Self::ClientFin | Self::ClientRst if row.stream() => Behaviour::SlowStream { millis: 15 },
            Self::ClientFin | Self::ClientRst => Behaviour::Delay {
                millis: WORKING_MILLIS,
            },
            // Streams: ~8 MiB, more than the socket buffers between the gateway and a client that does not read
            // hold. Whole: 2 MiB the client never reads.
            Self::StopsReading if row.stream() => Behaviour::LongStream { events: 8000 },
            Self::StopsReading => Behaviour::LongStream { events: 2000 },
            Self::CutAtByte => Behaviour::CutAtByte { seed: 0x005e_771e },
            Self::NoUsage => Behaviour::NoUsage,
            Self::JsonToStream => Behaviour::JsonToStream,
            Self::Status429 => Behaviour::Status {
                status: 429,
                retry_after: Some(2),
            },
            Self::Status503 => Behaviour::Status {
                status: 503,
                retry_after: Some(1),
            },
            Self::SlowerThanTimeout => Behaviour::Delay {
                millis: WORKING_MILLIS,
            },
        }
    }

    fn raw_client(self) -> bool {
        matches!(self, Self::ClientFin | Self::ClientRst | Self::StopsReading)
    }
}

fn cells() -> Vec<(Row, Column)> {
    ROWS.iter()
        .flat_map(|&row| {
            COLUMNS
                .iter()
                .filter(move |c| c.applies_to(row))
                .map(move |&c| (row, c))
        })
        .collect()
}

fn model(row: Row, column: Column) -> String {
    format!("{}.{}", row.name(), column.name())
}

/// One instance and one route per cell, so that every cell's rows and upstream requests are its own.
fn cells_toml() -> String {
    let mut toml = String::new();
    for (row, column) in cells() {
        let model = model(row, column);
        let provider = if row.anthropic() {
            "provider = \"anthropic\"\n"
        } else {
            ""
        };
        let timeout = if column == Column::SlowerThanTimeout {
            SHORT_TIMEOUT
        } else {
            "10s"
        };
        write!(
            toml,
            "[[instances]]\nname = \"i-{model}\"\n{provider}endpoint = \"{{mock}}\"\napi_key_env = \"PROVIDER_KEY\"\n\
             timeout = \"{timeout}\"\n\n[[routes]]\nname = \"{model}\"\nmodels = [\"{model}\"]\n\
             targets = [{{ instance = \"i-{model}\" }}]\n\n"
        )
        .unwrap();
    }
    toml
}

/// What one client saw: the response head (if it got one) and the body bytes it read, de-chunked.
#[derive(Debug, Default)]
struct Seen {
    status: Option<u16>,
    request_id: Option<String>,
    body: Vec<u8>,
}

/// A request sent with awc and read to its end (or to the break).
async fn awc_request(stack: &Stack, row: Row, model: &str) -> Seen {
    let mut request = http()
        .post(format!("{}{}", stack.gateway_url, row.path()))
        .timeout(Duration::from_secs(20));
    for (name, value) in row.headers() {
        request = request.insert_header((name, value));
    }
    let Ok(mut response) = request.send_json(&row.body(model)).await else {
        return Seen::default();
    };
    let mut seen = Seen {
        status: Some(response.status().as_u16()),
        request_id: response
            .headers()
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
        body: Vec::new(),
    };
    while let Some(Ok(chunk)) = response.next().await {
        seen.body.extend_from_slice(&chunk);
    }
    seen
}

/// What a raw client does after sending its request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Leave {
    Fin,
    Rst,
    StopReading,
}

/// A raw HTTP/1.1 client: writes the request bytes itself, then leaves as `leave` says once the provider is
/// working (whole answers: the mock received the request; streams: the first completion text arrived). Returns
/// what it saw and, for a client that stops reading, the socket it keeps open.
async fn raw_request(stack: &Stack, row: Row, model: &str, leave: Leave) -> (Seen, Option<TcpStream>) {
    let addr = stack.gateway_url.trim_start_matches("http://").parse().unwrap();
    let socket = TcpSocket::new_v4().unwrap();
    if leave == Leave::StopReading {
        // A small receive window, so that little of the answer hides in the client's buffer.
        socket.set_recv_buffer_size(16 << 10).unwrap();
    }
    let mut tcp = socket.connect(addr).await.unwrap();
    let body = row.body(model).to_string();
    let mut request = format!(
        "POST {} HTTP/1.1\r\nhost: {addr}\r\ncontent-type: application/json\r\ncontent-length: {}\r\n",
        row.path(),
        body.len()
    );
    for (name, value) in row.headers() {
        write!(request, "{name}: {value}\r\n").unwrap();
    }
    request.push_str("\r\n");
    request.push_str(&body);
    let received_before = mock_received(stack, model);
    tcp.write_all(request.as_bytes()).await.unwrap();

    let mut raw = Vec::new();
    if row.stream() {
        // Read until the first completion text arrived.
        let needle = if leave == Leave::StopReading {
            "tok"
        } else {
            "Hello"
        };
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut buffer = vec![0; 64 << 10];
        loop {
            let seen = parse_raw(&raw);
            if String::from_utf8_lossy(&seen.body).contains(needle) || Instant::now() > deadline {
                break;
            }
            match tokio::time::timeout(Duration::from_millis(200), tcp.read(&mut buffer)).await {
                Ok(Ok(0) | Err(_)) => break,
                Ok(Ok(n)) => raw.extend_from_slice(&buffer[..n]),
                Err(_) => {}
            }
        }
    } else {
        // The provider has the request (and works on it for a while) before the client leaves.
        let deadline = Instant::now() + Duration::from_secs(5);
        while mock_received(stack, model) == received_before && Instant::now() < deadline {
            actix_web::rt::time::sleep(Duration::from_millis(10)).await;
        }
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
    }
    let seen = parse_raw(&raw);
    match leave {
        // Closed right after a read drained the socket: nothing unread, so the close is a FIN.
        Leave::Fin => drop(tcp),
        Leave::Rst => {
            tcp.set_zero_linger().unwrap();
            drop(tcp);
        }
        Leave::StopReading => return (seen, Some(tcp)),
    }
    (seen, None)
}

/// The response head and de-chunked body of the bytes a raw client read, however far they got.
fn parse_raw(raw: &[u8]) -> Seen {
    let Some(end) = raw.windows(4).position(|w| w == b"\r\n\r\n") else {
        return Seen::default();
    };
    let head = String::from_utf8_lossy(&raw[..end]).into_owned();
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|s| s.parse().ok());
    let mut request_id = None;
    let mut chunked = false;
    for line in lines {
        let Some((name, value)) = line.split_once(':') else {
            continue;
        };
        let (name, value) = (name.trim().to_ascii_lowercase(), value.trim());
        if name == "x-request-id" {
            request_id = Some(value.to_owned());
        }
        if name == "transfer-encoding" && value.eq_ignore_ascii_case("chunked") {
            chunked = true;
        }
    }
    let rest = &raw[end + 4..];
    let body = if chunked { dechunk(rest) } else { rest.to_vec() };
    Seen {
        status,
        request_id,
        body,
    }
}

/// The data of a chunked body, as far as it arrived (a chunk cut short counts with the bytes that came).
fn dechunk(mut rest: &[u8]) -> Vec<u8> {
    let mut body = Vec::new();
    loop {
        let Some(line_end) = rest.windows(2).position(|w| w == b"\r\n") else {
            return body;
        };
        let size_text = String::from_utf8_lossy(&rest[..line_end]);
        let Ok(size) = usize::from_str_radix(size_text.split(';').next().unwrap_or("").trim(), 16) else {
            return body;
        };
        if size == 0 {
            return body;
        }
        rest = &rest[line_end + 2..];
        let take = size.min(rest.len());
        body.extend_from_slice(&rest[..take]);
        if take < size || rest.len() < size + 2 {
            return body;
        }
        rest = &rest[size + 2..];
    }
}

fn mock_received(stack: &Stack, model: &str) -> usize {
    stack
        .mock
        .received()
        .iter()
        .filter(|r| r.body["model"] == model)
        .count()
}

/// What the client received of the completion: the final usage its answer reported, if it reported one, and
/// the completion text it received.
fn received_completion(row: Row, body: &[u8]) -> (Option<u64>, String) {
    if let Ok(whole) = serde_json::from_slice::<Value>(body) {
        return whole_completion(row, &whole);
    }
    let text = String::from_utf8_lossy(body).replace("\r\n", "\n");
    let mut events: Vec<&str> = text.split("\n\n").collect();
    events.pop(); // what follows the last blank line is not a whole event
    let mut usage = None;
    let mut completion = String::new();
    for event in events {
        let data: String = event
            .lines()
            .filter_map(|l| l.strip_prefix("data:"))
            .map(|d| d.strip_prefix(' ').unwrap_or(d))
            .collect::<Vec<_>>()
            .join("\n");
        let Ok(data) = serde_json::from_str::<Value>(&data) else {
            continue;
        };
        if row.responses() {
            match data["type"].as_str() {
                Some("response.output_text.delta" | "response.function_call_arguments.delta") => {
                    completion.push_str(data["delta"].as_str().unwrap_or(""))
                }
                Some("response.output_item.added") if data["item"]["type"] == "function_call" => {
                    completion.push_str(data["item"]["name"].as_str().unwrap_or(""));
                }
                Some("response.completed" | "response.incomplete") => {
                    usage = data["response"]["usage"]["output_tokens"].as_u64().or(usage);
                }
                _ => {}
            }
            continue;
        }
        if row.anthropic() {
            match data["type"].as_str() {
                Some("content_block_delta") => {
                    completion.push_str(data["delta"]["text"].as_str().unwrap_or(""));
                    completion.push_str(data["delta"]["partial_json"].as_str().unwrap_or(""));
                }
                Some("message_delta") => {
                    usage = data["usage"]["output_tokens"].as_u64().or(usage);
                }
                _ => {}
            }
            continue;
        }
        if let Some(tokens) = data["usage"]["completion_tokens"].as_u64() {
            usage = Some(tokens);
        }
        for choice in data["choices"].as_array().into_iter().flatten() {
            completion.push_str(choice["text"].as_str().unwrap_or(""));
            let delta = &choice["delta"];
            completion.push_str(delta["content"].as_str().unwrap_or(""));
            for call in delta["tool_calls"].as_array().into_iter().flatten() {
                completion.push_str(call["function"]["name"].as_str().unwrap_or(""));
                completion.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
            }
        }
    }
    (usage, completion)
}

/// [`received_completion`] of a whole JSON answer (also one that answered a stream request).
fn whole_completion(row: Row, answer: &Value) -> (Option<u64>, String) {
    if row.anthropic() {
        let text = answer["content"]
            .as_array()
            .into_iter()
            .flatten()
            .filter_map(|block| block["text"].as_str())
            .collect();
        return (answer["usage"]["output_tokens"].as_u64(), text);
    }
    if row.responses() {
        let mut text = String::new();
        for item in answer["output"].as_array().into_iter().flatten() {
            for part in item["content"].as_array().into_iter().flatten() {
                text.push_str(part["text"].as_str().unwrap_or(""));
            }
            text.push_str(item["name"].as_str().unwrap_or(""));
            text.push_str(item["arguments"].as_str().unwrap_or(""));
        }
        return (answer["usage"]["output_tokens"].as_u64(), text);
    }
    let mut text = String::new();
    for choice in answer["choices"].as_array().into_iter().flatten() {
        text.push_str(choice["text"].as_str().unwrap_or(""));
        text.push_str(choice["message"]["content"].as_str().unwrap_or(""));
        for call in choice["message"]["tool_calls"].as_array().into_iter().flatten() {
            text.push_str(call["function"]["name"].as_str().unwrap_or(""));
            text.push_str(call["function"]["arguments"].as_str().unwrap_or(""));
        }
    }
    (answer["usage"]["completion_tokens"].as_u64(), text)
}

/// The completion tokens a client received (see the module's documentation).
async fn tokens_received(stack: &Stack, row: Row, model: &str, seen: &Seen) -> u64 {
    let Some(status) = seen.status else {
        return 0;
    };
    if !(200..300).contains(&status) || row == Row::Embeddings {
        return 0;
    }
    let (usage, text) = received_completion(row, &seen.body);
    if let Some(usage) = usage {
        return usage;
    }
    if text.is_empty() {
        return 0;
    }
    let mut response = http()
        .post(format!("{}/v1/tokens/count", stack.meter_url))
        .send_json(&json!({"model": model, "text": text}))
        .await
        .unwrap();
    let counted: Value = response.json().limit(1 << 20).await.unwrap();
    counted["tokens"].as_u64().unwrap()
}

async fn cell_rows(stack: &Stack, model: &str) -> Vec<Value> {
    stack
        .query(&format!(
            "SELECT request_id, outcome, http_status, completion_tokens, usage_source FROM usage_events FINAL \
             WHERE model_requested = '{model}'"
        ))
        .await
}

/// One cell's result.
#[derive(Debug)]
struct Verdict {
    cell: String,
    received: usize,
    rows: usize,
    mismatches: Vec<String>,
}

async fn run_cell(stack: &Stack, row: Row, column: Column) -> Verdict {
    let model = model(row, column);
    stack.mock.set_behaviour(column.behaviour(row));
    let mut seen = Vec::new();
    let mut held = Vec::new();
    for _ in 0..column.requests() {
        if column.raw_client() {
            let leave = match column {
                Column::ClientFin => Leave::Fin,
                Column::ClientRst => Leave::Rst,
                _ => Leave::StopReading,
            };
            let (client, socket) = raw_request(stack, row, &model, leave).await;
            seen.push(client);
            held.extend(socket);
        } else {
            seen.push(awc_request(stack, row, &model).await);
        }
    }
    let mut floors = Vec::new();
    for client in &seen {
        floors.push(tokens_received(stack, row, &model, client).await);
    }

    // Every request the mock received, settled once: wait for as many rows, then a little more for extra ones.
    let started = Instant::now();
    let mut received = mock_received(stack, &model);
    let mut rows = cell_rows(stack, &model).await;
    while rows.len() < received && started.elapsed() < ROWS_DEADLINE {
        actix_web::rt::time::sleep(Duration::from_millis(100)).await;
        received = mock_received(stack, &model);
        rows = cell_rows(stack, &model).await;
    }
    actix_web::rt::time::sleep(EXTRA_ROWS_GRACE).await;
    received = mock_received(stack, &model);
    rows = cell_rows(stack, &model).await;
    drop(held);

    let mut mismatches = Vec::new();
    if received == 0 {
        mismatches.push("the mock received no request: the cell tested nothing".to_owned());
    }
    if rows.len() != received {
        mismatches.push(format!("{} rows for {received} upstream requests", rows.len()));
    }
    for (client, floor) in seen.iter().zip(floors) {
        let Some(request_id) = &client.request_id else {
            continue;
        };
        let mine: Vec<&Value> = rows.iter().filter(|r| r["request_id"] == *request_id).collect();
        match mine.as_slice() {
            [] => mismatches.push(format!(
                "{request_id}: no row (the client got {})",
                client.status.unwrap_or(0)
            )),
            [one] => {
                let billed = one["completion_tokens"].as_u64().unwrap_or(0);
                if billed < floor {
                    mismatches.push(format!(
                        "{request_id}: billed {billed} completion tokens, the client received {floor} \
                         (outcome {}, usage {})",
                        one["outcome"].as_str().unwrap_or("?"),
                        one["usage_source"].as_str().unwrap_or("?"),
                    ));
                }
            }
            many => mismatches.push(format!("{request_id}: {} rows", many.len())),
        }
    }
    Verdict {
        cell: model,
        received,
        rows: rows.len(),
        mismatches,
    }
}

fn table(verdicts: &[Verdict]) -> String {
    let mut out = format!("{:<38} {:>8} {:>5}  mismatches\n", "cell", "received", "rows");
    for v in verdicts {
        let first = v.mismatches.first().map_or("-", String::as_str);
        writeln!(out, "{:<38} {:>8} {:>5}  {first}", v.cell, v.received, v.rows).unwrap();
        for more in v.mismatches.iter().skip(1) {
            writeln!(out, "{:<38} {:>8} {:>5}  {more}", "", "", "").unwrap();
        }
    }
    let failing = verdicts.iter().filter(|v| !v.mismatches.is_empty()).count();
    writeln!(out, "{failing} of {} cells with mismatches", verdicts.len()).unwrap();
    out
}

#[actix_rt::test]
async fn every_request_the_provider_worked_on_is_settled_once_and_never_for_less_than_the_client_received() {
    let stack = Stack::start(StackOptions {
        extra_toml: cells_toml(),
        server_toml: SETTLEMENT_SERVER_TOML.to_owned(),
        ..StackOptions::default()
    })
    .await;
    let started = Instant::now();
    let mut verdicts = Vec::new();
    for (row, column) in cells() {
        let verdict = run_cell(&stack, row, column).await;
        println!(
            "{:<38} received {} rows {} {:?}",
            verdict.cell, verdict.received, verdict.rows, verdict.mismatches
        );
        verdicts.push(verdict);
    }
    let report = table(&verdicts);
    println!("\nsettlement matrix ({:.0?}):\n{report}", started.elapsed());
    stack.mock.set_behaviour(Behaviour::Normal);
    stack.stop().await;
    assert!(
        verdicts.iter().all(|v| v.mismatches.is_empty()),
        "settlement leaks:\n{report}"
    );
}

/// The mock's misbehaviours the matrix relies on, checked against the mock alone: each in the endpoint's
/// protocol.
#[actix_rt::test]
async fn the_mock_misbehaves_in_each_endpoints_own_protocol() {
    let (mock, server) =
        MockProvider::start(std::net::TcpListener::bind("127.0.0.1:0").unwrap(), None).unwrap();
    actix_web::rt::spawn(server);
    let post = |path: &str, body: Value| {
        let request = http().post(format!("{}{path}", mock.endpoint().trim_end_matches("/v1")));
        async move {
            let mut response = request.send_json(&body).await.unwrap();
            let mut bytes = Vec::new();
            let mut broke = false;
            while let Some(chunk) = response.next().await {
                match chunk {
                    Ok(chunk) => bytes.extend_from_slice(&chunk),
                    Err(_) => {
                        broke = true;
                        break;
                    }
                }
            }
            let header = |name: &str| {
                response
                    .headers()
                    .get(name)
                    .and_then(|v| v.to_str().ok())
                    .map(str::to_owned)
            };
            // Short of its announced length, or broken off mid-chunk.
            let short = header("content-length")
                .and_then(|n| n.parse::<usize>().ok())
                .is_some_and(|n| bytes.len() < n);
            (
                response.status().as_u16(),
                header("retry-after"),
                header("content-type"),
                bytes,
                broke || short,
            )
        }
    };
    let chat = json!({"model": "m", "messages": [{"role": "user", "content": PROMPT}]});
    let message = json!({"model": "m", "max_tokens": 8, "messages": [{"role": "user", "content": PROMPT}]});
    let mut streamed_message = message.clone();
    streamed_message["stream"] = json!(true);
    let mut streamed_chat = chat.clone();
    streamed_chat["stream"] = json!(true);
    streamed_chat["stream_options"] = json!({"include_usage": true});

    for (status, anthropic_type, openai_code) in [
        (429, "rate_limit_error", "rate_limit_exceeded"),
        (503, "overloaded_error", "mock"),
    ] {
        mock.set_behaviour(Behaviour::Status {
            status,
            retry_after: Some(7),
        });
        let (got, retry_after, _, bytes, _) = post("/v1/messages", message.clone()).await;
        let error: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!((got, retry_after.as_deref()), (status, Some("7")));
        assert_eq!(error["type"], "error");
        assert_eq!(error["error"]["type"], anthropic_type);
        assert!(error["error"]["message"].is_string());
        let (got, retry_after, _, bytes, _) = post("/v1/chat/completions", chat.clone()).await;
        let error: Value = serde_json::from_slice(&bytes).unwrap();
        assert_eq!((got, retry_after.as_deref()), (status, Some("7")));
        assert_eq!(error["error"]["code"], openai_code);
    }

    // Cut at a byte: a whole body breaks off short of its Content-Length, a stream short of its end, and each
    // request at another byte.
    mock.set_behaviour(Behaviour::CutAtByte { seed: 1 });
    let mut lengths = std::collections::BTreeSet::new();
    for _ in 0..4 {
        let (status, _, _, bytes, broke) = post("/v1/chat/completions", chat.clone()).await;
        assert_eq!(status, 200);
        assert!(
            broke,
            "the body broke off: {status} {:?}",
            String::from_utf8_lossy(&bytes)
        );
        assert!(serde_json::from_slice::<Value>(&bytes).is_err());
        lengths.insert(bytes.len());
        let (_, _, _, bytes, _) = post("/v1/messages", streamed_message.clone()).await;
        assert!(
            !String::from_utf8_lossy(&bytes).contains("message_stop"),
            "the stream broke off before its end"
        );
        lengths.insert(bytes.len());
    }
    assert!(lengths.len() > 4, "different cuts: {lengths:?}");

    // A stream request answered with whole JSON, usage included.
    mock.set_behaviour(Behaviour::JsonToStream);
    let (_, _, content_type, bytes, _) = post("/v1/messages", streamed_message.clone()).await;
    let answer: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(content_type.as_deref(), Some("application/json"));
    assert_eq!(
        (answer["type"].as_str(), answer["usage"]["output_tokens"].is_u64()),
        (Some("message"), true)
    );
    let (_, _, content_type, bytes, _) = post("/v1/chat/completions", streamed_chat.clone()).await;
    let answer: Value = serde_json::from_slice(&bytes).unwrap();
    assert_eq!(content_type.as_deref(), Some("application/json"));
    assert!(answer["usage"]["completion_tokens"].is_u64());

    // Anthropic without usage: only message_start's provisional output_tokens, no usage in message_delta.
    mock.set_behaviour(Behaviour::NoUsage);
    let (_, _, _, bytes, _) = post("/v1/messages", streamed_message.clone()).await;
    let text = String::from_utf8(bytes).unwrap();
    assert!(text.contains("\"output_tokens\":1"), "{text}");
    let delta = text
        .split("\n\n")
        .find(|e| e.starts_with("event: message_delta"))
        .unwrap();
    assert!(!delta.contains("usage"), "{delta}");
    let (_, _, _, bytes, _) = post("/v1/messages", message.clone()).await;
    assert!(serde_json::from_slice::<Value>(&bytes).unwrap()["usage"].is_null());

    // A long stream: as many content events as asked, then the end.
    mock.set_behaviour(Behaviour::LongStream { events: 50 });
    let (_, _, _, bytes, _) = post("/v1/chat/completions", streamed_chat.clone()).await;
    let text = String::from_utf8(bytes).unwrap();
    assert_eq!(text.matches(&long_event_text()).count(), 50);
    assert!(text.ends_with("data: [DONE]\n\n"));
    mock.stop().await;
}
