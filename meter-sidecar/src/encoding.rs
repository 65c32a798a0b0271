//! Which BPE vocabulary counts a model's text.
//!
//! Owns the [`Encoding`] enum (the four vocabularies tiktoken-rs ships that Tollgate counts with), the
//! model-name → encoding table, and parsing an encoding from its name. In: a model name from a request or an
//! encoding name from a request or the command line. Out: an [`Encoding`], whose [`Encoding::bpe`] is a
//! process-wide tokenizer loaded once.

use std::fmt;
use std::str::FromStr;

use serde::{Deserialize, Serialize};
use tiktoken_rs::CoreBPE;

/// A BPE vocabulary.
///
/// `o200k_harmony` (gpt-oss) and `p50k_edit` are not listed separately: they differ from `o200k_base` and
/// `p50k_base` only in special tokens, and Tollgate encodes text as ordinary text, so the counts are identical.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
pub enum Encoding {
    /// GPT-4o, GPT-4.1, GPT-4.5, GPT-5 and the o-series reasoning models.
    #[serde(rename = "o200k_base")]
    O200kBase,
    /// GPT-4, GPT-3.5 Turbo and the current embedding models.
    #[serde(rename = "cl100k_base")]
    Cl100kBase,
    /// Codex and `text-davinci-002/003`.
    #[serde(rename = "p50k_base")]
    P50kBase,
    /// GPT-3 (`davinci`, `curie`, …), also known as `gpt2`.
    #[serde(rename = "r50k_base")]
    R50kBase,
}

/// How a model name is compared with an entry of [`MODELS`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Match {
    /// The whole (normalised) name equals the entry.
    Exact,
    /// The name starts with the entry; the longest matching entry wins.
    Prefix,
}

/// Model names and families → encoding, after OpenAI's tiktoken `model.py`.
///
/// The longest matching entry wins, so `gpt-4o-mini` takes `gpt-4o` (o200k_base) over `gpt-4` (cl100k_base).
/// Short legacy names (`ada`, `davinci`, …) match exactly, so that an unrelated self-hosted model whose
/// name merely starts with them falls back to the default encoding.
const MODELS: &[(&str, Match, Encoding)] = &[
    // o200k_base
    ("gpt-4o", Match::Prefix, Encoding::O200kBase),
    ("chatgpt-4o", Match::Prefix, Encoding::O200kBase),
    ("gpt-4.1", Match::Prefix, Encoding::O200kBase),
    ("gpt-4.5", Match::Prefix, Encoding::O200kBase),
    ("gpt-5", Match::Prefix, Encoding::O200kBase),
    ("gpt-oss", Match::Prefix, Encoding::O200kBase),
    ("o1", Match::Prefix, Encoding::O200kBase),
    ("o3", Match::Prefix, Encoding::O200kBase),
    ("o4", Match::Prefix, Encoding::O200kBase),
    // cl100k_base
    ("gpt-4", Match::Prefix, Encoding::Cl100kBase),
    ("gpt-3.5", Match::Prefix, Encoding::Cl100kBase),
    ("gpt-35-turbo", Match::Prefix, Encoding::Cl100kBase),
    ("text-embedding-3-", Match::Prefix, Encoding::Cl100kBase),
    ("text-embedding-ada-002", Match::Prefix, Encoding::Cl100kBase),
    ("davinci-002", Match::Prefix, Encoding::Cl100kBase),
    ("babbage-002", Match::Prefix, Encoding::Cl100kBase),
    // p50k_base
    ("text-davinci-002", Match::Exact, Encoding::P50kBase),
    ("text-davinci-003", Match::Exact, Encoding::P50kBase),
    ("text-davinci-edit-001", Match::Exact, Encoding::P50kBase),
    ("code-davinci-", Match::Prefix, Encoding::P50kBase),
    ("code-cushman-", Match::Prefix, Encoding::P50kBase),
    ("davinci-codex", Match::Exact, Encoding::P50kBase),
    ("cushman-codex", Match::Exact, Encoding::P50kBase),
    // r50k_base
    ("text-davinci-001", Match::Exact, Encoding::R50kBase),
    ("text-curie-001", Match::Exact, Encoding::R50kBase),
    ("text-babbage-001", Match::Exact, Encoding::R50kBase),
    ("text-ada-001", Match::Exact, Encoding::R50kBase),
    ("davinci", Match::Exact, Encoding::R50kBase),
    ("curie", Match::Exact, Encoding::R50kBase),
    ("babbage", Match::Exact, Encoding::R50kBase),
    ("ada", Match::Exact, Encoding::R50kBase),
];

