//! A fault-injecting TCP proxy. Every connection accepted on `listen` is forwarded to `upstream`, byte for
//! byte in both directions (half-closes included); one shared fault state applies to all current and future
//! connections.
//!
//! | command | effect |
//! |---|---|
//! | `cut` | reset every open connection now (RST to both peers); new connections still work |
//! | `blackhole` | stop forwarding both ways with sockets left open: data is held, not dropped, nothing is closed; new connections are accepted but hang (their upstream connect waits for `resume`) |
//! | `delay MS` | add MS ms of latency to every forwarded chunk, each direction (`delay 0` removes it) |
//! | `flap MS` | cut every connection every MS ms (a cut storm), until `resume` |
//! | `resume` | clear blackhole, delay and flap; held data is delivered (a peer that went away meanwhile closes the other side) |
//! | `status` | mode, live connections, bytes forwarded each way, cuts so far |
//!
//! From Rust, [`Proxy::start`] and the methods of the same names; from anywhere else, the line-based control
//! port at [`Proxy::control_addr`] (one command per line; the reply is one line, `ok ...` or `error: ...`).
//!
//! Memory is bounded: at most [`MAX_HELD_BYTES`] are held per direction of a connection (delayed or
//! blackholed data); beyond that the proxy stops reading from that side, so TCP backpressure reaches the sender.
//!
//! ```no_run
//! # async fn demo() -> anyhow::Result<()> {
//! use holdfast_testkit::proxy::Proxy;
//! use std::time::Duration;
//!
//! let target = "127.0.0.1:4420".parse()?;
//! let proxy = Proxy::start("127.0.0.1:0".parse()?, target).await?;
//! // ... connect the host to proxy.local_addr() ...
//! proxy.blackhole(); // the host must detect the loss within KATO
//! proxy.resume();
//! proxy.flap(Duration::from_millis(500)); // a reset storm
//! proxy.resume();
//! let resets = proxy.cut().await; // reset every connection once
//! println!("{resets} reset; {}", proxy.stats());
//! proxy.shutdown().await;
//! # Ok(())
//! # }
//! ```

use anyhow::Context as _;
use std::collections::HashMap;
use std::fmt;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::tcp::{ReadHalf, WriteHalf};
use tokio::net::{TcpListener, TcpStream};
use tokio::runtime::Handle;
use tokio::sync::{mpsc, watch, Semaphore};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// The most bytes the proxy holds per direction of one connection (read but not yet written: delayed or
/// blackholed). Past it the proxy stops reading from that side, so the sender sees TCP backpressure.
pub const MAX_HELD_BYTES: usize = 4 << 20;

/// Largest single read.
const CHUNK: usize = 64 << 10;

/// Budget charged per held chunk on top of its bytes, so that a sender trickling tiny writes cannot make the
/// proxy hold millions of chunks.
const ITEM_COST: usize = 64;

/// Longest accepted control line (bytes, newline included).
const MAX_CONTROL_LINE: u64 = 1024;

/// Longest delay or flap period accepted (longer ones are clamped to it).
pub const MAX_FAULT_PERIOD: Duration = Duration::from_secs(24 * 3600);

/// How long [`Proxy::cut`] waits for the reset connections to be closed.
const CUT_WAIT: Duration = Duration::from_secs(2);

/// How long [`Proxy::shutdown`] waits for its tasks.
const SHUTDOWN_WAIT: Duration = Duration::from_secs(5);

/// The fault state shared by every connection.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
struct Fault {
    /// Forwarding stopped, sockets left open.
    blackhole: bool,
    /// Latency added to every chunk, each direction.
    delay: Duration,
    /// Cut storm period, if one runs.
    flap: Option<Duration>,
}

/// A snapshot of the proxy's state and counters ([`Proxy::stats`]). Its `Display` form is the `status` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ProxyStats {
    /// Forwarding is stopped (blackhole).
    pub blackhole: bool,
    /// Latency added to every forwarded chunk, each direction.
    pub delay: Duration,
    /// Period of the running cut storm, if any.
    pub flap: Option<Duration>,
    /// Connections open now (including those waiting for a blackhole to lift).
    pub connections: usize,
    /// Connections accepted since start.
    pub accepted: u64,
    /// Bytes forwarded client -> upstream.
    pub bytes_up: u64,
    /// Bytes forwarded upstream -> client.
    pub bytes_down: u64,
    /// Cuts so far (each `cut` command and each flap tick counts one).
    pub cuts: u64,
    /// Connections reset by cuts so far.
    pub connections_cut: u64,
}

