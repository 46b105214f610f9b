//! # holdfast-proto: the NVMe/TCP wire protocol, sans I/O
//!
//! This crate is deterministic: it has no sockets, no threads, no async runtime and never reads a clock.
//! Bytes go in, typed PDUs and commands come out, and the same input always gives the same output. The
//! target and the host drive it from their own I/O layers.
//!
//! The central types:
//! - [`pdu::Pdu`], the nine NVMe/TCP PDUs, with [`pdu::Framing`] (negotiated digests and alignment) for
//!   encoding;
//! - [`decoder::PduDecoder`], the streaming decoder that bounds every length by what was negotiated and
//!   turns every framing violation into a [`decoder::Fatal`] carrying the TermReq's FES/FEI;
//! - [`send::SendQueue`], outgoing PDUs arranged for one vectored write, data referenced rather than copied,
//!   and [`reassembly::Reassembly`], incoming data kept where the decoder left it;
//! - [`sqe::SubmissionEntry`] and [`cqe::CompletionEntry`] with [`status::Status`];
//! - the data structures commands carry: [`fabrics`] (Connect, Property Get/Set), [`identify`],
//!   [`log_page`] (including the discovery log), [`features`], [`reservation`], and [`policy`], holdfast's
//!   vendor-specific connection-policy log page.
//!
//! Every fixed layout is a `#[repr(C)]` struct whose doc comment names the specification figure it follows
//! and whose field offsets are asserted at compile time: that is the one place byte offsets are written.

#![forbid(unsafe_code)]
#![warn(missing_docs)]

pub mod auth;
pub mod cqe;
pub mod decoder;
pub mod digest;
pub mod fabrics;
pub mod features;
pub mod identify;
pub mod log_page;
pub mod opcode;
pub mod pdu;
pub mod policy;
pub mod reassembly;
pub mod reservation;
pub mod send;
pub mod sgl;
pub mod sqe;
pub mod status;

pub use cqe::CompletionEntry;
pub use decoder::{DecodeError, Fatal, Limits, PduDecoder, Role};
pub use pdu::{Framing, Pdu, PduType};
pub use reassembly::Reassembly;
pub use send::SendQueue;
pub use sqe::SubmissionEntry;
pub use status::Status;
