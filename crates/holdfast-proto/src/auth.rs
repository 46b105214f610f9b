//! In-band authentication: DH-HMAC-CHAP (NVMe Base 2.0 §8.13.5; TP 8006), as the Linux host and target
//! (`drivers/nvme/{host,target}/auth.c`) and SPDK speak it.
//!
//! What is here, sans I/O:
//! - the Authentication Send / Receive command ([`AuthCommand`], NVMe Base 2.0 §6.2 and §6.3, Figures 545
//!   and 548): SECP E9h, SPSP0 01h, SPSP1 01h, TL / AL;
//! - every message's wire layout (§8.13.5.x Figures): [`AuthNegotiate`], [`DhchapChallenge`],
//!   [`DhchapReply`], [`DhchapSuccess1`], [`DhchapSuccess2`], [`DhchapFailure`] (Failure1 and Failure2);
//! - the DHHC-1 secret representation ([`DhchapSecret`], §8.13.5.8 "Secret representation"):
//!   `DHHC-1:XX:<base64(key || CRC-32(key) little endian)>:`, where XX names the hash that transforms the key
//!   (00 none, 01 SHA-256, 02 SHA-384, 03 SHA-512);
//! - the key transformation and the two responses (§8.13.5.2 and §8.13.5.6): [`DhchapSecret::transform`],
//!   [`host_response`], [`controller_response`], and their constant-time checks.
//!
//! DH groups: NULL (00h), with which the challenge is used as it is and no DH value is carried, and the FFDHE
//! groups 01h-05h ([`ffdhe`]: RFC 7919's ffdhe2048 ... ffdhe8192), with which each side sends g^x mod p and
//! both responses are computed over the augmented challenge Ca = HMAC(H(g^xy mod p), C)
//! ([`ffdhe::augmented_challenge`]).
//!
//! Every message begins with the same six bytes: AUTH-Type (00h common, 01h DH-HMAC-CHAP), AUTH-Id (the
//! message), two reserved bytes, and the transaction identifier T_ID (little endian).

use hmac::{Hmac, Mac};
use sha2::{Sha256, Sha384, Sha512};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

use crate::sqe::SubmissionEntry;

pub mod ffdhe;

/// Security Protocol (SECP) of NVMe in-band authentication (NVMe Base 2.0 Figure 545).
pub const SECP_NVME_AUTH: u8 = 0xE9;
/// SP Specific 0 for DH-HMAC-CHAP.
pub const SPSP0_DHCHAP: u8 = 0x01;
/// SP Specific 1 for DH-HMAC-CHAP.
pub const SPSP1_DHCHAP: u8 = 0x01;
/// AUTHID of the DH-HMAC-CHAP protocol descriptor in a Negotiate message.
pub const AUTH_ID_DHCHAP: u8 = 0x01;
/// Most hash identifiers (HALEN) and most DH group identifiers (DHLEN) a protocol descriptor carries.
pub const MAX_IDS: usize = 30;

/// AUTH-Type (byte 0 of every message).
pub mod auth_type {
    /// Common messages: Negotiate, Failure1, Failure2.
    pub const COMMON: u8 = 0x00;
    /// DH-HMAC-CHAP messages: Challenge, Reply, Success1, Success2.
    pub const DHCHAP: u8 = 0x01;
}

/// AUTH-Id (byte 1 of every message).
pub mod message {
    /// AUTH_Negotiate (common).
    pub const NEGOTIATE: u8 = 0x00;
    /// DH-HMAC-CHAP_Challenge.
    pub const CHALLENGE: u8 = 0x01;
    /// DH-HMAC-CHAP_Reply.
    pub const REPLY: u8 = 0x02;
    /// DH-HMAC-CHAP_Success1.
    pub const SUCCESS1: u8 = 0x03;
    /// DH-HMAC-CHAP_Success2.
    pub const SUCCESS2: u8 = 0x04;
    /// AUTH_Failure2 (common; host to controller).
    pub const FAILURE2: u8 = 0xF0;
    /// AUTH_Failure1 (common; controller to host).
    pub const FAILURE1: u8 = 0xF1;
}

/// Secure channel concatenation (SC_C, Negotiate byte 6).
pub mod sc_c {
    /// No secure channel concatenation: the only value holdfast accepts.
    pub const NOSC: u8 = 0x00;
}

/// DH group identifiers (NVMe Base 2.0 Figure 581).
pub mod dh_group {
    /// The NULL DH exponentiation (no DH value, the challenge used as it is).
    pub const NULL: u8 = 0x00;
    /// ffdhe2048 ([`super::ffdhe`]).
    pub const FFDHE2048: u8 = 0x01;
    /// ffdhe8192 ([`super::ffdhe`]), the last defined.
    pub const FFDHE8192: u8 = 0x05;
}

/// Failure reason code (Failure1/Failure2 byte 6).
pub const REASON_AUTHENTICATION_FAILURE: u8 = 0x01;

/// Failure reason code explanations (Failure1/Failure2 byte 7; NVMe Base 2.0 Figure 587).
pub mod explanation {
    /// Authentication failed (a response did not match).
    pub const FAILED: u8 = 0x01;
    /// Authentication protocol not usable.
    pub const NOT_USABLE: u8 = 0x02;
    /// Secure channel concatenation mismatch.
    pub const CONCAT_MISMATCH: u8 = 0x03;
    /// Hash function not usable.
    pub const HASH_UNUSABLE: u8 = 0x04;
    /// DH group not usable.
    pub const DHGROUP_UNUSABLE: u8 = 0x05;
    /// Incorrect payload.
    pub const INCORRECT_PAYLOAD: u8 = 0x06;
    /// Incorrect protocol message.
    pub const INCORRECT_MESSAGE: u8 = 0x07;

