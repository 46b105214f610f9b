//! A fault-injecting TCP proxy. Every connection accepted on `listen` is forwarded to `upstream`; the fault
//! state applies to all current and future connections.
//!
//! | command | effect |
//! |---|---|
//! | `cut` | reset every open connection now (RST both ways); new connections still work |
//! | `blackhole` | stop forwarding both ways, sockets left open, data held (TCP backpressure); new connections hang |
//! | `delay MS` | add MS ms before every forwarded chunk (`delay 0` removes it) |
//! | `flap MS` | cut every connection every MS ms, until `resume` |
//! | `resume` | clear blackhole, delay and flap |
//! | `status` | mode, live connections, bytes each way, cuts so far |

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;
use tokio_util::sync::CancellationToken;

#[derive(Default)]
struct Stats {
    up: AtomicU64,
    down: AtomicU64,
    cuts: AtomicU64,
    accepted: AtomicU64,
}

struct Inner {
    upstream: SocketAddr,
    blackhole: watch::Sender<bool>,
    delay_ms: AtomicU64,
    flap: Mutex<Option<CancellationToken>>,
    conns: Mutex<HashMap<u64, CancellationToken>>,
    next: AtomicU64,
    stats: Stats,
    stop: CancellationToken,
}

/// A running proxy. Dropping it does not stop it; call [`Proxy::shutdown`].
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
    local: SocketAddr,
    control: SocketAddr,
}

impl Proxy {
    /// Listen on `listen` (port 0: ephemeral), forward to `upstream`; the control port listens on `control`
    /// (default 127.0.0.1:0).
    pub async fn start(listen: SocketAddr, upstream: SocketAddr, control: Option<SocketAddr>) -> anyhow::Result<Proxy> {
        let l = TcpListener::bind(listen).await?;
        let c = TcpListener::bind(control.unwrap_or_else(|| SocketAddr::from(([127, 0, 0, 1], 0)))).await?;
        let inner = Arc::new(Inner {
            upstream,
            blackhole: watch::channel(false).0,
            delay_ms: AtomicU64::new(0),
            flap: Mutex::new(None),
            conns: Mutex::new(HashMap::new()),
            next: AtomicU64::new(1),
            stats: Stats::default(),
            stop: CancellationToken::new(),
        });
        let p = Proxy { inner: inner.clone(), local: l.local_addr()?, control: c.local_addr()? };
        tokio::spawn(accept_loop(inner.clone(), l));
        tokio::spawn(control_loop(p.clone(), c));
        Ok(p)
    }

    /// Where clients connect.
    pub fn local_addr(&self) -> SocketAddr {
        self.local
    }
    /// The control port.
    pub fn control_addr(&self) -> SocketAddr {
        self.control
    }

    /// Reset every open connection.
    pub fn cut(&self) -> usize {
        let conns: Vec<_> = self.inner.conns.lock().unwrap_or_else(|p| p.into_inner()).drain().collect();
        for (_, t) in &conns {
            t.cancel();
        }
        self.inner.stats.cuts.fetch_add(1, Ordering::Relaxed);
        tracing::info!("proxy: cut {} connection(s)", conns.len());
        conns.len()
    }
    /// Stop forwarding, sockets left open.
    pub fn blackhole(&self) {
        self.inner.blackhole.send_replace(true);
        tracing::info!("proxy: blackhole");
    }
    /// Add latency to every forwarded chunk.
    pub fn delay(&self, d: Duration) {
        self.inner.delay_ms.store(d.as_millis() as u64, Ordering::Relaxed);
    }
    /// Cut every connection every `period` until [`Proxy::resume`].
    pub fn flap(&self, period: Duration) {
        let t = CancellationToken::new();
        if let Some(old) = self.inner.flap.lock().unwrap_or_else(|p| p.into_inner()).replace(t.clone()) {
            old.cancel();
        }
        let me = self.clone();
        tokio::spawn(async move {
            loop {
                tokio::select! {
                    _ = t.cancelled() => return,
                    _ = tokio::time::sleep(period) => { me.cut(); }
                }
            }
        });
    }
    /// Clear blackhole, delay and flap.
    pub fn resume(&self) {
        if let Some(f) = self.inner.flap.lock().unwrap_or_else(|p| p.into_inner()).take() {
            f.cancel();
        }
        self.inner.delay_ms.store(0, Ordering::Relaxed);
        self.inner.blackhole.send_replace(false);
        tracing::info!("proxy: resume");
    }
    /// One status line.
    pub fn status(&self) -> String {
        let s = &self.inner.stats;
        let mode = if *self.inner.blackhole.borrow() {
            "blackhole"
        } else if self.inner.flap.lock().unwrap_or_else(|p| p.into_inner()).is_some() {
            "flap"
        } else {
            "pass"
        };
        format!(
            "mode {mode} delay_ms {} connections {} accepted {} bytes_up {} bytes_down {} cuts {}",
            self.inner.delay_ms.load(Ordering::Relaxed),
            self.inner.conns.lock().unwrap_or_else(|p| p.into_inner()).len(),
            s.accepted.load(Ordering::Relaxed),
            s.up.load(Ordering::Relaxed),
            s.down.load(Ordering::Relaxed),
            s.cuts.load(Ordering::Relaxed)
        )
    }
    /// Run one control command line; the reply line.
    pub fn command(&self, line: &str) -> String {
        let mut w = line.split_whitespace();
        let arg = |w: &mut std::str::SplitWhitespace| w.next().and_then(|v| v.parse::<u64>().ok());
        match w.next() {
            Some("cut") => format!("ok cut {}", self.cut()),
            Some("blackhole") => {
                self.blackhole();
                "ok blackhole".into()
            }
            Some("delay") => match arg(&mut w) {
                Some(ms) => {
                    self.delay(Duration::from_millis(ms));
                    format!("ok delay {ms}")
                }
                None => "error: delay needs milliseconds".into(),
            },
            Some("flap") => match arg(&mut w) {
                Some(ms) if ms > 0 => {
                    self.flap(Duration::from_millis(ms));
                    format!("ok flap {ms}")
                }
                _ => "error: flap needs milliseconds".into(),
            },
            Some("resume") => {
                self.resume();
                "ok resume".into()
            }
            Some("status") => format!("ok {}", self.status()),
            _ => format!(
                "error: unknown command \"{}\" (cut, blackhole, delay MS, flap MS, resume, status)",
                line.trim()
            ),
        }
    }
    /// Stop accepting and close everything.
    pub fn shutdown(&self) {
        self.inner.stop.cancel();
        self.cut();
    }
}

