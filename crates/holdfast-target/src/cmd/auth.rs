//! In-band authentication, the controller's side of DH-HMAC-CHAP (NVMe Base 2.0 §8.13.5; the Linux nvmet
//! model, `drivers/nvme/target/fabrics-cmd-auth.c`): Authentication Send carries the host's messages
//! (Negotiate, Reply, Success2, Failure2), Authentication Receive returns the controller's (Challenge,
//! Success1, Failure1). Each queue of a host that must authenticate runs the exchange on its own after its
//! Connect; until it succeeds, every other command on the queue is refused with Authentication Required
//! ([`crate::cmd::parse`], one flag).
//!
//! DH group: the host's `dhchap_dhgroup` (NULL by default) if the host offers it; a host that does not offer a
//! configured NULL group gets the first FFDHE group it offers, and one that does not offer a configured FFDHE
//! group is refused (Failure1, DH group not usable: no fallback to a weaker group). With an FFDHE group the
//! Challenge carries g^x mod p, the Reply must carry the host's g^y mod p, and both responses are computed over
//! the augmented challenges ([`holdfast_proto::auth::ffdhe`]).
//!
//! A failed exchange answers the host's next Authentication Receive with AUTH_Failure1 and closes the queue (a
//! failed re-authentication of an I/O queue, the whole association, as nvmet's fatal error: `fail_queue`).
//! An I/O queue takes its queue ID once its host's Reply checks out (`take_qid`), not at its Connect.

use crate::config::HostKeys;
use crate::request::{QueueCtx, Request, Response};
use holdfast_proto::auth::{
    self as a, explanation, ffdhe, message, AuthCommand, AuthNegotiate, DhchapChallenge, DhchapFailure, DhchapReply,
    DhchapSuccess1, HashId, MessageHeader,
};
use holdfast_proto::Status;
use std::sync::atomic::AtomicU32;
use std::sync::Arc;
use zeroize::Zeroize;

/// Largest Authentication Send / Receive transfer accepted: a Reply with SHA-512 values and an ffdhe8192
/// value is 16 + 2 × 64 + 1024 = 1168 bytes.
pub const MAX_AUTH_LEN: usize = 4096;

/// The message the exchange expects next (nvmet's `dhchap_step`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Step {
    /// The host's AUTH_Negotiate (Send).
    Negotiate,
    /// Our DH-HMAC-CHAP_Challenge (Receive).
    Challenge,
    /// The host's DH-HMAC-CHAP_Reply (Send).
    Reply,
    /// Our DH-HMAC-CHAP_Success1 (Receive).
    Success1,
    /// The host's DH-HMAC-CHAP_Success2 (Send), after bidirectional authentication.
    Success2,
    /// Our AUTH_Failure1 (Receive); the queue closes after it.
    Failure1,
    /// Authenticated (a new Negotiate starts over).
    Done,
}

/// One queue's DH-HMAC-CHAP exchange. Never logged or printed: it holds the keys and challenges.
pub struct QueueAuth {
    keys: Arc<HostKeys>,
    hostnqn: String,
    subnqn: String,
    step: Step,
    tid: u16,
    hash: HashId,
    c1: Vec<u8>,
    s1: u32,
    c2: Option<Vec<u8>>,
    s2: u32,
    explanation: u8,
    /// The FFDHE group picked (None: the NULL group).
    group: Option<&'static ffdhe::Group>,
    /// Our private exponent x for this exchange's Challenge (FFDHE).
    private: Vec<u8>,
    /// The shared secret g^xy mod p, from the host's value in its Reply (FFDHE).
    shared: Vec<u8>,
}

impl QueueAuth {
    /// A queue of `hostnqn` on `subnqn`, to authenticate with `keys`.
    pub fn new(keys: Arc<HostKeys>, hostnqn: &str, subnqn: &str) -> QueueAuth {
        QueueAuth {
            hash: keys.hash,
            keys,
            hostnqn: hostnqn.to_owned(),
            subnqn: subnqn.to_owned(),
            step: Step::Negotiate,
            tid: 0,
            c1: Vec::new(),
            s1: 0,
            c2: None,
            s2: 0,
            explanation: 0,
            group: None,
            private: Vec::new(),
            shared: Vec::new(),
        }
    }

