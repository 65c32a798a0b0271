//! The ledger in ClickHouse: [`ClickHouseSettings`] say where it lives and build the client, [`layout`] lays its
//! tables out on one server or a cluster (`--clickhouse-cluster`), [`migrations`] create its tables, [`pricing`] gives each event its cost, [`store`]
//! maps events to rows and writes them, and [`reingest`] bills again what was rejected once a newer reader decodes it.

pub mod layout;
pub mod migrations;
pub mod pricing;
pub mod reingest;
pub mod store;

use std::fmt;

use crate::error::BillingError;

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
    /// The cluster (`remote_servers`) the ledger is laid out on, or `None` for one server; see [`layout`].
    pub cluster: Option<String>,
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
    ///
    /// On a cluster, INSERTs into a `Distributed` table are synchronous (`insert_distributed_sync`): the server
    /// answers once the rows are on a replica of their shard, not when they sit in the node's send queue, so an
    /// acknowledged batch (whose offsets are then committed) is in the ledger.
    pub(crate) fn server_client(&self) -> clickhouse::Client {
        let mut client = clickhouse::Client::default()
            .with_url(&self.url)
            .with_user(&self.user)
            .with_validation(false)
            .with_setting("wait_end_of_query", "1");
        if self.cluster.is_some() {
            client = client.with_setting("insert_distributed_sync", "1");
        }
        match &self.password {
            Some(password) => client.with_password(password),
            None => client,
        }
    }

    /// The database name, checked to be a plain identifier so it can be spliced into DDL.
    pub(crate) fn checked_database(&self) -> Result<&str, BillingError> {
        plain_identifier(&self.database, "clickhouse-database")
    }

    /// The layout of the ledger's tables, with the database and cluster names checked.
    pub fn layout(&self) -> Result<layout::Layout<'_>, BillingError> {
        let database = self.checked_database()?;
        Ok(match &self.cluster {
            None => layout::Layout::SingleNode,
            Some(cluster) => layout::Layout::Cluster {
                cluster: plain_identifier(cluster, "clickhouse-cluster")?,
                database,
            },
        })
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
            .field("cluster", &self.cluster)
            .field("password", &self.password.as_ref().map(|_| "<redacted>"))
            .finish()
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
            cluster: None,
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
    fn the_layout_follows_the_cluster_setting_and_checks_its_name() {
        assert_eq!(settings("tollgate").layout().unwrap(), layout::Layout::SingleNode);
        let clustered = ClickHouseSettings {
            cluster: Some("tollgate".into()),
            ..settings("ledger")
        };
        assert_eq!(
            clustered.layout().unwrap(),
            layout::Layout::Cluster {
                cluster: "tollgate",
                database: "ledger"
            }
        );
        for bad in ["", "a b", "x`; DROP"] {
            let bad = ClickHouseSettings {
                cluster: Some(bad.into()),
                ..settings("ledger")
            };
            let err = bad.layout().unwrap_err();
            assert!(err.to_string().contains("clickhouse-cluster"), "{err}");
        }
    }

    #[test]
    fn debug_never_shows_the_password() {
        let shown = format!("{:?}", settings("tollgate"));
        assert!(!shown.contains("hunter2"), "{shown}");
        assert!(shown.contains("<redacted>"));
    }
}
