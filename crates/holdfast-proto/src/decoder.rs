//! The streaming PDU decoder: bytes in, [`Pdu`]s out, never buffering more than the negotiated limits allow.
//!
//! Feed it the connection's receive buffer; it validates each PDU's common header as soon as the first 8
//! bytes arrive (type, HLEN, PDO, PLEN against the limits), so a peer's length field can never make us
//! buffer more than one maximal PDU. Every framing violation is a [`Fatal`] error naming the FES/FEI for the
//! TermReq (NVMe/TCP 1.0, §3.6.2.x and §3.7 "Error Handling"); a data digest mismatch is reported separately
//! because it fails one command, not the connection.

use crate::cqe::CompletionEntry;
use crate::digest::{crc32c, DIGEST_LEN};
use crate::pdu::*;
use crate::sqe::SubmissionEntry;
use bytes::{Buf, Bytes, BytesMut};
use zerocopy::FromBytes;

/// Which side is decoding: a controller receives host-to-controller PDUs and vice versa.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Role {
    /// We are the controller (target).
    Controller,
    /// We are the host (initiator).
    Host,
}

/// Largest PDU data the decoder accepts, per PDU type.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// In-capsule data of a CapsuleCmd (IOCCSZ × 16 − 64 for I/O queues; 8192 for the admin queue).
    pub max_incapsule: u32,
    /// Data of one H2CData PDU (our MAXH2CDATA).
    pub max_h2c_data: u32,
    /// Data of one C2HData PDU (the host's largest transfer).
    pub max_c2h_data: u32,
}

impl Default for Limits {
    fn default() -> Self {
        Limits { max_incapsule: 8192, max_h2c_data: 128 * 1024, max_c2h_data: 1024 * 1024 }
    }
}

/// A fatal protocol error: the connection must send a TermReq with these values and close.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{} (FEI {fei:#x}): {reason}", fes.name())]
pub struct Fatal {
    /// Fatal Error Status.
    pub fes: Fes,
    /// Fatal Error Information (offset of the bad field for FES 1 and 6).
    pub fei: u32,
    /// The header of the offending PDU (at most 128 bytes), for the TermReq's data.
    pub header: Bytes,
    /// What was wrong, for logs.
    pub reason: &'static str,
    /// The offending PDU is itself a termination request: the connection is closed without one in answer
    /// (NVMe/TCP 1.0, transport errors: a termination request with an invalid PDU length ends the connection
    /// at once, no error reported; the Linux host's nvme_tcp_handle_c2h_term answers none either).
    pub close_silently: bool,
}

