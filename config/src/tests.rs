use super::*;

const EXAMPLE: &str = r#"
[node]
name = "site-a"
data_dir = "/var/lib/geomirror/site-a"
[nbd]
listen = "127.0.0.1:10809"
[admin]
listen = "127.0.0.1:9090"
[[volume]]
name = "vol0"
size = "1GiB"
"#;

fn parse(text: &str) -> Result<NodeConfig, ConfigError> {
    NodeConfig::from_toml(text, Path::new("/etc/geomirror/test.toml"))
}

fn invalid_key(text: &str) -> String {
    match parse(text) {
        Err(ConfigError::Invalid { key, .. }) => key,
        other => panic!("expected an Invalid error, got {other:?}"),
    }
}

#[test]
fn the_issue_example_is_accepted_with_defaults() {
    let c = parse(EXAMPLE).unwrap();
    assert_eq!(c.node.name, "site-a");
    assert_eq!(c.volumes.len(), 1);
    let v = &c.volumes[0];
    assert_eq!(v.size.bytes(), 1 << 30);
    assert_eq!(v.block_size.bytes(), 4096);
    assert_eq!(v.extent_size.bytes(), 1 << 20);
    assert_eq!(v.max_owned_extents, 1024);
    assert_eq!(v.predict_extents, 8);
    assert_eq!(v.mode, ReplicationMode::Async);
    assert_eq!(c.nbd.max_request_size.bytes(), 32 << 20);
    assert!(c.peer.is_none());
}

#[test]
fn effective_config_round_trips_through_toml() {
    let c = parse(EXAMPLE).unwrap();
    let again = parse(&c.to_toml()).unwrap();
    assert_eq!(c, again);
}

#[test]
fn relative_paths_resolve_against_the_config_directory() {
    let c = parse(&EXAMPLE.replace("/var/lib/geomirror/site-a", "data/a")).unwrap();
    assert_eq!(c.node.data_dir, Path::new("/etc/geomirror/data/a"));
}

#[test]
fn two_site_sections_are_accepted() {
    let text = format!(
        "{EXAMPLE}\nextent_size = \"4MiB\"\nmax_owned_extents = 16\npredict_extents = 0\nrelease_after = \"5s\"\nmode = \"async\"\n\
         [peer]\nname = \"site-b\"\nlisten = \"127.0.0.1:7001\"\nconnect = \"127.0.0.1:7002\"\npeer_timeout = \"3s\"\n\
         [tls]\nca = \"certs/ca.pem\"\ncert = \"certs/a.pem\"\nkey = \"certs/a-key.pem\"\n"
    );
    let c = parse(&text).unwrap();
    let v = &c.volumes[0];
    assert_eq!(v.extent_size.bytes(), 4 << 20);
    assert_eq!(v.mode, ReplicationMode::Async);
    assert_eq!(c.peer.as_ref().unwrap().peer_timeout.get().as_secs(), 3);
    assert_eq!(c.tls.as_ref().unwrap().ca, Path::new("/etc/geomirror/certs/ca.pem"));
}

#[test]
fn unknown_keys_are_rejected_with_their_name() {
    let err = parse(&EXAMPLE.replace("[admin]", "[admin]\nlissten = \"x\"")).unwrap_err();
    let text = err.to_string();
    assert!(text.contains("/etc/geomirror/test.toml"), "{text}");
    assert!(text.contains("lissten"), "{text}");
}

#[test]
fn bad_sizes_name_the_key_and_the_problem() {
    let err = parse(&EXAMPLE.replace("\"1GiB\"", "\"1GX\"")).unwrap_err();
    let text = err.to_string();
    assert!(matches!(err, ConfigError::Parse { .. }));
    assert!(text.contains("unknown size unit"), "{text}");
    assert!(text.contains("size"), "{text}");
}

#[test]
fn broken_toml_is_a_parse_error() {
    assert!(matches!(parse("[node\nname = 1"), Err(ConfigError::Parse { .. })));
    assert!(matches!(parse(""), Err(ConfigError::Parse { .. })));
}