    fn fail(&mut self, why: u8) {
        self.step = Step::Failure1;
        self.explanation = why;
        self.forget();
    }

    fn group_name(&self) -> &'static str {
        self.group.map_or("null", |g| g.name)
    }

    /// Wipe the exchange's DH secrets (its end, whichever way).
    fn forget(&mut self) {
        self.private.zeroize();
        self.shared.zeroize();
    }

    /// The challenge a response is computed over: C itself with the NULL group, else Ca = HMAC(H(Z), C).
    fn effective(&self, c: &[u8]) -> Vec<u8> {
        ffdhe::response_challenge(self.hash, self.group.map(|_| &self.shared[..]), c)
    }

    /// The host's AUTH_Negotiate: pick the hash (the configured one if offered, else the first offered that
    /// we compute, as nvmet falls back) and the DH group (the module's doc).
    fn negotiate(&mut self, msg: &[u8]) -> Result<(), u8> {
        let n = AuthNegotiate::parse(msg)?;
        self.tid = n.t_id;
        if n.sc_c != a::sc_c::NOSC {
            return Err(explanation::CONCAT_MISMATCH);
        }
        if n.napd != 1 {
            return Err(explanation::HASH_UNUSABLE);
        }
        if n.authid != a::AUTH_ID_DHCHAP {
            return Err(explanation::INCORRECT_PAYLOAD);
        }
        let offered: Vec<HashId> = n.hash_ids.iter().filter_map(|&h| HashId::from_id(h)).collect();
        self.hash = if offered.contains(&self.keys.hash) {
            self.keys.hash
        } else {
            *offered.first().ok_or(explanation::HASH_UNUSABLE)?
        };
        let want = self.keys.dh_group;
        let id = if n.dh_group_ids.contains(&want) {
            want
        } else if want == a::dh_group::NULL {
            *n.dh_group_ids.iter().find(|&&g| ffdhe::group(g).is_some()).ok_or(explanation::DHGROUP_UNUSABLE)?
        } else {
            return Err(explanation::DHGROUP_UNUSABLE);
        };
        self.group = ffdhe::group(id);
        Ok(())
    }

    /// The host's DH-HMAC-CHAP_Reply: check R1 against C1.
    fn reply(&mut self, msg: &[u8]) -> Result<(), u8> {
        let r = DhchapReply::parse(msg)?;
        if r.response.len() != self.hash.len() {
            return Err(explanation::INCORRECT_PAYLOAD);
        }
        match self.group {
            None if !r.dh_value.is_empty() => return Err(explanation::INCORRECT_PAYLOAD),
            None => {}
            Some(_) if r.dh_value.is_empty() => return Err(explanation::INCORRECT_PAYLOAD),
            // A value out of range or of the wrong size: as nvmet answers a failed session key computation.
            Some(g) => {
                let (private, value) = (&self.private, &r.dh_value);
                self.shared = holdfast_rt::compute(|| g.shared_secret(private, value))
                    .map_err(|_| explanation::DHGROUP_UNUSABLE)?;
                self.private.zeroize();
            }
        }
        let key = self.keys.host_key.transform(&self.hostnqn);
        if !a::verify_host_response(
            self.hash,
            &key,
            &self.effective(&self.c1),
            self.s1,
            self.tid,
            &self.hostnqn,
            &self.subnqn,
            &r.response,
        ) {
            return Err(explanation::FAILED);
        }
        // A challenge for us (bidirectional): S2 is non-zero (0 would mean a C2 carried only to derive a TLS
        // PSK, which we do not do), and we need the controller key to answer it.
        self.s2 = r.seqnum;
        self.c2 = match r.challenge {
            Some(c2) if r.seqnum != 0 => {
                if self.keys.ctrl_key.is_none() {
                    return Err(explanation::FAILED);
                }
                Some(c2)
            }
            _ => None,
        };
        Ok(())
    }

    /// Our DH-HMAC-CHAP_Challenge: fresh C1 from the OS random number generator, a new S1, and with an FFDHE
    /// group g^x mod p for a fresh x.
    fn challenge(&mut self) -> Vec<u8> {
        use rand::RngCore;
        self.c1 = vec![0; self.hash.len()];
        rand::rngs::OsRng.fill_bytes(&mut self.c1);
        self.s1 = next_seqnum();
        let dh_value = match self.group {
            None => Vec::new(),
            Some(g) => {
                self.private.zeroize();
                self.private = vec![0; ffdhe::PRIVATE_LEN];
                rand::rngs::OsRng.fill_bytes(&mut self.private);
                holdfast_rt::compute(|| g.public_value(&self.private))
            }
        };
        DhchapChallenge {
            t_id: self.tid,
            hash: self.hash,
            dh_group: self.group.map_or(a::dh_group::NULL, |g| g.id),
            seqnum: self.s1,
            challenge: self.c1.clone(),
            dh_value,
        }
        .to_bytes()
    }

    /// Length of our Challenge: its fixed part, C1, and the DH value.
    fn challenge_len(&self) -> usize {
        16 + self.hash.len() + self.group.map_or(0, |g| g.len)
    }

    /// Our DH-HMAC-CHAP_Success1, with R2 if the host challenged us.
    fn success1(&self) -> Vec<u8> {
        let response = self.c2.as_ref().zip(self.keys.ctrl_key.as_ref()).map(|(c2, k)| {
            a::controller_response(
                self.hash,
                &k.transform(&self.subnqn),
                &self.effective(c2),
                self.s2,
                self.tid,
                &self.subnqn,
                &self.hostnqn,
            )
        });
        DhchapSuccess1 { t_id: self.tid, hl: self.hash.len() as u8, response }.to_bytes()
    }
}

