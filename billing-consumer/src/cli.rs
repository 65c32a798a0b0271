//! The command line: global connection flags (each also read from the environment) and the subcommands
//! `migrate`, `run`, `quota`, `usage`, `invoice`, `audit`, `rebuild`, `reingest-rejected` and `check-prices`. Parsing only;
//! `main.rs` dispatches.
//!
//! `run` and `quota` take `--config-topic <name>` (env [`CONFIG_TOPIC_ENV`]; off by default): follow the admin
//! API's config topic (normally `tollgate.config.v1`). Once it held any change, its limits replace the gateway
//! file's for the quota loop (as its resources replace the gateway's file's), applied while it runs; its price versions are added to the `--prices`
//! file's for ingest (a version the file already has at other prices is refused, the file's kept). See
//! [`crate::config_topic`].

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use chrono::{DateTime, Utc};
use clap::{Args, Parser, Subcommand, ValueEnum};
use tollgate_plumbing::kafka::{KafkaConnection, property_problem};

use crate::error::BillingError;
use crate::ingest::IngestSettings;
use crate::kafka::KafkaSettings;
use crate::ledger::ClickHouseSettings;
use crate::ledger::pricing::{self, PriceTable};
use crate::quota::QuotaSettings;
use crate::quota::policy::ConfiguredScope;
use crate::replay::audit::AuditSettings;
use crate::replay::rebuild::RebuildSettings;
use crate::reports::invoice::Period;

/// The only way to give the ClickHouse password: it never appears on a command line or in a log.
pub const CLICKHOUSE_PASSWORD_ENV: &str = "TOLLGATE_CLICKHOUSE_PASSWORD";
/// The environment variable naming the ClickHouse cluster (`--clickhouse-cluster`).
pub const CLICKHOUSE_CLUSTER_ENV: &str = "TOLLGATE_CLICKHOUSE_CLUSTER";
/// The environment variable naming the price file, for every command that takes `--prices`.
pub const PRICES_ENV: &str = "TOLLGATE_PRICES";
/// The environment variable naming the config topic, for `run` and `quota` (`--config-topic`).
pub const CONFIG_TOPIC_ENV: &str = "TOLLGATE_CONFIG_TOPIC";

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

    /// A librdkafka property for every Kafka client (`security.protocol=SASL_SSL`, `sasl.mechanism=PLAIN`, …),
    /// `KEY=VALUE`; repeatable, and over the same key in `--kafka-properties-file`. Properties billing-consumer
    /// sets itself for its guarantees (group, commits, acknowledgements) are refused.
    #[arg(long = "kafka-property", global = true, value_name = "KEY=VALUE", value_parser = parse_property)]
    pub kafka_properties: Vec<(String, String)>,

    /// A file of librdkafka properties for every Kafka client, one `KEY=VALUE` per line (`#` starts a comment):
    /// the place for credentials, which a command line shows to every user of the host.
    #[arg(
        long,
        global = true,
        env = "TOLLGATE_KAFKA_PROPERTIES_FILE",
        value_name = "PATH"
    )]
    pub kafka_properties_file: Option<PathBuf>,

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

    /// The ClickHouse cluster (a `remote_servers` name, e.g. tollgate) to lay the ledger out on: replicated
    /// tables per shard and Distributed tables over them, sharded by consumer, every DDL ON CLUSTER. Unset: one
    /// server (as when empty), tables as they always were. A database made in one layout is refused in the
    /// other.
    #[arg(
        long,
        global = true,
        env = CLICKHOUSE_CLUSTER_ENV,
        value_name = "NAME",
        value_parser = cluster_name
    )]
    pub clickhouse_cluster: Option<String>,

    /// What to do.
    #[command(subcommand)]
    pub command: Command,
}

/// The subcommands.
#[derive(Debug, Subcommand)]
pub enum Command {
    /// Create the database and apply the missing migrations, then exit.
    Migrate,
    /// Create the usage topic and the (compacted) quota topic unless they exist, then exit.
    CreateTopics(CreateTopicsArgs),
    /// Ensure the topic exists, migrate, then ingest usage events until SIGTERM or Ctrl-C; with --quota-config,
    /// also run the quota loop.
    Run(RunArgs),
    /// Run only the quota loop until SIGTERM or Ctrl-C: the one quota writer beside any number of `run`
    /// replicas started without --quota-config.
    Quota(QuotaArgs),
    /// Print one consumer's usage (requests and tokens per model) from ClickHouse.
    Usage(UsageArgs),
    /// Print one consumer's invoice for a calendar month (UTC) from ClickHouse: line items per model and price
    /// version, totals per currency.
    Invoice(InvoiceArgs),
    /// Recompute a time range's usage and costs from the Kafka topic and compare them with ClickHouse; print
    /// every difference. Exit status: 0 when both agree, 1 when they differ, 2 when the audit could not run.
    Audit(AuditArgs),
    /// Re-ingest a time range from the Kafka topic into a fresh table like usage_events, priced with the
    /// current prices.
    Rebuild(RebuildArgs),
    /// Decode the messages kept in usage_events_rejected again with this build's reader and write those that
    /// decode now to usage_events (priced), marking them; idempotent: running it twice bills each event once.
    ReingestRejected(ReingestArgs),
    /// Validate a price file and list its versions.
    CheckPrices(CheckPricesArgs),
}

