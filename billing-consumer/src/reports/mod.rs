//! What the ledger answers: [`usage`] per model for one consumer, [`invoice`] for one consumer's month, and
//! [`table`], the aligned text tables both print.

pub mod invoice;
pub mod statement;
pub mod table;
pub mod usage;
