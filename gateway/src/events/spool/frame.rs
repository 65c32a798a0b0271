//! The on-disk record format of the spool, and the decoder that reads it back without ever misreading.
//!
//! One record is one frame:
//!
//! ```text
//! offset  size  field
//!      0     4  magic      b"TGsp"
//!      4     4  length     u32 little-endian: the length of the body
//!      8     4  checksum   u32 little-endian: CRC-32 (IEEE) of the 4 length bytes followed by the body
//!     12     2  key length u16 little-endian
//!     14     k  key        the Kafka key (the consumer id), UTF-8
//!   14+k     …  payload    the event's JSON, exactly as it goes to Kafka
//! ```
//!
//! The checksum covers the length too, so a flipped length is caught like a flipped payload byte. [`decode`]
//! looks at the bytes from a position and says what is there: a whole, valid [`Frame`]; bytes to skip up to the
//! next valid frame (a corrupt record in the middle: resynchronisation); a corrupt or torn tail with no valid
//! frame after it; or that it needs more bytes to tell. A frame is only ever returned when its magic, length and
//! checksum all agree, so a corrupt record is skipped, never read as another.

/// The first bytes of every frame.
pub const MAGIC: [u8; 4] = *b"TGsp";
/// Magic, length and checksum.
pub const HEADER_LEN: usize = 12;
/// The largest body a frame may carry; a larger length in a header is corruption. Usage events are a few KiB.
pub const MAX_BODY_LEN: usize = 16 << 20;
/// The key-length field at the start of the body.
const KEY_LEN_LEN: usize = 2;

/// Why bytes of a segment were not a record: a bounded metric label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Corruption {
    /// The bytes end inside a frame's header or body: a write cut short by a crash.
    Torn,
    /// A whole frame whose checksum does not match: a flipped bit, a torn page.
    Checksum,
    /// Bytes that are not a frame header (wrong magic, impossible length).
    Garbage,
}

impl Corruption {
    /// The `reason` label of `tollgate_spool_corrupt_records_total`.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Torn => "torn",
            Self::Checksum => "checksum",
            Self::Garbage => "garbage",
        }
    }
}

/// A valid frame at the start of the decoded bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Frame<'a> {
    /// Bytes the frame occupies, header included.
    pub len: usize,
    pub key: &'a [u8],
    pub payload: &'a [u8],
}

/// What the bytes at a position hold.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Step<'a> {
    /// A valid frame.
    Record(Frame<'a>),
    /// `len` bytes that are not a valid frame, followed by one that is.
    Skip { len: usize, reason: Corruption },
    /// Only at the end of the data: from here to the end there is no valid frame.
    Tail { reason: Corruption },
    /// The data ends before it can be told what is here (never at the end of the data).
    NeedMore,
    /// No bytes left.
    End,
}

/// The frame's length, or why it cannot be encoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum EncodeError {
    #[error("the Kafka key is longer than 65535 bytes")]
    KeyTooLong,
    #[error("the record is larger than the spool's limit of {MAX_BODY_LEN} bytes")]
    TooLarge,
}

/// Appends the frame of (`key`, `payload`) to `out`.
pub fn encode(key: &[u8], payload: &[u8], out: &mut Vec<u8>) -> Result<(), EncodeError> {
    let key_len = u16::try_from(key.len()).map_err(|_| EncodeError::KeyTooLong)?;
    let body_len = KEY_LEN_LEN + key.len() + payload.len();
    if body_len > MAX_BODY_LEN {
        return Err(EncodeError::TooLarge);
    }
    let length = u32::try_from(body_len)
        .map_err(|_| EncodeError::TooLarge)?
        .to_le_bytes();
    let key_len = key_len.to_le_bytes();
    let mut crc = crc32fast::Hasher::new();
    for part in [&length[..], &key_len[..], key, payload] {
        crc.update(part);
    }
    out.reserve(HEADER_LEN + body_len);
    out.extend_from_slice(&MAGIC);
    out.extend_from_slice(&length);
    out.extend_from_slice(&crc.finalize().to_le_bytes());
    out.extend_from_slice(&key_len);
    out.extend_from_slice(key);
    out.extend_from_slice(payload);
    Ok(())
}

