//! `holdfast nbd` over loopback, driven byte by byte by a minimal NBD client written here from the protocol
//! (doc/proto.md of the NBD reference implementation): the handshake's replies, every request type, the
//! errors the protocol names for bad requests, and the connection dropped for abuse. Independent clients
//! (qemu-io, qemu-img, nbdcopy, nbdinfo) are run by scripts/interop-nbd.sh.

mod common;
use common::{TargetProc, BIN};
use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

const NQN: &str = "nqn.2026-01.io.holdfast:nbd";
const IHAVEOPT: &[u8; 8] = b"IHAVEOPT";
const REPLY_MAGIC: u64 = 0x0003_e889_0455_65a9;
const SIZE: u64 = 16 << 20;

const OPT_EXPORT_NAME: u32 = 1;
const OPT_ABORT: u32 = 2;
const OPT_LIST: u32 = 3;
const OPT_STARTTLS: u32 = 5;
const OPT_INFO: u32 = 6;
const OPT_GO: u32 = 7;
const OPT_STRUCTURED_REPLY: u32 = 8;
const REP_ACK: u32 = 1;
const REP_SERVER: u32 = 2;
const REP_INFO: u32 = 3;
const REP_ERR_UNSUP: u32 = (1 << 31) + 1;
const REP_ERR_INVALID: u32 = (1 << 31) + 3;
const REP_ERR_UNKNOWN: u32 = (1 << 31) + 6;
const CMD_READ: u16 = 0;
const CMD_WRITE: u16 = 1;
const CMD_DISC: u16 = 2;
const CMD_FLUSH: u16 = 3;
const CMD_TRIM: u16 = 4;
const CMD_WRITE_ZEROES: u16 = 6;
const FLAG_FUA: u16 = 1;
const EPERM: u32 = 1;
const EIO: u32 = 5;
const EINVAL: u32 = 22;
const ENOSPC: u32 = 28;

/// `holdfast nbd` on an ephemeral port, killed (by PID) when dropped.
struct Bridge {
    child: Child,
    port: u16,
}

impl Bridge {
    fn start(t: &TargetProc, extra: &[&str]) -> Bridge {
        let addr = t.addr();
        let mut child = Command::new(BIN)
            .args(["nbd", "--addr", &addr, "--nqn", NQN, "--listen", "127.0.0.1:0"])
            .args(extra)
            .stdout(Stdio::piped())
            .stderr(if std::env::var_os("NBD_TEST_LOG").is_some() { Stdio::inherit() } else { Stdio::null() })
            .spawn()
            .expect("start holdfast nbd");
        let mut lines = BufReader::new(child.stdout.take().expect("stdout")).lines();
        let mut port = 0;
        for line in lines.by_ref() {
            let line = line.expect("read");
            if let Some(rest) = line.strip_prefix("listening: ") {
                port = rest.rsplit(':').next().unwrap().parse().unwrap();
                break;
            }
        }
        assert_ne!(port, 0, "holdfast nbd printed no listening line");
        // Whatever it prints later must not meet a closed pipe.
        std::thread::spawn(move || lines.for_each(drop));
        Bridge { child, port }
    }
}

impl Drop for Bridge {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// A client connection in the handshake, then in transmission.
struct Client {
    s: TcpStream,
}

/// One option reply: its type and data.
type OptReply = (u32, Vec<u8>);

impl Client {
    /// Connect and answer the greeting with `flags`.
    fn connect(port: u16, flags: u32) -> Client {
        let mut s = TcpStream::connect(("127.0.0.1", port)).unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut g = [0u8; 18];
        s.read_exact(&mut g).unwrap();
        assert_eq!(&g[..16], b"NBDMAGICIHAVEOPT");
        assert_eq!(u16::from_be_bytes([g[16], g[17]]), 0b11, "fixed newstyle, no zeroes");
        s.write_all(&flags.to_be_bytes()).unwrap();
        Client { s }
    }

