//! Prices: the versioned price table (a TOML file, `--prices`; with `--config-topic` also the topic's `price`
//! resources, [`PriceTable::with_resources`]) and the cost of one event under it. Pure: the file's text goes in,
//! a [`PriceTable`] comes out, and [`PriceTable::charge`] turns an event's served model, time and tokens into an
//! amount. Ingest, rebuild and the audit all price through here, so they agree to the micro-unit.
//!
//! ```toml
//! [[prices]]
//! model = "gpt-4o-mini"          # the model that served (`model_served`), or its family (see below)
//! effective_from = "2026-01-01"  # a date (midnight UTC) or an RFC 3339 time; in force until the next version
//! currency = "USD"               # three capital letters (ISO 4217)
//! input_per_mtok = "0.15"        # per million uncached prompt tokens
//! cached_input_per_mtok = "0.075"  # per million cached prompt tokens; optional, defaults to input_per_mtok
//! output_per_mtok = "0.60"       # per million completion tokens that are not reasoning tokens
//! cache_write_5m_per_mtok = "0.15"  # per million prompt tokens written to the cache for 5 min; default input
//! cache_write_1h_per_mtok = "0.15"  # per million prompt tokens written to the cache for 1 h; default input
//! reasoning_per_mtok = "0.60"    # per million reasoning tokens, instead of the output price; default output
//! per_request = "0"              # a fee per request served by a provider, in currency units; default 0
//! ```
//!
//! The optional prices default to what those tokens cost before they had prices of their own (cache writes at
//! the input price, reasoning at the output price, no fee), so an entry with only the older fields prices every
//! event exactly as it did before, and replaying the topic reproduces every stored bill.
//!
//! An entry, its validation and the decimal arithmetic are [`tollgate_schemas::prices`]'s, shared with the
//! gateway's admin API so that both accept exactly the same price versions; this module reads the file into
//! those entries and prices events.
//!
//! **Money is integers.** Prices are decimal strings (or integers), never TOML floats, read exactly into
//! micro-units of the currency per million tokens (`"0.15"` → 150 000); more than six decimals is refused. An
//! event's cost, in micro-units, is
//!
//! ```text
//!   ( uncached × input + cached × cached_input + write_5m × cache_write_5m + write_1h × cache_write_1h
//!   + (completion − reasoning) × output + reasoning × reasoning ) / 1 000 000, rounded half up
//! + per_request, when a provider served the request
//! ```
//!
//! computed in `u128`, rounded once per event ([`cost_micros`]). Cached tokens and cache writes are part of the
//! prompt, reasoning tokens part of the completion; each part is clamped so that the parts never exceed their
//! whole, in this order ([`TokenUsage`]): `cached = min(cached_prompt_tokens, prompt)`, `write_5m =
//! min(cache_write_5m_tokens, prompt − cached)`, `write_1h = min(cache_write_1h_tokens, prompt − cached −
//! write_5m)`, `uncached = prompt − cached − write_5m − write_1h`; `reasoning = min(reasoning_tokens,
//! completion)`. A token is charged at exactly one price: reasoning tokens at the reasoning price *instead of*
//! the output price, never both. Absent counts are 0. The fee is charged once per priced event whose outcome is
//! `ok`, `client_cancelled` or `upstream_cut` ([`charges_request_fee`]); never for `upstream_error` or
//! `rejected_*`, and never for an unpriced event. Prices are capped at [`MAX_PRICE_UNITS`] per million tokens
//! and the fee at [`MAX_REQUEST_FEE_UNITS`], so no event's cost can overflow an `i64` (at most about
//! 8.6 × 10^15 micro-units: two token wholes of `u32::MAX` at the highest price, plus the fee). The cost grows
//! with every token count: more tokens of any type never make an event cheaper.
//!
//! **One model, one price.** An event is priced for the model that served it (`model_served`: the model the
//! upstream named in its answer, else the instance's model override, else the route's name), never for the one
//! the client asked for — after a failover to another model the bill prices the model that answered. The
//! versions looked at are those of `model_served` itself when the table has any; when it has none, those of its
//! **family**, the name without a trailing dated-snapshot suffix ([`model_family`]: `-YYYY-MM-DD`, `-YYYYMMDD`,
//! `@YYYYMMDD`, `@YYYY-MM-DD`, `-latest`), so `gpt-4o-mini-2024-07-18` is priced as `gpt-4o-mini` unless that
//! snapshot has prices of its own. There is no other fallback, and never to `model_requested`.
//!
//! **Versions.** Each entry is a version, identified as `model@effective_from` (`gpt-4o-mini@2026-01-01`). Of the
//! versions looked at, an event is priced by the latest whose `effective_from` is at or before the event's time
//! (`finished_at_ms`). An event with no version in force — a model unknown with its family, or a time before the
//! model's first version (the family is not consulted then) — is unpriced: cost 0, no currency, price version
//! `""`; ingest counts it in `billing_events_unpriced_total`, logs its served model once, and keeps the number of
//! distinct unpriced served models in `billing_unpriced_models`. An empty `price_version` is the flag: the
//! ledger's `unpriced` column (migration 0007) is `price_version = ''`, and
//! [`crate::reports::unpriced`] lists the unpriced served models of a time range.
//!
//! Validation reports every problem of the file at once, each with its path (`prices[2].input_per_mtok: …`).
//!
//! **Live prices.** [`LivePrices`] is the table ingest prices with, replaced whole when the config topic's
//! price versions change; each batch is priced by one table. The topic adds versions to the file's; it never
//! overrides one: a topic version in force from the same instant as a file version, at other prices, is left
//! out with an error (the file's stays).

