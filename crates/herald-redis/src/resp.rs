//! A minimal RESP2 reader and writer for the subscriber connection. Public so that the
//! Django bridge's pub/sub backend reads its subscriber connection the same bounded way.
//!
//! The subscriber connection is driven by hand rather than through the `redis` crate's
//! pub/sub type because that type reads the socket eagerly into an unbounded queue: a slow
//! `Incoming` reader would make herald buffer without limit. Reading frames only when
//! there is room downstream leaves the backlog in Redis, which bounds it
//! (`client-output-buffer-limit pubsub`) and disconnects a hopeless subscriber; the
//! reconnect then re-subscribes and clients recover the gap from history.

use bytes::{Bytes, BytesMut};

/// One RESP2 value, as pub/sub replies use them.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Frame {
    /// `+...`
    Simple(Bytes),
    /// `-...`
    Error(Bytes),
    /// `:...`
    Integer(i64),
    /// `None` is the null bulk string.
    Bulk(Option<Bytes>),
    /// `None` is the null array.
    Array(Option<Vec<Frame>>),
}

/// The peer sent something that is not RESP2 (or too big to accept).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RespError {
    #[error("unknown RESP type byte {0:#04x}")]
    Type(u8),
    #[error("bad length or integer in RESP frame")]
    Number,
    #[error("RESP frame too large or too deeply nested")]
    TooLarge,
    #[error("RESP bulk string not terminated by CRLF")]
    Terminator,
}

/// Largest bulk string accepted: Redis' own default `proto-max-bulk-len`.
const MAX_BULK: usize = 512 * 1024 * 1024;
/// Pub/sub frames have 3 or 4 elements; anything much larger is not a pub/sub reply.
const MAX_ARRAY: usize = 64;
/// Pub/sub frames are flat arrays; one extra level leaves room for odd replies.
const MAX_DEPTH: usize = 2;

/// A frame's shape located in the buffer, before it is cut out.
enum Located {
    Simple(usize, usize),
    Error(usize, usize),
    Integer(i64),
    Bulk(Option<(usize, usize)>),
    Array(Option<Vec<Located>>),
}

/// Takes one complete frame off the front of `buf`; `Ok(None)` when more bytes are needed.
/// Bulk strings in the frame share the buffer's memory instead of being copied.
pub fn parse(buf: &mut BytesMut) -> Result<Option<Frame>, RespError> {
    let mut pos = 0;
    let Some(located) = locate(buf, &mut pos, 0)? else {
        return Ok(None);
    };
    let bytes = buf.split_to(pos).freeze();
    Ok(Some(materialize(located, &bytes)))
}

/// Encodes a command as a RESP array of bulk strings.
pub fn command<'a>(args: impl IntoIterator<Item = &'a [u8]>) -> Vec<u8> {
    let args: Vec<&[u8]> = args.into_iter().collect();
    let mut out = format!("*{}\r\n", args.len()).into_bytes();
    for arg in args {
        out.extend_from_slice(format!("${}\r\n", arg.len()).as_bytes());
        out.extend_from_slice(arg);
        out.extend_from_slice(b"\r\n");
    }
    out
}

