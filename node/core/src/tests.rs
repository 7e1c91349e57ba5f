//! Table tests of the core: the claims state machine step by step, and the
//! node's ordering rules as seen from its outputs (what leaves, in which
//! order, only after which completion). The deterministic simulator
//! (`geomirror-dst`) checks the same rules under random interleavings and
//! faults.

use std::time::Duration;

use bytes::Bytes;
use geomirror_config::{PeerLossPolicy, ReplicationMode};
use geomirror_wire::peer::{
    BlockIndex, ClaimOutcome, CopyItem, CopyReport, CopySeq, Epoch, Extent, ExtentClaim, Lane, Message, RequestId, VolumeIndex,
};

use crate::claims::{Claims, ExtentState, PeerAccess, PeerView, ReadSource, WaitReason, WriteAccess};
use crate::claims_file::{ClaimsFileContents, ClaimsWrite};
use crate::config::{CoreConfig, Knobs, VolumeSettings};
use crate::geometry::Geometry;
use crate::ids::{HostRequestId, SessionGen};
use crate::io::{HostRequest, Input, IoOp, IoOutcome, Output, Role};
use crate::node::NodeCore;
use crate::time::Time;

const BLOCK: u64 = 4096;
const EXTENT: u64 = 4 * BLOCK;

fn settings(extents: u64, max_owned: usize, predict: u32) -> VolumeSettings {
    VolumeSettings {
        name: "vol0".into(),
        geometry: Geometry { block_bytes: BLOCK, extent_bytes: EXTENT, size: extents * EXTENT },
        knobs: Knobs { max_owned, predict, release_after: Duration::from_secs(1) },
        mode: ReplicationMode::Async,
        on_peer_loss: PeerLossPolicy::Suspend,
    }
}

fn t(ms: u64) -> Time {
    Time::from_nanos(ms * 1_000_000)
}

fn granted(c: &mut Claims, extents: &[Extent], first_epoch: u64, now: Time) {
    let outcomes: Vec<_> = (0..extents.len()).map(|i| ClaimOutcome::Granted(Epoch(first_epoch + i as u64))).collect();
    let claim = c.last_claim();
    c.on_claim_reply(claim, extents, &outcomes, Epoch(first_epoch + extents.len() as u64), now, &[]);
}

/// A peer's sync view without outage news.
fn view<'a>(counter: u64, own: &'a [ExtentClaim], record: &'a [ExtentClaim], gives: &'a [ExtentClaim]) -> PeerView<'a> {
    PeerView { counter: Epoch(counter), own, record, gives, generation: 0, taken: &[] }
}

fn own(c: &mut Claims, e: u64, now: Time) {
    assert_eq!(c.begin_write(e..=e, now, PeerAccess::Ready), WriteAccess::Claim(vec![Extent(e)]));
    granted(c, &[Extent(e)], e + 1, now);
}

#[test]
fn a_first_write_claims_then_is_admitted_without_a_round_trip() {
    let mut a = Claims::new(&settings(16, 8, 0), true);
    assert_eq!(a.begin_write(2..=2, t(0), PeerAccess::Ready), WriteAccess::Claim(vec![Extent(2)]));
    assert_eq!(
        a.begin_write(2..=2, t(0), PeerAccess::Ready),
        WriteAccess::Wait(WaitReason::PeerAnswer),
        "a second writer waits for the claim"
    );
    granted(&mut a, &[Extent(2)], 1, t(0));
    assert_eq!(a.begin_write(2..=2, t(0), PeerAccess::Unavailable), WriteAccess::Admitted, "an owned extent needs no peer");
    a.end_write(2 * EXTENT, BLOCK, t(0));
    assert_eq!(a.figures().unsent_blocks, 1);
    assert_eq!(a.read_source(Extent(2)), ReadSource::Local);
    a.check();
}

#[test]
fn without_a_session_a_clean_extent_waits_and_nothing_changes() {
    let mut a = Claims::new(&settings(16, 8, 0), true);
    assert_eq!(a.begin_write(3..=3, t(0), PeerAccess::Unavailable), WriteAccess::Wait(WaitReason::Session));
    assert!(a.extent(Extent(3)).is_none(), "no claim was started");
}

#[test]
fn a_granting_node_records_the_claim_and_pulls_reads() {
    let mut b = Claims::new(&settings(16, 8, 0), false);
    let v0 = b.file_version();
    let outcomes = b.on_claim_request(&[Extent(3), Extent(4)], Epoch(0));
    assert_eq!(outcomes, vec![ClaimOutcome::Granted(Epoch(1)), ClaimOutcome::Granted(Epoch(2))]);
    assert!(b.file_version() > v0, "a grant changes the claims file (it must be written before the reply)");
    assert_eq!(b.read_source(Extent(3)), ReadSource::Peer);
    assert_eq!(b.read_source(Extent(5)), ReadSource::Local);
    assert!(!b.can_serve_pull(Extent(3)));
    b.check();
}

#[test]
fn sequential_streams_are_predicted_and_prediction_grows_but_fits_a_claim() {
    let mut a = Claims::new(&settings(100_000, 20_000, 64), true);
    let WriteAccess::Claim(first) = a.begin_write(0..=0, t(0), PeerAccess::Ready) else { panic!() };
    assert_eq!(first, vec![Extent(0)], "a first write predicts nothing");
    granted(&mut a, &first, 1, t(0));
    let mut next = 1;
    let mut last_len = 0;
    for round in 0..10 {
        let access = a.begin_write(next..=next, t(0), PeerAccess::Ready);
        let WriteAccess::Claim(claim) = access else {
            assert_eq!(access, WriteAccess::Wait(WaitReason::Limit), "only the limit stops a stream");
            break;
        };
        if round < 6 {
            assert!(claim.len() > last_len, "prediction grows along a stream: {} after {last_len}", claim.len());
        }
        assert!(claim.len() <= crate::limits::CLAIM_EXTENTS_MAX, "a claim of {} extents does not fit one message", claim.len());
        last_len = claim.len();
        let epoch = a.counter().0 + 1;
        granted(&mut a, &claim, epoch, t(0));
        next = claim.last().unwrap().0 + 1;
    }
    assert!(last_len > 64, "a long stream claims far ahead");
    assert!(a.figures().budget_used <= 20_000, "and never past the limit");
    a.check();
}

#[test]
fn at_the_limit_the_least_recently_written_durable_extent_is_released() {
    let mut a = Claims::new(&settings(16, 2, 0), true);
    own(&mut a, 0, t(0));
    own(&mut a, 1, t(1));
    a.note_sync_issued(1);
    a.note_sync_done(1);
    let WriteAccess::Claim(c) = a.begin_write(5..=5, t(2), PeerAccess::Ready) else { panic!("expected a claim") };
    assert_eq!(c, vec![Extent(5)]);
    assert!(a.extent(Extent(0)).is_none(), "extent 0 (written first) was released to make room");
    assert_eq!(a.unconfirmed_releases(), vec![ExtentClaim { extent: Extent(0), epoch: Epoch(1) }], "the release rides on the claim");
    a.check();
}

