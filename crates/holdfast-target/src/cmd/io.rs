//! NVM command set I/O commands (NVM Command Set Specification 1.0 §3): Read, Write (FUA), Compare, the
//! Compare and Write fused operation ([`execute_fused`]), Flush, Write Zeroes (DEAC), Dataset Management
//! (deallocate); the reservation commands are parsed here and run in
//! [`super::reservation`], whose check every command that uses a namespace passes. Blocking backends run on their namespace's I/O threads (a
//! file read the page cache can answer runs inline); the RAM backend runs inline on the queue's task, and its
//! reads are sent from its own memory (`Backend::read_inline`).

use super::reservation;
use crate::backend::{CompareAndWrite, MediaGate};
use crate::controller::Controller;
use crate::namespace::Namespace;
use crate::request::{
    detach_small, DataDir, Deferred, Exec, FusedOutcome, Outcome, ParseResult, QueueCtx, Request, Response,
    MAX_TRANSFER,
};
use bytes::{Bytes, BytesMut};
use holdfast_proto::opcode::io as op;
use holdfast_proto::sqe::{dsm, rw};
use holdfast_proto::{Status, SubmissionEntry};
use std::io;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Broadcast NSID (Flush of every namespace, allowed because VWC bits 2:1 say so).
pub const NSID_ALL: u32 = 0xFFFF_FFFF;

/// Namespace `nsid`, if the command may use it through this controller: it exists, and its ANA group is
/// Optimized or Non-Optimized through the controller's port; otherwise the group's state says why (Asymmetric
/// Access Inaccessible, Persistent Loss or Transition: path errors, without DNR, for a multipath host to take
/// the command to another path; NVMe Base 2.1 §8.1.1.3-8.1.1.6), checked before anything else about the
/// command, as nvmet does.
#[inline]
fn namespace(ctrl: &Controller, nsid: u32) -> Result<Arc<Namespace>, Status> {
    let ns = ctrl.subsys.namespace(nsid).ok_or(Status::INVALID_NAMESPACE.with_dnr())?;
    match ctrl.ana.command_status(ns.ana_group()) {
        None => Ok(ns),
        Some(status) => Err(status),
    }
}

/// `ns`, if a command may change its contents: on a write-protected namespace that is Namespace is Write
/// Protected (generic status 20h; Namespace Write Protection, NVMe Base 2.0, from TP 4005), checked right after
/// the namespace is found, as nvmet does (before the LBA range). With DNR: it stays protected until a reload
/// changes it.
fn writable(ns: Arc<Namespace>) -> Result<Arc<Namespace>, Status> {
    if ns.read_only {
        return Err(Status::NS_WRITE_PROTECTED.with_dnr());
    }
    Ok(ns)
}

/// Hints for a batch of commands received but not yet handled (`sqes`, as the transport peeked them): each
/// Read's namespace may start bringing in what the read will touch ([`crate::backend::Backend::prefetch`],
/// all of the batch at stage 0, then all at 1, then all at 2). Nothing is checked or changed: a command that
/// turns out to be invalid is refused when it is parsed, as always. Writes are not hinted: the start of each
/// write's destination prefetched the same way measured x0.972 target CPU per I/O at randwrite QD32, within
/// the machine's noise (the copy into the chunk is bound by line fills, not by the first miss).
pub fn prefetch<'a>(ctrl: &Controller, sqes: impl Iterator<Item = &'a SubmissionEntry> + Clone) {
    /// Reads hinted per batch at most (the caller looks at no more commands than this).
    const MAX: usize = 32;
    let is_read = |s: &&SubmissionEntry| s.opcode == op::READ;
    // A lone read has nothing to overlap with: it would only take its misses a little earlier. Checked
    // first, so that a batch of one (QD1) costs no lock and no lookup.
    if sqes.clone().filter(is_read).nth(1).is_none() {
        return;
    }
    let namespaces = ctrl.subsys.namespaces.read();
    // The batch's reads, each looked up once: its namespace (the previous read's, usually: a batch tends to
    // be all one namespace), byte offset and length. The first `n` entries are filled (the `Option` is only
    // the unused tail's value).
    let mut reads = [(None::<&Namespace>, 0u64, 0usize); MAX];
    let mut n = 0;
    let mut last: Option<(u32, &Namespace)> = None;
    for sqe in sqes.filter(is_read).take(MAX) {
        let nsid = sqe.nsid();
        let ns = match last {
            Some((id, ns)) if id == nsid => ns,
            _ => match namespaces.get(&nsid) {
                Some(ns) => {
                    last = Some((nsid, ns));
                    ns
                }
                None => continue,
            },
        };
        reads[n] = (Some(ns), rw::slba(sqe) << ns.lba_shift(), (rw::nlb(sqe) as usize) << ns.lba_shift());
        n += 1;
    }
    for stage in 0..3 {
        for &(ns, offset, len) in &reads[..n] {
            if let Some(ns) = ns {
                ns.backend.prefetch(offset, len, stage);
            }
        }
    }
}

