//! Draining the spool to Kafka, in order, deleting a segment only after Kafka acknowledged every record in it.
//!
//! The [`Drain`] reads records from the spool's first unacknowledged position on and hands them to a [`Sink`]
//! (the event pump's producer) — at most [`WINDOW_RECORDS`] records and about [`WINDOW_BYTES`] in flight. Each
//! record of the window is in one of four states: its **original** send (the event was handed to Kafka before
//! it was spooled, and librdkafka is still trying) has not resolved; it is **in flight** from the spool; it
//! **failed** and waits to be sent again; or it is **acknowledged**. The acknowledged prefix of the window is the
//! frontier: [`Drain::release`] tells the spool, which deletes the segments before it.
//!
//! An event spooled while its original send was still pending is sent from the spool only if that send fails:
//! when it succeeds the spooled copy counts as acknowledged and is not sent again, so a slow broker does not
//! double events. A failed send stops reading ahead; after [`RETRY_AFTER`] the failed records are sent again,
//! oldest first, and reading goes on. When a record is acknowledged, the quota books' [`LocalUsage`] of its
//! event (kept in memory for events spooled by this process) learns its partition and offset.

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::{Duration, Instant};

use super::{Pos, Record, Spool};
use crate::admission::quota::LocalUsage;

/// Records sent from the spool and not acknowledged yet, at most. Small enough that a broker just back from an
/// outage, busy and slow, acknowledges a window well within `kafka.message_timeout` (a window that times out
/// as a whole is sent again, and a too-large one could time out forever).
pub const WINDOW_RECORDS: usize = 1024;
/// Bytes of records held for the window, about at most.
pub const WINDOW_BYTES: usize = 2 << 20;
/// How long after a failed send records are sent again.
pub const RETRY_AFTER: Duration = Duration::from_secs(1);

/// Where spooled records go: the event pump's Kafka producer (a test double in unit tests).
pub trait Sink {
    /// Hands one record to Kafka; the outcome comes back through [`Drain::acknowledged`] or [`Drain::failed`].
    /// `Err` when it was refused at once (librdkafka's queue is full): it is tried again later.
    fn send(&mut self, pos: Pos, key: &[u8], payload: &[u8]) -> Result<(), Refused>;
}

/// A send refused before it started.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused;

#[derive(Debug)]
enum Slot {
    /// Spooled while its original send was pending; that send has not resolved.
    Original(Record),
    InFlight(Record),
    Failed {
        record: Record,
        retry_at: Instant,
    },
    Acknowledged,
}

impl Slot {
    fn size(&self) -> usize {
        match self {
            Self::Original(r) | Self::InFlight(r) | Self::Failed { record: r, .. } => r.size(),
            Self::Acknowledged => 0,
        }
    }
}

/// What happened to a spooled event's original send before the drain reached it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Original {
    Pending,
    Delivered,
}

/// The drain's state: the window, and what it must know about records it has not read yet.
#[derive(Debug)]
pub struct Drain {
    /// The next position to read.
    read: Pos,
    window: BTreeMap<Pos, Slot>,
    window_bytes: usize,
    /// Spooled events whose original send mattered when the drain had not read them yet.
    originals: HashMap<Pos, Original>,
    /// The quota books' record of events spooled by this process, until Kafka acknowledges them.
    locals: HashMap<Pos, Arc<LocalUsage>>,
    retry_at: Option<Instant>,
    /// No more reading: the gateway is shutting down.
    closed: bool,
}

impl Drain {
    /// A drain reading from `start` on (the spool's first unacknowledged record).
    pub fn new(start: Pos) -> Self {
        Self {
            read: start,
            window: BTreeMap::new(),
            window_bytes: 0,
            originals: HashMap::new(),
            locals: HashMap::new(),
            retry_at: None,
            closed: false,
        }
    }

    /// The record at `pos` was spooled while its original send is still pending.
    pub fn spooled_pending(&mut self, pos: Pos) {
        self.originals.insert(pos, Original::Pending);
    }

    /// Keeps `local` until the record at `pos` is acknowledged.
    pub fn remember(&mut self, pos: Pos, local: Arc<LocalUsage>) {
        self.locals.insert(pos, local);
    }

