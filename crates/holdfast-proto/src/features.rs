//! Features (Get Features / Set Features) and Asynchronous Event Request completions.
//!
//! Sources: NVMe Base Specification 2.1 §5.1.25 (Set Features: the Feature Identifiers table and one section
//! per feature, §5.1.25.1.1 "Arbitration (Feature Identifier 01h)" onwards, whose "Command Dword 11" and
//! "Completion Queue Entry Dword 0" figures give the encodings below, e.g. Figure 386 for Arbitration and
//! Figures 387/388 for Power Management), §5.1.11 (Get Features: the Select field), and §5.1.2 (Asynchronous
//! Event Request: the completion dword 0 figure and the event information tables); the same in NVMe Base 2.0
//! §5.27.1, §5.15 and §5.2. Figure numbers change between revisions: a figure title is the stable reference. The feature value travels in command dword 11 of Set Features and comes back in
//! completion dword 0 of Get Features; the typed values below encode and decode that dword. FID, SEL and SV
//! themselves are command fields, handled in [`crate::sqe`].

use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

// ---------------------------------------------------------------------------------------------------------
// Feature Identifiers (NVMe Base 2.1 §5.1.25, the Feature Identifiers table)
// ---------------------------------------------------------------------------------------------------------

/// FID 01h: Arbitration ([`ArbitrationFeature`]).
pub const ARBITRATION: u8 = 0x01;
/// FID 02h: Power Management ([`PowerManagementFeature`]).
pub const POWER_MANAGEMENT: u8 = 0x02;
/// FID 03h: LBA Range Type (namespace specific, data structure).
pub const LBA_RANGE_TYPE: u8 = 0x03;
/// FID 04h: Temperature Threshold ([`TemperatureThreshold`]).
pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
/// FID 05h: Error Recovery ([`ErrorRecovery`], namespace specific).
pub const ERROR_RECOVERY: u8 = 0x05;
/// FID 06h: Volatile Write Cache ([`VolatileWriteCache`]).
pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
/// FID 07h: Number of Queues ([`NumberOfQueues`]).
pub const NUMBER_OF_QUEUES: u8 = 0x07;
/// FID 08h: Interrupt Coalescing (PCIe).
pub const INTERRUPT_COALESCING: u8 = 0x08;
/// FID 09h: Interrupt Vector Configuration (PCIe).
pub const INTERRUPT_VECTOR_CONFIG: u8 = 0x09;
/// FID 0Ah: Write Atomicity Normal ([`WriteAtomicityNormal`]).
pub const WRITE_ATOMICITY: u8 = 0x0A;
/// FID 0Bh: Asynchronous Event Configuration ([`AsyncEventConfig`]).
pub const ASYNC_EVENT_CONFIG: u8 = 0x0B;
/// FID 0Ch: Autonomous Power State Transition (data structure).
pub const APST: u8 = 0x0C;
/// FID 0Dh: Host Memory Buffer (PCIe).
pub const HOST_MEMORY_BUFFER: u8 = 0x0D;
/// FID 0Eh: Timestamp (8-byte data structure).
pub const TIMESTAMP: u8 = 0x0E;
/// FID 0Fh: Keep Alive Timer ([`KeepAliveTimer`]).
pub const KEEP_ALIVE_TIMER: u8 = 0x0F;
/// FID 10h: Host Controlled Thermal Management.
pub const HOST_THERMAL_MGMT: u8 = 0x10;
/// FID 11h: Non-Operational Power State Config.
pub const NOPSC: u8 = 0x11;
/// FID 12h: Read Recovery Level Config.
pub const READ_RECOVERY_LEVEL: u8 = 0x12;
/// FID 13h: Predictable Latency Mode Config.
pub const PLM_CONFIG: u8 = 0x13;
/// FID 14h: Predictable Latency Mode Window.
pub const PLM_WINDOW: u8 = 0x14;
/// FID 15h: LBA Status Information Attributes.
pub const LBA_STATUS_INFO: u8 = 0x15;
/// FID 16h: Host Behavior Support ([`HostBehaviorSupport`], 512-byte data structure).
pub const HOST_BEHAVIOR_SUPPORT: u8 = 0x16;
/// FID 17h: Sanitize Config.
pub const SANITIZE_CONFIG: u8 = 0x17;
/// FID 18h: Endurance Group Event Configuration.
pub const ENDURANCE_GROUP_EVENT_CONFIG: u8 = 0x18;
/// FID 19h: I/O Command Set Profile.
pub const IO_COMMAND_SET_PROFILE: u8 = 0x19;
/// FID 1Ah: Spinup Control.
pub const SPINUP_CONTROL: u8 = 0x1A;
/// FID 80h: Software Progress Marker.
pub const SOFTWARE_PROGRESS_MARKER: u8 = 0x80;
/// FID 81h: Host Identifier (8 or 16 bytes, set by Connect on fabrics).
pub const HOST_IDENTIFIER: u8 = 0x81;
/// FID 82h: Reservation Notification Mask.
pub const RESERVATION_NOTIFICATION_MASK: u8 = 0x82;
/// FID 83h: Reservation Persistence.
pub const RESERVATION_PERSISTENCE: u8 = 0x83;
/// FID 84h: Namespace Write Protection Config.
pub const NS_WRITE_PROTECTION: u8 = 0x84;

