//! Log pages: identifiers, the standard pages holdfast serves, and the Discovery log page.
//!
//! Sources: NVMe Base Specification 2.1 §5.1.12 (Get Log Page): the Log Page Identifiers table, §5.1.12.1.1
//! Supported Log Pages, §5.1.12.1.2 Error Information (Figure 205 "Error Information Log Entry Data
//! Structure"), §5.1.12.1.3 SMART / Health Information (Figure 206), §5.1.12.1.4 Firmware Slot Information,
//! §5.1.12.1.5 Changed Namespace List, §5.1.12.1.6 Commands Supported and Effects, and §5.1.12.3.1 Discovery
//! (Figure 294 "Discovery Log Page Entry Data Structure"); the same pages in NVMe Base 2.0 §5.16.1; and NVMe
//! over Fabrics 1.1, where the Discovery log page was defined before it moved into the base specification.
//! The TCP transport specific address subtype (SECTYPE) is from NVMe/TCP 1.0 as amended by TP8011. Figure
//! numbers change between revisions: a figure title is the stable reference.
//!
//! holdfast's own vendor-specific page (LID C0h) lives in [`crate::policy`].

use crate::identify::{get_nul_padded, set_nul_padded};
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

// ---------------------------------------------------------------------------------------------------------
// Log Page Identifiers (NVMe Base 2.1 §5.1.12, the Log Page Identifiers table)
// ---------------------------------------------------------------------------------------------------------

/// LID 00h: Supported Log Pages ([`SupportedLogPages`]).
pub const LID_SUPPORTED_LOG_PAGES: u8 = 0x00;
/// LID 01h: Error Information ([`ErrorInformationEntry`] × (ELPE + 1)).
pub const LID_ERROR_INFO: u8 = 0x01;
/// LID 02h: SMART / Health Information ([`SmartHealthLog`]).
pub const LID_SMART_HEALTH: u8 = 0x02;
/// LID 03h: Firmware Slot Information ([`FirmwareSlotInfo`]).
pub const LID_FIRMWARE_SLOT: u8 = 0x03;
/// LID 04h: Changed Namespace List ([`ChangedNamespaceList`]).
pub const LID_CHANGED_NS_LIST: u8 = 0x04;
/// LID 05h: Commands Supported and Effects ([`CommandsSupportedAndEffects`]).
pub const LID_COMMANDS_SUPPORTED_EFFECTS: u8 = 0x05;
/// LID 06h: Device Self-test.
pub const LID_DEVICE_SELF_TEST: u8 = 0x06;
/// LID 07h: Telemetry Host-Initiated.
pub const LID_TELEMETRY_HOST: u8 = 0x07;
/// LID 08h: Telemetry Controller-Initiated.
pub const LID_TELEMETRY_CTRL: u8 = 0x08;
/// LID 0Ch: Asymmetric Namespace Access.
pub const LID_ANA: u8 = 0x0C;
/// LID 0Dh: Persistent Event Log.
pub const LID_PERSISTENT_EVENT: u8 = 0x0D;
/// LID 12h: Feature Identifiers Supported and Effects.
pub const LID_FEATURE_IDS_EFFECTS: u8 = 0x12;
/// LID 70h: Discovery (discovery controllers only; header [`DiscoveryLogHeader`], then [`DiscoveryLogEntry`]s).
pub const LID_DISCOVERY: u8 = 0x70;
/// LID 71h: Host Discovery (centralized discovery controllers).
pub const LID_HOST_DISCOVERY: u8 = 0x71;
/// LID 80h: Reservation Notification.
pub const LID_RESERVATION_NOTIFICATION: u8 = 0x80;
/// LID 81h: Sanitize Status.
pub const LID_SANITIZE_STATUS: u8 = 0x81;
/// First vendor-specific LID (C0h–FFh); holdfast uses C0h ([`crate::policy::LID_HOLDFAST_POLICY`]).
pub const LID_VENDOR_SPECIFIC_FIRST: u8 = 0xC0;

/// True for a LID in the vendor-specific range C0h–FFh.
pub fn is_vendor_specific(lid: u8) -> bool {
    lid >= LID_VENDOR_SPECIFIC_FIRST
}

/// The specification's name of a log page, for logs and error messages.
pub fn log_page_name(lid: u8) -> &'static str {
    match lid {
        LID_SUPPORTED_LOG_PAGES => "Supported Log Pages",
        LID_ERROR_INFO => "Error Information",
        LID_SMART_HEALTH => "SMART / Health Information",
        LID_FIRMWARE_SLOT => "Firmware Slot Information",
        LID_CHANGED_NS_LIST => "Changed Namespace List",
        LID_COMMANDS_SUPPORTED_EFFECTS => "Commands Supported and Effects",
        LID_DEVICE_SELF_TEST => "Device Self-test",
        LID_TELEMETRY_HOST => "Telemetry Host-Initiated",
        LID_TELEMETRY_CTRL => "Telemetry Controller-Initiated",
        LID_ANA => "Asymmetric Namespace Access",
        LID_PERSISTENT_EVENT => "Persistent Event Log",
        LID_FEATURE_IDS_EFFECTS => "Feature Identifiers Supported and Effects",
        LID_DISCOVERY => "Discovery",
        LID_HOST_DISCOVERY => "Host Discovery",
        LID_RESERVATION_NOTIFICATION => "Reservation Notification",
        LID_SANITIZE_STATUS => "Sanitize Status",
        l if is_vendor_specific(l) => "Vendor Specific",
        _ => "Unknown log page",
    }
}

// ---------------------------------------------------------------------------------------------------------
// Helpers shared by every page
// ---------------------------------------------------------------------------------------------------------

/// A 128-bit counter as SMART and capacity fields carry it: little endian.
pub fn u128_le(v: u128) -> [u8; 16] {
    v.to_le_bytes()
}

/// Read a 128-bit little-endian counter.
pub fn u128_from(b: &[u8; 16]) -> u128 {
    u128::from_le_bytes(*b)
}

/// The window `[offset, offset + len)` of a log page, zero-filled where it runs past the page's end (the
/// Get Log Page LPO and NUMD fields select it). `len` is the command's transfer length, which the caller has
/// already bounded (by MDTS); it is allocated as is.
pub fn log_page_slice(full: &[u8], offset: u64, len: usize) -> Vec<u8> {
    let mut out = vec![0u8; len];
    if let Some(src) = usize::try_from(offset).ok().and_then(|start| full.get(start..)) {
        let n = src.len().min(len);
        out[..n].copy_from_slice(&src[..n]);
    }
    out
}

// ---------------------------------------------------------------------------------------------------------
// Supported Log Pages (LID 00h)
// ---------------------------------------------------------------------------------------------------------

/// Supported Log Pages entry bit 0: LID Supported (LSUPP).
pub const LOG_LSUPP: u32 = 1 << 0;
/// Supported Log Pages entry bit 1: Index Offset Supported (IOS).
pub const LOG_IOS: u32 = 1 << 1;
/// Supported Log Pages entry bits 31:16: LID Specific Parameter (LIDSP), this shift.
pub const LOG_LIDSP_SHIFT: u32 = 16;

/// Supported Log Pages log page (LID 00h), 1024 bytes: one Log Page Identifier Supported and Effects dword
/// per LID (NVMe Base 2.1 §5.1.12.1.1, figure "LID Supported and Effects Data Structure").
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SupportedLogPages {
    /// Entry for LID n at index n: [`LOG_LSUPP`], [`LOG_IOS`], LIDSP in bits 31:16.
    pub lid: [U32; 256],
}
const _: () = assert!(core::mem::size_of::<SupportedLogPages>() == 1024);

