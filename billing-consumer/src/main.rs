//! The `billing-consumer` binary: parses the command line, installs logging (text, or one JSON object per line
//! with `--log-format json`), dispatches to the library.
//! Results go to stdout, logs to stderr. Exit status: 0 on success, 1 on an error — except `audit`, which exits
//! 1 when it found differences and 2 when it could not run.

use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context as _;
use clap::Parser;
use tokio_util::sync::CancellationToken;
use tollgate_billing_consumer::cli::{self, Cli, Command, InvoiceFormat};
use tollgate_billing_consumer::kafka::topics;
use tollgate_billing_consumer::ledger::{migrations, pricing, reingest};
use tollgate_billing_consumer::replay::{audit, rebuild};
use tollgate_billing_consumer::reports::{invoice, usage};
use tollgate_billing_consumer::service::{self, ServiceSettings, UsageTopicLayout};
use tollgate_billing_consumer::telemetry::metrics;
use tollgate_billing_consumer::{BillingError, quota};

/// The library's command line ([`Cli`]) with the binary's own logging option beside it.
#[derive(Debug, Parser)]
#[command(name = "billing-consumer", version, about)]
struct Args {
    #[command(flatten)]
    cli: Cli,

    /// Log format: text (human-readable lines) or json (one JSON object per line), as the gateway's.
    #[arg(long, env = "TOLLGATE_LOG_FORMAT", value_parser = ["text", "json"], default_value = "text", global = true)]
    log_format: String,
}

