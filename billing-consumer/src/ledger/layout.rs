//! Where the ledger's tables live — one ClickHouse server, or a cluster of shards and replicas — and the DDL for
//! each. The migration files in `billing-consumer/migrations/` are the one description of every table; this module
//! decides only the parts that depend on the layout: the engine, `ON CLUSTER`, and the table names.
//!
//! - [`Layout::SingleNode`] (no `--clickhouse-cluster`): every statement runs exactly as written, as it always
//!   has; existing databases keep working and checksums do not move.
//! - [`Layout::Cluster`]: a table sharded by its key ([`Placement::Sharded`]) becomes two:
//!   `<table>_local` on every node, the `Replicated` variant of the table's engine under
//!   `/clickhouse/tables/{shard}/<db>/<table>` with replica `{replica}` (macros of each server's config), and
//!   `<table>`, a `Distributed` table over the `_local` ones with the table's sharding key, under the name the
//!   code reads and writes. A table on every node ([`Placement::EveryNode`]) is one replicated table with one
//!   path for the whole cluster. Every statement carries `ON CLUSTER`, so one consumer migrates every server.
//!
//! `usage_events` is sharded by `cityHash64(consumer_id)`: every copy of one event — a Kafka redelivery, a
//! producer retry that published it twice, a `reingest-rejected` of it — has the same consumer, so it lands on
//! the same shard, where ReplacingMergeTree (and `FINAL`, which a `Distributed` table runs per shard) collapses it
//! exactly as on one server. `usage_events_rejected` has no consumer (its payload did not decode): it is
//! sharded by a hash of its whole key `(kafka_topic, kafka_partition, kafka_offset)`, so a message's rows (a
//! redelivery, the `reingested` mark) meet on one shard too. `schema_migrations` is small and read by every
//! consumer at start: it is replicated to every node (one path, replica `{shard}-{replica}`), so any node
//! answers it whole. The prices are not in ClickHouse (a file and the config topic).
//!
//! A database made in one layout is refused in the other ([`check_existing`]): its tables would be misread (a
//! single-node table under a `Distributed` name, or the reverse); moving a ledger is an operation, not a flag.

use crate::error::BillingError;
use crate::ledger::migrations::{MIGRATIONS, added_column};

/// How the ledger's tables are laid out.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Layout<'a> {
    /// One server: the migrations' DDL as written.
    SingleNode,
    /// A cluster named in the servers' `remote_servers`, with `{shard}` and `{replica}` macros on every node.
    Cluster {
        /// The cluster's name (`--clickhouse-cluster`), a plain identifier.
        cluster: &'a str,
        /// The ledger database, a plain identifier.
        database: &'a str,
    },
}

/// How one table is spread over a cluster.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Placement {
    /// Rows spread over the shards by `key` (an expression of the row's columns), replicated within a shard.
    Sharded {
        /// The `Distributed` sharding key: every copy of one row must hash alike, so that they meet on one
        /// shard and collapse there.
        key: &'static str,
    },
    /// The whole table on every node: one replication path for the cluster.
    EveryNode,
}

/// The ledger's tables and their placement on a cluster. A migration that creates or alters a table missing here
/// cannot be rendered for a cluster (a unit test renders every migration).
pub const TABLES: &[(&str, Placement)] = &[
    (
        "usage_events",
        Placement::Sharded {
            key: "cityHash64(consumer_id)",
        },
    ),
    (
        "usage_events_rejected",
        Placement::Sharded {
            key: "cityHash64(kafka_topic, kafka_partition, kafka_offset)",
        },
    ),
    ("schema_migrations", Placement::EveryNode),
];

/// The suffix of a sharded table's per-node table.
pub const LOCAL_SUFFIX: &str = "_local";

/// One statement to run, and the column it adds when it is an `ADD COLUMN` (skipped when the table has it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Step {
    /// The SQL.
    pub sql: String,
    /// `(table, column)` of an `ALTER TABLE … ADD COLUMN`.
    pub added_column: Option<(String, String)>,
}

/// `CREATE DATABASE` for the layout.
pub fn create_database(database: &str, layout: &Layout<'_>) -> String {
    match layout {
        Layout::SingleNode => format!("CREATE DATABASE IF NOT EXISTS `{database}`"),
        Layout::Cluster { cluster, .. } => {
            format!("CREATE DATABASE IF NOT EXISTS `{database}` ON CLUSTER `{cluster}`")
        }
    }
}

