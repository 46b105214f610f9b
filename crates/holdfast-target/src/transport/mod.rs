//! Transports. The command core ([`crate::cmd`]) sees a command as a [`crate::request::Request`] plus the
//! bytes the transport collected for it, and answers with a [`crate::request::Response`]; how those bytes
//! crossed the wire (in-capsule, R2T + H2CData, C2HData) is the transport's business alone. TCP is the only
//! transport today.

pub mod admission;
pub mod tcp;
