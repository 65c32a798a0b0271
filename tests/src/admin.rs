//! Calling the admin API from tests: an `[admin]` table with one admin and one viewer key, and a client that
//! sends JSON and reads back status, headers and JSON.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test support: a failed expectation fails the test

use std::collections::HashMap;

use serde_json::Value;

use crate::stack::http;

/// The admin key of `[admin]` below (id `ops`, role admin).
pub const ADMIN_KEY: &str = "adm-ops-0123456789";
/// The viewer key (id `dash`, role viewer).
pub const VIEWER_KEY: &str = "adm-dash-0123456789";

/// `[admin]` on a free loopback port with one admin and one viewer key, plus `more` (allow, trusted_proxies,
/// config_topic).
pub fn admin_toml(more: &str) -> String {
    let hash = |key: &str| hex::encode(tollgate_gateway::admission::auth::hash_key(key.as_bytes()));
    format!(
        "[admin]\nlisten = \"127.0.0.1:0\"\n{more}\nkeys = [\n  {{ id = \"ops\", sha256 = \"{}\", role = \"admin\" }},\n  \
         {{ id = \"dash\", sha256 = \"{}\", role = \"viewer\" }},\n]\n",
        hash(ADMIN_KEY),
        hash(VIEWER_KEY)
    )
}

/// An admin API answer.
#[derive(Debug)]
pub struct AdminReply {
    pub status: u16,
    pub headers: HashMap<String, String>,
    pub body: Value,
}

impl AdminReply {
    /// `x-tollgate-config-version`.
    pub fn version(&self) -> i64 {
        self.headers
            .get("x-tollgate-config-version")
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no config version in {self:?}"))
    }
}

/// `method base+path` with `key` in `X-API-KEY` (none when `None`) and `body` as JSON.
pub async fn admin(
    base: &str,
    method: &str,
    path: &str,
    key: Option<&str>,
    body: Option<&Value>,
) -> AdminReply {
    let method = actix_web::http::Method::from_bytes(method.as_bytes()).unwrap();
    let mut tries = 0;
    let (response, bytes) = loop {
        let mut request = http().request(method.clone(), format!("{base}{path}"));
        if let Some(key) = key {
            request = request.insert_header(("X-API-KEY", key));
        }
        let sent = match body {
            Some(body) => request.send_json(body).await,
            None => request.send().await,
        };
        let mut response = sent.expect("the admin API answers");
        let bytes = response.body().limit(1 << 20).await.expect("a body");
        // An empty 408 is the HTTP layer's: on a machine busy with other tests, the request's head was not read
        // within its timeout, and nothing was done with it. Sending it again is safe.
        tries += 1;
        if response.status() == 408 && bytes.is_empty() && tries < 3 {
            continue;
        }
        break (response, bytes);
    };
    AdminReply {
        status: response.status().as_u16(),
        headers: response
            .headers()
            .iter()
            .filter_map(|(n, v)| Some((n.as_str().to_owned(), v.to_str().ok()?.to_owned())))
            .collect(),
        body: serde_json::from_slice(&bytes)
            .unwrap_or_else(|_| Value::String(String::from_utf8_lossy(&bytes).into())),
    }
}
