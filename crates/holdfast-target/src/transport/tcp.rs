//! The NVMe/TCP transport (NVMe/TCP Transport Specification 1.0): a listener per port and one task per
//! connection (= one queue). The task owns its socket, its receive and send buffers and its commands; it
//! reads in batches (one read, every PDU in it decoded), writes in batches (every PDU produced goes into one
//! send buffer), and never takes a lock shared with other queues on the I/O path.

use super::admission;
use crate::cmd::{self, check_sgl};
use crate::controller::{AerCompletion, MAX_QUEUE_ENTRIES};
use crate::request::{DataDir, Exec, FusedOutcome, Outcome, QueueCtx, Request, Response};
use crate::subsystem::{Port, Target};
use bytes::{Bytes, BytesMut};
use holdfast_proto::decoder::{peek_capsule_sqes, DecodeError, Fatal, Limits, PduDecoder, Role};
use holdfast_proto::fabrics::SQHD_FLOW_DISABLED;
use holdfast_proto::pdu::{self, flags, ControllerIcParams, Fes, Framing, Pdu, PduType, TermReq, R2T};
use holdfast_proto::sqe::{FUSE_FIRST, FUSE_SECOND};
use holdfast_proto::{CompletionEntry, Reassembly, SendQueue, Status};
use rustc_hash::FxHashMap;
use std::collections::VecDeque;
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// MAXH2CDATA we advertise in ICResp.
pub const MAXH2CDATA: u32 = 128 * 1024;
/// Log a connection closed for want of what the peer was to send: a peer may open connections and send
/// nothing, as many as it likes, so the line is within the limit of peer-caused lines (peer_log), at info.
/// Out of line: the connection's loop is the I/O path.
#[cold]
#[inline(never)]
fn log_closing(peer: std::net::SocketAddr, why: &str) {
    if crate::peer_log::allow() {
        tracing::info!(%peer, "closing the connection: {why}");
    }
}

/// In-capsule data accepted on the admin queue (NVMe/TCP 1.0 §3.3.3: 8 KiB).
pub const ADMIN_INCAPSULE: usize = 8192;
/// In-capsule data accepted on I/O queues; IOCCSZ = (64 + this) / 16.
pub const IO_INCAPSULE: usize = 16384;
/// Largest C2HData PDU we send.
const MAX_C2H_PDU: usize = 128 * 1024;
/// Bytes of write data held per queue, solicited (R2T sent, H2CData not yet all in) or received and not yet
/// written (a file namespace's I/O threads run it): bounds write memory per connection. One transfer (at most
/// MDTS) is always allowed when none is held.
const R2T_BUDGET: usize = 2 << 20;
/// Send high-water mark: while this much is waiting to be sent, or will be once reads running elsewhere (a
/// file namespace's I/O threads) finish, no further PDU is decoded (those already received wait in the
/// receive buffer) and nothing more is read from the socket. Bounds what a host that pipelines large reads
/// and does not read its socket can make the target hold.
const SEND_HIGH_WATER: usize = 8 << 20;
/// How long a connection whose Disconnect was answered waits for the host to read the answer before closing.
const DISCONNECT_LINGER: Duration = Duration::from_secs(2);
/// Receive buffer's initial size. Larger PDUs grow it (the decoder reserves a whole PDU once its header is
/// in); the space is reused once the PDUs split off it are dropped.
const RECV_CHUNK: usize = 64 * 1024;
/// Free space made in the receive buffer before every socket read (direct or through the runtime).
const READ_MIN_FREE: usize = RECV_CHUNK / 4;
/// Commands looked ahead at for [`Connection::prefetch`]: a batch of reads, more than the lines a core keeps
/// in flight.
const PREFETCH_MAX: usize = 32;
/// Time a new connection has to send its ICReq.
const IC_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a connection has, from its ICReq, to bind its queue with a Connect that succeeds: Connect is the
/// first command on a queue and nothing else runs before it (NVMe-oF 1.1 §3.3), so a connection without
/// one after this long is closed rather than held forever.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// Time a queue that must authenticate (DH-HMAC-CHAP) has, from its Connect, to finish the exchange: like
/// the bounds before Connect, a peer that stops half way does not hold the queue (and its controller) open.
pub const AUTH_TIMEOUT: Duration = Duration::from_secs(10);
/// Accept connections on `listener` until `shutdown`.
pub async fn serve(target: Arc<Target>, port: Port, listener: TcpListener, shutdown: CancellationToken) {
    loop {
        tokio::select! {
            _ = shutdown.cancelled() => return,
            r = listener.accept() => match r {
                Ok((stream, peer)) => {
                    let Some(unbound) = target.unbound.admit(peer.ip()) else {
                        crate::peer_log::peer_warn!(
                            %peer,
                            "connection closed at once: too many connections without an NVM controller ({} from this \
                             address, limit {}; {} in all, limit {})",
                            target.unbound.count_from(peer.ip()),
                            crate::transport::admission::MAX_UNBOUND_PER_ADDR,
                            target.unbound.count(),
                            crate::transport::admission::MAX_UNBOUND
                        );
                        continue;
                    };
                    tracing::debug!(%peer, port = port.id, "connection accepted");
                    let (t, p, s) = (target.clone(), port.clone(), shutdown.clone());
                    tokio::spawn(async move { Connection::run(stream, t, p, s, unbound).await });
                }
                Err(e) => {
                    tracing::warn!("accept failed: {e}");
                    tokio::time::sleep(Duration::from_millis(100)).await;
                }
            }
        }
    }
}

/// Where a command is.
enum Slot {
    /// Waiting for a free R2T buffer.
    Queued(Request),
    /// R2T sent, H2CData arriving; `failed`: the status to fail it with once its data is in (a data digest
    /// error, or the other command of its fused operation failed).
    Receiving { req: Request, buf: Reassembly, failed: Option<Status> },
    /// The first command of a fused operation (NVMe Base 2.0 §3.4.2), with its in-capsule data if any, until
    /// the next capsule on the queue, which must be its second ([`Connection::fused_adjacency`]).
    FusedFirst { req: Request, data: Bytes },
    /// A fused operation's command with all its data, waiting for the other's ([`Connection::fused_ready`]),
    /// holding `r2t` bytes of the R2T budget.
    Fused { req: Request, data: Bytes, r2t: usize },
    /// Executing (or held: an AER), holding `out` bytes of data to send when it completes (a read) and `r2t`
    /// bytes of the R2T budget (a write whose data came by R2T), both given back when it completes.
    Executing { out: usize, r2t: usize },
}

