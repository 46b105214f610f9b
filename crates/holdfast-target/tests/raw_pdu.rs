//! Loopback tests that speak raw NVMe/TCP PDUs to an in-process target: the happy paths a host uses, and
//! every malformed input the target must answer with the right TermReq or NVMe status.

use bytes::{Bytes, BytesMut};
use holdfast_proto::decoder::{Limits, PduDecoder, Role};
use holdfast_proto::fabrics::{
    self, cc, csts, property, ConnectCommand, ConnectData, InvalidParameter, PropertyCommand,
};
use holdfast_proto::opcode::{admin, io};
use holdfast_proto::pdu::{self, CapsuleCmd, Framing, H2CData, IcReq, Pdu, TermReq};
use holdfast_proto::sgl::SglDescriptor;
use holdfast_proto::sqe::rw;
use holdfast_proto::{CompletionEntry, Status, SubmissionEntry};
use holdfast_target::config::Config;
use holdfast_target::{Server, Target, TargetSettings};
use std::net::SocketAddr;
use std::sync::atomic::Ordering;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NQN: &str = "nqn.2026-01.io.holdfast:test";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000001";
const HOSTID: [u8; 16] = [0x11; 16];

async fn start(extra: &str) -> (Server, SocketAddr) {
    start_with(extra, TargetSettings::default()).await
}

async fn start_with(extra: &str, settings: TargetSettings) -> (Server, SocketAddr) {
    start_ns(extra, settings, 4, 512).await
}

/// A target with one port and subsystem `NQN` (`extra` in its table), whose namespace 1 is `size_mib` of RAM
/// in blocks of `block_size`.
async fn start_ns(extra: &str, settings: TargetSettings, size_mib: u64, block_size: u32) -> (Server, SocketAddr) {
    let text = format!(
        r#"
[[port]]
id = 1
listen = "127.0.0.1:0"
[[subsystem]]
nqn = "{NQN}"
{extra}
[[subsystem.namespace]]
nsid = 1
backend = "ram"
size_mib = {size_mib}
block_size = {block_size}
"#
    );
    let extra_any = if extra.contains("allowed_hosts") {
        text
    } else {
        text.replace(&format!("nqn = \"{NQN}\"\n"), &format!("nqn = \"{NQN}\"\nallow_any_host = true\n"))
    };
    let cfg = Config::parse(&extra_any, "test").unwrap();
    let target = Target::new(&cfg, settings).unwrap();
    let server = Server::start(target).await.unwrap();
    let addr = server.bound[0].1;
    (server, addr)
}

struct Conn {
    s: TcpStream,
    dec: PduDecoder,
    buf: BytesMut,
    f: Framing,
    cid: u16,
    /// The last completion had More set (an Error Information log entry was made for it), which
    /// [`Conn::finish`] clears so that tests compare statuses as the specification names them.
    more: bool,
}

impl Conn {
    async fn raw(addr: SocketAddr) -> Conn {
        let s = TcpStream::connect(addr).await.unwrap();
        s.set_nodelay(true).unwrap();
        Conn {
            s,
            dec: PduDecoder::new(Role::Host, Limits::default()),
            buf: BytesMut::new(),
            f: Framing::default(),
            cid: 0,
            more: false,
        }
    }
    async fn ic(addr: SocketAddr, hd: bool, dd: bool) -> Conn {
        let mut c = Conn::raw(addr).await;
        c.send(Pdu::IcReq(IcReq { pfv: 0, hpda: 0, hdgst: hd, ddgst: dd, maxr2t: 0 })).await;
        match c.recv().await {
            Pdu::IcResp(r) => {
                assert_eq!((r.pfv, r.cpda, r.hdgst, r.ddgst, r.maxh2cdata), (0, 0, hd, dd, 131072));
            }
            p => panic!("expected ICResp, got {p:?}"),
        }
        c.dec.set_negotiated(hd, dd, 0);
        c.f = Framing { hdgst: hd, ddgst: dd, pda: 0 };
        c
    }
    async fn send(&mut self, p: Pdu) {
        let b = p.to_bytes(&self.f);
        self.s.write_all(&b).await.unwrap();
    }
    async fn send_raw(&mut self, b: &[u8]) {
        self.s.write_all(b).await.unwrap();
    }
    async fn recv(&mut self) -> Pdu {
        self.recv_within(Duration::from_secs(5)).await
    }
    /// The next PDU, waited for up to `limit` (a bound for liveness, not a timing check).
    async fn recv_within(&mut self, limit: Duration) -> Pdu {
        tokio::time::timeout(limit, async {
            loop {
                if let Some(p) = self.dec.decode(&mut self.buf).unwrap() {
                    return p;
                }
                let n = self.s.read_buf(&mut self.buf).await.unwrap();
                assert!(n > 0, "connection closed while waiting for a PDU");
            }
        })
        .await
        .unwrap_or_else(|_| panic!("no PDU within {limit:?}"))
    }
    /// Expect the target to send a C2HTermReq and close.
    async fn expect_term(&mut self, fes: u16, fei: u32) -> TermReq {
        let p = self.recv().await;
        let Pdu::C2HTermReq(t) = p else { panic!("expected C2HTermReq, got {p:?}") };
        assert_eq!((t.fes, t.fei), (fes, fei), "FES/FEI");
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), self.s.read_to_end(&mut rest))
            .await
            .expect("target did not close");
        assert!(n.is_err() || rest.is_empty(), "data after the TermReq");
        t
    }
    async fn identify_controller(&mut self) -> holdfast_proto::identify::IdentifyController {
        let mut s = SubmissionEntry::new(admin::IDENTIFY, 0);
        s.dptr = SglDescriptor::transport(4096);
        s.cdw10.set(1);
        let (r, d) = self.cmd(s, Bytes::new()).await;
        assert_eq!(r.status(), Status::SUCCESS, "Identify Controller");
        zerocopy::FromBytes::read_from_bytes(&d[..4096]).unwrap()
    }
    fn next_cid(&mut self) -> u16 {
        self.cid = self.cid.wrapping_add(1);
        self.cid
    }
    /// Set Features `fid` to `v` (CDW11), which must succeed.
    async fn set_feature(&mut self, fid: u32, v: u32) {
        let mut s = SubmissionEntry::new(admin::SET_FEATURES, 0);
        s.cdw10.set(fid);
        s.cdw11.set(v);
        assert_eq!(self.cmd(s, Bytes::new()).await.0.status(), Status::SUCCESS, "Set Features {fid:#x}");
    }
    /// Post an Asynchronous Event Request (held by the target); its CID.
    async fn post_aer(&mut self) -> u16 {
        let cid = self.next_cid();
        let sqe = SubmissionEntry::new(admin::ASYNC_EVENT_REQUEST, cid);
        self.send(Pdu::CapsuleCmd(CapsuleCmd { sqe, data: Bytes::new() })).await;
        cid
    }
    /// A Keep Alive's status.
    async fn keep_alive(&mut self) -> Status {
        let mut ka = SubmissionEntry::new(admin::KEEP_ALIVE, 0);
        ka.dptr = SglDescriptor::transport(0);
        self.cmd(ka, Bytes::new()).await.0.status()
    }
    async fn cmd(&mut self, mut sqe: SubmissionEntry, data: Bytes) -> (CompletionEntry, Vec<u8>) {
        let cid = self.next_cid();
        sqe.cid.set(cid);
        self.send(Pdu::CapsuleCmd(CapsuleCmd { sqe, data })).await;
        self.finish(cid).await
    }
    async fn finish(&mut self, cid: u16) -> (CompletionEntry, Vec<u8>) {
        self.finish_within(cid, Duration::from_secs(5)).await
    }
    /// [`Conn::finish`], each PDU waited for up to `limit`.
    async fn finish_within(&mut self, cid: u16, limit: Duration) -> (CompletionEntry, Vec<u8>) {
        let mut data = Vec::new();
        loop {
            match self.recv_within(limit).await {
                Pdu::C2HData(d) => {
                    assert_eq!(d.cccid, cid);
                    assert_eq!(d.datao as usize, data.len());
                    data.extend_from_slice(&d.data);
                }
                Pdu::CapsuleResp(mut r) => {
                    assert_eq!(r.cqe.cid(), cid);
                    let word = r.cqe.status.get();
                    self.more = Status::from_cqe_word(word).more();
                    r.cqe.status.set(word & !(1 << 14));
                    return (r.cqe, data);
                }
                p => panic!("unexpected {p:?}"),
            }
        }
    }
    async fn connect(&mut self, qid: u16, cntlid: u16, subnqn: &str, kato: u32) -> CompletionEntry {
        self.connect_with(qid, cntlid, subnqn, kato, 0).await
    }
    /// Connect with connect attributes (CATTR).
    async fn connect_with(&mut self, qid: u16, cntlid: u16, subnqn: &str, kato: u32, cattr: u8) -> CompletionEntry {
        self.connect_full(qid, cntlid, subnqn, HOSTNQN, kato, cattr).await
    }
    /// Connect as host `hostnqn` (same Host Identifier).
    async fn connect_as(&mut self, qid: u16, cntlid: u16, hostnqn: &str) -> CompletionEntry {
        self.connect_full(qid, cntlid, NQN, hostnqn, if qid == 0 { 5000 } else { 0 }, 0).await
    }
    async fn connect_full(
        &mut self,
        qid: u16,
        cntlid: u16,
        subnqn: &str,
        hostnqn: &str,
        kato: u32,
        cattr: u8,
    ) -> CompletionEntry {
        let mut c = ConnectCommand::new(0, qid, if qid == 0 { 31 } else { 127 }, kato);
        c.cattr = cattr;
        let d = ConnectData::new(HOSTID, cntlid, subnqn, hostnqn);
        use zerocopy::IntoBytes;
        let (cqe, data) = self.cmd(c.to_sqe(), Bytes::copy_from_slice(d.as_bytes())).await;
        assert!(data.is_empty(), "no C2HData for a Connect");
        cqe
    }
    async fn prop_get(&mut self, ofst: u32, wide: bool) -> CompletionEntry {
        self.cmd(PropertyCommand::new(0, ofst, wide, None).to_sqe(), Bytes::new()).await.0
    }
    async fn prop_set(&mut self, ofst: u32, v: u64) -> CompletionEntry {
        self.cmd(PropertyCommand::new(0, ofst, false, Some(v)).to_sqe(), Bytes::new()).await.0
    }
    /// Admin connect + enable; returns the CNTLID.
    async fn admin(addr: SocketAddr, subnqn: &str, hd: bool, dd: bool) -> (Conn, u16) {
        Conn::admin_kato(addr, subnqn, hd, dd, 5000).await
    }
    /// [`Conn::admin`] with KATO `kato` ms (0: no keep-alive timer).
    async fn admin_kato(addr: SocketAddr, subnqn: &str, hd: bool, dd: bool, kato: u32) -> (Conn, u16) {
        let mut c = Conn::ic(addr, hd, dd).await;
        let r = c.connect(0, 0xFFFF, subnqn, kato).await;
        assert_eq!(r.status(), Status::SUCCESS, "admin connect");
        let cntlid = r.dw0.get() as u16;
        assert_eq!(c.prop_set(property::CC, cc::ENABLE_DEFAULT as u64).await.status(), Status::SUCCESS);
        assert_eq!(c.prop_get(property::CSTS, false).await.dw0.get() & csts::RDY, csts::RDY);
        (c, cntlid)
    }
    async fn io(addr: SocketAddr, admin: &mut Conn, cntlid: u16, hd: bool, dd: bool) -> Conn {
        Conn::io_with(addr, admin, cntlid, hd, dd, 0).await.0
    }
    /// I/O queue 1 connected with connect attributes `cattr`; also the Connect's completion.
    async fn io_with(
        addr: SocketAddr,
        admin: &mut Conn,
        cntlid: u16,
        hd: bool,
        dd: bool,
        cattr: u8,
    ) -> (Conn, CompletionEntry) {
        let mut s = SubmissionEntry::new(admin::SET_FEATURES, 0);
        s.cdw10.set(0x07);
        s.cdw11.set(0x0001_0001);
        assert_eq!(admin.cmd(s, Bytes::new()).await.0.status(), Status::SUCCESS);
        let mut q = Conn::ic(addr, hd, dd).await;
        let r = q.connect_with(1, cntlid, NQN, 0, cattr).await;
        assert_eq!(r.status(), Status::SUCCESS, "io connect");
        (q, r)
    }
}

/// A target whose writes wait `delay_ms` before the media, and one association on it (admin queue, its
/// CNTLID, I/O queue 1) with a one-block write of 7s at LBA 0 sent and now held before the media.
async fn association_with_a_held_write(delay_ms: u64) -> (Server, SocketAddr, Conn, u16, Conn) {
    let settings =
        TargetSettings { test_delay_writes: Some(Duration::from_millis(delay_ms)), ..TargetSettings::default() };
    let (server, addr) = start_with("", settings).await;
    let (mut a, cntlid) = Conn::admin(addr, NQN, false, false).await;
    let mut q = Conn::io(addr, &mut a, cntlid, false, false).await;
    let mut sqe = rw_sqe(io::WRITE, 0, 1, SglDescriptor::incapsule(512));
    sqe.cid.set(q.next_cid());
    q.send(Pdu::CapsuleCmd(CapsuleCmd { sqe, data: Bytes::from(vec![7u8; 512]) })).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    (server, addr, a, cntlid, q)
}

/// Read block 0 (512 bytes) on `q`: it must read back as zeroes (`why` says which write must not have landed).
async fn assert_block0_zero(q: &mut Conn, why: &str) {
    let (r, d) = q.cmd(rw_sqe(io::READ, 0, 1, SglDescriptor::transport(512)), Bytes::new()).await;
    assert_eq!(r.status(), Status::SUCCESS);
    assert_eq!(d, vec![0u8; 512], "{why}");
}

/// These commands' capsules back to back, each with the CID given, to send in one write as a host that
/// pipelines commands does.
fn capsules(f: &Framing, cmds: impl IntoIterator<Item = (u16, SubmissionEntry, Bytes)>) -> Vec<u8> {
    let mut burst = Vec::new();
    for (cid, mut sqe, data) in cmds {
        sqe.cid.set(cid);
        burst.extend_from_slice(&Pdu::CapsuleCmd(CapsuleCmd { sqe, data }).to_bytes(f));
    }
    burst
}

fn rw_sqe(op: u8, slba: u64, blocks: u32, sgl: SglDescriptor) -> SubmissionEntry {
    let mut s = SubmissionEntry::new(op, 0);
    s.nsid.set(1);
    s.dptr = sgl;
    rw::set(&mut s, slba, blocks, 0);
    s
}

