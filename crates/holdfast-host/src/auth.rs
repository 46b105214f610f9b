//! In-band authentication, the host's side of DH-HMAC-CHAP (NVMe Base 2.0 §8.13.5, TP 8006; the model is the
//! Linux host, `drivers/nvme/host/auth.c`), with the NULL DH group and the FFDHE groups.
//!
//! A queue whose Connect response sets AUTHREQ ATR runs the exchange before anything else is sent on it:
//! AUTH_Negotiate (Authentication Send: SHA-256/384/512; the NULL group, then ffdhe2048 ... ffdhe8192, as the
//! Linux host offers them; no secure channel), the controller's Challenge (Authentication Receive; with an
//! FFDHE group it carries g^x mod p), the Reply (R1 from the transformed host key, over the augmented
//! challenge with an FFDHE group, and then our own g^y mod p; with a controller secret, a challenge C2 of our
//! own), Success1 (Receive; with a controller secret, R2 checked in
//! constant time), Success2 (Send) when bidirectional. A problem the host finds is answered with AUTH_Failure2
//! (as Linux), a Failure1 from the controller ends the exchange; either fails the queue's set-up.

use crate::controller::setup_ok;
use crate::error::{Error, Result};
use crate::options::ConnectOptions;
use crate::queue::Command;
use crate::submit;
use bytes::Bytes;
use holdfast_proto::auth::{
    self as a, explanation, ffdhe, message, AuthCommand, AuthNegotiate, DhchapChallenge, DhchapFailure, DhchapReply,
    DhchapSecret, DhchapSuccess1, DhchapSuccess2, HashId, MessageHeader, SecretError,
};
use std::sync::atomic::{AtomicU16, AtomicU32, Ordering};
use tokio::time::Instant as TInstant;
use zeroize::Zeroizing;

/// Allocation length of every Authentication Receive (as the Linux host: room for any FFDHE value).
const RECEIVE_LEN: usize = 4096;

/// The secrets of a controller's host, parsed and transformed once at connect. Its `Debug` shows nothing of
/// them.
pub(crate) struct HostSecrets {
    /// Kh': the host key transformed with the host NQN (§8.13.5.8). Wiped from memory when dropped.
    host_key: Zeroizing<Vec<u8>>,
    /// Kc': the controller key transformed with the subsystem NQN, for bidirectional authentication.
    ctrl_key: Option<Zeroizing<Vec<u8>>>,
    /// The next transaction identifier (one per exchange, as the Linux host counts them per controller).
    next_tid: AtomicU16,
}

impl std::fmt::Debug for HostSecrets {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "HostSecrets {{ bidirectional: {} }}", self.ctrl_key.is_some())
    }
}

/// A secret's parse error, for a user: never any part of the secret ([`SecretError`] carries none).
fn secret_error(flag: &str, e: SecretError) -> Error {
    Error::Invalid(format!("{flag}: {e}"))
}

impl HostSecrets {
    /// Whether the controller is to be authenticated too (a controller secret was given).
    pub(crate) fn bidirectional(&self) -> bool {
        self.ctrl_key.is_some()
    }

    /// The options' secrets, checked (None: no `dhchap_secret`, the host does not authenticate).
    pub(crate) fn from_options(o: &ConnectOptions) -> Result<Option<HostSecrets>> {
        let parse = |flag: &str, s: &Option<String>| {
            s.as_deref().map(|s| DhchapSecret::parse(s).map_err(|e| secret_error(flag, e))).transpose()
        };
        let host = parse("--dhchap-secret", &o.dhchap_secret)?;
        let ctrl = parse("--dhchap-ctrl-secret", &o.dhchap_ctrl_secret)?;
        match (host, ctrl) {
            (None, None) => Ok(None),
            (None, Some(_)) => Err(Error::Invalid(
                "--dhchap-ctrl-secret: bidirectional authentication needs the host's own secret too \
                 (--dhchap-secret)"
                    .into(),
            )),
            (Some(h), c) => Ok(Some(HostSecrets {
                host_key: h.transform(&o.hostnqn),
                ctrl_key: c.map(|c| c.transform(&o.subnqn)),
                next_tid: AtomicU16::new(0),
            })),
        }
    }
}

