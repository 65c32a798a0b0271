//! Server-Sent Events framing, one network read at a time. In come an upstream's bytes as the network delivers
//! them, cut anywhere: inside a line, between the `\r` and `\n` of one line ending, inside a multi-byte character.
//! Out come whole events, each as its raw bytes ([`EventSplitter`]), and the fields of one event
//! ([`parse_event`]).
//!
//! Framing follows the WHATWG HTML "event stream interpretation": a line ends at `\n`, `\r\n` or a lone `\r`, and
//! an event ends at an empty line. The splitter only finds boundaries and never rewrites a byte, so what the
//! client is sent and what the meter reads are the same bytes, and the events found do not depend on how the
//! stream was cut.

use std::borrow::Cow;

use bytes::{Bytes, BytesMut};

/// Cuts a byte stream into raw SSE events.
///
/// Each byte is scanned once (the scan resumes where the previous [`push`](Self::push) stopped), so the work is
/// linear in the bytes pushed. Memory is the unfinished event, at most `max_event_bytes`, plus one pushed chunk
/// while it is being scanned.
///
/// One subtlety: an event whose blank line ends in a `\r` that is the last byte pushed so far is held back (it
/// stays in [`remainder`](Self::remainder)) until the next byte shows whether a `\n` completes that line ending.
/// Releasing it earlier would put the `\n` in the next event and make the events depend on where reads were
/// cut. Streams ending `\n\n` or `\r\n\r\n`, as OpenAI-compatible ones do, are never held; at the end of a stream,
/// [`finish`](Self::finish) releases a held event.
#[derive(Debug)]
pub struct EventSplitter {
    /// The unfinished event (or the held one, see the type's doc).
    buf: BytesMut,
    /// How many bytes of `buf` have been scanned.
    scanned: usize,
    /// Nothing but line endings since the last line ending: the line being read is empty so far.
    at_line_start: bool,
    /// The last byte scanned was a `\r` ending a line: a `\n` next belongs to the same line ending.
    after_cr: bool,
    /// The last byte scanned was a `\r` ending an empty line: the event is complete, but a `\n` next is still part
    /// of it.
    held: bool,
    max_event_bytes: usize,
    /// An event exceeded the limit: the stream cannot be framed any further.
    failed: bool,
}

/// Why a stream cannot be framed.
#[derive(Debug, thiserror::Error)]
pub enum SseError {
    #[error("an SSE event is longer than the limit of {limit} bytes")]
    EventTooLarge { limit: usize },
}

impl SseError {
    /// A short, bounded name for metric labels and events.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::EventTooLarge { .. } => "sse_event_too_large",
        }
    }
}

impl EventSplitter {
    /// A splitter that refuses any event, finished or not, longer than `max_event_bytes`.
    pub fn new(max_event_bytes: usize) -> Self {
        Self {
            buf: BytesMut::new(),
            scanned: 0,
            at_line_start: true,
            after_cr: false,
            held: false,
            max_event_bytes,
            failed: false,
        }
    }

