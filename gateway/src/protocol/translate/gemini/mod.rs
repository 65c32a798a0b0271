//! Translation between OpenAI Chat Completions and Google Gemini's native `generateContent` /
//! `streamGenerateContent` API, one way: an OpenAI client's request into Gemini's protocol ([`request`]), and
//! Gemini's answer back into OpenAI's, whole ([`response`]) or streamed with `alt=sse` one event at a time
//! ([`stream`]), with Gemini's errors ([`error`]) and its `usageMetadata` read as Tollgate bills it ([`usage`]).
//! Like the rest of [`translate`](super), everything here is a pure function over JSON values or bytes: no I/O,
//! nothing about routes or URLs (Gemini names the model in the URL, which is the caller's to build), and no
//! input panics. `docs/translation.md` (section "Gemini") is the mapping in prose.

pub mod error;
pub mod request;
pub mod response;
pub mod stream;
pub mod usage;

#[cfg(test)]
mod tests;

pub use error::{gemini_error_to_anthropic, gemini_error_to_openai};
pub use request::{GeminiRequest, STRIPPED_SCHEMA_KEYWORDS, openai_object_to_gemini};
pub use response::gemini_to_openai_answer;
pub use stream::GeminiToOpenAiStream;