impl ProxyStats {
    /// `blackhole`, `flap`, `delay` or `pass` (the most disruptive fault in effect).
    pub fn mode(&self) -> &'static str {
        if self.blackhole {
            "blackhole"
        } else if self.flap.is_some() {
            "flap"
        } else if !self.delay.is_zero() {
            "delay"
        } else {
            "pass"
        }
    }
}

impl fmt::Display for ProxyStats {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "mode {} delay_ms {} connections {} accepted {} bytes_up {} bytes_down {} cuts {} flap_ms {} connections_cut {}",
            self.mode(),
            self.delay.as_millis(),
            self.connections,
            self.accepted,
            self.bytes_up,
            self.bytes_down,
            self.cuts,
            self.flap.map_or(0, |d| d.as_millis()),
            self.connections_cut,
        )
    }
}

/// What a cut needs to reach one connection.
#[derive(Clone)]
struct ConnHandle {
    /// Cancelled: reset both sockets now.
    kill: CancellationToken,
    /// Cancelled by the connection's task once its sockets are closed.
    closed: CancellationToken,
}

#[derive(Default)]
struct Counters {
    accepted: AtomicU64,
    bytes_up: AtomicU64,
    bytes_down: AtomicU64,
    cuts: AtomicU64,
    connections_cut: AtomicU64,
}

/// State shared by the handle, the accept loop, the control port and every connection.
struct Shared {
    upstream: SocketAddr,
    fault: watch::Sender<Fault>,
    /// Stops the running flap task.
    flap_task: Mutex<Option<CancellationToken>>,
    conns: Mutex<HashMap<u64, ConnHandle>>,
    next_id: AtomicU64,
    counters: Counters,
    /// Cancelled at shutdown (or when the [`Proxy`] is dropped); every connection's `kill` is a child.
    stop: CancellationToken,
    tasks: TaskTracker,
    runtime: Handle,
}

/// Locks a mutex, ignoring poisoning (the data stays consistent: every critical section is a single update).
fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// A running fault-injecting proxy. Dropping it stops it (listeners closed, connections reset) without waiting;
/// [`Proxy::shutdown`] does the same and waits.
pub struct Proxy {
    shared: Arc<Shared>,
    local: SocketAddr,
    control: SocketAddr,
}

impl fmt::Debug for Proxy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Proxy")
            .field("listen", &self.local)
            .field("upstream", &self.shared.upstream)
            .field("control", &self.control)
            .finish()
    }
}

impl Proxy {
    /// Listens on `listen` (port 0: an ephemeral port, see [`Proxy::local_addr`]) and forwards every connection
    /// to `upstream`. The control port listens on an ephemeral port of 127.0.0.1 ([`Proxy::control_addr`]).
    /// Must be called inside a tokio runtime; the proxy's tasks run on it.
    pub async fn start(listen: SocketAddr, upstream: SocketAddr) -> anyhow::Result<Proxy> {
        Self::start_with_control(listen, upstream, SocketAddr::from(([127, 0, 0, 1], 0))).await
    }

    /// [`Proxy::start`] with the control port on `control`.
    pub async fn start_with_control(
        listen: SocketAddr,
        upstream: SocketAddr,
        control: SocketAddr,
    ) -> anyhow::Result<Proxy> {
        let listener = TcpListener::bind(listen).await.with_context(|| format!("proxy: cannot listen on {listen}"))?;
        let control_listener =
            TcpListener::bind(control).await.with_context(|| format!("proxy: cannot listen on {control} (control)"))?;
        let shared = Arc::new(Shared {
            upstream,
            fault: watch::channel(Fault::default()).0,
            flap_task: Mutex::new(None),
            conns: Mutex::new(HashMap::new()),
            next_id: AtomicU64::new(1),
            counters: Counters::default(),
            stop: CancellationToken::new(),
            tasks: TaskTracker::new(),
            runtime: Handle::current(),
        });
        let proxy =
            Proxy { shared: shared.clone(), local: listener.local_addr()?, control: control_listener.local_addr()? };
        shared.tasks.spawn(accept_loop(shared.clone(), listener));
        shared.tasks.spawn(control_loop(shared.clone(), control_listener));
        tracing::info!(listen = %proxy.local, %upstream, control = %proxy.control, "proxy started");
        Ok(proxy)
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }

