//! holdfast's connection-policy log page (README, Connection policy): a vendor-specific log page, LID C0h, that the discovery
//! controller and every I/O controller serve, telling a host how long to ride through an outage.
//!
//! Why a log page: it is the specification's own channel for controller-to-host data (Get Log Page, NVMe Base
//! 2.1 §5.1.12; LIDs C0h–FFh are vendor specific), a host that does not know it never asks for it,
//! and a change can be announced with a vendor-specific asynchronous event (type 7, information
//! [`AEN_INFO_POLICY_CHANGED`], log page C0h) that a host clears by reading the page. Standard fields carry
//! what the specification already has a place for (KAS, CRDT1–3, CQT in Identify Controller); this page
//! carries the rest.
//!
//! Compatibility rules: the page starts with the signature `HFPL` and a version. A reader accepts any version
//! from 1 up and reads only the fields it knows (a later version only appends fields and defines reserved
//! bits); it rejects version 0, a wrong signature, and a LENGTH below the 56 bytes of version 1. The byte
//! layout is on [`PolicyLogPage`].

use crate::features::AsyncEvent;
use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Log identifier of the policy page (vendor-specific range C0h–FFh).
pub const LID_HOLDFAST_POLICY: u8 = 0xC0;
/// Asynchronous event information of the vendor-specific (type 7) "policy changed" event; its log page is
/// [`LID_HOLDFAST_POLICY`].
pub const AEN_INFO_POLICY_CHANGED: u8 = 0xC0;
/// Signature at byte 0.
pub const SIGNATURE: [u8; 4] = *b"HFPL";
/// Version this code writes.
pub const VERSION: u16 = 1;
/// Bytes of the page this code writes (the LENGTH field).
pub const LENGTH: u16 = 512;
/// Bytes of the version 1 fields: the least LENGTH, and the least data, a reader accepts.
pub const MIN_LEN: usize = 56;
/// FLAGS bit 0, POLICY_SET: the timing fields (bytes 24–47) carry an advertised policy. Clear: the target
/// advertises no policy, those fields are zero and the host uses its defaults; instance_id, generation and
/// planned_downtime_ms are valid either way. Bits 31:2 are reserved (written 0, ignored on read).
pub const FLAG_POLICY_SET: u32 = 1 << 0;
/// FLAGS bit 1, VOLATILE_DATA: a namespace of this subsystem keeps its data only for the life of this target
/// instance (a RAM namespace): once `instance_id` changes, writes this instance acknowledged are gone, flushed
/// or not. Valid whatever POLICY_SET says. Clear: the namespaces keep what was written across a restart of
/// the target (a file namespace: unless the target's machine lost power before a Flush reached it).
pub const FLAG_VOLATILE_DATA: u32 = 1 << 1;
/// The smallest `kato_ms` that makes sense: a holdfast host sends a Keep Alive every third of KATO (at least
/// every 100 ms) and gives it the rest of KATO to be answered, so below half a second the answer must come within
/// a few scheduler ticks of a loaded machine. The target refuses a smaller value in its configuration; the host
/// raises a smaller one (from a target's page or its own option) to this.
pub const MIN_KATO_MS: u32 = 500;
/// `ctrl_loss_tmo_ms` value meaning "never give up".
pub const CTRL_LOSS_NEVER: u32 = u32::MAX;

