//! Identify data structures: what a host learns about a controller and its namespaces.
//!
//! Sources: NVMe Base Specification 2.1 §5.1.13 (Identify command: Figure 312 "Identify Controller Data
//! Structure, I/O Command Set Independent", Figure 313 "Power State Descriptor Data Structure", Figure 315
//! "Namespace Identification Descriptor", Figure 319 "I/O Command Set Independent Identify Namespace Data
//! Structure"), which are Figures 275, 276, 277 and 280 of NVMe Base 2.0; the NVM Command Set Specification
//! (figures "Identify Namespace Data Structure, NVM Command Set", "LBA Format Data Structure" and "I/O Command
//! Set Specific Identify Controller Data Structure for the NVM Command Set"; their numbers change with every
//! revision); and NVMe over Fabrics 1.1 for the fabrics fields at bytes 1792–2047 of Identify Controller.
//! Figure numbers change between revisions: a figure title is the stable reference.
//!
//! Every structure is a `#[repr(C)]` zerocopy struct: build one with [`FromZeros::new_zeroed`], fill it,
//! send `as_bytes()`; parse received bytes with the struct's `from_slice`. Offsets are asserted at compile time
//! right after each struct, and the unit tests parse real bytes a Linux 6.1 nvmet target sent.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

// ---------------------------------------------------------------------------------------------------------
// CNS values (Identify command, CDW10 bits 7:0; NVMe Base 2.1 §5.1.13, the CNS value table)
// ---------------------------------------------------------------------------------------------------------

/// CNS 00h: Identify Namespace data structure for the NSID (NVM command set, [`IdentifyNamespace`]).
pub const CNS_NAMESPACE: u8 = 0x00;
/// CNS 01h: Identify Controller data structure ([`IdentifyController`]).
pub const CNS_CONTROLLER: u8 = 0x01;
/// CNS 02h: Active Namespace ID list: active NSIDs greater than CDW1.NSID ([`active_ns_list_after`]).
pub const CNS_ACTIVE_NS_LIST: u8 = 0x02;
/// CNS 03h: Namespace Identification Descriptor list of the NSID ([`ns_descriptor_list`]).
pub const CNS_NS_DESC_LIST: u8 = 0x03;
/// CNS 05h: I/O Command Set specific Identify Namespace (CSI in CDW11; for CSI 0 the NVM command set's
/// structure, all reserved in NVM Command Set 1.0 except end-to-end protection fields).
pub const CNS_CSI_NAMESPACE: u8 = 0x05;
/// CNS 06h: I/O Command Set specific Identify Controller (for CSI 0: [`IdentifyControllerNvm`]).
pub const CNS_CSI_CONTROLLER: u8 = 0x06;
/// CNS 07h: Active Namespace ID list of the I/O command set in CDW11.CSI.
pub const CNS_CSI_ACTIVE_NS_LIST: u8 = 0x07;
/// CNS 08h: I/O Command Set Independent Identify Namespace ([`IdentifyNamespaceIndependent`]). Recent Linux
/// hosts try it before CNS 00h when scanning a namespace and fall back to CNS 00h on an error status.
pub const CNS_CS_INDEPENDENT_NAMESPACE: u8 = 0x08;
/// CNS 1Ch: I/O Command Set data structure (the I/O command set combinations the controller supports).
pub const CNS_IO_COMMAND_SET: u8 = 0x1C;

/// CSI (Command Set Identifier) of the NVM command set.
pub const CSI_NVM: u8 = 0x00;
/// CSI of the Key Value command set.
pub const CSI_KV: u8 = 0x01;
/// CSI of the Zoned Namespace command set.
pub const CSI_ZNS: u8 = 0x02;

// ---------------------------------------------------------------------------------------------------------
// Identify Controller field values
// ---------------------------------------------------------------------------------------------------------

/// CMIC bit 0: the NVM subsystem may have more than one port.
pub const CMIC_MULTI_PORT: u8 = 1 << 0;
/// CMIC bit 1: the NVM subsystem may have more than one controller.
pub const CMIC_MULTI_CTRL: u8 = 1 << 1;
/// CMIC bit 3: Asymmetric Namespace Access reporting supported.
pub const CMIC_ANA: u8 = 1 << 3;

/// OAES bit 8: Namespace Attribute Notices (AEN notice 00h, Changed Namespace List log).
pub const OAES_NS_ATTR: u32 = 1 << 8;
/// OAES bit 9: Firmware Activation Notices.
pub const OAES_FW_ACTIVATION: u32 = 1 << 9;
/// OAES bit 11: Asymmetric Namespace Access Change Notices.
pub const OAES_ANA_CHANGE: u32 = 1 << 11;
/// OAES bit 12: Predictable Latency Event Aggregate Log Change Notices.
pub const OAES_PLEA_CHANGE: u32 = 1 << 12;
/// OAES bit 13: LBA Status Information Alert Notices.
pub const OAES_LBA_STATUS: u32 = 1 << 13;
/// OAES bit 14: Endurance Group Event Aggregate Log Page Change Notices.
pub const OAES_EGE_CHANGE: u32 = 1 << 14;
/// OAES bit 15: Normal NVM Subsystem Shutdown event.
pub const OAES_NORMAL_SHUTDOWN: u32 = 1 << 15;
/// OAES bit 27: Zone Descriptor Changed Notices (Zoned Namespace command set).
pub const OAES_ZONE_DESCRIPTOR: u32 = 1 << 27;
/// OAES bit 31: Discovery Log Page Change Notices (discovery controllers).
pub const OAES_DISCOVERY_CHANGE: u32 = 1 << 31;

/// CTRATT bit 0: 128-bit Host Identifier supported.
pub const CTRATT_HOST_ID_128: u32 = 1 << 0;
/// CTRATT bit 1: Non-Operational Power State Permissive Mode.
pub const CTRATT_NOPSPM: u32 = 1 << 1;
/// CTRATT bit 2: NVM Sets.
pub const CTRATT_NVM_SETS: u32 = 1 << 2;
/// CTRATT bit 3: Read Recovery Levels.
pub const CTRATT_READ_RECOVERY_LEVELS: u32 = 1 << 3;
/// CTRATT bit 4: Endurance Groups.
pub const CTRATT_ENDURANCE_GROUPS: u32 = 1 << 4;
/// CTRATT bit 5: Predictable Latency Mode.
pub const CTRATT_PREDICTABLE_LATENCY: u32 = 1 << 5;
/// CTRATT bit 6: Traffic Based Keep Alive (a Linux host then sends keep-alives only on idle queues, at KATO/4).
pub const CTRATT_TBKAS: u32 = 1 << 6;
/// CTRATT bit 7: Namespace Granularity.
pub const CTRATT_NS_GRANULARITY: u32 = 1 << 7;
/// CTRATT bit 8: SQ Associations.
pub const CTRATT_SQ_ASSOCIATIONS: u32 = 1 << 8;
/// CTRATT bit 9: UUID List.
pub const CTRATT_UUID_LIST: u32 = 1 << 9;
/// CTRATT bit 15: Extended LBA Formats supported.
pub const CTRATT_ELBAS: u32 = 1 << 15;

/// CNTRLTYPE 1: I/O controller.
pub const CNTRLTYPE_IO: u8 = 1;
/// CNTRLTYPE 2: Discovery controller.
pub const CNTRLTYPE_DISCOVERY: u8 = 2;
/// CNTRLTYPE 3: Administrative controller.
pub const CNTRLTYPE_ADMIN: u8 = 3;

/// OACS bit 2: Firmware Commit and Firmware Image Download.
pub const OACS_FIRMWARE: u16 = 1 << 2;
/// OACS bit 3: Namespace Management.
pub const OACS_NS_MGMT: u16 = 1 << 3;
/// OACS bit 5: Directives.
pub const OACS_DIRECTIVES: u16 = 1 << 5;

/// LPA bit 0: SMART / Health Information log per namespace.
pub const LPA_SMART_PER_NS: u8 = 1 << 0;
/// LPA bit 1: Commands Supported and Effects log.
pub const LPA_CMD_EFFECTS: u8 = 1 << 1;
/// LPA bit 2: extended data for Get Log Page (NUMDU, LPOL/LPOU offsets).
pub const LPA_EXTENDED_DATA: u8 = 1 << 2;
/// LPA bit 3: Telemetry Host-Initiated and Controller-Initiated logs.
pub const LPA_TELEMETRY: u8 = 1 << 3;
/// LPA bit 4: Persistent Event log.
pub const LPA_PERSISTENT_EVENT: u8 = 1 << 4;
/// LPA bit 5: Supported Log Pages log, scope in Commands Supported and Effects, Feature Identifiers
/// Supported and Effects, NVMe-MI Commands Supported and Effects.
pub const LPA_SUPPORTED_LOG_PAGES: u8 = 1 << 5;

/// ONCS bit 0: Compare.
pub const ONCS_COMPARE: u16 = 1 << 0;
/// ONCS bit 1: Write Uncorrectable.
pub const ONCS_WRITE_UNCORRECTABLE: u16 = 1 << 1;
/// ONCS bit 2: Dataset Management.
pub const ONCS_DSM: u16 = 1 << 2;
/// ONCS bit 3: Write Zeroes.
pub const ONCS_WRITE_ZEROES: u16 = 1 << 3;
/// ONCS bit 4: the Save field of Set Features and the Select field of Get Features.
pub const ONCS_SAVE_SELECT: u16 = 1 << 4;
/// ONCS bit 5: Reservations.
pub const ONCS_RESERVATIONS: u16 = 1 << 5;
/// ONCS bit 6: Timestamp feature.
pub const ONCS_TIMESTAMP: u16 = 1 << 6;
/// ONCS bit 7: Verify.
pub const ONCS_VERIFY: u16 = 1 << 7;
/// ONCS bit 8: Copy.
pub const ONCS_COPY: u16 = 1 << 8;

/// FUSES bit 0: Compare and Write fused operation.
pub const FUSES_COMPARE_AND_WRITE: u16 = 1 << 0;

/// VWC bit 0: a volatile write cache is present.
pub const VWC_PRESENT: u8 = 1 << 0;
/// VWC bits 2:1 = 11b: Flush with NSID FFFFFFFFh is supported.
pub const VWC_FLUSH_BROADCAST: u8 = 0x3 << 1;
/// VWC bits 2:1 = 10b: Flush with NSID FFFFFFFFh is not supported.
pub const VWC_FLUSH_NO_BROADCAST: u8 = 0x2 << 1;

