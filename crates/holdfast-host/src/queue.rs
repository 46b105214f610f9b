//! One queue pair over one TCP connection (NVMe/TCP Transport Specification 1.0, §3.3–§3.6).
//!
//! A queue task owns its socket, its command-ID space and its in-flight table. Callers hand it
//! [`Command`]s through a channel that outlives any one connection; each command carries its own data and
//! reply channel. When the connection fails the task does not fail its commands: it returns the channel's
//! receiver and every command that has not completed, intact, in a [`QueueExit`], so that a controller can
//! reconnect and re-issue them with new CIDs (README, Ride-through).

use crate::error::Error;
use bytes::{Bytes, BytesMut};
use holdfast_proto::decoder::{DecodeError, PduDecoder};
use holdfast_proto::digest::digest_bytes;
use holdfast_proto::pdu::{self, flags, Fes, Framing, Pdu, PduType};
use holdfast_proto::sgl::SglDescriptor;
use holdfast_proto::{CompletionEntry, Reassembly, SendQueue, Status, SubmissionEntry};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// A command on its way to a controller.
pub struct Command {
    /// The SQE (the queue sets the CID and the SGL).
    pub sqe: SubmissionEntry,
    /// Data for the controller (writes).
    pub data_out: Bytes,
    /// Bytes expected from the controller (reads). A u32, as the SGL data block descriptor's length is (NVMe
    /// Base 2.0 §4.3.2), so that the whole `Command` fits 128 bytes: the compiler moves a struct that size
    /// inline, and a command is moved several times on its way (into the channel, out of it, into the
    /// in-flight table).
    pub data_in_len: u32,
    /// Which opening of its namespace the command came through (the tag of its [`crate::Namespace`] handle;
    /// 0 for a command sent without one). The NSID alone does not say: once a namespace was replaced and opened
    /// again, the commands of the handles before and those of the new one carry the same NSID, and a reconnect
    /// must fail the first and re-issue the second (`fail_gone_namespaces`, README, No stale writes).
    pub ns_tag: u32,
    /// True if the command may be re-issued after a lost connection (idempotent effect).
    pub replayable: bool,
    /// Where the result goes.
    pub reply: crate::reply::ReplyTx,
    /// How many times this command went unanswered past the command timeout (each time the connection was
    /// declared lost). A command that keeps timing out on fresh connections is failed rather than re-issued
    /// for ever ([`MAX_COMMAND_TIMEOUTS`]).
    pub timeouts: u8,
    /// How many times the controller answered this command with a retryable error (DNR clear) and it was
    /// issued again ([`MAX_STATUS_RETRIES`]).
    pub retries: u8,
    /// How many lost connections this command was outstanding on ([`MAX_COMMAND_LOSSES`]).
    pub losses: u8,
    /// How many times the controller answered it with Asymmetric Access Transition and it waited
    /// ([`ana_transition_delay`]).
    pub ana_waits: u8,
    /// The second command of the fused operation this one is the first of (a Compare and Write's Write): issued
    /// right after it on the same queue, the two next to each other in the submission queue as NVMe Base 2.0
    /// §3.4.2 requires (so never through the channel on its own). Neither is replayable.
    pub fused: Option<Box<Command>>,
}

// See `data_in_len`: a bigger command is moved with a call to memcpy at every step.
const _: () = assert!(std::mem::size_of::<Command>() <= 128);

impl Command {
    /// Waits indefinitely by design, as an Asynchronous Event Request on the admin queue does (NVMe Base 2.0
    /// §5.2): exempt from the command timeout.
    pub fn long_lived(&self, qid: u16) -> bool {
        qid == 0 && self.sqe.opcode == holdfast_proto::opcode::admin::ASYNC_EVENT_REQUEST
    }

    /// May it be issued on a new connection after the one it was on was lost (README, Ride-through)? A replayable one
    /// (its effect is idempotent), or, on I/O queue `qid` (not 0), one that was never outstanding on a lost
    /// connection: never sent, so issuing it is no replay (a compare and write that was waiting for two free
    /// slots, a reservation command behind it). Never a set-up command (Connect, authentication).
    pub fn reissuable(&self, qid: u16) -> bool {
        self.replayable
            || (qid != 0
                && self.losses == 0
                && self.timeouts == 0
                && self.sqe.opcode != holdfast_proto::opcode::FABRICS)
    }

    /// Answer it with `e`, never sent (or no longer to be sent); and the second of its fused operation, if it
    /// carries one, which goes with it.
    pub fn fail(mut self, e: Error) {
        if let Some(second) = self.fused.take() {
            let why = format!("not sent: the first command of its fused operation failed ({e})");
            second.reply.send(Err(match &e {
                e if e.is_path_error() => Error::PathError(why),
                Error::NamespaceGone(_) => Error::NamespaceGone(why),
                _ => Error::Invalid(why),
            }));
        }
        self.reply.send(Err(e));
    }

    /// Bytes expected from the controller.
    pub fn data_in_len(&self) -> usize {
        self.data_in_len as usize
    }

    /// Name for errors ("Read", "Identify", ...), from the opcode as queue `qid` (0: the admin queue) reads it:
    /// not kept in the command, which its size (see `data_in_len`) has no room for.
    pub fn name(&self, qid: u16) -> &'static str {
        crate::controller::command_name(&self.sqe, qid == 0)
    }
}

/// After this many command timeouts, each on its own connection, a command fails with [`Error::Timeout`]
/// instead of being re-issued again: the target is answering everything else, so it is not a lost path.
pub const MAX_COMMAND_TIMEOUTS: u8 = 3;

/// A command outstanding on this many lost connections is failed with a path error instead of being
/// re-issued once more, as the Linux host fails a request after `nvme_core.max_retries` (5) requeues. A
/// command the target drops its connection over (a target fault on one LBA, say) would otherwise be
/// re-issued on every new association, each lost the same way: the association comes back every time, so no
/// policy deadline ever ends it. An outage, a restart or a reset storm leaves a command outstanding on one or
/// two lost connections, since re-issued commands complete as soon as a connection holds.
pub const MAX_COMMAND_LOSSES: u8 = 5;