impl SupportedLogPages {
    /// The page with LSUPP set for every LID in `lids`.
    pub fn with(lids: &[u8]) -> Self {
        let mut p = Self::new_zeroed();
        for &l in lids {
            p.lid[l as usize].set(p.lid[l as usize].get() | LOG_LSUPP);
        }
        p
    }
    /// True if LSUPP is set for `lid`.
    pub fn supports(&self, lid: u8) -> bool {
        self.lid[lid as usize].get() & LOG_LSUPP != 0
    }
    /// Parse the first 1024 bytes of `b`; `None` if it is shorter.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Self::read_from_prefix(b).ok().map(|(v, _)| v)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Error Information (LID 01h)
// ---------------------------------------------------------------------------------------------------------

/// Error Information Log Entry, 64 bytes (NVMe Base 2.1 Figure 205 "Error Information Log Entry Data
/// Structure", §5.1.12.1.2). The log page
/// is ELPE + 1 of these, newest first; an entry with error count 0 is empty.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ErrorInformationEntry {
    /// Error Count: unique, incrementing; 0 = invalid (empty) entry.
    pub error_count: U64,
    /// Submission Queue ID (SQID); FFFFh if not specific to a queue.
    pub sqid: U16,
    /// Command ID (CID); FFFFh if not specific to a command.
    pub cid: U16,
    /// Status Info: the completion's status field in bits 15:1, phase tag in bit 0.
    pub status: U16,
    /// Parameter Error Location: byte (bits 7:0) and bit (bits 10:8) of the SQE field in error; FFFFh = none.
    pub parameter_error_location: U16,
    /// LBA: the first LBA that experienced the error.
    pub lba: U64,
    /// Namespace (NSID) of the error.
    pub nsid: U32,
    /// Vendor Specific Information Available: log page (LID) with more information, 0 = none.
    pub vsia: u8,
    /// Transport Type (TRTYPE) of a transport error (3 = TCP), else 0.
    pub trtype: u8,
    /// Command Set Identifier (CSI) of the command (NVMe 2.0).
    pub csi: u8,
    /// Opcode (OPC) of the command in error (NVMe 2.1).
    pub opc: u8,
    /// Command Specific Information.
    pub cmd_specific_info: U64,
    /// Transport Type Specific Information.
    pub ttsi: U16,
    /// Reserved.
    pub rsvd42: [u8; 21],
    /// Log Page Version (LPVER) (NVMe 2.1; 0 in earlier revisions).
    pub lpver: u8,
}
const _: () = assert!(core::mem::size_of::<ErrorInformationEntry>() == 64);
const _: () = assert!(core::mem::offset_of!(ErrorInformationEntry, sqid) == 8);
const _: () = assert!(core::mem::offset_of!(ErrorInformationEntry, status) == 12);
const _: () = assert!(core::mem::offset_of!(ErrorInformationEntry, parameter_error_location) == 14);
const _: () = assert!(core::mem::offset_of!(ErrorInformationEntry, lba) == 16);
const _: () = assert!(core::mem::offset_of!(ErrorInformationEntry, nsid) == 24);
const _: () = assert!(core::mem::offset_of!(ErrorInformationEntry, vsia) == 28);
const _: () = assert!(core::mem::offset_of!(ErrorInformationEntry, trtype) == 29);
const _: () = assert!(core::mem::offset_of!(ErrorInformationEntry, csi) == 30);
const _: () = assert!(core::mem::offset_of!(ErrorInformationEntry, cmd_specific_info) == 32);
const _: () = assert!(core::mem::offset_of!(ErrorInformationEntry, ttsi) == 40);
const _: () = assert!(core::mem::offset_of!(ErrorInformationEntry, lpver) == 63);

impl ErrorInformationEntry {
    /// Parse the first 64 bytes of `b`; `None` if it is shorter.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Self::read_from_prefix(b).ok().map(|(v, _)| v)
    }
}

// ---------------------------------------------------------------------------------------------------------
// SMART / Health Information (LID 02h)
// ---------------------------------------------------------------------------------------------------------

/// Critical Warning bit 0: available spare below its threshold.
pub const CRIT_WARN_SPARE: u8 = 1 << 0;
/// Critical Warning bit 1: a temperature is above an over-temperature or below an under-temperature threshold.
pub const CRIT_WARN_TEMPERATURE: u8 = 1 << 1;
/// Critical Warning bit 2: NVM subsystem reliability degraded.
pub const CRIT_WARN_DEGRADED: u8 = 1 << 2;
/// Critical Warning bit 3: all of the media is read only.
pub const CRIT_WARN_READ_ONLY: u8 = 1 << 3;
/// Critical Warning bit 4: the volatile memory backup device failed.
pub const CRIT_WARN_VOLATILE_BACKUP: u8 = 1 << 4;
/// Critical Warning bit 5: the Persistent Memory Region became read only.
pub const CRIT_WARN_PMR_READ_ONLY: u8 = 1 << 5;

/// SMART / Health Information log page (LID 02h), 512 bytes (NVMe Base 2.1 Figure 206 "SMART / Health
/// Information Log Page", §5.1.12.1.3). 128-bit counters are little endian ([`u128_le`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct SmartHealthLog {
    /// Critical Warning: `CRIT_WARN_*`.
    pub critical_warning: u8,
    /// Composite Temperature, kelvin (0 = not reported).
    pub composite_temperature: U16,
    /// Available Spare, percent.
    pub available_spare: u8,
    /// Available Spare Threshold, percent.
    pub available_spare_threshold: u8,
    /// Percentage Used (may exceed 100).
    pub percentage_used: u8,
    /// Endurance Group Critical Warning Summary.
    pub endurance_group_warning: u8,
    /// Reserved.
    pub rsvd7: [u8; 25],
    /// Data Units Read, thousands of 512-byte units, rounded up.
    pub data_units_read: [u8; 16],
    /// Data Units Written, thousands of 512-byte units, rounded up.
    pub data_units_written: [u8; 16],
    /// Host Read Commands.
    pub host_read_commands: [u8; 16],
    /// Host Write Commands.
    pub host_write_commands: [u8; 16],
    /// Controller Busy Time, minutes.
    pub controller_busy_time: [u8; 16],
    /// Power Cycles.
    pub power_cycles: [u8; 16],
    /// Power On Hours.
    pub power_on_hours: [u8; 16],
    /// Unsafe Shutdowns.
    pub unsafe_shutdowns: [u8; 16],
    /// Media and Data Integrity Errors.
    pub media_errors: [u8; 16],
    /// Number of Error Information Log Entries over the controller's life.
    pub num_err_log_entries: [u8; 16],
    /// Warning Composite Temperature Time, minutes.
    pub warning_temp_time: U32,
    /// Critical Composite Temperature Time, minutes.
    pub critical_temp_time: U32,
    /// Temperature Sensors 1 to 8, kelvin (0 = not implemented).
    pub temp_sensors: [U16; 8],
    /// Thermal Management Temperature 1 Transition Count.
    pub tmt1_transition_count: U32,
    /// Thermal Management Temperature 2 Transition Count.
    pub tmt2_transition_count: U32,
    /// Total Time For Thermal Management Temperature 1, seconds.
    pub tmt1_total_time: U32,
    /// Total Time For Thermal Management Temperature 2, seconds.
    pub tmt2_total_time: U32,
    /// Reserved.
    pub rsvd232: [u8; 280],
}
const _: () = assert!(core::mem::size_of::<SmartHealthLog>() == 512);
const _: () = assert!(core::mem::offset_of!(SmartHealthLog, composite_temperature) == 1);
const _: () = assert!(core::mem::offset_of!(SmartHealthLog, available_spare) == 3);
const _: () = assert!(core::mem::offset_of!(SmartHealthLog, endurance_group_warning) == 6);
const _: () = assert!(core::mem::offset_of!(SmartHealthLog, data_units_read) == 32);
const _: () = assert!(core::mem::offset_of!(SmartHealthLog, data_units_written) == 48);
const _: () = assert!(core::mem::offset_of!(SmartHealthLog, host_read_commands) == 64);
const _: () = assert!(core::mem::offset_of!(SmartHealthLog, host_write_commands) == 80);
const _: () = assert!(core::mem::offset_of!(SmartHealthLog, controller_busy_time) == 96);
const _: () = assert!(core::mem::offset_of!(SmartHealthLog, power_cycles) == 112);
const _: () = assert!(core::mem::offset_of!(SmartHealthLog, power_on_hours) == 128);
const _: () = assert!(core::mem::offset_of!(SmartHealthLog, unsafe_shutdowns) == 144);
const _: () = assert!(core::mem::offset_of!(SmartHealthLog, media_errors) == 160);
const _: () = assert!(core::mem::offset_of!(SmartHealthLog, num_err_log_entries) == 176);
const _: () = assert!(core::mem::offset_of!(SmartHealthLog, warning_temp_time) == 192);
const _: () = assert!(core::mem::offset_of!(SmartHealthLog, critical_temp_time) == 196);
const _: () = assert!(core::mem::offset_of!(SmartHealthLog, temp_sensors) == 200);
const _: () = assert!(core::mem::offset_of!(SmartHealthLog, tmt1_transition_count) == 216);
const _: () = assert!(core::mem::offset_of!(SmartHealthLog, tmt2_total_time) == 228);

