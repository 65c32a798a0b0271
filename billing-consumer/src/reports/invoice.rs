//! Invoices read from the ledger: one consumer's — or one team's, or one organisation's ([`Billed`]) — calendar
//! month (UTC, by event time), a line item per served model (`model_served`, the model that answered and was
//! priced) and price version, and a total per currency. A team's invoice sums the events its consumers made while
//! they were in it (the team stamped into each event when the request was made), so the invoices of a team's
//! consumers for their time in it add up exactly to the team's, and a team's to its organisation's.
//!
//! Every number is a sum over the month's events counted once (`FINAL` collapses redelivered events), and an
//! amount is the sum of the events' stored `cost_micros` — each event priced and rounded once at ingest
//! ([`crate::ledger::pricing`]) — so replaying the month through the same prices reproduces every micro-unit. Unit
//! prices are shown from the price table when it is given and knows the version; they explain the amount but do
//! not recompute it (a line's amount differs from tokens × unit price by the per-event rounding, at most half a
//! micro-unit per event).
//!
//! Token columns are the parts each charged at one price, as [`crate::ledger::pricing::TokenUsage`] splits an
//! event: `input_tokens` (the prompt less its cached part and cache writes), `cached_input_tokens`,
//! `cache_write_5m_tokens`, `cache_write_1h_tokens` (together the prompt), `output_tokens` (the completion less
//! its reasoning part) and `reasoning_tokens` (together the completion). For events without reasoning or cache
//! writes — every event written before they were reported — the columns are what they always were.
//!
//! Events with no price in force are lines of their own (no price version, no currency, amount 0) and are
//! counted apart from the totals. Shown as a table ([`Invoice::to_table`]), JSON (through `Serialize`, amounts
//! as exact decimal strings beside their micro-units) or CSV ([`Invoice::to_csv`]).

use std::fmt::Write as _;

use chrono::{DateTime, Datelike as _, NaiveDate, SecondsFormat, Utc};
use serde::Serialize;

use crate::error::BillingError;
use crate::ledger::pricing::{PriceTable, format_micros};
use crate::ledger::{ClickHouseSettings, plain_identifier};
use crate::reports::table::{Align, Table};

/// A calendar month, UTC: the period of an invoice.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Period {
    /// First day of the month.
    first_day: NaiveDate,
}

impl Period {
    /// Reads `2026-11`.
    pub fn parse(input: &str) -> Result<Self, BillingError> {
        let invalid = || BillingError::InvalidPeriod {
            input: input.to_owned(),
        };
        let (year, month) = input.trim().split_once('-').ok_or_else(invalid)?;
        if year.len() != 4 || month.len() != 2 {
            return Err(invalid());
        }
        let year: i32 = year.parse().map_err(|_| invalid())?;
        let month: u32 = month.parse().map_err(|_| invalid())?;
        let first_day = NaiveDate::from_ymd_opt(year, month, 1).ok_or_else(invalid)?;
        Ok(Self { first_day })
    }

    /// The first instant of the month.
    pub fn start(&self) -> DateTime<Utc> {
        self.first_day.and_time(chrono::NaiveTime::MIN).and_utc()
    }

    /// The first instant of the next month (excluded).
    pub fn end(&self) -> DateTime<Utc> {
        let next = self
            .first_day
            .checked_add_months(chrono::Months::new(1))
            .unwrap_or(NaiveDate::MAX);
        next.and_time(chrono::NaiveTime::MIN).and_utc()
    }
}

impl std::fmt::Display for Period {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{:04}-{:02}", self.first_day.year(), self.first_day.month())
    }
}

impl Serialize for Period {
    fn serialize<S: serde::Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        serializer.collect_str(self)
    }
}

/// Whose invoice: a consumer's, a team's or an organisation's — the ledger column it selects by.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "kind", content = "name", rename_all = "snake_case")]
pub enum Billed {
    Consumer(String),
    Team(String),
    Organization(String),
}