/// SGLS bits 1:0 = 01b: SGLs supported, no alignment or granularity requirement.
pub const SGLS_SUPPORTED: u32 = 1 << 0;
/// SGLS bits 1:0 = 10b: SGLs supported with a dword alignment and granularity requirement.
pub const SGLS_SUPPORTED_DWORD_ALIGNED: u32 = 1 << 1;
/// SGLS bits 1:0: mask of the SGL support field.
pub const SGLS_SUPPORT_MASK: u32 = 0x3;
/// SGLS bit 2: Keyed SGL Data Block descriptor (RDMA).
pub const SGLS_KEYED: u32 = 1 << 2;
/// SGLS bit 16: SGL Bit Bucket descriptor.
pub const SGLS_BIT_BUCKET: u32 = 1 << 16;
/// SGLS bit 17: byte-aligned contiguous physical buffer of metadata.
pub const SGLS_METADATA_BYTE_ALIGNED: u32 = 1 << 17;
/// SGLS bit 18: SGL length may exceed the data to transfer.
pub const SGLS_OVERSIZED: u32 = 1 << 18;
/// SGLS bit 19: MPTR may hold an SGL descriptor.
pub const SGLS_MPTR_SGL: u32 = 1 << 19;
/// SGLS bit 20: the Address field may be an offset (in-capsule data, the Offset subtype).
pub const SGLS_OFFSET: u32 = 1 << 20;
/// SGLS bit 21: Transport SGL Data Block descriptor.
pub const SGLS_TRANSPORT: u32 = 1 << 21;

/// FCATT bit 0: static controller model (0: dynamic).
pub const FCATT_STATIC: u8 = 1 << 0;
/// OFCS bit 0: the Disconnect fabrics command is supported.
pub const OFCS_DISCONNECT: u16 = 1 << 0;

/// DCTYPE 0: discovery controller type not reported.
pub const DCTYPE_NOT_REPORTED: u8 = 0;
/// DCTYPE 1: Direct Discovery Controller.
pub const DCTYPE_DDC: u8 = 1;
/// DCTYPE 2: Centralized Discovery Controller.
pub const DCTYPE_CDC: u8 = 2;

/// Power state descriptor flags bit 0: Max Power Scale (MXPS): MP is in 0.0001 W units instead of 0.01 W.
pub const PSD_FLAG_MXPS: u8 = 1 << 0;
/// Power state descriptor flags bit 1: Non-Operational State (NOPS).
pub const PSD_FLAG_NOPS: u8 = 1 << 1;

// ---------------------------------------------------------------------------------------------------------
// Identify Namespace field values (NVM Command Set, "Identify Namespace Data Structure, NVM Command Set")
// ---------------------------------------------------------------------------------------------------------

/// NSFEAT bit 0: thin provisioning.
pub const NSFEAT_THIN_PROVISIONING: u8 = 1 << 0;
/// NSFEAT bit 1: NAWUN, NAWUPF, NACWU are namespace specific.
pub const NSFEAT_NS_ATOMICS: u8 = 1 << 1;
/// NSFEAT bit 2: deallocated or unwritten logical block error.
pub const NSFEAT_DULBE: u8 = 1 << 2;
/// NSFEAT bit 3: NGUID and EUI64 are never reused.
pub const NSFEAT_UIDREUSE: u8 = 1 << 3;
/// NSFEAT bit 4: NPWG, NPWA, NPDG, NPDA, NOWS are valid.
pub const NSFEAT_OPTPERF: u8 = 1 << 4;
/// NMIC bit 0: the namespace may be attached to two or more controllers.
pub const NMIC_SHARED: u8 = 1 << 0;
/// NSATTR bit 0: the namespace is write protected.
pub const NSATTR_WRITE_PROTECTED: u8 = 1 << 0;
/// DLFEAT bits 2:0 = 001b: deallocated blocks read as all zeroes.
pub const DLFEAT_READS_ZEROES: u8 = 0x1;
/// DLFEAT bit 3: Write Zeroes supports the Deallocate bit.
pub const DLFEAT_WRITE_ZEROES_DEAC: u8 = 1 << 3;
/// DLFEAT bit 4: the guard field of deallocated blocks holds their CRC.
pub const DLFEAT_GUARD_CRC: u8 = 1 << 4;
/// NSTAT bit 0 (CNS 08h): the namespace is ready.
pub const NSTAT_READY: u8 = 1 << 0;

// ---------------------------------------------------------------------------------------------------------
// String fields
// ---------------------------------------------------------------------------------------------------------

/// Write `s` into an ASCII field, left justified and padded with spaces (SN, MN, FR; NVMe Base 2.1 §1.5.2
/// "ASCII string"). Bytes outside printable ASCII (20h–7Eh) become `?`; a longer string is truncated.
pub fn set_ascii(field: &mut [u8], s: &str) {
    field.fill(b' ');
    for (dst, &b) in field.iter_mut().zip(s.as_bytes()) {
        *dst = if (0x20..=0x7E).contains(&b) { b } else { b'?' };
    }
}

/// Read an ASCII or UTF-8 string field, dropping trailing spaces and NULs (a host must accept both
/// paddings). Invalid UTF-8 is replaced, never rejected.
pub fn get_ascii(field: &[u8]) -> String {
    String::from_utf8_lossy(field).trim_end_matches([' ', '\0']).to_string()
}

/// Write `s` into a NUL-padded UTF-8 field (SUBNQN, discovery TRADDR/TRSVCID/SUBNQN): the bytes of `s`, then
/// zeroes. A string longer than the field is cut at the last character boundary that fits.
pub fn set_nul_padded(field: &mut [u8], s: &str) {
    field.fill(0);
    let mut n = s.len().min(field.len());
    while !s.is_char_boundary(n) {
        n -= 1;
    }
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Read a NUL-terminated (or space-padded) string field: the bytes before the first NUL, with trailing
/// spaces dropped. Invalid UTF-8 is replaced, never rejected.
pub fn get_nul_padded(field: &[u8]) -> String {
    let end = field.iter().position(|&b| b == 0).unwrap_or(field.len());
    String::from_utf8_lossy(&field[..end]).trim_end_matches(' ').to_string()
}

// ---------------------------------------------------------------------------------------------------------
// Identify Controller (CNS 01h)
// ---------------------------------------------------------------------------------------------------------

/// Power State Descriptor, 32 bytes (NVMe Base 2.1 Figure 313; NVMe Base 2.0 Figure 276).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct PowerStateDescriptor {
    /// Maximum Power (MP), in 0.01 W units (0.0001 W if [`PSD_FLAG_MXPS`]).
    pub mp: U16,
    /// Reserved.
    pub rsvd2: u8,
    /// [`PSD_FLAG_MXPS`] (bit 0), [`PSD_FLAG_NOPS`] (bit 1).
    pub flags: u8,
    /// Entry Latency (ENLAT), µs.
    pub enlat: U32,
    /// Exit Latency (EXLAT), µs.
    pub exlat: U32,
    /// Relative Read Throughput (RRT), bits 4:0.
    pub rrt: u8,
    /// Relative Read Latency (RRL), bits 4:0.
    pub rrl: u8,
    /// Relative Write Throughput (RWT), bits 4:0.
    pub rwt: u8,
    /// Relative Write Latency (RWL), bits 4:0.
    pub rwl: u8,
    /// Idle Power (IDLP).
    pub idlp: U16,
    /// Idle Power Scale (IPS), bits 7:6.
    pub ips: u8,
    /// Reserved.
    pub rsvd19: u8,
    /// Active Power (ACTP).
    pub actp: U16,
    /// Active Power Workload (APW, bits 2:0) and Active Power Scale (APS, bits 7:6).
    pub apws: u8,
    /// Reserved (NVMe 2.1 emergency power fail fields, unused by holdfast).
    pub rsvd23: [u8; 9],
}
const _: () = assert!(core::mem::size_of::<PowerStateDescriptor>() == 32);
const _: () = assert!(core::mem::offset_of!(PowerStateDescriptor, enlat) == 4);
const _: () = assert!(core::mem::offset_of!(PowerStateDescriptor, exlat) == 8);
const _: () = assert!(core::mem::offset_of!(PowerStateDescriptor, rrt) == 12);
const _: () = assert!(core::mem::offset_of!(PowerStateDescriptor, idlp) == 16);
const _: () = assert!(core::mem::offset_of!(PowerStateDescriptor, actp) == 20);
const _: () = assert!(core::mem::offset_of!(PowerStateDescriptor, apws) == 22);

