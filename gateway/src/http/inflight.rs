//! The replica's in-flight budget: how many requests and how many bytes it holds at once, whatever the clients
//! send. Every metered request takes a [`Permit`] on arrival (`server.max_inflight_requests`) and charges the
//! bytes it makes the gateway hold to it as they arrive (`server.max_inflight_bytes`): its body — the length
//! its `Content-Length` declares, before a byte is read, then the buffer's capacity as it grows (capacity, not
//! length: memory freed by one request and reused by the next is resident whole, so an uncharged capacity
//! would be held without a bound: measured, 64 bodies then held 560 MB against a 256 MiB budget); the cost of
//! parsing it (its JSON values, counted before the parse, at [`VALUE_COST`] bytes
//! each); and an upstream's whole answer, chunk by chunk while it is buffered. Past either bound the request is
//! refused with an OpenAI-shaped 503 and `Retry-After` ([`GatewayError::Overloaded`]), before the gateway holds
//! more; what it had charged is given back when its permit drops — when the request's task ends, or the stream
//! tee that took the permit over.
//!
//! The budget is what bounds the gateway's memory under hostile load: 64 clients each sending an 8 MiB body of
//! tiny JSON values cannot make it hold 64 parses of a few hundred MB, only `max_inflight_bytes` worth (plus the
//! process's own baseline); see `bench/REPORT.md` for the measured figure.
//!
//! Exported as `tollgate_inflight_requests`, `tollgate_inflight_bytes` and
//! `tollgate_inflight_refusals_total{reason}` (`requests`, `bytes`).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use bytes::BytesMut;
use metrics::Gauge;

use crate::error::GatewayError;
use crate::metrics as m;

/// What one parsed JSON value costs in memory, as charged before the parse: a `serde_json::Value` is 32 bytes,
/// an array's or object's storage grows by doubling (up to twice that), and the prompt estimate may copy a
/// chat's messages once more.
pub const VALUE_COST: usize = 96;

/// The budget shared by every worker of a replica.
#[derive(Debug)]
pub struct Inflight {
    max_requests: usize,
    max_bytes: usize,
    requests: AtomicUsize,
    bytes: AtomicUsize,
    /// `tollgate_inflight_requests` and `tollgate_inflight_bytes`, registered once (set on every change).
    requests_gauge: Gauge,
    bytes_gauge: Gauge,
}

/// One request's share of the budget: one request, and the bytes charged to it so far. Dropping it gives both
/// back.
#[derive(Debug)]
pub struct Permit {
    budget: Arc<Inflight>,
    charged: AtomicUsize,
}

impl Inflight {
    pub fn new(max_requests: usize, max_bytes: usize) -> Arc<Self> {
        Arc::new(Self {
            max_requests,
            max_bytes,
            requests: AtomicUsize::new(0),
            bytes: AtomicUsize::new(0),
            requests_gauge: metrics::gauge!(m::INFLIGHT_REQUESTS),
            bytes_gauge: metrics::gauge!(m::INFLIGHT_BYTES),
        })
    }

    /// One more request, unless `max_inflight_requests` are already in flight.
    pub fn admit(self: &Arc<Self>) -> Result<Permit, GatewayError> {
        let before = self.requests.fetch_add(1, Ordering::AcqRel);
        if before >= self.max_requests {
            self.requests.fetch_sub(1, Ordering::AcqRel);
            return Err(refused("requests"));
        }
        self.publish();
        Ok(Permit {
            budget: Arc::clone(self),
            charged: AtomicUsize::new(0),
        })
    }

    /// Requests in flight now.
    pub fn requests(&self) -> usize {
        self.requests.load(Ordering::Acquire)
    }

    /// Bytes charged now.
    pub fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Acquire)
    }

    fn publish(&self) {
        self.requests_gauge.set(self.requests() as f64);
        self.bytes_gauge.set(self.bytes() as f64);
    }
}

