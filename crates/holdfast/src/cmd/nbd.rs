//! `holdfast nbd`: serve one namespace of an NVMe/TCP controller as an NBD export (the bridge in
//! [`crate::nbd`]), on a TCP address or a Unix socket, or attach it to a Linux NBD device (`--device`), until
//! SIGINT/SIGTERM.

use super::common::{runtime, NamespaceArgs};
use crate::nbd::server::{self, Export};
use anyhow::Context as _;
use clap::Args as ClapArgs;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::time::Duration;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

/// Options of `holdfast nbd`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    ns: NamespaceArgs,
    /// TCP address to serve NBD on (port 0: any free port, printed at start).
    #[arg(long, default_value = "127.0.0.1:10809", conflicts_with = "socket")]
    listen: std::net::SocketAddr,
    /// Serve on this Unix socket instead of TCP (created; a socket file that nothing answers on is replaced, anything else at the path is left alone).
    #[arg(long)]
    socket: Option<PathBuf>,
    /// Attach the namespace to this Linux NBD device (`/dev/nbdN`: needs the `nbd` module, and root) instead
    /// of serving NBD on a socket, so that every program uses it as a local block device. Runs until
    /// SIGINT/SIGTERM (unmount first: the device is disconnected; a second signal forces it) or until the
    /// device is disconnected elsewhere (`nbd-client -d`); SIGHUP (a closed terminal) is ignored.
    #[arg(long, conflicts_with_all = ["socket", "listen", "max_clients", "name"])]
    device: Option<PathBuf>,
    /// Export name (the default export, "", is the same one).
    #[arg(long, default_value = "holdfast")]
    name: String,
    /// Refuse writes, trims and write-zeroes (EPERM), and say so to clients.
    #[arg(long)]
    read_only: bool,
    /// NVMe I/O queues to use.
    #[arg(long, default_value_t = 2)]
    queues: u16,
    /// NBD clients served at once; more are refused at connect.
    #[arg(long, default_value_t = 64)]
    max_clients: usize,
    /// Tests only: how long a write's payload or a reply may take before the client is dropped (ms).
    #[arg(long, hide = true, default_value_t = server::STALL_TIMEOUT.as_millis() as u64)]
    test_stall_timeout_ms: u64,
}

/// How long connections have to finish their requests once SIGINT/SIGTERM arrived (a second signal ends the
/// wait).
const DRAIN: Duration = Duration::from_secs(30);

/// Refused connections logged (a client retrying in a loop would flood the log).
static REFUSED: holdfast_rt::RateLimit = holdfast_rt::RateLimit::new(10);

