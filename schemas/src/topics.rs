//! Kafka topic names. Each topic carries exactly one event type; the version is part of the name so that a new
//! version can run beside the old one during a migration.

/// Usage events ([`crate::UsageRecorded`]). Key: the consumer id, so that one consumer's events stay in order on
/// one partition and the billing side can deduplicate and window them per consumer.
pub const USAGE_V1: &str = "tollgate.usage.v1";

/// Quota snapshots ([`crate::quota::QuotaSnapshot`]) and heartbeats published by billing-consumer. Compacted; key:
/// the quota scope's key, or [`crate::quota::HEARTBEAT_KEY`].
pub const QUOTA_V1: &str = "tollgate.quota.v1";

/// Admin configuration changes. Compacted; key: resource kind and id.
pub const CONFIG_V1: &str = "tollgate.config.v1";

/// What billing-consumer's threshold alerts sent: one record per alert id (`pending`, then `delivered`,
/// `rejected` or `failed`), read back at start so no threshold is sent twice. Compacted, one partition; key: the
/// alert id.
pub const ALERTS_V1: &str = "tollgate.alerts.v1";
