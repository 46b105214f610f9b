//! NVMe/TCP PDUs (NVMe/TCP Transport Specification 1.0, §3.6 "PDU Formats" and §3.6.2 Figures 19–33).
//!
//! Every PDU starts with the 8-byte [`CommonHeader`]; the PDU Specific Header follows up to HLEN; then an
//! optional header digest, padding up to PDO, the PDU data, and an optional data digest. PLEN counts all of it.
//! The fixed layouts below are the only place in holdfast where PDU byte offsets are written down.

use crate::cqe::CompletionEntry;
use crate::digest::{crc32c, DIGEST_LEN};
use crate::sqe::SubmissionEntry;
use bytes::{BufMut, Bytes, BytesMut};
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Length of the common header.
pub const CH_LEN: usize = 8;
/// HLEN of ICReq and ICResp.
pub const HLEN_IC: u8 = 128;
/// HLEN of H2CTermReq and C2HTermReq.
pub const HLEN_TERM: u8 = 24;
/// HLEN of CapsuleCmd (common header + 64-byte SQE).
pub const HLEN_CAPSULE_CMD: u8 = 72;
/// HLEN of CapsuleResp (common header + 16-byte CQE).
pub const HLEN_CAPSULE_RESP: u8 = 24;
/// HLEN of H2CData, C2HData and R2T.
pub const HLEN_DATA: u8 = 24;
/// Most bytes of the offending PDU a TermReq carries (so PLEN is 24..=152).
pub const TERM_MAX_DATA: usize = 128;
/// Highest PDU data alignment (HPDA/CPDA, 0's based dwords).
pub const MAX_PDA: u8 = 31;

/// PDU types (Figure 20).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum PduType {
    /// Initialize Connection Request (host to controller).
    IcReq = 0x00,
    /// Initialize Connection Response (controller to host).
    IcResp = 0x01,
    /// Host to Controller Terminate Connection Request.
    H2CTermReq = 0x02,
    /// Controller to Host Terminate Connection Request.
    C2HTermReq = 0x03,
    /// Command Capsule (host to controller).
    CapsuleCmd = 0x04,
    /// Response Capsule (controller to host).
    CapsuleResp = 0x05,
    /// Host to Controller Data.
    H2CData = 0x06,
    /// Controller to Host Data.
    C2HData = 0x07,
    /// Ready to Transfer (controller to host).
    R2T = 0x09,
}

impl PduType {
    /// Decode the PDU-Type byte.
    pub fn from_u8(v: u8) -> Option<PduType> {
        Some(match v {
            0x00 => PduType::IcReq,
            0x01 => PduType::IcResp,
            0x02 => PduType::H2CTermReq,
            0x03 => PduType::C2HTermReq,
            0x04 => PduType::CapsuleCmd,
            0x05 => PduType::CapsuleResp,
            0x06 => PduType::H2CData,
            0x07 => PduType::C2HData,
            0x09 => PduType::R2T,
            _ => return None,
        })
    }
    /// The HLEN every PDU of this type must carry.
    pub fn hlen(self) -> u8 {
        match self {
            PduType::IcReq | PduType::IcResp => HLEN_IC,
            PduType::H2CTermReq | PduType::C2HTermReq => HLEN_TERM,
            PduType::CapsuleCmd => HLEN_CAPSULE_CMD,
            PduType::CapsuleResp => HLEN_CAPSULE_RESP,
            PduType::H2CData | PduType::C2HData | PduType::R2T => HLEN_DATA,
        }
    }
    /// True if the type is sent by a host.
    pub fn is_h2c(self) -> bool {
        matches!(self, PduType::IcReq | PduType::H2CTermReq | PduType::CapsuleCmd | PduType::H2CData)
    }
    /// True for PDUs that carry header (and data) digests when negotiated: all but ICReq/ICResp/TermReq.
    pub fn digestible(self) -> bool {
        !matches!(self, PduType::IcReq | PduType::IcResp | PduType::H2CTermReq | PduType::C2HTermReq)
    }
    /// True for PDUs that may carry PDU data placed at PDO.
    pub fn may_carry_data(self) -> bool {
        matches!(self, PduType::CapsuleCmd | PduType::H2CData | PduType::C2HData)
    }
}