    fn send_option(&mut self, option: u32, data: &[u8]) {
        let mut b = IHAVEOPT.to_vec();
        b.extend_from_slice(&option.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.s.write_all(&b).unwrap();
    }

    /// Send an option, collect its replies up to the final one (ACK or an error).
    fn option(&mut self, option: u32, data: &[u8]) -> Vec<OptReply> {
        self.send_option(option, data);
        let mut out = Vec::new();
        loop {
            let mut h = [0u8; 20];
            self.s.read_exact(&mut h).unwrap();
            assert_eq!(u64::from_be_bytes(h[0..8].try_into().unwrap()), REPLY_MAGIC);
            assert_eq!(u32::from_be_bytes(h[8..12].try_into().unwrap()), option, "reply to the option sent");
            let ty = u32::from_be_bytes(h[12..16].try_into().unwrap());
            let mut d = vec![0u8; u32::from_be_bytes(h[16..20].try_into().unwrap()) as usize];
            self.s.read_exact(&mut d).unwrap();
            out.push((ty, d));
            if ty == REP_ACK || ty & (1 << 31) != 0 {
                return out;
            }
        }
    }

    fn request(&mut self, ty: u16, flags: u16, handle: u64, offset: u64, len: u32, payload: &[u8]) {
        let mut b = Vec::with_capacity(28 + payload.len());
        b.extend_from_slice(&0x2560_9513u32.to_be_bytes());
        b.extend_from_slice(&flags.to_be_bytes());
        b.extend_from_slice(&ty.to_be_bytes());
        b.extend_from_slice(&handle.to_be_bytes());
        b.extend_from_slice(&offset.to_be_bytes());
        b.extend_from_slice(&len.to_be_bytes());
        b.extend_from_slice(payload);
        self.s.write_all(&b).unwrap();
    }

    /// A simple reply's error and handle.
    fn reply(&mut self) -> (u32, u64) {
        let mut h = [0u8; 16];
        self.s.read_exact(&mut h).unwrap();
        assert_eq!(u32::from_be_bytes(h[0..4].try_into().unwrap()), 0x6744_6698, "simple reply magic");
        (u32::from_be_bytes(h[4..8].try_into().unwrap()), u64::from_be_bytes(h[8..16].try_into().unwrap()))
    }

    /// One request and its reply's error (and data, for a successful read).
    fn call(&mut self, ty: u16, flags: u16, offset: u64, len: u32, payload: &[u8]) -> (u32, Vec<u8>) {
        self.request(ty, flags, 77, offset, len, payload);
        let (e, h) = self.reply();
        assert_eq!(h, 77);
        let mut d = Vec::new();
        if ty == CMD_READ && e == 0 {
            d = vec![0u8; len as usize];
            self.s.read_exact(&mut d).unwrap();
        }
        (e, d)
    }

    /// Read until the server closes the connection (EOF or reset) and return how many bytes came first;
    /// panic if the read fails otherwise (the read timeout passing: the connection was not closed).
    fn bytes_until_closed(&mut self) -> usize {
        let (mut got, mut buf) = (0usize, vec![0u8; 1 << 20]);
        loop {
            match self.s.read(&mut buf) {
                Ok(0) => return got,
                Ok(n) => got += n,
                Err(e) if e.kind() == std::io::ErrorKind::ConnectionReset => return got,
                Err(e) => panic!("the connection was not closed ({got} bytes read): {e}"),
            }
        }
    }

    /// Wait (up to 60 s) until a reply has begun to arrive, without reading it: from then on the server waits
    /// for this client to read, and its stall timer runs. (Sleeping a fixed time after the requests instead
    /// counted the target's time to read their data, seconds on a loaded machine, as the client's stall.)
    fn wait_for_a_reply(&mut self) {
        let before = self.s.read_timeout().unwrap();
        self.s.set_read_timeout(Some(Duration::from_secs(60))).unwrap();
        let mut one = [0u8; 1];
        assert_eq!(self.s.peek(&mut one).expect("no reply within 60 s"), 1);
        self.s.set_read_timeout(before).unwrap();
    }

    /// True if the server closed the connection (EOF or reset) within the read timeout.
    fn closed(&mut self) -> bool {
        let mut b = [0u8; 1];
        matches!(self.s.read(&mut b), Ok(0) | Err(_))
    }
}

fn go(port: u16) -> Client {
    let mut c = Client::connect(port, 0b11);
    let r = c.option(OPT_GO, &[0, 0, 0, 0, 0, 1, 0, 3]);
    assert_eq!(r.last().unwrap().0, REP_ACK, "{r:?}");
    c
}

/// [`go`] without a block-size request to an export that must say it is read-only (NBD_FLAG_READ_ONLY).
fn go_read_only(port: u16) -> Client {
    let mut c = Client::connect(port, 0b11);
    let r = c.option(OPT_GO, &[0, 0, 0, 0, 0, 0]);
    assert_eq!(r.last().unwrap().0, REP_ACK);
    let e = info(&r, 0).unwrap();
    assert_ne!(u16::from_be_bytes([e[8], e[9]]) & 2, 0, "READ_ONLY flag");
    c
}

fn info(r: &[OptReply], ty: u16) -> Option<Vec<u8>> {
    r.iter().find(|(t, d)| *t == REP_INFO && d[0..2] == ty.to_be_bytes()).map(|(_, d)| d[2..].to_vec())
}

#[test]
fn handshake_answers_every_option_as_the_protocol_says() {
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "16"]);
    let b = Bridge::start(&t, &[]);
    let mut c = Client::connect(b.port, 0b11);
    // LIST: the export, then ACK; with data it is invalid.
    let r = c.option(OPT_LIST, &[]);
    assert_eq!(r, vec![(REP_SERVER, [&8u32.to_be_bytes()[..], b"holdfast"].concat()), (REP_ACK, vec![])]);
    assert_eq!(c.option(OPT_LIST, b"x").last().unwrap().0, REP_ERR_INVALID);
    // Unknown export, malformed INFO, TLS, structured replies, an option nobody defined.
    let r = c.option(OPT_INFO, &[&5u32.to_be_bytes()[..], b"other", &[0, 0]].concat());
    assert_eq!(r.len(), 1, "no information for an unknown export: {r:?}");
    assert_eq!(r[0].0, REP_ERR_UNKNOWN);
    assert!(String::from_utf8_lossy(&r[0].1).contains("other"), "the error names the export");
    assert_eq!(c.option(OPT_INFO, &[0, 0, 0, 9, b'a']).last().unwrap().0, REP_ERR_INVALID);
    assert_eq!(c.option(OPT_INFO, &[0, 0, 0, 0, 0, 1]).last().unwrap().0, REP_ERR_INVALID, "a request missing");
    assert_eq!(c.option(OPT_STARTTLS, &[]).last().unwrap().0, REP_ERR_UNSUP);
    assert_eq!(c.option(OPT_STRUCTURED_REPLY, &[]).last().unwrap().0, REP_ERR_UNSUP);
    assert_eq!(c.option(99, b"whatever").last().unwrap().0, REP_ERR_UNSUP);
    // INFO by name, asking for the name, description and block sizes.
    let r = c.option(OPT_INFO, &[&8u32.to_be_bytes()[..], b"holdfast", &[0, 3, 0, 1, 0, 2, 0, 3]].concat());
    assert_eq!(r.last().unwrap().0, REP_ACK, "{r:?}");
    let e = info(&r, 0).expect("NBD_INFO_EXPORT");
    assert_eq!(u64::from_be_bytes(e[0..8].try_into().unwrap()), SIZE);
    let flags = u16::from_be_bytes([e[8], e[9]]);
    // HAS_FLAGS, SEND_FLUSH, SEND_FUA, SEND_TRIM, SEND_WRITE_ZEROES, CAN_MULTI_CONN; not READ_ONLY.
    assert_eq!(flags, 1 | 1 << 2 | 1 << 3 | 1 << 5 | 1 << 6 | 1 << 8);
    assert_eq!(info(&r, 1).unwrap(), b"holdfast");
    assert!(String::from_utf8(info(&r, 2).unwrap()).unwrap().contains(NQN));
    let bs = info(&r, 3).expect("NBD_INFO_BLOCK_SIZE");
    let be = |i: usize| u32::from_be_bytes(bs[i..i + 4].try_into().unwrap());
    assert_eq!((be(0), be(4), be(8)), (512, 4096, 32 << 20));
    // ABORT: ACK, then the server closes.
    assert_eq!(c.option(OPT_ABORT, &[]), vec![(REP_ACK, vec![])]);
    assert!(c.closed());

    // The old way in: NBD_OPT_EXPORT_NAME is answered with size and flags, no zeroes when asked for none.
    let mut c = Client::connect(b.port, 0b11);
    c.send_option(OPT_EXPORT_NAME, b"");
    let mut d = [0u8; 10];
    c.s.read_exact(&mut d).unwrap();
    assert_eq!(u64::from_be_bytes(d[0..8].try_into().unwrap()), SIZE);
    assert_eq!(c.call(CMD_READ, 0, 0, 512, &[]).0, 0);
    // Without NBD_FLAG_C_NO_ZEROES the 124 zero bytes follow.
    let mut c = Client::connect(b.port, 0b01);
    c.send_option(OPT_EXPORT_NAME, b"holdfast");
    let mut d = [0xffu8; 134];
    c.s.read_exact(&mut d).unwrap();
    assert!(d[10..].iter().all(|&x| x == 0));
    assert_eq!(c.call(CMD_READ, 0, 0, 512, &[]).0, 0);