/// The policy page as it is on the wire: 512 bytes, all integers little endian, reserved bytes zero.
///
/// | offset | size | field | meaning |
/// |---:|---:|---|---|
/// | 0 | 4 | `signature` | `HFPL` (48h 46h 50h 4Ch) |
/// | 4 | 2 | `version` | 1; readers accept any version ≥ 1 and read the fields they know |
/// | 6 | 2 | `length` | 512: bytes of this structure; at least 56 |
/// | 8 | 8 | `instance_id` | changes at every target start: a restart, not a network blip |
/// | 16 | 8 | `generation` | incremented whenever the policy changes |
/// | 24 | 4 | `kato_ms` | keep-alive timeout the host should request in Connect |
/// | 28 | 4 | `reconnect_delay_ms` | first delay between reconnect attempts |
/// | 32 | 4 | `reconnect_delay_max_ms` | cap of the exponential reconnect backoff |
/// | 36 | 4 | `ctrl_loss_tmo_ms` | keep reconnecting this long, then fail all I/O; FFFFFFFFh = never give up |
/// | 40 | 4 | `fast_io_fail_tmo_ms` | after this long disconnected, fail queued and new I/O while reconnecting continues; 0 = off |
/// | 44 | 4 | `cqt_ms` | command quiesce time: the longest a command of a lost association may still touch media |
/// | 48 | 4 | `planned_downtime_ms` | the target announced it will be down for up to this long, starting when hosts lose the connection; 0 = none announced |
/// | 52 | 4 | `flags` | bit 0 POLICY_SET: bytes 24–47 carry an advertised policy (clear: all zero, use host defaults); bit 1 VOLATILE_DATA: a namespace's data lives only as long as this instance (RAM); bits 31:2 reserved |
/// | 56 | 456 | reserved | 0 |
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct PolicyLogPage {
    /// [`SIGNATURE`].
    pub signature: [u8; 4],
    /// [`VERSION`].
    pub version: U16,
    /// [`LENGTH`].
    pub length: U16,
    /// Target instance: changes at every target start.
    pub instance_id: U64,
    /// Policy generation: incremented when the policy changes.
    pub generation: U64,
    /// Keep-alive timeout to request, ms.
    pub kato_ms: U32,
    /// First reconnect delay, ms.
    pub reconnect_delay_ms: U32,
    /// Reconnect backoff cap, ms.
    pub reconnect_delay_max_ms: U32,
    /// Controller loss timeout, ms ([`CTRL_LOSS_NEVER`]: never).
    pub ctrl_loss_tmo_ms: U32,
    /// Fast I/O fail timeout, ms (0: off).
    pub fast_io_fail_tmo_ms: U32,
    /// Command quiesce time, ms.
    pub cqt_ms: U32,
    /// Announced planned downtime, ms (0: none).
    pub planned_downtime_ms: U32,
    /// [`FLAG_POLICY_SET`].
    pub flags: U32,
    /// Reserved.
    pub rsvd56: [u8; 456],
}
const _: () = assert!(core::mem::size_of::<PolicyLogPage>() == LENGTH as usize);
const _: () = assert!(core::mem::offset_of!(PolicyLogPage, version) == 4);
const _: () = assert!(core::mem::offset_of!(PolicyLogPage, length) == 6);
const _: () = assert!(core::mem::offset_of!(PolicyLogPage, instance_id) == 8);
const _: () = assert!(core::mem::offset_of!(PolicyLogPage, generation) == 16);
const _: () = assert!(core::mem::offset_of!(PolicyLogPage, kato_ms) == 24);
const _: () = assert!(core::mem::offset_of!(PolicyLogPage, reconnect_delay_ms) == 28);
const _: () = assert!(core::mem::offset_of!(PolicyLogPage, reconnect_delay_max_ms) == 32);
const _: () = assert!(core::mem::offset_of!(PolicyLogPage, ctrl_loss_tmo_ms) == 36);
const _: () = assert!(core::mem::offset_of!(PolicyLogPage, fast_io_fail_tmo_ms) == 40);
const _: () = assert!(core::mem::offset_of!(PolicyLogPage, cqt_ms) == 44);
const _: () = assert!(core::mem::offset_of!(PolicyLogPage, planned_downtime_ms) == 48);
const _: () = assert!(core::mem::offset_of!(PolicyLogPage, flags) == 52);
const _: () = assert!(core::mem::offset_of!(PolicyLogPage, rsvd56) == MIN_LEN);