/// Common header FLAGS bits (Figure 19).
pub mod flags {
    /// Header digest present.
    pub const HDGSTF: u8 = 1 << 0;
    /// Data digest present.
    pub const DDGSTF: u8 = 1 << 1;
    /// Last data PDU of a transfer (H2CData, C2HData).
    pub const LAST_PDU: u8 = 1 << 2;
    /// C2HData only: the command completed successfully, no CapsuleResp follows.
    pub const SUCCESS: u8 = 1 << 3;
}

/// The PDU common header (Figure 19).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct CommonHeader {
    /// PDU-Type.
    pub pdu_type: u8,
    /// FLAGS.
    pub flags: u8,
    /// Header Length (excluding the header digest).
    pub hlen: u8,
    /// PDU Data Offset (0 if no data).
    pub pdo: u8,
    /// PDU Length: all bytes of the PDU.
    pub plen: U32,
}
const _: () = assert!(core::mem::size_of::<CommonHeader>() == CH_LEN);

/// Offsets of common header fields, for FEI values.
pub mod offset {
    /// FLAGS.
    pub const FLAGS: u32 = 1;
    /// HLEN.
    pub const HLEN: u32 = 2;
    /// PDO.
    pub const PDO: u32 = 3;
    /// PLEN.
    pub const PLEN: u32 = 4;
    /// ICReq PFV.
    pub const IC_PFV: u32 = 8;
    /// ICReq HPDA / ICResp CPDA.
    pub const IC_PDA: u32 = 10;
    /// ICReq/ICResp DGST.
    pub const IC_DGST: u32 = 11;
    /// ICReq MAXR2T / ICResp MAXH2CDATA.
    pub const IC_MAX: u32 = 12;
    /// H2CData/C2HData/R2T CCCID.
    pub const DATA_CCCID: u32 = 8;
    /// H2CData/R2T TTAG.
    pub const DATA_TTAG: u32 = 10;
    /// H2CData/C2HData DATAO, R2T R2TO.
    pub const DATA_DATAO: u32 = 12;
    /// H2CData/C2HData DATAL, R2T R2TL.
    pub const DATA_DATAL: u32 = 16;
    /// CapsuleResp: the CID in its CQE (bytes 12-13 of the CQE, which starts at 8).
    pub const RESP_CID: u32 = 20;
}

/// ICReq (Figure 26) and ICResp (Figure 27) share one layout; byte 10 is HPDA or CPDA and bytes 12–15
/// are MAXR2T (0's based, ICReq) or MAXH2CDATA (bytes, ICResp).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct IcHeader {
    /// Common header.
    pub ch: CommonHeader,
    /// PDU Format Version (0).
    pub pfv: U16,
    /// HPDA (ICReq) or CPDA (ICResp): PDU data alignment, 0's based dwords.
    pub pda: u8,
    /// DGST: bit 0 header digest enable, bit 1 data digest enable.
    pub dgst: u8,
    /// MAXR2T (ICReq, 0's based) or MAXH2CDATA (ICResp, bytes).
    pub max: U32,
    /// Reserved.
    pub rsvd: [u8; 112],
}
const _: () = assert!(core::mem::size_of::<IcHeader>() == HLEN_IC as usize);
const _: () = assert!(core::mem::offset_of!(IcHeader, pfv) == offset::IC_PFV as usize);
const _: () = assert!(core::mem::offset_of!(IcHeader, pda) == offset::IC_PDA as usize);
const _: () = assert!(core::mem::offset_of!(IcHeader, dgst) == offset::IC_DGST as usize);
const _: () = assert!(core::mem::offset_of!(IcHeader, max) == offset::IC_MAX as usize);

/// H2CTermReq / C2HTermReq header (Figures 24 and 25).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct TermReqHeader {
    /// Common header.
    pub ch: CommonHeader,
    /// Fatal Error Status.
    pub fes: U16,
    /// Fatal Error Information.
    pub fei: U32,
    /// Reserved.
    pub rsvd: [u8; 10],
}
const _: () = assert!(core::mem::size_of::<TermReqHeader>() == HLEN_TERM as usize);
const _: () = assert!(core::mem::offset_of!(TermReqHeader, fei) == 10);

/// CapsuleCmd header (Figure 21).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct CapsuleCmdHeader {
    /// Common header.
    pub ch: CommonHeader,
    /// Submission queue entry.
    pub sqe: SubmissionEntry,
}
const _: () = assert!(core::mem::size_of::<CapsuleCmdHeader>() == HLEN_CAPSULE_CMD as usize);