/// A replayable command the controller fails without Do Not Retry is issued again, up to this many times (as
/// the Linux host's `nvme_core.max_retries`), after the Command Retry Delay its CRD field selects (NVMe Base
/// 2.0 §4.6.1 "Status Field Definition"; CRDT1..3 in Identify Controller, used once ACRE is enabled).
/// A delay longer than the queue's I/O timeout is not waited out (CRDT goes up to 6553.5 s, which a caller
/// would take for a hang): the command completes at once with the controller's status, Do Not Retry clear,
/// and the caller decides whether to issue it again later.
pub const MAX_STATUS_RETRIES: u8 = 5;

/// A completed command: its CQE and the data the controller returned.
#[derive(Debug, Clone)]
pub struct Completion {
    /// The completion entry.
    pub cqe: CompletionEntry,
    /// Data (reads): as long as asked when the command succeeded. An admin command other than Identify that
    /// transferred less (a Get Log Page from a controller that sent less than asked) has the rest as zeroes;
    /// [`Completion::transferred`] says how much came.
    pub data: Bytes,
    /// Bytes of `data` the controller sent: its whole length but for the zero-padded admin case above.
    pub transferred: usize,
}

impl Completion {
    /// The status.
    pub fn status(&self) -> Status {
        self.cqe.status()
    }
}

/// What a queue needs to know about its connection.
#[derive(Clone, Debug)]
pub struct QueueParams {
    /// Queue ID.
    pub qid: u16,
    /// Commands outstanding at most (the queue size minus one).
    pub depth: u16,
    /// Framing negotiated in ICReq/ICResp.
    pub framing: Framing,
    /// Largest in-capsule data (admin: 8192; I/O: IOCCSZ × 16 − 64).
    pub max_incapsule: usize,
    /// MAXH2CDATA from ICResp.
    pub maxh2cdata: usize,
    /// A command outstanding longer than this means the connection is lost.
    pub io_timeout: Duration,
    /// Target address, for errors.
    pub addr: String,
    /// Adaptive busy polling, touched on every socket read and write.
    pub poll: Option<std::sync::Arc<holdfast_rt::BusyPoll>>,
    /// Cancelled when the controller is shut down: the queue then closes in order (see [`LINGER`]).
    pub closing: tokio_util::sync::CancellationToken,
    /// Command Retry Delay Times 1..3 in 100 ms units (Identify Controller CRDT1..3), all 0 unless the host
    /// enabled ACRE: how long a retryable error with CRD 1..3 waits before the command is issued again.
    pub crdt: [u16; 3],
    /// ANA Transition Time (Identify Controller ANATT) of a controller that reports Asymmetric Namespace
    /// Access; zero otherwise.
    pub anatt: Duration,
}

/// How long a command the controller answered with Asymmetric Access Transition for the `waits`-th time waits
/// before it is issued again: 100 ms, doubling to 1 s, for as long as the first `waits` waits add up to less
/// than twice ANATT (the Linux host's ANATT timer allows as much); `None` once they do. Its namespace's ANA
/// group is changing state on this controller (a failover or failback inside the subsystem, NVMe Base 2.1
/// §8.1.1.6) and the change is to end within ANATT: the command rides it out instead of failing after five
/// immediate retries. These waits do not count against [`MAX_STATUS_RETRIES`].
pub fn ana_transition_delay(anatt: Duration, waits: u8) -> Option<Duration> {
    let step = |k: u32| Duration::from_millis((100u64 << k.min(4)).min(1000));
    let waited: Duration = (0..waits as u32).map(step).sum();
    (waited < anatt * 2 && waits < u8::MAX).then(|| step(waits as u32))
}

/// Why and how a queue task ended.
pub struct QueueExit {
    /// The submission channel, for the next connection.
    pub rx: crate::submit::Receiver<Command>,
    /// Commands sent but not completed, in submission order.
    pub pending: Vec<Command>,
    /// What ended it (None: every sender was dropped and nothing was outstanding).
    pub error: Option<Error>,
}

struct InFlight {
    cmd: Command,
    buf: Reassembly,
    started: Instant,
    seq: u64,
    /// Some of its C2HData failed the data digest: whatever the controller says, the data is not delivered.
    bad_data: bool,
    /// End of its data already queued for the controller: all of it if it went in the capsule, else the end
    /// of the last R2T answered. An R2T must ask for data past this (MAXR2T 0: one R2T at a time, none for
    /// data already sent; Linux's host checks the same), so each byte is queued at most once. Set afresh
    /// each time the command is issued, on whatever connection, after whatever status.
    h2c_end: u32,
    /// A C2HData with LAST_PDU arrived: its data transfer is over (NVMe/TCP 1.0 §3.6.2.6), and a further
    /// C2HData for it is a PDU Sequence Error, however few bytes the transfer carried.
    c2h_done: bool,
    /// Where in the stream sent on this connection (see `written` in [`run`]) the data answering its last R2T
    /// ends: until that much is written, the R2T is outstanding, and another one for this command exceeds the
    /// MAXR2T announced (0: one outstanding per command).
    r2t_sent_at: u64,
}

/// The most one socket read takes: half of what the controller still has to send for the commands outstanding
/// (their read data not yet received, and a header and a completion each) if each half is at least
/// [`MIN_SPLIT_READ`], else all of it. With the whole buffer free, one read would take every completion
/// outstanding, and at moderate depths (16 x 4 KiB) the host and the controller then take turns instead of
/// overlapping: the host completes and reissues a first half while the second is still arriving.
///
/// A smaller rest is not split off: 4 x 4 KiB reads outstanding owe 16.5 KiB, and a cap of 16 KiB cut the last
/// PDU 192 bytes short, so that every batch took a second read (and another round of the queue's loop) for
/// them, and none of its commands completed any earlier (bench/icount.sh, host side, 64 controllers x 4 queues
/// at QD 4: 0.50 socket reads per I/O, 0.25 after).
fn read_cap(slots: &[Option<InFlight>]) -> usize {
    let expected: usize =
        slots.iter().flatten().map(|f| (f.cmd.data_in_len as usize).saturating_sub(f.buf.len()) + 48).sum();
    if expected / 2 >= MIN_SPLIT_READ {
        expected / 2
    } else {
        // All of it, with room for digests, which the estimate leaves out.
        2 * MIN_SPLIT_READ
    }
}

