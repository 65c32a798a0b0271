pub mod sidecar;
pub mod sse;
pub mod stream_usage;
