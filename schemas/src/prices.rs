//! Price entries: one version of one model's price, as billing-consumer's price file writes it (a `[[prices]]`
//! table) and as the admin API stores it (`/admin/v1/prices/{model@effective_from}`, and the `price` resources of
//! `tollgate.config.v1`), with the one validation both sides apply.
//!
//! ```toml
//! [[prices]]
//! model = "gpt-4o-mini"          # the model the client asked for (`model_requested`)
//! effective_from = "2026-01-01"  # a date (midnight UTC) or an RFC 3339 time; in force until the next version
//! currency = "USD"               # three capital letters (ISO 4217)
//! input_per_mtok = "0.15"        # per million uncached prompt tokens
//! cached_input_per_mtok = "0.075"  # per million cached prompt tokens; optional, defaults to input_per_mtok
//! output_per_mtok = "0.60"       # per million completion tokens (reasoning ones too, unless reasoning_per_mtok)
//! # Optional, for the other token types and a fixed fee:
//! cache_write_5m_per_mtok = "3.75"  # per million prompt tokens written to the cache for 5 min; default input
//! cache_write_1h_per_mtok = "6"     # per million prompt tokens written to the cache for 1 h; default input
//! reasoning_per_mtok = "0.60"       # per million reasoning tokens, instead of output_per_mtok; default output
//! per_request = "0.001"             # per request served by a provider, in currency units; default 0
//! ```
//!
//! **Defaults keep old bills.** Every optional field defaults to the price the tokens were charged at before it
//! existed: cached and cache-write tokens at the input price, reasoning tokens at the output price, no fee. An
//! entry written with only the old fields therefore prices every event — including events that carry reasoning or
//! cache-write tokens — exactly as before, so a replay of the usage topic reproduces every stored bill. A provider
//! that charges cache writes at a premium (Anthropic: 1.25 × input for 5 minutes, 2 × input for an hour) needs
//! the prices written out; no multiplier is implied.
//!
//! **Money is integers.** Prices are decimal strings (or integers, whole units), never floats, read exactly into
//! micro-units of the currency per million tokens (`"0.15"` → 150 000); more than six decimals is refused, and so
//! is a price above [`MAX_PRICE_UNITS`] per million tokens, or a `per_request` fee above [`MAX_REQUEST_FEE_UNITS`]. A [`PriceEntry`] is the entry as written: its prices
//! are [`Amount`]s that deserialize from anything scalar, so that a float or a boolean is reported by
//! validation, with its field's path, beside the entry's other problems — not as one opaque parse error.
//!
//! **Validation.** [`PriceEntry::validate`] turns an entry into a [`PriceVersion`] (micro-units, epoch
//! milliseconds) or every problem of it, each prefixed with a path the caller chooses: billing-consumer uses
//! `prices[2]` (→ `prices[2].input_per_mtok: …`), the admin API `prices/gpt-4o@2026-01-01`. A list of entries
//! ([`validate_entries`], or [`PriceListValidator`] for a caller that also has entries that did not parse) must
//! not hold two versions of one model in force from the same instant.
//!
//! **Ids.** [`PriceEntry::version_id`] is the admin resource id, `model@effective_from` exactly as written
//! (`gpt-4o-mini@2026-01-01`). [`PriceVersion::id`] is the id stored with every priced event: the same for a date,
//! and for an RFC 3339 time the instant in UTC (`2026-11-15T12:00:00+01:00` → `…@2026-11-15T11:00:00Z`).

use std::collections::HashMap;

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::{Deserialize, Serialize};

