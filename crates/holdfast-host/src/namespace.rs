//! The async namespace API: read, write (optional FUA), flush, write zeroes, deallocate, compare, compare and
//! write, reservations. Requests larger than the controller's transfer limit (MDTS) are split (but a compare and
//! write); the pieces go out together, spread over the I/O queues (NVM Command Set 1.0 §3.2 and §3.3).

use crate::controller::{finish, Controller, Submitted};
use crate::error::{Error, Result};
use bytes::{Bytes, BytesMut};
use holdfast_proto::identify::{self, IdentifyNamespace, NsDescriptor};
use holdfast_proto::opcode::io as op;
use holdfast_proto::reservation;
use holdfast_proto::sqe::{dsm, rw};
use holdfast_proto::{Status, SubmissionEntry};
use zerocopy::FromBytes;
use zerocopy::IntoBytes;

/// Zeroes for [`Namespace::write_zeroes`] on a controller without Write Zeroes: every such Write's data is a
/// slice of this one buffer (1 MiB, the largest transfer the host sends in one command,
/// [`crate::controller::DEFAULT_MAX_TRANSFER`]), allocated zeroed at the first such call and shared by every call
/// after it, never written. Not a `static` array: that would put 1 MiB of zeroes into every binary's read-only data.
fn zeroes() -> Bytes {
    static ZEROES: std::sync::OnceLock<Bytes> = std::sync::OnceLock::new();
    ZEROES.get_or_init(|| Bytes::from(vec![0u8; crate::controller::DEFAULT_MAX_TRANSFER])).clone()
}

/// Writes of zeroes [`Namespace::write_zeroes`] keeps outstanding at once on a controller without Write Zeroes.
pub const ZERO_WRITES_IN_FLIGHT: usize = 8;

/// The error of a command through a handle of namespace `nsid` (of `subnqn`) once it is marked gone, `why`.
#[cold]
#[inline(never)]
pub(crate) fn gone_error(nsid: u32, subnqn: &str, why: &str) -> Error {
    Error::NamespaceGone(format!(
        "namespace {nsid} of {subnqn} {why}: this handle is not used any more (open the namespace again)"
    ))
}

/// A namespace of a connected controller. Cheap to clone (its Identify data is shared): a clone per task is
/// the way to issue I/O from many tasks.
#[derive(Clone)]
pub struct Namespace {
    ctrl: Controller,
    // Read through methods: every length and range check of this handle is computed from these, as they
    // were when it was opened (a caller changing one would have its commands built for another namespace).
    nsid: u32,
    block_size: u32,
    nblocks: u64,
    id: std::sync::Arc<IdentifyNamespace>,
    descriptors: Vec<NsDescriptor>,
    /// Set once the namespace was found removed or replaced, and the tag its commands carry
    /// ([`Controller::note_namespace_ids`]).
    mark: crate::controller::NsMark,
}

