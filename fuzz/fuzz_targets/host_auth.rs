//! Fuzz the host's side of DH-HMAC-CHAP (`holdfast_host`'s `auth`, reached through `Controller::connect` with
//! `dhchap_secret`, and `dhchap_ctrl_secret` for bidirectional authentication) against a hostile controller: a
//! fake on the far end of loopback TCP answers the ICReq and the Connect (AUTHREQ as the input says), then
//! every Authentication Send with success, an error status or a closed connection, and every Authentication
//! Receive with what the input chooses: the right Challenge or Success1 (the fake holds the controller key and
//! computes R2 from the host's C2), with the NULL DH group or ffdhe2048 (the fake's value g^x, and the
//! augmented challenges), one with a field changed (T_ID, hash, HL, DH group, DH value, RVALID, R2, cut short,
//! another message), a Failure1 with any explanation, any bytes, an error status, or a closed
//! connection. The first command after the exchange ends the connection. Never a panic or a hang
//! (`connect` returns within 20 s; the host never leaves the fake waiting 5 s), and:
//!
//! - every message the host sends parses: its Negotiate offers SHA-256/384/512 and the NULL group then
//!   ffdhe2048 ... ffdhe8192, no secure channel; its Reply has the T_ID, HL of the Challenge's hash, with an
//!   FFDHE group a DH value of the group's length in range, an R1 that verifies under the host key (over the
//!   augmented challenge with an FFDHE group), and a C2 with a non-zero S2 exactly when bidirectional; a
//!   Failure2 has the T_ID;
//! - the host answers a Challenge with a Reply only if the Challenge is acceptable (as the spec and
//!   `holdfast_proto::auth` read it), sends Success2 only for a Success1 whose R2 verifies, sends a Failure2
//!   only for a message it may refuse, and sends anything other than authentication commands on the queue
//!   only once the exchange has succeeded (Success1, and Success2 when bidirectional).
//!
//! Input: byte 0: bit 0 bidirectional (a controller secret), bit 1 host key transformation 01 (else 00), bits
//! 2-3 the Connect's AUTHREQ (0-1 ATR, 2 ATR and ASCR, 3 none); then the fake's script: one byte per
//! Authentication Send (`% 8`: 0-5 success, 6 an error status, 7 close), and for each Authentication Receive a
//! byte and its operands (see `Fake::receive`). At the end of the input the fake closes the connection.
#![no_main]
use bytes::{Bytes, BytesMut};
use holdfast_host::ConnectOptions;
use holdfast_proto::auth::{
    self as a, explanation, ffdhe, AuthNegotiate, DhchapChallenge, DhchapFailure, DhchapReply, DhchapSecret,
    DhchapSuccess1, HashId, MessageHeader,
};
use holdfast_proto::decoder::{Limits, PduDecoder, Role};
use holdfast_proto::opcode::{fctype, FABRICS};
use holdfast_proto::pdu::{C2HData, CapsuleResp, Framing, IcResp, Pdu};
use holdfast_proto::{CompletionEntry, Status};
use libfuzzer_sys::fuzz_target;
use std::sync::OnceLock;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

const SUBNQN: &str = "nqn.2026-01.io.holdfast:fuzz-host-auth";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-00000000f0a7";

#[allow(dead_code)]
#[path = "../common/input.rs"]
mod input;
use input::Input;

struct World {
    rt: tokio::runtime::Runtime,
    /// The fake's listener, one for every run.
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

/// The fake controller's private exponent x, for ffdhe2048.
const FAKE_X: [u8; ffdhe::PRIVATE_LEN] = [0x33; ffdhe::PRIVATE_LEN];

/// The fake's ffdhe2048 value g^x, computed once.
fn fake_value() -> &'static [u8] {
    static V: OnceLock<Vec<u8>> = OnceLock::new();
    V.get_or_init(|| ffdhe::group(0x01).unwrap().public_value(&FAKE_X))
}

