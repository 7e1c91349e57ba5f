//! A sub-millisecond sleep for delivery deadlines.
//!
//! tokio's timer wheel has a 1 ms resolution and rounds deadlines up, which would add up to
//! 1 ms to every one-way delay and make a 0.2 ms LAN look like a 2 ms metro link. This module
//! runs one OS thread per process that keeps a heap of deadlines and waits on a condition
//! variable with the exact timeout, then wakes the task. If that thread cannot be started,
//! sleeps fall back to tokio's timer.
//!
//! Waking a thread and then a task still takes time (about 0.1–0.3 ms on a small VM, more
//! under load). So each sleep aims early by the measured wake-up lateness: an exponentially
//! weighted average of how late past sleeps completed, capped at [`TIMER_LEAD_MAX`] and at
//! half the time left until the deadline. On average a sleep then ends at its deadline; a
//! single one may end up to the lead early. A sleep that the lead alone made ready at once
//! (its deadline still ahead) counts as a sleep that was not late: after a burst of load has
//! raised the lead, it decays again instead of staying above short delays for good.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Condvar, Mutex, MutexGuard, OnceLock, PoisonError};
use std::task::{Context, Poll, Waker};
use std::time::{Duration, Instant};

use crate::limits::{TIMER_ENTRIES_PURGE_AT, TIMER_LEAD_MAX};

/// Locks a mutex, ignoring poisoning: every critical section in this crate leaves its data
/// consistent at each step, and with `panic = "abort"` a panic stops the process anyway.
pub(crate) fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

#[derive(Default)]
struct SlotState {
    waker: Option<Waker>,
    fired: bool,
    cancelled: bool,
}

/// Shared between one sleep future and its heap entry.
#[derive(Default)]
pub(crate) struct Slot(Mutex<SlotState>);

struct Entry {
    at: Instant,
    seq: u64,
    slot: Arc<Slot>,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<std::cmp::Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> std::cmp::Ordering {
        (self.at, self.seq).cmp(&(other.at, other.seq))
    }
}

#[derive(Default)]
struct Heap {
    entries: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

struct Timer {
    heap: Mutex<Heap>,
    changed: Condvar,
}

impl Timer {
    fn register(&self, at: Instant, slot: Arc<Slot>) {
        let mut heap = lock(&self.heap);
        if heap.entries.len() >= TIMER_ENTRIES_PURGE_AT {
            heap.entries.retain(|Reverse(e)| !lock(&e.slot.0).cancelled);
        }
        let earliest = heap.entries.peek().is_none_or(|Reverse(e)| at < e.at);
        heap.seq += 1;
        let seq = heap.seq;
        heap.entries.push(Reverse(Entry { at, seq, slot }));
        drop(heap);
        if earliest {
            self.changed.notify_one();
        }
    }

    fn run(&self) {
        let mut heap = lock(&self.heap);
        loop {
            let now = Instant::now();
            while heap.entries.peek().is_some_and(|Reverse(e)| e.at <= now) {
                if let Some(Reverse(entry)) = heap.entries.pop() {
                    let mut slot = lock(&entry.slot.0);
                    slot.fired = true;
                    if let Some(waker) = slot.waker.take() {
                        waker.wake();
                    }
                }
            }
            heap = match heap.entries.peek() {
                None => self.changed.wait(heap).unwrap_or_else(PoisonError::into_inner),
                Some(Reverse(e)) => {
                    let timeout = e.at.saturating_duration_since(now);
                    self.changed.wait_timeout(heap, timeout).unwrap_or_else(PoisonError::into_inner).0
                }
            };
        }
    }
}

fn timer() -> Option<&'static Timer> {
    static TIMER: OnceLock<Option<&'static Timer>> = OnceLock::new();
    *TIMER.get_or_init(|| {
        let timer: &'static Timer = Box::leak(Box::new(Timer { heap: Mutex::default(), changed: Condvar::new() }));
        match std::thread::Builder::new().name("geomirror-sim-timer".into()).spawn(move || timer.run()) {
            Ok(_) => Some(timer),
            Err(e) => {
                tracing::warn!("failed to start the precise timer thread, using tokio's: {e}");
                None
            }
        }
    })
}

/// Average lateness of completed sleeps, in nanoseconds (at most [`TIMER_LEAD_MAX`]).
static WAKE_LATENESS_NANOS: AtomicU64 = AtomicU64::new(0);

/// How early sleeps aim, to cancel their average lateness.
pub(crate) fn lead() -> Duration {
    Duration::from_nanos(WAKE_LATENESS_NANOS.load(Ordering::Relaxed))
}

/// Folds one observed lateness into the average (weight 1/8; races between tasks only lose a
/// sample).
fn record_lateness(late: Duration) {
    let cap = u64::try_from(TIMER_LEAD_MAX.as_nanos()).unwrap_or(u64::MAX);
    let sample = u64::try_from(late.as_nanos()).unwrap_or(u64::MAX).min(cap);
    let old = WAKE_LATENESS_NANOS.load(Ordering::Relaxed);
    let new = (old * 7 + sample) / 8;
    WAKE_LATENESS_NANOS.store(new, Ordering::Relaxed);
}