#[test]
fn at_the_limit_nothing_is_released_before_it_is_durable_at_the_peer_and_here() {
    let mut a = Claims::new(&settings(16, 1, 0), true);
    own(&mut a, 0, t(0));
    assert_eq!(a.begin_write(0..=0, t(0), PeerAccess::Ready), WriteAccess::Admitted);
    a.end_write(0, BLOCK, t(0));
    assert_eq!(a.begin_write(5..=5, t(1), PeerAccess::Ready), WriteAccess::Wait(WaitReason::Limit), "extent 0 is not durable at the peer");
    let (seq, _) = a.next_copy_batch(256, 64).unwrap();
    a.on_copy_durable(seq);
    assert_eq!(a.begin_write(5..=5, t(1), PeerAccess::Ready), WriteAccess::Wait(WaitReason::Limit), "not yet synced here");
    assert!(a.needs_sync_for_release(t(1)), "the limit asks for a store sync");
    a.note_sync_issued(1);
    a.note_sync_done(1);
    assert!(matches!(a.begin_write(5..=5, t(1), PeerAccess::Ready), WriteAccess::Claim(_)));
    a.check();
}

#[test]
fn make_room_never_releases_an_extent_the_write_itself_needs() {
    let mut a = Claims::new(&settings(16, 2, 0), true);
    own(&mut a, 3, t(0));
    own(&mut a, 9, t(1));
    a.note_sync_issued(1);
    a.note_sync_done(1);
    // A write over extents 3..=4 needs 3 kept: extent 9 goes instead.
    assert!(matches!(a.begin_write(3..=4, t(2), PeerAccess::Ready), WriteAccess::Claim(c) if c == vec![Extent(4)]));
    assert!(matches!(a.extent(Extent(3)), Some(ExtentState::Owned(_))));
    assert!(a.extent(Extent(9)).is_none());
}

#[test]
fn idle_release_waits_for_durability_and_idleness() {
    let mut a = Claims::new(&settings(16, 8, 0), true);
    own(&mut a, 1, t(0));
    assert_eq!(a.begin_write(1..=1, t(0), PeerAccess::Ready), WriteAccess::Admitted);
    a.end_write(EXTENT, BLOCK, t(0));
    a.note_sync_issued(1);
    a.note_sync_done(1);
    assert_eq!(a.release_idle(t(5000)), 0, "not durable at the peer yet");
    let (seq, _) = a.next_copy_batch(256, 64).unwrap();
    a.on_copy_durable(seq);
    assert_eq!(a.release_idle(t(500)), 0, "not idle long enough");
    assert_eq!(a.release_idle(t(5000)), 1);
    assert_eq!(a.take_releases(a.file_version() - 1), vec![], "a release leaves only once the claims file without the extent is durable");
    assert_eq!(a.take_releases(a.file_version()), vec![ExtentClaim { extent: Extent(1), epoch: Epoch(2) }]);
}

#[test]
fn a_request_carries_no_more_releases_than_the_peer_accepts_and_the_rest_follow() {
    let n = crate::limits::CLAIM_EXTENTS_MAX as u64 + 904;
    let mut a = Claims::new(&settings(n + 1, n as usize + 1, 0), true);
    for e in 0..n {
        own(&mut a, e, t(0));
    }
    a.note_sync_issued(1);
    a.note_sync_done(1);
    assert_eq!(a.release_idle(t(5000)), n as usize);
    let carried = a.releases_to_carry();
    assert_eq!(carried.len(), crate::limits::CLAIM_EXTENTS_MAX, "one request carries at most what the peer accepts");
    assert_eq!(carried[0], ExtentClaim { extent: Extent(0), epoch: Epoch(1) }, "the oldest first");
    assert_eq!(a.unconfirmed_releases().len() as u64, n, "every release stays until confirmed");
    a.confirm_releases(&carried);
    assert_eq!(a.releases_to_carry().len(), 904, "the rest ride on the next request");
}

#[test]
fn write_combining_sends_a_block_once_and_a_rewrite_in_flight_stays_dirty() {
    let mut a = Claims::new(&settings(16, 8, 0), true);
    own(&mut a, 0, t(0));
    for _ in 0..5 {
        assert_eq!(a.begin_write(0..=0, t(0), PeerAccess::Ready), WriteAccess::Admitted);
        a.end_write(0, BLOCK, t(0));
    }
    let (seq, runs) = a.next_copy_batch(256, 64).unwrap();
    assert_eq!(runs.len(), 1);
    assert_eq!(runs[0].count, 1, "five writes of one block, one copy");
    assert_eq!(a.begin_write(0..=0, t(0), PeerAccess::Ready), WriteAccess::Admitted);
    a.end_write(0, BLOCK, t(0));
    a.on_copy_durable(seq);
    assert_eq!(a.figures().not_durable_blocks, 1, "the rewrite is not durable at the peer");
    a.check();
}

#[test]
fn a_handover_waits_for_writes_then_gives_what_the_requester_lacks() {
    let mut a = Claims::new(&settings(16, 8, 0), true);
    own(&mut a, 2, t(0));
    assert_eq!(a.begin_write(2..=2, t(0), PeerAccess::Ready), WriteAccess::Admitted);
    assert_eq!(a.on_handover_request(Extent(2), Epoch(0)), crate::claims::HandoverStep::WaitForWrites);
    assert_eq!(a.begin_write(2..=2, t(0), PeerAccess::Ready), WriteAccess::Wait(WaitReason::Busy), "new writes wait for the give");
    a.end_write(2 * EXTENT + BLOCK, BLOCK, t(0));
    let crate::claims::HandoverStep::Read { runs } = a.on_handover_request(Extent(2), Epoch(0)) else { panic!() };
    assert_eq!(runs, vec![(BlockIndex(9), 1)]);
    let epoch = a.commit_give(Extent(2)).unwrap();
    assert_eq!(a.extent(Extent(2)).map(|s| matches!(s, ExtentState::PeerOwned { .. })), Some(true));
    assert_eq!(a.gives(), vec![ExtentClaim { extent: Extent(2), epoch }]);
    assert_eq!(a.figures().not_durable_blocks, 0, "the given blocks left our tracking");
    a.check();
}

#[test]
fn a_handover_asked_while_the_extent_is_being_received_waits_instead_of_not_owner() {
    let mut a = Claims::new(&settings(16, 8, 0), true);
    a.on_claim_request(&[Extent(4)], Epoch(0));
    assert_eq!(a.begin_write(4..=4, t(0), PeerAccess::Ready), WriteAccess::Handover(Extent(4)));
    assert!(a.on_handover_granted(Extent(4), Epoch(2), true));
    assert_eq!(a.on_handover_request(Extent(4), Epoch(2)), crate::claims::HandoverStep::WaitForWrites);
}

#[test]
fn a_stale_release_does_not_undo_a_newer_claim() {
    let mut b = Claims::new(&settings(16, 8, 0), false);
    b.on_claim_request(&[Extent(1)], Epoch(0));
    b.on_claim_request(&[Extent(1)], Epoch(0));
    b.on_release(&[ExtentClaim { extent: Extent(1), epoch: Epoch(1) }]);
    assert_eq!(b.read_source(Extent(1)), ReadSource::Peer, "the release of epoch 1 was overtaken by the grant of epoch 2");
    b.on_release(&[ExtentClaim { extent: Extent(1), epoch: Epoch(2) }]);
    assert_eq!(b.read_source(Extent(1)), ReadSource::Local);
}