/// Bytes a frame of (`key`, `payload`) occupies.
pub fn frame_len(key: &[u8], payload: &[u8]) -> usize {
    HEADER_LEN + KEY_LEN_LEN + key.len() + payload.len()
}

/// What is at the start of `buf`. `at_end` says that `buf` reaches the end of the data (of the segment): only
/// then is an incomplete frame a torn tail rather than a reason to read more.
pub fn decode(buf: &[u8], at_end: bool) -> Step<'_> {
    if buf.is_empty() {
        return Step::End;
    }
    let reason = match check(buf) {
        Check::Valid(frame) => return Step::Record(frame),
        Check::Incomplete if !at_end => return Step::NeedMore,
        Check::Incomplete => Corruption::Torn,
        Check::Invalid(reason) => reason,
    };
    match next_valid(buf) {
        Some(len) => Step::Skip { len, reason },
        None if at_end => Step::Tail { reason },
        // A valid frame may start in the bytes not read yet.
        None => Step::NeedMore,
    }
}

enum Check<'a> {
    Valid(Frame<'a>),
    /// Everything read so far is consistent with a frame that continues past the end of `buf`.
    Incomplete,
    Invalid(Corruption),
}

fn check(buf: &[u8]) -> Check<'_> {
    let magic_len = buf.len().min(MAGIC.len());
    if buf[..magic_len] != MAGIC[..magic_len] {
        return Check::Invalid(Corruption::Garbage);
    }
    let Some(header) = buf.get(..HEADER_LEN) else {
        return Check::Incomplete;
    };
    let length = [header[4], header[5], header[6], header[7]];
    let body_len = u32::from_le_bytes(length) as usize;
    if !(KEY_LEN_LEN..=MAX_BODY_LEN).contains(&body_len) {
        return Check::Invalid(Corruption::Garbage);
    }
    let Some(body) = buf.get(HEADER_LEN..HEADER_LEN + body_len) else {
        return Check::Incomplete;
    };
    let stored = u32::from_le_bytes([header[8], header[9], header[10], header[11]]);
    let mut crc = crc32fast::Hasher::new();
    crc.update(&length);
    crc.update(body);
    if crc.finalize() != stored {
        return Check::Invalid(Corruption::Checksum);
    }
    let key_len = usize::from(u16::from_le_bytes([body[0], body[1]]));
    match (
        body.get(KEY_LEN_LEN..KEY_LEN_LEN + key_len),
        body.get(KEY_LEN_LEN + key_len..),
    ) {
        (Some(key), Some(payload)) => Check::Valid(Frame {
            len: HEADER_LEN + body_len,
            key,
            payload,
        }),
        // A checksum that matches a body whose key does not fit: not a frame this code wrote.
        _ => Check::Invalid(Corruption::Garbage),
    }
}

