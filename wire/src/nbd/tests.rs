use super::*;
use proptest::prelude::*;

#[test]
fn greeting_round_trips_and_has_the_spec_bytes() {
    let mut out = BytesMut::new();
    encode_greeting(&mut out, handshake::FIXED_NEWSTYLE | handshake::NO_ZEROES);
    assert_eq!(&out[..8], b"NBDMAGIC");
    assert_eq!(&out[8..16], b"IHAVEOPT");
    assert_eq!(&out[16..], &[0, 3]);
    assert_eq!(decode_greeting(&out).unwrap(), 3);
    assert!(matches!(decode_greeting(&out[..17]), Err(DecodeError::Truncated { need: 18, have: 17 })));
}

#[test]
fn option_header_checks_magic_and_length() {
    let mut out = BytesMut::new();
    encode_option(&mut out, opt::GO, b"abc");
    let h = decode_option_header(&out).unwrap();
    assert_eq!(h, OptionHeader { code: opt::GO, length: 3 });
    let mut bad = out.to_vec();
    bad[0] ^= 1;
    assert!(matches!(decode_option_header(&bad), Err(DecodeError::BadMagic { .. })));
    assert!(matches!(decode_option_header(&out[..15]), Err(DecodeError::Truncated { .. })));
}

#[test]
fn info_request_round_trips() {
    let req = InfoRequest { name: "vol0".into(), requests: vec![info::BLOCK_SIZE, info::NAME] };
    let mut out = BytesMut::new();
    encode_info_request(&mut out, &req);
    assert_eq!(decode_info_request(&out).unwrap(), req);
    let empty = InfoRequest { name: String::new(), requests: vec![] };
    let mut out = BytesMut::new();
    encode_info_request(&mut out, &empty);
    assert_eq!(decode_info_request(&out).unwrap(), empty);
}

#[test]
fn hostile_info_requests_are_rejected() {
    // Name length larger than the payload.
    let mut b = vec![0, 0, 0, 200];
    b.extend_from_slice(b"short");
    assert!(matches!(decode_info_request(&b), Err(DecodeError::Truncated { .. })));
    // Name length beyond the spec's limit: refused before looking further.
    let b = [0xff, 0xff, 0xff, 0xff, 0, 0];
    assert!(matches!(decode_info_request(&b), Err(DecodeError::TooLong { .. })));
    // Request count that disagrees with the payload.
    let mut out = BytesMut::new();
    encode_info_request(&mut out, &InfoRequest { name: "v".into(), requests: vec![1, 2] });
    let mut b = out.to_vec();
    b.pop();
    assert!(matches!(decode_info_request(&b), Err(DecodeError::Malformed(_))));
    // NUL and invalid UTF-8 in names.
    assert!(decode_string(b"a\0b").is_err());
    assert!(decode_string(&[0xff, 0xfe]).is_err());
}

#[test]
fn info_payloads_decode() {
    assert_eq!(
        decode_info(&info_export_payload(1 << 30, tflag::HAS_FLAGS)).unwrap(),
        Info::Export { size: 1 << 30, flags: tflag::HAS_FLAGS }
    );
    assert_eq!(
        decode_info(&info_block_size_payload(1, 4096, 32 << 20)).unwrap(),
        Info::BlockSize { minimum: 1, preferred: 4096, maximum: 32 << 20 }
    );
    assert_eq!(decode_info(&info_name_payload("vol0")).unwrap(), Info::Name("vol0".into()));
    assert_eq!(decode_info(&info_description_payload("d")).unwrap(), Info::Description("d".into()));
    assert_eq!(decode_info(&[0, 9]).unwrap(), Info::Unknown(9));
    assert!(decode_info(&info_export_payload(1, 1)[..11]).is_err());
    assert!(decode_info(&[0]).is_err());
}

#[test]
fn server_entries_round_trip_and_reject_bad_lengths() {
    assert_eq!(decode_server_entry(&server_entry_payload("vol0")).unwrap(), "vol0");
    assert!(decode_server_entry(&[0, 0, 0, 9, b'a']).is_err());
}

#[test]
fn option_reply_round_trips() {
    let mut out = BytesMut::new();
    encode_option_reply(&mut out, opt::LIST, rep::ERR_UNKNOWN, b"no");
    let h = decode_option_reply_header(&out).unwrap();
    assert_eq!(h, OptionReplyHeader { option: opt::LIST, reply_type: rep::ERR_UNKNOWN, length: 2 });
    assert!(rep::is_error(h.reply_type));
    assert!(!rep::is_error(rep::ACK));
}

#[test]
fn export_name_reply_pads_unless_no_zeroes() {
    let mut out = BytesMut::new();
    encode_export_name_reply(&mut out, 4096, 1, false);
    assert_eq!(out.len(), 8 + 2 + 124);
    let mut out = BytesMut::new();
    encode_export_name_reply(&mut out, 4096, 1, true);
    assert_eq!(out.len(), 10);
}

#[test]
fn every_command_round_trips() {
    for code in 0..=10u16 {
        let r = Request { flags: cflag::FUA, command: Command::from_code(code), cookie: 7, offset: 4096, length: 512 };
        let mut out = BytesMut::new();
        encode_request(&mut out, &r);
        assert_eq!(out.len(), REQUEST_HEADER_BYTES);
        assert_eq!(decode_request(&out).unwrap(), r);
        assert_eq!(r.command.code(), code);
    }
    assert_eq!(Command::from_code(99), Command::Unknown(99));
}

