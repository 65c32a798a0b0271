//! Configuration: one TOML file, parsed into `Raw*` structs (`deny_unknown_fields`) and validated into [`Config`],
//! the only form the rest of the gateway sees.
//!
//! Validation reports every problem at once, each with its path (`instances[1].endpoint: …`), so an operator fixes
//! a file in one round. Secrets are never in the file: an instance names the environment variable that holds its
//! provider key (`api_key_env`), and consumer keys are stored as SHA-256 hashes.
//!
//! - [`model`]: the validated configuration the gateway runs on;
//! - [`raw`]: the file's form, with its defaults;
//! - [`validate`]: from the one to the other, every problem reported with its path;
//! - `tests`: what a file may and may not say.

use std::path::Path;

mod model;
mod raw;
#[cfg(test)]
mod tests;
mod validate;

pub use self::model::*;
pub use self::raw::*;

impl Config {
    /// Reads, parses and validates a configuration file.
    pub fn load(path: &Path) -> Result<Self, ConfigErrors> {
        let text = std::fs::read_to_string(path)
            .map_err(|e| ConfigErrors(vec![format!("{}: cannot read: {e}", path.display())]))?;
        Self::from_toml(&text)
    }

    /// Parses and validates a configuration, reading secrets from the process environment.
    pub fn from_toml(text: &str) -> Result<Self, ConfigErrors> {
        Self::from_toml_with_env(text, |name| std::env::var(name).ok())
    }

    /// Parses and validates a configuration, reading secrets through `env`.
    pub fn from_toml_with_env(
        text: &str,
        env: impl Fn(&str) -> Option<String>,
    ) -> Result<Self, ConfigErrors> {
        let raw: RawConfig = toml::from_str(text).map_err(|e| ConfigErrors(vec![toml_error(&e)]))?;
        Self::from_raw(raw, env)
    }

    /// Validates a parsed configuration, reading secrets through `env`.
    pub fn from_raw(raw: RawConfig, env: impl Fn(&str) -> Option<String>) -> Result<Self, ConfigErrors> {
        raw.validate(&env)
    }
}

fn toml_error(e: &toml::de::Error) -> String {
    // toml's message already carries the line and column; keep it on one line per problem.
    let joined = e
        .to_string()
        .lines()
        .filter(|l| !l.trim().is_empty())
        .collect::<Vec<_>>()
        .join(" ");
    one_line(&joined)
}

/// `text` with its control characters written as escapes (a newline as `\n`), so that a value quoted in a
/// problem — a name with a newline in it, say — cannot spread the problem over several lines of `check-config`'s
/// output or of a log, nor forge a line of its own.
fn one_line(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for c in text.chars() {
        if c.is_control() {
            out.extend(c.escape_default());
        } else {
            out.push(c);
        }
    }
    out
}

/// The admin API's name for a `[[token_limits]]` entry without an `id`: its scope key in URL-safe characters,
/// e.g. `models:gpt-4o-mini.window:3600s.strategy:total_tokens`.
pub fn derived_limit_id(scope_key: &str) -> String {
    scope_key
        .chars()
        .map(|c| match c {
            ';' => '.',
            '=' => ':',
            ',' => '_',
            c => c,
        })
        .collect()
}
