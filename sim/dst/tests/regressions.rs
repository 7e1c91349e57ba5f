//! Seeds that once broke an invariant, each named for the bug it found.
//! They replay the current simulator (a seed's scenario changes when the
//! simulator's draws change, so the batch keeps running thousands of others).

fn passes(seed: u64) {
    let r = geomirror_dst::run(seed);
    assert!(r.failure.is_none(), "seed {seed}: {}\n  replay: {}", r.failure.unwrap_or_default(), geomirror_dst::replay_command(seed));
}

#[test]
fn seed_6_a_handover_answered_not_owner_while_the_extent_was_being_received() {
    passes(6);
}

#[test]
fn seed_5_a_release_lost_with_the_link_let_the_peer_record_exceed_the_limit() {
    passes(5);
}

#[test]
fn seed_42_a_give_carried_blocks_that_were_only_in_the_givers_page_cache() {
    passes(42);
}

#[test]
fn seed_59_a_release_crossing_a_handover_request_cleared_its_state() {
    passes(59);
}

#[test]
fn seed_70_a_give_applied_and_superseded_was_revoked() {
    passes(70);
}

#[test]
fn seed_177_a_failed_give_made_room_for_a_claim() {
    passes(177);
}

#[test]
fn seed_643_a_release_was_recorded_before_the_owners_store_was_synced() {
    passes(643);
}

#[test]
fn seed_792_a_write_under_an_adopted_extent_whose_release_the_claims_file_still_listed() {
    passes(792);
}

#[test]
fn seed_1161_a_refused_claim_confirmed_the_releases_it_carried() {
    passes(1161);
}

#[test]
fn seed_25_a_deadline_that_never_moved() {
    passes(25);
}

#[test]
fn seed_5_the_two_sites_handed_one_extent_back_and_forth_without_writing() {
    passes(5);
}

#[test]
fn seed_4568_a_release_that_overtook_the_last_sync_answer_was_taken_back() {
    passes(4568);
}

#[test]
fn seed_5840_a_takeover_of_an_extent_the_lost_node_never_owned_expected_its_replica_blocks_in_its_conflict_file() {
    passes(5840);
}

#[test]
fn seed_12813_a_witness_takeover_of_an_extent_the_live_peer_did_not_own_expected_its_replica_blocks_in_its_conflict_file() {
    passes(12813);
}

#[test]
fn seed_22694_a_sync_takeover_discarded_a_failed_write_a_host_had_read_and_the_model_called_it_lost() {
    passes(22694);
}

#[test]
fn seed_33336_a_liveness_run_gave_a_sync_write_less_time_than_two_bulk_lane_stalls() {
    passes(33336);
}
