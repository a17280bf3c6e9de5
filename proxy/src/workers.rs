//! Where sessions run: one single-threaded tokio runtime per core, each
//! on a thread of its own, with sessions dealt to them in turn. A plain
//! session's steady state leaves for a relay thread after login (see
//! [`crate::relay_loop`]); its login and close, and TLS sessions whole,
//! run here.
//!
//! Why not the multi-threaded runtime the rest of the process uses: on
//! every wake-up its workers read the clock twice and compute a moving
//! average (`powf`) for their own scheduling, and stealing work between
//! them costs atomics; a session's round trip is a few wake-ups, so that
//! was ~1,300 of its ~8,000 instructions. A session never needs another
//! core: nothing of it runs long on its thread (a long statement is
//! rewritten on a blocking thread, see [`crate::relay`]).

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};

use tokio::runtime::Handle;
use tokio::sync::oneshot;
use tokio::task::{AbortHandle, JoinSet};

/// The session threads; they stop when this is dropped.
pub(crate) struct Workers {
    handles: Vec<Handle>,
    /// Dropped with `Workers`: each thread's runtime then returns.
    _stops: Vec<oneshot::Sender<()>>,
    next: AtomicUsize,
}

impl Workers {
    /// `count` session threads (at least one).
    pub(crate) fn start(count: usize) -> std::io::Result<Self> {
        let mut handles = Vec::new();
        let mut stops = Vec::new();
        for i in 0..count.max(1) {
            let (stop, stopped) = oneshot::channel::<()>();
            let (tx, rx) = std::sync::mpsc::channel();
            std::thread::Builder::new()
                .name(format!("switchyard-session-{i}"))
                .spawn(move || {
                    let runtime = tokio::runtime::Builder::new_current_thread()
                        .enable_all()
                        .build();
                    match runtime {
                        Ok(runtime) => {
                            let _ = tx.send(Ok(runtime.handle().clone()));
                            // The runtime is dropped here, on its own
                            // thread, once told to stop.
                            let _ = runtime.block_on(stopped);
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                })?;
            let handle = rx
                .recv()
                .map_err(|_| std::io::Error::other("a session thread did not start"))??;
            handles.push(handle);
            stops.push(stop);
        }
        Ok(Workers {
            handles,
            _stops: stops,
            next: AtomicUsize::new(0),
        })
    }

    /// Runs `task` on the next session thread, in `set`.
    pub(crate) fn spawn<F>(&self, set: &mut JoinSet<()>, task: F) -> AbortHandle
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let i = self.next.fetch_add(1, Ordering::Relaxed) % self.handles.len();
        set.spawn_on(task, &self.handles[i])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn deals_tasks_to_every_thread_in_turn() {
        let workers = Workers::start(2).unwrap();
        let mut set = JoinSet::new();
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
        for _ in 0..4 {
            let tx = tx.clone();
            workers.spawn(&mut set, async move {
                let name = std::thread::current().name().map(str::to_owned);
                let _ = tx.send(name);
            });
        }
        while set.join_next().await.is_some() {}
        drop(tx);
        let mut names = Vec::new();
        while let Some(n) = rx.recv().await {
            names.push(n.unwrap());
        }
        names.sort();
        assert_eq!(
            names,
            [
                "switchyard-session-0",
                "switchyard-session-0",
                "switchyard-session-1",
                "switchyard-session-1"
            ]
        );
    }
}
