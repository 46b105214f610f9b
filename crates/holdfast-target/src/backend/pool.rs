//! The threads a blocking backend (a file) runs its calls on, so that a queue's network task never waits for
//! the page cache, the filesystem journal or the disk.
//!
//! Why not tokio's blocking pool: it wakes a thread for every call and answers through a task of its own; a
//! 4 KiB write cost two thread switches and a task hand-off, which on one core was most of its time (89 K
//! context switches a second for 63 K writes). Here:
//! - a thread that finishes a call takes the next queued one without sleeping, and a call wakes a thread
//!   only if no other is already on its way and fewer of the pool's threads run calls than this process has
//!   CPUs (each namespace has its own pool): a burst of calls costs one wake-up, not one each, and threads
//!   are not woken only to wait for a CPU;
//! - calls that block (a page-cache miss on a disk, a sync) must not hold up the queue behind them, so while
//!   calls are queued one idle thread watches: if none is taken for [`STALL`], the running threads are
//!   taken to be blocked and the watcher runs a call itself (and the next idle thread watches). Parallelism
//!   so grows to what the disk needs, one thread per [`STALL`], up to `max`;
//! - threads are started when first needed (under the pool's lock: a submit that starts one waits for it)
//!   and end after a minute idle: an idle namespace holds none; if none can be started at all, the
//!   submitter runs the call itself;
//! - a call that panics is caught on its thread ([`crate::request::Deferred`] answers it with an internal
//!   error);
//! - the answer goes straight from the thread to whoever submitted the call (the transport's completion
//!   channel), with no task in between.

use parking_lot::{Condvar, Mutex};
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;

/// One call: runs on a pool thread.
pub type Job = Box<dyn FnOnce() + Send>;

/// How long a thread waits for work before it ends.
const IDLE_EXIT: Duration = Duration::from_secs(60);
/// Queued calls and none taken for this long: the running threads are blocked, another one starts.
pub const STALL: Duration = Duration::from_micros(200);

/// A pool of threads for blocking backend calls. Dropping it lets its threads end once the queue is empty.
pub struct IoPool {
    inner: Arc<Inner>,
}

struct Inner {
    name: String,
    /// Most threads.
    max: usize,
    /// Threads that may run calls at once without a stall: the CPUs this process may use.
    cpus: usize,
    state: Mutex<State>,
    work: Condvar,
}

#[derive(Default)]
struct State {
    jobs: VecDeque<Job>,
    /// Calls taken off the queue so far (the watcher's measure of progress).
    taken: u64,
    /// Threads alive.
    threads: usize,
    /// Threads running a call.
    running: usize,
    /// Threads waiting for work (the watcher included).
    idle: usize,
    /// A thread has been woken (or started) and has not yet looked at the queue: no need to wake another.
    waking: bool,
    /// The stall watcher.
    watch: Watch,
    /// The pool was dropped: threads end once the queue is empty.
    closed: bool,
}

/// Whether a thread watches the queue for a stall.
#[derive(Default, PartialEq, Eq, Clone, Copy)]
enum Watch {
    #[default]
    None,
    /// A thread has been woken (or started) to watch.
    Wanted,
    /// A thread watches.
    Active,
}

impl IoPool {
    /// A pool of at most `max` threads (at least 1), named `name` in thread listings.
    pub fn new(name: &str, max: usize) -> IoPool {
        let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
        IoPool {
            inner: Arc::new(Inner {
                name: name.to_string(),
                max: max.max(1),
                cpus,
                state: Mutex::new(State::default()),
                work: Condvar::new(),
            }),
        }
    }

    /// Queue `job` to run on one of the pool's threads.
    pub fn submit(&self, job: Job) {
        let mut st = self.inner.state.lock();
        st.jobs.push_back(job);
        self.inner.more_work(&mut st);
        if st.threads == 0 {
            // No thread could be started (the process is at its thread limit): run the calls here rather
            // than leave them queued with nothing to take them. It blocks the caller, but nothing hangs.
            let jobs = std::mem::take(&mut st.jobs);
            drop(st);
            jobs.into_iter().for_each(run_job);
        }
    }

