//! Usage reports read from the ledger: one consumer's requests and tokens per served model (`model_served`, the
//! model that answered, as on invoices), with a total, optionally since a point in time. The numbers count each
//! event once (`FINAL` collapses redelivered events) and are what an invoice would be computed from, before
//! pricing.
//!
//! Also owns how an operator writes "since" on the command line ([`parse_since`]) and how a report is shown
//! ([`UsageReport::to_table`], or JSON through `Serialize`).

use std::fmt::Write as _;

use chrono::{DateTime, NaiveDate, Utc};
use serde::Serialize;

use crate::error::BillingError;
use crate::ledger::ClickHouseSettings;

/// One line of a report: a model's totals, or the grand total.
#[derive(Debug, Clone, PartialEq, Eq, Default, Serialize, serde::Deserialize, clickhouse::Row)]
pub struct UsageLine {
    /// The model that served (`model_served`); `total` on the total line.
    pub model: String,
    /// Requests (events).
    pub requests: u64,
    /// Prompt tokens billed.
    pub prompt_tokens: u64,
    /// Completion tokens billed.
    pub completion_tokens: u64,
    /// Total tokens billed.
    pub total_tokens: u64,
}

/// One consumer's usage.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct UsageReport {
    /// The consumer id.
    pub consumer: String,
    /// Events at or after this time (event time, to the second); `None` for all time.
    pub since: Option<DateTime<Utc>>,
    /// Per served model, sorted by model name.
    pub models: Vec<UsageLine>,
    /// The sum of `models` (all zero for an unknown consumer).
    pub total: UsageLine,
}

/// The label of the total line.
pub const TOTAL_LABEL: &str = "total";

/// Reads `consumer`'s usage from ClickHouse. An unknown consumer gets a report of zeros.
pub async fn usage(
    ch: &ClickHouseSettings,
    consumer: &str,
    since: Option<DateTime<Utc>>,
) -> Result<UsageReport, BillingError> {
    let mut sql = String::from(
        "SELECT model_served, count(), sum(prompt_tokens), sum(completion_tokens), sum(total_tokens) \
         FROM usage_events FINAL WHERE consumer_id = ?",
    );
    if since.is_some() {
        sql.push_str(" AND event_time >= toDateTime(?)");
    }
    sql.push_str(" GROUP BY model_served ORDER BY model_served");

    let mut query = ch.client().query(&sql).bind(consumer);
    if let Some(since) = since {
        // Before 1970 means everything; event times are stored as seconds since 1970.
        query = query.bind(crate::ledger::store::datetime_seconds(since).unwrap_or(0));
    }
    let models = query
        .fetch_all::<UsageLine>()
        .await
        .map_err(BillingError::clickhouse("read usage"))?;
    Ok(UsageReport::new(consumer, since, models))
}

impl UsageReport {
    /// A report from per-model lines; computes the total.
    pub fn new(consumer: &str, since: Option<DateTime<Utc>>, models: Vec<UsageLine>) -> Self {
        let mut total = UsageLine {
            model: TOTAL_LABEL.to_owned(),
            ..UsageLine::default()
        };
        for line in &models {
            total.requests += line.requests;
            total.prompt_tokens += line.prompt_tokens;
            total.completion_tokens += line.completion_tokens;
            total.total_tokens += line.total_tokens;
        }
        Self {
            consumer: consumer.to_owned(),
            since,
            models,
            total,
        }
    }

    /// An aligned text table: a header, one line per model, a rule and the total line.
    pub fn to_table(&self) -> String {
        const HEADERS: [&str; 5] = [
            "model",
            "requests",
            "prompt_tokens",
            "completion_tokens",
            "total_tokens",
        ];
        let cells = |line: &UsageLine| {
            [
                line.model.clone(),
                line.requests.to_string(),
                line.prompt_tokens.to_string(),
                line.completion_tokens.to_string(),
                line.total_tokens.to_string(),
            ]
        };
        let models: Vec<[String; 5]> = self.models.iter().map(cells).collect();
        let total = cells(&self.total);
        let mut widths = HEADERS.map(str::len);
        for row in models.iter().chain([&total]) {
            for (width, cell) in widths.iter_mut().zip(row) {
                *width = (*width).max(cell.chars().count());
            }
        }

        let mut out = String::new();
        let since = self
            .since
            .map_or_else(|| "all time".to_owned(), |s| format!("since {}", s.to_rfc3339()));
        let _ = writeln!(out, "consumer {} ({since})", self.consumer);
        let render = |out: &mut String, row: &[String; 5]| {
            let mut line = format!("{:<w$}", row[0], w = widths[0]);
            for (cell, width) in row.iter().zip(widths).skip(1) {
                let _ = write!(line, "  {cell:>width$}");
            }
            let _ = writeln!(out, "{}", line.trim_end());
        };
        render(&mut out, &HEADERS.map(str::to_owned));
        for row in &models {
            render(&mut out, row);
        }
        let rule_width = widths.iter().sum::<usize>() + 2 * (widths.len() - 1);
        let _ = writeln!(out, "{}", "-".repeat(rule_width));
        render(&mut out, &total);
        out
    }
}