/// The policy as plain values (the fields of [`PolicyLogPage`] without the framing).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionPolicy {
    /// Target instance: changes at every target start.
    pub instance_id: u64,
    /// Policy generation.
    pub generation: u64,
    /// Keep-alive timeout to request, ms (0: not advertised).
    pub kato_ms: u32,
    /// First reconnect delay, ms.
    pub reconnect_delay_ms: u32,
    /// Reconnect backoff cap, ms.
    pub reconnect_delay_max_ms: u32,
    /// Controller loss timeout, ms ([`CTRL_LOSS_NEVER`]: never).
    pub ctrl_loss_tmo_ms: u32,
    /// Fast I/O fail timeout, ms (0: off).
    pub fast_io_fail_tmo_ms: u32,
    /// Command quiesce time, ms.
    pub cqt_ms: u32,
    /// Announced planned downtime, ms (0: none).
    pub planned_downtime_ms: u32,
    /// [`FLAG_VOLATILE_DATA`]: a namespace's data lives only as long as this target instance.
    pub volatile_data: bool,
}

/// Why a policy page was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PolicyParseError {
    /// Fewer bytes than the version 1 fields ([`MIN_LEN`]).
    TooShort(usize),
    /// The first four bytes are not `HFPL`.
    BadSignature([u8; 4]),
    /// Version 0.
    BadVersion(u16),
    /// A LENGTH field below [`MIN_LEN`].
    BadLength(u16),
}

impl core::fmt::Display for PolicyParseError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            PolicyParseError::TooShort(n) => write!(f, "policy page too short: {n} bytes, need {MIN_LEN}"),
            PolicyParseError::BadSignature(s) => write!(f, "policy page signature {s:02x?} is not HFPL"),
            PolicyParseError::BadVersion(v) => write!(f, "policy page version {v} is not supported"),
            PolicyParseError::BadLength(l) => write!(f, "policy page length {l} is below {MIN_LEN}"),
        }
    }
}

impl std::error::Error for PolicyParseError {}

impl PolicyLogPage {
    /// The first 512 bytes of `b` as they are, unchecked; `None` if it is shorter. Use
    /// [`ConnectionPolicy::from_bytes`] to validate a received page.
    pub fn from_slice(b: &[u8]) -> Option<Self> {
        Self::read_from_prefix(b).ok().map(|(v, _)| v)
    }
}

impl ConnectionPolicy {
    /// True if any timing field (kato through cqt) is set: what [`FLAG_POLICY_SET`] says on the wire.
    pub fn advertises_timing(&self) -> bool {
        [
            self.kato_ms,
            self.reconnect_delay_ms,
            self.reconnect_delay_max_ms,
            self.ctrl_loss_tmo_ms,
            self.fast_io_fail_tmo_ms,
            self.cqt_ms,
        ]
        .iter()
        .any(|&v| v != 0)
    }

    /// The wire form, version [`VERSION`], length [`LENGTH`], POLICY_SET if [`Self::advertises_timing`].
    pub fn to_log_page(&self) -> PolicyLogPage {
        let mut p = PolicyLogPage::new_zeroed();
        p.signature = SIGNATURE;
        p.version.set(VERSION);
        p.length.set(LENGTH);
        p.instance_id.set(self.instance_id);
        p.generation.set(self.generation);
        p.kato_ms.set(self.kato_ms);
        p.reconnect_delay_ms.set(self.reconnect_delay_ms);
        p.reconnect_delay_max_ms.set(self.reconnect_delay_max_ms);
        p.ctrl_loss_tmo_ms.set(self.ctrl_loss_tmo_ms);
        p.fast_io_fail_tmo_ms.set(self.fast_io_fail_tmo_ms);
        p.cqt_ms.set(self.cqt_ms);
        p.planned_downtime_ms.set(self.planned_downtime_ms);
        let volatile = if self.volatile_data { FLAG_VOLATILE_DATA } else { 0 };
        p.flags.set(if self.advertises_timing() { FLAG_POLICY_SET } else { 0 } | volatile);
        p
    }

