//! The day a site dies, with real processes and real clients: two nodes, a
//! witness, and `geomirror sim` on every link (A–B, A–witness,
//! B–witness), so any of them can be cut. Leases are 1.5 s with a 200 ms
//! drift bound and a 1 s heartbeat timeout (see `TwoSiteOptions::witness`).

mod common;

use std::time::{Duration, Instant};

use common::two_site::*;
use common::*;

fn uri(node: &NodeProcess) -> String {
    node.uri("vol0")
}

fn options() -> TwoSiteOptions {
    // No prediction: which extents are clean stays what each test wrote.
    TwoSiteOptions {
        predict_extents: 0,
        witness: true,
        rtt: Some("2ms"),
        peer_timeout: "4s",
        volume_size: "64MiB",
        max_owned_extents: 64,
        ..Default::default()
    }
}

/// Runs qemu-io once; returns whether every command succeeded.
fn qemu_io_ok(uri: &str, cmds: &[&str]) -> (bool, String) {
    qemu_io_try(uri, &cmds.iter().map(|c| c.to_string()).collect::<Vec<_>>())
}

/// Starts `fio --verify=crc32c` (writes verified as they go, for
/// `seconds`) in a thread; the thread returns fio's JSON report.
fn fio_verify(uri: &str, offset: &str, size: &str, seconds: u32) -> std::thread::JoinHandle<serde_json::Value> {
    let args: Vec<String> = vec![
        "--name=geo".into(),
        "--ioengine=nbd".into(),
        format!("--uri={uri}"),
        "--rw=randwrite".into(),
        "--bs=4k".into(),
        format!("--offset={offset}"),
        format!("--size={size}"),
        "--iodepth=4".into(),
        "--time_based".into(),
        format!("--runtime={seconds}"),
        "--verify=crc32c".into(),
        "--verify_backlog=64".into(),
        "--verify_fatal=1".into(),
        "--verify_state_save=0".into(),
        "--output-format=json".into(),
    ];
    std::thread::spawn(move || {
        let refs: Vec<&str> = args.iter().map(String::as_str).collect();
        let out = run_with_deadline(seconds + 60, "fio", &refs);
        let text = String::from_utf8_lossy(&out.stdout).to_string();
        text.find('{').and_then(|i| serde_json::from_str(&text[i..]).ok()).unwrap_or(serde_json::Value::Null)
    })
}

fn geomirror(args: &[&str]) -> String {
    let out = run_with_deadline(60, geomirror_bin().to_str().unwrap(), args);
    let text = String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "geomirror {args:?} failed:\n{text}");
    text
}