/// Run the bridge. Prints the export, then `listening: ADDR`, once serving.
pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(a.name.len() <= 4096, "--name is {} bytes; NBD names are at most 4096", a.name.len());
    anyhow::ensure!(a.max_clients > 0, "--max-clients must be at least 1");
    // A device that cannot be used is said before connecting to the target.
    let device = a.device.as_deref().map(crate::nbd::device::Device::open).transpose()?;
    let rt = if device.is_some() {
        // Before any thread starts, so that every one inherits it.
        crate::nbd::device::prepare_process();
        // Never the single-threaded runtime: nothing that waits on the kernel (the disconnect ioctl, which runs
        // on the blocking pool) may share the one thread that answers the kernel's requests.
        let n = std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1).max(2);
        tokio::runtime::Builder::new_multi_thread().worker_threads(n).enable_all().build()?
    } else {
        runtime()?
    };
    rt.block_on(async move {
        // Where clients come in, before the target is contacted: a taken address fails at once and leaves
        // nothing on the target.
        let listener = match (&device, &a.socket) {
            (Some(_), _) => None,
            (None, Some(p)) => {
                // A socket left by a bridge that died is replaced; one a live process answers on, or a file that
                // is not a socket, is left alone.
                let l = holdfast_rt::bind_unix_socket(p).with_context(|| format!("cannot bind {}", p.display()))?;
                Some(Listener::Unix(l))
            }
            (None, None) => {
                let l = tokio::net::TcpListener::bind(a.listen)
                    .await
                    .with_context(|| format!("cannot listen on {}", a.listen))?;
                Some(Listener::Tcp(l))
            }
        };
        let opened = a.ns.open(a.ns.options(a.queues.max(1))).await;
        if opened.is_err() {
            // The socket bound for this bridge goes with it.
            if let Some(p) = a.socket.as_ref().filter(|_| listener.is_some()) {
                let _ = std::fs::remove_file(p);
            }
        }
        let (c, ns) = opened?;
        let export = Arc::new(Export {
            description: format!("holdfast: {} at {}", a.ns.describe(), a.ns.subsystem.host.addr),
            name: a.name.clone(),
            // A namespace the target write-protects is exported read-only whatever the flag says: clients are told
            // (NBD_FLAG_READ_ONLY) rather than failing every write.
            read_only: a.read_only || ns.write_protected(),
            ns,
            budget: Arc::new(tokio::sync::Semaphore::new(server::INFLIGHT_BYTES)),
            stall_timeout: Duration::from_millis(a.test_stall_timeout_ms.max(1)),
            partial_blocks: server::partial_block_locks(),
        });
        if !export.ns.supports_deallocate() {
            tracing::info!(
                "the controller does not support deallocation (Identify Controller ONCS: no Dataset Management): \
                 trim is not offered"
            );
        }
        if let Some(dev) = device {
            let r = attach(dev, export).await;
            let shut = c.shutdown().await;
            r?;
            shut?;
            return Ok(ExitCode::SUCCESS);
        }
        let stop = CancellationToken::new();
        let Some(listener) = listener else { anyhow::bail!("no listener") };
        outln!(
            "export {:?}: {}, {} bytes in {}-byte blocks{}",
            export.name,
            a.ns.describe(),
            export.ns.size(),
            export.ns.block_size(),
            if export.read_only { ", read-only" } else { "" }
        );
        // Last: a script may stop reading stdout at this line.
        match &listener {
            Listener::Tcp(l) => outln!("listening: {}", l.local_addr()?),
            Listener::Unix(_) => {
                outln!("listening: unix:{}", a.socket.as_deref().unwrap_or(std::path::Path::new("")).display())
            }
        }
        use std::io::Write as _;
        let _ = std::io::stdout().flush();

        let slots = Arc::new(tokio::sync::Semaphore::new(a.max_clients));
        let mut conns = JoinSet::new();
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        let lost = controller_lost(&c);
        tokio::pin!(lost);
        let mut lost_reason = None;
        loop {
            let accepted = tokio::select! {
                _ = term.recv() => break,
                _ = tokio::signal::ctrl_c() => break,
                reason = &mut lost => {
                    // Every request would fail from now on, and clients that connect would be told of an export
                    // that cannot serve: stop, so that a supervisor starts the bridge again (a new controller).
                    tracing::error!("the controller is lost ({reason}): the bridge stops");
                    lost_reason = Some(reason);
                    break;
                }
                Some(_) = conns.join_next(), if !conns.is_empty() => continue,
                r = listener.accept() => r,
            };
            let (stream, peer) = match accepted {
                Ok(s) => s,
                Err(e) => {
                    // EMFILE and the like: wait a little rather than spin.
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    continue;
                }
            };
            let Ok(slot) = slots.clone().try_acquire_owned() else {
                if let Some(dropped) = REFUSED.allow() {
                    tracing::warn!(
                        "NBD client {peer} refused: {} clients already served (--max-clients){}",
                        a.max_clients,
                        if dropped > 0 { format!("; {dropped} more refused and not logged") } else { String::new() }
                    );
                }
                continue;
            };
            let (export, stop) = (export.clone(), stop.clone());
            conns.spawn(async move {
                tracing::info!("NBD client {peer} connected");
                match server::serve(stream, export, stop).await {
                    Ok(()) => tracing::info!("NBD client {peer} disconnected"),
                    Err(e) => tracing::warn!("NBD client {peer} dropped: {e:#}"),
                }
                drop(slot);
            });
        }
        tracing::info!("stopping: answering the requests already received (up to {DRAIN:?})");
        stop.cancel();
        drop(listener);
        if let Some(p) = &a.socket {
            let _ = std::fs::remove_file(p);
        }
        let drained = tokio::select! {
            r = tokio::time::timeout(DRAIN, async { while conns.join_next().await.is_some() {} }) => r.is_ok(),
            // A second signal: do not wait.
            _ = term.recv() => false,
            _ = tokio::signal::ctrl_c() => false,
        };
        if !drained {
            tracing::warn!("closing the clients still busy ({} connections)", conns.len());
            conns.shutdown().await;
        }
        let shut = c.shutdown().await;
        if let Some(reason) = lost_reason {
            anyhow::bail!("the controller was lost: {reason}");
        }
        shut?;
        // Requests cut off unanswered or failed at a forced close: not a clean stop.
        Ok::<_, anyhow::Error>(if drained { ExitCode::SUCCESS } else { ExitCode::from(1) })
    })
}