#[test]
fn relations_are_checked() {
    assert_eq!(invalid_key(&EXAMPLE.replace("\"1GiB\"", "\"1000\"")), "volume[0].size");
    assert_eq!(invalid_key(&EXAMPLE.replace("\"1GiB\"", "0")), "volume[0].size");
    assert_eq!(invalid_key(&format!("{EXAMPLE}block_size = \"3KiB\"")), "volume[0].block_size");
    assert_eq!(invalid_key(&format!("{EXAMPLE}extent_size = \"2KiB\"")), "volume[0].extent_size");
    assert_eq!(invalid_key(&format!("{EXAMPLE}max_owned_extents = 0")), "volume[0].max_owned_extents");
    assert_eq!(invalid_key(&format!("{EXAMPLE}[[volume]]\nname = \"vol0\"\nsize = \"1MiB\"")), "volume[1].name");
    assert_eq!(invalid_key(&EXAMPLE.replace("\"vol0\"", "\"a/b\"")), "volume[0].name");
    assert_eq!(invalid_key(&EXAMPLE.replace("site-a\"", "site a\"")), "node.name");
    assert_eq!(invalid_key(&EXAMPLE.replace("9090", "10809")), "admin.listen");
    let no_volume = EXAMPLE.split("[[volume]]").next().unwrap();
    assert_eq!(invalid_key(no_volume), "volume");
}

#[test]
fn peer_needs_tls_and_sane_timeouts() {
    let peer = "[peer]\nname = \"site-b\"\nlisten = \"127.0.0.1:7001\"\nconnect = \"127.0.0.1:7002\"\n";
    assert_eq!(invalid_key(&format!("{EXAMPLE}{peer}")), "tls");
    let tls = "[tls]\nca = \"ca.pem\"\ncert = \"a.pem\"\nkey = \"a-key.pem\"\n";
    let with = format!("{EXAMPLE}{}{tls}", peer.replace("7002\"", "7002\"\npeer_timeout = \"500ms\""));
    assert_eq!(invalid_key(&with), "peer.peer_timeout");
    let same = format!("{EXAMPLE}{}{tls}", peer.replace("site-b", "site-a"));
    assert_eq!(invalid_key(&same), "peer.name");
}

#[test]
fn the_witness_is_checked_against_the_heartbeat_timeout_and_the_names() {
    let peer = "[peer]\nname = \"site-b\"\nlisten = \"127.0.0.1:7001\"\nconnect = \"127.0.0.1:7002\"\n";
    let tls = "[tls]\nca = \"ca.pem\"\ncert = \"a.pem\"\nkey = \"a-key.pem\"\n";
    let witness = "[witness]\nname = \"witness\"\nconnect = \"127.0.0.1:7100\"\n";
    let c = parse(&format!("{EXAMPLE}{peer}{tls}{witness}")).unwrap();
    let w = c.witness.as_ref().unwrap();
    assert_eq!((w.lease.get().as_millis(), w.max_clock_drift.get().as_millis()), (2000, 250));
    assert_eq!(c.peer.as_ref().unwrap().heartbeat_timeout.get().as_millis(), 1500);
    let short = format!("{EXAMPLE}{peer}{tls}{witness}lease = \"1s\"\n");
    assert_eq!(invalid_key(&short), "witness.lease");
    let drift = format!("{EXAMPLE}{peer}{tls}{witness}max_clock_drift = \"1s\"\n");
    assert_eq!(invalid_key(&drift), "witness.max_clock_drift");
    let named = format!("{EXAMPLE}{peer}{tls}{}", witness.replace("\"witness\"", "\"site-b\""));
    assert_eq!(invalid_key(&named), "witness.name");
    assert_eq!(invalid_key(&format!("{EXAMPLE}{witness}")), "witness");
    let hb = format!("{EXAMPLE}{}{tls}", peer.replace("7002\"", "7002\"\nheartbeat_timeout = \"400ms\""));
    assert_eq!(invalid_key(&hb), "peer.heartbeat_timeout");
}