/// The smallest part of what the controller owes that [`read_cap`] leaves to a later read.
const MIN_SPLIT_READ: usize = 16 * 1024;

/// Run a queue on an initialized connection until it fails or is no longer needed.
#[allow(clippy::too_many_arguments)]
pub async fn run(
    stream: TcpStream,
    mut decoder: PduDecoder,
    mut inbuf: BytesMut,
    p: QueueParams,
    mut rx: crate::submit::Receiver<Command>,
    initial: Vec<Command>,
    mut setup_rx: crate::submit::Receiver<Command>,
    mut open: tokio::sync::watch::Receiver<bool>,
    cancel: tokio_util::sync::CancellationToken,
) -> QueueExit {
    let (mut rd, mut wr) = stream.into_split();
    let depth = (p.depth.max(1) as usize).min(CID_SLOTS);
    let mut slots: Vec<Option<InFlight>> = (0..depth).map(|_| None).collect();
    let mut free: Vec<u16> = (0..depth as u16).rev().collect();
    let mut gens: Vec<u8> = vec![0; depth];
    let mut out = SendQueue::new();
    // Bytes of `out` written to the socket so far: where a byte queued now ends up in the stream is this plus
    // `out.len()` (see `InFlight::r2t_sent_at`).
    let mut written = 0u64;
    let mut backlog: std::collections::VecDeque<Command> = initial.into();
    // New commands taken from the channel in one go (one lock for the lot, not one each), issued from here.
    let mut intake: std::collections::VecDeque<Command> = Default::default();
    let mut setup_backlog: std::collections::VecDeque<Command> = Default::default();
    // The set-up channel may still bring commands: its senders (the connect's, dropped once the queue is open)
    // are not all gone. Once they are it is looked at no more (a lock and a line of its own in every round).
    let mut setup_open = true;
    let mut seq = 0u64;
    let mut rx_open = true;
    let mut next_check = Instant::now() + TIMEOUT_CHECK;
    // Wakes the task at `next_check` if nothing else does: waited on in every round of the select below, so a
    // watch (see TimerWatch), not an Interval's tick.
    let mut tick = holdfast_rt::TimerWatch::new(next_check);
    let mut recv_hint = 16 * 1024;
    let conn_id = holdfast_rt::connection_id();
    let mut yielded_for_spin = false;
    // Commands completed since the loop last went round: their callers may submit more as soon as they run.
    let mut completed = false;
    let current_thread = holdfast_rt::on_current_thread_runtime();
    // The slot issued last: with one command outstanding, it is that one if it is still taken.
    let mut last_slot = 0usize;
    // Commands the controller failed with a retryable status, waiting out their retry delay.
    let mut delayed: Vec<(Instant, Command)> = Vec::new();
    // Waited on in every round of the select below: a watch, not `cancel.cancelled()` (see CancelWatch).
    let mut cancelled = holdfast_rt::CancelWatch::new(&cancel);
    // An H2CTermReq was queued in `out`: flush it before closing.
    let mut term = false;

    let error: Option<Error> = 'run: loop {
        // Command timeouts, checked here as well as on the tick: a socket that is always readable would
        // otherwise starve the tick branch of the biased select below.
        let now = Instant::now();
        if now >= next_check {
            next_check = now + TIMEOUT_CHECK;
            tick.reset(next_check);
            if let Some(e) = timed_out(&slots, &p) {
                break Some(e);
            }
        }
        // Retries whose delay has passed go first.
        if !delayed.is_empty() {
            let mut i = 0;
            while i < delayed.len() {
                if delayed[i].0 <= now {
                    backlog.push_front(delayed.swap_remove(i).1);
                } else {
                    i += 1;
                }
            }
        }
        let next_retry = delayed.iter().map(|d| d.0).min();
        // Issue what we can: set-up commands (Connect, enable, ...) first; once the queue is opened,
        // re-issued commands, then new ones.
        let is_open = *open.borrow();
        let mut issue =
            Issue { p: &p, slots: &mut slots, free: &mut free, gens: &mut gens, out: &mut out, seq: &mut seq, now };
        while !issue.free.is_empty() {
            let setup = setup_backlog.pop_front().or_else(|| if setup_open { setup_rx.try_recv() } else { None });
            let cmd = match setup {
                Some(c) => c,
                None if !is_open => break,
                None => match backlog.pop_front() {
                    Some(c) => c,
                    None => {
                        // As many new commands as there are free slots, issued from where they were taken (each
                        // finds a free slot). Taken without waiting: the select below waits on the channel
                        // whenever slots are free.
                        match rx.try_recv_many(&mut intake, issue.free.len()) {
                            None => {
                                rx_open = false;
                                break;
                            }
                            Some(0) => break,
                            Some(_) => {
                                while let Some(cmd) = intake.pop_front() {
                                    match issue.command(cmd) {
                                        Ok(Some(i)) => last_slot = i,
                                        Ok(None) => {}
                                        Err(cmd) => backlog.push_back(*cmd),
                                    }
                                }
                                continue;
                            }
                        }
                    }
                },
            };
            match issue.command(cmd) {
                Ok(Some(i)) => last_slot = i,
                Ok(None) => {}
                Err(cmd) => {
                    backlog.push_front(*cmd);
                    break;
                }
            }
        }
        // What was just queued goes out now if the socket takes it, not after one more round of the select.
        let waiting = out.len();
        if let Err(e) = holdfast_rt::try_write_some(&wr, &mut out, &p.poll, conn_id) {
            break Some(Error::Transport { addr: p.addr.clone(), qid: p.qid, io: e });
        }
        written += (waiting - out.len()) as u64;
        if !rx_open
            && free.len() == depth
            && backlog.is_empty()
            && setup_backlog.is_empty()
            && delayed.is_empty()
            && out.is_empty()
        {
            break None;
        }
        // Commands just completed, with busy polling on: let their callers (on this thread) run now, then go round
        // again to issue what they submitted, instead of waiting for it in the select below, which registers with
        // every source it waits on only to be woken by the submission (at 4 KiB QD1, about 900 instructions per
        // I/O). The callers have run, so a spin that follows needs no yield of its own. Not only on a queue that
        // has the poller to itself: with many queues each completes a few commands at a time, and the select
        // that waited for their callers was a third of its rounds (64 controllers x 4 queues at QD 4).
        if std::mem::take(&mut completed) && p.poll.is_some() {
            // A queue that keeps completing and spinning never reaches the select: see to its cancellation
            // here (the tick's timeout check and the retries are seen to at the top of the loop).
            if cancelled.fired() {
                break Some(Error::NotConnected(format!("queue {} closed by the controller", p.qid)));
            }
            yielded_for_spin = true;
            holdfast_rt::yield_to_tasks(current_thread).await;
            continue;
        }
        // One command outstanding (the one issued last, and not a held AER) and nothing to send: if this queue
        // has the busy poller to itself, wait for the answer on the socket itself for a while. First let the
        // runtime run the callers of commands just completed (they share this thread and may have more to
        // submit): yield once (unless the completions above just did), and spin only if that changed nothing.
        let mut read = None;
        let spin = out.is_empty()
            && depth - free.len() == 1
            && delayed.is_empty()
            && holdfast_rt::solo(&p.poll, conn_id)
            && slots[last_slot].as_ref().is_some_and(|f| !f.cmd.long_lived(p.qid));
        if !spin {
            yielded_for_spin = false;
        } else if !yielded_for_spin {
            yielded_for_spin = true;
            holdfast_rt::yield_to_tasks(current_thread).await;
            continue;
        } else {
            yielded_for_spin = false;
            holdfast_rt::restart_if_empty(&mut inbuf);
            let max = read_cap(&slots);
            read = holdfast_rt::spin_read(rd.as_ref(), &mut inbuf, recv_hint, max, holdfast_rt::spin_budget(&p.poll))
                .transpose();
        }
        if read.is_none() {
            tokio::select! {
                biased;
                _ = &mut cancelled => break Some(Error::NotConnected(format!("queue {} closed by the controller", p.qid))),
                r = holdfast_rt::write_some(&mut wr, &out), if !out.is_empty() => match r {
                    Ok(n) => {
                        out.advance(n);
                        written += n as u64;
                        holdfast_rt::touch(&p.poll, conn_id);
                    }
                    Err(e) => break Some(Error::Transport { addr: p.addr.clone(), qid: p.qid, io: e }),
                },
                r = async {
                    // Room for a whole data PDU of the size seen lately, so that it lands contiguous without
                    // being moved when the decoder sees its header.
                    holdfast_rt::restart_if_empty(&mut inbuf);
                    holdfast_rt::reserve_for_read(&mut inbuf, recv_hint);
                    rd.read_buf(&mut bytes::BufMut::limit(&mut inbuf, read_cap(&slots))).await
                } => read = Some(r),
                // New commands: taken at the top of the loop, as many as there are free slots.
                more = std::future::poll_fn(|cx| rx.poll_ready(cx)), if is_open && rx_open && !free.is_empty() && backlog.is_empty() => {
                    rx_open = more;
                }
                c = setup_rx.recv(), if setup_open && !free.is_empty() => match c {
                    Some(c) => setup_backlog.push_back(c),
                    None => setup_open = false,
                },
                r = open.changed(), if !is_open => {
                    if r.is_err() {
                        break Some(Error::NotConnected(format!("queue {} set-up abandoned", p.qid)));
                    }
                }
                // In an async block: select! builds every branch's future each round, enabled or not, and a
                // Sleep takes a handle to the runtime when built.
                _ = async { tokio::time::sleep_until(next_retry.unwrap_or(now).into()).await }, if next_retry.is_some() => {}
                _ = std::future::poll_fn(|cx| tick.poll_expired(cx)) => {
                    next_check = Instant::now() + TIMEOUT_CHECK;
                    tick.reset(next_check);
                    if let Some(e) = timed_out(&slots, &p) {
                        break Some(e);
                    }
                }
            }
        }
        if let Some(r) = read {
            match r {
                Ok(0) => {
                    break Some(Error::Transport {
                        addr: p.addr.clone(),
                        qid: p.qid,
                        io: std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "connection closed by the target"),
                    })
                }
                Ok(_) => holdfast_rt::touch(&p.poll, conn_id),
                Err(e) => break Some(Error::Transport { addr: p.addr.clone(), qid: p.qid, io: e }),
            }
            let free_before = free.len();
            loop {
                match decoder.decode(&mut inbuf) {
                    Ok(Some(pdu)) => {
                        if let Pdu::C2HData(d) = &pdu {
                            recv_hint = recv_hint.max((d.data.len() + 1024).min(MAX_RECV_HINT));
                        }
                        let raw = decoder.last_header();
                        if let Err(f) =
                            handle_pdu(pdu, raw, &p, &mut slots, &gens, &mut free, &mut out, written, &mut delayed)
                        {
                            break 'run Some(fault(f, &p, &mut out, &mut term));
                        }
                    }
                    Ok(None) => break,
                    Err(DecodeError::Fatal(f)) => {
                        // Tell the controller why we give up on the connection (H2CTermReq), then go. Queued
                        // behind what `out` holds (written straight to the socket, it could land inside a PDU
                        // partly written) and flushed on the way out.
                        // (None in answer to a malformed C2HTermReq: the connection just ends.)
                        let t = pdu::TermReq { fes: f.fes as u16, fei: f.fei, data: f.header.clone() };
                        let term_req = (!f.close_silently).then_some(t);
                        let error = Error::Protocol { qid: p.qid, what: format!("malformed PDU from the target: {f}") };
                        break 'run Some(fault(Fault { error, term: term_req }, &p, &mut out, &mut term));
                    }
                    Err(DecodeError::DataDigest { pdu, expected, received }) => {
                        // The framing is intact; one command's data is corrupt. Take the PDU as usual
                        // (offsets, SUCCESS flag) and have the command issued again when it completes.
                        let Pdu::C2HData(d) = *pdu else {
                            break 'run Some(Error::Protocol {
                                qid: p.qid,
                                what: format!("data digest mismatch on a {:?} PDU", pdu.pdu_type()),
                            });
                        };
                        tracing::warn!(
                            qid = p.qid,
                            "data digest mismatch on C2HData for command {} (computed {expected:#010x}, \
                             received {received:#010x}): its data is dropped and the command issued again",
                            d.cccid
                        );
                        if let Some(i) = slot_of(&slots, &gens, d.cccid) {
                            if let Some(f) = slots[i].as_mut() {
                                f.bad_data = true;
                            }
                        }
                        let raw = decoder.last_header();
                        if let Err(f) = handle_pdu(
                            Pdu::C2HData(d),
                            raw,
                            &p,
                            &mut slots,
                            &gens,
                            &mut free,
                            &mut out,
                            written,
                            &mut delayed,
                        ) {
                            break 'run Some(fault(f, &p, &mut out, &mut term));
                        }
                    }
                }
            }
            completed = free.len() > free_before;
        }
    };
    let mut pending: Vec<InFlight> = slots.into_iter().flatten().collect();
    if error.is_some() {
        for f in pending.iter_mut().filter(|f| !f.cmd.long_lived(p.qid)) {
            f.cmd.losses = f.cmd.losses.saturating_add(1);
        }
    }
    if matches!(error, Some(Error::Timeout { .. })) {
        for f in pending.iter_mut().filter(|f| !f.cmd.long_lived(p.qid) && f.started.elapsed() > p.io_timeout) {
            f.cmd.timeouts = f.cmd.timeouts.saturating_add(1);
        }
    }
    pending.sort_by_key(|f| f.seq);
    let mut pending: Vec<Command> = pending.into_iter().map(|f| f.cmd).collect();
    pending.extend(setup_backlog);
    pending.extend(backlog);
    pending.extend(delayed.into_iter().map(|(_, c)| c));
    // A command that is never issued again (a set-up command of a (re)connect attempt, a Keep Alive, an event
    // request, an admin command that is not idempotent) fails now if this queue failed of itself: a set-up
    // waits on its answer, and the supervisor, which fails such commands too, reads this exit only once the
    // attempt has ended, so the attempt would wait out its whole deadline (the rest of ctrl_loss_tmo) for a
    // connection already gone. Not when the controller closed the queue: the supervisor then fails them with
    // the loss's own cause.
    if let (Some(e), false) = (&error, cancelled.fired()) {
        let (keep, once): (Vec<Command>, Vec<Command>) = pending.into_iter().partition(|c| c.reissuable(p.qid));
        pending = keep;
        for c in once {
            let e = Error::PathError(format!("{} was in flight when the connection dropped ({e})", c.name(p.qid)));
            c.fail(e);
        }
    }
    if term {
        // The termination request goes after what is queued ahead of it (a PDU may be partly written), for
        // as long as the target reads.
        let _ = tokio::time::timeout(TERM_FLUSH, async {
            while !out.is_empty() {
                match holdfast_rt::write_some(&mut wr, &out).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => out.advance(n),
                }
            }
        })
        .await;
    }
    let _ = wr.shutdown().await;
    if p.closing.is_cancelled() {
        linger(&mut rd).await;
    }
    QueueExit { rx, pending, error }
}

