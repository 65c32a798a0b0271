//! Replaying the usage topic for a time range, as the audit and the rebuild do: every partition is read from
//! the first record whose Kafka timestamp is at or after the range's start less a margin ([`crate::kafka::reader`]) up
//! to the high watermark it had when the replay started, without a consumer group and without committing
//! anything; each message is handed to the caller, who decodes it and keeps the events whose event time is in
//! the range.
//!
//! Why the margin: the range is by event time (`finished_at_ms`), the start offsets are by Kafka time (the
//! producer's timestamp). An event reaches Kafka after it finished, so its Kafka time is normally later than its
//! event time and starting at the range's start would do; the margin covers a gateway whose clock runs ahead of
//! the producer's. Events produced late (spooled while the broker was down) sit after their neighbours in Kafka
//! time and are read anyway. What is produced after the replay started is not read.
//!
//! Long replays show a progress bar on stderr (indicatif) when stderr is a terminal; otherwise nothing is drawn.

pub mod audit;
pub mod rebuild;

use std::io::IsTerminal as _;
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use rdkafka::Message as _;
use rdkafka::error::KafkaError;

use tollgate_plumbing::kafka::KafkaConnection;

use crate::error::BillingError;
use crate::kafka::reader::{self, Reader};

/// How far before the range's start the replay starts reading, by Kafka time, unless told otherwise.
pub const DEFAULT_MARGIN: Duration = Duration::from_secs(3600);
/// How long the replay waits for the next message before giving up on the broker.
const STALL_TIMEOUT: Duration = Duration::from_secs(60);
/// The progress bar advances in steps of this many messages.
const PROGRESS_STEP: u64 = 4096;

/// What a replay read.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ReplayStats {
    /// Messages handed to the caller.
    pub messages: u64,
    /// Partitions read.
    pub partitions: usize,
    /// Whether every partition's start was found by time (otherwise some were read from their beginning).
    pub start_by_time: bool,
    /// How long reading took.
    pub elapsed: Duration,
}

/// A replay in progress: the usage topic, assigned and positioned, read in chunks by [`Replay::read`].
#[derive(Debug)]
pub struct Replay {
    reader: Reader,
    bar: ProgressBar,
    unreported: u64,
    started: Instant,
    stats: ReplayStats,
    topic: String,
}

/// The part of the usage topic an audit or a rebuild replays: the events of `[from, to)` by event time, read
/// from `margin` before `from` by Kafka time (an event is stamped before Kafka receives it).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReplayRange {
    /// The brokers and the operator's librdkafka properties.
    pub kafka: KafkaConnection,
    /// The usage topic.
    pub topic: String,
    /// Start of the range (included), by event time.
    pub from: DateTime<Utc>,
    /// End of the range (excluded).
    pub to: DateTime<Utc>,
    /// How far before `from` reading starts, by Kafka time.
    pub margin: Duration,
}

impl ReplayRange {
    /// The range `[from, to)` of `topic`, with the default margin.
    pub fn new(
        kafka: impl Into<KafkaConnection>,
        topic: impl Into<String>,
        from: DateTime<Utc>,
        to: DateTime<Utc>,
    ) -> Self {
        Self {
            kafka: kafka.into(),
            topic: topic.into(),
            from,
            to,
            margin: DEFAULT_MARGIN,
        }
    }

    /// `[from, to)` in epoch milliseconds; an empty or reversed range, or one before 1970, is refused.
    pub fn ms(&self) -> Result<(u64, u64), BillingError> {
        range_ms(self.from, self.to)
    }
}

/// `[from, to)` in epoch milliseconds, refusing an empty or reversed range and times before 1970.
pub(crate) fn range_ms(from: DateTime<Utc>, to: DateTime<Utc>) -> Result<(u64, u64), BillingError> {
    let from_ms = u64::try_from(from.timestamp_millis()).ok();
    let to_ms = u64::try_from(to.timestamp_millis()).ok();
    match (from_ms, to_ms) {
        (Some(from_ms), Some(to_ms)) if from_ms < to_ms => Ok((from_ms, to_ms)),
        _ => Err(BillingError::Config {
            setting: "from/to",
            reason: format!(
                "the range {} to {} is empty, reversed or before 1970",
                from.to_rfc3339(),
                to.to_rfc3339()
            ),
        }),
    }
}

