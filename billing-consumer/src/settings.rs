//! Plain settings structs, filled by the command line (`main.rs`) or by tests, and the ClickHouse client they
//! build. Nothing here reads the environment: `clap` does that at the edge.

use std::fmt;
use std::time::Duration;

use crate::error::BillingError;
use crate::quota::policy::ConfiguredScope;

/// Where the ledger lives.
#[derive(Clone, PartialEq, Eq)]
pub struct ClickHouseSettings {
    /// HTTP endpoint, e.g. `http://127.0.0.1:8123`.
    pub url: String,
    /// Database holding `usage_events` and `schema_migrations`; created by the migrations.
    pub database: String,
    /// ClickHouse user.
    pub user: String,
    /// Password; only ever read from `TOLLGATE_CLICKHOUSE_PASSWORD`, never logged.
    pub password: Option<String>,
}

impl ClickHouseSettings {
    /// A client bound to [`Self::database`].
    ///
    /// Works against ClickHouse 18.16 and current servers alike: rows travel as plain `RowBinary` (schema
    /// validation needs a newer server), and every query waits for its end before the server answers, so an
    /// error in the middle of a `SELECT` is an HTTP error and never a 200 with truncated rows.
    pub fn client(&self) -> clickhouse::Client {
        self.server_client().with_database(&self.database)
    }

    /// A client without a database, for `CREATE DATABASE`.
    pub(crate) fn server_client(&self) -> clickhouse::Client {
        let client = clickhouse::Client::default()
            .with_url(&self.url)
            .with_user(&self.user)
            .with_validation(false)
            .with_setting("wait_end_of_query", "1");
        match &self.password {
            Some(password) => client.with_password(password),
            None => client,
        }
    }

    /// The database name, checked to be a plain identifier so it can be spliced into DDL.
    pub(crate) fn checked_database(&self) -> Result<&str, BillingError> {
        plain_identifier(&self.database, "clickhouse-database")
    }
}

/// `name`, checked to be a plain identifier (`[A-Za-z_][A-Za-z0-9_]*`) so that it can be spliced into SQL as a
/// database or table name; otherwise a configuration error naming `setting`.
pub fn plain_identifier<'a>(name: &'a str, setting: &'static str) -> Result<&'a str, BillingError> {
    let plain = !name.is_empty()
        && !name.starts_with(|c: char| c.is_ascii_digit())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    if plain {
        Ok(name)
    } else {
        Err(BillingError::Config {
            setting,
            reason: format!("`{name}` is not a plain identifier ([A-Za-z_][A-Za-z0-9_]*)"),
        })
    }
}

impl fmt::Debug for ClickHouseSettings {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("ClickHouseSettings")
            .field("url", &self.url)
            .field("database", &self.database)
            .field("user", &self.user)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
    }
}

/// Where the usage events come from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KafkaSettings {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// The usage topic, normally [`tollgate_schemas::topics::USAGE_V1`].
    pub topic: String,
    /// The consumer group; its committed offsets are the ingest's progress.
    pub group_id: String,
}

/// Everything [`crate::ingest::run`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct IngestSettings {
    /// The topic and group to consume.
    pub kafka: KafkaSettings,
    /// The ledger to write to.
    pub clickhouse: ClickHouseSettings,
    /// A batch is written when it holds this many messages…
    pub batch_size: usize,
    /// …or when this long has passed since its first message, whichever comes first.
    pub batch_wait: Duration,
}

/// Everything [`crate::quota::run`] needs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct QuotaSettings {
    /// Bootstrap servers, comma-separated `host:port`.
    pub brokers: String,
    /// The usage topic to count, normally [`tollgate_schemas::topics::USAGE_V1`].
    pub usage_topic: String,
    /// The compacted topic snapshots and heartbeats go to, normally [`tollgate_schemas::topics::QUOTA_V1`].
    pub quota_topic: String,
    /// The scopes to compute ([`crate::quota::policy`]).
    pub scopes: Vec<ConfiguredScope>,
    /// While events keep arriving, changed snapshots are published this often; whenever the usage topic has
    /// nothing more to read, at once.
    pub publish_interval: Duration,
    /// A heartbeat is published this often.
    pub heartbeat_interval: Duration,
    /// Event ids remembered for deduplication (at most [`crate::quota::windows::MAX_DEDUP_CAPACITY`]).
    pub dedup_capacity: usize,
    /// An event whose time is further ahead of its message's broker timestamp is counted at the broker's time.
    pub max_clock_skew: Duration,
    /// The CloudEvents `source` of what the loop publishes, e.g. `tollgate-billing-consumer/host-1`.
    pub source: String,
    /// The consumer group whose member holding the quota topic's partition publishes ([`crate::quota::lease`]):
    /// the same for every quota loop of `quota_topic`. Default `tollgate-quota-loop/<quota_topic>`.
    pub lease_group: String,
}

impl QuotaSettings {
    /// Default of [`Self::publish_interval`].
    pub const DEFAULT_PUBLISH_INTERVAL: Duration = Duration::from_millis(20);
    /// Default of [`Self::heartbeat_interval`].
    pub const DEFAULT_HEARTBEAT_INTERVAL: Duration = Duration::from_secs(1);

    /// Settings with the default intervals and deduplication capacity.
    pub fn new(
        brokers: impl Into<String>,
        usage_topic: impl Into<String>,
        quota_topic: impl Into<String>,
        scopes: Vec<ConfiguredScope>,
        source: impl Into<String>,
    ) -> Self {
        let quota_topic = quota_topic.into();
        Self {
            brokers: brokers.into(),
            usage_topic: usage_topic.into(),
            lease_group: format!("tollgate-quota-loop/{quota_topic}"),
            quota_topic,
            scopes,
            publish_interval: Self::DEFAULT_PUBLISH_INTERVAL,
            heartbeat_interval: Self::DEFAULT_HEARTBEAT_INTERVAL,
            dedup_capacity: crate::quota::windows::DEFAULT_DEDUP_CAPACITY,
            max_clock_skew: crate::quota::windows::DEFAULT_MAX_CLOCK_SKEW,
            source: source.into(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn settings(database: &str) -> ClickHouseSettings {
        ClickHouseSettings {
            url: "http://127.0.0.1:8123".into(),
            database: database.into(),
            user: "default".into(),
            password: Some("hunter2".into()),
        }
    }

    #[test]
    fn database_names_must_be_plain_identifiers() {
        assert!(settings("tollgate").checked_database().is_ok());
        assert!(settings("tollgate_test_42").checked_database().is_ok());
        for bad in ["", "9lives", "a-b", "a;DROP DATABASE x", "`x`"] {
            let err = settings(bad).checked_database().unwrap_err();
            assert_eq!(err.kind(), "config", "{bad}");
        }
    }

    #[test]
    fn debug_never_shows_the_password() {
        let shown = format!("{:?}", settings("tollgate"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }
}