impl Namespace {
    /// Open namespace `nsid`: Identify Namespace and its descriptor list.
    pub async fn open(ctrl: &Controller, nsid: u32) -> Result<Namespace> {
        // A failed controller says why (its admin channel, closed, would only say that it is).
        ctrl.check()?;
        let b = crate::controller::identify_raw(ctrl.admin_queue(), identify::CNS_NAMESPACE, nsid).await?;
        let id = IdentifyNamespace::read_from_bytes(b.get(..4096).unwrap_or_default())
            .map_err(|_| Error::Invalid("short Identify Namespace".into()))?;
        if id.nsze.get() == 0 {
            return Err(Error::Invalid(format!("namespace {nsid} is not active on {}", ctrl.options().subnqn)));
        }
        let block_size =
            id.block_size().ok_or_else(|| Error::Invalid(format!("namespace {nsid} has an unusable LBA format")))?;
        // Over a fabric metadata travels only inside the data, as extended LBAs of block size + MS bytes (there is
        // no metadata pointer; the Linux host's nvme_configure_metadata says as much, and gives such a namespace
        // a capacity of 0 on a transport without metadata support, as TCP is). Every length here counts blocks of
        // the data size alone, so such a namespace is refused rather than read and written with lengths its
        // controller does not expect.
        let ms = id.lbaf.get(id.formatted_lba_index()).map_or(0, |f| f.ms.get());
        if ms != 0 {
            return Err(Error::Invalid(format!(
                "namespace {nsid} is formatted with {ms} bytes of metadata per {block_size}-byte block (LBA format {}): \
                 this host reads and writes namespaces without metadata only",
                id.formatted_lba_index()
            )));
        }
        // A controller that does not give descriptor lists (CNS 03h refused with Invalid Field, as before NVMe
        // 1.3) has the identifiers of its Identify Namespace data (EUI-64, NGUID), as the Linux host takes them;
        // any other failure (another status, the connection, a timeout) fails the open: a namespace taken as one
        // without its identifiers would be found "replaced" at the first reconnect that reads them, or never
        // checked (README, No stale writes, `check_namespace_ids`).
        let descriptors =
            match crate::controller::identify_raw(ctrl.admin_queue(), identify::CNS_NS_DESC_LIST, nsid).await {
                Ok(d) => identify::parse_ns_descriptor_list(&d),
                Err(Error::Nvme { status, .. }) if crate::controller::descriptors_unsupported(status) => {
                    crate::controller::identity_from_namespace(&id)
                }
                Err(e) => return Err(e),
            };
        let mark = ctrl.note_namespace_ids(nsid, &descriptors, block_size);
        Ok(Namespace {
            ctrl: ctrl.clone(),
            nsid,
            block_size,
            nblocks: id.nsze.get(),
            id: std::sync::Arc::new(id),
            descriptors,
            mark,
        })
    }

    /// Namespace ID.
    pub fn nsid(&self) -> u32 {
        self.nsid
    }

    /// Logical block size in bytes (the data size of the formatted LBA format; never 0).
    pub fn block_size(&self) -> u32 {
        self.block_size
    }

    /// Number of logical blocks (Identify Namespace NSZE).
    pub fn nblocks(&self) -> u64 {
        self.nblocks
    }

    /// Identify Namespace data, as read when the namespace was opened.
    pub fn identify(&self) -> &IdentifyNamespace {
        &self.id
    }

    /// Namespace identifiers (EUI-64, NGUID, UUID, CSI), as read when the namespace was opened.
    pub fn descriptors(&self) -> &[NsDescriptor] {
        &self.descriptors
    }

    #[cold]
    #[inline(never)]
    fn no_deallocate(&self) -> Error {
        Error::Unsupported(format!(
            "cannot deallocate on namespace {} of {}: the controller does not support deallocation (Dataset \
             Management, Identify Controller ONCS bit 2, is clear)",
            self.nsid,
            self.ctrl.options().subnqn
        ))
    }

    /// Write protected by the target (Identify Namespace NSATTR bit 0): writes, write zeroes and deallocation
    /// fail with Namespace is Write Protected.
    pub fn write_protected(&self) -> bool {
        self.id.nsattr & identify::NSATTR_WRITE_PROTECTED != 0
    }

    /// Size in bytes (saturating: a foreign target may report a block count no byte count holds).
    pub fn size(&self) -> u64 {
        self.nblocks.saturating_mul(self.block_size as u64)
    }

    /// The controller.
    pub fn controller(&self) -> &Controller {
        &self.ctrl
    }

    /// [`Error::NamespaceGone`] saying why if the namespace was removed from the target or replaced by another under its
    /// NSID, as a Namespace Attribute Changed notice (or opening it again) found.
    /// Inline, its error out of line: every I/O checks it, and with the error's formatting in the callers they
    /// grew past inlining what they call (`max_blocks` went out of line: 18 instructions per I/O more,
    /// bench/icount.sh, host randwrite QD32).
    #[inline]
    fn check_gone(&self) -> Result<()> {
        match self.mark.gone.get() {
            None => Ok(()),
            Some(why) => Err(self.gone_error(why)),
        }
    }

    #[cold]
    #[inline(never)]
    fn gone_error(&self, why: &str) -> Error {
        gone_error(self.nsid, &self.ctrl.options().subnqn, why)
    }

