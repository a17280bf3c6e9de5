//! Relay threads: the steady state of plain sessions (a TCP client, a
//! server over TCP or a Unix socket) on an epoll loop of our own, one
//! thread per core.
//!
//! Why: tokio's machinery (readiness bookkeeping, task scheduling, its
//! timer wheel, cooperative budgets) was half of what a relayed round trip
//! cost. Here a readiness event drives the session's pump directly: one
//! `epoll_wait` per batch of events, then reads and writes. Negotiation,
//! login, TLS sessions and a session's close stay async: a session's
//! sockets come here after login and go back when its relay ends.

mod flow;
mod sock;

use std::panic::{catch_unwind, AssertUnwindSafe};
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;

use bytes::Bytes;
use mio::{Events, Interest, Poll, Token, Waker};
use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tracing::warn;

use crate::closing::Closing;
use crate::filters::{ClientFilter, ServerFilter};
use crate::relay::{heavy_outcome, Ended, FrameFilter, Pump, PumpError};
use flow::{Drive, Flow};
pub(crate) use sock::Sock;

/// A session handed to a relay thread after login.
pub(crate) struct Handover {
    pub(crate) client: Sock,
    pub(crate) server: Sock,
    pub(crate) c2s: Pump,
    pub(crate) s2c: Pump,
    pub(crate) client_filter: ClientFilter,
    pub(crate) server_filter: ServerFilter,
}

/// A session whose relay ended, handed back for its close.
pub(crate) struct Finished {
    pub(crate) ended: Ended,
    pub(crate) client: Sock,
    pub(crate) server: Sock,
    pub(crate) c2s: Pump,
    pub(crate) s2c: Pump,
    /// The server sent a FATAL error (it closes the connection itself).
    pub(crate) fatal_seen: bool,
}

/// The relay threads of one proxy; they stop when this is dropped.
pub(crate) struct RelayThreads {
    threads: Vec<Remote>,
    next: AtomicUsize,
}

/// What other threads hold of one relay thread.
struct Remote {
    inbox: Arc<Inbox>,
    waker: Arc<Waker>,
}

/// What other threads leave for a relay thread, with a wake-up.
#[derive(Default)]
struct Inbox {
    arrivals: Mutex<Vec<(Handover, oneshot::Sender<Finished>)>>,
    heavy_done: Mutex<Vec<HeavyDone>>,
    stop: AtomicBool,
}

/// A heavy frame's result; `None` if handling it panicked.
struct HeavyDone {
    key: usize,
    id: u64,
    dir: Dir,
    result: Option<(Bytes, bool)>,
}

const WAKE: Token = Token(usize::MAX);

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl RelayThreads {
    /// `count` relay threads (at least one). Heavy frames are handled on
    /// `blocking`'s blocking pool.
    pub(crate) fn start(
        count: usize,
        closing: Arc<Closing>,
        blocking: Handle,
    ) -> std::io::Result<Self> {
        let mut threads = Vec::new();
        for i in 0..count.max(1) {
            let poll = Poll::new()?;
            let waker = Arc::new(Waker::new(poll.registry(), WAKE)?);
            let inbox = Arc::new(Inbox::default());
            closing.subscribe(std::task::Waker::from(Arc::new(MioWake(waker.clone()))));
            let relay = RelayLoop {
                poll,
                inbox: inbox.clone(),
                waker: waker.clone(),
                closing: closing.clone(),
                blocking: blocking.clone(),
                conns: Vec::new(),
                free: Vec::new(),
                next_id: 0,
                again: Vec::new(),
                scratch: vec![0; SCRATCH],
            };
            std::thread::Builder::new()
                .name(format!("switchyard-relay-{i}"))
                .spawn(move || relay.run())?;
            threads.push(Remote { inbox, waker });
        }
        Ok(RelayThreads {
            threads,
            next: AtomicUsize::new(0),
        })
    }

    /// Relays `session` on the next thread; answers when its relay ends
    /// (an error if the thread is gone).
    pub(crate) fn hand_over(&self, session: Handover) -> oneshot::Receiver<Finished> {
        let (done, finished) = oneshot::channel();
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.threads.len();
        let remote = &self.threads[i];
        lock(&remote.inbox.arrivals).push((session, done));
        let _ = remote.waker.wake();
        if remote.inbox.stop.load(Ordering::Acquire) {
            // The thread has ended: what it would not take is dropped, and
            // its sessions learn so from their answer's channel.
            lock(&remote.inbox.arrivals).clear();
        }
        finished
    }
}

impl Drop for RelayThreads {
    fn drop(&mut self) {
        for remote in &self.threads {
            remote.inbox.stop.store(true, Ordering::Release);
            let _ = remote.waker.wake();
        }
    }
}

/// A task waker that wakes a relay thread's poll.
struct MioWake(Arc<Waker>);

