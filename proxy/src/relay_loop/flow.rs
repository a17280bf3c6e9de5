//! One direction of a session on a relay thread: the async relay's
//! [`Pump`], driven by readiness instead of by futures. Driving is
//! synchronous and never blocks: it goes on until a read or a write would
//! block, the pump ends, a heavy frame is met, or its read budget (or its
//! filter's work budget) is spent.

use std::io::{self, Read};

use bytes::{Buf, Bytes};

use crate::frame::FrameError;
use crate::relay::{FrameFilter, Pump, PumpEnd, PumpError};

use super::sock::Sock;

/// Reads one drive may do before the thread serves its other sessions: a
/// bulk transfer that never blocks must not stall them.
const READ_BUDGET: usize = 16;

/// Why driving stopped.
#[derive(Debug)]
pub(super) enum Drive {
    /// Blocked on a read, a write or a heavy frame: an event comes.
    Wait,
    /// The read budget or the filter's work is spent: drive again after
    /// the others.
    Yield,
    /// This frame is to be handled off the thread (see
    /// [`FrameFilter::heavy`]); its result goes to [`Flow::heavy_done`].
    Heavy(Bytes),
    /// The pump ended.
    End(Result<PumpEnd, PumpError>),
}

/// What [`Flow::take`] did.
enum Took {
    /// Nothing forwardable yet: more must be read.
    Nothing,
    /// Bytes to write (or a stop).
    Some,
    /// Bytes before a heavy frame, and the frame.
    Heavy(Bytes),
}

/// Bytes taken and not yet written.
#[derive(Debug)]
enum Out {
    Nothing,
    /// The first `len` bytes of the pump's buffer, forwarded as read.
    InPlace(usize),
    /// Bytes split off the buffer: frames replaced, or before a heavy one.
    Owned(Bytes),
}

impl Out {
    fn in_place(len: usize) -> Self {
        match len {
            0 => Out::Nothing,
            len => Out::InPlace(len),
        }
    }
}

/// One direction: its pump, its filter, and what is being written.
pub(super) struct Flow<F> {
    pub(super) pump: Pump,
    pub(super) filter: F,
    /// Taken and not yet written.
    out: Out,
    /// End after `out` is written (a filter asked to stop).
    stop: bool,
    /// A heavy frame is being handled; nothing after it goes out first.
    heavy_in_flight: bool,
    /// A heavy frame's result, to write once `out` is written.
    after_heavy: Option<(Bytes, bool)>,
    /// The filter's work is spent: yield once `out` is written.
    spent: bool,
    /// The poll said the reading side was closed or failed: read until
    /// that shows, whatever the reads return before.
    pub(super) src_closed: bool,
}

impl<F: FrameFilter> Flow<F> {
    pub(super) fn new(pump: Pump, filter: F) -> Self {
        Flow {
            pump,
            filter,
            out: Out::Nothing,
            stop: false,
            heavy_in_flight: false,
            after_heavy: None,
            spent: false,
            src_closed: false,
        }
    }

    /// Whether bytes wait for the writing side to take them.
    pub(super) fn wants_to_write(&self) -> bool {
        !matches!(self.out, Out::Nothing)
    }

    /// A heavy frame's result: what to write for it, whether to stop after.
    pub(super) fn heavy_done(&mut self, result: (Bytes, bool)) {
        self.heavy_in_flight = false;
        self.after_heavy = Some(result);
    }

    /// Moves bytes from `src` to `dst` as far as they go now.
    pub(super) fn drive(&mut self, src: &Sock, dst: &Sock, scratch: &mut [u8]) -> Drive {
        let mut reads = 0;
        // A read that did not fill `scratch` emptied the socket: the poll
        // is edge-triggered, so the next bytes to arrive bring an event,
        // and reading on until it would block only costs a syscall. Not so
        // for an end of stream that came with the last bytes: hence
        // `src_closed`.
        let mut drained = false;
        loop {
            if let Some(blocked) = self.write_out(dst) {
                return blocked;
            }
            if self.stop {
                return Drive::End(Ok(PumpEnd::Stopped));
            }
            if self.heavy_in_flight {
                return Drive::Wait;
            }
            if let Some((bytes, stop)) = self.after_heavy.take() {
                self.set_out(bytes, stop);
                continue;
            }
            if self.spent {
                self.spent = false;
                return Drive::Yield;
            }
            if self.pump.has_input() {
                match self.take() {
                    Ok(Took::Nothing) => {}
                    Ok(Took::Some) => continue,
                    Ok(Took::Heavy(frame)) => return Drive::Heavy(frame),
                    Err(e) => return Drive::End(Err(e.into())),
                }
            }
            if drained {
                return Drive::Wait;
            }
            if reads == READ_BUDGET {
                return Drive::Yield;
            }
            match self.pump.read_from(src, scratch) {
                Ok(0) => return Drive::End(Ok(PumpEnd::Eof)),
                Ok(n) => {
                    reads += 1;
                    drained = n < scratch.len() && !self.src_closed;
                }
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drive::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Drive::End(Err(PumpError::Read(e))),
            }
        }
    }