    /// A name for a log line.
    pub fn name(e: u8) -> &'static str {
        match e {
            FAILED => "authentication failed",
            NOT_USABLE => "authentication protocol not usable",
            CONCAT_MISMATCH => "secure channel concatenation mismatch",
            HASH_UNUSABLE => "hash function not usable",
            DHGROUP_UNUSABLE => "DH group not usable",
            INCORRECT_PAYLOAD => "incorrect payload",
            INCORRECT_MESSAGE => "incorrect protocol message",
            _ => "unknown reason",
        }
    }
}

/// A hash function of DH-HMAC-CHAP (NVMe Base 2.0 Figure 580: HashID).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum HashId {
    /// SHA-256, HashID 01h, 32-byte values.
    Sha256 = 1,
    /// SHA-384, HashID 02h, 48-byte values.
    Sha384 = 2,
    /// SHA-512, HashID 03h, 64-byte values.
    Sha512 = 3,
}

impl HashId {
    /// Every hash, in HashID order.
    pub const ALL: [HashId; 3] = [HashId::Sha256, HashId::Sha384, HashId::Sha512];

    /// From a HashID (None: reserved or unknown).
    pub fn from_id(id: u8) -> Option<HashId> {
        match id {
            1 => Some(HashId::Sha256),
            2 => Some(HashId::Sha384),
            3 => Some(HashId::Sha512),
            _ => None,
        }
    }
    /// From a name: "sha256", "sha384", "sha512" (also "hmac(sha256)" ..., as nvmet's configfs writes them).
    pub fn from_name(name: &str) -> Option<HashId> {
        let n = name.strip_prefix("hmac(").and_then(|n| n.strip_suffix(')')).unwrap_or(name);
        HashId::ALL.into_iter().find(|h| h.name() == n)
    }
    /// The HashID.
    pub fn id(self) -> u8 {
        self as u8
    }
    /// Digest length in bytes: the length of challenges and responses (HL).
    pub fn len(self) -> usize {
        match self {
            HashId::Sha256 => 32,
            HashId::Sha384 => 48,
            HashId::Sha512 => 64,
        }
    }
    /// Never empty (for clippy's `len_without_is_empty`).
    pub fn is_empty(self) -> bool {
        false
    }
    /// "sha256", "sha384" or "sha512".
    pub fn name(self) -> &'static str {
        match self {
            HashId::Sha256 => "sha256",
            HashId::Sha384 => "sha384",
            HashId::Sha512 => "sha512",
        }
    }
}

fn hmac_of<M: Mac + hmac::digest::KeyInit>(key: &[u8], parts: &[&[u8]]) -> M {
    let mut m = <M as hmac::digest::KeyInit>::new_from_slice(key).expect("HMAC takes a key of any length");
    for p in parts {
        m.update(p);
    }
    m
}

/// HMAC with `hash`, keyed with `key`, over the concatenation of `parts`.
pub fn hmac(hash: HashId, key: &[u8], parts: &[&[u8]]) -> Vec<u8> {
    match hash {
        HashId::Sha256 => hmac_of::<Hmac<Sha256>>(key, parts).finalize().into_bytes().to_vec(),
        HashId::Sha384 => hmac_of::<Hmac<Sha384>>(key, parts).finalize().into_bytes().to_vec(),
        HashId::Sha512 => hmac_of::<Hmac<Sha512>>(key, parts).finalize().into_bytes().to_vec(),
    }
}

/// Does HMAC(`key`, `parts`) equal `expected`? Compared in constant time (the `hmac` crate's `verify_slice`).
pub fn hmac_verify(hash: HashId, key: &[u8], parts: &[&[u8]], expected: &[u8]) -> bool {
    match hash {
        HashId::Sha256 => hmac_of::<Hmac<Sha256>>(key, parts).verify_slice(expected).is_ok(),
        HashId::Sha384 => hmac_of::<Hmac<Sha384>>(key, parts).verify_slice(expected).is_ok(),
        HashId::Sha512 => hmac_of::<Hmac<Sha512>>(key, parts).verify_slice(expected).is_ok(),
    }
}

/// Why a DHHC-1 secret was refused. No variant carries any part of the secret.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum SecretError {
    /// Not `DHHC-1:XX:...`.
    #[error("not a DH-HMAC-CHAP secret: expected \"DHHC-1:XX:<base64>:\"")]
    Format,
    /// XX is not 00, 01, 02 or 03.
    #[error("unknown key transformation hash {0:?} (00 none, 01 SHA-256, 02 SHA-384, 03 SHA-512)")]
    TransformHash(String),
    /// The key part is not base64.
    #[error("the key is not valid base64")]
    Base64,
    /// The decoded key (with its CRC) is not 36, 52 or 68 bytes.
    #[error("the key is {0} bytes with its CRC; a key is 32, 48 or 64 bytes plus a 4-byte CRC-32")]
    Length(usize),
    /// The CRC-32 after the key does not match it.
    #[error("the key's CRC-32 does not match (a mistyped or truncated secret)")]
    Crc,
}

/// A DH-HMAC-CHAP secret (NVMe Base 2.0 §8.13.5.8), as `nvme gen-dhchap-key` prints it and nvmet's
/// configfs takes it: `DHHC-1:XX:<base64 of key || CRC-32 (ISO-HDLC, little endian) of key>:`.
///
/// Its `Debug` shows the transformation hash and the key's length, never the key.
#[derive(Clone, PartialEq, Eq)]
pub struct DhchapSecret {
    /// The hash that transforms the key before use (XX: None for 00).
    pub transform: Option<HashId>,
    key: Vec<u8>,
}

impl Drop for DhchapSecret {
    fn drop(&mut self) {
        zeroize::Zeroize::zeroize(&mut self.key);
    }
}

impl std::fmt::Debug for DhchapSecret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "DhchapSecret {{ transform: {:?}, key: <{} bytes> }}", self.transform, self.key.len())
    }
}