impl Replay {
    /// Positions a reader on every partition of `topic` at the first record at or after `from − margin`
    /// (Kafka time); the replay ends at the high watermarks of this moment. Fails when the topic does not exist.
    /// `label` names the replay on the progress bar.
    pub async fn open(range: &ReplayRange, label: &str) -> Result<Self, BillingError> {
        let ReplayRange {
            kafka,
            topic,
            from,
            margin,
            ..
        } = range;
        let (topic, from, margin) = (topic.as_str(), *from, *margin);
        let margin_ms = i64::try_from(margin.as_millis()).unwrap_or(i64::MAX);
        let since_ms = from.timestamp_millis().saturating_sub(margin_ms);
        let Some(reader) = reader::open_at(kafka, topic, since_ms).await? else {
            return Err(BillingError::Config {
                setting: "topic",
                reason: format!("the usage topic `{topic}` does not exist on {}", kafka.brokers),
            });
        };
        let stats = ReplayStats {
            partitions: reader.partitions(),
            start_by_time: reader.start_by_time,
            ..ReplayStats::default()
        };
        Ok(Self {
            bar: progress_bar(reader.to_read, label),
            reader,
            unreported: 0,
            started: Instant::now(),
            stats,
            topic: topic.to_owned(),
        })
    }

    /// Messages between the starts and the ends.
    pub fn to_read(&self) -> u64 {
        self.reader.to_read
    }

    /// Hands up to `max` messages to `each(partition, offset, payload)`, in each partition's order. Returns false
    /// once every partition was read to its end (then nothing more comes). Fails when the broker delivered
    /// nothing for a minute.
    pub async fn read(
        &mut self,
        max: usize,
        mut each: impl FnMut(i32, i64, Option<&[u8]>),
    ) -> Result<bool, BillingError> {
        let consumer = Arc::clone(&self.reader.consumer);
        let mut handed = 0;
        while handed < max && !self.reader.reached_end() {
            let received = tokio::time::timeout(STALL_TIMEOUT, consumer.recv())
                .await
                .map_err(|_| BillingError::Kafka {
                    operation: "replay the usage topic (no message for a minute)",
                    source: KafkaError::Canceled,
                })?;
            match received {
                Ok(message) => {
                    let (partition, offset) = (message.partition(), message.offset());
                    if self.reader.before_end(partition, offset) {
                        each(partition, offset, message.payload());
                        handed += 1;
                        self.stats.messages += 1;
                        self.unreported += 1;
                        if self.unreported == PROGRESS_STEP {
                            self.bar.inc(self.unreported);
                            self.unreported = 0;
                        }
                    }
                    self.reader.read(partition, offset);
                }
                Err(KafkaError::PartitionEOF(partition)) => self.reader.exhausted(partition),
                Err(error) => {
                    tracing::warn!(%error, topic = %self.topic, "Reading the usage topic failed; retrying.");
                }
            }
        }
        Ok(!self.reader.reached_end())
    }

    /// Clears the progress bar and says what was read.
    pub fn finish(mut self) -> ReplayStats {
        self.bar.inc(self.unreported);
        self.bar.finish_and_clear();
        self.stats.elapsed = self.started.elapsed();
        self.stats
    }
}

/// A progress bar over `total` messages on stderr, or a hidden one when stderr is not a terminal.
fn progress_bar(total: u64, label: &str) -> ProgressBar {
    if !std::io::stderr().is_terminal() {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::with_draw_target(Some(total), ProgressDrawTarget::stderr());
    if let Ok(style) = ProgressStyle::with_template(
        "{msg} [{elapsed_precise}] {wide_bar} {human_pos}/{human_len} messages ({eta} left)",
    ) {
        bar.set_style(style);
    }
    bar.set_message(label.to_owned());
    bar
}
