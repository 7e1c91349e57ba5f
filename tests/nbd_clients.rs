//! Real NBD clients against one node: nbdinfo, qemu-io, qemu-img, fio.
//! Method: start the real binary, drive it with the tools hosts use, and
//! check the bytes they read back.

mod common;

use common::*;

#[test]
fn nbdinfo_shows_the_export_and_its_size() {
    require_tool("nbdinfo");
    let n = SingleNode::start("vol0", "64MiB");
    let out = run_ok(30, "nbdinfo", &["--json", &n.node.uri("vol0")]);
    let info: serde_json::Value = serde_json::from_str(&out).expect("nbdinfo --json output");
    let export = &info["exports"][0];
    assert_eq!(export["export-name"], "vol0");
    assert_eq!(export["export-size"], 64 << 20);
    assert_eq!(export["can_flush"], true);
    assert_eq!(export["can_fua"], true);
    assert_eq!(export["can_multi_conn"], true);
    assert_eq!(export["block_size_preferred"], 4096);
    let list = run_ok(30, "nbdinfo", &["--list", "--json", &format!("nbd://{}", n.node.nbd)]);
    assert!(list.contains("\"vol0\""), "LIST must name the export: {list}");
    // An unknown export is refused, and the server goes on serving.
    let out = run_with_deadline(30, "nbdinfo", &[&n.node.uri("nope")]);
    assert!(!out.status.success());
    run_ok(30, "nbdinfo", &["--size", &n.node.uri("vol0")]);
    n.node.assert_no_unexpected_warnings(&[]);
}

#[test]
fn qemu_io_patterns_read_back_at_several_offsets() {
    require_tool("qemu-io");
    let n = SingleNode::start("vol0", "64MiB");
    let uri = n.node.uri("vol0");
    // Aligned, unaligned, crossing an extent boundary, and at the very end.
    let cases = [
        (0u64, 4096u64, 0x11u8),
        (12345, 1000, 0x22),
        ((1 << 20) - 2048, 8192, 0x33),
        ((64 << 20) - 65536, 65536, 0x44),
        (7 << 20, 3 << 20, 0x55),
    ];
    let writes: Vec<String> = cases.iter().map(|(o, l, p)| format!("write -P {p:#x} {o} {l}")).collect();
    qemu_io(&uri, &writes);
    let reads: Vec<String> = cases.iter().map(|(o, l, p)| format!("read -P {p:#x} {o} {l}")).collect();
    qemu_io(&uri, &reads);
    // Around the writes the volume is still zero.
    qemu_io(&uri, &["read -P 0 4096 8192".into(), "read -P 0 20000 10000".into()]);
    // A wrong pattern must be noticed (the check can fail).
    let out = run_with_deadline(30, "qemu-io", &["-f", "raw", "-c", "read -P 0x99 0 4096", &uri]);
    assert!(String::from_utf8_lossy(&out.stdout).contains("Pattern verification failed"));
    // FUA writes, zero-writes and discards.
    qemu_io(&uri, &["write -f -P 0x66 32M 64k".into(), "read -P 0x66 32M 64k".into()]);
    qemu_io(&uri, &["write -z 32M 16k".into(), "read -P 0 32M 16k".into(), "read -P 0x66 32784k 48k".into()]);
    qemu_io(&uri, &["discard 7M 1M".into(), "read -P 0 7M 1M".into(), "read -P 0x55 8M 2M".into()]);
    n.node.assert_no_unexpected_warnings(&[]);
}

#[test]
fn qemu_img_convert_then_compare() {
    require_tool("qemu-img");
    let n = SingleNode::start("vol0", "32MiB");
    let image = n.dir.path().join("source.raw");
    // A generated image: pseudo-random blocks with holes between them.
    let mut bytes = vec![0u8; 32 << 20];
    let mut x: u64 = 0x9e3779b97f4a7c15;
    for block in (0..bytes.len() / 4096).filter(|b| b % 3 != 0) {
        for byte in &mut bytes[block * 4096..(block + 1) * 4096] {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            *byte = x as u8;
        }
    }
    std::fs::write(&image, &bytes).unwrap();
    let uri = n.node.uri("vol0");
    let image = image.to_str().unwrap();
    run_ok(120, "qemu-img", &["convert", "-n", "-f", "raw", "-O", "raw", image, &uri]);
    let out = run_ok(120, "qemu-img", &["compare", "-f", "raw", "-F", "raw", image, &uri]);
    assert!(out.contains("Images are identical"), "{out}");
    // And the comparison can fail: change one byte through NBD.
    qemu_io(&uri, &["write -P 0x01 4096 1".into()]);
    let out = run_with_deadline(120, "qemu-img", &["compare", "-f", "raw", "-F", "raw", image, &uri]);
    assert_eq!(out.status.code(), Some(1), "compare must see the difference");
}

