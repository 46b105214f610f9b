//! # holdfast-rt: runtime helpers shared by the holdfast target and host
//!
//! [`BusyPoll`] is adaptive busy polling for a tokio runtime. A task that finds nothing to do parks its
//! thread in `epoll_wait`; the next packet then has to wake that thread, and waking an idle CPU costs tens of
//! microseconds (on the 2-vCPU VMs we measure on, a cross-core loopback round trip is ~95 µs when both sides
//! sleep and ~7 µs when they do not). Polled stacks such as SPDK never sleep. `BusyPoll` spins only while
//! there is I/O: every socket read or write calls [`BusyPoll::touch`], and a spinner task keeps the runtime
//! polling its I/O driver without a timeout (by yielding) until `window` has passed with no activity; then it
//! parks like any other task, and an idle target or host costs no CPU.
//!
//! [`write_some`] sends a connection's [`SendQueue`] with one vectored write; [`reserve_for_read`] makes room
//! for the next socket read.

use holdfast_proto::SendQueue;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};
use tokio::sync::Notify;

/// Adaptive busy polling: spin while I/O was seen within `window`, park otherwise.
#[derive(Debug)]
pub struct BusyPoll {
    window: Duration,
    /// Set by [`BusyPoll::touch`], cleared by the spinner: no clock read on the I/O path.
    activity: AtomicBool,
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
            window,
            activity: AtomicBool::new(false),
            parked: AtomicBool::new(true),
            wake: Notify::new(),
        }))
    }

    /// Start the spinner task on the current runtime. It ends when the last other reference is dropped.
    pub fn spawn(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            // When the spinner last saw no activity, if it has seen none since (the clock is read only on
            // quiet rounds, never while I/O flows).
            let mut quiet_since: Option<Instant> = None;
            loop {
                let Some(p) = weak.upgrade() else { return };
                if p.activity.swap(false, Ordering::Relaxed) {
                    quiet_since = None;
                } else {
                    let now = Instant::now();
                    let since = *quiet_since.get_or_insert(now);
                    if now.duration_since(since) >= p.window {
                        p.parked.store(true, Ordering::SeqCst);
                        // Activity between the check above and `parked`: go round again rather than miss it.
                        if p.activity.swap(false, Ordering::SeqCst) {
                            p.parked.store(false, Ordering::SeqCst);
                            quiet_since = None;
                            continue;
                        }
                        // Wake up now and then so that a dropped poller ends its task.
                        let _ = tokio::time::timeout(Duration::from_secs(1), p.wake.notified()).await;
                        quiet_since = None;
                        continue;
                    }
                }
                drop(p);
                // Give the CPU to any other runnable thread first (returns at once on an otherwise idle
                // core): a spinner sharing a core with its peer must not hold it for a whole time slice.
                std::thread::yield_now();
                // Yielding makes the scheduler poll the I/O driver with a zero timeout before it runs this
                // task again: the thread never sleeps while I/O is flowing.
                tokio::task::yield_now().await;
            }
        });
    }

    /// Note I/O activity: keep spinning for another window.
    #[inline]
    pub fn touch(&self) {
        self.activity.store(true, Ordering::Relaxed);
        if self.parked.load(Ordering::Relaxed) && self.parked.swap(false, Ordering::SeqCst) {
            self.activity.store(true, Ordering::SeqCst);
            self.wake.notify_one();
        }
    }

    /// True while the spinner is parked (no activity for a window).
    pub fn is_parked(&self) -> bool {
        self.parked.load(Ordering::SeqCst)
    }
}

/// Write as much of `q` as the socket takes, in one vectored write; the caller advances `q` by the result.
pub async fn write_some<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, q: &SendQueue) -> std::io::Result<usize> {
    use tokio::io::AsyncWriteExt;
    let mut slices = [std::io::IoSlice::new(&[]); 64];
    let n = q.io_slices(&mut slices);
    w.write_vectored(&slices[..n]).await
}

/// Make room in a receive buffer before a socket read: at least `min_free` bytes, growing by at least
/// 64 KiB (BytesMut would otherwise grow by 64 bytes when full, one tiny read at a time). The space is
/// reused once the PDUs split off the buffer have been dropped.
pub fn reserve_for_read(buf: &mut bytes::BytesMut, min_free: usize) {
    if buf.capacity() - buf.len() < min_free {
        buf.reserve((2 * min_free).max(64 * 1024));
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
        tokio::task::yield_now().await;
        assert!(p.is_parked(), "no activity yet");
        p.touch();
        assert!(!p.is_parked());
        // Keep touching for a while: it stays awake.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            p.touch();
            assert!(!p.is_parked());
        }
        tokio::time::sleep(Duration::from_millis(150)).await;
        assert!(p.is_parked(), "the spinner parks once the window has passed");
        p.touch();
        assert!(!p.is_parked());
    }
}