    // Dropped: a client flag never offered, an unknown export by EXPORT_NAME, a wrong option magic.
    let mut c = Client::connect(b.port, 0b111);
    assert!(c.closed(), "unknown client flag");
    let mut c = Client::connect(b.port, 0b11);
    c.send_option(OPT_EXPORT_NAME, b"nope");
    assert!(c.closed(), "EXPORT_NAME of an unknown export cannot be answered otherwise");
    let mut c = Client::connect(b.port, 0b11);
    c.s.write_all(&[0u8; 16]).unwrap();
    assert!(c.closed(), "option without IHAVEOPT");
}

#[test]
fn requests_do_what_they_say_and_bad_ones_get_the_protocols_errors() {
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "16"]);
    let b = Bridge::start(&t, &[]);
    let mut c = go(b.port);
    let pattern: Vec<u8> = (0..8192u32).map(|i| (i * 7 + 3) as u8).collect();
    assert_eq!(c.call(CMD_WRITE, FLAG_FUA, 4096, 8192, &pattern).0, 0);
    assert_eq!(c.call(CMD_READ, 0, 4096, 8192, &[]), (0, pattern.clone()));
    assert_eq!(c.call(CMD_FLUSH, 0, 0, 0, &[]).0, 0);
    // Write zeroes (FUA too) and trim.
    assert_eq!(c.call(CMD_WRITE_ZEROES, FLAG_FUA, 4096, 4096, &[]).0, 0);
    assert_eq!(c.call(CMD_READ, 0, 4096, 8192, &[]).1, [vec![0u8; 4096], pattern[4096..].to_vec()].concat());
    assert_eq!(c.call(CMD_TRIM, 0, 2 << 20, 4096, &[]).0, 0);
    // A zero-length read is answered with no data.
    assert_eq!(c.call(CMD_READ, 0, 0, 0, &[]), (0, vec![]));

    // Misaligned to the 512-byte blocks, beyond the end (a write: ENOSPC, its payload still taken in),
    // too large, an unknown command, a flag the command does not have.
    assert_eq!(c.call(CMD_READ, 0, 100, 512, &[]).0, EINVAL);
    assert_eq!(c.call(CMD_READ, 0, 100, 0, &[]).0, EINVAL, "no data, but at a misaligned offset");
    assert_eq!(c.call(CMD_READ, 0, 0, 100, &[]).0, EINVAL);
    assert_eq!(c.call(CMD_READ, 0, SIZE - 512, 1024, &[]).0, EINVAL);
    assert_eq!(c.call(CMD_READ, 0, u64::MAX - 511, 512, &[]).0, EINVAL);
    assert_eq!(c.call(CMD_WRITE, 0, SIZE, 512, &[1u8; 512]).0, ENOSPC);
    assert_eq!(c.call(CMD_WRITE_ZEROES, 0, SIZE - 512, 1024, &[]).0, ENOSPC);
    assert_eq!(c.call(CMD_READ, 0, 0, (32 << 20) + 512, &[]).0, EINVAL);
    assert_eq!(c.call(42, 0, 0, 512, &[]).0, EINVAL);
    assert_eq!(c.call(CMD_READ, 1 << 1, 0, 512, &[]).0, EINVAL, "NO_HOLE on a read");
    assert_eq!(c.call(CMD_READ, 0, 4096, 8192, &[]).1[4096..], pattern[4096..], "still in step");

    // 64 reads sent at once: every one answered, each under its own handle with its own data.
    for i in 0..64u64 {
        let block: Vec<u8> = vec![i as u8; 512];
        assert_eq!(c.call(CMD_WRITE, 0, (1 << 20) + i * 512, 512, &block).0, 0);
    }
    for i in 0..64u64 {
        c.request(CMD_READ, 0, 1000 + i, (1 << 20) + i * 512, 512, &[]);
    }
    let mut seen = std::collections::HashSet::new();
    for _ in 0..64 {
        let (e, h) = c.reply();
        assert_eq!(e, 0);
        let mut d = [0u8; 512];
        c.s.read_exact(&mut d).unwrap();
        assert!(d.iter().all(|&x| x as u64 == h - 1000), "handle {h} got the data of another read");
        assert!(seen.insert(h));
    }
    // DISC: no reply; the server closes.
    c.request(CMD_DISC, 0, 1, 0, 0, &[]);
    assert!(c.closed());

    // Dropped: a request with the wrong magic, a write whose payload is too large to take in.
    let mut c = go(b.port);
    c.s.write_all(&[0u8; 28]).unwrap();
    assert!(c.closed(), "wrong request magic");
    let mut c = go(b.port);
    c.request(CMD_WRITE, 0, 9, 0, (32 << 20) + 512, &[]);
    assert!(c.closed(), "a write over 32 MiB");
    // The bridge serves on.
    let mut c = go(b.port);
    assert_eq!(c.call(CMD_READ, 0, 4096 + 4096, 4096, &[]).1, pattern[4096..]);
}

#[test]
fn a_read_only_export_refuses_changes_with_eperm() {
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "16"]);
    let b = Bridge::start(&t, &["--read-only"]);
    let mut c = go_read_only(b.port);
    assert_eq!(c.call(CMD_WRITE, 0, 0, 512, &[5u8; 512]).0, EPERM);
    assert_eq!(c.call(CMD_TRIM, 0, 0, 512, &[]).0, EPERM);
    assert_eq!(c.call(CMD_WRITE_ZEROES, 0, 0, 512, &[]).0, EPERM);
    assert_eq!(c.call(CMD_READ, 0, 0, 512, &[]), (0, vec![0u8; 512]));
    assert_eq!(c.call(CMD_FLUSH, 0, 0, 0, &[]).0, 0);
}