/// Micro-units in one unit of a currency (and tokens in a million).
pub const MICROS_PER_UNIT: u64 = 1_000_000;
/// The highest price per million tokens, in currency units: far above any model's, and low enough that
/// `u32::MAX` tokens of each kind at this price still fit an `i64` of micro-units.
pub const MAX_PRICE_UNITS: u64 = 1_000_000;
/// The highest `per_request` fee, in currency units per request.
pub const MAX_REQUEST_FEE_UNITS: u64 = 1_000;
/// Decimal places a price may have: one micro-unit is the smallest amount.
pub const MAX_DECIMALS: usize = 6;
/// The largest spend budget, in whole currency units: a billion (far above any real budget, far below the
/// micro-unit arithmetic's limits).
pub const MAX_BUDGET_UNITS: u64 = 1_000_000_000;

/// A price per million tokens as written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum Amount {
    /// A decimal string, e.g. `"0.15"`: read exactly.
    Decimal(String),
    /// A whole number of currency units, e.g. `3`.
    Units(i64),
    /// Anything else (a float, a boolean, …): accepted by deserialization only so that validation reports it
    /// with its field's path; never valid.
    Invalid(serde_json::Value),
}

impl Amount {
    /// The amount in micro-units per million tokens, or what is wrong with it.
    pub fn micros(&self) -> Result<u64, String> {
        self.micros_at_most(MAX_PRICE_UNITS, "per million tokens")
    }

    /// The amount in micro-units of a `per_request` fee, or what is wrong with it.
    pub fn fee_micros(&self) -> Result<u64, String> {
        self.micros_at_most(MAX_REQUEST_FEE_UNITS, "per request")
    }

    /// The amount in micro-units of a spend budget, or what is wrong with it.
    pub fn budget_micros(&self) -> Result<u64, String> {
        self.micros_at_most(MAX_BUDGET_UNITS, "for a budget")
    }

    /// The amount in micro-units, at most `max_units` whole units (`per` names the unit in the problem).
    fn micros_at_most(&self, max_units: u64, per: &str) -> Result<u64, String> {
        let micros = match self {
            Self::Decimal(text) => parse_micros(text)?,
            Self::Units(units) => u64::try_from(*units)
                .ok()
                .and_then(|u| u.checked_mul(MICROS_PER_UNIT))
                .ok_or_else(|| format!("{units} is not a price (negative or too large)"))?,
            Self::Invalid(value) => return Err(invalid_amount(value)),
        };
        if micros > max_units * MICROS_PER_UNIT {
            return Err(format!(
                "{} is above the highest price accepted, {max_units} {per}",
                format_micros(i64::try_from(micros).unwrap_or(i64::MAX))
            ));
        }
        Ok(micros)
    }
}

impl From<&str> for Amount {
    fn from(text: &str) -> Self {
        Self::Decimal(text.to_owned())
    }
}

impl From<i64> for Amount {
    fn from(units: i64) -> Self {
        Self::Units(units)
    }
}

fn invalid_amount(value: &serde_json::Value) -> String {
    use serde_json::Value;
    match value {
        Value::Number(n) if n.is_u64() || n.is_i64() => format!("{n} is not a price (negative or too large)"),
        Value::Number(n) => {
            let f = n.as_f64().unwrap_or(f64::NAN);
            format!("{f} is a float, which cannot hold money exactly: write it as a string, e.g. \"{f}\"")
        }
        other => {
            let kind = match other {
                Value::Null => "null",
                Value::Bool(_) => "a boolean",
                Value::String(_) => "a string",
                Value::Array(_) => "an array",
                Value::Object(_) | Value::Number(_) => "a table",
            };
            format!("expected a decimal string such as \"0.15\", got {kind}")
        }
    }
}

