//! Identify data structures (NVMe Base Specification 2.0, §5.17.2; NVM Command Set Specification 1.0,
//! §4.1.5; NVMe over Fabrics 1.1, §4.1 Figure 28 for the fabrics fields at bytes 1792–2047).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// CNS 00h: Identify Namespace (NVM command set).
pub const CNS_NAMESPACE: u8 = 0x00;
/// CNS 01h: Identify Controller.
pub const CNS_CONTROLLER: u8 = 0x01;
/// CNS 02h: Active Namespace ID list.
pub const CNS_ACTIVE_NS_LIST: u8 = 0x02;
/// CNS 03h: Namespace Identification Descriptor list.
pub const CNS_NS_DESC_LIST: u8 = 0x03;
/// CNS 05h: I/O Command Set specific Identify Namespace.
pub const CNS_CSI_NAMESPACE: u8 = 0x05;
/// CNS 06h: I/O Command Set specific Identify Controller.
pub const CNS_CSI_CONTROLLER: u8 = 0x06;
/// CNS 07h: Active Namespace ID list of an I/O Command Set.
pub const CNS_CSI_ACTIVE_NS_LIST: u8 = 0x07;
/// CNS 08h: I/O Command Set independent Identify Namespace.
pub const CNS_CS_INDEPENDENT_NAMESPACE: u8 = 0x08;
/// CNS 1Ch: I/O Command Set data structure.
pub const CNS_IO_COMMAND_SET: u8 = 0x1C;

/// CMIC bit 1: the subsystem may have more than one controller.
pub const CMIC_MULTI_CTRL: u8 = 1 << 1;
/// OAES bit 8: Namespace Attribute Notices.
pub const OAES_NS_ATTR: u32 = 1 << 8;
/// OAES bit 9: Firmware Activation Notices.
pub const OAES_FW_ACTIVATION: u32 = 1 << 9;
/// OAES bit 31: Discovery Log Page Change Notices (discovery controllers).
pub const OAES_DISCOVERY_CHANGE: u32 = 1 << 31;
/// CTRATT bit 0: 128-bit Host Identifier.
pub const CTRATT_HOST_ID_128: u32 = 1 << 0;
/// CTRATT bit 6: Traffic Based Keep Alive.
pub const CTRATT_TBKAS: u32 = 1 << 6;
/// CNTRLTYPE: I/O controller.
pub const CNTRLTYPE_IO: u8 = 1;
/// CNTRLTYPE: discovery controller.
pub const CNTRLTYPE_DISCOVERY: u8 = 2;
/// CNTRLTYPE: administrative controller.
pub const CNTRLTYPE_ADMIN: u8 = 3;
/// LPA bit 0: SMART / Health log per namespace.
pub const LPA_SMART_PER_NS: u8 = 1 << 0;
/// LPA bit 1: Commands Supported and Effects log.
pub const LPA_CMD_EFFECTS: u8 = 1 << 1;
/// LPA bit 2: extended data for Get Log Page (NUMDU, offsets).
pub const LPA_EXTENDED_DATA: u8 = 1 << 2;
/// ONCS bit 0: Compare.
pub const ONCS_COMPARE: u16 = 1 << 0;
/// ONCS bit 2: Dataset Management.
pub const ONCS_DSM: u16 = 1 << 2;
/// ONCS bit 3: Write Zeroes.
pub const ONCS_WRITE_ZEROES: u16 = 1 << 3;
/// ONCS bit 4: Save field of Set Features and Select field of Get Features.
pub const ONCS_SAVE_SELECT: u16 = 1 << 4;
/// VWC bit 0: a volatile write cache is present.
pub const VWC_PRESENT: u8 = 1 << 0;
/// VWC bits 2:1 = 11b: Flush with NSID FFFFFFFFh is supported.
pub const VWC_FLUSH_BROADCAST: u8 = 0x3 << 1;
/// SGLS bits 1:0 = 01b: SGLs supported, no alignment requirement.
pub const SGLS_SUPPORTED: u32 = 1 << 0;
/// SGLS bit 2: Keyed SGL Data Block descriptor (RDMA).
pub const SGLS_KEYED: u32 = 1 << 2;
/// SGLS bit 20: the Offset subtype (in-capsule data) is supported.
pub const SGLS_OFFSET: u32 = 1 << 20;
/// DLFEAT bits 2:0 = 001b: deallocated blocks read as zeroes.
pub const DLFEAT_READS_ZEROES: u8 = 0x1;
/// DLFEAT bit 3: Write Zeroes supports the Deallocate bit.
pub const DLFEAT_WRITE_ZEROES_DEAC: u8 = 1 << 3;

