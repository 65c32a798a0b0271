//! The ledger in ClickHouse: [`migrations`] create its tables, [`pricing`] gives each event its cost, [`store`]
//! maps events to rows and writes them, and [`reingest`] bills again what was rejected once a newer reader decodes it.

pub mod migrations;
pub mod pricing;
pub mod reingest;
pub mod store;
