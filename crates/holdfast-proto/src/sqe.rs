//! The 64-byte Submission Queue Entry (NVMe Base Specification 2.0, §4.2 Figure 87 "Common Command
//! Format") and its views for commands whose dwords 10–15 matter to NVMe/TCP peers.

use crate::sgl::SglDescriptor;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of a submission queue entry.
pub const SQE_SIZE: usize = 64;

/// PSDT (byte 1 bits 7:6) value for "SGLs used, metadata pointer is an address": the value NVMe-oF requires.
pub const PSDT_SGL: u8 = 0x1 << 6;

/// FUSE (byte 1 bits 1:0) of the first command of a fused operation (NVMe Base 2.0 §3.4.2, Figure 87): in
/// the NVM command set, the Compare of a Compare and Write.
pub const FUSE_FIRST: u8 = 0b01;
/// FUSE of the second command of a fused operation: the Write of a Compare and Write, next in the same
/// submission queue after its first.
pub const FUSE_SECOND: u8 = 0b10;

/// A Submission Queue Entry (Figure 87). Fabrics commands overlay the same 64 bytes (see
/// [`crate::fabrics`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SubmissionEntry {
    /// CDW0 bits 7:0: opcode.
    pub opcode: u8,
    /// CDW0 bits 15:8: FUSE (bits 1:0) and PSDT (bits 7:6).
    pub flags: u8,
    /// CDW0 bits 31:16: Command Identifier.
    pub cid: U16,
    /// Namespace Identifier (for Fabrics commands byte 4 is FCTYPE).
    pub nsid: U32,
    /// CDW2.
    pub cdw2: U32,
    /// CDW3.
    pub cdw3: U32,
    /// Metadata Pointer.
    pub mptr: U64,
    /// Data Pointer: SGL Entry 1.
    pub dptr: SglDescriptor,
    /// Command Dword 10.
    pub cdw10: U32,
    /// Command Dword 11.
    pub cdw11: U32,
    /// Command Dword 12.
    pub cdw12: U32,
    /// Command Dword 13.
    pub cdw13: U32,
    /// Command Dword 14.
    pub cdw14: U32,
    /// Command Dword 15.
    pub cdw15: U32,
}
const _: () = assert!(core::mem::size_of::<SubmissionEntry>() == SQE_SIZE);
const _: () = assert!(core::mem::offset_of!(SubmissionEntry, cid) == 2);
const _: () = assert!(core::mem::offset_of!(SubmissionEntry, nsid) == 4);
const _: () = assert!(core::mem::offset_of!(SubmissionEntry, mptr) == 16);
const _: () = assert!(core::mem::offset_of!(SubmissionEntry, dptr) == 24);
const _: () = assert!(core::mem::offset_of!(SubmissionEntry, cdw10) == 40);
const _: () = assert!(core::mem::offset_of!(SubmissionEntry, cdw15) == 60);

impl SubmissionEntry {
    /// An all-zero entry with the given opcode and CID, PSDT set for SGLs.
    pub fn new(opcode: u8, cid: u16) -> Self {
        let mut s = Self::new_zeroed();
        s.opcode = opcode;
        s.flags = PSDT_SGL;
        s.cid.set(cid);
        s
    }
    /// Parse from exactly 64 bytes.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Self::read_from_bytes(b).ok()
    }
    /// Command identifier.
    pub fn cid(&self) -> u16 {
        self.cid.get()
    }
    /// Namespace identifier.
    pub fn nsid(&self) -> u32 {
        self.nsid.get()
    }
    /// FUSE bits (0 = normal, [`FUSE_FIRST`], [`FUSE_SECOND`]; 11b is reserved).
    pub fn fuse(&self) -> u8 {
        self.flags & 0x3
    }
    /// Set the FUSE bits.
    pub fn set_fuse(&mut self, fuse: u8) {
        self.flags = (self.flags & !0x3) | (fuse & 0x3);
    }
    /// PSDT, the data pointer's kind (byte 1 bits 7:6; [`PSDT_SGL`] >> 6 = 01b is what NVMe-oF allows).
    pub fn psdt(&self) -> u8 {
        self.flags >> 6
    }
    /// Fabrics command type (byte 4), meaningful when `opcode == 0x7F`.
    pub fn fctype(&self) -> u8 {
        self.nsid.get() as u8
    }
    /// Dwords 10–15 as an array, index 0 = CDW10.
    pub fn cdws(&self) -> [u32; 6] {
        [self.cdw10.get(), self.cdw11.get(), self.cdw12.get(), self.cdw13.get(), self.cdw14.get(), self.cdw15.get()]
    }
}

