//! Prices: the versioned price table (a TOML file, `--prices`) and the cost of one event under it. Pure: the
//! file's text goes in, a [`PriceTable`] comes out, and [`PriceTable::charge`] turns an event's model, time and
//! tokens into an amount. Ingest, rebuild and the audit all price through here, so they agree to the micro-unit.
//!
//! ```toml
//! [[prices]]
//! model = "gpt-4o-mini"          # the model the client asked for (`model_requested`)
//! effective_from = "2026-01-01"  # a date (midnight UTC) or an RFC 3339 time; in force until the next version
//! currency = "USD"               # three capital letters (ISO 4217)
//! input_per_mtok = "0.15"        # per million uncached prompt tokens
//! cached_input_per_mtok = "0.075"  # per million cached prompt tokens; optional, defaults to input_per_mtok
//! output_per_mtok = "0.60"       # per million completion tokens
//! ```
//!
//! **Money is integers.** Prices are decimal strings (or integers), never TOML floats, read exactly into
//! micro-units of the currency per million tokens (`"0.15"` → 150 000); more than six decimals is refused. An
//! event's cost, in micro-units, is
//!
//! ```text
//! (uncached_prompt × input + cached × cached_input + completion × output) / 1 000 000, rounded half up
//! ```
//!
//! computed in `u128`, rounded once per event, where `cached = min(cached_prompt_tokens, prompt_tokens)` (cached
//! tokens are part of the prompt) and `uncached_prompt = prompt_tokens − cached`. Prices are capped at
//! [`MAX_PRICE_UNITS`] per million tokens, so no event's cost can overflow an `i64`.
//!
//! **Versions.** Each entry is a version, identified as `model@effective_from` (`gpt-4o-mini@2026-01-01`). An
//! event is priced by the latest version of its `model_requested` whose `effective_from` is at or before the
//! event's time (`finished_at_ms`). An event with no version in force — an unknown model, or a time before the
//! model's first version — is unpriced: cost 0, no currency, price version `""`.
//!
//! Validation reports every problem of the file at once, each with its path (`prices[2].input_per_mtok: …`).

use std::collections::HashMap;
use std::path::Path;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::Deserialize;

use crate::error::BillingError;

/// Micro-units in one unit of a currency (and tokens in a million).
pub const MICROS_PER_UNIT: u64 = 1_000_000;
/// The highest price per million tokens, in currency units: far above any model's, and low enough that
/// `u32::MAX` tokens of each kind at this price still fit an `i64` of micro-units.
pub const MAX_PRICE_UNITS: u64 = 1_000_000;
/// Decimal places a price may have: one micro-unit is the smallest amount.
const MAX_DECIMALS: usize = 6;

/// One version of one model's price.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceVersion {
    /// `model@effective_from`, e.g. `gpt-4o-mini@2026-01-01`; stored with every priced event.
    pub id: String,
    /// The requested model name it prices.
    pub model: String,
    /// The first instant it applies to, epoch milliseconds.
    pub effective_from_ms: i64,
    /// ISO 4217 code, e.g. `USD`.
    pub currency: String,
    /// Micro-units per million uncached prompt tokens.
    pub input_per_mtok: u64,
    /// Micro-units per million cached prompt tokens.
    pub cached_input_per_mtok: u64,
    /// Micro-units per million completion tokens.
    pub output_per_mtok: u64,
}

/// The tokens of one event that a price applies to.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenUsage {
    /// Prompt tokens, cached ones included.
    pub prompt: u32,
    /// Cached prompt tokens, when the provider reported them.
    pub cached_prompt: Option<u32>,
    /// Completion tokens.
    pub completion: u32,
}

impl TokenUsage {
    /// The tokens a usage event reports.
    pub fn of(data: &tollgate_schemas::usage::UsageRecorded) -> Self {
        Self {
            prompt: data.prompt_tokens,
            cached_prompt: data.cached_prompt_tokens,
            completion: data.completion_tokens,
        }
    }

    /// Cached prompt tokens, at most the prompt tokens.
    pub fn cached(&self) -> u32 {
        self.cached_prompt.unwrap_or(0).min(self.prompt)
    }

    /// Prompt tokens billed at the input price: the prompt less its cached part.
    pub fn uncached(&self) -> u32 {
        self.prompt - self.cached()
    }
}

