//! Fabrics commands (NVMe over Fabrics Specification 1.1, §3 "Fabrics Command Set"): Connect (Figures
//! 20–22), Property Get (Figures 26–27), Property Set (Figure 28), Disconnect (NVMe-oF 1.1a / Base 2.0
//! §6.4), and the controller properties they reach (NVMe Base 2.0, §3.1.3 Figure 33 "Offset in Controller
//! Properties").

use crate::sgl::SglDescriptor;
use crate::sqe::SubmissionEntry;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of the Connect command's data (Figure 21).
pub const CONNECT_DATA_SIZE: usize = 1024;
/// Size of an NQN field (a NUL-terminated UTF-8 string of at most 223 bytes in a 256-byte field).
pub const NQN_FIELD: usize = 256;
/// Longest NQN (NVMe Base 2.0, §4.5 "NVMe Qualified Names").
pub const NQN_MAX_LEN: usize = 223;
/// CNTLID a host sends in the admin Connect to ask for any controller (dynamic model).
pub const CNTLID_DYNAMIC: u16 = 0xFFFF;
/// The well-known discovery subsystem NQN.
pub const DISCOVERY_NQN: &str = "nqn.2014-08.org.nvmexpress.discovery";

/// The common header of every Fabrics command SQE (Figure 17): opcode 0x7F, FCTYPE at byte 4, SGL1 at 24.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ConnectCommand {
    /// Opcode, 0x7F.
    pub opcode: u8,
    /// FUSE/PSDT: PSDT (bits 7:6) must be 01b on fabrics (NVMe-oF 1.1 §2.1; Linux nvmet enforces it).
    pub flags: u8,
    /// Command identifier.
    pub cid: U16,
    /// Fabrics command type, 0x01.
    pub fctype: u8,
    /// Reserved.
    pub rsvd5: [u8; 19],
    /// SGL Descriptor 1: the 1024-byte Connect data (in-capsule on TCP).
    pub sgl1: SglDescriptor,
    /// Record Format (0).
    pub recfmt: U16,
    /// Queue ID: 0 for the admin queue.
    pub qid: U16,
    /// Submission Queue Size, 0's based.
    pub sqsize: U16,
    /// Connect Attributes: bits 1:0 priority class, bit 2 disable SQ flow control.
    pub cattr: u8,
    /// Reserved.
    pub rsvd47: u8,
    /// Keep Alive Timeout in milliseconds (admin queue only; 0 disables keep-alive).
    pub kato: U32,
    /// Reserved.
    pub rsvd52: [u8; 12],
}
const _: () = assert!(core::mem::size_of::<ConnectCommand>() == 64);
const _: () = assert!(core::mem::offset_of!(ConnectCommand, fctype) == 4);
const _: () = assert!(core::mem::offset_of!(ConnectCommand, sgl1) == 24);
const _: () = assert!(core::mem::offset_of!(ConnectCommand, recfmt) == 40);
const _: () = assert!(core::mem::offset_of!(ConnectCommand, qid) == 42);
const _: () = assert!(core::mem::offset_of!(ConnectCommand, sqsize) == 44);
const _: () = assert!(core::mem::offset_of!(ConnectCommand, cattr) == 46);
const _: () = assert!(core::mem::offset_of!(ConnectCommand, kato) == 48);

/// Connect attribute: disable SQ flow control (CATTR bit 2). The host asks the controller not to report
/// SQ head pointer updates; a controller that agrees answers the Connect with SQHD = [`SQHD_FLOW_DISABLED`]
/// (Technical Proposal 8005, NVMe over Fabrics 1.1), may then complete a read with its last C2HData PDU
/// alone (SUCCESS flag, NVMe/TCP 1.0 §3.6.2.6), and leaves SQHD reserved (zero) in later completions.
/// Discovery log entries say whether a subsystem supports it (TREQ bit 2,
/// [`crate::log_page::TREQ_DISABLE_SQFLOW`]).
pub const CATTR_DISABLE_SQ_FLOW: u8 = 1 << 2;

/// SQHD of a Connect response when the controller disabled SQ flow control as the host asked.
pub const SQHD_FLOW_DISABLED: u16 = 0xFFFF;

/// The Connect command's data (Figure 21).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ConnectData {
    /// Host Identifier (a 128-bit UUID).
    pub hostid: [u8; 16],
    /// Controller ID: 0xFFFF for the admin queue (dynamic), the admin's CNTLID for I/O queues.
    pub cntlid: U16,
    /// Reserved.
    pub rsvd18: [u8; 238],
    /// NVM Subsystem NQN.
    pub subnqn: [u8; NQN_FIELD],
    /// Host NQN.
    pub hostnqn: [u8; NQN_FIELD],
    /// Reserved.
    pub rsvd768: [u8; 256],
}
const _: () = assert!(core::mem::size_of::<ConnectData>() == CONNECT_DATA_SIZE);
const _: () = assert!(core::mem::offset_of!(ConnectData, cntlid) == 16);
const _: () = assert!(core::mem::offset_of!(ConnectData, subnqn) == 256);
const _: () = assert!(core::mem::offset_of!(ConnectData, hostnqn) == 512);

