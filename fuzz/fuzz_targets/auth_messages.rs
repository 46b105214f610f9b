//! Fuzz `holdfast_proto::auth`, the DH-HMAC-CHAP wire layouts and the DHHC-1 secret representation, with no
//! I/O: every `parse` (Negotiate, Challenge, Reply, Success1, Failure1/2, the message header), the
//! Authentication Send / Receive command, `DhchapSecret::parse`, and messages and secrets built from the input
//! with the proto types. Never a panic, and:
//!
//! - a message that parses re-encodes (`to_bytes`) to the input prefix it came from, its reserved bytes (and
//!   the ID slots past HALEN / DHLEN, a C2 or R2 that its valid bit says is absent) read as zero, and the
//!   re-encoded message parses to the same value;
//! - a message built from the proto types parses back to itself;
//! - a secret that parses is a 32, 48 or 64-byte key whose encoding is the input (trimmed, with its final
//!   ':'), and parses back to itself; a refused one names no part of its key;
//! - R1 / R2 verify against what `host_response` / `controller_response` computed, and not with a bit of them
//!   changed.
//!
//! Input: byte 0 selects the check (below, `% 10`), the rest is its bytes or its fields.
#![no_main]
use holdfast_proto::auth::{
    self as a, AuthCommand, AuthNegotiate, DhchapChallenge, DhchapFailure, DhchapReply, DhchapSecret, DhchapSuccess1,
    DhchapSuccess2, HashId, MessageHeader, SecretError, FAILURE_LEN, MAX_IDS, NEGOTIATE_LEN, SUCCESS2_LEN,
};
use holdfast_proto::SubmissionEntry;
use libfuzzer_sys::fuzz_target;
use zerocopy::FromBytes;

#[allow(dead_code)]
#[path = "../common/input.rs"]
mod input;
use input::Input;

/// `msg[..len]` with AUTH-Type and AUTH-Id `head` (the parsers leave checking them to their callers, which
/// dispatch on them) and the bytes at `zero` cleared: what `to_bytes` writes for a message parsed from `msg`.
fn expected(msg: &[u8], len: usize, head: [u8; 2], zero: impl IntoIterator<Item = usize>) -> Vec<u8> {
    let mut v = msg[..len].to_vec();
    v[..2].copy_from_slice(&head);
    for i in zero {
        v[i] = 0;
    }
    v
}

fn negotiate(msg: &[u8]) {
    let Ok(n) = AuthNegotiate::parse(msg) else {
        // Only a message too short for one descriptor, or with HALEN / DHLEN past the 30 slots, is refused.
        assert!(msg.len() < NEGOTIATE_LEN || msg[10] as usize > MAX_IDS || msg[11] as usize > MAX_IDS);
        return;
    };
    assert!(n.hash_ids.len() <= MAX_IDS && n.dh_group_ids.len() <= MAX_IDS);
    let b = n.to_bytes();
    assert_eq!(b.len(), NEGOTIATE_LEN);
    // Reserved: 2, 3 (header), 9 (descriptor byte 1); the unused hash and DH group slots.
    let unused_hash = 12 + n.hash_ids.len()..12 + MAX_IDS;
    let unused_dh = 42 + n.dh_group_ids.len()..42 + MAX_IDS;
    assert_eq!(b, expected(msg, NEGOTIATE_LEN, [0, 0], [2, 3, 9].into_iter().chain(unused_hash).chain(unused_dh)));
    assert_eq!(AuthNegotiate::parse(&b), Ok(n));
}

fn challenge(msg: &[u8]) {
    let Some(c) = DhchapChallenge::parse(msg) else { return };
    assert_eq!(c.challenge.len(), c.hash.len(), "C1 is HL bytes, HL the hash's length");
    let len = 16 + c.challenge.len() + c.dh_value.len();
    let b = c.to_bytes();
    assert_eq!(b, expected(msg, len, [1, 1], [2, 3, 7]));
    assert_eq!(DhchapChallenge::parse(&b), Some(c));
}