/// The statements that carry out one migration statement in the layout: on one server the statement itself; on a
/// cluster, for a sharded table, the `_local` table's statement and then the `Distributed` table's (local first,
/// so that the `Distributed` table never names a column its shards lack).
pub fn steps(statement: &str, layout: &Layout<'_>) -> Result<Vec<Step>, BillingError> {
    let Layout::Cluster { cluster, database } = *layout else {
        return Ok(vec![Step {
            sql: statement.to_owned(),
            added_column: added_column(statement).map(|(t, c)| (t.to_owned(), c.to_owned())),
        }]);
    };
    if let Some(create) = Create::parse(statement) {
        let placement = placement(create.table, statement)?;
        return Ok(
            create_on_cluster(&create, create.table, placement, cluster, database)?
                .into_iter()
                .map(|sql| Step {
                    sql,
                    added_column: None,
                })
                .collect(),
        );
    }
    if let Some((table, change)) = alter(statement) {
        let column = added_column(statement).map(|(_, c)| c.to_owned());
        let tables = match placement(table, statement)? {
            Placement::Sharded { .. } => vec![format!("{table}{LOCAL_SUFFIX}"), table.to_owned()],
            Placement::EveryNode => vec![table.to_owned()],
        };
        return Ok(tables
            .into_iter()
            .map(|name| Step {
                sql: format!("ALTER TABLE `{database}`.`{name}` ON CLUSTER `{cluster}` {change}"),
                added_column: column.clone().map(|c| (name, c)),
            })
            .collect());
    }
    Err(unrenderable(
        statement,
        "only `CREATE TABLE IF NOT EXISTS` and `ALTER TABLE` statements have a cluster form",
    ))
}

/// The statements that create `table`, empty, with the structure, engine and placement of the ledger table
/// `source` (for `rebuild`): on one server `CREATE TABLE <table> AS <source>`, as always; on a cluster
/// `<table>_local` like `<source>_local` under its own replication path, and `<table>` over it, sharded as
/// `<source>`. `table` must be a plain identifier.
pub fn create_like(table: &str, source: &str, layout: &Layout<'_>) -> Result<Vec<String>, BillingError> {
    let Layout::Cluster { cluster, database } = *layout else {
        return Ok(vec![format!("CREATE TABLE {table} AS {source}")]);
    };
    let statement = MIGRATIONS
        .iter()
        .flat_map(|m| m.statements())
        .find(|s| Create::parse(s).is_some_and(|c| c.table == source))
        .ok_or_else(|| unrenderable(source, "no migration creates this table"))?;
    let mut create =
        Create::parse(&statement).ok_or_else(|| unrenderable(&statement, "not a CREATE TABLE"))?;
    let placement = placement(source, &statement)?;
    // The columns as they are now (later migrations added some), from the source's table on this node.
    let columns = match placement {
        Placement::Sharded { .. } => format!("AS `{database}`.`{source}{LOCAL_SUFFIX}`"),
        Placement::EveryNode => format!("AS `{database}`.`{source}`"),
    };
    create.columns = &columns;
    let mut statements = create_on_cluster(&create, table, placement, cluster, database)?;
    for sql in &mut statements {
        *sql = sql.replacen("CREATE TABLE IF NOT EXISTS", "CREATE TABLE", 1);
    }
    Ok(statements)
}

/// Fails when a table of `found` (`(name, engine)` from `system.tables` of the ledger database) was made for the
/// other layout: a `Distributed` `usage_events` under a single-node consumer, or a plain one under a cluster
/// consumer. Tables this build does not know are not looked at.
pub fn check_existing(layout: &Layout<'_>, found: &[(String, String)]) -> Result<(), BillingError> {
    for (name, engine) in found {
        let Some((_, placement)) = TABLES.iter().find(|(t, _)| t == name) else {
            continue;
        };
        let fits = match (layout, placement) {
            (Layout::SingleNode, _) => engine != "Distributed" && !engine.starts_with("Replicated"),
            (Layout::Cluster { .. }, Placement::Sharded { .. }) => engine == "Distributed",
            (Layout::Cluster { .. }, Placement::EveryNode) => engine.starts_with("Replicated"),
        };
        if !fits {
            let reason = match layout {
                Layout::SingleNode => format!(
                    "`{name}` is a {engine} table, made by a consumer with --clickhouse-cluster: set the same \
                     --clickhouse-cluster (TOLLGATE_CLICKHOUSE_CLUSTER)"
                ),
                Layout::Cluster { cluster, .. } => format!(
                    "`{name}` is a {engine} table, made on a single node: cluster `{cluster}` cannot adopt it in \
                     place; migrate into a new database (see docs/operations.md, ClickHouse cluster) or unset \
                     --clickhouse-cluster"
                ),
            };
            return Err(BillingError::Config {
                setting: "clickhouse-cluster",
                reason,
            });
        }
    }
    Ok(())
}

