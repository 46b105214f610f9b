//! A test-only wrapper that holds some writes back before they reach the media, to make the stale-write
//! ("ghost write") window (README, No stale writes) wide enough to test: every `every`-th write (the first, then every
//! N-th after it) waits `delay`, the others go straight through, so a stuck old write can be overtaken by newer
//! ones. Enabled only by the hidden `--test-delay-writes-ms` / `--test-delay-every` flags. It can also make
//! every flush wait (tests only, [`crate::TargetSettings::test_delay_flushes`]), as a slow disk's `fdatasync`.

use super::{Backend, CompareAndWrite, MediaGate};
use std::io;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

/// Delays writes by a fixed time, then passes them to the inner backend (which checks the gate).
pub struct DelayWrites {
    inner: Arc<dyn Backend>,
    delay: Duration,
    every: u64,
    count: AtomicU64,
    flush_delay: Option<Duration>,
}

impl DelayWrites {
    /// Wrap `inner`: writes number 0, N, 2N, ... wait `delay` (N = `every`, at least 1); every flush waits
    /// `flush_delay`, if given.
    pub fn new(inner: Arc<dyn Backend>, delay: Duration, every: u64, flush_delay: Option<Duration>) -> Self {
        DelayWrites { inner, delay, every: every.max(1), count: AtomicU64::new(0), flush_delay }
    }

    fn maybe_wait(&self) {
        if self.count.fetch_add(1, Ordering::SeqCst).is_multiple_of(self.every) {
            std::thread::sleep(self.delay);
        }
    }
}

impl Backend for DelayWrites {
    fn size(&self) -> u64 {
        self.inner.size()
    }
    fn blocking(&self) -> bool {
        true
    }
    fn read_at(&self, offset: u64, buf: &mut [u8], gate: &MediaGate) -> io::Result<()> {
        self.inner.read_at(offset, buf, gate)
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool, gate: &MediaGate) -> io::Result<()> {
        self.maybe_wait();
        self.inner.write_at(offset, data, fua, gate)
    }
    fn compare_and_write(
        &self,
        offset: u64,
        expected: &[u8],
        data: &[u8],
        fua: bool,
        gate: &MediaGate,
    ) -> CompareAndWrite {
        self.maybe_wait();
        self.inner.compare_and_write(offset, expected, data, fua, gate)
    }
    fn flush(&self, gate: &MediaGate) -> io::Result<()> {
        if let Some(d) = self.flush_delay {
            std::thread::sleep(d);
        }
        self.inner.flush(gate)
    }
    fn write_zeroes(&self, offset: u64, len: u64, gate: &MediaGate) -> io::Result<()> {
        self.maybe_wait();
        self.inner.write_zeroes(offset, len, gate)
    }
    fn deallocate(&self, offset: u64, len: u64, gate: &MediaGate) -> io::Result<()> {
        self.maybe_wait();
        self.inner.deallocate(offset, len, gate)
    }
    fn inline_read_pins(&self, data: &bytes::Bytes) -> usize {
        self.inner.inline_read_pins(data)
    }
    fn volatile(&self) -> bool {
        self.inner.volatile()
    }
    fn path(&self) -> Option<&std::path::Path> {
        self.inner.path()
    }
    fn describe(&self) -> String {
        format!("{} (every {}. write delayed {:?}, test only)", self.inner.describe(), self.every, self.delay)
    }
}
