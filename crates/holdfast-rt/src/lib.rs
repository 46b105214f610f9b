//! # holdfast-rt: runtime helpers shared by the holdfast target and host
//!
//! [`BusyPoll`] is adaptive busy polling for a tokio runtime. A task that finds nothing to do parks its
//! thread in `epoll_wait`; the next packet then has to wake that thread, and waking an idle CPU costs tens of
//! microseconds (on the 2-vCPU VMs we measure on, a cross-core loopback round trip is ~95 µs when both sides
//! sleep and ~7 µs when they do not). Polled stacks such as SPDK never sleep. `BusyPoll` spins only while
//! there is I/O: every socket read or write calls [`BusyPoll::touch`], and a spinner task keeps the runtime
//! polling its I/O driver without a timeout (by yielding) until `window` has passed with no activity; then it
//! parks like any other task, and an idle target or host costs no CPU. A peer slower than the window (every
//! gap longer than it) would cost a window of spinning per I/O for nothing: after a run of such misses the
//! spinner parks as soon as things are quiet, until a gap the window would have caught shows up
//! (`SpinScore`).
//!
//! A connection that has the poller to itself (it alone did the last [`SOLO_AFTER`] socket reads and writes
//! noted with [`BusyPoll::touch_from`]) may go further and poll its own socket with [`spin_read`] while it
//! waits for the peer's next PDU: one `recv` and one `sched_yield` per round instead of the runtime's
//! `epoll_wait`, `sched_yield` and task wake-up. The spin is bounded ([`SPIN_BUDGET`]) and the connection
//! yields to the runtime every [`SPINS_PER_YIELD`] reads it made that way, so another task on the thread
//! waits at most that long; as soon as a second connection does I/O on the poller, neither spins on its
//! socket, and the runtime polls them all as before.
//!
//! [`write_some`] sends a connection's [`SendQueue`] with one vectored write; [`reserve_for_read`] makes room
//! for the next socket read. [`CancelWatch`] lets a connection loop wait on a cancellation token at the cost of
//! an atomic load per round.

use holdfast_proto::SendQueue;
use std::future::Future;
use std::io::IoSlice;
use std::os::fd::AsRawFd;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::{Duration, Instant};
use tokio::sync::{oneshot, Notify};
use tokio_util::sync::CancellationToken;

/// Adaptive busy polling: spin while I/O was seen within `window`, park otherwise.
#[derive(Debug)]
pub struct BusyPoll {
    window: Duration,
    /// Set by [`BusyPoll::touch`], cleared by the spinner: no clock read on the I/O path.
    activity: AtomicBool,
    parked: AtomicBool,
    wake: Notify,
    /// The connection that noted I/O last ([`BusyPoll::touch_from`]) and how many times in a row, in one
    /// word (`conn << 8 | run`) so that one connection's count is never read with another's number.
    solo: AtomicU64,
}

/// Consecutive I/O notes from one connection, with none from another, after which it has the poller to
/// itself ([`BusyPoll::solo`]).
pub const SOLO_AFTER: u32 = 64;

/// How long a connection that has the poller to itself polls its socket ([`spin_read`]) before it waits
/// through the runtime: longer than a loopback or LAN round trip, short enough that a timer or another
/// task on the thread is not held up noticeably. Never longer than the poller's window ([`spin_budget`]).
pub const SPIN_BUDGET: Duration = Duration::from_micros(50);

/// A connection that waits with [`spin_read`] yields to the runtime after this many PDU batches read that
/// way, so that other tasks on its thread (and other connections, whose I/O ends the solo run) get in.
pub const SPINS_PER_YIELD: u32 = 8;