#[test]
fn a_site_lost_for_good_is_survived_taken_over_and_its_divergent_blocks_kept() {
    require_tool("qemu-io");
    require_tool("fio");
    let mut s = TwoSites::start(options());
    // A owns extents 0..4 and B has their data; B owns 40..48.
    qemu_io(&uri(&s.a), &["write -P 0xa1 0 4M".into()]);
    qemu_io(&uri(&s.b), &["write -P 0xbb 40M 8M".into()]);
    assert!(eventually(Duration::from_secs(20), || figure(&s.a, "not_durable_at_peer_bytes") == 0), "{}", status(&s.a));
    // A verifying fio workload at each site, running while A dies: B's must
    // carry on and verify; A's dies with A.
    let fio_b = fio_verify(&uri(&s.b), "40m", "8m", 12);
    let fio_a = fio_verify(&uri(&s.a), "24m", "4m", 12);
    std::thread::sleep(Duration::from_secs(1));
    // The link to B stalls; A acknowledges writes B never receives, then dies.
    // B hears nothing from A from here: its clocks run from the hold.
    let silent = Instant::now();
    s.sim.as_ref().unwrap().control(&["partition", "--mode", "hold"]);
    qemu_io(&uri(&s.a), &["write -P 0xa2 -f 0 1M".into()]);
    s.a.kill9();

    // B becomes the survivor: a write to a clean extent succeeds once A's
    // lease has surely ended (heartbeat timeout + lease + drift bound).
    let (ok, text) = qemu_io_ok(&uri(&s.b), &["write -P 0xb1 32M 4k"]);
    let first_write = silent.elapsed();
    assert!(ok, "the survivor's first write in a clean extent failed: {text}");
    assert!(first_write < Duration::from_secs(5), "the survivor wrote after {first_write:?} (target: within 5 s)");
    assert!(first_write > Duration::from_millis(1700), "the survivor acted alone after {first_write:?}, before A's lease surely ended");
    assert_eq!(health(&s.b), "survivor");
    let report = fio_b.join().expect("fio at B");
    assert_eq!(report["jobs"][0]["error"], 0, "fio at B failed across A's death: {}", report["jobs"][0]);
    assert!(report["jobs"][0]["write"]["io_bytes"].as_u64().unwrap_or(0) > 0, "fio at B wrote nothing");
    let _ = fio_a.join();
    // A's extents are not readable at B until an operator takes them over.
    let (ok, text) = qemu_io_ok(&uri(&s.b), &["read -P 0xa1 0 4k"]);
    assert!(!ok && text.contains("Input/output error"), "a read of the lost peer's extent must fail with EIO before a takeover: {text}");

    // The takeover shows what it takes, then takes it.
    // A owns 0..4 and 24..28 (its fio's region).
    let peer_owned = figure(&s.b, "peer_owned_extents");
    assert!(peer_owned >= 4, "{}", status(&s.b));
    let admin = s.b.admin.to_string();
    let shown = geomirror(&["takeover", "--admin", &admin, "--volume", "vol0"]);
    assert!(shown.contains(&format!("{peer_owned} extents")) && shown.contains("--yes"), "{shown}");
    assert_eq!(figure(&s.b, "peer_owned_extents"), peer_owned, "showing the exposure took something over");
    let done = geomirror(&["takeover", "--admin", &admin, "--volume", "vol0", "--yes"]);
    assert!(done.contains(&format!("took over {peer_owned} extents")), "{done}");
    assert_eq!(figure(&s.b, "peer_owned_extents"), 0, "{}", status(&s.b));
    // Served from B's data at once; B writes into a taken extent.
    qemu_io(&uri(&s.b), &["read -P 0xa1 0 4M".into(), "write -P 0xb3 512k 512k".into()]);

    // A comes back: it resyncs, saves its divergent blocks, and B's data wins.
    s.sim.as_ref().unwrap().control(&["heal"]);
    s.restart_a();
    s.wait_link_up(Duration::from_secs(20));
    assert!(
        eventually(Duration::from_secs(30), || health(&s.a) == "connected" && health(&s.b) == "connected"),
        "A: {}\nB: {}",
        status(&s.a),
        status(&s.b)
    );
    for node in [&s.a, &s.b] {
        qemu_io(&uri(node), &["read -P 0xa1 0 512k".into(), "read -P 0xb3 512k 512k".into(), "read -P 0xb1 32M 4k".into()]);
    }
    // A's acknowledged bytes are in its conflict file, and extract to them.
    let data_a = s.dir.path().join("data-site-a");
    let listed = geomirror(&["conflicts", "list", "--data-dir", data_a.to_str().unwrap()]);
    // The 256 blocks of the taken-over extent 0 (A's 0xa2, never copied),
    // what A's fio wrote while the link held (taken over too), and A's old
    // block where B claimed extent 32 alone and wrote.
    assert!(listed.matches("taken-over").count() >= 256, "{listed}");
    assert_eq!(listed.matches("claimed-alone").count(), 1, "{listed}");
    let image = s.dir.path().join("a-divergent.img");
    geomirror(&["conflicts", "extract", "--data-dir", data_a.to_str().unwrap(), "--volume", "vol0", "--out", image.to_str().unwrap()]);
    qemu_io(image.to_str().unwrap(), &["read -P 0xa2 0 1M".into(), "read -P 0 1M 1M".into()]);
    s.b.assert_no_unexpected_warnings(&[
        "health changed",
        "acting alone",
        "took over",
        "takeover",
        "host request failed",
        "peer link down",
    ]);
}

