//! The audit's result, pure: the comparison of the Kafka side with the ClickHouse side — per group and field
//! ([`differences`]), then per event for the groups that differ ([`event_differences`]) — and the
//! [`AuditReport`] that holds it, shown as text ([`AuditReport::to_text`]) or JSON (through `Serialize`).

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;

use chrono::{DateTime, SecondsFormat, Utc};
use serde::Serialize;

use super::tally::{EventValues, GroupKey, MessageCounts, Totals};
use crate::ledger::pricing::format_micros;
use crate::reports::table::{Align, Table};

/// The fields compared per group, in the order they are reported.
pub const FIELDS: [&str; 8] = [
    "events",
    "prompt_tokens",
    "cached_prompt_tokens",
    "completion_tokens",
    "reasoning_tokens",
    "cache_write_5m_tokens",
    "cache_write_1h_tokens",
    "cost_micros",
];

/// One field of one group that differs between the two sides.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Difference {
    /// The consumer id.
    pub consumer: String,
    /// The served model (`model_served`).
    pub model: String,
    /// The group's currency (`""` when unpriced or when costs are not compared).
    pub currency: String,
    /// One of [`FIELDS`].
    pub field: &'static str,
    /// The value recomputed from Kafka.
    pub kafka: i64,
    /// The value in ClickHouse.
    pub clickhouse: i64,
}

/// How one event differs.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum EventDifferenceKind {
    /// In Kafka (in the range) but not in ClickHouse.
    MissingInClickhouse,
    /// In ClickHouse (in the range) but not in Kafka.
    ExtraInClickhouse,
    /// On both sides, with different tokens, cost or currency.
    Changed,
}

impl EventDifferenceKind {
    /// The snake_case name.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::MissingInClickhouse => "missing_in_clickhouse",
            Self::ExtraInClickhouse => "extra_in_clickhouse",
            Self::Changed => "changed",
        }
    }
}

/// One event's numbers on one side.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventRecord {
    /// Its currency (`""` when unpriced or when costs are not compared).
    pub currency: String,
    /// Tokens and cost.
    #[serde(flatten)]
    pub values: EventValues,
}

/// Where a message sat in Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
pub struct KafkaPosition {
    /// The partition.
    pub partition: i32,
    /// The offset.
    pub offset: i64,
}

/// One event that differs.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct EventDifference {
    /// The event id (UUID, hyphenated).
    pub event_id: String,
    /// The consumer id.
    pub consumer: String,
    /// The served model (`model_served`).
    pub model: String,
    /// How it differs.
    pub kind: EventDifferenceKind,
    /// Its numbers recomputed from Kafka, when there.
    pub kafka: Option<EventRecord>,
    /// Its numbers in ClickHouse, when there.
    pub clickhouse: Option<EventRecord>,
    /// Where Kafka has it, when there.
    pub kafka_position: Option<KafkaPosition>,
}

/// The sums of one group on each side, zero where a side lacks the group. Every field that differs is one
/// [`Difference`]; `cost_micros` only when `costs` are compared. Sorted by group, then field.
pub fn differences(
    kafka: &BTreeMap<GroupKey, Totals>,
    clickhouse: &BTreeMap<GroupKey, Totals>,
    costs: bool,
) -> Vec<Difference> {
    let keys: BTreeSet<&GroupKey> = kafka.keys().chain(clickhouse.keys()).collect();
    let mut found = Vec::new();
    for key in keys {
        let ours = fields(&kafka.get(key).copied().unwrap_or_default());
        let theirs = fields(&clickhouse.get(key).copied().unwrap_or_default());
        for ((field, a), b) in FIELDS.iter().zip(ours).zip(theirs) {
            if a != b && (costs || *field != "cost_micros") {
                found.push(Difference {
                    consumer: key.consumer.clone(),
                    model: key.model.clone(),
                    currency: key.currency.clone(),
                    field,
                    kafka: a,
                    clickhouse: b,
                });
            }
        }
    }
    found
}

fn fields(totals: &Totals) -> [i64; 8] {
    let signed = |v: u64| i64::try_from(v).unwrap_or(i64::MAX);
    [
        signed(totals.events),
        signed(totals.prompt_tokens),
        signed(totals.cached_prompt_tokens),
        signed(totals.completion_tokens),
        signed(totals.reasoning_tokens),
        signed(totals.cache_write_5m_tokens),
        signed(totals.cache_write_1h_tokens),
        totals.cost_micros,
    ]
}