/// Waits until `cond` holds, 10 s at most (a bound for liveness, not a timing check).
async fn wait_until(cond: impl Fn() -> bool, what: &str) {
    let t0 = std::time::Instant::now();
    while !cond() {
        assert!(t0.elapsed() < Duration::from_secs(10), "not within 10 s: {what}");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[tokio::test]
async fn connect_enable_identify_and_io_with_every_digest_setting() {
    let (server, addr) = start("").await;
    for (hd, dd) in [(false, false), (true, true), (true, false), (false, true)] {
        let (mut a, cntlid) = Conn::admin(addr, NQN, hd, dd).await;
        // CAP: MQES and TO, 8 bytes.
        let cap = a.prop_get(property::CAP, true).await;
        assert_eq!(fabrics::cap::mqes(cap.result64()), 1023);
        // Identify Controller.
        let mut s = SubmissionEntry::new(admin::IDENTIFY, 0);
        s.dptr = SglDescriptor::transport(4096);
        s.cdw10.set(1);
        let (r, d) = a.cmd(s, Bytes::new()).await;
        assert_eq!(r.status(), Status::SUCCESS);
        assert_eq!(d.len(), 4096);
        assert_eq!(u16::from_le_bytes([d[78], d[79]]), cntlid, "CNTLID at byte 78");
        assert_ne!(u16::from_le_bytes([d[320], d[321]]), 0, "KAS");
        let ctratt = u32::from_le_bytes(d[96..100].try_into().unwrap());
        assert_eq!(ctratt & (1 << 6), 0, "CTRATT.TBKAS is not advertised (Linux before 6.4 then skips Keep Alives)");
        assert_eq!(u32::from_le_bytes(d[1792..1796].try_into().unwrap()), (64 + 16384) / 16, "IOCCSZ");
        assert_eq!(&d[768..768 + NQN.len()], NQN.as_bytes());
        let mut q = Conn::io(addr, &mut a, cntlid, hd, dd).await;
        // In-capsule write of 8 blocks, then R2T write of 128 blocks (64 KiB), then read both back.
        let small: Vec<u8> = (0..4096u32).map(|i| (i * 7) as u8).collect();
        let (r, _) = q.cmd(rw_sqe(io::WRITE, 0, 8, SglDescriptor::incapsule(4096)), Bytes::from(small.clone())).await;
        assert_eq!(r.status(), Status::SUCCESS);
        let big: Vec<u8> = (0..65536u32).map(|i| (i % 251) as u8).collect();
        let cid = q.next_cid();
        let mut sqe = rw_sqe(io::WRITE, 100, 128, SglDescriptor::transport(65536));
        sqe.cid.set(cid);
        q.send(Pdu::CapsuleCmd(CapsuleCmd { sqe, data: Bytes::new() })).await;
        let Pdu::R2T(r2t) = q.recv().await else { panic!("expected R2T") };
        assert_eq!((r2t.cccid, r2t.r2to, r2t.r2tl), (cid, 0, 65536));
        for (i, chunk) in big.chunks(16384).enumerate() {
            let last = i == 3;
            q.send(Pdu::H2CData(H2CData {
                cccid: cid,
                ttag: r2t.ttag,
                datao: (i * 16384) as u32,
                data: Bytes::copy_from_slice(chunk),
                last,
            }))
            .await;
        }
        assert_eq!(q.finish(cid).await.0.status(), Status::SUCCESS);
        let (r, d) = q.cmd(rw_sqe(io::READ, 0, 8, SglDescriptor::transport(4096)), Bytes::new()).await;
        assert_eq!((r.status(), d), (Status::SUCCESS, small));
        let (r, d) = q.cmd(rw_sqe(io::READ, 100, 128, SglDescriptor::transport(65536)), Bytes::new()).await;
        assert_eq!(r.status(), Status::SUCCESS);
        assert!(d == big, "64 KiB read-back differs");
    }
    server.stop().await;
}

#[tokio::test]
async fn sq_flow_control_disabled_on_request_reads_complete_with_their_data() {
    let (server, addr) = start("").await;
    let (mut a, cntlid) = Conn::admin(addr, NQN, false, false).await;
    // Queue 1 asks for no SQ flow control (CATTR bit 2): the Connect response's SQHD is FFFFh (TP 8005).
    let (mut q, r) = Conn::io_with(addr, &mut a, cntlid, false, false, fabrics::CATTR_DISABLE_SQ_FLOW).await;
    assert_eq!(r.sqhd.get(), fabrics::SQHD_FLOW_DISABLED);
    // A write's completion leaves SQHD reserved (zero) from then on.
    let data: Vec<u8> = (0..1024u32).map(|i| (i * 13) as u8).collect();
    let (r, _) = q.cmd(rw_sqe(io::WRITE, 4, 2, SglDescriptor::incapsule(1024)), Bytes::from(data.clone())).await;
    assert_eq!((r.status(), r.sqhd.get()), (Status::SUCCESS, 0));
    // A successful read is answered by its C2HData alone, LAST and SUCCESS set, and no CapsuleResp: the
    // next PDU on the queue is the next command's.
    for _ in 0..2 {
        let cid = q.next_cid();
        let mut sqe = rw_sqe(io::READ, 4, 2, SglDescriptor::transport(1024));
        sqe.cid.set(cid);
        q.send(Pdu::CapsuleCmd(CapsuleCmd { sqe, data: Bytes::new() })).await;
        let Pdu::C2HData(d) = q.recv().await else { panic!("expected C2HData") };
        assert_eq!((d.cccid, d.datao, d.last, d.success), (cid, 0, true, true));
        assert!(d.data[..] == data[..], "read-back differs");
    }
    // A failed read still gets a CapsuleResp with its status.
    let (r, d) = q.cmd(rw_sqe(io::READ, 4 * 2048 - 1, 2, SglDescriptor::transport(1024)), Bytes::new()).await;
    assert_eq!((r.status(), d.len()), (Status::LBA_OUT_OF_RANGE.with_dnr(), 0));
    // Without the attribute (the admin queue here), SQHD tracks the queue as before.
    let r = a.prop_get(property::CSTS, false).await;
    assert_ne!(r.sqhd.get(), fabrics::SQHD_FLOW_DISABLED);
    assert_ne!(r.sqhd.get(), 0);
    server.stop().await;
}

#[tokio::test]
async fn io_statuses_are_exact() {
    let (server, addr) = start("").await;
    let (mut a, cntlid) = Conn::admin(addr, NQN, false, false).await;
    let mut q = Conn::io(addr, &mut a, cntlid, false, false).await;
    // An I/O queue for a controller that does not exist: Invalid Parameters pointing at CNTLID.
    let mut stray = Conn::ic(addr, false, false).await;
    let r = stray.connect(1, cntlid.wrapping_add(100), NQN, 0).await;
    assert_eq!(r.status(), Status::CONNECT_INVALID_PARAMETERS.with_dnr());
    assert_eq!(InvalidParameter::from_dw0(r.dw0.get()), InvalidParameter { offset: 16, in_data: true });
    let nblocks = 4 * 2048u64;
    let failed = || holdfast_target::control::stats(&server.target)[0].failed_cmds;
    assert_eq!(failed(), 0);
    let (r, _) = q.cmd(rw_sqe(io::READ, nblocks - 1, 2, SglDescriptor::transport(1024)), Bytes::new()).await;
    assert_eq!(r.status(), Status::LBA_OUT_OF_RANGE.with_dnr());
    assert_eq!(failed(), 1, "a failed command counts in the subsystem's stats");
    let mut s = rw_sqe(io::READ, 0, 1, SglDescriptor::transport(512));
    s.nsid.set(7);
    assert_eq!(q.cmd(s, Bytes::new()).await.0.status(), Status::INVALID_NAMESPACE.with_dnr());
    let (r, _) = q.cmd(rw_sqe(io::READ, 0, 1024, SglDescriptor::transport(512 * 1024)), Bytes::new()).await;
    assert_eq!(r.status(), Status::INVALID_FIELD.with_dnr(), "above MDTS");
    let (r, _) = q.cmd(rw_sqe(0x7E, 0, 1, SglDescriptor::transport(0)), Bytes::new()).await;
    assert_eq!(r.status(), Status::INVALID_OPCODE.with_dnr());
    let (r, _) = q.cmd(rw_sqe(io::READ, 0, 1, SglDescriptor::transport(4096)), Bytes::new()).await;
    assert_eq!(r.status(), Status::SGL_LENGTH_INVALID.with_dnr(), "SGL length differs from NLB");
    // Commands that move no data, with an SGL that gives a length: Data SGL Length Invalid (nvmet's answer), on
    // the I/O queue, the admin queue and for a Fabrics command; with a length of 0 they succeed.
    for len in [512u32, 0] {
        let want = if len == 0 { Status::SUCCESS } else { Status::SGL_LENGTH_INVALID.with_dnr() };
        let mut flush = SubmissionEntry::new(io::FLUSH, 0);
        flush.nsid.set(1);
        flush.dptr = SglDescriptor::transport(len);
        assert_eq!(q.cmd(flush, Bytes::new()).await.0.status(), want, "Flush, SGL length {len}");
        let mut ka = SubmissionEntry::new(admin::KEEP_ALIVE, 0);
        ka.dptr = SglDescriptor::transport(len);
        assert_eq!(a.cmd(ka, Bytes::new()).await.0.status(), want, "Keep Alive, SGL length {len}");
        let mut get = PropertyCommand::new(0, property::CSTS, false, None).to_sqe();
        get.dptr = SglDescriptor::transport(len);
        assert_eq!(a.cmd(get, Bytes::new()).await.0.status(), want, "Property Get, SGL length {len}");
    }
    // Admin: unknown log page, unknown feature.
    let mut s = SubmissionEntry::new(admin::GET_LOG_PAGE, 0);
    s.dptr = SglDescriptor::transport(512);
    holdfast_proto::sqe::get_log_page::set(&mut s, 0x7F, 0, 512, 0);
    assert_eq!(a.cmd(s, Bytes::new()).await.0.status(), Status::INVALID_LOG_PAGE.with_dnr());
    let mut s = SubmissionEntry::new(admin::GET_FEATURES, 0);
    s.cdw10.set(0x0C);
    assert_eq!(a.cmd(s, Bytes::new()).await.0.status(), Status::INVALID_FIELD.with_dnr());
    server.stop().await;
}

/// Every connection has TCP keep-alive on, so a host that asked for no Keep Alive Timer and then vanished does
/// not hold its controller for ever: the target's end of a fresh connection runs the keep-alive timer
/// (/proc/net/tcp column `tr` 2, with about a minute to go).
#[tokio::test]
async fn connections_run_tcp_keep_alive() {
    let (server, addr) = start("").await;
    let s = TcpStream::connect(addr).await.unwrap();
    let ours = s.local_addr().unwrap().port();
    tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    let table = std::fs::read_to_string("/proc/net/tcp").unwrap();
    let port = |a: &str| u16::from_str_radix(a.rsplit(':').next().unwrap(), 16).unwrap();
    let timer = table
        .lines()
        .skip(1)
        .map(|l| l.split_whitespace().collect::<Vec<_>>())
        .find(|f| port(f[1]) == addr.port() && port(f[2]) == ours)
        .map(|f| f[5].to_owned())
        .expect("the target's end of the connection");
    let (tr, when) = timer.split_once(':').unwrap();
    let when = u64::from_str_radix(when, 16).unwrap();
    assert_eq!(tr, "02", "keep-alive timer running (tr:tm->when {timer})");
    // In clock ticks (USER_HZ 100 or more): between 30 s and 70 s.
    assert!((3000..=70_000).contains(&when), "keep-alive due in {when} ticks");
    drop(s);
    server.stop().await;
}

#[tokio::test]
async fn connect_refusals_say_why() {
    let (server, addr) = start("allowed_hosts = [\"nqn.2014-08.org.nvmexpress:uuid:someone-else\"]").await;
    let mut c = Conn::ic(addr, false, false).await;
    let r = c.connect(0, 0xFFFF, NQN, 5000).await;
    assert_eq!(r.status(), Status::CONNECT_INVALID_HOST.with_dnr());
    let r = c.connect(0, 0xFFFF, "nqn.2026-01.io.holdfast:nope", 5000).await;
    assert_eq!(r.status(), Status::CONNECT_INVALID_PARAMETERS.with_dnr());
    assert_eq!(InvalidParameter::from_dw0(r.dw0.get()), InvalidParameter { offset: 256, in_data: true });
    // Connect whose SGL length differs from its in-capsule data.
    let mut sqe = ConnectCommand::new(0, 0, 31, 5000).to_sqe();
    sqe.dptr = SglDescriptor::incapsule(1024);
    let (r, _) = c.cmd(sqe, Bytes::from(vec![0u8; 512])).await;
    assert_eq!(r.status(), Status::SGL_LENGTH_INVALID.with_dnr());
    // Commands before Connect.
    let mut s = SubmissionEntry::new(admin::IDENTIFY, 0);
    s.dptr = SglDescriptor::transport(4096);
    assert_eq!(c.cmd(s, Bytes::new()).await.0.status(), Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    server.stop().await;
}

/// SPDK's `spdk_nvme_perf` and `spdk_nvme_identify` send an empty Host NQN unless given one: an anonymous
/// host, admitted where any host is (as the Linux target does) and refused where hosts are listed.
#[tokio::test]
async fn an_empty_host_nqn_is_an_anonymous_host() {
    let (server, addr) = start("").await;
    let mut a = Conn::ic(addr, false, false).await;
    let r = a.connect_as(0, 0xFFFF, "").await;
    assert_eq!(r.status(), Status::SUCCESS, "admin connect with an empty host NQN");
    let cntlid = r.dw0.get() as u16;
    assert_eq!(a.prop_set(property::CC, cc::ENABLE_DEFAULT as u64).await.status(), Status::SUCCESS);
    let mut s = SubmissionEntry::new(admin::SET_FEATURES, 0);
    s.cdw10.set(0x07);
    s.cdw11.set(0x0001_0001);
    assert_eq!(a.cmd(s, Bytes::new()).await.0.status(), Status::SUCCESS);
    // A named host cannot take over the anonymous host's controller; the anonymous host binds its queue.
    let mut other = Conn::ic(addr, false, false).await;
    let r = other.connect_as(1, cntlid, HOSTNQN).await;
    assert_eq!(r.status(), Status::CONNECT_INVALID_PARAMETERS.with_dnr());
    assert_eq!(InvalidParameter::from_dw0(r.dw0.get()), InvalidParameter { offset: 16, in_data: true });
    let mut q = Conn::ic(addr, false, false).await;
    assert_eq!(q.connect_as(1, cntlid, "").await.status(), Status::SUCCESS, "I/O connect");
    let data: Vec<u8> = (0..512u32).map(|i| (i * 3) as u8).collect();
    let (r, _) = q.cmd(rw_sqe(io::WRITE, 7, 1, SglDescriptor::incapsule(512)), Bytes::from(data.clone())).await;
    assert_eq!(r.status(), Status::SUCCESS);
    let (r, d) = q.cmd(rw_sqe(io::READ, 7, 1, SglDescriptor::transport(512)), Bytes::new()).await;
    assert_eq!((r.status(), d), (Status::SUCCESS, data));
    server.stop().await;

    let (server, addr) = start(&format!("allowed_hosts = [\"{HOSTNQN}\"]")).await;
    let mut c = Conn::ic(addr, false, false).await;
    assert_eq!(c.connect_as(0, 0xFFFF, "").await.status(), Status::CONNECT_INVALID_HOST.with_dnr());
    assert_eq!(c.connect_as(0, 0xFFFF, HOSTNQN).await.status(), Status::SUCCESS, "a listed host still connects");
    server.stop().await;
}

/// `cntlid_min` / `cntlid_max` bound the CNTLIDs a subsystem's controllers get (two targets serving one NQN on
/// two paths need disjoint ranges for a multipath host); a full range answers Controller Busy.
#[tokio::test]
async fn controllers_get_cntlids_from_the_configured_range() {
    let (server, addr) = start("cntlid_min = 100\ncntlid_max = 101").await;
    let mut conns = Vec::new();
    let mut ids = Vec::new();
    for _ in 0..2 {
        let mut c = Conn::ic(addr, false, false).await;
        let r = c.connect(0, 0xFFFF, NQN, 5000).await;
        assert_eq!(r.status(), Status::SUCCESS);
        ids.push(r.dw0.get() as u16);
        conns.push(c);
    }
    ids.sort();
    assert_eq!(ids, [100, 101]);
    let mut c = Conn::ic(addr, false, false).await;
    assert_eq!(c.connect(0, 0xFFFF, NQN, 5000).await.status(), Status::CONNECT_CONTROLLER_BUSY.with_dnr());
    server.stop().await;
}

fn header(ty: u8, flags: u8, hlen: u8, pdo: u8, plen: u32) -> Vec<u8> {
    let mut h = vec![ty, flags, hlen, pdo];
    h.extend_from_slice(&plen.to_le_bytes());
    h.resize(hlen as usize, 0);
    h
}

#[tokio::test]
async fn malformed_pdus_get_the_right_termination_request() {
    let (server, addr) = start("").await;
    // Capsule before ICReq: PDU sequence error.
    let mut c = Conn::raw(addr).await;
    c.send_raw(&header(0x04, 0, 72, 0, 72)).await;
    c.expect_term(0x02, 0).await;
    // ICReq with PFV 1: unsupported parameter at byte 8.
    let mut c = Conn::raw(addr).await;
    let mut ic = header(0x00, 0, 128, 0, 128);
    ic[8] = 1;
    c.send_raw(&ic).await;
    let t = c.expect_term(0x06, 8).await;
    assert_eq!(&t.data[..], &ic[..], "the refused ICReq");
    // Unknown PDU type.
    let mut c = Conn::ic(addr, false, false).await;
    c.send_raw(&header(0x08, 0, 24, 0, 24)).await;
    let t = c.expect_term(0x01, 0).await;
    assert_eq!(t.data.len(), 24, "the offending header is returned");
    // Wrong HLEN for a capsule.
    let mut c = Conn::ic(addr, false, false).await;
    c.send_raw(&header(0x04, 0, 64, 0, 64)).await;
    c.expect_term(0x01, 2).await;
    // PLEN far beyond the in-capsule limit: data transfer limit exceeded, nothing buffered.
    let mut c = Conn::ic(addr, false, false).await;
    c.send_raw(&header(0x04, 0, 72, 72, 0x7FFF_FFFF)).await;
    c.expect_term(0x05, 0).await;
    // PDO inside the header.
    let mut c = Conn::ic(addr, false, false).await;
    c.send_raw(&header(0x04, 0, 72, 8, 200)).await;
    c.expect_term(0x01, 3).await;
    // Header digest error.
    let mut c = Conn::ic(addr, true, false).await;
    let mut b = BytesMut::new();
    pdu::encode_capsule_cmd_header(&mut b, &c.f, &SubmissionEntry::new(admin::KEEP_ALIVE, 1), 0);
    b[72] ^= 0xFF;
    c.send_raw(&b).await;
    c.expect_term(0x03, 0).await;
    // H2CData with a TTAG no R2T gave.
    // The TermReq carries the offending PDU's header (NVMe/TCP 1.0 Figure 25), here with its header digest.
    let mut c = Conn::ic(addr, true, false).await;
    let h2c = Pdu::H2CData(H2CData { cccid: 1, ttag: 9, datao: 0, data: Bytes::from(vec![0; 512]), last: true });
    let mut sent = BytesMut::new();
    h2c.encode(&c.f, &mut sent);
    c.send(h2c).await;
    let t = c.expect_term(0x01, 10).await;
    assert_eq!(&t.data[..], &sent[..28], "the H2CData header and its digest");
    // H2CData beyond the R2T.
    let (mut a, cntlid) = Conn::admin(addr, NQN, false, false).await;
    let mut q = Conn::io(addr, &mut a, cntlid, false, false).await;
    let mut sqe = rw_sqe(io::WRITE, 0, 1, SglDescriptor::transport(512));
    sqe.cid.set(5);
    q.send(Pdu::CapsuleCmd(CapsuleCmd { sqe, data: Bytes::new() })).await;
    let Pdu::R2T(r2t) = q.recv().await else { panic!("expected R2T") };
    let h2c =
        Pdu::H2CData(H2CData { cccid: 5, ttag: r2t.ttag, datao: 0, data: Bytes::from(vec![0; 1024]), last: true });
    let mut sent = BytesMut::new();
    h2c.encode(&q.f, &mut sent);
    q.send(h2c).await;
    let t = q.expect_term(0x04, 0).await;
    assert_eq!(&t.data[..], &sent[..24], "the H2CData header");
    // H2CData whose DATAO lies past the end of the R2T: out of range too (not a DATAO out of order).
    let (mut a, cntlid) = Conn::admin(addr, NQN, false, false).await;
    let mut q = Conn::io(addr, &mut a, cntlid, false, false).await;
    let mut sqe = rw_sqe(io::WRITE, 0, 1, SglDescriptor::transport(512));
    sqe.cid.set(6);
    q.send(Pdu::CapsuleCmd(CapsuleCmd { sqe, data: Bytes::new() })).await;
    let Pdu::R2T(r2t) = q.recv().await else { panic!("expected R2T") };
    q.send(Pdu::H2CData(H2CData {
        cccid: 6,
        ttag: r2t.ttag,
        datao: 4096,
        data: Bytes::from(vec![0; 512]),
        last: true,
    }))
    .await;
    q.expect_term(0x04, 0).await;
    server.stop().await;
}

#[tokio::test]
async fn data_digest_error_fails_the_command_not_the_connection() {
    let (server, addr) = start("").await;
    let (mut a, cntlid) = Conn::admin(addr, NQN, false, true).await;
    let mut q = Conn::io(addr, &mut a, cntlid, false, true).await;
    let mut sqe = rw_sqe(io::WRITE, 0, 1, SglDescriptor::incapsule(512));
    sqe.cid.set(3);
    let mut b =
        BytesMut::from(&Pdu::CapsuleCmd(CapsuleCmd { sqe, data: Bytes::from(vec![1u8; 512]) }).to_bytes(&q.f)[..]);
    b[100] ^= 1;
    q.send_raw(&b).await;
    assert_eq!(q.finish(3).await.0.status(), Status::TRANSIENT_TRANSPORT_ERROR);
    assert_block0_zero(&mut q, "the corrupt write never landed").await;
    server.stop().await;
}

/// A capsule failing its data digest whose CID is that of a command still running is answered as any other
/// capsule with that CID: Command ID Conflict, leaving the running command to complete as itself.
#[tokio::test]
async fn a_corrupt_capsule_reusing_a_running_commands_cid_is_a_cid_conflict() {
    let settings = TargetSettings { test_delay_writes: Some(Duration::from_millis(500)), ..TargetSettings::default() };
    let (server, addr) = start_with("", settings).await;
    let (mut a, cntlid) = Conn::admin(addr, NQN, false, true).await;
    let mut q = Conn::io(addr, &mut a, cntlid, false, true).await;
    let held = |byte: u8| {
        let mut sqe = rw_sqe(io::WRITE, 0, 1, SglDescriptor::incapsule(512));
        sqe.cid.set(9);
        Pdu::CapsuleCmd(CapsuleCmd { sqe, data: Bytes::from(vec![byte; 512]) }).to_bytes(&q.f)
    };
    let first = held(7);
    let mut second = BytesMut::from(&held(8)[..]);
    second[100] ^= 1;
    q.send_raw(&first).await;
    q.send_raw(&second).await;
    let (r, _) = q.finish(9).await;
    assert_eq!(r.status(), Status::CID_CONFLICT.with_dnr(), "the corrupt capsule's answer");
    let (r, _) = q.finish(9).await;
    assert_eq!(r.status(), Status::SUCCESS, "the running write completes as itself");
    let (_, d) = q.cmd(rw_sqe(io::READ, 0, 1, SglDescriptor::transport(512)), Bytes::new()).await;
    assert_eq!(d, vec![7u8; 512]);
    server.stop().await;
}

/// The Error Information log holds every failed command once, with its queue, CID, status, namespace and,
/// for a command that addresses LBAs, its first LBA; Transport Type only for a transport error; the
/// completion has More set. Refusals for a command's fields are not media errors in the SMART log.
#[tokio::test]
async fn each_failed_command_is_in_the_error_log_once_with_its_namespace_and_lba() {
    let (server, addr) = start("").await; // 4 MiB of 512-byte blocks: 8192 blocks
    let (mut a, cntlid) = Conn::admin(addr, NQN, false, true).await;
    let mut q = Conn::io(addr, &mut a, cntlid, false, true).await;
    // Refused when parsed: a read one block past the end.
    let (r, _) = q.cmd(rw_sqe(io::READ, 8192, 1, SglDescriptor::transport(512)), Bytes::new()).await;
    assert_eq!(r.status(), Status::LBA_OUT_OF_RANGE.with_dnr());
    assert!(q.more, "More: the error log has an entry for it");
    let read_cid = r.cid();
    // Refused when run: a deallocation past the end (its range is in the data).
    let range = holdfast_proto::sqe::dsm::Range { cattr: 0, nlb: 8, slba: 8190 };
    let mut sqe = SubmissionEntry::new(io::DATASET_MANAGEMENT, 0);
    sqe.nsid.set(1);
    sqe.dptr = SglDescriptor::incapsule(16);
    sqe.cdw11.set(holdfast_proto::sqe::dsm::AD);
    let (r, _) = q.cmd(sqe, Bytes::copy_from_slice(&range.encode())).await;
    assert_eq!(r.status(), Status::LBA_OUT_OF_RANGE.with_dnr());
    assert!(q.more, "More");
    let dsm_cid = r.cid();
    // A transport error: a capsule whose data digest does not match.
    let mut sqe = rw_sqe(io::WRITE, 5, 1, SglDescriptor::incapsule(512));
    sqe.cid.set(q.next_cid());
    let digest_cid = sqe.cid.get();
    let mut b =
        BytesMut::from(&Pdu::CapsuleCmd(CapsuleCmd { sqe, data: Bytes::from(vec![1u8; 512]) }).to_bytes(&q.f)[..]);
    b[100] ^= 1;
    q.send_raw(&b).await;
    assert_eq!(q.finish(digest_cid).await.0.status(), Status::TRANSIENT_TRANSPORT_ERROR);
    assert!(q.more, "More");
    // A success has no More.
    let (r, _) = q.cmd(rw_sqe(io::READ, 0, 1, SglDescriptor::transport(512)), Bytes::new()).await;
    assert!(r.status().is_success() && !q.more);

    let mut s = SubmissionEntry::new(admin::GET_LOG_PAGE, 0);
    s.dptr = SglDescriptor::transport(4 * 64);
    holdfast_proto::sqe::get_log_page::set(&mut s, 0x01, 0, 4 * 64, 0);
    let (r, log) = a.cmd(s, Bytes::new()).await;
    assert_eq!(r.status(), Status::SUCCESS);
    let e: Vec<_> =
        log.chunks_exact(64).filter_map(holdfast_proto::log_page::ErrorInformationEntry::from_slice).collect();
    let row = |e: &holdfast_proto::log_page::ErrorInformationEntry| {
        (
            e.error_count.get(),
            e.sqid.get(),
            e.cid.get(),
            Status::from_cqe_word(e.status.get()),
            e.nsid.get(),
            e.lba.get(),
            e.trtype,
        )
    };
    // Newest first; the fourth entry is empty (nothing was logged twice).
    assert_eq!(row(&e[0]), (3, 1, digest_cid, Status::TRANSIENT_TRANSPORT_ERROR, 1, 5, 3), "digest error: TCP");
    assert_eq!(row(&e[1]), (2, 1, dsm_cid, Status::LBA_OUT_OF_RANGE.with_dnr(), 1, 0, 0), "DSM: no LBA field");
    assert_eq!(row(&e[2]), (1, 1, read_cid, Status::LBA_OUT_OF_RANGE.with_dnr(), 1, 8192, 0), "read past the end");
    assert_eq!(e[3].error_count.get(), 0, "one entry per failed command");

    let mut s = SubmissionEntry::new(admin::GET_LOG_PAGE, 0);
    s.dptr = SglDescriptor::transport(512);
    holdfast_proto::sqe::get_log_page::set(&mut s, 0x02, 0, 512, 0);
    let (_, smart) = a.cmd(s, Bytes::new()).await;
    let smart = holdfast_proto::log_page::SmartHealthLog::from_slice(&smart).unwrap();
    assert_eq!(smart.media_errors, [0; 16], "no media errors");
    assert_eq!(holdfast_proto::log_page::u128_from(&smart.num_err_log_entries), 3);
    server.stop().await;
}

/// A host toggling CC.SHN gets one flush of the (file) namespaces running at a time, and one more after it,
/// not one per toggle (a peer looping Property Set queued millions of blocking flushes); the last shutdown
/// notification still completes once a flush that started after it has ended.
#[tokio::test]
async fn toggling_shutdown_notifications_runs_one_flush_at_a_time() {
    // Flushes take 20 ms, as on a slow disk (and the namespace then counts as one with a volatile cache, a
    // file's, which a shutdown flushes).
    let settings = TargetSettings { test_delay_flushes: Some(Duration::from_millis(20)), ..TargetSettings::default() };
    let (server, addr) = start_with("", settings).await;
    let (mut a, _) = Conn::admin(addr, NQN, false, false).await;
    let shn = (cc::ENABLE_DEFAULT | cc::SHN_NORMAL) as u64;
    // Sent without waiting for the answers, as a flooding peer does.
    let mut cids = Vec::new();
    let mut cmds = Vec::new();
    for i in 0..2001 {
        let v = if i % 2 == 0 { shn } else { cc::ENABLE_DEFAULT as u64 };
        let cid = a.next_cid();
        cids.push(cid);
        cmds.push((cid, PropertyCommand::new(0, property::CC, false, Some(v)).to_sqe(), Bytes::new()));
    }
    let burst = capsules(&a.f, cmds);
    a.send_raw(&burst).await;
    for cid in cids {
        assert_eq!(a.finish(cid).await.0.status(), Status::SUCCESS);
    }
    let t0 = std::time::Instant::now();
    while a.prop_get(property::CSTS, false).await.dw0.get() & csts::SHST_MASK != csts::SHST_COMPLETE {
        assert!(t0.elapsed() < Duration::from_secs(10), "shutdown never completed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let flushes = server.target.subsystem(NQN).unwrap().stats.whole_flushes.load(Ordering::Relaxed);
    assert!(flushes < 50, "{flushes} flushes for 1001 shutdown notifications");
    server.stop().await;
}

/// Turning the volatile write cache off (Set Features 06h, CDW11 bit 0 cleared) writes back what it holds before
/// the command completes: a host stops sending Flush once the cache is off, so writes completed while it was on
/// would otherwise never be made durable. Turning it on, or off again, flushes nothing; neither does a target
/// whose namespaces are all RAM.
#[tokio::test]
async fn turning_the_write_cache_off_flushes_it_first() {
    const FLUSH: Duration = Duration::from_millis(300);
    // Flushes take 300 ms, as on a slow disk (and the namespace counts as one with a volatile cache, a file's).
    let settings = TargetSettings { test_delay_flushes: Some(FLUSH), ..TargetSettings::default() };
    let (server, addr) = start_with("", settings).await;
    let (mut a, _) = Conn::admin(addr, NQN, false, false).await;
    let flushes = || server.target.subsystem(NQN).unwrap().stats.whole_flushes.load(Ordering::Relaxed);
    let t0 = std::time::Instant::now();
    a.set_feature(0x06, 0).await;
    assert!(t0.elapsed() >= FLUSH, "Set Features completed {:?} after it was sent, before the flush", t0.elapsed());
    assert_eq!(flushes(), 1, "the cache written back once");
    a.set_feature(0x06, 0).await;
    a.set_feature(0x06, 1).await;
    assert_eq!(flushes(), 1, "off again, or on: nothing to write back");
    server.stop().await;

    let (server, addr) = start("").await;
    let (mut a, _) = Conn::admin(addr, NQN, false, false).await;
    a.set_feature(0x06, 0).await;
    assert_eq!(server.target.subsystem(NQN).unwrap().stats.whole_flushes.load(Ordering::Relaxed), 0, "RAM only");
    server.stop().await;
}

/// Reads that run on a file namespace's I/O threads count towards the send high-water mark from the moment
/// they are taken in, not only once their data is queued: a host pipelining large reads without reading its
/// socket had all of them run (and their data held) at once, 256 MiB a queue.
#[tokio::test]
async fn reads_running_elsewhere_count_towards_the_send_limit() {
    // Delayed writes make the namespace one whose commands run on I/O threads (as a file's).
    let settings = TargetSettings { test_delay_writes: Some(Duration::from_millis(1)), ..TargetSettings::default() };
    let (server, addr) = start_with("", settings).await;
    let (mut a, cntlid) = Conn::admin(addr, NQN, false, false).await;
    let q = Conn::io(addr, &mut a, cntlid, false, false).await;
    let read = rw_sqe(io::READ, 0, 512, SglDescriptor::transport(256 << 10));
    let burst = capsules(&q.f, (0..250u16).map(|cid| (cid, read, Bytes::new())));
    let mut s = q.s;
    s.write_all(&burst).await.unwrap();
    // Never read: 62.5 MiB of answers. What the socket buffers take, plus 8 MiB, is all that may run; at least
    // half the 8 MiB must (a target that took nothing in would pass the bound below).
    let taken = || server.target.subsystem(NQN).unwrap().stats.read_cmds.load(Ordering::Relaxed);
    wait_until(|| taken() >= 16, "16 of the 256 KiB reads taken in").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reads = taken();
    eprintln!("reads taken in: {reads}");
    assert!(reads < 160, "{reads} of 250 256 KiB reads taken in while the host reads nothing");
    drop(s);
    server.stop().await;
}

/// Write data that came by R2T stays counted in the R2T budget until its write has run (on a file namespace's
/// I/O threads): given back when the data was all in, a host could have every write's data received and held
/// at once (a slow disk: 1024 writes of 256 KiB held 280 MB).
#[tokio::test]
async fn write_data_counts_in_the_r2t_budget_until_the_write_has_run() {
    let settings = TargetSettings { test_delay_writes: Some(Duration::from_millis(500)), ..TargetSettings::default() };
    let (server, addr) = start_with("", settings).await;
    let (mut a, cntlid) = Conn::admin(addr, NQN, false, false).await;
    let mut q = Conn::io(addr, &mut a, cntlid, false, false).await;
    let write = rw_sqe(io::WRITE, 0, 512, SglDescriptor::transport(256 << 10));
    q.send_raw(&capsules(&q.f, (0..40u16).map(|cid| (cid, write, Bytes::new())))).await;
    // Answer every R2T at once for 300 ms from the first, while no write can have run (each waits 500 ms once
    // its data is in). The first is waited for: a target that sent none would pass the bound below.
    let half = Bytes::from(vec![7u8; 128 << 10]); // MAXH2CDATA
    let mut r2ts = 0;
    let first = q.recv().await; // 5 s at most
    let until = tokio::time::Instant::now() + Duration::from_millis(300);
    let mut next = Some(first);
    while let Some(p) = next.take() {
        let Pdu::R2T(r) = p else { panic!("expected an R2T, got {p:?}") };
        r2ts += 1;
        for (datao, last) in [(0, false), (128 << 10, true)] {
            let d = H2CData { cccid: r.cccid, ttag: r.ttag, datao, data: half.clone(), last };
            q.send(Pdu::H2CData(d)).await;
        }
        next = tokio::time::timeout_at(until, q.recv()).await.ok();
    }
    assert!(r2ts <= 8, "{r2ts} R2Ts of 256 KiB answered while none of their writes had run (budget 2 MiB)");
    server.stop().await;
}

/// A RAM namespace's read shares its 128 KiB chunk with the data sent (no copy), and the send limit counts the
/// whole chunk until the data is sent: small reads a host never reads could otherwise pin a chunk each, past
/// what the socket buffers take, a thousand times the bytes waiting (1.9 GiB a connection).
#[tokio::test]
async fn small_ram_reads_waiting_to_be_sent_count_their_whole_chunk() {
    let (server, addr) = start_ns("", TargetSettings::default(), 256, 512).await; // 2048 chunks
    let (mut a, cntlid) = Conn::admin(addr, NQN, false, false).await;
    let mut q = Conn::io(addr, &mut a, cntlid, false, false).await;
    let chunk_lba = |i: u64| (i % 2048) * 256;
    // Every chunk written once (a never-written chunk reads as shared zeroes).
    let block = Bytes::from(vec![1u8; 512]);
    let writes = (0..2048u64)
        .map(|i| (i as u16, rw_sqe(io::WRITE, chunk_lba(i), 1, SglDescriptor::incapsule(512)), block.clone()));
    q.send_raw(&capsules(&q.f, writes)).await;
    for i in 0..2048u16 {
        assert_eq!(q.finish(i).await.0.status(), Status::SUCCESS);
    }
    // 40000 one-block reads over the chunks, never read: about 21 MiB of answers.
    let reads = (0..40000u64)
        .map(|i| (i as u16, rw_sqe(io::READ, chunk_lba(i), 1, SglDescriptor::transport(512)), Bytes::new()));
    let burst = capsules(&q.f, reads);
    let mut s = q.s;
    let writer = tokio::spawn(async move {
        let _ = s.write_all(&burst).await;
        s
    });
    // What the socket buffers take (a few MiB of 536-byte answers), then 8 MiB of chunks: 64 reads. Those 64
    // at least must run (a target that took nothing in would pass the bound below).
    let taken = || server.target.subsystem(NQN).unwrap().stats.read_cmds.load(Ordering::Relaxed);
    wait_until(|| taken() >= 64, "64 of the small reads taken in").await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    let reads = taken();
    eprintln!("reads taken in: {reads}");
    assert!(reads < 30000, "{reads} of 40000 small reads taken in while the host reads nothing");
    writer.abort();
    server.stop().await;
}

/// A connection counts among those without an NVM controller (limited in all and per address) from accept
/// until a Connect binds its queue to an NVM subsystem's controller, or it ends; a discovery controller's stays
/// counted (any host may open one, with any keep-alive).
#[tokio::test]
async fn a_connection_counts_among_the_limited_until_bound_to_an_nvm_controller() {
    let (server, addr) = start("").await;
    let waiting = || server.target.unbound.count();
    let until = |want: usize| async move {
        let t0 = std::time::Instant::now();
        while waiting() != want {
            assert!(t0.elapsed() < Duration::from_secs(5), "{} waiting, not {want}", waiting());
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    };
    let idle = Conn::raw(addr).await;
    until(1).await;
    let (a, _) = Conn::admin(addr, NQN, false, false).await;
    until(1).await; // the admin queue is bound: only the idle connection counts
    let (d, _) = Conn::admin(addr, fabrics::DISCOVERY_NQN, false, false).await;
    until(2).await; // bound to the discovery controller: still counted
    drop(idle);
    until(1).await;
    drop(d);
    until(0).await;
    drop(a);
    server.stop().await;
}

/// With the Keep Alive Timer disabled (KATO 0 at Connect, or set so) a Keep Alive has no timer to restart and
/// gets Keep Alive Timeout Invalid, as from nvmet; once a KATO is set it succeeds.
#[tokio::test]
async fn keep_alive_without_a_keep_alive_timer_is_keep_alive_timeout_invalid() {
    let (server, addr) = start("").await;
    let (mut a, _) = Conn::admin_kato(addr, NQN, false, false, 0).await;
    assert_eq!(a.keep_alive().await, Status::KEEP_ALIVE_INVALID);
    let mut s = SubmissionEntry::new(admin::SET_FEATURES, 0);
    s.cdw10.set(0x0F);
    s.cdw11.set(5000);
    assert_eq!(a.cmd(s, Bytes::new()).await.0.status(), Status::SUCCESS);
    assert_eq!(a.keep_alive().await, Status::SUCCESS);
    s.cdw11.set(0);
    assert_eq!(a.cmd(s, Bytes::new()).await.0.status(), Status::SUCCESS);
    assert_eq!(a.keep_alive().await, Status::KEEP_ALIVE_INVALID);
    server.stop().await;
}

#[tokio::test]
async fn keep_alive_expiry_tears_the_association_down() {
    let (server, addr) = start("").await;
    let mut c = Conn::ic(addr, false, false).await;
    assert_eq!(c.connect(0, 0xFFFF, NQN, 500).await.status(), Status::SUCCESS);
    let t0 = std::time::Instant::now();
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), c.s.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "the target kept an idle association past KATO");
    assert!(t0.elapsed() >= Duration::from_millis(400), "torn down too early: {:?}", t0.elapsed());
    server.stop().await;
}

/// An I/O queue that has the busy poller to itself and gets one command after another (so that it reads its
/// socket in its own spin, never waiting in the runtime) still sees its controller torn down: it closes, and no
/// command runs on it any more. The fence against stale writes (README, No stale writes) counts on a torn-down association's
/// queues stopping. The host here is a thread of its own with a blocking socket, one read at a time, so that the
/// gaps between commands stay shorter than the target's spin (on a loaded machine a longer gap can still end a
/// spin, and the queue would then see the teardown in the runtime even without the check this test is for).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spinning_io_queue_closes_when_its_controller_is_torn_down() {
    use std::io::{Read, Write};
    let settings = TargetSettings { busy_poll: Duration::from_millis(1), ..TargetSettings::default() };
    let (server, addr) = start_with("", settings).await;
    let (mut admin, cntlid) = Conn::admin(addr, NQN, false, false).await;
    let q = Conn::io(addr, &mut admin, cntlid, false, false).await;
    let (f, mut dec, mut buf) = (q.f, q.dec, q.buf);
    let mut s = q.s.into_std().unwrap();
    s.set_nonblocking(false).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let torn_down = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let host = std::thread::spawn({
        let torn_down = torn_down.clone();
        move || {
            // Reads back to back; once the target closes the queue, Some(how many were answered after the
            // controller was gone).
            let (mut after, mut cid, mut chunk) = (0u32, 0u16, vec![0u8; 65536]);
            let t0 = std::time::Instant::now();
            loop {
                if t0.elapsed() > Duration::from_secs(20) {
                    return None;
                }
                cid = cid.wrapping_add(1);
                let mut sqe = rw_sqe(io::READ, 0, 1, SglDescriptor::transport(512));
                sqe.cid.set(cid);
                if s.write_all(&Pdu::CapsuleCmd(CapsuleCmd { sqe, data: Bytes::new() }).to_bytes(&f)).is_err() {
                    return Some(after);
                }
                loop {
                    match dec.decode(&mut buf) {
                        Ok(Some(Pdu::CapsuleResp(_))) => break,
                        Ok(Some(_)) => continue,
                        Ok(None) => {}
                        Err(e) => panic!("undecodable PDU from the target: {e:?}"),
                    }
                    match s.read(&mut chunk) {
                        Ok(n) if n > 0 => buf.extend_from_slice(&chunk[..n]),
                        Err(e) if matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut) => {
                            panic!("queue 1 neither answered nor closed within 5 s")
                        }
                        _ => return Some(after),
                    }
                }
                if torn_down.load(std::sync::atomic::Ordering::Relaxed) {
                    after += 1;
                }
            }
        }
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The admin queue's connection closes: the target tears the association down (an association ends with
    // its admin queue), while the host goes on sending reads on queue 1 as fast as they complete.
    drop(admin);
    let subsys = server.target.subsystem(NQN).unwrap();
    let t0 = std::time::Instant::now();
    while subsys.controller(cntlid).is_some() {
        assert!(t0.elapsed() < Duration::from_secs(5), "the controller outlived its admin queue by 5 s");
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    torn_down.store(true, std::sync::atomic::Ordering::Relaxed);
    let after = tokio::task::spawn_blocking(move || host.join().unwrap()).await.unwrap();
    let after = after.expect("queue 1 was still answering reads 20 s after its controller was torn down");
    // At most the read that was in the queue's hands when the teardown came.
    assert!(after <= 1, "queue 1 answered {after} reads after its controller was torn down");
    server.stop().await;
}

/// The teardown fences the association's queues itself, at once (README, No stale writes): a Connect from the same host
/// that runs its drain check right after the teardown must see the I/O queue's write still in flight, even if
/// the queue's task has not run since. On this current-thread runtime no queue task runs between the
/// teardown and the check, which makes that race certain.
#[tokio::test]
async fn teardown_fences_every_queue_of_the_association_at_once() {
    let (server, addr, a, cntlid, q) = association_with_a_held_write(500).await;
    let subsys = server.target.subsystem(NQN).unwrap();
    subsys.controller(cntlid).unwrap().teardown("test");
    assert!(
        subsys.dead_inflight(HOSTNQN, &HOSTID) >= 1,
        "a new association of this host would be admitted while the old queue's write is still in flight"
    );
    // The write never lands: its gate was killed before it reached the media.
    drop((a, q));
    let t0 = std::time::Instant::now();
    while subsys.dead_inflight(HOSTNQN, &HOSTID) > 0 {
        assert!(t0.elapsed() < Duration::from_secs(5), "the dead association never drained");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let (mut a2, cntlid2) = Conn::admin(addr, NQN, false, false).await;
    let mut q2 = Conn::io(addr, &mut a2, cntlid2, false, false).await;
    assert_block0_zero(&mut q2, "the dead association's write landed").await;
    server.stop().await;
}

/// Read CSTS until RDY reads `rdy` (within 5 s).
async fn wait_rdy(a: &mut Conn, rdy: bool) {
    let t0 = std::time::Instant::now();
    while (a.prop_get(property::CSTS, false).await.dw0.get() & csts::RDY != 0) != rdy {
        assert!(t0.elapsed() < Duration::from_secs(5), "CSTS.RDY did not read {rdy} within 5 s");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// A controller enabled with a CC setting it does not support (NVMe Base 2.0 §3.1.4.5: I/O queue entry sizes
/// other than 64/16 bytes, a memory page size other than 4 KiB, a command set other than NVM, an arbitration
/// mechanism CAP.AMS does not list) reports Controller Fatal Status, never ready, as Linux nvmet; a reset
/// clears it and a supported setting then enables it.
#[tokio::test]
async fn enabling_with_an_unsupported_cc_setting_is_controller_fatal() {
    let (server, addr) = start("").await;
    let bad = [
        ("weighted round robin arbitration (AMS 001b)", cc::ENABLE_DEFAULT | 1 << 11),
        ("vendor-specific arbitration (AMS 111b)", cc::ENABLE_DEFAULT | 7 << 11),
        ("8 KiB pages (MPS 1)", cc::ENABLE_DEFAULT | 1 << 7),
        ("another command set (CSS 001b)", cc::ENABLE_DEFAULT | 1 << 4),
        ("128-byte SQ entries (IOSQES 7)", cc::EN | 7 << 16 | 4 << 20),
    ];
    for (what, v) in bad {
        let mut a = Conn::ic(addr, false, false).await;
        assert_eq!(a.connect(0, 0xFFFF, NQN, 5000).await.status(), Status::SUCCESS, "admin connect");
        assert_eq!(a.prop_set(property::CC, v as u64).await.status(), Status::SUCCESS, "{what}");
        let st = a.prop_get(property::CSTS, false).await.dw0.get();
        assert_eq!(st & (csts::CFS | csts::RDY), csts::CFS, "{what}: CSTS {st:#x}");
        assert_eq!(a.prop_set(property::CC, 0).await.status(), Status::SUCCESS, "{what}: reset");
        assert_eq!(a.prop_get(property::CSTS, false).await.dw0.get() & csts::CFS, 0, "{what}: CFS after a reset");
        assert_eq!(a.prop_set(property::CC, cc::ENABLE_DEFAULT as u64).await.status(), Status::SUCCESS);
        wait_rdy(&mut a, true).await;
    }
    server.stop().await;
}

/// After a CC.EN 1 to 0: wait for the reset to read done (CSTS.RDY 0), enable the controller again and wait for
/// it to be ready.
async fn reset_done_then_enable(a: &mut Conn) {
    wait_rdy(a, false).await;
    assert_eq!(a.prop_set(property::CC, cc::ENABLE_DEFAULT as u64).await.status(), Status::SUCCESS);
    wait_rdy(a, true).await;
}

/// Read `q` until the target closes it (within 5 s); false if it sent a PDU first.
async fn closed_by_target(q: &mut Conn) -> bool {
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), q.s.read_to_end(&mut rest)).await;
    matches!(r, Ok(Ok(_)) | Ok(Err(_))) && rest.is_empty() && q.buf.is_empty()
}

/// A Controller Level Reset (CC.EN 1 to 0) deletes the I/O queues (NVMe Base 2.0 §3.7.2): the target closes
/// their connections, a write that was waiting for its data (R2T sent) never lands even if the data comes
/// after the reset, and once CSTS.RDY reads 0 the host connects I/O queue 1 afresh on the re-enabled
/// controller and reads the block unchanged. (Linux nvmet keeps the I/O queues and would take the data.)
#[tokio::test]
async fn a_controller_reset_closes_the_io_queues_and_a_write_waiting_for_data_never_lands() {
    let (server, addr) = start("").await;
    let (mut a, cntlid) = Conn::admin(addr, NQN, false, false).await;
    let mut q = Conn::io(addr, &mut a, cntlid, false, false).await;
    let cid = q.next_cid();
    let mut sqe = rw_sqe(io::WRITE, 0, 1, SglDescriptor::transport(512));
    sqe.cid.set(cid);
    q.send(Pdu::CapsuleCmd(CapsuleCmd { sqe, data: Bytes::new() })).await;
    let Pdu::R2T(r2t) = q.recv().await else { panic!("expected an R2T") };
    assert_eq!(a.prop_set(property::CC, 0).await.status(), Status::SUCCESS);
    // The data arrives after the reset (written into a socket the target may already have closed).
    let h2c = H2CData { cccid: cid, ttag: r2t.ttag, datao: 0, data: Bytes::from(vec![9u8; 512]), last: true };
    let _ = q.s.write_all(&Pdu::H2CData(h2c).to_bytes(&q.f)).await;
    assert!(closed_by_target(&mut q).await, "the reset left the I/O queue's connection open");
    reset_done_then_enable(&mut a).await;
    let mut q2 = Conn::io(addr, &mut a, cntlid, false, false).await;
    assert_block0_zero(&mut q2, "a write of the I/O queue the reset deleted landed").await;
    server.stop().await;
}

/// CSTS.RDY reads 0 after a reset only once the deleted I/O queues' commands are off the media: here a write
/// held 500 ms before the media keeps RDY at 1 meanwhile, and it never lands (its queue's gate was fenced),
/// so that nothing of the old queues lands after the host has seen the reset done.
#[tokio::test]
async fn a_controller_reset_reads_done_only_once_the_io_queues_writes_are_off_the_media() {
    let (server, addr, mut a, cntlid, mut q) = association_with_a_held_write(500).await;
    assert_eq!(a.prop_set(property::CC, 0).await.status(), Status::SUCCESS);
    let csts_now = a.prop_get(property::CSTS, false).await.dw0.get();
    assert_ne!(csts_now & csts::RDY, 0, "CSTS.RDY read 0 while a write of a deleted I/O queue was still held");
    assert!(closed_by_target(&mut q).await, "the reset left the I/O queue's connection open");
    wait_rdy(&mut a, false).await;
    let subsys = server.target.subsystem(NQN).unwrap();
    assert_eq!(subsys.dead_inflight(HOSTNQN, &HOSTID), 0, "RDY read 0 with the write still in flight");
    reset_done_then_enable(&mut a).await;
    let mut q2 = Conn::io(addr, &mut a, cntlid, false, false).await;
    assert_block0_zero(&mut q2, "a write of the I/O queue the reset deleted landed").await;
    server.stop().await;
}

/// A Controller Level Reset ends the Asynchronous Event Requests held before it without a completion: the
/// host posts new ones after enabling the controller again, and the next event completes one of those, not
/// one the host gave up with the reset (whose CID it may have given to another command since).
#[tokio::test]
async fn a_controller_reset_ends_the_held_event_requests_without_completing_them() {
    let (server, addr) = start("").await;
    let (mut d, _) = Conn::admin(addr, fabrics::DISCOVERY_NQN, false, false).await;
    let before = d.post_aer().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert_eq!(d.prop_set(property::CC, 0).await.status(), Status::SUCCESS);
    reset_done_then_enable(&mut d).await;
    let after = d.post_aer().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut cfg = ports_config(&[(1, "127.0.0.1:0")]);
    cfg.subsystems[0].policy.ctrl_loss_tmo_ms = 123_000;
    server.target.reload(&cfg).unwrap();
    let Pdu::CapsuleResp(r) = d.recv().await else { panic!("expected a completion") };
    assert_eq!(r.cqe.cid(), after, "the event completed the request held before the reset ({before})");
    let more = tokio::time::timeout(Duration::from_millis(300), d.recv()).await;
    assert!(more.is_err(), "a second completion: {more:?}");
    server.stop().await;
}

/// A Dataset Management deallocation over gigabytes of a RAM namespace runs off the connection's task: it
/// visits every 128 KiB chunk of its ranges (here 64 ranges over 64 GiB, 33 million chunks), and on this
/// current-thread runtime everything else (other connections, keep-alive timers, this test's own timer) would
/// wait for it. The test's 20 ms sleep, taken while the deallocation runs, must not last as long as it.
#[tokio::test]
async fn a_huge_deallocation_does_not_stall_the_runtime() {
    let (server, addr) = start_ns("", TargetSettings::default(), 65536, 4096).await;
    // No keep-alive timer: nothing is sent while the deallocation runs, which takes longer than a KATO of 5 s
    // on a loaded machine (the association was torn down under it).
    let (mut a, cntlid) = Conn::admin_kato(addr, NQN, false, false, 0).await;
    let mut q = Conn::io(addr, &mut a, cntlid, false, false).await;
    let ranges = 64usize;
    let whole = holdfast_proto::sqe::dsm::Range { cattr: 0, nlb: (65536u32 << 8), slba: 0 };
    let data: Vec<u8> = (0..ranges).flat_map(|_| whole.encode()).collect();
    let mut sqe = SubmissionEntry::new(io::DATASET_MANAGEMENT, 0);
    sqe.nsid.set(1);
    sqe.dptr = SglDescriptor::incapsule(data.len() as u32);
    sqe.cdw10.set(ranges as u32 - 1);
    sqe.cdw11.set(holdfast_proto::sqe::dsm::AD);
    let cid = q.next_cid();
    sqe.cid.set(cid);
    let t0 = std::time::Instant::now();
    q.send(Pdu::CapsuleCmd(CapsuleCmd { sqe, data: Bytes::from(data) })).await;
    let s0 = std::time::Instant::now();
    tokio::time::sleep(Duration::from_millis(20)).await;
    let slept = s0.elapsed();
    // The deallocation's own length is no part of the check (only the sleep's, against it): seconds in a
    // debug build, more than recv's 5 s on a loaded machine.
    let (r, _) = q.finish_within(cid, Duration::from_secs(120)).await;
    let took = t0.elapsed();
    assert_eq!(r.status(), Status::SUCCESS);
    assert!(
        slept < took / 2,
        "a 20 ms sleep took {slept:?} while a {took:?} deallocation ran: the deallocation held the runtime"
    );
    server.stop().await;
}

/// An I/O queue exists from its Connect until its connection ends: a second Connect for the same queue ID on
/// another connection is refused (Command Sequence Error, as Linux's nvmet answers), and the ID is free
/// again once the first connection has closed.
#[tokio::test]
async fn a_second_connect_for_a_live_io_queue_id_is_refused() {
    let (server, addr) = start("").await;
    let (mut a, cntlid) = Conn::admin(addr, NQN, false, false).await;
    let q = Conn::io(addr, &mut a, cntlid, false, false).await;
    let mut dup = Conn::ic(addr, false, false).await;
    let r = dup.connect(1, cntlid, NQN, 0).await;
    assert_eq!(r.status(), Status::COMMAND_SEQUENCE_ERROR.with_dnr(), "a second queue 1");
    drop(q);
    connect_queue_1_again(addr, cntlid, "its connection closed").await;
    server.stop().await;
}

/// Connect I/O queue 1 of controller `cntlid` on a fresh connection until the target takes it (within 5 s), once
/// the queue that had it is gone (`after`, for the failure message).
async fn connect_queue_1_again(addr: SocketAddr, cntlid: u16, after: &str) {
    let t0 = std::time::Instant::now();
    loop {
        let mut again = Conn::ic(addr, false, false).await;
        if again.connect(1, cntlid, NQN, 0).await.status() == Status::SUCCESS {
            return;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "queue 1 stayed taken after {after}");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Fence Association (holdfast's vendor admin command C1h, README, No stale writes): a host whose old association the target
/// still takes for alive (it noticed a partition first and reconnected) ends it from its new one. The old
/// association's write still waiting for the media is dropped, and the command reports it in flight until it
/// is gone; a host may not fence its own controller.
#[tokio::test]
async fn fence_association_ends_the_hosts_old_association_and_reports_its_drain() {
    let (server, addr, mut old_admin, old, old_q) = association_with_a_held_write(300).await;
    // The same host's new association: admitted, since the old one is still alive.
    let (mut a, new) = Conn::admin(addr, NQN, false, false).await;
    // The old controller's uniquifier, from its Identify Controller (vendor-specific area).
    let u = old_admin.identify_controller().await.holdfast_uniquifier().expect("a uniquifier in Identify Controller");
    let fence = |cntlid: u16, u: u64| {
        let mut s = SubmissionEntry::new(admin::HOLDFAST_FENCE_ASSOCIATION, 0);
        s.cdw10.set(cntlid as u32);
        s.cdw11.set(u as u32);
        s.cdw12.set((u >> 32) as u32);
        s
    };
    let own = a.identify_controller().await;
    let (r, _) = a.cmd(fence(new, own.holdfast_uniquifier().unwrap()), Bytes::new()).await;
    assert_eq!(r.status(), Status::INVALID_FIELD.with_dnr(), "its own controller");
    assert_ne!(own.holdfast_uniquifier(), Some(u), "two controllers, two uniquifiers");
    // Another uniquifier names another controller (a later one with that CNTLID): nothing is ended.
    let (r, _) = a.cmd(fence(old, u ^ 2), Bytes::new()).await;
    assert_eq!((r.status(), r.dw0.get()), (Status::SUCCESS, 0));
    let subsys = server.target.subsystem(NQN).unwrap();
    assert!(subsys.controller(old).is_some(), "a fence with the wrong uniquifier ended the controller");
    let (r, _) = a.cmd(fence(old, u), Bytes::new()).await;
    assert_eq!(r.status(), Status::SUCCESS);
    assert!(r.dw0.get() >= 1, "the old write is in flight");
    assert!(subsys.controller(old).is_none(), "the old association was ended");
    let t0 = std::time::Instant::now();
    loop {
        let (r, _) = a.cmd(fence(old, u), Bytes::new()).await;
        assert_eq!(r.status(), Status::SUCCESS);
        if r.dw0.get() == 0 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(5), "the old association never drained");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let mut q = Conn::io(addr, &mut a, new, false, false).await;
    assert_block0_zero(&mut q, "the old association's write landed after the fence").await;
    drop((old_admin, old_q));
    server.stop().await;
}

#[tokio::test]
async fn discovery_log_lists_subsystem_and_discovery_entries() {
    let (server, addr) = start("").await;
    let (mut c, _) = Conn::admin(addr, fabrics::DISCOVERY_NQN, false, false).await;
    // CAP as an I/O controller's (the Linux host warns at every discovery when MQES is below its 128).
    assert_eq!(fabrics::cap::mqes(c.prop_get(property::CAP, true).await.result64()), 1023, "discovery CAP.MQES");
    let mut s = SubmissionEntry::new(admin::GET_LOG_PAGE, 0);
    s.dptr = SglDescriptor::transport(3072);
    holdfast_proto::sqe::get_log_page::set(&mut s, 0x70, 0, 3072, 0);
    let (r, d) = c.cmd(s, Bytes::new()).await;
    assert_eq!(r.status(), Status::SUCCESS);
    assert_eq!(u64::from_le_bytes(d[8..16].try_into().unwrap()), 2, "NUMREC");
    let e = &d[1024..2048];
    assert_eq!((e[0], e[1], e[2]), (3, 1, 2), "TCP, IPv4, NVM subsystem");
    assert_eq!(&e[256..256 + NQN.len()], NQN.as_bytes());
    assert_eq!(&e[512..521], b"127.0.0.1");
    assert_eq!(&e[32..32 + addr.port().to_string().len()], addr.port().to_string().as_bytes());
    assert_eq!(d[2048 + 2], 3, "current discovery subsystem entry");
    assert_eq!(u16::from_le_bytes([d[2048 + 10], d[2048 + 11]]), 3, "EFLAGS: DUPRETINFO and EPCSD");
    assert_eq!(u16::from_le_bytes([e[10], e[11]]), 0, "EFLAGS of an NVM subsystem entry");
    server.stop().await;
}

/// A port's discovery entry says DUPRETINFO (its discovery controller returns this same log: nvme-cli's
/// connect-all skips it) only where that holds. Two ports give a host the same log until a referral is listed
/// to port 2's hosts only: then each port's log marks only its own entry (found by a review: every port's entry
/// said it, so a host starting at port 1 never read port 2's log nor followed its referral).
#[tokio::test]
async fn dupretinfo_only_for_ports_whose_log_is_the_same() {
    use holdfast_proto::log_page::{parse_discovery_log, EFLAGS_DUPRETINFO, SUBTYPE_CURRENT_DISCOVERY};
    let cfg = |referral: &str| {
        let text = format!(
            "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n[[port]]\nid = 2\nlisten = \"127.0.0.1:0\"\n\
             [[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n{referral}"
        );
        Config::parse(&text, "t").unwrap()
    };
    let mut server = Server::start(Target::new(&cfg(""), TargetSettings::default()).unwrap()).await.unwrap();
    let mut disc = Vec::new();
    for id in [1u16, 2] {
        let addr = server.bound.iter().find(|b| b.0 == id).unwrap().1;
        disc.push(Conn::admin(addr, fabrics::DISCOVERY_NQN, false, false).await.0);
    }
    // Per port asked through: (port of each SUBTYPE 3 entry, DUPRETINFO), and how many entries.
    async fn dup_flags(c: &mut Conn) -> (Vec<(u16, bool)>, usize) {
        let mut s = SubmissionEntry::new(admin::GET_LOG_PAGE, 0);
        s.dptr = SglDescriptor::transport(8192);
        holdfast_proto::sqe::get_log_page::set(&mut s, 0x70, 0, 8192, 0);
        let (r, log) = c.cmd(s, Bytes::new()).await;
        assert_eq!(r.status(), Status::SUCCESS);
        let entries = parse_discovery_log(&log).unwrap().1;
        let flags = entries
            .iter()
            .filter(|e| e.subtype == SUBTYPE_CURRENT_DISCOVERY)
            .map(|e| (e.portid.get(), e.eflags.get() & EFLAGS_DUPRETINFO != 0))
            .collect();
        (flags, entries.len())
    }
    for c in &mut disc {
        assert_eq!(dup_flags(c).await, (vec![(1, true), (2, true)], 4), "the same log through either port");
    }
    server.reload(&cfg("[[referral]]\naddress = \"192.0.2.7:8009\"\nportid = 3\nports = [2]\n")).await.unwrap();
    assert_eq!(dup_flags(&mut disc[0]).await, (vec![(1, true), (2, false)], 4), "port 1: port 2 lists a referral more");
    assert_eq!(dup_flags(&mut disc[1]).await, (vec![(1, false), (2, true)], 5), "port 2: port 1 lists one less");
    server.stop().await;
}

#[tokio::test]
async fn namespace_change_completes_the_aer_and_discovery_sees_a_new_genctr() {
    let (server, addr) = start("").await;
    let (mut a, _) = Conn::admin(addr, NQN, false, false).await;
    // Enable namespace attribute notices, post an AER.
    a.set_feature(0x0B, 1 << 8).await;
    let aer_cid = a.post_aer().await;
    // A discovery controller with discovery-change notices and an AER.
    let (mut d, _) = Conn::admin(addr, fabrics::DISCOVERY_NQN, false, false).await;
    d.set_feature(0x0B, 1 << 31).await;
    let daer = d.post_aer().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let genctr = server.target.genctr.load(std::sync::atomic::Ordering::SeqCst);
    // Reload: namespace 2 added, a second subsystem added.
    let cfg = Config::parse(
        &format!(
            r#"
[[port]]
id = 1
listen = "127.0.0.1:0"
[[subsystem]]
nqn = "{NQN}"
allow_any_host = true
[[subsystem.namespace]]
nsid = 1
backend = "ram"
size_mib = 4
[[subsystem.namespace]]
nsid = 2
backend = "ram"
size_mib = 8
[[subsystem]]
nqn = "{NQN}-2"
allow_any_host = true
"#
        ),
        "reload",
    )
    .unwrap();
    let summary = server.target.reload(&cfg).unwrap();
    assert_eq!(summary.genctr, genctr + 1);
    let (r, _) = a.finish(aer_cid).await;
    assert_eq!(r.dw0.get(), 0x0004_0002, "notice / namespace attribute changed / log page 04h");
    // A read that fails (an offset past the page) changes nothing: the list is still there after it.
    let mut s = SubmissionEntry::new(admin::GET_LOG_PAGE, 0);
    s.dptr = SglDescriptor::transport(4);
    holdfast_proto::sqe::get_log_page::set(&mut s, 0x04, 0, 4, 4100);
    assert_eq!(a.cmd(s, Bytes::new()).await.0.status(), Status::INVALID_FIELD.with_dnr(), "offset past the page");
    let mut s = SubmissionEntry::new(admin::GET_LOG_PAGE, 0);
    s.dptr = SglDescriptor::transport(4096);
    holdfast_proto::sqe::get_log_page::set(&mut s, 0x04, 0, 4096, 0);
    s.cdw10.set(s.cdw10.get() | 1 << 15); // RAE: the event stays masked, the list is read all the same
    let (r, list) = a.cmd(s, Bytes::new()).await;
    assert_eq!(r.status(), Status::SUCCESS);
    assert_eq!(&list[..8], &[2, 0, 0, 0, 0, 0, 0, 0], "changed namespace list holds nsid 2");
    // That read took it, RAE or not (the list is of the changes since it was last read; Linux nvmet alike).
    let (r, list) = a.cmd(s, Bytes::new()).await;
    assert_eq!((r.status(), &list[..4]), (Status::SUCCESS, &[0u8; 4][..]), "read once, then empty");
    let (r, _) = d.finish(daer).await;
    assert_eq!(r.dw0.get(), 0x0070_F002, "notice / discovery log page change / log page 70h");
    server.stop().await;
}

/// Asymmetric Namespace Access: each port gives each ANA group a state; Identify says ANA is reported and
/// which group a namespace is in; the log page (LID 0Ch) gives the states through the port asked on; a command
/// that uses a namespace of a group not accessible through the port fails with the state's path error (no
/// DNR); a reload that changes a state (or moves a namespace between groups) sends an ANA Change notice to the
/// controllers it concerns, and none to the others.
#[tokio::test]
async fn ana_states_are_per_port_gate_io_and_a_reload_sends_an_ana_change_notice() {
    use holdfast_proto::log_page::{AnaLog, AnaState};
    let config = |port1: &str, port2: &str, ns2_group: u32| {
        let text = format!(
            r#"
[[port]]
id = 1
listen = "127.0.0.1:0"
{port1}
[[port]]
id = 2
listen = "127.0.0.1:0"
{port2}
[[subsystem]]
nqn = "{NQN}"
allow_any_host = true
[[subsystem.namespace]]
nsid = 1
backend = "ram"
size_mib = 4
[[subsystem.namespace]]
nsid = 2
backend = "ram"
size_mib = 4
ana_group = {ns2_group}
"#
        );
        Config::parse(&text, "test").unwrap()
    };
    let cfg = config("ana_groups = { \"2\" = \"non-optimized\" }", "ana_state = \"inaccessible\"", 2);
    let server = Server::start(Target::new(&cfg, TargetSettings::default()).unwrap()).await.unwrap();
    let (p1, p2) = (server.bound[0].1, server.bound[1].1);
    let ana_log = |rgo: bool| {
        let mut s = SubmissionEntry::new(admin::GET_LOG_PAGE, 0);
        s.dptr = SglDescriptor::transport(4096);
        holdfast_proto::sqe::get_log_page::set(&mut s, 0x0C, rgo as u8, 4096, 0);
        s
    };
    let states = |page: &[u8]| {
        let log = AnaLog::parse(page).unwrap();
        log.groups.iter().map(|g| (g.anagrpid, g.state, g.nsids.clone())).collect::<Vec<_>>()
    };

    let (mut a1, c1) = Conn::admin(p1, NQN, false, false).await;
    let id = a1.identify_controller().await;
    assert_eq!(id.cmic & holdfast_proto::identify::CMIC_ANA, holdfast_proto::identify::CMIC_ANA);
    assert_eq!(id.oaes.get() & holdfast_proto::identify::OAES_ANA_CHANGE, holdfast_proto::identify::OAES_ANA_CHANGE);
    assert_eq!((id.anatt, id.anacap, id.anagrpmax.get(), id.nanagrpid.get()), (10, 0x1F, 128, 128));
    assert!(id.mnan.get() != 0 && id.mnan.get() <= id.nn.get(), "the Linux host refuses MNAN 0 or above NN");
    let mut s = SubmissionEntry::new(admin::IDENTIFY, 0);
    s.dptr = SglDescriptor::transport(4096);
    s.nsid.set(2);
    let (r, ns) = a1.cmd(s, Bytes::new()).await;
    assert_eq!(r.status(), Status::SUCCESS);
    assert_eq!(&ns[92..96], &2u32.to_le_bytes(), "ANAGRPID of nsid 2");

    let (r, page) = a1.cmd(ana_log(false), Bytes::new()).await;
    assert_eq!(r.status(), Status::SUCCESS);
    assert_eq!(states(&page), vec![(1, AnaState::Optimized, vec![1]), (2, AnaState::NonOptimized, vec![2])]);
    let (_, page) = a1.cmd(ana_log(true), Bytes::new()).await;
    assert_eq!(states(&page), vec![(1, AnaState::Optimized, vec![]), (2, AnaState::NonOptimized, vec![])], "RGO");
    let mut q1 = Conn::io(p1, &mut a1, c1, false, false).await;
    for nsid in [1, 2] {
        let mut s = rw_sqe(io::READ, 0, 1, SglDescriptor::transport(512));
        s.nsid.set(nsid);
        assert_eq!(q1.cmd(s, Bytes::new()).await.0.status(), Status::SUCCESS, "nsid {nsid} through port 1");
    }

    // Through port 2 every group is inaccessible: reads and writes fail with the path error, without DNR.
    let (mut a2, c2) = Conn::admin(p2, NQN, false, false).await;
    let (_, page) = a2.cmd(ana_log(false), Bytes::new()).await;
    assert_eq!(states(&page), vec![(1, AnaState::Inaccessible, vec![1]), (2, AnaState::Inaccessible, vec![2])]);
    let mut q2 = Conn::io(p2, &mut a2, c2, false, false).await;
    let (r, _) = q2.cmd(rw_sqe(io::READ, 0, 1, SglDescriptor::transport(512)), Bytes::new()).await;
    assert_eq!(r.status(), Status::ANA_INACCESSIBLE);
    let w = rw_sqe(io::WRITE, 0, 1, SglDescriptor::incapsule(512));
    assert_eq!(q2.cmd(w, Bytes::from(vec![7u8; 512])).await.0.status(), Status::ANA_INACCESSIBLE);
    let mut s = SubmissionEntry::new(io::FLUSH, 0);
    s.nsid.set(0xFFFF_FFFF);
    assert_eq!(
        q2.cmd(s, Bytes::new()).await.0.status(),
        Status::SUCCESS,
        "a broadcast flush skips what it cannot reach"
    );

    // Both controllers want ANA notices; a reload makes group 1 change through port 2 only.
    a1.set_feature(0x0B, 1 << 11).await;
    a2.set_feature(0x0B, 1 << 11).await;
    let (aer1, aer2) = (a1.post_aer().await, a2.post_aer().await);
    tokio::time::sleep(Duration::from_millis(50)).await;
    let summary = server
        .target
        .reload(&config("ana_groups = { \"2\" = \"non-optimized\" }", "ana_groups = { \"1\" = \"change\" }", 2))
        .unwrap();
    assert!(
        summary
            .notes
            .iter()
            .any(|n| n.starts_with("port 2: ANA group 1 inaccessible -> change, group 2 inaccessible -> optimized")),
        "{:?}",
        summary.notes
    );
    let (r, _) = a2.finish(aer2).await;
    assert_eq!(r.dw0.get(), 0x000C_0302, "notice / ANA change / log page 0Ch");
    let (r, _) = q2.cmd(rw_sqe(io::READ, 0, 1, SglDescriptor::transport(512)), Bytes::new()).await;
    assert_eq!(r.status(), Status::ANA_TRANSITION, "group 1 in change");
    let mut s = rw_sqe(io::READ, 0, 1, SglDescriptor::transport(512));
    s.nsid.set(2);
    assert_eq!(q2.cmd(s, Bytes::new()).await.0.status(), Status::SUCCESS, "group 2 now optimized through port 2");
    let (_, page) = a2.cmd(ana_log(false), Bytes::new()).await;
    assert_eq!(states(&page), vec![(1, AnaState::Change, vec![1]), (2, AnaState::Optimized, vec![2])]);
    // Port 1 changed nothing: its controller's AER is still held (a Keep Alive answered first shows it).
    assert_eq!(a1.keep_alive().await, Status::SUCCESS);

    // Moving nsid 2 into group 1 concerns every controller of the subsystem.
    let summary = server
        .target
        .reload(&config("ana_groups = { \"2\" = \"non-optimized\" }", "ana_groups = { \"1\" = \"change\" }", 1))
        .unwrap();
    assert!(summary.notes.iter().any(|n| n == &format!("{NQN} nsid 2: ANA group 2 -> 1")), "{:?}", summary.notes);
    let (r, _) = a1.finish(aer1).await;
    assert_eq!(r.dw0.get(), 0x000C_0302);
    let (_, page) = a1.cmd(ana_log(false), Bytes::new()).await;
    let log = AnaLog::parse(&page).unwrap();
    assert_eq!(states(&page), vec![(1, AnaState::Optimized, vec![1, 2])]);
    assert!(log.chgcnt > 1, "the change count moved");
    // The page is as long as Identify lets a host compute (16 + NANAGRPID x 32 + MNAN x 4 = 8208 bytes), zeroes
    // after the descriptors: libnvme reads it 4 KiB at a time (`nvme ana-log` failed with Invalid Field at the
    // second piece when the page ended with its descriptors).
    let piece = |offset: u64, len: u32| {
        let mut s = SubmissionEntry::new(admin::GET_LOG_PAGE, 0);
        s.dptr = SglDescriptor::transport(len);
        holdfast_proto::sqe::get_log_page::set(&mut s, 0x0C, 0, len, offset);
        s
    };
    let mut whole = page.clone();
    for (offset, len) in [(4096, 4096), (8192, 16)] {
        let (r, d) = a1.cmd(piece(offset, len), Bytes::new()).await;
        assert_eq!((r.status(), d.len()), (Status::SUCCESS, len as usize), "offset {offset}");
        whole.extend_from_slice(&d);
    }
    assert_eq!(whole.len(), 8208);
    assert!(whole[16 + 32 + 8..].iter().all(|&b| b == 0), "zeroes after the descriptor");
    let (r, _) = a1.cmd(piece(8212, 4), Bytes::new()).await;
    assert_eq!(r.status(), Status::INVALID_FIELD.with_dnr(), "an offset past the page");
    server.stop().await;
}

/// A reservation command (Register, Acquire, Release) on `nsid` with its keys in the capsule.
fn resv_cmd(op: u8, nsid: u32, cdw10: u32, keys: &[u8]) -> (SubmissionEntry, Bytes) {
    let mut s = SubmissionEntry::new(op, 0);
    s.nsid.set(nsid);
    s.cdw10.set(cdw10);
    s.dptr = SglDescriptor::incapsule(keys.len() as u32);
    (s, Bytes::copy_from_slice(keys))
}

/// A Reservation Report of namespace 1 asking for `len` bytes, with the extended structure or not.
fn resv_report(len: u32, eds: bool) -> SubmissionEntry {
    let mut s = SubmissionEntry::new(io::RESERVATION_REPORT, 0);
    s.nsid.set(1);
    s.cdw10.set(len / 4 - 1);
    s.cdw11.set(eds as u32);
    s.dptr = SglDescriptor::transport(len);
    s
}

/// Admin and I/O queue 1 of host `hostid`.
async fn host_queues(addr: SocketAddr, hostid: [u8; 16], hostnqn: &str) -> (Conn, Conn) {
    use zerocopy::IntoBytes;
    let connect = |qid: u16, cntlid: u16| {
        let c = ConnectCommand::new(0, qid, if qid == 0 { 31 } else { 127 }, if qid == 0 { 5000 } else { 0 });
        (c.to_sqe(), Bytes::copy_from_slice(ConnectData::new(hostid, cntlid, NQN, hostnqn).as_bytes()))
    };
    let mut a = Conn::ic(addr, false, false).await;
    let (s, d) = connect(0, 0xFFFF);
    let r = a.cmd(s, d).await.0;
    assert_eq!(r.status(), Status::SUCCESS);
    let cntlid = r.dw0.get() as u16;
    assert_eq!(a.prop_set(property::CC, cc::ENABLE_DEFAULT as u64).await.status(), Status::SUCCESS);
    let mut s = SubmissionEntry::new(admin::SET_FEATURES, 0);
    s.cdw10.set(0x07);
    s.cdw11.set(0x0001_0001);
    assert_eq!(a.cmd(s, Bytes::new()).await.0.status(), Status::SUCCESS);
    let mut q = Conn::ic(addr, false, false).await;
    let (s, d) = connect(1, cntlid);
    assert_eq!(q.cmd(s, d).await.0.status(), Status::SUCCESS);
    (a, q)
}

/// A reload that replaces a namespace under the same identifiers (a file namespace grown, here from 4 to 8
/// MiB) keeps its registrations and reservation: the hosts' fencing goes on, the other host's writes still
/// refused. It used to start the new namespace with none, silently: a fenced host could write again once the
/// operator grew the volume. A namespace with other identifiers (a new UUID: another namespace to hosts)
/// starts with none.
#[tokio::test]
async fn a_reload_that_grows_a_namespace_keeps_its_reservations() {
    use holdfast_proto::reservation::{ReservationKeys, ReservationReport, ReservationType};
    use zerocopy::IntoBytes;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("vol.img");
    let img2 = dir.path().join("vol2.img");
    let cfg_at = |path: &std::path::Path, size_mib: u32, uuid: &str| {
        let text = format!(
            "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n\
             [[subsystem.namespace]]\nnsid = 1\nbackend = \"file\"\npath = \"{}\"\nsize_mib = {size_mib}\n{uuid}",
            path.display()
        );
        Config::parse(&text, "test").unwrap()
    };
    let cfg = |size_mib: u32, uuid: &str| cfg_at(&img, size_mib, uuid);
    let server = Server::start(Target::new(&cfg(4, ""), TargetSettings::default()).unwrap()).await.unwrap();
    let pr_of = || server.target.subsystem(NQN).unwrap().namespace(1).unwrap().pr.clone();
    let addr = server.bound[0].1;
    let (mut a, mut qa) = host_queues(addr, HOSTID, HOSTNQN).await;
    let (_b, mut qb) =
        host_queues(addr, [0x22; 16], "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000002").await;
    let keys = |c: u64, o: u64| ReservationKeys::new(c, o).as_bytes().to_vec();
    let (s, d) = resv_cmd(io::RESERVATION_REGISTER, 1, 0, &keys(0, 0xA1));
    assert_eq!(qa.cmd(s, d).await.0.status(), Status::SUCCESS);
    let (s, d) = resv_cmd(io::RESERVATION_ACQUIRE, 1, 1 << 8, &keys(0xA1, 0));
    assert_eq!(qa.cmd(s, d).await.0.status(), Status::SUCCESS);
    let write = || rw_sqe(io::WRITE, 3, 1, SglDescriptor::incapsule(512));
    let data = || Bytes::from(vec![0x5Au8; 512]);
    assert_eq!(qb.cmd(write(), data()).await.0.status(), Status::RESERVATION_CONFLICT.with_dnr());

    let before = pr_of();
    let notes = server.target.reload(&cfg(8, "")).unwrap().notes;
    // Shared, not copied: a reservation command still in flight on the namespace replaced changes what the
    // new one checks (a copy taken at the reload would have lost it).
    assert!(std::sync::Arc::ptr_eq(&before, &pr_of()), "the reservations are the same ones");
    assert!(
        notes.iter().any(|n| n.contains("reservations kept: 1 registrant(s), Write Exclusive held by host")),
        "{notes:?}"
    );
    let (r, page) = qa.cmd(resv_report(4096, true), Bytes::new()).await;
    assert_eq!(r.status(), Status::SUCCESS);
    let rep = ReservationReport::parse(&page).unwrap();
    assert_eq!((rep.rtype, rep.registrants.len()), (Some(ReservationType::WriteExclusive), 1), "after the reload");
    assert_eq!(qb.cmd(write(), data()).await.0.status(), Status::RESERVATION_CONFLICT.with_dnr(), "still fenced");
    assert_eq!(qa.cmd(write(), data()).await.0.status(), Status::SUCCESS, "the holder writes");

    // Persist Through Power Loss on, then the namespace moved to another file: the record moves with it (the
    // old one removed, so that neither a restart nor a move back finds it stale).
    let mut ptpl = SubmissionEntry::new(admin::SET_FEATURES, 0);
    ptpl.nsid.set(1);
    ptpl.cdw10.set(0x83);
    ptpl.cdw11.set(1);
    assert_eq!(a.cmd(ptpl, Bytes::new()).await.0.status(), Status::SUCCESS);
    let record = |p: &std::path::Path| {
        let mut n = p.as_os_str().to_owned();
        n.push(".holdfast-pr");
        std::path::PathBuf::from(n)
    };
    assert!(record(&img).exists());
    std::fs::copy(&img, &img2).unwrap();
    server.target.reload(&cfg_at(&img2, 8, "")).unwrap();
    assert!(!record(&img).exists() && record(&img2).exists(), "the record moved with the namespace");
    assert_eq!(qb.cmd(write(), data()).await.0.status(), Status::RESERVATION_CONFLICT.with_dnr(), "still fenced");
    let text = std::fs::read_to_string(record(&img2)).unwrap();
    assert!(text.contains("reservation_type = 1"), "{text}");

    // Other identifiers: another namespace, which starts with no reservation.
    server.target.reload(&cfg(8, "uuid = \"5a1e3c9d-0b7f-4c2a-9e8d-1f2a3b4c5d6e\"\n")).unwrap();
    let rep = ReservationReport::parse(&qa.cmd(resv_report(4096, true), Bytes::new()).await.1).unwrap();
    assert_eq!((rep.rtype, rep.registrants.len()), (None, 0), "a new namespace");
    server.stop().await;
}

/// The discovery controller's policy page is that of a subsystem its discovery log lists through the port
/// asked: one exported on another port only is not (it was the alphabetically first subsystem the host may
/// use, wherever it was exported, so a host discovering port 1 was given port 2's subsystem's KATO).
#[tokio::test]
async fn the_discovery_policy_page_is_of_a_subsystem_on_this_port() {
    let text = format!(
        "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n[[port]]\nid = 2\nlisten = \"127.0.0.1:0\"\n\
         [[subsystem]]\nnqn = \"{NQN}-a\"\nallow_any_host = true\nports = [2]\n[subsystem.policy]\nkato_ms = 6000\n\
         [[subsystem]]\nnqn = \"{NQN}-b\"\nallow_any_host = true\nports = [1]\n[subsystem.policy]\nkato_ms = 9000\n"
    );
    let cfg = Config::parse(&text, "test").unwrap();
    let server = Server::start(Target::new(&cfg, TargetSettings::default()).unwrap()).await.unwrap();
    for (port, kato) in [(0, 9000), (1, 6000)] {
        let (mut d, _) = Conn::admin(server.bound[port].1, fabrics::DISCOVERY_NQN, false, false).await;
        let mut s = SubmissionEntry::new(admin::GET_LOG_PAGE, 0);
        s.dptr = SglDescriptor::transport(512);
        holdfast_proto::sqe::get_log_page::set(&mut s, holdfast_proto::policy::LID_HOLDFAST_POLICY, 0, 512, 0);
        let (r, page) = d.cmd(s, Bytes::new()).await;
        assert_eq!(r.status(), Status::SUCCESS);
        let p = holdfast_proto::policy::ConnectionPolicy::from_bytes(&page).unwrap();
        assert_eq!(p.kato_ms, kato, "port {}", server.bound[port].0);
    }
    server.stop().await;
}

/// Reservations between two hosts (two Host Identifiers): registration, a Write Exclusive reservation that
/// keeps the other host's writes out but not its reads, a report with both registrants in the extended
/// structure, preemption, release, clear; a report without EDS is Host Identifier Inconsistent Format.
#[tokio::test]
async fn reservations_are_kept_per_host_and_checked_on_every_io() {
    use holdfast_proto::reservation::{ReservationKeys, ReservationReport, ReservationType};
    use zerocopy::IntoBytes;
    let (server, addr) = start("").await;
    let (_a1, mut qa) = host_queues(addr, HOSTID, HOSTNQN).await;
    let (_b1, mut qb) =
        host_queues(addr, [0x22; 16], "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000002").await;
    let resv = |op: u8, cdw10: u32, keys: &[u8]| resv_cmd(op, 1, cdw10, keys);
    let keys = |c: u64, o: u64| ReservationKeys::new(c, o).as_bytes().to_vec();
    let write = |slba| rw_sqe(io::WRITE, slba, 1, SglDescriptor::incapsule(512));
    let read = || rw_sqe(io::READ, 0, 1, SglDescriptor::transport(512));
    let report = resv_report;
    let data = || Bytes::from(vec![0x5Au8; 512]);

    // Both register (B twice with the same key: no change); A acquires Write Exclusive.
    let (s, d) = resv(io::RESERVATION_REGISTER, 0, &keys(0, 0xA1));
    assert_eq!(qa.cmd(s, d).await.0.status(), Status::SUCCESS);
    for _ in 0..2 {
        let (s, d) = resv(io::RESERVATION_REGISTER, 0, &keys(0, 0xB1));
        assert_eq!(qb.cmd(s, d).await.0.status(), Status::SUCCESS);
    }
    let (s, d) = resv(io::RESERVATION_ACQUIRE, 1 << 8, &keys(0xA1, 0));
    assert_eq!(qa.cmd(s, d).await.0.status(), Status::SUCCESS);
    // B may read, not write; A writes.
    assert_eq!(qb.cmd(write(3), data()).await.0.status(), Status::RESERVATION_CONFLICT.with_dnr());
    assert_eq!(qb.cmd(read(), Bytes::new()).await.0.status(), Status::SUCCESS);
    assert_eq!(qa.cmd(write(3), data()).await.0.status(), Status::SUCCESS);
    let mut flush = SubmissionEntry::new(io::FLUSH, 0);
    flush.nsid.set(1);
    assert_eq!(qb.cmd(flush, Bytes::new()).await.0.status(), Status::RESERVATION_CONFLICT.with_dnr());
    // B cannot acquire it; the report says who holds what.
    let (s, d) = resv(io::RESERVATION_ACQUIRE, 1 << 8, &keys(0xB1, 0));
    assert_eq!(qb.cmd(s, d).await.0.status(), Status::RESERVATION_CONFLICT.with_dnr());
    assert_eq!(qb.cmd(report(4096, false), Bytes::new()).await.0.status(), Status::HOST_ID_INCONSISTENT.with_dnr());
    let (r, page) = qb.cmd(report(4096, true), Bytes::new()).await;
    assert_eq!(r.status(), Status::SUCCESS);
    let rep = ReservationReport::parse(&page).unwrap();
    assert_eq!((rep.gen, rep.rtype), (3, Some(ReservationType::WriteExclusive)), "three Registers succeeded");
    let regs: Vec<_> = rep.registrants.iter().map(|r| (r.hostid, r.rkey, r.holds)).collect();
    assert_eq!(regs, vec![(HOSTID, 0xA1, true), ([0x22; 16], 0xB1, false)]);
    assert_eq!(&page[64..66], &[0xFF, 0xFF], "CNTLID FFFFh: dynamic controllers");

    // B preempts A by A's key, as Exclusive Access: A is unregistered and may not even read.
    let (s, d) = resv(io::RESERVATION_ACQUIRE, 1 | 2 << 8, &keys(0xB1, 0xA1));
    assert_eq!(qb.cmd(s, d).await.0.status(), Status::SUCCESS);
    assert_eq!(qa.cmd(read(), Bytes::new()).await.0.status(), Status::RESERVATION_CONFLICT.with_dnr());
    let rep = ReservationReport::parse(&qa.cmd(report(128, true), Bytes::new()).await.1).unwrap();
    assert_eq!((rep.gen, rep.registrants.len()), (4, 1));
    // A's old key no longer releases anything; B releases with the wrong type (Invalid Field), then right.
    let (s, d) = resv(io::RESERVATION_RELEASE, 2 << 8, &0xA1u64.to_le_bytes());
    assert_eq!(qa.cmd(s, d).await.0.status(), Status::RESERVATION_CONFLICT.with_dnr());
    let (s, d) = resv(io::RESERVATION_RELEASE, 1 << 8, &0xB1u64.to_le_bytes());
    assert_eq!(qb.cmd(s, d).await.0.status(), Status::INVALID_FIELD.with_dnr());
    let (s, d) = resv(io::RESERVATION_RELEASE, 2 << 8, &0xB1u64.to_le_bytes());
    assert_eq!(qb.cmd(s, d).await.0.status(), Status::SUCCESS);
    assert_eq!(qa.cmd(write(4), data()).await.0.status(), Status::SUCCESS, "no reservation: anyone writes");
    // Clear: every registration goes.
    let (s, d) = resv(io::RESERVATION_RELEASE, 1, &0xB1u64.to_le_bytes());
    assert_eq!(qb.cmd(s, d).await.0.status(), Status::SUCCESS);
    let rep = ReservationReport::parse(&qa.cmd(report(64, true), Bytes::new()).await.1).unwrap();
    assert_eq!((rep.gen, rep.rtype, rep.registrants.len()), (5, None, 0));
    // The controller says it supports them: ONCS bit 5; the namespace, every type and IEKEY (RESCAP).
    let (oncs, rescap) = reservation_support(addr).await;
    assert_eq!((oncs & (1 << 5), rescap), (1 << 5, 0xFE));
    server.stop().await;
}

/// A host that connected without a Host Identifier (0h) changes no reservation (Command Sequence Error): two such
/// hosts were one registrant, so that one wrote under the other's Exclusive Access reservation and replaced its
/// key (found by a review). It may read the report; a host with an identifier registers as before.
#[tokio::test]
async fn a_host_without_a_host_identifier_changes_no_reservation() {
    use holdfast_proto::reservation::{ReservationKeys, ReservationReport};
    use zerocopy::IntoBytes;
    let (server, addr) = start("").await;
    let (_a, mut qa) = host_queues(addr, [0; 16], HOSTNQN).await;
    let (_b, mut qb) =
        host_queues(addr, [0; 16], "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000b2").await;
    let keys = ReservationKeys::new(0, 0xA1);
    let (s, d) = resv_cmd(io::RESERVATION_REGISTER, 1, 0, keys.as_bytes());
    assert_eq!(qa.cmd(s, d).await.0.status(), Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    let (s, d) = resv_cmd(io::RESERVATION_ACQUIRE, 1, 2 << 8, ReservationKeys::new(0xA1, 0).as_bytes());
    assert_eq!(qb.cmd(s, d).await.0.status(), Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    let (r, page) = qb.cmd(resv_report(4096, true), Bytes::new()).await;
    assert_eq!(r.status(), Status::SUCCESS);
    assert!(ReservationReport::parse(&page).unwrap().registrants.is_empty());
    let (_c, mut qc) =
        host_queues(addr, HOSTID, "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-0000000000c3").await;
    let (s, d) = resv_cmd(io::RESERVATION_REGISTER, 1, 0, keys.as_bytes());
    assert_eq!(qc.cmd(s, d).await.0.status(), Status::SUCCESS);
    server.stop().await;
}

/// Preempt and Abort completes only once the preempted host's write in flight has reached the media: a read
/// right after it finds that write's data (never the old data with the write landing later); the preempted
/// host's next write is refused. A plain Preempt does not wait.
#[tokio::test]
async fn preempt_and_abort_waits_for_the_preempted_hosts_writes() {
    use holdfast_proto::reservation::ReservationKeys;
    use zerocopy::IntoBytes;
    let settings = TargetSettings { test_delay_writes: Some(Duration::from_millis(400)), ..Default::default() };
    let (server, addr) = start_with("", settings).await;
    let (_aa, mut qa) = host_queues(addr, HOSTID, HOSTNQN).await;
    let (_ab, mut qb) =
        host_queues(addr, [0x22; 16], "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000002").await;
    let resv = |op: u8, cdw10: u32, keys: &[u8]| resv_cmd(op, 1, cdw10, keys);
    for (q, key) in [(&mut qa, 0xA1u64), (&mut qb, 0xB1)] {
        let (s, d) = resv(io::RESERVATION_REGISTER, 0, ReservationKeys::new(0, key).as_bytes());
        assert_eq!(q.cmd(s, d).await.0.status(), Status::SUCCESS);
    }
    let (s, d) = resv(io::RESERVATION_ACQUIRE, 1 << 8, ReservationKeys::new(0xA1, 0).as_bytes());
    assert_eq!(qa.cmd(s, d).await.0.status(), Status::SUCCESS);
    // A's write goes in and is held 400 ms before the media; B preempts A and aborts.
    let mut w = rw_sqe(io::WRITE, 9, 1, SglDescriptor::incapsule(512));
    w.cid.set(77);
    qa.send(Pdu::CapsuleCmd(CapsuleCmd { sqe: w, data: Bytes::from(vec![0xA5; 512]) })).await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let (s, d) = resv(io::RESERVATION_ACQUIRE, 2 | 1 << 8, ReservationKeys::new(0xB1, 0xA1).as_bytes());
    assert_eq!(qb.cmd(s, d).await.0.status(), Status::SUCCESS);
    let (r, data) = qb.cmd(rw_sqe(io::READ, 9, 1, SglDescriptor::transport(512)), Bytes::new()).await;
    assert_eq!(r.status(), Status::SUCCESS);
    assert!(data.iter().all(|&b| b == 0xA5), "the preempted host's write landed before Preempt and Abort completed");
    assert_eq!(qa.finish(77).await.0.status(), Status::SUCCESS, "it passed the check before the preemption");
    let w = rw_sqe(io::WRITE, 9, 1, SglDescriptor::incapsule(512));
    assert_eq!(qa.cmd(w, Bytes::from(vec![0x11; 512])).await.0.status(), Status::RESERVATION_CONFLICT.with_dnr());
    server.stop().await;
}

/// Persist Through Power Loss on a file namespace: turned on by Register's CPTPL, the registrations and the
/// reservation are in `<file>.holdfast-pr` before the command completes, and a target started again on the
/// file has them (another host's write still conflicts); turned off (Feature 83h), the file goes. A RAM
/// namespace cannot turn it on. A reservation file that is not this namespace's stops the target, naming it.
#[tokio::test]
async fn reservations_persist_through_a_restart_with_ptpl() {
    use holdfast_proto::reservation::{ReservationKeys, ReservationReport, ReservationType};
    use zerocopy::IntoBytes;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("vol.img");
    let text = format!(
        "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n\
         [[subsystem.namespace]]\nnsid = 1\nbackend = \"file\"\npath = \"{}\"\nsize_mib = 4\n\
         [[subsystem.namespace]]\nnsid = 2\nbackend = \"ram\"\nsize_mib = 1\n",
        img.display()
    );
    let cfg = Config::parse(&text, "test").unwrap();
    let resv = resv_cmd;
    let report = || resv_report(4096, true);
    let feature = |op: u8, v: u32| {
        let mut s = SubmissionEntry::new(op, 0);
        s.nsid.set(1);
        s.cdw10.set(0x83);
        s.cdw11.set(v);
        s
    };
    let keys = ReservationKeys::new(0, 0xA1).as_bytes().to_vec();
    let sidecar = dir.path().join("vol.img.holdfast-pr");

    let server = Server::start(Target::new(&cfg, TargetSettings::default()).unwrap()).await.unwrap();
    let addr = server.bound[0].1;
    let (mut a, cntlid) = Conn::admin(addr, NQN, false, false).await;
    let mut q = Conn::io(addr, &mut a, cntlid, false, false).await;
    // RESCAP bit 0 on the file namespace, not on the RAM one, where CPTPL 11b (which the Linux host sets on
    // every Register) registers and leaves PTPL off, as the report says (PTPLS, byte 9).
    for (nsid, rescap) in [(1, 0xFF), (2, 0xFE)] {
        let mut s = SubmissionEntry::new(admin::IDENTIFY, 0);
        s.dptr = SglDescriptor::transport(4096);
        s.nsid.set(nsid);
        assert_eq!(a.cmd(s, Bytes::new()).await.1[31], rescap, "nsid {nsid}");
    }
    let (s, d) = resv(io::RESERVATION_REGISTER, 2, 3 << 30, &keys);
    assert_eq!(q.cmd(s, d).await.0.status(), Status::SUCCESS);
    let mut rep = SubmissionEntry::new(io::RESERVATION_REPORT, 0);
    rep.nsid.set(2);
    rep.cdw10.set(4096 / 4 - 1);
    rep.cdw11.set(1);
    rep.dptr = SglDescriptor::transport(4096);
    let (r, page) = q.cmd(rep, Bytes::new()).await;
    assert_eq!((r.status(), page[9]), (Status::SUCCESS, 0), "PTPLS 0 on the RAM namespace");
    let (s, d) = resv(io::RESERVATION_REGISTER, 1, 3 << 30, &keys);
    assert_eq!(q.cmd(s, d).await.0.status(), Status::SUCCESS);
    let (s, d) = resv(io::RESERVATION_ACQUIRE, 1, 1 << 8, ReservationKeys::new(0xA1, 0).as_bytes());
    assert_eq!(q.cmd(s, d).await.0.status(), Status::SUCCESS);
    assert!(sidecar.is_file(), "the reservation file is written before the command completes");
    assert_eq!(a.cmd(feature(admin::GET_FEATURES, 0), Bytes::new()).await.0.dw0.get(), 1, "Feature 83h: PTPL on");
    server.stop().await;

    // The target again, on the same file: the reservation is there, held by this host, PTPLS set.
    let server = Server::start(Target::new(&cfg, TargetSettings::default()).unwrap()).await.unwrap();
    let addr = server.bound[0].1;
    let (mut a, cntlid) = Conn::admin(addr, NQN, false, false).await;
    let mut q = Conn::io(addr, &mut a, cntlid, false, false).await;
    let rep = ReservationReport::parse(&q.cmd(report(), Bytes::new()).await.1).unwrap();
    assert_eq!((rep.rtype, rep.ptpls, rep.gen), (Some(ReservationType::WriteExclusive), true, 1));
    assert_eq!(
        rep.registrants.iter().map(|r| (r.hostid, r.rkey, r.holds)).collect::<Vec<_>>(),
        vec![(HOSTID, 0xA1, true)]
    );
    let w = rw_sqe(io::WRITE, 0, 1, SglDescriptor::incapsule(512));
    assert_eq!(q.cmd(w, Bytes::from(vec![1u8; 512])).await.0.status(), Status::SUCCESS, "the holder writes");
    // PTPL off: the file goes (the state stays in memory).
    assert_eq!(a.cmd(feature(admin::SET_FEATURES, 0), Bytes::new()).await.0.status(), Status::SUCCESS);
    assert!(!sidecar.exists());
    assert_eq!(ReservationReport::parse(&q.cmd(report(), Bytes::new()).await.1).unwrap().registrants.len(), 1);
    server.stop().await;

    // A reservation file that is someone else's: the target does not start, and says which file.
    std::fs::write(&sidecar, "written_by = \"x\"\nnguid = \"00112233445566778899aabbccddeeff\"\ngeneration = 1\n")
        .unwrap();
    let e = Target::new(&cfg, TargetSettings::default()).err().expect("a foreign reservation file").to_string();
    assert!(e.contains("vol.img.holdfast-pr") && e.contains("another namespace"), "{e}");
}

/// Writing a namespace's reservation record (a file and two fsyncs, which a slow disk can hold for long) is
/// not done on a connection's task, nor under the lock the I/O path's reservation check takes: while it waits
/// (here the record's temporary file is a FIFO no one reads, so opening it blocks), a Keep Alive and the
/// reservation holder's write on the same runtime are answered; then the Register completes (failed: a FIFO
/// cannot be synced, and a change whose record is not on disk is not made).
#[tokio::test]
async fn a_reservation_record_being_written_holds_no_connection() {
    use holdfast_proto::reservation::{ReservationKeys, ReservationReport};
    use zerocopy::IntoBytes;
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("vol.img");
    let server = Server::start(Target::new(&file_namespace_config(&img, 1, 4), TargetSettings::default()).unwrap())
        .await
        .unwrap();
    let addr = server.bound[0].1;
    // No keep-alive timer: a runtime held 10 s would otherwise end the association, not fail the check below.
    let (mut a, cntlid) = Conn::admin_kato(addr, NQN, false, false, 0).await;
    let mut q = Conn::io(addr, &mut a, cntlid, false, false).await;
    // Registered with Persist Through Power Loss on, and holding Write Exclusive: every write is checked
    // against the reservation, on the connection's task.
    let (s, d) = resv_cmd(io::RESERVATION_REGISTER, 1, 3 << 30, ReservationKeys::new(0, 0xA1).as_bytes());
    assert_eq!(q.cmd(s, d).await.0.status(), Status::SUCCESS);
    let (s, d) = resv_cmd(io::RESERVATION_ACQUIRE, 1, 1 << 8, ReservationKeys::new(0xA1, 0).as_bytes());
    assert_eq!(q.cmd(s, d).await.0.status(), Status::SUCCESS);
    let fifo = dir.path().join("vol.img.holdfast-pr.tmp");
    let c_path = std::ffi::CString::new(fifo.to_str().unwrap()).unwrap();
    // SAFETY: a valid NUL-terminated path.
    assert_eq!(unsafe { libc::mkfifo(c_path.as_ptr(), 0o600) }, 0, "mkfifo");
    // Opens the FIFO (unblocking the writer) when told, or after 10 s by itself (the runtime blocked: nothing
    // can tell it), and reads what was written; says whether it had to wait the 10 s.
    let reader = |fifo: std::path::PathBuf| {
        let (tx, rx) = std::sync::mpsc::channel::<()>();
        let t = std::thread::spawn(move || {
            let timed_out = rx.recv_timeout(Duration::from_secs(10)).is_err();
            let mut sink = Vec::new();
            std::io::Read::read_to_end(&mut std::fs::File::open(&fifo).unwrap(), &mut sink).unwrap();
            timed_out
        });
        (tx, t)
    };
    let (tx, opener) = reader(fifo.clone());
    // Replace the key (RREGA 010b): the record is written, and waits on the FIFO.
    let (sqe, data) = resv_cmd(io::RESERVATION_REGISTER, 1, 2, ReservationKeys::new(0xA1, 0xB2).as_bytes());
    let mut sqe = sqe;
    sqe.cid.set(0x4242);
    q.send(Pdu::CapsuleCmd(CapsuleCmd { sqe, data })).await;
    // Give the target the Register first (no timing is checked: either order proves it, but this one is the
    // one that blocked). Meanwhile a Keep Alive, and the holder's write, which reads the reservation, are served.
    tokio::time::sleep(Duration::from_millis(50)).await;
    // (Answered with Keep Alive Timeout Invalid, this association having no timer: what counts is the answer.)
    let ka = SubmissionEntry::new(admin::KEEP_ALIVE, 0);
    assert_eq!(a.cmd(ka, Bytes::new()).await.0.status(), Status::KEEP_ALIVE_INVALID);
    let mut w = rw_sqe(io::WRITE, 0, 1, SglDescriptor::incapsule(512));
    w.cid.set(0x4343);
    q.send(Pdu::CapsuleCmd(CapsuleCmd { sqe: w, data: Bytes::from(vec![9u8; 512]) })).await;
    let Pdu::CapsuleResp(r) = q.recv().await else { panic!("expected a response") };
    assert_eq!((r.cqe.cid(), r.cqe.status()), (0x4343, Status::SUCCESS), "the write first");
    let _ = tx.send(());
    assert!(!opener.join().unwrap(), "the Keep Alive and the write were answered only once the record was written");
    let Pdu::CapsuleResp(r) = q.recv().await else { panic!("expected the Register's response") };
    // The record went into the FIFO, whose fsync fails: the Register fails with Internal Error, and changed
    // nothing (a registration not on disk is not made).
    assert_eq!((r.cqe.cid(), r.cqe.status().code()), (0x4242, Status::INTERNAL_ERROR.code()));
    let rep = ReservationReport::parse(&q.cmd(resv_report(4096, true), Bytes::new()).await.1).unwrap();
    assert_eq!(rep.registrants.iter().map(|r| r.rkey).collect::<Vec<_>>(), [0xA1], "{rep:?}");
    server.stop().await;
}

/// A malformed H2CTermReq (PLEN beyond the largest a termination request has) ends the connection without a
/// C2HTermReq in answer (NVMe/TCP 1.0: a termination request with an invalid length ends the connection, no
/// error reported); a well-formed one likewise ends it.
#[tokio::test]
async fn a_malformed_termination_request_is_answered_by_closing() {
    let (server, addr) = start("").await;
    for plen in [200u32, 24] {
        let mut c = Conn::ic(addr, false, false).await;
        let mut b = vec![0x02, 0, 24, 0];
        b.extend_from_slice(&plen.to_le_bytes());
        b.resize(24, 0);
        c.send_raw(&b).await;
        let mut rest = Vec::new();
        let n = tokio::time::timeout(Duration::from_secs(5), c.s.read_to_end(&mut rest)).await.expect("not closed");
        assert!(n.is_err() || rest.is_empty(), "PLEN {plen}: {} bytes in answer: {rest:02x?}", rest.len());
    }
    server.stop().await;
}

/// The discovery controller's Identify: a discovery controller (CNTRLTYPE 2) of the well-known NQN, that
/// reports Discovery Log Page Change notices (OAES bit 31) and takes Disconnect (OFCS bit 0), as an I/O
/// controller of this target says too; a KATO of 0 set there is two minutes.
#[tokio::test]
async fn the_discovery_controller_identifies_itself() {
    let (server, addr) = start("").await;
    let (mut d, _) = Conn::admin(addr, fabrics::DISCOVERY_NQN, false, false).await;
    let c = d.identify_controller().await;
    assert_eq!((c.cntrltype, c.subsystem_nqn()), (2, fabrics::DISCOVERY_NQN.to_string()));
    assert_eq!((c.oaes.get() >> 31, c.ofcs.get()), (1, 1));
    // Set Features KATO 0 there is two minutes, as a Connect's KATO 0 is: not a controller that never expires.
    d.set_feature(0x0F, 0).await;
    let mut g = SubmissionEntry::new(admin::GET_FEATURES, 0);
    g.cdw10.set(0x0F);
    assert_eq!(d.cmd(g, Bytes::new()).await.0.dw0.get(), 120_000);
    server.stop().await;
}

/// Referrals (`[[referral]]`): another target's discovery controller listed as SUBTYPE 1 under the discovery
/// NQN, with its own port ID and nothing claimed of it (TREQ 0, no EFLAGS), to the hosts of the ports it names;
/// a reload that adds one moves GENCTR.
#[tokio::test]
async fn referrals_are_listed_in_the_discovery_log() {
    use holdfast_proto::log_page::DiscoveryLogEntry;
    use zerocopy::FromBytes;
    let cfg = |referrals: &str| {
        let text = format!(
            "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n[[port]]\nid = 2\nlisten = \"127.0.0.1:0\"\n\
             [[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n{referrals}"
        );
        Config::parse(&text, "test").unwrap()
    };
    let two = "[[referral]]\naddress = \"192.0.2.7:8009\"\nportid = 3\n\
               [[referral]]\naddress = \"[2001:db8::7]:4420\"\nportid = 4\nports = [2]\n";
    let server = Server::start(Target::new(&cfg(two), TargetSettings::default()).unwrap()).await.unwrap();
    let addr = server.bound[0].1;
    let (mut d, _) = Conn::admin(addr, fabrics::DISCOVERY_NQN, false, false).await;
    let read = || {
        let mut s = SubmissionEntry::new(admin::GET_LOG_PAGE, 0);
        s.dptr = SglDescriptor::transport(8192);
        holdfast_proto::sqe::get_log_page::set(&mut s, 0x70, 0, 8192, 0);
        s
    };
    let (_, log) = d.cmd(read(), Bytes::new()).await;
    let genctr = u64::from_le_bytes(log[0..8].try_into().unwrap());
    let numrec = u64::from_le_bytes(log[8..16].try_into().unwrap()) as usize;
    let entries: Vec<DiscoveryLogEntry> = (0..numrec)
        .map(|i| DiscoveryLogEntry::read_from_bytes(&log[1024 * (i + 1)..1024 * (i + 2)]).unwrap())
        .collect();
    let referrals: Vec<_> = entries.iter().filter(|e| e.subtype == 1).collect();
    assert_eq!(referrals.len(), 1, "the referral for port 2's hosts is not listed to port 1's");
    let r = referrals[0];
    assert_eq!((r.traddr_str(), r.trsvcid_str(), r.portid.get()), ("192.0.2.7".into(), "8009".into(), 3));
    assert_eq!((r.subnqn_str(), r.treq, r.eflags.get(), r.adrfam), (fabrics::DISCOVERY_NQN.into(), 0, 0, 1));
    // Reloaded without them: a new GENCTR, and no referral.
    server.target.reload(&cfg("")).unwrap();
    let (_, log) = d.cmd(read(), Bytes::new()).await;
    assert_eq!(u64::from_le_bytes(log[0..8].try_into().unwrap()), genctr + 1);
    let numrec = u64::from_le_bytes(log[8..16].try_into().unwrap()) as usize;
    assert!((0..numrec).all(|i| log[1024 * (i + 1) + 2] != 1), "no referral left");
    server.stop().await;
}

/// A reload that moves a file to another NSID retires the namespace it had first: a write accepted on the
/// old NSID that has not reached the file yet is refused (retryable) before the new NSID serves the file, so it
/// never lands after a newer write made through the new one (it did: a stale write, found by a review). A host
/// that enabled Advanced Command Retry is told to wait CRDT2 (1 s) before retrying it.
#[tokio::test]
async fn a_write_on_a_namespace_a_reload_moves_never_lands_after_newer_ones() {
    a_write_on_a_moved_namespace(true).await;
}

/// [`a_write_on_a_namespace_a_reload_moves_never_lands_after_newer_ones`] for a host that did not enable Advanced
/// Command Retry: the same status, without a CRD (reserved for such a host, NVMe Base 2.0 Figure 92).
#[tokio::test]
async fn a_host_without_advanced_command_retry_gets_no_retry_delay() {
    a_write_on_a_moved_namespace(false).await;
}

/// Set Features Host Behavior Support with ACRE (Advanced Command Retry Enable) set.
async fn enable_acre(a: &mut Conn) {
    let mut s = SubmissionEntry::new(admin::SET_FEATURES, 0);
    s.cdw10.set(0x16);
    s.dptr = SglDescriptor::incapsule(512);
    let mut data = vec![0u8; 512];
    data[0] = 1;
    assert_eq!(a.cmd(s, Bytes::from(data)).await.0.status(), Status::SUCCESS);
}

async fn a_write_on_a_moved_namespace(acre: bool) {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("moved.img");
    let cfg = |nsid: u32| file_namespace_config(&img, nsid, 1);
    // The first write of each backend is held 1.5 s before it reaches the file (a write behind slow I/O).
    let settings = TargetSettings {
        test_delay_writes: Some(Duration::from_millis(1500)),
        test_delay_every: 1000,
        ..TargetSettings::default()
    };
    let server = Server::start(Target::new(&cfg(1), settings).unwrap()).await.unwrap();
    let addr = server.bound[0].1;
    let (mut a, cntlid) = Conn::admin(addr, NQN, false, false).await;
    if acre {
        enable_acre(&mut a).await;
    }
    let mut q = Conn::io(addr, &mut a, cntlid, false, false).await;
    let write = |nsid: u32, lba: u64, byte: u8, cid: u16| {
        let mut s = rw_sqe(io::WRITE, lba, 1, SglDescriptor::incapsule(512));
        s.nsid.set(nsid);
        s.cid.set(cid);
        Pdu::CapsuleCmd(CapsuleCmd { sqe: s, data: Bytes::from(vec![byte; 512]) })
    };
    q.send(write(1, 0, 0xAA, 0x51)).await;
    // Until the write is in flight on the namespace (held by the delay before the file).
    let ns1 = server.target.subsystem(NQN).unwrap().namespaces.read()[&1].clone();
    wait_until(|| ns1.media.as_ref().unwrap().inflight() == 1, "the write in flight").await;
    server.target.reload(&cfg(2)).unwrap();
    // Through the new NSID: a write that takes the new backend's delay, and at once the newer write of block 0.
    q.send(write(2, 100, 0xCC, 0x52)).await;
    q.send(write(2, 0, 0xBB, 0x53)).await;
    let mut status = std::collections::HashMap::new();
    while status.len() < 3 {
        let Pdu::CapsuleResp(r) = q.recv_within(Duration::from_secs(10)).await else { panic!("expected responses") };
        status.insert(r.cqe.cid(), r.cqe.status());
    }
    assert_eq!(status[&0x53], Status::SUCCESS);
    let old = status[&0x51];
    assert_eq!(old.code(), Status::NAMESPACE_NOT_READY.code(), "the old NSID's write is refused: {old:?}");
    assert!(!old.dnr() && old.crd() == if acre { 2 } else { 0 }, "retryably, after CRDT2 if ACRE: {old:?}");
    let mut rd = rw_sqe(io::READ, 0, 1, SglDescriptor::transport(512));
    rd.nsid.set(2);
    let (r, d) = q.cmd(rd, Bytes::new()).await;
    assert_eq!(r.status(), Status::SUCCESS);
    assert!(d.iter().all(|&b| b == 0xBB), "block 0 holds {:#x}, not the newer write's 0xbb", d[0]);
    server.stop().await;
}

/// A command of a retired namespace already past the media gate when the reload came (here a Write Zeroes with
/// FUA, its zeroes written, held in the flush after them) holds up the writes of the namespace that takes its
/// file over: the new NSID's write completes only after it.
#[tokio::test]
async fn a_write_through_the_new_namespace_waits_for_the_retired_ones_at_the_file() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("moved.img");
    let cfg = |nsid: u32| file_namespace_config(&img, nsid, 1);
    let settings =
        TargetSettings { test_delay_flushes: Some(Duration::from_millis(1500)), ..TargetSettings::default() };
    let server = Server::start(Target::new(&cfg(1), settings).unwrap()).await.unwrap();
    let addr = server.bound[0].1;
    let (mut a, cntlid) = Conn::admin(addr, NQN, false, false).await;
    let mut q = Conn::io(addr, &mut a, cntlid, false, false).await;
    let mut z = rw_sqe(io::WRITE_ZEROES, 0, 1, SglDescriptor::transport(0));
    z.cdw12.set(z.cdw12.get() | holdfast_proto::sqe::rw::FUA);
    z.cid.set(0x61);
    q.send(Pdu::CapsuleCmd(CapsuleCmd { sqe: z, data: Bytes::new() })).await;
    let ns1 = server.target.subsystem(NQN).unwrap().namespaces.read()[&1].clone();
    wait_until(|| ns1.media.as_ref().unwrap().inflight() == 1, "the Write Zeroes at the file").await;
    server.target.reload(&cfg(2)).unwrap();
    let mut w = rw_sqe(io::WRITE, 8, 1, SglDescriptor::incapsule(512));
    w.nsid.set(2);
    w.cid.set(0x62);
    q.send(Pdu::CapsuleCmd(CapsuleCmd { sqe: w, data: Bytes::from(vec![0xBB; 512]) })).await;
    let mut order = Vec::new();
    while order.len() < 2 {
        let Pdu::CapsuleResp(r) = q.recv_within(Duration::from_secs(10)).await else { panic!("expected responses") };
        order.push((r.cqe.cid(), r.cqe.status()));
    }
    assert_eq!(order[0].0, 0x61, "the new namespace's write completed before the retired one's command: {order:?}");
    assert_eq!(order[1], (0x62, Status::SUCCESS));
    server.stop().await;
}

/// One port, subsystem `NQN` open to any host, and namespace `nsid` on the file `img` (`size_mib`, created).
fn file_namespace_config(img: &std::path::Path, nsid: u32, size_mib: u32) -> Config {
    let text = format!(
        "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n\
         [[subsystem.namespace]]\nnsid = {nsid}\nbackend = \"file\"\npath = \"{}\"\nsize_mib = {size_mib}\n",
        img.display()
    );
    Config::parse(&text, "test").unwrap()
}

/// ONCS of a new controller, and namespace 1's RESCAP (Identify Namespace byte 31).
async fn reservation_support(addr: SocketAddr) -> (u16, u8) {
    let (mut a, _) = Conn::admin(addr, NQN, false, false).await;
    let oncs = a.identify_controller().await.oncs.get();
    let mut s = SubmissionEntry::new(admin::IDENTIFY, 0);
    s.dptr = SglDescriptor::transport(4096);
    s.nsid.set(1);
    (oncs, a.cmd(s, Bytes::new()).await.1[31])
}

/// A reload says which namespaces it added and which it replaced; a RAM namespace replaced (here: resized)
/// keeps its NSID and identifiers but not its contents, which the note says, since hosts cannot tell.
#[tokio::test]
async fn a_reload_says_which_namespaces_it_added_and_which_it_replaced() {
    let (server, _) = start("").await;
    let cfg = |ns1_mib: u32| {
        let text = format!(
            "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n\
             [[subsystem.namespace]]\nnsid = 1\nbackend = \"ram\"\nsize_mib = {ns1_mib}\nblock_size = 512\n\
             [[subsystem.namespace]]\nnsid = 2\nbackend = \"ram\"\nsize_mib = 8\n"
        );
        Config::parse(&text, "reload").unwrap()
    };
    let notes = server.target.reload(&cfg(4)).unwrap().notes;
    assert_eq!(notes, vec![format!("{NQN} nsid 2 added: ram 8 MiB")]);
    let notes = server.target.reload(&cfg(16)).unwrap().notes;
    assert_eq!(
        notes,
        vec![format!(
            "{NQN} nsid 1 replaced: ram 16 MiB, whose contents start empty (a RAM namespace is not resized in place)"
        )]
    );
    server.stop().await;
}

/// A reload that points a namespace at another file, or at another backend, replaces it: whether the
/// namespace is unchanged is not decided by the old description containing the new path (a path that is a
/// prefix of the old one, or a relative path naming its tail, is another file; and a RAM namespace has no path,
/// which every description "contains").
#[tokio::test]
async fn a_reload_that_changes_a_namespace_file_or_kind_replaces_it() {
    let dir = tempfile::tempdir().unwrap();
    let old = dir.path().join("vol.img.old");
    let new = dir.path().join("vol.img");
    let cfg = |ns: &str| {
        let text = format!(
            "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n\
             [[subsystem.namespace]]\nnsid = 1\n{ns}\nsize_mib = 4\n"
        );
        Config::parse(&text, "reload").unwrap()
    };
    let file = |p: &std::path::Path| format!("backend = \"file\"\npath = \"{}\"", p.display());
    let target = Target::new(&cfg(&file(&old)), TargetSettings::default()).unwrap();
    let served = |t: &Target| t.subsystem(NQN).unwrap().namespace(1).unwrap().backend.describe();
    assert!(served(&target).contains("vol.img.old"), "{}", served(&target));
    // Another file, whose path the old one's starts with.
    let notes = target.reload(&cfg(&file(&new))).unwrap().notes;
    assert!(!served(&target).contains("vol.img.old"), "still serving the old file: {} ({notes:?})", served(&target));
    assert_eq!(notes.len(), 1, "{notes:?}");
    // The same size in RAM instead of a file.
    let notes = target.reload(&cfg("backend = \"ram\"")).unwrap().notes;
    assert!(served(&target).starts_with("ram"), "still serving a file: {} ({notes:?})", served(&target));
}

/// A namespace exported read-only (`read_only = true`): its file opened for reading only, Identify Namespace
/// says write protected (NSATTR bit 0), Write, Write Zeroes and a deallocation fail with Namespace is Write
/// Protected (DNR), before their LBA range is looked at, as nvmet answers for a read-only device; Read, Flush
/// and attribute hints alone run, and the file is left as it was. A reload that makes it writable replaces it.
#[tokio::test]
async fn a_read_only_namespace_is_write_protected() {
    let dir = tempfile::tempdir().unwrap();
    let img = dir.path().join("golden.img");
    let content: Vec<u8> = (0..1u32 << 20).map(|i| (i % 251) as u8).collect();
    std::fs::write(&img, &content).unwrap();
    let cfg = |ro: bool| {
        let text = format!(
            "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n\
             [[subsystem.namespace]]\nnsid = 1\nbackend = \"file\"\npath = \"{}\"\nread_only = {ro}\n",
            img.display()
        );
        Config::parse(&text, "ro").unwrap()
    };
    let server = Server::start(Target::new(&cfg(true), TargetSettings::default()).unwrap()).await.unwrap();
    let addr = server.bound[0].1;
    let (mut a, cntlid) = Conn::admin(addr, NQN, false, false).await;
    let mut s = SubmissionEntry::new(admin::IDENTIFY, 0);
    s.dptr = SglDescriptor::transport(4096);
    s.nsid.set(1);
    let (r, d) = a.cmd(s, Bytes::new()).await;
    assert_eq!(r.status(), Status::SUCCESS);
    let id: holdfast_proto::identify::IdentifyNamespace = zerocopy::FromBytes::read_from_bytes(&d[..4096]).unwrap();
    assert_eq!(id.nsattr & holdfast_proto::identify::NSATTR_WRITE_PROTECTED, 1, "NSATTR");
    assert_eq!(id.nsze.get(), 2048, "the file's size, in 512-byte blocks");
    let mut q = Conn::io(addr, &mut a, cntlid, false, false).await;
    let protected = Status::NS_WRITE_PROTECTED.with_dnr();
    let (r, _) = q.cmd(rw_sqe(io::WRITE, 8, 1, SglDescriptor::incapsule(512)), Bytes::from(vec![0xEE; 512])).await;
    assert_eq!(r.status(), protected, "Write");
    // Refused for the namespace before its range: past the end too.
    let (r, _) = q.cmd(rw_sqe(io::WRITE, 1 << 20, 1, SglDescriptor::incapsule(512)), Bytes::from(vec![0; 512])).await;
    assert_eq!(r.status(), protected, "Write past the end");
    let (r, _) = q.cmd(rw_sqe(io::WRITE_ZEROES, 0, 8, SglDescriptor::default()), Bytes::new()).await;
    assert_eq!(r.status(), protected, "Write Zeroes");
    let range = holdfast_proto::sqe::dsm::Range { cattr: 0, nlb: 8, slba: 0 };
    let dsm = |attrs: u32| {
        let mut sqe = SubmissionEntry::new(io::DATASET_MANAGEMENT, 0);
        sqe.nsid.set(1);
        sqe.dptr = SglDescriptor::incapsule(16);
        sqe.cdw11.set(attrs);
        sqe
    };
    let (r, _) = q.cmd(dsm(holdfast_proto::sqe::dsm::AD), Bytes::copy_from_slice(&range.encode())).await;
    assert_eq!(r.status(), protected, "deallocate");
    let (r, _) = q.cmd(dsm(0), Bytes::copy_from_slice(&range.encode())).await;
    assert_eq!(r.status(), Status::SUCCESS, "attribute hints alone");
    let mut flush = SubmissionEntry::new(io::FLUSH, 0);
    flush.nsid.set(1);
    assert_eq!(q.cmd(flush, Bytes::new()).await.0.status(), Status::SUCCESS, "Flush");
    let (r, data) = q.cmd(rw_sqe(io::READ, 8, 2, SglDescriptor::transport(1024)), Bytes::new()).await;
    assert_eq!(r.status(), Status::SUCCESS, "Read");
    assert_eq!(&data[..], &content[4096..5120]);
    assert!(std::fs::read(&img).unwrap() == content, "the file changed");
    // Made writable by a reload: replaced, and a write lands.
    let notes = server.target.reload(&cfg(false)).unwrap().notes;
    assert_eq!(notes.len(), 1, "{notes:?}");
    assert!(!server.target.subsystem(NQN).unwrap().namespace(1).unwrap().read_only);
    server.stop().await;
}

/// The discovery log is one published state, entries and GENCTR together: a reload's changes applied but not
/// yet announced (GENCTR not moved) are not in it, so a host reading the header and then the entries never
/// takes new entries for the old GENCTR's.
#[tokio::test]
async fn the_discovery_log_changes_only_with_its_genctr() {
    let (server, addr) = start("").await;
    let (mut d, _) = Conn::admin(addr, fabrics::DISCOVERY_NQN, false, false).await;
    let read_log = || {
        let mut s = SubmissionEntry::new(admin::GET_LOG_PAGE, 0);
        s.dptr = SglDescriptor::transport(4096);
        holdfast_proto::sqe::get_log_page::set(&mut s, 0x70, 0, 4096, 0);
        s
    };
    let header =
        |d: &[u8]| (u64::from_le_bytes(d[0..8].try_into().unwrap()), u64::from_le_bytes(d[8..16].try_into().unwrap()));
    let (_, log) = d.cmd(read_log(), Bytes::new()).await;
    let (genctr, numrec) = header(&log);
    assert_eq!(numrec, 2, "the subsystem and the discovery entry");
    let cfg = Config::parse(
        &format!(
            "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n\
             [[subsystem.namespace]]\nnsid = 1\nbackend = \"ram\"\nsize_mib = 4\nblock_size = 512\n\
             [[subsystem]]\nnqn = \"{NQN}-2\"\nallow_any_host = true\n"
        ),
        "reload",
    )
    .unwrap();
    // Applied (a host can connect to it), not yet announced: the log is as it was, under the same GENCTR.
    let (_, changed) = server.target.reload_quiet(&cfg).unwrap();
    assert!(changed);
    let (_, log) = d.cmd(read_log(), Bytes::new()).await;
    assert_eq!(header(&log), (genctr, 2), "new entries under the old GENCTR");
    // Announced: the new state under a new GENCTR.
    server.target.discovery_changed();
    let (_, log) = d.cmd(read_log(), Bytes::new()).await;
    assert_eq!(header(&log), (genctr + 1, 3));
    server.stop().await;

    // A restarted target does not start over: its GENCTR is past every value the run before gave out (a
    // host holding the old log by GENCTR would otherwise take a new log for it after one reload).
    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
    let (server, addr) = start("").await;
    let (mut d, _) = Conn::admin(addr, fabrics::DISCOVERY_NQN, false, false).await;
    let (_, log) = d.cmd(read_log(), Bytes::new()).await;
    assert!(header(&log).0 > genctr + 1, "GENCTR {} after a restart, {} before", header(&log).0, genctr + 1);
    server.stop().await;
}

/// A Discovery Log Page Change notice goes to the discovery controllers whose host's log changed, not to
/// every one (Linux nvmet's nvmet_subsys_disc_changed): a subsystem added for host A notifies A's discovery
/// controller, and B's, whose log is the same, gets none.
#[tokio::test]
async fn a_discovery_change_notifies_only_the_hosts_whose_log_changed() {
    const HOST_A: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-00000000000a";
    const HOST_B: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-00000000000b";
    let cfg = |extra: &str| {
        let text = format!(
            "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"{NQN}\"\nallowed_hosts = [\"{HOST_A}\", \"{HOST_B}\"]\n\
             [[subsystem.namespace]]\nnsid = 1\nbackend = \"ram\"\nsize_mib = 1\n{extra}"
        );
        Config::parse(&text, "test").unwrap()
    };
    let server = Server::start(Target::new(&cfg(""), TargetSettings::default()).unwrap()).await.unwrap();
    let addr = server.bound[0].1;
    let mut discovery_of = Vec::new();
    for host in [HOST_A, HOST_B] {
        let mut d = Conn::ic(addr, false, false).await;
        assert_eq!(d.connect_full(0, 0xFFFF, fabrics::DISCOVERY_NQN, host, 5000, 0).await.status(), Status::SUCCESS);
        assert_eq!(d.prop_set(property::CC, cc::ENABLE_DEFAULT as u64).await.status(), Status::SUCCESS);
        d.set_feature(0x0B, 1 << 31).await;
        let aer = d.post_aer().await;
        discovery_of.push((d, aer));
    }
    let reloaded = cfg(&format!("[[subsystem]]\nnqn = \"{NQN}-a\"\nallowed_hosts = [\"{HOST_A}\"]\n"));
    server.target.reload(&reloaded).unwrap();
    let [(mut da, aer_a), (mut db, _)] = <[_; 2]>::try_from(discovery_of).ok().unwrap();
    let Pdu::CapsuleResp(r) = da.recv().await else { panic!("expected host A's notice") };
    assert_eq!((r.cqe.cid(), r.cqe.dw0.get()), (aer_a, 0x0070_F002), "host A: Discovery Log Page Change");
    // Keep Alives one at a time: a notice raised at the reload would be sent at the latest once the first is
    // answered (B's connection then has nothing else to do), before the second's answer.
    for _ in 0..3 {
        let cid = db.next_cid();
        let mut s = SubmissionEntry::new(admin::KEEP_ALIVE, cid);
        s.dptr = SglDescriptor::transport(0);
        db.send(Pdu::CapsuleCmd(CapsuleCmd { sqe: s, data: Bytes::new() })).await;
        let Pdu::CapsuleResp(r) = db.recv().await else { panic!("expected a response") };
        assert_eq!(
            r.cqe.cid(),
            cid,
            "host B, whose log did not change, was sent a notice (dw0 {:#x})",
            r.cqe.dw0.get()
        );
    }
    server.stop().await;
}

#[tokio::test]
async fn huge_keep_alive_timer_saturates_instead_of_wrapping() {
    // Found by fuzzing: CDW11 = FFFFFFFFh once overflowed the rounding to the KAS granularity (a panic in
    // debug builds, a 4 ms KATO in release).
    let (server, addr) = start("").await;
    let (mut a, _) = Conn::admin(addr, NQN, false, false).await;
    let mut s = SubmissionEntry::new(admin::SET_FEATURES, 0);
    s.cdw10.set(0x0F);
    s.cdw11.set(0xFFFF_FFFF);
    assert_eq!(a.cmd(s, Bytes::new()).await.0.status(), Status::SUCCESS);
    let mut g = SubmissionEntry::new(admin::GET_FEATURES, 0);
    g.cdw10.set(0x0F);
    let (r, _) = a.cmd(g, Bytes::new()).await;
    assert!(r.dw0.get() >= 0xFFFF_FF00, "KATO {} should saturate, not wrap", r.dw0.get());
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(a.keep_alive().await, Status::SUCCESS, "the association is still alive");
    server.stop().await;
}

fn ports_config(ports: &[(u16, &str)]) -> Config {
    let mut text = String::new();
    for (id, listen) in ports {
        text.push_str(&format!("[[port]]\nid = {id}\nlisten = \"{listen}\"\n"));
    }
    text.push_str(&format!(
        "[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n[[subsystem.namespace]]\nnsid = 1\n\
         backend = \"ram\"\nsize_mib = 4\nblock_size = 512\n"
    ));
    Config::parse(&text, "ports").unwrap()
}

#[tokio::test]
async fn reload_adds_and_removes_ports() {
    let (mut server, addr1) = start("").await;
    let (mut a1, _) = Conn::admin(addr1, NQN, false, false).await;
    let genctr = server.target.genctr.load(std::sync::atomic::Ordering::SeqCst);

    // A second port: bound and served, listed by discovery, GENCTR moves; the first is untouched.
    let s = server.reload(&ports_config(&[(1, "127.0.0.1:0"), (2, "127.0.0.1:0")])).await.unwrap();
    assert_eq!(server.bound.len(), 2, "{:?}", s.notes);
    assert_eq!(server.bound[0].1, addr1, "an unchanged port keeps its listener");
    assert_eq!(s.genctr, genctr + 1);
    let addr2 = server.bound[1].1;
    let (mut a2, _) = Conn::admin(addr2, NQN, false, false).await;
    let mut s = SubmissionEntry::new(admin::GET_LOG_PAGE, 0);
    s.dptr = SglDescriptor::transport(4096);
    holdfast_proto::sqe::get_log_page::set(&mut s, 0x70, 0, 4096, 0);
    let (mut d, _) = Conn::admin(addr2, fabrics::DISCOVERY_NQN, false, false).await;
    let (r, log) = d.cmd(s, Bytes::new()).await;
    assert_eq!(r.status(), Status::SUCCESS);
    assert_eq!(u64::from_le_bytes(log[8..16].try_into().unwrap()), 4, "NQN and discovery entries on 2 ports");

    // The first port removed: its listener closes, and so do the connections it accepted.
    let s = server.reload(&ports_config(&[(2, "127.0.0.1:0")])).await.unwrap();
    assert_eq!(server.bound, vec![(2, addr2)], "{:?}", s.notes);
    assert!(TcpStream::connect(addr1).await.is_err(), "port 1 no longer listens");
    let mut b = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), a1.s.read(&mut b)).await.expect("closed, not left hanging");
    assert!(matches!(n, Ok(0) | Err(_)), "the connection on the removed port is closed");
    assert_eq!(a2.keep_alive().await, Status::SUCCESS, "port 2 serves on");

    // The same address under another port ID: bound once the old port has let it go.
    let a2s = addr2.to_string();
    let s = server.reload(&ports_config(&[(3, &a2s)])).await.unwrap();
    assert_eq!(server.bound, vec![(3, addr2)], "{:?}", s.notes);
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    Conn::admin(addr2, NQN, false, false).await;

    // A port that cannot be bound changes nothing.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let busy = taken.local_addr().unwrap().to_string();
    let genctr = server.target.genctr.load(std::sync::atomic::Ordering::SeqCst);
    let e = server.reload(&ports_config(&[(3, &a2s), (4, &busy)])).await.unwrap_err();
    assert!(e.to_string().starts_with(&format!("port[1].listen (port 4): cannot listen on {busy}: ")), "{e}");
    assert_eq!(server.bound, vec![(3, addr2)]);
    assert_eq!(server.target.genctr.load(std::sync::atomic::Ordering::SeqCst), genctr);
    server.stop().await;
}

/// A host that pipelines a batch of large reads and does not read its socket cannot make the target execute
/// them all and hold every answer in memory: the target stops decoding at its send high-water mark (8 MiB), the
/// rest of the batch waiting in its receive buffer, and goes on once the host reads. With and without busy
/// polling (a queue that stopped decoding must wait for its socket to take data, not spin on reading more).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_host_that_does_not_read_cannot_make_the_target_buffer_a_whole_batch_of_reads() {
    const READS: u16 = 200;
    const LEN: usize = 256 * 1024;
    for busy_poll in [Duration::ZERO, Duration::from_millis(1)] {
        let (server, addr) = start_with("", TargetSettings { busy_poll, ..TargetSettings::default() }).await;
        let (mut a, cntlid) = Conn::admin(addr, NQN, false, false).await;
        let mut q = Conn::io(addr, &mut a, cntlid, false, false).await;
        // Reads one at a time first: with busy polling the queue then has the poller to itself and reads its
        // socket in its own spin.
        for _ in 0..100 {
            let (r, _) = q.cmd(rw_sqe(io::READ, 0, 1, SglDescriptor::transport(512)), Bytes::new()).await;
            assert_eq!(r.status(), Status::SUCCESS);
        }
        let stats = &server.target.subsystem(NQN).unwrap().stats;
        let before = stats.read_cmds.load(std::sync::atomic::Ordering::Relaxed);
        let read = rw_sqe(io::READ, 0, (LEN / 512) as u32, SglDescriptor::transport(LEN as u32));
        // 14 KiB of capsules: one socket read on the target
        q.send_raw(&capsules(&q.f, (0..READS).map(|i| (100 + i, read, Bytes::new())))).await;
        tokio::time::sleep(Duration::from_millis(500)).await;
        let executed = stats.read_cmds.load(std::sync::atomic::Ordering::Relaxed) - before;
        // 8 MiB / 256 KiB = 32 before the mark, plus what the two socket buffers took meanwhile.
        assert!(
            executed <= READS as u64 / 2,
            "busy poll {busy_poll:?}: {executed} reads of 256 KiB executed and queued for a host that reads nothing"
        );
        // The host reads: every read completes, in order, with its data.
        for i in 0..READS {
            let (r, d) = q.finish(100 + i).await;
            assert_eq!((r.status(), d.len()), (Status::SUCCESS, LEN), "read {i}");
        }
        server.stop().await;
    }
}

/// A Connect on a queue that a Connect has already bound is refused with Command Sequence Error when it runs,
/// not only when it is parsed: two Connects whose data comes through R2T are both parsed before either runs,
/// and the second must neither create a second controller nor rebind the queue to one.
#[tokio::test]
async fn a_second_connect_delivered_by_r2t_is_refused() {
    use holdfast_proto::pdu::R2T;
    use zerocopy::IntoBytes;
    let (server, addr) = start("").await;
    let mut c = Conn::ic(addr, false, false).await;
    let d = ConnectData::new(HOSTID, 0xFFFF, NQN, HOSTNQN);
    for cid in [1u16, 2] {
        let mut sqe = ConnectCommand::new(0, 0, 31, 0).to_sqe(); // KATO 0: the first controller never expires
        sqe.cid.set(cid);
        sqe.dptr = SglDescriptor::transport(d.as_bytes().len() as u32);
        c.send(Pdu::CapsuleCmd(CapsuleCmd { sqe, data: Bytes::new() })).await;
    }
    let mut ttags = Vec::new();
    for cid in [1u16, 2] {
        let Pdu::R2T(R2T { cccid, ttag, .. }) = c.recv().await else { panic!("expected R2T") };
        assert_eq!(cccid, cid);
        ttags.push(ttag);
    }
    let mut cqes = Vec::new();
    for (cid, ttag) in [1u16, 2].into_iter().zip(ttags) {
        let data = Bytes::copy_from_slice(d.as_bytes());
        c.send(Pdu::H2CData(H2CData { cccid: cid, ttag, datao: 0, data, last: true })).await;
        let Pdu::CapsuleResp(r) = c.recv().await else { panic!("expected CapsuleResp") };
        assert_eq!(r.cqe.cid(), cid);
        cqes.push(r.cqe);
    }
    assert_eq!(cqes[0].status(), Status::SUCCESS);
    // Logged (More): the queue is bound to the first Connect's controller.
    assert_eq!(cqes[1].status(), Status::COMMAND_SEQUENCE_ERROR.with_dnr().with_more(), "the second Connect ran");
    let subsys = server.target.subsystem(NQN).unwrap();
    let ids: Vec<u16> = subsys.controllers().iter().map(|c| c.cntlid).collect();
    assert_eq!(ids, vec![cqes[0].dw0.get() as u16], "controllers after two Connects on one queue");
    // The queue still serves its first controller.
    let r = c.prop_get(property::CAP, true).await;
    assert_eq!(r.status(), Status::SUCCESS);
    server.stop().await;
}

/// SQHD counts the Connect itself: it is the queue's first entry, so its response carries SQHD 1 and every
/// later completion one more, wrapping at the queue size, as Linux nvmet answers a Linux host
/// (`shared/captures/linux-host-linux-target.pcap`: 1, 2, ... 1Fh, 0 on a 32-entry admin queue).
#[tokio::test]
async fn sq_head_counts_the_connect_and_wraps_at_the_queue_size() {
    let (server, addr) = start("").await;
    let mut a = Conn::ic(addr, false, false).await;
    let r = a.connect(0, 0xFFFF, NQN, 5000).await; // SQSIZE 31: 32 entries
    assert_eq!((r.status(), r.sqhd.get()), (Status::SUCCESS, 1), "admin Connect");
    let cntlid = r.dw0.get() as u16;
    let r = a.prop_set(property::CC, cc::ENABLE_DEFAULT as u64).await;
    assert_eq!((r.status(), r.sqhd.get()), (Status::SUCCESS, 2));
    for n in 3..=40u32 {
        let r = a.prop_get(property::CSTS, false).await;
        assert_eq!((r.status(), r.sqhd.get()), (Status::SUCCESS, (n % 32) as u16), "admin command {n}");
    }
    // An I/O queue (SQSIZE 127) the same way.
    let (mut q, r) = Conn::io_with(addr, &mut a, cntlid, false, false, 0).await;
    assert_eq!(r.sqhd.get(), 1, "I/O queue Connect");
    for n in 2..=4u16 {
        let (r, _) = q.cmd(rw_sqe(io::READ, 0, 1, SglDescriptor::transport(512)), Bytes::new()).await;
        assert_eq!((r.status(), r.sqhd.get()), (Status::SUCCESS, n));
    }
    server.stop().await;
}

/// A connection has a limited time to bind its queue: to send its ICReq, then a Connect that succeeds. One
/// that stops after ICReq (or after a refused Connect) is closed, not held forever; one whose Connect bound
/// the queue is not. Paused clock: the runtime skips ahead whenever every task waits.
#[tokio::test(start_paused = true)]
async fn a_connection_that_never_binds_its_queue_is_closed() {
    let (server, addr) = start("").await;
    let closed_within = |mut c: Conn| async move {
        let t0 = tokio::time::Instant::now();
        let mut rest = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(120), c.s.read_to_end(&mut rest)).await;
        assert!(r.is_ok(), "the connection was still open after 120 s");
        t0.elapsed()
    };
    // No ICReq.
    let waited = closed_within(Conn::raw(addr).await).await;
    assert!(waited >= Duration::from_secs(9), "closed after {waited:?}");
    // ICReq, then nothing.
    let waited = closed_within(Conn::ic(addr, false, false).await).await;
    assert!(waited >= Duration::from_secs(9), "closed after {waited:?}");
    // ICReq and a refused Connect (unknown subsystem), then nothing.
    let mut c = Conn::ic(addr, false, false).await;
    assert_eq!(
        c.connect(0, 0xFFFF, "nqn.2026-01.io.holdfast:nobody", 0).await.status(),
        Status::CONNECT_INVALID_PARAMETERS.with_dnr()
    );
    closed_within(c).await;
    // A bound queue (KATO 0: no keep-alive timer either) stays.
    let mut c = Conn::ic(addr, false, false).await;
    assert_eq!(c.connect(0, 0xFFFF, NQN, 0).await.status(), Status::SUCCESS);
    tokio::time::sleep(Duration::from_secs(120)).await;
    assert_eq!(c.prop_get(property::CAP, true).await.status(), Status::SUCCESS, "the bound queue was closed");
    server.stop().await;
}

/// Disconnect deletes the queue (NVMe Base 2.0 §6.4): commands the host pipelined behind it in the same burst
/// are not executed. Its response is the last PDU on the connection, which then closes.
#[tokio::test]
async fn nothing_runs_after_a_disconnect() {
    let (server, addr) = start("").await;
    let (mut a, cntlid) = Conn::admin(addr, NQN, false, false).await;
    let mut q = Conn::io(addr, &mut a, cntlid, false, false).await;
    let stats = &server.target.subsystem(NQN).unwrap().stats;
    let (reads, writes) = (stats.read_cmds.load(Ordering::Relaxed), stats.write_cmds.load(Ordering::Relaxed));
    let mut burst =
        Pdu::CapsuleCmd(CapsuleCmd { sqe: fabrics::disconnect_sqe(1), data: Bytes::new() }).to_bytes(&q.f).to_vec();
    for cid in 2..40u16 {
        let mut sqe = rw_sqe(io::READ, 0, 1, SglDescriptor::transport(512));
        if cid == 20 {
            sqe = rw_sqe(io::WRITE, 5, 1, SglDescriptor::incapsule(512));
        }
        sqe.cid.set(cid);
        let data = if cid == 20 { Bytes::from(vec![0xAB; 512]) } else { Bytes::new() };
        burst.extend_from_slice(&Pdu::CapsuleCmd(CapsuleCmd { sqe, data }).to_bytes(&q.f));
    }
    q.send_raw(&burst).await;
    let Pdu::CapsuleResp(r) = q.recv().await else { panic!("expected the Disconnect's CapsuleResp") };
    assert_eq!((r.cqe.cid(), r.cqe.status()), (1, Status::SUCCESS));
    let mut rest = Vec::new();
    let n = tokio::time::timeout(Duration::from_secs(5), q.s.read_to_end(&mut rest)).await.expect("not closed");
    assert!(n.is_err() || (rest.is_empty() && q.buf.is_empty()), "PDUs after the Disconnect's response");
    assert_eq!(stats.read_cmds.load(Ordering::Relaxed), reads, "reads executed after Disconnect");
    assert_eq!(stats.write_cmds.load(Ordering::Relaxed), writes, "write executed after Disconnect");
    server.stop().await;
}

/// What a command over a fabric must look like, and the Linux target's answers when it does not: PSDT other
/// than 01b (SGLs), and in-capsule data on a command whose data goes to the host, both Invalid Field with DNR;
/// the queue goes on.
#[tokio::test]
async fn prps_and_in_capsule_data_for_the_host_are_invalid_fields() {
    let (server, addr) = start("").await;
    let (mut a, cntlid) = Conn::admin(addr, NQN, false, false).await;
    let mut q = Conn::io(addr, &mut a, cntlid, false, false).await;
    // PSDT 00b (PRPs) on a read, and on a Property Get.
    let mut s = rw_sqe(io::READ, 0, 1, SglDescriptor::transport(512));
    s.flags = 0;
    assert_eq!(q.cmd(s, Bytes::new()).await.0.status(), Status::INVALID_FIELD.with_dnr(), "PRPs on a Read");
    let mut s = PropertyCommand::new(0, property::CAP, true, None).to_sqe();
    s.flags = 0x80; // PSDT 10b (reserved)
    assert_eq!(a.cmd(s, Bytes::new()).await.0.status(), Status::INVALID_FIELD.with_dnr(), "PSDT 10b");
    // A read, and an Identify, carrying in-capsule data.
    let s = rw_sqe(io::READ, 0, 1, SglDescriptor::incapsule(512));
    let (r, d) = q.cmd(s, Bytes::from(vec![1u8; 512])).await;
    assert_eq!((r.status(), d.len()), (Status::INVALID_FIELD.with_dnr(), 0), "in-capsule data on a Read");
    let mut s = SubmissionEntry::new(admin::IDENTIFY, 0);
    s.dptr = SglDescriptor::incapsule(4096);
    s.cdw10.set(1);
    let (r, d) = a.cmd(s, Bytes::from(vec![0u8; 4096])).await;
    assert_eq!((r.status(), d.len()), (Status::INVALID_FIELD.with_dnr(), 0), "in-capsule data on an Identify");
    // Both queues serve on.
    let (r, d) = q.cmd(rw_sqe(io::READ, 0, 1, SglDescriptor::transport(512)), Bytes::new()).await;
    assert_eq!((r.status(), d.len()), (Status::SUCCESS, 512));
    assert_eq!(a.prop_get(property::CSTS, false).await.status(), Status::SUCCESS);
    server.stop().await;
}

/// An H2CData PDU that says it is the last of its R2T's (LAST_PDU) while data is still owed: the rest never
/// comes, so the connection ends (Invalid PDU Header Field at FLAGS) instead of the write waiting for ever.
#[tokio::test]
async fn h2c_data_marked_last_before_the_end_of_its_r2t_ends_the_connection() {
    use holdfast_proto::pdu::R2T;
    let (server, addr) = start("").await;
    let (mut a, cntlid) = Conn::admin(addr, NQN, false, false).await;
    let mut q = Conn::io(addr, &mut a, cntlid, false, false).await;
    let mut s = rw_sqe(io::WRITE, 0, 2, SglDescriptor::transport(1024));
    let cid = q.next_cid();
    s.cid.set(cid);
    q.send(Pdu::CapsuleCmd(CapsuleCmd { sqe: s, data: Bytes::new() })).await;
    let Pdu::R2T(R2T { ttag, r2tl, .. }) = q.recv().await else { panic!("expected R2T") };
    assert_eq!(r2tl, 1024);
    let data = Bytes::from(vec![5u8; 512]);
    q.send(Pdu::H2CData(H2CData { cccid: cid, ttag, datao: 0, data, last: true })).await;
    q.expect_term(pdu::Fes::InvalidHeaderField as u16, pdu::offset::FLAGS).await;
    // Nothing of it landed.
    let (a2, cntlid2) = Conn::admin(addr, NQN, false, false).await;
    let mut a2 = a2;
    let mut q2 = Conn::io(addr, &mut a2, cntlid2, false, false).await;
    assert_block0_zero(&mut q2, "the cut write").await;
    server.stop().await;
}

/// Admin commands against what the Linux target answers: an I/O queue connects without Set Features Number of
/// Queues (the default Get Features reports is granted); Identify and Get Log Page whose SGL length differs
/// from the length their own fields give are Data SGL Length Invalid; Identify Namespace of FFFFFFFFh is
/// Invalid Namespace (no Namespace Management); the discovery controller keeps to its MDTS.
#[tokio::test]
async fn admin_lengths_namespaces_and_queue_counts_as_nvmet_answers() {
    let (server, addr) = start("").await;
    let (mut a, cntlid) = Conn::admin(addr, NQN, false, false).await;
    let mut q = Conn::ic(addr, false, false).await;
    assert_eq!(q.connect(1, cntlid, NQN, 0).await.status(), Status::SUCCESS, "I/O Connect without Number of Queues");
    let (r, d) = q.cmd(rw_sqe(io::READ, 0, 1, SglDescriptor::transport(512)), Bytes::new()).await;
    assert_eq!((r.status(), d.len()), (Status::SUCCESS, 512));
    // Identify with a 512-byte SGL; Get Log Page asking for 512 bytes with a 4096-byte SGL, and the reverse.
    let mut s = SubmissionEntry::new(admin::IDENTIFY, 0);
    s.dptr = SglDescriptor::transport(512);
    s.cdw10.set(1);
    assert_eq!(a.cmd(s, Bytes::new()).await.0.status(), Status::SGL_LENGTH_INVALID.with_dnr(), "Identify of 512");
    for (numd, sgl) in [(512u32, 4096u32), (4096, 512)] {
        let mut s = SubmissionEntry::new(admin::GET_LOG_PAGE, 0);
        s.dptr = SglDescriptor::transport(sgl);
        holdfast_proto::sqe::get_log_page::set(&mut s, 0x02, 0, numd, 0);
        let (r, d) = a.cmd(s, Bytes::new()).await;
        assert_eq!((r.status(), d.len()), (Status::SGL_LENGTH_INVALID.with_dnr(), 0), "NUMD {numd}, SGL {sgl}");
    }
    let mut s = SubmissionEntry::new(admin::IDENTIFY, 0);
    s.dptr = SglDescriptor::transport(4096);
    s.nsid.set(0xFFFF_FFFF);
    assert_eq!(a.cmd(s, Bytes::new()).await.0.status(), Status::INVALID_NAMESPACE.with_dnr(), "CNS 0, all NSIDs");
    // The discovery controller: a Get Log Page of 64 MiB is above its MDTS (256 KiB).
    let (mut d, _) = Conn::admin(addr, fabrics::DISCOVERY_NQN, false, false).await;
    let mut s = SubmissionEntry::new(admin::GET_LOG_PAGE, 0);
    s.dptr = SglDescriptor::transport(64 << 20);
    holdfast_proto::sqe::get_log_page::set(&mut s, 0x70, 0, 64 << 20, 0);
    let (r, data) = d.cmd(s, Bytes::new()).await;
    assert_eq!((r.status(), data.len()), (Status::INVALID_FIELD.with_dnr(), 0), "discovery log of 64 MiB");
    server.stop().await;
}

/// KATO lowered with Set Features counts from the last command at once: an idle association goes within the
/// new KATO, not once the old one (30 s here) has run out.
#[tokio::test]
async fn a_lower_kato_set_by_set_features_applies_at_once() {
    let (server, addr) = start("").await;
    let mut c = Conn::ic(addr, false, false).await;
    assert_eq!(c.connect(0, 0xFFFF, NQN, 30_000).await.status(), Status::SUCCESS);
    assert_eq!(c.prop_set(property::CC, cc::ENABLE_DEFAULT as u64).await.status(), Status::SUCCESS);
    let mut s = SubmissionEntry::new(admin::SET_FEATURES, 0);
    s.cdw10.set(0x0F);
    s.cdw11.set(500);
    assert_eq!(c.cmd(s, Bytes::new()).await.0.status(), Status::SUCCESS);
    let mut rest = Vec::new();
    let r = tokio::time::timeout(Duration::from_secs(5), c.s.read_to_end(&mut rest)).await;
    assert!(r.is_ok(), "the association outlived the new KATO by seconds");
    server.stop().await;
}

/// A Connect's KATO is rounded up to the Keep Alive granularity (KAS, 100 ms), as one set with Set Features is:
/// Get Features reports the timer the controller runs (it reported 5050 before).
#[tokio::test]
async fn a_connect_kato_is_rounded_up_to_the_keep_alive_granularity() {
    let (server, addr) = start("").await;
    let mut c = Conn::ic(addr, false, false).await;
    assert_eq!(c.connect(0, 0xFFFF, NQN, 5_050).await.status(), Status::SUCCESS);
    assert_eq!(c.prop_set(property::CC, cc::ENABLE_DEFAULT as u64).await.status(), Status::SUCCESS);
    let mut s = SubmissionEntry::new(admin::GET_FEATURES, 0);
    s.cdw10.set(0x0F);
    let (cqe, _) = c.cmd(s, Bytes::new()).await;
    assert_eq!((cqe.status(), cqe.dw0.get()), (Status::SUCCESS, 5_100));
    server.stop().await;
}

/// A reload that takes a subsystem off a port ends the associations made through that port (as Linux nvmet
/// does when a subsystem is unlinked from a port); those through its other ports go on.
#[tokio::test]
async fn a_subsystem_taken_off_a_port_ends_the_associations_through_it() {
    let (mut server, addr1) = start("").await;
    server.reload(&ports_config(&[(1, "127.0.0.1:0"), (2, "127.0.0.1:0")])).await.unwrap();
    let addr2 = server.bound[1].1;
    let (mut a1, _) = Conn::admin(addr1, NQN, false, false).await;
    let (mut a2, _) = Conn::admin(addr2, NQN, false, false).await;
    let mut cfg = ports_config(&[(1, "127.0.0.1:0"), (2, "127.0.0.1:0")]);
    cfg.subsystems[0].ports = vec![2];
    let s = server.reload(&cfg).await.unwrap();
    assert!(s.errors.is_empty(), "{:?}", s.errors);
    let mut b = [0u8; 64];
    let n = tokio::time::timeout(Duration::from_secs(5), a1.s.read(&mut b)).await.expect("closed, not left serving");
    assert!(matches!(n, Ok(0) | Err(_)), "the association through port 1 ended");
    assert_eq!(a2.keep_alive().await, Status::SUCCESS, "port 2's association serves on");
    server.stop().await;
}

/// A notice still waiting for an AER when the host reads its log page (without RAE) is dropped: the host has
/// read the change, and delivering the notice afterwards would report it twice. The next change is reported.
#[tokio::test]
async fn a_notice_whose_log_was_read_before_an_aer_came_is_not_delivered_after() {
    let (server, addr) = start("").await;
    let (mut a, _) = Conn::admin(addr, NQN, false, false).await;
    a.set_feature(0x0B, 1 << 8).await;
    let with = |nsids: &[u32]| {
        let mut t = format!(
            "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n"
        );
        for n in nsids {
            t.push_str(&format!("[[subsystem.namespace]]\nnsid = {n}\nbackend = \"ram\"\nsize_mib = 4\n"));
        }
        Config::parse(&t, "reload").unwrap()
    };
    server.target.reload(&with(&[1, 2])).unwrap();
    // No AER yet: the notice waits. The host reads the Changed Namespace List anyway.
    let mut s = SubmissionEntry::new(admin::GET_LOG_PAGE, 0);
    s.dptr = SglDescriptor::transport(4096);
    holdfast_proto::sqe::get_log_page::set(&mut s, 0x04, 0, 4096, 0);
    let (r, list) = a.cmd(s, Bytes::new()).await;
    assert_eq!((r.status(), &list[..4]), (Status::SUCCESS, &[2u8, 0, 0, 0][..]));
    let aer_cid = a.post_aer().await;
    let early = tokio::time::timeout(Duration::from_millis(300), a.recv()).await;
    assert!(early.is_err(), "a notice for a change already read: {early:?}");
    // A later change is reported on that AER.
    server.target.reload(&with(&[1, 2, 3])).unwrap();
    let (r, _) = a.finish(aer_cid).await;
    assert_eq!(r.dw0.get(), 0x0004_0002, "notice / namespace attribute changed / log page 04h");
    server.stop().await;
}

/// A reload that changes a subsystem's connection policy notifies the discovery controllers too: they serve
/// that policy on their own policy page (a host may read it there before it connects).
#[tokio::test]
async fn a_policy_change_is_announced_on_the_discovery_controller_too() {
    let (server, addr) = start("").await;
    let (mut d, _) = Conn::admin(addr, fabrics::DISCOVERY_NQN, false, false).await;
    let aer = d.post_aer().await;
    tokio::time::sleep(Duration::from_millis(50)).await;
    let mut cfg = ports_config(&[(1, "127.0.0.1:0")]);
    cfg.subsystems[0].policy.ctrl_loss_tmo_ms = 123_000;
    server.target.reload(&cfg).unwrap();
    let (r, _) = d.finish(aer).await;
    let ev = holdfast_proto::features::AsyncEvent::from_dword(r.dw0.get());
    assert_eq!(
        (ev.info, ev.log_page),
        (holdfast_proto::policy::AEN_INFO_POLICY_CHANGED, holdfast_proto::policy::LID_HOLDFAST_POLICY),
        "policy-changed notice pointing at the policy page"
    );
    server.stop().await;
}

/// A discovery controller serves the policy of the first subsystem it lists to the host: a reload that lists
/// another first (here one added, sorting before) changes its page, so its generation moves and a
/// policy-changed notice is raised (found by a review: the page took the new subsystem's own generation, 1,
/// the same as before, and no notice came). A reload that changes nothing it serves moves nothing.
#[tokio::test]
async fn the_discovery_policy_page_moves_its_generation_when_it_serves_another_subsystem() {
    let cfg = |extra: &str| {
        let text = format!(
            "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n{extra}\
             [[subsystem]]\nnqn = \"{NQN}-b\"\nallow_any_host = true\n[subsystem.policy]\nkato_ms = 9000\n"
        );
        Config::parse(&text, "test").unwrap()
    };
    let mut server = Server::start(Target::new(&cfg(""), TargetSettings::default()).unwrap()).await.unwrap();
    let (mut d, _) = Conn::admin(server.bound[0].1, fabrics::DISCOVERY_NQN, false, false).await;
    async fn page(d: &mut Conn) -> holdfast_proto::policy::ConnectionPolicy {
        let mut s = SubmissionEntry::new(admin::GET_LOG_PAGE, 0);
        s.dptr = SglDescriptor::transport(512);
        holdfast_proto::sqe::get_log_page::set(&mut s, holdfast_proto::policy::LID_HOLDFAST_POLICY, 0, 512, 0);
        holdfast_proto::policy::ConnectionPolicy::from_bytes(&d.cmd(s, Bytes::new()).await.1).unwrap()
    }
    let before = page(&mut d).await;
    // Unchanged: no notice (a Keep Alive is answered before any completion of the AER).
    let aer = d.post_aer().await;
    server.reload(&cfg("")).await.unwrap();
    assert_eq!(d.keep_alive().await, Status::SUCCESS);
    assert_eq!(page(&mut d).await, before, "nothing the discovery controller serves changed");
    let added =
        format!("[[subsystem]]\nnqn = \"{NQN}-a\"\nallow_any_host = true\n[subsystem.policy]\nkato_ms = 6000\n");
    server.reload(&cfg(&added)).await.unwrap();
    let (r, _) = d.finish(aer).await;
    let ev = holdfast_proto::features::AsyncEvent::from_dword(r.dw0.get());
    assert_eq!(ev.log_page, holdfast_proto::policy::LID_HOLDFAST_POLICY, "a policy-changed notice");
    let after = page(&mut d).await;
    assert_eq!((before.kato_ms, after.kato_ms), (9000, 6000), "the page is now the first listed subsystem's");
    assert!(after.generation > before.generation, "generation {} -> {}", before.generation, after.generation);
    server.stop().await;
}

/// Every entry the discovery log gives for a wildcard port can be connected to. Port 1 on [::1], port 2 on
/// 0.0.0.0: a host discovering through port 1 was told port 2 is at ::1, where nothing listens (now port 2 is
/// left out for it: its address over IPv4 is not known from an IPv6 connection). Needs IPv6 loopback.
#[tokio::test]
async fn every_discovery_entry_for_a_wildcard_port_can_be_connected_to() {
    if std::net::TcpListener::bind("[::1]:0").is_err() {
        eprintln!("skipped: no IPv6 loopback here (the rule itself: discovery.rs unit test)");
        return;
    }
    let cfg = Config::parse(
        &format!(
            "[[port]]\nid = 1\nlisten = \"[::1]:0\"\n[[port]]\nid = 2\nlisten = \"0.0.0.0:0\"\n\
             [[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n[[subsystem.namespace]]\nnsid = 1\n\
             backend = \"ram\"\nsize_mib = 4\n"
        ),
        "t",
    )
    .unwrap();
    let server = Server::start(Target::new(&cfg, TargetSettings::default()).unwrap()).await.unwrap();
    let v6 = server.bound.iter().find(|b| b.0 == 1).unwrap().1;
    let (mut d, _) = Conn::admin(v6, fabrics::DISCOVERY_NQN, false, false).await;
    let mut s = SubmissionEntry::new(admin::GET_LOG_PAGE, 0);
    s.dptr = SglDescriptor::transport(8192);
    holdfast_proto::sqe::get_log_page::set(&mut s, 0x70, 0, 8192, 0);
    let (r, log) = d.cmd(s, Bytes::new()).await;
    assert_eq!(r.status(), Status::SUCCESS);
    let (_, entries) = holdfast_proto::log_page::parse_discovery_log(&log).unwrap();
    let ports: Vec<u16> = entries.iter().map(|e| e.portid.get()).collect();
    assert_eq!(ports, vec![1, 1], "port 1's subsystem and discovery entries; port 2 left out");
    for e in &entries {
        let (a, p) = (e.traddr_str(), e.trsvcid_str());
        let target: SocketAddr =
            if a.contains(':') { format!("[{a}]:{p}") } else { format!("{a}:{p}") }.parse().unwrap();
        let ok = TcpStream::connect(target).await;
        assert!(ok.is_ok(), "port {} entry (adrfam {}) says {target}: {:?}", e.portid.get(), e.adrfam, ok.err());
    }
    server.stop().await;
}

/// A backend that never blocks (so that its calls run on the connection's own task, as RAM's do) and panics on
/// every write: a bug in command handling, standing in for any.
struct PanicsOnWrite(std::sync::Arc<dyn holdfast_target::backend::Backend>);

impl holdfast_target::backend::Backend for PanicsOnWrite {
    fn size(&self) -> u64 {
        self.0.size()
    }
    fn blocking(&self) -> bool {
        false
    }
    fn read_at(&self, offset: u64, buf: &mut [u8], gate: &holdfast_target::backend::MediaGate) -> std::io::Result<()> {
        self.0.read_at(offset, buf, gate)
    }
    fn write_at(&self, _: u64, _: &[u8], _: bool, _: &holdfast_target::backend::MediaGate) -> std::io::Result<()> {
        panic!("a bug while handling a write (this test's backend)")
    }
    fn flush(&self, gate: &holdfast_target::backend::MediaGate) -> std::io::Result<()> {
        self.0.flush(gate)
    }
    fn write_zeroes(&self, o: u64, l: u64, gate: &holdfast_target::backend::MediaGate) -> std::io::Result<()> {
        self.0.write_zeroes(o, l, gate)
    }
    fn deallocate(&self, o: u64, l: u64, gate: &holdfast_target::backend::MediaGate) -> std::io::Result<()> {
        self.0.deallocate(o, l, gate)
    }
    fn describe(&self) -> String {
        "panics on write".into()
    }
}

/// A connection whose task panics (a bug) still gives its queue back, as a connection that closes does: its
/// connection closes, the host connects I/O queue 1 again on the same controller, and a Controller Level
/// Reset reads done (it waits for the I/O queues to be gone). Before, the queue stayed live for ever: the
/// queue ID refused, and CSTS.RDY stuck at 1 after CC.EN went 0.
#[tokio::test]
async fn a_connection_task_that_panics_still_gives_its_queue_back() {
    let (server, addr) = start("").await;
    let subsys = server.target.subsystem(NQN).unwrap();
    {
        let mut nss = subsys.namespaces.write();
        let ns = nss.get(&1).cloned().unwrap();
        let backend = std::sync::Arc::new(PanicsOnWrite(ns.backend.clone()));
        let replaced = holdfast_target::namespace::Namespace::new(1, ns.block_size, backend, ns.ids);
        nss.insert(1, std::sync::Arc::new(replaced));
    }
    let (mut a, cntlid) = Conn::admin(addr, NQN, false, false).await;
    let mut q = Conn::io(addr, &mut a, cntlid, false, false).await;
    let cid = q.next_cid();
    let mut sqe = rw_sqe(io::WRITE, 0, 1, SglDescriptor::incapsule(512));
    sqe.cid.set(cid);
    q.send(Pdu::CapsuleCmd(CapsuleCmd { sqe, data: Bytes::from(vec![5u8; 512]) })).await;
    assert!(closed_by_target(&mut q).await, "the connection whose task panicked stayed open");
    connect_queue_1_again(addr, cntlid, "its task panicked").await;
    assert_eq!(a.prop_set(property::CC, 0).await.status(), Status::SUCCESS);
    reset_done_then_enable(&mut a).await;
    server.stop().await;
}

/// Get Features `fid` with Select `sel` (and CDW11 `cdw11`, NSID `nsid`): the completion.
async fn get_feature_sel(c: &mut Conn, fid: u8, sel: u8, cdw11: u32, nsid: u32, sgl: u32) -> CompletionEntry {
    let mut s = SubmissionEntry::new(admin::GET_FEATURES, 0);
    s.nsid.set(nsid);
    s.dptr = SglDescriptor::transport(sgl);
    s.cdw10.set(fid as u32 | (sel as u32) << 8);
    s.cdw11.set(cdw11);
    c.cmd(s, Bytes::new()).await.0
}

/// Get Features with Select 010b (Saved) of a feature that is not saveable returns its default value, not its
/// current one (NVMe Base 2.0 §5.15, Select field; QEMU's controller answers the same). Every feature here is
/// unsaveable: Set Features with SV is Feature Identifier Not Saveable, Select 011b never reports SAVEABLE. And
/// Select 100b..111b is reserved: Invalid Field, for the features answered with a data buffer too.
#[tokio::test]
async fn get_features_saved_of_an_unsaveable_feature_is_its_default() {
    let (server, addr) = start("").await;
    let (mut a, _) = Conn::admin(addr, NQN, false, false).await;
    // Volatile Write Cache off, Number of Queues 2, KATO 7 s: Current says so, Default and Saved do not.
    a.set_feature(0x06, 0).await;
    a.set_feature(0x07, 0x0001_0001).await;
    a.set_feature(0x0F, 7000).await;
    for (fid, current, default) in [(0x06u8, 0u32, 1u32), (0x07, 0x0001_0001, 0x007F_007F), (0x0F, 7000, 5000)] {
        let r = get_feature_sel(&mut a, fid, 0, 0, 0, 0).await;
        assert_eq!((r.status(), r.dw0.get()), (Status::SUCCESS, current), "FID {fid:#x} current");
        let r = get_feature_sel(&mut a, fid, 1, 0, 0, 0).await;
        assert_eq!((r.status(), r.dw0.get()), (Status::SUCCESS, default), "FID {fid:#x} default");
        let r = get_feature_sel(&mut a, fid, 3, 0, 0, 0).await;
        assert_eq!(r.dw0.get() & 1, 0, "FID {fid:#x} is not saveable");
        let r = get_feature_sel(&mut a, fid, 2, 0, 0, 0).await;
        assert_eq!((r.status(), r.dw0.get()), (Status::SUCCESS, default), "FID {fid:#x} saved: the default");
    }
    // Reserved Select values, on a dword feature and on the two answered with data.
    for (fid, cdw11, sgl) in [(0x06u8, 0u32, 0u32), (0x16, 0, 512), (0x81, 1, 16)] {
        for sel in 4..8 {
            let r = get_feature_sel(&mut a, fid, sel, cdw11, 0, sgl).await;
            assert_eq!(r.status(), Status::INVALID_FIELD.with_dnr(), "FID {fid:#x} SEL {sel}");
        }
    }
    server.stop().await;
}

/// The fields of Get Log Page and Get/Set Features a host seldom sets, each answered as NVMe Base 2.0 says:
/// Offset Type (CDW14 bit 23) for logs that are not indexed, Invalid Field; the Commands Supported and Effects
/// log of another command set (CDW14 CSI), Invalid Log Page; the SMART log of one namespace where it is kept
/// for the controller only (LPA bit 0 clear), Invalid Field; Error Recovery one value per namespace, its NSID
/// checked (0h and FFFFFFFFh in a Get: Invalid Namespace; an NSID of no namespace: Invalid Field; FFFFFFFFh in
/// a Set: every namespace); Write Atomicity Normal of the controller; the Reservation Notification Mask read
/// for FFFFFFFFh, Invalid Field; a second Number of Queues, the first's allocation. Before, each was accepted
/// and answered as something else (a namespace's SMART log with the controller's figures, one Error Recovery
/// value for all namespaces, a second queue count granted).
#[tokio::test]
async fn rarely_set_log_and_feature_fields_are_checked() {
    let (server, addr) = start("").await;
    let (mut a, _) = Conn::admin(addr, NQN, false, false).await;
    let log = |lid: u8, nsid: u32, cdw14: u32, len: u32| {
        let mut s = SubmissionEntry::new(admin::GET_LOG_PAGE, 0);
        s.nsid.set(nsid);
        s.dptr = SglDescriptor::transport(len);
        holdfast_proto::sqe::get_log_page::set(&mut s, lid, 0, len, 0);
        s.cdw14.set(cdw14);
        s
    };
    let invalid_field = Status::INVALID_FIELD.with_dnr();
    assert_eq!(a.cmd(log(0x02, 0, 1 << 23, 512), Bytes::new()).await.0.status(), invalid_field, "OT");
    assert_eq!(a.cmd(log(0x02, 1, 0, 512), Bytes::new()).await.0.status(), invalid_field, "SMART of nsid 1");
    for nsid in [0, 0xFFFF_FFFF] {
        assert_eq!(a.cmd(log(0x02, nsid, 0, 512), Bytes::new()).await.0.status(), Status::SUCCESS, "SMART {nsid:#x}");
    }
    let (r, effects) = a.cmd(log(0x05, 0, 0, 4096), Bytes::new()).await;
    assert_eq!((r.status(), effects[4 * 0x02]), (Status::SUCCESS, 1), "effects of the NVM command set");
    let r = a.cmd(log(0x05, 0, 2 << 24, 4096), Bytes::new()).await.0;
    assert_eq!(r.status(), Status::INVALID_LOG_PAGE.with_dnr(), "effects of Zoned Namespaces");
    // The Reservation Notification page read from its end: nothing, not an error (past it is).
    let mut s = log(0x80, 0, 0, 4);
    s.cdw12.set(64);
    assert_eq!(a.cmd(s, Bytes::new()).await.0.status(), Status::SUCCESS, "LID 80h at its end");
    s.cdw12.set(68);
    assert_eq!(a.cmd(s, Bytes::new()).await.0.status(), invalid_field, "LID 80h past its end");

    let set = |fid: u32, nsid: u32, v: u32| {
        let mut s = SubmissionEntry::new(admin::SET_FEATURES, 0);
        s.nsid.set(nsid);
        s.cdw10.set(fid);
        s.cdw11.set(v);
        s
    };
    let invalid_ns = Status::INVALID_NAMESPACE.with_dnr();
    // Error Recovery (namespace specific): TLER 5 on namespace 1, the others untouched.
    assert_eq!(a.cmd(set(0x05, 1, 5), Bytes::new()).await.0.status(), Status::SUCCESS);
    let r = get_feature_sel(&mut a, 0x05, 0, 0, 1, 0).await;
    assert_eq!((r.status(), r.dw0.get()), (Status::SUCCESS, 5), "namespace 1's");
    for (nsid, want) in [(0, invalid_ns), (0xFFFF_FFFF, invalid_ns), (7, invalid_field), (0x10_0000, invalid_ns)] {
        assert_eq!(get_feature_sel(&mut a, 0x05, 0, 0, nsid, 0).await.status(), want, "Get 05h NSID {nsid:#x}");
    }
    for (nsid, want) in [(0, invalid_ns), (7, invalid_field)] {
        assert_eq!(a.cmd(set(0x05, nsid, 9), Bytes::new()).await.0.status(), want, "Set 05h NSID {nsid:#x}");
    }
    assert_eq!(a.cmd(set(0x05, 0xFFFF_FFFF, 9), Bytes::new()).await.0.status(), Status::SUCCESS, "every one");
    assert_eq!(get_feature_sel(&mut a, 0x05, 0, 0, 1, 0).await.dw0.get(), 9);
    assert_eq!(get_feature_sel(&mut a, 0x05, 3, 0, 1, 0).await.dw0.get(), 0b110, "changeable, namespace specific");
    // Write Atomicity Normal is the controller's.
    let r = a.cmd(set(0x0A, 1, 1), Bytes::new()).await.0;
    assert_eq!(r.status(), Status::FEATURE_NOT_NS_SPECIFIC.with_dnr(), "0Ah for namespace 1");
    assert_eq!(get_feature_sel(&mut a, 0x0A, 3, 0, 0, 0).await.dw0.get(), 0b100, "changeable only");
    // The reservation features read for FFFFFFFFh.
    for fid in [0x82, 0x83] {
        let r = get_feature_sel(&mut a, fid, 0, 0, 0xFFFF_FFFF, 0).await;
        assert_eq!(r.status(), invalid_field, "Get {fid:#x} NSID FFFFFFFFh");
    }
    // Number of Queues: allocated once; a second Set Features (before any I/O queue) is told the same.
    let r = a.cmd(set(0x07, 0, 0x0001_0001), Bytes::new()).await.0;
    assert_eq!((r.status(), r.dw0.get()), (Status::SUCCESS, 0x0001_0001), "two queues");
    let r = a.cmd(set(0x07, 0, 0x000F_000F), Bytes::new()).await.0;
    assert_eq!((r.status(), r.dw0.get()), (Status::SUCCESS, 0x0001_0001), "still two");
    // The discovery controller's failed commands are logged (ELPE and the More bit say so): its Error
    // Information log is there to read.
    let (mut d, _) = Conn::admin(addr, fabrics::DISCOVERY_NQN, false, false).await;
    let (r, _) = d.cmd(log(0x03, 0, 0, 512), Bytes::new()).await;
    assert_eq!(r.status(), Status::INVALID_LOG_PAGE.with_dnr(), "a log the discovery controller has not");
    assert!(d.more, "logged, with More");
    let (r, entries) = d.cmd(log(0x01, 0, 0, 64), Bytes::new()).await;
    assert_eq!(r.status(), Status::SUCCESS, "the discovery controller's Error Information log");
    let e = holdfast_proto::log_page::ErrorInformationEntry::from_slice(&entries).unwrap();
    assert_eq!((e.error_count.get(), Status::from_cqe_word(e.status.get())), (1, Status::INVALID_LOG_PAGE.with_dnr()));
    server.stop().await;
}

/// Set Features of a feature that is not namespace specific, naming a namespace (an NSID other than 0h and
/// FFFFFFFFh): Feature Not Namespace Specific (SCT 1h, SC 0Fh; NVMe Base 2.0 §5.27, and the status code's
/// definition), Invalid Namespace for an NSID above NN; nothing changes. QEMU's controller answers the same.
/// The namespace-specific feature (Error Recovery) takes the namespace.
#[tokio::test]
async fn set_features_naming_a_namespace_for_a_controller_feature_is_refused() {
    let (server, addr) = start("").await;
    let (mut a, _) = Conn::admin(addr, NQN, false, false).await;
    for (fid, v) in [(0x01u32, 3u32), (0x06, 0), (0x0B, 1 << 8), (0x0F, 9000), (0x80, 5)] {
        let before = get_feature_sel(&mut a, fid as u8, 0, 0, 0, 0).await.dw0.get();
        for (nsid, want) in [
            (1u32, Status::FEATURE_NOT_NS_SPECIFIC.with_dnr()),
            (7, Status::FEATURE_NOT_NS_SPECIFIC.with_dnr()),
            (0x10_0000, Status::INVALID_NAMESPACE.with_dnr()),
        ] {
            let mut s = SubmissionEntry::new(admin::SET_FEATURES, 0);
            s.nsid.set(nsid);
            s.cdw10.set(fid);
            s.cdw11.set(v);
            assert_eq!(a.cmd(s, Bytes::new()).await.0.status(), want, "FID {fid:#x} NSID {nsid:#x}");
        }
        let after = get_feature_sel(&mut a, fid as u8, 0, 0, 0, 0).await.dw0.get();
        assert_eq!(after, before, "FID {fid:#x} changed by a refused Set Features");
        // NSID 0h and FFFFFFFFh are the controller's.
        for nsid in [0, 0xFFFF_FFFF] {
            let mut s = SubmissionEntry::new(admin::SET_FEATURES, 0);
            s.nsid.set(nsid);
            s.cdw10.set(fid);
            s.cdw11.set(v);
            assert_eq!(a.cmd(s, Bytes::new()).await.0.status(), Status::SUCCESS, "FID {fid:#x} NSID {nsid:#x}");
        }
    }
    let mut s = SubmissionEntry::new(admin::SET_FEATURES, 0);
    s.nsid.set(1);
    s.cdw10.set(0x05);
    assert_eq!(a.cmd(s, Bytes::new()).await.0.status(), Status::SUCCESS, "Error Recovery of namespace 1");
    server.stop().await;
}

/// Set Features Asynchronous Event Configuration enabling an event the controller does not report (a bit
/// outside OAES and the SMART critical warnings it has): Invalid Field in Command, the configuration unchanged,
/// as Linux nvmet answers (nvmet_set_feat_async_event); before, the bit was dropped and the command succeeded,
/// so the host believed a notice enabled that would never come. On the discovery controller only its Discovery
/// Log Page Change notice exists.
#[tokio::test]
async fn set_features_enabling_an_event_the_controller_does_not_report_is_invalid_field() {
    let (server, addr) = start("").await;
    let (mut a, _) = Conn::admin(addr, NQN, false, false).await;
    a.set_feature(0x0B, 1 << 8).await;
    for bit in [9u32, 10, 31] {
        let mut s = SubmissionEntry::new(admin::SET_FEATURES, 0);
        s.cdw10.set(0x0B);
        s.cdw11.set(1 << 8 | 1 << bit);
        assert_eq!(a.cmd(s, Bytes::new()).await.0.status(), Status::INVALID_FIELD.with_dnr(), "AEC bit {bit}");
    }
    assert_eq!(get_feature_sel(&mut a, 0x0B, 0, 0, 0, 0).await.dw0.get(), 1 << 8, "configuration unchanged");
    let (mut d, _) = Conn::admin(addr, fabrics::DISCOVERY_NQN, false, false).await;
    d.set_feature(0x0B, 1 << 31).await;
    let mut s = SubmissionEntry::new(admin::SET_FEATURES, 0);
    s.cdw10.set(0x0B);
    s.cdw11.set(1 << 31 | 1 << 8);
    assert_eq!(d.cmd(s, Bytes::new()).await.0.status(), Status::INVALID_FIELD.with_dnr(), "discovery: NS attribute");
    assert_eq!(get_feature_sel(&mut d, 0x0B, 0, 0, 0, 0).await.dw0.get(), 1 << 31);
    server.stop().await;
}

/// A Controller Level Reset (CC.EN 1 to 0) stops the controller processing every outstanding command (NVMe
/// Base 2.0 §3.7.2), and commands are refused until it is enabled again: an admin command whose data was
/// solicited (R2T) before the reset and arrives after it does not run on the disabled controller.
#[tokio::test]
async fn an_admin_command_whose_data_arrives_after_a_controller_reset_does_not_run() {
    let (server, addr) = start("").await;
    let (mut a, _) = Conn::admin(addr, NQN, false, false).await;
    let mut s = SubmissionEntry::new(admin::SET_FEATURES, 40);
    s.cdw10.set(0x16); // Host Behavior Support
    s.dptr = SglDescriptor::transport(512);
    a.send(Pdu::CapsuleCmd(CapsuleCmd { sqe: s, data: Bytes::new() })).await;
    let Pdu::R2T(r2t) = a.recv().await else { panic!("expected an R2T") };
    assert_eq!(a.prop_set(property::CC, 0).await.status(), Status::SUCCESS);
    wait_rdy(&mut a, false).await;
    let mut data = vec![0u8; 512];
    data[0] = 1; // ACRE
    let h2c = H2CData { cccid: 40, ttag: r2t.ttag, datao: 0, data: Bytes::from(data), last: true };
    a.send(Pdu::H2CData(h2c)).await;
    let (r, _) = a.finish(40).await;
    assert_eq!(r.status(), Status::COMMAND_SEQUENCE_ERROR.with_dnr(), "Set Features ran on a disabled controller");
    assert_eq!(a.prop_get(property::CSTS, false).await.dw0.get() & csts::RDY, 0);
    server.stop().await;
}

// ---------------------------------------------------------------------------------------------------------
// DH-HMAC-CHAP (NVMe Base 2.0 §8.13.5): a host listed with keys authenticates on every queue.

mod dhchap {
    use super::*;
    use holdfast_proto::auth::{
        self as a, AuthCommand, AuthNegotiate, DhchapChallenge, DhchapFailure, DhchapReply, DhchapSecret,
        DhchapSuccess1, DhchapSuccess2, HashId,
    };

    const AUTHREQ_ATR: u32 = 1 << 17;

    fn secret(byte: u8, transform: Option<HashId>) -> DhchapSecret {
        DhchapSecret::new(&[byte; 32], transform)
    }

    /// A target whose subsystem lists HOSTNQN, with this `[[host]]` table's keys.
    async fn start_auth(host_key: &DhchapSecret, ctrl_key: Option<&DhchapSecret>, hash: &str) -> (Server, SocketAddr) {
        start_auth_with(host_key, ctrl_key, hash, "").await
    }

    /// [`start_auth`] with more lines for the `[[host]]` table (`dhchap_dhgroup = ...`).
    async fn start_auth_with(
        host_key: &DhchapSecret,
        ctrl_key: Option<&DhchapSecret>,
        hash: &str,
        more: &str,
    ) -> (Server, SocketAddr) {
        let mut config = auth_config(host_key, ctrl_key, hash);
        if !more.is_empty() {
            let text = config_text(host_key, ctrl_key, hash) + "\n" + more;
            config = Config::parse(&text, "test").unwrap();
        }
        let target = Target::new(&config, TargetSettings::default()).unwrap();
        let server = Server::start(target).await.unwrap();
        let addr = server.bound[0].1;
        (server, addr)
    }

    fn auth_config(host_key: &DhchapSecret, ctrl_key: Option<&DhchapSecret>, hash: &str) -> Config {
        Config::parse(&config_text(host_key, ctrl_key, hash), "test").unwrap()
    }

    fn config_text(host_key: &DhchapSecret, ctrl_key: Option<&DhchapSecret>, hash: &str) -> String {
        let ctrl = ctrl_key.map(|k| format!("dhchap_ctrl_key = \"{}\"\n", k.encode())).unwrap_or_default();
        let extra = format!(
            "allowed_hosts = [\"{HOSTNQN}\"]\n[[host]]\nnqn = \"{HOSTNQN}\"\ndhchap_key = \"{}\"\n{ctrl}dhchap_hash = \"{hash}\"\n",
            host_key.encode()
        );
        // The [[host]] table has to come after the subsystem's namespace (TOML arrays of tables).
        format!(
            "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"{NQN}\"\n{}\n[[subsystem.namespace]]\n\
             nsid = 1\nbackend = \"ram\"\nsize_mib = 4\nblock_size = 512\n{}",
            extra.lines().next().unwrap(),
            extra.lines().skip(1).collect::<Vec<_>>().join("\n")
        )
    }

    /// Enable the (authenticated) admin queue's controller and have it grant one I/O queue.
    async fn enable_with_one_io_queue(adm: &mut Conn) {
        assert_eq!(adm.prop_set(property::CC, cc::ENABLE_DEFAULT as u64).await.status(), Status::SUCCESS);
        wait_rdy(adm, true).await;
        let mut s = SubmissionEntry::new(admin::SET_FEATURES, 0);
        s.cdw10.set(0x07);
        s.cdw11.set(0x0001_0001);
        assert_eq!(adm.cmd(s, Bytes::new()).await.0.status(), Status::SUCCESS);
    }

    async fn auth_send(c: &mut Conn, msg: &[u8]) -> Status {
        let mut sqe = AuthCommand::new(true, msg.len() as u32).to_sqe();
        sqe.dptr = SglDescriptor::incapsule(msg.len() as u32);
        c.cmd(sqe, Bytes::copy_from_slice(msg)).await.0.status()
    }

    async fn auth_receive(c: &mut Conn, al: u32) -> (Status, Vec<u8>) {
        let (r, d) = c.cmd(AuthCommand::new(false, al).to_sqe(), Bytes::new()).await;
        (r.status(), d)
    }

    fn negotiate(tid: u16, hashes: &[u8], groups: &[u8]) -> Vec<u8> {
        AuthNegotiate {
            t_id: tid,
            sc_c: 0,
            napd: 1,
            authid: a::AUTH_ID_DHCHAP,
            hash_ids: hashes.to_vec(),
            dh_group_ids: groups.to_vec(),
        }
        .to_bytes()
    }

    /// The host's side of a whole exchange, as the Linux host runs it (it offers every hash and group);
    /// `ctrl_key`: bidirectional. Returns the hash the controller chose, or the Failure1 it sent instead.
    async fn authenticate(
        c: &mut Conn,
        key: &DhchapSecret,
        ctrl_key: Option<&DhchapSecret>,
        tid: u16,
    ) -> Result<HashId, DhchapFailure> {
        authenticate_dh(c, key, ctrl_key, tid, a::dh_group::NULL).await
    }

    /// [`authenticate`], expecting the controller to pick DH group `group`: with an FFDHE group, the host
    /// computes its value and the augmented challenges as the Linux host does.
    async fn authenticate_dh(
        c: &mut Conn,
        key: &DhchapSecret,
        ctrl_key: Option<&DhchapSecret>,
        tid: u16,
        group: u8,
    ) -> Result<HashId, DhchapFailure> {
        assert_eq!(auth_send(c, &negotiate(tid, &[1, 2, 3], &[0, 1, 2, 3, 4, 5])).await, Status::SUCCESS);
        let (st, d) = auth_receive(c, 4096).await;
        assert_eq!(st, Status::SUCCESS);
        assert_eq!(d.len(), 4096, "Authentication Receive returns AL bytes");
        if let Some(f) = DhchapFailure::parse(&d) {
            return Err(f);
        }
        let ch = DhchapChallenge::parse(&d).expect("a Challenge");
        let g = a::ffdhe::group(group);
        assert_eq!((ch.t_id, ch.dh_group, ch.dh_value.len()), (tid, group, g.map_or(0, |g| g.len)));
        let y = [0x42u8; a::ffdhe::PRIVATE_LEN];
        let (dh_value, shared) = match g {
            Some(g) => (g.public_value(&y), g.shared_secret(&y, &ch.dh_value).expect("the controller's value")),
            None => (vec![], vec![]),
        };
        let aug = |c: &[u8]| a::ffdhe::response_challenge(ch.hash, g.map(|_| &shared[..]), c);
        let r1 = a::host_response(ch.hash, &key.transform(HOSTNQN), &aug(&ch.challenge), ch.seqnum, tid, HOSTNQN, NQN);
        let c2 = vec![0x5A; ch.hash.len()];
        let reply = DhchapReply {
            t_id: tid,
            seqnum: if ctrl_key.is_some() { 77 } else { 0 },
            response: r1,
            challenge: ctrl_key.map(|_| c2.clone()),
            dh_value,
        };
        assert_eq!(auth_send(c, &reply.to_bytes()).await, Status::SUCCESS);
        let (st, d) = auth_receive(c, 4096).await;
        assert_eq!(st, Status::SUCCESS);
        if let Some(f) = DhchapFailure::parse(&d) {
            return Err(f);
        }
        let s1 = DhchapSuccess1::parse(&d).expect("a Success1");
        assert_eq!((s1.t_id, s1.hl as usize), (tid, ch.hash.len()));
        match ctrl_key {
            Some(k) => {
                let r2 = s1.response.expect("R2 for a host that challenged the controller");
                assert!(
                    a::verify_controller_response(ch.hash, &k.transform(NQN), &aug(&c2), 77, tid, NQN, HOSTNQN, &r2),
                    "the controller's response R2"
                );
                assert_eq!(auth_send(c, &DhchapSuccess2 { t_id: tid }.to_bytes()).await, Status::SUCCESS);
            }
            None => assert_eq!(s1.response, None),
        }
        Ok(ch.hash)
    }

    async fn read_block0(q: &mut Conn) -> Status {
        q.cmd(rw_sqe(io::READ, 0, 1, SglDescriptor::transport(512)), Bytes::new()).await.0.status()
    }

    #[tokio::test]
    async fn a_host_with_a_key_authenticates_on_every_queue_before_anything_runs() {
        let (key, ckey) = (secret(1, None), secret(2, Some(HashId::Sha256)));
        let (server, addr) = start_auth(&key, Some(&ckey), "sha384").await;
        let mut adm = Conn::ic(addr, false, false).await;
        let r = adm.connect(0, 0xFFFF, NQN, 5000).await;
        assert_eq!(r.status(), Status::SUCCESS);
        assert_eq!(r.dw0.get() & AUTHREQ_ATR, AUTHREQ_ATR, "Connect response says authentication is required");
        let cntlid = r.dw0.get() as u16;
        // Before authentication: nothing else runs, Property Get and Set included.
        let req = Status::AUTHENTICATION_REQUIRED.with_dnr();
        assert_eq!(adm.prop_get(property::CAP, true).await.status(), req);
        assert_eq!(adm.prop_set(property::CC, cc::ENABLE_DEFAULT as u64).await.status(), req);
        assert_eq!(adm.keep_alive().await, req);
        let mut s = SubmissionEntry::new(admin::IDENTIFY, 0);
        s.dptr = SglDescriptor::transport(4096);
        s.cdw10.set(1);
        assert_eq!(adm.cmd(s, Bytes::new()).await.0.status(), req);
        // An I/O queue cannot join the controller either (not enabled).
        let mut q = Conn::ic(addr, false, false).await;
        assert_eq!(q.connect(1, cntlid, NQN, 0).await.status(), Status::COMMAND_SEQUENCE_ERROR.with_dnr());
        // Unidirectional on the admin queue, with the hash the configuration names.
        assert_eq!(authenticate(&mut adm, &key, None, 1).await, Ok(HashId::Sha384));
        enable_with_one_io_queue(&mut adm).await;
        assert_eq!(adm.identify_controller().await.cntlid.get(), cntlid);
        // The I/O queue must authenticate on its own: bidirectional here.
        let mut q = Conn::ic(addr, false, false).await;
        let r = q.connect(1, cntlid, NQN, 0).await;
        assert_eq!((r.status(), r.dw0.get() & AUTHREQ_ATR), (Status::SUCCESS, AUTHREQ_ATR));
        assert_eq!(read_block0(&mut q).await, req);
        assert_eq!(authenticate(&mut q, &key, Some(&ckey), 9).await, Ok(HashId::Sha384));
        assert_eq!(read_block0(&mut q).await, Status::SUCCESS);
        server.stop().await;
    }

    /// A queue that must authenticate stays counted among the connections without an NVM controller (limited
    /// in all and per address) until it has: a host NQN is no secret, and each Connect as a listed host makes a
    /// controller that an unauthenticated peer would otherwise hold for up to 10 s per connection, uncounted.
    #[tokio::test]
    async fn a_queue_counts_among_the_limited_until_authenticated() {
        let (key, ckey) = (secret(1, None), secret(2, None));
        let (server, addr) = start_auth(&key, Some(&ckey), "sha256").await;
        let waiting = || server.target.unbound.count();
        let until = |want: usize| async move {
            let t0 = std::time::Instant::now();
            while waiting() != want {
                assert!(t0.elapsed() < Duration::from_secs(5), "{} waiting, not {want}", waiting());
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
        };
        let mut adm = Conn::ic(addr, false, false).await;
        let r = adm.connect(0, 0xFFFF, NQN, 5000).await;
        assert_eq!(r.status(), Status::SUCCESS);
        let cntlid = r.dw0.get() as u16;
        let mut other = Conn::ic(addr, false, false).await;
        assert_eq!(other.connect(0, 0xFFFF, NQN, 5000).await.status(), Status::SUCCESS);
        until(2).await; // both bound to a controller, neither authenticated
                        // Unidirectional: authenticated at Success1 (an Authentication Receive).
        assert_eq!(authenticate(&mut adm, &key, None, 1).await, Ok(HashId::Sha256));
        until(1).await;
        // A failed exchange: the queue stays counted until the target closes it.
        assert!(authenticate(&mut other, &secret(3, None), None, 2).await.is_err());
        assert!(closed_by_target(&mut other).await);
        until(0).await;
        // Bidirectional, on an I/O queue: authenticated at the host's Success2 (an Authentication Send).
        enable_with_one_io_queue(&mut adm).await;
        let mut q = Conn::ic(addr, false, false).await;
        assert_eq!(q.connect(1, cntlid, NQN, 0).await.status(), Status::SUCCESS);
        until(1).await;
        assert_eq!(authenticate(&mut q, &key, Some(&ckey), 3).await, Ok(HashId::Sha256));
        until(0).await;
        assert_eq!(read_block0(&mut q).await, Status::SUCCESS);
        server.stop().await;
    }

    /// `dhchap_dhgroup = "ffdhe2048"`: the Challenge carries the controller's value, the Reply must carry the
    /// host's, and both responses are over the augmented challenges; an offer without the group, a Reply
    /// without a value or with one out of range, and a response over the plain challenge are refused.
    #[tokio::test]
    async fn an_ffdhe_group_is_used_when_configured_and_offered() {
        let (key, ckey) = (secret(1, None), secret(2, Some(HashId::Sha256)));
        let (server, addr) = start_auth_with(&key, Some(&ckey), "sha256", "dhchap_dhgroup = \"ffdhe2048\"").await;
        let mut adm = Conn::ic(addr, false, false).await;
        let cntlid = adm.connect(0, 0xFFFF, NQN, 5000).await.dw0.get() as u16;
        assert_eq!(authenticate_dh(&mut adm, &key, None, 1, 0x01).await, Ok(HashId::Sha256));
        enable_with_one_io_queue(&mut adm).await;
        let mut q = Conn::ic(addr, false, false).await;
        assert_eq!(q.connect(1, cntlid, NQN, 0).await.status(), Status::SUCCESS);
        assert_eq!(authenticate_dh(&mut q, &key, Some(&ckey), 2, 0x01).await, Ok(HashId::Sha256));
        assert_eq!(read_block0(&mut q).await, Status::SUCCESS);

        // Refusals, each on a new association: (the offer, the Reply's DH value, use the augmented C1) -> why.
        let g = a::ffdhe::group(0x01).unwrap();
        let y = [9u8; a::ffdhe::PRIVATE_LEN];
        for (groups, value, augment, why) in [
            (&[0u8, 2, 3][..], None, true, a::explanation::DHGROUP_UNUSABLE),
            (&[0, 1], Some(vec![]), true, a::explanation::INCORRECT_PAYLOAD),
            (&[0, 1], Some(vec![1]), true, a::explanation::DHGROUP_UNUSABLE),
            (&[0, 1], Some(vec![0xFF; 256]), true, a::explanation::DHGROUP_UNUSABLE),
            (&[0, 1], Some(g.public_value(&y)), false, a::explanation::FAILED),
        ] {
            let mut adm = Conn::ic(addr, false, false).await;
            assert_eq!(adm.connect(0, 0xFFFF, NQN, 5000).await.status(), Status::SUCCESS);
            assert_eq!(auth_send(&mut adm, &negotiate(5, &[1], groups)).await, Status::SUCCESS);
            let d = auth_receive(&mut adm, 4096).await.1;
            let f = match (value, DhchapFailure::parse(&d)) {
                (None, Some(f)) => f,
                (Some(value), None) => {
                    let ch = DhchapChallenge::parse(&d).unwrap();
                    assert_eq!((ch.dh_group, ch.dh_value.len()), (0x01, 256));
                    let c = match g.shared_secret(&y, &ch.dh_value) {
                        Ok(z) if augment => a::ffdhe::augmented_challenge(ch.hash, &z, &ch.challenge),
                        _ => ch.challenge.clone(),
                    };
                    let r1 = a::host_response(ch.hash, &key.transform(HOSTNQN), &c, ch.seqnum, 5, HOSTNQN, NQN);
                    let reply = DhchapReply { t_id: 5, seqnum: 0, response: r1, challenge: None, dh_value: value };
                    assert_eq!(auth_send(&mut adm, &reply.to_bytes()).await, Status::SUCCESS);
                    DhchapFailure::parse(&auth_receive(&mut adm, 4096).await.1).expect("Failure1")
                }
                (v, f) => panic!("{groups:?} {v:?}: {f:?}"),
            };
            assert_eq!((f.failure1, f.explanation), (true, why), "offer {groups:?}");
            assert!(closed_by_target(&mut adm).await);
        }
        server.stop().await;
    }

    /// With the default (null) group, a host that offers no NULL group gets the first FFDHE group it offers.
    #[tokio::test]
    async fn a_host_without_the_null_group_gets_its_first_ffdhe_group() {
        let key = secret(1, None);
        let (server, addr) = start_auth(&key, None, "sha256").await;
        let mut adm = Conn::ic(addr, false, false).await;
        assert_eq!(adm.connect(0, 0xFFFF, NQN, 5000).await.status(), Status::SUCCESS);
        assert_eq!(auth_send(&mut adm, &negotiate(3, &[1], &[3, 1])).await, Status::SUCCESS);
        let ch = DhchapChallenge::parse(&auth_receive(&mut adm, 4096).await.1).unwrap();
        assert_eq!((ch.dh_group, ch.dh_value.len()), (0x03, 512));
        server.stop().await;
    }

    #[tokio::test]
    async fn a_wrong_key_gets_failure1_and_the_association_ends() {
        let key = secret(1, Some(HashId::Sha256));
        let (server, addr) = start_auth(&key, None, "sha256").await;
        let mut adm = Conn::ic(addr, false, false).await;
        assert_eq!(adm.connect(0, 0xFFFF, NQN, 5000).await.status(), Status::SUCCESS);
        let f = authenticate(&mut adm, &secret(3, Some(HashId::Sha256)), None, 1).await.unwrap_err();
        assert_eq!(
            (f.failure1, f.t_id, f.reason, f.explanation),
            (true, 1, a::REASON_AUTHENTICATION_FAILURE, a::explanation::FAILED)
        );
        assert!(closed_by_target(&mut adm).await, "the target closes the queue after Failure1");
        // The right key still works on a new association.
        let mut adm = Conn::ic(addr, false, false).await;
        assert_eq!(adm.connect(0, 0xFFFF, NQN, 5000).await.status(), Status::SUCCESS);
        assert_eq!(authenticate(&mut adm, &key, None, 2).await, Ok(HashId::Sha256));
        server.stop().await;
    }

    /// A reload (SIGHUP) gives new associations the new key; the association already authenticated goes on.
    #[tokio::test]
    async fn a_reload_changes_the_key_for_new_associations() {
        let (old, new) = (secret(1, None), secret(4, Some(HashId::Sha512)));
        let (server, addr) = start_auth(&old, None, "sha256").await;
        let mut first = Conn::ic(addr, false, false).await;
        assert_eq!(first.connect(0, 0xFFFF, NQN, 0).await.status(), Status::SUCCESS);
        assert_eq!(authenticate(&mut first, &old, None, 1).await, Ok(HashId::Sha256));
        let summary = server.target.reload(&auth_config(&new, None, "sha512")).unwrap();
        assert!(summary.notes.iter().any(|n| n.contains("DH-HMAC-CHAP host keys updated")), "{:?}", summary.notes);
        let mut adm = Conn::ic(addr, false, false).await;
        assert_eq!(adm.connect(0, 0xFFFF, NQN, 0).await.status(), Status::SUCCESS);
        let f = authenticate(&mut adm, &old, None, 2).await.unwrap_err();
        assert_eq!(f.explanation, a::explanation::FAILED, "the old key no longer authenticates");
        let mut adm = Conn::ic(addr, false, false).await;
        assert_eq!(adm.connect(0, 0xFFFF, NQN, 0).await.status(), Status::SUCCESS);
        assert_eq!(authenticate(&mut adm, &new, None, 3).await, Ok(HashId::Sha512));
        assert_eq!(
            first.prop_get(property::CAP, true).await.status(),
            Status::SUCCESS,
            "the first association goes on"
        );
        server.stop().await;
    }

    #[tokio::test]
    async fn an_offer_of_no_known_group_or_out_of_order_messages_fail_with_their_reason() {
        let key = secret(1, None);
        let (server, addr) = start_auth(&key, None, "sha512").await;
        // No group we know: DH group not usable.
        let mut adm = Conn::ic(addr, false, false).await;
        assert_eq!(adm.connect(0, 0xFFFF, NQN, 5000).await.status(), Status::SUCCESS);
        assert_eq!(auth_send(&mut adm, &negotiate(4, &[1], &[6, 0x20])).await, Status::SUCCESS);
        let f = DhchapFailure::parse(&auth_receive(&mut adm, 8).await.1).unwrap();
        assert_eq!((f.failure1, f.explanation), (true, a::explanation::DHGROUP_UNUSABLE));
        assert!(closed_by_target(&mut adm).await);
        // A Reply before any Challenge: incorrect protocol message.
        let mut adm = Conn::ic(addr, false, false).await;
        assert_eq!(adm.connect(0, 0xFFFF, NQN, 5000).await.status(), Status::SUCCESS);
        let reply = DhchapReply { t_id: 0, seqnum: 0, response: vec![0; 64], challenge: None, dh_value: vec![] };
        assert_eq!(auth_send(&mut adm, &reply.to_bytes()).await, Status::SUCCESS);
        let f = DhchapFailure::parse(&auth_receive(&mut adm, 4096).await.1).unwrap();
        assert_eq!(f.explanation, a::explanation::INCORRECT_MESSAGE);
        assert!(closed_by_target(&mut adm).await);
        // A message out of step for another transaction: incorrect message (the step is checked first, as nvmet).
        let mut adm = Conn::ic(addr, false, false).await;
        assert_eq!(adm.connect(0, 0xFFFF, NQN, 5000).await.status(), Status::SUCCESS);
        assert_eq!(auth_send(&mut adm, &negotiate(7, &[3], &[0])).await, Status::SUCCESS);
        assert!(DhchapChallenge::parse(&auth_receive(&mut adm, 4096).await.1).is_some());
        assert_eq!(auth_send(&mut adm, &DhchapSuccess2 { t_id: 8 }.to_bytes()).await, Status::SUCCESS);
        let f = DhchapFailure::parse(&auth_receive(&mut adm, 4096).await.1).unwrap();
        assert_eq!(f.explanation, a::explanation::INCORRECT_MESSAGE);
        assert!(closed_by_target(&mut adm).await);
        // A wrong SECP is an invalid field, as nvmet answers.
        let mut adm = Conn::ic(addr, false, false).await;
        assert_eq!(adm.connect(0, 0xFFFF, NQN, 5000).await.status(), Status::SUCCESS);
        let mut cmd = AuthCommand::new(false, 16);
        cmd.secp = 0xEA;
        assert_eq!(adm.cmd(cmd.to_sqe(), Bytes::new()).await.0.status(), Status::INVALID_FIELD.with_dnr());
        server.stop().await;
    }

    #[tokio::test]
    async fn a_host_without_keys_and_hosts_of_any_host_subsystems_do_not_authenticate() {
        // Any host allowed: the Connect says nothing of authentication, and commands run.
        let (server, addr) = start("").await;
        let mut adm = Conn::ic(addr, false, false).await;
        let r = adm.connect(0, 0xFFFF, NQN, 5000).await;
        assert_eq!((r.status(), r.dw0.get() & AUTHREQ_ATR), (Status::SUCCESS, 0));
        assert_eq!(adm.prop_get(property::CAP, true).await.status(), Status::SUCCESS);
        // Authentication Send on a queue that needs none: Command Sequence Error.
        assert_eq!(auth_send(&mut adm, &negotiate(1, &[1], &[0])).await, Status::COMMAND_SEQUENCE_ERROR.with_dnr());
        server.stop().await;
    }

    #[tokio::test]
    async fn an_exchange_not_finished_in_time_closes_the_connection() {
        let key = secret(1, None);
        let (server, addr) = start_auth(&key, None, "sha256").await;
        let mut adm = Conn::ic(addr, false, false).await;
        // KATO 0: no keep-alive timer to end the association first.
        assert_eq!(adm.connect(0, 0xFFFF, NQN, 0).await.status(), Status::SUCCESS);
        assert_eq!(auth_send(&mut adm, &negotiate(1, &[1], &[0])).await, Status::SUCCESS);
        let t0 = std::time::Instant::now();
        let mut rest = Vec::new();
        let r = tokio::time::timeout(Duration::from_secs(30), adm.s.read_to_end(&mut rest)).await;
        assert!(r.is_ok(), "still open after 30 s");
        assert!(t0.elapsed() >= Duration::from_secs(9), "closed after {:?}", t0.elapsed());
        server.stop().await;
    }

    /// A refused Reply's AUTH_Failure1 stands: a Negotiate sent instead of reading it does not start the exchange
    /// over (it did: one connection had a fresh guess for every refused Reply until its time ran out; found by a
    /// review). The next Receive gets the Failure1, and the queue closes.
    #[tokio::test]
    async fn a_negotiate_after_a_refused_reply_does_not_start_over() {
        let key = secret(1, None);
        let (server, addr) = start_auth(&key, None, "sha256").await;
        let mut adm = Conn::ic(addr, false, false).await;
        adm.connect(0, 0xFFFF, NQN, 5000).await;
        assert_eq!(auth_send(&mut adm, &negotiate(1, &[1], &[0])).await, Status::SUCCESS);
        let (_, d) = auth_receive(&mut adm, 4096).await;
        DhchapChallenge::parse(&d).expect("a Challenge");
        let bad = DhchapReply { t_id: 1, seqnum: 0, response: vec![0; 32], challenge: None, dh_value: vec![] };
        assert_eq!(auth_send(&mut adm, &bad.to_bytes()).await, Status::SUCCESS);
        let _ = auth_send(&mut adm, &negotiate(2, &[1], &[0])).await;
        let (_, d) = auth_receive(&mut adm, 4096).await;
        let f = DhchapFailure::parse(&d).expect("AUTH_Failure1, not a new Challenge");
        assert!(f.failure1);
        assert!(closed_by_target(&mut adm).await);
        server.stop().await;
    }

    /// A target whose host authenticates with `key` (unidirectional, SHA-256), an admin queue authenticated and
    /// enabled with one I/O queue granted: the target, its address, the admin queue and its CNTLID.
    async fn authenticated_with_one_io_queue(key: &DhchapSecret) -> (Server, SocketAddr, Conn, u16) {
        let (server, addr) = start_auth(key, None, "sha256").await;
        let mut adm = Conn::ic(addr, false, false).await;
        let cntlid = adm.connect(0, 0xFFFF, NQN, 5000).await.dw0.get() as u16;
        assert_eq!(authenticate(&mut adm, key, None, 1).await, Ok(HashId::Sha256));
        enable_with_one_io_queue(&mut adm).await;
        (server, addr, adm, cntlid)
    }

    /// The host ends the exchange on `c` with AUTH_Failure2.
    async fn give_up(c: &mut Conn) {
        let f2 = DhchapFailure { t_id: 0, failure1: false, reason: 1, explanation: 1 };
        let _ = auth_send(c, &f2.to_bytes()).await;
    }

    /// An I/O queue that never authenticated and fails (here: AUTH_Failure2 at once) is closed alone: the
    /// association its host authenticated goes on. Anyone who knows the host NQN, Host ID and CNTLID (sent in
    /// clear) can Connect such a queue; its failure ended the whole association (found by a review; nvmet does
    /// the same).
    #[tokio::test]
    async fn a_failed_io_queue_that_never_authenticated_does_not_end_the_association() {
        let key = secret(1, None);
        let (server, addr, mut adm, cntlid) = authenticated_with_one_io_queue(&key).await;
        let mut evil = Conn::ic(addr, false, false).await;
        assert_eq!(evil.connect(1, cntlid, NQN, 0).await.status(), Status::SUCCESS);
        give_up(&mut evil).await;
        assert!(closed_by_target(&mut evil).await, "the failed queue is closed");
        // The authenticated admin queue still answers, and the host's own I/O queue 1 connects and authenticates.
        assert_eq!(adm.keep_alive().await, Status::SUCCESS, "the association was ended");
        let mut io = Conn::ic(addr, false, false).await;
        assert_eq!(io.connect(1, cntlid, NQN, 0).await.status(), Status::SUCCESS);
        assert_eq!(authenticate(&mut io, &key, None, 2).await, Ok(HashId::Sha256));
        server.stop().await;
    }

    /// An I/O queue takes its queue ID once its host has proven itself, not at its Connect: a Connect anyone
    /// can send (host NQN, Host ID and CNTLID go in clear) held the ID against the host's own Connect, which got
    /// Command Sequence Error until the squatter's 10 s to authenticate ran out (found by a review; nvmet does
    /// the same). Of two queues of one ID waiting to authenticate, the first whose host proves itself takes it;
    /// the other's exchange fails; and the squatter's closing leaves the live queue's ID taken.
    #[tokio::test]
    async fn an_io_queue_takes_its_id_once_authenticated_not_at_connect() {
        let key = secret(1, None);
        let (server, addr, mut adm, cntlid) = authenticated_with_one_io_queue(&key).await;
        let mut squatter = Conn::ic(addr, false, false).await;
        assert_eq!(squatter.connect(1, cntlid, NQN, 0).await.status(), Status::SUCCESS);
        let mut late = Conn::ic(addr, false, false).await;
        assert_eq!(late.connect(1, cntlid, NQN, 0).await.status(), Status::SUCCESS, "the ID is not taken yet");
        let mut io = Conn::ic(addr, false, false).await;
        assert_eq!(io.connect(1, cntlid, NQN, 0).await.status(), Status::SUCCESS, "the host's own Connect");
        assert_eq!(authenticate(&mut io, &key, None, 2).await, Ok(HashId::Sha256));
        assert_eq!(read_block0(&mut io).await, Status::SUCCESS);
        // Another queue of that ID, its host proven too, is refused once the ID is taken.
        let f = authenticate(&mut late, &key, None, 3).await.expect_err("the ID is taken");
        assert_eq!(f.explanation, a::explanation::FAILED);
        assert!(closed_by_target(&mut late).await, "the refused queue is closed");
        // The squatter gives up (here: AUTH_Failure2); the live queue keeps its ID and its association.
        give_up(&mut squatter).await;
        assert!(closed_by_target(&mut squatter).await, "the squatter is closed");
        let mut again = Conn::ic(addr, false, false).await;
        assert_eq!(
            again.connect(1, cntlid, NQN, 0).await.status(),
            Status::COMMAND_SEQUENCE_ERROR.with_dnr(),
            "I/O queue 1 is still live"
        );
        assert_eq!(read_block0(&mut io).await, Status::SUCCESS);
        assert_eq!(adm.keep_alive().await, Status::SUCCESS);
        server.stop().await;
    }
}

/// The completions of `cids`, in whatever order they come (C2HData is not expected): their statuses by CID.
async fn statuses_of(q: &mut Conn, cids: &[u16]) -> std::collections::HashMap<u16, Status> {
    let mut got = std::collections::HashMap::new();
    while got.len() < cids.len() {
        match q.recv().await {
            Pdu::CapsuleResp(r) => {
                let cid = r.cqe.cid();
                assert!(cids.contains(&cid), "completion for CID {cid}, not one of {cids:?}");
                let status = Status(r.cqe.status().0 & !(1 << 13)); // More: an Error Information entry was made
                assert!(got.insert(cid, status).is_none(), "two completions for CID {cid}");
            }
            p => panic!("expected completions, got {p:?}"),
        }
    }
    got
}

/// The first `blocks` 512-byte blocks of namespace 1.
async fn read0(q: &mut Conn, blocks: u32) -> Vec<u8> {
    q.cmd(rw_sqe(io::READ, 0, blocks, SglDescriptor::transport(blocks * 512)), Bytes::new()).await.1
}

/// A Compare or Write of `blocks` 512-byte blocks at `slba` with in-capsule data `byte`, fused as `fuse`.
fn fused_rw(op: u8, slba: u64, blocks: u32, fuse: u8, byte: u8) -> (SubmissionEntry, Bytes) {
    let len = blocks * 512;
    let mut s = rw_sqe(op, slba, blocks, SglDescriptor::incapsule(len));
    s.set_fuse(fuse);
    (s, Bytes::from(vec![byte; len as usize]))
}

/// Compare (ONCS bit 0) and the Compare and Write fused operation (FUSES bit 0; NVMe Base 2.0 §3.4.2), with
/// every status a fused pair can end in: both done; a miscompare (Compare Failure, and the Write aborted as its
/// fused command failed, nothing written); a first followed by another command (Missing Fused Command for the
/// first, the other runs); a second alone (Missing Fused); the two on different blocks (Invalid Field for the
/// second, Failed Fused for the first); a fused Read (Invalid Field) whose second is aborted; and a pair whose
/// data comes by R2T.
#[tokio::test]
async fn compare_and_fused_compare_and_write_answer_as_the_spec_says() {
    use holdfast_proto::sqe::{FUSE_FIRST, FUSE_SECOND};
    let (server, addr) = start("").await;
    let (mut a, cntlid) = Conn::admin(addr, NQN, false, false).await;
    let id = a.identify_controller().await;
    assert_ne!(id.oncs.get() & holdfast_proto::identify::ONCS_COMPARE, 0, "ONCS: Compare");
    assert_eq!(id.fuses.get(), holdfast_proto::identify::FUSES_COMPARE_AND_WRITE, "FUSES: Compare and Write");
    assert_eq!(id.acwu.get(), 63, "ACWU: MDTS (256 KiB) in 4 KiB blocks, 0's based");
    // FUSE on an admin or Fabrics command: Invalid Field, at once (not held for a second).
    let mut p = PropertyCommand::new(0, property::CSTS, false, None).to_sqe();
    p.set_fuse(FUSE_FIRST);
    assert_eq!(a.cmd(p, Bytes::new()).await.0.status(), Status::INVALID_FIELD.with_dnr(), "a fused Property Get");
    assert_eq!(a.keep_alive().await, Status::SUCCESS, "the command after it runs");
    let mut ka = SubmissionEntry::new(admin::KEEP_ALIVE, 0);
    ka.set_fuse(0b11); // reserved
    assert_eq!(a.cmd(ka, Bytes::new()).await.0.status(), Status::INVALID_FIELD.with_dnr(), "FUSE 11b");
    let mut q = Conn::io(addr, &mut a, cntlid, false, false).await;
    let (s, d) = fused_rw(io::WRITE, 0, 2, 0, 0xAA);
    assert_eq!(q.cmd(s, d).await.0.status(), Status::SUCCESS);

    // Compare alone.
    let (s, d) = fused_rw(io::COMPARE, 0, 2, 0, 0xAA);
    assert_eq!(q.cmd(s, d).await.0.status(), Status::SUCCESS, "equal data");
    let (s, mut d) = fused_rw(io::COMPARE, 0, 2, 0, 0xAA);
    let mut last_differs = d.to_vec();
    last_differs[1023] = 0;
    d = Bytes::from(last_differs);
    assert_eq!(q.cmd(s, d).await.0.status(), Status::COMPARE_FAILURE.with_dnr(), "one byte differs");

    // Compare and Write: done, then a miscompare that writes nothing.
    let pair = |expect: u8, new: u8| {
        [fused_rw(io::COMPARE, 0, 2, FUSE_FIRST, expect), fused_rw(io::WRITE, 0, 2, FUSE_SECOND, new)]
    };
    let [(c, cd), (w, wd)] = pair(0xAA, 0xCC);
    q.send_raw(&capsules(&q.f, [(10, c, cd), (11, w, wd)])).await;
    let st = statuses_of(&mut q, &[10, 11]).await;
    assert_eq!((st[&10], st[&11]), (Status::SUCCESS, Status::SUCCESS));
    assert_eq!(read0(&mut q, 2).await, vec![0xCC; 1024], "the write landed");
    let [(c, cd), (w, wd)] = pair(0xAA, 0xDD);
    q.send_raw(&capsules(&q.f, [(12, c, cd), (13, w, wd)])).await;
    let st = statuses_of(&mut q, &[12, 13]).await;
    assert_eq!((st[&12], st[&13]), (Status::COMPARE_FAILURE.with_dnr(), Status::ABORTED_FAILED_FUSED));
    assert_eq!(read0(&mut q, 2).await, vec![0xCC; 1024], "a miscompare writes nothing");

    // A first whose next command is not its second; a second alone.
    let (c, cd) = fused_rw(io::COMPARE, 0, 2, FUSE_FIRST, 0xCC);
    let (w, wd) = fused_rw(io::WRITE, 4, 1, 0, 0xEE);
    q.send_raw(&capsules(&q.f, [(14, c, cd), (15, w, wd)])).await;
    let st = statuses_of(&mut q, &[14, 15]).await;
    assert_eq!((st[&14], st[&15]), (Status::ABORTED_MISSING_FUSED, Status::SUCCESS));
    let (w, wd) = fused_rw(io::WRITE, 0, 2, FUSE_SECOND, 0x11);
    assert_eq!(q.cmd(w, wd).await.0.status(), Status::ABORTED_MISSING_FUSED, "a second without a first");
    assert_eq!(read0(&mut q, 2).await, vec![0xCC; 1024], "neither wrote");

    // Not the same blocks; a fused Read.
    let (c, cd) = fused_rw(io::COMPARE, 0, 2, FUSE_FIRST, 0xCC);
    let (w, wd) = fused_rw(io::WRITE, 1, 2, FUSE_SECOND, 0x22);
    q.send_raw(&capsules(&q.f, [(16, c, cd), (17, w, wd)])).await;
    let st = statuses_of(&mut q, &[16, 17]).await;
    assert_eq!((st[&16], st[&17]), (Status::ABORTED_FAILED_FUSED, Status::INVALID_FIELD.with_dnr()));
    let mut r = rw_sqe(io::READ, 0, 2, SglDescriptor::transport(1024));
    r.set_fuse(FUSE_FIRST);
    let (w, wd) = fused_rw(io::WRITE, 0, 2, FUSE_SECOND, 0x33);
    q.send_raw(&capsules(&q.f, [(18, r, Bytes::new()), (19, w, wd)])).await;
    let st = statuses_of(&mut q, &[18, 19]).await;
    assert_eq!((st[&18], st[&19]), (Status::INVALID_FIELD.with_dnr(), Status::ABORTED_FAILED_FUSED));
    assert_eq!(read0(&mut q, 2).await, vec![0xCC; 1024], "neither wrote");

    // 64 KiB each, data by R2T: the first's asked for, then the second's.
    let mut c = rw_sqe(io::COMPARE, 0, 128, SglDescriptor::transport(64 << 10));
    c.set_fuse(FUSE_FIRST);
    let mut w = rw_sqe(io::WRITE, 0, 128, SglDescriptor::transport(64 << 10));
    w.set_fuse(FUSE_SECOND);
    for slba in (0..128).step_by(32) {
        let (s, d) = fused_rw(io::WRITE, slba, 32, 0, 0x5A); // in-capsule: 16 KiB at most
        assert_eq!(q.cmd(s, d).await.0.status(), Status::SUCCESS);
    }
    q.send_raw(&capsules(&q.f, [(20, c, Bytes::new()), (21, w, Bytes::new())])).await;
    for (cid, byte) in [(20u16, 0x5Au8), (21, 0xA5)] {
        let Pdu::R2T(r) = q.recv().await else { panic!("expected the R2T of CID {cid}") };
        assert_eq!((r.cccid, r.r2to, r.r2tl), (cid, 0, 64 << 10));
        let data = Bytes::from(vec![byte; 64 << 10]);
        q.send(Pdu::H2CData(H2CData { cccid: cid, ttag: r.ttag, datao: 0, data, last: true })).await;
    }
    let st = statuses_of(&mut q, &[20, 21]).await;
    assert_eq!((st[&20], st[&21]), (Status::SUCCESS, Status::SUCCESS));
    assert_eq!(read0(&mut q, 128).await, vec![0xA5; 64 << 10]);
    server.stop().await;
}

/// A fused pair whose second's data fails its digest: the second fails with Transient Transport Error and
/// the first, whose data had come, is aborted (Failed Fused Command) instead of waiting for ever; nothing is
/// written, and the queue goes on.
#[tokio::test]
async fn a_fused_write_whose_data_fails_its_digest_aborts_its_compare() {
    use holdfast_proto::sqe::{FUSE_FIRST, FUSE_SECOND};
    let (server, addr) = start("").await;
    let (mut a, cntlid) = Conn::admin(addr, NQN, false, true).await;
    let mut q = Conn::io(addr, &mut a, cntlid, false, true).await;
    let (c, cd) = fused_rw(io::COMPARE, 0, 32, FUSE_FIRST, 0);
    let mut w = rw_sqe(io::WRITE, 0, 32, SglDescriptor::transport(16 << 10));
    w.set_fuse(FUSE_SECOND);
    q.send_raw(&capsules(&q.f, [(5, c, cd), (6, w, Bytes::new())])).await;
    let Pdu::R2T(r) = q.recv().await else { panic!("expected the write's R2T") };
    assert_eq!(r.cccid, 6);
    let h2c =
        Pdu::H2CData(H2CData { cccid: 6, ttag: r.ttag, datao: 0, data: Bytes::from(vec![9u8; 16 << 10]), last: true });
    let mut b = BytesMut::from(&h2c.to_bytes(&q.f)[..]);
    b[200] ^= 1;
    q.send_raw(&b).await;
    let st = statuses_of(&mut q, &[5, 6]).await;
    assert_eq!((st[&5], st[&6]), (Status::ABORTED_FAILED_FUSED, Status::TRANSIENT_TRANSPORT_ERROR));
    assert_block0_zero(&mut q, "the pair never ran").await;
    server.stop().await;
}

/// The Reservation Notification log page (LID 80h) of controller `a`, read without RAE: (Log Page Count, type,
/// available after it, NSID).
async fn resv_notice(a: &mut Conn) -> (u64, u8, u8, u32) {
    use holdfast_proto::log_page::ReservationNotification;
    use zerocopy::FromBytes;
    let mut s = SubmissionEntry::new(admin::GET_LOG_PAGE, 0);
    s.dptr = SglDescriptor::transport(64);
    holdfast_proto::sqe::get_log_page::set(&mut s, 0x80, 0, 64, 0);
    let (r, page) = a.cmd(s, Bytes::new()).await;
    assert_eq!(r.status(), Status::SUCCESS);
    let n = ReservationNotification::read_from_bytes(&page).unwrap();
    (n.lpc.get(), n.rnlpt, n.nalp, n.nsid.get())
}

/// Reservation notices (NVMe Base 2.0 §8.19.6): a host whose registration another host preempts gets an I/O
/// Command Specific event pointing at log page 80h, which says Registration Preempted for namespace 1 (count
/// 1, none after it) and is empty once read; a holder's release of a Registrants Only reservation tells the
/// other registrants Reservation Released; a Clear tells them Reservation Preempted. A host that masks a kind
/// (Feature 82h) gets none of it, and the issuing host never hears of its own command.
#[tokio::test]
async fn reservation_notices_reach_the_other_hosts_controllers() {
    use holdfast_proto::log_page::rnlpt;
    use holdfast_proto::reservation::ReservationKeys;
    use zerocopy::IntoBytes;
    let (server, addr) = start("").await;
    let (mut aa, mut qa) = host_queues(addr, HOSTID, HOSTNQN).await;
    let (mut ba, mut qb) =
        host_queues(addr, [0x22; 16], "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000002").await;
    let resv = |op: u8, cdw10: u32, keys: &[u8]| resv_cmd(op, 1, cdw10, keys);
    let keys = |c: u64, o: u64| ReservationKeys::new(c, o).as_bytes().to_vec();
    for (q, key) in [(&mut qa, 0xA1), (&mut qb, 0xB1)] {
        let (s, d) = resv(io::RESERVATION_REGISTER, 0, &keys(0, key));
        assert_eq!(q.cmd(s, d).await.0.status(), Status::SUCCESS);
    }
    let aer_a = aa.post_aer().await;
    let aer_b = ba.post_aer().await;
    // B preempts A's registration (no reservation: by key).
    let (s, d) = resv(io::RESERVATION_ACQUIRE, 1 | 1 << 8, &keys(0xB1, 0xA1));
    assert_eq!(qb.cmd(s, d).await.0.status(), Status::SUCCESS);
    let (r, _) = aa.finish(aer_a).await;
    assert_eq!(r.dw0.get(), 0x0080_0006, "I/O Command Specific, Reservation Log Page Available, LID 80h");
    assert_eq!(resv_notice(&mut aa).await, (1, rnlpt::REGISTRATION_PREEMPTED, 0, 1));
    assert_eq!(resv_notice(&mut aa).await, (0, rnlpt::EMPTY, 0, 0), "taken by the read");

    // A registers again; B takes Write Exclusive - Registrants Only and releases it: A hears Released.
    let (s, d) = resv(io::RESERVATION_REGISTER, 0, &keys(0, 0xA2));
    assert_eq!(qa.cmd(s, d).await.0.status(), Status::SUCCESS);
    let aer_a = aa.post_aer().await;
    let (s, d) = resv(io::RESERVATION_ACQUIRE, 3 << 8, &keys(0xB1, 0));
    assert_eq!(qb.cmd(s, d).await.0.status(), Status::SUCCESS);
    let (s, d) = resv(io::RESERVATION_RELEASE, 3 << 8, &0xB1u64.to_le_bytes());
    assert_eq!(qb.cmd(s, d).await.0.status(), Status::SUCCESS);
    assert_eq!(aa.finish(aer_a).await.0.dw0.get(), 0x0080_0006);
    assert_eq!(resv_notice(&mut aa).await, (2, rnlpt::RESERVATION_RELEASED, 0, 1));

    // A masks Reservation Preempted for namespace 1; B clears: A hears nothing; B never heard of its own.
    let mut mask = SubmissionEntry::new(admin::SET_FEATURES, 0);
    mask.nsid.set(1);
    mask.cdw10.set(0x82);
    mask.cdw11.set(holdfast_proto::features::resv_mask::RESPRE);
    assert_eq!(aa.cmd(mask, Bytes::new()).await.0.status(), Status::SUCCESS);
    let mut g = SubmissionEntry::new(admin::GET_FEATURES, 0);
    g.nsid.set(1);
    g.cdw10.set(0x82);
    assert_eq!(aa.cmd(g, Bytes::new()).await.0.dw0.get(), holdfast_proto::features::resv_mask::RESPRE);
    let aer_a = aa.post_aer().await;
    let (s, d) = resv(io::RESERVATION_RELEASE, 1, &0xB1u64.to_le_bytes());
    assert_eq!(qb.cmd(s, d).await.0.status(), Status::SUCCESS);
    assert_eq!(resv_notice(&mut aa).await, (0, rnlpt::EMPTY, 0, 0), "masked");
    assert_eq!(resv_notice(&mut ba).await, (0, rnlpt::EMPTY, 0, 0), "its own commands");
    mask.cdw11.set(1); // bit 0 is reserved
    assert_eq!(aa.cmd(mask, Bytes::new()).await.0.status(), Status::INVALID_FIELD.with_dnr());
    let _ = (aer_a, aer_b);
    server.stop().await;
}

/// Identify CNS 08h, the I/O Command Set Independent Identify Namespace (NVMe Base 2.0 Figure 280, mandatory for
/// an NVMe 2.0 I/O controller; recent Linux hosts read it first): shared, every reservation type, ANA group 1,
/// ready (NSTAT bit 0; a Linux host skips a namespace without it); zeroes for an inactive NSID; Invalid
/// Namespace for FFFFFFFFh, as CNS 00h.
#[tokio::test]
async fn identify_cs_independent_namespace_says_ready() {
    use holdfast_proto::identify::{self as id, IdentifyNamespaceIndependent};
    let (server, addr) = start("").await;
    let (mut a, _) = Conn::admin(addr, NQN, false, false).await;
    let ident = |nsid: u32| {
        let mut s = SubmissionEntry::new(admin::IDENTIFY, 0);
        s.nsid.set(nsid);
        s.dptr = SglDescriptor::transport(4096);
        s.cdw10.set(id::CNS_CS_INDEPENDENT_NAMESPACE as u32);
        s
    };
    let (r, d) = a.cmd(ident(1), Bytes::new()).await;
    assert_eq!(r.status(), Status::SUCCESS);
    let n = IdentifyNamespaceIndependent::from_slice(&d).unwrap();
    assert_eq!((n.nmic, n.rescap, n.anagrpid.get(), n.nsattr, n.nstat), (id::NMIC_SHARED, 0xFE, 1, 0, id::NSTAT_READY));
    let (r, d) = a.cmd(ident(5), Bytes::new()).await;
    assert_eq!((r.status(), d), (Status::SUCCESS, vec![0u8; 4096]), "an inactive NSID");
    assert_eq!(a.cmd(ident(0xFFFF_FFFF), Bytes::new()).await.0.status(), Status::INVALID_NAMESPACE.with_dnr());
    server.stop().await;
}
