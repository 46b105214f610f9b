//! [`Reply`]: where one command's completion goes, a one-shot cell shared by its caller and the queue task.
//!
//! Every command takes one, so it is built not to allocate on the I/O path: once the caller has collected
//! its completion and the queue task has let go, the cell goes back to a small per-thread pool and serves the
//! next command issued from that thread. Otherwise it behaves as a one-shot channel: the queue task answers
//! with [`ReplyTx::send`] (or drops the sender, which the caller sees as [`ReplyDropped`]), the caller awaits
//! the [`Reply`], and a caller that gives up (drops its `Reply`) shows as [`ReplyTx::is_closed`], so that the
//! queue does not issue a command nobody waits for.
//!
//! The protocol, on one atomic state byte: the sender writes the value, then publishes `SENT | TX_GONE`
//! (Release); the receiver reads the value only after it has seen `SENT` (Acquire), and the sender never
//! touches the value after publishing. Wake-ups go through an [`AtomicWaker`]. A cell is recycled only
//! through [`Arc::get_mut`], that is when no one else holds it.

use crate::error::Error;
use crate::queue::Completion;
use futures_util::task::AtomicWaker;
use std::cell::{RefCell, UnsafeCell};
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

/// What a command completes with.
pub type Outcome = Result<Completion, Error>;

/// The value is written (set by the sender after writing it).
const SENT: u8 = 1;
/// The sender is gone, after sending or without.
const TX_GONE: u8 = 2;
/// The receiver is gone.
const RX_GONE: u8 = 4;

/// Cells kept per thread for reuse: enough for every command outstanding at once from one thread in any
/// ordinary use (a thousand is 4 queues at QD 256); beyond, cells are allocated and freed as usual.
const POOL_MAX: usize = 1024;

struct Cell {
    state: AtomicU8,
    value: UnsafeCell<Option<Outcome>>,
    waker: AtomicWaker,
}

// SAFETY: `value` is the only field without its own synchronisation. It is written once, by the single
// `ReplyTx`, before that sender publishes SENT with Release ordering, and never touched by the sender again;
// it is read (taken) only by the single `Reply`, through `&mut self`, after an Acquire load has seen SENT. So
// the two sides never access it at the same time, and the read happens after the write.
unsafe impl Sync for Cell {}

impl Cell {
    fn new() -> Cell {
        Cell { state: AtomicU8::new(0), value: UnsafeCell::new(None), waker: AtomicWaker::new() }
    }
}

thread_local! {
    static POOL: RefCell<Vec<Arc<Cell>>> = const { RefCell::new(Vec::new()) };
}

/// A new reply channel: the sender goes with the command, the receiver to its caller.
pub fn channel() -> (ReplyTx, Reply) {
    let cell = POOL.try_with(|p| p.borrow_mut().pop()).ok().flatten().unwrap_or_else(|| Arc::new(Cell::new()));
    (ReplyTx { cell: Some(cell.clone()) }, Reply { cell: Some(cell) })
}

/// The queue task's end: answers the command once.
pub struct ReplyTx {
    cell: Option<Arc<Cell>>,
}

impl ReplyTx {
    /// Deliver the outcome (kept, and dropped unread, if the caller has gone).
    pub fn send(mut self, outcome: Outcome) {
        let Some(cell) = self.cell.take() else { return };
        // SAFETY: this is the only sender and SENT is not set yet, so the receiver does not read `value` now
        // and will not until it sees the SENT published below (see `Cell`).
        unsafe { *cell.value.get() = Some(outcome) };
        cell.state.fetch_or(SENT | TX_GONE, Ordering::Release);
        cell.waker.wake();
    }

    /// True once the caller has dropped its [`Reply`]: nobody waits for the outcome.
    pub fn is_closed(&self) -> bool {
        self.cell.as_ref().is_none_or(|c| c.state.load(Ordering::Acquire) & RX_GONE != 0)
    }
}

impl Drop for ReplyTx {
    fn drop(&mut self) {
        if let Some(cell) = self.cell.take() {
            cell.state.fetch_or(TX_GONE, Ordering::Release);
            cell.waker.wake();
        }
    }
}

/// The queue dropped the command without answering it (the controller was shut down, say).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the command was dropped without a completion")]
pub struct ReplyDropped;

/// The caller's end: a future of the command's outcome.
pub struct Reply {
    cell: Option<Arc<Cell>>,
}

impl Future for Reply {
    type Output = Result<Outcome, ReplyDropped>;