use std::path::Path;
use std::sync::{Arc, PoisonError, RwLock};

use chrono::{DateTime, SecondsFormat};
pub use tollgate_schemas::prices::{
    MAX_PRICE_UNITS, MAX_REQUEST_FEE_UNITS, MICROS_PER_UNIT, PriceEntry, PriceListValidator, PriceVersion,
    format_micros, parse_micros,
};
pub use tollgate_schemas::pricing::{
    Charge, PriceTable, TokenUsage, charges_request_fee, cost_micros, model_family,
};

use crate::error::BillingError;

/// Reads and validates the price file at `path`.
pub fn load(path: &Path) -> Result<PriceTable, BillingError> {
    let shown = path.display().to_string();
    let text = std::fs::read_to_string(path).map_err(|e| BillingError::Prices {
        path: shown.clone(),
        problems: vec![format!("cannot be read: {e}")],
    })?;
    PriceTable::from_toml(&text).map_err(|problems| BillingError::Prices {
        path: shown,
        problems,
    })
}

/// Every version as an aligned table (id, currency, unit prices per million tokens of every token type, the
/// per-request fee, in force from), for `check-prices`.
pub fn describe(table: &PriceTable) -> String {
    use crate::reports::table::{Align, Table};
    let mut out = Table::new(&[
        ("price_version", Align::Left),
        ("in force from (UTC)", Align::Left),
        ("currency", Align::Left),
        ("input/Mtok", Align::Right),
        ("cached/Mtok", Align::Right),
        ("output/Mtok", Align::Right),
        ("write5m/Mtok", Align::Right),
        ("write1h/Mtok", Align::Right),
        ("reasoning/Mtok", Align::Right),
        ("per request", Align::Right),
    ]);
    let price = |micros: u64| format_micros(i64::try_from(micros).unwrap_or(i64::MAX));
    for version in table.versions() {
        let from = DateTime::from_timestamp_millis(version.effective_from_ms).map_or_else(
            || version.effective_from_ms.to_string(),
            |t| t.to_rfc3339_opts(SecondsFormat::AutoSi, true),
        );
        out.row(vec![
            version.id.clone(),
            from,
            version.currency.clone(),
            price(version.input_per_mtok),
            price(version.cached_input_per_mtok),
            price(version.output_per_mtok),
            price(version.cache_write_5m_per_mtok),
            price(version.cache_write_1h_per_mtok),
            price(version.reasoning_per_mtok),
            price(version.per_request_micros),
        ]);
    }
    out.render()
}

/// The price table ingest prices with: read whole for each batch, replaced whole when the configuration
/// changes ([`crate::config_topic`]), so a batch is priced by one table.
#[derive(Debug, Clone, Default)]
pub struct LivePrices(Arc<RwLock<Arc<PriceTable>>>);

impl LivePrices {
    /// Prices that start as `table`.
    pub fn new(table: Arc<PriceTable>) -> Self {
        Self(Arc::new(RwLock::new(table)))
    }

    /// The table in use now.
    pub fn current(&self) -> Arc<PriceTable> {
        Arc::clone(&self.0.read().unwrap_or_else(PoisonError::into_inner))
    }

    /// Replaces the table: events priced from now on use `table`.
    pub fn replace(&self, table: Arc<PriceTable>) {
        *self.0.write().unwrap_or_else(PoisonError::into_inner) = table;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tollgate_schemas::usage::Outcome;

    const PRICES: &str = r#"
        [[prices]]
        model = "gpt-4o-mini"
        effective_from = "2026-01-01"
        currency = "USD"
        input_per_mtok = "0.15"
        cached_input_per_mtok = "0.075"
        output_per_mtok = "0.60"

        [[prices]]
        model = "gpt-4o-mini"
        effective_from = "2026-11-15T12:00:00+01:00"
        currency = "USD"
        input_per_mtok = "0.10"
        cached_input_per_mtok = "0.05"
        output_per_mtok = "0.40"

        [[prices]]
        model = "claude-haiku"
        effective_from = 2026-06-01
        currency = "EUR"
        input_per_mtok = "1"
        output_per_mtok = 5
    "#;

    fn table() -> PriceTable {
        PriceTable::from_toml(PRICES).unwrap()
    }

    fn ms(rfc3339: &str) -> u64 {
        DateTime::parse_from_rfc3339(rfc3339).unwrap().timestamp_millis() as u64
    }

    fn usage(prompt: u32, cached: Option<u32>, completion: u32) -> TokenUsage {
        TokenUsage {
            prompt,
            cached_prompt: cached,
            completion,
            served: true,
            ..TokenUsage::default()
        }
    }

    #[test]
    fn prices_are_read_exactly_into_micro_units_with_version_ids() {
        let table = table();
        let ids: Vec<&str> = table.versions().iter().map(|v| v.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "claude-haiku@2026-06-01",
                "gpt-4o-mini@2026-01-01",
                "gpt-4o-mini@2026-11-15T11:00:00Z"
            ]
        );
        let first = table.version("gpt-4o-mini@2026-01-01").unwrap();
        assert_eq!(
            (
                first.input_per_mtok,
                first.cached_input_per_mtok,
                first.output_per_mtok
            ),
            (150_000, 75_000, 600_000)
        );
        assert_eq!(first.effective_from_ms, ms("2026-01-01T00:00:00Z") as i64);
        assert_eq!(first.currency, "USD");
        // cached_input_per_mtok defaults to the input price; integers are whole units.
        let haiku = table.version("claude-haiku@2026-06-01").unwrap();
        assert_eq!(
            (
                haiku.input_per_mtok,
                haiku.cached_input_per_mtok,
                haiku.output_per_mtok
            ),
            (1_000_000, 1_000_000, 5_000_000)
        );
        assert!(table.version("gpt-4o-mini@2025-01-01").is_none());
        assert!(table.version("no-at-sign").is_none());
    }

