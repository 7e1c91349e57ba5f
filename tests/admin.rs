//! The admin endpoint: `/status` JSON and `/metrics` Prometheus text, with
//! figures that follow real client traffic.

mod common;

use common::*;

#[test]
fn status_and_metrics_follow_client_traffic() {
    require_tool("qemu-io");
    let n = SingleNode::start("vol0", "16MiB");
    let status: serde_json::Value = serde_json::from_str(&n.node.admin_get("/status")).unwrap();
    assert_eq!(status["name"], "site-a");
    assert_eq!(status["volumes"][0]["name"], "vol0");
    assert_eq!(status["volumes"][0]["size_bytes"], 16 << 20);
    assert!(status["uptime_seconds"].as_f64().unwrap() >= 0.0);
    qemu_io(&n.node.uri("vol0"), &["write -P 1 0 64k".into(), "write -P 2 1M 4k".into(), "read -P 1 0 64k".into()]);
    let metrics = n.node.admin_get("/metrics");
    let value = |name: &str| -> f64 {
        metrics
            .lines()
            .find(|l| l.starts_with(name))
            .unwrap_or_else(|| panic!("{name} missing from /metrics:\n{metrics}"))
            .rsplit(' ')
            .next()
            .unwrap()
            .parse()
            .unwrap()
    };
    assert_eq!(value("geomirror_host_writes_total{volume=\"vol0\"}"), 2.0);
    assert_eq!(value("geomirror_host_write_bytes_total{volume=\"vol0\"}"), (65536 + 4096) as f64);
    assert!(value("geomirror_host_reads_total{volume=\"vol0\"}") >= 1.0);
    assert_eq!(value("geomirror_nbd_request_seconds_count{volume=\"vol0\",op=\"write\"}"), 2.0);
    assert!(metrics.contains("geomirror_nbd_request_seconds_bucket{volume=\"vol0\",op=\"read\",le="));
    // Every metric says what it is.
    for name in ["geomirror_host_writes_total", "geomirror_host_write_bytes_total", "geomirror_nbd_request_seconds"] {
        assert!(metrics.contains(&format!("# HELP {name} ")), "no HELP line for {name}:\n{metrics}");
    }
}
