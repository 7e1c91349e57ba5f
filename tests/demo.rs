//! The README's first command: `geomirror demo` brings up two sites and the
//! WAN simulator, serves real clients, and stops cleanly on Ctrl-C.

mod common;

use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use common::two_site::free_port;
use common::*;

#[test]
fn the_demo_serves_both_sites_and_stops_on_ctrl_c() {
    require_tool("qemu-io");
    let dir = tempfile::tempdir().unwrap();
    let ports: Vec<String> = (0..5).map(|_| format!("127.0.0.1:{}", free_port())).collect();
    let mut command = Command::new(geomirror_bin());
    command
        .args(["demo", "--dir", dir.path().to_str().unwrap(), "--volume", "vol0:64MiB", "--rtt", "10ms"])
        .args(["--nbd-a", &ports[0], "--nbd-b", &ports[1], "--admin-a", &ports[2], "--admin-b", &ports[3], "--sim-control", &ports[4]])
        .stdout(Stdio::piped())
        .stderr(Stdio::null());
    die_with_parent(&mut command);
    let mut demo = command.spawn().expect("spawn the demo");
    let mut out = BufReader::new(demo.stdout.take().unwrap());
    let started = Instant::now();
    let mut printed = String::new();
    while !printed.contains("Ctrl-C stops the demo") {
        let mut line = String::new();
        assert!(out.read_line(&mut line).unwrap() > 0, "the demo ended early:\n{printed}");
        printed.push_str(&line);
        assert!(started.elapsed() < Duration::from_secs(60), "the demo did not come up");
    }
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
    // Ctrl-C: everything stops.
    // SAFETY: kill(2) on our own child.
    unsafe { libc::kill(demo.id() as i32, libc::SIGINT) };
    let until = Instant::now() + Duration::from_secs(20);
    let status = loop {
        if let Some(status) = demo.try_wait().unwrap() {
            break status;
        }
        assert!(Instant::now() < until, "the demo did not stop on SIGINT");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert!(status.success(), "the demo exits cleanly: {status}");
    for site in ["site-a", "site-b"] {
        let log = std::fs::read_to_string(dir.path().join(format!("{site}.log"))).unwrap();
        assert!(log.contains("stopped"), "{site} stopped cleanly:\n{log}");
    }
}