/// The specification's name of a feature, for logs and error messages.
pub fn feature_name(fid: u8) -> &'static str {
    match fid {
        ARBITRATION => "Arbitration",
        POWER_MANAGEMENT => "Power Management",
        LBA_RANGE_TYPE => "LBA Range Type",
        TEMPERATURE_THRESHOLD => "Temperature Threshold",
        ERROR_RECOVERY => "Error Recovery",
        VOLATILE_WRITE_CACHE => "Volatile Write Cache",
        NUMBER_OF_QUEUES => "Number of Queues",
        INTERRUPT_COALESCING => "Interrupt Coalescing",
        INTERRUPT_VECTOR_CONFIG => "Interrupt Vector Configuration",
        WRITE_ATOMICITY => "Write Atomicity Normal",
        ASYNC_EVENT_CONFIG => "Asynchronous Event Configuration",
        APST => "Autonomous Power State Transition",
        HOST_MEMORY_BUFFER => "Host Memory Buffer",
        TIMESTAMP => "Timestamp",
        KEEP_ALIVE_TIMER => "Keep Alive Timer",
        HOST_THERMAL_MGMT => "Host Controlled Thermal Management",
        NOPSC => "Non-Operational Power State Config",
        READ_RECOVERY_LEVEL => "Read Recovery Level Config",
        PLM_CONFIG => "Predictable Latency Mode Config",
        PLM_WINDOW => "Predictable Latency Mode Window",
        LBA_STATUS_INFO => "LBA Status Information Attributes",
        HOST_BEHAVIOR_SUPPORT => "Host Behavior Support",
        SANITIZE_CONFIG => "Sanitize Config",
        ENDURANCE_GROUP_EVENT_CONFIG => "Endurance Group Event Configuration",
        IO_COMMAND_SET_PROFILE => "I/O Command Set Profile",
        SPINUP_CONTROL => "Spinup Control",
        SOFTWARE_PROGRESS_MARKER => "Software Progress Marker",
        HOST_IDENTIFIER => "Host Identifier",
        RESERVATION_NOTIFICATION_MASK => "Reservation Notification Mask",
        RESERVATION_PERSISTENCE => "Reservation Persistence",
        NS_WRITE_PROTECTION => "Namespace Write Protection Config",
        0xC0..=0xFF => "Vendor Specific",
        _ => "Unknown feature",
    }
}

// ---------------------------------------------------------------------------------------------------------
// Get Features Select (CDW10 bits 10:8) and the Supported Capabilities answer (NVMe Base 2.1 §5.1.11)
// ---------------------------------------------------------------------------------------------------------

