//! One batch of Kafka messages on its way to ClickHouse: each message decoded into a `usage_events` row priced
//! for its served model
//! or a `usage_events_rejected` row, and the offsets to commit once both are written (the highest offset + 1 per
//! partition — every message of the batch, good or bad, is settled by the same INSERTs).

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use tollgate_schemas::usage::UsageEvent;

use crate::error::{BillingError, RejectReason};
use crate::ledger::pricing::PriceTable;
use crate::ledger::store::{self, Position, RejectedRow, UsageRow};

/// Messages read since the last commit, decoded.
#[derive(Debug, Default)]
pub struct Batch {
    /// Rows for `usage_events`, one per distinct event id in the batch.
    pub rows: Vec<UsageRow>,
    /// Rows for `usage_events_rejected`.
    pub rejected: Vec<RejectedRow>,
    /// How many rejected rows per reason (for the metric).
    pub rejected_by_reason: HashMap<RejectReason, u64>,
    /// Events whose id already appeared earlier in this batch (redelivered or produced twice).
    pub duplicates_in_batch: usize,
    /// Rows with no price in force (cost 0).
    pub unpriced: u64,
    /// The served models (`model_served`) of those rows.
    pub unpriced_models: BTreeSet<String>,
    /// Rows whose event time is more than [`CLOCK_SKEW_BOUND_MS`] ahead of their message's Kafka timestamp: a
    /// gateway's clock is ahead. Stored with their own time (it is part of the ledger's key), logged and counted.
    pub clock_skewed: u64,
    messages: usize,
    next_offsets: BTreeMap<(String, i32), i64>,
    event_ids: HashSet<String>,
}

/// How far ahead of its Kafka timestamp an event's time may be before it is counted as skewed (as the quota loop's
/// default bound).
pub const CLOCK_SKEW_BOUND_MS: i64 = 5 * 60 * 1000;

impl Batch {
    /// Decodes one message, prices it with `prices` and adds it to the batch. `now` is the current time in Unix
    /// seconds.
    pub fn push(&mut self, at: Position, payload: Option<&[u8]>, now: u32, prices: &PriceTable) {
        self.push_at(at, None, payload, now, prices);
    }

    /// [`Batch::push`] for a message with Kafka timestamp `kafka_ms` (Unix epoch milliseconds): an event whose
    /// time is more than [`CLOCK_SKEW_BOUND_MS`] ahead of it is counted in [`Batch::clock_skewed`] and logged.
    pub fn push_at(
        &mut self,
        at: Position,
        kafka_ms: Option<i64>,
        payload: Option<&[u8]>,
        now: u32,
        prices: &PriceTable,
    ) {
        self.messages += 1;
        let next = self
            .next_offsets
            .entry((at.topic.clone(), at.partition))
            .or_insert(at.offset + 1);
        *next = (*next).max(at.offset + 1);

        match decode(payload).and_then(|event| store::usage_row(&event, &at, now, prices)) {
            Ok(row) => {
                if self.event_ids.insert(row.event_id.clone()) {
                    let finished_ms = i64::try_from(row.finished_at_ms).unwrap_or(i64::MAX);
                    if let Some(kafka_ms) =
                        kafka_ms.filter(|k| finished_ms > k.saturating_add(CLOCK_SKEW_BOUND_MS))
                    {
                        self.clock_skewed += 1;
                        tracing::warn!(
                            event_id = %row.event_id,
                            source = %row.source,
                            finished_at_ms = row.finished_at_ms,
                            kafka_ms,
                            "A usage event is dated ahead of its Kafka timestamp by more than the clock-skew bound: \
                             the gateway's clock is ahead. It is stored with its own time."
                        );
                    }
                    if row.is_unpriced() {
                        self.unpriced += 1;
                        if !self.unpriced_models.contains(&row.model_served) {
                            self.unpriced_models.insert(row.model_served.clone());
                        }
                    }
                    self.rows.push(row);
                } else {
                    self.duplicates_in_batch += 1;
                }
            }
            Err(error) => {
                let reason = match &error {
                    BillingError::Decode { reason, .. } => *reason,
                    _ => RejectReason::InvalidJson,
                };
                tracing::warn!(
                    topic = %at.topic,
                    partition = at.partition,
                    offset = at.offset,
                    reason = reason.as_str(),
                    %error,
                    "Rejected a message that is not a usage event; it is kept in usage_events_rejected."
                );
                *self.rejected_by_reason.entry(reason).or_default() += 1;
                let message = match error {
                    BillingError::Decode { message, .. } => message,
                    other => other.to_string(),
                };
                self.rejected.push(store::rejected_row(
                    &at,
                    payload.unwrap_or_default(),
                    reason,
                    &message,
                    now,
                ));
            }
        }
    }

