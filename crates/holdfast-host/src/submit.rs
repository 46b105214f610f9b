//! The submission channel: how callers hand [`Command`](crate::queue::Command)s to a queue task.
//!
//! Bounded, any number of [`Sender`]s, one [`Receiver`]. The receiver outlives connections: a queue task that
//! ends hands it back in its [`QueueExit`](crate::queue::QueueExit), and the task on the next connection takes
//! it over, so a caller's sender stays valid across reconnections (README, Ride-through).
//!
//! It does what `tokio::sync::mpsc`'s bounded channel does for this use, with less work per command: one
//! uncontended mutex around a ring buffer instead of a semaphore, a linked list of blocks and an atomic waker,
//! and the receiver's waker kept between waits (cloned only when the receiving task changes), where an
//! [`AtomicWaker`](futures_util::task::AtomicWaker) takes it out on every wake and clones it back on every
//! wait. Measured with `bench/icount.sh` (host side, 4 KiB randread): see the commit that introduced it.
//!
//! Semantics, as tokio's: [`Sender::try_send`] fails with [`TrySendError::Full`] at capacity and with
//! [`TrySendError::Closed`] once the receiver is gone; [`Sender::send`] waits for room; the receiver yields
//! `None` once every sender is gone and nothing is left; dropping the receiver drops what it held.

use std::collections::VecDeque;
use std::future::poll_fn;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll, Waker};
use tokio::sync::Notify;

/// Create a channel holding at most `cap` items (at least one).
pub fn channel<T>(cap: usize) -> (Sender<T>, Receiver<T>) {
    let chan = Arc::new(Chan {
        state: Mutex::new(State {
            queue: VecDeque::new(),
            senders: 1,
            rx_alive: true,
            rx_waker: None,
            rx_waiting: false,
        }),
        cap: cap.max(1),
        queued: AtomicUsize::new(0),
        room: Notify::new(),
    });
    (Sender { chan: chan.clone() }, Receiver { chan })
}

struct Chan<T> {
    state: Mutex<State<T>>,
    cap: usize,
    /// The queue's length, stored under the lock whenever it changes: lets the receiver's attempts that do not
    /// wait ([`Receiver::try_recv_many`], [`Receiver::try_recv`]) find an empty queue without taking the lock
    /// (a queue task makes one or two such attempts every time round its loop).
    queued: AtomicUsize,
    /// Senders waiting for room ([`Sender::send`], [`Sender::ready`]): notified when the receiver takes from a
    /// full queue, and when it is dropped.
    room: Notify,
}

struct State<T> {
    queue: VecDeque<T>,
    senders: usize,
    rx_alive: bool,
    /// The waker the receiver left when it last found the queue empty, kept after it is woken.
    rx_waker: Option<Waker>,
    /// The receiver waits on `rx_waker`: the next send (or the last sender's drop) wakes it.
    rx_waiting: bool,
}

impl<T> Chan<T> {
    fn lock(&self) -> MutexGuard<'_, State<T>> {
        // A panic while the lock was held leaves the queue itself consistent (every change to it is one call).
        self.state.lock().unwrap_or_else(|p| p.into_inner())
    }
}

impl<T> State<T> {
    fn wake_receiver(&mut self) {
        if std::mem::take(&mut self.rx_waiting) {
            if let Some(w) = &self.rx_waker {
                w.wake_by_ref();
            }
        }
    }
}

/// Why [`Sender::try_send`] did not queue its item (given back).
#[derive(Debug)]
pub enum TrySendError<T> {
    /// The channel holds its capacity.
    Full(T),
    /// The receiver is gone.
    Closed(T),
    /// The sender's own check refused it ([`Sender::try_send_unless`]).
    Refused(T),
}

/// The receiver is gone: [`Sender::send`] gives its item back.
#[derive(Debug)]
pub struct SendError<T>(pub T);

/// The sending side; cloned freely.
pub struct Sender<T> {
    chan: Arc<Chan<T>>,
}

impl<T> Clone for Sender<T> {
    fn clone(&self) -> Self {
        self.chan.lock().senders += 1;
        Sender { chan: self.chan.clone() }
    }
}

impl<T> Drop for Sender<T> {
    fn drop(&mut self) {
        let mut s = self.chan.lock();
        s.senders -= 1;
        if s.senders == 0 {
            s.wake_receiver();
        }
    }
}

impl<T> std::fmt::Debug for Sender<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Sender").field("cap", &self.chan.cap).finish_non_exhaustive()
    }
}

