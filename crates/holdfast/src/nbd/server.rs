//! One NBD connection: the fixed newstyle handshake, then the transmission phase, each request executed on
//! the namespace through the host library (so a target outage inside the connection policy is only latency
//! here, and beyond it an `EIO`). Requests run concurrently and are answered as they complete (NBD allows
//! any order). The request data they hold is bounded per connection ([`CONNECTION_BYTES`]) and across all
//! of them ([`INFLIGHT_BYTES`]), and a client that stops sending a write's payload or reading its replies is
//! dropped once its transfer has not moved for [`Export::stall_timeout`] (or is slower than [`MIN_CLIENT_RATE`]),
//! so one client cannot hold the others up for long.

use super::wire::{self, cflags, cmd, errno, info, opt, rep, tflags, InfoRequest, OptionHeader, Request};
use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use holdfast_host::{Error, Namespace};
use holdfast_proto::Status;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt, BufReader, BufWriter};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio_util::sync::CancellationToken;

/// Largest read or write one request may ask for (advertised as the maximum block size): 32 MiB, the size
/// the NBD protocol says no client's request should exceed for portability.
pub const MAX_REQUEST: u32 = 32 << 20;
/// Largest option request's data taken in the handshake (a name is at most 4096 bytes); a larger one is
/// taken as abuse and the connection is dropped.
const MAX_OPTION: u32 = 64 * 1024;
/// Time a client has from connecting to entering the transmission phase.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(60);
/// At shutdown, how long a client still negotiating may take to finish the option it is on ([`serve`]).
const HANDSHAKE_GRACE: Duration = Duration::from_secs(2);
/// Bytes of request data (a write's payload, a read's answer) all connections together may hold at once.
/// A connection whose next request does not fit waits before reading it (its payload included).
pub const INFLIGHT_BYTES: usize = 512 << 20;
const _: () = assert!(INFLIGHT_BYTES >= MAX_REQUEST as usize);
const _: () = assert!(CONNECTION_BYTES >= MAX_REQUEST as usize);
/// The same, for one connection: each request counts at least [`MIN_COST`], so at most 512 are in flight.
const CONNECTION_BYTES: usize = 64 << 20;
/// What a request without data (or with little) counts towards the budgets.
const MIN_COST: u32 = 128 * 1024;
/// A write's payload or a reply that has not moved for this long (or is slower in all than [`MIN_CLIENT_RATE`],
/// [`Pace`]): the client is taken to be gone or hostile and the connection is dropped (the protocol allows a
/// hard disconnect against denial of service), freeing what its requests held. The default of
/// [`Export::stall_timeout`].
pub const STALL_TIMEOUT: Duration = Duration::from_secs(30);
/// The slowest client a transfer is given time for, bytes a second: a 32 MiB write's payload may take 30 s +
/// 512 s in all, as long as it keeps moving. The whole transfer within 30 s dropped any client slower than about
/// 1.1 MB/s (a WAN link, a loaded machine) in the middle of every large request, though NBD says requests up to
/// 32 MiB should not be taken for an attack (found by a review).
const MIN_CLIENT_RATE: u64 = 64 * 1024;

/// The clock of one transfer of `len` bytes to or from the client: each step (one read or write) must move
/// something within `stall`, and the whole must be done within `stall` and the time it takes at
/// [`MIN_CLIENT_RATE`].
struct Pace {
    len: usize,
    stall: Duration,
    all: Duration,
    deadline: tokio::time::Instant,
}

impl Pace {
    fn new(len: usize, stall: Duration) -> Pace {
        let all = stall + Duration::from_millis(len as u64 * 1000 / MIN_CLIENT_RATE);
        Pace { len, stall, all, deadline: tokio::time::Instant::now() + all }
    }

    /// One step, with `done` bytes moved so far: how many it moved, or why the transfer is given up.
    async fn step(
        &self,
        done: usize,
        what: &str,
        io: impl std::future::Future<Output = std::io::Result<usize>>,
    ) -> anyhow::Result<usize> {
        let wait = self.stall.min(self.deadline.saturating_duration_since(tokio::time::Instant::now()));
        let (len, stall, all) = (self.len, self.stall, self.all);
        match tokio::time::timeout(wait, io).await {
            Ok(Ok(0)) => bail!("{what}: the client closed the connection after {done} of {len} bytes"),
            Ok(Ok(n)) => Ok(n),
            Ok(Err(e)) => Err(anyhow::Error::from(e).context(what.to_string())),
            Err(_) if tokio::time::Instant::now() >= self.deadline => {
                bail!("{what}: {done} of {len} bytes after {all:?} (slower than {MIN_CLIENT_RATE} bytes/s)")
            }
            Err(_) => bail!("{what}: {done} of {len} bytes, nothing more for {stall:?}"),
        }
    }
}

/// Read all of `buf` from the client, at the [`Pace`] of a transfer.
async fn read_paced<R: AsyncRead + Unpin>(
    rd: &mut R,
    buf: &mut [u8],
    stall: Duration,
    what: &str,
) -> anyhow::Result<()> {
    let pace = Pace::new(buf.len(), stall);
    let mut done = 0;
    while done < buf.len() {
        done += pace.step(done, what, rd.read(&mut buf[done..])).await?;
    }
    Ok(())
}