/// SEL 000b: the current value.
pub const SEL_CURRENT: u8 = 0;
/// SEL 001b: the default value.
pub const SEL_DEFAULT: u8 = 1;
/// SEL 010b: the saved value.
pub const SEL_SAVED: u8 = 2;
/// SEL 011b: the supported capabilities (completion dword 0 = `CAP_*` bits).
pub const SEL_SUPPORTED: u8 = 3;
/// Supported capabilities bit 0: the feature is saveable.
pub const CAP_SAVEABLE: u32 = 1 << 0;
/// Supported capabilities bit 1: the feature is namespace specific.
pub const CAP_NS_SPECIFIC: u32 = 1 << 1;
/// Supported capabilities bit 2: the feature is changeable.
pub const CAP_CHANGEABLE: u32 = 1 << 2;

// ---------------------------------------------------------------------------------------------------------
// Feature values (dword 11 of Set Features, dword 0 of the Get Features completion)
// ---------------------------------------------------------------------------------------------------------

/// Arbitration (FID 01h, NVMe Base 2.1 Figure 386 "Arbitration & Command Processing – Command Dword 11"): burst
/// and weighted round robin weights.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ArbitrationFeature {
    /// Arbitration Burst (AB), bits 2:0: log2 of the burst; 111b = no limit.
    pub ab: u8,
    /// Low Priority Weight (LPW), bits 15:8, 0's based.
    pub lpw: u8,
    /// Medium Priority Weight (MPW), bits 23:16, 0's based.
    pub mpw: u8,
    /// High Priority Weight (HPW), bits 31:24, 0's based.
    pub hpw: u8,
}

impl ArbitrationFeature {
    /// As a dword.
    pub fn to_dword(self) -> u32 {
        u32::from(self.ab & 0x7) | u32::from(self.lpw) << 8 | u32::from(self.mpw) << 16 | u32::from(self.hpw) << 24
    }
    /// From a dword (reserved bits ignored).
    pub fn from_dword(v: u32) -> Self {
        ArbitrationFeature { ab: (v & 0x7) as u8, lpw: (v >> 8) as u8, mpw: (v >> 16) as u8, hpw: (v >> 24) as u8 }
    }
}

/// Power Management (FID 02h, NVMe Base 2.1 Figures 387/388 "Power Management – Command Dword 11 / Completion
/// Queue Entry Dword 0").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct PowerManagementFeature {
    /// Power State (PS), bits 4:0.
    pub ps: u8,
    /// Workload Hint (WH), bits 7:5.
    pub wh: u8,
}

impl PowerManagementFeature {
    /// As a dword.
    pub fn to_dword(self) -> u32 {
        u32::from(self.ps & 0x1F) | u32::from(self.wh & 0x7) << 5
    }
    /// From a dword (reserved bits ignored).
    pub fn from_dword(v: u32) -> Self {
        PowerManagementFeature { ps: (v & 0x1F) as u8, wh: ((v >> 5) & 0x7) as u8 }
    }
}

/// TMPSEL 0h: the Composite Temperature.
pub const TMPSEL_COMPOSITE: u8 = 0x0;
/// TMPSEL Fh: every temperature sensor (Set Features only).
pub const TMPSEL_ALL: u8 = 0xF;
/// THSEL 00b: over temperature threshold.
pub const THSEL_OVER: u8 = 0;
/// THSEL 01b: under temperature threshold.
pub const THSEL_UNDER: u8 = 1;

/// Temperature Threshold (FID 04h, NVMe Base 2.1 §5.1.25.1.3, figure "Temperature Threshold – Command Dword 11").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct TemperatureThreshold {
    /// Temperature Threshold (TMPTH), bits 15:0, kelvin.
    pub tmpth: u16,
    /// Threshold Temperature Select (TMPSEL), bits 19:16: [`TMPSEL_COMPOSITE`], sensor 1–8, [`TMPSEL_ALL`].
    pub tmpsel: u8,
    /// Threshold Type Select (THSEL), bits 21:20: [`THSEL_OVER`] or [`THSEL_UNDER`].
    pub thsel: u8,
}

impl TemperatureThreshold {
    /// As a dword.
    pub fn to_dword(self) -> u32 {
        u32::from(self.tmpth) | u32::from(self.tmpsel & 0xF) << 16 | u32::from(self.thsel & 0x3) << 20
    }
    /// From a dword (reserved bits ignored).
    pub fn from_dword(v: u32) -> Self {
        TemperatureThreshold { tmpth: v as u16, tmpsel: ((v >> 16) & 0xF) as u8, thsel: ((v >> 20) & 0x3) as u8 }
    }
}

