//! Versioned schema migrations for the ledger database.
//!
//! The SQL lives in `billing-consumer/migrations/NNNN_name.sql` and is embedded in the binary with
//! `include_str!`, so a deployed binary always carries the schema it was built for. [`apply`] creates the
//! database, records what it applies in `schema_migrations (version, name, checksum, applied_at)`, applies the
//! missing migrations in version order, and refuses to go on when an applied migration's SQL changed since.
//!
//! Every statement must run on ClickHouse 18.16 and on current ClickHouse alike (no DateTime64, Map, JSON, TTL,
//! CTEs, window functions or LowCardinality; `ENGINE = X PARTITION BY … ORDER BY …`), and be idempotent
//! (`IF NOT EXISTS`): ClickHouse has no transactional DDL, so two consumers starting together may both apply a
//! migration, which must then be harmless. A file may hold several statements separated by `;`.
//!
//! Before migrating, [`apply`] checks that the server's time zone behaves as UTC ([`check_server_time_zone`]): the
//! month partitions of `usage_events` and `usage_events_rejected` are `toYYYYMM` of key columns typed `DateTime`
//! without a zone (0001, 0002; key columns cannot be altered, see 0004), which follow the server's zone.
//!
//! The files describe each table once, as it is on one server, and run as written there. With
//! `--clickhouse-cluster`, [`crate::ledger::layout`] turns each statement into its cluster form (replicated
//! `_local` tables, `Distributed` tables under the names the code uses, `ON CLUSTER` everywhere); the checksum is
//! the file's either way, so the same migration is the same version in both layouts.
//!
//! 18.16 has no `ADD COLUMN IF NOT EXISTS`, so the runner provides it: a statement
//! `ALTER TABLE t ADD COLUMN c …` (one column per statement, checked) is skipped when `system.columns` shows
//! that `t` has `c` already.

use sha2::{Digest, Sha256};

use crate::error::BillingError;
use crate::ledger::{ClickHouseSettings, layout};

/// One embedded migration.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Migration {
    /// Strictly increasing, starting at 1; the `NNNN` of the file name.
    pub version: u32,
    /// The rest of the file name, e.g. `usage_events`.
    pub name: &'static str,
    /// The file's SQL, verbatim.
    pub sql: &'static str,
}

/// Every migration this build knows, in the order they apply.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "usage_events",
        sql: include_str!("../../migrations/0001_usage_events.sql"),
    },
    Migration {
        version: 2,
        name: "usage_events_rejected",
        sql: include_str!("../../migrations/0002_usage_events_rejected.sql"),
    },
    Migration {
        version: 3,
        name: "usage_events_cost",
        sql: include_str!("../../migrations/0003_usage_events_cost.sql"),
    },
    Migration {
        version: 4,
        name: "utc_times",
        sql: include_str!("../../migrations/0004_utc_times.sql"),
    },
    Migration {
        version: 5,
        name: "token_types",
        sql: include_str!("../../migrations/0005_token_types.sql"),
    },
    Migration {
        version: 6,
        name: "teams",
        sql: include_str!("../../migrations/0006_teams.sql"),
    },
    Migration {
        version: 7,
        name: "unpriced_flag",
        sql: include_str!("../../migrations/0007_unpriced_flag.sql"),
    },
];

/// The bookkeeping table, created before anything else. Never changes (it is how changes are tracked).
pub(crate) const CREATE_SCHEMA_MIGRATIONS: &str = "CREATE TABLE IF NOT EXISTS schema_migrations \
     (version UInt32, name String, checksum String, applied_at DateTime) \
     ENGINE = MergeTree ORDER BY version";

impl Migration {
    /// SHA-256 of the SQL, lowercase hex. Any byte changed in an applied migration is refused.
    pub fn checksum(&self) -> String {
        hex::encode(Sha256::digest(self.sql.as_bytes()))
    }

    /// The statements of the file, comments removed, in order.
    pub fn statements(&self) -> Vec<String> {
        split_statements(self.sql)
    }
}

