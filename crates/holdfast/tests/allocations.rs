//! Issue 5 asks for an I/O path without per-I/O allocation. This counts the host's heap allocations per
//! 4 KiB read and write (it fails at 0.75 or more), once the queues have settled, against a holdfast target in
//! this process. The target runs on threads of its own and the host on this test's thread (a current-thread
//! runtime), and the count is per thread, so only the host's allocations are counted.
//!
//! What the host may still allocate is its receive buffer: read data is handed to callers as slices of it,
//! so a new buffer is taken when the old one is still shared (about one per several reads). A per-command
//! allocation (a reply channel, a boxed future) would make it at least one per I/O.

use bytes::Bytes;
use holdfast_host::{ConnectOptions, Controller, Namespace};
use holdfast_target::config::Config;
use holdfast_target::{Server, Target, TargetSettings};
use std::alloc::{GlobalAlloc, Layout, System};
use std::cell::Cell;

struct Counting;

thread_local! {
    static ALLOCATIONS: Cell<u64> = const { Cell::new(0) };
}

// SAFETY: every call is passed straight to the system allocator with the same arguments; counting touches
// only a const-initialised thread-local Cell, which needs no allocation and has no destructor.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: the caller's contract for `alloc` is passed on unchanged.
        unsafe { System.alloc(layout) }
    }
    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: as for `alloc`.
        unsafe { System.dealloc(ptr, layout) }
    }
    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        let _ = ALLOCATIONS.try_with(|c| c.set(c.get() + 1));
        // SAFETY: as for `alloc`.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn allocations() -> u64 {
    ALLOCATIONS.with(|c| c.get())
}

const NQN: &str = "nqn.2026-01.io.holdfast:allocations";
const QD: usize = 16;
const IOS_PER_WORKER: u64 = 500;

/// Allocations on this thread per I/O for `QD` workers doing `IOS_PER_WORKER` I/Os each.
async fn per_io(ns: &Namespace, write: bool) -> f64 {
    let block = Bytes::from(vec![0x5a; 4096]);
    let run = |n: u64| {
        let workers: Vec<_> = (0..QD as u64)
            .map(|w| {
                let (ns, block) = (ns.clone(), block.clone());
                tokio::spawn(async move {
                    for i in 0..n {
                        let lba = (w * 997 + i * 61) % 256;
                        if write {
                            ns.write(lba, block.clone(), false).await.unwrap();
                        } else {
                            assert_eq!(ns.read(lba, 1).await.unwrap().len(), 4096);
                        }
                    }
                })
            })
            .collect();
        async move {
            for w in workers {
                w.await.unwrap();
            }
        }
    };
    // Warm up: pools filled, buffers at their working size.
    run(IOS_PER_WORKER).await;
    // The spawns themselves allocate: count two runs and take the difference per extra I/O.
    let a = allocations();
    run(IOS_PER_WORKER).await;
    let b = allocations();
    run(3 * IOS_PER_WORKER).await;
    let c = allocations();
    // In floating point: a one-off allocation in the shorter run must not underflow the difference.
    ((c - b) as f64 - (b - a) as f64) / (2 * IOS_PER_WORKER * QD as u64) as f64
}

#[test]
fn host_io_path_does_not_allocate_per_command() {
    // The target, on a runtime and threads of its own.
    let (addr_tx, addr_rx) = std::sync::mpsc::channel();
    let (stop_tx, stop_rx) = tokio::sync::oneshot::channel::<()>();
    let target = std::thread::spawn(move || {
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_all().build().unwrap();
        rt.block_on(async move {
            let cfg = Config::parse(
                &format!(
                    "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"{NQN}\"\n\
                     allow_any_host = true\n[[subsystem.namespace]]\nnsid = 1\nbackend = \"ram\"\nsize_mib = 1\nblock_size = 4096\n"
                ),
                "test",
            )
            .unwrap();
            let server = Server::start(Target::new(&cfg, TargetSettings::default()).unwrap()).await.unwrap();
            addr_tx.send(server.bound[0].1).unwrap();
            let _ = stop_rx.await;
        });
    });
    let addr = addr_rx.recv().unwrap();

    let rt = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    let (reads, writes) = rt.block_on(async {
        let mut o = ConnectOptions::new(addr.to_string(), NQN);
        o.nr_io_queues = 1;
        o.queue_size = (QD + 1) as u16;
        let ctrl = Controller::connect(o).await.unwrap();
        let ns = Namespace::open(&ctrl, 1).await.unwrap();
        let r = per_io(&ns, false).await;
        let w = per_io(&ns, true).await;
        ctrl.shutdown().await.unwrap();
        (r, w)
    });
    let _ = stop_tx.send(());
    target.join().unwrap();
    println!("host allocations per I/O: 4 KiB reads {reads:.3}, 4 KiB writes {writes:.3}");
    // An allocation per command adds at least one per I/O; the receive buffer's share depends on how the
    // reads arrive (0.135 here, on a two-core VM), and could not reach one per read unless every read came
    // alone into a buffer still shared. So the bound sits between the two.
    assert!(reads < 0.75, "{reads:.3} allocations per 4 KiB read on the host");
    assert!(writes < 0.75, "{writes:.3} allocations per 4 KiB write on the host");
}