/// The events of one consumer and model on each side, matched by id: those on one side only, and those whose
/// tokens (and, when `costs` are compared, cost or currency) differ. Sorted by event id. ClickHouse ids that are
/// not UUIDs cannot match and count as extra.
pub fn event_differences(
    consumer: &str,
    model: &str,
    kafka: Vec<(u128, KafkaPosition, EventRecord)>,
    clickhouse: Vec<(String, EventRecord)>,
    costs: bool,
) -> Vec<EventDifference> {
    let mut ours: HashMap<u128, (KafkaPosition, EventRecord)> = kafka
        .into_iter()
        .map(|(id, position, record)| (id, (position, record)))
        .collect();
    let same = |a: &EventRecord, b: &EventRecord| {
        let tokens = |r: &EventRecord| {
            (
                r.values.prompt_tokens,
                r.values.cached_prompt_tokens,
                r.values.completion_tokens,
                r.values.reasoning_tokens,
                r.values.cache_write_5m_tokens,
                r.values.cache_write_1h_tokens,
            )
        };
        tokens(a) == tokens(b)
            && (!costs || (a.values.cost_micros, &a.currency) == (b.values.cost_micros, &b.currency))
    };
    let difference = |event_id: String, kind, kafka, clickhouse, kafka_position| EventDifference {
        event_id,
        consumer: consumer.to_owned(),
        model: model.to_owned(),
        kind,
        kafka,
        clickhouse,
        kafka_position,
    };
    let mut found = Vec::new();
    for (event_id, theirs) in clickhouse {
        let matched = uuid::Uuid::parse_str(&event_id)
            .ok()
            .and_then(|id| ours.remove(&id.as_u128()));
        match matched {
            Some((position, record)) if same(&record, &theirs) => {
                let _ = position;
            }
            Some((position, record)) => found.push(difference(
                event_id,
                EventDifferenceKind::Changed,
                Some(record),
                Some(theirs),
                Some(position),
            )),
            None => found.push(difference(
                event_id,
                EventDifferenceKind::ExtraInClickhouse,
                None,
                Some(theirs),
                None,
            )),
        }
    }
    for (id, (position, record)) in ours {
        found.push(difference(
            uuid::Uuid::from_u128(id).hyphenated().to_string(),
            EventDifferenceKind::MissingInClickhouse,
            Some(record),
            None,
            Some(position),
        ));
    }
    found.sort_by(|a, b| a.event_id.cmp(&b.event_id));
    found
}

/// What the audit found.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct AuditReport {
    /// Start of the range (included), by event time (`finished_at_ms`).
    pub from: DateTime<Utc>,
    /// End of the range (excluded).
    pub to: DateTime<Utc>,
    /// The usage topic replayed.
    pub topic: String,
    /// The ClickHouse table compared, `database.table`.
    pub table: String,
    /// Whether costs were recomputed and compared (a price table was given).
    pub costs_compared: bool,
    /// How the Kafka messages read were counted.
    pub kafka: MessageCounts,
    /// Events in the range with no price in force for their served model (0 when costs are not compared).
    pub unpriced_events: u64,
    /// Their served models, sorted.
    pub unpriced_models: Vec<String>,
    /// The sums over every group, from Kafka.
    pub kafka_totals: Totals,
    /// The sums over every group, from ClickHouse.
    pub clickhouse_totals: Totals,
    /// Groups (consumer, model, currency) on either side.
    pub groups: usize,
    /// Every field of every group that differs, by group then field.
    pub differences: Vec<Difference>,
    /// Events that differ, in the groups that differ: at most the number asked for.
    pub event_differences: Vec<EventDifference>,
    /// How many events differ in all (`event_differences` may list fewer).
    pub event_differences_found: u64,
    /// Seconds spent reading Kafka.
    pub kafka_seconds: f64,
    /// Seconds the whole audit took.
    pub seconds: f64,
}

impl AuditReport {
    /// True when both sides agree on every field of every group.
    pub fn is_clean(&self) -> bool {
        self.differences.is_empty()
    }

