//! A controller and its association, kept alive across connection loss (NVMe over Fabrics 1.1 §3.3 and §7;
//! NVMe Base 2.0 §3.5.2; README, Ride-through).
//!
//! Set-up of one association: ICReq → Connect (admin, dynamic CNTLID, KATO) → Property Get CAP/VS →
//! Property Set CC.EN → CSTS.RDY within CAP.TO → Identify Controller → Set Features Number of Queues →
//! policy log page → one Connect per I/O queue → the queues open → keep-alive and an Asynchronous Event
//! Request.
//!
//! Callers submit into per-queue channels that outlive every connection. A supervisor task watches the
//! queues; when one fails (socket error, termination request, command timeout, keep-alive timeout) it tears
//! the association down, keeps every unfinished command with its buffers, and reconnects with the policy's
//! delay and backoff. A new association re-issues those commands with new CIDs. Past `fast_io_fail_tmo`
//! queued I/O fails with a path error while reconnecting goes on; past `ctrl_loss_tmo` (or an announced
//! planned downtime, whichever is later) the controller is failed and every command fails at once.

use crate::error::{Error, Result};
use crate::options::ConnectOptions;
use crate::policy::{self, Effective};
use crate::queue::{self, Command, Completion, QueueExit, QueueParams};
use crate::reply::Reply;
use crate::submit;
use crate::transport;
use bytes::Bytes;
use holdfast_proto::fabrics::{
    self, cap, cc, csts, property, ConnectCommand, ConnectData, InvalidParameter, PropertyCommand,
};
use holdfast_proto::identify::{self, IdentifyController, IdentifyNamespace};
use holdfast_proto::log_page::{ChangedNamespaceList, LID_CHANGED_NS_LIST};
use holdfast_proto::opcode::{admin as aop, admin_name, fctype_name, io_name, FABRICS};
use holdfast_proto::policy::{ConnectionPolicy, PolicyParseError, LID_HOLDFAST_POLICY};
use holdfast_proto::sqe::get_log_page;
use holdfast_proto::{Status, SubmissionEntry};
use std::sync::atomic::{AtomicBool, AtomicU16, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime};
use tokio::sync::{broadcast, mpsc, watch};
use tokio::time::Instant as TInstant;
use tokio_util::sync::CancellationToken;
use zerocopy::{FromBytes, IntoBytes};

/// Admin queue size (entries) we ask for.
pub const ADMIN_QUEUE_SIZE: u16 = 32;
/// In-capsule data the admin queue always accepts (NVMe/TCP 1.0 §3.3.3).
pub const ADMIN_INCAPSULE: usize = 8192;
/// Largest transfer we issue as one command when the controller sets no MDTS.
pub const DEFAULT_MAX_TRANSFER: usize = 1 << 20;

/// Where the controller is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum State {
    /// Connected.
    Live,
    /// Connection lost; reconnecting.
    Reconnecting {
        /// Attempts so far.
        attempt: u32,
        /// Why the connection was lost.
        cause: String,
        /// True once fast_io_fail_tmo passed (I/O fails while reconnecting goes on).
        failing_fast: bool,
    },
    /// Given up.
    Failed {
        /// Why.
        reason: String,
    },
}

/// State changes, for applications and the CLI.
#[derive(Clone, Debug)]
pub enum Event {
    /// The connection was lost (attempt 0) or a reconnect attempt starts.
    Reconnecting {
        /// Attempt number.
        attempt: u32,
        /// Why the connection was lost, or why the last attempt failed.
        cause: String,
        /// Time since the loss.
        outage: Duration,
    },
    /// Queued I/O now fails with a path error (fast_io_fail_tmo passed).
    FailingFast {
        /// Time since the loss.
        outage: Duration,
    },
    /// The association is back; pending commands were re-issued.
    Restored {
        /// How long the outage lasted.
        outage: Duration,
        /// Attempts it took.
        attempts: u32,
        /// Commands re-issued.
        reissued: usize,
        /// The target restarted (its instance ID changed), rather than the network blipping. Writes completed
        /// before the restart and not flushed since may be lost (a target machine that lost power lost its
        /// volatile write cache), and a Flush now covers only what the restarted target holds: an application
        /// that must know writes them again (README, "No stale writes").
        target_restarted: bool,
    },
    /// The controller reported that namespaces changed (a Namespace Attribute Notice, whose Changed Namespace
    /// List was read): added, removed or resized. A [`crate::namespace::Namespace`] keeps what it was opened
    /// with (its size among it); open it again to see what changed. One of a namespace found removed, or
    /// replaced by another under its NSID (other identifiers), fails every command from then on.
    NamespacesChanged {
        /// The changed NSIDs; `None` when any may have changed: the controller listed too many (more than 1024),
        /// or returned the list cut short.
        nsids: Option<Vec<u32>>,
    },
    /// Another host's reservation command concerned this host (a Reservation Notification log page entry,
    /// NVMe Base 2.0 §8.19.6): its registration was preempted (it is fenced off the namespace: I/O the
    /// reservation does not allow fails with Reservation Conflict), the reservation was released, or cleared.
    ReservationNotice {
        /// The namespace.
        nsid: u32,
        /// What happened ([`holdfast_proto::log_page::rnlpt`]: 1 Registration Preempted, 2 Reservation
        /// Released, 3 Reservation Preempted).
        kind: u8,
        /// Notices the controller could not keep since the last one read (it keeps 64 or so unread).
        lost: u64,
    },
    /// The controller is lost for good.
    Failed {
        /// Why.
        reason: String,
    },
}

/// The NVM command set's limits on Write Zeroes and Dataset Management of the current association (I/O Command
/// Set specific Identify Controller, CNS 06h, CSI 00h: WZSL, DMRL, DMRSL, DMSL); None where the controller sets
/// none (0) or did not answer that Identify (older targets refuse it). Namespace calls split by them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct NvmLimits {
    /// Most bytes one Write Zeroes may cover (WZSL: a power of two in units of CAP.MPSMIN).
    pub write_zeroes_bytes: Option<u64>,
    /// Most ranges in one Dataset Management command (DMRL).
    pub dsm_ranges: Option<u32>,
    /// Most logical blocks in one range (DMRSL).
    pub dsm_range_blocks: Option<u32>,
    /// Most logical blocks in one Dataset Management command (DMSL).
    pub dsm_blocks: Option<u64>,
}

impl NvmLimits {
    /// The limits `d` (Identify CNS 06h) gives, with memory pages of `4096 << mpsmin` bytes.
    pub fn from_identify(d: &identify::IdentifyControllerNvm, mpsmin: u32) -> NvmLimits {
        let nz32 = |v: u32| (v != 0).then_some(v);
        NvmLimits {
            write_zeroes_bytes: (d.wzsl != 0)
                .then(|| (4096u64 << mpsmin.min(15)).checked_shl(d.wzsl.min(40) as u32).unwrap_or(u64::MAX)),
            dsm_ranges: nz32(d.dmrl as u32),
            dsm_range_blocks: nz32(d.dmrsl.get()),
            dsm_blocks: (d.dmsl.get() != 0).then_some(d.dmsl.get()),
        }
    }
}

struct Info {
    cntlid: u16,
    id: Box<IdentifyController>,
    cap: u64,
    vs: u32,
    policy: Option<ConnectionPolicy>,
    effective: Effective,
    /// The policy page could not be read on this association (a failure, not a target without one): which
    /// instance of the target this is, is unknown.
    instance_unknown: bool,
}

struct Shared {
    opts: ConnectOptions,
    admin: submit::Sender<Command>,
    io: Vec<submit::Sender<Command>>,
    rr: AtomicUsize,
    info: Mutex<Info>,
    /// Largest transfer of one command (from MDTS), read by the I/O path (which splits requests by it).
    max_transfer: AtomicUsize,
    /// Optional NVM Command Support of the current association's Identify Controller (ONCS, `identify::ONCS_*`),
    /// read by write zeroes and deallocate: what the controller the host is connected to now supports, not what
    /// one before a reconnect did.
    oncs: AtomicU16,
    /// The NVM command set's limits of the current association ([`NvmLimits`]).
    nvm_limits: Mutex<NvmLimits>,
    state: Mutex<State>,
    events: broadcast::Sender<Event>,
    shutdown: CancellationToken,
    /// Cancelled when the supervisor has ended (every queue task has exited).
    closed: CancellationToken,
    /// Why the current association was declared lost by keep-alive, if it was.
    loss_cause: Mutex<Option<String>>,
    /// Notified when the effective KATO changed on a live association (a policy-changed event): the keep-alive
    /// task takes up the new pace at once rather than after the sleep it is in.
    kato_changed: Arc<tokio::sync::Notify>,
    /// Set if a queue task panicked (a bug), with what it said: its submission channel and the commands it
    /// held went with it, so the controller cannot go on and is lost ([`watch_queue`]).
    broken: Arc<Mutex<Option<String>>>,
    /// The current association: cancelled to tear it down.
    assoc: Mutex<CancellationToken>,
    /// The current association's keep-alive and event tasks (stopped alone before an orderly shutdown).
    tasks: Mutex<CancellationToken>,
    /// Adaptive busy polling shared by every queue (None: off).
    poll: Option<Arc<holdfast_rt::BusyPoll>>,
    /// The DH-HMAC-CHAP secrets (None: none given), for every queue whose Connect asks for authentication.
    auth: Option<crate::auth::HostSecrets>,
    /// True while new I/O is accepted (live, or reconnecting before fast_io_fail_tmo): the I/O path reads
    /// this instead of locking `state`. Updated by [`Shared::set_state`].
    accepting: AtomicBool,
    /// Set when [`Controller::shutdown`] starts: a queue that closes from then on is part of the shutdown, not
    /// a lost connection (SPDK's target closes the I/O queues itself when CC.SHN is set).
    stopping: AtomicBool,
    /// Reconnects that found the target restarted (a new instance ID), counted before the queues of the new
    /// association open: [`Controller::target_restarts`].
    target_restarts: AtomicU64,
    /// Of those, the ones the target said lost its namespaces' data: [`Controller::data_losing_restarts`].
    data_losing_restarts: AtomicU64,
    /// I/O queues the controller granted (Set Features Number of Queues) on the current association.
    io_queues_granted: AtomicUsize,
    /// The namespaces opened with identifiers (EUI-64, NGUID, UUID): a reconnect checks them before anything is
    /// issued again ([`check_namespace_ids`]), and a Namespace Attribute Changed notice for one of them as soon as
    /// it comes ([`check_changed_namespaces`]). One marked gone (by a notice, or by opening its NSID again and
    /// finding another namespace there) stays until the next reconnect, which fails the commands kept for it:
    /// beside the one opened since under the same NSID, told apart from it by its tag.
    ns_ids: Mutex<Vec<NsEntry>>,
    /// The last namespace tag given out ([`NsMark::tag`]).
    ns_tags: std::sync::atomic::AtomicU32,
    /// The volatile write cache setting this host chose (a Set Features 06h that succeeded through
    /// [`Controller::admin`] or [`Controller::set_write_cache`]), None if it never chose: a new association
    /// starts with the controller's default, so every reconnect sets it again before anything is re-issued.
    write_cache: Mutex<Option<bool>>,
}

/// A namespace opened: its identifiers and block size, as read when it was opened, and the mark its handles
/// ([`crate::Namespace`]) look at before every command: set, with why, once it was found removed from the target,
/// replaced by another namespace under its NSID, or formatted with other blocks than its handles count.
struct NsEntry {
    nsid: u32,
    ids: Vec<identify::NsDescriptor>,
    block_size: u32,
    mark: NsMark,
}

/// Set when a namespace was removed or replaced (why, in words): see [`NsEntry`].
pub(crate) type NsGone = Arc<std::sync::OnceLock<String>>;

/// What a [`crate::Namespace`] handle holds of the opening it came from: the mark it looks at before every
/// command, shared by every handle of that namespace, and the tag its commands carry ([`Command::ns_tag`]).
/// Each namespace opened gets its own tag (never 0, which commands sent without a handle carry), so that once
/// a namespace was replaced and its NSID opened again, a reconnect tells the commands of the namespace before
/// (failed) from those of the one opened since (re-issued), which the NSID alone does not.
#[derive(Clone)]
pub(crate) struct NsMark {
    pub(crate) gone: NsGone,
    pub(crate) tag: u32,
}

impl Shared {
    /// Change the state (and what the I/O path sees of it).
    fn set_state(&self, f: impl FnOnce(&mut State)) {
        let mut st = lock(&self.state);
        f(&mut st);
        let ok = matches!(*st, State::Live | State::Reconnecting { failing_fast: false, .. });
        self.accepting.store(ok, Ordering::Release);
    }

    /// The error for a command that found its submission channel closed: the reason the controller was lost
    /// (or shut down) when it was, as [`Controller::check`] gives it, rather than a bare "closed" (README, Ride-through:
    /// every request fails with an error that says why and since when). A request that waited for room in a
    /// full channel through an outage is refused this way when the controller is lost at ctrl_loss_tmo.
    fn closed_error(&self) -> Error {
        match &*lock(&self.state) {
            State::Failed { reason } => Error::ControllerLost(reason.clone()),
            _ => closed(),
        }
    }

    /// Why the controller does not accept I/O now, if it does not (failed, or failing fast): what a command
    /// refused for it fails with ([`Controller::check`], [`Shared::refused`]).
    #[cold]
    #[inline(never)]
    fn not_accepting(&self) -> Option<Error> {
        match &*lock(&self.state) {
            State::Failed { reason } => Some(Error::ControllerLost(reason.clone())),
            State::Reconnecting { failing_fast: true, cause, .. } => {
                Some(Error::PathError(format!("disconnected ({cause}); reconnecting")))
            }
            _ => None,
        }
    }

    /// Is a command for the namespace marked `ns` kept out of a submission channel now? Asked under the
    /// channel's lock ([`submit::Sender::try_send_unless`], [`submit::Sender::send_unless`]): its namespace is
    /// gone, or the controller does not accept I/O (failed, or failing fast). The supervisor turns `accepting`
    /// off before it fails what the channels hold at fast_io_fail_tmo, under that lock, so a command that passed
    /// [`Controller::check`] just before is either among those failed or refused here, never left to wait out
    /// the next reconnect attempt.
    fn refuses(&self, ns: Option<&NsMark>) -> bool {
        ns.is_some_and(|m| m.gone.get().is_some()) || !self.accepting.load(Ordering::Acquire)
    }

    /// The error for a command [`Shared::refuses`] kept out: its namespace gone, or why the controller does not
    /// accept I/O.
    #[cold]
    #[inline(never)]
    fn refused(&self, cmd: &Command, ns: Option<&NsMark>) -> Error {
        match ns.and_then(|m| m.gone.get()) {
            Some(why) => crate::namespace::gone_error(cmd.sqe.nsid.get(), &self.opts.subnqn, why),
            None => self.not_accepting().unwrap_or_else(closed),
        }
    }
}