/// A `CREATE TABLE IF NOT EXISTS <table> <columns> ENGINE = <engine>[(<args>)] <tail>` statement, in pieces of
/// its text.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Create<'s> {
    table: &'s str,
    columns: &'s str,
    engine: &'s str,
    args: &'s str,
    tail: &'s str,
}

impl<'s> Create<'s> {
    fn parse(statement: &'s str) -> Option<Self> {
        let rest = keywords(statement, &["CREATE", "TABLE", "IF", "NOT", "EXISTS"])?;
        let (table, rest) = name(rest)?;
        let at = top_level_word(rest, "ENGINE")?;
        let columns = rest[..at].trim();
        let rest = rest[at + "ENGINE".len()..]
            .trim_start()
            .strip_prefix('=')?
            .trim_start();
        let engine_end = rest
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(rest.len());
        let (engine, rest) = rest.split_at(engine_end);
        let (args, tail) = match rest.strip_prefix('(') {
            Some(inner) => {
                let close = closing_paren(inner)?;
                (inner[..close].trim(), &inner[close + 1..])
            }
            None => ("", rest),
        };
        (!engine.is_empty()).then_some(Self {
            table,
            columns,
            engine,
            args,
            tail: tail.trim(),
        })
    }
}

/// The `CREATE`s of `create` under the name `table` on a cluster.
fn create_on_cluster(
    create: &Create<'_>,
    table: &str,
    placement: Placement,
    cluster: &str,
    database: &str,
) -> Result<Vec<String>, BillingError> {
    if !create.engine.ends_with("MergeTree") || create.engine.starts_with("Replicated") {
        return Err(unrenderable(
            create.engine,
            "only a non-replicated MergeTree-family engine has a Replicated variant to render",
        ));
    }
    let extra = if create.args.is_empty() {
        String::new()
    } else {
        format!(", {}", create.args)
    };
    let (local, path, replica) = match placement {
        Placement::Sharded { .. } => (
            format!("{table}{LOCAL_SUFFIX}"),
            format!("/clickhouse/tables/{{shard}}/{database}/{table}"),
            "{replica}",
        ),
        Placement::EveryNode => (
            table.to_owned(),
            format!("/clickhouse/tables/all/{database}/{table}"),
            "{shard}-{replica}",
        ),
    };
    let tail = if create.tail.is_empty() {
        String::new()
    } else {
        format!(" {}", create.tail)
    };
    let mut statements = vec![format!(
        "CREATE TABLE IF NOT EXISTS `{database}`.`{local}` ON CLUSTER `{cluster}` {columns} \
         ENGINE = Replicated{engine}('{path}', '{replica}'{extra}){tail}",
        columns = create.columns,
        engine = create.engine,
    )];
    if let Placement::Sharded { key } = placement {
        statements.push(format!(
            "CREATE TABLE IF NOT EXISTS `{database}`.`{table}` ON CLUSTER `{cluster}` AS `{database}`.`{local}` \
             ENGINE = Distributed('{cluster}', '{database}', '{local}', {key})"
        ));
    }
    Ok(statements)
}

/// The placement of a table of [`TABLES`].
fn placement(table: &str, statement: &str) -> Result<Placement, BillingError> {
    TABLES
        .iter()
        .find(|(t, _)| *t == table)
        .map(|(_, p)| *p)
        .ok_or_else(|| {
            unrenderable(
                statement,
                "the table has no placement in ledger::layout::TABLES (sharded by which key, or on every node?)",
            )
        })
}