impl PriceVersion {
    /// The cost of `usage` in micro-units of [`Self::currency`], rounded half up.
    pub fn cost_micros(&self, usage: &TokenUsage) -> i64 {
        let scaled = u128::from(usage.uncached()) * u128::from(self.input_per_mtok)
            + u128::from(usage.cached()) * u128::from(self.cached_input_per_mtok)
            + u128::from(usage.completion) * u128::from(self.output_per_mtok);
        let half = u128::from(MICROS_PER_UNIT / 2);
        let micros = (scaled + half) / u128::from(MICROS_PER_UNIT);
        // Cannot exceed 3 × u32::MAX × MAX_PRICE_UNITS, far below i64::MAX.
        i64::try_from(micros).unwrap_or(i64::MAX)
    }
}

/// What pricing one event gave: the version in force (`None`: unpriced) and the cost under it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Charge<'a> {
    /// The version that priced it, or `None` when no price was in force.
    pub version: Option<&'a PriceVersion>,
    /// Micro-units of the version's currency; 0 when unpriced.
    pub cost_micros: i64,
}

impl Charge<'_> {
    /// The currency, `""` when unpriced.
    pub fn currency(&self) -> &str {
        self.version.map_or("", |v| v.currency.as_str())
    }

    /// The price version id, `""` when unpriced.
    pub fn price_version(&self) -> &str {
        self.version.map_or("", |v| v.id.as_str())
    }
}

/// Every price version, by model, each model's versions in time order. The default table is empty: every event
/// is unpriced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PriceTable {
    by_model: HashMap<String, Vec<PriceVersion>>,
}

impl PriceTable {
    /// Reads and validates the price file at `path`.
    pub fn load(path: &Path) -> Result<Self, BillingError> {
        let shown = path.display().to_string();
        let text = std::fs::read_to_string(path).map_err(|e| BillingError::Prices {
            path: shown.clone(),
            problems: vec![format!("cannot be read: {e}")],
        })?;
        Self::from_toml(&text).map_err(|problems| BillingError::Prices {
            path: shown,
            problems,
        })
    }

    /// The table of a price file's text, or every problem, each with its path.
    pub fn from_toml(text: &str) -> Result<Self, Vec<String>> {
        let file: PricesFile = toml::from_str(text).map_err(|e| vec![e.to_string().trim_end().to_owned()])?;
        let mut problems = Vec::new();
        if file.prices.is_empty() {
            problems.push("prices: no [[prices]] entry".to_owned());
        }
        let mut by_model: HashMap<String, Vec<PriceVersion>> = HashMap::new();
        let mut first_path: HashMap<(String, i64), String> = HashMap::new();
        for (i, raw) in file.prices.into_iter().enumerate() {
            let path = format!("prices[{i}]");
            let Some(version) = read_version(&path, raw, &mut problems) else {
                continue;
            };
            let instant = (version.model.clone(), version.effective_from_ms);
            match first_path.get(&instant) {
                Some(first) => problems.push(format!(
                    "{path}.effective_from: `{}` has a version in force from the same instant at {first}",
                    version.model
                )),
                None => {
                    first_path.insert(instant, path);
                    by_model.entry(version.model.clone()).or_default().push(version);
                }
            }
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        for versions in by_model.values_mut() {
            versions.sort_by_key(|v| v.effective_from_ms);
        }
        Ok(Self { by_model })
    }

    /// True when the table has no version (every event is unpriced).
    pub fn is_empty(&self) -> bool {
        self.by_model.is_empty()
    }

    /// Every version, by model name then time.
    pub fn versions(&self) -> Vec<&PriceVersion> {
        let mut all: Vec<&PriceVersion> = self.by_model.values().flatten().collect();
        all.sort_by(|a, b| (&a.model, a.effective_from_ms).cmp(&(&b.model, b.effective_from_ms)));
        all
    }

    /// The version with this id (`model@effective_from`).
    pub fn version(&self, id: &str) -> Option<&PriceVersion> {
        let (model, _) = id.rsplit_once('@')?;
        self.by_model.get(model)?.iter().find(|v| v.id == id)
    }

    /// The version of `model` in force at `at_ms` (epoch milliseconds): the latest one that took effect at or
    /// before it.
    pub fn in_force(&self, model: &str, at_ms: u64) -> Option<&PriceVersion> {
        let at = i64::try_from(at_ms).unwrap_or(i64::MAX);
        let versions = self.by_model.get(model)?;
        let after = versions.partition_point(|v| v.effective_from_ms <= at);
        after.checked_sub(1).and_then(|i| versions.get(i))
    }

    /// Prices one event: `usage` of `model` (requested) at `at_ms` (its `finished_at_ms`).
    pub fn charge(&self, model: &str, at_ms: u64, usage: &TokenUsage) -> Charge<'_> {
        match self.in_force(model, at_ms) {
            Some(version) => Charge {
                version: Some(version),
                cost_micros: version.cost_micros(usage),
            },
            None => Charge {
                version: None,
                cost_micros: 0,
            },
        }
    }
}