/// A controller. Cheap to clone. When the last clone (and the last [`crate::Namespace`] of it) is dropped
/// without [`Controller::shutdown`], the controller is closed abruptly: its queues, keep-alive and reconnect
/// tasks end and anything still queued fails with "controller shut down".
///
/// Its queue, keep-alive and reconnect tasks run on the Tokio runtime [`Controller::connect`] was called on:
/// it may be used from any runtime or thread (it is `Send + Sync`), but only while that one runs; once it is
/// shut down (dropped), every command fails with "the controller is closed".
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Shared>,
    _handle: Arc<HandleGuard>,
}

/// Held only by user handles; the background tasks hold `Shared` itself.
struct HandleGuard(CancellationToken);

impl Drop for HandleGuard {
    fn drop(&mut self) {
        self.0.cancel();
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// The name of a command, for errors.
pub fn command_name(sqe: &SubmissionEntry, admin: bool) -> &'static str {
    if sqe.opcode == FABRICS {
        fctype_name(sqe.fctype())
    } else if admin {
        admin_name(sqe.opcode)
    } else {
        io_name(sqe.opcode)
    }
}

/// Send a command and wait for its completion; an error status becomes [`Error::Nvme`].
pub async fn submit(
    tx: &submit::Sender<Command>,
    sqe: SubmissionEntry,
    data_out: Bytes,
    data_in_len: usize,
    name: &'static str,
) -> Result<Completion> {
    let rx = send(tx, sqe, data_out, data_in_len, name, true).await?;
    finish(rx, name).await
}

/// Queue a command; the receiver yields its completion.
pub async fn send(
    tx: &submit::Sender<Command>,
    sqe: SubmissionEntry,
    data_out: Bytes,
    data_in_len: usize,
    name: &'static str,
    replayable: bool,
) -> Result<Reply> {
    send_or(tx, sqe, data_out, data_in_len, name, replayable, closed).await
}

/// [`send`], a closed channel failing the command with `closed_error()` ([`Shared::closed_error`] for a caller
/// that can say why the controller went).
async fn send_or(
    tx: &submit::Sender<Command>,
    sqe: SubmissionEntry,
    data_out: Bytes,
    data_in_len: usize,
    name: &'static str,
    replayable: bool,
    closed_error: impl Fn() -> Error,
) -> Result<Reply> {
    let (cmd, rx) = command(sqe, data_out, data_in_len, name, replayable, 0)?;
    if let Some(cmd) = try_enqueue(tx, cmd).map_err(|_| closed_error())? {
        tx.send(cmd).await.map_err(|_| closed_error())?;
    }
    Ok(rx)
}

/// A command and the receiver of its completion. Inline, its error out of line: every I/O makes one (out of
/// line it cost 56 instructions per I/O, bench/icount.sh, host randread QD32).
#[inline]
fn command(
    sqe: SubmissionEntry,
    data_out: Bytes,
    data_in_len: usize,
    name: &'static str,
    replayable: bool,
    ns_tag: u32,
) -> Result<(Command, Reply)> {
    let Ok(data_in_len) = u32::try_from(data_in_len) else {
        return Err(too_long(name, data_in_len));
    };
    let (reply, rx) = crate::reply::channel();
    Ok((
        Command {
            sqe,
            data_out,
            data_in_len,
            ns_tag,
            replayable,
            reply,
            timeouts: 0,
            retries: 0,
            losses: 0,
            ana_waits: 0,
            fused: None,
        },
        rx,
    ))
}

#[cold]
#[inline(never)]
fn too_long(name: &str, len: usize) -> Error {
    Error::Invalid(format!("{name} of {len} bytes: a command transfers less than 4 GiB"))
}

/// Queue `cmd` if the queue has room (the usual case: no send future to build and poll); `Some(cmd)` back if
/// it is full, for the caller to wait with `tx.send`.
fn try_enqueue(tx: &submit::Sender<Command>, cmd: Command) -> Result<Option<Command>> {
    match tx.try_send(cmd) {
        Ok(()) => Ok(None),
        Err(submit::TrySendError::Full(cmd)) => Ok(Some(cmd)),
        Err(submit::TrySendError::Closed(_) | submit::TrySendError::Refused(_)) => Err(closed()),
    }
}

fn closed() -> Error {
    Error::NotConnected("the controller is closed".into())
}

/// What [`Controller::io_submit`] did with a command.
pub enum Submitted<'a> {
    /// Queued: the completion comes through the [`Reply`] (see [`finish`]).
    Queued(Reply),
    /// The queue's channel holds its capacity: [`Backlogged::queue`] waits for room.
    Full(Backlogged<'a>),
}

/// A command waiting for room in its queue's channel.
pub struct Backlogged<'a> {
    sh: &'a Shared,
    tx: &'a submit::Sender<Command>,
    /// The mark of the namespace the command is for, if it came through a [`crate::Namespace`]: looked at under
    /// the channel's lock at every try ([`submit::Sender::send_unless`]), see [`Controller::io_submit_for`].
    ns: Option<&'a NsMark>,
    /// Boxed, so that a [`Submitted`] is a few words: on the usual path it is returned and matched by value.
    cmd: Box<Command>,
    rx: Reply,
}

impl Backlogged<'_> {
    /// Wait for room and queue the command; then the completion comes through the returned [`Reply`].
    pub async fn queue(self) -> Result<Reply> {
        let Backlogged { sh, tx, ns, cmd, rx } = self;
        // Asked at every try: a caller that waited for room through the outage would otherwise be let in by the
        // queued commands failed at fast_io_fail_tmo, and wait out the next reconnect attempt.
        match tx.send_unless(*cmd, || sh.refuses(ns)).await {
            Ok(()) => Ok(rx),
            Err(submit::TrySendError::Refused(c)) => Err(sh.refused(&c, ns)),
            Err(_) => Err(sh.closed_error()),
        }
    }
}

/// Wait for a queued command: its completion, an error status as [`Error::Nvme`].
pub fn finish(rx: Reply, name: &'static str) -> Finish {
    Finish { rx, name }
}

/// The future [`finish`] returns: a plain future over the [`Reply`], not an `async fn`'s state machine
/// around it, since every I/O awaits one.
pub struct Finish {
    rx: Reply,
    name: &'static str,
}

impl std::future::Future for Finish {
    type Output = Result<Completion>;

    fn poll(mut self: std::pin::Pin<&mut Self>, cx: &mut std::task::Context<'_>) -> std::task::Poll<Self::Output> {
        let name = self.name;
        std::pin::Pin::new(&mut self.rx).poll(cx).map(|r| {
            let c = r.map_err(|_| Error::NotConnected("the command was dropped".into()))??;
            status_ok(c, name)
        })
    }
}

/// A completion with an error status becomes [`Error::Nvme`].
fn status_ok(c: Completion, name: &'static str) -> Result<Completion> {
    if c.status().is_success() {
        Ok(c)
    } else {
        Err(Error::Nvme { command: name, status: c.status() })
    }
}

/// The instant `d` from now, or, for a `d` too long to add (an option of `Duration::MAX`, say), a year from
/// now: as far as any wait here needs to go, where the sum would overflow.
fn deadline_after(d: Duration) -> TInstant {
    let now = TInstant::now();
    now.checked_add(d).unwrap_or_else(|| now + Duration::from_secs(365 * 86_400))
}

fn connect_refusal(status: Status, dw0: u32, o: &ConnectOptions) -> Error {
    let reason = match status.code() {
        s if s == Status::CONNECT_INVALID_HOST => format!("host {} is not allowed to use {}", o.hostnqn, o.subnqn),
        s if s == Status::CONNECT_INVALID_PARAMETERS => {
            let ip = InvalidParameter::from_dw0(dw0);
            match (ip.in_data, ip.offset) {
                // The same answer for a subsystem the target has not and one it does not export on this port
                // (NVMe-oF gives no other), so both are said.
                (true, 256) => format!("the target has no subsystem {} (or does not offer it on this port)", o.subnqn),
                (true, 512) => format!("the host NQN {} was rejected", o.hostnqn),
                (true, 16) => "the controller ID was rejected (controller gone?)".into(),
                (false, 46) if o.disable_sqflow => {
                    "the connect attributes were rejected (this target cannot disable SQ flow control: \
                     connect without --disable-sqflow)"
                        .into()
                }
                (d, off) => {
                    format!("invalid parameter at byte {off} of the {}", if d { "Connect data" } else { "command" })
                }
            }
        }
        s if s == Status::CONNECT_CONTROLLER_BUSY => {
            "controller busy (the target may still be draining an older association)".into()
        }
        s if s == Status::CONNECT_INCOMPATIBLE_FORMAT => "incompatible Connect format".into(),
        s if s == Status::AUTHENTICATION_REQUIRED => format!(
            "the subsystem {} requires DH-HMAC-CHAP authentication of host {}{}",
            o.subnqn,
            o.hostnqn,
            if o.dhchap_secret.is_none() { ": give --dhchap-secret" } else { "" }
        ),
        _ => status.name(true).to_string(),
    };
    Error::ConnectRefused { reason: format!("{reason} ({})", status.name(true)), status }
}

/// Identify with the given CNS and NSID: 4096 bytes.
pub async fn identify_raw(tx: &submit::Sender<Command>, cns: u8, nsid: u32) -> Result<Bytes> {
    let mut s = SubmissionEntry::new(aop::IDENTIFY, 0);
    s.nsid.set(nsid);
    s.cdw10.set(cns as u32);
    Ok(submit(tx, s, Bytes::new(), 4096, "Identify").await?.data)
}

/// Get Log Page: `len` bytes of `lid` at `offset`, or fewer if the controller sent fewer (never padded: a
/// reader of a page tells a page cut short from one whose fields are zero).
pub async fn get_log_page(tx: &submit::Sender<Command>, lid: u8, nsid: u32, len: usize, offset: u64) -> Result<Bytes> {
    let mut s = SubmissionEntry::new(aop::GET_LOG_PAGE, 0);
    s.nsid.set(nsid);
    get_log_page::set(&mut s, lid, 0, len as u32, offset);
    let c = submit(tx, s, Bytes::new(), len, "Get Log Page").await?;
    Ok(c.data.slice(..c.transferred.min(c.data.len())))
}

/// A queue's receiver and unfinished commands while it has no connection.
struct Slot {
    rx: submit::Receiver<Command>,
    pending: Vec<Command>,
}

/// One set-up command on a queue that is not open yet (never replayed), bounded by `deadline`.
async fn setup(
    tx: &submit::Sender<Command>,
    sqe: SubmissionEntry,
    data: Bytes,
    data_in: usize,
    name: &'static str,
    deadline: TInstant,
) -> Result<Completion> {
    let start = TInstant::now();
    let rx = send(tx, sqe, data, data_in, name, false).await?;
    match tokio::time::timeout_at(deadline, rx).await {
        Ok(r) => r.map_err(|_| Error::NotConnected("queue closed during set-up".into()))?,
        Err(_) => Err(Error::Timeout { what: format!("{name} during set-up"), after: start.elapsed() }),
    }
}

pub(crate) async fn setup_ok(
    tx: &submit::Sender<Command>,
    sqe: SubmissionEntry,
    data: Bytes,
    data_in: usize,
    name: &'static str,
    deadline: TInstant,
) -> Result<Completion> {
    status_ok(setup(tx, sqe, data, data_in, name, deadline).await?, name)
}

type Exits = (mpsc::UnboundedSender<(usize, QueueExit)>, mpsc::UnboundedReceiver<(usize, QueueExit)>);

/// Read the connection policy page (README, Connection policy) on a new association's admin queue. None: the target advertises
/// none (it refuses the page as one it does not have, or answers something that is not a holdfast page).
///
/// `last` is the policy of the previous association (None at the first connect). A page that target could not
/// give this time (another error status, or a page cut short or malformed) leaves `last` in force, with a
/// warning: a transient failure must not swap the target's ctrl_loss_tmo for a default many times as long. A
/// transport failure or a timeout fails the attempt, as for any command of the set-up.
async fn read_policy(
    admin: &submit::Sender<Command>,
    o: &ConnectOptions,
    last: Option<ConnectionPolicy>,
    deadline: TInstant,
) -> Result<(Option<ConnectionPolicy>, bool)> {
    let mut s = SubmissionEntry::new(aop::GET_LOG_PAGE, 0);
    get_log_page::set(&mut s, LID_HOLDFAST_POLICY, 0, 512, 0);
    let c = setup(admin, s, Bytes::new(), 512, "Get Log Page", deadline).await?;
    let why = if c.status().is_success() {
        // What the controller sent: a page cut short of the fields we read is refused (TooShort), not read as
        // one whose missing fields are unset.
        match ConnectionPolicy::from_bytes(c.data.get(..c.transferred).unwrap_or_default()) {
            Ok(p) => return Ok((Some(p), false)),
            // Not a holdfast page at all (a target that answers unknown pages with zeroes): quietly none.
            Err(PolicyParseError::BadSignature(_)) => return Ok((None, false)),
            Err(e) => e.to_string(),
        }
    } else {
        // The page is not there (Invalid Log Page; Invalid Field from a target that checks the identifier
        // that way): the target advertises no policy, now.
        let code = c.status().code();
        if code == Status::INVALID_LOG_PAGE || code == Status::INVALID_FIELD {
            return Ok((None, false));
        }
        format!("reading it failed: {}", c.status())
    };
    // Unreadable: which instance of the target this is, is not known (`instance_unknown`: the caller counts a
    // possible restart). An announced planned downtime is not carried over: a new instance may have none.
    match last {
        Some(p) => {
            tracing::warn!(addr = %o.addr, "the advertised policy could not be read again ({why}): the last one read stays in force, but for its planned downtime; the target may have restarted");
            Ok((Some(ConnectionPolicy { planned_downtime_ms: 0, ..p }), true))
        }
        None => {
            tracing::warn!(addr = %o.addr, "ignoring the advertised policy: {why}");
            Ok((None, true))
        }
    }
}