/// CapsuleResp header (Figure 22).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct CapsuleRespHeader {
    /// Common header.
    pub ch: CommonHeader,
    /// Completion queue entry.
    pub cqe: CompletionEntry,
}
const _: () = assert!(core::mem::size_of::<CapsuleRespHeader>() == HLEN_CAPSULE_RESP as usize);

/// H2CData (Figure 28), C2HData (Figure 23) and R2T (Figure 31) share one layout: CCCID at 8, TTAG at 10
/// (reserved in C2HData), DATAO/R2TO at 12, DATAL/R2TL at 16.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DataHeader {
    /// Common header.
    pub ch: CommonHeader,
    /// Command Capsule CID.
    pub cccid: U16,
    /// Transfer Tag (H2CData, R2T); reserved in C2HData.
    pub ttag: U16,
    /// Data Offset (R2T Offset).
    pub datao: U32,
    /// Data Length (R2T Length).
    pub datal: U32,
    /// Reserved.
    pub rsvd: [u8; 4],
}
const _: () = assert!(core::mem::size_of::<DataHeader>() == HLEN_DATA as usize);
const _: () = assert!(core::mem::offset_of!(DataHeader, ttag) == offset::DATA_TTAG as usize);
const _: () = assert!(core::mem::offset_of!(DataHeader, datao) == offset::DATA_DATAO as usize);
const _: () = assert!(core::mem::offset_of!(DataHeader, datal) == offset::DATA_DATAL as usize);

/// Fatal Error Status values of a TermReq (Figures 24 and 25).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u16)]
pub enum Fes {
    /// Invalid PDU Header Field (FEI = byte offset of the field).
    InvalidHeaderField = 0x01,
    /// PDU Sequence Error.
    SequenceError = 0x02,
    /// Header Digest Error.
    HeaderDigestError = 0x03,
    /// Data Transfer Out of Range.
    DataOutOfRange = 0x04,
    /// R2T Limit Exceeded (H2C) / Data Transfer Limit Exceeded.
    DataLimitExceeded = 0x05,
    /// Unsupported Parameter (FEI = byte offset of the field).
    UnsupportedParameter = 0x06,
}

impl Fes {
    /// From the wire value.
    pub fn from_u16(v: u16) -> Option<Fes> {
        Some(match v {
            0x01 => Fes::InvalidHeaderField,
            0x02 => Fes::SequenceError,
            0x03 => Fes::HeaderDigestError,
            0x04 => Fes::DataOutOfRange,
            0x05 => Fes::DataLimitExceeded,
            0x06 => Fes::UnsupportedParameter,
            _ => return None,
        })
    }
    /// The specification's name for it.
    pub fn name(self) -> &'static str {
        match self {
            Fes::InvalidHeaderField => "Invalid PDU Header Field",
            Fes::SequenceError => "PDU Sequence Error",
            Fes::HeaderDigestError => "Header Digest Error",
            Fes::DataOutOfRange => "Data Transfer Out of Range",
            Fes::DataLimitExceeded => "Data Transfer Limit Exceeded",
            Fes::UnsupportedParameter => "Unsupported Parameter",
        }
    }
}

/// ICReq contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcReq {
    /// PDU Format Version.
    pub pfv: u16,
    /// Host PDU data alignment (0's based dwords).
    pub hpda: u8,
    /// Header digest requested.
    pub hdgst: bool,
    /// Data digest requested.
    pub ddgst: bool,
    /// Maximum outstanding R2Ts per command, 0's based.
    pub maxr2t: u32,
}

/// ICResp contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcResp {
    /// PDU Format Version.
    pub pfv: u16,
    /// Controller PDU data alignment (0's based dwords).
    pub cpda: u8,
    /// Header digest enabled.
    pub hdgst: bool,
    /// Data digest enabled.
    pub ddgst: bool,
    /// Maximum H2CData PDU data length in bytes.
    pub maxh2cdata: u32,
}

/// A TermReq (either direction).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TermReq {
    /// Fatal Error Status (raw, so that unknown values survive a round trip).
    pub fes: u16,
    /// Fatal Error Information.
    pub fei: u32,
    /// Up to 128 bytes of the PDU that caused the error.
    pub data: Bytes,
}

