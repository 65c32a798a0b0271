pub mod inflight;
pub mod models;
pub mod ready;
pub mod scrape;
pub mod server;
pub mod state;
