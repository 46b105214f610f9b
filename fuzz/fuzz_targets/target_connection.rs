//! Fuzz the target's TCP transport end to end (`holdfast_target::transport::tcp` behind a running `Server`,
//! namespace 1 on RAM, namespace 2 on a file):
//! a hostile host on a loopback connection sends the PDUs the input chooses (commands with any opcode, SGL and
//! in-capsule data, I/O commands fused or not, H2CData for any command, tag, offset and length, termination
//! requests, PDUs a host never sends, bytes that are no PDU at all, data with a bad digest, PDUs split across
//! writes), then closes. The target must never panic (libFuzzer's panic hook aborts on a panic in any task), and:
//!
//! - everything it sends decodes as well-formed PDUs with the digests negotiated, answers only commands that
//!   were sent, C2HData and R2Ts only within the data of a command sent with that CID (until raw bytes went
//!   out, which may have begun a PDU the next one completed), and nothing after a C2HTermReq;
//! - it closes the connection once the host has closed its side (no hang, within 10 s);
//! - no controller and no connection waiting for a Connect outlives the connections (within 10 s).
//!
//! Input: byte 0: bit 0 header digests, bit 1 data digests, bit 2 the script runs on the admin queue (else on
//! I/O queue 1), bit 3 the script's connection sends no Connect (it starts right after the ICResp), bit 4 the
//! script's connection sends no ICReq either, bit 5 the discovery subsystem (the script then runs on its admin
//! queue), bit 6 DH-HMAC-CHAP (below); then the script, one operation after another (see `Host::op`; operation
//! 10 moves the script between the admin queue and I/O queue 1).
//!
//! DH-HMAC-CHAP: with bit 6 both queues connect as a host that must authenticate on a second subsystem (a
//! `[[host]]` table with a key and a controller key, the subsystem listing it). The set-up authenticates the
//! admin queue (bidirectionally) before enabling the controller, and the I/O queue unless bit 7 is set (with
//! bit 7 and bit 2, not the admin queue either, nor is the controller enabled): the script's queue may then
//! still have to authenticate, and operation 9 (else the end of the script) plays the host's side of the
//! exchange (see `Host::auth_op`): Negotiate, Authentication Receive, a Reply with R1 computed from the last
//! Challenge received (right key or not, with C2 or not), Success2, Failure2, any message, in the capsule or
//! by R2T. Checks, beyond the above: while the script's queue has yet to authenticate (no Reply with the right
//! R1 sent), no command but a Fabrics one completes successfully; a Failure1 received means the queue is
//! closed (the target closes within 10 s of the host closing, as for every run).
#![no_main]
use bytes::{Bytes, BytesMut};
use holdfast_proto::auth::{
    self as a, AuthCommand, AuthNegotiate, DhchapChallenge, DhchapFailure, DhchapReply, DhchapSecret, DhchapSuccess2,
    HashId, MessageHeader,
};
use holdfast_proto::decoder::{DecodeError, Limits, PduDecoder, Role};
use holdfast_proto::fabrics::{cc, property, ConnectCommand, ConnectData, PropertyCommand, DISCOVERY_NQN};
use holdfast_proto::opcode::{admin, io};
use holdfast_proto::pdu::{C2HData, CapsuleCmd, CapsuleResp, Framing, H2CData, IcReq, Pdu, TermReq, R2T};
use holdfast_proto::sgl::SglDescriptor;
use holdfast_proto::{CompletionEntry, Status, SubmissionEntry};
use holdfast_target::{Server, Target};
use libfuzzer_sys::fuzz_target;
use std::collections::HashMap;
use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::{Arc, OnceLock};
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const NQN: &str = "nqn.2026-01.io.holdfast:fuzz";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-00000000f023";
/// The subsystem whose host must authenticate, the host, its key and the controller key.
const AUTH_NQN: &str = "nqn.2026-01.io.holdfast:fuzz-auth";
const AUTH_HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000c3";
fn auth_keys() -> (DhchapSecret, DhchapSecret) {
    (DhchapSecret::new(&[0x66; 32], Some(HashId::Sha512)), DhchapSecret::new(&[0x77; 48], None))
}
/// The namespace: 1 MiB in 512-byte blocks.
const BLOCKS: u64 = 2048;