    /// The original send of the record at `pos` resolved. When it failed, the spooled copy is sent (and `local`,
    /// if any, waits for its acknowledgement); when it succeeded, the copy is never sent.
    pub fn original_settled(
        &mut self,
        pos: Pos,
        delivered: bool,
        local: Option<Arc<LocalUsage>>,
        now: Instant,
    ) {
        if let Some(local) = local.filter(|_| !delivered) {
            self.locals.insert(pos, local);
        }
        match self.window.remove(&pos) {
            Some(Slot::Original(record)) => {
                self.window_bytes -= record.size();
                let slot = if delivered {
                    Slot::Acknowledged
                } else {
                    Slot::Failed {
                        record,
                        retry_at: now,
                    }
                };
                self.insert(pos, slot);
                if !delivered {
                    self.retry_at = Some(self.retry_at.map_or(now, |at| at.min(now)));
                }
            }
            Some(other) => {
                self.window.insert(pos, other);
            }
            None if delivered => {
                self.originals.insert(pos, Original::Delivered);
            }
            None => {
                self.originals.remove(&pos);
            }
        }
    }

    /// Kafka acknowledged the record at `pos` sent from the spool. False when it was not in flight (nothing to
    /// count).
    pub fn acknowledged(&mut self, pos: Pos, partition: i32, offset: i64) -> bool {
        if !matches!(self.window.get(&pos), Some(Slot::InFlight(_))) {
            return false;
        }
        if let Some(slot) = self.window.remove(&pos) {
            self.window_bytes -= slot.size();
        }
        self.insert(pos, Slot::Acknowledged);
        if let Some(local) = self.locals.remove(&pos) {
            local.delivered(partition, offset);
        }
        true
    }

    /// Kafka did not acknowledge the record at `pos`: it is sent again after [`RETRY_AFTER`].
    pub fn failed(&mut self, pos: Pos, now: Instant) {
        let Some(Slot::InFlight(_)) = self.window.get(&pos) else {
            return;
        };
        let Some(Slot::InFlight(record)) = self.window.remove(&pos) else {
            return;
        };
        let retry_at = now + RETRY_AFTER;
        self.window.insert(pos, Slot::Failed { record, retry_at });
        self.retry_at = Some(self.retry_at.map_or(retry_at, |at| at.min(retry_at)));
    }

    /// When the drain wants to run again to send failed records.
    pub fn retry_at(&self) -> Option<Instant> {
        self.retry_at
    }

    /// Sends what is due: failed records whose time has come, oldest first, then — unless some still wait —
    /// new records read from the spool, up to the window.
    pub fn fill(&mut self, spool: &mut Spool, sink: &mut impl Sink, now: Instant) -> std::io::Result<()> {
        if self.retry_at.is_some_and(|at| at <= now) {
            self.retry(sink, now);
        }
        while !self.closed
            && self.retry_at.is_none()
            && self.window.len() < WINDOW_RECORDS
            && self.window_bytes < WINDOW_BYTES
        {
            let room = WINDOW_RECORDS - self.window.len();
            let (records, next) = spool.read(self.read, room, WINDOW_BYTES - self.window_bytes)?;
            self.read = next;
            if records.is_empty() {
                break;
            }
            for record in records {
                let pos = record.pos;
                let slot = match self.originals.remove(&pos) {
                    Some(Original::Pending) => Slot::Original(record),
                    Some(Original::Delivered) => Slot::Acknowledged,
                    None => self.send(sink, record, now),
                };
                self.insert(pos, slot);
            }
        }
        Ok(())
    }

    fn retry(&mut self, sink: &mut impl Sink, now: Instant) {
        self.retry_at = None;
        let due: Vec<Pos> = self
            .window
            .iter()
            .filter(|(_, slot)| matches!(slot, Slot::Failed { retry_at, .. } if *retry_at <= now))
            .map(|(pos, _)| *pos)
            .collect();
        for pos in due {
            if let Some(Slot::Failed { record, .. }) = self.window.remove(&pos) {
                self.window_bytes -= record.size();
                let slot = self.send(sink, record, now);
                self.insert(pos, slot);
            }
        }
        // Failed records that are not due yet keep the drain waiting.
        self.retry_at = self
            .window
            .values()
            .filter_map(|slot| match slot {
                Slot::Failed { retry_at, .. } => Some(*retry_at),
                _ => None,
            })
            .min();
    }

