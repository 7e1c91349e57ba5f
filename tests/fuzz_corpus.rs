//! The fuzz corpus, replayed on stable Rust: every input kept in
//! `fuzz/corpus/<target>/` (seeds and anything a fuzzing run found) goes
//! through the target's body (`fuzz/harness.rs`, the same code the
//! libFuzzer targets run). `scripts/fuzz.sh` runs the targets themselves
//! for a bounded time (nightly, cargo-fuzz) and adds what they find here.
//!
//! `cargo test --test fuzz_corpus -- --ignored write_seed_corpus` writes
//! the seed inputs (valid encodings of each format) again.

#[path = "../fuzz/harness.rs"]
mod harness;

use std::path::{Path, PathBuf};

use bytes::BytesMut;
use geomirror_core::claims_file::{self, ClaimsDelta, ClaimsFileContents, ExtentEntry};
use geomirror_core::conflict_file::{self, ConflictFileHeader, SavedBlock};
use geomirror_wire::nbd;
use geomirror_wire::peer::{CopyItem, CopyReport, CopySeq, Epoch, Extent, ExtentClaim, Lane, Message, RequestId, VolumeIndex};
use geomirror_wire::witness::WitnessMessage;

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("fuzz/corpus").join(target)
}

#[test]
fn every_kept_input_of_every_target_replays_without_a_panic() {
    let mut total = 0;
    for (target, run) in harness::TARGETS {
        let dir = corpus(target);
        let mut inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|e| panic!("{}: {e} (run the seed writer)", dir.display()))
            .map(|e| e.unwrap().path())
            .collect();
        inputs.sort();
        assert!(inputs.len() >= 3, "{target}: a corpus of at least a few inputs");
        for input in &inputs {
            let data = std::fs::read(input).unwrap();
            run(&data);
            // Every prefix too: what a torn write or a short read leaves.
            for cut in [0, 1, data.len() / 2, data.len().saturating_sub(1)] {
                run(&data[..cut.min(data.len())]);
            }
        }
        total += inputs.len();
    }
    assert!(total >= 7 * 3);
}

fn claim(e: u64, epoch: u64) -> ExtentClaim {
    ExtentClaim { extent: Extent(e), epoch: Epoch(epoch) }
}