/// Parse an I/O command.
pub fn parse(_ctx: &QueueCtx, ctrl: &Controller, sqe: &SubmissionEntry) -> ParseResult {
    let req = |exec, dir, len| Ok(Request { sqe: *sqe, exec, dir, len });
    match sqe.opcode {
        // Compare is in the read command group of reservations (NVMe Base 2.0 Figure 432).
        op::READ | op::WRITE | op::COMPARE => {
            let write = sqe.opcode == op::WRITE;
            let ns = namespace(ctrl, sqe.nsid())?;
            ns.pr.check(&ctrl.hostid, write)?;
            let ns = if write { writable(ns)? } else { ns };
            let (slba, nlb) = (rw::slba(sqe), rw::nlb(sqe) as u64);
            let (offset, len) = ns.byte_range(slba, nlb).ok_or(Status::LBA_OUT_OF_RANGE.with_dnr())?;
            if len as usize > MAX_TRANSFER {
                return Err(Status::INVALID_FIELD.with_dnr());
            }
            match sqe.opcode {
                op::READ => req(Exec::Read { ns, offset }, DataDir::ToHost, len as usize),
                op::COMPARE => req(Exec::Compare { ns, offset }, DataDir::ToController, len as usize),
                _ => {
                    let fua = sqe.cdw12.get() & rw::FUA != 0;
                    req(Exec::Write { ns, offset, fua }, DataDir::ToController, len as usize)
                }
            }
        }
        op::FLUSH => {
            let ns = if sqe.nsid() == NSID_ALL {
                // Every namespace this controller can reach: those of groups not accessible through its port
                // are flushed by a controller that can.
                // Reservations likewise: those another host's reservation keeps this host from writing are
                // skipped.
                let all = ctrl.subsys.namespaces.read();
                all.values()
                    .filter(|n| ctrl.ana.state(n.ana_group()).is_accessible() && n.pr.check(&ctrl.hostid, true).is_ok())
                    .cloned()
                    .collect()
            } else {
                let ns = namespace(ctrl, sqe.nsid())?;
                ns.pr.check(&ctrl.hostid, true)?;
                vec![ns]
            };
            req(Exec::Flush { ns }, DataDir::None, 0)
        }
        op::WRITE_ZEROES => {
            let ns = namespace(ctrl, sqe.nsid())?;
            ns.pr.check(&ctrl.hostid, true)?;
            let ns = writable(ns)?;
            let (offset, len) =
                ns.byte_range(rw::slba(sqe), rw::nlb(sqe) as u64).ok_or(Status::LBA_OUT_OF_RANGE.with_dnr())?;
            let deallocate = sqe.cdw12.get() & rw::DEAC != 0;
            let fua = sqe.cdw12.get() & rw::FUA != 0;
            req(Exec::WriteZeroes { ns, offset, len, deallocate, fua }, DataDir::None, 0)
        }
        op::DATASET_MANAGEMENT => {
            let ns = namespace(ctrl, sqe.nsid())?;
            ns.pr.check(&ctrl.hostid, true)?;
            let ranges = (sqe.cdw10.get() & 0xFF) as usize + 1;
            let deallocate = sqe.cdw11.get() & dsm::AD != 0;
            // Only deallocation changes the namespace; attribute hints alone are taken.
            let ns = if deallocate { writable(ns)? } else { ns };
            // NR+1 ranges are meaningful, but hosts may send a longer buffer: Linux always sends all 256
            // range slots (4096 bytes). Accept any SGL length from NR+1 ranges up to 256 ranges.
            let len = sqe.dptr.len() as usize;
            if len < ranges * dsm::RANGE_SIZE || len > dsm::MAX_RANGES * dsm::RANGE_SIZE {
                return Err(Status::SGL_LENGTH_INVALID.with_dnr());
            }
            req(Exec::DatasetManagement { ns, ranges, deallocate }, DataDir::ToController, len)
        }
        op::RESERVATION_REGISTER => {
            reservation::parse(sqe, namespace(ctrl, sqe.nsid())?, reservation::Command::Register)
        }
        op::RESERVATION_REPORT => reservation::parse(sqe, namespace(ctrl, sqe.nsid())?, reservation::Command::Report),
        op::RESERVATION_ACQUIRE => reservation::parse(sqe, namespace(ctrl, sqe.nsid())?, reservation::Command::Acquire),
        op::RESERVATION_RELEASE => reservation::parse(sqe, namespace(ctrl, sqe.nsid())?, reservation::Command::Release),
        _ => Err(Status::INVALID_OPCODE.with_dnr()),
    }
}