#[test]
fn a_partition_with_the_witness_reachable_by_both_makes_exactly_one_survivor() {
    require_tool("qemu-io");
    let s = TwoSites::start(options());
    qemu_io(&uri(&s.a), &["write -P 0x11 0 1M".into()]);
    qemu_io(&uri(&s.b), &["write -P 0x22 8M 1M".into()]);
    s.sim.as_ref().unwrap().control(&["partition", "--mode", "reset"]);
    let decided = eventually(Duration::from_secs(10), || {
        let (a, b) = (health(&s.a), health(&s.b));
        (a == "survivor" && b == "fenced") || (a == "fenced" && b == "survivor")
    });
    assert!(decided, "A: {}\nB: {}", status(&s.a), status(&s.b));
    let (survivor, fenced) = if health(&s.a) == "survivor" { (&s.a, &s.b) } else { (&s.b, &s.a) };
    // The metrics say so too: the link is down, and each node's health.
    for (node, peer, state) in [(survivor, "site-", "survivor"), (fenced, "site-", "fenced")] {
        let metrics = http_get(node.admin, "/metrics");
        let line = |prefix: &str| metrics.lines().find(|l| l.starts_with(prefix)).map(str::to_string);
        let link = line(&format!("geomirror_peer_link_up{{peer=\"{peer}")).unwrap_or_default();
        assert!(link.ends_with(" 0"), "the link gauge says up during the partition: {link:?}\n{metrics}");
        let health = line(&format!("geomirror_node_health{{health=\"{state}\"}}")).unwrap_or_default();
        assert!(health.ends_with(" 1"), "{state} is not 1 in the health gauge: {health:?}");
    }
    // The log says why the link went down, without a library's links.
    let down: Vec<String> = fenced.logs().into_iter().filter(|l| l.contains("peer link down")).collect();
    assert!(!down.is_empty() && down.iter().all(|l| l.contains("WARN") && !l.contains("https://")), "{down:?}");
    // The fenced node answers nothing, not even its own extents.
    let (ok, text) = qemu_io_ok(&uri(fenced), &["read 0 4k"]);
    assert!(!ok && text.contains("Input/output error"), "the fenced node answered a read: {text}");
    // The survivor carries on in a clean extent once it acts alone.
    assert!(eventually(Duration::from_secs(10), || qemu_io_ok(&uri(survivor), &["write -P 0x33 20M 4k"]).0));
    s.sim.as_ref().unwrap().control(&["heal"]);
    s.wait_link_up(Duration::from_secs(20));
    assert!(eventually(Duration::from_secs(20), || health(&s.a) == "connected" && health(&s.b) == "connected"));
    // No stale read at either site.
    for node in [&s.a, &s.b] {
        qemu_io(&uri(node), &["read -P 0x11 0 1M".into(), "read -P 0x22 8M 1M".into(), "read -P 0x33 20M 4k".into()]);
    }
}

#[test]
fn a_node_cut_from_its_peer_and_the_witness_fences_itself_and_the_other_survives() {
    require_tool("qemu-io");
    let s = TwoSites::start(options());
    qemu_io(&uri(&s.a), &["write -P 0x44 0 1M".into()]);
    let w = s.witness.as_ref().unwrap();
    w.sim_a.control(&["partition", "--mode", "reset"]);
    s.sim.as_ref().unwrap().control(&["partition", "--mode", "reset"]);
    assert!(
        eventually(Duration::from_secs(10), || health(&s.a) == "fenced" && health(&s.b) == "survivor"),
        "A: {}\nB: {}",
        status(&s.a),
        status(&s.b)
    );
    // A owns extent 0 but answers nothing from it: B may act on it soon.
    let (ok, text) = qemu_io_ok(&uri(&s.a), &["read -P 0x44 0 4k"]);
    assert!(!ok && text.contains("Input/output error"), "a node whose lease ended answered a read: {text}");
    w.sim_a.control(&["heal"]);
    s.sim.as_ref().unwrap().control(&["heal"]);
    s.wait_link_up(Duration::from_secs(20));
    assert!(eventually(Duration::from_secs(20), || health(&s.a) == "connected" && health(&s.b) == "connected"));
    qemu_io(&uri(&s.b), &["read -P 0x44 0 1M".into()]);
}