/// The table and the rest of an `ALTER TABLE <table> <change>` statement.
fn alter(statement: &str) -> Option<(&str, &str)> {
    let rest = keywords(statement, &["ALTER", "TABLE"])?;
    let (table, change) = name(rest)?;
    let change = change.trim();
    (!change.is_empty()).then_some((table, change))
}

/// `text` after the keywords `words` (any case, separated by whitespace), or `None` if it does not start so.
fn keywords<'s>(text: &'s str, words: &[&str]) -> Option<&'s str> {
    let mut rest = text;
    for word in words {
        rest = rest.trim_start();
        let head = rest.get(..word.len())?;
        let after = rest[word.len()..].chars().next();
        if !head.eq_ignore_ascii_case(word) || after.is_some_and(|c| !c.is_whitespace()) {
            return None;
        }
        rest = &rest[word.len()..];
    }
    Some(rest)
}

/// A table name (bare or in backquotes, no database) and what follows it.
fn name(text: &str) -> Option<(&str, &str)> {
    let text = text.trim_start();
    let end = text
        .find(|c: char| c.is_whitespace() || c == '(')
        .unwrap_or(text.len());
    let table = text[..end].trim_matches('`');
    let plain = !table.is_empty() && table.chars().all(|c| c.is_ascii_alphanumeric() || c == '_');
    plain.then_some((table, &text[end..]))
}

/// The byte offset of `word` (any case, as a whole word) outside parentheses and quotes.
fn top_level_word(text: &str, word: &str) -> Option<usize> {
    let mut depth = 0_usize;
    let mut quote = None;
    let mut previous = ' ';
    for (at, c) in text.char_indices() {
        match (quote, c) {
            (Some(q), _) if c == q && previous != '\\' => quote = None,
            (Some(_), _) => {}
            (None, '\'' | '"' | '`') => quote = Some(c),
            (None, '(') => depth += 1,
            (None, ')') => depth = depth.saturating_sub(1),
            (None, _) if depth == 0 && (previous.is_whitespace() || previous == ')') => {
                let candidate = text.get(at..at + word.len());
                let after = text[at..].chars().nth(word.len());
                if candidate.is_some_and(|w| w.eq_ignore_ascii_case(word))
                    && after.is_none_or(|a| a.is_whitespace() || a == '=')
                {
                    return Some(at);
                }
            }
            (None, _) => {}
        }
        previous = c;
    }
    None
}

/// The offset of the `)` closing a group whose `(` was just before `text`.
fn closing_paren(text: &str) -> Option<usize> {
    let mut depth = 0_usize;
    for (at, c) in text.char_indices() {
        match c {
            '(' => depth += 1,
            ')' if depth == 0 => return Some(at),
            ')' => depth -= 1,
            _ => {}
        }
    }
    None
}