/// A namespace the target write-protects (`holdfast target --file PATH --read-only`) is exported read-only
/// without --read-only on the bridge: clients are told (NBD_FLAG_READ_ONLY), changes get EPERM, the file stays.
#[test]
fn a_write_protected_namespace_is_exported_read_only() {
    let path = std::env::temp_dir().join(format!("holdfast-nbd-ro-{}.img", std::process::id()));
    std::fs::write(&path, vec![9u8; 1 << 20]).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["target", "--listen", "127.0.0.1:0", "--nqn", NQN, "--read-only", "--file"]).arg(&path);
    let t = TargetProc::spawn(cmd);
    let b = Bridge::start(&t, &[]);
    let mut c = go_read_only(b.port);
    assert_eq!(c.call(CMD_WRITE, 0, 0, 512, &[5u8; 512]).0, EPERM);
    assert_eq!(c.call(CMD_READ, 0, 512, 512, &[]), (0, vec![9u8; 512]));
    drop((c, b, t));
    assert!(std::fs::read(&path).unwrap() == vec![9u8; 1 << 20], "the file changed");
    let _ = std::fs::remove_file(&path);
}

#[test]
fn a_misaligned_trim_is_narrowed_to_the_whole_blocks_inside_it() {
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "16"]);
    let b = Bridge::start(&t, &[]);
    let mut c = go(b.port);
    let (head, tail) = (vec![0x11u8; 512], vec![0x22u8; 512]);
    assert_eq!(c.call(CMD_WRITE, 0, 0, 512, &head).0, 0);
    assert_eq!(c.call(CMD_WRITE, 0, 9728, 512, &tail).0, 0);
    // Bytes 7..10007: blocks 1..19 are trimmed; blocks 0 and 19, which it only touches, keep their data.
    assert_eq!(c.call(CMD_TRIM, 0, 7, 10000, &[]).0, 0);
    assert_eq!(c.call(CMD_READ, 0, 0, 512, &[]).1, head);
    assert_eq!(c.call(CMD_READ, 0, 9728, 512, &[]).1, tail);
    assert_eq!(c.call(CMD_TRIM, 0, 100, 300, &[]).0, 0, "no whole block inside: nothing to do");
    assert_eq!(c.call(CMD_TRIM, 0, SIZE - 100, 200, &[]).0, EINVAL, "beyond the end");
}

/// SIGTERM: every request received before it is answered, data and all (the bridge keeps reading, so the
/// close is not a reset that discards replies on their way), and one that arrives after it gets ESHUTDOWN.
#[test]
fn at_sigterm_requests_received_are_answered_and_later_ones_get_eshutdown() {
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "16"]);
    let b = Bridge::start(&t, &[]);
    let mut c = go(b.port);
    for i in 0..16u64 {
        assert_eq!(c.call(CMD_WRITE, 0, i << 20, 512, &[i as u8; 512]).0, 0);
    }
    // 16 reads of 1 MiB, not read yet: their replies fill the socket buffers and wait in the bridge.
    for i in 0..16u64 {
        c.request(CMD_READ, 0, i, i << 20, 1 << 20, &[]);
    }
    std::thread::sleep(Duration::from_millis(300));
    let kill = Command::new("kill").args(["-TERM", &b.child.id().to_string()]).status().unwrap();
    assert!(kill.success());
    std::thread::sleep(Duration::from_secs(1));
    c.request(CMD_READ, 0, 100, 0, 512, &[]);
    let mut answered = std::collections::HashMap::new();
    for _ in 0..17 {
        let (e, h) = c.reply();
        if e == 0 {
            let mut d = vec![0u8; 1 << 20];
            c.s.read_exact(&mut d).unwrap();
            assert_eq!(d[0], h as u8, "read {h} got another's data");
        }
        answered.insert(h, e);
    }
    assert_eq!((0..16).map(|h| answered.get(&h).copied()).collect::<Vec<_>>(), vec![Some(0); 16]);
    assert_eq!(answered.get(&100), Some(&108), "a request after SIGTERM: ESHUTDOWN");
    assert!(c.closed(), "then the bridge closes");
    let mut b = b;
    assert_eq!(exit_within(&mut b.child, Duration::from_secs(20)), Some(0), "a clean stop exits 0");
}

/// The bridge's exit code, waited for up to `limit` (a bound for liveness; None: still running).
fn exit_within(child: &mut Child, limit: Duration) -> Option<i32> {
    let t0 = std::time::Instant::now();
    loop {
        if let Some(st) = child.try_wait().unwrap() {
            return Some(st.code().unwrap_or(-1));
        }
        if t0.elapsed() > limit {
            return None;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A second SIGTERM closes the connections still busy: their requests go unanswered or fail, and the bridge
/// says so with its exit code (1), as `--device` does; it exited 0 before.
#[test]
fn a_forced_stop_exits_with_an_error() {
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "1", "--test-delay-writes-ms", "8000"]);
    let mut b = Bridge::start(&t, &[]);
    let mut c = go(b.port);
    c.request(CMD_WRITE, 0, 1, 0, 512, &[7u8; 512]);
    std::thread::sleep(Duration::from_millis(300));
    for _ in 0..2 {
        assert!(Command::new("kill").args(["-TERM", &b.child.id().to_string()]).status().unwrap().success());
        std::thread::sleep(Duration::from_millis(300));
    }
    assert_eq!(exit_within(&mut b.child, Duration::from_secs(20)), Some(1));
    drop((c, t));
}

/// A client stopped half way through an option's data does not hold up a stop: at SIGTERM a client still
/// negotiating has a moment to finish its option, then is closed, and the bridge exits 0 (it kept the
/// handshake's 60 s, past the 30 s drain, and the stop ended forced, exit 1: found by a review).
#[test]
fn a_client_half_way_through_an_option_does_not_hold_up_a_stop() {
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "1"]);
    let mut b = Bridge::start(&t, &[]);
    let mut c = Client::connect(b.port, 0b11);
    let mut h = IHAVEOPT.to_vec();
    h.extend_from_slice(&OPT_GO.to_be_bytes());
    h.extend_from_slice(&100u32.to_be_bytes());
    h.extend_from_slice(&[0u8; 10]); // 10 of the 100 bytes promised
    c.s.write_all(&h).unwrap();
    std::thread::sleep(Duration::from_millis(300));
    assert!(Command::new("kill").args(["-TERM", &b.child.id().to_string()]).status().unwrap().success());
    assert_eq!(exit_within(&mut b.child, Duration::from_secs(20)), Some(0), "the stop was held up or forced");
    drop((c, t));
}

/// Once the controller is lost for good (the target gone past ctrl_loss_tmo), the bridge stops with an error
/// that says so, instead of serving an export that fails every request to every client that connects.
#[test]
fn the_bridge_stops_once_its_controller_is_lost() {
    let mut t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "1"]);
    let mut b = Bridge::start(&t, &["--ctrl-loss-tmo-ms", "500", "--reconnect-delay-ms", "100"]);
    let _ = t.child.kill();
    let _ = t.child.wait();
    assert_eq!(exit_within(&mut b.child, Duration::from_secs(20)), Some(1), "the bridge is still serving");
}

