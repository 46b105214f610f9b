//! Fuzz the target's command dispatcher: arbitrary SQEs and data, parsed and executed the way the TCP transport
//! does it (`holdfast_target::transport::tcp`), on the admin queue or an I/O queue of an enabled controller of
//! an in-process target with a RAM namespace, or on a discovery controller. It must never panic.
//!
//! Input: byte 0 selects the queue (bit 0: I/O queue 1; bit 1: the discovery subsystem; bit 2: leave CC.EN
//! at 0), then up to 8 commands, each `[len: u16 LE][SQE: 64 bytes][len bytes of in-capsule data]`.
//!
//! The harness keeps the transport's invariants and nothing more: in-capsule data is at most the queue's
//! in-capsule limit, a command with no data gets none, `check_sgl` must accept the SGL for the in-capsule
//! length, and a write without in-capsule data gets exactly `req.len` bytes (what R2T + H2CData collect).
#![no_main]
use bytes::Bytes;
use holdfast_proto::fabrics::{cc, ConnectCommand, ConnectData, DISCOVERY_NQN};
use holdfast_proto::SubmissionEntry;
use holdfast_target::cmd;
use holdfast_target::config::Config;
use holdfast_target::request::{DataDir, Exec, Outcome, QueueCtx};
use holdfast_target::{Target, TargetSettings};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

const NQN: &str = "nqn.2026-01.io.holdfast:fuzz";
const HOSTNQN: &str = "nqn.2014-08.org.nvmexpress:uuid:00000000-0000-0000-0000-00000000f022";
/// The transport's in-capsule limits (transport::tcp::ADMIN_INCAPSULE / IO_INCAPSULE).
const ADMIN_INCAPSULE: usize = 8192;
const IO_INCAPSULE: usize = 16384;

struct World {
    rt: tokio::runtime::Runtime,
    target: Arc<Target>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let cfg = Config::parse(
            &format!(
                "[[port]]\nid = 1\nlisten = \"127.0.0.1:4420\"\n[[subsystem]]\nnqn = \"{NQN}\"\n\
                 allow_any_host = true\n[[subsystem.namespace]]\nnsid = 1\nbackend = \"ram\"\nsize_mib = 1\n"
            ),
            "fuzz",
        )
        .unwrap();
        let target = Target::new(&cfg, TargetSettings::default()).unwrap();
        World { rt, target }
    })
}

fn queue_ctx(target: &Arc<Target>, max_incapsule: usize) -> QueueCtx {
    let port = target.ports.read()[0].clone();
    let (local, peer) = ("127.0.0.1:4420".parse().unwrap(), "127.0.0.1:5000".parse().unwrap());
    QueueCtx::new(target.clone(), port, local, peer, max_incapsule)
}

/// Connect `ctx` as queue `qid` (to controller `cntlid` for an I/O queue).
async fn connect(ctx: &mut QueueCtx, subnqn: &str, qid: u16, cntlid: u16) {
    let c = ConnectCommand::new(1, qid, 31, 0);
    let d = ConnectData::new([0xF2; 16], cntlid, subnqn, HOSTNQN);
    let req = cmd::parse(ctx, &c.to_sqe()).expect("Connect parses");
    let _ = cmd::fabrics::connect(ctx, &req, zerocopy::IntoBytes::as_bytes(&d)).await;
}

/// One command, as `transport::tcp::handle_capsule` + `exec` run it.
async fn run(ctx: &mut QueueCtx, sqe: &SubmissionEntry, incapsule: &[u8]) {
    let incapsule = &incapsule[..incapsule.len().min(ctx.max_incapsule)];
    let Ok(req) = cmd::parse(ctx, sqe) else { return };
    if req.len == 0 && !incapsule.is_empty() {
        return; // SGL Length Invalid
    }
    if req.len > 0 && cmd::check_sgl(sqe, req.len, req.dir, incapsule.len()).is_err() {
        return;
    }
    let data = if req.dir == DataDir::ToController && req.len > 0 && incapsule.is_empty() {
        // R2T + H2CData: the transport collects exactly req.len bytes.
        Bytes::from((0..req.len).map(|i| (i * 7) as u8).collect::<Vec<u8>>())
    } else {
        Bytes::copy_from_slice(incapsule)
    };
    if matches!(req.exec, Exec::Connect) {
        let _ = cmd::fabrics::connect(ctx, &req, &data).await;
        return;
    }
    if let Outcome::Later(work) = cmd::execute(ctx, req, data) {
        let (tx, rx) = std::sync::mpsc::channel();
        work.run(move |r| {
            let _ = tx.send(r);
        });
        let _ = rx.recv();
    }
}

fuzz_target!(|input: &[u8]| {
    let Some((&mode, mut rest)) = input.split_first() else { return };
    let w = world();
    w.rt.block_on(async {
        let discovery = mode & 2 != 0;
        let subnqn = if discovery { DISCOVERY_NQN } else { NQN };
        let mut admin = queue_ctx(&w.target, ADMIN_INCAPSULE);
        connect(&mut admin, subnqn, 0, 0xFFFF).await;
        let Some(ctrl) = admin.ctrl.clone() else { panic!("admin Connect failed") };
        if mode & 4 == 0 {
            let _ = ctrl.write_cc(cc::ENABLE_DEFAULT);
        }
        let mut io = None;
        if mode & 1 != 0 && !discovery && mode & 4 == 0 {
            ctrl.state.lock().io_queues_granted = 1; // as Set Features Number of Queues would
            let mut q = queue_ctx(&w.target, IO_INCAPSULE);
            connect(&mut q, subnqn, 1, ctrl.cntlid).await;
            assert!(q.ctrl.is_some(), "I/O queue Connect failed");
            io = Some(q);
        }
        for _ in 0..8 {
            if rest.len() < 66 {
                break;
            }
            let len = u16::from_le_bytes([rest[0], rest[1]]) as usize;
            let sqe = SubmissionEntry::from_slice(&rest[2..66]).unwrap();
            rest = &rest[66..];
            let n = len.min(rest.len());
            let (data, tail) = rest.split_at(n);
            rest = tail;
            let ctx = io.as_mut().unwrap_or(&mut admin);
            if let (Some(c), true) = (&ctx.ctrl, ctx.qid != 0) {
                // The hint the transport gives for a batch just received (of two: one alone is not
                // prefetched), whatever the SQE says.
                cmd::io::prefetch(c, std::iter::repeat_n(&sqe, 2));
            }
            run(ctx, &sqe, data).await;
        }
        if let Some(q) = &io {
            if let Some(c) = &q.ctrl {
                c.teardown("fuzz iteration done");
            }
        }
        ctrl.teardown("fuzz iteration done");
        // Let the runtime run what this iteration spawned (the controller's keep-alive watchdog, cancelled by the
        // teardown): `block_on` returns at the first poll that completes, and a task never polled stays queued
        // for good, holding its controller (4-6 KB more per run, and libFuzzer's leak checks given up).
        tokio::task::yield_now().await;
    });
});