/// Why an NQN field could not be read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum NqnError {
    /// No NUL terminator within the field.
    #[error("NQN is not NUL-terminated")]
    NotTerminated,
    /// Longer than 223 bytes.
    #[error("NQN is longer than 223 bytes")]
    TooLong,
    /// Empty.
    #[error("NQN is empty")]
    Empty,
    /// Not UTF-8.
    #[error("NQN is not UTF-8")]
    NotUtf8,
}

/// Read a NUL-terminated NQN out of a 256-byte field.
pub fn nqn_from_field(field: &[u8]) -> Result<&str, NqnError> {
    let end = field.iter().position(|&b| b == 0).ok_or(NqnError::NotTerminated)?;
    if end == 0 {
        return Err(NqnError::Empty);
    }
    if end > NQN_MAX_LEN {
        return Err(NqnError::TooLong);
    }
    core::str::from_utf8(&field[..end]).map_err(|_| NqnError::NotUtf8)
}

/// Write `nqn` NUL-padded into a 256-byte field (truncating at 255 bytes).
pub fn nqn_to_field(nqn: &str) -> [u8; NQN_FIELD] {
    let mut f = [0u8; NQN_FIELD];
    let n = nqn.len().min(NQN_FIELD - 1);
    f[..n].copy_from_slice(&nqn.as_bytes()[..n]);
    f
}

impl ConnectCommand {
    /// A Connect for queue `qid` with `sqsize` (0's based) and `kato_ms`; the data goes in-capsule.
    pub fn new(cid: u16, qid: u16, sqsize: u16, kato_ms: u32) -> Self {
        let mut c = Self::new_zeroed();
        c.opcode = crate::opcode::FABRICS;
        c.flags = crate::sqe::PSDT_SGL;
        c.cid.set(cid);
        c.fctype = crate::opcode::fctype::CONNECT;
        c.sgl1 = SglDescriptor::incapsule(CONNECT_DATA_SIZE as u32);
        c.qid.set(qid);
        c.sqsize.set(sqsize);
        c.kato.set(kato_ms);
        c
    }
    /// View an SQE as a Connect command.
    pub fn from_sqe(sqe: &SubmissionEntry) -> Self {
        Self::read_from_bytes(sqe.as_bytes()).unwrap_or_else(|_| Self::new_zeroed())
    }
    /// As a generic SQE.
    pub fn to_sqe(&self) -> SubmissionEntry {
        SubmissionEntry::read_from_bytes(self.as_bytes()).unwrap_or_default()
    }
}

impl ConnectData {
    /// Connect data for the given identities.
    pub fn new(hostid: [u8; 16], cntlid: u16, subnqn: &str, hostnqn: &str) -> Self {
        let mut d = Self::new_zeroed();
        d.hostid = hostid;
        d.cntlid.set(cntlid);
        d.subnqn = nqn_to_field(subnqn);
        d.hostnqn = nqn_to_field(hostnqn);
        d
    }
    /// Parse from at least 1024 bytes.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Self::read_from_prefix(b).ok().map(|(d, _)| d)
    }
}

/// Connect response DW0 on success: CNTLID in bits 15:0 (Figure 22).
pub fn connect_result_cntlid(dw0: u32) -> u16 {
    dw0 as u16
}

/// Connect response for SC Connect Invalid Parameters (Figure 22): which field was wrong.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InvalidParameter {
    /// Byte offset of the invalid field (IPO).
    pub offset: u16,
    /// True if the offset is into the Connect data, false if into the SQE (IATTR bit 0).
    pub in_data: bool,
}

impl InvalidParameter {
    /// Encode into DW0: IPO in bits 15:0, IATTR in bits 23:16.
    pub fn to_dw0(self) -> u32 {
        self.offset as u32 | ((self.in_data as u32) << 16)
    }
    /// Decode from DW0.
    pub fn from_dw0(dw0: u32) -> Self {
        InvalidParameter { offset: dw0 as u16, in_data: (dw0 >> 16) & 1 != 0 }
    }
}