/// Slots (commands outstanding at once) a queue has at most: a CID is its slot in the low 12 bits and the
/// slot's generation in the high 4, as the Linux host builds it (`nvme_cid`), so that a PDU a target sends for
/// a command already completed (a target bug) is refused instead of landing in the next command given the
/// same slot.
const CID_SLOTS: usize = 1 << 12;

/// The slot of CID `cid`, if a command with that CID is outstanding (slot taken, generation current).
fn slot_of(slots: &[Option<InFlight>], gens: &[u8], cid: u16) -> Option<usize> {
    let i = (cid as usize) & (CID_SLOTS - 1);
    (slots.get(i).is_some_and(Option::is_some) && gens[i] == (cid >> 12) as u8).then_some(i)
}

/// Issuing commands: a free slot and its next CID, the capsule encoded into the send queue, the in-flight record.
struct Issue<'a> {
    p: &'a QueueParams,
    slots: &'a mut [Option<InFlight>],
    free: &'a mut Vec<u16>,
    /// Each slot's generation: the high 4 bits of the CID it was last issued with ([`CID_SLOTS`]).
    gens: &'a mut [u8],
    out: &'a mut SendQueue,
    seq: &'a mut u64,
    now: Instant,
}

impl Issue<'_> {
    /// Issue `cmd`: `Ok(Some(slot))`, or `Ok(None)` if its caller gave up on it (dropped), or `Err(cmd)` back if
    /// no slot is free (callers issue only with one free: not on the I/O path).
    fn command(&mut self, mut cmd: Command) -> Result<Option<usize>, Box<Command>> {
        if cmd.reply.is_closed() {
            return Ok(None);
        }
        if cmd.fused.is_some() {
            // A fused operation takes two slots at once, its commands back to back.
            if self.slots.len() < 2 {
                let e = Error::Invalid(format!(
                    "a fused operation needs two entries of queue {}, which has one",
                    self.p.qid
                ));
                cmd.fail(e);
                return Ok(None);
            }
            if self.free.len() < 2 {
                return Err(Box::new(cmd));
            }
        }
        // Only a command without a second can find no free slot, so none is lost with a refusal here.
        let second = cmd.fused.take();
        let first = self.issue(cmd)?;
        match second {
            Some(second) => Ok(self.issue(*second)?.or(first)),
            None => Ok(first),
        }
    }

    /// [`Issue::command`] for a command that has a free slot (checked by the caller).
    fn issue(&mut self, cmd: Command) -> Result<Option<usize>, Box<Command>> {
        let Some(i) = self.free.pop() else { return Err(Box::new(cmd)) };
        let i = i as usize;
        self.gens[i] = (self.gens[i] + 1) & 0xF;
        let cid = (self.gens[i] as u16) << 12 | i as u16;
        let h2c_end = encode_command(self.out, self.p, cid, &cmd);
        *self.seq += 1;
        // Assigned through a reference to the slot: assigned to `self.slots[i]` directly (or from a local),
        // the record was built on the stack and all 208 bytes copied in (objdump); this way about 140 are.
        let slot = &mut self.slots[i];
        *slot = Some(InFlight {
            buf: Reassembly::Empty,
            cmd,
            started: self.now,
            seq: *self.seq,
            bad_data: false,
            h2c_end,
            c2h_done: false,
            r2t_sent_at: 0,
        });
        Ok(Some(i))
    }
}

