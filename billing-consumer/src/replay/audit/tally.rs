//! The Kafka side of the audit, pure: messages of the usage topic in, per group (consumer, served model,
//! currency) the events and their tokens and cost out, each event counted once by id — computed from the
//! messages alone, without ClickHouse.
//!
//! Messages are decoded into a lean view of the event (id, type, consumer, served model, outcome, tokens of
//! every type, `finished_at_ms`), borrowing its strings and skipping the rest, which is what makes replaying a million events
//! cheap. An event counts when its `finished_at_ms` is in the audited range; the first delivery of an id counts
//! and later ones are duplicates. Costs come from [`crate::ledger::pricing`], the same code ingest prices with, for the
//! served model (`model_served`); the served models with no price in force are collected
//! ([`Tally::unpriced_models`]). A message the lean view cannot read, or of another event type, is counted as
//! undecodable (ingest keeps it in `usage_events_rejected`); one the lean view reads but ingest rejected (a field
//! it does not look at is malformed) shows up as an event missing from ClickHouse.
//!
//! Memory: every counted event is remembered (id, group, tokens, cost and Kafka position, about 140 bytes with
//! the hash table's overhead) so that duplicates are recognised and differences can be listed per event.

use std::borrow::Cow;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use tollgate_schemas::usage::Outcome;

use crate::ledger::pricing::{PriceTable, TokenUsage, charges_request_fee};

/// What the audit sums over: one consumer's events served by one model (`model_served`), priced in one currency
/// (`""` when unpriced, or when costs are not compared).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize)]
pub struct GroupKey {
    /// The consumer id.
    pub consumer: String,
    /// The served model (`model_served`).
    pub model: String,
    /// ISO 4217 code, or `""`.
    pub currency: String,
}

/// The sums of one group (or of everything).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct Totals {
    /// Events, each id once.
    pub events: u64,
    /// Prompt tokens.
    pub prompt_tokens: u64,
    /// Cached prompt tokens as reported (0 when absent).
    pub cached_prompt_tokens: u64,
    /// Completion tokens.
    pub completion_tokens: u64,
    /// Reasoning tokens (of the completion) as reported (0 when absent).
    pub reasoning_tokens: u64,
    /// 5-minute prompt-cache writes (of the prompt) as reported (0 when absent).
    pub cache_write_5m_tokens: u64,
    /// 1-hour prompt-cache writes (of the prompt) as reported (0 when absent).
    pub cache_write_1h_tokens: u64,
    /// Cost in micro-units of the group's currency (0 when costs are not compared).
    pub cost_micros: i64,
}

impl Totals {
    /// Adds one event.
    pub fn add(&mut self, values: &EventValues) {
        self.events += 1;
        self.prompt_tokens += u64::from(values.prompt_tokens);
        self.cached_prompt_tokens += u64::from(values.cached_prompt_tokens);
        self.completion_tokens += u64::from(values.completion_tokens);
        self.reasoning_tokens += u64::from(values.reasoning_tokens);
        self.cache_write_5m_tokens += u64::from(values.cache_write_5m_tokens);
        self.cache_write_1h_tokens += u64::from(values.cache_write_1h_tokens);
        self.cost_micros = self.cost_micros.saturating_add(values.cost_micros);
    }

    /// Adds another group's sums.
    pub fn merge(&mut self, other: &Self) {
        self.events += other.events;
        self.prompt_tokens += other.prompt_tokens;
        self.cached_prompt_tokens += other.cached_prompt_tokens;
        self.completion_tokens += other.completion_tokens;
        self.reasoning_tokens += other.reasoning_tokens;
        self.cache_write_5m_tokens += other.cache_write_5m_tokens;
        self.cache_write_1h_tokens += other.cache_write_1h_tokens;
        self.cost_micros = self.cost_micros.saturating_add(other.cost_micros);
    }
}