/// A power state descriptor (NVMe Base 2.0 Figure 276).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct PowerStateDescriptor {
    /// Maximum power (centiwatts unless MXPS).
    pub mp: U16,
    /// Reserved.
    pub rsvd2: u8,
    /// MXPS (bit 0), NOPS (bit 1).
    pub flags: u8,
    /// Entry latency, µs.
    pub enlat: U32,
    /// Exit latency, µs.
    pub exlat: U32,
    /// Relative read throughput.
    pub rrt: u8,
    /// Relative read latency.
    pub rrl: u8,
    /// Relative write throughput.
    pub rwt: u8,
    /// Relative write latency.
    pub rwl: u8,
    /// Idle power, active power and reserved bytes.
    pub rest: [u8; 16],
}
const _: () = assert!(core::mem::size_of::<PowerStateDescriptor>() == 32);

/// Identify Controller data structure (NVMe Base 2.0 Figure 275; NVMe-oF 1.1 Figure 28), 4096 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct IdentifyController {
    /// PCI Vendor ID.
    pub vid: U16,
    /// PCI Subsystem Vendor ID.
    pub ssvid: U16,
    /// Serial Number (ASCII, space padded).
    pub sn: [u8; 20],
    /// Model Number (ASCII, space padded).
    pub mn: [u8; 40],
    /// Firmware Revision (ASCII, space padded).
    pub fr: [u8; 8],
    /// Recommended Arbitration Burst.
    pub rab: u8,
    /// IEEE OUI.
    pub ieee: [u8; 3],
    /// Controller Multi-Path I/O and Namespace Sharing Capabilities.
    pub cmic: u8,
    /// Maximum Data Transfer Size (power of two of the minimum page size; 0 = no limit).
    pub mdts: u8,
    /// Controller ID.
    pub cntlid: U16,
    /// Version.
    pub ver: U32,
    /// RTD3 Resume Latency.
    pub rtd3r: U32,
    /// RTD3 Entry Latency.
    pub rtd3e: U32,
    /// Optional Asynchronous Events Supported.
    pub oaes: U32,
    /// Controller Attributes.
    pub ctratt: U32,
    /// Read Recovery Levels Supported.
    pub rrls: U16,
    /// Reserved.
    pub rsvd102: [u8; 9],
    /// Controller Type.
    pub cntrltype: u8,
    /// FRU Globally Unique Identifier.
    pub fguid: [u8; 16],
    /// Command Retry Delay Time 1 (100 ms units).
    pub crdt1: U16,
    /// Command Retry Delay Time 2.
    pub crdt2: U16,
    /// Command Retry Delay Time 3.
    pub crdt3: U16,
    /// Reserved.
    pub rsvd134: [u8; 119],
    /// NVM Subsystem Report.
    pub nvmsr: u8,
    /// VPD Write Cycle Information.
    pub vwci: u8,
    /// Management Endpoint Capabilities.
    pub mec: u8,
    /// Optional Admin Command Support.
    pub oacs: U16,
    /// Abort Command Limit (0's based).
    pub acl: u8,
    /// Asynchronous Event Request Limit (0's based).
    pub aerl: u8,
    /// Firmware Updates.
    pub frmw: u8,
    /// Log Page Attributes.
    pub lpa: u8,
    /// Error Log Page Entries (0's based).
    pub elpe: u8,
    /// Number of Power States Support (0's based).
    pub npss: u8,
    /// Admin Vendor Specific Command Configuration.
    pub avscc: u8,
    /// Autonomous Power State Transition Attributes.
    pub apsta: u8,
    /// Warning Composite Temperature Threshold (K).
    pub wctemp: U16,
    /// Critical Composite Temperature Threshold (K).
    pub cctemp: U16,
    /// Maximum Time for Firmware Activation.
    pub mtfa: U16,
    /// Host Memory Buffer Preferred Size.
    pub hmpre: U32,
    /// Host Memory Buffer Minimum Size.
    pub hmmin: U32,
    /// Total NVM Capacity.
    pub tnvmcap: [u8; 16],
    /// Unallocated NVM Capacity.
    pub unvmcap: [u8; 16],
    /// Replay Protected Memory Block Support.
    pub rpmbs: U32,
    /// Extended Device Self-test Time.
    pub edstt: U16,
    /// Device Self-test Options.
    pub dsto: u8,
    /// Firmware Update Granularity.
    pub fwug: u8,
    /// Keep Alive Support: granularity in 100 ms units (0 = not supported).
    pub kas: U16,
    /// Host Controlled Thermal Management Attributes.
    pub hctma: U16,
    /// Minimum Thermal Management Temperature.
    pub mntmt: U16,
    /// Maximum Thermal Management Temperature.
    pub mxtmt: U16,
    /// Sanitize Capabilities.
    pub sanicap: U32,
    /// Host Memory Buffer Minimum Descriptor Entry Size.
    pub hmminds: U32,
    /// Host Memory Maximum Descriptors Entries.
    pub hmmaxd: U16,
    /// NVM Set Identifier Maximum.
    pub nsetidmax: U16,
    /// Endurance Group Identifier Maximum.
    pub endgidmax: U16,
    /// ANA Transition Time (s).
    pub anatt: u8,
    /// ANA Capabilities.
    pub anacap: u8,
    /// ANA Group Identifier Maximum.
    pub anagrpmax: U32,
    /// Number of ANA Group Identifiers.
    pub nanagrpid: U32,
    /// Persistent Event Log Size.
    pub pels: U32,
    /// Domain Identifier.
    pub domainid: U16,
    /// Reserved.
    pub rsvd358: [u8; 10],
    /// Max Endurance Group Capacity.
    pub megcap: [u8; 16],
    /// Temperature Threshold Hysteresis Attributes (NVMe 2.1).
    pub tmpthha: u8,
    /// Reserved.
    pub rsvd385: u8,
    /// Command Quiesce Time in ms (NVMe 2.1, TP4129).
    pub cqt: U16,
    /// Reserved.
    pub rsvd388: [u8; 124],
    /// Submission Queue Entry Size (max in bits 7:4, required in 3:0; log2).
    pub sqes: u8,
    /// Completion Queue Entry Size.
    pub cqes: u8,
    /// Maximum Outstanding Commands.
    pub maxcmd: U16,
    /// Number of Namespaces (highest NSID).
    pub nn: U32,
    /// Optional NVM Command Support.
    pub oncs: U16,
    /// Fused Operation Support.
    pub fuses: U16,
    /// Format NVM Attributes.
    pub fna: u8,
    /// Volatile Write Cache.
    pub vwc: u8,
    /// Atomic Write Unit Normal.
    pub awun: U16,
    /// Atomic Write Unit Power Fail.
    pub awupf: U16,
    /// I/O Command Set Vendor Specific Command Configuration.
    pub icsvscc: u8,
    /// Namespace Write Protection Capabilities.
    pub nwpc: u8,
    /// Atomic Compare & Write Unit.
    pub acwu: U16,
    /// Copy Descriptor Formats Supported.
    pub ocfs: U16,
    /// SGL Support.
    pub sgls: U32,
    /// Maximum Number of Allowed Namespaces.
    pub mnan: U32,
    /// Maximum Domain Namespace Attachments.
    pub maxdna: [u8; 16],
    /// Maximum I/O Controller Namespace Attachments.
    pub maxcna: U32,
    /// Optimal Aggregated Queue Depth.
    pub oaqd: U32,
    /// Reserved.
    pub rsvd568: [u8; 200],
    /// NVM Subsystem NVMe Qualified Name (NUL padded).
    pub subnqn: [u8; 256],
    /// Reserved.
    pub rsvd1024: [u8; 768],
    /// I/O Queue Command Capsule Supported Size, 16-byte units.
    pub ioccsz: U32,
    /// I/O Queue Response Capsule Supported Size, 16-byte units.
    pub iorcsz: U32,
    /// In Capsule Data Offset, 16-byte units (0 for TCP).
    pub icdoff: U16,
    /// Fabrics Controller Attributes (bit 0: static controller model).
    pub fcatt: u8,
    /// Maximum SGL Data Block Descriptors.
    pub msdbd: u8,
    /// Optional Fabric Commands Support (bit 0: Disconnect).
    pub ofcs: U16,
    /// Discovery Controller Type.
    pub dctype: u8,
    /// Reserved.
    pub rsvd1807: [u8; 241],
    /// Power State Descriptors 0..31.
    pub psd: [PowerStateDescriptor; 32],
    /// Vendor Specific.
    pub vs: [u8; 1024],
}
const _: () = assert!(core::mem::size_of::<IdentifyController>() == 4096);
const _: () = assert!(core::mem::offset_of!(IdentifyController, sn) == 4);
const _: () = assert!(core::mem::offset_of!(IdentifyController, mn) == 24);
const _: () = assert!(core::mem::offset_of!(IdentifyController, fr) == 64);
const _: () = assert!(core::mem::offset_of!(IdentifyController, mdts) == 77);
const _: () = assert!(core::mem::offset_of!(IdentifyController, cntlid) == 78);
const _: () = assert!(core::mem::offset_of!(IdentifyController, oaes) == 92);
const _: () = assert!(core::mem::offset_of!(IdentifyController, ctratt) == 96);
const _: () = assert!(core::mem::offset_of!(IdentifyController, cntrltype) == 111);
const _: () = assert!(core::mem::offset_of!(IdentifyController, crdt1) == 128);
const _: () = assert!(core::mem::offset_of!(IdentifyController, oacs) == 256);
const _: () = assert!(core::mem::offset_of!(IdentifyController, lpa) == 261);
const _: () = assert!(core::mem::offset_of!(IdentifyController, kas) == 320);
const _: () = assert!(core::mem::offset_of!(IdentifyController, anatt) == 342);
const _: () = assert!(core::mem::offset_of!(IdentifyController, cqt) == 386);
const _: () = assert!(core::mem::offset_of!(IdentifyController, sqes) == 512);
const _: () = assert!(core::mem::offset_of!(IdentifyController, nn) == 516);
const _: () = assert!(core::mem::offset_of!(IdentifyController, oncs) == 520);
const _: () = assert!(core::mem::offset_of!(IdentifyController, vwc) == 525);
const _: () = assert!(core::mem::offset_of!(IdentifyController, sgls) == 536);
const _: () = assert!(core::mem::offset_of!(IdentifyController, subnqn) == 768);
const _: () = assert!(core::mem::offset_of!(IdentifyController, ioccsz) == 1792);
const _: () = assert!(core::mem::offset_of!(IdentifyController, ofcs) == 1804);
const _: () = assert!(core::mem::offset_of!(IdentifyController, psd) == 2048);
const _: () = assert!(core::mem::offset_of!(IdentifyController, vs) == 3072);

