//! What the ledger answers: [`usage`] per model for one consumer, [`invoice`] for one consumer's month,
//! [`unpriced`] the served models with unpriced events in a range, and [`table`], the aligned text tables the
//! reports print.

pub mod invoice;
pub mod statement;
pub mod table;
pub mod unpriced;
pub mod usage;
