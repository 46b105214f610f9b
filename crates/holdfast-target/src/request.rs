//! A command parsed once into a [`Request`] whose execute step ([`Exec`]) is chosen at parse time (the Linux
//! nvmet model). The transport moves the data the request says it needs (in-capsule, or R2T + H2CData), then
//! calls [`crate::cmd::execute`]; it never looks inside a command.

use crate::controller::Controller;
use crate::namespace::Namespace;
use crate::subsystem::{Port, Target};
use bytes::Bytes;
use holdfast_proto::{Status, SubmissionEntry};
use std::net::SocketAddr;
use std::sync::Arc;

/// Direction of a command's data.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum DataDir {
    /// No data.
    None,
    /// Host to controller (writes): the transport collects `len` bytes before execution.
    ToController,
    /// Controller to host (reads): the response carries the data.
    ToHost,
}

/// The execute step, chosen when the command is parsed.
pub enum Exec {
    /// Fabrics Connect.
    Connect,
    /// Fabrics Property Get.
    PropertyGet,
    /// Fabrics Property Set.
    PropertySet,
    /// Fabrics Disconnect.
    Disconnect,
    /// Fabrics Authentication Send (DH-HMAC-CHAP).
    AuthSend,
    /// Fabrics Authentication Receive (DH-HMAC-CHAP).
    AuthReceive,
    /// Identify.
    Identify,
    /// Get Log Page.
    GetLogPage,
    /// Get Features.
    GetFeatures,
    /// Set Features.
    SetFeatures,
    /// Keep Alive.
    KeepAlive,
    /// Asynchronous Event Request.
    AsyncEvent,
    /// Abort.
    Abort,
    /// holdfast's Fence Association (vendor specific, [`holdfast_proto::opcode::admin::HOLDFAST_FENCE_ASSOCIATION`]).
    FenceAssociation,
    /// Read `len` bytes at byte `offset`.
    Read {
        /// Namespace.
        ns: Arc<Namespace>,
        /// Byte offset.
        offset: u64,
    },
    /// Compare the host's `len` bytes with the namespace's at byte `offset` (NVM Command Set 1.0 §3.2.1); as
    /// the first command of a fused operation, the Compare of a Compare and Write
    /// ([`crate::cmd::io::execute_fused`]).
    Compare {
        /// Namespace.
        ns: Arc<Namespace>,
        /// Byte offset.
        offset: u64,
    },
    /// Write at byte `offset`.
    Write {
        /// Namespace.
        ns: Arc<Namespace>,
        /// Byte offset.
        offset: u64,
        /// Force Unit Access.
        fua: bool,
    },
    /// Flush one namespace, or all (NSID FFFFFFFFh).
    Flush {
        /// Namespaces to flush.
        ns: Vec<Arc<Namespace>>,
    },
    /// Write Zeroes.
    WriteZeroes {
        /// Namespace.
        ns: Arc<Namespace>,
        /// Byte offset.
        offset: u64,
        /// Byte length.
        len: u64,
        /// Deallocate instead of writing (DEAC).
        deallocate: bool,
        /// Force Unit Access: the zeroes are durable when the command completes.
        fua: bool,
    },
    /// Reservation Register, Report, Acquire or Release ([`crate::cmd::reservation`]).
    Reservation {
        /// Namespace.
        ns: Arc<Namespace>,
        /// Which.
        cmd: crate::cmd::reservation::Command,
    },
    /// Dataset Management with the Deallocate attribute.
    DatasetManagement {
        /// Namespace.
        ns: Arc<Namespace>,
        /// Number of ranges.
        ranges: usize,
        /// Attribute - Deallocate.
        deallocate: bool,
    },
}

/// A parsed command.
pub struct Request {
    /// The command as received.
    pub sqe: SubmissionEntry,
    /// What to run.
    pub exec: Exec,
    /// Data direction.
    pub dir: DataDir,
    /// Data length in bytes.
    pub len: usize,
}

impl Request {
    /// How many bytes of data the host gets back: the transfer length for data to the host, else none (the
    /// transport trims or zero-pads a response's data to this).
    pub fn len_to_host(&self) -> usize {
        if self.dir == DataDir::ToHost {
            self.len
        } else {
            0
        }
    }
}