/// An LBA Format (NVM Command Set 1.0 Figure 98).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct LbaFormat {
    /// Metadata Size.
    pub ms: U16,
    /// LBA Data Size, log2 of the block size.
    pub lbads: u8,
    /// Relative Performance (bits 1:0).
    pub rp: u8,
}

/// Identify Namespace data structure for the NVM command set (NVM Command Set 1.0 Figure 97), 4096 bytes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct IdentifyNamespace {
    /// Namespace Size (blocks).
    pub nsze: U64,
    /// Namespace Capacity (blocks).
    pub ncap: U64,
    /// Namespace Utilization (blocks).
    pub nuse: U64,
    /// Namespace Features.
    pub nsfeat: u8,
    /// Number of LBA Formats (0's based).
    pub nlbaf: u8,
    /// Formatted LBA Size (bits 3:0 index the LBA format).
    pub flbas: u8,
    /// Metadata Capabilities.
    pub mc: u8,
    /// End-to-end Data Protection Capabilities.
    pub dpc: u8,
    /// End-to-end Data Protection Type Settings.
    pub dps: u8,
    /// Namespace Multi-path I/O and Namespace Sharing Capabilities (bit 0: shared).
    pub nmic: u8,
    /// Reservation Capabilities.
    pub rescap: u8,
    /// Format Progress Indicator.
    pub fpi: u8,
    /// Deallocate Logical Block Features.
    pub dlfeat: u8,
    /// Namespace Atomic Write Unit Normal.
    pub nawun: U16,
    /// Namespace Atomic Write Unit Power Fail.
    pub nawupf: U16,
    /// Namespace Atomic Compare & Write Unit.
    pub nacwu: U16,
    /// Namespace Atomic Boundary Size Normal.
    pub nabsn: U16,
    /// Namespace Atomic Boundary Offset.
    pub nabo: U16,
    /// Namespace Atomic Boundary Size Power Fail.
    pub nabspf: U16,
    /// Namespace Optimal I/O Boundary.
    pub noiob: U16,
    /// NVM Capacity (bytes, 128-bit).
    pub nvmcap: [u8; 16],
    /// Namespace Preferred Write Granularity.
    pub npwg: U16,
    /// Namespace Preferred Write Alignment.
    pub npwa: U16,
    /// Namespace Preferred Deallocate Granularity.
    pub npdg: U16,
    /// Namespace Preferred Deallocate Alignment.
    pub npda: U16,
    /// Namespace Optimal Write Size.
    pub nows: U16,
    /// Maximum Single Source Range Length.
    pub mssrl: U16,
    /// Maximum Copy Length.
    pub mcl: U32,
    /// Maximum Source Range Count.
    pub msrc: u8,
    /// Reserved.
    pub rsvd81: [u8; 11],
    /// ANA Group Identifier.
    pub anagrpid: U32,
    /// Reserved.
    pub rsvd96: [u8; 3],
    /// Namespace Attributes.
    pub nsattr: u8,
    /// NVM Set Identifier.
    pub nvmsetid: U16,
    /// Endurance Group Identifier.
    pub endgid: U16,
    /// Namespace Globally Unique Identifier.
    pub nguid: [u8; 16],
    /// IEEE Extended Unique Identifier.
    pub eui64: [u8; 8],
    /// LBA Formats 0..63.
    pub lbaf: [LbaFormat; 64],
    /// Reserved and vendor specific.
    pub rsvd384: [u8; 3712],
}
const _: () = assert!(core::mem::size_of::<IdentifyNamespace>() == 4096);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, nsfeat) == 24);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, flbas) == 26);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, dlfeat) == 33);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, nvmcap) == 48);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, anagrpid) == 92);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, nguid) == 104);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, eui64) == 120);
const _: () = assert!(core::mem::offset_of!(IdentifyNamespace, lbaf) == 128);