    /// `blocks` blocks at `lba` (at least one) lie within the namespace; else [`Error::Invalid`] naming them.
    pub fn check_range(&self, lba: u64, blocks: u64) -> Result<()> {
        if blocks == 0 {
            return Err(Error::Invalid("zero blocks".into()));
        }
        match lba.checked_add(blocks) {
            Some(end) if end <= self.nblocks => Ok(()),
            _ => Err(Error::Invalid(format!(
                "blocks {lba}..{} are beyond the end of namespace {} ({} blocks)",
                lba.saturating_add(blocks),
                self.nsid,
                self.nblocks
            ))),
        }
    }

    fn max_blocks(&self) -> u64 {
        ((self.ctrl.max_transfer() / self.block_size as usize) as u64).clamp(1, 65536)
    }

    fn rw_sqe(&self, opcode: u8, lba: u64, blocks: u32, flags: u32) -> SubmissionEntry {
        let mut s = SubmissionEntry::new(opcode, 0);
        s.nsid.set(self.nsid);
        rw::set(&mut s, lba, blocks, flags);
        s
    }

    /// Read `blocks` blocks at `lba`, on queue `queue` (None: round robin).
    pub async fn read_on(&self, queue: Option<usize>, lba: u64, blocks: u64) -> Result<Bytes> {
        self.check_gone()?;
        self.check_range(lba, blocks)?;
        let max = self.max_blocks();
        if blocks <= max {
            // One command: no bookkeeping beyond it.
            let sqe = self.rw_sqe(op::READ, lba, blocks as u32, 0);
            let rx = match self.ctrl.io_submit_for(
                queue,
                sqe,
                Bytes::new(),
                (blocks * self.block_size as u64) as usize,
                Some(&self.mark),
            )? {
                Submitted::Queued(rx) => rx,
                Submitted::Full(b) => b.queue().await?,
            };
            return Ok(finish(rx, "Read").await?.data);
        }
        let mut pieces = self.split(queue, op::READ, lba, blocks, 0, &Bytes::new(), "Read").await?;
        if pieces.len() == 1 {
            return Ok(pieces.pop().unwrap_or_else(|| unreachable!()).data);
        }
        let mut out = BytesMut::with_capacity((blocks * self.block_size as u64) as usize);
        for c in pieces {
            out.extend_from_slice(&c.data);
        }
        Ok(out.freeze())
    }

    /// Read `blocks` blocks at `lba`.
    ///
    /// The data comes without a copy: a read that fits in one command is a slice of its queue's receive
    /// buffer (64 KiB or more), which stays allocated while any slice of it is held. Data kept for long (a
    /// cache of blocks) is best copied out of it (`Bytes::copy_from_slice`) or read with
    /// [`Namespace::read_into`], else each block kept may hold a whole receive buffer.
    pub async fn read(&self, lba: u64, blocks: u64) -> Result<Bytes> {
        self.read_on(None, lba, blocks).await
    }

    /// Read into `buf` (a whole number of blocks) from `lba`.
    pub async fn read_into(&self, lba: u64, buf: &mut [u8]) -> Result<()> {
        let blocks = self.whole_blocks("read", buf)?;
        let data = self.read_on(None, lba, blocks).await?;
        if data.len() != buf.len() {
            return Err(Error::Protocol {
                qid: 0,
                what: format!("Read returned {} of {} bytes", data.len(), buf.len()),
            });
        }
        buf.copy_from_slice(&data);
        Ok(())
    }

    /// Write `data` (a whole number of blocks) at `lba`, on queue `queue`; with `fua`, durable on completion.
    pub async fn write_on(&self, queue: Option<usize>, lba: u64, data: Bytes, fua: bool) -> Result<()> {
        let blocks = self.whole_blocks("write", &data)?;
        self.check_gone()?;
        self.check_range(lba, blocks)?;
        let max = self.max_blocks();
        if blocks <= max {
            let sqe = self.rw_sqe(op::WRITE, lba, blocks as u32, if fua { rw::FUA } else { 0 });
            let rx = match self.ctrl.io_submit_for(queue, sqe, data, 0, Some(&self.mark))? {
                Submitted::Queued(rx) => rx,
                Submitted::Full(b) => b.queue().await?,
            };
            finish(rx, "Write").await?;
            return Ok(());
        }
        self.split(queue, op::WRITE, lba, blocks, if fua { rw::FUA } else { 0 }, &data, "Write").await.map(|_| ())
    }