#[test]
fn a_witness_config_names_its_two_nodes() {
    let text = "[node]\nname = \"witness\"\ndata_dir = \"w\"\n[witness]\nnodes = [\"site-a\", \"site-b\"]\n\
                [tls]\nca = \"ca.pem\"\ncert = \"w.pem\"\nkey = \"w-key.pem\"\n";
    let path = Path::new("/etc/geomirror/witness.toml");
    let c = WitnessConfig::from_toml(text, path).unwrap();
    assert_eq!(c.node.data_dir, Path::new("/etc/geomirror/w"));
    assert_eq!(c.witness.listen.port(), 7100);
    let same = text.replace("\"site-b\"]", "\"site-a\"]");
    assert!(matches!(WitnessConfig::from_toml(&same, path), Err(ConfigError::Invalid { key, .. }) if key == "witness.nodes"));
    let itself = text.replace("\"site-b\"]", "\"witness\"]");
    assert!(matches!(WitnessConfig::from_toml(&itself, path), Err(ConfigError::Invalid { key, .. }) if key == "witness.nodes[1]"));
}

#[test]
fn every_mode_and_peer_loss_policy_parses() {
    let path = Path::new("/etc/geomirror/a.toml");
    for (text, mode) in [("async", ReplicationMode::Async), ("sync-memory", ReplicationMode::SyncMemory), ("sync", ReplicationMode::Sync)] {
        let c = NodeConfig::from_toml(&format!("{EXAMPLE}mode = \"{text}\"\non_peer_loss = \"degrade\"\n"), path).unwrap();
        assert_eq!(c.volumes[0].mode, mode);
        assert_eq!(c.volumes[0].on_peer_loss, PeerLossPolicy::Degrade);
        assert_eq!(text.parse::<ReplicationMode>().unwrap(), mode);
        assert_eq!(mode.as_str(), text);
    }
    let c = NodeConfig::from_toml(EXAMPLE, path).unwrap();
    assert_eq!(c.volumes[0].on_peer_loss, PeerLossPolicy::Suspend, "the default loses nothing acknowledged");
    assert!(NodeConfig::from_toml(&format!("{EXAMPLE}mode = \"sync-disk\"\n"), path).is_err());
    assert!(NodeConfig::from_toml(&format!("{EXAMPLE}on_peer_loss = \"ignore\"\n"), path).is_err());
    assert!("semi-sync".parse::<ReplicationMode>().unwrap_err().contains("semi-sync"));
}

#[test]
fn load_reports_missing_files() {
    let err = NodeConfig::load(Path::new("/nonexistent/geomirror.toml")).unwrap_err();
    assert!(matches!(err, ConfigError::Read { .. }));
    assert!(err.to_string().contains("/nonexistent/geomirror.toml"));
}

#[test]
fn an_admin_listener_reachable_from_other_hosts_needs_authentication_or_an_explicit_yes() {
    let remote = EXAMPLE.replace("listen = \"127.0.0.1:9090\"", "listen = \"0.0.0.0:9090\"");
    assert_eq!(invalid_key(&remote), "admin.listen");
    let with_token = remote.replace("listen = \"0.0.0.0:9090\"", "listen = \"0.0.0.0:9090\"\ntoken_file = \"admin.token\"");
    let c = parse(&with_token).unwrap();
    assert_eq!(c.admin.token_file.as_deref(), Some(Path::new("/etc/geomirror/admin.token")), "relative to the config file");
    let allowed = remote.replace("listen = \"0.0.0.0:9090\"", "listen = \"0.0.0.0:9090\"\nallow_unauthenticated_remote = true");
    assert!(parse(&allowed).is_ok());
    assert!(parse(&EXAMPLE.replace("127.0.0.1:9090", "127.0.0.2:9090")).is_ok(), "loopback needs nothing");
}

#[test]
fn nbd_tls_needs_a_certificate_and_a_key() {
    let on = EXAMPLE.replace("listen = \"127.0.0.1:10809\"", "listen = \"127.0.0.1:10809\"\ntls = \"required\"");
    assert_eq!(invalid_key(&on), "nbd.tls");
    let with = on.replace("tls = \"required\"", "tls = \"required\"\ntls_cert = \"nbd.pem\"\ntls_key = \"nbd-key.pem\"");
    let c = parse(&with).unwrap();
    assert_eq!(c.nbd.tls, NbdTlsMode::Required);
    assert_eq!(c.nbd.tls_cert.as_deref(), Some(Path::new("/etc/geomirror/nbd.pem")));
    assert!(parse(&EXAMPLE.replace("listen = \"127.0.0.1:10809\"", "listen = \"127.0.0.1:10809\"\ntls = \"sometimes\"")).is_err());
}
