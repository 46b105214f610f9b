//! # holdfast-host: an NVMe/TCP host (initiator)
//!
//! [`Controller::connect`] opens an association (admin queue, enable, Identify, I/O queues, keep-alive,
//! asynchronous events); [`Namespace`] gives async read / write / flush / write-zeroes / deallocate over it;
//! [`discover`] reads a discovery log.
//!
//! Each queue is one task that owns its TCP connection ([`queue`]); callers reach it through a channel
//! ([`submit`]) that outlives the connection, and a failed connection hands back its unfinished commands with
//! their buffers — the structure reconnection (README, Ride-through) builds on.

mod auth;
pub mod controller;
pub mod discovery;
pub mod error;
pub mod namespace;
pub mod options;
pub mod policy;
pub mod queue;
pub mod reply;
pub mod submit;
pub mod transport;

pub use controller::Controller;
pub use discovery::{discover, discover_with_policy, DiscoveryEntry};
pub use error::{Error, Result};
pub use namespace::Namespace;
pub use options::{ConnectOptions, CTRL_LOSS_NEVER};
pub use reply::Reply;