impl std::task::Wake for MioWake {
    fn wake(self: Arc<Self>) {
        let _ = self.0.wake();
    }
}

/// Room for one read (copied into the pump's buffer after).
const SCRATCH: usize = 64 * 1024;
const EVENTS: usize = 256;

/// Which direction of a session.
#[derive(Debug, Clone, Copy)]
enum Dir {
    ClientToServer,
    ServerToClient,
}

/// One session on a relay thread.
struct Conn {
    /// Tells this session from a later one in the same slot.
    id: u64,
    client: Sock,
    server: Sock,
    c2s: Flow<ClientFilter>,
    s2c: Flow<ServerFilter>,
    done: oneshot::Sender<Finished>,
}

/// One relay thread's state. A session's slot `key` has tokens `2 * key`
/// (client) and `2 * key + 1` (server).
struct RelayLoop {
    poll: Poll,
    inbox: Arc<Inbox>,
    waker: Arc<Waker>,
    closing: Arc<Closing>,
    blocking: Handle,
    conns: Vec<Option<Conn>>,
    free: Vec<usize>,
    next_id: u64,
    /// Sessions whose read budget ran out, to drive again.
    again: Vec<(usize, u64, Dir)>,
    scratch: Vec<u8>,
}

impl RelayLoop {
    fn run(mut self) {
        let mut events = Events::with_capacity(EVENTS);
        loop {
            let timeout = (!self.again.is_empty()).then_some(Duration::ZERO);
            if let Err(e) = self.poll.poll(&mut events, timeout) {
                if e.kind() == std::io::ErrorKind::Interrupted {
                    continue;
                }
                warn!(error = %e, "a relay thread cannot poll; its sessions end");
                self.inbox.stop.store(true, Ordering::Release);
                lock(&self.inbox.arrivals).clear();
                return;
            }
            let mut woken = false;
            for event in events.iter() {
                match event.token() {
                    WAKE => woken = true,
                    _ => self.on_event(event),
                }
            }
            if woken {
                if self.inbox.stop.load(Ordering::Acquire) {
                    return;
                }
                self.take_arrivals();
                self.take_heavy_done();
                if self.closing.is_closed() {
                    self.close_all();
                }
            }
            for (key, id, dir) in std::mem::take(&mut self.again) {
                if self.is_live(key, id) {
                    self.drive(key, dir);
                }
            }
        }
    }

    /// Drives what a readiness event on a session's socket concerns.
    fn on_event(&mut self, event: &mio::event::Event) {
        let key = event.token().0 >> 1;
        let (reader, writer) = match event.token().0 & 1 {
            0 => (Dir::ClientToServer, Dir::ServerToClient),
            _ => (Dir::ServerToClient, Dir::ClientToServer),
        };
        let closed = event.is_read_closed() || event.is_error();
        if closed {
            self.note_closed(key, reader);
        }
        if event.is_readable() || closed {
            self.drive(key, reader);
        }
        // A readable socket is reported writable too: only a flow with
        // bytes waiting is driven for that.
        let writable = event.is_writable() || event.is_write_closed() || event.is_error();
        if writable && self.wants_to_write(key, writer) {
            self.drive(key, writer);
        }
    }

    fn is_live(&self, key: usize, id: u64) -> bool {
        matches!(self.conns.get(key), Some(Some(c)) if c.id == id)
    }

    /// The reading side of `dir` was closed or failed (see `src_closed`).
    fn note_closed(&mut self, key: usize, dir: Dir) {
        match (self.conns.get_mut(key), dir) {
            (Some(Some(c)), Dir::ClientToServer) => c.c2s.src_closed = true,
            (Some(Some(c)), Dir::ServerToClient) => c.s2c.src_closed = true,
            _ => {}
        }
    }

    fn wants_to_write(&self, key: usize, dir: Dir) -> bool {
        match (self.conns.get(key), dir) {
            (Some(Some(c)), Dir::ClientToServer) => c.c2s.wants_to_write(),
            (Some(Some(c)), Dir::ServerToClient) => c.s2c.wants_to_write(),
            _ => false,
        }
    }

    /// Drives one direction of session `key` until it waits or ends.
    fn drive(&mut self, key: usize, dir: Dir) {
        let Some(Some(conn)) = self.conns.get_mut(key) else {
            return;
        };
        let ended = loop {
            let step = match dir {
                Dir::ClientToServer => {
                    conn.c2s
                        .drive(&conn.client, &conn.server, &mut self.scratch)
                }
                Dir::ServerToClient => {
                    conn.s2c
                        .drive(&conn.server, &conn.client, &mut self.scratch)
                }
            };
            match step {
                Drive::Wait => return,
                Drive::Yield => {
                    self.again.push((key, conn.id, dir));
                    return;
                }
                Drive::Heavy(frame) => {
                    let to = HeavyTo {
                        key,
                        id: conn.id,
                        dir,
                        inbox: &self.inbox,
                        waker: &self.waker,
                        blocking: &self.blocking,
                    };
                    match dir {
                        Dir::ClientToServer => to.send(&mut conn.c2s, frame),
                        Dir::ServerToClient => to.send(&mut conn.s2c, frame),
                    }
                }
                Drive::End(result) => {
                    break match dir {
                        Dir::ClientToServer => Ended::Client(result),
                        Dir::ServerToClient => Ended::Server(result),
                    }
                }
            }
        };
        self.finish(key, ended);
    }