/// Where the queue is in a fused operation's pair of commands: the command after a first must be its second.
#[derive(Clone, Copy, Default)]
enum FusedOpen {
    /// The last capsule was no fused operation's first.
    #[default]
    None,
    /// The last capsule was the first with this CID, held (`Slot::FusedFirst`).
    Waiting(u16),
    /// The last capsule was a first that failed: its second is aborted (Failed Fused Command).
    Failed,
}

/// A Connect command with its data, to be run by [`Connection::connect`].
struct PendingConnect {
    cid: u16,
    req: Request,
    data: Bytes,
}

/// Why a connection ends.
enum Close {
    /// Orderly: EOF, Disconnect, shutdown.
    Normal(&'static str),
    /// Protocol violation: TermReq sent.
    Fatal(Fatal),
    /// Socket error.
    Io(std::io::Error),
}

struct Connection {
    ctx: QueueCtx,
    decoder: PduDecoder,
    framing: Framing,
    out: SendQueue,
    /// Commands that outlive the PDU that brought them (waiting for data, running elsewhere, held), by CID.
    /// A command answered while its capsule is handled never enters. FxHash: keys are 16-bit CIDs chosen by
    /// the host, and at most twice the queue size are tracked (the capsule check below).
    slots: FxHashMap<u16, Slot>,
    r2t_queue: VecDeque<u16>,
    /// Fused operations being assembled: where the last capsule left the queue, and each paired command's
    /// partner (both ways) until the pair runs or one of them fails.
    fused_open: FusedOpen,
    fused: FxHashMap<u16, u16>,
    /// Write data held, solicited or received and running elsewhere ([`R2T_BUDGET`]).
    r2t_bytes: usize,
    /// Data that commands running elsewhere will send when they complete (counted against
    /// [`SEND_HIGH_WATER`] with what already waits in `out`).
    deferred_out: usize,
    sqhd: u16,
    done_tx: mpsc::UnboundedSender<(u16, Response)>,
    aer_rx: Option<mpsc::UnboundedReceiver<AerCompletion>>,
    /// Completes when the controller this queue is bound to is torn down, or (an I/O queue) reset (never before
    /// a Connect binds it).
    ctrl_gone: holdfast_rt::CancelWatch,
    /// While no Connect has bound the queue, or once a Disconnect has been answered, the connection is closed
    /// at this instant: [`IC_TIMEOUT`] from accept, then [`CONNECT_TIMEOUT`] from the ICReq; after a
    /// Disconnect, [`DISCONNECT_LINGER`] from its answer.
    close_deadline: tokio::time::Instant,
    /// No PDU is decoded, nor anything read, while this much (or more) waits to be sent: [`SEND_HIGH_WATER`],
    /// and 0 once a Disconnect has been answered: it deletes the queue (NVMe Base 2.0 §6.4), so nothing the host
    /// sent after it runs, and the connection closes once its response is out.
    stop_decoding_at: usize,
    /// Counts this connection among those without an NVM controller ([`admission`]) until a Connect binds
    /// its queue to one.
    unbound: Option<admission::UnboundGuard>,
    /// Set once the queue has been given back ([`Connection::release`]).
    released: bool,
}

impl Drop for Connection {
    fn drop(&mut self) {
        if !self.released {
            tracing::error!(peer = %self.ctx.peer_addr, qid = self.ctx.qid, "connection task ended without closing its queue (a panic): closing it");
            self.release("the connection's task panicked");
        }
    }
}

fn limits(max_incapsule: usize) -> Limits {
    Limits { max_incapsule: max_incapsule as u32, max_h2c_data: MAXH2CDATA, max_c2h_data: 0 }
}

impl Connection {
    async fn run(
        stream: TcpStream,
        target: Arc<Target>,
        port: Port,
        shutdown: CancellationToken,
        unbound: admission::UnboundGuard,
    ) {
        let _ = stream.set_nodelay(true);
        // A controller whose host asked for no Keep Alive Timer (KATO 0, which NVMe-oF allows and nvmet
        // accepts) and vanished would otherwise hold its CNTLID, queues and admission slot until the target stops.
        let _ = holdfast_rt::set_tcp_keepalive(&stream);
        let (Ok(local_addr), Ok(peer_addr)) = (stream.local_addr(), stream.peer_addr()) else { return };
        let (done_tx, mut done_rx) = mpsc::unbounded_channel();
        let mut c = Connection {
            ctx: QueueCtx::new(target, port, local_addr, peer_addr, ADMIN_INCAPSULE),
            decoder: PduDecoder::new(Role::Controller, limits(ADMIN_INCAPSULE)),
            framing: Framing::default(),
            out: SendQueue::new(),
            slots: FxHashMap::default(),
            r2t_queue: VecDeque::new(),
            fused_open: FusedOpen::None,
            fused: FxHashMap::default(),
            r2t_bytes: 0,
            deferred_out: 0,
            sqhd: 0,
            done_tx,
            aer_rx: None,
            ctrl_gone: holdfast_rt::CancelWatch::never(),
            close_deadline: tokio::time::Instant::now() + IC_TIMEOUT,
            stop_decoding_at: SEND_HIGH_WATER,
            unbound: Some(unbound),
            released: false,
        };
        let (mut rd, mut wr) = stream.into_split();
        let mut inbuf = BytesMut::with_capacity(RECV_CHUNK);
        let poll = c.ctx.target.busy_poll.clone();
        let conn_id = holdfast_rt::connection_id();
        let mut spun = 0u32;
        let mut ic_done = false;
        // Waited on in every round of the select below, as `c.ctrl_gone` is: a watch, not a `cancelled()` future
        // (see CancelWatch).
        let mut stopped = holdfast_rt::CancelWatch::new(&shutdown);
        let close = 'conn: loop {
            // Everything already received, PDU by PDU, until the send queue reaches its high-water mark: the
            // PDUs left in `inbuf` are decoded once the socket has taken enough (never, after a Disconnect).
            let mut held = false;
            loop {
                if c.backlog() >= c.stop_decoding_at {
                    held = true;
                    break;
                }
                match c.decoder.decode(&mut inbuf) {
                    Ok(Some(p)) => {
                        ic_done = true;
                        match c.handle_pdu(p) {
                            Ok(None) => {}
                            Ok(Some(connect)) => c.connect(connect).await,
                            Err(close) => break 'conn close,
                        }
                    }
                    Ok(None) => break,
                    Err(DecodeError::Fatal(f)) => break 'conn Close::Fatal(f),
                    Err(DecodeError::DataDigest { pdu, expected, received }) => {
                        crate::peer_log::peer_warn!(peer = %c.ctx.peer_addr, "data digest mismatch: computed {expected:#x}, received {received:#x}");
                        match c.handle_data_digest_error(*pdu) {
                            Ok(None) => {}
                            Ok(Some(connect)) => c.connect(connect).await,
                            Err(close) => break 'conn close,
                        }
                    }
                }
            }
            // The responses just queued go out now if the socket takes them, not after one more round of the
            // select.
            if let Err(e) = holdfast_rt::try_write_some(&wr, &mut c.out, &poll, conn_id) {
                break Close::Io(e);
            }
            if c.ctx.close_after_response && c.out.is_empty() {
                break Close::Normal("Disconnect");
            }
            // Decoding stopped at the high-water mark and the socket has taken enough since: go on with what is
            // waiting in `inbuf` (each round decodes at least one PDU, or finds none left and clears `held`).
            if held && c.backlog() < c.stop_decoding_at {
                continue;
            }
            // Nothing to send or finish: if this connection has the busy poller to itself, wait for the host's
            // next PDU on the socket itself for a while. Not once the listener stopped or the controller is gone
            // (atomic loads): a spin that goes on reading never reaches the select below that looks at them, and
            // a host sending command after command would keep a torn-down association's queue serving. Nor
            // while PDUs wait in `inbuf` (`held`): they are decoded before anything more is read. Nor before a
            // Connect has bound the queue: the select watches the deadline for that.
            if c.out.is_empty()
                && !held
                && c.ctx.ctrl.is_some()
                && !c.ctx.auth_pending
                && c.slots.is_empty()
                && holdfast_rt::solo(&poll, conn_id)
                && !stopped.fired()
                && !c.ctrl_gone.fired()
            {
                match holdfast_rt::spin_read(
                    rd.as_ref(),
                    &mut inbuf,
                    READ_MIN_FREE,
                    usize::MAX,
                    holdfast_rt::spin_budget(&poll),
                ) {
                    Ok(Some(0)) => break Close::Normal("connection closed by host"),
                    Ok(Some(_)) => {
                        holdfast_rt::touch(&poll, conn_id);
                        c.prefetch(&inbuf);
                        // Let the runtime's other tasks (and the sockets of other connections, which would end
                        // this connection's solo run) in now and then: nothing else yields here.
                        spun += 1;
                        if spun.is_multiple_of(holdfast_rt::SPINS_PER_YIELD) {
                            tokio::task::yield_now().await;
                        }
                        continue;
                    }
                    Ok(None) => {}
                    Err(e) => break Close::Io(e),
                }
            }
            let close_deadline = c.close_deadline;
            let may_read = c.backlog() < c.stop_decoding_at;
            let aer = async {
                match c.aer_rx.as_mut() {
                    Some(rx) => rx.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                biased;
                _ = &mut stopped => break Close::Normal("listener stopped (target shutting down, or port removed)"),
                _ = &mut c.ctrl_gone => break Close::Normal("controller torn down or reset"),
                r = holdfast_rt::write_some(&mut wr, &c.out), if !c.out.is_empty() => match r {
                    Ok(n) => {
                        c.out.advance(n);
                        holdfast_rt::touch(&poll, conn_id);
                    }
                    Err(e) => break Close::Io(e),
                },
                // Work finishing elsewhere always has its slot here (Executing until `complete`): with no slot
                // taken there is nothing to wait for, and the channel is not polled each round.
                // Every completion already waiting is taken with this one, so that they leave in one write: one
                // at a time, each went out in a segment of its own (1.75 segments per I/O at 4 KiB file
                // writes, and the host answered each with one of its own).
                Some((cid, resp)) = done_rx.recv(), if !c.slots.is_empty() => {
                    c.complete(cid, resp);
                    while let Ok((cid, resp)) = done_rx.try_recv() {
                        c.complete(cid, resp);
                    }
                }
                Some(ev) = aer => {
                    c.slots.remove(&ev.cid);
                    // None: ended by a Controller Level Reset, without a completion. One matched with its event
                    // before a reset that came since is not sent either: its event waits for the AERs posted
                    // after the reset.
                    if let (Some(dw0), Some(ctrl)) = (ev.dw0, &c.ctx.ctrl) {
                        let mut st = ctrl.state.lock();
                        if st.resets == ev.resets {
                            drop(st);
                            c.send_response(ev.cid, Status::SUCCESS, dw0, 0);
                        } else {
                            st.pending_events.push_front(dw0);
                            crate::controller::Controller::deliver(&mut st);
                        }
                    }
                }
                // In an async block: select! builds every branch's future each round, enabled or not, and a
                // Sleep takes a handle to the runtime when built. Ahead of the read branch, so that a host that
                // keeps sending (refused) commands instead of a Connect does not keep it from firing.
                _ = async { tokio::time::sleep_until(close_deadline).await }, if c.ctx.ctrl.is_none() || c.ctx.close_after_response || c.ctx.auth_pending => {
                    let why = if c.ctx.close_after_response {
                        "Disconnect answered, and the host did not read the answer in time"
                    } else if c.ctx.auth_pending {
                        "DH-HMAC-CHAP authentication not completed in time"
                    } else if ic_done {
                        "no Connect in time"
                    } else {
                        "no ICReq in time"
                    };
                    log_closing(c.ctx.peer_addr, why);
                    break Close::Normal(why);
                }
                // Off above the high-water mark (and so while `held`, and after a Disconnect): the write branch
                // above is what runs then, waiting for the socket to take data, or the completions of reads
                // running elsewhere, whose data counts towards the mark.
                r = async { holdfast_rt::reserve_for_read(&mut inbuf, READ_MIN_FREE); rd.read_buf(&mut inbuf).await }, if may_read => match r {
                    Ok(0) => break Close::Normal("connection closed by host"),
                    Ok(_) => {
                        holdfast_rt::touch(&poll, conn_id);
                        c.prefetch(&inbuf);
                    }
                    Err(e) => break Close::Io(e),
                },
            }
        };
        // Say why, where the protocol wants it, then go.
        let reason = match &close {
            Close::Normal(r) => r.to_string(),
            Close::Io(e) => format!("socket error: {e}"),
            Close::Fatal(f) if f.close_silently => {
                crate::peer_log::peer_warn!(peer = %c.ctx.peer_addr, qid = c.ctx.qid, "malformed H2CTermReq, closing: {f}");
                format!("malformed H2CTermReq: {f}")
            }
            Close::Fatal(f) => {
                crate::peer_log::peer_warn!(peer = %c.ctx.peer_addr, qid = c.ctx.qid, "fatal transport error, sending C2HTermReq: {f}");
                let t = TermReq { fes: f.fes as u16, fei: f.fei, data: f.header.clone() };
                Pdu::C2HTermReq(t).encode(&c.framing, c.out.header_buf());
                format!("fatal transport error: {f}")
            }
        };
        // Before the last flush below, which may take its 2 s on a half-dead path: a Connect from the same host
        // arriving meanwhile must already find this queue's commands fenced (README, No stale writes).
        c.release(&reason);
        if !c.out.is_empty() && !matches!(close, Close::Io(_)) {
            let all = c.out.take_all();
            let _ = tokio::time::timeout(Duration::from_secs(2), wr.write_all(&all)).await;
        }
        let _ = wr.shutdown().await;
    }

