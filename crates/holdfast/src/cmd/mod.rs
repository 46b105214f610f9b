//! One module per CLI subcommand.

pub mod target;
pub mod target_ctl;