    /// A transfer over MDTS: commands of at most [`Namespace::max_blocks`] blocks issued in order on `queue`,
    /// each with its part of `data` (a write's; empty for a read, which asks for its pieces' length), and
    /// their completions in order once every one has finished; else the first error, also only once every
    /// piece issued has finished (a failed submission's after those issued before it). Returning at the first
    /// error would leave the other pieces running: a write's could then land after a newer write the caller
    /// makes to the same blocks on seeing the error.
    #[allow(clippy::too_many_arguments)]
    async fn split(
        &self,
        queue: Option<usize>,
        opcode: u8,
        lba: u64,
        blocks: u64,
        flags: u32,
        data: &Bytes,
        name: &'static str,
    ) -> Result<Vec<crate::queue::Completion>> {
        let (max, bs) = (self.max_blocks(), self.block_size as u64);
        let mut rxs = Vec::new();
        let mut sent = Ok(());
        let mut at = 0u64;
        while at < blocks {
            let n = (blocks - at).min(max);
            let sqe = self.rw_sqe(opcode, lba + at, n as u32, flags);
            let (out, in_len) = if data.is_empty() {
                (Bytes::new(), (n * bs) as usize)
            } else {
                (data.slice((at * bs) as usize..((at + n) * bs) as usize), 0)
            };
            match self.ctrl.io_send_for(queue, sqe, out, in_len, Some(&self.mark)).await {
                Ok(rx) => rxs.push(rx),
                Err(e) => {
                    sent = Err(e);
                    break;
                }
            }
            at += n;
        }
        let mut out = Ok(Vec::with_capacity(rxs.len()));
        for rx in rxs {
            match (finish(rx, name).await, &mut out) {
                (Ok(c), Ok(v)) => v.push(c),
                (Err(e), Ok(_)) => out = Err(e),
                (_, Err(_)) => {}
            }
        }
        sent?;
        out
    }

    /// Write `data` at `lba`.
    ///
    /// Dropping the future (a `timeout` around it, a `select!` that takes another branch) cancels only what has
    /// not been sent yet: a command already with the target runs to its end there, and may land after a write
    /// the caller then makes to the same blocks on another queue (NVMe orders no two outstanding commands). Let
    /// a write finish, or fail, before writing its blocks again. The library's own limit
    /// ([`crate::ConnectOptions::io_timeout`]) ends the connection instead, and the reconnect waits until the
    /// target has nothing of the old one left to run (README, No stale writes) before anything is issued again.
    pub async fn write(&self, lba: u64, data: Bytes, fua: bool) -> Result<()> {
        self.write_on(None, lba, data, fua).await
    }

    /// Flush: every write completed before it was issued durable, on the target instance that completed it.
    ///
    /// A target that restarted in between (a new instance ID) holds only what it made durable before it went:
    /// a namespace that does not persist (RAM) starts empty, and a Flush then succeeds on the new instance
    /// without covering the writes the old one acknowledged. [`crate::Controller::target_restarts`], read
    /// before the writes and again after the Flush, tells: the same count, and they are durable.
    pub async fn flush(&self) -> Result<()> {
        self.check_gone()?;
        let mut s = SubmissionEntry::new(op::FLUSH, 0);
        s.nsid.set(self.nsid);
        finish(self.ctrl.io_send_for(None, s, Bytes::new(), 0, Some(&self.mark)).await?, "Flush").await.map(|_| ())
    }

    /// The controller supports Write Zeroes (Identify Controller ONCS bit 3), as it says now: read at each call
    /// from the current association, so a reconnect to a target that changed its answer is taken into account.
    /// Without it [`Namespace::write_zeroes`] still zeroes, with Writes.
    pub fn supports_write_zeroes(&self) -> bool {
        self.ctrl.oncs() & identify::ONCS_WRITE_ZEROES != 0
    }

    /// The controller supports deallocation (Identify Controller ONCS bit 2, Dataset Management), as it says now
    /// (read at each call, as [`Namespace::supports_write_zeroes`]). Without it [`Namespace::deallocate`] fails
    /// with [`Error::Unsupported`] and sends nothing.
    pub fn supports_deallocate(&self) -> bool {
        self.ctrl.oncs() & identify::ONCS_DSM != 0
    }

