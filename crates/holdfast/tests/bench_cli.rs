//! End-to-end tests of `holdfast bench` against our target over loopback: how a run ends when the target goes
//! away (its run time, a second Ctrl-C), what it says of a target restart, and the options it refuses.

use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

mod common;
use common::{TargetProc, BIN};

const NQN: &str = "nqn.2026-01.io.holdfast:bench";

/// `holdfast bench --addr ADDR --nqn NQN ARGS...`, started.
fn bench(addr: &str, args: &[&str]) -> Child {
    Command::new(BIN)
        .args(["bench", "--addr", addr, "--nqn", NQN])
        .args(args)
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start bench")
}

/// Wait for `child` at most `limit` (a liveness bound), killing it if it is still running then: (its exit code,
/// None if it had to be killed; stdout; stderr).
fn finish(mut child: Child, limit: Duration) -> (Option<i32>, String, String) {
    let t0 = Instant::now();
    while child.try_wait().unwrap().is_none() && t0.elapsed() < limit {
        std::thread::sleep(Duration::from_millis(50));
    }
    let killed = child.try_wait().unwrap().is_none();
    if killed {
        let _ = child.kill();
    }
    let o = child.wait_with_output().unwrap();
    let code = if killed { None } else { o.status.code() };
    (code, String::from_utf8_lossy(&o.stdout).into(), String::from_utf8_lossy(&o.stderr).into())
}

fn json(out: &str, err: &str) -> serde_json::Value {
    serde_json::from_str(out.trim()).unwrap_or_else(|e| panic!("{e}: stdout {out:?}, stderr {err:?}"))
}

/// With the target killed for good, `--time` still ends the run: the I/Os in flight are waited for a grace
/// period (5 s here), then the report says how many never completed and what the controller is doing, and the
/// exit status is 1. The run used to go on until ctrl_loss_tmo (600 s), saying nothing when not on a terminal.
/// Its longest stall is the time no I/O succeeded, the whole wait included (it used to count only the host's
/// reconnecting, from the loss noticed).
#[test]
fn bench_time_ends_the_run_when_the_target_is_gone_for_good() {
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "16"]);
    let child = bench(
        &t.addr(),
        &["--workload", "randrw", "--qd", "4", "--time", "3", "--json", "--ctrl-loss-tmo-ms", "600000"],
    );
    common::wait_for_a_controller(t.port);
    std::thread::sleep(Duration::from_millis(500));
    drop(t);
    let (code, out, err) = finish(child, Duration::from_secs(40));
    assert!(code.is_some(), "bench --time 3 still ran 40 s after it started, its target gone: {err}");
    assert_eq!(code, Some(1), "{out}{err}");
    let v = json(&out, &err);
    assert!(v["ops"].as_u64().is_some_and(|n| n > 0), "{v}");
    assert!(v["outstanding"].as_u64().is_some_and(|n| n > 0 && n <= 4), "{v}");
    assert!(v["unfinished"].as_str().is_some_and(|s| s.contains("after the run time was over")), "{v}");
    assert!(v["controller_state"].as_str().is_some_and(|s| s.contains("reconnecting")), "{v}");
    assert!(v["longest_stall_ms"].as_u64().is_some_and(|ms| ms >= 4000), "the wait counts: {v}");
    assert!(err.contains("holdfast: waiting") && err.contains("I/Os still in flight"), "{err}");
}

/// A second Ctrl-C stops waiting for I/Os that a target gone away leaves in flight, and reports what was done
/// (it used to exit at once without a report).
#[test]
fn bench_second_ctrl_c_reports_what_was_done() {
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "16"]);
    let child = bench(&t.addr(), &["--workload", "randread", "--qd", "2", "--time", "60", "--json"]);
    common::wait_for_a_controller(t.port);
    std::thread::sleep(Duration::from_millis(500));
    drop(t);
    std::thread::sleep(Duration::from_millis(500));
    // SAFETY: kill(2) on our own child, which has not been waited for, so its PID is not reused.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    std::thread::sleep(Duration::from_millis(1000));
    // SAFETY: as above.
    unsafe { libc::kill(child.id() as libc::pid_t, libc::SIGINT) };
    let (code, out, err) = finish(child, Duration::from_secs(20));
    assert_eq!(code, Some(130), "{out}{err}");
    let v = json(&out, &err);
    assert_eq!(v["interrupted"].as_bool(), Some(true), "{v}");
    assert!(v["ops"].as_u64().is_some_and(|n| n > 0), "{v}");
    assert!(v["outstanding"].as_u64().is_some_and(|n| n > 0), "{v}");
    assert!(v["unfinished"].as_str().is_some_and(|s| s.contains("when Ctrl-C stopped the wait")), "{v}");
}