/// A command capsule.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct CapsuleCmd {
    /// The command.
    pub sqe: SubmissionEntry,
    /// In-capsule data (empty if none).
    pub data: Bytes,
}

/// A response capsule.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct CapsuleResp {
    /// The completion.
    pub cqe: CompletionEntry,
}

/// H2CData contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct H2CData {
    /// Command Capsule CID.
    pub cccid: u16,
    /// Transfer tag from the R2T.
    pub ttag: u16,
    /// Offset of this data in the command's buffer.
    pub datao: u32,
    /// The data (DATAL = its length).
    pub data: Bytes,
    /// LAST_PDU flag.
    pub last: bool,
}

/// C2HData contents.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct C2HData {
    /// Command Capsule CID.
    pub cccid: u16,
    /// Offset of this data in the command's buffer.
    pub datao: u32,
    /// The data.
    pub data: Bytes,
    /// LAST_PDU flag.
    pub last: bool,
    /// SUCCESS flag: the command completed successfully and no CapsuleResp follows.
    pub success: bool,
}

/// R2T contents.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct R2T {
    /// Command Capsule CID.
    pub cccid: u16,
    /// Transfer tag the host echoes in H2CData.
    pub ttag: u16,
    /// Offset of the requested data.
    pub r2to: u32,
    /// Length of the requested data.
    pub r2tl: u32,
}

/// Any PDU.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Pdu {
    /// ICReq.
    IcReq(IcReq),
    /// ICResp.
    IcResp(IcResp),
    /// H2CTermReq.
    H2CTermReq(TermReq),
    /// C2HTermReq.
    C2HTermReq(TermReq),
    /// CapsuleCmd.
    CapsuleCmd(CapsuleCmd),
    /// CapsuleResp.
    CapsuleResp(CapsuleResp),
    /// H2CData.
    H2CData(H2CData),
    /// C2HData.
    C2HData(C2HData),
    /// R2T.
    R2T(R2T),
}

/// How the PDUs one side sends are framed after the ICReq/ICResp exchange: digests both ways, and the PDU data
/// alignment the *receiver* asked for (its HPDA or CPDA).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Framing {
    /// Header digests on.
    pub hdgst: bool,
    /// Data digests on.
    pub ddgst: bool,
    /// Receiver's PDU data alignment, 0's based dwords (0..=31).
    pub pda: u8,
}

impl Framing {
    /// PDO for a PDU of this HLEN that carries data.
    pub fn data_offset(&self, hlen: u8) -> usize {
        let h = hlen as usize + if self.hdgst { DIGEST_LEN } else { 0 };
        if self.pda == 0 {
            // The usual case, without the division by a variable alignment below.
            return h.next_multiple_of(4);
        }
        let align = (self.pda.min(MAX_PDA) as usize + 1) * 4;
        h.div_ceil(align) * align
    }
}

impl Pdu {
    /// The PDU type.
    pub fn pdu_type(&self) -> PduType {
        match self {
            Pdu::IcReq(_) => PduType::IcReq,
            Pdu::IcResp(_) => PduType::IcResp,
            Pdu::H2CTermReq(_) => PduType::H2CTermReq,
            Pdu::C2HTermReq(_) => PduType::C2HTermReq,
            Pdu::CapsuleCmd(_) => PduType::CapsuleCmd,
            Pdu::CapsuleResp(_) => PduType::CapsuleResp,
            Pdu::H2CData(_) => PduType::H2CData,
            Pdu::C2HData(_) => PduType::C2HData,
            Pdu::R2T(_) => PduType::R2T,
        }
    }

    /// Give a PDU that carries data (TermReq, CapsuleCmd, H2CData, C2HData) its data; the others have none
    /// and are left as they are.
    pub fn set_data(&mut self, data: Bytes) {
        match self {
            Pdu::H2CTermReq(TermReq { data: d, .. })
            | Pdu::C2HTermReq(TermReq { data: d, .. })
            | Pdu::CapsuleCmd(CapsuleCmd { data: d, .. })
            | Pdu::H2CData(H2CData { data: d, .. })
            | Pdu::C2HData(C2HData { data: d, .. }) => *d = data,
            Pdu::IcReq(_) | Pdu::IcResp(_) | Pdu::CapsuleResp(_) | Pdu::R2T(_) => {}
        }
    }