    /// Takes what the pump can forward now into `out`: as read if no
    /// frame was replaced, else the replacements spliced in.
    fn take(&mut self) -> Result<Took, FrameError> {
        let scanned = self.pump.scan_batch(&mut self.filter)?;
        self.spent = scanned.spent;
        if scanned.heavy.is_none() && !self.pump.has_edits() {
            self.pump.set_writing(scanned.len > 0);
            self.out = Out::in_place(scanned.len);
            self.stop = scanned.stop;
            let progressed = scanned.len > 0 || scanned.stop;
            return Ok(if progressed {
                Took::Some
            } else {
                Took::Nothing
            });
        }
        if scanned.heavy.is_none() {
            if let Some(out) = self.pump.replaced_whole(scanned.len) {
                self.set_out(out, scanned.stop);
                return Ok(Took::Some);
            }
        }
        let batch = self.pump.split_batch(scanned);
        self.set_out(batch.out, batch.stop);
        Ok(match batch.heavy {
            Some(frame) => {
                self.heavy_in_flight = true;
                Took::Heavy(frame)
            }
            None => Took::Some,
        })
    }

    fn set_out(&mut self, out: Bytes, stop: bool) {
        self.pump.set_writing(!out.is_empty());
        self.out = if out.is_empty() {
            Out::Nothing
        } else {
            Out::Owned(out)
        };
        self.stop = stop;
    }

    /// Writes `out`; `Some` if that blocked or failed.
    fn write_out(&mut self, dst: &Sock) -> Option<Drive> {
        loop {
            let written = match &self.out {
                Out::Nothing => break,
                Out::InPlace(len) => dst.write(self.pump.front(*len)),
                Out::Owned(bytes) => dst.write(bytes),
            };
            match written {
                Ok(0) => {
                    let e = io::Error::from(io::ErrorKind::WriteZero);
                    return Some(Drive::End(Err(PumpError::Write(e))));
                }
                Ok(n) => self.wrote(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(Drive::Wait),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Drive::End(Err(PumpError::Write(e)))),
            }
        }
        self.pump.set_writing(false);
        None
    }

    /// `n` bytes of `out` went out.
    fn wrote(&mut self, n: usize) {
        match &mut self.out {
            Out::Nothing => {}
            Out::InPlace(len) => {
                self.pump.consume(n);
                *len -= n;
                if *len == 0 {
                    self.out = Out::Nothing;
                }
            }
            Out::Owned(bytes) => {
                bytes.advance(n);
                if bytes.is_empty() {
                    self.out = Out::Nothing;
                }
            }
        }
    }
}

