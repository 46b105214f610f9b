//! # holdfast-target: an NVMe/TCP target
//!
//! A [`subsystem::Target`] holds NVM subsystems (each with namespaces on a [`backend::Backend`]) and the
//! discovery subsystem; [`server::Server`] exports them on TCP ports. A host's admin-queue Connect creates a
//! [`controller::Controller`]; each queue is one connection task in [`transport::tcp`].
//!
//! Commands are parsed once into a [`request::Request`] whose execute step is chosen at parse time, and run
//! by the handler for their command set, one file each: [`cmd::fabrics`], [`cmd::admin`], [`cmd::log_page`],
//! [`cmd::discovery`], [`cmd::io`]. The transport only moves bytes; it never looks inside a command. Work
//! that may block (a file namespace) comes back as a [`request::Deferred`], run on the namespace's own
//! threads ([`backend::pool`]); the transport only says where its response goes.
//!
//! Configuration is [`config::Config`] (a TOML file or the quick mode's flags).

pub mod ana;
pub mod backend;
pub mod cmd;
pub mod config;
pub mod control;
pub mod controller;
pub mod namespace;
pub mod peer_log;
pub mod request;
pub mod server;
pub mod subsystem;
pub mod transport;

/// Highest NSID a subsystem may hold (Identify Controller NN).
pub const MAX_NSID: u32 = 1024;

pub use config::Config;
pub use server::Server;
pub use subsystem::{Target, TargetSettings};
