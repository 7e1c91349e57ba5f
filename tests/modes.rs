//! The replication modes with real binaries and real clients: in `sync`
//! the survivor of the writer's kill -9 has every acknowledged write (in
//! `async` it does not: the control run); in `sync-memory` a kill -9 of the
//! peer between receive and destage loses nothing; a host FLUSH in a sync
//! mode reaches the peer's disk before it returns (in `async` it does not);
//! a switch from `async` to `sync` under load returns once the backlog is
//! durable at the peer.

mod common;

use std::time::Duration;

use common::two_site::*;
use common::*;

fn uri(node: &NodeProcess) -> String {
    node.uri("vol0")
}

/// Kills A, waits until B sees the link down, and takes A's extents over at B.
fn lose_a_and_take_over_at_b(s: &mut TwoSites) {
    s.a.kill9();
    assert!(eventually(Duration::from_secs(20), || link_state(&s.b) != "up"), "B must notice A is gone");
    let admin = s.b.admin.to_string();
    geomirror(&["takeover", "--admin", &admin, "--volume", "vol0", "--yes", "--peer-is-down"]);
}

fn geomirror(args: &[&str]) -> String {
    let out = run_with_deadline(60, geomirror_bin().to_str().unwrap(), args);
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "geomirror {args:?} failed:\n{text}");
    text
}

/// `count` 4 KiB writes at distinct offsets over the first 30 MiB, each
/// with its own pattern.
fn writes(count: u64, first_pattern: u8) -> Vec<(u64, u8)> {
    (0..count).map(|i| ((i * 1_900_544) % (30 << 20) / 4096 * 4096, first_pattern.wrapping_add(i as u8))).collect()
}

fn write_cmds(writes: &[(u64, u8)]) -> Vec<String> {
    writes.iter().map(|(o, p)| format!("write -P {p:#x} {o} 4k")).collect()
}

fn read_cmds(writes: &[(u64, u8)]) -> Vec<String> {
    writes.iter().map(|(o, p)| format!("read -P {p:#x} {o} 4k")).collect()
}

/// A metric of volume `vol0` from the node's `/metrics`.
fn metric(node: &NodeProcess, name: &str) -> u64 {
    let text = node.admin_get("/metrics");
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{")) && l.contains("volume=\"vol0\""))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse::<f64>().ok())
        .map_or(0, |v| v as u64)
}

/// Writes at A, kill -9 of A at once, takeover at B: whether B then holds
/// every write A acknowledged.
fn survivor_holds_every_acknowledged_write(mode: &'static str) -> (bool, String) {
    let mut s = TwoSites::start(TwoSiteOptions { mode, rtt: Some("80ms"), ..Default::default() });
    let w = writes(12, 0x21);
    qemu_io(&uri(&s.a), &write_cmds(&w));
    lose_a_and_take_over_at_b(&mut s);
    let (ok, text) = qemu_io_try(&uri(&s.b), &read_cmds(&w));
    (ok && !text.contains("Pattern verification failed"), text)
}

#[test]
fn in_sync_the_survivor_of_the_writers_kill_9_has_every_acknowledged_write_and_in_async_it_does_not() {
    require_tool("qemu-io");
    let (all, text) = survivor_holds_every_acknowledged_write("sync");
    assert!(all, "sync: an acknowledged write is missing at the survivor:\n{text}");
    // The control: the same run in async loses the writes still on their
    // way (the copy stream is 40 ms behind), so the check above can fail.
    let (all, _) = survivor_holds_every_acknowledged_write("async");
    assert!(!all, "async: the survivor unexpectedly had every write; the sync check proves nothing");
}

#[test]
fn in_sync_memory_a_kill_9_of_the_peer_between_receive_and_destage_loses_nothing() {
    require_tool("qemu-io");
    let mut s = TwoSites::start(TwoSiteOptions { mode: "sync-memory", rtt: Some("4ms"), release_after: "1s", ..Default::default() });
    let w = writes(24, 0x41);
    qemu_io(&uri(&s.a), &write_cmds(&w));
    // Each write was acknowledged once B had it in memory; B's grouped
    // fdatasync lingers 50 ms after that.
    s.b.kill9();
    s.b = NodeProcess::start(&s.b_config);
    s.wait_link_up(Duration::from_secs(20));
    // A sends again what B had not reported durable; once all of it is
    // durable at B, A releases its extents and B alone holds every write.
    assert!(eventually(Duration::from_secs(30), || figure(&s.b, "peer_owned_extents") == 0), "A must release its extents");
    s.a.kill9();
    qemu_io(&uri(&s.b), &read_cmds(&w));
}

/// Writes and a FLUSH at A: whether A saw them all durable at B the moment
/// the FLUSH returned, and B's fdatasyncs meanwhile.
fn flush_reaches_the_peer(mode: &'static str) -> (u64, u64) {
    let s = TwoSites::start(TwoSiteOptions { mode, rtt: Some("100ms"), ..Default::default() });
    let before = metric(&s.b, "geomirror_store_syncs_total");
    let mut cmds = write_cmds(&writes(4, 0x61));
    cmds.push("flush".into());
    qemu_io(&uri(&s.a), &cmds);
    let not_durable = figure(&s.a, "not_durable_at_peer_bytes");
    (not_durable, metric(&s.b, "geomirror_store_syncs_total") - before)
}

#[test]
fn a_host_flush_in_sync_memory_reaches_the_peers_disk_before_it_returns() {
    require_tool("qemu-io");
    let (not_durable, syncs) = flush_reaches_the_peer("sync-memory");
    assert_eq!(not_durable, 0, "the flush returned with writes not durable at the peer");
    assert!(syncs >= 1, "B must have fdatasync'ed before the flush returned ({syncs})");
    // The control: in async a FLUSH is local, and the copies are still on
    // their way (50 ms one way, then B's 50 ms sync linger).
    let (not_durable, _) = flush_reaches_the_peer("async");
    assert!(not_durable > 0, "async: the copies were unexpectedly durable at B already; the check above proves nothing");
}

#[test]
fn a_switch_to_sync_under_load_returns_once_the_backlog_is_durable_at_the_peer() {
    require_tool("qemu-io");
    require_tool("fio");
    let mut s = TwoSites::start(TwoSiteOptions { rtt: Some("80ms"), ..Default::default() });
    // Acknowledged in async: the copies are at least 40 ms behind.
    let w = writes(12, 0x81);
    qemu_io(&uri(&s.a), &write_cmds(&w));
    assert!(figure(&s.a, "not_durable_at_peer_bytes") > 0, "the backlog must still be there at the switch");
    // Load on another range while the mode changes.
    let load_uri = uri(&s.a);
    let load = std::thread::spawn(move || {
        let args = [
            "--name=load",
            "--ioengine=nbd",
            &format!("--uri={load_uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--offset=40m",
            "--size=16m",
            "--iodepth=8",
            "--time_based",
            "--runtime=3",
        ];
        // It may see errors once A is killed below; only the switch matters.
        run_with_deadline(60, "fio", &args)
    });
    std::thread::sleep(Duration::from_millis(500));
    let admin = s.a.admin.to_string();
    let out = geomirror(&["mode", "--admin", &admin, "--volume", "vol0", "--set", "sync"]);
    assert!(out.contains("async -> sync") && out.contains("durable at both sites"), "{out}");
    assert_eq!(status(&s.a)["volumes"][0]["replication"]["mode"], "sync");
    // Everything acknowledged before the switch is at B now: kill A, take
    // over at B, read it there.
    lose_a_and_take_over_at_b(&mut s);
    let _ = load.join();
    qemu_io(&uri(&s.b), &read_cmds(&w));
}
