//! The 16-byte Completion Queue Entry (NVMe Base Specification 2.0, §4.6 Figure 89 "Common Completion Queue
//! Entry Layout").

use crate::status::Status;
use zerocopy::little_endian::{U16, U32};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Size of a completion queue entry.
pub const CQE_SIZE: usize = 16;

/// A Completion Queue Entry (Figure 89).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct CompletionEntry {
    /// DW0: command specific.
    pub dw0: U32,
    /// DW1: command specific.
    pub dw1: U32,
    /// DW2 bits 15:0: SQ Head Pointer.
    pub sqhd: U16,
    /// DW2 bits 31:16: SQ Identifier.
    pub sqid: U16,
    /// DW3 bits 15:0: Command Identifier.
    pub cid: U16,
    /// DW3 bits 31:16: Phase Tag (bit 0) and Status Field (bits 15:1).
    pub status: U16,
}
const _: () = assert!(core::mem::size_of::<CompletionEntry>() == CQE_SIZE);
const _: () = assert!(core::mem::offset_of!(CompletionEntry, sqhd) == 8);
const _: () = assert!(core::mem::offset_of!(CompletionEntry, cid) == 12);
const _: () = assert!(core::mem::offset_of!(CompletionEntry, status) == 14);

impl CompletionEntry {
    /// A completion for `cid` with `status` and result `dw0`.
    pub fn new(cid: u16, status: Status, dw0: u32) -> Self {
        let mut c = Self::new_zeroed();
        c.cid.set(cid);
        c.status.set(status.to_cqe_word(false));
        c.dw0.set(dw0);
        c
    }
    /// Parse from exactly 16 bytes.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Self::read_from_bytes(b).ok()
    }
    /// The status field.
    pub fn status(&self) -> Status {
        Status::from_cqe_word(self.status.get())
    }
    /// Command identifier.
    pub fn cid(&self) -> u16 {
        self.cid.get()
    }
    /// DW0 and DW1 as one 64-bit result (Property Get of an 8-byte property).
    pub fn result64(&self) -> u64 {
        self.dw0.get() as u64 | ((self.dw1.get() as u64) << 32)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::IntoBytes;

    #[test]
    fn layout_figure_89() {
        let mut c = CompletionEntry::new(0xABCD, Status::INVALID_FIELD.with_dnr(), 0x11223344);
        c.sqhd.set(5);
        c.sqid.set(2);
        let b = c.as_bytes();
        assert_eq!(&b[0..4], &[0x44, 0x33, 0x22, 0x11]);
        assert_eq!(&b[8..12], &[5, 0, 2, 0]);
        assert_eq!(&b[12..14], &[0xCD, 0xAB]);
        // Status 0x4002 << 1 = 0x8004 (DNR in bit 15 of the word, SC 0x02 in bits 8:1).
        assert_eq!(&b[14..16], &[0x04, 0x80]);
        assert_eq!(c.status(), Status::INVALID_FIELD.with_dnr());
    }
}
