//! # holdfast-rt: runtime helpers shared by the holdfast target and host
//!
//! [`BusyPoll`] is adaptive busy polling for a tokio runtime. A task that finds nothing to do parks its
//! thread in `epoll_wait`; the next packet then has to wake that thread, and waking an idle CPU costs tens of
//! microseconds (on the 2-vCPU VMs we measure on, a cross-core loopback round trip is ~95 µs when both sides
//! sleep and ~7 µs when they do not). Polled stacks such as SPDK never sleep. `BusyPoll` spins only while
//! there is I/O: every socket read or write calls [`BusyPoll::touch`], and a spinner task keeps the runtime
//! polling its I/O driver without a timeout (by yielding) until `window` has passed with no activity; then it
//! parks like any other task, and an idle target or host costs no CPU.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Adaptive busy polling: spin while I/O was seen within `window`, park otherwise.
#[derive(Debug)]
pub struct BusyPoll {
    window_ns: u64,
    epoch: Instant,
    last_ns: AtomicU64,
    parked: AtomicBool,
    wake: Notify,
}

impl BusyPoll {
    /// A poller that keeps spinning for `window` after the last activity; `None` for a zero window (never
    /// spin: every wait parks the thread).
    pub fn new(window: Duration) -> Option<Arc<BusyPoll>> {
        if window.is_zero() {
            return None;
        }
        Some(Arc::new(BusyPoll {
            window_ns: window.as_nanos().min(u64::MAX as u128) as u64,
            epoch: Instant::now(),
            last_ns: AtomicU64::new(0),
            parked: AtomicBool::new(true),
            wake: Notify::new(),
        }))
    }

    /// Start the spinner task on the current runtime. It ends when the last other reference is dropped.
    pub fn spawn(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            loop {
                let Some(p) = weak.upgrade() else { return };
                if p.active() {
                    drop(p);
                    // Give the CPU to any other runnable thread first (returns at once on an otherwise idle
                    // core): a spinner sharing a core with its peer must not hold it for a whole time slice.
                    std::thread::yield_now();
                    // Yielding makes the scheduler poll the I/O driver with a zero timeout before it runs
                    // this task again: the thread never sleeps while I/O is flowing.
                    tokio::task::yield_now().await;
                    continue;
                }
                p.parked.store(true, Ordering::SeqCst);
                // Activity between the check above and `parked`: go round again rather than miss it.
                if p.active() {
                    p.parked.store(false, Ordering::SeqCst);
                    continue;
                }
                // Wake up now and then so that a dropped poller ends its task.
                let _ = tokio::time::timeout(Duration::from_secs(1), p.wake.notified()).await;
            }
        });
    }

    /// Note I/O activity: keep spinning for another window.
    #[inline]
    pub fn touch(&self) {
        // +1: zero means "never".
        self.last_ns.store(self.epoch.elapsed().as_nanos() as u64 + 1, Ordering::Relaxed);
        if self.parked.load(Ordering::Relaxed) && self.parked.swap(false, Ordering::SeqCst) {
            self.wake.notify_one();
        }
    }

    fn active(&self) -> bool {
        let last = self.last_ns.load(Ordering::Relaxed);
        last != 0 && (self.epoch.elapsed().as_nanos() as u64 + 1).saturating_sub(last) < self.window_ns
    }
}

/// Touch `p` if there is one.
#[inline]
pub fn touch(p: &Option<Arc<BusyPoll>>) {
    if let Some(p) = p {
        p.touch();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn zero_window_is_off() {
        assert!(BusyPoll::new(Duration::ZERO).is_none());
    }

    #[tokio::test]
    async fn spins_within_the_window_and_parks_after_it() {
        let p = BusyPoll::new(Duration::from_millis(50)).unwrap();
        p.spawn();
        assert!(!p.active());
        p.touch();
        assert!(p.active());
        assert!(!p.parked.load(Ordering::SeqCst));
        tokio::time::sleep(Duration::from_millis(120)).await;
        assert!(!p.active());
        assert!(p.parked.load(Ordering::SeqCst), "the spinner parks once the window has passed");
        p.touch();
        assert!(!p.parked.load(Ordering::SeqCst));
    }
}
