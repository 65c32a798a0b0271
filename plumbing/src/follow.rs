//! [`TopicFollower`]: reads a topic from its beginning and then follows it, on a thread of its own — the loop the
//! gateway's quota feed and config feed and billing-consumer's config follower share. It owns the mechanics: the
//! named thread, its stop flag and its join; waiting for the topic (its metadata, looked up again every
//! [`Settings::retry`]); assigning its partitions — every one, or the one asked for — from the beginning, outside
//! any consumer group and never committing; the end each partition had at assignment and when the follower has
//! read up to it ("caught up": a message at or past it, an empty poll whose position is past it — compaction may
//! have removed the last offsets below the end — or `PartitionEOF` where the consumer enables it); an optional
//! deadline for catching up; the poll loop; and a periodic tick.
//!
//! What the reading is for is the caller's [`Handler`]: what to do before each assignment (make sure the topic
//! exists, seed it), while the topic cannot be read (a topic the broker does not have is told apart from a
//! broker that did not answer, so each caller keeps its own policy), with each message, once caught up, when
//! catching up takes too long, when there is nothing to read, and on each tick. The caller also makes the
//! consumer: its settings (brokers, security, a throwaway `group.id`) stay the caller's.

use std::collections::HashMap;
use std::fmt;
use std::ops::ControlFlow;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::thread::JoinHandle;
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedMessage, Message};
use rdkafka::{Offset, TopicPartitionList};

use crate::error::KafkaOpError;

/// How long reading one partition's watermarks may take.
const WATERMARK_TIMEOUT: Duration = Duration::from_secs(5);

/// Which partitions of the topic are read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Partitions {
    /// Every partition the topic has when it is assigned.
    All,
    /// Only this one (a topic with a single order, such as the config topic's partition 0).
    One(i32),
}

/// How a [`TopicFollower`] runs; [`Settings::new`] gives the defaults.
#[derive(Debug, Clone)]
pub struct Settings {
    /// The thread's name.
    pub thread: String,
    /// The topic to follow.
    pub topic: String,
    /// The partitions to read; [`Partitions::All`] by default.
    pub partitions: Partitions,
    /// How long one poll waits; also about the longest a stop request waits for the thread. 100 ms by default.
    pub poll: Duration,
    /// The pause before looking for the topic again, or assigning it again after [`Late::Reassign`]. 1 s by
    /// default.
    pub retry: Duration,
    /// How long the topic's metadata lookup may take. 5 s by default.
    pub metadata_timeout: Duration,
    /// How long after an assignment the follower waits to be caught up before asking [`Handler::late`]; `None`
    /// (the default) waits for as long as it takes.
    pub catch_up_timeout: Option<Duration>,
    /// How often [`Handler::tick`] is called, from the thread's first turn on, whether the topic is assigned or
    /// not; `None` (the default) never.
    pub tick: Option<Duration>,
}

impl Settings {
    /// The defaults for following `topic` on a thread named `thread`.
    pub fn new(thread: impl Into<String>, topic: impl Into<String>) -> Self {
        Self {
            thread: thread.into(),
            topic: topic.into(),
            partitions: Partitions::All,
            poll: Duration::from_millis(100),
            retry: Duration::from_secs(1),
            metadata_timeout: Duration::from_secs(5),
            catch_up_timeout: None,
            tick: None,
        }
    }
}

/// One assigned partition and its watermarks when it was assigned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// The partition.
    pub partition: i32,
    /// Its low watermark: the first offset it still holds.
    pub low: i64,
    /// Its high watermark: the offset its next message will have; the end the follower reads up to.
    pub high: i64,
}

/// The partitions a follower was assigned, with their watermarks at that moment.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Assignment {
    extents: Vec<Extent>,
}

impl Assignment {
    /// Each assigned partition.
    pub fn extents(&self) -> &[Extent] {
        &self.extents
    }

    /// How many partitions were assigned.
    pub fn partitions(&self) -> usize {
        self.extents.len()
    }

    /// The sum of the partitions' ends (for one partition, its high watermark: the records it held).
    pub fn end(&self) -> i64 {
        self.extents.iter().map(|e| e.high).fold(0, i64::saturating_add)
    }
}