/// Identify Controller data structure, 4096 bytes (NVMe Base 2.1 Figure 312 "Identify Controller Data
/// Structure, I/O Command Set Independent"; NVMe Base 2.0 Figure 275; NVMe over Fabrics 1.1 for bytes
/// 1792–2047). Fields added after NVMe 2.0 are marked "(2.1)"; a 2.0 controller leaves them zero.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct IdentifyController {
    // ----- Controller capabilities and features (bytes 0–255) -----
    /// PCI Vendor ID (VID).
    pub vid: U16,
    /// PCI Subsystem Vendor ID (SSVID).
    pub ssvid: U16,
    /// Serial Number (SN): ASCII, space padded ([`set_ascii`]).
    pub sn: [u8; 20],
    /// Model Number (MN): ASCII, space padded.
    pub mn: [u8; 40],
    /// Firmware Revision (FR): ASCII, space padded.
    pub fr: [u8; 8],
    /// Recommended Arbitration Burst (RAB), a power of two.
    pub rab: u8,
    /// IEEE OUI Identifier (IEEE), least significant byte first.
    pub ieee: [u8; 3],
    /// Controller Multi-Path I/O and Namespace Sharing Capabilities (CMIC): `CMIC_*`.
    pub cmic: u8,
    /// Maximum Data Transfer Size (MDTS): a power of two in units of CAP.MPSMIN; 0 = no limit.
    pub mdts: u8,
    /// Controller ID (CNTLID).
    pub cntlid: U16,
    /// Version (VER): major in bits 31:16, minor 15:8, tertiary 7:0.
    pub ver: U32,
    /// RTD3 Resume Latency (RTD3R), µs.
    pub rtd3r: U32,
    /// RTD3 Entry Latency (RTD3E), µs. A Linux host derives its shutdown timeout from it.
    pub rtd3e: U32,
    /// Optional Asynchronous Events Supported (OAES): `OAES_*`.
    pub oaes: U32,
    /// Controller Attributes (CTRATT): `CTRATT_*`.
    pub ctratt: U32,
    /// Read Recovery Levels Supported (RRLS).
    pub rrls: U16,
    /// Boot Partition Capabilities (BPCAP) (2.1).
    pub bpcap: u8,
    /// Reserved.
    pub rsvd103: u8,
    /// NVM Subsystem Shutdown Latency (NSSL), µs (2.1).
    pub nssl: U32,
    /// Reserved.
    pub rsvd108: [u8; 2],
    /// Power Loss Signaling Information (PLSI) (2.1).
    pub plsi: u8,
    /// Controller Type (CNTRLTYPE): `CNTRLTYPE_*`.
    pub cntrltype: u8,
    /// FRU Globally Unique Identifier (FGUID).
    pub fguid: [u8; 16],
    /// Command Retry Delay Time 1 (CRDT1), 100 ms units; chosen by CRD = 1 in a status once the host enabled
    /// ACRE (Host Behavior Support).
    pub crdt1: U16,
    /// Command Retry Delay Time 2 (CRDT2), 100 ms units.
    pub crdt2: U16,
    /// Command Retry Delay Time 3 (CRDT3), 100 ms units.
    pub crdt3: U16,
    /// Reserved (TP8028 puts CRCAP, CIU and CIRN at 134–143; not ratified in 2.1).
    pub rsvd134: [u8; 119],
    /// NVM Subsystem Report (NVMSR).
    pub nvmsr: u8,
    /// VPD Write Cycle Information (VWCI).
    pub vwci: u8,
    /// Management Endpoint Capabilities (MEC).
    pub mec: u8,

    // ----- Admin command set attributes and optional controller capabilities (bytes 256–511) -----
    /// Optional Admin Command Support (OACS): `OACS_*`.
    pub oacs: U16,
    /// Abort Command Limit (ACL), 0's based.
    pub acl: u8,
    /// Asynchronous Event Request Limit (AERL), 0's based.
    pub aerl: u8,
    /// Firmware Updates (FRMW): bit 0 slot 1 read only, bits 3:1 number of slots.
    pub frmw: u8,
    /// Log Page Attributes (LPA): `LPA_*`.
    pub lpa: u8,
    /// Error Log Page Entries (ELPE), 0's based.
    pub elpe: u8,
    /// Number of Power States Support (NPSS), 0's based.
    pub npss: u8,
    /// Admin Vendor Specific Command Configuration (AVSCC).
    pub avscc: u8,
    /// Autonomous Power State Transition Attributes (APSTA).
    pub apsta: u8,
    /// Warning Composite Temperature Threshold (WCTEMP), kelvin.
    pub wctemp: U16,
    /// Critical Composite Temperature Threshold (CCTEMP), kelvin.
    pub cctemp: U16,
    /// Maximum Time for Firmware Activation (MTFA), 100 ms units.
    pub mtfa: U16,
    /// Host Memory Buffer Preferred Size (HMPRE), 4 KiB units.
    pub hmpre: U32,
    /// Host Memory Buffer Minimum Size (HMMIN), 4 KiB units.
    pub hmmin: U32,
    /// Total NVM Capacity (TNVMCAP), bytes, 128-bit little endian.
    pub tnvmcap: [u8; 16],
    /// Unallocated NVM Capacity (UNVMCAP), bytes, 128-bit little endian.
    pub unvmcap: [u8; 16],
    /// Replay Protected Memory Block Support (RPMBS).
    pub rpmbs: U32,
    /// Extended Device Self-test Time (EDSTT), minutes.
    pub edstt: U16,
    /// Device Self-test Options (DSTO).
    pub dsto: u8,
    /// Firmware Update Granularity (FWUG), 4 KiB units.
    pub fwug: u8,
    /// Keep Alive Support (KAS): keep-alive timer granularity in 100 ms units; 0 = not supported (a Linux
    /// host refuses a fabrics I/O controller with KAS 0).
    pub kas: U16,
    /// Host Controlled Thermal Management Attributes (HCTMA).
    pub hctma: U16,
    /// Minimum Thermal Management Temperature (MNTMT), kelvin.
    pub mntmt: U16,
    /// Maximum Thermal Management Temperature (MXTMT), kelvin.
    pub mxtmt: U16,
    /// Sanitize Capabilities (SANICAP).
    pub sanicap: U32,
    /// Host Memory Buffer Minimum Descriptor Entry Size (HMMINDS), 4 KiB units.
    pub hmminds: U32,
    /// Host Memory Maximum Descriptors Entries (HMMAXD).
    pub hmmaxd: U16,
    /// NVM Set Identifier Maximum (NSETIDMAX).
    pub nsetidmax: U16,
    /// Endurance Group Identifier Maximum (ENDGIDMAX).
    pub endgidmax: U16,
    /// ANA Transition Time (ANATT), seconds.
    pub anatt: u8,
    /// Asymmetric Namespace Access Capabilities (ANACAP).
    pub anacap: u8,
    /// ANA Group Identifier Maximum (ANAGRPMAX).
    pub anagrpmax: U32,
    /// Number of ANA Group Identifiers (NANAGRPID).
    pub nanagrpid: U32,
    /// Persistent Event Log Size (PELS), 64 KiB units.
    pub pels: U32,
    /// Domain Identifier.
    pub domainid: U16,
    /// Key Per I/O Capabilities (KPIOC) (2.1).
    pub kpioc: u8,
    /// Reserved.
    pub rsvd359: u8,
    /// Maximum Processing Time for Firmware Activation Without Reset (MPTFAWR), 100 ms units (2.1).
    pub mptfawr: U16,
    /// Reserved.
    pub rsvd362: [u8; 6],
    /// Max Endurance Group Capacity (MEGCAP), bytes, 128-bit little endian.
    pub megcap: [u8; 16],
    /// Temperature Threshold Hysteresis Attributes (TMPTHHA) (2.1).
    pub tmpthha: u8,
    /// Reserved.
    pub rsvd385: u8,
    /// Command Quiesce Time (CQT), ms (2.1, TP4129): the longest a command of a lost association may still
    /// run; 0 = not reported.
    pub cqt: U16,
    /// Reserved.
    pub rsvd388: [u8; 124],

    // ----- NVM command set attributes (bytes 512–767) -----
    /// Submission Queue Entry Size (SQES): maximum log2 in bits 7:4, required log2 in bits 3:0 (66h = 64 B).
    pub sqes: u8,
    /// Completion Queue Entry Size (CQES): the same for completions (44h = 16 B).
    pub cqes: u8,
    /// Maximum Outstanding Commands (MAXCMD) per queue.
    pub maxcmd: U16,
    /// Number of Namespaces (NN): the highest valid NSID.
    pub nn: U32,
    /// Optional NVM Command Support (ONCS): `ONCS_*`.
    pub oncs: U16,
    /// Fused Operation Support (FUSES): `FUSES_*`.
    pub fuses: U16,
    /// Format NVM Attributes (FNA).
    pub fna: u8,
    /// Volatile Write Cache (VWC): `VWC_*`.
    pub vwc: u8,
    /// Atomic Write Unit Normal (AWUN), logical blocks, 0's based.
    pub awun: U16,
    /// Atomic Write Unit Power Fail (AWUPF), logical blocks, 0's based.
    pub awupf: U16,
    /// I/O Command Set Vendor Specific Command Configuration (ICSVSCC).
    pub icsvscc: u8,
    /// Namespace Write Protection Capabilities (NWPC).
    pub nwpc: u8,
    /// Atomic Compare & Write Unit (ACWU), logical blocks, 0's based.
    pub acwu: U16,
    /// Optional Copy Formats Supported (OCFS): bit n = Copy format n.
    pub ocfs: U16,
    /// SGL Support (SGLS): `SGLS_*`.
    pub sgls: U32,
    /// Maximum Number of Allowed Namespaces (MNAN).
    pub mnan: U32,
    /// Maximum Domain Namespace Attachments (MAXDNA), 128-bit little endian.
    pub maxdna: [u8; 16],
    /// Maximum I/O Controller Namespace Attachments (MAXCNA).
    pub maxcna: U32,
    /// Optimal Aggregated Queue Depth (OAQD) (2.1).
    pub oaqd: U32,
    /// Recommended Host-Initiated Refresh Interval (RHIRI), days (2.1).
    pub rhiri: u8,
    /// Host-Initiated Refresh Time (HIRT), minutes (2.1).
    pub hirt: u8,
    /// Controller Maximum Memory Range Tracking Descriptors (CMMRTD) (2.1).
    pub cmmrtd: U16,
    /// NVM Subsystem Maximum Memory Range Tracking Descriptors (NMMRTD) (2.1).
    pub nmmrtd: U16,
    /// Minimum Memory Range Tracking Granularity (MINMRTG) (2.1).
    pub minmrtg: u8,
    /// Maximum Memory Range Tracking Granularity (MAXMRTG) (2.1).
    pub maxmrtg: u8,
    /// Tracking Attributes (TRATTR) (2.1).
    pub trattr: u8,
    /// Reserved.
    pub rsvd577: u8,
    /// Maximum Controller User Data Migration Queues (MCUDMQ) (2.1).
    pub mcudmq: U16,
    /// Maximum NVM Subsystem User Data Migration Queues (MNSUDMQ) (2.1).
    pub mnsudmq: U16,
    /// Maximum CDQ Memory Ranges (MCMR) (2.1).
    pub mcmr: U16,
    /// NVM Subsystem Maximum CDQ Memory Ranges (NMCMR) (2.1).
    pub nmcmr: U16,
    /// Maximum Controller Data Queue PRP Count (MCDQPC) (2.1).
    pub mcdqpc: U16,
    /// Reserved.
    pub rsvd588: [u8; 180],
    /// NVM Subsystem NVMe Qualified Name (SUBNQN): UTF-8, NUL padded ([`set_nul_padded`]).
    pub subnqn: [u8; 256],
    /// Reserved.
    pub rsvd1024: [u8; 768],

    // ----- NVMe over Fabrics (bytes 1792–2047; NVMe Base 2.1 Figure 312 "Fabrics", NVMe-oF 1.1) -----
    /// I/O Queue Command Capsule Supported Size (IOCCSZ), 16-byte units (64-byte SQE + in-capsule data).
    pub ioccsz: U32,
    /// I/O Queue Response Capsule Supported Size (IORCSZ), 16-byte units.
    pub iorcsz: U32,
    /// In Capsule Data Offset (ICDOFF), 16-byte units (0 for TCP).
    pub icdoff: U16,
    /// Fabrics Controller Attributes (FCATT): [`FCATT_STATIC`].
    pub fcatt: u8,
    /// Maximum SGL Data Block Descriptors (MSDBD); 0 = no limit.
    pub msdbd: u8,
    /// Optional Fabric Commands Support (OFCS): [`OFCS_DISCONNECT`].
    pub ofcs: U16,
    /// Discovery Controller Type (DCTYPE): `DCTYPE_*`.
    pub dctype: u8,
    /// Reserved (TP8028 puts CCRL at byte 1807; not ratified in 2.1).
    pub rsvd1807: [u8; 241],

    // ----- Power state descriptors and vendor specific (bytes 2048–4095) -----
    /// Power State Descriptors 0 to 31 (PSD0–PSD31).
    pub psd: [PowerStateDescriptor; 32],
    /// Vendor Specific (VS).
    pub vs: [u8; 1024],
}
const _: () = assert!(core::mem::size_of::<IdentifyController>() == 4096);
const _: () = assert!(core::mem::offset_of!(IdentifyController, sn) == 4);
const _: () = assert!(core::mem::offset_of!(IdentifyController, mn) == 24);
const _: () = assert!(core::mem::offset_of!(IdentifyController, fr) == 64);
const _: () = assert!(core::mem::offset_of!(IdentifyController, rab) == 72);
const _: () = assert!(core::mem::offset_of!(IdentifyController, cmic) == 76);
const _: () = assert!(core::mem::offset_of!(IdentifyController, mdts) == 77);
const _: () = assert!(core::mem::offset_of!(IdentifyController, cntlid) == 78);
const _: () = assert!(core::mem::offset_of!(IdentifyController, ver) == 80);
const _: () = assert!(core::mem::offset_of!(IdentifyController, rtd3e) == 88);
const _: () = assert!(core::mem::offset_of!(IdentifyController, oaes) == 92);
const _: () = assert!(core::mem::offset_of!(IdentifyController, ctratt) == 96);
const _: () = assert!(core::mem::offset_of!(IdentifyController, rrls) == 100);
const _: () = assert!(core::mem::offset_of!(IdentifyController, nssl) == 104);
const _: () = assert!(core::mem::offset_of!(IdentifyController, cntrltype) == 111);
const _: () = assert!(core::mem::offset_of!(IdentifyController, fguid) == 112);
const _: () = assert!(core::mem::offset_of!(IdentifyController, crdt1) == 128);
const _: () = assert!(core::mem::offset_of!(IdentifyController, crdt2) == 130);
const _: () = assert!(core::mem::offset_of!(IdentifyController, crdt3) == 132);
const _: () = assert!(core::mem::offset_of!(IdentifyController, nvmsr) == 253);
const _: () = assert!(core::mem::offset_of!(IdentifyController, oacs) == 256);
const _: () = assert!(core::mem::offset_of!(IdentifyController, acl) == 258);
const _: () = assert!(core::mem::offset_of!(IdentifyController, aerl) == 259);
const _: () = assert!(core::mem::offset_of!(IdentifyController, lpa) == 261);
const _: () = assert!(core::mem::offset_of!(IdentifyController, elpe) == 262);
const _: () = assert!(core::mem::offset_of!(IdentifyController, wctemp) == 266);
const _: () = assert!(core::mem::offset_of!(IdentifyController, hmpre) == 272);
const _: () = assert!(core::mem::offset_of!(IdentifyController, tnvmcap) == 280);
const _: () = assert!(core::mem::offset_of!(IdentifyController, unvmcap) == 296);
const _: () = assert!(core::mem::offset_of!(IdentifyController, rpmbs) == 312);
const _: () = assert!(core::mem::offset_of!(IdentifyController, kas) == 320);
const _: () = assert!(core::mem::offset_of!(IdentifyController, sanicap) == 328);
const _: () = assert!(core::mem::offset_of!(IdentifyController, anatt) == 342);
const _: () = assert!(core::mem::offset_of!(IdentifyController, anagrpmax) == 344);
const _: () = assert!(core::mem::offset_of!(IdentifyController, pels) == 352);
const _: () = assert!(core::mem::offset_of!(IdentifyController, domainid) == 356);
const _: () = assert!(core::mem::offset_of!(IdentifyController, megcap) == 368);
const _: () = assert!(core::mem::offset_of!(IdentifyController, tmpthha) == 384);
const _: () = assert!(core::mem::offset_of!(IdentifyController, cqt) == 386);
const _: () = assert!(core::mem::offset_of!(IdentifyController, sqes) == 512);
const _: () = assert!(core::mem::offset_of!(IdentifyController, maxcmd) == 514);
const _: () = assert!(core::mem::offset_of!(IdentifyController, nn) == 516);
const _: () = assert!(core::mem::offset_of!(IdentifyController, oncs) == 520);
const _: () = assert!(core::mem::offset_of!(IdentifyController, fuses) == 522);
const _: () = assert!(core::mem::offset_of!(IdentifyController, vwc) == 525);
const _: () = assert!(core::mem::offset_of!(IdentifyController, awun) == 526);
const _: () = assert!(core::mem::offset_of!(IdentifyController, icsvscc) == 530);
const _: () = assert!(core::mem::offset_of!(IdentifyController, ocfs) == 534);
const _: () = assert!(core::mem::offset_of!(IdentifyController, sgls) == 536);
const _: () = assert!(core::mem::offset_of!(IdentifyController, mnan) == 540);
const _: () = assert!(core::mem::offset_of!(IdentifyController, maxdna) == 544);
const _: () = assert!(core::mem::offset_of!(IdentifyController, maxcna) == 560);
const _: () = assert!(core::mem::offset_of!(IdentifyController, oaqd) == 564);
const _: () = assert!(core::mem::offset_of!(IdentifyController, cmmrtd) == 570);
const _: () = assert!(core::mem::offset_of!(IdentifyController, mcdqpc) == 586);
const _: () = assert!(core::mem::offset_of!(IdentifyController, subnqn) == 768);
const _: () = assert!(core::mem::offset_of!(IdentifyController, ioccsz) == 1792);
const _: () = assert!(core::mem::offset_of!(IdentifyController, iorcsz) == 1796);
const _: () = assert!(core::mem::offset_of!(IdentifyController, icdoff) == 1800);
const _: () = assert!(core::mem::offset_of!(IdentifyController, fcatt) == 1802);
const _: () = assert!(core::mem::offset_of!(IdentifyController, msdbd) == 1803);
const _: () = assert!(core::mem::offset_of!(IdentifyController, ofcs) == 1804);
const _: () = assert!(core::mem::offset_of!(IdentifyController, dctype) == 1806);
const _: () = assert!(core::mem::offset_of!(IdentifyController, psd) == 2048);
const _: () = assert!(core::mem::offset_of!(IdentifyController, vs) == 3072);
/// Signature of holdfast's data in Identify Controller's vendor-specific area (bytes 3072–3075).
pub const HOLDFAST_VS_SIGNATURE: [u8; 4] = *b"HFCU";

