//! The link model: pure arithmetic, no runtime, no clock, no I/O.
//!
//! One [`LinkDirection`] models one direction of a WAN link and is shared by every connection
//! going that way. A chunk of `n` bytes offered at time `t`:
//!
//! 1. waits for the direction's serializer: `start = max(t, free_at)`;
//! 2. is serialized: `free_at = start + n * 8 / bandwidth` (zero when unlimited); chunks of all
//!    connections queue behind each other here, as packets do at a router's output port;
//! 3. propagates: `delivery = free_at + max(0, delay + J)` where the jitter `J` is drawn
//!    **uniformly from `[-jitter, +jitter]`** (whole nanoseconds), independently per chunk;
//! 4. is never delivered before an earlier chunk of the same connection and direction:
//!    `delivery = max(delivery, stream.last_delivery)` ([`StreamClock`]). Jitter therefore never
//!    reorders bytes within a connection; for back-to-back chunks the clamp biases the effective
//!    delay upwards (towards `delay + jitter`), as a FIFO queue with variable service would.
//!
//! Pipelining is free: the serializer does not wait for earlier chunks to be delivered, so a
//! sender that keeps enough bytes in flight sees `min(bandwidth, window / RTT)`.
//!
//! Times are [`LinkTime`]s, durations since an epoch the caller chooses (the proxy uses the
//! moment it started; a deterministic simulation can use its virtual clock). Randomness comes
//! from the caller's `Rng`, so a seeded simulation reproduces exactly.

use std::time::Duration;

use rand::Rng;

use crate::units::{Bandwidth, duration_from_nanos_saturating};

/// An instant on the link's clock: time elapsed since the caller's epoch.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct LinkTime(pub Duration);

impl LinkTime {
    /// The epoch.
    pub const ZERO: LinkTime = LinkTime(Duration::ZERO);

    /// `self + d`, saturating at `Duration::MAX`.
    pub fn saturating_add(self, d: Duration) -> LinkTime {
        LinkTime(self.0.saturating_add(d))
    }

    /// Time from `earlier` to `self`, zero if `earlier` is later.
    pub fn saturating_since(self, earlier: LinkTime) -> Duration {
        self.0.saturating_sub(earlier.0)
    }
}

/// The parameters of one direction of the link.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct DirectionParams {
    /// One-way propagation delay.
    pub delay: Duration,
    /// Jitter amplitude: each chunk's delay is `delay + U[-jitter, +jitter]`, floored at zero.
    pub jitter: Duration,
    /// Serialization rate, shared by all connections of this direction.
    pub bandwidth: Bandwidth,
}

/// Per connection and direction: the last delivery instant, so that chunks stay in order.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct StreamClock {
    /// Delivery instant of the latest chunk scheduled on this stream.
    pub last_delivery: LinkTime,
}

/// One direction of a link, shared by all connections going that way.
#[derive(Debug, Clone)]
pub struct LinkDirection {
    params: DirectionParams,
    /// When the serializer finishes the last chunk offered; the next chunk starts no earlier.
    free_at: LinkTime,
}

impl LinkDirection {
    /// A direction with the given parameters, idle since the epoch.
    pub fn new(params: DirectionParams) -> Self {
        LinkDirection { params, free_at: LinkTime::ZERO }
    }

    /// Current parameters.
    pub fn params(&self) -> DirectionParams {
        self.params
    }

    /// Changes the parameters for chunks offered from now on; chunks already scheduled keep
    /// their delivery instants, and the serializer's backlog (`free_at`) is kept.
    pub fn set_params(&mut self, params: DirectionParams) {
        self.params = params;
    }

    /// When the serializer becomes idle.
    pub fn free_at(&self) -> LinkTime {
        self.free_at
    }

    /// Schedules a chunk of `bytes` offered at `offered_at` on `stream`; returns its delivery
    /// instant and advances both the serializer and the stream clock. A zero-byte chunk (a FIN)
    /// takes no serialization time but still queues behind earlier chunks and propagates.
    pub fn transmit<R: Rng + ?Sized>(&mut self, offered_at: LinkTime, bytes: usize, stream: &mut StreamClock, rng: &mut R) -> LinkTime {
        let start = offered_at.max(self.free_at);
        let bytes = u64::try_from(bytes).unwrap_or(u64::MAX);
        self.free_at = start.saturating_add(self.params.bandwidth.serialization_time(bytes));
        let delay = jittered_delay(self.params.delay, self.params.jitter, rng);
        let delivery = self.free_at.saturating_add(delay).max(stream.last_delivery);
        stream.last_delivery = delivery;
        delivery
    }
}

