//! One NBD connection: the fixed newstyle handshake, then the transmission phase, each request executed on
//! the namespace through the host library (so a target outage inside the connection policy is only latency
//! here, and beyond it an `EIO`). Requests run concurrently and are answered as they complete (NBD allows
//! any order); the memory they hold, across all connections, is bounded by [`INFLIGHT_BYTES`].

use super::wire::{self, cflags, cmd, errno, info, opt, rep, tflags, InfoRequest, OptionHeader, Request};
use anyhow::{bail, Context};
use bytes::{Bytes, BytesMut};
use holdfast_host::{Error, Namespace};
use holdfast_proto::Status;
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
/// Bytes of request data (a write's payload, a read's answer) all connections together may hold at once;
/// each request counts at least [`MIN_COST`], so it also bounds the requests in flight (2048). A connection
/// whose next request does not fit waits before reading it (its payload included).
pub const INFLIGHT_BYTES: usize = 256 << 20;
/// What a request without data (or with little) counts towards [`INFLIGHT_BYTES`].
const MIN_COST: u32 = 128 * 1024;

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
    /// The request data budget all connections share ([`INFLIGHT_BYTES`] permits, a byte each).
    pub budget: Arc<Semaphore>,
}

impl Export {
    fn matches(&self, name: &[u8]) -> bool {
        name.is_empty() || name == self.name.as_bytes()
    }

    fn size(&self) -> u64 {
        self.ns.size()
    }

    fn block_size(&self) -> u32 {
        self.ns.block_size
    }

    /// Transmission flags: flush, FUA, trim and write zeroes, and multi-connection (every connection of this
    /// process goes through one NVMe controller, and the target, not this bridge, holds any cache).
    fn flags(&self) -> u16 {
        let mut f = tflags::HAS_FLAGS
            | tflags::SEND_FLUSH
            | tflags::SEND_FUA
            | tflags::SEND_TRIM
            | tflags::SEND_WRITE_ZEROES
            | tflags::CAN_MULTI_CONN;
        if self.read_only {
            f |= tflags::READ_ONLY;
        }
        f
    }