struct World {
    rt: tokio::runtime::Runtime,
    target: Arc<Target>,
    addr: SocketAddr,
    _server: Server,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        // Namespace 2 is a file, served by the file backend's I/O threads: commands that complete on another
        // thread, after their connection may have gone.
        let file = std::env::temp_dir().join(format!("holdfast-fuzz-target-connection-{}.img", std::process::id()));
        std::fs::File::create(&file).and_then(|f| f.set_len(1 << 20)).unwrap();
        let file_ns = format!(
            "[[subsystem.namespace]]\nnsid = 2\nbackend = \"file\"\npath = {:?}\nblock_size = 512\n",
            file.display().to_string()
        );
        let (key, ckey) = auth_keys();
        let auth_subsystem = format!(
            "[[subsystem]]\nnqn = \"{AUTH_NQN}\"\nallowed_hosts = [\"{AUTH_HOSTNQN}\"]\n[[subsystem.namespace]]\nnsid = 1\n\
             backend = \"ram\"\nsize_mib = 1\nblock_size = 512\n[[host]]\nnqn = \"{AUTH_HOSTNQN}\"\n\
             dhchap_key = \"{}\"\ndhchap_ctrl_key = \"{}\"\ndhchap_hash = \"sha256\"\n",
            key.encode(),
            ckey.encode()
        );
        let (target, server) = target::start(&rt, NQN, &format!("{file_ns}{auth_subsystem}"));
        // Open now: no file left behind by each fuzzing process.
        let _ = std::fs::remove_file(&file);
        let addr = server.bound[0].1;
        World { rt, target, addr, _server: server }
    })
}

#[path = "../common/input.rs"]
mod input;
#[path = "../common/socket.rs"]
mod socket;
#[path = "../common/target.rs"]
mod target;
use input::Input;

fn pattern(from: usize, len: usize) -> Bytes {
    (from..from + len).map(|i| (i as u8).wrapping_mul(31) ^ 0x5A).collect::<Vec<u8>>().into()
}

/// One connection to the target, as a host (well-behaved or not).
struct Host {
    s: TcpStream,
    dec: PduDecoder,
    buf: BytesMut,
    f: Framing,
    /// For each CID sent: the largest data length any command sent with it described.
    sent: HashMap<u16, usize>,
    /// R2Ts received: (CID, TTAG, offset, length, bytes of it sent so far).
    r2ts: Vec<(u16, u16, usize, usize, usize)>,
    /// The target sent a C2HTermReq.
    terminated: bool,
    /// The target closed its side.
    closed: bool,
    /// The next PDU goes out in two writes, the target running in between.
    split_next: Option<u8>,
    next_cid: u16,
    /// The ICReq/ICResp exchange is done.
    negotiated: bool,
    /// Raw bytes went out: a PDU they began may have been completed by the next one sent, so the target may
    /// run commands (and answer CIDs) this side never recorded. Only the checks that hold whatever the
    /// target was sent stay on (well-formed PDUs, nothing after a C2HTermReq, closing).
    desynced: bool,
    /// The host NQN this connection connects as.
    hostnqn: &'static str,
    /// DH-HMAC-CHAP: the last Authentication Receive's CID and the data that came for it.
    auth_rx: Option<(u16, Vec<u8>)>,
    /// The last Challenge received, and the T_ID of the last Negotiate sent.
    auth_ch: Option<DhchapChallenge>,
    auth_tid: u16,
    /// C2 and S2 of the last Reply sent.
    auth_c2: Option<(Vec<u8>, u32)>,
    /// The queue may be authenticated: the set-up did it, or a Reply with the right R1 went out.
    auth_maybe: bool,
    /// Commands (not Fabrics) sent while the queue had yet to authenticate: none may succeed.
    gated: HashSet<u16>,
}

impl Host {
    async fn open(addr: SocketAddr, hostnqn: &'static str) -> Host {
        let s = TcpStream::connect(addr).await.expect("connect to the target");
        let _ = s.set_nodelay(true);
        // Closed with a reset: no TIME_WAIT connection left behind by each run.
        #[allow(deprecated)]
        let _ = s.set_linger(Some(Duration::ZERO));
        Host {
            s,
            dec: PduDecoder::new(Role::Host, Limits { max_incapsule: 0, max_h2c_data: 0, max_c2h_data: 4 << 20 }),
            buf: BytesMut::new(),
            f: Framing::default(),
            sent: HashMap::new(),
            r2ts: Vec::new(),
            terminated: false,
            closed: false,
            split_next: None,
            next_cid: 0x100,
            negotiated: false,
            desynced: false,
            hostnqn,
            auth_rx: None,
            auth_ch: None,
            auth_tid: 0,
            auth_c2: None,
            auth_maybe: true,
            gated: HashSet::new(),
        }
    }