/// Flags of `run`.
#[derive(Debug, Args)]
pub struct CreateTopicsArgs {
    /// The usage topic.
    #[arg(long, default_value = tollgate_schemas::topics::USAGE_V1)]
    pub topic: String,
    /// Partitions of the usage topic if it has to be created.
    #[arg(long, default_value_t = 3)]
    pub partitions: i32,
    /// The quota topic (one partition, compacted).
    #[arg(long, default_value = tollgate_schemas::topics::QUOTA_V1)]
    pub quota_topic: String,
}

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
    #[arg(long, default_value_t = crate::kafka::topics::BROKER_DEFAULT_REPLICATION, allow_negative_numbers = true)]
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
    /// and computes the token limits configured there. Several processes may: the one holding the quota lease
    /// publishes, the others stand by.
    #[arg(long, env = "TOLLGATE_CONFIG")]
    pub quota_config: Option<PathBuf>,

    /// The quota topic the quota loop publishes to.
    #[arg(long, default_value = tollgate_schemas::topics::QUOTA_V1)]
    pub quota_topic: String,

    /// The quota loop's tuning (with --quota-config).
    #[command(flatten)]
    pub quota_tuning: QuotaTuning,

    /// The price file: every event is stored with its cost. Without it, events are stored unpriced (cost 0)
    /// and invoices show them so.
    #[arg(long, env = PRICES_ENV)]
    pub prices: Option<PathBuf>,

    /// Follow the admin API's config topic (e.g. tollgate.config.v1): its price versions are added to the
    /// price file's, and once it held any change its limits replace the --quota-config file's, live.
    #[arg(long, env = CONFIG_TOPIC_ENV)]
    pub config_topic: Option<String>,
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

    /// The quota loop's tuning.
    #[command(flatten)]
    pub tuning: QuotaTuning,

    /// Address of the Prometheus metrics endpoint.
    #[arg(long, env = "BILLING_METRICS_LISTEN", default_value = "127.0.0.1:9464")]
    pub metrics_listen: SocketAddr,

    /// Follow the admin API's config topic (e.g. tollgate.config.v1): once it held any change, its limits
    /// replace the --config file's, live.
    #[arg(long, env = CONFIG_TOPIC_ENV)]
    pub config_topic: Option<String>,

    /// The price file (`[[prices]]` entries) the spend of budgets is counted at; without it (and without
    /// config-topic prices) every event counts as unpriced, spending nothing.
    #[arg(long, env = PRICES_ENV)]
    pub prices: Option<PathBuf>,
}

/// The quota loop's tuning, for `run --quota-config` and `quota`.
#[derive(Debug, Clone, Args)]
pub struct QuotaTuning {
    /// Usage event ids the quota loop remembers to count a redelivered event once (0 turns it off). About
    /// [`crate::quota::windows::DEDUP_BYTES_PER_ID`] bytes each at most (52 MiB for the default 1,000,000);
    /// at most [`crate::quota::windows::MAX_DEDUP_CAPACITY`].
    #[arg(long, default_value_t = crate::quota::windows::DEFAULT_DEDUP_CAPACITY, value_parser = dedup_ids)]
    pub quota_dedup_ids: usize,

    /// How far an event's time may be ahead of the broker's timestamp of its message before the quota loop
    /// counts it at the broker's time instead (and counts it in billing_quota_clock_skew_events_total).
    #[arg(long, default_value = "5m", value_parser = max_clock_skew)]
    pub quota_max_clock_skew: Duration,

    /// Threshold alerts by webhook.
    #[command(flatten)]
    pub alerts: AlertArgs,
}

impl Default for QuotaTuning {
    fn default() -> Self {
        Self {
            quota_dedup_ids: crate::quota::windows::DEFAULT_DEDUP_CAPACITY,
            quota_max_clock_skew: crate::quota::windows::DEFAULT_MAX_CLOCK_SKEW,
            alerts: AlertArgs::default(),
        }
    }
}

