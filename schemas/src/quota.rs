//! `tollgate.quota.v1`: token quotas, as both sides of the quota loop must understand them.
//!
//! A quota **scope** says which usage events count against a limit (one consumer or all; some models or all; one
//! instance or all), over which fixed window (aligned to the Unix epoch: an hourly window starts on the hour) and
//! which tokens count ([`LimitStrategy`]). The gateway and billing-consumer both build their scopes from the same
//! configuration through [`QuotaScope::from_limit`], so the scope's [`key`](QuotaScope::key) is the same string
//! on both sides.
//!
//! billing-consumer sums events into windows by event time and publishes a [`QuotaSnapshot`] per changed (scope,
//! window) on the compacted [`crate::topics::QUOTA_V1`] topic (Kafka key `<scope key>@<window_start_ms>`, so each
//! window of a scope is its own entry; a dropped window is tombstoned), plus a [`QuotaHeartbeat`] every second so
//! that gateways can tell a quiet loop from a stalled one. Gateways hold snapshots per (scope, window) and ignore one whose
//! watermarks go back from the one they hold for its window. A snapshot's [`Watermark`]s say, per gateway and partition, the offset of
//! the newest event of that gateway it includes: a gateway's own event at a lower or equal offset in that
//! partition is counted in `used`, any later one is not yet.

use std::time::Duration;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::envelope::{CloudEvent, EventData};
use crate::usage::UsageRecorded;

/// A snapshot in its envelope, as it travels on [`crate::topics::QUOTA_V1`] (key: the scope's key).
pub type QuotaSnapshotEvent = CloudEvent<QuotaSnapshot>;

/// A heartbeat in its envelope, on the same topic (key: [`HEARTBEAT_KEY`]).
pub type QuotaHeartbeatEvent = CloudEvent<QuotaHeartbeat>;

/// The Kafka key of heartbeats on the quota topic.
pub const HEARTBEAT_KEY: &str = "heartbeat";

/// Which tokens of a request count against a limit (APISIX's `limit_strategy`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize, JsonSchema)]
#[serde(rename_all = "snake_case")]
pub enum LimitStrategy {
    /// Prompt plus completion tokens.
    #[default]
    TotalTokens,
    /// Prompt (input) tokens only.
    PromptTokens,
    /// Completion (output) tokens only.
    CompletionTokens,
    /// Money: micro-units of the scope's currency, each event priced at the model that served it (a spend
    /// budget, [`crate::budget`]).
    Spend,
}

/// What one request consumed, in every unit a scope can count.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Amounts {
    pub prompt: u64,
    pub completion: u64,
    /// Its cost in micro-units of `currency`; 0 when it has no price.
    pub cost_micros: u64,
}

impl LimitStrategy {
    /// The tokens of a request with `prompt` and `completion` tokens that count under this strategy (none for
    /// [`LimitStrategy::Spend`], which counts money).
    pub fn tokens(self, prompt: u64, completion: u64) -> u64 {
        match self {
            Self::TotalTokens => prompt.saturating_add(completion),
            Self::PromptTokens => prompt,
            Self::CompletionTokens => completion,
            Self::Spend => 0,
        }
    }

    /// What of `amounts` counts under this strategy: tokens, or micro-units of money.
    pub fn amount(self, amounts: &Amounts) -> u64 {
        match self {
            Self::Spend => amounts.cost_micros,
            tokens => tokens.tokens(amounts.prompt, amounts.completion),
        }
    }

    /// The tokens of a usage event that count under this strategy (none for [`LimitStrategy::Spend`]).
    pub fn event_tokens(self, event: &UsageRecorded) -> u64 {
        self.tokens(u64::from(event.prompt_tokens), u64::from(event.completion_tokens))
    }

    /// The snake_case name, as serialized.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::TotalTokens => "total_tokens",
            Self::PromptTokens => "prompt_tokens",
            Self::CompletionTokens => "completion_tokens",
            Self::Spend => "spend",
        }
    }
}