#[tokio::main]
async fn main() -> anyhow::Result<ExitCode> {
    let Args { cli, log_format } = Args::parse();
    let default_level = match cli.command {
        Command::Usage(_) | Command::Invoice(_) | Command::CheckPrices(_) => "warn",
        _ => "info",
    };
    tollgate_plumbing::telemetry::init_tracing(&log_format, default_level);

    let clickhouse = cli.clickhouse();
    let kafka = cli.kafka()?;
    match &cli.command {
        Command::Migrate => {
            let applied = migrations::apply(&clickhouse).await?;
            tracing::info!(database = %clickhouse.database, ?applied, "Schema is current.");
        }
        Command::CreateTopics(args) => {
            topics::ensure(&kafka, &args.topic, args.partitions).await?;
            topics::ensure_quota(&kafka, &args.quota_topic).await?;
            tracing::info!(usage = %args.topic, quota = %args.quota_topic, "Topics exist.");
        }
        Command::Run(run) => {
            let prices = match cli::load_prices(run.prices.as_ref())? {
                Some(prices) => {
                    tracing::info!(
                        versions = prices.versions().len(),
                        "Prices loaded; events are stored with their cost."
                    );
                    prices
                }
                None if run.config_topic.is_some() => {
                    tracing::info!(
                        "No --prices (TOLLGATE_PRICES) given: events are priced by the config topic's price \
                         versions only, and stored unpriced (cost 0) while it has none."
                    );
                    pricing::PriceTable::default()
                }
                None => {
                    tracing::warn!(
                        "No --prices (TOLLGATE_PRICES) given: events are stored unpriced (cost 0) and invoices will \
                         show them so; `rebuild` can price them later."
                    );
                    pricing::PriceTable::default()
                }
            };
            let file_scopes = match &run.quota_config {
                Some(path) => Some(quota::policy::load(path)?),
                None => {
                    tracing::info!(
                        "No --quota-config (TOLLGATE_CONFIG) given: this process does not compute quotas."
                    );
                    None
                }
            };
            let alerts = run.quota_tuning.alerts.settings()?;
            if alerts.is_some() && file_scopes.is_none() {
                tracing::warn!(
                    "--alert-webhook-url is ignored: without --quota-config this process computes no quotas."
                );
            }
            let quota = file_scopes.map(|scopes| {
                let mut quota = cli.quota(&kafka, &run.topic, &run.quota_topic, scopes, &run.quota_tuning);
                quota.alerts = alerts;
                quota
            });
            metrics::install_exporter(run.metrics_listen, Some(clickhouse.clone())).await?;
            let layout = UsageTopicLayout {
                partitions: run.partitions,
                replication_factor: run.replication_factor,
            };
            serve(ServiceSettings {
                kafka: kafka.clone(),
                ingest: Some((cli.ingest(&kafka, run), layout)),
                quota,
                config_topic: run.config_topic.clone(),
                file_prices: Arc::new(prices),
            })
            .await?;
        }
        Command::Quota(args) => {
            let alerts = args.tuning.alerts.settings()?;
            let scopes = quota::policy::load(&args.config)?;
            let prices = cli::load_prices(args.prices.as_ref())?.unwrap_or_default();
            let mut quota = cli.quota(&kafka, &args.topic, &args.quota_topic, scopes, &args.tuning);
            quota.alerts = alerts;
            metrics::install_exporter(args.metrics_listen, None).await?;
            serve(ServiceSettings {
                kafka: kafka.clone(),
                ingest: None,
                quota: Some(quota),
                config_topic: args.config_topic.clone(),
                file_prices: Arc::new(prices),
            })
            .await?;
        }
        Command::Usage(usage) => {
            let report = usage::usage(&clickhouse, &usage.consumer, usage.since).await?;
            if usage.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).context("serializing the report")?
                );
            } else {
                print!("{}", report.to_table());
            }
        }
        Command::Invoice(args) => {
            let prices = cli::load_prices(args.prices.as_ref())?;
            let invoice = invoice::invoice_of(
                &clickhouse,
                &args.table,
                &args.billed(),
                args.period,
                prices.as_ref(),
            )
            .await?;
            match args.format {
                InvoiceFormat::Table => print!("{}", invoice.to_table()),
                InvoiceFormat::Json => println!(
                    "{}",
                    serde_json::to_string_pretty(&invoice).context("serializing the invoice")?
                ),
                InvoiceFormat::Csv => print!("{}", invoice.to_csv()?),
            }
        }
        Command::Audit(args) => {
            let audited = match cli::load_prices(args.prices.as_ref()) {
                Ok(prices) => {
                    if prices.is_none() {
                        tracing::info!("No --prices (TOLLGATE_PRICES) given: costs are not compared.");
                    }
                    audit::run(&cli.audit(&kafka, args, prices)).await
                }
                Err(error) => Err(error),
            };
            let report = match audited {
                Ok(report) => report,
                Err(error) => {
                    tracing::error!(error_kind = error.kind(), %error, "The audit could not run.");
                    eprintln!("Error: {error}");
                    return Ok(ExitCode::from(2));
                }
            };
            if args.json {
                println!(
                    "{}",
                    serde_json::to_string_pretty(&report).context("serializing the audit")?
                );
            } else {
                print!("{}", report.to_text());
            }
            return Ok(if report.is_clean() {
                ExitCode::SUCCESS
            } else {
                ExitCode::from(1)
            });
        }
        Command::Rebuild(args) => {
            let prices = cli::load_prices(args.prices.as_ref())?;
            if prices.is_none() {
                tracing::warn!("No --prices (TOLLGATE_PRICES) given: every rebuilt row is stored unpriced.");
            }
            let summary = rebuild::run(&cli.rebuild(&kafka, args, prices)).await?;
            println!(
                "Rebuilt {}: {} rows from {} messages ({} duplicates, {} outside the range, {} undecodable, {} \
                 unpriced) in {:.1} s.",
                summary.table,
                summary.rows,
                summary.messages,
                summary.duplicates,
                summary.outside_range,
                summary.undecodable,
                summary.unpriced,
                summary.seconds
            );
            if !summary.unpriced_models.is_empty() {
                println!(
                    "Unpriced served models (no price in force, nor for their family): {}.",
                    summary.unpriced_models.join(", ")
                );
            }
        }
        Command::ReingestRejected(args) => {
            let prices = cli::load_prices(args.prices.as_ref())?;
            if prices.is_none() {
                tracing::warn!(
                    "No --prices (TOLLGATE_PRICES) given: every recovered event is stored unpriced."
                );
            }
            migrations::apply(&clickhouse).await?;
            let summary = reingest::run(&clickhouse, args.since, &prices.unwrap_or_default()).await?;
            let still: Vec<String> = summary
                .still_rejected
                .iter()
                .map(|(reason, n)| format!("{n} {reason}"))
                .collect();
            println!(
                "Re-ingested {} of {} rejected messages; still rejected: {}.",
                summary.reingested,
                summary.examined,
                if still.is_empty() {
                    "none".to_owned()
                } else {
                    still.join(", ")
                }
            );
        }
        Command::CheckPrices(args) => {
            let prices = pricing::load(&args.prices)?;
            print!("{}", pricing::describe(&prices));
        }
    }
    Ok(ExitCode::SUCCESS)
}

/// Runs the service until SIGTERM or Ctrl-C.
async fn serve(settings: ServiceSettings) -> Result<(), BillingError> {
    let shutdown = CancellationToken::new();
    tokio::spawn(service::cancel_on_signal(shutdown.clone()));
    service::run(settings, shutdown).await
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
    fn log_format_goes_before_or_after_the_subcommand() {
        let before = Args::try_parse_from(["billing-consumer", "--log-format", "json", "migrate"]).unwrap();
        assert_eq!(before.log_format, "json");
        assert!(matches!(before.cli.command, Command::Migrate));
        let after = Args::try_parse_from(["billing-consumer", "migrate", "--log-format", "json"]).unwrap();
        assert_eq!(after.log_format, "json");
        assert!(Args::try_parse_from(["billing-consumer", "--log-format", "xml", "migrate"]).is_err());
    }
}
