//! The host library against an in-process fake NVMe/TCP controller built from `holdfast-proto`.
//!
//! The fake speaks just enough (ICResp, Connect, Property Get/Set, Identify, Set Features, Keep Alive, Read,
//! Write, Flush, Write Zeroes, Dataset Management) and can be told to behave like targets we did not write:
//! C2HData split into odd-sized PDUs, with or without the SUCCESS flag (NVMe/TCP 1.0 §3.6.2.6); no in-capsule
//! data so every write goes through R2T, several R2Ts per command and a small MAXH2CDATA (§3.6.2.7–8); a
//! small MDTS; digests; a refused Connect; a command that is never answered; a termination request; fewer I/O
//! queues granted than asked for; Asynchronous Event Requests aborted after the host closes; writes failed with a
//! retryable status (CRD and CRDT1) or with Do Not Retry; C2HData with a wrong data digest; R2Ts that ask for
//! data already sent (repeated, overlapping, for in-capsule data) or for none; no Write Zeroes or Dataset
//! Management (ONCS).

use bytes::{Bytes, BytesMut};
use holdfast_host::{ConnectOptions, Controller, Error, Namespace};
use holdfast_proto::decoder::{Limits, PduDecoder, Role};
use holdfast_proto::fabrics::{self, cap, cc, csts, property, ConnectCommand, PropertyCommand};
use holdfast_proto::identify::{self, IdentifyController, IdentifyNamespace};
use holdfast_proto::log_page::{
    discovery_log_bytes, log_page_slice, ChangedNamespaceList, DiscoveryLogEntry, LID_CHANGED_NS_LIST, LID_DISCOVERY,
};
use holdfast_proto::opcode::{admin, fctype, io, FABRICS};
use holdfast_proto::pdu::{self as pdu, C2HData, CapsuleResp, Framing, IcResp, Pdu, TermReq, R2T};
use holdfast_proto::sqe::{get_log_page, rw};
use holdfast_proto::{CompletionEntry, Status, SubmissionEntry};
use std::collections::HashMap;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use zerocopy::{FromZeros, IntoBytes};

const BS: usize = 512;
const NBLOCKS: u64 = 4096; // 2 MiB
const NQN: &str = "nqn.2026-01.io.holdfast:fake";

/// How the fake behaves.
#[derive(Clone)]
struct Behaviour {
    /// MAXH2CDATA in ICResp.
    maxh2cdata: u32,
    /// IOCCSZ in Identify Controller (16-byte units; 4 = no in-capsule data on I/O queues).
    ioccsz: u32,
    /// MDTS (power of two of 4 KiB; 0 = none).
    mdts: u8,
    /// C2HData PDUs carry at most this much data.
    c2h_chunk: usize,
    /// Complete reads with the SUCCESS flag on the last C2HData instead of a CapsuleResp.
    c2h_success: bool,
    /// Each R2T asks for at most this much.
    r2t_chunk: usize,
    /// Grant digests in ICResp as asked (false: always grant none).
    grant_digests: bool,
    /// Answer every Connect with this status.
    refuse_connect: Option<Status>,
    /// Never answer Read commands.
    hang_reads: bool,
    /// Answer the first Read with a C2HTermReq and close the connection.
    term_first_read: bool,
    /// Answer the first Read with a malformed PDU (an unknown PDU type) and nothing else.
    garbage_first_read: bool,
    /// Answer every Read of this LBA with a C2HTermReq and close the connection (a target fault on one LBA).
    poison_lba: Option<u64>,
    /// CRDT1 in Identify Controller (100 ms units; 0: no retry delays advertised).
    crdt1: u16,
    /// The status failed writes get (see `State::fail_writes`).
    fail_status: Status,
    /// Close every I/O queue connection when the host sets CC.SHN, before reporting the shutdown complete
    /// (as SPDK's target does).
    close_io_on_shn: bool,
    /// Records in the Discovery log page (0: no such page). A Get Log Page longer than MDTS allows is a
    /// fatal transport error here, as on SPDK's target (C2HTermReq, connection closed).
    discovery_records: usize,
    /// After the first Discovery read the log holds this many records (GENCTR 8); an offset past its end is
    /// answered Invalid Field (as holdfast's target does).
    discovery_shrink_to: Option<usize>,
    /// Refuse every Discovery log read at an offset other than 0 with Invalid Field (the log unchanged).
    discovery_refuse_offsets: bool,
    /// The NVM command set's limits in Identify CNS 06h, (WZSL, DMRL, DMRSL), enforced: a Write Zeroes or a
    /// Dataset Management over them gets Invalid Field.
    nvm_limits: Option<(u8, u8, u32)>,
    /// Namespace 1 has no identifiers (an empty descriptor list, no EUI-64 or NGUID).
    no_ns_ids: bool,
    /// Close the connection, unanswered, on every Discovery log read (each new association too).
    discovery_drop_reads: bool,
    /// Answer the first write with R2Ts that break the protocol (see [`BadR2T`]); that write is never
    /// completed on that connection.
    bad_r2t: Option<BadR2T>,
    /// ICDOFF in Identify Controller (in-capsule data offset, 16-byte units).
    icdoff: u16,
    /// Metadata bytes per block in the namespace's LBA format (extended LBAs, FLBAS bit 4, as fabrics have them).
    ns_metadata: u16,
    /// Answer every Asynchronous Event Request (sent as soon as an association is up) with a C2HTermReq and
    /// close: a target that drops every association right after accepting it.
    term_aers: bool,
    /// The Discovery log header's NUMREC claims this many records more than there are, and reads send only the
    /// bytes that exist (a short transfer, completed successfully).
    discovery_numrec_extra: u64,
    /// Identify Namespace sends only its first 384 bytes (a short transfer, completed successfully).
    short_identify_ns: bool,
    /// The policy log page sends only its first this many bytes (a short transfer, completed successfully).
    policy_page_bytes: Option<usize>,
    /// The Discovery log sends at most this many bytes per read (a short transfer, completed successfully).
    discovery_read_bytes: Option<usize>,
    /// Writes whose data does not come in the capsule get an R2T for at most this many bytes (0: none at all)
    /// and are then completed successfully, the rest of their data never asked for (a target bug).
    short_r2t_writes: Option<usize>,
}

/// R2Ts a host must refuse: it announces MAXR2T 0 (one R2T at a time per command) and sends each byte once.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum BadR2T {
    /// An R2T for the whole write, then the same R2T again at once.
    Repeat,
    /// An R2T for the first half; once that half came, one for the middle half, which overlaps it.
    Overlap,
    /// An R2T for a write whose data came in the capsule.
    InCapsule,
    /// An R2T for no data (R2TL 0).
    Zero,
    /// An R2T for the first half and, at once, before any of that half came, one for the second half: two
    /// outstanding for one command where the host allows one (MAXR2T 0).
    Two,
}

impl Default for Behaviour {
    fn default() -> Self {
        Behaviour {
            maxh2cdata: 128 * 1024,
            ioccsz: (8192 + 64) / 16,
            mdts: 0,
            c2h_chunk: 1 << 20,
            c2h_success: false,
            r2t_chunk: 1 << 20,
            grant_digests: true,
            refuse_connect: None,
            hang_reads: false,
            term_first_read: false,
            garbage_first_read: false,
            poison_lba: None,
            crdt1: 0,
            fail_status: Status::TRANSIENT_TRANSPORT_ERROR.with_crd(1),
            close_io_on_shn: false,
            discovery_records: 0,
            discovery_shrink_to: None,
            discovery_refuse_offsets: false,
            nvm_limits: None,
            no_ns_ids: false,
            discovery_drop_reads: false,
            bad_r2t: None,
            icdoff: 0,
            ns_metadata: 0,
            term_aers: false,
            discovery_numrec_extra: 0,
            short_identify_ns: false,
            policy_page_bytes: None,
            discovery_read_bytes: None,
            short_r2t_writes: None,
        }
    }
}

/// State shared by every connection of the fake.
struct State {
    b: Behaviour,
    ram: Mutex<Vec<u8>>,
    cc: AtomicU32,
    connections: AtomicU32,
    closed: Arc<AtomicU32>,
    keep_alives: AtomicU32,
    reads: AtomicU64,
    writes: AtomicU64,
    r2ts: AtomicU64,
    h2c_pdus: AtomicU64,
    termed: AtomicBool,
    /// I/O queues granted by Set Features Number of Queues (0: as many as asked).
    grant: AtomicU32,
    /// The next this many writes fail with `Behaviour::fail_status` (and change nothing).
    fail_writes: AtomicU32,
    /// Writes received, failed or not.
    write_attempts: AtomicU32,
    /// Set Features Host Behavior Support arrived with ACRE set.
    acre: AtomicBool,
    /// The next this many C2HData PDUs go out with a wrong data digest.
    corrupt_c2h: AtomicU32,
    /// Writes after the host closed its side that failed (the host's socket answered with a RST).
    resets: AtomicU32,
    /// Connect commands received, and how many of them asked to disable SQ flow control (CATTR bit 2).
    connects: AtomicU32,
    sqflow_off: AtomicU32,
    /// Connect commands whose data came in the capsule.
    connects_incapsule: AtomicU32,
    /// Set (true) when the host sets CC.SHN.
    shn: tokio::sync::watch::Sender<bool>,
    /// Get Log Page commands for the Discovery log.
    discovery_reads: AtomicU32,
    /// Down: new connections are closed as soon as they are accepted, and open ones at their next PDU.
    down: AtomicBool,
    /// New connections are accepted and then never answered (held open 30 s): a connect into a black hole.
    mute: AtomicBool,
    /// CNTLID of the next admin Connect (each association gets its own; its uniquifier is 0xF00D0000 + CNTLID).
    next_cntlid: AtomicU32,
    /// In order: "connect N" for each Connect (N its queue ID) and "fence C U" for each Fence Association.
    log: Mutex<Vec<String>>,
    /// Namespace 1's NGUID is sixteen bytes of this plus one (Identify CNS 03h): changing it makes namespace 1
    /// another namespace.
    ns_gen: AtomicU32,
    /// Identify Namespace of NSID 1 answers zeroed data (a namespace not active any more).
    ns1_inactive: AtomicBool,
    /// Namespace 1's LBA data size, as a power of two (Identify Namespace LBADS; the fake's I/O counts 512-byte
    /// blocks whatever it says).
    ns_lbads: std::sync::atomic::AtomicU8,
    /// The bad R2Ts of `Behaviour::bad_r2t` went out (they go out once).
    bad_r2t_sent: AtomicBool,
    /// H2CData bytes received for the write that got the bad R2Ts.
    bad_h2c_bytes: AtomicU64,
    /// The termination requests the host sent.
    h2c_terms: Mutex<Vec<TermReq>>,
    /// The next this many admin Connects are answered by closing the connection (a target that fails while
    /// it comes up).
    kill_connects: AtomicU32,
    /// Armed: the next Identify of the namespace identification descriptor list (CNS 03h) is answered by closing
    /// the connection and going down (`down`).
    kill_desc_list: AtomicBool,
    /// The namespace identification descriptor list (CNS 03h) is answered with this status instead.
    desc_list_status: Mutex<Option<Status>>,
    /// Served as the holdfast policy log page (none: the page is refused, as by a target that has none).
    policy: Mutex<Option<holdfast_proto::policy::ConnectionPolicy>>,
    /// The policy log page is answered with this status instead (a target that cannot read it this time).
    policy_status: Mutex<Option<Status>>,
    /// Writes (past those `fail_writes` fails) are neither done nor answered while this is set.
    hang_writes: AtomicBool,
    /// Armed: the next read on a connection that answered one before is preceded by a C2HData (SUCCESS) for
    /// that earlier read's CID, full of 0xEE: a target bug that sends data for a completed command.
    stray_c2h: AtomicBool,
    /// Armed: the next read is preceded by a CapsuleResp (success) for a CID the host never used.
    stray_resp: AtomicBool,
    /// Armed: the next read's data comes in two C2HData PDUs, the first flagged LAST_PDU (a target bug).
    data_after_last: AtomicBool,
    /// Bumped to raise a policy-changed asynchronous event: each admin queue completes one held Asynchronous
    /// Event Request with it (as soon as it holds one) for every bump it has not reported yet.
    policy_aen: tokio::sync::watch::Sender<u32>,
    /// The events `policy_aen` raises are Namespace Attribute Changed notices listing namespace 1 (Changed
    /// Namespace List, LID 04h) instead.
    ns_aen: AtomicBool,
    /// KATO of the last admin Connect.
    connect_kato: AtomicU32,
    /// ONCS in Identify Controller (Dataset Management and Write Zeroes unless a test clears them): a Write
    /// Zeroes or Dataset Management without its bit is answered Invalid Command Opcode, as by a controller
    /// without the command (changed while a host is connected: a target that advertised more than it does).
    oncs: std::sync::atomic::AtomicU16,
    /// Write Zeroes and Dataset Management commands received (done or refused).
    write_zeroes_cmds: AtomicU32,
    dsm_cmds: AtomicU32,
    /// The block counts of each Dataset Management command's ranges, in the order received.
    dsm_ranges: Mutex<Vec<Vec<u32>>>,
}

struct Fake {
    addr: String,
    st: Arc<State>,
}

async fn fake(b: Behaviour) -> Fake {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let st = Arc::new(State {
        b,
        ram: Mutex::new(vec![0; NBLOCKS as usize * BS]),
        cc: AtomicU32::new(0),
        connections: AtomicU32::new(0),
        closed: Arc::new(AtomicU32::new(0)),
        keep_alives: AtomicU32::new(0),
        reads: AtomicU64::new(0),
        writes: AtomicU64::new(0),
        r2ts: AtomicU64::new(0),
        h2c_pdus: AtomicU64::new(0),
        termed: AtomicBool::new(false),
        resets: AtomicU32::new(0),
        connects: AtomicU32::new(0),
        sqflow_off: AtomicU32::new(0),
        connects_incapsule: AtomicU32::new(0),
        grant: AtomicU32::new(0),
        fail_writes: AtomicU32::new(0),
        write_attempts: AtomicU32::new(0),
        acre: AtomicBool::new(false),
        corrupt_c2h: AtomicU32::new(0),
        shn: tokio::sync::watch::Sender::new(false),
        discovery_reads: AtomicU32::new(0),
        down: AtomicBool::new(false),
        mute: AtomicBool::new(false),
        ns_gen: AtomicU32::new(0),
        ns1_inactive: AtomicBool::new(false),
        ns_lbads: std::sync::atomic::AtomicU8::new(9),
        next_cntlid: AtomicU32::new(1),
        log: Mutex::new(Vec::new()),
        bad_r2t_sent: AtomicBool::new(false),
        bad_h2c_bytes: AtomicU64::new(0),
        h2c_terms: Mutex::new(Vec::new()),
        kill_connects: AtomicU32::new(0),
        kill_desc_list: AtomicBool::new(false),
        desc_list_status: Mutex::new(None),
        policy: Mutex::new(None),
        policy_status: Mutex::new(None),
        hang_writes: AtomicBool::new(false),
        stray_c2h: AtomicBool::new(false),
        stray_resp: AtomicBool::new(false),
        data_after_last: AtomicBool::new(false),
        policy_aen: tokio::sync::watch::Sender::new(0),
        ns_aen: AtomicBool::new(false),
        connect_kato: AtomicU32::new(0),
        oncs: std::sync::atomic::AtomicU16::new(identify::ONCS_DSM | identify::ONCS_WRITE_ZEROES),
        write_zeroes_cmds: AtomicU32::new(0),
        dsm_cmds: AtomicU32::new(0),
        dsm_ranges: Mutex::new(Vec::new()),
    });
    let st2 = st.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            st2.connections.fetch_add(1, Ordering::Relaxed);
            if st2.mute.load(Ordering::Relaxed) {
                tokio::spawn(async move {
                    tokio::time::sleep(Duration::from_secs(30)).await;
                    drop(s);
                });
                continue;
            }
            if st2.down.load(Ordering::Relaxed) {
                continue;
            }
            let (st3, closed) = (st2.clone(), st2.closed.clone());
            tokio::spawn(async move {
                serve(s, st3).await;
                closed.fetch_add(1, Ordering::Relaxed);
            });
        }
    });
    Fake { addr, st }
}

struct PendingWrite {
    sqe: SubmissionEntry,
    buf: Vec<u8>,
    /// End of the data the current R2T asked for.
    r2t_end: usize,
    /// It got the bad R2Ts of `Behaviour::bad_r2t`.
    bad: bool,
}

struct Conn {
    st: Arc<State>,
    framing: Framing,
    out: BytesMut,
    qid: u16,
    writes: HashMap<u16, PendingWrite>,
    close: bool,
    /// Asynchronous Event Requests held.
    aers: Vec<u16>,
    /// This admin queue's controller (0 on I/O queues).
    cntlid: u16,
    /// The CID of the last read answered on this connection.
    last_read_cid: Option<u16>,
}

impl Conn {
    fn resp(&mut self, cid: u16, status: Status, result: u64) {
        let mut cqe = CompletionEntry::new(cid, status, result as u32);
        cqe.dw1.set((result >> 32) as u32);
        Pdu::CapsuleResp(CapsuleResp { cqe }).encode(&self.framing, &mut self.out);
    }

    fn send_data(&mut self, cid: u16, data: &[u8]) {
        let chunk = self.st.b.c2h_chunk.max(1);
        let mut off = 0;
        while off < data.len() {
            let n = (data.len() - off).min(chunk);
            let last = off + n == data.len();
            let pdu = C2HData {
                cccid: cid,
                datao: off as u32,
                data: Bytes::copy_from_slice(&data[off..off + n]),
                last,
                success: last && self.st.b.c2h_success,
            };
            Pdu::C2HData(pdu).encode(&self.framing, &mut self.out);
            if self.framing.ddgst
                && self.st.corrupt_c2h.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok()
            {
                let end = self.out.len();
                self.out[end - 1] ^= 0xFF; // the data digest is the PDU's last 4 bytes
            }
            off += n;
        }
        if !self.st.b.c2h_success {
            self.resp(cid, Status::SUCCESS, 0);
        }
    }

    fn r2t(&mut self, cid: u16) {
        let w = self.writes.get_mut(&cid).unwrap();
        let start = w.r2t_end;
        let n = (w.buf.len() - start).min(self.st.b.r2t_chunk);
        w.r2t_end = start + n;
        self.send_r2t(cid, start, n);
    }

    fn send_r2t(&mut self, cid: u16, offset: usize, len: usize) {
        self.st.r2ts.fetch_add(1, Ordering::Relaxed);
        Pdu::R2T(R2T { cccid: cid, ttag: cid ^ 0x5A5A, r2to: offset as u32, r2tl: len as u32 })
            .encode(&self.framing, &mut self.out);
    }

    /// Answer a write with the R2Ts of `Behaviour::bad_r2t` instead of doing it.
    fn bad_r2t(&mut self, bad: BadR2T, sqe: SubmissionEntry, incapsule: bool) {
        let (cid, n) = (sqe.cid(), rw::nlb(&sqe) as usize * BS);
        assert_eq!(incapsule, bad == BadR2T::InCapsule, "the test's write has the wrong size for {bad:?}");
        let r2ts: &[(usize, usize)] = match bad {
            BadR2T::Repeat => &[(0, n), (0, n)],
            BadR2T::Overlap => &[(0, n / 2)],
            BadR2T::InCapsule => &[(0, n)],
            BadR2T::Zero => &[(0, 0)],
            BadR2T::Two => &[(0, n / 2), (n / 2, n - n / 2)],
        };
        let (o, l) = r2ts[0];
        self.writes.insert(cid, PendingWrite { sqe, buf: vec![0; n], r2t_end: o + l, bad: true });
        for &(o, l) in r2ts {
            self.send_r2t(cid, o, l);
        }
    }