    /// Append the encoded PDU to `out`. ICReq, ICResp and TermReqs ignore `framing` (they never carry digests).
    pub fn encode(&self, framing: &Framing, out: &mut BytesMut) {
        match self {
            Pdu::IcReq(r) => encode_ic(out, PduType::IcReq, r.pfv, r.hpda, r.hdgst, r.ddgst, r.maxr2t),
            Pdu::IcResp(r) => encode_ic(out, PduType::IcResp, r.pfv, r.cpda, r.hdgst, r.ddgst, r.maxh2cdata),
            Pdu::H2CTermReq(t) => encode_term(out, PduType::H2CTermReq, t),
            Pdu::C2HTermReq(t) => encode_term(out, PduType::C2HTermReq, t),
            Pdu::CapsuleCmd(c) => {
                encode_capsule_cmd_header(out, framing, &c.sqe, c.data.len());
                put_data(out, framing, &c.data);
            }
            Pdu::CapsuleResp(r) => encode_capsule_resp(out, framing, &r.cqe),
            Pdu::H2CData(d) => {
                let f = if d.last { flags::LAST_PDU } else { 0 };
                encode_data_header(out, framing, PduType::H2CData, f, d.cccid, d.ttag, d.datao, d.data.len() as u32);
                put_data(out, framing, &d.data);
            }
            Pdu::C2HData(d) => {
                let f = if d.last { flags::LAST_PDU } else { 0 } | if d.success { flags::SUCCESS } else { 0 };
                encode_data_header(out, framing, PduType::C2HData, f, d.cccid, 0, d.datao, d.data.len() as u32);
                put_data(out, framing, &d.data);
            }
            Pdu::R2T(r) => encode_r2t(out, framing, r),
        }
    }

    /// Encode into a fresh buffer.
    pub fn to_bytes(&self, framing: &Framing) -> Bytes {
        let mut b = BytesMut::new();
        self.encode(framing, &mut b);
        b.freeze()
    }
}

fn put_data(out: &mut BytesMut, framing: &Framing, data: &[u8]) {
    if data.is_empty() {
        return;
    }
    out.extend_from_slice(data);
    if framing.ddgst {
        out.put_u32_le(crc32c(data));
    }
}

/// Write a common header plus PDU specific header (`header` is the full HLEN bytes with CH fields filled except
/// FLAGS digest bits, PDO and PLEN), its header digest, and padding up to PDO. Returns nothing: the caller
/// appends `data_len` bytes of data and, if `framing.ddgst`, their digest ([`crate::digest::digest_bytes`]).
fn finish_header(out: &mut BytesMut, framing: &Framing, header: &mut [u8], data_len: usize) {
    let hlen = header.len();
    let hd = if framing.hdgst { DIGEST_LEN } else { 0 };
    let (pdo, plen) = if data_len > 0 {
        let pdo = framing.data_offset(hlen as u8);
        (pdo, pdo + data_len + if framing.ddgst { DIGEST_LEN } else { 0 })
    } else {
        (0, hlen + hd)
    };
    header[1] |=
        if framing.hdgst { flags::HDGSTF } else { 0 } | if framing.ddgst && data_len > 0 { flags::DDGSTF } else { 0 };
    header[3] = pdo as u8;
    header[4..8].copy_from_slice(&(plen as u32).to_le_bytes());
    let pad = if data_len > 0 { pdo - hlen - hd } else { 0 };
    out.reserve(hlen + hd + pad);
    out.extend_from_slice(header);
    if framing.hdgst {
        out.put_u32_le(crc32c(header));
    }
    // Only with a PDA that asks for it (the Linux host's default is 0): `put_bytes` of nothing still calls
    // memset.
    if pad > 0 {
        out.put_bytes(0, pad);
    }
}

fn ch(ty: PduType, flags: u8) -> CommonHeader {
    CommonHeader { pdu_type: ty as u8, flags, hlen: ty.hlen(), pdo: 0, plen: U32::new(0) }
}

fn encode_ic(out: &mut BytesMut, ty: PduType, pfv: u16, pda: u8, hdgst: bool, ddgst: bool, max: u32) {
    let mut h = IcHeader::new_zeroed();
    h.ch = ch(ty, 0);
    h.ch.plen.set(HLEN_IC as u32);
    h.pfv.set(pfv);
    h.pda = pda;
    h.dgst = hdgst as u8 | (ddgst as u8) << 1;
    h.max.set(max);
    out.extend_from_slice(h.as_bytes());
}

