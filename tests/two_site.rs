//! Two real nodes on loopback (the WAN simulator between them where the
//! round trip matters) and real clients at both sites: fresh reads right
//! after remote writes, alternating writers, the copy stream proven by
//! killing the writer, concurrent fio verify at both sites, authentication,
//! an unreachable peer, a mismatched volume.

mod common;

use std::time::Duration;

use common::two_site::*;
use common::*;

fn uri(node: &NodeProcess) -> String {
    node.uri("vol0")
}

#[test]
fn a_write_at_one_site_is_read_back_at_the_other_immediately() {
    require_tool("qemu-io");
    let s = TwoSites::start(TwoSiteOptions { rtt: Some("40ms"), ..Default::default() });
    // A writes; B reads straight away: the copy stream is at least 20 ms
    // behind, and A still owns the extent, so B must pull.
    qemu_io(&uri(&s.a), &["write -P 0xa1 1M 64k".into()]);
    qemu_io(&uri(&s.b), &["read -P 0xa1 1M 64k".into(), "read -P 0 0 4k".into()]);
    assert!(figure(&s.b, "pulls") >= 1, "B must have pulled the block from A");
    // And the other way round, on another extent.
    qemu_io(&uri(&s.b), &["write -P 0xb2 9M 8k".into()]);
    qemu_io(&uri(&s.a), &["read -P 0xb2 9M 8k".into(), "read -P 0xa1 1M 64k".into()]);
    assert!(figure(&s.a, "pulls") >= 1, "A must have pulled the block from B");
    s.a.assert_no_unexpected_warnings(&[]);
    s.b.assert_no_unexpected_warnings(&[]);
}

#[test]
fn alternating_writers_on_the_same_blocks_read_back_the_newest_at_both_sites() {
    require_tool("qemu-io");
    let s = TwoSites::start(TwoSiteOptions { rtt: Some("10ms"), ..Default::default() });
    for round in 0..6u8 {
        let pattern = 0x10 + round;
        let (writer, other) = if round % 2 == 0 { (&s.a, &s.b) } else { (&s.b, &s.a) };
        // Same blocks every round, spanning two extents.
        qemu_io(&uri(writer), &[format!("write -P {pattern:#x} 1020k 8k"), format!("write -P {pattern:#x} 5M 4k")]);
        for reader in [other, writer] {
            qemu_io(&uri(reader), &[format!("read -P {pattern:#x} 1020k 8k"), format!("read -P {pattern:#x} 5M 4k")]);
        }
    }
    let handovers = figure(&s.a, "handovers") + figure(&s.b, "handovers");
    assert!(handovers >= 5, "ownership must have moved between the sites ({handovers} handovers)");
}

#[test]
fn after_release_the_survivor_holds_every_block_written_at_the_dead_site() {
    require_tool("qemu-io");
    let mut s = TwoSites::start(TwoSiteOptions { release_after: "1s", rtt: Some("4ms"), ..Default::default() });
    let writes: Vec<(u64, u64, u8)> =
        (0..24u64).map(|i| ((i * 2_654_435_761) % (60 << 20) / 4096 * 4096, 4096 * (1 + i % 5), 0x30 + i as u8)).collect();
    for chunk in writes.chunks(8) {
        let cmds: Vec<String> = chunk.iter().map(|(o, l, p)| format!("write -P {p:#x} {o} {l}")).collect();
        qemu_io(&uri(&s.a), &cmds);
    }
    assert!(figure(&s.b, "peer_owned_extents") > 0, "A's writes must be recorded at B");
    // Once the copy stream is durable and release_after has passed, B's
    // record is empty: B no longer needs A for any block.
    let released = eventually(Duration::from_secs(20), || figure(&s.b, "peer_owned_extents") == 0);
    assert!(released, "A never released its extents: {:?}", status(&s.a));
    s.a.kill9();
    let pulls_before = figure(&s.b, "pulls");
    // Later writes win where ranges overlap: check in write order per block
    // by replaying the model.
    let mut model = vec![0u8; 64 << 20];
    for (o, l, p) in &writes {
        model[*o as usize..(*o + *l) as usize].fill(*p);
    }
    for (o, l, _) in &writes {
        let expected = model[*o as usize];
        let uniform = model[*o as usize..(*o + *l) as usize].iter().all(|&b| b == expected);
        if uniform {
            qemu_io(&uri(&s.b), &[format!("read -P {expected:#x} {o} {l}")]);
        } else {
            qemu_io(&uri(&s.b), &[format!("read -P {expected:#x} {o} 1")]);
        }
    }
    assert_eq!(figure(&s.b, "pulls"), pulls_before, "B served everything from its own disk");
    // A comes back and sees the same data.
    s.restart_a();
    s.wait_link_up(Duration::from_secs(15));
    let (o, l, _) = writes[3];
    qemu_io(
        &uri(&s.a),
        &[format!("read -P {:#x} {o} 1", model[o as usize]), format!("read -P {:#x} {} 1", model[(o + l - 1) as usize], o + l - 1)],
    );
}

