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

/// Prometheus conventions, checked on a two-site node after real traffic:
/// every series has `# HELP` and `# TYPE`; counters end in `_total`; sizes
/// are in bytes and times in seconds, named so; labels are from one small
/// set (`volume`, `peer`, `lane`, ...).
#[test]
fn metrics_follow_prometheus_conventions() {
    require_tool("qemu-io");
    let s = common::two_site::TwoSites::start(common::two_site::TwoSiteOptions::default());
    qemu_io(&s.a.uri("vol0"), &["write -P 1 0 64k".into(), "read -P 1 0 4k".into(), "flush".into()]);
    let metrics = s.a.admin_get("/metrics");
    let mut types = std::collections::BTreeMap::new();
    let mut helped = std::collections::BTreeSet::new();
    for line in metrics.lines() {
        let parts: Vec<&str> = line.splitn(4, ' ').collect();
        match parts.as_slice() {
            ["#", "TYPE", name, kind] => {
                types.insert(name.to_string(), kind.to_string());
            }
            ["#", "HELP", name, ..] => {
                helped.insert(name.to_string());
            }
            _ => {}
        }
    }
    assert!(types.len() >= 20, "a two-site node exports its figures: {types:?}");
    let allowed = ["volume", "peer", "lane", "op", "health", "mode", "step", "from", "le", "quantile"];
    for (name, kind) in &types {
        assert!(name.starts_with("geomirror_"), "{name}: one prefix");
        assert!(helped.contains(name), "{name}: no # HELP");
        if kind == "counter" {
            assert!(name.ends_with("_total"), "{name}: a counter ends in _total");
        }
        if name.contains("bytes") {
            assert!(name.ends_with("_bytes") || name.ends_with("_bytes_total"), "{name}: bytes as the unit suffix");
        }
        if name.contains("second") || name.contains("latency") {
            assert!(name.ends_with("_seconds") || name.ends_with("_seconds_total"), "{name}: seconds as the unit suffix");
        }
        assert!(!["_ms", "_us", "_millis", "_kib", "_mib"].iter().any(|u| name.contains(u)), "{name}: base units only");
    }
    // The Grafana dashboard asks only for series the node exports (some
    // appear at their first occurrence: those must at least be defined).
    let dashboard = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/docs/grafana-dashboard.json")).unwrap();
    let defined = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/node/src/metrics.rs")).unwrap();
    let json: serde_json::Value = serde_json::from_str(&dashboard).expect("the dashboard is JSON");
    let mut asked = 0;
    for panel in json["panels"].as_array().unwrap() {
        for target in panel["targets"].as_array().unwrap() {
            let expr = target["expr"].as_str().unwrap();
            for (at, _) in expr.match_indices("geomirror_") {
                let name: String = expr[at..].chars().take_while(|c| c.is_ascii_alphanumeric() || *c == '_').collect();
                let series = name.trim_end_matches("_bucket").to_string();
                assert!(types.contains_key(&series) || defined.contains(&format!("\"{series}\"")), "the dashboard asks for `{name}`");
                asked += 1;
            }
        }
    }
    assert!(asked >= 20, "the dashboard's panels query the node ({asked} series)");
    for line in metrics.lines().filter(|l| !l.starts_with('#') && l.contains('{')) {
        let labels = &line[line.find('{').unwrap() + 1..line.find('}').unwrap()];
        for pair in labels.split(',').filter(|p| !p.is_empty()) {
            let key = pair.split('=').next().unwrap();
            assert!(allowed.contains(&key), "label `{key}` in `{line}`");
        }
    }
}

/// With `admin.token_file`, every admin request needs the bearer token:
/// refused (401, and logged) without it, served with it; the operator's
/// commands send it from `GEOMIRROR_ADMIN_TOKEN`. A token too short to be
/// one stops the node at start.
#[test]
fn an_admin_token_guards_every_endpoint_and_the_commands_send_it() {
    let dir = tempfile::tempdir().unwrap();
    let token = "s3cret-admin-token-0123456789";
    std::fs::write(dir.path().join("admin.token"), format!("{token}\n")).unwrap();
    let config = single_node_config(&dir.path().join("data"), "vol0", "16MiB")
        .replace("[admin]\nlisten = \"127.0.0.1:0\"\n", "[admin]\nlisten = \"127.0.0.1:0\"\ntoken_file = \"admin.token\"\n");
    let path = dir.path().join("node.toml");
    std::fs::write(&path, &config).unwrap();
    let node = NodeProcess::start(&path);
    for endpoint in ["/status", "/metrics", "/events"] {
        let refused = try_http_get(node.admin, endpoint).unwrap_err();
        assert!(refused.contains("401"), "{endpoint} without the token: {refused}");
    }
    let status = |token: Option<&str>| {
        let mut command = std::process::Command::new(geomirror_bin());
        command.args(["status", "--admin", &node.admin.to_string()]).env_remove("GEOMIRROR_ADMIN_TOKEN");
        if let Some(t) = token {
            command.env("GEOMIRROR_ADMIN_TOKEN", t);
        }
        let out = command.output().unwrap();
        (out.status.success(), String::from_utf8_lossy(&out.stdout).to_string() + &String::from_utf8_lossy(&out.stderr))
    };
    let (ok, text) = status(None);
    assert!(!ok && text.contains("Authorization: Bearer"), "{text}");
    let (ok, text) = status(Some("wrong-token-but-long-enough"));
    assert!(!ok && text.contains("wrong admin token"), "{text}");
    let (ok, text) = status(Some(token));
    assert!(ok && text.contains("vol0  16.0 MiB  single site  serving"), "{text}");
    assert!(node.logs().iter().any(|l| l.contains("admin request refused")), "every refusal is logged");
    drop(node);

    std::fs::write(dir.path().join("admin.token"), "short\n").unwrap();
    let log = NodeProcess::start_fails(&path);
    assert!(log.contains("at least 16 characters"), "{log}");
}

/// A client that opens the admin listener and never finishes its request
/// is disconnected after the header deadline (5 s), and others are served
/// meanwhile.
#[test]
fn a_silent_admin_client_is_disconnected_and_does_not_block_others() {
    use std::io::{Read, Write};
    let n = SingleNode::start("vol0", "16MiB");
    let started = std::time::Instant::now();
    let mut silent = std::net::TcpStream::connect(n.node.admin).unwrap();
    silent.write_all(b"GET /sta").unwrap();
    assert!(n.node.admin_get("/status").contains("vol0"), "another client is served meanwhile");
    silent.set_read_timeout(Some(std::time::Duration::from_secs(20))).unwrap();
    let mut buf = Vec::new();
    let _ = silent.read_to_end(&mut buf);
    let waited = started.elapsed();
    assert!(waited < std::time::Duration::from_secs(10), "disconnected after {waited:?}");
    assert!(waited >= std::time::Duration::from_secs(4), "not before the deadline: {waited:?}");
}