/// Why the topic could not be assigned; the follower tries again after [`Settings::retry`].
#[derive(Debug)]
pub enum Waiting {
    /// The broker answered, and has no such topic to read: it is not in the metadata, the metadata reports an
    /// error for it, or it lacks the partitions to read. Nothing written to it can be waited for yet.
    Absent(KafkaOpError),
    /// The topic could not be looked up or assigned — no broker answered, a lookup failed, or
    /// [`Handler::prepare`] did: it may hold anything.
    Failed(KafkaOpError),
}

impl Waiting {
    /// The error either way.
    pub fn error(&self) -> &KafkaOpError {
        match self {
            Self::Absent(error) | Self::Failed(error) => error,
        }
    }

    /// Whether the broker said the topic is not there ([`Waiting::Absent`]).
    pub fn is_absent(&self) -> bool {
        matches!(self, Self::Absent(_))
    }
}

impl fmt::Display for Waiting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        self.error().fmt(f)
    }
}

/// How far catching up got: offsets reached against the ends at assignment, summed over the partitions that held
/// something.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Progress {
    /// The offsets reached (the next offset to read of each partition, at most its end).
    pub read: i64,
    /// The partitions' ends at assignment.
    pub end: i64,
}

/// What to do when catching up takes longer than [`Settings::catch_up_timeout`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Late {
    /// Go on as if caught up: [`Handler::caught_up`] is called now.
    Proceed,
    /// Start over: after [`Settings::retry`], prepare and assign the topic again from its beginning.
    Reassign,
}

/// What a follower does with the topic. Every method runs on the follower's thread, in this order: per
/// assignment attempt [`prepare`](Handler::prepare), then [`waiting`](Handler::waiting) or
/// [`assigned`](Handler::assigned); then [`message`](Handler::message) for every message read, with
/// [`caught_up`](Handler::caught_up) once (right after the message, or the empty poll, that reached the end; at
/// once when the topic held nothing) and [`idle`](Handler::idle) on every poll that read nothing. A method that
/// returns [`ControlFlow::Break`] ends the thread.
pub trait Handler {
    /// Before each assignment attempt: e.g. make sure the topic exists, seed it when empty. An error is reported
    /// to [`Handler::waiting`] as [`Waiting::Failed`], and the attempt is repeated after [`Settings::retry`].
    fn prepare<C: ConsumerContext>(&mut self, consumer: &BaseConsumer<C>) -> Result<(), KafkaOpError> {
        let _ = consumer;
        Ok(())
    }

    /// The topic could not be assigned; the follower looks again after [`Settings::retry`]. Called on every
    /// attempt: logging once is the handler's choice.
    fn waiting(&mut self, reason: &Waiting);

    /// The topic was assigned from its beginning.
    fn assigned(&mut self, assignment: &Assignment) {
        let _ = assignment;
    }

    /// A message was read.
    fn message(&mut self, message: &BorrowedMessage<'_>) -> ControlFlow<()>;

    /// Every assigned partition was read up to the end it had at assignment (or [`Handler::late`] said to
    /// proceed). Called once per run, after the message or empty poll that got there.
    fn caught_up(&mut self) -> ControlFlow<()> {
        ControlFlow::Continue(())
    }

    /// Not caught up within [`Settings::catch_up_timeout`] of the assignment; proceeds by default.
    fn late(&mut self, progress: Progress) -> Late {
        let _ = progress;
        Late::Proceed
    }

    /// A poll found nothing to read (it timed out, or reported the end of a partition).
    fn idle(&mut self) {}

    /// A poll reported an error (other than the end of a partition); the follower polls again.
    fn read_error(&mut self, error: &KafkaError) {
        tracing::debug!(%error, "Reading a followed topic failed; retrying.");
    }

    /// Every [`Settings::tick`].
    fn tick(&mut self) {}
}

/// The running follower thread; [`TopicFollower::stop`] ends it. Dropping it leaves the thread running.
#[derive(Debug)]
pub struct TopicFollower {
    stop: Arc<AtomicBool>,
    thread: JoinHandle<()>,
}

impl TopicFollower {
    /// Starts following `settings.topic` with `consumer` on a new thread named `settings.thread`.
    pub fn spawn<C, H>(consumer: BaseConsumer<C>, settings: Settings, handler: H) -> std::io::Result<Self>
    where
        C: ConsumerContext + 'static,
        H: Handler + Send + 'static,
    {
        let stop = Arc::new(AtomicBool::new(false));
        let run = Run {
            consumer,
            handler,
            stop: Arc::clone(&stop),
            catch_up: CatchUp::default(),
            assigned: false,
            caught_up: false,
            deadline: None,
            settings: settings.clone(),
        };
        let thread = std::thread::Builder::new()
            .name(settings.thread)
            .spawn(move || run.run())?;
        Ok(Self { stop, thread })
    }