#[test]
fn a_release_that_overtakes_the_last_sync_answer_is_not_taken_back_by_it() {
    // Found by the simulator (seed 4568): the peer answered the last sync
    // round listing extent 1 as its own, then released it on the bulk lane;
    // the release arrived first, and merging the answer made the peer the
    // owner again for good (neither side held it any more).
    let claim = ExtentClaim { extent: Extent(1), epoch: Epoch(1) };
    let answer = |b: &mut Claims| {
        let own = [claim];
        b.on_sync(&view(1, &own, &[], &[]), t(1));
    };
    let mut b = Claims::new(&settings(16, 8, 0), false);
    b.on_claim_request(&[Extent(1)], Epoch(0));
    b.on_release_during_sync(&[claim]);
    answer(&mut b);
    assert!(b.extent(Extent(1)).is_none(), "still released: {:?}", b.extent(Extent(1)));
    b.check();
    // Once the session is ready the memory is gone: a later answer (a new
    // session, the peer owning it again) is merged as before.
    b.forget_releases_during_sync();
    answer(&mut b);
    assert!(matches!(b.extent(Extent(1)), Some(ExtentState::PeerOwned { epoch: Epoch(1) })));
}

#[test]
fn a_release_crossing_our_handover_request_keeps_it_pending() {
    let mut b = Claims::new(&settings(16, 8, 0), false);
    b.on_claim_request(&[Extent(1)], Epoch(0));
    assert_eq!(b.begin_write(1..=1, t(0), PeerAccess::Ready), WriteAccess::Handover(Extent(1)));
    b.on_release(&[ExtentClaim { extent: Extent(1), epoch: Epoch(1) }]);
    assert!(matches!(b.extent(Extent(1)), Some(ExtentState::Acquiring { released: true, .. })), "the request's answer settles it");
    assert_eq!(b.read_source(Extent(1)), ReadSource::Local, "the peer's data is here");
    b.on_handover_declined(Extent(1), Epoch(1));
    assert!(b.extent(Extent(1)).is_none());
}

#[test]
fn stale_copies_after_a_handover_are_dropped() {
    let mut a = Claims::new(&settings(16, 8, 0), true);
    a.on_claim_request(&[Extent(3)], Epoch(0));
    assert!(a.accepts_copy(Extent(3), Epoch(1)));
    assert_eq!(a.begin_write(3..=3, t(0), PeerAccess::Ready), WriteAccess::Handover(Extent(3)));
    assert!(a.on_handover_granted(Extent(3), Epoch(5), true));
    assert!(!a.accepts_copy(Extent(3), Epoch(1)), "copies of the old epoch are stale once the handover arrived");
}

#[test]
fn concurrent_claims_are_resolved_by_the_tie_breaker() {
    let mut a = Claims::new(&settings(16, 8, 0), true);
    let mut b = Claims::new(&settings(16, 8, 0), false);
    assert!(matches!(a.begin_write(6..=6, t(0), PeerAccess::Ready), WriteAccess::Claim(_)));
    assert!(matches!(b.begin_write(6..=6, t(0), PeerAccess::Ready), WriteAccess::Claim(_)));
    assert_eq!(a.on_claim_request(&[Extent(6)], Epoch(0)), vec![ClaimOutcome::Declined], "the winner declines");
    assert_eq!(b.on_claim_request(&[Extent(6)], Epoch(0)), vec![ClaimOutcome::Granted(Epoch(1))], "the other concedes");
}

#[test]
fn the_answer_to_an_older_claim_does_not_settle_a_newer_claim_of_the_same_extent() {
    // Found by the simulator (seed 961 of the outage batch): a stale
    // "declined" freed the extent while a newer claim of it was on its way,
    // a third claim followed, and the peer recorded an epoch we never owned.
    let mut a = Claims::new(&settings(16, 8, 0), false);
    assert_eq!(a.begin_write(2..=2, t(0), PeerAccess::Ready), WriteAccess::Claim(vec![Extent(2)]));
    let first = a.last_claim();
    // The peer's crossing claim wins the tie; then the peer releases it.
    assert!(matches!(a.on_claim_request(&[Extent(2)], Epoch(0))[0], ClaimOutcome::Granted(_)));
    let Some(ExtentState::PeerOwned { epoch }) = a.extent(Extent(2)).cloned() else { panic!() };
    a.on_release(&[ExtentClaim { extent: Extent(2), epoch }]);
    assert_eq!(a.begin_write(2..=2, t(1), PeerAccess::Ready), WriteAccess::Claim(vec![Extent(2)]));
    let second = a.last_claim();
    a.on_claim_reply(first, &[Extent(2)], &[ClaimOutcome::Declined], Epoch(3), t(2), &[]);
    assert!(matches!(a.extent(Extent(2)), Some(ExtentState::Claiming)), "the newer claim is still pending");
    a.on_claim_reply(second, &[Extent(2)], &[ClaimOutcome::Granted(Epoch(4))], Epoch(4), t(3), &[]);
    assert!(matches!(a.extent(Extent(2)), Some(ExtentState::Owned(o)) if o.epoch == Epoch(4)));
    a.check();
}

#[test]
fn a_claim_lost_with_the_link_keeps_its_budget_until_the_sync_says() {
    let mut a = Claims::new(&settings(16, 1, 0), true);
    assert!(matches!(a.begin_write(2..=2, t(0), PeerAccess::Ready), WriteAccess::Claim(_)));
    a.on_claim_lost(&[Extent(2)]);
    assert!(matches!(a.extent(Extent(2)), Some(ExtentState::ClaimUnknown)));
    assert_eq!(
        a.begin_write(7..=7, t(0), PeerAccess::Ready),
        WriteAccess::Wait(WaitReason::Limit),
        "the lost claim still takes the budget"
    );
    // The peer granted it before the link dropped: adopted, nothing to resend.
    a.on_sync(&view(3, &[], &[ExtentClaim { extent: Extent(2), epoch: Epoch(3) }], &[]), t(1));
    assert!(matches!(a.extent(Extent(2)), Some(ExtentState::Owned(_))));
    assert_eq!(a.figures().unsent_blocks, 0, "never written under it: nothing to send");
    a.check();
}

#[test]
fn two_sites_that_both_claimed_alone_end_with_one_owner_and_the_other_saving_its_blocks() {
    // No witness, and an operator at each site said the other was down:
    // both claim extent 3 alone, from the same counter and generation.
    let (mut a, mut b) = (Claims::new(&settings(16, 8, 0), true), Claims::new(&settings(16, 8, 0), false));
    for c in [&mut a, &mut b] {
        c.set_generation(1);
        assert_eq!(c.begin_write(3..=3, t(0), PeerAccess::Alone), WriteAccess::Wait(WaitReason::File));
    }
    let (a_contents, b_contents) = (a.file_contents(), b.file_contents());
    assert_eq!(a_contents.taken, b_contents.taken, "the same extent at the same epoch: a tie");
    fn peer_view(c: &ClaimsFileContents) -> PeerView<'_> {
        PeerView { counter: c.counter, own: &c.own, record: &c.record, gives: &c.gives, generation: c.generation, taken: &c.taken }
    }
    // The session-start sync, both ways.
    a.on_sync(&peer_view(&b_contents), t(1));
    b.on_sync(&peer_view(&a_contents), t(1));
    assert!(matches!(a.extent(Extent(3)), Some(ExtentState::Owned(_))), "the tie-breaker keeps it");
    assert!(matches!(b.extent(Extent(3)), Some(ExtentState::PeerOwned { .. })), "the other gives it up");
    assert!(a.conflicts().is_empty());
    assert_eq!(b.conflicts().keys().copied().collect::<Vec<_>>(), vec![Extent(3)], "its blocks are saved before A's data lands");
    a.check();
    b.check();
}