/// How long a queue closed by an orderly shutdown waits for the target to close its side.
///
/// After our FIN a target still completes what it held (the Linux target aborts the outstanding
/// Asynchronous Event Requests); a socket already closed here would answer those bytes with a RST. So the
/// queue reads (and drops) until the target's FIN, for at most this long.
pub const LINGER: Duration = Duration::from_secs(2);

async fn linger(rd: &mut tokio::net::tcp::OwnedReadHalf) {
    let mut scratch = vec![0u8; 4096];
    let _ = tokio::time::timeout(LINGER, async {
        while let Ok(n) = rd.read(&mut scratch).await {
            if n == 0 {
                break;
            }
        }
    })
    .await;
}

/// How long a queue that ends over a protocol error tries to send what it queued ahead of its H2CTermReq,
/// and the request itself.
const TERM_FLUSH: Duration = Duration::from_millis(200);

/// The error a queue ends with for `f`; its H2CTermReq, if any, queued in `out` (`term` set).
fn fault(f: Fault, p: &QueueParams, out: &mut SendQueue, term: &mut bool) -> Error {
    if let Some(t) = f.term {
        tracing::debug!(qid = p.qid, "{}; sending H2CTermReq (FES {:#x}, FEI {:#x})", f.error, t.fes, t.fei);
        Pdu::H2CTermReq(t).encode(&p.framing, out.header_buf());
        *term = true;
    }
    f.error
}

