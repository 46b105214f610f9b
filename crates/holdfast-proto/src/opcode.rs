//! Command opcodes (NVMe Base Specification 2.0, Figure 28 "Opcodes for Admin Commands";
//! NVM Command Set Specification 1.0, Figure 17 "Opcodes for NVM Commands"; NVMe over Fabrics 1.1,
//! Figure 18 "Fabrics Command Type").

/// Admin command opcodes.
pub mod admin {
    /// Delete I/O Submission Queue (not used on fabrics).
    pub const DELETE_SQ: u8 = 0x00;
    /// Create I/O Submission Queue (not used on fabrics).
    pub const CREATE_SQ: u8 = 0x01;
    /// Get Log Page.
    pub const GET_LOG_PAGE: u8 = 0x02;
    /// Delete I/O Completion Queue (not used on fabrics).
    pub const DELETE_CQ: u8 = 0x04;
    /// Create I/O Completion Queue (not used on fabrics).
    pub const CREATE_CQ: u8 = 0x05;
    /// Identify.
    pub const IDENTIFY: u8 = 0x06;
    /// Abort.
    pub const ABORT: u8 = 0x08;
    /// Set Features.
    pub const SET_FEATURES: u8 = 0x09;
    /// Get Features.
    pub const GET_FEATURES: u8 = 0x0A;
    /// Asynchronous Event Request.
    pub const ASYNC_EVENT_REQUEST: u8 = 0x0C;
    /// Namespace Management.
    pub const NS_MANAGEMENT: u8 = 0x0D;
    /// Firmware Commit.
    pub const FIRMWARE_COMMIT: u8 = 0x10;
    /// Firmware Image Download.
    pub const FIRMWARE_DOWNLOAD: u8 = 0x11;
    /// Device Self-test.
    pub const DEVICE_SELF_TEST: u8 = 0x14;
    /// Namespace Attachment.
    pub const NS_ATTACHMENT: u8 = 0x15;
    /// Keep Alive.
    pub const KEEP_ALIVE: u8 = 0x18;
    /// Directive Send.
    pub const DIRECTIVE_SEND: u8 = 0x19;
    /// Directive Receive.
    pub const DIRECTIVE_RECEIVE: u8 = 0x1A;
    /// Virtualization Management.
    pub const VIRT_MANAGEMENT: u8 = 0x1C;
    /// NVMe-MI Send.
    pub const NVME_MI_SEND: u8 = 0x1D;
    /// NVMe-MI Receive.
    pub const NVME_MI_RECEIVE: u8 = 0x1E;
    /// Doorbell Buffer Config.
    pub const DOORBELL_BUFFER_CONFIG: u8 = 0x7C;
    /// Format NVM.
    pub const FORMAT_NVM: u8 = 0x80;
    /// Security Send.
    pub const SECURITY_SEND: u8 = 0x81;
    /// Security Receive.
    pub const SECURITY_RECEIVE: u8 = 0x82;
    /// Sanitize.
    pub const SANITIZE: u8 = 0x84;
    /// holdfast's Fence Association (vendor specific, C0h–FFh): ends the issuing host's previous association
    /// (CDW10 bits 15:0: its CNTLID; CDW11 and CDW12: the low and high 32 bits of its uniquifier, from
    /// [`crate::identify::IdentifyController::holdfast_uniquifier`]) and reports in completion Dword 0 how many
    /// commands of that host's ended associations are still in flight. A reconnecting host issues it until that is 0, before it issues
    /// anything again (README, No stale writes).
    pub const HOLDFAST_FENCE_ASSOCIATION: u8 = 0xC1;
}