    /// Parse a received page (at least the 56 bytes of version 1; any version ≥ 1, of which only the version 1
    /// fields are read). With POLICY_SET clear the timing fields are taken as zero, whatever they hold.
    pub fn from_bytes(b: &[u8]) -> Result<Self, PolicyParseError> {
        let v1 = b.get(..MIN_LEN).ok_or(PolicyParseError::TooShort(b.len()))?;
        let mut full = [0u8; LENGTH as usize];
        full[..MIN_LEN].copy_from_slice(v1);
        let p = PolicyLogPage::from_slice(&full).ok_or(PolicyParseError::TooShort(b.len()))?;
        if p.signature != SIGNATURE {
            return Err(PolicyParseError::BadSignature(p.signature));
        }
        if p.version.get() == 0 {
            return Err(PolicyParseError::BadVersion(0));
        }
        if usize::from(p.length.get()) < MIN_LEN {
            return Err(PolicyParseError::BadLength(p.length.get()));
        }
        let set = p.flags.get() & FLAG_POLICY_SET != 0;
        let timing = |v: U32| if set { v.get() } else { 0 };
        Ok(ConnectionPolicy {
            instance_id: p.instance_id.get(),
            generation: p.generation.get(),
            kato_ms: timing(p.kato_ms),
            reconnect_delay_ms: timing(p.reconnect_delay_ms),
            reconnect_delay_max_ms: timing(p.reconnect_delay_max_ms),
            ctrl_loss_tmo_ms: timing(p.ctrl_loss_tmo_ms),
            fast_io_fail_tmo_ms: timing(p.fast_io_fail_tmo_ms),
            cqt_ms: timing(p.cqt_ms),
            planned_downtime_ms: p.planned_downtime_ms.get(),
            volatile_data: p.flags.get() & FLAG_VOLATILE_DATA != 0,
        })
    }
}

