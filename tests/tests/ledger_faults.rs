//! The ledger under faults (issue 6), on a broker and a ClickHouse of the test's own so that they can be stopped:
//! an outage of either loses no usage event and counts none twice.

#![allow(clippy::expect_used, clippy::unwrap_used, clippy::panic)] // test code: a failed expectation fails the test

use std::time::Duration;

use tollgate_tests::procs::{PrivateBroker, PrivateClickHouse};

#[test]
fn a_private_broker_and_clickhouse_survive_a_stop_and_start() {
    let mut broker = PrivateBroker::start();
    let mut clickhouse = PrivateClickHouse::start();
    broker.stop();
    clickhouse.stop();
    std::thread::sleep(Duration::from_millis(200));
    broker.resume();
    clickhouse.resume();
    assert!(broker.brokers().starts_with("127.0.0.1:"));
    assert!(clickhouse.url().starts_with("http://127.0.0.1:"));
}