/// S2: one counter for the process, from a random start, never 0 (0 would say no C2 is carried).
fn next_seqnum() -> u32 {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    a::next_seqnum(&SEQ, rand::random::<u32>)
}

/// How an exchange failed.
enum Fail {
    /// The host found a problem: Failure2 with this explanation goes to the controller, then the error.
    Host(u8, String),
    /// The controller ended it (Failure1), or the transport or a command failed: the error alone.
    Done(Error),
}

fn failed(qid: u16, reason: String) -> Error {
    let on = if qid == 0 { String::new() } else { format!(" (I/O queue {qid})") };
    Error::Authentication(format!("{reason}{on}"))
}

/// Run DH-HMAC-CHAP on queue `qid` through its set-up channel `tx`, for `o.hostnqn` on `o.subnqn`.
pub(crate) async fn authenticate(
    tx: &submit::Sender<Command>,
    qid: u16,
    secrets: &HostSecrets,
    o: &ConnectOptions,
    deadline: TInstant,
) -> Result<()> {
    let tid = secrets.next_tid.fetch_add(1, Ordering::Relaxed);
    match exchange(tx, qid, secrets, o, tid, deadline).await {
        Ok((hash, group)) => {
            // As the Linux host: the admin queue's at info, each I/O queue's at debug.
            let (bidirectional, dhgroup) = (secrets.ctrl_key.is_some(), group.map_or("null", |g| g.name));
            if qid == 0 {
                tracing::info!(addr = %o.addr, hash = hash.name(), dhgroup, bidirectional, "DH-HMAC-CHAP: authenticated");
            } else {
                tracing::debug!(qid, hash = hash.name(), dhgroup, bidirectional, "DH-HMAC-CHAP: authenticated");
            }
            Ok(())
        }
        Err(Fail::Done(e)) => Err(e),
        Err(Fail::Host(why, reason)) => {
            let f = DhchapFailure {
                t_id: tid,
                failure1: false,
                reason: a::REASON_AUTHENTICATION_FAILURE,
                explanation: why,
            };
            // Best effort: the exchange has failed either way.
            if let Err(e) = send(tx, &f.to_bytes(), deadline).await {
                tracing::debug!(qid, "AUTH_Failure2 not delivered: {e}");
            }
            Err(failed(qid, reason))
        }
    }
}

async fn send(tx: &submit::Sender<Command>, msg: &[u8], deadline: TInstant) -> Result<()> {
    let sqe = AuthCommand::new(true, msg.len() as u32).to_sqe();
    setup_ok(tx, sqe, Bytes::copy_from_slice(msg), 0, "Authentication Send", deadline).await.map(|_| ())
}

async fn receive(tx: &submit::Sender<Command>, deadline: TInstant) -> Result<Bytes> {
    let sqe = AuthCommand::new(false, RECEIVE_LEN as u32).to_sqe();
    let c = setup_ok(tx, sqe, Bytes::new(), RECEIVE_LEN, "Authentication Receive", deadline).await?;
    Ok(c.data.slice(..c.transferred.min(c.data.len())))
}

/// The controller's next message, `step` of the exchange. A connection closed instead is the refusal `refused`:
/// nvmet ends the association right after its Failure1, which may then never arrive.
async fn receive_step(
    tx: &submit::Sender<Command>,
    qid: u16,
    deadline: TInstant,
    refused: &str,
    step: &str,
) -> std::result::Result<Bytes, Fail> {
    match receive(tx, deadline).await {
        Ok(m) => Ok(m),
        Err(Error::Timeout { .. }) => {
            Err(Fail::Done(failed(qid, format!("{refused}: it did not send {step} in time"))))
        }
        // The connection, not an NVMe status (which is the controller's own answer, passed on as it is).
        Err(e) if e.is_path_error() && e.status().is_none() => {
            Err(Fail::Done(failed(qid, format!("{refused}: it closed the connection instead of sending {step}"))))
        }
        Err(e) => Err(Fail::Done(e)),
    }
}