/// The status of a command whose backend call failed with `e`. No room for the data (the file system full, a
/// quota, the file size limit: a sparse file namespace is thinly provisioned) is Capacity Exceeded, as nvmet
/// answers ENOSPC; the Linux host makes it ENOSPC, the NBD bridge too, where a write fault is EIO, a media
/// error, retried by the host and counted in the SMART log.
pub(crate) fn media_status(e: &io::Error, write: bool) -> Status {
    if e.kind() == io::ErrorKind::Interrupted {
        Status::ABORTED_SQ_DELETION
    } else if crate::backend::is_namespace_retired(e) {
        // A reload is replacing the namespace (`Namespace::retire`): Namespace Not Ready, retried after CRDT2
        // (1 s; hosts that enable Advanced Command Retry, the Linux host and ours, wait it; to others the
        // transport sends no CRD, reserved for them), by which time the new namespace serves the NSID. Retried
        // at once, its five retries would be spent in the window.
        Status::NAMESPACE_NOT_READY.with_crd(2)
    } else if matches!(e.raw_os_error(), Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG)) {
        Status::CAPACITY_EXCEEDED.with_dnr()
    } else if write {
        Status::WRITE_FAULT
    } else {
        Status::UNRECOVERED_READ_ERROR
    }
}

/// A deallocation or write of zeroes of more than this many bytes on a backend without I/O threads (RAM) runs
/// off the connection's task ([`Deferred::off_task`]): it visits every 128 KiB chunk of its ranges, and a
/// Dataset Management command of 256 ranges over a 64 GiB namespace (mkfs discards whole devices) took
/// seconds, during which every other connection and keep-alive timer on the thread waited.
const INLINE_DEALLOCATE_MAX: u64 = 64 << 20;

/// The namespace, if `exec` deallocates or zeroes more than [`INLINE_DEALLOCATE_MAX`] bytes (ranges as
/// given; out-of-range ones are refused later, when the command runs).
fn long_deallocation(exec: &Exec, data: &[u8]) -> Option<Arc<Namespace>> {
    let (ns, bytes) = match exec {
        Exec::WriteZeroes { ns, len, .. } => (ns, *len),
        Exec::DatasetManagement { ns, ranges, deallocate: true } => {
            let blocks: u64 = data
                .chunks_exact(dsm::RANGE_SIZE)
                .take(*ranges)
                .map(|c| dsm::Range::decode(c.try_into().unwrap_or(&[0; 16])).nlb as u64)
                .sum();
            (ns, blocks.saturating_mul(ns.block_size as u64))
        }
        _ => return None,
    };
    (bytes > INLINE_DEALLOCATE_MAX).then(|| ns.clone())
}

