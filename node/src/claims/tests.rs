//! Tests of the claims state machine: table-driven paths, then a seeded
//! simulation of two nodes exchanging messages on two lanes in random order,
//! checking the invariants of DESIGN.md section 3 after every step.

use super::state::*;
use geomirror_wire::peer::{BlockIndex, ClaimOutcome, Epoch, Extent, ExtentClaim};
use std::collections::VecDeque;
use std::time::{Duration, Instant};

const BLOCK: u64 = 4096;
const EXTENT: u64 = 4 * BLOCK;

fn geometry(extents: u64) -> Geometry {
    Geometry { block_bytes: BLOCK, extent_bytes: EXTENT, size: extents * EXTENT }
}

fn knobs(max_owned: usize, predict: u32, wins_ties: bool) -> Knobs {
    Knobs { max_owned, predict, release_after: Duration::from_secs(1), wins_ties }
}

fn granted(s: &mut ReplicaState, extents: &[Extent], t: Instant) {
    let outcomes: Vec<_> = extents.iter().enumerate().map(|(i, _)| ClaimOutcome::Granted(Epoch(i as u64 + 1))).collect();
    s.on_claim_reply(extents, &outcomes, Epoch(extents.len() as u64), t);
}

#[test]
fn first_write_claims_then_is_admitted_without_round_trip() {
    let t = Instant::now();
    let mut a = ReplicaState::new(geometry(16), knobs(8, 0, true));
    assert_eq!(a.begin_write(2..=2, t), WriteAccess::Claim(vec![Extent(2)]));
    assert_eq!(a.begin_write(2..=2, t), WriteAccess::Wait, "a second writer waits for the claim in flight");
    granted(&mut a, &[Extent(2)], t);
    assert_eq!(a.begin_write(2..=2, t), WriteAccess::Admitted);
    a.end_write(2 * EXTENT, BLOCK, t);
    assert_eq!(a.figures().unsent_blocks, 1);
    assert_eq!(a.read_source(Extent(2)), ReadSource::Local);
    a.check_invariants();
}

#[test]
fn a_granting_node_records_the_claim_and_pulls_reads() {
    let mut b = ReplicaState::new(geometry(16), knobs(8, 0, false));
    let outcomes = b.on_claim_request(&[Extent(3), Extent(4)], Epoch(0));
    assert_eq!(outcomes, vec![ClaimOutcome::Granted(Epoch(1)), ClaimOutcome::Granted(Epoch(2))]);
    assert!(b.take_record_changed(), "a grant must be persisted before the reply");
    assert_eq!(b.read_source(Extent(3)), ReadSource::Peer);
    assert_eq!(b.read_source(Extent(5)), ReadSource::Local);
    assert!(!b.can_serve_pull(Extent(3)));
    b.check_invariants();
}

#[test]
fn sequential_streams_are_predicted_and_prediction_grows() {
    let t = Instant::now();
    let mut a = ReplicaState::new(geometry(1024), knobs(512, 8, true));
    let WriteAccess::Claim(first) = a.begin_write(0..=0, t) else { panic!() };
    assert_eq!(first, vec![Extent(0)], "a first write predicts nothing");
    granted(&mut a, &first, t);
    let WriteAccess::Claim(second) = a.begin_write(1..=1, t) else { panic!() };
    assert_eq!(second.len(), 1 + 16, "a sequential run claims predict << run");
    granted(&mut a, &second, t);
    let next = second.last().unwrap().0 + 1;
    let WriteAccess::Claim(third) = a.begin_write(next..=next, t) else { panic!() };
    assert!(third.len() > second.len(), "prediction grows along a stream");
    a.check_invariants();
}

#[test]
fn random_writes_do_not_over_predict() {
    let t = Instant::now();
    let mut a = ReplicaState::new(geometry(1024), knobs(512, 0, true));
    assert_eq!(a.begin_write(7..=7, t), WriteAccess::Claim(vec![Extent(7)]));
}

