//! The price table: every price version by model, and the cost of one event under it. Pure — a price file's
//! text or validated versions go in, a [`PriceTable`] comes out, and [`PriceTable::charge`] turns an event's
//! served model, time and tokens into micro-units of a currency. billing-consumer prices its ledger, its quota
//! loop's spend and its audit through here, and the gateway its budget reservations and settlements, so they all
//! agree to the micro-unit. The rules (token types, rounding, families, versions) are documented in
//! billing-consumer's `ledger::pricing`, which reads the price file and keeps the live table.

use std::collections::HashMap;

use chrono::NaiveDate;
use serde::Deserialize;

use crate::prices::{MICROS_PER_UNIT, PriceEntry, PriceListValidator, PriceVersion};
use crate::usage::Outcome;

/// The tokens of one event that a price applies to, and whether its request was served by a provider (the
/// per-request fee applies).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct TokenUsage {
    /// Prompt tokens, cached ones and cache writes included.
    pub prompt: u32,
    /// Cached prompt tokens (read from the provider's prompt cache), when the provider reported them.
    pub cached_prompt: Option<u32>,
    /// Prompt tokens written to the prompt cache for 5 minutes, when reported.
    pub cache_write_5m: Option<u32>,
    /// Prompt tokens written to the prompt cache for an hour, when reported.
    pub cache_write_1h: Option<u32>,
    /// Completion tokens, reasoning ones included.
    pub completion: u32,
    /// Of the completion, the reasoning tokens, when reported.
    pub reasoning: Option<u32>,
    /// True when the request was served by a provider ([`charges_request_fee`]): the version's `per_request`
    /// fee is added.
    pub served: bool,
}

impl TokenUsage {
    /// The tokens a usage event reports, and whether its outcome carries the per-request fee.
    pub fn of(data: &crate::usage::UsageRecorded) -> Self {
        Self {
            prompt: data.prompt_tokens,
            cached_prompt: data.cached_prompt_tokens,
            cache_write_5m: data.cache_write_5m_tokens,
            cache_write_1h: data.cache_write_1h_tokens,
            completion: data.completion_tokens,
            reasoning: data.reasoning_tokens,
            served: charges_request_fee(data.outcome),
        }
    }

    /// Cached prompt tokens, at most the prompt tokens.
    pub fn cached(&self) -> u32 {
        self.cached_prompt.unwrap_or(0).min(self.prompt)
    }

    /// 5-minute cache writes, at most the prompt tokens not cached.
    pub fn cache_write_5m(&self) -> u32 {
        self.cache_write_5m.unwrap_or(0).min(self.prompt - self.cached())
    }

    /// 1-hour cache writes, at most the prompt tokens neither cached nor 5-minute writes.
    pub fn cache_write_1h(&self) -> u32 {
        self.cache_write_1h
            .unwrap_or(0)
            .min(self.prompt - self.cached() - self.cache_write_5m())
    }

    /// Prompt tokens billed at the input price: the prompt less its cached part and its cache writes (never
    /// negative: the parts are clamped in that order so that they never exceed the prompt).
    pub fn uncached(&self) -> u32 {
        self.prompt - self.cached() - self.cache_write_5m() - self.cache_write_1h()
    }

    /// Reasoning tokens, at most the completion tokens.
    pub fn reasoning(&self) -> u32 {
        self.reasoning.unwrap_or(0).min(self.completion)
    }

    /// Completion tokens billed at the output price: the completion less its reasoning part.
    pub fn output(&self) -> u32 {
        self.completion - self.reasoning()
    }
}

/// Whether an event with this outcome is charged its price version's `per_request` fee: when a provider served
/// the request — `ok`, and `client_cancelled` and `upstream_cut`, which a provider started answering. Not
/// `upstream_error` (every attempt failed: the provider refused the request or could not be reached, and
/// providers do not bill failed requests) nor `rejected_quota`/`rejected_rate_limit` (no provider was asked).
pub fn charges_request_fee(outcome: Outcome) -> bool {
    match outcome {
        Outcome::Ok | Outcome::ClientCancelled | Outcome::UpstreamCut => true,
        Outcome::UpstreamError | Outcome::RejectedQuota | Outcome::RejectedRateLimit => false,
    }
}

