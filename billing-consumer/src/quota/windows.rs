//! The quota loop's state, without any I/O: per configured scope, the usage counted in its recent windows, and
//! which (scope, window) pairs have a snapshot to publish.
//!
//! Windows are by **event time** (`finished_at_ms` of each usage event), never by the loop's clock, so a rebuild
//! from the usage topic and a live run count every event into the same window.
//!
//! **Clock skew.** A gateway's clock can run ahead. An event cannot have finished after the broker stored it nor
//! after the loop read it, so an event time more than `max_clock_skew` ahead of the earlier of the two
//! ([`Position::not_after_ms`]; a `CreateTime` stamped by the producer comes from the gateway's clock, so the
//! loop's own clock bounds it too) is not believed: the event is counted at that bound instead and reported as skewed ([`Applied::Counted::skewed`], metric
//! `billing_quota_clock_skew_events_total`). An event time far *behind* the broker's is normal (a spool drained
//! late) and kept. The ledger keeps the event's own time either way (it is part of the ledger's dedup key).
//!
//! **Windows kept and published per (scope, window).** Each scope keeps the window containing its *reference
//! time* — the newest event time no later than its broker timestamp, so a gateway's skew cannot move it — the
//! window before it, and any window after it (at most `max_clock_skew` ahead). Every window is published as its
//! own snapshot, keyed by scope and window start ([`snapshot_key`]), so an event in a later window never replaces
//! the current window's published state, and at a rollover a gateway whose clock is still in the previous window
//! keeps that window's usage instead of seeing 0. A late event for the previous window is published too. When a
//! window is dropped, its key is reported once ([`QuotaState::take_expired`]) so the publisher can tombstone it
//! on the compacted topic.
//!
//! Events are deduplicated by their envelope id over the most recent `dedup_capacity` ids that counted anywhere
//! (default [`DEFAULT_DEDUP_CAPACITY`], at most [`MAX_DEDUP_CAPACITY`]; about [`DEDUP_BYTES_PER_ID`] bytes per id
//! at worst): a gateway's spool may deliver an event twice. A duplicate adds no tokens, but it still advances its
//! gateway's watermark, because the event it repeats is counted. The window is a count, not a time: at the
//! default it covers the last million events, which at 10,000 events/s is 100 s of traffic — a duplicate
//! redelivered later than that counts twice in the quota (never in the ledger, which deduplicates by id itself).
//!
//! The policy can change while the loop runs ([`QuotaState::update_policy`]): a scope whose key stays keeps its
//! windows (a new limit value shows in its next snapshots), a scope that goes is forgotten, and a new scope starts
//! empty — the caller then rebuilds, since only the usage topic has the usage it must start from.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};

use tollgate_schemas::pricing::{PriceTable, TokenUsage};
use tollgate_schemas::quota::{QuotaSnapshot, Watermark, Window};
use tollgate_schemas::usage::UsageEvent;
use uuid::Uuid;

use crate::quota::policy::ConfiguredScope;

/// Event ids remembered for deduplication by default.
pub const DEFAULT_DEDUP_CAPACITY: usize = 1_000_000;

/// The most event ids that may be remembered: about 500 MiB at [`DEDUP_BYTES_PER_ID`].
pub const MAX_DEDUP_CAPACITY: usize = 10_000_000;

/// Memory per remembered id, measured at the default capacity: the id set's buckets (16-byte UUID + 1 control
/// byte, 2^21 of them for 1,000,000 ids at hashbrown's 7/8 load) and the eviction queue (16 bytes per id, 2^20
/// slots): 52.4 MB for 1,000,000 ids. Just past a power of two the set and the queue may be up to twice that.
pub const DEDUP_BYTES_PER_ID: usize = 52;

/// How far ahead of its broker timestamp an event's time is believed, by default.
pub const DEFAULT_MAX_CLOCK_SKEW: std::time::Duration = std::time::Duration::from_secs(5 * 60);

/// The Kafka key of the snapshot of `scope_key` for the window starting at `window_start_ms`: one per (scope,
/// window) on the compacted topic, e.g. `consumer=team-a;window=3600s;strategy=total_tokens@1795168800000`.
pub fn snapshot_key(scope_key: &str, window_start_ms: u64) -> String {
    format!("{scope_key}@{window_start_ms}")
}

/// The time an event is counted at, and whether its own time was too far ahead of the broker's to be believed.
pub fn counted_time(finished_at_ms: u64, broker_ms: Option<u64>, max_skew_ms: u64) -> (u64, bool) {
    match broker_ms {
        Some(broker) if finished_at_ms > broker.saturating_add(max_skew_ms) => (broker, true),
        _ => (finished_at_ms, false),
    }
}

/// Usage of one scope in one window.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WindowUsage {
    /// The window's bounds.
    pub window: Window,
    /// Tokens counted under the scope's strategy.
    pub used: u64,
    /// Events counted.
    pub events: u64,
    /// Per (gateway, partition), the highest offset of an event counted here.
    pub watermarks: BTreeMap<(String, i32), i64>,
    /// The newest Kafka timestamp (or, without one, `finished_at_ms`) of an event counted here.
    pub newest_event_ms: u64,
    /// Counted since its last snapshot was taken.
    changed: bool,
    /// A snapshot of it was taken (so dropping it leaves one on the topic to tombstone).
    published: bool,
}

impl WindowUsage {
    fn new(window: Window) -> Self {
        Self {
            window,
            used: 0,
            events: 0,
            watermarks: BTreeMap::new(),
            newest_event_ms: 0,
            changed: false,
            published: false,
        }
    }

    fn advance(&mut self, gateway: &str, partition: i32, offset: i64, event_ms: u64) {
        let key = (gateway.to_owned(), partition);
        let watermark = self.watermarks.entry(key).or_insert(offset);
        *watermark = (*watermark).max(offset);
        self.newest_event_ms = self.newest_event_ms.max(event_ms);
    }
}