fn reply(msg: &[u8]) {
    let Ok(r) = DhchapReply::parse(msg) else { return };
    let hl = r.response.len();
    assert_eq!(hl, msg[6] as usize);
    assert_eq!(r.challenge.as_ref().map_or(hl, Vec::len), hl);
    let len = 16 + 2 * hl + r.dh_value.len();
    let b = r.to_bytes();
    let mut want = expected(msg, len, [1, 2], [2, 3, 7, 9]);
    want[8] &= 1; // CVALID: bit 0
    if r.challenge.is_none() {
        want[16 + hl..16 + 2 * hl].fill(0);
    }
    assert_eq!(b, want);
    assert_eq!(DhchapReply::parse(&b), Ok(r));
}

fn success1(msg: &[u8]) {
    let Some(s) = DhchapSuccess1::parse(msg) else { return };
    let hl = s.hl as usize;
    let b = s.to_bytes();
    assert_eq!(b.len(), 16 + hl);
    let mut fixed = expected(msg, 16, [1, 3], [2, 3, 7, 9, 10, 11, 12, 13, 14, 15]);
    fixed[8] &= 1; // RVALID: bit 0
    assert_eq!(&b[..16], &fixed[..]);
    match &s.response {
        Some(r2) => {
            assert_eq!(r2.len(), hl);
            assert_eq!(&b[16..], &msg[16..16 + hl]);
        }
        None => assert!(b[16..].iter().all(|&x| x == 0)),
    }
    assert_eq!(DhchapSuccess1::parse(&b), Some(s));
}

fn failure(msg: &[u8]) {
    let Some(f) = DhchapFailure::parse(msg) else {
        assert!(msg.len() < FAILURE_LEN || msg[0] != 0 || !matches!(msg[1], 0xF0 | 0xF1));
        return;
    };
    let b = f.to_bytes();
    assert_eq!(b, expected(msg, FAILURE_LEN, [msg[0], msg[1]], [2, 3]));
    assert_eq!(DhchapFailure::parse(&b), Some(f));
}

fn header_and_command(msg: &[u8]) {
    match MessageHeader::peek(msg) {
        Some(h) => {
            assert_eq!((h.auth_type, h.auth_id, h.rsvd2), (msg[0], msg[1], [msg[2], msg[3]]));
            assert_eq!(h.t_id.get(), u16::from_le_bytes([msg[4], msg[5]]));
            let s2 = DhchapSuccess2 { t_id: h.t_id.get() }.to_bytes();
            assert_eq!(s2.len(), SUCCESS2_LEN);
            assert_eq!(MessageHeader::peek(&s2).map(|h| (h.auth_type, h.auth_id)), Some((1, 4)));
        }
        None => assert!(msg.len() < 6),
    }
    if let Ok(sqe) = SubmissionEntry::read_from_bytes(&msg[..msg.len().min(64)]) {
        let c = AuthCommand::from_sqe(&sqe);
        assert_eq!(zerocopy::IntoBytes::as_bytes(&c), zerocopy::IntoBytes::as_bytes(&sqe));
        for send in [true, false] {
            let c = AuthCommand::new(send, c.len.get());
            let s = c.to_sqe();
            assert_eq!(s.dptr.len(), c.len.get());
            let back = AuthCommand::from_sqe(&s);
            assert_eq!((back.secp, back.spsp0, back.spsp1, back.len), (c.secp, c.spsp0, c.spsp1, c.len));
            assert_eq!(back.fctype, if send { 5 } else { 6 });
        }
    }
}

