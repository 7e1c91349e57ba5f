//! One suite run against every store: the same ops must read back the same.

use proptest::prelude::*;

use super::file::{FileStore, VolumeGeometry};
use super::memory::MemoryStore;
use super::{BlockStore, StoreError, ZeroMode};

const SIZE: u64 = 256 * 1024;

fn stores() -> Vec<(&'static str, Box<dyn BlockStore>, Option<tempfile::TempDir>)> {
    let dir = tempfile::tempdir().unwrap();
    let geometry = VolumeGeometry { name: "c".into(), size: SIZE, block_bytes: 4096, extent_bytes: 65536 };
    let (file, _) = FileStore::open_or_create(dir.path(), &geometry).unwrap();
    vec![("memory", Box::new(MemoryStore::new(SIZE)), None), ("file", Box::new(file), Some(dir))]
}

fn read(store: &dyn BlockStore, offset: u64, len: usize) -> Vec<u8> {
    let mut buf = vec![0xee; len];
    store.read_at(&mut buf, offset).unwrap();
    buf
}

#[test]
fn new_stores_read_zeroes() {
    for (name, store, _dir) in stores() {
        assert_eq!(store.size(), SIZE, "{name}");
        assert!(read(&*store, 0, SIZE as usize).iter().all(|&b| b == 0), "{name}");
    }
}

#[test]
fn out_of_range_requests_fail_and_change_nothing() {
    for (name, store, _dir) in stores() {
        store.write_at(&[1; 4096], SIZE - 4096).unwrap();
        assert!(matches!(store.write_at(&[2; 4097], SIZE - 4096), Err(StoreError::OutOfRange { .. })), "{name}");
        assert!(matches!(store.read_at(&mut [0; 2], SIZE - 1), Err(StoreError::OutOfRange { .. })), "{name}");
        assert!(matches!(store.read_bytes(SIZE - 1, 2), Err(StoreError::OutOfRange { .. })), "{name}");
        assert!(matches!(store.try_read_now(u64::MAX, 2), Err(StoreError::OutOfRange { .. })), "{name}");
        assert!(matches!(store.trim(u64::MAX - 1, 4), Err(StoreError::OutOfRange { .. })), "{name}");
        assert!(matches!(store.write_zeroes(SIZE, 1, ZeroMode::KeepAllocated, false), Err(StoreError::OutOfRange { .. })));
        assert_eq!(read(&*store, SIZE - 4096, 4096), vec![1; 4096], "{name}");
    }
}

/// Data just written is in the page cache: a read of it needs no wait.
#[test]
fn a_read_of_data_just_written_is_served_at_once() {
    for (name, store, _dir) in stores() {
        store.write_at(&[5; 8192], 4096).unwrap();
        let now = store.try_read_now(4096, 8192).unwrap().unwrap_or_else(|| panic!("{name}: not served at once"));
        assert_eq!(&now[..], &[5; 8192][..], "{name}");
    }
}

#[derive(Clone, Debug)]
enum Op {
    Write { offset: u64, len: usize, byte: u8 },
    Trim { offset: u64, len: u64 },
    Zero { offset: u64, len: u64, keep: bool },
    Sync,
}

fn op() -> impl Strategy<Value = Op> {
    let range = (0..SIZE - 1).prop_flat_map(|offset| (Just(offset), 1..=(SIZE - offset).min(70_000)));
    prop_oneof![
        4 => (range.clone(), any::<u8>()).prop_map(|((offset, len), byte)| Op::Write { offset, len: len as usize, byte }),
        1 => range.clone().prop_map(|(offset, len)| Op::Trim { offset, len }),
        1 => (range, any::<bool>()).prop_map(|((offset, len), keep)| Op::Zero { offset, len, keep }),
        1 => Just(Op::Sync),
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]
    #[test]
    fn every_store_matches_a_byte_model(ops in proptest::collection::vec(op(), 1..40)) {
        for (name, store, _dir) in stores() {
            let mut model = vec![0u8; SIZE as usize];
            for op in &ops {
                match *op {
                    Op::Write { offset, len, byte } => {
                        let data: Vec<u8> = (0..len).map(|i| byte.wrapping_add(i as u8)).collect();
                        store.write_at(&data, offset).unwrap();
                        model[offset as usize..offset as usize + len].copy_from_slice(&data);
                    }
                    Op::Trim { offset, len } => {
                        store.trim(offset, len).unwrap();
                        model[offset as usize..(offset + len) as usize].fill(0);
                    }
                    Op::Zero { offset, len, keep } => {
                        let mode = if keep { ZeroMode::KeepAllocated } else { ZeroMode::MayUnmap };
                        store.write_zeroes(offset, len, mode, false).unwrap();
                        model[offset as usize..(offset + len) as usize].fill(0);
                    }
                    Op::Sync => store.sync().unwrap(),
                }
            }
            prop_assert!(read(&*store, 0, SIZE as usize) == model, "{} store diverged from the model", name);
            // The buffer-returning reads agree, at any alignment; a read
            // that cannot be served at once says so and returns nothing.
            for (offset, len) in [(0, SIZE as usize), (4095, 70_001), (SIZE - 1, 1)] {
                let want = &model[offset as usize..offset as usize + len];
                prop_assert!(store.read_bytes(offset, len).unwrap() == want, "{} read_bytes at {}", name, offset);
                if let Some(now) = store.try_read_now(offset, len).unwrap() {
                    prop_assert!(now == want, "{} try_read_now at {}", name, offset);
                }
            }
        }
    }
}