/// Property Get / Property Set command (Figures 26 and 28): ATTRIB at 40, OFST at 44, VALUE at 48 (Set).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct PropertyCommand {
    /// Opcode, 0x7F.
    pub opcode: u8,
    /// FUSE/PSDT: PSDT must be 01b on fabrics.
    pub flags: u8,
    /// Command identifier.
    pub cid: U16,
    /// Fabrics command type: 0x00 Set, 0x04 Get.
    pub fctype: u8,
    /// Reserved.
    pub rsvd5: [u8; 35],
    /// Attributes: bits 2:0 size (0 = 4 bytes, 1 = 8 bytes).
    pub attrib: u8,
    /// Reserved.
    pub rsvd41: [u8; 3],
    /// Property offset.
    pub ofst: U32,
    /// Value (Property Set only).
    pub value: U64,
    /// Reserved.
    pub rsvd56: [u8; 8],
}
const _: () = assert!(core::mem::size_of::<PropertyCommand>() == 64);
const _: () = assert!(core::mem::offset_of!(PropertyCommand, attrib) == 40);
const _: () = assert!(core::mem::offset_of!(PropertyCommand, ofst) == 44);
const _: () = assert!(core::mem::offset_of!(PropertyCommand, value) == 48);

impl PropertyCommand {
    /// A Property Get (`value` = None) or Set of `ofst`, 8 bytes wide if `wide`.
    pub fn new(cid: u16, ofst: u32, wide: bool, value: Option<u64>) -> Self {
        let mut c = Self::new_zeroed();
        c.opcode = crate::opcode::FABRICS;
        c.flags = crate::sqe::PSDT_SGL;
        c.cid.set(cid);
        c.fctype =
            if value.is_some() { crate::opcode::fctype::PROPERTY_SET } else { crate::opcode::fctype::PROPERTY_GET };
        c.attrib = wide as u8;
        c.ofst.set(ofst);
        c.value.set(value.unwrap_or(0));
        c
    }
    /// View an SQE as a property command.
    pub fn from_sqe(sqe: &SubmissionEntry) -> Self {
        Self::read_from_bytes(sqe.as_bytes()).unwrap_or_else(|_| Self::new_zeroed())
    }
    /// As a generic SQE.
    pub fn to_sqe(&self) -> SubmissionEntry {
        let mut s = SubmissionEntry::read_from_bytes(self.as_bytes()).unwrap_or_default();
        s.dptr = SglDescriptor::transport(0);
        s
    }
    /// Access size in bytes (4 or 8), or None for a reserved size.
    pub fn size(&self) -> Option<usize> {
        match self.attrib & 0x7 {
            0 => Some(4),
            1 => Some(8),
            _ => None,
        }
    }
}

/// A Disconnect command (FCTYPE 0x08, RECFMT 0 at byte 40).
pub fn disconnect_sqe(cid: u16) -> SubmissionEntry {
    let mut s = SubmissionEntry::new(crate::opcode::FABRICS, cid);
    s.nsid.set(crate::opcode::fctype::DISCONNECT as u32);
    s.dptr = SglDescriptor::transport(0);
    s
}

/// Controller property offsets (NVMe Base 2.0, Figure 33).
pub mod property {
    /// Controller Capabilities, 8 bytes.
    pub const CAP: u32 = 0x00;
    /// Version, 4 bytes.
    pub const VS: u32 = 0x08;
    /// Controller Configuration, 4 bytes.
    pub const CC: u32 = 0x14;
    /// Controller Status, 4 bytes.
    pub const CSTS: u32 = 0x1C;
    /// NVM Subsystem Reset, 4 bytes.
    pub const NSSR: u32 = 0x20;
    /// Controller Ready Timeouts, 4 bytes.
    pub const CRTO: u32 = 0x68;
}

/// CAP fields (NVMe Base 2.0, Figure 36).
pub mod cap {
    /// Build CAP: MQES (0's based), CQR, TO (500 ms units), CSS NVM, MPSMIN/MPSMAX 4 KiB (0).
    pub fn build(mqes: u16, timeout_500ms: u8) -> u64 {
        let mut v = mqes as u64; // bits 15:0 MQES
        v |= 1 << 16; // CQR: contiguous queues required (fabrics)
        v |= (timeout_500ms as u64) << 24; // bits 31:24 TO
        v |= 1 << 37; // CSS bit 0: NVM command set
        v
    }
    /// Maximum Queue Entries Supported (0's based).
    pub fn mqes(cap: u64) -> u16 {
        cap as u16
    }
    /// Timeout in 500 ms units.
    pub fn timeout_500ms(cap: u64) -> u8 {
        (cap >> 24) as u8
    }
}

