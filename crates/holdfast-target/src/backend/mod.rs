//! Namespace backends: where a namespace's blocks live. One trait, one file per backend.
//!
//! Every backend call that may touch media first passes the [`MediaGate`] it is given: the gate belongs to the
//! controller association the command came from, and refuses once that association is dead, so that a command
//! of a lost connection that has not yet reached the media is dropped instead of landing after newer data
//! (README, No stale writes).

pub mod delay;
pub mod file;
pub mod pool;
pub mod ram;

use std::io;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

/// A namespace's storage.
pub trait Backend: Send + Sync + 'static {
    /// Size in bytes.
    fn size(&self) -> u64;
    /// True if calls may block the calling thread (file I/O): the transport runs them off the reactor.
    fn blocking(&self) -> bool;
    /// Read `buf.len()` bytes at `offset`.
    fn read_at(&self, offset: u64, buf: &mut [u8], gate: &MediaGate) -> io::Result<()>;
    /// Read `len` bytes at `offset` on the network task, if the backend can do it at once, without blocking
    /// and without copying into a buffer of the caller's (RAM: its own memory, shared; file: the page cache,
    /// with RWF_NOWAIT). None: the read takes the usual path ([`Backend::read_append`], on the namespace's
    /// I/O threads for a blocking backend). What is returned never changes afterwards.
    fn read_inline(&self, _offset: u64, _len: usize, _gate: &MediaGate) -> Option<io::Result<bytes::Bytes>> {
        None
    }
    /// Memory `data`, as answered by [`Backend::read_inline`], keeps alive until it is sent, beyond itself
    /// (RAM: the whole chunk it is a slice of; nothing for a never-written chunk's shared zeroes).
    fn inline_read_pins(&self, _data: &bytes::Bytes) -> usize {
        0
    }
    /// Hint: a read of `len` bytes at `offset` is about to run. Called for a batch of reads just received, each
    /// three times: with `stage` 0 for all of them, then with 1, then with 2, so that a backend whose lookup
    /// takes dependent loads (RAM: the chunk's entry, then the chunk's header, then the data it points to) can
    /// start each once the one before is on its way, and the batch's loads overlap instead of each read
    /// stalling on its own. Changes nothing that can be observed.
    /// Called with the subsystem's namespace table read-locked: it must not block, nor take subsystem locks.
    fn prefetch(&self, _offset: u64, _len: usize, _stage: u8) {}
    /// Read `len` bytes at `offset`, appended to `out`. The default reads into zeroed space; backends that
    /// can copy straight from their own memory skip the zeroing.
    fn read_append(&self, offset: u64, len: usize, out: &mut bytes::BytesMut, gate: &MediaGate) -> io::Result<()> {
        let start = out.len();
        out.resize(start + len, 0);
        let r = self.read_at(offset, &mut out[start..], gate);
        if r.is_err() {
            out.truncate(start);
        }
        r
    }
    /// Write `data` at `offset`; with `fua`, durable before returning.
    fn write_at(&self, offset: u64, data: &[u8], fua: bool, gate: &MediaGate) -> io::Result<()>;
    /// Compare `expected` with the `expected.len()` bytes at `offset` and, only if they are equal, write `data`
    /// (as long) there, with `fua` durable before returning: the Compare and Write fused operation (NVMe Base
    /// 2.0 §3.4.2). No other write may land in the range between the compare and the write, nor a read see
    /// part of the write. The default refuses (a backend that cannot hold its range for both).
    fn compare_and_write(
        &self,
        _offset: u64,
        _expected: &[u8],
        _data: &[u8],
        _fua: bool,
        _gate: &MediaGate,
    ) -> CompareAndWrite {
        CompareAndWrite::ReadFailed(io::Error::new(io::ErrorKind::Unsupported, "compare and write not supported"))
    }
    /// Make every completed write durable.
    fn flush(&self, gate: &MediaGate) -> io::Result<()>;
    /// Zero `len` bytes at `offset`.
    fn write_zeroes(&self, offset: u64, len: u64, gate: &MediaGate) -> io::Result<()>;
    /// Deallocate (trim) `len` bytes at `offset`; they read back as zeroes afterwards.
    fn deallocate(&self, offset: u64, len: u64, gate: &MediaGate) -> io::Result<()>;
    /// A short description for logs ("ram 256 MiB", "file /x").
    fn describe(&self) -> String;
    /// True if the contents live only as long as this backend (RAM): a replacement starts empty.
    fn volatile(&self) -> bool {
        false
    }
    /// The file it was opened on, as configured (None: not a file, RAM). A reload keeps a namespace only if
    /// the configuration names the same one.
    fn path(&self) -> Option<&std::path::Path> {
        None
    }
}

