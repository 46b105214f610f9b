//! Reservations: the command fields and data structures of Reservation Register, Report, Acquire and Release.
//!
//! Sources: NVMe Base Specification 2.0 §8.19 "Reservations" (the reservation types and which commands each
//! lets through) and §7.2-7.5 (Reservation Acquire, Register, Release, Report: their Command Dword 10/11
//! fields, the Reservation Register / Acquire / Release data structures, and the Reservation Status Extended
//! Data Structure with its Registered Controller Extended Data Structures), and Identify Namespace RESCAP.
//! Over fabrics a host is known by its 128-bit Host Identifier, so reports use the extended structures
//! (a Report without EDS is Host Identifier Inconsistent Format, as Linux nvmet answers).

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Command Dword 10 bit 3 of Register, Acquire and Release: Ignore Existing Key (IEKEY).
pub const IEKEY: u32 = 1 << 3;
/// Reservation Register Action (RREGA, CDW10 bits 2:0): register a key.
pub const RREGA_REGISTER: u8 = 0;
/// RREGA: unregister.
pub const RREGA_UNREGISTER: u8 = 1;
/// RREGA: replace the key.
pub const RREGA_REPLACE: u8 = 2;
/// Reservation Acquire Action (RACQA, CDW10 bits 2:0): acquire.
pub const RACQA_ACQUIRE: u8 = 0;
/// RACQA: preempt.
pub const RACQA_PREEMPT: u8 = 1;
/// RACQA: preempt and abort.
pub const RACQA_PREEMPT_AND_ABORT: u8 = 2;
/// Reservation Release Action (RRELA, CDW10 bits 2:0): release.
pub const RRELA_RELEASE: u8 = 0;
/// RRELA: clear (every registration and the reservation).
pub const RRELA_CLEAR: u8 = 1;
/// Reservation Register CDW10 bits 31:30, Change Persist Through Power Loss State: 11b sets it.
pub const CPTPL_SET: u32 = 0b11;
/// CPTPL 10b: clears it (reservations and registrations are then lost at a power loss).
pub const CPTPL_CLEAR: u32 = 0b10;
/// Reservation Report CDW11 bit 0: Extended Data Structure (EDS).
pub const REPORT_EDS: u32 = 1 << 0;
/// Identify Namespace RESCAP for the six reservation types and IEKEY as NVMe 1.3 defines it (bits 1-7).
pub const RESCAP_ALL_TYPES_IEKEY: u8 = 0xFE;
/// RESCAP bit 0: Persist Through Power Loss.
pub const RESCAP_PTPL: u8 = 1 << 0;

/// The action field (bits 2:0) of a reservation command's CDW10.
pub fn action(cdw10: u32) -> u8 {
    (cdw10 & 0x7) as u8
}
/// The Reservation Type field (RTYPE, bits 15:8) of an Acquire's or Release's CDW10.
pub fn rtype(cdw10: u32) -> u8 {
    (cdw10 >> 8) as u8
}

/// A reservation type (NVMe Base 2.0 §8.19, figure "Reservation Type Encoding").
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum ReservationType {
    /// 1: Write Exclusive: only the holder writes; everyone reads.
    WriteExclusive = 1,
    /// 2: Exclusive Access: only the holder reads or writes.
    ExclusiveAccess = 2,
    /// 3: Write Exclusive - Registrants Only: registrants write; everyone reads.
    WriteExclusiveRegistrantsOnly = 3,
    /// 4: Exclusive Access - Registrants Only: only registrants read or write.
    ExclusiveAccessRegistrantsOnly = 4,
    /// 5: Write Exclusive - All Registrants: as 3, every registrant a holder.
    WriteExclusiveAllRegistrants = 5,
    /// 6: Exclusive Access - All Registrants: as 4, every registrant a holder.
    ExclusiveAccessAllRegistrants = 6,
}

impl ReservationType {
    /// The type an RTYPE value encodes; `None` for 0 and 7..=255.
    pub fn from_u8(v: u8) -> Option<ReservationType> {
        use ReservationType::*;
        Some(match v {
            1 => WriteExclusive,
            2 => ExclusiveAccess,
            3 => WriteExclusiveRegistrantsOnly,
            4 => ExclusiveAccessRegistrantsOnly,
            5 => WriteExclusiveAllRegistrants,
            6 => ExclusiveAccessAllRegistrants,
            _ => return None,
        })
    }
    /// True for the All Registrants types, whose every registrant holds the reservation.
    pub fn all_registrants(self) -> bool {
        matches!(self, ReservationType::WriteExclusiveAllRegistrants | ReservationType::ExclusiveAccessAllRegistrants)
    }
    /// Whether a host that does not hold the reservation may run a command of the read group (Read) or the
    /// write group (Write, Write Zeroes, Dataset Management, Flush), given whether it is a registrant (NVMe
    /// Base 2.0 §8.19, figure "Command Behavior in the Presence of a Reservation").
    pub fn allows(self, write: bool, registrant: bool) -> bool {
        use ReservationType::*;
        match self {
            WriteExclusive => !write,
            ExclusiveAccess => false,
            WriteExclusiveRegistrantsOnly | WriteExclusiveAllRegistrants => !write || registrant,
            ExclusiveAccessRegistrantsOnly | ExclusiveAccessAllRegistrants => registrant,
        }
    }
    /// Its name in the specification.
    pub fn name(self) -> &'static str {
        use ReservationType::*;
        match self {
            WriteExclusive => "Write Exclusive",
            ExclusiveAccess => "Exclusive Access",
            WriteExclusiveRegistrantsOnly => "Write Exclusive - Registrants Only",
            ExclusiveAccessRegistrantsOnly => "Exclusive Access - Registrants Only",
            WriteExclusiveAllRegistrants => "Write Exclusive - All Registrants",
            ExclusiveAccessAllRegistrants => "Exclusive Access - All Registrants",
        }
    }
}

