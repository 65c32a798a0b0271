//! Metering: how many tokens a request used, as far as the gateway counts them itself. Prompt estimates from
//! meter-sidecar before forwarding, batched, with an in-process fallback ([`sidecar`]); and, along a stream on
//! its way to the client, SSE framing ([`sse`]) and what the stream consumed ([`stream_usage`]). What a
//! provider's answer says it consumed is a protocol fact ([`crate::protocol::usage`]); the usage record a request
//! settles into is [`crate::pipeline::settle`]'s, and it leaves through [`crate::events`].

pub mod sidecar;
pub mod sse;
pub mod stream_usage;