/// The blocking part of a command: runs inline (RAM) or on the namespace's I/O threads (file).
///
/// `write_through` is the controller's: its volatile write cache disabled (Set Features 06h). It is read as
/// late as each command allows, and a write that began with the cache on is flushed if the cache is off once
/// it is done: Set Features flushes what is in the cache when it turns it off, and a write still on its way
/// to the cache then would otherwise be acknowledged after it without being on the media.
fn run(exec: Exec, len: usize, data: Bytes, gate: MediaGate, write_through: &AtomicBool) -> Response {
    let write_through = || write_through.load(Ordering::Acquire);
    let result = match exec {
        Exec::Read { ns, offset } => {
            let mut buf = BytesMut::with_capacity(len);
            return match ns.backend.read_append(offset, len, &mut buf, &gate) {
                Ok(()) => Response::data(buf.freeze()),
                Err(e) => Response::err(media_status(&e, false)),
            };
        }
        Exec::Compare { ns, offset } => {
            let mut buf = BytesMut::with_capacity(len);
            return match ns.backend.read_append(offset, len, &mut buf, &gate) {
                Ok(()) if buf[..] == data[..] => Response::ok(),
                Ok(()) => Response::err(COMPARE_FAILURE),
                Err(e) => {
                    log_backend_error(&e);
                    Response::err(media_status(&e, false))
                }
            };
        }
        Exec::Write { ns, offset, fua } => {
            let durable = fua || write_through();
            ns.backend
                .write_at(offset, &data, durable, &gate)
                .and_then(|()| flush_if_cache_turned_off(&ns, durable, &gate, write_through))
                .map_err(|e| (e, true))
        }
        // Every namespace is flushed (NSID FFFFFFFFh: all of them) even after one fails, whose error is returned
        // then: a failure that sticks (a file namespace's failed fdatasync) must not leave the others unflushed.
        Exec::Flush { ns } => {
            let mut first = Ok(());
            for n in &ns {
                let r = n.backend.flush(&gate);
                if first.is_ok() {
                    first = r;
                }
            }
            first.map_err(|e| (e, true))
        }
        // Zeroes are data like any write's: durable on completion with FUA, or with the write cache off
        // (NVM Command Set 1.0 §3.2.8; Volatile Write Cache, NVMe Base 2.0 §5.27.1.4).
        Exec::WriteZeroes { ns, offset, len, deallocate, fua } => {
            let r = if deallocate {
                ns.backend.deallocate(offset, len, &gate)
            } else {
                ns.backend.write_zeroes(offset, len, &gate)
            };
            r.and_then(|()| if fua || write_through() { ns.backend.flush(&gate) } else { Ok(()) })
                .map_err(|e| (e, true))
        }
        Exec::DatasetManagement { ns, ranges, deallocate } => {
            if !deallocate {
                return Response::ok(); // only hints: nothing to do
            }
            let mut checked = Vec::with_capacity(ranges);
            for chunk in data.chunks_exact(dsm::RANGE_SIZE).take(ranges) {
                let r = dsm::Range::decode(chunk.try_into().unwrap_or(&[0; 16]));
                match ns.byte_range(r.slba, r.nlb as u64) {
                    Some(br) => checked.push(br),
                    None => return Response::err(Status::LBA_OUT_OF_RANGE.with_dnr()),
                }
            }
            // Deallocated blocks read as zeroes from now on (DLFEAT): with the write cache off that is as
            // durable as a write would be.
            checked
                .iter()
                .try_for_each(|&(o, l)| ns.backend.deallocate(o, l, &gate))
                .and_then(|()| if write_through() { ns.backend.flush(&gate) } else { Ok(()) })
                .map_err(|e| (e, true))
        }
        _ => return Response::err(Status::INTERNAL_ERROR),
    };
    match result {
        Ok(()) => Response::ok(),
        Err((e, w)) => {
            log_backend_error(&e);
            Response::err(media_status(&e, w))
        }
    }
}