/// Valid encodings of every format, as seeds.
fn seeds() -> Vec<(&'static str, Vec<Vec<u8>>)> {
    let mut nbd_inputs = Vec::new();
    let mut b = BytesMut::new();
    nbd::encode_greeting(&mut b, 3);
    nbd_inputs.push(b.to_vec());
    for (code, payload) in [(7u32, &b"\0\0\0\x04vol0\0\0"[..]), (1, b"vol0"), (3, b""), (8, b"")] {
        let mut b = BytesMut::new();
        nbd::encode_option(&mut b, code, payload);
        nbd_inputs.push(b.to_vec());
    }
    let mut b = BytesMut::new();
    nbd::encode_option_reply(&mut b, 7, 3, &nbd::info_export_payload(1 << 30, 0x1ed));
    nbd_inputs.push(b.to_vec());
    nbd_inputs.push(nbd::info_block_size_payload(1, 4096, 32 << 20));
    nbd_inputs.push(nbd::server_entry_payload("vol0"));
    for (flags, command, length) in [
        (0u16, nbd::Command::Read, 4096u32),
        (1, nbd::Command::Write, 512),
        (0, nbd::Command::Flush, 0),
        (2, nbd::Command::WriteZeroes, 1 << 20),
    ] {
        let mut b = BytesMut::new();
        nbd::encode_request(&mut b, &nbd::Request { flags, command, cookie: 42, offset: 8192, length });
        nbd_inputs.push(b.to_vec());
    }
    let mut b = BytesMut::new();
    nbd::encode_simple_reply(&mut b, 5, 42);
    nbd_inputs.push(b.to_vec());
    let mut b = BytesMut::new();
    nbd::encode_structured_error(&mut b, 42, 5, "EIO at 8192");
    nbd_inputs.push(b.to_vec());

    let v = VolumeIndex(0);
    let item =
        CopyItem { extent: Extent(1), epoch: Epoch(2), first: geomirror_wire::peer::BlockIndex(4), count: 1, data: vec![7u8; 4096].into() };
    let peer = [
        Message::Hello {
            protocol_version: geomirror_wire::peer::PROTOCOL_VERSION,
            node: "site-a".into(),
            lane: Lane::Priority,
            volumes: vec![],
        },
        Message::Heartbeat { id: RequestId(1) },
        Message::Claim { id: RequestId(2), volume: v, counter: Epoch(3), extents: vec![Extent(1), Extent(2)], releases: vec![claim(9, 1)] },
        Message::Copy { seq: CopySeq(1), volume: v, items: vec![item], report: CopyReport::Received },
        Message::CopyProgress { volume: v, received: CopySeq(3), durable: CopySeq(2) },
        Message::Destage { volume: v, upto: CopySeq(3) },
        Message::Pull { id: RequestId(3), volume: v, offset: 4096, length: 4096 },
    ]
    .iter()
    .map(|m| m.encode().to_vec())
    .collect();

    let witness = [
        WitnessMessage::Hello { protocol_version: 1, node: "site-a".into(), lease_ms: 2000 },
        WitnessMessage::Renew { id: RequestId(7) },
        WitnessMessage::Lease { id: RequestId(7) },
    ]
    .iter()
    .map(|m| m.encode().to_vec())
    .collect();

    let node = "[node]\nname = \"site-a\"\ndata_dir = \"a\"\n[admin]\nlisten = \"127.0.0.1:9090\"\n[peer]\nname = \"site-b\"\nlisten = \"127.0.0.1:7001\"\nconnect = \"127.0.0.1:7002\"\n\
                [tls]\nca = \"ca.pem\"\ncert = \"a.pem\"\nkey = \"a-key.pem\"\n[[volume]]\nname = \"vol0\"\nsize = \"1GiB\"\nmode = \"sync\"\non_peer_loss = \"degrade\"\n";
    let witness_config = "[node]\nname = \"witness\"\ndata_dir = \"w\"\n[witness]\nnodes = [\"site-a\", \"site-b\"]\n[tls]\nca = \"ca.pem\"\ncert = \"w.pem\"\nkey = \"w-key.pem\"\n";
    let bad = "[node]\nname = \"\"\n[[volume]]\nsize = \"-1\"\n";
    let configs = vec![node.as_bytes().to_vec(), witness_config.as_bytes().to_vec(), bad.as_bytes().to_vec()];

    let full = ClaimsFileContents {
        counter: Epoch(9),
        generation: 2,
        own: vec![claim(1, 5)],
        record: vec![claim(3, 6)],
        taken: vec![claim(1, 5)],
        ..Default::default()
    };
    let mut journal = claims_file::encode(&full);
    let delta = ClaimsDelta {
        counter: Epoch(10),
        generation: 2,
        detached: false,
        entries: vec![(Extent(4), ExtentEntry { own: Some(Epoch(10)), ..Default::default() })],
    };
    journal.extend(claims_file::encode_delta(&delta));
    let claims = vec![claims_file::encode(&ClaimsFileContents::default()), claims_file::encode(&full), journal];

    let meta = geomirror_node::store::meta::VolumeMeta {
        volume_id: [3; 16],
        name: "vol0".into(),
        size: 1 << 30,
        block_bytes: 4096,
        extent_bytes: 1 << 20,
    };
    let mut other = meta.clone();
    other.name = "a-longer-volume-name".into();
    other.block_bytes = 512;
    let metas = vec![meta.encode(), other.encode(), meta.encode()[..8].to_vec()];

    let header = conflict_file::encode_header(&ConflictFileHeader { volume: "vol0".into(), volume_id: [3; 16] });
    let record = conflict_file::encode_record(&SavedBlock {
        kind: geomirror_core::ConflictKind::TakenOver,
        offset: 8192,
        our_generation: 1,
        their_generation: 2,
        saved_at_ms: 1_700_000_000_000,
        data: vec![9; 4096],
    });
    let mut two = header.clone();
    two.extend(&record);
    two.extend(&record);
    let conflicts = vec![header.clone(), [header, record].concat(), two];

    vec![
        ("nbd_decode", nbd_inputs),
        ("peer_frame", peer),
        ("witness_frame", witness),
        ("config", configs),
        ("claims_file", claims),
        ("volume_meta", metas),
        ("conflict_file", conflicts),
    ]
}

#[test]
#[ignore = "writes the seed corpus into the repository"]
fn write_seed_corpus() {
    for (target, inputs) in seeds() {
        let dir = corpus(target);
        std::fs::create_dir_all(&dir).unwrap();
        for (i, input) in inputs.iter().enumerate() {
            std::fs::write(dir.join(format!("seed-{i:02}")), input).unwrap();
        }
    }
}

#[test]
fn the_seeds_are_valid_inputs_of_their_targets() {
    // Decoding the seeds must succeed where they are whole encodings: a
    // corpus of inputs the decoders reject would fuzz only the error paths.
    for (target, inputs) in seeds() {
        let run = harness::TARGETS.iter().find(|(t, _)| *t == target).expect("a target per seed set").1;
        for input in &inputs {
            run(input);
        }
    }
    let (_, peer) = &seeds()[1];
    assert!(peer.iter().all(|p| Message::decode(p).is_ok()));
}