    /// Where the forwarded connections go.
    pub fn upstream_addr(&self) -> SocketAddr {
        self.shared.upstream
    }

    /// The line-based control port (always on; 127.0.0.1 unless given to [`Proxy::start_with_control`]).
    pub fn control_addr(&self) -> SocketAddr {
        self.control
    }

    /// Resets every open connection now (SO_LINGER 0 and close on both sockets, so both peers see RST) and
    /// returns how many there were, once their sockets are closed (waits at most 2 s). New connections are
    /// still accepted and forwarded.
    pub async fn cut(&self) -> usize {
        self.shared.cut().await
    }

    /// Stops forwarding in both directions with every socket left open: data is held (up to
    /// [`MAX_HELD_BYTES`] per direction, then backpressure), nothing is closed; new connections are accepted
    /// but hang, their upstream connect deferred until [`Proxy::resume`].
    pub fn blackhole(&self) {
        self.shared.blackhole();
    }

    /// Adds `delay` (at most [`MAX_FAULT_PERIOD`]) of latency to every forwarded chunk, each direction;
    /// [`Duration::ZERO`] removes it. Applies to data already held too.
    pub fn delay(&self, delay: Duration) {
        self.shared.delay(delay);
    }

    /// Cuts every connection every `period` (at least 1 ms, at most [`MAX_FAULT_PERIOD`]) until [`Proxy::resume`]; replaces a running storm.
    pub fn flap(&self, period: Duration) {
        self.shared.flap(period);
    }

    /// Clears blackhole, delay and flap; held data is delivered.
    pub fn resume(&self) {
        self.shared.resume();
    }

    /// The current mode and counters.
    pub fn stats(&self) -> ProxyStats {
        self.shared.stats()
    }

    /// Runs one control-port command line (`cut`, `blackhole`, `delay MS`, `flap MS`, `resume`, `status`) and
    /// returns the reply line (`ok ...` or `error: ...`, no newline).
    pub async fn command(&self, line: &str) -> String {
        self.shared.command(line).await
    }

    /// Stops accepting (data and control), resets every connection and waits (at most 5 s) for every task.
    pub async fn shutdown(self) {
        self.shared.shutdown();
        if tokio::time::timeout(SHUTDOWN_WAIT, self.shared.tasks.wait()).await.is_err() {
            tracing::warn!("proxy: tasks still running after shutdown");
        }
    }
}

impl Drop for Proxy {
    fn drop(&mut self) {
        self.shared.shutdown();
    }
}

impl Shared {
    async fn cut(&self) -> usize {
        let victims: Vec<ConnHandle> = lock(&self.conns).values().cloned().collect();
        for v in &victims {
            v.kill.cancel();
        }
        self.counters.cuts.fetch_add(1, Ordering::Relaxed);
        self.counters.connections_cut.fetch_add(victims.len() as u64, Ordering::Relaxed);
        let closed = async {
            for v in &victims {
                v.closed.cancelled().await;
            }
        };
        if tokio::time::timeout(CUT_WAIT, closed).await.is_err() {
            tracing::warn!("proxy: cut connections not closed after {CUT_WAIT:?}");
        }
        tracing::info!(connections = victims.len(), "proxy: cut");
        victims.len()
    }

    fn blackhole(&self) {
        self.fault.send_modify(|f| f.blackhole = true);
        tracing::info!("proxy: blackhole");
    }