/// What the decoder reports instead of a PDU.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum DecodeError {
    /// A framing error: send a TermReq and close.
    #[error("fatal PDU error: {0}")]
    Fatal(#[from] Fatal),
    /// The data digest did not match: the PDU is returned so that the command it belongs to can be failed.
    #[error("data digest mismatch on {:?} PDU (expected {expected:#010x}, received {received:#010x})", pdu.pdu_type())]
    DataDigest {
        /// The PDU, with its (corrupt) data.
        pdu: Box<Pdu>,
        /// The CRC32C we computed.
        expected: u32,
        /// The digest on the wire.
        received: u32,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum State {
    /// Before ICReq/ICResp: only the IC PDU (and a TermReq) may arrive.
    Init,
    /// After the exchange.
    Ready,
    /// After a fatal error: nothing more is decoded.
    Failed,
}

/// Bytes still to come of the PDU that starts at the front of `buf`, once its common header (with PLEN) is in
/// (NVMe/TCP 1.0 §3.6.1: PLEN, bytes 4..8, counts the whole PDU with digests and padding); `None` before that.
/// PLEN is the peer's claim until [`PduDecoder::decode`] has checked the whole header: use this to size socket
/// reads, never to allocate.
pub fn pdu_rest(buf: &[u8]) -> Option<usize> {
    Some(plen(buf)?.saturating_sub(buf.len()))
}

/// PLEN of the PDU at the front of `buf`, once the common header's first eight bytes are in.
fn plen(buf: &[u8]) -> Option<usize> {
    let at = offset::PLEN as usize;
    Some(u32::from_le_bytes(buf.get(at..at + 4)?.try_into().ok()?) as usize)
}

/// The submission entries of the command capsules whose headers are already in `buf` (which starts at a PDU
/// boundary), in order, without decoding or consuming anything: for hints that look ahead, such as bringing in
/// what a batch of reads will touch before the first of them runs. Walking needs only each common header's
/// type, HLEN and PLEN (NVMe/TCP 1.0 §3.6.1; a CapsuleCmd's SQE follows its 8-byte common header, §3.6.2.5), and
/// nothing else is checked: what this yields is the peer's claim, fit for hints only. It stops at the first PDU
/// whose header is not all in or whose lengths do not add up.
pub fn peek_capsule_sqes(buf: &[u8]) -> impl Iterator<Item = &SubmissionEntry> + Clone {
    let mut pos = 0usize;
    std::iter::from_fn(move || loop {
        let pdu = buf.get(pos..)?;
        let ch = CommonHeader::ref_from_prefix(pdu).ok()?.0;
        let (hlen, plen) = (ch.hlen as usize, ch.plen.get() as usize);
        if hlen < CH_LEN || plen < hlen {
            return None;
        }
        pos = pos.saturating_add(plen);
        if ch.pdu_type == PduType::CapsuleCmd as u8 && hlen == HLEN_CAPSULE_CMD as usize {
            return SubmissionEntry::ref_from_prefix(pdu.get(CH_LEN..hlen)?).ok().map(|(sqe, _)| sqe);
        }
    })
}

/// The streaming decoder for one connection.
#[derive(Clone, Debug)]
pub struct PduDecoder {
    role: Role,
    state: State,
    hdgst: bool,
    ddgst: bool,
    pda: u8,
    limits: Limits,
    /// The header (and header digest) of the last data PDU, R2T or ICReq/ICResp decoded:
    /// [`PduDecoder::last_header`].
    last_header: [u8; TERM_MAX_DATA],
    last_header_len: usize,
}

impl PduDecoder {
    /// A decoder in the initial state, expecting the ICReq (controller) or ICResp (host).
    pub fn new(role: Role, limits: Limits) -> Self {
        PduDecoder {
            role,
            state: State::Init,
            hdgst: false,
            ddgst: false,
            pda: 0,
            limits,
            last_header: [0; TERM_MAX_DATA],
            last_header_len: 0,
        }
    }

    /// The header, with its digest, of the last H2CData, C2HData, R2T, ICReq or ICResp PDU decoded (empty
    /// before the first): the data of a termination request over a field only the receiver of a well-formed
    /// PDU can judge (a TTAG no R2T gave, an offset out of order, an R2T for data already sent, parameters
    /// refused), which carries the offending PDU's header as received (NVMe/TCP 1.0 Figures 24 and 25).
    /// Capsules are not kept: they are most of the PDUs decoded (a host refusing a CapsuleResp for a CID
    /// not outstanding re-encodes its header).
    pub fn last_header(&self) -> &[u8] {
        &self.last_header[..self.last_header_len]
    }

    fn keep_header(&mut self, ty: PduType, header: &[u8]) {
        if matches!(ty, PduType::H2CData | PduType::C2HData | PduType::R2T | PduType::IcReq | PduType::IcResp) {
            let n = header.len().min(TERM_MAX_DATA);
            self.last_header[..n].copy_from_slice(&header[..n]);
            self.last_header_len = n;
        }
    }

    /// Enter the post-IC state with the negotiated digests and the PDU data alignment *we* asked the peer
    /// for (our HPDA as host, our CPDA as controller).
    pub fn set_negotiated(&mut self, hdgst: bool, ddgst: bool, our_pda: u8) {
        self.hdgst = hdgst;
        self.ddgst = ddgst;
        self.pda = our_pda.min(MAX_PDA);
        if self.state == State::Init {
            self.state = State::Ready;
        }
    }

    /// Change the data limits (an admin queue may become an I/O queue's neighbour with other limits).
    pub fn set_limits(&mut self, limits: Limits) {
        self.limits = limits;
    }

    /// The current limits.
    pub fn limits(&self) -> Limits {
        self.limits
    }

    /// How many bytes the PDU at the front of `buf` needs in all, once its common header is there (for
    /// reserving buffer space). Call after `decode` returned `Ok(None)`.
    pub fn pending_len(&self, buf: &[u8]) -> Option<usize> {
        plen(buf)
    }

    fn fail(&mut self, fes: Fes, fei: u32, buf: &[u8], reason: &'static str) -> DecodeError {
        self.state = State::Failed;
        let mut hlen = if buf.len() > 2 { (buf[2] as usize).max(CH_LEN) } else { buf.len() };
        // A HLEN beyond the PDU's own length says nothing of where its header ends: the common header alone,
        // not the bytes of the PDUs after it.
        if plen(buf).is_some_and(|plen| plen < hlen) {
            hlen = CH_LEN;
        }
        let n = hlen.min(buf.len()).min(TERM_MAX_DATA);
        // A termination request travelling our way (one of the other direction is a PDU we refuse as any).
        let incoming_term = if self.role == Role::Controller { PduType::H2CTermReq } else { PduType::C2HTermReq };
        let close_silently = buf.first().is_some_and(|&t| t == incoming_term as u8);
        DecodeError::Fatal(Fatal { fes, fei, header: Bytes::copy_from_slice(&buf[..n]), reason, close_silently })
    }

    /// Decode one PDU from the front of `buf`, consuming it. `Ok(None)` means more bytes are needed.
    pub fn decode(&mut self, buf: &mut BytesMut) -> Result<Option<Pdu>, DecodeError> {
        if self.state == State::Failed {
            return Err(self.fail(Fes::SequenceError, 0, &[], "decoder already failed"));
        }
        if buf.len() < CH_LEN {
            return Ok(None);
        }
        let (ty_raw, fl, hlen, pdo) = (buf[0], buf[1], buf[2], buf[3]);
        let Some(plen) = plen(buf) else { return Ok(None) };

        // PDU type: known, travelling in our direction, and allowed in this state.
        let Some(ty) = PduType::from_u8(ty_raw) else {
            return Err(self.fail(Fes::InvalidHeaderField, 0, buf, "unknown PDU type"));
        };
        if ty.is_h2c() != (self.role == Role::Controller) {
            return Err(self.fail(Fes::InvalidHeaderField, 0, buf, "PDU type for the other direction"));
        }
        let is_term = matches!(ty, PduType::H2CTermReq | PduType::C2HTermReq);
        let is_ic = matches!(ty, PduType::IcReq | PduType::IcResp);
        if hlen != ty.hlen() {
            return Err(self.fail(Fes::InvalidHeaderField, offset::HLEN, buf, "HLEN does not match the PDU type"));
        }
        let hlen = hlen as usize;
        // A PDU of a known type and length: its whole header (within PLEN) before anything else in it is judged,
        // so that a bad header that arrives in pieces is returned whole in the termination request (NVMe/TCP 1.0
        // Figures 24 and 25), as one that arrives at once is (it got the 8 bytes of the common header only: found
        // by a review). At most 128 bytes, and a peer that never sends the rest meets the connection's deadlines.
        // (An unknown type, or one for the other direction, is refused on its common header: what follows is
        // not known to be a header at all, say a web server's answer, which may be shorter.)
        if buf.len() < hlen.min(plen.max(CH_LEN)) {
            return Ok(None);
        }
        match self.state {
            State::Init if !is_ic && !is_term => {
                return Err(self.fail(Fes::SequenceError, 0, buf, "PDU before connection initialization"))
            }
            State::Ready if is_ic => return Err(self.fail(Fes::SequenceError, 0, buf, "second ICReq/ICResp")),
            _ => {}
        }

        // With header digests, the digest first (the header is at most 128 bytes, HLEN fixed by the type): a bit
        // flipped on the way in FLAGS, PDO or PLEN is then reported as what it is, a Header Digest Error, not as
        // the bad field it makes (Linux nvmet verifies the digest before the header's fields too).
        let digestible = ty.digestible();
        let hd = if digestible && self.hdgst { DIGEST_LEN } else { 0 };
        if hd != 0 {
            if buf.len() < hlen + hd {
                return Ok(None);
            }
            let want = crc32c(&buf[..hlen]);
            let got = u32::from_le_bytes([buf[hlen], buf[hlen + 1], buf[hlen + 2], buf[hlen + 3]]);
            if want != got {
                return Err(self.fail(Fes::HeaderDigestError, 0, buf, "header digest mismatch"));
            }
        }

        // Digest flags must say what was negotiated.
        if digestible && ((fl & flags::HDGSTF != 0) != self.hdgst) {
            return Err(self.fail(
                Fes::InvalidHeaderField,
                offset::FLAGS,
                buf,
                "HDGSTF differs from the negotiated header digest",
            ));
        }
        if !digestible && fl & (flags::HDGSTF | flags::DDGSTF) != 0 {
            return Err(self.fail(
                Fes::InvalidHeaderField,
                offset::FLAGS,
                buf,
                "digest flag on a PDU that never carries digests",
            ));
        }

        // Lengths: PLEN and PDO against the type and the limits, before buffering anything.
        let data_len;
        if is_term {
            if plen < hlen || plen > hlen + TERM_MAX_DATA {
                return Err(self.fail(Fes::InvalidHeaderField, offset::PLEN, buf, "TermReq PLEN out of range"));
            }
            data_len = plen - hlen;
        } else if is_ic {
            if plen != hlen {
                return Err(self.fail(Fes::InvalidHeaderField, offset::PLEN, buf, "ICReq/ICResp PLEN is not 128"));
            }
            data_len = 0;
        } else if plen < hlen + hd {
            // Not even the header (and its digest) fits: PLEN is what is wrong, whatever PDO says.
            return Err(self.fail(Fes::InvalidHeaderField, offset::PLEN, buf, "PLEN smaller than the header"));
        } else if plen == hlen + hd {
            data_len = 0;
            if fl & flags::DDGSTF != 0 {
                return Err(self.fail(Fes::InvalidHeaderField, offset::FLAGS, buf, "DDGSTF set on a PDU without data"));
            }
            if matches!(ty, PduType::H2CData | PduType::C2HData) {
                return Err(self.fail(Fes::InvalidHeaderField, offset::PLEN, buf, "data PDU without data"));
            }
        } else {
            if !ty.may_carry_data() {
                return Err(self.fail(
                    Fes::InvalidHeaderField,
                    offset::PLEN,
                    buf,
                    "PLEN does not match a PDU without data",
                ));
            }
            let dd = if self.ddgst { DIGEST_LEN } else { 0 };
            if (fl & flags::DDGSTF != 0) != self.ddgst {
                return Err(self.fail(
                    Fes::InvalidHeaderField,
                    offset::FLAGS,
                    buf,
                    "DDGSTF differs from the negotiated data digest",
                ));
            }
            let pdo = pdo as usize;
            let align = (self.pda as usize + 1) * 4;
            if pdo < hlen + hd || !pdo.is_multiple_of(align) {
                return Err(self.fail(
                    Fes::InvalidHeaderField,
                    offset::PDO,
                    buf,
                    "PDO is not past the header or not aligned",
                ));
            }
            if plen < pdo + dd + 1 {
                return Err(self.fail(Fes::InvalidHeaderField, offset::PLEN, buf, "PLEN too small for PDO and digest"));
            }
            data_len = plen - pdo - dd;
            let max = match ty {
                PduType::CapsuleCmd => self.limits.max_incapsule,
                PduType::H2CData => self.limits.max_h2c_data,
                _ => self.limits.max_c2h_data,
            } as usize;
            if data_len > max {
                // FES 05h is Data Transfer Limit Exceeded in a C2HTermReq but R2T Limit Exceeded in an H2CTermReq
                // (NVMe/TCP 1.0 Figures 24 and 25): a host refuses C2HData longer than any of its transfers as
                // Data Transfer Out of Range.
                let fes = if self.role == Role::Host { Fes::DataOutOfRange } else { Fes::DataLimitExceeded };
                return Err(self.fail(fes, 0, buf, "PDU data longer than negotiated"));
            }
        }

        // The whole header (its digest, checked above) before its fields are read.
        if buf.len() < hlen + hd {
            return Ok(None);
        }
        if matches!(ty, PduType::H2CData | PduType::C2HData) {
            let datal = u32::from_le_bytes(buf[16..20].try_into().unwrap_or_default()) as usize;
            if datal != data_len {
                return Err(self.fail(
                    Fes::InvalidHeaderField,
                    offset::DATA_DATAL,
                    buf,
                    "DATAL differs from the PDU's data length",
                ));
            }
        }
        if buf.len() < plen {
            buf.reserve(plen - buf.len());
            return Ok(None);
        }

        // The whole PDU is here. Without data (a completion, a command without in-capsule data, R2T) it is
        // read in place and consumed; with data it is split off without copying, the data a slice of it.
        if data_len == 0 {
            self.keep_header(ty, &buf[..hlen + hd]);
            let pdu = header_pdu(ty, fl, &buf[..hlen], Bytes::new());
            buf.advance(plen);
            return Ok(Some(pdu));
        }
        // The header is read in place and the data split off on its own: one more reference to the receive
        // buffer, not a reference to the whole PDU and a second one for the data slice.
        let start = if is_term { hlen } else { pdo as usize };
        let received = (self.ddgst && digestible).then(|| (&buf[plen - DIGEST_LEN..plen]).get_u32_le());
        self.keep_header(ty, &buf[..hlen + hd]);
        let mut pdu = header_pdu(ty, fl, &buf[..hlen], Bytes::new());
        let mut whole = buf.split_to(plen);
        whole.advance(start);
        whole.truncate(data_len);
        let data = whole.freeze();
        let digest_err = received.and_then(|got| {
            let want = crc32c(&data);
            (want != got).then_some((want, got))
        });
        pdu.set_data(data);
        if let Some((expected, received)) = digest_err {
            return Err(DecodeError::DataDigest { pdu: Box::new(pdu), expected, received });
        }
        Ok(Some(pdu))
    }
}

/// The PDU whose header `h` (HLEN bytes, already checked against the type and the negotiated limits) and
/// data are given: the PDU-specific header fields at their offsets (NVMe/TCP 1.0 §3.6.2).
fn header_pdu(ty: PduType, fl: u8, h: &[u8], data: Bytes) -> Pdu {
    let u16_at = |o: usize| u16::from_le_bytes([h[o], h[o + 1]]);
    let u32_at = |o: usize| u32::from_le_bytes([h[o], h[o + 1], h[o + 2], h[o + 3]]);
    match ty {
        PduType::IcReq => Pdu::IcReq(IcReq {
            pfv: u16_at(8),
            hpda: h[10],
            hdgst: h[11] & 1 != 0,
            ddgst: h[11] & 2 != 0,
            maxr2t: u32_at(12),
        }),
        PduType::IcResp => Pdu::IcResp(IcResp {
            pfv: u16_at(8),
            cpda: h[10],
            hdgst: h[11] & 1 != 0,
            ddgst: h[11] & 2 != 0,
            maxh2cdata: u32_at(12),
        }),
        PduType::H2CTermReq | PduType::C2HTermReq => {
            let t = TermReq { fes: u16_at(8), fei: u32_at(10), data };
            if ty == PduType::H2CTermReq {
                Pdu::H2CTermReq(t)
            } else {
                Pdu::C2HTermReq(t)
            }
        }
        PduType::CapsuleCmd => {
            Pdu::CapsuleCmd(CapsuleCmd { sqe: SubmissionEntry::from_slice(&h[8..72]).unwrap_or_default(), data })
        }
        PduType::CapsuleResp => {
            Pdu::CapsuleResp(CapsuleResp { cqe: CompletionEntry::from_slice(&h[8..24]).unwrap_or_default() })
        }
        PduType::H2CData => Pdu::H2CData(H2CData {
            cccid: u16_at(8),
            ttag: u16_at(10),
            datao: u32_at(12),
            data,
            last: fl & flags::LAST_PDU != 0,
        }),
        PduType::C2HData => Pdu::C2HData(C2HData {
            cccid: u16_at(8),
            datao: u32_at(12),
            data,
            last: fl & flags::LAST_PDU != 0,
            success: fl & flags::SUCCESS != 0,
        }),
        PduType::R2T => Pdu::R2T(R2T { cccid: u16_at(8), ttag: u16_at(10), r2to: u32_at(12), r2tl: u32_at(16) }),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::status::Status;

    fn ready(role: Role, hd: bool, dd: bool) -> PduDecoder {
        let mut d = PduDecoder::new(role, Limits::default());
        d.set_negotiated(hd, dd, 0);
        d
    }

    fn roundtrip(role: Role, f: Framing, pdu: Pdu) {
        let bytes = pdu.to_bytes(&f);
        let mut d = ready(role, f.hdgst, f.ddgst);
        // Feed byte by byte: the decoder must wait, then produce exactly the PDU.
        let mut buf = BytesMut::new();
        for (i, b) in bytes.iter().enumerate() {
            buf.extend_from_slice(&[*b]);
            let r = d.decode(&mut buf).unwrap();
            if i + 1 < bytes.len() {
                assert!(r.is_none(), "produced early at {i}");
            } else {
                assert_eq!(r, Some(pdu.clone()));
            }
        }
        assert!(buf.is_empty());
    }

    #[test]
    fn peek_capsule_sqes_walks_whole_headers_only() {
        for (hd, dd) in [(false, false), (true, true)] {
            let f = Framing { hdgst: hd, ddgst: dd, pda: 0 };
            let sqe = |cid: u16| {
                let mut s = SubmissionEntry::new(2, cid);
                s.nsid.set(1);
                s
            };
            let mut buf = Vec::new();
            buf.extend(Pdu::CapsuleCmd(CapsuleCmd { sqe: sqe(1), data: Bytes::new() }).to_bytes(&f));
            let h2c = H2CData { cccid: 9, ttag: 9, datao: 0, data: Bytes::from(vec![7; 100]), last: true };
            buf.extend(Pdu::H2CData(h2c).to_bytes(&f));
            buf.extend(Pdu::CapsuleCmd(CapsuleCmd { sqe: sqe(2), data: Bytes::from(vec![1; 64]) }).to_bytes(&f));
            let third = Pdu::CapsuleCmd(CapsuleCmd { sqe: sqe(3), data: Bytes::from(vec![1; 64]) }).to_bytes(&f);
            // The third's header all in but not its data: still seen. Only part of its header: not.
            let mut with_third = buf.clone();
            with_third.extend(&third[..80]);
            let cids = |b: &[u8]| peek_capsule_sqes(b).map(|s| s.cid()).collect::<Vec<_>>();
            assert_eq!(cids(&with_third), [1, 2, 3]);
            let mut partial = buf.clone();
            partial.extend(&third[..40]);
            assert_eq!(cids(&partial), [1, 2]);
            // Lengths that do not add up end the walk (the decoder will refuse that PDU).
            let mut bad = third.to_vec();
            bad[4..8].copy_from_slice(&4u32.to_le_bytes());
            buf.extend(&bad);
            buf.extend(Pdu::CapsuleCmd(CapsuleCmd { sqe: sqe(4), data: Bytes::new() }).to_bytes(&f));
            assert_eq!(cids(&buf), [1, 2]);
            assert_eq!(cids(&[]), Vec::<u16>::new());
        }
    }

    #[test]
    fn roundtrips_every_digest_combination() {
        for (hd, dd) in [(false, false), (true, false), (false, true), (true, true)] {
            let f = Framing { hdgst: hd, ddgst: dd, pda: 0 };
            let mut sqe = SubmissionEntry::new(2, 7);
            sqe.nsid.set(1);
            roundtrip(Role::Controller, f, Pdu::CapsuleCmd(CapsuleCmd { sqe, data: Bytes::new() }));
            roundtrip(Role::Controller, f, Pdu::CapsuleCmd(CapsuleCmd { sqe, data: Bytes::from(vec![3; 40]) }));
            roundtrip(
                Role::Controller,
                f,
                Pdu::H2CData(H2CData { cccid: 1, ttag: 2, datao: 8, data: Bytes::from(vec![5; 33]), last: true }),
            );
            roundtrip(
                Role::Host,
                f,
                Pdu::C2HData(C2HData { cccid: 1, datao: 0, data: Bytes::from(vec![5; 64]), last: true, success: true }),
            );
            roundtrip(Role::Host, f, Pdu::R2T(R2T { cccid: 4, ttag: 5, r2to: 4096, r2tl: 8192 }));
            let cqe = CompletionEntry::new(4, Status::LBA_OUT_OF_RANGE, 0);
            roundtrip(Role::Host, f, Pdu::CapsuleResp(CapsuleResp { cqe }));
            roundtrip(Role::Host, f, Pdu::C2HTermReq(TermReq { fes: 1, fei: 4, data: Bytes::from(vec![9; 24]) }));
        }
    }

    #[test]
    fn back_to_back_pdus_with_and_without_data_keep_earlier_data_intact() {
        // A receive buffer holds data PDUs (split off, their data shared) and PDUs without data (read in
        // place and consumed); the buffer is then refilled. Data handed out earlier must not change.
        for (hd, dd) in [(false, false), (true, true)] {
            let f = Framing { hdgst: hd, ddgst: dd, pda: 0 };
            let data = |cid: u16, b: u8| {
                Pdu::C2HData(C2HData {
                    cccid: cid,
                    datao: 0,
                    data: Bytes::from(vec![b; 4096]),
                    last: true,
                    success: false,
                })
            };
            let resp = |cid: u16| Pdu::CapsuleResp(CapsuleResp { cqe: CompletionEntry::new(cid, Status::SUCCESS, 0) });
            let r2t = Pdu::R2T(R2T { cccid: 3, ttag: 1, r2to: 0, r2tl: 4096 });
            let first = [data(1, 0xA1), resp(1), r2t.clone(), data(2, 0xB2), resp(2)];
            let mut d = ready(Role::Host, hd, dd);
            let mut buf = BytesMut::new();
            for p in &first {
                buf.extend_from_slice(&p.to_bytes(&f));
            }
            let mut got = Vec::new();
            while let Some(p) = d.decode(&mut buf).unwrap() {
                got.push(p);
            }
            assert_eq!(got, first);
            assert!(buf.is_empty());
            // Refill the same buffer (its space may be reused) and decode again.
            let second = [resp(7), data(8, 0xC3), resp(8)];
            for p in &second {
                buf.extend_from_slice(&p.to_bytes(&f));
            }
            // Half of the last PDU first: nothing is consumed until it is whole.
            let last = buf.split_off(buf.len() - 10);
            let mut again = Vec::new();
            while let Some(p) = d.decode(&mut buf).unwrap() {
                again.push(p);
            }
            assert_eq!(again, second[..2]);
            assert!(d.decode(&mut buf).unwrap().is_none());
            buf.extend_from_slice(&last);
            again.push(d.decode(&mut buf).unwrap().expect("the completed PDU"));
            assert_eq!(again, second);
            assert_eq!(got, first, "data from the first fill changed when the buffer was refilled");
        }
    }

    fn fatal(d: &mut PduDecoder, bytes: &[u8]) -> Fatal {
        match d.decode(&mut BytesMut::from(bytes)) {
            Err(DecodeError::Fatal(f)) => f,
            other => panic!("expected a fatal error, got {other:?}"),
        }
    }

    /// A malformed termination request travelling our way is closed on without one in answer; one of the
    /// other direction, or any other malformed PDU, is answered as usual.
    #[test]
    fn a_malformed_termination_request_is_closed_on_silently() {
        let term = |ty: u8| {
            let mut h = vec![ty, 0, 24, 0, 200, 0, 0, 0];
            h.resize(24, 0);
            h
        };
        assert!(fatal(&mut ready(Role::Controller, false, false), &term(0x02)).close_silently, "H2CTermReq");
        assert!(fatal(&mut ready(Role::Host, false, false), &term(0x03)).close_silently, "C2HTermReq");
        assert!(!fatal(&mut ready(Role::Controller, false, false), &term(0x03)).close_silently, "the other way");
        let mut capsule = vec![0x04, 0, 72, 72, 0xFF, 0xFF, 0xFF, 0xFF];
        capsule.resize(72, 0);
        assert!(!fatal(&mut ready(Role::Controller, false, false), &capsule).close_silently);
    }

    /// The termination request carries the offending header, but never bytes past the PDU's own length: a
    /// HLEN larger than PLEN gives the common header alone.
    #[test]
    fn a_termination_request_carries_no_bytes_past_the_pdu() {
        let mut b = vec![0x04, 0, 200, 0, 24, 0, 0, 0];
        b.resize(24, 0);
        b.extend_from_slice(&[0xEE; 200]); // the next PDU's bytes
        let f = fatal(&mut ready(Role::Controller, false, false), &b);
        assert_eq!(&f.header[..], &b[..8]);
    }

    #[test]
    fn rejects_before_buffering_a_huge_plen() {
        let mut d = ready(Role::Controller, false, false);
        // H2CData header claiming 4 GiB.
        let mut h = vec![0x06, flags::LAST_PDU, 24, 24, 0xFF, 0xFF, 0xFF, 0xFF];
        h.resize(24, 0);
        let f = fatal(&mut d, &h);
        assert_eq!(f.fes, Fes::DataLimitExceeded);
        assert_eq!(&f.header[..], &h[..]);
    }

    #[test]
    fn a_host_refuses_huge_c2h_data_as_out_of_range_not_r2t_limit_exceeded() {
        let mut d = ready(Role::Host, false, false);
        // C2HData header claiming 4 GiB: FES 05h would read "R2T Limit Exceeded" in the H2CTermReq.
        let mut h = vec![0x07, flags::LAST_PDU, 24, 24, 0xFF, 0xFF, 0xFF, 0xFF];
        h.resize(24, 0);
        let f = fatal(&mut d, &h);
        assert_eq!(f.fes, Fes::DataOutOfRange);
        assert_eq!(&f.header[..], &h[..]);
    }

    #[test]
    fn field_errors_name_the_offset() {
        // The header as framed (HLEN, within PLEN, at most 128 bytes), zeroes after the common header.
        let framed = |ch: &[u8]| {
            let plen = u32::from_le_bytes(ch[4..8].try_into().unwrap()) as usize;
            let mut h = ch.to_vec();
            h.resize((ch[2] as usize).max(CH_LEN).min(plen.max(CH_LEN)).min(TERM_MAX_DATA), 0);
            h
        };
        let mut d = ready(Role::Controller, false, false);
        assert_eq!(fatal(&mut d, &framed(&[0x08, 0, 24, 0, 24, 0, 0, 0])).fei, 0, "unknown type");
        let mut d = ready(Role::Controller, false, false);
        assert_eq!(fatal(&mut d, &framed(&[0x04, 0, 70, 0, 72, 0, 0, 0])).fei, offset::HLEN);
        let mut d = ready(Role::Controller, false, false);
        assert_eq!(fatal(&mut d, &framed(&[0x05, 0, 24, 0, 24, 0, 0, 0])).fei, 0, "C2H type at a controller");
        // With header digests, the fields are judged once the header and its (good) digest are in.
        let with_digest = |head: &[u8]| {
            let mut h = head.to_vec();
            h.resize(72, 0);
            let crc = crc32c(&h);
            h.extend_from_slice(&crc.to_le_bytes());
            h
        };
        let mut d = ready(Role::Controller, true, false);
        assert!(d.decode(&mut BytesMut::from(&framed(&[0x04, 0, 72, 0, 76, 0, 0, 0])[..])).unwrap().is_none(), "waits");
        let mut d = ready(Role::Controller, true, false);
        assert_eq!(fatal(&mut d, &with_digest(&[0x04, 0, 72, 0, 76, 0, 0, 0])).fei, offset::FLAGS, "missing HDGSTF");
        let mut d = ready(Role::Controller, false, false);
        assert_eq!(fatal(&mut d, &framed(&[0x04, 0, 72, 10, 100, 0, 0, 0])).fei, offset::PDO);
        let mut d = ready(Role::Controller, false, false);
        let f = fatal(&mut d, &framed(&[0x04, 0, 72, 0, 10, 0, 0, 0]));
        assert_eq!((f.fei, f.header.len()), (offset::PLEN, CH_LEN), "PLEN shorter than the header");
        let mut d = ready(Role::Controller, true, false);
        let f = fatal(&mut d, &with_digest(&[0x04, 1, 72, 0, 72, 0, 0, 0]));
        assert_eq!(f.fei, offset::PLEN, "no room for the header digest");
        let mut d = ready(Role::Controller, false, false);
        let mut c = PduDecoder::new(Role::Controller, Limits::default());
        let f = fatal(&mut c, &framed(&[0x04, 0, 72, 0, 72, 0, 0, 0]));
        assert_eq!(f.fes, Fes::SequenceError, "capsule before ICReq");
        let f = fatal(&mut d, &framed(&[0x00, 0, 128, 0, 128, 0, 0, 0]));
        assert_eq!(f.fes, Fes::SequenceError, "second ICReq");
    }

    /// A bad header is judged once it is all in, so that it goes back whole in the termination request however
    /// it arrived: here a capsule whose PDO is wrong, its common header first (it went back as those 8 bytes).
    #[test]
    fn a_bad_header_that_arrives_in_pieces_is_returned_whole() {
        let mut h = vec![0x04, 0, 72, 8, 200, 0, 0, 0];
        h.resize(72, 0xAB);
        let mut d = ready(Role::Controller, false, false);
        let mut buf = BytesMut::from(&h[..CH_LEN]);
        assert!(d.decode(&mut buf).unwrap().is_none(), "the rest of the header first");
        buf.extend_from_slice(&h[CH_LEN..40]);
        assert!(d.decode(&mut buf).unwrap().is_none());
        buf.extend_from_slice(&h[40..]);
        let Err(DecodeError::Fatal(f)) = d.decode(&mut buf) else { panic!("a fatal error") };
        assert_eq!((f.fei, &f.header[..]), (offset::PDO, &h[..]));
    }

    #[test]
    fn header_digest_error_is_fatal_data_digest_is_not() {
        let f = Framing { hdgst: true, ddgst: true, pda: 0 };
        let pdu = Pdu::H2CData(H2CData { cccid: 1, ttag: 2, datao: 0, data: Bytes::from(vec![5; 16]), last: true });
        let mut b = BytesMut::from(&pdu.to_bytes(&f)[..]);
        b[40] ^= 1; // corrupt data
        let mut d = ready(Role::Controller, true, true);
        assert!(matches!(d.decode(&mut b.clone()), Err(DecodeError::DataDigest { .. })));
        b[9] ^= 1; // corrupt header
        let mut d = ready(Role::Controller, true, true);
        assert_eq!(fatal(&mut d, &b).fes, Fes::HeaderDigestError);
        // A bit flipped in a field the decoder checks (FLAGS, PDO, PLEN) is a digest error too, not that field's.
        for at in [1, 3, 4] {
            let mut b = BytesMut::from(&pdu.to_bytes(&f)[..]);
            b[at] ^= 0x10;
            let mut d = ready(Role::Controller, true, true);
            assert_eq!(fatal(&mut d, &b).fes, Fes::HeaderDigestError, "byte {at}");
        }
    }

    #[test]
    fn datal_must_match_plen() {
        let f = Framing::default();
        let mut b = BytesMut::from(
            &Pdu::H2CData(H2CData { cccid: 1, ttag: 2, datao: 0, data: Bytes::from(vec![5; 16]), last: true })
                .to_bytes(&f)[..],
        );
        b[16] = 17;
        let mut d = ready(Role::Controller, false, false);
        assert_eq!(fatal(&mut d, &b).fei, offset::DATA_DATAL);
    }

    #[test]
    fn pdu_rest_reads_plen_once_the_common_header_is_in() {
        let mut b = vec![0x07u8, 0, 24, 24];
        assert_eq!(pdu_rest(&b), None, "PLEN not in yet");
        b.extend_from_slice(&(24u32 + 4096).to_le_bytes());
        assert_eq!(pdu_rest(&b), Some(24 + 4096 - 8));
        b.resize(24 + 4096 + 100, 0);
        assert_eq!(pdu_rest(&b), Some(0), "a complete PDU (and more) needs nothing");
    }
}