/// The data of a Reservation Register (CRKEY, NRKEY) or Acquire (CRKEY, PRKEY) command: two keys, 16 bytes
/// (NVMe Base 2.0 §7.2-7.3, figures "Reservation Register Data Structure" and "Reservation Acquire Data
/// Structure"). A Release carries the first key alone (8 bytes).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ReservationKeys {
    /// Bytes 07:00 Current Reservation Key (CRKEY).
    pub crkey: U64,
    /// Bytes 15:08 New Reservation Key (NRKEY, Register) or Preempt Reservation Key (PRKEY, Acquire).
    pub other: U64,
}
const _: () = assert!(core::mem::size_of::<ReservationKeys>() == 16);

impl ReservationKeys {
    /// The keys at the start of `b`: CRKEY from its first 8 bytes, the second key from the next 8 if they are
    /// there (0 otherwise: a Release's data is CRKEY alone); `None` if `b` is shorter than 8 bytes.
    pub fn parse(b: &[u8]) -> Option<(u64, u64)> {
        let word = |r: Option<&[u8]>| r.map(|r| u64::from_le_bytes(r.try_into().unwrap_or([0; 8])));
        let crkey = word(b.get(0..8))?;
        Some((crkey, word(b.get(8..16)).unwrap_or(0)))
    }
    /// The 16 bytes for `crkey` and `other`.
    pub fn new(crkey: u64, other: u64) -> ReservationKeys {
        ReservationKeys { crkey: U64::new(crkey), other: U64::new(other) }
    }
}

/// Header of the Reservation Status Extended Data Structure, 64 bytes (NVMe Base 2.0 §7.5, figure
/// "Reservation Status Extended Data Structure"); [`RegisteredControllerExt`]s follow.
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct ReservationStatusExt {
    /// Bytes 03:00 Generation (GEN): counts registrations, unregistrations, key replacements, preemptions and
    /// clears.
    pub gen: U32,
    /// Byte 04 Reservation Type (RTYPE; 0: no reservation).
    pub rtype: u8,
    /// Bytes 06:05 Number of Registered Controllers (REGCTL).
    pub regctl: U16,
    /// Bytes 08:07 reserved.
    pub rsvd7: [u8; 2],
    /// Byte 09 Persist Through Power Loss State (PTPLS).
    pub ptpls: u8,
    /// Bytes 63:10 reserved.
    pub rsvd10: [u8; 54],
}
const _: () = assert!(core::mem::size_of::<ReservationStatusExt>() == 64);
const _: () = assert!(core::mem::offset_of!(ReservationStatusExt, regctl) == 5);
const _: () = assert!(core::mem::offset_of!(ReservationStatusExt, ptpls) == 9);

/// One Registered Controller Extended Data Structure, 64 bytes (NVMe Base 2.0 §7.5, figure "Registered
/// Controller Extended Data Structure").
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct RegisteredControllerExt {
    /// Bytes 01:00 Controller ID (CNTLID): FFFFh in the dynamic controller model.
    pub cntlid: U16,
    /// Byte 02 Reservation Status (RCSTS): bit 0, the host holds the reservation.
    pub rcsts: u8,
    /// Bytes 07:03 reserved.
    pub rsvd3: [u8; 5],
    /// Bytes 15:08 Reservation Key (RKEY).
    pub rkey: U64,
    /// Bytes 31:16 Host Identifier (HOSTID), 128 bits.
    pub hostid: [u8; 16],
    /// Bytes 63:32 reserved.
    pub rsvd32: [u8; 32],
}
const _: () = assert!(core::mem::size_of::<RegisteredControllerExt>() == 64);
const _: () = assert!(core::mem::offset_of!(RegisteredControllerExt, rkey) == 8);
const _: () = assert!(core::mem::offset_of!(RegisteredControllerExt, hostid) == 16);

/// One registrant in a report.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Registrant {
    /// Its Host Identifier.
    pub hostid: [u8; 16],
    /// Its key.
    pub rkey: u64,
    /// Whether it holds the reservation.
    pub holds: bool,
}