#[test]
fn fio_verify_at_both_sites_on_disjoint_ranges() {
    require_tool("fio");
    let s = TwoSites::start(TwoSiteOptions { rtt: Some("4ms"), max_owned_extents: 128, ..Default::default() });
    let job = |uri: &str, offset: &str, extra: &[&str]| -> Vec<String> {
        let mut args = vec![
            "--name=geo".to_string(),
            "--ioengine=nbd".into(),
            format!("--uri={uri}"),
            "--rw=randwrite".into(),
            "--bs=4k".into(),
            format!("--offset={offset}"),
            "--size=8m".into(),
            "--iodepth=8".into(),
            "--verify=crc32c".into(),
            "--verify_state_save=0".into(),
            "--randseed=1234".into(),
            "--verify_fatal=1".into(),
            "--output-format=json".into(),
        ];
        args.extend(extra.iter().map(|s| s.to_string()));
        args
    };
    let run = |args: Vec<String>| {
        std::thread::spawn(move || {
            let refs: Vec<&str> = args.iter().map(String::as_str).collect();
            let out = run_ok(180, "fio", &refs);
            let json = &out[out.find('{').expect("fio json")..];
            let report: serde_json::Value = serde_json::from_str(json).expect("fio json");
            assert_eq!(report["jobs"][0]["error"], 0, "fio failed: {}", report["jobs"][0]);
            report
        })
    };
    let (ua, ub) = (uri(&s.a), uri(&s.b));
    let wa = run(job(&ua, "0", &["--do_verify=0"]));
    let wb = run(job(&ub, "32m", &["--do_verify=0"]));
    wa.join().unwrap();
    wb.join().unwrap();
    // Each site verifies what the other wrote.
    let va = run(job(&ub, "0", &["--verify_only"])).join().unwrap();
    let vb = run(job(&ua, "32m", &["--verify_only"])).join().unwrap();
    for v in [va, vb] {
        assert!(v["jobs"][0]["read"]["io_bytes"].as_u64().unwrap() >= 8 << 20, "verify must read the whole range");
    }
}

/// Starts a node named `name` that dials B with the certificates in `certs`.
/// Where site B accepts its peer (the one listen address of its config
/// that is not port 0).
fn b_peer_listen(s: &TwoSites) -> String {
    let b_config = std::fs::read_to_string(&s.b_config).unwrap();
    b_config
        .lines()
        .find(|l| l.starts_with("listen = ") && !l.contains("127.0.0.1:0\""))
        .map(|l| l.trim_start_matches("listen = ").trim_matches('"').to_string())
        .expect("B's peer listen address")
}

