//! The untagged packets a client may open a connection with.
//!
//! Pure parsing: the session decides what to do with each packet.

use std::collections::BTreeMap;

use bytes::Bytes;

use crate::frame::BodyReader;

/// Largest startup packet accepted (PostgreSQL uses the same limit).
pub const MAX_STARTUP_PACKET: usize = 10_000;

const SSL_REQUEST: u32 = 80877103;
const GSSENC_REQUEST: u32 = 80877104;
const CANCEL_REQUEST: u32 = 80877102;

/// A packet the client sends before the regular message flow.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartupPacket {
    /// `SSLRequest`: asks to switch to TLS.
    SslRequest,
    /// `GSSENCRequest`: asks for GSSAPI encryption (we always refuse).
    GssEncRequest,
    /// `CancelRequest`; `raw` is the whole packet, `key` the process id and secret.
    Cancel {
        /// The packet as sent, forwarded to the server unchanged.
        raw: Bytes,
        /// Process id and secret key, as they appear in `BackendKeyData`.
        key: Bytes,
    },
    /// `StartupMessage`; `raw` is forwarded to the server unchanged.
    Startup(StartupMessage),
}

/// A `StartupMessage` and the parameters we care about.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct StartupMessage {
    /// The packet as sent.
    pub raw: Bytes,
    /// Protocol major version (always 3).
    pub major: u16,
    /// Protocol minor version (0 or 2 today; the server negotiates).
    pub minor: u16,
    /// Startup parameters (`user`, `database`, `options`, ...).
    pub params: BTreeMap<String, String>,
}

impl StartupMessage {
    /// The user the session logs in as.
    pub fn user(&self) -> &str {
        self.params.get("user").map(String::as_str).unwrap_or("")
    }

    /// The database, which defaults to the user name as in PostgreSQL.
    pub fn database(&self) -> &str {
        self.params
            .get("database")
            .map(String::as_str)
            .unwrap_or_else(|| self.user())
    }
}

/// Why a startup packet was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum StartupError {
    /// Length word out of range.
    #[error("invalid startup packet length {0}")]
    BadLength(u32),
    /// Unknown protocol code.
    #[error("unsupported frontend protocol {major}.{minor}: server supports 3.0 to 3.2")]
    UnsupportedProtocol {
        /// Requested major version.
        major: u16,
        /// Requested minor version.
        minor: u16,
    },
    /// The parameter list is not NUL-terminated pairs.
    #[error("invalid startup packet layout: {0}")]
    Malformed(&'static str),
}

/// Returns the packet length if `buf` starts with a complete packet.
pub fn packet_len(buf: &[u8]) -> Result<Option<usize>, StartupError> {
    if buf.len() < 4 {
        return Ok(None);
    }
    let len = u32::from_be_bytes([buf[0], buf[1], buf[2], buf[3]]);
    if !(8..=MAX_STARTUP_PACKET as u32).contains(&len) {
        return Err(StartupError::BadLength(len));
    }
    Ok((buf.len() >= len as usize).then_some(len as usize))
}

/// Parses one complete packet (length word included).
pub fn parse(raw: Bytes) -> Result<StartupPacket, StartupError> {
    let Some(code) = raw.get(4..8) else {
        return Err(StartupError::Malformed("packet shorter than its header"));
    };
    let code = u32::from_be_bytes([code[0], code[1], code[2], code[3]]);
    match code {
        SSL_REQUEST => Ok(StartupPacket::SslRequest),
        GSSENC_REQUEST => Ok(StartupPacket::GssEncRequest),
        CANCEL_REQUEST => {
            if raw.len() < 16 {
                return Err(StartupError::Malformed("cancel request too short"));
            }
            let key = raw.slice(8..);
            Ok(StartupPacket::Cancel { raw, key })
        }
        _ => {
            let major = (code >> 16) as u16;
            let minor = (code & 0xffff) as u16;
            if major != 3 {
                return Err(StartupError::UnsupportedProtocol { major, minor });
            }
            let params = parse_params(&raw[8..])?;
            Ok(StartupPacket::Startup(StartupMessage {
                raw,
                major,
                minor,
                params,
            }))
        }
    }
}

fn parse_params(body: &[u8]) -> Result<BTreeMap<String, String>, StartupError> {
    let mut reader = BodyReader::new(body);
    let mut params = BTreeMap::new();
    loop {
        let key = reader
            .cstr()
            .ok_or(StartupError::Malformed("missing terminator"))?;
        if key.is_empty() {
            break;
        }
        let value = reader
            .cstr()
            .ok_or(StartupError::Malformed("parameter without value"))?;
        params.insert(
            String::from_utf8_lossy(key).into_owned(),
            String::from_utf8_lossy(value).into_owned(),
        );
    }
    if params.get("user").is_none_or(|u| u.is_empty()) {
        return Err(StartupError::Malformed("no PostgreSQL user name specified"));
    }
    Ok(params)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn packet(code: u32, body: &[u8]) -> Bytes {
        let mut v = ((body.len() + 8) as u32).to_be_bytes().to_vec();
        v.extend_from_slice(&code.to_be_bytes());
        v.extend_from_slice(body);
        Bytes::from(v)
    }

    #[test]
    fn parses_startup_with_params() {
        let raw = packet(196608, b"user\0alice\0database\0shop\0\0");
        let StartupPacket::Startup(m) = parse(raw).unwrap() else {
            panic!("not a startup")
        };
        assert_eq!((m.major, m.minor), (3, 0));
        assert_eq!(m.user(), "alice");
        assert_eq!(m.database(), "shop");
    }

    #[test]
    fn accepts_protocol_3_2_and_defaults_database() {
        let StartupPacket::Startup(m) = parse(packet(196610, b"user\0bob\0\0")).unwrap() else {
            panic!()
        };
        assert_eq!(m.minor, 2);
        assert_eq!(m.database(), "bob");
    }

    #[test]
    fn recognises_negotiation_packets() {
        assert_eq!(
            parse(packet(SSL_REQUEST, b"")).unwrap(),
            StartupPacket::SslRequest
        );
        assert_eq!(
            parse(packet(GSSENC_REQUEST, b"")).unwrap(),
            StartupPacket::GssEncRequest
        );
        let cancel = parse(packet(CANCEL_REQUEST, &[0, 0, 0, 7, 1, 2, 3, 4])).unwrap();
        assert!(matches!(cancel, StartupPacket::Cancel { key, .. } if key.len() == 8));
    }

    /// A packet shorter than its own header (found by fuzz/startup).
    #[test]
    fn a_short_packet_is_malformed_not_a_panic() {
        for short in [&b""[..], b"\0\0\0\x08", b"\0\0\0"] {
            assert!(parse(Bytes::copy_from_slice(short)).is_err());
        }
        for kept in std::fs::read_dir(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/../fuzz/regressions/startup"
        ))
        .into_iter()
        .flatten()
        .flatten()
        {
            let data = std::fs::read(kept.path()).unwrap();
            let _ = parse(Bytes::from(data));
        }
    }

    #[test]
    fn rejects_garbage() {
        assert_eq!(
            packet_len(&[0xff, 0xff, 0xff, 0xff]),
            Err(StartupError::BadLength(u32::MAX))
        );
        assert!(matches!(
            parse(packet(2 << 16, b"")),
            Err(StartupError::UnsupportedProtocol { major: 2, .. })
        ));
        assert!(parse(packet(196608, b"user\0alice")).is_err());
        assert!(parse(packet(196608, b"database\0x\0\0")).is_err());
        assert!(parse(packet(CANCEL_REQUEST, b"\0\0")).is_err());
    }
}
