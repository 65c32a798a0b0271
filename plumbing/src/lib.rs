//! The plumbing Tollgate's services share, so that each job is written once: [`kafka`] — Kafka producers that
//! notice a lost broker and renew themselves; [`telemetry`] — logging and the Prometheus recorder with its
//! upkeep; [`topics`] — topic creation, compacted where asked, with a fallback for brokers that refuse it;
//! [`follow`] — a thread that reads a topic from its beginning, knows when it has caught up, and follows it;
//! [`error`] — [`KafkaOpError`], the typed error of a Kafka operation.

pub mod error;
pub mod follow;
pub mod kafka;
pub mod telemetry;
pub mod topics;

pub use error::KafkaOpError;
