//! The in-process target the end-to-end harnesses run against: one port on loopback (an ephemeral port), one
//! subsystem any host may use, its namespace 1 a 1 MiB RAM namespace in 512-byte blocks and, after it,
//! `more_namespaces` (TOML `[[subsystem.namespace]]` tables), busy polling off (an idle fuzzer should not spin;
//! the target's logic is the same either way).

use holdfast_target::config::Config;
use holdfast_target::{Server, Target, TargetSettings};
use std::sync::Arc;
use std::time::Duration;

/// The target for subsystem `nqn`, and its server started on `rt`.
pub fn start(rt: &tokio::runtime::Runtime, nqn: &str, more_namespaces: &str) -> (Arc<Target>, Server) {
    let cfg = Config::parse(
        &format!(
            "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"{nqn}\"\nallow_any_host = true\n\
             [[subsystem.namespace]]\nnsid = 1\nbackend = \"ram\"\nsize_mib = 1\nblock_size = 512\n{more_namespaces}"
        ),
        "fuzz",
    )
    .unwrap();
    let settings = TargetSettings { busy_poll: Duration::ZERO, ..TargetSettings::default() };
    let target = Target::new(&cfg, settings).unwrap();
    let server = rt.block_on(Server::start(target.clone())).unwrap();
    (target, server)
}