/// Would the host take `msg` as the Challenge of transaction `tid` (after an offer of every hash and group)? As
/// NVMe Base 2.0 §8.13.5.x and the proto layouts read it: a DH-HMAC-CHAP_Challenge of that T_ID, of a known
/// hash with HL its length, and either the NULL DH group without a DH value or an FFDHE group with a value of
/// at most its length in 2..=p-2.
fn acceptable_challenge(msg: &[u8], tid: u16) -> Option<DhchapChallenge> {
    let h = MessageHeader::peek(msg)?;
    if (h.auth_type, h.auth_id, h.t_id.get()) != (a::auth_type::DHCHAP, a::message::CHALLENGE, tid) {
        return None;
    }
    let c = DhchapChallenge::parse(msg)?;
    let ok = match (c.dh_group, ffdhe::group(c.dh_group)) {
        (a::dh_group::NULL, _) => c.dh_value.is_empty(),
        (_, Some(g)) => g.shared_secret(&FAKE_X, &c.dh_value).is_ok(),
        (_, None) => false,
    };
    ok.then_some(c)
}

/// The challenge a response is computed over: `c` with the NULL group, else HMAC(H(Z), c).
fn effective(ch: &DhchapChallenge, shared: &Option<Vec<u8>>, c: &[u8]) -> Vec<u8> {
    ffdhe::response_challenge(ch.hash, shared.as_deref(), c)
}

/// Would the host take `msg` as the Success1 of transaction `tid` after Challenge `ch`? Of that T_ID, HL the
/// hash's; when the host challenged the controller (`c2`: C2, S2, the controller key), an R2 that verifies.
fn acceptable_success1(msg: &[u8], tid: u16, ch: &DhchapChallenge, c2: Option<(&[u8], u32, &[u8])>) -> bool {
    let Some(h) = MessageHeader::peek(msg) else { return false };
    if (h.auth_type, h.auth_id, h.t_id.get()) != (a::auth_type::DHCHAP, a::message::SUCCESS1, tid) {
        return false;
    }
    let Some(s1) = DhchapSuccess1::parse(msg) else { return false };
    if s1.hl as usize != ch.hash.len() {
        return false;
    }
    match c2 {
        None => true,
        Some((c2, s2, kc)) => {
            s1.response.is_some_and(|r2| a::verify_controller_response(ch.hash, kc, c2, s2, tid, SUBNQN, HOSTNQN, &r2))
        }
    }
}

/// What the fake has seen and sent, across the connections of one `connect`.
struct Fake<'a> {
    inp: Input<'a>,
    bidi: bool,
    host_key: Vec<u8>,
    ctrl_key: Vec<u8>,
    authreq: u32,
}

/// One connection's exchange.
#[derive(Default)]
struct Conn {
    tid: Option<u16>,
    /// With an FFDHE group: the shared secret from the host's value in its Reply.
    shared: Option<Vec<u8>>,
    /// The Challenge's DH value is the fake's own g^x (or the group is NULL): the fake can compute the shared
    /// secret, and so check R1 and answer with an R2 the host must take. A value the input made up is taken by
    /// the host when in range, but nobody here knows its exponent.
    zknown: bool,
    /// The Challenge sent, if the host may take it.
    ch: Option<DhchapChallenge>,
    /// A Challenge (acceptable or not) went out.
    ch_sent: bool,
    /// The last message the fake sent is one the host must take.
    last_ok: bool,
    /// C2 and S2 of the host's Reply.
    c2: Option<(Vec<u8>, u32)>,
    /// A Success1 the host must take went out.
    s1_ok: bool,
    /// The host sent Success2.
    success2: bool,
}

struct Link {
    s: TcpStream,
    dec: PduDecoder,
    buf: BytesMut,
}

