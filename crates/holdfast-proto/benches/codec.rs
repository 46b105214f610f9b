//! Micro-benchmarks of the PDU codec and CRC32C.

use bytes::{Bytes, BytesMut};
use criterion::{criterion_group, criterion_main, BenchmarkId, Criterion, Throughput};
use holdfast_proto::decoder::{Limits, PduDecoder, Role};
use holdfast_proto::pdu::{C2HData, CapsuleCmd, Framing, Pdu};
use holdfast_proto::sgl::SglDescriptor;
use holdfast_proto::SubmissionEntry;

fn crc(c: &mut Criterion) {
    let mut g = c.benchmark_group("crc32c");
    for size in [4096usize, 131072] {
        let data = vec![0xA5u8; size];
        g.throughput(Throughput::Bytes(size as u64));
        g.bench_with_input(BenchmarkId::from_parameter(size), &data, |b, d| {
            b.iter(|| holdfast_proto::digest::crc32c(d))
        });
        // The reference in the same run: the CRC32 instruction alone (the `crc32c` crate).
        g.bench_with_input(BenchmarkId::new("crc32c-crate", size), &data, |b, d| b.iter(|| crc32c::crc32c(d)));
    }
    g.finish();
}

const FRAMINGS: [(&str, Framing); 2] = [
    ("plain", Framing { hdgst: false, ddgst: false, pda: 0 }),
    ("digests", Framing { hdgst: true, ddgst: true, pda: 0 }),
];

fn encode(c: &mut Criterion) {
    let mut g = c.benchmark_group("pdu-encode");
    for (name, f) in FRAMINGS {
        let mut sqe = SubmissionEntry::new(2, 1);
        sqe.dptr = SglDescriptor::transport(4096);
        let cmd = Pdu::CapsuleCmd(CapsuleCmd { sqe, data: Bytes::new() });
        g.bench_function(format!("capsule ({name})"), |b| {
            let mut out = BytesMut::with_capacity(1 << 20);
            b.iter(|| {
                out.clear();
                cmd.encode(&f, &mut out);
            })
        });
    }
    g.finish();
}

fn decode(c: &mut Criterion) {
    let mut g = c.benchmark_group("pdu-decode");
    for (name, f) in FRAMINGS {
        let wire = Pdu::C2HData(C2HData {
            cccid: 1,
            datao: 0,
            data: Bytes::from(vec![7u8; 4096]),
            last: true,
            success: false,
        })
        .to_bytes(&f);
        g.throughput(Throughput::Bytes(4096));
        g.bench_function(format!("4 KiB C2HData ({name})"), |b| {
            let mut d = PduDecoder::new(Role::Host, Limits::default());
            d.set_negotiated(f.hdgst, f.ddgst, 0);
            b.iter(|| {
                let mut buf = BytesMut::from(&wire[..]);
                d.decode(&mut buf).unwrap()
            })
        });
    }
    g.finish();
}

criterion_group!(benches, crc, encode, decode);
criterion_main!(benches);