/// Most free receive space kept ahead of a read (bounds memory per queue).
const MAX_RECV_HINT: usize = 512 * 1024;

/// How often outstanding commands are checked against the command timeout.
const TIMEOUT_CHECK: Duration = Duration::from_millis(250);

/// The timeout error if the oldest outstanding command (Asynchronous Event Requests aside) is overdue.
fn timed_out(slots: &[Option<InFlight>], p: &QueueParams) -> Option<Error> {
    let oldest = slots.iter().flatten().filter(|f| !f.cmd.long_lived(p.qid)).min_by_key(|f| f.started)?;
    (oldest.started.elapsed() > p.io_timeout).then(|| Error::Timeout {
        what: format!("{} (queue {}, no completion)", oldest.cmd.name(p.qid), p.qid),
        after: p.io_timeout,
    })
}

/// Encode `cmd`'s capsule with CID `cid`; returns how much of its data went in the capsule.
fn encode_command(out: &mut SendQueue, p: &QueueParams, cid: u16, cmd: &Command) -> u32 {
    let mut sqe = cmd.sqe;
    sqe.cid.set(cid);
    // SGLs for data; PSDT must say so (NVMe-oF 1.1 §2.1).
    sqe.flags = (sqe.flags & !0xC0) | holdfast_proto::sqe::PSDT_SGL;
    let n = cmd.data_out.len();
    // Fabrics commands (the I/O queue's Connect, whose 1 KiB of data a controller with a small IOCCSZ would
    // otherwise fetch with an R2T) get the 8 KiB every queue accepts for them, as the admin queue's commands
    // do (NVMe/TCP 1.0 §3.3.3; the Linux host does the same).
    let limit = if sqe.opcode == holdfast_proto::opcode::FABRICS {
        p.max_incapsule.max(crate::controller::ADMIN_INCAPSULE)
    } else {
        p.max_incapsule
    };
    if n > 0 && n <= limit {
        sqe.dptr = SglDescriptor::incapsule(n as u32);
        pdu::encode_capsule_cmd_header(out.header_buf(), &p.framing, &sqe, n);
        out.push_data(cmd.data_out.clone());
        if p.framing.ddgst {
            out.header_buf().extend_from_slice(&digest_bytes(&cmd.data_out));
        }
        n as u32
    } else {
        let len = if n > 0 { n } else { cmd.data_in_len() };
        sqe.dptr = SglDescriptor::transport(len as u32);
        pdu::encode_capsule_cmd_header(out.header_buf(), &p.framing, &sqe, 0);
        0
    }
}

/// An Authentication Send / Receive's Receive (a fabrics command, FCTYPE 06h).
fn is_auth_receive(sqe: &SubmissionEntry) -> bool {
    sqe.opcode == holdfast_proto::opcode::FABRICS && sqe.fctype() == holdfast_proto::opcode::fctype::AUTH_RECEIVE
}

fn protocol(qid: u16, what: impl Into<String>) -> Error {
    Error::Protocol { qid, what: what.into() }
}

/// Why [`handle_pdu`] gave up on the connection.
struct Fault {
    /// What the queue ends with.
    error: Error,
    /// For a PDU the controller got wrong in a way only its receiver can tell (an R2T for data not
    /// outstanding): the H2CTermReq that says so, with the Fatal Error Status and the offending PDU's header
    /// (NVMe/TCP 1.0, H2CTermReq PDU; as SPDK's host does for a bad R2T), queued behind what is already in
    /// the send queue and flushed before the connection closes.
    term: Option<pdu::TermReq>,
}

impl From<Error> for Fault {
    fn from(error: Error) -> Fault {
        Fault { error, term: None }
    }
}