    fn delay(&self, delay: Duration) {
        let delay = delay.min(MAX_FAULT_PERIOD);
        self.fault.send_modify(|f| f.delay = delay);
        tracing::info!(delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX), "proxy: delay");
    }

    fn flap(self: &Arc<Self>, period: Duration) {
        let period = period.clamp(Duration::from_millis(1), MAX_FAULT_PERIOD);
        let token = self.stop.child_token();
        if let Some(old) = lock(&self.flap_task).replace(token.clone()) {
            old.cancel();
        }
        self.fault.send_modify(|f| f.flap = Some(period));
        tracing::info!(period_ms = u64::try_from(period.as_millis()).unwrap_or(u64::MAX), "proxy: flap");
        let me = self.clone();
        self.tasks.spawn_on(
            async move {
                let mut tick = tokio::time::interval_at(Instant::now() + period, period);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = tick.tick() => {}
                    }
                    tokio::select! {
                        _ = token.cancelled() => return,
                        _ = me.cut() => {}
                    }
                }
            },
            &self.runtime,
        );
    }

    fn resume(&self) {
        if let Some(t) = lock(&self.flap_task).take() {
            t.cancel();
        }
        self.fault.send_replace(Fault::default());
        tracing::info!("proxy: resume");
    }

    fn stats(&self) -> ProxyStats {
        let f = *self.fault.borrow();
        let c = &self.counters;
        ProxyStats {
            blackhole: f.blackhole,
            delay: f.delay,
            flap: f.flap,
            connections: lock(&self.conns).len(),
            accepted: c.accepted.load(Ordering::Relaxed),
            bytes_up: c.bytes_up.load(Ordering::Relaxed),
            bytes_down: c.bytes_down.load(Ordering::Relaxed),
            cuts: c.cuts.load(Ordering::Relaxed),
            connections_cut: c.connections_cut.load(Ordering::Relaxed),
        }
    }

    fn shutdown(&self) {
        if !self.stop.is_cancelled() {
            tracing::info!("proxy: shutdown");
        }
        self.stop.cancel();
        self.tasks.close();
    }

    async fn command(self: &Arc<Self>, line: &str) -> String {
        const USAGE: &str = "cut, blackhole, delay MS, flap MS, resume, status";
        let words: Vec<&str> = line.split_whitespace().collect();
        let ms = |w: Option<&&str>| w.and_then(|v| v.parse::<u64>().ok()).map(Duration::from_millis);
        match words.first().map(|w| w.to_ascii_lowercase()).as_deref() {
            None => format!("error: empty command ({USAGE})"),
            Some("cut") if words.len() == 1 => format!("ok cut {}", self.cut().await),
            Some("blackhole") if words.len() == 1 => {
                self.blackhole();
                "ok blackhole".into()
            }
            Some("delay") if words.len() == 2 => match ms(words.get(1)) {
                Some(d) => {
                    self.delay(d);
                    format!("ok delay {}", d.min(MAX_FAULT_PERIOD).as_millis())
                }
                None => format!("error: delay needs milliseconds, got {:?}", words[1]),
            },
            Some("flap") if words.len() == 2 => match ms(words.get(1)) {
                Some(d) if !d.is_zero() => {
                    self.flap(d);
                    format!("ok flap {}", d.min(MAX_FAULT_PERIOD).as_millis())
                }
                _ => format!("error: flap needs milliseconds > 0, got {:?}", words[1]),
            },
            Some("resume") if words.len() == 1 => {
                self.resume();
                "ok resume".into()
            }
            Some("status") if words.len() == 1 => format!("ok {}", self.stats()),
            Some(w @ ("cut" | "blackhole" | "resume" | "status")) => format!("error: {w} takes no argument"),
            Some(w @ ("delay" | "flap")) => format!("error: usage: {w} MS"),
            Some(_) => format!("error: unknown command {:?} ({USAGE})", line.trim()),
        }
    }
}

/// Accepts client connections until shutdown; each gets its own task.
async fn accept_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = shared.stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let (client, peer) = match accepted {
            Ok(v) => v,
            Err(e) => {
                // Out of descriptors and the like: back off instead of spinning.
                tracing::warn!("proxy: accept failed: {e}");
                tokio::select! {
                    _ = shared.stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        shared.counters.accepted.fetch_add(1, Ordering::Relaxed);
        let id = shared.next_id.fetch_add(1, Ordering::Relaxed);
        let handle = ConnHandle { kill: shared.stop.child_token(), closed: CancellationToken::new() };
        lock(&shared.conns).insert(id, handle.clone());
        tracing::debug!(id, %peer, "proxy: connection accepted");
        let s = shared.clone();
        shared.tasks.spawn(async move {
            // Declared first so it is dropped last: the sockets (owned by `serve`) are closed by then.
            let _guard = ConnGuard { shared: &s, id, closed: &handle.closed };
            serve(&s, client, &handle.kill).await;
        });
    }
}

/// Unregisters a connection and tells waiting cuts that its sockets are closed, even if its task is aborted.
struct ConnGuard<'a> {
    shared: &'a Shared,
    id: u64,
    closed: &'a CancellationToken,
}

impl Drop for ConnGuard<'_> {
    fn drop(&mut self) {
        lock(&self.shared.conns).remove(&self.id);
        self.closed.cancel();
        tracing::debug!(id = self.id, "proxy: connection closed");
    }
}

