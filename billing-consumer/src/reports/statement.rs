//! The usage statement behind the usage API: what a consumer (or a team, or an organisation: [`Billed`]) used
//! over a period of whole UTC days — requests, every token type and the amount, per day and served model — with a
//! total per currency, and how far the ledger had caught up when it was read.
//!
//! Same rows, same rules as the invoice ([`crate::reports::invoice`]): each event once (`FINAL`), selected by the
//! same column and event time, amounts the sum of the events' stored `cost_micros`. So the statement of a calendar
//! month and that month's invoice have the same totals, to the micro-unit — only the grouping differs.
//!
//! **Freshness.** `ledger_newest_event` is the newest event time the ledger holds (over every consumer): events
//! finished after it may not be counted yet; `ledger_ingested_at` is when the newest row was written. A client
//! that needs "everything until T" waits until `ledger_newest_event` passes T.

use chrono::{DateTime, NaiveDate, SecondsFormat, Utc};
use serde::Serialize;

use crate::error::BillingError;
use crate::ledger::pricing::format_micros;
use crate::ledger::{ClickHouseSettings, plain_identifier};
use crate::reports::invoice::Billed;

/// The longest period one statement covers.
pub const MAX_DAYS: i64 = 366;

/// One day's usage of one served model in one currency (`""`: unpriced events).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, serde::Deserialize, clickhouse::Row)]
pub struct DayLine {
    /// `YYYY-MM-DD`, UTC, by event time.
    pub day: String,
    /// The model that served (`model_served`): the model priced.
    pub model: String,
    /// ISO 4217 code; `""` for events with no price in force.
    pub currency: String,
    pub requests: u64,
    /// Prompt tokens, cached ones included.
    pub prompt_tokens: u64,
    /// Of the prompt, tokens read from the provider's cache.
    pub cached_prompt_tokens: u64,
    /// Of the prompt, tokens written to the provider's cache (5-minute and 1-hour writes).
    pub cache_write_tokens: u64,
    pub completion_tokens: u64,
    /// Of the completion, reasoning tokens.
    pub reasoning_tokens: u64,
    /// Micro-units of `currency`.
    pub amount_micros: i64,
}

/// The total of one currency over the period.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Total {
    pub currency: String,
    pub requests: u64,
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub amount_micros: i64,
    /// The same, as an exact decimal.
    pub amount: String,
}

/// What `billed` used from `from` (included) to `to` (excluded).
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct Statement {
    pub billed: Billed,
    pub from: String,
    pub to: String,
    /// By day, then model, then currency.
    pub days: Vec<DayLine>,
    /// By currency; unpriced events are in none.
    pub totals: Vec<Total>,
    /// Requests with no price in force in the period.
    pub unpriced_requests: u64,
    /// The newest event time in the ledger (RFC 3339), over every consumer; `None` when it is empty.
    pub ledger_newest_event: Option<String>,
    /// When the newest row was written (RFC 3339).
    pub ledger_ingested_at: Option<String>,
}

#[derive(Debug, serde::Deserialize, clickhouse::Row)]
struct Freshness {
    newest_ms: u64,
    ingested_at: u32,
}

