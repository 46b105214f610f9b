//! Log pages (NVMe Base Specification 2.0, §5.16.1; NVMe over Fabrics 1.1, §5.4 for the Discovery log page).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Supported Log Pages.
pub const LID_SUPPORTED_LOG_PAGES: u8 = 0x00;
/// Error Information.
pub const LID_ERROR_INFO: u8 = 0x01;
/// SMART / Health Information.
pub const LID_SMART_HEALTH: u8 = 0x02;
/// Firmware Slot Information.
pub const LID_FIRMWARE_SLOT: u8 = 0x03;
/// Changed Namespace List.
pub const LID_CHANGED_NS_LIST: u8 = 0x04;
/// Commands Supported and Effects.
pub const LID_COMMANDS_SUPPORTED_EFFECTS: u8 = 0x05;
/// Device Self-test.
pub const LID_DEVICE_SELF_TEST: u8 = 0x06;
/// Asymmetric Namespace Access.
pub const LID_ANA: u8 = 0x0C;
/// Persistent Event Log.
pub const LID_PERSISTENT_EVENT: u8 = 0x0D;
/// Discovery (discovery controllers).
pub const LID_DISCOVERY: u8 = 0x70;

/// Effects bit 0: Command Supported.
pub const EFFECTS_CSUPP: u32 = 1 << 0;
/// Effects bit 1: Logical Block Content Change.
pub const EFFECTS_LBCC: u32 = 1 << 1;
/// Effects bit 2: Namespace Capability Change.
pub const EFFECTS_NCC: u32 = 1 << 2;

/// A 128-bit little-endian counter as SMART fields carry it.
pub fn u128_le(v: u128) -> [u8; 16] {
    v.to_le_bytes()
}

/// Read a 128-bit little-endian counter.
pub fn u128_from(b: &[u8; 16]) -> u128 {
    u128::from_le_bytes(*b)
}

/// The window [offset, offset + len) of a log page, zero-filled past its end (Get Log Page LPO/NUMD).
pub fn log_page_slice(full: &[u8], offset: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    if let Ok(start) = usize::try_from(offset) {
        if start < full.len() {
            let n = (full.len() - start).min(len);
            out[..n].copy_from_slice(&full[start..start + n]);
        }
    }
    out
}

/// Error Information log entry (NVMe Base 2.0 Figure 204), 64 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ErrorInformationEntry {
    /// Error Count (unique, incrementing; 0 = invalid entry).
    pub error_count: U64,
    /// Submission Queue ID.
    pub sqid: U16,
    /// Command ID.
    pub cid: U16,
    /// Status Field (bit 0 phase tag).
    pub status: U16,
    /// Parameter Error Location (FFFFh = none).
    pub parameter_error_location: U16,
    /// LBA.
    pub lba: U64,
    /// Namespace.
    pub nsid: U32,
    /// Vendor Specific Information Available.
    pub vsia: u8,
    /// Transport Type.
    pub trtype: u8,
    /// Reserved.
    pub rsvd30: [u8; 2],
    /// Command Specific Information.
    pub csi: U64,
    /// Transport Type Specific Information.
    pub ttsi: U16,
    /// Reserved.
    pub rsvd42: [u8; 22],
}
const _: () = assert!(core::mem::size_of::<ErrorInformationEntry>() == 64);
const _: () = assert!(core::mem::offset_of!(ErrorInformationEntry, lba) == 16);
const _: () = assert!(core::mem::offset_of!(ErrorInformationEntry, trtype) == 29);