/// The bridge binds its listener before it contacts the target: a taken address is said at once, and
/// nothing is asked of the target (here there is none to ask).
#[test]
fn a_taken_listen_address_is_said_before_the_target_is_contacted() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let out = Command::new(BIN)
        .args(["nbd", "--addr", "127.0.0.1:1", "--nqn", NQN, "--listen", &taken.local_addr().unwrap().to_string()])
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("cannot listen on"), "{err}");
}

/// A client that pipelines large reads and never reads the replies holds at most its own share of the
/// bridge's request budget, so other clients are served meanwhile (at once, not when the hog is dropped); and
/// it is dropped once a reply has waited for it longer than the stall timeout (4 s here, 30 s by default).
#[test]
fn a_client_that_does_not_read_its_replies_holds_no_one_else_up() {
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "64"]);
    let b = Bridge::start(&t, &["--test-stall-timeout-ms", "4000"]);
    let mut hog = go(b.port);
    // 20 x 32 MiB: more than all clients together may hold (512 MiB).
    for i in 0..20u64 {
        hog.request(CMD_READ, 0, i, 0, 32 << 20, &[]);
    }
    std::thread::sleep(Duration::from_millis(500));
    let mut other = go(b.port);
    other.s.set_read_timeout(Some(Duration::from_secs(2))).unwrap();
    assert_eq!(other.call(CMD_READ, 0, 4096, 4096, &[]), (0, vec![0u8; 4096]), "served while the hog waits");
    // Still not reading, past the stall timeout, the hog is dropped: reading now, it gets what had reached its
    // socket, far less than the 640 MiB it asked for, then the end of the stream.
    hog.wait_for_a_reply();
    std::thread::sleep(Duration::from_secs(6));
    let got = hog.bytes_until_closed();
    assert!(got < 100 << 20, "the hog received {got} bytes: it was not dropped");
}

/// The same with few requests, well within the connection's share of the budget: once a reply has waited
/// longer than the stall timeout the connection is closed (it stayed open, holding its client slot, while the
/// bridge waited for the next request).
#[test]
fn a_client_that_stops_reading_is_dropped_even_with_few_requests_out() {
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "64"]);
    let b = Bridge::start(&t, &["--test-stall-timeout-ms", "1000"]);
    let mut c = go(b.port);
    c.request(CMD_READ, 0, 1, 0, 32 << 20, &[]);
    c.request(CMD_READ, 0, 2, 0, 32 << 20, &[]);
    c.wait_for_a_reply();
    std::thread::sleep(Duration::from_secs(4));
    c.s.set_read_timeout(Some(Duration::from_secs(5))).unwrap();
    let got = c.bytes_until_closed();
    assert!(got < 64 << 20, "all {got} bytes arrived: the client was not dropped");
}

/// A slow client that keeps moving is served: a 32 MiB write's payload sent, and a 32 MiB read's reply taken,
/// 1 MiB every 100 ms (about 3 s each, three times the stall timeout of 1 s here). The stall timeout bounded the
/// whole transfer, so any client slower than 32 MiB in 30 s was dropped in the middle of such a request (found by
/// a review); now it bounds a pause, with a floor of 64 KiB/s on the whole.
#[test]
fn a_slow_client_that_keeps_moving_is_not_dropped() {
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "64"]);
    let b = Bridge::start(&t, &["--test-stall-timeout-ms", "1000"]);
    let mut c = go(b.port);
    let len = 32usize << 20;
    let data: Vec<u8> = (0..len).map(|i| (i / 4096) as u8).collect();
    c.request(CMD_WRITE, 0, 1, 0, len as u32, &[]);
    for piece in data.chunks(1 << 20) {
        c.s.write_all(piece).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert_eq!(c.reply(), (0, 1), "the slowly sent write");
    c.request(CMD_READ, 0, 2, 0, len as u32, &[]);
    assert_eq!(c.reply(), (0, 2));
    let mut got = vec![0u8; len];
    for piece in got.chunks_mut(1 << 20) {
        c.s.read_exact(piece).unwrap();
        std::thread::sleep(Duration::from_millis(100));
    }
    assert!(got == data, "the slowly taken read");
}