/// After a write that began `durable` or not (FUA, or the write cache off when it began): flushed if it was
/// not and the cache is off now (`write_through`), since the flush Set Features ran when it turned the cache
/// off may have come before this write's data reached the cache ([`run`]).
#[inline]
fn flush_if_cache_turned_off(
    ns: &Namespace,
    durable: bool,
    gate: &MediaGate,
    write_through: impl Fn() -> bool,
) -> io::Result<()> {
    if !durable && write_through() {
        ns.backend.flush(gate)
    } else {
        Ok(())
    }
}

/// Backend failures logged, at most this many lines a second: a failing disk fails every command at once.
const BACKEND_LINES_PER_SEC: u64 = 10;
static BACKEND_LINES: holdfast_rt::RateLimit = holdfast_rt::RateLimit::new(BACKEND_LINES_PER_SEC);

/// Log a backend failure, rate-limited. A command of a lost association dropped before it reached the media
/// (README, No stale writes) is no failure of the backend: a target stopped under load, or a host that reconnected, has one
/// for every command in flight.
fn log_backend_error(e: &io::Error) {
    if e.kind() == io::ErrorKind::Interrupted {
        tracing::debug!("command dropped: {e}");
        return;
    }
    match BACKEND_LINES.allow() {
        Some(0) => tracing::warn!("backend error: {e}"),
        Some(n) => {
            tracing::warn!("backend error: {e} ({n} more left out before it, at most {BACKEND_LINES_PER_SEC} a second)")
        }
        None => {}
    }
}

/// Execute an I/O command.
pub fn execute(ctx: &mut QueueCtx, req: Request, data: Bytes) -> Outcome {
    let Some(ctrl) = ctx.ctrl.clone() else { return Response::err(Status::COMMAND_SEQUENCE_ERROR).into() };
    let mut gate = ctx.gate.enter();
    // A command that changes a file namespace's data passes the namespace's gate too: a reload that retires
    // the namespace waits for it or refuses it (`Namespace::retire`).
    if let Exec::Write { ns, .. } | Exec::WriteZeroes { ns, .. } | Exec::DatasetManagement { ns, .. } = &req.exec {
        if let Some(m) = &ns.media {
            gate = gate.and_namespace(m);
        }
    }
    // The reservation again, now that the command counts among its association's commands in flight: a
    // Preempt and Abort that took this host's registration since the command was parsed (a write whose data
    // came by R2T meanwhile) waits for the commands in flight, and one that enters after it is refused here
    // (`reservation::execute`).
    let conflict = match &req.exec {
        Exec::Read { ns, .. } | Exec::Compare { ns, .. } => ns.pr.check(&ctrl.hostid, false),
        Exec::Write { ns, .. } | Exec::WriteZeroes { ns, .. } | Exec::DatasetManagement { ns, .. } => {
            ns.pr.check(&ctrl.hostid, true)
        }
        Exec::Flush { ns } if ns.len() == 1 => ns[0].pr.check(&ctrl.hostid, true),
        _ => Ok(()),
    };
    if let Err(s) = conflict {
        return Response::err(s).into();
    }
    let stats = &ctrl.subsys.stats;
    // The namespace whose I/O threads run the command, if its backend may block.
    let blocking = |ns: &Arc<Namespace>| ns.io.is_some().then(|| ns.clone());
    let offload = match &req.exec {
        // The SMART log's Host Read Commands and Data Units Read count Compares too (NVMe Base 2.0 Figure 207).
        Exec::Read { ns, .. } | Exec::Compare { ns, .. } => {
            stats.read_cmds.fetch_add(1, Ordering::Relaxed);
            stats.bytes_read.fetch_add(req.len as u64, Ordering::Relaxed);
            blocking(ns)
        }
        Exec::Write { ns, .. } => {
            stats.write_cmds.fetch_add(1, Ordering::Relaxed);
            stats.bytes_written.fetch_add(req.len as u64, Ordering::Relaxed);
            blocking(ns)
        }
        Exec::Flush { ns } => ns.iter().find_map(blocking),
        Exec::WriteZeroes { ns, .. } | Exec::DatasetManagement { ns, .. } => blocking(ns),
        _ => None,
    };
    let len = req.len;
    // Media and Data Integrity Errors count in the SMART log (Media and Data Integrity Errors: unrecovered
    // data integrity errors); a command refused for its fields does not. The transport logs every failure in
    // the Error Information log.
    let finish = move |r: Response, ctrl: &Controller| {
        count_media_error(ctrl, r.status);
        r
    };
    // A read the backend can answer at once (shared RAM, a page-cache hit) is answered here.
    if let Exec::Read { ns, offset } = &req.exec {
        if let Some(r) = ns.backend.read_inline(*offset, len, &gate) {
            let r = match r {
                Ok(data) => Response { pins: ns.backend.inline_read_pins(&data), ..Response::data(data) },
                Err(e) => Response::err(media_status(&e, false)),
            };
            return Outcome::Done(finish(r, &ctrl));
        }
    }
    if let Some(ns) = offload {
        let data = detach_small(data);
        Outcome::Later(Deferred::new(ns, move || finish(run(req.exec, len, data, gate, &ctrl.write_through), &ctrl)))
    } else if let Some(ns) = long_deallocation(&req.exec, &data) {
        let data = detach_small(data);
        Outcome::Later(Deferred::off_task(ns, move || {
            finish(run(req.exec, len, data, gate, &ctrl.write_through), &ctrl)
        }))
    } else {
        let r = run(req.exec, len, data, gate, &ctrl.write_through);
        Outcome::Done(finish(r, &ctrl))
    }
}