/// Start queue `idx` (0 = admin) on a fresh connection, Connect it, and return its set-up channel and the
/// switch that opens it to callers. The queue task reports its exit on `exits`.
///
/// `slot` is taken only when the queue task is started, and `started` counted at once: dropped at any await
/// (the supervisor gives up an attempt when the controller is shut down), this leaves the slot where it was or
/// with a task whose exit the supervisor collects. Taken into the future, it would be dropped with it, and
/// every command waiting in it would fail with a bare "the command was dropped".
#[allow(clippy::too_many_arguments)]
async fn start_queue(
    sh: &Shared,
    idx: usize,
    size: u16,
    cntlid: u16,
    kato: Duration,
    max_incapsule: usize,
    max_transfer: usize,
    slot: &mut Option<Slot>,
    started: &mut usize,
    exits: &mpsc::UnboundedSender<(usize, QueueExit)>,
    cancel: &CancellationToken,
    deadline: TInstant,
    crdt: [u16; 3],
    anatt: Duration,
) -> Result<(submit::Sender<Command>, watch::Sender<bool>, u16)> {
    let o = &sh.opts;
    if slot.is_none() {
        return Err(Error::NotConnected("queue slot missing".into()));
    }
    let timeout = o.connect_timeout.min(deadline.saturating_duration_since(TInstant::now()));
    let conn = transport::connect(&o.addr, o.hdgst, o.ddgst, max_transfer.max(64 << 10), timeout).await?;
    let Some(slot) = slot.take() else { return Err(Error::NotConnected("queue slot missing".into())) };
    let qid = idx as u16;
    let params = QueueParams {
        qid,
        depth: size - 1,
        framing: conn.framing,
        max_incapsule,
        maxh2cdata: conn.maxh2cdata,
        io_timeout: if qid == 0 { o.io_timeout.max(Duration::from_secs(10)) } else { o.io_timeout },
        addr: o.addr.clone(),
        poll: sh.poll.clone(),
        closing: sh.shutdown.clone(),
        crdt,
        anatt,
    };
    let (setup_tx, setup_rx) = submit::channel(8);
    let (open_tx, open_rx) = watch::channel(false);
    let (exits, cancel2) = (exits.clone(), cancel.clone());
    let replay: Vec<Command> = slot.pending;
    let queue = tokio::spawn(queue::run(
        conn.stream,
        conn.decoder,
        conn.inbuf,
        params,
        slot.rx,
        replay,
        setup_rx,
        open_rx,
        cancel2,
    ));
    watch_queue(queue, idx, sh.broken.clone(), exits);
    *started += 1;
    let mut cmd = ConnectCommand::new(0, qid, size - 1, if qid == 0 { kato_ms(kato) } else { 0 });
    if o.disable_sqflow {
        cmd.cattr |= fabrics::CATTR_DISABLE_SQ_FLOW;
    }
    let data = ConnectData::new(o.hostid, cntlid, &o.subnqn, &o.hostnqn);
    match setup(&setup_tx, cmd.to_sqe(), Bytes::copy_from_slice(data.as_bytes()), 0, "Connect", deadline).await {
        Ok(c) if c.status().is_success() => {
            if o.disable_sqflow {
                // Nothing to do either way: the queue never holds more than its size (TP 8005).
                let granted = c.cqe.sqhd.get() == fabrics::SQHD_FLOW_DISABLED;
                tracing::debug!(qid, granted, "SQ flow control disable requested");
            }
            let cntlid = c.cqe.dw0.get() as u16;
            if qid == 0 && cntlid >= 0xFFF0 {
                // FFF0h-FFFFh are reserved (NVMe-oF 1.1 §4.2, as the target's MAX_CNTLID has it); FFFFh in the I/O
                // queues' Connects would even ask for "any dynamic controller".
                let what = format!("Connect answered with controller ID {cntlid:#06x}, a reserved value");
                return Err(Error::Protocol { qid, what });
            }
            // AUTHREQ (dw0 bits 17 ATR, 18 ASCR): the controller runs nothing on this queue until the host
            // authenticates in band (NVMe Base 2.0 §8.13), which it does here, before anything else goes on the
            // queue. Secure channel concatenation (ASCR, a TLS PSK from the exchange) is not done.
            let authreq = (c.cqe.dw0.get() >> 17) & 3;
            if authreq & 2 != 0 {
                let reason = format!(
                    "the subsystem {} requires secure channel concatenation (AUTHREQ ASCR), which this host does \
                     not support",
                    o.subnqn
                );
                return Err(Error::ConnectRefused { reason, status: Status::AUTHENTICATION_REQUIRED });
            }
            if authreq & 1 != 0 {
                let Some(secrets) = &sh.auth else {
                    let reason = format!(
                        "the subsystem {} requires DH-HMAC-CHAP authentication of host {}: give --dhchap-secret \
                         (ConnectOptions::dhchap_secret)",
                        o.subnqn, o.hostnqn
                    );
                    return Err(Error::ConnectRefused { reason, status: Status::AUTHENTICATION_REQUIRED });
                };
                crate::auth::authenticate(&setup_tx, qid, secrets, o, deadline).await?;
            } else if sh.auth.as_ref().is_some_and(|s| s.bidirectional()) {
                // Given the controller's secret, the host authenticates the controller, which it can do only in an
                // exchange the controller asks for: one that does not (a target impersonated, or a path whose
                // AUTHREQ was cleared on the way) would be used unauthenticated. (The Linux host goes on then.)
                let reason = format!(
                    "{} did not ask for authentication on queue {qid} of {}, so the controller could not be \
                     authenticated with --dhchap-ctrl-secret (ConnectOptions::dhchap_ctrl_secret): refused",
                    o.addr, o.subnqn
                );
                return Err(Error::ConnectRefused { reason, status: Status::AUTHENTICATION_REQUIRED });
            }
            Ok((setup_tx, open_tx, cntlid))
        }
        Ok(c) => Err(connect_refusal(c.status(), c.cqe.dw0.get(), o)),
        Err(e) => Err(e),
    }
}

/// Report the exit of the queue task `queue` (slot `idx`) on `exits`, as the supervisor expects of every
/// queue it started. A queue task that panicked (a bug) has no exit to give: its submission channel and
/// in-flight commands (whose callers get [`crate::reply::ReplyDropped`]) went with it. Then `broken` says why,
/// and the exit sent holds a closed channel; the supervisor, seeing `broken`, declares the controller lost
/// rather than waiting for an exit that never comes (a hang) or reconnecting a queue nothing can submit to.
fn watch_queue(
    queue: tokio::task::JoinHandle<QueueExit>,
    idx: usize,
    broken: Arc<Mutex<Option<String>>>,
    exits: mpsc::UnboundedSender<(usize, QueueExit)>,
) {
    tokio::spawn(async move {
        let exit = match queue.await {
            Ok(exit) => exit,
            Err(e) => {
                let what = match e.try_into_panic() {
                    Ok(p) => {
                        let msg = p
                            .downcast_ref::<&str>()
                            .map(|s| s.to_string())
                            .or_else(|| p.downcast_ref::<String>().cloned())
                            .unwrap_or_else(|| "a non-text payload".into());
                        format!("panicked: {msg}")
                    }
                    Err(e) => format!("ended abnormally: {e}"),
                };
                let reason = format!("internal error: the task of queue {idx} {what}");
                tracing::error!("{reason}");
                lock(&broken).get_or_insert(reason.clone());
                let (_, rx) = submit::channel(1);
                QueueExit { rx, pending: Vec::new(), error: Some(Error::ControllerLost(reason)) }
            }
        };
        let _ = exits.send((idx, exit));
    });
}

/// A queue slot the controller did not grant on this association (Set Features Number of Queues answered
/// with fewer): its commands, re-issued ones first, are handed to a granted queue until the association ends;
/// then the slot comes back through `exits` like any queue's, with whatever it had not handed on yet.
fn carry_queue(
    idx: usize,
    slot: Slot,
    to: submit::Sender<Command>,
    exits: &mpsc::UnboundedSender<(usize, QueueExit)>,
    cancel: &CancellationToken,
) {
    let (exits, cancel) = (exits.clone(), cancel.clone());
    tokio::spawn(async move {
        let Slot { mut rx, pending } = slot;
        let mut backlog: std::collections::VecDeque<Command> = pending.into();
        loop {
            let cmd = match backlog.pop_front() {
                Some(c) => c,
                None => tokio::select! {
                    _ = cancel.cancelled() => break,
                    c = rx.recv() => match c {
                        Some(c) => c,
                        None => break,
                    },
                },
            };
            // Room in the granted queue's channel; the command goes back to the backlog if the association
            // ends first, so nothing is lost (and no permit is held while idle).
            let room = tokio::select! {
                _ = cancel.cancelled() => false,
                r = to.ready() => r,
            };
            if !room {
                backlog.push_front(cmd);
                break;
            }
            match to.try_send(cmd) {
                Ok(()) => {}
                // Another sender took the room first: wait again.
                Err(submit::TrySendError::Full(cmd)) => backlog.push_front(cmd),
                Err(submit::TrySendError::Closed(cmd) | submit::TrySendError::Refused(cmd)) => {
                    backlog.push_front(cmd);
                    break;
                }
            }
        }
        let _ = exits.send((idx, QueueExit { rx, pending: backlog.into(), error: None }));
    });
}