    /// Threads alive now (tests, diagnostics).
    pub fn threads(&self) -> usize {
        self.inner.state.lock().threads
    }
}

impl Drop for IoPool {
    fn drop(&mut self) {
        self.inner.state.lock().closed = true;
        self.inner.work.notify_all();
    }
}

impl Inner {
    /// Calls are queued: see that a thread takes them now if a CPU is free, or else that one watches for a
    /// stall.
    fn more_work(self: &Arc<Self>, st: &mut State) {
        if st.waking {
            return;
        }
        if st.running < self.cpus {
            self.wake_one(st);
        } else if st.watch == Watch::None {
            st.watch = Watch::Wanted;
            self.wake_one(st);
        }
    }

    /// Wake an idle thread, or start one.
    fn wake_one(self: &Arc<Self>, st: &mut State) {
        if st.idle > 0 {
            st.waking = true;
            self.work.notify_one();
            return;
        }
        if st.threads < self.max {
            let inner = self.clone();
            match std::thread::Builder::new().name(self.name.clone()).spawn(move || inner.worker()) {
                Ok(_) => {
                    st.threads += 1;
                    st.waking = true;
                    return;
                }
                Err(e) => tracing::warn!("{}: cannot start an I/O thread: {e}", self.name),
            }
        }
        // No thread to wake or start: the running ones will get to the queue (with none alive, `submit` runs
        // the calls itself).
        if st.watch == Watch::Wanted {
            st.watch = Watch::None;
        }
    }

    /// Become the watcher if one is wanted.
    fn claim_watch(st: &mut State) -> bool {
        let claim = st.watch == Watch::Wanted;
        if claim {
            st.watch = Watch::Active;
        }
        claim
    }

    fn worker(self: Arc<Inner>) {
        batch_policy();
        let mut st = self.state.lock();
        st.waking = false;
        let mut watcher = Inner::claim_watch(&mut st);
        loop {
            if watcher {
                if !st.jobs.is_empty() && st.running >= self.cpus {
                    let seen = st.taken;
                    st.idle += 1;
                    self.work.wait_for(&mut st, STALL);
                    st.idle -= 1;
                    st.waking = false;
                    if st.taken != seen && !st.jobs.is_empty() && st.running >= self.cpus {
                        continue; // the running threads make progress: keep watching
                    }
                }
                // A stall (take a call), a free CPU (take a call) or nothing queued (sleep).
                watcher = false;
                st.watch = Watch::None;
            }
            if let Some(job) = st.jobs.pop_front() {
                st.taken += 1;
                st.running += 1;
                if !st.jobs.is_empty() {
                    self.more_work(&mut st);
                }
                drop(st);
                run_job(job);
                st = self.state.lock();
                st.running -= 1;
                continue;
            }
            if st.closed {
                break;
            }
            st.idle += 1;
            let timed_out = self.work.wait_for(&mut st, IDLE_EXIT).timed_out();
            st.idle -= 1;
            st.waking = false;
            watcher = Inner::claim_watch(&mut st);
            if timed_out && st.jobs.is_empty() && !watcher {
                break;
            }
        }
        st.threads -= 1;
    }
}

/// Run one call; a call that panics is logged and does not take its thread (or the pool's counts) with it.
fn run_job(job: Job) {
    if std::panic::catch_unwind(std::panic::AssertUnwindSafe(job)).is_err() {
        tracing::error!("an I/O call panicked");
    }
}