/// Prefixes that qualify a model name without changing its tokenizer: fine-tunes (`ft:gpt-4o-mini:org::id`)
/// and router-style vendor namespaces (`openai/gpt-4o`).
const MODEL_QUALIFIERS: &[&str] = &["ft:", "openai/"];

impl Encoding {
    /// Every supported encoding, in the order error messages list them.
    pub const ALL: [Encoding; 4] = [
        Encoding::O200kBase,
        Encoding::Cl100kBase,
        Encoding::P50kBase,
        Encoding::R50kBase,
    ];

    /// The encoding OpenAI uses for `model`, or `default` for a model Tollgate does not know (self-hosted
    /// models, other providers).
    ///
    /// Matching ignores ASCII case and a leading `ft:` or `openai/`.
    pub fn for_model(model: &str, default: Encoding) -> Encoding {
        let mut name = model.trim().to_ascii_lowercase();
        for qualifier in MODEL_QUALIFIERS {
            if let Some(rest) = name.strip_prefix(qualifier) {
                name = rest.to_owned();
            }
        }
        MODELS
            .iter()
            .filter(|(entry, how, _)| match how {
                Match::Exact => name == *entry,
                Match::Prefix => name.starts_with(entry),
            })
            .max_by_key(|(entry, _, _)| entry.len())
            .map_or(default, |(_, _, encoding)| *encoding)
    }

    /// The tiktoken name, e.g. `o200k_base`.
    pub fn name(self) -> &'static str {
        match self {
            Encoding::O200kBase => "o200k_base",
            Encoding::Cl100kBase => "cl100k_base",
            Encoding::P50kBase => "p50k_base",
            Encoding::R50kBase => "r50k_base",
        }
    }

    /// The process-wide tokenizer for this encoding, built on first use and kept for the life of the process.
    pub fn bpe(self) -> &'static CoreBPE {
        match self {
            Encoding::O200kBase => tiktoken_rs::o200k_base_singleton(),
            Encoding::Cl100kBase => tiktoken_rs::cl100k_base_singleton(),
            Encoding::P50kBase => tiktoken_rs::p50k_base_singleton(),
            Encoding::R50kBase => tiktoken_rs::r50k_base_singleton(),
        }
    }

    /// Builds every tokenizer now, so that no request pays for loading a vocabulary.
    pub fn load_all() {
        for encoding in Encoding::ALL {
            encoding.bpe();
        }
    }

    /// The supported names, comma-separated, for error messages.
    fn names() -> String {
        Encoding::ALL.map(Encoding::name).join(", ")
    }
}

impl fmt::Display for Encoding {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// An encoding name that is not one of [`Encoding::ALL`].
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown encoding `{name}`; expected one of: {valid}", valid = Encoding::names())]
pub struct UnknownEncoding {
    /// The name as given, cut to [`UnknownEncoding::MAX_NAME_CHARS`] characters so that a hostile value
    /// cannot flood error messages and logs.
    pub name: String,
}

impl UnknownEncoding {
    /// Longest name kept in the error.
    pub const MAX_NAME_CHARS: usize = 64;

    fn new(name: &str) -> Self {
        UnknownEncoding {
            name: name.chars().take(Self::MAX_NAME_CHARS).collect(),
        }
    }
}

impl FromStr for Encoding {
    type Err = UnknownEncoding;

    /// Parses a tiktoken name (`o200k_base`, …), ignoring ASCII case and surrounding whitespace.
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let wanted = s.trim();
        Encoding::ALL
            .into_iter()
            .find(|encoding| encoding.name().eq_ignore_ascii_case(wanted))
            .ok_or_else(|| UnknownEncoding::new(s))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const DEFAULT: Encoding = Encoding::R50kBase;

    fn model(name: &str) -> Encoding {
        Encoding::for_model(name, DEFAULT)
    }

