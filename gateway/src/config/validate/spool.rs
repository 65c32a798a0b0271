//! `[spool]`: where usage events wait on disk while Kafka does not acknowledge them.

use std::path::PathBuf;
use std::time::Duration;

use super::Problems;
use crate::config::model::*;
use crate::config::raw::*;

/// The smallest segment accepted: a few events.
const MIN_SPOOL_SEGMENT_BYTES: u64 = 4096;
/// A spool segment is read back whole-record at a time; beyond this it only delays sealing and fsync.
const MAX_SPOOL_SEGMENT_BYTES: u64 = 1 << 30;

pub(super) fn spool(p: &mut Problems, raw: RawSpool, message_timeout: Duration) -> SpoolConfig {
    if raw.dir.trim().is_empty() {
        p.push("spool.dir", "must name a directory");
    }
    if raw.segment_bytes > MAX_SPOOL_SEGMENT_BYTES {
        p.push("spool.segment_bytes", "must be at most 1 GiB");
    }
    if raw.segment_bytes < MIN_SPOOL_SEGMENT_BYTES {
        p.push(
            "spool.segment_bytes",
            format!("must be at least {MIN_SPOOL_SEGMENT_BYTES}"),
        );
    }
    if raw.max_bytes < raw.segment_bytes {
        p.push(
            "spool.max_bytes",
            format!("must be at least spool.segment_bytes ({})", raw.segment_bytes),
        );
    }
    let after = p.duration("spool.after", &raw.after);
    if !message_timeout.is_zero() && after >= message_timeout {
        p.push(
            "spool.after",
            format!(
                "must be shorter than kafka.message_timeout ({}): an event is spooled while librdkafka still \
                 holds it, not after it gave up",
                humantime::format_duration(message_timeout)
            ),
        );
    }
    let on_full = match raw.on_full.as_str() {
        "reject" => OnFull::Reject,
        "serve_unmetered" => OnFull::ServeUnmetered,
        other => {
            p.push(
                "spool.on_full",
                format!("`{other}` is not reject or serve_unmetered"),
            );
            OnFull::Reject
        }
    };
    SpoolConfig {
        dir: PathBuf::from(raw.dir),
        max_bytes: raw.max_bytes,
        segment_bytes: raw.segment_bytes,
        fsync_interval: p.duration("spool.fsync_interval", &raw.fsync_interval),
        after,
        on_full,
        write_ahead: raw.write_ahead,
    }
}
