//! The "sessions are being closed" signal, as every relay polls it: on
//! every wake-up of every session, so it must cost next to nothing while
//! nothing happens. A watch channel's `changed()` costs ~190 instructions
//! per poll; this costs one atomic load and a waker comparison.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Mutex;
use std::task::{Context, Poll, Waker};

use foldhash::HashMap;

/// Set once; wakes every waiting relay when set.
#[derive(Default)]
pub(crate) struct Closing {
    closed: AtomicBool,
    next_key: AtomicU64,
    waiting: Mutex<HashMap<u64, Waker>>,
}

impl Closing {
    /// Tells every session to close, now and from now on.
    pub(crate) fn close(&self) {
        self.closed.store(true, Ordering::Release);
        let waiting = std::mem::take(&mut *self.lock());
        for waker in waiting.into_values() {
            waker.wake();
        }
    }

    /// Whether [`Closing::close`] has been called.
    pub(crate) fn is_closed(&self) -> bool {
        self.closed.load(Ordering::Acquire)
    }

    /// Wakes `waker` once closed (at once if closed already): for a loop
    /// that is not a future, such as a relay thread's.
    pub(crate) fn subscribe(&self, waker: Waker) {
        let key = self.next_key.fetch_add(1, Ordering::Relaxed);
        self.lock().insert(key, waker);
        if self.is_closed() {
            self.close();
        }
    }

    /// Resolves once [`Closing::close`] has been called.
    pub(crate) fn wait(&self) -> Closed<'_> {
        Closed {
            closing: self,
            key: self.next_key.fetch_add(1, Ordering::Relaxed),
            registered: None,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<u64, Waker>> {
        self.waiting.lock().unwrap_or_else(|p| p.into_inner())
    }
}

/// The future of [`Closing::wait`].
pub(crate) struct Closed<'a> {
    closing: &'a Closing,
    key: u64,
    /// The waker last registered, to skip registering it again.
    registered: Option<Waker>,
}

impl Future for Closed<'_> {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.closing.closed.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        if self
            .registered
            .as_ref()
            .is_some_and(|w| w.will_wake(cx.waker()))
        {
            return Poll::Pending;
        }
        let waker = cx.waker().clone();
        self.closing.lock().insert(self.key, waker.clone());
        self.registered = Some(waker);
        // Closed between the load and the insert: `close` may have taken
        // the map before our waker was in it.
        if self.closing.closed.load(Ordering::Acquire) {
            return Poll::Ready(());
        }
        Poll::Pending
    }
}

impl Drop for Closed<'_> {
    fn drop(&mut self) {
        if self.registered.is_some() {
            self.closing.lock().remove(&self.key);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::Arc;

    #[tokio::test]
    async fn wakes_every_waiter_and_later_ones_at_once() {
        let closing = Arc::new(Closing::default());
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let c = closing.clone();
                tokio::spawn(async move { c.wait().await })
            })
            .collect();
        // Every waiter has registered before the close.
        while closing.lock().len() < 3 {
            tokio::task::yield_now().await;
        }
        closing.close();
        for w in waiters {
            w.await.unwrap();
        }
        closing.wait().await;
        assert!(closing.lock().is_empty());
    }

    #[tokio::test]
    async fn a_dropped_waiter_leaves_nothing_behind() {
        let closing = Closing::default();
        let mut fut = Box::pin(closing.wait());
        assert!(futures_poll_once(fut.as_mut()).is_pending());
        assert_eq!(closing.lock().len(), 1);
        drop(fut);
        assert!(closing.lock().is_empty());
    }

    fn futures_poll_once(fut: Pin<&mut Closed<'_>>) -> Poll<()> {
        let mut cx = Context::from_waker(Waker::noop());
        fut.poll(&mut cx)
    }
}