/// One `[[prices]]` entry as written: exactly the fields of the price file's table, and of a `price` resource.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PriceEntry {
    /// The served model name it prices (`model_served`), or the family of its dated snapshots (`gpt-4o-mini`
    /// prices `gpt-4o-mini-2024-07-18` unless that has versions of its own); no `@`.
    pub model: String,
    /// A date (`2026-01-01`, midnight UTC) or an RFC 3339 time with an offset (`2026-01-01T12:00:00Z`): the
    /// first instant the version applies to; in force until the model's next version.
    pub effective_from: String,
    /// ISO 4217 code, e.g. `USD`.
    pub currency: String,
    /// Per million uncached prompt tokens.
    pub input_per_mtok: Amount,
    /// Per million cached prompt tokens; `input_per_mtok` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cached_input_per_mtok: Option<Amount>,
    /// Per million completion tokens (reasoning tokens included unless `reasoning_per_mtok` is given).
    pub output_per_mtok: Amount,
    /// Per million prompt tokens written to the provider's prompt cache for 5 minutes; `input_per_mtok` when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_5m_per_mtok: Option<Amount>,
    /// Per million prompt tokens written to the provider's prompt cache for an hour; `input_per_mtok` when
    /// absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub cache_write_1h_per_mtok: Option<Amount>,
    /// Per million reasoning tokens (part of the completion), charged instead of `output_per_mtok`;
    /// `output_per_mtok` when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub reasoning_per_mtok: Option<Amount>,
    /// A fixed fee per request that reached a provider (see [`PriceVersion::per_request_micros`]), in currency
    /// units (not per million); 0 when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub per_request: Option<Amount>,
}

impl PriceEntry {
    /// The admin resource id: `model@effective_from`, exactly as written (see the module docs for how it
    /// relates to [`PriceVersion::id`]).
    pub fn version_id(&self) -> String {
        format!("{}@{}", self.model, self.effective_from)
    }

    /// The validated version, or every problem of the entry, each as `{path}.{field}: …`.
    pub fn validate(&self, path: &str) -> Result<PriceVersion, Vec<String>> {
        let mut problems = Vec::new();
        let mut field = |name: &str, result: Result<u64, String>| match result {
            Ok(value) => Some(value),
            Err(problem) => {
                problems.push(format!("{path}.{name}: {problem}"));
                None
            }
        };
        let input = field("input_per_mtok", self.input_per_mtok.micros());
        let cached = match &self.cached_input_per_mtok {
            Some(value) => field("cached_input_per_mtok", value.micros()),
            None => input,
        };
        let output = field("output_per_mtok", self.output_per_mtok.micros());
        let mut optional = |name: &str, value: &Option<Amount>, default: Option<u64>| match value {
            Some(value) => field(name, value.micros()),
            None => default,
        };
        let write_5m = optional("cache_write_5m_per_mtok", &self.cache_write_5m_per_mtok, input);
        let write_1h = optional("cache_write_1h_per_mtok", &self.cache_write_1h_per_mtok, input);
        let reasoning = optional("reasoning_per_mtok", &self.reasoning_per_mtok, output);
        let per_request = match &self.per_request {
            Some(value) => field("per_request", value.fee_micros()),
            None => Some(0),
        };
        let effective = match parse_effective_from(&self.effective_from) {
            Ok(effective) => Some(effective),
            Err(problem) => {
                problems.push(format!("{path}.effective_from: {problem}"));
                None
            }
        };
        if self.model.trim().is_empty() || self.model.contains('@') {
            problems.push(format!(
                "{path}.model: `{}` must be a non-empty model name without `@`",
                self.model
            ));
        }
        if !(self.currency.len() == 3 && self.currency.bytes().all(|b| b.is_ascii_uppercase())) {
            problems.push(format!(
                "{path}.currency: `{}` is not an ISO 4217 code (three capital letters, e.g. USD)",
                self.currency
            ));
        }
        let prices = match (input, cached, output, write_5m, write_1h, reasoning, per_request) {
            (
                Some(input),
                Some(cached),
                Some(output),
                Some(write_5m),
                Some(write_1h),
                Some(reasoning),
                Some(per_request),
            ) => Some(Prices {
                input,
                cached,
                output,
                write_5m,
                write_1h,
                reasoning,
                per_request,
            }),
            _ => None,
        };
        match (effective, prices) {
            (Some((effective_from_ms, label)), Some(p)) if problems.is_empty() => Ok(PriceVersion {
                id: format!("{}@{label}", self.model),
                model: self.model.clone(),
                effective_from_ms,
                currency: self.currency.clone(),
                input_per_mtok: p.input,
                cached_input_per_mtok: p.cached,
                output_per_mtok: p.output,
                cache_write_5m_per_mtok: p.write_5m,
                cache_write_1h_per_mtok: p.write_1h,
                reasoning_per_mtok: p.reasoning,
                per_request_micros: p.per_request,
            }),
            _ => Err(problems),
        }
    }
}