/// Every version as an aligned table (id, currency, unit prices per million tokens, in force from), for
/// `check-prices`.
pub fn describe(table: &PriceTable) -> String {
    use crate::table::{Align, Table};
    let mut out = Table::new(&[
        ("price_version", Align::Left),
        ("in force from (UTC)", Align::Left),
        ("currency", Align::Left),
        ("input/Mtok", Align::Right),
        ("cached/Mtok", Align::Right),
        ("output/Mtok", Align::Right),
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
        ]);
    }
    out.render()
}

/// The file: `[[prices]]` entries and nothing else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PricesFile {
    #[serde(default)]
    prices: Vec<toml::Value>,
}

/// One entry as written, before validation.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct RawPrice {
    model: String,
    effective_from: toml::Value,
    currency: String,
    input_per_mtok: toml::Value,
    cached_input_per_mtok: Option<toml::Value>,
    output_per_mtok: toml::Value,
}

/// Validates entry `path`, adding its problems; `None` when it has any.
fn read_version(path: &str, raw: toml::Value, problems: &mut Vec<String>) -> Option<PriceVersion> {
    let raw: RawPrice = match raw.try_into() {
        Ok(raw) => raw,
        Err(e) => {
            problems.push(format!("{path}: {}", e.to_string().trim_end()));
            return None;
        }
    };
    let before = problems.len();
    let mut field = |name: &str, result: Result<u64, String>| match result {
        Ok(value) => Some(value),
        Err(problem) => {
            problems.push(format!("{path}.{name}: {problem}"));
            None
        }
    };
    let input = field("input_per_mtok", price_micros(&raw.input_per_mtok));
    let cached = match &raw.cached_input_per_mtok {
        Some(value) => field("cached_input_per_mtok", price_micros(value)),
        None => input,
    };
    let output = field("output_per_mtok", price_micros(&raw.output_per_mtok));
    let effective = match parse_effective_from(&raw.effective_from) {
        Ok(effective) => Some(effective),
        Err(problem) => {
            problems.push(format!("{path}.effective_from: {problem}"));
            None
        }
    };
    if raw.model.trim().is_empty() || raw.model.contains('@') {
        problems.push(format!(
            "{path}.model: `{}` must be a non-empty model name without `@`",
            raw.model
        ));
    }
    if !(raw.currency.len() == 3 && raw.currency.bytes().all(|b| b.is_ascii_uppercase())) {
        problems.push(format!(
            "{path}.currency: `{}` is not an ISO 4217 code (three capital letters, e.g. USD)",
            raw.currency
        ));
    }
    if problems.len() > before {
        return None;
    }
    let ((effective_from_ms, label), input, cached, output) = (effective?, input?, cached?, output?);
    Some(PriceVersion {
        id: format!("{}@{label}", raw.model),
        model: raw.model,
        effective_from_ms,
        currency: raw.currency,
        input_per_mtok: input,
        cached_input_per_mtok: cached,
        output_per_mtok: output,
    })
}