    /// Asks the thread to stop (it does within about one poll, unless a handler method is blocked) without
    /// waiting for it.
    pub fn request_stop(&self) {
        self.stop.store(true, Ordering::Release);
    }

    /// Stops the thread and waits for it.
    pub fn stop(self) {
        self.request_stop();
        let _ = self.thread.join();
    }
}

/// The thread's state.
struct Run<C: ConsumerContext + 'static, H> {
    consumer: BaseConsumer<C>,
    handler: H,
    settings: Settings,
    stop: Arc<AtomicBool>,
    /// Whether the topic is assigned.
    assigned: bool,
    /// Whether [`Handler::caught_up`] was called.
    caught_up: bool,
    /// The ends at assignment not read yet.
    catch_up: CatchUp,
    /// When [`Handler::late`] is due, while not caught up.
    deadline: Option<Instant>,
}

impl<C: ConsumerContext + 'static, H: Handler> Run<C, H> {
    fn run(mut self) {
        let mut last_tick = self
            .settings
            .tick
            .map(|tick| Instant::now().checked_sub(tick).unwrap_or_else(Instant::now));
        while !self.stopped() {
            if !self.assigned {
                match self.assign() {
                    Ok(assignment) => {
                        self.assigned = true;
                        self.caught_up = false;
                        self.catch_up = CatchUp::new(assignment.extents());
                        self.deadline = self.settings.catch_up_timeout.map(|t| Instant::now() + t);
                        self.handler.assigned(&assignment);
                        if self.check_caught_up().is_break() {
                            return;
                        }
                    }
                    Err(reason) => {
                        self.handler.waiting(&reason);
                        self.sleep(self.settings.retry);
                    }
                }
            }
            if self.assigned && self.poll().is_break() {
                return;
            }
            if let (Some(tick), Some(last)) = (self.settings.tick, last_tick.as_mut())
                && last.elapsed() >= tick
            {
                *last = Instant::now();
                self.handler.tick();
            }
        }
    }

    /// Polls once and hands over what came.
    fn poll(&mut self) -> ControlFlow<()> {
        let polled = match self.consumer.poll(self.settings.poll) {
            Some(Ok(message)) => {
                self.handler.message(&message)?;
                self.catch_up
                    .read_up_to(message.partition(), message.offset().saturating_add(1));
                Polled::Message
            }
            Some(Err(KafkaError::PartitionEOF(partition))) => Polled::Nothing(Some(partition)),
            Some(Err(error)) => {
                self.handler.read_error(&error);
                Polled::Error
            }
            None => Polled::Nothing(None),
        };
        match polled {
            Polled::Message | Polled::Error => self.check_caught_up(),
            Polled::Nothing(end_of) => {
                match end_of {
                    Some(partition) => self.catch_up.reached_end(partition),
                    None => self.check_positions(),
                }
                self.check_caught_up()?;
                self.handler.idle();
                ControlFlow::Continue(())
            }
        }
    }

    /// Tells the handler once it is caught up, or late.
    fn check_caught_up(&mut self) -> ControlFlow<()> {
        if self.caught_up {
            return ControlFlow::Continue(());
        }
        if self.catch_up.done() {
            self.caught_up = true;
            return self.handler.caught_up();
        }
        if self.deadline.is_some_and(|deadline| Instant::now() >= deadline) {
            match self.handler.late(self.catch_up.progress()) {
                Late::Proceed => {
                    self.caught_up = true;
                    return self.handler.caught_up();
                }
                Late::Reassign => {
                    self.assigned = false;
                    self.deadline = None;
                    self.sleep(self.settings.retry);
                }
            }
        }
        ControlFlow::Continue(())
    }

    /// Compaction may have removed the last offsets below a partition's end: an empty poll past them is the end.
    fn check_positions(&mut self) {
        if self.caught_up || self.catch_up.done() {
            return;
        }
        if let Ok(positions) = self.consumer.position() {
            for element in positions.elements() {
                if element.topic() == self.settings.topic
                    && let Offset::Offset(at) = element.offset()
                {
                    self.catch_up.read_up_to(element.partition(), at);
                }
            }
        }
    }

    /// Prepares, looks the topic up and assigns its partitions from their beginning; with their watermarks, or
    /// why not.
    fn assign(&mut self) -> Result<Assignment, Waiting> {
        self.handler.prepare(&self.consumer).map_err(Waiting::Failed)?;
        let name = self.settings.topic.as_str();
        let metadata = self
            .consumer
            .fetch_metadata(Some(name), self.settings.metadata_timeout)
            .map_err(failed("fetch the topic's metadata"))?;
        // The broker answered: a topic it does not have holds nothing to wait for.
        let Some(topic) = metadata.topics().iter().find(|t| t.name() == name) else {
            return Err(Waiting::Absent(KafkaOpError::Missing {
                topic: name.to_owned(),
                reason: "not in the broker's metadata".into(),
            }));
        };
        if let Some(error) = topic.error() {
            return Err(Waiting::Absent(KafkaOpError::Refused {
                operation: "fetch the topic's metadata",
                code: error.into(),
            }));
        }
        let ids: Vec<i32> = topic
            .partitions()
            .iter()
            .map(|p| p.id())
            .filter(|id| match self.settings.partitions {
                Partitions::All => true,
                Partitions::One(wanted) => *id == wanted,
            })
            .collect();
        if ids.is_empty() {
            return Err(Waiting::Absent(KafkaOpError::Missing {
                topic: name.to_owned(),
                reason: match self.settings.partitions {
                    Partitions::All => "no partitions".into(),
                    Partitions::One(wanted) => format!("no partition {wanted}").into(),
                },
            }));
        }
        let mut list = TopicPartitionList::new();
        let mut extents = Vec::with_capacity(ids.len());
        for partition in ids {
            list.add_partition_offset(name, partition, Offset::Beginning)
                .map_err(failed("list the topic's partitions"))?;
            let (low, high) = self
                .consumer
                .fetch_watermarks(name, partition, WATERMARK_TIMEOUT)
                .map_err(failed("read the end of the topic"))?;
            extents.push(Extent { partition, low, high });
        }
        self.consumer
            .assign(&list)
            .map_err(failed("assign the topic's partitions"))?;
        Ok(Assignment { extents })
    }

    fn stopped(&self) -> bool {
        self.stop.load(Ordering::Acquire)
    }

    /// Sleeps `total`, or less when asked to stop.
    fn sleep(&self, total: Duration) {
        let until = Instant::now() + total;
        while !self.stopped() && Instant::now() < until {
            std::thread::sleep(self.settings.poll.min(total));
        }
    }
}

