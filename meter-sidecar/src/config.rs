//! The sidecar's settings, validated once at start-up.
//!
//! In: a [`RawConfig`] — plain strings and numbers as the command line and environment give them. Out: a
//! [`Config`] whose fields are already checked, which the server uses as is. Validation reports every problem
//! at once, each prefixed with the setting it concerns.
//!
//! The listen address is not part of [`Config`]: the binary binds the socket itself and hands the server a
//! ready `TcpListener`, so tests can bind port 0. Its default lives here with the others.

use std::num::NonZeroUsize;

use crate::encoding::Encoding;

/// Default address to listen on.
pub const DEFAULT_LISTEN: &str = "127.0.0.1:8081";

/// Default encoding for models the sidecar does not know.
pub const DEFAULT_ENCODING: Encoding = Encoding::O200kBase;

/// Default limit on a request body, in bytes (8 MiB).
pub const DEFAULT_MAX_BODY_BYTES: usize = 8 * 1024 * 1024;

/// Default number of token counts the count cache keeps (a few tens of MB at most).
pub const DEFAULT_CACHE_ENTRIES: u64 = 100_000;

/// Largest accepted cache capacity. An entry costs on the order of a hundred bytes whatever the text's size,
/// so this bounds the cache to roughly a gigabyte.
pub const MAX_CACHE_ENTRIES: u64 = 10_000_000;

/// Default limit on the number of items in one `POST /v1/tokens/count/batch`.
pub const DEFAULT_MAX_BATCH_ITEMS: usize = 1024;

/// Validated settings.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Config {
    /// Encoding used when a request names no encoding and its model is unknown.
    pub default_encoding: Encoding,
    /// Largest request body accepted; larger ones get 413.
    pub max_body_bytes: usize,
    /// Number of HTTP worker threads (each runs its own event loop). At least 1.
    pub workers: usize,
    /// Token counts kept by the count cache; 0 disables it. At most [`MAX_CACHE_ENTRIES`].
    pub cache_entries: u64,
    /// Most items accepted in one batch; more get 400. At least 1.
    pub max_batch_items: usize,
}

impl Default for Config {
    fn default() -> Self {
        Config {
            default_encoding: DEFAULT_ENCODING,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            workers: default_workers(),
            cache_entries: DEFAULT_CACHE_ENTRIES,
            max_batch_items: DEFAULT_MAX_BATCH_ITEMS,
        }
    }
}

/// Worker threads when none are configured: the machine's available parallelism (1 if unknown).
pub fn default_workers() -> usize {
    std::thread::available_parallelism().map_or(1, NonZeroUsize::get)
}

/// Settings as given, before validation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RawConfig {
    /// Name of the default encoding, e.g. `o200k_base`.
    pub default_encoding: String,
    /// Body limit in bytes; must be positive.
    pub max_body_bytes: usize,
    /// Worker threads; `None` means [`default_workers`]. Must be positive when given.
    pub workers: Option<usize>,
    /// Count cache capacity in entries; 0 disables the cache, at most [`MAX_CACHE_ENTRIES`].
    pub cache_entries: u64,
    /// Items per batch; must be positive.
    pub max_batch_items: usize,
}

/// The settings were invalid; the message lists every problem.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid configuration: {}", .problems.join("; "))]
pub struct ConfigError {
    /// One entry per problem, each starting with the setting's name.
    pub problems: Vec<String>,
}

impl TryFrom<RawConfig> for Config {
    type Error = ConfigError;

    fn try_from(raw: RawConfig) -> Result<Self, Self::Error> {
        let mut problems = Vec::new();

        let default_encoding = raw.default_encoding.parse::<Encoding>().unwrap_or_else(|err| {
            problems.push(format!("default_encoding: {err}"));
            DEFAULT_ENCODING
        });
        if raw.max_body_bytes == 0 {
            problems.push("max_body_bytes: must be at least 1".to_owned());
        }
        let workers = raw.workers.unwrap_or_else(default_workers);
        if workers == 0 {
            problems.push("workers: must be at least 1".to_owned());
        }
        if raw.cache_entries > MAX_CACHE_ENTRIES {
            problems.push(format!(
                "cache_entries: must be at most {MAX_CACHE_ENTRIES} (0 disables the cache)"
            ));
        }
        if raw.max_batch_items == 0 {
            problems.push("max_batch_items: must be at least 1".to_owned());
        }

        if problems.is_empty() {
            Ok(Config {
                default_encoding,
                max_body_bytes: raw.max_body_bytes,
                workers,
                cache_entries: raw.cache_entries,
                max_batch_items: raw.max_batch_items,
            })
        } else {
            Err(ConfigError { problems })
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw() -> RawConfig {
        RawConfig {
            default_encoding: "cl100k_base".to_owned(),
            max_body_bytes: 1024,
            workers: Some(2),
            cache_entries: 500,
            max_batch_items: 16,
        }
    }

    #[test]
    fn valid_settings_pass_through() {
        let config = Config::try_from(raw()).unwrap();
        assert_eq!(
            config,
            Config {
                default_encoding: Encoding::Cl100kBase,
                max_body_bytes: 1024,
                workers: 2,
                cache_entries: 500,
                max_batch_items: 16,
            }
        );
    }

    #[test]
    fn workers_default_to_the_available_parallelism() {
        let config = Config::try_from(RawConfig {
            workers: None,
            ..raw()
        })
        .unwrap();
        assert_eq!(config.workers, default_workers());
        assert!(config.workers >= 1);
    }

    #[test]
    fn every_problem_is_reported_with_its_setting() {
        let err = Config::try_from(RawConfig {
            default_encoding: "gpt2".to_owned(),
            max_body_bytes: 0,
            workers: Some(0),
            cache_entries: MAX_CACHE_ENTRIES + 1,
            max_batch_items: 0,
        })
        .unwrap_err();
        assert_eq!(err.problems.len(), 5);
        let message = err.to_string();
        assert!(
            message.contains("default_encoding: unknown encoding `gpt2`"),
            "{message}"
        );
        assert!(
            message.contains("o200k_base, cl100k_base, p50k_base, r50k_base"),
            "{message}"
        );
        assert!(message.contains("max_body_bytes"), "{message}");
        assert!(message.contains("workers"), "{message}");
        assert!(
            message.contains("cache_entries: must be at most 10000000"),
            "{message}"
        );
        assert!(
            message.contains("max_batch_items: must be at least 1"),
            "{message}"
        );
    }

    #[test]
    fn a_zero_cache_capacity_is_valid_and_disables_the_cache() {
        let config = Config::try_from(RawConfig {
            cache_entries: 0,
            ..raw()
        })
        .unwrap();
        assert_eq!(config.cache_entries, 0);
        let config = Config::try_from(RawConfig {
            cache_entries: MAX_CACHE_ENTRIES,
            ..raw()
        })
        .unwrap();
        assert_eq!(config.cache_entries, MAX_CACHE_ENTRIES);
    }

    #[test]
    fn the_default_matches_the_documented_defaults() {
        let config = Config::default();
        assert_eq!(config.default_encoding, Encoding::O200kBase);
        assert_eq!(config.max_body_bytes, 8_388_608);
        assert_eq!(config.cache_entries, 100_000);
        assert_eq!(config.max_batch_items, 1024);
    }
}
