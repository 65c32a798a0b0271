//! What threshold alerts need: where to POST, the signing secret (read from an environment variable named by
//! the operator, never from the command line), the thresholds, the alerts topic and the retry bounds.
//! [`AlertSettings::validate`] checks everything at start-up and reports every problem at once; alerts are off
//! when no webhook URL is configured.

use std::fmt;
use std::time::Duration;

use crate::error::BillingError;

/// The environment variable the secret is read from unless another is named.
pub const DEFAULT_SECRET_ENV: &str = "TOLLGATE_ALERT_WEBHOOK_SECRET";
/// The shortest secret accepted, in bytes.
pub const MIN_SECRET_BYTES: usize = 16;
/// The highest threshold accepted, in percent.
pub const MAX_THRESHOLD: u32 = 1000;

/// The signing secret: shown nowhere.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub Vec<u8>);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Secret(..)")
    }
}

/// How deliveries are retried: attempt `n` (from 1) failing with a network error, a timeout, a 5xx or a 429 waits
/// `min(max_backoff, initial_backoff × 2^(n−1))`, less up to half of it at random, before attempt `n + 1`; after
/// `max_attempts` attempts the alert is recorded `failed`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    pub max_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// How long one attempt (connect, send, read the status) may take.
    pub attempt_timeout: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(10),
        }
    }
}

impl RetryPolicy {
    /// The wait after failed attempt `attempt` (from 1), with `jitter` in `[0, 1)` taking off up to half of it.
    pub fn backoff(&self, attempt: u32, jitter: f64) -> Duration {
        let doubling = 2u32.saturating_pow(attempt.saturating_sub(1).min(31));
        let full = self
            .initial_backoff
            .saturating_mul(doubling)
            .min(self.max_backoff);
        full.mul_f64(1.0 - jitter.clamp(0.0, 1.0) / 2.0)
    }

    /// The longest all attempts and waits of one alert can take.
    pub fn worst_case(&self) -> Duration {
        (1..self.max_attempts).map(|n| self.backoff(n, 0.0)).fold(
            self.attempt_timeout.saturating_mul(self.max_attempts),
            Duration::saturating_add,
        )
    }
}

/// Everything threshold alerts need, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertSettings {
    /// Where alerts are POSTed: `http://` or `https://`.
    pub url: url::Url,
    pub secret: Secret,
    /// Percent of the limit, ascending, without duplicates.
    pub thresholds: Vec<u32>,
    /// The compacted topic of what was sent, normally `tollgate.alerts.v1`.
    pub topic: String,
    pub retry: RetryPolicy,
}

/// What the operator gave, before validation.
#[derive(Debug, Clone, Default)]
pub struct AlertInput {
    pub url: Option<String>,
    /// The name of the environment variable holding the secret.
    pub secret_env: String,
    /// Comma-separated percentages, e.g. `50,80,100`.
    pub thresholds: String,
    pub topic: String,
    pub retry: RetryPolicy,
}