#[test]
fn losing_only_the_witness_stops_no_io_and_every_process_restarts_in_turn() {
    require_tool("qemu-io");
    let mut s = TwoSites::start(options());
    s.witness.as_mut().unwrap().process.kill9();
    // Writes that need claims and reads that pull go on without the witness.
    for round in 0..4u64 {
        let at = round << 22;
        let (a, b) = (format!("write -P 0x5{round} {at} 1M"), format!("read -P 0x5{round} {at} 1M"));
        let (ok, text) = qemu_io_ok(&uri(&s.a), &[&a]);
        assert!(ok, "{text}");
        let (ok, text) = qemu_io_ok(&uri(&s.b), &[&b]);
        assert!(ok, "{text}");
        std::thread::sleep(Duration::from_millis(500));
    }
    assert_eq!((health(&s.a), health(&s.b)), ("connected".to_string(), "connected".to_string()));
    // Each process in turn: the witness, B, A.
    s.witness.as_mut().unwrap().restart();
    assert!(eventually(Duration::from_secs(10), || status(&s.a)["standing"]["witness"] == "connected"));
    s.b.kill9();
    s.restart_b();
    s.wait_link_up(Duration::from_secs(20));
    qemu_io(&uri(&s.b), &["write -P 0x61 16M 1M".into()]);
    s.a.kill9();
    s.restart_a();
    s.wait_link_up(Duration::from_secs(20));
    qemu_io(&uri(&s.a), &["read -P 0x61 16M 1M".into(), "read -P 0x53 12M 1M".into()]);
    assert!(eventually(Duration::from_secs(20), || health(&s.a) == "connected" && health(&s.b) == "connected"));
}

/// The config of `path` without its `[peer]`, `[tls]` and `[witness]`
/// sections: the same node, started alone.
fn alone_config(path: &std::path::Path) -> String {
    let mut keep = true;
    let mut out = String::new();
    for line in std::fs::read_to_string(path).unwrap().lines() {
        if line.starts_with('[') {
            keep = !matches!(line, "[peer]" | "[tls]" | "[witness]");
        }
        if keep {
            out.push_str(line);
            out.push('\n');
        }
    }
    out
}

#[test]
fn a_volume_with_a_claims_record_is_not_served_alone_until_taken_over_and_then_never_mirrored_silently() {
    require_tool("qemu-io");
    let mut s = TwoSites::start(TwoSiteOptions { rtt: Some("2ms"), predict_extents: 0, ..Default::default() });
    qemu_io(&uri(&s.a), &["write -P 0xa1 0 1M".into()]);
    assert!(eventually(Duration::from_secs(20), || figure(&s.a, "not_durable_at_peer_bytes") == 0), "{}", status(&s.a));
    s.a.kill9();
    s.b.kill9();
    // B alone: its record says A owns extent 0, so it refuses to start.
    let alone = s.dir.path().join("site-b-alone.toml");
    std::fs::write(&alone, alone_config(&s.b_config)).unwrap();
    let log = NodeProcess::start_fails(&alone);
    assert!(log.contains("is not served without its peer") && log.contains("takeover --data-dir"), "{log}");
    // The offline takeover shows, refuses without --peer-is-down, then takes.
    let data_b = s.dir.path().join("data-site-b");
    let data = data_b.to_str().unwrap();
    let shown = geomirror(&["takeover", "--data-dir", data, "--volume", "vol0"]);
    assert!(shown.contains("1 extents (1.0 MiB) owned by the peer") && shown.contains("--yes --peer-is-down"), "{shown}");
    let out = run_with_deadline(60, geomirror_bin().to_str().unwrap(), &["takeover", "--data-dir", data, "--volume", "vol0", "--yes"]);
    assert!(!out.status.success(), "an offline takeover without --peer-is-down must fail");
    geomirror(&["takeover", "--data-dir", data, "--volume", "vol0", "--yes", "--peer-is-down"]);
    let b_alone = NodeProcess::start(&alone);
    qemu_io(&b_alone.uri("vol0"), &["read -P 0xa1 0 1M".into(), "write -P 0xb2 0 4k".into()]);
    drop(b_alone);
    // Back with its peer, the volume taken over offline is not mirrored as
    // if nothing happened: neither site serves it, and both say why.
    s.restart_b();
    s.restart_a();
    s.wait_link_up(Duration::from_secs(20));
    for node in [&s.a, &s.b] {
        let problem = status(node)["volumes"][0]["replication"]["problem"].as_str().unwrap_or("").to_string();
        assert!(problem.contains("taken over offline"), "{}", status(node));
        let (ok, text) = qemu_io_ok(&uri(node), &["read 0 4k"]);
        assert!(!ok, "a volume taken over offline was served by a mirrored node: {text}");
    }
}