/// Count a Media and Data Integrity Error in the SMART log (Media and Data Integrity Errors: unrecovered data
/// integrity errors). A Compare Failure has that status type but is the host's answer, not an error of the media.
fn count_media_error(ctrl: &Controller, status: Status) {
    if status.sct() == holdfast_proto::status::sct::MEDIA && status.code() != Status::COMPARE_FAILURE {
        ctrl.subsys.stats.media_errors.fetch_add(1, Ordering::Relaxed);
    }
}

/// A Compare whose data differs from the namespace's. With DNR: the same compare fails again until the data
/// changes (a Linux host would otherwise send it again, up to five times).
const COMPARE_FAILURE: Status = Status::COMPARE_FAILURE.with_dnr();

/// May `first` and `second`, a fused operation's two commands as parsed (a Compare with FUSE_FIRST, then the
/// Write with FUSE_SECOND that came next on its queue: [`super::parse`] lets no other fused command through),
/// run as a Compare and Write (NVMe Base 2.0 §3.4.2)? Both must cover the same blocks of the same namespace,
/// else the Write is refused with Invalid Field (and the Compare aborted as its fused command failed).
pub fn fused_pair(first: &Request, second: &Request) -> Result<(), Status> {
    match (&first.exec, &second.exec) {
        (Exec::Compare { ns: a, offset: x }, Exec::Write { ns: b, offset: y, .. })
            if Arc::ptr_eq(a, b) && x == y && first.len == second.len =>
        {
            Ok(())
        }
        _ => Err(Status::INVALID_FIELD.with_dnr()),
    }
}

