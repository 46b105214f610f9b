//! A namespace: an NSID, a block size, a backend and its identifiers.

use crate::backend::pool::IoPool;
use crate::backend::Backend;
use crate::config::NsIds;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::Arc;

/// An attached namespace.
pub struct Namespace {
    /// Namespace ID.
    pub nsid: u32,
    /// Logical block size in bytes (512 or 4096).
    pub block_size: u32,
    /// Number of logical blocks.
    pub nblocks: u64,
    /// Where the blocks live.
    pub backend: Arc<dyn Backend>,
    /// UUID, NGUID, EUI-64.
    pub ids: NsIds,
    /// The threads a blocking backend's calls run on (None for a backend that never blocks).
    pub io: Option<IoPool>,
    /// Write protected ([`crate::config::NamespaceConfig::read_only`]): only Read and Flush run.
    pub read_only: bool,
    /// ANA group (ANAGRPID, [`crate::ana`]): a reload may move the namespace to another.
    pub ana_group: AtomicU32,
    /// Its registrants and reservation.
    pub pr: Arc<crate::cmd::reservation::Reservations>,
    /// For a namespace on a file (a medium another namespace may take over), the gate the commands that
    /// change its data pass ([`crate::backend::MediaGate::and_namespace`]): [`Namespace::retire`] closes it.
    /// None for RAM, whose memory no other namespace ever gets.
    pub media: Option<Arc<crate::backend::AssociationGate>>,
}

/// Most threads a blocking namespace's calls run on at once: enough for the queue depth a disk behind a
/// file wants when reads miss the page cache; idle threads end after a minute.
pub const IO_THREADS: usize = 64;

impl Namespace {
    /// A namespace over `backend` (its size rounded down to whole blocks).
    pub fn new(nsid: u32, block_size: u32, backend: Arc<dyn Backend>, ids: NsIds) -> Self {
        let nblocks = backend.size() / block_size as u64;
        let io = backend.blocking().then(|| IoPool::new(&format!("hf-io-ns{nsid}"), IO_THREADS));
        let media = backend.path().map(|_| crate::backend::AssociationGate::new(true));
        Namespace {
            nsid,
            block_size,
            nblocks,
            backend,
            ids,
            io,
            read_only: false,
            ana_group: AtomicU32::new(1),
            pr: Default::default(),
            media,
        }
    }

    /// Close the namespace to commands that change its data and have not reached the media yet (they fail
    /// with a retryable status): a reload that removes or replaces the namespace does this before another
    /// namespace serves its file. It does not wait for those already at the media: the namespaces that take
    /// the file over wait for them before each of their writes ([`crate::backend::AssociationGate::set_after`]),
    /// so that no write accepted here lands after a newer one written there (Linux nvmet waits for a disabled
    /// namespace's requests; waiting in the reload would hold every connection of a one-thread target).
    pub fn retire(&self) {
        if let Some(g) = &self.media {
            g.kill();
        }
    }
    /// Its ANA group.
    pub fn ana_group(&self) -> u32 {
        self.ana_group.load(Ordering::Relaxed)
    }
    /// log2 of the block size.
    pub fn lba_shift(&self) -> u32 {
        self.block_size.trailing_zeros()
    }
    /// Byte range of `nlb` blocks at `slba`, or None if any of it is beyond the namespace.
    pub fn byte_range(&self, slba: u64, nlb: u64) -> Option<(u64, u64)> {
        let end = slba.checked_add(nlb)?;
        (end <= self.nblocks).then(|| (slba << self.lba_shift(), nlb << self.lba_shift()))
    }
}