/// Where an event was read from: what the watermarks and lag are made of.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Position {
    pub partition: i32,
    pub offset: i64,
    /// The message's Kafka timestamp, Unix epoch milliseconds, when it has one.
    pub timestamp_ms: Option<u64>,
    /// The latest the event can have happened: the earlier of its Kafka timestamp and when the loop read it
    /// (a producer-stamped `CreateTime` comes from the gateway's own clock; the loop's clock bounds it too).
    pub not_after_ms: Option<u64>,
}

/// What [`QuotaState::apply`] did with an event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Applied {
    /// Counted in `scopes` scopes (zero when no scope matches it); `skewed` when its time was too far ahead of
    /// the broker's and it was counted at the broker's timestamp.
    Counted { scopes: usize, skewed: bool },
    /// Its id was counted before; only watermarks moved.
    Duplicate,
}

#[derive(Debug)]
struct ScopeState {
    configured: ConfiguredScope,
    /// By window start.
    windows: BTreeMap<u64, WindowUsage>,
    /// The newest event time seen no later than its broker timestamp: windows before the one before it go.
    reference_ms: u64,
    /// Keys of dropped windows that had been published.
    expired: Vec<String>,
}

impl ScopeState {
    fn new(configured: ConfiguredScope) -> Self {
        Self {
            configured,
            windows: BTreeMap::new(),
            reference_ms: 0,
            expired: Vec::new(),
        }
    }

    fn changed(&self) -> bool {
        self.windows.values().any(|w| w.changed)
    }

    /// Drops the windows before the one before the reference time's.
    fn prune(&mut self) {
        let period = &self.configured.scope.period;
        let current = period.window_at(self.reference_ms).start_ms;
        let keep_from = period.previous_start(current).unwrap_or(current);
        while let Some(entry) = self.windows.first_entry() {
            if *entry.key() >= keep_from {
                break;
            }
            let (start, usage) = entry.remove_entry();
            if usage.published {
                self.expired.push(snapshot_key(&self.configured.key, start));
            }
        }
    }

    fn snapshot(&self, usage: &WindowUsage, published_at_ms: u64) -> QuotaSnapshot {
        QuotaSnapshot {
            scope: self.configured.key.clone(),
            limit: self.configured.limit,
            strategy: self.configured.scope.strategy,
            currency: self.configured.scope.currency.clone(),
            window_start_ms: usage.window.start_ms,
            window_end_ms: usage.window.end_ms,
            used: usage.used,
            events: usage.events,
            watermarks: usage
                .watermarks
                .iter()
                .map(|((gateway, partition), offset)| Watermark {
                    gateway: gateway.clone(),
                    partition: *partition,
                    offset: *offset,
                })
                .collect(),
            newest_event_ms: usage.newest_event_ms,
            published_at_ms,
        }
    }

    /// Snapshots of the windows `pick` selects, oldest first, marking them published and unchanged.
    fn take(&mut self, published_at_ms: u64, pick: impl Fn(&WindowUsage) -> bool) -> Vec<QuotaSnapshot> {
        let mut snapshots = Vec::new();
        let picked: Vec<u64> = self
            .windows
            .iter()
            .filter(|(_, usage)| pick(usage))
            .map(|(start, _)| *start)
            .collect();
        for start in picked {
            if let Some(usage) = self.windows.get(&start) {
                snapshots.push(self.snapshot(usage, published_at_ms));
            }
            if let Some(usage) = self.windows.get_mut(&start) {
                usage.changed = false;
                usage.published = true;
            }
        }
        snapshots
    }
}

/// The most recent event ids, bounded: the oldest is forgotten when a new one would exceed the capacity.
#[derive(Debug)]
struct RecentIds {
    capacity: usize,
    ids: HashSet<Uuid>,
    order: VecDeque<Uuid>,
}

impl RecentIds {
    fn new(capacity: usize) -> Self {
        Self {
            capacity: capacity.min(MAX_DEDUP_CAPACITY),
            ids: HashSet::new(),
            order: VecDeque::new(),
        }
    }

    fn contains(&self, id: &Uuid) -> bool {
        self.ids.contains(id)
    }

    fn remember(&mut self, id: Uuid) {
        if self.capacity == 0 || !self.ids.insert(id) {
            return;
        }
        self.order.push_back(id);
        while self.order.len() > self.capacity {
            if let Some(oldest) = self.order.pop_front() {
                self.ids.remove(&oldest);
            }
        }
    }
}

/// How a new policy differs from the one being computed, by scope key.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PolicyDiff {
    /// Scopes not computed so far: they start empty.
    pub added: Vec<String>,
    /// Scopes no longer configured: forgotten, never published again.
    pub removed: Vec<String>,
    /// Scopes whose limit changed: marked, so their next snapshot carries the new limit.
    pub relimited: Vec<String>,
}

impl PolicyDiff {
    /// True when the policy is the same.
    pub fn is_empty(&self) -> bool {
        self.added.is_empty() && self.removed.is_empty() && self.relimited.is_empty()
    }
}

/// Every configured scope's windows, and the ids of recently counted events.
#[derive(Debug)]
pub struct QuotaState {
    scopes: Vec<ScopeState>,
    by_key: HashMap<String, usize>,
    recent: RecentIds,
    max_skew_ms: u64,
}

