//! Scrubbing provider error bodies before a client sees them. An upstream's error answer is passed on with its
//! status and shape, but a provider's 401 often quotes the key it was sent — the operator's key, not the
//! client's (`Incorrect API key provided: sk-proj-ab****wxyz`) — and one may quote it whole. [`error_body`]
//! replaces every token (a run of key-like characters: letters, digits, `-`, `_`, `*`, `.`) that could be a
//! key or a fragment of one with `[REDACTED]`:
//!
//! - a token holding the instance's configured key, or its first or last 8 characters (a fragment);
//! - a token that starts with a provider key prefix (`sk-`, `sk_`, `sess-`, `key-`, `AIza`) and is at least
//!   8 characters long;
//! - a token with three or more `*` in a row (a masked key: what is left of it is still a fragment).
//!
//! Since neither a token nor the replacement holds a quote or a backslash, a JSON body stays the same JSON with
//! only those strings changed; a body that is not UTF-8 has the key's bytes replaced. Successful answers are
//! not scrubbed.

use std::borrow::Cow;

/// What a scrubbed token becomes.
pub const REDACTED: &str = "[REDACTED]";
/// Prefixes of provider keys (OpenAI `sk-`/`sk-proj-`, Anthropic `sk-ant-`, Stripe-like `sk_`, others).
const KEY_PREFIXES: [&str; 5] = ["sk-", "sk_", "sess-", "key-", "AIza"];
/// How long a fragment of the configured key must be to be recognised.
const FRAGMENT: usize = 8;

fn key_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '*' | '.')
}

/// Whether `token` could be a key, or a piece of `key`.
fn is_key_like(token: &str, key: Option<&str>) -> bool {
    let token = token.trim_end_matches('.');
    if token.contains("***") {
        return true;
    }
    if token.len() >= FRAGMENT && KEY_PREFIXES.iter().any(|p| token.starts_with(p)) {
        return true;
    }
    let Some(key) = key.filter(|k| k.len() >= FRAGMENT) else {
        return false;
    };
    let head = &key[..FRAGMENT.min(key.len())];
    let tail = key.get(key.len() - FRAGMENT..).unwrap_or(key);
    token.contains(key) || token.contains(head) || token.contains(tail)
}

/// The error body of an upstream answer as the client may see it: key-like tokens replaced (see the module
/// doc). `key` is the instance's configured key. Borrowed when nothing was replaced.
pub fn error_body<'a>(body: &'a [u8], key: Option<&str>) -> Cow<'a, [u8]> {
    let Ok(text) = std::str::from_utf8(body) else {
        return match key.filter(|k| k.len() >= FRAGMENT) {
            Some(key) => replace_bytes(body, key.as_bytes()),
            None => Cow::Borrowed(body),
        };
    };
    let mut out = String::new();
    let mut copied = 0;
    let mut changed = false;
    let mut rest = text.char_indices().peekable();
    while let Some((start, c)) = rest.next() {
        if !key_char(c) {
            continue;
        }
        let mut end = start + c.len_utf8();
        while let Some(&(i, c)) = rest.peek() {
            if !key_char(c) {
                break;
            }
            end = i + c.len_utf8();
            rest.next();
        }
        if is_key_like(&text[start..end], key) {
            out.push_str(&text[copied..start]);
            out.push_str(REDACTED);
            copied = end;
            changed = true;
        }
    }
    if !changed {
        return Cow::Borrowed(body);
    }
    out.push_str(&text[copied..]);
    Cow::Owned(out.into_bytes())
}

fn replace_bytes<'a>(body: &'a [u8], key: &[u8]) -> Cow<'a, [u8]> {
    if !body.windows(key.len()).any(|w| w == key) {
        return Cow::Borrowed(body);
    }
    let mut out = Vec::with_capacity(body.len());
    let mut i = 0;
    while i < body.len() {
        if body[i..].starts_with(key) {
            out.extend_from_slice(REDACTED.as_bytes());
            i += key.len();
        } else {
            out.push(body[i]);
            i += 1;
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    const KEY: &str = "sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789";

    fn scrubbed(body: &str) -> String {
        String::from_utf8(error_body(body.as_bytes(), Some(KEY)).into_owned()).unwrap()
    }

    #[test]
    fn a_provider_401_quoting_the_key_or_a_masked_fragment_keeps_its_shape_but_not_the_key() {
        let whole = format!(
            r#"{{"error":{{"message":"Incorrect API key provided: {KEY}. You can find your API key at https://platform.openai.com/account/api-keys.","type":"invalid_request_error","param":null,"code":"invalid_api_key"}}}}"#
        );
        let out = scrubbed(&whole);
        let value: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert_eq!(value["error"]["code"], "invalid_api_key");
        assert_eq!(value["error"]["type"], "invalid_request_error");
        let message = value["error"]["message"].as_str().unwrap();
        assert!(
            message.starts_with("Incorrect API key provided: [REDACTED]"),
            "{message}"
        );
        assert!(
            message.contains("https://platform.openai.com/account/api-keys"),
            "{message}"
        );
        assert!(!out.contains("AbCdEfGh") && !out.contains("456789"), "{out}");

        for masked in ["sk-proj-Ab****************6789", "sk-ab***xyz", "AbCd****6789"] {
            let out = scrubbed(&format!(
                r#"{{"error":{{"message":"Incorrect API key provided: {masked}."}}}}"#
            ));
            assert!(!out.contains(masked), "{out}");
            assert!(out.contains(REDACTED), "{out}");
        }
        // A fragment of the configured key with no prefix and no mask.
        let out =
            scrubbed(r#"{"error":{"message":"key ending in 3456789 and starting sk-proj-AbCd rejected"}}"#);
        assert!(!out.contains("sk-proj-AbCd"), "{out}");
    }

    #[test]
    fn an_error_without_anything_key_like_is_passed_on_untouched() {
        let body = br#"{"error":{"message":"The model `gpt-9` does not exist.","type":"invalid_request_error","code":"model_not_found"}}"#;
        assert!(matches!(error_body(body, Some(KEY)), Cow::Borrowed(_)));
        let latin1 = b"bad key \xff sk-proj-AbCdEfGhIjKlMnOpQrStUvWxYz0123456789 \xfe";
        let out = error_body(latin1, Some(KEY));
        assert!(!out.windows(KEY.len()).any(|w| w == KEY.as_bytes()));
    }
}
