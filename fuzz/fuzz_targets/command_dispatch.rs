//! Fuzz the target's command dispatcher: arbitrary SQEs and data, parsed and executed the way the TCP transport
//! does it (`holdfast_target::transport::tcp`), on the admin queue or an I/O queue of an enabled controller of
//! an in-process target with a RAM namespace, or on a discovery controller. It must never panic. A second
//! namespace is in an ANA group the port makes inaccessible: no command that parses may reach it.
//!
//! Input: byte 0 selects the queue (bit 0: I/O queue 1; bit 1: the discovery subsystem; bit 2: leave CC.EN
//! at 0), then up to 8 commands, each `[len: u16 LE][SQE: 64 bytes][len bytes of in-capsule data]`.
//!
//! DH-HMAC-CHAP (`holdfast_target::cmd::auth`): with byte 0 bit 3 the queue connects as a host that must
//! authenticate on a second subsystem (a `[[host]]` table with its keys, the subsystem listing it): bit 4
//! clear, host A (key with transformation 01, SHA-256, no controller key), set, host B (key 00, controller key
//! 03 for bidirectional authentication, SHA-384). The rest is then a script of up to 24 operations (see
//! `Auth::op`): the host's messages built with the proto types (Negotiate with any offer, a Reply whose R1 the
//! harness computes from the last Challenge received with the right key or not, for the right T_ID or not,
//! with or without C2, Success2, Failure2), Authentication Receive with any allocation length, raw messages,
//! raw commands as above, and commands the gate must refuse. Checks: while the queue must authenticate only
//! Connect, Disconnect and Authentication Send / Receive pass `cmd::parse`; the queue is let in (`auth_pending`
//! cleared) only by an operation after a Reply with the right R1 for the last Challenge; every Authentication
//! Receive returns a well-formed Challenge (for the T_ID and a hash offered; the NULL group when offered, else
//! the first FFDHE group offered, with a value of its length), Success1 (with an R2 that verifies under the
//! controller key, over the augmented C2 with an FFDHE group, when the host challenged) or Failure1; a Failure1 sent or a
//! Failure2 taken leaves `auth_pending` set and the queue closing. `COMMAND_DISPATCH_DEBUG=1` prints each
//! operation's outcome.
//!
//! The harness keeps the transport's invariants and nothing more: in-capsule data is at most the queue's
//! in-capsule limit, a command with no data gets none, `check_sgl` must accept the SGL for the in-capsule
//! length, and a write without in-capsule data gets exactly `req.len` bytes (what R2T + H2CData collect).
#![no_main]
use bytes::Bytes;
use holdfast_proto::auth::{
    self as a, ffdhe, AuthCommand, AuthNegotiate, DhchapChallenge, DhchapFailure, DhchapReply, DhchapSecret,
    DhchapSuccess1, DhchapSuccess2, HashId, MessageHeader,
};
use holdfast_proto::fabrics::{cc, ConnectCommand, ConnectData, DISCOVERY_NQN};
use holdfast_proto::sgl::SglDescriptor;
use holdfast_proto::SubmissionEntry;
use holdfast_target::cmd;
use holdfast_target::config::Config;
use holdfast_target::request::{DataDir, Exec, Outcome, QueueCtx, Response};
use holdfast_target::{Target, TargetSettings};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

const NQN: &str = "nqn.2026-01.io.holdfast:fuzz";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-00000000f022";
/// The subsystem whose hosts must authenticate.
const AUTH_NQN: &str = "nqn.2026-01.io.holdfast:fuzz-auth";

#[allow(dead_code)]
#[path = "../common/input.rs"]
mod input;
use input::Input;

/// A host with DH-HMAC-CHAP keys in the target's configuration.
struct HostDef {
    nqn: &'static str,
    key: DhchapSecret,
    ctrl_key: Option<DhchapSecret>,
}

fn hosts() -> &'static [HostDef; 2] {
    static H: OnceLock<[HostDef; 2]> = OnceLock::new();
    H.get_or_init(|| {
        [
            HostDef {
                nqn: "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000a1",
                key: DhchapSecret::new(&[0x11; 32], Some(HashId::Sha256)),
                ctrl_key: None,
            },
            HostDef {
                nqn: "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-0000000000b2",
                key: DhchapSecret::new(&[0x22; 48], None),
                ctrl_key: Some(DhchapSecret::new(&[0x33; 64], Some(HashId::Sha512))),
            },
        ]
    })
}
/// The transport's in-capsule limits (transport::tcp::ADMIN_INCAPSULE / IO_INCAPSULE).
const ADMIN_INCAPSULE: usize = 8192;
const IO_INCAPSULE: usize = 16384;