fn locate(buf: &[u8], pos: &mut usize, depth: usize) -> Result<Option<Located>, RespError> {
    let Some((start, end)) = line(buf, *pos) else {
        return Ok(None);
    };
    let after_line = end + 2;
    let type_byte = buf[start];
    let body = (start + 1, end);
    let located = match type_byte {
        b'+' => Located::Simple(body.0, body.1),
        b'-' => Located::Error(body.0, body.1),
        b':' => Located::Integer(number(&buf[body.0..body.1])?),
        b'$' => {
            let len = number(&buf[body.0..body.1])?;
            if len < 0 {
                *pos = after_line;
                return Ok(Some(Located::Bulk(None)));
            }
            let len = usize::try_from(len).map_err(|_| RespError::Number)?;
            if len > MAX_BULK {
                return Err(RespError::TooLarge);
            }
            let data_end = after_line + len;
            if buf.len() < data_end + 2 {
                return Ok(None);
            }
            if &buf[data_end..data_end + 2] != b"\r\n" {
                return Err(RespError::Terminator);
            }
            *pos = data_end + 2;
            return Ok(Some(Located::Bulk(Some((after_line, data_end)))));
        }
        b'*' => {
            let len = number(&buf[body.0..body.1])?;
            if len < 0 {
                *pos = after_line;
                return Ok(Some(Located::Array(None)));
            }
            let len = usize::try_from(len).map_err(|_| RespError::Number)?;
            if len > MAX_ARRAY || depth >= MAX_DEPTH {
                return Err(RespError::TooLarge);
            }
            let mut items = Vec::with_capacity(len);
            let mut inner = after_line;
            for _ in 0..len {
                match locate(buf, &mut inner, depth + 1)? {
                    Some(item) => items.push(item),
                    None => return Ok(None),
                }
            }
            *pos = inner;
            return Ok(Some(Located::Array(Some(items))));
        }
        other => return Err(RespError::Type(other)),
    };
    *pos = after_line;
    Ok(Some(located))
}

/// The line starting at `from`, without its CRLF, as `(start, end)`; `None` if incomplete.
fn line(buf: &[u8], from: usize) -> Option<(usize, usize)> {
    let rest = buf.get(from..)?;
    let at = rest.windows(2).position(|w| w == b"\r\n")?;
    // A line needs at least its type byte.
    (at > 0).then_some((from, from + at))
}

fn number(digits: &[u8]) -> Result<i64, RespError> {
    std::str::from_utf8(digits)
        .ok()
        .and_then(|s| s.parse().ok())
        .ok_or(RespError::Number)
}

fn materialize(located: Located, bytes: &Bytes) -> Frame {
    match located {
        Located::Simple(s, e) => Frame::Simple(bytes.slice(s..e)),
        Located::Error(s, e) => Frame::Error(bytes.slice(s..e)),
        Located::Integer(n) => Frame::Integer(n),
        Located::Bulk(range) => Frame::Bulk(range.map(|(s, e)| bytes.slice(s..e))),
        Located::Array(items) => Frame::Array(
            items.map(|items| items.into_iter().map(|i| materialize(i, bytes)).collect()),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bulk(s: &[u8]) -> Frame {
        Frame::Bulk(Some(Bytes::copy_from_slice(s)))
    }

    #[test]
    fn parses_pubsub_frames_split_anywhere() {
        let wire: &[u8] =
            b"*3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$4\r\na\r\nb\r\n+PONG\r\n:5\r\n-ERR x\r\n$-1\r\n";
        let want = vec![
            Frame::Array(Some(vec![bulk(b"message"), bulk(b"ch"), bulk(b"a\r\nb")])),
            Frame::Simple(Bytes::from_static(b"PONG")),
            Frame::Integer(5),
            Frame::Error(Bytes::from_static(b"ERR x")),
            Frame::Bulk(None),
        ];
        // Feed the bytes in every possible split to exercise the incomplete paths.
        for split in 0..wire.len() {
            let mut buf = BytesMut::new();
            let mut got = Vec::new();
            for chunk in [&wire[..split], &wire[split..]] {
                buf.extend_from_slice(chunk);
                while let Some(frame) = parse(&mut buf).unwrap() {
                    got.push(frame);
                }
            }
            assert_eq!(got, want, "split at {split}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn rejects_garbage() {
        for input in [
            &b"?x\r\n"[..],
            b"$x\r\n",
            b"$1\r\nab\r\n",
            b"*1000\r\n",
            b"*1\r\n*1\r\n*1\r\n:1\r\n",
        ] {
            let mut buf = BytesMut::from(input);
            assert!(parse(&mut buf).is_err(), "{input:?}");
        }
    }

    #[test]
    fn encodes_commands() {
        assert_eq!(
            command([&b"SUBSCRIBE"[..], b"a b"]),
            b"*2\r\n$9\r\nSUBSCRIBE\r\n$3\r\na b\r\n".to_vec()
        );
    }
}