/// Read and drop `len` bytes from the client, at the [`Pace`] of a transfer.
async fn skip_paced<R: AsyncRead + Unpin>(rd: &mut R, len: usize, stall: Duration, what: &str) -> anyhow::Result<()> {
    let pace = Pace::new(len, stall);
    let mut scratch = vec![0u8; len.min(64 * 1024)];
    let mut done = 0;
    while done < len {
        let n = (len - done).min(scratch.len());
        done += pace.step(done, what, rd.read(&mut scratch[..n])).await?;
    }
    Ok(())
}

/// Write all of `buf` to the client, at the [`Pace`] of a transfer.
async fn write_paced<W: AsyncWrite + Unpin>(wr: &mut W, buf: &[u8], stall: Duration, what: &str) -> anyhow::Result<()> {
    let pace = Pace::new(buf.len(), stall);
    let mut done = 0;
    while done < buf.len() {
        done += pace.step(done, what, wr.write(&buf[done..])).await?;
    }
    Ok(())
}
/// At shutdown, how long a client with nothing outstanding may stay quiet before the connection is closed.
const QUIET: Duration = Duration::from_millis(200);
/// At shutdown, how long the bridge waits for the client to close after the last reply (closing with unread
/// input would reset the connection and could discard replies the client has not received yet).
const LINGER: Duration = Duration::from_secs(2);

/// The export: one namespace of a connected controller.
pub struct Export {
    /// The namespace.
    pub ns: Namespace,
    /// The export's name; the default export ("") is this one too.
    pub name: String,
    /// Shown to clients that ask (`NBD_INFO_DESCRIPTION`).
    pub description: String,
    /// Refuse writes, trims and write-zeroes with `EPERM`.
    pub read_only: bool,
    /// The request data budget all connections share ([`INFLIGHT_BYTES`] permits, a byte each). At least
    /// [`MAX_REQUEST`]: a request takes up to that much at once, and with fewer permits in all would wait for ever.
    pub budget: Arc<Semaphore>,
    /// How long a write's payload or a reply may go without moving ([`STALL_TIMEOUT`] unless a test says
    /// otherwise; [`Pace`]).
    pub stall_timeout: Duration,
    /// Held alone by a write that changes part of a block while it reads, changes and writes back that block
    /// ([`unaligned`]), and shared by writes of whole blocks while they run ([`Export::whole_blocks_turn`]):
    /// one lock per block number modulo their count ([`PARTIAL_BLOCK_LOCKS`]).
    pub partial_blocks: Vec<tokio::sync::RwLock<()>>,
}

/// Transmission flags: flush, FUA, write zeroes (the host library zeroes with Writes on a controller without
/// Write Zeroes), multi-connection (every connection of this process goes through one NVMe controller, and the
/// target, not this bridge, holds any cache), trim only with `trim` (the controller supports deallocation:
/// otherwise a client never sends one, and one sent anyway is a hint that is answered without doing anything,
/// [`execute`]), and read-only with `read_only`.
pub fn transmission_flags(read_only: bool, trim: bool) -> u16 {
    let mut f =
        tflags::HAS_FLAGS | tflags::SEND_FLUSH | tflags::SEND_FUA | tflags::SEND_WRITE_ZEROES | tflags::CAN_MULTI_CONN;
    if trim {
        f |= tflags::SEND_TRIM;
    }
    if read_only {
        f |= tflags::READ_ONLY;
    }
    f
}

/// Locks for read-modify-writes of partial blocks ([`Export::partial_blocks`]): two writes into one block
/// take turns, writes into different blocks mostly do not; a write of whole blocks waits for a
/// read-modify-write of one of them, and the other way round, but not for other writes of whole blocks.
pub const PARTIAL_BLOCK_LOCKS: usize = 64;

/// The locks of a new export ([`Export::partial_blocks`]).
pub fn partial_block_locks() -> Vec<tokio::sync::RwLock<()>> {
    (0..PARTIAL_BLOCK_LOCKS).map(|_| tokio::sync::RwLock::new(())).collect()
}

impl Export {
    fn matches(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }

    /// The export's size in bytes (the namespace's).
    pub fn size(&self) -> u64 {
        self.ns.size()
    }

    /// NBD_CMD_FLUSH: the namespace's Flush, failed with EIO if the target restarted and said it lost its
    /// namespaces' data (a RAM namespace) since this connection last heard of such a restart (`restarts`, the
    /// count [`holdfast_host::Controller::data_losing_restarts`] had then; `seen`, its value when this flush
    /// was received): the flush would otherwise be acknowledged by the new instance while writes acknowledged
    /// before it are gone, and a filesystem's journal would commit on top of them. Every connection is told,
    /// at its first flush after the restart and at every flush it had sent before that one was answered: with
    /// NBD_FLAG_CAN_MULTI_CONN a flush covers the writes of every connection (NBD, § Transmission flags), and
    /// one told for the export left the others' flushes succeeding over their lost writes (found by a review).
    /// The client sees what a disk that lost power looks like; the flushes after it cover what was written
    /// since.
    async fn flush(&self, seen: u64, restarts: &AtomicU64) -> Result<Option<Bytes>, u32> {
        self.ns.flush().await.map_err(|e| nbd_errno(&e, false))?;
        let now = self.ns.controller().data_losing_restarts();
        if now != seen {
            restarts.fetch_max(now, Ordering::SeqCst);
            tracing::error!(
                "NBD flush failed with EIO: the target restarted and lost its namespace's data (a RAM namespace), \
                 with it writes acknowledged before the restart"
            );
            return Err(errno::EIO);
        }
        Ok(None)
    }