/// Bring up one association on the given queue slots. On failure every queue task started is torn down
/// and its slot comes back through `exits` (the caller collects `started` exits). `unissued` counts the commands
/// of the slots' `pending` failed instead of re-issued (their namespace found gone: [`fail_gone_namespaces`]).
async fn establish(
    sh: &Shared,
    slots: &mut Vec<Option<Slot>>,
    exits: &mpsc::UnboundedSender<(usize, QueueExit)>,
    started: &mut usize,
    deadline: TInstant,
    first: bool,
    unissued: &mut usize,
) -> Result<(CancellationToken, bool)> {
    let o = &sh.opts;
    let cancel = sh.shutdown.child_token();
    let eff = lock(&sh.info).effective.clone();
    let take = |slots: &mut Vec<Option<Slot>>, i: usize| {
        slots[i].take().ok_or_else(|| Error::NotConnected("queue slot missing".into()))
    };
    let (admin, open_admin, cntlid) = match start_queue(
        sh,
        0,
        ADMIN_QUEUE_SIZE,
        fabrics::CNTLID_DYNAMIC,
        eff.kato.0,
        ADMIN_INCAPSULE,
        1 << 20,
        &mut slots[0],
        started,
        exits,
        &cancel,
        deadline,
        [0; 3],
        Duration::ZERO,
    )
    .await
    {
        Ok(v) => v,
        Err(e) => {
            cancel.cancel();
            return Err(e);
        }
    };
    let result = async {
        let prop_get = |ofst, wide| {
            let admin = admin.clone();
            async move {
                Ok::<u64, Error>(
                    setup_ok(
                        &admin,
                        PropertyCommand::new(0, ofst, wide, None).to_sqe(),
                        Bytes::new(),
                        0,
                        "Property Get",
                        deadline,
                    )
                    .await?
                    .cqe
                    .result64(),
                )
            }
        };
        let capv = prop_get(property::CAP, true).await?;
        let vs = prop_get(property::VS, false).await? as u32;
        // CC.MPS is 0 (4 KiB pages, what this host uses): a controller whose smallest page is larger cannot be
        // enabled with it (NVMe Base 2.0 §3.1.4.5; the Linux host refuses it the same way).
        let mpsmin = ((capv >> 48) & 0xF) as u32;
        if mpsmin != 0 {
            return Err(Error::Protocol {
                qid: 0,
                what: format!(
                    "the controller's smallest memory page is {} KiB (CAP.MPSMIN); this host uses 4 KiB",
                    4 << mpsmin
                ),
            });
        }
        setup_ok(
            &admin,
            PropertyCommand::new(0, property::CC, false, Some(cc::ENABLE_DEFAULT as u64)).to_sqe(),
            Bytes::new(),
            0,
            "Property Set",
            deadline,
        )
        .await?;
        let ready_limit = Duration::from_millis(500 * cap::timeout_500ms(capv).max(1) as u64);
        let t0 = Instant::now();
        loop {
            let st = prop_get(property::CSTS, false).await? as u32;
            if st & csts::CFS != 0 {
                return Err(Error::Protocol {
                    qid: 0,
                    what: "controller fatal status (CSTS.CFS) while enabling".into(),
                });
            }
            if st & csts::RDY != 0 {
                break;
            }
            if t0.elapsed() > ready_limit {
                return Err(Error::Timeout { what: "waiting for CSTS.RDY".into(), after: ready_limit });
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut s = SubmissionEntry::new(aop::IDENTIFY, 0);
        s.cdw10.set(identify::CNS_CONTROLLER as u32);
        let idb = setup_ok(&admin, s, Bytes::new(), 4096, "Identify", deadline).await?.data;
        let id = Box::new(
            IdentifyController::read_from_bytes(idb.get(..4096).unwrap_or_default())
                .map_err(|_| Error::Protocol { qid: 0, what: "short Identify".into() })?,
        );
        // Over fabrics data goes by SGL and in-capsule data right after the command (NVMe-oF 1.1 §2.1, §3.3):
        // a controller that says otherwise would read our commands' data from elsewhere. The Linux host refuses
        // such a controller too ("icdoff is not supported", "Mandatory sgls are not supported").
        if id.icdoff.get() != 0 {
            return Err(Error::Protocol {
                qid: 0,
                what: format!(
                    "the controller wants in-capsule data at offset {} (ICDOFF); only 0 is supported",
                    id.icdoff.get()
                ),
            });
        }
        if id.sgls.get() & 0x3 == 0 {
            return Err(Error::Protocol {
                qid: 0,
                what: "the controller reports no SGL support (SGLS), which fabrics require".into(),
            });
        }
        if !first {
            let gone = check_namespace_ids(sh, &admin, deadline).await?;
            *unissued += fail_gone_namespaces(sh, slots, gone);
        }
        let is_discovery = o.subnqn == fabrics::DISCOVERY_NQN;
        let (adv, instance_unknown) = if is_discovery {
            (None, false)
        } else {
            let last = if first { None } else { lock(&sh.info).policy };
            read_policy(&admin, o, last, deadline).await?
        };
        let was_unknown = lock(&sh.info).instance_unknown;
        // The previous association was with a holdfast controller (its Identify carried a uniquifier): end it
        // there before anything is issued again (README, No stale writes).
        // At a controller's first connect: an association of an earlier controller of this process to the same
        // subsystem as the same host, lost without the target knowing (ctrl_loss_tmo shorter than its KATO:
        // it may still run that association's writes), is fenced the same way.
        let previous = if first {
            orphans::get(o)
        } else {
            let i = lock(&sh.info);
            i.id.holdfast_uniquifier().map(|u| (i.cntlid, u))
        };
        // Even when the new association got the previous CNTLID back: the previous one is gone then, but it
        // may have been torn down between the Connect's drain and its CNTLID allocation, with writes still in
        // flight that the drain never saw. The fence reports those (the target's ended associations), and
        // leaves a controller alone that is this one (its uniquifier differs).
        if let Some((prev_cntlid, prev_uniquifier)) = previous {
            let cqt_ms = adv.map_or(0, |a| a.cqt_ms);
            fence_previous_association(&admin, prev_cntlid, prev_uniquifier, cqt_ms, deadline).await?;
            if first {
                orphans::forget(o, prev_cntlid, prev_uniquifier);
            }
        }
        let new_eff = policy::resolve(o, adv.as_ref());
        if !is_discovery && (first || !new_eff.logs_as(&eff)) {
            new_eff.log(&o.addr);
        }
        if new_eff.kato.0 != eff.kato.0 {
            // The target advertises another KATO than the Connect carried: adopt it (Set Features 0Fh).
            setup_ok(&admin, set_kato(new_eff.kato.0), Bytes::new(), 0, "Set Features (Keep Alive Timer)", deadline)
                .await?;
        }
        // A reconnect counts as a restart when the instance ID changed, and, not to tell an application that
        // writes survived when they may not have, when the instance is not known on this association or was
        // not on the one before (its policy page could not be read): a target restart is then possible.
        let restarted = matches!((eff.instance_id, new_eff.instance_id), (Some(a), Some(b)) if a != b)
            || (!first
                && (instance_unknown
                    // Known again after an association it was not: unless it is the last one known (instance
                    // IDs are random per start: the same one is the same instance).
                    || (was_unknown && new_eff.instance_id.is_some() && new_eff.instance_id != eff.instance_id)));
        // The instance that acknowledged the writes, or the one that replaced it, keeps a namespace's data only
        // for its life: those writes are gone, flushed or not.
        let lost_data = restarted && (eff.volatile_data || new_eff.volatile_data);
        // Advanced Command Retry: once enabled, a retryable error's CRD field selects how long to wait
        // (CRDT1..3) before the command is issued again (NVMe Base 2.0 §5.27.1, Host Behavior Support,
        // FID 16h). As the Linux host does, only for a controller that advertises retry delays.
        let crdt = if !is_discovery && id.crdt1.get() != 0 {
            let mut s = SubmissionEntry::new(aop::SET_FEATURES, 0);
            s.cdw10.set(holdfast_proto::features::HOST_BEHAVIOR_SUPPORT as u32);
            let hbs = holdfast_proto::features::HostBehaviorSupport::with_acre(true);
            let data = Bytes::copy_from_slice(hbs.as_bytes());
            match setup_ok(&admin, s, data, 0, "Set Features (Host Behavior Support)", deadline).await {
                Ok(_) => [id.crdt1.get(), id.crdt2.get(), id.crdt3.get()],
                Err(e) => {
                    tracing::debug!(addr = %o.addr, "ACRE not enabled: {e}");
                    [0; 3]
                }
            }
        } else {
            [0; 3]
        };
        // The write cache as this host set it on the association before (a new one starts with the controller's
        // default), before anything is re-issued: replayed writes are then as durable as they were meant to be.
        // Turning it off again is required (writes would otherwise be acknowledged from a cache the application
        // turned off); on again is best effort. A controller without a volatile write cache
        // (Identify VWC bit 0 clear) has nothing to turn off. A transport failure fails the attempt; a refusal
        // loses the controller (below).
        let write_cache = *lock(&sh.write_cache);
        if let (Some(enabled), false) = (write_cache, first || id.vwc & 1 == 0) {
            match setup_ok(&admin, set_vwc(enabled), Bytes::new(), 0, "Set Features (Volatile Write Cache)", deadline)
                .await
            {
                Ok(_) => {}
                Err(e) if enabled => tracing::debug!(addr = %o.addr, "write cache not turned on again: {e}"),
                // The controller answered, and will not: no later attempt would do better, and none may go on with
                // the cache the application turned off on again.
                Err(Error::Nvme { status, .. }) => {
                    return Err(Error::ControllerLost(format!(
                        "the controller refused to turn its volatile write cache off again ({status}) after a \
                         reconnect: writes would be acknowledged from the cache this host turned off"
                    )))
                }
                Err(e) => return Err(e),
            }
        }
        // ANA Transition Time: how long a command refused with Asymmetric Access Transition may wait for the
        // change to end ([`queue::ana_transition_delay`]), for a controller that reports ANA (CMIC bit 3).
        let anatt =
            if id.cmic & identify::CMIC_ANA != 0 { Duration::from_secs(id.anatt as u64) } else { Duration::ZERO };
        // Asynchronous Event Configuration (FID 0Bh): which optional notices a controller reports before the host
        // says is the controller's choice (holdfast's target: none; Linux nvmet: all it supports). The ones this
        // host answers by reading their log page, where the controller supports them (OAES, whose bits are AEC's:
        // NVMe Base 2.0 §5.27.1.6), as the Linux host enables its own at every association. Not enabled is no
        // reason to fail.
        let notices = id.oaes.get() & (identify::OAES_NS_ATTR | identify::OAES_DISCOVERY_CHANGE);
        if notices != 0 {
            let mut s = SubmissionEntry::new(aop::SET_FEATURES, 0);
            s.cdw10.set(holdfast_proto::features::ASYNC_EVENT_CONFIG as u32);
            s.cdw11.set(notices);
            if let Err(e) =
                setup_ok(&admin, s, Bytes::new(), 0, "Set Features (Asynchronous Event Configuration)", deadline).await
            {
                tracing::debug!(addr = %o.addr, "notices {notices:#x} not enabled: {e}");
            }
        }
        let mdts = id.mdts;
        // MDTS is a power of two in units of the minimum memory page size, 2^(12 + CAP.MPSMIN) (NVMe Base 2.0
        // §5.17.2.1, CAP bits 51:48 in §3.1.4.1); 0 = no limit.
        let max_transfer = if mdts == 0 {
            DEFAULT_MAX_TRANSFER
        } else {
            (4096usize << mpsmin).checked_shl(mdts.min(20) as u32).unwrap_or(usize::MAX).min(DEFAULT_MAX_TRANSFER)
        };
        let mut opens = Vec::new();
        let nq = sh.io.len();
        if nq > 0 {
            let mut s = SubmissionEntry::new(aop::SET_FEATURES, 0);
            s.cdw10.set(holdfast_proto::features::NUMBER_OF_QUEUES as u32);
            let n = nq as u32 - 1;
            s.cdw11.set(n | n << 16);
            let c = setup_ok(&admin, s, Bytes::new(), 0, "Set Features (Number of Queues)", deadline).await?;
            // NSQA and NCQA, 0's based (NVMe Base 2.0 §5.27.1, Number of Queues, FID 07h).
            let granted = ((c.cqe.dw0.get() & 0xFFFF).min(c.cqe.dw0.get() >> 16) + 1) as usize;
            let active = granted.min(nq);
            sh.io_queues_granted.store(active, Ordering::Release);
            if active < nq {
                tracing::warn!(
                    addr = %o.addr,
                    "the controller grants {granted} I/O queues of the {nq} asked for: queues {}..={nq} are carried by \
                     queues 1..={active}",
                    active + 1
                );
            }
            // At most MQES + 1 entries, and no more commands outstanding than MAXCMD (0: not reported), as the
            // Linux host clamps its queue size.
            let maxcmd = match id.maxcmd.get() as u32 {
                0 => u32::MAX,
                m => m.max(2),
            };
            let size = (o.queue_size as u32).min(cap::mqes(capv) as u32 + 1).min(maxcmd) as u16;
            let max_incapsule = (id.ioccsz.get() as usize * 16).saturating_sub(64);
            for qi in 1..=nq {
                if qi > active {
                    let slot = take(slots, qi)?;
                    carry_queue(qi, slot, sh.io[(qi - 1) % active].clone(), exits, &cancel);
                    *started += 1;
                    continue;
                }
                let (_setup, open, _) = start_queue(
                    sh,
                    qi,
                    size,
                    cntlid,
                    eff.kato.0,
                    max_incapsule,
                    max_transfer,
                    &mut slots[qi],
                    started,
                    exits,
                    &cancel,
                    deadline,
                    crdt,
                    anatt,
                )
                .await?;
                opens.push(open);
            }
        }
        let oncs = id.oncs.get();
        // Write Zeroes and Dataset Management limits (I/O controllers only). A status (an older target without
        // CNS 06h) means none; a lost connection or a timeout fails the set-up as any of its commands does.
        let limits = if is_discovery {
            NvmLimits::default()
        } else {
            let mut s = SubmissionEntry::new(aop::IDENTIFY, 0);
            s.cdw10.set(identify::CNS_CSI_CONTROLLER as u32); // CSI 00h (NVM) in CDW11 bits 31:24
            let c = setup(&admin, s, Bytes::new(), 4096, "Identify (NVM command set controller)", deadline).await?;
            match identify::IdentifyControllerNvm::read_from_bytes(c.data.get(..4096).unwrap_or_default()) {
                Ok(d) if c.status().is_success() => NvmLimits::from_identify(&d, mpsmin as u32),
                _ => NvmLimits::default(),
            }
        };
        *lock(&sh.info) = Info { cntlid, id, cap: capv, vs, policy: adv, effective: new_eff, instance_unknown };
        sh.max_transfer.store(max_transfer, Ordering::Release);
        sh.oncs.store(oncs, Ordering::Release);
        *lock(&sh.nvm_limits) = limits;
        Ok::<_, Error>((opens, restarted, lost_data))
    }
    .await;
    match result {
        Ok((opens, restarted, lost_data)) => {
            // Counted before anything of the new association completes: a caller that reads the count before
            // a write and again after its Flush completed sees the restart (the event may come later).
            if restarted {
                sh.target_restarts.fetch_add(1, Ordering::SeqCst);
            }
            if lost_data {
                sh.data_losing_restarts.fetch_add(1, Ordering::SeqCst);
            }
            // Open the queues: re-issued commands go first, then new ones.
            let _ = open_admin.send(true);
            for o in opens {
                let _ = o.send(true);
            }
            drop(admin);
            if restarted {
                tracing::info!(addr = %o.addr, "the target restarted (new instance ID)");
            }
            Ok((cancel, restarted))
        }
        Err(e) => {
            cancel.cancel();
            Err(e)
        }
    }
}

/// On a reconnect to a holdfast target, before anything is issued again: end the previous association
/// (controller `previous` with `uniquifier`, as its Identify Controller said) with Fence Association (vendor
/// admin command C1h) and wait until none of its commands is in flight any more (the command reports how many
/// are; asked again every 5 ms, at most CQT, `cqt_ms`, or 5 s when the target advertises none). The target's
/// drain at Connect only knows associations it has already ended; one it still takes for alive (the host
/// noticed a partition first, and it healed before the target's KATO ran out) would otherwise run commands that
/// reach it late over the old connections, after newer ones. A target that does not know the command (Invalid
/// Opcode) is left as it is.
async fn fence_previous_association(
    admin: &submit::Sender<Command>,
    previous: u16,
    uniquifier: u64,
    cqt_ms: u32,
    deadline: TInstant,
) -> Result<()> {
    let limit = Duration::from_millis(if cqt_ms == 0 { 5000 } else { cqt_ms as u64 });
    let t0 = Instant::now();
    loop {
        let mut s = SubmissionEntry::new(aop::HOLDFAST_FENCE_ASSOCIATION, 0);
        s.cdw10.set(previous as u32);
        s.cdw11.set(uniquifier as u32);
        s.cdw12.set((uniquifier >> 32) as u32);
        let c = setup(admin, s, Bytes::new(), 0, "Fence Association", deadline).await?;
        if c.status().code() == Status::INVALID_OPCODE.code() {
            return Ok(());
        }
        let left = status_ok(c, "Fence Association")?.cqe.dw0.get();
        if left == 0 {
            return Ok(());
        }
        if t0.elapsed() >= limit {
            return Err(Error::Timeout {
                what: format!("the previous association's {left} commands in flight (controller {previous})"),
                after: limit,
            });
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

/// The descriptors that identify a namespace (EUI-64, NGUID, UUID): all but its command set (CSI).
fn namespace_identity(descriptors: &[identify::NsDescriptor]) -> Vec<identify::NsDescriptor> {
    descriptors.iter().copied().filter(|d| !matches!(d, identify::NsDescriptor::Csi(_))).collect()
}

/// Does this status of an Identify CNS 03h say the controller does not give Namespace Identification Descriptor
/// lists (Invalid Field: a controller before NVMe 1.3, where the list is optional)? Then the namespace's
/// identifiers are the EUI-64 and NGUID of its Identify Namespace data ([`identity_from_namespace`]), as the Linux
/// host takes them (nvme_ns_info_from_identify). Any other status is a controller's passing trouble.
pub(crate) fn descriptors_unsupported(status: Status) -> bool {
    status.code() == Status::INVALID_FIELD
}

/// The identifiers Identify Namespace data carries (EUI-64, NGUID; the non-zero ones), for a controller without
/// descriptor lists ([`descriptors_unsupported`]).
pub(crate) fn identity_from_namespace(id: &IdentifyNamespace) -> Vec<identify::NsDescriptor> {
    let mut ids = Vec::new();
    if id.eui64 != [0; 8] {
        ids.push(identify::NsDescriptor::Eui64(id.eui64));
    }
    if id.nguid != [0; 16] {
        ids.push(identify::NsDescriptor::Nguid(id.nguid));
    }
    ids
}

/// On a reconnect, before anything is issued again: every namespace opened must still have the identifiers
/// it had (EUI-64, NGUID, UUID; Identify CNS 03h). Other identifiers mean another namespace under the same
/// NSID (a target re-created with new ones, as Linux's nvmet gives a namespace a random UUID when it is
/// created): replaying writes onto it would write someone else's blocks. So it is when the namespace is no longer
/// active, or formatted with another block size than its handles count (Identify CNS 00h): a Write Zeroes or
/// Deallocate, which carries no data whose length would betray it, would act on other blocks than asked for.
/// Returns the namespaces found so, each with its mark and why, for [`fail_gone_namespaces`]: as the Linux host
/// (nvme_validate_ns: "identifiers changed for nsid") removes that namespace alone, the others ride through. A
/// failure to ask (the connection, a timeout) fails the attempt. One a namespace notice already marked gone is
/// returned as it is, not asked about again.
async fn check_namespace_ids(
    sh: &Shared,
    admin: &submit::Sender<Command>,
    deadline: TInstant,
) -> Result<Vec<(NsMark, u32, String)>> {
    let known: Vec<_> =
        lock(&sh.ns_ids).iter().map(|e| (e.nsid, e.ids.clone(), e.block_size, e.mark.clone())).collect();
    let mut gone = Vec::new();
    for (nsid, before, block_size, mark) in known {
        // Marked gone on the association lost (by a namespace notice, or its NSID opened again on another
        // namespace): its commands kept from it fail here too.
        if let Some(why) = mark.gone.get() {
            let why = why.clone();
            gone.push((mark, nsid, why));
            continue;
        }
        let mut s = SubmissionEntry::new(aop::IDENTIFY, 0);
        s.nsid.set(nsid);
        s.cdw10.set(identify::CNS_NS_DESC_LIST as u32);
        // None: the controller gives no descriptor lists; the identifiers are then Identify Namespace's, below.
        let listed: Option<Vec<_>> = match setup_ok(admin, s, Bytes::new(), 4096, "Identify", deadline).await {
            Ok(c) => Some(namespace_identity(&identify::parse_ns_descriptor_list(&c.data))),
            // Not active any more (Invalid Namespace or Format): not the namespace it was either. Another status
            // (a controller's passing trouble) says nothing about the namespace: the attempt fails, as for a lost
            // connection, and the next one asks again.
            Err(Error::Nvme { status, .. }) if status.code() == Status::INVALID_NAMESPACE => {
                gone.push((mark, nsid, format!("was removed from the target ({status}; found at a reconnect)")));
                continue;
            }
            Err(Error::Nvme { status, .. }) if descriptors_unsupported(status) => None,
            Err(e) => return Err(e),
        };
        let replaced = |now: &Vec<identify::NsDescriptor>| {
            format!("was replaced by another namespace across a reconnect (identifiers changed: {before:?} -> {now:?})")
        };
        if let Some(now) = &listed {
            if *now != before {
                gone.push((mark, nsid, replaced(now)));
                continue;
            }
        }
        let mut s = SubmissionEntry::new(aop::IDENTIFY, 0);
        s.nsid.set(nsid);
        s.cdw10.set(identify::CNS_NAMESPACE as u32);
        let c = setup(admin, s, Bytes::new(), 4096, "Identify", deadline).await?;
        if c.status().is_success() {
            // Identify Namespace data that does not even parse is taken for a namespace that is not active.
            let why = match IdentifyNamespace::read_from_bytes(c.data.get(..4096).unwrap_or_default()) {
                Ok(id) => match listed {
                    // (Zeroed data, a namespace not active any more, is told as such below, not as replaced.)
                    None if id.nsze.get() != 0 && identity_from_namespace(&id) != before => {
                        Some(replaced(&identity_from_namespace(&id)))
                    }
                    _ => namespace_format_change(&id, block_size).map(|why| format!("{why}, found at a reconnect")),
                },
                Err(_) => Some(format!("{NOT_ACTIVE}, found at a reconnect")),
            };
            if let Some(why) = why {
                gone.push((mark, nsid, why));
            }
        } else if listed.is_none() {
            // Neither list nor data: not active any more, or the identifiers could not be checked (a passing
            // trouble, as above).
            if c.status().code() == Status::INVALID_NAMESPACE {
                gone.push((mark, nsid, format!("was removed from the target ({}; found at a reconnect)", c.status())));
                continue;
            }
            return Err(Error::Nvme { command: "Identify", status: c.status() });
        }
    }
    Ok(gone)
}

/// Why a namespace that is not active any more is gone.
const NOT_ACTIVE: &str = "was removed from the target (it is not active)";

/// What Identify Namespace data `id` says of a namespace whose handles count `block_size`-byte blocks without
/// metadata: None if it still is that namespace; else why not (not active, or formatted with other blocks: a
/// Write Zeroes or Deallocate, which carries no data whose length would betray it, would act on other blocks than
/// asked for). The one judgement of both checks: at a reconnect ([`check_namespace_ids`]) and at a namespace
/// notice ([`check_changed_namespaces`]).
fn namespace_format_change(id: &IdentifyNamespace, block_size: u32) -> Option<String> {
    if id.nsze.get() == 0 {
        return Some(NOT_ACTIVE.into());
    }
    let ms = id.lbaf.get(id.formatted_lba_index()).map_or(0, |f| f.ms.get());
    match id.block_size() {
        Some(bs) if bs == block_size && ms == 0 => None,
        bs => Some(format!(
            "was formatted with other blocks ({} bytes{}), not the {block_size}-byte ones its handles count",
            bs.unwrap_or(0),
            if ms != 0 { format!(" and {ms} of metadata") } else { String::new() }
        )),
    }
}

/// The namespaces a reconnect found changed (`gone`: each one's mark, NSID and why; [`check_namespace_ids`]), before
/// anything is issued again: each is marked gone, so that its handles fail every command from then on, and is no
/// longer checked; and every I/O command of its handles still waiting fails with why, never issued to the
/// namespace now under that NSID (README, No stale writes): those kept from the lost connections (in flight, in a queue's
/// backlog or waiting out a retry delay, all in the slots' `pending`) and those queued in the submission channels
/// since. The mark is set first: a caller that waited for room in a full channel queues nothing after the
/// channel was cleared ([`Controller::io_submit_for`]). A command is told to be the namespace's by its tag
/// ([`NsMark`]): the NSID may since have been opened again on the namespace now there, whose handles' commands are
/// re-issued; one sent without a handle (tag 0) by its NSID. Commands for the other namespaces are re-issued as
/// ever; admin commands name no namespace to check. Returns how many of those failed were in the slots' `pending`
/// (which [`Event::Restored`] would otherwise count as re-issued).
fn fail_gone_namespaces(sh: &Shared, slots: &mut [Option<Slot>], gone: Vec<(NsMark, u32, String)>) -> usize {
    if gone.is_empty() {
        return 0;
    }
    for (mark, nsid, why) in &gone {
        tracing::warn!(addr = %sh.opts.addr, "namespace {nsid} {why}: its pending I/O fails, the other namespaces go on");
        let _ = mark.gone.set(why.clone());
    }
    lock(&sh.ns_ids).retain(|e| !gone.iter().any(|(m, ..)| m.tag == e.mark.tag));
    let why_of = |c: &Command| {
        gone.iter()
            .find(|(m, nsid, _)| if c.ns_tag == 0 { *nsid == c.sqe.nsid.get() } else { m.tag == c.ns_tag })
            .map(|g| (g.1, g.2.as_str()))
    };
    let (mut failed, mut from_pending) = (0usize, 0usize);
    for s in slots.iter_mut().skip(1).flatten() {
        let (stale, keep): (Vec<_>, Vec<_>) = s.pending.drain(..).partition(|c| why_of(c).is_some());
        s.pending = keep;
        from_pending += stale.len();
        let queued = s.rx.take_if(|c| why_of(c).is_some());
        for c in stale.into_iter().chain(queued) {
            let Some((nsid, why)) = why_of(&c) else { continue };
            let e = Error::NamespaceGone(format!(
                "namespace {nsid} of {} {why}: the {} pending for it was not issued again (open the namespace again)",
                sh.opts.subnqn,
                c.name(1)
            ));
            c.fail(e);
            failed += 1;
        }
    }
    tracing::info!(addr = %sh.opts.addr, failed, "pending I/O of the namespaces gone failed");
    from_pending
}

impl Controller {
    /// Connect, enable and set up the queues; then keep the association alive (README, Ride-through).
    pub async fn connect(o: ConnectOptions) -> Result<Controller> {
        if o.queue_size < 2 || o.queue_size > 1024 {
            return Err(Error::Invalid(format!("queue size {} is outside 2..=1024", o.queue_size)));
        }
        // An NQN is 1 to 223 bytes (NVMe Base 2.0 §4.5): a longer one would be cut short in the Connect data
        // and refused as another name.
        for (what, nqn) in [("subsystem NQN", &o.subnqn), ("host NQN", &o.hostnqn)] {
            if nqn.is_empty() || nqn.len() > 223 {
                return Err(Error::Invalid(format!("the {what} is {} bytes: an NQN is 1 to 223", nqn.len())));
            }
        }
        if o.io_timeout.is_zero() {
            return Err(Error::Invalid("io_timeout of 0: every command would time out".into()));
        }
        let auth = crate::auth::HostSecrets::from_options(&o)?;
        let is_discovery = o.subnqn == fabrics::DISCOVERY_NQN;
        let nq = if is_discovery { 0 } else { o.nr_io_queues as usize };
        let (admin, arx) = submit::channel(ADMIN_QUEUE_SIZE as usize * 2);
        let mut slots = vec![Some(Slot { rx: arx, pending: Vec::new() })];
        let mut io = Vec::new();
        for _ in 0..nq {
            let (tx, rx) = submit::channel(o.queue_size as usize * 2);
            io.push(tx);
            slots.push(Some(Slot { rx, pending: Vec::new() }));
        }
        let eff = policy::resolve(&o, None);
        let sh = Arc::new(Shared {
            admin,
            io,
            rr: AtomicUsize::new(0),
            info: Mutex::new(Info {
                cntlid: 0,
                id: Box::new(zerocopy::FromZeros::new_zeroed()),
                cap: 0,
                vs: 0,
                policy: None,
                effective: eff,
                instance_unknown: false,
            }),
            max_transfer: AtomicUsize::new(DEFAULT_MAX_TRANSFER),
            oncs: AtomicU16::new(0),
            nvm_limits: Mutex::new(NvmLimits::default()),
            state: Mutex::new(State::Live),
            events: broadcast::channel(64).0,
            shutdown: CancellationToken::new(),
            closed: CancellationToken::new(),
            loss_cause: Mutex::new(None),
            kato_changed: Arc::new(tokio::sync::Notify::new()),
            broken: Arc::new(Mutex::new(None)),
            assoc: Mutex::new(CancellationToken::new()),
            tasks: Mutex::new(CancellationToken::new()),
            poll: o.busy_poll.clone(),
            auth,
            accepting: AtomicBool::new(true),
            ns_ids: Mutex::new(Vec::new()),
            ns_tags: std::sync::atomic::AtomicU32::new(0),
            write_cache: Mutex::new(None),
            stopping: AtomicBool::new(false),
            target_restarts: AtomicU64::new(0),
            data_losing_restarts: AtomicU64::new(0),
            io_queues_granted: AtomicUsize::new(0),
            opts: o,
        });
        let (exits_tx, mut exits_rx): Exits = mpsc::unbounded_channel();
        let mut started = 0;
        let deadline = deadline_after(sh.opts.connect_timeout.max(Duration::from_secs(1)).saturating_mul(3));
        let result = establish(&sh, &mut slots, &exits_tx, &mut started, deadline, true, &mut 0).await;
        match result {
            Ok((assoc, _)) => {
                *lock(&sh.assoc) = assoc.clone();
                start_association_tasks(&sh, &assoc);
                let ctrl = Controller { _handle: Arc::new(HandleGuard(sh.shutdown.clone())), inner: sh.clone() };
                tokio::spawn(supervise(sh, slots, exits_tx, exits_rx, started));
                Ok(ctrl)
            }
            Err(e) => {
                sh.shutdown.cancel();
                for _ in 0..started {
                    let _ = exits_rx.recv().await;
                }
                Err(e)
            }
        }
    }

    /// Fail fast if the controller is failed, or failing fast.
    pub(crate) fn check(&self) -> Result<()> {
        if self.inner.accepting.load(Ordering::Acquire) {
            return Ok(());
        }
        self.inner.not_accepting().map_or(Ok(()), Err)
    }

    /// Run an admin command. Identify, Get Log Page and Get/Set Features are re-issued after a reconnect;
    /// any other admin command still outstanding when the connection is lost fails with a retryable path
    /// error instead (its effect is not known to be idempotent: Format NVM, Namespace Management, ...).
    ///
    /// A transfer longer than the controller's limit ([`Controller::max_transfer`]) either way is refused with
    /// [`Error::Invalid`] before it is sent (a target that enforces MDTS ends the connection over it).
    pub async fn admin(&self, sqe: SubmissionEntry, data_out: Bytes, data_in_len: usize) -> Result<Completion> {
        self.check()?;
        let (len, limit) = (data_out.len().max(data_in_len), self.max_transfer());
        if len > limit {
            return Err(Error::Invalid(format!(
                "{}: {len} bytes is more than the controller's transfer limit ({limit} bytes)",
                command_name(&sqe, true)
            )));
        }
        let replayable =
            matches!(sqe.opcode, aop::IDENTIFY | aop::GET_LOG_PAGE | aop::GET_FEATURES | aop::SET_FEATURES);
        let name = command_name(&sqe, true);
        // A write cache setting is the association's: kept, to be set again on the next one. Kept from the moment
        // it is sent (a reconnect between its completion and this caller's return must not miss it), and given up
        // if it fails.
        let wce = (sqe.opcode == aop::SET_FEATURES
            && sqe.cdw10.get() & 0xFF == holdfast_proto::features::VOLATILE_WRITE_CACHE as u32)
            .then(|| sqe.cdw11.get() & 1 != 0);
        let before = wce.map(|v| lock(&self.inner.write_cache).replace(v));
        let done = match send_or(&self.inner.admin, sqe, data_out, data_in_len, name, replayable, || {
            self.inner.closed_error()
        })
        .await
        {
            Ok(rx) => finish(rx, name).await,
            Err(e) => Err(e),
        };
        if let (Some(v), Some(before)) = (wce, before) {
            if !done.as_ref().is_ok_and(|c| c.status().is_success()) {
                let mut cur = lock(&self.inner.write_cache);
                if *cur == Some(v) {
                    *cur = before;
                }
            }
        }
        done
    }

    /// Turn the controller's volatile write cache on or off (Set Features 06h, NVMe Base 2.0 §5.27.1.4). Off, every
    /// write is durable when it completes. The setting is the association's: after a lost connection this host
    /// sets it again on the new one before it re-issues anything; a controller that then refuses to turn the
    /// cache off again is lost ([`Error::ControllerLost`], with the reason), rather than used with it on.
    pub async fn set_write_cache(&self, enabled: bool) -> Result<()> {
        status_ok(self.admin(set_vwc(enabled), Bytes::new(), 0).await?, "Set Features (Volatile Write Cache)")
            .map(|_| ())
    }

    /// Queue an I/O command on queue `hint` (None: round robin); await the receiver for the completion.
    pub async fn io_send(
        &self,
        hint: Option<usize>,
        sqe: SubmissionEntry,
        data_out: Bytes,
        data_in_len: usize,
    ) -> Result<Reply> {
        self.io_send_for(hint, sqe, data_out, data_in_len, None).await
    }

    /// [`Controller::io_send`] through a namespace handle whose mark is `ns` ([`Controller::io_submit_for`]).
    pub(crate) async fn io_send_for(
        &self,
        hint: Option<usize>,
        sqe: SubmissionEntry,
        data_out: Bytes,
        data_in_len: usize,
        ns: Option<&NsMark>,
    ) -> Result<Reply> {
        match self.io_submit_for(hint, sqe, data_out, data_in_len, ns)? {
            Submitted::Queued(rx) => Ok(rx),
            Submitted::Full(b) => b.queue().await,
        }
    }

    /// [`Controller::io_send`] without a future in the usual case: the command is queued at once if its
    /// queue's channel has room ([`Submitted::Queued`]); if not, the caller awaits [`Backlogged::queue`].
    /// The namespace's reads and writes call this: an `async fn` here was one more state machine to build,
    /// move the command's parts into and poll on every I/O.
    pub fn io_submit(
        &self,
        hint: Option<usize>,
        sqe: SubmissionEntry,
        data_out: Bytes,
        data_in_len: usize,
    ) -> Result<Submitted<'_>> {
        self.io_submit_for(hint, sqe, data_out, data_in_len, None)
    }

    /// [`Controller::io_submit`] through a namespace handle whose mark is `ns`: the command carries the handle's
    /// tag, and is not queued once the mark is set (gone), looked at under the submission channel's lock. A
    /// reconnect that finds the namespace changed sets the mark and then takes the namespace's commands out of the
    /// channels ([`fail_gone_namespaces`]): a caller that found the mark clear before it was set, and queues only
    /// now (it waited for room in a full channel through the outage), is refused rather than sending a stale
    /// command to the namespace now under the NSID (README, No stale writes).
    #[inline]
    pub(crate) fn io_submit_for<'a>(
        &'a self,
        hint: Option<usize>,
        sqe: SubmissionEntry,
        data_out: Bytes,
        data_in_len: usize,
        ns: Option<&'a NsMark>,
    ) -> Result<Submitted<'a>> {
        self.check()?;
        if self.inner.io.is_empty() {
            return Err(Error::Invalid("this controller has no I/O queues".into()));
        }
        let i = match hint {
            Some(q) if q >= self.inner.io.len() => {
                return Err(Error::Invalid(format!(
                    "I/O queue {q}: this controller has {} (0..{})",
                    self.inner.io.len(),
                    self.inner.io.len()
                )))
            }
            Some(q) => q,
            None => self.inner.rr.fetch_add(1, Ordering::Relaxed) % self.inner.io.len(),
        };
        // Compare and Reservation Report only read: a second try answers for the blocks or the reservation as
        // they are then, as a read does. A fused command (a Compare and Write's halves) never is.
        let replayable = matches!(
            sqe.opcode,
            holdfast_proto::opcode::io::READ
                | holdfast_proto::opcode::io::WRITE
                | holdfast_proto::opcode::io::FLUSH
                | holdfast_proto::opcode::io::WRITE_ZEROES
                | holdfast_proto::opcode::io::DATASET_MANAGEMENT
                | holdfast_proto::opcode::io::COMPARE
                | holdfast_proto::opcode::io::RESERVATION_REPORT
        ) && sqe.fuse() == 0;
        let (cmd, rx) =
            command(sqe, data_out, data_in_len, command_name(&sqe, false), replayable, ns.map_or(0, |m| m.tag))?;
        let tx = &self.inner.io[i];
        Ok(match tx.try_send_unless(cmd, || self.inner.refuses(ns)) {
            Ok(()) => Submitted::Queued(rx),
            Err(submit::TrySendError::Full(cmd)) => {
                Submitted::Full(Backlogged { sh: &self.inner, tx, ns, cmd: Box::new(cmd), rx })
            }
            Err(submit::TrySendError::Refused(cmd)) => return Err(self.inner.refused(&cmd, ns)),
            Err(submit::TrySendError::Closed(_)) => return Err(self.inner.closed_error()),
        })
    }

    /// Send a fused operation's two commands (NVMe Base 2.0 §3.4.2: a Compare and Write) through a namespace
    /// handle whose mark is `ns`, back to back on one I/O queue; their replies, first's and second's. Neither is
    /// replayed after a lost connection (README, Ride-through): each then fails with a retryable path error.
    pub(crate) async fn io_send_fused_for(
        &self,
        first: (SubmissionEntry, Bytes),
        second: (SubmissionEntry, Bytes),
        ns: &NsMark,
    ) -> Result<(Reply, Reply)> {
        self.check()?;
        if self.inner.io.is_empty() {
            return Err(Error::Invalid("this controller has no I/O queues".into()));
        }
        let i = self.inner.rr.fetch_add(1, Ordering::Relaxed) % self.inner.io.len();
        let (mut cmd, rx) = command(first.0, first.1, 0, command_name(&first.0, false), false, ns.tag)?;
        let (second_cmd, second_rx) = command(second.0, second.1, 0, command_name(&second.0, false), false, ns.tag)?;
        cmd.fused = Some(Box::new(second_cmd));
        let tx = &self.inner.io[i];
        let rx = match tx.try_send_unless(cmd, || self.inner.refuses(Some(ns))) {
            Ok(()) => rx,
            Err(submit::TrySendError::Full(cmd)) => {
                Backlogged { sh: &self.inner, tx, ns: Some(ns), cmd: Box::new(cmd), rx }.queue().await?
            }
            Err(submit::TrySendError::Refused(cmd)) => return Err(self.inner.refused(&cmd, Some(ns))),
            Err(submit::TrySendError::Closed(_)) => return Err(self.inner.closed_error()),
        };
        Ok((rx, second_rx))
    }

    /// State changes from now on (the connect's own is over before a caller can subscribe: [`Controller::state`]
    /// says where it is). A receiver keeps the last 64 events; one that falls further behind gets
    /// `RecvError::Lagged` and misses some (a restart among them, perhaps: [`Controller::target_restarts`]
    /// counts them all).
    pub fn events(&self) -> broadcast::Receiver<Event> {
        self.inner.events.subscribe()
    }
    /// Where the controller is.
    pub fn state(&self) -> State {
        lock(&self.inner.state).clone()
    }
    /// Identify Controller data of the current association.
    pub fn identify(&self) -> IdentifyController {
        *lock(&self.inner.info).id
    }
    /// CNTLID.
    pub fn cntlid(&self) -> u16 {
        lock(&self.inner.info).cntlid
    }
    /// CAP.
    pub fn cap(&self) -> u64 {
        lock(&self.inner.info).cap
    }
    /// VS.
    pub fn version(&self) -> u32 {
        lock(&self.inner.info).vs
    }
    /// How many times a reconnect found the target restarted (a new instance ID) since this controller
    /// connected. Counted before anything is issued on the new association, so that it is the race-free way to
    /// know whether writes survived: read it before writing, write, [`crate::Namespace::flush`], and read it
    /// again; the same count means the Flush made those writes durable on the target instance that
    /// acknowledged them. A different one means they may be gone (a namespace that does not persist, a RAM
    /// one, starts empty; a target machine that lost power lost what it had not flushed): write them again.
    /// ([`Event::Restored`] says the same, but may arrive after I/O on the new association has completed.)
    pub fn target_restarts(&self) -> u64 {
        self.inner.target_restarts.load(Ordering::SeqCst)
    }
    /// Of [`Controller::target_restarts`], those after which the target said (holdfast's policy page,
    /// VOLATILE_DATA, of the instance before or after) that a namespace keeps its data only for the life of an
    /// instance (a RAM namespace): writes acknowledged before such a restart are gone, flushed or not. A
    /// restart not counted here kept what was written (a file namespace), unless the target's machine lost
    /// power before a Flush: the target cannot tell that, so [`Controller::target_restarts`] is the
    /// conservative count. Counted at the same moment.
    pub fn data_losing_restarts(&self) -> u64 {
        self.inner.data_losing_restarts.load(Ordering::SeqCst)
    }
    /// I/O queues the controller granted on the current association (Set Features Number of Queues): at most
    /// [`Controller::io_queues`]; the queues beyond it are carried by these.
    pub fn io_queues_granted(&self) -> usize {
        self.inner.io_queues_granted.load(Ordering::Acquire)
    }
    /// Number of I/O queues asked for ([`crate::ConnectOptions::nr_io_queues`]): the queue indices I/O may
    /// name (`0..io_queues()`); a controller that grants fewer has them carried by those it granted
    /// ([`Controller::io_queues_granted`]).
    pub fn io_queues(&self) -> usize {
        self.inner.io.len()
    }
    /// Largest transfer of one command, in bytes.
    pub fn max_transfer(&self) -> usize {
        self.inner.max_transfer.load(Ordering::Acquire)
    }
    /// Optional NVM Command Support (Identify Controller ONCS, `holdfast_proto::identify::ONCS_*`) of the current
    /// association: after a reconnect, the controller's answer then, not the one before (without the copy of the
    /// whole Identify data that [`Controller::identify`] makes).
    pub fn oncs(&self) -> u16 {
        self.inner.oncs.load(Ordering::Acquire)
    }
    /// The NVM command set's limits on Write Zeroes and Dataset Management of the current association
    /// ([`NvmLimits`]; after a reconnect, the controller's answer then).
    pub fn nvm_limits(&self) -> NvmLimits {
        *lock(&self.inner.nvm_limits)
    }
    /// The options used.
    pub fn options(&self) -> &ConnectOptions {
        &self.inner.opts
    }
    /// The connection policy the target advertised, if any.
    pub fn policy(&self) -> Option<ConnectionPolicy> {
        lock(&self.inner.info).policy
    }
    /// The effective policy and its sources.
    pub fn effective_policy(&self) -> Effective {
        lock(&self.inner.info).effective.clone()
    }
    /// The admin queue's sender.
    pub fn admin_queue(&self) -> &submit::Sender<Command> {
        &self.inner.admin
    }
    /// Remember namespace `nsid`'s identifiers and block size, as [`crate::Namespace::open`] read them, for the
    /// check at every reconnect ([`check_namespace_ids`]) and at a Namespace Attribute Changed notice; returns the
    /// mark the handle looks at before every command and the tag its commands carry ([`NsMark`]). Opened again
    /// with the identifiers and block size it had, the namespace shares its mark and tag; with other identifiers,
    /// another namespace took the NSID since (a notice not seen yet, or a controller that sends none), and with
    /// another block size the handles before count blocks it no longer has: the handles before are marked gone,
    /// and the new one gets a mark and tag of its own and is checked from then on. One marked gone (so, or by a
    /// notice) stays in the list until the next reconnect, which fails the commands its handles left there (in
    /// flight when the connection dropped) by their tag, and re-issues the new handle's. A namespace without
    /// identifiers (a controller that does not report them) is not checked, but gets its own tag all the same.
    pub(crate) fn note_namespace_ids(
        &self,
        nsid: u32,
        descriptors: &[identify::NsDescriptor],
        block_size: u32,
    ) -> NsMark {
        let ids = namespace_identity(descriptors);
        let mut known = lock(&self.inner.ns_ids);
        if let Some(e) = known.iter().find(|e| e.nsid == nsid && e.mark.gone.get().is_none()) {
            if e.block_size == block_size && (ids.is_empty() || e.ids == ids) {
                return e.mark.clone();
            }
            let _ = e.mark.gone.set(if e.block_size != block_size {
                format!("was formatted with {block_size}-byte blocks, not the {}-byte ones it had", e.block_size)
            } else {
                format!("was replaced by another namespace (identifiers {:?} -> {ids:?})", e.ids)
            });
        }
        // 1 to u32::MAX, round and round: 0 is the tag of commands sent without a handle.
        let tag = self.inner.ns_tags.fetch_add(1, Ordering::Relaxed) % u32::MAX + 1;
        let mark = NsMark { gone: NsGone::default(), tag };
        // Kept without identifiers too (a controller that reports none): its block size is still checked at
        // every reconnect, and a replayed Write Zeroes or deallocation never acts on blocks of another size.
        known.push(NsEntry { nsid, ids, block_size, mark: mark.clone() });
        mark
    }
    /// Get Log Page `lid` (NVMe Base 2.0 §5.16) for namespace `nsid` (FFFFFFFFh: the whole controller), `len`
    /// bytes from its start: the bytes the controller transferred; a failing status is [`Error::Nvme`].
    ///
    /// Longer than the controller's transfer limit ([`Controller::max_transfer`]), it is read in pieces at
    /// increasing offsets, each a whole number of dwords, if the controller takes offsets (Identify Controller
    /// LPA bit 2), else refused with [`Error::Invalid`]: sent as one command, a target that enforces MDTS ends
    /// the connection over it, and a Get Log Page is issued again after every reconnect. A piece cut short
    /// ends the read there (the page is shorter). The pieces are separate commands: a log that changes
    /// meanwhile may be read half before and half after (a log with a generation counter is read again if it
    /// moved).
    pub async fn log_page(&self, lid: u8, nsid: u32, len: usize) -> Result<Bytes> {
        self.check()?;
        // Get Log Page counts in dwords (NUMD): a length that is not a whole number of them is asked for
        // rounded up (a controller transfers NUMD dwords, and refuses an SGL of another length), then cut.
        let asked = len.div_ceil(4) * 4;
        let piece = self.max_transfer() & !3;
        if asked <= piece {
            let mut page = get_log_page(&self.inner.admin, lid, nsid, asked, 0).await?;
            page.truncate(len);
            return Ok(page);
        }
        if self.identify().lpa & holdfast_proto::identify::LPA_EXTENDED_DATA == 0 {
            return Err(Error::Invalid(format!(
                "log page {lid:#04x}: {len} bytes is more than the controller's transfer limit ({} bytes), and it \
                 takes no offsets (LPA bit 2) to read it in pieces",
                self.max_transfer()
            )));
        }
        let mut log = bytes::BytesMut::with_capacity(asked);
        while log.len() < asked {
            let n = piece.min(asked - log.len());
            // Every piece but the last is `piece` long, a whole number of dwords: the next offset is one too.
            let part = get_log_page(&self.inner.admin, lid, nsid, n, log.len() as u64).await?;
            log.extend_from_slice(&part);
            if part.len() < n {
                break;
            }
        }
        log.truncate(len);
        Ok(log.freeze())
    }

    /// Active namespace IDs.
    pub async fn active_namespaces(&self) -> Result<Vec<u32>> {
        self.check()?;
        Ok(identify::parse_active_ns_list(&identify_raw(&self.inner.admin, identify::CNS_ACTIVE_NS_LIST, 0).await?))
    }

    /// Orderly shutdown: CC.SHN = normal, wait for CSTS.SHST complete (bounded), then close every queue's
    /// connection in order (half-close, and read until the target closes its side, within
    /// [`queue::LINGER`]); returns once the queues are closed.
    ///
    /// It does not wait for I/O in flight: let what you issued complete first. A command outstanding when it
    /// is called fails with [`Error::NotConnected`] (or [`Error::ControllerLost`]), and may still have run on
    /// the target. Ok whether or not the target acknowledged the shutdown notification in time (a target that
    /// is away is not waited for beyond a few seconds; the outcome is logged at debug level); from then on every
    /// call on this controller fails with [`Error::ControllerLost`] "controller shut down".
    ///
    /// No Fabrics Disconnect is sent, as the Linux and SPDK hosts send none: a queue ends with its connection,
    /// and the Linux target rejects Disconnect (FCTYPE 08h) as an unknown capsule type.
    pub async fn shutdown(&self) -> Result<()> {
        // Given up by its caller at any await (a timeout around it), the shutdown still ends the controller, at
        // once: left half done, it would stay live without keep-alive, with every queue it lost taken for part
        // of a shutdown, so that nothing would reconnect and I/O would wait for ever.
        struct Stop<'a>(&'a Shared);
        impl Drop for Stop<'_> {
            fn drop(&mut self) {
                self.0.set_state(|s| *s = State::Failed { reason: "controller shut down".into() });
                self.0.shutdown.cancel();
            }
        }
        let stop = Stop(&self.inner);
        self.inner.stopping.store(true, Ordering::Release);
        lock(&self.inner.tasks).cancel(); // keep-alive and AER stop; the queues close at the end
        if *lock(&self.inner.state) == State::Live {
            let admin = &self.inner.admin;
            let r = async {
                let get = |o| async move {
                    Ok::<u64, Error>(
                        submit(
                            admin,
                            PropertyCommand::new(0, o, false, None).to_sqe(),
                            Bytes::new(),
                            0,
                            "Property Get",
                        )
                        .await?
                        .cqe
                        .result64(),
                    )
                };
                let ccv = get(property::CC).await? as u32;
                submit(
                    admin,
                    PropertyCommand::new(0, property::CC, false, Some(((ccv & !cc::SHN_MASK) | cc::SHN_NORMAL) as u64))
                        .to_sqe(),
                    Bytes::new(),
                    0,
                    "Property Set",
                )
                .await?;
                let t0 = Instant::now();
                while t0.elapsed() < Duration::from_secs(5) {
                    if get(property::CSTS).await? as u32 & csts::SHST_MASK == csts::SHST_COMPLETE {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok::<_, Error>(())
            };
            if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(6), r).await {
                tracing::debug!("shutdown notification failed: {e}");
            }
        }
        drop(stop);
        let _ = tokio::time::timeout(queue::LINGER * 2, self.inner.closed.cancelled()).await;
        Ok(())
    }
}

impl Drop for Shared {
    fn drop(&mut self) {
        self.shutdown.cancel();
    }
}

/// Keep-alive and asynchronous events for one association.
fn start_association_tasks(sh: &Arc<Shared>, assoc: &CancellationToken) {
    let eff = lock(&sh.info).effective.clone();
    let mut kato = eff.kato.0;
    let weak = Arc::downgrade(sh);
    let tasks = assoc.child_token();
    *lock(&sh.tasks) = tasks.clone();
    let (admin, cancel, lose, changed) = (sh.admin.clone(), tasks.clone(), assoc.clone(), sh.kato_changed.clone());
    if !kato.is_zero() {
        tokio::spawn(async move {
            loop {
                // Well inside KATO: a blackholed path is noticed within KATO of the last good exchange.
                let period = (kato / 3).max(Duration::from_millis(100));
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(period) => {}
                    _ = changed.notified() => {
                        // A policy-changed event set another KATO: go on at its pace.
                        if let Some(sh) = weak.upgrade() {
                            kato = lock(&sh.info).effective.kato.0;
                        }
                        continue;
                    }
                }
                let ka = SubmissionEntry::new(aop::KEEP_ALIVE, 0);
                let r = async {
                    let rx = send(&admin, ka, Bytes::new(), 0, "Keep Alive", false).await?;
                    finish(rx, "Keep Alive").await
                };
                let err = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = tokio::time::timeout(kato.saturating_sub(period).max(period), r) => match r {
                        Ok(Ok(_)) => continue,
                        Ok(Err(e)) => format!("Keep Alive failed: {e}"),
                        Err(_) => format!("no Keep Alive response within KATO ({kato:?})"),
                    },
                };
                if let Some(sh) = weak.upgrade() {
                    lock(&sh.loss_cause).get_or_insert(err);
                }
                lose.cancel();
                return;
            }
        });
    }
    let (admin, cancel, weak) = (sh.admin.clone(), tasks, Arc::downgrade(sh));
    tokio::spawn(async move {
        // The Log Page Count of the last reservation notice read on this association (a gap: notices lost).
        let mut last_resv_count = 0u64;
        loop {
            let aer = SubmissionEntry::new(aop::ASYNC_EVENT_REQUEST, 0);
            let Ok(rx) = send(&admin, aer, Bytes::new(), 0, "Asynchronous Event Request", false).await else {
                return;
            };
            let r = tokio::select! {
                _ = cancel.cancelled() => return,
                r = rx => r,
            };
            let Ok(Ok(c)) = r else { return };
            if !c.status().is_success() {
                return;
            }
            let ev = holdfast_proto::features::AsyncEvent::from_dword(c.cqe.dw0.get());
            tracing::info!(
                "asynchronous event: type {:#x}, information {:#04x}, log page {:#04x}",
                ev.event_type,
                ev.info,
                ev.log_page
            );
            // Reading the log page clears the event so the controller may report more. Given up with the
            // association (a new one reads the policy page as it is set up, and its own task asks for events):
            // left running, this task would ride the read through the reconnect and then ask for one event
            // more on the new association, which could take the controller's last slot for them.
            // At the page's own length where it has one: the Changed Namespace List is 4096 bytes, and Linux
            // nvmet refuses any other length for it (the event would then never clear).
            let len = if ev.log_page == LID_CHANGED_NS_LIST { 4096 } else { 512 };
            let page = tokio::select! {
                _ = cancel.cancelled() => return,
                r = get_log_page(&admin, ev.log_page, 0xFFFF_FFFF, len, 0) => r,
            };
            let Ok(page) = page else { continue };
            if ev.log_page == holdfast_proto::log_page::LID_RESERVATION_NOTIFICATION {
                // One event for what may be several notices (the controller raises no other until the page is
                // read): each read takes one; read on while more wait.
                let mut page = page;
                for _ in 0..RESERVATION_NOTICES_READ_MAX {
                    let Ok(n) =
                        holdfast_proto::log_page::ReservationNotification::read_from_prefix(&page).map(|(n, _)| n)
                    else {
                        break;
                    };
                    if n.rnlpt == holdfast_proto::log_page::rnlpt::EMPTY {
                        break;
                    }
                    let Some(sh) = weak.upgrade() else { return };
                    let lost = n.lpc.get().saturating_sub(last_resv_count.saturating_add(1));
                    last_resv_count = n.lpc.get();
                    tracing::warn!(addr = %sh.opts.addr, nsid = n.nsid.get(), kind = n.rnlpt, "reservation notice");
                    let _ = sh.events.send(Event::ReservationNotice { nsid: n.nsid.get(), kind: n.rnlpt, lost });
                    drop(sh);
                    if n.nalp == 0 {
                        break;
                    }
                    page = tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = get_log_page(&admin, ev.log_page, 0xFFFF_FFFF, 64, 0) => match r {
                            Ok(p) => p,
                            Err(_) => break,
                        },
                    };
                }
                continue;
            }
            if ev.log_page == LID_CHANGED_NS_LIST {
                if let Some(sh) = weak.upgrade() {
                    // A page cut short before its terminating zero reads as an overflowed one: rescan them all.
                    let nsids = ChangedNamespaceList::changed_nsids(&page);
                    tracing::info!(addr = %sh.opts.addr, "namespaces changed: {}", match &nsids {
                        Some(n) => format!("{n:?}"),
                        None if page.len() < 4096 => format!("unknown ({} of 4096 bytes of the list)", page.len()),
                        None => "more than 1024".into(),
                    });
                    drop(sh);
                    // Given up with the association, the check still ends in the event: the list was read, so
                    // the target reports these changes no more, and the reconnect checks the namespaces itself.
                    let checked = tokio::select! {
                        _ = cancel.cancelled() => false,
                        _ = check_changed_namespaces(&weak, &admin, nsids.as_deref()) => true,
                    };
                    if let Some(sh) = weak.upgrade() {
                        let _ = sh.events.send(Event::NamespacesChanged { nsids });
                    }
                    if !checked {
                        return;
                    }
                }
            }
            if ev.log_page == LID_HOLDFAST_POLICY {
                let Some(sh) = weak.upgrade() else { return };
                let Ok(p) = ConnectionPolicy::from_bytes(&page) else { continue };
                let eff = policy::resolve(&sh.opts, Some(&p));
                eff.log(&sh.opts.addr);
                let (old, new) = {
                    let mut info = lock(&sh.info);
                    let old = info.effective.kato;
                    info.policy = Some(p);
                    info.effective = eff;
                    (old, info.effective.kato)
                };
                if new.0 != old.0 {
                    // Adopted as a reconnect adopts a changed KATO (Set Features Keep Alive Timer), with Keep
                    // Alives at the new pace first, so that a shorter KATO never finds them at the old one.
                    sh.kato_changed.notify_one();
                    let addr = sh.opts.addr.clone();
                    drop(sh);
                    let r = tokio::select! {
                        _ = cancel.cancelled() => return,
                        r = submit(&admin, set_kato(new.0), Bytes::new(), 0, "Set Features (Keep Alive Timer)") => r,
                    };
                    if let Err(e) = r {
                        // The association keeps the KATO it had; say so rather than report one it does not run.
                        tracing::warn!(addr = %addr, "the advertised KATO {:?} was not set: {e}", new.0);
                        if let Some(sh) = weak.upgrade() {
                            lock(&sh.info).effective.kato = old;
                            sh.kato_changed.notify_one();
                        }
                    }
                }
            }
        }
    });
}

