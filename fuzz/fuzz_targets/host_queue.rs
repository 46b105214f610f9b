//! Fuzz the host's queue (`holdfast_host::queue::run`) against a hostile controller: a fake on the far end of
//! a loopback TCP connection answers the host's commands with PDUs the input chooses (CapsuleResps with any
//! status, C2HData at any offset and length with any flags, R2Ts for any range, termination requests,
//! unexpected PDU types, bytes that are no PDU at all, data with a bad digest, PDUs split across writes), then
//! closes. The queue must never panic or hang, and:
//!
//! - every command is accounted for exactly once: answered through its reply, or handed back unfinished in
//!   the `QueueExit`, outstanding or still in the channel (never dropped unanswered);
//! - a successful read delivers exactly its length, and only data the controller sent for it at those
//!   offsets (on the admin queue a short transfer may be padded with zeroes, as Get Log Page is);
//! - everything the host sends decodes as well-formed PDUs (within MAXH2CDATA and its digests), H2CData only
//!   within an R2T the fake sent for that command and with that R2T's tag, carrying the write's own bytes,
//!   and nothing after an H2CTermReq.
//!
//! Input: byte 0: bit 0 header digests, bit 1 data digests, bit 2 admin queue (else I/O queue 1), bits 3-5
//! depth - 1, bit 6 no in-capsule data (every write through R2T), bit 7 MAXH2CDATA 4096 (else 16384);
//! byte 1: commands - 1 (low 3 bits), bit 3 busy polling (the queue reads its own socket while one command is
//! outstanding); then one byte per command (bit 0 write, bit 1 not replayable, bits 2-6
//! length in 512-byte units - 1, bit 7 on an I/O queue's write: a fused Compare and Write pair instead, which
//! the queue issues back to back); then the fake's script, one operation after another (see [`Op`]).
#![no_main]
use bytes::{Bytes, BytesMut};
use holdfast_host::queue::{self, Command, QueueParams};
use holdfast_host::{reply, submit};
use holdfast_proto::decoder::{DecodeError, Limits, PduDecoder, Role};
use holdfast_proto::pdu::{C2HData, CapsuleResp, Framing, IcResp, Pdu, TermReq, R2T};
use holdfast_proto::{CompletionEntry, Status, SubmissionEntry};
use libfuzzer_sys::fuzz_target;
use std::future::Future;
use std::sync::OnceLock;
use std::task::{Context, Poll, Waker};
use std::time::Duration;
use tokio::io::AsyncWriteExt;
use tokio::net::{TcpListener, TcpStream};

/// The byte at offset `off` of any command's data, both ways: what a write carries and what the fake returns.
fn pat(off: usize) -> u8 {
    ((off as u32).wrapping_mul(2_654_435_761) >> 24) as u8 | 1
}

fn pattern(from: usize, len: usize) -> Bytes {
    (from..from + len).map(pat).collect::<Vec<u8>>().into()
}

struct World {
    rt: tokio::runtime::Runtime,
    /// The fake's listener, one for every run (a listener per run soon runs out of ephemeral ports).
    listener: TcpListener,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let listener = rt.block_on(TcpListener::bind("127.0.0.1:0")).unwrap();
        World { rt, listener }
    })
}

#[path = "../common/input.rs"]
mod input;
#[path = "../common/socket.rs"]
mod socket;
use input::Input;

/// A command the fake has seen the host issue.
struct Seen {
    cid: u16,
    /// Data the command reads (its SGL's length when it carries none).
    read_len: usize,
    /// Data it writes.
    write_len: usize,
    /// C2HData sent for it so far (the next in-order offset).
    c2h_sent: usize,
    /// Data requested by R2T so far (the next in-order offset).
    r2t_end: usize,
    /// R2Ts sent for it: (ttag, offset, length).
    r2ts: Vec<(u16, usize, usize)>,
}

/// The fake controller's end of the connection.
struct Fake {
    s: TcpStream,
    dec: PduDecoder,
    inbuf: BytesMut,
    framing: Framing,
    maxh2cdata: usize,
    seen: Vec<Seen>,
    /// The host sent an H2CTermReq.
    host_terminated: bool,
    /// The host closed its side.
    host_closed: bool,
}

