//! The spool on disk: appends and reads in order across segments, the size bound, reopening after a crash, torn
//! and corrupt records, the cursor and the lock.

use std::path::{Path, PathBuf};
use std::time::Duration;

use metrics_exporter_prometheus::PrometheusBuilder;
use proptest::prelude::*;

use super::*;

/// A fresh directory, removed when dropped.
struct Dir(PathBuf);

impl Dir {
    fn new(name: &str) -> Self {
        Self(std::env::temp_dir().join(format!("tollgate-spool-{name}-{}", uuid::Uuid::now_v7().simple())))
    }

    fn config(&self, segment_bytes: u64, max_bytes: u64) -> SpoolConfig {
        SpoolConfig {
            dir: self.0.clone(),
            max_bytes,
            segment_bytes,
            fsync_interval: Duration::from_millis(20),
            after: Duration::from_secs(1),
            on_full: OnFull::Reject,
            write_ahead: false,
        }
    }

    fn segment(&self, id: u64) -> PathBuf {
        self.0.join(format!("{id:020}.spool"))
    }
}

impl Drop for Dir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.0);
    }
}

/// Every record from the start, as payload strings.
fn read_all(spool: &mut Spool) -> Vec<String> {
    let (records, next) = spool.read(spool.start(), usize::MAX, usize::MAX).unwrap();
    assert_eq!(next, spool.end(), "reading stops at the end");
    records
        .into_iter()
        .map(|r| String::from_utf8(r.payload).unwrap())
        .collect()
}

fn append_all(spool: &mut Spool, payloads: &[String]) -> Vec<Pos> {
    payloads
        .iter()
        .map(|p| spool.append(b"team-a", p.as_bytes(), false).unwrap())
        .collect()
}