/// A row of `schema_migrations`.
#[derive(Debug, Clone, PartialEq, Eq, clickhouse::Row, serde::Deserialize)]
pub struct AppliedMigration {
    /// The migration's version.
    pub version: u32,
    /// Its name when it was applied.
    pub name: String,
    /// Its checksum when it was applied.
    pub checksum: String,
}

/// Creates the database if needed and applies the missing migrations in order. Returns the versions it applied
/// (empty when the schema was already current).
pub async fn apply(ch: &ClickHouseSettings) -> Result<Vec<u32>, BillingError> {
    check_set(MIGRATIONS)?;
    let database = ch.checked_database()?;
    let layout = ch.layout()?;
    // Every migration is laid out before any DDL runs, so one without a cluster form stops the start before it
    // changed anything.
    let mut rendered = Vec::with_capacity(MIGRATIONS.len());
    for migration in MIGRATIONS {
        let mut steps = Vec::new();
        for statement in migration.statements() {
            steps.extend(layout::steps(&statement, &layout)?);
        }
        rendered.push((migration.version, steps));
    }
    ch.server_client()
        .query(&layout::create_database(database, &layout))
        .execute()
        .await
        .map_err(BillingError::clickhouse("create database"))?;

    let client = ch.client();
    check_server_time_zone(&client).await?;
    let existing = client
        .query("SELECT name, engine FROM system.tables WHERE database = ?")
        .bind(database)
        .fetch_all::<(String, String)>()
        .await
        .map_err(BillingError::clickhouse("read system.tables"))?;
    layout::check_existing(&layout, &existing)?;
    for step in layout::steps(CREATE_SCHEMA_MIGRATIONS, &layout)? {
        client
            .query(&step.sql)
            .execute()
            .await
            .map_err(BillingError::clickhouse("create schema_migrations"))?;
    }
    let applied = client
        .query("SELECT version, name, checksum FROM schema_migrations ORDER BY version")
        .fetch_all::<AppliedMigration>()
        .await
        .map_err(BillingError::clickhouse("read schema_migrations"))?;

    for unknown in applied
        .iter()
        .filter(|a| MIGRATIONS.iter().all(|m| m.version != a.version))
    {
        tracing::warn!(
            version = unknown.version,
            name = %unknown.name,
            "The database has a migration this build does not know; it was applied by a newer build."
        );
    }

    let mut newly_applied = Vec::new();
    for migration in pending(MIGRATIONS, &applied)? {
        let steps = rendered
            .iter()
            .find(|(version, _)| *version == migration.version)
            .map(|(_, steps)| steps.as_slice())
            .unwrap_or_default();
        for step in steps {
            if let Some((table, column)) = &step.added_column
                && column_exists(ch, &client, table, column).await?
            {
                tracing::info!(
                    version = migration.version,
                    table,
                    column,
                    "The column exists already; skipping its ADD COLUMN."
                );
                continue;
            }
            client
                .query(&step.sql)
                .execute()
                .await
                .map_err(BillingError::clickhouse("apply migration"))?;
        }
        client
            .query(
                "INSERT INTO schema_migrations (version, name, checksum, applied_at) VALUES (?, ?, ?, now())",
            )
            .bind(migration.version)
            .bind(migration.name)
            .bind(migration.checksum())
            .execute()
            .await
            .map_err(BillingError::clickhouse("record migration"))?;
        tracing::info!(
            database,
            version = migration.version,
            name = migration.name,
            "Applied migration."
        );
        newly_applied.push(migration.version);
    }
    Ok(newly_applied)
}

/// Winter and summer instants, 2026-01-01 and 2026-07-01 00:00:00 UTC: a zone with any offset (or daylight saving
/// time) prints one of them differently.
const UTC_PROBES: [(u32, &str); 2] = [
    (1_767_225_600, "2026-01-01 00:00:00"),
    (1_782_864_000, "2026-07-01 00:00:00"),
];