impl Read for &Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Sock::read(self, buf)
    }
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::{Shutdown, TcpListener, TcpStream};

    use bytes::BytesMut;

    use super::*;
    use crate::frame::{Frame, FrameScanner};
    use crate::metrics::Traffic;
    use crate::relay::Action;

    struct Pass;
    impl FrameFilter for Pass {
        fn on_frame(&mut self, _tag: u8, _frame: &[u8]) -> Action {
            Action::Forward
        }
    }

    /// A loopback pair: the test's blocking end, the flow's non-blocking one.
    fn pair() -> (TcpStream, Sock) {
        let listener = TcpListener::bind("127.0.0.1:0").unwrap();
        let ours = TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (theirs, _) = listener.accept().unwrap();
        theirs.set_nonblocking(true).unwrap();
        (ours, Sock::Tcp(mio::net::TcpStream::from_std(theirs)))
    }

    fn flow() -> Flow<Pass> {
        let scanner = FrameScanner {
            max_frame: 1 << 20,
            stream_threshold: 1 << 20,
            bulk_tags: b"",
        };
        Flow::new(
            Pump::new(BytesMut::new(), scanner, Traffic::default()),
            Pass,
        )
    }

    /// Bytes and the end of stream already queued: one short read takes
    /// the bytes, and no event is due for the end. Only a flow told its
    /// source closed reads on to see it.
    #[test]
    fn a_short_read_waits_unless_the_source_was_seen_closed() {
        for src_closed in [false, true] {
            let (mut app, src) = pair();
            let (_db, dst) = pair();
            app.write_all(&Frame::new(b'Q', &b"select 1\0"[..]).to_bytes())
                .unwrap();
            // On loopback both are in the flow's receive queue on return.
            app.shutdown(Shutdown::Write).unwrap();
            let mut flow = flow();
            flow.src_closed = src_closed;
            let step = flow.drive(&src, &dst, &mut [0; 1024]);
            match src_closed {
                false => assert!(matches!(step, Drive::Wait), "{step:?}"),
                true => assert!(matches!(step, Drive::End(Ok(PumpEnd::Eof))), "{step:?}"),
            }
        }
    }

    /// A client that pipelines statements each new to the rewrite cache
    /// (every one its own shape): the flow lets its thread go after a
    /// slice of parsing, with the rest still to handle, and every
    /// statement goes on, rewritten, in the drives after.
    #[test]
    fn a_flow_yields_after_a_slice_of_parsing() {
        use std::io::Read;
        use std::sync::Arc;

        use switchyard_rules::{fixtures, ReadRoute, Routing, WriteRoute};

        use crate::filters::ClientFilter;
        use crate::routing::router::PARSE_SLICE;
        use crate::routing::{RulesHub, SessionRouter};

        let hub = Arc::new(RulesHub::default());
        let dual = Routing {
            reads: ReadRoute::Legacy,
            writes: WriteRoute::Both,
        };
        hub.install(fixtures::users(dual)).unwrap();
        let router = Arc::new(SessionRouter::new(hub, "app", "app", None));
        let (mut app, src) = pair();
        let (mut db, dst) = pair();
        let statements = 3 * PARSE_SLICE / 1024;
        let mut sent = BytesMut::new();
        for i in 0..statements {
            let long = "x".repeat(1000);
            let sql = format!("update users as u{i} set email = '{long}' where id = 1\0");
            Frame::new(b'Q', sql.into_bytes()).encode(&mut sent);
        }
        app.write_all(&sent).unwrap();
        let scanner = FrameScanner {
            max_frame: 1 << 20,
            stream_threshold: 1 << 20,
            bulk_tags: b"d",
        };
        let mut flow = Flow::new(
            Pump::new(BytesMut::new(), scanner, Traffic::default()),
            ClientFilter::new(router),
        );
        let mut scratch = vec![0; sent.len() + 1];
        let first = flow.drive(&src, &dst, &mut scratch);
        assert!(matches!(first, Drive::Yield), "{first:?}");
        assert!(flow.pump.has_input(), "all parsed in one drive");
        let mut drives = 1;
        while let Drive::Yield = flow.drive(&src, &dst, &mut scratch) {
            drives += 1;
        }
        assert!(drives >= 3, "{drives} drives");
        // Every statement arrived, rewritten to write both columns.
        let mut got = Vec::new();
        let mut frames = 0;
        while frames < statements {
            let mut head = [0u8; 5];
            db.read_exact(&mut head).unwrap();
            let len = u32::from_be_bytes([head[1], head[2], head[3], head[4]]) as usize;
            let mut body = vec![0; len - 4];
            db.read_exact(&mut body).unwrap();
            assert_eq!(head[0], b'Q');
            got.push(String::from_utf8(body).unwrap());
            frames += 1;
        }
        assert!(
            got.iter().all(|q| q.contains("email_address")),
            "{:?}",
            &got[0]
        );
        // The same statements again come from the cache: no parsing, no
        // yield.
        app.write_all(&sent).unwrap();
        let again = flow.drive(&src, &dst, &mut scratch);
        assert!(matches!(again, Drive::Wait), "{again:?}");
        assert!(!flow.pump.has_input());
    }
}
