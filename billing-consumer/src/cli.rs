//! The command line: global connection flags (each also read from the environment) and the subcommands
//! `migrate`, `run` and `usage`. Parsing only; `main.rs` dispatches.

use std::net::SocketAddr;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};

use crate::error::BillingError;
use crate::settings::{ClickHouseSettings, IngestSettings, KafkaSettings};

/// The only way to give the ClickHouse password: it never appears on a command line or in a log.
pub const CLICKHOUSE_PASSWORD_ENV: &str = "TOLLGATE_CLICKHOUSE_PASSWORD";

/// Tollgate's ledger: ingests usage events from Kafka into ClickHouse and reports usage.
#[derive(Debug, Parser)]
#[command(name = "billing-consumer", version, about)]
pub struct Cli {
    /// Kafka bootstrap servers.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_KAFKA_BROKERS",
        default_value = "127.0.0.1:9092"
    )]
    pub brokers: String,

    /// ClickHouse HTTP endpoint.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_CLICKHOUSE_URL",
        default_value = "http://127.0.0.1:8123"
    )]
    pub clickhouse_url: String,

    /// ClickHouse database (created by the migrations).
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_CLICKHOUSE_DATABASE",
        default_value = "tollgate"
    )]
    pub clickhouse_database: String,

    /// ClickHouse user; the password is read from TOLLGATE_CLICKHOUSE_PASSWORD only.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_CLICKHOUSE_USER",
        default_value = "default"
    )]
    pub clickhouse_user: String,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database and apply the missing migrations, then exit.
    Migrate,
    /// Ensure the topic exists, migrate, then ingest usage events until SIGTERM or Ctrl-C.
    Run(RunArgs),
    /// Print one consumer's usage (requests and tokens per model) from ClickHouse.
    Usage(UsageArgs),
}

/// Flags of `run`.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The usage topic.
    #[arg(long, default_value = tollgate_schemas::topics::USAGE_V1)]
    pub topic: String,

    /// The consumer group.
    #[arg(long, env = "TOLLGATE_BILLING_GROUP", default_value = "tollgate-billing")]
    pub group: String,

    /// Partitions of the topic if it has to be created.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,

    /// Replication factor of the topic if it has to be created; -1 is the broker's default.
    #[arg(long, default_value_t = crate::topics::BROKER_DEFAULT_REPLICATION, allow_negative_numbers = true)]
    pub replication_factor: i32,

    /// Write a batch when it holds this many messages…
    #[arg(long, default_value_t = 5000)]
    pub batch_size: usize,

    /// …or this long after its first message (e.g. 200ms, 1s).
    #[arg(long, default_value = "200ms", value_parser = humantime::parse_duration)]
    pub batch_wait: Duration,

    /// Address of the Prometheus metrics endpoint.
    #[arg(long, env = "BILLING_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    pub metrics_listen: SocketAddr,
}

/// Flags of `usage`.
#[derive(Debug, Args)]
pub struct UsageArgs {
    /// The consumer id.
    #[arg(long)]
    pub consumer: String,

    /// Only events at or after this time: RFC 3339 (2026-11-22T10:00:00Z), a date (2026-11-22) or a duration ago
    /// (24h).
    #[arg(long, value_parser = since_now)]
    pub since: Option<DateTime<Utc>>,

    /// Print JSON instead of a table.
    #[arg(long)]
    pub json: bool,
}

fn since_now(input: &str) -> Result<DateTime<Utc>, BillingError> {
    crate::report::parse_since(input, Utc::now())
}

impl Cli {
    /// The ClickHouse settings, with the password from [`CLICKHOUSE_PASSWORD_ENV`] if set.
    pub fn clickhouse(&self) -> ClickHouseSettings {
        ClickHouseSettings {
            url: self.clickhouse_url.clone(),
            database: self.clickhouse_database.clone(),
            user: self.clickhouse_user.clone(),
            password: std::env::var(CLICKHOUSE_PASSWORD_ENV)
                .ok()
                .filter(|p| !p.is_empty()),
        }
    }

    /// The ingest settings for `run`.
    pub fn ingest(&self, run: &RunArgs) -> IngestSettings {
        IngestSettings {
            kafka: KafkaSettings {
                brokers: self.brokers.clone(),
                topic: run.topic.clone(),
                group_id: run.group.clone(),
            },
            clickhouse: self.clickhouse(),
            batch_size: run.batch_size,
            batch_wait: run.batch_wait,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn cli_is_well_formed() {
        Cli::command().debug_assert();
    }

    #[test]
    fn run_defaults() {
        let cli = Cli::try_parse_from(["billing-consumer", "run"]).unwrap();
        let Command::Run(run) = &cli.command else {
            panic!("expected run")
        };
        assert_eq!(run.topic, "tollgate.usage.v1");
        assert_eq!(run.batch_size, 5000);
        assert_eq!(run.batch_wait, Duration::from_millis(200));
        assert_eq!(run.partitions, 3);
        let settings = cli.ingest(run);
        assert_eq!(settings.kafka.group_id, "tollgate-billing");
        assert_eq!(settings.clickhouse.database, "tollgate");
    }

    #[test]
    fn global_flags_go_after_the_subcommand_too() {
        let cli = Cli::try_parse_from([
            "billing-consumer",
            "usage",
            "--consumer",
            "team-a",
            "--since",
            "2026-11-22",
            "--json",
            "--clickhouse-database",
            "ledger",
        ])
        .unwrap();
        assert_eq!(cli.clickhouse_database, "ledger");
        let Command::Usage(usage) = cli.command else {
            panic!("expected usage")
        };
        assert_eq!(usage.consumer, "team-a");
        assert!(usage.json);
        assert_eq!(usage.since.unwrap().to_rfc3339(), "2026-11-22T00:00:00+00:00");
    }

    #[test]
    fn bad_since_and_password_flag_are_refused() {
        assert!(
            Cli::try_parse_from(["billing-consumer", "usage", "--consumer", "a", "--since", "soon"]).is_err()
        );
        assert!(Cli::try_parse_from(["billing-consumer", "--clickhouse-password", "x", "migrate"]).is_err());
    }
}
