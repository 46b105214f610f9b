//! One module per CLI subcommand.

pub mod bench;
pub mod common;
pub mod discover;
pub mod gen_key;
pub mod identify;
pub mod io;
pub mod log;
pub mod nbd;
pub mod proxy;
pub mod resv;
pub mod target;
pub mod target_ctl;
