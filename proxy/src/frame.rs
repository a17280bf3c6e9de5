//! Raw PostgreSQL protocol framing.
//!
//! The proxy never decodes a message it does not need to look at: a [`Frame`]
//! is a tag byte plus the untouched body, and [`FrameScanner`] finds frame
//! boundaries in a read buffer without copying. Messages whose body we never
//! inspect (`DataRow`, `CopyData`) may be larger than the buffer; the scanner
//! then hands them on in pieces so that a 1 GB row is streamed, not buffered.

use bytes::{BufMut, Bytes, BytesMut};

/// One protocol message: its tag and its body (without the length word).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Frame {
    /// The message type byte, e.g. `b'Q'`.
    pub tag: u8,
    /// The message body, after the 4-byte length.
    pub body: Bytes,
}

impl Frame {
    /// Creates a frame from a tag and a body.
    pub fn new(tag: u8, body: impl Into<Bytes>) -> Self {
        Frame {
            tag,
            body: body.into(),
        }
    }

    /// Appends the wire encoding (tag, length, body) to `out`.
    pub fn encode(&self, out: &mut BytesMut) {
        out.reserve(5 + self.body.len());
        out.put_u8(self.tag);
        out.put_u32(self.body.len() as u32 + 4);
        out.put_slice(&self.body);
    }

    /// The wire encoding as a new buffer.
    pub fn to_bytes(&self) -> Bytes {
        let mut out = BytesMut::with_capacity(5 + self.body.len());
        self.encode(&mut out);
        out.freeze()
    }
}

/// Why a stream of frames cannot be read any further.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum FrameError {
    /// The length word is below the minimum of 4.
    #[error("invalid message length {length} for message type {tag:?}")]
    BadLength {
        /// The message type byte.
        tag: char,
        /// The length word as sent.
        length: u32,
    },
    /// The message is larger than the configured maximum.
    #[error("message of type {tag:?} is {length} bytes, over the limit of {limit}")]
    TooLarge {
        /// The message type byte.
        tag: char,
        /// The length word as sent.
        length: u32,
        /// The configured maximum.
        limit: usize,
    },
}

/// What the scanner found at the front of the buffer.
#[derive(Debug, PartialEq, Eq)]
pub enum Scan {
    /// A complete frame of `len` bytes (tag and length word included).
    Frame {
        /// The message type byte.
        tag: u8,
        /// Total size on the wire.
        len: usize,
    },
    /// The start of a streamable frame: forward `available` bytes now and
    /// the next `remaining` bytes of the stream raw.
    Partial {
        /// Bytes of the frame present in the buffer.
        available: usize,
        /// Bytes of the frame still to come.
        remaining: usize,
    },
    /// More bytes are needed.
    Incomplete,
}

/// Finds frame boundaries under a size limit.
#[derive(Debug, Clone, Copy)]
pub struct FrameScanner {
    /// Largest frame accepted whole.
    pub max_frame: usize,
    /// Frames of streamable types larger than this are forwarded in pieces.
    pub stream_threshold: usize,
    /// Message types that may be streamed in pieces and exceed `max_frame`
    /// (`DataRow` and `CopyData` from the server, `CopyData` from the client).
    pub bulk_tags: &'static [u8],
}

impl FrameScanner {
    /// Looks at the frame starting at `buf[0]`.
    pub fn scan(&self, buf: &[u8]) -> Result<Scan, FrameError> {
        if buf.len() < 5 {
            return Ok(Scan::Incomplete);
        }
        let tag = buf[0];
        let length = u32::from_be_bytes([buf[1], buf[2], buf[3], buf[4]]);
        if length < 4 {
            return Err(FrameError::BadLength {
                tag: tag as char,
                length,
            });
        }
        let total = length as usize + 1;
        let bulk = self.bulk_tags.contains(&tag);
        if !bulk && total > self.max_frame {
            return Err(FrameError::TooLarge {
                tag: tag as char,
                length,
                limit: self.max_frame,
            });
        }
        if buf.len() >= total {
            return Ok(Scan::Frame { tag, len: total });
        }
        if bulk && total > self.stream_threshold {
            return Ok(Scan::Partial {
                available: buf.len(),
                remaining: total - buf.len(),
            });
        }
        Ok(Scan::Incomplete)
    }
}