/// `--device` says what is wrong with the device before it contacts any target (the address here is a closed
/// port, so a bridge that tried to connect first would fail with "connection refused" instead). The kernel
/// side itself (attach, ride-through, detach) runs against the Linux NBD driver in the interop VM:
/// scripts/interop-nbd-device.sh.
#[test]
fn a_device_that_cannot_be_used_is_refused_with_the_reason_before_connecting() {
    let dir = std::env::temp_dir().join(format!("holdfast-nbd-dev-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let plain = dir.join("not-a-device");
    std::fs::write(&plain, b"").unwrap();
    let mut cases = vec![
        (dir.join("nbd-missing"), "No such file or directory"),
        (plain.clone(), "is not a block device"),
        (std::path::PathBuf::from("/dev/null"), "is not a block device"),
    ];
    // Another driver's block device (a loop device, where the machine has one; opened, never changed).
    use std::os::unix::fs::FileTypeExt as _;
    if let Some(loopdev) = (0..8)
        .map(|i| std::path::PathBuf::from(format!("/dev/loop{i}")))
        .find(|p| std::fs::metadata(p).is_ok_and(|m| m.file_type().is_block_device()))
    {
        cases.push((loopdev, "is not an NBD device (major 7"));
    }
    for (path, why) in cases {
        let out = Command::new(BIN)
            .args(["nbd", "--addr", "127.0.0.1:1", "--nqn", NQN, "--device"])
            .arg(&path)
            .output()
            .expect("run holdfast nbd");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{}: exit 0", path.display());
        assert!(err.contains(&*path.to_string_lossy()) && err.contains(why), "{}: {err}", path.display());
        assert!(!err.contains("refused"), "{}: contacted the target first: {err}", path.display());
    }
    // A device is one client's: it does not go with a listener.
    let out = Command::new(BIN)
        .args(["nbd", "--addr", "127.0.0.1:1", "--nqn", NQN, "--device", "/dev/nbd0", "--socket", "/tmp/x.sock"])
        .output()
        .expect("run holdfast nbd");
    assert!(!out.status.success() && String::from_utf8_lossy(&out.stderr).contains("cannot be used with"));
    std::fs::remove_dir_all(&dir).unwrap();
}

/// A client that agreed to no block size (NBD_OPT_EXPORT_NAME, or GO without NBD_INFO_BLOCK_SIZE) has NBD's
/// default minimum of one byte: its misaligned reads, writes and write zeroes are served (read-modify-write
/// of the partial blocks), and two writes to different bytes of one block, in flight together, both land. A
/// client that asked for the block sizes is held to them (EINVAL, in the test above).
#[test]
fn a_client_without_block_sizes_may_read_and_write_any_bytes() {
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "16", "--block-size", "4096"]);
    let b = Bridge::start(&t, &[]);
    let mut model = vec![0u8; 64 << 10];
    let fill = |seed: u32, n: usize| -> Vec<u8> { (0..n as u32).map(|i| (i.wrapping_mul(31) ^ seed) as u8).collect() };
    for way in ["export-name", "go"] {
        let mut c = Client::connect(b.port, 0b11);
        if way == "export-name" {
            c.send_option(OPT_EXPORT_NAME, b"holdfast");
            let mut r = [0u8; 10];
            c.s.read_exact(&mut r).unwrap();
        } else {
            let r = c.option(OPT_GO, &[0, 0, 0, 0, 0, 0]);
            assert_eq!(r.last().unwrap().0, REP_ACK, "{r:?}");
            // Told the truth: a minimum of 1, and the preferred size.
            let bs = info(&r, 3).expect("NBD_INFO_BLOCK_SIZE, unasked");
            assert_eq!((&bs[0..4], &bs[4..8]), (&1u32.to_be_bytes()[..], &4096u32.to_be_bytes()[..]));
        }
        // (offset, length): inside one block, across a block boundary, head + whole blocks + tail, ending on
        // a boundary, starting on one, one byte.
        let cases: [(u64, u32); 6] =
            [(100, 200), (4000, 200), (5000, 3 * 4096 + 300), (8192 + 17, 4096 - 17), (16384, 4100), (40000, 1)];
        for (i, (off, len)) in cases.into_iter().enumerate() {
            let d = fill(i as u32 + if way == "go" { 100 } else { 0 }, len as usize);
            assert_eq!(
                c.call(CMD_WRITE, if i % 2 == 0 { FLAG_FUA } else { 0 }, off, len, &d).0,
                0,
                "{way}: write {off}+{len}"
            );
            model[off as usize..off as usize + len as usize].copy_from_slice(&d);
            assert_eq!(c.call(CMD_READ, 0, off, len, &[]), (0, d), "{way}: read {off}+{len}");
        }
        // Write zeroes across a boundary and inside one block.
        // Write zeroes across a boundary, inside one block, and with whole blocks between two partial ones
        // (FUA: the whole blocks are zeroed and flushed, the partial ones written with FUA).
        for (off, len, fl) in [(4090u64, 20u32, 0), (5001, 10, 0), (20000, 3 * 4096 + 100, FLAG_FUA)] {
            assert_eq!(c.call(CMD_WRITE_ZEROES, fl, off, len, &[]).0, 0);
            model[off as usize..(off + len as u64) as usize].fill(0);
        }
        // Bytes around every change kept: the whole region reads as the model says.
        assert_eq!(c.call(CMD_READ, 0, 0, 48 << 10, &[]).1, model[..48 << 10], "{way}: the region");
        assert_eq!(c.call(CMD_READ, 0, 33, 48 << 10, &[]).1, model[33..33 + (48 << 10)], "{way}: misaligned read");
        // The last bytes of the export.
        let d = fill(7, 10);
        assert_eq!(c.call(CMD_WRITE, 0, SIZE - 10, 10, &d).0, 0);
        assert_eq!(c.call(CMD_READ, 0, SIZE - 4096 - 7, 4096 + 7, &[]).1[4096 - 3..], d[..]);
        assert_eq!(c.call(CMD_WRITE, 0, SIZE - 10, 11, &[0u8; 11]).0, ENOSPC, "one byte beyond");
    }
    // Two writes to different bytes of one block, sent together: both land (one read-modify-write at a time).
    let mut c = Client::connect(b.port, 0b11);
    assert_eq!(c.option(OPT_GO, &[0, 0, 0, 0, 0, 0]).last().unwrap().0, REP_ACK);
    for round in 0..20u64 {
        let base = 49152 + (round % 4) * 4096;
        let mut reqs = Vec::new();
        for k in 0..8u64 {
            let d = vec![(round * 8 + k) as u8 | 1; 100];
            c.request(CMD_WRITE, 0, 500 + k, base + k * 400 + 50, 100, &d);
            reqs.push((base + k * 400 + 50, d));
        }
        for _ in 0..8 {
            assert_eq!(c.reply().0, 0);
        }
        for (off, d) in reqs {
            model[off as usize..off as usize + 100].copy_from_slice(&d);
        }
        let got = c.call(CMD_READ, 0, base, 4096, &[]).1;
        assert_eq!(
            got,
            model[base as usize..base as usize + 4096],
            "round {round}: a write to a shared block was lost"
        );
    }
}

/// Random misaligned writes, write zeroes and reads from two clients without block sizes, checked against a
/// model of the export: each round sends a batch of requests at once, spread over both connections, whose
/// byte ranges do not overlap (but often share blocks), then reads everything back through both. A seeded
/// generator: the seed is printed, and `NBD_RMW_SEED` replays a run.
#[test]
fn random_misaligned_io_from_two_clients_matches_a_model() {
    use rand::{Rng, SeedableRng};
    let seed: u64 = std::env::var("NBD_RMW_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or_else(rand::random);
    eprintln!("NBD_RMW_SEED={seed}");
    let mut rng = rand::rngs::StdRng::seed_from_u64(seed);
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "16", "--block-size", "4096"]);
    let b = Bridge::start(&t, &[]);
    let region = 64 * 1024usize; // 16 blocks: batches share blocks often
    let mut model = vec![0u8; region];
    let mut clients: Vec<Client> = (0..2)
        .map(|_| {
            let mut c = Client::connect(b.port, 0b11);
            assert_eq!(c.option(OPT_GO, &[0, 0, 0, 0, 0, 0]).last().unwrap().0, REP_ACK);
            c
        })
        .collect();
    for round in 0..40 {
        // Up to 12 disjoint ranges: cut points sorted, every other gap a request.
        let mut cuts: Vec<usize> = (0..24).map(|_| rng.gen_range(0..=region)).collect();
        cuts.sort_unstable();
        let mut sent = [Vec::new(), Vec::new()];
        for (k, w) in cuts.chunks(2).enumerate() {
            let (off, len) = (w[0], w[1] - w[0]);
            if len == 0 {
                continue;
            }
            let ci = rng.gen_range(0..2);
            let handle = (round * 100 + k) as u64;
            if rng.gen_bool(0.8) {
                let d: Vec<u8> = (0..len).map(|_| rng.gen()).collect();
                let fl = if rng.gen_bool(0.2) { FLAG_FUA } else { 0 };
                clients[ci].request(CMD_WRITE, fl, handle, off as u64, len as u32, &d);
                model[off..off + len].copy_from_slice(&d);
            } else {
                clients[ci].request(CMD_WRITE_ZEROES, 0, handle, off as u64, len as u32, &[]);
                model[off..off + len].fill(0);
            }
            sent[ci].push(handle);
        }
        for (ci, handles) in sent.iter().enumerate() {
            let mut got: Vec<u64> = (0..handles.len())
                .map(|_| clients[ci].reply())
                .map(|(e, h)| {
                    assert_eq!(e, 0, "seed {seed}, round {round}: request {h} failed");
                    h
                })
                .collect();
            got.sort_unstable();
            let mut want = handles.clone();
            want.sort_unstable();
            assert_eq!(got, want, "seed {seed}, round {round}: replies");
        }
        // Read back through both clients, at a random misaligned start.
        for c in clients.iter_mut() {
            let off = rng.gen_range(0..4096usize);
            let len = region - off;
            assert!(
                c.call(CMD_READ, 0, off as u64, len as u32, &[]).1 == model[off..],
                "seed {seed}, round {round}: the data differs from the model"
            );
        }
    }
}

