//! `witness_frame`: the body is `harness::witness_frame` (`fuzz/harness.rs`), which the test
//! suite also runs over the kept corpus on stable Rust.
#![no_main]

#[path = "../harness.rs"]
#[allow(dead_code)]
mod harness;

libfuzzer_sys::fuzz_target!(|data: &[u8]| harness::witness_frame(data));