fn unrenderable(statement: &str, reason: &str) -> BillingError {
    BillingError::MigrationSet(format!(
        "cannot lay out for a ClickHouse cluster: {reason}: {statement}"
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ledger::migrations::CREATE_SCHEMA_MIGRATIONS;

    const CLUSTER: Layout<'static> = Layout::Cluster {
        cluster: "tollgate",
        database: "ledger",
    };

    fn all_steps(layout: &Layout<'_>) -> Vec<Step> {
        MIGRATIONS
            .iter()
            .flat_map(|m| m.statements())
            .flat_map(|s| steps(&s, layout).unwrap())
            .collect()
    }

    #[test]
    fn single_node_runs_every_statement_as_written() {
        for migration in MIGRATIONS {
            for statement in migration.statements() {
                let steps = steps(&statement, &Layout::SingleNode).unwrap();
                assert_eq!(steps.len(), 1);
                assert_eq!(steps[0].sql, statement);
                assert_eq!(
                    steps[0].added_column,
                    added_column(&statement).map(|(t, c)| (t.to_owned(), c.to_owned()))
                );
            }
        }
        assert_eq!(
            create_database("ledger", &Layout::SingleNode),
            "CREATE DATABASE IF NOT EXISTS `ledger`"
        );
    }

    #[test]
    fn every_cluster_statement_runs_on_the_cluster_and_names_its_database() {
        assert_eq!(
            create_database("ledger", &CLUSTER),
            "CREATE DATABASE IF NOT EXISTS `ledger` ON CLUSTER `tollgate`"
        );
        let steps = all_steps(&CLUSTER);
        assert!(steps.len() > MIGRATIONS.len());
        for step in &steps {
            assert!(step.sql.contains(" ON CLUSTER `tollgate` "), "{}", step.sql);
            assert!(
                step.sql.starts_with("CREATE TABLE IF NOT EXISTS `ledger`.")
                    || step.sql.starts_with("ALTER TABLE `ledger`."),
                "{}",
                step.sql
            );
        }
    }

    #[test]
    fn sharded_tables_are_replicated_locally_and_distributed_by_their_key() {
        let steps = all_steps(&CLUSTER);
        let creates: Vec<&str> = steps
            .iter()
            .map(|s| s.sql.as_str())
            .filter(|s| s.starts_with("CREATE"))
            .collect();
        assert_eq!(creates.len(), 4, "{creates:#?}");
        for (table, key) in [
            ("usage_events", "cityHash64(consumer_id)"),
            (
                "usage_events_rejected",
                "cityHash64(kafka_topic, kafka_partition, kafka_offset)",
            ),
        ] {
            let local = creates
                .iter()
                .find(|s| s.contains(&format!("`ledger`.`{table}_local` ON CLUSTER")))
                .unwrap();
            assert!(
                local.contains(&format!(
                    "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{{shard}}/ledger/{table}', \
                     '{{replica}}')"
                )),
                "{local}"
            );
            // The table's keys and columns are the migration's.
            assert!(local.contains("PARTITION BY toYYYYMM("), "{local}");
            assert!(local.contains("ORDER BY ("), "{local}");
            assert!(local.contains("kafka_offset Int64"), "{local}");
            let distributed = creates
                .iter()
                .find(|s| s.contains(&format!("`ledger`.`{table}` ON CLUSTER")))
                .unwrap();
            assert_eq!(
                *distributed,
                format!(
                    "CREATE TABLE IF NOT EXISTS `ledger`.`{table}` ON CLUSTER `tollgate` AS \
                     `ledger`.`{table}_local` ENGINE = Distributed('tollgate', 'ledger', '{table}_local', {key})"
                )
            );
            // The local table is created before the Distributed table that reads it.
            let position = |s: &&str| creates.iter().position(|c| c == s).unwrap();
            assert!(position(local) < position(distributed));
        }
        let usage = creates
            .iter()
            .find(|s| s.contains("`usage_events_local`"))
            .unwrap();
        assert!(
            usage.contains("ORDER BY (consumer_id, event_time, event_id)"),
            "the sharding key's column leads the deduplication key: {usage}"
        );
    }

    #[test]
    fn alters_change_the_local_table_then_the_distributed_one() {
        let steps = steps(
            "ALTER TABLE usage_events ADD COLUMN team String DEFAULT ''",
            &CLUSTER,
        )
        .unwrap();
        assert_eq!(
            steps,
            [
                Step {
                    sql: "ALTER TABLE `ledger`.`usage_events_local` ON CLUSTER `tollgate` ADD COLUMN team String \
                          DEFAULT ''"
                        .into(),
                    added_column: Some(("usage_events_local".into(), "team".into())),
                },
                Step {
                    sql: "ALTER TABLE `ledger`.`usage_events` ON CLUSTER `tollgate` ADD COLUMN team String \
                          DEFAULT ''"
                        .into(),
                    added_column: Some(("usage_events".into(), "team".into())),
                },
            ]
        );
        let modify = steps_of("ALTER TABLE usage_events MODIFY COLUMN ingested_at DateTime('UTC')");
        assert_eq!(modify.len(), 2);
        assert!(modify.iter().all(|s| s.added_column.is_none()));
    }

    fn steps_of(statement: &str) -> Vec<Step> {
        steps(statement, &CLUSTER).unwrap()
    }

    #[test]
    fn the_migrations_table_is_replicated_to_every_node() {
        let steps = steps_of(CREATE_SCHEMA_MIGRATIONS);
        assert_eq!(
            steps,
            [Step {
                sql:
                    "CREATE TABLE IF NOT EXISTS `ledger`.`schema_migrations` ON CLUSTER `tollgate` (version \
                      UInt32, name String, checksum String, applied_at DateTime) ENGINE = \
                      ReplicatedMergeTree('/clickhouse/tables/all/ledger/schema_migrations', \
                      '{shard}-{replica}') ORDER BY version"
                        .into(),
                added_column: None,
            }]
        );
    }

    #[test]
    fn engine_arguments_follow_the_replication_arguments() {
        let steps = steps_of(
            "CREATE TABLE IF NOT EXISTS usage_events (event_id String, v UInt64) \
             ENGINE = ReplacingMergeTree(v) ORDER BY event_id",
        );
        assert!(
            steps[0].sql.ends_with(
                "ENGINE = ReplicatedReplacingMergeTree('/clickhouse/tables/{shard}/ledger/usage_events', \
                 '{replica}', v) ORDER BY event_id"
            ),
            "{}",
            steps[0].sql
        );
    }

    #[test]
    fn what_has_no_cluster_form_is_refused() {
        for statement in [
            "CREATE TABLE IF NOT EXISTS prices (x UInt8) ENGINE = MergeTree ORDER BY x",
            "ALTER TABLE prices ADD COLUMN y UInt8",
            "CREATE TABLE IF NOT EXISTS usage_events (x UInt8) ENGINE = Memory",
            "CREATE TABLE IF NOT EXISTS usage_events (x UInt8) ENGINE = ReplicatedMergeTree('/p', 'r') ORDER BY x",
            "INSERT INTO usage_events VALUES (1)",
            "DROP TABLE usage_events",
        ] {
            let err = steps(statement, &CLUSTER).unwrap_err();
            assert_eq!(err.kind(), "migration_set", "{statement}");
            // On one server, anything runs as written.
            assert!(steps(statement, &Layout::SingleNode).is_ok());
        }
    }

    #[test]
    fn a_rebuild_table_gets_its_own_replication_path_and_the_ledger_sharding() {
        assert_eq!(
            create_like("rebuilt_2026_11", "usage_events", &Layout::SingleNode).unwrap(),
            ["CREATE TABLE rebuilt_2026_11 AS usage_events"]
        );
        let statements = create_like("rebuilt_2026_11", "usage_events", &CLUSTER).unwrap();
        assert_eq!(
            statements,
            [
                "CREATE TABLE `ledger`.`rebuilt_2026_11_local` ON CLUSTER `tollgate` AS \
                 `ledger`.`usage_events_local` ENGINE = ReplicatedReplacingMergeTree(\
                 '/clickhouse/tables/{shard}/ledger/rebuilt_2026_11', '{replica}') PARTITION BY \
                 toYYYYMM(event_time)\nORDER BY (consumer_id, event_time, event_id)",
                "CREATE TABLE `ledger`.`rebuilt_2026_11` ON CLUSTER `tollgate` AS \
                 `ledger`.`rebuilt_2026_11_local` ENGINE = Distributed('tollgate', 'ledger', \
                 'rebuilt_2026_11_local', cityHash64(consumer_id))",
            ]
        );
    }

    #[test]
    fn a_database_made_for_the_other_layout_is_refused() {
        let rows = |engines: &[(&str, &str)]| -> Vec<(String, String)> {
            engines
                .iter()
                .map(|(n, e)| ((*n).to_owned(), (*e).to_owned()))
                .collect()
        };
        let single = rows(&[
            ("usage_events", "ReplacingMergeTree"),
            ("usage_events_rejected", "ReplacingMergeTree"),
            ("schema_migrations", "MergeTree"),
            ("rebuilt_2026_11", "ReplacingMergeTree"),
        ]);
        let cluster = rows(&[
            ("usage_events", "Distributed"),
            ("usage_events_local", "ReplicatedReplacingMergeTree"),
            ("usage_events_rejected", "Distributed"),
            ("schema_migrations", "ReplicatedMergeTree"),
        ]);
        check_existing(&Layout::SingleNode, &single).unwrap();
        check_existing(&CLUSTER, &cluster).unwrap();
        check_existing(&CLUSTER, &[]).unwrap();
        let err = check_existing(&CLUSTER, &single).unwrap_err();
        assert_eq!(err.kind(), "config");
        assert!(err.to_string().contains("made on a single node"), "{err}");
        let err = check_existing(&Layout::SingleNode, &cluster).unwrap_err();
        assert!(err.to_string().contains("--clickhouse-cluster"), "{err}");
    }
}
