//! Errors the proxy reports to clients as PostgreSQL `ErrorResponse`s.

use bytes::{Bytes, BytesMut};
use pgwire::messages::response::ErrorResponse;
use pgwire::messages::Message;

use crate::frame::FrameError;
use crate::startup::StartupError;

/// An error that ends a session, with the SQLSTATE the client receives.
#[derive(Debug, thiserror::Error)]
pub(crate) enum SessionError {
    /// The client broke the protocol (bad frame, bad startup packet).
    #[error("{0}")]
    Protocol(String),
    /// The upstream server could not be reached or set up.
    #[error("could not connect to upstream server: {0}")]
    UpstreamConnect(String),
    /// The upstream connection broke mid-session.
    #[error("upstream server closed the connection unexpectedly")]
    UpstreamLost,
    /// The proxy is shutting down.
    #[error("terminating connection because Switchyard is shutting down")]
    Shutdown,
    /// A configuration makes the request impossible.
    #[error("{0}")]
    Unsupported(String),
    /// I/O on the client socket failed; nothing can be sent.
    #[error("client connection: {0}")]
    ClientIo(#[from] std::io::Error),
}

impl SessionError {
    /// The SQLSTATE for this error.
    pub(crate) fn sqlstate(&self) -> &'static str {
        match self {
            SessionError::Protocol(_) => "08P01",
            SessionError::UpstreamConnect(_) => "08001",
            SessionError::UpstreamLost => "08006",
            SessionError::Shutdown => "57P01",
            SessionError::Unsupported(_) => "0A000",
            SessionError::ClientIo(_) => "08006",
        }
    }

    /// The `ErrorResponse` frame telling the client about this error.
    pub(crate) fn to_frame(&self) -> Bytes {
        fatal(self.sqlstate(), &self.to_string())
    }
}

impl From<FrameError> for SessionError {
    fn from(e: FrameError) -> Self {
        SessionError::Protocol(e.to_string())
    }
}

impl From<StartupError> for SessionError {
    fn from(e: StartupError) -> Self {
        SessionError::Protocol(e.to_string())
    }
}

/// Encodes a FATAL `ErrorResponse`.
pub(crate) fn fatal(sqlstate: &str, message: &str) -> Bytes {
    error_response("FATAL", sqlstate, message)
}

/// Encodes an `ErrorResponse` with the given severity.
pub(crate) fn error_response(severity: &str, sqlstate: &str, message: &str) -> Bytes {
    let msg = ErrorResponse::new(vec![
        (b'S', severity.to_owned()),
        (b'V', severity.to_owned()),
        (b'C', sqlstate.to_owned()),
        (b'M', message.to_owned()),
    ]);
    let mut out = BytesMut::new();
    // Encoding an in-memory ErrorResponse can only fail on absurd sizes.
    if msg.encode(&mut out).is_err() {
        out.clear();
    }
    out.freeze()
}

/// Reads the severity and SQLSTATE of an `ErrorResponse` body.
pub(crate) fn error_fields(body: &[u8]) -> (Option<&[u8]>, Option<&[u8]>) {
    let mut severity = None;
    let mut code = None;
    let mut reader = crate::frame::BodyReader::new(body);
    while let Some(field) = reader.take(1) {
        if field[0] == 0 {
            break;
        }
        let Some(value) = reader.cstr() else { break };
        match field[0] {
            b'V' => severity = Some(value),
            b'S' if severity.is_none() => severity = Some(value),
            b'C' => code = Some(value),
            _ => {}
        }
    }
    (severity, code)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn fatal_round_trips_through_field_reader() {
        let frame = SessionError::UpstreamLost.to_frame();
        assert_eq!(frame[0], b'E');
        let (sev, code) = error_fields(&frame[5..]);
        assert_eq!(sev, Some(&b"FATAL"[..]));
        assert_eq!(code, Some(&b"08006"[..]));
    }
}