#[test]
fn a_sync_adopts_what_the_peer_records_as_ours_to_be_compared() {
    let mut a = Claims::new(&settings(16, 8, 0), true);
    a.on_sync(&view(9, &[], &[ExtentClaim { extent: Extent(5), epoch: Epoch(9) }], &[]), t(0));
    assert!(matches!(a.extent(Extent(5)), Some(ExtentState::Owned(o)) if o.epoch == Epoch(9) && o.suspect));
    assert_eq!(a.suspects(), vec![Extent(5)], "which blocks the peer lacks is found by comparing checksums");
    assert_eq!(a.release_idle(t(60_000)), 0, "not released before the comparison");
    a.resolve_suspect(Extent(5), &[(21, 2)]);
    assert_eq!(a.figures().unsent_blocks, 2, "only the blocks that differ are sent");
    a.check();
}

#[test]
fn a_sync_revokes_a_give_never_applied_and_the_giver_takes_it_back() {
    let mut requester = Claims::new(&settings(16, 8, 0), false);
    requester.on_claim_request(&[Extent(2)], Epoch(0));
    assert_eq!(requester.begin_write(2..=2, t(0), PeerAccess::Ready), WriteAccess::Handover(Extent(2)));
    requester.on_handover_failed(Extent(2));
    let revoked = requester.on_sync(&view(2, &[], &[], &[ExtentClaim { extent: Extent(2), epoch: Epoch(2) }]), t(0));
    assert_eq!(revoked, vec![Extent(2)]);
    let Some(ExtentState::PeerOwned { epoch }) = requester.extent(Extent(2)).cloned() else { panic!() };
    assert!(epoch > Epoch(2), "revoked at a fresh epoch, which the giver adopts from our record");
}

#[test]
fn restore_marks_own_claims_suspect_and_keeps_the_record() {
    let file = ClaimsFileContents {
        counter: Epoch(7),
        generation: 2,
        own: vec![ExtentClaim { extent: Extent(1), epoch: Epoch(5) }],
        record: vec![ExtentClaim { extent: Extent(3), epoch: Epoch(6) }],
        gives: vec![],
        released: vec![ExtentClaim { extent: Extent(9), epoch: Epoch(4) }],
        taken: vec![ExtentClaim { extent: Extent(1), epoch: Epoch(5) }],
        detached: false,
    };
    let a = Claims::restore(&settings(16, 8, 0), true, &file, t(0));
    assert_eq!(a.suspects(), vec![Extent(1)], "own claims are compared with the peer before anything is released");
    assert_eq!(a.figures().unsent_blocks, 0);
    assert!(a.has_taken() && a.resync_pending());
    assert_eq!(a.read_source(Extent(3)), ReadSource::Peer);
    assert_eq!(a.unconfirmed_releases(), vec![ExtentClaim { extent: Extent(9), epoch: Epoch(4) }]);
    assert_eq!(a.file_contents(), file, "the state's file is the file it came from");
    a.check();
}

// ------------------------------------------------------------ the node's ordering rules

fn config(wins_ties: bool) -> CoreConfig {
    CoreConfig {
        node: if wins_ties { "site-a".into() } else { "site-b".into() },
        wins_ties,
        peer_timeout: Duration::from_secs(1),
        heartbeat_interval: Duration::from_millis(100),
        heartbeat_timeout: Duration::from_millis(300),
        witness: None,
        volumes: vec![settings(16, 8, 0)],
    }
}

const S: SessionGen = SessionGen(1);
const V: VolumeIndex = VolumeIndex(0);

fn drain(core: &mut NodeCore) -> Vec<Output> {
    std::iter::from_fn(|| core.poll_output()).collect()
}

fn sends(outputs: &[Output]) -> Vec<&Message> {
    outputs.iter().filter_map(|o| if let Output::Send { message, .. } = o { Some(message) } else { None }).collect()
}

/// An accepter whose session is synced (two rounds answered).
fn ready_accepter() -> NodeCore {
    ready_accepter_in(ReplicationMode::Async, PeerLossPolicy::Suspend)
}

/// Session `session` comes up at accepter `b` and the peer's two sync
/// rounds (request ids `first_id`, +1) say it believes `b` owns `record`.
fn sync_session(b: &mut NodeCore, at: Time, session: SessionGen, first_id: u64, record: Vec<ExtentClaim>) -> Vec<Output> {
    b.handle(at, Input::LinkUp { session, role: Role::Accepter, volume_errors: vec![None] });
    b.handle(at, Input::BulkUp { session });
    let counter = Epoch(record.iter().map(|c| c.epoch.0).max().unwrap_or(0));
    for id in first_id..first_id + 2 {
        let sync = Message::Sync {
            id: RequestId(id),
            volume: V,
            counter,
            own: vec![],
            record: record.clone(),
            gives: vec![],
            generation: 0,
            taken: vec![],
        };
        b.handle(at, Input::Frame { session, lane: Lane::Priority, message: sync });
    }
    drain(b)
}

#[test]
fn a_grant_leaves_only_after_the_claims_file_that_records_it_is_durable() {
    let mut b = ready_accepter();
    let claim = Message::Claim { id: RequestId(7), volume: V, counter: Epoch(0), extents: vec![Extent(1)], releases: vec![] };
    b.handle(t(1), Input::Frame { session: S, lane: Lane::Priority, message: claim });
    let out = drain(&mut b);
    assert!(sends(&out).is_empty(), "no reply before the persist: {out:?}");
    let token = out
        .iter()
        .find_map(|o| {
            if let Output::Io { token, op: IoOp::Persist { write }, .. } = o {
                let recorded = match write {
                    ClaimsWrite::Full(contents) => contents.record.clone(),
                    ClaimsWrite::Delta(delta) => delta
                        .entries
                        .iter()
                        .filter_map(|(extent, e)| e.record.map(|epoch| ExtentClaim { extent: *extent, epoch }))
                        .collect(),
                };
                assert_eq!(recorded, vec![ExtentClaim { extent: Extent(1), epoch: Epoch(1) }], "the file records the grant");
                Some(*token)
            } else {
                None
            }
        })
        .expect("a persist");
    // A heartbeat arriving meanwhile is answered after the grant, in order.
    b.handle(t(2), Input::Frame { session: S, lane: Lane::Priority, message: Message::Heartbeat { id: RequestId(8) } });
    assert!(sends(&drain(&mut b)).is_empty(), "the heartbeat's answer waits behind the reserved grant");
    b.handle(t(3), Input::IoDone { token, result: Ok(IoOutcome::Done) });
    let out = drain(&mut b);
    let sent = sends(&out);
    assert!(matches!(sent[0], Message::ClaimReply { outcomes, .. } if outcomes == &vec![ClaimOutcome::Granted(Epoch(1))]));
    assert!(matches!(sent[1], Message::HeartbeatReply { id: RequestId(8) }));
}

#[test]
fn a_failed_claims_file_write_stops_the_volume_and_grants_nothing() {
    let mut b = ready_accepter();
    let claim = Message::Claim { id: RequestId(7), volume: V, counter: Epoch(0), extents: vec![Extent(1)], releases: vec![] };
    b.handle(t(1), Input::Frame { session: S, lane: Lane::Priority, message: claim });
    let token = drain(&mut b)
        .iter()
        .find_map(|o| if let Output::Io { token, op: IoOp::Persist { .. }, .. } = o { Some(*token) } else { None })
        .unwrap();
    let fault = crate::io::IoFault { kind: crate::io::IoFaultKind::Io, message: "EIO".into() };
    b.handle(t(2), Input::IoDone { token, result: Err(fault) });
    let out = drain(&mut b);
    assert!(sends(&out).iter().any(|m| matches!(m, Message::Error { id: RequestId(7), .. })), "refused, not granted: {out:?}");
    assert!(out.iter().any(|o| matches!(o, Output::Event(crate::io::Event::VolumeStopped { .. }))));
    assert!(b.is_stopped(V));
    b.handle(t(3), Input::Host { id: HostRequestId(1), volume: V, request: HostRequest::Read { offset: 0, length: 4096 } });
    assert!(drain(&mut b).iter().any(|o| matches!(o, Output::Reply { result: Err(crate::io::HostError::NotServing(_)), .. })));
}