struct World {
    rt: tokio::runtime::Runtime,
    target: Arc<Target>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let [ha, hb] = hosts();
        let cfg = Config::parse(
            &format!(
                "[[port]]\nid = 1\nlisten = \"127.0.0.1:4420\"\nana_groups = {{ \"2\" = \"inaccessible\" }}\n\
                 [[subsystem]]\nnqn = \"{NQN}\"\n\
                 allow_any_host = true\n[[subsystem.namespace]]\nnsid = 1\nbackend = \"ram\"\nsize_mib = 1\n\
                 [[subsystem.namespace]]\nnsid = 2\nbackend = \"ram\"\nsize_mib = 1\nana_group = 2\n\
                 [[subsystem]]\nnqn = \"{AUTH_NQN}\"\nallowed_hosts = [\"{}\", \"{}\"]\n\
                 [[subsystem.namespace]]\nnsid = 1\nbackend = \"ram\"\nsize_mib = 1\n\
                 [[host]]\nnqn = \"{}\"\ndhchap_key = \"{}\"\ndhchap_hash = \"sha256\"\n\
                 [[host]]\nnqn = \"{}\"\ndhchap_key = \"{}\"\ndhchap_ctrl_key = \"{}\"\ndhchap_hash = \"sha384\"\n",
                ha.nqn,
                hb.nqn,
                ha.nqn,
                ha.key.encode(),
                hb.nqn,
                hb.key.encode(),
                hb.ctrl_key.as_ref().unwrap().encode(),
            ),
            "fuzz",
        )
        .unwrap();
        let target = Target::new(&cfg, TargetSettings::default()).unwrap();
        World { rt, target }
    })
}

fn queue_ctx(target: &Arc<Target>, max_incapsule: usize) -> QueueCtx {
    let port = target.ports.read()[0].clone();
    let (local, peer) = ("127.0.0.1:4420".parse().unwrap(), "127.0.0.1:5000".parse().unwrap());
    QueueCtx::new(target.clone(), port, local, peer, max_incapsule)
}

/// Connect `ctx` as queue `qid` (to controller `cntlid` for an I/O queue) of host `hostnqn`.
async fn connect(ctx: &mut QueueCtx, subnqn: &str, hostnqn: &str, qid: u16, cntlid: u16) {
    let c = ConnectCommand::new(1, qid, 31, 0);
    let d = ConnectData::new([0xF2; 16], cntlid, subnqn, hostnqn);
    let req = cmd::parse(ctx, &c.to_sqe()).expect("Connect parses");
    let _ = cmd::fabrics::connect(ctx, &req, zerocopy::IntoBytes::as_bytes(&d)).await;
}