/// Completes at about `deadline` (aiming early by [`lead`], at most half the time left), or
/// at once if that has passed.
pub(crate) fn sleep_until(deadline: Instant) -> PreciseSleep {
    let left = deadline.saturating_duration_since(Instant::now());
    let target = deadline.checked_sub(lead().min(left / 2)).unwrap_or(deadline);
    match timer() {
        Some(_) => PreciseSleep::Thread { deadline: target, wanted: deadline, slot: None },
        None => PreciseSleep::Tokio(Box::pin(tokio::time::sleep_until(deadline.into()))),
    }
}

/// Future returned by [`sleep_until`].
pub(crate) enum PreciseSleep {
    /// `deadline` is the aimed-at instant (the caller's deadline, `wanted`, minus the lead).
    Thread {
        deadline: Instant,
        wanted: Instant,
        slot: Option<Arc<Slot>>,
    },
    Tokio(Pin<Box<tokio::time::Sleep>>),
}

impl Future for PreciseSleep {
    type Output = ();

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match self.get_mut() {
            PreciseSleep::Tokio(sleep) => sleep.as_mut().poll(cx),
            PreciseSleep::Thread { deadline, wanted, slot } => {
                let now = Instant::now();
                if now >= *deadline {
                    if slot.is_some() {
                        // It waited: how late the wake-up was.
                        record_lateness(now - *deadline);
                    } else if now < *wanted {
                        // Ready only because of the lead: no lateness seen.
                        record_lateness(Duration::ZERO);
                    }
                    return Poll::Ready(());
                }
                match slot {
                    Some(slot) => {
                        let mut state = lock(&slot.0);
                        // The timer fires only once its clock has reached the deadline.
                        if state.fired {
                            return Poll::Ready(());
                        }
                        state.waker = Some(cx.waker().clone());
                    }
                    None => {
                        let new = Arc::new(Slot::default());
                        lock(&new.0).waker = Some(cx.waker().clone());
                        *slot = Some(new.clone());
                        match timer() {
                            Some(t) => t.register(*deadline, new),
                            // Unreachable: this variant is built only when the timer exists.
                            None => return Poll::Ready(()),
                        }
                    }
                }
                Poll::Pending
            }
        }
    }
}

impl Drop for PreciseSleep {
    fn drop(&mut self) {
        if let PreciseSleep::Thread { slot: Some(slot), .. } = self {
            let mut state = lock(&slot.0);
            state.cancelled = true;
            state.waker = None;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn sleeps_end_close_to_their_deadline() {
        let mut late = Vec::new();
        for micros in [50u64, 200, 700, 1500, 3000] {
            let deadline = Instant::now() + Duration::from_micros(micros);
            sleep_until(deadline).await;
            let now = Instant::now();
            assert!(now + TIMER_LEAD_MAX >= deadline, "woke earlier than the lead allows");
            late.push(now.saturating_duration_since(deadline));
        }
        late.sort();
        // The median lateness must be well under tokio's 1 ms tick.
        assert!(late[2] < Duration::from_micros(700), "lateness {late:?}");
    }

    #[tokio::test]
    async fn after_a_burst_of_lateness_the_lead_decays_and_short_delays_hold_again() {
        // As after heavy load: the lead at its cap, above a 1 ms delay.
        WAKE_LATENESS_NANOS.store(u64::try_from(TIMER_LEAD_MAX.as_nanos()).unwrap(), Ordering::Relaxed);
        let delay = Duration::from_millis(1);
        for _ in 0..40 {
            sleep_until(Instant::now() + delay).await;
        }
        assert!(lead() < delay / 2, "the lead stayed at {:?}", lead());
        let mut took = Vec::new();
        for _ in 0..9 {
            let start = Instant::now();
            sleep_until(start + delay).await;
            took.push(start.elapsed());
        }
        took.sort();
        assert!(took[4] >= delay * 3 / 4, "a 1 ms sleep took {:?} (median)", took[4]);
    }

    #[tokio::test]
    async fn many_concurrent_sleeps_all_complete_in_order_of_deadline() {
        let start = Instant::now();
        let mut handles = Vec::new();
        for i in (0..50u64).rev() {
            let deadline = start + Duration::from_micros(100 * i);
            handles.push(tokio::spawn(async move {
                sleep_until(deadline).await;
                Instant::now() + TIMER_LEAD_MAX >= deadline
            }));
        }
        for h in handles {
            assert!(h.await.unwrap());
        }
    }

    #[tokio::test]
    async fn a_dropped_sleep_does_not_wake_anyone() {
        let far = Instant::now() + Duration::from_secs(3600);
        for _ in 0..(TIMER_ENTRIES_PURGE_AT + 10) {
            let mut s = sleep_until(far);
            // Poll once to register, then drop.
            let waker = std::task::Waker::noop();
            let mut cx = Context::from_waker(waker);
            assert!(Pin::new(&mut s).poll(&mut cx).is_pending());
        }
        let heap_len = lock(&timer().unwrap().heap).entries.len();
        assert!(heap_len <= TIMER_ENTRIES_PURGE_AT + 10, "cancelled entries were purged");
    }
}