impl QuotaState {
    /// An empty state for `scopes`, remembering up to `dedup_capacity` event ids (0 turns deduplication off; at
    /// most [`MAX_DEDUP_CAPACITY`]), believing event times up to [`DEFAULT_MAX_CLOCK_SKEW`] ahead of the broker.
    pub fn new(scopes: Vec<ConfiguredScope>, dedup_capacity: usize) -> Self {
        let by_key = scopes
            .iter()
            .enumerate()
            .map(|(i, s)| (s.key.clone(), i))
            .collect();
        Self {
            scopes: scopes.into_iter().map(ScopeState::new).collect(),
            by_key,
            recent: RecentIds::new(dedup_capacity),
            max_skew_ms: u64::try_from(DEFAULT_MAX_CLOCK_SKEW.as_millis()).unwrap_or(u64::MAX),
        }
    }

    /// Believes event times up to `max_skew` ahead of their broker timestamp.
    pub fn with_max_clock_skew(mut self, max_skew: std::time::Duration) -> Self {
        self.max_skew_ms = u64::try_from(max_skew.as_millis()).unwrap_or(u64::MAX);
        self
    }

    /// Scopes being computed.
    pub fn scope_count(&self) -> usize {
        self.scopes.len()
    }

    /// Computes `scopes` from now on (in their order; a key given twice counts once): kept scopes keep their
    /// windows and take the new limit, removed ones are dropped, new ones start empty. The recent event ids are
    /// kept. Returns what changed.
    pub fn update_policy(&mut self, scopes: Vec<ConfiguredScope>) -> PolicyDiff {
        let mut old: HashMap<String, ScopeState> = self
            .scopes
            .drain(..)
            .map(|state| (state.configured.key.clone(), state))
            .collect();
        let mut diff = PolicyDiff::default();
        self.by_key.clear();
        for configured in scopes {
            if self.by_key.contains_key(&configured.key) {
                continue;
            }
            let state = match old.remove(&configured.key) {
                Some(mut state) => {
                    if state.configured.limit != configured.limit {
                        diff.relimited.push(configured.key.clone());
                        for usage in state.windows.values_mut() {
                            usage.changed = true;
                        }
                    }
                    state.configured = configured;
                    state
                }
                None => {
                    diff.added.push(configured.key.clone());
                    ScopeState::new(configured)
                }
            };
            self.by_key
                .insert(state.configured.key.clone(), self.scopes.len());
            self.scopes.push(state);
        }
        diff.removed = old.into_keys().collect();
        diff.removed.sort();
        diff
    }

    /// The scopes being computed, in order.
    pub fn scopes(&self) -> impl Iterator<Item = &ConfiguredScope> {
        self.scopes.iter().map(|s| &s.configured)
    }

    /// Counts `event`, read at `at`, in every scope it matches, in the window containing its `finished_at_ms` —
    /// or its broker timestamp when that time is more than the clock-skew bound ahead of it. A spend scope
    /// counts the event's cost under `prices` (at the model that served it, as the ledger prices it) when it is
    /// priced in the scope's currency.
    pub fn apply(&mut self, event: &UsageEvent, at: Position, prices: &PriceTable) -> Applied {
        let data = &event.data;
        let (counted_ms, skewed) = counted_time(data.finished_at_ms, at.not_after_ms, self.max_skew_ms);
        let reference_ms = at.not_after_ms.map_or(counted_ms, |bound| counted_ms.min(bound));
        let event_ms = at.timestamp_ms.unwrap_or(data.finished_at_ms);
        let duplicate = self.recent.contains(&event.id);
        let mut counted = 0;
        let mut charge = None;
        for scope in &mut self.scopes {
            if !scope.configured.scope.matches_event(data)
                || !scope.configured.scope.period.applies_at(counted_ms)
            {
                continue;
            }
            let window = scope.configured.scope.window_at(counted_ms);
            if duplicate {
                // The repeated event is counted already; only say that this offset is covered too.
                if let Some(usage) = scope.windows.get_mut(&window.start_ms) {
                    usage.advance(&event.source, at.partition, at.offset, event_ms);
                    usage.changed = true;
                }
                continue;
            }
            let usage = scope
                .windows
                .entry(window.start_ms)
                .or_insert_with(|| WindowUsage::new(window));
            let amount = match &scope.configured.scope.currency {
                Some(currency) => {
                    let charge = charge.get_or_insert_with(|| {
                        prices.charge(&data.model_served, data.finished_at_ms, &TokenUsage::of(data))
                    });
                    if charge.currency() == currency {
                        u64::try_from(charge.cost_micros).unwrap_or(0)
                    } else {
                        0
                    }
                }
                None => scope.configured.scope.strategy.event_tokens(data),
            };
            usage.used = usage.used.saturating_add(amount);
            usage.events += 1;
            usage.advance(&event.source, at.partition, at.offset, event_ms);
            usage.changed = true;
            scope.reference_ms = scope.reference_ms.max(reference_ms);
            scope.prune();
            counted += 1;
        }
        if duplicate {
            return Applied::Duplicate;
        }
        if counted > 0 {
            self.recent.remember(event.id);
        }
        Applied::Counted {
            scopes: counted,
            skewed,
        }
    }

    /// True when some (scope, window) has a snapshot to publish.
    pub fn has_changed(&self) -> bool {
        self.scopes.iter().any(ScopeState::changed)
    }

    /// Snapshots of every (scope, window) changed since the last call, oldest window first per scope; clears the
    /// marks.
    pub fn take_changed(&mut self, published_at_ms: u64) -> Vec<QuotaSnapshot> {
        self.scopes
            .iter_mut()
            .flat_map(|scope| scope.take(published_at_ms, |usage| usage.changed))
            .collect()
    }

    /// Snapshots of every kept window of every scope (after a rebuild), oldest first per scope; clears every
    /// mark.
    pub fn all_snapshots(&mut self, published_at_ms: u64) -> Vec<QuotaSnapshot> {
        self.scopes
            .iter_mut()
            .flat_map(|scope| scope.take(published_at_ms, |_| true))
            .collect()
    }

