//! The command line: `check-config` prints the effective config or names
//! what is wrong; `node` refuses a broken config.

mod common;

use common::*;

#[test]
fn check_config_prints_the_effective_config() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("a.toml");
    std::fs::write(&path, "[node]\nname = \"site-a\"\ndata_dir = \"/var/lib/geomirror/site-a\"\n[nbd]\nlisten = \"127.0.0.1:10809\"\n[admin]\nlisten = \"127.0.0.1:9090\"\n[[volume]]\nname = \"vol0\"\nsize = \"1GiB\"\n").unwrap();
    let out = run_ok(30, geomirror_bin().to_str().unwrap(), &["check-config", path.to_str().unwrap()]);
    assert!(out.contains("size = \"1GiB\""), "{out}");
    assert!(out.contains("extent_size = \"1MiB\""), "defaults must be shown: {out}");
    assert!(out.contains("max_owned_extents = 1024"), "{out}");
}

#[test]
fn broken_configs_are_refused_with_file_and_key() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("bad.toml");
    let path_s = path.to_str().unwrap();
    let cases = [
        ("[node]\nname = \"a\"\ndata_dir = \"d\"\n[[volume]]\nname = \"v\"\nsize = \"12XB\"\n", "unknown size unit"),
        ("[node]\nname = \"a\"\ndata_dir = \"d\"\n[[volume]]\nname = \"v\"\nsize = \"1000\"\n", "volume[0].size"),
        ("[node]\nname = \"a\"\ndata_dir = \"d\"\nbogus = 1\n[[volume]]\nname = \"v\"\nsize = \"1MiB\"\n", "bogus"),
        ("[node]\nname = \"a\"\n", "data_dir"),
    ];
    for (text, expected) in cases {
        std::fs::write(&path, text).unwrap();
        for args in [vec!["check-config", path_s], vec!["node", "--config", path_s]] {
            let out = run_with_deadline(30, geomirror_bin().to_str().unwrap(), &args);
            assert!(!out.status.success(), "{args:?} accepted:\n{text}");
            let stderr = String::from_utf8_lossy(&out.stderr);
            assert!(stderr.contains(expected) && stderr.contains("bad.toml"), "{args:?}: expected `{expected}` in:\n{stderr}");
        }
    }
    assert!(!dir.path().join("d").exists(), "a refused config must create nothing");
}

#[test]
fn check_config_refuses_tls_files_that_are_not_there_and_says_it_once() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("two.toml");
    std::fs::write(
        &path,
        "[node]\nname = \"site-a\"\ndata_dir = \"d\"\n[peer]\nname = \"site-b\"\nlisten = \"127.0.0.1:0\"\nconnect = \"127.0.0.1:9\"\n\
         [tls]\nca = \"missing/ca.pem\"\ncert = \"missing/a.pem\"\nkey = \"missing/a-key.pem\"\n[[volume]]\nname = \"v\"\nsize = \"1MiB\"\n",
    )
    .unwrap();
    let out = run_with_deadline(30, geomirror_bin().to_str().unwrap(), &["check-config", path.to_str().unwrap()]);
    assert!(!out.status.success(), "a config naming missing TLS files was accepted");
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("ca.pem"), "the missing file is named: {stderr}");
    assert_eq!(stderr.matches("ca.pem").count(), 1, "the error is printed once: {stderr}");
}