/// Reads a `--since` value: RFC 3339 (`2026-11-22T10:00:00Z`), a date (`2026-11-22`, midnight UTC), or a
/// duration ago (`24h`, `90m`, `7days`) counted back from `now`.
pub fn parse_since(input: &str, now: DateTime<Utc>) -> Result<DateTime<Utc>, BillingError> {
    let text = input.trim();
    let invalid = || BillingError::InvalidSince {
        input: input.to_owned(),
    };
    if let Ok(time) = DateTime::parse_from_rfc3339(text) {
        return Ok(time.with_timezone(&Utc));
    }
    if let Ok(date) = NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return date
            .and_hms_opt(0, 0, 0)
            .map(|midnight| midnight.and_utc())
            .ok_or_else(invalid);
    }
    let ago = humantime::parse_duration(text).map_err(|_| invalid())?;
    let ago = chrono::Duration::from_std(ago).map_err(|_| invalid())?;
    now.checked_sub_signed(ago).ok_or_else(invalid)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn utc(text: &str) -> DateTime<Utc> {
        DateTime::parse_from_rfc3339(text).unwrap().with_timezone(&Utc)
    }

    #[test]
    fn since_accepts_rfc3339_dates_and_durations_ago() {
        let now = utc("2026-11-22T12:30:00Z");
        assert_eq!(
            parse_since("2026-11-22T10:00:00Z", now).unwrap(),
            utc("2026-11-22T10:00:00Z")
        );
        assert_eq!(
            parse_since("2026-11-22T11:00:00+01:00", now).unwrap(),
            utc("2026-11-22T10:00:00Z")
        );
        assert_eq!(
            parse_since("2026-11-22", now).unwrap(),
            utc("2026-11-22T00:00:00Z")
        );
        assert_eq!(parse_since("24h", now).unwrap(), utc("2026-11-21T12:30:00Z"));
        assert_eq!(parse_since("90m", now).unwrap(), utc("2026-11-22T11:00:00Z"));
        assert_eq!(parse_since(" 7days ", now).unwrap(), utc("2026-11-15T12:30:00Z"));
    }

    #[test]
    fn since_refuses_garbage() {
        let now = utc("2026-11-22T12:30:00Z");
        for bad in [
            "",
            "yesterday",
            "2026-13-01",
            "2026-11-22 10:00",
            "-5h",
            "24",
            "h24",
        ] {
            let err = parse_since(bad, now).unwrap_err();
            assert_eq!(err.kind(), "invalid_since", "{bad}");
        }
    }

    fn line(model: &str, requests: u64, prompt: u64, completion: u64) -> UsageLine {
        UsageLine {
            model: model.into(),
            requests,
            prompt_tokens: prompt,
            completion_tokens: completion,
            total_tokens: prompt + completion,
        }
    }

    #[test]
    fn total_is_the_sum_of_the_models() {
        let report = UsageReport::new("team-a", None, vec![line("a", 2, 10, 5), line("b", 1, 7, 100)]);
        assert_eq!(report.total, line(TOTAL_LABEL, 3, 17, 105));
        let empty = UsageReport::new("nobody", None, vec![]);
        assert_eq!(empty.total, line(TOTAL_LABEL, 0, 0, 0));
    }

    #[test]
    fn table_is_aligned_with_a_total_line() {
        let since = Some(utc("2026-11-22T00:00:00Z"));
        let report = UsageReport::new(
            "team-a",
            since,
            vec![line("gpt-4o-mini", 2, 10, 5), line("llama-3", 1, 7, 1000)],
        );
        let expected = "\
consumer team-a (since 2026-11-22T00:00:00+00:00)
model        requests  prompt_tokens  completion_tokens  total_tokens
gpt-4o-mini         2             10                  5            15
llama-3             1              7               1000          1007
---------------------------------------------------------------------
total               3             17               1005          1022
";
        assert_eq!(report.to_table(), expected);
    }

    #[test]
    fn unknown_consumer_renders_zeros() {
        let table = UsageReport::new("nobody", None, vec![]).to_table();
        assert!(
            table.ends_with("total         0              0                  0             0\n"),
            "{table}"
        );
        let json = serde_json::to_value(UsageReport::new("nobody", None, vec![])).unwrap();
        assert_eq!(json["total"]["requests"], 0);
        assert_eq!(json["models"], serde_json::json!([]));
    }
}
