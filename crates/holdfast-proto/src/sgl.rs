//! SGL descriptors as NVMe/TCP uses them (NVMe Base Specification 2.0, §4.3.2 Figure 115 "Generic SGL
//! Descriptor Format", Figure 116 "SGL Descriptor Type"; NVMe/TCP Transport Specification 1.0, §3.3.3
//! "Command Capsules" and §3.3.5 "Data Transfers").
//!
//! NVMe/TCP uses exactly two kinds: a Data Block descriptor with the Offset subtype for in-capsule data
//! (identifier `0x01`, address = offset from the start of the in-capsule data, must be 0 since ICDOFF = 0) and a
//! Transport SGL Data Block descriptor (identifier `0x5A`) for data moved by H2CData/C2HData/R2T PDUs.

use zerocopy::little_endian::{U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// SGL descriptor type (bits 7:4 of byte 15): Data Block.
pub const TYPE_DATA_BLOCK: u8 = 0x0;
/// SGL descriptor type: Transport SGL Data Block.
pub const TYPE_TRANSPORT_DATA_BLOCK: u8 = 0x5;
/// SGL subtype (bits 3:0 of byte 15): Address.
pub const SUBTYPE_ADDRESS: u8 = 0x0;
/// SGL subtype: Offset.
pub const SUBTYPE_OFFSET: u8 = 0x1;
/// SGL subtype used with Transport Data Block by NVMe/TCP (Transport Specific, 0xA).
pub const SUBTYPE_TRANSPORT: u8 = 0xA;

/// Descriptor identifier for in-capsule data: Data Block, Offset subtype.
pub const ID_INCAPSULE: u8 = (TYPE_DATA_BLOCK << 4) | SUBTYPE_OFFSET;
/// Descriptor identifier for transport data: Transport SGL Data Block, transport subtype.
pub const ID_TRANSPORT: u8 = (TYPE_TRANSPORT_DATA_BLOCK << 4) | SUBTYPE_TRANSPORT;

/// A 16-byte SGL descriptor (Figure 115): address (8 B), length (4 B), reserved (3 B), identifier (1 B).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SglDescriptor {
    /// Address, or offset into the in-capsule data for the Offset subtype.
    pub addr: U64,
    /// Length in bytes.
    pub length: U32,
    /// Reserved.
    pub rsvd: [u8; 3],
    /// SGL Identifier: type in bits 7:4, subtype in bits 3:0.
    pub id: u8,
}
const _: () = assert!(core::mem::size_of::<SglDescriptor>() == 16);
const _: () = assert!(core::mem::offset_of!(SglDescriptor, length) == 8);
const _: () = assert!(core::mem::offset_of!(SglDescriptor, id) == 15);

impl SglDescriptor {
    /// In-capsule data of `len` bytes at offset 0.
    pub fn incapsule(len: u32) -> Self {
        SglDescriptor { addr: U64::new(0), length: U32::new(len), rsvd: [0; 3], id: ID_INCAPSULE }
    }
    /// Transport data block of `len` bytes (0 for commands without data).
    pub fn transport(len: u32) -> Self {
        SglDescriptor { addr: U64::new(0), length: U32::new(len), rsvd: [0; 3], id: ID_TRANSPORT }
    }
    /// Descriptor type (bits 7:4 of the identifier).
    pub fn sgl_type(&self) -> u8 {
        self.id >> 4
    }
    /// Descriptor subtype (bits 3:0 of the identifier).
    pub fn subtype(&self) -> u8 {
        self.id & 0xF
    }
    /// The length field.
    pub fn len(&self) -> u32 {
        self.length.get()
    }
    /// True if the length is zero.
    pub fn is_empty(&self) -> bool {
        self.length.get() == 0
    }
}