#[test]
fn copies_are_reported_received_then_durable_after_the_grouped_sync() {
    let mut b = accepter_that_granted_extent_1();
    b.handle(t(2), Input::Frame { session: S, lane: Lane::Bulk, message: copy_of_block_4() });
    let write = io_token(&drain(&mut b), |op| matches!(op, IoOp::Write { .. }));
    b.handle(t(2), Input::IoDone { token: write, result: Ok(IoOutcome::Done) });
    assert!(sends(&drain(&mut b)).is_empty(), "progress waits for the sync linger");
    let after_linger = t(2) + crate::limits::COPY_SYNC_LINGER;
    b.handle(after_linger, Input::Tick);
    let out = drain(&mut b);
    assert!(sends(&out).iter().any(|m| matches!(m, Message::CopyProgress { received: CopySeq(1), durable: CopySeq(0), .. })));
    let sync = io_token(&out, |op| matches!(op, IoOp::Sync));
    b.handle(after_linger + Duration::from_millis(1), Input::IoDone { token: sync, result: Ok(IoOutcome::Done) });
    assert!(sends(&drain(&mut b)).iter().any(|m| matches!(m, Message::CopyProgress { received: CopySeq(1), durable: CopySeq(1), .. })));
}

#[test]
fn a_copy_answered_for_from_memory_is_synced_after_the_short_linger() {
    use crate::limits::{ACKED_COPY_SYNC_LINGER, COPY_SYNC_LINGER};
    assert!(ACKED_COPY_SYNC_LINGER < COPY_SYNC_LINGER);
    let synced_at = |report: CopyReport| {
        let mut b = accepter_that_granted_extent_1();
        let Message::Copy { seq, volume, items, .. } = copy_of_block_4() else { unreachable!() };
        b.handle(t(2), Input::Frame { session: S, lane: Lane::Bulk, message: Message::Copy { seq, volume, items, report } });
        let write = io_token(&drain(&mut b), |op| matches!(op, IoOp::Write { .. }));
        b.handle(t(2), Input::IoDone { token: write, result: Ok(IoOutcome::Done) });
        drain(&mut b);
        let mut at = t(2);
        loop {
            at += Duration::from_millis(1);
            b.handle(at, Input::Tick);
            if drain(&mut b).iter().any(|o| matches!(o, Output::Io { op: IoOp::Sync, .. })) {
                return at.since(t(2));
            }
            assert!(at < t(2) + COPY_SYNC_LINGER * 2, "no fdatasync");
        }
    };
    assert_eq!(synced_at(CopyReport::Received), ACKED_COPY_SYNC_LINGER);
    assert_eq!(synced_at(CopyReport::Lazy), COPY_SYNC_LINGER);
}

#[test]
fn a_protocol_violation_closes_the_session_and_changes_nothing() {
    let mut b = ready_accepter();
    let bad = Message::Claim { id: RequestId(7), volume: VolumeIndex(9), counter: Epoch(0), extents: vec![Extent(1)], releases: vec![] };
    b.handle(t(1), Input::Frame { session: S, lane: Lane::Priority, message: bad });
    let out = drain(&mut b);
    assert!(out.iter().any(|o| matches!(o, Output::CloseSession { reason, .. } if reason.contains("does not exist"))), "{out:?}");
    assert!(!b.is_ready());
    assert!(b.claims(V).extents().next().is_none());
}

// ------------------------------------------------------------ disk faults

fn eio() -> crate::io::IoFault {
    crate::io::IoFault { kind: crate::io::IoFaultKind::Io, message: "EIO".into() }
}

fn io_token(out: &[Output], want: impl Fn(&IoOp) -> bool) -> crate::ids::IoToken {
    out.iter().find_map(|o| if let Output::Io { token, op, .. } = o { want(op).then_some(*token) } else { None }).expect("the I/O")
}

/// A ready accepter that granted extent 1 to the peer (epoch 1).
fn accepter_that_granted_extent_1() -> NodeCore {
    let mut b = ready_accepter();
    let claim = Message::Claim { id: RequestId(7), volume: V, counter: Epoch(0), extents: vec![Extent(1)], releases: vec![] };
    b.handle(t(1), Input::Frame { session: S, lane: Lane::Priority, message: claim });
    let token = io_token(&drain(&mut b), |op| matches!(op, IoOp::Persist { .. }));
    b.handle(t(1), Input::IoDone { token, result: Ok(IoOutcome::Done) });
    drain(&mut b);
    b
}

fn copy_of_block_4() -> Message {
    let item =
        CopyItem { extent: Extent(1), epoch: Epoch(1), first: BlockIndex(4), count: 1, data: Bytes::from(vec![1u8; BLOCK as usize]) };
    Message::Copy { seq: CopySeq(1), volume: V, items: vec![item], report: CopyReport::Lazy }
}

#[test]
fn a_failed_read_fails_that_request_with_eio_and_the_volume_keeps_serving() {
    let mut b = ready_accepter();
    b.handle(t(1), Input::Host { id: HostRequestId(1), volume: V, request: HostRequest::Read { offset: 0, length: 4096 } });
    let token = io_token(&drain(&mut b), |op| matches!(op, IoOp::Read { .. }));
    b.handle(t(2), Input::IoDone { token, result: Err(eio()) });
    let out = drain(&mut b);
    assert!(
        out.iter().any(|o| matches!(o, Output::Reply { id: HostRequestId(1), result: Err(crate::io::HostError::Store(_)) })),
        "{out:?}"
    );
    assert!(!b.is_stopped(V) && b.is_serving(V));
    assert!(b.claims(V).extents().next().is_none(), "no claim changed");
}

#[test]
fn a_copy_that_cannot_be_written_is_not_acknowledged() {
    let mut b = accepter_that_granted_extent_1();
    b.handle(t(2), Input::Frame { session: S, lane: Lane::Bulk, message: copy_of_block_4() });
    let write = io_token(&drain(&mut b), |op| matches!(op, IoOp::Write { .. }));
    b.handle(t(2), Input::IoDone { token: write, result: Err(eio()) });
    b.handle(t(50), Input::Tick);
    let out = drain(&mut b);
    assert!(!sends(&out).iter().any(|m| matches!(m, Message::CopyProgress { .. })), "nothing reported received: {out:?}");
    assert!(out.iter().any(|o| matches!(o, Output::CloseSession { .. })), "the session ends, so the peer sends it again: {out:?}");
    assert!(!b.is_stopped(V), "the volume keeps serving");
}

#[test]
fn a_failed_sync_of_copies_stops_the_volume_and_reports_nothing_durable() {
    let mut b = accepter_that_granted_extent_1();
    b.handle(t(2), Input::Frame { session: S, lane: Lane::Bulk, message: copy_of_block_4() });
    let write = io_token(&drain(&mut b), |op| matches!(op, IoOp::Write { .. }));
    b.handle(t(2), Input::IoDone { token: write, result: Ok(IoOutcome::Done) });
    let after_linger = t(2) + crate::limits::COPY_SYNC_LINGER;
    b.handle(after_linger, Input::Tick);
    let sync = io_token(&drain(&mut b), |op| matches!(op, IoOp::Sync));
    b.handle(after_linger + Duration::from_millis(1), Input::IoDone { token: sync, result: Err(eio()) });
    let out = drain(&mut b);
    assert!(!sends(&out).iter().any(|m| matches!(m, Message::CopyProgress { durable: CopySeq(1), .. })), "not durable: {out:?}");
    assert!(out.iter().any(|o| matches!(o, Output::Event(crate::io::Event::VolumeStopped { .. }))));
    assert!(b.is_stopped(V));
}

