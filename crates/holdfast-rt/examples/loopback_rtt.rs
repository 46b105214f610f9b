//! The latency floor for bench/run.sh: request/answer round trips over loopback TCP between two processes
//! that spin on nonblocking sockets, with no NVMe work and no runtime at all. With a 72-byte request and a
//! 4144-byte answer it has the wire shape of a 4 KiB read at QD1 (CapsuleCmd; C2HData + CapsuleResp), so a
//! QD1 latency divided by this floor, both measured in one run with the same pinning, says what the stack adds.
//!
//! ```text
//! taskset -c 0 loopback_rtt serve PORT [ANSWER_BYTES]      # answers until the client goes
//! taskset -c 1 loopback_rtt client PORT [ANSWER_BYTES] [SECONDS]   # prints the mean round trip in µs
//! ```
use std::io::{ErrorKind, Read, Write};
use std::net::{TcpListener, TcpStream};
use std::time::{Duration, Instant};

const REQUEST: usize = 72;

/// Fill `buf` from a nonblocking socket, spinning on WouldBlock; false on EOF.
fn read_spin(s: &mut TcpStream, buf: &mut [u8]) -> std::io::Result<bool> {
    let mut got = 0;
    while got < buf.len() {
        match s.read(&mut buf[got..]) {
            Ok(0) => return Ok(false),
            Ok(n) => got += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e),
        }
    }
    Ok(true)
}

fn write_spin(s: &mut TcpStream, buf: &[u8]) -> std::io::Result<()> {
    let mut sent = 0;
    while sent < buf.len() {
        match s.write(&buf[sent..]) {
            Ok(n) => sent += n,
            Err(e) if e.kind() == ErrorKind::WouldBlock => std::hint::spin_loop(),
            Err(e) => return Err(e),
        }
    }
    Ok(())
}

fn open(s: &TcpStream) -> std::io::Result<()> {
    s.set_nodelay(true)?;
    s.set_nonblocking(true)
}

fn main() -> std::io::Result<()> {
    let args: Vec<String> = std::env::args().collect();
    let usage = "usage: loopback_rtt serve PORT [ANSWER_BYTES] | client PORT [ANSWER_BYTES] [SECONDS]";
    let (mode, port) = match (args.get(1), args.get(2).and_then(|p| p.parse::<u16>().ok())) {
        (Some(m), Some(p)) => (m.as_str(), p),
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    };
    let answer: usize = args.get(3).and_then(|a| a.parse().ok()).unwrap_or(4096 + 24 + 24);
    let mut req = [0u8; REQUEST];
    let mut ans = vec![0u8; answer];
    match mode {
        "serve" => {
            let l = TcpListener::bind(("127.0.0.1", port))?;
            let (mut s, _) = l.accept()?;
            open(&s)?;
            while read_spin(&mut s, &mut req)? {
                write_spin(&mut s, &ans)?;
            }
        }
        "client" => {
            let secs: f64 = args.get(4).and_then(|a| a.parse().ok()).unwrap_or(3.0);
            let t0 = Instant::now();
            let mut s = loop {
                match TcpStream::connect(("127.0.0.1", port)) {
                    Ok(s) => break s,
                    Err(_) if t0.elapsed() < Duration::from_secs(5) => std::thread::sleep(Duration::from_millis(20)),
                    Err(e) => return Err(e),
                }
            };
            open(&s)?;
            let mut round = |s: &mut TcpStream| -> std::io::Result<()> {
                write_spin(s, &req)?;
                if !read_spin(s, &mut ans)? {
                    return Err(ErrorKind::UnexpectedEof.into());
                }
                Ok(())
            };
            let warm = Instant::now();
            while warm.elapsed() < Duration::from_millis(300) {
                round(&mut s)?;
            }
            let (start, mut n) = (Instant::now(), 0u64);
            while start.elapsed().as_secs_f64() < secs {
                for _ in 0..1000 {
                    round(&mut s)?;
                }
                n += 1000;
            }
            println!("{:.2}", start.elapsed().as_secs_f64() * 1e6 / n as f64);
        }
        _ => {
            eprintln!("{usage}");
            std::process::exit(2);
        }
    }
    Ok(())
}
