//! Fuzzes the spool's frame decoder ([`tollgate_gateway::events::spool::frame`]) over whole segments, the way the
//! spool reads them: once whole at start-up (`Spool::open` checking each segment), and in chunks that grow when one
//! record does not fit (`Spool::read`, which the drain calls).
//!
//! Input: one mode byte, then the segment. Mode bit 0 makes the rest a list of records (split at `0xff`; the first
//! byte of each is its key length) encoded with [`frame::encode`], bit 1 then flips one byte of that segment (at
//! a position from the mode's upper bits), and the mode's upper bits also set the reader's first chunk size.
//! Otherwise the rest is taken as segment bytes as they are.
//!
//! Invariants beyond "no panic":
//! - every decoding step makes progress and stays within the bytes (no endless loop, no slice past the end);
//! - a decoded record re-encodes to exactly the bytes it was read from;
//! - a skip ends where a valid record starts; a torn or corrupt tail is only reported at the end of the data, and
//!   "need more" never is;
//! - segments written by the encoder decode to the same records, whole or in chunks;
//! - a segment with no corruption yields the same records whole and in chunks.

use tollgate_gateway::events::spool::frame::{self, Step};

/// One decoded record: offset, key, payload.
type Found = (usize, Vec<u8>, Vec<u8>);

/// Decodes `segment` whole (`at_end` always true). Returns the records and whether any corruption was met.
fn whole(segment: &[u8]) -> (Vec<Found>, bool) {
    let mut at = 0;
    let mut records = Vec::new();
    let mut corrupt = false;
    loop {
        let rest = &segment[at..];
        match frame::decode(rest, true) {
            Step::Record(f) => {
                check_record(rest, f.len, f.key, f.payload);
                records.push((at, f.key.to_vec(), f.payload.to_vec()));
                at += f.len;
            }
            Step::Skip { len, .. } => {
                assert!(
                    len > 0 && len < rest.len(),
                    "a skip of {len} bytes out of {}",
                    rest.len()
                );
                assert!(
                    matches!(frame::decode(&rest[len..], true), Step::Record(_)),
                    "a skip must end at a valid record"
                );
                corrupt = true;
                at += len;
            }
            Step::Tail { .. } => {
                corrupt = true;
                break;
            }
            Step::NeedMore => panic!("`need more` at the end of the data"),
            Step::End => {
                assert_eq!(at, segment.len(), "`end` before the end");
                break;
            }
        }
    }
    (records, corrupt)
}

/// Decodes `segment` as `Spool::read` does: `chunk` bytes at a time, doubling the read while one record (or one
/// corrupt stretch) does not fit.
fn chunked(segment: &[u8], chunk: usize) -> Vec<Found> {
    let mut records = Vec::new();
    let mut at = 0usize;
    while at < segment.len() {
        let mut want = (segment.len() - at).min(chunk);
        loop {
            let bytes = &segment[at..at + want];
            let at_end = at + want == segment.len();
            let mut used = 0usize;
            let mut need_more = false;
            loop {
                let rest = &bytes[used..];
                match frame::decode(rest, at_end) {
                    Step::Record(f) => {
                        check_record(rest, f.len, f.key, f.payload);
                        records.push((at + used, f.key.to_vec(), f.payload.to_vec()));
                        used += f.len;
                    }
                    Step::Skip { len, .. } => {
                        assert!(
                            len > 0 && len < rest.len(),
                            "a skip of {len} bytes out of {}",
                            rest.len()
                        );
                        used += len;
                    }
                    Step::Tail { .. } => {
                        assert!(at_end, "a tail before the end of the data");
                        used = bytes.len();
                    }
                    Step::NeedMore => {
                        assert!(!at_end, "`need more` at the end of the data");
                        need_more = used == 0;
                        break;
                    }
                    Step::End => break,
                }
            }
            at += used;
            if need_more {
                assert!(want < segment.len() - at, "`need more` with the whole rest read");
                want = (want * 2).min(segment.len() - at);
                continue;
            }
            assert!(used > 0 || at == segment.len(), "a read that made no progress");
            break;
        }
    }
    records
}

fn check_record(rest: &[u8], len: usize, key: &[u8], payload: &[u8]) {
    assert!(len <= rest.len(), "a record longer than the bytes");
    assert_eq!(len, frame::frame_len(key, payload));
    let mut again = Vec::new();
    if let Err(error) = frame::encode(key, payload, &mut again) {
        panic!("a decoded record does not encode again: {error}");
    }
    assert_eq!(
        &again[..],
        &rest[..len],
        "a decoded record re-encodes to other bytes"
    );
}

/// Runs one input; panics when an invariant does not hold.
pub fn run(data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    let chunk = 1 + usize::from(mode >> 2) * 3;
    if mode & 1 == 0 {
        let (records, corrupt) = whole(rest);
        let read = chunked(rest, chunk);
        if !corrupt {
            assert_eq!(read, records, "an intact segment reads differently in chunks");
        }
        return;
    }

    let mut segment = Vec::new();
    let mut written = Vec::new();
    for piece in rest.split(|&b| b == 0xff) {
        let (key, payload) = match piece.split_first() {
            Some((&k, body)) => body.split_at(usize::from(k).min(body.len())),
            None => (&[][..], &[][..]),
        };
        let at = segment.len();
        if frame::encode(key, payload, &mut segment).is_ok() {
            written.push((at, key.to_vec(), payload.to_vec()));
        }
    }
    if mode & 2 != 0 && !segment.is_empty() {
        let at = usize::from(mode >> 2) * 7919 % segment.len();
        segment[at] ^= 0x5a;
        let (records, corrupt) = whole(&segment);
        let read = chunked(&segment, chunk);
        if !corrupt {
            assert_eq!(read, records);
        }
        return;
    }
    let (records, corrupt) = whole(&segment);
    assert!(!corrupt, "a segment written by the encoder has corruption");
    assert_eq!(
        records, written,
        "a segment written by the encoder reads back differently"
    );
    assert_eq!(
        chunked(&segment, chunk),
        written,
        "an encoded segment reads differently in chunks"
    );
}