/// CC fields (NVMe Base 2.0, Figure 41).
pub mod cc {
    /// Enable.
    pub const EN: u32 = 1;
    /// Shutdown Notification, bits 15:14.
    pub const SHN_MASK: u32 = 0x3 << 14;
    /// Normal shutdown.
    pub const SHN_NORMAL: u32 = 0x1 << 14;
    /// Abrupt shutdown.
    pub const SHN_ABRUPT: u32 = 0x2 << 14;
    /// I/O Submission Queue Entry Size, bits 19:16 (log2; 6 = 64 bytes).
    pub fn iosqes(cc: u32) -> u32 {
        (cc >> 16) & 0xF
    }
    /// I/O Completion Queue Entry Size, bits 23:20 (log2; 4 = 16 bytes).
    pub fn iocqes(cc: u32) -> u32 {
        (cc >> 20) & 0xF
    }
    /// Memory Page Size, bits 10:7.
    pub fn mps(cc: u32) -> u32 {
        (cc >> 7) & 0xF
    }
    /// I/O Command Set Selected, bits 6:4.
    pub fn css(cc: u32) -> u32 {
        (cc >> 4) & 0x7
    }
    /// Arbitration Mechanism Selected, bits 13:11 (0 = round robin, the one every controller supports; CAP.AMS
    /// lists the others).
    pub fn ams(cc: u32) -> u32 {
        (cc >> 11) & 0x7
    }
    /// The CC value a host writes to enable a controller: EN, IOSQES 6, IOCQES 4.
    pub const ENABLE_DEFAULT: u32 = EN | (6 << 16) | (4 << 20);
}

/// CSTS fields (NVMe Base 2.0, Figure 42).
pub mod csts {
    /// Ready.
    pub const RDY: u32 = 1;
    /// Controller Fatal Status.
    pub const CFS: u32 = 1 << 1;
    /// Shutdown Status, bits 3:2.
    pub const SHST_MASK: u32 = 0x3 << 2;
    /// Shutdown processing occurring.
    pub const SHST_OCCURRING: u32 = 0x1 << 2;
    /// Shutdown processing complete.
    pub const SHST_COMPLETE: u32 = 0x2 << 2;
}

/// NVMe version 2.0.0 as reported in VS (major bits 31:16, minor 15:8, tertiary 7:0).
pub const VERSION_2_0: u32 = 0x0002_0000;
/// NVMe version 1.3.0 (what a discovery controller commonly reports).
pub const VERSION_1_3: u32 = 0x0001_0300;

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn connect_layout_figure_20() {
        let c = ConnectCommand::new(7, 3, 127, 5000);
        let b = c.as_bytes();
        assert_eq!(b[0], 0x7F);
        assert_eq!(b[1], 0x40, "PSDT = 01b");
        assert_eq!(b[4], 0x01);
        assert_eq!(b[39], 0x01, "in-capsule data block, offset subtype");
        assert_eq!(&b[32..36], &[0, 4, 0, 0], "SGL length 1024");
        assert_eq!(&b[42..44], &[3, 0]);
        assert_eq!(&b[44..46], &[127, 0]);
        assert_eq!(&b[48..52], &5000u32.to_le_bytes());
        let sqe = c.to_sqe();
        assert_eq!(sqe.fctype(), 1);
        assert_eq!(ConnectCommand::from_sqe(&sqe), c);
    }

    #[test]
    fn connect_data_figure_21() {
        let d = ConnectData::new([0xAA; 16], 0xFFFF, "nqn.a", "nqn.h");
        let b = d.as_bytes();
        assert_eq!(&b[0..16], &[0xAA; 16]);
        assert_eq!(&b[16..18], &[0xFF, 0xFF]);
        assert_eq!(&b[256..261], b"nqn.a");
        assert_eq!(b[261], 0);
        assert_eq!(&b[512..517], b"nqn.h");
        assert_eq!(nqn_from_field(&d.subnqn), Ok("nqn.a"));
        assert_eq!(nqn_from_field(&[b'x'; 256]), Err(NqnError::NotTerminated));
        assert_eq!(nqn_from_field(&[0; 256]), Err(NqnError::Empty));
    }

    #[test]
    fn property_layout_figure_28() {
        let p = PropertyCommand::new(9, property::CC, false, Some(cc::ENABLE_DEFAULT as u64));
        let b = p.as_bytes();
        assert_eq!(b[4], 0x00);
        assert_eq!(b[40], 0);
        assert_eq!(&b[44..48], &[0x14, 0, 0, 0]);
        assert_eq!(&b[48..52], &[0x01, 0x00, 0x46, 0x00]);
        assert_eq!(PropertyCommand::new(1, 0, true, None).size(), Some(8));
    }

    #[test]
    fn cap_fields() {
        let c = cap::build(1023, 30);
        assert_eq!(cap::mqes(c), 1023);
        assert_eq!(cap::timeout_500ms(c), 30);
        assert_eq!((c >> 37) & 1, 1);
    }
}