/// Read/Write/Compare/Write Zeroes dwords (NVM Command Set 1.0, Figure 42 "Read – Command Dword 10 and 11" ff.).
pub mod rw {
    use super::SubmissionEntry;
    /// Force Unit Access, CDW12 bit 30.
    pub const FUA: u32 = 1 << 30;
    /// Limited Retry, CDW12 bit 31.
    pub const LR: u32 = 1 << 31;
    /// Deallocate (Write Zeroes), CDW12 bit 25.
    pub const DEAC: u32 = 1 << 25;

    /// Starting LBA (CDW10 low, CDW11 high).
    pub fn slba(s: &SubmissionEntry) -> u64 {
        s.cdw10.get() as u64 | ((s.cdw11.get() as u64) << 32)
    }
    /// Number of logical blocks (CDW12 bits 15:0, 0's based), as a 1-based count.
    pub fn nlb(s: &SubmissionEntry) -> u32 {
        (s.cdw12.get() & 0xFFFF) + 1
    }
    /// Set SLBA and the block count (1..=65536) plus extra CDW12 flags.
    pub fn set(s: &mut SubmissionEntry, slba: u64, blocks: u32, cdw12_flags: u32) {
        s.cdw10.set(slba as u32);
        s.cdw11.set((slba >> 32) as u32);
        s.cdw12.set(((blocks - 1) & 0xFFFF) | cdw12_flags);
    }
}

/// Dataset Management (NVM Command Set 1.0, §3.2.3 Figure 38–40).
pub mod dsm {
    /// CDW11 bit 2: Attribute – Deallocate.
    pub const AD: u32 = 1 << 2;
    /// Size of one range entry.
    pub const RANGE_SIZE: usize = 16;
    /// Maximum number of ranges (NR is 0's based, 8 bits).
    pub const MAX_RANGES: usize = 256;

    /// One Dataset Management range (Figure 40): context attributes u32, length in LBAs u32, starting LBA u64.
    #[derive(Clone, Copy, Debug, PartialEq, Eq)]
    pub struct Range {
        /// Context attributes.
        pub cattr: u32,
        /// Length in logical blocks.
        pub nlb: u32,
        /// Starting LBA.
        pub slba: u64,
    }
    impl Range {
        /// Decode from 16 bytes.
        pub fn decode(b: &[u8; 16]) -> Self {
            Range {
                cattr: u32::from_le_bytes(b[0..4].try_into().unwrap_or_default()),
                nlb: u32::from_le_bytes(b[4..8].try_into().unwrap_or_default()),
                slba: u64::from_le_bytes(b[8..16].try_into().unwrap_or_default()),
            }
        }
        /// Encode to 16 bytes.
        pub fn encode(&self) -> [u8; 16] {
            let mut b = [0u8; 16];
            b[0..4].copy_from_slice(&self.cattr.to_le_bytes());
            b[4..8].copy_from_slice(&self.nlb.to_le_bytes());
            b[8..16].copy_from_slice(&self.slba.to_le_bytes());
            b
        }
    }
}