    /// The snapshot keys ([`snapshot_key`]) of published windows dropped since the last call: to tombstone.
    pub fn take_expired(&mut self) -> Vec<String> {
        self.scopes
            .iter_mut()
            .flat_map(|scope| std::mem::take(&mut scope.expired))
            .collect()
    }

    /// Keys of the two windows of each scope before the ones kept at `now_ms` (by the clock), unless kept: a
    /// previous run of the loop left the windows it held when it stopped on the compacted topic (it tombstones
    /// only what it drops while running); after a rebuild they are tombstoned, so a restart leaves nothing
    /// behind that is less than two windows older than the previous run's last ones.
    pub fn stale_keys(&self, now_ms: u64) -> Vec<String> {
        let mut keys = Vec::new();
        for scope in &self.scopes {
            let period = &scope.configured.scope.period;
            let current = period.window_at(now_ms).start_ms;
            let mut start = period.previous_start(current).unwrap_or(current);
            for _ in 1..=2 {
                let Some(before) = period.previous_start(start) else {
                    break;
                };
                start = before;
                if !scope.windows.contains_key(&start) {
                    keys.push(snapshot_key(&scope.configured.key, start));
                }
            }
        }
        keys
    }

    /// Marks a snapshot changed again, e.g. because publishing it failed.
    pub fn mark_changed(&mut self, scope_key: &str, window_start_ms: u64) {
        if let Some(usage) = self
            .by_key
            .get(scope_key)
            .and_then(|i| self.scopes.get_mut(*i))
            .and_then(|scope| scope.windows.get_mut(&window_start_ms))
        {
            usage.changed = true;
        }
    }