impl AlertSettings {
    /// Validates `input`, reading the secret with `env`; `Ok(None)` when no URL is configured (alerts off). Every
    /// problem is reported at once.
    pub fn validate(
        input: &AlertInput,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Option<Self>, BillingError> {
        let Some(raw_url) = input.url.as_deref().map(str::trim).filter(|u| !u.is_empty()) else {
            return Ok(None);
        };
        let mut problems = Vec::new();
        let url = match url::Url::parse(raw_url) {
            Ok(url) if !matches!(url.scheme(), "http" | "https") => {
                problems.push(format!(
                    "--alert-webhook-url: `{}` is not http or https",
                    url.scheme()
                ));
                None
            }
            Ok(url) if url.host_str().is_none_or(str::is_empty) => {
                problems.push("--alert-webhook-url: no host".to_owned());
                None
            }
            Ok(url) => Some(url),
            Err(error) => {
                problems.push(format!("--alert-webhook-url: {error}"));
                None
            }
        };
        let secret = if input.secret_env.trim().is_empty() {
            problems.push("--alert-secret-env: names no environment variable".to_owned());
            None
        } else {
            match env(&input.secret_env) {
                None => {
                    problems.push(format!(
                        "--alert-secret-env: the environment variable {} is not set (the webhook secret)",
                        input.secret_env
                    ));
                    None
                }
                Some(secret) if secret.len() < MIN_SECRET_BYTES => {
                    problems.push(format!(
                        "--alert-secret-env: the secret in {} is {} bytes; at least {MIN_SECRET_BYTES}",
                        input.secret_env,
                        secret.len()
                    ));
                    None
                }
                Some(secret) => Some(Secret(secret.into_bytes())),
            }
        };
        let thresholds = match parse_thresholds(&input.thresholds) {
            Ok(thresholds) => Some(thresholds),
            Err(mut found) => {
                problems.append(&mut found);
                None
            }
        };
        if input.topic.trim().is_empty() {
            problems.push("--alerts-topic: empty".to_owned());
        }
        let retry = input.retry;
        if retry.max_attempts == 0 || retry.max_attempts > 100 {
            problems.push(format!(
                "--alert-max-attempts: {} is not between 1 and 100",
                retry.max_attempts
            ));
        }
        if retry.initial_backoff < Duration::from_millis(1) {
            problems.push("--alert-retry-initial: at least 1ms".to_owned());
        }
        if retry.max_backoff < retry.initial_backoff {
            problems.push(format!(
                "--alert-retry-max: {} is shorter than --alert-retry-initial {}",
                humantime::format_duration(retry.max_backoff),
                humantime::format_duration(retry.initial_backoff)
            ));
        }
        if retry.max_backoff > Duration::from_secs(3600) {
            problems.push("--alert-retry-max: at most 1h".to_owned());
        }
        if retry.attempt_timeout < Duration::from_millis(100)
            || retry.attempt_timeout > Duration::from_secs(300)
        {
            problems.push("--alert-timeout: between 100ms and 5m".to_owned());
        }
        match (url, secret, thresholds) {
            (Some(url), Some(secret), Some(thresholds)) if problems.is_empty() => Ok(Some(Self {
                url,
                secret,
                thresholds,
                topic: input.topic.trim().to_owned(),
                retry,
            })),
            _ => Err(BillingError::Config {
                setting: "alerts",
                reason: problems.join("; "),
            }),
        }
    }

    /// The URL without credentials, query or fragment, for logs.
    pub fn redacted_url(&self) -> String {
        let mut url = self.url.clone();
        let _ = url.set_username("");
        let _ = url.set_password(None);
        url.set_query(None);
        url.set_fragment(None);
        url.to_string()
    }
}

/// `50,80,100` → `[50, 80, 100]`: percentages from 1 to [`MAX_THRESHOLD`], sorted, duplicates dropped; every
/// bad entry reported.
pub fn parse_thresholds(input: &str) -> Result<Vec<u32>, Vec<String>> {
    let mut problems = Vec::new();
    let mut thresholds = Vec::new();
    for entry in input.split(',').map(str::trim) {
        let number = entry.strip_suffix('%').unwrap_or(entry).trim();
        match number.parse::<u32>() {
            Ok(t) if (1..=MAX_THRESHOLD).contains(&t) => thresholds.push(t),
            Ok(t) => problems.push(format!(
                "--alert-thresholds: {t} is not between 1 and {MAX_THRESHOLD}"
            )),
            Err(_) => problems.push(format!("--alert-thresholds: `{entry}` is not a whole percentage")),
        }
    }
    thresholds.sort_unstable();
    thresholds.dedup();
    if problems.is_empty() && thresholds.is_empty() {
        problems.push("--alert-thresholds: none given".to_owned());
    }
    if problems.is_empty() {
        Ok(thresholds)
    } else {
        Err(problems)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn input(url: &str) -> AlertInput {
        AlertInput {
            url: Some(url.to_owned()),
            secret_env: "SECRET".into(),
            thresholds: "50,80,100".into(),
            topic: "tollgate.alerts.v1".into(),
            retry: RetryPolicy::default(),
        }
    }

    fn env(name: &str) -> Option<String> {
        (name == "SECRET").then(|| "0123456789abcdef0123".to_owned())
    }

    #[test]
    fn no_url_means_alerts_off() {
        let mut off = input("");
        assert_eq!(AlertSettings::validate(&off, env).ok(), Some(None));
        off.url = None;
        off.thresholds = "nonsense".into();
        assert_eq!(AlertSettings::validate(&off, env).ok(), Some(None));
    }

    #[test]
    fn valid_settings_are_taken() {
        let settings = AlertSettings::validate(&input("https://u:p@hooks.example/tollgate?k=1"), env)
            .ok()
            .flatten();
        let Some(settings) = settings else {
            panic!("valid settings refused")
        };
        assert_eq!(settings.thresholds, [50, 80, 100]);
        assert_eq!(settings.redacted_url(), "https://hooks.example/tollgate");
        assert!(!format!("{settings:?}").contains("0123456789abcdef"));
    }

    #[test]
    fn every_problem_is_reported_at_once() {
        let bad = AlertInput {
            url: Some("ftp://hooks.example".into()),
            secret_env: "MISSING".into(),
            thresholds: "50,abc,0,2000".into(),
            topic: " ".into(),
            retry: RetryPolicy {
                max_attempts: 0,
                initial_backoff: Duration::from_secs(10),
                max_backoff: Duration::from_secs(1),
                attempt_timeout: Duration::from_millis(1),
            },
        };
        let error = AlertSettings::validate(&bad, env)
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        for expected in [
            "not http or https",
            "MISSING is not set",
            "`abc` is not a whole percentage",
            "0 is not between 1",
            "2000 is not between 1",
            "--alerts-topic: empty",
            "--alert-max-attempts: 0",
            "shorter than --alert-retry-initial",
            "--alert-timeout",
        ] {
            assert!(error.contains(expected), "missing {expected:?} in {error}");
        }
        let short = AlertSettings::validate(&input("http://127.0.0.1:1/x"), |_| Some("short".into()))
            .err()
            .map(|e| e.to_string())
            .unwrap_or_default();
        assert!(short.contains("at least 16"), "{short}");
        assert!(AlertSettings::validate(&input("not a url"), env).is_err());
    }

    #[test]
    fn thresholds_are_sorted_and_deduplicated() {
        assert_eq!(parse_thresholds("100, 50%,80,50"), Ok(vec![50, 80, 100]));
        assert_eq!(parse_thresholds("120"), Ok(vec![120]));
        assert!(parse_thresholds("").is_err());
    }

    #[test]
    fn backoff_doubles_is_capped_and_jitter_takes_off_at_most_half() {
        let retry = RetryPolicy {
            max_attempts: 8,
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(30),
            attempt_timeout: Duration::from_secs(10),
        };
        assert_eq!(retry.backoff(1, 0.0), Duration::from_millis(500));
        assert_eq!(retry.backoff(2, 0.0), Duration::from_secs(1));
        assert_eq!(retry.backoff(4, 0.0), Duration::from_secs(4));
        assert_eq!(retry.backoff(7, 0.0), Duration::from_secs(30), "capped");
        assert_eq!(
            retry.backoff(u32::MAX, 0.0),
            Duration::from_secs(30),
            "no overflow"
        );
        for attempt in 1..=10 {
            for jitter in [0.0, 0.25, 0.5, 0.999, 1.0, 7.0, -1.0] {
                let wait = retry.backoff(attempt, jitter);
                let full = retry.backoff(attempt, 0.0);
                assert!(
                    wait <= full && wait >= full / 2,
                    "{attempt} {jitter}: {wait:?} of {full:?}"
                );
            }
        }
        // 8 attempts of 10 s and waits of 0.5+1+2+4+8+16+30 s.
        assert_eq!(retry.worst_case(), Duration::from_millis(80_000 + 61_500));
    }
}
