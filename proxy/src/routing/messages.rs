//! The extended-protocol messages the router reads and writes.

use bytes::{BufMut, Bytes, BytesMut};

use crate::frame::BodyReader;

/// A `Parse` message.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Parse {
    /// Statement name ("" for the unnamed statement).
    pub name: String,
    /// The query text.
    pub query: String,
    /// Parameter type OIDs and their count, as sent.
    pub types: Bytes,
}

impl Parse {
    /// Reads a `Parse` body.
    pub fn decode(body: &[u8]) -> Option<Self> {
        let mut r = BodyReader::new(body);
        let name = String::from_utf8(r.cstr()?.to_vec()).ok()?;
        let query = String::from_utf8(r.cstr()?.to_vec()).ok()?;
        let types = Bytes::copy_from_slice(r.rest());
        Some(Parse { name, query, types })
    }

    /// The whole frame with `query` as its text.
    pub fn frame_with(&self, query: &str) -> Bytes {
        let mut out = BytesMut::with_capacity(self.name.len() + query.len() + self.types.len() + 8);
        out.put_u8(b'P');
        out.put_u32((4 + self.name.len() + 1 + query.len() + 1 + self.types.len()) as u32);
        out.put_slice(self.name.as_bytes());
        out.put_u8(0);
        out.put_slice(query.as_bytes());
        out.put_u8(0);
        out.put_slice(&self.types);
        out.freeze()
    }
}

/// The statement a `Bind` body refers to.
pub fn bind_statement(body: &[u8]) -> Option<&[u8]> {
    let mut r = BodyReader::new(body);
    r.cstr()?;
    r.cstr()
}

/// `(kind, name)` of a `Describe` or `Close` body; kind is `S` or `P`.
pub fn target(body: &[u8]) -> Option<(u8, &[u8])> {
    let mut r = BodyReader::new(body);
    let kind = r.take(1)?[0];
    Some((kind, r.cstr()?))
}

/// A `Close` of statement `name`.
pub fn close_statement(name: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(name.len() + 7);
    out.put_u8(b'C');
    out.put_u32((4 + 1 + name.len() + 1) as u32);
    out.put_u8(b'S');
    out.put_slice(name.as_bytes());
    out.put_u8(0);
    out.freeze()
}

/// A simple `Query` frame.
pub fn query(sql: &str) -> Bytes {
    let mut out = BytesMut::with_capacity(sql.len() + 6);
    out.put_u8(b'Q');
    out.put_u32((4 + sql.len() + 1) as u32);
    out.put_slice(sql.as_bytes());
    out.put_u8(0);
    out.freeze()
}

/// A `Query` of `sql`, framed in `sql`'s own buffer when it has room
/// after the text for the header and terminator (a spliced rewrite does:
/// `switchyard_rules::normalize::ROOM`).
pub fn query_owned(sql: String) -> Bytes {
    let mut out = sql.into_bytes();
    let len = out.len();
    out.extend_from_slice(&[0; 6]);
    out.copy_within(0..len, 5);
    out[0] = b'Q';
    out[1..5].copy_from_slice(&((4 + len + 1) as u32).to_be_bytes());
    // `Bytes` takes a full buffer over without allocating.
    if out.len() != out.capacity() {
        out.shrink_to_fit();
    }
    Bytes::from(out)
}

/// The text of a `Query` body.
pub fn query_text(body: &[u8]) -> Option<&str> {
    std::str::from_utf8(query_bytes(body)?).ok()
}

/// The SQL text of a `Query` body, unchecked as UTF-8.
pub fn query_bytes(body: &[u8]) -> Option<&[u8]> {
    BodyReader::new(body).cstr()
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_query_framed_in_place_is_the_same_frame() {
        for text in ["select 1", ""] {
            let mut roomy = String::with_capacity(text.len() + 6);
            roomy.push_str(text);
            assert_eq!(super::query_owned(roomy), super::query(text));
            assert_eq!(super::query_owned(text.to_owned()), super::query(text));
        }
    }

    use super::*;

    #[test]
    fn parse_round_trips() {
        let mut body = b"s1\0select $1\0".to_vec();
        body.extend_from_slice(&[0, 1, 0, 0, 0, 23]);
        let p = Parse::decode(&body).unwrap();
        assert_eq!((p.name.as_str(), p.query.as_str()), ("s1", "select $1"));
        let frame = p.frame_with("select $1::int");
        assert_eq!(Parse::decode(&frame[5..]).unwrap().query, "select $1::int");
        assert_eq!(&frame[frame.len() - 6..], &[0, 1, 0, 0, 0, 23]);
        assert_eq!(
            u32::from_be_bytes(frame[1..5].try_into().unwrap()) as usize,
            frame.len() - 1
        );
    }

    #[test]
    fn reads_bind_describe_close_targets() {
        assert_eq!(bind_statement(b"portal\0stmt\0\0\0"), Some(&b"stmt"[..]));
        assert_eq!(target(b"Sstmt\0"), Some((b'S', &b"stmt"[..])));
        assert_eq!(target(b""), None);
        assert_eq!(&close_statement("a")[..], b"C\0\0\0\x07Sa\0");
        assert_eq!(query_text(b"select 1\0"), Some("select 1"));
    }
}