    #[test]
    fn the_version_in_force_is_the_latest_that_took_effect_at_or_before_the_event() {
        let table = table();
        let change = ms("2026-11-15T11:00:00Z");
        let id = |at: u64| table.in_force("gpt-4o-mini", at).map(|v| v.id.as_str());
        assert_eq!(
            id(ms("2025-12-31T23:59:59.999Z")),
            None,
            "before the first version"
        );
        assert_eq!(id(ms("2026-01-01T00:00:00Z")), Some("gpt-4o-mini@2026-01-01"));
        assert_eq!(id(change - 1), Some("gpt-4o-mini@2026-01-01"));
        assert_eq!(id(change), Some("gpt-4o-mini@2026-11-15T11:00:00Z"), "inclusive");
        assert_eq!(id(u64::MAX), Some("gpt-4o-mini@2026-11-15T11:00:00Z"));
        assert_eq!(table.in_force("gpt-4o", change), None, "unknown model");
    }

    #[test]
    fn cost_is_the_token_weighted_sum_divided_by_a_million() {
        let table = table();
        let at = ms("2026-11-01T00:00:00Z");
        // 1,000,000 uncached × 0.15 + 0 + 1,000,000 × 0.60 = 0.75 USD.
        let charge = table.charge("gpt-4o-mini", at, &usage(1_000_000, None, 1_000_000));
        assert_eq!(charge.cost_micros, 750_000);
        assert_eq!(
            (charge.currency(), charge.price_version()),
            ("USD", "gpt-4o-mini@2026-01-01")
        );
        // 1,200 prompt of which 1,000 cached, 300 completion:
        // 200 × 150,000 + 1,000 × 75,000 + 300 × 600,000 = 285,000,000 → 285 micro-USD.
        let cached = table.charge("gpt-4o-mini", at, &usage(1_200, Some(1_000), 300));
        assert_eq!(cached.cost_micros, 285);
        // After the change the same tokens cost less: 200 × 100,000 + 1,000 × 50,000 + 300 × 400,000 = 190.
        let later = table.charge(
            "gpt-4o-mini",
            ms("2026-11-20T00:00:00Z"),
            &usage(1_200, Some(1_000), 300),
        );
        assert_eq!(later.cost_micros, 190);
    }

    #[test]
    fn cached_tokens_are_part_of_the_prompt_and_never_more_than_it() {
        assert_eq!(
            (
                usage(100, Some(30), 0).cached(),
                usage(100, Some(30), 0).uncached()
            ),
            (30, 70)
        );
        assert_eq!(
            (usage(100, None, 0).cached(), usage(100, None, 0).uncached()),
            (0, 100)
        );
        // A provider reporting more cached than prompt tokens: all of the prompt is cached, nothing more.
        assert_eq!(
            (usage(10, Some(25), 0).cached(), usage(10, Some(25), 0).uncached()),
            (10, 0)
        );
        let version = table().version("gpt-4o-mini@2026-01-01").unwrap().clone();
        assert_eq!(
            cost_micros(&version, &usage(10, Some(25), 0)),
            cost_micros(&version, &usage(10, Some(10), 0))
        );
    }

    #[test]
    fn each_event_is_rounded_once_half_up() {
        let version = table().version("gpt-4o-mini@2026-01-01").unwrap().clone();
        // 3 uncached × 150,000 = 450,000 → 0.45 micro → 0.
        assert_eq!(cost_micros(&version, &usage(3, None, 0)), 0);
        // 10 × 150,000 = 1,500,000 → 1.5 → 2 (half up).
        assert_eq!(cost_micros(&version, &usage(10, None, 0)), 2);
        // 7 cached × 75,000 = 525,000 → 0.525 → 1.
        assert_eq!(cost_micros(&version, &usage(7, Some(7), 0)), 1);
        // 1 completion × 600,000 + 3 × 150,000 = 1,050,000 → 1.05 → 1: the sum is rounded, not each part.
        assert_eq!(cost_micros(&version, &usage(3, None, 1)), 1);
        // 1,499,999 → 1; 2,500,000 → 3.
        let odd = PriceVersion {
            input_per_mtok: 1_499_999,
            ..version.clone()
        };
        assert_eq!(cost_micros(&odd, &usage(1, None, 0)), 1);
        let even = PriceVersion {
            input_per_mtok: 2_500_000,
            ..version
        };
        assert_eq!(cost_micros(&even, &usage(1, None, 0)), 3);
    }