    async fn write(&mut self, b: &[u8]) {
        let b = match self.split_next.take() {
            Some(at) if b.len() > 1 => {
                let at = 1 + at as usize % (b.len() - 1);
                if self.s.write_all(&b[..at]).await.is_err() {
                    self.closed = true;
                    return;
                }
                tokio::task::yield_now().await;
                self.drain();
                &b[at..]
            }
            _ => b,
        };
        if self.s.write_all(b).await.is_err() {
            self.closed = true;
        }
    }

    async fn send(&mut self, p: &Pdu) {
        if let Pdu::CapsuleCmd(c) = p {
            let len = c.sqe.dptr.len() as usize;
            let cid = c.sqe.cid.get();
            // Only a CID never used before is checked: an earlier command with it may still be answered.
            let fresh = !self.sent.contains_key(&cid);
            let e = self.sent.entry(cid).or_default();
            *e = (*e).max(len);
            if fresh && !self.auth_maybe && c.sqe.opcode != holdfast_proto::opcode::FABRICS {
                self.gated.insert(cid);
            } else {
                self.gated.remove(&cid);
            }
        }
        let b = p.to_bytes(&self.f);
        self.write(&b).await;
    }

    /// Take whatever the target has sent, without waiting, and check it.
    fn drain(&mut self) {
        while !self.closed {
            match socket::read_ready(&self.s, &mut self.buf) {
                socket::Ready::Bytes => {}
                socket::Ready::Nothing => break,
                socket::Ready::Closed => self.closed = true,
            }
            while let Some(p) = self.next_pdu() {
                self.check(p);
            }
        }
    }

    fn next_pdu(&mut self) -> Option<Pdu> {
        match self.dec.decode(&mut self.buf) {
            Ok(p) => p,
            Err(DecodeError::Fatal(f)) => panic!("the target sent a malformed PDU: {f}"),
            Err(DecodeError::DataDigest { .. }) => panic!("the target sent data with a bad digest"),
        }
    }

    fn check(&mut self, p: Pdu) {
        if std::env::var_os("TARGET_CONNECTION_DEBUG").is_some() {
            match &p {
                Pdu::C2HData(d) => eprintln!("target: C2HData {:#x} at {} ({} bytes)", d.cccid, d.datao, d.data.len()),
                p => eprintln!("target: {p:?}"),
            }
        }
        assert!(!self.terminated, "the target sent {:?} after its C2HTermReq", p.pdu_type());
        let desynced = self.desynced;
        let known = |cid: u16| if desynced { Some(usize::MAX / 2) } else { self.sent.get(&cid).copied() };
        match p {
            // The answer to an ICReq the script sent as raw bytes: framed as it asked from here on.
            Pdu::IcResp(r) if !self.negotiated => {
                self.negotiated = true;
                self.dec.set_negotiated(r.hdgst, r.ddgst, 0);
                self.f = Framing { hdgst: r.hdgst, ddgst: r.ddgst, pda: 0 };
            }
            Pdu::CapsuleResp(r) => {
                assert!(known(r.cqe.cid()).is_some(), "a completion for CID {:#x}, never sent", r.cqe.cid());
                if !desynced && self.gated.remove(&r.cqe.cid()) {
                    assert!(
                        !r.cqe.status().is_success(),
                        "command {:#x} succeeded on a queue yet to authenticate",
                        r.cqe.cid()
                    );
                }
            }
            Pdu::C2HData(d) if self.auth_rx.as_ref().is_some_and(|(cid, _)| *cid == d.cccid) => {
                let len = known(d.cccid).unwrap_or(0);
                assert!(d.datao as usize + d.data.len() <= len, "C2HData past an Authentication Receive's length");
                let buf = &mut self.auth_rx.as_mut().unwrap().1;
                let end = d.datao as usize + d.data.len();
                if buf.len() < end {
                    buf.resize(end, 0);
                }
                buf[d.datao as usize..end].copy_from_slice(&d.data);
            }
            Pdu::C2HData(d) => {
                let len = known(d.cccid).unwrap_or_else(|| panic!("C2HData for CID {:#x}, never sent", d.cccid));
                assert!(
                    d.datao as usize + d.data.len() <= len,
                    "C2HData (offset {}, {} bytes) past the {len} bytes of command {:#x}",
                    d.datao,
                    d.data.len(),
                    d.cccid
                );
            }
            Pdu::R2T(r) => {
                let len = known(r.cccid).unwrap_or_else(|| panic!("R2T for CID {:#x}, never sent", r.cccid));
                let (o, l) = (r.r2to as usize, r.r2tl as usize);
                assert!(l > 0 && o + l <= len, "R2T (offset {o}, {l} bytes) for the {len} bytes of {:#x}", r.cccid);
                self.r2ts.push((r.cccid, r.ttag, o, l, 0));
            }
            Pdu::C2HTermReq(_) => self.terminated = true,
            other => panic!("the target sent a {:?} PDU", other.pdu_type()),
        }
    }

