//! The fault proxy against an echo server, on loopback with ephemeral ports. Timing is only ever asserted as a
//! lower bound; the timeouts below only turn a hang into a failure.

use holdfast_testkit::proxy::Proxy;
use std::io;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::timeout;

/// Turns a hang into a test failure.
const HANG: Duration = Duration::from_secs(10);

/// How an echo connection ended, as the upstream saw it.
#[derive(Debug)]
enum End {
    Eof,
    Error(io::ErrorKind),
}

/// An echo server: every connection gets its bytes back (a FIN is echoed as a FIN); reports how each ended.
struct Echo {
    addr: SocketAddr,
    accepted: Arc<AtomicU64>,
    ends: mpsc::UnboundedReceiver<End>,
}

async fn echo() -> Echo {
    let l = TcpListener::bind("127.0.0.1:0").await.expect("bind echo");
    let addr = l.local_addr().expect("echo addr");
    let accepted = Arc::new(AtomicU64::new(0));
    let (tx, ends) = mpsc::unbounded_channel();
    let count = accepted.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            count.fetch_add(1, Ordering::SeqCst);
            let tx = tx.clone();
            tokio::spawn(async move {
                let (mut r, mut w) = s.split();
                let mut buf = vec![0u8; 64 << 10];
                let end = loop {
                    match r.read(&mut buf).await {
                        Ok(0) => {
                            let _ = w.shutdown().await;
                            break End::Eof;
                        }
                        Ok(n) => {
                            if let Err(e) = w.write_all(&buf[..n]).await {
                                break End::Error(e.kind());
                            }
                        }
                        Err(e) => break End::Error(e.kind()),
                    }
                };
                let _ = tx.send(end);
            });
        }
    });
    Echo { addr, accepted, ends }
}

fn any_port() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 0))
}

/// Deterministic pseudo-random bytes (xorshift64*).
fn random_bytes(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    let mut v = Vec::with_capacity(len + 8);
    while v.len() < len {
        x ^= x >> 12;
        x ^= x << 25;
        x ^= x >> 27;
        v.extend_from_slice(&x.wrapping_mul(0x2545_f491_4f6c_dd1d).to_le_bytes());
    }
    v.truncate(len);
    v
}

/// Sends `msg` and reads as many bytes back.
async fn round_trip(s: &mut TcpStream, msg: &[u8]) -> io::Result<Vec<u8>> {
    s.write_all(msg).await?;
    let mut back = vec![0u8; msg.len()];
    s.read_exact(&mut back).await?;
    Ok(back)
}

/// A fresh connection through the proxy that has carried one round trip (so its upstream side exists).
async fn connected(p: &Proxy) -> TcpStream {
    let mut s = TcpStream::connect(p.local_addr()).await.expect("connect to proxy");
    let back = timeout(HANG, round_trip(&mut s, b"ping")).await.expect("round trip hangs").expect("round trip");
    assert_eq!(back, b"ping");
    s
}

/// True if the connection ended (EOF or error) within `within`.
async fn ends_within(s: &mut TcpStream, within: Duration) -> bool {
    let mut buf = [0u8; 16];
    matches!(timeout(within, s.read(&mut buf)).await, Ok(Ok(0) | Err(_)))
}

#[tokio::test]
async fn bytes_pass_through_unchanged() {
    let e = echo().await;
    let p = Proxy::start(any_port(), e.addr).await.expect("start proxy");
    let data = random_bytes(1 << 20, 0x5eed);
    let s = TcpStream::connect(p.local_addr()).await.expect("connect");
    let (mut r, mut w) = s.into_split();
    let to_send = data.clone();
    let writer = tokio::spawn(async move {
        w.write_all(&to_send).await?;
        w.shutdown().await
    });
    let mut back = Vec::new();
    timeout(HANG, r.read_to_end(&mut back)).await.expect("echo hangs").expect("read back");
    writer.await.expect("writer task").expect("write");
    assert!(back == data, "bytes changed on the way ({} bytes back)", back.len());
    // The counters are updated right after each write; give them a moment.
    let t0 = Instant::now();
    let mut st = p.stats();
    while (st.bytes_up, st.bytes_down) != (1 << 20, 1 << 20) && t0.elapsed() < HANG {
        tokio::time::sleep(Duration::from_millis(10)).await;
        st = p.stats();
    }
    assert_eq!((st.bytes_up, st.bytes_down, st.accepted, st.cuts), (1 << 20, 1 << 20, 1, 0), "{st}");
    assert_eq!(st.mode(), "pass");
    p.shutdown().await;
}