/// A price per million tokens in micro-units: a decimal string (`"0.15"`) or an integer (`3`).
fn price_micros(value: &toml::Value) -> Result<u64, String> {
    let micros = match value {
        toml::Value::String(text) => parse_micros(text)?,
        toml::Value::Integer(units) => u64::try_from(*units)
            .ok()
            .and_then(|u| u.checked_mul(MICROS_PER_UNIT))
            .ok_or_else(|| format!("{units} is not a price (negative or too large)"))?,
        toml::Value::Float(f) => {
            return Err(format!(
                "{f} is a float, which cannot hold money exactly: write it as a string, e.g. \"{f}\""
            ));
        }
        other => {
            return Err(format!(
                "expected a decimal string such as \"0.15\", got a {}",
                other.type_str()
            ));
        }
    };
    if micros > MAX_PRICE_UNITS * MICROS_PER_UNIT {
        return Err(format!(
            "{} is above the highest price accepted, {MAX_PRICE_UNITS} per million tokens",
            format_micros(i64::try_from(micros).unwrap_or(i64::MAX))
        ));
    }
    Ok(micros)
}

/// Reads a non-negative decimal (`"12"`, `"0.15"`, `"0.000001"`) exactly into micro-units.
pub fn parse_micros(text: &str) -> Result<u64, String> {
    let invalid = || {
        format!(
            "`{text}` is not a decimal amount such as \"0.15\" (digits, optionally a point and up to {MAX_DECIMALS} decimals)"
        )
    };
    let (whole, fraction) = match text.split_once('.') {
        Some((whole, fraction)) => (whole, Some(fraction)),
        None => (text, None),
    };
    if whole.is_empty() || !whole.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    let fraction = fraction.unwrap_or("");
    if text.contains('.') && fraction.is_empty() || !fraction.bytes().all(|b| b.is_ascii_digit()) {
        return Err(invalid());
    }
    if fraction.len() > MAX_DECIMALS {
        return Err(format!(
            "`{text}` has more than {MAX_DECIMALS} decimals: a micro-unit is the smallest amount"
        ));
    }
    let too_large = || format!("`{text}` is too large");
    let whole: u64 = whole.parse().map_err(|_| too_large())?;
    let mut micros_part: u64 = if fraction.is_empty() {
        0
    } else {
        fraction.parse().map_err(|_| invalid())?
    };
    for _ in fraction.len()..MAX_DECIMALS {
        micros_part *= 10;
    }
    whole
        .checked_mul(MICROS_PER_UNIT)
        .and_then(|w| w.checked_add(micros_part))
        .ok_or_else(too_large)
}

/// Renders micro-units as an exact decimal with at least two decimals: `150000` → `0.15`, `45` → `0.000045`,
/// `12000000` → `12.00`, `-1500000` → `-1.50`.
pub fn format_micros(micros: i64) -> String {
    let sign = if micros < 0 { "-" } else { "" };
    let magnitude = micros.unsigned_abs();
    let whole = magnitude / MICROS_PER_UNIT;
    let fraction = format!("{:06}", magnitude % MICROS_PER_UNIT);
    let trimmed = fraction.trim_end_matches('0');
    let decimals = if trimmed.len() < 2 {
        &fraction[..2]
    } else {
        trimmed
    };
    format!("{sign}{whole}.{decimals}")
}