impl<T> Sender<T> {
    /// Queue `item` if there is room, without waiting.
    #[inline]
    pub fn try_send(&self, item: T) -> Result<(), TrySendError<T>> {
        self.try_send_unless(item, || false)
    }

    /// [`Sender::try_send`], refused ([`TrySendError::Refused`]) if `refuse` says so, asked under the channel's
    /// lock: a receiver that takes items out ([`Receiver::take_if`]) after something changed that `refuse` looks at
    /// either finds the item queued or is never sent it.
    #[inline]
    pub fn try_send_unless(&self, item: T, refuse: impl FnOnce() -> bool) -> Result<(), TrySendError<T>> {
        let mut s = self.chan.lock();
        if !s.rx_alive {
            return Err(TrySendError::Closed(item));
        }
        if refuse() {
            return Err(TrySendError::Refused(item));
        }
        if s.queue.len() >= self.chan.cap {
            return Err(TrySendError::Full(item));
        }
        s.queue.push_back(item);
        self.chan.queued.store(s.queue.len(), Ordering::Relaxed);
        s.wake_receiver();
        Ok(())
    }

    /// Queue `item`, waiting for room; the item back if the receiver is gone. Cancel-safe in the sense that
    /// matters here: dropped while waiting, the future drops the item (callers that must keep it wait with
    /// [`Sender::ready`] and queue with [`Sender::try_send`]).
    pub async fn send(&self, item: T) -> Result<(), SendError<T>> {
        self.send_unless(item, || false).await.map_err(|e| match e {
            TrySendError::Closed(i) | TrySendError::Refused(i) | TrySendError::Full(i) => SendError(i),
        })
    }

    /// [`Sender::send`], refused as [`Sender::try_send_unless`] refuses (asked again at every try): `Closed` or
    /// `Refused` with the item back, never `Full`.
    pub async fn send_unless(&self, mut item: T, refuse: impl Fn() -> bool) -> Result<(), TrySendError<T>> {
        loop {
            let room = self.chan.room.notified();
            tokio::pin!(room);
            // Registered before the check: a receiver that takes from the full queue after it notifies us.
            room.as_mut().enable();
            match self.try_send_unless(item, &refuse) {
                Ok(()) => return Ok(()),
                Err(TrySendError::Full(i)) => item = i,
                Err(e) => return Err(e),
            }
            room.await;
        }
    }

    /// Wait until the channel has room or the receiver is gone (true: room). Another sender may take the room
    /// first: [`Sender::try_send`] then says `Full`, and the caller waits again.
    pub async fn ready(&self) -> bool {
        loop {
            let room = self.chan.room.notified();
            tokio::pin!(room);
            room.as_mut().enable();
            {
                let s = self.chan.lock();
                if !s.rx_alive {
                    return false;
                }
                if s.queue.len() < self.chan.cap {
                    return true;
                }
            }
            room.await;
        }
    }

    /// True once the receiver is gone.
    pub fn is_closed(&self) -> bool {
        !self.chan.lock().rx_alive
    }
}

/// The receiving side, owned by the queue task of the moment.
pub struct Receiver<T> {
    chan: Arc<Chan<T>>,
}

impl<T> Drop for Receiver<T> {
    fn drop(&mut self) {
        let left = {
            let mut s = self.chan.lock();
            s.rx_alive = false;
            s.rx_waker = None;
            self.chan.queued.store(0, Ordering::Relaxed);
            std::mem::take(&mut s.queue)
        };
        // Dropped outside the lock: an item's drop may wake its caller.
        drop(left);
        self.chan.room.notify_waiters();
    }
}

impl<T> std::fmt::Debug for Receiver<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Receiver").field("cap", &self.chan.cap).finish_non_exhaustive()
    }
}

impl<T> Receiver<T> {
    /// Refuse further items (senders see the channel closed) while what is queued can still be taken.
    pub fn close(&mut self) {
        self.chan.lock().rx_alive = false;
        self.chan.room.notify_waiters();
    }

    /// Take up to `limit` items into `buf` without waiting: `Some(n)` (n may be 0: none yet), or `None` once
    /// every sender is gone (or the channel was closed) and nothing is left; that end may also show as
    /// `Some(0)`, and is certain to show to a wait ([`Receiver::poll_recv_many`], [`Receiver::recv`]). Registers
    /// no wait; an earlier one stays in place unless something is taken.
    ///
    /// Taking all that is queued into an empty `buf`, the usual case for a queue task, moves no item: the channel's
    /// storage and `buf`'s are swapped, and the channel goes on with the latter.
    pub fn try_recv_many(&mut self, buf: &mut VecDeque<T>, limit: usize) -> Option<usize> {
        self.take(None, buf, limit)
    }