/// Threshold alerts of the quota loop ([`crate::alerts`]): off unless `--alert-webhook-url` is given; checked
/// at start-up, every problem reported at once.
#[derive(Debug, Clone, Args)]
pub struct AlertArgs {
    /// POST a signed JSON alert here (http:// or https://) when a token limit's window crosses a threshold.
    /// Alerts are off without it.
    #[arg(long, env = "TOLLGATE_ALERT_WEBHOOK_URL")]
    pub alert_webhook_url: Option<String>,

    /// The environment variable holding the webhook's HMAC-SHA256 secret (at least 16 bytes); the secret itself
    /// never goes on the command line.
    #[arg(long, default_value = crate::alerts::settings::DEFAULT_SECRET_ENV)]
    pub alert_secret_env: String,

    /// Thresholds in percent of each limit, comma-separated (1 to 1000).
    #[arg(long, env = "TOLLGATE_ALERT_THRESHOLDS", default_value = "50,80,100")]
    pub alert_thresholds: String,

    /// The compacted topic where what was sent is kept (read at start, so nothing is sent twice).
    #[arg(long, default_value = tollgate_schemas::topics::ALERTS_V1)]
    pub alerts_topic: String,

    /// Delivery attempts per alert (network errors, timeouts, 5xx and 429 are retried), then it is failed.
    #[arg(long, default_value_t = 8)]
    pub alert_max_attempts: u32,

    /// The wait after the first failed attempt; doubled after each, with jitter.
    #[arg(long, default_value = "500ms", value_parser = humantime::parse_duration)]
    pub alert_retry_initial: Duration,

    /// The longest wait between attempts.
    #[arg(long, default_value = "30s", value_parser = humantime::parse_duration)]
    pub alert_retry_max: Duration,

    /// How long one attempt may take.
    #[arg(long, default_value = "10s", value_parser = humantime::parse_duration)]
    pub alert_timeout: Duration,
}

impl Default for AlertArgs {
    fn default() -> Self {
        let retry = crate::alerts::settings::RetryPolicy::default();
        Self {
            alert_webhook_url: None,
            alert_secret_env: crate::alerts::settings::DEFAULT_SECRET_ENV.to_owned(),
            alert_thresholds: "50,80,100".to_owned(),
            alerts_topic: tollgate_schemas::topics::ALERTS_V1.to_owned(),
            alert_max_attempts: retry.max_attempts,
            alert_retry_initial: retry.initial_backoff,
            alert_retry_max: retry.max_backoff,
            alert_timeout: retry.attempt_timeout,
        }
    }
}

impl AlertArgs {
    /// The validated settings, reading the secret from the process environment; `None` when alerts are off.
    pub fn settings(&self) -> Result<Option<crate::alerts::AlertSettings>, BillingError> {
        self.settings_with_env(|name| std::env::var(name).ok())
    }

    /// [`AlertArgs::settings`] with `env` for the environment.
    pub fn settings_with_env(
        &self,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<crate::alerts::AlertSettings>, BillingError> {
        let input = crate::alerts::settings::AlertInput {
            url: self.alert_webhook_url.clone(),
            secret_env: self.alert_secret_env.clone(),
            thresholds: self.alert_thresholds.clone(),
            topic: self.alerts_topic.clone(),
            retry: crate::alerts::settings::RetryPolicy {
                max_attempts: self.alert_max_attempts,
                initial_backoff: self.alert_retry_initial,
                max_backoff: self.alert_retry_max,
                attempt_timeout: self.alert_timeout,
            },
        };
        crate::alerts::AlertSettings::validate(&input, env)
    }
}

/// `--quota-dedup-ids`: a count up to [`crate::quota::windows::MAX_DEDUP_CAPACITY`].
fn dedup_ids(input: &str) -> Result<usize, String> {
    let ids: usize = input
        .replace('_', "")
        .parse()
        .map_err(|_| format!("`{input}` is not a number of event ids"))?;
    let max = crate::quota::windows::MAX_DEDUP_CAPACITY;
    if ids > max {
        return Err(format!(
            "{ids} ids would take up to {} MiB; at most {max} ({} MiB)",
            ids.saturating_mul(crate::quota::windows::DEDUP_BYTES_PER_ID) >> 20,
            (max * crate::quota::windows::DEDUP_BYTES_PER_ID) >> 20
        ));
    }
    Ok(ids)
}

/// `--quota-max-clock-skew`: a duration from 1s to 1h.
fn max_clock_skew(input: &str) -> Result<Duration, String> {
    let skew = humantime::parse_duration(input).map_err(|e| format!("`{input}`: {e}"))?;
    if skew < Duration::from_secs(1) || skew > Duration::from_secs(3600) {
        return Err(format!("`{input}` must be between 1s and 1h"));
    }
    Ok(skew)
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

/// How an invoice is printed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum InvoiceFormat {
    /// An aligned text table.
    Table,
    /// JSON, amounts as exact decimal strings beside their micro-units.
    Json,
    /// CSV with a header: line items, then one record per currency total.
    Csv,
}

/// Flags of `reingest-rejected`.
#[derive(Debug, Args)]
pub struct ReingestArgs {
    /// Only rows received at or after this time: RFC 3339, a date (midnight UTC) or a duration ago. All when
    /// absent.
    #[arg(long, value_parser = since_now)]
    pub since: Option<DateTime<Utc>>,

