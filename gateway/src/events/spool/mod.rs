//! The durable spool: usage events that Kafka has not acknowledged, on local disk, in order, until it does.
//!
//! **What it owns.** A directory (`spool.dir`) of append-only segment files `00000000000000000001.spool`, … —
//! each a sequence of [`frame`]s (magic, length, CRC-32 of the record, then the Kafka key and the event's JSON
//! exactly as it goes to Kafka, UUIDv7 id included) — plus a `LOCK` file that one gateway holds for as long as it
//! runs, and a `cursor` file naming the first record not yet acknowledged.
//!
//! **What comes in.** The event pump ([`crate::events`]) appends an event when Kafka is unreachable or slow to
//! acknowledge, and every new event behind it while the spool is not empty, so that order holds. Appends go to
//! the page cache at once (enough against `kill -9`); the pump fsyncs them in batches (`spool.fsync_interval`),
//! and the spool fsyncs a segment when it rolls to the next (`spool.segment_bytes`) and on shutdown (against
//! power loss). **A failed fsync is fatal for its segment**: after one, the kernel may have dropped the
//! segment's dirty pages and a later fsync of it can succeed all the same, so nothing in it that was not
//! fsynced before can be trusted. The spool therefore keeps a copy in memory of every record appended since its
//! segment's last successful fsync (bounded by what `spool.fsync_interval` lets pile up, and by a segment); when
//! an fsync fails ([`Spool::synced`], [`Spool::sync_now`], a roll), the segment is sealed — nothing more is
//! appended to it — and those records are written again to a new segment, which is fsynced at once; the failure
//! is logged and counted in `tollgate_spool_fsync_failures_total`. The old copies stay where they were (they may
//! well be readable): the drain may send both, duplicates by event id that the ledger absorbs like a crash's. If
//! the new segment cannot be written or fsynced either, the caller gets the error and the records stay in
//! memory, written again at the next attempt. The total size is bounded by `spool.max_bytes`: past it an append is refused
//! ([`AppendError::Full`]) unless the caller forces it, and [`SpoolStatus::is_full`] tells the request path.
//!
//! **What goes out.** [`drain`] reads the records back in order and hands them to Kafka; a segment file is
//! deleted only when every record in it has been acknowledged ([`Spool::release`]). A crash between Kafka's
//! acknowledgement and the next write of the `cursor` file (or the deletion of a segment) produces those records
//! again after restart: duplicates by event id, which the ledger (`ReplacingMergeTree` by event id, read with
//! `FINAL`) and billing-consumer's quota loop (dedup by event id) absorb. Nothing is lost that reached the page
//! cache.
//!
//! **After a crash.** [`Spool::open`] checks every record of every segment. A torn or corrupt record at the end
//! of a segment — a short header, a short payload, a checksum mismatch or garbage with no valid record after it —
//! is logged with its segment and offset, counted in `tollgate_spool_corrupt_records_total{reason}` and cut off
//! (the file is truncated after the last valid record, so appends continue cleanly). A corrupt record in the
//! middle is logged and counted, and reading resumes at the next valid magic and checksum. A record is only ever
//! read when its checksum matches: corruption loses the records it hit, never turns into other records.

pub mod drain;
pub mod frame;

use std::collections::{HashSet, VecDeque};
use std::fs::{File, OpenOptions};
use std::io::{self, ErrorKind};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};

use crate::config::{OnFull, SpoolConfig};
use crate::metrics as m;
use frame::{Corruption, EncodeError, Step};

/// The segment files' extension.
const SEGMENT_EXTENSION: &str = "spool";
/// Digits of a segment's number in its file name (zero-padded, so names sort like numbers).
const SEGMENT_DIGITS: usize = 20;
const LOCK_FILE: &str = "LOCK";
const CURSOR_FILE: &str = "cursor";
/// Bytes read from a segment at a time while draining at most (more when one record is larger).
const READ_CHUNK: u64 = 1 << 20;
/// Bytes read from a segment at a time at least.
const MIN_READ: u64 = 16 << 10;
/// What a read budgets per record the caller can still take: a usage event's frame is about 900 bytes. A read
/// sized by what the caller takes keeps a nearly full drain window (write-ahead under load: a few records a
/// wake-up) from reading and zeroing a whole chunk for each of them.
const READ_PER_RECORD: u64 = 1 << 10;