/// The asynchronous event a target completes to say the policy changed: vendor specific (type 7), information
/// [`AEN_INFO_POLICY_CHANGED`], log page [`LID_HOLDFAST_POLICY`].
pub fn policy_changed_event() -> AsyncEvent {
    AsyncEvent::vendor(AEN_INFO_POLICY_CHANGED, LID_HOLDFAST_POLICY)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn sample() -> ConnectionPolicy {
        ConnectionPolicy {
            instance_id: 0x0102_0304_0506_0708,
            generation: 2,
            kato_ms: 2000,
            reconnect_delay_ms: 500,
            reconnect_delay_max_ms: 8000,
            ctrl_loss_tmo_ms: CTRL_LOSS_NEVER,
            fast_io_fail_tmo_ms: 0,
            cqt_ms: 100,
            planned_downtime_ms: 30_000,
            volatile_data: false,
        }
    }

    #[test]
    fn golden_bytes() {
        // The layout table on PolicyLogPage.
        let page = sample().to_log_page();
        let b = page.as_bytes();
        assert_eq!(b.len(), 512);
        assert_eq!(&b[0..8], &[b'H', b'F', b'P', b'L', 1, 0, 0, 2]);
        assert_eq!(&b[8..16], &[8, 7, 6, 5, 4, 3, 2, 1]);
        assert_eq!(&b[16..24], &[2, 0, 0, 0, 0, 0, 0, 0]);
        assert_eq!(&b[24..28], &2000u32.to_le_bytes());
        assert_eq!(&b[28..32], &500u32.to_le_bytes());
        assert_eq!(&b[32..36], &8000u32.to_le_bytes());
        assert_eq!(&b[36..40], &[0xFF; 4]);
        assert_eq!(&b[40..44], &[0; 4]);
        assert_eq!(&b[44..48], &100u32.to_le_bytes());
        assert_eq!(&b[48..52], &30_000u32.to_le_bytes());
        assert_eq!(&b[52..56], &[1, 0, 0, 0], "POLICY_SET");
        assert!(b[56..].iter().all(|&x| x == 0));
        assert_eq!(ConnectionPolicy::from_bytes(b), Ok(sample()));
        // VOLATILE_DATA is bit 1, with or without POLICY_SET.
        let v = ConnectionPolicy { volatile_data: true, ..sample() };
        assert_eq!(&v.to_log_page().as_bytes()[52..56], &[3, 0, 0, 0]);
        assert_eq!(ConnectionPolicy::from_bytes(v.to_log_page().as_bytes()), Ok(v));
        let bare = ConnectionPolicy { instance_id: 1, volatile_data: true, ..Default::default() };
        assert_eq!(&bare.to_log_page().as_bytes()[52..56], &[2, 0, 0, 0]);
        assert_eq!(ConnectionPolicy::from_bytes(bare.to_log_page().as_bytes()), Ok(bare));
    }

    #[test]
    fn nothing_advertised() {
        // A target without a policy still reports its instance and an announced downtime; POLICY_SET is clear.
        let p = ConnectionPolicy { instance_id: 9, planned_downtime_ms: 1000, ..Default::default() };
        assert!(!p.advertises_timing());
        let page = p.to_log_page();
        assert_eq!(page.flags.get(), 0);
        assert_eq!(ConnectionPolicy::from_bytes(page.as_bytes()), Ok(p));
        // Timing values without POLICY_SET are ignored.
        let mut b = sample().to_log_page().as_bytes().to_vec();
        b[52] = 0;
        let got = ConnectionPolicy::from_bytes(&b).expect("valid page");
        assert_eq!((got.kato_ms, got.ctrl_loss_tmo_ms, got.cqt_ms), (0, 0, 0));
        assert_eq!((got.instance_id, got.generation, got.planned_downtime_ms), (sample().instance_id, 2, 30_000));
    }

    #[test]
    fn versions_and_lengths() {
        let good = sample().to_log_page().as_bytes().to_vec();
        assert_eq!(ConnectionPolicy::from_bytes(&good[..MIN_LEN]), Ok(sample()), "the v1 fields are enough");
        assert_eq!(ConnectionPolicy::from_bytes(&good[..MIN_LEN - 1]), Err(PolicyParseError::TooShort(55)));
        assert_eq!(ConnectionPolicy::from_bytes(&[]), Err(PolicyParseError::TooShort(0)));
        let mut v2 = good.clone();
        v2[4] = 2;
        v2[6..8].copy_from_slice(&1024u16.to_le_bytes());
        v2[52] |= 0x80; // a reserved flag a later version may define
        v2[100] = 0xAA; // a later version's field
        assert_eq!(ConnectionPolicy::from_bytes(&v2), Ok(sample()), "a later version is read as version 1");
        let mut v0 = good.clone();
        v0[4] = 0;
        assert_eq!(ConnectionPolicy::from_bytes(&v0), Err(PolicyParseError::BadVersion(0)));
        let mut short_len = good.clone();
        short_len[6..8].copy_from_slice(&40u16.to_le_bytes());
        assert_eq!(ConnectionPolicy::from_bytes(&short_len), Err(PolicyParseError::BadLength(40)));
        let mut bad = good;
        bad[0] = b'X';
        assert_eq!(ConnectionPolicy::from_bytes(&bad), Err(PolicyParseError::BadSignature(*b"XFPL")));
        assert_eq!(PolicyParseError::BadVersion(0).to_string(), "policy page version 0 is not supported");
    }

    #[test]
    fn changed_event() {
        // Vendor specific (7), information C0h, log page C0h: completion dword 0 = 00C0C007h.
        assert_eq!(policy_changed_event().to_dword(), 0x00C0_C007);
    }

    fn policy() -> impl Strategy<Value = ConnectionPolicy> {
        (any::<u64>(), any::<u64>(), any::<[u32; 7]>(), any::<bool>()).prop_map(|(instance_id, generation, v, vd)| {
            ConnectionPolicy {
                instance_id,
                generation,
                kato_ms: v[0],
                reconnect_delay_ms: v[1],
                reconnect_delay_max_ms: v[2],
                ctrl_loss_tmo_ms: v[3],
                fast_io_fail_tmo_ms: v[4],
                cqt_ms: v[5],
                planned_downtime_ms: v[6],
                volatile_data: vd,
            }
        })
    }

    proptest! {
        #[test]
        fn round_trip(p in policy()) {
            let page = p.to_log_page();
            prop_assert_eq!(ConnectionPolicy::from_bytes(page.as_bytes()), Ok(p));
            prop_assert_eq!(PolicyLogPage::from_slice(page.as_bytes()), Some(page));
        }

        #[test]
        fn parser_never_panics(b in proptest::collection::vec(any::<u8>(), 0..600)) {
            let _ = ConnectionPolicy::from_bytes(&b);
        }
    }
}