impl DhchapSecret {
    /// Parse the textual representation.
    pub fn parse(text: &str) -> Result<DhchapSecret, SecretError> {
        use base64::Engine;
        let text = text.trim();
        let rest = text.strip_prefix("DHHC-1:").ok_or(SecretError::Format)?;
        let (xx, rest) = rest.split_once(':').ok_or(SecretError::Format)?;
        let transform = match xx {
            "00" => None,
            "01" => Some(HashId::Sha256),
            "02" => Some(HashId::Sha384),
            "03" => Some(HashId::Sha512),
            // Only a field of the two characters a real one has is named: a secret without it ("DHHC-1:<key>:")
            // would put its key here, and no error carries any part of a key.
            other if other.chars().count() == 2 => return Err(SecretError::TransformHash(other.to_string())),
            _ => return Err(SecretError::Format),
        };
        // The key ends at the last ':' (which may be absent), as the Linux parser takes it.
        let b64 = rest.strip_suffix(':').unwrap_or(rest);
        if b64.contains(':') {
            return Err(SecretError::Format);
        }
        let raw = base64::engine::general_purpose::STANDARD.decode(b64).map_err(|_| SecretError::Base64)?;
        if !matches!(raw.len(), 36 | 52 | 68) {
            return Err(SecretError::Length(raw.len()));
        }
        let (key, crc) = raw.split_at(raw.len() - 4);
        if crc32(key).to_le_bytes() != crc {
            return Err(SecretError::Crc);
        }
        Ok(DhchapSecret { transform, key: key.to_vec() })
    }

    /// A secret for `key` (32, 48 or 64 bytes), transformed with `transform`.
    pub fn new(key: &[u8], transform: Option<HashId>) -> DhchapSecret {
        DhchapSecret { transform, key: key.to_vec() }
    }

    /// The textual representation.
    pub fn encode(&self) -> String {
        use base64::Engine;
        let mut raw = self.key.clone();
        raw.extend_from_slice(&crc32(&self.key).to_le_bytes());
        let xx = self.transform.map_or(0, HashId::id);
        format!("DHHC-1:{xx:02}:{}:", base64::engine::general_purpose::STANDARD.encode(raw))
    }

    /// The key's length in bytes.
    pub fn key_len(&self) -> usize {
        self.key.len()
    }

    /// The key used in the HMAC of a response (§8.13.5.8): the key itself for transformation 00, else
    /// HMAC(key, NQN || "NVMe-over-Fabrics") with the transformation's hash. `nqn` is the NQN of the side
    /// whose secret this is: the host's for the host key, the subsystem's for the controller key. Wiped from
    /// memory when dropped, as the secret itself is.
    pub fn transform(&self, nqn: &str) -> zeroize::Zeroizing<Vec<u8>> {
        zeroize::Zeroizing::new(match self.transform {
            None => self.key.clone(),
            Some(h) => hmac(h, &self.key, &[nqn.as_bytes(), b"NVMe-over-Fabrics"]),
        })
    }
}

/// CRC-32 (ISO-HDLC: the one of zlib and Ethernet), as the DHHC-1 representation carries it.
fn crc32(data: &[u8]) -> u32 {
    crc_fast::checksum(crc_fast::CrcAlgorithm::Crc32IsoHdlc, data) as u32
}

/// The next sequence number (S1 of a controller's challenge, S2 of a host's) from `counter`: one counter per
/// process, starting at `random_start()` (called at the first use) and counting up, never 0 (an S2 of 0 says no
/// challenge is carried): a start of 0, or the count wrapping to it, gives 1. The caller passes the randomness
/// in: this crate reads no source of its own.
pub fn next_seqnum(counter: &core::sync::atomic::AtomicU32, random_start: impl Fn() -> u32) -> u32 {
    use core::sync::atomic::Ordering;
    loop {
        let cur = counter.load(Ordering::Relaxed);
        let next = match if cur == 0 { random_start() } else { cur.wrapping_add(1) } {
            0 => 1,
            n => n,
        };
        if counter.compare_exchange(cur, next, Ordering::Relaxed, Ordering::Relaxed).is_ok() {
            return next;
        }
    }
}

/// The host's response R1 (§8.13.5.6, NULL DH group): HMAC(Kh', C1 || S1 || T_ID || 00h || "HostHost" ||
/// NQNh || 00h || NQNc), where Kh' is the transformed host key, S1 little-endian 32 bits, T_ID 16 bits.
pub fn host_response(hash: HashId, key: &[u8], c1: &[u8], s1: u32, tid: u16, hostnqn: &str, subnqn: &str) -> Vec<u8> {
    let (s1, tid) = (s1.to_le_bytes(), tid.to_le_bytes());
    hmac(hash, key, &[c1, &s1, &tid, &[0], b"HostHost", hostnqn.as_bytes(), &[0], subnqn.as_bytes()])
}

/// Is `r1` the host's response to challenge `c1`? Compared in constant time.
#[allow(clippy::too_many_arguments)]
pub fn verify_host_response(
    hash: HashId,
    key: &[u8],
    c1: &[u8],
    s1: u32,
    tid: u16,
    hostnqn: &str,
    subnqn: &str,
    r1: &[u8],
) -> bool {
    let (s1, tid) = (s1.to_le_bytes(), tid.to_le_bytes());
    let parts: [&[u8]; 8] = [c1, &s1, &tid, &[0], b"HostHost", hostnqn.as_bytes(), &[0], subnqn.as_bytes()];
    hmac_verify(hash, key, &parts, r1)
}

/// The controller's response R2 (§8.13.5.7, NULL DH group): HMAC(Kc', C2 || S2 || T_ID || 00h ||
/// "Controller" || NQNc || 00h || NQNh), where Kc' is the transformed controller key.
pub fn controller_response(
    hash: HashId,
    key: &[u8],
    c2: &[u8],
    s2: u32,
    tid: u16,
    subnqn: &str,
    hostnqn: &str,
) -> Vec<u8> {
    let (s2, tid) = (s2.to_le_bytes(), tid.to_le_bytes());
    hmac(hash, key, &[c2, &s2, &tid, &[0], b"Controller", subnqn.as_bytes(), &[0], hostnqn.as_bytes()])
}