// ------------------------------------------------------------ replication modes

fn ready_accepter_in(mode: ReplicationMode, on_peer_loss: PeerLossPolicy) -> NodeCore {
    let mut c = config(false);
    c.volumes[0].mode = mode;
    c.volumes[0].on_peer_loss = on_peer_loss;
    let mut b = NodeCore::new(c, vec![ClaimsFileContents::default()], t(0));
    sync_session(&mut b, t(0), S, 1, vec![]);
    assert!(b.is_ready());
    b
}

/// Completes every I/O in `out` that `keep` does not hold back (reads
/// return zeroes), again for what those completions ask, and returns
/// everything else that came out, with the I/Os held back.
fn run_io_except(b: &mut NodeCore, now: Time, mut out: Vec<Output>, keep: impl Fn(&IoOp) -> bool) -> Vec<Output> {
    let mut rest = Vec::new();
    while !out.is_empty() {
        let mut next = Vec::new();
        for o in out {
            match o {
                Output::Io { token, op, .. } if !keep(&op) => {
                    let outcome = match &op {
                        IoOp::Read { ranges, .. } => {
                            IoOutcome::Read(ranges.iter().map(|(_, l)| Bytes::from(vec![0u8; *l as usize])).collect())
                        }
                        _ => IoOutcome::Done,
                    };
                    b.handle(now, Input::IoDone { token, result: Ok(outcome) });
                    next.extend(drain(b));
                }
                other => rest.push(other),
            }
        }
        out = next;
    }
    rest
}

fn replies(out: &[Output]) -> Vec<(HostRequestId, bool)> {
    out.iter().filter_map(|o| if let Output::Reply { id, result } = o { Some((*id, result.is_ok())) } else { None }).collect()
}

/// A node in `mode` that owns extent 1 (granted by the peer), no write yet.
fn writer_owning_extent_1(mode: ReplicationMode, on_peer_loss: PeerLossPolicy) -> NodeCore {
    let mut b = ready_accepter_in(mode, on_peer_loss);
    // A write to extent 1 claims it; in a sync mode it then waits for the
    // peer too, which this helper answers.
    let data = Bytes::from(vec![9u8; BLOCK as usize]);
    b.handle(t(1), Input::Host { id: HostRequestId(1), volume: V, request: HostRequest::Write { offset: EXTENT, data, fua: false } });
    let out = drain(&mut b);
    let id = sends(&out).iter().find_map(|m| if let Message::Claim { id, .. } = m { Some(*id) } else { None }).expect("a claim");
    let reply = Message::ClaimReply { id, counter: Epoch(1), outcomes: vec![ClaimOutcome::Granted(Epoch(1))] };
    b.handle(t(2), Input::Frame { session: S, lane: Lane::Priority, message: reply });
    let out = drain(&mut b);
    let out = run_io_except(&mut b, t(2), out, |_| false);
    if mode != ReplicationMode::Async {
        let seq = sends(&out).iter().find_map(|m| if let Message::Copy { seq, .. } = m { Some(*seq) } else { None }).expect("a copy");
        let progress = Message::CopyProgress { volume: V, received: seq, durable: seq };
        b.handle(t(3), Input::Frame { session: S, lane: Lane::Priority, message: progress });
        let out = drain(&mut b);
        assert_eq!(replies(&out), vec![(HostRequestId(1), true)], "{out:?}");
    } else {
        assert_eq!(replies(&out), vec![(HostRequestId(1), true)]);
    }
    b
}

fn write_block_4(b: &mut NodeCore, id: u64, at: Time, fua: bool) -> Vec<Output> {
    let data = Bytes::from(vec![7u8; BLOCK as usize]);
    b.handle(at, Input::Host { id: HostRequestId(id), volume: V, request: HostRequest::Write { offset: EXTENT, data, fua } });
    drain(b)
}

fn copy_sent(out: &[Output]) -> Option<(CopySeq, CopyReport)> {
    sends(out).iter().find_map(|m| if let Message::Copy { seq, report, .. } = m { Some((*seq, *report)) } else { None })
}

#[test]
fn a_sync_memory_write_is_acknowledged_once_durable_here_and_received_at_the_peer() {
    let mut b = writer_owning_extent_1(ReplicationMode::SyncMemory, PeerLossPolicy::Suspend);
    let out = write_block_4(&mut b, 2, t(10), false);
    assert!(b.try_write(t(10), V, EXTENT, BLOCK).is_none(), "no fast path: the write must wait for the peer");
    // The local write completes: the copy leaves at once (no linger) while
    // the local sync runs; the sync is held back here.
    let out = run_io_except(&mut b, t(10), out, |op| matches!(op, IoOp::Sync));
    let (seq, report) = copy_sent(&out).expect("the write's copy leaves at once");
    assert_eq!(report, CopyReport::Received);
    let sync = io_token(&out, |op| matches!(op, IoOp::Sync));
    assert!(replies(&out).is_empty(), "nothing acknowledged before the peer has it");
    let progress = Message::CopyProgress { volume: V, received: seq, durable: CopySeq(0) };
    b.handle(t(11), Input::Frame { session: S, lane: Lane::Priority, message: progress });
    assert!(replies(&drain(&mut b)).is_empty(), "received there, but not yet durable here");
    assert_eq!(b.status().volumes[0].replication.waiting_for_peer, 1);
    b.handle(t(12), Input::IoDone { token: sync, result: Ok(IoOutcome::Done) });
    assert_eq!(replies(&drain(&mut b)), vec![(HostRequestId(2), true)]);
    let ack = b.status().volumes[0].replication.last_ack.expect("recorded");
    assert_eq!(ack.peer_received, Some(Duration::from_millis(1)));
    assert_eq!(ack.peer_durable, None, "sync-memory does not wait for the peer's disk");
}

#[test]
fn a_sync_write_waits_until_the_peer_reports_it_durable() {
    let mut b = writer_owning_extent_1(ReplicationMode::Sync, PeerLossPolicy::Suspend);
    let out = write_block_4(&mut b, 2, t(10), false);
    let out = run_io_except(&mut b, t(10), out, |_| false);
    let (seq, report) = copy_sent(&out).expect("a copy");
    assert_eq!(report, CopyReport::Durable, "the peer syncs it at once");
    assert!(replies(&out).is_empty());
    let progress = Message::CopyProgress { volume: V, received: seq, durable: CopySeq(0) };
    b.handle(t(11), Input::Frame { session: S, lane: Lane::Priority, message: progress });
    assert!(replies(&drain(&mut b)).is_empty(), "in the peer's memory only");
    let progress = Message::CopyProgress { volume: V, received: seq, durable: seq };
    b.handle(t(12), Input::Frame { session: S, lane: Lane::Priority, message: progress });
    assert_eq!(replies(&drain(&mut b)), vec![(HostRequestId(2), true)]);
}