    #[test]
    fn the_largest_event_at_the_highest_price_does_not_overflow() {
        let top = PriceVersion {
            id: "m@2026-01-01".into(),
            model: "m".into(),
            effective_from_ms: 0,
            currency: "USD".into(),
            input_per_mtok: MAX_PRICE_UNITS * MICROS_PER_UNIT,
            cached_input_per_mtok: MAX_PRICE_UNITS * MICROS_PER_UNIT,
            output_per_mtok: MAX_PRICE_UNITS * MICROS_PER_UNIT,
            cache_write_5m_per_mtok: MAX_PRICE_UNITS * MICROS_PER_UNIT,
            cache_write_1h_per_mtok: MAX_PRICE_UNITS * MICROS_PER_UNIT,
            reasoning_per_mtok: MAX_PRICE_UNITS * MICROS_PER_UNIT,
            per_request_micros: MAX_REQUEST_FEE_UNITS * MICROS_PER_UNIT,
        };
        let cost = cost_micros(&top, &usage(u32::MAX, Some(u32::MAX / 2), u32::MAX));
        // Every token at 1,000,000 units per million tokens: one unit (a million micro-units) per token.
        assert_eq!(cost, 2 * i64::from(u32::MAX) * 1_000_000 + 1_000_000_000);
        // Every counter at its largest, every type reported: the parts never exceed their wholes.
        let all = TokenUsage {
            prompt: u32::MAX,
            cached_prompt: Some(u32::MAX),
            cache_write_5m: Some(u32::MAX),
            cache_write_1h: Some(u32::MAX),
            completion: u32::MAX,
            reasoning: Some(u32::MAX),
            served: true,
        };
        assert_eq!(cost_micros(&top, &all), cost);
    }

    /// The Anthropic-style version of the token-type tests: every price different, so that a token at the
    /// wrong price shows.
    const SONNET: &str = r#"
        [[prices]]
        model = "claude-sonnet-4-5"
        effective_from = "2026-01-01"
        currency = "USD"
        input_per_mtok = "3"
        cached_input_per_mtok = "0.30"
        cache_write_5m_per_mtok = "3.75"
        cache_write_1h_per_mtok = "6"
        output_per_mtok = "15"
        reasoning_per_mtok = "20"
        per_request = "0.01"
    "#;

    fn sonnet() -> PriceVersion {
        PriceTable::from_toml(SONNET)
            .unwrap()
            .version("claude-sonnet-4-5@2026-01-01")
            .unwrap()
            .clone()
    }

    /// One token type alone: `n` tokens of it (and of its whole), no fee.
    fn only(kind: &str, n: u32) -> TokenUsage {
        let mut usage = TokenUsage::default();
        match kind {
            "input" => usage.prompt = n,
            "cached" => (usage.prompt, usage.cached_prompt) = (n, Some(n)),
            "write_5m" => (usage.prompt, usage.cache_write_5m) = (n, Some(n)),
            "write_1h" => (usage.prompt, usage.cache_write_1h) = (n, Some(n)),
            "output" => usage.completion = n,
            "reasoning" => (usage.completion, usage.reasoning) = (n, Some(n)),
            other => panic!("{other}"),
        }
        usage
    }

    #[test]
    fn each_token_type_is_charged_at_its_own_price() {
        let version = sonnet();
        for (kind, micros) in [
            ("input", 3_000_000),
            ("cached", 300_000),
            ("write_5m", 3_750_000),
            ("write_1h", 6_000_000),
            ("output", 15_000_000),
            ("reasoning", 20_000_000),
        ] {
            assert_eq!(cost_micros(&version, &only(kind, 1_000_000)), micros, "{kind}");
        }
        // All at once, each part of its whole: 1,000 prompt = 100 cached + 200 5-min writes + 300 1-h writes +
        // 400 uncached; 500 completion = 150 reasoning + 350 output.
        // 400 × 3 + 100 × 0.30 + 200 × 3.75 + 300 × 6 + 350 × 15 + 150 × 20 = 12,030 micro-USD, + 0.01 fee.
        let mixed = TokenUsage {
            prompt: 1_000,
            cached_prompt: Some(100),
            cache_write_5m: Some(200),
            cache_write_1h: Some(300),
            completion: 500,
            reasoning: Some(150),
            served: true,
        };
        assert_eq!(
            (
                mixed.uncached(),
                mixed.cached(),
                mixed.cache_write_5m(),
                mixed.cache_write_1h()
            ),
            (400, 100, 200, 300)
        );
        assert_eq!((mixed.output(), mixed.reasoning()), (350, 150));
        assert_eq!(cost_micros(&version, &mixed), 12_030 + 10_000);
        // Not served by a provider: no fee.
        let refused = TokenUsage {
            served: false,
            ..mixed
        };
        assert_eq!(cost_micros(&version, &refused), 12_030);
    }

    #[test]
    fn reasoning_tokens_are_charged_once_at_the_reasoning_price_or_else_the_output_price() {
        let thinking = TokenUsage {
            completion: 1_000,
            reasoning: Some(400),
            ..TokenUsage::default()
        };
        // 600 × 15 + 400 × 20 = 17,000: never 1,000 × 15 + 400 × 20.
        assert_eq!(cost_micros(&sonnet(), &thinking), 17_000);
        // Without a reasoning price they are output tokens: 1,000 × 0.60 = 600, as without reasoning.
        let mini = table().version("gpt-4o-mini@2026-01-01").unwrap().clone();
        assert_eq!(
            cost_micros(&mini, &thinking),
            cost_micros(&mini, &usage(0, None, 1_000))
        );
        assert_eq!(cost_micros(&mini, &thinking), 600);
    }

    #[test]
    fn the_parts_never_exceed_their_whole() {
        // More reported than the prompt has: cached first, then 5-minute, then 1-hour writes take what is left.
        let over = TokenUsage {
            prompt: 100,
            cached_prompt: Some(60),
            cache_write_5m: Some(30),
            cache_write_1h: Some(50),
            completion: 10,
            reasoning: Some(25),
            served: false,
        };
        assert_eq!(
            (
                over.cached(),
                over.cache_write_5m(),
                over.cache_write_1h(),
                over.uncached()
            ),
            (60, 30, 10, 0)
        );
        assert_eq!((over.reasoning(), over.output()), (10, 0));
        // 60 × 0.30 + 30 × 3.75 + 10 × 6 + 10 × 20 = 390.5 → 391.
        assert_eq!(cost_micros(&sonnet(), &over), 391);
    }

