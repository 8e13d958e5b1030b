//! The receiving side of a Server-Sent Events stream: an HTTP/1.1 chunked-body decoder and
//! an event parser (WHATWG `text/event-stream`), both incremental over socket reads and
//! bounded: a line longer than [`MAX_LINE`] or an event's data over [`MAX_EVENT`] is a
//! protocol error, never an unbounded buffer.

/// The longest line accepted (an `id:` naming many groups fits easily).
pub const MAX_LINE: usize = 64 * 1024;
/// The most data one event may carry.
pub const MAX_EVENT: usize = 1024 * 1024;

/// The stream broke its format or its bounds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Malformed;

/// What an event is, from its `event:` field.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    /// No `event:` field (or `message`): a delivery.
    Message,
    /// `event: binary`: a delivery with base64 data.
    Binary,
    /// `event: close`: the server is ending the stream; data is `{"code":…,"reason":…}`.
    Close,
    /// Anything else (`resync`, …): not a delivery.
    Other,
}

/// An incremental `text/event-stream` parser.
#[derive(Debug, Default)]
pub struct EventParser {
    line: Vec<u8>,
    data: Vec<u8>,
    has_data: bool,
    kind: Option<Kind>,
}

impl EventParser {
    /// Feeds bytes; calls `on_event(kind, data)` for every complete event (multi-line data
    /// joined by `\n`, as a browser does). `Err` when a line or an event is too long.
    pub fn feed(
        &mut self,
        mut bytes: &[u8],
        mut on_event: impl FnMut(Kind, &[u8]),
    ) -> Result<(), Malformed> {
        while !bytes.is_empty() {
            match bytes.iter().position(|&b| b == b'\n') {
                Some(at) => {
                    if self.line.is_empty() {
                        self.line_done(&bytes[..at], &mut on_event)?;
                    } else {
                        self.push_line(&bytes[..at])?;
                        let line = std::mem::take(&mut self.line);
                        let result = self.line_done(&line, &mut on_event);
                        self.line = line;
                        self.line.clear();
                        result?;
                    }
                    bytes = &bytes[at + 1..];
                }
                None => {
                    self.push_line(bytes)?;
                    bytes = &[];
                }
            }
        }
        Ok(())
    }

    fn push_line(&mut self, bytes: &[u8]) -> Result<(), Malformed> {
        if self.line.len() + bytes.len() > MAX_LINE {
            return Err(Malformed);
        }
        self.line.extend_from_slice(bytes);
        Ok(())
    }

    fn line_done(
        &mut self,
        line: &[u8],
        on_event: &mut impl FnMut(Kind, &[u8]),
    ) -> Result<(), Malformed> {
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if line.is_empty() {
            // Dispatch: only events with data are events.
            if self.has_data {
                on_event(self.kind.unwrap_or(Kind::Message), &self.data);
            }
            self.data.clear();
            self.has_data = false;
            self.kind = None;
            return Ok(());
        }
        if line[0] == b':' {
            return Ok(()); // a comment (heartbeat)
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(at) => {
                let value = &line[at + 1..];
                (&line[..at], value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &b""[..]),
        };
        match field {
            b"data" => {
                if self.data.len() + value.len() + 1 > MAX_EVENT {
                    return Err(Malformed);
                }
                if self.has_data {
                    self.data.push(b'\n');
                }
                self.data.extend_from_slice(value);
                self.has_data = true;
            }
            b"event" => {
                self.kind = Some(match value {
                    b"message" => Kind::Message,
                    b"binary" => Kind::Binary,
                    b"close" => Kind::Close,
                    _ => Kind::Other,
                });
            }
            // id: and retry: change nothing a receiver counts; unknown fields are ignored.
            _ => {}
        }
        Ok(())
    }
}

/// An HTTP/1.1 `Transfer-Encoding: chunked` decoder, incremental over reads.
#[derive(Debug, Default)]
pub struct Dechunker {
    state: ChunkState,
    size: usize,
    size_digits: usize,
}

#[derive(Debug, Default, Clone, Copy, PartialEq, Eq)]
enum ChunkState {
    /// Reading the hex size.
    #[default]
    Size,
    /// Skipping chunk extensions up to the end of the size line.
    SizeLine,
    /// In the chunk's data, `size` bytes left.
    Data,
    /// The CRLF after a chunk's data.
    DataEnd,
    /// The terminal zero-size chunk was seen.
    Done,
}

impl Dechunker {
    /// Decodes `input`, calling `out` with each run of body bytes. `Ok(true)` once the body
    /// has ended; `Err` on a malformed size line.
    pub fn feed(
        &mut self,
        input: &[u8],
        mut out: impl FnMut(&[u8]) -> Result<(), Malformed>,
    ) -> Result<bool, Malformed> {
        let mut i = 0;
        while i < input.len() {
            match self.state {
                ChunkState::Size => {
                    let b = input[i];
                    i += 1;
                    match (b as char).to_digit(16) {
                        Some(d) => {
                            self.size_digits += 1;
                            if self.size_digits > 15 {
                                return Err(Malformed);
                            }
                            self.size = self.size * 16 + d as usize;
                        }
                        None if self.size_digits == 0 => return Err(Malformed),
                        None if b == b'\n' => self.size_line_done(),
                        None => self.state = ChunkState::SizeLine,
                    }
                }
                ChunkState::SizeLine => {
                    let b = input[i];
                    i += 1;
                    if b == b'\n' {
                        self.size_line_done();
                    }
                }
                ChunkState::Data => {
                    let n = self.size.min(input.len() - i);
                    out(&input[i..i + n])?;
                    i += n;
                    self.size -= n;
                    if self.size == 0 {
                        self.state = ChunkState::DataEnd;
                    }
                }
                ChunkState::DataEnd => {
                    let b = input[i];
                    i += 1;
                    if b == b'\n' {
                        self.state = ChunkState::Size;
                    } else if b != b'\r' {
                        return Err(Malformed);
                    }
                }
                ChunkState::Done => return Ok(true),
            }
        }
        Ok(self.state == ChunkState::Done)
    }