    /// The last line of the text: what agreed, or how much did not.
    pub fn summary(&self) -> String {
        let range = format!(
            "{} to {}",
            self.from.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            self.to.to_rfc3339_opts(SecondsFormat::AutoSi, true)
        );
        if self.is_clean() {
            let what = if self.costs_compared {
                "counts, tokens and costs"
            } else {
                "counts and tokens; costs not compared"
            };
            format!(
                "OK: Kafka and ClickHouse agree on {} events in {} groups ({what}), {range}.",
                self.kafka_totals.events, self.groups
            )
        } else {
            let groups: BTreeSet<(&str, &str, &str)> = self
                .differences
                .iter()
                .map(|d| (d.consumer.as_str(), d.model.as_str(), d.currency.as_str()))
                .collect();
            let count = |kind| self.event_differences.iter().filter(|d| d.kind == kind).count();
            format!(
                "DIFFERENCES: {} field(s) in {} of {} groups differ, {range} (Kafka {} events, ClickHouse {}); \
                 {} event(s) differ, {} listed: {} missing in ClickHouse, {} extra in ClickHouse, {} changed.",
                self.differences.len(),
                groups.len(),
                self.groups,
                self.kafka_totals.events,
                self.clickhouse_totals.events,
                self.event_differences_found,
                self.event_differences.len(),
                count(EventDifferenceKind::MissingInClickhouse),
                count(EventDifferenceKind::ExtraInClickhouse),
                count(EventDifferenceKind::Changed),
            )
        }
    }

    /// What was compared, every difference (a table per group and field, then a table per event), and the
    /// summary line.
    pub fn to_text(&self) -> String {
        let mut out = String::new();
        let k = &self.kafka;
        let _ = writeln!(
            out,
            "Kafka {}: {} messages read, {} events in range, {} duplicates, {} outside the range, {} undecodable \
             ({:.1} s).",
            self.topic,
            k.messages,
            k.events,
            k.duplicates,
            k.outside_range,
            k.undecodable,
            self.kafka_seconds
        );
        let _ = writeln!(
            out,
            "ClickHouse {} (FINAL): {} events.",
            self.table, self.clickhouse_totals.events
        );
        if self.unpriced_events > 0 {
            let _ = writeln!(
                out,
                "Unpriced: {} event(s) with no price in force for their served model (cost 0): {}.",
                self.unpriced_events,
                self.unpriced_models.join(", ")
            );
        }
        if !self.differences.is_empty() {
            let mut table = Table::new(&[
                ("consumer", Align::Left),
                ("model", Align::Left),
                ("currency", Align::Left),
                ("field", Align::Left),
                ("kafka", Align::Right),
                ("clickhouse", Align::Right),
                ("difference", Align::Right),
            ]);
            for d in &self.differences {
                table.row(vec![
                    d.consumer.clone(),
                    d.model.clone(),
                    dash(&d.currency),
                    d.field.to_owned(),
                    d.kafka.to_string(),
                    d.clickhouse.to_string(),
                    format!("{:+}", i128::from(d.clickhouse) - i128::from(d.kafka)),
                ]);
            }
            out.push('\n');
            out.push_str(&table.render());
        }
        if !self.event_differences.is_empty() {
            let mut table = Table::new(&[
                ("event_id", Align::Left),
                ("consumer", Align::Left),
                ("model", Align::Left),
                ("difference", Align::Left),
                ("kafka (prompt/cached/completion cost)", Align::Left),
                ("clickhouse (prompt/cached/completion cost)", Align::Left),
                ("kafka position", Align::Left),
            ]);
            for d in &self.event_differences {
                table.row(vec![
                    d.event_id.clone(),
                    d.consumer.clone(),
                    d.model.clone(),
                    d.kind.as_str().to_owned(),
                    d.kafka.as_ref().map_or_else(|| "-".to_owned(), describe),
                    d.clickhouse.as_ref().map_or_else(|| "-".to_owned(), describe),
                    d.kafka_position
                        .map_or_else(|| "-".to_owned(), |p| format!("{}@{}", p.partition, p.offset)),
                ]);
            }
            out.push('\n');
            out.push_str(&table.render());
            if self.event_differences_found > self.event_differences.len() as u64 {
                let _ = writeln!(
                    out,
                    "({} more event(s) differ; --max-events shows more.)",
                    self.event_differences_found - self.event_differences.len() as u64
                );
            }
        }
        out.push('\n');
        out.push_str(&self.summary());
        out.push('\n');
        out
    }
}

fn dash(text: &str) -> String {
    if text.is_empty() {
        "-".to_owned()
    } else {
        text.to_owned()
    }
}