/// Error Recovery (FID 05h, NVMe Base 2.1 §5.1.25, figure "Error Recovery – Command Dword 11"; namespace
/// specific).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ErrorRecovery {
    /// Time Limited Error Recovery (TLER), bits 15:0, 100 ms units; 0 = no limit.
    pub tler: u16,
    /// Deallocated or Unwritten Logical Block Error Enable (DULBE), bit 16.
    pub dulbe: bool,
}

impl ErrorRecovery {
    /// As a dword.
    pub fn to_dword(self) -> u32 {
        u32::from(self.tler) | u32::from(self.dulbe) << 16
    }
    /// From a dword (reserved bits ignored).
    pub fn from_dword(v: u32) -> Self {
        ErrorRecovery { tler: v as u16, dulbe: v & (1 << 16) != 0 }
    }
}

/// Volatile Write Cache (FID 06h, NVMe Base 2.1 §5.1.25, figure "Volatile Write Cache – Command Dword 11").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct VolatileWriteCache {
    /// Volatile Write Cache Enable (WCE), bit 0.
    pub wce: bool,
}

impl VolatileWriteCache {
    /// As a dword.
    pub fn to_dword(self) -> u32 {
        u32::from(self.wce)
    }
    /// From a dword (reserved bits ignored).
    pub fn from_dword(v: u32) -> Self {
        VolatileWriteCache { wce: v & 1 != 0 }
    }
}

/// Number of Queues (FID 07h, NVMe Base 2.1 §5.1.25, figures "Number of Queues – Command Dword 11" and "Number
/// of Queues – Completion Queue Entry Dword 0"): 0's based counts of I/O submission and completion
/// queues, requested in Set Features dword 11 and allocated in completion dword 0 (NCQR/NCQA in bits 31:16,
/// NSQR/NSQA in bits 15:0). FFFFh is not a valid count.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NumberOfQueues {
    /// Number of I/O Submission Queues, 0's based.
    pub nsqr: u16,
    /// Number of I/O Completion Queues, 0's based.
    pub ncqr: u16,
}

impl NumberOfQueues {
    /// As dword 11 / completion dword 0.
    pub fn to_dword(self) -> u32 {
        u32::from(self.nsqr) | u32::from(self.ncqr) << 16
    }
    /// From a dword.
    pub fn from_dword(v: u32) -> Self {
        NumberOfQueues { nsqr: v as u16, ncqr: (v >> 16) as u16 }
    }
    /// Submission queues as a count (1-based).
    pub fn sq_count(self) -> u32 {
        u32::from(self.nsqr) + 1
    }
    /// Completion queues as a count (1-based).
    pub fn cq_count(self) -> u32 {
        u32::from(self.ncqr) + 1
    }
}

/// Write Atomicity Normal (FID 0Ah, NVMe Base 2.1 §5.1.25, figure "Write Atomicity Normal – Command Dword 11").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct WriteAtomicityNormal {
    /// Disable Normal (DN), bit 0: only AWUPF/NAWUPF atomicity is guaranteed.
    pub dn: bool,
}

impl WriteAtomicityNormal {
    /// As a dword.
    pub fn to_dword(self) -> u32 {
        u32::from(self.dn)
    }
    /// From a dword (reserved bits ignored).
    pub fn from_dword(v: u32) -> Self {
        WriteAtomicityNormal { dn: v & 1 != 0 }
    }
}

/// Asynchronous Event Configuration (FID 0Bh, NVMe Base 2.1 §5.1.25, figure "Asynchronous Event Configuration –
/// Command Dword 11"): which events the controller reports.
/// A bit set: the event is enabled. Vendor-specific events (holdfast's policy-changed notice) are not
/// controlled by this feature.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct AsyncEventConfig(pub u32);