fn events(range: std::ops::Range<usize>) -> Vec<String> {
    range.map(|i| format!(r#"{{"id":"event-{i:04}"}}"#)).collect()
}

/// The frame of one event as [`events`] makes it, under key `team-a`.
const FRAME: u64 = 12 + 2 + 6 + 19;

/// Runs `f` with a recorder of its own and returns the Prometheus text of what it recorded.
fn with_metrics(f: impl FnOnce()) -> String {
    let recorder = PrometheusBuilder::new().build_recorder();
    let handle = recorder.handle();
    metrics::with_local_recorder(&recorder, f);
    handle.render()
}

fn corrupt_count(rendered: &str, reason: &str) -> u64 {
    let prefix = format!("tollgate_spool_corrupt_records_total{{reason=\"{reason}\"}} ");
    rendered
        .lines()
        .find_map(|l| l.strip_prefix(&prefix))
        .map_or(0, |v| v.parse().unwrap())
}

fn truncate(path: &Path, by: u64) {
    let file = OpenOptions::new().write(true).open(path).unwrap();
    let len = file.metadata().unwrap().len();
    file.set_len(len - by).unwrap();
}

#[test]
fn records_read_back_in_the_order_they_were_appended_across_segments() {
    let dir = Dir::new("order");
    let mut spool = Spool::open(&dir.config(4 * FRAME, 1 << 20)).unwrap();
    assert!(spool.is_empty());
    let written = events(0..10);
    let pos = append_all(&mut spool, &written);
    assert_eq!(spool.segments(), 3, "4 + 4 + 2 records");
    assert_eq!(spool.bytes(), 10 * FRAME);
    assert_eq!(
        pos[4],
        Pos {
            segment: 2,
            offset: 0
        },
        "the fifth record opens segment 2"
    );
    assert!(pos.windows(2).all(|w| w[0] < w[1]));
    assert_eq!(read_all(&mut spool), written);
    // Reading in small steps gives the same records.
    let mut at = spool.start();
    let mut seen = Vec::new();
    loop {
        let (records, next) = spool.read(at, 3, usize::MAX).unwrap();
        if records.is_empty() {
            break;
        }
        seen.extend(records.into_iter().map(|r| String::from_utf8(r.payload).unwrap()));
        at = next;
    }
    assert_eq!(seen, written);
}

#[test]
fn a_record_larger_than_a_segment_gets_a_segment_of_its_own() {
    let dir = Dir::new("large");
    let mut spool = Spool::open(&dir.config(2 * FRAME, 1 << 20)).unwrap();
    let big = format!(r#"{{"id":"{}"}}"#, "x".repeat(500));
    let written = [events(0..1), vec![big], events(1..2)].concat();
    append_all(&mut spool, &written);
    assert_eq!(spool.segments(), 3);
    assert_eq!(read_all(&mut spool), written);
}

#[test]
fn the_spool_is_bounded_by_max_bytes_unless_an_append_is_forced() {
    let dir = Dir::new("bounded");
    let mut spool = Spool::open(&dir.config(2 * FRAME, 5 * FRAME)).unwrap();
    let status = spool.status();
    append_all(&mut spool, &events(0..5));
    assert!(status.is_full(), "5 of 5 records' worth");
    assert_eq!(status.bytes(), 5 * FRAME);
    let refused = spool.append(b"team-a", events(5..6)[0].as_bytes(), false);
    assert!(
        matches!(refused, Err(AppendError::Full { bytes, max_bytes }) if bytes == 5 * FRAME && max_bytes == 5 * FRAME)
    );
    assert_eq!(spool.bytes(), 5 * FRAME, "a refused append writes nothing");
    // An event of a request admitted before the spool filled up is kept.
    spool.append(b"team-a", events(5..6)[0].as_bytes(), true).unwrap();
    assert_eq!(spool.bytes(), 6 * FRAME);
    // Releasing the first two segments (four records) makes room again.
    let (records, _) = spool.read(spool.start(), 4, usize::MAX).unwrap();
    let fifth = Pos {
        segment: records[3].pos.segment + 1,
        offset: 0,
    };
    spool.release(fifth).unwrap();
    assert_eq!(spool.segments(), 1);
    assert_eq!(spool.bytes(), 2 * FRAME);
    assert!(!status.is_full());
    assert_eq!(read_all(&mut spool), events(4..6));
}

#[test]
fn releasing_everything_deletes_every_segment_and_appends_start_a_new_one() {
    let dir = Dir::new("release");
    let mut spool = Spool::open(&dir.config(2 * FRAME, 1 << 20)).unwrap();
    append_all(&mut spool, &events(0..3));
    spool.release(spool.end()).unwrap();
    assert!(spool.is_empty());
    assert_eq!(spool.bytes(), 0);
    assert_eq!(segment_ids(&dir.0).unwrap(), Vec::<u64>::new());
    let pos = append_all(&mut spool, &events(3..4));
    assert_eq!(
        pos[0],
        Pos {
            segment: 3,
            offset: 0
        },
        "segment numbers never repeat"
    );
    assert_eq!(read_all(&mut spool), events(3..4));
}

#[test]
fn a_spool_reopened_after_a_crash_holds_every_record() {
    let dir = Dir::new("reopen");
    let config = dir.config(3 * FRAME, 1 << 20);
    {
        let mut spool = Spool::open(&config).unwrap();
        append_all(&mut spool, &events(0..7));
        // Dropped without a sync, as after kill -9: the page cache has it all.
    }
    let mut spool = Spool::open(&config).unwrap();
    assert_eq!(spool.recovered(), 7);
    assert_eq!(spool.segments(), 3);
    assert_eq!(read_all(&mut spool), events(0..7));
    // Appends continue in the last segment, which had room for two more.
    let pos = append_all(&mut spool, &events(7..10));
    assert_eq!(
        pos[0],
        Pos {
            segment: 3,
            offset: FRAME
        }
    );
    assert_eq!(
        pos[2],
        Pos {
            segment: 4,
            offset: 0
        }
    );
    assert_eq!(read_all(&mut spool), events(0..10));
}

#[test]
fn a_second_gateway_cannot_open_a_spool_in_use() {
    let dir = Dir::new("lock");
    let config = dir.config(1 << 16, 1 << 20);
    let first = Spool::open(&config).unwrap();
    assert!(matches!(Spool::open(&config), Err(SpoolError::Locked { .. })));
    drop(first);
    Spool::open(&config).unwrap();
}

#[test]
fn a_torn_header_at_the_end_is_cut_off_counted_and_appends_continue() {
    let dir = Dir::new("torn-header");
    let config = dir.config(1 << 16, 1 << 20);
    {
        let mut spool = Spool::open(&config).unwrap();
        append_all(&mut spool, &events(0..3));
    }
    // The last record lost all but 5 bytes of its header.
    truncate(&dir.segment(1), FRAME - 5);
    let rendered = with_metrics(|| {
        let mut spool = Spool::open(&config).unwrap();
        assert_eq!(spool.recovered(), 2);
        assert_eq!(spool.bytes(), 2 * FRAME);
        assert_eq!(
            std::fs::metadata(dir.segment(1)).unwrap().len(),
            2 * FRAME,
            "truncated"
        );
        append_all(&mut spool, &events(3..4));
        let mut written = events(0..2);
        written.extend(events(3..4));
        assert_eq!(read_all(&mut spool), written);
    });
    assert_eq!(corrupt_count(&rendered, "torn"), 1);
    // Opened again, nothing is reported twice: the tail is gone.
    let rendered = with_metrics(|| {
        Spool::open(&config).unwrap();
    });
    assert_eq!(corrupt_count(&rendered, "torn"), 0);
}

#[test]
fn a_torn_payload_at_the_end_is_cut_off() {
    let dir = Dir::new("torn-payload");
    let config = dir.config(1 << 16, 1 << 20);
    {
        let mut spool = Spool::open(&config).unwrap();
        append_all(&mut spool, &events(0..3));
    }
    truncate(&dir.segment(1), 4);
    let rendered = with_metrics(|| {
        let mut spool = Spool::open(&config).unwrap();
        assert_eq!(read_all(&mut spool), events(0..2));
    });
    assert_eq!(corrupt_count(&rendered, "torn"), 1);
}

#[test]
fn garbage_after_the_last_record_is_cut_off() {
    let dir = Dir::new("garbage");
    let config = dir.config(1 << 16, 1 << 20);
    {
        let mut spool = Spool::open(&config).unwrap();
        append_all(&mut spool, &events(0..3));
    }
    let mut bytes = std::fs::read(dir.segment(1)).unwrap();
    bytes.extend_from_slice(&[0u8; 100]);
    std::fs::write(dir.segment(1), &bytes).unwrap();
    let rendered = with_metrics(|| {
        let mut spool = Spool::open(&config).unwrap();
        assert_eq!(read_all(&mut spool), events(0..3));
        assert_eq!(spool.bytes(), 3 * FRAME);
    });
    assert_eq!(corrupt_count(&rendered, "garbage"), 1);
}

#[test]
fn a_flipped_bit_in_the_middle_loses_that_record_only_and_is_counted_once() {
    let dir = Dir::new("bit-flip");
    let config = dir.config(1 << 16, 1 << 20);
    {
        let mut spool = Spool::open(&config).unwrap();
        append_all(&mut spool, &events(0..5));
    }
    let mut bytes = std::fs::read(dir.segment(1)).unwrap();
    bytes[(2 * FRAME + 30) as usize] ^= 0x10; // inside the third record's payload
    std::fs::write(dir.segment(1), &bytes).unwrap();
    let rendered = with_metrics(|| {
        let mut spool = Spool::open(&config).unwrap();
        assert_eq!(spool.recovered(), 4);
        assert_eq!(
            spool.bytes(),
            5 * FRAME,
            "a middle record is skipped, not cut off"
        );
        let expected = [events(0..2), events(3..5)].concat();
        assert_eq!(read_all(&mut spool), expected);
        assert_eq!(read_all(&mut spool), expected, "read twice");
    });
    assert_eq!(corrupt_count(&rendered, "checksum"), 1);
}

#[test]
fn a_torn_tail_in_an_older_segment_is_cut_off_and_later_segments_still_read() {
    let dir = Dir::new("older");
    let config = dir.config(2 * FRAME, 1 << 20);
    {
        let mut spool = Spool::open(&config).unwrap();
        append_all(&mut spool, &events(0..4));
    }
    truncate(&dir.segment(1), 7);
    let mut spool = Spool::open(&config).unwrap();
    let expected = [events(0..1), events(2..4)].concat();
    assert_eq!(read_all(&mut spool), expected);
}

#[test]
fn the_cursor_skips_what_kafka_acknowledged_before_a_stop() {
    let dir = Dir::new("cursor");
    let config = dir.config(3 * FRAME, 1 << 20);
    {
        let mut spool = Spool::open(&config).unwrap();
        let pos = append_all(&mut spool, &events(0..7));
        // Records 0..4 were acknowledged: segment 1 goes, segment 2 starts after its first record.
        spool.release(pos[4]).unwrap();
        assert_eq!(spool.segments(), 2);
        spool.sync_now().unwrap();
    }
    let mut spool = Spool::open(&config).unwrap();
    assert_eq!(
        spool.start(),
        Pos {
            segment: 2,
            offset: FRAME
        }
    );
    assert_eq!(spool.recovered(), 3);
    assert_eq!(read_all(&mut spool), events(4..7));
}

#[test]
fn a_stale_cursor_is_ignored() {
    let dir = Dir::new("stale-cursor");
    let config = dir.config(1 << 16, 1 << 20);
    {
        let mut spool = Spool::open(&config).unwrap();
        append_all(&mut spool, &events(0..2));
    }
    std::fs::write(dir.0.join("cursor"), "9 0\n").unwrap();
    let mut spool = Spool::open(&config).unwrap();
    assert_eq!(read_all(&mut spool), events(0..2));
}

#[test]
fn a_corrupt_record_met_while_draining_is_skipped_and_counted_once() {
    let dir = Dir::new("drain-corrupt");
    let config = dir.config(1 << 16, 1 << 20);
    let mut spool = Spool::open(&config).unwrap();
    append_all(&mut spool, &events(0..3));
    // Corrupted behind the spool's back while it runs.
    let file = OpenOptions::new().write(true).open(dir.segment(1)).unwrap();
    file.write_all_at(b"\xff", FRAME + 20).unwrap();
    let rendered = with_metrics(|| {
        let expected = [events(0..1), events(2..3)].concat();
        assert_eq!(read_all(&mut spool), expected);
        assert_eq!(read_all(&mut spool), expected);
    });
    assert_eq!(corrupt_count(&rendered, "checksum"), 1);
}

proptest! {
    #![proptest_config(ProptestConfig::with_cases(64))]

    /// A crash can cut the spool's last segment anywhere: reopened, it holds exactly the records that were whole,
    /// in order, and appends after them read back too.
    #[test]
    fn reopening_after_any_truncation_keeps_exactly_the_whole_records(
        sizes in prop::collection::vec(0usize..60, 1..12),
        cut in any::<prop::sample::Index>(),
    ) {
        let dir = Dir::new("prop");
        let config = dir.config(1 << 16, 1 << 20);
        let written: Vec<String> = sizes.iter().enumerate().map(|(i, n)| format!("{i}:{}", "y".repeat(*n))).collect();
        let ends: Vec<u64> = {
            let mut spool = Spool::open(&config).unwrap();
            append_all(&mut spool, &written);
            let mut end = 0;
            written.iter().map(|p| { end += frame::frame_len(b"team-a", p.as_bytes()) as u64; end }).collect()
        };
        let total = *ends.last().unwrap();
        let cut = cut.index(total as usize + 1) as u64;
        truncate(&dir.segment(1), total - cut);
        let whole = ends.iter().take_while(|&&end| end <= cut).count();
        let mut spool = Spool::open(&config).unwrap();
        prop_assert_eq!(read_all(&mut spool), written[..whole].to_vec());
        let more = events(100..102);
        append_all(&mut spool, &more);
        prop_assert_eq!(read_all(&mut spool), [written[..whole].to_vec(), more].concat());
    }
}

fn failing_fsync(_: &File) -> io::Result<()> {
    Err(io::Error::other("injected: the disk lost the pages"))
}

fn working_fsync(file: &File) -> io::Result<()> {
    file.sync_data()
}

/// The segment files on disk, by number.
fn segment_files(dir: &Dir) -> Vec<u64> {
    let mut ids = segment_ids(&dir.0).unwrap();
    ids.sort_unstable();
    ids
}

#[test]
fn a_failed_fsync_seals_its_segment_and_writes_its_unsynced_records_again_to_a_new_one() {
    let dir = Dir::new("fsync-fails");
    let mut spool = Spool::open(&dir.config(1 << 20, 1 << 30)).unwrap();
    // Durable: fsynced before the fault.
    append_all(&mut spool, &events(0..3));
    spool.sync_now().unwrap();
    // Appended since, then the periodic fsync fails.
    append_all(&mut spool, &events(3..5));
    spool.set_fsync(failing_fsync);
    let job = spool.sync_target().unwrap().expect("an fsync is due");
    let result = job.run();
    assert!(result.is_err());
    // The records could not be written again either (the new segment's fsync fails too): the caller is told.
    assert!(spool.synced(&job, result).is_err());
    spool.set_fsync(working_fsync);
    // The sealed segment takes no more appends; the next append goes after the copies, in a new segment.
    append_all(&mut spool, &events(5..6));
    spool.sync_now().unwrap();
    assert_eq!(
        segment_files(&dir),
        [1, 2],
        "the failed segment is sealed, one new segment"
    );
    let all = read_all(&mut spool);
    // The failed segment's records, then those not fsynced in it written again, then the new ones: nothing
    // that was not known durable is only in the failed segment.
    let mut expected = events(0..5);
    expected.extend(events(3..5));
    expected.extend(events(5..6));
    assert_eq!(all, expected);

    // A failure at shutdown's fsync (sync_now) is the caller's error too, and rewrites the same way.
    append_all(&mut spool, &events(6..8));
    spool.set_fsync(failing_fsync);
    assert!(spool.sync_now().is_err());
    spool.set_fsync(working_fsync);
    assert_eq!(segment_files(&dir), [1, 2, 3]);
    let all = read_all(&mut spool);
    assert_eq!(
        &all[all.len() - 4..],
        &events(6..8).into_iter().chain(events(6..8)).collect::<Vec<_>>()[..]
    );

    // A roll whose fsync fails rewrites instead of losing the records or failing the append.
    let dir = Dir::new("fsync-roll");
    let one = frame::frame_len(b"team-a", events(0..1)[0].as_bytes()) as u64;
    let mut spool = Spool::open(&dir.config(2 * one, 1 << 30)).unwrap();
    append_all(&mut spool, &events(0..2));
    spool.set_fsync(failing_fsync);
    // The roll's fsync fails, and so does the rewrite's: the append reports it.
    assert!(
        spool
            .append(b"team-a", events(2..3)[0].as_bytes(), false)
            .is_err()
    );
    spool.set_fsync(working_fsync);
    append_all(&mut spool, &events(3..4));
    spool.sync_now().unwrap();
    let all = read_all(&mut spool);
    assert_eq!(all, [events(0..2), events(0..2), events(3..4)].concat());
}

#[test]
fn a_roll_whose_fsync_fails_with_nothing_left_to_rewrite_still_takes_the_append() {
    let dir = Dir::new("fsync-roll-clean");
    let one = frame::frame_len(b"team-a", events(0..1)[0].as_bytes()) as u64;
    let mut spool = Spool::open(&dir.config(2 * one, 1 << 30)).unwrap();
    append_all(&mut spool, &events(0..2));
    spool.sync_now().unwrap();
    spool.set_fsync(failing_fsync);
    spool
        .append(b"team-a", events(2..3)[0].as_bytes(), false)
        .unwrap();
    spool.set_fsync(working_fsync);
    spool.sync_now().unwrap();
    assert_eq!(read_all(&mut spool), events(0..3));
}

#[test]
fn records_confirmed_by_a_successful_fsync_are_not_written_again() {
    let dir = Dir::new("fsync-ok");
    let mut spool = Spool::open(&dir.config(1 << 20, 1 << 30)).unwrap();
    append_all(&mut spool, &events(0..3));
    let job = spool.sync_target().unwrap().expect("an fsync is due");
    let result = job.run();
    spool.synced(&job, result).unwrap();
    append_all(&mut spool, &events(3..4));
    spool.set_fsync(failing_fsync);
    let job = spool.sync_target().unwrap().expect("an fsync is due");
    let result = job.run();
    spool.set_fsync(working_fsync);
    spool.synced(&job, result).unwrap();
    let all = read_all(&mut spool);
    assert_eq!(
        all,
        [events(0..4), events(3..4)].concat(),
        "only the unconfirmed record is copied"
    );
}

proptest! {
    /// A drain takes a few records at a time, and a read is sized by how many it takes: records that straddle
    /// a read's end, or are larger than a whole read, still come back whole, in order, none skipped or doubled.
    #[test]
    fn reading_a_few_records_at_a_time_returns_every_record_once_in_order(
        sizes in proptest::collection::vec(0usize..40_000, 1..40),
        step in 1usize..5,
    ) {
        let dir = Dir::new("steps");
        let mut spool = Spool::open(&dir.config(256 << 10, 16 << 20)).unwrap();
        let written: Vec<String> = sizes
            .iter()
            .enumerate()
            .map(|(n, size)| format!(r#"{{"n":{n},"pad":"{}"}}"#, "x".repeat(*size)))
            .collect();
        append_all(&mut spool, &written);
        let mut at = spool.start();
        let mut seen = Vec::new();
        loop {
            let (records, next) = spool.read(at, step, usize::MAX).unwrap();
            prop_assert!(records.len() <= step);
            if records.is_empty() {
                break;
            }
            seen.extend(records.into_iter().map(|r| String::from_utf8(r.payload).unwrap()));
            at = next;
        }
        prop_assert_eq!(seen, written);
        prop_assert_eq!(at, spool.end());
    }
}