/// What [`Backend::compare_and_write`] did.
#[derive(Debug)]
pub enum CompareAndWrite {
    /// The data compared equal and was written.
    Written,
    /// The data differed: nothing was written.
    Miscompare,
    /// Reading the range for the compare failed (or the command's association died first): nothing written.
    ReadFailed(io::Error),
    /// The data compared equal, and writing it failed.
    WriteFailed(io::Error),
}

/// Ask the CPU to bring the cache line at `p` in (a hint: no effect on what any load or store sees).
#[inline(always)]
pub(crate) fn prefetch_line<T>(p: *const T) {
    #[cfg(target_arch = "x86_64")]
    // SAFETY: PREFETCHT0 is a hint: it never faults, whatever the address, and writes nothing.
    unsafe {
        core::arch::x86_64::_mm_prefetch::<{ core::arch::x86_64::_MM_HINT_T0 }>(p.cast())
    };
    #[cfg(not(target_arch = "x86_64"))]
    let _ = p;
}

/// Error returned through `io::Error` when a gate refuses: the command's association died.
pub fn cancelled() -> io::Error {
    io::Error::new(io::ErrorKind::Interrupted, "association lost before the command reached the media")
}

/// The per-association gate commands pass before touching media, and the count of such commands in flight.
///
/// The count is kept in two halves, and a command counts in the half the gate's epoch named when it entered:
/// [`AssociationGate::wait_for_earlier`] moves new commands to the other half and waits for the first to
/// empty, so it waits for the commands that entered before it, however busy the association stays.
#[derive(Debug, Default)]
pub struct AssociationGate {
    dead: AtomicBool,
    inflight: [AtomicU64; 2],
    epoch: std::sync::atomic::AtomicUsize,
    /// Held by a [`AssociationGate::wait_for_earlier`] from its flip until its half is empty.
    flip: parking_lot::Mutex<()>,
    enforce: bool,
    /// A namespace's gate only: the gates of the retired namespaces that had its file
    /// ([`crate::namespace::Namespace::retire`]). A command through this gate waits, before it touches the
    /// media, until none of theirs is left in flight, so that none of theirs lands after it.
    after: std::sync::OnceLock<Vec<Arc<AssociationGate>>>,
}

impl AssociationGate {
    /// A new, live gate. With `enforce` false (a test-only setting) a dead association's commands still land.
    pub fn new(enforce: bool) -> Arc<Self> {
        Arc::new(AssociationGate { enforce, ..Default::default() })
    }
    /// Mark the association dead: commands that have not yet touched media will be dropped.
    pub fn kill(&self) {
        self.dead.store(true, Ordering::SeqCst);
    }
    /// True once killed.
    pub fn is_dead(&self) -> bool {
        self.dead.load(Ordering::SeqCst)
    }
    /// Commands registered and not yet finished.
    pub fn inflight(&self) -> u64 {
        self.inflight[0].load(Ordering::SeqCst) + self.inflight[1].load(Ordering::SeqCst)
    }
    /// Register a command; the returned guard unregisters it when dropped.
    pub fn enter(self: &Arc<Self>) -> MediaGate {
        let half = self.epoch.load(Ordering::SeqCst) & 1;
        self.inflight[half].fetch_add(1, Ordering::SeqCst);
        MediaGate { assoc: Some(self.clone()), half, ns: None }
    }
    /// Block (a blocking thread's wait) until every command that entered before this call has finished;
    /// commands entering meanwhile are not waited for.
    pub fn wait_for_earlier(&self) {
        self.wait_for_earlier_until(None);
    }
    /// Commands through this gate wait for those of `predecessors` ([`AssociationGate::after`]); set once, before
    /// the gate's namespace is served. False if already set.
    pub fn set_after(&self, predecessors: Vec<Arc<AssociationGate>>) -> bool {
        self.after.set(predecessors).is_ok()
    }
    /// [`AssociationGate::wait_for_earlier`], giving up at `deadline` (None: never): true if they all finished.
    pub fn wait_for_earlier_until(&self, deadline: Option<std::time::Instant>) -> bool {
        let _one_at_a_time = self.flip.lock();
        let old = self.epoch.fetch_add(1, Ordering::SeqCst) & 1;
        while self.inflight[old].load(Ordering::SeqCst) != 0 {
            if deadline.is_some_and(|d| std::time::Instant::now() >= d) {
                return false;
            }
            std::thread::sleep(std::time::Duration::from_millis(1));
        }
        true
    }
}

