//! A seed replays exactly: the same seed gives the same trace hash and the
//! same outcome; different seeds give different runs.

#[test]
fn the_same_seed_gives_the_same_trace_hash() {
    for seed in [0, 1, 7, 1234] {
        let a = geomirror_dst::run(seed);
        let b = geomirror_dst::run(seed);
        assert_eq!(a.hash, b.hash, "seed {seed} did not replay");
        assert_eq!(a.stats.events, b.stats.events);
        assert_eq!(a.failure, b.failure);
    }
}

#[test]
fn different_seeds_give_different_runs() {
    let hashes: std::collections::BTreeSet<u64> = (0..20).map(|s| geomirror_dst::run(s).hash).collect();
    assert_eq!(hashes.len(), 20);
}