/// What one event contributes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct EventValues {
    /// Prompt tokens.
    pub prompt_tokens: u32,
    /// Cached prompt tokens as reported (0 when absent).
    pub cached_prompt_tokens: u32,
    /// Completion tokens.
    pub completion_tokens: u32,
    /// Reasoning tokens as reported (0 when absent).
    pub reasoning_tokens: u32,
    /// 5-minute prompt-cache writes as reported (0 when absent).
    pub cache_write_5m_tokens: u32,
    /// 1-hour prompt-cache writes as reported (0 when absent).
    pub cache_write_1h_tokens: u32,
    /// Cost in micro-units (0 when costs are not compared).
    pub cost_micros: i64,
}

/// One counted event: its group (an index into the tally's groups), values and where it sat in Kafka.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct CountedEvent {
    /// Index of its [`GroupKey`] in the tally ([`Tally::group_of`] resolves it).
    pub group: u32,
    /// Its contribution.
    pub values: EventValues,
    /// Kafka partition of its first delivery.
    pub partition: i32,
    /// Kafka offset of its first delivery.
    pub offset: i64,
}

/// How the messages read were counted.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize)]
pub struct MessageCounts {
    /// Messages read.
    pub messages: u64,
    /// Distinct events in the range (counted).
    pub events: u64,
    /// Messages repeating an event id counted before.
    pub duplicates: u64,
    /// Events whose `finished_at_ms` is outside the range.
    pub outside_range: u64,
    /// Messages that are not usage events.
    pub undecodable: u64,
}

/// The running count of a replay.
#[derive(Debug)]
pub struct Tally {
    from_ms: u64,
    to_ms: u64,
    prices: Option<Arc<PriceTable>>,
    groups: Vec<GroupKey>,
    totals: Vec<Totals>,
    /// `consumer \0 model \0 currency` → group index.
    index: HashMap<String, u32>,
    scratch: String,
    events: HashMap<u128, CountedEvent>,
    unpriced_models: BTreeSet<String>,
    /// The counts so far.
    pub counts: MessageCounts,
    /// Counted events with no price in force for their served model (0 without a price table).
    pub unpriced_events: u64,
}

/// The lean view of a usage event: only what the audit sums, strings borrowed from the payload.
#[derive(Debug, Deserialize)]
struct LeanEvent<'a> {
    #[serde(borrow)]
    specversion: Cow<'a, str>,
    id: uuid::Uuid,
    #[serde(rename = "type", borrow)]
    event_type: Cow<'a, str>,
    #[serde(borrow)]
    data: LeanData<'a>,
}

#[derive(Debug, Deserialize)]
struct LeanData<'a> {
    #[serde(borrow)]
    consumer_id: Cow<'a, str>,
    #[serde(borrow)]
    model_served: Cow<'a, str>,
    outcome: Outcome,
    prompt_tokens: u32,
    completion_tokens: u32,
    cached_prompt_tokens: Option<u32>,
    #[serde(default)]
    reasoning_tokens: Option<u32>,
    #[serde(default)]
    cache_write_5m_tokens: Option<u32>,
    #[serde(default)]
    cache_write_1h_tokens: Option<u32>,
    finished_at_ms: u64,
}

impl Tally {
    /// An empty tally of events with `finished_at_ms` in `[from_ms, to_ms)`, priced with `prices` — or, without,
    /// with every cost 0 and every currency `""` (costs are then not compared).
    pub fn new(from_ms: u64, to_ms: u64, prices: Option<Arc<PriceTable>>) -> Self {
        Self {
            from_ms,
            to_ms,
            prices,
            groups: Vec::new(),
            totals: Vec::new(),
            index: HashMap::new(),
            scratch: String::new(),
            events: HashMap::new(),
            unpriced_models: BTreeSet::new(),
            counts: MessageCounts::default(),
            unpriced_events: 0,
        }
    }