    /// The usage of `scope_key` in the window starting at `window_start_ms`, if it is kept.
    pub fn window(&self, scope_key: &str, window_start_ms: u64) -> Option<&WindowUsage> {
        let scope = self.scopes.get(*self.by_key.get(scope_key)?)?;
        scope.windows.get(&window_start_ms)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use chrono::{DateTime, Utc};
    use tollgate_schemas::CloudEvent;
    use tollgate_schemas::quota::{LimitStrategy, QuotaScope, TokenLimitConfig};
    use tollgate_schemas::usage::{EstimateSource, Outcome, UsageRecorded, UsageSource};

    const HOUR: u64 = 3_600_000;
    /// 2026-11-20T00:00:00Z, on an hour boundary.
    const T0: u64 = 1_795_132_800_000;

    fn limited(scope: ConfiguredScope, limit: u64) -> ConfiguredScope {
        ConfiguredScope { limit, ..scope }
    }

    fn scope(
        consumer: Option<&str>,
        instance: Option<&str>,
        models: &[&str],
        strategy: LimitStrategy,
    ) -> ConfiguredScope {
        let limit = TokenLimitConfig {
            id: None,
            models: models.iter().map(|m| (*m).to_owned()).collect(),
            instance: None,
            limit: 1000,
            time_window: "1h".into(),
            limit_strategy: strategy,
            rejected_code: None,
            rejected_msg: None,
            rejected_type: None,
        };
        let scope = QuotaScope::from_limit(consumer, instance, &limit).unwrap();
        ConfiguredScope {
            key: scope.key(),
            scope,
            limit: 1000,
        }
    }

    fn event(
        consumer: &str,
        model: &str,
        instance: &str,
        prompt: u32,
        completion: u32,
        at_ms: u64,
    ) -> UsageEvent {
        let time = DateTime::<Utc>::from_timestamp_millis(at_ms as i64).unwrap();
        CloudEvent::new(
            "tollgate-gateway/gw-1",
            consumer,
            time,
            UsageRecorded {
                request_id: "req".into(),
                consumer_id: consumer.into(),
                team: None,
                organization: None,
                key_id: "key".into(),
                endpoint: "/v1/chat/completions".into(),
                route: model.into(),
                model_requested: model.into(),
                model_served: model.into(),
                provider: "openai".into(),
                instance: instance.into(),
                attempts: vec![],
                stream: false,
                outcome: Outcome::Ok,
                http_status: 200,
                prompt_tokens_estimated: prompt,
                prompt_estimate_source: EstimateSource::Meter,
                prompt_tokens: prompt,
                completion_tokens: completion,
                total_tokens: prompt + completion,
                cached_prompt_tokens: None,
                reasoning_tokens: None,
                cache_write_5m_tokens: None,
                cache_write_1h_tokens: None,
                usage_source: UsageSource::Provider,
                latency_ms: 10,
                ttfb_ms: None,
                started_at_ms: at_ms - 10,
                finished_at_ms: at_ms,
            },
        )
    }

    fn at(partition: i32, offset: i64) -> Position {
        Position {
            partition,
            offset,
            timestamp_ms: Some(T0 + 5 * HOUR + offset as u64),
            not_after_ms: Some(T0 + 5 * HOUR + offset as u64),
        }
    }

    fn by_scope(snapshots: Vec<QuotaSnapshot>) -> BTreeMap<String, QuotaSnapshot> {
        snapshots.into_iter().map(|s| (s.scope.clone(), s)).collect()
    }

    #[test]
    fn each_strategy_sums_its_tokens() {
        let scopes = [
            LimitStrategy::TotalTokens,
            LimitStrategy::PromptTokens,
            LimitStrategy::CompletionTokens,
        ]
        .map(|s| scope(Some("team-a"), None, &[], s));
        let keys = scopes.clone().map(|s| s.key);
        let mut state = QuotaState::new(scopes.to_vec(), 100);
        assert_eq!(
            state.apply(
                &event("team-a", "m", "i", 10, 3, T0 + 1),
                at(0, 0),
                &PriceTable::default()
            ),
            Applied::Counted {
                scopes: 3,
                skewed: false
            }
        );
        assert_eq!(
            state.apply(
                &event("team-a", "m", "i", 20, 4, T0 + 2),
                at(0, 1),
                &PriceTable::default()
            ),
            Applied::Counted {
                scopes: 3,
                skewed: false
            }
        );
        let snapshots = by_scope(state.take_changed(T0 + HOUR));
        let used: Vec<_> = keys
            .iter()
            .map(|k| (snapshots[k].used, snapshots[k].events))
            .collect();
        assert_eq!(used, [(37, 2), (30, 2), (7, 2)]);
        let first = &snapshots[&keys[0]];
        assert_eq!((first.window_start_ms, first.window_end_ms), (T0, T0 + HOUR));
        assert_eq!(first.limit, 1000);
        assert_eq!(first.strategy, LimitStrategy::TotalTokens);
        assert_eq!(first.published_at_ms, T0 + HOUR);
        assert_eq!(first.newest_event_ms, T0 + 5 * HOUR + 1);
        assert!(
            state.take_changed(T0 + HOUR).is_empty(),
            "taking clears the marks"
        );
    }

    #[test]
    fn consumer_global_and_instance_scopes_count_what_they_cover() {
        let team_a_mini = scope(Some("team-a"), None, &["gpt-4o-mini"], LimitStrategy::TotalTokens);
        let global_mini = scope(None, None, &["gpt-4o-mini"], LimitStrategy::TotalTokens);
        let everything = scope(None, None, &[], LimitStrategy::TotalTokens);
        let vllm = scope(None, Some("vllm"), &[], LimitStrategy::TotalTokens);
        let keys = [&team_a_mini, &global_mini, &everything, &vllm].map(|s| s.key.clone());
        let mut state = QuotaState::new(vec![team_a_mini, global_mini, everything, vllm], 100);

        state.apply(
            &event("team-a", "gpt-4o-mini", "openai", 1, 0, T0),
            at(0, 0),
            &PriceTable::default(),
        );
        state.apply(
            &event("team-b", "gpt-4o-mini", "vllm", 10, 0, T0),
            at(1, 0),
            &PriceTable::default(),
        );
        state.apply(
            &event("team-a", "claude", "vllm", 100, 0, T0),
            at(0, 1),
            &PriceTable::default(),
        );
        assert_eq!(
            state.apply(
                &event("team-c", "llama", "local", 1000, 0, T0),
                at(2, 0),
                &PriceTable::default()
            ),
            Applied::Counted {
                scopes: 1,
                skewed: false
            }
        );
        let snapshots = by_scope(state.take_changed(T0));
        let used: Vec<_> = keys.iter().map(|k| snapshots[k].used).collect();
        assert_eq!(used, [1, 11, 1111, 110]);
    }

    #[test]
    fn an_event_no_scope_matches_is_counted_nowhere_and_changes_nothing() {
        let mut state = QuotaState::new(
            vec![scope(Some("team-a"), None, &[], LimitStrategy::TotalTokens)],
            100,
        );
        assert_eq!(
            state.apply(
                &event("team-b", "m", "i", 5, 5, T0),
                at(0, 0),
                &PriceTable::default()
            ),
            Applied::Counted {
                scopes: 0,
                skewed: false
            }
        );
        assert!(!state.has_changed());
        assert!(
            state.all_snapshots(T0).is_empty(),
            "a scope without usage has no snapshot"
        );
    }

    #[test]
    fn a_new_window_by_event_time_starts_from_zero() {
        let team_a = scope(Some("team-a"), None, &[], LimitStrategy::TotalTokens);
        let key = team_a.key.clone();
        let mut state = QuotaState::new(vec![team_a], 100);
        state.apply(
            &event("team-a", "m", "i", 10, 0, T0 + HOUR - 1),
            at(0, 0),
            &PriceTable::default(),
        );
        let before = state.take_changed(1).remove(0);
        assert_eq!((before.window_start_ms, before.used), (T0, 10));

        state.apply(
            &event("team-a", "m", "i", 7, 0, T0 + HOUR),
            at(0, 1),
            &PriceTable::default(),
        );
        let after = state.take_changed(2).remove(0);
        assert_eq!(
            (after.window_start_ms, after.window_end_ms),
            (T0 + HOUR, T0 + 2 * HOUR)
        );
        assert_eq!((after.used, after.events), (7, 1));
        assert_eq!(
            after.watermarks,
            [Watermark {
                gateway: "tollgate-gateway/gw-1".into(),
                partition: 0,
                offset: 1
            }]
        );
        assert_eq!(
            state.window(&key, T0).unwrap().used,
            10,
            "the previous window is kept"
        );
    }

    /// A late event for the previous window is counted there and published as that window's own snapshot, so a
    /// gateway whose clock is still in that window sees its usage, not 0; the newest window's snapshot is not
    /// touched. Windows before the previous one are dropped (and tombstoned once, if they were published).
    #[test]
    fn a_late_event_for_the_previous_window_is_published_as_that_window() {
        let team_a = scope(Some("team-a"), None, &[], LimitStrategy::TotalTokens);
        let key = team_a.key.clone();
        let mut state = QuotaState::new(vec![team_a], 100);
        state.apply(
            &event("team-a", "m", "i", 10, 0, T0 + 5),
            at(0, 0),
            &PriceTable::default(),
        );
        state.apply(
            &event("team-a", "m", "i", 20, 0, T0 + HOUR + 5),
            at(0, 1),
            &PriceTable::default(),
        );
        let both = state.take_changed(1);
        assert_eq!(
            both.iter()
                .map(|s| (s.window_start_ms, s.used))
                .collect::<Vec<_>>(),
            [(T0, 10), (T0 + HOUR, 20)]
        );

        state.apply(
            &event("team-a", "m", "i", 3, 0, T0 + 6),
            at(0, 2),
            &PriceTable::default(),
        );
        let late = state.take_changed(2);
        assert_eq!(late.len(), 1, "only the previous window changed: {late:?}");
        assert_eq!(
            (late[0].window_start_ms, late[0].used, late[0].events),
            (T0, 13, 2)
        );
        assert!(late[0].covers("tollgate-gateway/gw-1", 0, 2));
        assert!(state.take_expired().is_empty());

        // The window two back is dropped once the reference time moves on, and its key reported once.
        state.apply(
            &event("team-a", "m", "i", 1, 0, T0 + 2 * HOUR),
            at(0, 3),
            &PriceTable::default(),
        );
        assert!(state.window(&key, T0).is_none());
        assert_eq!(state.take_expired(), [snapshot_key(&key, T0)]);
        assert!(state.take_expired().is_empty());
        state.apply(
            &event("team-a", "m", "i", 99, 0, T0 + 7),
            at(0, 4),
            &PriceTable::default(),
        );
        assert!(
            state.window(&key, T0).is_none(),
            "an event older than the kept windows is dropped"
        );
        let snapshot = state.take_changed(3).remove(0);
        assert_eq!((snapshot.window_start_ms, snapshot.used), (T0 + 2 * HOUR, 1));
        assert!(
            state.take_expired().is_empty(),
            "a window never published needs no tombstone"
        );
    }

    /// An event whose time is more than the skew bound ahead of its broker timestamp is counted at the broker's
    /// time and reported skewed: it can neither open a far-future window nor push the current one out.
    #[test]
    fn an_event_from_a_clock_far_ahead_is_counted_at_the_broker_time() {
        let team_a = scope(Some("team-a"), None, &[], LimitStrategy::TotalTokens);
        let key = team_a.key.clone();
        let mut state =
            QuotaState::new(vec![team_a], 100).with_max_clock_skew(std::time::Duration::from_secs(300));
        let broker = |offset: i64, ms: u64| Position {
            partition: 0,
            offset,
            timestamp_ms: Some(ms),
            not_after_ms: Some(ms),
        };
        let now = T0 + 30 * 60_000;
        assert_eq!(
            state.apply(
                &event("team-a", "m", "i", 10, 0, now),
                broker(0, now),
                &PriceTable::default()
            ),
            Applied::Counted {
                scopes: 1,
                skewed: false
            }
        );
        // A gateway a day ahead: counted now, in the current window.
        assert_eq!(
            state.apply(
                &event("team-a", "m", "i", 5, 0, now + 24 * HOUR),
                broker(1, now + 10),
                &PriceTable::default()
            ),
            Applied::Counted {
                scopes: 1,
                skewed: true
            }
        );
        // Within the bound (4 minutes ahead, across the hour): believed, in its own window.
        let near_end = T0 + HOUR - 60_000;
        assert_eq!(
            state.apply(
                &event("team-a", "m", "i", 7, 0, near_end + 4 * 60_000),
                broker(2, near_end),
                &PriceTable::default()
            ),
            Applied::Counted {
                scopes: 1,
                skewed: false
            }
        );
        let snapshots = state.take_changed(now);
        assert_eq!(
            snapshots
                .iter()
                .map(|s| (s.window_start_ms, s.used))
                .collect::<Vec<_>>(),
            [(T0, 15), (T0 + HOUR, 7)],
            "the current window keeps its own snapshot beside the one ahead"
        );
        assert!(state.window(&key, T0 + 24 * HOUR).is_none());
        // An event far behind its broker time (a spool drained late) is not skewed: it keeps its time.
        assert_eq!(counted_time(T0, Some(T0 + 3 * HOUR), 300_000), (T0, false));
        assert_eq!(counted_time(T0 + HOUR, Some(T0), 300_000), (T0, true));
        assert_eq!(
            counted_time(T0 + 300_000, Some(T0), 300_000),
            (T0 + 300_000, false)
        );
        assert_eq!(counted_time(T0 + HOUR, None, 300_000), (T0 + HOUR, false));
    }

    /// After a rebuild, the two windows before the kept ones (by the clock) are tombstoned, unless the state keeps
    /// them (an idle scope's last windows).
    #[test]
    fn stale_keys_are_the_two_windows_before_the_kept_ones_unless_kept() {
        let team_a = scope(Some("team-a"), None, &[], LimitStrategy::TotalTokens);
        let key = team_a.key.clone();
        let mut state = QuotaState::new(vec![team_a], 100);
        let now = T0 + 5 * HOUR + 10;
        assert_eq!(
            state.stale_keys(now),
            [
                snapshot_key(&key, T0 + 3 * HOUR),
                snapshot_key(&key, T0 + 2 * HOUR)
            ]
        );
        state.apply(
            &event("team-a", "m", "i", 1, 0, T0 + 2 * HOUR + 5),
            at(0, 0),
            &PriceTable::default(),
        );
        assert_eq!(state.stale_keys(now), [snapshot_key(&key, T0 + 3 * HOUR)]);
    }

    /// The snapshot key names the scope and the window, so the compacted topic holds one per (scope, window).
    #[test]
    fn snapshot_keys_name_the_scope_and_the_window() {
        assert_eq!(
            snapshot_key("consumer=team-a;window=3600s;strategy=total_tokens", T0),
            "consumer=team-a;window=3600s;strategy=total_tokens@1795132800000"
        );
    }

    /// The dedup window is capped whatever is asked (each id costs about DEDUP_BYTES_PER_ID bytes).
    #[test]
    fn the_dedup_window_is_capped() {
        assert_eq!(RecentIds::new(usize::MAX).capacity, MAX_DEDUP_CAPACITY);
        assert_eq!(RecentIds::new(5).capacity, 5);
        assert_eq!((MAX_DEDUP_CAPACITY * DEDUP_BYTES_PER_ID) >> 20, 495);
    }

    #[test]
    fn a_duplicate_id_counts_once_but_moves_the_watermark() {
        let team_a = scope(Some("team-a"), None, &[], LimitStrategy::TotalTokens);
        let mut state = QuotaState::new(vec![team_a], 100);
        let once = event("team-a", "m", "i", 10, 5, T0);
        assert_eq!(
            state.apply(&once, at(0, 3), &PriceTable::default()),
            Applied::Counted {
                scopes: 1,
                skewed: false
            }
        );
        state.take_changed(1);
        assert_eq!(
            state.apply(&once, at(0, 9), &PriceTable::default()),
            Applied::Duplicate
        );
        let snapshot = state.take_changed(2).remove(0);
        assert_eq!((snapshot.used, snapshot.events), (15, 1));
        assert_eq!(snapshot.watermarks[0].offset, 9);
    }

    #[test]
    fn deduplication_remembers_only_the_most_recent_ids() {
        let team_a = scope(Some("team-a"), None, &[], LimitStrategy::TotalTokens);
        let key = team_a.key.clone();
        let mut state = QuotaState::new(vec![team_a], 2);
        let events: Vec<_> = (0..3).map(|i| event("team-a", "m", "i", 1, 0, T0 + i)).collect();
        for (i, e) in events.iter().enumerate() {
            state.apply(e, at(0, i as i64), &PriceTable::default());
        }
        assert_eq!(
            state.apply(&events[2], at(0, 10), &PriceTable::default()),
            Applied::Duplicate
        );
        assert_eq!(
            state.apply(&events[1], at(0, 11), &PriceTable::default()),
            Applied::Duplicate
        );
        assert_eq!(
            state.apply(&events[0], at(0, 12), &PriceTable::default()),
            Applied::Counted {
                scopes: 1,
                skewed: false
            },
            "forgotten"
        );
        assert_eq!(state.window(&key, T0).unwrap().events, 4);

        let mut off = QuotaState::new(
            vec![scope(Some("team-a"), None, &[], LimitStrategy::TotalTokens)],
            0,
        );
        assert_eq!(
            off.apply(&events[0], at(0, 0), &PriceTable::default()),
            Applied::Counted {
                scopes: 1,
                skewed: false
            }
        );
        assert_eq!(
            off.apply(&events[0], at(0, 1), &PriceTable::default()),
            Applied::Counted {
                scopes: 1,
                skewed: false
            }
        );
    }

    #[test]
    fn watermarks_are_the_highest_offset_per_gateway_and_partition() {
        let everything = scope(None, None, &[], LimitStrategy::TotalTokens);
        let mut state = QuotaState::new(vec![everything], 100);
        let mut from_gw2 = event("team-b", "m", "i", 1, 0, T0);
        from_gw2.source = "tollgate-gateway/gw-2".into();
        state.apply(
            &event("team-a", "m", "i", 1, 0, T0),
            at(0, 7),
            &PriceTable::default(),
        );
        state.apply(
            &event("team-a", "m", "i", 1, 0, T0),
            at(0, 4),
            &PriceTable::default(),
        );
        state.apply(
            &event("team-a", "m", "i", 1, 0, T0),
            at(1, 2),
            &PriceTable::default(),
        );
        state.apply(&from_gw2, at(0, 5), &PriceTable::default());
        let snapshot = state.take_changed(1).remove(0);
        let marks: Vec<_> = snapshot
            .watermarks
            .iter()
            .map(|w| (w.gateway.as_str(), w.partition, w.offset))
            .collect();
        assert_eq!(
            marks,
            [
                ("tollgate-gateway/gw-1", 0, 7),
                ("tollgate-gateway/gw-1", 1, 2),
                ("tollgate-gateway/gw-2", 0, 5)
            ]
        );
        assert_eq!(snapshot.newest_event_ms, T0 + 5 * HOUR + 7);
        assert!(snapshot.covers("tollgate-gateway/gw-1", 0, 6));
        assert!(!snapshot.covers("tollgate-gateway/gw-2", 0, 6));
    }

    #[test]
    fn without_a_kafka_timestamp_the_event_time_is_the_newest_event() {
        let mut state = QuotaState::new(vec![scope(None, None, &[], LimitStrategy::TotalTokens)], 100);
        let position = Position {
            partition: 0,
            offset: 0,
            timestamp_ms: None,
            not_after_ms: None,
        };
        state.apply(
            &event("team-a", "m", "i", 1, 0, T0 + 42),
            position,
            &PriceTable::default(),
        );
        assert_eq!(state.take_changed(1)[0].newest_event_ms, T0 + 42);
    }

    #[test]
    fn all_snapshots_covers_every_scope_with_usage_and_clears_marks() {
        let a = scope(Some("team-a"), None, &[], LimitStrategy::TotalTokens);
        let b = scope(Some("team-b"), None, &[], LimitStrategy::TotalTokens);
        let c = scope(Some("team-c"), None, &[], LimitStrategy::TotalTokens);
        let keys_a = a.key.clone();
        let mut state = QuotaState::new(vec![a, b, c.clone()], 100);
        state.apply(
            &event("team-a", "m", "i", 1, 0, T0),
            at(0, 0),
            &PriceTable::default(),
        );
        state.apply(
            &event("team-b", "m", "i", 2, 0, T0 + 3 * HOUR),
            at(0, 1),
            &PriceTable::default(),
        );
        let all = state.all_snapshots(9);
        assert_eq!(all.len(), 2);
        assert!(all.iter().all(|s| s.published_at_ms == 9));
        assert!(!state.has_changed());
        state.mark_changed(&c.key, T0);
        assert!(
            !state.has_changed(),
            "a window that does not exist cannot be marked"
        );
        state.mark_changed(&keys_a, T0);
        assert!(state.has_changed());
        assert_eq!(
            state.take_changed(10).len(),
            1,
            "the marked window is published again"
        );
        assert_eq!(state.scope_count(), 3);
    }

    #[test]
    fn a_new_policy_keeps_the_windows_of_kept_scopes_and_shows_new_limits() {
        let a = scope(Some("team-a"), None, &[], LimitStrategy::TotalTokens);
        let b = scope(Some("team-b"), None, &[], LimitStrategy::TotalTokens);
        let c = scope(Some("team-c"), None, &[], LimitStrategy::TotalTokens);
        let mut state = QuotaState::new(vec![a.clone(), b.clone()], 100);
        let counted = event("team-a", "m", "i", 10, 5, T0);
        state.apply(&counted, at(0, 0), &PriceTable::default());
        state.apply(
            &event("team-b", "m", "i", 1, 0, T0),
            at(0, 1),
            &PriceTable::default(),
        );
        state.take_changed(1);

        // The same policy: nothing changes, nothing to publish.
        assert!(state.update_policy(vec![a.clone(), b.clone()]).is_empty());
        assert!(!state.has_changed());

        // team-a's limit changes, team-b goes, team-c comes.
        let diff = state.update_policy(vec![c.clone(), limited(a.clone(), 5000), c.clone()]);
        assert_eq!(
            diff,
            PolicyDiff {
                added: vec![c.key.clone()],
                removed: vec![b.key.clone()],
                relimited: vec![a.key.clone()],
            }
        );
        assert_eq!(state.scope_count(), 2);
        let keys: Vec<_> = state.scopes().map(|s| s.key.as_str()).collect();
        assert_eq!(keys, [c.key.as_str(), a.key.as_str()]);
        assert!(state.window(&b.key, T0).is_none(), "a removed scope is forgotten");
        assert!(state.window(&c.key, T0).is_none(), "a new scope starts empty");
        let snapshots = state.take_changed(2);
        assert_eq!(
            snapshots.len(),
            1,
            "only the relimited scope has something new: {snapshots:?}"
        );
        assert_eq!(
            (snapshots[0].scope.as_str(), snapshots[0].limit, snapshots[0].used),
            (a.key.as_str(), 5000, 15),
            "the kept windows with the new limit"
        );

        // The removed scope is never published again, and the recent ids are still known.
        state.apply(
            &event("team-b", "m", "i", 1, 0, T0 + 1),
            at(0, 2),
            &PriceTable::default(),
        );
        assert!(!state.has_changed());
        assert_eq!(
            state.apply(&counted, at(0, 3), &PriceTable::default()),
            Applied::Duplicate
        );
        state.apply(
            &event("team-c", "m", "i", 2, 0, T0 + 2),
            at(0, 4),
            &PriceTable::default(),
        );
        let snapshots = state.take_changed(3);
        assert_eq!(
            snapshots
                .iter()
                .map(|s| (s.scope.as_str(), s.used))
                .collect::<Vec<_>>(),
            [(c.key.as_str(), 2), (a.key.as_str(), 15)]
        );
        // Marking a removed scope does nothing.
        state.mark_changed(&b.key, T0);
        assert!(!state.has_changed());
    }

    /// A budget of `amount` USD per month on `team`.
    fn budget(team: &str, amount: &str) -> ConfiguredScope {
        let config: tollgate_schemas::budget::BudgetConfig = serde_json::from_value(serde_json::json!({
            "amount": amount, "currency": "USD", "period": "month"
        }))
        .unwrap();
        let budget = config
            .validate(tollgate_schemas::budget::BudgetHolder::Team(team))
            .unwrap();
        ConfiguredScope {
            key: budget.scope.key(),
            scope: budget.scope,
            limit: budget.limit_micros,
        }
    }

    #[test]
    fn a_budget_counts_each_events_cost_at_the_model_that_served_in_its_own_currency_only() {
        let prices = PriceTable::from_toml(
            r#"
            [[prices]]
            model = "dear"
            effective_from = "2020-01-01"
            currency = "USD"
            input_per_mtok = "10"
            output_per_mtok = "30"
            [[prices]]
            model = "euro"
            effective_from = "2020-01-01"
            currency = "EUR"
            input_per_mtok = "10"
            output_per_mtok = "30"
            "#,
        )
        .unwrap();
        let research = budget("research", "1.00");
        let key = research.key.clone();
        let mut state = QuotaState::new(vec![research], 100);
        let member = |served: &str, offset: i64| {
            let mut e = event("alice", "gpt-4o", "i", 1000, 1000, T0 + 1);
            e.data.team = Some("research".into());
            e.data.organization = Some("acme".into());
            e.data.model_served = served.into();
            e.id = uuid::Uuid::now_v7();
            (e, at(0, offset))
        };
        // 1,000 input and 1,000 output tokens of `dear`: 0.01 + 0.03 USD.
        for (e, at) in [
            member("dear", 0),
            member("dear", 1),
            member("euro", 2),
            member("unpriced", 3),
        ] {
            state.apply(&e, at, &prices);
        }
        let outsider = event("bob", "gpt-4o", "i", 1000, 1000, T0 + 1);
        state.apply(&outsider, at(0, 4), &prices);
        let snapshots = by_scope(state.take_changed(T0 + 2));
        let snapshot = &snapshots[&key];
        assert_eq!(
            (snapshot.used, snapshot.events, snapshot.limit),
            (80_000, 4, 1_000_000)
        );
        assert_eq!(snapshot.currency.as_deref(), Some("USD"));
        assert_eq!(snapshot.strategy, LimitStrategy::Spend);
        let month = snapshot.window();
        assert_eq!(month.start_ms, 1_793_491_200_000, "2026-11-01T00:00:00Z");
        assert_eq!(month.end_ms, 1_796_083_200_000, "2026-12-01T00:00:00Z");
    }
}
