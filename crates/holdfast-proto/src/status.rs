//! NVMe completion status (NVMe Base Specification 2.0, §4.6.1 "Status Field Definition",
//! Figures 93–101), with the names the specifications give each code.
//!
//! [`Status`] holds the 15-bit Status Field of a CQE (CQE Dword 3 bits 31:17, i.e. the 16-bit status word
//! without the phase tag): SC in bits 7:0, SCT in bits 10:8, CRD in bits 12:11, M (More) in bit 13 and DNR in
//! bit 14.

use core::fmt;

/// Status Code Types (Figure 93).
pub mod sct {
    /// Generic Command Status.
    pub const GENERIC: u8 = 0;
    /// Command Specific Status.
    pub const COMMAND_SPECIFIC: u8 = 1;
    /// Media and Data Integrity Errors.
    pub const MEDIA: u8 = 2;
    /// Path Related Status.
    pub const PATH: u8 = 3;
    /// Vendor Specific.
    pub const VENDOR: u8 = 7;
}

/// A CQE status field (without the phase tag).
#[derive(Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct Status(pub u16);

macro_rules! statuses {
    ($( $(#[$m:meta])* $name:ident = ($sct:expr, $sc:expr), )*) => {
        impl Status {
            $( $(#[$m])* pub const $name: Status = Status::new($sct, $sc); )*
        }
    };
}

statuses! {
    /// Successful Completion.
    SUCCESS = (sct::GENERIC, 0x00),
    /// Invalid Command Opcode.
    INVALID_OPCODE = (sct::GENERIC, 0x01),
    /// Invalid Field in Command.
    INVALID_FIELD = (sct::GENERIC, 0x02),
    /// Command ID Conflict.
    CID_CONFLICT = (sct::GENERIC, 0x03),
    /// Data Transfer Error.
    DATA_TRANSFER_ERROR = (sct::GENERIC, 0x04),
    /// Internal Error.
    INTERNAL_ERROR = (sct::GENERIC, 0x06),
    /// Command Abort Requested.
    ABORT_REQUESTED = (sct::GENERIC, 0x07),
    /// Command Aborted due to SQ Deletion.
    ABORTED_SQ_DELETION = (sct::GENERIC, 0x08),
    /// Command Aborted due to Failed Fused Command: the other command of its fused operation failed
    /// (NVMe Base 2.0 §3.4.2).
    ABORTED_FAILED_FUSED = (sct::GENERIC, 0x09),
    /// Command Aborted due to Missing Fused Command: the command next to it in the submission queue is not the
    /// other half of its fused operation (NVMe Base 2.0 §3.4.2).
    ABORTED_MISSING_FUSED = (sct::GENERIC, 0x0A),
    /// Invalid Namespace or Format.
    INVALID_NAMESPACE = (sct::GENERIC, 0x0B),
    /// Command Sequence Error.
    COMMAND_SEQUENCE_ERROR = (sct::GENERIC, 0x0C),
    /// Invalid SGL Segment Descriptor.
    INVALID_SGL_SEGMENT = (sct::GENERIC, 0x0D),
    /// Data SGL Length Invalid.
    SGL_LENGTH_INVALID = (sct::GENERIC, 0x0F),
    /// SGL Descriptor Type Invalid.
    SGL_TYPE_INVALID = (sct::GENERIC, 0x11),
    /// SGL Offset Invalid.
    SGL_OFFSET_INVALID = (sct::GENERIC, 0x16),
    /// Host Identifier Inconsistent Format (a Reservation Report without the extended data structure, where
    /// hosts are known by 128-bit Host Identifiers).
    HOST_ID_INCONSISTENT = (sct::GENERIC, 0x18),
    /// Keep Alive Timer Expired.
    KEEP_ALIVE_EXPIRED = (sct::GENERIC, 0x19),
    /// Keep Alive Timeout Invalid.
    KEEP_ALIVE_INVALID = (sct::GENERIC, 0x1A),
    /// Namespace is Write Protected.
    NS_WRITE_PROTECTED = (sct::GENERIC, 0x20),
    /// Transient Transport Error.
    TRANSIENT_TRANSPORT_ERROR = (sct::GENERIC, 0x22),
    /// LBA Out of Range.
    LBA_OUT_OF_RANGE = (sct::GENERIC, 0x80),
    /// Capacity Exceeded.
    CAPACITY_EXCEEDED = (sct::GENERIC, 0x81),
    /// Namespace Not Ready.
    NAMESPACE_NOT_READY = (sct::GENERIC, 0x82),
    /// Reservation Conflict: another host's reservation does not let this command through, or a reservation
    /// command's key or type does not match.
    RESERVATION_CONFLICT = (sct::GENERIC, 0x83),
    /// Invalid Queue Identifier.
    INVALID_QUEUE_ID = (sct::COMMAND_SPECIFIC, 0x01),
    /// Invalid Queue Size.
    INVALID_QUEUE_SIZE = (sct::COMMAND_SPECIFIC, 0x02),
    /// Abort Command Limit Exceeded.
    ABORT_LIMIT_EXCEEDED = (sct::COMMAND_SPECIFIC, 0x03),
    /// Asynchronous Event Request Limit Exceeded.
    AER_LIMIT_EXCEEDED = (sct::COMMAND_SPECIFIC, 0x05),
    /// Invalid Log Page.
    INVALID_LOG_PAGE = (sct::COMMAND_SPECIFIC, 0x09),
    /// Feature Identifier Not Saveable.
    FEATURE_NOT_SAVEABLE = (sct::COMMAND_SPECIFIC, 0x0D),
    /// Feature Not Changeable.
    FEATURE_NOT_CHANGEABLE = (sct::COMMAND_SPECIFIC, 0x0E),
    /// Feature Not Namespace Specific.
    FEATURE_NOT_NS_SPECIFIC = (sct::COMMAND_SPECIFIC, 0x0F),
    /// Fabrics: Incompatible Format.
    CONNECT_INCOMPATIBLE_FORMAT = (sct::COMMAND_SPECIFIC, 0x80),
    /// Fabrics: Controller Busy.
    CONNECT_CONTROLLER_BUSY = (sct::COMMAND_SPECIFIC, 0x81),
    /// Fabrics: Connect Invalid Parameters.
    CONNECT_INVALID_PARAMETERS = (sct::COMMAND_SPECIFIC, 0x82),
    /// Fabrics: Connect Restart Discovery.
    CONNECT_RESTART_DISCOVERY = (sct::COMMAND_SPECIFIC, 0x83),
    /// Fabrics: Connect Invalid Host.
    CONNECT_INVALID_HOST = (sct::COMMAND_SPECIFIC, 0x84),
    /// Fabrics: Discover Restart (a Get Log Page of the Discovery log: the log changed, read it again from the
    /// start; NVMe-oF 1.1 §5.3).
    DISCOVER_RESTART = (sct::COMMAND_SPECIFIC, 0x90),
    /// Fabrics: Authentication Required (a queue that must authenticate has not yet; NVMe-oF 1.1 §6.2,
    /// NVMe Base 2.0 §8.13).
    AUTHENTICATION_REQUIRED = (sct::COMMAND_SPECIFIC, 0x91),
    /// NVM: Conflicting Attributes (Dataset Management, Read, Write).
    CONFLICTING_ATTRIBUTES = (sct::COMMAND_SPECIFIC, 0x80),
    /// Write Fault.
    WRITE_FAULT = (sct::MEDIA, 0x80),
    /// Unrecovered Read Error.
    UNRECOVERED_READ_ERROR = (sct::MEDIA, 0x81),
    /// Compare Failure: a Compare command's data differs from the namespace's (NVM Command Set 1.0 §3.2.1).
    COMPARE_FAILURE = (sct::MEDIA, 0x85),
    /// Internal Path Error.
    INTERNAL_PATH_ERROR = (sct::PATH, 0x00),
    /// Asymmetric Access Persistent Loss: the namespace's ANA group is in the Persistent Loss state on this
    /// controller (NVMe Base 2.1 §8.1.1.5).
    ANA_PERSISTENT_LOSS = (sct::PATH, 0x01),
    /// Asymmetric Access Inaccessible: the namespace's ANA group is Inaccessible on this controller.
    ANA_INACCESSIBLE = (sct::PATH, 0x02),
    /// Asymmetric Access Transition: the namespace's ANA group is changing state on this controller (retry
    /// within ANATT).
    ANA_TRANSITION = (sct::PATH, 0x03),
    /// Controller Pathing Error.
    CONTROLLER_PATHING_ERROR = (sct::PATH, 0x60),
    /// Host Pathing Error.
    HOST_PATHING_ERROR = (sct::PATH, 0x70),
    /// Command Aborted By Host.
    HOST_ABORTED = (sct::PATH, 0x71),
}

impl Status {
    /// A status with the given Status Code Type and Status Code; CRD, More and DNR clear.
    pub const fn new(sct: u8, sc: u8) -> Status {
        Status(((sct as u16 & 0x7) << 8) | sc as u16)
    }
    /// From the 16-bit status word of a CQE (bit 0 is the phase tag, dropped).
    pub const fn from_cqe_word(word: u16) -> Status {
        Status(word >> 1)
    }
    /// The 16-bit status word for a CQE, with the given phase tag.
    pub const fn to_cqe_word(self, phase: bool) -> u16 {
        (self.0 << 1) | phase as u16
    }
    /// Status Code.
    pub const fn sc(self) -> u8 {
        self.0 as u8
    }
    /// Status Code Type.
    pub const fn sct(self) -> u8 {
        ((self.0 >> 8) & 0x7) as u8
    }
    /// Command Retry Delay: 0 none, 1..3 select CRDT1..CRDT3 of Identify Controller.
    pub const fn crd(self) -> u8 {
        ((self.0 >> 11) & 0x3) as u8
    }
    /// More: more status information in the Error Information log.
    pub const fn more(self) -> bool {
        self.0 & (1 << 13) != 0
    }
    /// Do Not Retry.
    pub const fn dnr(self) -> bool {
        self.0 & (1 << 14) != 0
    }
    /// This status with DNR set.
    #[must_use]
    pub const fn with_dnr(self) -> Status {
        Status(self.0 | (1 << 14))
    }
    /// This status with More set: the Error Information log has an entry for the command.
    #[must_use]
    pub const fn with_more(self) -> Status {
        Status(self.0 | (1 << 13))
    }
    /// This status with the Command Retry Delay field set (0..=3).
    #[must_use]
    pub const fn with_crd(self, crd: u8) -> Status {
        Status((self.0 & !(0x3 << 11)) | (((crd as u16) & 0x3) << 11))
    }
    /// True for Successful Completion (SCT 0, SC 0), whatever CRD/M/DNR say.
    pub const fn is_success(self) -> bool {
        self.sct() == 0 && self.sc() == 0
    }
    /// SCT and SC only, for comparisons that ignore CRD, More and DNR.
    pub const fn code(self) -> Status {
        Status(self.0 & 0x7FF)
    }
    /// True for a Path Related Status (SCT 3): the command may succeed on another path or after a reconnect.
    pub const fn is_path_error(self) -> bool {
        self.sct() == sct::PATH
    }

    /// The name the specification gives this status. `fabrics` selects the Fabrics meaning of command
    /// specific codes 0x80.. (they mean different things for Connect than for NVM I/O commands).
    pub fn name(self, fabrics: bool) -> &'static str {
        match (self.sct(), self.sc()) {
            (0, 0x00) => "Successful Completion",
            (0, 0x01) => "Invalid Command Opcode",
            (0, 0x02) => "Invalid Field in Command",
            (0, 0x03) => "Command ID Conflict",
            (0, 0x04) => "Data Transfer Error",
            (0, 0x05) => "Commands Aborted due to Power Loss Notification",
            (0, 0x06) => "Internal Error",
            (0, 0x07) => "Command Abort Requested",
            (0, 0x08) => "Command Aborted due to SQ Deletion",
            (0, 0x09) => "Command Aborted due to Failed Fused Command",
            (0, 0x0A) => "Command Aborted due to Missing Fused Command",
            (0, 0x0B) => "Invalid Namespace or Format",
            (0, 0x0C) => "Command Sequence Error",
            (0, 0x0D) => "Invalid SGL Segment Descriptor",
            (0, 0x0E) => "Invalid Number of SGL Descriptors",
            (0, 0x0F) => "Data SGL Length Invalid",
            (0, 0x10) => "Metadata SGL Length Invalid",
            (0, 0x11) => "SGL Descriptor Type Invalid",
            (0, 0x12) => "Invalid Use of Controller Memory Buffer",
            (0, 0x13) => "PRP Offset Invalid",
            (0, 0x14) => "Atomic Write Unit Exceeded",
            (0, 0x15) => "Operation Denied",
            (0, 0x16) => "SGL Offset Invalid",
            (0, 0x18) => "Host Identifier Inconsistent Format",
            (0, 0x19) => "Keep Alive Timer Expired",
            (0, 0x1A) => "Keep Alive Timeout Invalid",
            (0, 0x1B) => "Command Aborted due to Preempt and Abort",
            (0, 0x1C) => "Sanitize Failed",
            (0, 0x1D) => "Sanitize In Progress",
            (0, 0x1E) => "SGL Data Block Granularity Invalid",
            (0, 0x20) => "Namespace is Write Protected",
            (0, 0x21) => "Command Interrupted",
            (0, 0x22) => "Transient Transport Error",
            (0, 0x80) => "LBA Out of Range",
            (0, 0x81) => "Capacity Exceeded",
            (0, 0x82) => "Namespace Not Ready",
            (0, 0x83) => "Reservation Conflict",
            (0, 0x84) => "Format In Progress",
            (1, 0x00) => "Completion Queue Invalid",
            (1, 0x01) => "Invalid Queue Identifier",
            (1, 0x02) => "Invalid Queue Size",
            (1, 0x03) => "Abort Command Limit Exceeded",
            (1, 0x05) => "Asynchronous Event Request Limit Exceeded",
            (1, 0x06) => "Invalid Firmware Slot",
            (1, 0x07) => "Invalid Firmware Image",
            (1, 0x08) => "Invalid Interrupt Vector",
            (1, 0x09) => "Invalid Log Page",
            (1, 0x0A) => "Invalid Format",
            (1, 0x0B) => "Firmware Activation Requires Conventional Reset",
            (1, 0x0C) => "Invalid Queue Deletion",
            (1, 0x0D) => "Feature Identifier Not Saveable",
            (1, 0x0E) => "Feature Not Changeable",
            (1, 0x0F) => "Feature Not Namespace Specific",
            (1, 0x80) if fabrics => "Incompatible Format",
            (1, 0x81) if fabrics => "Controller Busy",
            (1, 0x82) if fabrics => "Connect Invalid Parameters",
            (1, 0x83) if fabrics => "Connect Restart Discovery",
            (1, 0x84) if fabrics => "Connect Invalid Host",
            (1, 0x85) if fabrics => "Invalid Queue Type",
            (1, 0x90) if fabrics => "Discover Restart",
            (1, 0x91) if fabrics => "Authentication Required",
            (1, 0x80) => "Conflicting Attributes",
            (1, 0x81) => "Invalid Protection Information",
            (1, 0x82) => "Attempted Write to Read Only Range",
            (2, 0x80) => "Write Fault",
            (2, 0x81) => "Unrecovered Read Error",
            (2, 0x82) => "End-to-end Guard Check Error",
            (2, 0x83) => "End-to-end Application Tag Check Error",
            (2, 0x84) => "End-to-end Reference Tag Check Error",
            (2, 0x85) => "Compare Failure",
            (2, 0x86) => "Access Denied",
            (2, 0x87) => "Deallocated or Unwritten Logical Block",
            (3, 0x00) => "Internal Path Error",
            (3, 0x01) => "Asymmetric Access Persistent Loss",
            (3, 0x02) => "Asymmetric Access Inaccessible",
            (3, 0x03) => "Asymmetric Access Transition",
            (3, 0x60) => "Controller Pathing Error",
            (3, 0x70) => "Host Pathing Error",
            (3, 0x71) => "Command Aborted By Host",
            (7, _) => "Vendor Specific",
            _ => "Reserved",
        }
    }
}

impl fmt::Debug for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "Status(sct {:#x}, sc {:#04x}", self.sct(), self.sc())?;
        if self.crd() != 0 {
            write!(f, ", crd {}", self.crd())?;
        }
        if self.more() {
            write!(f, ", more")?;
        }
        if self.dnr() {
            write!(f, ", dnr")?;
        }
        write!(f, ": {})", self.name(false))
    }
}

