//! How every Tollgate process logs and records metrics: [`init_tracing`] (text or JSON lines on stderr, filtered by
//! `RUST_LOG`), and [`install_prometheus`] (the process-wide recorder with histogram buckets and a thread that
//! folds recorded samples into them, so memory stays bounded between scrapes).

use std::time::Duration;

use metrics_exporter_prometheus::{BuildError, Matcher, PrometheusBuilder, PrometheusHandle};
use tracing_subscriber::EnvFilter;

/// How often recorded histogram samples are folded into their buckets. The recorder keeps every raw sample until
/// then; without upkeep they pile up for as long as nothing scrapes `/metrics` (a gateway under load grew by
/// 18 MiB per 10 s that way).
const UPKEEP_INTERVAL: Duration = Duration::from_secs(5);

/// Logs to stderr, as JSON lines when `format` is `json` and as text otherwise, at `default_level` unless
/// `RUST_LOG` says otherwise. Call once, first thing.
pub fn init_tracing(format: &str, default_level: &str) {
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if format == "json" {
        builder.json().init();
    } else {
        builder.init();
    }
}

/// Installs the process-wide Prometheus recorder with `buckets` (a matcher on metric names and its bucket
/// bounds, first match wins) and starts its upkeep thread (named `thread_name`); the handle `/metrics` renders.
pub fn install_prometheus(
    buckets: &[(Matcher, &[f64])],
    thread_name: &str,
) -> Result<PrometheusHandle, BuildError> {
    let mut builder = PrometheusBuilder::new();
    for (matcher, bounds) in buckets {
        builder = builder.set_buckets_for_metric(matcher.clone(), bounds)?;
    }
    let handle = builder.install_recorder()?;
    keep_up(&handle, thread_name);
    Ok(handle)
}

/// Folds histogram samples into their buckets every [`UPKEEP_INTERVAL`] on a thread of its own.
fn keep_up(handle: &PrometheusHandle, thread_name: &str) {
    let handle = handle.clone();
    let spawned = std::thread::Builder::new()
        .name(thread_name.to_owned())
        .spawn(move || {
            loop {
                std::thread::sleep(UPKEEP_INTERVAL);
                handle.run_upkeep();
            }
        });
    if let Err(e) = spawned {
        tracing::error!(error = %e, "could not start the metrics upkeep thread; histograms grow until scraped");
    }
}