    fn send(&mut self, sink: &mut impl Sink, record: Record, now: Instant) -> Slot {
        match sink.send(record.pos, &record.key, &record.payload) {
            Ok(()) => Slot::InFlight(record),
            Err(Refused) => {
                let retry_at = now + RETRY_AFTER / 10;
                self.retry_at = Some(self.retry_at.map_or(retry_at, |at| at.min(retry_at)));
                Slot::Failed { record, retry_at }
            }
        }
    }

    fn insert(&mut self, pos: Pos, slot: Slot) {
        self.window_bytes += slot.size();
        self.window.insert(pos, slot);
    }

    /// Tells the spool what Kafka acknowledged: everything before the first record of the window that is not
    /// acknowledged (or everything read, when the whole window is).
    pub fn release(&mut self, spool: &mut Spool) -> std::io::Result<()> {
        while let Some(entry) = self.window.first_entry() {
            if !matches!(entry.get(), Slot::Acknowledged) {
                break;
            }
            entry.remove();
        }
        let frontier = self.window.keys().next().copied().unwrap_or(self.read);
        spool.release(frontier)
    }

    /// Records sent (from the spool or originally) whose outcome is not known yet.
    pub fn in_flight(&self) -> usize {
        self.window
            .values()
            .filter(|slot| matches!(slot, Slot::Original(_) | Slot::InFlight(_)))
            .count()
    }

    /// Stops reading new records (shutdown): what is in flight may still be acknowledged.
    pub fn close(&mut self) {
        self.closed = true;
        self.retry_at = None;
    }
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::config::{OnFull, SpoolConfig};

    /// A sink that records what it was given.
    #[derive(Default)]
    struct Recorder {
        sent: Vec<(Pos, String)>,
        refuse: bool,
    }

    impl Sink for Recorder {
        fn send(&mut self, pos: Pos, _key: &[u8], payload: &[u8]) -> Result<(), Refused> {
            if self.refuse {
                return Err(Refused);
            }
            self.sent
                .push((pos, String::from_utf8_lossy(payload).into_owned()));
            Ok(())
        }
    }

    fn spool(name: &str, segment_bytes: u64) -> (Spool, PathBuf) {
        let dir =
            std::env::temp_dir().join(format!("tollgate-drain-{name}-{}", uuid::Uuid::now_v7().simple()));
        let config = SpoolConfig {
            dir: dir.clone(),
            max_bytes: 1 << 20,
            segment_bytes,
            fsync_interval: Duration::from_millis(20),
            after: Duration::from_secs(1),
            on_full: OnFull::Reject,
            write_ahead: false,
        };
        (Spool::open(&config).unwrap(), dir)
    }

    fn append(spool: &mut Spool, payloads: &[&str]) -> Vec<Pos> {
        payloads
            .iter()
            .map(|p| spool.append(b"team-a", p.as_bytes(), false).unwrap())
            .collect()
    }

    fn payloads(sent: &[(Pos, String)]) -> Vec<&str> {
        sent.iter().map(|(_, p)| p.as_str()).collect()
    }