fn start_rogue(s: &TwoSites, name: &str, certs: &std::path::Path) -> NodeProcess {
    let b_listen = b_peer_listen(s);
    let rogue_dir = s.dir.path().join(format!("rogue-{name}"));
    std::fs::create_dir_all(&rogue_dir).unwrap();
    let config = rogue_dir.join("rogue.toml");
    std::fs::write(
        &config,
        format!(
            "[node]\nname = \"{name}\"\ndata_dir = \"{}\"\n[nbd]\nlisten = \"127.0.0.1:0\"\n[admin]\nlisten = \"127.0.0.1:0\"\n\
             [peer]\nname = \"site-b\"\nlisten = \"127.0.0.1:0\"\nconnect = \"{b_listen}\"\npeer_timeout = \"2s\"\nheartbeat_interval = \"250ms\"\n\
             [tls]\nca = \"{c}/ca.pem\"\ncert = \"{c}/{name}.pem\"\nkey = \"{c}/{name}-key.pem\"\n[[volume]]\nname = \"vol0\"\nsize = \"64MiB\"\n",
            rogue_dir.join("data").display(),
            c = certs.display()
        ),
    )
    .unwrap();
    NodeProcess::start(&config)
}

/// Dials `addr` as `site-a` with the pair's certificates, says hello for
/// `lane`, and returns the refusal in B's hello reply (empty: accepted).
fn hello_as_site_a(s: &TwoSites, addr: &str, lane: geomirror_wire::peer::Lane) -> String {
    use geomirror_wire::peer::{Message, PROTOCOL_VERSION};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let certs = s.dir.path().join("certs");
    let tls = geomirror_node::peer::tls::PeerTls::load(
        &certs.join("ca.pem"),
        &certs.join("site-a.pem"),
        &certs.join("site-a-key.pem"),
        "site-a",
        "site-b",
    )
    .unwrap();
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    runtime.block_on(async {
        let tcp = tokio::net::TcpStream::connect(addr).await.unwrap();
        let mut stream = tls.connect(tcp).await.unwrap();
        // The peer protocol's framing: a 4-byte big-endian length, then the frame.
        let hello = Message::Hello { protocol_version: PROTOCOL_VERSION, node: "site-a".into(), lane, volumes: vec![] }.encode();
        stream.write_all(&u32::try_from(hello.len()).unwrap().to_be_bytes()).await.unwrap();
        stream.write_all(&hello).await.unwrap();
        stream.flush().await.unwrap();
        let mut len = [0u8; 4];
        tokio::time::timeout(Duration::from_secs(10), stream.read_exact(&mut len)).await.expect("a hello reply").unwrap();
        let mut reply = vec![0u8; u32::from_be_bytes(len) as usize];
        stream.read_exact(&mut reply).await.unwrap();
        match Message::decode(&reply).unwrap() {
            Message::HelloReply { refusal, .. } => refusal,
            other => panic!("expected a hello reply, got {}", other.kind()),
        }
    })
}

#[test]
fn a_second_bulk_connection_for_a_session_is_refused_and_the_session_goes_on() {
    require_tool("qemu-io");
    let s = TwoSites::start(TwoSiteOptions::default());
    // The pair's session has its priority and bulk connections; an
    // authenticated site-a opens one more bulk connection.
    let refusal = hello_as_site_a(&s, &b_peer_listen(&s), geomirror_wire::peer::Lane::Bulk);
    assert!(refusal.contains("already has its bulk connection"), "B must refuse it in its hello reply, got {refusal:?}");
    assert!(
        eventually(Duration::from_secs(5), || refusals(&s.b).iter().any(|l| l.contains("already has its bulk connection"))),
        "B must log the refusal:\n{}",
        s.b.logs().join("\n")
    );
    // The session goes on: no link down at either site, and data still flows
    // both ways (a write at A read back at B, through a pull or the copy).
    assert_eq!(link_state(&s.a), "up");
    assert_eq!(link_state(&s.b), "up");
    qemu_io(&uri(&s.a), &["write -P 0x5c 2M 64k".into()]);
    qemu_io(&uri(&s.b), &["read -P 0x5c 2M 64k".into()]);
    for node in [&s.a, &s.b] {
        assert!(!node.logs().iter().any(|l| l.contains("peer link down")), "the session must not end:\n{}", node.logs().join("\n"));
    }
    // Without a session (site A gone), a bulk connection has nothing to join.
    let mut s = s;
    s.a.kill9();
    assert!(eventually(Duration::from_secs(10), || link_state(&s.b) != "up"), "B must see the link down");
    let refusal = hello_as_site_a(&s, &b_peer_listen(&s), geomirror_wire::peer::Lane::Bulk);
    assert!(refusal.contains("no session"), "B must refuse a bulk connection without a session, got {refusal:?}");
}

