//! The steady-state relay: frames are pumped from one socket to the other in
//! read-sized batches, inspected only where a filter asks to, and written out
//! as the same bytes unless a filter replaced a frame.
//!
//! A batch is whatever one read returned; writing it at once keeps pipelines
//! pipelined and gives one write per read, which is what PgBouncer does too.

use std::io::{self, Read};
use std::ops::Range;

use bytes::{Buf, Bytes, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use crate::frame::{FrameError, FrameScanner, Scan};
use crate::metrics::Traffic;

/// What a filter wants done with one complete frame.
#[derive(Debug)]
pub enum Action {
    /// Forward the frame as it is.
    Forward,
    /// Send these bytes instead (empty: swallow the frame).
    Replace(Bytes),
    /// Forward the frame, then end the pump (e.g. after `Terminate`).
    ForwardAndStop,
}

/// Looks at frames as they pass.
pub trait FrameFilter {
    /// Called for each complete frame; `frame` includes tag and length.
    fn on_frame(&mut self, tag: u8, frame: &[u8]) -> Action;

    /// Whether handling this frame may take long (a long statement to
    /// rewrite). It is then handled by [`FrameFilter::detached`] on a
    /// blocking thread, and the session's thread goes on with its other
    /// sessions meanwhile.
    fn heavy(&self, _tag: u8, _frame: &[u8]) -> bool {
        false
    }

    /// This filter's handling, for a heavy frame on another thread; `None`
    /// handles it in place.
    fn detached(&self) -> Option<Detached> {
        None
    }

    /// Whether the frames handled since the last ask did so much work
    /// (statements parsed) that the thread should serve its other sessions
    /// before this one's next frame: a client that pipelines statements
    /// each new to the rewrite cache must not hold them all that time.
    fn spent(&mut self) -> bool {
        false
    }
}

/// A filter's handling of one frame, runnable on any thread.
pub type Detached = Box<dyn FnOnce(u8, &[u8]) -> Action + Send>;

/// What [`Pump::scan_batch`] found at the buffer's front: `len` bytes to
/// write (replacements aside), whether to stop after them, the length of a
/// heavy frame right after them, and whether the filter's work is spent
/// (see [`FrameFilter::spent`]).
#[derive(Debug, Clone, Copy)]
pub(crate) struct Scanned {
    pub(crate) len: usize,
    pub(crate) stop: bool,
    pub(crate) heavy: Option<usize>,
    pub(crate) spent: bool,
}

/// What [`Pump::take_batch`] took: bytes to write, whether to stop after
/// them, and a heavy frame to handle next.
pub(crate) struct Batch {
    pub(crate) out: Bytes,
    pub(crate) stop: bool,
    pub(crate) heavy: Option<Bytes>,
    pub(crate) spent: bool,
}

/// How a pump ended without error.
#[derive(Debug, PartialEq, Eq)]
pub enum PumpEnd {
    /// The reading side closed.
    Eof,
    /// A filter asked to stop.
    Stopped,
}

/// How a session's relay ended: the direction that ended first and how,
/// or the proxy closing it.
#[derive(Debug)]
pub(crate) enum Ended {
    /// The client-to-server pump ended.
    Client(Result<PumpEnd, PumpError>),
    /// The server-to-client pump ended.
    Server(Result<PumpEnd, PumpError>),
    /// The proxy is closing its sessions.
    Shutdown,
}

/// How a pump failed.
#[derive(Debug, thiserror::Error)]
pub enum PumpError {
    /// Reading failed.
    #[error("read: {0}")]
    Read(io::Error),
    /// Writing failed.
    #[error("write: {0}")]
    Write(io::Error),
    /// The reading side sent a frame we refuse.
    #[error(transparent)]
    Frame(#[from] FrameError),
}

/// One direction's buffer and framing state.
pub struct Pump {
    buf: BytesMut,
    raw_remaining: usize,
    scanner: FrameScanner,
    traffic: Traffic,
    writing: bool,
    read_total: u64,
    /// Frames replaced in the batch being taken (kept for its allocation).
    edits: Vec<(Range<usize>, Bytes)>,
}

const READ_CHUNK: usize = 64 * 1024;

impl Pump {
    /// A pump that starts with `leftover` bytes already read.
    pub fn new(leftover: BytesMut, scanner: FrameScanner, traffic: Traffic) -> Self {
        Pump {
            buf: leftover,
            raw_remaining: 0,
            scanner,
            traffic,
            writing: false,
            read_total: 0,
            edits: Vec::new(),
        }
    }

    /// Whether the written stream ends on a frame boundary, so that the proxy
    /// may add a message of its own.
    pub fn at_boundary(&self) -> bool {
        self.raw_remaining == 0 && self.buf.is_empty() && !self.writing
    }

    /// Bytes this pump has read so far.
    pub fn bytes_read(&self) -> u64 {
        self.read_total
    }

    /// Whether bytes read wait to be taken.
    pub(crate) fn has_input(&self) -> bool {
        !self.buf.is_empty()
    }

    /// Marks whether bytes taken are still being written (the stream is
    /// then not at a frame boundary).
    pub(crate) fn set_writing(&mut self, writing: bool) {
        self.writing = writing;
    }

    /// One read from a non-blocking `src`, through `scratch` (a safe read
    /// cannot go into the buffer's uninitialised room). Inlined: the relay
    /// loop's drive stopped inlining it when it grew (~90 instructions per
    /// transaction in `switchyard-bench literals`).
    #[inline(always)]
    pub(crate) fn read_from(
        &mut self,
        mut src: impl Read,
        scratch: &mut [u8],
    ) -> io::Result<usize> {
        let n = src.read(scratch)?;
        self.buf.extend_from_slice(&scratch[..n]);
        self.note_read(n);
        Ok(n)
    }

    fn note_read(&mut self, n: usize) {
        self.traffic.bytes.inc_by(n as u64);
        self.read_total += n as u64;
    }

    /// Moves frames from `rd` to `wr` until EOF, a filter stop, or an error.
    pub async fn run<R, W, F>(
        &mut self,
        rd: &mut R,
        wr: &mut W,
        filter: &mut F,
    ) -> Result<PumpEnd, PumpError>
    where
        R: AsyncRead + Unpin,
        W: AsyncWrite + Unpin,
        F: FrameFilter,
    {
        loop {
            if !self.buf.is_empty() {
                let Batch {
                    mut out,
                    mut stop,
                    heavy,
                    spent,
                } = self.take_batch(filter)?;
                let more = heavy.is_some();
                if let Some(frame) = heavy {
                    // What came before goes out first, so that the server
                    // is not kept waiting for it.
                    self.write(wr, &out).await?;
                    (out, stop) = handle_heavy(filter, frame).await;
                }
                self.write(wr, &out).await?;
                if stop {
                    return Ok(PumpEnd::Stopped);
                }
                if spent {
                    tokio::task::yield_now().await;
                }
                if more || spent {
                    // Frames after the heavy one (or the last one handled)
                    // may be waiting already.
                    continue;
                }
            }
            if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
                self.buf.reserve(READ_CHUNK);
            }
            let n = rd.read_buf(&mut self.buf).await.map_err(PumpError::Read)?;
            if n == 0 {
                return Ok(PumpEnd::Eof);
            }
            self.note_read(n);
        }
    }

    async fn write<W: AsyncWrite + Unpin>(
        &mut self,
        wr: &mut W,
        out: &[u8],
    ) -> Result<(), PumpError> {
        if out.is_empty() {
            return Ok(());
        }
        self.writing = true;
        wr.write_all(out).await.map_err(PumpError::Write)?;
        wr.flush().await.map_err(PumpError::Write)?;
        self.writing = false;
        Ok(())
    }

    /// Splits off everything forwardable now, up to a heavy frame (split
    /// off too); pure apart from the buffer.
    pub(crate) fn take_batch<F: FrameFilter>(
        &mut self,
        filter: &mut F,
    ) -> Result<Batch, FrameError> {
        let scanned = self.scan_batch(filter)?;
        Ok(self.split_batch(scanned))
    }

    /// Finds what is forwardable now, up to a heavy frame: the frames'
    /// filters run and their replacements are kept, the buffer is not
    /// touched. [`Pump::split_batch`] takes it; or, if nothing was
    /// replaced, the bytes may be written from the buffer's front and
    /// [`Pump::consume`]d.
    pub(crate) fn scan_batch<F: FrameFilter>(
        &mut self,
        filter: &mut F,
    ) -> Result<Scanned, FrameError> {
        let mut pos = 0;
        let mut frames = 0u64;
        let mut stop = false;
        let mut heavy = None;
        let mut spent = false;
        if self.raw_remaining > 0 {
            pos = self.raw_remaining.min(self.buf.len());
            self.raw_remaining -= pos;
        }
        while self.raw_remaining == 0 && !stop {
            match self.scanner.scan(&self.buf[pos..])? {
                Scan::Frame { tag, len } => {
                    frames += 1;
                    if filter.heavy(tag, &self.buf[pos..pos + len]) {
                        heavy = Some(len);
                        break;
                    }
                    match filter.on_frame(tag, &self.buf[pos..pos + len]) {
                        Action::Forward => {}
                        Action::Replace(bytes) => self.edits.push((pos..pos + len, bytes)),
                        Action::ForwardAndStop => stop = true,
                    }
                    pos += len;
                    if filter.spent() {
                        spent = true;
                        break;
                    }
                }
                Scan::Partial {
                    available,
                    remaining,
                } => {
                    frames += 1;
                    pos += available;
                    self.raw_remaining = remaining;
                }
                Scan::Incomplete => break,
            }
        }
        if frames > 0 {
            self.traffic.frames.inc_by(frames);
        }
        Ok(Scanned {
            len: pos,
            stop,
            heavy,
            spent,
        })
    }

    /// Splits off what [`Pump::scan_batch`] found, replacements applied.
    pub(crate) fn split_batch(&mut self, scanned: Scanned) -> Batch {
        let chunk = self.buf.split_to(scanned.len).freeze();
        let out = splice(chunk, &mut self.edits);
        let heavy = scanned.heavy.map(|len| self.buf.split_to(len).freeze());
        Batch {
            out,
            stop: scanned.stop,
            heavy,
            spent: scanned.spent,
        }
    }

    /// If the batch scanned last (`len` bytes) is one frame replaced (a
    /// rewritten Query, the usual case): its replacement, the frame
    /// consumed without being split off.
    pub(crate) fn replaced_whole(&mut self, len: usize) -> Option<Bytes> {
        match self.edits.as_slice() {
            [(range, _)] if *range == (0..len) => {
                self.buf.advance(len);
                self.edits.pop().map(|(_, bytes)| bytes)
            }
            _ => None,
        }
    }

    /// Whether the batch scanned last had frames replaced.
    pub(crate) fn has_edits(&self) -> bool {
        !self.edits.is_empty()
    }

    /// The first `len` bytes read and not yet consumed.
    pub(crate) fn front(&self, len: usize) -> &[u8] {
        &self.buf[..len]
    }

    /// Drops the first `len` bytes (written from [`Pump::front`]).
    pub(crate) fn consume(&mut self, len: usize) {
        self.buf.advance(len);
    }
}

/// What to write for a heavy frame given its filter's action, and whether
/// to stop after it.
pub(crate) fn heavy_outcome(frame: Bytes, action: Action) -> (Bytes, bool) {
    match action {
        Action::Forward => (frame, false),
        Action::Replace(bytes) => (bytes, false),
        Action::ForwardAndStop => (frame, true),
    }
}

/// Handles a heavy frame on a blocking thread (in place if the filter has
/// no detached form): what to write for it, and whether to stop after.
async fn handle_heavy<F: FrameFilter>(filter: &mut F, frame: Bytes) -> (Bytes, bool) {
    let tag = frame[0];
    let action = match filter.detached() {
        Some(handle) => {
            let job = frame.clone();
            match tokio::task::spawn_blocking(move || handle(tag, &job)).await {
                Ok(action) => action,
                Err(e) => match e.try_into_panic() {
                    Ok(panic) => std::panic::resume_unwind(panic),
                    // Cancelled, the runtime shutting down: nothing of
                    // the frame goes on, unrewritten or not.
                    Err(_) => return (Bytes::new(), true),
                },
            }
        }
        None => filter.on_frame(tag, &frame),
    };
    heavy_outcome(frame, action)
}

/// `chunk` with `edits` (ranges in order) applied; `edits` is left empty
/// for reuse. A frame replaced alone (a rewritten Query, the usual case)
/// is sent as its replacement, uncopied.
fn splice(chunk: Bytes, edits: &mut Vec<(Range<usize>, Bytes)>) -> Bytes {
    match edits.as_slice() {
        [] => return chunk,
        [(range, _)] if *range == (0..chunk.len()) => {
            return edits.pop().map(|(_, b)| b).unwrap_or_default()
        }
        _ => {}
    }
    let grown: usize = edits.iter().map(|(_, b)| b.len()).sum();
    let mut out = BytesMut::with_capacity(chunk.len() + grown);
    let mut at = 0;
    for (range, bytes) in edits.drain(..) {
        out.extend_from_slice(&chunk[at..range.start]);
        out.extend_from_slice(&bytes);
        at = range.end;
    }
    out.extend_from_slice(&chunk[at..]);
    out.freeze()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::frame::Frame;

    struct Swallow(u8);
    impl FrameFilter for Swallow {
        fn on_frame(&mut self, tag: u8, _frame: &[u8]) -> Action {
            if tag == self.0 {
                Action::Replace(Bytes::new())
            } else {
                Action::Forward
            }
        }
    }

    fn scanner() -> FrameScanner {
        FrameScanner {
            max_frame: 1 << 20,
            stream_threshold: 64,
            bulk_tags: b"d",
        }
    }

    #[tokio::test]
    async fn forwards_bytes_unchanged_and_applies_edits() {
        let mut input = BytesMut::new();
        Frame::new(b'Q', &b"select 1\0"[..]).encode(&mut input);
        Frame::new(b'H', Bytes::new()).encode(&mut input);
        Frame::new(b'S', Bytes::new()).encode(&mut input);
        let mut big = BytesMut::new();
        Frame::new(b'd', vec![7u8; 1000]).encode(&mut big);
        input.extend_from_slice(&big);

        let mut out = Vec::new();
        let mut pump = Pump::new(BytesMut::new(), scanner(), Traffic::default());
        let end = pump
            .run(&mut &input[..], &mut out, &mut Swallow(b'X'))
            .await
            .unwrap();
        assert_eq!(end, PumpEnd::Eof);
        assert_eq!(out, input.to_vec());
        assert!(pump.at_boundary());

        let mut out = Vec::new();
        let mut pump = Pump::new(BytesMut::new(), scanner(), Traffic::default());
        pump.run(&mut &input[..], &mut out, &mut Swallow(b'H'))
            .await
            .unwrap();
        assert_eq!(out.len(), input.len() - 5);
    }

    /// Marks `Q` heavy and rewrites it on another thread.
    struct OffThread;
    impl FrameFilter for OffThread {
        fn on_frame(&mut self, _tag: u8, _frame: &[u8]) -> Action {
            Action::Forward
        }
        fn heavy(&self, tag: u8, _frame: &[u8]) -> bool {
            tag == b'Q'
        }
        fn detached(&self) -> Option<Detached> {
            let caller = std::thread::current().id();
            Some(Box::new(move |_, frame: &[u8]| {
                assert_ne!(std::thread::current().id(), caller, "ran in place");
                Action::Replace(Frame::new(b'Q', frame[5..].to_ascii_uppercase()).to_bytes())
            }))
        }
    }

    #[tokio::test]
    async fn a_heavy_frame_is_handled_off_the_thread_in_order() {
        let mut input = BytesMut::new();
        Frame::new(b'S', Bytes::new()).encode(&mut input);
        Frame::new(b'Q', &b"select 1\0"[..]).encode(&mut input);
        Frame::new(b'H', Bytes::new()).encode(&mut input);
        let mut expected = BytesMut::new();
        Frame::new(b'S', Bytes::new()).encode(&mut expected);
        Frame::new(b'Q', &b"SELECT 1\0"[..]).encode(&mut expected);
        Frame::new(b'H', Bytes::new()).encode(&mut expected);
        let mut out = Vec::new();
        let mut pump = Pump::new(BytesMut::new(), scanner(), Traffic::default());
        pump.run(&mut &input[..], &mut out, &mut OffThread)
            .await
            .unwrap();
        assert_eq!(out, expected.to_vec());
    }

    #[test]
    fn splices_edits_of_any_length_in_order() {
        let chunk = Bytes::from_static(b"aaBBccDDee");
        let mut edits = vec![(2..4, Bytes::from_static(b"bbbbbb")), (6..8, Bytes::new())];
        assert_eq!(splice(chunk.clone(), &mut edits), &b"aabbbbbbccee"[..]);
        assert!(edits.is_empty());
        let mut whole = vec![(0..10, Bytes::from_static(b"xyz"))];
        assert_eq!(splice(chunk.clone(), &mut whole), &b"xyz"[..]);
        assert_eq!(splice(chunk.clone(), &mut Vec::new()), chunk);
    }

    #[tokio::test]
    async fn streams_a_frame_larger_than_the_limit_for_bulk_tags_only() {
        let small = FrameScanner {
            max_frame: 100,
            ..scanner()
        };
        let bulk = Frame::new(b'd', vec![1u8; 10_000]).to_bytes();
        let mut out = Vec::new();
        let mut pump = Pump::new(BytesMut::new(), small, Traffic::default());
        pump.run(&mut &bulk[..], &mut out, &mut Swallow(0))
            .await
            .unwrap();
        assert_eq!(out, bulk.to_vec());

        let query = Frame::new(b'Q', vec![b'x'; 10_000]).to_bytes();
        let mut pump = Pump::new(BytesMut::new(), small, Traffic::default());
        let err = pump
            .run(&mut &query[..], &mut Vec::new(), &mut Swallow(0))
            .await;
        assert!(matches!(
            err,
            Err(PumpError::Frame(FrameError::TooLarge { .. }))
        ));
    }
}