    /// Messages in the batch, good and bad.
    pub fn len(&self) -> usize {
        self.messages
    }

    /// True before the first message.
    pub fn is_empty(&self) -> bool {
        self.messages == 0
    }

    /// Per topic and partition, the offset to commit: the highest offset seen + 1.
    pub fn next_offsets(&self) -> &BTreeMap<(String, i32), i64> {
        &self.next_offsets
    }
}

/// Parses a payload as a `tollgate.usage.v1` CloudEvent.
pub fn decode(payload: Option<&[u8]>) -> Result<UsageEvent, BillingError> {
    let bytes = match payload {
        Some(bytes) if !bytes.iter().all(u8::is_ascii_whitespace) => bytes,
        _ => {
            return Err(BillingError::Decode {
                reason: RejectReason::EmptyPayload,
                message: "the message has no payload".to_owned(),
            });
        }
    };
    match serde_json::from_slice::<UsageEvent>(bytes) {
        Ok(event) if event.is_expected_type() => Ok(event),
        Ok(event) => Err(unexpected_type(&event.event_type, &event.specversion)),
        Err(error) => match serde_json::from_slice::<TypeProbe>(bytes) {
            Ok(TypeProbe {
                event_type: Some(event_type),
                specversion,
            }) if event_type != tollgate_schemas::topics::USAGE_V1 => {
                Err(unexpected_type(&event_type, specversion.as_deref().unwrap_or("")))
            }
            _ => Err(BillingError::Decode {
                reason: RejectReason::InvalidJson,
                message: error.to_string(),
            }),
        },
    }
}

/// Just enough of an envelope to tell "another event type" from "garbage".
#[derive(serde::Deserialize)]
struct TypeProbe {
    #[serde(rename = "type")]
    event_type: Option<String>,
    specversion: Option<String>,
}