fn refusals(node: &NodeProcess) -> Vec<String> {
    node.logs().into_iter().filter(|l| l.contains("refused a peer connection")).collect()
}

#[test]
fn a_peer_with_a_foreign_certificate_is_refused() {
    let s = TwoSites::start(TwoSiteOptions::default());
    // A rogue site-a with certificates from another CA dials B.
    let rogue_certs = s.dir.path().join("rogue-certs");
    run_ok(30, geomirror_bin().to_str().unwrap(), &["certs", "--out", rogue_certs.to_str().unwrap(), "--node", "site-a"]);
    let rogue = start_rogue(&s, "site-a", &rogue_certs);
    // (B may also have refused a stray connection of the genuine pair, e.g.
    // a bulk lane that arrived after its session ended: the rogue's refusal
    // is the one that names the CA.)
    let named = || refusals(&s.b).iter().any(|l| l.contains("CA"));
    assert!(
        eventually(Duration::from_secs(10), named),
        "B must log the refusal, naming the certificate problem:\n{}",
        s.b.logs().join("\n")
    );
    assert_ne!(link_state(&rogue), "up");
    // The genuine pair is undisturbed.
    assert_eq!(link_state(&s.a), "up");
}

#[test]
fn a_peer_with_our_ca_but_another_name_is_refused() {
    let s = TwoSites::start(TwoSiteOptions::default());
    // site-0 holds a valid certificate of the same CA, but B's peer is site-a.
    let certs = s.dir.path().join("certs");
    run_ok(30, geomirror_bin().to_str().unwrap(), &["certs", "--out", certs.to_str().unwrap(), "--node", "site-0"]);
    let rogue = start_rogue(&s, "site-0", &certs);
    let named = || refusals(&s.b).iter().any(|l| l.contains("site-0") && l.contains("site-a"));
    assert!(eventually(Duration::from_secs(10), named), "B must log the refusal, naming both names:\n{}", refusals(&s.b).join("\n"));
    assert_ne!(link_state(&rogue), "up");
    assert_eq!(link_state(&s.a), "up");
}

#[test]
fn an_unreachable_peer_fails_claims_and_pulls_with_eio_after_the_timeout() {
    require_tool("qemu-io");
    let mut s = TwoSites::start(TwoSiteOptions { peer_timeout: "1s", ..Default::default() });
    qemu_io(&uri(&s.a), &["write -P 0x51 0 64k".into()]);
    qemu_io(&uri(&s.b), &["write -P 0x52 8M 64k".into()]);
    s.b.kill9();
    // A's own extent stays writable and readable at local speed.
    qemu_io(&uri(&s.a), &["write -P 0x53 0 4k".into(), "read -P 0x53 0 4k".into()]);
    // A clean extent needs a claim: EIO after peer_timeout.
    let started = std::time::Instant::now();
    let out = run_with_deadline(60, "qemu-io", &["-f", "raw", "-c", "write -P 0x54 20M 4k", &uri(&s.a)]);
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("Input/output error"), "a write needing the peer must fail with EIO: {text}");
    assert!(started.elapsed() >= Duration::from_millis(900), "it must wait for peer_timeout first");
    // B's extent (in A's record) cannot be read fresh: EIO, never stale data.
    let out = run_with_deadline(60, "qemu-io", &["-f", "raw", "-c", "read -P 0x52 8M 4k", &uri(&s.a)]);
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("Input/output error"), "a read of a peer-owned extent must fail with EIO: {text}");
    // Each EIO is traceable to one log line that says why.
    let logs = s.a.logs();
    let failed = |needle: &str| logs.iter().any(|l| l.contains("host request failed") && l.contains(needle));
    assert!(failed("offset=20971520") && failed("need the peer, which is unreachable"), "the failed write is not logged with its reason");
    assert!(
        failed("offset=8388608") && failed("is owned by the peer, which is unreachable"),
        "the failed read is not logged with its reason"
    );
    // The line names the node and the volume (through the node's and the
    // export's spans).
    let line = logs.iter().find(|l| l.contains("host request failed")).unwrap();
    assert!(line.contains("node{node=site-a}") && line.contains("export{volume=vol0}"), "the failure line lacks node or volume: {line}");
    s.a.assert_no_unexpected_warnings(&["host request failed", "peer link down"]);
    s.a.kill9();
}