/// Where a record starts: its segment's number and its byte offset in that segment. Positions order like the
/// records: by segment, then offset.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Pos {
    pub segment: u64,
    pub offset: u64,
}

impl std::fmt::Display for Pos {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}:{}", self.segment, self.offset)
    }
}

/// One record read back.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub pos: Pos,
    /// The Kafka key (the consumer id).
    pub key: Vec<u8>,
    /// The event's JSON.
    pub payload: Vec<u8>,
}

impl Record {
    /// The bytes it holds in memory (its key and payload).
    pub fn size(&self) -> usize {
        self.key.len() + self.payload.len()
    }
}

/// Why the spool could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum SpoolError {
    #[error("spool directory {dir}: {source}")]
    Io { dir: PathBuf, source: io::Error },
    #[error("spool directory {dir} is in use by another gateway process (it holds {dir}/LOCK)")]
    Locked { dir: PathBuf },
}

/// Why an append did not happen.
#[derive(Debug, thiserror::Error)]
pub enum AppendError {
    #[error("the spool is full ({bytes} of {max_bytes} bytes)")]
    Full { bytes: u64, max_bytes: u64 },
    #[error(transparent)]
    Encode(#[from] EncodeError),
    #[error("writing to the spool failed: {0}")]
    Io(#[from] io::Error),
}

/// What the request path sees of the spool, without locks.
#[derive(Debug, Default)]
pub struct SpoolStatus {
    bytes: AtomicU64,
    full: AtomicBool,
}

impl SpoolStatus {
    /// True while the spool is at or over `spool.max_bytes`, refused an append for lack of room, or cannot be
    /// written.
    pub fn is_full(&self) -> bool {
        self.full.load(Ordering::Acquire)
    }

    /// Bytes in the spool's segment files.
    pub fn bytes(&self) -> u64 {
        self.bytes.load(Ordering::Acquire)
    }
}

/// A segment file and its length (what was validated or written, not what the file system says).
#[derive(Debug, Clone, Copy)]
struct Segment {
    id: u64,
    len: u64,
}

/// The open spool. Owned by the event pump's thread; [`Spool::status`] is its shared face.
#[derive(Debug)]
pub struct Spool {
    dir: PathBuf,
    /// Held (flock) for the life of the spool.
    _lock: File,
    max_bytes: u64,
    segment_bytes: u64,
    on_full: OnFull,
    /// Oldest first; appends go to the last.
    segments: VecDeque<Segment>,
    /// The last segment, open for appends, unless it is full.
    writer: Option<(u64, File)>,
    next_id: u64,
    bytes: u64,
    /// Written since the last fsync.
    unsynced: bool,
    /// Everything before it is acknowledged by Kafka.
    acknowledged: Pos,
    cursor_on_disk: Option<Pos>,
    /// Corrupt regions already counted and logged.
    reported: HashSet<Pos>,
    /// The segment last read from.
    reader: Option<(u64, File)>,
    /// Records found by [`Spool::open`] that were not acknowledged yet.
    recovered: u64,
    /// Whether the last append was refused or failed (the spool is "full" until the next one succeeds).
    refusing: bool,
    status: Arc<SpoolStatus>,
    frame_buf: Vec<u8>,
    /// The records (whole frames) appended to each segment since its last successful fsync, oldest segment
    /// first: what is written again when an fsync of the segment fails.
    unconfirmed: VecDeque<(u64, Vec<u8>)>,
    /// The segment an fsync handed out by [`Spool::sync_target`] is running on.
    syncing: Option<u64>,
    /// How a segment is fsynced: `File::sync_data`, or a fault in tests.
    fsync: fn(&File) -> io::Result<()>,
}

/// An fsync of the segment being appended to, to run off the pump's thread; its result goes back to
/// [`Spool::synced`].
#[derive(Debug)]
pub struct SyncJob {
    file: File,
    segment: u64,
    /// The bytes of unconfirmed records it covers.
    covers: usize,
    fsync: fn(&File) -> io::Result<()>,
}

impl SyncJob {
    /// Runs the fsync (blocking).
    pub fn run(&self) -> io::Result<()> {
        (self.fsync)(&self.file)
    }
}

fn sync_data(file: &File) -> io::Result<()> {
    file.sync_data()
}

impl Spool {
    /// Opens (creating it if needed) and locks the spool directory, checks every record, cuts off torn tails and
    /// deletes segments the cursor says were fully acknowledged.
    pub fn open(config: &SpoolConfig) -> Result<Self, SpoolError> {
        let dir = config.dir.clone();
        let io_error = |source| SpoolError::Io {
            dir: dir.clone(),
            source,
        };
        std::fs::create_dir_all(&dir).map_err(io_error)?;
        let lock = OpenOptions::new()
            .create(true)
            .truncate(false)
            .write(true)
            .open(dir.join(LOCK_FILE))
            .map_err(io_error)?;
        match rustix::fs::flock(&lock, rustix::fs::FlockOperation::NonBlockingLockExclusive) {
            Ok(()) => {}
            Err(rustix::io::Errno::WOULDBLOCK) => return Err(SpoolError::Locked { dir }),
            Err(e) => return Err(io_error(e.into())),
        }
        let mut ids = segment_ids(&dir).map_err(io_error)?;
        ids.sort_unstable();
        // A cursor naming a segment that is not there is stale: trusting it could skip records.
        let cursor = read_cursor(&dir).filter(|c| ids.contains(&c.segment));
        let mut spool = Self {
            dir: dir.clone(),
            _lock: lock,
            max_bytes: config.max_bytes,
            segment_bytes: config.segment_bytes,
            on_full: config.on_full,
            segments: VecDeque::new(),
            writer: None,
            next_id: ids.last().map_or(1, |last| last + 1),
            bytes: 0,
            unsynced: false,
            acknowledged: Pos {
                segment: 0,
                offset: 0,
            },
            cursor_on_disk: cursor,
            reported: HashSet::new(),
            reader: None,
            recovered: 0,
            refusing: false,
            status: Arc::new(SpoolStatus {
                bytes: AtomicU64::new(0),
                full: AtomicBool::new(false),
            }),
            frame_buf: Vec::new(),
            unconfirmed: VecDeque::new(),
            syncing: None,
            fsync: sync_data,
        };
        for id in ids {
            let path = spool.segment_path(id);
            if cursor.is_some_and(|c| id < c.segment) {
                // The cursor is past it: every record in it was acknowledged before the last stop.
                std::fs::remove_file(&path).map_err(io_error)?;
                continue;
            }
            let from = cursor.filter(|c| c.segment == id).map_or(0, |c| c.offset);
            let (len, unacknowledged) = spool.check_segment(id, from).map_err(io_error)?;
            if len == 0 {
                std::fs::remove_file(&path).map_err(io_error)?;
                continue;
            }
            spool.recovered += unacknowledged;
            spool.segments.push_back(Segment { id, len });
            spool.bytes += len;
        }
        spool.acknowledged = match (cursor, spool.segments.front()) {
            (Some(c), Some(first)) if c.segment == first.id => Pos {
                segment: c.segment,
                offset: c.offset.min(first.len),
            },
            (_, Some(first)) => Pos {
                segment: first.id,
                offset: 0,
            },
            (_, None) => spool.end(),
        };
        if let Some(last) = spool.segments.back().copied()
            && last.len < spool.segment_bytes
        {
            let file = OpenOptions::new()
                .write(true)
                .open(spool.segment_path(last.id))
                .map_err(io_error)?;
            spool.writer = Some((last.id, file));
        }
        if spool.segments.is_empty() {
            spool.remove_cursor().map_err(io_error)?;
        }
        spool.publish();
        Ok(spool)
    }

    /// Validates segment `id`, reporting corruption; truncates a torn or corrupt tail. Returns the segment's
    /// valid length and how many records it holds at or after offset `from`.
    fn check_segment(&mut self, id: u64, from: u64) -> io::Result<(u64, u64)> {
        let path = self.segment_path(id);
        let bytes = std::fs::read(&path)?;
        let mut at = 0usize;
        let mut records = 0u64;
        loop {
            let pos = Pos {
                segment: id,
                offset: at as u64,
            };
            match frame::decode(&bytes[at..], true) {
                Step::Record(f) => {
                    if pos.offset >= from {
                        records += 1;
                    }
                    at += f.len;
                }
                Step::Skip { len, reason } => {
                    self.report(pos, len as u64, reason, false);
                    at += len;
                }
                Step::Tail { reason } => {
                    self.report(pos, (bytes.len() - at) as u64, reason, true);
                    let file = OpenOptions::new().write(true).open(&path)?;
                    file.set_len(pos.offset)?;
                    file.sync_all()?;
                    return Ok((pos.offset, records));
                }
                Step::NeedMore | Step::End => return Ok((at as u64, records)),
            }
        }
    }

    /// Counts and logs a corrupt region once, however often it is read past.
    fn report(&mut self, pos: Pos, len: u64, reason: Corruption, truncated: bool) {
        if !self.reported.insert(pos) {
            return;
        }
        metrics::counter!(m::SPOOL_CORRUPT_RECORDS_TOTAL, "reason" => reason.as_str()).increment(1);
        let segment = self.segment_path(pos.segment);
        if truncated {
            tracing::warn!(
                segment = %segment.display(),
                offset = pos.offset,
                bytes = len,
                reason = reason.as_str(),
                "spool: the end of a segment is not a valid record (a write cut short by a crash, or corruption); \
                 it was cut off and appends continue after the last valid record"
            );
        } else {
            tracing::warn!(
                segment = %segment.display(),
                offset = pos.offset,
                bytes = len,
                reason = reason.as_str(),
                "spool: skipped a corrupt record; reading resumes at the next valid record"
            );
        }
    }

    /// The shared status the request path reads.
    pub fn status(&self) -> Arc<SpoolStatus> {
        self.status.clone()
    }

    /// The directory.
    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Bytes in the segment files.
    pub fn bytes(&self) -> u64 {
        self.bytes
    }

    /// Segment files.
    pub fn segments(&self) -> usize {
        self.segments.len()
    }

    /// True when no segment holds a record that is not acknowledged.
    pub fn is_empty(&self) -> bool {
        self.segments.is_empty()
    }

    /// Records [`Spool::open`] found that were not acknowledged before the last stop.
    pub fn recovered(&self) -> u64 {
        self.recovered
    }

    /// The first record not known to be acknowledged: where draining starts.
    pub fn start(&self) -> Pos {
        self.acknowledged
    }

    /// The position the next append will have (or the next segment's start).
    pub fn end(&self) -> Pos {
        match self.segments.back() {
            Some(last) => Pos {
                segment: last.id,
                offset: last.len,
            },
            None => Pos {
                segment: self.next_id,
                offset: 0,
            },
        }
    }

    /// Appends a record. Past `spool.max_bytes` it is refused unless `force` (the events of requests admitted
    /// before the spool filled up are kept: `max_bytes` is then exceeded by at most those).
    pub fn append(&mut self, key: &[u8], payload: &[u8], force: bool) -> Result<Pos, AppendError> {
        let len = frame::frame_len(key, payload) as u64;
        if !force && self.bytes + len > self.max_bytes {
            self.refusing = true;
            self.publish();
            return Err(AppendError::Full {
                bytes: self.bytes,
                max_bytes: self.max_bytes,
            });
        }
        self.frame_buf.clear();
        frame::encode(key, payload, &mut self.frame_buf)?;
        let result = self.write_frame(len);
        self.refusing = result.is_err();
        self.publish();
        result
    }

    fn write_frame(&mut self, len: u64) -> Result<Pos, AppendError> {
        let fits = |s: &Segment| s.len == 0 || s.len + len <= self.segment_bytes;
        let writable = self.writer.is_some() && self.segments.back().is_some_and(fits);
        if !writable {
            self.roll()?;
        }
        let (Some((id, file)), Some(last)) = (&self.writer, self.segments.back_mut()) else {
            return Err(AppendError::Io(io::Error::other("no segment to append to")));
        };
        let at = last.len;
        if let Err(e) = file.write_all_at(&self.frame_buf, at) {
            // Leave no partial record behind: the segment ends where the last whole record ended.
            let _ = file.set_len(at);
            return Err(e.into());
        }
        last.len += len;
        self.bytes += len;
        self.unsynced = true;
        let id = *id;
        match self.unconfirmed.back_mut() {
            Some((segment, frames)) if *segment == id => frames.extend_from_slice(&self.frame_buf),
            _ => self.unconfirmed.push_back((id, self.frame_buf.clone())),
        }
        Ok(Pos {
            segment: id,
            offset: at,
        })
    }

    /// The records of `segment` are durable: forgets the first `covers` bytes of them (all when `None`), unless
    /// an fsync handed out on it is still running (it may yet fail: [`Spool::synced`] settles them then).
    fn confirmed(&mut self, segment: u64, covers: Option<usize>) {
        let Some(at) = self.unconfirmed.iter().position(|(id, _)| *id == segment) else {
            return;
        };
        match covers {
            Some(n) => {
                let frames = &mut self.unconfirmed[at].1;
                frames.drain(..n.min(frames.len()));
                if frames.is_empty() && self.writer.as_ref().is_none_or(|(id, _)| *id != segment) {
                    self.unconfirmed.remove(at);
                }
            }
            None if self.syncing == Some(segment) => {}
            None => {
                self.unconfirmed.remove(at);
            }
        }
    }

    /// An fsync of `segment` failed: the segment is sealed and its records not known to be durable are written
    /// again to a new segment, fsynced at once (see the module doc).
    fn fsync_failed(&mut self, segment: u64, error: &io::Error) -> io::Result<()> {
        metrics::counter!(m::SPOOL_FSYNC_FAILURES_TOTAL).increment(1);
        if self.writer.as_ref().is_some_and(|(id, _)| *id == segment) {
            self.writer = None;
        }
        let frames = self
            .unconfirmed
            .iter()
            .position(|(id, _)| *id == segment)
            .and_then(|at| self.unconfirmed.remove(at))
            .map(|(_, frames)| frames)
            .unwrap_or_default();
        tracing::error!(
            %error,
            dir = %self.dir.display(),
            segment,
            rewritten_bytes = frames.len(),
            "fsync of a usage event spool segment failed: the segment is sealed and its records not yet fsynced are written again to a new one"
        );
        if frames.is_empty() {
            return Ok(());
        }
        self.open_segment()?;
        let len = frames.len() as u64;
        self.frame_buf = frames;
        self.write_frame(len).map_err(|e| match e {
            AppendError::Io(e) => e,
            other => io::Error::other(other.to_string()),
        })?;
        let Some((id, file)) = &self.writer else {
            return Err(io::Error::other("no segment to write the records again to"));
        };
        let id = *id;
        (self.fsync)(file)?;
        self.unsynced = false;
        self.confirmed(id, None);
        Ok(())
    }

    /// Seals the current segment (fsynced) and starts the next one.
    fn roll(&mut self) -> io::Result<()> {
        if let Some((id, file)) = self.writer.take() {
            match (self.fsync)(&file) {
                Ok(()) => self.confirmed(id, None),
                Err(e) => {
                    self.fsync_failed(id, &e)?;
                    // The records were written again to a new segment, now the writer: the roll is done.
                    if self.writer.is_some() {
                        return Ok(());
                    }
                }
            }
            self.unsynced = false;
        }
        self.open_segment()
    }

    /// Starts a new, empty segment to append to.
    fn open_segment(&mut self) -> io::Result<()> {
        let id = self.next_id;
        let file = OpenOptions::new()
            .create_new(true)
            .write(true)
            .open(self.segment_path(id))?;
        // The new file's directory entry must survive a power loss too.
        File::open(&self.dir)?.sync_all()?;
        self.next_id += 1;
        self.segments.push_back(Segment { id, len: 0 });
        self.writer = Some((id, file));
        Ok(())
    }

    /// Reads up to `max_records` records (and about `max_bytes`) from `from` on, in order. Returns them and the
    /// position to read from next. Corrupt regions met on the way are skipped (and reported once).
    pub fn read(
        &mut self,
        from: Pos,
        max_records: usize,
        max_bytes: usize,
    ) -> io::Result<(Vec<Record>, Pos)> {
        let mut records = Vec::new();
        let mut size = 0usize;
        let mut at = from;
        while records.len() < max_records && size < max_bytes {
            let Some(segment) = self.segments.iter().find(|s| s.id >= at.segment).copied() else {
                break;
            };
            if segment.id != at.segment {
                at = Pos {
                    segment: segment.id,
                    offset: 0,
                };
            }
            if at.offset >= segment.len {
                if self.segments.back().is_some_and(|last| last.id == segment.id) {
                    break;
                }
                at = Pos {
                    segment: segment.id + 1,
                    offset: 0,
                };
                continue;
            }
            let budget = ((max_records - records.len()) as u64)
                .saturating_mul(READ_PER_RECORD)
                .clamp(MIN_READ, READ_CHUNK);
            let mut want = (segment.len - at.offset).min(budget);
            loop {
                let bytes = self.read_at(segment.id, at.offset, want)?;
                let at_end = at.offset + want == segment.len;
                let mut used = 0usize;
                let mut need_more = false;
                while records.len() < max_records && size < max_bytes {
                    let pos = Pos {
                        segment: segment.id,
                        offset: at.offset + used as u64,
                    };
                    match frame::decode(&bytes[used..], at_end) {
                        Step::Record(f) => {
                            records.push(Record {
                                pos,
                                key: f.key.to_vec(),
                                payload: f.payload.to_vec(),
                            });
                            size += f.len;
                            used += f.len;
                        }
                        Step::Skip { len, reason } => {
                            self.report(pos, len as u64, reason, false);
                            used += len;
                        }
                        Step::Tail { reason } => {
                            self.report(pos, (bytes.len() - used) as u64, reason, false);
                            used = bytes.len();
                        }
                        Step::NeedMore => {
                            need_more = used == 0;
                            break;
                        }
                        Step::End => break,
                    }
                }
                at.offset += used as u64;
                if need_more {
                    // One record (or one corrupt stretch) is larger than the chunk: read more of the segment.
                    want = (want * 2).min(segment.len - at.offset);
                    continue;
                }
                break;
            }
        }
        Ok((records, at))
    }

    fn read_at(&mut self, segment: u64, offset: u64, len: u64) -> io::Result<Vec<u8>> {
        if self.reader.as_ref().is_none_or(|(id, _)| *id != segment) {
            self.reader = Some((segment, File::open(self.segment_path(segment))?));
        }
        let Some((_, file)) = &self.reader else {
            return Err(io::Error::other("no segment open for reading"));
        };
        let mut buf = vec![0; usize::try_from(len).map_err(io::Error::other)?];
        file.read_exact_at(&mut buf, offset)?;
        Ok(buf)
    }

    /// Kafka acknowledged every record before `frontier`: deletes the segments that holds only such records (all
    /// of them when nothing after `frontier` is left) and remembers it for the `cursor` file.
    pub fn release(&mut self, frontier: Pos) -> io::Result<()> {
        if frontier >= self.end() {
            return self.clear();
        }
        while let Some(first) = self.segments.front().copied() {
            let consumed = first.id < frontier.segment
                || (first.id == frontier.segment && frontier.offset >= first.len && self.segments.len() > 1);
            if !consumed {
                break;
            }
            self.delete(first)?;
        }
        self.acknowledged = frontier;
        self.publish();
        Ok(())
    }

    /// Deletes every segment: everything was acknowledged.
    fn clear(&mut self) -> io::Result<()> {
        self.writer = None;
        while let Some(first) = self.segments.front().copied() {
            self.delete(first)?;
        }
        self.acknowledged = self.end();
        self.remove_cursor()?;
        self.publish();
        Ok(())
    }

    /// Deletes a segment file; the room it frees lets appends be tried again.
    fn delete(&mut self, segment: Segment) -> io::Result<()> {
        if self.reader.as_ref().is_some_and(|(id, _)| *id == segment.id) {
            self.reader = None;
        }
        if self.writer.as_ref().is_some_and(|(id, _)| *id == segment.id) {
            self.writer = None;
        }
        match std::fs::remove_file(self.segment_path(segment.id)) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(e),
        }
        self.segments.pop_front();
        // Every record in it was acknowledged by Kafka: whether it reached the disk no longer matters.
        self.unconfirmed.retain(|(id, _)| *id != segment.id);
        self.bytes -= segment.len;
        self.refusing = false;
        Ok(())
    }

    /// Writes the `cursor` file when the acknowledged position moved, and returns an fsync of the segment being
    /// appended to when it has writes not fsynced yet, for the caller to run off its thread and hand back to
    /// [`Spool::synced`].
    pub fn sync_target(&mut self) -> io::Result<Option<SyncJob>> {
        self.write_cursor()?;
        if !self.unsynced {
            return Ok(None);
        }
        let Some((id, file)) = &self.writer else {
            return Ok(None);
        };
        let segment = *id;
        let job = SyncJob {
            file: file.try_clone()?,
            segment,
            covers: self
                .unconfirmed
                .iter()
                .find(|(id, _)| *id == segment)
                .map_or(0, |(_, frames)| frames.len()),
            fsync: self.fsync,
        };
        self.unsynced = false;
        self.syncing = Some(segment);
        Ok(Some(job))
    }

    /// The outcome of a [`SyncJob`]: its records are durable, or its segment failed (see the module doc) and
    /// they were written again; an error when they could not be.
    pub fn synced(&mut self, job: &SyncJob, result: io::Result<()>) -> io::Result<()> {
        if self.syncing == Some(job.segment) {
            self.syncing = None;
        }
        match result {
            Ok(()) => {
                self.confirmed(job.segment, Some(job.covers));
                Ok(())
            }
            // Logged and counted there; an error here only when the records could not be written again.
            Err(e) => self.fsync_failed(job.segment, &e),
        }
    }

    /// Writes the `cursor` file and fsyncs the segment being appended to, now. A failed fsync writes the
    /// segment's unconfirmed records again (see the module doc) and is returned.
    pub fn sync_now(&mut self) -> io::Result<()> {
        self.write_cursor()?;
        if let Some((id, file)) = &self.writer {
            let id = *id;
            if let Err(e) = (self.fsync)(file) {
                self.fsync_failed(id, &e)?;
                return Err(e);
            }
            self.confirmed(id, None);
        }
        self.unsynced = false;
        Ok(())
    }

    /// Replaces how segments are fsynced (tests inject failures).
    #[cfg(test)]
    pub(crate) fn set_fsync(&mut self, fsync: fn(&File) -> io::Result<()>) {
        self.fsync = fsync;
    }

    fn write_cursor(&mut self) -> io::Result<()> {
        if self.segments.is_empty() || self.cursor_on_disk == Some(self.acknowledged) {
            return Ok(());
        }
        let Pos { segment, offset } = self.acknowledged;
        let temporary = self.dir.join(format!("{CURSOR_FILE}.tmp"));
        std::fs::write(&temporary, format!("{segment} {offset}\n"))?;
        std::fs::rename(&temporary, self.dir.join(CURSOR_FILE))?;
        self.cursor_on_disk = Some(self.acknowledged);
        Ok(())
    }

    fn remove_cursor(&mut self) -> io::Result<()> {
        self.cursor_on_disk = None;
        match std::fs::remove_file(self.dir.join(CURSOR_FILE)) {
            Err(e) if e.kind() != ErrorKind::NotFound => Err(e),
            _ => Ok(()),
        }
    }

    fn segment_path(&self, id: u64) -> PathBuf {
        self.dir.join(format!(
            "{id:0width$}.{SEGMENT_EXTENSION}",
            width = SEGMENT_DIGITS
        ))
    }

    /// Updates the shared status and the gauges, and logs when the spool fills up or has room again.
    fn publish(&mut self) {
        let full = self.refusing || self.bytes >= self.max_bytes;
        let was_full = self.status.full.swap(full, Ordering::AcqRel);
        self.status.bytes.store(self.bytes, Ordering::Release);
        metrics::gauge!(m::SPOOL_BYTES).set(self.bytes as f64);
        metrics::gauge!(m::SPOOL_SEGMENTS).set(self.segments.len() as f64);
        match (was_full, full) {
            (false, true) => tracing::error!(
                dir = %self.dir.display(),
                bytes = self.bytes,
                max_bytes = self.max_bytes,
                on_full = self.on_full.as_str(),
                "usage event spool is full: {}",
                match self.on_full {
                    OnFull::Reject => "metered requests are answered 503 until it has room again",
                    OnFull::ServeUnmetered => "requests are served but their usage events are dropped",
                }
            ),
            (true, false) => tracing::info!(
                dir = %self.dir.display(),
                bytes = self.bytes,
                max_bytes = self.max_bytes,
                "usage event spool has room again"
            ),
            _ => {}
        }
    }
}

/// The numbers of the segment files in `dir`.
fn segment_ids(dir: &Path) -> io::Result<Vec<u64>> {
    let mut ids = Vec::new();
    for entry in std::fs::read_dir(dir)? {
        let name = entry?.file_name();
        let Some(name) = name.to_str() else { continue };
        if let Some(id) = name
            .strip_suffix(SEGMENT_EXTENSION)
            .and_then(|stem| stem.strip_suffix('.'))
            .filter(|digits| digits.len() == SEGMENT_DIGITS)
            .and_then(|digits| digits.parse().ok())
        {
            ids.push(id);
        }
    }
    Ok(ids)
}

/// The position in the `cursor` file, if there is a readable one.
fn read_cursor(dir: &Path) -> Option<Pos> {
    let text = std::fs::read_to_string(dir.join(CURSOR_FILE)).ok()?;
    let mut parts = text.split_whitespace().map(str::parse::<u64>);
    match (parts.next(), parts.next()) {
        (Some(Ok(segment)), Some(Ok(offset))) => Some(Pos { segment, offset }),
        _ => None,
    }
}

#[cfg(test)]
mod tests;