/// Reservation Notification log pages read for one event at most: the controller keeps 64 or so.
const RESERVATION_NOTICES_READ_MAX: usize = 256;

/// A Namespace Attribute Changed notice listed `nsids` (None: any may have changed): each namespace opened among
/// them is identified again (CNS 03h, then CNS 00h), as the Linux host revalidates the namespaces of the Changed
/// Namespace List. One no longer there (an error status, or a size of 0), with other identifiers (another
/// namespace under its NSID) or with another block size (its handles would count other blocks: a Write Zeroes,
/// which carries no data whose length would betray it, would zero other blocks than asked for) is marked gone:
/// its handles fail from then on, and it stays in `ns_ids`, marked, until the next reconnect, which fails the
/// commands kept for it from the association lost (in flight, backlogged) instead of issuing them to the namespace
/// now under its NSID ([`check_namespace_ids`], [`fail_gone_namespaces`]). A namespace that was only resized keeps its handles (their size is what it was
/// when opened). A failure of the connection leaves the namespace to the check at the reconnect
/// ([`check_namespace_ids`]).
async fn check_changed_namespaces(
    weak: &std::sync::Weak<Shared>,
    admin: &submit::Sender<Command>,
    nsids: Option<&[u32]>,
) {
    let Some(sh) = weak.upgrade() else { return };
    let listed: Vec<(u32, Vec<identify::NsDescriptor>, u32, NsGone)> = lock(&sh.ns_ids)
        .iter()
        .filter(|e| e.mark.gone.get().is_none() && nsids.is_none_or(|l| l.contains(&e.nsid)))
        .map(|e| (e.nsid, e.ids.clone(), e.block_size, e.mark.gone.clone()))
        .collect();
    drop(sh);
    for (nsid, before, block_size, gone) in listed {
        // None: the controller gives no descriptor lists; the identifiers are then Identify Namespace's.
        let listed = match identify_raw(admin, identify::CNS_NS_DESC_LIST, nsid).await {
            Ok(d) => Ok(Some(namespace_identity(&identify::parse_ns_descriptor_list(&d)))),
            Err(Error::Nvme { status, .. }) if descriptors_unsupported(status) => Ok(None),
            Err(e) => Err(e),
        };
        let why = match listed {
            Ok(listed) => {
                if let Some(now) = listed.as_ref().filter(|now| **now != before) {
                    format!("was replaced by another namespace (identifiers {before:?} -> {now:?})")
                } else {
                    match identify_raw(admin, identify::CNS_NAMESPACE, nsid).await {
                        Ok(b) => {
                            let Ok(id) = IdentifyNamespace::read_from_bytes(b.get(..4096).unwrap_or_default()) else {
                                continue;
                            };
                            let now = identity_from_namespace(&id);
                            if listed.is_none() && id.nsze.get() != 0 && now != before {
                                format!("was replaced by another namespace (identifiers {before:?} -> {now:?})")
                            } else {
                                let Some(why) = namespace_format_change(&id, block_size) else { continue };
                                why
                            }
                        }
                        Err(Error::Nvme { status, .. }) if status.code() == Status::INVALID_NAMESPACE => {
                            format!("was removed from the target ({status})")
                        }
                        Err(_) => continue,
                    }
                }
            }
            // Not active (any more): removed. Another status (a controller's passing trouble) says nothing about
            // the namespace: left to the next notice or reconnect, as a failed connection is.
            Err(Error::Nvme { status, .. }) if status.code() == Status::INVALID_NAMESPACE => {
                format!("was removed from the target ({status})")
            }
            Err(_) => continue,
        };
        let Some(sh) = weak.upgrade() else { return };
        tracing::warn!(addr = %sh.opts.addr, "namespace {nsid} {why}");
        // Left in `ns_ids`, marked: the reconnect fails the commands kept for it from this association
        // ([`check_namespace_ids`]) rather than issue them to the namespace now under its NSID.
        let _ = gone.set(why);
    }
}