/// SMART / Health Information log (NVMe Base 2.0 Figure 207), 512 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SmartHealthLog {
    /// Critical Warning.
    pub critical_warning: u8,
    /// Composite Temperature (K).
    pub composite_temperature: U16,
    /// Available Spare (%).
    pub available_spare: u8,
    /// Available Spare Threshold (%).
    pub available_spare_threshold: u8,
    /// Percentage Used.
    pub percentage_used: u8,
    /// Endurance Group Critical Warning Summary.
    pub endurance_group_warning: u8,
    /// Reserved.
    pub rsvd7: [u8; 25],
    /// Data Units Read (1000 × 512 bytes).
    pub data_units_read: [u8; 16],
    /// Data Units Written.
    pub data_units_written: [u8; 16],
    /// Host Read Commands.
    pub host_read_commands: [u8; 16],
    /// Host Write Commands.
    pub host_write_commands: [u8; 16],
    /// Controller Busy Time (minutes).
    pub controller_busy_time: [u8; 16],
    /// Power Cycles.
    pub power_cycles: [u8; 16],
    /// Power On Hours.
    pub power_on_hours: [u8; 16],
    /// Unsafe Shutdowns.
    pub unsafe_shutdowns: [u8; 16],
    /// Media and Data Integrity Errors.
    pub media_errors: [u8; 16],
    /// Number of Error Information Log Entries.
    pub num_err_log_entries: [u8; 16],
    /// Warning Composite Temperature Time (minutes).
    pub warning_temp_time: U32,
    /// Critical Composite Temperature Time (minutes).
    pub critical_temp_time: U32,
    /// Temperature Sensors 1..8 (K).
    pub temp_sensors: [U16; 8],
    /// Reserved.
    pub rsvd216: [u8; 296],
}
const _: () = assert!(core::mem::size_of::<SmartHealthLog>() == 512);
const _: () = assert!(core::mem::offset_of!(SmartHealthLog, data_units_read) == 32);
const _: () = assert!(core::mem::offset_of!(SmartHealthLog, num_err_log_entries) == 176);
const _: () = assert!(core::mem::offset_of!(SmartHealthLog, temp_sensors) == 200);

/// Firmware Slot Information log (NVMe Base 2.0 Figure 208), 512 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct FirmwareSlotInfo {
    /// Active Firmware Info.
    pub afi: u8,
    /// Reserved.
    pub rsvd1: [u8; 7],
    /// Firmware Revision for slots 1..7.
    pub frs: [[u8; 8]; 7],
    /// Reserved.
    pub rsvd64: [u8; 448],
}
const _: () = assert!(core::mem::size_of::<FirmwareSlotInfo>() == 512);
const _: () = assert!(core::mem::offset_of!(FirmwareSlotInfo, frs) == 8);

/// Changed Namespace List log (NVMe Base 2.0 Figure 209): up to 1024 NSIDs; FFFFFFFFh first if more changed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ChangedNamespaceList {
    /// NSIDs, zero terminated.
    pub nsid: [U32; 1024],
}
const _: () = assert!(core::mem::size_of::<ChangedNamespaceList>() == 4096);

/// Commands Supported and Effects log (NVMe Base 2.0 Figure 210), 4096 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct CommandsSupportedAndEffects {
    /// Admin Command Supported, by opcode.
    pub acs: [U32; 256],
    /// I/O Command Supported, by opcode.
    pub iocs: [U32; 256],
    /// Reserved.
    pub rsvd2048: [u8; 2048],
}
const _: () = assert!(core::mem::size_of::<CommandsSupportedAndEffects>() == 4096);
const _: () = assert!(core::mem::offset_of!(CommandsSupportedAndEffects, iocs) == 1024);

/// TRTYPE: TCP.
pub const TRTYPE_TCP: u8 = 3;
/// ADRFAM: IPv4.
pub const ADRFAM_IPV4: u8 = 1;
/// ADRFAM: IPv6.
pub const ADRFAM_IPV6: u8 = 2;
/// SUBTYPE: referral to another discovery service.
pub const SUBTYPE_REFERRAL: u8 = 1;
/// SUBTYPE: an NVM subsystem.
pub const SUBTYPE_NVME: u8 = 2;
/// SUBTYPE: the current discovery subsystem.
pub const SUBTYPE_CURRENT_DISCOVERY: u8 = 3;
/// TREQ bits 1:0: secure channel not specified.
pub const TREQ_SECURE_NOT_SPECIFIED: u8 = 0;
/// TREQ bits 1:0: secure channel required.
pub const TREQ_SECURE_REQUIRED: u8 = 1;
/// TREQ bits 1:0: secure channel not required.
pub const TREQ_SECURE_NOT_REQUIRED: u8 = 2;
/// TREQ bit 2: SQ flow control disable supported.
pub const TREQ_DISABLE_SQFLOW: u8 = 1 << 2;

/// Discovery log page header (NVMe-oF 1.1 Figure 37), 1024 bytes; entries follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DiscoveryLogHeader {
    /// Generation Counter.
    pub genctr: U64,
    /// Number of Records.
    pub numrec: U64,
    /// Record Format (0).
    pub recfmt: U16,
    /// Reserved.
    pub rsvd18: [u8; 1006],
}
const _: () = assert!(core::mem::size_of::<DiscoveryLogHeader>() == 1024);