/// One command, as `transport::tcp::handle_capsule` + `exec` run it: its response (its data trimmed or padded
/// to the transfer length, as the transport sends it), or None if it was refused before it ran or is held.
async fn run(ctx: &mut QueueCtx, sqe: &SubmissionEntry, incapsule: &[u8]) -> Option<Response> {
    let incapsule = &incapsule[..incapsule.len().min(ctx.max_incapsule)];
    let pending = ctx.auth_pending;
    let req = cmd::parse(ctx, sqe);
    if let (true, Ok(r)) = (pending, &req) {
        // The gate: a queue yet to authenticate runs nothing but these.
        assert!(
            matches!(r.exec, Exec::Connect | Exec::Disconnect | Exec::AuthSend | Exec::AuthReceive),
            "a queue yet to authenticate let opcode {:#04x} (fctype {:#04x}) through",
            sqe.opcode,
            sqe.fctype()
        );
    }
    if let Ok(r) = &req {
        // Namespace 2's ANA group is inaccessible through the port: no command may reach it.
        let reaches_ns2 = match &r.exec {
            Exec::Read { ns, .. }
            | Exec::Write { ns, .. }
            | Exec::WriteZeroes { ns, .. }
            | Exec::DatasetManagement { ns, .. } => ns.nsid == 2,
            Exec::Flush { ns } => ns.iter().any(|n| n.nsid == 2),
            _ => false,
        };
        assert!(!reaches_ns2, "opcode {:#04x} reached a namespace of an inaccessible ANA group", sqe.opcode);
    }
    let req = req.ok()?;
    if req.len == 0 && !incapsule.is_empty() {
        return None; // SGL Length Invalid
    }
    if req.len > 0 && cmd::check_sgl(sqe, req.len, req.dir, incapsule.len()).is_err() {
        return None;
    }
    let data = if req.dir == DataDir::ToController && req.len > 0 && incapsule.is_empty() {
        // R2T + H2CData: the transport collects exactly req.len bytes.
        Bytes::from((0..req.len).map(|i| (i * 7) as u8).collect::<Vec<u8>>())
    } else {
        Bytes::copy_from_slice(incapsule)
    };
    if matches!(req.exec, Exec::Connect) {
        return Some(cmd::fabrics::connect(ctx, &req, &data).await);
    }
    let len = if req.dir == DataDir::ToHost { req.len } else { 0 };
    let mut r = match cmd::execute(ctx, req, data) {
        Outcome::Done(r) => r,
        Outcome::Later(work) => {
            let (tx, rx) = std::sync::mpsc::channel();
            work.run(move |r| {
                let _ = tx.send(r);
            });
            rx.recv().ok()?
        }
        Outcome::Held => return None,
    };
    if r.status.is_success() && r.data.len() != len {
        let mut b = vec![0u8; len];
        let n = r.data.len().min(len);
        b[..n].copy_from_slice(&r.data[..n]);
        r.data = b.into();
    }
    Some(r)
}

/// The host's side of the DH-HMAC-CHAP exchange on one queue, as the input plays it.
struct Auth {
    host: &'static HostDef,
    /// The other host's key: a wrong one.
    wrong: &'static HostDef,
    subnqn: &'static str,
    /// T_ID of the last Negotiate sent.
    tid: u16,
    /// The hash IDs it offered.
    offered: Vec<u8>,
    /// The DH group IDs it offered.
    groups: Vec<u8>,
    /// With an FFDHE group, the shared secret of the last Reply sent with our own DH value.
    shared: Option<Vec<u8>>,
    /// The shared secret the Reply being run carries (it counts once the target has taken it).
    reply_shared: Option<Vec<u8>>,
    /// The last Challenge received.
    ch: Option<DhchapChallenge>,
    /// Since it: a Reply went out with the right R1 for it (the only way in).
    good: bool,
    /// C2 and S2 of the last Reply sent.
    c2: Option<C2>,
    /// The queue must authenticate (not on the discovery subsystem).
    required: bool,
    /// The Reply the operation being run carries: whether its R1 is the right one, its C2 and S2 (they count
    /// once the target has taken it).
    reply: Option<(bool, Option<C2>)>,
}

/// A host's challenge C2 and its sequence number S2.
type C2 = (Vec<u8>, u32);

/// What an operation sent, for the checks after it.
enum Sent {
    Receive,
    Failure2,
    Other,
}

impl Auth {
    fn send_sqe(len: usize) -> SubmissionEntry {
        let mut sqe = AuthCommand::new(true, len as u32).to_sqe();
        sqe.dptr = SglDescriptor::incapsule(len as u32);
        sqe
    }

    /// `msg`, or (input's choice) a prefix of it.
    fn cut(inp: &mut Input, mut msg: Vec<u8>, cut: bool) -> Option<Vec<u8>> {
        if cut {
            let n = inp.byte()? as usize % msg.len().max(1);
            msg.truncate(n);
        }
        Some(msg)
    }

    fn bytes(inp: &mut Input, n: usize) -> Vec<u8> {
        let n = n.min(inp.0.len());
        let (b, rest) = inp.0.split_at(n);
        inp.0 = rest;
        b.to_vec()
    }