#[tokio::test]
async fn cut_resets_both_sides_and_later_connections_work() {
    let mut e = echo().await;
    let p = Proxy::start(any_port(), e.addr).await.expect("start proxy");
    let mut a = connected(&p).await;
    let mut b = connected(&p).await;
    assert_eq!(p.stats().connections, 2);

    assert_eq!(p.cut().await, 2);
    // A cut is a reset (SO_LINGER 0), not a FIN, on both sides.
    let mut buf = [0u8; 16];
    for s in [&mut a, &mut b] {
        let r = timeout(HANG, s.read(&mut buf)).await.expect("client did not see the cut");
        assert_eq!(r.map_err(|e| e.kind()), Err(io::ErrorKind::ConnectionReset));
    }
    for _ in 0..2 {
        let end = timeout(HANG, e.ends.recv()).await.expect("upstream did not see the cut").expect("echo alive");
        assert!(matches!(end, End::Error(io::ErrorKind::ConnectionReset)), "{end:?}");
    }

    let mut c = connected(&p).await;
    assert_eq!(round_trip(&mut c, b"after the cut").await.expect("round trip"), b"after the cut");
    let st = p.stats();
    assert_eq!((st.cuts, st.connections_cut, st.connections, st.accepted), (1, 2, 1, 3), "{st}");
}

#[tokio::test]
async fn blackhole_holds_data_and_resume_delivers_it() {
    let e = echo().await;
    let p = Proxy::start(any_port(), e.addr).await.expect("start proxy");
    let mut s = connected(&p).await;
    p.blackhole();
    assert_eq!(p.stats().mode(), "blackhole");

    let data = random_bytes(100_000, 7);
    s.write_all(&data).await.expect("write while blackholed");
    // A new connection is accepted but hangs: its upstream connect waits for resume.
    let mut late = TcpStream::connect(p.local_addr()).await.expect("connect while blackholed");
    late.write_all(b"late").await.expect("write while blackholed");

    let mut buf = [0u8; 16];
    assert!(timeout(Duration::from_millis(500), s.read(&mut buf)).await.is_err(), "data or EOF got through");
    assert!(timeout(Duration::from_millis(100), late.read(&mut buf)).await.is_err(), "data or EOF got through");
    assert_eq!(e.accepted.load(Ordering::SeqCst), 1, "upstream connect not deferred");
    assert_eq!(p.stats().connections, 2);

    p.resume();
    let mut back = vec![0u8; data.len()];
    timeout(HANG, s.read_exact(&mut back)).await.expect("held data not delivered").expect("read");
    assert!(back == data, "held data changed");
    let mut back = [0u8; 4];
    timeout(HANG, late.read_exact(&mut back)).await.expect("late connection not forwarded").expect("read");
    assert_eq!(&back, b"late");
    assert_eq!(e.accepted.load(Ordering::SeqCst), 2);
}

#[tokio::test]
async fn blackhole_applies_backpressure() {
    let e = echo().await;
    let p = Proxy::start(any_port(), e.addr).await.expect("start proxy");
    let s = connected(&p).await;
    p.blackhole();
    // Far more than the proxy holds (4 MiB) plus what the kernel buffers on loopback.
    let len = 64 << 20;
    let data = Arc::new(random_bytes(len, 99));
    let (mut r, mut w) = s.into_split();
    let to_send = data.clone();
    let writer = tokio::spawn(async move { w.write_all(&to_send).await });
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert!(!writer.is_finished(), "64 MiB went into a blackhole without backpressure");

    p.resume();
    let mut back = vec![0u8; len];
    timeout(Duration::from_secs(60), r.read_exact(&mut back)).await.expect("held data not delivered").expect("read");
    writer.await.expect("writer task").expect("write");
    assert!(back == *data, "held data changed");
}