    #[test]
    fn an_entry_with_only_the_older_fields_prices_every_event_as_before() {
        // The formula before reasoning and cache writes had prices: (prompt − cached) × input + cached × cached
        // + completion × output.
        let before = |v: &PriceVersion, u: &TokenUsage| {
            let scaled = u128::from(u.prompt - u.cached()) * u128::from(v.input_per_mtok)
                + u128::from(u.cached()) * u128::from(v.cached_input_per_mtok)
                + u128::from(u.completion) * u128::from(v.output_per_mtok);
            i64::try_from((scaled + 500_000) / 1_000_000).unwrap()
        };
        let version = table().version("gpt-4o-mini@2026-01-01").unwrap().clone();
        for usage in [
            usage(1_200, Some(1_000), 300),
            TokenUsage {
                prompt: 5_000,
                cached_prompt: Some(1_000),
                cache_write_5m: Some(2_000),
                cache_write_1h: Some(1_500),
                completion: 700,
                reasoning: Some(650),
                served: true,
            },
            TokenUsage {
                prompt: 3,
                cache_write_5m: Some(9),
                completion: 1,
                reasoning: Some(1),
                ..TokenUsage::default()
            },
        ] {
            assert_eq!(
                cost_micros(&version, &usage),
                before(&version, &usage),
                "{usage:?}"
            );
        }
    }

    #[test]
    fn the_fee_is_charged_when_a_provider_served_the_request() {
        let charged: Vec<&str> = [
            Outcome::Ok,
            Outcome::UpstreamError,
            Outcome::ClientCancelled,
            Outcome::UpstreamCut,
            Outcome::RejectedQuota,
            Outcome::RejectedRateLimit,
        ]
        .into_iter()
        .filter(|o| charges_request_fee(*o))
        .map(Outcome::as_str)
        .collect();
        assert_eq!(charged, ["ok", "client_cancelled", "upstream_cut"]);
        // Once per event, even without tokens; never for an unpriced event.
        let table = PriceTable::from_toml(SONNET).unwrap();
        let served = TokenUsage {
            served: true,
            ..TokenUsage::default()
        };
        let at = ms("2026-06-01T00:00:00Z");
        assert_eq!(table.charge("claude-sonnet-4-5", at, &served).cost_micros, 10_000);
        assert_eq!(table.charge("claude-opus", at, &served).cost_micros, 0);
    }

    proptest::proptest! {
        #[test]
        fn more_tokens_of_any_type_never_cost_less(
            prompt in 0u32..2_000_000,
            cached in proptest::option::of(0u32..2_000_000),
            write_5m in proptest::option::of(0u32..2_000_000),
            write_1h in proptest::option::of(0u32..2_000_000),
            completion in 0u32..2_000_000,
            reasoning in proptest::option::of(0u32..2_000_000),
            served: bool,
            kind in 0usize..6,
            more in 1u32..1_000_000,
            prices in proptest::array::uniform7(0u64..50_000_000),
        ) {
            let version = PriceVersion {
                input_per_mtok: prices[0],
                cached_input_per_mtok: prices[1],
                cache_write_5m_per_mtok: prices[2],
                cache_write_1h_per_mtok: prices[3],
                output_per_mtok: prices[4],
                reasoning_per_mtok: prices[5],
                per_request_micros: prices[6],
                ..sonnet()
            };
            let usage = TokenUsage { prompt, cached_prompt: cached, cache_write_5m: write_5m,
                                     cache_write_1h: write_1h, completion, reasoning, served };
            // Tokens of one type more, and as many more in its whole (a part of the prompt is prompt too).
            let grow = |n: Option<u32>| Some(n.unwrap_or(0) + more);
            let mut grown = usage;
            match kind {
                0 => grown.prompt += more,
                1 => (grown.prompt, grown.cached_prompt) = (prompt + more, grow(cached)),
                2 => (grown.prompt, grown.cache_write_5m) = (prompt + more, grow(write_5m)),
                3 => (grown.prompt, grown.cache_write_1h) = (prompt + more, grow(write_1h)),
                4 => grown.completion += more,
                _ => (grown.completion, grown.reasoning) = (completion + more, grow(reasoning)),
            }
            proptest::prop_assert!(
                cost_micros(&version, &grown) >= cost_micros(&version, &usage),
                "{usage:?} → {grown:?}"
            );
            // The parts always add up to their wholes.
            for u in [usage, grown] {
                proptest::prop_assert_eq!(
                    u.uncached() + u.cached() + u.cache_write_5m() + u.cache_write_1h(),
                    u.prompt
                );
                proptest::prop_assert_eq!(u.output() + u.reasoning(), u.completion);
            }
        }
    }

    #[test]
    fn an_unknown_model_or_an_event_before_its_first_price_is_unpriced() {
        let table = table();
        for (model, at) in [
            ("gpt-5", ms("2026-11-20T00:00:00Z")),
            ("claude-haiku", ms("2026-05-31T23:59:59Z")),
        ] {
            let charge = table.charge(model, at, &usage(1000, None, 1000));
            assert_eq!(charge.version, None, "{model}");
            assert_eq!(
                (charge.cost_micros, charge.currency(), charge.price_version()),
                (0, "", "")
            );
        }
        let empty = PriceTable::default();
        assert!(empty.is_empty());
        assert_eq!(
            empty
                .charge("gpt-4o-mini", ms("2026-11-20T00:00:00Z"), &usage(1, None, 1))
                .cost_micros,
            0
        );
    }