    /// The next operation: the command and its data, and what it was.
    fn op(&mut self, inp: &mut Input) -> Option<(SubmissionEntry, Vec<u8>, Sent)> {
        self.reply = None;
        let op = inp.byte()? % 8;
        let f = inp.byte()?;
        let msg = match op {
            // AUTH_Negotiate, with an offer of any hashes and DH groups.
            0 => {
                let t_id = if f & 1 != 0 { inp.u16()? } else { self.tid };
                let hash_ids = match (f >> 1) & 7 {
                    0 => vec![1, 2, 3],
                    1 => vec![3, 2, 1],
                    2 => vec![1],
                    3 => vec![2],
                    4 => vec![3],
                    5 => vec![],
                    6 => vec![0, 4, 0xFF, 2],
                    _ => {
                        let n = inp.byte()? as usize % 32;
                        Self::bytes(inp, n)
                    }
                };
                let dh_group_ids = match (f >> 4) & 3 {
                    0 => vec![0],
                    1 => vec![0, 1, 2, 3, 4, 5],
                    2 => vec![1, 2, 3, 4, 5],
                    _ => {
                        let n = inp.byte()? as usize % 32;
                        Self::bytes(inp, n)
                    }
                };
                let (sc_c, napd, authid) =
                    if f & 0x40 != 0 { (inp.byte()?, inp.byte()?, inp.byte()?) } else { (0, 1, a::AUTH_ID_DHCHAP) };
                let n = AuthNegotiate { t_id, sc_c, napd, authid, hash_ids, dh_group_ids };
                Self::cut(inp, n.to_bytes(), f & 0x80 != 0)?
            }
            // Authentication Receive, of 4096 bytes or any allocation length.
            1 => {
                let al = match f & 3 {
                    0 | 1 => 4096,
                    2 => inp.byte()? as u32,
                    _ => inp.u16()? as u32,
                };
                return Some((AuthCommand::new(false, al).to_sqe(), Vec::new(), Sent::Receive));
            }
            // DH-HMAC-CHAP_Reply: R1 for the last Challenge (or a made-up one), with the right key or not, for
            // its T_ID or not, with C2 and S2 or not, R1 changed or of another hash, a DH value.
            2 => {
                let has_ch = self.ch.is_some();
                let ch = self.ch.clone().unwrap_or(DhchapChallenge {
                    t_id: self.tid,
                    hash: HashId::Sha256,
                    dh_group: 0,
                    seqnum: 1,
                    challenge: vec![0; 32],
                    dh_value: Vec::new(),
                });
                let right_key = f & 1 == 0;
                let key = if right_key { &self.host.key } else { &self.wrong.key }.transform(self.host.nqn);
                let t_id = if f & 2 == 0 { ch.t_id } else { inp.u16()? };
                let other_hash = f & 0x20 != 0;
                let hash = if other_hash { HashId::ALL[ch.hash.id() as usize % 3] } else { ch.hash };
                // With an FFDHE group: our value g^y, the shared secret from the controller's, R1 over the augmented
                // challenge (a value the Challenge's group refuses leaves the Reply one the target must refuse).
                let y = [0x24u8; ffdhe::PRIVATE_LEN];
                let dh = ffdhe::group(ch.dh_group)
                    .and_then(|g| Some((g.public_value(&y), g.shared_secret(&y, &ch.dh_value).ok()?)));
                let c1 = ffdhe::response_challenge(hash, dh.as_ref().map(|(_, z)| &z[..]), &ch.challenge);
                let mut r1 = a::host_response(hash, &key, &c1, ch.seqnum, t_id, self.host.nqn, self.subnqn);
                let tampered = f & 0x10 != 0;
                if tampered {
                    let at = inp.byte()? as usize;
                    r1[at % hash.len()] ^= 1 << (at % 8);
                }
                let c2: Vec<u8> = (0..hash.len()).map(|i| (i as u8).wrapping_mul(13) ^ f).collect();
                let (seqnum, challenge) = match (f >> 2) & 3 {
                    0 => (0, None),
                    1 => (inp.u32()? | 1, Some(c2)),
                    2 => (0, Some(c2)),
                    _ => (inp.u32()? | 1, None),
                };
                let made_up = f & 0x40 != 0;
                let dh_value = if made_up {
                    let n = inp.byte()? as usize % 64;
                    Self::bytes(inp, n)
                } else {
                    dh.as_ref().map_or(Vec::new(), |(v, _)| v.clone())
                };
                // A made-up value spoils the Reply unless it is the one a good Reply carries (none, with NULL).
                let value_ok = dh_value == dh.as_ref().map_or(Vec::new(), |(v, _)| v.clone());
                let good = has_ch && right_key && t_id == ch.t_id && !tampered && !other_hash && value_ok;
                self.reply_shared = dh.map(|(_, z)| z);
                self.reply = Some((good, challenge.clone().map(|c| (c, seqnum))));
                let r = DhchapReply { t_id, seqnum, response: r1, challenge, dh_value };
                Self::cut(inp, r.to_bytes(), f & 0x80 != 0)?
            }
            // DH-HMAC-CHAP_Success2.
            3 => {
                let t_id = if f & 1 == 0 { self.ch.as_ref().map_or(self.tid, |c| c.t_id) } else { inp.u16()? };
                Self::cut(inp, DhchapSuccess2 { t_id }.to_bytes(), f & 2 != 0)?
            }
            // AUTH_Failure2 (or a Failure1, which a host never sends).
            4 => {
                let t_id = if f & 1 == 0 { self.tid } else { inp.u16()? };
                let failure1 = f & 2 != 0;
                let fl =
                    DhchapFailure { t_id, failure1, reason: a::REASON_AUTHENTICATION_FAILURE, explanation: f >> 4 };
                let msg = Self::cut(inp, fl.to_bytes(), f & 4 != 0)?;
                let sent = if !failure1 && msg.len() >= 6 { Sent::Failure2 } else { Sent::Other };
                return Some((Self::send_sqe(msg.len()), msg, sent));
            }
            // Any message: a header of any type (or none), then any bytes.
            5 => {
                let (ty, id) = match f & 7 {
                    0 => (0, 0),
                    1 => (1, 1),
                    2 => (1, 2),
                    3 => (1, 3),
                    4 => (1, 4),
                    5 => (0, 0xF0),
                    6 => (0, 0xF1),
                    _ => (inp.byte()?, inp.byte()?),
                };
                let t_id = if f & 8 == 0 { self.tid } else { inp.u16()? };
                let n = inp.byte()? as usize;
                let rest = Self::bytes(inp, n);
                let mut msg = if f & 0x10 == 0 { vec![ty, id, 0, 0] } else { Vec::new() };
                if f & 0x10 == 0 {
                    msg.extend_from_slice(&t_id.to_le_bytes());
                }
                msg.extend_from_slice(&rest);
                let sent = if (ty, id) == (0, 0xF0) && f & 0x10 == 0 { Sent::Failure2 } else { Sent::Other };
                return Some((Self::send_sqe(msg.len()), msg, sent));
            }
            // Any command, as in the other mode: [len: u16 LE][SQE: 64 bytes][data].
            6 => {
                let len = u16::from_le_bytes([f, inp.byte()?]) as usize;
                let sqe = SubmissionEntry::from_slice(inp.0.get(..64)?)?;
                inp.0 = &inp.0[64..];
                let data = Self::bytes(inp, len);
                return Some((sqe, data, Sent::Other));
            }
            // A command the gate must refuse until the queue has authenticated.
            _ => {
                let sqe = match f % 4 {
                    0 => SubmissionEntry::new(holdfast_proto::opcode::admin::KEEP_ALIVE, 0),
                    1 => {
                        let mut s = SubmissionEntry::new(holdfast_proto::opcode::admin::IDENTIFY, 0);
                        s.dptr = SglDescriptor::transport(4096);
                        s.cdw10.set(1);
                        s
                    }
                    2 => {
                        let p = holdfast_proto::fabrics::PropertyCommand::new(
                            0,
                            holdfast_proto::fabrics::property::CC,
                            false,
                            None,
                        );
                        p.to_sqe()
                    }
                    _ => {
                        let mut s = SubmissionEntry::new(holdfast_proto::opcode::io::READ, 0);
                        s.nsid.set(1);
                        holdfast_proto::sqe::rw::set(&mut s, 0, 1, 0);
                        s.dptr = SglDescriptor::transport(512);
                        s
                    }
                };
                return Some((sqe, Vec::new(), Sent::Other));
            }
        };
        Some((Self::send_sqe(msg.len()), msg, Sent::Other))
    }