async fn accept_loop(inner: Arc<Inner>, l: TcpListener) {
    loop {
        let (client, _) = tokio::select! {
            _ = inner.stop.cancelled() => return,
            r = l.accept() => match r { Ok(v) => v, Err(_) => continue },
        };
        inner.stats.accepted.fetch_add(1, Ordering::Relaxed);
        let id = inner.next.fetch_add(1, Ordering::Relaxed);
        let cut = CancellationToken::new();
        inner.conns.lock().unwrap_or_else(|p| p.into_inner()).insert(id, cut.clone());
        let inner = inner.clone();
        tokio::spawn(async move {
            serve(&inner, client, cut).await;
            inner.conns.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        });
    }
}

async fn wait_open(bh: &mut watch::Receiver<bool>, cut: &CancellationToken) -> bool {
    loop {
        if !*bh.borrow_and_update() {
            return true;
        }
        tokio::select! {
            _ = cut.cancelled() => return false,
            r = bh.changed() => if r.is_err() { return false },
        }
    }
}

fn reset(s: &TcpStream) {
    let _ = socket2::SockRef::from(s).set_linger(Some(Duration::ZERO));
}

async fn serve(inner: &Arc<Inner>, client: TcpStream, cut: CancellationToken) {
    let mut bh = inner.blackhole.subscribe();
    if !wait_open(&mut bh, &cut).await {
        reset(&client);
        return;
    }
    let up = tokio::select! {
        _ = cut.cancelled() => { reset(&client); return; }
        r = TcpStream::connect(inner.upstream) => match r { Ok(s) => s, Err(_) => { reset(&client); return; } },
    };
    let _ = client.set_nodelay(true);
    let _ = up.set_nodelay(true);
    reset(&client);
    reset(&up); // SO_LINGER 0: closing sends RST, which is what a cut is
    let (cr, cw) = client.into_split();
    let (ur, uw) = up.into_split();
    let a = pump(inner.clone(), cr, uw, cut.clone(), true);
    let b = pump(inner.clone(), ur, cw, cut.clone(), false);
    tokio::join!(a, b);
}

async fn pump(
    inner: Arc<Inner>,
    mut rd: tokio::net::tcp::OwnedReadHalf,
    mut wr: tokio::net::tcp::OwnedWriteHalf,
    cut: CancellationToken,
    up: bool,
) {
    let mut bh = inner.blackhole.subscribe();
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        if !wait_open(&mut bh, &cut).await {
            break;
        }
        let n = tokio::select! {
            _ = cut.cancelled() => break,
            r = rd.read(&mut buf) => match r { Ok(0) | Err(_) => break, Ok(n) => n },
        };
        let d = inner.delay_ms.load(Ordering::Relaxed);
        if d > 0 {
            tokio::select! {
                _ = cut.cancelled() => break,
                _ = tokio::time::sleep(Duration::from_millis(d)) => {}
            }
        }
        // Held data is delivered once the blackhole lifts.
        if !wait_open(&mut bh, &cut).await {
            break;
        }
        if wr.write_all(&buf[..n]).await.is_err() {
            break;
        }
        let c = if up { &inner.stats.up } else { &inner.stats.down };
        c.fetch_add(n as u64, Ordering::Relaxed);
    }
    cut.cancel(); // one direction ended: end the other (dropping both halves sends RST)
}

async fn control_loop(p: Proxy, l: TcpListener) {
    loop {
        let (s, _) = tokio::select! {
            _ = p.inner.stop.cancelled() => return,
            r = l.accept() => match r { Ok(v) => v, Err(_) => continue },
        };
        let p = p.clone();
        tokio::spawn(async move {
            let (rd, mut wr) = s.into_split();
            let mut lines = BufReader::new(rd).lines();
            while let Ok(Some(line)) = lines.next_line().await {
                let reply = p.command(&line);
                if wr.write_all(format!("{reply}\n").as_bytes()).await.is_err() {
                    break;
                }
            }
        });
    }
}