impl Link {
    /// The host's next PDU; None once it has closed.
    async fn next(&mut self) -> Option<Pdu> {
        loop {
            match self.dec.decode(&mut self.buf) {
                Ok(Some(p)) => return Some(p),
                Ok(None) => {}
                Err(e) => panic!("the host sent a malformed PDU: {e}"),
            }
            self.buf.reserve(16 * 1024);
            let r = tokio::time::timeout(Duration::from_secs(5), self.s.read_buf(&mut self.buf)).await;
            match r.expect("the host left the controller waiting 5 s (neither a command nor a close)") {
                Ok(0) | Err(_) => return None,
                Ok(_) => {}
            }
        }
    }

    async fn send(&mut self, p: Pdu) -> bool {
        self.s.write_all(&p.to_bytes(&Framing::default())).await.is_ok()
    }

    async fn resp(&mut self, cid: u16, status: Status, dw0: u32) -> bool {
        self.send(Pdu::CapsuleResp(CapsuleResp { cqe: CompletionEntry::new(cid, status, dw0) })).await
    }
}

fn status(b: u8) -> Status {
    match b % 3 {
        0 => Status::INVALID_FIELD.with_dnr(),
        1 => Status::AUTHENTICATION_REQUIRED.with_dnr(),
        _ => Status::from_cqe_word(0x0006 << 1), // Internal Error
    }
}