#[test]
fn a_flush_in_sync_memory_asks_the_peer_to_destage_and_waits_for_it() {
    let mut b = writer_owning_extent_1(ReplicationMode::SyncMemory, PeerLossPolicy::Suspend);
    let out = write_block_4(&mut b, 2, t(10), false);
    let out = run_io_except(&mut b, t(10), out, |_| false);
    let (seq, _) = copy_sent(&out).expect("a copy");
    b.handle(
        t(11),
        Input::Frame { session: S, lane: Lane::Priority, message: Message::CopyProgress { volume: V, received: seq, durable: CopySeq(0) } },
    );
    assert_eq!(replies(&drain(&mut b)), vec![(HostRequestId(2), true)]);
    b.handle(t(12), Input::Host { id: HostRequestId(3), volume: V, request: HostRequest::Flush });
    let out = drain(&mut b);
    let out = run_io_except(&mut b, t(12), out, |_| false);
    assert!(sends(&out).iter().any(|m| matches!(m, Message::Destage { upto, .. } if *upto == seq)), "{out:?}");
    assert!(replies(&out).is_empty(), "the write before the flush is not durable at the peer yet");
    b.handle(
        t(13),
        Input::Frame { session: S, lane: Lane::Priority, message: Message::CopyProgress { volume: V, received: seq, durable: seq } },
    );
    assert_eq!(replies(&drain(&mut b)), vec![(HostRequestId(3), true)]);
}

#[test]
fn with_suspend_a_write_waits_for_the_lost_peer_then_fails_without_writing() {
    let mut b = writer_owning_extent_1(ReplicationMode::Sync, PeerLossPolicy::Suspend);
    b.handle(t(10), Input::LinkDown { session: S, reason: "cut".into() });
    drain(&mut b);
    let out = write_block_4(&mut b, 2, t(11), false);
    assert!(!out.iter().any(|o| matches!(o, Output::Io { op: IoOp::Write { .. }, .. })), "nothing written without the peer: {out:?}");
    b.handle(t(11) + Duration::from_secs(1), Input::Tick);
    let out = drain(&mut b);
    assert!(
        out.iter().any(|o| matches!(o, Output::Reply { id: HostRequestId(2), result: Err(crate::io::HostError::PeerUnavailable(m)) } if m.contains("suspend"))),
        "{out:?}"
    );
    assert!(!out.iter().any(|o| matches!(o, Output::Io { op: IoOp::Write { .. }, .. })));
}

#[test]
fn with_degrade_a_waiting_write_is_acknowledged_when_the_link_goes_down_and_the_mode_returns_after_catching_up() {
    let mut b = writer_owning_extent_1(ReplicationMode::Sync, PeerLossPolicy::Degrade);
    let out = write_block_4(&mut b, 2, t(10), false);
    let out = run_io_except(&mut b, t(10), out, |_| false);
    assert!(replies(&out).is_empty());
    b.handle(t(11), Input::LinkDown { session: S, reason: "cut".into() });
    let out = drain(&mut b);
    assert!(out.iter().any(|o| matches!(o, Output::Event(crate::io::Event::Degraded { .. }))), "{out:?}");
    assert_eq!(replies(&out), vec![(HostRequestId(2), true)], "acknowledged as async");
    assert!(b.status().volumes[0].replication.degraded_for.is_some());
    // Degraded writes take the fast path, as in async.
    assert!(b.try_write(t(12), V, EXTENT, BLOCK).is_some());
}

#[test]
fn a_copy_that_asks_for_durability_is_synced_with_its_write_and_one_for_memory_is_reported_at_arrival() {
    for report in [CopyReport::Received, CopyReport::Durable] {
        let mut b = accepter_that_granted_extent_1();
        let Message::Copy { seq, volume, items, .. } = copy_of_block_4() else { unreachable!() };
        b.handle(t(2), Input::Frame { session: S, lane: Lane::Bulk, message: Message::Copy { seq, volume, items, report } });
        let arrived = drain(&mut b);
        let progress_at = |out: &[Output]| -> Vec<(CopySeq, CopySeq)> {
            sends(out)
                .into_iter()
                .filter_map(|m| match m {
                    Message::CopyProgress { received, durable, .. } => Some((*received, *durable)),
                    _ => None,
                })
                .collect()
        };
        let write = io_token(&arrived, |op| matches!(op, IoOp::Write { .. }));
        b.handle(t(2), Input::IoDone { token: write, result: Ok(IoOutcome::Done) });
        let out = drain(&mut b);
        let synced = out.iter().any(|o| matches!(o, Output::Io { op: IoOp::Sync, .. }));
        match report {
            CopyReport::Received => {
                // In our memory at arrival: reported before it is written.
                assert_eq!(progress_at(&arrived), vec![(CopySeq(1), CopySeq(0))], "{arrived:?}");
                assert!(progress_at(&out).is_empty(), "reported once: {out:?}");
                assert!(!synced, "the sync keeps its linger");
            }
            _ => {
                assert!(progress_at(&arrived).is_empty(), "a durable report waits for the sync: {arrived:?}");
                // Nothing queued behind it: written and synced in one job.
                assert!(arrived.iter().any(|o| matches!(o, Output::Io { op: IoOp::Write { sync: true, .. }, .. })), "{arrived:?}");
                assert!(!synced, "no second sync: {out:?}");
                assert_eq!(progress_at(&out), vec![(CopySeq(1), CopySeq(1))], "{out:?}");
            }
        }
    }
}

#[test]
fn a_degraded_volume_returns_to_its_mode_once_the_peer_has_every_degraded_write() {
    let mut b = writer_owning_extent_1(ReplicationMode::Sync, PeerLossPolicy::Degrade);
    b.handle(t(10), Input::LinkDown { session: S, reason: "cut".into() });
    drain(&mut b);
    let out = write_block_4(&mut b, 2, t(11), false);
    let out = run_io_except(&mut b, t(11), out, |_| false);
    assert_eq!(replies(&out), vec![(HostRequestId(2), true)], "acknowledged without the peer");
    // The peer returns: a new session, synced.
    let s2 = SessionGen(2);
    let out = sync_session(&mut b, t(20), s2, 11, vec![ExtentClaim { extent: Extent(1), epoch: Epoch(1) }]);
    let mut out = run_io_except(&mut b, t(20), out, |_| false);
    assert!(b.is_ready());
    b.handle(t(30), Input::Tick);
    out.extend(drain(&mut b));
    let out = run_io_except(&mut b, t(30), out, |_| false);
    let (seq, report) = copy_sent(&out).expect("the degraded write goes to the peer");
    assert!(b.status().volumes[0].replication.degraded_for.is_some(), "still degraded: the peer does not have it durably");
    assert!(
        report == CopyReport::Durable || sends(&out).iter().any(|m| matches!(m, Message::Destage { upto, .. } if *upto >= seq)),
        "catching up asks for durability: {out:?}"
    );
    b.handle(
        t(31),
        Input::Frame { session: s2, lane: Lane::Priority, message: Message::CopyProgress { volume: V, received: seq, durable: seq } },
    );
    let out = drain(&mut b);
    assert!(out.iter().any(|o| matches!(o, Output::Event(crate::io::Event::CaughtUp { .. }))), "{out:?}");
    assert!(b.status().volumes[0].replication.degraded_for.is_none());
    assert!(b.try_write(t(32), V, EXTENT, BLOCK).is_none(), "writes wait for the peer again");
}

/// A copy message's position and its runs (first block, count, bytes).
type SentCopy = (CopySeq, Vec<(BlockIndex, u32, Bytes)>);