/// `effective_from` as epoch milliseconds and its label in the version id: a date (`2026-01-01`, midnight UTC,
/// labelled as written) or an RFC 3339 time (labelled in UTC, `2026-01-01T12:00:00Z`). Accepts a TOML string or
/// a TOML date/time literal.
fn parse_effective_from(value: &toml::Value) -> Result<(i64, String), String> {
    let text = match value {
        toml::Value::String(text) => text.clone(),
        toml::Value::Datetime(datetime) => datetime.to_string(),
        other => {
            return Err(format!(
                "expected a date (\"2026-01-01\") or an RFC 3339 time, got a {}",
                other.type_str()
            ));
        }
    };
    if let Ok(date) = NaiveDate::parse_from_str(&text, "%Y-%m-%d") {
        let midnight = date.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
        return midnight
            .map(|t| (t.timestamp_millis(), date.format("%Y-%m-%d").to_string()))
            .ok_or_else(|| format!("`{text}` is out of range"));
    }
    match DateTime::parse_from_rfc3339(&text) {
        Ok(time) => {
            let utc = time.with_timezone(&Utc);
            Ok((
                utc.timestamp_millis(),
                utc.to_rfc3339_opts(SecondsFormat::AutoSi, true),
            ))
        }
        Err(_) => Err(format!(
            "`{text}` is neither a date (2026-01-01) nor an RFC 3339 time with an offset (2026-01-01T12:00:00Z)"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
            version.cost_micros(&usage(10, Some(25), 0)),
            version.cost_micros(&usage(10, Some(10), 0))
        );
    }

    #[test]
    fn each_event_is_rounded_once_half_up() {
        let version = table().version("gpt-4o-mini@2026-01-01").unwrap().clone();
        // 3 uncached × 150,000 = 450,000 → 0.45 micro → 0.
        assert_eq!(version.cost_micros(&usage(3, None, 0)), 0);
        // 10 × 150,000 = 1,500,000 → 1.5 → 2 (half up).
        assert_eq!(version.cost_micros(&usage(10, None, 0)), 2);
        // 7 cached × 75,000 = 525,000 → 0.525 → 1.
        assert_eq!(version.cost_micros(&usage(7, Some(7), 0)), 1);
        // 1 completion × 600,000 + 3 × 150,000 = 1,050,000 → 1.05 → 1: the sum is rounded, not each part.
        assert_eq!(version.cost_micros(&usage(3, None, 1)), 1);
        // 1,499,999 → 1; 2,500,000 → 3.
        let odd = PriceVersion {
            input_per_mtok: 1_499_999,
            ..version.clone()
        };
        assert_eq!(odd.cost_micros(&usage(1, None, 0)), 1);
        let even = PriceVersion {
            input_per_mtok: 2_500_000,
            ..version
        };
        assert_eq!(even.cost_micros(&usage(1, None, 0)), 3);
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
        };
        let cost = top.cost_micros(&usage(u32::MAX, Some(u32::MAX / 2), u32::MAX));
        // Every token at 1,000,000 units per million tokens: one unit (a million micro-units) per token.
        assert_eq!(cost, 2 * i64::from(u32::MAX) * 1_000_000);
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
    fn decimals_parse_exactly_or_not_at_all() {
        for (text, micros) in [
            ("0", 0),
            ("12", 12_000_000),
            ("0.15", 150_000),
            ("0.075", 75_000),
            ("0.60", 600_000),
            ("0.000001", 1),
            ("1.5", 1_500_000),
            ("007.10", 7_100_000),
        ] {
            assert_eq!(parse_micros(text), Ok(micros), "{text}");
        }
        for bad in [
            "", ".5", "5.", "-1", "+1", "1e3", "0,15", " 1", "1 ", "1.2.3", "abc", "0x10", "1_000",
        ] {
            let problem = parse_micros(bad).unwrap_err();
            assert!(problem.contains("is not a decimal amount"), "{bad}: {problem}");
        }
        let precise = parse_micros("0.0000001").unwrap_err();
        assert!(precise.contains("more than 6 decimals"), "{precise}");
        assert!(
            parse_micros("99999999999999999999")
                .unwrap_err()
                .contains("too large")
        );
    }

    #[test]
    fn micro_units_render_as_exact_decimals() {
        for (micros, text) in [
            (0, "0.00"),
            (45, "0.000045"),
            (150_000, "0.15"),
            (75_000, "0.075"),
            (12_000_000, "12.00"),
            (12_345_678, "12.345678"),
            (-1_500_000, "-1.50"),
            (i64::MIN, "-9223372036854.775808"),
        ] {
            assert_eq!(format_micros(micros), text, "{micros}");
        }
        for micros in [1, 10, 100, 123_456, 1_000_001, 999_999_999] {
            assert_eq!(parse_micros(&format_micros(micros)), Ok(micros as u64));
        }
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
    fn describe_lists_every_version() {
        let expected = "\
price_version                     in force from (UTC)   currency  input/Mtok  cached/Mtok  output/Mtok
claude-haiku@2026-06-01           2026-06-01T00:00:00Z  EUR             1.00         1.00         5.00
gpt-4o-mini@2026-01-01            2026-01-01T00:00:00Z  USD             0.15        0.075         0.60
gpt-4o-mini@2026-11-15T11:00:00Z  2026-11-15T11:00:00Z  USD             0.10         0.05         0.40
";
        assert_eq!(describe(&table()), expected);
    }

    #[test]
    fn load_names_the_file() {
        let err = PriceTable::load(Path::new("/nonexistent/prices.toml")).unwrap_err();
        assert_eq!(err.kind(), "prices");
        assert!(err.to_string().contains("/nonexistent/prices.toml"), "{err}");
    }
}
