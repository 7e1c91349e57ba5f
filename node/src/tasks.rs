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
    handle.spawn_blocking(move || span.in_scope(f))
}

/// `tokio::task::spawn_blocking` inside the caller's span.
pub fn spawn_blocking<R: Send + 'static>(f: impl FnOnce() -> R + Send + 'static) -> JoinHandle<R> {
    let span = tracing::Span::current();
    tokio::task::spawn_blocking(move || span.in_scope(f))
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
