//! Where a rewrite runs. Most statements are shallow and short: they are
//! rewritten inline, on the session's thread. One longer than
//! [`super::router::HEAVY`] never gets here on that thread: the relay
//! hands its frame to a blocking thread first. One that may need more
//! stack than a thread has (deep nesting, long operator chains) runs on a
//! thread of its own with the stack `switchyard_rules` asks for; on a
//! multi-threaded runtime's worker the worker's other tasks move to
//! another thread meanwhile (`block_in_place`), elsewhere the caller waits
//! (a short statement: its parse is short).

use switchyard_rules::rewrite::scan::Scan;
use switchyard_rules::rewrite::{INLINE_LIMIT, STACK};

/// Statements longer than this are parsed off the worker.
const LONG: usize = 64 * 1024;

/// Whether rewriting this statement belongs off the worker.
pub(crate) fn needed(sql: &str, scanned: &Scan) -> bool {
    sql.len() > LONG || scanned.stack_bound() > INLINE_LIMIT
}

/// Runs `job` on a thread with a big stack, letting the current tokio
/// worker's other tasks move on meanwhile.
pub(crate) fn run<R: Send>(job: impl FnOnce() -> R + Send) -> R {
    let on_big_stack = || {
        std::thread::scope(|s| {
            let spawned = std::thread::Builder::new()
                .name("switchyard-rewrite".into())
                .stack_size(STACK)
                .spawn_scoped(s, job);
            match spawned {
                Ok(handle) => handle
                    .join()
                    .unwrap_or_else(|panic| std::panic::resume_unwind(panic)),
                Err(e) => panic!("cannot start a rewrite thread: {e}"),
            }
        })
    };
    let multi_thread = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi_thread {
        tokio::task::block_in_place(on_big_stack)
    } else {
        on_big_stack()
    }
}
