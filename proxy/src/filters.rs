//! What the relay looks at in each direction: the end of a session, the
//! transaction status, and (through the session router) rule-driven
//! rewriting and the replies owed for it.

use std::sync::Arc;

use crate::relay::{Action, Detached, FrameFilter};
use crate::routing::router::PARSE_SLICE;
use crate::routing::SessionRouter;
use crate::session::is_fatal;

/// Frames from the application.
pub(crate) struct ClientFilter {
    /// Routing of this session.
    pub router: Arc<SessionRouter>,
    /// Text parsed since the session last let its thread go.
    parsed: usize,
}

impl ClientFilter {
    pub(crate) fn new(router: Arc<SessionRouter>) -> Self {
        ClientFilter { router, parsed: 0 }
    }
}

impl FrameFilter for ClientFilter {
    fn on_frame(&mut self, tag: u8, frame: &[u8]) -> Action {
        match tag {
            b'X' => Action::ForwardAndStop,
            // CopyData never changes routing state.
            b'd' => Action::Forward,
            _ => self.router.on_client(tag, frame),
        }
    }

    fn heavy(&self, tag: u8, frame: &[u8]) -> bool {
        self.router.heavy(tag, frame)
    }

    fn detached(&self) -> Option<Detached> {
        let router = self.router.clone();
        Some(Box::new(move |tag, frame: &[u8]| {
            router.on_client(tag, frame)
        }))
    }

    fn spent(&mut self) -> bool {
        self.parsed += self.router.take_parsed();
        if self.parsed < PARSE_SLICE {
            return false;
        }
        self.parsed = 0;
        true
    }
}

/// Frames from the server.
pub(crate) struct ServerFilter {
    /// The server sent a FATAL error, so it will close the connection itself.
    pub fatal_seen: bool,
    /// Routing of this session.
    pub router: Arc<SessionRouter>,
}

impl FrameFilter for ServerFilter {
    fn on_frame(&mut self, tag: u8, frame: &[u8]) -> Action {
        match tag {
            // Rows, copy data, notices and notifications: nothing to track.
            b'D' | b'd' | b'N' | b'A' | b'S' | b't' | b'V' | b'H' | b'W' | b'c' => Action::Forward,
            b'E' => {
                if is_fatal(&frame[5..]) {
                    self.fatal_seen = true;
                }
                self.router.on_server(tag, frame)
            }
            _ => self.router.on_server(tag, frame),
        }
    }
}