impl IdentifyNamespace {
    /// Block size of the formatted LBA format (FLBAS bits 3:0, plus bits 6:5 for formats above 16).
    pub fn block_size(&self) -> Option<u32> {
        let idx = (self.flbas & 0xF) as usize | (((self.flbas >> 5) & 0x3) as usize) << 4;
        let lbads = self.lbaf.get(idx)?.lbads;
        (9..=31).contains(&lbads).then(|| 1u32 << lbads)
    }
}

/// Write `s` into an ASCII field, space padded (SN, MN, FR: NVMe Base 2.0 §1.5 "ASCII string").
pub fn set_ascii(field: &mut [u8], s: &str) {
    field.fill(b' ');
    let n = s.len().min(field.len());
    field[..n].copy_from_slice(&s.as_bytes()[..n]);
}

/// Read an ASCII field, trimming trailing spaces and NULs.
pub fn get_ascii(field: &[u8]) -> String {
    String::from_utf8_lossy(field).trim_end_matches([' ', '\0']).to_string()
}

/// Namespace Identification Descriptor (NVMe Base 2.0 Figure 278–279).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NsDescriptor {
    /// NIDT 1: IEEE Extended Unique Identifier.
    Eui64([u8; 8]),
    /// NIDT 2: Namespace Globally Unique Identifier.
    Nguid([u8; 16]),
    /// NIDT 3: Namespace UUID.
    Uuid([u8; 16]),
    /// NIDT 4: Command Set Identifier.
    Csi(u8),
}