    fn apply_write(&mut self, sqe: &SubmissionEntry, data: &[u8]) {
        self.st.write_attempts.fetch_add(1, Ordering::Relaxed);
        if self.st.fail_writes.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |n| n.checked_sub(1)).is_ok() {
            return self.resp(sqe.cid(), self.st.b.fail_status, 0);
        }
        if self.st.hang_writes.load(Ordering::Relaxed) {
            return;
        }
        let at = rw::slba(sqe) as usize * BS;
        self.st.ram.lock().unwrap()[at..at + data.len()].copy_from_slice(data);
        self.st.writes.fetch_add(1, Ordering::Relaxed);
        self.resp(sqe.cid(), Status::SUCCESS, 0);
    }

    fn command(&mut self, sqe: SubmissionEntry, data: Bytes) {
        let cid = sqe.cid();
        if sqe.opcode == FABRICS {
            match sqe.fctype() {
                fctype::CONNECT => {
                    if let Some(s) = self.st.b.refuse_connect {
                        return self.resp(cid, s, 0);
                    }
                    let c = ConnectCommand::from_sqe(&sqe);
                    if c.qid.get() == 0
                        && self
                            .st
                            .kill_connects
                            .fetch_update(Ordering::SeqCst, Ordering::SeqCst, |n| n.checked_sub(1))
                            .is_ok()
                    {
                        self.close = true;
                        return;
                    }
                    self.qid = c.qid.get();
                    self.st.connects.fetch_add(1, Ordering::Relaxed);
                    if data.len() == 1024 {
                        self.st.connects_incapsule.fetch_add(1, Ordering::Relaxed);
                    }
                    if c.cattr & fabrics::CATTR_DISABLE_SQ_FLOW != 0 {
                        self.st.sqflow_off.fetch_add(1, Ordering::Relaxed);
                    }
                    self.st.log.lock().unwrap().push(format!("connect {}", self.qid));
                    if self.qid == 0 {
                        self.st.connect_kato.store(c.kato.get(), Ordering::Relaxed);
                        self.cntlid = self.st.next_cntlid.fetch_add(1, Ordering::Relaxed) as u16;
                    }
                    self.resp(cid, Status::SUCCESS, self.cntlid.max(1) as u64);
                }
                fctype::PROPERTY_GET => {
                    let p = PropertyCommand::from_sqe(&sqe);
                    let ccv = self.st.cc.load(Ordering::Relaxed);
                    let v = match p.ofst.get() {
                        property::CAP => cap::build(127, 2),
                        property::VS => 0x0001_0400,
                        property::CC => ccv as u64,
                        property::CSTS => {
                            let mut s = if ccv & cc::EN != 0 { csts::RDY } else { 0 };
                            if ccv & cc::SHN_MASK != 0 {
                                s |= csts::SHST_COMPLETE;
                            }
                            s as u64
                        }
                        _ => 0,
                    };
                    self.resp(cid, Status::SUCCESS, v);
                }
                fctype::PROPERTY_SET => {
                    let p = PropertyCommand::from_sqe(&sqe);
                    if p.ofst.get() == property::CC {
                        if p.value.get() as u32 & cc::SHN_MASK != 0 {
                            self.st.shn.send_replace(true);
                        }
                        self.st.cc.store(p.value.get() as u32, Ordering::Relaxed);
                    }
                    self.resp(cid, Status::SUCCESS, 0);
                }
                _ => self.resp(cid, Status::SUCCESS, 0),
            }
            return;
        }
        if self.qid == 0 {
            match sqe.opcode {
                admin::IDENTIFY => {
                    let mut page = vec![0u8; 4096];
                    match sqe.cdw10.get() as u8 {
                        identify::CNS_CONTROLLER => {
                            let mut id = IdentifyController::new_zeroed();
                            id.mdts = self.st.b.mdts;
                            id.ioccsz.set(self.st.b.ioccsz);
                            id.sgls.set(identify::SGLS_SUPPORTED | identify::SGLS_OFFSET);
                            id.icdoff.set(self.st.b.icdoff);
                            id.nn.set(2);
                            id.crdt1.set(self.st.b.crdt1);
                            id.oncs.set(self.st.oncs.load(Ordering::SeqCst));
                            // Get Log Page offsets (LPA bit 2), unless it refuses them.
                            if !self.st.b.discovery_refuse_offsets {
                                id.lpa = identify::LPA_EXTENDED_DATA;
                            }
                            identify::set_ascii(&mut id.mn, "fake");
                            id.set_holdfast_uniquifier(0xF00D_0000 + self.cntlid as u64);
                            page.copy_from_slice(id.as_bytes());
                        }
                        // Namespace 2 shares namespace 1's blocks (the fake's I/O ignores the NSID), and never changes.
                        identify::CNS_NAMESPACE if sqe.nsid() == 1 && self.st.ns1_inactive.load(Ordering::Relaxed) => {}
                        identify::CNS_NAMESPACE if sqe.nsid() == 1 || sqe.nsid() == 2 => {
                            let mut ns = IdentifyNamespace::new_zeroed();
                            ns.nsze.set(NBLOCKS);
                            ns.ncap.set(NBLOCKS);
                            ns.nuse.set(NBLOCKS);
                            ns.lbaf[0].lbads =
                                if sqe.nsid() == 1 { self.st.ns_lbads.load(Ordering::Relaxed) } else { 9 };
                            ns.lbaf[0].ms.set(self.st.b.ns_metadata);
                            // The NGUID its descriptor list gives (below), as a real controller has them agree.
                            ns.nguid = if sqe.nsid() == 1 && self.st.b.no_ns_ids {
                                [0; 16]
                            } else if sqe.nsid() == 1 {
                                [self.st.ns_gen.load(Ordering::Relaxed) as u8 + 1; 16]
                            } else {
                                [0xEE; 16]
                            };
                            if self.st.b.ns_metadata != 0 {
                                ns.flbas |= 1 << 4;
                            }
                            page.copy_from_slice(ns.as_bytes());
                        }
                        identify::CNS_ACTIVE_NS_LIST => page.copy_from_slice(&identify::active_ns_list(&[1, 2])),
                        identify::CNS_CSI_CONTROLLER => {
                            if let Some((wzsl, dmrl, dmrsl)) = self.st.b.nvm_limits {
                                let mut l = identify::IdentifyControllerNvm::new_zeroed();
                                (l.wzsl, l.dmrl) = (wzsl, dmrl);
                                l.dmrsl.set(dmrsl);
                                page.copy_from_slice(l.as_bytes());
                            }
                        }
                        identify::CNS_NS_DESC_LIST if self.st.desc_list_status.lock().unwrap().is_some() => {
                            let status = self.st.desc_list_status.lock().unwrap().unwrap();
                            self.resp(cid, status, 0);
                            return;
                        }
                        identify::CNS_NS_DESC_LIST if self.st.kill_desc_list.swap(false, Ordering::SeqCst) => {
                            self.st.down.store(true, Ordering::Relaxed);
                            self.close = true;
                            return;
                        }
                        identify::CNS_NS_DESC_LIST if sqe.nsid() == 1 && self.st.b.no_ns_ids => {
                            page.copy_from_slice(&identify::ns_descriptor_list(&[]));
                        }
                        identify::CNS_NS_DESC_LIST if sqe.nsid() == 1 => {
                            let g = self.st.ns_gen.load(Ordering::Relaxed) as u8 + 1;
                            page.copy_from_slice(&identify::ns_descriptor_list(&[identify::NsDescriptor::Nguid(
                                [g; 16],
                            )]));
                        }
                        identify::CNS_NS_DESC_LIST if sqe.nsid() == 2 => page.copy_from_slice(
                            &identify::ns_descriptor_list(&[identify::NsDescriptor::Nguid([0xEE; 16])]),
                        ),
                        _ => {}
                    }
                    if self.st.b.short_identify_ns && sqe.cdw10.get() as u8 == identify::CNS_NAMESPACE {
                        page.truncate(384);
                    }
                    self.send_data(cid, &page);
                }
                admin::SET_FEATURES => {
                    if sqe.cdw10.get() as u8 == holdfast_proto::features::KEEP_ALIVE_TIMER {
                        self.st.log.lock().unwrap().push(format!("kato {}", sqe.cdw11.get()));
                    }
                    if sqe.cdw10.get() as u8 == holdfast_proto::features::HOST_BEHAVIOR_SUPPORT {
                        self.st.acre.store(data.first() == Some(&1), Ordering::Relaxed);
                    }
                    let mut dw11 = sqe.cdw11.get();
                    let grant = self.st.grant.load(Ordering::Relaxed);
                    if grant > 0 {
                        let n = (grant - 1).min(dw11 & 0xFFFF);
                        dw11 = n | n << 16;
                    }
                    self.resp(cid, Status::SUCCESS, if sqe.cdw10.get() as u8 == 7 { dw11 as u64 } else { 0 })
                }
                admin::KEEP_ALIVE => {
                    self.st.keep_alives.fetch_add(1, Ordering::Relaxed);
                    self.resp(cid, Status::SUCCESS, 0)
                }
                admin::ASYNC_EVENT_REQUEST if self.st.b.term_aers => {
                    let t = TermReq { fes: pdu::Fes::SequenceError as u16, fei: 0, data: Bytes::new() };
                    Pdu::C2HTermReq(t).encode(&self.framing, &mut self.out);
                    self.close = true;
                }
                admin::ASYNC_EVENT_REQUEST => self.aers.push(cid), // held, as a controller does
                admin::GET_LOG_PAGE if get_log_page::lid(&sqe) == LID_DISCOVERY && self.st.b.discovery_drop_reads => {
                    self.st.discovery_reads.fetch_add(1, Ordering::Relaxed);
                    self.close = true;
                }
                admin::GET_LOG_PAGE if get_log_page::lid(&sqe) == LID_DISCOVERY && self.st.b.discovery_records > 0 => {
                    let nread = self.st.discovery_reads.fetch_add(1, Ordering::Relaxed);
                    let (count, gen) = match self.st.b.discovery_shrink_to {
                        Some(k) if nread > 0 => (k, 8),
                        _ => (self.st.b.discovery_records, 7),
                    };
                    let len = get_log_page::len_bytes(&sqe) as usize;
                    if self.st.b.mdts > 0 && len > 4096 << self.st.b.mdts {
                        let t = TermReq { fes: 5, fei: 0, data: Bytes::new() };
                        Pdu::C2HTermReq(t).encode(&self.framing, &mut self.out);
                        self.close = true;
                        return;
                    }
                    let records: Vec<_> = (0..count)
                        .map(|i| {
                            let nqn = format!("nqn.2026-01.io.holdfast:rec-{i:03}");
                            DiscoveryLogEntry::build(2, 1, 0xFFFF, 32, "4420", &nqn, "127.0.0.1", 1)
                        })
                        .collect();
                    let mut log = discovery_log_bytes(gen, &records);
                    if self.st.b.discovery_numrec_extra > 0 {
                        let claimed = count as u64 + self.st.b.discovery_numrec_extra;
                        log[8..16].copy_from_slice(&claimed.to_le_bytes());
                        let at = (get_log_page::offset(&sqe) as usize).min(log.len());
                        let end = (at + len).min(log.len());
                        let part = log[at..end].to_vec();
                        self.send_data(cid, &part);
                        return;
                    }
                    // An offset that is not a whole dword is Invalid Field (LPOL/LPOU, NVMe Base 2.0 §5.16).
                    let refused = (self.st.b.discovery_refuse_offsets && get_log_page::offset(&sqe) > 0)
                        || !get_log_page::offset(&sqe).is_multiple_of(4);
                    if refused || get_log_page::offset(&sqe) > log.len() as u64 {
                        self.resp(cid, Status::INVALID_FIELD.with_dnr(), 0);
                        return;
                    }
                    let part = log_page_slice(&log, get_log_page::offset(&sqe), len);
                    self.send_data(cid, &part[..part.len().min(self.st.b.discovery_read_bytes.unwrap_or(len))]);
                }
                admin::GET_LOG_PAGE
                    if get_log_page::lid(&sqe) == holdfast_proto::policy::LID_HOLDFAST_POLICY
                        && self.st.policy_status.lock().unwrap().is_some() =>
                {
                    let status = self.st.policy_status.lock().unwrap().unwrap();
                    self.resp(cid, status, 0)
                }
                admin::GET_LOG_PAGE
                    if get_log_page::lid(&sqe) == holdfast_proto::policy::LID_HOLDFAST_POLICY
                        && self.st.policy.lock().unwrap().is_some() =>
                {
                    let p = self.st.policy.lock().unwrap().unwrap().to_log_page();
                    let len = get_log_page::len_bytes(&sqe) as usize;
                    let b = p.as_bytes();
                    let v = b[..len.min(b.len()).min(self.st.b.policy_page_bytes.unwrap_or(len))].to_vec();
                    self.send_data(cid, &v);
                }
                admin::GET_LOG_PAGE
                    if get_log_page::lid(&sqe) == LID_CHANGED_NS_LIST && self.st.ns_aen.load(Ordering::SeqCst) =>
                {
                    let l = ChangedNamespaceList::build(&[1]);
                    self.send_data(cid, l.as_bytes());
                }
                admin::GET_LOG_PAGE => self.resp(cid, Status::INVALID_LOG_PAGE, 0),
                admin::HOLDFAST_FENCE_ASSOCIATION => {
                    let u = sqe.cdw11.get() as u64 | (sqe.cdw12.get() as u64) << 32;
                    self.st.log.lock().unwrap().push(format!("fence {} {u:#x}", sqe.cdw10.get()));
                    self.resp(cid, Status::SUCCESS, 0);
                }
                _ => self.resp(cid, Status::INVALID_OPCODE, 0),
            }
            return;
        }
        let (counter, oncs_bit) = match sqe.opcode {
            io::WRITE_ZEROES => (Some(&self.st.write_zeroes_cmds), identify::ONCS_WRITE_ZEROES),
            io::DATASET_MANAGEMENT => (Some(&self.st.dsm_cmds), identify::ONCS_DSM),
            _ => (None, 0),
        };
        if let Some(counter) = counter {
            counter.fetch_add(1, Ordering::SeqCst);
            if self.st.oncs.load(Ordering::SeqCst) & oncs_bit == 0 {
                return self.resp(cid, Status::INVALID_OPCODE.with_dnr(), 0);
            }
        }
        match sqe.opcode {
            io::READ => {
                self.st.reads.fetch_add(1, Ordering::Relaxed);
                if self.st.b.hang_reads {
                    return;
                }
                let poisoned = self.st.b.poison_lba == Some(rw::slba(&sqe));
                if self.st.b.garbage_first_read && !self.st.termed.swap(true, Ordering::Relaxed) {
                    // Type 7Fh: no such PDU. HLEN 8, PLEN 8.
                    self.out.extend_from_slice(&[0x7F, 0, 8, 0, 8, 0, 0, 0]);
                    return;
                }
                if poisoned || (self.st.b.term_first_read && !self.st.termed.swap(true, Ordering::Relaxed)) {
                    let t = TermReq { fes: 1, fei: 0, data: Bytes::new() };
                    Pdu::C2HTermReq(t).encode(&self.framing, &mut self.out);
                    self.close = true;
                    return;
                }
                let (at, n) = (rw::slba(&sqe) as usize * BS, rw::nlb(&sqe) as usize * BS);
                let data = self.st.ram.lock().unwrap()[at..at + n].to_vec();
                if let Some(prev) = self.last_read_cid.filter(|_| self.st.stray_c2h.swap(false, Ordering::Relaxed)) {
                    let stray =
                        C2HData { cccid: prev, datao: 0, data: Bytes::from(vec![0xEE; n]), last: true, success: true };
                    Pdu::C2HData(stray).encode(&self.framing, &mut self.out);
                }
                if self.st.stray_resp.swap(false, Ordering::Relaxed) {
                    self.resp(0x0FFF, Status::SUCCESS, 0);
                }
                self.last_read_cid = Some(cid);
                if data.len() > 1 && self.st.data_after_last.swap(false, Ordering::Relaxed) {
                    let h = data.len() / 2;
                    for (datao, part) in [(0, &data[..h]), (h, &data[h..])] {
                        let d = Bytes::copy_from_slice(part);
                        let pdu = C2HData { cccid: cid, datao: datao as u32, data: d, last: true, success: false };
                        Pdu::C2HData(pdu).encode(&self.framing, &mut self.out);
                    }
                    self.resp(cid, Status::SUCCESS, 0);
                    return;
                }
                self.send_data(cid, &data);
            }
            io::WRITE => {
                let n = rw::nlb(&sqe) as usize * BS;
                if let Some(bad) = self.st.b.bad_r2t.filter(|_| !self.st.bad_r2t_sent.swap(true, Ordering::Relaxed)) {
                    return self.bad_r2t(bad, sqe, !data.is_empty());
                }
                if let Some(asked) = self.st.b.short_r2t_writes.filter(|_| data.is_empty()) {
                    // Ask for `asked` bytes at most (none: complete at once), then complete the write when
                    // they came (below, in `pdu`), doing nothing with them.
                    let asked = asked.min(n);
                    self.writes.insert(cid, PendingWrite { sqe, buf: vec![0; n], r2t_end: asked, bad: true });
                    if asked == 0 {
                        self.resp(cid, Status::SUCCESS, 0);
                    } else {
                        self.send_r2t(cid, 0, asked);
                    }
                    return;
                }
                if !data.is_empty() {
                    assert_eq!(data.len(), n, "in-capsule data length");
                    self.apply_write(&sqe, &data);
                } else {
                    self.writes.insert(cid, PendingWrite { sqe, buf: vec![0; n], r2t_end: 0, bad: false });
                    self.r2t(cid);
                }
            }
            io::WRITE_ZEROES
                if self
                    .st
                    .b
                    .nvm_limits
                    .is_some_and(|(wzsl, _, _)| wzsl != 0 && rw::nlb(&sqe) as usize * BS > 4096 << wzsl) =>
            {
                self.resp(cid, Status::INVALID_FIELD.with_dnr(), 0);
            }
            io::WRITE_ZEROES => {
                let (at, n) = (rw::slba(&sqe) as usize * BS, rw::nlb(&sqe) as usize * BS);
                self.st.ram.lock().unwrap()[at..at + n].fill(0);
                self.resp(cid, Status::SUCCESS, 0);
            }
            // Its ranges fetched first when they did not come in the capsule, as a target does before it
            // completes a command with data.
            io::DATASET_MANAGEMENT if data.is_empty() => {
                let n = ((sqe.cdw10.get() & 0xFF) as usize + 1) * 16;
                self.writes.insert(cid, PendingWrite { sqe, buf: vec![0; n], r2t_end: 0, bad: false });
                self.r2t(cid);
            }
            io::DATASET_MANAGEMENT => {
                let st = self.dsm_status(&sqe, &data);
                self.resp(cid, st, 0)
            }
            io::FLUSH => self.resp(cid, Status::SUCCESS, 0),
            _ => self.resp(cid, Status::INVALID_OPCODE, 0),
        }
    }

    /// A Dataset Management command's status: Invalid Field over the limits it was given (`nvm_limits`), each
    /// range counted in `dsm_ranges`.
    fn dsm_status(&self, sqe: &SubmissionEntry, data: &[u8]) -> Status {
        let n = (sqe.cdw10.get() & 0xFF) as usize + 1;
        let nlbs: Vec<u32> = data.chunks(16).take(n).map(|r| u32::from_le_bytes(r[4..8].try_into().unwrap())).collect();
        self.st.dsm_ranges.lock().unwrap().push(nlbs.clone());
        match self.st.b.nvm_limits {
            Some((_, dmrl, dmrsl))
                if (dmrl != 0 && n > dmrl as usize) || (dmrsl != 0 && nlbs.iter().any(|&b| b > dmrsl)) =>
            {
                Status::INVALID_FIELD.with_dnr()
            }
            _ => Status::SUCCESS,
        }
    }

    fn pdu(&mut self, pdu: Pdu) {
        match pdu {
            Pdu::IcReq(r) => {
                let g = self.st.b.grant_digests;
                let resp = IcResp {
                    pfv: 0,
                    cpda: 0,
                    hdgst: g && r.hdgst,
                    ddgst: g && r.ddgst,
                    maxh2cdata: self.st.b.maxh2cdata,
                };
                Pdu::IcResp(resp).encode(&Framing::default(), &mut self.out);
                self.framing = Framing { hdgst: resp.hdgst, ddgst: resp.ddgst, pda: r.hpda };
            }
            Pdu::CapsuleCmd(c) => self.command(c.sqe, c.data),
            Pdu::H2CData(d) => {
                self.st.h2c_pdus.fetch_add(1, Ordering::Relaxed);
                assert!(d.data.len() <= self.st.b.maxh2cdata as usize, "H2CData larger than MAXH2CDATA");
                let w = self.writes.get_mut(&d.cccid).expect("H2CData for a write we asked for");
                if w.bad {
                    // Count what the host sends; complete nothing.
                    self.st.bad_h2c_bytes.fetch_add(d.data.len() as u64, Ordering::Relaxed);
                    let n = w.buf.len();
                    if self.st.b.short_r2t_writes.is_some() && d.last {
                        self.resp(d.cccid, Status::SUCCESS, 0);
                        return;
                    }
                    if self.st.b.bad_r2t == Some(BadR2T::Overlap) && d.last && w.r2t_end == n / 2 {
                        w.r2t_end = n / 4 + n / 2;
                        self.send_r2t(d.cccid, n / 4, n / 2);
                    }
                    return;
                }
                assert_eq!(d.ttag, d.cccid ^ 0x5A5A, "TTAG echoed");
                let at = d.datao as usize;
                assert!(at + d.data.len() <= w.r2t_end, "H2CData beyond the R2T");
                w.buf[at..at + d.data.len()].copy_from_slice(&d.data);
                if at + d.data.len() == w.r2t_end {
                    assert!(d.last, "LAST_PDU on the last H2CData of an R2T");
                    if w.r2t_end == w.buf.len() {
                        let w = self.writes.remove(&d.cccid).unwrap();
                        if w.sqe.opcode == io::DATASET_MANAGEMENT {
                            let st = self.dsm_status(&w.sqe, &w.buf);
                            self.resp(d.cccid, st, 0);
                        } else {
                            self.apply_write(&w.sqe, &w.buf);
                        }
                    } else {
                        self.r2t(d.cccid);
                    }
                } else {
                    assert!(!d.last, "LAST_PDU before the end of the R2T");
                }
            }
            Pdu::H2CTermReq(t) => {
                self.st.h2c_terms.lock().unwrap().push(t);
                self.close = true;
            }
            other => panic!("unexpected PDU from the host: {other:?}"),
        }
    }
}