/// Fails unless the server's time zone prints both [`UTC_PROBES`] as UTC: the ledger's month partitions are cut in
/// that zone, and an invoice month is a UTC month.
pub async fn check_server_time_zone(client: &clickhouse::Client) -> Result<(), BillingError> {
    let (zone, first, second): (String, String, String) = client
        .query("SELECT timezone(), toString(toDateTime(?)), toString(toDateTime(?))")
        .bind(UTC_PROBES[0].0)
        .bind(UTC_PROBES[1].0)
        .fetch_one()
        .await
        .map_err(BillingError::clickhouse("read the server's time zone"))?;
    if first == UTC_PROBES[0].1 && second == UTC_PROBES[1].1 {
        return Ok(());
    }
    Err(BillingError::Config {
        setting: "ClickHouse server timezone",
        reason: format!(
            "the server's time zone is `{zone}` ({} prints as {first}); usage_events is partitioned by month in \
             the server's zone and invoices are UTC months: set <timezone>UTC</timezone> in its config.xml",
            UTC_PROBES[0].1
        ),
    })
}

/// The migrations of `known` that `applied` lacks, in version order; fails if an applied migration that `known`
/// also has was applied with another checksum. Applied versions that `known` lacks (from a newer build) are
/// ignored here. Duplicate rows for one version (two consumers migrating at once) are fine when they agree.
pub fn pending<'a>(
    known: &'a [Migration],
    applied: &[AppliedMigration],
) -> Result<Vec<&'a Migration>, BillingError> {
    check_set(known)?;
    let mut todo = Vec::new();
    for migration in known {
        let mut records = applied
            .iter()
            .filter(|a| a.version == migration.version)
            .peekable();
        if records.peek().is_none() {
            todo.push(migration);
            continue;
        }
        let embedded = migration.checksum();
        if let Some(changed) = records.find(|a| a.checksum != embedded) {
            return Err(BillingError::MigrationChanged {
                version: migration.version,
                name: migration.name.to_owned(),
                applied: changed.checksum.clone(),
                embedded,
            });
        }
    }
    Ok(todo)
}

/// True when `table` of the database has `column`.
async fn column_exists(
    ch: &ClickHouseSettings,
    client: &clickhouse::Client,
    table: &str,
    column: &str,
) -> Result<bool, BillingError> {
    let found: u64 = client
        .query("SELECT count() FROM system.columns WHERE database = ? AND table = ? AND name = ?")
        .bind(ch.database.as_str())
        .bind(table)
        .bind(column)
        .fetch_one()
        .await
        .map_err(BillingError::clickhouse("read system.columns"))?;
    Ok(found > 0)
}

/// The table and column of an `ALTER TABLE t ADD COLUMN c …` statement (keywords in any case, names bare or in
/// backquotes); `None` for any other statement.
pub fn added_column(statement: &str) -> Option<(&str, &str)> {
    let mut words = statement.split_whitespace();
    let mut keyword = |expected: &str| words.next().is_some_and(|w| w.eq_ignore_ascii_case(expected));
    if !(keyword("ALTER") && keyword("TABLE")) {
        return None;
    }
    let table = words.next()?;
    let mut keyword = |expected: &str| words.next().is_some_and(|w| w.eq_ignore_ascii_case(expected));
    if !(keyword("ADD") && keyword("COLUMN")) {
        return None;
    }
    let column = words.next()?;
    Some((table.trim_matches('`'), column.trim_matches('`')))
}

/// Versions strictly increasing from 1 without gaps, no file without a statement, one column per ADD COLUMN.
fn check_set(known: &[Migration]) -> Result<(), BillingError> {
    for (index, migration) in known.iter().enumerate() {
        let expected = u32::try_from(index + 1).unwrap_or(u32::MAX);
        if migration.version != expected {
            return Err(BillingError::MigrationSet(format!(
                "migration `{}` has version {}, expected {expected} (versions count up from 1 without gaps)",
                migration.name, migration.version
            )));
        }
        let statements = migration.statements();
        if statements.is_empty() {
            return Err(BillingError::MigrationSet(format!(
                "migration {} `{}` has no statement",
                migration.version, migration.name
            )));
        }
        for statement in statements.iter().filter(|s| added_column(s).is_some()) {
            if statement.to_ascii_uppercase().matches("ADD COLUMN").count() > 1 {
                return Err(BillingError::MigrationSet(format!(
                    "migration {} `{}` adds several columns in one statement; add one per statement, so that \
                     a column that exists already can be skipped: {statement}",
                    migration.version, migration.name
                )));
            }
        }
    }
    Ok(())
}