    /// Give the queue back, once: commands of this queue that have not reached the media are dropped (its gate
    /// fenced; those still running are what a reconnecting host will wait for), and the queue leaves its
    /// controller (an I/O queue its ID, which may then be connected again and no longer holds up a Controller
    /// Level Reset; the admin queue the whole association). At the end of [`Connection::run`], or when the
    /// connection is dropped without it (its task panicked: a bug, which must not leave the queue live for
    /// ever).
    fn release(&mut self, reason: &str) {
        if std::mem::replace(&mut self.released, true) {
            return;
        }
        if let Some(ctrl) = &self.ctx.ctrl {
            ctrl.fence_gate(&self.ctx.gate);
            if self.ctx.qid == 0 {
                ctrl.teardown(&format!("admin queue: {reason}"));
            } else if !self.ctx.qid_claim_pending {
                ctrl.state.lock().live_qids.remove(&self.ctx.qid);
                tracing::debug!(cntlid = ctrl.cntlid, qid = self.ctx.qid, "I/O queue closed: {reason}");
            }
        } else {
            self.ctx.gate.kill();
            tracing::debug!(peer = %self.ctx.peer_addr, "connection ended before Connect: {reason}");
        }
    }

    /// Before the PDUs just received are handled one by one: let the backends of the reads among them start
    /// bringing in what those reads touch, all at once ([`cmd::io::prefetch`]). I/O queues only.
    fn prefetch(&self, inbuf: &[u8]) {
        if let (Some(ctrl), true) = (&self.ctx.ctrl, self.ctx.qid != 0) {
            cmd::io::prefetch(ctrl, peek_capsule_sqes(inbuf).take(PREFETCH_MAX));
        }
    }