    fn size_line_done(&mut self) {
        self.state = if self.size == 0 {
            ChunkState::Done
        } else {
            ChunkState::Data
        };
        self.size_digits = 0;
    }
}

/// The close code in an `event: close` data (`{"code":1012,…}`), 1005 when absent.
pub fn close_code(data: &[u8]) -> u16 {
    let Some(at) = data.windows(7).position(|w| w == b"\"code\":") else {
        return 1005;
    };
    let digits: String = data[at + 7..]
        .iter()
        .skip_while(|b| **b == b' ')
        .take_while(|b| b.is_ascii_digit())
        .map(|&b| b as char)
        .collect();
    digits.parse().unwrap_or(1005)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn events(parts: &[&[u8]]) -> Vec<(Kind, String)> {
        let mut parser = EventParser::default();
        let mut seen = Vec::new();
        for part in parts {
            parser
                .feed(part, |kind, data| {
                    seen.push((kind, String::from_utf8_lossy(data).into_owned()))
                })
                .unwrap();
        }
        seen
    }

    #[test]
    fn parses_events_split_across_reads() {
        let stream: &[u8] = b"retry: 3000\nid: user.1:0:Xy\n\n:\n\nid: user.1:1:Xy\ndata: HB12:0:aa\n\n\
id: user.1:2:Xy\ndata: line one\ndata: line two\n\n: heartbeat\nevent: resync\nid: x\ndata: {\"groups\":[\"user.1\"]}\n\n\
data:HB34:1\r\n\r\nevent: close\ndata: {\"code\":1012,\"reason\":\"server restart\"}\nretry: 8234\n\n";
        let expected = vec![
            (Kind::Message, "HB12:0:aa".to_string()),
            (Kind::Message, "line one\nline two".to_string()),
            (Kind::Other, "{\"groups\":[\"user.1\"]}".to_string()),
            (Kind::Message, "HB34:1".to_string()),
            (
                Kind::Close,
                "{\"code\":1012,\"reason\":\"server restart\"}".to_string(),
            ),
        ];
        assert_eq!(events(&[stream]), expected);
        // Every split point, and byte by byte.
        for at in 0..stream.len() {
            assert_eq!(
                events(&[&stream[..at], &stream[at..]]),
                expected,
                "split at {at}"
            );
        }
        let bytes: Vec<&[u8]> = stream.chunks(1).collect();
        assert_eq!(events(&bytes), expected);
        assert_eq!(close_code(expected[4].1.as_bytes()), 1012);
        assert_eq!(close_code(b"{}"), 1005);
    }

    #[test]
    fn bounds_lines_and_events() {
        let mut parser = EventParser::default();
        let long = vec![b'a'; MAX_LINE + 1];
        assert_eq!(parser.feed(&long, |_, _| {}), Err(Malformed));
        let mut parser = EventParser::default();
        let line = format!("data: {}\n", "b".repeat(MAX_LINE - 10));
        let mut result = Ok(());
        for _ in 0..(MAX_EVENT / MAX_LINE + 2) {
            result = result.and(parser.feed(line.as_bytes(), |_, _| {}));
        }
        assert_eq!(result, Err(Malformed));
    }

    #[test]
    fn dechunks_across_reads() {
        let body: &[u8] = b"5\r\nhello\r\nA;ext=1\r\n, world!!!\r\n0\r\n\r\n";
        for at in 0..body.len() {
            let mut d = Dechunker::default();
            let mut out = Vec::new();
            let mut done = false;
            for part in [&body[..at], &body[at..]] {
                done = d
                    .feed(part, |b| {
                        out.extend_from_slice(b);
                        Ok(())
                    })
                    .unwrap();
            }
            assert!(done, "split at {at}");
            assert_eq!(out, b"hello, world!!!", "split at {at}");
        }
        assert_eq!(
            Dechunker::default().feed(b"zz\r\n", |_| Ok(())),
            Err(Malformed)
        );
    }
}