impl AsyncEventConfig {
    /// Bits 7:0: SMART / Health critical warnings, one bit per Critical Warning bit of the SMART log.
    pub const SMART_MASK: u32 = 0xFF;
    /// Bit 8: Namespace Attribute Notices.
    pub const NS_ATTR: u32 = 1 << 8;
    /// Bit 9: Firmware Activation Notices.
    pub const FW_ACTIVATION: u32 = 1 << 9;
    /// Bit 10: Telemetry Log Notices.
    pub const TELEMETRY: u32 = 1 << 10;
    /// Bit 11: Asymmetric Namespace Access Change Notices.
    pub const ANA_CHANGE: u32 = 1 << 11;
    /// Bit 12: Predictable Latency Event Aggregate Log Change Notices.
    pub const PLEA_CHANGE: u32 = 1 << 12;
    /// Bit 13: LBA Status Information Notices.
    pub const LBA_STATUS: u32 = 1 << 13;
    /// Bit 14: Endurance Group Event Aggregate Log Change Notices.
    pub const EGE_CHANGE: u32 = 1 << 14;
    /// Bit 15: Normal NVM Subsystem Shutdown Notices.
    pub const NORMAL_SHUTDOWN: u32 = 1 << 15;
    /// Bit 27: Zone Descriptor Changed Notices (Zoned Namespace command set).
    pub const ZONE_DESCRIPTOR: u32 = 1 << 27;
    /// Bit 31: Discovery Log Page Change Notices (discovery controllers).
    pub const DISCOVERY_CHANGE: u32 = 1 << 31;

    /// As a dword.
    pub fn to_dword(self) -> u32 {
        self.0
    }
    /// From a dword.
    pub fn from_dword(v: u32) -> Self {
        AsyncEventConfig(v)
    }
    /// True if every bit of `bits` is set.
    pub fn enabled(self, bits: u32) -> bool {
        self.0 & bits == bits
    }
    /// The SMART / Health critical warnings that raise an event (bits 7:0).
    pub fn smart_warnings(self) -> u8 {
        (self.0 & Self::SMART_MASK) as u8
    }
}

/// Keep Alive Timer (FID 0Fh, NVMe Base 2.1 §5.1.25, figure "Keep Alive Timer – Command Dword 11"; §3.9): the
/// Keep Alive Timeout, also set by the Connect
/// command's KATO. A controller may round it up to a multiple of KAS; Get Features returns the value in use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct KeepAliveTimer {
    /// Keep Alive Timeout (KATO), ms; 0 = keep alive disabled.
    pub kato_ms: u32,
}

impl KeepAliveTimer {
    /// As a dword.
    pub fn to_dword(self) -> u32 {
        self.kato_ms
    }
    /// From a dword.
    pub fn from_dword(v: u32) -> Self {
        KeepAliveTimer { kato_ms: v }
    }
}

/// ACRE 1: Advanced Command Retry Enable: the controller may set CRD in retryable statuses and the host waits
/// CRDT1–3 before retrying.
pub const ACRE_ENABLE: u8 = 1;

/// Host Behavior Support data structure (FID 16h), 512 bytes, transferred as data with Set/Get Features (NVMe
/// Base 2.1 §5.1.25, figure "Host Behavior Support – Data Structure"). A Linux host sets ACRE when CRDT1 is
/// non-zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct HostBehaviorSupport {
    /// Advanced Command Retry Enable (ACRE): [`ACRE_ENABLE`].
    pub acre: u8,
    /// Extended Telemetry Data Area 4 Supported (ETDAS).
    pub etdas: u8,
    /// LBA Format Extension Enable (LBAFEE).
    pub lbafee: u8,
    /// Reserved (NVMe 2.1 adds HDISNS and CDFE here).
    pub rsvd3: [u8; 509],
}
const _: () = assert!(core::mem::size_of::<HostBehaviorSupport>() == 512);
const _: () = assert!(core::mem::offset_of!(HostBehaviorSupport, etdas) == 1);
const _: () = assert!(core::mem::offset_of!(HostBehaviorSupport, lbafee) == 2);

impl HostBehaviorSupport {
    /// Parse the first 512 bytes of `b`; `None` if it is shorter.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Self::read_from_prefix(b).ok().map(|(v, _)| v)
    }
    /// A structure with only ACRE set as given.
    pub fn with_acre(acre: bool) -> Self {
        let mut h = Self::new_zeroed();
        h.acre = u8::from(acre);
        h
    }
}