/// Set Features Volatile Write Cache (06h): the cache on (WCE, CDW11 bit 0) or off.
fn set_vwc(enabled: bool) -> SubmissionEntry {
    let mut s = SubmissionEntry::new(aop::SET_FEATURES, 0);
    s.cdw10.set(holdfast_proto::features::VOLATILE_WRITE_CACHE as u32);
    s.cdw11.set(enabled as u32);
    s
}

/// Set Features Keep Alive Timer (FID 0Fh) to `kato`: how an association adopts another KATO than its Connect
/// carried, at a reconnect or on a policy-changed event.
fn set_kato(kato: Duration) -> SubmissionEntry {
    let mut s = SubmissionEntry::new(aop::SET_FEATURES, 0);
    s.cdw10.set(holdfast_proto::features::KEEP_ALIVE_TIMER as u32);
    s.cdw11.set(kato_ms(kato));
    s
}

/// A KATO in the milliseconds of Connect and Set Features: at most FFFFFFFFh ms (49.7 days), never wrapped to a
/// small value (or to 0, which disables keep-alive).
fn kato_ms(kato: Duration) -> u32 {
    u32::try_from(kato.as_millis()).unwrap_or(u32::MAX)
}

fn fail_all(slots: &mut [Option<Slot>], err: &dyn Fn() -> Error, close: bool) -> usize {
    let mut n = 0;
    for s in slots.iter_mut().flatten() {
        for c in s.pending.drain(..) {
            c.fail(err());
            n += 1;
        }
        if close {
            s.rx.close();
        }
        while let Some(c) = s.rx.try_recv() {
            c.fail(err());
            n += 1;
        }
    }
    n
}