/// Splits complete frames off the front of `buf` (used where whole frames are
/// needed, e.g. during startup).
pub fn take_frame(buf: &mut BytesMut, max_frame: usize) -> Result<Option<Frame>, FrameError> {
    let scanner = FrameScanner {
        max_frame,
        stream_threshold: usize::MAX,
        bulk_tags: &[],
    };
    match scanner.scan(buf)? {
        Scan::Frame { tag, len } => {
            let mut raw = buf.split_to(len);
            let _ = raw.split_to(5);
            Ok(Some(Frame::new(tag, raw.freeze())))
        }
        _ => Ok(None),
    }
}

/// Reads NUL-terminated strings from a message body without panicking.
#[derive(Debug)]
pub struct BodyReader<'a> {
    rest: &'a [u8],
}

impl<'a> BodyReader<'a> {
    /// Starts reading `body`.
    pub fn new(body: &'a [u8]) -> Self {
        BodyReader { rest: body }
    }

    /// The next C string, or `None` if no terminator is left.
    pub fn cstr(&mut self) -> Option<&'a [u8]> {
        let end = self.rest.iter().position(|&b| b == 0)?;
        let s = &self.rest[..end];
        self.rest = &self.rest[end + 1..];
        Some(s)
    }

    /// The next big-endian i32.
    pub fn i32(&mut self) -> Option<i32> {
        let b = self.take(4)?;
        Some(i32::from_be_bytes([b[0], b[1], b[2], b[3]]))
    }

    /// The next big-endian i16.
    pub fn i16(&mut self) -> Option<i16> {
        let b = self.take(2)?;
        Some(i16::from_be_bytes([b[0], b[1]]))
    }

    /// The next `n` bytes.
    pub fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.rest.len() < n {
            return None;
        }
        let (head, tail) = self.rest.split_at(n);
        self.rest = tail;
        Some(head)
    }

    /// Everything not yet read.
    pub fn rest(&self) -> &'a [u8] {
        self.rest
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn scanner() -> FrameScanner {
        FrameScanner {
            max_frame: 100,
            stream_threshold: 16,
            bulk_tags: b"Dd",
        }
    }

    #[test]
    fn finds_a_whole_frame() {
        let f = Frame::new(b'Q', &b"select 1\0"[..]).to_bytes();
        assert_eq!(
            scanner().scan(&f).unwrap(),
            Scan::Frame {
                tag: b'Q',
                len: f.len()
            }
        );
        assert_eq!(scanner().scan(&f[..7]).unwrap(), Scan::Incomplete);
    }

    #[test]
    fn rejects_short_and_oversize_lengths() {
        assert!(matches!(
            scanner().scan(&[b'Q', 0, 0, 0, 3]),
            Err(FrameError::BadLength { .. })
        ));
        assert!(matches!(
            scanner().scan(&[b'Q', 0x7f, 0xff, 0xff, 0xff]),
            Err(FrameError::TooLarge { .. })
        ));
    }

    #[test]
    fn streams_large_data_rows() {
        let mut big = vec![b'D'];
        big.extend_from_slice(&1000u32.to_be_bytes());
        big.extend_from_slice(&[0; 20]);
        assert_eq!(
            scanner().scan(&big).unwrap(),
            Scan::Partial {
                available: 25,
                remaining: 1001 - 25
            }
        );
    }

    #[test]
    fn take_frame_splits() {
        let mut buf = BytesMut::new();
        Frame::new(b'S', Bytes::new()).encode(&mut buf);
        Frame::new(b'H', Bytes::new()).encode(&mut buf);
        assert_eq!(take_frame(&mut buf, 100).unwrap().unwrap().tag, b'S');
        assert_eq!(take_frame(&mut buf, 100).unwrap().unwrap().tag, b'H');
        assert!(take_frame(&mut buf, 100).unwrap().is_none());
    }

    #[test]
    fn body_reader_never_panics() {
        let mut r = BodyReader::new(b"ab\0\x00\x00");
        assert_eq!(r.cstr(), Some(&b"ab"[..]));
        assert_eq!(r.i32(), None);
        assert_eq!(r.i16(), Some(0));
        assert_eq!(r.cstr(), None);
    }
}