impl Billed {
    /// The `usage_events` column holding the name.
    pub(crate) fn column(&self) -> &'static str {
        match self {
            Self::Consumer(_) => "consumer_id",
            Self::Team(_) => "team",
            Self::Organization(_) => "organization",
        }
    }

    pub fn name(&self) -> &str {
        match self {
            Self::Consumer(name) | Self::Team(name) | Self::Organization(name) => name,
        }
    }

    pub fn kind(&self) -> &'static str {
        match self {
            Self::Consumer(_) => "consumer",
            Self::Team(_) => "team",
            Self::Organization(_) => "organization",
        }
    }
}

/// One line of the ledger query.
#[derive(Debug, Clone, PartialEq, Eq, serde::Deserialize, clickhouse::Row)]
struct LedgerLine {
    model: String,
    price_version: String,
    currency: String,
    requests: u64,
    input_tokens: u64,
    cached_input_tokens: u64,
    output_tokens: u64,
    cache_write_5m_tokens: u64,
    cache_write_1h_tokens: u64,
    reasoning_tokens: u64,
    amount_micros: i64,
}

/// Prices per million tokens (and per request), as exact decimals of the currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UnitPrices {
    /// Per million uncached prompt tokens.
    pub input_per_mtok: String,
    /// Per million cached prompt tokens.
    pub cached_input_per_mtok: String,
    /// Per million completion tokens that are not reasoning tokens.
    pub output_per_mtok: String,
    /// Per million prompt tokens written to the prompt cache for 5 minutes.
    pub cache_write_5m_per_mtok: String,
    /// Per million prompt tokens written to the prompt cache for an hour.
    pub cache_write_1h_per_mtok: String,
    /// Per million reasoning tokens.
    pub reasoning_per_mtok: String,
    /// The fee per request served by a provider.
    pub per_request: String,
}

/// One line item: a served model under one price version.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct LineItem {
    /// The served model (`model_served`): the model that answered, which the price is for.
    pub model: String,
    /// The price version (`model@effective_from`); `""` for events with no price in force.
    pub price_version: String,
    /// ISO 4217 code; `""` when unpriced.
    pub currency: String,
    /// Requests (events).
    pub requests: u64,
    /// Prompt tokens billed at the input price (the prompt less its cached part and cache writes).
    pub input_tokens: u64,
    /// Cached prompt tokens.
    pub cached_input_tokens: u64,
    /// Completion tokens billed at the output price (the completion less its reasoning part).
    pub output_tokens: u64,
    /// Prompt tokens written to the prompt cache for 5 minutes.
    pub cache_write_5m_tokens: u64,
    /// Prompt tokens written to the prompt cache for an hour.
    pub cache_write_1h_tokens: u64,
    /// Reasoning tokens (of the completion).
    pub reasoning_tokens: u64,
    /// The version's unit prices, when the price table given knows it.
    pub unit_prices: Option<UnitPrices>,
    /// The sum of the events' costs, in micro-units of `currency`.
    pub amount_micros: i64,
    /// The same, as an exact decimal (`12.345678`).
    pub amount: String,
}

/// The sum of the line items in one currency.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct CurrencyTotal {
    /// ISO 4217 code.
    pub currency: String,
    /// Requests (events).
    pub requests: u64,
    /// Prompt tokens billed at the input price.
    pub input_tokens: u64,
    /// Cached prompt tokens.
    pub cached_input_tokens: u64,
    /// Completion tokens billed at the output price.
    pub output_tokens: u64,
    /// Prompt tokens written to the prompt cache for 5 minutes.
    pub cache_write_5m_tokens: u64,
    /// Prompt tokens written to the prompt cache for an hour.
    pub cache_write_1h_tokens: u64,
    /// Reasoning tokens.
    pub reasoning_tokens: u64,
    /// Micro-units of `currency`.
    pub amount_micros: i64,
    /// The same, as an exact decimal.
    pub amount: String,
}

/// One consumer's (team's, organisation's) invoice for one month.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Invoice {
    /// The consumer id; for a team's or an organisation's invoice, `""` (see `billed`).
    pub consumer: String,
    /// Whose invoice it is.
    pub billed: Billed,
    /// The month.
    pub period: Period,
    /// Its first instant (included).
    pub from: DateTime<Utc>,
    /// The first instant of the next month (excluded).
    pub to: DateTime<Utc>,
    /// By model, then price version.
    pub lines: Vec<LineItem>,
    /// By currency; unpriced lines are not in any.
    pub totals: Vec<CurrencyTotal>,
    /// Requests with no price in force (their lines have amount 0).
    pub unpriced_requests: u64,
}

