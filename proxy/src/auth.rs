//! What the proxy changes while relaying authentication.
//!
//! Authentication is relayed message by message; the proxy never knows a
//! password. Two things need care because we sit between two TLS sessions:
//! a client must not pick `SCRAM-SHA-256-PLUS` (its channel binding would name
//! our certificate, not the server's), and a TLS client that supports channel
//! binding says so with the gs2 flag `y`, which a TLS server must reject.

use bytes::{BufMut, BytesMut};

use crate::frame::{BodyReader, Frame};

/// The authentication request codes that expect an answer from the client.
pub(crate) fn expects_client_reply(code: i32) -> bool {
    !matches!(code, 0 | 12)
}

/// The request code of an `Authentication` ('R') message.
pub(crate) fn request_code(frame: &Frame) -> Option<i32> {
    BodyReader::new(&frame.body).i32()
}

/// Removes `SCRAM-SHA-256-PLUS` from an `AuthenticationSASL` body.
///
/// Returns `None` when the body is not a SASL request or nothing changed.
pub(crate) fn strip_channel_binding(frame: &Frame) -> Option<Frame> {
    let mut reader = BodyReader::new(&frame.body);
    if reader.i32()? != 10 {
        return None;
    }
    let mut mechanisms = Vec::new();
    while let Some(m) = reader.cstr() {
        if m.is_empty() {
            break;
        }
        mechanisms.push(m);
    }
    let kept: Vec<&[u8]> = mechanisms
        .iter()
        .copied()
        .filter(|m| *m != b"SCRAM-SHA-256-PLUS")
        .collect();
    if kept.len() == mechanisms.len() {
        return None;
    }
    let mut body = BytesMut::new();
    body.put_i32(10);
    for m in kept {
        body.put_slice(m);
        body.put_u8(0);
    }
    body.put_u8(0);
    Some(Frame::new(b'R', body.freeze()))
}

/// Whether a `SASLInitialResponse` carries the gs2 flag `y` ("client supports
/// channel binding but thinks the server does not").
pub(crate) fn claims_channel_binding_support(frame: &Frame) -> bool {
    let mut reader = BodyReader::new(&frame.body);
    let Some(mechanism) = reader.cstr() else {
        return false;
    };
    if !mechanism.starts_with(b"SCRAM") {
        return false;
    }
    match reader.i32() {
        Some(n) if n > 0 => reader.rest().first() == Some(&b'y'),
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// An `AuthenticationSASL` request body listing `mechanisms`.
    fn sasl_request(mechanisms: &[&str]) -> Frame {
        let mut body = BytesMut::new();
        body.put_i32(10);
        for m in mechanisms {
            body.put_slice(m.as_bytes());
            body.put_u8(0);
        }
        body.put_u8(0);
        Frame::new(b'R', body.freeze())
    }

    /// A `SASLInitialResponse` with `data`.
    fn sasl_initial_response(mechanism: &str, data: &[u8]) -> Frame {
        let mut body = BytesMut::new();
        body.put_slice(mechanism.as_bytes());
        body.put_u8(0);
        body.put_i32(data.len() as i32);
        body.put_slice(data);
        Frame::new(b'p', bytes::Bytes::from(body))
    }

    #[test]
    fn strips_plus_and_keeps_the_rest() {
        let req = sasl_request(&["SCRAM-SHA-256-PLUS", "SCRAM-SHA-256"]);
        let stripped = strip_channel_binding(&req).unwrap();
        assert_eq!(stripped, sasl_request(&["SCRAM-SHA-256"]));
        assert!(strip_channel_binding(&stripped).is_none());
    }

    #[test]
    fn leaves_other_requests_alone() {
        let md5 = Frame::new(b'R', &[0, 0, 0, 5, 1, 2, 3, 4][..]);
        assert!(strip_channel_binding(&md5).is_none());
        assert!(strip_channel_binding(&Frame::new(b'R', &[0u8][..])).is_none());
        assert_eq!(request_code(&md5), Some(5));
        assert!(expects_client_reply(5));
        assert!(!expects_client_reply(0));
    }

    #[test]
    fn detects_gs2_y_flag() {
        assert!(claims_channel_binding_support(&sasl_initial_response(
            "SCRAM-SHA-256",
            b"y,,n=,r=abc"
        )));
        assert!(!claims_channel_binding_support(&sasl_initial_response(
            "SCRAM-SHA-256",
            b"n,,n=,r=abc"
        )));
        assert!(!claims_channel_binding_support(&Frame::new(
            b'p',
            &b"SCRAM"[..]
        )));
    }
}