    /// Appends `chunk`; returns every event completed by it, each as its raw bytes including its terminating
    /// blank line, in order, such that concatenating all returned events plus [`remainder`](Self::remainder)
    /// equals all bytes pushed.
    ///
    /// An event longer than `max_event_bytes` (or an unfinished one already longer) is an error, whichever way
    /// the stream was cut. The error is final: the buffer is dropped, and this and every later push return it,
    /// including for events the failing chunk completed before the oversized one. A stream that fails here is to
    /// be cut, not resumed.
    pub fn push(&mut self, chunk: &[u8]) -> Result<Vec<Bytes>, SseError> {
        if self.failed {
            return Err(self.too_large());
        }
        self.buf.extend_from_slice(chunk);
        let mut events = Vec::new();
        while self.scanned < self.buf.len() {
            if !self.after_cr && !self.held {
                // No `\r` pending: the bytes up to the next line ending only say the line is not empty.
                let rest = self.buf.get(self.scanned..).unwrap_or_default();
                let skip = memchr::memchr2(b'\r', b'\n', rest).unwrap_or(rest.len());
                if skip > 0 {
                    self.at_line_start = false;
                    self.scanned += skip;
                    continue;
                }
            }
            let Some(&byte) = self.buf.get(self.scanned) else {
                break;
            };
            self.scanned += 1;
            if self.after_cr {
                self.after_cr = false;
                if byte == b'\n' {
                    // The second half of a `\r\n`: the line it ends has already been accounted for.
                    if self.held {
                        self.held = false;
                        self.cut(self.scanned, &mut events)?;
                    }
                    continue;
                }
            }
            if self.held {
                // The held event ended with its lone `\r`; this byte starts the next one.
                self.held = false;
                self.cut(self.scanned - 1, &mut events)?;
            }
            match byte {
                b'\r' => {
                    self.held = self.at_line_start;
                    self.at_line_start = true;
                    self.after_cr = true;
                }
                b'\n' => {
                    if self.at_line_start {
                        self.cut(self.scanned, &mut events)?;
                    }
                    self.at_line_start = true;
                }
                _ => self.at_line_start = false,
            }
        }
        if self.buf.len() > self.max_event_bytes {
            return Err(self.fail());
        }
        Ok(events)
    }

    /// Bytes of an event that has not been terminated yet (or of one held back, see the type's doc).
    pub fn remainder(&self) -> &[u8] {
        &self.buf
    }

    /// Ends the stream: returns the event held back for want of the byte after its final `\r`, which is complete
    /// after all. Anything else left in [`remainder`](Self::remainder) is an unterminated event, which the SSE
    /// specification discards; it stays there.
    pub fn finish(&mut self) -> Option<Bytes> {
        if !self.held {
            return None;
        }
        self.held = false;
        self.after_cr = false;
        self.at_line_start = true;
        self.scanned = 0;
        Some(self.buf.split().freeze())
    }

    /// Moves the first `end` bytes of the buffer, one whole event, to `events`.
    fn cut(&mut self, end: usize, events: &mut Vec<Bytes>) -> Result<(), SseError> {
        if end > self.max_event_bytes {
            return Err(self.fail());
        }
        events.push(self.buf.split_to(end).freeze());
        self.scanned -= end;
        Ok(())
    }

    fn fail(&mut self) -> SseError {
        self.failed = true;
        self.buf = BytesMut::new();
        self.scanned = 0;
        self.too_large()
    }

    fn too_large(&self) -> SseError {
        SseError::EventTooLarge {
            limit: self.max_event_bytes,
        }
    }
}

/// One parsed event. Its fields borrow the raw event's bytes when they can (valid UTF-8, one `data:` line: the
/// usual case), so parsing an event allocates nothing; they own a copy when lines are joined or bytes replaced.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SseEvent<'a> {
    /// The last `event:` field.
    pub event: Option<Cow<'a, str>>,
    /// The `data:` lines joined with `\n`; `None` when the event had no data line.
    pub data: Option<Cow<'a, str>>,
    /// The last `id:` field (one containing a NUL is ignored, as the specification says).
    pub id: Option<Cow<'a, str>>,
}

