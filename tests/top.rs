//! `geomirror top` for real: the terminal UI in tmux against the running
//! demo, its figures following a write at site A, then the link's loss
//! when the WAN simulator partitions it.

mod common;

use std::process::Command;
use std::time::Duration;

use common::demo::Demo;
use common::two_site::eventually;
use common::*;

/// A tmux session on a private socket, killed when dropped.
struct Tmux {
    socket: String,
    session: String,
}

impl Tmux {
    fn start(command: &str) -> Tmux {
        let tmux = Tmux { socket: format!("geomirror-top-{}", std::process::id()), session: "top".into() };
        let ok = Command::new("tmux")
            .args(["-L", &tmux.socket, "new-session", "-d", "-s", &tmux.session, "-x", "160", "-y", "48", command])
            .status()
            .expect("run tmux");
        assert!(ok.success(), "tmux new-session failed");
        tmux
    }

    fn screen(&self) -> String {
        let out =
            Command::new("tmux").args(["-L", &self.socket, "capture-pane", "-p", "-t", &self.session]).output().expect("capture-pane");
        String::from_utf8_lossy(&out.stdout).to_string()
    }

    fn keys(&self, keys: &str) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "send-keys", "-t", &self.session, keys]).status();
    }

    /// Waits until the screen shows `text`.
    fn wait_for(&self, text: &str, limit: Duration) -> String {
        self.wait_until(text, limit, |screen| screen.contains(text))
    }

    /// Waits until `shown` holds for the screen (`what` for the message).
    fn wait_until(&self, what: &str, limit: Duration, shown: impl Fn(&str) -> bool) -> String {
        let mut last = String::new();
        let ok = eventually(limit, || {
            last = self.screen();
            shown(&last)
        });
        assert!(ok, "the screen did not show {what} within {limit:?}:\n{last}");
        last
    }
}

impl Drop for Tmux {
    fn drop(&mut self) {
        let _ = Command::new("tmux").args(["-L", &self.socket, "kill-server"]).status();
    }
}

#[test]
fn top_shows_a_write_at_site_a_and_then_the_partitioned_link() {
    require_tool("tmux");
    require_tool("qemu-io");
    let demo = Demo::start();
    let (nbd_a, admin_a, admin_b, control) = (&demo.ports[0], &demo.ports[2], &demo.ports[3], &demo.ports[4]);
    let bin = geomirror_bin();
    // Given only site A, top finds site B through A's `[peer] admin`.
    let tmux = Tmux::start(&format!("{} top --admin {admin_a} --interval 0.3", bin.display()));
    let _ = admin_b;
    let nothing_owned = "owned 0/1024 extents · exposed 0 B · peer owns 0";
    let before = tmux.wait_until("both sites owning nothing", Duration::from_secs(20), |s| s.matches(nothing_owned).count() == 2);
    assert!(before.contains("site-a") && before.contains("site-b") && before.contains("link up"), "{before}");
    // 4 MiB written at A: A owns extents (and the predicted next ones), B
    // records them, and the screen says so at both sites.
    qemu_io(&format!("nbd://{nbd_a}/vol0"), &["write -P 0x42 0 4M".into()]);
    let after = tmux.wait_until("A owning what it wrote", Duration::from_secs(20), |s| {
        !s.contains(nothing_owned) && s.contains("MiB · peer owns 0") && s.contains("exposed 0 B · peer owns ")
    });
    assert!(after.contains("host writes") && after.contains("1024 extents"), "{after}");
    // The WAN is cut: the link goes down on screen, and the event is listed.
    run_ok(30, bin.to_str().unwrap(), &["sim", "partition", "--control", control]);
    let cut_at = std::time::Instant::now();
    let cut = tmux.wait_for("link down", Duration::from_secs(30));
    // A silent partition is noticed by the heartbeats (1.5 s by default),
    // not seconds later.
    assert!(cut_at.elapsed() < Duration::from_secs(5), "the link showed down only after {:?}", cut_at.elapsed());
    assert!(cut.contains("peer link down"), "the event list shows the loss:\n{cut}");
    tmux.keys("q");
    assert!(eventually(Duration::from_secs(10), || !tmux.screen().contains("q quit")), "q quits");
    drop(demo);
}