    /// Zero `blocks` blocks at `lba`: afterwards they read as zeroes.
    ///
    /// With Write Zeroes (split at 65536 blocks per command, or the controller's Write Zeroes Size Limit,
    /// [`crate::controller::NvmLimits`]) where the controller supports it
    /// ([`Namespace::supports_write_zeroes`]); else, as the Linux block layer's `blkdev_issue_zeroout` does, with
    /// ordinary Writes of zeroes, in pieces of the controller's transfer limit (MDTS) taken from one buffer of
    /// zeroes shared by every call (1 MiB, never written; no allocation per call or per block), at most
    /// [`ZERO_WRITES_IN_FLIGHT`] at once. So a caller gets the same result from every controller, more slowly
    /// (every zero crosses the network) from one without Write Zeroes. A controller that advertises Write Zeroes
    /// yet refuses it with Invalid Command Opcode (it changed under a replayed command, or a target that
    /// advertises more than it does) gets the rest of the range as Writes too.
    pub async fn write_zeroes(&self, lba: u64, blocks: u64) -> Result<()> {
        self.check_gone()?;
        self.check_range(lba, blocks)?;
        let end = lba + blocks;
        let mut at = lba;
        if self.supports_write_zeroes() {
            // 65536 blocks is the most NLB says; the controller's WZSL may say less (at least one block).
            let per = self
                .ctrl
                .nvm_limits()
                .write_zeroes_bytes
                .map_or(65536, |b| (b / self.block_size as u64).clamp(1, 65536));
            while at < end {
                let n = (end - at).min(per);
                let sqe = self.rw_sqe(op::WRITE_ZEROES, at, n as u32, 0);
                match finish(self.ctrl.io_send_for(None, sqe, Bytes::new(), 0, Some(&self.mark)).await?, "Write Zeroes")
                    .await
                {
                    Ok(_) => at += n,
                    Err(e) if e.status().is_some_and(|s| s.code() == Status::INVALID_OPCODE) => {
                        tracing::debug!(nsid = self.nsid, "Write Zeroes refused ({e}): zeroing with Writes");
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
        }
        if at < end {
            self.zero_with_writes(at, end - at).await?;
        }
        Ok(())
    }

    /// [`Namespace::write_zeroes`] without Write Zeroes: Writes of zeroes from [`zeroes`], each at most MDTS (and
    /// the buffer), at most [`ZERO_WRITES_IN_FLIGHT`] outstanding; on an error, once every piece issued has finished
    /// (as [`Namespace::split`], and for the same reason).
    async fn zero_with_writes(&self, lba: u64, blocks: u64) -> Result<()> {
        let bs = self.block_size as u64;
        // A block larger than the shared buffer (a namespace of blocks over 1 MiB): one block per Write, from one
        // buffer of that block's size for this call.
        let shared = zeroes();
        let (zeroes, per) = if bs as usize <= shared.len() {
            let per = self.max_blocks().min(shared.len() as u64 / bs);
            (shared, per)
        } else {
            (Bytes::from(vec![0u8; bs as usize]), 1)
        };
        let end = lba + blocks;
        let mut at = lba;
        let mut out: Result<()> = Ok(());
        let mut inflight = std::collections::VecDeque::with_capacity(ZERO_WRITES_IN_FLIGHT);
        while at < end && out.is_ok() {
            if inflight.len() == ZERO_WRITES_IN_FLIGHT {
                if let Some(rx) = inflight.pop_front() {
                    out = finish(rx, "Write").await.map(|_| ());
                    continue;
                }
            }
            let n = (end - at).min(per);
            let sqe = self.rw_sqe(op::WRITE, at, n as u32, 0);
            match self.ctrl.io_send_for(None, sqe, zeroes.slice(..(n * bs) as usize), 0, Some(&self.mark)).await {
                Ok(rx) => inflight.push_back(rx),
                Err(e) => out = Err(e),
            }
            at += n;
        }
        for rx in inflight {
            let r = finish(rx, "Write").await;
            if out.is_ok() {
                out = r.map(|_| ());
            }
        }
        out
    }

    /// Deallocate (trim) `blocks` blocks at `lba` with Dataset Management: ranges and commands within the
    /// controller's limits (DMRSL, DMRL, DMSL: [`crate::controller::NvmLimits`]).
    ///
    /// A controller without Dataset Management ([`Namespace::supports_deallocate`]) gets nothing:
    /// [`Error::Unsupported`] at once. There is no stand-in (what deallocated blocks read as is the controller's
    /// to say), and a caller that only hints, as a file system's discard does, can ask first and skip it.
    pub async fn deallocate(&self, lba: u64, blocks: u64) -> Result<()> {
        self.check_gone()?;
        self.check_range(lba, blocks)?;
        if !self.supports_deallocate() {
            return Err(self.no_deallocate());
        }
        // Ranges of at most DMRSL blocks (and DMSL), commands of at most DMRL ranges and DMSL blocks: the
        // controller's limits (Identify CNS 06h), where it sets them; else NLB's u32 and 256 ranges.
        let limits = self.ctrl.nvm_limits();
        let per_cmd = limits.dsm_blocks.unwrap_or(u64::MAX).max(1);
        let per_range = (limits.dsm_range_blocks.unwrap_or(u32::MAX) as u64).min(per_cmd).max(1);
        let max_ranges = limits.dsm_ranges.map_or(dsm::MAX_RANGES, |r| (r as usize).clamp(1, dsm::MAX_RANGES));
        // One command at a time, built as it goes (a controller allowing small ranges would otherwise have the
        // ranges of a whole namespace built up front).
        let (end, mut at) = (lba + blocks, lba);
        while at < end {
            let mut ranges = Vec::new();
            let mut in_cmd = 0u64;
            while at < end && ranges.len() < max_ranges {
                let n = (end - at).min(per_range);
                if in_cmd + n > per_cmd {
                    break;
                }
                ranges.push(dsm::Range { cattr: 0, nlb: n as u32, slba: at });
                (in_cmd, at) = (in_cmd + n, at + n);
            }
            let mut s = SubmissionEntry::new(op::DATASET_MANAGEMENT, 0);
            s.nsid.set(self.nsid);
            s.cdw10.set(ranges.len() as u32 - 1);
            s.cdw11.set(dsm::AD);
            let data: Vec<u8> = ranges.iter().flat_map(|r| r.encode()).collect();
            finish(self.ctrl.io_send_for(None, s, Bytes::from(data), 0, Some(&self.mark)).await?, "Dataset Management")
                .await?;
        }
        Ok(())
    }

    /// Compare (NVM Command Set 1.0 §3.2.1): are the blocks at `lba` `data` (a whole number of blocks)? `Ok(false)`
    /// when the controller answers Compare Failure. One command per [`Controller::max_transfer`] of it (the
    /// blocks are not compared all at one instant: [`Namespace::compare_and_write`] is for that). It only reads,
    /// and is replayed after a lost connection as a read is (README, Ride-through): the answer is for the blocks
    /// as they are when it runs.
    pub async fn compare(&self, lba: u64, data: Bytes) -> Result<bool> {
        let blocks = self.whole_blocks("compare", &data)?;
        self.check_gone()?;
        self.check_range(lba, blocks)?;
        if self.ctrl.identify().oncs.get() & identify::ONCS_COMPARE == 0 {
            return Err(Error::Unsupported(format!(
                "the controller of namespace {} does not support Compare (ONCS bit 0 clear)",
                self.nsid
            )));
        }
        match self.split(None, op::COMPARE, lba, blocks, 0, &data, "Compare").await {
            Ok(_) => Ok(true),
            Err(e) if e.status().is_some_and(|s| s.code() == Status::COMPARE_FAILURE) => Ok(false),
            Err(e) => Err(e),
        }
    }

    /// Compare and Write (NVMe Base 2.0 §3.4.2, a fused operation): if the blocks at `lba` are `expected`, write
    /// `data` (as long: a whole number of blocks) there, nothing else landing in them between the compare and
    /// the write; with `fua` durable on completion. `Ok(true)`: written; `Ok(false)`: the blocks differ (Compare
    /// Failure) and nothing was written. At most the controller's Atomic Compare & Write Unit (ACWU) of blocks,
    /// in one command pair.
    ///
    /// Never replayed after a lost connection (README, Ride-through): had the first try written, the second would find the
    /// new data and answer that the blocks differ. An operation outstanding when the connection drops fails with a
    /// retryable path error; whether it wrote is then for the caller to read.
    pub async fn compare_and_write(&self, lba: u64, expected: Bytes, data: Bytes, fua: bool) -> Result<bool> {
        let blocks = self.whole_blocks("compare and write", &data)?;
        if expected.len() != data.len() {
            return Err(Error::Invalid(format!(
                "compare and write: {} bytes to compare but {} to write",
                expected.len(),
                data.len()
            )));
        }
        self.check_gone()?;
        self.check_range(lba, blocks)?;
        let id = self.ctrl.identify();
        if id.fuses.get() & identify::FUSES_COMPARE_AND_WRITE == 0 {
            return Err(Error::Unsupported(format!(
                "the controller of namespace {} does not support Compare and Write (FUSES bit 0 clear)",
                self.nsid
            )));
        }
        let acwu = id.acwu.get() as u64 + 1;
        if blocks > acwu.min(self.max_blocks()) {
            return Err(Error::Invalid(format!(
                "compare and write of {blocks} blocks: the controller does it atomically for at most {} (ACWU, MDTS)",
                acwu.min(self.max_blocks())
            )));
        }
        let flags = if fua { rw::FUA } else { 0 };
        let mut compare = self.rw_sqe(op::COMPARE, lba, blocks as u32, 0);
        compare.set_fuse(holdfast_proto::sqe::FUSE_FIRST);
        let mut write = self.rw_sqe(op::WRITE, lba, blocks as u32, flags);
        write.set_fuse(holdfast_proto::sqe::FUSE_SECOND);
        let (first, second) = self.ctrl.io_send_fused_for((compare, expected), (write, data), &self.mark).await?;
        // Both answers are waited for, whatever the first says: the Write's is the last word on the blocks.
        let (compared, written) = (finish(first, "Compare").await, finish(second, "Write").await);
        let status_of = |r: &Result<_>| r.as_ref().err().and_then(Error::status).map(Status::code);
        match compared {
            Err(_) if status_of(&compared) == Some(Status::COMPARE_FAILURE) => Ok(false),
            // The Write was refused before it ran (a write-protected namespace, a reservation that lets this
            // host read but not write): the Compare was aborted for it, and the Write's status says why.
            Err(_) if status_of(&compared) == Some(Status::ABORTED_FAILED_FUSED) && written.is_err() => {
                written.map(|_| true)
            }
            Err(e) => Err(e),
            Ok(_) => written.map(|_| true),
        }
    }

    /// The number of blocks in `data`, if it is a whole number of them, at least one; else [`Error::Invalid`]
    /// naming `what` (read, write, compare, ...).
    fn whole_blocks(&self, what: &str, data: &[u8]) -> Result<u64> {
        let bs = self.block_size as usize;
        if data.is_empty() || !data.len().is_multiple_of(bs) {
            return Err(Error::Invalid(format!(
                "{what} of {} bytes is not a whole number of {bs}-byte blocks",
                data.len()
            )));
        }
        Ok((data.len() / bs) as u64)
    }

    /// Reservation Register (NVMe Base 2.0 §8.19): `action` is [`reservation::RREGA_REGISTER`] (register
    /// `new_key`), [`reservation::RREGA_UNREGISTER`] or [`reservation::RREGA_REPLACE`] (with `new_key`);
    /// `current_key` is checked unless `ignore_key` (IEKEY). The registration is this host's (its Host
    /// Identifier) on every controller of the subsystem.
    ///
    /// Register, Acquire and Release are not replayed after a lost connection (their effect is not idempotent: README,
    /// Ride-through): one outstanding then fails with a retryable path error, and [`Namespace::reservation_report`] tells
    /// whether it took effect.
    pub async fn reservation_register(
        &self,
        action: u8,
        current_key: u64,
        new_key: u64,
        ignore_key: bool,
    ) -> Result<()> {
        self.reservation_register_ptpl(action, current_key, new_key, ignore_key, None).await
    }

    /// [`Namespace::reservation_register`] that also changes the namespace's Persist Through Power Loss State
    /// (CPTPL, CDW10 bits 31:30): `Some(true)` on (reservations and registrations outlive a power loss or a
    /// target restart; RESCAP bit 0 says whether the namespace can), `Some(false)` off, `None` unchanged.
    pub async fn reservation_register_ptpl(
        &self,
        action: u8,
        current_key: u64,
        new_key: u64,
        ignore_key: bool,
        ptpl: Option<bool>,
    ) -> Result<()> {
        let cptpl = match ptpl {
            None => 0,
            Some(true) => reservation::CPTPL_SET,
            Some(false) => reservation::CPTPL_CLEAR,
        };
        let cdw10 = (action as u32 & 0x7) | if ignore_key { reservation::IEKEY } else { 0 } | cptpl << 30;
        self.reservation_cmd(
            op::RESERVATION_REGISTER,
            cdw10,
            reservation::ReservationKeys::new(current_key, new_key).as_bytes(),
        )
        .await
    }

    /// Reservation Acquire: `action` [`reservation::RACQA_ACQUIRE`], [`reservation::RACQA_PREEMPT`] or
    /// [`reservation::RACQA_PREEMPT_AND_ABORT`] (the registrants with `preempt_key`, or the holder if it is its
    /// key), for a reservation of type `rtype`, with this host's `current_key`.
    pub async fn reservation_acquire(
        &self,
        action: u8,
        rtype: reservation::ReservationType,
        current_key: u64,
        preempt_key: u64,
    ) -> Result<()> {
        let cdw10 = (action as u32 & 0x7) | (rtype as u32) << 8;
        self.reservation_cmd(
            op::RESERVATION_ACQUIRE,
            cdw10,
            reservation::ReservationKeys::new(current_key, preempt_key).as_bytes(),
        )
        .await
    }

    /// Reservation Release: release the reservation of type `rtype` this host holds, or with `clear` end every
    /// registration and the reservation.
    pub async fn reservation_release(
        &self,
        clear: bool,
        rtype: reservation::ReservationType,
        current_key: u64,
    ) -> Result<()> {
        let action = if clear { reservation::RRELA_CLEAR } else { reservation::RRELA_RELEASE };
        let cdw10 = action as u32 | (rtype as u32) << 8;
        self.reservation_cmd(op::RESERVATION_RELEASE, cdw10, &current_key.to_le_bytes()).await
    }

    /// Reservation Report, in the extended data structure (128-bit Host Identifiers): the generation, the
    /// reservation and every registrant (read again, longer, when they do not fit 4 KiB).
    /// It only reads, and is replayed after a lost connection as a read is (README, Ride-through).
    pub async fn reservation_report(&self) -> Result<reservation::ReservationReport> {
        self.check_gone()?;
        let mut len = 4096usize;
        loop {
            let mut s = SubmissionEntry::new(op::RESERVATION_REPORT, 0);
            s.nsid.set(self.nsid);
            s.cdw10.set((len / 4 - 1) as u32);
            s.cdw11.set(reservation::REPORT_EDS);
            let c = finish(
                self.ctrl.io_send_for(None, s, Bytes::new(), len, Some(&self.mark)).await?,
                "Reservation Report",
            )
            .await?;
            let bad = || Error::Protocol {
                qid: 0,
                what: format!("nsid {}: a Reservation Report shorter than its header", self.nsid),
            };
            let report = reservation::ReservationReport::parse(&c.data).ok_or_else(bad)?;
            let (header, _) = reservation::ReservationStatusExt::read_from_prefix(&c.data).map_err(|_| bad())?;
            let regctl = header.regctl.get() as usize;
            let need = core::mem::size_of::<reservation::ReservationStatusExt>()
                + regctl * core::mem::size_of::<reservation::RegisteredControllerExt>();
            if report.registrants.len() == regctl || need <= len || len >= self.ctrl.max_transfer() {
                return Ok(report);
            }
            len = need.min(self.ctrl.max_transfer());
        }
    }

    async fn reservation_cmd(&self, opcode: u8, cdw10: u32, data: &[u8]) -> Result<()> {
        self.check_gone()?;
        let mut s = SubmissionEntry::new(opcode, 0);
        s.nsid.set(self.nsid);
        s.cdw10.set(cdw10);
        let name = holdfast_proto::opcode::io_name(opcode);
        finish(self.ctrl.io_send_for(None, s, Bytes::copy_from_slice(data), 0, Some(&self.mark)).await?, name)
            .await
            .map(|_| ())
    }
}