    /// Counts one message of the usage topic.
    pub fn add(&mut self, partition: i32, offset: i64, payload: Option<&[u8]>) {
        self.counts.messages += 1;
        let Some(event) = payload.and_then(|bytes| serde_json::from_slice::<LeanEvent<'_>>(bytes).ok())
        else {
            self.counts.undecodable += 1;
            return;
        };
        if event.event_type != tollgate_schemas::topics::USAGE_V1
            || event.specversion != tollgate_schemas::envelope::SPEC_VERSION
        {
            self.counts.undecodable += 1;
            return;
        }
        let data = &event.data;
        if data.finished_at_ms < self.from_ms || data.finished_at_ms >= self.to_ms {
            self.counts.outside_range += 1;
            return;
        }
        let id = event.id.as_u128();
        if self.events.contains_key(&id) {
            self.counts.duplicates += 1;
            return;
        }
        // The table is shared, not borrowed from `self`, so that the group lookup below may take `&mut self`.
        let prices = self.prices.clone();
        let usage = TokenUsage {
            prompt: data.prompt_tokens,
            cached_prompt: data.cached_prompt_tokens,
            cache_write_5m: data.cache_write_5m_tokens,
            cache_write_1h: data.cache_write_1h_tokens,
            completion: data.completion_tokens,
            reasoning: data.reasoning_tokens,
            served: charges_request_fee(data.outcome),
        };
        let charge = prices
            .as_deref()
            .map(|p| p.charge(&data.model_served, data.finished_at_ms, &usage));
        if charge.as_ref().is_some_and(|c| c.version.is_none()) {
            self.unpriced_events += 1;
            if !self.unpriced_models.contains(data.model_served.as_ref()) {
                self.unpriced_models
                    .insert(data.model_served.clone().into_owned());
            }
        }
        let values = EventValues {
            prompt_tokens: data.prompt_tokens,
            cached_prompt_tokens: data.cached_prompt_tokens.unwrap_or(0),
            completion_tokens: data.completion_tokens,
            reasoning_tokens: data.reasoning_tokens.unwrap_or(0),
            cache_write_5m_tokens: data.cache_write_5m_tokens.unwrap_or(0),
            cache_write_1h_tokens: data.cache_write_1h_tokens.unwrap_or(0),
            cost_micros: charge.map_or(0, |c| c.cost_micros),
        };
        let currency = charge.as_ref().map_or("", |c| c.currency());
        let group = self.group(&data.consumer_id, &data.model_served, currency);
        if let Some(totals) = self.totals.get_mut(group as usize) {
            totals.add(&values);
        }
        self.events.insert(
            id,
            CountedEvent {
                group,
                values,
                partition,
                offset,
            },
        );
        self.counts.events += 1;
    }

    /// The index of the group, created on first sight; allocates only then.
    fn group(&mut self, consumer: &str, model: &str, currency: &str) -> u32 {
        self.scratch.clear();
        let _ = write!(self.scratch, "{consumer}\0{model}\0{currency}");
        if let Some(index) = self.index.get(self.scratch.as_str()) {
            return *index;
        }
        let index = u32::try_from(self.groups.len()).unwrap_or(u32::MAX);
        self.groups.push(GroupKey {
            consumer: consumer.to_owned(),
            model: model.to_owned(),
            currency: currency.to_owned(),
        });
        self.totals.push(Totals::default());
        self.index.insert(self.scratch.clone(), index);
        index
    }

    /// Every group's sums.
    pub fn totals(&self) -> BTreeMap<GroupKey, Totals> {
        self.groups
            .iter()
            .cloned()
            .zip(self.totals.iter().copied())
            .collect()
    }

    /// The group an event was counted in.
    pub fn group_of(&self, event: &CountedEvent) -> Option<&GroupKey> {
        self.groups.get(event.group as usize)
    }

    /// Every counted event, by id.
    pub fn events(&self) -> &HashMap<u128, CountedEvent> {
        &self.events
    }

    /// The served models of the counted events that had no price in force, sorted (none without a price
    /// table).
    pub fn unpriced_models(&self) -> &BTreeSet<String> {
        &self.unpriced_models
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const FIXTURE: &str = include_str!("../../../../schemas/fixtures/tollgate.usage.v1.json");
    const FIXTURE_ID: &str = "019a9b8e-4f3c-7a21-9d4e-2b6c1f0e8a57";
    /// The fixture's `finished_at_ms`: 2026-11-22T09:15:02.481Z.
    const FINISHED: u64 = 1_795_338_902_481;

    fn event(id: &str, consumer: &str, cached: &str) -> String {
        FIXTURE
            .replace(FIXTURE_ID, id)
            .replace(
                "\"consumer_id\": \"team-a\"",
                &format!("\"consumer_id\": \"{consumer}\""),
            )
            .replace(
                "\"cached_prompt_tokens\": null",
                &format!("\"cached_prompt_tokens\": {cached}"),
            )
    }

    fn prices() -> Arc<PriceTable> {
        Arc::new(
            PriceTable::from_toml(
                r#"
                [[prices]]
                model = "gpt-4o-mini"
                effective_from = "2026-01-01"
                currency = "USD"
                input_per_mtok = "0.15"
                cached_input_per_mtok = "0.075"
                output_per_mtok = "0.60"
                "#,
            )
            .unwrap(),
        )
    }

    /// The fixture's served model, a dated snapshot of the priced gpt-4o-mini.
    const SERVED: &str = "gpt-4o-mini-2024-07-18";

    fn key(consumer: &str, currency: &str) -> GroupKey {
        GroupKey {
            consumer: consumer.into(),
            model: SERVED.into(),
            currency: currency.into(),
        }
    }

    fn served_by(payload: &str, model: &str) -> String {
        payload.replace(
            &format!("\"model_served\": \"{SERVED}\""),
            &format!("\"model_served\": \"{model}\""),
        )
    }

    #[test]
    fn events_are_summed_per_group_once_each_and_priced() {
        let mut tally = Tally::new(FINISHED, FINISHED + 1, Some(prices()));
        let a1 = event("019a9b8e-0000-7000-8000-000000000001", "team-a", "null");
        let a2 = event("019a9b8e-0000-7000-8000-000000000002", "team-a", "20");
        let b1 = event("019a9b8e-0000-7000-8000-000000000003", "team-b", "null");
        for (offset, payload) in [&a1, &a2, &b1, &a1].into_iter().enumerate() {
            tally.add(0, offset as i64, Some(payload.as_bytes()));
        }
        let totals = tally.totals();
        // a1: 21 × 0.15 + 9 × 0.60 = 8.55 → 9; a2: 1 × 0.15 + 20 × 0.075 + 9 × 0.60 = 7.05 → 7.
        assert_eq!(
            totals[&key("team-a", "USD")],
            Totals {
                events: 2,
                prompt_tokens: 42,
                cached_prompt_tokens: 20,
                completion_tokens: 18,
                cost_micros: 16,
                ..Totals::default()
            }
        );
        assert_eq!(totals[&key("team-b", "USD")].events, 1);
        assert_eq!(
            tally.counts,
            MessageCounts {
                messages: 4,
                events: 3,
                duplicates: 1,
                outside_range: 0,
                undecodable: 0,
            }
        );
        let first = tally.events()[&uuid::Uuid::parse_str("019a9b8e-0000-7000-8000-000000000001")
            .unwrap()
            .as_u128()];
        assert_eq!(
            (first.partition, first.offset),
            (0, 0),
            "the first delivery is kept"
        );
        assert_eq!(tally.group_of(&first), Some(&key("team-a", "USD")));
    }

    #[test]
    fn events_are_grouped_and_priced_by_the_served_model_and_unpriced_ones_collected() {
        let mut tally = Tally::new(0, u64::MAX, Some(prices()));
        let snapshot = event("019a9b8e-0000-7000-8000-000000000001", "team-a", "null");
        // Requested gpt-4o-mini (priced), failed over to models without a price.
        let other = served_by(
            &event("019a9b8e-0000-7000-8000-000000000002", "team-a", "null"),
            "claude-3-5-haiku-20241022",
        );
        let again = served_by(
            &event("019a9b8e-0000-7000-8000-000000000003", "team-a", "null"),
            "claude-3-5-haiku-20241022",
        );
        let third = served_by(
            &event("019a9b8e-0000-7000-8000-000000000004", "team-a", "null"),
            "llama-3-70b",
        );
        for (offset, payload) in [&snapshot, &other, &again, &third].into_iter().enumerate() {
            tally.add(0, offset as i64, Some(payload.as_bytes()));
        }
        let totals = tally.totals();
        assert_eq!(totals[&key("team-a", "USD")].cost_micros, 9);
        let unpriced = GroupKey {
            consumer: "team-a".into(),
            model: "claude-3-5-haiku-20241022".into(),
            currency: String::new(),
        };
        assert_eq!((totals[&unpriced].events, totals[&unpriced].cost_micros), (2, 0));
        assert_eq!(tally.unpriced_events, 3);
        assert_eq!(
            tally.unpriced_models().iter().collect::<Vec<_>>(),
            ["claude-3-5-haiku-20241022", "llama-3-70b"]
        );
        // Without prices nothing is "unpriced": costs are not compared.
        let mut without = Tally::new(0, u64::MAX, None);
        without.add(0, 0, Some(other.as_bytes()));
        assert_eq!((without.unpriced_events, without.unpriced_models().len()), (0, 0));
    }

    #[test]
    fn the_range_is_by_finished_at_and_half_open() {
        for (from, to, counted) in [
            (FINISHED, FINISHED + 1, 1),
            (FINISHED + 1, FINISHED + 2, 0),
            (FINISHED - 1, FINISHED, 0),
        ] {
            let mut tally = Tally::new(from, to, None);
            tally.add(0, 0, Some(FIXTURE.as_bytes()));
            assert_eq!(
                (tally.counts.events, tally.counts.outside_range),
                (counted, 1 - counted)
            );
        }
    }

    #[test]
    fn without_prices_costs_are_zero_and_groups_have_no_currency() {
        let mut tally = Tally::new(0, u64::MAX, None);
        tally.add(0, 0, Some(FIXTURE.as_bytes()));
        let totals = tally.totals();
        assert_eq!(totals[&key("team-a", "")].cost_micros, 0);
        assert_eq!(totals[&key("team-a", "")].prompt_tokens, 21);
    }

    #[test]
    fn other_messages_are_undecodable_not_events() {
        let mut tally = Tally::new(0, u64::MAX, None);
        let quota = FIXTURE.replace("\"tollgate.usage.v1\"", "\"tollgate.quota.v1\"");
        let old = FIXTURE.replace("\"specversion\": \"1.0\"", "\"specversion\": \"0.3\"");
        for payload in [
            None,
            Some(&b"{garbage"[..]),
            Some(quota.as_bytes()),
            Some(old.as_bytes()),
        ] {
            tally.add(0, 0, payload);
        }
        assert_eq!(
            (
                tally.counts.messages,
                tally.counts.undecodable,
                tally.counts.events
            ),
            (4, 4, 0)
        );
        assert!(tally.totals().is_empty());
    }

    #[test]
    fn escaped_strings_are_read_too() {
        let mut tally = Tally::new(0, u64::MAX, None);
        let escaped = event(FIXTURE_ID, "team-\\u0061", "null");
        tally.add(0, 0, Some(escaped.as_bytes()));
        assert_eq!(
            tally.totals().keys().next().map(|k| k.consumer.as_str()),
            Some("team-a")
        );
    }
}
