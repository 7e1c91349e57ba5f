//! `volume_meta`: the body is `harness::volume_meta` (`fuzz/harness.rs`), which the test
//! suite also runs over the kept corpus on stable Rust.
#![no_main]

#[path = "../harness.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::volume_meta(data));