/// The fields of one raw event, as [`EventSplitter::push`] returns it: `field: value` lines (one space after
/// the colon is dropped; a line without a colon is a field with an empty value), up to the first empty line.
/// Comments (lines starting with `:`), `retry` and unknown fields are ignored. Invalid UTF-8 is replaced with
/// U+FFFD. A byte-order mark at the start is skipped (the specification allows one at the start of the stream,
/// which is the start of its first event).
pub fn parse_event(raw: &[u8]) -> SseEvent<'_> {
    let raw = raw.strip_prefix("\u{feff}".as_bytes()).unwrap_or(raw);
    let mut event = SseEvent::default();
    for line in Lines(raw) {
        if line.is_empty() {
            break;
        }
        let (field, value) = match memchr::memchr(b':', line) {
            Some(0) => continue,
            Some(colon) => {
                let (field, rest) = line.split_at(colon);
                let value = rest.get(1..).unwrap_or_default();
                (field, value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        let value = String::from_utf8_lossy(value);
        match field {
            b"data" => match &mut event.data {
                Some(data) => {
                    let data = data.to_mut();
                    data.push('\n');
                    data.push_str(&value);
                }
                None => event.data = Some(value),
            },
            b"event" => event.event = Some(value),
            b"id" if !value.contains('\0') => event.id = Some(value),
            _ => {}
        }
    }
    event
}

/// The lines of `bytes` without their endings (`\n`, `\r\n` or a lone `\r`); an unterminated last line is
/// included.
struct Lines<'a>(&'a [u8]);

impl<'a> Iterator for Lines<'a> {
    type Item = &'a [u8];

    fn next(&mut self) -> Option<&'a [u8]> {
        if self.0.is_empty() {
            return None;
        }
        let Some(end) = memchr::memchr2(b'\n', b'\r', self.0) else {
            return Some(std::mem::take(&mut self.0));
        };
        let (line, rest) = self.0.split_at(end);
        let ending = if rest.starts_with(b"\r\n") { 2 } else { 1 };
        self.0 = rest.get(ending..).unwrap_or_default();
        Some(line)
    }
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    const LIMIT: usize = 1 << 16;

    /// The events of `pieces` pushed one after another, and what remains.
    fn split(pieces: &[&[u8]]) -> (Vec<Bytes>, Vec<u8>) {
        let mut splitter = EventSplitter::new(LIMIT);
        let mut events = Vec::new();
        for piece in pieces {
            events.extend(splitter.push(piece).unwrap());
        }
        (events, splitter.remainder().to_vec())
    }

    fn strings(events: &[Bytes]) -> Vec<&str> {
        events.iter().map(|e| std::str::from_utf8(e).unwrap()).collect()
    }

    fn data(raw: &str) -> Option<String> {
        parse_event(raw.as_bytes()).data.map(Cow::into_owned)
    }

    /// A stream as an OpenAI-compatible upstream sends it: two choices (`n = 2`) whose deltas interleave,
    /// multi-byte characters, a tool call whose arguments arrive in pieces, an event whose JSON spans two `data:`
    /// lines, comments, `\n`, `\r\n` and lone-`\r` line endings, the usage-only chunk, and `[DONE]`.
    pub(crate) fn openai_stream() -> Vec<u8> {
        let chunk = |choices: &str| {
            format!(
                r#"{{"id":"chatcmpl-7","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[{choices}]}}"#
            )
        };
        let events = [
            ": OPENROUTER PROCESSING\n\n".to_owned(),
            format!(
                "data: {}\r\n\r\n",
                chunk(
                    r#"{"index":0,"delta":{"role":"assistant","content":""},"finish_reason":null},{"index":1,"delta":{"role":"assistant","content":""},"finish_reason":null}"#
                )
            ),
            format!("data: {}\n\n", chunk(r#"{"index":0,"delta":{"content":"héllo "}}"#)),
            format!("data: {}\r\n\r\n", chunk(r#"{"index":1,"delta":{"content":"wörld 🚀 "}}"#)),
            format!(
                "data: {}\n\n",
                chunk(r#"{"index":0,"delta":{"content":"日本語"}},{"index":1,"delta":{"refusal":"Ño."}}"#)
            ),
            // One JSON object over two `data:` lines, which the parser joins with `\n`.
            format!(
                "event: message\r\nid: 41\r\ndata:{}\r\ndata: {}\r\n\r\n",
                r#"{"id":"chatcmpl-7","object":"chat.completion.chunk","created":1,"model":"gpt-4o","#,
                r#""choices":[{"index":0,"delta":{"tool_calls":[{"index":0,"id":"call_1","type":"function","function":{"name":"get_weather","arguments":""}}]}}]}"#
            ),
            format!(
                "data: {}\n\n",
                chunk(r#"{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"{\"city\":"}}]}}"#)
            ),
            ": keep-alive\r\r".to_owned(),
            format!(
                "data: {}\n\n",
                chunk(r#"{"index":0,"delta":{"tool_calls":[{"index":0,"function":{"arguments":"\"Zürich\"}"}}]}}"#)
            ),
            format!(
                "data: {}\r\n\n",
                chunk(
                    r#"{"index":0,"delta":{},"finish_reason":"tool_calls"},{"index":1,"delta":{},"finish_reason":"stop"}"#
                )
            ),
            concat!(
                "data: ",
                r#"{"id":"chatcmpl-7","object":"chat.completion.chunk","created":1,"model":"gpt-4o","choices":[],"#,
                r#""usage":{"prompt_tokens":9,"completion_tokens":12,"total_tokens":21,"#,
                r#""prompt_tokens_details":{"cached_tokens":4}}}"#,
                "\n\n"
            )
            .to_owned(),
            "data: [DONE]\n\n".to_owned(),
        ];
        events.concat().into_bytes()
    }

    /// Cuts `bytes` at the given points (any order, repeats allowed).
    pub(crate) fn cut_at(bytes: &[u8], points: &[prop::sample::Index]) -> Vec<Vec<u8>> {
        let mut points: Vec<usize> = points.iter().map(|p| p.index(bytes.len() + 1)).collect();
        points.sort_unstable();
        let mut pieces = Vec::new();
        let mut start = 0;
        for point in points.into_iter().chain([bytes.len()]) {
            pieces.push(bytes[start..point].to_vec());
            start = point;
        }
        pieces
    }

    #[test]
    fn every_line_ending_ends_lines_and_an_empty_line_ends_the_event() {
        let (events, rest) =
            split(&[b"data: a\n\ndata: b\r\n\r\ndata: c\r\rdata: d\n\r\ndata: e\r\n\rdata: f"]);
        assert_eq!(
            strings(&events),
            [
                "data: a\n\n",
                "data: b\r\n\r\n",
                "data: c\r\r",
                "data: d\n\r\n",
                "data: e\r\n\r"
            ]
        );
        assert_eq!(rest, b"data: f");
        let parsed: Vec<_> = events.iter().map(|e| parse_event(e).data.unwrap()).collect();
        assert_eq!(parsed, ["a", "b", "c", "d", "e"]);
    }

    #[test]
    fn a_cr_at_the_end_of_a_push_waits_for_the_next_byte() {
        // `\r` then `\n` in the next push is one line ending, not an empty line.
        let (events, rest) = split(&[b"data: a\r", b"\ndata: b\r\n\r\n"]);
        assert_eq!(strings(&events), ["data: a\r\ndata: b\r\n\r\n"]);
        assert!(rest.is_empty());
        assert_eq!(data(strings(&events)[0]), Some("a\nb".to_owned()));

        // The blank line's `\r\n` split across pushes stays with its event.
        let (events, rest) = split(&[b"data: a\r\n\r", b"\ndata: b\n\n"]);
        assert_eq!(strings(&events), ["data: a\r\n\r\n", "data: b\n\n"]);
        assert!(rest.is_empty());

        // A lone `\r` blank line is released as soon as the next byte is not `\n`.
        let mut splitter = EventSplitter::new(LIMIT);
        assert!(splitter.push(b"data: a\r\r").unwrap().is_empty());
        assert_eq!(splitter.remainder(), b"data: a\r\r");
        assert_eq!(strings(&splitter.push(b"d").unwrap()), ["data: a\r\r"]);
        assert_eq!(splitter.remainder(), b"d");

        // Byte by byte, every style comes out the same as in one piece.
        let stream = b"data: a\r\rdata: b\r\n\r\ndata: c\r\n\rdata: d\n\r\n: x\r\r\n\n";
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(split(&bytes), split(&[stream]));
    }

    #[test]
    fn finish_releases_an_event_held_on_its_final_cr_only() {
        let mut splitter = EventSplitter::new(LIMIT);
        assert!(splitter.push(b"data: [DONE]\r\r").unwrap().is_empty());
        assert_eq!(splitter.finish().as_deref(), Some(&b"data: [DONE]\r\r"[..]));
        assert!(splitter.remainder().is_empty());
        assert_eq!(splitter.finish(), None);

        let mut splitter = EventSplitter::new(LIMIT);
        assert!(splitter.push(b"data: cut off\r").unwrap().is_empty());
        assert_eq!(splitter.finish(), None, "an unterminated event is not an event");
        assert_eq!(splitter.remainder(), b"data: cut off\r");
    }

    #[test]
    fn blank_lines_between_events_are_events_without_data() {
        let (events, _) = split(&[b"data: a\n\n\n\r\ndata: b\n\n"]);
        assert_eq!(strings(&events), ["data: a\n\n", "\n", "\r\n", "data: b\n\n"]);
        assert_eq!(parse_event(&events[1]), SseEvent::default());
    }

    #[test]
    fn the_remainder_is_the_unfinished_event() {
        let mut splitter = EventSplitter::new(LIMIT);
        assert!(splitter.remainder().is_empty());
        assert!(splitter.push(b"data: {\"a\":").unwrap().is_empty());
        assert!(splitter.push(b"1}\n").unwrap().is_empty());
        assert_eq!(splitter.remainder(), b"data: {\"a\":1}\n");
        let events = splitter.push(b"\ndata: nex").unwrap();
        assert_eq!(strings(&events), ["data: {\"a\":1}\n\n"]);
        assert_eq!(splitter.remainder(), b"data: nex");
        assert!(splitter.push(b"").unwrap().is_empty());
        assert_eq!(splitter.remainder(), b"data: nex");
    }

    #[test]
    fn fields_follow_the_specification() {
        let raw =
            b": a comment\r\nevent: delta\r\nid: 1\r\nretry: 10\r\ndata: one\r\ndata:two\r\ndata:  three\r\n\
            custom: ignored\r\ndata\r\nid: 2\r\nevent:final\r\n\r\n";
        assert_eq!(
            parse_event(raw),
            SseEvent {
                event: Some("final".into()),
                data: Some("one\ntwo\n three\n".into()),
                id: Some("2".into()),
            }
        );
        assert_eq!(data("data\n\n"), Some(String::new()));
        assert_eq!(data("data:\n\n"), Some(String::new()));
        assert_eq!(data("data: a: b\n\n"), Some("a: b".to_owned()));
        assert_eq!(data(": only a comment\n\n"), None);
        assert_eq!(data("DATA: wrong case\n\n"), None);
        assert_eq!(
            parse_event(b"id: a\0b\nid: c\0\n\n").id,
            None,
            "ids with NUL are ignored"
        );
        assert_eq!(parse_event(b"id\n\n").id.as_deref(), Some(""));
        assert_eq!(data("\u{feff}data: bom\n\n"), Some("bom".to_owned()));
        assert_eq!(
            data("data: a\n\ndata: b\n\n"),
            Some("a".to_owned()),
            "one event, up to its blank line"
        );
        assert_eq!(data("data: unterminated"), Some("unterminated".to_owned()));
        assert_eq!(parse_event(b""), SseEvent::default());
    }

    #[test]
    fn invalid_utf8_is_replaced_not_fatal() {
        assert_eq!(data("data: ok\n\n"), Some("ok".to_owned()));
        assert_eq!(
            parse_event(b"data: \xff\xfe ok\n\n").data.as_deref(),
            Some("\u{fffd}\u{fffd} ok")
        );
        assert_eq!(parse_event(b"event: \xc3\n\n").event.as_deref(), Some("\u{fffd}"));
    }

    #[test]
    fn an_oversized_event_fails_the_stream_however_it_arrives() {
        // 12 bytes: exactly at the limit is fine.
        let mut splitter = EventSplitter::new(12);
        assert_eq!(splitter.push(b"data: 1234\n\n").unwrap().len(), 1);

        // Unfinished and already over the limit.
        let mut splitter = EventSplitter::new(12);
        assert!(splitter.push(b"data: 12345").unwrap().is_empty());
        let err = splitter.push(b"67890").unwrap_err();
        assert!(matches!(err, SseError::EventTooLarge { limit: 12 }));
        assert_eq!(err.kind(), "sse_event_too_large");
        assert!(splitter.remainder().is_empty(), "the buffer is released");
        assert!(splitter.push(b"\n\n").is_err(), "the failure is final");

        // Complete within one push, but over the limit.
        let mut splitter = EventSplitter::new(12);
        assert!(splitter.push(b"data: 12345\n\n").is_err());

        // An endless line without any line ending never grows past the limit plus one read.
        let mut splitter = EventSplitter::new(1024);
        let failed = (0..1000)
            .map(|_| splitter.push(&[b'a'; 100]))
            .position(|r| r.is_err());
        assert_eq!(failed, Some(10));
    }

    proptest! {
        #[test]
        fn the_openai_stream_frames_the_same_under_every_split(
            points in proptest::collection::vec(any::<prop::sample::Index>(), 0..24),
        ) {
            let stream = openai_stream();
            let (whole, rest) = split(&[&stream]);
            prop_assert_eq!(whole.len(), 12);
            prop_assert!(rest.is_empty());

            let mut splitter = EventSplitter::new(LIMIT);
            let mut events = Vec::new();
            let mut pushed = Vec::new();
            for piece in cut_at(&stream, &points) {
                events.extend(splitter.push(&piece).unwrap());
                pushed.extend_from_slice(&piece);
                let mut joined = events.concat();
                joined.extend_from_slice(splitter.remainder());
                prop_assert_eq!(&joined, &pushed);
            }
            prop_assert_eq!(&events, &whole);
            prop_assert!(splitter.remainder().is_empty());
        }

        /// Any bytes from an alphabet dense in line endings, under any split, frame as a whole-input oracle does.
        #[test]
        fn any_bytes_frame_as_the_oracle_says_under_every_split(
            stream in proptest::collection::vec(prop::sample::select(b"\r\n\r\na:".to_vec()), 0..64),
            points in proptest::collection::vec(any::<prop::sample::Index>(), 0..16),
        ) {
            let (expected_events, expected_rest) = oracle(&stream);
            let mut splitter = EventSplitter::new(LIMIT);
            let mut events = Vec::new();
            for piece in cut_at(&stream, &points) {
                events.extend(splitter.push(&piece).unwrap());
            }
            events.extend(splitter.finish());
            let events: Vec<Vec<u8>> = events.iter().map(|e| e.to_vec()).collect();
            prop_assert_eq!(events, expected_events);
            prop_assert_eq!(splitter.remainder(), &expected_rest[..]);
        }
    }

    /// Event boundaries read off the whole input at once: lines end at `\r\n`, `\n` or `\r`; an event ends after an
    /// empty line.
    fn oracle(stream: &[u8]) -> (Vec<Vec<u8>>, Vec<u8>) {
        let mut events = Vec::new();
        let (mut event_start, mut line_start, mut i) = (0, 0, 0);
        while i < stream.len() {
            let ending = match (stream[i], stream.get(i + 1)) {
                (b'\r', Some(b'\n')) => 2,
                (b'\r' | b'\n', _) => 1,
                _ => 0,
            };
            if ending == 0 {
                i += 1;
                continue;
            }
            let empty = i == line_start;
            i += ending;
            line_start = i;
            if empty {
                events.push(stream[event_start..i].to_vec());
                event_start = i;
            }
        }
        (events, stream[event_start..].to_vec())
    }
}