    /// The price file the recovered events are priced with (as ingest would have); unpriced without it.
    #[arg(long, env = PRICES_ENV)]
    pub prices: Option<PathBuf>,
}

/// Flags of `invoice`.
#[derive(Debug, Args)]
#[command(group(clap::ArgGroup::new("billed").required(true).args(["consumer", "team", "organization"])))]
pub struct InvoiceArgs {
    /// The consumer id.
    #[arg(long)]
    pub consumer: Option<String>,

    /// A team (`[[teams]]`): the events of its consumers while they were in it.
    #[arg(long)]
    pub team: Option<String>,

    /// An organisation: the events of every team under it.
    #[arg(long)]
    pub organization: Option<String>,

    /// The calendar month, UTC, e.g. 2026-11.
    #[arg(long, value_parser = Period::parse)]
    pub period: Period,

    /// Output format.
    #[arg(long, value_enum, default_value_t = InvoiceFormat::Table)]
    pub format: InvoiceFormat,

    /// The price file, for the unit prices shown (amounts are the stored per-event costs either way).
    #[arg(long, env = PRICES_ENV)]
    pub prices: Option<PathBuf>,

    /// The table to read, e.g. one written by `rebuild`.
    #[arg(long, default_value = crate::ledger::store::USAGE_TABLE)]
    pub table: String,
}

impl InvoiceArgs {
    /// Whose invoice the flags ask for (exactly one of them is given: clap checks it).
    pub fn billed(&self) -> crate::reports::invoice::Billed {
        use crate::reports::invoice::Billed;
        match (&self.consumer, &self.team, &self.organization) {
            (_, Some(team), _) => Billed::Team(team.clone()),
            (_, _, Some(organization)) => Billed::Organization(organization.clone()),
            (consumer, _, _) => Billed::Consumer(consumer.clone().unwrap_or_default()),
        }
    }
}

/// Flags of `audit`.
#[derive(Debug, Args)]
pub struct AuditArgs {
    /// Start of the range (included), by event time: RFC 3339, a date (midnight UTC) or a duration ago.
    #[arg(long, value_parser = since_now)]
    pub from: DateTime<Utc>,

    /// End of the range (excluded), same forms.
    #[arg(long, value_parser = since_now)]
    pub to: DateTime<Utc>,

    /// The price file to recompute costs with; without it only counts and tokens are compared.
    #[arg(long, env = PRICES_ENV)]
    pub prices: Option<PathBuf>,

    /// The usage topic.
    #[arg(long, default_value = tollgate_schemas::topics::USAGE_V1)]
    pub topic: String,

    /// The ClickHouse table to compare with.
    #[arg(long, default_value = crate::ledger::store::USAGE_TABLE)]
    pub table: String,

    /// Start reading Kafka this long before --from (by Kafka time), for gateway clocks ahead of the producer's.
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub margin: Duration,

    /// List at most this many events that differ.
    #[arg(long, default_value_t = crate::replay::audit::DEFAULT_MAX_EVENTS)]
    pub max_events: usize,

    /// Print JSON instead of text.
    #[arg(long)]
    pub json: bool,
}

/// Flags of `rebuild`.
#[derive(Debug, Args)]
pub struct RebuildArgs {
    /// Start of the range (included), by event time: RFC 3339, a date (midnight UTC) or a duration ago.
    #[arg(long, value_parser = since_now)]
    pub from: DateTime<Utc>,

    /// End of the range (excluded), same forms.
    #[arg(long, value_parser = since_now)]
    pub to: DateTime<Utc>,

    /// The table to create (it must not exist), in the ledger database.
    #[arg(long)]
    pub table: String,

    /// The price file; without it every row is stored unpriced.
    #[arg(long, env = PRICES_ENV)]
    pub prices: Option<PathBuf>,

    /// The usage topic.
    #[arg(long, default_value = tollgate_schemas::topics::USAGE_V1)]
    pub topic: String,

    /// Start reading Kafka this long before --from (by Kafka time).
    #[arg(long, default_value = "1h", value_parser = humantime::parse_duration)]
    pub margin: Duration,