impl Permit {
    /// Charges `n` more bytes to this request, unless the replica would then hold more than
    /// `max_inflight_bytes`.
    pub fn charge(&self, n: usize) -> Result<(), GatewayError> {
        let budget = &self.budget;
        let before = budget.bytes.fetch_add(n, Ordering::AcqRel);
        if before.saturating_add(n) > budget.max_bytes {
            budget.bytes.fetch_sub(n, Ordering::AcqRel);
            return Err(refused("bytes"));
        }
        self.charged.fetch_add(n, Ordering::AcqRel);
        budget.publish();
        Ok(())
    }

    /// Grows `buf` to hold `more` bytes and charges what it allocated, before `more` is copied in: the
    /// budget counts a buffer's capacity, not its length (a reused allocation is resident whole). `charged` is
    /// what was charged for `buf` so far.
    pub fn grow(&self, buf: &mut BytesMut, more: usize, charged: &mut usize) -> Result<(), GatewayError> {
        let needed = buf.len().saturating_add(more);
        if needed > buf.capacity() {
            // Doubling, as `BytesMut` would, but charged first.
            let target = needed.max(buf.capacity().saturating_mul(2));
            self.charge(target.saturating_sub(*charged))?;
            *charged = (*charged).max(target);
            buf.reserve(target - buf.len());
        }
        let extra = buf.capacity().saturating_sub(*charged);
        if extra > 0 {
            self.charge(extra)?;
            *charged += extra;
        }
        Ok(())
    }

    /// Bytes charged to this request so far.
    pub fn charged(&self) -> usize {
        self.charged.load(Ordering::Acquire)
    }
}

impl Drop for Permit {
    fn drop(&mut self) {
        let charged = *self.charged.get_mut();
        self.budget.bytes.fetch_sub(charged, Ordering::AcqRel);
        self.budget.requests.fetch_sub(1, Ordering::AcqRel);
        self.budget.publish();
    }
}

fn refused(reason: &'static str) -> GatewayError {
    metrics::counter!(m::INFLIGHT_REFUSALS_TOTAL, "reason" => reason).increment(1);
    GatewayError::Overloaded { reason }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_and_bytes_past_the_bounds_are_refused_and_given_back_on_drop() {
        let budget = Inflight::new(2, 100);
        let a = budget.admit().unwrap();
        let b = budget.admit().unwrap();
        assert!(matches!(
            budget.admit(),
            Err(GatewayError::Overloaded { reason: "requests" })
        ));
        a.charge(60).unwrap();
        assert!(matches!(
            b.charge(41),
            Err(GatewayError::Overloaded { reason: "bytes" })
        ));
        b.charge(40).unwrap();
        assert_eq!((budget.requests(), budget.bytes()), (2, 100));
        drop(a);
        assert_eq!((budget.requests(), budget.bytes()), (1, 40));
        let c = budget.admit().unwrap();
        c.charge(60).unwrap();
        drop(b);
        drop(c);
        assert_eq!((budget.requests(), budget.bytes()), (0, 0));
    }

    #[test]
    fn a_growing_buffer_is_charged_its_capacity_before_it_grows() {
        let budget = Inflight::new(1, 1000);
        let permit = budget.admit().unwrap();
        let mut buf = BytesMut::new();
        let mut charged = 0;
        permit.grow(&mut buf, 100, &mut charged).unwrap();
        buf.extend_from_slice(&[0; 100]);
        assert!(charged >= buf.capacity() && charged >= 100, "{charged}");
        permit.grow(&mut buf, 300, &mut charged).unwrap();
        buf.extend_from_slice(&[0; 300]);
        assert_eq!(budget.bytes(), charged);
        assert!(charged >= buf.capacity());
        // Doubling past the budget is refused before the allocation.
        assert!(matches!(
            permit.grow(&mut buf, 700, &mut charged),
            Err(GatewayError::Overloaded { reason: "bytes" })
        ));
        assert_eq!(buf.len(), 400);
    }
}