    /// Wait for the target's answer to command `cid` (well-behaved set-up steps); its completion.
    async fn wait(&mut self, cid: u16) -> Option<CompletionEntry> {
        let r = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                while let Some(p) = self.next_pdu() {
                    if let Pdu::CapsuleResp(r) = &p {
                        if r.cqe.cid() == cid {
                            return Some(r.cqe);
                        }
                    }
                    self.check(p);
                }
                if self.closed {
                    return None;
                }
                match self.s.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => self.closed = true,
                    Ok(_) => {}
                }
            }
        })
        .await;
        r.expect("no answer from the target within 10 s")
    }

    async fn ic(&mut self, hdgst: bool, ddgst: bool) -> bool {
        self.write(&Pdu::IcReq(IcReq { pfv: 0, hpda: 0, hdgst, ddgst, maxr2t: 0 }).to_bytes(&Framing::default())).await;
        let r = tokio::time::timeout(Duration::from_secs(10), async {
            loop {
                if let Some(p) = self.next_pdu() {
                    return matches!(p, Pdu::IcResp(_));
                }
                match self.s.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => return false,
                    Ok(_) => {}
                }
            }
        })
        .await
        .expect("no ICResp within 10 s");
        self.negotiated = true;
        self.dec.set_negotiated(hdgst, ddgst, 0);
        self.f = Framing { hdgst, ddgst, pda: 0 };
        r
    }

    async fn command(&mut self, mut sqe: SubmissionEntry, data: Bytes) -> Option<CompletionEntry> {
        let cid = self.next_cid;
        self.next_cid += 1;
        sqe.cid.set(cid);
        self.send(&Pdu::CapsuleCmd(CapsuleCmd { sqe, data })).await;
        self.wait(cid).await
    }

    async fn connect(&mut self, subnqn: &str, qid: u16, cntlid: u16) -> Option<u16> {
        let c = ConnectCommand::new(0, qid, 31, if qid == 0 { 30_000 } else { 0 });
        let d = ConnectData::new([0xF3; 16], cntlid, subnqn, self.hostnqn);
        let r = self.command(c.to_sqe(), Bytes::copy_from_slice(zerocopy::IntoBytes::as_bytes(&d))).await?;
        r.status().is_success().then(|| r.dw0.get() as u16)
    }

    /// The data the last Authentication Receive brought: a Challenge is kept.
    fn auth_received(&mut self) {
        let Some((_, d)) = self.auth_rx.take() else { return };
        let Some(h) = MessageHeader::peek(&d) else { return };
        if (h.auth_type, h.auth_id) == (a::auth_type::DHCHAP, a::message::CHALLENGE) {
            if let Some(ch) = DhchapChallenge::parse(&d) {
                self.auth_ch = Some(ch);
            }
        }
    }

    /// An Authentication Send of `msg` (in the capsule, or by R2T: the data then comes from the script's
    /// H2CData operations), with a fresh CID.
    fn auth_send_pdu(&mut self, msg: &[u8], r2t: bool) -> (u16, Pdu) {
        self.next_cid += 1;
        let cid = self.next_cid;
        let mut sqe = AuthCommand::new(true, msg.len() as u32).to_sqe();
        sqe.cid.set(cid);
        let data = if r2t {
            Bytes::new()
        } else {
            sqe.dptr = SglDescriptor::incapsule(msg.len() as u32);
            Bytes::copy_from_slice(msg)
        };
        (cid, Pdu::CapsuleCmd(CapsuleCmd { sqe, data }))
    }

    fn auth_receive_pdu(&mut self, al: u32) -> (u16, Pdu) {
        self.auth_received();
        self.next_cid += 1;
        let cid = self.next_cid;
        let mut sqe = AuthCommand::new(false, al).to_sqe();
        sqe.cid.set(cid);
        self.auth_rx = Some((cid, Vec::new()));
        (cid, Pdu::CapsuleCmd(CapsuleCmd { sqe, data: Bytes::new() }))
    }

    /// The host's Reply to the last Challenge: R1 with the right key (or the controller key, a wrong one), C2
    /// when `bidi`. Whether it is the right R1 for a Challenge received.
    fn auth_reply(&mut self, right: bool, bidi: bool, s2: u32) -> (Vec<u8>, bool) {
        self.auth_received();
        let (key, ckey) = auth_keys();
        let good = self.auth_ch.is_some() && right;
        let ch = self.auth_ch.clone().unwrap_or(DhchapChallenge {
            t_id: self.auth_tid,
            hash: HashId::Sha256,
            dh_group: 0,
            seqnum: 1,
            challenge: vec![0; 32],
            dh_value: Vec::new(),
        });
        let k = if right { key } else { ckey }.transform(self.hostnqn);
        let r1 = a::host_response(ch.hash, &k, &ch.challenge, ch.seqnum, ch.t_id, self.hostnqn, AUTH_NQN);
        let c2 = bidi.then(|| vec![0xC2; ch.hash.len()]);
        let seqnum = if bidi { s2 | 1 } else { 0 };
        self.auth_c2 = c2.clone().map(|c| (c, seqnum));
        let r = DhchapReply { t_id: ch.t_id, seqnum, response: r1, challenge: c2, dh_value: Vec::new() };
        (r.to_bytes(), good)
    }

    fn negotiate(&mut self, tid: u16, wide: bool) -> Vec<u8> {
        self.auth_tid = tid;
        let dh_group_ids = if wide { (0..=5).collect() } else { vec![0] };
        AuthNegotiate { t_id: tid, sc_c: 0, napd: 1, authid: a::AUTH_ID_DHCHAP, hash_ids: vec![1, 2, 3], dh_group_ids }
            .to_bytes()
    }

    /// A whole bidirectional exchange, as a well-behaved host runs it in the set-up; whether it succeeded.
    async fn authenticate(&mut self) -> bool {
        let m = self.negotiate(7, false);
        let (cid, p) = self.auth_send_pdu(&m, false);
        self.send(&p).await;
        if !self.wait(cid).await.is_some_and(|c| c.status().is_success()) {
            return false;
        }
        let (cid, p) = self.auth_receive_pdu(4096);
        self.send(&p).await;
        if !self.wait(cid).await.is_some_and(|c| c.status().is_success()) {
            return false;
        }
        self.auth_received();
        let (m, good) = self.auth_reply(true, true, 0x5eed);
        let (cid, p) = self.auth_send_pdu(&m, false);
        self.send(&p).await;
        if !good || !self.wait(cid).await.is_some_and(|c| c.status().is_success()) {
            return false;
        }
        let (cid, p) = self.auth_receive_pdu(4096);
        self.send(&p).await;
        if !self.wait(cid).await.is_some_and(|c| c.status().is_success()) {
            return false;
        }
        let (cid, p) = self.auth_send_pdu(&DhchapSuccess2 { t_id: 7 }.to_bytes(), false);
        self.send(&p).await;
        self.wait(cid).await.is_some_and(|c| c.status().is_success())
    }

    /// Operation 9 with DH-HMAC-CHAP: one of the host's messages.
    async fn auth_op(&mut self, inp: &mut Input<'_>) -> Option<()> {
        let f = inp.byte()?;
        let r2t = f & 0x80 != 0;
        let msg = match f % 6 {
            0 => {
                let tid = inp.byte()? as u16;
                self.negotiate(tid, f & 8 != 0)
            }
            1 => {
                let al = if f & 8 == 0 { 4096 } else { inp.byte()? as u32 };
                let (_, p) = self.auth_receive_pdu(al);
                self.send(&p).await;
                return Some(());
            }
            2 => {
                let (right, bidi) = (f & 8 == 0, f & 0x10 != 0);
                let s2 = if bidi { inp.u32()? } else { 0 };
                let (m, good) = self.auth_reply(right, bidi, s2);
                if good && !r2t {
                    // From here on the target may let the queue in.
                    self.auth_maybe = true;
                    self.gated.clear();
                }
                m
            }
            3 => DhchapSuccess2 { t_id: self.auth_ch.as_ref().map_or(self.auth_tid, |c| c.t_id) }.to_bytes(),
            4 => DhchapFailure { t_id: self.auth_tid, failure1: false, reason: 1, explanation: f >> 3 }.to_bytes(),
            _ => {
                let n = inp.byte()? as usize;
                let b = inp.0.get(..n)?.to_vec();
                inp.0 = &inp.0[n..];
                b
            }
        };
        if msg.is_empty() {
            return Some(());
        }
        let (_, p) = self.auth_send_pdu(&msg, r2t);
        self.send(&p).await;
        Some(())
    }

    /// The CID of one of the commands sent, or any CID, as the input chooses.
    fn pick_cid(&self, inp: &mut Input) -> Option<u16> {
        let b = inp.byte()?;
        if b < 0xF0 && !self.sent.is_empty() {
            let mut cids: Vec<u16> = self.sent.keys().copied().collect();
            cids.sort_unstable();
            Some(cids[b as usize % cids.len()])
        } else {
            inp.u16()
        }
    }

    /// Run one operation of the script; `None` at its end.
    async fn op(&mut self, inp: &mut Input<'_>, admin_queue: bool, auth: bool) -> Option<()> {
        let f = self.f;
        match inp.byte()? % 11 {
            9 if auth => self.auth_op(inp).await?,
            // A command: an opcode of the queue's (or any), any CID, any LBA range, an SGL for data by R2T, in
            // the capsule, or anything, and in-capsule data of any length.
            0 => {
                let sel = inp.byte()?;
                let opcode = if admin_queue {
                    [
                        admin::IDENTIFY,
                        admin::GET_LOG_PAGE,
                        admin::SET_FEATURES,
                        admin::GET_FEATURES,
                        admin::KEEP_ALIVE,
                        admin::ASYNC_EVENT_REQUEST,
                        holdfast_proto::opcode::FABRICS,
                    ]
                    .get(sel as usize % 8)
                    .copied()
                    .unwrap_or(sel)
                } else {
                    [io::READ, io::WRITE, io::FLUSH, io::WRITE_ZEROES, io::DATASET_MANAGEMENT, io::COMPARE]
                        .get(sel as usize % 7)
                        .copied()
                        .unwrap_or(sel)
                };
                // A fresh CID, or one already used (perhaps still outstanding), or any.
                let cid = if inp.byte()? & 1 == 0 {
                    self.next_cid += 1;
                    self.next_cid
                } else {
                    self.pick_cid(inp)?
                };
                let mut sqe = SubmissionEntry::new(opcode, cid);
                sqe.nsid.set(match sel >> 6 {
                    0 | 1 => 1,
                    2 => 2,
                    _ => inp.u32()?,
                });
                let (slba, nlb) = (inp.byte()? as u64 * 8 % BLOCKS, inp.byte()? as u32 % 64);
                if admin_queue {
                    sqe.cdw10.set(inp.u32()?);
                    sqe.cdw11.set(inp.u32()?);
                    sqe.cdw12.set(inp.u32()?);
                } else {
                    holdfast_proto::sqe::rw::set(&mut sqe, slba, nlb + 1, 0);
                }
                let mode = inp.byte()?;
                if !admin_queue {
                    // FUSE: a fused operation's first or second (a Compare and Write's), or reserved.
                    sqe.set_fuse(mode >> 6);
                }
                let len = match mode & 3 {
                    0 => (nlb as usize + 1) * 512,
                    1 => mode as usize * 64,
                    2 => inp.u16()? as usize * 2,
                    _ => 0,
                };
                let incapsule = match (mode >> 2) & 3 {
                    0 => 0,
                    1 => len,
                    2 => (inp.u16()? as usize) % 20_000,
                    _ => len.min(8192),
                };
                sqe.dptr = match (mode >> 4) & 3 {
                    0 if incapsule > 0 => SglDescriptor::incapsule(incapsule as u32),
                    0 | 1 => SglDescriptor::transport(len as u32),
                    2 => SglDescriptor::incapsule(len as u32),
                    _ => {
                        let mut d = [0u8; 16];
                        for b in d.iter_mut() {
                            *b = inp.byte()?;
                        }
                        zerocopy::FromBytes::read_from_bytes(&d[..]).ok()?
                    }
                };
                if opcode == holdfast_proto::opcode::FABRICS && admin_queue {
                    // A property get or set: CC (disable, enable, shutdown normal or abrupt, anything), CSTS,
                    // CAP or any offset.
                    let ofst = match mode % 4 {
                        0 => property::CC,
                        1 => property::CSTS,
                        2 => property::CAP,
                        _ => inp.u32()?,
                    };
                    let value = if mode & 0x80 == 0 {
                        None
                    } else {
                        let en = cc::ENABLE_DEFAULT as u64;
                        Some(match inp.byte()? % 5 {
                            0 => 0,
                            1 => en,
                            2 => en | 1 << 14,
                            3 => en | 2 << 14,
                            _ => inp.u32()? as u64,
                        })
                    };
                    let p = PropertyCommand::new(cid, ofst, mode & 0x40 != 0, value);
                    sqe = p.to_sqe();
                }
                let data = pattern(0, incapsule);
                self.send(&Pdu::CapsuleCmd(CapsuleCmd { sqe, data })).await;
            }
            // H2CData: for an R2T received (the next data of it, or any part) or for any CID and tag.
            op @ (1 | 5) => {
                let b = inp.byte()?;
                let r2t = (b < 0xF0 && !self.r2ts.is_empty()).then(|| b as usize % self.r2ts.len());
                let (cccid, ttag, next, rest) = match r2t {
                    Some(i) => {
                        let (c, t, o, l, done) = self.r2ts[i];
                        (c, t, o + done, l - done.min(l))
                    }
                    None => (inp.u16()?, inp.byte()? as u16, 0, 512),
                };
                let mode = inp.byte()?;
                let (datao, len) = inp.offset_and_length(mode, next, rest, |i| Some(i.u32()? as usize % 140_000))?;
                let last = mode & 0x80 != 0 || datao + len == next + rest;
                if let Some(i) = r2t {
                    if datao == next {
                        self.r2ts[i].4 += len;
                    }
                }
                let mut b = Pdu::H2CData(H2CData { cccid, ttag, datao: datao as u32, data: pattern(datao, len), last })
                    .to_bytes(&f);
                if op == 5 && f.ddgst && len > 0 {
                    // The data changed after its digest was computed.
                    let mut m = BytesMut::from(&b[..]);
                    let at = m.len() - 5;
                    m[at] ^= 0xA5;
                    b = m.freeze();
                }
                self.write(&b).await;
            }
            // Bytes that may be no PDU at all.
            2 => {
                let n = (inp.byte()? % 64) as usize;
                let b = inp.0.get(..n)?.to_vec();
                inp.0 = &inp.0[n..];
                self.desynced |= !b.is_empty();
                self.write(&b).await;
            }
            // Let the target run, and read what it sent.
            3 => {
                tokio::task::yield_now().await;
                self.drain();
            }
            // An H2CTermReq.
            4 => {
                let fes = inp.byte()? as u16 % 8;
                self.send(&Pdu::H2CTermReq(TermReq { fes, fei: 0, data: Bytes::new() })).await;
            }
            // A PDU a host never sends (or never again).
            6 => {
                let p = match inp.byte()? % 4 {
                    0 => Pdu::IcReq(IcReq { pfv: 0, hpda: 0, hdgst: f.hdgst, ddgst: f.ddgst, maxr2t: 0 }),
                    1 => Pdu::CapsuleResp(CapsuleResp { cqe: CompletionEntry::new(1, Status::SUCCESS, 0) }),
                    2 => Pdu::C2HData(C2HData { cccid: 1, datao: 0, data: pattern(0, 8), last: true, success: false }),
                    _ => Pdu::R2T(R2T { cccid: 1, ttag: 1, r2to: 0, r2tl: 512 }),
                };
                self.send(&p).await;
            }
            // The next PDU in two writes.
            7 => self.split_next = Some(inp.byte()?),
            // Wait a little for the target (a write's data, a held command).
            8 => {
                let _ = tokio::time::timeout(Duration::from_millis(2), self.s.readable()).await;
                self.drain();
            }
            _ => return None,
        }
        Some(())
    }

    /// Close our side and read (and check) until the target closes its side.
    async fn finish(&mut self) {
        let _ = self.s.shutdown().await;
        let r = tokio::time::timeout(Duration::from_secs(10), async {
            while !self.closed {
                self.buf.reserve(64 * 1024);
                match self.s.read_buf(&mut self.buf).await {
                    Ok(0) | Err(_) => self.closed = true,
                    Ok(_) => {}
                }
                while let Some(p) = self.next_pdu() {
                    self.check(p);
                }
            }
        })
        .await;
        assert!(r.is_ok(), "the target did not close the connection within 10 s of the host closing its side");
    }
}