    #[test]
    fn a_dated_snapshot_suffix_is_removed_to_find_the_family() {
        for (model, family) in [
            ("gpt-4o-mini-2024-07-18", "gpt-4o-mini"),
            ("gpt-4o-2024-08-06", "gpt-4o"),
            ("gpt-4.1-mini-2025-04-14", "gpt-4.1-mini"),
            ("claude-3-5-sonnet-20241022", "claude-3-5-sonnet"),
            ("claude-3-haiku-20240307", "claude-3-haiku"),
            ("claude-3-5-sonnet-v2@20241022", "claude-3-5-sonnet-v2"),
            ("claude-3-opus@2024-02-29", "claude-3-opus"),
            ("claude-3-5-haiku-latest", "claude-3-5-haiku"),
            ("llama-3-70b-20240418", "llama-3-70b"),
            ("x-2024-01-01", "x"),
            // One suffix, once: what is left is the family even when it looks dated itself.
            ("gpt-4o-2024-08-06-latest", "gpt-4o-2024-08-06"),
            ("m-20240101-20240202", "m-20240101"),
        ] {
            assert_eq!(model_family(model), Some(family), "{model}");
        }
    }

    #[test]
    fn names_that_merely_contain_digits_have_no_family() {
        for model in [
            "gpt-4o-mini",
            "gpt-4.1-mini",
            "gpt-4.1",
            "llama-3-70b",
            "llama-3.1-405b-instruct",
            "meta-llama/Llama-3-8B",
            "gpt-4-0613",
            "gpt-3.5-turbo-0125",
            "claude-2.1",
            "mistral-large-2407",
            "qwen2.5-72b-instruct",
            "gemini-1.5-pro-002",
            "o1",
            "anthropic.claude-3-5-sonnet-20241022-v2:0",
            "phi-3-mini-4k",
            // Eight or ten characters that are not a calendar date.
            "model-12345678",
            "model-20241301",
            "model-20240230",
            "model-2024-13-01",
            "model-2024-02-30",
            "model-2024_07_18",
            "model-2024-0718",
            "model-202407-18",
            "model+20240718",
            "model20240718",
            "model-+2024071",
            // Nothing before the suffix.
            "-latest",
            "latest",
            "-20241022",
            "@2024-10-22",
            "2024-10-22",
            "",
            // Not a suffix.
            "gpt-4o-latest-preview",
            "gpt-4o-2024-08-06-preview",
            "model-LATEST",
            // Multi-byte text where a date would sit does not panic.
            "modèle-2024-07-1é",
            "é",
        ] {
            assert_eq!(model_family(model), None, "{model:?}");
        }
    }

    #[test]
    fn an_event_is_priced_for_its_served_model_its_own_versions_before_its_familys() {
        let mut text = PRICES.to_owned();
        // A dated snapshot with a price of its own, from 2026-03-01 only.
        text.push_str(
            r#"
            [[prices]]
            model = "gpt-4o-mini-2026-02-01"
            effective_from = "2026-03-01"
            currency = "USD"
            input_per_mtok = "1"
            output_per_mtok = "1"
        "#,
        );
        let table = PriceTable::from_toml(&text).unwrap();
        let at = ms("2026-11-01T00:00:00Z");
        let version = |model: &str, at: u64| {
            table
                .charge(model, at, &usage(1, None, 1))
                .version
                .map(|v| v.id.clone())
        };
        // The family's versions price a snapshot without versions of its own.
        for snapshot in [
            "gpt-4o-mini-2024-07-18",
            "gpt-4o-mini-20240718",
            "gpt-4o-mini@20240718",
            "gpt-4o-mini@2024-07-18",
            "gpt-4o-mini-latest",
        ] {
            assert_eq!(table.priced_as(snapshot), Some("gpt-4o-mini"), "{snapshot}");
            assert_eq!(
                version(snapshot, at).as_deref(),
                Some("gpt-4o-mini@2026-01-01"),
                "{snapshot}"
            );
        }
        // The family follows its own price changes.
        assert_eq!(
            version("gpt-4o-mini-2024-07-18", ms("2026-11-20T00:00:00Z")).as_deref(),
            Some("gpt-4o-mini@2026-11-15T11:00:00Z")
        );
        // A snapshot priced separately keeps its own price...
        assert_eq!(
            table.priced_as("gpt-4o-mini-2026-02-01"),
            Some("gpt-4o-mini-2026-02-01")
        );
        let own = table.charge("gpt-4o-mini-2026-02-01", at, &usage(1_000_000, None, 0));
        assert_eq!(
            (own.price_version(), own.cost_micros),
            ("gpt-4o-mini-2026-02-01@2026-03-01", 1_000_000)
        );
        // ...and before its first version it is unpriced: the family does not stand in for a model that has
        // versions.
        assert_eq!(
            version("gpt-4o-mini-2026-02-01", ms("2026-02-15T00:00:00Z")),
            None
        );
        // No family: unpriced, whatever was requested.
        assert_eq!(table.priced_as("gpt-4o-mini-preview"), None);
        assert_eq!(version("gpt-4o-mini-preview", at), None);
        assert_eq!(version("gpt-4o", at), None);
        assert_eq!(
            version("claude-haiku-20261001", at).as_deref(),
            Some("claude-haiku@2026-06-01")
        );
        // Only a trailing snapshot suffix is removed: a name that merely starts like a priced one is not it.
        assert_eq!(version("gpt-4o-mini-audio", at), None);
    }