/// Run a Compare and Write fused operation (NVMe Base 2.0 §3.4.2; NVM Command Set 1.0 §3.2.1, FUSES bit 0):
/// `first` (the Compare, with its data) and `second` (the Write, with its), paired by [`fused_pair`]. The
/// namespace's blocks are compared with the first's data and, only if they are equal, the second's data is
/// written, nothing else landing in the range between the two ([`crate::backend::Backend::compare_and_write`]).
/// A miscompare fails the Compare with Compare Failure and the Write with Command Aborted due to Failed Fused
/// Command; a failed write fails the Write alone. The reservation is checked again now that both count in
/// flight, as the write group's (a registrant that may write may read).
pub fn execute_fused(
    ctx: &mut QueueCtx,
    first: Request,
    first_data: Bytes,
    second: Request,
    second_data: Bytes,
) -> FusedOutcome {
    let failed = |s: Status| (Response::err(s), Response::err(Status::ABORTED_FAILED_FUSED));
    let Some(ctrl) = ctx.ctrl.clone() else {
        let (a, b) = failed(Status::COMMAND_SEQUENCE_ERROR);
        return FusedOutcome::Done(a, b);
    };
    let (Exec::Compare { ns, offset }, Exec::Write { fua, .. }) = (first.exec, second.exec) else {
        let (a, b) = failed(Status::INTERNAL_ERROR);
        return FusedOutcome::Done(a, b);
    };
    let mut gate = ctx.gate.enter();
    if let Some(m) = &ns.media {
        gate = gate.and_namespace(m);
    }
    if let Err(s) = ns.pr.check(&ctrl.hostid, true) {
        return FusedOutcome::Done(Response::err(s), Response::err(Status::ABORTED_FAILED_FUSED));
    }
    let stats = &ctrl.subsys.stats;
    stats.read_cmds.fetch_add(1, Ordering::Relaxed);
    stats.bytes_read.fetch_add(first.len as u64, Ordering::Relaxed);
    stats.write_cmds.fetch_add(1, Ordering::Relaxed);
    stats.bytes_written.fetch_add(second.len as u64, Ordering::Relaxed);
    // Kept while the pair runs on the I/O threads: detached from the receive buffer.
    let (first_data, second_data) =
        if ns.io.is_some() { (detach_small(first_data), detach_small(second_data)) } else { (first_data, second_data) };
    let run = {
        let (ns, ctrl) = (ns.clone(), ctrl.clone());
        move || {
            let write_through = || ctrl.write_through.load(Ordering::Acquire);
            let durable = fua || write_through();
            let (a, b) = match ns.backend.compare_and_write(offset, &first_data, &second_data, durable, &gate) {
                CompareAndWrite::Written => match flush_if_cache_turned_off(&ns, durable, &gate, write_through) {
                    Ok(()) => (Response::ok(), Response::ok()),
                    Err(e) => (Response::ok(), Response::err(media_status(&e, true))),
                },
                CompareAndWrite::Miscompare => failed(COMPARE_FAILURE),
                CompareAndWrite::ReadFailed(e) if e.kind() == io::ErrorKind::Unsupported => {
                    failed(Status::INVALID_OPCODE.with_dnr())
                }
                CompareAndWrite::ReadFailed(e) => {
                    log_backend_error(&e);
                    failed(media_status(&e, false))
                }
                CompareAndWrite::WriteFailed(e) => {
                    log_backend_error(&e);
                    (Response::ok(), Response::err(media_status(&e, true)))
                }
            };
            count_media_error(&ctrl, a.status);
            count_media_error(&ctrl, b.status);
            (a, b)
        }
    };
    if ns.io.is_some() {
        FusedOutcome::Later(Deferred::new(ns, run))
    } else {
        let (a, b) = run();
        FusedOutcome::Done(a, b)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::backend::Backend;
    use std::sync::atomic::AtomicU32;

    /// A backend whose flush fails (`bad`) or counts; a write sets `during_write` (when given) while it runs.
    struct B {
        bad: bool,
        flushes: AtomicU32,
        during_write: Option<Arc<AtomicBool>>,
    }
    impl Backend for B {
        fn size(&self) -> u64 {
            1 << 20
        }
        fn blocking(&self) -> bool {
            false
        }
        fn read_at(&self, _: u64, _: &mut [u8], _: &MediaGate) -> io::Result<()> {
            Ok(())
        }
        fn write_at(&self, _: u64, _: &[u8], _: bool, _: &MediaGate) -> io::Result<()> {
            if let Some(b) = &self.during_write {
                b.store(true, Ordering::Release);
            }
            Ok(())
        }
        fn flush(&self, _: &MediaGate) -> io::Result<()> {
            self.flushes.fetch_add(1, Ordering::SeqCst);
            if self.bad {
                Err(io::Error::other("fdatasync failed earlier"))
            } else {
                Ok(())
            }
        }
        fn write_zeroes(&self, _: u64, _: u64, _: &MediaGate) -> io::Result<()> {
            Ok(())
        }
        fn deallocate(&self, _: u64, _: u64, _: &MediaGate) -> io::Result<()> {
            Ok(())
        }
        fn describe(&self) -> String {
            "b".into()
        }
    }

    /// A backend out of room (ENOSPC, EDQUOT, EFBIG) fails a write, a write of zeroes or a flush with Capacity
    /// Exceeded, not a media error; any other failure is still a write fault.
    #[test]
    fn no_room_is_capacity_exceeded() {
        for errno in [libc::ENOSPC, libc::EDQUOT, libc::EFBIG] {
            let s = media_status(&io::Error::from_raw_os_error(errno), true);
            assert_eq!(s.code(), Status::CAPACITY_EXCEEDED, "errno {errno}");
            assert!(s.dnr(), "errno {errno}: retrying will not make room");
        }
        assert_eq!(media_status(&io::Error::from_raw_os_error(libc::EIO), true), Status::WRITE_FAULT);
        assert_eq!(media_status(&io::Error::from_raw_os_error(libc::EIO), false), Status::UNRECOVERED_READ_ERROR);
    }

    /// Flush of NSID FFFFFFFFh: a namespace whose flush fails does not keep the others from being flushed.
    #[test]
    fn flush_all_flushes_every_namespace_even_after_one_fails() {
        let bad = Arc::new(B { bad: true, flushes: AtomicU32::new(0), during_write: None });
        let good = Arc::new(B { bad: false, flushes: AtomicU32::new(0), during_write: None });
        let ids = crate::config::NsIds { uuid: [0; 16], nguid: [0; 16], eui64: [0; 8] };
        let ns = vec![
            Arc::new(Namespace::new(1, 512, bad.clone(), ids)),
            Arc::new(Namespace::new(2, 512, good.clone(), ids)),
        ];
        let r = run(Exec::Flush { ns }, 0, Bytes::new(), MediaGate::open(), &AtomicBool::new(false));
        assert!(!r.status.is_success());
        assert_eq!(good.flushes.load(Ordering::SeqCst), 1, "namespace 2 was never flushed");
    }

    /// A write that began with the volatile write cache on and ended after the host turned it off is flushed
    /// before it completes: the flush Set Features ran when it turned the cache off may have come before this
    /// write's data reached the cache. A write that begins and ends with the cache on is not.
    #[test]
    fn a_write_the_cache_was_turned_off_during_is_flushed() {
        let write_through = Arc::new(AtomicBool::new(false));
        let ids = crate::config::NsIds { uuid: [0; 16], nguid: [0; 16], eui64: [0; 8] };
        for turned_off in [false, true] {
            write_through.store(false, Ordering::Release);
            let b = Arc::new(B {
                bad: false,
                flushes: AtomicU32::new(0),
                during_write: turned_off.then(|| write_through.clone()),
            });
            let ns = Arc::new(Namespace::new(1, 512, b.clone(), ids));
            let w = Exec::Write { ns, offset: 0, fua: false };
            let r = run(w, 512, Bytes::from(vec![1; 512]), MediaGate::open(), &write_through);
            assert!(r.status.is_success());
            assert_eq!(b.flushes.load(Ordering::SeqCst), turned_off as u32, "cache turned off during: {turned_off}");
        }
    }
}