async fn serve(mut s: TcpStream, st: Arc<State>) {
    let limits = Limits { max_incapsule: 64 * 1024, max_h2c_data: st.b.maxh2cdata, max_c2h_data: 0 };
    let mut dec = PduDecoder::new(Role::Controller, limits);
    let mut inbuf = BytesMut::with_capacity(64 * 1024);
    let mut shn = st.shn.subscribe();
    let mut aen = st.policy_aen.subscribe();
    let mut aen_seen = *aen.borrow_and_update();
    let mut c = Conn {
        st,
        framing: Framing::default(),
        out: BytesMut::new(),
        qid: 0,
        writes: HashMap::new(),
        close: false,
        aers: Vec::new(),
        cntlid: 0,
        last_read_cid: None,
    };
    loop {
        if c.st.down.load(Ordering::Relaxed) {
            return;
        }
        loop {
            match dec.decode(&mut inbuf) {
                Ok(Some(p)) => {
                    let was_ic = matches!(p, Pdu::IcReq(_));
                    c.pdu(p);
                    if was_ic {
                        dec.set_negotiated(c.framing.hdgst, c.framing.ddgst, 0);
                    }
                }
                Ok(None) => break,
                Err(e) => panic!("fake controller could not decode: {e}"),
            }
        }
        let raised = *aen.borrow_and_update();
        if c.qid == 0 && c.cntlid != 0 && raised != aen_seen && !c.aers.is_empty() {
            aen_seen = aen_seen.wrapping_add(1);
            let cid = c.aers.remove(0);
            let ev = if c.st.ns_aen.load(Ordering::SeqCst) {
                holdfast_proto::features::AsyncEvent::notice(
                    holdfast_proto::features::notice::NS_ATTR_CHANGED,
                    LID_CHANGED_NS_LIST,
                )
            } else {
                holdfast_proto::policy::policy_changed_event()
            };
            c.resp(cid, Status::SUCCESS, ev.to_dword() as u64);
        }
        if !c.out.is_empty() && s.write_all(&c.out.split()).await.is_err() {
            return;
        }
        if c.close {
            return;
        }
        let close_on_shn = c.qid != 0 && c.st.b.close_io_on_shn;
        let events_due = c.qid == 0 && *aen.borrow() != aen_seen && !c.aers.is_empty();
        tokio::select! {
            _ = aen.changed() => {},
            _ = std::future::ready(()), if events_due => {},
            r = s.read_buf(&mut inbuf) => match r {
                Ok(0) => return abort_held(s, c).await,
                Err(_) => return,
                Ok(_) => {}
            },
            _ = async { let _ = shn.wait_for(|v| *v).await; }, if close_on_shn => return,
        }
    }
}

/// The host closed its side: like the Linux target, complete the held Asynchronous Event Requests (aborted,
/// SQ deletion), then close. Two writes apart in time: if the host's socket is already gone, the first one
/// draws a RST and the second fails.
async fn abort_held(mut s: TcpStream, mut c: Conn) {
    for cid in std::mem::take(&mut c.aers) {
        c.resp(cid, Status::ABORTED_SQ_DELETION, 0);
        let out = c.out.split();
        let (a, b) = out.split_at(out.len() / 2);
        let first = s.write_all(a).await;
        tokio::time::sleep(Duration::from_millis(100)).await;
        if first.is_err() || s.write_all(b).await.is_err() {
            c.st.resets.fetch_add(1, Ordering::Relaxed);
            return;
        }
    }
    let _ = s.shutdown().await;
}

fn opts(f: &Fake, queues: u16, digests: bool) -> ConnectOptions {
    let mut o = ConnectOptions::new(f.addr.clone(), NQN);
    o.nr_io_queues = queues;
    o.queue_size = 8;
    o.hdgst = digests;
    o.ddgst = digests;
    o.connect_timeout = Duration::from_secs(5);
    o
}

