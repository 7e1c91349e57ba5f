//! The operator's view of a running pair: `geomirror status` (its text and
//! exit code, healthy and not) and the recent events at `GET /events`.

mod common;

use std::time::Duration;

use common::two_site::*;
use common::*;

/// `geomirror status --admin ADDR [extra]`: whether it exited 0, and what it printed.
fn status_cmd(node: &NodeProcess, extra: &[&str]) -> (bool, String) {
    let admin = node.admin.to_string();
    let mut args = vec!["status", "--admin", admin.as_str()];
    args.extend(extra);
    let out = run_with_deadline(30, geomirror_bin().to_str().unwrap(), &args);
    (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
}

fn event_kinds(node: &NodeProcess, since: u64) -> Vec<String> {
    let page: serde_json::Value = serde_json::from_str(&node.admin_get(&format!("/events?since={since}"))).unwrap();
    page["events"].as_array().unwrap().iter().map(|e| e["event"]["kind"].as_str().unwrap().to_string()).collect()
}

#[test]
fn status_says_healthy_with_exit_0_then_names_the_lost_peer_with_exit_1_and_events_tell_the_story() {
    require_tool("qemu-io");
    let mut s = TwoSites::start(TwoSiteOptions::default());
    qemu_io(&s.a.uri("vol0"), &["write -P 0x5 0 64k".into()]);
    let (ok, text) = status_cmd(&s.a, &[]);
    assert!(ok, "healthy pair, exit code must be 0:\n{text}");
    assert!(text.contains("site-a  connected") && text.contains("peer site-b: link up"), "{text}");
    assert!(text.contains("vol0  64.0 MiB  async  serving") && text.contains("extents owned here of 64"), "{text}");
    let (ok, json) = status_cmd(&s.a, &["--json"]);
    assert!(ok && serde_json::from_str::<serde_json::Value>(&json).unwrap()["name"] == "site-a");
    assert!(event_kinds(&s.a, 0).contains(&"link-up".to_string()), "{:?}", event_kinds(&s.a, 0));
    let seen: serde_json::Value = serde_json::from_str(&s.a.admin_get("/events")).unwrap();
    let last = seen["last"].as_u64().unwrap();

    s.b.kill9();
    assert!(eventually(Duration::from_secs(20), || link_state(&s.a) != "up"), "A must notice B is gone");
    let (ok, text) = status_cmd(&s.a, &[]);
    assert!(!ok, "a lost peer must give a non-zero exit code:\n{text}");
    assert!(text.contains("not healthy") && text.contains("peer link"), "{text}");
    let kinds = event_kinds(&s.a, last);
    assert!(kinds.contains(&"link-down".to_string()), "the link's loss is an event: {kinds:?}");
    assert!(!kinds.contains(&"link-up".to_string()), "only events after `since`: {kinds:?}");

    s.b = NodeProcess::start(&s.b_config);
    s.wait_link_up(Duration::from_secs(20));
    assert!(eventually(Duration::from_secs(20), || status_cmd(&s.a, &[]).0), "healthy again: {}", status_cmd(&s.a, &[]).1);
}