/// What one poll brought.
enum Polled {
    Message,
    Error,
    /// Nothing to read; with the partition whose end was reported (`PartitionEOF`).
    Nothing(Option<i32>),
}

/// Maps a client error of `operation` to [`Waiting::Failed`], for `map_err`.
fn failed(operation: &'static str) -> impl FnOnce(KafkaError) -> Waiting {
    move |error| Waiting::Failed(KafkaOpError::client(operation)(error))
}

/// The bookkeeping of catching up, without I/O: per partition that held something at assignment, the next
/// offset reached and the end to reach.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
struct CatchUp {
    /// Partition → (next offset reached, end at assignment).
    partitions: HashMap<i32, (i64, i64)>,
    /// Partitions not read to their end yet.
    remaining: usize,
}

impl CatchUp {
    /// Partitions whose high watermark is above their low one hold something to read; the others are at their
    /// end already.
    fn new(extents: &[Extent]) -> Self {
        let partitions: HashMap<i32, (i64, i64)> = extents
            .iter()
            .filter(|e| e.high > e.low)
            .map(|e| (e.partition, (0, e.high)))
            .collect();
        Self {
            remaining: partitions.len(),
            partitions,
        }
    }

    /// Records that `partition` was read up to `next` (the offset after the last message read, or the
    /// consumer's position).
    fn read_up_to(&mut self, partition: i32, next: i64) {
        if let Some((reached, end)) = self.partitions.get_mut(&partition)
            && next > *reached
        {
            let was_done = *reached >= *end;
            *reached = next;
            if !was_done && next >= *end {
                self.remaining = self.remaining.saturating_sub(1);
            }
        }
    }