    /// The header of the PDU `decoder` just decoded, for a termination request over one of its fields.
    fn offending_header(decoder: &PduDecoder) -> Bytes {
        Bytes::copy_from_slice(decoder.last_header())
    }

    fn fatal(fes: Fes, fei: u32, header: Bytes, reason: &'static str) -> Close {
        Close::Fatal(Fatal { fes, fei, header, reason, close_silently: false })
    }

    /// Handle one PDU. Everything but Connect is answered (or started) here, synchronously: the I/O path
    /// builds no futures. A Connect is returned, for the caller to await [`Connection::connect`].
    fn handle_pdu(&mut self, p: Pdu) -> Result<Option<PendingConnect>, Close> {
        match p {
            Pdu::IcReq(req) => {
                let params = ControllerIcParams { maxh2cdata: MAXH2CDATA, allow_hdgst: true, allow_ddgst: true };
                match req.negotiate(&params) {
                    Ok(resp) => {
                        self.close_deadline = tokio::time::Instant::now() + CONNECT_TIMEOUT;
                        Pdu::IcResp(resp).encode(&Framing::default(), self.out.header_buf());
                        self.decoder.set_negotiated(resp.hdgst, resp.ddgst, resp.cpda);
                        self.framing = Framing { hdgst: resp.hdgst, ddgst: resp.ddgst, pda: req.hpda };
                        Ok(None)
                    }
                    Err(r) => Err(Self::fatal(r.fes, r.fei, Self::offending_header(&self.decoder), "ICReq refused")),
                }
            }
            Pdu::H2CTermReq(t) => {
                let fes = Fes::from_u16(t.fes).map(Fes::name).unwrap_or("unknown");
                crate::peer_log::peer_warn!(peer = %self.ctx.peer_addr, "host terminated the connection: {fes} (FES {:#x}, FEI {:#x})", t.fes, t.fei);
                Err(Close::Normal("H2CTermReq from host"))
            }
            Pdu::CapsuleCmd(c) => self.handle_capsule(c.sqe, c.data),
            Pdu::H2CData(d) => self.handle_h2c_data(d.cccid, d.ttag, d.datao, d.data, d.last, false),
            // The decoder only lets host-to-controller PDUs through.
            _ => Err(Self::fatal(Fes::InvalidHeaderField, 0, Bytes::new(), "unexpected PDU type")),
        }
    }

    fn handle_data_digest_error(&mut self, p: Pdu) -> Result<Option<PendingConnect>, Close> {
        match p {
            // The command never runs: Transient Transport Error, the host may retry it.
            // Its CID is checked first, as any capsule's: a CID still in use answers for the command using it.
            Pdu::CapsuleCmd(c) => {
                self.advance_sqhd();
                // A fused operation's first or second all the same: the other is aborted.
                if let Ok(Some(first)) = self.fused_adjacency(&c.sqe) {
                    self.abort_fused_first(first, Status::ABORTED_FAILED_FUSED);
                }
                if self.admit_cid(&c.sqe)? {
                    self.fail(&c.sqe, Status::TRANSIENT_TRANSPORT_ERROR, true);
                }
                Ok(None)
            }
            // Keep receiving the transfer, then fail the command.
            // Account for the bytes (so later offsets line up), then fail the command once the transfer ends.
            Pdu::H2CData(d) => self.handle_h2c_data(d.cccid, d.ttag, d.datao, d.data, d.last, true),
            _ => Err(Self::fatal(Fes::InvalidHeaderField, 0, Bytes::new(), "data digest error on a PDU without data")),
        }
    }

    /// One more submission queue entry consumed: the SQ Head Pointer the next completions carry moves on,
    /// wrapping at the queue size. Before a Connect has sized the queue there is nothing to count (the Connect
    /// counts itself once it has, [`Connection::on_connected`]).
    fn advance_sqhd(&mut self) {
        if self.ctx.size > 0 && !self.ctx.sq_flow_disabled {
            self.sqhd = ((self.sqhd as u32 + 1) % self.ctx.size) as u16;
        }
    }

    /// May a new command with this CID be taken on? A queue with more commands outstanding than it holds is a
    /// fatal error; a CID still in use is answered Command ID Conflict (`false`), without touching the slot,
    /// which belongs to the command already using it.
    fn admit_cid(&mut self, sqe: &holdfast_proto::SubmissionEntry) -> Result<bool, Close> {
        let cid = sqe.cid();
        if self.slots.len() >= MAX_QUEUE_ENTRIES as usize
            || (self.ctx.size > 0 && self.slots.len() >= self.ctx.size as usize * 2)
        {
            return Err(Self::fatal(
                Fes::SequenceError,
                0,
                Bytes::new(),
                "more commands outstanding than the queue holds",
            ));
        }
        if self.slots.contains_key(&cid) {
            self.fail(sqe, Status::CID_CONFLICT.with_dnr(), false);
            return Ok(false);
        }
        Ok(true)
    }

