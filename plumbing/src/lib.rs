//! The plumbing Tollgate's services share, so that each job is written once: [`kafka`] — Kafka producers that
//! notice a lost broker and renew themselves.

pub mod kafka;