impl NsDescriptor {
    fn parts(&self) -> (u8, &[u8]) {
        match self {
            NsDescriptor::Eui64(v) => (1, v),
            NsDescriptor::Nguid(v) => (2, v),
            NsDescriptor::Uuid(v) => (3, v),
            NsDescriptor::Csi(v) => (4, core::slice::from_ref(v)),
        }
    }
}

/// Encode a descriptor list into the 4096-byte CNS 03h data: each is NIDT, NIDL, 2 reserved bytes, the ID.
pub fn ns_descriptor_list(descs: &[NsDescriptor]) -> [u8; 4096] {
    let mut out = [0u8; 4096];
    let mut off = 0;
    for d in descs {
        let (nidt, id) = d.parts();
        if off + 4 + id.len() > out.len() {
            break;
        }
        out[off] = nidt;
        out[off + 1] = id.len() as u8;
        out[off + 4..off + 4 + id.len()].copy_from_slice(id);
        off += 4 + id.len();
    }
    out
}

/// Decode a descriptor list (stops at NIDT 0 or the end; skips unknown types).
pub fn parse_ns_descriptor_list(b: &[u8]) -> Vec<NsDescriptor> {
    let mut v = Vec::new();
    let mut off = 0;
    while off + 4 <= b.len() {
        let (nidt, nidl) = (b[off], b[off + 1] as usize);
        if nidt == 0 || off + 4 + nidl > b.len() {
            break;
        }
        let id = &b[off + 4..off + 4 + nidl];
        match (nidt, nidl) {
            (1, 8) => v.push(NsDescriptor::Eui64(id.try_into().unwrap_or_default())),
            (2, 16) => v.push(NsDescriptor::Nguid(id.try_into().unwrap_or_default())),
            (3, 16) => v.push(NsDescriptor::Uuid(id.try_into().unwrap_or_default())),
            (4, 1) => v.push(NsDescriptor::Csi(id[0])),
            _ => {}
        }
        off += 4 + nidl;
    }
    v
}