impl Drop for QueueAuth {
    fn drop(&mut self) {
        self.forget();
    }
}

/// S1: one counter for the whole target, from a random start, never 0 (as the Linux implementation).
fn next_seqnum() -> u32 {
    static SEQ: AtomicU32 = AtomicU32::new(0);
    a::next_seqnum(&SEQ, rand::random::<u32>)
}

/// The SECP / SPSP0 / SPSP1 / length checks of both commands (as nvmet: Invalid Field, DNR): the length, or
/// the refusal.
pub fn check_command(cmd: &AuthCommand) -> Result<usize, Status> {
    if cmd.secp != a::SECP_NVME_AUTH || cmd.spsp0 != a::SPSP0_DHCHAP || cmd.spsp1 != a::SPSP1_DHCHAP {
        return Err(Status::INVALID_FIELD.with_dnr());
    }
    let len = cmd.len.get() as usize;
    if len == 0 || len > MAX_AUTH_LEN {
        return Err(Status::INVALID_FIELD.with_dnr());
    }
    Ok(len)
}

fn who(ctx: &QueueCtx) -> (u16, u16) {
    (ctx.ctrl.as_ref().map_or(0, |c| c.cntlid), ctx.qid)
}

/// What a message did to the queue.
enum Outcome {
    /// Nothing beyond the exchange's own state.
    None,
    /// The queue is authenticated.
    Authenticated,
    /// The exchange failed: the queue closes once this command is answered.
    Failed(String),
}

