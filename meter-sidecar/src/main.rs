//! `meter-sidecar`: Tollgate's token-counting service.
//!
//! Parses the command line (every flag also readable from the environment), installs logging (text, or one
//! JSON object per line with `--log-format json`) and the Prometheus recorder, binds the listen address and
//! runs the server until SIGTERM or Ctrl-C, then stops it gracefully.

#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

use std::net::TcpListener;

use anyhow::Context;
use clap::Parser;
use tollgate_meter_sidecar::config::{self, Config, RawConfig};
use tollgate_meter_sidecar::{metrics, server};

/// Tollgate's meter sidecar: counts prompt and completion tokens with tiktoken.
#[derive(Debug, Parser)]
#[command(name = "meter-sidecar", version, about)]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "METER_LISTEN", default_value = config::DEFAULT_LISTEN)]
    listen: String,

    /// Encoding for models the sidecar does not know: o200k_base, cl100k_base, p50k_base or r50k_base.
    #[arg(long, env = "METER_DEFAULT_ENCODING", default_value_t = config::DEFAULT_ENCODING.name().to_owned())]
    default_encoding: String,

    /// Largest accepted request body, in bytes; larger bodies get 413.
    #[arg(long, env = "METER_MAX_BODY_BYTES", default_value_t = config::DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,

    /// HTTP worker threads [default: the available parallelism].
    #[arg(long, env = "METER_WORKERS")]
    workers: Option<usize>,

    /// Token counts kept by the count cache (0 disables it; at most 10000000).
    #[arg(long, env = "METER_CACHE_ENTRIES", default_value_t = config::DEFAULT_CACHE_ENTRIES)]
    cache_entries: u64,

    /// Most items in one POST /v1/tokens/count/batch; more get 400.
    #[arg(long, env = "METER_MAX_BATCH_ITEMS", default_value_t = config::DEFAULT_MAX_BATCH_ITEMS)]
    max_batch_items: usize,

    /// Log format: text (human-readable lines) or json (one JSON object per line), as the gateway's.
    #[arg(long, env = "TOLLGATE_LOG_FORMAT", value_parser = ["text", "json"], default_value = "text")]
    log_format: String,
}

#[actix_web::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tollgate_plumbing::telemetry::init_tracing(&args.log_format, "info");

    let config = Config::try_from(RawConfig {
        default_encoding: args.default_encoding,
        max_body_bytes: args.max_body_bytes,
        workers: args.workers,
        cache_entries: args.cache_entries,
        max_batch_items: args.max_batch_items,
    })?;
    let metrics = metrics::install_recorder().context("installing the Prometheus recorder")?;
    let listener = TcpListener::bind(&args.listen)
        .with_context(|| format!("binding the listen address {}", args.listen))?;

    tracing::info!(
        listen = %args.listen,
        default_encoding = config.default_encoding.name(),
        max_body_bytes = config.max_body_bytes,
        workers = config.workers,
        cache_entries = config.cache_entries,
        max_batch_items = config.max_batch_items,
        "meter sidecar starting"
    );
    let server = server::build(config, listener, metrics).context("starting the HTTP server")?;
    let handle = server.handle();
    actix_web::rt::spawn(async move {
        let signal = shutdown_signal().await;
        tracing::info!(signal, "stopping gracefully");
        handle.stop(true).await;
    });
    server.await.context("running the HTTP server")?;
    tracing::info!("meter sidecar stopped");
    Ok(())
}

/// Waits for SIGTERM or Ctrl-C (SIGINT) and says which arrived.
async fn shutdown_signal() -> &'static str {
    #[cfg(unix)]
    {
        use tokio::signal::unix::{SignalKind, signal};
        match signal(SignalKind::terminate()) {
            Ok(mut terminate) => tokio::select! {
                _ = tokio::signal::ctrl_c() => "SIGINT",
                _ = terminate.recv() => "SIGTERM",
            },
            Err(err) => {
                tracing::warn!(error = %err, "cannot listen for SIGTERM; stopping on Ctrl-C only");
                ctrl_c().await
            }
        }
    }
    #[cfg(not(unix))]
    {
        ctrl_c().await
    }
}

async fn ctrl_c() -> &'static str {
    if let Err(err) = tokio::signal::ctrl_c().await {
        tracing::warn!(error = %err, "cannot listen for Ctrl-C; running until killed");
        std::future::pending::<()>().await;
    }
    "SIGINT"
}

#[cfg(test)]
mod tests {
    use clap::CommandFactory as _;

    use super::*;

    #[test]
    fn the_command_line_is_consistent() {
        Args::command().debug_assert();
    }

    #[test]
    fn log_format_is_text_or_json() {
        let args = Args::try_parse_from(["meter-sidecar", "--log-format", "json"]).unwrap();
        assert_eq!(args.log_format, "json");
        assert!(Args::try_parse_from(["meter-sidecar", "--log-format", "xml"]).is_err());
    }
}
