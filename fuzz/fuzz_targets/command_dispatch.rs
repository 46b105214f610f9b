//! Fuzz the target's command dispatcher: arbitrary SQEs and data, parsed and executed on a queue bound to an
//! enabled controller of an in-process target with a RAM namespace. It must never panic.
#![no_main]
use bytes::Bytes;
use holdfast_proto::fabrics::{cc, ConnectCommand, ConnectData};
use holdfast_proto::SubmissionEntry;
use holdfast_target::cmd;
use holdfast_target::config::Config;
use holdfast_target::request::{Exec, Outcome, QueueCtx};
use holdfast_target::{Target, TargetSettings};
use libfuzzer_sys::fuzz_target;
use std::sync::{Arc, OnceLock};

struct World {
    rt: tokio::runtime::Runtime,
    target: Arc<Target>,
}

fn world() -> &'static World {
    static W: OnceLock<World> = OnceLock::new();
    W.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
        let cfg = Config::parse(
            "[[port]]\nid = 1\nlisten = \"127.0.0.1:4420\"\n[[subsystem]]\nnqn = \"nqn.2026-01.io.holdfast:fuzz\"\n\
             allow_any_host = true\n[[subsystem.namespace]]\nnsid = 1\nbackend = \"ram\"\nsize_mib = 1\n",
            "fuzz",
        )
        .unwrap();
        let target = Target::new(&cfg, TargetSettings::default()).unwrap();
        World { rt, target }
    })
}

fuzz_target!(|data: &[u8]| {
    if data.len() < 64 {
        return;
    }
    let w = world();
    w.rt.block_on(async {
        let mut ctx = QueueCtx {
            target: w.target.clone(),
            port: w.target.ports.read()[0].clone(),
            local_addr: "127.0.0.1:4420".parse().unwrap(),
            peer_addr: "127.0.0.1:5000".parse().unwrap(),
            qid: 0,
            size: 0,
            ctrl: None,
            sq_flow_disabled: false,
            max_incapsule: 8192,
            close_after_response: false,
            gate: holdfast_target::backend::AssociationGate::new(true),
        };
        // Connect and enable an admin queue, then (by the first byte) stay on it or become I/O queue 1.
        let c = ConnectCommand::new(1, 0, 31, 0);
        let d = ConnectData::new([1; 16], 0xFFFF, "nqn.2026-01.io.holdfast:fuzz", "nqn.2014-08.org.nvmexpress:uuid:fuzz");
        let req = cmd::parse(&ctx, &c.to_sqe()).unwrap();
        let _ = cmd::fabrics::connect(&mut ctx, &req, zerocopy::IntoBytes::as_bytes(&d)).await;
        let Some(ctrl) = ctx.ctrl.clone() else { return };
        let _ = ctrl.write_cc(cc::ENABLE_DEFAULT);
        ctrl.state.lock().io_queues_granted = 1;
        if data[0] & 1 == 1 {
            ctx.qid = 1;
        }
        let Some(sqe) = SubmissionEntry::from_slice(&data[..64]) else { return };
        let payload = Bytes::copy_from_slice(&data[64..]);
        if let Ok(req) = cmd::parse(&ctx, &sqe) {
            if matches!(req.exec, Exec::Connect) {
                let _ = cmd::fabrics::connect(&mut ctx, &req, &payload).await;
            } else if let Outcome::Later(f) = cmd::execute(&mut ctx, req, payload) {
                let _ = f.await;
            }
        }
        ctrl.teardown("fuzz iteration done");
    });
});