#[test]
fn the_limit_releases_the_least_recently_written_durable_extent() {
    let t0 = Instant::now();
    let mut a = ReplicaState::new(geometry(16), knobs(2, 0, true));
    for (i, e) in [0u64, 1].into_iter().enumerate() {
        let t = t0 + Duration::from_millis(i as u64);
        assert!(matches!(a.begin_write(e..=e, t), WriteAccess::Claim(_)));
        granted(&mut a, &[Extent(e)], t);
        assert_eq!(a.begin_write(e..=e, t), WriteAccess::Admitted);
        a.end_write(e * EXTENT, BLOCK, t);
    }
    // Both extents have un-durable blocks: a third claim must wait.
    assert_eq!(a.begin_write(5..=5, t0), WriteAccess::Wait);
    // The copy stream makes both durable; the older one is released.
    while let Some(run) = a.next_copy(64) {
        a.on_copy_durable(run.seq);
    }
    assert!(matches!(a.begin_write(5..=5, t0), WriteAccess::Claim(_)));
    assert_eq!(a.take_releases(), vec![ExtentClaim { extent: Extent(0), epoch: Epoch(1) }]);
    assert_eq!(a.figures().owned_extents, 1);
    a.check_invariants();
}

#[test]
fn release_waits_for_durability_and_idleness() {
    let t = Instant::now();
    let mut a = ReplicaState::new(geometry(16), knobs(8, 0, true));
    a.begin_write(1..=1, t);
    granted(&mut a, &[Extent(1)], t);
    assert_eq!(a.begin_write(1..=1, t), WriteAccess::Admitted);
    a.end_write(EXTENT, 2 * BLOCK, t);
    assert_eq!(a.release_idle(t + Duration::from_secs(5)), 0, "un-durable blocks pin the extent");
    let run = a.next_copy(64).unwrap();
    assert_eq!(run.count, 2, "adjacent blocks travel as one run");
    assert_eq!(a.release_idle(t + Duration::from_secs(5)), 0, "sent is not durable");
    a.on_copy_durable(run.seq);
    assert_eq!(a.release_idle(t + Duration::from_millis(500)), 0, "not idle long enough");
    assert_eq!(a.release_idle(t + Duration::from_secs(5)), 1);
    a.check_invariants();
}

#[test]
fn a_block_rewritten_while_in_flight_stays_dirty() {
    let t = Instant::now();
    let mut a = ReplicaState::new(geometry(16), knobs(8, 0, true));
    a.begin_write(0..=0, t);
    granted(&mut a, &[Extent(0)], t);
    a.begin_write(0..=0, t);
    a.end_write(0, BLOCK, t);
    let first = a.next_copy(64).unwrap();
    a.begin_write(0..=0, t);
    a.end_write(0, BLOCK, t);
    a.on_copy_durable(first.seq);
    assert_eq!(a.figures().not_durable_blocks, 1, "the newer write has not reached the peer");
    let second = a.next_copy(64).unwrap();
    a.on_copy_durable(second.seq);
    assert_eq!(a.figures().not_durable_blocks, 0);
    a.check_invariants();
}

#[test]
fn write_combining_sends_a_block_once() {
    let t = Instant::now();
    let mut a = ReplicaState::new(geometry(16), knobs(8, 0, true));
    a.begin_write(0..=0, t);
    granted(&mut a, &[Extent(0)], t);
    for _ in 0..10 {
        a.begin_write(0..=0, t);
        a.end_write(0, BLOCK, t);
    }
    let run = a.next_copy(64).unwrap();
    assert_eq!(run.count, 1);
    assert!(a.next_copy(64).is_none(), "ten writes of one block make one copy");
}

#[test]
fn handover_waits_for_writes_then_gives_unsent_blocks() {
    let t = Instant::now();
    let mut a = ReplicaState::new(geometry(16), knobs(8, 0, true));
    a.begin_write(0..=0, t);
    granted(&mut a, &[Extent(0)], t);
    assert_eq!(a.begin_write(0..=0, t), WriteAccess::Admitted);
    assert_eq!(a.on_handover_request(Extent(0), Epoch(0)), HandoverStep::WaitForWrites);
    assert_eq!(a.begin_write(0..=0, t), WriteAccess::Wait, "no new writes while handing out");
    a.end_write(BLOCK, BLOCK, t);
    match a.on_handover_request(Extent(0), Epoch(0)) {
        HandoverStep::Give { epoch, blocks } => {
            assert_eq!(epoch, Epoch(2));
            assert_eq!(blocks, vec![BlockIndex(1)]);
        }
        other => panic!("{other:?}"),
    }
    assert_eq!(a.read_source(Extent(0)), ReadSource::Peer);
    assert_eq!(a.figures().not_durable_blocks, 0);
    a.check_invariants();
}