/// Reads `billed`'s statement for the UTC days `from`..`to` (exclusive) from `table`.
pub async fn statement(
    ch: &ClickHouseSettings,
    table: &str,
    billed: &Billed,
    from: NaiveDate,
    to: NaiveDate,
) -> Result<Statement, BillingError> {
    let table = plain_identifier(table, "table")?;
    let days = (to - from).num_days();
    if !(1..=MAX_DAYS).contains(&days) {
        return Err(BillingError::InvalidPeriod {
            input: format!("{from}..{to}: from 1 to {MAX_DAYS} days, `to` after `from`"),
        });
    }
    let start = |d: NaiveDate| d.and_time(chrono::NaiveTime::MIN).and_utc();
    let seconds = |t: DateTime<Utc>| crate::ledger::store::datetime_seconds(t).unwrap_or(u32::MAX);
    let column = billed.column();
    // The invoice's selection (same column, same event-time bounds, FINAL), grouped by day as well.
    let sql = format!(
        "SELECT toString(toDate(event_time)) AS day, model_served, currency, count(), \
         toUInt64(sum(prompt_tokens)), toUInt64(sum(least(ifNull(cached_prompt_tokens, 0), prompt_tokens))), \
         toUInt64(sum(ifNull(cache_write_5m_tokens, 0) + ifNull(cache_write_1h_tokens, 0))), \
         toUInt64(sum(completion_tokens)), toUInt64(sum(ifNull(reasoning_tokens, 0))), sum(cost_micros) \
         FROM {table} FINAL \
         WHERE {column} = ? AND event_time >= toDateTime(?) AND event_time < toDateTime(?) \
         GROUP BY day, model_served, currency ORDER BY day, model_served, currency"
    );
    let client = ch.client();
    let lines = client
        .query(&sql)
        .bind(billed.name())
        .bind(seconds(start(from)))
        .bind(seconds(start(to)))
        .fetch_all::<DayLine>()
        .await
        .map_err(BillingError::clickhouse("read the usage statement"))?;
    let freshness = client
        .query(&format!(
            "SELECT toUInt64(max(finished_at_ms)), toUInt32(max(ingested_at)) FROM {table}"
        ))
        .fetch_optional::<Freshness>()
        .await
        .map_err(BillingError::clickhouse("read the ledger's freshness"))?;
    let rfc3339 = |ms: i64| {
        DateTime::<Utc>::from_timestamp_millis(ms).map(|t| t.to_rfc3339_opts(SecondsFormat::Millis, true))
    };
    let (newest, ingested) = match freshness {
        Some(f) if f.newest_ms > 0 => (
            rfc3339(i64::try_from(f.newest_ms).unwrap_or(i64::MAX)),
            rfc3339(i64::from(f.ingested_at) * 1000),
        ),
        _ => (None, None),
    };
    Ok(Statement::new(
        billed.clone(),
        from,
        to,
        lines,
        (newest, ingested),
    ))
}

impl Statement {
    fn new(
        billed: Billed,
        from: NaiveDate,
        to: NaiveDate,
        days: Vec<DayLine>,
        (newest, ingested): (Option<String>, Option<String>),
    ) -> Self {
        let mut totals: Vec<Total> = Vec::new();
        let mut unpriced_requests = 0;
        for line in &days {
            if line.currency.is_empty() {
                unpriced_requests += line.requests;
                continue;
            }
            let at = match totals.iter().position(|t| t.currency == line.currency) {
                Some(at) => at,
                None => {
                    totals.push(Total {
                        currency: line.currency.clone(),
                        requests: 0,
                        prompt_tokens: 0,
                        completion_tokens: 0,
                        amount_micros: 0,
                        amount: String::new(),
                    });
                    totals.len() - 1
                }
            };
            if let Some(total) = totals.get_mut(at) {
                total.requests += line.requests;
                total.prompt_tokens += line.prompt_tokens;
                total.completion_tokens += line.completion_tokens;
                total.amount_micros = total.amount_micros.saturating_add(line.amount_micros);
            }
        }
        totals.sort_by(|a, b| a.currency.cmp(&b.currency));
        for total in &mut totals {
            total.amount = format_micros(total.amount_micros);
        }
        Self {
            billed,
            from: from.to_string(),
            to: to.to_string(),
            days,
            totals,
            unpriced_requests,
            ledger_newest_event: newest,
            ledger_ingested_at: ingested,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn line(day: &str, model: &str, currency: &str, requests: u64, amount_micros: i64) -> DayLine {
        DayLine {
            day: day.into(),
            model: model.into(),
            currency: currency.into(),
            requests,
            prompt_tokens: requests * 100,
            cached_prompt_tokens: 0,
            cache_write_tokens: 0,
            completion_tokens: requests * 10,
            reasoning_tokens: 0,
            amount_micros,
        }
    }

    #[test]
    fn totals_are_per_currency_and_unpriced_requests_are_counted_apart() {
        let day = |d| NaiveDate::parse_from_str(d, "%Y-%m-%d").unwrap();
        let statement = Statement::new(
            Billed::Consumer("team-a".into()),
            day("2026-12-01"),
            day("2027-01-01"),
            vec![
                line("2026-12-01", "gpt-4o-mini", "USD", 3, 1_234),
                line("2026-12-01", "mystery", "", 2, 0),
                line("2026-12-02", "gpt-4o-mini", "USD", 1, 766),
                line("2026-12-02", "mistral", "EUR", 1, 5),
            ],
            (None, None),
        );
        assert_eq!(statement.unpriced_requests, 2);
        let usd = &statement.totals[1];
        assert_eq!(
            (usd.currency.as_str(), usd.requests, usd.amount_micros),
            ("USD", 4, 2_000)
        );
        assert_eq!(usd.amount, "0.002");
        assert_eq!(statement.totals[0].currency, "EUR");
    }
}