fn encode_term(out: &mut BytesMut, ty: PduType, t: &TermReq) {
    let data = &t.data[..t.data.len().min(TERM_MAX_DATA)];
    let mut h = TermReqHeader::new_zeroed();
    h.ch = ch(ty, 0);
    h.ch.plen.set((HLEN_TERM as usize + data.len()) as u32);
    h.fes.set(t.fes);
    h.fei.set(t.fei);
    out.extend_from_slice(h.as_bytes());
    out.extend_from_slice(data);
}

/// Write a CapsuleCmd header for a capsule with `data_len` bytes of in-capsule data (append the data and its
/// digest after it).
pub fn encode_capsule_cmd_header(out: &mut BytesMut, framing: &Framing, sqe: &SubmissionEntry, data_len: usize) {
    let mut h = CapsuleCmdHeader { ch: ch(PduType::CapsuleCmd, 0), sqe: *sqe };
    finish_header(out, framing, h.as_mut_bytes(), data_len);
}

/// Write a complete CapsuleResp.
pub fn encode_capsule_resp(out: &mut BytesMut, framing: &Framing, cqe: &CompletionEntry) {
    let mut h = CapsuleRespHeader { ch: ch(PduType::CapsuleResp, 0), cqe: *cqe };
    finish_header(out, framing, h.as_mut_bytes(), 0);
}

/// Write an H2CData or C2HData header for `datal` bytes of data (append the data and its digest after it).
/// `flags` carries LAST_PDU / SUCCESS; the digest flags are added from `framing`.
#[allow(clippy::too_many_arguments)]
pub fn encode_data_header(
    out: &mut BytesMut,
    framing: &Framing,
    ty: PduType,
    flags: u8,
    cccid: u16,
    ttag: u16,
    datao: u32,
    datal: u32,
) {
    let mut h = DataHeader {
        ch: ch(ty, flags),
        cccid: U16::new(cccid),
        ttag: U16::new(ttag),
        datao: U32::new(datao),
        datal: U32::new(datal),
        rsvd: [0; 4],
    };
    finish_header(out, framing, h.as_mut_bytes(), datal as usize);
}

/// Write a complete R2T.
pub fn encode_r2t(out: &mut BytesMut, framing: &Framing, r: &R2T) {
    let mut h = DataHeader {
        ch: ch(PduType::R2T, 0),
        cccid: U16::new(r.cccid),
        ttag: U16::new(r.ttag),
        datao: U32::new(r.r2to),
        datal: U32::new(r.r2tl),
        rsvd: [0; 4],
    };
    finish_header(out, framing, h.as_mut_bytes(), 0);
}

/// What a controller offers in ICResp.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ControllerIcParams {
    /// MAXH2CDATA to advertise (a multiple of 4, at least 4096).
    pub maxh2cdata: u32,
    /// Accept header digests if the host asks.
    pub allow_hdgst: bool,
    /// Accept data digests if the host asks.
    pub allow_ddgst: bool,
}

/// A refused ICReq: the TermReq to send (§3.6.2.2: PFV other than 0 is an Unsupported Parameter).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct IcRefusal {
    /// Fatal Error Status.
    pub fes: Fes,
    /// Fatal Error Information: offset of the offending field.
    pub fei: u32,
}