#[test]
fn a_mismatched_volume_is_reported_and_not_served() {
    require_tool("qemu-io");
    let s = TwoSites::start(TwoSiteOptions { b_volume_size: Some("32MiB"), ..Default::default() });
    let reported = eventually(Duration::from_secs(10), || {
        status(&s.a)["volumes"][0]["replication"]["problem"].as_str().is_some_and(|p| p.contains("differs"))
    });
    assert!(reported, "A must report the mismatch: {}", status(&s.a));
    assert_eq!(status(&s.a)["volumes"][0]["serving"], false);
    let out = run_with_deadline(60, "qemu-io", &["-f", "raw", "-c", "write -P 1 0 4k", &uri(&s.a)]);
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(text.contains("Input/output error"), "{text}");
    // Fixed at B (a fresh volume of the right size): served again.
    let mut s = s;
    s.b.kill9();
    let config = std::fs::read_to_string(&s.b_config).unwrap().replace("\"32MiB\"", "\"64MiB\"");
    std::fs::write(&s.b_config, config).unwrap();
    std::fs::remove_dir_all(s.dir.path().join("data-site-b").join("volumes").join("vol0")).unwrap();
    s.b = NodeProcess::start(&s.b_config);
    s.wait_link_up(Duration::from_secs(20));
    assert!(eventually(Duration::from_secs(10), || status(&s.a)["volumes"][0]["serving"] == true), "{}", status(&s.a));
    qemu_io(&uri(&s.a), &["write -P 0x11 0 4k".into()]);
    qemu_io(&uri(&s.b), &["read -P 0x11 0 4k".into()]);
}

/// Writes at A across many extents, then `kill -9` of one site while the
/// copy stream is still behind (a slow WAN), a restart, and every
/// acknowledged write is read back at both sites.
fn writes_survive_kill_9_of(victim_is_a: bool) {
    require_tool("qemu-io");
    let mut s = TwoSites::start(TwoSiteOptions { rtt: Some("80ms"), release_after: "2s", ..Default::default() });
    let writes: Vec<(u64, u8)> = (0..40u64).map(|i| (i * 1_572_864 % (62 << 20) / 4096 * 4096, 0x40 + i as u8)).collect();
    let cmds: Vec<String> = writes.iter().map(|(o, p)| format!("write -P {p:#x} {o} 64k")).collect();
    qemu_io(&uri(&s.a), &cmds);
    assert!(figure(&s.a, "not_durable_at_peer_bytes") > 0, "the copy stream must still be behind when the site dies");
    if victim_is_a {
        s.a.kill9();
        // B cannot read A's extents while A is away: EIO, never stale data.
        let out =
            run_with_deadline(60, "qemu-io", &["-f", "raw", "-c", &format!("read -P {:#x} {} 4k", writes[0].1, writes[0].0), &uri(&s.b)]);
        let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
        assert!(text.contains("Input/output error"), "{text}");
        s.restart_a();
    } else {
        s.b.kill9();
        s.b = NodeProcess::start(&s.b_config);
    }
    s.wait_link_up(Duration::from_secs(20));
    // Expected contents, later writes winning.
    let mut model = std::collections::BTreeMap::new();
    for (o, p) in &writes {
        for k in 0..16 {
            model.insert(o + k * 4096, *p);
        }
    }
    let reads: Vec<String> = model.iter().map(|(o, p)| format!("read -P {p:#x} {o} 4k")).collect();
    for node in [&s.a, &s.b] {
        for chunk in reads.chunks(64) {
            qemu_io(&uri(node), chunk);
        }
    }
    // And once everything is copied and released, B alone has it all.
    assert!(eventually(Duration::from_secs(30), || figure(&s.b, "peer_owned_extents") == 0), "A must release its extents");
    s.a.kill9();
    for chunk in reads.chunks(64) {
        qemu_io(&uri(&s.b), chunk);
    }
}