/// The supervisor: watches the association, reconnects, applies the deadlines (README, Ride-through).
async fn supervise(
    sh: Arc<Shared>,
    mut slots: Vec<Option<Slot>>,
    exits_tx: mpsc::UnboundedSender<(usize, QueueExit)>,
    mut exits_rx: mpsc::UnboundedReceiver<(usize, QueueExit)>,
    mut running: usize,
) {
    let _closed = sh.closed.clone().drop_guard();
    // When the current association was set up, and how many associations in a row ended within
    // policy::STABLE_ASSOCIATION of theirs (Effective::flap_delay).
    let mut restored_at = Instant::now();
    let mut flaps = 0u32;
    loop {
        // Live: wait for the first queue to end.
        let first = exits_rx.recv().await;
        let Some((idx, exit)) = first else { return };
        running -= 1;
        // During an orderly shutdown an I/O queue may close before the admin queue has finished it: SPDK's
        // target closes a controller's I/O queue connections when CC.SHN is set (the Linux host closes its
        // own before it sets CC.SHN). The admin queue carries the shutdown on; nothing reconnects.
        if idx != 0 && running > 0 && sh.stopping.load(Ordering::Acquire) && !sh.shutdown.is_cancelled() {
            tracing::debug!(
                qid = idx,
                "I/O queue closed during shutdown: {:?}",
                exit.error.as_ref().map(|e| e.to_string())
            );
            slots[idx] = Some(Slot { rx: exit.rx, pending: exit.pending });
            continue;
        }
        let shutting_down = sh.shutdown.is_cancelled() || sh.stopping.load(Ordering::Acquire);
        let cause = lock(&sh.loss_cause)
            .take()
            .or_else(|| exit.error.as_ref().map(|e| e.to_string()))
            .unwrap_or_else(|| "queue closed".into());
        lock(&sh.assoc).cancel();
        slots[idx] = Some(Slot { rx: exit.rx, pending: exit.pending });
        while running > 0 {
            let Some((i, e)) = exits_rx.recv().await else { break };
            running -= 1;
            slots[i] = Some(Slot { rx: e.rx, pending: e.pending });
        }
        if shutting_down {
            fail_all(&mut slots, &|| Error::NotConnected("controller shut down".into()), true);
            return;
        }
        if let Some(reason) = lock(&sh.broken).clone() {
            return lose_controller(&sh, &mut slots, reason);
        }
        let since = Instant::now();
        let lost_at = SystemTime::now();
        // A target that drops every association soon after it is set up (or answers it with a fatal error) would
        // otherwise be reconnected to at once every time, a storm of connections and associations: the first
        // attempt after such a loss waits, longer with every loss in a row.
        flaps = if restored_at.elapsed() < policy::STABLE_ASSOCIATION { flaps.saturating_add(1) } else { 0 };
        let (first_wait, limit) = {
            let info = lock(&sh.info);
            let eff = &info.effective;
            // How long it will try, and why that long: a caller waiting on I/O learns what it waits for.
            let limit = match eff.loss_limit() {
                None => format!("without giving up (ctrl_loss_tmo never, {})", eff.ctrl_loss_tmo.1),
                Some(l) if eff.planned_downtime > eff.ctrl_loss_tmo.0.unwrap_or_default() => {
                    format!("for up to {:.1} s (an announced planned downtime)", l.as_secs_f64())
                }
                Some(l) => format!("for up to {:.1} s (ctrl_loss_tmo, {})", l.as_secs_f64(), eff.ctrl_loss_tmo.1),
            };
            (eff.flap_delay(flaps), limit)
        };
        tracing::warn!(addr = %sh.opts.addr, "connection lost: {cause}; reconnecting {limit}");
        // Commands that cannot be replayed fail now, with a retryable path error.
        for (qid, s) in slots.iter_mut().enumerate().filter_map(|(i, s)| Some((i as u16, s.as_mut()?))) {
            let (keep, drop_): (Vec<_>, Vec<_>) = s.pending.drain(..).partition(|c| {
                c.reissuable(qid) && c.timeouts < queue::MAX_COMMAND_TIMEOUTS && c.losses < queue::MAX_COMMAND_LOSSES
            });
            s.pending = keep;
            for c in drop_ {
                let e = if c.timeouts >= queue::MAX_COMMAND_TIMEOUTS {
                    Error::Timeout {
                        what: format!("{} (unanswered on {} connections)", c.name(qid), c.timeouts),
                        after: sh.opts.io_timeout,
                    }
                } else if c.losses >= queue::MAX_COMMAND_LOSSES {
                    Error::CommandAbandoned(format!(
                        "{} was outstanding on {} connections that were lost, the last one: {cause}; not issued again",
                        c.name(qid),
                        c.losses
                    ))
                } else {
                    Error::PathError(format!("{} was in flight when the connection dropped ({cause})", c.name(qid)))
                };
                c.fail(e);
            }
        }
        let mut cause = cause;
        sh.set_state(|s| *s = State::Reconnecting { attempt: 0, cause: cause.clone(), failing_fast: false });
        let _ = sh.events.send(Event::Reconnecting { attempt: 0, cause: cause.clone(), outage: Duration::ZERO });
        let mut attempt = 0u32;
        let mut failing_fast = false;
        let mut next_try = Instant::now() + first_wait;
        loop {
            // Shut down (the last handle dropped, or shutdown()) while reconnecting: the wait below sees it, but
            // an attempt that failed at once goes round without waiting.
            if sh.shutdown.is_cancelled() {
                fail_all(&mut slots, &|| Error::NotConnected("controller shut down".into()), true);
                return;
            }
            let eff = lock(&sh.info).effective.clone();
            let elapsed = since.elapsed();
            if let Some(f) = eff.fast_fail_after() {
                if elapsed >= f {
                    let what = if f > eff.fast_io_fail_tmo.0.unwrap_or_default() {
                        "fast_io_fail_tmo and the planned downtime"
                    } else {
                        "fast_io_fail_tmo"
                    };
                    if !failing_fast {
                        failing_fast = true;
                        tracing::warn!(addr = %sh.opts.addr, "{what} ({f:?}) passed: failing queued I/O while reconnecting");
                        sh.set_state(|s| {
                            if let State::Reconnecting { failing_fast: ff, .. } = s {
                                *ff = true;
                            }
                        });
                        let _ = sh.events.send(Event::FailingFast { outage: elapsed });
                    }
                    let c = cause.clone();
                    fail_all(
                        &mut slots,
                        &|| Error::PathError(format!("disconnected for more than {what} ({c})")),
                        false,
                    );
                }
            }
            if let Some(limit) = eff.loss_limit() {
                if elapsed >= limit {
                    let stamp = humantime(lost_at);
                    let reason = format!(
                        "no connection to {} since {stamp} ({:.1} s, limit {:.1} s{}); last error: {cause}",
                        sh.opts.addr,
                        elapsed.as_secs_f64(),
                        limit.as_secs_f64(),
                        if eff.planned_downtime > eff.ctrl_loss_tmo.0.unwrap_or_default() {
                            ", planned downtime"
                        } else {
                            ", ctrl_loss_tmo"
                        }
                    );
                    return lose_controller(&sh, &mut slots, reason);
                }
            }
            // Wait for the next attempt (the first goes at once, then the policy's backoff), waking for any
            // deadline on the way, and every 100 ms while failing fast to fail what callers still queue.
            let now = Instant::now();
            if now < next_try {
                let mut wake = next_try - now;
                if let Some(limit) = eff.loss_limit() {
                    wake = wake.min(limit.saturating_sub(elapsed));
                }
                if let Some(f) = eff.fast_fail_after().filter(|_| !failing_fast) {
                    wake = wake.min(f.saturating_sub(elapsed));
                }
                if failing_fast {
                    wake = wake.min(Duration::from_millis(100));
                }
                tokio::select! {
                    _ = tokio::time::sleep(wake) => {}
                    _ = sh.shutdown.cancelled() => {
                        fail_all(&mut slots, &|| Error::NotConnected("controller shut down".into()), true);
                        return;
                    }
                }
                continue;
            }
            attempt += 1;
            if let State::Reconnecting { attempt: a, .. } = &mut *lock(&sh.state) {
                *a = attempt;
            }
            let _ = sh.events.send(Event::Reconnecting { attempt, cause: cause.clone(), outage: since.elapsed() });
            // The attempt may last until the controller would be lost, and, while queued I/O has not been failed
            // yet, no longer than fast_io_fail_tmo: a connect into a black hole (connect_timeout) or a set-up
            // command held by the target would otherwise keep the callers waiting past it. Cut there, the loop
            // fails what is queued and tries again.
            let mut left = eff.loss_limit().map_or(Duration::from_secs(3600), |l| l.saturating_sub(since.elapsed()));
            if let Some(f) = eff.fast_fail_after().filter(|_| !failing_fast) {
                left = left.min(f.saturating_sub(since.elapsed()));
            }
            // (An attempt lasts an hour at most: a longer ctrl_loss_tmo, or none, is tried again after it.)
            let deadline = deadline_after(left.clamp(Duration::from_millis(10), Duration::from_secs(3600)));
            let reissued: usize = slots.iter().flatten().map(|s| s.pending.len()).sum();
            // Of those, the ones failed instead (their namespace found gone: fail_gone_namespaces).
            let mut unissued = 0;
            let mut started = 0;
            // Given up at once if the controller is shut down meanwhile: the attempt could otherwise wait out its
            // deadline (a set-up command the closed queue never answers, a connect into a black hole), which is up
            // to ctrl_loss_tmo, long after shutdown() stopped waiting for this task.
            let attempt_result = tokio::select! {
                r = establish(&sh, &mut slots, &exits_tx, &mut started, deadline, false, &mut unissued) => r,
                _ = sh.shutdown.cancelled() => Err(Error::NotConnected("controller shut down".into())),
            };
            match attempt_result {
                Ok((assoc, restarted)) => {
                    let reissued = reissued.saturating_sub(unissued);
                    running = started;
                    restored_at = Instant::now();
                    *lock(&sh.assoc) = assoc.clone();
                    sh.set_state(|s| *s = State::Live);
                    let outage = since.elapsed();
                    tracing::info!(addr = %sh.opts.addr, attempts = attempt, reissued, "connection restored after {:.0} ms", outage.as_secs_f64() * 1000.0);
                    start_association_tasks(&sh, &assoc);
                    let _ = sh.events.send(Event::Restored {
                        outage,
                        attempts: attempt,
                        reissued,
                        target_restarted: restarted,
                    });
                    break;
                }
                Err(e) => {
                    for _ in 0..started {
                        if let Some((i, ex)) = exits_rx.recv().await {
                            slots[i] = Some(Slot { rx: ex.rx, pending: ex.pending });
                        }
                    }
                    if let Some(reason) = lock(&sh.broken).clone() {
                        return lose_controller(&sh, &mut slots, reason);
                    }
                    // Set-up commands of the failed attempt are never replayed.
                    for (qid, s) in slots.iter_mut().enumerate().filter_map(|(i, s)| Some((i as u16, s.as_mut()?))) {
                        let (keep, drop_): (Vec<_>, Vec<_>) = s.pending.drain(..).partition(|c| c.reissuable(qid));
                        s.pending = keep;
                        drop(drop_);
                    }
                    if let Error::ControllerLost(reason) = e {
                        // Not a failed attempt: what came back is not what was lost. Nothing is issued again.
                        return lose_controller(&sh, &mut slots, reason);
                    }
                    tracing::info!(addr = %sh.opts.addr, attempt, "reconnect attempt failed: {e}");
                    next_try = Instant::now() + lock(&sh.info).effective.retry_delay(attempt, since.elapsed());
                    cause = e.to_string();
                    if let State::Reconnecting { cause: c, .. } = &mut *lock(&sh.state) {
                        *c = cause.clone();
                    }
                }
            }
        }
    }
}