/// A Reservation Report's content.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ReservationReport {
    /// Generation.
    pub gen: u32,
    /// The reservation's type, if there is one.
    pub rtype: Option<ReservationType>,
    /// Persist Through Power Loss State.
    pub ptpls: bool,
    /// Every registrant (REGCTL counts them all, even those a short transfer leaves out).
    pub registrants: Vec<Registrant>,
}

impl ReservationReport {
    /// The extended structure, cut (or zero-padded) to `len` bytes, the transfer the host asked for.
    pub fn to_bytes(&self, len: usize) -> Vec<u8> {
        let mut h = ReservationStatusExt::new_zeroed();
        h.gen.set(self.gen);
        h.rtype = self.rtype.map_or(0, |t| t as u8);
        h.regctl.set(self.registrants.len().min(u16::MAX as usize) as u16);
        h.ptpls = self.ptpls as u8;
        let mut v = Vec::with_capacity(64 * (1 + self.registrants.len()));
        v.extend_from_slice(h.as_bytes());
        for r in &self.registrants {
            if v.len() >= len {
                break;
            }
            let mut e = RegisteredControllerExt::new_zeroed();
            e.cntlid.set(0xFFFF);
            e.rcsts = r.holds as u8;
            e.rkey.set(r.rkey);
            e.hostid = r.hostid;
            v.extend_from_slice(e.as_bytes());
        }
        v.resize(len, 0);
        v
    }

    /// Parse a report a controller returned: the header and as many registrant entries as REGCTL says and
    /// the bytes hold.
    pub fn parse(b: &[u8]) -> Option<ReservationReport> {
        let (h, rest) = ReservationStatusExt::read_from_prefix(b).ok()?;
        let registrants = rest
            .chunks_exact(64)
            .take(h.regctl.get() as usize)
            .filter_map(|c| RegisteredControllerExt::read_from_bytes(c).ok())
            .map(|e| Registrant { hostid: e.hostid, rkey: e.rkey.get(), holds: e.rcsts & 1 != 0 })
            .collect();
        Some(ReservationReport {
            gen: h.gen.get(),
            rtype: ReservationType::from_u8(h.rtype),
            ptpls: h.ptpls & 1 != 0,
            registrants,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_report_has_the_extended_layout() {
        let r = ReservationReport {
            gen: 3,
            rtype: Some(ReservationType::WriteExclusive),
            ptpls: true,
            registrants: vec![
                Registrant { hostid: [0x11; 16], rkey: 0xAB, holds: true },
                Registrant { hostid: [0x22; 16], rkey: 0xCD, holds: false },
            ],
        };
        let b = r.to_bytes(192);
        assert_eq!(&b[0..4], &3u32.to_le_bytes());
        assert_eq!(b[4], 1, "RTYPE");
        assert_eq!(&b[5..7], &2u16.to_le_bytes(), "REGCTL");
        assert_eq!(b[9], 1, "PTPLS");
        assert_eq!(&b[64..66], &[0xFF, 0xFF], "CNTLID: dynamic controller model");
        assert_eq!(b[66], 1, "RCSTS: holds");
        assert_eq!(&b[72..80], &0xABu64.to_le_bytes());
        assert_eq!(&b[80..96], &[0x11; 16]);
        assert_eq!(b[130], 0);
        assert_eq!(ReservationReport::parse(&b), Some(r.clone()));
        // A transfer too short for every entry still counts them all in REGCTL.
        let short = r.to_bytes(128);
        assert_eq!((short.len(), &short[5..7]), (128, &2u16.to_le_bytes()[..]));
        assert_eq!(ReservationReport::parse(&short).unwrap().registrants.len(), 1);
    }

    #[test]
    fn each_type_lets_through_what_the_spec_says() {
        use ReservationType::*;
        // (type, read by a registrant, write by a registrant, read by another host, write by another host)
        let table = [
            (WriteExclusive, true, false, true, false),
            (ExclusiveAccess, false, false, false, false),
            (WriteExclusiveRegistrantsOnly, true, true, true, false),
            (ExclusiveAccessRegistrantsOnly, true, true, false, false),
            (WriteExclusiveAllRegistrants, true, true, true, false),
            (ExclusiveAccessAllRegistrants, true, true, false, false),
        ];
        for (t, rr, rw, nr, nw) in table {
            assert_eq!((t.allows(false, true), t.allows(true, true)), (rr, rw), "{t:?} registrant");
            assert_eq!((t.allows(false, false), t.allows(true, false)), (nr, nw), "{t:?} other");
            assert_eq!(ReservationType::from_u8(t as u8), Some(t));
        }
        assert_eq!((ReservationType::from_u8(0), ReservationType::from_u8(7)), (None, None));
        assert_eq!(ReservationKeys::parse(ReservationKeys::new(5, 9).as_bytes()), Some((5, 9)));
        assert_eq!(ReservationKeys::parse(&7u64.to_le_bytes()), Some((7, 0)), "a Release: CRKEY alone");
        assert_eq!(ReservationKeys::parse(&[0; 7]), None);
    }
}