async fn case(input: &[u8]) {
    let w = world();
    let mut inp = Input(input);
    let Some(mode) = inp.byte() else { return };
    let (hdgst, ddgst) = (mode & 1 != 0, mode & 2 != 0);
    let discovery = mode & 0x20 != 0;
    let admin_queue = mode & 4 != 0 || discovery;
    let (no_connect, no_ic) = (mode & 8 != 0, mode & 0x10 != 0);
    let auth = mode & 0x40 != 0;
    // With DH-HMAC-CHAP, the script's queue authenticates in the set-up unless bit 7 says so (and then the
    // admin queue, for a script on it, with the controller left disabled).
    let script_auth_left = auth && mode & 0x80 != 0;
    let subnqn = match (discovery, auth) {
        (true, _) => DISCOVERY_NQN,
        (false, true) => AUTH_NQN,
        (false, false) => NQN,
    };
    let hostnqn = if auth { AUTH_HOSTNQN } else { HOSTNQN };

    // The association: an admin queue connected and enabled, and (unless the script runs on the admin queue)
    // I/O queue 1's connection.
    let mut admin = Host::open(w.addr, hostnqn).await;
    let mut script_host = None;
    if admin.ic(hdgst, ddgst).await {
        if let Some(cntlid) = admin.connect(subnqn, 0, 0xFFFF).await {
            let authed = if !auth || discovery {
                true
            } else if script_auth_left && admin_queue {
                admin.auth_maybe = false;
                false
            } else {
                admin.authenticate().await
            };
            if authed {
                let en = PropertyCommand::new(0, property::CC, false, Some(cc::ENABLE_DEFAULT as u64));
                admin.command(en.to_sqe(), Bytes::new()).await;
            }
            if !admin_queue {
                let mut s = SubmissionEntry::new(admin::SET_FEATURES, 0);
                s.cdw10.set(0x07);
                s.cdw11.set(0x0001_0001);
                admin.command(s, Bytes::new()).await;
                let mut q = Host::open(w.addr, hostnqn).await;
                let up = no_ic
                    || (q.ic(hdgst, ddgst).await
                        && (no_connect
                            || (q.connect(subnqn, 1, cntlid).await.is_some()
                                && (!auth || script_auth_left || q.authenticate().await))));
                if auth && script_auth_left && !no_ic && !no_connect {
                    q.auth_maybe = false;
                }
                if up {
                    script_host = Some(q);
                } else {
                    q.finish().await;
                }
            }
        }
    }
    // The script, on the I/O queue (or the admin queue); operation 10 moves it to the other queue (a reset or
    // a shutdown through CC while I/O is outstanding, say).
    let mut on_io = !admin_queue && script_host.is_some();
    loop {
        if inp.0.first().is_some_and(|&b| b % 11 == 10) {
            inp.byte();
            on_io = !on_io && script_host.is_some();
            continue;
        }
        let (h, admin_ops) = match script_host.as_mut() {
            Some(q) if on_io => (q, false),
            _ => (&mut admin, true),
        };
        if h.op(&mut inp, admin_ops, auth).await.is_none() {
            break;
        }
        h.drain();
    }
    if let Some(q) = script_host.as_mut() {
        q.finish().await;
    }
    admin.finish().await;

    // Nothing outlives the connections: the controller and every connection's admission are released.
    let leaked = tokio::time::timeout(Duration::from_secs(10), async {
        loop {
            let ctrls = [NQN, AUTH_NQN]
                .iter()
                .map(|n| w.target.subsystem(n).map_or(0, |s| s.controllers().len()))
                .sum::<usize>()
                + w.target.discovery.controllers().len();
            if ctrls == 0 && w.target.unbound.count() == 0 {
                return;
            }
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    })
    .await;
    assert!(leaked.is_ok(), "a controller or a connection's admission outlived its connections by 10 s");
}

fuzz_target!(|input: &[u8]| {
    world().rt.block_on(case(input));
});