impl Fake<'_> {
    /// Serve one connection of the host; false once the input is used up (the fake takes no more).
    async fn serve(&mut self, s: TcpStream) -> bool {
        let _ = s.set_nodelay(true);
        // Closed with a reset: no TIME_WAIT connection left behind by each run.
        #[allow(deprecated)]
        let _ = s.set_linger(Some(Duration::ZERO));
        if self.inp.0.is_empty() {
            return false;
        }
        let limits = Limits { max_incapsule: 8192, max_h2c_data: 128 * 1024, max_c2h_data: 0 };
        let mut l = Link { s, dec: PduDecoder::new(Role::Controller, limits), buf: BytesMut::new() };
        match l.next().await {
            Some(Pdu::IcReq(_)) => {}
            _ => return true,
        }
        let ic = IcResp { pfv: 0, cpda: 0, hdgst: false, ddgst: false, maxh2cdata: 128 * 1024 };
        if !l.send(Pdu::IcResp(ic)).await {
            return true;
        }
        l.dec.set_negotiated(false, false, 0);
        let mut c = Conn::default();
        let mut connected = false;
        while let Some(p) = l.next().await {
            let Pdu::CapsuleCmd(cmd) = p else {
                if matches!(p, Pdu::H2CTermReq(_)) {
                    return true;
                }
                panic!("the host sent a {:?} PDU", p.pdu_type());
            };
            let (sqe, data) = (cmd.sqe, cmd.data);
            let cid = sqe.cid.get();
            let fabrics = if sqe.opcode == FABRICS { Some(sqe.fctype()) } else { None };
            match fabrics {
                Some(fctype::CONNECT) if !connected => {
                    connected = true;
                    if !l.resp(cid, Status::SUCCESS, 1 | self.authreq).await {
                        return true;
                    }
                }
                Some(fctype::AUTH_SEND) => {
                    assert!(connected && self.authreq & (1 << 17) != 0, "authentication nobody asked for");
                    self.host_message(&mut c, &data);
                    let Some(b) = self.inp.byte() else { return false };
                    let ok = match b % 8 {
                        0..=5 => l.resp(cid, Status::SUCCESS, 0).await,
                        6 => l.resp(cid, status(b >> 3), 0).await,
                        _ => return true,
                    };
                    if !ok {
                        return true;
                    }
                }
                Some(fctype::AUTH_RECEIVE) => {
                    assert!(connected && self.authreq & (1 << 17) != 0, "authentication nobody asked for");
                    let al = sqe.dptr.len() as usize;
                    match self.receive(&mut c, al) {
                        None => return !self.inp.0.is_empty(),
                        Some(Err(st)) => {
                            if !l.resp(cid, st, 0).await {
                                return true;
                            }
                        }
                        Some(Ok(msg)) => {
                            let msg = Bytes::from(msg);
                            if !msg.is_empty() {
                                let d = C2HData { cccid: cid, datao: 0, data: msg, last: true, success: false };
                                if !l.send(Pdu::C2HData(d)).await {
                                    return true;
                                }
                            }
                            if !l.resp(cid, Status::SUCCESS, 0).await {
                                return true;
                            }
                        }
                    }
                }
                _ => {
                    // Anything else: the host thinks the queue is set up. It must have authenticated.
                    assert!(connected, "a command before Connect");
                    if self.authreq & (3 << 17) == 1 << 17 {
                        assert!(c.s1_ok, "the host went on without a Success1 it may take");
                        assert!(!self.bidi || c.success2, "the host went on without authenticating the controller");
                    }
                    return true;
                }
            }
        }
        true
    }

    /// Check a message the host sent.
    fn host_message(&mut self, c: &mut Conn, msg: &[u8]) {
        let h = MessageHeader::peek(msg).expect("a host message of fewer than 6 bytes");
        match (h.auth_type, h.auth_id) {
            (a::auth_type::COMMON, a::message::NEGOTIATE) => {
                assert!(c.tid.is_none(), "a second Negotiate on one connection");
                let n = AuthNegotiate::parse(msg).expect("a well-formed Negotiate");
                assert_eq!((n.sc_c, n.napd, n.authid), (a::sc_c::NOSC, 1, a::AUTH_ID_DHCHAP));
                assert_eq!(n.hash_ids, [1, 2, 3], "the host offers every hash");
                assert_eq!(n.dh_group_ids, [0, 1, 2, 3, 4, 5], "the host offers NULL, then every FFDHE group");
                c.tid = Some(n.t_id);
            }
            (a::auth_type::DHCHAP, a::message::REPLY) => {
                let ch = c.ch.as_ref().expect("a Reply to a Challenge the host should have refused");
                assert!(c.last_ok, "a Reply after a message the host should have refused");
                let tid = c.tid.expect("a Reply before Negotiate");
                let r = DhchapReply::parse(msg).expect("a well-formed Reply");
                assert_eq!((r.t_id, r.response.len()), (tid, ch.hash.len()));
                c.shared = match ffdhe::group(ch.dh_group) {
                    None => {
                        assert!(r.dh_value.is_empty(), "a DH value with the NULL group");
                        None
                    }
                    Some(g) => {
                        assert_eq!(r.dh_value.len(), g.len, "the host's DH value has the group's length");
                        Some(g.shared_secret(&FAKE_X, &r.dh_value).expect("the host's DH value is in range"))
                    }
                };
                assert!(
                    !c.zknown
                        || a::verify_host_response(
                            ch.hash,
                            &self.host_key,
                            &effective(ch, &c.shared, &ch.challenge),
                            ch.seqnum,
                            tid,
                            HOSTNQN,
                            SUBNQN,
                            &r.response
                        ),
                    "R1 does not verify"
                );
                assert_eq!(r.challenge.is_some(), self.bidi, "C2 exactly when bidirectional");
                assert_eq!(r.seqnum != 0, self.bidi, "S2 non-zero exactly when bidirectional");
                c.c2 = r.challenge.map(|c2| (c2, r.seqnum));
                c.last_ok = false;
            }
            (a::auth_type::DHCHAP, a::message::SUCCESS2) => {
                assert!(self.bidi && c.s1_ok && c.last_ok, "Success2 without a Success1 with a good R2");
                assert_eq!(Some(h.t_id.get()), c.tid);
                c.success2 = true;
            }
            (a::auth_type::COMMON, a::message::FAILURE2) => {
                let f = DhchapFailure::parse(msg).expect("a well-formed Failure2");
                assert!(!f.failure1);
                assert_eq!(Some(f.t_id), c.tid);
                assert!(!c.last_ok, "a Failure2 for a message the host should have taken");
                assert!(f.explanation != 0);
            }
            (t, i) => panic!("the host sent message {t:#04x}/{i:#04x}"),
        }
    }

    /// The fake's answer to an Authentication Receive of `al` bytes: a message, an error status, or None (close
    /// the connection).
    fn receive(&mut self, c: &mut Conn, al: usize) -> Option<Result<Vec<u8>, Status>> {
        assert_eq!(al, 4096, "the host receives with an allocation length of 4096");
        let tid = c.tid.expect("a Receive before Negotiate");
        let b = self.inp.byte()?;
        let first = !c.ch_sent;
        c.last_ok = false;
        let msg = match b % 8 {
            // The right message for the step (with a mutation: 3).
            0..=3 if first => {
                let hash = HashId::ALL[(b >> 3) as usize % 3];
                let dh = b >> 6 == 1; // ffdhe2048, else NULL
                let seqnum = self.inp.u32()?;
                let ch = DhchapChallenge {
                    t_id: tid,
                    hash,
                    dh_group: if dh { 0x01 } else { a::dh_group::NULL },
                    seqnum,
                    challenge: (0..hash.len()).map(|i| (i as u8).wrapping_mul(7) ^ b).collect(),
                    dh_value: if dh { fake_value().to_vec() } else { Vec::new() },
                };
                let mut m = ch.to_bytes();
                if b % 8 == 3 {
                    let x = self.inp.byte()?;
                    match self.inp.byte()? % 7 {
                        0 => m[4] ^= x | 1,                          // T_ID
                        1 => m[8] = [0, 4, 0xFF, x][x as usize % 4], // HASHID
                        2 => m[6] = x,                               // HL
                        // DHGID: another group for the fake's value would be one whose exponent nobody knows
                        // (`zknown`); the input's own bytes (5) reach that.
                        3 if dh => m[9] = [0, 6, 0xFF][x as usize % 3],
                        3 => m[9] = [1, 2, 5, 6, 0xFF][x as usize % 5],
                        4 if dh => {
                            // A value out of range (p or more, 1, or 0).
                            let at = 16 + hash.len();
                            let v = [0xFF, 0x00][x as usize % 2];
                            m[at..].fill(v);
                            if x % 3 == 0 {
                                *m.last_mut().unwrap() = 1;
                            }
                        }
                        4 => {
                            // A DH value with the NULL group.
                            let n = 1 + x as usize % 64;
                            m[10..12].copy_from_slice(&(n as u16).to_le_bytes());
                            m.extend((0..n).map(|i| i as u8));
                        }
                        5 => m.truncate(x as usize % m.len()),
                        _ => m[1] = a::message::SUCCESS1,
                    }
                }
                m
            }
            0..=3 => {
                let hl = c.ch.as_ref().map_or(32, |ch| ch.hash.len());
                let hash = c.ch.as_ref().map_or(HashId::Sha256, |ch| ch.hash);
                let aug = |c2: &[u8]| c.ch.as_ref().map_or(c2.to_vec(), |ch| effective(ch, &c.shared, c2));
                let response = c
                    .c2
                    .as_ref()
                    .map(|(c2, s2)| a::controller_response(hash, &self.ctrl_key, &aug(c2), *s2, tid, SUBNQN, HOSTNQN));
                let mut m = DhchapSuccess1 { t_id: tid, hl: hl as u8, response }.to_bytes();
                if b % 8 == 3 {
                    let x = self.inp.byte()?;
                    match self.inp.byte()? % 6 {
                        0 => m[4] ^= x | 1, // T_ID
                        1 => m[6] = x,      // HL
                        2 => m[8] = 0,      // RVALID
                        3 => {
                            if m.len() > 16 {
                                let at = 16 + x as usize % (m.len() - 16);
                                m[at] ^= 1 << (x % 8); // R2
                            }
                        }
                        4 => m.truncate(x as usize % m.len()),
                        _ => m[1] = a::message::CHALLENGE,
                    }
                }
                m
            }
            // AUTH_Failure1, of any explanation.
            4 => {
                let e = match self.inp.byte()? {
                    x if x < 0x80 => explanation::DHGROUP_UNUSABLE,
                    x => x & 7,
                };
                let f = DhchapFailure {
                    t_id: tid,
                    failure1: true,
                    reason: a::REASON_AUTHENTICATION_FAILURE,
                    explanation: e,
                };
                return Some(Ok(f.to_bytes()));
            }
            // Any bytes.
            5 => {
                let n = self.inp.byte()? as usize;
                let n = n.min(self.inp.0.len());
                let (m, rest) = self.inp.0.split_at(n);
                self.inp.0 = rest;
                m.to_vec()
            }
            // An error status.
            6 => return Some(Err(status(b >> 3))),
            // The connection closed.
            _ => return None,
        };
        // Whether the host must take it: as its Challenge, or as its Success1.
        if first {
            c.ch_sent = true;
            c.ch = acceptable_challenge(&msg, tid);
            c.last_ok = c.ch.is_some();
            c.zknown = c.ch.as_ref().is_some_and(|ch| {
                ch.dh_group == a::dh_group::NULL || (ch.dh_group == 0x01 && ch.dh_value == fake_value())
            });
        } else {
            let aug_c2 = c.c2.as_ref().zip(c.ch.as_ref()).map(|((c2, _), ch)| effective(ch, &c.shared, c2));
            let c2 =
                c.c2.as_ref()
                    .zip(aug_c2.as_ref())
                    .filter(|_| self.bidi)
                    .map(|((_, s2), a2)| (&a2[..], *s2, &self.ctrl_key[..]));
            // Bidirectional with a shared secret the fake does not know: its R2 cannot be the right one.
            c.s1_ok =
                c.ch.as_ref().is_some_and(|ch| acceptable_success1(&msg, tid, ch, c2)) && (c.zknown || !self.bidi);
            c.last_ok = c.s1_ok;
        }
        Some(Ok(msg))
    }
}