/// The offset of the first valid frame after the start of `buf`.
fn next_valid(buf: &[u8]) -> Option<usize> {
    (1..buf.len())
        .filter(|&at| buf[at] == MAGIC[0])
        .find(|&at| matches!(check(&buf[at..]), Check::Valid(_)))
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn frame(key: &str, payload: &str) -> Vec<u8> {
        let mut out = Vec::new();
        encode(key.as_bytes(), payload.as_bytes(), &mut out).unwrap();
        out
    }

    /// Every step over `buf` (treated as the whole data), as readable tokens.
    fn walk(buf: &[u8]) -> Vec<String> {
        let mut at = 0;
        let mut seen = Vec::new();
        loop {
            match decode(&buf[at..], true) {
                Step::Record(f) => {
                    seen.push(format!(
                        "{}={}",
                        String::from_utf8_lossy(f.key),
                        String::from_utf8_lossy(f.payload)
                    ));
                    at += f.len;
                }
                Step::Skip { len, reason } => {
                    seen.push(format!("skip {len} {}", reason.as_str()));
                    at += len;
                }
                Step::Tail { reason } => {
                    seen.push(format!("tail {} {}", buf.len() - at, reason.as_str()));
                    return seen;
                }
                Step::NeedMore => unreachable!("never at the end of the data"),
                Step::End => return seen,
            }
        }
    }

    #[test]
    fn a_frame_reads_back_as_written() {
        let bytes = frame("team-a", r#"{"id":"0190"}"#);
        assert_eq!(bytes.len(), frame_len(b"team-a", br#"{"id":"0190"}"#));
        assert_eq!(&bytes[..4], b"TGsp");
        assert_eq!(walk(&bytes), [r#"team-a={"id":"0190"}"#]);
    }

    #[test]
    fn an_empty_key_and_payload_are_a_valid_frame() {
        assert_eq!(walk(&frame("", "")), ["="]);
    }

    #[test]
    fn a_torn_header_is_a_torn_tail() {
        let two = [frame("a", "1"), frame("b", "2")].concat();
        let first = frame("a", "1").len();
        for cut in first + 1..first + HEADER_LEN {
            assert_eq!(
                walk(&two[..cut]),
                ["a=1".to_owned(), format!("tail {} torn", cut - first)],
                "cut at {cut}"
            );
        }
    }

    #[test]
    fn a_torn_payload_is_a_torn_tail() {
        let two = [frame("a", "1"), frame("b", "a longer payload")].concat();
        let first = frame("a", "1").len();
        for cut in first + HEADER_LEN..two.len() {
            assert_eq!(
                walk(&two[..cut]),
                ["a=1".to_owned(), format!("tail {} torn", cut - first)]
            );
        }
    }

    #[test]
    fn a_torn_frame_is_only_a_tail_at_the_end_of_the_data() {
        let bytes = frame("a", "payload");
        assert_eq!(decode(&bytes[..5], false), Step::NeedMore);
        assert_eq!(decode(&bytes[..HEADER_LEN + 3], false), Step::NeedMore);
        assert_eq!(
            decode(&bytes[..HEADER_LEN + 3], true),
            Step::Tail {
                reason: Corruption::Torn
            }
        );
    }

    #[test]
    fn a_flipped_bit_in_the_last_frame_is_a_checksum_tail() {
        let mut bytes = [frame("a", "1"), frame("b", "2")].concat();
        let last = bytes.len() - 1;
        bytes[last] ^= 0x01;
        assert_eq!(walk(&bytes), ["a=1", "tail 16 checksum"]);
    }

    #[test]
    fn a_corrupt_frame_in_the_middle_is_skipped_up_to_the_next_valid_one() {
        let mut bytes = [frame("a", "1"), frame("b", "2"), frame("c", "3")].concat();
        let second = frame("a", "1").len();
        bytes[second + HEADER_LEN + 3] ^= 0x80; // the payload of the second frame
        assert_eq!(walk(&bytes), ["a=1", "skip 16 checksum", "c=3"]);
        // A flipped length is caught whichever way it points: past the end of the data (torn), onto a shorter
        // or longer stretch (checksum), or to an impossible value (garbage).
        let flipped = |at: usize, bit: u8| {
            let mut bytes = [frame("a", "1"), frame("b", "2"), frame("c", "3")].concat();
            bytes[at] ^= bit;
            walk(&bytes)
        };
        assert_eq!(flipped(second + 5, 0x01), ["a=1", "skip 16 torn", "c=3"]);
        assert_eq!(flipped(second + 4, 0x01), ["a=1", "skip 16 checksum", "c=3"]);
        assert_eq!(flipped(second + 4, 0x04), ["a=1", "skip 16 garbage", "c=3"]);
    }

    #[test]
    fn garbage_between_frames_is_skipped_and_garbage_at_the_end_is_a_tail() {
        let bytes = [
            frame("a", "1"),
            b"\0\0\0\0garbage TGsp not a frame".to_vec(),
            frame("b", "2"),
            b"TGsp\xff\xff\xff\xff trailing".to_vec(),
        ]
        .concat();
        assert_eq!(walk(&bytes), ["a=1", "skip 28 garbage", "b=2", "tail 17 garbage"]);
    }

    #[test]
    fn zeros_where_a_frame_should_be_are_garbage() {
        // What a crash after extending a file but before writing its pages can leave.
        let bytes = [frame("a", "1"), vec![0; 100]].concat();
        assert_eq!(walk(&bytes), ["a=1", "tail 100 garbage"]);
    }

    #[test]
    fn impossible_lengths_are_garbage() {
        let mut bytes = frame("a", "1");
        bytes[4..8].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(walk(&bytes), ["tail 16 garbage"]);
        let mut bytes = frame("a", "1");
        bytes[4..8].copy_from_slice(&1u32.to_le_bytes());
        assert_eq!(walk(&bytes), ["tail 16 garbage"]);
    }

    #[test]
    fn a_search_for_the_next_frame_asks_for_more_bytes_before_the_end() {
        let bytes = [b"garbage".to_vec(), frame("a", "1")].concat();
        assert_eq!(decode(&bytes[..10], false), Step::NeedMore);
        assert_eq!(
            decode(&bytes, false),
            Step::Skip {
                len: 7,
                reason: Corruption::Garbage
            }
        );
    }

    #[test]
    fn oversized_records_and_keys_are_refused() {
        let mut out = Vec::new();
        assert_eq!(
            encode(&[b'k'; 70_000], b"{}", &mut out),
            Err(EncodeError::KeyTooLong)
        );
        assert_eq!(
            encode(b"k", &vec![b'x'; MAX_BODY_LEN], &mut out),
            Err(EncodeError::TooLarge)
        );
        assert!(out.is_empty());
    }

    fn records() -> impl Strategy<Value = Vec<(String, String)>> {
        prop::collection::vec(("[a-z-]{0,12}", "\\PC{0,80}"), 1..12)
    }

    proptest! {
        /// Cut anywhere: every record before the cut reads back exactly, then one torn tail (or nothing, on a
        /// frame boundary), and never a record that was not written.
        #[test]
        fn any_truncation_yields_the_whole_frames_before_it(records in records(), cut in any::<prop::sample::Index>()) {
            let frames: Vec<Vec<u8>> = records.iter().map(|(k, p)| frame(k, p)).collect();
            let all = frames.concat();
            let cut = cut.index(all.len() + 1);
            let mut whole = 0;
            let mut end = 0;
            for f in &frames {
                if end + f.len() > cut {
                    break;
                }
                end += f.len();
                whole += 1;
            }
            let mut expected: Vec<String> = records[..whole].iter().map(|(k, p)| format!("{k}={p}")).collect();
            if cut > end {
                expected.push(format!("tail {} torn", cut - end));
            }
            prop_assert_eq!(walk(&all[..cut]), expected);
        }

        /// Flip any bit: every record the flip did not touch reads back, the touched one is skipped (or is the
        /// tail), and nothing is misread.
        #[test]
        fn any_bit_flip_loses_only_the_record_it_hit(records in records(), at in any::<prop::sample::Index>(), bit in 0u8..8) {
            let frames: Vec<Vec<u8>> = records.iter().map(|(k, p)| frame(k, p)).collect();
            let mut all = frames.concat();
            let at = at.index(all.len());
            all[at] ^= 1 << bit;
            let mut start = 0;
            let hit = frames.iter().position(|f| { start += f.len(); at < start }).unwrap();
            let seen: Vec<String> = walk(&all).into_iter().filter(|s| s.contains('=')).collect();
            let expected: Vec<String> = records
                .iter()
                .enumerate()
                .filter(|(i, _)| *i != hit)
                .map(|(_, (k, p))| format!("{k}={p}"))
                .collect();
            prop_assert_eq!(seen, expected);
        }
    }
}