/// NVM command set I/O opcodes.
pub mod io {
    /// Flush.
    pub const FLUSH: u8 = 0x00;
    /// Write.
    pub const WRITE: u8 = 0x01;
    /// Read.
    pub const READ: u8 = 0x02;
    /// Write Uncorrectable.
    pub const WRITE_UNCORRECTABLE: u8 = 0x04;
    /// Compare.
    pub const COMPARE: u8 = 0x05;
    /// Write Zeroes.
    pub const WRITE_ZEROES: u8 = 0x08;
    /// Dataset Management.
    pub const DATASET_MANAGEMENT: u8 = 0x09;
    /// Verify.
    pub const VERIFY: u8 = 0x0C;
    /// Reservation Register.
    pub const RESERVATION_REGISTER: u8 = 0x0D;
    /// Reservation Report.
    pub const RESERVATION_REPORT: u8 = 0x0E;
    /// Reservation Acquire.
    pub const RESERVATION_ACQUIRE: u8 = 0x11;
    /// Reservation Release.
    pub const RESERVATION_RELEASE: u8 = 0x15;
}

/// The Fabrics command opcode (all Fabrics commands share it; byte 4 of the SQE is FCTYPE).
pub const FABRICS: u8 = 0x7F;

/// Fabrics command types, SQE byte 4 (NVMe over Fabrics 1.1, Figure 18).
pub mod fctype {
    /// Property Set.
    pub const PROPERTY_SET: u8 = 0x00;
    /// Connect.
    pub const CONNECT: u8 = 0x01;
    /// Property Get.
    pub const PROPERTY_GET: u8 = 0x04;
    /// Authentication Send.
    pub const AUTH_SEND: u8 = 0x05;
    /// Authentication Receive.
    pub const AUTH_RECEIVE: u8 = 0x06;
    /// Disconnect.
    pub const DISCONNECT: u8 = 0x08;
}

/// A human-readable name for an admin opcode.
pub fn admin_name(op: u8) -> &'static str {
    use admin::*;
    match op {
        DELETE_SQ => "Delete I/O SQ",
        CREATE_SQ => "Create I/O SQ",
        GET_LOG_PAGE => "Get Log Page",
        DELETE_CQ => "Delete I/O CQ",
        CREATE_CQ => "Create I/O CQ",
        IDENTIFY => "Identify",
        ABORT => "Abort",
        SET_FEATURES => "Set Features",
        GET_FEATURES => "Get Features",
        ASYNC_EVENT_REQUEST => "Asynchronous Event Request",
        NS_MANAGEMENT => "Namespace Management",
        FIRMWARE_COMMIT => "Firmware Commit",
        FIRMWARE_DOWNLOAD => "Firmware Image Download",
        DEVICE_SELF_TEST => "Device Self-test",
        NS_ATTACHMENT => "Namespace Attachment",
        KEEP_ALIVE => "Keep Alive",
        DIRECTIVE_SEND => "Directive Send",
        DIRECTIVE_RECEIVE => "Directive Receive",
        FORMAT_NVM => "Format NVM",
        SECURITY_SEND => "Security Send",
        SECURITY_RECEIVE => "Security Receive",
        SANITIZE => "Sanitize",
        HOLDFAST_FENCE_ASSOCIATION => "Fence Association (holdfast)",
        FABRICS => "Fabrics",
        _ => "Unknown admin command",
    }
}

/// A human-readable name for an NVM I/O opcode.
pub fn io_name(op: u8) -> &'static str {
    use io::*;
    match op {
        FLUSH => "Flush",
        WRITE => "Write",
        READ => "Read",
        WRITE_UNCORRECTABLE => "Write Uncorrectable",
        COMPARE => "Compare",
        WRITE_ZEROES => "Write Zeroes",
        DATASET_MANAGEMENT => "Dataset Management",
        VERIFY => "Verify",
        RESERVATION_REGISTER => "Reservation Register",
        RESERVATION_REPORT => "Reservation Report",
        RESERVATION_ACQUIRE => "Reservation Acquire",
        RESERVATION_RELEASE => "Reservation Release",
        FABRICS => "Fabrics",
        _ => "Unknown I/O command",
    }
}

/// A human-readable name for a Fabrics command type.
pub fn fctype_name(fct: u8) -> &'static str {
    use fctype::*;
    match fct {
        PROPERTY_SET => "Property Set",
        CONNECT => "Connect",
        PROPERTY_GET => "Property Get",
        AUTH_SEND => "Authentication Send",
        AUTH_RECEIVE => "Authentication Receive",
        DISCONNECT => "Disconnect",
        _ => "Unknown Fabrics command",
    }
}
