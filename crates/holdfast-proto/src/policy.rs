//! holdfast's connection-policy log page (design §3): a vendor-specific log page (LID C0h) served by the
//! discovery controller and by every I/O controller, telling hosts how long to ride through an outage.
//!
//! | offset | size | field | meaning |
//! |---|---|---|---|
//! | 0 | 4 | signature | `HFPL` |
//! | 4 | 2 | version | 1 |
//! | 6 | 2 | length | 512: bytes of this structure |
//! | 8 | 8 | instance_id | changes at every target start |
//! | 16 | 8 | generation | increments when the policy changes |
//! | 24 | 4 | kato_ms | keep-alive timeout hosts should request |
//! | 28 | 4 | reconnect_delay_ms | first delay between reconnect attempts |
//! | 32 | 4 | reconnect_delay_max_ms | cap of the exponential backoff |
//! | 36 | 4 | ctrl_loss_tmo_ms | give up after this long (FFFFFFFFh: never) |
//! | 40 | 4 | fast_io_fail_tmo_ms | fail queued I/O after this long, keep reconnecting (0: off) |
//! | 44 | 4 | cqt_ms | command quiesce time |
//! | 48 | 4 | planned_downtime_ms | an announced restart: hosts keep I/O queued at least this long (0: none) |
//! | 52 | 4 | flags | reserved, 0 |
//! | 56 | 456 | reserved | 0 |
//!
//! All integers little-endian.

use zerocopy::little_endian::{U16, U32, U64};
use zerocopy::{FromBytes, FromZeros, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Log identifier of the policy page (vendor-specific range C0h–FFh).
pub const LID_HOLDFAST_POLICY: u8 = 0xC0;
/// Asynchronous event information of a vendor-specific "policy changed" notice (event type 7).
pub const AEN_INFO_POLICY_CHANGED: u8 = 0xC0;
/// Signature.
pub const SIGNATURE: [u8; 4] = *b"HFPL";
/// Current version.
pub const VERSION: u16 = 1;
/// Bytes of the v1 fields a reader needs.
pub const MIN_LEN: usize = 56;

/// The policy page as it is on the wire (512 bytes; layout in the module documentation).
#[derive(Clone, Copy, Debug, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct PolicyLogPage {
    /// `HFPL`.
    pub signature: [u8; 4],
    /// Version.
    pub version: U16,
    /// Length of the structure.
    pub length: U16,
    /// Target instance.
    pub instance_id: U64,
    /// Policy generation.
    pub generation: U64,
    /// Keep-alive timeout.
    pub kato_ms: U32,
    /// First reconnect delay.
    pub reconnect_delay_ms: U32,
    /// Backoff cap.
    pub reconnect_delay_max_ms: U32,
    /// Controller loss timeout.
    pub ctrl_loss_tmo_ms: U32,
    /// Fast I/O fail timeout.
    pub fast_io_fail_tmo_ms: U32,
    /// Command quiesce time.
    pub cqt_ms: U32,
    /// Planned downtime.
    pub planned_downtime_ms: U32,
    /// Flags.
    pub flags: U32,
    /// Reserved.
    pub rsvd56: [u8; 456],
}
const _: () = assert!(core::mem::size_of::<PolicyLogPage>() == 512);
const _: () = assert!(core::mem::offset_of!(PolicyLogPage, kato_ms) == 24);
const _: () = assert!(core::mem::offset_of!(PolicyLogPage, ctrl_loss_tmo_ms) == 36);
const _: () = assert!(core::mem::offset_of!(PolicyLogPage, planned_downtime_ms) == 48);
const _: () = assert!(core::mem::offset_of!(PolicyLogPage, rsvd56) == MIN_LEN);

