//! The command line: global connection flags (each also read from the environment) and the subcommands
//! `migrate`, `run`, `quota` and `usage`. Parsing only; `main.rs` dispatches.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand};

use crate::error::BillingError;
use crate::quota::policy::ConfiguredScope;
use crate::settings::{ClickHouseSettings, IngestSettings, KafkaSettings, QuotaSettings};

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
    /// Ensure the topic exists, migrate, then ingest usage events until SIGTERM or Ctrl-C; with --quota-config,
    /// also run the quota loop.
    Run(RunArgs),
    /// Run only the quota loop until SIGTERM or Ctrl-C: the one quota writer beside any number of `run`
    /// replicas started without --quota-config.
    Quota(QuotaArgs),
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

    /// The gateway's configuration file (its tollgate.toml): when given, the quota loop runs in this process too
    /// and computes the token limits configured there. Run it in one process only.
    #[arg(long, env = "TOLLGATE_CONFIG")]
    pub quota_config: Option<PathBuf>,

    /// The quota topic the quota loop publishes to.
    #[arg(long, default_value = tollgate_schemas::topics::QUOTA_V1)]
    pub quota_topic: String,
}

/// Flags of `quota`.
#[derive(Debug, Args)]
pub struct QuotaArgs {
    /// The gateway's configuration file (its tollgate.toml), whose token limits are computed.
    #[arg(long, env = "TOLLGATE_CONFIG")]
    pub config: PathBuf,

    /// The usage topic.
    #[arg(long, default_value = tollgate_schemas::topics::USAGE_V1)]
    pub topic: String,

    /// The quota topic to publish to.
    #[arg(long, default_value = tollgate_schemas::topics::QUOTA_V1)]
    pub quota_topic: String,

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

impl Cli {
    /// The quota loop's settings for `scopes` ([`crate::quota::policy::load`]), between `usage_topic` and
    /// `quota_topic`, with the default intervals and a CloudEvents source naming this host.
    pub fn quota(&self, usage_topic: &str, quota_topic: &str, scopes: Vec<ConfiguredScope>) -> QuotaSettings {
        QuotaSettings::new(&self.brokers, usage_topic, quota_topic, scopes, quota_source())
    }
}

/// `tollgate-billing-consumer/<hostname>`: the CloudEvents source of what the quota loop publishes.
fn quota_source() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .ok()
        .or_else(|| std::env::var("HOSTNAME").ok())
        .map(|h| h.trim().to_owned())
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| "unknown-host".to_owned());
    format!("{}/{host}", crate::kafka::CLIENT_ID)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;
    use std::path::Path;

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
        assert_eq!(run.quota_topic, "tollgate.quota.v1");
        let settings = cli.ingest(run);
        assert_eq!(settings.kafka.group_id, "tollgate-billing");
        assert_eq!(settings.clickhouse.database, "tollgate");
    }

    #[test]
    fn run_takes_the_quota_config() {
        let cli = Cli::try_parse_from([
            "billing-consumer",
            "run",
            "--quota-config",
            "/etc/tollgate/tollgate.toml",
            "--quota-topic",
            "quota.test",
        ])
        .unwrap();
        let Command::Run(run) = &cli.command else {
            panic!("expected run")
        };
        assert_eq!(
            run.quota_config.as_deref(),
            Some(Path::new("/etc/tollgate/tollgate.toml"))
        );
        assert_eq!(run.quota_topic, "quota.test");
    }

    #[test]
    fn quota_runs_the_quota_loop_alone() {
        let cli = Cli::try_parse_from([
            "billing-consumer",
            "quota",
            "--config",
            "tollgate.toml",
            "--brokers",
            "kafka:9092",
        ])
        .unwrap();
        let Command::Quota(quota) = &cli.command else {
            panic!("expected quota")
        };
        assert_eq!(quota.config, Path::new("tollgate.toml"));
        assert_eq!(quota.topic, "tollgate.usage.v1");
        assert_eq!(quota.quota_topic, "tollgate.quota.v1");
        let settings = cli.quota(&quota.topic, &quota.quota_topic, Vec::new());
        assert_eq!(settings.brokers, "kafka:9092");
        assert_eq!(settings.publish_interval, Duration::from_millis(20));
        assert_eq!(settings.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(settings.dedup_capacity, 1_000_000);
        assert!(
            settings.source.starts_with("tollgate-billing-consumer/"),
            "{}",
            settings.source
        );
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