    /// The namespace's block size in bytes.
    pub fn block_size(&self) -> u32 {
        self.ns.block_size()
    }

    /// Transmission flags ([`transmission_flags`]), trim only if the controller supports deallocation now (its
    /// Identify Controller ONCS, as of the current association): asked at each handshake, so a client that
    /// connects after a reconnect to a target that changed its answer is told the new one.
    pub fn flags(&self) -> u16 {
        transmission_flags(self.read_only, self.ns.supports_deallocate())
    }

    /// Minimum (the namespace's block size: requests must be aligned to it), preferred, maximum.
    fn block_sizes(&self) -> (u32, u32, u32) {
        let bs = self.block_size();
        (bs, bs.max(4096), MAX_REQUEST / bs * bs)
    }

    /// The lock of block `lba` for a read-modify-write of part of it ([`unaligned`]).
    fn partial_block_lock(&self, lba: u64) -> &tokio::sync::RwLock<()> {
        &self.partial_blocks[(lba % self.partial_blocks.len() as u64) as usize]
    }

    /// A write (or write zeroes) of the whole blocks `lba..lba + blocks` takes a shared turn on their locks
    /// while it runs: a read-modify-write of one of those blocks (another request's, whose bytes it overlaps)
    /// then reads the block either before this write starts, and writes it back before this one lands, or
    /// once it has landed. Without it the read-modify-write could read the block's old bytes before this
    /// write and write them back after it, undoing this write's bytes that the other request never covered.
    /// Taken in the order of the locks, never while holding a lock alone, so no two requests wait on each
    /// other.
    async fn whole_blocks_turn(&self, lba: u64, blocks: u64) -> Vec<tokio::sync::RwLockReadGuard<'_, ()>> {
        let n = self.partial_blocks.len() as u64;
        let mut slots: Vec<usize> = if blocks >= n {
            (0..n as usize).collect()
        } else {
            (lba..lba + blocks).map(|b| (b % n) as usize).collect()
        };
        slots.sort_unstable();
        let mut held = Vec::with_capacity(slots.len());
        for s in slots {
            held.push(self.partial_blocks[s].read().await);
        }
        held
    }
}

/// Serve one client on `stream` until it disconnects, breaks the protocol (Err, with the reason) or
/// `shutdown` (requests already received are answered first; options get `NBD_REP_ERR_SHUTDOWN`).
pub async fn serve<S>(stream: S, export: Arc<Export>, shutdown: CancellationToken) -> anyhow::Result<()>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    let (mut rd, mut wr) = (BufReader::new(rd), BufWriter::with_capacity(256 * 1024, wr));
    // At shutdown a client still negotiating has HANDSHAKE_GRACE to finish the option it is on (answered
    // NBD_REP_ERR_SHUTDOWN), then is closed: one stopped half way through an option's data (or not reading its
    // replies) held the handshake's own 60 s, past the bridge's 30 s drain, which then ended in a forced stop
    // and exit 1 (found by a review). It has no request outstanding, so nothing is lost.
    let grace = async {
        shutdown.cancelled().await;
        tokio::time::sleep(HANDSHAKE_GRACE).await;
    };
    let go = tokio::select! {
        r = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut rd, &mut wr, &export, &shutdown)) => r
            .map_err(|_| anyhow::anyhow!("no export chosen within {HANDSHAKE_TIMEOUT:?} of connecting"))??,
        _ = grace => return Ok(()),
    };
    let Some(align) = go else {
        return Ok(());
    };
    transmission(rd, wr, export, shutdown, align).await.map(|_| ())
}

/// How a transmission phase ended without error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Ended {
    /// The client sent `NBD_CMD_DISC` (every request before it answered).
    Disconnect,
    /// The client closed the connection, or the bridge closed it at shutdown.
    Closed,
}

/// What a connection's requests must be aligned to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Alignment {
    /// The namespace's blocks: the client asked for the block sizes (`NBD_INFO_BLOCK_SIZE` in its
    /// `NBD_OPT_GO`), or they were set out of band (the kernel's device, by ioctl). A misaligned request is
    /// refused with `EINVAL`, as the protocol allows.
    Blocks,
    /// None: a client that agreed to no block size has NBD's default minimum of 1 byte, which a server
    /// SHOULD support (NBD § Block size constraints). Its misaligned requests are served by reading the
    /// blocks they touch ([`unaligned`]).
    Bytes,
}

/// Serve a client that starts in the transmission phase (the Linux kernel's NBD device, whose size and flags
/// were set by ioctl: [`super::device`]) until it sends `NBD_CMD_DISC` or closes, or `shutdown`.
pub async fn serve_transmission<S>(stream: S, export: Arc<Export>, shutdown: CancellationToken) -> anyhow::Result<Ended>
where
    S: AsyncRead + AsyncWrite + Send + 'static,
{
    let (rd, wr) = tokio::io::split(stream);
    transmission(BufReader::new(rd), BufWriter::with_capacity(256 * 1024, wr), export, shutdown, Alignment::Blocks)
        .await
}