#[test]
fn a_stale_release_does_not_undo_a_newer_claim() {
    let mut b = ReplicaState::new(geometry(16), knobs(8, 0, false));
    let first = b.on_claim_request(&[Extent(1)], Epoch(0));
    assert_eq!(first, vec![ClaimOutcome::Granted(Epoch(1))]);
    // The peer released epoch 1 and claimed again; the claim overtook the release.
    let second = b.on_claim_request(&[Extent(1)], Epoch(1));
    assert_eq!(second, vec![ClaimOutcome::Granted(Epoch(2))]);
    b.on_release(&[ExtentClaim { extent: Extent(1), epoch: Epoch(1) }]);
    assert_eq!(b.read_source(Extent(1)), ReadSource::Peer, "the stale release must be ignored");
    b.on_release(&[ExtentClaim { extent: Extent(1), epoch: Epoch(2) }]);
    assert_eq!(b.read_source(Extent(1)), ReadSource::Local);
}

#[test]
fn stale_copies_after_a_handover_are_dropped() {
    let t = Instant::now();
    let mut b = ReplicaState::new(geometry(16), knobs(8, 0, false));
    b.on_claim_request(&[Extent(0)], Epoch(0));
    assert!(b.accept_copy(Extent(0), Epoch(1)));
    assert_eq!(b.begin_write(0..=0, t), WriteAccess::Handover(Extent(0)));
    assert!(b.accept_copy(Extent(0), Epoch(1)), "copies keep flowing while we wait");
    b.on_handover_reply(Extent(0), Some(Epoch(2)), Epoch(2), t);
    assert!(!b.accept_copy(Extent(0), Epoch(1)), "an old-epoch copy must not overwrite our writes");
}

#[test]
fn concurrent_claims_are_resolved_by_the_tie_breaker() {
    let t = Instant::now();
    let mut a = ReplicaState::new(geometry(16), knobs(8, 0, true));
    let mut b = ReplicaState::new(geometry(16), knobs(8, 0, false));
    assert_eq!(a.begin_write(4..=4, t), WriteAccess::Claim(vec![Extent(4)]));
    assert_eq!(b.begin_write(4..=4, t), WriteAccess::Claim(vec![Extent(4)]));
    let to_a = a.on_claim_request(&[Extent(4)], b.counter());
    let to_b = b.on_claim_request(&[Extent(4)], a.counter());
    assert_eq!(to_a, vec![ClaimOutcome::Declined], "the winner declines the loser");
    assert!(matches!(to_b[0], ClaimOutcome::Granted(_)), "the loser grants the winner");
    b.on_claim_reply(&[Extent(4)], &to_a, a.counter(), t);
    a.on_claim_reply(&[Extent(4)], &to_b, b.counter(), t);
    assert_eq!(a.begin_write(4..=4, t), WriteAccess::Admitted);
    assert_eq!(b.read_source(Extent(4)), ReadSource::Peer);
}

#[test]
fn sync_adopts_what_the_peer_records_as_ours() {
    let t = Instant::now();
    let mut a = ReplicaState::new(geometry(16), knobs(8, 0, true));
    a.on_sync(
        Epoch(9),
        &[ExtentClaim { extent: Extent(1), epoch: Epoch(3) }],
        &[ExtentClaim { extent: Extent(2), epoch: Epoch(9) }],
        &[],
        t,
    );
    assert_eq!(a.read_source(Extent(1)), ReadSource::Peer);
    assert_eq!(a.begin_write(2..=2, t), WriteAccess::Admitted, "an adopted extent is owned");
    assert_eq!(a.figures().unsent_blocks, 4, "and every block of it is re-sent");
    assert_eq!(a.counter(), Epoch(9));
    a.check_invariants();
}

#[test]
fn restore_marks_own_claims_suspect() {
    let t = Instant::now();
    let a = ReplicaState::restore(
        geometry(16),
        knobs(8, 0, true),
        Epoch(5),
        &[ExtentClaim { extent: Extent(0), epoch: Epoch(4) }],
        &[ExtentClaim { extent: Extent(3), epoch: Epoch(5) }],
        &[],
        t,
    );
    assert_eq!(a.figures().not_durable_blocks, 4);
    assert_eq!(a.read_source(Extent(3)), ReadSource::Peer);
    let (own, record) = a.snapshot();
    assert_eq!(own.len(), 1);
    assert_eq!(record.len(), 1);
}

// ---------------------------------------------------------------- simulation

mod simulation;