    /// An Authentication Send that ran, with data `msg`: a Negotiate the target takes (built here or by the
    /// input) starts a transaction.
    fn observe(&mut self, sqe: &SubmissionEntry, msg: &[u8]) {
        if let Some((good, c2)) = self.reply.take() {
            self.good |= good;
            self.c2 = c2;
            self.shared = self.reply_shared.take();
        }
        let send =
            sqe.opcode == holdfast_proto::opcode::FABRICS && sqe.fctype() == holdfast_proto::opcode::fctype::AUTH_SEND;
        if let (true, Some(h)) = (send, MessageHeader::peek(msg)) {
            if (h.auth_type, h.auth_id) == (a::auth_type::COMMON, a::message::NEGOTIATE) {
                if let Ok(n) = AuthNegotiate::parse(msg) {
                    self.tid = n.t_id;
                    self.offered = n.hash_ids;
                    self.groups = n.dh_group_ids;
                }
            }
        }
    }

    /// The checks after an operation that ran on `ctx` (`was_pending`: `auth_pending` before it).
    fn check(&mut self, ctx: &QueueCtx, was_pending: bool, sent: Sent, resp: Option<Response>) {
        if was_pending && !ctx.auth_pending {
            assert!(self.good, "the queue was let in without a Reply with the right R1 for the last Challenge");
        }
        if !self.required {
            assert!(ctx.auth.is_none() && !ctx.auth_pending);
            return;
        }
        match sent {
            Sent::Failure2 => {
                assert!(ctx.auth_pending && ctx.close_after_response, "a Failure2 left the queue open or let in");
            }
            Sent::Receive => {
                let Some(r) = resp.filter(|r| r.status.is_success()) else { return };
                let d = &r.data[..];
                let Some(h) = MessageHeader::peek(d) else { return };
                match (h.auth_type, h.auth_id) {
                    (a::auth_type::COMMON, a::message::FAILURE1) => {
                        assert!(
                            ctx.auth_pending && ctx.close_after_response,
                            "a Failure1 sent left the queue open or let in"
                        );
                    }
                    (a::auth_type::DHCHAP, a::message::CHALLENGE) => {
                        let ch = DhchapChallenge::parse(d).expect("a well-formed Challenge");
                        assert_eq!(ch.t_id, self.tid, "a Challenge for another transaction");
                        assert!(self.offered.contains(&ch.hash.id()), "a Challenge with a hash not offered");
                        // The configured (default) NULL group when offered, else the first FFDHE group offered.
                        let want = if self.groups.contains(&a::dh_group::NULL) {
                            a::dh_group::NULL
                        } else {
                            *self
                                .groups
                                .iter()
                                .find(|&&g| ffdhe::group(g).is_some())
                                .expect("a Challenge without a group offered")
                        };
                        let len = ffdhe::group(want).map_or(0, |g| g.len);
                        assert_eq!((ch.dh_group, ch.dh_value.len()), (want, len));
                        self.ch = Some(ch);
                        self.good = false;
                    }
                    (a::auth_type::DHCHAP, a::message::SUCCESS1) => {
                        let s1 = DhchapSuccess1::parse(d).expect("a well-formed Success1");
                        let ch = self.ch.as_ref().expect("a Success1 before any Challenge");
                        assert_eq!((s1.t_id, s1.hl as usize), (ch.t_id, ch.hash.len()));
                        assert!(self.good, "a Success1 without a Reply with the right R1");
                        if let Some(r2) = &s1.response {
                            let (c2, s2) = self.c2.as_ref().expect("R2 without a C2");
                            let kc = self.host.ctrl_key.as_ref().expect("R2 without a controller key");
                            let kc = kc.transform(self.subnqn);
                            assert!(
                                a::verify_controller_response(
                                    ch.hash,
                                    &kc,
                                    &ffdhe::response_challenge(ch.hash, self.shared.as_deref(), c2),
                                    *s2,
                                    ch.t_id,
                                    self.subnqn,
                                    self.host.nqn,
                                    r2
                                ),
                                "R2 does not verify"
                            );
                        } else if let Some((_, s2)) = &self.c2 {
                            assert!(*s2 == 0, "the host challenged the controller and got no R2");
                        }
                    }
                    (ty, id) => panic!("Authentication Receive returned message {ty:#04x}/{id:#04x}"),
                }
            }
            Sent::Other => {}
        }
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, mut rest)) = input.split_first() else { return };
    let w = world();
    w.rt.block_on(async {
        let discovery = mode & 2 != 0;
        let auth = mode & 8 != 0;
        let (host, wrong) = if mode & 0x10 == 0 { (&hosts()[0], &hosts()[1]) } else { (&hosts()[1], &hosts()[0]) };
        let subnqn = match (discovery, auth) {
            (true, _) => DISCOVERY_NQN,
            (false, true) => AUTH_NQN,
            (false, false) => NQN,
        };
        let hostnqn = if auth { host.nqn } else { HOSTNQN };
        let mut admin = queue_ctx(&w.target, ADMIN_INCAPSULE);
        connect(&mut admin, subnqn, hostnqn, 0, 0xFFFF).await;
        let Some(ctrl) = admin.ctrl.clone() else { panic!("admin Connect failed") };
        if mode & 4 == 0 {
            let _ = ctrl.write_cc(cc::ENABLE_DEFAULT);
        }
        let mut io = None;
        if mode & 1 != 0 && !discovery && mode & 4 == 0 {
            ctrl.state.lock().io_queues_granted = 1; // as Set Features Number of Queues would
            let mut q = queue_ctx(&w.target, IO_INCAPSULE);
            connect(&mut q, subnqn, hostnqn, 1, ctrl.cntlid).await;
            assert!(q.ctrl.is_some(), "I/O queue Connect failed");
            io = Some(q);
        }
        if auth {
            let ctx = io.as_mut().unwrap_or(&mut admin);
            assert_eq!(ctx.auth_pending, !discovery, "a listed host with keys must authenticate");
            let mut st = Auth {
                host,
                wrong,
                subnqn,
                tid: 1,
                offered: Vec::new(),
                groups: Vec::new(),
                shared: None,
                reply_shared: None,
                ch: None,
                good: false,
                c2: None,
                required: !discovery,
                reply: None,
            };
            let mut inp = Input(rest);
            for _ in 0..24 {
                let Some((sqe, data, sent)) = st.op(&mut inp) else { break };
                let was_pending = ctx.auth_pending;
                let resp = run(ctx, &sqe, &data).await;
                if std::env::var_os("COMMAND_DISPATCH_DEBUG").is_some() {
                    let what = resp.as_ref().map(|r| (r.status, r.data.get(..2).map(<[u8]>::to_vec)));
                    eprintln!(
                        "opcode {:#04x}/{:#04x}, {} bytes {:02x?}: {what:?}; auth_pending {}",
                        sqe.opcode,
                        sqe.fctype(),
                        data.len(),
                        &data[..data.len().min(2)],
                        ctx.auth_pending
                    );
                }
                if resp.is_some() {
                    st.observe(&sqe, &data);
                }
                st.check(ctx, was_pending, sent, resp);
                if ctx.close_after_response {
                    break; // the transport closes the queue
                }
            }
            rest = &[];
        }
        for _ in 0..8 {
            if rest.len() < 66 {
                break;
            }
            let len = u16::from_le_bytes([rest[0], rest[1]]) as usize;
            let sqe = SubmissionEntry::from_slice(&rest[2..66]).unwrap();
            rest = &rest[66..];
            let n = len.min(rest.len());
            let (data, tail) = rest.split_at(n);
            rest = tail;
            let ctx = io.as_mut().unwrap_or(&mut admin);
            if let (Some(c), true) = (&ctx.ctrl, ctx.qid != 0) {
                // The hint the transport gives for a batch just received (of two: one alone is not
                // prefetched), whatever the SQE says.
                cmd::io::prefetch(c, std::iter::repeat_n(&sqe, 2));
            }
            let _ = run(ctx, &sqe, data).await;
        }
        if let Some(q) = &io {
            if let Some(c) = &q.ctrl {
                c.teardown("fuzz iteration done");
            }
        }
        ctrl.teardown("fuzz iteration done");
        // Let the runtime run what this iteration spawned (the controller's keep-alive watchdog, cancelled by the
        // teardown): `block_on` returns at the first poll that completes, and a task never polled stays queued
        // for good, holding its controller (4-6 KB more per run, and libFuzzer's leak checks given up).
        tokio::task::yield_now().await;
    });
});