impl IdentifyController {
    /// Parse the first 4096 bytes of `b`; `None` if it is shorter.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Self::read_from_prefix(b).ok().map(|(v, _)| v)
    }
    /// Set SN (space padded).
    pub fn set_serial(&mut self, s: &str) {
        set_ascii(&mut self.sn, s);
    }
    /// Set MN (space padded).
    pub fn set_model(&mut self, s: &str) {
        set_ascii(&mut self.mn, s);
    }
    /// Set FR (space padded).
    pub fn set_firmware_rev(&mut self, s: &str) {
        set_ascii(&mut self.fr, s);
    }
    /// Set SUBNQN (NUL padded).
    pub fn set_subnqn(&mut self, nqn: &str) {
        set_nul_padded(&mut self.subnqn, nqn);
    }
    /// SN without padding.
    pub fn serial(&self) -> String {
        get_ascii(&self.sn)
    }
    /// MN without padding.
    pub fn model(&self) -> String {
        get_ascii(&self.mn)
    }
    /// FR without padding.
    pub fn firmware_rev(&self) -> String {
        get_ascii(&self.fr)
    }
    /// SUBNQN without padding.
    pub fn subsystem_nqn(&self) -> String {
        get_nul_padded(&self.subnqn)
    }
    /// Put holdfast's controller uniquifier in the vendor-specific area: the signature [`HOLDFAST_VS_SIGNATURE`]
    /// at byte 3072, the value (little endian) at 3076–3083. A value that differs for every controller a target
    /// ever creates (random), so that a host can name one association even after its CNTLID was given to
    /// another ([`crate::opcode::admin::HOLDFAST_FENCE_ASSOCIATION`]).
    pub fn set_holdfast_uniquifier(&mut self, v: u64) {
        self.vs[..4].copy_from_slice(&HOLDFAST_VS_SIGNATURE);
        self.vs[4..12].copy_from_slice(&v.to_le_bytes());
    }
    /// holdfast's controller uniquifier, if the vendor-specific area carries one ([`Self::set_holdfast_uniquifier`]).
    pub fn holdfast_uniquifier(&self) -> Option<u64> {
        let v = u64::from_le_bytes(self.vs[4..12].try_into().ok()?);
        (self.vs[..4] == HOLDFAST_VS_SIGNATURE && v != 0).then_some(v)
    }
}

// ---------------------------------------------------------------------------------------------------------
// I/O Command Set specific Identify Controller, NVM command set (CNS 06h, CSI 00h)
// ---------------------------------------------------------------------------------------------------------

