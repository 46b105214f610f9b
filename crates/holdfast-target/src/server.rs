//! Running a target: bind every port, serve until asked to stop, then close every connection and flush
//! every file backend.

use crate::backend::MediaGate;
use crate::subsystem::Target;
use std::net::SocketAddr;
use std::sync::Arc;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

/// A running target.
pub struct Server {
    /// The target.
    pub target: Arc<Target>,
    /// Cancel to stop.
    pub shutdown: CancellationToken,
    /// The bound address of each port (ephemeral ports resolved).
    pub bound: Vec<(u16, SocketAddr)>,
    tasks: Vec<tokio::task::JoinHandle<()>>,
}

impl Server {
    /// Bind every port of `target` and start serving.
    pub async fn start(target: Arc<Target>) -> anyhow::Result<Server> {
        let shutdown = CancellationToken::new();
        if let Some(p) = &target.busy_poll {
            p.spawn();
        }
        let mut bound = Vec::new();
        let mut tasks = Vec::new();
        let ports = target.ports.read().clone();
        let mut resolved = Vec::new();
        for mut port in ports {
            let listener = bind(port.addr).map_err(|e| anyhow::anyhow!("cannot listen on {}: {e}", port.addr))?;
            port.addr = listener.local_addr()?;
            bound.push((port.id, port.addr));
            resolved.push(port.clone());
            tasks.push(tokio::spawn(crate::transport::tcp::serve(target.clone(), port, listener, shutdown.clone())));
        }
        *target.ports.write() = resolved;
        Ok(Server { target, shutdown, bound, tasks })
    }

    /// Stop: close every connection, then make every file backend durable.
    pub async fn stop(self) {
        self.shutdown.cancel();
        for c in self.target.all_controllers() {
            c.teardown("target shutting down");
        }
        for t in self.tasks {
            let _ = t.await;
        }
        let target = self.target.clone();
        let _ = tokio::task::spawn_blocking(move || {
            for s in target.subsystems() {
                for ns in s.namespaces.read().values() {
                    if let Err(e) = ns.backend.flush(&MediaGate::open()) {
                        tracing::error!("flush of {} nsid {} failed: {e}", s.nqn, ns.nsid);
                    }
                }
            }
        })
        .await;
    }
}

fn bind(addr: SocketAddr) -> std::io::Result<TcpListener> {
    let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(false).ok();
    }
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    sock.set_nonblocking(true)?;
    TcpListener::from_std(sock.into())
}