// ---------------------------------------------------------------------------------------------------------
// Asynchronous Event Request completion (NVMe Base 2.1 §5.1.2, figure "Asynchronous Event Request – Completion
// Queue Entry Dword 0")
// ---------------------------------------------------------------------------------------------------------

/// Asynchronous Event Types (completion dword 0 bits 2:0, NVMe Base 2.1 §5.1.2).
pub mod event_type {
    /// 000b: Error status.
    pub const ERROR: u8 = 0;
    /// 001b: SMART / Health status.
    pub const SMART: u8 = 1;
    /// 010b: Notice.
    pub const NOTICE: u8 = 2;
    /// 011b: Immediate.
    pub const IMMEDIATE: u8 = 3;
    /// 110b: I/O Command specific status.
    pub const IO_SPECIFIC: u8 = 6;
    /// 111b: Vendor specific (holdfast's policy-changed notice).
    pub const VENDOR: u8 = 7;
}

/// Asynchronous Event Information for the Notice type (NVMe Base 2.1 §5.1.2, "Asynchronous Event Information –
/// Notice").
pub mod notice {
    /// 00h: Attached Namespace Attribute Changed (read LID 04h).
    pub const NS_ATTR_CHANGED: u8 = 0x00;
    /// 01h: Firmware Activation Starting.
    pub const FW_ACTIVATION: u8 = 0x01;
    /// 02h: Telemetry Log Changed.
    pub const TELEMETRY: u8 = 0x02;
    /// 03h: Asymmetric Namespace Access Change (read LID 0Ch).
    pub const ANA_CHANGE: u8 = 0x03;
    /// 04h: Predictable Latency Event Aggregate Log Change.
    pub const PLEA_CHANGE: u8 = 0x04;
    /// 05h: LBA Status Information Alert.
    pub const LBA_STATUS: u8 = 0x05;
    /// 06h: Endurance Group Event Aggregate Log Page Change.
    pub const EGE_CHANGE: u8 = 0x06;
    /// 07h: Normal NVM Subsystem Shutdown.
    pub const NORMAL_SHUTDOWN: u8 = 0x07;
    /// F0h: Discovery Log Page Change (read LID 70h).
    pub const DISCOVERY_CHANGE: u8 = 0xF0;
}

/// Asynchronous Event Information for the I/O Command specific status type (NVMe Base 2.1 §5.1.2,
/// "Asynchronous Event Information – I/O Command Specific Status").
pub mod io_specific {
    /// 00h: Reservation Log Page Available (read LID 80h).
    pub const RESERVATION_LOG_AVAILABLE: u8 = 0x00;
}

/// Reservation Notification Mask (Feature 82h, namespace specific; NVMe Base 2.0 §5.27.1.20): CDW11 / dword 0
/// bits that stop a kind of notice ([`crate::log_page::rnlpt`]) for the namespace.
pub mod resv_mask {
    /// Bit 1: Mask Registration Preempted Notification (REGPRE).
    pub const REGPRE: u32 = 1 << 1;
    /// Bit 2: Mask Reservation Released Notification (RESREL).
    pub const RESREL: u32 = 1 << 2;
    /// Bit 3: Mask Reservation Preempted Notification (RESPRE).
    pub const RESPRE: u32 = 1 << 3;
    /// All three.
    pub const ALL: u32 = REGPRE | RESREL | RESPRE;
    /// The bit that masks notices of type `rnlpt`.
    pub const fn of(rnlpt: u8) -> u32 {
        1 << rnlpt
    }
}

/// Asynchronous Event Information for the SMART / Health type (NVMe Base 2.1 §5.1.2, "Asynchronous Event
/// Information – SMART / Health Status").
pub mod smart {
    /// 00h: NVM subsystem reliability.
    pub const RELIABILITY: u8 = 0x00;
    /// 01h: temperature threshold.
    pub const TEMPERATURE: u8 = 0x01;
    /// 02h: spare below threshold.
    pub const SPARE: u8 = 0x02;
}