    fn take_arrivals(&mut self) {
        let arrivals = std::mem::take(&mut *lock(&self.inbox.arrivals));
        for (session, done) in arrivals {
            self.admit(session, done);
        }
    }

    fn admit(&mut self, session: Handover, done: oneshot::Sender<Finished>) {
        let key = self.free.pop().unwrap_or_else(|| {
            self.conns.push(None);
            self.conns.len() - 1
        });
        self.next_id += 1;
        let mut conn = Conn {
            id: self.next_id,
            client: session.client,
            server: session.server,
            c2s: Flow::new(session.c2s, session.client_filter),
            s2c: Flow::new(session.s2c, session.server_filter),
            done,
        };
        let both = Interest::READABLE | Interest::WRITABLE;
        let registry = self.poll.registry();
        let registered = registry
            .register(conn.client.source(), Token(2 * key), both)
            .and_then(|()| registry.register(conn.server.source(), Token(2 * key + 1), both));
        self.conns[key] = Some(conn);
        if let Err(e) = registered {
            return self.finish(key, Ended::Client(Err(PumpError::Read(e))));
        }
        if self.closing.is_closed() {
            return self.finish(key, Ended::Shutdown);
        }
        // Bytes read during login may wait in either pump.
        self.drive(key, Dir::ClientToServer);
        self.drive(key, Dir::ServerToClient);
    }

    fn take_heavy_done(&mut self) {
        let done = std::mem::take(&mut *lock(&self.inbox.heavy_done));
        for HeavyDone {
            key,
            id,
            dir,
            result,
        } in done
        {
            if !self.is_live(key, id) {
                continue;
            }
            let Some(Some(conn)) = self.conns.get_mut(key) else {
                continue;
            };
            match result {
                Some(result) => {
                    match dir {
                        Dir::ClientToServer => conn.c2s.heavy_done(result),
                        Dir::ServerToClient => conn.s2c.heavy_done(result),
                    }
                    self.drive(key, dir);
                }
                None => {
                    let e = std::io::Error::other("handling a statement failed");
                    self.finish(key, Ended::Client(Err(PumpError::Read(e))));
                }
            }
        }
    }

    fn close_all(&mut self) {
        for key in 0..self.conns.len() {
            if self.conns[key].is_some() {
                self.finish(key, Ended::Shutdown);
            }
        }
    }

    /// Ends session `key`: its sockets, pumps and how it ended go back.
    fn finish(&mut self, key: usize, ended: Ended) {
        let Some(mut conn) = self.conns.get_mut(key).and_then(Option::take) else {
            return;
        };
        self.free.push(key);
        let registry = self.poll.registry();
        let _ = registry.deregister(conn.client.source());
        let _ = registry.deregister(conn.server.source());
        let _ = conn.done.send(Finished {
            ended,
            client: conn.client,
            server: conn.server,
            fatal_seen: conn.s2c.filter.fatal_seen,
            c2s: conn.c2s.pump,
            s2c: conn.s2c.pump,
        });
    }
}

/// Where a heavy frame's result goes.
struct HeavyTo<'a> {
    key: usize,
    id: u64,
    dir: Dir,
    inbox: &'a Arc<Inbox>,
    waker: &'a Arc<Waker>,
    blocking: &'a Handle,
}

impl HeavyTo<'_> {
    /// Handles `frame` on a blocking thread (in place if the filter has no
    /// detached form); the thread serves its other sessions meanwhile.
    fn send<F: FrameFilter>(self, flow: &mut Flow<F>, frame: Bytes) {
        let tag = frame[0];
        let Some(handle) = flow.filter.detached() else {
            let action = flow.filter.on_frame(tag, &frame);
            return flow.heavy_done(heavy_outcome(frame, action));
        };
        let (key, id, dir) = (self.key, self.id, self.dir);
        let (inbox, waker) = (self.inbox.clone(), self.waker.clone());
        self.blocking.spawn_blocking(move || {
            let action = catch_unwind(AssertUnwindSafe(|| handle(tag, &frame)));
            let result = action.ok().map(|a| heavy_outcome(frame, a));
            lock(&inbox.heavy_done).push(HeavyDone {
                key,
                id,
                dir,
                result,
            });
            let _ = waker.wake();
        });
    }
}

#[cfg(test)]
mod tests;