/// A token limit as written in the gateway's TOML (`[[consumers.token_limits]]`, `[[token_limits]]`,
/// `[instances.token_limit]`), named after APISIX's `ai-rate-limiting`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenLimitConfig {
    /// The limit's name in the admin API (`/admin/v1/limits/{id}`); for `[[token_limits]]` only. When absent,
    /// the scope's key names it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// The requested model names the limit covers (list a model's aliases together); every model when absent.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub models: Vec<String>,
    /// Only usage served by this instance counts (a consumer's share of one instance).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub instance: Option<String>,
    /// Tokens per window.
    pub limit: u64,
    /// Window length, e.g. "1m", "1h", "24h"; windows are aligned to the Unix epoch.
    pub time_window: String,
    #[serde(default)]
    pub limit_strategy: LimitStrategy,
    /// Status of a rejection (default 429).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_code: Option<u16>,
    /// Message of a rejection.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_msg: Option<String>,
    /// OpenAI error `type` of a rejection: `rate_limit_exceeded` (default) or `insufficient_quota`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub rejected_type: Option<String>,
}

/// Which usage counts against one limit, and over which window.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct QuotaScope {
    /// Only this consumer's usage; everyone's when `None`.
    pub consumer: Option<String>,
    /// Only the usage of consumers of this team, or of the teams under it (an event's `team` or
    /// `organization`, stamped when the request was made); everyone's when `None`.
    pub team: Option<String>,
    /// Only these requested models (sorted); every model when empty.
    pub models: Vec<String>,
    /// Only usage served by this instance; any instance when `None`.
    pub instance: Option<String>,
    /// The windows usage is counted in.
    pub period: Period,
    pub strategy: LimitStrategy,
    /// For [`LimitStrategy::Spend`], the currency counted (ISO 4217): events priced in another count nothing.
    pub currency: Option<String>,
}

/// Who made a request, as a scope matches it: the consumer and, when it has one, its team and organisation.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Requester<'a> {
    pub consumer: &'a str,
    pub team: Option<&'a str>,
    pub organization: Option<&'a str>,
}

impl<'a> Requester<'a> {
    /// A consumer without a team.
    pub fn consumer(consumer: &'a str) -> Self {
        Self {
            consumer,
            team: None,
            organization: None,
        }
    }

    /// Who made the request of a usage event, as stamped in it.
    pub fn of_event(event: &'a UsageRecorded) -> Self {
        Self {
            consumer: &event.consumer_id,
            team: event.team.as_deref(),
            organization: event.organization.as_deref(),
        }
    }
}

/// The windows of a scope, all in UTC.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Period {
    /// Fixed-length windows starting at multiples of the length since the Unix epoch (a day: midnight UTC).
    Every { ms: u64 },
    /// Calendar weeks, Monday 00:00 UTC to the next Monday.
    Week,
    /// Calendar months, the 1st 00:00 UTC to the next 1st.
    Month,
    /// One window, `[start_ms, end_ms)`; usage outside it counts in no window.
    Fixed { start_ms: u64, end_ms: u64 },
}

const DAY_MS: u64 = 86_400_000;
const WEEK_MS: u64 = 7 * DAY_MS;
/// 1970-01-05, the first Monday after the epoch (a Thursday).
const FIRST_MONDAY_MS: u64 = 4 * DAY_MS;

impl Period {
    /// The window containing `at_ms` (for [`Period::Fixed`], its one window whatever `at_ms`).
    pub fn window_at(&self, at_ms: u64) -> Window {
        match *self {
            Self::Every { ms } => Window::containing(at_ms, ms),
            Self::Week => {
                let since = at_ms.saturating_sub(FIRST_MONDAY_MS);
                let start_ms = FIRST_MONDAY_MS + since - since % WEEK_MS;
                Window {
                    start_ms,
                    end_ms: start_ms.saturating_add(WEEK_MS),
                }
            }
            Self::Month => month_containing(at_ms),
            Self::Fixed { start_ms, end_ms } => Window { start_ms, end_ms },
        }
    }

    /// Whether usage at `at_ms` counts in some window: always, but for a fixed window outside it.
    pub fn applies_at(&self, at_ms: u64) -> bool {
        match *self {
            Self::Fixed { start_ms, end_ms } => (start_ms..end_ms).contains(&at_ms),
            _ => true,
        }
    }