/// One command's pass through its association's gate (and, for a command that changes a file namespace's
/// data, through that namespace's: [`MediaGate::and_namespace`]).
#[derive(Debug, Default)]
pub struct MediaGate {
    assoc: Option<Arc<AssociationGate>>,
    /// The half of the count it is in.
    half: usize,
    /// The namespace's gate, and the half of its count.
    ns: Option<(Arc<AssociationGate>, usize)>,
}

/// Why a namespace's gate refused a command: a reload removed or replaced the namespace
/// ([`crate::namespace::Namespace::retire`]). Carried inside an `io::Error` ([`namespace_retired`]).
#[derive(Debug)]
pub struct NamespaceRetired;

impl std::fmt::Display for NamespaceRetired {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("namespace removed or replaced before the command reached the media")
    }
}

impl std::error::Error for NamespaceRetired {}

/// Error returned through `io::Error` when a namespace's gate refuses: a reload removed or replaced it.
pub fn namespace_retired() -> io::Error {
    io::Error::other(NamespaceRetired)
}

/// Is `e` a namespace's gate refusing ([`namespace_retired`])?
pub fn is_namespace_retired(e: &io::Error) -> bool {
    e.get_ref().is_some_and(|x| x.is::<NamespaceRetired>())
}

impl MediaGate {
    /// A gate that never refuses (internal use: shutdown flushes, tests).
    pub fn open() -> Self {
        MediaGate { assoc: None, half: 0, ns: None }
    }
    /// Register the command with its namespace's gate too ([`crate::namespace::Namespace::media`]): a
    /// reload that retires the namespace waits for it, or it is refused before it touches the media.
    pub fn and_namespace(mut self, gate: &Arc<AssociationGate>) -> Self {
        let half = gate.epoch.load(Ordering::SeqCst) & 1;
        gate.inflight[half].fetch_add(1, Ordering::SeqCst);
        self.ns = Some((gate.clone(), half));
        self
    }
    /// Call immediately before touching media. Errors if the association died (and drain is enforced), or
    /// the namespace was retired.
    pub fn check(&self) -> io::Result<()> {
        match &self.assoc {
            Some(a) if a.enforce && a.is_dead() => return Err(cancelled()),
            _ => {}
        }
        let Some((n, _)) = &self.ns else { return Ok(()) };
        if n.is_dead() {
            return Err(namespace_retired());
        }
        // Writes of the namespaces that had this file before a reload, still on their way: this one waits
        // (a blocking thread: a file namespace's commands run on its I/O threads), up to RETIRE_WAIT, then is
        // refused as the retired namespaces' are (retried later) rather than landing before them.
        if let Some(before) = n.after.get() {
            let deadline = std::time::Instant::now() + crate::subsystem::RETIRE_WAIT;
            while before.iter().any(|p| p.inflight() > 0) {
                if std::time::Instant::now() >= deadline {
                    return Err(namespace_retired());
                }
                std::thread::sleep(std::time::Duration::from_millis(1));
            }
        }
        Ok(())
    }
}