impl SmartHealthLog {
    /// Parse the first 512 bytes of `b`; `None` if it is shorter.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Self::read_from_prefix(b).ok().map(|(v, _)| v)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Firmware Slot Information (LID 03h)
// ---------------------------------------------------------------------------------------------------------

/// Firmware Slot Information log page (LID 03h), 512 bytes (NVMe Base 2.1 §5.1.12.1.4, figure "Firmware Slot
/// Information Log Page").
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct FirmwareSlotInfo {
    /// Active Firmware Info (AFI): running slot in bits 2:0, slot for the next reset in bits 6:4 (0 = none).
    pub afi: u8,
    /// Reserved.
    pub rsvd1: [u8; 7],
    /// Firmware Revision for Slot 1 to 7 (FRS1–FRS7): ASCII, space padded; all zero = empty slot.
    pub frs: [[u8; 8]; 7],
    /// Reserved.
    pub rsvd64: [u8; 448],
}
const _: () = assert!(core::mem::size_of::<FirmwareSlotInfo>() == 512);
const _: () = assert!(core::mem::offset_of!(FirmwareSlotInfo, frs) == 8);

impl FirmwareSlotInfo {
    /// Parse the first 512 bytes of `b`; `None` if it is shorter.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Self::read_from_prefix(b).ok().map(|(v, _)| v)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Changed Namespace List (LID 04h)
// ---------------------------------------------------------------------------------------------------------

/// The first entry of a Changed Namespace List when more than 1024 namespaces changed.
pub const CHANGED_NS_OVERFLOW: u32 = 0xFFFF_FFFF;

/// Changed Namespace List log page (LID 04h), 4096 bytes: up to 1024 NSIDs, zero terminated; FFFFFFFFh as the
/// first entry (and zeroes after it) when more than 1024 changed (NVMe Base 2.1 §5.1.12.1.5, figure "Changed
/// Namespace List Log Page").
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ChangedNamespaceList {
    /// Changed NSIDs, zero terminated.
    pub nsid: [U32; 1024],
}
const _: () = assert!(core::mem::size_of::<ChangedNamespaceList>() == 4096);

impl ChangedNamespaceList {
    /// The page for `nsids`, in the given order; [`CHANGED_NS_OVERFLOW`] alone if there are more than 1024.
    pub fn build(nsids: &[u32]) -> Self {
        let mut l = Self::new_zeroed();
        if nsids.len() > l.nsid.len() {
            l.nsid[0].set(CHANGED_NS_OVERFLOW);
        } else {
            for (slot, &n) in l.nsid.iter_mut().zip(nsids) {
                slot.set(n);
            }
        }
        l
    }
    /// True if the list overflowed: the host must rescan every namespace.
    pub fn overflowed(&self) -> bool {
        self.nsid[0].get() == CHANGED_NS_OVERFLOW
    }
    /// The listed NSIDs (empty if the list overflowed).
    pub fn nsids(&self) -> Vec<u32> {
        if self.overflowed() {
            return Vec::new();
        }
        self.nsid.iter().map(|n| n.get()).take_while(|&n| n != 0).collect()
    }
    /// Parse the first 4096 bytes of `b`; `None` if it is shorter.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Self::read_from_prefix(b).ok().map(|(v, _)| v)
    }

    /// The NSIDs listed in `b`, the bytes of the page a controller returned, which may be fewer than 4096:
    /// `None` when every namespace must be rescanned, because the list overflowed or because it was cut short
    /// before its terminating zero (the IDs past the cut are unknown).
    pub fn changed_nsids(b: &[u8]) -> Option<Vec<u32>> {
        let mut ids = b.chunks_exact(4).take(1024).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]]));
        if b.len() >= 4 && ids.clone().next() == Some(CHANGED_NS_OVERFLOW) {
            return None;
        }
        let listed: Vec<u32> = ids.by_ref().take_while(|&n| n != 0).collect();
        let terminated = listed.len() < b.len().min(4096) / 4;
        (terminated || listed.len() == 1024).then_some(listed)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Commands Supported and Effects (LID 05h)
// ---------------------------------------------------------------------------------------------------------

/// Effects bit 0: Command Supported (CSUPP).
pub const EFFECTS_CSUPP: u32 = 1 << 0;
/// Effects bit 1: Logical Block Content Change (LBCC).
pub const EFFECTS_LBCC: u32 = 1 << 1;
/// Effects bit 2: Namespace Capability Change (NCC).
pub const EFFECTS_NCC: u32 = 1 << 2;
/// Effects bit 3: Namespace Inventory Change (NIC).
pub const EFFECTS_NIC: u32 = 1 << 3;
/// Effects bit 4: Controller Capability Change (CCC).
pub const EFFECTS_CCC: u32 = 1 << 4;
/// Effects bits 18:16, Command Submission and Execution (CSE): shift.
pub const EFFECTS_CSE_SHIFT: u32 = 16;
/// CSE mask (after shifting).
pub const EFFECTS_CSE_MASK: u32 = 0x7;
/// CSE 0: no restriction.
pub const CSE_NO_RESTRICTION: u32 = 0;
/// CSE 1: no other command to the same namespace may be outstanding while this one runs.
pub const CSE_SINGLE_PER_NS: u32 = 1;
/// CSE 2: no other command to any namespace may be outstanding while this one runs.
pub const CSE_SINGLE_PER_SUBSYSTEM: u32 = 2;
/// Effects bit 19: UUID Selection Supported (USS).
pub const EFFECTS_USS: u32 = 1 << 19;

/// Commands Supported and Effects log page (LID 05h), 4096 bytes (NVMe Base 2.1 §5.1.12.1.6, figures "Commands
/// Supported and Effects Log Page" and "Commands Supported and Effects Data Structure").
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct CommandsSupportedAndEffects {
    /// Admin Command Supported (ACS0–ACS255), by opcode: `EFFECTS_*`.
    pub acs: [U32; 256],
    /// I/O Command Supported (IOCS0–IOCS255), by opcode: `EFFECTS_*`.
    pub iocs: [U32; 256],
    /// Reserved.
    pub rsvd2048: [u8; 2048],
}
const _: () = assert!(core::mem::size_of::<CommandsSupportedAndEffects>() == 4096);
const _: () = assert!(core::mem::offset_of!(CommandsSupportedAndEffects, iocs) == 1024);
const _: () = assert!(core::mem::offset_of!(CommandsSupportedAndEffects, rsvd2048) == 2048);