    /// Answer a command that failed before it ran, and log it ([`Connection::log_failure`]).
    fn fail(&mut self, sqe: &holdfast_proto::SubmissionEntry, status: Status, transport: bool) {
        let status = self.log_failure(sqe, status, transport);
        self.send_response(sqe.cid(), status, 0, 0);
    }

    /// Every failed completion of a bound queue is logged in its controller's Error Information log, once:
    /// here, or where a command run elsewhere finished ([`Connection::exec`]). The status to answer with (More
    /// set once logged).
    fn log_failure(&self, sqe: &holdfast_proto::SubmissionEntry, status: Status, transport: bool) -> Status {
        match &self.ctx.ctrl {
            Some(ctrl) => ctrl.log_error(self.ctx.qid, sqe, status, transport),
            None => status,
        }
    }

    fn handle_capsule(
        &mut self,
        sqe: holdfast_proto::SubmissionEntry,
        data: Bytes,
    ) -> Result<Option<PendingConnect>, Close> {
        self.advance_sqhd();
        // Fused operations are rare: a capsule that neither is one nor follows a first passes with two loads.
        let first = if sqe.fuse() == 0 && matches!(self.fused_open, FusedOpen::None) {
            Ok(None)
        } else {
            self.fused_adjacency(&sqe)
        };
        let cid = sqe.cid();
        if !self.admit_cid(&sqe)? {
            if let Ok(Some(first)) = first {
                self.abort_fused_first(first, Status::ABORTED_FAILED_FUSED);
            }
            return Ok(None);
        }
        let first = match first {
            Ok(first) => first,
            Err(status) => {
                self.fail(&sqe, status, false);
                return Ok(None);
            }
        };
        let req = match cmd::parse(&self.ctx, &sqe) {
            Ok(r) => r,
            Err(status) => {
                self.refuse(&sqe, status, first);
                return Ok(None);
            }
        };
        // A command that moves no data (Flush, Keep Alive, a Property Get) whose SGL nonetheless gives a length,
        // or that brought in-capsule data: Data SGL Length Invalid, as Linux nvmet answers
        // (nvmet_check_transfer_len(req, 0)). The host built the command for something else.
        if req.len == 0 && (!data.is_empty() || !sqe.dptr.is_empty()) {
            self.refuse(&sqe, Status::SGL_LENGTH_INVALID.with_dnr(), first);
            return Ok(None);
        }
        if req.len > 0 {
            if let Err(status) = check_sgl(&sqe, req.len, req.dir, data.len()) {
                self.refuse(&sqe, status, first);
                return Ok(None);
            }
        }
        if let Some(first) = first {
            self.pair_fused(first, req, data);
            return Ok(None);
        }
        if sqe.fuse() == FUSE_FIRST {
            // Held until the next capsule, its second: no R2T yet, so that a first left alone is aborted
            // without data on its way.
            self.slots.insert(cid, Slot::FusedFirst { req, data });
            self.fused_open = FusedOpen::Waiting(cid);
            return Ok(None);
        }
        if req.dir == DataDir::ToController && req.len > 0 && data.is_empty() {
            self.slots.insert(cid, Slot::Queued(req));
            self.r2t_queue.push_back(cid);
            self.start_r2ts();
            return Ok(None);
        }
        Ok(self.exec(cid, req, data))
    }

    /// Fail a command refused before it ran; if it is the second of the held `first`, that one is aborted too.
    fn refuse(&mut self, sqe: &holdfast_proto::SubmissionEntry, status: Status, first: Option<u16>) {
        self.fail(sqe, status, false);
        if let Some(first) = first {
            self.abort_fused_first(first, Status::ABORTED_FAILED_FUSED);
        }
    }

    /// Run a fused operation's command, or first ask for its data (R2T) if it brought none: the path
    /// [`Connection::handle_capsule`] takes for the others, written there again, since a call to this for every
    /// capsule (out of line, each Request copied into it) cost 22-29 instructions per I/O (bench/icount.sh).
    fn start_fused(&mut self, cid: u16, req: Request, data: Bytes) -> Option<PendingConnect> {
        if req.dir == DataDir::ToController && req.len > 0 && data.is_empty() {
            self.slots.insert(cid, Slot::Queued(req));
            self.r2t_queue.push_back(cid);
            self.start_r2ts();
            return None;
        }
        self.exec(cid, req, data)
    }

    /// The fused-operation check every capsule passes first (NVMe Base 2.0 §3.4.2: a fused operation's two
    /// commands are next to each other in the submission queue). `Ok(Some(first))`: this capsule is the second
    /// of the held `first`. `Ok(None)`: it is no second (a first held before it, left without its second, is
    /// aborted with Missing Fused Command). `Err`: it is a second without a first (Missing Fused Command), or
    /// whose first failed (Failed Fused Command). A first is noted as failed until it is held.
    #[cold]
    fn fused_adjacency(&mut self, sqe: &holdfast_proto::SubmissionEntry) -> Result<Option<u16>, Status> {
        let next = if sqe.fuse() == FUSE_FIRST { FusedOpen::Failed } else { FusedOpen::None };
        match (std::mem::replace(&mut self.fused_open, next), sqe.fuse()) {
            (FusedOpen::Waiting(first), FUSE_SECOND) => Ok(Some(first)),
            (FusedOpen::Failed, FUSE_SECOND) => Err(Status::ABORTED_FAILED_FUSED),
            (FusedOpen::None, FUSE_SECOND) => Err(Status::ABORTED_MISSING_FUSED),
            (FusedOpen::Waiting(first), _) => {
                self.abort_fused_first(first, Status::ABORTED_MISSING_FUSED);
                Ok(None)
            }
            _ => Ok(None),
        }
    }

    /// Fail a held first (`Slot::FusedFirst`) that will not run: its second is missing or failed.
    #[cold]
    fn abort_fused_first(&mut self, first: u16, status: Status) {
        if let Some(Slot::FusedFirst { req, .. }) = self.slots.remove(&first) {
            self.fail(&req.sqe, status, false);
        }
    }