/// Is `r2` the controller's response to challenge `c2`? Compared in constant time.
#[allow(clippy::too_many_arguments)]
pub fn verify_controller_response(
    hash: HashId,
    key: &[u8],
    c2: &[u8],
    s2: u32,
    tid: u16,
    subnqn: &str,
    hostnqn: &str,
    r2: &[u8],
) -> bool {
    let (s2, tid) = (s2.to_le_bytes(), tid.to_le_bytes());
    let parts: [&[u8]; 8] = [c2, &s2, &tid, &[0], b"Controller", subnqn.as_bytes(), &[0], hostnqn.as_bytes()];
    hmac_verify(hash, key, &parts, r2)
}

// ---------------------------------------------------------------------------------------------------------
// Wire layouts. Offsets are asserted at compile time; this is the one place they are written.

/// Authentication Send (FCTYPE 05h) / Authentication Receive (06h) command (NVMe Base 2.0 Figures 545 and 548;
/// Linux `struct nvmf_auth_send_command`): SPSP0 at 41, SPSP1 at 42, SECP at 43, TL (Send) or AL (Receive) at 44.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct AuthCommand {
    /// Opcode, 0x7F.
    pub opcode: u8,
    /// FUSE/PSDT.
    pub flags: u8,
    /// Command identifier.
    pub cid: U16,
    /// Fabrics command type: 05h Send, 06h Receive.
    pub fctype: u8,
    /// Reserved and the SGL (24..40).
    pub rsvd5: [u8; 36],
    /// SP Specific 0: 01h.
    pub spsp0: u8,
    /// SP Specific 1: 01h.
    pub spsp1: u8,
    /// Security Protocol: E9h.
    pub secp: u8,
    /// Transfer Length (Send) or Allocation Length (Receive), in bytes.
    pub len: U32,
    /// Reserved.
    pub rsvd48: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<AuthCommand>() == 64);
const _: () = assert!(core::mem::offset_of!(AuthCommand, spsp0) == 41);
const _: () = assert!(core::mem::offset_of!(AuthCommand, spsp1) == 42);
const _: () = assert!(core::mem::offset_of!(AuthCommand, secp) == 43);
const _: () = assert!(core::mem::offset_of!(AuthCommand, len) == 44);

impl AuthCommand {
    /// An Authentication Send (`send`) or Receive of `len` bytes for DH-HMAC-CHAP, its data in the transport's
    /// data block.
    pub fn new(send: bool, len: u32) -> AuthCommand {
        let mut c = AuthCommand::new_zeroed();
        c.opcode = crate::opcode::FABRICS;
        c.flags = crate::sqe::PSDT_SGL;
        c.fctype = if send { crate::opcode::fctype::AUTH_SEND } else { crate::opcode::fctype::AUTH_RECEIVE };
        c.spsp0 = SPSP0_DHCHAP;
        c.spsp1 = SPSP1_DHCHAP;
        c.secp = SECP_NVME_AUTH;
        c.len.set(len);
        c
    }
    /// Read from a generic SQE.
    pub fn from_sqe(sqe: &SubmissionEntry) -> AuthCommand {
        AuthCommand::read_from_bytes(sqe.as_bytes()).unwrap_or_else(|_| AuthCommand::new_zeroed())
    }
    /// As a generic SQE, with a transport data block SGL of `len` bytes.
    pub fn to_sqe(&self) -> SubmissionEntry {
        let mut s = SubmissionEntry::read_from_bytes(self.as_bytes()).unwrap_or_default();
        s.dptr = crate::sgl::SglDescriptor::transport(self.len.get());
        s
    }
}

/// The six bytes every message starts with.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct MessageHeader {
    /// AUTH-Type ([`auth_type`]).
    pub auth_type: u8,
    /// AUTH-Id ([`message`]).
    pub auth_id: u8,
    /// Reserved.
    pub rsvd2: [u8; 2],
    /// Transaction identifier.
    pub t_id: U16,
}
const _: () = assert!(core::mem::size_of::<MessageHeader>() == 6);

impl MessageHeader {
    /// The header of a message, if it has six bytes.
    pub fn peek(msg: &[u8]) -> Option<MessageHeader> {
        MessageHeader::read_from_prefix(msg).ok().map(|(h, _)| h)
    }
    fn new(auth_type: u8, auth_id: u8, t_id: u16) -> MessageHeader {
        MessageHeader { auth_type, auth_id, rsvd2: [0; 2], t_id: U16::new(t_id) }
    }
}

/// AUTH_Negotiate's fixed part (NVMe Base 2.0 Figure 575; Linux `struct nvmf_auth_dhchap_negotiate_data`):
/// SC_C at 6, NAPD at 7, then NAPD protocol descriptors of 64 bytes.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct NegotiateFixed {
    hdr: MessageHeader,
    sc_c: u8,
    napd: u8,
}
const _: () = assert!(core::mem::size_of::<NegotiateFixed>() == 8);

/// A DH-HMAC-CHAP protocol descriptor (Figure 576): AUTHID at 0, HALEN at 2, DHLEN at 3, the hash IDs at 4
/// (HALEN of them, 30 slots), the DH group IDs at 34 (DHLEN of them, 30 slots).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ProtocolDescriptor {
    authid: u8,
    rsvd1: u8,
    halen: u8,
    dhlen: u8,
    hash_ids: [u8; MAX_IDS],
    dh_group_ids: [u8; MAX_IDS],
}
const _: () = assert!(core::mem::size_of::<ProtocolDescriptor>() == 64);
const _: () = assert!(core::mem::offset_of!(ProtocolDescriptor, dh_group_ids) == 34);

/// Length of a Negotiate message with one protocol descriptor.
pub const NEGOTIATE_LEN: usize = 8 + 64;

/// AUTH_Negotiate: the host's offer (one DH-HMAC-CHAP descriptor).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AuthNegotiate {
    /// Transaction identifier.
    pub t_id: u16,
    /// Secure channel concatenation ([`sc_c`]).
    pub sc_c: u8,
    /// Number of protocol descriptors (NAPD): 1 for DH-HMAC-CHAP.
    pub napd: u8,
    /// AUTHID of the first descriptor.
    pub authid: u8,
    /// Hash IDs offered, in the host's order.
    pub hash_ids: Vec<u8>,
    /// DH group IDs offered, in the host's order.
    pub dh_group_ids: Vec<u8>,
}

