//! A test-only wrapper that delays every write before it reaches the media, to make the stale-write
//! ("ghost write") window of design §5 wide enough to test. Enabled only by the hidden `--test-delay-writes-ms`
//! flag; never in a normal configuration.

use super::{Backend, MediaGate};
use std::io;
use std::sync::Arc;
use std::time::Duration;

/// Delays writes by a fixed time, then passes them to the inner backend (which checks the gate).
pub struct DelayWrites {
    inner: Arc<dyn Backend>,
    delay: Duration,
}

impl DelayWrites {
    /// Wrap `inner`.
    pub fn new(inner: Arc<dyn Backend>, delay: Duration) -> Self {
        DelayWrites { inner, delay }
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
        std::thread::sleep(self.delay);
        self.inner.write_at(offset, data, fua, gate)
    }
    fn flush(&self, gate: &MediaGate) -> io::Result<()> {
        self.inner.flush(gate)
    }
    fn write_zeroes(&self, offset: u64, len: u64, gate: &MediaGate) -> io::Result<()> {
        std::thread::sleep(self.delay);
        self.inner.write_zeroes(offset, len, gate)
    }
    fn deallocate(&self, offset: u64, len: u64, gate: &MediaGate) -> io::Result<()> {
        std::thread::sleep(self.delay);
        self.inner.deallocate(offset, len, gate)
    }
    fn describe(&self) -> String {
        format!("{} (writes delayed {:?}, test only)", self.inner.describe(), self.delay)
    }
}