/// Reads `consumer`'s invoice for `period` from `usage_events`; unit prices come from `prices` when given.
pub async fn invoice(
    ch: &ClickHouseSettings,
    consumer: &str,
    period: Period,
    prices: Option<&PriceTable>,
) -> Result<Invoice, BillingError> {
    invoice_from(ch, crate::ledger::store::USAGE_TABLE, consumer, period, prices).await
}

/// Reads `consumer`'s invoice for `period` from `table` (`usage_events`, or a table written by `rebuild`).
pub async fn invoice_from(
    ch: &ClickHouseSettings,
    table: &str,
    consumer: &str,
    period: Period,
    prices: Option<&PriceTable>,
) -> Result<Invoice, BillingError> {
    invoice_of(ch, table, &Billed::Consumer(consumer.to_owned()), period, prices).await
}

/// Reads the invoice of `billed` — a consumer, a team or an organisation — for `period` from `table`.
pub async fn invoice_of(
    ch: &ClickHouseSettings,
    table: &str,
    billed: &Billed,
    period: Period,
    prices: Option<&PriceTable>,
) -> Result<Invoice, BillingError> {
    let table = plain_identifier(table, "table")?;
    let column = billed.column();
    // The month's events of one consumer (team, organisation), once each, by served model, price version and
    // currency, the tokens split into the parts pricing charges (each clamped to what is left of its whole, as in
    // pricing).
    let parts = TokenParts::sql();
    let sql = format!(
        "SELECT model_served, price_version, currency, count(), \
         toUInt64(sum({input})), toUInt64(sum({cached})), toUInt64(sum({output})), \
         toUInt64(sum({write_5m})), toUInt64(sum({write_1h})), toUInt64(sum({reasoning})), sum(cost_micros) \
         FROM {table} FINAL \
         WHERE {column} = ? AND event_time >= toDateTime(?) AND event_time < toDateTime(?) \
         GROUP BY model_served, price_version, currency \
         ORDER BY model_served, price_version, currency",
        input = parts.input,
        cached = parts.cached,
        output = parts.output,
        write_5m = parts.write_5m,
        write_1h = parts.write_1h,
        reasoning = parts.reasoning,
    );
    let seconds = |t: DateTime<Utc>| crate::ledger::store::datetime_seconds(t).unwrap_or(u32::MAX);
    let lines = ch
        .client()
        .query(&sql)
        .bind(billed.name())
        .bind(seconds(period.start()))
        .bind(seconds(period.end()))
        .fetch_all::<LedgerLine>()
        .await
        .map_err(BillingError::clickhouse("read invoice lines"))?;
    let invoice = Invoice::new(billed.clone(), period, lines, prices);
    for line in invoice
        .lines
        .iter()
        .filter(|l| !l.price_version.is_empty() && l.unit_prices.is_none())
    {
        tracing::warn!(
            price_version = %line.price_version,
            "The price table given does not have this version; its unit prices are not shown."
        );
    }
    Ok(invoice)
}

/// The ledger's token columns split as [`crate::ledger::pricing::TokenUsage`] splits an event, as ClickHouse
/// expressions over one row: every part clamped to what is left of its whole, in pricing's order.
struct TokenParts {
    input: String,
    cached: String,
    write_5m: String,
    write_1h: String,
    output: String,
    reasoning: String,
}

impl TokenParts {
    fn sql() -> Self {
        let cached = "least(ifNull(cached_prompt_tokens, 0), prompt_tokens)".to_owned();
        let write_5m = format!("least(ifNull(cache_write_5m_tokens, 0), prompt_tokens - {cached})");
        let write_1h =
            format!("least(ifNull(cache_write_1h_tokens, 0), prompt_tokens - {cached} - {write_5m})");
        let input = format!("prompt_tokens - {cached} - {write_5m} - {write_1h}");
        let reasoning = "least(ifNull(reasoning_tokens, 0), completion_tokens)".to_owned();
        let output = format!("completion_tokens - {reasoning}");
        Self {
            input,
            cached,
            write_5m,
            write_1h,
            output,
            reasoning,
        }
    }
}

