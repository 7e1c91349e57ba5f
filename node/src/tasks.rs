//! Spawning work so that its logs keep their context: a task or a blocking
//! job runs inside the span of the code that started it (the node's span,
//! and below it a host connection's and an export's), so every log line it
//! writes names the node and, where one is involved, the volume.

use std::future::Future;

use tokio::task::JoinHandle;
use tracing::Instrument;

/// `tokio::spawn` inside the caller's span.
pub fn spawn<F>(future: F) -> JoinHandle<F::Output>
where
    F: Future + Send + 'static,
    F::Output: Send + 'static,
{
    tokio::spawn(future.in_current_span())
}

/// `spawn_blocking` on `handle` inside `span` (callable from any thread,
/// inside or outside the runtime).
pub fn spawn_blocking_in<R: Send + 'static>(
    handle: &tokio::runtime::Handle,
    span: tracing::Span,
    f: impl FnOnce() -> R + Send + 'static,
) -> JoinHandle<R> {
    handle.spawn_blocking(move || {
        pool_thread_does_not_preempt();
        span.in_scope(f)
    })
}

/// `tokio::task::spawn_blocking` inside the caller's span.
pub fn spawn_blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> JoinHandle<R> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || {
        pool_thread_does_not_preempt();
        span.in_scope(f)
    })
}

/// Puts the calling blocking-pool thread (once) under `SCHED_BATCH`: same
/// share of CPU time, but its wake-up does not preempt the thread that woke
/// it. Why: the core's outputs are carried out in order, and a store job
/// handed to the pool (a `sync-memory` write's grouped fdatasync, a `sync`
/// copy's write and fdatasync at the peer) used to take the CPU from the
/// runtime thread at once, before that thread got to send the copy or the
/// progress the other site waits for: a trace at 2 ms showed the copy
/// leaving after the fdatasync's own 55 µs of CPU. With it, `sync` 4 KiB
/// QD1 p50 at 2 ms went from 2,540 to 2,458 µs and `sync-memory` from 2,277
/// to 2,245 (alternating runs of `geomirror-bench modes --rtt 2ms`). A
/// kernel that refuses the policy leaves the thread as it was (logged once).
fn pool_thread_does_not_preempt() {
    thread_local! { static DONE: std::cell::Cell<bool> = const { std::cell::Cell::new(false) }; }
    if DONE.get() {
        return;
    }
    DONE.set(true);
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sets the calling thread's own policy; `param` outlives the call.
    if unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) } != 0 {
        static LOGGED: std::sync::Once = std::sync::Once::new();
        let e = std::io::Error::last_os_error();
        LOGGED.call_once(|| tracing::info!("blocking-pool threads keep the default scheduling policy: SCHED_BATCH refused ({e})"));
    }
}

/// Runs `f` on the blocking pool (store I/O never runs on a runtime
/// worker); a panic in it is re-raised here.
pub async fn blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> R {
    match spawn_blocking(f).await {
        Ok(r) => r,
        Err(e) => std::panic::resume_unwind(e.into_panic()),
    }
}

/// `backoff` plus a random quarter of it at most, so that two nodes retrying
/// after the same event spread out.
pub fn jittered(backoff: std::time::Duration) -> std::time::Duration {
    let quarter = u64::try_from(backoff.as_micros() / 4).unwrap_or(u64::MAX).max(1);
    backoff + std::time::Duration::from_micros(rand::random::<u64>() % quarter)
}