    // Inline: every I/O polls one, through `Finish`, and out of line it cost 50 instructions per I/O more
    // (bench/icount.sh, host randread QD32).
    #[inline]
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Some(cell) = self.cell.as_ref() else { return Poll::Ready(Err(ReplyDropped)) };
        let mut state = cell.state.load(Ordering::Acquire);
        if state & TX_GONE == 0 {
            cell.waker.register(cx.waker());
            // Sent (or dropped) between the load and the registration: its wake may have gone to the old waker.
            state = cell.state.load(Ordering::Acquire);
            if state & TX_GONE == 0 {
                return Poll::Pending;
            }
        }
        if state & SENT == 0 {
            return Poll::Ready(Err(ReplyDropped));
        }
        // SAFETY: SENT was seen with Acquire, so the sender's write is complete and it never touches `value`
        // again; `&mut self` makes this the only reader (see `Cell`).
        let outcome = unsafe { (*cell.value.get()).take() };
        self.release();
        Poll::Ready(outcome.ok_or(ReplyDropped))
    }
}

impl Reply {
    /// Let go of the cell, into this thread's pool if no one else holds it.
    fn release(&mut self) {
        let Some(mut cell) = self.cell.take() else { return };
        if cell.state.load(Ordering::Acquire) & TX_GONE == 0 {
            cell.state.fetch_or(RX_GONE, Ordering::Release);
        }
        if let Some(c) = Arc::get_mut(&mut cell) {
            // Ours alone: fresh state, and any value never collected and any registered waker dropped.
            *c = Cell::new();
            let _ = POOL.try_with(|p| {
                let mut p = p.borrow_mut();
                if p.len() < POOL_MAX {
                    p.push(cell);
                }
            });
        }
    }
}

impl Drop for Reply {
    fn drop(&mut self) {
        self.release();
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_proto::{CompletionEntry, Status};

    fn done(cid: u16) -> Outcome {
        Ok(Completion { cqe: CompletionEntry::new(cid, Status::SUCCESS, 0), data: bytes::Bytes::new(), transferred: 0 })
    }

    fn pooled() -> usize {
        POOL.with(|p| p.borrow().len())
    }

    #[tokio::test]
    async fn delivers_before_and_after_the_caller_waits() {
        let (tx, rx) = channel();
        tx.send(done(1));
        assert_eq!(rx.await.unwrap().unwrap().cqe.cid(), 1);

        let (tx, rx) = channel();
        let waiter = tokio::spawn(rx);
        tokio::task::yield_now().await;
        tx.send(done(2));
        assert_eq!(waiter.await.unwrap().unwrap().unwrap().cqe.cid(), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn delivers_across_threads() {
        for i in 0..2000u16 {
            let (tx, rx) = channel();
            let sender = tokio::spawn(async move { tx.send(done(i)) });
            assert_eq!(rx.await.unwrap().unwrap().cqe.cid(), i);
            sender.await.unwrap();
        }
    }

    #[tokio::test]
    async fn a_dropped_sender_is_reported_and_a_dropped_receiver_seen() {
        let (tx, rx) = channel();
        drop(tx);
        assert_eq!(rx.await.unwrap_err(), ReplyDropped);

        let (tx, rx) = channel();
        assert!(!tx.is_closed());
        drop(rx);
        assert!(tx.is_closed());
        tx.send(done(3)); // kept in the cell and dropped with it, not delivered anywhere
    }

    #[test]
    fn collected_cells_are_reused_not_reallocated() {
        let rt = tokio::runtime::Builder::new_current_thread().build().unwrap();
        rt.block_on(async {
            let (tx, rx) = channel();
            let first = Arc::as_ptr(tx.cell.as_ref().unwrap());
            tx.send(done(4));
            rx.await.unwrap().unwrap();
            let before = pooled();
            assert!(before >= 1);
            let (tx, rx) = channel();
            assert_eq!(pooled(), before - 1);
            // The pool is a stack: the cell just returned is the one handed out.
            assert_eq!(Arc::as_ptr(tx.cell.as_ref().unwrap()), first);
            // A reused cell starts empty: no stale outcome, no stale closed flag.
            assert!(!tx.is_closed());
            tx.send(done(5));
            assert_eq!(rx.await.unwrap().unwrap().cqe.cid(), 5);
        });
    }

    #[test]
    fn a_cell_still_held_by_its_sender_is_not_pooled() {
        let (tx, rx) = channel();
        let before = pooled();
        drop(rx); // the sender still holds the cell
        assert_eq!(pooled(), before);
        drop(tx);
        assert_eq!(pooled(), before);
    }
}
