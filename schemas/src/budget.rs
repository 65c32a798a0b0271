//! Spend budgets: money a consumer, a team or an organisation may spend per period, as both sides of the quota
//! loop must understand them.
//!
//! ```toml
//! [[consumers.budgets]]          # or [[teams.budgets]]
//! id = "acme-monthly"            # its name in the usage API, alerts and logs; derived from the scope when absent
//! amount = "1000.00"             # a decimal string (or whole units), never a float
//! currency = "USD"               # ISO 4217; only events priced in this currency count
//! period = "month"               # day | week | month (calendar, UTC) | fixed
//! # starts = "2026-12-01"        # period = "fixed" only: the window [starts, ends), a date or an RFC 3339 time
//! # ends = "2027-01-01"
//! on_exceed = "refuse"           # refuse (default): 429 insufficient_quota once spent | alert: count and alert only
//! ```
//!
//! A budget is a quota scope ([`QuotaScope`]) whose strategy is [`LimitStrategy::Spend`]: billing-consumer's quota
//! loop prices every event it counts at the model that served it, with the shared price table
//! ([`crate::pricing`]), and publishes spend snapshots on the quota topic beside the token ones, with the same
//! windows and watermarks. The gateway reserves money for a request before forwarding it — the prompt estimate at
//! the input price plus the output cap at the output price of the most expensive model the route could serve it
//! with — and settles the reservation at the cost of the model that answered.

use serde::{Deserialize, Serialize};

use crate::prices::{Amount, parse_effective_from};
use crate::quota::{LimitStrategy, Period, QuotaScope};

/// A spend budget as written in the gateway's TOML (`[[consumers.budgets]]`, `[[teams.budgets]]`) and in the
/// admin API's consumer and team resources.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BudgetConfig {
    /// The budget's name (usage API, alerts, logs); derived from its scope key when absent.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub id: Option<String>,
    /// Money per period, in units of `currency` (a decimal string, or whole units).
    pub amount: Amount,
    /// ISO 4217, three capital letters.
    pub currency: String,
    /// `day`, `week`, `month` or `fixed`.
    pub period: String,
    /// For `period = "fixed"`: when the window starts (a date, midnight UTC, or an RFC 3339 time).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub starts: Option<String>,
    /// For `period = "fixed"`: when it ends (excluded).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ends: Option<String>,
    /// What happens once it is spent.
    #[serde(default)]
    pub on_exceed: OnExceed,
}

/// What a budget does once it is spent.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum OnExceed {
    /// Requests are refused with 429 `insufficient_quota` until the period ends.
    #[default]
    Refuse,
    /// Spend is counted and alerted on; nothing is refused.
    Alert,
}

impl OnExceed {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Refuse => "refuse",
            Self::Alert => "alert",
        }
    }
}

/// Whose spend a budget counts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BudgetHolder<'a> {
    Consumer(&'a str),
    /// A team (its consumers' requests) or an organisation (every team under it).
    Team(&'a str),
}

/// A budget, validated.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct Budget {
    pub scope: QuotaScope,
    /// Micro-units of the scope's currency per window.
    pub limit_micros: u64,
    pub on_exceed: OnExceed,
}