/// A `--size` larger than the namespace is refused, naming both sizes: it used to be clamped for the region but
/// kept as the byte budget, so that a sequential write of 1 TB to 16 MiB ran for many minutes. The namespace's
/// size itself is fine.
#[test]
fn bench_size_larger_than_the_namespace_is_refused() {
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "16"]);
    let child = bench(&t.addr(), &["--workload", "write", "--size", "1000000000000", "--json"]);
    let (code, out, err) = finish(child, Duration::from_secs(20));
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("--size 1000000000000 bytes is larger than namespace 1"), "{err}");
    assert!(err.contains("(16777216 bytes)"), "{err}");
    let child =
        bench(&t.addr(), &["--workload", "write", "--size", "16777216", "--bs", "1048576", "--qd", "2", "--json"]);
    let (code, out, err) = finish(child, Duration::from_secs(20));
    assert_eq!(code, Some(0), "{out}{err}");
    assert_eq!(json(&out, &err)["ops"].as_u64(), Some(16));
}

/// `--mix` is for randrw alone (it was ignored by the others), `--bs 0` says an I/O is at least one block, and
/// the summary line names the controllers when there are several.
#[test]
fn bench_mix_bs_and_controllers_are_said_plainly() {
    let t = TargetProc::start(&["--nqn", NQN, "--ram-mib", "16"]);
    let addr = t.addr();
    for wl in ["randread", "write"] {
        let (code, out, err) =
            finish(bench(&addr, &["--workload", wl, "--mix", "30", "--time", "1"]), Duration::from_secs(20));
        assert_eq!(code, Some(1), "{wl}: {out}{err}");
        assert!(err.contains("--mix 30 is for --workload randrw"), "{wl}: {err}");
    }
    let (code, out, err) = finish(
        bench(&addr, &["--workload", "randrw", "--mix", "30", "--time", "1", "--qd", "2", "--json"]),
        Duration::from_secs(20),
    );
    assert_eq!(code, Some(0), "{out}{err}");
    let (code, out, err) = finish(bench(&addr, &["--bs", "0", "--time", "1"]), Duration::from_secs(20));
    assert_eq!(code, Some(1), "{out}{err}");
    assert!(err.contains("--bs 0: the I/O size must be at least one block (512 bytes)"), "{err}");
    let (code, out, err) =
        finish(bench(&addr, &["--controllers", "2", "--qd", "2", "--time", "1"]), Duration::from_secs(20));
    assert_eq!(code, Some(0), "{out}{err}");
    let summary = out.lines().next().unwrap_or_default();
    assert!(summary.starts_with("randread bs=4096 qd=2 queues=1 controllers=2: "), "{out}");
}

/// A target that restarted during a run with `--verify` (a RAM namespace: its data gone) shows mismatches, still
/// counted; the report says, next to them, that the target restarted and why that empties such a namespace.
#[test]
fn bench_verify_says_the_target_restarted() {
    let listen = common::free_loopback_addr();
    let target = || TargetProc::start_at(&listen, &["--nqn", NQN, "--ram-mib", "8", "--reconnect-delay-ms", "200"]);
    let mut first = target();
    // A small region, written all over before the restart: reads after it find the units empty.
    let child = bench(&listen, &["--workload", "randrw", "--verify", "--size", "262144", "--qd", "4", "--time", "5"]);
    common::wait_for_a_controller(first.port);
    std::thread::sleep(Duration::from_millis(1000));
    first.kill();
    let _second = target();
    let (code, out, err) = finish(child, Duration::from_secs(40));
    assert_eq!(code, Some(1), "{out}{err}");
    let line = out.lines().find(|l| l.starts_with("errors ")).unwrap_or_else(|| panic!("{out}"));
    let mismatches: u64 = line
        .split("verify mismatches ")
        .nth(1)
        .and_then(|s| s.split(|c: char| !c.is_ascii_digit()).next()?.parse().ok())
        .unwrap();
    assert!(mismatches > 0, "{out}");
    assert!(line.contains("the target restarted (new instance ID) at "), "{out}");
    assert!(line.contains("a namespace that does not persist starts empty"), "{out}");
}