fn secret_text(text: &str) {
    match DhchapSecret::parse(text) {
        Ok(s) => {
            assert!(matches!(s.key_len(), 32 | 48 | 64));
            let e = s.encode();
            let t = text.trim();
            let want = if t.ends_with(':') { t.to_string() } else { format!("{t}:") };
            assert_eq!(e, want, "a secret that parses encodes back to its text");
            assert_eq!(DhchapSecret::parse(&e).as_ref(), Ok(&s));
            let dbg = format!("{s:?}");
            assert!(!dbg.contains(&e[10..e.len() - 1]), "Debug shows the key");
            // The transformed key: the key itself, or an HMAC of the transformation's length.
            let k = s.transform("nqn.fuzz");
            assert_eq!(k.len(), s.transform.map_or(s.key_len(), HashId::len));
        }
        Err(e) => {
            // No part of the key in the error: the one variant with text carries the two-character XX field.
            if let SecretError::TransformHash(x) = &e {
                assert_eq!(x.chars().count(), 2, "a transformation field is named only when it is two characters");
                let xx = text.trim().strip_prefix("DHHC-1:").and_then(|r| r.split_once(':')).map(|(xx, _)| xx);
                assert_eq!(Some(x.as_str()), xx);
            }
        }
    }
}

/// A secret built from the input: any key length 32/48/64, any transformation.
fn secret_built(inp: &mut Input) -> Option<()> {
    let f = inp.byte()?;
    let len = [32, 48, 64][f as usize % 3];
    let transform = [None, Some(HashId::Sha256), Some(HashId::Sha384), Some(HashId::Sha512)][(f >> 2) as usize % 4];
    let key: Vec<u8> = (0..len).map(|i| inp.0.get(i).copied().unwrap_or(i as u8)).collect();
    let s = DhchapSecret::new(&key, transform);
    let text = s.encode();
    assert_eq!(DhchapSecret::parse(&text), Ok(s.clone()));
    // Surrounding whitespace and the missing final ':' are taken.
    assert_eq!(DhchapSecret::parse(&format!(" {}\n", text.trim_end_matches(':'))), Ok(s));
    // One base64 character changed: never a different secret taken silently (the CRC or the base64 refuses).
    let at = 10 + (f as usize >> 4) % (text.len() - 11);
    let mut bad = text.clone().into_bytes();
    bad[at] = if bad[at] == b'A' { b'B' } else { b'A' };
    let bad = String::from_utf8(bad).unwrap();
    assert!(DhchapSecret::parse(&bad).is_err(), "a changed key character went unnoticed");
    Some(())
}

fn hash(b: u8) -> HashId {
    HashId::ALL[b as usize % 3]
}

fn bytes(inp: &mut Input, n: usize) -> Vec<u8> {
    let n = n.min(inp.0.len());
    let (b, rest) = inp.0.split_at(n);
    inp.0 = rest;
    b.to_vec()
}

/// Messages built from the input with the proto types: each parses back to itself.
fn built(inp: &mut Input) -> Option<()> {
    let f = inp.byte()?;
    let t_id = inp.u16()?;
    match f % 5 {
        0 => {
            let (ha, dh) = (inp.byte()? as usize % (MAX_IDS + 1), inp.byte()? as usize % (MAX_IDS + 1));
            let n = AuthNegotiate {
                t_id,
                sc_c: inp.byte()?,
                napd: inp.byte()?,
                authid: inp.byte()?,
                hash_ids: bytes(inp, ha),
                dh_group_ids: bytes(inp, dh),
            };
            assert_eq!(AuthNegotiate::parse(&n.to_bytes()), Ok(n));
        }
        1 => {
            let h = hash(f >> 3);
            let dv = inp.u16()? as usize % 1100;
            let c = DhchapChallenge {
                t_id,
                hash: h,
                dh_group: inp.byte()?,
                seqnum: inp.u32()?,
                challenge: (0..h.len()).map(|i| i as u8 ^ f).collect(),
                dh_value: (0..dv).map(|i| i as u8).collect(),
            };
            let b = c.to_bytes();
            assert_eq!(b.len(), 16 + h.len() + dv);
            assert_eq!(DhchapChallenge::parse(&b), Some(c));
        }
        2 => {
            let hl = inp.byte()? as usize;
            let dv = inp.u16()? as usize % 1100;
            let r = DhchapReply {
                t_id,
                seqnum: inp.u32()?,
                response: (0..hl).map(|i| i as u8).collect(),
                challenge: (f & 8 != 0).then(|| (0..hl).map(|i| !(i as u8)).collect()),
                dh_value: (0..dv).map(|i| i as u8 ^ 0x33).collect(),
            };
            let b = r.to_bytes();
            assert_eq!(b.len(), 16 + 2 * hl + dv);
            assert_eq!(DhchapReply::parse(&b), Ok(r));
        }
        3 => {
            let hl = inp.byte()?;
            let s = DhchapSuccess1 { t_id, hl, response: (f & 8 != 0).then(|| vec![0xA5; hl as usize]) };
            let b = s.to_bytes();
            assert_eq!(b.len(), 16 + hl as usize);
            assert_eq!(DhchapSuccess1::parse(&b), Some(s));
        }
        _ => {
            let fl = DhchapFailure { t_id, failure1: f & 8 != 0, reason: inp.byte()?, explanation: inp.byte()? };
            assert_eq!(DhchapFailure::parse(&fl.to_bytes()), Some(fl));
            let _ = a::explanation::name(fl.explanation);
        }
    }
    Some(())
}