impl CommandsSupportedAndEffects {
    /// Parse the first 4096 bytes of `b`; `None` if it is shorter.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Self::read_from_prefix(b).ok().map(|(v, _)| v)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Asymmetric Namespace Access (LID 0Ch)
// ---------------------------------------------------------------------------------------------------------

/// Get Log Page LSP bit 0 for LID 0Ch: Return Groups Only (RGO): every descriptor with no NSIDs.
pub const ANA_LSP_RGO: u8 = 1 << 0;

/// An ANA group's state on one controller (NVMe Base 2.1 §8.1.1 "Asymmetric Namespace Access Reporting";
/// the ANA State field of the ANA Group Descriptor, bits 3:0).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
#[repr(u8)]
pub enum AnaState {
    /// 01h: ANA Optimized: the best path to the namespace.
    Optimized = 0x01,
    /// 02h: ANA Non-Optimized: usable, but another path is better.
    NonOptimized = 0x02,
    /// 03h: ANA Inaccessible: commands that use the namespace fail with Asymmetric Access Inaccessible.
    Inaccessible = 0x03,
    /// 04h: ANA Persistent Loss: as Inaccessible, for good (Asymmetric Access Persistent Loss).
    PersistentLoss = 0x04,
    /// 0Fh: ANA Change: moving between states, expected to end within ANATT (Asymmetric Access Transition).
    Change = 0x0F,
}

impl AnaState {
    /// Every state, in the order of their values.
    pub const ALL: [AnaState; 5] = [
        AnaState::Optimized,
        AnaState::NonOptimized,
        AnaState::Inaccessible,
        AnaState::PersistentLoss,
        AnaState::Change,
    ];

    /// The state a descriptor's ANA State byte holds (bits 3:0); `None` for a reserved value.
    pub fn from_u8(v: u8) -> Option<AnaState> {
        AnaState::ALL.into_iter().find(|s| *s as u8 == v & 0x0F)
    }
    /// The name Linux nvmet's configfs `ana_state` and nvme-cli use: `optimized`, `non-optimized`,
    /// `inaccessible`, `persistent-loss`, `change`.
    pub fn name(self) -> &'static str {
        match self {
            AnaState::Optimized => "optimized",
            AnaState::NonOptimized => "non-optimized",
            AnaState::Inaccessible => "inaccessible",
            AnaState::PersistentLoss => "persistent-loss",
            AnaState::Change => "change",
        }
    }
    /// The state [`AnaState::name`] names.
    pub fn from_name(name: &str) -> Option<AnaState> {
        AnaState::ALL.into_iter().find(|s| s.name() == name)
    }
    /// True if commands that use the namespace are processed (Optimized, Non-Optimized).
    pub fn is_accessible(self) -> bool {
        matches!(self, AnaState::Optimized | AnaState::NonOptimized)
    }
    /// The status a command that uses the namespace completes with in this state (`None`: it is processed).
    pub fn command_status(self) -> Option<crate::Status> {
        match self {
            AnaState::Optimized | AnaState::NonOptimized => None,
            AnaState::Inaccessible => Some(crate::Status::ANA_INACCESSIBLE),
            AnaState::PersistentLoss => Some(crate::Status::ANA_PERSISTENT_LOSS),
            AnaState::Change => Some(crate::Status::ANA_TRANSITION),
        }
    }
}

impl core::fmt::Display for AnaState {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str(self.name())
    }
}

/// Header of the Asymmetric Namespace Access log page, 16 bytes (NVMe Base 2.1 §5.1.12.1.13, figure
/// "Asymmetric Namespace Access Log Page"); [`AnaGroupDescriptor`]s follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct AnaLogHeader {
    /// Bytes 07:00 Change Count: moves whenever the page's content changes.
    pub chgcnt: U64,
    /// Bytes 09:08 Number of ANA Group Descriptors.
    pub ngrps: U16,
    /// Bytes 15:10 reserved.
    pub rsvd10: [u8; 6],
}
const _: () = assert!(core::mem::size_of::<AnaLogHeader>() == 16);

/// One ANA Group Descriptor, 32 bytes followed by its NNSID NSIDs (4 bytes each, ascending) (NVMe Base 2.1
/// §5.1.12.1.13, figure "ANA Group Descriptor format").
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct AnaGroupDescriptor {
    /// Bytes 03:00 ANA Group ID (ANAGRPID), 1..=ANAGRPMAX.
    pub anagrpid: U32,
    /// Bytes 07:04 Number of NSID Values (0 when the host asked for groups only).
    pub nnsids: U32,
    /// Bytes 15:08 Change Count of this group's descriptor.
    pub chgcnt: U64,
    /// Byte 16 ANA State, bits 3:0 ([`AnaState`]).
    pub state: u8,
    /// Bytes 31:17 reserved.
    pub rsvd17: [u8; 15],
}
const _: () = assert!(core::mem::size_of::<AnaGroupDescriptor>() == 32);
const _: () = assert!(core::mem::offset_of!(AnaGroupDescriptor, state) == 16);

/// One group of an Asymmetric Namespace Access log page, as built or parsed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnaGroup {
    /// ANA Group ID.
    pub anagrpid: u32,
    /// The descriptor's Change Count.
    pub chgcnt: u64,
    /// The group's state on the controller that returned the page.
    pub state: AnaState,
    /// Its namespaces (ascending; empty with RGO).
    pub nsids: Vec<u32>,
}

/// A whole Asymmetric Namespace Access log page.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AnaLog {
    /// The header's Change Count.
    pub chgcnt: u64,
    /// Its groups, in page order.
    pub groups: Vec<AnaGroup>,
}

/// Why an Asymmetric Namespace Access log page could not be parsed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AnaLogError {
    /// The page ends inside the header, a descriptor or its NSID list.
    #[error("ANA log page cut short at byte {0}")]
    Truncated(usize),
    /// A descriptor's ANA State is a reserved value.
    #[error("ANA group {anagrpid} has the reserved ANA state {state:#04x}")]
    ReservedState {
        /// The group.
        anagrpid: u32,
        /// The byte.
        state: u8,
    },
    /// A descriptor with ANA Group ID 0.
    #[error("ANA group descriptor {0} has ANA Group ID 0")]
    ZeroGroupId(usize),
}

impl AnaLog {
    /// The length of a page of `groups` descriptors holding `nsids` NSIDs in all: what a host reads to be
    /// sure of the whole page with NANAGRPID groups and MNAN namespaces (NVMe Base 2.1 §5.1.12.1.13).
    pub fn len_for(groups: usize, nsids: usize) -> usize {
        core::mem::size_of::<AnaLogHeader>() + groups * core::mem::size_of::<AnaGroupDescriptor>() + nsids * 4
    }

    /// The page's bytes: the header, then each group's descriptor and NSIDs (none with `rgo`, Return Groups
    /// Only, NNSID then 0).
    pub fn to_bytes(&self, rgo: bool) -> Vec<u8> {
        let nsids: usize = if rgo { 0 } else { self.groups.iter().map(|g| g.nsids.len()).sum() };
        let mut v = Vec::with_capacity(Self::len_for(self.groups.len(), nsids));
        let mut h = AnaLogHeader::new_zeroed();
        h.chgcnt.set(self.chgcnt);
        h.ngrps.set(self.groups.len() as u16);
        v.extend_from_slice(h.as_bytes());
        for g in &self.groups {
            let mut d = AnaGroupDescriptor::new_zeroed();
            d.anagrpid.set(g.anagrpid);
            d.nnsids.set(if rgo { 0 } else { g.nsids.len() as u32 });
            d.chgcnt.set(g.chgcnt);
            d.state = g.state as u8;
            v.extend_from_slice(d.as_bytes());
            if !rgo {
                for n in &g.nsids {
                    v.extend_from_slice(&n.to_le_bytes());
                }
            }
        }
        v
    }

    /// Parse the bytes a controller returned. NNSID and NGRPS are a peer's counts: each NSID list is taken
    /// only as far as the bytes go, so memory is bounded by `b`'s length.
    pub fn parse(b: &[u8]) -> Result<AnaLog, AnaLogError> {
        let (h, _) = AnaLogHeader::read_from_prefix(b).map_err(|_| AnaLogError::Truncated(b.len()))?;
        let mut at = core::mem::size_of::<AnaLogHeader>();
        let mut groups = Vec::new();
        for i in 0..h.ngrps.get() as usize {
            let (d, _) = b
                .get(at..)
                .and_then(|r| AnaGroupDescriptor::read_from_prefix(r).ok())
                .ok_or(AnaLogError::Truncated(b.len()))?;
            at += core::mem::size_of::<AnaGroupDescriptor>();
            if d.anagrpid.get() == 0 {
                return Err(AnaLogError::ZeroGroupId(i));
            }
            let state = AnaState::from_u8(d.state)
                .ok_or(AnaLogError::ReservedState { anagrpid: d.anagrpid.get(), state: d.state })?;
            let n = d.nnsids.get() as usize;
            let list = b.get(at..).filter(|r| r.len() / 4 >= n).ok_or(AnaLogError::Truncated(b.len()))?;
            let nsids = list[..n * 4].chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).collect();
            at += n * 4;
            groups.push(AnaGroup { anagrpid: d.anagrpid.get(), chgcnt: d.chgcnt.get(), state, nsids });
        }
        Ok(AnaLog { chgcnt: h.chgcnt.get(), groups })
    }
}