/// The handshake: once the client entered transmission, what its requests must be aligned to; None if it
/// ended the negotiation.
async fn handshake<R, W>(
    rd: &mut R,
    wr: &mut W,
    export: &Export,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Alignment>>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin,
{
    wr.write_all(&wire::greeting(wire::handshake::FIXED_NEWSTYLE | wire::handshake::NO_ZEROES)).await?;
    wr.flush().await?;
    let cf = rd.read_u32().await.context("reading the client flags")?;
    if cf & !(wire::client::FIXED_NEWSTYLE | wire::client::NO_ZEROES) != 0 {
        bail!("client flags {cf:#x} hold bits this server did not offer");
    }
    let zeroes = cf & wire::client::NO_ZEROES == 0;
    loop {
        let mut h = [0u8; wire::OPTION_HEADER];
        let r = tokio::select! {
            r = rd.read_exact(&mut h) => r,
            // Shutting down: a client between options is closed at once.
            _ = shutdown.cancelled() => return Ok(None),
        };
        match r {
            Ok(_) => {}
            // A client may simply go away during negotiation (nbdinfo --list does after NBD_OPT_ABORT).
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(None),
            Err(e) => return Err(e.into()),
        }
        let h = OptionHeader::decode(&h);
        if h.magic != wire::IHAVEOPT {
            bail!("option request with magic {:#018x} instead of IHAVEOPT", h.magic);
        }
        if h.length > MAX_OPTION {
            bail!("option {} with {} bytes of data (at most {MAX_OPTION} taken)", h.option, h.length);
        }
        let mut data = vec![0u8; h.length as usize];
        rd.read_exact(&mut data).await.context("reading an option's data")?;
        let reply = |ty: u32, d: &[u8]| wire::option_reply(h.option, ty, d);
        if shutdown.is_cancelled() && h.option != opt::ABORT {
            if h.option == opt::EXPORT_NAME {
                bail!("shutting down: NBD_OPT_EXPORT_NAME cannot be refused otherwise");
            }
            wr.write_all(&reply(rep::ERR_SHUTDOWN, b"the server is shutting down")).await?;
            wr.flush().await?;
            continue;
        }
        match h.option {
            opt::EXPORT_NAME => {
                if !export.matches(&data) {
                    bail!("NBD_OPT_EXPORT_NAME for unknown export {:?}", String::from_utf8_lossy(&data));
                }
                wr.write_all(&wire::export_name_reply(export.size(), export.flags(), zeroes)).await?;
                wr.flush().await?;
                // The old way in has no block sizes to agree to.
                return Ok(Some(Alignment::Bytes));
            }
            opt::ABORT => {
                wr.write_all(&reply(rep::ACK, &[])).await?;
                wr.flush().await?;
                return Ok(None);
            }
            opt::LIST if !data.is_empty() => {
                wr.write_all(&reply(rep::ERR_INVALID, b"NBD_OPT_LIST carries no data")).await?
            }
            opt::LIST => {
                wr.write_all(&reply(rep::SERVER, &wire::rep_server(&export.name))).await?;
                wr.write_all(&reply(rep::ACK, &[])).await?;
            }
            opt::INFO | opt::GO => match InfoRequest::decode(&data) {
                None => {
                    wr.write_all(&reply(rep::ERR_INVALID, b"name and information requests do not fill the option"))
                        .await?
                }
                Some(r) if !export.matches(&r.name) => {
                    let msg =
                        format!("no export {:?}; this server has {:?}", String::from_utf8_lossy(&r.name), export.name);
                    wr.write_all(&reply(rep::ERR_UNKNOWN, msg.as_bytes())).await?
                }
                Some(r) => {
                    wr.write_all(&reply(rep::INFO, &wire::info_export(export.size(), export.flags()))).await?;
                    if r.requests.contains(&info::NAME) {
                        wr.write_all(&reply(rep::INFO, &wire::info_string(info::NAME, &export.name))).await?;
                    }
                    if r.requests.contains(&info::DESCRIPTION) {
                        let d = wire::info_string(info::DESCRIPTION, &export.description);
                        wr.write_all(&reply(rep::INFO, &d)).await?;
                    }
                    // Always, asked for or not. A client that asked is held to the namespace's blocks; one that
                    // did not gets NBD's default minimum of 1 (Alignment::Bytes, served by read-modify-write),
                    // and is told so, with the preferred size that avoids it.
                    let asked = r.requests.contains(&info::BLOCK_SIZE);
                    let (min, pref, max) = export.block_sizes();
                    let min = if asked { min } else { 1 };
                    wr.write_all(&reply(rep::INFO, &wire::info_block_size(min, pref, max))).await?;
                    wr.write_all(&reply(rep::ACK, &[])).await?;
                    if h.option == opt::GO {
                        wr.flush().await?;
                        return Ok(Some(if asked { Alignment::Blocks } else { Alignment::Bytes }));
                    }
                }
            },
            opt::STARTTLS => wr.write_all(&reply(rep::ERR_UNSUP, b"TLS is not offered by this server")).await?,
            opt::STRUCTURED_REPLY if !data.is_empty() => {
                wr.write_all(&reply(rep::ERR_INVALID, b"NBD_OPT_STRUCTURED_REPLY carries no data")).await?
            }
            _ => wr.write_all(&reply(rep::ERR_UNSUP, &[])).await?,
        }
        wr.flush().await?;
    }
}

/// A reply for the writer: a simple reply, with a read's data, and what its request held.
struct Reply {
    handle: u64,
    error: u32,
    data: Option<Bytes>,
    /// The request's share of the connection's budget and of the shared one (an `ESHUTDOWN` answer holds only
    /// the first), released once written.
    _budget: (OwnedSemaphorePermit, Option<OwnedSemaphorePermit>),
    /// Counts the request as outstanding until its reply is written (see [`next_request`]).
    _outstanding: Arc<()>,
}

async fn transmission<R, W>(
    mut rd: R,
    wr: W,
    export: Arc<Export>,
    shutdown: CancellationToken,
    align: Alignment,
) -> anyhow::Result<Ended>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel::<Reply>();
    let writer = tokio::spawn(write_replies(wr, rx, export.stall_timeout));
    let mine = Arc::new(Semaphore::new(CONNECTION_BYTES));
    let outstanding = Arc::new(());
    // Data-losing target restarts this connection has been told of ([`Export::flush`]): none before it began.
    let restarts = Arc::new(AtomicU64::new(export.ns.controller().data_losing_restarts()));
    let mut closing = false;
    let result: anyhow::Result<Ended> = async {
        loop {
            let next = tokio::select! {
                r = next_request(&mut rd, &shutdown, &mut closing, &outstanding) => r?,
                // The writer gave up on the client (a reply it did not take): nothing more is read or run.
                _ = tx.closed() => bail!("the client stopped reading its replies"),
            };
            let Some(h) = next else { return Ok(Ended::Closed) };
            let r = Request::decode(&h);
            if r.magic != wire::REQUEST_MAGIC {
                bail!("request with magic {:#010x} instead of {:#010x}", r.magic, wire::REQUEST_MAGIC);
            }
            if r.ty == cmd::DISC {
                return Ok(Ended::Disconnect);
            }
            if r.ty == cmd::WRITE && r.length > MAX_REQUEST {
                // Its payload cannot be skipped at a bounded cost: the protocol lets the server hang up.
                bail!("write of {} bytes (at most {MAX_REQUEST})", r.length);
            }
            if closing {
                // Shutting down: what arrives now is answered ESHUTDOWN (NBD § Terminating the transmission
                // phase), a write's payload read and dropped. Each answer holds the least share of the
                // connection's budget until written, so a client that sends and does not read is held back.
                if r.ty == cmd::WRITE {
                    skip_paced(&mut rd, r.length as usize, export.stall_timeout, "reading a write's payload").await?;
                }
                let share = tokio::select! {
                    biased;
                    _ = tx.closed() => bail!("the client stopped reading its replies"),
                    p = mine.clone().acquire_many_owned(MIN_COST) => p?,
                };
                let reply = Reply {
                    handle: r.handle,
                    error: errno::ESHUTDOWN,
                    data: None,
                    _budget: (share, None),
                    _outstanding: outstanding.clone(),
                };
                let _ = tx.send(reply);
                continue;
            }
            let cost = r.length.clamp(MIN_COST, MAX_REQUEST);
            let budget = tokio::select! {
                biased;
                // Replies no longer go anywhere (the writer gave up on the client): stop taking requests.
                _ = tx.closed() => bail!("the client stopped reading its replies"),
                b = async {
                    let m = mine.clone().acquire_many_owned(cost).await?;
                    let a = export.budget.clone().acquire_many_owned(cost).await?;
                    Ok::<_, tokio::sync::AcquireError>((m, Some(a)))
                } => b?,
            };
            let data = if r.ty == cmd::WRITE {
                let mut d = BytesMut::zeroed(r.length as usize);
                read_paced(&mut rd, &mut d, export.stall_timeout, "reading a write's payload").await?;
                d.freeze()
            } else {
                Bytes::new()
            };
            if tx.is_closed() {
                bail!("the client stopped reading its replies");
            }
            let (export, tx, token, restarts) = (export.clone(), tx.clone(), outstanding.clone(), restarts.clone());
            // What this connection had been told of when the request came (a flush's, [`Export::flush`]).
            let seen = restarts.load(Ordering::SeqCst);
            tokio::spawn(async move {
                let (error, data) = match execute(&export, &r, data, align, seen, &restarts).await {
                    Ok(d) => (0, d),
                    Err(e) => (e, None),
                };
                let _ = tx.send(Reply { handle: r.handle, error, data, _budget: budget, _outstanding: token });
            });
        }
    }
    .await;
    // Every request received is answered before the connection closes (NBD_CMD_DISC: "MUST handle all
    // outstanding requests"): the writer ends once the last task has sent its reply.
    drop(tx);
    let written = writer.await.map_err(|e| anyhow::anyhow!("reply writer: {e}"))?;
    if closing && written.is_ok() {
        let _ = tokio::time::timeout(LINGER, tokio::io::copy(&mut rd, &mut tokio::io::sink())).await;
    }
    result.and_then(|ended| written.map(|()| ended))
}

