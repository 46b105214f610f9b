//! Design §5 at the target: a write still on its way to the media when its connection dies must never land
//! after newer data written through the host's next association. The test backend holds the first write
//! back for 600 ms; the first connection sends write A and dies; the host reconnects at once and writes B to the same
//! block. With the drain (the default) the old write is dropped at the media gate and B stays; with the drain
//! switched off (test-only), A lands last and silently undoes B — the failure the drain prevents.

use bytes::{Bytes, BytesMut};
use holdfast_proto::decoder::{Limits, PduDecoder, Role};
use holdfast_proto::fabrics::{cc, property, ConnectCommand, ConnectData, PropertyCommand};
use holdfast_proto::opcode::{admin, io};
use holdfast_proto::pdu::{CapsuleCmd, Framing, IcReq, Pdu};
use holdfast_proto::sgl::SglDescriptor;
use holdfast_proto::sqe::rw;
use holdfast_proto::{CompletionEntry, Status, SubmissionEntry};
use holdfast_target::config::Config;
use holdfast_target::{Server, Target, TargetSettings};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;
use zerocopy::IntoBytes;

const NQN: &str = "nqn.2026-01.io.holdfast:stale";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-00000000beef";
const DELAY: Duration = Duration::from_millis(600);

struct Q {
    s: TcpStream,
    dec: PduDecoder,
    buf: BytesMut,
    cid: u16,
}

impl Q {
    async fn open(addr: SocketAddr, qid: u16, cntlid: u16) -> (Q, CompletionEntry) {
        let s = TcpStream::connect(addr).await.unwrap();
        let mut q = Q { s, dec: PduDecoder::new(Role::Host, Limits::default()), buf: BytesMut::new(), cid: 0 };
        q.send(Pdu::IcReq(IcReq { pfv: 0, hpda: 0, hdgst: false, ddgst: false, maxr2t: 0 })).await;
        assert!(matches!(q.recv().await, Pdu::IcResp(_)));
        q.dec.set_negotiated(false, false, 0);
        let c = ConnectCommand::new(0, qid, 31, if qid == 0 { 5000 } else { 0 });
        let d = ConnectData::new([0x42; 16], cntlid, NQN, HOSTNQN);
        let (r, _) = q.cmd(c.to_sqe(), Bytes::copy_from_slice(d.as_bytes())).await;
        (q, r)
    }
    async fn send(&mut self, p: Pdu) {
        self.s.write_all(&p.to_bytes(&Framing::default())).await.unwrap();
    }
    async fn recv(&mut self) -> Pdu {
        tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(p) = self.dec.decode(&mut self.buf).unwrap() {
                    return p;
                }
                assert!(self.s.read_buf(&mut self.buf).await.unwrap() > 0, "closed");
            }
        })
        .await
        .expect("no PDU in 10 s")
    }
    async fn submit(&mut self, mut sqe: SubmissionEntry, data: Bytes) -> u16 {
        self.cid += 1;
        sqe.cid.set(self.cid);
        self.send(Pdu::CapsuleCmd(CapsuleCmd { sqe, data })).await;
        self.cid
    }
    async fn cmd(&mut self, sqe: SubmissionEntry, data: Bytes) -> (CompletionEntry, Vec<u8>) {
        let cid = self.submit(sqe, data).await;
        let mut out = Vec::new();
        loop {
            match self.recv().await {
                Pdu::C2HData(d) => out.extend_from_slice(&d.data),
                Pdu::CapsuleResp(r) if r.cqe.cid() == cid => return (r.cqe, out),
                p => panic!("unexpected {p:?}"),
            }
        }
    }
}

/// Admin + one I/O queue, enabled.
async fn associate(addr: SocketAddr) -> (Q, Q) {
    let (mut a, r) = Q::open(addr, 0, 0xFFFF).await;
    assert_eq!(r.status(), Status::SUCCESS, "admin Connect");
    let cntlid = r.dw0.get() as u16;
    let set = PropertyCommand::new(0, property::CC, false, Some(cc::ENABLE_DEFAULT as u64)).to_sqe();
    assert_eq!(a.cmd(set, Bytes::new()).await.0.status(), Status::SUCCESS);
    let mut nq = SubmissionEntry::new(admin::SET_FEATURES, 0);
    nq.cdw10.set(0x07);
    assert_eq!(a.cmd(nq, Bytes::new()).await.0.status(), Status::SUCCESS);
    let (q, r) = Q::open(addr, 1, cntlid).await;
    assert_eq!(r.status(), Status::SUCCESS, "I/O Connect");
    (a, q)
}