/// Get Log Page dwords (NVMe Base 2.0, §5.16 Figures 197–200).
pub mod get_log_page {
    use super::SubmissionEntry;
    /// Log Page Identifier (CDW10 bits 7:0).
    pub fn lid(s: &SubmissionEntry) -> u8 {
        s.cdw10.get() as u8
    }
    /// Log Specific Field (CDW10 bits 14:8).
    pub fn lsp(s: &SubmissionEntry) -> u8 {
        ((s.cdw10.get() >> 8) & 0x7F) as u8
    }
    /// Retain Asynchronous Event (CDW10 bit 15).
    pub fn rae(s: &SubmissionEntry) -> bool {
        s.cdw10.get() & (1 << 15) != 0
    }
    /// Number of bytes requested: (NUMDU:NUMDL + 1) dwords.
    pub fn len_bytes(s: &SubmissionEntry) -> u64 {
        let numdl = (s.cdw10.get() >> 16) as u64;
        let numdu = (s.cdw11.get() & 0xFFFF) as u64;
        (((numdu << 16) | numdl) + 1) * 4
    }
    /// Log Specific Identifier (CDW11 bits 31:16).
    pub fn lsi(s: &SubmissionEntry) -> u16 {
        (s.cdw11.get() >> 16) as u16
    }
    /// Log Page Offset in bytes (CDW12 low, CDW13 high).
    pub fn offset(s: &SubmissionEntry) -> u64 {
        s.cdw12.get() as u64 | ((s.cdw13.get() as u64) << 32)
    }
    /// Offset Type (CDW14 bit 23): the offset is an index into the log's entries, not a byte offset; only for
    /// a log whose Supported Log Pages entry sets IOS.
    pub fn ot(s: &SubmissionEntry) -> bool {
        s.cdw14.get() & (1 << 23) != 0
    }
    /// Command Set Identifier (CDW14 bits 31:24), of a log that is per command set (Commands Supported and
    /// Effects).
    pub fn csi(s: &SubmissionEntry) -> u8 {
        (s.cdw14.get() >> 24) as u8
    }
    /// Build the dwords for reading `len` bytes (a multiple of 4, at least 4) of log `lid` at `offset`.
    pub fn set(s: &mut SubmissionEntry, lid: u8, lsp: u8, len: u32, offset: u64) {
        let numd = (len / 4).max(1) - 1;
        s.cdw10.set(lid as u32 | ((lsp as u32 & 0x7F) << 8) | ((numd & 0xFFFF) << 16));
        s.cdw11.set(numd >> 16);
        s.cdw12.set(offset as u32);
        s.cdw13.set((offset >> 32) as u32);
    }
}

/// Identify dwords (NVMe Base 2.0, §5.17 Figure 273).
pub mod identify {
    use super::SubmissionEntry;
    /// Controller or Namespace Structure (CDW10 bits 7:0).
    pub fn cns(s: &SubmissionEntry) -> u8 {
        s.cdw10.get() as u8
    }
    /// Controller Identifier (CDW10 bits 31:16).
    pub fn cntid(s: &SubmissionEntry) -> u16 {
        (s.cdw10.get() >> 16) as u16
    }
    /// Command Set Identifier (CDW11 bits 31:24).
    pub fn csi(s: &SubmissionEntry) -> u8 {
        (s.cdw11.get() >> 24) as u8
    }
}

/// Get/Set Features dwords (NVMe Base 2.0, §5.15 and §5.27).
pub mod features {
    use super::SubmissionEntry;
    /// Feature Identifier (CDW10 bits 7:0).
    pub fn fid(s: &SubmissionEntry) -> u8 {
        s.cdw10.get() as u8
    }
    /// Get Features: Select (CDW10 bits 10:8).
    pub fn sel(s: &SubmissionEntry) -> u8 {
        ((s.cdw10.get() >> 8) & 0x7) as u8
    }
    /// Set Features: Save (CDW10 bit 31).
    pub fn save(s: &SubmissionEntry) -> bool {
        s.cdw10.get() & (1 << 31) != 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    #[test]
    fn read_command_layout_figure_87() {
        let mut s = SubmissionEntry::new(crate::opcode::io::READ, 0x1234);
        s.nsid.set(1);
        s.dptr = SglDescriptor::transport(4096);
        rw::set(&mut s, 0x1_0000_0002, 8, rw::FUA);
        let b = s.as_bytes();
        assert_eq!(b[0], 0x02);
        assert_eq!(b[1], 0x40, "PSDT = 01b");
        assert_eq!(&b[2..4], &[0x34, 0x12]);
        assert_eq!(&b[4..8], &[1, 0, 0, 0]);
        assert_eq!(&b[32..36], &[0, 0x10, 0, 0], "SGL length");
        assert_eq!(b[39], 0x5A, "transport SGL data block");
        assert_eq!(&b[40..48], &[2, 0, 0, 0, 1, 0, 0, 0], "SLBA");
        assert_eq!(&b[48..52], &[7, 0, 0, 0x40], "NLB 0's based, FUA bit 30");
        assert_eq!(rw::slba(&s), 0x1_0000_0002);
        assert_eq!(rw::nlb(&s), 8);
    }

    #[test]
    fn get_log_page_dwords() {
        let mut s = SubmissionEntry::new(crate::opcode::admin::GET_LOG_PAGE, 1);
        get_log_page::set(&mut s, 0x70, 0, 0x40000 + 4, 1024);
        assert_eq!(get_log_page::lid(&s), 0x70);
        assert_eq!(get_log_page::len_bytes(&s), 0x40004);
        assert_eq!(get_log_page::offset(&s), 1024);
    }
}