/// The cost of `usage` under `version`, in micro-units of its currency: the token-weighted sum divided by a
/// million, rounded half up once, plus the per-request fee when the request was served (see the module docs).
pub fn cost_micros(version: &PriceVersion, usage: &TokenUsage) -> i64 {
    let part = |tokens: u32, price: u64| u128::from(tokens) * u128::from(price);
    let scaled = part(usage.uncached(), version.input_per_mtok)
        + part(usage.cached(), version.cached_input_per_mtok)
        + part(usage.cache_write_5m(), version.cache_write_5m_per_mtok)
        + part(usage.cache_write_1h(), version.cache_write_1h_per_mtok)
        + part(usage.output(), version.output_per_mtok)
        + part(usage.reasoning(), version.reasoning_per_mtok);
    let half = u128::from(MICROS_PER_UNIT / 2);
    let fee = if usage.served {
        u128::from(version.per_request_micros)
    } else {
        0
    };
    let micros = (scaled + half) / u128::from(MICROS_PER_UNIT) + fee;
    // The prompt's parts sum to at most u32::MAX tokens and so do the completion's, each at most
    // MAX_PRICE_UNITS per million tokens: at most 2 × u32::MAX × MAX_PRICE_UNITS units (≈ 8.6 × 10^15
    // micro-units), plus a fee of at most MAX_REQUEST_FEE_UNITS — far below i64::MAX.
    i64::try_from(micros).unwrap_or(i64::MAX)
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
    /// The table of a price file's text, or every problem, each with its path.
    pub fn from_toml(text: &str) -> Result<Self, Vec<String>> {
        let file: PricesFile = toml::from_str(text).map_err(|e| vec![e.to_string().trim_end().to_owned()])?;
        let mut validator = PriceListValidator::new();
        if file.prices.is_empty() {
            validator.problem("prices: no [[prices]] entry".to_owned());
        }
        for (i, raw) in file.prices.into_iter().enumerate() {
            let path = format!("prices[{i}]");
            match dates_as_text(raw).try_into::<PriceEntry>() {
                Ok(entry) => validator.entry(&path, &entry),
                Err(e) => validator.problem(entry_problem(&path, &e.to_string())),
            }
        }
        validator.finish().map(Self::from_versions)
    }

    /// The table of `versions`. Of two versions of one model in force from the same instant, the first is kept
    /// (a validated list has none).
    pub fn from_versions(versions: impl IntoIterator<Item = PriceVersion>) -> Self {
        let mut by_model: HashMap<String, Vec<PriceVersion>> = HashMap::new();
        for version in versions {
            let versions = by_model.entry(version.model.clone()).or_default();
            if versions
                .iter()
                .all(|v| v.effective_from_ms != version.effective_from_ms)
            {
                versions.push(version);
            }
        }
        for versions in by_model.values_mut() {
            versions.sort_by_key(|v| v.effective_from_ms);
        }
        Self { by_model }
    }

    /// This table (the price file's) plus the config topic's `price` resources (by resource id), and the
    /// problems of the resources left out, each at its resource path (`prices/gpt-4o@2026-01-01: …`): one that
    /// is not a valid price entry, or one in force from the same instant as a version already in the table at
    /// other prices (the file's, or an earlier id's) — the version already there stays. The same price written
    /// twice is no problem.
    pub fn with_resources<'a>(
        &self,
        resources: impl IntoIterator<Item = (&'a str, &'a serde_json::Value)>,
    ) -> (Self, Vec<String>) {
        let mut merged = self.clone();
        let mut problems = Vec::new();
        for (id, resource) in resources {
            let path = format!("prices/{id}");
            let version = match PriceEntry::deserialize(resource) {
                Ok(entry) => match entry.validate(&path) {
                    Ok(version) => version,
                    Err(found) => {
                        problems.extend(found);
                        continue;
                    }
                },
                Err(e) => {
                    problems.push(format!("{path}: {e}"));
                    continue;
                }
            };
            let versions = merged.by_model.entry(version.model.clone()).or_default();
            let at = versions.partition_point(|v| v.effective_from_ms < version.effective_from_ms);
            match versions
                .get(at)
                .filter(|v| v.effective_from_ms == version.effective_from_ms)
            {
                Some(kept) if kept.same_price(&version) => {}
                Some(kept) => {
                    let origin = if self.version(&kept.id).is_some() {
                        "the price file's version"
                    } else {
                        "the topic's version"
                    };
                    problems.push(format!(
                        "{path}: differs from {origin} `{}`, in force from the same instant, which is kept",
                        kept.id
                    ));
                }
                None => versions.insert(at, version),
            }
        }
        (merged, problems)
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

    /// The name whose versions price `model` (a served model): `model` itself when the table has versions of
    /// it, else its family ([`model_family`]) when the table has versions of that; `None` when neither.
    pub fn priced_as<'m>(&self, model: &'m str) -> Option<&'m str> {
        if self.by_model.contains_key(model) {
            return Some(model);
        }
        model_family(model).filter(|family| self.by_model.contains_key(*family))
    }

    /// The version pricing `model` (a served model) at `at_ms` (epoch milliseconds): of the versions of
    /// [`PriceTable::priced_as`], the latest one that took effect at or before it.
    pub fn in_force(&self, model: &str, at_ms: u64) -> Option<&PriceVersion> {
        let at = i64::try_from(at_ms).unwrap_or(i64::MAX);
        let versions = self.by_model.get(self.priced_as(model)?)?;
        let after = versions.partition_point(|v| v.effective_from_ms <= at);
        after.checked_sub(1).and_then(|i| versions.get(i))
    }

    /// Prices one event: `usage` of `model` (its `model_served`) at `at_ms` (its `finished_at_ms`), by the
    /// version [`PriceTable::in_force`] finds.
    pub fn charge(&self, model: &str, at_ms: u64, usage: &TokenUsage) -> Charge<'_> {
        match self.in_force(model, at_ms) {
            Some(version) => Charge {
                version: Some(version),
                cost_micros: cost_micros(version, usage),
            },
            None => Charge {
                version: None,
                cost_micros: 0,
            },
        }
    }
}