    /// Take up to `limit` items into `buf`: `Ready(n)` with n > 0; `Ready(0)` once every sender is gone and
    /// nothing is left (or if `limit` is 0); `Pending` (the task woken by the next send) if none is there yet.
    pub fn poll_recv_many(&mut self, cx: &mut Context<'_>, buf: &mut VecDeque<T>, limit: usize) -> Poll<usize> {
        match self.take(Some(cx), buf, limit) {
            Some(0) if limit > 0 => Poll::Pending,
            Some(n) => Poll::Ready(n),
            None => Poll::Ready(0),
        }
    }

    /// The next item, or `None` once every sender is gone and nothing is left.
    pub fn poll_recv(&mut self, cx: &mut Context<'_>) -> Poll<Option<T>> {
        let mut s = self.chan.lock();
        if let Some(item) = s.queue.pop_front() {
            s.rx_waiting = false;
            self.taken(s, 1);
            return Poll::Ready(Some(item));
        }
        if s.senders == 0 || !s.rx_alive {
            return Poll::Ready(None);
        }
        Self::wait(&mut s, cx);
        Poll::Pending
    }

    /// Whether there is something to take: `Ready(true)` if items are queued, `Ready(false)` once every sender
    /// is gone (or the channel was closed) and nothing is left, else `Pending` (the task woken by the next
    /// send). Takes nothing: a queue task waits with this and then takes as many as it has room for
    /// ([`Receiver::try_recv_many`]), so that items move once, from the channel to where they are issued.
    pub fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<bool> {
        if self.chan.queued.load(Ordering::Relaxed) > 0 {
            return Poll::Ready(true);
        }
        let mut s = self.chan.lock();
        if !s.queue.is_empty() {
            return Poll::Ready(true);
        }
        if s.senders == 0 || !s.rx_alive {
            return Poll::Ready(false);
        }
        Self::wait(&mut s, cx);
        Poll::Pending
    }

    /// Wait for the next item ([`Receiver::poll_recv`]).
    pub async fn recv(&mut self) -> Option<T> {
        poll_fn(|cx| self.poll_recv(cx)).await
    }

    /// The next item if one is there (None also once the senders are gone). Leaves any earlier wait in place.
    pub fn try_recv(&mut self) -> Option<T> {
        if self.chan.queued.load(Ordering::Relaxed) == 0 {
            return None;
        }
        let mut s = self.chan.lock();
        let item = s.queue.pop_front()?;
        self.taken(s, 1);
        Some(item)
    }

    /// Take out every queued item `pick` chooses, in their order, leaving the others in theirs; senders waiting
    /// for room are told if the queue was full.
    pub fn take_if(&mut self, pick: impl FnMut(&T) -> bool) -> Vec<T> {
        let mut s = self.chan.lock();
        let (out, keep): (VecDeque<T>, VecDeque<T>) = std::mem::take(&mut s.queue).into_iter().partition(pick);
        s.queue = keep;
        let out = Vec::from(out);
        let n = out.len();
        if n > 0 {
            self.taken(s, n);
        }
        out
    }

    /// Up to `limit` items into `buf`; with `cx`, a wait registered if there are none (and senders remain).
    ///
    /// All of the queue into an empty `buf`: the two swap storage, and no item is moved. A queue task issues the
    /// commands it takes straight from `buf` into its in-flight table; copied into `buf` first (128 bytes each), they
    /// were written once more, to memory of the queue's own that at a few hundred queues was no longer in the
    /// core's caches. Each side keeps the capacity it grew to, so that once both have room for a full channel
    /// nothing is allocated.
    fn take(&mut self, cx: Option<&mut Context<'_>>, buf: &mut VecDeque<T>, limit: usize) -> Option<usize> {
        if limit == 0 {
            return Some(0);
        }
        // Nothing queued, by the count: an attempt is done (a send racing with this is seen next time); a wait
        // takes the lock, to register without missing such a send. The end of the channel is seen by a wait.
        if cx.is_none() && self.chan.queued.load(Ordering::Relaxed) == 0 {
            return Some(0);
        }
        let mut s = self.chan.lock();
        let n = s.queue.len().min(limit);
        if n > 0 {
            if n == s.queue.len() && buf.is_empty() {
                std::mem::swap(&mut s.queue, buf);
            } else {
                buf.extend(s.queue.drain(..n));
            }
            s.rx_waiting = false;
            self.taken(s, n);
            return Some(n);
        }
        if s.senders == 0 || !s.rx_alive {
            return None;
        }
        if let Some(cx) = cx {
            Self::wait(&mut s, cx);
        }
        Some(0)
    }