    /// `partition` reported its end (`PartitionEOF`): past the end it had at assignment.
    fn reached_end(&mut self, partition: i32) {
        if let Some(&(_, end)) = self.partitions.get(&partition) {
            self.read_up_to(partition, end);
        }
    }

    /// Whether every partition was read to its end at assignment.
    fn done(&self) -> bool {
        self.remaining == 0
    }

    fn progress(&self) -> Progress {
        self.partitions
            .values()
            .fold(Progress { read: 0, end: 0 }, |sum, &(reached, end)| Progress {
                read: sum.read.saturating_add(reached.min(end)),
                end: sum.end.saturating_add(end),
            })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn extent(partition: i32, low: i64, high: i64) -> Extent {
        Extent { partition, low, high }
    }

    #[test]
    fn empty_partitions_are_caught_up_at_once() {
        assert!(CatchUp::new(&[]).done());
        assert!(CatchUp::new(&[extent(0, 0, 0), extent(1, 7, 7)]).done());
    }

    #[test]
    fn caught_up_once_every_partition_reached_its_end() {
        let mut catch_up = CatchUp::new(&[extent(0, 0, 3), extent(1, 0, 2), extent(2, 5, 5)]);
        assert!(!catch_up.done());
        catch_up.read_up_to(0, 3);
        assert!(!catch_up.done());
        catch_up.read_up_to(1, 1);
        assert!(!catch_up.done());
        catch_up.read_up_to(1, 2);
        assert!(catch_up.done());
    }

    #[test]
    fn reading_past_the_end_or_again_counts_once() {
        let mut catch_up = CatchUp::new(&[extent(0, 0, 3), extent(1, 0, 2)]);
        catch_up.read_up_to(0, 10);
        catch_up.read_up_to(0, 11);
        catch_up.read_up_to(0, 3);
        assert!(!catch_up.done(), "partition 1 is still to read");
        catch_up.read_up_to(1, 2);
        assert!(catch_up.done());
    }

    #[test]
    fn a_position_past_compacted_offsets_is_the_end() {
        // Offsets 5..9 were compacted away: the last message read is 4, the position then jumps to the end.
        let mut catch_up = CatchUp::new(&[extent(0, 0, 10)]);
        catch_up.read_up_to(0, 5);
        assert!(!catch_up.done());
        catch_up.read_up_to(0, 10);
        assert!(catch_up.done());
    }

    #[test]
    fn partition_eof_is_the_end() {
        let mut catch_up = CatchUp::new(&[extent(0, 0, 4), extent(3, 2, 9)]);
        catch_up.reached_end(3);
        assert!(!catch_up.done());
        catch_up.reached_end(0);
        assert!(catch_up.done());
    }

    #[test]
    fn unknown_partitions_change_nothing() {
        let mut catch_up = CatchUp::new(&[extent(0, 0, 4)]);
        catch_up.read_up_to(1, 100);
        catch_up.reached_end(2);
        assert!(!catch_up.done());
    }

    #[test]
    fn progress_sums_what_was_reached_up_to_the_ends() {
        let mut catch_up = CatchUp::new(&[extent(0, 0, 10), extent(1, 0, 5), extent(2, 3, 3)]);
        assert_eq!(catch_up.progress(), Progress { read: 0, end: 15 });
        catch_up.read_up_to(0, 4);
        catch_up.read_up_to(1, 50);
        assert_eq!(catch_up.progress(), Progress { read: 9, end: 15 });
    }

    #[test]
    fn assignment_sums_the_ends() {
        let assignment = Assignment {
            extents: vec![extent(0, 0, 10), extent(1, 2, 5)],
        };
        assert_eq!(assignment.partitions(), 2);
        assert_eq!(assignment.end(), 15);
    }

    #[test]
    fn waiting_shows_its_error() {
        let absent = Waiting::Absent(KafkaOpError::Missing {
            topic: "t".into(),
            reason: "no partition 0".into(),
        });
        assert!(absent.is_absent());
        assert_eq!(absent.to_string(), "t: no partition 0");
    }
}