/// Asynchronous Event Information for the Error type (NVMe Base 2.1 §5.1.2, "Asynchronous Event Information –
/// Error Status").
pub mod error {
    /// 00h: write to an invalid doorbell register.
    pub const INVALID_DOORBELL: u8 = 0x00;
    /// 01h: invalid doorbell write value.
    pub const INVALID_DOORBELL_VALUE: u8 = 0x01;
    /// 02h: diagnostic failure.
    pub const DIAGNOSTIC_FAILURE: u8 = 0x02;
    /// 03h: persistent internal error.
    pub const PERSISTENT_INTERNAL: u8 = 0x03;
    /// 04h: transient internal error.
    pub const TRANSIENT_INTERNAL: u8 = 0x04;
    /// 05h: firmware image load error.
    pub const FIRMWARE_LOAD: u8 = 0x05;
}

/// An Asynchronous Event Request completion's dword 0: what happened and which log page to read (reading it,
/// without RAE, re-arms the event).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncEvent {
    /// Asynchronous Event Type, bits 2:0: an [`event_type`] value.
    pub event_type: u8,
    /// Asynchronous Event Information, bits 15:8: a [`notice`], [`smart`] or [`error`] value, or vendor specific.
    pub info: u8,
    /// Log Page Identifier to read, bits 23:16.
    pub log_page: u8,
}

