//! Crash safety: what was flushed survives kill -9 and a restart; a
//! restarted node refuses a volume whose geometry changed or whose metadata
//! is corrupt, and leaves it as it was.

mod common;

use common::*;

#[test]
fn flushed_writes_survive_kill_9() {
    require_tool("qemu-io");
    let mut n = SingleNode::start("vol0", "64MiB");
    let uri = n.node.uri("vol0");
    qemu_io(&uri, &["write -P 0xc3 0 1M".into(), "write -P 0x3c 40M 4M".into(), "flush".into()]);
    // A FUA write is durable without a flush.
    qemu_io(&uri, &["write -f -P 0x7e 63M 64k".into()]);
    n.node.kill9();
    let node = NodeProcess::start(&n.config);
    let uri = node.uri("vol0");
    qemu_io(&uri, &["read -P 0xc3 0 1M".into(), "read -P 0x3c 40M 4M".into(), "read -P 0x7e 63M 64k".into(), "read -P 0 1M 1M".into()]);
    n.node = node;
}

#[test]
fn a_restart_with_a_changed_size_is_refused_and_data_kept() {
    require_tool("qemu-io");
    let mut n = SingleNode::start("vol0", "16MiB");
    qemu_io(&n.node.uri("vol0"), &["write -P 0x42 0 64k".into(), "flush".into()]);
    assert!(n.node.terminate(), "SIGTERM must stop the node cleanly");
    let text = std::fs::read_to_string(&n.config).unwrap().replace("16MiB", "32MiB");
    std::fs::write(&n.config, text).unwrap();
    let out = run_with_deadline(30, geomirror_bin().to_str().unwrap(), &["node", "--config", n.config.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("vol0") && stderr.contains("size") && stderr.contains("refusing"), "{stderr}");
    let text = std::fs::read_to_string(&n.config).unwrap().replace("32MiB", "16MiB");
    std::fs::write(&n.config, text).unwrap();
    n.node = NodeProcess::start(&n.config);
    qemu_io(&n.node.uri("vol0"), &["read -P 0x42 0 64k".into()]);
}

#[test]
fn a_corrupt_metadata_file_is_refused() {
    let mut n = SingleNode::start("vol0", "16MiB");
    n.node.kill9();
    let meta = n.dir.path().join("data/volumes/vol0/meta");
    let mut bytes = std::fs::read(&meta).unwrap();
    bytes[20] ^= 0xff;
    std::fs::write(&meta, &bytes).unwrap();
    let out = run_with_deadline(30, geomirror_bin().to_str().unwrap(), &["node", "--config", n.config.to_str().unwrap()]);
    assert!(!out.status.success());
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(stderr.contains("corrupt"), "{stderr}");
    assert_eq!(std::fs::read(&meta).unwrap(), bytes, "the node must not rewrite a corrupt metadata file");
}
