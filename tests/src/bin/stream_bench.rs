//! `stream-bench`: opens streamed chat completions against a URL, `concurrency` at a time, and reports the time
//! to first byte (p50/p99) and throughput — run against the mock provider directly and through the gateway to
//! measure the gateway's streaming overhead (`bench/streaming.sh`).

use std::time::{Duration, Instant};

use clap::Parser;
use futures_util::StreamExt;
use futures_util::future::join_all;
use serde_json::json;

#[derive(Debug, Parser)]
#[command(
    name = "stream-bench",
    about = "Time to first byte and throughput of concurrent SSE streams"
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
    /// Streams in all.
    #[arg(long, default_value_t = 2000)]
    streams: usize,
    /// Streams open at once.
    #[arg(long, default_value_t = 50)]
    concurrency: usize,
    /// A label for the output line.
    #[arg(long, default_value = "target")]
    label: String,
}

struct Sample {
    ttfb: Duration,
    bytes: usize,
    ok: bool,
}

async fn one(client: &awc::Client, cli: &Cli, n: usize) -> Sample {
    let body = json!({"model": cli.model, "stream": true,
        "messages": [{"role": "user", "content": format!("Stream number {n}: tell me a story about a tollgate.")}]});
    let started = Instant::now();
    let Ok(mut response) = client.post(&cli.url).bearer_auth(&cli.key).send_json(&body).await else {
        return Sample {
            ttfb: started.elapsed(),
            bytes: 0,
            ok: false,
        };
    };
    let mut ttfb = None;
    let mut bytes = 0;
    let mut ok = response.status().is_success();
    while let Some(chunk) = response.next().await {
        match chunk {
            Ok(chunk) => {
                ttfb.get_or_insert_with(|| started.elapsed());
                bytes += chunk.len();
            }
            Err(_) => ok = false,
        }
    }
    Sample {
        ttfb: ttfb.unwrap_or_else(|| started.elapsed()),
        bytes,
        ok,
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    let index = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted.get(index).copied().unwrap_or_default()
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let client = awc::Client::builder().timeout(Duration::from_secs(60)).finish();
    let started = Instant::now();
    let mut samples = Vec::with_capacity(cli.streams);
    let mut next = 0;
    while next < cli.streams {
        let wave = (next..(next + cli.concurrency).min(cli.streams)).map(|n| one(&client, &cli, n));
        samples.extend(join_all(wave).await);
        next += cli.concurrency;
    }
    let elapsed = started.elapsed();
    let failed = samples.iter().filter(|s| !s.ok).count();
    let mut ttfb: Vec<Duration> = samples.iter().map(|s| s.ttfb).collect();
    ttfb.sort_unstable();
    let bytes: usize = samples.iter().map(|s| s.bytes).sum();
    println!(
        "{:<10} streams={} failed={} streams/s={:.0} MB/s={:.2} ttfb_p50_ms={:.3} ttfb_p99_ms={:.3}",
        cli.label,
        samples.len(),
        failed,
        samples.len() as f64 / elapsed.as_secs_f64(),
        bytes as f64 / elapsed.as_secs_f64() / 1e6,
        percentile(&ttfb, 0.5).as_secs_f64() * 1e3,
        percentile(&ttfb, 0.99).as_secs_f64() * 1e3,
    );
    anyhow::ensure!(failed == 0, "{failed} streams failed");
    Ok(())
}