#[test]
fn acknowledged_writes_survive_kill_9_of_the_writer() {
    writes_survive_kill_9_of(true);
}

#[test]
fn acknowledged_writes_survive_kill_9_of_the_receiver() {
    writes_survive_kill_9_of(false);
}

#[test]
fn the_owned_extent_limit_holds_and_applies_back_pressure() {
    require_tool("qemu-io");
    let s = TwoSites::start(TwoSiteOptions {
        rtt: Some("20ms"),
        max_owned_extents: 2,
        predict_extents: 0,
        release_after: "100ms",
        ..Default::default()
    });
    let uri_a = uri(&s.a);
    let writer = std::thread::spawn(move || {
        // Ten extents, 256 KiB each: far more than the limit of two.
        let cmds: Vec<String> = (0..10u64).map(|i| format!("write -P {:#x} {} 256k", 0x60 + i, i << 20)).collect();
        qemu_io(&uri_a, &cmds);
    });
    let mut max_owned = 0;
    while !writer.is_finished() {
        max_owned = max_owned.max(figure(&s.a, "owned_extents"));
        std::thread::sleep(Duration::from_millis(10));
    }
    writer.join().expect("writes succeed under back-pressure");
    assert!(max_owned <= 2, "A owned {max_owned} extents with a limit of 2");
    let cmds: Vec<String> = (0..10u64).map(|i| format!("read -P {:#x} {} 256k", 0x60 + i, i << 20)).collect();
    qemu_io(&uri(&s.b), &cmds);
}

/// `nbdinfo --map` as (offset, length, hole) runs, neighbours merged.
fn allocation_map(uri: &str) -> Vec<(u64, u64, bool)> {
    let out = run_ok(30, "nbdinfo", &["--map", uri]);
    let mut runs: Vec<(u64, u64, bool)> = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (offset, length, flags): (u64, u64, u32) = (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].parse().unwrap());
        match runs.last_mut() {
            Some((o, l, h)) if *h == (flags & 1 != 0) && *o + *l == offset => *l += length,
            _ => runs.push((offset, length, flags & 1 != 0)),
        }
    }
    runs
}

#[test]
fn block_status_at_the_other_site_never_calls_the_owners_fresh_data_a_hole() {
    require_tool("nbdinfo");
    require_tool("qemu-io");
    let s = TwoSites::start(TwoSiteOptions { rtt: Some("80ms"), predict_extents: 0, ..Default::default() });
    let m = 1u64 << 20;
    // A writes in extent 3; its copy is still on its way to B (40 ms one way).
    qemu_io(&uri(&s.a), &["write -P 0x3c 3M 64k".into()]);
    let at_b = allocation_map(&uri(&s.b));
    let covering = |runs: &[(u64, u64, bool)], o: u64, l: u64| runs.iter().find(|r| r.0 <= o && r.0 + r.1 >= o + l).copied();
    assert_eq!(covering(&at_b, 3 * m, m).map(|r| r.2), Some(false), "A owns extent 3: data at B, never a hole: {at_b:?}");
    assert_eq!(covering(&at_b, 0, 3 * m).map(|r| r.2), Some(true), "B's own untouched extents are holes: {at_b:?}");
    // At A, the map is exact.
    let at_a = allocation_map(&uri(&s.a));
    assert_eq!(covering(&at_a, 3 * m, 65536).map(|r| r.2), Some(false), "{at_a:?}");
    assert_eq!(covering(&at_a, 3 * m + 65536, m - 65536).map(|r| r.2), Some(true), "{at_a:?}");
}