impl BudgetConfig {
    /// The budget of `holder`, or every problem, each naming its field (relative to the budget).
    pub fn validate(&self, holder: BudgetHolder<'_>) -> Result<Budget, Vec<(&'static str, String)>> {
        let mut problems = Vec::new();
        let limit_micros = match self.amount.budget_micros() {
            Ok(0) => {
                problems.push(("amount", "must be more than 0".to_owned()));
                0
            }
            Ok(micros) => micros,
            Err(problem) => {
                problems.push(("amount", problem));
                0
            }
        };
        if !(self.currency.len() == 3 && self.currency.bytes().all(|b| b.is_ascii_uppercase())) {
            problems.push((
                "currency",
                format!("`{}` is not three capital letters (ISO 4217)", self.currency),
            ));
        }
        let fixed_only = |problems: &mut Vec<(&'static str, String)>| {
            for (field, value) in [("starts", &self.starts), ("ends", &self.ends)] {
                if value.is_some() {
                    problems.push((field, "is for period = \"fixed\" only".to_owned()));
                }
            }
        };
        let period = match self.period.as_str() {
            "day" => {
                fixed_only(&mut problems);
                Period::Every { ms: 86_400_000 }
            }
            "week" => {
                fixed_only(&mut problems);
                Period::Week
            }
            "month" => {
                fixed_only(&mut problems);
                Period::Month
            }
            "fixed" => {
                let mut time = |field: &'static str, value: &Option<String>| match value.as_deref() {
                    None => {
                        problems.push((field, "is required for period = \"fixed\"".to_owned()));
                        None
                    }
                    Some(text) => match parse_effective_from(text) {
                        Ok((ms, _)) => match u64::try_from(ms) {
                            Ok(ms) => Some(ms),
                            Err(_) => {
                                problems.push((field, format!("`{text}` is before 1970")));
                                None
                            }
                        },
                        Err(problem) => {
                            problems.push((field, problem));
                            None
                        }
                    },
                };
                let (starts, ends) = (time("starts", &self.starts), time("ends", &self.ends));
                match (starts, ends) {
                    (Some(start_ms), Some(end_ms)) if start_ms < end_ms => Period::Fixed { start_ms, end_ms },
                    (Some(_), Some(_)) => {
                        problems.push(("ends", "must be after starts".to_owned()));
                        Period::Month
                    }
                    _ => Period::Month,
                }
            }
            other => {
                problems.push(("period", format!("`{other}` is not day, week, month or fixed")));
                Period::Month
            }
        };
        if self.id.as_deref().is_some_and(str::is_empty) {
            problems.push(("id", "must not be empty".to_owned()));
        }
        if !problems.is_empty() {
            return Err(problems);
        }
        let (consumer, team) = match holder {
            BudgetHolder::Consumer(name) => (Some(name.to_owned()), None),
            BudgetHolder::Team(name) => (None, Some(name.to_owned())),
        };
        Ok(Budget {
            scope: QuotaScope {
                consumer,
                team,
                models: Vec::new(),
                instance: None,
                period,
                strategy: LimitStrategy::Spend,
                currency: Some(self.currency.clone()),
            },
            limit_micros,
            on_exceed: self.on_exceed,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::quota::{Requester, Window};

    fn budget(amount: &str, period: &str) -> BudgetConfig {
        BudgetConfig {
            id: None,
            amount: Amount::from(amount),
            currency: "USD".into(),
            period: period.into(),
            starts: None,
            ends: None,
            on_exceed: OnExceed::Refuse,
        }
    }

    fn ms(rfc3339: &str) -> u64 {
        u64::try_from(
            chrono::DateTime::parse_from_rfc3339(rfc3339)
                .unwrap()
                .timestamp_millis(),
        )
        .unwrap()
    }

    #[test]
    fn a_monthly_budget_is_a_spend_scope_over_calendar_months() {
        let b = budget("1.00", "month")
            .validate(BudgetHolder::Consumer("acme"))
            .unwrap();
        assert_eq!(b.limit_micros, 1_000_000);
        assert_eq!(
            b.scope.key(),
            "consumer=acme;window=month;strategy=spend;currency=USD"
        );
        let december = b.scope.window_at(ms("2026-12-04T21:00:00Z"));
        assert_eq!(
            december,
            Window {
                start_ms: ms("2026-12-01T00:00:00Z"),
                end_ms: ms("2027-01-01T00:00:00Z")
            }
        );
        let february = b.scope.window_at(ms("2028-02-29T23:59:59Z"));
        assert_eq!(february.start_ms, ms("2028-02-01T00:00:00Z"));
        assert_eq!(february.end_ms, ms("2028-03-01T00:00:00Z"));
        assert_eq!(
            b.scope.period.previous_start(december.start_ms),
            Some(ms("2026-11-01T00:00:00Z"))
        );
    }

    #[test]
    fn weeks_start_on_monday_and_days_at_midnight_utc() {
        let week = budget("5", "week")
            .validate(BudgetHolder::Team("research"))
            .unwrap();
        // 2026-12-04 is a Friday; its week started on Monday 2026-11-30.
        let w = week.scope.window_at(ms("2026-12-04T21:00:00Z"));
        assert_eq!(w.start_ms, ms("2026-11-30T00:00:00Z"));
        assert_eq!(w.end_ms, ms("2026-12-07T00:00:00Z"));
        assert_eq!(week.scope.window_at(ms("2026-11-30T00:00:00Z")), w);
        assert_eq!(
            week.scope.key(),
            "team=research;window=week;strategy=spend;currency=USD"
        );
        let day = budget("5", "day").validate(BudgetHolder::Consumer("c")).unwrap();
        assert_eq!(
            day.scope.window_at(ms("2026-12-04T21:00:00Z")).start_ms,
            ms("2026-12-04T00:00:00Z")
        );
    }

    #[test]
    fn a_fixed_window_counts_only_inside_it() {
        let mut b = budget("500", "fixed");
        b.starts = Some("2026-12-01".into());
        b.ends = Some("2027-01-01T00:00:00+01:00".into());
        let b = b.validate(BudgetHolder::Team("pilot")).unwrap();
        let (start, end) = (ms("2026-12-01T00:00:00Z"), ms("2026-12-31T23:00:00Z"));
        assert_eq!(
            b.scope.window_at(0),
            Window {
                start_ms: start,
                end_ms: end
            }
        );
        assert!(b.scope.period.applies_at(start));
        assert!(!b.scope.period.applies_at(start - 1));
        assert!(!b.scope.period.applies_at(end));
        assert_eq!(b.scope.period.previous_start(start), None);
    }

    #[test]
    fn a_team_budget_counts_the_team_and_an_organisation_budget_every_team_under_it() {
        let team = budget("1", "month")
            .validate(BudgetHolder::Team("research"))
            .unwrap()
            .scope;
        let member = Requester {
            consumer: "alice",
            team: Some("research"),
            organization: Some("acme"),
        };
        assert!(team.matches(&member, "any", ""));
        assert!(!team.matches(&Requester::consumer("alice"), "any", ""));
        let org = budget("1", "month")
            .validate(BudgetHolder::Team("acme"))
            .unwrap()
            .scope;
        assert!(org.matches(&member, "any", ""));
        let elsewhere = Requester {
            team: Some("sales"),
            organization: Some("other"),
            ..member
        };
        assert!(!org.matches(&elsewhere, "any", ""));
    }

    #[test]
    fn every_problem_of_a_budget_is_reported() {
        let mut bad = budget("0.0000001", "fortnight");
        bad.currency = "usd".into();
        bad.starts = Some("x".into());
        let fields: Vec<_> = bad
            .validate(BudgetHolder::Consumer("c"))
            .unwrap_err()
            .into_iter()
            .map(|(f, _)| f)
            .collect();
        assert_eq!(fields, ["amount", "currency", "period"]);
        let mut fixed = budget("1", "fixed");
        fixed.starts = Some("2027-01-01".into());
        fixed.ends = Some("2026-01-01".into());
        let problems = fixed.validate(BudgetHolder::Consumer("c")).unwrap_err();
        assert_eq!(problems[0].0, "ends");
        let mut monthly_with_dates = budget("1", "month");
        monthly_with_dates.ends = Some("2027-01-01".into());
        assert_eq!(
            monthly_with_dates
                .validate(BudgetHolder::Consumer("c"))
                .unwrap_err()[0]
                .0,
            "ends"
        );
        assert_eq!(
            budget("0", "day")
                .validate(BudgetHolder::Consumer("c"))
                .unwrap_err()[0]
                .0,
            "amount"
        );
    }
}
