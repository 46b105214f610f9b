//! Feature identifiers and value encodings (NVMe Base Specification 2.0, §5.27.1 Figure 317 "Feature
//! Identifiers", and the per-feature figures that follow), and the Asynchronous Event completion (§5.2).

/// Arbitration.
pub const ARBITRATION: u8 = 0x01;
/// Power Management.
pub const POWER_MANAGEMENT: u8 = 0x02;
/// LBA Range Type.
pub const LBA_RANGE_TYPE: u8 = 0x03;
/// Temperature Threshold.
pub const TEMPERATURE_THRESHOLD: u8 = 0x04;
/// Error Recovery.
pub const ERROR_RECOVERY: u8 = 0x05;
/// Volatile Write Cache.
pub const VOLATILE_WRITE_CACHE: u8 = 0x06;
/// Number of Queues.
pub const NUMBER_OF_QUEUES: u8 = 0x07;
/// Interrupt Coalescing.
pub const INTERRUPT_COALESCING: u8 = 0x08;
/// Interrupt Vector Configuration.
pub const INTERRUPT_VECTOR_CONFIG: u8 = 0x09;
/// Write Atomicity Normal.
pub const WRITE_ATOMICITY: u8 = 0x0A;
/// Asynchronous Event Configuration.
pub const ASYNC_EVENT_CONFIG: u8 = 0x0B;
/// Autonomous Power State Transition.
pub const APST: u8 = 0x0C;
/// Host Memory Buffer.
pub const HOST_MEMORY_BUFFER: u8 = 0x0D;
/// Timestamp.
pub const TIMESTAMP: u8 = 0x0E;
/// Keep Alive Timer.
pub const KEEP_ALIVE_TIMER: u8 = 0x0F;
/// Host Controlled Thermal Management.
pub const HOST_THERMAL_MGMT: u8 = 0x10;
/// Non-Operational Power State Config.
pub const NOPSC: u8 = 0x11;
/// Host Behavior Support.
pub const HOST_BEHAVIOR_SUPPORT: u8 = 0x16;
/// Software Progress Marker.
pub const SOFTWARE_PROGRESS_MARKER: u8 = 0x80;
/// Host Identifier.
pub const HOST_IDENTIFIER: u8 = 0x81;
/// Reservation Notification Mask.
pub const RESERVATION_NOTIFICATION_MASK: u8 = 0x82;
/// Reservation Persistence.
pub const RESERVATION_PERSISTENCE: u8 = 0x83;

/// The specification's name of a feature.
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
        HOST_BEHAVIOR_SUPPORT => "Host Behavior Support",
        SOFTWARE_PROGRESS_MARKER => "Software Progress Marker",
        HOST_IDENTIFIER => "Host Identifier",
        RESERVATION_NOTIFICATION_MASK => "Reservation Notification Mask",
        RESERVATION_PERSISTENCE => "Reservation Persistence",
        _ => "Unknown feature",
    }
}

/// Number of Queues value (Figure 322): 0's based counts, NCQR in bits 31:16, NSQR in 15:0.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct NumberOfQueues {
    /// Submission queues, 0's based.
    pub nsqr: u16,
    /// Completion queues, 0's based.
    pub ncqr: u16,
}

impl NumberOfQueues {
    /// As dword 11 / completion dword 0.
    pub fn to_dword(self) -> u32 {
        self.nsqr as u32 | (self.ncqr as u32) << 16
    }
    /// From a dword.
    pub fn from_dword(v: u32) -> Self {
        NumberOfQueues { nsqr: v as u16, ncqr: (v >> 16) as u16 }
    }
}

/// Asynchronous event types (completion dword 0 bits 2:0, Figure 146).
pub mod event_type {
    /// Error status.
    pub const ERROR: u8 = 0;
    /// SMART / Health status.
    pub const SMART: u8 = 1;
    /// Notice.
    pub const NOTICE: u8 = 2;
    /// I/O command specific status.
    pub const IO_SPECIFIC: u8 = 6;
    /// Vendor specific.
    pub const VENDOR: u8 = 7;
}

/// Notice event information (Figure 149).
pub mod notice {
    /// Namespace Attribute Changed.
    pub const NS_ATTR_CHANGED: u8 = 0x00;
    /// Firmware Activation Starting.
    pub const FW_ACTIVATION: u8 = 0x01;
    /// Telemetry Log Changed.
    pub const TELEMETRY: u8 = 0x02;
    /// ANA Change.
    pub const ANA_CHANGE: u8 = 0x03;
    /// Discovery Log Page Change.
    pub const DISCOVERY_CHANGE: u8 = 0xF0;
}

/// An Asynchronous Event Request completion dword 0 (Figure 146).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct AsyncEvent {
    /// Event type (bits 2:0).
    pub event_type: u8,
    /// Event information (bits 15:8).
    pub info: u8,
    /// Log page to read (bits 23:16).
    pub log_page: u8,
}

impl AsyncEvent {
    /// Encode.
    pub fn to_dword(self) -> u32 {
        (self.event_type as u32 & 0x7) | (self.info as u32) << 8 | (self.log_page as u32) << 16
    }
    /// Decode.
    pub fn from_dword(v: u32) -> Self {
        AsyncEvent { event_type: (v & 0x7) as u8, info: (v >> 8) as u8, log_page: (v >> 16) as u8 }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn encodings() {
        assert_eq!(NumberOfQueues { nsqr: 1, ncqr: 3 }.to_dword(), 0x0003_0001);
        let e = AsyncEvent { event_type: event_type::NOTICE, info: notice::NS_ATTR_CHANGED, log_page: 0x04 };
        assert_eq!(e.to_dword(), 0x0004_0002);
        assert_eq!(AsyncEvent::from_dword(0x0004_0002), e);
        assert_eq!(feature_name(KEEP_ALIVE_TIMER), "Keep Alive Timer");
    }
}