    #[test]
    fn records_go_out_in_order_and_segments_go_only_when_every_record_in_them_is_acknowledged() {
        // 22-byte records, three to a segment.
        let (mut spool, dir) = spool("order", 66);
        let pos = append(&mut spool, &["e1", "e2", "e3", "e4", "e5", "e6", "e7"]);
        assert_eq!(spool.segments(), 3);
        let mut drain = Drain::new(spool.start());
        let mut kafka = Recorder::default();
        let now = Instant::now();
        drain.fill(&mut spool, &mut kafka, now).unwrap();
        assert_eq!(payloads(&kafka.sent), ["e1", "e2", "e3", "e4", "e5", "e6", "e7"]);
        // Acknowledgements arrive out of order: the first segment stays until e1, e2 and e3 are all in.
        for p in [pos[1], pos[2], pos[3]] {
            assert!(drain.acknowledged(p, 0, 1));
        }
        drain.release(&mut spool).unwrap();
        assert_eq!(spool.segments(), 3);
        assert!(drain.acknowledged(pos[0], 0, 0));
        drain.release(&mut spool).unwrap();
        assert_eq!(spool.segments(), 2, "the first segment is fully acknowledged");
        for p in &pos[4..] {
            assert!(drain.acknowledged(*p, 0, 2));
        }
        drain.release(&mut spool).unwrap();
        assert!(spool.is_empty());
        assert_eq!(spool.bytes(), 0);
        assert!(super::super::segment_ids(&dir).unwrap().is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_failed_record_is_sent_again_before_anything_newer_is_read() {
        let (mut spool, dir) = spool("retry", 1 << 16);
        let pos = append(&mut spool, &["e1", "e2"]);
        let mut drain = Drain::new(spool.start());
        let mut kafka = Recorder::default();
        let now = Instant::now();
        drain.fill(&mut spool, &mut kafka, now).unwrap();
        drain.failed(pos[0], now);
        assert!(drain.acknowledged(pos[1], 0, 7));
        append(&mut spool, &["e3"]);
        drain.fill(&mut spool, &mut kafka, now).unwrap();
        assert_eq!(payloads(&kafka.sent), ["e1", "e2"], "nothing new while e1 waits");
        assert_eq!(drain.retry_at(), Some(now + RETRY_AFTER));
        drain.fill(&mut spool, &mut kafka, now + RETRY_AFTER).unwrap();
        assert_eq!(payloads(&kafka.sent), ["e1", "e2", "e1", "e3"]);
        drain.release(&mut spool).unwrap();
        assert_eq!(spool.start(), pos[0], "e1 is still not acknowledged");
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_copy_is_sent_only_when_its_original_send_fails() {
        let (mut spool, dir) = spool("originals", 1 << 16);
        let pos = append(&mut spool, &["e1", "e2", "e3"]);
        let mut drain = Drain::new(spool.start());
        for p in &pos {
            drain.spooled_pending(*p);
        }
        let now = Instant::now();
        // e1's original is acknowledged before the drain reads it; e2's fails after; e3's succeeds after.
        drain.original_settled(pos[0], true, None, now);
        let mut kafka = Recorder::default();
        drain.fill(&mut spool, &mut kafka, now).unwrap();
        assert!(kafka.sent.is_empty());
        assert_eq!(drain.in_flight(), 2);
        drain.original_settled(pos[1], false, None, now);
        drain.original_settled(pos[2], true, None, now);
        drain.fill(&mut spool, &mut kafka, now).unwrap();
        assert_eq!(payloads(&kafka.sent), ["e2"]);
        assert!(drain.acknowledged(pos[1], 0, 3));
        drain.release(&mut spool).unwrap();
        assert!(spool.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn an_acknowledgement_tells_the_quota_books_where_the_event_landed() {
        let (mut spool, dir) = spool("locals", 1 << 16);
        let pos = append(&mut spool, &["e1"]);
        let mut drain = Drain::new(spool.start());
        let local = Arc::new(LocalUsage::for_test());
        drain.remember(pos[0], local.clone());
        drain
            .fill(&mut spool, &mut Recorder::default(), Instant::now())
            .unwrap();
        assert!(drain.acknowledged(pos[0], 2, 41));
        assert_eq!(local.landed(), Some((2, 41)));
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_refused_send_is_tried_again_soon() {
        let (mut spool, dir) = spool("refused", 1 << 16);
        append(&mut spool, &["e1"]);
        let mut drain = Drain::new(spool.start());
        let mut kafka = Recorder {
            refuse: true,
            ..Recorder::default()
        };
        let now = Instant::now();
        drain.fill(&mut spool, &mut kafka, now).unwrap();
        assert_eq!(drain.retry_at(), Some(now + RETRY_AFTER / 10));
        kafka.refuse = false;
        drain.fill(&mut spool, &mut kafka, now + RETRY_AFTER).unwrap();
        assert_eq!(payloads(&kafka.sent), ["e1"]);
        std::fs::remove_dir_all(dir).unwrap();
    }

    #[test]
    fn a_closed_drain_reads_nothing_new() {
        let (mut spool, dir) = spool("closed", 1 << 16);
        append(&mut spool, &["e1"]);
        let mut drain = Drain::new(spool.start());
        drain.close();
        let mut kafka = Recorder::default();
        drain.fill(&mut spool, &mut kafka, Instant::now()).unwrap();
        assert!(kafka.sent.is_empty());
        std::fs::remove_dir_all(dir).unwrap();
    }
}