fn copies(out: &[Output]) -> Vec<SentCopy> {
    sends(out)
        .into_iter()
        .filter_map(|m| match m {
            Message::Copy { seq, items, .. } => Some((*seq, items.iter().map(|i| (i.first, i.count, i.data.clone())).collect())),
            _ => None,
        })
        .collect()
}

fn reads_back(out: &[Output]) -> bool {
    out.iter().any(|o| matches!(o, Output::Io { op: IoOp::Read { for_copy: true, .. }, .. }))
}

#[test]
fn a_sync_write_sends_its_own_buffer_while_its_store_write_runs() {
    for mode in [ReplicationMode::SyncMemory, ReplicationMode::Sync] {
        let mut b = writer_owning_extent_1(mode, PeerLossPolicy::Suspend);
        let out = write_block_4(&mut b, 2, t(10), false);
        // The copy leaves with the store write, carrying the host's bytes;
        // nothing is read back.
        let sent = copies(&out);
        let [(seq, items)] = sent.as_slice() else { panic!("one copy with the write: {out:?}") };
        assert_eq!(items.as_slice(), &[(BlockIndex(EXTENT / BLOCK), 1, Bytes::from(vec![7u8; BLOCK as usize]))]);
        assert!(!reads_back(&out));
        let write = io_token(&out, |op| matches!(op, IoOp::Write { .. }));
        // The peer has it (even durably) before the store write is done:
        // not acknowledged yet.
        let progress = Message::CopyProgress { volume: V, received: *seq, durable: *seq };
        b.handle(t(11), Input::Frame { session: S, lane: Lane::Priority, message: progress });
        assert!(replies(&drain(&mut b)).is_empty(), "{mode:?}: acknowledged before it was written here");
        b.handle(t(12), Input::IoDone { token: write, result: Ok(IoOutcome::Done) });
        let out = drain(&mut b);
        assert!(copies(&out).is_empty() && !reads_back(&out), "{mode:?}: sent twice: {out:?}");
        assert!(replies(&out).is_empty(), "{mode:?}: acknowledged before the local fdatasync");
        let out = run_io_except(&mut b, t(13), out, |_| false);
        assert_eq!(replies(&out), vec![(HostRequestId(2), true)], "{mode:?}");
        assert_eq!(b.status().volumes[0].replication.waiting_for_peer, 0);
    }
}

#[test]
fn a_sync_write_with_another_beside_it_in_its_extent_is_sent_again_from_the_store() {
    let mut b = writer_owning_extent_1(ReplicationMode::Sync, PeerLossPolicy::Suspend);
    let first = write_block_4(&mut b, 2, t(10), false);
    let [(s1, _)] = copies(&first).as_slice().to_owned()[..] else { panic!("the first write's own copy: {first:?}") };
    // A second write in the same extent while the first is in flight: the
    // store may end with either's bytes, so it sends none of its own...
    let data = Bytes::from(vec![8u8; BLOCK as usize]);
    b.handle(
        t(10),
        Input::Host { id: HostRequestId(3), volume: V, request: HostRequest::Write { offset: EXTENT + BLOCK, data, fua: false } },
    );
    let second = drain(&mut b);
    assert!(copies(&second).is_empty(), "{second:?}");
    // ... and the first, done after the second started, goes out again
    // read back from the store, in a later copy it then waits for.
    let w1 = io_token(&first, |op| matches!(op, IoOp::Write { .. }));
    b.handle(t(11), Input::IoDone { token: w1, result: Ok(IoOutcome::Done) });
    let out = drain(&mut b);
    assert!(reads_back(&out), "{out:?}");
    let out = run_io_except(&mut b, t(11), out, |op| matches!(op, IoOp::Write { .. }));
    let again = copies(&out);
    let (s2, items) = again.iter().find(|(_, items)| items.iter().any(|i| i.0 == BlockIndex(EXTENT / BLOCK))).expect("sent again");
    assert!(*s2 > s1);
    assert!(items[0].2.is_empty(), "read back from the store (zeroes here), not the buffer sent before");
    let progress = Message::CopyProgress { volume: V, received: s1, durable: s1 };
    b.handle(t(12), Input::Frame { session: S, lane: Lane::Priority, message: progress });
    assert!(replies(&drain(&mut b)).is_empty(), "its first copy may not be what the store holds");
    let progress = Message::CopyProgress { volume: V, received: *s2, durable: *s2 };
    b.handle(t(13), Input::Frame { session: S, lane: Lane::Priority, message: progress });
    assert_eq!(replies(&drain(&mut b)), vec![(HostRequestId(2), true)]);
}

#[test]
fn copies_queued_behind_an_apply_are_written_in_one_job_and_the_last_durable_one_syncs_it() {
    let mut b = accepter_that_granted_extent_1();
    let copy = |seq: u64, block: u64, report: CopyReport| {
        let item = CopyItem {
            extent: Extent(1),
            epoch: Epoch(1),
            first: BlockIndex(block),
            count: 1,
            data: Bytes::from(vec![seq as u8; BLOCK as usize]),
        };
        Message::Copy { seq: CopySeq(seq), volume: V, items: vec![item], report }
    };
    b.handle(t(2), Input::Frame { session: S, lane: Lane::Bulk, message: copy(1, 4, CopyReport::Lazy) });
    let first = io_token(&drain(&mut b), |op| matches!(op, IoOp::Write { writes, sync: false } if writes.len() == 1));
    b.handle(t(2), Input::Frame { session: S, lane: Lane::Bulk, message: copy(2, 5, CopyReport::Received) });
    b.handle(t(2), Input::Frame { session: S, lane: Lane::Bulk, message: copy(3, 4, CopyReport::Durable) });
    assert!(!drain(&mut b).iter().any(|o| matches!(o, Output::Io { .. })), "one apply at a time");
    b.handle(t(3), Input::IoDone { token: first, result: Ok(IoOutcome::Done) });
    let out = drain(&mut b);
    let jobs: Vec<&IoOp> = out.iter().filter_map(|o| if let Output::Io { op, .. } = o { Some(op) } else { None }).collect();
    let [IoOp::Write { writes, sync: true }] = jobs.as_slice() else { panic!("one job for both, synced: {out:?}") };
    let offsets: Vec<u64> = writes.iter().map(|w| w.range().0).collect();
    assert_eq!(offsets, vec![5 * BLOCK, 4 * BLOCK], "in arrival order");
    let token = io_token(&out, |op| matches!(op, IoOp::Write { .. }));
    b.handle(t(4), Input::IoDone { token, result: Ok(IoOutcome::Done) });
    let out = drain(&mut b);
    assert!(sends(&out).iter().any(|m| matches!(m, Message::CopyProgress { received: CopySeq(3), durable: CopySeq(3), .. })), "{out:?}");
}

#[test]
fn blocks_queued_for_a_read_back_while_a_direct_copy_flies_change_its_count() {
    let mut c = Claims::new(&settings(8, 8, 0), true);
    own(&mut c, 1, t(0));
    assert_eq!(c.begin_write(1..=1, t(1), PeerAccess::Ready), WriteAccess::Admitted);
    let (_, _, changes) = c.direct_copy(EXTENT, BLOCK, 8).expect("alone in its extent");
    assert_eq!(c.changes_in(EXTENT, BLOCK), changes, "nothing happened meanwhile");
    assert!(!c.has_unsent(), "its blocks are in flight, not queued");
    // A resync or a checksum comparison queues its block for a read back
    // (which may read the bytes from before the write): the write must
    // send its blocks again when it is done.
    c.mark_written(EXTENT, BLOCK);
    assert_ne!(c.changes_in(EXTENT, BLOCK), changes);
}