/// The next request's header; None at the client's EOF, or at shutdown once nothing is outstanding and the
/// client has been quiet for [`QUIET`]. Shutdown sets `closing` but does not cut a header half read: the
/// bridge keeps reading, so that the replies already written are not lost to a reset.
async fn next_request<R: AsyncRead + Unpin>(
    rd: &mut R,
    shutdown: &CancellationToken,
    closing: &mut bool,
    outstanding: &Arc<()>,
) -> anyhow::Result<Option<[u8; wire::REQUEST_LEN]>> {
    let mut h = [0u8; wire::REQUEST_LEN];
    let r = {
        let mut read = std::pin::pin!(rd.read_exact(&mut h));
        loop {
            if *closing {
                tokio::select! {
                    r = &mut read => break r,
                    _ = tokio::time::sleep(QUIET) => {
                        if Arc::strong_count(outstanding) == 1 {
                            return Ok(None);
                        }
                    }
                }
            } else {
                tokio::select! {
                    r = &mut read => break r,
                    _ = shutdown.cancelled() => *closing = true,
                }
            }
        }
    };
    match r {
        Ok(_) => Ok(Some(h)),
        Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
            tracing::debug!("the client closed the connection");
            Ok(None)
        }
        Err(e) => Err(e.into()),
    }
}