/// A command the controller just completed with `status`: if it is to be issued again (a retryable status, or
/// data that failed its digest, within [`MAX_STATUS_RETRIES`] for a replayable command), queue it in `delayed`
/// and return None; else return it to be completed. A command whose data failed its digest and that cannot be
/// retried is completed here, with the error.
fn retry_or_keep(
    f: InFlight,
    status: Status,
    p: &QueueParams,
    delayed: &mut Vec<(Instant, Command)>,
) -> Option<InFlight> {
    // The controller's status decides first (a failure with DNR is final, corrupt data or not); corrupt data
    // under a successful status is a transport fault. Only I/O is retried: admin commands are the caller's.
    let retryable = if status.is_success() { f.bad_data } else { !status.dnr() };
    let delay = match status.crd() {
        0 => Duration::ZERO,
        n => Duration::from_millis(100 * p.crdt[(n as usize - 1).min(2)] as u64),
    };
    let may_retry = retryable && p.qid != 0 && f.cmd.replayable && f.cmd.retries < MAX_STATUS_RETRIES;
    if status.code() == Status::ANA_TRANSITION && !p.anatt.is_zero() && retryable && p.qid != 0 && f.cmd.replayable {
        if let Some(delay) = ana_transition_delay(p.anatt, f.cmd.ana_waits) {
            let mut cmd = f.cmd;
            cmd.ana_waits += 1;
            tracing::debug!(qid = p.qid, "{} met an ANA transition: again in {delay:?}", cmd.name(p.qid));
            delayed.push((Instant::now() + delay, cmd));
            return None;
        }
        tracing::warn!(
            qid = p.qid,
            "{}: its namespace's ANA group is still in transition after twice ANATT ({:?}): failed",
            f.cmd.name(p.qid),
            p.anatt
        );
        return Some(f);
    }
    if may_retry && delay > p.io_timeout {
        tracing::debug!(
            qid = p.qid,
            "{} failed ({status}) with a retry delay of {delay:?}, longer than the I/O timeout: not retried",
            f.cmd.name(p.qid)
        );
    } else if may_retry {
        let mut cmd = f.cmd;
        cmd.retries += 1;
        let why = if status.is_success() { "data digest mismatch".to_string() } else { status.to_string() };
        tracing::debug!(
            qid = p.qid,
            "{} failed ({why}), which may be retried: again in {delay:?} (retry {})",
            cmd.name(p.qid),
            cmd.retries
        );
        delayed.push((Instant::now() + delay, cmd));
        return None;
    }
    if f.bad_data && status.is_success() {
        let what = format!("{}: data digest mismatch on its data", f.cmd.name(p.qid));
        f.cmd.reply.send(Err(protocol(p.qid, what)));
        return None;
    }
    Some(f)
}