/// A write the target's file cannot take for want of room (here EFBIG: the target runs under a 1 MiB
/// RLIMIT_FSIZE, SIGXFSZ ignored, over a 16 MiB file) is ENOSPC to the NBD client, as the protocol asks
/// ("SHOULD map the EDQUOT and EFBIG errors to ENOSPC", § Error values), not EIO: the target answers it with
/// Capacity Exceeded, as nvmet does for ENOSPC, which the bridge maps to ENOSPC. QEMU's default werror=enospc
/// pauses the guest on ENOSPC (room can be made, the write retried) but hands EIO to the guest's filesystem.
#[test]
fn a_write_the_file_has_no_room_for_is_enospc_not_eio() {
    use std::os::unix::process::CommandExt as _;
    let path = std::env::temp_dir().join(format!("holdfast-nbd-fsize-{}.img", std::process::id()));
    std::fs::File::create(&path).unwrap().set_len(SIZE).unwrap();
    let mut cmd = Command::new(BIN);
    cmd.args(["target", "--listen", "127.0.0.1:0", "--nqn", NQN, "--file"]).arg(&path);
    // SAFETY: setrlimit and signal are async-signal-safe; nothing else runs between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            let lim = libc::rlimit { rlim_cur: 1 << 20, rlim_max: 1 << 20 };
            if libc::setrlimit(libc::RLIMIT_FSIZE, &lim) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            libc::signal(libc::SIGXFSZ, libc::SIG_IGN);
            Ok(())
        });
    }
    let t = TargetProc::spawn(cmd);
    let b = Bridge::start(&t, &[]);
    let mut c = go(b.port);
    assert_eq!(c.call(CMD_WRITE, 0, 0, 4096, &[7u8; 4096]).0, 0, "within the limit");
    assert_eq!(c.call(CMD_WRITE, 0, 2 << 20, 4096, &[7u8; 4096]).0, ENOSPC, "beyond it");
    assert_eq!(c.call(CMD_WRITE, FLAG_FUA, 2 << 20, 4096, &[7u8; 4096]).0, ENOSPC, "beyond it, FUA");
    assert_eq!(c.call(CMD_READ, 0, 0, 4096, &[]), (0, vec![7u8; 4096]), "the export still serves");
    drop((c, b, t));
    let _ = std::fs::remove_file(&path);
}

/// A read-modify-write of part of a block (from a client without block sizes) never writes the block's old
/// bytes back over a write of the whole block that lands between its read and its write: the target holds the
/// first write to reach it 1.5 s, so the partial write's block goes out with the bytes it read before the
/// whole-block write (sent 0.4 s later, answered at once) and would undo that write's 3996 other bytes. Each
/// byte must end as one of the writes that covered it left it, in either order of the two.
#[test]
fn a_partial_block_write_does_not_undo_a_whole_block_write_to_its_other_bytes() {
    for partial_first in [true, false] {
        let t = TargetProc::start(&[
            "--nqn",
            NQN,
            "--ram-mib",
            "16",
            "--block-size",
            "4096",
            "--test-delay-writes-ms",
            "1500",
            "--test-delay-every",
            "1000000",
        ]);
        let b = Bridge::start(&t, &[]);
        let mut bytes = Client::connect(b.port, 0b11);
        assert_eq!(bytes.option(OPT_GO, &[0, 0, 0, 0, 0, 0]).last().unwrap().0, REP_ACK);
        let mut blocks = go(b.port);
        let partial = |c: &mut Client| c.request(CMD_WRITE, 0, 1, 4096 + 100, 100, &[0xaa; 100]);
        let whole = |c: &mut Client| c.request(CMD_WRITE, 0, 2, 4096, 4096, &[0xbb; 4096]);
        if partial_first {
            partial(&mut bytes);
            std::thread::sleep(Duration::from_millis(400));
            whole(&mut blocks);
        } else {
            whole(&mut blocks);
            std::thread::sleep(Duration::from_millis(400));
            partial(&mut bytes);
        }
        assert_eq!(blocks.reply(), (0, 2));
        assert_eq!(bytes.reply(), (0, 1));
        let got = blocks.call(CMD_READ, 0, 4096, 4096, &[]).1;
        let undone = got.iter().enumerate().filter(|&(i, &x)| !(100..200).contains(&i) && x != 0xbb).count();
        assert_eq!(undone, 0, "partial write first: {partial_first}: bytes only the whole-block write covered");
        assert!(got[100..200].iter().all(|&x| x == 0xaa) || got[100..200].iter().all(|&x| x == 0xbb));
    }
}

/// A bridge (reconnecting within 200 ms) to `first`, a block of 5s written at 0 and flushed through it, then
/// the target killed and `again` started on its port: the client, the bridge and the new target.
fn written_then_restarted(mut first: TargetProc, again: impl Fn(u16) -> TargetProc) -> (Client, Bridge, TargetProc) {
    let port = first.port;
    let b = Bridge::start(&first, &["--reconnect-delay-ms", "100", "--reconnect-delay-max-ms", "200"]);
    let mut c = go(b.port);
    assert_eq!(c.call(CMD_WRITE, 0, 0, 512, &[5u8; 512]).0, 0);
    assert_eq!(c.call(CMD_FLUSH, 0, 0, 0, &[]).0, 0);
    let _ = first.child.kill();
    let _ = first.child.wait();
    (c, b, again(port))
}