async fn write_replies<W: AsyncWrite + Unpin>(
    mut wr: W,
    mut rx: mpsc::UnboundedReceiver<Reply>,
    limit: Duration,
) -> anyhow::Result<()> {
    let timed = |_| anyhow::anyhow!("the client has not taken a reply in {limit:?}");
    while let Some(r) = rx.recv().await {
        let header = wire::simple_reply(r.error, r.handle);
        tokio::time::timeout(limit, wr.write_all(&header)).await.map_err(timed)??;
        if let Some(d) = &r.data {
            write_paced(&mut wr, d, limit, "the client taking a reply").await?;
        }
        if rx.is_empty() {
            tokio::time::timeout(limit, wr.flush()).await.map_err(timed)??;
        }
    }
    tokio::time::timeout(limit, wr.flush()).await.map_err(timed)??;
    let _ = tokio::time::timeout(limit, wr.shutdown()).await;
    Ok(())
}

/// Check a request against the export and run it: Ok with a read's data, or the NBD error value.
async fn execute(
    export: &Export,
    r: &Request,
    data: Bytes,
    align: Alignment,
    seen: u64,
    restarts: &AtomicU64,
) -> Result<Option<Bytes>, u32> {
    let writes = matches!(r.ty, cmd::WRITE | cmd::TRIM | cmd::WRITE_ZEROES);
    let allowed = match r.ty {
        cmd::READ | cmd::WRITE | cmd::FLUSH | cmd::TRIM => cflags::FUA,
        cmd::WRITE_ZEROES => cflags::FUA | cflags::NO_HOLE,
        _ => return Err(errno::EINVAL), // unknown command (NBD_CMD_CACHE, NBD_CMD_BLOCK_STATUS: not offered)
    };
    if r.flags & !allowed != 0 {
        return Err(errno::EINVAL);
    }
    if writes && export.read_only {
        return Err(errno::EPERM);
    }
    let fua = r.flags & cflags::FUA != 0;
    if r.ty == cmd::FLUSH {
        return export.flush(seen, restarts).await;
    }
    let bs = export.block_size() as u64;
    let (mut offset, mut len) = (r.offset, r.length as u64);
    if offset.checked_add(len).is_none_or(|end| end > export.size()) {
        // A write beyond the end is ENOSPC (§ Error values); anything else there is invalid.
        return Err(if matches!(r.ty, cmd::WRITE | cmd::WRITE_ZEROES) { errno::ENOSPC } else { errno::EINVAL });
    }
    if r.ty == cmd::TRIM {
        // A trim is a hint: a misaligned one is narrowed to the whole blocks inside it (the protocol lets a
        // server round its offset up and its length down; qemu sends such trims).
        let end = (offset + len) / bs * bs;
        offset = offset.div_ceil(bs) * bs;
        len = end.saturating_sub(offset);
    }
    if matches!(r.ty, cmd::READ) && r.length > MAX_REQUEST {
        return Err(errno::EINVAL);
    }
    if r.ty != cmd::TRIM && (!offset.is_multiple_of(bs) || !len.is_multiple_of(bs)) {
        match align {
            Alignment::Blocks => return Err(errno::EINVAL),
            Alignment::Bytes if len > 0 => return unaligned(export, r, data, fua).await,
            Alignment::Bytes => {} // nothing to move, wherever it is
        }
    }
    let (lba, blocks) = (offset / bs, len / bs);
    if blocks == 0 {
        return Ok((r.ty == cmd::READ).then(Bytes::new));
    }
    let ns = &export.ns;
    let res = match r.ty {
        cmd::READ => return ns.read(lba, blocks).await.map(Some).map_err(|e| nbd_errno(&e, false)),
        // A trim is a hint the server may ignore (NBD § NBD_CMD_TRIM): on a controller without deallocation (the
        // export did not offer trim, or the controller lost it in a reconnect after this client's handshake) it
        // succeeds doing nothing, as does one the controller refuses as an unknown command although it advertised
        // it. Nothing was written, so FUA asks for nothing either.
        cmd::TRIM if !ns.supports_deallocate() => return Ok(None),
        // A trim leaves its blocks' contents undefined (NBD § NBD_CMD_TRIM): it needs no turn.
        cmd::TRIM => match ns.deallocate(lba, blocks).await {
            Err(e) if e.status().is_some_and(|s| s.code() == Status::INVALID_OPCODE) => return Ok(None),
            other => other,
        },
        ty => {
            let _turn = export.whole_blocks_turn(lba, blocks).await;
            if ty == cmd::WRITE {
                ns.write(lba, data, fua).await
            } else {
                ns.write_zeroes(lba, blocks).await
            }
        }
    };
    res.map_err(|e| nbd_errno(&e, true))?;
    if fua && r.ty != cmd::WRITE {
        // The host library's write zeroes and deallocate take no FUA: a flush makes them durable before the
        // reply.
        ns.flush().await.map_err(|e| nbd_errno(&e, true))?;
    }
    Ok(None)
}