/// Act on one PDU from the controller. `raw` is the header of the PDU as received when it is a C2HData or an
/// R2T ([`PduDecoder::last_header`]), for the termination request that refuses it.
#[allow(clippy::too_many_arguments)]
fn handle_pdu(
    pdu: Pdu,
    raw: &[u8],
    p: &QueueParams,
    slots: &mut [Option<InFlight>],
    gens: &[u8],
    free: &mut Vec<u16>,
    out: &mut SendQueue,
    written: u64,
    delayed: &mut Vec<(Instant, Command)>,
) -> Result<(), Fault> {
    // A PDU the controller got wrong in a way only we can tell ends the connection with an H2CTermReq that says
    // which field (NVMe/TCP 1.0 §3.6.2.2, H2CTermReq; SPDK's host answers the same cases so), with the offending
    // PDU's header as its data: as received (digest included) for a C2HData or an R2T; for a CapsuleResp (the
    // decoder does not keep capsule headers) encoded again with the connection's framing, which gives the bytes
    // received (digest included) but for reserved bits of its flags.
    let term = |header: Bytes, fes: Fes, fei: u32, error: Error| Fault {
        error,
        term: Some(pdu::TermReq { fes: fes as u16, fei, data: header }),
    };
    let received = || Bytes::copy_from_slice(raw);
    let not_outstanding = |cid: u16| protocol(p.qid, format!("PDU for command {cid:#06x}, which is not outstanding"));
    match pdu {
        Pdu::CapsuleResp(r) => {
            let Some(i) = slot_of(slots, gens, r.cqe.cid()) else {
                let mut h = BytesMut::new();
                pdu::encode_capsule_resp(&mut h, &p.framing, &r.cqe);
                let h = h.freeze();
                return Err(term(h, Fes::InvalidHeaderField, pdu::offset::RESP_CID, not_outstanding(r.cqe.cid())));
            };
            if let Some(f) = slots[i].take() {
                free.push(i as u16);
                // The common case (success, all the data, nothing to retry) answered at once: the in-flight
                // record (a few hundred bytes) is not passed through the retry check and back.
                let asked = f.h2c_end as usize;
                if r.cqe.status().is_success()
                    && !f.bad_data
                    && f.buf.len() == f.cmd.data_in_len()
                    && asked == f.cmd.data_out.len()
                {
                    let transferred = f.buf.len();
                    f.cmd.reply.send(Ok(Completion { cqe: r.cqe, data: f.buf.into_bytes(), transferred }));
                    return Ok(());
                }
                let Some(f) = retry_or_keep(f, r.cqe.status(), p, delayed) else { return Ok(()) };
                let (want, transferred) = (f.cmd.data_in_len(), f.buf.len());
                let result = if r.cqe.status().is_success() && asked < f.cmd.data_out.len() {
                    // A successful write whose data the controller never asked for in full is not done: it
                    // completes a command only after its data transfer (NVMe/TCP 1.0 §3.3.2, §3.6.2.8).
                    Err(protocol(
                        p.qid,
                        format!(
                            "{} completed successfully with {asked} of its {} bytes of data asked for",
                            f.cmd.name(p.qid),
                            f.cmd.data_out.len()
                        ),
                    ))
                } else if !r.cqe.status().is_success() || f.buf.len() == want {
                    Ok(Completion { cqe: r.cqe, data: f.buf.into_bytes(), transferred })
                } else if (p.qid == 0 && f.cmd.sqe.opcode != holdfast_proto::opcode::admin::IDENTIFY)
                    || is_auth_receive(&f.cmd.sqe)
                {
                    // An admin command (Get Log Page) that transferred less than asked: the rest of the page
                    // reads as zeroes (reserved or absent), as a shorter page would, and `transferred` says
                    // where the controller stopped (the library's own log readers go by it). Not an Identify:
                    // its data structure is always 4096 bytes, and one cut short would read as a structure with
                    // zero fields (no LBA formats, no queues) and fail later for a reason it does not have.
                    // An Authentication Receive, on any queue: its message says how long it is, and a
                    // controller may send just that of the allocation length.
                    tracing::debug!(qid = p.qid, "{} returned {transferred} of {want} bytes", f.cmd.name(p.qid));
                    Ok(Completion { cqe: r.cqe, data: f.buf.into_padded(want), transferred })
                } else {
                    // A successful read that did not deliver its data must not look like data.
                    Err(protocol(
                        p.qid,
                        format!(
                            "{} completed successfully with {} of {want} bytes of data",
                            f.cmd.name(p.qid),
                            f.buf.len()
                        ),
                    ))
                };
                f.cmd.reply.send(result);
            }
        }
        Pdu::C2HData(d) => {
            let Some(i) = slot_of(slots, gens, d.cccid) else {
                return Err(term(
                    received(),
                    Fes::InvalidHeaderField,
                    pdu::offset::DATA_CCCID,
                    not_outstanding(d.cccid),
                ));
            };
            let Some(f) = slots[i].as_mut() else { return Ok(()) };
            // In order and without gaps (DATAO where the last one ended), within the command's data, and not
            // after the PDU that said it was the last.
            let bad = if f.c2h_done {
                Some((Fes::SequenceError, 0))
            } else if d.datao as usize + d.data.len() > f.cmd.data_in_len() {
                Some((Fes::DataOutOfRange, 0))
            } else if d.datao as usize != f.buf.len() {
                Some((Fes::InvalidHeaderField, pdu::offset::DATA_DATAO))
            } else {
                None
            };
            if let Some((fes, fei)) = bad {
                let what = if f.c2h_done { "after its last C2HData" } else { "out of range" };
                let error = protocol(
                    p.qid,
                    format!(
                        "C2HData {what} for command {} (offset {}, {} bytes; {} of {} bytes received)",
                        d.cccid,
                        d.datao,
                        d.data.len(),
                        f.buf.len(),
                        f.cmd.data_in_len()
                    ),
                );
                return Err(term(received(), fes, fei, error));
            }
            // SUCCESS: the command completed successfully and no CapsuleResp follows (§3.6.2.6); only on the
            // last PDU of all the data.
            if d.success && (!d.last || f.buf.len() + d.data.len() != f.cmd.data_in_len()) {
                let error = protocol(p.qid, "C2HData SUCCESS flag before all data arrived");
                return Err(term(received(), Fes::InvalidHeaderField, pdu::offset::FLAGS, error));
            }
            let success = d.success;
            f.c2h_done = d.last;
            f.buf.push(d.data, f.cmd.data_in_len());
            if success {
                if let Some(f) = slots[i].take() {
                    free.push(i as u16);
                    let Some(f) = retry_or_keep(f, Status::SUCCESS, p, delayed) else { return Ok(()) };
                    let cqe = CompletionEntry::new(d.cccid, Status::SUCCESS, 0);
                    let transferred = f.buf.len();
                    f.cmd.reply.send(Ok(Completion { cqe, data: f.buf.into_bytes(), transferred }));
                }
            }
        }
        Pdu::R2T(r) => {
            let Some(i) = slot_of(slots, gens, r.cccid) else {
                return Err(term(
                    received(),
                    Fes::InvalidHeaderField,
                    pdu::offset::DATA_CCCID,
                    not_outstanding(r.cccid),
                ));
            };
            let Some(f) = slots[i].as_mut() else { return Ok(()) };
            let (o, l) = (r.r2to as usize, r.r2tl as usize);
            // Each byte is sent once: an R2T asks for data past what was sent (in the capsule or for an
            // earlier R2T), within the command's data. Anything else (a repeated or overlapping R2T, one for
            // in-capsule data) would have the same data queued again for every copy the target sends.
            let bad = if l == 0 {
                Some((Fes::InvalidHeaderField, pdu::offset::DATA_DATAL, "for no data"))
            } else if o + l > f.cmd.data_out.len() {
                Some((Fes::DataOutOfRange, 0, "beyond the command's data"))
            } else if o < f.h2c_end as usize {
                Some((Fes::InvalidHeaderField, pdu::offset::DATA_DATAO, "for data already sent"))
            } else if f.r2t_sent_at > written {
                // The data for its previous R2T is not all sent yet: this is a second R2T outstanding at once
                // (NVMe/TCP 1.0, ICReq MAXR2T; H2CTermReq FES 05h R2T Limit Exceeded, FEI reserved), as the
                // Linux host refuses an R2T while H2CData is pending.
                Some((Fes::DataLimitExceeded, 0, "while the data for its previous R2T is still being sent"))
            } else {
                None
            };
            if let Some((fes, fei, why)) = bad {
                let error = protocol(
                    p.qid,
                    format!(
                        "R2T {why} for {} (command {}: offset {o}, {l} bytes; {} of {} bytes already sent)",
                        f.cmd.name(p.qid),
                        r.cccid,
                        f.h2c_end,
                        f.cmd.data_out.len()
                    ),
                );
                return Err(term(received(), fes, fei, error));
            }
            f.h2c_end = (o + l) as u32;
            // Answer with H2CData PDUs of at most MAXH2CDATA (§3.6.2.8).
            let mut off = o;
            while off < o + l {
                let n = (o + l - off).min(p.maxh2cdata.max(4096));
                let last = off + n == o + l;
                let fl = if last { flags::LAST_PDU } else { 0 };
                let chunk = f.cmd.data_out.slice(off..off + n);
                out.push_data_pdu(&p.framing, PduType::H2CData, fl, r.cccid, r.ttag, off as u32, chunk, 0);
                off += n;
            }
            f.r2t_sent_at = written + out.len() as u64;
        }
        Pdu::C2HTermReq(t) => {
            let fes = Fes::from_u16(t.fes).map(|f| f.name()).unwrap_or("unknown error");
            return Err(protocol(
                p.qid,
                format!("the target terminated the connection: {fes} (FES {:#x}, FEI {:#x})", t.fes, t.fei),
            )
            .into());
        }
        other => return Err(protocol(p.qid, format!("unexpected {:?} PDU", other.pdu_type())).into()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_ana_transition_is_waited_out_for_twice_anatt() {
        let ms = |v| Duration::from_millis(v);
        let anatt = Duration::from_secs(10);
        let steps: Vec<_> = (0..6).map(|w| ana_transition_delay(anatt, w).unwrap()).collect();
        assert_eq!(steps, vec![ms(100), ms(200), ms(400), ms(800), ms(1000), ms(1000)]);
        // 1.5 s in four waits, then a second each: 19.5 s after 22 waits, 20.5 s after 23.
        assert_eq!(ana_transition_delay(anatt, 22), Some(ms(1000)));
        assert_eq!(ana_transition_delay(anatt, 23), None);
        // No ANA (ANATT 0): not waited at all.
        assert_eq!(ana_transition_delay(Duration::ZERO, 0), None);
    }
}