/// `delay + U[-jitter, +jitter]`, floored at zero; exactly `delay` when `jitter` is zero (and
/// then no random number is drawn, so an unjittered link consumes no randomness).
pub fn jittered_delay<R: Rng + ?Sized>(delay: Duration, jitter: Duration, rng: &mut R) -> Duration {
    if jitter.is_zero() {
        return delay;
    }
    let amplitude = i128::try_from(jitter.as_nanos()).unwrap_or(i128::MAX / 4);
    let offset = rng.random_range(-amplitude..=amplitude);
    let base = i128::try_from(delay.as_nanos()).unwrap_or(i128::MAX / 4);
    let nanos = (base + offset).max(0);
    // Non-negative after the floor, so the cast to u128 is exact.
    duration_from_nanos_saturating(nanos as u128)
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::SeedableRng;
    use rand::rngs::StdRng;

    const MS: Duration = Duration::from_millis(1);

    fn params(delay: Duration, jitter: Duration, bandwidth: Bandwidth) -> DirectionParams {
        DirectionParams { delay, jitter, bandwidth }
    }

    #[test]
    fn one_mib_burst_at_100_mbit_takes_84_ms_plus_delay() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut link = LinkDirection::new(params(10 * MS, Duration::ZERO, Bandwidth::mbit(100)));
        let mut stream = StreamClock::default();
        // Offered as 16 chunks of 64 KiB at t = 0, as the proxy would read them.
        let mut last = LinkTime::ZERO;
        for _ in 0..16 {
            last = link.transmit(LinkTime::ZERO, 64 * 1024, &mut stream, &mut rng);
        }
        let expected = Duration::from_nanos(83_886_080) + 10 * MS;
        assert_eq!(last.0, expected, "1 MiB at 100 Mbit/s is 83.886 ms of serialization");
        assert_eq!(link.free_at().0, Duration::from_nanos(83_886_080));
    }

    #[test]
    fn an_idle_link_starts_serializing_when_offered() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut link = LinkDirection::new(params(5 * MS, Duration::ZERO, Bandwidth::mbit(8)));
        let mut stream = StreamClock::default();
        // 1000 bytes at 8 Mbit/s = 1 ms.
        let first = link.transmit(LinkTime::ZERO, 1000, &mut stream, &mut rng);
        assert_eq!(first.0, 6 * MS);
        // Offered long after the serializer went idle: no leftover backlog.
        let later = link.transmit(LinkTime(100 * MS), 1000, &mut stream, &mut rng);
        assert_eq!(later.0, 106 * MS);
    }

    #[test]
    fn unlimited_bandwidth_only_adds_propagation_delay() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut link = LinkDirection::new(params(7 * MS, Duration::ZERO, Bandwidth::Unlimited));
        let mut stream = StreamClock::default();
        let t = link.transmit(LinkTime(3 * MS), 100 << 20, &mut stream, &mut rng);
        assert_eq!(t.0, 10 * MS);
    }

    #[test]
    fn connections_share_the_serializer_of_their_direction() {
        let mut rng = StdRng::seed_from_u64(1);
        // 125_000 bytes at 1 Gbit/s = 1 ms.
        let mut link = LinkDirection::new(params(MS, Duration::ZERO, Bandwidth::gbit(1)));
        let (mut a, mut b) = (StreamClock::default(), StreamClock::default());
        let ta = link.transmit(LinkTime::ZERO, 125_000, &mut a, &mut rng);
        let tb = link.transmit(LinkTime::ZERO, 125_000, &mut b, &mut rng);
        assert_eq!(ta.0, 2 * MS);
        assert_eq!(tb.0, 3 * MS, "the second connection waits for the first one's bytes");
    }

    #[test]
    fn asymmetric_directions_keep_their_own_delay() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut ab = LinkDirection::new(params(30 * MS, Duration::ZERO, Bandwidth::Unlimited));
        let mut ba = LinkDirection::new(params(5 * MS, Duration::ZERO, Bandwidth::Unlimited));
        let (mut s_ab, mut s_ba) = (StreamClock::default(), StreamClock::default());
        let request = ab.transmit(LinkTime::ZERO, 100, &mut s_ab, &mut rng);
        let response = ba.transmit(request, 100, &mut s_ba, &mut rng);
        assert_eq!(request.0, 30 * MS);
        assert_eq!(response.0, 35 * MS, "round trip is the sum of both one-way delays");
    }

    #[test]
    fn jitter_never_reorders_a_stream_and_stays_in_its_bounds() {
        let mut rng = StdRng::seed_from_u64(42);
        let delay = 10 * MS;
        let jitter = 4 * MS;
        let mut link = LinkDirection::new(params(delay, jitter, Bandwidth::gbit(1)));
        let mut stream = StreamClock::default();
        let mut previous = LinkTime::ZERO;
        let mut offered = LinkTime::ZERO;
        let mut sum_offsets: i128 = 0;
        let samples = 20_000;
        for i in 0..samples {
            // Sparse offers (every 20 ms) so the clamp rarely applies and the raw distribution
            // shows; every tenth offer is back-to-back to exercise the clamp.
            if i % 10 != 0 {
                offered = offered.saturating_add(20 * MS);
            }
            let before = link.free_at().max(offered);
            let t = link.transmit(offered, 1500, &mut stream, &mut rng);
            assert!(t >= previous, "chunk {i} delivered before its predecessor");
            let serialized = before.saturating_add(Bandwidth::gbit(1).serialization_time(1500));
            let raw = t.saturating_since(serialized);
            assert!(raw <= delay + jitter, "chunk {i}: {raw:?} above delay + jitter");
            if i % 10 != 0 {
                // Sparse: the previous chunk was delivered long before, so no clamp applied.
                assert!(raw >= delay - jitter, "chunk {i}: {raw:?} below delay - jitter");
            }
            sum_offsets += raw.as_nanos() as i128 - delay.as_nanos() as i128;
            previous = t;
        }
        let mean_offset_ms = sum_offsets as f64 / samples as f64 / 1e6;
        // Uniform on [-4, 4] ms has mean 0; the clamp on the back-to-back tenth pushes it up a
        // little. A wrong distribution (e.g. [0, 2j]) would give a mean near +4 ms.
        assert!(mean_offset_ms.abs() < 0.5, "mean jitter offset {mean_offset_ms} ms");
    }

    #[test]
    fn jitter_larger_than_delay_is_floored_at_zero() {
        let mut rng = StdRng::seed_from_u64(7);
        for _ in 0..1000 {
            let d = jittered_delay(MS, 5 * MS, &mut rng);
            assert!(d <= 6 * MS);
        }
        assert_eq!(jittered_delay(3 * MS, Duration::ZERO, &mut rng), 3 * MS);
    }

    #[test]
    fn a_lower_delay_never_overtakes_bytes_already_scheduled() {
        let mut rng = StdRng::seed_from_u64(1);
        let mut link = LinkDirection::new(params(50 * MS, Duration::ZERO, Bandwidth::Unlimited));
        let mut stream = StreamClock::default();
        let slow = link.transmit(LinkTime::ZERO, 10, &mut stream, &mut rng);
        link.set_params(params(MS, Duration::ZERO, Bandwidth::Unlimited));
        let fast = link.transmit(LinkTime(MS), 10, &mut stream, &mut rng);
        assert_eq!(slow.0, 50 * MS);
        assert_eq!(fast, slow, "clamped to the earlier chunk's delivery");
    }

    #[test]
    fn same_seed_same_schedule() {
        let run = |seed| {
            let mut rng = StdRng::seed_from_u64(seed);
            let mut link = LinkDirection::new(params(10 * MS, 3 * MS, Bandwidth::mbit(100)));
            let mut stream = StreamClock::default();
            (0..100).map(|i| link.transmit(LinkTime(i * MS), 1000, &mut stream, &mut rng)).collect::<Vec<_>>()
        };
        assert_eq!(run(9), run(9));
        assert_ne!(run(9), run(10));
    }
}