    /// The start of the window before the one starting at `start_ms`; `None` when there is none (a fixed
    /// window, or the epoch).
    pub fn previous_start(&self, start_ms: u64) -> Option<u64> {
        match self {
            Self::Fixed { .. } => None,
            _ => start_ms
                .checked_sub(1)
                .map(|before| self.window_at(before).start_ms),
        }
    }

    /// The longest a window lasts: how far back a rebuild must read to recount the current one.
    pub fn longest_ms(&self) -> u64 {
        match *self {
            Self::Every { ms } => ms,
            Self::Week => WEEK_MS,
            Self::Month => 31 * DAY_MS,
            Self::Fixed { start_ms, end_ms } => end_ms.saturating_sub(start_ms),
        }
    }

    /// The period in a scope key: `3600s`, `week`, `month`, `1764547200000-1767225600000`.
    pub fn label(&self) -> String {
        match self {
            Self::Every { ms } => format!("{}s", ms / 1000),
            Self::Week => "week".to_owned(),
            Self::Month => "month".to_owned(),
            Self::Fixed { start_ms, end_ms } => format!("{start_ms}-{end_ms}"),
        }
    }

    /// The period as people say it: `per day`, `per month`, `until 2027-01-01T00:00:00Z`.
    pub fn describe(&self) -> String {
        match *self {
            Self::Every { ms } if ms == DAY_MS => "per day".to_owned(),
            Self::Every { ms } => format!("per {}", humantime::format_duration(Duration::from_millis(ms))),
            Self::Week => "per week".to_owned(),
            Self::Month => "per month".to_owned(),
            Self::Fixed { end_ms, .. } => format!("until {}", rfc3339(end_ms)),
        }
    }
}