    #[test]
    fn gpt_4o_family_uses_o200k_and_is_not_taken_for_gpt_4() {
        for name in ["gpt-4o", "gpt-4o-mini", "gpt-4o-2024-08-06", "chatgpt-4o-latest"] {
            assert_eq!(model(name), Encoding::O200kBase, "{name}");
        }
    }

    #[test]
    fn newer_gpt_and_reasoning_models_use_o200k() {
        for name in [
            "gpt-4.1",
            "gpt-4.1-nano",
            "gpt-4.5-preview",
            "gpt-5",
            "gpt-5-mini",
            "o1",
            "o1-mini",
        ] {
            assert_eq!(model(name), Encoding::O200kBase, "{name}");
        }
        for name in ["o3", "o3-mini", "o4-mini", "gpt-oss-120b"] {
            assert_eq!(model(name), Encoding::O200kBase, "{name}");
        }
    }

    #[test]
    fn gpt_4_gpt_35_and_embeddings_use_cl100k() {
        for name in [
            "gpt-4",
            "gpt-4-0613",
            "gpt-4-turbo",
            "gpt-3.5-turbo",
            "gpt-35-turbo",
        ] {
            assert_eq!(model(name), Encoding::Cl100kBase, "{name}");
        }
        for name in [
            "text-embedding-3-small",
            "text-embedding-3-large",
            "text-embedding-ada-002",
        ] {
            assert_eq!(model(name), Encoding::Cl100kBase, "{name}");
        }
    }

    #[test]
    fn legacy_models_use_p50k_and_r50k() {
        assert_eq!(model("text-davinci-003"), Encoding::P50kBase);
        assert_eq!(model("code-davinci-002"), Encoding::P50kBase);
        assert_eq!(model("davinci"), Encoding::R50kBase);
        assert_eq!(
            Encoding::for_model("davinci-002", Encoding::O200kBase),
            Encoding::Cl100kBase
        );
    }

    #[test]
    fn unknown_models_use_the_default() {
        for default in Encoding::ALL {
            for name in [
                "llama-3.1-70b-instruct",
                "qwen2.5-7b",
                "",
                "adaptive-7b",
                "claude-3-5-sonnet",
            ] {
                assert_eq!(Encoding::for_model(name, default), default, "{name}");
            }
        }
    }

    #[test]
    fn fine_tunes_vendor_prefixes_and_case_are_ignored() {
        assert_eq!(
            model("ft:gpt-4o-mini-2024-07-18:acme::abc123"),
            Encoding::O200kBase
        );
        assert_eq!(model("ft:gpt-3.5-turbo-0125:acme::abc123"), Encoding::Cl100kBase);
        assert_eq!(model("openai/gpt-4.1"), Encoding::O200kBase);
        assert_eq!(model("GPT-4o"), Encoding::O200kBase);
    }

    #[test]
    fn names_round_trip_through_from_str() {
        for encoding in Encoding::ALL {
            assert_eq!(encoding.name().parse::<Encoding>(), Ok(encoding));
            assert_eq!(encoding.to_string(), encoding.name());
        }
        assert_eq!(" O200K_BASE ".parse::<Encoding>(), Ok(Encoding::O200kBase));
    }

    #[test]
    fn an_unknown_name_lists_the_valid_ones() {
        let err = "gpt2".parse::<Encoding>().unwrap_err();
        assert_eq!(
            err.to_string(),
            "unknown encoding `gpt2`; expected one of: o200k_base, cl100k_base, p50k_base, r50k_base"
        );
    }

    #[test]
    fn a_long_unknown_name_is_cut() {
        let err = "x".repeat(10_000).parse::<Encoding>().unwrap_err();
        assert_eq!(err.name.len(), UnknownEncoding::MAX_NAME_CHARS);
    }

    #[test]
    fn serde_uses_the_tiktoken_names() {
        assert_eq!(
            serde_json::to_string(&Encoding::Cl100kBase).unwrap(),
            "\"cl100k_base\""
        );
        assert_eq!(
            serde_json::from_str::<Encoding>("\"p50k_base\"").unwrap(),
            Encoding::P50kBase
        );
    }
}