/// A target whose namespace keeps its data only for the life of an instance (RAM) restarts under the bridge:
/// the first flush after it fails with EIO (writes the bridge acknowledged before are gone, and a filesystem
/// must not commit its journal on top of them), the next one covers what was written since and succeeds.
#[test]
fn a_flush_after_a_restart_that_lost_the_data_fails_once() {
    let spawn = |port: u16| {
        let mut cmd = Command::new(BIN);
        cmd.args(["target", "--listen", &format!("127.0.0.1:{port}"), "--nqn", NQN, "--ram-mib", "1"]);
        TargetProc::spawn(cmd)
    };
    let (mut c, b, t) = written_then_restarted(spawn(0), spawn);
    assert_eq!(c.call(CMD_READ, 0, 0, 512, &[]), (0, vec![0u8; 512]), "the restarted RAM namespace is empty");
    assert_eq!(c.call(CMD_FLUSH, 0, 0, 0, &[]).0, EIO, "the flush after the data was lost");
    assert_eq!(c.call(CMD_WRITE, 0, 0, 512, &[6u8; 512]).0, 0);
    assert_eq!(c.call(CMD_FLUSH, 0, 0, 0, &[]).0, 0, "the next flush covers what was written since");
    drop((c, b, t));
}

/// A RAM target on `port` (0: any), for the restart tests.
fn ram_target_on(port: u16) -> TargetProc {
    let mut cmd = Command::new(BIN);
    cmd.args(["target", "--listen", &format!("127.0.0.1:{port}"), "--nqn", NQN, "--ram-mib", "1"]);
    TargetProc::spawn(cmd)
}

/// The export advertises NBD_FLAG_CAN_MULTI_CONN, so a flush covers every connection's writes. Two connections
/// each have a write acknowledged, then the RAM target restarts and both are gone: each connection's first flush
/// fails with EIO, not only the export's first (B's flush succeeded over its lost write: found by a review); a
/// connection made after the restart lost nothing and flushes.
#[test]
fn every_connection_hears_of_a_restart_that_lost_data_at_its_next_flush() {
    let mut first = ram_target_on(0);
    let port = first.port;
    let b = Bridge::start(&first, &["--reconnect-delay-ms", "100", "--reconnect-delay-max-ms", "200"]);
    let (mut a, mut c) = (go(b.port), go(b.port));
    assert_eq!(a.call(CMD_WRITE, 0, 0, 512, &[5u8; 512]).0, 0);
    assert_eq!(c.call(CMD_WRITE, 0, 4096, 512, &[6u8; 512]).0, 0);
    let _ = first.child.kill();
    let _ = first.child.wait();
    let t = ram_target_on(port);
    assert_eq!(a.call(CMD_FLUSH, 0, 0, 0, &[]).0, EIO, "A's flush after the data was lost");
    assert_eq!(c.call(CMD_READ, 0, 4096, 512, &[]), (0, vec![0u8; 512]), "B's acknowledged write is gone");
    assert_eq!(c.call(CMD_FLUSH, 0, 0, 0, &[]).0, EIO, "B's flush after its write was lost");
    assert_eq!(a.call(CMD_FLUSH, 0, 0, 0, &[]).0, 0, "A was told: its next flush covers what came since");
    let mut later = go(b.port);
    assert_eq!(later.call(CMD_FLUSH, 0, 0, 0, &[]).0, 0, "a connection made after the restart");
    drop((a, c, later, b, t));
}

/// On one connection, two flushes sent together after a write the restarted RAM target lost: both were
/// received before the connection was told, so both fail (one of them succeeded: found by a review).
#[test]
fn flushes_sent_before_a_lost_restart_was_reported_all_fail() {
    let mut first = ram_target_on(0);
    let port = first.port;
    let b = Bridge::start(&first, &["--reconnect-delay-ms", "100", "--reconnect-delay-max-ms", "200"]);
    let mut a = go(b.port);
    assert_eq!(a.call(CMD_WRITE, 0, 0, 512, &[5u8; 512]).0, 0);
    let _ = first.child.kill();
    let _ = first.child.wait();
    let t = ram_target_on(port);
    a.request(CMD_FLUSH, 0, 1, 0, 0, &[]);
    a.request(CMD_FLUSH, 0, 2, 0, 0, &[]);
    let mut got = vec![a.reply(), a.reply()];
    got.sort_by_key(|&(_, h)| h);
    assert_eq!(got, vec![(EIO, 1), (EIO, 2)], "a flush succeeded over the lost write");
    assert_eq!(a.call(CMD_FLUSH, 0, 0, 0, &[]).0, 0, "the next flush");
    drop((a, b, t));
}

/// A namespace the target write-protects only after the bridge opened it (the target restarted with
/// `--read-only` on the same file, which the bridge rides through): a write is EPERM, as the protocol asks
/// for a change to a read-only export (§ Error values), not EIO; reads still serve the file.
#[test]
fn a_namespace_write_protected_after_a_restart_refuses_writes_with_eperm() {
    let path = std::env::temp_dir().join(format!("holdfast-nbd-wp-{}.img", std::process::id()));
    std::fs::write(&path, vec![0u8; 1 << 20]).unwrap();
    let spawn = |port: u16, ro: bool| {
        let mut cmd = Command::new(BIN);
        cmd.args(["target", "--listen", &format!("127.0.0.1:{port}"), "--nqn", NQN]);
        if ro {
            cmd.arg("--read-only");
        }
        cmd.arg("--file").arg(&path);
        TargetProc::spawn(cmd)
    };
    let (mut c, b, t) = written_then_restarted(spawn(0, false), |port| spawn(port, true));
    assert_eq!(c.call(CMD_READ, 0, 0, 512, &[]), (0, vec![5u8; 512]), "the bridge rode through");
    assert_eq!(c.call(CMD_FLUSH, 0, 0, 0, &[]).0, 0, "a file namespace kept its data: flushes go on succeeding");
    assert_eq!(c.call(CMD_WRITE, 0, 512, 512, &[6u8; 512]).0, EPERM);
    assert_eq!(c.call(CMD_WRITE_ZEROES, 0, 512, 512, &[]).0, EPERM);
    assert_eq!(c.call(CMD_TRIM, 0, 512, 512, &[]).0, EPERM);
    assert_eq!(c.call(CMD_READ, 0, 0, 1024, &[]).1, [vec![5u8; 512], vec![0u8; 512]].concat(), "the file kept");
    drop((c, b, t));
    let _ = std::fs::remove_file(&path);
}
