//! What the end-to-end tests of the `holdfast` binary share: the binary, and a target process on an ephemeral
//! port.
#![allow(dead_code)] // each test crate uses its own part

use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};

pub const BIN: &str = env!("CARGO_BIN_EXE_holdfast");

/// A target on an ephemeral port, killed (by PID) when dropped.
pub struct TargetProc {
    pub child: Child,
    pub port: u16,
}

impl TargetProc {
    pub fn start(args: &[&str]) -> TargetProc {
        let mut cmd = Command::new(BIN);
        cmd.args(["target", "--listen", "127.0.0.1:0"]).args(args);
        TargetProc::spawn(cmd)
    }
    /// Spawn `cmd`, a whole `holdfast target` command the caller prepared (a `pre_exec`, say), listening on
    /// an ephemeral port, and wait for its connect line.
    pub fn spawn(mut cmd: Command) -> TargetProc {
        let mut child = cmd.stdout(Stdio::piped()).stderr(Stdio::null()).spawn().expect("start target");
        let out = child.stdout.take().expect("stdout");
        let mut port = 0;
        for line in BufReader::new(out).lines() {
            let line = line.expect("read");
            if let Some(rest) = line.strip_prefix("connect:") {
                let s = rest.split(" -s ").nth(1).expect("port in connect line");
                port = s.split_whitespace().next().unwrap().parse().unwrap();
                break;
            }
        }
        assert_ne!(port, 0, "target printed no connect line");
        TargetProc { child, port }
    }
    pub fn addr(&self) -> String {
        format!("127.0.0.1:{}", self.port)
    }
    /// A target listening on `listen` (a restarted one takes its predecessor's address).
    pub fn start_at(listen: &str, args: &[&str]) -> TargetProc {
        let mut cmd = Command::new(BIN);
        cmd.args(["target", "--listen", listen]).args(args);
        TargetProc::spawn(cmd)
    }
    /// Kill it (SIGKILL, by PID) now, as a crash would.
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Wait (up to 20 s) until the target on `port` has a host's controller: a host command started in the
/// background is connected, whatever the machine's load (a fixed sleep was not always enough on CI).
pub fn wait_for_a_controller(port: u16) {
    let t0 = std::time::Instant::now();
    while t0.elapsed() < std::time::Duration::from_secs(20) {
        let out = Command::new(BIN)
            .args(["target-ctl", "--port", &port.to_string(), "controllers", "--json"])
            .output()
            .expect("run target-ctl");
        if String::from_utf8_lossy(&out.stdout).contains("\"cntlid\"") {
            return;
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    panic!("no controller on port {port} within 20 s");
}

/// A loopback address with a port free now: for a target that is to be started again on it.
pub fn free_loopback_addr() -> String {
    let l = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    l.local_addr().expect("address").to_string()
}

impl Drop for TargetProc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        // Killed, it could not remove its control socket (by default $TMPDIR/holdfast-target-PORT.sock).
        let _ = std::fs::remove_file(std::env::temp_dir().join(format!("holdfast-target-{}.sock", self.port)));
    }
}