/// The controller is lost for good (`reason`): failed, every command waiting fails with
/// [`Error::ControllerLost`], [`Event::Failed`] goes out and the controller shuts down.
fn lose_controller(sh: &Shared, slots: &mut [Option<Slot>], reason: String) {
    tracing::error!("controller lost: {reason}");
    {
        let i = lock(&sh.info);
        if let Some(u) = i.id.holdfast_uniquifier() {
            orphans::put(&sh.opts, i.cntlid, u);
        }
    }
    sh.set_state(|s| *s = State::Failed { reason: reason.clone() });
    let r = reason.clone();
    fail_all(slots, &|| Error::ControllerLost(r.clone()), true);
    let _ = sh.events.send(Event::Failed { reason });
    sh.shutdown.cancel();
}

/// Associations this process lost (a controller past ctrl_loss_tmo) on holdfast targets, for the next
/// controller to the same subsystem as the same host to fence at its first connect (README, No stale writes):
/// the target may not have noticed the loss yet (its KATO longer than the host's ctrl_loss_tmo), and run a
/// write of that association after the application wrote the blocks again through the new one.
mod orphans {
    use super::ConnectOptions;
    use std::sync::Mutex;

    /// (subsystem NQN, host NQN, Host Identifier), the association's CNTLID and uniquifier. Not the address:
    /// a new controller to the subsystem through another port (a failover) fences it too; the fence names the
    /// association by its uniquifier, so a target other than the one it was on answers that it has none.
    type Orphan = ((String, String, [u8; 16]), u16, u64);

    /// The most kept: an application that loses controllers to many targets does not grow this for ever.
    const MAX: usize = 256;

    static LOST: Mutex<Vec<Orphan>> = Mutex::new(Vec::new());

    fn key(o: &ConnectOptions) -> (String, String, [u8; 16]) {
        (o.subnqn.clone(), o.hostnqn.clone(), o.hostid)
    }

    /// Record the association of a controller lost for good.
    pub(super) fn put(o: &ConnectOptions, cntlid: u16, uniquifier: u64) {
        let mut v = LOST.lock().unwrap_or_else(|e| e.into_inner());
        let k = key(o);
        v.retain(|(x, ..)| *x != k);
        if v.len() >= MAX {
            v.remove(0);
        }
        v.push((k, cntlid, uniquifier));
    }

    /// The association lost to the same place, for a new controller to fence.
    pub(super) fn get(o: &ConnectOptions) -> Option<(u16, u64)> {
        let v = LOST.lock().unwrap_or_else(|e| e.into_inner());
        let k = key(o);
        v.iter().find(|(x, ..)| *x == k).map(|&(_, c, u)| (c, u))
    }

    /// Fenced: no one need fence it again.
    pub(super) fn forget(o: &ConnectOptions, cntlid: u16, uniquifier: u64) {
        let k = key(o);
        LOST.lock()
            .unwrap_or_else(|e| e.into_inner())
            .retain(|(x, c, u)| !(*x == k && *c == cntlid && *u == uniquifier));
    }
}

fn humantime(t: SystemTime) -> String {
    let secs = t.duration_since(SystemTime::UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
    let (h, m, s) = ((secs / 3600) % 24, (secs / 60) % 60, secs % 60);
    format!("{h:02}:{m:02}:{s:02} UTC")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_queue_task_that_panics_still_reports_an_exit_and_breaks_the_controller() {
        let (tx, mut rx) = mpsc::unbounded_channel();
        let broken = Arc::new(Mutex::new(None));
        let queue = tokio::spawn(async {
            if std::hint::black_box(true) {
                panic!("a bug in the queue");
            }
            let (_, rx) = submit::channel(1);
            QueueExit { rx, pending: Vec::new(), error: None }
        });
        watch_queue(queue, 3, broken.clone(), tx.clone());
        let (idx, exit) = tokio::time::timeout(Duration::from_secs(5), rx.recv()).await.expect("an exit").unwrap();
        assert_eq!(idx, 3);
        assert!(exit.pending.is_empty());
        match exit.error {
            Some(Error::ControllerLost(r)) => assert!(r.contains("queue 3") && r.contains("a bug in the queue"), "{r}"),
            other => panic!("expected ControllerLost, got {other:?}"),
        }
        let reason = lock(&broken).clone().expect("broken is set");
        assert!(reason.contains("panicked: a bug in the queue"), "{reason}");

        // A queue that ends normally passes its exit on as it is, and breaks nothing.
        let broken = Arc::new(Mutex::new(None));
        let queue = tokio::spawn(async {
            let (_, rx) = submit::channel(1);
            QueueExit { rx, pending: Vec::new(), error: None }
        });
        watch_queue(queue, 1, broken.clone(), tx);
        let (idx, exit) = rx.recv().await.unwrap();
        assert_eq!((idx, exit.error.is_none()), (1, true));
        assert!(lock(&broken).is_none());
    }
}