impl fmt::Display for Status {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{} (sct {:#x}, sc {:#04x}{})",
            self.name(false),
            self.sct(),
            self.sc(),
            if self.dnr() { ", dnr" } else { "" }
        )
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bit_positions_match_figure_92() {
        // CQE DW3 bits 31:17 = status field; 16-bit word bit 0 = phase.
        let s = Status::LBA_OUT_OF_RANGE.with_dnr().with_crd(2);
        let w = s.to_cqe_word(true);
        assert_eq!(w & 1, 1, "phase tag");
        assert_eq!((w >> 1) & 0xFF, 0x80, "SC bits 8:1");
        assert_eq!((w >> 9) & 0x7, 0, "SCT bits 11:9");
        assert_eq!((w >> 12) & 0x3, 2, "CRD bits 13:12");
        assert_eq!((w >> 15) & 1, 1, "DNR bit 15");
        assert_eq!(Status::from_cqe_word(w), s);
        assert_eq!(s.code(), Status::LBA_OUT_OF_RANGE);
    }

    #[test]
    fn names_depend_on_fabrics_context() {
        assert_eq!(Status::CONNECT_INVALID_HOST.name(true), "Connect Invalid Host");
        assert_eq!(Status::new(1, 0x80).name(false), "Conflicting Attributes");
        assert_eq!(Status::new(1, 0x82).name(true), "Connect Invalid Parameters");
        assert!(Status::HOST_PATHING_ERROR.is_path_error());
        assert!(Status::SUCCESS.with_dnr().is_success());
    }
}