// ---------------------------------------------------------------------------------------------------------
// Discovery (LID 70h)
// ---------------------------------------------------------------------------------------------------------

/// TRTYPE 1: RDMA.
pub const TRTYPE_RDMA: u8 = 1;
/// TRTYPE 2: Fibre Channel.
pub const TRTYPE_FC: u8 = 2;
/// TRTYPE 3: TCP.
pub const TRTYPE_TCP: u8 = 3;
/// TRTYPE FEh: intra-host (loop).
pub const TRTYPE_LOOP: u8 = 0xFE;
/// ADRFAM 1: IPv4.
pub const ADRFAM_IPV4: u8 = 1;
/// ADRFAM 2: IPv6.
pub const ADRFAM_IPV6: u8 = 2;
/// ADRFAM 3: InfiniBand.
pub const ADRFAM_IB: u8 = 3;
/// ADRFAM 4: Fibre Channel.
pub const ADRFAM_FC: u8 = 4;
/// ADRFAM FEh: intra-host.
pub const ADRFAM_LOOP: u8 = 0xFE;
/// SUBTYPE 1: a referral to another discovery service.
pub const SUBTYPE_REFERRAL: u8 = 1;
/// SUBTYPE 2: an NVM subsystem.
pub const SUBTYPE_NVME: u8 = 2;
/// SUBTYPE 3: the current discovery subsystem.
pub const SUBTYPE_CURRENT_DISCOVERY: u8 = 3;
/// TREQ bits 1:0 = 00b: secure channel requirement not specified.
pub const TREQ_SECURE_NOT_SPECIFIED: u8 = 0;
/// TREQ bits 1:0 = 01b: secure channel required.
pub const TREQ_SECURE_REQUIRED: u8 = 1;
/// TREQ bits 1:0 = 10b: secure channel not required.
pub const TREQ_SECURE_NOT_REQUIRED: u8 = 2;
/// TREQ bits 1:0: mask of the secure channel requirement.
pub const TREQ_SECURE_MASK: u8 = 0x3;
/// TREQ bit 2: SQ flow control disable supported (libnvme then connects with `disable_sqflow`).
pub const TREQ_DISABLE_SQFLOW: u8 = 1 << 2;
/// EFLAGS bit 0: Duplicate Returned Information (DUPRETINFO).
pub const EFLAGS_DUPRETINFO: u16 = 1 << 0;
/// EFLAGS bit 1: Explicit Persistent Connection Support for Discovery (EPCSD).
pub const EFLAGS_EPCSD: u16 = 1 << 1;
/// EFLAGS bit 2: No CDC Connectivity (NCC).
pub const EFLAGS_NCC: u16 = 1 << 2;
/// TSAS byte 0 for TCP, SECTYPE 0: no security.
pub const TCP_SECTYPE_NONE: u8 = 0;
/// TCP SECTYPE 1: TLS 1.2.
pub const TCP_SECTYPE_TLS12: u8 = 1;
/// TCP SECTYPE 2: TLS 1.3.
pub const TCP_SECTYPE_TLS13: u8 = 2;
/// DLPF bit 0: Extended (EXTEND): the page may hold extended entries and TDLPL is valid.
pub const DLPF_EXTEND: u8 = 1 << 0;
/// Get Log Page LSP bit 0 for LID 70h: return Extended Discovery Log Page Entries (EXTDLPE).
pub const DISC_LSP_EXTDLPE: u8 = 1 << 0;
/// Get Log Page LSP bit 1 for LID 70h: Port Local Entries Only (PLEO).
pub const DISC_LSP_PLEO: u8 = 1 << 1;
/// Get Log Page LSP bit 2 for LID 70h: All NVM Subsystem Entries (ALLSUBE).
pub const DISC_LSP_ALLSUBE: u8 = 1 << 2;

/// Discovery log page header, 1024 bytes; the entries follow at byte 1024 (NVMe Base 2.1 §5.1.12.3.1, figure
/// "Discovery Log Page"; NVMe-oF 1.1 §5.4). Linux (`struct nvmf_disc_rsp_page_hdr`) and libnvme treat bytes 18–1023 as
/// reserved; DLPF and TDLPL are the newer fields, both zero for a page of basic entries like holdfast's.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DiscoveryLogHeader {
    /// Generation Counter (GENCTR): incremented whenever the page changes; hosts re-read until it is stable.
    pub genctr: U64,
    /// Number of Records (NUMREC).
    pub numrec: U64,
    /// Record Format (RECFMT): 0.
    pub recfmt: U16,
    /// Discovery Log Page Flags (DLPF): [`DLPF_EXTEND`].
    pub dlpf: u8,
    /// Reserved.
    pub rsvd19: u8,
    /// Total Discovery Log Page Length (TDLPL), bytes including this header; valid when DLPF.EXTEND is set.
    pub tdlpl: U32,
    /// Reserved.
    pub rsvd24: [u8; 1000],
}
const _: () = assert!(core::mem::size_of::<DiscoveryLogHeader>() == 1024);
const _: () = assert!(core::mem::offset_of!(DiscoveryLogHeader, numrec) == 8);
const _: () = assert!(core::mem::offset_of!(DiscoveryLogHeader, recfmt) == 16);
const _: () = assert!(core::mem::offset_of!(DiscoveryLogHeader, dlpf) == 18);
const _: () = assert!(core::mem::offset_of!(DiscoveryLogHeader, tdlpl) == 20);

impl DiscoveryLogHeader {
    /// Parse the first 1024 bytes of `b`; `None` if it is shorter.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Self::read_from_prefix(b).ok().map(|(v, _)| v)
    }
}

/// Discovery Log Page Entry, 1024 bytes (NVMe Base 2.1 Figure 294 "Discovery Log Page Entry Data Structure";
/// NVMe-oF 1.1 §5.4). String fields are
/// written NUL padded (as Linux nvmet does) and read accepting NUL or space padding (SPDK pads with spaces).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct DiscoveryLogEntry {
    /// Transport Type (TRTYPE): `TRTYPE_*`.
    pub trtype: u8,
    /// Address Family (ADRFAM): `ADRFAM_*`.
    pub adrfam: u8,
    /// Subsystem Type (SUBTYPE): `SUBTYPE_*`.
    pub subtype: u8,
    /// Transport Requirements (TREQ): `TREQ_*`.
    pub treq: u8,
    /// Port ID (PORTID).
    pub portid: U16,
    /// Controller ID (CNTLID): FFFFh = dynamic controller model (any controller), FFFEh = static.
    pub cntlid: U16,
    /// Admin Max SQ Size (ASQSZ).
    pub asqsz: U16,
    /// Entry Flags (EFLAGS): `EFLAGS_*`.
    pub eflags: U16,
    /// Reserved.
    pub rsvd12: [u8; 20],
    /// Transport Service Identifier (TRSVCID): for TCP the port number in ASCII.
    pub trsvcid: [u8; 32],
    /// Reserved.
    pub rsvd64: [u8; 192],
    /// NVM Subsystem Qualified Name (SUBNQN): the identity hosts connect to, byte for byte.
    pub subnqn: [u8; 256],
    /// Transport Address (TRADDR): for TCP the IP address in ASCII.
    pub traddr: [u8; 256],
    /// Transport Specific Address Subtype (TSAS): for TCP byte 0 is SECTYPE (`TCP_SECTYPE_*`).
    pub tsas: [u8; 256],
}
const _: () = assert!(core::mem::size_of::<DiscoveryLogEntry>() == 1024);
const _: () = assert!(core::mem::offset_of!(DiscoveryLogEntry, portid) == 4);
const _: () = assert!(core::mem::offset_of!(DiscoveryLogEntry, cntlid) == 6);
const _: () = assert!(core::mem::offset_of!(DiscoveryLogEntry, asqsz) == 8);
const _: () = assert!(core::mem::offset_of!(DiscoveryLogEntry, eflags) == 10);
const _: () = assert!(core::mem::offset_of!(DiscoveryLogEntry, trsvcid) == 32);
const _: () = assert!(core::mem::offset_of!(DiscoveryLogEntry, subnqn) == 256);
const _: () = assert!(core::mem::offset_of!(DiscoveryLogEntry, traddr) == 512);
const _: () = assert!(core::mem::offset_of!(DiscoveryLogEntry, tsas) == 768);