/// A process-unique connection number for [`BusyPoll::touch_from`] (below 2^56).
pub fn connection_id() -> u64 {
    static NEXT: AtomicU64 = AtomicU64::new(1);
    NEXT.fetch_add(1, Ordering::Relaxed)
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
            solo: AtomicU64::new(0),
        }))
    }

    /// Start the spinner task on the current runtime. It ends when the last other reference is dropped.
    pub fn spawn(self: &Arc<Self>) {
        let weak = Arc::downgrade(self);
        tokio::spawn(async move {
            // When the spinner last saw no activity, if it has seen none since (the clock is read only on
            // quiet rounds, never while I/O flows).
            let mut quiet_since: Option<Instant> = None;
            let mut score = SpinScore::new();
            loop {
                let Some(p) = weak.upgrade() else { return };
                let active = p.activity.swap(false, Ordering::Relaxed);
                if active {
                    if quiet_since.take().is_some() {
                        score.caught();
                    }
                } else {
                    let now = Instant::now();
                    let since = *quiet_since.get_or_insert(now);
                    let window = if score.spinning() { p.window } else { Duration::ZERO };
                    if now.duration_since(since) >= window {
                        p.parked.store(true, Ordering::SeqCst);
                        // Activity between the check above and `parked`: go round again rather than miss it.
                        if p.activity.swap(false, Ordering::SeqCst) {
                            p.parked.store(false, Ordering::SeqCst);
                            quiet_since = None;
                            continue;
                        }
                        // Wake up now and then so that a dropped poller ends its task.
                        let woken = tokio::time::timeout(Duration::from_secs(1), p.wake.notified()).await.is_ok();
                        if woken {
                            score.woken(since.elapsed(), p.window);
                        }
                        quiet_since = None;
                        continue;
                    }
                }
                drop(p);
                // On a round that found no I/O since the last, give the CPU to any other runnable thread first
                // (returns at once on an otherwise idle core): a spinner sharing a core with its peer must not
                // hold it for a whole time slice while it waits for it. A round that found I/O is work, not
                // waiting: no system call (a `sched_yield` on every round cost 11 % of `holdfast bench` at
                // 4 KiB QD32, with I/O on every round).
                if !active {
                    std::thread::yield_now();
                }
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

    /// Note I/O by connection `conn` ([`connection_id`]): [`BusyPoll::touch`], and count towards
    /// [`BusyPoll::solo`].
    #[inline]
    pub fn touch_from(&self, conn: u64) {
        self.touch();
        let old = self.solo.load(Ordering::Relaxed);
        let new = if old >> 8 == conn { old + u64::from((old & 0xFF) < u64::from(SOLO_AFTER)) } else { conn << 8 | 1 };
        if new != old {
            self.solo.store(new, Ordering::Relaxed);
        }
    }

    /// True if connection `conn` did the last [`SOLO_AFTER`] noted socket reads and writes on this poller,
    /// and it is spinning: `conn` may poll its socket directly ([`spin_read`]) while it waits.
    #[inline]
    pub fn solo(&self, conn: u64) -> bool {
        self.solo.load(Ordering::Relaxed) == (conn << 8 | u64::from(SOLO_AFTER)) && !self.parked.load(Ordering::Relaxed)
    }

    /// True while the spinner is parked (no activity for a window).
    pub fn is_parked(&self) -> bool {
        self.parked.load(Ordering::SeqCst)
    }
}

/// Whether spinning pays: a score of the recent quiet stretches, each either caught by the spin (activity came
/// within the window) or not (the spinner spun a whole window, parked, and was woken later). A peer whose
/// gaps are all longer than the window (a slow or emulated host at QD1, a host with think time between I/Os)
/// would have the spinner burn a window per I/O for nothing, and take the CPU from whatever else runs there;
/// after [`SpinScore::MAX`] such misses more than catches it stops spinning (parks as soon as the connections
/// are quiet, as with polling off) until a gap shorter than the window shows that spinning would catch the
/// peer again.
#[derive(Debug, Clone, Copy)]
struct SpinScore(u8);

impl SpinScore {
    const MAX: u8 = 8;

    fn new() -> SpinScore {
        SpinScore(Self::MAX)
    }

    /// Spin for the window (else park at the first quiet round).
    fn spinning(self) -> bool {
        self.0 > 0
    }

    /// A quiet stretch ended by activity while spinning.
    fn caught(&mut self) {
        self.0 = (self.0 + 1).min(Self::MAX);
    }

    /// Woken from parking by activity, `gap` after the quiet stretch began.
    fn woken(&mut self, gap: Duration, window: Duration) {
        if gap < window {
            // Parked without spinning, and a spin would have caught it.
            self.caught();
        } else if self.spinning() {
            // Spun a whole window for nothing.
            self.0 -= 1;
        }
    }
}

/// A [`CancellationToken`] that a connection loop can wait on in its `select!` every round for next to nothing.
///
/// `token.cancelled()` in a loop's `select!` is a new future each round: polling it reads the token's flag under
/// the token's mutex (tokio-util 0.7) and registers a waiter on its `Notify` under another lock, and dropping
/// it unregisters under that lock again: 3 % of `holdfast bench` and of the target at 64 controllers x 4
/// queues (perf), where a queue wakes for a handful of I/Os each time. A `CancelWatch` leaves that wait to
/// a helper task, once, which sets a flag and wakes the watch's task; polling the watch is an atomic load and a
/// comparison with the waker it registered last (registered again only when the task's waker changed).
///
/// The watch completes when the token is cancelled (or the runtime that runs the helper shuts down, dropping
/// the helper), and stays complete: it may be polled again. Dropping the watch ends the helper.
#[derive(Debug)]
pub struct CancelWatch(WatchState);

#[derive(Debug)]
enum WatchState {
    /// The helper's flag, the sender whose drop tells the helper to stop, and the waker last registered
    /// with the flag (a task polls with the same waker round after round: registered once, not every poll).
    Waiting {
        flag: Arc<WatchFlag>,
        _stop: oneshot::Sender<()>,
        registered: Option<std::task::Waker>,
    },
    Never,
    Done,
}

#[derive(Debug, Default)]
struct WatchFlag {
    fired: AtomicBool,
    waker: futures_util::task::AtomicWaker,
}

/// Held by the helper: fires the watch when the helper ends, whether it saw the cancellation, was told to
/// stop, or was dropped with its runtime.
struct FireOnDrop(Arc<WatchFlag>);

impl Drop for FireOnDrop {
    fn drop(&mut self) {
        self.0.fired.store(true, Ordering::Release);
        self.0.waker.wake();
    }
}

impl CancelWatch {
    /// Watch `token`. Spawns the helper task on the current tokio runtime.
    pub fn new(token: &CancellationToken) -> CancelWatch {
        if token.is_cancelled() {
            return CancelWatch(WatchState::Done);
        }
        let flag = Arc::new(WatchFlag::default());
        let (stop, stopped) = oneshot::channel::<()>();
        let (token, fire) = (token.clone(), FireOnDrop(flag.clone()));
        tokio::spawn(async move {
            let _fire = fire;
            tokio::select! {
                _ = token.cancelled() => {}
                _ = stopped => {}
            }
        });
        CancelWatch(WatchState::Waiting { flag, _stop: stop, registered: None })
    }

    /// A watch that never completes (no token to watch yet).
    pub fn never() -> CancelWatch {
        CancelWatch(WatchState::Never)
    }

    /// True if the watch has completed or would complete if polled now: for a loop that goes round without
    /// polling it (an atomic load).
    pub fn fired(&self) -> bool {
        match &self.0 {
            WatchState::Waiting { flag, .. } => flag.fired.load(Ordering::Acquire),
            WatchState::Never => false,
            WatchState::Done => true,
        }
    }
}

impl Future for CancelWatch {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        match &mut self.0 {
            WatchState::Waiting { flag, registered, .. } => {
                if !flag.fired.load(Ordering::Acquire) {
                    if registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
                        return Poll::Pending;
                    }
                    flag.waker.register(cx.waker());
                    *registered = Some(cx.waker().clone());
                    // Fired between the load and the registration: its wake may have gone to an older waker.
                    if !flag.fired.load(Ordering::Acquire) {
                        return Poll::Pending;
                    }
                }
                self.0 = WatchState::Done;
                Poll::Ready(())
            }
            WatchState::Never => Poll::Pending,
            WatchState::Done => Poll::Ready(()),
        }
    }
}

/// A deadline that a connection loop can wait on in its `select!` every round for next to nothing, as
/// [`CancelWatch`] is for a token.
///
/// Polling a tokio `Sleep` (or an `Interval`'s tick) registers the task's waker with its timer entry again on
/// every poll: a clone of the waker and a drop of the one it held (two atomic operations on the task), and the
/// entry's own lines, which at a few hundred connections are out of the core's caches. A queue's loop goes round
/// its `select!` a few times per batch of I/O, and its timer is for timeouts of a quarter of a second. The entry
/// keeps the waker it was given until it fires, so a `TimerWatch` polls it only when it is not registered with
/// the polling task's waker yet, or when it has fired (an atomic load on the entry); otherwise it is pending.
#[derive(Debug)]
pub struct TimerWatch {
    sleep: Pin<Box<tokio::time::Sleep>>,
    /// The waker the entry holds, given at the last poll that left it pending.
    registered: Option<std::task::Waker>,
}

impl TimerWatch {
    /// A watch that completes at `deadline`. Needs a runtime with its time driver.
    pub fn new(deadline: Instant) -> TimerWatch {
        TimerWatch { sleep: Box::pin(tokio::time::sleep_until(deadline.into())), registered: None }
    }

    /// Complete at `deadline` instead (also after it has completed).
    pub fn reset(&mut self, deadline: Instant) {
        self.sleep.as_mut().reset(deadline.into());
        // A reset entry holds no waker once it has fired: registered again at the next poll.
        self.registered = None;
    }

    /// `Ready` once the deadline has passed (again at every poll until a [`TimerWatch::reset`]); else the task
    /// is woken when it does.
    pub fn poll_expired(&mut self, cx: &mut Context<'_>) -> Poll<()> {
        if self.registered.as_ref().is_some_and(|w| w.will_wake(cx.waker())) && !self.sleep.is_elapsed() {
            return Poll::Pending;
        }
        match self.sleep.as_mut().poll(cx) {
            Poll::Ready(()) => {
                self.registered = None;
                Poll::Ready(())
            }
            Poll::Pending => {
                self.registered = Some(cx.waker().clone());
                Poll::Pending
            }
        }
    }
}

/// Write as much of `q` as the socket takes, in one vectored write; the caller advances `q` by the result.
pub async fn write_some<W: tokio::io::AsyncWrite + Unpin>(w: &mut W, q: &SendQueue) -> std::io::Result<usize> {
    use tokio::io::AsyncWriteExt;
    if q.slice_count() <= FEW_SLICES {
        let mut slices = [IoSlice::new(&[]); FEW_SLICES];
        let n = q.io_slices(&mut slices);
        w.write_vectored(&slices[..n]).await
    } else {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let n = q.io_slices(&mut slices);
        w.write_vectored(&slices[..n]).await
    }
}

/// Slices in one vectored write at most (the rest goes in the next).
const MAX_SLICES: usize = 64;

/// A queue of at most this many slices (one command's header and data, a completion or two) is written from
/// an array this size: every slice of the array is initialised before it is filled, and 64 of them were
/// about 200 instructions per write, 10 % of the target's work per I/O at 4 KiB QD1 (`bench/icount.sh`).
const FEW_SLICES: usize = 4;

/// Write as much of `q` as the socket takes now, in one vectored write, without waiting, and advance `q` past
/// it (noting the I/O for connection `conn` on the poller `p`, as [`touch`]). If the socket has no room,
/// nothing happens: its writability is left to the caller's next [`write_some`]. A connection loop calls this
/// as soon as it has queued PDUs, instead of going round its `select!` once more only to find the socket
/// writable: at 4 KiB QD1 the host's loop went round five times per I/O, and this is one of them.
pub fn try_write_some(
    w: &tokio::net::tcp::OwnedWriteHalf,
    q: &mut SendQueue,
    p: &Option<Arc<BusyPoll>>,
    conn: u64,
) -> std::io::Result<()> {
    if q.is_empty() {
        return Ok(());
    }
    let written = if q.slice_count() <= FEW_SLICES {
        let mut slices = [IoSlice::new(&[]); FEW_SLICES];
        let n = q.io_slices(&mut slices);
        w.try_write_vectored(&slices[..n])
    } else {
        let mut slices = [IoSlice::new(&[]); MAX_SLICES];
        let n = q.io_slices(&mut slices);
        w.try_write_vectored(&slices[..n])
    };
    match written {
        Ok(n) => {
            q.advance(n);
            touch(p, conn);
            Ok(())
        }
        Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => Ok(()),
        Err(e) => Err(e),
    }
}

/// Let the other tasks ready on this thread run once, then go on: the task wakes itself and returns
/// `Pending` once, which on a current-thread runtime puts it at the back of the run queue, behind the tasks
/// woken before it. Unlike `tokio::task::yield_now` it does not make the runtime poll its I/O driver first
/// (an `epoll_wait` per call: 1.0 per I/O at 4 KiB QD1, where a host queue yields before spinning on its
/// socket; 0.06 with this. `bench/ab.sh`, host side, 4-6 alternated pairs: QD1 randread IOPS x1.06-1.19,
/// randwrite x1.04, QD32 unchanged).
/// A multi-thread runtime would run a self-woken task next, ahead of the tasks it yields to: there it is
/// `yield_now`. `current_thread` says which runtime the caller is on (read once, by the caller).
pub async fn yield_to_tasks(current_thread: bool) {
    if !current_thread {
        return tokio::task::yield_now().await;
    }
    let mut yielded = false;
    std::future::poll_fn(|cx| {
        if yielded {
            return Poll::Ready(());
        }
        yielded = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    })
    .await
}

/// Run `f`, a computation long enough to hold up other tasks (milliseconds: a DH-HMAC-CHAP FFDHE
/// exponentiation), where the runtime allows without holding them up: on a multi-thread runtime through
/// `block_in_place` (the worker's other tasks move to another worker meanwhile); elsewhere (a current-thread
/// runtime, or no runtime) on the spot.
pub fn compute<T>(f: impl FnOnce() -> T) -> T {
    let multi = tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::MultiThread);
    if multi {
        tokio::task::block_in_place(f)
    } else {
        f()
    }
}

