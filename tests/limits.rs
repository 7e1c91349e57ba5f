//! The limits and their relations, with real nodes and real clients: four
//! configurations that were valid and broke the link or failed host I/O
//! (a prediction longer than a claim message carries; more unconfirmed
//! releases than a claim message carries; a copy batch of large blocks
//! larger than a frame; pulls and handovers of extents larger than a
//! frame). Each now works, and the data reads back at both sites.

mod common;

use std::time::Duration;

use common::two_site::*;
use common::*;

fn uri(node: &NodeProcess) -> String {
    node.uri("vol0")
}

#[test]
fn a_long_sequential_stream_under_a_large_limit_claims_no_more_than_a_message_carries() {
    require_tool("qemu-io");
    // 4 KiB extents and a limit of 20000: a stream's look-ahead would grow
    // past the 4096 extents one claim may name.
    let s = TwoSites::start(TwoSiteOptions {
        volume_size: "128MiB",
        extent_size: "4KiB",
        max_owned_extents: 20000,
        predict_extents: 64,
        rtt: Some("2ms"),
        ..Default::default()
    });
    for chunk in 0..8u64 {
        let cmds: Vec<String> = (0..128u64).map(|i| format!("write -P {:#x} {} 64k", 0x20 + chunk, (chunk * 128 + i) << 16)).collect();
        qemu_io(&uri(&s.a), &cmds);
    }
    assert!(figure(&s.a, "owned_extents") > 4096, "the stream must have claimed far ahead");
    let reads: Vec<String> = (0..8u64).map(|chunk| format!("read -P {:#x} {} 64k", 0x20 + chunk, (chunk * 128 + 77) << 16)).collect();
    qemu_io(&uri(&s.b), &reads);
    for node in [&s.a, &s.b] {
        node.assert_no_unexpected_warnings(&[]);
    }
}

#[test]
fn more_releases_than_a_claim_carries_do_not_fail_the_next_claim() {
    require_tool("qemu-io");
    // 4 KiB extents under a limit of 20000: 8192 extents owned, then all
    // released when idle; the next claim must not carry all 8192 releases
    // (the peer refuses more than 4096 per message).
    let s = TwoSites::start(TwoSiteOptions {
        volume_size: "64MiB",
        extent_size: "4KiB",
        max_owned_extents: 20000,
        predict_extents: 64,
        release_after: "1s",
        rtt: Some("2ms"),
        ..Default::default()
    });
    for chunk in 0..4u64 {
        let cmds: Vec<String> = (0..128u64).map(|i| format!("write -P 0x5{chunk} {} 64k", (chunk * 128 + i) << 16)).collect();
        qemu_io(&uri(&s.a), &cmds);
    }
    assert!(figure(&s.a, "owned_extents") >= 8192, "A owns the 32 MiB it wrote: {}", status(&s.a));
    assert!(eventually(Duration::from_secs(30), || figure(&s.a, "owned_extents") == 0), "A releases every idle extent: {}", status(&s.a));
    qemu_io(&uri(&s.a), &["write -P 0x61 40M 4k".into(), "read -P 0x61 40M 4k".into()]);
    qemu_io(&uri(&s.b), &["read -P 0x61 40M 4k".into(), "read -P 0x53 30M 64k".into()]);
    for node in [&s.a, &s.b] {
        node.assert_no_unexpected_warnings(&[]);
    }
}

#[test]
fn copies_of_64_kib_blocks_fit_a_frame_and_the_copy_stream_drains() {
    require_tool("qemu-io");
    let s = TwoSites::start(TwoSiteOptions { block_size: "64KiB", extent_size: "1MiB", rtt: Some("2ms"), ..Default::default() });
    let cmds: Vec<String> = (0..32u64).map(|i| format!("write -P {:#x} {} 1M", 0x30 + i, i << 20)).collect();
    qemu_io(&uri(&s.a), &cmds);
    assert!(
        eventually(Duration::from_secs(30), || figure(&s.a, "not_durable_at_peer_bytes") == 0),
        "the copy stream must drain: {}",
        status(&s.a)
    );
    // Everything is at B: read it there after A is gone.
    let mut s = s;
    s.a.kill9();
    let reads: Vec<String> = (0..32u64).map(|i| format!("read -P {:#x} {} 64k", 0x30 + i, (i << 20) + (i % 16) * 65536)).collect();
    // A restarts (its extents are suspect, sent again whole); B reads it all.
    s.restart_a();
    s.wait_link_up(Duration::from_secs(20));
    qemu_io(&uri(&s.b), &reads);
    s.b.assert_no_unexpected_warnings(&["peer link down"]);
}

#[test]
fn pulls_and_handovers_of_extents_larger_than_a_frame_work() {
    require_tool("qemu-io");
    let s = TwoSites::start(TwoSiteOptions {
        volume_size: "128MiB",
        extent_size: "64MiB",
        peer_timeout: "10s",
        rtt: Some("4ms"),
        ..Default::default()
    });
    // A pull of 9 MiB of an extent B owns: more than one frame carries.
    qemu_io(&uri(&s.b), &["write -P 0x41 0 9M".into()]);
    qemu_io(&uri(&s.a), &["read -P 0x41 0 9M".into()]);
    assert!(figure(&s.a, "pulls") >= 2, "a 9 MiB read is pulled in pieces");
    // A handover with 16 MiB the requester lacks: A owns extent 1 and its
    // copies are held on the way, then B writes into it.
    qemu_io(&uri(&s.a), &["write -P 0x42 64M 4k".into()]);
    let sim = s.sim.as_ref().unwrap();
    sim.control(&["partition", "--mode", "hold", "--direction", "ab"]);
    qemu_io(&uri(&s.a), &["write -P 0x43 65M 16M".into()]);
    let uri_b = uri(&s.b);
    let writer = std::thread::spawn(move || qemu_io(&uri_b, &["write -P 0x44 90M 4k".into()]));
    std::thread::sleep(Duration::from_millis(500));
    sim.control(&["heal"]);
    writer.join().expect("B's write into A's extent succeeds once the handover arrives");
    assert!(figure(&s.b, "handovers") >= 1);
    for node in [&s.a, &s.b] {
        qemu_io(&uri(node), &["read -P 0x43 65M 16M".into(), "read -P 0x44 90M 4k".into(), "read -P 0x42 64M 4k".into()]);
    }
    for node in [&s.a, &s.b] {
        node.assert_no_unexpected_warnings(&[]);
    }
}
