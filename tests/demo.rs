//! The README's first command: `geomirror demo` brings up two sites, a
//! witness and the WAN simulator, serves real clients, survives the death of
//! a site (killed through the demo's own `kill a`), rejoins it on `start a`,
//! and stops cleanly on Ctrl-C.

mod common;

use std::time::{Duration, Instant};

use common::demo::Demo;
use common::two_site::eventually;
use common::*;

#[test]
fn the_demo_serves_both_sites_and_stops_on_ctrl_c() {
    require_tool("qemu-io");
    let demo = Demo::start();
    let (ports, printed) = (&demo.ports, &demo.printed);
    let (a, b) = (format!("nbd://{}/vol0", ports[0]), format!("nbd://{}/vol0", ports[1]));
    assert!(printed.contains(&a) && printed.contains(&b), "the demo prints both URIs:\n{printed}");
    qemu_io(&a, &["write -P 0x77 0 1M".into()]);
    qemu_io(&b, &["read -P 0x77 0 1M".into()]);
    // The printed simulator command works against the running link.
    run_ok(30, geomirror_bin().to_str().unwrap(), &["sim", "set", "--control", &ports[4], "--rtt", "30ms"]);
    let link = http_get(ports[4].parse().unwrap(), "/link");
    assert!(link.contains("15000") || link.contains("15ms"), "RTT 30 ms means 15 ms each way: {link}");
    qemu_io(&b, &["write -P 0x78 4M 64k".into()]);
    qemu_io(&a, &["read -P 0x78 4M 64k".into(), "read -P 0x77 0 1M".into()]);
    demo.stop();
}

#[test]
fn the_demo_survives_the_death_of_a_site_and_rejoins_it() {
    require_tool("qemu-io");
    let mut demo = Demo::start();
    let (a, b) = (format!("nbd://{}/vol0", demo.ports[0]), format!("nbd://{}/vol0", demo.ports[1]));
    let (admin_a, admin_b) = (demo.ports[2].clone(), demo.ports[3].clone());
    assert!(demo.printed.contains("kill a") && demo.printed.contains("takeover --admin"), "{}", demo.printed);
    qemu_io(&a, &["write -P 0x31 0 1M".into()]);
    // The copy stream delivers A's write to B before A dies (what it had not
    // would be lost to hosts by the takeover, as the takeover says).
    let delivered = || {
        let status: serde_json::Value = serde_json::from_str(&http_get(admin_a.parse().unwrap(), "/status")).unwrap();
        status["volumes"][0]["replication"]["not_durable_at_peer_bytes"] == 0
    };
    assert!(eventually(Duration::from_secs(20), delivered), "A's copy stream did not catch up");
    demo.type_line("kill a");
    demo.wait_for("site-a killed", Duration::from_secs(10));
    let died = Instant::now();
    // B (and the simulator, and the witness) carry on: B becomes survivor
    // and writes a clean extent; the printed commands take A's extents over.
    let survived = || demo.health(&admin_b) == "survivor";
    assert!(eventually(Duration::from_secs(15), survived), "B did not become survivor: {}", demo.health(&admin_b));
    assert!(eventually(Duration::from_secs(10), || qemu_io_succeeds(&b, "write -P 0x32 16M 64k")), "B cannot write alone");
    assert!(died.elapsed() < Duration::from_secs(8), "B wrote alone only after {:?}", died.elapsed());
    let bin = geomirror_bin();
    let shown = run_ok(30, bin.to_str().unwrap(), &["takeover", "--admin", &admin_b, "--volume", "vol0"]);
    assert!(shown.contains("owned by the lost peer"), "{shown}");
    run_ok(30, bin.to_str().unwrap(), &["takeover", "--admin", &admin_b, "--volume", "vol0", "--yes"]);
    qemu_io(&b, &["read -P 0x31 0 1M".into()]);
    // `start a`: A rejoins, resyncs, and serves B's writes.
    demo.type_line("start a");
    demo.wait_for("site-a started", Duration::from_secs(10));
    let joined = || demo.health(&admin_a) == "connected" && demo.health(&admin_b) == "connected";
    assert!(eventually(Duration::from_secs(30), joined), "A: {} B: {}", demo.health(&admin_a), demo.health(&admin_b));
    qemu_io(&a, &["read -P 0x31 0 1M".into(), "read -P 0x32 16M 64k".into()]);
    demo.stop();
}

fn qemu_io_succeeds(uri: &str, command: &str) -> bool {
    qemu_io_try(uri, &[command.to_string()]).0
}