    #[test]
    fn every_problem_is_reported_with_its_path() {
        let text = r#"
            [[prices]]
            model = "gpt-4o-mini"
            effective_from = "2026-01-01"
            currency = "usd"
            input_per_mtok = 0.15
            output_per_mtok = "0.6000001"

            [[prices]]
            model = "gpt-4o-mini"
            effective_from = "2026-01-01T00:00:00Z"
            currency = "USD"
            input_per_mtok = "0.15"
            output_per_mtok = "0.60"

            [[prices]]
            model = "gpt-4o-mini"
            effective_from = "2026-01-01T00:00:00+00:00"
            currency = "USD"
            input_per_mtok = "0.15"
            output_per_mtok = "0.60"

            [[prices]]
            model = "llama"
            effective_from = "next week"
            currency = "USD"
            input_per_mtok = "-1"
            cached_input_per_mtok = true
            output_per_mtok = "2000000"

            [[prices]]
            model = "llama"
            currency = "USD"
            input_per_mtok = "1"
            output_per_mtok = "1"

            [[prices]]
            model = "x"
            effective_from = "2026-01-01"
            currency = "USD"
            input_per_mtok = "1"
            output_per_mtok = "1"
            discount = "0.1"
        "#;
        let problems = PriceTable::from_toml(text).unwrap_err();
        let expected_starts = [
            "prices[0].input_per_mtok: 0.15 is a float",
            "prices[0].output_per_mtok: `0.6000001` has more than 6 decimals",
            "prices[0].currency: `usd` is not an ISO 4217 code",
            "prices[2].effective_from: `gpt-4o-mini` has a version in force from the same instant at prices[1]",
            "prices[3].input_per_mtok: `-1` is not a decimal amount",
            "prices[3].cached_input_per_mtok: expected a decimal string",
            "prices[3].output_per_mtok: 2000000.00 is above the highest price accepted",
            "prices[3].effective_from: `next week` is neither a date",
            "prices[4]: missing field `effective_from`",
            "prices[5]: unknown field `discount`",
        ];
        assert_eq!(problems.len(), expected_starts.len(), "{problems:#?}");
        for (problem, start) in problems.iter().zip(expected_starts) {
            assert!(
                problem.starts_with(start),
                "{problem:?} should start with {start:?}"
            );
        }
    }

    #[test]
    fn a_file_without_prices_or_with_other_sections_is_refused() {
        assert_eq!(
            PriceTable::from_toml("").unwrap_err(),
            ["prices: no [[prices]] entry"]
        );
        let other = PriceTable::from_toml("[server]\nlisten = \"x\"\n").unwrap_err();
        assert!(other[0].contains("unknown field `server`"), "{other:?}");
        let local_time = PRICES.replace("\"2026-11-15T12:00:00+01:00\"", "2026-11-15T12:00:00");
        let problems = PriceTable::from_toml(&local_time).unwrap_err();
        assert!(
            problems[0].starts_with("prices[1].effective_from: `2026-11-15T12:00:00` is neither"),
            "{problems:?}"
        );
    }

    #[test]
    fn a_field_of_the_wrong_type_is_reported_at_its_path() {
        let text = r#"
            [[prices]]
            model = 3
            effective_from = "2026-01-01"
            currency = "USD"
            input_per_mtok = "1"
            output_per_mtok = "1"

            [[prices]]
            model = "m"
            effective_from = 5
            currency = "USD"
            input_per_mtok = "1"
            output_per_mtok = "1"

            [[prices]]
            model = "m"
            effective_from = 2026-01-01T10:00:00Z
            currency = "USD"
            input_per_mtok = 2026-01-01
            output_per_mtok = { units = 1 }
        "#;
        let problems = PriceTable::from_toml(text).unwrap_err();
        assert_eq!(
            problems,
            [
                "prices[0].model: invalid type: integer `3`, expected a string",
                "prices[1].effective_from: invalid type: integer `5`, expected a string",
                "prices[2].input_per_mtok: `2026-01-01` is not a decimal amount such as \"0.15\" (digits, \
                 optionally a point and up to 6 decimals)",
                "prices[2].output_per_mtok: expected a decimal string such as \"0.15\", got a table",
            ]
        );
    }