async fn case(input: &[u8]) {
    let mut inp = Input(input);
    let Some(mode) = inp.byte() else { return };
    let bidi = mode & 1 != 0;
    let host_secret = DhchapSecret::new(&[0x44; 32], (mode & 2 != 0).then_some(HashId::Sha256));
    let ctrl_secret = DhchapSecret::new(&[0x55; 48], Some(HashId::Sha384));
    let authreq = match (mode >> 2) & 3 {
        0 | 1 => 1 << 17,
        2 => 3 << 17,
        _ => 0,
    };
    let listener = &world().listener;
    let addr = listener.local_addr().unwrap();
    let mut o = ConnectOptions::new(addr.to_string(), SUBNQN);
    o.hostnqn = HOSTNQN.into();
    o.connect_timeout = Duration::from_secs(2);
    o.dhchap_secret = Some(host_secret.encode());
    o.dhchap_ctrl_secret = bidi.then(|| ctrl_secret.encode());
    let mut fake = Fake {
        inp,
        bidi,
        host_key: host_secret.transform(HOSTNQN).to_vec(),
        ctrl_key: ctrl_secret.transform(SUBNQN).to_vec(),
        authreq,
    };
    let fake_task = async {
        loop {
            let (s, _) = listener.accept().await.unwrap();
            if !fake.serve(s).await {
                // Out of input: refuse whatever comes next at once.
                loop {
                    let (s, _) = listener.accept().await.unwrap();
                    #[allow(deprecated)]
                    let _ = s.set_linger(Some(Duration::ZERO));
                }
            }
        }
    };
    let r = tokio::time::timeout(Duration::from_secs(20), async {
        tokio::select! {
            r = holdfast_host::Controller::connect(o) => r,
            _ = fake_task => unreachable!(),
        }
    })
    .await
    .expect("Controller::connect hung");
    if std::env::var_os("HOST_AUTH_DEBUG").is_some() {
        eprintln!("connect: {:?}", r.as_ref().err());
    }
    assert!(r.is_err(), "connected to a fake that answers nothing but authentication");
}

fuzz_target!(|input: &[u8]| {
    world().rt.block_on(case(input));
});
