//! The `billing-consumer` binary: parses the command line, installs logging, dispatches to the library.

use anyhow::Context as _;
use clap::Parser as _;
use tokio_util::sync::CancellationToken;
use tollgate_billing_consumer::cli::{Cli, Command};
use tollgate_billing_consumer::{BillingError, ingest, metrics, migrations, quota, report, topics};
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
            let quota_settings = match &run.quota_config {
                Some(path) => Some(cli.quota(&run.topic, &run.quota_topic, quota::policy::load(path)?)),
                None => {
                    tracing::info!(
                        "No --quota-config (TOLLGATE_CONFIG) given: this process does not compute quotas."
                    );
                    None
                }
            };
            metrics::install_exporter(run.metrics_listen)?;
            let settings = cli.ingest(run);
            topics::ensure_with_replication(
                &settings.kafka.brokers,
                &settings.kafka.topic,
                run.partitions,
                run.replication_factor,
            )
            .await?;
            if let Some(quota_settings) = &quota_settings {
                topics::ensure_quota(&quota_settings.brokers, &quota_settings.quota_topic).await?;
            }
            migrations::apply(&clickhouse).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            match quota_settings {
                Some(quota_settings) => {
                    let (ingested, quotas) = tokio::join!(
                        stop_all_on_error(ingest::run(settings, shutdown.clone()), &shutdown),
                        stop_all_on_error(quota::run(quota_settings, shutdown.clone()), &shutdown),
                    );
                    ingested?;
                    quotas?;
                }
                None => ingest::run(settings, shutdown).await?,
            }
        }
        Command::Quota(args) => {
            let settings = cli.quota(&args.topic, &args.quota_topic, quota::policy::load(&args.config)?);
            metrics::install_exporter(args.metrics_listen)?;
            topics::ensure_quota(&settings.brokers, &settings.quota_topic).await?;
            let shutdown = CancellationToken::new();
            tokio::spawn(cancel_on_signal(shutdown.clone()));
            quota::run(settings, shutdown).await?;
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

/// Runs `task`; if it fails, cancels `shutdown` so that the loops beside it stop too.
async fn stop_all_on_error(
    task: impl Future<Output = Result<(), BillingError>>,
    shutdown: &CancellationToken,
) -> Result<(), BillingError> {
    let result = task.await;
    if let Err(error) = &result {
        tracing::error!(error_kind = error.kind(), %error, "A loop failed; stopping the others.");
        shutdown.cancel();
    }
    result
}

/// Cancels `shutdown` on SIGTERM or Ctrl-C.
async fn cancel_on_signal(shutdown: CancellationToken) {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(error) => {
                tracing::warn!(%error, "Cannot listen for SIGTERM; only Ctrl-C stops the process.");
                std::future::pending::<()>().await;
            }
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        () = terminate => {}
    }
    tracing::info!("Shutdown requested; settling the batch in hand and the pending quota snapshots.");
    shutdown.cancel();
}