/// The family of a model name: the name without a trailing dated-snapshot suffix — `-YYYY-MM-DD`
/// (`gpt-4o-mini-2024-07-18` → `gpt-4o-mini`), `-YYYYMMDD` (`claude-3-5-sonnet-20241022` →
/// `claude-3-5-sonnet`), `@YYYYMMDD` or `@YYYY-MM-DD` (`claude-3-5-sonnet-v2@20241022`), or `-latest`
/// (`claude-3-5-haiku-latest`). The date must be a real calendar date. `None` when the name has no such suffix
/// or nothing before it: digits elsewhere in a name (`gpt-4.1-mini`, `llama-3-70b`, `gpt-4-0613`) are not a
/// snapshot. One suffix is removed, once.
pub fn model_family(model: &str) -> Option<&str> {
    let family = model.strip_suffix("-latest").or_else(|| {
        // `YYYY-MM-DD` (10 characters) or `YYYYMMDD` (8), after a `-` or an `@`.
        [10, 8].into_iter().find_map(|date_len| {
            let start = model.len().checked_sub(date_len + 1)?;
            let family = model.get(..start)?;
            let date = model.get(start + 1..)?;
            let separated = matches!(model.as_bytes().get(start), Some(b'-' | b'@'));
            (separated && is_snapshot_date(date)).then_some(family)
        })
    })?;
    (!family.is_empty()).then_some(family)
}

/// True for `YYYY-MM-DD` or `YYYYMMDD` naming a real calendar date.
fn is_snapshot_date(text: &str) -> bool {
    let bytes = text.as_bytes();
    let (year, month, day) = match bytes.len() {
        8 => (text.get(0..4), text.get(4..6), text.get(6..8)),
        10 if bytes.get(4) == Some(&b'-') && bytes.get(7) == Some(&b'-') => {
            (text.get(0..4), text.get(5..7), text.get(8..10))
        }
        _ => return false,
    };
    let number = |part: Option<&str>| {
        part.filter(|p| p.bytes().all(|b| b.is_ascii_digit()))
            .and_then(|p| p.parse::<u32>().ok())
    };
    match (number(year), number(month), number(day)) {
        (Some(year), Some(month), Some(day)) => i32::try_from(year)
            .ok()
            .and_then(|year| NaiveDate::from_ymd_opt(year, month, day))
            .is_some(),
        _ => false,
    }
}

/// The file: `[[prices]]` entries and nothing else.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PricesFile {
    #[serde(default)]
    prices: Vec<toml::Value>,
}

/// An entry with its TOML date/time literals (`effective_from = 2026-06-01`) as the text they are written as,
/// which is what a [`PriceEntry`] holds.
fn dates_as_text(raw: toml::Value) -> toml::Value {
    match raw {
        toml::Value::Table(table) => toml::Value::Table(
            table
                .into_iter()
                .map(|(key, value)| match value {
                    toml::Value::Datetime(datetime) => (key, toml::Value::String(datetime.to_string())),
                    other => (key, other),
                })
                .collect(),
        ),
        other => other,
    }
}

/// A problem of the entry at `path` that did not parse, at its field's path when the parser names the field
/// (a wrong type does: `prices[1].model: invalid type: integer `3`, expected a string`).
fn entry_problem(path: &str, message: &str) -> String {
    let message = message.trim_end();
    let field = message
        .rsplit_once("\nin `")
        .and_then(|(problem, field)| Some((problem, field.strip_suffix('`')?)));
    match field {
        Some((problem, field)) => format!("{path}.{field}: {problem}"),
        None => format!("{path}: {message}"),
    }
}