    /// The second of the held `first` has come and parsed: if the two make a Compare and Write
    /// ([`cmd::io::fused_pair`]) each gets its data (in its capsule, or by R2T, the first's asked for first) and
    /// the pair runs once both have theirs ([`Connection::fused_ready`]).
    #[cold]
    fn pair_fused(&mut self, first: u16, second_req: Request, second_data: Bytes) {
        let Some(Slot::FusedFirst { req, data }) = self.slots.remove(&first) else {
            self.fail(&second_req.sqe, Status::ABORTED_MISSING_FUSED, false);
            return;
        };
        if let Err(status) = cmd::io::fused_pair(&req, &second_req) {
            self.fail(&second_req.sqe, status, false);
            self.fail(&req.sqe, Status::ABORTED_FAILED_FUSED, false);
            return;
        }
        let second = second_req.sqe.cid();
        self.fused.insert(first, second);
        self.fused.insert(second, first);
        // Neither can be a Connect, so neither hands one back.
        let _ = self.start_fused(first, req, data);
        let _ = self.start_fused(second, second_req, second_data);
    }

    /// A fused operation's command `cid` has all its data: run the pair if the other has too, else wait for it.
    #[cold]
    fn fused_ready(&mut self, cid: u16, req: Request, data: Bytes, r2t: usize) {
        let Some(&partner) = self.fused.get(&cid) else {
            // The other failed meanwhile (its failure marks this one failed while its data still came in, so
            // this is only a safeguard).
            self.r2t_bytes -= r2t;
            self.fail(&req.sqe, Status::ABORTED_FAILED_FUSED, false);
            return;
        };
        let (other, other_data, other_r2t) = match self.slots.remove(&partner) {
            Some(Slot::Fused { req, data, r2t }) => (req, data, r2t),
            // The other's data is still to come (or to be asked for).
            still_waiting => {
                if let Some(slot) = still_waiting {
                    self.slots.insert(partner, slot);
                }
                self.slots.insert(cid, Slot::Fused { req, data, r2t });
                return;
            }
        };
        self.fused.remove(&cid);
        self.fused.remove(&partner);
        let mine = (cid, req, data, r2t);
        let theirs = (partner, other, other_data, other_r2t);
        let ((c1, r1, d1, t1), (c2, r2, d2, t2)) =
            if mine.1.sqe.fuse() == FUSE_FIRST { (mine, theirs) } else { (theirs, mine) };
        let (s1, s2) = (r1.sqe, r2.sqe);
        match cmd::io::execute_fused(&mut self.ctx, r1, d1, r2, d2) {
            FusedOutcome::Done(a, b) => {
                self.r2t_bytes -= t1 + t2;
                let a = Response { status: self.log_failure(&s1, a.status, false), ..a };
                let b = Response { status: self.log_failure(&s2, b.status, false), ..b };
                self.respond(c1, a, 0);
                self.respond(c2, b, 0);
            }
            FusedOutcome::Later(work) => {
                self.slots.insert(c1, Slot::Executing { out: 0, r2t: t1 });
                self.slots.insert(c2, Slot::Executing { out: 0, r2t: t2 });
                let (tx, ctrl, qid) = (self.done_tx.clone(), self.ctx.ctrl.clone(), self.ctx.qid);
                work.run(move |(mut a, mut b)| {
                    if let Some(ctrl) = &ctrl {
                        a.status = ctrl.log_error(qid, &s1, a.status, false);
                        b.status = ctrl.log_error(qid, &s2, b.status, false);
                    }
                    let _ = tx.send((c1, a));
                    let _ = tx.send((c2, b));
                });
            }
        }
    }

    /// A fused operation's command `cid` failed before it ran: the other is aborted (Failed Fused Command), at
    /// once if its data is in or not yet asked for, else once its data is in (it is on its way after an R2T).
    #[cold]
    fn fused_member_failed(&mut self, cid: u16) {
        let Some(partner) = self.fused.remove(&cid) else { return };
        self.fused.remove(&partner);
        match self.slots.remove(&partner) {
            Some(Slot::Receiving { req, buf, .. }) => {
                let failed = Some(Status::ABORTED_FAILED_FUSED);
                self.slots.insert(partner, Slot::Receiving { req, buf, failed });
            }
            // Its R2T never sent: no data comes for it.
            Some(Slot::Queued(req)) => {
                self.r2t_queue.retain(|&c| c != partner);
                self.fail(&req.sqe, Status::ABORTED_FAILED_FUSED, false);
            }
            Some(Slot::Fused { req, r2t, .. }) => {
                self.r2t_bytes -= r2t;
                self.fail(&req.sqe, Status::ABORTED_FAILED_FUSED, false);
            }
            Some(other) => {
                self.slots.insert(partner, other);
            }
            None => {}
        }
    }

    /// Send R2Ts for queued writes while buffers are free. One R2T covers the whole transfer; the host
    /// splits it into H2CData PDUs of at most MAXH2CDATA (NVMe/TCP 1.0 §3.6.2.8).
    fn start_r2ts(&mut self) {
        while let Some(&cid) = self.r2t_queue.front() {
            let Some(Slot::Queued(req)) = self.slots.get(&cid) else {
                self.r2t_queue.pop_front();
                continue;
            };
            // Bounded write memory per connection: one transfer when none is held, more within the budget.
            if self.r2t_bytes > 0 && self.r2t_bytes + req.len > R2T_BUDGET {
                return;
            }
            self.r2t_queue.pop_front();
            let Some(Slot::Queued(req)) = self.slots.remove(&cid) else { continue };
            let len = req.len;
            self.r2t_bytes += len;
            self.slots.insert(cid, Slot::Receiving { req, buf: Reassembly::Empty, failed: None });
            pdu::encode_r2t(
                self.out.header_buf(),
                &self.framing,
                &R2T { cccid: cid, ttag: cid, r2to: 0, r2tl: len as u32 },
            );
        }
    }