/// Whether the caller runs on a current-thread runtime (for [`yield_to_tasks`]).
pub fn on_current_thread_runtime() -> bool {
    tokio::runtime::Handle::try_current()
        .is_ok_and(|h| h.runtime_flavor() == tokio::runtime::RuntimeFlavor::CurrentThread)
}

/// Make room in a receive buffer before a socket read: at least `min_free` bytes, growing by at least
/// 64 KiB (BytesMut would otherwise grow by 64 bytes when full, one tiny read at a time). The space is
/// reused once the PDUs split off the buffer have been dropped.
///
/// A PDU in progress whose rest fits in the free space is left where it is: the decoder reserved its room
/// when its header came in, and growing the buffer now would copy all of it that has arrived (perf: 5-7 % of
/// `holdfast bench` at 128 KiB reads, copying parts of C2HData PDUs on nearly every read).
pub fn reserve_for_read(buf: &mut bytes::BytesMut, min_free: usize) {
    let free = buf.capacity() - buf.len();
    if holdfast_proto::decoder::pdu_rest(buf).is_some_and(|rest| rest > 0 && rest <= free) {
        return;
    }
    if free < min_free {
        buf.reserve((2 * min_free).max(64 * 1024));
    }
}

/// Once everything read into `buf` has been consumed and nothing else holds it, make the next read go to its
/// front again (no copy, no allocation) instead of further along it: a connection that reads a few PDUs at a
/// time then keeps reusing the first KiB of its buffer (in cache), not all of it in turn.
pub fn restart_if_empty(buf: &mut bytes::BytesMut) {
    if buf.is_empty() {
        // Asking for more than the capacity it has is what makes try_reclaim move the start back to the front of
        // the allocation (it does nothing when the room asked for is already there). It fails, allocating
        // nothing, when the start is already there or while a PDU split off the buffer still holds it.
        let _ = buf.try_reclaim(buf.capacity() + 1);
    }
}

