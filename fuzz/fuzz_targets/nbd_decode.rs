//! `nbd_decode`: the body is `harness::nbd_decode` (`fuzz/harness.rs`), which the test
//! suite also runs over the kept corpus on stable Rust.
#![no_main]

#[path = "../harness.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::nbd_decode(data));