impl AuthNegotiate {
    /// Parse; the error is the Failure1 reason code explanation.
    pub fn parse(msg: &[u8]) -> Result<AuthNegotiate, u8> {
        let Ok((f, rest)) = NegotiateFixed::read_from_prefix(msg) else {
            return Err(explanation::INCORRECT_PAYLOAD);
        };
        let Ok((d, _)) = ProtocolDescriptor::read_from_prefix(rest) else {
            return Err(explanation::INCORRECT_PAYLOAD);
        };
        let (ha, dh) = (d.halen as usize, d.dhlen as usize);
        if ha > MAX_IDS || dh > MAX_IDS {
            return Err(explanation::INCORRECT_PAYLOAD);
        }
        Ok(AuthNegotiate {
            t_id: f.hdr.t_id.get(),
            sc_c: f.sc_c,
            napd: f.napd,
            authid: d.authid,
            hash_ids: d.hash_ids[..ha].to_vec(),
            dh_group_ids: d.dh_group_ids[..dh].to_vec(),
        })
    }
    /// The message's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let f = NegotiateFixed {
            hdr: MessageHeader::new(auth_type::COMMON, message::NEGOTIATE, self.t_id),
            sc_c: self.sc_c,
            napd: self.napd,
        };
        let mut d = ProtocolDescriptor::new_zeroed();
        d.authid = self.authid;
        d.halen = self.hash_ids.len().min(MAX_IDS) as u8;
        d.dhlen = self.dh_group_ids.len().min(MAX_IDS) as u8;
        for (slot, id) in d.hash_ids.iter_mut().zip(&self.hash_ids) {
            *slot = *id;
        }
        for (slot, id) in d.dh_group_ids.iter_mut().zip(&self.dh_group_ids) {
            *slot = *id;
        }
        [f.as_bytes(), d.as_bytes()].concat()
    }
}

/// DH-HMAC-CHAP_Challenge's fixed part (Figure 577; Linux `struct nvmf_auth_dhchap_challenge_data`): HL at 6,
/// HASHID at 8, DHGID at 9, DHVLEN at 10, SEQNUM at 12, then C1 (HL bytes) and the DH value (DHVLEN bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ChallengeFixed {
    hdr: MessageHeader,
    hl: u8,
    rsvd7: u8,
    hashid: u8,
    dhgid: u8,
    dhvlen: U16,
    seqnum: U32,
}
const _: () = assert!(core::mem::size_of::<ChallengeFixed>() == 16);
const _: () = assert!(core::mem::offset_of!(ChallengeFixed, seqnum) == 12);

/// DH-HMAC-CHAP_Challenge: the controller's challenge C1 with sequence number S1.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhchapChallenge {
    /// Transaction identifier.
    pub t_id: u16,
    /// Hash function (HASHID); HL is its length.
    pub hash: HashId,
    /// DH group (DHGID).
    pub dh_group: u8,
    /// Sequence number S1.
    pub seqnum: u32,
    /// Challenge C1 (HL bytes).
    pub challenge: Vec<u8>,
    /// DH value (empty for the NULL group).
    pub dh_value: Vec<u8>,
}

impl DhchapChallenge {
    /// The message's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let f = ChallengeFixed {
            hdr: MessageHeader::new(auth_type::DHCHAP, message::CHALLENGE, self.t_id),
            hl: self.challenge.len() as u8,
            rsvd7: 0,
            hashid: self.hash.id(),
            dhgid: self.dh_group,
            dhvlen: U16::new(self.dh_value.len() as u16),
            seqnum: U32::new(self.seqnum),
        };
        [f.as_bytes(), &self.challenge, &self.dh_value].concat()
    }
    /// Parse (as a host does); None if malformed or its hash is unknown.
    pub fn parse(msg: &[u8]) -> Option<DhchapChallenge> {
        let (f, rest) = ChallengeFixed::read_from_prefix(msg).ok()?;
        let hash = HashId::from_id(f.hashid)?;
        let (hl, dv) = (f.hl as usize, f.dhvlen.get() as usize);
        if hl != hash.len() || rest.len() < hl + dv {
            return None;
        }
        Some(DhchapChallenge {
            t_id: f.hdr.t_id.get(),
            hash,
            dh_group: f.dhgid,
            seqnum: f.seqnum.get(),
            challenge: rest[..hl].to_vec(),
            dh_value: rest[hl..hl + dv].to_vec(),
        })
    }
}

/// DH-HMAC-CHAP_Reply's fixed part (Figure 578; Linux `struct nvmf_auth_dhchap_reply_data`): HL at 6, CVALID
/// at 8, DHVLEN at 10, SEQNUM (S2) at 12, then R1 (HL bytes), C2 (HL bytes) and the DH value (DHVLEN bytes).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct ReplyFixed {
    hdr: MessageHeader,
    hl: u8,
    rsvd7: u8,
    cvalid: u8,
    rsvd9: u8,
    dhvlen: U16,
    seqnum: U32,
}
const _: () = assert!(core::mem::size_of::<ReplyFixed>() == 16);
const _: () = assert!(core::mem::offset_of!(ReplyFixed, cvalid) == 8);

/// DH-HMAC-CHAP_Reply: the host's response R1, and for bidirectional authentication its challenge C2 with
/// sequence number S2.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhchapReply {
    /// Transaction identifier.
    pub t_id: u16,
    /// Sequence number S2 (0: no bidirectional authentication).
    pub seqnum: u32,
    /// Response R1 (HL bytes).
    pub response: Vec<u8>,
    /// C2, when CVALID is set (HL bytes).
    pub challenge: Option<Vec<u8>>,
    /// DH value (empty for the NULL group).
    pub dh_value: Vec<u8>,
}

