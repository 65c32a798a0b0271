//! The `billing-consumer` binary: parses the command line, installs logging, dispatches to the library.

use anyhow::Context as _;
use clap::Parser as _;
use tokio_util::sync::CancellationToken;
use tollgate_billing_consumer::cli::{Cli, Command};
use tollgate_billing_consumer::{ingest, metrics, migrations, report, topics};
use tracing_subscriber::EnvFilter;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let default_level = if matches!(cli.command, Command::Usage(_)) {
        "warn"
    } else {
        "info"
    };
    tracing_subscriber::fmt()
        .with_env_filter(EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(default_level)))
        .with_writer(std::io::stderr)
        .init();

    let clickhouse = cli.clickhouse();
    match &cli.command {
        Command::Migrate => {
            let applied = migrations::apply(&clickhouse).await?;
            tracing::info!(database = %clickhouse.database, ?applied, "Schema is current.");
        }
        Command::Run(run) => {
            metrics::install_exporter(run.metrics_listen)?;
            let settings = cli.ingest(run);
            topics::ensure_with_replication(
                &settings.kafka.brokers,
                &settings.kafka.topic,
                run.partitions,
                run.replication_factor,
            )
            .await?;
            migrations::apply(&clickhouse).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            ingest::run(settings, shutdown).await?;
        }
        Command::Usage(usage) => {
            let report = report::usage(&clickhouse, &usage.consumer, usage.since).await?;
            if usage.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).context("serializing the report")?
                );
            } else {
                print!("{}", report.to_table());
            }
        }
    }
    Ok(())
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "Cannot listen for SIGTERM; only Ctrl-C stops ingest.");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("Shutdown requested; settling the batch in hand.");
    shutdown.cancel();
}