/// Sets SO_LINGER 0 so that closing the socket sends RST instead of FIN.
fn arm_reset(s: &TcpStream) {
    if let Err(e) = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO)) {
        tracing::debug!("proxy: SO_LINGER: {e}");
    }
}

/// Waits until forwarding is allowed (no blackhole); false if the connection is killed meanwhile.
async fn wait_open(fault: &mut watch::Receiver<Fault>, kill: &CancellationToken) -> bool {
    loop {
        if kill.is_cancelled() {
            return false;
        }
        if !fault.borrow_and_update().blackhole {
            return true;
        }
        tokio::select! {
            _ = kill.cancelled() => return false,
            r = fault.changed() => if r.is_err() { return false },
        }
    }
}

/// One connection: connect upstream (once no blackhole is in effect), forward both directions, then close
/// gracefully if both directions ended with a FIN, or reset both sockets otherwise.
async fn serve(shared: &Shared, mut client: TcpStream, kill: &CancellationToken) {
    let mut fault = shared.fault.subscribe();
    if !wait_open(&mut fault, kill).await {
        arm_reset(&client);
        return;
    }
    let mut upstream = tokio::select! {
        _ = kill.cancelled() => {
            arm_reset(&client);
            return;
        }
        r = TcpStream::connect(shared.upstream) => match r {
            Ok(s) => s,
            Err(e) => {
                tracing::warn!(upstream = %shared.upstream, "proxy: upstream connect failed: {e}");
                arm_reset(&client);
                return;
            }
        },
    };
    let _ = client.set_nodelay(true);
    let _ = upstream.set_nodelay(true);
    {
        let (cr, cw) = client.split();
        let (ur, uw) = upstream.split();
        tokio::join!(
            direction(shared, cr, uw, kill, &shared.counters.bytes_up),
            direction(shared, ur, cw, kill, &shared.counters.bytes_down),
        );
    }
    if kill.is_cancelled() {
        arm_reset(&client);
        arm_reset(&upstream);
    }
}

/// What the reader hands the writer, in order.
enum Item {
    /// Bytes read at the given instant (delivered no earlier than that plus the delay).
    Data(Vec<u8>, Instant),
    /// The source sent FIN: forward it (after the data before it).
    Eof(Instant),
    /// The source failed (RST or another error): reset the connection (after the data before it).
    Reset(Instant),
}

/// Forwards one direction until EOF (forwarded as a half-close) or until the connection is killed. Any error
/// kills the connection, so the other direction and both peers see it too.
async fn direction(
    shared: &Shared,
    mut rd: ReadHalf<'_>,
    mut wr: WriteHalf<'_>,
    kill: &CancellationToken,
    counter: &AtomicU64,
) {
    let budget = Semaphore::new(MAX_HELD_BYTES);
    let (tx, rx) = mpsc::unbounded_channel();
    tokio::join!(
        read_side(&mut rd, tx, &budget, kill),
        write_side(&mut wr, rx, &budget, shared.fault.subscribe(), kill, counter),
    );
}

/// Reads chunks while fewer than [`MAX_HELD_BYTES`] are held, stamping each with its arrival time.
async fn read_side(
    rd: &mut ReadHalf<'_>,
    tx: mpsc::UnboundedSender<Item>,
    budget: &Semaphore,
    kill: &CancellationToken,
) {
    let mut buf = vec![0u8; CHUNK];
    loop {
        let permit = tokio::select! {
            _ = kill.cancelled() => return,
            p = budget.acquire_many((CHUNK + ITEM_COST) as u32) => match p {
                Ok(p) => p,
                Err(_) => return,
            },
        };
        let r = tokio::select! {
            _ = kill.cancelled() => return,
            r = rd.read(&mut buf) => r,
        };
        match r {
            Ok(0) => {
                let _ = tx.send(Item::Eof(Instant::now()));
                return;
            }
            Ok(n) => {
                // Keep n bytes (and the chunk's cost) of budget until the writer has written them; give back the rest.
                permit.forget();
                budget.add_permits(CHUNK - n);
                if tx.send(Item::Data(buf[..n].to_vec(), Instant::now())).is_err() {
                    return;
                }
            }
            Err(e) => {
                tracing::debug!("proxy: read: {e}");
                let _ = tx.send(Item::Reset(Instant::now()));
                return;
            }
        }
    }
}