impl DhchapReply {
    /// Parse; the error is the Failure1 reason code explanation.
    pub fn parse(msg: &[u8]) -> Result<DhchapReply, u8> {
        let Ok((f, rest)) = ReplyFixed::read_from_prefix(msg) else {
            return Err(explanation::INCORRECT_PAYLOAD);
        };
        let (hl, dv) = (f.hl as usize, f.dhvlen.get() as usize);
        if rest.len() < 2 * hl + dv {
            return Err(explanation::INCORRECT_PAYLOAD);
        }
        Ok(DhchapReply {
            t_id: f.hdr.t_id.get(),
            seqnum: f.seqnum.get(),
            response: rest[..hl].to_vec(),
            challenge: (f.cvalid & 1 != 0).then(|| rest[hl..2 * hl].to_vec()),
            dh_value: rest[2 * hl..2 * hl + dv].to_vec(),
        })
    }
    /// The message's bytes (C2 zeroed when absent: the field is always there).
    pub fn to_bytes(&self) -> Vec<u8> {
        let hl = self.response.len();
        let f = ReplyFixed {
            hdr: MessageHeader::new(auth_type::DHCHAP, message::REPLY, self.t_id),
            hl: hl as u8,
            rsvd7: 0,
            cvalid: self.challenge.is_some() as u8,
            rsvd9: 0,
            dhvlen: U16::new(self.dh_value.len() as u16),
            seqnum: U32::new(self.seqnum),
        };
        let c2 = self.challenge.clone().unwrap_or_else(|| vec![0; hl]);
        [f.as_bytes(), &self.response, &c2, &self.dh_value].concat()
    }
}

/// DH-HMAC-CHAP_Success1's fixed part (Figure 579): HL at 6, RVALID at 8, then R2 (HL bytes; meaningful when
/// RVALID is set).
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct Success1Fixed {
    hdr: MessageHeader,
    hl: u8,
    rsvd7: u8,
    rvalid: u8,
    rsvd9: [u8; 7],
}
const _: () = assert!(core::mem::size_of::<Success1Fixed>() == 16);

/// DH-HMAC-CHAP_Success1: the host is authenticated; R2 if the host asked for bidirectional authentication.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DhchapSuccess1 {
    /// Transaction identifier.
    pub t_id: u16,
    /// HL: the hash length.
    pub hl: u8,
    /// Response R2 (when RVALID).
    pub response: Option<Vec<u8>>,
}

impl DhchapSuccess1 {
    /// The message's bytes: the fixed part, and HL bytes of R2 (zero when absent, as the Linux host reads HL
    /// bytes after the fixed part either way).
    pub fn to_bytes(&self) -> Vec<u8> {
        let f = Success1Fixed {
            hdr: MessageHeader::new(auth_type::DHCHAP, message::SUCCESS1, self.t_id),
            hl: self.hl,
            rsvd7: 0,
            rvalid: self.response.is_some() as u8,
            rsvd9: [0; 7],
        };
        let r2 = self.response.clone().unwrap_or_else(|| vec![0; self.hl as usize]);
        [f.as_bytes(), &r2].concat()
    }
    /// Parse; None if malformed.
    pub fn parse(msg: &[u8]) -> Option<DhchapSuccess1> {
        let (f, rest) = Success1Fixed::read_from_prefix(msg).ok()?;
        let hl = f.hl as usize;
        let response = if f.rvalid & 1 != 0 { Some(rest.get(..hl)?.to_vec()) } else { None };
        Some(DhchapSuccess1 { t_id: f.hdr.t_id.get(), hl: f.hl, response })
    }
}

/// Length of DH-HMAC-CHAP_Success2 (Figure 580): the header and ten reserved bytes.
pub const SUCCESS2_LEN: usize = 16;

/// DH-HMAC-CHAP_Success2: the host accepted the controller's response.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DhchapSuccess2 {
    /// Transaction identifier.
    pub t_id: u16,
}

impl DhchapSuccess2 {
    /// The message's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut v = MessageHeader::new(auth_type::DHCHAP, message::SUCCESS2, self.t_id).as_bytes().to_vec();
        v.resize(SUCCESS2_LEN, 0);
        v
    }
}

/// AUTH_Failure1 / AUTH_Failure2's layout (Figure 586): reason code at 6, its explanation at 7.
#[derive(Clone, Copy, Debug, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
struct FailureFixed {
    hdr: MessageHeader,
    rescode: u8,
    rescode_exp: u8,
}
const _: () = assert!(core::mem::size_of::<FailureFixed>() == 8);

/// Length of AUTH_Failure1 / AUTH_Failure2.
pub const FAILURE_LEN: usize = 8;

/// AUTH_Failure1 (controller to host) or AUTH_Failure2 (host to controller).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct DhchapFailure {
    /// Transaction identifier.
    pub t_id: u16,
    /// Failure1 (true) or Failure2.
    pub failure1: bool,
    /// Reason code: [`REASON_AUTHENTICATION_FAILURE`].
    pub reason: u8,
    /// Reason code explanation ([`explanation`]).
    pub explanation: u8,
}