/// A string field with its NUL or space padding removed (SPDK pads with spaces, Linux with NULs).
pub fn field_str(field: &[u8]) -> String {
    get_nul_padded(field)
}

impl DiscoveryLogEntry {
    /// A TCP entry (TRTYPE 3, SECTYPE none, TREQ and EFLAGS 0) with NUL-padded strings.
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
        let mut e = Self::new_zeroed();
        e.trtype = TRTYPE_TCP;
        e.adrfam = adrfam;
        e.subtype = subtype;
        e.portid.set(portid);
        e.cntlid.set(cntlid);
        e.asqsz.set(asqsz);
        set_nul_padded(&mut e.trsvcid, trsvcid);
        set_nul_padded(&mut e.subnqn, subnqn);
        set_nul_padded(&mut e.traddr, traddr);
        e
    }
    /// Parse the first 1024 bytes of `b`; `None` if it is shorter.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Self::read_from_prefix(b).ok().map(|(e, _)| e)
    }
    /// TRSVCID without padding.
    pub fn trsvcid_str(&self) -> String {
        field_str(&self.trsvcid)
    }
    /// SUBNQN without padding.
    pub fn subnqn_str(&self) -> String {
        field_str(&self.subnqn)
    }
    /// TRADDR without padding.
    pub fn traddr_str(&self) -> String {
        field_str(&self.traddr)
    }
    /// The TCP security type (TSAS byte 0).
    pub fn tcp_sectype(&self) -> u8 {
        self.tsas[0]
    }
}