/// A read, write or write zeroes not aligned to the namespace's blocks, from a client held to no block size:
/// a read reads the blocks it touches and answers the bytes asked for; a write or write zeroes writes its
/// whole blocks as they are and each partial block at its ends by reading that block, changing the bytes
/// asked for and writing it back. Two read-modify-writes of one block take turns (the block's lock in
/// [`Export::partial_blocks`], held for that block's read and write only): two writes to different bytes of
/// one block, both in flight, both land. A write of whole blocks (this request's middle, or any other
/// request's) takes a shared turn on the same locks ([`Export::whole_blocks_turn`]), so it lands wholly before
/// or wholly after a read-modify-write of one of its blocks: the bytes of a block that only it covers keep its
/// data (a read-modify-write that read the block before it landed and wrote it back after would undo them).
/// Where two requests' bytes overlap, which one's bytes stay is the client's to order, as with any block
/// device.
async fn unaligned(export: &Export, r: &Request, data: Bytes, fua: bool) -> Result<Option<Bytes>, u32> {
    let (ns, bs) = (&export.ns, export.block_size() as u64);
    let (off, end) = (r.offset, r.offset + r.length as u64);
    let (lo, hi) = (off / bs * bs, end.div_ceil(bs) * bs);
    if r.ty == cmd::READ {
        let d = ns.read(lo / bs, (hi - lo) / bs).await.map_err(|e| nbd_errno(&e, false))?;
        let at = (off - lo) as usize;
        return Ok(Some(d.slice(at..at + r.length as usize)));
    }
    // The whole blocks inside [off, end): a..b (empty when the request lies within one block).
    let (a, b) = (off.div_ceil(bs) * bs, end / bs * bs);
    // The bytes from `data` for [from, to), or zeroes for write zeroes.
    let src = |from: u64, to: u64| {
        if r.ty == cmd::WRITE {
            data.slice((from - off) as usize..(to - off) as usize)
        } else {
            Bytes::from(vec![0u8; (to - from) as usize])
        }
    };
    let patch = |block: u64, from: u64, to: u64| {
        let bytes = src(from, to);
        async move {
            let _turn = export.partial_block_lock(block / bs).write().await;
            let old = ns.read(block / bs, 1).await.map_err(|e| nbd_errno(&e, false))?;
            let mut new = BytesMut::from(&old[..]);
            new[(from - block) as usize..(to - block) as usize].copy_from_slice(&bytes);
            ns.write(block / bs, new.freeze(), fua).await.map_err(|e| nbd_errno(&e, true))
        }
    };
    if off < a {
        // The head block (or the only one, when the request starts and ends inside it).
        patch(lo, off, end.min(lo + bs)).await?;
    }
    if a < b {
        let turn = export.whole_blocks_turn(a / bs, (b - a) / bs).await;
        let res = if r.ty == cmd::WRITE {
            ns.write(a / bs, src(a, b), fua).await
        } else {
            match ns.write_zeroes(a / bs, (b - a) / bs).await {
                Ok(()) if fua => {
                    drop(turn);
                    ns.flush().await
                }
                other => other,
            }
        };
        res.map_err(|e| nbd_errno(&e, true))?;
    }
    if b < end && a <= b {
        // The tail block, when it is not the head block.
        patch(b, b, end).await?;
    }
    Ok(None)
}

/// The NBD error value for a failed namespace call, logged (rate-limited) with what it was. Capacity Exceeded
/// is no room, whatever the command (a flush whose fsync found none: nvmet's answer to ENOSPC), not an invalid
/// request; LBA Out of Range is the request's, ENOSPC for a write (NBD § Error values). Namespace is Write
/// Protected (a namespace the target made read-only after the bridge opened it, a restart with `--read-only`
/// ridden through) is EPERM, the protocol's answer to a change of a read-only export.
fn nbd_errno(e: &Error, write: bool) -> u32 {
    let code = e.status().map(|s| s.code());
    let v = if code == Some(Status::NS_WRITE_PROTECTED) {
        errno::EPERM
    } else if code == Some(Status::CAPACITY_EXCEEDED) || (write && code == Some(Status::LBA_OUT_OF_RANGE)) {
        errno::ENOSPC
    } else if code == Some(Status::LBA_OUT_OF_RANGE) || code == Some(Status::INVALID_FIELD) {
        errno::EINVAL
    } else {
        errno::EIO
    };
    log_failure(e, v);
    v
}

fn log_failure(e: &Error, v: u32) {
    if let Some(dropped) = FAILURES.allow() {
        if dropped > 0 {
            tracing::warn!("{dropped} more failed requests were not logged");
        }
        tracing::warn!("request failed, answered with NBD error {v}: {e}");
    }
}

/// Failed requests logged, at most ten lines a second: a lost controller fails every request at once.
static FAILURES: holdfast_rt::RateLimit = holdfast_rt::RateLimit::new(10);