#[test]
fn fio_verify_workload_passes() {
    require_tool("fio");
    let n = SingleNode::start("vol0", "64MiB");
    let uri = n.node.uri("vol0");
    let out = run_ok(
        180,
        "fio",
        &[
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--size=16m",
            "--iodepth=16",
            "--verify=crc32c",
            "--verify_state_save=0",
            "--do_verify=1",
            "--verify_fatal=1",
            "--output-format=json",
        ],
    );
    let json_start = out.find('{').expect("fio json output");
    let report: serde_json::Value = serde_json::from_str(&out[json_start..]).expect("fio json");
    let job = &report["jobs"][0];
    assert_eq!(job["error"], 0, "fio reported an error: {job}");
    assert!(job["write"]["io_bytes"].as_u64().unwrap() >= 16 << 20);
    assert!(job["read"]["io_bytes"].as_u64().unwrap() >= 16 << 20, "verify must read everything back");
}

#[test]
fn several_clients_at_once_see_each_others_writes() {
    require_tool("qemu-io");
    let n = SingleNode::start("vol0", "64MiB");
    let uri = n.node.uri("vol0");
    let handles: Vec<_> = (0..6u64)
        .map(|i| {
            let uri = uri.clone();
            std::thread::spawn(move || {
                let cmds: Vec<String> = (0..8u64).map(|j| format!("write -P {:#x} {} 256k", 0x10 + i, (i * 8 + j) << 20)).collect();
                qemu_io(&uri, &cmds);
            })
        })
        .collect();
    for h in handles {
        h.join().expect("client thread");
    }
    // One more client reads everything the six wrote.
    let cmds: Vec<String> =
        (0..6u64).flat_map(|i| (0..8u64).map(move |j| format!("read -P {:#x} {} 256k", 0x10 + i, (i * 8 + j) << 20))).collect();
    qemu_io(&uri, &cmds);
    let status: serde_json::Value = serde_json::from_str(&n.node.admin_get("/status")).unwrap();
    assert_eq!(status["volumes"][0]["writes_total"], 48);
}

/// `nbdinfo --map` output as (offset, length, hole) runs, neighbours merged.
pub fn allocation_map(uri: &str) -> Vec<(u64, u64, bool)> {
    let out = run_ok(30, "nbdinfo", &["--map", uri]);
    let mut runs: Vec<(u64, u64, bool)> = Vec::new();
    for line in out.lines() {
        let f: Vec<&str> = line.split_whitespace().collect();
        let (offset, length, flags): (u64, u64, u32) = (f[0].parse().unwrap(), f[1].parse().unwrap(), f[2].parse().unwrap());
        let hole = flags & 1 != 0;
        match runs.last_mut() {
            Some((o, l, h)) if *h == hole && *o + *l == offset => *l += length,
            _ => runs.push((offset, length, hole)),
        }
    }
    runs
}

#[test]
fn block_status_maps_holes_and_data_as_written_and_qemu_img_and_nbdcopy_use_it() {
    require_tool("nbdinfo");
    require_tool("qemu-img");
    let n = SingleNode::start("vol0", "16MiB");
    let uri = n.node.uri("vol0");
    qemu_io(&uri, &["write -P 0xab 0 64k".into(), "write -P 0xcd 1M 4k".into(), "write -P 0xef 8M 1M".into()]);
    let m = 1u64 << 20;
    assert_eq!(
        allocation_map(&uri),
        vec![
            (0, 65536, false),
            (65536, m - 65536, true),
            (m, 4096, false),
            (m + 4096, 7 * m - 4096, true),
            (8 * m, m, false),
            (9 * m, 7 * m, true)
        ],
        "the map follows what was written"
    );
    let map = run_ok(30, "qemu-img", &["map", "--output=json", "-f", "raw", &uri]);
    let extents: serde_json::Value = serde_json::from_str(&map).unwrap();
    let data: Vec<(u64, u64)> = extents
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["data"] == true)
        .map(|e| (e["start"].as_u64().unwrap(), e["length"].as_u64().unwrap()))
        .collect();
    assert_eq!(data, vec![(0, 65536), (m, 4096), (8 * m, m)], "qemu-img map sees the same: {map}");
    // nbdcopy skips the holes: the copy is sparse and equal.
    require_tool("nbdcopy");
    let dir = tempfile::tempdir().unwrap();
    let copy = dir.path().join("copy.raw");
    std::fs::File::create(&copy).unwrap().set_len(16 * m).unwrap();
    run_ok(60, "nbdcopy", &[&uri, copy.to_str().unwrap()]);
    let compared = run_with_deadline(60, "qemu-img", &["compare", "-f", "raw", "-F", "raw", &uri, copy.to_str().unwrap()]);
    assert!(compared.status.success(), "the copy equals the volume: {}", String::from_utf8_lossy(&compared.stdout));
    use std::os::unix::fs::MetadataExt;
    let allocated = std::fs::metadata(&copy).unwrap().blocks() * 512;
    assert!(allocated <= 2 * m, "nbdcopy wrote only the data ({allocated} bytes allocated of {})", 16 * m);
    // A trimmed range becomes a hole again; zeroes written with NO_HOLE stay data.
    qemu_io(&uri, &["discard 8M 1M".into(), "write -z 2M 64k".into()]);
    let runs = allocation_map(&uri);
    assert!(runs.iter().any(|&(o, l, h)| h && o <= 8 * m && o + l >= 9 * m), "8M..9M trimmed to a hole: {runs:?}");
    n.node.assert_no_unexpected_warnings(&[]);
}