/// Encode an active namespace list (CNS 02h): up to 1024 ascending NSIDs, zero terminated.
pub fn active_ns_list(nsids: &[u32]) -> [u8; 4096] {
    let mut out = [0u8; 4096];
    for (i, n) in nsids.iter().take(1024).enumerate() {
        out[i * 4..i * 4 + 4].copy_from_slice(&n.to_le_bytes());
    }
    out
}

/// Decode an active namespace list.
pub fn parse_active_ns_list(b: &[u8]) -> Vec<u32> {
    b.chunks_exact(4).map(|c| u32::from_le_bytes([c[0], c[1], c[2], c[3]])).take_while(|&n| n != 0).collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use zerocopy::FromZeros;

    #[test]
    fn controller_golden_offsets() {
        let mut c = IdentifyController::new_zeroed();
        set_ascii(&mut c.sn, "SN1");
        c.cntlid.set(0x1234);
        c.kas.set(10);
        c.ioccsz.set(1028);
        c.cqt.set(5000);
        let b = c.as_bytes();
        assert_eq!(&b[4..8], b"SN1 ");
        assert_eq!(&b[78..80], &[0x34, 0x12]);
        assert_eq!(&b[320..322], &[10, 0]);
        assert_eq!(&b[386..388], &5000u16.to_le_bytes());
        assert_eq!(&b[1792..1796], &1028u32.to_le_bytes());
        assert_eq!(get_ascii(&c.sn), "SN1");
    }

    #[test]
    fn namespace_block_size_and_descriptors() {
        let mut n = IdentifyNamespace::new_zeroed();
        n.lbaf[0].lbads = 12;
        assert_eq!(n.block_size(), Some(4096));
        assert_eq!(n.as_bytes()[128 + 2], 12, "LBADS of format 0 at byte 130");
        let d = [
            NsDescriptor::Eui64([1; 8]),
            NsDescriptor::Nguid([2; 16]),
            NsDescriptor::Uuid([3; 16]),
            NsDescriptor::Csi(0),
        ];
        let b = ns_descriptor_list(&d);
        assert_eq!(&b[..4], &[1, 8, 0, 0]);
        assert_eq!(&b[12..16], &[2, 16, 0, 0]);
        assert_eq!(parse_ns_descriptor_list(&b), d.to_vec());
        assert_eq!(parse_active_ns_list(&active_ns_list(&[1, 5])), vec![1, 5]);
    }
}