impl Fake {
    /// Take whatever the host has sent, without waiting, and check it.
    fn drain(&mut self) {
        while !self.host_closed {
            match socket::read_ready(&self.s, &mut self.inbuf) {
                socket::Ready::Bytes => {}
                socket::Ready::Nothing => break,
                socket::Ready::Closed => self.host_closed = true,
            }
            self.check_host_pdus();
        }
    }

    fn check_host_pdus(&mut self) {
        loop {
            let pdu = match self.dec.decode(&mut self.inbuf) {
                Ok(Some(p)) => p,
                Ok(None) => return,
                Err(DecodeError::Fatal(f)) => panic!("the host sent a malformed PDU: {f}"),
                Err(DecodeError::DataDigest { .. }) => panic!("the host sent data with a bad digest"),
            };
            assert!(!self.host_terminated, "the host sent {:?} after its H2CTermReq", pdu.pdu_type());
            match pdu {
                Pdu::CapsuleCmd(c) => {
                    let cid = c.sqe.cid.get();
                    let sgl_len = c.sqe.dptr.len() as usize;
                    let write = c.sqe.opcode & 1 == 1;
                    if !c.data.is_empty() {
                        assert!(write, "in-capsule data on a command that reads");
                        assert_eq!(c.data, pattern(0, c.data.len()), "in-capsule data is not the write's");
                    }
                    // A CID is reused only once its command is done: forget the old one.
                    self.seen.retain(|s| s.cid != cid);
                    self.seen.push(Seen {
                        cid,
                        read_len: if write { 0 } else { sgl_len },
                        write_len: if write { sgl_len } else { 0 },
                        c2h_sent: 0,
                        r2t_end: c.data.len(),
                        r2ts: Vec::new(),
                    });
                }
                Pdu::H2CData(d) => {
                    let s = self.seen.iter().find(|s| s.cid == d.cccid);
                    let s = s.unwrap_or_else(|| panic!("H2CData for CID {:#x}, which the host never issued", d.cccid));
                    let (o, l) = (d.datao as usize, d.data.len());
                    assert!(
                        s.r2ts.iter().any(|&(t, ro, rl)| t == d.ttag && o >= ro && o + l <= ro + rl),
                        "H2CData (tag {}, offset {o}, {l} bytes) outside every R2T sent for command {:#x}: {:?}",
                        d.ttag,
                        d.cccid,
                        s.r2ts
                    );
                    assert!(l <= self.maxh2cdata, "H2CData of {l} bytes, MAXH2CDATA {}", self.maxh2cdata);
                    assert_eq!(d.data, pattern(o, l), "H2CData is not the write's data");
                }
                Pdu::H2CTermReq(_) => self.host_terminated = true,
                other => panic!("the host sent a {:?} PDU", other.pdu_type()),
            }
        }
    }

    /// A command by the input's choice: one the host issued, or any CID.
    fn pick(&self, inp: &mut Input) -> Option<u16> {
        let b = inp.byte()?;
        if b < 0xF0 && !self.seen.is_empty() {
            Some(self.seen[b as usize % self.seen.len()].cid)
        } else {
            inp.u16()
        }
    }

    fn seen_mut(&mut self, cid: u16) -> Option<&mut Seen> {
        self.seen.iter_mut().find(|s| s.cid == cid)
    }

    async fn send(&mut self, b: &[u8]) {
        if self.s.write_all(b).await.is_err() {
            self.host_closed = true;
        }
    }