/// The whole Discovery log page: the header (GENCTR `genctr`, NUMREC = the number of entries, RECFMT 0, DLPF
/// and TDLPL 0) and then the entries.
pub fn discovery_log_bytes(genctr: u64, entries: &[DiscoveryLogEntry]) -> Vec<u8> {
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

/// Parse a Discovery log page read from offset 0: the header and the entries present, at most NUMREC (a
/// shorter read yields fewer entries). `None` if there is no complete header.
pub fn parse_discovery_log(b: &[u8]) -> Option<(DiscoveryLogHeader, Vec<DiscoveryLogEntry>)> {
    let h = DiscoveryLogHeader::from_slice(b)?;
    let n = usize::try_from(h.numrec.get()).unwrap_or(usize::MAX);
    let body = b.get(1024..).unwrap_or_default();
    let entries = body.chunks_exact(1024).take(n).filter_map(DiscoveryLogEntry::from_slice).collect();
    Some((h, entries))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::identify::tests::page;

    #[test]
    fn lids_and_names() {
        assert_eq!(log_page_name(LID_DISCOVERY), "Discovery");
        assert_eq!(log_page_name(0xC0), "Vendor Specific");
        assert_eq!(log_page_name(0x55), "Unknown log page");
        assert!(is_vendor_specific(0xFF) && !is_vendor_specific(0xBF));
    }

    #[test]
    fn slice_windows() {
        let full: Vec<u8> = (0..16).collect();
        assert_eq!(log_page_slice(&full, 4, 4), vec![4, 5, 6, 7]);
        assert_eq!(log_page_slice(&full, 12, 8), vec![12, 13, 14, 15, 0, 0, 0, 0]);
        assert_eq!(log_page_slice(&full, 16, 4), vec![0; 4]);
        assert_eq!(log_page_slice(&full, u64::MAX, 4), vec![0; 4]);
        assert_eq!(log_page_slice(&full, 0, 0), Vec::<u8>::new());
    }

    #[test]
    fn supported_log_pages_golden() {
        // NVMe Base 2.1 §5.1.12.1.1: dword n describes LID n, LSUPP is bit 0.
        let p = SupportedLogPages::with(&[LID_SUPPORTED_LOG_PAGES, LID_SMART_HEALTH, 0xC0]);
        let b = p.as_bytes();
        assert_eq!(&b[0..4], &[1, 0, 0, 0]);
        assert_eq!(&b[4..8], &[0, 0, 0, 0]);
        assert_eq!(&b[8..12], &[1, 0, 0, 0]);
        assert_eq!(&b[0xC0 * 4..0xC0 * 4 + 4], &[1, 0, 0, 0]);
        assert!(p.supports(0xC0) && !p.supports(LID_ERROR_INFO));
        assert_eq!(SupportedLogPages::from_slice(b), Some(p));
    }

    #[test]
    fn error_entry_golden() {
        // NVMe Base 2.1 Figure 205.
        let mut e = ErrorInformationEntry::new_zeroed();
        e.error_count.set(7);
        e.sqid.set(1);
        e.cid.set(0x1234);
        e.status.set(0x0281 << 1);
        e.parameter_error_location.set(0xFFFF);
        e.lba.set(0x0102_0304_0506_0708);
        e.nsid.set(1);
        e.trtype = TRTYPE_TCP;
        e.opc = 0x01;
        e.cmd_specific_info.set(9);
        e.ttsi.set(0xABCD);
        e.lpver = 1;
        let b = e.as_bytes();
        assert_eq!(&b[0..16], &[7, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0x34, 0x12, 0x02, 0x05, 0xFF, 0xFF]);
        assert_eq!(&b[16..24], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[24..32], &[1, 0, 0, 0, 0, TRTYPE_TCP, 0, 0x01]);
        assert_eq!(&b[32..42], &[9, 0, 0, 0, 0, 0, 0, 0, 0xCD, 0xAB]);
        assert_eq!(b[63], 1);
        assert_eq!(ErrorInformationEntry::from_slice(b), Some(e));
        // nvmet's error log in captures/linux-host-linux-target.pcap is all zero: 64 empty entries.
        let empty = ErrorInformationEntry::from_slice(&[0u8; 64]).expect("64 bytes");
        assert_eq!(empty.error_count.get(), 0);
    }

    #[test]
    fn smart_golden() {
        // NVMe Base 2.1 Figure 206.
        let mut s = SmartHealthLog::new_zeroed();
        s.critical_warning = CRIT_WARN_TEMPERATURE;
        s.composite_temperature.set(300);
        s.available_spare = 100;
        s.available_spare_threshold = 10;
        s.data_units_read = u128_le(1);
        s.host_read_commands = u128_le(3);
        s.power_on_hours = u128_le(u128::from(u64::MAX) + 1);
        s.warning_temp_time.set(5);
        s.temp_sensors[0].set(301);
        s.tmt2_total_time.set(8);
        let b = s.as_bytes();
        assert_eq!(&b[0..7], &[2, 0x2C, 0x01, 100, 10, 0, 0]);
        assert_eq!(b[32], 1);
        assert_eq!(b[64], 3);
        assert_eq!(&b[128..145], &[0, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[192..196], &[5, 0, 0, 0]);
        assert_eq!(&b[200..202], &301u16.to_le_bytes());
        assert_eq!(&b[228..232], &[8, 0, 0, 0]);
        assert_eq!(u128_from(&s.power_on_hours), 1 << 64);
        // nvmet's SMART log from captures/linux-host-linux-target.pcap: 1 data unit read, 3 read commands.
        let l = SmartHealthLog::from_slice(&page(512, &[(32, &[1]), (64, &[3])])).expect("512 bytes");
        assert_eq!(u128_from(&l.data_units_read), 1);
        assert_eq!(u128_from(&l.host_read_commands), 3);
        assert_eq!(u128_from(&l.host_write_commands), 0);
    }

    #[test]
    fn firmware_slot_golden() {
        // NVMe Base 2.1 §5.1.12.1.4.
        let mut f = FirmwareSlotInfo::new_zeroed();
        f.afi = 1;
        crate::identify::set_ascii(&mut f.frs[0], "hf0.1");
        crate::identify::set_ascii(&mut f.frs[6], "x");
        let b = f.as_bytes();
        assert_eq!(b[0], 1);
        assert_eq!(&b[8..16], b"hf0.1   ");
        assert_eq!(&b[56..64], b"x       ");
        assert_eq!(FirmwareSlotInfo::from_slice(b), Some(f));
    }

    #[test]
    fn changed_ns_list_golden() {
        // NVMe Base 2.1 §5.1.12.1.5.
        let l = ChangedNamespaceList::build(&[3, 1]);
        assert_eq!(&l.as_bytes()[..12], &[3, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(l.nsids(), vec![3, 1]);
        assert!(!l.overflowed());
        let many: Vec<u32> = (1..=1025).collect();
        let o = ChangedNamespaceList::build(&many);
        assert_eq!(&o.as_bytes()[..8], &[0xFF, 0xFF, 0xFF, 0xFF, 0, 0, 0, 0]);
        assert!(o.overflowed());
        assert_eq!(o.nsids(), Vec::<u32>::new());
        let full: Vec<u32> = (1..=1024).collect();
        assert_eq!(ChangedNamespaceList::build(&full).nsids(), full);
    }

    #[test]
    fn changed_nsids_from_a_page_cut_short() {
        let page = |ids: &[u32]| ChangedNamespaceList::build(ids).as_bytes().to_vec();
        let changed = ChangedNamespaceList::changed_nsids;
        assert_eq!(changed(&page(&[3, 1])), Some(vec![3, 1]));
        assert_eq!(changed(&page(&[3, 1])[..12]), Some(vec![3, 1]), "the terminator arrived");
        assert_eq!(changed(&page(&[3, 1])[..8]), None, "cut before the terminator: more may have followed");
        assert_eq!(changed(&page(&[3, 1])[..10]), None);
        assert_eq!(changed(&[]), None);
        assert_eq!(changed(&page(&[])), Some(vec![]));
        assert_eq!(changed(&page(&[])[..4]), Some(vec![]));
        let full: Vec<u32> = (1..=1024).collect();
        assert_eq!(changed(&page(&full)), Some(full.clone()), "1024 entries need no terminator");
        assert_eq!(changed(&page(&full)[..4092]), None);
        assert_eq!(changed(&page(&(1..=1025).collect::<Vec<u32>>())[..4]), None, "overflow");
    }

    #[test]
    fn effects_golden_and_linux_nvmet() {
        // NVMe Base 2.1 §5.1.12.1.6: ACS at byte 4×opcode, IOCS at 1024 + 4×opcode.
        let mut e = CommandsSupportedAndEffects::new_zeroed();
        e.acs[0x06].set(EFFECTS_CSUPP);
        e.iocs[0x01].set(EFFECTS_CSUPP | EFFECTS_LBCC);
        e.iocs[0x09].set(EFFECTS_CSUPP | EFFECTS_LBCC | (CSE_SINGLE_PER_NS << EFFECTS_CSE_SHIFT));
        let b = e.as_bytes();
        assert_eq!(&b[24..28], &[1, 0, 0, 0]);
        assert_eq!(&b[1028..1032], &[3, 0, 0, 0]);
        assert_eq!(&b[1060..1064], &[3, 0, 1, 0]);
        // The page nvmet 6.1 returned in captures/linux-host-linux-target.pcap: CSUPP only.
        let l = CommandsSupportedAndEffects::from_slice(&page(
            4096,
            &[
                (8, &[1]),
                (24, &[1]),
                (32, &[1, 0, 0, 0, 1, 0, 0, 0, 1]),
                (48, &[1]),
                (96, &[1]),
                (1024, &[1, 0, 0, 0, 1, 0, 0, 0, 1]),
                (1056, &[1, 0, 0, 0, 1]),
            ],
        ))
        .expect("4096 bytes");
        let admin: Vec<usize> = (0..256).filter(|&op| l.acs[op].get() & EFFECTS_CSUPP != 0).collect();
        assert_eq!(admin, vec![0x02, 0x06, 0x08, 0x09, 0x0A, 0x0C, 0x18], "log, identify, abort, features, AER, KA");
        let io: Vec<usize> = (0..256).filter(|&op| l.iocs[op].get() & EFFECTS_CSUPP != 0).collect();
        assert_eq!(io, vec![0x00, 0x01, 0x02, 0x08, 0x09], "flush, write, read, write zeroes, DSM");
    }

    /// The discovery log page (both header and entries) nvmet 6.1 returned in
    /// captures/linux-host-linux-target.pcap (Get Log Page LID 70h, 3072 bytes).
    fn linux_discovery_log() -> Vec<u8> {
        page(
            3072,
            &[
                (0, &[0x02]),
                (8, &[0x02]),
                (1024, &[0x03, 0x01, 0x03, 0x04, 0x01, 0x00, 0xff, 0xff, 0x20]),
                (1056, b"4420"),
                (1280, b"nqn.2014-08.org.nvmexpress.discovery"),
                (1536, b"10.0.2.15"),
                (2048, &[0x03, 0x01, 0x02, 0x04, 0x01, 0x00, 0xff, 0xff, 0x20]),
                (2080, b"4420"),
                (2304, b"nqn.2014-08.org.kernel:interop"),
                (2560, b"10.0.2.15"),
            ],
        )
    }

    #[test]
    fn discovery_entry_golden() {
        // NVMe Base 2.1 Figure 294 (NVMe-oF 1.1 §5.4).
        let mut e = DiscoveryLogEntry::build(SUBTYPE_NVME, 1, 0xFFFF, 32, "4420", "nqn.x", "127.0.0.1", ADRFAM_IPV4);
        e.treq = TREQ_DISABLE_SQFLOW;
        e.eflags.set(EFLAGS_EPCSD);
        let b = e.as_bytes();
        assert_eq!(&b[..12], &[3, 1, 2, 4, 1, 0, 0xFF, 0xFF, 32, 0, 2, 0]);
        assert_eq!(&b[32..37], b"4420\0");
        assert_eq!(&b[256..262], b"nqn.x\0");
        assert_eq!(&b[512..522], b"127.0.0.1\0");
        assert_eq!(b[768], TCP_SECTYPE_NONE);
        assert!(b[522..].iter().all(|&x| x == 0));
        let page = discovery_log_bytes(7, &[e]);
        assert_eq!(page.len(), 2048);
        assert_eq!(&page[..24], &[7, 0, 0, 0, 0, 0, 0, 0, 1, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&page[1024..], b);
    }

    #[test]
    fn discovery_log_matches_linux_nvmet() {
        let real = linux_discovery_log();
        let (h, entries) = parse_discovery_log(&real).expect("header");
        assert_eq!((h.genctr.get(), h.numrec.get(), h.recfmt.get(), h.dlpf, h.tdlpl.get()), (2, 2, 0, 0, 0));
        assert_eq!(entries.len(), 2);
        let d = &entries[0];
        assert_eq!((d.trtype, d.adrfam, d.subtype, d.treq), (TRTYPE_TCP, ADRFAM_IPV4, SUBTYPE_CURRENT_DISCOVERY, 4));
        assert_eq!((d.portid.get(), d.cntlid.get(), d.asqsz.get(), d.eflags.get()), (1, 0xFFFF, 32, 0));
        assert_eq!(d.trsvcid_str(), "4420");
        assert_eq!(d.subnqn_str(), "nqn.2014-08.org.nvmexpress.discovery");
        assert_eq!(d.traddr_str(), "10.0.2.15");
        assert_eq!(entries[1].subtype, SUBTYPE_NVME);
        assert_eq!(entries[1].subnqn_str(), "nqn.2014-08.org.kernel:interop");
        // Building the same entries reproduces nvmet's bytes exactly.
        let ours: Vec<DiscoveryLogEntry> = [
            (SUBTYPE_CURRENT_DISCOVERY, "nqn.2014-08.org.nvmexpress.discovery"),
            (SUBTYPE_NVME, "nqn.2014-08.org.kernel:interop"),
        ]
        .iter()
        .map(|&(st, nqn)| {
            let mut e = DiscoveryLogEntry::build(st, 1, 0xFFFF, 32, "4420", nqn, "10.0.2.15", ADRFAM_IPV4);
            e.treq = TREQ_DISABLE_SQFLOW;
            e
        })
        .collect();
        assert_eq!(discovery_log_bytes(2, &ours), real);
    }

    #[test]
    fn discovery_parsing_is_defensive() {
        let real = linux_discovery_log();
        assert_eq!(parse_discovery_log(&real[..1023]), None);
        let (_, e) = parse_discovery_log(&real[..3071]).expect("header");
        assert_eq!(e.len(), 1, "a short read yields the complete entries only");
        let mut lying = real.clone();
        lying[8] = 0xFF;
        lying[15] = 0xFF;
        assert_eq!(parse_discovery_log(&lying).map(|(_, e)| e.len()), Some(2));
        // SPDK pads TRSVCID and TRADDR with spaces.
        let mut spaced = DiscoveryLogEntry::build(SUBTYPE_NVME, 1, 0xFFFF, 32, "", "nqn.y", "", ADRFAM_IPV4);
        spaced.trsvcid = [b' '; 32];
        spaced.trsvcid[..4].copy_from_slice(b"4420");
        spaced.traddr = [b' '; 256];
        spaced.traddr[..8].copy_from_slice(b"10.0.0.1");
        assert_eq!((spaced.trsvcid_str(), spaced.traddr_str()), ("4420".to_string(), "10.0.0.1".to_string()));
        assert_eq!(field_str(&[0; 8]), "");
    }

    #[test]
    fn ana_log_page_has_the_spec_layout() {
        let log = AnaLog {
            chgcnt: 7,
            groups: vec![
                AnaGroup { anagrpid: 1, chgcnt: 5, state: AnaState::Optimized, nsids: vec![1, 3] },
                AnaGroup { anagrpid: 2, chgcnt: 7, state: AnaState::Inaccessible, nsids: vec![2] },
            ],
        };
        let b = log.to_bytes(false);
        assert_eq!(b.len(), 16 + 32 + 8 + 32 + 4);
        assert_eq!(&b[0..8], &7u64.to_le_bytes()); // Change Count
        assert_eq!(&b[8..10], &2u16.to_le_bytes()); // NGRPS
        assert_eq!(&b[16..20], &1u32.to_le_bytes()); // ANAGRPID
        assert_eq!(&b[20..24], &2u32.to_le_bytes()); // NNSID
        assert_eq!(&b[24..32], &5u64.to_le_bytes()); // descriptor Change Count
        assert_eq!(b[32], 0x01); // ANA State
        assert_eq!(&b[48..56], &[1, 0, 0, 0, 3, 0, 0, 0]);
        assert_eq!(&b[56..60], &2u32.to_le_bytes());
        assert_eq!(b[72], 0x03);
        assert_eq!(&b[88..92], &2u32.to_le_bytes());
        assert_eq!(AnaLog::parse(&b), Ok(log.clone()));

        let rgo = log.to_bytes(true);
        assert_eq!(rgo.len(), 16 + 64);
        assert_eq!(&rgo[20..24], &[0; 4]);
        let parsed = AnaLog::parse(&rgo).unwrap();
        assert!(parsed.groups.iter().all(|g| g.nsids.is_empty()));
        assert_eq!(parsed.groups[1].state, AnaState::Inaccessible);
    }

    #[test]
    fn ana_log_parse_refuses_what_a_peer_gets_wrong() {
        let log = AnaLog {
            chgcnt: 1,
            groups: vec![AnaGroup { anagrpid: 1, chgcnt: 1, state: AnaState::Change, nsids: vec![1, 2] }],
        };
        let b = log.to_bytes(false);
        for cut in [0, 15, 16, 47, 48, 55] {
            assert!(matches!(AnaLog::parse(&b[..cut]), Err(AnaLogError::Truncated(_))), "cut at {cut}");
        }
        // A huge NNSID is bounded by the bytes there are, not allocated.
        let mut huge = b.clone();
        huge[20..24].copy_from_slice(&u32::MAX.to_le_bytes());
        assert!(matches!(AnaLog::parse(&huge), Err(AnaLogError::Truncated(_))));
        let mut reserved = b.clone();
        reserved[32] = 0x05;
        assert_eq!(AnaLog::parse(&reserved), Err(AnaLogError::ReservedState { anagrpid: 1, state: 5 }));
        let mut zero = b;
        zero[16..20].copy_from_slice(&[0; 4]);
        assert_eq!(AnaLog::parse(&zero), Err(AnaLogError::ZeroGroupId(0)));
    }

    #[test]
    fn ana_states_have_nvmets_names_and_their_statuses() {
        for s in AnaState::ALL {
            assert_eq!(AnaState::from_name(s.name()), Some(s));
            assert_eq!(AnaState::from_u8(s as u8), Some(s));
            assert_eq!(s.is_accessible(), s.command_status().is_none());
        }
        assert_eq!(AnaState::from_name("optimised"), None);
        assert_eq!(AnaState::Change.command_status(), Some(crate::Status::ANA_TRANSITION));
        assert_eq!(crate::Status::ANA_INACCESSIBLE.name(false), "Asymmetric Access Inaccessible");
        assert!(crate::Status::ANA_PERSISTENT_LOSS.is_path_error());
    }
}

// ---------------------------------------------------------------------------------------------------------
// Reservation Notification (LID 80h)
// ---------------------------------------------------------------------------------------------------------

/// Reservation Notification Log Page Type (RNLPT, byte 8 of [`ReservationNotification`]; NVMe Base 2.0
/// §5.16.1.24, figure "Reservation Notification Log Page Type").
pub mod rnlpt {
    /// 00h: Empty Log Page (no notice waiting).
    pub const EMPTY: u8 = 0;
    /// 01h: Registration Preempted: another host's Preempt (and Abort) removed this host's registration.
    pub const REGISTRATION_PREEMPTED: u8 = 1;
    /// 02h: Reservation Released: another host released a reservation of a Registrants Only or All
    /// Registrants type (or changed its type) while this host was registered.
    pub const RESERVATION_RELEASED: u8 = 2;
    /// 03h: Reservation Preempted: another host cleared the reservation and every registration.
    pub const RESERVATION_PREEMPTED: u8 = 3;
}

/// Reservation Notification log page (LID 80h; NVMe Base 2.0 §5.16.1.24, figure "Reservation Notification
/// Log Page"), 64 bytes: the oldest notice the controller holds for the host, taken by the read.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ReservationNotification {
    /// Log Page Count: 1 for the first notice, one more for each after it (0 only when empty), skipping the
    /// counts of notices lost (the controller held too many).
    pub lpc: U64,
    /// Reservation Notification Log Page Type ([`rnlpt`]).
    pub rnlpt: u8,
    /// Number of Available Log Pages: notices still waiting after this one (255 at most).
    pub nalp: u8,
    /// Reserved.
    pub rsvd10: [u8; 2],
    /// The namespace.
    pub nsid: U32,
    /// Reserved.
    pub rsvd16: [u8; 48],
}

const _: () = assert!(core::mem::size_of::<ReservationNotification>() == 64);
const _: () = assert!(core::mem::offset_of!(ReservationNotification, rnlpt) == 8);
const _: () = assert!(core::mem::offset_of!(ReservationNotification, nalp) == 9);
const _: () = assert!(core::mem::offset_of!(ReservationNotification, nsid) == 12);