#[test]
fn request_with_bad_magic_or_short_is_rejected() {
    let mut out = BytesMut::new();
    encode_request(&mut out, &Request { flags: 0, command: Command::Read, cookie: 1, offset: 0, length: 1 });
    let mut bad = out.to_vec();
    bad[3] = 0;
    assert!(matches!(decode_request(&bad), Err(DecodeError::BadMagic { .. })));
    assert!(matches!(decode_request(&out[..27]), Err(DecodeError::Truncated { .. })));
}

#[test]
fn simple_and_structured_replies_decode() {
    let mut out = BytesMut::new();
    encode_simple_reply(&mut out, Errno::Inval as u32, 42);
    assert_eq!(decode_reply_header(&out).unwrap(), ReplyHeader::Simple { errno: 22, cookie: 42 });

    let mut out = BytesMut::new();
    encode_read_data_header(&mut out, 9, 8192, 4096);
    assert_eq!(out.len(), CHUNK_HEADER_BYTES + 8);
    assert_eq!(
        decode_reply_header(&out).unwrap(),
        ReplyHeader::Chunk { flags: chunk::FLAG_DONE, chunk_type: chunk::OFFSET_DATA, cookie: 9, length: 4104 }
    );

    let mut out = BytesMut::new();
    encode_structured_error(&mut out, 3, Errno::Io as u32, "disk on fire");
    match decode_reply_header(&out).unwrap() {
        ReplyHeader::Chunk { chunk_type, length, .. } => {
            assert_eq!(chunk_type, chunk::ERROR);
            assert_eq!(length as usize, out.len() - CHUNK_HEADER_BYTES);
        }
        other => panic!("{other:?}"),
    }
    // A structured header cut at the simple-reply size asks for more bytes.
    assert!(matches!(decode_reply_header(&out[..16]), Err(DecodeError::Truncated { need: 20, .. })));
    assert!(matches!(decode_reply_header(&[1, 2, 3, 4]), Err(DecodeError::BadMagic { .. })));
}

proptest! {
    #[test]
    fn requests_round_trip(flags: u16, code: u16, cookie: u64, offset: u64, length: u32) {
        let r = Request { flags, command: Command::from_code(code), cookie, offset, length };
        let mut out = BytesMut::new();
        encode_request(&mut out, &r);
        prop_assert_eq!(decode_request(&out).unwrap(), r);
    }

    #[test]
    fn decoders_never_panic_on_random_bytes(bytes in proptest::collection::vec(any::<u8>(), 0..64)) {
        let _ = decode_greeting(&bytes);
        let _ = decode_option_header(&bytes);
        let _ = decode_info_request(&bytes);
        let _ = decode_info(&bytes);
        let _ = decode_server_entry(&bytes);
        let _ = decode_option_reply_header(&bytes);
        let _ = decode_request(&bytes);
        let _ = decode_reply_header(&bytes);
        let _ = decode_meta_context_request(&bytes);
    }

    #[test]
    fn meta_context_requests_round_trip(export in "[a-z0-9._-]{0,40}", queries in proptest::collection::vec("[a-z:]{0,20}", 0..6)) {
        let req = MetaContextRequest { export, queries };
        let mut out = BytesMut::new();
        encode_meta_context_request(&mut out, &req);
        prop_assert_eq!(decode_meta_context_request(&out).unwrap(), req.clone());
        prop_assert!(decode_meta_context_request(&out[..out.len() - 1]).is_err(), "a cut request is refused");
    }

    #[test]
    fn info_requests_round_trip(name in "[a-z0-9._-]{0,40}", requests in proptest::collection::vec(0u16..8, 0..8)) {
        let req = InfoRequest { name, requests };
        let mut out = BytesMut::new();
        encode_info_request(&mut out, &req);
        prop_assert_eq!(decode_info_request(&out).unwrap(), req);
    }
}

#[test]
fn hostile_meta_context_requests_are_refused_without_allocating() {
    // A query count of 2^32 - 1 and a name length past the limit.
    assert!(matches!(decode_meta_context_request(&[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff]), Err(DecodeError::TooLong { .. })));
    assert!(matches!(decode_meta_context_request(&[0, 1, 0, 0]), Err(DecodeError::TooLong { .. })));
    let mut out = BytesMut::new();
    encode_meta_context_request(&mut out, &MetaContextRequest { export: "vol0".into(), queries: vec!["base:".into()] });
    out.extend_from_slice(b"junk");
    assert!(decode_meta_context_request(&out).is_err(), "trailing bytes");
}

#[test]
fn a_block_status_chunk_carries_its_context_and_descriptors() {
    let mut out = BytesMut::new();
    encode_block_status(&mut out, 9, 1, &[(4096, 0), (8192, allocation::HOLE | allocation::ZERO)]);
    let header = decode_reply_header(&out).unwrap();
    assert_eq!(header, ReplyHeader::Chunk { flags: chunk::FLAG_DONE, chunk_type: chunk::BLOCK_STATUS, cookie: 9, length: 4 + 16 });
    assert_eq!(&out[CHUNK_HEADER_BYTES..], &[0, 0, 0, 1, 0, 0, 16, 0, 0, 0, 0, 0, 0, 0, 32, 0, 0, 0, 0, 3]);
}