/// The policy as plain values.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ConnectionPolicy {
    /// Target instance.
    pub instance_id: u64,
    /// Policy generation.
    pub generation: u64,
    /// Keep-alive timeout.
    pub kato_ms: u32,
    /// First reconnect delay.
    pub reconnect_delay_ms: u32,
    /// Backoff cap.
    pub reconnect_delay_max_ms: u32,
    /// Controller loss timeout (u32::MAX: never).
    pub ctrl_loss_tmo_ms: u32,
    /// Fast I/O fail timeout (0: off).
    pub fast_io_fail_tmo_ms: u32,
    /// Command quiesce time.
    pub cqt_ms: u32,
    /// Planned downtime (0: none).
    pub planned_downtime_ms: u32,
}

/// Why a policy page was not accepted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum PolicyParseError {
    /// Shorter than the v1 fields.
    #[error("policy page too short")]
    TooShort,
    /// Not `HFPL`.
    #[error("policy page has no HFPL signature")]
    BadSignature,
    /// Version 0.
    #[error("policy page version 0")]
    BadVersion,
}

impl ConnectionPolicy {
    /// The wire form.
    pub fn to_log_page(&self) -> PolicyLogPage {
        let mut p = PolicyLogPage::new_zeroed();
        p.signature = SIGNATURE;
        p.version.set(VERSION);
        p.length.set(512);
        p.instance_id.set(self.instance_id);
        p.generation.set(self.generation);
        p.kato_ms.set(self.kato_ms);
        p.reconnect_delay_ms.set(self.reconnect_delay_ms);
        p.reconnect_delay_max_ms.set(self.reconnect_delay_max_ms);
        p.ctrl_loss_tmo_ms.set(self.ctrl_loss_tmo_ms);
        p.fast_io_fail_tmo_ms.set(self.fast_io_fail_tmo_ms);
        p.cqt_ms.set(self.cqt_ms);
        p.planned_downtime_ms.set(self.planned_downtime_ms);
        p
    }

    /// Parse a page (any version ≥ 1; only the v1 fields are read).
    pub fn from_bytes(b: &[u8]) -> Result<Self, PolicyParseError> {
        if b.len() < MIN_LEN {
            return Err(PolicyParseError::TooShort);
        }
        let mut full = [0u8; 512];
        let n = b.len().min(512);
        full[..n].copy_from_slice(&b[..n]);
        let p = PolicyLogPage::read_from_bytes(&full).map_err(|_| PolicyParseError::TooShort)?;
        if p.signature != SIGNATURE {
            return Err(PolicyParseError::BadSignature);
        }
        if p.version.get() == 0 {
            return Err(PolicyParseError::BadVersion);
        }
        Ok(ConnectionPolicy {
            instance_id: p.instance_id.get(),
            generation: p.generation.get(),
            kato_ms: p.kato_ms.get(),
            reconnect_delay_ms: p.reconnect_delay_ms.get(),
            reconnect_delay_max_ms: p.reconnect_delay_max_ms.get(),
            ctrl_loss_tmo_ms: p.ctrl_loss_tmo_ms.get(),
            fast_io_fail_tmo_ms: p.fast_io_fail_tmo_ms.get(),
            cqt_ms: p.cqt_ms.get(),
            planned_downtime_ms: p.planned_downtime_ms.get(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn golden_and_roundtrip() {
        let p = ConnectionPolicy {
            instance_id: 9,
            generation: 2,
            kato_ms: 2000,
            ctrl_loss_tmo_ms: 5000,
            cqt_ms: 100,
            ..Default::default()
        };
        let page = p.to_log_page();
        let b = page.as_bytes();
        assert_eq!(&b[..8], &[b'H', b'F', b'P', b'L', 1, 0, 0, 2]);
        assert_eq!(&b[24..28], &2000u32.to_le_bytes());
        assert_eq!(&b[36..40], &5000u32.to_le_bytes());
        assert_eq!(ConnectionPolicy::from_bytes(b), Ok(p));
        assert_eq!(ConnectionPolicy::from_bytes(&b[..56]), Ok(p));
        assert_eq!(ConnectionPolicy::from_bytes(&b[..40]), Err(PolicyParseError::TooShort));
        let mut bad = b.to_vec();
        bad[0] = b'X';
        assert_eq!(ConnectionPolicy::from_bytes(&bad), Err(PolicyParseError::BadSignature));
    }
}