    /// After `n` items were taken under `s`: the length mirror updated, the lock released, and senders waiting
    /// for room told if the queue was full before.
    fn taken(&self, s: MutexGuard<'_, State<T>>, n: usize) {
        self.chan.queued.store(s.queue.len(), Ordering::Relaxed);
        let was_full = s.queue.len() + n >= self.chan.cap;
        drop(s);
        if was_full {
            self.chan.room.notify_waiters();
        }
    }

    /// Have the next send (or the last sender's drop) wake `cx`'s task; its waker is cloned only if it is not
    /// the one kept from the last wait.
    fn wait(s: &mut State<T>, cx: &Context<'_>) {
        if !s.rx_waker.as_ref().is_some_and(|w| w.will_wake(cx.waker())) {
            s.rx_waker = Some(cx.waker().clone());
        }
        s.rx_waiting = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    #[tokio::test]
    async fn items_arrive_in_order_and_the_end_is_seen_once_senders_are_gone() {
        let (tx, mut rx) = channel::<u32>(4);
        let tx2 = tx.clone();
        tx.try_send(1).unwrap();
        tx2.send(2).await.unwrap();
        drop(tx);
        assert_eq!(rx.recv().await, Some(1));
        tx2.try_send(3).unwrap();
        drop(tx2);
        assert_eq!(rx.recv().await, Some(2));
        assert_eq!(rx.recv().await, Some(3));
        assert_eq!(rx.recv().await, None);
    }

    #[tokio::test]
    async fn full_then_room_wakes_a_waiting_sender() {
        let (tx, mut rx) = channel::<u32>(2);
        tx.try_send(1).unwrap();
        tx.try_send(2).unwrap();
        assert!(matches!(tx.try_send(3), Err(TrySendError::Full(3))));
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move { tx2.send(3).await.map_err(|e| e.0) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "no room yet");
        let mut got = VecDeque::new();
        let n = poll_fn(|cx| rx.poll_recv_many(cx, &mut got, 8)).await;
        assert_eq!((n, got.make_contiguous() as &[u32]), (2, &[1, 2][..]));
        tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("woken").unwrap().unwrap();
        assert_eq!(rx.recv().await, Some(3));
        assert!(tx.ready().await);
    }

    /// Items taken out by `take_if` leave the others in order and make room; a sender that waited for it asks
    /// its own check again, under the lock, and is refused once the check says so.
    #[tokio::test]
    async fn take_if_makes_room_and_a_waiting_sender_is_refused_by_its_check() {
        let (tx, mut rx) = channel::<u32>(3);
        for i in 1..=3 {
            tx.try_send(i).unwrap();
        }
        let stale = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (tx2, stale2) = (tx.clone(), stale.clone());
        let waiting = tokio::spawn(async move {
            tx2.send_unless(4, || stale2.load(Ordering::Relaxed))
                .await
                .map_err(|e| matches!(e, TrySendError::Refused(4)))
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!waiting.is_finished(), "no room yet");
        stale.store(true, Ordering::Relaxed);
        assert_eq!(rx.take_if(|i| i % 2 == 1), vec![1, 3]);
        let r = tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("woken").unwrap();
        assert_eq!(r, Err(true));
        assert!(matches!(tx.try_send_unless(5, || true), Err(TrySendError::Refused(5))));
        tx.try_send(6).unwrap();
        assert_eq!((rx.try_recv(), rx.try_recv(), rx.try_recv()), (Some(2), Some(6), None));
    }

    #[tokio::test]
    async fn a_receiver_that_waits_is_woken_by_a_send_from_another_task() {
        let (tx, mut rx) = channel::<u32>(8);
        let r = tokio::spawn(async move { (rx.recv().await, rx.recv().await) });
        tokio::time::sleep(Duration::from_millis(20)).await;
        tx.try_send(7).unwrap();
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(tx);
        let got = tokio::time::timeout(Duration::from_secs(5), r).await.expect("woken").unwrap();
        assert_eq!(got, (Some(7), None));
    }

    #[tokio::test]
    async fn dropping_the_receiver_closes_the_channel_and_frees_waiting_senders() {
        let (tx, rx) = channel::<Arc<()>>(1);
        let item = Arc::new(());
        tx.try_send(item.clone()).unwrap();
        let tx2 = tx.clone();
        let waiting = tokio::spawn(async move { tx2.send(Arc::new(())).await.is_err() });
        let ready = {
            let tx3 = tx.clone();
            tokio::spawn(async move { tx3.ready().await })
        };
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(rx);
        assert_eq!(Arc::strong_count(&item), 1, "what the receiver held is dropped with it");
        assert!(tx.is_closed());
        assert!(matches!(tx.try_send(item), Err(TrySendError::Closed(_))));
        assert!(tokio::time::timeout(Duration::from_secs(5), waiting).await.expect("woken").unwrap());
        assert!(!tokio::time::timeout(Duration::from_secs(5), ready).await.expect("woken").unwrap());
    }

    /// Senders on several threads against a receiver on another, through a channel far smaller than what
    /// they send: everything arrives, once, in each sender's order, and nobody waits for ever.
    #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
    async fn many_threads_through_a_small_channel_lose_nothing_and_never_hang() {
        const SENDERS: u64 = 6;
        const EACH: u64 = 5000;
        let (tx, mut rx) = channel::<(u64, u64)>(3);
        let mut tasks = Vec::new();
        for s in 0..SENDERS {
            let tx = tx.clone();
            tasks.push(tokio::spawn(async move {
                for i in 0..EACH {
                    // Both ways of sending: waiting for room, and trying first.
                    if i % 2 == 0 {
                        tx.send((s, i)).await.unwrap();
                    } else if let Err(TrySendError::Full(item)) = tx.try_send((s, i)) {
                        tx.send(item).await.unwrap();
                    }
                }
            }));
        }
        drop(tx);
        let receiver = tokio::spawn(async move {
            let mut next = [0u64; SENDERS as usize];
            let mut buf = VecDeque::new();
            loop {
                // Both ways of receiving, as a queue task does.
                if poll_fn(|cx| rx.poll_ready(cx)).await {
                    rx.try_recv_many(&mut buf, 2);
                } else {
                    break;
                }
                for (s, i) in buf.drain(..) {
                    assert_eq!(i, next[s as usize], "sender {s}: out of order or duplicated");
                    next[s as usize] += 1;
                }
                if let Some((s, i)) = rx.recv().await {
                    assert_eq!(i, next[s as usize], "sender {s}: out of order or duplicated");
                    next[s as usize] += 1;
                }
            }
            next
        });
        let next = tokio::time::timeout(Duration::from_secs(30), receiver).await.expect("no hang").unwrap();
        assert_eq!(next, [EACH; SENDERS as usize]);
        for t in tasks {
            t.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_closed_channel_refuses_items_and_still_gives_what_it_held() {
        let (tx, mut rx) = channel::<u32>(4);
        tx.try_send(1).unwrap();
        rx.close();
        assert!(matches!(tx.try_send(2), Err(TrySendError::Closed(2))));
        assert!(!tx.ready().await);
        assert_eq!(rx.try_recv(), Some(1));
        assert_eq!(rx.recv().await, None, "closed and empty: the end, with a sender still alive");
    }

    #[test]
    fn trying_takes_what_is_there_and_registers_no_wait() {
        let (tx, mut rx) = channel::<u32>(2);
        assert_eq!(rx.try_recv(), None);
        let mut buf = VecDeque::new();
        assert_eq!(rx.try_recv_many(&mut buf, 2), Some(0));
        assert!(!rx.chan.lock().rx_waiting, "trying is not waiting");
        tx.try_send(5).unwrap();
        tx.try_send(6).unwrap();
        assert_eq!(rx.try_recv(), Some(5));
        assert_eq!(rx.try_recv_many(&mut buf, 2), Some(1));
        assert_eq!(buf, [6]);
        let mut cx = Context::from_waker(Waker::noop());
        assert_eq!(rx.poll_recv_many(&mut cx, &mut buf, 0), Poll::Ready(0));
        assert_eq!(rx.poll_recv_many(&mut cx, &mut buf, 4), Poll::Pending);
        assert!(rx.chan.lock().rx_waiting);
        assert_eq!(rx.poll_ready(&mut cx), Poll::Pending);
        tx.try_send(7).unwrap();
        assert!(!rx.chan.lock().rx_waiting, "the send woke the waiting receiver");
        assert_eq!(rx.poll_ready(&mut cx), Poll::Ready(true));
        assert_eq!(rx.poll_ready(&mut cx), Poll::Ready(true), "ready takes nothing");
        assert_eq!(rx.try_recv(), Some(7));
        drop(tx);
        assert_eq!(rx.poll_ready(&mut cx), Poll::Ready(false));
        assert_eq!(rx.poll_recv_many(&mut cx, &mut buf, 4), Poll::Ready(0));
    }
}