fn describe(record: &EventRecord) -> String {
    let v = &record.values;
    let cost = if record.currency.is_empty() {
        format_micros(v.cost_micros)
    } else {
        format!("{} {}", format_micros(v.cost_micros), record.currency)
    };
    let others = if (
        v.reasoning_tokens,
        v.cache_write_5m_tokens,
        v.cache_write_1h_tokens,
    ) == (0, 0, 0)
    {
        String::new()
    } else {
        format!(
            " (reasoning {}, cache writes 5m/1h {}/{})",
            v.reasoning_tokens, v.cache_write_5m_tokens, v.cache_write_1h_tokens
        )
    };
    format!(
        "{}/{}/{}{others} {cost}",
        v.prompt_tokens, v.cached_prompt_tokens, v.completion_tokens
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(consumer: &str, model: &str) -> GroupKey {
        GroupKey {
            consumer: consumer.into(),
            model: model.into(),
            currency: "USD".into(),
        }
    }

    fn totals(events: u64, prompt: u64, cached: u64, completion: u64, cost: i64) -> Totals {
        Totals {
            events,
            prompt_tokens: prompt,
            cached_prompt_tokens: cached,
            completion_tokens: completion,
            cost_micros: cost,
            ..Totals::default()
        }
    }

    fn record(prompt: u32, completion: u32, cost: i64) -> EventRecord {
        EventRecord {
            currency: "USD".into(),
            values: EventValues {
                prompt_tokens: prompt,
                cached_prompt_tokens: 0,
                completion_tokens: completion,
                cost_micros: cost,
                ..EventValues::default()
            },
        }
    }

    const ID_1: &str = "019a9b8e-0000-7000-8000-000000000001";
    const ID_2: &str = "019a9b8e-0000-7000-8000-000000000002";
    const ID_3: &str = "019a9b8e-0000-7000-8000-000000000003";

    fn id(text: &str) -> u128 {
        uuid::Uuid::parse_str(text).unwrap().as_u128()
    }

    fn at(offset: i64) -> KafkaPosition {
        KafkaPosition { partition: 1, offset }
    }

    #[test]
    fn equal_sides_have_no_difference() {
        let sides: BTreeMap<_, _> = [(key("a", "m"), totals(2, 10, 0, 5, 7))].into();
        assert!(differences(&sides, &sides, true).is_empty());
    }

    #[test]
    fn every_differing_field_of_every_group_is_reported() {
        let kafka: BTreeMap<_, _> = [
            (key("a", "m"), totals(2, 10, 4, 5, 7)),
            (key("b", "m"), totals(1, 3, 0, 1, 1)),
        ]
        .into();
        let clickhouse: BTreeMap<_, _> = [
            (key("a", "m"), totals(1, 6, 4, 2, 3)),
            (key("c", "m"), totals(1, 1, 0, 0, 0)),
        ]
        .into();
        let found: Vec<_> = differences(&kafka, &clickhouse, true)
            .into_iter()
            .map(|d| (d.consumer, d.field, d.kafka, d.clickhouse))
            .collect();
        let expected = [
            ("a", "events", 2, 1),
            ("a", "prompt_tokens", 10, 6),
            ("a", "completion_tokens", 5, 2),
            ("a", "cost_micros", 7, 3),
            ("b", "events", 1, 0),
            ("b", "prompt_tokens", 3, 0),
            ("b", "completion_tokens", 1, 0),
            ("b", "cost_micros", 1, 0),
            ("c", "events", 0, 1),
            ("c", "prompt_tokens", 0, 1),
        ];
        let expected: Vec<_> = expected
            .into_iter()
            .map(|(c, f, k, ch)| (c.to_owned(), f, k, ch))
            .collect();
        assert_eq!(found, expected);
    }

    #[test]
    fn costs_are_ignored_when_not_compared() {
        let kafka: BTreeMap<_, _> = [(key("a", "m"), totals(1, 1, 0, 1, 0))].into();
        let clickhouse: BTreeMap<_, _> = [(key("a", "m"), totals(1, 1, 0, 1, 99))].into();
        assert!(differences(&kafka, &clickhouse, false).is_empty());
        assert_eq!(differences(&kafka, &clickhouse, true).len(), 1);
    }

    #[test]
    fn events_are_matched_by_id() {
        let kafka = vec![
            (id(ID_1), at(10), record(5, 5, 3)),
            (id(ID_2), at(11), record(7, 1, 2)),
        ];
        let clickhouse = vec![
            (ID_2.to_owned(), record(7, 2, 2)),
            (ID_3.to_owned(), record(1, 1, 1)),
            ("not-a-uuid".to_owned(), record(1, 1, 1)),
        ];
        let found: Vec<_> = event_differences("a", "m", kafka, clickhouse, true)
            .into_iter()
            .map(|d| (d.event_id, d.kind, d.kafka_position.map(|p| p.offset)))
            .collect();
        assert_eq!(
            found,
            [
                (
                    ID_1.to_owned(),
                    EventDifferenceKind::MissingInClickhouse,
                    Some(10)
                ),
                (ID_2.to_owned(), EventDifferenceKind::Changed, Some(11)),
                (ID_3.to_owned(), EventDifferenceKind::ExtraInClickhouse, None),
                (
                    "not-a-uuid".to_owned(),
                    EventDifferenceKind::ExtraInClickhouse,
                    None
                ),
            ]
        );
    }

    #[test]
    fn a_cost_or_currency_change_counts_only_when_costs_are_compared() {
        let mut repriced = record(5, 5, 4);
        repriced.currency = "EUR".into();
        let kafka = || vec![(id(ID_1), at(0), record(5, 5, 3))];
        assert!(
            event_differences(
                "a",
                "m",
                kafka(),
                vec![(ID_1.to_owned(), repriced.clone())],
                false
            )
            .is_empty()
        );
        assert_eq!(
            event_differences("a", "m", kafka(), vec![(ID_1.to_owned(), repriced)], true).len(),
            1
        );
    }

    fn report(differences: Vec<Difference>, event_differences: Vec<EventDifference>) -> AuditReport {
        let utc = |t: &str| DateTime::parse_from_rfc3339(t).unwrap().with_timezone(&Utc);
        AuditReport {
            from: utc("2026-11-01T00:00:00Z"),
            to: utc("2026-12-01T00:00:00Z"),
            topic: "tollgate.usage.v1".into(),
            table: "tollgate.usage_events".into(),
            costs_compared: true,
            kafka: MessageCounts {
                messages: 4,
                events: 3,
                duplicates: 1,
                outside_range: 0,
                undecodable: 0,
            },
            unpriced_events: 0,
            unpriced_models: Vec::new(),
            kafka_totals: totals(3, 30, 0, 12, 40),
            clickhouse_totals: totals(2, 20, 0, 8, 30),
            groups: 2,
            event_differences_found: event_differences.len() as u64 + 1,
            differences,
            event_differences,
            kafka_seconds: 0.25,
            seconds: 0.5,
        }
    }

    #[test]
    fn the_text_lists_differences_and_ends_with_the_summary() {
        let difference = Difference {
            consumer: "team-a".into(),
            model: "gpt-4o-mini".into(),
            currency: "USD".into(),
            field: "events",
            kafka: 3,
            clickhouse: 2,
        };
        let missing = EventDifference {
            event_id: ID_1.into(),
            consumer: "team-a".into(),
            model: "gpt-4o-mini".into(),
            kind: EventDifferenceKind::MissingInClickhouse,
            kafka: Some(record(10, 4, 10)),
            clickhouse: None,
            kafka_position: Some(at(7)),
        };
        let text = report(vec![difference], vec![missing]).to_text();
        let expected = "\
Kafka tollgate.usage.v1: 4 messages read, 3 events in range, 1 duplicates, 0 outside the range, 0 undecodable (0.2 s).
ClickHouse tollgate.usage_events (FINAL): 2 events.

consumer  model        currency  field   kafka  clickhouse  difference
team-a    gpt-4o-mini  USD       events      3           2          -1

event_id                              consumer  model        difference             kafka (prompt/cached/completion cost)  clickhouse (prompt/cached/completion cost)  kafka position
019a9b8e-0000-7000-8000-000000000001  team-a    gpt-4o-mini  missing_in_clickhouse  10/0/4 0.00001 USD                     -                                           1@7
(1 more event(s) differ; --max-events shows more.)

DIFFERENCES: 1 field(s) in 1 of 2 groups differ, 2026-11-01T00:00:00Z to 2026-12-01T00:00:00Z (Kafka 3 events, ClickHouse 2); 2 event(s) differ, 1 listed: 1 missing in ClickHouse, 0 extra in ClickHouse, 0 changed.
";
        assert_eq!(text, expected);
    }

    #[test]
    fn unpriced_served_models_are_named() {
        let mut clean = report(vec![], vec![]);
        clean.unpriced_events = 4;
        clean.unpriced_models = vec!["gpt-5".into(), "llama-3-70b".into()];
        let text = clean.to_text();
        assert!(
            text.contains(
                "\nUnpriced: 4 event(s) with no price in force for their served model (cost 0): gpt-5, \
                 llama-3-70b.\n"
            ),
            "{text}"
        );
        let json = serde_json::to_value(&clean).unwrap();
        assert_eq!(
            json["unpriced_models"],
            serde_json::json!(["gpt-5", "llama-3-70b"])
        );
        assert_eq!(json["unpriced_events"], 4);
    }

    #[test]
    fn a_clean_report_says_so() {
        let clean = report(vec![], vec![]);
        assert!(clean.is_clean());
        assert_eq!(
            clean.summary(),
            "OK: Kafka and ClickHouse agree on 3 events in 2 groups (counts, tokens and costs), \
             2026-11-01T00:00:00Z to 2026-12-01T00:00:00Z."
        );
    }
}