/// Run this thread under SCHED_BATCH: woken, it does not preempt the thread that woke it (the queue's
/// network task, which usually has more calls to queue) but runs when that one yields or waits, and then
/// takes every call queued meanwhile. Best effort: on failure the thread keeps the normal policy.
fn batch_policy() {
    let param = libc::sched_param { sched_priority: 0 };
    // SAFETY: sched_setscheduler on the calling thread (pid 0) with a valid, initialised parameter block.
    let r = unsafe { libc::sched_setscheduler(0, libc::SCHED_BATCH, &param) };
    if r != 0 {
        tracing::debug!("SCHED_BATCH for I/O threads: {}", std::io::Error::last_os_error());
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::mpsc;

    #[test]
    fn runs_every_job_and_answers() {
        let pool = IoPool::new("test-io", 4);
        let (tx, rx) = mpsc::channel();
        for i in 0..1000 {
            let tx = tx.clone();
            pool.submit(Box::new(move || tx.send(i).unwrap()));
        }
        let mut got: Vec<i32> = (0..1000).map(|_| rx.recv_timeout(Duration::from_secs(10)).unwrap()).collect();
        got.sort();
        assert_eq!(got, (0..1000).collect::<Vec<_>>());
        assert!(pool.threads() <= 4);
    }

    #[test]
    fn blocked_jobs_spread_over_more_threads() {
        // Four jobs that each wait for all four to be running at once: they finish only if the pool runs
        // them in parallel (a thread that takes one while others are queued wakes another).
        let pool = IoPool::new("test-io", 4);
        let barrier = Arc::new(std::sync::Barrier::new(4));
        let done = Arc::new(AtomicUsize::new(0));
        let (tx, rx) = mpsc::channel();
        for _ in 0..4 {
            let (b, d, tx) = (barrier.clone(), done.clone(), tx.clone());
            pool.submit(Box::new(move || {
                b.wait();
                d.fetch_add(1, Ordering::SeqCst);
                tx.send(()).unwrap();
            }));
        }
        for _ in 0..4 {
            rx.recv_timeout(Duration::from_secs(10)).expect("jobs ran one at a time");
        }
        assert_eq!(done.load(Ordering::SeqCst), 4);
        assert_eq!(pool.threads(), 4);
    }

    #[test]
    fn a_panicking_call_does_not_break_the_pool() {
        let pool = IoPool::new("test-io", 1);
        pool.submit(Box::new(|| panic!("backend bug")));
        let (tx, rx) = mpsc::channel();
        for i in 0..10 {
            let tx = tx.clone();
            pool.submit(Box::new(move || tx.send(i).unwrap()));
        }
        for _ in 0..10 {
            rx.recv_timeout(Duration::from_secs(10)).expect("calls after a panic still run");
        }
        assert_eq!(pool.threads(), 1);
    }

    #[test]
    fn threads_end_when_the_pool_is_dropped() {
        let pool = IoPool::new("test-io", 2);
        let inner = pool.inner.clone();
        let (tx, rx) = mpsc::channel();
        pool.submit(Box::new(move || tx.send(()).unwrap()));
        rx.recv_timeout(Duration::from_secs(10)).unwrap();
        drop(pool);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while inner.state.lock().threads > 0 {
            assert!(std::time::Instant::now() < deadline, "pool threads still running after drop");
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// Stress: one or two "CPUs", one to four threads, four submitters, jobs that sometimes block: every job
    /// runs (no wake-up is lost).
    #[test]
    fn every_job_runs_under_many_submitters() {
        for round in 0..60u64 {
            let pool = IoPool {
                inner: Arc::new(Inner {
                    name: "rv".into(),
                    max: 1 + (round % 4) as usize,
                    cpus: 1 + (round % 2) as usize,
                    state: Mutex::new(State::default()),
                    work: Condvar::new(),
                }),
            };
            let pool = Arc::new(pool);
            let (tx, rx) = mpsc::channel();
            let mut hs = Vec::new();
            for t in 0..4u64 {
                let (pool, tx) = (pool.clone(), tx.clone());
                hs.push(std::thread::spawn(move || {
                    for i in 0..200u64 {
                        let tx = tx.clone();
                        let slow = (i * 7 + t + round) % 37 == 0;
                        pool.submit(Box::new(move || {
                            if slow {
                                std::thread::sleep(Duration::from_micros(500));
                            }
                            tx.send(()).unwrap();
                        }));
                        if i % 50 == 0 {
                            std::thread::sleep(Duration::from_micros(300));
                        }
                    }
                }));
            }
            for h in hs {
                h.join().unwrap();
            }
            for n in 0..800 {
                rx.recv_timeout(Duration::from_secs(10)).unwrap_or_else(|_| panic!("round {round}: job {n} never ran"));
            }
        }
    }
}