/// The validated prices of an entry, before they become a [`PriceVersion`].
struct Prices {
    input: u64,
    cached: u64,
    output: u64,
    write_5m: u64,
    write_1h: u64,
    reasoning: u64,
    per_request: u64,
}

/// One version of one model's price: a [`PriceEntry`] validated, its defaults filled in.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PriceVersion {
    /// `model@effective_from`, e.g. `gpt-4o-mini@2026-01-01`, an RFC 3339 time in UTC; stored with every
    /// priced event.
    pub id: String,
    /// The served model name (or family) it prices.
    pub model: String,
    /// The first instant it applies to, epoch milliseconds.
    pub effective_from_ms: i64,
    /// ISO 4217 code, e.g. `USD`.
    pub currency: String,
    /// Micro-units per million uncached prompt tokens.
    pub input_per_mtok: u64,
    /// Micro-units per million cached prompt tokens.
    pub cached_input_per_mtok: u64,
    /// Micro-units per million completion tokens that are not reasoning tokens.
    pub output_per_mtok: u64,
    /// Micro-units per million prompt tokens written to the prompt cache for 5 minutes.
    pub cache_write_5m_per_mtok: u64,
    /// Micro-units per million prompt tokens written to the prompt cache for an hour.
    pub cache_write_1h_per_mtok: u64,
    /// Micro-units per million reasoning tokens.
    pub reasoning_per_mtok: u64,
    /// Micro-units charged once per priced event whose request was served by a provider: outcome `ok`,
    /// `client_cancelled` or `upstream_cut` — not `upstream_error` (the provider refused or could not be
    /// reached) nor `rejected_*` (no provider was asked).
    pub per_request_micros: u64,
}

impl PriceVersion {
    /// True when `other` prices the same model from the same instant at the same prices in the same currency,
    /// whatever its id says (`2026-01-01` and `2026-01-01T00:00:00Z` are one instant).
    pub fn same_price(&self, other: &Self) -> bool {
        (
            &self.model,
            self.effective_from_ms,
            &self.currency,
            self.input_per_mtok,
            self.cached_input_per_mtok,
            self.output_per_mtok,
            self.cache_write_5m_per_mtok,
            self.cache_write_1h_per_mtok,
            self.reasoning_per_mtok,
            self.per_request_micros,
        ) == (
            &other.model,
            other.effective_from_ms,
            &other.currency,
            other.input_per_mtok,
            other.cached_input_per_mtok,
            other.output_per_mtok,
            other.cache_write_5m_per_mtok,
            other.cache_write_1h_per_mtok,
            other.reasoning_per_mtok,
            other.per_request_micros,
        )
    }
}

/// Validates a list of entries one at a time: each entry's own problems, and a second version of a model in
/// force from the same instant as an earlier one. For a caller whose list also holds entries that did not even
/// parse ([`Self::problem`] reports them in place, so problems stay in list order).
#[derive(Debug, Default)]
pub struct PriceListValidator {
    versions: Vec<PriceVersion>,
    /// The path of the version in force from each (model, instant).
    first_path: HashMap<(String, i64), String>,
    problems: Vec<String>,
}

impl PriceListValidator {
    /// An empty list.
    pub fn new() -> Self {
        Self::default()
    }

