//! The parts of the `holdfast` CLI that stand on their own: the NBD bridge ([`nbd`]), a library so that the
//! fuzz harness (`fuzz/fuzz_targets/nbd_server.rs`) drives the same code the binary serves clients with.

pub mod nbd;