    /// Run one operation of the script; false at its end.
    async fn op(&mut self, inp: &mut Input<'_>) -> Option<()> {
        let f = self.framing;
        match inp.byte()? % 10 {
            // CapsuleResp with any status.
            0 => {
                let cid = self.pick(inp)?;
                let status = match inp.byte()? % 6 {
                    0 | 1 => Status::SUCCESS,
                    2 => Status::from_cqe_word(0x0006 << 1), // Internal Error, retryable
                    3 => Status::from_cqe_word(0x0006 << 1).with_dnr(),
                    4 => Status::from_cqe_word(inp.u16()?),
                    _ => Status::from_cqe_word(0x0080 << 1).with_dnr(), // LBA Out of Range
                };
                let pdu = Pdu::CapsuleResp(CapsuleResp { cqe: CompletionEntry::new(cid, status, 0) });
                self.send(&pdu.to_bytes(&f)).await;
            }
            // C2HData: in order or anywhere, of the rest or of any length, with any flags.
            op @ (1 | 5) => {
                let cid = self.pick(inp)?;
                let (next, rest) =
                    self.seen_mut(cid).map_or((0, 4096), |s| (s.c2h_sent, s.read_len - s.c2h_sent.min(s.read_len)));
                let mode = inp.byte()?;
                let (datao, len) = inp.offset_and_length(mode, next, rest, |i| Some(i.u16()? as usize % 9000))?;
                let (last, success) = (inp.byte()? & 1 == 1, mode & 0x80 != 0);
                let data = pattern(datao, len);
                let mut b = Pdu::C2HData(C2HData { cccid: cid, datao: datao as u32, data, last, success }).to_bytes(&f);
                if op == 5 && f.ddgst && len > 0 {
                    // The last byte of the data changed after its digest was computed: the host must never
                    // deliver it (it differs from `pat`, which the delivered data is checked against).
                    let mut m = BytesMut::from(&b[..]);
                    let at = m.len() - 4 - 1;
                    m[at] ^= 0x5A;
                    b = m.freeze();
                }
                if let Some(s) = self.seen_mut(cid) {
                    if datao == s.c2h_sent {
                        s.c2h_sent += len;
                    }
                }
                self.send(&b).await;
            }
            // R2T: for the next data or any range, with any tag.
            2 => {
                let cid = self.pick(inp)?;
                let (next, rest) =
                    self.seen_mut(cid).map_or((0, 4096), |s| (s.r2t_end, s.write_len - s.r2t_end.min(s.write_len)));
                let mode = inp.byte()?;
                let r2to = if mode & 1 == 0 { next } else { inp.u16()? as usize };
                let r2tl = match (mode >> 1) & 3 {
                    0 => rest,
                    1 => rest.min(512 * (1 + (mode >> 4) as usize)),
                    2 => 0,
                    _ => inp.u32()? as usize % (1 << 20),
                };
                let ttag = inp.byte()? as u16;
                if let Some(s) = self.seen_mut(cid) {
                    s.r2ts.push((ttag, r2to, r2tl));
                    if r2to == s.r2t_end {
                        s.r2t_end += r2tl;
                    }
                }
                let pdu = Pdu::R2T(R2T { cccid: cid, ttag, r2to: r2to as u32, r2tl: r2tl as u32 });
                self.send(&pdu.to_bytes(&f)).await;
            }
            // C2HTermReq.
            3 => {
                let fes = inp.byte()? as u16 % 8;
                let pdu = Pdu::C2HTermReq(TermReq { fes, fei: 0, data: Bytes::new() });
                self.send(&pdu.to_bytes(&f)).await;
            }
            // Bytes that may be no PDU at all.
            4 => {
                let n = (inp.byte()? % 48) as usize;
                let b = inp.0.get(..n)?.to_vec();
                inp.0 = &inp.0[n..];
                self.send(&b).await;
            }
            // Let the host run, and read what it sent.
            6 => {
                tokio::task::yield_now().await;
                self.drain();
            }
            // A PDU a controller never sends.
            7 => {
                let pdu = match inp.byte()? % 3 {
                    0 => Pdu::IcResp(IcResp { pfv: 0, cpda: 0, hdgst: f.hdgst, ddgst: f.ddgst, maxh2cdata: 4096 }),
                    1 => Pdu::H2CTermReq(TermReq { fes: 1, fei: 0, data: Bytes::new() }),
                    _ => Pdu::CapsuleCmd(holdfast_proto::pdu::CapsuleCmd {
                        sqe: SubmissionEntry::new(2, 1),
                        data: Bytes::new(),
                    }),
                };
                self.send(&pdu.to_bytes(&f)).await;
            }
            // The next CapsuleResp split across two writes, the host running in between.
            8 => {
                let cid = self.pick(inp)?;
                let cut = inp.byte()? as usize;
                let b =
                    Pdu::CapsuleResp(CapsuleResp { cqe: CompletionEntry::new(cid, Status::SUCCESS, 0) }).to_bytes(&f);
                let cut = cut % b.len();
                self.send(&b[..cut]).await;
                tokio::task::yield_now().await;
                self.drain();
                self.send(&b[cut..]).await;
            }
            // The end of the script.
            _ => return None,
        }
        Some(())
    }
}

fn poll_now<F: Future + Unpin>(f: &mut F) -> Option<F::Output> {
    match std::pin::Pin::new(f).poll(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(v) => Some(v),
        Poll::Pending => None,
    }
}