/// Take the fake down (open connections close at their next PDU, new ones at once) and wait until `c` is
/// reconnecting.
async fn go_down(f: &Fake, c: &Controller) {
    f.st.down.store(true, Ordering::Relaxed);
    let t0 = std::time::Instant::now();
    while !matches!(c.state(), holdfast_host::controller::State::Reconnecting { .. }) {
        assert!(t0.elapsed() < Duration::from_secs(3), "the loss was never noticed");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// Wait until `c` is live again (a reconnect's association up), within 5 s.
async fn live(c: &Controller) {
    let t0 = std::time::Instant::now();
    while c.state() != holdfast_host::controller::State::Live {
        assert!(t0.elapsed() < Duration::from_secs(5), "never live again: {:?}", c.state());
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

fn pattern(len: usize, seed: u8) -> Bytes {
    (0..len).map(|i| (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed as u32).to_le_bytes()[1]).collect()
}

/// Write, read back and compare through several queues; then flush, write zeroes and deallocate.
async fn round_trip(f: &Fake, digests: bool) {
    let c = Controller::connect(opts(f, 2, digests)).await.expect("connect");
    let ns = Namespace::open(&c, 1).await.expect("namespace");
    assert_eq!((ns.block_size(), ns.nblocks()), (BS as u32, NBLOCKS));
    let data = pattern(96 * 1024 + BS, 3);
    ns.write(10, data.clone(), false).await.expect("write");
    ns.write(500, pattern(BS, 9), true).await.expect("write fua");
    let back = ns.read(10, (data.len() / BS) as u64).await.expect("read");
    assert!(back == data, "read-back differs");
    // Many small I/Os at once over both queues.
    let mut tasks = Vec::new();
    for i in 0..64u64 {
        let ns = ns.clone();
        tasks.push(tokio::spawn(async move {
            let d = pattern(2 * BS, i as u8);
            ns.write(1000 + 2 * i, d.clone(), false).await?;
            let r = ns.read(1000 + 2 * i, 2).await?;
            assert!(r == d, "block {i} differs");
            Ok::<_, Error>(())
        }));
    }
    for t in tasks {
        t.await.unwrap().expect("concurrent I/O");
    }
    ns.flush().await.expect("flush");
    ns.write_zeroes(10, 4).await.expect("write zeroes");
    assert!(ns.read(10, 4).await.unwrap().iter().all(|&b| b == 0));
    ns.deallocate(100, 8).await.expect("deallocate");
    assert!(matches!(ns.read(NBLOCKS - 1, 2).await, Err(Error::Invalid(_))), "out of range is refused locally");
    c.shutdown().await.unwrap();
}

#[tokio::test]
async fn io_through_incapsule_writes_and_capsule_responses() {
    let f = fake(Behaviour::default()).await;
    round_trip(&f, false).await;
    // 8 KiB in-capsule: only the one 97 KiB write needs an R2T.
    assert_eq!(f.st.r2ts.load(Ordering::Relaxed), 1);
    assert_eq!(f.st.cc.load(Ordering::Relaxed) & cc::SHN_MASK, cc::SHN_NORMAL, "orderly shutdown sets CC.SHN");
}

#[tokio::test]
async fn r2t_splitting_c2h_reassembly_success_flag_mdts_and_digests() {
    let f = fake(Behaviour {
        maxh2cdata: 4096,
        ioccsz: 4, // 4 × 16 − 64 = 0: no in-capsule data on I/O queues
        mdts: 3,   // 32 KiB per command
        c2h_chunk: 1000,
        c2h_success: true,
        r2t_chunk: 12 * 1024,
        ..Behaviour::default()
    })
    .await;
    round_trip(&f, true).await;
    let (r2ts, h2c) = (f.st.r2ts.load(Ordering::Relaxed), f.st.h2c_pdus.load(Ordering::Relaxed));
    assert!(r2ts > 64 && h2c > r2ts, "writes went through R2T and were split ({r2ts} R2Ts, {h2c} H2CData)");
    // 97 KiB in pieces of at most 32 KiB (MDTS 3): at least 4 write commands for the first write alone.
    assert!(f.st.writes.load(Ordering::Relaxed) >= 4 + 1 + 64);
    // With no in-capsule data on I/O queues, their Connect still carries its data in the capsule.
    assert_eq!(f.st.connects_incapsule.load(Ordering::Relaxed), f.st.connects.load(Ordering::Relaxed));
}

#[tokio::test]
async fn disable_sqflow_asks_on_every_queue_and_only_when_set() {
    // The fake keeps SQ flow control (its Connect responses' SQHD is not FFFFh) and answers reads with the
    // SUCCESS flag all the same: the host needs neither, and takes both.
    let f = fake(Behaviour { c2h_success: true, ..Behaviour::default() }).await;
    let c = Controller::connect(opts(&f, 2, false)).await.expect("connect");
    c.shutdown().await.unwrap();
    assert_eq!((f.st.connects.load(Ordering::Relaxed), f.st.sqflow_off.load(Ordering::Relaxed)), (3, 0));
    let mut o = opts(&f, 2, false);
    o.disable_sqflow = true;
    let c = Controller::connect(o).await.expect("connect");
    let ns = Namespace::open(&c, 1).await.expect("namespace");
    let data = pattern(4 * BS, 7);
    ns.write(20, data.clone(), false).await.expect("write");
    assert!(ns.read(20, 4).await.expect("read") == data, "read-back differs");
    c.shutdown().await.unwrap();
    assert_eq!(
        (f.st.connects.load(Ordering::Relaxed), f.st.sqflow_off.load(Ordering::Relaxed)),
        (6, 3),
        "admin + 2 I/O"
    );
}

#[tokio::test]
async fn digests_not_granted_is_an_error() {
    let f = fake(Behaviour { grant_digests: false, ..Behaviour::default() }).await;
    let t0 = Instant::now();
    let e = Controller::connect(opts(&f, 1, true)).await.err().expect("must fail");
    assert!(matches!(e, Error::Protocol { .. }), "{e}");
    assert!(e.to_string().contains("digests not granted"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(3));
}

#[tokio::test]
async fn refused_connect_says_why() {
    let f = fake(Behaviour { refuse_connect: Some(Status::CONNECT_INVALID_HOST), ..Behaviour::default() }).await;
    let e = Controller::connect(opts(&f, 1, false)).await.err().expect("must fail");
    assert!(matches!(e, Error::ConnectRefused { .. }), "{e}");
    assert!(e.to_string().contains("not allowed"), "{e}");
}

#[tokio::test]
async fn closed_port_fails_at_once() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = l.local_addr().unwrap().to_string();
    drop(l);
    let mut o = ConnectOptions::new(addr, NQN);
    o.connect_timeout = Duration::from_secs(2);
    let t0 = Instant::now();
    let e = Controller::connect(o).await.err().expect("must fail");
    assert!(matches!(e, Error::Connect { .. }), "{e}");
    assert!(e.to_string().contains("refused"), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(2));
}

#[tokio::test]
async fn silent_listener_times_out() {
    // Accepts TCP but never answers the ICReq.
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let _keep = tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let mut o = ConnectOptions::new(addr, NQN);
    o.connect_timeout = Duration::from_millis(500);
    let t0 = Instant::now();
    let e = Controller::connect(o).await.err().expect("must fail");
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(3), "{:?}", t0.elapsed());
}

#[tokio::test]
async fn unanswered_command_never_hangs() {
    let f = fake(Behaviour { hang_reads: true, ..Behaviour::default() }).await;
    let mut o = opts(&f, 1, false);
    o.io_timeout = Duration::from_millis(700);
    o.reconnect_delay = Some(Duration::from_millis(100));
    o.ctrl_loss_tmo = Some(Duration::from_secs(2));
    let c = Controller::connect(o).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    let t0 = Instant::now();
    let e =
        tokio::time::timeout(Duration::from_secs(15), ns.read(0, 1)).await.expect("read must not hang").unwrap_err();
    assert!(matches!(e, Error::Timeout { .. }), "{e}");
    assert!(t0.elapsed() < Duration::from_secs(8), "{:?}", t0.elapsed());
    assert_eq!(f.st.reads.load(Ordering::Relaxed), 3, "issued, then re-issued twice on new connections");
    // The controller itself is fine: other commands still work.
    assert!(c.active_namespaces().await.is_ok());
}

/// A fake that answers the first Read with a termination request, and a controller on it with `queues` I/O
/// queues that reconnects after 100 ms.
async fn terminating_fake(queues: u16) -> (Fake, Controller, Namespace) {
    let f = fake(Behaviour { term_first_read: true, ..Behaviour::default() }).await;
    let mut o = opts(&f, queues, false);
    o.reconnect_delay = Some(Duration::from_millis(100));
    let c = Controller::connect(o).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    (f, c, ns)
}

/// A malformed PDU from the target (an unknown type) ends the connection with an H2CTermReq that says so
/// (FES Invalid PDU Header Field, the offending header as its data), sent after whatever was queued ahead of it;
/// the read is issued again on the new connection.
#[tokio::test]
async fn a_malformed_pdu_gets_an_h2c_termination_request_and_a_reconnect() {
    let f = fake(Behaviour { garbage_first_read: true, ..Behaviour::default() }).await;
    let mut o = opts(&f, 1, false);
    o.reconnect_delay = Some(Duration::from_millis(100));
    let c = Controller::connect(o).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    let d = pattern(BS, 4);
    ns.write(8, d.clone(), false).await.unwrap();
    let r =
        tokio::time::timeout(Duration::from_secs(10), ns.read(8, 1)).await.expect("no hang").expect("re-issued read");
    assert!(r == d);
    let terms = f.st.h2c_terms.lock().unwrap().clone();
    assert_eq!(terms.len(), 1, "{terms:?}");
    assert_eq!((terms[0].fes, &terms[0].data[..]), (1, &[0x7Fu8, 0, 8, 0, 8, 0, 0, 0][..]));
    c.shutdown().await.unwrap();
}

#[tokio::test]
async fn termination_request_reconnects_and_reissues() {
    let (f, c, ns) = terminating_fake(1).await;
    let d = pattern(4 * BS, 7);
    ns.write(40, d.clone(), false).await.unwrap();
    let mut ev = c.events();
    let r =
        tokio::time::timeout(Duration::from_secs(10), ns.read(40, 4)).await.expect("no hang").expect("re-issued read");
    assert!(r == d);
    let mut saw_cause = false;
    while let Ok(e) = ev.try_recv() {
        if let holdfast_host::controller::Event::Reconnecting { cause, .. } = e {
            saw_cause |= cause.contains("terminated the connection");
        }
    }
    assert!(saw_cause, "the termination request is the reported cause");
    assert!(f.st.connections.load(Ordering::Relaxed) >= 4, "admin + I/O queue, twice");
    c.shutdown().await.unwrap();
}

#[tokio::test]
async fn keep_alive_is_sent_well_inside_kato() {
    let f = fake(Behaviour::default()).await;
    let mut o = opts(&f, 1, false);
    o.kato = Some(Duration::from_millis(900));
    let c = Controller::connect(o).await.unwrap();
    tokio::time::sleep(Duration::from_millis(1000)).await;
    assert!(f.st.keep_alives.load(Ordering::Relaxed) >= 2, "{}", f.st.keep_alives.load(Ordering::Relaxed));
    c.shutdown().await.unwrap();
}

/// A KATO below the floor (here the host's own option; a target's policy page may say 1 ms) is raised to
/// policy::MIN_KATO: Keep Alives go out, and nothing panics (the keep-alive task once computed its reply
/// window as KATO minus the period, which underflowed below 100 ms and killed the task silently).
#[tokio::test]
async fn a_tiny_kato_is_raised_to_the_floor_and_keep_alives_go_out() {
    let f = fake(Behaviour::default()).await;
    let mut o = opts(&f, 1, false);
    o.kato = Some(Duration::from_millis(50));
    let c = Controller::connect(o).await.unwrap();
    assert_eq!(c.effective_policy().kato.0, holdfast_host::policy::MIN_KATO);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert!(f.st.keep_alives.load(Ordering::Relaxed) >= 2, "{}", f.st.keep_alives.load(Ordering::Relaxed));
    assert_eq!(c.state(), holdfast_host::controller::State::Live);
    c.shutdown().await.unwrap();
}

/// reconnect_delay 0 ("at once", as SPDK allows) against a target that drops every new connection: attempts
/// are still spaced by policy::MIN_RETRY_GAP, not a storm, and shutting the controller down in the middle
/// fails the I/O queued meanwhile at once, not at ctrl_loss_tmo.
#[tokio::test]
async fn zero_reconnect_delay_is_no_connection_storm_and_shutdown_ends_the_reconnecting() {
    let f = fake(Behaviour::default()).await;
    let mut o = opts(&f, 1, false);
    o.kato = Some(Duration::from_millis(600));
    o.reconnect_delay = Some(Duration::ZERO);
    o.reconnect_delay_max = Some(Duration::ZERO);
    o.ctrl_loss_tmo = Some(Duration::from_secs(60));
    let c = Controller::connect(o).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    // The next Keep Alive finds the admin queue closed: the host reconnects, and every attempt fails at once.
    go_down(&f, &c).await;
    let before = f.st.connections.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(500)).await;
    let attempts = f.st.connections.load(Ordering::Relaxed) - before;
    assert!((1..=8).contains(&attempts), "{attempts} connection attempts in 500 ms");
    let read = tokio::spawn(async move { ns.read(0, 1).await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.shutdown().await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(3), read).await;
    let r = r.expect("a read queued while reconnecting was still waiting 3 s after shutdown").unwrap();
    assert!(matches!(r, Err(holdfast_host::Error::NotConnected(_))), "{r:?}");
}

/// fast_io_fail_tmo holds while a reconnect attempt is still under way: here the target accepts the
/// connection and never answers the ICReq, so the attempt would last connect_timeout (5 s); the I/O queued
/// meanwhile fails once fast_io_fail_tmo (400 ms) has passed, not when the attempt gives up.
#[tokio::test]
async fn fast_io_fail_tmo_holds_during_a_reconnect_attempt_into_a_black_hole() {
    let f = fake(Behaviour::default()).await;
    let mut o = opts(&f, 1, false);
    o.kato = Some(Duration::from_millis(600));
    o.reconnect_delay = Some(Duration::from_millis(100));
    o.fast_io_fail_tmo = Some(Duration::from_millis(400));
    o.ctrl_loss_tmo = Some(Duration::from_secs(60));
    let c = Controller::connect(o).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    f.st.mute.store(true, Ordering::Relaxed);
    go_down(&f, &c).await;
    let lost = std::time::Instant::now();
    let r = tokio::time::timeout(Duration::from_secs(3), ns.read(0, 1)).await;
    let r = r.expect("a read queued while reconnecting waited 3 s, past fast_io_fail_tmo (400 ms)");
    assert!(matches!(r, Err(holdfast_host::Error::PathError(_))), "{r:?}");
    assert!(lost.elapsed() < Duration::from_millis(1500), "failed only after {:?}", lost.elapsed());
    c.shutdown().await.unwrap();
}

/// A reconnect finds namespace 1 with another NGUID (a target re-created with new identifiers): another
/// namespace under the same NSID. The write queued during the outage is not replayed onto it; it fails saying
/// why, and the namespace's handle fails from then on, while the controller stays live (as the Linux host
/// removes that namespace alone). (With the same identifiers, every other reconnect test here goes through.)
#[tokio::test]
async fn changed_namespace_identifiers_fail_pending_io_instead_of_replaying_it() {
    let f = fake(Behaviour::default()).await;
    let c = Controller::connect(riding_opts(&f)).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    ns.write(0, pattern(BS, 1), false).await.unwrap();
    go_down(&f, &c).await;
    let writes = f.st.write_attempts.load(Ordering::Relaxed);
    let w = tokio::spawn({
        let ns = ns.clone();
        async move { ns.write(0, pattern(BS, 2), false).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    f.st.ns_gen.store(1, Ordering::Relaxed);
    f.st.down.store(false, Ordering::Relaxed);
    let r = tokio::time::timeout(Duration::from_secs(5), w).await.expect("the queued write never finished").unwrap();
    match r {
        Err(Error::NamespaceGone(why)) => {
            assert!(why.contains("namespace 1") && why.contains("identifiers changed"), "{why}")
        }
        other => panic!("expected the write failed over changed identifiers, got {other:?}"),
    }
    assert_eq!(f.st.write_attempts.load(Ordering::Relaxed), writes, "the write was replayed onto another namespace");
    live(&c).await;
    let e = ns.write(0, pattern(BS, 3), false).await.expect_err("a write through the handle of the namespace replaced");
    assert!(e.to_string().contains("namespace 1") && e.to_string().contains("replaced"), "{e}");
    assert_eq!(f.st.write_attempts.load(Ordering::Relaxed), writes, "the handle wrote into another namespace");
    c.shutdown().await.unwrap();
}

/// A reconnect finds namespace 1 replaced (another NGUID) and namespace 2 as it was: namespace 1 alone is gone,
/// as the Linux host (nvme_validate_ns) removes that namespace alone, and namespace 2 rides through. Namespace
/// 1's write in flight when the connection went (kept for the reconnect) and its writes queued during the outage,
/// more than the submission channel holds (16), so that some wait for room, fail saying why: none is sent to the
/// namespace now under NSID 1 (README, No stale writes). Namespace 2's write queued meanwhile completes, the controller stays
/// live, and namespace 2's I/O goes on; namespace 1 opened again is the new namespace.
#[tokio::test]
async fn a_namespace_replaced_across_a_reconnect_fails_its_pending_io_and_the_others_ride_through() {
    let f = fake(Behaviour::default()).await;
    let c = Controller::connect(riding_opts(&f)).await.unwrap();
    let ns1 = Namespace::open(&c, 1).await.unwrap();
    let ns2 = Namespace::open(&c, 2).await.unwrap();
    let before = pattern(64 * BS, 1);
    ns1.write(0, before.clone(), false).await.unwrap();
    // Held unanswered by the fake (and not done): in flight when the connection goes.
    f.st.hang_writes.store(true, Ordering::Relaxed);
    let attempts = f.st.write_attempts.load(Ordering::Relaxed);
    let in_flight = tokio::spawn({
        let ns1 = ns1.clone();
        async move { ns1.write(0, pattern(BS, 2), false).await }
    });
    let t0 = std::time::Instant::now();
    while f.st.write_attempts.load(Ordering::Relaxed) == attempts {
        assert!(t0.elapsed() < Duration::from_secs(3), "the write never reached the fake");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut events = c.events();
    go_down(&f, &c).await;
    f.st.hang_writes.store(false, Ordering::Relaxed);
    let queued: Vec<_> = (0..24u64)
        .map(|i| {
            let ns1 = ns1.clone();
            tokio::spawn(async move { ns1.write(1 + i, pattern(BS, 3), false).await })
        })
        .collect();
    let w2 = tokio::spawn({
        let ns2 = ns2.clone();
        async move { ns2.write(100, pattern(BS, 4), false).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    f.st.ns_gen.store(1, Ordering::Relaxed);
    f.st.down.store(false, Ordering::Relaxed);
    let done = |h: tokio::task::JoinHandle<holdfast_host::Result<()>>| async move {
        tokio::time::timeout(Duration::from_secs(5), h).await.expect("a write never finished").unwrap()
    };
    done(w2).await.expect("namespace 2's write queued during the outage");
    for h in std::iter::once(in_flight).chain(queued) {
        match done(h).await {
            Err(Error::NamespaceGone(why)) => {
                assert!(why.contains("namespace 1") && why.contains("identifiers changed"), "{why}")
            }
            other => panic!("expected namespace 1's write failed as replaced, got {other:?}"),
        }
    }
    assert_eq!(c.state(), holdfast_host::controller::State::Live);
    // Namespace 1's write kept from the lost connection failed: nothing was re-issued.
    let reissued = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await {
                Ok(holdfast_host::controller::Event::Restored { reissued, .. }) => break reissued,
                Ok(_) => continue,
                Err(e) => panic!("no Restored event: {e}"),
            }
        }
    })
    .await
    .expect("no Restored event");
    assert_eq!(reissued, 0, "Restored counts namespace 1's write, failed, as re-issued");
    assert_eq!(f.st.write_attempts.load(Ordering::Relaxed), attempts + 2, "a write of namespace 1 was sent again");
    assert!(f.st.ram.lock().unwrap()[..64 * BS] == before[..], "a write of namespace 1 landed in the new one");
    assert_eq!(ns2.read(100, 1).await.unwrap(), pattern(BS, 4));
    ns2.write(101, pattern(BS, 5), false).await.unwrap();
    let e = ns1.read(0, 1).await.expect_err("a read through the handle of the namespace replaced");
    assert!(e.to_string().contains("namespace 1"), "{e}");
    let again = Namespace::open(&c, 1).await.unwrap();
    again.write(0, pattern(BS, 6), false).await.unwrap();
    c.shutdown().await.unwrap();
}

/// A namespace whose identifiers (CNS 03h) could not be read, the target gone past fast_io_fail_tmo meanwhile, is
/// not opened: taken as one without identifiers, it would never be checked across a reconnect, and pending
/// writes could be replayed onto another namespace under the same NSID. The open fails with the path error;
/// opened again once the target is back, it has its identifiers.
#[tokio::test]
async fn a_namespace_whose_identifiers_could_not_be_read_is_not_opened_without_them() {
    let f = fake(Behaviour::default()).await;
    let mut o = opts(&f, 1, false);
    o.reconnect_delay = Some(Duration::from_millis(50));
    o.fast_io_fail_tmo = Some(Duration::from_millis(200));
    let c = Controller::connect(o).await.expect("connect");
    f.st.kill_desc_list.store(true, Ordering::SeqCst);
    let r = tokio::time::timeout(Duration::from_secs(10), Namespace::open(&c, 1)).await.expect("no hang");
    match r {
        Err(e) => assert!(matches!(e, Error::PathError(_)), "{e}"),
        Ok(ns) => panic!("opened with identifiers {:?} while they could not be read", ns.descriptors()),
    }
    f.st.down.store(false, Ordering::Relaxed);
    let t0 = std::time::Instant::now();
    while c.state() != holdfast_host::controller::State::Live {
        assert!(t0.elapsed() < Duration::from_secs(5), "never reconnected: {:?}", c.state());
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let ns = tokio::time::timeout(Duration::from_secs(10), Namespace::open(&c, 1)).await.expect("no hang");
    assert_eq!(ns.expect("opened again").descriptors().len(), 1);
    c.shutdown().await.unwrap();
}

/// A Namespace Attribute Changed notice whose Changed Namespace List was read (which clears it on the target:
/// it is not reported again) and whose namespaces were being identified again when the connection was lost:
/// the application is still told (Event::NamespacesChanged), once the list is read, whatever becomes of that
/// check; the reconnect checks the namespaces opened itself.
#[tokio::test]
async fn a_namespace_notice_is_reported_even_if_the_connection_is_lost_while_its_namespaces_are_checked() {
    let f = fake(Behaviour::default()).await;
    let mut o = opts(&f, 1, false);
    o.reconnect_delay = Some(Duration::from_millis(50));
    o.ctrl_loss_tmo = Some(Duration::from_secs(60));
    let c = Controller::connect(o).await.expect("connect");
    let ns = Namespace::open(&c, 1).await.expect("open");
    let mut events = c.events();
    f.st.ns_aen.store(true, Ordering::SeqCst);
    f.st.kill_desc_list.store(true, Ordering::SeqCst);
    f.st.policy_aen.send_modify(|n| *n += 1);
    let t0 = Instant::now();
    while !f.st.down.load(Ordering::Relaxed) {
        assert!(t0.elapsed() < Duration::from_secs(5), "the namespace was never identified again");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    f.st.down.store(false, Ordering::Relaxed);
    let got = tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            match events.recv().await {
                Ok(holdfast_host::controller::Event::NamespacesChanged { nsids }) => return nsids,
                Ok(_) => continue,
                Err(e) => panic!("event stream ended: {e}"),
            }
        }
    })
    .await
    .expect("the namespace notice was never reported");
    assert_eq!(got, Some(vec![1]));
    ns.write(0, pattern(BS, 3), false).await.expect("the namespace, unchanged, goes on");
    c.shutdown().await.unwrap();
}

/// A namespace notice whose check of a listed namespace gets a status that does not say the namespace is gone
/// (here Internal Error, a controller's passing trouble) leaves the namespace's handles working: only Invalid
/// Namespace (not active) means removed. Marked gone, the handles would fail for good over one failed Identify.
#[tokio::test]
async fn a_namespace_check_that_fails_with_a_passing_status_leaves_the_namespace_alone() {
    for (status, gone) in [(Status::INTERNAL_ERROR, false), (Status::INVALID_NAMESPACE.with_dnr(), true)] {
        let f = fake(Behaviour::default()).await;
        let c = Controller::connect(opts(&f, 1, false)).await.expect("connect");
        let ns = Namespace::open(&c, 1).await.expect("open");
        let mut events = c.events();
        f.st.ns_aen.store(true, Ordering::SeqCst);
        *f.st.desc_list_status.lock().unwrap() = Some(status);
        f.st.policy_aen.send_modify(|n| *n += 1);
        namespaces_changed(&mut events).await;
        *f.st.desc_list_status.lock().unwrap() = None;
        let r = ns.write(0, pattern(BS, 3), false).await;
        assert_eq!(r.is_err(), gone, "{status}: {r:?}");
        c.shutdown().await.unwrap();
    }
}

/// At a reconnect, a namespace whose Identify (CNS 03h) fails with a status that does not say it is gone (Internal
/// Error) is not taken for removed: that attempt fails and a later one, answered, finds the namespace as it was,
/// and its handle goes on. Only Invalid Namespace means removed.
#[tokio::test]
async fn a_passing_status_at_the_reconnect_check_is_not_a_removed_namespace() {
    let f = fake(Behaviour::default()).await;
    let mut o = opts(&f, 1, false);
    o.reconnect_delay = Some(Duration::from_millis(50));
    o.ctrl_loss_tmo = Some(Duration::from_secs(60));
    let c = Controller::connect(o).await.expect("connect");
    let ns = Namespace::open(&c, 1).await.expect("open");
    *f.st.desc_list_status.lock().unwrap() = Some(Status::INTERNAL_ERROR);
    go_down(&f, &c).await;
    f.st.down.store(false, Ordering::Relaxed);
    let st = f.st.clone();
    tokio::spawn(async move {
        tokio::time::sleep(Duration::from_millis(400)).await;
        *st.desc_list_status.lock().unwrap() = None;
    });
    let r = tokio::time::timeout(Duration::from_secs(10), ns.write(0, pattern(BS, 5), false)).await.expect("no hang");
    assert!(r.is_ok(), "the namespace was taken for gone over a passing status: {r:?}");
    assert_eq!(c.state(), holdfast_host::controller::State::Live);
    c.shutdown().await.unwrap();
}

/// A controller that gives no Namespace Identification Descriptor lists (CNS 03h refused with Invalid Field, as
/// one before NVMe 1.3 may): the namespace's identifiers are those of its Identify Namespace data (here the
/// NGUID), as the Linux host takes them. A reconnect that finds them unchanged rides through (before, each
/// attempt failed on the refusal until ctrl_loss_tmo), and one that finds another NGUID fails the write kept for
/// it as replaced, not replaying it.
#[tokio::test]
async fn a_controller_without_descriptor_lists_is_checked_by_its_identify_namespace_ids() {
    let f = fake(Behaviour::default()).await;
    *f.st.desc_list_status.lock().unwrap() = Some(Status::INVALID_FIELD.with_dnr());
    let c = Controller::connect(riding_opts(&f)).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    ns.write(0, pattern(BS, 1), false).await.unwrap();
    for (round, replaced) in [(2u8, false), (3, true)] {
        go_down(&f, &c).await;
        let writes = f.st.write_attempts.load(Ordering::Relaxed);
        let w = tokio::spawn({
            let ns = ns.clone();
            async move { ns.write(0, pattern(BS, round), false).await }
        });
        tokio::time::sleep(Duration::from_millis(50)).await;
        if replaced {
            f.st.ns_gen.store(1, Ordering::Relaxed);
        }
        f.st.down.store(false, Ordering::Relaxed);
        let r =
            tokio::time::timeout(Duration::from_secs(5), w).await.expect("the queued write never finished").unwrap();
        match (r, replaced) {
            (Ok(()), false) => {}
            (Err(Error::NamespaceGone(why)), true) => {
                assert!(why.contains("namespace 1") && why.contains("identifiers changed"), "{why}");
                assert_eq!(f.st.write_attempts.load(Ordering::Relaxed), writes, "replayed onto another namespace");
            }
            (r, _) => panic!("round {round}: {r:?}"),
        }
        live(&c).await;
    }
    // Namespace 1 opened again (the new one), then no longer active: its Identify Namespace data comes back
    // zeroed, which says removed, not replaced.
    let ns = Namespace::open(&c, 1).await.unwrap();
    go_down(&f, &c).await;
    f.st.ns1_inactive.store(true, Ordering::Relaxed);
    f.st.down.store(false, Ordering::Relaxed);
    live(&c).await;
    let e = ns.write(0, pattern(BS, 4), false).await.expect_err("a write to a namespace no longer active");
    assert!(e.to_string().contains("not active"), "{e}");
    c.shutdown().await.unwrap();
}

/// A reconnect to a holdfast controller (its Identify carried a uniquifier) ends the previous association
/// with Fence Association, naming its CNTLID and uniquifier, right after the new admin queue is up and before
/// any I/O queue is connected, so before anything is issued again (README, No stale writes).
#[tokio::test]
async fn a_reconnect_fences_the_previous_association_before_reissuing() {
    let f = fake(Behaviour::default()).await;
    let mut o = opts(&f, 1, false);
    o.kato = Some(Duration::from_millis(600));
    o.reconnect_delay = Some(Duration::from_millis(100));
    let c = Controller::connect(o).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    ns.write(0, pattern(BS, 1), false).await.unwrap();
    go_down(&f, &c).await;
    f.st.log.lock().unwrap().clear();
    let w = tokio::spawn({
        let ns = ns.clone();
        async move { ns.write(0, pattern(BS, 2), false).await }
    });
    f.st.down.store(false, Ordering::Relaxed);
    tokio::time::timeout(Duration::from_secs(5), w).await.expect("the queued write never finished").unwrap().unwrap();
    let log = f.st.log.lock().unwrap().clone();
    let first = log.iter().position(|l| l == "connect 0").expect("an admin Connect");
    assert_eq!(log.get(first + 1).map(String::as_str), Some("fence 1 0xf00d0001"), "{log:?}");
    assert_eq!(log.get(first + 2).map(String::as_str), Some("connect 1"), "{log:?}");
    c.shutdown().await.unwrap();
}

#[tokio::test]
async fn dropping_the_last_handle_closes_the_controller() {
    let f = fake(Behaviour::default()).await;
    let mut o = opts(&f, 2, false);
    o.kato = Some(Duration::from_millis(600));
    let c = Controller::connect(o).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    assert_eq!(f.st.connections.load(Ordering::Relaxed), 3);
    drop(c);
    // A namespace handle keeps the controller open.
    ns.write(0, pattern(BS, 3), false).await.unwrap();
    assert_eq!(f.st.closed.load(Ordering::Relaxed), 0);
    drop(ns);
    let t0 = std::time::Instant::now();
    while f.st.closed.load(Ordering::Relaxed) < 3 {
        assert!(t0.elapsed() < Duration::from_secs(3), "connections still open after the last handle was dropped");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    // Nothing reconnects and no keep-alive is sent any more.
    let ka = f.st.keep_alives.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(700)).await;
    assert_eq!(f.st.connections.load(Ordering::Relaxed), 3);
    assert_eq!(f.st.keep_alives.load(Ordering::Relaxed), ka);
}

#[tokio::test]
async fn orderly_shutdown_closes_every_connection_without_a_reset() {
    let f = fake(Behaviour::default()).await;
    let c = Controller::connect(opts(&f, 2, false)).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    ns.write(0, pattern(BS, 5), false).await.unwrap();
    assert!(ns.read(0, 1).await.unwrap() == pattern(BS, 5));
    c.shutdown().await.unwrap();
    // shutdown() returns once every queue has closed: the fake saw each close and could still answer the
    // held Asynchronous Event Request after the host's FIN.
    assert_eq!(f.st.closed.load(Ordering::Relaxed), f.st.connections.load(Ordering::Relaxed));
    assert_eq!(f.st.resets.load(Ordering::Relaxed), 0, "the host reset a connection the target was still answering on");
}

/// SPDK's target closes a controller's I/O queue connections itself when the host sets CC.SHN: during an
/// orderly shutdown that is not a lost connection. Nothing reconnects and shutdown completes.
#[tokio::test]
async fn io_queues_the_target_closes_on_shutdown_are_not_a_lost_connection() {
    let f = fake(Behaviour { close_io_on_shn: true, ..Default::default() }).await;
    let c = Controller::connect(opts(&f, 2, false)).await.unwrap();
    let mut events = c.events();
    let ns = Namespace::open(&c, 1).await.unwrap();
    ns.write(0, pattern(BS, 6), false).await.unwrap();
    assert!(ns.read(0, 1).await.unwrap() == pattern(BS, 6));
    c.shutdown().await.unwrap();
    assert_eq!(f.st.connections.load(Ordering::Relaxed), 3, "the host connected again after its own shutdown");
    assert_eq!(f.st.connects.load(Ordering::Relaxed), 3);
    while let Ok(e) = events.try_recv() {
        use holdfast_host::controller::Event;
        assert!(
            !matches!(e, Event::Reconnecting { .. } | Event::Restored { .. }),
            "shutdown reported as an outage: {e:?}"
        );
    }
    assert!(matches!(c.state(), holdfast_host::controller::State::Failed { .. }), "{:?}", c.state());
}

/// A read the target drops the connection over every time fails with a path error after
/// `MAX_COMMAND_LOSSES` connections, instead of being re-issued on every new association for ever; the
/// controller stays live and other I/O goes on.
#[tokio::test]
async fn a_command_that_kills_every_connection_fails_instead_of_looping() {
    let f = fake(Behaviour { poison_lba: Some(77), ..Default::default() }).await;
    let c = Controller::connect(opts(&f, 1, false)).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    ns.write(0, pattern(BS, 8), false).await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(20), ns.read(77, 1)).await.expect("the poisoned read never ended");
    match r {
        Err(e @ Error::CommandAbandoned(_)) => {
            assert!(e.to_string().contains("outstanding on 5 connections"), "{e}");
            // A path error, but not one to issue again here: it would cost as many connections again.
            assert!(e.is_path_error() && !e.is_retryable(), "{e}");
        }
        other => panic!("expected the command given up, got {other:?}"),
    }
    assert_eq!(f.st.reads.load(Ordering::Relaxed), 5, "issued once per connection");
    assert!(ns.read(0, 1).await.unwrap() == pattern(BS, 8), "other I/O goes on");
    assert!(matches!(c.state(), holdfast_host::controller::State::Live), "{:?}", c.state());
    c.shutdown().await.unwrap();
}

/// A Discovery log larger than the controller's MDTS is read in pieces within it (SPDK's target ends the
/// connection over a longer transfer), and GENCTR is checked again after the last piece: every record once,
/// in order.
#[tokio::test]
async fn a_discovery_log_larger_than_mdts_is_read_in_pieces() {
    let f = fake(Behaviour { mdts: 5, discovery_records: 300, ..Default::default() }).await;
    let entries = discover(&f).await.expect("discover");
    let names: Vec<String> = entries.iter().map(|e| e.subnqn.clone()).collect();
    let want: Vec<String> = (0..300).map(|i| format!("nqn.2026-01.io.holdfast:rec-{i:03}")).collect();
    assert_eq!(names, want);
    // The header, three pieces of at most 128 KiB (301 KiB in all), the header again.
    assert_eq!(f.st.discovery_reads.load(Ordering::Relaxed), 5);
}

/// A discovery read is one-shot: a connection lost under it fails it (as nvme-cli's `discover`), instead of
/// riding through for the default ctrl_loss_tmo of 600 s (the discovery controller advertises no policy to the
/// host); an explicit ctrl_loss_tmo is the caller's and is kept.
#[tokio::test]
async fn a_discovery_whose_connection_is_lost_fails_at_once() {
    let f = fake(Behaviour { discovery_records: 1, discovery_drop_reads: true, ..Default::default() }).await;
    let r =
        tokio::time::timeout(Duration::from_secs(30), discover(&f)).await.expect("discovery still waiting after 30 s");
    let e = r.expect_err("the log was never sent");
    assert!(e.to_string().contains("no connection") || e.is_retryable(), "{e}");
    assert_eq!(f.st.discovery_reads.load(Ordering::Relaxed), 1, "read once, not again on a new association");
    // An explicit limit rides through: the read is sent again on a new association.
    let mut o = opts(&f, 0, false);
    o.subnqn = fabrics::DISCOVERY_NQN.into();
    o.ctrl_loss_tmo = Some(Duration::from_secs(2));
    o.reconnect_delay = Some(Duration::from_millis(100));
    let r = tokio::time::timeout(Duration::from_secs(30), holdfast_host::discover(o)).await.expect("bounded by 2 s");
    assert!(r.is_err());
    assert!(f.st.discovery_reads.load(Ordering::Relaxed) >= 3, "the read was sent again after a reconnect");
}

/// Read `f`'s Discovery log, as `holdfast_host::discover` does for a host.
async fn discover(f: &Fake) -> Result<Vec<holdfast_host::DiscoveryEntry>, Error> {
    let mut o = opts(f, 0, false);
    o.subnqn = fabrics::DISCOVERY_NQN.into();
    holdfast_host::discover(o).await
}

/// Read the Discovery log of a fake that behaves as `b`, which must fail with a protocol error: its text.
async fn discovery_protocol_error(b: Behaviour) -> String {
    match discover(&fake(b).await).await {
        Err(Error::Protocol { what, .. }) => what,
        other => panic!("expected a protocol error, got {other:?}"),
    }
}

/// Writes and reads back `n` blocks at once (so that every queue has work), each block its own command.
async fn spread_io(ns: &Namespace, n: u64, seed: u8) {
    let block = move |i: u64| pattern(BS, seed.wrapping_add(i as u8));
    let writes: Vec<_> = (0..n)
        .map(|i| {
            let ns = ns.clone();
            tokio::spawn(async move { ns.write(100 + i, block(i), false).await })
        })
        .collect();
    for w in writes {
        w.await.unwrap().expect("write");
    }
    let reads: Vec<_> = (0..n)
        .map(|i| {
            let ns = ns.clone();
            tokio::spawn(async move { ns.read(100 + i, 1).await })
        })
        .collect();
    for (i, r) in reads.into_iter().enumerate() {
        assert!(r.await.unwrap().expect("read") == block(i as u64), "block {i} differs");
    }
}

#[tokio::test]
async fn fewer_granted_queues_are_carried_by_the_granted_ones() {
    let f = fake(Behaviour::default()).await;
    f.st.grant.store(2, Ordering::Relaxed);
    let c = Controller::connect(opts(&f, 4, false)).await.expect("connect with 2 of 4 queues granted");
    assert_eq!(f.st.connections.load(Ordering::Relaxed), 3, "admin + the 2 granted I/O queues");
    assert_eq!((c.io_queues(), c.io_queues_granted()), (4, 2), "asked for, granted");
    let ns = Namespace::open(&c, 1).await.unwrap();
    spread_io(&ns, 32, 1).await;
    c.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_reconnect_that_gets_fewer_queues_rides_through() {
    let (f, c, ns) = terminating_fake(2).await;
    ns.write(100, pattern(BS, 1), false).await.expect("write");
    // The restarted target grants one I/O queue: the first read draws a termination request, and the host
    // comes back with one queue carrying both.
    f.st.grant.store(1, Ordering::Relaxed);
    let r = tokio::time::timeout(Duration::from_secs(10), ns.read(100, 1)).await.expect("no hang");
    assert!(r.expect("re-issued read") == pattern(BS, 1));
    assert_eq!(f.st.connections.load(Ordering::Relaxed), 3 + 2, "admin + 2 queues, then admin + 1 queue");
    assert_eq!(c.io_queues_granted(), 1, "the current association's grant");
    spread_io(&ns, 32, 9).await;
    c.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_retryable_error_is_retried_after_the_delay_its_crd_selects() {
    let f = fake(Behaviour { crdt1: 2, ..Behaviour::default() }).await;
    let c = Controller::connect(opts(&f, 1, false)).await.unwrap();
    assert!(f.st.acre.load(Ordering::Relaxed), "ACRE enabled: the controller advertises CRDT1");
    let ns = Namespace::open(&c, 1).await.unwrap();
    // Two transient transport errors with CRD 1 (CRDT1 = 200 ms), then success: the caller sees success.
    f.st.fail_writes.store(2, Ordering::Relaxed);
    let t0 = Instant::now();
    ns.write(7, pattern(BS, 4), false).await.expect("retried write");
    assert!(t0.elapsed() >= Duration::from_millis(380), "waited CRDT1 before each retry: {:?}", t0.elapsed());
    assert_eq!(f.st.write_attempts.load(Ordering::Relaxed), 3);
    assert!(ns.read(7, 1).await.unwrap() == pattern(BS, 4));
    c.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_retry_delay_longer_than_the_io_timeout_completes_with_the_status_at_once() {
    // CRDT1 = 65535: 6553.5 s before a retry with CRD 1, far past the I/O timeout.
    let f = fake(Behaviour { crdt1: u16::MAX, ..Behaviour::default() }).await;
    let mut o = opts(&f, 1, false);
    o.io_timeout = Duration::from_secs(2);
    let c = Controller::connect(o).await.unwrap();
    assert!(f.st.acre.load(Ordering::Relaxed), "ACRE enabled: the controller advertises CRDT1");
    let ns = Namespace::open(&c, 1).await.unwrap();
    f.st.fail_writes.store(1, Ordering::Relaxed);
    let r = tokio::time::timeout(Duration::from_secs(10), ns.write(7, pattern(BS, 4), false)).await;
    match r.expect("not held for the retry delay") {
        Err(Error::Nvme { status, .. }) => {
            assert_eq!(status.code(), Status::TRANSIENT_TRANSPORT_ERROR.code());
            assert!(!status.dnr(), "the controller's status as it was: the caller may retry")
        }
        other => panic!("expected the controller's status, got {other:?}"),
    }
    assert_eq!(f.st.write_attempts.load(Ordering::Relaxed), 1, "not retried");
    // The queue goes on: the next write succeeds.
    ns.write(7, pattern(BS, 5), false).await.expect("write after the failed one");
    assert!(ns.read(7, 1).await.unwrap() == pattern(BS, 5));
    c.shutdown().await.unwrap();
}

#[tokio::test]
async fn retries_are_bounded_and_do_not_retry_is_honoured() {
    let f = fake(Behaviour::default()).await;
    let c = Controller::connect(opts(&f, 1, false)).await.unwrap();
    assert!(!f.st.acre.load(Ordering::Relaxed), "no CRDT advertised: ACRE left alone");
    let ns = Namespace::open(&c, 1).await.unwrap();
    f.st.fail_writes.store(100, Ordering::Relaxed);
    match ns.write(7, pattern(BS, 4), false).await {
        Err(Error::Nvme { status, .. }) => assert_eq!(status.code(), Status::TRANSIENT_TRANSPORT_ERROR.code()),
        other => panic!("expected the NVMe status after the retries, got {other:?}"),
    }
    assert_eq!(f.st.write_attempts.load(Ordering::Relaxed), 1 + holdfast_host::queue::MAX_STATUS_RETRIES as u32);
    c.shutdown().await.unwrap();

    let f = fake(Behaviour { fail_status: Status::TRANSIENT_TRANSPORT_ERROR.with_dnr(), ..Behaviour::default() }).await;
    let c = Controller::connect(opts(&f, 1, false)).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    f.st.fail_writes.store(1, Ordering::Relaxed);
    assert!(ns.write(7, pattern(BS, 4), false).await.is_err(), "DNR: failed at once");
    assert_eq!(f.st.write_attempts.load(Ordering::Relaxed), 1);
    c.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_data_digest_mismatch_reissues_the_read_on_the_same_connection() {
    for c2h_success in [false, true] {
        let f = fake(Behaviour { c2h_success, c2h_chunk: 2048, ..Behaviour::default() }).await;
        let c = Controller::connect(opts(&f, 1, true)).await.unwrap();
        let ns = Namespace::open(&c, 1).await.unwrap();
        let d = pattern(8 * BS, 6);
        ns.write(64, d.clone(), false).await.unwrap();
        let reads = f.st.reads.load(Ordering::Relaxed);
        f.st.corrupt_c2h.store(1, Ordering::Relaxed);
        assert!(ns.read(64, 8).await.expect("read despite one corrupt PDU") == d);
        assert_eq!(f.st.reads.load(Ordering::Relaxed), reads + 2, "read once more");
        assert_eq!(f.st.connections.load(Ordering::Relaxed), 2, "no reconnect: admin + 1 I/O queue");
        // Corrupt every time: after the retries the caller gets an error that names the digest.
        f.st.corrupt_c2h.store(1000, Ordering::Relaxed);
        match ns.read(64, 8).await {
            Err(e) => assert!(e.to_string().contains("data digest"), "{e}"),
            Ok(_) => panic!("corrupt data delivered"),
        }
        c.shutdown().await.unwrap();
    }
}

#[tokio::test]
async fn idle_carried_queues_never_block_the_granted_one() {
    // Seven carried queues mapped onto one granted queue whose channel holds four commands: a carrier
    // waiting for work must not hold room in that channel, or a caller of the granted queue waits for ever.
    let f = fake(Behaviour::default()).await;
    f.st.grant.store(1, Ordering::Relaxed);
    let mut o = opts(&f, 8, false);
    o.queue_size = 2;
    let c = Controller::connect(o).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    tokio::time::sleep(Duration::from_millis(50)).await; // let every carrier reach its idle wait
    for i in 0..10u64 {
        let w = ns.write_on(Some(0), 200 + i, pattern(BS, i as u8), false);
        tokio::time::timeout(Duration::from_secs(5), w).await.expect("the granted queue is not blocked").unwrap();
    }
    spread_io(&ns, 16, 3).await;
    c.shutdown().await.unwrap();
}

/// The first write gets the R2Ts of `bad` (once; `len` bytes, which go in the capsule for `InCapsule` only):
/// the host sends `sent` bytes of H2CData for it, none of them twice, then ends the connection at once with
/// a termination request over the R2T field at `fei`, and issues the write again on a new connection.
async fn bad_r2t_ends_the_connection(bad: BadR2T, len: usize, sent: u64, fei: u32) {
    bad_r2t_ends_the_connection_with(bad, len, sent, pdu::Fes::InvalidHeaderField, fei).await
}

async fn bad_r2t_ends_the_connection_with(bad: BadR2T, len: usize, sent: u64, fes: pdu::Fes, fei: u32) {
    let f = fake(Behaviour { bad_r2t: Some(bad), ..Behaviour::default() }).await;
    let mut o = opts(&f, 1, false);
    o.reconnect_delay = Some(Duration::from_millis(100));
    // A host that takes the R2Ts waits this long for a completion that never comes.
    o.io_timeout = Duration::from_secs(3);
    let c = Controller::connect(o).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    let mut events = c.events();
    let d = pattern(len, 11);
    let t0 = Instant::now();
    tokio::time::timeout(Duration::from_secs(15), ns.write(8, d.clone(), false))
        .await
        .expect("the write never ended")
        .expect("the write, issued again on a new connection");
    let took = t0.elapsed();
    assert_eq!(f.st.bad_h2c_bytes.load(Ordering::Relaxed), sent, "{bad:?}: H2CData sent for the bad R2Ts");
    assert!(took < Duration::from_secs(2), "{bad:?}: the write took {took:?}: the host waited for its completion");
    let mut cause = String::new();
    while let Ok(e) = events.try_recv() {
        if let holdfast_host::controller::Event::Reconnecting { cause: c, .. } = e {
            cause = c;
        }
    }
    assert!(cause.contains("R2T"), "{bad:?}: the bad R2T is the reported cause: {cause:?}");
    let t0 = Instant::now();
    while f.st.h2c_terms.lock().unwrap().is_empty() && t0.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let terms = f.st.h2c_terms.lock().unwrap().clone();
    assert_eq!(terms.len(), 1, "{bad:?}: one H2CTermReq");
    assert_eq!((terms[0].fes, terms[0].fei), (fes as u16, fei), "{bad:?}: FES and FEI");
    assert_eq!(terms[0].data.len(), pdu::HLEN_DATA as usize, "{bad:?}: the R2T's header");
    assert_eq!(terms[0].data[0], pdu::PduType::R2T as u8, "{bad:?}: the R2T's header");
    assert!(ns.read(8, (len / BS) as u64).await.unwrap() == d, "{bad:?}: read-back differs");
    c.shutdown().await.unwrap();
}

/// A target that repeats an R2T (and may then stop reading) must not get the data again, nor make the host
/// queue it again for every copy: the host announced MAXR2T 0 and already sent that range.
#[tokio::test]
async fn a_repeated_r2t_ends_the_connection_instead_of_sending_the_data_again() {
    bad_r2t_ends_the_connection(BadR2T::Repeat, 64 * 1024, 64 * 1024, pdu::offset::DATA_DATAO).await;
}

#[tokio::test]
async fn an_r2t_overlapping_data_already_sent_ends_the_connection() {
    bad_r2t_ends_the_connection(BadR2T::Overlap, 64 * 1024, 32 * 1024, pdu::offset::DATA_DATAO).await;
}

#[tokio::test]
async fn an_r2t_for_in_capsule_data_ends_the_connection() {
    bad_r2t_ends_the_connection(BadR2T::InCapsule, 4096, 0, pdu::offset::DATA_DATAO).await;
}

#[tokio::test]
async fn an_r2t_for_no_data_ends_the_connection() {
    bad_r2t_ends_the_connection(BadR2T::Zero, 64 * 1024, 0, pdu::offset::DATA_DATAL).await;
}

/// A second R2T for a command while the data of the first is still to be sent exceeds the MAXR2T the host
/// announced (0: one R2T outstanding per command): the host refuses it with an H2CTermReq, FES R2T Limit
/// Exceeded (NVMe/TCP 1.0 §3.6.2.2 ICReq MAXR2T; Figure 24, FES 05h), after the first R2T's data, as the
/// Linux host refuses an R2T while H2CData is pending.
#[tokio::test]
async fn a_second_r2t_outstanding_at_once_ends_the_connection_with_r2t_limit_exceeded() {
    bad_r2t_ends_the_connection_with(BadR2T::Two, 64 * 1024, 32 * 1024, pdu::Fes::DataLimitExceeded, 0).await;
}

/// A write retried after a retryable status is a new transfer: its R2T from offset 0 is answered in full
/// again, on the same connection.
#[tokio::test]
async fn a_write_retried_after_a_status_answers_its_r2t_afresh() {
    let f = fake(Behaviour::default()).await;
    let c = Controller::connect(opts(&f, 1, false)).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    f.st.fail_writes.store(2, Ordering::Relaxed);
    let d = pattern(64 * 1024, 12);
    ns.write(16, d.clone(), false).await.expect("retried write");
    assert_eq!(f.st.write_attempts.load(Ordering::Relaxed), 3);
    assert_eq!(f.st.r2ts.load(Ordering::Relaxed), 3, "one R2T for the whole write per attempt");
    assert_eq!(f.st.h2c_pdus.load(Ordering::Relaxed), 3);
    assert_eq!(f.st.connections.load(Ordering::Relaxed), 2, "no reconnect: admin + 1 I/O queue");
    assert!(ns.read(16, 128).await.unwrap() == d);
    c.shutdown().await.unwrap();
}

/// The connection dies during a reconnect attempt's set-up (the target answers the admin Connect by closing
/// it, as one that fails while it comes up): the attempt fails at once, and the next one, a reconnect delay
/// later, restores the association, instead of the first waiting out the rest of ctrl_loss_tmo for an
/// answer on a connection already gone.
#[tokio::test]
async fn a_connection_lost_during_a_reconnect_attempts_set_up_fails_that_attempt_at_once() {
    let f = fake(Behaviour::default()).await;
    let mut o = opts(&f, 1, false);
    o.reconnect_delay = Some(Duration::from_millis(100));
    o.ctrl_loss_tmo = Some(Duration::from_secs(60));
    let c = Controller::connect(o).await.expect("connect");
    let ns = Namespace::open(&c, 1).await.expect("namespace");
    f.st.kill_connects.store(1, Ordering::SeqCst);
    go_down(&f, &c).await;
    let connects = f.st.connects.load(Ordering::Relaxed);
    f.st.down.store(false, Ordering::Relaxed);
    let r = tokio::time::timeout(Duration::from_secs(30), ns.read(0, 1)).await;
    assert!(matches!(r, Ok(Ok(_))), "read across the failed attempt: {r:?}");
    assert_eq!(f.st.kill_connects.load(Ordering::SeqCst), 0, "the attempt whose Connect was cut was made");
    assert!(f.st.connects.load(Ordering::Relaxed) > connects, "a later attempt connected");
    c.shutdown().await.unwrap();
}

/// The same on the first connect: a Connect answered by a close fails the connect with a path error at once,
/// not after the set-up's deadline (three connect timeouts).
#[tokio::test]
async fn a_connection_lost_during_the_first_set_up_fails_the_connect_at_once() {
    let f = fake(Behaviour::default()).await;
    f.st.kill_connects.store(1, Ordering::SeqCst);
    let mut o = opts(&f, 1, false);
    o.connect_timeout = Duration::from_secs(20);
    match tokio::time::timeout(Duration::from_secs(15), Controller::connect(o)).await {
        Ok(Err(Error::PathError(m))) => assert!(m.contains("Connect"), "{m}"),
        Ok(Err(e)) => panic!("expected a path error naming the Connect: {e}"),
        Ok(Ok(_)) => panic!("connected through a Connect answered by a close"),
        Err(_) => panic!("the connect did not fail at once"),
    }
}

/// An announced planned downtime longer than fast_io_fail_tmo: I/O queued during an outage shorter than the
/// downtime stays queued and completes (design: hosts keep I/O queued at least this long), where without the
/// announcement it fails once fast_io_fail_tmo has passed.
#[tokio::test]
async fn an_announced_planned_downtime_holds_off_fast_io_fail() {
    for announced in [true, false] {
        let f = fake(Behaviour::default()).await;
        *f.st.policy.lock().unwrap() = Some(holdfast_proto::policy::ConnectionPolicy {
            instance_id: 1,
            kato_ms: 5000,
            reconnect_delay_ms: 100,
            reconnect_delay_max_ms: 100,
            ctrl_loss_tmo_ms: 30_000,
            fast_io_fail_tmo_ms: 300,
            planned_downtime_ms: if announced { 10_000 } else { 0 },
            ..Default::default()
        });
        let c = Controller::connect(opts(&f, 1, false)).await.expect("connect");
        assert_eq!(c.effective_policy().fast_io_fail_tmo.0, Some(Duration::from_millis(300)));
        let ns = Namespace::open(&c, 1).await.expect("namespace");
        go_down(&f, &c).await;
        let st = f.st.clone();
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(1500)).await;
            st.down.store(false, Ordering::Relaxed);
        });
        let r = ns.read(0, 1).await;
        if announced {
            assert!(r.is_ok(), "queued through the announced downtime: {r:?}");
        } else {
            assert!(matches!(r, Err(Error::PathError(_))), "failed after fast_io_fail_tmo: {r:?}");
        }
        c.shutdown().await.unwrap();
    }
}

/// A write split into several commands (over MDTS) whose first piece fails returns only once every piece has
/// finished: returning at the first error would leave the others running, and one could land after a newer
/// write the caller makes to the same blocks on seeing the error.
#[tokio::test]
async fn a_split_write_that_fails_returns_only_once_every_piece_has_finished() {
    let f = fake(Behaviour { mdts: 1, fail_status: Status::INVALID_FIELD.with_dnr(), ..Behaviour::default() }).await;
    let mut o = opts(&f, 1, false);
    o.io_timeout = Duration::from_secs(2);
    o.reconnect_delay = Some(Duration::from_millis(100));
    let c = Controller::connect(o).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    // MDTS 8 KiB: four pieces. The first fails (Do Not Retry); the others are held, unanswered.
    f.st.fail_writes.store(1, Ordering::Relaxed);
    f.st.hang_writes.store(true, Ordering::Relaxed);
    let d = pattern(4 * 8192, 9);
    let w = ns.write(0, d.clone(), false);
    tokio::pin!(w);
    assert!(
        tokio::time::timeout(Duration::from_millis(500), &mut w).await.is_err(),
        "the write returned while three of its pieces were outstanding"
    );
    // Let them through: past the command timeout they are issued again on a new connection and done there;
    // only then does the write report the first piece's error.
    f.st.hang_writes.store(false, Ordering::Relaxed);
    match w.await {
        Err(Error::Nvme { status, .. }) => assert_eq!(status.code(), Status::INVALID_FIELD.code()),
        other => panic!("expected the first piece's status, got {other:?}"),
    }
    assert!(f.st.ram.lock().unwrap()[8192..4 * 8192] == d[8192..], "the other pieces landed before it returned");
    c.shutdown().await.unwrap();
}

/// Fill the fake's whole namespace with a pattern (a write of its own, so that zeroes are seen to be written).
async fn fill(ns: &Namespace) -> Bytes {
    let all = pattern(NBLOCKS as usize * BS, 5);
    ns.write(0, all.clone(), false).await.expect("fill");
    all
}

/// A controller whose ONCS has neither Write Zeroes nor Dataset Management (Linux nvmet passing through an SSD
/// without them, older targets): write zeroes still zeroes, with Writes only, in MDTS pieces (8 KiB here: a
/// range of 90 blocks takes 6, the whole namespace 256, more than are kept in flight at once); deallocate fails
/// at once saying why, with no command sent.
#[tokio::test]
async fn without_write_zeroes_and_dsm_in_oncs_zeroes_are_written_and_deallocate_is_refused_unsent() {
    let f = fake(Behaviour { mdts: 1, ..Behaviour::default() }).await;
    f.st.oncs.store(0, Ordering::SeqCst);
    let c = Controller::connect(opts(&f, 2, false)).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    assert!(!ns.supports_write_zeroes() && !ns.supports_deallocate(), "ONCS 0 read as supporting them");
    let all = fill(&ns).await;
    let writes = f.st.writes.load(Ordering::SeqCst);
    ns.write_zeroes(3, 90).await.expect("write zeroes by writes");
    {
        let ram = f.st.ram.lock().unwrap();
        assert!(ram[3 * BS..93 * BS].iter().all(|&b| b == 0), "blocks 3..93 are not zeroes");
        assert!(ram[..3 * BS] == all[..3 * BS] && ram[93 * BS..] == all[93 * BS..], "zeroes outside the range");
    }
    assert_eq!(f.st.writes.load(Ordering::SeqCst) - writes, 6, "90 blocks in 16-block (8 KiB) Writes");
    ns.write_zeroes(0, NBLOCKS).await.expect("write zeroes of the whole namespace by writes");
    assert!(f.st.ram.lock().unwrap().iter().all(|&b| b == 0), "the namespace is not all zeroes");
    assert_eq!(f.st.writes.load(Ordering::SeqCst) - writes, 6 + 256);
    assert_eq!(f.st.write_zeroes_cmds.load(Ordering::SeqCst), 0, "a Write Zeroes was sent");
    match ns.deallocate(0, 8).await {
        Err(Error::Unsupported(why)) => {
            assert!(why.contains("does not support deallocation") && why.contains("ONCS"), "{why}")
        }
        other => panic!("expected deallocate refused as unsupported, got {other:?}"),
    }
    assert_eq!(f.st.dsm_cmds.load(Ordering::SeqCst), 0, "a Dataset Management was sent");
    c.shutdown().await.unwrap();
}

/// ONCS is the current association's: a reconnect to a target that lost Write Zeroes and Dataset Management
/// (restarted on other media) is taken into account by handles opened before it, and one that got them back
/// again.
#[tokio::test]
async fn oncs_changed_across_a_reconnect_is_taken_into_account() {
    let f = fake(Behaviour::default()).await;
    let c = Controller::connect(riding_opts(&f)).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    assert!(ns.supports_write_zeroes() && ns.supports_deallocate());
    ns.write_zeroes(0, 4).await.unwrap();
    ns.deallocate(0, 4).await.unwrap();
    assert_eq!((f.st.write_zeroes_cmds.load(Ordering::SeqCst), f.st.dsm_cmds.load(Ordering::SeqCst)), (1, 1));
    go_down(&f, &c).await;
    f.st.oncs.store(0, Ordering::SeqCst);
    f.st.down.store(false, Ordering::SeqCst);
    live(&c).await;
    assert!(!ns.supports_write_zeroes() && !ns.supports_deallocate(), "the old association's ONCS is still used");
    let all = fill(&ns).await;
    ns.write_zeroes(8, 16).await.expect("write zeroes by writes after the reconnect");
    {
        let ram = f.st.ram.lock().unwrap();
        assert!(ram[8 * BS..24 * BS].iter().all(|&b| b == 0), "blocks 8..24 are not zeroes");
        assert!(ram[..8 * BS] == all[..8 * BS] && ram[24 * BS..] == all[24 * BS..], "zeroes outside the range");
    }
    assert!(matches!(ns.deallocate(0, 4).await, Err(Error::Unsupported(_))));
    assert_eq!((f.st.write_zeroes_cmds.load(Ordering::SeqCst), f.st.dsm_cmds.load(Ordering::SeqCst)), (1, 1));
    go_down(&f, &c).await;
    f.st.oncs.store(identify::ONCS_DSM | identify::ONCS_WRITE_ZEROES, Ordering::SeqCst);
    f.st.down.store(false, Ordering::SeqCst);
    live(&c).await;
    ns.write_zeroes(0, 4).await.unwrap();
    ns.deallocate(0, 4).await.unwrap();
    assert_eq!((f.st.write_zeroes_cmds.load(Ordering::SeqCst), f.st.dsm_cmds.load(Ordering::SeqCst)), (2, 2));
    c.shutdown().await.unwrap();
}

/// A controller that advertises Write Zeroes yet answers it with Invalid Command Opcode (what a host meets when
/// the target changed under it, or one that advertises more than it does): the range is zeroed with Writes, as
/// the Linux block layer falls back when a device turns out to have no Write Zeroes.
#[tokio::test]
async fn write_zeroes_refused_as_an_invalid_opcode_is_done_with_writes() {
    let f = fake(Behaviour::default()).await;
    let c = Controller::connect(opts(&f, 1, false)).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    let all = fill(&ns).await;
    f.st.oncs.store(identify::ONCS_DSM, Ordering::SeqCst); // the host still has the ONCS it connected with
    let writes = f.st.writes.load(Ordering::SeqCst);
    ns.write_zeroes(100, 3000).await.expect("write zeroes");
    {
        let ram = f.st.ram.lock().unwrap();
        assert!(ram[100 * BS..3100 * BS].iter().all(|&b| b == 0), "blocks 100..3100 are not zeroes");
        assert!(ram[..100 * BS] == all[..100 * BS] && ram[3100 * BS..] == all[3100 * BS..], "zeroes outside");
    }
    assert_eq!(f.st.write_zeroes_cmds.load(Ordering::SeqCst), 1, "the first refusal is the last Write Zeroes");
    // MDTS 0 (none): Writes of up to 1 MiB (2048 blocks), the host's largest: 3000 blocks in 2.
    assert_eq!(f.st.writes.load(Ordering::SeqCst) - writes, 2);
    c.shutdown().await.unwrap();
}

/// A controller that wants in-capsule data at an offset (ICDOFF) would read commands' data from the wrong
/// place: the connect fails, saying so, as the Linux host refuses it.
#[tokio::test]
async fn a_controller_with_an_in_capsule_data_offset_is_refused() {
    let f = fake(Behaviour { icdoff: 4, ..Behaviour::default() }).await;
    match Controller::connect(opts(&f, 1, false)).await {
        Err(Error::Protocol { what, .. }) => assert!(what.contains("ICDOFF"), "{what}"),
        Err(e) => panic!("expected a protocol error naming ICDOFF, got {e}"),
        Ok(_) => panic!("connected to a controller with ICDOFF 4"),
    }
}

/// A target that sends data for a command already completed (here a C2HData with SUCCESS for the previous
/// read's CID, arriving as the next read is outstanding on the same slot): the CID's generation bits tell the
/// two apart, so the stray PDU is a protocol error (the connection is reset and the read issued again) instead
/// of completing the new read with the old command's bytes.
#[tokio::test]
async fn data_for_a_completed_command_never_completes_the_next_one() {
    let f = fake(Behaviour::default()).await;
    let mut o = opts(&f, 1, false);
    o.reconnect_delay = Some(Duration::from_millis(100));
    let c = Controller::connect(o).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    let d = pattern(BS, 3);
    ns.write(0, d.clone(), false).await.unwrap();
    assert!(ns.read(0, 1).await.unwrap() == d);
    f.st.stray_c2h.store(true, Ordering::Relaxed);
    let got = ns.read(0, 1).await.expect("the read is issued again after the reset");
    assert!(got == d, "the read completed with the stray PDU's bytes");
    assert!(!f.st.stray_c2h.load(Ordering::Relaxed), "the stray PDU was sent");
    c.shutdown().await.unwrap();
}

/// The discovery log shrinks (a reload removed subsystems) between the header read and the pieces: the host
/// starts over (NVMe-oF 1.1 §5.3: GENCTR changed; a target may even answer Discover Restart), and does not
/// fail discovery.
#[tokio::test]
async fn a_discovery_log_that_shrinks_while_read_in_pieces_is_read_again() {
    let f =
        fake(Behaviour { mdts: 5, discovery_records: 300, discovery_shrink_to: Some(10), ..Default::default() }).await;
    let entries = discover(&f).await.expect("discover");
    assert_eq!(entries.len(), 10);
}

/// A piece refused with Invalid Field while GENCTR has not moved is the controller's answer, not a sign that the
/// log changed: discovery fails with that status (it retried five times and then blamed a changing log).
#[tokio::test]
async fn a_piece_refused_while_the_log_is_unchanged_fails_discovery_with_that_status() {
    let f =
        fake(Behaviour { mdts: 5, discovery_records: 300, discovery_refuse_offsets: true, ..Default::default() }).await;
    let e = discover(&f).await.expect_err("a refused piece");
    assert_eq!(e.status().map(|s| s.code()), Some(Status::INVALID_FIELD), "{e}");
}

/// A target that drops every association as soon as it is up (here: a C2HTermReq for the first Asynchronous
/// Event Request) is not reconnected to at once every time: the first attempt after a loss that came right after
/// the set-up waits, longer each time in a row (policy::STABLE_ASSOCIATION, Effective::flap_delay), up to the
/// backoff cap. Without that the host set up thousands of associations a second against it.
#[tokio::test]
async fn a_target_that_drops_every_new_association_gets_no_reconnect_storm() {
    let f = fake(Behaviour { term_aers: true, ..Behaviour::default() }).await;
    let mut o = opts(&f, 1, false);
    o.reconnect_delay = Some(Duration::from_millis(500));
    o.ctrl_loss_tmo = Some(Duration::from_secs(60));
    let c = Controller::connect(o).await.unwrap();
    tokio::time::sleep(Duration::from_secs(3)).await;
    let n = f.st.connections.load(Ordering::Relaxed);
    // Waits of 100, 200, 400, 500, 500, ... ms: about eight associations of two connections in 3 s.
    assert!(n <= 24, "{n} connections in 3 s");
    assert!(n >= 4, "{n} connections in 3 s: the host stopped reconnecting");
    c.shutdown().await.unwrap();
}

/// Waits up to 2 s for the fake to have received `n` termination requests, and returns them.
async fn wait_terms(f: &Fake, n: usize) -> Vec<TermReq> {
    let t0 = Instant::now();
    while f.st.h2c_terms.lock().unwrap().len() < n && t0.elapsed() < Duration::from_secs(2) {
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    f.st.h2c_terms.lock().unwrap().clone()
}

/// A PDU for a command that is not outstanding (C2HData for a completed command, a CapsuleResp for a CID never
/// used) ends the connection with an H2CTermReq naming the CID field (FES Invalid PDU Header Field), the
/// offending header as its data (with header digests: its HDGSTF flag and digest too), as SPDK's host does; the
/// read is issued again and returns the right bytes.
#[tokio::test]
async fn a_pdu_for_a_command_not_outstanding_gets_an_h2c_termination_request() {
    for digests in [false, true] {
        not_outstanding_gets_an_h2c_termination_request(digests).await;
    }
}

async fn not_outstanding_gets_an_h2c_termination_request(digests: bool) {
    let hd = if digests { 4 } else { 0 };
    let f = fake(Behaviour::default()).await;
    let mut o = opts(&f, 1, digests);
    o.reconnect_delay = Some(Duration::from_millis(100));
    let c = Controller::connect(o).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    let d = pattern(BS, 5);
    ns.write(0, d.clone(), false).await.unwrap();
    assert!(ns.read(0, 1).await.unwrap() == d);
    f.st.stray_c2h.store(true, Ordering::Relaxed);
    assert!(ns.read(0, 1).await.expect("issued again") == d);
    let terms = wait_terms(&f, 1).await;
    assert_eq!(terms.len(), 1, "{terms:?}");
    assert_eq!((terms[0].fes, terms[0].fei), (pdu::Fes::InvalidHeaderField as u16, pdu::offset::DATA_CCCID));
    assert_eq!((terms[0].data.len(), terms[0].data[0]), (pdu::HLEN_DATA as usize + hd, pdu::PduType::C2HData as u8));

    f.st.stray_resp.store(true, Ordering::Relaxed);
    assert!(ns.read(0, 1).await.expect("issued again") == d);
    let terms = wait_terms(&f, 2).await;
    assert_eq!(terms.len(), 2, "{terms:?}");
    assert_eq!((terms[1].fes, terms[1].fei), (pdu::Fes::InvalidHeaderField as u16, pdu::offset::RESP_CID));
    let h = &terms[1].data;
    assert_eq!((h.len(), h[0]), (pdu::HLEN_CAPSULE_RESP as usize + hd, pdu::PduType::CapsuleResp as u8));
    assert_eq!(&h[20..22], &0x0FFFu16.to_le_bytes());
    assert_eq!(h[1] & 1 != 0, digests, "HDGSTF as received");
    if digests {
        let crc = holdfast_proto::digest::crc32c(&h[..24]);
        assert_eq!(u32::from_le_bytes(h[24..28].try_into().unwrap()), crc, "the header digest as received");
    }
    c.shutdown().await.unwrap();
}

/// C2HData for a command after a C2HData that said it was the last (LAST_PDU) ends the connection with an
/// H2CTermReq, FES PDU Sequence Error, whose data is the offending header as received (with header digests:
/// the HDGSTF flag and the digest too); the read is issued again and returns the right bytes. (The data here
/// is in order and within the read, so only the LAST_PDU flag makes it wrong.)
#[tokio::test]
async fn c2h_data_after_the_last_one_gets_an_h2c_termination_request() {
    for digests in [false, true] {
        let f = fake(Behaviour::default()).await;
        let mut o = opts(&f, 1, digests);
        o.reconnect_delay = Some(Duration::from_millis(100));
        let c = Controller::connect(o).await.unwrap();
        let ns = Namespace::open(&c, 1).await.unwrap();
        let d = pattern(2 * BS, 9);
        ns.write(0, d.clone(), false).await.unwrap();
        f.st.data_after_last.store(true, Ordering::Relaxed);
        assert!(ns.read(0, 2).await.expect("issued again") == d);
        assert!(!f.st.data_after_last.load(Ordering::Relaxed), "the split data was sent");
        let terms = wait_terms(&f, 1).await;
        assert_eq!(terms.len(), 1, "{terms:?}");
        assert_eq!(terms[0].fes, pdu::Fes::SequenceError as u16);
        let h = &terms[0].data;
        let hd = if digests { 4 } else { 0 };
        assert_eq!((h.len(), h[0]), (pdu::HLEN_DATA as usize + hd, pdu::PduType::C2HData as u8), "digests {digests}");
        assert_eq!(h[1] & 1 != 0, digests, "HDGSTF as received");
        assert_eq!(u32::from_le_bytes(h[12..16].try_into().unwrap()), BS as u32, "DATAO of the second PDU");
        if digests {
            let crc = holdfast_proto::digest::crc32c(&h[..24]);
            assert_eq!(u32::from_le_bytes(h[24..28].try_into().unwrap()), crc, "the header digest as received");
        }
        c.shutdown().await.unwrap();
    }
}

/// An ICResp the host cannot take (here PDU format version 1) is refused with an H2CTermReq naming the field
/// (FES Unsupported Parameter, FEI 8), the ICResp as its data, before the connection closes.
#[tokio::test]
async fn an_unsupported_icresp_gets_an_h2c_termination_request() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    let target = tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut icreq = [0u8; 128];
        s.read_exact(&mut icreq).await.unwrap();
        let resp = IcResp { pfv: 1, cpda: 0, hdgst: false, ddgst: false, maxh2cdata: 131072 };
        s.write_all(&Pdu::IcResp(resp).to_bytes(&Framing::default())).await.unwrap();
        let mut rest = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(3), s.read_to_end(&mut rest)).await;
        rest
    });
    let e = Controller::connect(ConnectOptions::new(addr, NQN)).await.err().expect("refused");
    assert!(e.to_string().contains("format version 1"), "{e}");
    let rest = target.await.unwrap();
    let mut dec = PduDecoder::new(Role::Controller, Limits::default());
    let mut buf = BytesMut::from(&rest[..]);
    match dec.decode(&mut buf) {
        Ok(Some(Pdu::H2CTermReq(t))) => {
            assert_eq!((t.fes, t.fei), (pdu::Fes::UnsupportedParameter as u16, pdu::offset::IC_PFV));
            assert_eq!((t.data.len(), t.data[0]), (128, pdu::PduType::IcResp as u8));
        }
        other => panic!("expected an H2CTermReq, got {other:?} ({} bytes)", rest.len()),
    }
}

/// shutdown() while a reconnect attempt is under way (here a connect into a black hole: the target accepts and
/// never answers the ICReq) ends the attempt at once: shutdown returns promptly and the controller's tasks are
/// gone, instead of shutdown giving up after its own wait while the attempt runs on to its deadline.
#[tokio::test]
async fn shutdown_during_a_reconnect_attempt_returns_at_once() {
    let f = fake(Behaviour::default()).await;
    let mut o = opts(&f, 1, false);
    o.kato = Some(Duration::from_millis(600));
    o.reconnect_delay = Some(Duration::from_millis(100));
    o.connect_timeout = Duration::from_secs(20);
    let c = Controller::connect(o).await.unwrap();
    f.st.mute.store(true, Ordering::Relaxed);
    go_down(&f, &c).await;
    // Past the first attempt's start: it is now waiting for an ICResp.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let t0 = Instant::now();
    c.shutdown().await.unwrap();
    let took = t0.elapsed();
    assert!(took < Duration::from_secs(2), "shutdown took {took:?}");
}

/// A set-up command the target never answers times out with the time it was waited for in the error, not 0.
#[tokio::test]
async fn an_unanswered_connect_times_out_saying_how_long_it_waited() {
    let l = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap().to_string();
    tokio::spawn(async move {
        let (mut s, _) = l.accept().await.unwrap();
        let mut icreq = [0u8; 128];
        s.read_exact(&mut icreq).await.unwrap();
        let resp = IcResp { pfv: 0, cpda: 0, hdgst: false, ddgst: false, maxh2cdata: 131072 };
        s.write_all(&Pdu::IcResp(resp).to_bytes(&Framing::default())).await.unwrap();
        let mut sink = Vec::new();
        let _ = tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut sink)).await;
    });
    let mut o = ConnectOptions::new(addr, NQN);
    o.connect_timeout = Duration::from_millis(500);
    let e = Controller::connect(o).await.err().expect("no answer to the Connect");
    match e {
        Error::Timeout { what, after } => {
            assert!(what.contains("Connect"), "{what}");
            assert!(after >= Duration::from_millis(1000), "after {after:?}");
        }
        other => panic!("expected a timeout, got {other}"),
    }
}

/// A Discovery log whose NUMREC claims more records than the controller sends (the transfer ends early, with a
/// successful status) fails discovery with an error that says so, instead of listing the missing records as
/// empty entries (the short admin transfer reads as zeroes).
#[tokio::test]
async fn a_discovery_log_with_fewer_records_than_numrec_is_an_error_not_empty_entries() {
    let what =
        discovery_protocol_error(Behaviour { discovery_records: 1, discovery_numrec_extra: 2, ..Default::default() })
            .await;
    assert!(what.contains("NUMREC"), "{what}");
}

/// A policy page cut short (a successful completion after 40 of its 512 bytes, short of its version 1 fields)
/// is not taken at all: it read as a whole page whose missing fields were zero (here FLAGS, so no policy
/// advertised, with the instance ID, which tells a target's restart from a blip, taken from the part that came).
#[tokio::test]
async fn a_policy_page_cut_short_is_not_taken() {
    for bytes in [None, Some(40)] {
        let f = fake(Behaviour { policy_page_bytes: bytes, ..Default::default() }).await;
        *f.st.policy.lock().unwrap() = Some(holdfast_proto::policy::ConnectionPolicy {
            instance_id: 1,
            kato_ms: 5000,
            ctrl_loss_tmo_ms: 30_000,
            fast_io_fail_tmo_ms: 300,
            ..Default::default()
        });
        let c = Controller::connect(opts(&f, 1, false)).await.expect("connect");
        let eff = c.effective_policy();
        let advertised = (eff.ctrl_loss_tmo.0, eff.fast_io_fail_tmo.0);
        if bytes.is_none() {
            assert_eq!(advertised, (Some(Duration::from_secs(30)), Some(Duration::from_millis(300))));
        } else {
            assert_ne!(advertised.0, Some(Duration::from_secs(30)), "{eff:?}");
            assert_eq!(eff.instance_id, None, "a page cut short was taken: {eff:?}");
        }
        c.shutdown().await.unwrap();
    }
}

/// A reconnect whose policy page read fails (the restarted target answers Internal Error) keeps the policy the
/// target advertised before, with its ctrl_loss_tmo of 30 s: falling back to the default (600 s) would keep a
/// database volume's I/O queued ten minutes past what its target asked for. A page refused as one the target
/// does not have (Invalid Log Page: no longer a holdfast target) does mean no policy, and the defaults.
#[tokio::test]
async fn a_policy_page_that_fails_at_a_reconnect_leaves_the_last_policy_in_force() {
    for (status, kept) in [(Status::INTERNAL_ERROR, true), (Status::INVALID_LOG_PAGE, false)] {
        let f = fake(Behaviour::default()).await;
        *f.st.policy.lock().unwrap() = Some(holdfast_proto::policy::ConnectionPolicy {
            instance_id: 1,
            kato_ms: 5000,
            reconnect_delay_ms: 50,
            reconnect_delay_max_ms: 50,
            ctrl_loss_tmo_ms: 30_000,
            ..Default::default()
        });
        let c = Controller::connect(opts(&f, 1, false)).await.expect("connect");
        let ns = Namespace::open(&c, 1).await.expect("namespace");
        assert_eq!(c.effective_policy().ctrl_loss_tmo.0, Some(Duration::from_secs(30)));
        *f.st.policy_status.lock().unwrap() = Some(status);
        go_down(&f, &c).await;
        f.st.down.store(false, Ordering::Relaxed);
        tokio::time::timeout(Duration::from_secs(10), ns.read(0, 1)).await.expect("no hang").expect("read");
        assert_eq!(c.state(), holdfast_host::controller::State::Live);
        let eff = c.effective_policy();
        if kept {
            assert_eq!(eff.ctrl_loss_tmo.0, Some(Duration::from_secs(30)), "{status}: {eff:?}");
            assert_eq!(c.policy().map(|p| p.instance_id), Some(1), "{status}");
        } else {
            assert_ne!(eff.ctrl_loss_tmo.0, Some(Duration::from_secs(30)), "{status}: {eff:?}");
            assert_eq!(c.policy(), None, "{status}");
        }
        c.shutdown().await.unwrap();
    }
}

/// A Discovery log read in one command that comes back cut short (a successful completion after 1500 of its
/// 3072 bytes) fails discovery with an error that says how much came; read in pieces, each piece cut short is
/// continued from where it stopped.
#[tokio::test]
async fn a_discovery_log_cut_short_is_an_error_and_short_pieces_are_continued() {
    let what = discovery_protocol_error(Behaviour {
        discovery_records: 2,
        discovery_read_bytes: Some(1500),
        ..Default::default()
    })
    .await;
    assert!(what.contains("returned 1500 bytes"), "{what}");
    // Shorter than the log's 16-byte header: an error, not an empty log.
    let what = discovery_protocol_error(Behaviour {
        discovery_records: 2,
        discovery_read_bytes: Some(12),
        ..Default::default()
    })
    .await;
    assert!(what.contains("cut short"), "{what}");
    // Pieces of 5002 bytes (not whole dwords) are continued from the last whole dword.
    let f = fake(Behaviour { mdts: 1, discovery_records: 20, discovery_read_bytes: Some(5002), ..Default::default() })
        .await;
    let entries = discover(&f).await.expect("discover");
    assert_eq!(entries.len(), 20);
}

/// An Identify whose data comes short (a successful completion after 384 of its 4096 bytes) fails with an
/// error that says so, instead of reading as a structure with zero fields (no LBA formats: "unusable LBA
/// format", a reason the namespace does not have).
#[tokio::test]
async fn a_short_identify_is_an_error_that_says_so() {
    let f = fake(Behaviour { short_identify_ns: true, ..Default::default() }).await;
    let c = Controller::connect(opts(&f, 1, false)).await.unwrap();
    let Err(e) = Namespace::open(&c, 1).await else { panic!("opened a namespace from a short Identify") };
    let msg = e.to_string();
    assert!(msg.contains("Identify") && msg.contains("384 of 4096 bytes"), "{msg}");
    c.shutdown().await.unwrap();
}

/// A Connect answered with a reserved controller ID (FFF0h-FFFFh) is refused: the host would otherwise send
/// FFFFh ("any dynamic controller") in its I/O queues' Connects.
#[tokio::test]
async fn a_reserved_controller_id_from_connect_is_refused() {
    let f = fake(Behaviour::default()).await;
    f.st.next_cntlid.store(0xFFFF, Ordering::Relaxed);
    let mut o = opts(&f, 1, false);
    o.connect_timeout = Duration::from_secs(2);
    let Err(e) = Controller::connect(o).await else { panic!("connected with a reserved CNTLID") };
    assert!(e.to_string().contains("reserved"), "{e}");
}

/// Past ctrl_loss_tmo every request fails with an error that says why and since when (README, Ride-through), including
/// the ones that were still waiting for room in their queue's submission channel (more requests outstanding
/// during the outage than the channel holds): they too get [`Error::ControllerLost`] with the reason, not a bare
/// "the controller is closed".
#[tokio::test]
async fn requests_waiting_for_room_when_the_controller_is_lost_say_why() {
    let f = fake(Behaviour::default()).await;
    let mut o = opts(&f, 1, false); // queue size 8: the submission channel holds 16
    o.kato = Some(Duration::from_millis(600));
    o.reconnect_delay = Some(Duration::from_millis(100));
    o.ctrl_loss_tmo = Some(Duration::from_millis(1500));
    let c = Controller::connect(o).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    go_down(&f, &c).await;
    let reads: Vec<_> = (0..40u64)
        .map(|i| {
            let ns = ns.clone();
            tokio::spawn(async move { ns.read(i, 1).await })
        })
        .collect();
    let mut other = Vec::new();
    for r in reads {
        let r = tokio::time::timeout(Duration::from_secs(10), r).await.expect("a read outlived ctrl_loss_tmo").unwrap();
        match r {
            Err(Error::ControllerLost(why)) => assert!(why.contains("ctrl_loss_tmo"), "{why}"),
            other_result => other.push(format!("{other_result:?}")),
        }
    }
    assert!(other.is_empty(), "{} of 40 reads failed without saying why: {:?}", other.len(), other.first());
    // So does a namespace opened on the failed controller.
    match Namespace::open(&c, 1).await {
        Err(Error::ControllerLost(why)) => assert!(why.contains("ctrl_loss_tmo"), "{why}"),
        Err(e) => panic!("opening a namespace on a lost controller: {e}"),
        Ok(_) => panic!("opened a namespace on a lost controller"),
    }
}

/// A namespace formatted with metadata (extended LBAs of 512 + 8 bytes) is refused when opened, saying why: every
/// transfer length the host computes counts 512-byte blocks, which such a controller would not expect.
#[tokio::test]
async fn a_namespace_with_metadata_is_refused_saying_why() {
    let f = fake(Behaviour { ns_metadata: 8, ..Default::default() }).await;
    let c = Controller::connect(opts(&f, 1, false)).await.unwrap();
    match Namespace::open(&c, 1).await {
        Err(Error::Invalid(why)) => assert!(why.contains("8 bytes of metadata"), "{why}"),
        Err(e) => panic!("expected Invalid, got {e}"),
        Ok(_) => panic!("opened a namespace with metadata"),
    }
    c.shutdown().await.unwrap();
}

/// A policy-changed event whose page carries another KATO (README, Connection policy: the host re-reads the page when an
/// event says it changed): the association adopts it as a reconnect adopts a changed one, with Set Features
/// Keep Alive Timer, and Keep Alives go at the new KATO's pace; the effective policy does not report a KATO
/// the association does not run with.
#[tokio::test]
async fn a_kato_changed_by_a_policy_event_is_adopted_by_the_live_association() {
    let f = fake(Behaviour::default()).await;
    let policy = holdfast_proto::policy::ConnectionPolicy {
        instance_id: 1,
        generation: 1,
        kato_ms: 6000,
        reconnect_delay_ms: 100,
        reconnect_delay_max_ms: 100,
        ctrl_loss_tmo_ms: 30_000,
        ..Default::default()
    };
    *f.st.policy.lock().unwrap() = Some(policy);
    let c = Controller::connect(opts(&f, 1, false)).await.expect("connect");
    assert_eq!(c.effective_policy().kato.0, Duration::from_secs(6));
    let katos = || f.st.log.lock().unwrap().iter().filter(|l| l.starts_with("kato")).cloned().collect::<Vec<_>>();
    assert_eq!(katos(), ["kato 6000"], "the advertised KATO is adopted at connect");
    *f.st.policy.lock().unwrap() =
        Some(holdfast_proto::policy::ConnectionPolicy { kato_ms: 1000, generation: 2, ..policy });
    f.st.policy_aen.send_modify(|n| *n += 1);
    let t0 = Instant::now();
    while c.effective_policy().kato.0 != Duration::from_secs(1) {
        assert!(t0.elapsed() < Duration::from_secs(3), "the changed policy was never read");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    tokio::time::sleep(Duration::from_millis(200)).await;
    assert_eq!(katos(), ["kato 6000", "kato 1000"], "the changed KATO is set on the association");
    let before = f.st.keep_alives.load(Ordering::Relaxed);
    tokio::time::sleep(Duration::from_millis(2100)).await;
    let sent = f.st.keep_alives.load(Ordering::Relaxed) - before;
    assert!(sent >= 4, "{sent} Keep Alives in 2.1 s with a KATO of 1 s");
    // The event was answered by a new request: a second change is read too.
    *f.st.policy.lock().unwrap() =
        Some(holdfast_proto::policy::ConnectionPolicy { kato_ms: 2000, generation: 3, ..policy });
    f.st.policy_aen.send_modify(|n| *n += 1);
    let t0 = Instant::now();
    while c.effective_policy().kato.0 != Duration::from_secs(2) {
        assert!(t0.elapsed() < Duration::from_secs(3), "the second change was never read");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    c.shutdown().await.unwrap();
}

/// A KATO host option past what Connect's 32-bit KATO holds (FFFFFFFFh ms, 49.7 days) is sent as the most it
/// holds, not wrapped: 2^32 ms + 5 s went out as 5 s, and 2^32 ms as 0, which disables keep-alive.
#[tokio::test]
async fn a_kato_option_past_32_bits_of_milliseconds_is_not_wrapped() {
    let f = fake(Behaviour::default()).await;
    let mut o = opts(&f, 1, false);
    o.kato = Some(Duration::from_millis((1 << 32) + 5000));
    let c = Controller::connect(o).await.expect("connect");
    assert_eq!(f.st.connect_kato.load(Ordering::Relaxed), u32::MAX);
    assert_eq!(c.effective_policy().kato.0, Duration::from_millis(u32::MAX as u64), "what the association runs");
    c.shutdown().await.unwrap();
}

/// A write completed successfully by a target that asked for only part of its data (an R2T for the first half,
/// or none at all) is not done: the host must not report it done. The controller completes a command only after
/// its data transfer (NVMe/TCP 1.0 §3.3.2 and §3.6.2.8: the host sends a command's data in H2CData PDUs the
/// controller asks for with R2Ts; the response capsule ends the command).
#[tokio::test]
async fn a_write_completed_before_its_data_was_asked_for_is_not_reported_done() {
    for asked in [0, 32 * 1024] {
        let f = fake(Behaviour { short_r2t_writes: Some(asked), ..Behaviour::default() }).await;
        let mut o = opts(&f, 1, false);
        o.reconnect_delay = Some(Duration::from_millis(100));
        o.io_timeout = Duration::from_secs(2);
        let c = Controller::connect(o).await.unwrap();
        let ns = Namespace::open(&c, 1).await.unwrap();
        let d = pattern(64 * 1024, 21);
        let r = tokio::time::timeout(Duration::from_secs(15), ns.write(8, d, false)).await.expect("no hang");
        match r {
            Err(Error::Protocol { what, .. }) => assert!(what.contains(&format!("{asked} of its")), "{what}"),
            Err(e) => panic!("asked for {asked} bytes: expected a protocol error, got {e}"),
            Ok(()) => panic!("asked for {asked} bytes: a write whose data was never sent was reported done"),
        }
        assert!(f.st.bad_h2c_bytes.load(Ordering::Relaxed) as usize <= asked);
        c.shutdown().await.unwrap();
    }
}

/// An admin command queued while a reconnect attempt is under way (here stuck waiting for an ICResp), when the
/// controller is shut down, fails saying so: not with a bare "the command was dropped".
#[tokio::test]
async fn an_admin_command_queued_during_a_reconnect_attempt_fails_saying_shut_down() {
    let f = fake(Behaviour::default()).await;
    let mut o = opts(&f, 1, false);
    o.kato = Some(Duration::from_millis(600));
    o.reconnect_delay = Some(Duration::from_millis(100));
    o.connect_timeout = Duration::from_secs(20);
    let c = Controller::connect(o).await.unwrap();
    f.st.mute.store(true, Ordering::Relaxed);
    go_down(&f, &c).await;
    // Past the first attempt's start: it is now waiting for an ICResp.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let c2 = c.clone();
    let list = tokio::spawn(async move { c2.active_namespaces().await });
    tokio::time::sleep(Duration::from_millis(50)).await;
    c.shutdown().await.unwrap();
    let r = tokio::time::timeout(Duration::from_secs(3), list).await.expect("still waiting after shutdown").unwrap();
    match r {
        Err(e) => assert!(e.to_string().contains("shut down"), "{e}"),
        Ok(v) => panic!("listed {v:?} on a controller shut down while reconnecting"),
    }
}

/// A shutdown its caller gives up on (a timeout around it, here after its first poll, once it has stopped the
/// keep-alive) still shuts the controller down, abruptly: left half done, the controller stayed live without
/// keep-alive and with every queue loss taken for part of a shutdown, so that after the connection dropped
/// nothing reconnected and I/O waited for ever.
#[tokio::test]
async fn a_shutdown_given_up_by_its_caller_still_shuts_the_controller_down() {
    let f = fake(Behaviour::default()).await;
    let mut o = opts(&f, 1, false);
    o.kato = Some(Duration::from_millis(600));
    o.reconnect_delay = Some(Duration::from_millis(100));
    o.io_timeout = Duration::from_secs(1);
    o.ctrl_loss_tmo = Some(Duration::from_secs(2));
    let c = Controller::connect(o).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    tokio::select! {
        biased;
        _ = c.shutdown() => panic!("shutdown completed in one poll"),
        _ = std::future::ready(()) => {}
    }
    f.st.down.store(true, Ordering::Relaxed);
    let r = tokio::time::timeout(Duration::from_secs(6), ns.read(0, 1)).await;
    match r.expect("a read waited 6 s (past io_timeout and ctrl_loss_tmo) on a controller whose shutdown was given up")
    {
        Err(e) => assert!(e.to_string().contains("shut down"), "{e}"),
        Ok(_) => panic!("read from a target that is down"),
    }
    assert!(matches!(c.state(), holdfast_host::controller::State::Failed { .. }), "{:?}", c.state());
}

/// Namespace 1 is replaced on the live controller (another NGUID) without a notice (the fake sends none for
/// namespaces), and the application opens it again: the handle opened again is the namespace now under NSID 1,
/// and a reconnect keeps it (the identifiers checked are the ones it was opened with, not the first ones ever
/// read, which took the controller down); the handle of the namespace before fails saying it was replaced,
/// rather than writing into the new one.
#[tokio::test]
async fn a_namespace_opened_again_after_it_was_replaced_is_kept_across_a_reconnect() {
    let f = fake(Behaviour::default()).await;
    let mut o = opts(&f, 1, false);
    o.reconnect_delay = Some(Duration::from_millis(50));
    o.ctrl_loss_tmo = Some(Duration::from_secs(60));
    let c = Controller::connect(o).await.unwrap();
    let old = Namespace::open(&c, 1).await.unwrap();
    old.write(0, pattern(BS, 1), false).await.unwrap();
    f.st.ns_gen.store(1, Ordering::Relaxed);
    let new = Namespace::open(&c, 1).await.unwrap();
    assert_ne!(new.descriptors(), old.descriptors());
    let writes = f.st.write_attempts.load(Ordering::Relaxed);
    match old.write(0, pattern(BS, 2), false).await {
        Err(Error::NamespaceGone(why)) => assert!(why.contains("namespace 1") && why.contains("replaced"), "{why}"),
        other => panic!("expected the old handle to fail as replaced, got {other:?}"),
    }
    assert_eq!(f.st.write_attempts.load(Ordering::Relaxed), writes, "the old handle wrote into the new namespace");
    go_down(&f, &c).await;
    f.st.down.store(false, Ordering::Relaxed);
    let r = tokio::time::timeout(Duration::from_secs(5), new.write(0, pattern(BS, 3), false)).await.expect("no hang");
    r.expect("a write through the handle opened again, across the reconnect");
    assert_eq!(c.state(), holdfast_host::controller::State::Live);
    c.shutdown().await.unwrap();
}

/// A reconnect finds namespace 1 with its identifiers but formatted with 4096-byte blocks, where the handle counts
/// 512-byte ones: a Write Zeroes queued during the outage (no data whose length would betray the mismatch) is not
/// replayed, where it would zero eight times the blocks asked for at eight times the offset; it fails saying why,
/// as for changed identifiers, and the controller stays live.
#[tokio::test]
async fn a_namespace_formatted_with_other_blocks_across_a_reconnect_gets_no_replayed_io() {
    formatted_with_other_blocks(false).await;
}

/// As above, for a namespace whose controller reports no identifiers at all: its block size is checked all
/// the same (it was not, such a namespace being left out of the check).
#[tokio::test]
async fn a_namespace_without_identifiers_formatted_with_other_blocks_gets_no_replayed_io() {
    formatted_with_other_blocks(true).await;
}

async fn formatted_with_other_blocks(no_ns_ids: bool) {
    let f = fake(Behaviour { no_ns_ids, ..Behaviour::default() }).await;
    let mut o = opts(&f, 1, false);
    o.reconnect_delay = Some(Duration::from_millis(100));
    o.ctrl_loss_tmo = Some(Duration::from_secs(60));
    let c = Controller::connect(o).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    ns.write(0, pattern(8 * BS, 1), false).await.unwrap();
    go_down(&f, &c).await;
    let z = tokio::spawn({
        let ns = ns.clone();
        async move { ns.write_zeroes(0, 8).await }
    });
    tokio::time::sleep(Duration::from_millis(50)).await;
    f.st.ns_lbads.store(12, Ordering::Relaxed);
    f.st.down.store(false, Ordering::Relaxed);
    let r = tokio::time::timeout(Duration::from_secs(5), z).await.expect("the Write Zeroes never finished").unwrap();
    match r {
        Err(Error::NamespaceGone(why)) => assert!(why.contains("namespace 1") && why.contains("4096"), "{why}"),
        other => panic!("expected the Write Zeroes failed over the new block size, got {other:?}"),
    }
    assert_eq!(&f.st.ram.lock().unwrap()[..8 * BS], &pattern(8 * BS, 1)[..], "the Write Zeroes was replayed");
    live(&c).await;
    let e = ns.write_zeroes(0, 8).await.expect_err("a Write Zeroes through the handle counting other blocks");
    assert!(e.to_string().contains("namespace 1") && e.to_string().contains("4096"), "{e}");
    assert_eq!(&f.st.ram.lock().unwrap()[..8 * BS], &pattern(8 * BS, 1)[..], "zeroed through the old handle");
    c.shutdown().await.unwrap();
}

/// A write of namespace 1 is in flight (held by the fake) when namespace 1 is replaced (another NGUID), and then
/// the connection is lost. With `notice`, a namespace notice marked namespace 1 gone first; with `reopen`, the
/// application then opened NSID 1 again, on the namespace now there (without a notice, opening it is what finds
/// the replacement). The reconnect must not replay the old write onto the namespace now under NSID 1 (README, No stale writes:
/// never let a stale write land), though a handle opened again sends commands with the same NSID: it fails saying
/// why, as a write found pending for a namespace the reconnect itself finds replaced; namespace 2, and the handle
/// opened again, ride through.
async fn a_write_in_flight_through_a_replaced_namespace(notice: bool, reopen: bool) {
    let f = fake(Behaviour::default()).await;
    let c = Controller::connect(riding_opts(&f)).await.unwrap();
    let old = Namespace::open(&c, 1).await.unwrap();
    let ns2 = Namespace::open(&c, 2).await.unwrap();
    let before = pattern(BS, 1);
    old.write(0, before.clone(), false).await.unwrap();
    f.st.hang_writes.store(true, Ordering::Relaxed);
    let attempts = f.st.write_attempts.load(Ordering::Relaxed);
    let in_flight = tokio::spawn({
        let old = old.clone();
        async move { old.write(0, pattern(BS, 2), false).await }
    });
    let t0 = std::time::Instant::now();
    while f.st.write_attempts.load(Ordering::Relaxed) == attempts {
        assert!(t0.elapsed() < Duration::from_secs(3), "the write never reached the fake");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let mut events = c.events();
    f.st.ns_gen.store(1, Ordering::Relaxed);
    if notice {
        f.st.ns_aen.store(true, Ordering::SeqCst);
        f.st.policy_aen.send_modify(|n| *n += 1);
        namespaces_changed(&mut events).await;
    }
    let new = match reopen {
        true => Some(Namespace::open(&c, 1).await.unwrap()),
        false => None,
    };
    if let Some(new) = &new {
        assert_ne!(new.descriptors(), old.descriptors());
    }
    assert!(old.write(0, pattern(BS, 3), false).await.is_err(), "namespace 1's old handle was not marked gone");
    go_down(&f, &c).await;
    f.st.hang_writes.store(false, Ordering::Relaxed);
    f.st.down.store(false, Ordering::Relaxed);
    let r = tokio::time::timeout(Duration::from_secs(5), in_flight).await.expect("the write never finished").unwrap();
    live(&c).await;
    ns2.write(100, pattern(BS, 4), false).await.expect("namespace 2 rides through");
    assert!(f.st.ram.lock().unwrap()[..BS] == before[..], "namespace 1's old write landed in the new one: {r:?}");
    match r {
        Err(Error::NamespaceGone(why)) => assert!(why.contains("namespace 1") && why.contains("replaced"), "{why}"),
        other => panic!("expected namespace 1's old write failed as replaced, got {other:?}"),
    }
    if let Some(new) = new {
        let w = tokio::time::timeout(Duration::from_secs(5), new.write(0, pattern(BS, 5), false)).await;
        w.expect("no hang").expect("a write through the handle opened again, after the reconnect");
        assert!(f.st.ram.lock().unwrap()[..BS] == pattern(BS, 5)[..], "the new handle's write did not land");
    }
    c.shutdown().await.unwrap();
}

#[tokio::test]
async fn a_write_pending_for_a_namespace_a_notice_found_replaced_is_not_replayed_at_the_reconnect() {
    a_write_in_flight_through_a_replaced_namespace(true, false).await;
}

#[tokio::test]
async fn a_write_in_flight_through_a_namespace_replaced_and_opened_again_is_not_replayed_onto_the_new_one() {
    a_write_in_flight_through_a_replaced_namespace(false, true).await;
}

#[tokio::test]
async fn a_write_in_flight_through_a_namespace_a_notice_found_replaced_and_opened_again_is_not_replayed() {
    a_write_in_flight_through_a_replaced_namespace(true, true).await;
}

/// Wait (at most 5 s) for the controller to report a namespace notice.
async fn namespaces_changed(events: &mut tokio::sync::broadcast::Receiver<holdfast_host::controller::Event>) {
    tokio::time::timeout(Duration::from_secs(5), async {
        loop {
            if let Ok(holdfast_host::controller::Event::NamespacesChanged { .. }) = events.recv().await {
                return;
            }
        }
    })
    .await
    .expect("the namespace notice was never reported");
}

/// One I/O queue, a keep-alive of 600 ms, reconnects every 100 ms for up to a minute: a controller that notices a
/// fake gone down soon and rides through it.
fn riding_opts(f: &Fake) -> ConnectOptions {
    let mut o = opts(f, 1, false);
    o.kato = Some(Duration::from_millis(600));
    o.reconnect_delay = Some(Duration::from_millis(100));
    o.ctrl_loss_tmo = Some(Duration::from_secs(60));
    o
}

/// Options that could not work are refused before anything is sent, saying why: an NQN longer than the 223
/// bytes the Connect data holds (it was cut short, and refused by the target as another name), an empty host
/// NQN, an I/O timeout of 0 (every command timed out, the association torn down every 250 ms).
#[tokio::test]
async fn unusable_options_are_refused_before_connecting() {
    let f = fake(Behaviour::default()).await;
    for (change, want) in [
        (
            Box::new(|o: &mut ConnectOptions| o.subnqn = "n".repeat(224)) as Box<dyn Fn(&mut ConnectOptions)>,
            "subsystem NQN is 224 bytes",
        ),
        (Box::new(|o: &mut ConnectOptions| o.hostnqn.clear()), "host NQN is 0 bytes"),
        (Box::new(|o: &mut ConnectOptions| o.io_timeout = Duration::ZERO), "io_timeout of 0"),
    ] {
        let mut o = opts(&f, 1, false);
        change(&mut o);
        match Controller::connect(o).await {
            Err(Error::Invalid(m)) => assert!(m.contains(want), "{m}"),
            r => panic!("{want}: {:?}", r.map(|_| ())),
        }
    }
    assert_eq!(f.st.connections.load(Ordering::SeqCst), 0, "nothing was sent");
}

/// A target that comes back as another instance whose policy page cannot be read this time: the restart is
/// possible, so it is counted (`target_restarts`, `Restored.target_restarted`), and an announced planned
/// downtime of the page read before is not kept. Counted as no restart, the application's check (the count
/// read before a write and after its Flush) said writes were durable that a RAM namespace's restart erased.
#[tokio::test]
async fn a_possible_restart_is_counted_when_the_policy_page_fails_at_a_reconnect() {
    let f = fake(Behaviour::default()).await;
    let pol = holdfast_proto::policy::ConnectionPolicy {
        instance_id: 1,
        kato_ms: 5000,
        reconnect_delay_ms: 50,
        reconnect_delay_max_ms: 50,
        ctrl_loss_tmo_ms: 30_000,
        planned_downtime_ms: 60_000,
        ..Default::default()
    };
    *f.st.policy.lock().unwrap() = Some(pol);
    let c = Controller::connect(riding_opts(&f)).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    let mut ev = c.events();
    let before = c.target_restarts();
    ns.write(0, pattern(BS, 1), false).await.unwrap();
    go_down(&f, &c).await;
    *f.st.policy.lock().unwrap() = Some(holdfast_proto::policy::ConnectionPolicy { instance_id: 2, ..pol });
    *f.st.policy_status.lock().unwrap() = Some(Status::INTERNAL_ERROR);
    f.st.down.store(false, Ordering::Relaxed);
    ns.flush().await.expect("flush on the new instance");
    assert_eq!(c.target_restarts(), before + 1, "a possible restart, counted");
    let mut restored = None;
    while let Ok(Ok(e)) = tokio::time::timeout(Duration::from_millis(200), ev.recv()).await {
        if let holdfast_host::controller::Event::Restored { target_restarted, .. } = e {
            restored = Some(target_restarted);
        }
    }
    assert_eq!(restored, Some(true));
    assert_eq!(c.policy().map(|p| p.planned_downtime_ms), Some(0), "the old announcement is not kept");
    c.shutdown().await.unwrap();
}

/// Callers waiting for room in a full submission channel when the controller starts failing fast fail with
/// it, not once the next reconnect attempt is over: the commands failed at fast_io_fail_tmo made room, and let
/// them into a channel nothing would serve before that attempt (a connect into a target that does not answer,
/// up to connect_timeout: 8 s here) ended.
#[tokio::test]
async fn callers_waiting_for_room_fail_with_fast_io_fail_tmo() {
    let f = fake(Behaviour::default()).await;
    let mut o = opts(&f, 1, false); // queue size 8: the channel holds 16
    o.kato = Some(Duration::from_millis(600));
    o.reconnect_delay = Some(Duration::from_millis(1000));
    o.fast_io_fail_tmo = Some(Duration::from_millis(400));
    o.ctrl_loss_tmo = Some(Duration::from_secs(60));
    o.connect_timeout = Duration::from_secs(8);
    let c = Controller::connect(o).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    f.st.mute.store(true, Ordering::Relaxed);
    go_down(&f, &c).await;
    let lost = std::time::Instant::now();
    let reads: Vec<_> = (0..400u64)
        .map(|i| {
            let ns = ns.clone();
            tokio::spawn(async move {
                let r = ns.read(i, 1).await;
                (r, std::time::Instant::now())
            })
        })
        .collect();
    let mut last = Duration::ZERO;
    for r in reads {
        let (r, at) = tokio::time::timeout(Duration::from_secs(30), r).await.expect("a read still waiting").unwrap();
        assert!(matches!(r, Err(Error::PathError(_))), "{r:?}");
        last = last.max(at - lost);
    }
    // A liveness bound, far from either side: 400 ms and retries every 100 ms, against the attempt's 8 s.
    assert!(last < Duration::from_secs(4), "a caller waited {last:?} (fast_io_fail_tmo 400 ms)");
    c.shutdown().await.unwrap();
}

/// A controller lost for good (ctrl_loss_tmo) on a holdfast target: the next controller this process connects
/// to the same subsystem as the same host fences the lost association at its first connect, before any I/O
/// queue, as a reconnect would (the target may not have noticed the loss yet and still run its writes).
#[tokio::test]
async fn a_new_controller_fences_the_association_of_one_lost_before_it() {
    let f = fake(Behaviour::default()).await;
    let mut o = opts(&f, 1, false);
    o.kato = Some(Duration::from_millis(600));
    o.reconnect_delay = Some(Duration::from_millis(100));
    o.ctrl_loss_tmo = Some(Duration::from_millis(300));
    let c = Controller::connect(o.clone()).await.unwrap();
    go_down(&f, &c).await;
    let t0 = std::time::Instant::now();
    while !matches!(c.state(), holdfast_host::controller::State::Failed { .. }) {
        assert!(t0.elapsed() < Duration::from_secs(10), "the controller was never lost");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    f.st.down.store(false, Ordering::Relaxed);
    f.st.log.lock().unwrap().clear();
    let c2 = Controller::connect(o.clone()).await.unwrap();
    let log = f.st.log.lock().unwrap().clone();
    let first = log.iter().position(|l| l == "connect 0").expect("an admin Connect");
    assert_eq!(log.get(first + 1).map(String::as_str), Some("fence 1 0xf00d0001"), "{log:?}");
    c2.shutdown().await.unwrap();
    // Fenced once: a third controller does not fence it again.
    f.st.log.lock().unwrap().clear();
    let c3 = Controller::connect(o).await.unwrap();
    assert!(!f.st.log.lock().unwrap().iter().any(|l| l.starts_with("fence")), "fenced twice");
    c3.shutdown().await.unwrap();
}

/// A write refused with Asymmetric Access Inaccessible (a path-related status, SCT 3h, no DNR) reaches the
/// caller, after its retries, as `Error::Nvme` with that status, and `is_path_error` says so: what a multipath
/// layer above fails over on (it answered false: found by a review). Not retryable on this controller.
#[tokio::test]
async fn a_path_related_status_is_a_path_error() {
    let f = fake(Behaviour { fail_status: Status::ANA_INACCESSIBLE, ..Behaviour::default() }).await;
    let c = Controller::connect(opts(&f, 1, false)).await.unwrap();
    let ns = Namespace::open(&c, 1).await.unwrap();
    f.st.fail_writes.store(100, Ordering::Relaxed);
    let e = ns.write(7, pattern(BS, 4), false).await.expect_err("every try refused");
    assert!(matches!(&e, Error::Nvme { status, .. } if status.code() == Status::ANA_INACCESSIBLE.code()), "{e:?}");
    assert!(e.is_path_error() && !e.is_retryable(), "{e}");
    c.shutdown().await.unwrap();
}

/// `Controller::log_page` of more than the controller's transfer limit (MDTS) is read in pieces at offsets, as
/// namespace I/O and the discovery reader split theirs: sent as one command, this fake (as SPDK's target) ends
/// the connection over it, and Get Log Page being issued again after every reconnect, one call cost five
/// connections (found by a review). A controller that takes no offsets (LPA bit 2 clear) gets none: refused.
#[tokio::test]
async fn a_log_page_over_mdts_is_read_in_pieces_or_refused() {
    for offsets in [true, false] {
        let f = fake(Behaviour {
            mdts: 1,
            discovery_records: 20,
            discovery_refuse_offsets: !offsets,
            ..Default::default()
        })
        .await;
        let mut o = opts(&f, 0, false);
        o.subnqn = fabrics::DISCOVERY_NQN.into();
        let c = Controller::connect(o).await.unwrap();
        assert_eq!(c.max_transfer(), 8192);
        let mut events = c.events();
        let r = tokio::time::timeout(Duration::from_secs(10), c.log_page(LID_DISCOVERY, 0, 16384)).await.unwrap();
        while let Ok(e) = events.try_recv() {
            assert!(!matches!(e, holdfast_host::controller::Event::Reconnecting { .. }), "a lost connection: {e:?}");
        }
        let reads = f.st.discovery_reads.load(Ordering::Relaxed);
        if offsets {
            let log = r.unwrap();
            assert_eq!((log.len(), reads), (16384, 2), "two pieces of 8 KiB");
            assert_eq!(log[8192 + 2], 2, "the second piece is the records from 8 KiB on (SUBTYPE 2), not the header");
            // A length that is not a whole number of dwords: its last piece (2 bytes) too.
            let odd = c.log_page(LID_DISCOVERY, 0, 16386).await.unwrap();
            assert_eq!((odd.len(), &odd[..16384]), (16386, &log[..]));
        } else {
            assert!(matches!(&r, Err(Error::Invalid(m)) if m.contains("transfer limit")), "{r:?}");
            assert_eq!(reads, 0, "nothing sent");
        }
        c.shutdown().await.unwrap();
    }
}

/// Write Zeroes and Dataset Management are split by the controller's NVM command set limits (Identify CNS 06h:
/// WZSL, DMRL, DMRSL), which a target enforcing them (SPDK's, say) refuses with Invalid Field: the host read none
/// of them (found by a review). WZSL 1 is 8 KiB (16 blocks of 512 bytes); DMRL 2 ranges of DMRSL 10 blocks.
#[tokio::test]
async fn write_zeroes_and_deallocation_keep_to_the_controllers_limits() {
    let f = fake(Behaviour { nvm_limits: Some((1, 2, 10)), ..Default::default() }).await;
    let c = Controller::connect(opts(&f, 1, false)).await.unwrap();
    assert_eq!(
        c.nvm_limits(),
        holdfast_host::controller::NvmLimits {
            write_zeroes_bytes: Some(8192),
            dsm_ranges: Some(2),
            dsm_range_blocks: Some(10),
            dsm_blocks: None
        }
    );
    let ns = Namespace::open(&c, 1).await.unwrap();
    ns.write(0, pattern(BS, 100), false).await.unwrap();
    ns.write_zeroes(0, 100).await.unwrap();
    assert_eq!(f.st.write_zeroes_cmds.load(Ordering::Relaxed), 7, "100 blocks in pieces of 16");
    assert!(ns.read(0, 100).await.unwrap().iter().all(|&b| b == 0));
    ns.deallocate(0, 45).await.unwrap();
    let got = f.st.dsm_ranges.lock().unwrap().clone();
    assert_eq!(got, vec![vec![10, 10], vec![10, 10], vec![5]], "ranges of 10 blocks, 2 a command");
    c.shutdown().await.unwrap();
}