impl Invoice {
    fn new(billed: Billed, period: Period, ledger: Vec<LedgerLine>, prices: Option<&PriceTable>) -> Self {
        let mut totals: Vec<CurrencyTotal> = Vec::new();
        let mut unpriced_requests = 0;
        let mut lines = Vec::with_capacity(ledger.len());
        for line in ledger {
            if line.price_version.is_empty() {
                unpriced_requests += line.requests;
            } else {
                let total = match totals.iter_mut().position(|t| t.currency == line.currency) {
                    Some(i) => &mut totals[i],
                    None => {
                        totals.push(CurrencyTotal {
                            currency: line.currency.clone(),
                            requests: 0,
                            input_tokens: 0,
                            cached_input_tokens: 0,
                            output_tokens: 0,
                            cache_write_5m_tokens: 0,
                            cache_write_1h_tokens: 0,
                            reasoning_tokens: 0,
                            amount_micros: 0,
                            amount: String::new(),
                        });
                        let last = totals.len() - 1;
                        &mut totals[last]
                    }
                };
                total.requests += line.requests;
                total.input_tokens += line.input_tokens;
                total.cached_input_tokens += line.cached_input_tokens;
                total.output_tokens += line.output_tokens;
                total.cache_write_5m_tokens += line.cache_write_5m_tokens;
                total.cache_write_1h_tokens += line.cache_write_1h_tokens;
                total.reasoning_tokens += line.reasoning_tokens;
                total.amount_micros = total.amount_micros.saturating_add(line.amount_micros);
            }
            let unit_prices = prices
                .and_then(|table| table.version(&line.price_version))
                .map(|v| UnitPrices {
                    input_per_mtok: format_micros(micros(v.input_per_mtok)),
                    cached_input_per_mtok: format_micros(micros(v.cached_input_per_mtok)),
                    output_per_mtok: format_micros(micros(v.output_per_mtok)),
                    cache_write_5m_per_mtok: format_micros(micros(v.cache_write_5m_per_mtok)),
                    cache_write_1h_per_mtok: format_micros(micros(v.cache_write_1h_per_mtok)),
                    reasoning_per_mtok: format_micros(micros(v.reasoning_per_mtok)),
                    per_request: format_micros(micros(v.per_request_micros)),
                });
            lines.push(LineItem {
                amount: format_micros(line.amount_micros),
                model: line.model,
                price_version: line.price_version,
                currency: line.currency,
                requests: line.requests,
                input_tokens: line.input_tokens,
                cached_input_tokens: line.cached_input_tokens,
                output_tokens: line.output_tokens,
                cache_write_5m_tokens: line.cache_write_5m_tokens,
                cache_write_1h_tokens: line.cache_write_1h_tokens,
                reasoning_tokens: line.reasoning_tokens,
                unit_prices,
                amount_micros: line.amount_micros,
            });
        }
        totals.sort_by(|a, b| a.currency.cmp(&b.currency));
        for total in &mut totals {
            total.amount = format_micros(total.amount_micros);
        }
        Self {
            consumer: match &billed {
                Billed::Consumer(name) => name.clone(),
                Billed::Team(_) | Billed::Organization(_) => String::new(),
            },
            billed,
            period,
            from: period.start(),
            to: period.end(),
            lines,
            totals,
            unpriced_requests,
        }
    }