/// Milliseconds on the system's coarse monotonic clock (`CLOCK_MONOTONIC_COARSE`: the last timer tick, a few
/// milliseconds stale at most; read from the vDSO without the time-stamp counter). For clocks that run per
/// command but only need to be right to a few milliseconds, such as a keep-alive timer: a precise
/// `Instant::now` per command was 2 % of the target's CPU at 4 KiB random reads.
pub fn coarse_ms() -> u64 {
    let mut ts = libc::timespec { tv_sec: 0, tv_nsec: 0 };
    // SAFETY: `ts` is a valid, writable timespec for the duration of the call; clock_gettime writes only it.
    let r = unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC_COARSE, &mut ts) };
    if r != 0 {
        // Not on this kernel (before 2.6.32): the precise clock, same epoch.
        // SAFETY: as above.
        unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    }
    ts.tv_sec as u64 * 1000 + ts.tv_nsec as u64 / 1_000_000
}

/// Raise this process's soft limit on open files to its hard limit (a target holds a descriptor per
/// connection, and the usual soft limit of 1024 is reached by a few hosts with many queues, or by a peer opening
/// connections in a loop). Returns (before, after), or None if the limit could not be read or set.
pub fn raise_open_files_limit() -> Option<(u64, u64)> {
    let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
    // SAFETY: `rl` is a valid, writable rlimit for the duration of the call; getrlimit writes only it.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) } != 0 {
        return None;
    }
    let before = rl.rlim_cur;
    if rl.rlim_cur < rl.rlim_max {
        rl.rlim_cur = rl.rlim_max;
        // SAFETY: `rl` is a valid rlimit; setrlimit only reads it.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &rl) } != 0 {
            return None;
        }
    }
    Some((before, rl.rlim_cur))
}

/// CPU time this process has used so far, (user, system), from `getrusage(RUSAGE_SELF)` (microsecond
/// resolution; all threads). The bench reports its CPU cost per I/O from two readings: on a shared machine whose
/// throughput swings from run to run, the CPU one side spends per I/O moves much less.
pub fn process_cpu() -> (Duration, Duration) {
    // SAFETY: an all-zero rusage is a valid value of this plain C struct.
    let mut ru: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: `ru` is a valid, writable rusage for the duration of the call; getrusage writes only it.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut ru) } != 0 {
        return (Duration::ZERO, Duration::ZERO);
    }
    let tv = |t: libc::timeval| Duration::from_secs(t.tv_sec as u64) + Duration::from_micros(t.tv_usec as u64);
    (tv(ru.ru_utime), tv(ru.ru_stime))
}

/// Note I/O by connection `conn` on `p`, if there is one ([`BusyPoll::touch_from`]).
#[inline]
pub fn touch(p: &Option<Arc<BusyPoll>>, conn: u64) {
    if let Some(p) = p {
        p.touch_from(conn);
    }
}

/// How long [`spin_read`] may spin for a connection on `p`: [`SPIN_BUDGET`], or the poller's window if that is
/// shorter (`--busy-poll-us 20` means no spin longer than 20 µs); zero without a poller.
#[inline]
pub fn spin_budget(p: &Option<Arc<BusyPoll>>) -> Duration {
    p.as_ref().map_or(Duration::ZERO, |p| p.window.min(SPIN_BUDGET))
}

/// True if busy polling is on and connection `conn` has the poller to itself ([`BusyPoll::solo`]).
#[inline]
pub fn solo(p: &Option<Arc<BusyPoll>>, conn: u64) -> bool {
    p.as_ref().is_some_and(|p| p.solo(conn))
}

