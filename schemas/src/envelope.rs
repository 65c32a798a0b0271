//! The CloudEvents 1.0 envelope in structured mode: the event's metadata and its `data` travel together as one
//! JSON object, so a Kafka message is self-describing without relying on headers.
//!
//! The `id` is a UUIDv7 generated once per request. It survives spooling and retries unchanged and is the
//! idempotency key downstream: billing-consumer deduplicates on it.
//!
//! **Tolerant readers, strict writers.** Every event type reads what it knows and ignores the rest: an unknown
//! member of the envelope (a CloudEvents extension attribute such as `traceparent`) or of `data` (a field a newer
//! producer added during a rolling upgrade) is skipped, never a reason to reject the event — a rejected usage
//! event would be unbilled. The known fields stay strict in type (a negative token count, a missing field or a
//! wrong `type` still fails). Writers never produce a member the type does not declare: the checked-in JSON
//! Schemas keep `additionalProperties: false`, which is the writers' contract.

use chrono::{DateTime, Utc};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};
use uuid::Uuid;

/// The CloudEvents specification version this envelope follows.
pub const SPEC_VERSION: &str = "1.0";

/// Content type of `data` in every Tollgate event.
pub const DATA_CONTENT_TYPE: &str = "application/json";

/// The payload of one event type: ties a Rust type to its CloudEvents `type` string.
pub trait EventData {
    /// The CloudEvents `type`, e.g. `tollgate.usage.v1`. Never changes once published.
    const TYPE: &'static str;
}

/// A CloudEvents 1.0 structured-mode envelope around `T`.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, JsonSchema)]
#[schemars(deny_unknown_fields)]
pub struct CloudEvent<T> {
    /// Always `"1.0"`.
    pub specversion: String,
    /// UUIDv7; generated once per request and kept through spool and retries. The idempotency key.
    pub id: Uuid,
    /// The event type, e.g. `tollgate.usage.v1`.
    #[serde(rename = "type")]
    pub event_type: String,
    /// The producing service instance, e.g. `tollgate-gateway/host-1`.
    pub source: String,
    /// When the event happened (for usage: when the request finished), RFC 3339 in UTC.
    pub time: DateTime<Utc>,
    /// The subject the event is about; for usage events the consumer id.
    pub subject: String,
    /// Always `application/json`.
    pub datacontenttype: String,
    /// The event payload.
    pub data: T,
}

impl<T: EventData> CloudEvent<T> {
    /// Wraps `data` in a new envelope with a fresh UUIDv7 id.
    pub fn new(source: impl Into<String>, subject: impl Into<String>, time: DateTime<Utc>, data: T) -> Self {
        Self::with_id(Uuid::now_v7(), source, subject, time, data)
    }

    /// Wraps `data` in an envelope with a given id (used when the id was generated earlier in the request).
    pub fn with_id(
        id: Uuid,
        source: impl Into<String>,
        subject: impl Into<String>,
        time: DateTime<Utc>,
        data: T,
    ) -> Self {
        Self {
            specversion: SPEC_VERSION.to_owned(),
            id,
            event_type: T::TYPE.to_owned(),
            source: source.into(),
            time,
            subject: subject.into(),
            datacontenttype: DATA_CONTENT_TYPE.to_owned(),
            data,
        }
    }

    /// True when the envelope's `type` and `specversion` are the ones this type was published with.
    pub fn is_expected_type(&self) -> bool {
        self.event_type == T::TYPE && self.specversion == SPEC_VERSION
    }
}
