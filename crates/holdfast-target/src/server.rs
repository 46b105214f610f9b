//! Running a target: bind every port, serve until asked to stop, then close every connection and flush
//! every file backend.

use crate::config::Config;
use crate::subsystem::{Port, ReloadSummary, Target};
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
    ports: Vec<Listening>,
}

/// One port being served.
struct Listening {
    id: u16,
    /// The address as configured (port 0 stays 0: an unchanged configuration keeps the port).
    configured: SocketAddr,
    /// The address bound.
    addr: SocketAddr,
    /// Stops this port's listener and closes the connections it accepted.
    stop: CancellationToken,
    task: tokio::task::JoinHandle<()>,
}

impl Server {
    /// Bind every port of `target` and start serving.
    pub async fn start(target: Arc<Target>) -> anyhow::Result<Server> {
        let configured: Vec<Port> = target.ports.read().clone();
        let listeners = Listeners::bind(configured.iter().map(|p| (p.id, p.addr)))?;
        Ok(Server::start_on(target, listeners))
    }

    /// Start serving `target` on `listeners`, bound for its ports before it was built ([`Listeners::bind_config`]).
    pub fn start_on(target: Arc<Target>, listeners: Listeners) -> Server {
        let shutdown = CancellationToken::new();
        if let Some(p) = &target.busy_poll {
            p.spawn();
        }
        // The count of peer-caused lines left out in a flood, once the flood is over (peer_log).
        let stop = shutdown.clone();
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(std::time::Duration::from_secs(1));
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => break,
                    _ = tick.tick() => {
                        crate::peer_log::report_left_out();
                    }
                }
            }
        });
        let mut server = Server { target, shutdown, bound: Vec::new(), ports: Vec::new() };
        for (id, configured, addr, listener) in listeners.0 {
            server.serve(id, configured, addr, listener);
        }
        server.publish_ports();
        server.target.publish_discovery_view();
        server
    }

    fn serve(&mut self, id: u16, configured: SocketAddr, addr: SocketAddr, listener: TcpListener) {
        let stop = self.shutdown.child_token();
        let port = Port { id, addr };
        let task = tokio::spawn(crate::transport::tcp::serve(self.target.clone(), port, listener, stop.clone()));
        self.ports.push(Listening { id, configured, addr, stop, task });
    }

    /// What discovery reports and `bound` say: the ports being served, ephemeral ports resolved.
    fn publish_ports(&mut self) {
        self.ports.sort_by_key(|l| l.id);
        self.bound = self.ports.iter().map(|l| (l.id, l.addr)).collect();
        *self.target.ports.write() = self.bound.iter().map(|&(id, addr)| Port { id, addr }).collect();
    }

    /// Apply a new configuration to the running target (SIGHUP): subsystems, namespaces, access lists and
    /// policies as [`Target::reload`] does, and ports: a port whose ID or address is new is bound and served,
    /// a port no longer configured stops listening and its connections close (as removing an nvmet port
    /// does). Every new address is bound before anything changes, so one that cannot be bound (in use, say)
    /// fails the reload and leaves the target as it was. The one exception is an address whose TCP port a
    /// removed port still holds (a port moved to another ID or IP): it can only be bound once that port has
    /// stopped; if that bind then fails, the rest of the configuration stays applied and the failure is in
    /// [`ReloadSummary::errors`]. Discovery controllers see one new GENCTR for the whole reload.
    pub async fn reload(&mut self, cfg: &Config) -> anyhow::Result<ReloadSummary> {
        let mut wanted = Vec::new();
        for p in &cfg.ports {
            let addr: SocketAddr =
                p.listen.parse().map_err(|e| anyhow::anyhow!("port {}: listen = {:?}: {e}", p.id, p.listen))?;
            wanted.push((p.id, addr));
        }
        let running = |id: u16, addr: SocketAddr| self.ports.iter().any(|l| l.id == id && l.configured == addr);
        let removed: Vec<usize> = (0..self.ports.len())
            .filter(|&i| !wanted.contains(&(self.ports[i].id, self.ports[i].configured)))
            .collect();
        let added: Vec<(u16, SocketAddr)> = wanted.iter().copied().filter(|&(id, a)| !running(id, a)).collect();
        // A TCP port a removed listener holds (on the same IP, or on a wildcard either side) is free only once
        // that listener has stopped.
        let held = |a: SocketAddr| {
            a.port() != 0
                && removed.iter().any(|&i| {
                    let b = self.ports[i].addr;
                    b.port() == a.port() && (b.ip() == a.ip() || b.ip().is_unspecified() || a.ip().is_unspecified())
                })
        };
        let (late, now): (Vec<_>, Vec<_>) = added.iter().copied().partition(|&(_, a)| held(a));
        let mut early = Vec::new();
        // A listener that cannot be bound is named by the file's key, as a configuration error is.
        let key = |id: u16| {
            let i = cfg.ports.iter().position(|p| p.id == id).unwrap_or_default();
            format!("port[{i}].listen (port {id})")
        };
        for (id, configured) in now {
            let (l, addr) =
                bind(configured).map_err(|e| anyhow::anyhow!("{}: cannot listen on {configured}: {e}", key(id)))?;
            early.push((id, configured, addr, l));
        }
        // Nothing has changed yet; from here on, everything is applied.
        let (mut summary, mut discovery_changed) = self.target.reload_quiet(cfg)?;
        for i in removed.into_iter().rev() {
            let l = self.ports.remove(i);
            l.stop.cancel();
            let _ = l.task.await;
            summary.notes.push(format!("port {} ({}) removed: its connections are closed", l.id, l.addr));
            discovery_changed = true;
        }
        for (id, configured, addr, listener) in early {
            self.serve(id, configured, addr, listener);
            summary.notes.push(format!("port {id} listening on {addr}"));
            discovery_changed = true;
        }
        for (id, configured) in late {
            match bind(configured) {
                Ok((l, addr)) => {
                    self.serve(id, configured, addr, l);
                    summary.notes.push(format!("port {id} listening on {addr}"));
                    discovery_changed = true;
                }
                Err(e) => summary.errors.push(format!("{}: cannot listen on {configured}: {e}; not served", key(id))),
            }
        }
        self.publish_ports();
        if discovery_changed {
            self.target.discovery_changed();
        }
        summary.genctr = self.target.genctr.load(std::sync::atomic::Ordering::SeqCst);
        Ok(summary)
    }

    /// Stop: close every connection, then make every file backend durable, retired ones included (their flushes
    /// waited for). False if a flush failed (logged), now or earlier in the process's life (a namespace a reload
    /// removed since, say): writes acknowledged before it may be lost, which the process's exit status should say.
    pub async fn stop(self) -> bool {
        self.shutdown.cancel();
        for c in self.target.all_controllers() {
            c.teardown("target shutting down");
        }
        for l in self.ports {
            let _ = l.task.await;
        }
        let target = self.target.clone();
        tokio::task::spawn_blocking(move || {
            // Every subsystem's, whatever one before it gave (each failure is logged).
            let now = target.subsystems().iter().map(|s| s.flush_namespaces().is_ok()).filter(|ok| !ok).count() == 0;
            let retired = target.join_retired_flushes();
            now && retired && !crate::backend::file::any_sync_failed()
        })
        .await
        .unwrap_or(false)
    }
}