/// Read from `sock` without waiting, round after round, for at most `budget`: `Ok(Some(n))` as a socket
/// read returns it (bytes appended to `buf`; 0: the peer closed), `Ok(None)` if nothing came in time.
/// For a connection that has the poller to itself ([`solo`]); the runtime's view of the socket stays
/// right (its next read finds nothing and waits for the next readiness edge).
pub fn spin_read(
    sock: &impl AsRawFd,
    buf: &mut bytes::BytesMut,
    min_free: usize,
    max: usize,
    budget: Duration,
) -> std::io::Result<Option<usize>> {
    reserve_for_read(buf, min_free);
    let fd = sock.as_raw_fd();
    let start = Instant::now();
    loop {
        let spare = buf.spare_capacity_mut();
        let n = max.min(spare.len());
        let spare = &mut spare[..n];
        // SAFETY: recv writes at most `spare.len()` bytes into `spare`, memory owned by `buf` and valid for
        // writes; `fd` is borrowed from `sock`, open for the whole call.
        let n = unsafe { libc::recv(fd, spare.as_mut_ptr().cast(), spare.len(), libc::MSG_DONTWAIT) };
        if n >= 0 {
            // SAFETY: recv initialised the first `n` bytes of the spare capacity.
            unsafe { buf.set_len(buf.len() + n as usize) };
            return Ok(Some(n as usize));
        }
        let e = std::io::Error::last_os_error();
        if !matches!(e.kind(), std::io::ErrorKind::WouldBlock | std::io::ErrorKind::Interrupted) {
            return Err(e);
        }
        // Every round: a sched_yield to a busy core's other thread can take a whole time slice.
        if start.elapsed() >= budget {
            return Ok(None);
        }
        // A peer process sharing this core gets it now (returns at once on a core of our own).
        std::thread::yield_now();
    }
}

/// Bind a Unix socket at `path`, replacing only a socket file that nothing answers on (left by a process that
/// died). A socket a live process answers on is left alone (`AddrInUse`), and so is anything that is not a socket
/// (`AlreadyExists`: a file named by mistake is never deleted). The caller removes the file when it is done.
pub fn bind_unix_socket(path: &std::path::Path) -> std::io::Result<tokio::net::UnixListener> {
    use std::io::{Error, ErrorKind};
    use std::os::unix::fs::FileTypeExt;
    if let Ok(m) = std::fs::symlink_metadata(path) {
        if !m.file_type().is_socket() {
            let what = format!("{} exists and is not a socket: left alone", path.display());
            return Err(Error::new(ErrorKind::AlreadyExists, what));
        }
        if std::os::unix::net::UnixStream::connect(path).is_ok() {
            return Err(Error::new(ErrorKind::AddrInUse, format!("{} is in use by another process", path.display())));
        }
        std::fs::remove_file(path)?;
    }
    tokio::net::UnixListener::bind(path)
}

/// TCP keep-alive as every holdfast server sets it on the connections it accepts: probes after
/// [`TCP_KEEPALIVE_IDLE`] without traffic, every [`TCP_KEEPALIVE_INTERVAL`], and [`TCP_KEEPALIVE_PROBES`]
/// unanswered ones end the connection. A peer that vanished without closing (power lost, cable pulled) is
/// found within about two minutes even when nothing else would notice (an NVMe/TCP host that asked for no
/// Keep Alive Timer, an idle NBD client); a live idle peer answers the probes in its kernel, unseen.
pub fn set_tcp_keepalive(s: &tokio::net::TcpStream) -> std::io::Result<()> {
    socket2::SockRef::from(s).set_tcp_keepalive(
        &socket2::TcpKeepalive::new()
            .with_time(TCP_KEEPALIVE_IDLE)
            .with_interval(TCP_KEEPALIVE_INTERVAL)
            .with_retries(TCP_KEEPALIVE_PROBES),
    )
}
/// See [`set_tcp_keepalive`].
pub const TCP_KEEPALIVE_IDLE: std::time::Duration = std::time::Duration::from_secs(60);
/// See [`set_tcp_keepalive`].
pub const TCP_KEEPALIVE_INTERVAL: std::time::Duration = std::time::Duration::from_secs(10);
/// See [`set_tcp_keepalive`].
pub const TCP_KEEPALIVE_PROBES: u32 = 6;

/// At most a number of log lines a second (lines a peer can cause at will), the rest counted: the count is
/// handed to the first line let through in a later second, for it to report. Lock-free; one per kind of line,
/// usually a `static`.
pub struct RateLimit {
    per_second: u64,
    second: std::sync::atomic::AtomicU64,
    count: std::sync::atomic::AtomicU64,
    dropped: std::sync::atomic::AtomicU64,
}

impl RateLimit {
    /// A limit of `per_second` lines a second.
    pub const fn new(per_second: u64) -> RateLimit {
        use std::sync::atomic::AtomicU64;
        RateLimit { per_second, second: AtomicU64::new(0), count: AtomicU64::new(0), dropped: AtomicU64::new(0) }
    }

    /// May one more line be logged now? Some(lines left out before it, to report), or None.
    pub fn allow(&self) -> Option<u64> {
        self.allow_at(coarse_ms() / 1000)
    }

    /// [`RateLimit::allow`] in second `second` of a clock of the caller's (tests).
    pub fn allow_at(&self, second: u64) -> Option<u64> {
        use std::sync::atomic::Ordering;
        let w = self.second.load(Ordering::Relaxed);
        let mut dropped = 0;
        if second != w && self.second.compare_exchange(w, second, Ordering::AcqRel, Ordering::Relaxed).is_ok() {
            self.count.store(0, Ordering::Relaxed);
            dropped = self.dropped.swap(0, Ordering::Relaxed);
        }
        if self.count.fetch_add(1, Ordering::Relaxed) < self.per_second {
            Some(dropped)
        } else {
            self.dropped.fetch_add(1 + dropped, Ordering::Relaxed);
            None
        }
    }