/// Discovery log page entry (NVMe-oF 1.1 Figure 38), 1024 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DiscoveryLogEntry {
    /// Transport Type.
    pub trtype: u8,
    /// Address Family.
    pub adrfam: u8,
    /// Subsystem Type.
    pub subtype: u8,
    /// Transport Requirements.
    pub treq: u8,
    /// Port ID.
    pub portid: U16,
    /// Controller ID (FFFFh: dynamic).
    pub cntlid: U16,
    /// Admin Max SQ Size.
    pub asqsz: U16,
    /// Entry Flags.
    pub eflags: U16,
    /// Reserved.
    pub rsvd12: [u8; 20],
    /// Transport Service Identifier (the TCP port, ASCII).
    pub trsvcid: [u8; 32],
    /// Reserved.
    pub rsvd64: [u8; 192],
    /// Subsystem NQN.
    pub subnqn: [u8; 256],
    /// Transport Address (ASCII).
    pub traddr: [u8; 256],
    /// Transport Specific Address Subtype (TCP: byte 0 SECTYPE).
    pub tsas: [u8; 256],
}
const _: () = assert!(core::mem::size_of::<DiscoveryLogEntry>() == 1024);
const _: () = assert!(core::mem::offset_of!(DiscoveryLogEntry, trsvcid) == 32);
const _: () = assert!(core::mem::offset_of!(DiscoveryLogEntry, subnqn) == 256);
const _: () = assert!(core::mem::offset_of!(DiscoveryLogEntry, traddr) == 512);
const _: () = assert!(core::mem::offset_of!(DiscoveryLogEntry, tsas) == 768);

fn put_str(field: &mut [u8], s: &str) {
    field.fill(0);
    let n = s.len().min(field.len());
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// A string field with NUL or space padding removed (SPDK pads with spaces, Linux with NULs).
pub fn field_str(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).trim_end_matches(' ').to_string()
}

impl DiscoveryLogEntry {
    /// A TCP entry with NUL-padded strings.
    #[allow(clippy::too_many_arguments)]
    pub fn build(
        subtype: u8,
        portid: u16,
        cntlid: u16,
        asqsz: u16,
        trsvcid: &str,
        subnqn: &str,
        traddr: &str,
        adrfam: u8,
    ) -> Self {
        use zerocopy::FromZeros;
        let mut e = Self::new_zeroed();
        e.trtype = TRTYPE_TCP;
        e.adrfam = adrfam;
        e.subtype = subtype;
        e.portid.set(portid);
        e.cntlid.set(cntlid);
        e.asqsz.set(asqsz);
        put_str(&mut e.trsvcid, trsvcid);
        put_str(&mut e.subnqn, subnqn);
        put_str(&mut e.traddr, traddr);
        e
    }
    /// Parse from 1024 bytes.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Self::read_from_prefix(b).ok().map(|(e, _)| e)
    }
}

/// The whole Discovery log page: header then entries.
pub fn discovery_log_bytes(genctr: u64, entries: &[DiscoveryLogEntry]) -> Vec<u8> {
    use zerocopy::FromZeros;
    let mut h = DiscoveryLogHeader::new_zeroed();
    h.genctr.set(genctr);
    h.numrec.set(entries.len() as u64);
    let mut v = Vec::with_capacity(1024 * (entries.len() + 1));
    v.extend_from_slice(h.as_bytes());
    for e in entries {
        v.extend_from_slice(e.as_bytes());
    }
    v
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn discovery_entry_golden() {
        let e = DiscoveryLogEntry::build(SUBTYPE_NVME, 1, 0xFFFF, 32, "4420", "nqn.x", "127.0.0.1", ADRFAM_IPV4);
        let b = e.as_bytes();
        assert_eq!(&b[..10], &[3, 1, 2, 0, 1, 0, 0xFF, 0xFF, 32, 0]);
        assert_eq!(&b[32..37], b"4420\0");
        assert_eq!(&b[256..262], b"nqn.x\0");
        assert_eq!(&b[512..521], b"127.0.0.1");
        let page = discovery_log_bytes(7, &[e]);
        assert_eq!(page.len(), 2048);
        assert_eq!(&page[..9], &[7, 0, 0, 0, 0, 0, 0, 0, 1]);
        let mut spaced = [b' '; 32];
        spaced[..4].copy_from_slice(b"4420");
        assert_eq!(field_str(&spaced), "4420");
        assert_eq!(log_page_slice(&page, 1024, 8), page[1024..1032].to_vec());
        assert_eq!(log_page_slice(&page, 2040, 16)[8..], [0u8; 8]);
    }
}
