//! Fuzzes billing-consumer's reading of a message off the usage topic: decoding the CloudEvent envelope and its
//! usage data ([`decode`], `tollgate_schemas`), pricing it with the local stack's price table, and sorting it into
//! a `usage_events` row or a `usage_events_rejected` row ([`Batch::push`]).
//!
//! Input: the message's payload (an empty input stands for a message without payload).
//!
//! Invariants beyond "no panic":
//! - every message becomes exactly one row, good or rejected, and the offset to commit moves past it;
//! - a decoded event re-encodes to JSON that decodes to the same event.

use std::sync::OnceLock;

use tollgate_billing_consumer::ingest::batch::{Batch, decode};
use tollgate_billing_consumer::ledger::pricing::PriceTable;
use tollgate_billing_consumer::ledger::store::Position;

/// compose/prices.toml, the price table of the local stack.
fn prices() -> &'static PriceTable {
    static PRICES: OnceLock<PriceTable> = OnceLock::new();
    PRICES.get_or_init(
        || match PriceTable::from_toml(include_str!("../../compose/prices.toml")) {
            Ok(table) => table,
            Err(problems) => panic!("compose/prices.toml does not load: {problems:?}"),
        },
    )
}

/// Runs one input; panics when an invariant does not hold.
pub fn run(data: &[u8]) {
    let payload = (!data.is_empty()).then_some(data);
    if let Ok(event) = decode(payload) {
        let json = match serde_json::to_vec(&event) {
            Ok(json) => json,
            Err(error) => panic!("a decoded event does not encode: {error}"),
        };
        match decode(Some(&json)) {
            Ok(again) => assert_eq!(again, event, "an event changed through encoding and decoding"),
            Err(error) => panic!("a re-encoded event does not decode: {error}"),
        }
    }
    let at = Position {
        topic: "tollgate.usage.v1".to_owned(),
        partition: 3,
        offset: 41,
    };
    let mut batch = Batch::default();
    batch.push(at, payload, 1_800_000_000, prices());
    assert_eq!(batch.len(), 1);
    assert_eq!(
        batch.rows.len() + batch.rejected.len(),
        1,
        "a message must become exactly one row"
    );
    assert_eq!(
        batch.next_offsets().get(&("tollgate.usage.v1".to_owned(), 3)),
        Some(&42)
    );
}