impl DhchapFailure {
    /// The message's bytes.
    pub fn to_bytes(&self) -> Vec<u8> {
        let id = if self.failure1 { message::FAILURE1 } else { message::FAILURE2 };
        let f = FailureFixed {
            hdr: MessageHeader::new(auth_type::COMMON, id, self.t_id),
            rescode: self.reason,
            rescode_exp: self.explanation,
        };
        f.as_bytes().to_vec()
    }
    /// Parse; None if shorter than 8 bytes or not a failure message.
    pub fn parse(msg: &[u8]) -> Option<DhchapFailure> {
        let (f, _) = FailureFixed::read_from_prefix(msg).ok()?;
        let failure1 = match (f.hdr.auth_type, f.hdr.auth_id) {
            (auth_type::COMMON, message::FAILURE1) => true,
            (auth_type::COMMON, message::FAILURE2) => false,
            _ => return None,
        };
        Some(DhchapFailure { t_id: f.hdr.t_id.get(), failure1, reason: f.rescode, explanation: f.rescode_exp })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hex(s: &str) -> Vec<u8> {
        (0..s.len()).step_by(2).map(|i| u8::from_str_radix(&s[i..i + 2], 16).unwrap()).collect()
    }

    const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-000000000001";
    const SUBNQN: &str = "nqn.2026-01.io.holdfast:test";

    // The known answers, from Python (hashlib, hmac, zlib.crc32, base64):
    //   secret(k, xx) = "DHHC-1:%02d:%s:" % (xx, b64encode(k + pack("<I", crc32(k))))
    //   transformed   = hmac(key, HOSTNQN + b"NVMe-over-Fabrics", sha256)
    //   R1 = hmac(key, C1 + pack("<I", S1) + pack("<H", T_ID) + b"\0" + b"HostHost" + HOSTNQN + b"\0" + SUBNQN, sha256)
    //   R2 = hmac(key, C2 + pack("<I", S2) + pack("<H", T_ID) + b"\0" + b"Controller" + SUBNQN + b"\0" + HOSTNQN, sha512)
    // with key = bytes(range(32)), C1 = bytes(range(0xa0, 0xc0)), C2 = bytes(range(0xa0, 0xe0)), S1 = 0x01020304,
    // S2 = 0x05060708, T_ID = 0x0102.
    const KAT_SECRET_00: &str = "DHHC-1:00:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";
    const KAT_SECRET_01: &str = "DHHC-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:";
    const KAT_TRANSFORMED_01: &str = "5b78a3f41bf7d05eb6c0cda0eb53cff08bfcd6773e1db312e107b351c1d59091";
    const KAT_R1_SHA256: &str = "cc42726a77999aa2e3725b7cf0f497798f972f2b2a232b0385af0ff60baf6947";
    const KAT_R2_SHA512: &str = "73beced78a0fcd016081aa0191487e66267592f526d4d72530eefc5a9e1ca08babde3ca24a83e0792420cd43e3464a57ea9a93b9749eeb23bad49adfd5c5478f";

    #[test]
    fn secret_parses_with_its_crc_and_round_trips() {
        let key: Vec<u8> = (0u8..32).collect();
        let text = KAT_SECRET_00;
        let s = DhchapSecret::parse(text).unwrap();
        assert_eq!(s.transform, None);
        assert_eq!(s.key, key);
        assert_eq!(s.encode(), text);
        // The trailing colon is optional, surrounding whitespace ignored.
        assert_eq!(DhchapSecret::parse(text.trim_end_matches(':')).unwrap(), s);
        assert_eq!(DhchapSecret::parse(&format!(" {text}\n")).unwrap(), s);
        let s1 = DhchapSecret::parse(KAT_SECRET_01).unwrap();
        assert_eq!(s1.transform, Some(HashId::Sha256));
        for (k, t) in [(48, Some(HashId::Sha384)), (64, Some(HashId::Sha512)), (64, None)] {
            let s = DhchapSecret::new(&vec![7u8; k], t);
            assert_eq!(DhchapSecret::parse(&s.encode()).unwrap(), s);
        }
    }

    #[test]
    fn bad_secrets_say_why_and_never_show_the_key() {
        let good = KAT_SECRET_00;
        assert_eq!(DhchapSecret::parse("DHHC-2:00:abc:"), Err(SecretError::Format));
        assert_eq!(DhchapSecret::parse("DHHC-1"), Err(SecretError::Format));
        assert_eq!(DhchapSecret::parse(&good.replace(":00:", ":04:")), Err(SecretError::TransformHash("04".into())));
        // Without the XX field the key stands where XX belongs: refused as malformed, naming none of it.
        let no_xx = good.replacen(":00:", ":", 1);
        assert_eq!(DhchapSecret::parse(&no_xx), Err(SecretError::Format));
        assert_eq!(DhchapSecret::parse("DHHC-1:00:!!!!:"), Err(SecretError::Base64));
        assert_eq!(DhchapSecret::parse("DHHC-1:00:AAAA:"), Err(SecretError::Length(3)));
        // One character of the key changed: the CRC catches it.
        let mut bad = good.to_string();
        bad.replace_range(11..12, if &good[11..12] == "B" { "C" } else { "B" });
        assert_eq!(DhchapSecret::parse(&bad), Err(SecretError::Crc));
        let dbg = format!("{:?}", DhchapSecret::parse(good).unwrap());
        assert!(!dbg.contains("0, 1, 2") && dbg.contains("32 bytes"), "{dbg}");
    }

    #[test]
    fn key_transformation_known_answer() {
        let s = DhchapSecret::parse(KAT_SECRET_01).unwrap();
        assert_eq!(*s.transform(HOSTNQN), hex(KAT_TRANSFORMED_01));
        assert_eq!(*DhchapSecret::parse(KAT_SECRET_00).unwrap().transform(HOSTNQN), (0u8..32).collect::<Vec<_>>());
    }

    #[test]
    fn responses_known_answer() {
        let key: Vec<u8> = (0u8..32).collect();
        let c1: Vec<u8> = (0xa0u8..0xc0).collect();
        let r1 = host_response(HashId::Sha256, &key, &c1, 0x0102_0304, 0x0102, HOSTNQN, SUBNQN);
        assert_eq!(r1, hex(KAT_R1_SHA256));
        assert!(verify_host_response(HashId::Sha256, &key, &c1, 0x0102_0304, 0x0102, HOSTNQN, SUBNQN, &r1));
        let mut wrong = r1.clone();
        wrong[31] ^= 1;
        assert!(!verify_host_response(HashId::Sha256, &key, &c1, 0x0102_0304, 0x0102, HOSTNQN, SUBNQN, &wrong));
        assert!(!verify_host_response(HashId::Sha256, &key, &c1, 0x0102_0304, 0x0102, HOSTNQN, SUBNQN, &r1[..31]));
        let c2: Vec<u8> = (0xa0u8..0xe0).collect();
        let r2 = controller_response(HashId::Sha512, &key, &c2, 0x0506_0708, 0x0102, SUBNQN, HOSTNQN);
        assert_eq!(r2, hex(KAT_R2_SHA512));
        assert!(verify_controller_response(HashId::Sha512, &key, &c2, 0x0506_0708, 0x0102, SUBNQN, HOSTNQN, &r2));
    }

    #[test]
    fn hash_ids() {
        for h in HashId::ALL {
            assert_eq!(HashId::from_id(h.id()), Some(h));
            assert_eq!(HashId::from_name(h.name()), Some(h));
            assert_eq!(hmac(h, b"k", &[b"x"]).len(), h.len());
        }
        assert_eq!(HashId::from_name("hmac(sha384)"), Some(HashId::Sha384));
        assert_eq!(HashId::from_name("md5"), None);
        assert_eq!(HashId::from_id(0), None);
    }

    #[test]
    fn messages_round_trip_at_their_offsets() {
        // A Linux host's Negotiate: every hash, every group.
        let n = AuthNegotiate {
            t_id: 3,
            sc_c: 0,
            napd: 1,
            authid: AUTH_ID_DHCHAP,
            hash_ids: vec![1, 2, 3],
            dh_group_ids: vec![0, 1, 2, 3, 4, 5],
        };
        let b = n.to_bytes();
        assert_eq!(b.len(), NEGOTIATE_LEN);
        assert_eq!(&b[..8], &[0, 0, 0, 0, 3, 0, 0, 1]);
        assert_eq!(&b[8..12], &[1, 0, 3, 6]);
        assert_eq!(&b[12..15], &[1, 2, 3]);
        assert_eq!(&b[42..48], &[0, 1, 2, 3, 4, 5]);
        assert_eq!(AuthNegotiate::parse(&b), Ok(n));
        assert_eq!(AuthNegotiate::parse(&b[..40]), Err(explanation::INCORRECT_PAYLOAD));

        let c = DhchapChallenge {
            t_id: 3,
            hash: HashId::Sha384,
            dh_group: 0,
            seqnum: 0x0a0b0c0d,
            challenge: vec![9; 48],
            dh_value: vec![],
        };
        let b = c.to_bytes();
        assert_eq!(&b[..16], &[1, 1, 0, 0, 3, 0, 48, 0, 2, 0, 0, 0, 0x0d, 0x0c, 0x0b, 0x0a]);
        assert_eq!(b.len(), 16 + 48);
        assert_eq!(DhchapChallenge::parse(&b), Some(c));

        let r =
            DhchapReply { t_id: 3, seqnum: 7, response: vec![1; 32], challenge: Some(vec![2; 32]), dh_value: vec![] };
        let b = r.to_bytes();
        assert_eq!(&b[..16], &[1, 2, 0, 0, 3, 0, 32, 0, 1, 0, 0, 0, 7, 0, 0, 0]);
        assert_eq!(b.len(), 16 + 64);
        assert_eq!(DhchapReply::parse(&b), Ok(r));
        assert_eq!(DhchapReply::parse(&b[..60]), Err(explanation::INCORRECT_PAYLOAD));
        let r = DhchapReply { t_id: 3, seqnum: 0, response: vec![1; 32], challenge: None, dh_value: vec![] };
        assert_eq!(DhchapReply::parse(&r.to_bytes()), Ok(r));

        let s = DhchapSuccess1 { t_id: 3, hl: 32, response: Some(vec![5; 32]) };
        let b = s.to_bytes();
        assert_eq!(&b[..9], &[1, 3, 0, 0, 3, 0, 32, 0, 1]);
        assert_eq!(DhchapSuccess1::parse(&b), Some(s));
        let s = DhchapSuccess1 { t_id: 3, hl: 32, response: None };
        assert_eq!(s.to_bytes().len(), 48);
        assert_eq!(DhchapSuccess1::parse(&s.to_bytes()), Some(s));

        assert_eq!(DhchapSuccess2 { t_id: 3 }.to_bytes(), [&[1u8, 4, 0, 0, 3, 0][..], &[0; 10]].concat());

        let f = DhchapFailure { t_id: 3, failure1: true, reason: 1, explanation: explanation::FAILED };
        assert_eq!(f.to_bytes(), vec![0, 0xF1, 0, 0, 3, 0, 1, 1]);
        assert_eq!(DhchapFailure::parse(&f.to_bytes()), Some(f));
        assert_eq!(
            MessageHeader::peek(&f.to_bytes()).map(|h| (h.auth_type, h.auth_id, h.t_id.get())),
            Some((0, 0xF1, 3))
        );

        let cmd = AuthCommand::new(true, 72);
        let sqe = cmd.to_sqe();
        let b = sqe.as_bytes();
        assert_eq!((b[0], b[4], b[41], b[42], b[43]), (0x7F, 0x05, 1, 1, 0xE9));
        assert_eq!(&b[44..48], &72u32.to_le_bytes());
        assert_eq!(sqe.dptr.len(), 72);
        assert_eq!(AuthCommand::from_sqe(&sqe).len.get(), 72);
    }

    /// Sequence numbers start where the random start says and count up; never 0: a start of 0 and the count
    /// wrapping give 1 (the loop before this function spun for ever at the wrap, in both the host and the target).
    #[test]
    fn sequence_numbers_count_up_from_a_random_start_and_skip_zero() {
        use core::sync::atomic::AtomicU32;
        let c = AtomicU32::new(0);
        assert_eq!(next_seqnum(&c, || 7), 7);
        assert_eq!(next_seqnum(&c, || 99), 8, "the start is drawn once");
        let c = AtomicU32::new(0);
        assert_eq!(next_seqnum(&c, || 0), 1, "a start of 0");
        let c = AtomicU32::new(u32::MAX);
        assert_eq!(next_seqnum(&c, || 5), 1, "the wrap");
        assert_eq!(next_seqnum(&c, || 5), 2);
    }
}