#[cfg(test)]
mod tests {
    use super::*;
    use holdfast_target::backend::{Backend, MediaGate};
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    /// A backend whose flush fails for want of room (a thin device or NFS server that ran out of space
    /// under writeback: fsync then returns ENOSPC); everything else goes to `inner`.
    struct NoRoomToFlush(Arc<dyn Backend>);

    impl Backend for NoRoomToFlush {
        fn size(&self) -> u64 {
            self.0.size()
        }
        fn blocking(&self) -> bool {
            false
        }
        fn read_at(&self, offset: u64, buf: &mut [u8], gate: &MediaGate) -> std::io::Result<()> {
            self.0.read_at(offset, buf, gate)
        }
        fn write_at(&self, offset: u64, data: &[u8], fua: bool, gate: &MediaGate) -> std::io::Result<()> {
            self.0.write_at(offset, data, fua, gate)
        }
        fn flush(&self, _: &MediaGate) -> std::io::Result<()> {
            Err(std::io::Error::from_raw_os_error(libc::ENOSPC))
        }
        fn write_zeroes(&self, offset: u64, len: u64, gate: &MediaGate) -> std::io::Result<()> {
            self.0.write_zeroes(offset, len, gate)
        }
        fn deallocate(&self, offset: u64, len: u64, gate: &MediaGate) -> std::io::Result<()> {
            self.0.deallocate(offset, len, gate)
        }
        fn describe(&self) -> String {
            "no room to flush".into()
        }
    }

    /// Trim is offered only when the controller supports deallocation (ONCS Dataset Management); write zeroes
    /// always (the host library falls back to Writes); read-only as asked. (The holdfast target always has
    /// Dataset Management, so an export without it is tested by its flags; tests/nbd.rs checks the flags of one
    /// with it.)
    #[test]
    fn trim_is_offered_only_when_the_controller_can_deallocate() {
        let common = tflags::HAS_FLAGS
            | tflags::SEND_FLUSH
            | tflags::SEND_FUA
            | tflags::SEND_WRITE_ZEROES
            | tflags::CAN_MULTI_CONN;
        assert_eq!(transmission_flags(false, false), common, "no deallocation: no trim, write zeroes still");
        assert_eq!(transmission_flags(false, true), common | tflags::SEND_TRIM);
        assert_eq!(transmission_flags(true, false), common | tflags::READ_ONLY);
        assert_eq!(transmission_flags(true, true), common | tflags::SEND_TRIM | tflags::READ_ONLY);
    }

    /// A flush the namespace fails with Capacity Exceeded (what nvmet, and holdfast's target, answer when
    /// the backing store's fsync fails with ENOSPC) is not the client's mistake: it gets ENOSPC, not EINVAL
    /// (NBD § Error values: EINVAL is for invalid requests; ENOSPC for want of room).
    #[test]
    fn a_flush_that_fails_for_want_of_room_is_enospc_not_einval() {
        const NQN: &str = "nqn.2026-01.io.holdfast:nbd-unit";
        let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
        rt.block_on(async {
            let cfg = holdfast_target::Config::parse(
                &format!(
                    "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"{NQN}\"\n\
                     allow_any_host = true\n[[subsystem.namespace]]\nnsid = 1\nbackend = \"ram\"\nsize_mib = 1\n\
                     block_size = 512\n"
                ),
                "test",
            )
            .unwrap();
            let target = holdfast_target::Target::new(&cfg, holdfast_target::TargetSettings::default()).unwrap();
            let sub = target.subsystem(NQN).unwrap();
            {
                let mut nss = sub.namespaces.write();
                let old = nss.get(&1).unwrap().clone();
                let backend: Arc<dyn Backend> = Arc::new(NoRoomToFlush(old.backend.clone()));
                nss.insert(1, Arc::new(holdfast_target::namespace::Namespace::new(1, 512, backend, old.ids)));
            }
            let server = holdfast_target::Server::start(target.clone()).await.unwrap();
            let addr = server.bound[0].1.to_string();
            let ctrl = holdfast_host::Controller::connect(holdfast_host::ConnectOptions::new(addr, NQN)).await.unwrap();
            let export = Arc::new(Export {
                ns: Namespace::open(&ctrl, 1).await.unwrap(),
                name: "t".into(),
                description: String::new(),
                read_only: false,
                budget: Arc::new(Semaphore::new(INFLIGHT_BYTES)),
                stall_timeout: STALL_TIMEOUT,
                partial_blocks: partial_block_locks(),
            });
            let (mut client, theirs) = tokio::io::duplex(1 << 20);
            let serving = tokio::spawn(serve_transmission(theirs, export, CancellationToken::new()));
            let req = |ty, handle| {
                Request { magic: wire::REQUEST_MAGIC, flags: 0, ty, handle, offset: 0, length: 0 }.encode()
            };
            client.write_all(&req(cmd::FLUSH, 7)).await.unwrap();
            let mut reply = [0u8; wire::SIMPLE_REPLY_LEN];
            client.read_exact(&mut reply).await.unwrap();
            assert_eq!(reply, wire::simple_reply(errno::ENOSPC, 7), "the flush's reply");
            client.write_all(&req(cmd::DISC, 8)).await.unwrap();
            assert_eq!(serving.await.unwrap().unwrap(), Ended::Disconnect);
            drop(server);
            let _ = ctrl.shutdown().await;
        });
    }
}
