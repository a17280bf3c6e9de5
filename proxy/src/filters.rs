//! What the relay looks at in each direction.
//!
//! Today: the end of a session and the transaction status. Rule-driven
//! rewriting hooks in here without touching the relay's I/O.

use crate::relay::{Action, FrameFilter};
use crate::session::is_fatal;

/// Frames from the application.
#[derive(Debug, Default)]
pub struct ClientFilter;

impl FrameFilter for ClientFilter {
    fn on_frame(&mut self, tag: u8, _frame: &[u8]) -> Action {
        match tag {
            b'X' => Action::ForwardAndStop,
            _ => Action::Forward,
        }
    }
}

/// Frames from the server.
#[derive(Debug)]
pub struct ServerFilter {
    /// The server sent a FATAL error, so it will close the connection itself.
    pub fatal_seen: bool,
    /// Transaction status of the last `ReadyForQuery` (`I`, `T` or `E`).
    pub txn_status: u8,
}

impl Default for ServerFilter {
    fn default() -> Self {
        ServerFilter {
            fatal_seen: false,
            txn_status: b'I',
        }
    }
}

impl FrameFilter for ServerFilter {
    fn on_frame(&mut self, tag: u8, frame: &[u8]) -> Action {
        match tag {
            b'Z' if frame.len() == 6 => self.txn_status = frame[5],
            b'E' if is_fatal(&frame[5..]) => self.fatal_seen = true,
            _ => {}
        }
        Action::Forward
    }
}