/// Resolves, with the reason, once `c` has failed for good (ctrl_loss_tmo passed, or a fatal refusal): the
/// bridge then stops, as nbd-client's device does when its server is gone.
async fn controller_lost(c: &holdfast_host::Controller) -> String {
    use tokio::sync::broadcast::error::RecvError;
    let mut events = c.events();
    loop {
        if let holdfast_host::controller::State::Failed { reason } = c.state() {
            return reason;
        }
        match events.recv().await {
            Ok(holdfast_host::controller::Event::Failed { reason }) => return reason,
            Ok(_) | Err(RecvError::Lagged(_)) => {}
            Err(RecvError::Closed) => std::future::pending::<()>().await,
        }
    }
}

/// `--device`: attach the export to a Linux NBD device and serve it until the device stops. The first
/// SIGINT/SIGTERM asks the kernel to disconnect (it sends NBD_CMD_DISC after the requests it already sent,
/// which are answered); a second one, or [`DRAIN`] without the device stopping, shuts the connection down,
/// failing what is outstanding. Ok only for a detach the kernel completed with NBD_CMD_DISC.
async fn attach(device: crate::nbd::device::Device, export: Arc<Export>) -> anyhow::Result<()> {
    use crate::nbd::device::{self, Geometry};
    use crate::nbd::server::Ended;
    use tokio::signal::unix::{signal, SignalKind};
    // Handlers first: a signal that came before them would end the bridge under the kernel's requests.
    let (mut term, mut int) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
    // A closed terminal (SIGHUP) leaves the device attached: its default would end the bridge, and with it the
    // device, under a mounted filesystem (nbd-client and qemu-nbd detach from the terminal for the same reason).
    let mut hup = signal(SignalKind::hangup())?;
    // One connection. With several, the kernel takes a request unanswered for 30 s (the block layer's
    // timeout) for a dead connection, sends it again on another, and shuts the device down when none is left,
    // whatever the connection policy says; with one, and no timeout set, it logs "Possible stuck request"
    // and waits. The NVMe side keeps its --queues.
    let (mine, theirs) = std::os::unix::net::UnixStream::pair().context("socketpair")?;
    let ours = mine.try_clone()?; // to shut the connection down at a forced close
    mine.set_nonblocking(true)?;
    let mine = tokio::net::UnixStream::from_std(mine)?;
    let dev = device.path().to_owned();
    let g = Geometry { block_size: export.block_size(), size: export.size(), flags: export.flags() };
    let device = device.configure(&g, theirs.into())?;
    let disconnect = Arc::new(device.disconnect_handle()?);
    let stop = CancellationToken::new();
    let mut serving = tokio::spawn(server::serve_transmission(mine, export.clone(), stop.clone()));
    // NBD_DO_IT blocks until the device stops: in a process of its own, waited for on a thread of its own.
    let running = device.start()?;
    let (done_tx, mut done_rx) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name("nbd-device".into()).spawn(move || {
        let _ = done_tx.send(running.wait());
    })?;
    // The device is usable once the kernel started it (its size is set then).
    let t0 = std::time::Instant::now();
    while device::block_layer_size(&dev) != Some(g.size) {
        anyhow::ensure!(t0.elapsed() < Duration::from_secs(10), "{} did not start within 10 s", dev.display());
        if let Ok(r) = done_rx.try_recv() {
            r.with_context(|| format!("{} stopped as it started", dev.display()))?;
            anyhow::bail!("{} stopped as it started", dev.display());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    outln!(
        "attached: {}: {} bytes in {}-byte blocks{}",
        dev.display(),
        g.size,
        g.block_size,
        if export.read_only { ", read-only" } else { "" }
    );
    use std::io::Write as _;
    let _ = std::io::stdout().flush();
    // Ask the kernel to detach (first signal, or the controller lost for good), then force (second signal, or
    // the drain's end).
    let (mut asked, mut forced) = (false, false);
    let mut deadline: Option<tokio::time::Instant> = None;
    let lost = controller_lost(export.ns.controller());
    tokio::pin!(lost);
    let mut lost_reason = None;
    let ran = loop {
        let expired = async {
            match deadline {
                Some(d) => tokio::time::sleep_until(d).await,
                None => std::future::pending().await,
            }
        };
        tokio::select! {
            r = &mut done_rx => break r.map_err(|_| anyhow::anyhow!("the NBD device's waiter ended without a result"))?,
            _ = term.recv() => {}
            _ = int.recv() => {}
            _ = hup.recv() => {
                tracing::info!("SIGHUP ignored: {} stays attached (SIGTERM or SIGINT detaches it)", dev.display());
                continue;
            }
            reason = &mut lost, if lost_reason.is_none() => {
                // Every request fails from now on: the device goes, as nbd-client's does when its server is gone.
                tracing::error!("the controller is lost ({reason}): detaching {}", dev.display());
                lost_reason = Some(reason);
                if asked {
                    continue;
                }
            }
            _ = expired => {
                if forced {
                    anyhow::bail!("{} did not stop within 10 s of its connection being shut down", dev.display());
                }
                tracing::warn!("{} still has requests outstanding after {DRAIN:?}", dev.display());
            }
        }
        if !asked {
            asked = true;
            tracing::info!("detaching {}: answering the requests already sent (up to {DRAIN:?})", dev.display());
            let d = disconnect.clone();
            tokio::spawn(async move {
                if let Err(e) = d.request_off_thread().await {
                    tracing::warn!("{e:#}");
                }
            });
            deadline = Some(tokio::time::Instant::now() + DRAIN);
        } else if !forced {
            forced = true;
            tracing::warn!("closing the connection of {}: the requests outstanding fail", dev.display());
            stop.cancel();
            let _ = ours.shutdown(std::net::Shutdown::Both);
            serving.abort();
            deadline = Some(tokio::time::Instant::now() + Duration::from_secs(10));
        }
    };
    // The device stopped, and the kernel closed its end: the connection ends once its last answer is sent.
    let ended = match tokio::time::timeout(Duration::from_secs(10), &mut serving).await {
        Ok(Ok(r)) => r,
        Ok(Err(_)) => Err(anyhow::anyhow!("closed")),
        Err(_) => {
            serving.abort();
            Err(anyhow::anyhow!("requests still outstanding 10 s after the device stopped"))
        }
    };
    ran.with_context(|| format!("{} stopped", dev.display()))?;
    if let Some(reason) = lost_reason {
        anyhow::bail!("{} detached: the controller was lost: {reason}", dev.display());
    }
    if forced {
        anyhow::bail!("{} detached by force; requests outstanding failed", dev.display());
    }
    match ended {
        Ok(Ended::Disconnect) => {
            // Best effort: after a SIGHUP the terminal may be gone, and the detach succeeded all the same.
            use std::io::Write as _;
            let _ = writeln!(std::io::stdout().lock(), "detached: {}", dev.display());
            Ok(())
        }
        Ok(Ended::Closed) => anyhow::bail!(
            "the kernel stopped {} without a disconnect request (see its log): I/O on it failed",
            dev.display()
        ),
        Err(e) => Err(e.context(format!("the connection of {} failed, and the device stopped", dev.display()))),
    }
}

/// A TCP or Unix listener.
enum Listener {
    Tcp(tokio::net::TcpListener),
    Unix(tokio::net::UnixListener),
}

/// An accepted connection of either kind.
enum Stream {
    Tcp(tokio::net::TcpStream),
    Unix(tokio::net::UnixStream),
}

impl Listener {
    async fn accept(&self) -> std::io::Result<(Stream, String)> {
        match self {
            Listener::Tcp(l) => {
                let (s, a) = l.accept().await?;
                let _ = s.set_nodelay(true);
                // A client that vanished without closing is found by TCP keep-alive, as the target finds hosts.
                let _ = holdfast_rt::set_tcp_keepalive(&s);
                Ok((Stream::Tcp(s), a.to_string()))
            }
            Listener::Unix(l) => {
                let (s, _) = l.accept().await?;
                Ok((Stream::Unix(s), "on the Unix socket".to_string()))
            }
        }
    }
}

macro_rules! both {
    ($s:expr, $x:ident => $e:expr) => {
        match $s.get_mut() {
            Stream::Tcp($x) => $e,
            Stream::Unix($x) => $e,
        }
    };
}

impl tokio::io::AsyncRead for Stream {
    fn poll_read(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &mut tokio::io::ReadBuf<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        both!(self, s => std::pin::Pin::new(s).poll_read(cx, buf))
    }
}

impl tokio::io::AsyncWrite for Stream {
    fn poll_write(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
        buf: &[u8],
    ) -> std::task::Poll<std::io::Result<usize>> {
        both!(self, s => std::pin::Pin::new(s).poll_write(cx, buf))
    }
    fn poll_flush(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        both!(self, s => std::pin::Pin::new(s).poll_flush(cx))
    }
    fn poll_shutdown(
        self: std::pin::Pin<&mut Self>,
        cx: &mut std::task::Context<'_>,
    ) -> std::task::Poll<std::io::Result<()>> {
        both!(self, s => std::pin::Pin::new(s).poll_shutdown(cx))
    }
}