/// `at_ms` as an RFC 3339 time in UTC (the number itself when out of range).
pub fn rfc3339(at_ms: u64) -> String {
    i64::try_from(at_ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .map_or_else(
            || at_ms.to_string(),
            |t| t.to_rfc3339_opts(chrono::SecondsFormat::AutoSi, true),
        )
}

/// The calendar month (UTC) containing `at_ms`.
fn month_containing(at_ms: u64) -> Window {
    use chrono::{Datelike, NaiveDate};
    let first_of = |year: i32, month: u32| {
        NaiveDate::from_ymd_opt(year, month, 1)
            .and_then(|d| d.and_hms_opt(0, 0, 0))
            .map(|t| u64::try_from(t.and_utc().timestamp_millis()).unwrap_or(0))
    };
    let at = i64::try_from(at_ms)
        .ok()
        .and_then(chrono::DateTime::from_timestamp_millis)
        .unwrap_or_default();
    let (year, month) = (at.year(), at.month());
    let next = if month == 12 {
        (year + 1, 1)
    } else {
        (year, month + 1)
    };
    match (first_of(year, month), first_of(next.0, next.1)) {
        (Some(start_ms), Some(end_ms)) => Window { start_ms, end_ms },
        _ => Window::containing(at_ms, 31 * DAY_MS),
    }
}

/// The longest window of a token or request limit: a year and a day. Longer windows are budgets that never
/// reset (and their arithmetic on epoch milliseconds would overflow); bounded so one admin change cannot
/// poison every replica.
pub const MAX_WINDOW: Duration = Duration::from_secs(366 * 86_400);

impl QuotaScope {
    /// The scope of `limit`, configured on `consumer` (or globally) and, for an instance's own limit, on
    /// `instance`. Errors name the field (relative to the limit) and the problem.
    pub fn from_limit(
        consumer: Option<&str>,
        instance: Option<&str>,
        limit: &TokenLimitConfig,
    ) -> Result<Self, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        let window = match humantime::parse_duration(&limit.time_window) {
            Ok(d) if d > MAX_WINDOW => {
                problems.push(("time_window", "must be at most 366d".to_owned()));
                Duration::from_secs(1)
            }
            Ok(d) if d >= Duration::from_secs(1) && d.subsec_millis() == 0 => d,
            Ok(_) => {
                problems.push(("time_window", "must be whole seconds, at least 1s".to_owned()));
                Duration::from_secs(1)
            }
            Err(e) => {
                problems.push((
                    "time_window",
                    format!("`{}` is not a duration like \"1h\": {e}", limit.time_window),
                ));
                Duration::from_secs(1)
            }
        };
        if limit.limit == 0 {
            problems.push(("limit", "must be at least 1".to_owned()));
        }
        if instance.is_some() && limit.instance.is_some() {
            problems.push((
                "instance",
                "is implied by the instance the limit is set on".to_owned(),
            ));
        }
        if limit.models.iter().any(String::is_empty) {
            problems.push(("models", "model names must not be empty".to_owned()));
        }
        if let Some(code) = limit.rejected_code.filter(|c| !(400..=599).contains(c)) {
            problems.push(("rejected_code", format!("{code} is not an error status")));
        }
        if let Some(kind) = limit
            .rejected_type
            .as_deref()
            .filter(|t| !matches!(*t, "rate_limit_exceeded" | "insufficient_quota"))
        {
            problems.push((
                "rejected_type",
                format!("`{kind}` is not rate_limit_exceeded or insufficient_quota"),
            ));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let mut models = limit.models.clone();
        models.sort();
        models.dedup();
        if limit.limit_strategy == LimitStrategy::Spend {
            return Err(vec![(
                "limit_strategy",
                "`spend` is for budgets ([[consumers.budgets]], [[teams.budgets]]), not token limits"
                    .to_owned(),
            )]);
        }
        Ok(Self {
            consumer: consumer.map(str::to_owned),
            team: None,
            models,
            instance: instance.or(limit.instance.as_deref()).map(str::to_owned),
            period: Period::Every {
                ms: u64::try_from(window.as_millis()).unwrap_or(u64::MAX),
            },
            strategy: limit.limit_strategy,
            currency: None,
        })
    }

    /// The scope's identity (its snapshots' Kafka keys are this, `@` and the window start), e.g.
    /// `consumer=team-a;models=gpt-4o-mini;window=3600s;strategy=total_tokens`.
    pub fn key(&self) -> String {
        let mut key = String::new();
        if let Some(consumer) = &self.consumer {
            key.push_str("consumer=");
            key.push_str(consumer);
            key.push(';');
        }
        if let Some(team) = &self.team {
            key.push_str("team=");
            key.push_str(team);
            key.push(';');
        }
        if !self.models.is_empty() {
            key.push_str("models=");
            key.push_str(&self.models.join(","));
            key.push(';');
        }
        if let Some(instance) = &self.instance {
            key.push_str("instance=");
            key.push_str(instance);
            key.push(';');
        }
        key.push_str(&format!(
            "window={};strategy={}",
            self.period.label(),
            self.strategy.as_str()
        ));
        if let Some(currency) = &self.currency {
            key.push_str(";currency=");
            key.push_str(currency);
        }
        key
    }

    /// Whether a request by `who` for `model`, served by `instance`, counts against this scope.
    pub fn matches(&self, who: &Requester<'_>, model: &str, instance: &str) -> bool {
        self.consumer.as_deref().is_none_or(|c| c == who.consumer)
            && self
                .team
                .as_deref()
                .is_none_or(|t| who.team == Some(t) || who.organization == Some(t))
            && (self.models.is_empty() || self.models.iter().any(|m| m == model))
            && self.instance.as_deref().is_none_or(|i| i == instance)
    }

    /// Whether a usage event counts against this scope (its time aside: see [`Period::applies_at`]).
    pub fn matches_event(&self, event: &UsageRecorded) -> bool {
        self.matches(
            &Requester::of_event(event),
            &event.model_requested,
            &event.instance,
        )
    }

    /// The window containing `at_ms`.
    pub fn window_at(&self, at_ms: u64) -> Window {
        self.period.window_at(at_ms)
    }
}

/// One fixed window: `[start_ms, end_ms)`, aligned to multiples of its length since the Unix epoch.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Window {
    pub start_ms: u64,
    pub end_ms: u64,
}

impl Window {
    /// The window of length `length_ms` containing `at_ms`.
    pub fn containing(at_ms: u64, length_ms: u64) -> Self {
        let length = length_ms.max(1);
        let start_ms = at_ms - at_ms % length;
        Self {
            start_ms,
            end_ms: start_ms.saturating_add(length),
        }
    }