/// A command's result: status, completion dwords, and data for the host.
#[derive(Debug, Clone, Default)]
pub struct Response {
    /// Status.
    pub status: Status,
    /// Completion dword 0.
    pub dw0: u32,
    /// Completion dword 1.
    pub dw1: u32,
    /// Data for the host (reads).
    pub data: Bytes,
    /// Memory `data` keeps alive beyond its own bytes while it waits to be sent (a RAM namespace's read shares
    /// its whole chunk): counted against the connection's send limit ([`holdfast_proto::send::SendQueue::weight`]).
    pub pins: usize,
}

impl Response {
    /// Success with no data.
    pub fn ok() -> Self {
        Response::default()
    }
    /// Success with dword 0.
    pub fn dw0(dw0: u32) -> Self {
        Response { dw0, ..Default::default() }
    }
    /// Success with data.
    pub fn data(data: impl Into<Bytes>) -> Self {
        Response { data: data.into(), ..Default::default() }
    }
    /// Failure.
    pub fn err(status: Status) -> Self {
        Response { status, ..Default::default() }
    }
}

/// How a command finishes.
pub enum Outcome {
    /// Now.
    Done(Response),
    /// Later: backend work that may block, run on its namespace's I/O threads; the transport says where
    /// the response goes ([`Deferred::run`]).
    Later(Deferred),
    /// Held: an Asynchronous Event Request, completed through the controller's AER channel.
    Held,
}

/// What a command's work answers with if it panicked: Internal Error (every command of it, for a fused
/// operation's pair).
pub trait WorkResult: Send + 'static {
    /// The answer of a work that panicked.
    fn internal_error() -> Self;
}

impl WorkResult for Response {
    fn internal_error() -> Self {
        Response::err(Status::INTERNAL_ERROR)
    }
}

impl WorkResult for (Response, Response) {
    fn internal_error() -> Self {
        (Response::err(Status::INTERNAL_ERROR), Response::err(Status::INTERNAL_ERROR))
    }
}

/// Data a command keeps while it runs elsewhere (on a namespace's I/O threads), detached from the receive
/// buffer it was decoded into: a piece of at most [`DETACH_MAX`] bytes is copied, since a slice would keep the
/// whole buffer (64 KiB) for as long as the command runs, and a host with many small writes outstanding on a
/// slow backend would hold many times what it sent (in-capsule writes are not counted in the R2T budget).
/// Larger pieces came through R2Ts, counted, in a buffer grown to their size.
pub fn detach_small(data: Bytes) -> Bytes {
    if !data.is_empty() && data.len() <= DETACH_MAX {
        Bytes::copy_from_slice(&data)
    } else {
        data
    }
}

/// The largest piece [`detach_small`] copies: the largest in-capsule data an I/O queue takes.
pub const DETACH_MAX: usize = 16 << 10;

/// A command's blocking backend work, not yet started: one command's [`Response`], or the two of a fused
/// operation ([`FusedOutcome`]).
pub struct Deferred<T: WorkResult = Response> {
    ns: Arc<Namespace>,
    work: Box<dyn FnOnce() -> T + Send>,
    /// Never inline: without I/O threads, on tokio's blocking pool.
    off_task: bool,
}

impl<T: WorkResult> Deferred<T> {
    /// Work to run on `ns`'s I/O threads (inline, on the caller's thread, if it has none).
    pub fn new(ns: Arc<Namespace>, work: impl FnOnce() -> T + Send + 'static) -> Deferred<T> {
        Deferred { ns, work: Box::new(work), off_task: false }
    }

    /// Work too long to run on a connection's task even for a backend that never blocks (a deallocation
    /// over gigabytes of a RAM namespace): on `ns`'s I/O threads, or tokio's blocking pool if it has none, so
    /// that the runtime's other connections and timers go on meanwhile. Must be started on a runtime.
    pub fn off_task(ns: Arc<Namespace>, work: impl FnOnce() -> T + Send + 'static) -> Deferred<T> {
        Deferred { ns, work: Box::new(work), off_task: true }
    }

    /// Start the work; `done` gets its response, on the I/O thread that ran it (a panic in the work is
    /// answered with Internal Error, as tokio's blocking pool did).
    pub fn run(self, done: impl FnOnce(T) + Send + 'static) {
        let work = self.work;
        let job = move || {
            let r = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
            done(r.unwrap_or_else(|_| T::internal_error()))
        };
        match &self.ns.io {
            Some(pool) => pool.submit(Box::new(job)),
            None if self.off_task => drop(tokio::task::spawn_blocking(job)),
            None => job(),
        }
    }
}