/// The controller's next message, which must be `expected` of this transaction; a Failure1 ends the exchange
/// with its reason (`refused` words the common one, a failed authentication, for this step).
fn expect(qid: u16, msg: &[u8], tid: u16, expected: u8, step: &str, refused: &str) -> std::result::Result<(), Fail> {
    let Some(h) = MessageHeader::peek(msg) else {
        return Err(Fail::Host(explanation::INCORRECT_PAYLOAD, format!("the controller's {step} is too short")));
    };
    if (h.auth_type, h.auth_id) == (a::auth_type::COMMON, message::FAILURE1) {
        let e = DhchapFailure::parse(msg).map_or(0, |f| f.explanation);
        let reason = match e {
            explanation::FAILED => refused.to_string(),
            e => format!("the controller ended the exchange with AUTH_Failure1: {}", explanation::name(e)),
        };
        return Err(Fail::Done(failed(qid, reason)));
    }
    if (h.auth_type, h.auth_id) != (a::auth_type::DHCHAP, expected) {
        let what = format!(
            "the controller sent message {:#04x}/{:#04x} where its {step} was expected",
            h.auth_type, h.auth_id
        );
        return Err(Fail::Host(explanation::INCORRECT_MESSAGE, what));
    }
    if h.t_id.get() != tid {
        let what = format!("the controller's {step} is for transaction {}, not {tid}", h.t_id.get());
        return Err(Fail::Host(explanation::INCORRECT_MESSAGE, what));
    }
    Ok(())
}