    /// Time from `now_ms` to the window's end (zero once it ended).
    pub fn remaining(&self, now_ms: u64) -> Duration {
        Duration::from_millis(self.end_ms.saturating_sub(now_ms))
    }
}

/// Usage of one scope in one window, as billing-consumer computed it from the usage topic.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct QuotaSnapshot {
    /// The scope's key ([`QuotaScope::key`]); the Kafka key is this key, `@` and `window_start_ms`.
    pub scope: String,
    /// Tokens allowed per window (micro-units of the currency for [`LimitStrategy::Spend`]).
    pub limit: u64,
    /// Which tokens count, or money.
    pub strategy: LimitStrategy,
    /// For a budget ([`LimitStrategy::Spend`]), the currency `limit` and `used` are micro-units of.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub currency: Option<String>,
    /// Start of the window, Unix epoch milliseconds (inclusive).
    pub window_start_ms: u64,
    /// End of the window, Unix epoch milliseconds (exclusive).
    pub window_end_ms: u64,
    /// Tokens counted in the window so far (micro-units for [`LimitStrategy::Spend`]).
    pub used: u64,
    /// Usage events counted in the window so far.
    pub events: u64,
    /// Per gateway and partition, the newest event of that gateway counted here.
    pub watermarks: Vec<Watermark>,
    /// When the newest counted event was produced (its Kafka timestamp), Unix epoch milliseconds.
    pub newest_event_ms: u64,
    /// When billing-consumer published this snapshot, Unix epoch milliseconds.
    pub published_at_ms: u64,
}

impl EventData for QuotaSnapshot {
    const TYPE: &'static str = "tollgate.quota.v1";
}

impl QuotaSnapshot {
    /// The window this snapshot counts.
    pub fn window(&self) -> Window {
        Window {
            start_ms: self.window_start_ms,
            end_ms: self.window_end_ms,
        }
    }

    /// Whether `gateway`'s event at `offset` in `partition` is counted in `used`.
    pub fn covers(&self, gateway: &str, partition: i32, offset: i64) -> bool {
        self.watermarks
            .iter()
            .any(|w| w.partition == partition && w.gateway == gateway && w.offset >= offset)
    }
}

/// The newest event of one gateway in one partition of the usage topic that a snapshot counts.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct Watermark {
    /// The event's CloudEvents `source`: the gateway replica that produced it.
    pub gateway: String,
    pub partition: i32,
    pub offset: i64,
}

/// billing-consumer's sign of life on the quota topic, published every second even when no usage arrives.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct QuotaHeartbeat {
    /// When it was published, Unix epoch milliseconds.
    pub published_at_ms: u64,
    /// Scopes billing-consumer is computing.
    pub scopes: u32,
    /// True while it rebuilds its windows from the usage topic after a start (snapshots are held back until done).
    pub rebuilding: bool,
}

impl EventData for QuotaHeartbeat {
    const TYPE: &'static str = "tollgate.quota.heartbeat.v1";
}

#[cfg(test)]
mod tests {
    use super::*;

    fn limit(toml_like: (&[&str], Option<&str>, u64, &str)) -> TokenLimitConfig {
        let (models, instance, limit, window) = toml_like;
        TokenLimitConfig {
            id: None,
            models: models.iter().map(|m| (*m).to_owned()).collect(),
            instance: instance.map(str::to_owned),
            limit,
            time_window: window.to_owned(),
            limit_strategy: LimitStrategy::TotalTokens,
            rejected_code: None,
            rejected_msg: None,
            rejected_type: None,
        }
    }

    #[test]
    fn windows_are_aligned_to_the_epoch() {
        let hour = 3_600_000;
        let w = Window::containing(7_200_000 + 59 * 60_000, hour);
        assert_eq!((w.start_ms, w.end_ms), (7_200_000, 10_800_000));
        assert_eq!(Window::containing(10_800_000, hour).start_ms, 10_800_000);
        assert_eq!(Window::containing(10_799_999, hour).start_ms, 7_200_000);
        assert_eq!(w.remaining(10_799_000), Duration::from_secs(1));
        assert_eq!(w.remaining(20_000_000), Duration::ZERO);
    }