    /// The lines left out in a second before `second` and not yet reported, taken for the caller to report (0
    /// if none, or if the second lines were left out in is still `second`: more may follow). For a timer, so
    /// that a flood's count is reported once it ends rather than with the next line let through, which may
    /// come hours later.
    pub fn take_stale_at(&self, second: u64) -> u64 {
        use std::sync::atomic::Ordering;
        if self.second.load(Ordering::Acquire) == second || self.dropped.load(Ordering::Relaxed) == 0 {
            return 0;
        }
        self.dropped.swap(0, Ordering::Relaxed)
    }

    /// Lines left out and not yet reported.
    pub fn dropped(&self) -> u64 {
        self.dropped.load(std::sync::atomic::Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_open_files_limit_is_raised_to_the_hard_limit() {
        let (before, after) = raise_open_files_limit().expect("getrlimit/setrlimit");
        assert!(after >= before);
        let mut rl = libc::rlimit { rlim_cur: 0, rlim_max: 0 };
        // SAFETY: as in raise_open_files_limit.
        assert_eq!(unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut rl) }, 0);
        assert_eq!((rl.rlim_cur, rl.rlim_cur), (rl.rlim_max, after), "soft limit at the hard limit");
    }

    /// On a multi-thread runtime of one worker, another task goes on while a task computes (its worker is handed
    /// over); on a current-thread runtime the computation runs on the spot (nothing else could run, and
    /// `block_in_place` would panic there).
    #[test]
    fn compute_lets_other_tasks_run_on_a_multi_thread_runtime() {
        use std::sync::atomic::AtomicU32;
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).enable_time().build().unwrap();
        rt.block_on(async {
            let ticks = Arc::new(AtomicU32::new(0));
            let t = ticks.clone();
            let ticker = tokio::spawn(async move {
                loop {
                    tokio::time::sleep(std::time::Duration::from_millis(5)).await;
                    t.fetch_add(1, Ordering::Relaxed);
                }
            });
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
            let during = tokio::spawn({
                let ticks = ticks.clone();
                async move {
                    let before = ticks.load(Ordering::Relaxed);
                    compute(|| std::thread::sleep(std::time::Duration::from_millis(300)));
                    ticks.load(Ordering::Relaxed) - before
                }
            })
            .await
            .unwrap();
            ticker.abort();
            assert!(during >= 5, "the other task ticked {during} times during a 300 ms computation");
        });
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        assert_eq!(rt.block_on(async { compute(|| 7) }), 7);
        assert_eq!(compute(|| 8), 8);
    }

    #[test]
    fn yield_to_tasks_lets_the_tasks_woken_before_it_run_first() {
        use std::sync::Mutex;
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            assert!(on_current_thread_runtime());
            let order = Arc::new(Mutex::new(Vec::new()));
            let o = order.clone();
            // A task that, while it runs, makes another ready (as a queue completing a command makes its
            // caller ready), then yields: the other one must run before it goes on.
            tokio::spawn(async move {
                let o2 = o.clone();
                let other = tokio::spawn(async move { o2.lock().unwrap().push("other") });
                yield_to_tasks(true).await;
                o.lock().unwrap().push("after the yield");
                other.await.unwrap();
            })
            .await
            .unwrap();
            assert_eq!(*order.lock().unwrap(), ["other", "after the yield"]);
        });
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(1).build().unwrap();
        rt.block_on(async {
            assert!(!on_current_thread_runtime());
            yield_to_tasks(false).await;
        });
    }

    #[test]
    fn an_emptied_buffer_restarts_at_its_front_unless_still_held() {
        use bytes::BytesMut;
        let mut b = BytesMut::with_capacity(64 * 1024);
        let front = b.as_ptr();
        // Two PDUs read and consumed in place (advanced past), as completions without data are.
        b.extend_from_slice(&[1; 24 * 2]);
        bytes::Buf::advance(&mut b, 24 * 2);
        restart_if_empty(&mut b);
        assert_eq!(b.as_ptr(), front, "read into the front again");
        assert_eq!(b.capacity(), 64 * 1024, "the whole buffer is free");
        // Data split off and still held (a read's data not yet delivered): not read over.
        b.extend_from_slice(&[2; 4096]);
        let held = b.split_to(4096).freeze();
        restart_if_empty(&mut b);
        assert_ne!(b.as_ptr(), front, "read over data still held");
        b.extend_from_slice(&[3; 64]);
        assert!(held.iter().all(|&x| x == 2));
        // Not empty (a PDU in progress): left where it is.
        drop(held);
        let at = b.as_ptr();
        restart_if_empty(&mut b);
        assert_eq!(b.as_ptr(), at);
    }

    /// Only a socket file nothing answers on is replaced: a live socket and a file that is not a socket are left
    /// alone, the file's contents intact.
    #[tokio::test]
    async fn bind_unix_socket_replaces_only_a_dead_socket() {
        use std::io::ErrorKind;
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("notes.txt");
        std::fs::write(&file, "keep me").unwrap();
        assert_eq!(bind_unix_socket(&file).unwrap_err().kind(), ErrorKind::AlreadyExists);
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "keep me");
        let sock = dir.path().join("s.sock");
        let live = bind_unix_socket(&sock).unwrap();
        assert_eq!(bind_unix_socket(&sock).unwrap_err().kind(), ErrorKind::AddrInUse);
        drop(live); // the file stays, nothing answers on it
        assert!(sock.exists());
        let _again = bind_unix_socket(&sock).expect("a dead socket file is replaced");
    }

    #[test]
    fn spin_read_takes_at_most_max() {
        let (a, b) = std::os::unix::net::UnixStream::pair().unwrap();
        b.set_nonblocking(true).unwrap();
        std::io::Write::write_all(&mut &a, &[7; 1000]).unwrap();
        let mut buf = bytes::BytesMut::new();
        assert_eq!(spin_read(&b, &mut buf, 4096, 300, Duration::from_millis(100)).unwrap(), Some(300));
        assert_eq!(spin_read(&b, &mut buf, 4096, usize::MAX, Duration::from_millis(100)).unwrap(), Some(700));
        assert_eq!(&buf[..], &[7; 1000][..]);
    }

    #[test]
    fn a_pdu_in_progress_is_not_moved_to_make_room() {
        use bytes::BytesMut;
        // 100 bytes in of a 600-byte PDU (common header: type, flags, HLEN, PDO, PLEN).
        let partial = |cap: usize| {
            let mut b = BytesMut::with_capacity(cap);
            b.extend_from_slice(&[0x07, 0, 24, 24]);
            b.extend_from_slice(&600u32.to_le_bytes());
            b.resize(100, 0);
            b
        };
        let mut b = partial(1000);
        let at = b.as_ptr();
        reserve_for_read(&mut b, 64 * 1024);
        assert_eq!(b.as_ptr(), at, "its rest (500 bytes) fits in the free space: left where it is");
        let mut d = partial(200);
        reserve_for_read(&mut d, 1024);
        assert!(d.capacity() - d.len() >= 1024, "its rest does not fit: room made");
        let mut c = BytesMut::with_capacity(16);
        c.extend_from_slice(&[7, 0, 24]);
        reserve_for_read(&mut c, 64 * 1024);
        assert!(c.capacity() - c.len() >= 64 * 1024, "no PLEN yet: room made as asked");
    }

    #[tokio::test]
    async fn cancel_watch_completes_on_cancel_and_stays_complete() {
        use std::future::Future as _;
        let noop = std::task::Waker::noop();
        let mut cx = Context::from_waker(noop);
        let token = CancellationToken::new();
        let mut w = CancelWatch::new(&token);
        let never_polled = CancelWatch::new(&token);
        for _ in 0..3 {
            tokio::task::yield_now().await;
            assert!(Pin::new(&mut w).poll(&mut cx).is_pending(), "not cancelled yet");
            assert!(!w.fired());
        }
        token.cancel();
        // Seen without polling once the helper has run.
        assert!(!never_polled.fired(), "the helper has not run since the cancel");
        let mut seen = false;
        for _ in 0..100 {
            tokio::task::yield_now().await;
            if never_polled.fired() {
                seen = true;
                break;
            }
        }
        assert!(seen, "fired() sees the cancel without a poll");
        tokio::time::timeout(Duration::from_secs(5), &mut w).await.expect("the watch completes once cancelled");
        assert!(Pin::new(&mut w).poll(&mut cx).is_ready(), "and stays complete");
        assert!(w.fired());
        assert!(!CancelWatch::never().fired());
        // A child token's watch completes with its parent; one made after the cancel is complete at once.
        let parent = CancellationToken::new();
        let child = CancelWatch::new(&parent.child_token());
        parent.cancel();
        tokio::time::timeout(Duration::from_secs(5), child).await.expect("the child's watch completes");
        let mut late = CancelWatch::new(&token);
        assert!(Pin::new(&mut late).poll(&mut cx).is_ready());
        let mut never = CancelWatch::never();
        tokio::task::yield_now().await;
        assert!(Pin::new(&mut never).poll(&mut cx).is_pending());
    }

    #[tokio::test]
    async fn a_timer_watch_completes_at_its_deadline_and_again_after_a_reset() {
        use std::future::poll_fn;
        let limit = Duration::from_secs(10);
        let t0 = Instant::now();
        let mut w = TimerWatch::new(t0 + Duration::from_millis(30));
        let mut cx = Context::from_waker(std::task::Waker::noop());
        assert!(w.poll_expired(&mut cx).is_pending());
        assert!(w.poll_expired(&mut cx).is_pending(), "registered: pending without polling the timer");
        // Waited on with the task's own waker (the poll with it registers it in place of the no-op one).
        tokio::time::timeout(limit, poll_fn(|cx| w.poll_expired(cx))).await.expect("completes");
        assert!(t0.elapsed() >= Duration::from_millis(30));
        assert!(w.poll_expired(&mut cx).is_ready(), "stays complete until reset");
        // Reset after it completed: pending again, and complete at the new deadline.
        let t1 = Instant::now();
        w.reset(t1 + Duration::from_millis(20));
        assert!(w.poll_expired(&mut cx).is_pending());
        tokio::time::timeout(limit, poll_fn(|cx| w.poll_expired(cx))).await.expect("completes");
        assert!(t1.elapsed() >= Duration::from_millis(20));
        // Reset while registered with the task's waker, to a later deadline then to an earlier one: it goes by the
        // last.
        w.reset(Instant::now() + Duration::from_secs(3600));
        let short = tokio::time::timeout(Duration::from_millis(20), poll_fn(|cx| w.poll_expired(cx))).await;
        assert!(short.is_err(), "pending until its new deadline");
        let t2 = Instant::now();
        w.reset(t2 + Duration::from_millis(20));
        tokio::time::timeout(limit, poll_fn(|cx| w.poll_expired(cx))).await.expect("completes at the earlier deadline");
        assert!(t2.elapsed() >= Duration::from_millis(20));
    }

    #[tokio::test]
    async fn a_dropped_cancel_watch_ends_its_helper() {
        let metrics = tokio::runtime::Handle::current().metrics();
        let before = metrics.num_alive_tasks();
        let token = CancellationToken::new();
        let w = CancelWatch::new(&token);
        tokio::task::yield_now().await;
        assert_eq!(metrics.num_alive_tasks(), before + 1, "one helper while the watch lives");
        drop(w);
        let deadline = Instant::now() + Duration::from_secs(5);
        while metrics.num_alive_tasks() > before {
            assert!(Instant::now() < deadline, "the helper outlived its watch");
            tokio::task::yield_now().await;
        }
    }

    #[test]
    fn spinning_stops_when_every_gap_outlasts_the_window_and_resumes_on_a_short_one() {
        let w = Duration::from_micros(200);
        let mut s = SpinScore::new();
        // Mixed: a catch for every miss keeps it spinning.
        for _ in 0..100 {
            s.woken(Duration::from_micros(450), w);
            s.caught();
            assert!(s.spinning());
        }
        // Only misses: off after MAX of them, and stays off.
        for i in 0..SpinScore::MAX {
            assert!(s.spinning(), "still spinning after {i} misses");
            s.woken(Duration::from_micros(450), w);
        }
        assert!(!s.spinning());
        s.woken(Duration::from_millis(5), w);
        assert!(!s.spinning(), "a long gap while parked changes nothing");
        // A gap the window would have caught turns it back on.
        s.woken(Duration::from_micros(30), w);
        assert!(s.spinning());
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_poller_whose_peer_is_slower_than_the_window_parks_at_once() {
        // Bounds are wide (a 40 ms window, checks at 10 ms) so that a loaded machine does not fail the test.
        let p = BusyPoll::new(Duration::from_millis(40)).unwrap();
        p.spawn();
        let stays_unparked_for = |ms: u64| {
            let p = p.clone();
            async move {
                // The spinner gets a round (the yield) before every look, and after the deadline too, so that a
                // thread descheduled for a while still sees what the spinner does next.
                let t = Instant::now();
                loop {
                    tokio::task::yield_now().await;
                    if p.is_parked() {
                        return false;
                    }
                    if t.elapsed() >= Duration::from_millis(ms) {
                        return true;
                    }
                }
            }
        };
        p.touch();
        assert!(stays_unparked_for(10).await, "spins for the window after activity");
        // Activity every 100 ms, well past the window: the spinner spins 40 ms, parks, is woken 60 ms later.
        // After SpinScore::MAX + 2 such gaps it parks at the first quiet round after activity. A stall of the
        // whole thread (a loaded machine) can turn a gap into a catch: the test's touch after the stall comes
        // before the spinner's next look at the clock. So the gaps go on until it parks at once, up to four times
        // as many; a spinner that never stops spinning for the window still fails.
        let mut gaps = 0;
        loop {
            p.touch();
            if gaps >= SpinScore::MAX + 2 && !stays_unparked_for(10).await {
                break;
            }
            assert!(gaps < 4 * (SpinScore::MAX + 2), "still spinning after {gaps} gaps that each outlasted the window");
            tokio::time::sleep(Duration::from_millis(100)).await;
            gaps += 1;
        }
        // Short gaps again: spinning resumes.
        for _ in 0..4 {
            p.touch();
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        p.touch();
        assert!(stays_unparked_for(10).await, "spinning again once gaps are short");
    }

    #[test]
    fn zero_window_is_off() {
        assert!(BusyPoll::new(Duration::ZERO).is_none());
        assert_eq!(spin_budget(&None), Duration::ZERO);
        assert_eq!(spin_budget(&BusyPoll::new(Duration::from_micros(20))), Duration::from_micros(20));
        assert_eq!(spin_budget(&BusyPoll::new(Duration::from_micros(200))), SPIN_BUDGET);
    }

    #[test]
    fn solo_needs_a_run_of_one_connection() {
        let p = BusyPoll::new(Duration::from_secs(10)).unwrap();
        for _ in 0..SOLO_AFTER {
            assert!(!p.solo(1));
            p.touch_from(1);
        }
        assert!(p.solo(1), "{SOLO_AFTER} notes in a row from connection 1");
        assert!(!p.solo(2));
        p.touch_from(2);
        assert!(!p.solo(1) && !p.solo(2), "a second connection ends it for both");
        p.touch_from(1);
        assert!(!p.solo(1), "and the run starts again");
    }

    #[test]
    fn spin_read_returns_data_nothing_or_eof() {
        use std::io::Write;
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = std::net::TcpStream::connect(l.local_addr().unwrap()).unwrap();
        let (sock, _) = l.accept().unwrap();
        let mut buf = bytes::BytesMut::from(&b"ab"[..]);
        let budget = Duration::from_millis(2);
        assert!(spin_read(&sock, &mut buf, 1024, usize::MAX, budget).unwrap().is_none(), "nothing sent");
        peer.write_all(b"cdef").unwrap();
        let deadline = Instant::now() + Duration::from_secs(5);
        let n = loop {
            if let Some(n) = spin_read(&sock, &mut buf, 1024, usize::MAX, budget).unwrap() {
                break n;
            }
            assert!(Instant::now() < deadline, "data never arrived");
        };
        assert_eq!((n, &buf[..]), (4, &b"abcdef"[..]), "appended after what was there");
        drop(peer);
        let eof = loop {
            if let Some(n) = spin_read(&sock, &mut buf, 1024, usize::MAX, budget).unwrap() {
                break n;
            }
            assert!(Instant::now() < deadline, "close never seen");
        };
        assert_eq!(eof, 0);
    }

    #[tokio::test]
    async fn spins_within_the_window_and_parks_after_it() {
        let p = BusyPoll::new(Duration::from_millis(500)).unwrap();
        p.spawn();
        tokio::task::yield_now().await;
        assert!(p.is_parked(), "no activity yet");
        p.touch();
        assert!(!p.is_parked());
        // Keep touching for a while: it stays awake. Checked before each touch (a touch itself clears
        // `parked`): 10 ms after the last one, far inside the 500 ms window (room for a loaded machine), it
        // has not parked.
        for _ in 0..10 {
            tokio::time::sleep(Duration::from_millis(10)).await;
            assert!(!p.is_parked(), "parked within the window after a touch");
            p.touch();
        }
        tokio::time::sleep(Duration::from_millis(1500)).await;
        assert!(p.is_parked(), "the spinner parks once the window has passed");
        p.touch();
        assert!(!p.is_parked());
    }
}