impl MediaGate {
    /// [`MediaGate::check`]'s refusals alone, without its wait for retired namespaces' writes: called again once
    /// the command holds its blocks' range lock, right before the media changes. A command that passed `check`
    /// and then waited for the lock (behind another write to the same blocks) while its association was lost or
    /// its namespace retired must not land after the writes made since through a live association.
    pub fn recheck(&self) -> io::Result<()> {
        match &self.assoc {
            Some(a) if a.enforce && a.is_dead() => return Err(cancelled()),
            _ => {}
        }
        match &self.ns {
            Some((n, _)) if n.is_dead() => Err(namespace_retired()),
            _ => Ok(()),
        }
    }
}

impl Drop for MediaGate {
    fn drop(&mut self) {
        if let Some(a) = &self.assoc {
            a.inflight[self.half].fetch_sub(1, Ordering::SeqCst);
        }
        if let Some((n, half)) = &self.ns {
            n.inflight[*half].fetch_sub(1, Ordering::SeqCst);
        }
    }
}

/// Checks every backend's [`Backend::compare_and_write`] must pass.
#[cfg(test)]
pub(crate) mod checks {
    use super::*;

    /// Compare and Write is atomic: four threads each add one 1500 times to a counter of 16 bytes at `offset`
    /// (a backend's test puts it across its locking boundary: two chunks, two stripes), each increment a read,
    /// then a compare and write of the value read plus one (again on a miscompare). A compare and a write that
    /// another write can come between lose increments. The counter is kept twice, at both ends, so that a
    /// write landed in part is never taken for a whole one.
    pub(crate) fn compare_and_write_loses_no_increment(b: Arc<dyn Backend>, offset: u64) {
        const THREADS: u64 = 4;
        const EACH: u64 = 1500;
        let encode = |v: u64| {
            let mut x = [0u8; 16];
            x[..8].copy_from_slice(&v.to_le_bytes());
            x[8..].copy_from_slice(&v.to_le_bytes());
            x
        };
        let workers: Vec<_> = (0..THREADS)
            .map(|_| {
                let b = b.clone();
                std::thread::spawn(move || {
                    let (mut done, mut misses) = (0, 0u64);
                    while done < EACH {
                        let mut cur = [0u8; 16];
                        b.read_at(offset, &mut cur, &MediaGate::open()).unwrap();
                        // A read across two blocks may see a write to both half done (AWUN 0): its compare
                        // then fails, as with any value no longer there.
                        let v = u64::from_le_bytes(cur[..8].try_into().unwrap());
                        match b.compare_and_write(offset, &cur, &encode(v + 1), false, &MediaGate::open()) {
                            CompareAndWrite::Written => done += 1,
                            CompareAndWrite::Miscompare => misses += 1,
                            other => panic!("compare and write: {other:?}"),
                        }
                    }
                    misses
                })
            })
            .collect();
        let misses: u64 = workers.into_iter().map(|w| w.join().unwrap()).sum();
        let mut end = [0u8; 16];
        b.read_at(offset, &mut end, &MediaGate::open()).unwrap();
        assert_eq!(end, encode(THREADS * EACH), "increments lost ({misses} miscompares retried)");
        // And a miscompare writes nothing.
        let r = b.compare_and_write(offset, &encode(0), &encode(7), false, &MediaGate::open());
        assert!(matches!(r, CompareAndWrite::Miscompare), "{r:?}");
        b.read_at(offset, &mut end, &MediaGate::open()).unwrap();
        assert_eq!(end, encode(THREADS * EACH));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn gate_counts_and_refuses_after_kill() {
        let a = AssociationGate::new(true);
        let g = a.enter();
        assert_eq!(a.inflight(), 1);
        assert!(g.check().is_ok());
        a.kill();
        assert!(g.check().is_err());
        drop(g);
        assert_eq!(a.inflight(), 0);
        // Waiting for earlier commands does not wait for later ones.
        let early = a.enter();
        let waiter = {
            let a = a.clone();
            std::thread::spawn(move || a.wait_for_earlier())
        };
        while a.epoch.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        let late = a.enter();
        assert!(!waiter.is_finished());
        drop(early);
        waiter.join().unwrap();
        assert_eq!(a.inflight(), 1, "the later command still counts");
        drop(late);
        let lax = AssociationGate::new(false);
        lax.kill();
        assert!(lax.enter().check().is_ok(), "drain disabled: dead commands still land");
    }
}
