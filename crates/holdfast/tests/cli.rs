//! End-to-end tests of the `holdfast` binary over loopback: our host CLI against our target.

use std::process::Command;
use std::time::{Duration, Instant};

mod common;
use common::{TargetProc, BIN};

fn holdfast(args: &[&str]) -> (i32, String, String) {
    let o = Command::new(BIN).args(args).output().expect("run holdfast");
    (
        o.status.code().unwrap_or(-1),
        String::from_utf8_lossy(&o.stdout).into(),
        String::from_utf8_lossy(&o.stderr).into(),
    )
}

const NQN: &str = "nqn.2026-01.io.holdfast:cli";

/// `holdfast VERB --addr T --nqn NQN ARGS...`
fn on(t: &TargetProc, verb: &str, args: &[&str]) -> (i32, String, String) {
    let addr = t.addr();
    holdfast(&[&[verb, "--addr", addr.as_str(), "--nqn", NQN][..], args].concat())
}

#[test]
fn closed_port_and_wrong_nqn_give_one_clear_line_quickly() {
    // A port nobody listens on.
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let closed = l.local_addr().unwrap().to_string();
    drop(l);
    let t0 = Instant::now();
    let (rc, _, err) = holdfast(&["identify", "--addr", &closed, "--nqn", NQN]);
    assert_eq!(rc, 1);
    assert!(err.contains("cannot connect to") && err.contains("refused"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    // An address that is not HOST[:PORT] says what is expected (one without a port gets the well-known one).
    let (rc, _, err) = holdfast(&["discover", "127.0.0.1:"]);
    assert_eq!(rc, 1);
    assert!(err.contains("cannot connect to 127.0.0.1:: invalid port value: expected HOST:PORT"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(5));

    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "16"]);
    let (rc, _, err) = holdfast(&["identify", "--addr", &t.addr(), "--nqn", "nqn.2026-01.io.holdfast:nope"]);
    assert_eq!(rc, 1);
    assert!(err.contains("has no subsystem nqn.2026-01.io.holdfast:nope"), "{err}");
    let (rc, _, err) = holdfast(&["bench", "--addr", &t.addr(), "--nqn", NQN, "--nsid", "9", "--time", "1"]);
    assert_eq!(rc, 1);
    assert!(err.contains("namespace 9") || err.contains("Invalid Namespace"), "{err}");
}

#[test]
fn discover_identify_write_read_and_bench_verify() {
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "32", "--block-size", "4096", "--ctrl-loss-tmo-ms", "7000"]);
    let (rc, out, err) = holdfast(&["discover", &t.addr(), "--json"]);
    assert_eq!(rc, 0, "{err}");
    // The address as the other commands take it, too.
    let (rc, same, err) = holdfast(&["discover", "--addr", &t.addr(), "--json"]);
    assert_eq!((rc, &same), (0, &out), "{err}");
    assert!(out.contains(NQN) && out.contains("current discovery subsystem"), "{out}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["policy"]["ctrl_loss_tmo_ms"], 7000, "the discovery controller advertises the policy: {out}");
    assert!(v["records"].as_array().is_some_and(|r| !r.is_empty()), "{out}");
    for r in v["records"].as_array().unwrap() {
        assert_eq!(r["sq_flow_disable_supported"], true, "every entry allows disabling SQ flow control: {out}");
        assert_eq!((&r["trtype"], &r["adrfam"], &r["sectype"]), (&"tcp".into(), &"ipv4".into(), &"none".into()));
        assert_eq!((&r["secure_channel"], &r["connectable"]), (&"not specified".into(), &true.into()), "{out}");
        let current_discovery = r["subtype"] == "current discovery subsystem";
        assert_eq!(r["duplicate_returned_info"], current_discovery, "EFLAGS decoded: {out}");
        assert_eq!(r["persistent_discovery"], current_discovery, "EFLAGS decoded: {out}");
    }
    let (rc, out, err) = holdfast(&["discover", &t.addr()]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.contains("SQ flow control disable supported"), "TREQ bit 2 decoded: {out}");
    assert!(out.contains("trtype:  tcp  adrfam: ipv4"), "{out}");
    assert!(out.contains("eflags: duplicate returned info, persistent connections"), "{out}");
    let (rc, out, err) = holdfast(&["identify", "--addr", &t.addr(), "--nqn", NQN, "--nsid", "1", "--json"]);
    assert_eq!(rc, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["namespace"]["block_size"], 4096);
    assert_eq!(v["namespace"]["write_protected"], false, "{out}");
    let oncs = v["controller"]["optional_commands"].as_array().unwrap();
    assert!(oncs.contains(&"compare".into()) && oncs.contains(&"reservations".into()), "ONCS decoded: {out}");
    assert!(v["controller"]["max_transfer_bytes"].as_u64().is_some_and(|b| b >= 4096), "{out}");
    assert_eq!(v["controller"]["policy"]["kato_ms"], 5000);
    assert_eq!(v["controller"]["policy"]["volatile_data"], true, "a RAM namespace is lost with a restart: {out}");
    assert_eq!((&v["namespace"]["ana_group"], &v["namespace"]["ana_state"]), (&1.into(), &"optimized".into()), "{out}");
    // A target whose port gives the namespace's group another state: identify says so.
    let other = TargetProc::start(&["--nqn", NQN, "--ram-mib", "1", "--ana-state", "non-optimized"]);
    let (rc, out, err) = holdfast(&["identify", "--addr", &other.addr(), "--nqn", NQN, "--nsid", "1", "--json"]);
    assert_eq!(rc, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["namespace"]["ana_state"], "non-optimized", "{out}");
    assert_eq!(v["controller"]["ana"][0]["nsids"], serde_json::json!([1]), "{out}");
    drop(other);

    let dir = std::env::temp_dir().join(format!("holdfast-cli-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data: Vec<u8> = (0..3 * 1024 * 1024u32).map(|i| (i.wrapping_mul(2654435761) >> 13) as u8).collect();
    std::fs::write(dir.join("in"), &data).unwrap();
    let inp = dir.join("in").display().to_string();
    let outp = dir.join("out").display().to_string();
    let (rc, _, err) =
        holdfast(&["write", "--addr", &t.addr(), "--nqn", NQN, "--offset", "8192", "--input", &inp, "--digests"]);
    assert_eq!(rc, 0, "{err}");
    let len = data.len().to_string();
    // Read back with SQ flow control disabled: the target answers each read with its data alone (C2HData
    // with SUCCESS, no CapsuleResp), the path the Linux host takes after discovery.
    let (rc, _, err) = holdfast(&[
        "read",
        "--addr",
        &t.addr(),
        "--nqn",
        NQN,
        "--offset",
        "8192",
        "--length",
        &len,
        "--output",
        &outp,
        "--disable-sqflow",
    ]);
    assert_eq!(rc, 0, "{err}");
    assert!(std::fs::read(dir.join("out")).unwrap() == data, "read-back differs");
    let (rc, _, err) = holdfast(&["read", "--addr", &t.addr(), "--nqn", NQN, "--offset", "100", "--length", "4096"]);
    assert_eq!(rc, 1);
    assert!(err.contains("not a multiple of the 4096-byte block size"), "{err}");
    std::fs::remove_dir_all(&dir).ok();

    let (rc, out, err) = holdfast(&[
        "bench",
        "--addr",
        &t.addr(),
        "--nqn",
        NQN,
        "--nsid",
        "1",
        "--workload",
        "randrw",
        "--bs",
        "4096",
        "--qd",
        "16",
        "--queues",
        "2",
        "--time",
        "2",
        "--verify",
        "--json",
        "--digests",
        "--disable-sqflow",
    ]);
    assert_eq!(rc, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(v["errors"], 0);
    assert_eq!(v["verify_mismatches"], 0);
    assert!(v["iops"].as_f64().unwrap() > 0.0);
    for k in ["p50", "p99", "max"] {
        assert!(v["lat_us"][k].as_u64().is_some(), "lat_us.{k}");
    }
    // A write-only workload is verified by reading back what it wrote; a read-only one refuses --verify.
    let base = ["bench", "--addr", &t.addr(), "--nqn", NQN, "--bs", "4096", "--qd", "8", "--size", "4194304"];
    let (rc, out, err) =
        holdfast(&[&base[..], &["--workload", "randwrite", "--time", "1", "--verify", "--json"]].concat());
    assert_eq!(rc, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((v["errors"].as_u64(), v["verify_mismatches"].as_u64()), (Some(0), Some(0)), "{v}");
    assert!(v["verify_read_back"].as_u64().is_some_and(|n| n > 0 && n <= 1024), "{v}");
    let (rc, _, err) = holdfast(&[&base[..], &["--workload", "randread", "--verify"]].concat());
    assert_eq!(rc, 1);
    assert!(err.contains("--verify checks what this run wrote"), "{err}");
    // Reads and writes past the end are refused before anything is written (here or to the namespace).
    let dir = std::env::temp_dir().join(format!("holdfast-cli-io-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let (keep, two_mib, back) = (dir.join("keep.bin"), dir.join("two.bin"), dir.join("back.bin"));
    std::fs::write(&keep, b"precious").unwrap();
    std::fs::write(&two_mib, vec![0xA5u8; 2 << 20]).unwrap();
    let (end, near_end) = ((32u64 << 20).to_string(), ((32u64 << 20) - (1 << 20)).to_string());
    let (rc, _, err) = on(&t, "read", &["--offset", &end, "--length", "4096", "--output", keep.to_str().unwrap()]);
    assert_eq!(rc, 1);
    assert!(err.contains("beyond the end"), "{err}");
    assert_eq!(std::fs::read(&keep).unwrap(), b"precious", "the output file was left alone");
    let (rc, _, err) = on(&t, "write", &["--offset", &near_end, "--input", two_mib.to_str().unwrap()]);
    assert_eq!(rc, 1);
    assert!(err.contains("beyond the end"), "{err}");
    let (rc, _, err) = on(&t, "read", &["--offset", &near_end, "--length", "4096", "--output", back.to_str().unwrap()]);
    assert_eq!(rc, 0, "{err}");
    assert!(!std::fs::read(&back).unwrap().iter().all(|&b| b == 0xA5), "nothing of the refused write landed");
    // Said in the bytes the command line gave, not in blocks.
    let (rc, _, err) = on(&t, "read", &["--offset", &near_end, "--length", &(2u64 << 20).to_string()]);
    assert_eq!(rc, 1);
    assert!(err.contains(&format!("bytes {near_end}..{} are beyond the end", (33u64 << 20))), "{err}");
    assert!(err.contains(&format!("({} bytes)", 32u64 << 20)), "{err}");
    let (rc, _, err) = on(&t, "read", &["--length", "0"]);
    assert_eq!(rc, 1);
    assert!(err.contains("length is 0 bytes: nothing to do"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A configuration that validates but fails when the target starts (a file namespace whose file is missing,
/// a port already taken): the error names the file, the key and the reason, on one line, and the target exits.
#[test]
fn startup_errors_name_the_config_file_and_key() {
    let dir = std::env::temp_dir().join(format!("holdfast-cli-cfg-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("t.toml");
    let missing = dir.join("missing.img");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let write = |listen: &str, ns: &str| {
        let text = format!(
            "[[port]]\nid = 1\nlisten = \"{listen}\"\n[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n\
             [[subsystem.namespace]]\nnsid = 1\n{ns}\n"
        );
        std::fs::write(&cfg, text).unwrap();
    };
    write("127.0.0.1:0", &format!("backend = \"file\"\npath = \"{}\"", missing.display()));
    let sock = dir.join("ctl.sock");
    let (rc, _, err) = holdfast(&["target", "--config", cfg.to_str().unwrap(), "--control", sock.to_str().unwrap()]);
    assert_ne!(rc, 0);
    let want = format!("{}: subsystem[0].namespace[0].path: cannot open {}", cfg.display(), missing.display());
    assert!(err.contains(&want), "{err}");
    assert!(!sock.exists(), "the failed start left its --control socket behind");
    write(&taken.local_addr().unwrap().to_string(), "backend = \"ram\"\nsize_mib = 1");
    let (rc, _, err) = holdfast(&["target", "--config", cfg.to_str().unwrap()]);
    assert_ne!(rc, 0);
    assert!(err.contains(&format!("{}: port 1 (listen {})", cfg.display(), taken.local_addr().unwrap())), "{err}");
    // A file namespace to be created, on a port that is taken: the start fails before the file is made.
    let fresh = dir.join("fresh.img");
    write(
        &taken.local_addr().unwrap().to_string(),
        &format!("backend = \"file\"\npath = \"{}\"\nsize_mib = 4", fresh.display()),
    );
    let (rc, _, err) = holdfast(&["target", "--config", cfg.to_str().unwrap()]);
    assert_ne!(rc, 0);
    assert!(err.contains("port 1 (listen"), "{err}");
    assert!(!fresh.exists(), "a failed start left {} behind", fresh.display());
    // A file shorter than one block: nothing to serve (it was a namespace of 0 blocks).
    let tiny = dir.join("tiny.img");
    std::fs::write(&tiny, [0u8; 1000]).unwrap();
    write("127.0.0.1:0", &format!("backend = \"file\"\npath = \"{}\"\nblock_size = 4096", tiny.display()));
    let (rc, _, err) = holdfast(&["target", "--config", cfg.to_str().unwrap()]);
    assert_ne!(rc, 0);
    let want =
        format!("subsystem[0].namespace[0].path: {} is 1000 bytes, less than one 4096-byte block", tiny.display());
    assert!(err.contains(&want), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// With a configuration file, the quick-mode and policy flags are refused by name rather than ignored (the
/// file gives the namespaces and the policy: a --kato-ms beside it used to change nothing, silently).
#[test]
fn quick_mode_and_policy_flags_are_refused_beside_a_config_file() {
    for flag in [["--kato-ms", "1000"], ["--block-size", "4096"], ["--size-mib", "8"], ["--cntlid-min", "5"]] {
        let (rc, _, err) = holdfast(&["target", "--config", "/nonexistent.toml", flag[0], flag[1]]);
        assert_eq!(rc, 2, "{flag:?}: {err}");
        assert!(err.contains("cannot be used with") && err.contains(flag[0]), "{flag:?}: {err}");
    }
}

/// `--io-timeout-ms` bounds how long a command may go unanswered: every write held 2 s by the target, a 500 ms
/// limit fails the write on its third connection with a timeout that says so; the default (30 s) waits.
#[test]
fn io_timeout_bounds_an_unanswered_command() {
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "16", "--test-delay-writes-ms", "2000"]);
    let f = std::env::temp_dir().join(format!("holdfast-io-timeout-{}.bin", std::process::id()));
    std::fs::write(&f, vec![7u8; 4096]).unwrap();
    let input = f.to_str().unwrap();
    let (rc, _, err) = on(&t, "write", &["--input", input, "--io-timeout-ms", "500"]);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("unanswered on 3 connections) timed out after 500ms"), "{err}");
    let (rc, _, err) = on(&t, "write", &["--input", input]);
    assert_eq!(rc, 0, "{err}");
    let (rc, _, err) = on(&t, "write", &["--input", input, "--io-timeout-ms", "0"]);
    assert_eq!(rc, 2, "{err}");
    let _ = std::fs::remove_file(&f);
}

/// Wait until target `t` answers on its control socket, and a little more: its signal handlers are made by then
/// (a signal that comes before them takes its default action, which ends the process).
fn settled(t: &TargetProc) {
    let port = t.port.to_string();
    let deadline = Instant::now() + Duration::from_secs(5);
    while holdfast(&["target-ctl", "--port", &port, "status"]).0 != 0 {
        assert!(Instant::now() < deadline, "no control socket after 5 s");
        std::thread::sleep(Duration::from_millis(20));
    }
    std::thread::sleep(Duration::from_millis(100));
}

/// Send `signals` to `t` so that they are all pending when it next looks (it is stopped meanwhile).
fn signal_together(t: &TargetProc, signals: &[libc::c_int]) {
    let pid = t.child.id() as libc::pid_t;
    // SAFETY: kill(2) with the PID of our own child, which has not been waited for.
    unsafe {
        libc::kill(pid, libc::SIGSTOP);
        for &s in signals {
            libc::kill(pid, s);
        }
        libc::kill(pid, libc::SIGCONT);
    }
}

/// A stop signal that arrives with another one still stops the target: the signal handlers live as long as
/// the target, not one `select` each, so a SIGTERM that came with a SIGUSR1 (or during a SIGHUP's reload) is
/// not lost with the handler the `select` dropped. Several targets, since which signal a `select` that is not
/// biased takes first is left to chance.
#[test]
fn a_stop_signal_that_comes_with_another_is_not_lost() {
    for round in 0..8 {
        let mut t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "1"]);
        settled(&t);
        signal_together(&t, &[libc::SIGUSR1, libc::SIGTERM]);
        let deadline = Instant::now() + Duration::from_secs(10);
        while t.child.try_wait().unwrap().is_none() {
            assert!(Instant::now() < deadline, "round {round}: SIGTERM with SIGUSR1: the target still runs 10 s later");
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

/// Two signals that arrive together are both handled, one after the other: here SIGHUP (nothing to reload in
/// quick mode) and SIGUSR1, whose planned restart the control socket then reports.
#[test]
fn two_signals_that_come_together_are_both_handled() {
    for round in 0..4 {
        let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "1"]);
        settled(&t);
        signal_together(&t, &[libc::SIGHUP, libc::SIGUSR1]);
        let port = t.port.to_string();
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            let (code, out, err) = holdfast(&["target-ctl", "--port", &port, "status"]);
            if code == 0 && out.contains("planned_downtime_ms 30000") {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "round {round}: SIGUSR1 sent with SIGHUP: no planned restart announced 5 s later ({out}{err})"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

/// SIGTERM, at once, and its exit status (-1: killed by a signal): the target's orderly exit (a `TargetProc` is
/// dropped with SIGKILL).
fn terminate(t: &mut TargetProc) -> i32 {
    // SAFETY: kill(2) on our own child, which has not been waited for, so its PID is not reused.
    unsafe { libc::kill(t.child.id() as libc::pid_t, libc::SIGTERM) };
    t.child.wait().map(|s| s.code().unwrap_or(-1)).unwrap_or(-1)
}

/// The control socket is only ever a socket this target created: `--control` naming a file that exists is not
/// deleted (it used to be replaced by the socket, then removed at exit; now the start fails), and a second target whose first port has
/// the same TCP port number (another address) does not take the first's socket (`target-ctl --port` then talked
/// to the second target, and once that one stopped, the first had no control socket at all).
#[test]
fn control_socket_is_neither_stolen_nor_clobbered() {
    let dir = std::env::temp_dir().join(format!("holdfast-cli-ctl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let keep = dir.join("target.toml");
    std::fs::write(&keep, b"precious").unwrap();
    // A control socket asked for by name that cannot be had fails the start (it only warned), saying why.
    let (rc, _, err) = holdfast(&[
        "target",
        "--listen",
        "127.0.0.1:0",
        "--nqn",
        NQN,
        "--ram-mib",
        "1",
        "--control",
        keep.to_str().unwrap(),
    ]);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains(&format!("command line: --control {}", keep.display())), "{err}");
    assert_eq!(std::fs::read(&keep).unwrap(), b"precious", "the file given to --control is left alone");

    let a = TargetProc::start(&["--nqn", NQN, "--ram-mib", "1"]);
    let port = a.port.to_string();
    let (rc, status_a, err) = holdfast(&["target-ctl", "--port", &port, "status"]);
    assert_eq!(rc, 0, "{err}");
    let mut cmd = Command::new(BIN);
    cmd.args(["target", "--listen", &format!("127.0.0.2:{port}"), "--nqn", NQN, "--ram-mib", "1"]);
    let mut b = TargetProc::spawn(cmd);
    assert_eq!(b.port, a.port);
    let (rc, status, err) = holdfast(&["target-ctl", "--port", &port, "status"]);
    assert_eq!(rc, 0, "{err}");
    assert_eq!(status, status_a, "target-ctl --port {port} still reaches the first target");
    assert_eq!(terminate(&mut b), 0);
    let (rc, status, err) = holdfast(&["target-ctl", "--port", &port, "status"]);
    assert_eq!((rc, status.as_str()), (0, status_a.as_str()), "the first target's socket outlives the second: {err}");
    std::mem::forget(b); // its drop would remove the socket of its port, the first target's
    drop(a);
    let _ = std::fs::remove_dir_all(&dir);
}

/// The control socket disconnects hosts and reloads the configuration: it is its owner's alone (mode 0600,
/// whatever the umask), the target answers only its own user and root on it, and `target-ctl` talks to no
/// socket another user owns (the default one lives in the temporary directory, where anyone makes files). The
/// checks that need a second user run only as root (as CI does), with user nobody.
#[test]
fn the_control_socket_answers_only_its_user_and_root() {
    use std::os::unix::fs::{MetadataExt, PermissionsExt};
    use std::os::unix::process::CommandExt;
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "1"]);
    let sock = std::env::temp_dir().join(format!("holdfast-target-{}.sock", t.port));
    assert_eq!(std::fs::metadata(&sock).unwrap().mode() & 0o777, 0o600, "{}", sock.display());
    // SAFETY: geteuid has no preconditions.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("not root: the checks with a second user are skipped");
        return;
    }
    // Opened up by hand, the socket still answers no one else.
    std::fs::set_permissions(&sock, std::fs::Permissions::from_mode(0o777)).unwrap();
    let out = match Command::new(BIN)
        .args(["target-ctl", "--port", &t.port.to_string(), "status"])
        .uid(65534)
        .gid(65534)
        .output()
    {
        Ok(out) => out,
        Err(e) => {
            eprintln!("user nobody cannot run {BIN} here ({e}): the checks with a second user are skipped");
            return;
        }
    };
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("not allowed"), "{err}");
    let (rc, _, err) = holdfast(&["target-ctl", "--port", &t.port.to_string(), "status"]);
    assert_eq!(rc, 0, "root is answered: {err}");
    drop(t);
    // A socket file of another user where target-ctl looks is not talked to.
    let other = std::env::temp_dir().join(format!("holdfast-cli-other-{}.sock", std::process::id()));
    let _ = std::fs::remove_file(&other);
    let _l = std::os::unix::net::UnixListener::bind(&other).unwrap();
    std::os::unix::fs::lchown(&other, Some(65534), Some(65534)).unwrap();
    let (rc, _, err) = holdfast(&["target-ctl", "--control", other.to_str().unwrap(), "status"]);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("belongs to user 65534"), "{err}");
    let _ = std::fs::remove_file(&other);
}

/// The connect line says the target is ready: a SIGTERM sent as soon as it is out (by a supervisor or a script
/// that waited for it) stops the target in order, exit 0, and `target-ctl` reaches it. The signal handlers used
/// to be installed, and the control socket bound, only after that line, so such a signal killed the target by
/// default (no flush of file namespaces, the control socket left behind).
#[test]
fn the_connect_line_means_ready_for_signals_and_target_ctl() {
    for i in 0..10 {
        let mut t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "1"]);
        let sock = std::env::temp_dir().join(format!("holdfast-target-{}.sock", t.port));
        if i % 2 == 1 {
            let (rc, out, err) = holdfast(&["target-ctl", "--port", &t.port.to_string(), "status"]);
            assert_eq!(rc, 0, "{out}{err}");
        }
        assert_eq!(terminate(&mut t), 0, "exit status after SIGTERM");
        assert!(!sock.exists(), "{} removed at exit", sock.display());
    }
}

/// A target whose stdout is a pipe nobody reads any more (`holdfast target ... | head -1`, a harness that
/// took the port from the first line) goes on serving: printing its connect lines used to panic on EPIPE
/// (exit 101 and a backtrace).
#[test]
fn target_outlives_its_stdout_reader() {
    let free = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = free.local_addr().unwrap().to_string();
    drop(free);
    let mut child = Command::new(BIN)
        .args(["target", "--listen", &addr, "--nqn", NQN, "--ram-mib", "1"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("start target");
    drop(child.stdout.take()); // the reader goes before the target prints
    let t0 = Instant::now();
    let (mut rc, mut out) = (1, String::new());
    while t0.elapsed() < Duration::from_secs(10) {
        let r = holdfast(&["discover", &addr]);
        (rc, out) = (r.0, r.1);
        if rc == 0 || child.try_wait().ok().flatten().is_some() {
            break;
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let alive = child.try_wait().ok().flatten().is_none();
    let _ = child.kill();
    let o = child.wait_with_output().unwrap();
    let port = addr.rsplit(':').next().unwrap_or_default().to_string();
    let _ = std::fs::remove_file(std::env::temp_dir().join(format!("holdfast-target-{port}.sock")));
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(alive && rc == 0, "target serving: {out}\n{err}");
    assert!(!err.contains("panicked"), "{err}");
}

/// `proxy-ctl` succeeds only on a proxy's `ok`: pointed at something else (a web server on the port) it used
/// to print that server's first line and exit 0, and one that never answers gave "Resource temporarily
/// unavailable (os error 11)", without saying where or what.
#[test]
fn proxy_ctl_fails_on_what_is_not_a_proxy() {
    use std::io::{Read, Write};
    let web = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let silent = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let (web_addr, silent_addr) = (web.local_addr().unwrap().to_string(), silent.local_addr().unwrap().to_string());
    std::thread::spawn(move || {
        for mut c in web.incoming().flatten() {
            let _ = c.read(&mut [0u8; 512]);
            let _ = c.write_all(b"HTTP/1.0 400 Bad Request\r\n\r\n");
        }
    });
    let (rc, out, err) = holdfast(&["proxy-ctl", "--control", &web_addr, "status"]);
    assert_eq!(rc, 1, "{out}{err}");
    assert!(err.contains(&web_addr) && err.contains("not a holdfast proxy") && err.contains("HTTP/1.0 400"), "{err}");
    let t0 = Instant::now();
    let (rc, out, err) = holdfast(&["proxy-ctl", "--control", &silent_addr, "status"]);
    assert_eq!(rc, 1, "{out}{err}");
    assert!(err.contains(&silent_addr) && err.contains("no reply"), "{err}");
    assert!(t0.elapsed() < Duration::from_secs(8));
    drop(silent);
}

/// A server on the port that is not an NVMe/TCP target (it answers the ICReq with text): the error names the
/// address and says the answer was not NVMe/TCP. It used to be "protocol error on queue 0: fatal PDU error:
/// Invalid PDU Header Field (FEI 0x0): unknown PDU type", with no address.
#[test]
fn a_server_that_is_not_nvme_tcp_is_named() {
    use std::io::{Read, Write};
    let web = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = web.local_addr().unwrap().to_string();
    std::thread::spawn(move || {
        for mut c in web.incoming().flatten() {
            let _ = c.read(&mut [0u8; 512]);
            let _ = c.write_all(b"HTTP/1.0 400 Bad Request\r\nContent-Length: 0\r\n\r\n");
        }
    });
    for args in [&["discover", &addr][..], &["identify", "--addr", &addr, "--nqn", NQN]] {
        let (rc, _, err) = holdfast(args);
        assert_eq!(rc, 1, "{err}");
        assert!(err.contains(&addr) && err.contains("not NVMe/TCP"), "{args:?}: {err}");
    }
}

/// In quick mode what fails as the target starts names the flag, as what fails validation does: a `--file`
/// that is a directory was "subsystem[0].namespace[0].path: cannot open ...", a key of a file there is none of.
#[test]
fn quick_mode_startup_errors_name_the_flag() {
    let (rc, _, err) =
        holdfast(&["target", "--listen", "127.0.0.1:0", "--nqn", NQN, "--ram-mib", "1", "--ana-state", "up"]);
    assert_eq!(rc, 1);
    assert!(err.contains("command line: --ana-state: \"up\" is not an ANA state"), "{err}");
    let dir = std::env::temp_dir().join(format!("holdfast-cli-quick-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let d = dir.to_str().unwrap();
    let (rc, _, err) = holdfast(&["target", "--listen", "127.0.0.1:0", "--nqn", NQN, "--file", d, "--size-mib", "1"]);
    assert_eq!(rc, 1);
    assert!(err.contains(&format!("command line: --file: cannot open {d}")), "{err}");
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let at = taken.local_addr().unwrap().to_string();
    let (rc, _, err) = holdfast(&["target", "--listen", &at, "--nqn", NQN, "--ram-mib", "1"]);
    assert_eq!(rc, 1);
    assert!(err.contains(&format!("command line: --listen ({at})")), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// Ctrl-C (SIGINT) ends a bench run early with its report of what was done, exit status 130 (it used to take
/// the default action: no report at all).
#[test]
fn bench_interrupted_reports_what_it_did() {
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "16"]);
    let addr = t.addr();
    let child = Command::new(BIN)
        .args(["bench", "--addr", &addr, "--nqn", NQN, "--workload", "randread", "--time", "60", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    std::thread::sleep(Duration::from_millis(1500));
    // SAFETY: kill(2) on our own child, which has not been waited for, so its PID is not reused.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let t0 = Instant::now();
    let o = child.wait_with_output().unwrap();
    assert!(t0.elapsed() < Duration::from_secs(10), "the run went on after Ctrl-C");
    let (out, err) = (String::from_utf8_lossy(&o.stdout), String::from_utf8_lossy(&o.stderr));
    assert_eq!(o.status.code(), Some(130), "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: {out}{err}"));
    assert_eq!(v["interrupted"].as_bool(), Some(true), "{v}");
    assert!(v["ops"].as_u64().is_some_and(|n| n > 0), "{v}");
    assert!(v["seconds"].as_f64().is_some_and(|s| s < 30.0), "{v}");
}

/// With `--size` and no `--time` a run does exactly that much I/O: it used to check the bytes completed before
/// each I/O, so every worker in flight at the limit went on (287 I/Os of 4 KiB for a `--size` of 1 MiB at QD 16
/// × 2 queues), and failed I/Os, which never add to the bytes completed, never brought the run to an end: a
/// target failing every read (its file namespace truncated under it) kept `bench` going forever.
#[test]
fn bench_size_is_the_io_done_and_failed_io_ends_the_run_too() {
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "16"]);
    for wl in ["write", "randwrite", "randrw"] {
        let (rc, out, err) =
            on(&t, "bench", &["--workload", wl, "--size", "1048576", "--qd", "16", "--queues", "2", "--json"]);
        assert_eq!(rc, 0, "{out}{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["ops"].as_u64(), Some(256), "{wl}: 1 MiB of 4 KiB I/O: {v}");
    }
    drop(t);
    let img = std::env::temp_dir().join(format!("holdfast-cli-size-{}.img", std::process::id()));
    let _ = std::fs::remove_file(&img);
    let t = TargetProc::start(&["--nqn", NQN, "--file", img.to_str().unwrap(), "--size-mib", "16"]);
    std::fs::File::options().write(true).open(&img).unwrap().set_len(0).unwrap();
    let addr = t.addr();
    let mut child = Command::new(BIN)
        .args(["bench", "--addr", &addr, "--nqn", NQN, "--workload", "randread", "--size", "65536", "--json"])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() && t0.elapsed() < Duration::from_secs(20) {
        std::thread::sleep(Duration::from_millis(50));
    }
    let ended = child.try_wait().unwrap().is_some();
    if !ended {
        let _ = child.kill();
    }
    let o = child.wait_with_output().unwrap();
    let _ = std::fs::remove_file(&img);
    assert!(ended, "bench --size against a target failing every read still ran 20 s later");
    let out = String::from_utf8_lossy(&o.stdout);
    assert_eq!(o.status.code(), Some(1), "{out}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!((v["ops"].as_u64(), v["errors"].as_u64()), (Some(0), Some(16)), "{v}");
}

/// A `--size` that is not a whole number of `--bs` I/Os: the run does the whole I/Os that fit in it, no more. One
/// more was done (257 I/Os of 4 KiB for 1 MiB + 100 bytes): more I/O than asked for, and a sequential write (a
/// prefill of the region) wrapped round to rewrite its first unit.
#[test]
fn bench_size_not_a_multiple_of_the_io_size_is_not_exceeded() {
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "16"]);
    for wl in ["write", "randwrite"] {
        let (rc, out, err) =
            on(&t, "bench", &["--workload", wl, "--size", "1048676", "--qd", "16", "--queues", "2", "--json"]);
        assert_eq!(rc, 0, "{out}{err}");
        let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
        assert_eq!(v["ops"].as_u64(), Some(256), "{wl}: 1 MiB + 100 bytes holds 256 I/Os of 4 KiB: {v}");
    }
}

/// `randrw --mix 0` writes only and `--mix 100` reads only: with `--verify` the first is read back after the run
/// and the second refused, as `randwrite` and `randread` are. They used to check nothing at all (no read of a
/// written unit ever came), and reported 0 mismatches.
#[test]
fn bench_verify_randrw_that_only_writes_or_only_reads() {
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "16"]);
    let base = ["--workload", "randrw", "--size", "1048576", "--qd", "8", "--verify", "--json"];
    let (rc, out, err) = on(&t, "bench", &[&base[..], &["--mix", "0"]].concat());
    assert_eq!(rc, 0, "{out}{err}");
    let v: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert!(v["verify_read_back"].as_u64().is_some_and(|n| n > 0), "{v}");
    let (rc, out, err) = on(&t, "bench", &[&base[..], &["--mix", "100"]].concat());
    assert_eq!(rc, 1, "{out}{err}");
    assert!(err.contains("--verify checks what this run wrote"), "{err}");
}

/// `gen-dhchap-key` prints a DHHC-1 secret as nvme-cli does: a given key encodes to the known representation
/// (computed with Python's base64 and zlib.crc32), random ones parse back with the length and hash asked for,
/// two are never the same, and a bad length or key is refused without echoing the key.
#[test]
fn gen_dhchap_key_prints_a_dhhc_1_secret() {
    use holdfast_proto::auth::{DhchapSecret, HashId};
    let hex: String = (0u8..32).map(|b| format!("{b:02x}")).collect();
    let (rc, out, err) = holdfast(&["gen-dhchap-key", "--hmac", "1", "--secret", &hex]);
    assert_eq!((rc, out.trim()), (0, "DHHC-1:01:AAECAwQFBgcICQoLDA0ODxAREhMUFRYXGBkaGxwdHh+KfiaR:"), "{err}");
    for (args, len, hash) in [
        (&[][..], 32, None),
        (&["-m", "2"][..], 48, Some(HashId::Sha384)),
        (&["-m", "3", "-l", "32"][..], 32, Some(HashId::Sha512)),
    ] {
        let (rc, a, err) = holdfast(&[&["gen-dhchap-key"][..], args].concat());
        assert_eq!(rc, 0, "{err}");
        let (_, b, _) = holdfast(&[&["gen-dhchap-key"][..], args].concat());
        assert_ne!(a, b, "two random secrets were the same");
        let s = DhchapSecret::parse(a.trim()).unwrap();
        assert_eq!((s.key_len(), s.transform), (len, hash), "{args:?}");
    }
    let (rc, _, err) = holdfast(&["gen-dhchap-key", "--key-len", "40"]);
    assert!(rc != 0 && err.contains("32, 48 or 64"), "{err}");
    let (rc, _, err) = holdfast(&["gen-dhchap-key", "--secret", "abcdefgh"]);
    assert!(rc != 0 && err.contains("not hexadecimal") && !err.contains("abcdefgh"), "{err}");
}

/// `holdfast resv`: register, acquire Write Exclusive, the report (JSON) shows this host holding it, release,
/// clear; a bad type or key is refused with the reason before anything is sent.
#[test]
fn resv_registers_acquires_reports_and_clears() {
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "1"]);
    let addr = t.addr();
    let resv = |args: &[&str]| {
        let mut all = vec!["resv", "--addr", &addr, "--nqn", NQN];
        all.extend_from_slice(args);
        holdfast(&all)
    };
    for args in [&["register", "--key", "0xa1"][..], &["acquire", "--key", "0xa1", "--type", "we"]] {
        let (rc, _, err) = resv(args);
        assert_eq!(rc, 0, "{args:?}: {err}");
    }
    let (rc, out, err) = resv(&["--json", "report"]);
    assert_eq!(rc, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((&v["type"], &v["generation"]), (&"we".into(), &1.into()), "{out}");
    assert_eq!((&v["registrants"][0]["key"], &v["registrants"][0]["holds"]), (&"0xa1".into(), &true.into()), "{out}");
    // Acquiring with another key: the target's Reservation Conflict, named.
    let (rc, _, err) = resv(&["acquire", "--key", "5", "--type", "ea"]);
    assert_eq!(rc, 1);
    assert!(
        err.contains("Reservation Conflict") && err.contains(": this host is not registered with that key"),
        "{err}"
    );
    // Registering again with another key: the conflict, and what to do instead.
    let (rc, _, err) = resv(&["register", "--key", "0xa2"]);
    assert_eq!(rc, 1);
    assert!(err.contains(": this host is registered already") && err.contains("`replace`"), "{err}");
    // Other hosts: by --hostid, and by a UUID-based --hostnqn (whose UUID is its Host Identifier; the NQN
    // alone used to leave the ID this machine's, so the "other host" was this one, with another key).
    let other_id = "6f1c2e9a-3b4d-4e5f-8a7b-9c0d1e2f3a4b";
    let (rc, _, err) = resv(&["--hostid", other_id, "register", "--key", "0xb2"]);
    assert_eq!(rc, 0, "{err}");
    // A UUID host NQN is another host where /etc/nvme/hostid does not say this machine's ID (as nvme-cli, the
    // file's ID stays: the same host, registered already with another key).
    let other_nqn = "nqn.2014-08.org.nvmexpress:uuid:0b8e6f52-1d2c-4a3b-9e8f-7a6b5c4d3e2f";
    let (rc, _, err) = resv(&["--hostnqn", other_nqn, "register", "--key", "0xc3"]);
    let file = std::path::Path::new("/etc/nvme/hostid").exists();
    if file {
        assert_eq!(rc, 1, "{err}");
        assert!(err.contains("Reservation Conflict"), "{err}");
    } else {
        assert_eq!(rc, 0, "{err}");
    }
    let (rc, out, err) = resv(&["--json", "report"]);
    assert_eq!(rc, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let hosts = if file { 2 } else { 3 };
    assert_eq!(v["registrants"].as_array().map(|r| r.len()), Some(hosts), "{hosts} hosts: {out}");
    // Host Identifiers in the UUID form `--hostid` takes and `target-ctl controllers` shows.
    assert!(out.contains(other_id), "{out}");
    assert_eq!(out.contains("0b8e6f52-1d2c-4a3b-9e8f-7a6b5c4d3e2f"), !file, "{out}");
    let (rc, _, err) = resv(&["--hostid", "not-a-uuid", "report"]);
    assert_eq!(rc, 2);
    assert!(err.contains("\"not-a-uuid\" is not a UUID"), "{err}");
    for args in [&["release", "--key", "0xa1", "--type", "1"][..], &["clear", "--key", "0xa1"]] {
        let (rc, _, err) = resv(args);
        assert_eq!(rc, 0, "{args:?}: {err}");
    }
    let (rc, out, _) = resv(&["report"]);
    assert_eq!(rc, 0);
    assert!(out.contains("reservation: none") && !out.contains("registrant "), "{out}");
    let (rc, _, err) = resv(&["acquire", "--key", "1", "--type", "shared"]);
    assert_eq!(rc, 2);
    assert!(err.contains("\"shared\" is not a reservation type"), "{err}");
}

/// `target-ctl controllers` lists the host associations (here a bench's: its host NQN, address, two I/O queues,
/// the KATO, enabled), as JSON and as a table; `target-ctl stats` counts a subsystem's commands and bytes.
#[test]
fn target_ctl_lists_controllers_and_counts_io() {
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "1"]);
    let port = t.port.to_string();
    let input = std::env::temp_dir().join(format!("holdfast-cli-ctl-{}.bin", std::process::id()));
    std::fs::write(&input, vec![7u8; 8192]).unwrap();
    let (rc, _, err) = on(&t, "write", &["--offset", "0", "--input", input.to_str().unwrap()]);
    std::fs::remove_file(&input).unwrap();
    assert_eq!(rc, 0, "{err}");
    let (rc, out, err) = holdfast(&["target-ctl", "--port", &port, "stats", "--json"]);
    assert_eq!(rc, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    let sub = v.as_array().unwrap().iter().find(|s| s["subsystem"] == NQN).expect("the subsystem");
    assert_eq!(
        (&sub["write_cmds"], &sub["bytes_written"], &sub["namespaces"]),
        (&1.into(), &8192.into(), &1.into()),
        "{out}"
    );

    let addr = t.addr();
    let hostnqn = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-4000-8000-00000000c71e";
    let mut bench = Command::new(BIN)
        .args(["bench", "--addr", &addr, "--nqn", NQN, "--hostnqn", hostnqn, "--queues", "2", "--time", "20"])
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let t0 = Instant::now();
    let listed = loop {
        let (rc, out, err) = holdfast(&["target-ctl", "--port", &port, "controllers", "--json"]);
        assert_eq!(rc, 0, "{err}");
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        if let Some(c) = v.as_array().unwrap().iter().find(|c| c["hostnqn"] == hostnqn && c["io_queues"] == 2) {
            break c.clone();
        }
        assert!(t0.elapsed() < Duration::from_secs(10), "the bench's controller with 2 I/O queues never listed: {out}");
        std::thread::sleep(Duration::from_millis(50));
    };
    assert_eq!((&listed["subsystem"], &listed["port"], &listed["ready"]), (&NQN.into(), &1.into(), &true.into()));
    assert!(listed["host_addr"].as_str().unwrap().starts_with("127.0.0.1:"), "{listed}");
    assert!(listed["kato_ms"].as_u64().unwrap() > 0, "{listed}");
    let (rc, out, _) = holdfast(&["target-ctl", "--port", &port, "controllers"]);
    assert_eq!(rc, 0);
    assert!(out.starts_with("SUBSYSTEM") && out.contains(hostnqn), "{out}");
    assert!(out.contains(listed["hostid"].as_str().unwrap()), "the Host Identifier column: {out}");
    // Disconnected by the operator: the association ends, and the host (still allowed) connects again, as a
    // new controller.
    // The target's refusal is an error: on stderr, never in the output a script reads as JSON.
    let (rc, out, err) =
        holdfast(&["target-ctl", "--port", &port, "disconnect", "--host", "nqn.2014-08.org.nvmexpress:x"]);
    assert_eq!(
        (rc, out.as_str(), err.trim()),
        (1, "", "holdfast: error: no controller matches (target-ctl controllers lists them)")
    );
    let (rc, _, err) = holdfast(&["target-ctl", "--port", &port, "disconnect", "--cntlid", "1"]);
    assert_eq!(rc, 2, "a CNTLID without its subsystem: {err}");
    let old = listed["cntlid"].as_u64().unwrap().to_string();
    let (rc, out, err) = holdfast(&["target-ctl", "--port", &port, "disconnect", "--subsystem", NQN, "--cntlid", &old]);
    assert_eq!(rc, 0, "{out}{err}");
    assert!(out.starts_with(&format!("1 controller(s) disconnected ({NQN} CNTLID {old})")), "{out}");
    let t0 = Instant::now();
    loop {
        let (_, out, _) = holdfast(&["target-ctl", "--port", &port, "controllers", "--json"]);
        let v: serde_json::Value = serde_json::from_str(&out).unwrap();
        let mine: Vec<_> = v.as_array().unwrap().iter().filter(|c| c["hostnqn"] == hostnqn).collect();
        if mine.len() == 1 && mine[0]["cntlid"] != listed["cntlid"] && mine[0]["io_queues"] == 2 {
            break;
        }
        assert!(t0.elapsed() < Duration::from_secs(20), "the host did not connect again after the disconnect: {out}");
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = bench.kill();
    let _ = bench.wait();
}

/// Run `holdfast ARGS` with `len` bytes of `byte` written to its stdin through a pipe (no length known
/// beforehand): its exit code, stderr, and the most memory it held (VmHWM of its own address space, KiB, read
/// while it runs: a lower bound, reached early by a command that reads its whole input first).
fn holdfast_piped(args: &[&str], byte: u8, len: usize) -> (i32, String, u64) {
    use std::io::{Read, Write};
    let mut child = Command::new(BIN)
        .args(args)
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("run holdfast");
    let mut stdin = child.stdin.take().unwrap();
    // The child may stop reading (a refused input): a broken pipe then ends the feeding, not the test.
    let feeder = std::thread::spawn(move || {
        let piece = vec![byte; 1 << 16];
        let mut left = len;
        while left > 0 {
            let n = left.min(piece.len());
            if stdin.write_all(&piece[..n]).is_err() {
                return;
            }
            left -= n;
        }
    });
    let mut stderr = child.stderr.take().unwrap();
    let reader = std::thread::spawn(move || {
        let mut err = String::new();
        let _ = stderr.read_to_string(&mut err);
        err
    });
    let status_path = format!("/proc/{}/status", child.id());
    let mut hwm = 0u64;
    let status = loop {
        if let Ok(text) = std::fs::read_to_string(&status_path) {
            if let Some(kib) = text.lines().find_map(|l| l.strip_prefix("VmHWM:")) {
                hwm = hwm.max(kib.trim().trim_end_matches("kB").trim().parse().unwrap_or(0));
            }
        }
        if let Some(st) = child.try_wait().unwrap() {
            break st;
        }
        std::thread::sleep(Duration::from_millis(5));
    };
    feeder.join().unwrap();
    (status.code().unwrap_or(-1), reader.join().unwrap(), hwm)
}

/// `write` streams its input (memory held: a few MiB, whatever the input's size; it used to read all of it
/// first), and a pipe, whose length is known only at its end, that turns out too long or not whole blocks is
/// refused once what fitted is written, saying how much; what was written is on the namespace.
#[test]
fn write_streams_its_input_and_says_what_a_refused_pipe_left_written() {
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "64", "--block-size", "4096"]);
    let addr = t.addr();
    let w = ["write", "--addr", addr.as_str(), "--nqn", NQN];
    let (rc, err, max_rss_kib) = holdfast_piped(&w, 0x3C, 64 << 20);
    assert_eq!(rc, 0, "{err}");
    assert!(max_rss_kib < 48 << 10, "64 MiB written with {max_rss_kib} KiB resident: not streamed");
    let dir = std::env::temp_dir().join(format!("holdfast-cli-stream-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let back = dir.join("back.bin");
    let (rc, _, err) = on(&t, "read", &["--length", &(64u64 << 20).to_string(), "--output", back.to_str().unwrap()]);
    assert_eq!(rc, 0, "{err}");
    assert!(std::fs::read(&back).unwrap().iter().all(|&b| b == 0x3C), "the streamed write read back");
    // 5 MiB from 60 MiB: the first 4 MiB fit and are written, the rest refused.
    let at = (60u64 << 20).to_string();
    let (rc, err, _) = holdfast_piped(&[&w[..], &["--offset", &at]].concat(), 0x5A, 5 << 20);
    assert_eq!(rc, 1);
    assert!(
        err.contains("beyond the end of namespace 1") && err.contains("its first 4194304 bytes were written"),
        "{err}"
    );
    let (rc, _, err) = on(&t, "read", &["--offset", &at, "--length", "4194304", "--output", back.to_str().unwrap()]);
    assert_eq!(rc, 0, "{err}");
    assert!(std::fs::read(&back).unwrap().iter().all(|&b| b == 0x5A), "what fitted was written");
    // The piece that crosses the end: what fits of it is written too (it was dropped whole).
    let at = ((64u64 << 20) - 4096).to_string();
    let (rc, err, _) = holdfast_piped(&[&w[..], &["--offset", &at]].concat(), 0x6B, 8192);
    assert_eq!(rc, 1);
    assert!(err.contains("its first 4096 bytes were written"), "{err}");
    let (rc, _, err) = on(&t, "read", &["--offset", &at, "--length", "4096", "--output", back.to_str().unwrap()]);
    assert_eq!(rc, 0, "{err}");
    assert!(std::fs::read(&back).unwrap().iter().all(|&b| b == 0x6B), "what fitted of the last piece was written");
    // Not whole blocks: the whole blocks are written.
    let (rc, err, _) = holdfast_piped(&w, 0x11, 4096 + 100);
    assert_eq!(rc, 1);
    assert!(err.contains("stdin is 4196 bytes, not a multiple of the 4096-byte block size"), "{err}");
    assert!(err.contains("its first 4096 bytes were written"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A `write` during which the target restarted (a RAM namespace: what it had acknowledged before is gone) fails
/// and says why, after riding through the restart (the writes still pending were sent again); it used to exit 0.
#[test]
fn a_write_across_a_target_restart_fails_and_says_why() {
    let listen = common::free_loopback_addr();
    let target = |extra: &[&str]| {
        let args = [&["--nqn", NQN, "--ram-mib", "8", "--reconnect-delay-ms", "200"][..], extra].concat();
        TargetProc::start_at(&listen, &args)
    };
    // Every write held 1.5 s: the write is under way when the target goes.
    let mut first = target(&["--test-delay-writes-ms", "1500"]);
    let dir = std::env::temp_dir().join(format!("holdfast-cli-restart-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.bin");
    std::fs::write(&input, vec![0x77u8; 2 << 20]).unwrap();
    let write = Command::new(BIN)
        .args(["write", "--addr", &listen, "--nqn", NQN, "--input", input.to_str().unwrap()])
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    common::wait_for_a_controller(first.port);
    std::thread::sleep(Duration::from_millis(300)); // its first writes reach the target, and are held there
    first.kill();
    let _second = target(&[]);
    let out = write.wait_with_output().unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(1), "{err}");
    assert!(err.contains("the target restarted (new instance ID) while 2097152 bytes were written"), "{err}");
    assert!(err.contains("write them again"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `resv register --ptpl on` turns Persist Through Power Loss on (a file namespace: the report says so, and
/// the registration outlives a target restart); a RAM namespace, which cannot persist, refuses it.
#[test]
fn resv_register_sets_persist_through_power_loss() {
    let dir = std::env::temp_dir().join(format!("holdfast-cli-ptpl-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("vol.img");
    let file_target = || TargetProc::start(&["--nqn", NQN, "--file", img.to_str().unwrap(), "--size-mib", "1"]);
    let t = file_target();
    let (rc, _, err) = on(&t, "resv", &["register", "--key", "0xd4", "--ptpl", "on"]);
    assert_eq!(rc, 0, "{err}");
    let (rc, out, err) = on(&t, "resv", &["--json", "report"]);
    assert_eq!(rc, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(v["ptpl"], true, "{out}");
    drop(t);
    let t = file_target();
    let (rc, out, err) = on(&t, "resv", &["--json", "report"]);
    assert_eq!(rc, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!((&v["ptpl"], &v["registrants"][0]["key"]), (&true.into(), &"0xd4".into()), "after a restart: {out}");
    drop(t);
    let ram = TargetProc::start(&["--nqn", NQN, "--ram-mib", "1"]);
    // Refused before anything is sent, saying why (it was the target's bare Invalid Field).
    let (rc, _, err) = on(&ram, "resv", &["register", "--key", "1", "--ptpl", "on"]);
    assert_eq!(rc, 1);
    assert!(err.contains("RESCAP bit 0 clear") && err.contains("--ptpl on refused"), "{err}");
    let (rc, _, err) = on(&ram, "resv", &["register", "--key", "1", "--ptpl", "maybe"]);
    assert_eq!(rc, 2);
    assert!(err.contains("\"maybe\" is neither on nor off"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// A target whose stderr reader goes away (a `| tee` killed, a log shipper restarting) goes on serving: a log
/// line it cannot write is lost. It used to die at the next line (tracing reported the failed write with
/// eprintln!, which panics on a broken pipe), and any peer that connected wrote one.
#[test]
fn a_target_outlives_its_log_reader() {
    let mut cmd = Command::new(BIN);
    cmd.args(["target", "--listen", "127.0.0.1:0", "--nqn", NQN, "--ram-mib", "1"]);
    cmd.stderr(std::process::Stdio::piped());
    let mut child = cmd.stdout(std::process::Stdio::piped()).spawn().unwrap();
    let out = child.stdout.take().unwrap();
    drop(child.stderr.take()); // the reader goes
    let line =
        std::io::BufRead::lines(std::io::BufReader::new(out)).map(|l| l.unwrap()).find(|l| l.starts_with("connect:"));
    let port: u16 = line.unwrap().split(" -s ").nth(1).unwrap().split_whitespace().next().unwrap().parse().unwrap();
    let t = TargetProc { child, port };
    for _ in 0..2 {
        let (rc, _, err) = holdfast(&["identify", "--addr", &t.addr(), "--nqn", NQN]);
        assert_eq!(rc, 0, "the target died with its log reader: {err}");
    }
}

/// The control socket takes command lines of a few KiB: a longer one is refused and the connection closed (the
/// target gathered all it was sent, 200 MB without a newline growing it by as much); the next client is served.
#[test]
fn the_control_socket_refuses_an_endless_line() {
    use std::io::{Read, Write};
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "1"]);
    let path = std::env::temp_dir().join(format!("holdfast-target-{}.sock", t.port));
    let mut s = std::os::unix::net::UnixStream::connect(&path).unwrap();
    s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
    let _ = s.write_all(&vec![b'a'; 64 << 10]);
    let mut reply = String::new();
    let _ = s.read_to_string(&mut reply);
    assert!(reply.starts_with("error: a line longer than 4096 bytes"), "{reply:?}");
    let (rc, out, err) = holdfast(&["target-ctl", "--port", &t.port.to_string(), "status"]);
    assert_eq!(rc, 0, "{err}");
    assert!(out.starts_with("instance ") && out.contains(&format!(" pid {} ", t.child.id())), "{out}");
}

/// The namespace commands refuse what can name no namespace before asking the target: NSID 0 (it reached the
/// target, whose Identify answered "Invalid Namespace or Format") and the discovery subsystem (answered "Identify
/// failed: Invalid Field in Command").
#[test]
fn namespace_commands_refuse_nsid_0_and_the_discovery_nqn() {
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "1"]);
    let (rc, _, err) = on(&t, "read", &["--nsid", "0", "--length", "512"]);
    assert_eq!(rc, 2, "{err}");
    assert!(err.contains("invalid value '0' for '--nsid <NSID>'"), "{err}");
    let addr = t.addr();
    let (rc, _, err) =
        holdfast(&["bench", "--addr", &addr, "--nqn", "nqn.2014-08.org.nvmexpress.discovery", "--time", "1"]);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("is the discovery subsystem, which has no namespaces"), "{err}");
}

/// `target-ctl reload` reloads the configuration file as SIGHUP does and answers with the outcome: what changed,
/// or (exit 1, on stderr) why the file was not applied, the old configuration staying; a target without a file
/// (quick mode) says it has nothing to reload.
#[test]
fn target_ctl_reload_says_what_changed_or_why_not() {
    let dir = std::env::temp_dir().join(format!("holdfast-cli-reload-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let cfg = dir.join("t.toml");
    let write = |nsids: &[u32], extra: &str| {
        let mut text = format!(
            "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"{NQN}\"\nallow_any_host = true\n{extra}"
        );
        for n in nsids {
            text += &format!("[[subsystem.namespace]]\nnsid = {n}\nbackend = \"ram\"\nsize_mib = 1\n");
        }
        std::fs::write(&cfg, text).unwrap();
    };
    write(&[1], "");
    let mut cmd = Command::new(BIN);
    cmd.args(["target", "--config", cfg.to_str().unwrap()]);
    let t = TargetProc::spawn(cmd);
    let port = t.port.to_string();
    let reload = || holdfast(&["target-ctl", "--port", &port, "reload"]);

    write(&[1, 2], "");
    let (rc, out, err) = reload();
    assert_eq!(rc, 0, "{err}");
    assert!(out.starts_with(&format!("{} applied: ", cfg.display())), "{out}");
    let (rc, out, err) = reload();
    assert_eq!((rc, out.trim()), (0, format!("{} reloaded, nothing changed", cfg.display()).as_str()), "{err}");

    write(&[1], "allow_any_hots = true\n");
    let (rc, out, err) = reload();
    assert_eq!((rc, out.as_str()), (1, ""), "{err}");
    assert!(err.contains("not applied, the old configuration stays") && err.contains("allow_any_hots"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "one line: {err}");
    let (rc, _, err) = holdfast(&["identify", "--addr", &t.addr(), "--nqn", NQN, "--nsid", "2"]);
    assert_eq!(rc, 0, "namespace 2 is still served: {err}");

    let quick = TargetProc::start(&["--nqn", NQN, "--ram-mib", "1"]);
    let (rc, _, err) = holdfast(&["target-ctl", "--port", &quick.port.to_string(), "reload"]);
    assert_eq!(rc, 1);
    assert!(err.contains("nothing to reload"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `bench` with writes on a write-protected namespace is refused before it starts, saying why (it ran its whole
/// time failing every write); reads run.
#[test]
fn bench_refuses_to_write_a_write_protected_namespace() {
    let dir = std::env::temp_dir().join(format!("holdfast-cli-ro-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let img = dir.join("ro.img");
    std::fs::write(&img, vec![0u8; 1 << 20]).unwrap();
    let t = TargetProc::start(&["--nqn", NQN, "--file", img.to_str().unwrap(), "--read-only"]);
    let (rc, _, err) = on(&t, "bench", &["--workload", "randwrite", "--time", "1"]);
    assert_eq!(rc, 1, "{err}");
    assert!(err.contains("is write protected") && err.contains("a randwrite run would fail every write"), "{err}");
    let (rc, _, err) = on(&t, "bench", &["--workload", "randread", "--time", "0.2"]);
    assert_eq!(rc, 0, "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

/// `write-zeroes`, `trim` and `flush` act on the namespace (the zeroed range reads as zeroes, the rest as written);
/// `log --page smart` counts the commands; `log --page error` reads the controller's (empty) Error Information log.
#[test]
fn write_zeroes_trim_flush_and_log_pages() {
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "4", "--block-size", "4096"]);
    let dir = std::env::temp_dir().join(format!("holdfast-cli-zero-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let data = dir.join("in.bin");
    std::fs::write(&data, vec![0xA5u8; 3 * 4096]).unwrap();
    let (rc, _, err) = on(&t, "write", &["--input", data.to_str().unwrap()]);
    assert_eq!(rc, 0, "{err}");
    let (rc, out, err) = on(&t, "write-zeroes", &["--offset", "4096", "--length", "4096"]);
    assert_eq!((rc, out.trim()), (0, "4096 bytes at offset 4096 zeroed"), "{err}");
    let back = dir.join("back.bin");
    let (rc, _, err) = on(&t, "read", &["--length", "12288", "--output", back.to_str().unwrap()]);
    assert_eq!(rc, 0, "{err}");
    let b = std::fs::read(&back).unwrap();
    assert!(b[..4096].iter().all(|&x| x == 0xA5) && b[4096..8192].iter().all(|&x| x == 0), "the middle block zeroed");
    assert!(b[8192..].iter().all(|&x| x == 0xA5), "and only it");
    let (rc, _, err) = on(&t, "write-zeroes", &["--offset", "4194304", "--length", "4096"]);
    assert_eq!(rc, 1);
    assert!(err.contains("beyond the end of namespace 1"), "{err}");
    let (rc, _, err) = on(&t, "trim", &[]);
    assert_eq!(rc, 2, "no --length: refused, not the whole namespace: {err}");
    let (rc, out, err) = on(&t, "trim", &["--length", "all"]);
    assert_eq!((rc, out.trim()), (0, "4194304 bytes at offset 0 deallocated"), "{err}");
    let (rc, _, err) = on(&t, "flush", &[]);
    assert_eq!(rc, 0, "{err}");
    let (rc, out, err) = on(&t, "log", &["--page", "smart", "--json"]);
    assert_eq!(rc, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["host_write_commands"].as_u64().is_some_and(|n| n >= 1), "{out}");
    assert!(v["host_read_commands"].as_u64().is_some_and(|n| n >= 1), "{out}");
    let (rc, out, err) = on(&t, "log", &["--page", "error", "--json"]);
    assert_eq!(rc, 0, "{err}");
    let v: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert!(v["entries"].as_array().is_some() && v["capacity"].as_u64().is_some_and(|n| n >= 1), "{out}");
    let _ = std::fs::remove_dir_all(&dir);
}