/// R1 and R2 from the input's key, challenge, sequence number, T_ID and NQNs: each verifies, and no longer
/// with one bit changed or cut short.
fn responses(inp: &mut Input) -> Option<()> {
    let f = inp.byte()?;
    let h = hash(f);
    let (s, tid) = (inp.u32()?, inp.u16()?);
    let klen = inp.byte()? as usize % 80;
    let key = bytes(inp, klen);
    let c = bytes(inp, h.len());
    let split = inp.byte()? as usize;
    let rest = String::from_utf8_lossy(inp.0).into_owned();
    let (hostnqn, subnqn) = rest.split_at(rest.char_indices().nth(split).map_or(rest.len(), |(i, _)| i));
    let flip = inp.byte().unwrap_or(0) as usize;
    let r1 = a::host_response(h, &key, &c, s, tid, hostnqn, subnqn);
    let r2 = a::controller_response(h, &key, &c, s, tid, subnqn, hostnqn);
    assert_eq!((r1.len(), r2.len()), (h.len(), h.len()));
    assert!(a::verify_host_response(h, &key, &c, s, tid, hostnqn, subnqn, &r1));
    assert!(a::verify_controller_response(h, &key, &c, s, tid, subnqn, hostnqn, &r2));
    // R1 is not R2: the role strings differ.
    assert_ne!(r1, r2);
    let mut bad = r1.clone();
    bad[flip % h.len()] ^= 1 << (flip % 8);
    assert!(!a::verify_host_response(h, &key, &c, s, tid, hostnqn, subnqn, &bad));
    assert!(!a::verify_host_response(h, &key, &c, s, tid, hostnqn, subnqn, &r1[..h.len() - 1]));
    assert!(!a::verify_controller_response(h, &key, &c, s, tid.wrapping_add(1), subnqn, hostnqn, &r2));
    Some(())
}

fuzz_target!(|input: &[u8]| {
    let Some((&sel, rest)) = input.split_first() else { return };
    match sel % 10 {
        0 => negotiate(rest),
        1 => challenge(rest),
        2 => reply(rest),
        3 => success1(rest),
        4 => failure(rest),
        5 => header_and_command(rest),
        6 => secret_text(&String::from_utf8_lossy(rest)),
        7 => {
            secret_built(&mut Input(rest));
        }
        8 => {
            built(&mut Input(rest));
        }
        _ => {
            responses(&mut Input(rest));
        }
    }
    // Every message parser on the same bytes: none panics whatever the bytes are.
    let _ = (AuthNegotiate::parse(rest), DhchapChallenge::parse(rest), DhchapReply::parse(rest));
    let _ = (DhchapSuccess1::parse(rest), DhchapFailure::parse(rest), MessageHeader::peek(rest));
});