    /// Validates the entry at `path` against itself and the entries before it.
    pub fn entry(&mut self, path: &str, entry: &PriceEntry) {
        let version = match entry.validate(path) {
            Ok(version) => version,
            Err(problems) => {
                self.problems.extend(problems);
                return;
            }
        };
        let instant = (version.model.clone(), version.effective_from_ms);
        match self.first_path.get(&instant) {
            Some(first) => self.problems.push(format!(
                "{path}.effective_from: `{}` has a version in force from the same instant at {first}",
                version.model
            )),
            None => {
                self.first_path.insert(instant, path.to_owned());
                self.versions.push(version);
            }
        }
    }

    /// Adds a problem found by the caller (e.g. an entry that is not a price entry at all).
    pub fn problem(&mut self, problem: String) {
        self.problems.push(problem);
    }

    /// Every version in list order, or every problem in list order.
    pub fn finish(self) -> Result<Vec<PriceVersion>, Vec<String>> {
        if self.problems.is_empty() {
            Ok(self.versions)
        } else {
            Err(self.problems)
        }
    }
}

/// Validates `entries` as one list: entry `i`'s problems are prefixed `{prefix}[{i}]`, e.g. `prices[2]`.
pub fn validate_entries(entries: &[PriceEntry], prefix: &str) -> Result<Vec<PriceVersion>, Vec<String>> {
    let mut validator = PriceListValidator::new();
    for (i, entry) in entries.iter().enumerate() {
        validator.entry(&format!("{prefix}[{i}]"), entry);
    }
    validator.finish()
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

/// Whether a price version (as stored: the JSON of its entry) is in force at `at_ms`: its `effective_from` is at
/// or before it. An unreadable `effective_from` counts as in force (the cautious answer).
pub fn in_force(price: &serde_json::Value, at_ms: i64) -> bool {
    let from = price
        .get("effective_from")
        .and_then(serde_json::Value::as_str)
        .unwrap_or_default();
    !parse_effective_from(from).is_ok_and(|(from_ms, _)| from_ms > at_ms)
}

/// The rule every change of a price version follows, judged against the version stored before it (`existing`)
/// at the change's own time `at_ms` — by the admin API before publishing, and by every reader of
/// `tollgate.config.v1` in topic order, so that all of them keep the same prices: a version never changes once
/// created, is never created in force already (back-dated: usage already billed would be priced again
/// differently on replay), and is never deleted once in force. `next` is `None` for a delete.
pub fn check_transition(
    path: &str,
    existing: Option<&serde_json::Value>,
    next: Option<&serde_json::Value>,
    at_ms: i64,
) -> Result<(), String> {
    match (existing, next) {
        (Some(existing), Some(next)) if existing == next => Ok(()),
        (Some(_), Some(_)) => Err(format!(
            "{path}: price versions never change once created; add a new version with a later effective_from"
        )),
        (None, Some(next)) if in_force(next, at_ms) => Err(format!(
            "{path}: effective_from must be later than the change ({}): a back-dated version would reprice usage already billed",
            DateTime::<Utc>::from_timestamp_millis(at_ms)
                .map_or_else(|| at_ms.to_string(), |t| t.to_rfc3339())
        )),
        (Some(existing), None) if in_force(existing, at_ms) => Err(format!(
            "{path}: a price version in force cannot be deleted; usage was billed at it"
        )),
        _ => Ok(()),
    }
}

/// `effective_from` as epoch milliseconds and its label in [`PriceVersion::id`]: a date (`2026-01-01`, midnight
/// UTC, labelled as written) or an RFC 3339 time (labelled in UTC, `2026-01-01T12:00:00Z`).
pub fn parse_effective_from(text: &str) -> Result<(i64, String), String> {
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        let midnight = date.and_hms_opt(0, 0, 0).map(|t| t.and_utc());
        return midnight
            .map(|t| (t.timestamp_millis(), date.format("%Y-%m-%d").to_string()))
            .ok_or_else(|| format!("`{text}` is out of range"));
    }
    match DateTime::parse_from_rfc3339(text) {
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
    use serde_json::json;

    fn entry(value: serde_json::Value) -> PriceEntry {
        serde_json::from_value(value).unwrap()
    }

    fn mini() -> serde_json::Value {
        json!({
            "model": "gpt-4o-mini",
            "effective_from": "2026-01-01",
            "currency": "USD",
            "input_per_mtok": "0.15",
            "cached_input_per_mtok": "0.075",
            "output_per_mtok": "0.60",
        })
    }

    #[test]
    fn an_entry_validates_into_micro_units_with_its_version_id() {
        let mini = entry(mini());
        assert_eq!(mini.version_id(), "gpt-4o-mini@2026-01-01");
        let version = mini.validate("prices/gpt-4o-mini@2026-01-01").unwrap();
        assert_eq!(
            version,
            PriceVersion {
                id: "gpt-4o-mini@2026-01-01".into(),
                model: "gpt-4o-mini".into(),
                effective_from_ms: 1_767_225_600_000,
                currency: "USD".into(),
                input_per_mtok: 150_000,
                cached_input_per_mtok: 75_000,
                output_per_mtok: 600_000,
                cache_write_5m_per_mtok: 150_000,
                cache_write_1h_per_mtok: 150_000,
                reasoning_per_mtok: 600_000,
                per_request_micros: 0,
            }
        );
        // Integers are whole units; the cached price defaults to the input price.
        let haiku = entry(json!({
            "model": "claude-haiku",
            "effective_from": "2026-06-01",
            "currency": "EUR",
            "input_per_mtok": "1",
            "output_per_mtok": 5,
        }));
        let version = haiku.validate("x").unwrap();
        assert_eq!(
            (
                version.input_per_mtok,
                version.cached_input_per_mtok,
                version.output_per_mtok
            ),
            (1_000_000, 1_000_000, 5_000_000)
        );
    }

    #[test]
    fn the_token_type_prices_and_the_fee_default_to_what_those_tokens_cost_before() {
        // Only the old fields: cache writes at the input price, reasoning at the output price, no fee.
        let old = entry(mini()).validate("p").unwrap();
        assert_eq!(
            (
                old.cache_write_5m_per_mtok,
                old.cache_write_1h_per_mtok,
                old.reasoning_per_mtok,
                old.per_request_micros
            ),
            (150_000, 150_000, 600_000, 0)
        );
        let mut sonnet = mini();
        sonnet["input_per_mtok"] = json!("3");
        sonnet["cache_write_5m_per_mtok"] = json!("3.75");
        sonnet["cache_write_1h_per_mtok"] = json!(6);
        sonnet["reasoning_per_mtok"] = json!("0.9");
        sonnet["per_request"] = json!("0.001");
        let written = entry(sonnet.clone());
        let version = written.validate("p").unwrap();
        assert_eq!(
            (
                version.input_per_mtok,
                version.cache_write_5m_per_mtok,
                version.cache_write_1h_per_mtok,
                version.reasoning_per_mtok,
                version.per_request_micros
            ),
            (3_000_000, 3_750_000, 6_000_000, 900_000, 1_000)
        );
        // They round-trip as written, and a version differing only in one of them is another price.
        assert_eq!(serde_json::to_value(&written).unwrap(), sonnet);
        assert!(!old.same_price(&PriceVersion {
            per_request_micros: 1,
            ..old.clone()
        }));
        assert!(!old.same_price(&PriceVersion {
            reasoning_per_mtok: 1,
            ..old.clone()
        }));
    }

    #[test]
    fn every_problem_of_the_new_fields_is_reported_with_its_path() {
        let mut bad = mini();
        bad["cache_write_5m_per_mtok"] = json!(3.75);
        bad["cache_write_1h_per_mtok"] = json!("6.0000001");
        bad["reasoning_per_mtok"] = json!("2000000");
        bad["per_request"] = json!("1000.000001");
        let problems = entry(bad).validate("prices[4]").unwrap_err();
        assert_eq!(
            problems,
            [
                "prices[4].cache_write_5m_per_mtok: 3.75 is a float, which cannot hold money exactly: write it \
                 as a string, e.g. \"3.75\"",
                "prices[4].cache_write_1h_per_mtok: `6.0000001` has more than 6 decimals: a micro-unit is the \
                 smallest amount",
                "prices[4].reasoning_per_mtok: 2000000.00 is above the highest price accepted, 1000000 per \
                 million tokens",
                "prices[4].per_request: 1000.000001 is above the highest price accepted, 1000 per request",
            ]
        );
        let mut top = mini();
        top["per_request"] = json!(1_000);
        assert_eq!(
            entry(top).validate("p").unwrap().per_request_micros,
            1_000_000_000
        );
        let mut negative = mini();
        negative["per_request"] = json!("-0.01");
        let problems = entry(negative).validate("p").unwrap_err();
        assert!(
            problems[0].starts_with("p.per_request: `-0.01` is not a decimal amount"),
            "{problems:?}"
        );
    }

    #[test]
    fn the_version_id_is_as_written_and_the_stored_id_is_in_utc() {
        let mut later = mini();
        later["effective_from"] = json!("2026-11-15T12:00:00+01:00");
        let later = entry(later);
        assert_eq!(later.version_id(), "gpt-4o-mini@2026-11-15T12:00:00+01:00");
        let version = later.validate("p").unwrap();
        assert_eq!(version.id, "gpt-4o-mini@2026-11-15T11:00:00Z");
        assert_eq!(version.effective_from_ms, 1_794_740_400_000);
    }

    #[test]
    fn every_problem_of_an_entry_is_reported_with_the_callers_path() {
        let bad = entry(json!({
            "model": "gpt@4o",
            "effective_from": "next week",
            "currency": "usd",
            "input_per_mtok": 0.15,
            "cached_input_per_mtok": true,
            "output_per_mtok": "0.6000001",
        }));
        let problems = bad.validate("prices/gpt@4o@next week").unwrap_err();
        let expected_starts = [
            "prices/gpt@4o@next week.input_per_mtok: 0.15 is a float, which cannot hold money exactly: write it \
             as a string, e.g. \"0.15\"",
            "prices/gpt@4o@next week.cached_input_per_mtok: expected a decimal string such as \"0.15\", got a \
             boolean",
            "prices/gpt@4o@next week.output_per_mtok: `0.6000001` has more than 6 decimals",
            "prices/gpt@4o@next week.effective_from: `next week` is neither a date",
            "prices/gpt@4o@next week.model: `gpt@4o` must be a non-empty model name without `@`",
            "prices/gpt@4o@next week.currency: `usd` is not an ISO 4217 code",
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
    fn amounts_out_of_range_are_refused() {
        for (amount, problem) in [
            (json!(-1), "-1 is not a price (negative or too large)"),
            (
                json!(u64::MAX),
                "18446744073709551615 is not a price (negative or too large)",
            ),
            (
                json!("2000000"),
                "2000000.00 is above the highest price accepted, 1000000 per million tokens",
            ),
            (
                json!(1_000_001),
                "1000001.00 is above the highest price accepted, 1000000 per million tokens",
            ),
            (
                json!(null),
                "expected a decimal string such as \"0.15\", got null",
            ),
            (
                json!(["1"]),
                "expected a decimal string such as \"0.15\", got an array",
            ),
        ] {
            let mut value = mini();
            value["output_per_mtok"] = amount.clone();
            let problems = entry(value).validate("p").unwrap_err();
            assert_eq!(problems, [format!("p.output_per_mtok: {problem}")], "{amount}");
        }
        let mut top = mini();
        top["output_per_mtok"] = json!(1_000_000);
        assert_eq!(
            entry(top).validate("p").unwrap().output_per_mtok,
            1_000_000_000_000
        );
    }

    #[test]
    fn an_entry_has_exactly_the_fields_of_a_prices_table_and_round_trips() {
        let mut extra = mini();
        extra["discount"] = json!("0.1");
        let error = serde_json::from_value::<PriceEntry>(extra)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("unknown field `discount`"), "{error}");
        let mut missing = mini();
        missing.as_object_mut().unwrap().remove("effective_from");
        let error = serde_json::from_value::<PriceEntry>(missing)
            .unwrap_err()
            .to_string();
        assert!(error.starts_with("missing field `effective_from`"), "{error}");

        let written = json!({
            "model": "m",
            "effective_from": "2026-01-01",
            "currency": "USD",
            "input_per_mtok": 3,
            "output_per_mtok": "0.5",
        });
        let parsed = entry(written.clone());
        assert_eq!(parsed.input_per_mtok, Amount::Units(3));
        assert_eq!(parsed.cached_input_per_mtok, None);
        assert_eq!(parsed.output_per_mtok, Amount::from("0.5"));
        assert_eq!(serde_json::to_value(&parsed).unwrap(), written);
    }

    #[test]
    fn a_list_refuses_two_versions_in_force_from_the_same_instant() {
        let mut same_instant = mini();
        same_instant["effective_from"] = json!("2026-01-01T01:00:00+01:00");
        let mut broken = mini();
        broken["currency"] = json!("dollars");
        let entries = [entry(mini()), entry(same_instant), entry(broken)];
        let problems = validate_entries(&entries, "prices").unwrap_err();
        assert_eq!(problems.len(), 2, "{problems:#?}");
        assert_eq!(
            problems[0],
            "prices[1].effective_from: `gpt-4o-mini` has a version in force from the same instant at prices[0]"
        );
        assert!(
            problems[1].starts_with("prices[2].currency: `dollars`"),
            "{problems:?}"
        );

        let mut later = mini();
        later["effective_from"] = json!("2026-02-01");
        let versions = validate_entries(&[entry(mini()), entry(later)], "prices").unwrap();
        let ids: Vec<_> = versions.iter().map(|v| v.id.as_str()).collect();
        assert_eq!(ids, ["gpt-4o-mini@2026-01-01", "gpt-4o-mini@2026-02-01"]);

        let mut validator = PriceListValidator::new();
        validator.problem("prices[0]: not a table".into());
        validator.entry("prices[1]", &entries[0]);
        assert_eq!(validator.finish().unwrap_err(), ["prices[0]: not a table"]);
    }

    #[test]
    fn the_same_price_ignores_how_the_instant_is_written() {
        let date = entry(mini()).validate("a").unwrap();
        let mut midnight = mini();
        midnight["effective_from"] = json!("2026-01-01T00:00:00Z");
        let midnight = entry(midnight).validate("b").unwrap();
        assert_ne!(date.id, midnight.id);
        assert!(date.same_price(&midnight));
        let dearer = PriceVersion {
            output_per_mtok: 1,
            ..midnight
        };
        assert!(!date.same_price(&dearer));
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
    fn effective_from_is_a_date_or_an_rfc3339_time_with_an_offset() {
        assert_eq!(
            parse_effective_from("2026-01-01"),
            Ok((1_767_225_600_000, "2026-01-01".to_owned()))
        );
        assert_eq!(
            parse_effective_from("2026-01-01T12:00:00.5-02:00"),
            Ok((1_767_276_000_500, "2026-01-01T14:00:00.500Z".to_owned()))
        );
        let local = parse_effective_from("2026-11-15T12:00:00").unwrap_err();
        assert!(local.starts_with("`2026-11-15T12:00:00` is neither"), "{local}");
    }
}