/// Writes what the reader queued once no blackhole is in effect and the delay has passed.
async fn write_side(
    wr: &mut WriteHalf<'_>,
    mut rx: mpsc::UnboundedReceiver<Item>,
    budget: &Semaphore,
    mut fault: watch::Receiver<Fault>,
    kill: &CancellationToken,
    counter: &AtomicU64,
) {
    loop {
        let item = tokio::select! {
            _ = kill.cancelled() => return,
            i = rx.recv() => match i {
                Some(i) => i,
                None => return,
            },
        };
        let (Item::Data(_, at) | Item::Eof(at) | Item::Reset(at)) = &item;
        if !hold(*at, &mut fault, kill).await {
            return;
        }
        match item {
            Item::Data(data, _) => {
                let mut off = 0;
                while off < data.len() {
                    tokio::select! {
                        _ = kill.cancelled() => return,
                        r = fault.changed() => {
                            // A blackhole that starts mid-chunk stops the rest of it too.
                            if r.is_err() || !wait_open(&mut fault, kill).await {
                                return;
                            }
                        }
                        r = wr.write(&data[off..]) => match r {
                            Ok(n) if n > 0 => {
                                off += n;
                                counter.fetch_add(n as u64, Ordering::Relaxed);
                                budget.add_permits(n);
                            }
                            Ok(_) => {
                                kill.cancel();
                                return;
                            }
                            Err(e) => {
                                tracing::debug!("proxy: write: {e}");
                                kill.cancel();
                                return;
                            }
                        },
                    }
                }
                budget.add_permits(ITEM_COST);
            }
            Item::Eof(_) => {
                tokio::select! {
                    _ = kill.cancelled() => {}
                    r = wr.shutdown() => if let Err(e) = r {
                        tracing::debug!("proxy: shutdown: {e}");
                        kill.cancel();
                    },
                }
                return;
            }
            Item::Reset(_) => {
                kill.cancel();
                return;
            }
        }
    }
}

/// Waits until an item read at `at` may be delivered: no blackhole, and `at` + the current delay has passed
/// (a change of either is seen at once). False if the connection is killed meanwhile.
async fn hold(at: Instant, fault: &mut watch::Receiver<Fault>, kill: &CancellationToken) -> bool {
    loop {
        if !wait_open(fault, kill).await {
            return false;
        }
        let due = at + fault.borrow().delay;
        if Instant::now() >= due {
            return true;
        }
        tokio::select! {
            _ = kill.cancelled() => return false,
            r = fault.changed() => if r.is_err() { return false },
            _ = tokio::time::sleep_until(due) => {}
        }
    }
}

/// Serves the control port until shutdown: one command per line, one reply line each.
async fn control_loop(shared: Arc<Shared>, listener: TcpListener) {
    loop {
        let accepted = tokio::select! {
            _ = shared.stop.cancelled() => return,
            r = listener.accept() => r,
        };
        let (stream, peer) = match accepted {
            Ok(v) => v,
            Err(e) => {
                tracing::warn!("proxy: control accept failed: {e}");
                tokio::select! {
                    _ = shared.stop.cancelled() => return,
                    _ = tokio::time::sleep(Duration::from_millis(100)) => continue,
                }
            }
        };
        let s = shared.clone();
        shared.tasks.spawn(async move {
            tracing::debug!(%peer, "proxy: control connection");
            let stop = s.stop.clone();
            tokio::select! {
                _ = stop.cancelled() => {}
                _ = control_conn(&s, stream) => {}
            }
        });
    }
}

/// One control connection.
async fn control_conn(shared: &Arc<Shared>, stream: TcpStream) {
    let (rd, mut wr) = stream.into_split();
    let mut rd = BufReader::new(rd);
    loop {
        let mut line = String::new();
        let (reply, last) = match (&mut rd).take(MAX_CONTROL_LINE).read_line(&mut line).await {
            Ok(0) => return,
            Ok(_) if !line.ends_with('\n') && line.len() as u64 >= MAX_CONTROL_LINE => {
                ("error: line too long".to_string(), true)
            }
            Ok(_) => {
                let reply = shared.command(&line).await;
                tracing::debug!(command = line.trim(), %reply, "proxy: control");
                (reply, false)
            }
            Err(e) => (format!("error: {e}"), true),
        };
        if wr.write_all(format!("{reply}\n").as_bytes()).await.is_err() || last {
            return;
        }
    }
}