/// I/O Command Set Specific Identify Controller data structure for the NVM command set, 4096 bytes (NVM
/// Command Set Specification, figure "I/O Command Set Specific Identify Controller Data Structure for the NVM
/// Command Set"). The limits are powers of two in units of CAP.MPSMIN (VSL, WZSL,
/// WUSL) or logical blocks (DMRSL); 0 = no limit beyond MDTS.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct IdentifyControllerNvm {
    /// Verify Size Limit (VSL).
    pub vsl: u8,
    /// Write Zeroes Size Limit (WZSL).
    pub wzsl: u8,
    /// Write Uncorrectable Size Limit (WUSL).
    pub wusl: u8,
    /// Dataset Management Ranges Limit (DMRL): most ranges in one Dataset Management command.
    pub dmrl: u8,
    /// Dataset Management Range Size Limit (DMRSL): most logical blocks in one range.
    pub dmrsl: U32,
    /// Dataset Management Size Limit (DMSL): most logical blocks in one command.
    pub dmsl: U64,
    /// Reserved.
    pub rsvd16: [u8; 4080],
}
const _: () = assert!(core::mem::size_of::<IdentifyControllerNvm>() == 4096);
const _: () = assert!(core::mem::offset_of!(IdentifyControllerNvm, dmrl) == 3);
const _: () = assert!(core::mem::offset_of!(IdentifyControllerNvm, dmrsl) == 4);
const _: () = assert!(core::mem::offset_of!(IdentifyControllerNvm, dmsl) == 8);

impl IdentifyControllerNvm {
    /// Parse the first 4096 bytes of `b`; `None` if it is shorter.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Self::read_from_prefix(b).ok().map(|(v, _)| v)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Identify Namespace (CNS 00h) and the I/O command set independent one (CNS 08h)
// ---------------------------------------------------------------------------------------------------------

/// LBA Format data structure, 4 bytes (NVM Command Set Specification, figure "LBA Format Data Structure, NVM
/// Command Set Specific").
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct LbaFormat {
    /// Metadata Size (MS), bytes per logical block.
    pub ms: U16,
    /// LBA Data Size (LBADS): log2 of the block size (9 = 512 B, 12 = 4 KiB); below 9 = not supported.
    pub lbads: u8,
    /// Relative Performance (RP), bits 1:0: 0 best, 1 better, 2 good, 3 degraded.
    pub rp: u8,
}
const _: () = assert!(core::mem::size_of::<LbaFormat>() == 4);
const _: () = assert!(core::mem::offset_of!(LbaFormat, lbads) == 2);

impl LbaFormat {
    /// The format of `block_size` bytes with no metadata; `None` unless it is a power of two from 512 B
    /// to 2 GiB.
    pub fn for_block_size(block_size: u32) -> Option<LbaFormat> {
        if !block_size.is_power_of_two() || block_size < 512 {
            return None;
        }
        Some(LbaFormat { ms: U16::new(0), lbads: block_size.trailing_zeros() as u8, rp: 0 })
    }
    /// The block size in bytes; `None` for an unused or invalid format (LBADS outside 9..=31).
    pub fn block_size(&self) -> Option<u32> {
        (9..=31).contains(&self.lbads).then(|| 1u32 << self.lbads)
    }
}

/// Identify Namespace data structure for the NVM command set, 4096 bytes (NVM Command Set Specification 1.0,
/// figure "Identify Namespace Data Structure, NVM Command Set"; fields marked (1.1) are from NVM Command Set
/// 1.1).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct IdentifyNamespace {
    /// Namespace Size (NSZE), logical blocks. 0 in an inactive namespace's all-zero structure.
    pub nsze: U64,
    /// Namespace Capacity (NCAP), logical blocks.
    pub ncap: U64,
    /// Namespace Utilization (NUSE), logical blocks.
    pub nuse: U64,
    /// Namespace Features (NSFEAT): `NSFEAT_*`.
    pub nsfeat: u8,
    /// Number of LBA Formats (NLBAF), 0's based.
    pub nlbaf: u8,
    /// Formatted LBA Size (FLBAS): format index bits 3:0 (low) and 6:5 (high), bit 4 metadata at the end of
    /// the data (extended LBA).
    pub flbas: u8,
    /// Metadata Capabilities (MC).
    pub mc: u8,
    /// End-to-end Data Protection Capabilities (DPC).
    pub dpc: u8,
    /// End-to-end Data Protection Type Settings (DPS).
    pub dps: u8,
    /// Namespace Multi-path I/O and Namespace Sharing Capabilities (NMIC): [`NMIC_SHARED`].
    pub nmic: u8,
    /// Reservation Capabilities (RESCAP).
    pub rescap: u8,
    /// Format Progress Indicator (FPI).
    pub fpi: u8,
    /// Deallocate Logical Block Features (DLFEAT): `DLFEAT_*`.
    pub dlfeat: u8,
    /// Namespace Atomic Write Unit Normal (NAWUN), 0's based.
    pub nawun: U16,
    /// Namespace Atomic Write Unit Power Fail (NAWUPF), 0's based.
    pub nawupf: U16,
    /// Namespace Atomic Compare & Write Unit (NACWU), 0's based.
    pub nacwu: U16,
    /// Namespace Atomic Boundary Size Normal (NABSN), 0's based.
    pub nabsn: U16,
    /// Namespace Atomic Boundary Offset (NABO).
    pub nabo: U16,
    /// Namespace Atomic Boundary Size Power Fail (NABSPF), 0's based.
    pub nabspf: U16,
    /// Namespace Optimal I/O Boundary (NOIOB), logical blocks.
    pub noiob: U16,
    /// NVM Capacity (NVMCAP), bytes, 128-bit little endian.
    pub nvmcap: [u8; 16],
    /// Namespace Preferred Write Granularity (NPWG), 0's based.
    pub npwg: U16,
    /// Namespace Preferred Write Alignment (NPWA), 0's based.
    pub npwa: U16,
    /// Namespace Preferred Deallocate Granularity (NPDG), 0's based.
    pub npdg: U16,
    /// Namespace Preferred Deallocate Alignment (NPDA), 0's based.
    pub npda: U16,
    /// Namespace Optimal Write Size (NOWS), 0's based.
    pub nows: U16,
    /// Maximum Single Source Range Length (MSSRL), Copy command.
    pub mssrl: U16,
    /// Maximum Copy Length (MCL).
    pub mcl: U32,
    /// Maximum Source Range Count (MSRC), 0's based.
    pub msrc: u8,
    /// Key Per I/O Status (KPIOS) (1.1).
    pub kpios: u8,
    /// Number of Unique Capability LBA Formats (NULBAF) (1.1).
    pub nulbaf: u8,
    /// Reserved.
    pub rsvd83: u8,
    /// Key Per I/O Data Access Alignment and Granularity (KPIODAAG) (1.1).
    pub kpiodaag: U32,
    /// Reserved.
    pub rsvd88: [u8; 4],
    /// ANA Group Identifier (ANAGRPID).
    pub anagrpid: U32,
    /// Reserved.
    pub rsvd96: [u8; 3],
    /// Namespace Attributes (NSATTR): [`NSATTR_WRITE_PROTECTED`].
    pub nsattr: u8,
    /// NVM Set Identifier (NVMSETID).
    pub nvmsetid: U16,
    /// Endurance Group Identifier (ENDGID).
    pub endgid: U16,
    /// Namespace Globally Unique Identifier (NGUID); all zero = not reported.
    pub nguid: [u8; 16],
    /// IEEE Extended Unique Identifier (EUI64); all zero = not reported.
    pub eui64: [u8; 8],
    /// LBA Format 0 to 63 support (LBAF0–LBAF63).
    pub lbaf: [LbaFormat; 64],
    /// Vendor Specific (VS), bytes 4095:384 (Linux `struct nvme_id_ns`: `vs[3712]` after `lbaf[64]`).
    pub vs: [u8; 3712],
}
const _: () = assert!(core::mem::size_of::<IdentifyNamespace>() == 4096);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, ncap) == 8);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, nuse) == 16);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, nsfeat) == 24);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, nlbaf) == 25);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, flbas) == 26);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, nmic) == 30);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, dlfeat) == 33);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, nawun) == 34);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, noiob) == 46);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, nvmcap) == 48);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, npwg) == 64);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, mcl) == 76);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, msrc) == 80);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, kpiodaag) == 84);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, anagrpid) == 92);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, nsattr) == 99);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, nvmsetid) == 100);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, endgid) == 102);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, nguid) == 104);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, eui64) == 120);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, lbaf) == 128);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, vs) == 384);

impl IdentifyNamespace {
    /// Parse the first 4096 bytes of `b`; `None` if it is shorter.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Self::read_from_prefix(b).ok().map(|(v, _)| v)
    }

    /// A namespace of `blocks` logical blocks of `block_size` bytes with exactly one LBA format (NLBAF 0,
    /// FLBAS 0), fully provisioned (NSZE = NCAP = NUSE) and NVMCAP filled in; `None` for an invalid block
    /// size (see [`LbaFormat::for_block_size`]).
    pub fn with_single_format(blocks: u64, block_size: u32) -> Option<Self> {
        let mut n = Self::new_zeroed();
        n.lbaf[0] = LbaFormat::for_block_size(block_size)?;
        n.nsze.set(blocks);
        n.ncap.set(blocks);
        n.nuse.set(blocks);
        n.nvmcap = (u128::from(blocks) * u128::from(block_size)).to_le_bytes();
        Some(n)
    }

    /// Index of the formatted LBA format: FLBAS bits 3:0, plus bits 6:5 as bits 5:4 of the index.
    pub fn formatted_lba_index(&self) -> usize {
        (self.flbas & 0xF) as usize | (((self.flbas >> 5) & 0x3) as usize) << 4
    }

    /// The formatted LBA format; `None` if FLBAS points past NLBAF.
    pub fn lba_format(&self) -> Option<LbaFormat> {
        let idx = self.formatted_lba_index();
        if idx > self.nlbaf as usize {
            return None;
        }
        self.lbaf.get(idx).copied()
    }

    /// Block size of the formatted LBA format; `None` if it is unusable.
    pub fn block_size(&self) -> Option<u32> {
        self.lbaf.get(self.formatted_lba_index())?.block_size()
    }

    /// Index (among 0..=NLBAF) of the format with `block_size` bytes and no metadata, if there is one: what a
    /// host looks for to pick a block size.
    pub fn find_lba_format(&self, block_size: u32) -> Option<usize> {
        let want = LbaFormat::for_block_size(block_size)?;
        self.lbaf.iter().take(self.nlbaf as usize + 1).position(|f| f.lbads == want.lbads && f.ms.get() == 0)
    }
}

