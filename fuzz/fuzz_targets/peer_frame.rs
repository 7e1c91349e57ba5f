//! The peer frame decoder on arbitrary bytes: no panic, and whatever
//! decodes re-encodes to something that decodes to the same message.
#![no_main]

use geomirror_wire::peer::Message;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    if let Ok(message) = Message::decode(data) {
        let again = Message::decode(&message.encode()).expect("re-encoded message decodes");
        assert_eq!(again, message);
    }
});