async fn case(input: &[u8]) {
    let mut inp = Input(input);
    let (Some(mode), Some(ncmd)) = (inp.byte(), inp.byte()) else { return };
    let (hdgst, ddgst, admin) = (mode & 1 != 0, mode & 2 != 0, mode & 4 != 0);
    let depth = ((mode >> 3) & 7) as u16 + 1;
    let max_incapsule = if mode & 0x40 != 0 { 0 } else { 4096 };
    let maxh2cdata = if mode & 0x80 != 0 { 4096 } else { 16384 };
    let qid = if admin { 0 } else { 1 };
    let framing = Framing { hdgst, ddgst, pda: 0 };

    let listener = &world().listener;
    let addr = listener.local_addr().unwrap();
    let (host_s, fake_s) = tokio::join!(TcpStream::connect(addr), listener.accept());
    let (host_s, fake_s) = (host_s.unwrap(), fake_s.unwrap().0);
    let _ = host_s.set_nodelay(true);
    let _ = fake_s.set_nodelay(true);
    // Closed with a reset, so that no run leaves a connection in TIME_WAIT behind (thousands a second would
    // use up the ephemeral ports).
    #[allow(deprecated)]
    let _ = fake_s.set_linger(Some(Duration::ZERO));

    let mut host_dec =
        PduDecoder::new(Role::Host, Limits { max_incapsule: 0, max_h2c_data: 0, max_c2h_data: 64 * 1024 });
    host_dec.set_negotiated(hdgst, ddgst, 0);
    let mut fake_dec = PduDecoder::new(
        Role::Controller,
        Limits { max_incapsule: 8192, max_h2c_data: maxh2cdata as u32, max_c2h_data: 0 },
    );
    fake_dec.set_negotiated(hdgst, ddgst, 0);

    let (tx, rx) = submit::channel::<Command>(64);
    let (setup_tx, setup_rx) = submit::channel::<Command>(4);
    let (_open_tx, open) = tokio::sync::watch::channel(true);
    let mut replies = Vec::new();
    for _ in 0..(ncmd & 7) + 1 {
        let Some(b) = inp.byte() else { break };
        let write = b & 1 == 1;
        let len = 512 * (((b >> 2) & 31) as usize + 1);
        let (opcode, data_out, data_in_len) = match (admin, write) {
            (false, true) => (holdfast_proto::opcode::io::WRITE, pattern(0, len), 0),
            (false, false) => (holdfast_proto::opcode::io::READ, Bytes::new(), len as u32),
            (true, true) => (holdfast_proto::opcode::admin::SET_FEATURES, pattern(0, len), 0),
            (true, false) => (holdfast_proto::opcode::admin::GET_LOG_PAGE, Bytes::new(), len as u32),
        };
        let mut sqe = SubmissionEntry::new(opcode, 0);
        sqe.nsid.set(1);
        let (reply_tx, reply) = reply::channel();
        let mut cmd = Command {
            sqe,
            data_out,
            data_in_len,
            ns_tag: 0,
            replayable: b & 2 == 0,
            reply: reply_tx,
            timeouts: 0,
            retries: 0,
            losses: 0,
            ana_waits: 0,
            fused: None,
        };
        // Bit 7 of an I/O queue's write: a fused pair instead, a Compare (first) carrying the Write (second),
        // which the queue must issue back to back, both or neither.
        if !admin && write && b & 0x80 != 0 {
            let (second_tx, second_reply) = reply::channel();
            let mut second_sqe = cmd.sqe;
            second_sqe.set_fuse(holdfast_proto::sqe::FUSE_SECOND);
            cmd.sqe.opcode = holdfast_proto::opcode::io::COMPARE;
            cmd.sqe.set_fuse(holdfast_proto::sqe::FUSE_FIRST);
            cmd.replayable = false;
            let second = Command {
                sqe: second_sqe,
                data_out: cmd.data_out.clone(),
                data_in_len: 0,
                ns_tag: 0,
                replayable: false,
                reply: second_tx,
                timeouts: 0,
                retries: 0,
                losses: 0,
                ana_waits: 0,
                fused: None,
            };
            cmd.fused = Some(Box::new(second));
            replies.push((second_reply, write, 0));
        }
        if tx.try_send(cmd).is_err() {
            panic!("the submission channel refused a command");
        }
        replies.push((reply, write, data_in_len as usize));
    }
    drop(tx);
    let n = replies.len();

    // Busy polling: with one command outstanding the queue then reads its socket itself (spin_read).
    let poll = if ncmd & 8 != 0 { holdfast_rt::BusyPoll::new(Duration::from_micros(200)) } else { None };
    if let Some(b) = &poll {
        b.spawn();
    }
    let p = QueueParams {
        qid,
        depth,
        framing,
        max_incapsule,
        maxh2cdata,
        io_timeout: Duration::from_secs(60),
        addr: addr.to_string(),
        poll: poll.clone(),
        closing: tokio_util::sync::CancellationToken::new(),
        crdt: [0; 3],
        // No ANA: an Asymmetric Access Transition would hold a command for up to twice ANATT.
        anatt: Duration::ZERO,
    };
    let cancel = tokio_util::sync::CancellationToken::new();
    let run = queue::run(host_s, host_dec, BytesMut::new(), p, rx, Vec::new(), setup_rx, open, cancel);

    let mut fake = Fake {
        s: fake_s,
        dec: fake_dec,
        inbuf: BytesMut::new(),
        framing,
        maxh2cdata,
        seen: Vec::new(),
        host_terminated: false,
        host_closed: false,
    };
    let script = async {
        // The host's first commands go out as soon as it runs.
        for _ in 0..100 {
            if fake.seen.len() >= n.min(depth as usize) || fake.host_closed {
                break;
            }
            let _ = tokio::time::timeout(Duration::from_millis(10), fake.s.readable()).await;
            fake.drain();
        }
        while fake.op(&mut inp).await.is_some() {
            fake.drain();
        }
        let _ = fake.s.shutdown().await;
        // Until the host has closed: everything it sends is checked.
        while !fake.host_closed {
            let _ = tokio::time::timeout(Duration::from_millis(50), fake.s.readable()).await;
            fake.drain();
        }
    };
    let (exit, ()) = match tokio::time::timeout(Duration::from_secs(20), async { tokio::join!(run, script) }).await {
        Ok(r) => r,
        Err(_) => panic!("the queue or the fake hung"),
    };
    drop(setup_tx);

    // Every command answered once, or handed back unfinished.
    let debug = std::env::var_os("HOST_QUEUE_DEBUG").is_some();
    if debug {
        eprintln!("queue ended: {:?}; {} handed back", exit.error, exit.pending.len());
    }
    let mut unanswered = 0;
    for (reply, write, data_in_len) in &mut replies {
        let outcome = poll_now(reply);
        if debug {
            match &outcome {
                Some(Ok(Ok(c))) => eprintln!("command: {:?}, {} bytes", c.status(), c.data.len()),
                Some(Ok(Err(e))) => eprintln!("command: error {e}"),
                o => eprintln!("command: {o:?}"),
            }
        }
        match outcome {
            None => unanswered += 1,
            Some(Err(reply::ReplyDropped)) => panic!("a command was dropped without an answer"),
            Some(Ok(Err(_))) => {}
            Some(Ok(Ok(c))) => {
                if !c.status().is_success() || *write {
                    continue;
                }
                assert_eq!(c.data.len(), *data_in_len, "a successful read delivered the wrong length");
                let good = c.data.iter().enumerate().take_while(|&(i, &b)| b == pat(i)).count();
                if good < c.data.len() {
                    // Only a Get Log Page's tail may differ: zeroes past what the controller returned.
                    assert!(admin, "a successful read delivered data the controller did not send for it");
                    assert!(c.data[good..].iter().all(|&b| b == 0), "a Get Log Page's padding is not zeroes");
                }
                // `pat` is never 0: what came is exactly the part that matches it.
                assert_eq!(c.transferred, good, "Completion::transferred is not what the controller sent");
            }
        }
    }
    // Handed back: outstanding or waiting to be re-issued (`pending`), or never taken from the channel.
    let mut exit = exit;
    // A fused first hands back its second with it.
    let count = |c: &Command| 1 + c.fused.is_some() as usize;
    let mut handed_back: usize = exit.pending.iter().map(count).sum();
    while let Some(c) = exit.rx.try_recv() {
        handed_back += count(&c);
    }
    assert_eq!(unanswered, handed_back, "commands neither answered nor handed back ({n} issued)");
}

fuzz_target!(|input: &[u8]| {
    world().rt.block_on(case(input));
});