/// I/O Command Set Independent Identify Namespace data structure (CNS 08h), 4096 bytes (NVMe Base 2.1
/// Figure 319; NVMe Base 2.0 Figure 280). Bytes after NSTAT (key per I/O fields in 2.1) are left reserved.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct IdentifyNamespaceIndependent {
    /// Common Namespace Features (NSFEAT).
    pub nsfeat: u8,
    /// Namespace Multi-path I/O and Namespace Sharing Capabilities (NMIC).
    pub nmic: u8,
    /// Reservation Capabilities (RESCAP).
    pub rescap: u8,
    /// Format Progress Indicator (FPI).
    pub fpi: u8,
    /// ANA Group Identifier (ANAGRPID).
    pub anagrpid: U32,
    /// Namespace Attributes (NSATTR).
    pub nsattr: u8,
    /// Reserved.
    pub rsvd9: u8,
    /// NVM Set Identifier (NVMSETID).
    pub nvmsetid: U16,
    /// Endurance Group Identifier (ENDGID).
    pub endgid: U16,
    /// Namespace Status (NSTAT): [`NSTAT_READY`] (a Linux host waits for it).
    pub nstat: u8,
    /// Reserved.
    pub rsvd15: [u8; 4081],
}
const _: () = assert!(core::mem::size_of::<IdentifyNamespaceIndependent>() == 4096);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespaceIndependent, anagrpid) == 4);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespaceIndependent, nsattr) == 8);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespaceIndependent, nvmsetid) == 10);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespaceIndependent, nstat) == 14);

impl IdentifyNamespaceIndependent {
    /// Parse the first 4096 bytes of `b`; `None` if it is shorter.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Self::read_from_prefix(b).ok().map(|(v, _)| v)
    }
}

// ---------------------------------------------------------------------------------------------------------
// Namespace Identification Descriptor list (CNS 03h)
// ---------------------------------------------------------------------------------------------------------

/// NIDT 1: IEEE EUI-64, 8 bytes.
pub const NIDT_EUI64: u8 = 1;
/// NIDT 2: NGUID, 16 bytes.
pub const NIDT_NGUID: u8 = 2;
/// NIDT 3: UUID, 16 bytes.
pub const NIDT_UUID: u8 = 3;
/// NIDT 4: Command Set Identifier, 1 byte.
pub const NIDT_CSI: u8 = 4;

/// One Namespace Identification Descriptor (NVMe Base 2.1 Figure 315; NVMe Base 2.0 Figure 277).
/// On the wire: NIDT (byte 0), NIDL (byte 1), 2 reserved bytes, then NIDL bytes of NID.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsDescriptor {
    /// NIDT 1: IEEE Extended Unique Identifier.
    Eui64([u8; 8]),
    /// NIDT 2: Namespace Globally Unique Identifier.
    Nguid([u8; 16]),
    /// NIDT 3: Namespace UUID (RFC 4122 byte order).
    Uuid([u8; 16]),
    /// NIDT 4: Command Set Identifier (0 = NVM).
    Csi(u8),
}

impl NsDescriptor {
    /// NIDT and NID bytes.
    fn parts(&self) -> (u8, &[u8]) {
        match self {
            NsDescriptor::Eui64(v) => (NIDT_EUI64, v),
            NsDescriptor::Nguid(v) => (NIDT_NGUID, v),
            NsDescriptor::Uuid(v) => (NIDT_UUID, v),
            NsDescriptor::Csi(v) => (NIDT_CSI, core::slice::from_ref(v)),
        }
    }

    /// Size on the wire: the 4-byte header plus NIDL.
    pub fn encoded_len(&self) -> usize {
        4 + self.parts().1.len()
    }
}

/// Encode a descriptor list into the 4096-byte CNS 03h data, in the given order, zero terminated. Descriptors
/// that no longer fit are dropped (one descriptor of each kind takes 57 bytes, so this never happens in
/// practice).
pub fn ns_descriptor_list(descs: &[NsDescriptor]) -> [u8; 4096] {
    let mut out = [0u8; 4096];
    let mut off = 0;
    for d in descs {
        let (nidt, id) = d.parts();
        let Some(dst) = out.get_mut(off..off + 4 + id.len()) else { break };
        dst[0] = nidt;
        dst[1] = id.len() as u8;
        dst[4..].copy_from_slice(id);
        off += 4 + id.len();
    }
    out
}

/// Decode a descriptor list. Stops at NIDL 0 (the end of the list, NVMe Base 2.1 §5.1.13, CNS 03h), at NIDT 0,
/// or where a descriptor would run past the data; skips descriptors of an unknown type or with the wrong NIDL
/// for their type.
pub fn parse_ns_descriptor_list(b: &[u8]) -> Vec<NsDescriptor> {
    let mut v = Vec::new();
    let mut rest = b;
    while let [nidt, nidl, _, _, tail @ ..] = rest {
        let (nidt, nidl) = (*nidt, *nidl as usize);
        if nidt == 0 || nidl == 0 || nidl > tail.len() {
            break;
        }
        let (id, next) = tail.split_at(nidl);
        let d = match nidt {
            NIDT_EUI64 => id.try_into().ok().map(NsDescriptor::Eui64),
            NIDT_NGUID => id.try_into().ok().map(NsDescriptor::Nguid),
            NIDT_UUID => id.try_into().ok().map(NsDescriptor::Uuid),
            NIDT_CSI => <[u8; 1]>::try_from(id).ok().map(|[c]| NsDescriptor::Csi(c)),
            _ => None,
        };
        v.extend(d);
        rest = next;
    }
    v
}

// ---------------------------------------------------------------------------------------------------------
// Active Namespace ID list (CNS 02h / 07h)
// ---------------------------------------------------------------------------------------------------------

/// Most NSIDs one active namespace list holds (4096 bytes of u32).
pub const NS_LIST_MAX: usize = 1024;

/// Encode the CNS 02h/07h data for a command whose NSID is `start`: the active NSIDs greater than `start`, in
/// ascending order, at most [`NS_LIST_MAX`], zero terminated (NVMe Base 2.1 §5.1.13, CNS 02h). `nsids` may be
/// unsorted and contain duplicates; 0 and the broadcast values FFFFFFFEh/FFFFFFFFh are never listed.
pub fn active_ns_list_after(start: u32, nsids: &[u32]) -> [u8; 4096] {
    let mut ids: Vec<u32> = nsids.iter().copied().filter(|&n| n > start && n < 0xFFFF_FFFE).collect();
    ids.sort_unstable();
    ids.dedup();
    let mut out = [0u8; 4096];
    for (dst, n) in out.chunks_exact_mut(4).zip(ids) {
        dst.copy_from_slice(&n.to_le_bytes());
    }
    out
}

/// Encode an active namespace list of `nsids` (those greater than 0): [`active_ns_list_after`] with start 0.
pub fn active_ns_list(nsids: &[u32]) -> [u8; 4096] {
    active_ns_list_after(0, nsids)
}