async fn exchange(
    tx: &submit::Sender<Command>,
    qid: u16,
    secrets: &HostSecrets,
    o: &ConnectOptions,
    tid: u16,
    deadline: TInstant,
) -> std::result::Result<(HashId, Option<&'static ffdhe::Group>), Fail> {
    // 1. Negotiate: every hash and every DH group we compute, as the Linux host offers them (NULL first, then
    // ffdhe2048 ... ffdhe8192), no secure channel concatenation. Linux nvmet (6.x; drivers/nvme/target/
    // fabrics-cmd-auth.c, nvmet_auth_negotiate) refuses an offer of its configured group alone (Failure1, DH
    // group not usable) and then uses its configured group whatever the offer: this offer gets it, and so does
    // a controller that picks a group from it.
    let offered: Vec<u8> = HashId::ALL.iter().map(|h| h.id()).collect();
    let groups: Vec<u8> = std::iter::once(a::dh_group::NULL).chain(ffdhe::GROUPS.iter().map(|g| g.id)).collect();
    let negotiate = AuthNegotiate {
        t_id: tid,
        sc_c: a::sc_c::NOSC,
        napd: 1,
        authid: a::AUTH_ID_DHCHAP,
        hash_ids: offered.clone(),
        dh_group_ids: groups,
    };
    send(tx, &negotiate.to_bytes(), deadline).await.map_err(Fail::Done)?;

    // 2. The Challenge: a hash and a DH group we offered; with the NULL group no DH value, with an FFDHE group
    // the controller's g^x mod p (checked: 2 <= value <= p - 2). nvmet ends the association right after its
    // Failure1, which may then never arrive: a connection closed instead of a Challenge is a refusal too.
    let refused = "the controller refused the negotiation (authentication failed)";
    let msg = receive_step(tx, qid, deadline, refused, "its Challenge").await?;
    expect(qid, &msg, tid, message::CHALLENGE, "Challenge", refused)?;
    let hashid = msg.get(8).copied().unwrap_or(0);
    if !offered.contains(&hashid) {
        let what = format!("the controller chose hash {hashid:#04x}, which this host did not offer");
        return Err(Fail::Host(explanation::HASH_UNUSABLE, what));
    }
    let Some(ch) = DhchapChallenge::parse(&msg) else {
        return Err(Fail::Host(explanation::INCORRECT_PAYLOAD, "the controller's Challenge is malformed".into()));
    };
    let hash = ch.hash;
    let (group, dh_value, shared) = match (ch.dh_group, ffdhe::group(ch.dh_group)) {
        (a::dh_group::NULL, _) if ch.dh_value.is_empty() => (None, Vec::new(), Zeroizing::new(Vec::new())),
        (a::dh_group::NULL, _) => {
            let what = "the controller's Challenge carries a DH value with the NULL DH group".to_string();
            return Err(Fail::Host(explanation::INCORRECT_PAYLOAD, what));
        }
        (_, Some(g)) => {
            let mut x = Zeroizing::new(vec![0u8; ffdhe::PRIVATE_LEN]);
            {
                use rand::RngCore;
                rand::rngs::OsRng.fill_bytes(&mut x);
            }
            let shared = holdfast_rt::compute(|| g.shared_secret(&x, &ch.dh_value)).map_err(|e| {
                Fail::Host(explanation::DHGROUP_UNUSABLE, format!("the controller's {} value: {e}", g.name))
            })?;
            (Some(g), holdfast_rt::compute(|| g.public_value(&x)), Zeroizing::new(shared))
        }
        (id, None) => {
            let what = format!("the controller chose DH group {id:#04x}, which this host did not offer");
            return Err(Fail::Host(explanation::DHGROUP_UNUSABLE, what));
        }
    };
    // The challenge a response is computed over: itself with the NULL group, else Ca = HMAC(H(Z), C).
    let effective = |c: &[u8]| ffdhe::response_challenge(hash, group.map(|_| &shared[..]), c);

    // 3. The Reply: R1, our DH value, and for bidirectional authentication our own challenge C2 (OS RNG) with
    // S2 != 0.
    let r1 =
        a::host_response(hash, &secrets.host_key, &effective(&ch.challenge), ch.seqnum, tid, &o.hostnqn, &o.subnqn);
    let c2 = secrets.ctrl_key.as_ref().map(|_| {
        use rand::RngCore;
        let mut c2 = vec![0u8; hash.len()];
        rand::rngs::OsRng.fill_bytes(&mut c2);
        c2
    });
    let s2 = if c2.is_some() { next_seqnum() } else { 0 };
    let reply = DhchapReply { t_id: tid, seqnum: s2, response: r1, challenge: c2.clone(), dh_value };
    send(tx, &reply.to_bytes(), deadline).await.map_err(Fail::Done)?;

    // 4. Success1; with a controller secret, its R2 must match (constant time). A connection closed instead
    // (nvmet ends the association right after its Failure1, which may then never arrive) is a refusal too.
    let refused = if secrets.ctrl_key.is_some() {
        "the controller refused the host's response (wrong secret? or the controller has no controller key for \
         bidirectional authentication)"
    } else {
        "the controller refused the host's response (wrong secret?)"
    };
    let msg = receive_step(tx, qid, deadline, refused, "Success1").await?;
    expect(qid, &msg, tid, message::SUCCESS1, "Success1", refused)?;
    let Some(s1) = DhchapSuccess1::parse(&msg) else {
        return Err(Fail::Host(explanation::INCORRECT_PAYLOAD, "the controller's Success1 is malformed".into()));
    };
    if s1.hl as usize != hash.len() {
        let what = format!("the controller's Success1 has hash length {}, not {}", s1.hl, hash.len());
        return Err(Fail::Host(explanation::HASH_UNUSABLE, what));
    }
    let (Some(kc), Some(c2)) = (&secrets.ctrl_key, &c2) else {
        return Ok((hash, group));
    };
    // Stricter than Linux, which takes a Success1 without R2 as success: asked to prove it holds the key, a
    // controller that does not is not authenticated.
    let Some(r2) = s1.response else {
        let what = "the controller did not answer the host's challenge (no R2 in Success1)".to_string();
        return Err(Fail::Host(explanation::FAILED, what));
    };
    if !a::verify_controller_response(hash, kc, &effective(c2), s2, tid, &o.subnqn, &o.hostnqn, &r2) {
        let what = "the controller's response does not match --dhchap-ctrl-secret (wrong controller secret?)".into();
        return Err(Fail::Host(explanation::FAILED, what));
    }

    // 5. Success2.
    send(tx, &DhchapSuccess2 { t_id: tid }.to_bytes(), deadline).await.map_err(Fail::Done)?;
    Ok((hash, group))
}