impl AsyncEvent {
    /// A Notice event.
    pub fn notice(info: u8, log_page: u8) -> Self {
        AsyncEvent { event_type: event_type::NOTICE, info, log_page }
    }
    /// A vendor-specific event.
    pub fn vendor(info: u8, log_page: u8) -> Self {
        AsyncEvent { event_type: event_type::VENDOR, info, log_page }
    }
    /// Encode as completion dword 0.
    pub fn to_dword(self) -> u32 {
        u32::from(self.event_type & 0x7) | u32::from(self.info) << 8 | u32::from(self.log_page) << 16
    }
    /// Decode completion dword 0 (reserved bits ignored).
    pub fn from_dword(v: u32) -> Self {
        AsyncEvent { event_type: (v & 0x7) as u8, info: (v >> 8) as u8, log_page: (v >> 16) as u8 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::log_page::{LID_CHANGED_NS_LIST, LID_DISCOVERY};
    use proptest::prelude::*;

    #[test]
    fn names() {
        assert_eq!(feature_name(KEEP_ALIVE_TIMER), "Keep Alive Timer");
        assert_eq!(feature_name(HOST_BEHAVIOR_SUPPORT), "Host Behavior Support");
        assert_eq!(feature_name(0xC5), "Vendor Specific");
        assert_eq!(feature_name(0x7A), "Unknown feature");
    }

    #[test]
    fn dword_golden() {
        // "Number of Queues – Command Dword 11": NCQR in bits 31:16, NSQR in bits 15:0, 0's based.
        let q = NumberOfQueues { nsqr: 1, ncqr: 3 };
        assert_eq!(q.to_dword(), 0x0003_0001);
        assert_eq!((q.sq_count(), q.cq_count()), (2, 4));
        assert_eq!(NumberOfQueues::from_dword(0x0003_0001), q);
        // NVMe Base 2.1 Figure 386: AB 2:0, LPW 15:8, MPW 23:16, HPW 31:24.
        let a = ArbitrationFeature { ab: 3, lpw: 0x11, mpw: 0x22, hpw: 0x33 };
        assert_eq!(a.to_dword(), 0x3322_1103);
        assert_eq!(ArbitrationFeature::from_dword(0x3322_11FB), a, "reserved bits 7:3 ignored");
        // NVMe Base 2.1 Figure 387: PS 4:0, WH 7:5.
        assert_eq!(PowerManagementFeature { ps: 2, wh: 1 }.to_dword(), 0x22);
        // "Temperature Threshold – Command Dword 11": TMPTH 15:0, TMPSEL 19:16, THSEL 21:20.
        let t = TemperatureThreshold { tmpth: 350, tmpsel: 1, thsel: THSEL_UNDER };
        assert_eq!(t.to_dword(), 0x0011_015E);
        assert_eq!(TemperatureThreshold::from_dword(0x0011_015E), t);
        // "Error Recovery – Command Dword 11": TLER 15:0, DULBE bit 16.
        assert_eq!(ErrorRecovery { tler: 5, dulbe: true }.to_dword(), 0x0001_0005);
        assert_eq!(VolatileWriteCache::from_dword(0xFFFF_FFFE), VolatileWriteCache { wce: false });
        assert_eq!(VolatileWriteCache { wce: true }.to_dword(), 1);
        assert_eq!(WriteAtomicityNormal::from_dword(1), WriteAtomicityNormal { dn: true });
        assert_eq!(KeepAliveTimer::from_dword(5000).kato_ms, 5000);
        let c = AsyncEventConfig(AsyncEventConfig::NS_ATTR | AsyncEventConfig::DISCOVERY_CHANGE | 0x3);
        assert_eq!(c.to_dword(), 0x8000_0103);
        assert!(c.enabled(AsyncEventConfig::NS_ATTR) && !c.enabled(AsyncEventConfig::ANA_CHANGE));
        assert_eq!(c.smart_warnings(), 0x3);
    }

    #[test]
    fn linux_feature_values() {
        // Dwords from captures/linux-host-linux-target.pcap (Linux 6.1 host, nvmet target):
        // Set Features Number of Queues for `nvme connect -i 2` and nvmet's answer (128 of each);
        let asked = NumberOfQueues::from_dword(0x0001_0001);
        assert_eq!((asked.sq_count(), asked.cq_count()), (2, 2));
        let got = NumberOfQueues::from_dword(0x007f_007f);
        assert_eq!((got.sq_count(), got.cq_count()), (128, 128));
        // the Asynchronous Event Configuration the host set on the I/O and on the discovery controller;
        let io = AsyncEventConfig::from_dword(0x0000_0900);
        assert_eq!(io, AsyncEventConfig(AsyncEventConfig::NS_ATTR | AsyncEventConfig::ANA_CHANGE));
        assert!(AsyncEventConfig::from_dword(0x8000_0000).enabled(AsyncEventConfig::DISCOVERY_CHANGE));
        // Get Features Keep Alive Timer (`-k 5`) and Volatile Write Cache.
        assert_eq!(KeepAliveTimer::from_dword(0x1388), KeepAliveTimer { kato_ms: 5000 });
        assert!(VolatileWriteCache::from_dword(1).wce);
    }

    #[test]
    fn host_behavior_golden() {
        // "Host Behavior Support – Data Structure": ACRE byte 0, ETDAS byte 1, LBAFEE byte 2.
        let mut h = HostBehaviorSupport::with_acre(true);
        h.lbafee = 1;
        let b = h.as_bytes();
        assert_eq!(&b[..4], &[1, 0, 1, 0]);
        assert_eq!(b.len(), 512);
        assert_eq!(HostBehaviorSupport::from_slice(b), Some(h));
        assert_eq!(HostBehaviorSupport::from_slice(&b[..511]), None);
    }

    #[test]
    fn async_event_golden() {
        // "Asynchronous Event Request – Completion Queue Entry Dword 0": type 2:0, information 15:8, LID 23:16.
        let e = AsyncEvent::notice(notice::NS_ATTR_CHANGED, LID_CHANGED_NS_LIST);
        assert_eq!(e.to_dword(), 0x0004_0002);
        assert_eq!(AsyncEvent::from_dword(0x0004_0002), e);
        assert_eq!(AsyncEvent::notice(notice::DISCOVERY_CHANGE, LID_DISCOVERY).to_dword(), 0x0070_F002);
        assert_eq!(AsyncEvent::vendor(0xC0, 0xC0).to_dword(), 0x00C0_C007);
        assert_eq!(AsyncEvent::from_dword(0xFF00_0000).event_type, event_type::ERROR, "reserved bits ignored");
    }

    proptest! {
        #[test]
        fn async_event_round_trip(t in 0u8..8, info in any::<u8>(), lid in any::<u8>()) {
            let e = AsyncEvent { event_type: t, info, log_page: lid };
            prop_assert_eq!(AsyncEvent::from_dword(e.to_dword()), e);
        }

        #[test]
        fn number_of_queues_round_trip(v in any::<u32>()) {
            prop_assert_eq!(NumberOfQueues::from_dword(v).to_dword(), v);
        }
    }
}