    fn handle_h2c_data(
        &mut self,
        cccid: u16,
        ttag: u16,
        datao: u32,
        data: Bytes,
        last: bool,
        digest_failed: bool,
    ) -> Result<Option<PendingConnect>, Close> {
        let Some(Slot::Receiving { req, buf, failed }) = self.slots.get_mut(&ttag) else {
            return Err(Self::fatal(
                Fes::InvalidHeaderField,
                pdu::offset::DATA_TTAG,
                Self::offending_header(&self.decoder),
                "H2CData with an unknown TTAG",
            ));
        };
        if cccid != ttag {
            return Err(Self::fatal(
                Fes::InvalidHeaderField,
                pdu::offset::DATA_CCCID,
                Self::offending_header(&self.decoder),
                "H2CData CCCID does not match the R2T",
            ));
        }
        // Data outside what the R2T asked for is Data Transfer Out of Range, wherever DATAO puts it; within it,
        // data that does not follow what came before is a bad DATAO.
        if (datao as usize).saturating_add(data.len()) > req.len {
            return Err(Self::fatal(
                Fes::DataOutOfRange,
                0,
                Self::offending_header(&self.decoder),
                "H2CData beyond the R2T",
            ));
        }
        if datao as usize != buf.len() {
            return Err(Self::fatal(
                Fes::InvalidHeaderField,
                pdu::offset::DATA_DATAO,
                Self::offending_header(&self.decoder),
                "H2CData DATAO out of order",
            ));
        }
        if digest_failed {
            failed.get_or_insert(Status::TRANSIENT_TRANSPORT_ERROR);
        }
        buf.push(data, req.len);
        if buf.len() < req.len {
            // The host says it has sent all it will for this R2T (NVMe/TCP 1.0 §3.6.2.8, LAST_PDU): the rest
            // never comes, and waiting for it would hold the command (and its share of the R2T budget) for
            // ever. (LAST_PDU missing on the PDU that ends the transfer is let pass, as the Linux target does.)
            if last {
                return Err(Self::fatal(
                    Fes::InvalidHeaderField,
                    pdu::offset::FLAGS,
                    Self::offending_header(&self.decoder),
                    "H2CData LAST_PDU before the end of the R2T's data",
                ));
            }
            return Ok(None);
        }
        let Some(Slot::Receiving { req, buf, failed }) = self.slots.remove(&ttag) else { return Ok(None) };
        let data = buf.into_bytes();
        let connect = if let Some(status) = failed {
            self.r2t_bytes -= req.len;
            self.fail(&req.sqe, status, status == Status::TRANSIENT_TRANSPORT_ERROR);
            self.fused_member_failed(ttag);
            None
        } else if req.sqe.opcode != holdfast_proto::opcode::FABRICS
            && self.ctx.ctrl.as_ref().is_some_and(|c| !c.ready())
        {
            // Parsed while the controller was ready, its data in only now: a Controller Level Reset since
            // (CC.EN 1 to 0) stops the processing of every outstanding command (NVMe Base 2.0 §3.7.2), and a
            // controller not ready refuses commands, as `cmd::parse` does (an Admin Set Features must not run
            // on the disabled controller).
            self.r2t_bytes -= req.len;
            self.fail(&req.sqe, Status::COMMAND_SEQUENCE_ERROR.with_dnr(), false);
            self.fused_member_failed(ttag);
            None
        } else {
            // The data stays counted in the R2T budget while the write runs elsewhere.
            let r2t = req.len;
            self.exec_holding(cccid, req, data, r2t)
        };
        self.start_r2ts();
        Ok(connect)
    }

    /// Run a command whose data is all here, or hand back a Connect (which may wait for an older
    /// association to drain) for [`Connection::connect`].
    fn exec(&mut self, cid: u16, req: Request, data: Bytes) -> Option<PendingConnect> {
        self.exec_holding(cid, req, data, 0)
    }

    /// [`Connection::exec`] for a command whose data holds `r2t` bytes of the R2T budget: kept while it runs
    /// elsewhere, given back as soon as it is done (or handed on, a Connect).
    fn exec_holding(&mut self, cid: u16, req: Request, data: Bytes, r2t: usize) -> Option<PendingConnect> {
        if req.sqe.fuse() != 0 {
            self.fused_ready(cid, req, data, r2t);
            return None;
        }
        if matches!(req.exec, Exec::Connect) {
            self.r2t_bytes -= r2t;
            return Some(PendingConnect { cid, req, data });
        }
        // Only data for the host is trimmed or padded to the command's transfer length.
        let (len, sqe) = (req.len_to_host(), req.sqe);
        let auth = matches!(req.exec, Exec::AuthSend | Exec::AuthReceive);
        // The slot is taken only by a command that outlives this call (no other PDU is handled meanwhile).
        let outcome = cmd::execute(&mut self.ctx, req, data);
        // The exchange authenticated the queue (at Success1, or at the host's Success2): it is bound
        // now, and no longer counted among those without an NVM controller (`on_connected`).
        if auth
            && !self.ctx.auth_pending
            && self.unbound.is_some()
            && self.ctx.ctrl.as_ref().is_some_and(|c| !c.subsys.is_discovery)
        {
            self.unbound = None;
        }
        if !matches!(outcome, Outcome::Later(_)) {
            self.r2t_bytes -= r2t;
        }
        match outcome {
            Outcome::Done(mut resp) => {
                resp.status = self.log_failure(&sqe, resp.status, false);
                self.respond(cid, resp, len);
                // Set by a Disconnect just run: nothing more is decoded, and the connection closes once the
                // response is out, or after DISCONNECT_LINGER if the host does not read it (a Disconnect on the
                // admin queue also stops the keep-alive watchdog, which would otherwise end such a host).
                if self.ctx.close_after_response {
                    self.stop_decoding_at = 0;
                    self.close_deadline = tokio::time::Instant::now() + DISCONNECT_LINGER;
                }
            }
            Outcome::Later(work) => {
                // What it will send, and the write data it holds, count until it completes (`complete`).
                self.deferred_out += len;
                self.slots.insert(cid, Slot::Executing { out: len, r2t });
                let (tx, ctrl, qid) = (self.done_tx.clone(), self.ctx.ctrl.clone(), self.ctx.qid);
                work.run(move |mut r| {
                    // Logged where it finished (the connection task no longer has its SQE when it answers).
                    if let Some(ctrl) = &ctrl {
                        r.status = ctrl.log_error(qid, &sqe, r.status, false);
                    }
                    let _ = tx.send((cid, pad_len(r, len)));
                });
            }
            Outcome::Held => {
                self.slots.insert(cid, Slot::Executing { out: 0, r2t: 0 });
            }
        }
        None
    }

    /// Run a Connect ([`cmd::fabrics::connect`]) and answer it.
    async fn connect(&mut self, c: PendingConnect) {
        let PendingConnect { cid, req, data } = c;
        let len = req.len_to_host();
        let bound_before = self.ctx.ctrl.is_some();
        let mut resp = cmd::fabrics::connect(&mut self.ctx, &req, &data).await;
        resp.status = self.log_failure(&req.sqe, resp.status, false);
        // A Connect on a bound queue is refused before it changes anything (a queue is bound once).
        if !bound_before && self.ctx.ctrl.is_some() {
            self.on_connected();
            if self.ctx.auth_pending {
                self.close_deadline = tokio::time::Instant::now() + AUTH_TIMEOUT;
            }
        }
        // The host asked for no SQ flow control and got it: the Connect response says so with SQHD FFFFh;
        // later responses leave the field reserved (TP 8005, as the Linux target does).
        let flow_disabled = resp.status.is_success() && self.ctx.sq_flow_disabled;
        if flow_disabled {
            self.sqhd = SQHD_FLOW_DISABLED;
        }
        self.respond(cid, resp, len);
        if flow_disabled {
            self.sqhd = 0;
        }
    }