fn write_sqe(fill: u8) -> (SubmissionEntry, Bytes) {
    let mut s = SubmissionEntry::new(io::WRITE, 0);
    s.nsid.set(1);
    s.dptr = SglDescriptor::incapsule(512);
    rw::set(&mut s, 0, 1, 0);
    (s, Bytes::from(vec![fill; 512]))
}

async fn run(drain: bool) -> u8 {
    let cfg = Config::parse(
        &format!(
            "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n\
             [subsystem.policy]\ncqt_ms = 5000\n[[subsystem.namespace]]\nnsid = 1\nbackend = \"ram\"\nsize_mib = 1\n"
        ),
        "test",
    )
    .unwrap();
    // The first write (A) is held back; the next one (B) goes straight to the media.
    let settings =
        TargetSettings { drain, test_delay_writes: Some(DELAY), test_delay_every: 1000, ..Default::default() };
    let server = Server::start(Target::new(&cfg, settings).unwrap()).await.unwrap();
    let addr = server.bound[0].1;

    // Association 1: write A (0xAA) is sent, then the connection dies before it completes.
    let (a1, mut q1) = associate(addr).await;
    let (s, d) = write_sqe(0xAA);
    q1.submit(s, d).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    drop(q1);
    drop(a1);

    // Association 2, at once: write B (0xBB) to the same block, acknowledged.
    let (_a2, mut q2) = associate(addr).await;
    let (s, d) = write_sqe(0xBB);
    assert_eq!(q2.cmd(s, d).await.0.status(), Status::SUCCESS);
    // Long after the old write's delay, read the block back. Without the drain the old write is expected to
    // land: under a loaded machine it may land late, so the block is read again until it shows the old data
    // or 10 s have passed (with the drain, a read that already shows the old data is a failure at once).
    tokio::time::sleep(DELAY * 2).await;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(10);
    let block = loop {
        let mut r = SubmissionEntry::new(io::READ, 0);
        r.nsid.set(1);
        r.dptr = SglDescriptor::transport(512);
        rw::set(&mut r, 0, 1, 0);
        let (c, data) = q2.cmd(r, Bytes::new()).await;
        assert_eq!(c.status(), Status::SUCCESS);
        if drain || data[0] == 0xAA || tokio::time::Instant::now() > deadline {
            break data[0];
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    server.stop().await;
    block
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn old_write_never_lands_after_newer_data() {
    assert_eq!(run(true).await, 0xBB, "with the drain the newer data survives");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_the_drain_the_stale_write_lands() {
    assert_eq!(run(false).await, 0xAA, "the test must be able to fail: without the drain the old write wins");
}

/// The drain holds across a reload that removes the subsystem and one that adds it again (an operator's
/// mistake undone, say): the NQN names the same subsystem to the host, and a file namespace the same media, so
/// a host reconnecting to it is admitted only once its old association's write has finished or been dropped,
/// not at once because the subsystem object that recorded that association is gone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_subsystem_removed_and_added_again_still_drains_the_old_association() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("ns.img");
    let cfg = |with: bool| {
        let sub = format!(
            "[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n[subsystem.policy]\ncqt_ms = 5000\n\
             [[subsystem.namespace]]\nnsid = 1\nbackend = \"file\"\npath = \"{}\"\nsize_mib = 1\n",
            path.display()
        );
        let text = format!("[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n{}", if with { sub.as_str() } else { "" });
        Config::parse(&text, "test").unwrap()
    };
    let settings = TargetSettings { test_delay_writes: Some(DELAY), test_delay_every: 1000, ..Default::default() };
    let server = Server::start(Target::new(&cfg(true), settings).unwrap()).await.unwrap();
    let addr = server.bound[0].1;

    let (_a1, mut q1) = associate(addr).await;
    let (s, d) = write_sqe(0xAA);
    q1.submit(s, d).await;
    let sent = tokio::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(50)).await;
    // Removed (its controllers torn down, the write still held back on its way to the media), then back.
    server.target.reload(&cfg(false)).unwrap();
    server.target.reload(&cfg(true)).unwrap();
    let _ = associate(addr).await;
    let waited = sent.elapsed();
    assert!(
        waited >= DELAY - Duration::from_millis(50),
        "the new association was admitted {waited:?} after the old write was sent, before that write ({DELAY:?}) \
         finished or was dropped"
    );
    server.stop().await;
}
