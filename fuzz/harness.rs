//! The fuzz targets' bodies, shared by the libFuzzer targets
//! (`fuzz/fuzz_targets/`, `scripts/fuzz.sh`) and the stable replay of the
//! kept corpus in the test suite (`tests/fuzz_corpus.rs`). Each takes
//! arbitrary bytes: it must not panic, and whatever decodes must re-encode
//! to the same value.

use std::path::Path;

use geomirror_core::{claims_file, conflict_file};
use geomirror_wire::nbd;
use geomirror_wire::peer::Message;
use geomirror_wire::witness::WitnessMessage;

/// A target's body.
pub type Target = fn(&[u8]);

/// Every target, by the name of its corpus directory.
pub const TARGETS: &[(&str, Target)] = &[
    ("nbd_decode", nbd_decode),
    ("peer_frame", peer_frame),
    ("witness_frame", witness_frame),
    ("config", config),
    ("claims_file", claims_file),
    ("volume_meta", volume_meta),
    ("conflict_file", conflict_file),
];

/// Every NBD decoder (handshake, options, replies, requests).
pub fn nbd_decode(data: &[u8]) {
    let _ = nbd::decode_greeting(data);
    let _ = nbd::decode_option_header(data);
    let _ = nbd::decode_info_request(data);
    let _ = nbd::decode_info(data);
    let _ = nbd::decode_server_entry(data);
    let _ = nbd::decode_string(data);
    let _ = nbd::decode_option_reply_header(data);
    let _ = nbd::decode_reply_header(data);
    if let Ok(request) = nbd::decode_meta_context_request(data) {
        let mut out = bytes::BytesMut::new();
        nbd::encode_meta_context_request(&mut out, &request);
        assert_eq!(nbd::decode_meta_context_request(&out).expect("a re-encoded meta context request decodes"), request);
    }
    if let Ok(request) = nbd::decode_request(data) {
        let mut out = bytes::BytesMut::new();
        nbd::encode_request(&mut out, &request);
        assert_eq!(&out[..], &data[..nbd::REQUEST_HEADER_BYTES], "request headers round-trip");
    }
}

/// A frame from the peer.
pub fn peer_frame(data: &[u8]) {
    if let Ok(message) = Message::decode(data) {
        let again = Message::decode(&message.encode()).expect("a re-encoded message decodes");
        assert_eq!(again, message);
    }
}

/// A frame from (or to) the witness.
pub fn witness_frame(data: &[u8]) {
    if let Ok(message) = WitnessMessage::decode(data) {
        let again = WitnessMessage::decode(&message.encode()).expect("a re-encoded witness message decodes");
        assert_eq!(again, message);
    }
}

/// A node's or a witness's config file.
pub fn config(data: &[u8]) {
    let text = String::from_utf8_lossy(data);
    let _ = geomirror_config::NodeConfig::from_toml(&text, Path::new("/fuzz/node.toml"));
    let _ = geomirror_config::WitnessConfig::from_toml(&text, Path::new("/fuzz/witness.toml"));
}

/// A claims file as loaded at start (snapshot and journal, torn tails).
pub fn claims_file(data: &[u8]) {
    if let Ok(contents) = claims_file::decode(data) {
        assert_eq!(claims_file::decode(&claims_file::encode(&contents)).expect("re-encoded claims decode"), contents);
    }
    let _ = claims_file::decode_with_tail(data);
}

/// A volume's metadata file.
pub fn volume_meta(data: &[u8]) {
    if let Ok(meta) = geomirror_node::store::meta::VolumeMeta::decode(data) {
        assert_eq!(geomirror_node::store::meta::VolumeMeta::decode(&meta.encode()).expect("re-encoded metadata decodes"), meta);
    }
}

/// A conflict file, whole or cut short.
pub fn conflict_file(data: &[u8]) {
    if let Ok((header, blocks)) = conflict_file::decode(data) {
        let mut again = conflict_file::encode_header(&header);
        for b in &blocks {
            again.extend(conflict_file::encode_record(b));
        }
        assert_eq!(conflict_file::decode(&again).expect("re-encoded conflict file decodes"), (header, blocks));
    }
    let _ = conflict_file::decode_prefix(data);
}
