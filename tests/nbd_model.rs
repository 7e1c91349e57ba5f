//! Property test over NBD: random writes, trims and zero-writes (with FUA,
//! NO_HOLE and flushes mixed in), sent through the real server, read back
//! the same as an in-memory model of the volume.

mod common;

use common::nbd_client::NbdClient;
use common::*;
use geomirror_wire::nbd::{Command, cflag};
use proptest::prelude::*;

const SIZE: u64 = 1 << 20;

#[derive(Clone, Debug)]
enum Op {
    Write { offset: u64, len: u32, seed: u8, fua: bool },
    Trim { offset: u64, len: u32 },
    Zero { offset: u64, len: u32, no_hole: bool },
    Flush,
}

fn range() -> impl Strategy<Value = (u64, u32)> {
    (0..SIZE - 1).prop_flat_map(|offset| (Just(offset), 1..=((SIZE - offset).min(200_000) as u32)))
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        6 => (range(), any::<u8>(), any::<bool>()).prop_map(|((offset, len), seed, fua)| Op::Write { offset, len, seed, fua }),
        2 => range().prop_map(|(offset, len)| Op::Trim { offset, len }),
        2 => (range(), any::<bool>()).prop_map(|((offset, len), no_hole)| Op::Zero { offset, len, no_hole }),
        1 => Just(Op::Flush),
    ]
}

/// One node for all cases (the node outlives every case; each case starts
/// from what the volume holds).
#[test]
fn random_operations_read_back_like_the_model() {
    let n = SingleNode::start("vol0", "1MiB");
    let mut runner = proptest::test_runner::TestRunner::new(ProptestConfig { cases: 24, ..ProptestConfig::default() });
    let strategy = (proptest::collection::vec(op(), 1..30), any::<bool>());
    runner.run(&strategy, |(ops, structured)| check_case(&n, &ops, structured)).unwrap();
}

fn check_case(n: &SingleNode, ops: &[Op], structured: bool) -> Result<(), TestCaseError> {
    {
        let mut c = NbdClient::connect(n.node.nbd, "vol0", structured).unwrap();
        let mut model = c.read(0, SIZE as u32).unwrap().unwrap();
        for op in ops {
            match *op {
                Op::Write { offset, len, seed, fua } => {
                    let data: Vec<u8> = (0..len).map(|i| seed.wrapping_mul(31).wrapping_add(i as u8)).collect();
                    c.write(offset, &data, if fua { cflag::FUA } else { 0 }).unwrap().unwrap();
                    model[offset as usize..offset as usize + len as usize].copy_from_slice(&data);
                }
                Op::Trim { offset, len } => {
                    c.command(Command::Trim, 0, offset, len).unwrap().unwrap();
                    model[offset as usize..offset as usize + len as usize].fill(0);
                }
                Op::Zero { offset, len, no_hole } => {
                    c.command(Command::WriteZeroes, if no_hole { cflag::NO_HOLE } else { 0 }, offset, len).unwrap().unwrap();
                    model[offset as usize..offset as usize + len as usize].fill(0);
                }
                Op::Flush => c.flush().unwrap().unwrap(),
            }
        }
        let back = c.read(0, SIZE as u32).unwrap().unwrap();
        let first_diff = back.iter().zip(&model).position(|(a, b)| a != b);
        prop_assert!(first_diff.is_none(), "volume differs from the model at byte {:?}", first_diff);
        c.disconnect();
    }
    Ok(())
}
