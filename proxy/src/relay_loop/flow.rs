//! One direction of a session on a relay thread: the async relay's
//! [`Pump`], driven by readiness instead of by futures. Driving is
//! synchronous and never blocks: it goes on until a read or a write would
//! block, the pump ends, a heavy frame is met, or its read budget is spent.

use std::io::{self, Read};

use bytes::{Buf, Bytes};

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
    /// The read budget is spent: drive again after the others.
    Yield,
    /// This frame is to be handled off the thread (see
    /// [`FrameFilter::heavy`]); its result goes to [`Flow::heavy_done`].
    Heavy(Bytes),
    /// The pump ended.
    End(Result<PumpEnd, PumpError>),
}

/// One direction: its pump, its filter, and what is being written.
pub(super) struct Flow<F> {
    pub(super) pump: Pump,
    pub(super) filter: F,
    /// Taken and not yet written.
    out: Bytes,
    /// End after `out` is written (a filter asked to stop).
    stop: bool,
    /// A heavy frame is being handled; nothing after it goes out first.
    heavy_in_flight: bool,
    /// A heavy frame's result, to write once `out` is written.
    after_heavy: Option<(Bytes, bool)>,
}

impl<F: FrameFilter> Flow<F> {
    pub(super) fn new(pump: Pump, filter: F) -> Self {
        Flow {
            pump,
            filter,
            out: Bytes::new(),
            stop: false,
            heavy_in_flight: false,
            after_heavy: None,
        }
    }

    /// Whether bytes wait for the writing side to take them.
    pub(super) fn wants_to_write(&self) -> bool {
        !self.out.is_empty()
    }

    /// A heavy frame's result: what to write for it, whether to stop after.
    pub(super) fn heavy_done(&mut self, result: (Bytes, bool)) {
        self.heavy_in_flight = false;
        self.after_heavy = Some(result);
    }

    /// Moves bytes from `src` to `dst` as far as they go now.
    pub(super) fn drive(&mut self, src: &Sock, dst: &Sock, scratch: &mut [u8]) -> Drive {
        let mut reads = 0;
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
            if self.pump.has_input() {
                let batch = match self.pump.take_batch(&mut self.filter) {
                    Ok(batch) => batch,
                    Err(e) => return Drive::End(Err(e.into())),
                };
                let progressed = !batch.out.is_empty() || batch.stop;
                self.set_out(batch.out, batch.stop);
                if let Some(frame) = batch.heavy {
                    self.heavy_in_flight = true;
                    return Drive::Heavy(frame);
                }
                if progressed {
                    continue;
                }
            }
            if reads == READ_BUDGET {
                return Drive::Yield;
            }
            match self.pump.read_from(src, scratch) {
                Ok(0) => return Drive::End(Ok(PumpEnd::Eof)),
                Ok(_) => reads += 1,
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Drive::Wait,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Drive::End(Err(PumpError::Read(e))),
            }
        }
    }

    fn set_out(&mut self, out: Bytes, stop: bool) {
        self.pump.set_writing(!out.is_empty());
        self.out = out;
        self.stop = stop;
    }

    /// Writes `out`; `Some` if that blocked or failed.
    fn write_out(&mut self, dst: &Sock) -> Option<Drive> {
        while !self.out.is_empty() {
            match dst.write(&self.out) {
                Ok(0) => {
                    let e = io::Error::from(io::ErrorKind::WriteZero);
                    return Some(Drive::End(Err(PumpError::Write(e))));
                }
                Ok(n) => self.out.advance(n),
                Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Some(Drive::Wait),
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Some(Drive::End(Err(PumpError::Write(e)))),
            }
        }
        self.pump.set_writing(false);
        None
    }
}

impl Read for &Sock {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        Sock::read(self, buf)
    }
}