/// Authentication Send: take the host's message.
pub fn send(ctx: &mut QueueCtx, data: &[u8]) -> Response {
    let Some(mut st) = ctx.auth.take() else {
        return Response::err(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    };
    let outcome = take_message(ctx, &mut st, data);
    ctx.auth = Some(st);
    apply(ctx, outcome);
    Response::ok()
}

fn take_message(ctx: &mut QueueCtx, st: &mut QueueAuth, data: &[u8]) -> Outcome {
    let (cntlid, qid) = who(ctx);
    let peer = ctx.peer_addr;
    let Some(h) = MessageHeader::peek(data) else {
        st.fail(explanation::INCORRECT_PAYLOAD);
        return Outcome::None;
    };
    let tid_ok = h.t_id.get() == st.tid;
    match (h.auth_type, h.auth_id) {
        // A failure decided and not yet sent (AUTH_Failure1 at the next Receive, then the queue closes) stands:
        // a Negotiate in its place started the exchange over, a fresh guess for every refused Reply.
        (a::auth_type::COMMON, message::NEGOTIATE) if st.step == Step::Failure1 => {
            crate::peer_log::peer_warn!(peer = %peer, cntlid, qid, host = %st.hostnqn, "DH-HMAC-CHAP: a Negotiate after a refused exchange, before its AUTH_Failure1 was read: refused");
        }
        // A Negotiate starts (or restarts: re-authentication) the exchange at any point.
        (a::auth_type::COMMON, message::NEGOTIATE) => match st.negotiate(data) {
            Ok(()) => st.step = Step::Challenge,
            Err(e) => {
                let offer = offer_summary(data, &st.keys);
                crate::peer_log::peer_warn!(peer = %peer, cntlid, qid, host = %st.hostnqn, "DH-HMAC-CHAP: negotiation refused: {}{offer}", explanation::name(e));
                st.fail(e);
            }
        },
        // The host refused our Success1 (its check of R2 failed), or gave up.
        (a::auth_type::COMMON, message::FAILURE2) => {
            let e = DhchapFailure::parse(data).map_or(0, |f| f.explanation);
            st.step = Step::Negotiate;
            return Outcome::Failed(format!(
                "DH-HMAC-CHAP: the host ended the exchange with AUTH_Failure2 ({})",
                explanation::name(e)
            ));
        }
        // A message of the step expected, for another transaction (one out of step is an incorrect message
        // whatever its T_ID, below: nvmet checks the step first too).
        (a::auth_type::DHCHAP, id)
            if !tid_ok
                && ((id == message::REPLY && st.step == Step::Reply)
                    || (id == message::SUCCESS2 && st.step == Step::Success2)) =>
        {
            crate::peer_log::peer_warn!(peer = %peer, cntlid, qid, host = %st.hostnqn, "DH-HMAC-CHAP: message for transaction {} in transaction {}", h.t_id.get(), st.tid);
            st.fail(explanation::INCORRECT_PAYLOAD);
        }
        (a::auth_type::DHCHAP, message::REPLY) if st.step == Step::Reply => match st.reply(data) {
            // The host has proven itself: an I/O queue takes its ID now, unless another connection's queue, its
            // host proven too, took it meanwhile (the host's own Connect repeated, or a replay of it).
            Ok(()) if !take_qid(ctx) => {
                crate::peer_log::peer_warn!(peer = %peer, cntlid, qid, host = %st.hostnqn, "DH-HMAC-CHAP: host authenticated, but I/O queue {qid} is connected already (or the controller is resetting): refused");
                st.fail(explanation::FAILED);
            }
            Ok(()) => {
                st.step = Step::Success1;
                if st.c2.is_none() {
                    tracing::info!(peer = %peer, cntlid, qid, host = %st.hostnqn, hash = st.hash.name(), dhgroup = st.group_name(), "DH-HMAC-CHAP: host authenticated");
                    return Outcome::Authenticated;
                }
            }
            Err(e) => {
                let why = match e {
                    explanation::FAILED => "the host's response does not match its key (a wrong secret?)",
                    e => explanation::name(e),
                };
                crate::peer_log::peer_warn!(peer = %peer, cntlid, qid, host = %st.hostnqn, "DH-HMAC-CHAP: Reply refused: {why}");
                st.fail(e);
            }
        },
        (a::auth_type::DHCHAP, message::SUCCESS2) if st.step == Step::Success2 => {
            st.step = Step::Done;
            tracing::info!(peer = %peer, cntlid, qid, host = %st.hostnqn, hash = st.hash.name(), dhgroup = st.group_name(), "DH-HMAC-CHAP: host and controller authenticated (bidirectional)");
            return Outcome::Authenticated;
        }
        _ => {
            crate::peer_log::peer_warn!(peer = %peer, cntlid, qid, host = %st.hostnqn, "DH-HMAC-CHAP: unexpected message (type {:#x}, id {:#x}) in step {:?}", h.auth_type, h.auth_id, st.step);
            st.fail(explanation::INCORRECT_MESSAGE);
        }
    }
    Outcome::None
}

/// What a Negotiate offered beside what is configured for the host, for the operator to match one to the other
/// when a negotiation is refused (identifiers only, no secret); empty for a message that does not parse.
fn offer_summary(msg: &[u8], keys: &HostKeys) -> String {
    let Ok(n) = AuthNegotiate::parse(msg) else { return String::new() };
    let group = ffdhe::group(keys.dh_group).map_or("null", |g| g.name);
    format!(
        " (the host offered hashes {:?} and DH groups {:?}; configured for it: {}, {group})",
        n.hash_ids,
        n.dh_group_ids,
        keys.hash.name()
    )
}

/// An I/O queue that connected before its host authenticated takes its queue ID
/// ([`crate::cmd::fabrics::claim_io_queue`]); true if it did, or had no need to.
fn take_qid(ctx: &mut QueueCtx) -> bool {
    if !ctx.qid_claim_pending {
        return true;
    }
    let Some(ctrl) = &ctx.ctrl else { return false };
    if crate::cmd::fabrics::claim_io_queue(ctrl, ctx.qid, true).is_err() {
        return false;
    }
    ctx.qid_claim_pending = false;
    true
}

fn apply(ctx: &mut QueueCtx, outcome: Outcome) {
    match outcome {
        Outcome::None => {}
        Outcome::Authenticated => ctx.auth_pending = false,
        Outcome::Failed(why) => {
            let was_authenticated = !ctx.auth_pending;
            ctx.auth_pending = true;
            fail_queue(ctx, &why, was_authenticated);
        }
    }
}

/// Authentication Receive: the controller's next message.
pub fn receive(ctx: &mut QueueCtx, req: &Request) -> Response {
    let al = req.len;
    let Some(mut st) = ctx.auth.take() else {
        return Response::err(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    };
    let hl = st.hash.len();
    let msg = match st.step {
        Step::Challenge if al < st.challenge_len() => None,
        Step::Success1 if al < 16 + hl => None,
        Step::Challenge => {
            st.step = Step::Reply;
            Some(st.challenge())
        }
        Step::Success1 => {
            let m = st.success1();
            st.step = if st.c2.is_some() { Step::Success2 } else { Step::Done };
            st.c1.clear();
            st.forget();
            Some(m)
        }
        Step::Failure1 => Some(failure1(&mut st)),
        // Nothing to receive now (the host should have sent): nvmet answers Failure1, Failed.
        Step::Negotiate | Step::Reply | Step::Success2 | Step::Done => {
            st.explanation = explanation::FAILED;
            Some(failure1(&mut st))
        }
    };
    let failed = st.step == Step::Failure1;
    let why = explanation::name(st.explanation);
    ctx.auth = Some(st);
    let Some(msg) = msg else {
        return Response::err(Status::INVALID_FIELD.with_dnr());
    };
    if failed {
        apply(ctx, Outcome::Failed(format!("DH-HMAC-CHAP: AUTH_Failure1 sent ({why})")));
    }
    Response::data(msg)
}

fn failure1(st: &mut QueueAuth) -> Vec<u8> {
    st.step = Step::Failure1;
    DhchapFailure {
        t_id: st.tid,
        failure1: true,
        reason: a::REASON_AUTHENTICATION_FAILURE,
        explanation: st.explanation,
    }
    .to_bytes()
}

/// End the queue once the response is out. A failed re-authentication of an I/O queue (`was_authenticated`)
/// ends its association too (nvmet's fatal error), and the admin queue's closing does that by itself. An I/O
/// queue that never authenticated is closed alone: anyone who knows the host's NQN, Host ID and the CNTLID (all
/// sent in clear) can Connect one, and its failure must not end the association the host authenticated (it
/// did, with nvmet too: found by a review).
fn fail_queue(ctx: &mut QueueCtx, why: &str, was_authenticated: bool) {
    ctx.close_after_response = true;
    if let Some(c) = &ctx.ctrl {
        crate::peer_log::peer_warn!(peer = %ctx.peer_addr, cntlid = c.cntlid, qid = ctx.qid, host = %c.hostnqn, "{why}: closing the queue");
        if ctx.qid != 0 && was_authenticated {
            c.teardown(why);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_proto::auth::DhchapSecret;

    #[test]
    fn a_refused_negotiation_is_logged_with_the_offer_and_the_configuration() {
        let keys = HostKeys {
            host_key: DhchapSecret::new(&[1; 32], None),
            ctrl_key: None,
            hash: HashId::Sha384,
            dh_group: 0x02,
        };
        let n = AuthNegotiate {
            t_id: 1,
            sc_c: 0,
            napd: 1,
            authid: a::AUTH_ID_DHCHAP,
            hash_ids: vec![1, 2],
            dh_group_ids: vec![0, 1],
        };
        assert_eq!(
            offer_summary(&n.to_bytes(), &keys),
            " (the host offered hashes [1, 2] and DH groups [0, 1]; configured for it: sha384, ffdhe3072)"
        );
        assert_eq!(offer_summary(&[0; 4], &keys), "");
    }
}
