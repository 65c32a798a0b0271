//! Tollgate's wire contracts: the events every service exchanges through Kafka, and the names of the topics that
//! carry them.
//!
//! - [`envelope`] — the CloudEvents 1.0 structured-mode JSON envelope that wraps every event.
//! - [`usage`] — `tollgate.usage.v1`: one [`UsageRecorded`] per request that reached an upstream.
//! - [`quota`] — `tollgate.quota.v1`: quota scopes, fixed windows, limit strategies, and the snapshots and
//!   heartbeats billing-consumer publishes for gateways.
//! - [`config`] — `tollgate.config.v1`: the admin API's changes to instances, routes, consumers, limits and
//!   prices, which every gateway replica applies in topic order.
//! - [`prices`] — price entries (`[[prices]]` of billing-consumer's price file, `price` resources of the admin
//!   API) and the one validation both apply: exact decimal prices into micro-units, dates, currencies.
//! - [`topics`] — topic names and what keys them.
//! - [`json_schema`] — JSON Schema documents generated from these types, checked in under `json-schema/` for
//!   consumers that are not written in Rust.
//!
//! A published version never changes. New fields go into a new version (`…v2`) with its own type, fixture and
//! schema; `fixtures/` holds one golden JSON document per published version and a test proves each still
//! deserializes.

pub mod budget;
pub mod config;
pub mod envelope;
pub mod json_schema;
pub mod prices;
pub mod pricing;
pub mod quota;
pub mod topics;
pub mod usage;

pub use envelope::{CloudEvent, EventData};
pub use usage::{Attempt, EstimateSource, Outcome, UsageRecorded, UsageSource};