    /// Minimum (the namespace's block size: requests must be aligned to it), preferred, maximum.
    fn block_sizes(&self) -> (u32, u32, u32) {
        let bs = self.block_size();
        (bs, bs.max(4096), MAX_REQUEST / bs * bs)
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
    let go = tokio::time::timeout(HANDSHAKE_TIMEOUT, handshake(&mut rd, &mut wr, &export, &shutdown))
        .await
        .map_err(|_| anyhow::anyhow!("no export chosen within {HANDSHAKE_TIMEOUT:?} of connecting"))??;
    if !go {
        return Ok(());
    }
    transmission(rd, wr, export, shutdown).await
}

/// The handshake: true once the client entered transmission, false if it ended the negotiation.
async fn handshake<R, W>(rd: &mut R, wr: &mut W, export: &Export, shutdown: &CancellationToken) -> anyhow::Result<bool>
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
        match rd.read_exact(&mut h).await {
            Ok(_) => {}
            // A client may simply go away during negotiation (nbdinfo --list does after NBD_OPT_ABORT).
            Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => return Ok(false),
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
                return Ok(true);
            }
            opt::ABORT => {
                wr.write_all(&reply(rep::ACK, &[])).await?;
                wr.flush().await?;
                return Ok(false);
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
                    // Always: requests must be aligned to the namespace's blocks, which is not the default.
                    let (min, pref, max) = export.block_sizes();
                    wr.write_all(&reply(rep::INFO, &wire::info_block_size(min, pref, max))).await?;
                    wr.write_all(&reply(rep::ACK, &[])).await?;
                    if h.option == opt::GO {
                        wr.flush().await?;
                        return Ok(true);
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

/// A reply for the writer: a simple reply, with a read's data, and the budget its request held.
struct Reply {
    handle: u64,
    error: u32,
    data: Option<Bytes>,
    _budget: OwnedSemaphorePermit,
}

async fn transmission<R, W>(mut rd: R, wr: W, export: Arc<Export>, shutdown: CancellationToken) -> anyhow::Result<()>
where
    R: AsyncRead + Unpin,
    W: AsyncWrite + Unpin + Send + 'static,
{
    let (tx, rx) = mpsc::unbounded_channel::<Reply>();
    let writer = tokio::spawn(write_replies(wr, rx));
    let budget = export.budget.clone();
    let result: anyhow::Result<()> = async {
        loop {
            let mut h = [0u8; wire::REQUEST_LEN];
            tokio::select! {
                r = rd.read_exact(&mut h) => match r {
                    Ok(_) => {}
                    Err(e) if e.kind() == std::io::ErrorKind::UnexpectedEof => {
                        tracing::debug!("the client closed the connection without NBD_CMD_DISC");
                        return Ok(());
                    }
                    Err(e) => return Err(e.into()),
                },
                _ = shutdown.cancelled() => return Ok(()),
            }
            let r = Request::decode(&h);
            if r.magic != wire::REQUEST_MAGIC {
                bail!("request with magic {:#010x} instead of {:#010x}", r.magic, wire::REQUEST_MAGIC);
            }
            if r.ty == cmd::DISC {
                return Ok(());
            }
            if r.ty == cmd::WRITE && r.length > MAX_REQUEST {
                // Its payload cannot be skipped at a bounded cost: the protocol lets the server hang up.
                bail!("write of {} bytes (at most {MAX_REQUEST})", r.length);
            }
            let cost = r.length.clamp(MIN_COST, MAX_REQUEST);
            let permit = budget.clone().acquire_many_owned(cost).await.expect("the budget is never closed");
            let data = if r.ty == cmd::WRITE {
                let mut d = BytesMut::zeroed(r.length as usize);
                rd.read_exact(&mut d).await.context("reading a write's payload")?;
                d.freeze()
            } else {
                Bytes::new()
            };
            let (export, tx) = (export.clone(), tx.clone());
            tokio::spawn(async move {
                let (error, data) = match execute(&export, &r, data).await {
                    Ok(d) => (0, d),
                    Err(e) => (e, None),
                };
                let _ = tx.send(Reply { handle: r.handle, error, data, _budget: permit });
            });
        }
    }
    .await;
    // Every request received is answered before the connection closes (NBD_CMD_DISC: "MUST handle all
    // outstanding requests"): the writer ends once the last task has sent its reply.
    drop(tx);
    let written = writer.await.map_err(|e| anyhow::anyhow!("reply writer: {e}"))?;
    result.and(written)
}

async fn write_replies<W: AsyncWrite + Unpin>(mut wr: W, mut rx: mpsc::UnboundedReceiver<Reply>) -> anyhow::Result<()> {
    while let Some(r) = rx.recv().await {
        wr.write_all(&wire::simple_reply(r.error, r.handle)).await?;
        if let Some(d) = &r.data {
            wr.write_all(d).await?;
        }
        if rx.is_empty() {
            wr.flush().await?;
        }
    }
    wr.flush().await?;
    wr.shutdown().await.ok();
    Ok(())
}

/// Check a request against the export and run it: Ok with a read's data, or the NBD error value.
async fn execute(export: &Export, r: &Request, data: Bytes) -> Result<Option<Bytes>, u32> {
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
        return export.ns.flush().await.map(|_| None).map_err(|e| nbd_errno(&e, false));
    }
    let bs = export.block_size() as u64;
    let (offset, len) = (r.offset, r.length as u64);
    if !offset.is_multiple_of(bs) || !len.is_multiple_of(bs) {
        return Err(errno::EINVAL);
    }
    if offset.checked_add(len).is_none_or(|end| end > export.size()) {
        // A write beyond the end is ENOSPC (§ Error values); anything else there is invalid.
        return Err(if matches!(r.ty, cmd::WRITE | cmd::WRITE_ZEROES) { errno::ENOSPC } else { errno::EINVAL });
    }
    if matches!(r.ty, cmd::READ) && r.length > MAX_REQUEST {
        return Err(errno::EINVAL);
    }
    let (lba, blocks) = (offset / bs, len / bs);
    if blocks == 0 {
        return Ok((r.ty == cmd::READ).then(Bytes::new));
    }
    let ns = &export.ns;
    let res = match r.ty {
        cmd::READ => return ns.read(lba, blocks).await.map(Some).map_err(|e| nbd_errno(&e, false)),
        cmd::WRITE => ns.write(lba, data, fua).await,
        cmd::TRIM => ns.deallocate(lba, blocks).await,
        _ => ns.write_zeroes(lba, blocks).await,
    };
    res.map_err(|e| nbd_errno(&e, true))?;
    if fua && r.ty != cmd::WRITE {
        // Write Zeroes and Dataset Management have no FUA bit: a flush makes them durable before the reply.
        ns.flush().await.map_err(|e| nbd_errno(&e, true))?;
    }
    Ok(None)
}

/// The NBD error value for a failed namespace call, logged (rate-limited) with what it was.
fn nbd_errno(e: &Error, write: bool) -> u32 {
    let code = e.status().map(|s| s.code());
    let v = if code == Some(Status::LBA_OUT_OF_RANGE) || code == Some(Status::CAPACITY_EXCEEDED) {
        if write {
            errno::ENOSPC
        } else {
            errno::EINVAL
        }
    } else if code == Some(Status::INVALID_FIELD) {
        errno::EINVAL
    } else {
        errno::EIO
    };
    log_failure(e, v);
    v
}

fn log_failure(e: &Error, v: u32) {
    use std::sync::atomic::{AtomicU64, Ordering};
    // At most about 10 lines a second (a lost controller fails every request at once), the rest counted.
    static WINDOW: AtomicU64 = AtomicU64::new(0);
    static IN_WINDOW: AtomicU64 = AtomicU64::new(0);
    static DROPPED: AtomicU64 = AtomicU64::new(0);
    let now = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |d| d.as_secs());
    if WINDOW.swap(now, Ordering::Relaxed) != now {
        IN_WINDOW.store(0, Ordering::Relaxed);
        let n = DROPPED.swap(0, Ordering::Relaxed);
        if n > 0 {
            tracing::warn!("{n} more failed requests not logged");
        }
    }
    if IN_WINDOW.fetch_add(1, Ordering::Relaxed) < 10 {
        tracing::warn!("request failed, answered with NBD error {v}: {e}");
    } else {
        DROPPED.fetch_add(1, Ordering::Relaxed);
    }
}