    /// Rows per INSERT.
    #[arg(long, default_value_t = RebuildSettings::DEFAULT_BATCH_SIZE)]
    pub batch_size: usize,
}

/// Flags of `check-prices`.
#[derive(Debug, Args)]
pub struct CheckPricesArgs {
    /// The price file.
    #[arg(long, env = PRICES_ENV)]
    pub prices: PathBuf,
}

/// `--clickhouse-cluster`: a plain identifier, as it is spliced into DDL; empty (`TOLLGATE_CLICKHOUSE_CLUSTER=`)
/// means one server, as when it is unset.
fn cluster_name(input: &str) -> Result<String, String> {
    if input.is_empty() {
        return Ok(String::new());
    }
    crate::ledger::plain_identifier(input, "clickhouse-cluster")
        .map(str::to_owned)
        .map_err(|e| e.to_string())
}

fn since_now(input: &str) -> Result<DateTime<Utc>, BillingError> {
    crate::reports::usage::parse_since(input, Utc::now())
}

/// The price table at `path`, if one is given.
pub fn load_prices(path: Option<&PathBuf>) -> Result<Option<PriceTable>, BillingError> {
    path.map(|p| pricing::load(p)).transpose()
}

/// `KEY=VALUE` of `--kafka-property`, with the key checked ([`property_problem`]).
fn parse_property(input: &str) -> Result<(String, String), String> {
    let (key, value) = input
        .split_once('=')
        .ok_or_else(|| format!("`{input}` is not KEY=VALUE"))?;
    let key = key.trim();
    match property_problem(key) {
        Some(problem) => Err(problem),
        None => Ok((key.to_owned(), value.to_owned())),
    }
}

/// The properties of a `--kafka-properties-file`: `KEY=VALUE` lines, blank lines and `#` comments skipped;
/// every line that is not a usable property is reported, by line number (never with its value).
fn parse_properties_file(text: &str) -> Result<BTreeMap<String, String>, Vec<String>> {
    let mut properties = BTreeMap::new();
    let mut problems = Vec::new();
    for (number, line) in text.lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        match line.split_once('=') {
            None => problems.push(format!("line {}: not KEY=VALUE", number + 1)),
            Some((key, value)) => match property_problem(key.trim()) {
                Some(problem) => problems.push(format!("line {}: {problem}", number + 1)),
                None => {
                    properties.insert(key.trim().to_owned(), value.trim().to_owned());
                }
            },
        }
    }
    if problems.is_empty() {
        Ok(properties)
    } else {
        Err(problems)
    }
}

impl Cli {
    /// Where every Kafka client connects: `--brokers` with the properties of `--kafka-properties-file` and
    /// then `--kafka-property`. A file that cannot be read or has bad lines is a configuration error naming
    /// every bad line.
    pub fn kafka(&self) -> Result<KafkaConnection, BillingError> {
        let mut properties = match &self.kafka_properties_file {
            None => BTreeMap::new(),
            Some(path) => {
                let text = std::fs::read_to_string(path).map_err(|e| BillingError::Config {
                    setting: "kafka-properties-file",
                    reason: format!("cannot read {}: {e}", path.display()),
                })?;
                parse_properties_file(&text).map_err(|problems| BillingError::Config {
                    setting: "kafka-properties-file",
                    reason: format!("{}: {}", path.display(), problems.join("; ")),
                })?
            }
        };
        properties.extend(self.kafka_properties.iter().cloned());
        Ok(KafkaConnection::new(self.brokers.clone()).with_properties(properties))
    }

    /// The ClickHouse settings, with the password from [`CLICKHOUSE_PASSWORD_ENV`] if set.
    pub fn clickhouse(&self) -> ClickHouseSettings {
        ClickHouseSettings {
            url: self.clickhouse_url.clone(),
            database: self.clickhouse_database.clone(),
            user: self.clickhouse_user.clone(),
            password: std::env::var(CLICKHOUSE_PASSWORD_ENV)
                .ok()
                .filter(|p| !p.is_empty()),
            cluster: self.clickhouse_cluster.clone().filter(|c| !c.is_empty()),
        }
    }

