//! # holdfast-testkit
//!
//! Test support shared by the scenario tests and usable by people: [`proxy::Proxy`], a TCP proxy that
//! injects the faults a network has (reset every connection, blackhole with sockets left open, added
//! latency, a cut storm), controlled from Rust or over a line-based TCP control port.

pub mod proxy;