    /// A heading, an aligned table of the line items with a total line per currency, and a note on unpriced
    /// requests when there are any.
    pub fn to_table(&self) -> String {
        let mut out = String::new();
        let _ = writeln!(
            out,
            "Invoice for {}, {} ({} to {}, by event time)",
            match &self.billed {
                Billed::Consumer(name) => name.clone(),
                other => format!("{} {}", other.kind(), other.name()),
            },
            self.period,
            self.from.to_rfc3339_opts(SecondsFormat::Secs, true),
            self.to.to_rfc3339_opts(SecondsFormat::Secs, true)
        );
        let mut table = Table::new(&[
            ("model", Align::Left),
            ("price_version", Align::Left),
            ("requests", Align::Right),
            ("input_tokens", Align::Right),
            ("cached_input_tokens", Align::Right),
            ("cache_write_5m_tokens", Align::Right),
            ("cache_write_1h_tokens", Align::Right),
            ("output_tokens", Align::Right),
            ("reasoning_tokens", Align::Right),
            ("input/Mtok", Align::Right),
            ("cached/Mtok", Align::Right),
            ("write5m/Mtok", Align::Right),
            ("write1h/Mtok", Align::Right),
            ("output/Mtok", Align::Right),
            ("reasoning/Mtok", Align::Right),
            ("per request", Align::Right),
            ("currency", Align::Left),
            ("amount", Align::Right),
        ]);
        for line in &self.lines {
            let unknown = if line.price_version.is_empty() { "-" } else { "?" };
            let unit = |pick: fn(&UnitPrices) -> &String| {
                line.unit_prices
                    .as_ref()
                    .map_or(unknown.to_owned(), |u| pick(u).clone())
            };
            table.row(vec![
                line.model.clone(),
                if line.price_version.is_empty() {
                    "(unpriced)".to_owned()
                } else {
                    line.price_version.clone()
                },
                line.requests.to_string(),
                line.input_tokens.to_string(),
                line.cached_input_tokens.to_string(),
                line.cache_write_5m_tokens.to_string(),
                line.cache_write_1h_tokens.to_string(),
                line.output_tokens.to_string(),
                line.reasoning_tokens.to_string(),
                unit(|u| &u.input_per_mtok),
                unit(|u| &u.cached_input_per_mtok),
                unit(|u| &u.cache_write_5m_per_mtok),
                unit(|u| &u.cache_write_1h_per_mtok),
                unit(|u| &u.output_per_mtok),
                unit(|u| &u.reasoning_per_mtok),
                unit(|u| &u.per_request),
                if line.currency.is_empty() {
                    "-".to_owned()
                } else {
                    line.currency.clone()
                },
                line.amount.clone(),
            ]);
        }
        for total in &self.totals {
            table.footer(vec![
                "total".to_owned(),
                String::new(),
                total.requests.to_string(),
                total.input_tokens.to_string(),
                total.cached_input_tokens.to_string(),
                total.cache_write_5m_tokens.to_string(),
                total.cache_write_1h_tokens.to_string(),
                total.output_tokens.to_string(),
                total.reasoning_tokens.to_string(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                String::new(),
                total.currency.clone(),
                total.amount.clone(),
            ]);
        }
        if self.totals.is_empty() {
            table.footer(vec!["total".to_owned(), String::new(), "0".to_owned()]);
        }
        out.push_str(&table.render());
        if self.unpriced_requests > 0 {
            let _ = writeln!(
                out,
                "{} request(s) had no price in force and are not in the totals.",
                self.unpriced_requests
            );
        }
        out
    }

    /// CSV with a header: one record per line item, then one per currency total (model `total`, no price
    /// version, no unit prices). Unit prices are empty when unknown. The columns of reasoning, cache writes and
    /// the per-request fee come after `amount`, so that the columns before it keep their positions.
    pub fn to_csv(&self) -> Result<String, BillingError> {
        let mut writer = csv::Writer::from_writer(Vec::new());
        let failed = |e: csv::Error| BillingError::Output(e.to_string());
        writer
            .write_record([
                "consumer",
                "period",
                "model",
                "price_version",
                "currency",
                "requests",
                "input_tokens",
                "cached_input_tokens",
                "output_tokens",
                "input_per_mtok",
                "cached_input_per_mtok",
                "output_per_mtok",
                "amount",
                "cache_write_5m_tokens",
                "cache_write_1h_tokens",
                "reasoning_tokens",
                "cache_write_5m_per_mtok",
                "cache_write_1h_per_mtok",
                "reasoning_per_mtok",
                "per_request",
            ])
            .map_err(failed)?;
        let period = self.period.to_string();
        for line in &self.lines {
            let unit = |pick: fn(&UnitPrices) -> &String| {
                line.unit_prices
                    .as_ref()
                    .map_or(String::new(), |u| pick(u).clone())
            };
            writer
                .write_record([
                    self.consumer.clone(),
                    period.clone(),
                    line.model.clone(),
                    line.price_version.clone(),
                    line.currency.clone(),
                    line.requests.to_string(),
                    line.input_tokens.to_string(),
                    line.cached_input_tokens.to_string(),
                    line.output_tokens.to_string(),
                    unit(|u| &u.input_per_mtok),
                    unit(|u| &u.cached_input_per_mtok),
                    unit(|u| &u.output_per_mtok),
                    line.amount.clone(),
                    line.cache_write_5m_tokens.to_string(),
                    line.cache_write_1h_tokens.to_string(),
                    line.reasoning_tokens.to_string(),
                    unit(|u| &u.cache_write_5m_per_mtok),
                    unit(|u| &u.cache_write_1h_per_mtok),
                    unit(|u| &u.reasoning_per_mtok),
                    unit(|u| &u.per_request),
                ])
                .map_err(failed)?;
        }
        for total in &self.totals {
            writer
                .write_record([
                    self.consumer.clone(),
                    period.clone(),
                    "total".to_owned(),
                    String::new(),
                    total.currency.clone(),
                    total.requests.to_string(),
                    total.input_tokens.to_string(),
                    total.cached_input_tokens.to_string(),
                    total.output_tokens.to_string(),
                    String::new(),
                    String::new(),
                    String::new(),
                    total.amount.clone(),
                    total.cache_write_5m_tokens.to_string(),
                    total.cache_write_1h_tokens.to_string(),
                    total.reasoning_tokens.to_string(),
                    String::new(),
                    String::new(),
                    String::new(),
                    String::new(),
                ])
                .map_err(failed)?;
        }
        let bytes = writer
            .into_inner()
            .map_err(|e| BillingError::Output(e.to_string()))?;
        String::from_utf8(bytes).map_err(|e| BillingError::Output(e.to_string()))
    }
}

/// A price in micro-units as the signed amount [`format_micros`] renders (prices are capped far below
/// `i64::MAX`).
fn micros(price: u64) -> i64 {
    i64::try_from(price).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn a_period_is_a_calendar_month_in_utc() {
        let november = Period::parse("2026-11").unwrap();
        assert_eq!(november.start(), utc("2026-11-01T00:00:00Z"));
        assert_eq!(november.end(), utc("2026-12-01T00:00:00Z"));
        assert_eq!(november.to_string(), "2026-11");
        let december = Period::parse("2026-12").unwrap();
        assert_eq!(december.end(), utc("2027-01-01T00:00:00Z"));
        assert_eq!(
            Period::parse("2028-02").unwrap().end(),
            utc("2028-03-01T00:00:00Z")
        );
        for bad in [
            "",
            "2026",
            "2026-13",
            "2026-00",
            "2026-1",
            "26-11",
            "2026-11-01",
            "2026/11",
            "november",
        ] {
            assert_eq!(Period::parse(bad).unwrap_err().kind(), "invalid_period", "{bad}");
        }
    }

    const PRICES: &str = r#"
        [[prices]]
        model = "gpt-4o-mini"
        effective_from = "2026-01-01"
        currency = "USD"
        input_per_mtok = "0.15"
        cached_input_per_mtok = "0.075"
        output_per_mtok = "0.60"

        [[prices]]
        model = "llama-3"
        effective_from = "2026-01-01"
        currency = "EUR"
        input_per_mtok = "1"
        output_per_mtok = "2"

        [[prices]]
        model = "claude-sonnet-4-5"
        effective_from = "2026-01-01"
        currency = "USD"
        input_per_mtok = "3"
        cached_input_per_mtok = "0.30"
        cache_write_5m_per_mtok = "3.75"
        cache_write_1h_per_mtok = "6"
        output_per_mtok = "15"
        reasoning_per_mtok = "15"
        per_request = "0.001"
    "#;

    #[allow(clippy::too_many_arguments)]
    fn ledger(
        model: &str,
        version: &str,
        currency: &str,
        requests: u64,
        input: u64,
        cached: u64,
        output: u64,
        amount: i64,
    ) -> LedgerLine {
        LedgerLine {
            model: model.into(),
            price_version: version.into(),
            currency: currency.into(),
            requests,
            input_tokens: input,
            cached_input_tokens: cached,
            output_tokens: output,
            cache_write_5m_tokens: 0,
            cache_write_1h_tokens: 0,
            reasoning_tokens: 0,
            amount_micros: amount,
        }
    }

    fn sample(prices: Option<&PriceTable>) -> Invoice {
        // 2 requests: 400 input, 100 cached, 200 + 300 cache writes, 350 output and 150 reasoning tokens:
        // 400 × 3 + 100 × 0.30 + 200 × 3.75 + 300 × 6 + 350 × 15 + 150 × 15 = 11,280 + 2 × 1,000 in fees.
        let sonnet = LedgerLine {
            cache_write_5m_tokens: 200,
            cache_write_1h_tokens: 300,
            reasoning_tokens: 150,
            ..ledger(
                "claude-sonnet-4-5",
                "claude-sonnet-4-5@2026-01-01",
                "USD",
                2,
                400,
                100,
                350,
                13_280,
            )
        };
        Invoice::new(
            Billed::Consumer("team-a".to_owned()),
            Period::parse("2026-11").unwrap(),
            vec![
                ledger(
                    "gpt-4o-mini",
                    "gpt-4o-mini@2026-01-01",
                    "USD",
                    3,
                    1_000_000,
                    2_000,
                    500_000,
                    450_151,
                ),
                ledger("gpt-4o-mini", "gpt-4o-mini@2026-11-15", "USD", 1, 10, 0, 5, 4),
                ledger("llama-3", "", "", 2, 70, 0, 30, 0),
                ledger(
                    "llama-3",
                    "llama-3@2026-01-01",
                    "EUR",
                    1,
                    1_000_000,
                    0,
                    0,
                    1_000_000,
                ),
                sonnet,
            ],
            prices,
        )
    }

    #[test]
    fn totals_are_per_currency_and_unpriced_requests_apart() {
        let invoice = sample(None);
        let totals: Vec<_> = invoice
            .totals
            .iter()
            .map(|t| {
                (
                    t.currency.as_str(),
                    t.requests,
                    t.amount_micros,
                    t.amount.as_str(),
                )
            })
            .collect();
        assert_eq!(
            totals,
            [("EUR", 1, 1_000_000, "1.00"), ("USD", 6, 463_435, "0.463435")]
        );
        // Every token type adds up by itself.
        let usd = &invoice.totals[1];
        assert_eq!(
            (
                usd.input_tokens,
                usd.cached_input_tokens,
                usd.cache_write_5m_tokens,
                usd.cache_write_1h_tokens,
                usd.output_tokens,
                usd.reasoning_tokens
            ),
            (1_000_410, 2_100, 200, 300, 500_355, 150)
        );
        assert_eq!(invoice.unpriced_requests, 2);
        assert_eq!(invoice.lines[2].amount, "0.00");
        assert_eq!(invoice.lines[0].unit_prices, None, "no price table given");
    }

    #[test]
    fn the_table_shows_unit_prices_from_the_price_table() {
        let prices = PriceTable::from_toml(PRICES).unwrap();
        let table = sample(Some(&prices)).to_table();
        let expected = "\
Invoice for team-a, 2026-11 (2026-11-01T00:00:00Z to 2026-12-01T00:00:00Z, by event time)
model              price_version                 requests  input_tokens  cached_input_tokens  cache_write_5m_tokens  cache_write_1h_tokens  output_tokens  reasoning_tokens  input/Mtok  cached/Mtok  write5m/Mtok  write1h/Mtok  output/Mtok  reasoning/Mtok  per request  currency    amount
gpt-4o-mini        gpt-4o-mini@2026-01-01               3       1000000                 2000                      0                      0         500000                 0        0.15        0.075          0.15          0.15         0.60            0.60         0.00  USD       0.450151
gpt-4o-mini        gpt-4o-mini@2026-11-15               1            10                    0                      0                      0              5                 0           ?            ?             ?             ?            ?               ?            ?  USD       0.000004
llama-3            (unpriced)                           2            70                    0                      0                      0             30                 0           -            -             -             -            -               -            -  -             0.00
llama-3            llama-3@2026-01-01                   1       1000000                    0                      0                      0              0                 0        1.00         1.00          1.00          1.00         2.00            2.00         0.00  EUR           1.00
claude-sonnet-4-5  claude-sonnet-4-5@2026-01-01         2           400                  100                    200                    300            350               150        3.00         0.30          3.75          6.00        15.00           15.00        0.001  USD        0.01328
----------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------------
total                                                   1       1000000                    0                      0                      0              0                 0                                                                                                 EUR           1.00
total                                                   6       1000410                 2100                    200                    300         500355               150                                                                                                 USD       0.463435
2 request(s) had no price in force and are not in the totals.
";
        assert_eq!(table, expected);
    }

    #[test]
    fn json_carries_exact_amounts_beside_micro_units() {
        let prices = PriceTable::from_toml(PRICES).unwrap();
        let json = serde_json::to_value(sample(Some(&prices))).unwrap();
        assert_eq!(json["period"], "2026-11");
        assert_eq!(json["from"], "2026-11-01T00:00:00Z");
        assert_eq!(json["lines"][0]["amount"], "0.450151");
        assert_eq!(json["lines"][0]["amount_micros"], 450_151);
        assert_eq!(json["lines"][0]["unit_prices"]["cached_input_per_mtok"], "0.075");
        assert_eq!(json["lines"][1]["unit_prices"], serde_json::Value::Null);
        assert_eq!(json["totals"][1]["currency"], "USD");
        assert_eq!(json["totals"][1]["amount"], "0.463435");
        let sonnet = &json["lines"][4];
        assert_eq!(
            (
                &sonnet["cache_write_5m_tokens"],
                &sonnet["cache_write_1h_tokens"],
                &sonnet["reasoning_tokens"]
            ),
            (
                &serde_json::json!(200),
                &serde_json::json!(300),
                &serde_json::json!(150)
            )
        );
        assert_eq!(sonnet["unit_prices"]["cache_write_5m_per_mtok"], "3.75");
        assert_eq!(sonnet["unit_prices"]["cache_write_1h_per_mtok"], "6.00");
        assert_eq!(sonnet["unit_prices"]["reasoning_per_mtok"], "15.00");
        assert_eq!(sonnet["unit_prices"]["per_request"], "0.001");
        assert_eq!(json["unpriced_requests"], 2);
    }

    #[test]
    fn csv_has_a_record_per_line_and_per_total() {
        let prices = PriceTable::from_toml(PRICES).unwrap();
        let csv = sample(Some(&prices)).to_csv().unwrap();
        let expected = "\
consumer,period,model,price_version,currency,requests,input_tokens,cached_input_tokens,output_tokens,input_per_mtok,cached_input_per_mtok,output_per_mtok,amount,cache_write_5m_tokens,cache_write_1h_tokens,reasoning_tokens,cache_write_5m_per_mtok,cache_write_1h_per_mtok,reasoning_per_mtok,per_request
team-a,2026-11,gpt-4o-mini,gpt-4o-mini@2026-01-01,USD,3,1000000,2000,500000,0.15,0.075,0.60,0.450151,0,0,0,0.15,0.15,0.60,0.00
team-a,2026-11,gpt-4o-mini,gpt-4o-mini@2026-11-15,USD,1,10,0,5,,,,0.000004,0,0,0,,,,
team-a,2026-11,llama-3,,,2,70,0,30,,,,0.00,0,0,0,,,,
team-a,2026-11,llama-3,llama-3@2026-01-01,EUR,1,1000000,0,0,1.00,1.00,2.00,1.00,0,0,0,1.00,1.00,2.00,0.00
team-a,2026-11,claude-sonnet-4-5,claude-sonnet-4-5@2026-01-01,USD,2,400,100,350,3.00,0.30,15.00,0.01328,200,300,150,3.75,6.00,15.00,0.001
team-a,2026-11,total,,EUR,1,1000000,0,0,,,,1.00,0,0,0,,,,
team-a,2026-11,total,,USD,6,1000410,2100,500355,,,,0.463435,200,300,150,,,,
";
        assert_eq!(csv, expected);
    }

    #[test]
    fn an_empty_month_renders_a_zero_total() {
        let invoice = Invoice::new(
            Billed::Consumer("nobody".to_owned()),
            Period::parse("2026-11").unwrap(),
            vec![],
            None,
        );
        assert!(invoice.lines.is_empty() && invoice.totals.is_empty());
        let table = invoice.to_table();
        let last: Vec<&str> = table.lines().last().unwrap().split_whitespace().collect();
        assert_eq!(last, ["total", "0"], "{table}");
    }
}