impl IcReq {
    /// Negotiate as a controller: the ICResp to send, or why the ICReq is refused. The controller's CPDA is
    /// 0 (the Linux host refuses any other value); digests are granted as asked when allowed.
    pub fn negotiate(&self, p: &ControllerIcParams) -> Result<IcResp, IcRefusal> {
        if self.pfv != 0 {
            return Err(IcRefusal { fes: Fes::UnsupportedParameter, fei: offset::IC_PFV });
        }
        if self.hpda > MAX_PDA {
            return Err(IcRefusal { fes: Fes::InvalidHeaderField, fei: offset::IC_PDA });
        }
        if (self.hdgst && !p.allow_hdgst) || (self.ddgst && !p.allow_ddgst) {
            return Err(IcRefusal { fes: Fes::UnsupportedParameter, fei: offset::IC_DGST });
        }
        Ok(IcResp { pfv: 0, cpda: 0, hdgst: self.hdgst, ddgst: self.ddgst, maxh2cdata: p.maxh2cdata })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sgl::SglDescriptor;

    #[test]
    fn icreq_golden_figure_26() {
        // An ICReq as the Linux host sends it: PFV 0, HPDA 0, both digests, MAXR2T 0.
        let b =
            Pdu::IcReq(IcReq { pfv: 0, hpda: 0, hdgst: true, ddgst: true, maxr2t: 0 }).to_bytes(&Framing::default());
        assert_eq!(b.len(), 128);
        assert_eq!(&b[..8], &[0x00, 0x00, 128, 0, 128, 0, 0, 0]);
        assert_eq!(b[11], 0x03);
        assert!(b[16..].iter().all(|&x| x == 0));
    }

    #[test]
    fn capsule_resp_with_header_digest_figure_22() {
        let f = Framing { hdgst: true, ddgst: true, pda: 0 };
        let cqe = CompletionEntry::new(5, crate::status::Status::SUCCESS, 0);
        let b = Pdu::CapsuleResp(CapsuleResp { cqe }).to_bytes(&f);
        assert_eq!(b.len(), 28);
        assert_eq!(&b[..8], &[0x05, flags::HDGSTF, 24, 0, 28, 0, 0, 0], "no DDGSTF without data, PDO 0");
        assert_eq!(&b[24..28], &crc32c(&b[..24]).to_le_bytes());
    }

    #[test]
    fn c2h_data_with_digests_and_alignment() {
        let f = Framing { hdgst: true, ddgst: true, pda: 7 }; // 32-byte alignment
        let data = Bytes::from_static(&[0xAB; 100]);
        let b = Pdu::C2HData(C2HData { cccid: 9, datao: 4096, data: data.clone(), last: true, success: false })
            .to_bytes(&f);
        assert_eq!(b[0], 0x07);
        assert_eq!(b[1], flags::HDGSTF | flags::DDGSTF | flags::LAST_PDU);
        assert_eq!(b[2], 24);
        assert_eq!(b[3], 32, "PDO rounded up from 28 to the 32-byte alignment");
        assert_eq!(u32::from_le_bytes(b[4..8].try_into().unwrap()), 32 + 100 + 4);
        assert_eq!(&b[12..16], &4096u32.to_le_bytes());
        assert_eq!(&b[16..20], &100u32.to_le_bytes());
        assert_eq!(&b[28..32], &[0; 4], "padding between the header digest and the data is zero");
        assert_eq!(&b[32..132], &data[..]);
        assert_eq!(&b[132..136], &crc32c(&data).to_le_bytes());
    }

    #[test]
    fn data_offset_rounds_header_and_digest_up_to_the_alignment() {
        for (hdgst, pda, hlen, want) in [
            (false, 0, 24, 24),
            (true, 0, 24, 28),
            (false, 0, 72, 72),
            (true, 0, 72, 76),
            (true, 1, 24, 32),
            (false, 2, 24, 24),
            (true, 2, 72, 84),
            (true, 31, 24, 128),
        ] {
            let f = Framing { hdgst, ddgst: false, pda };
            assert_eq!(f.data_offset(hlen), want, "hdgst {hdgst}, pda {pda}, hlen {hlen}");
        }
    }

    #[test]
    fn capsule_cmd_in_capsule_data() {
        let f = Framing::default();
        let mut sqe = SubmissionEntry::new(crate::opcode::io::WRITE, 1);
        sqe.dptr = SglDescriptor::incapsule(512);
        let b = Pdu::CapsuleCmd(CapsuleCmd { sqe, data: Bytes::from(vec![1u8; 512]) }).to_bytes(&f);
        assert_eq!(&b[..4], &[0x04, 0, 72, 72]);
        assert_eq!(b.len(), 72 + 512);
    }

    #[test]
    fn negotiation() {
        let p = ControllerIcParams { maxh2cdata: 131072, allow_hdgst: true, allow_ddgst: true };
        let r = IcReq { pfv: 0, hpda: 0, hdgst: true, ddgst: false, maxr2t: 0 }.negotiate(&p).unwrap();
        assert_eq!(r, IcResp { pfv: 0, cpda: 0, hdgst: true, ddgst: false, maxh2cdata: 131072 });
        let e = IcReq { pfv: 1, hpda: 0, hdgst: false, ddgst: false, maxr2t: 0 }.negotiate(&p).unwrap_err();
        assert_eq!(e, IcRefusal { fes: Fes::UnsupportedParameter, fei: 8 });
    }
}
