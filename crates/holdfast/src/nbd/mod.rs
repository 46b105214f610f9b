//! The NBD bridge: a Network Block Device server whose export is one namespace of an NVMe/TCP controller,
//! so that programs that speak NBD (QEMU, `qemu-img`, `nbdcopy`, the Linux kernel's NBD client) use a
//! remote namespace unmodified, and ride through target outages the way the host library does.
//! [`wire`] holds the protocol's layouts and values; [`server`] one client connection; [`device`] the Linux
//! kernel's NBD device as the client (`holdfast nbd --device /dev/nbdN`).

pub mod device;
pub mod server;
pub mod wire;
