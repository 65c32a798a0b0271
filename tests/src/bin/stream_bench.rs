//! `stream-bench`: sends chat completions to a URL and reports latency, time to first byte and throughput — run
//! against the fake upstream directly, nginx and the gateway by `bench/load.sh` and `bench/streaming.sh`.
//!
//! Two ways to load:
//! - **closed loop** (default): `--requests` in waves of `--concurrency`: throughput and time to first byte;
//! - **open loop** (`--rate R --duration D`): one request every 1/R s whatever the answers do — each is sent on
//!   a task of its own, so a slow answer never delays the next request (no coordinated omission) — timed from
//!   the instant it was sent (the timer wakes up to a millisecond late; that lag is not the target's).
//!
//! `--stream` asks for SSE (`"stream": true`). One output line of `key=value` pairs.

use std::rc::Rc;
use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;
use futures_util::future::join_all;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "stream-bench",
    about = "Latency, time to first byte and throughput of chat completions"
)]
struct Cli {
    /// The chat completions URL, e.g. http://127.0.0.1:8080/v1/chat/completions.
    #[arg(long)]
    url: String,
    /// Sent as `Authorization: Bearer`.
    #[arg(long)]
    key: String,
    #[arg(long, default_value = "gpt-4o-mini")]
    model: String,
    /// Requests in all (closed loop).
    #[arg(long, alias = "streams", default_value_t = 2000)]
    requests: usize,
    /// Requests open at once (closed loop).
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// Requests per second (open loop); with `--duration`.
    #[arg(long)]
    rate: Option<u32>,
    /// How long the open loop runs, e.g. "10s".
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    duration: Duration,
    /// Ask for a streamed (SSE) answer.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set)]
    stream: bool,
    /// A label for the output line.
    #[arg(long, default_value = "target")]
    label: String,
}

struct Sample {
    ttfb: Duration,
    total: Duration,
    bytes: usize,
    ok: bool,
}

/// One request, timed from `start`.
async fn one(client: &awc::Client, cli: &Cli, n: usize, start: Instant) -> Sample {
    let body = json!({"model": cli.model, "stream": cli.stream,
        "messages": [{"role": "user", "content": format!("Request number {n}: tell me a story about a tollgate.")}]});
    let failed = |start: Instant| Sample {
        ttfb: start.elapsed(),
        total: start.elapsed(),
        bytes: 0,
        ok: false,
    };
    let Ok(mut response) = client.post(&cli.url).bearer_auth(&cli.key).send_json(&body).await else {
        return failed(start);
    };
    let mut ttfb = None;
    let mut bytes = 0;
    let mut ok = response.status().is_success();
    while let Some(chunk) = response.next().await {
        match chunk {
            Ok(chunk) => {
                ttfb.get_or_insert_with(|| start.elapsed());
                bytes += chunk.len();
            }
            Err(_) => ok = false,
        }
    }
    Sample {
        ttfb: ttfb.unwrap_or_else(|| start.elapsed()),
        total: start.elapsed(),
        bytes,
        ok,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

async fn closed_loop(client: &awc::Client, cli: &Cli) -> Vec<Sample> {
    let mut samples = Vec::with_capacity(cli.requests);
    let mut next = 0;
    while next < cli.requests {
        let wave =
            (next..(next + cli.concurrency).min(cli.requests)).map(|n| one(client, cli, n, Instant::now()));
        samples.extend(join_all(wave).await);
        next += cli.concurrency;
    }
    samples
}

async fn open_loop(client: awc::Client, cli: Rc<Cli>, rate: u32) -> Vec<Sample> {
    let period = Duration::from_secs(1) / rate.max(1);
    let count = (cli.duration.as_secs_f64() * f64::from(rate)) as usize;
    let start = Instant::now();
    let mut tasks = Vec::with_capacity(count);
    for n in 0..count {
        let due = start + period * u32::try_from(n).unwrap_or(u32::MAX);
        actix_web::rt::time::sleep_until(due.into()).await;
        let (client, cli) = (client.clone(), cli.clone());
        let sent = Instant::now();
        tasks.push(actix_web::rt::spawn(
            async move { one(&client, &cli, n, sent).await },
        ));
    }
    let mut samples = Vec::with_capacity(count);
    for task in tasks {
        if let Ok(sample) = task.await {
            samples.push(sample);
        }
    }
    samples
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let cli = Rc::new(Cli::parse());
    let client = awc::Client::builder()
        .timeout(Duration::from_secs(60))
        .connector(awc::Connector::new().limit(0))
        .finish();
    let started = Instant::now();
    let samples = match cli.rate {
        Some(rate) => open_loop(client, cli.clone(), rate).await,
        None => closed_loop(&client, &cli).await,
    };
    let elapsed = started.elapsed();
    let failed = samples.iter().filter(|s| !s.ok).count();
    let mut ttfb: Vec<Duration> = samples.iter().map(|s| s.ttfb).collect();
    ttfb.sort_unstable();
    let mut total: Vec<Duration> = samples.iter().map(|s| s.total).collect();
    total.sort_unstable();
    let bytes: usize = samples.iter().map(|s| s.bytes).sum();
    println!(
        "{:<10} requests={} failed={} req/s={:.0} MB/s={:.2} ttfb_p50_ms={:.3} ttfb_p99_ms={:.3} \
         latency_p50_ms={:.3} latency_p99_ms={:.3} latency_p999_ms={:.3}",
        cli.label,
        samples.len(),
        failed,
        samples.len() as f64 / elapsed.as_secs_f64(),
        bytes as f64 / elapsed.as_secs_f64() / 1e6,
        ms(percentile(&ttfb, 0.5)),
        ms(percentile(&ttfb, 0.99)),
        ms(percentile(&total, 0.5)),
        ms(percentile(&total, 0.99)),
        ms(percentile(&total, 0.999)),
    );
    anyhow::ensure!(failed == 0, "{failed} requests failed");
    Ok(())
}