/// Splits SQL on `;` outside quotes and comments; drops `--` and `/* */` comments and empty statements.
fn split_statements(sql: &str) -> Vec<String> {
    let mut statements = Vec::new();
    let mut current = String::new();
    let mut chars = sql.chars().peekable();
    while let Some(c) = chars.next() {
        match c {
            '-' if chars.peek() == Some(&'-') => {
                for skipped in chars.by_ref() {
                    if skipped == '\n' {
                        current.push('\n');
                        break;
                    }
                }
            }
            '/' if chars.peek() == Some(&'*') => {
                chars.next();
                let mut previous = ' ';
                for skipped in chars.by_ref() {
                    if previous == '*' && skipped == '/' {
                        break;
                    }
                    previous = skipped;
                }
                current.push(' ');
            }
            '\'' | '"' | '`' => {
                current.push(c);
                while let Some(inner) = chars.next() {
                    current.push(inner);
                    if inner == '\\' {
                        if let Some(escaped) = chars.next() {
                            current.push(escaped);
                        }
                    } else if inner == c {
                        break;
                    }
                }
            }
            ';' => {
                push_statement(&mut statements, &current);
                current.clear();
            }
            _ => current.push(c),
        }
    }
    push_statement(&mut statements, &current);
    statements
}

fn push_statement(statements: &mut Vec<String>, text: &str) {
    let trimmed = text.trim();
    if !trimmed.is_empty() {
        statements.push(trimmed.to_owned());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const ONE: Migration = Migration {
        version: 1,
        name: "one",
        sql: "CREATE TABLE IF NOT EXISTS a (x UInt8) ENGINE = Memory",
    };
    const TWO: Migration = Migration {
        version: 2,
        name: "two",
        sql: "CREATE TABLE IF NOT EXISTS b (x UInt8) ENGINE = Memory",
    };
    const THREE: Migration = Migration {
        version: 3,
        name: "three",
        sql: "SELECT 1; SELECT 2",
    };

    fn applied(migration: &Migration) -> AppliedMigration {
        AppliedMigration {
            version: migration.version,
            name: migration.name.to_owned(),
            checksum: migration.checksum(),
        }
    }

    fn versions(todo: &[&Migration]) -> Vec<u32> {
        todo.iter().map(|m| m.version).collect()
    }

    #[test]
    fn embedded_set_is_valid_and_every_file_has_statements() {
        check_set(MIGRATIONS).unwrap();
        let all = pending(MIGRATIONS, &[]).unwrap();
        assert_eq!(versions(&all), (1..=MIGRATIONS.len() as u32).collect::<Vec<_>>());
        let first = MIGRATIONS[0].statements();
        assert_eq!(first.len(), 1);
        assert!(
            first[0].starts_with("CREATE TABLE IF NOT EXISTS usage_events"),
            "{}",
            first[0]
        );
        assert!(!first[0].contains("--"), "comments are stripped");
    }

    #[test]
    fn nothing_applied_applies_everything_in_order() {
        let known = [ONE, TWO, THREE];
        assert_eq!(versions(&pending(&known, &[]).unwrap()), vec![1, 2, 3]);
    }

    #[test]
    fn only_missing_ones_are_applied_in_order() {
        let known = [ONE, TWO, THREE];
        assert_eq!(versions(&pending(&known, &[applied(&ONE)]).unwrap()), vec![2, 3]);
        // A hole (2 missing while 3 is applied) is filled, still in order.
        assert_eq!(
            versions(&pending(&known, &[applied(&THREE), applied(&ONE)]).unwrap()),
            vec![2]
        );
        let all = [applied(&ONE), applied(&TWO), applied(&THREE)];
        assert!(pending(&known, &all).unwrap().is_empty());
    }

    #[test]
    fn a_changed_applied_migration_is_refused() {
        let known = [ONE, TWO];
        let mut tampered = applied(&ONE);
        tampered.checksum = Migration {
            sql: "CREATE TABLE a (x UInt16) ENGINE = Memory",
            ..ONE
        }
        .checksum();
        let err = pending(&known, &[tampered, applied(&TWO)]).unwrap_err();
        assert_eq!(err.kind(), "migration_changed");
        assert!(err.to_string().contains("migration 1 (one)"), "{err}");
    }

    #[test]
    fn duplicate_records_that_agree_are_fine_and_unknown_newer_ones_ignored() {
        let known = [ONE, TWO];
        let newer = AppliedMigration {
            version: 9,
            name: "future".into(),
            checksum: "x".into(),
        };
        let todo = pending(&known, &[applied(&ONE), applied(&ONE), newer]).unwrap();
        assert_eq!(versions(&todo), vec![2]);
    }

    #[test]
    fn malformed_sets_are_refused() {
        assert_eq!(pending(&[TWO], &[]).unwrap_err().kind(), "migration_set");
        assert_eq!(pending(&[ONE, THREE], &[]).unwrap_err().kind(), "migration_set");
        assert_eq!(pending(&[ONE, ONE], &[]).unwrap_err().kind(), "migration_set");
        let empty = Migration {
            version: 1,
            name: "empty",
            sql: "-- nothing;\n ; ",
        };
        assert_eq!(pending(&[empty], &[]).unwrap_err().kind(), "migration_set");
    }

    #[test]
    fn add_column_statements_name_their_table_and_column() {
        assert_eq!(
            added_column("ALTER TABLE usage_events ADD COLUMN cost_micros Int64 DEFAULT 0"),
            Some(("usage_events", "cost_micros"))
        );
        assert_eq!(
            added_column("alter table `usage_events`\n  add column `currency` String"),
            Some(("usage_events", "currency"))
        );
        for other in [
            "ALTER TABLE usage_events DROP COLUMN cost_micros",
            "ALTER TABLE usage_events ADD INDEX i x TYPE minmax GRANULARITY 1",
            "CREATE TABLE IF NOT EXISTS a (x UInt8) ENGINE = Memory",
            "ALTER TABLE",
        ] {
            assert_eq!(added_column(other), None, "{other}");
        }
        // The embedded cost migration adds its three columns one per statement.
        let added: Vec<_> = MIGRATIONS[2]
            .statements()
            .iter()
            .filter_map(|s| added_column(s).map(|(t, c)| format!("{t}.{c}")))
            .collect();
        assert_eq!(
            added,
            [
                "usage_events.cost_micros",
                "usage_events.currency",
                "usage_events.price_version"
            ]
        );
    }

    #[test]
    fn several_columns_in_one_add_column_statement_are_refused() {
        let two = Migration {
            version: 1,
            name: "two_columns",
            sql: "ALTER TABLE a ADD COLUMN x UInt8, ADD COLUMN y UInt8",
        };
        let err = pending(&[two], &[]).unwrap_err();
        assert_eq!(err.kind(), "migration_set");
        assert!(err.to_string().contains("one per statement"), "{err}");
    }

    #[test]
    fn checksum_is_sha256_hex_of_the_sql() {
        let m = Migration {
            version: 1,
            name: "x",
            sql: "abc",
        };
        assert_eq!(
            m.checksum(),
            "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad"
        );
    }

    #[test]
    fn statements_split_outside_quotes_and_comments() {
        let sql = "-- header; with a semicolon\nCREATE TABLE a (s String DEFAULT ';') ENGINE = Memory;\n\
                   /* block; comment */ INSERT INTO a VALUES ('it\\'s; fine');\n-- trailing\n";
        assert_eq!(
            split_statements(sql),
            vec![
                "CREATE TABLE a (s String DEFAULT ';') ENGINE = Memory".to_owned(),
                "INSERT INTO a VALUES ('it\\'s; fine')".to_owned(),
            ]
        );
    }
}