    fn on_connected(&mut self) {
        let Some(ctrl) = self.ctx.ctrl.clone() else { return };
        // A discovery controller's connection stays counted (any host may open one, with any keep-alive), and
        // so does a queue that must authenticate, until it has (`exec_holding`): a host NQN is no secret, and
        // a peer connecting in a loop as a listed host would otherwise hold a controller for up to
        // AUTH_TIMEOUT with each connection, uncounted.
        if !ctrl.subsys.is_discovery && !self.ctx.auth_pending {
            self.unbound = None;
        }
        ctrl.bind_gate(self.ctx.qid, &self.ctx.gate);
        // The submission queue exists from this Connect on, and the Connect is its first entry (SQ entry 0):
        // counted now that the queue has a size, so that its response carries SQ Head Pointer 1 and every
        // later completion the entries consumed since (completion queue entry Dword 2; Linux nvmet answers
        // the Connect with SQHD 1 as well). No-op with SQ flow control disabled (NVMe-oF 1.1 §3.3, CATTR).
        self.advance_sqhd();
        // An I/O queue also closes at a Controller Level Reset (its queue is deleted). Its token is taken under
        // the state lock a reset holds: a queue whose Connect raced a reset (or came in as it finished) closes
        // at once, deleted with the others, instead of outliving it (and holding the reset's end back).
        self.ctrl_gone = if self.ctx.qid == 0 {
            holdfast_rt::CancelWatch::new(&ctrl.cancel)
        } else {
            let st = ctrl.state.lock();
            let token = if st.resetting.is_some() || st.csts & holdfast_proto::fabrics::csts::RDY == 0 {
                // A token of its own, cancelled (the controller's is for the queues connected after the reset),
                // and its gate fenced now: commands already in its receive buffer are decoded before the
                // cancellation is seen, and must not reach the media of a controller enabled again meanwhile.
                ctrl.fence_gate(&self.ctx.gate);
                let gone = tokio_util::sync::CancellationToken::new();
                gone.cancel();
                gone
            } else {
                ctrl.io_queues_cancel()
            };
            drop(st);
            holdfast_rt::CancelWatch::new(&token)
        };
        if self.ctx.qid == 0 {
            let (tx, rx) = mpsc::unbounded_channel();
            ctrl.state.lock().aer_tx = Some(tx);
            self.aer_rx = Some(rx);
        } else {
            self.ctx.max_incapsule = IO_INCAPSULE;
            self.decoder.set_limits(limits(IO_INCAPSULE));
        }
    }

    /// A command that ran elsewhere ([`Outcome::Later`]) is done.
    fn complete(&mut self, cid: u16, resp: Response) {
        if let Some(Slot::Executing { out, r2t }) = self.slots.remove(&cid) {
            self.deferred_out -= out;
            if r2t > 0 {
                self.r2t_bytes -= r2t;
                self.start_r2ts();
            }
        }
        let len = resp.data.len();
        self.respond(cid, resp, len);
    }

    /// Send a command's data (C2HData) and completion. The command no longer holds a slot.
    fn respond(&mut self, cid: u16, resp: Response, len: usize) {
        let resp = pad_len(resp, len);
        if !resp.status.is_success() {
            self.send_response(cid, resp.status, resp.dw0, resp.dw1);
            return;
        }
        let data = resp.data;
        // SUCCESS flag only when the host disabled SQ flow control and the CQE would carry nothing else
        // (NVMe/TCP 1.0 §3.6.2.6); otherwise a CapsuleResp follows the data.
        let success_flag = self.ctx.sq_flow_disabled && resp.dw0 == 0 && resp.dw1 == 0 && !data.is_empty();
        let mut off = 0;
        while off < data.len() {
            let n = (data.len() - off).min(MAX_C2H_PDU);
            let last = off + n == data.len();
            let mut f = if last { flags::LAST_PDU } else { 0 };
            if last && success_flag {
                f |= flags::SUCCESS;
            }
            // What the data keeps alive counts once, with its first piece.
            let pins = if off == 0 { resp.pins } else { 0 };
            let piece = data.slice(off..off + n);
            self.out.push_data_pdu(&self.framing, PduType::C2HData, f, cid, 0, off as u32, piece, pins);
            off += n;
        }
        if !success_flag {
            self.send_response(cid, Status::SUCCESS, resp.dw0, resp.dw1);
        }
    }

    /// What waits to be sent (with the memory it keeps alive: a RAM read's whole chunk), or will once the reads
    /// running elsewhere complete ([`SEND_HIGH_WATER`]).
    fn backlog(&self) -> usize {
        self.out.weight() + self.deferred_out
    }

    /// Queue a completion without data (a CapsuleResp). Touches no slot: a command answered here either never
    /// took one or has given it up already.
    fn send_response(&mut self, cid: u16, mut status: Status, dw0: u32, dw1: u32) {
        // CRD (which of CRDT1..3 to wait before a retry) is for a host that enabled Advanced Command Retry (Host
        // Behavior Support ACRE): to any other it is reserved (NVMe Base 2.0 Figure 92), and cleared. Such a host
        // is told to wait CRDT1 after a retryable error that names no delay of its own.
        if !status.is_success() && (status.crd() != 0 || !status.dnr()) {
            let acre = self.ctx.ctrl.as_ref().is_some_and(|c| c.state.lock().features.host_behavior[0] & 1 != 0);
            if !acre {
                status = status.with_crd(0);
            } else if !status.dnr() && status.crd() == 0 {
                status = status.with_crd(1);
            }
        }
        let mut cqe = CompletionEntry::new(cid, status, dw0);
        cqe.dw1.set(dw1);
        cqe.sqhd.set(self.sqhd);
        cqe.sqid.set(self.ctx.qid);
        pdu::encode_capsule_resp(self.out.header_buf(), &self.framing, &cqe);
    }
}

/// Trim or zero-pad response data to the transfer length the command asked for. Inline: every read answered
/// passes through it, and out of line its call cost 37 instructions per I/O (bench/icount.sh, target side).
#[inline]
fn pad_len(mut r: Response, len: usize) -> Response {
    if r.status.is_success() && r.data.len() != len {
        let mut b = BytesMut::zeroed(len);
        let n = r.data.len().min(len);
        b[..n].copy_from_slice(&r.data[..n]);
        r.data = b.freeze();
    }
    r
}
