//! Every NBD decoder on arbitrary bytes: no panic, no allocation beyond limits.
#![no_main]

use geomirror_wire::nbd;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = nbd::decode_greeting(data);
    let _ = nbd::decode_option_header(data);
    let _ = nbd::decode_info_request(data);
    let _ = nbd::decode_info(data);
    let _ = nbd::decode_server_entry(data);
    let _ = nbd::decode_option_reply_header(data);
    let _ = nbd::decode_reply_header(data);
    if let Ok(request) = nbd::decode_request(data) {
        let mut out = bytes::BytesMut::new();
        nbd::encode_request(&mut out, &request);
        assert_eq!(&out[..], &data[..nbd::REQUEST_HEADER_BYTES], "request headers round-trip");
    }
});