fn unexpected_type(event_type: &str, specversion: &str) -> BillingError {
    BillingError::Decode {
        reason: RejectReason::UnexpectedType,
        message: format!(
            "expected a `{}` CloudEvent {}, got type `{event_type}` specversion `{specversion}`",
            tollgate_schemas::topics::USAGE_V1,
            tollgate_schemas::envelope::SPEC_VERSION
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../../../schemas/fixtures/tollgate.usage.v1.json");

    fn at(partition: i32, offset: i64) -> Position {
        Position {
            topic: "usage".into(),
            partition,
            offset,
        }
    }

    fn with_id(id: &str) -> String {
        FIXTURE.replace("019a9b8e-4f3c-7a21-9d4e-2b6c1f0e8a57", id)
    }

    fn none() -> PriceTable {
        PriceTable::default()
    }

    #[test]
    fn rows_are_priced_and_unpriced_ones_counted_by_served_model() {
        let prices = PriceTable::from_toml(
            r#"
            [[prices]]
            model = "gpt-4o-mini"
            effective_from = "2026-11-01"
            currency = "USD"
            input_per_mtok = "0.15"
            output_per_mtok = "0.60"
            "#,
        )
        .unwrap();
        let mut batch = Batch::default();
        batch.push(at(0, 0), Some(FIXTURE.as_bytes()), 0, &prices);
        // Failed over to another model: priced (here: not) as what served it, whatever was requested.
        let served = |id: &str, model: &str| {
            with_id(id).replace(
                "\"model_served\": \"gpt-4o-mini-2024-07-18\"",
                &format!("\"model_served\": \"{model}\""),
            )
        };
        let other = served("019a9b8e-0000-7000-8000-000000000002", "gpt-5");
        batch.push(at(0, 1), Some(other.as_bytes()), 0, &prices);
        let again = served("019a9b8e-0000-7000-8000-000000000003", "gpt-5");
        batch.push(at(0, 2), Some(again.as_bytes()), 0, &prices);
        // The golden event, served by gpt-4o-mini-2024-07-18 and priced by its family: 21 prompt × 0.15 + 9
        // completion × 0.60 = 8.55 → 9 micro-USD.
        assert_eq!(batch.rows[0].cost_micros, 9);
        assert_eq!(batch.rows[0].price_version, "gpt-4o-mini@2026-11-01");
        assert_eq!(
            (
                batch.rows[1].model_requested.as_str(),
                batch.rows[1].model_served.as_str()
            ),
            ("gpt-4o-mini", "gpt-5")
        );
        assert!(batch.rows[1].is_unpriced());
        assert_eq!(batch.unpriced, 2);
        assert_eq!(batch.unpriced_models.iter().collect::<Vec<_>>(), ["gpt-5"]);
    }

    #[test]
    fn commit_offsets_are_the_highest_offset_plus_one_per_partition() {
        let mut batch = Batch::default();
        let payload = with_id("019a9b8e-0000-7000-8000-000000000001");
        // Out of order within a partition (as after a rebalance redelivery), several partitions and topics.
        for (partition, offset) in [(0, 10), (1, 3), (0, 12), (0, 11), (2, 0), (1, 2)] {
            batch.push(at(partition, offset), Some(payload.as_bytes()), 0, &none());
        }
        batch.push(
            Position {
                topic: "other".into(),
                partition: 0,
                offset: 99,
            },
            Some(b"x"),
            0,
            &none(),
        );
        let expected: BTreeMap<(String, i32), i64> = [
            (("other".to_owned(), 0), 100),
            (("usage".to_owned(), 0), 13),
            (("usage".to_owned(), 1), 4),
            (("usage".to_owned(), 2), 1),
        ]
        .into_iter()
        .collect();
        assert_eq!(batch.next_offsets(), &expected);
        assert_eq!(batch.len(), 7);
    }

    #[test]
    fn rejected_messages_still_advance_their_partition() {
        let mut batch = Batch::default();
        batch.push(at(0, 5), Some(b"{garbage"), 0, &none());
        batch.push(at(0, 6), None, 0, &none());
        assert_eq!(batch.next_offsets().get(&("usage".to_owned(), 0)), Some(&7));
        assert!(batch.rows.is_empty());
        assert_eq!(batch.rejected.len(), 2);
        assert_eq!(batch.rejected_by_reason.get(&RejectReason::InvalidJson), Some(&1));
        assert_eq!(
            batch.rejected_by_reason.get(&RejectReason::EmptyPayload),
            Some(&1)
        );
    }

    #[test]
    fn duplicate_ids_in_one_batch_become_one_row() {
        let mut batch = Batch::default();
        let a = with_id("019a9b8e-0000-7000-8000-00000000000a");
        let b = with_id("019a9b8e-0000-7000-8000-00000000000b");
        batch.push(at(0, 0), Some(a.as_bytes()), 0, &none());
        batch.push(at(0, 1), Some(b.as_bytes()), 0, &none());
        batch.push(at(1, 0), Some(a.as_bytes()), 0, &none());
        assert_eq!(batch.rows.len(), 2);
        assert_eq!(batch.duplicates_in_batch, 1);
        assert_eq!(batch.rows[0].kafka_offset, 0, "the first delivery is kept");
    }

    /// An event with a CloudEvents extension (`traceparent`) and a field a newer gateway added is billed: a row,
    /// not a rejected message (the reader used to refuse both, and the event went unbilled).
    #[test]
    fn an_event_with_an_extension_or_a_new_field_is_a_row_not_rejected() {
        let extended = FIXTURE.replacen(
            "{",
            "{\"traceparent\": \"00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\",",
            1,
        );
        let extended = extended.replace(
            "\"prompt_tokens\": 21",
            "\"prompt_tokens\": 21, \"reasoning_tokens\": 4",
        );
        let mut batch = Batch::default();
        batch.push(at(0, 0), Some(extended.as_bytes()), 0, &none());
        assert!(batch.rejected.is_empty(), "{:?}", batch.rejected);
        assert_eq!(batch.rows.len(), 1);
        assert_eq!(batch.rows[0].prompt_tokens, 21);
    }

    /// An event dated more than the bound ahead of its Kafka timestamp is still a row (with its own time: the
    /// ledger's key), but counted as skewed; one within the bound, or behind (a spool drained late), is not.
    #[test]
    fn an_event_dated_ahead_of_its_kafka_time_is_flagged() {
        let event: UsageEvent = serde_json::from_str(FIXTURE).unwrap();
        let finished = event.data.finished_at_ms as i64;
        let mut batch = Batch::default();
        batch.push_at(
            at(0, 0),
            Some(finished - CLOCK_SKEW_BOUND_MS - 1),
            Some(FIXTURE.as_bytes()),
            0,
            &none(),
        );
        let near = with_id("019a9b8e-0000-7000-8000-0000000000c1");
        batch.push_at(
            at(0, 1),
            Some(finished - CLOCK_SKEW_BOUND_MS),
            Some(near.as_bytes()),
            0,
            &none(),
        );
        let late = with_id("019a9b8e-0000-7000-8000-0000000000c2");
        batch.push_at(
            at(0, 2),
            Some(finished + 3_600_000),
            Some(late.as_bytes()),
            0,
            &none(),
        );
        assert_eq!(batch.rows.len(), 3);
        assert_eq!(batch.clock_skewed, 1);
        assert_eq!(
            batch.rows[0].finished_at_ms, event.data.finished_at_ms,
            "stored with its own time"
        );
    }

    #[test]
    fn decode_tells_the_reasons_apart() {
        assert!(decode(Some(FIXTURE.as_bytes())).is_ok());
        let reason = |payload: Option<&[u8]>| match decode(payload) {
            Err(BillingError::Decode { reason, .. }) => reason,
            other => panic!("expected a decode error, got {other:?}"),
        };
        assert_eq!(reason(None), RejectReason::EmptyPayload);
        assert_eq!(reason(Some(b"  \n")), RejectReason::EmptyPayload);
        assert_eq!(reason(Some(b"not json")), RejectReason::InvalidJson);
        assert_eq!(
            reason(Some(br#"{"specversion":"1.0"}"#)),
            RejectReason::InvalidJson
        );
        let v2 = FIXTURE.replace("\"tollgate.usage.v1\"", "\"tollgate.usage.v2\"");
        assert_eq!(reason(Some(v2.as_bytes())), RejectReason::UnexpectedType);
        let quota = br#"{"specversion":"1.0","type":"tollgate.quota.v1","data":{"scope":"x"}}"#;
        assert_eq!(reason(Some(quota)), RejectReason::UnexpectedType);
        let old_spec = FIXTURE.replace("\"specversion\": \"1.0\"", "\"specversion\": \"0.3\"");
        assert_eq!(reason(Some(old_spec.as_bytes())), RejectReason::UnexpectedType);
        // Right type, broken data: garbage, not another type.
        let broken = FIXTURE.replace("\"prompt_tokens\": 21", "\"prompt_tokens\": -1");
        assert_eq!(reason(Some(broken.as_bytes())), RejectReason::InvalidJson);
    }
}