/// Listening sockets for a target's ports, bound before the target is built: a start whose address is taken
/// then fails before any namespace's backend is opened, and leaves no new file namespace's file behind it.
pub struct Listeners(Vec<(u16, SocketAddr, SocketAddr, TcpListener)>);

impl Listeners {
    /// Bind `(port ID, address)` each, or fail naming the first that cannot be bound (those bound close).
    pub fn bind(ports: impl IntoIterator<Item = (u16, SocketAddr)>) -> anyhow::Result<Listeners> {
        let mut v = Vec::new();
        for (id, configured) in ports {
            let (listener, addr) =
                bind(configured).map_err(|e| anyhow::anyhow!("port {id} (listen {configured}): cannot listen: {e}"))?;
            v.push((id, configured, addr, listener));
        }
        Ok(Listeners(v))
    }

    /// Bind the ports of a configuration.
    pub fn bind_config(cfg: &Config) -> anyhow::Result<Listeners> {
        let ports = cfg
            .ports
            .iter()
            .map(|p| {
                Ok((
                    p.id,
                    p.listen.parse().map_err(|e| anyhow::anyhow!("port {}: listen = {:?}: {e}", p.id, p.listen))?,
                ))
            })
            .collect::<anyhow::Result<Vec<_>>>()?;
        Listeners::bind(ports)
    }
}

/// A listening socket on `addr`, and the address it got (an ephemeral port resolved).
fn bind(addr: SocketAddr) -> std::io::Result<(TcpListener, SocketAddr)> {
    let sock = socket2::Socket::new(socket2::Domain::for_address(addr), socket2::Type::STREAM, None)?;
    sock.set_reuse_address(true)?;
    if addr.is_ipv6() {
        sock.set_only_v6(false).ok();
    }
    sock.bind(&addr.into())?;
    sock.listen(1024)?;
    sock.set_nonblocking(true)?;
    let l = TcpListener::from_std(sock.into())?;
    let bound = l.local_addr()?;
    Ok((l, bound))
}
