//! Criterion micro-benchmarks of the command dispatcher: `cmd::parse` + `cmd::execute` for the I/O commands
//! on the RAM backend, as the TCP transport runs them, without sockets. Compare with the codec benchmarks in
//! holdfast-proto: together they are the per-command CPU cost of the target outside the kernel.
use bytes::Bytes;
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use holdfast_proto::fabrics::{cc, ConnectCommand, ConnectData};
use holdfast_proto::opcode::io as op;
use holdfast_proto::sgl::SglDescriptor;
use holdfast_proto::sqe::rw;
use holdfast_proto::SubmissionEntry;
use holdfast_target::cmd;
use holdfast_target::config::Config;
use holdfast_target::request::{Outcome, QueueCtx};
use holdfast_target::{Target, TargetSettings};
use std::hint::black_box;
use std::sync::Arc;

const NQN: &str = "nqn.2026-01.io.holdfast:bench";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000b0001";

fn queue_ctx(target: &Arc<Target>) -> QueueCtx {
    let port = target.ports.read()[0].clone();
    QueueCtx::new(target.clone(), port, "127.0.0.1:4420".parse().unwrap(), "127.0.0.1:5000".parse().unwrap(), 16384)
}

async fn connect(ctx: &mut QueueCtx, qid: u16, cntlid: u16) {
    let c = ConnectCommand::new(1, qid, if qid == 0 { 31 } else { 127 }, 0);
    let d = ConnectData::new([0xB0; 16], cntlid, NQN, HOSTNQN);
    let req = cmd::parse(ctx, &c.to_sqe()).expect("Connect parses");
    let _ = cmd::fabrics::connect(ctx, &req, zerocopy::IntoBytes::as_bytes(&d)).await;
}

/// An enabled controller's I/O queue on a 64 MiB RAM namespace with 4 KiB blocks.
fn io_queue(rt: &tokio::runtime::Runtime) -> (QueueCtx, QueueCtx) {
    let cfg = Config::parse(
        &format!(
            "[[port]]\nid = 1\nlisten = \"127.0.0.1:4420\"\n[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n\
             [[subsystem.namespace]]\nnsid = 1\nbackend = \"ram\"\nsize_mib = 64\nblock_size = 4096\n"
        ),
        "bench",
    )
    .unwrap();
    let target = Target::new(&cfg, TargetSettings::default()).unwrap();
    rt.block_on(async {
        let mut admin = queue_ctx(&target);
        connect(&mut admin, 0, 0xFFFF).await;
        let ctrl = admin.ctrl.clone().expect("admin Connect");
        ctrl.write_cc(cc::ENABLE_DEFAULT).unwrap();
        ctrl.state.lock().io_queues_granted = 1;
        let mut io = queue_ctx(&target);
        connect(&mut io, 1, ctrl.cntlid).await;
        assert!(io.ctrl.is_some(), "I/O queue Connect");
        (admin, io)
    })
}

fn rw_sqe(opcode: u8, lba: u64, blocks: u32, len: u32, incapsule: bool) -> SubmissionEntry {
    let mut s = SubmissionEntry::new(opcode, 1);
    s.nsid.set(1);
    s.flags = holdfast_proto::sqe::PSDT_SGL;
    rw::set(&mut s, lba, blocks, 0);
    s.dptr = if incapsule { SglDescriptor::incapsule(len) } else { SglDescriptor::transport(len) };
    s
}

fn dispatch(c: &mut Criterion) {
    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (_admin, mut io) = io_queue(&rt);
    // Write the namespace once: reads then return real data, not the zeroes of unwritten chunks.
    let fill = Bytes::from(vec![0xA5; 131072]);
    for lba in (0..16384u64).step_by(32) {
        let req = cmd::parse(&io, &rw_sqe(op::WRITE, lba, 32, 131072, false)).expect("parses");
        assert!(matches!(cmd::execute(&mut io, req, fill.clone()), Outcome::Done(r) if r.status.is_success()));
    }
    let mut g = c.benchmark_group("dispatch");
    for (name, opcode, bs) in [("read", op::READ, 4096u32), ("write", op::WRITE, 4096), ("read", op::READ, 131072)] {
        let blocks = bs / 4096;
        let data = if opcode == op::WRITE { Bytes::from(vec![0x5A; bs as usize]) } else { Bytes::new() };
        g.throughput(Throughput::Bytes(bs as u64));
        g.bench_function(BenchmarkId::new(name, bs), |b| {
            let mut lba = 0u64;
            b.iter(|| {
                lba = (lba + 7 * blocks as u64) % (16384 - blocks as u64);
                let sqe = rw_sqe(opcode, lba, blocks, bs, opcode == op::WRITE);
                let req = cmd::parse(&io, &sqe).expect("parses");
                match cmd::execute(&mut io, req, data.clone()) {
                    Outcome::Done(r) => black_box(r),
                    _ => panic!("the RAM backend completes inline"),
                };
            })
        });
    }
    // The parse step alone: namespace lookup, range and MDTS checks.
    g.throughput(Throughput::Elements(1));
    g.bench_function("parse_read", |b| {
        let sqe = rw_sqe(op::READ, 8, 1, 4096, false);
        b.iter(|| black_box(cmd::parse(&io, black_box(&sqe)).is_ok()))
    });
    g.finish();
}

criterion_group!(benches, dispatch);
criterion_main!(benches);