/// Decode an active namespace list: the NSIDs before the first zero entry (a trailing partial entry is
/// ignored).
pub fn parse_active_ns_list(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).take_while(|&n| n != 0).collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use proptest::prelude::*;

    /// Rebuild a page captured from a real target out of its non-zero runs `(offset, bytes)`.
    pub(crate) fn page(len: usize, runs: &[(usize, &[u8])]) -> Vec<u8> {
        let mut v = vec![0u8; len];
        for (off, b) in runs {
            v[*off..*off + b.len()].copy_from_slice(b);
        }
        v
    }

    /// Identify Controller a Linux 6.1 nvmet I/O controller returned (captures/linux-host-linux-target.pcap,
    /// admin queue, CNS 01h), as non-zero runs.
    pub(crate) fn linux_id_ctrl() -> Vec<u8> {
        page(
            4096,
            &[
                (4, b"e52dd407fc833827dd68"),
                (24, b"Linux                                   "),
                (64, b"6.1.0-56"),
                (72, &[0x06, 0x00, 0x00, 0x00, 0x0b, 0x00, 0x01, 0x00, 0x00, 0x03, 0x01]),
                (93, &[0x09, 0x00, 0x00, 0x41]),
                (111, &[0x01]),
                (258, &[0x03, 0x03, 0x03, 0x07, 0x7f]),
                (320, &[0x0a]),
                (342, &[0x0a, 0x1f, 0x80, 0x00, 0x00, 0x00, 0x80]),
                (512, &[0x66, 0x44, 0x00, 0x04, 0x00, 0x04, 0x00, 0x00, 0x0c]),
                (525, &[0x01]),
                (531, &[0x01]),
                (536, &[0x01, 0x00, 0x10, 0x00, 0x00, 0x04]),
                (768, b"nqn.2014-08.org.kernel:interop"),
                (1792, &[0x04, 0x04, 0x00, 0x00, 0x01]),
                (1803, &[0x01]),
                (2048, &[0xc4, 0x09, 0x00, 0x00, 0x10, 0x00, 0x00, 0x00, 0x04]),
            ],
        )
    }

    #[test]
    fn controller_golden_offsets() {
        // Offsets from NVMe Base 2.1 Figure 312 (bytes 1792–2047: its Fabrics part, as in NVMe-oF 1.1).
        let mut c = IdentifyController::new_zeroed();
        c.set_serial("SN1");
        c.set_model("holdfast");
        c.set_firmware_rev("hf0.1.0");
        c.rab = 6;
        c.cmic = CMIC_MULTI_CTRL;
        c.mdts = 5;
        c.cntlid.set(0x1234);
        c.ver.set(0x0002_0000);
        c.oaes.set(OAES_NS_ATTR | OAES_DISCOVERY_CHANGE);
        c.ctratt.set(CTRATT_HOST_ID_128 | CTRATT_TBKAS);
        c.cntrltype = CNTRLTYPE_IO;
        c.crdt1.set(1);
        c.crdt2.set(10);
        c.crdt3.set(100);
        c.oacs.set(OACS_NS_MGMT);
        c.lpa = LPA_CMD_EFFECTS | LPA_EXTENDED_DATA;
        c.kas.set(10);
        c.anatt = 10;
        c.cqt.set(5000);
        c.sqes = 0x66;
        c.cqes = 0x44;
        c.maxcmd.set(128);
        c.nn.set(1024);
        c.oncs.set(ONCS_DSM | ONCS_WRITE_ZEROES);
        c.vwc = VWC_PRESENT | VWC_FLUSH_BROADCAST;
        c.sgls.set(SGLS_SUPPORTED | SGLS_OFFSET);
        c.set_subnqn("nqn.2024-01.io.holdfast:a");
        c.ioccsz.set(1028);
        c.iorcsz.set(1);
        c.msdbd = 1;
        c.ofcs.set(OFCS_DISCONNECT);
        c.psd[0].mp.set(2500);
        c.psd[1].enlat.set(16);
        let b = c.as_bytes();
        assert_eq!(&b[4..24], b"SN1                 ");
        assert_eq!(&b[24..32], b"holdfast");
        assert_eq!(b[63], b' ');
        assert_eq!(&b[64..72], b"hf0.1.0 ");
        assert_eq!(&b[72..80], &[6, 0, 0, 0, CMIC_MULTI_CTRL, 5, 0x34, 0x12]);
        assert_eq!(&b[80..84], &[0, 0, 2, 0], "VER 2.0.0");
        assert_eq!(&b[92..100], &[0, 1, 0, 0x80, 0x41, 0, 0, 0], "OAES bits 8 and 31, CTRATT bits 0 and 6");
        assert_eq!(b[111], 1);
        assert_eq!(&b[128..134], &[1, 0, 10, 0, 100, 0]);
        assert_eq!(&b[256..258], &[OACS_NS_MGMT as u8, 0]);
        assert_eq!(b[261], 0x06);
        assert_eq!(&b[320..322], &[10, 0]);
        assert_eq!(b[342], 10);
        assert_eq!(&b[386..388], &5000u16.to_le_bytes());
        assert_eq!(&b[512..520], &[0x66, 0x44, 128, 0, 0, 4, 0, 0]);
        assert_eq!(&b[520..522], &[0x0c, 0]);
        assert_eq!(b[525], 0x07);
        assert_eq!(&b[536..540], &[0x01, 0, 0x10, 0]);
        assert_eq!(&b[768..794], b"nqn.2024-01.io.holdfast:a\0");
        assert_eq!(&b[1792..1808], &[4, 4, 0, 0, 1, 0, 0, 0, 0, 0, 0, 1, 1, 0, 0, 0]);
        assert_eq!(&b[2048..2050], &2500u16.to_le_bytes());
        assert_eq!(&b[2048 + 32 + 4..2048 + 32 + 8], &16u32.to_le_bytes(), "PSD1 ENLAT");
        assert_eq!(IdentifyController::from_slice(b), Some(c));
        assert_eq!(c.serial(), "SN1");
        assert_eq!(c.subsystem_nqn(), "nqn.2024-01.io.holdfast:a");
    }

    #[test]
    fn controller_from_linux_nvmet() {
        let c = IdentifyController::from_slice(&linux_id_ctrl()).expect("4096 bytes");
        assert_eq!(c.serial(), "e52dd407fc833827dd68");
        assert_eq!(c.model(), "Linux");
        assert_eq!(c.firmware_rev(), "6.1.0-56");
        assert_eq!(c.rab, 6);
        assert_eq!(c.cmic, CMIC_MULTI_PORT | CMIC_MULTI_CTRL | CMIC_ANA);
        assert_eq!(c.mdts, 0);
        assert_eq!(c.cntlid.get(), 1);
        assert_eq!(c.ver.get(), 0x0001_0300, "NVMe 1.3");
        assert_eq!(c.oaes.get(), OAES_NS_ATTR | OAES_ANA_CHANGE);
        assert_eq!(c.ctratt.get(), CTRATT_HOST_ID_128 | CTRATT_TBKAS);
        assert_eq!(c.cntrltype, CNTRLTYPE_IO);
        assert_eq!((c.acl, c.aerl, c.frmw, c.elpe), (3, 3, 3, 0x7f));
        assert_eq!(c.lpa, LPA_SMART_PER_NS | LPA_CMD_EFFECTS | LPA_EXTENDED_DATA);
        assert_eq!(c.kas.get(), 10, "NVMET_KAS: 1 s granularity");
        assert_eq!((c.anatt, c.anacap, c.anagrpmax.get(), c.nanagrpid.get()), (10, 0x1f, 128, 128));
        assert_eq!((c.sqes, c.cqes, c.maxcmd.get(), c.nn.get()), (0x66, 0x44, 1024, 1024));
        assert_eq!(c.oncs.get(), ONCS_DSM | ONCS_WRITE_ZEROES);
        assert_eq!(c.vwc, VWC_PRESENT);
        assert_eq!(c.nwpc, 1);
        assert_eq!(c.sgls.get(), SGLS_SUPPORTED | SGLS_OFFSET);
        assert_eq!(c.mnan.get(), 1024);
        assert_eq!(c.subsystem_nqn(), "nqn.2014-08.org.kernel:interop");
        assert_eq!(c.ioccsz.get(), 1028, "64-byte SQE + 16 KiB in-capsule data, in 16-byte units");
        assert_eq!((c.iorcsz.get(), c.icdoff.get(), c.msdbd, c.ofcs.get()), (1, 0, 1, 0));
        assert_eq!((c.psd[0].mp.get(), c.psd[0].enlat.get(), c.psd[0].exlat.get()), (2500, 16, 4));
        assert_eq!(c.cqt.get(), 0);
        assert_eq!(c.as_bytes(), &linux_id_ctrl()[..]);
    }

    #[test]
    fn discovery_controller_from_linux_nvmet() {
        // The discovery controller's Identify Controller from the same capture.
        let b = page(
            4096,
            &[
                (4, b"332032c58e072f08074aLinux                                   6.1.0-56"),
                (78, &[0x01, 0x00, 0x00, 0x03, 0x01]),
                (95, &[0x80]),
                (111, &[0x02]),
                (261, &[0x04]),
                (515, &[0x04]),
                (536, &[0x01, 0x00, 0x10]),
                (768, b"nqn.2014-08.org.nvmexpress.discovery"),
            ],
        );
        let c = IdentifyController::from_slice(&b).expect("4096 bytes");
        assert_eq!(c.cntrltype, CNTRLTYPE_DISCOVERY);
        assert_eq!(c.oaes.get(), OAES_DISCOVERY_CHANGE);
        assert_eq!(c.lpa, LPA_EXTENDED_DATA);
        assert_eq!(c.kas.get(), 0);
        assert_eq!(c.subsystem_nqn(), "nqn.2014-08.org.nvmexpress.discovery");
    }

    #[test]
    fn short_input_is_none() {
        assert_eq!(IdentifyController::from_slice(&[0u8; 4095]), None);
        assert_eq!(IdentifyNamespace::from_slice(&[]), None);
        assert!(IdentifyControllerNvm::from_slice(&[0u8; 4096]).is_some());
        assert!(IdentifyNamespaceIndependent::from_slice(&[0u8; 5000]).is_some());
    }

    #[test]
    fn strings() {
        let mut f = [0u8; 8];
        set_ascii(&mut f, "abcdefghij");
        assert_eq!(&f, b"abcdefgh");
        set_ascii(&mut f, "é1");
        assert_eq!(&f, b"??1     ", "non-ASCII bytes are replaced");
        assert_eq!(get_ascii(b"ab  \0\0"), "ab");
        let mut n = [0xFFu8; 4];
        set_nul_padded(&mut n, "aé");
        assert_eq!(&n, &[b'a', 0xC3, 0xA9, 0]);
        set_nul_padded(&mut n, "abcé");
        assert_eq!(&n, b"abc\0", "cut at a character boundary");
        assert_eq!(get_nul_padded(b"4420    "), "4420");
        assert_eq!(get_nul_padded(b"4420\0xyz"), "4420");
        assert_eq!(get_nul_padded(&[0xFF, 0]), "\u{FFFD}");
    }

    #[test]
    fn nvm_controller_golden() {
        // NVM Command Set, "I/O Command Set Specific Identify Controller Data Structure for the NVM Command Set".
        let mut c = IdentifyControllerNvm::new_zeroed();
        c.wzsl = 7;
        c.dmrl = 255;
        c.dmrsl.set(0x0001_0000);
        c.dmsl.set(0x0000_0001_0000_0000);
        let b = c.as_bytes();
        assert_eq!(&b[..16], &[0, 7, 0, 255, 0, 0, 1, 0, 0, 0, 0, 0, 1, 0, 0, 0]);
        // nvmet 6.1 answers CNS 06h with all zeroes (no limits).
        assert_eq!(IdentifyControllerNvm::from_slice(&[0u8; 4096]), Some(IdentifyControllerNvm::new_zeroed()));
    }

    #[test]
    fn namespace_golden() {
        // NVM Command Set, "Identify Namespace Data Structure, NVM Command Set" and "LBA Format Data Structure".
        let mut n = IdentifyNamespace::with_single_format(0x8000, 4096).expect("valid block size");
        n.nmic = NMIC_SHARED;
        n.dlfeat = DLFEAT_READS_ZEROES | DLFEAT_WRITE_ZEROES_DEAC;
        n.anagrpid.set(1);
        n.nguid = [0x11; 16];
        n.eui64 = [0x22; 8];
        let b = n.as_bytes();
        assert_eq!(&b[0..8], &0x8000u64.to_le_bytes());
        assert_eq!(&b[8..16], &0x8000u64.to_le_bytes());
        assert_eq!(&b[16..24], &0x8000u64.to_le_bytes());
        assert_eq!(&b[24..34], &[0, 0, 0, 0, 0, 0, 1, 0, 0, 0x09]);
        assert_eq!(&b[48..64], &(0x8000u128 * 4096).to_le_bytes());
        assert_eq!(&b[92..96], &[1, 0, 0, 0]);
        assert_eq!(&b[104..120], &[0x11; 16]);
        assert_eq!(&b[120..128], &[0x22; 8]);
        assert_eq!(&b[128..132], &[0, 0, 12, 0], "LBAF0: MS 0, LBADS 12");
        assert_eq!(n.block_size(), Some(4096));
        assert_eq!(n.lba_format().map(|f| f.lbads), Some(12));
        assert_eq!(n.find_lba_format(4096), Some(0));
        assert_eq!(n.find_lba_format(512), None);
        assert_eq!(IdentifyNamespace::with_single_format(1, 1000), None);
        assert_eq!(IdentifyNamespace::with_single_format(1, 256), None);
    }

    #[test]
    fn namespace_vendor_specific_area_is_bytes_384_to_4095() {
        // NVM Command Set, "Identify Namespace Data Structure, NVM Command Set": bytes 4095:384 are Vendor
        // Specific, right after LBAF63 (bytes 383:380). Linux `struct nvme_id_ns` ends `lbaf[64]; vs[3712];`
        // and Wireshark's packet-nvme.c dissects `nvme.cmd.identify.ns.vs` from byte 384 to the end.
        assert_eq!(core::mem::offset_of!(IdentifyNamespace, vs), 384);
        let mut n = IdentifyNamespace::new_zeroed();
        n.vs[0] = 0xA5;
        n.vs[n.vs.len() - 1] = 0x5A;
        let b = n.as_bytes();
        assert_eq!((b[384], b[4095]), (0xA5, 0x5A));
        assert_eq!(n.vs.len(), 4096 - 384);
    }

    #[test]
    fn namespace_lba_format_index_uses_high_bits() {
        let mut n = IdentifyNamespace::new_zeroed();
        n.nlbaf = 20;
        n.lbaf[17] = LbaFormat::for_block_size(8192).expect("valid");
        n.flbas = 0x21; // bits 3:0 = 1, bits 6:5 = 01b: format 17
        assert_eq!(n.formatted_lba_index(), 17);
        assert_eq!(n.block_size(), Some(8192));
        n.nlbaf = 3;
        assert_eq!(n.lba_format(), None, "FLBAS beyond NLBAF");
        n.flbas = 0x0F;
        n.lbaf[15].lbads = 40;
        assert_eq!(n.block_size(), None, "LBADS out of range");
    }

    #[test]
    fn namespace_from_linux_nvmet() {
        // Identify Namespace for NSID 1 from captures/linux-host-linux-target.pcap: a 16 MiB file of 512-byte
        // blocks, shared, ANA group 1, no NGUID/EUI-64 (nvmet reports the UUID in the descriptor list only).
        let b = page(
            4096,
            &[(1, &[0x80]), (9, &[0x80]), (17, &[0x80]), (24, &[0x12]), (30, &[0x01]), (92, &[0x01]), (130, &[9])],
        );
        let n = IdentifyNamespace::from_slice(&b).expect("4096 bytes");
        assert_eq!((n.nsze.get(), n.ncap.get(), n.nuse.get()), (0x8000, 0x8000, 0x8000));
        assert_eq!(n.nsfeat, NSFEAT_NS_ATOMICS | NSFEAT_OPTPERF);
        assert_eq!((n.nlbaf, n.flbas), (0, 0));
        assert_eq!(n.nmic, NMIC_SHARED);
        assert_eq!(n.anagrpid.get(), 1);
        assert_eq!(n.block_size(), Some(512));
        assert_eq!((n.nguid, n.eui64), ([0; 16], [0; 8]));
    }

    #[test]
    fn independent_namespace_golden() {
        // NVMe Base 2.1 Figure 319.
        let mut n = IdentifyNamespaceIndependent::new_zeroed();
        n.nmic = NMIC_SHARED;
        n.anagrpid.set(2);
        n.nstat = NSTAT_READY;
        let b = n.as_bytes();
        assert_eq!(&b[..15], &[0, 1, 0, 0, 2, 0, 0, 0, 0, 0, 0, 0, 0, 0, 1]);
    }

    #[test]
    fn descriptor_list_golden() {
        // NVMe Base 2.1 Figure 315: NIDT, NIDL, 2 reserved bytes, NID.
        let d = [
            NsDescriptor::Eui64([1; 8]),
            NsDescriptor::Nguid([2; 16]),
            NsDescriptor::Uuid([3; 16]),
            NsDescriptor::Csi(0),
        ];
        let b = ns_descriptor_list(&d);
        assert_eq!(&b[..4], &[1, 8, 0, 0]);
        assert_eq!(&b[4..12], &[1; 8]);
        assert_eq!(&b[12..16], &[2, 16, 0, 0]);
        assert_eq!(&b[32..36], &[3, 16, 0, 0]);
        assert_eq!(&b[52..57], &[4, 1, 0, 0, 0]);
        assert!(b[57..].iter().all(|&x| x == 0));
        assert_eq!(d.iter().map(NsDescriptor::encoded_len).sum::<usize>(), 57);
        assert_eq!(parse_ns_descriptor_list(&b), d.to_vec());
    }

    #[test]
    fn descriptor_list_from_linux_nvmet() {
        // CNS 03h for NSID 1 from captures/linux-host-linux-target.pcap: a UUID, then CSI 0.
        let b = page(
            4096,
            &[(
                0,
                &[
                    0x03, 0x10, 0x00, 0x00, 0x5b, 0x51, 0x6e, 0xc0, 0xea, 0x47, 0x4c, 0x96, 0xa6, 0xa0, 0x3b, 0x85,
                    0xc0, 0x21, 0xb1, 0xc4, 0x04, 0x01,
                ],
            )],
        );
        let uuid = [0x5b, 0x51, 0x6e, 0xc0, 0xea, 0x47, 0x4c, 0x96, 0xa6, 0xa0, 0x3b, 0x85, 0xc0, 0x21, 0xb1, 0xc4];
        assert_eq!(parse_ns_descriptor_list(&b), vec![NsDescriptor::Uuid(uuid), NsDescriptor::Csi(0)]);
        assert_eq!(&ns_descriptor_list(&parse_ns_descriptor_list(&b))[..], &b[..]);
    }

    #[test]
    fn descriptor_list_tolerates_junk() {
        // Unknown NIDT 9 and a NGUID with NIDL 8 are skipped; a truncated descriptor ends the list.
        let mut b = vec![9, 2, 0, 0, 0xAA, 0xBB, 2, 8, 0, 0];
        b.extend_from_slice(&[0; 8]);
        b.extend_from_slice(&[4, 1, 0, 0, 2]);
        b.extend_from_slice(&[3, 16, 0, 0, 1, 2]);
        assert_eq!(parse_ns_descriptor_list(&b), vec![NsDescriptor::Csi(2)]);
        assert_eq!(parse_ns_descriptor_list(&[]), vec![]);
        assert_eq!(parse_ns_descriptor_list(&[1, 8, 0]), vec![]);
    }

    #[test]
    fn descriptor_list_ends_at_nidl_zero() {
        // NVMe Base 2.1 §5.1.13, CNS 03h (2.0 §5.17.2.3): "the host should interpret a Namespace Identifier Descriptor
        // Length (NIDL) value of 0h as the end of the list"; Linux nvme_identify_ns_descs() and nvme-cli break
        // on `cur->nidl == 0` whatever NIDT says. A descriptor with NIDL 0 ends the list: nothing after it
        // is a descriptor.
        let mut b = vec![NIDT_UUID, 0, 0, 0];
        b.extend_from_slice(&[NIDT_EUI64, 8, 0, 0]);
        b.extend_from_slice(&[7; 8]);
        assert_eq!(parse_ns_descriptor_list(&b), vec![]);
        let mut b = vec![NIDT_CSI, 1, 0, 0, 0, NIDT_NGUID, 0, 0, 0];
        b.extend_from_slice(&[NIDT_EUI64, 8, 0, 0]);
        b.extend_from_slice(&[7; 8]);
        assert_eq!(parse_ns_descriptor_list(&b), vec![NsDescriptor::Csi(0)]);
    }

    #[test]
    fn active_ns_list_golden() {
        // NVMe Base 2.1 §5.1.13, CNS 02h: NSIDs greater than CDW1.NSID, ascending, zero terminated.
        let b = active_ns_list_after(1, &[7, 1, 0, 3, 3, 0xFFFF_FFFF]);
        assert_eq!(&b[..12], &[3, 0, 0, 0, 7, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(parse_active_ns_list(&b), vec![3, 7]);
        assert_eq!(parse_active_ns_list(&active_ns_list(&[1, 5])), vec![1, 5]);
        // From captures/linux-host-linux-target.pcap: nvmet's list with NSID 1 only.
        assert_eq!(parse_active_ns_list(&page(4096, &[(0, &[1])])), vec![1]);
        let many: Vec<u32> = (1..=2000).collect();
        let b = active_ns_list(&many);
        assert_eq!(parse_active_ns_list(&b), (1..=1024).collect::<Vec<u32>>());
        assert_eq!(parse_active_ns_list(&[5, 0, 0, 0, 6, 0]), vec![5]);
    }

    fn descriptor() -> impl Strategy<Value = NsDescriptor> {
        prop_oneof![
            any::<[u8; 8]>().prop_map(NsDescriptor::Eui64),
            any::<[u8; 16]>().prop_map(NsDescriptor::Nguid),
            any::<[u8; 16]>().prop_map(NsDescriptor::Uuid),
            any::<u8>().prop_map(NsDescriptor::Csi),
        ]
    }

    proptest! {
        #[test]
        fn descriptor_list_round_trip(d in proptest::collection::vec(descriptor(), 0..64)) {
            let b = ns_descriptor_list(&d);
            prop_assert_eq!(parse_ns_descriptor_list(&b), d);
        }

        #[test]
        fn descriptor_parser_never_panics(b in proptest::collection::vec(any::<u8>(), 0..300)) {
            let _ = parse_ns_descriptor_list(&b);
        }

        #[test]
        fn active_ns_list_round_trip(ids in proptest::collection::btree_set(1u32..0xFFFF_FFFE, 0..1100), start in any::<u32>()) {
            let want: Vec<u32> = ids.iter().copied().filter(|&n| n > start).take(NS_LIST_MAX).collect();
            let all: Vec<u32> = ids.into_iter().rev().collect();
            prop_assert_eq!(parse_active_ns_list(&active_ns_list_after(start, &all)), want);
        }
    }
}