    /// The ingest settings for `run`.
    pub fn ingest(&self, kafka: &KafkaConnection, run: &RunArgs) -> IngestSettings {
        IngestSettings {
            kafka: KafkaSettings {
                connection: kafka.clone(),
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
    /// The audit's settings, with `prices` loaded from `--prices`.
    pub fn audit(
        &self,
        kafka: &KafkaConnection,
        args: &AuditArgs,
        prices: Option<PriceTable>,
    ) -> AuditSettings {
        let mut settings = AuditSettings::new(
            kafka.clone(),
            &args.topic,
            self.clickhouse(),
            args.from,
            args.to,
            prices.map(std::sync::Arc::new),
        );
        settings.table.clone_from(&args.table);
        settings.range.margin = args.margin;
        settings.max_events = args.max_events;
        settings
    }

    /// The rebuild's settings, with `prices` loaded from `--prices` (empty: unpriced).
    pub fn rebuild(
        &self,
        kafka: &KafkaConnection,
        args: &RebuildArgs,
        prices: Option<PriceTable>,
    ) -> RebuildSettings {
        let mut settings = RebuildSettings::new(
            kafka.clone(),
            &args.topic,
            self.clickhouse(),
            &args.table,
            args.from,
            args.to,
            std::sync::Arc::new(prices.unwrap_or_default()),
        );
        settings.range.margin = args.margin;
        settings.batch_size = args.batch_size;
        settings
    }
}

impl Cli {
    /// The quota loop's settings for `scopes` ([`crate::quota::policy::load`]), between `usage_topic` and
    /// `quota_topic`, with the default intervals, `tuning`, and a CloudEvents source naming this host.
    pub fn quota(
        &self,
        kafka: &KafkaConnection,
        usage_topic: &str,
        quota_topic: &str,
        scopes: Vec<ConfiguredScope>,
        tuning: &QuotaTuning,
    ) -> QuotaSettings {
        let mut settings =
            QuotaSettings::new(kafka.clone(), usage_topic, quota_topic, scopes, quota_source());
        settings.dedup_capacity = tuning.quota_dedup_ids;
        settings.max_clock_skew = tuning.quota_max_clock_skew;
        settings
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
        assert_eq!(run.config_topic, None, "off by default");
        let settings = cli.ingest(&cli.kafka().unwrap(), run);
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
    fn run_and_quota_take_the_config_topic() {
        let cli =
            Cli::try_parse_from(["billing-consumer", "run", "--config-topic", "tollgate.config.v1"]).unwrap();
        let Command::Run(run) = &cli.command else {
            panic!("expected run")
        };
        assert_eq!(run.config_topic.as_deref(), Some("tollgate.config.v1"));
        let cli = Cli::try_parse_from([
            "billing-consumer",
            "quota",
            "--config",
            "tollgate.toml",
            "--config-topic",
            "config.test",
        ])
        .unwrap();
        let Command::Quota(quota) = &cli.command else {
            panic!("expected quota")
        };
        assert_eq!(quota.config_topic.as_deref(), Some("config.test"));
        let Command::Quota(without) =
            Cli::try_parse_from(["billing-consumer", "quota", "--config", "t.toml"])
                .unwrap()
                .command
        else {
            panic!("expected quota")
        };
        assert_eq!(without.config_topic, None);
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
        let settings = cli.quota(
            &cli.kafka().unwrap(),
            &quota.topic,
            &quota.quota_topic,
            Vec::new(),
            &quota.tuning,
        );
        assert_eq!(settings.kafka.brokers, "kafka:9092");
        assert_eq!(settings.publish_interval, Duration::from_millis(20));
        assert_eq!(settings.heartbeat_interval, Duration::from_secs(1));
        assert_eq!(settings.dedup_capacity, 1_000_000);
        assert_eq!(settings.max_clock_skew, Duration::from_secs(300));
        assert!(
            settings.source.starts_with("tollgate-billing-consumer/"),
            "{}",
            settings.source
        );
    }

    /// The dedup window is bounded (its memory is ~52 bytes per id) and the skew bound is sane; both are
    /// refused at parse time with the figure, not discovered as an out-of-memory later.
    #[test]
    fn quota_dedup_ids_and_clock_skew_are_bounded() {
        let parse = |flag: &str, value: &str| {
            Cli::try_parse_from(["billing-consumer", "quota", "--config", "t.toml", flag, value])
        };
        let ok = parse("--quota-dedup-ids", "10_000_000").unwrap();
        let Command::Quota(quota) = &ok.command else {
            panic!("expected quota")
        };
        assert_eq!(quota.tuning.quota_dedup_ids, 10_000_000);
        let refused = parse("--quota-dedup-ids", "10000001").unwrap_err().to_string();
        assert!(refused.contains("at most 10000000"), "{refused}");
        assert!(parse("--quota-dedup-ids", "many").is_err());
        let skew = parse("--quota-max-clock-skew", "30s").unwrap();
        let Command::Quota(quota) = &skew.command else {
            panic!("expected quota")
        };
        assert_eq!(quota.tuning.quota_max_clock_skew, Duration::from_secs(30));
        assert!(parse("--quota-max-clock-skew", "2h").is_err());
        assert!(parse("--quota-max-clock-skew", "0s").is_err());
        let run = Cli::try_parse_from([
            "billing-consumer",
            "run",
            "--quota-config",
            "t.toml",
            "--quota-dedup-ids",
            "0",
        ])
        .unwrap();
        let Command::Run(run) = &run.command else {
            panic!("expected run")
        };
        assert_eq!(run.quota_tuning.quota_dedup_ids, 0);
    }

    #[test]
    fn alerts_are_off_by_default_and_validated_when_on() {
        let cli = Cli::try_parse_from(["billing-consumer", "quota", "--config", "t.toml"]).unwrap();
        let Command::Quota(quota) = &cli.command else {
            panic!("expected quota")
        };
        assert_eq!(quota.tuning.alerts.settings_with_env(|_| None).unwrap(), None);
        let cli = Cli::try_parse_from([
            "billing-consumer",
            "run",
            "--quota-config",
            "t.toml",
            "--alert-webhook-url",
            "http://127.0.0.1:9/hook",
            "--alert-secret-env",
            "HOOK_SECRET",
            "--alert-thresholds",
            "90,75",
            "--alert-max-attempts",
            "3",
            "--alert-retry-initial",
            "10ms",
        ])
        .unwrap();
        let Command::Run(run) = &cli.command else {
            panic!("expected run")
        };
        let secret = |name: &str| (name == "HOOK_SECRET").then(|| "s".repeat(32));
        let settings = run
            .quota_tuning
            .alerts
            .settings_with_env(secret)
            .unwrap()
            .unwrap();
        assert_eq!(settings.thresholds, [75, 90]);
        assert_eq!(settings.topic, "tollgate.alerts.v1");
        assert_eq!(settings.retry.max_attempts, 3);
        assert_eq!(settings.retry.initial_backoff, Duration::from_millis(10));
        let missing = run
            .quota_tuning
            .alerts
            .settings_with_env(|_| None)
            .unwrap_err()
            .to_string();
        assert!(missing.contains("HOOK_SECRET is not set"), "{missing}");
    }

    #[test]
    fn the_clickhouse_cluster_is_off_by_default_and_checked_when_given() {
        let single = Cli::try_parse_from(["billing-consumer", "migrate"]).unwrap();
        if std::env::var_os(CLICKHOUSE_CLUSTER_ENV).is_none() {
            assert_eq!(single.clickhouse().cluster, None);
        }
        let cluster =
            Cli::try_parse_from(["billing-consumer", "migrate", "--clickhouse-cluster", "tollgate"]).unwrap();
        assert_eq!(cluster.clickhouse().cluster.as_deref(), Some("tollgate"));
        let empty = Cli::try_parse_from(["billing-consumer", "--clickhouse-cluster", "", "migrate"]).unwrap();
        assert_eq!(empty.clickhouse().cluster, None, "empty is one server, as unset");
        for bad in ["two words", "x`; DROP DATABASE tollgate", "9lives"] {
            let err = Cli::try_parse_from(["billing-consumer", "--clickhouse-cluster", bad, "migrate"])
                .unwrap_err()
                .to_string();
            assert!(err.contains("not a plain identifier"), "{bad}: {err}");
        }
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
    fn run_takes_the_prices() {
        let cli = Cli::try_parse_from(["billing-consumer", "run", "--prices", "/etc/tollgate/prices.toml"])
            .unwrap();
        let Command::Run(run) = &cli.command else {
            panic!("expected run")
        };
        assert_eq!(
            run.prices.as_deref(),
            Some(Path::new("/etc/tollgate/prices.toml"))
        );
    }

    #[test]
    fn invoice_takes_a_month_and_a_format() {
        let cli = Cli::try_parse_from([
            "billing-consumer",
            "invoice",
            "--consumer",
            "team-a",
            "--period",
            "2026-11",
            "--format",
            "csv",
        ])
        .unwrap();
        let Command::Invoice(invoice) = &cli.command else {
            panic!("expected invoice")
        };
        assert_eq!(invoice.consumer.as_deref(), Some("team-a"));
        assert_eq!(invoice.period.to_string(), "2026-11");
        assert_eq!(invoice.format, InvoiceFormat::Csv);
        assert_eq!(invoice.table, "usage_events");
        let table = Cli::try_parse_from([
            "billing-consumer",
            "invoice",
            "--consumer",
            "a",
            "--period",
            "2026-11",
        ]);
        let Command::Invoice(invoice) = table.unwrap().command else {
            panic!("expected invoice")
        };
        assert_eq!(invoice.format, InvoiceFormat::Table);
        for bad in [["--period", "2026-13"], ["--format", "pdf"]] {
            let mut args = vec![
                "billing-consumer",
                "invoice",
                "--consumer",
                "a",
                "--period",
                "2026-11",
            ];
            args.extend(bad);
            assert!(Cli::try_parse_from(args).is_err(), "{bad:?}");
        }
    }

    #[test]
    fn audit_takes_a_range_and_builds_its_settings() {
        let cli = Cli::try_parse_from([
            "billing-consumer",
            "audit",
            "--from",
            "2026-11-01",
            "--to",
            "2026-12-01T00:00:00Z",
            "--table",
            "usage_events_rebuilt",
            "--max-events",
            "5",
        ])
        .unwrap();
        let Command::Audit(args) = &cli.command else {
            panic!("expected audit")
        };
        assert!(!args.json);
        let settings = cli.audit(&cli.kafka().unwrap(), args, None);
        assert_eq!(settings.range.from.to_rfc3339(), "2026-11-01T00:00:00+00:00");
        assert_eq!(settings.range.to.to_rfc3339(), "2026-12-01T00:00:00+00:00");
        assert_eq!(settings.range.topic, "tollgate.usage.v1");
        assert_eq!(settings.table, "usage_events_rebuilt");
        assert_eq!(settings.range.margin, Duration::from_secs(3600));
        assert_eq!(settings.max_events, 5);
        assert_eq!(settings.prices, None);
        assert!(Cli::try_parse_from(["billing-consumer", "audit", "--from", "2026-11-01"]).is_err());
    }

    #[test]
    fn rebuild_needs_a_table() {
        assert!(
            Cli::try_parse_from([
                "billing-consumer",
                "rebuild",
                "--from",
                "2026-11-01",
                "--to",
                "2026-12-01"
            ])
            .is_err()
        );
        let cli = Cli::try_parse_from([
            "billing-consumer",
            "rebuild",
            "--from",
            "2026-11-01",
            "--to",
            "2026-12-01",
            "--table",
            "usage_events_2026_11",
        ])
        .unwrap();
        let Command::Rebuild(args) = &cli.command else {
            panic!("expected rebuild")
        };
        let settings = cli.rebuild(&cli.kafka().unwrap(), args, None);
        assert_eq!(settings.table, "usage_events_2026_11");
        assert_eq!(settings.batch_size, 50_000);
        assert!(settings.prices.is_empty());
    }

    #[test]
    fn bad_since_and_password_flag_are_refused() {
        assert!(
            Cli::try_parse_from(["billing-consumer", "usage", "--consumer", "a", "--since", "soon"]).is_err()
        );
        assert!(Cli::try_parse_from(["billing-consumer", "--clickhouse-password", "x", "migrate"]).is_err());
    }

    /// Every Kafka client gets the operator's properties: from a file (where credentials belong) and from
    /// flags, the flags winning; a property the service sets itself is refused with its name.
    #[test]
    fn kafka_properties_come_from_a_file_and_flags_and_reserved_ones_are_refused() {
        let dir = std::env::temp_dir().join(format!("tollgate-cli-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("kafka.properties");
        std::fs::write(
            &file,
            "# credentials\nsecurity.protocol=SASL_SSL\nsasl.password = hunter2\n\nsocket.timeout.ms=30000\n",
        )
        .unwrap();
        let cli = Cli::try_parse_from([
            "billing-consumer",
            "run",
            "--brokers",
            "kafka:9093",
            "--kafka-properties-file",
            file.to_str().unwrap(),
            "--kafka-property",
            "socket.timeout.ms=5000",
            "--kafka-property",
            "sasl.mechanism=PLAIN",
        ])
        .unwrap();
        let kafka = cli.kafka().unwrap();
        assert_eq!(kafka.brokers, "kafka:9093");
        assert_eq!(kafka.properties["security.protocol"], "SASL_SSL");
        assert_eq!(kafka.properties["sasl.password"], "hunter2");
        assert_eq!(kafka.properties["socket.timeout.ms"], "5000");
        assert_eq!(kafka.properties["sasl.mechanism"], "PLAIN");
        let Command::Run(run) = &cli.command else {
            panic!("expected run")
        };
        assert_eq!(cli.ingest(&kafka, run).kafka.connection, kafka);

        let refused = Cli::try_parse_from(["billing-consumer", "run", "--kafka-property", "group.id=mine"])
            .unwrap_err()
            .to_string();
        assert!(refused.contains("group.id"), "{refused}");
        assert!(Cli::try_parse_from(["billing-consumer", "run", "--kafka-property", "no-equals"]).is_err());

        std::fs::write(&file, "enable.auto.commit=true\nsasl.username\nok.key=1\n").unwrap();
        let cli = Cli::try_parse_from([
            "billing-consumer",
            "run",
            "--kafka-properties-file",
            file.to_str().unwrap(),
        ])
        .unwrap();
        let err = cli.kafka().unwrap_err().to_string();
        assert!(
            err.contains("line 1") && err.contains("enable.auto.commit"),
            "{err}"
        );
        assert!(err.contains("line 2: not KEY=VALUE"), "{err}");
        assert!(!err.contains("ok.key"), "{err}");
        std::fs::remove_dir_all(&dir).unwrap();
    }
}