    #[test]
    fn the_topic_adds_versions_and_never_overrides_the_files() {
        use serde_json::json;
        let file = table();
        let price = |model: &str, from: &str, input: &str| {
            json!({"model": model, "effective_from": from, "currency": "USD", "input_per_mtok": input,
                   "cached_input_per_mtok": "0.075", "output_per_mtok": "0.60"})
        };
        let resources = [
            // New: a later version of a file model, and a model the file does not price.
            (
                "gpt-4o-mini@2027-01-01",
                price("gpt-4o-mini", "2027-01-01", "0.12"),
            ),
            ("gpt-4o@2026-01-01", price("gpt-4o", "2026-01-01", "2.50")),
            // The file's version again, written another way: the same price, no problem.
            (
                "gpt-4o-mini@2026-01-01T00:00:00Z",
                price("gpt-4o-mini", "2026-01-01T00:00:00Z", "0.15"),
            ),
            // The file's version at another price: left out.
            (
                "gpt-4o-mini@2026-01-01",
                price("gpt-4o-mini", "2026-01-01", "0.01"),
            ),
            // Two topic versions from one instant: the first by id is kept.
            (
                "gpt-4o@2026-01-01T00:00:00Z",
                price("gpt-4o", "2026-01-01T00:00:00Z", "9"),
            ),
            // Not a price entry.
            (
                "llama@2026-01-01",
                json!({"model": "llama", "effective_from": "2026-01-01"}),
            ),
            ("llama@soon", price("llama", "soon", "0.1")),
        ];
        let (merged, problems) = file.with_resources(resources.iter().map(|(id, r)| (*id, r)));
        assert_eq!(
            problems,
            [
                "prices/gpt-4o-mini@2026-01-01: differs from the price file's version `gpt-4o-mini@2026-01-01`, \
                 in force from the same instant, which is kept",
                "prices/gpt-4o@2026-01-01T00:00:00Z: differs from the topic's version `gpt-4o@2026-01-01`, in \
                 force from the same instant, which is kept",
                "prices/llama@2026-01-01: missing field `currency`",
                "prices/llama@soon.effective_from: `soon` is neither a date (2026-01-01) nor an RFC 3339 time \
                 with an offset (2026-01-01T12:00:00Z)",
            ]
        );
        let ids: Vec<&str> = merged.versions().iter().map(|v| v.id.as_str()).collect();
        assert_eq!(
            ids,
            [
                "claude-haiku@2026-06-01",
                "gpt-4o@2026-01-01",
                "gpt-4o-mini@2026-01-01",
                "gpt-4o-mini@2026-11-15T11:00:00Z",
                "gpt-4o-mini@2027-01-01"
            ]
        );
        assert_eq!(
            merged.version("gpt-4o-mini@2026-01-01"),
            file.version("gpt-4o-mini@2026-01-01")
        );
        let at = ms("2027-02-01T00:00:00Z");
        assert_eq!(
            merged
                .charge("gpt-4o-mini", at, &usage(1_000_000, None, 0))
                .price_version(),
            "gpt-4o-mini@2027-01-01"
        );
        assert_eq!(
            merged
                .charge("gpt-4o", at, &usage(1_000_000, None, 0))
                .cost_micros,
            2_500_000
        );
        // Without a file, the topic's versions are the table.
        let (alone, problems) =
            PriceTable::default().with_resources(resources[..2].iter().map(|(id, r)| (*id, r)));
        assert!(problems.is_empty(), "{problems:?}");
        assert_eq!(alone.versions().len(), 2);
    }

    #[test]
    fn live_prices_are_replaced_whole() {
        let live = LivePrices::default();
        assert!(live.current().is_empty());
        let before = live.current();
        live.replace(Arc::new(table()));
        assert!(before.is_empty(), "a table in use is never changed");
        assert_eq!(live.current().versions().len(), 3);
        assert_eq!(live.clone().current().versions().len(), 3);
    }

    #[test]
    fn describe_lists_every_version() {
        let expected = "\
price_version                     in force from (UTC)   currency  input/Mtok  cached/Mtok  output/Mtok  write5m/Mtok  write1h/Mtok  reasoning/Mtok  per request
claude-haiku@2026-06-01           2026-06-01T00:00:00Z  EUR             1.00         1.00         5.00          1.00          1.00            5.00         0.00
gpt-4o-mini@2026-01-01            2026-01-01T00:00:00Z  USD             0.15        0.075         0.60          0.15          0.15            0.60         0.00
gpt-4o-mini@2026-11-15T11:00:00Z  2026-11-15T11:00:00Z  USD             0.10         0.05         0.40          0.10          0.10            0.40         0.00
";
        assert_eq!(describe(&table()), expected);
    }

    #[test]
    fn the_local_stacks_price_file_prices_anthropic_cache_writes_and_gemini_thinking() {
        let table = PriceTable::from_toml(include_str!("../../../compose/prices.toml")).unwrap();
        let at = ms("2026-01-01T00:00:00Z");
        // 10,000 prompt tokens: 2,000 read from the cache, 3,000 written for 5 min, 1,000 for 1 h, 4,000 uncached;
        // 500 completion tokens: 4,000 × 3 + 2,000 × 0.30 + 3,000 × 3.75 + 1,000 × 6 + 500 × 15 = 37,350.
        let sonnet = TokenUsage {
            prompt: 10_000,
            cached_prompt: Some(2_000),
            cache_write_5m: Some(3_000),
            cache_write_1h: Some(1_000),
            completion: 500,
            reasoning: None,
            served: true,
        };
        let charge = table.charge("claude-sonnet-4-5-20250929", at, &sonnet);
        assert_eq!(
            (charge.price_version(), charge.cost_micros),
            ("claude-sonnet-4-5@2025-09-29", 37_350)
        );
        // 1,000 prompt, 300 completion of which 200 thinking: 1,000 × 0.30 + 100 × 2.50 + 200 × 2.50 = 1,050.
        let gemini = TokenUsage {
            prompt: 1_000,
            completion: 300,
            reasoning: Some(200),
            served: true,
            ..TokenUsage::default()
        };
        assert_eq!(table.charge("gemini-2.5-flash", at, &gemini).cost_micros, 1_050);
    }

    #[test]
    fn load_names_the_file() {
        let err = load(Path::new("/nonexistent/prices.toml")).unwrap_err();
        assert_eq!(err.kind(), "prices");
        assert!(err.to_string().contains("/nonexistent/prices.toml"), "{err}");
    }
}