    #[test]
    fn strategies_count_the_tokens_they_name() {
        assert_eq!(LimitStrategy::TotalTokens.tokens(10, 5), 15);
        assert_eq!(LimitStrategy::PromptTokens.tokens(10, 5), 10);
        assert_eq!(LimitStrategy::CompletionTokens.tokens(10, 5), 5);
        assert_eq!(LimitStrategy::TotalTokens.tokens(u64::MAX, 5), u64::MAX);
    }

    #[test]
    fn keys_are_canonical_whatever_the_order_of_models() {
        let a = QuotaScope::from_limit(
            Some("team-a"),
            None,
            &limit((&["mini", "gpt-4o-mini"], None, 10, "1h")),
        )
        .unwrap();
        let b = QuotaScope::from_limit(
            Some("team-a"),
            None,
            &limit((&["gpt-4o-mini", "mini"], None, 99, "60m")),
        )
        .unwrap();
        assert_eq!(a.key(), b.key());
        assert_eq!(
            a.key(),
            "consumer=team-a;models=gpt-4o-mini,mini;window=3600s;strategy=total_tokens"
        );
        let global = QuotaScope::from_limit(None, None, &limit((&[], None, 10, "1m"))).unwrap();
        assert_eq!(global.key(), "window=60s;strategy=total_tokens");
        let instance = QuotaScope::from_limit(None, Some("openai-1"), &limit((&[], None, 10, "1m"))).unwrap();
        assert_eq!(
            instance.key(),
            "instance=openai-1;window=60s;strategy=total_tokens"
        );
    }

    #[test]
    fn a_scope_matches_only_its_consumer_models_and_instance() {
        let scope = QuotaScope::from_limit(
            Some("team-a"),
            None,
            &limit((&["gpt-4o-mini"], Some("vllm"), 10, "1h")),
        )
        .unwrap();
        let who = Requester::consumer;
        assert!(scope.matches(&who("team-a"), "gpt-4o-mini", "vllm"));
        assert!(!scope.matches(&who("team-b"), "gpt-4o-mini", "vllm"));
        assert!(!scope.matches(&who("team-a"), "gpt-4o", "vllm"));
        assert!(!scope.matches(&who("team-a"), "gpt-4o-mini", "openai"));
        let everything = QuotaScope::from_limit(None, None, &limit((&[], None, 10, "1h"))).unwrap();
        assert!(everything.matches(&who("anyone"), "any-model", "any-instance"));
    }

    #[test]
    fn every_problem_of_a_limit_is_reported() {
        let mut bad = limit((&[""], Some("x"), 0, "soon"));
        bad.rejected_code = Some(200);
        bad.rejected_type = Some("teapot".into());
        let problems = QuotaScope::from_limit(None, Some("y"), &bad).unwrap_err();
        let fields: Vec<_> = problems.iter().map(|(f, _)| *f).collect();
        assert_eq!(
            fields,
            [
                "time_window",
                "limit",
                "instance",
                "models",
                "rejected_code",
                "rejected_type"
            ]
        );
        let sub_second = QuotaScope::from_limit(None, None, &limit((&[], None, 1, "1500ms"))).unwrap_err();
        assert_eq!(sub_second[0].0, "time_window");
    }

    #[test]
    fn a_snapshot_covers_events_up_to_its_watermark_of_that_gateway_and_partition() {
        let snapshot = QuotaSnapshot {
            scope: "window=60s;strategy=total_tokens".into(),
            limit: 100,
            strategy: LimitStrategy::TotalTokens,
            currency: None,
            window_start_ms: 0,
            window_end_ms: 60_000,
            used: 10,
            events: 1,
            watermarks: vec![Watermark {
                gateway: "gw-1".into(),
                partition: 2,
                offset: 41,
            }],
            newest_event_ms: 1,
            published_at_ms: 2,
        };
        assert!(snapshot.covers("gw-1", 2, 41));
        assert!(snapshot.covers("gw-1", 2, 7));
        assert!(!snapshot.covers("gw-1", 2, 42));
        assert!(!snapshot.covers("gw-1", 1, 7));
        assert!(!snapshot.covers("gw-2", 2, 7));
    }
}