/// How a fused operation (a Compare and Write, [`crate::cmd::io::execute_fused`]) finishes: the responses of
/// its first command (the Compare) and its second (the Write).
pub enum FusedOutcome {
    /// Now.
    Done(Response, Response),
    /// Later, on the namespace's I/O threads.
    Later(Deferred<(Response, Response)>),
}

impl From<Response> for Outcome {
    fn from(r: Response) -> Self {
        Outcome::Done(r)
    }
}

/// What a queue knows about itself: the core's view of one transport connection.
pub struct QueueCtx {
    /// The target.
    pub target: Arc<Target>,
    /// The port the connection came in on.
    pub port: Port,
    /// Our address on this connection.
    pub local_addr: SocketAddr,
    /// The host's address.
    pub peer_addr: SocketAddr,
    /// Queue ID (set by Connect).
    pub qid: u16,
    /// Queue size (entries, not 0's based; set by Connect).
    pub size: u32,
    /// The controller (set by Connect).
    pub ctrl: Option<Arc<Controller>>,
    /// The host disabled SQ flow control (Connect CATTR bit 2).
    pub sq_flow_disabled: bool,
    /// Largest in-capsule data this queue accepts.
    pub max_incapsule: usize,
    /// Set by Disconnect: close the connection once the response is sent.
    pub close_after_response: bool,
    /// This queue's media gate: its commands are dropped before touching media once the queue is dead,
    /// and a reconnecting host waits for them (README, No stale writes).
    pub gate: std::sync::Arc<crate::backend::AssociationGate>,
    /// This queue's DH-HMAC-CHAP exchange, when its host must authenticate (set by Connect).
    pub auth: Option<Box<crate::cmd::auth::QueueAuth>>,
    /// The queue must authenticate and has not (yet): every command but Authentication Send / Receive and
    /// Disconnect is refused with Authentication Required. The one check the command path makes for it.
    pub auth_pending: bool,
    /// An I/O queue whose host must authenticate takes its queue ID (and counts as connected) only once the
    /// host has proven itself, its Reply checked ([`crate::cmd::auth`]): set by its Connect, cleared when it
    /// takes the ID. The Connect of an I/O queue carries nothing secret (host NQN, Host ID, CNTLID), so a queue
    /// that took its ID at Connect let anyone hold that ID against the host's own Connect until its
    /// authentication timed out.
    pub qid_claim_pending: bool,
}

impl QueueCtx {
    /// A new connection's queue, before Connect: no controller, the admin in-capsule limit until Connect
    /// says otherwise (`max_incapsule`), a media gate that drains as the target's settings say.
    pub fn new(
        target: Arc<Target>,
        port: Port,
        local_addr: SocketAddr,
        peer_addr: SocketAddr,
        max_incapsule: usize,
    ) -> QueueCtx {
        let gate = crate::backend::AssociationGate::new(target.settings.drain);
        QueueCtx {
            target,
            port,
            local_addr,
            peer_addr,
            qid: 0,
            size: 0,
            ctrl: None,
            sq_flow_disabled: false,
            max_incapsule,
            close_after_response: false,
            gate,
            auth: None,
            auth_pending: false,
            qid_claim_pending: false,
        }
    }
}

/// Largest data transfer of one command: MDTS = 6 (2^6 × 4 KiB).
pub const MDTS: u8 = 6;
/// MDTS in bytes.
pub const MAX_TRANSFER: usize = 4096 << MDTS;

/// Result of parsing: a request, or a status to complete the command with at once.
pub type ParseResult = Result<Request, Status>;

#[cfg(test)]
mod detach_tests {
    use super::*;

    /// A small piece of a larger buffer is copied out of it (the buffer can go); a large one, and nothing,
    /// are kept as they are.
    #[test]
    fn small_pieces_are_detached_from_their_buffer() {
        let buf = Bytes::from(vec![7u8; 64 << 10]);
        let small = detach_small(buf.slice(100..4196));
        let within =
            |b: &Bytes| (buf.as_ptr() as usize..buf.as_ptr() as usize + buf.len()).contains(&(b.as_ptr() as usize));
        assert!(!within(&small) && small.len() == 4096 && small.iter().all(|&x| x == 7));
        let large = detach_small(buf.slice(0..32 << 10));
        assert!(within(&large), "a piece above DETACH_MAX is not copied");
    }
}