#[tokio::test]
async fn delay_adds_latency_each_way() {
    let e = echo().await;
    let p = Proxy::start(any_port(), e.addr).await.expect("start proxy");
    let mut s = connected(&p).await;
    p.delay(Duration::from_millis(200));
    assert_eq!(p.stats().mode(), "delay");
    let t0 = Instant::now();
    assert_eq!(round_trip(&mut s, b"slow").await.expect("round trip"), b"slow");
    let rtt = t0.elapsed();
    assert!(rtt >= Duration::from_millis(400), "round trip {rtt:?} with 200 ms each way");

    p.delay(Duration::ZERO);
    assert_eq!(round_trip(&mut s, b"fast").await.expect("round trip"), b"fast");
    assert_eq!(p.stats().mode(), "pass");
}

#[tokio::test]
async fn flap_cuts_connections_until_resume() {
    let e = echo().await;
    let p = Proxy::start(any_port(), e.addr).await.expect("start proxy");
    let mut s = connected(&p).await;
    p.flap(Duration::from_millis(100));
    assert_eq!(p.stats().mode(), "flap");
    assert!(ends_within(&mut s, HANG).await, "flap did not cut the connection");
    assert!(p.stats().cuts >= 1);

    p.resume();
    let cuts = p.stats().cuts;
    let mut s = connected(&p).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert_eq!(round_trip(&mut s, b"steady").await.expect("connection cut after resume"), b"steady");
    assert!(p.stats().cuts <= cuts + 1, "flap still running after resume");
}

/// Sends one control line, returns the reply line.
async fn ask(c: &mut BufReader<TcpStream>, cmd: &str) -> String {
    c.get_mut().write_all(format!("{cmd}\n").as_bytes()).await.expect("send command");
    let mut line = String::new();
    timeout(HANG, c.read_line(&mut line)).await.expect("no reply").expect("read reply");
    assert!(line.ends_with('\n'), "reply {line:?} is not a line");
    line.trim_end().to_string()
}

#[tokio::test]
async fn control_port_answers() {
    let e = echo().await;
    let p = Proxy::start(any_port(), e.addr).await.expect("start proxy");
    let _s = connected(&p).await;
    let mut c = BufReader::new(TcpStream::connect(p.control_addr()).await.expect("connect to control port"));

    let status = ask(&mut c, "status").await;
    assert!(status.starts_with("ok mode pass "), "{status}");
    assert!(status.contains(" connections 1 "), "{status}");
    assert!(status.contains(" bytes_up 4 bytes_down 4 cuts 0"), "{status}");
    assert_eq!(ask(&mut c, "delay 250").await, "ok delay 250");
    assert_eq!(ask(&mut c, "blackhole").await, "ok blackhole");
    assert!(ask(&mut c, "status").await.starts_with("ok mode blackhole delay_ms 250 "));
    assert_eq!(ask(&mut c, "flap 1000").await, "ok flap 1000");
    assert_eq!(ask(&mut c, "resume").await, "ok resume");
    assert!(ask(&mut c, "status").await.starts_with("ok mode pass delay_ms 0 "));
    assert_eq!(ask(&mut c, "cut").await, "ok cut 1");
    assert!(ask(&mut c, "frobnicate").await.starts_with("error: "));
    assert!(ask(&mut c, "delay soon").await.starts_with("error: "));
    assert!(ask(&mut c, "flap 0").await.starts_with("error: "));
    assert!(ask(&mut c, "cut now").await.starts_with("error: "));
    assert_eq!(p.command("status").await, format!("ok {}", p.stats()));
}
