//! [`SendQueue`]: the bytes waiting to go out on one connection, arranged for one vectored write.
//!
//! PDU headers (and digests) are encoded into a small contiguous buffer; PDU data (a read's blocks, a
//! write's payload) is appended by reference as the [`Bytes`] it already is, never copied. A connection
//! hands [`SendQueue::io_slices`] to `writev` and reports what was written with [`SendQueue::advance`], so
//! one system call sends every PDU produced since the last one.

use bytes::{Buf, Bytes, BytesMut};
use std::collections::VecDeque;
use std::io::IoSlice;

/// Data shorter than this is copied next to its header rather than queued as its own slice: an extra
/// iovec costs more than copying a few hundred bytes.
const COPY_BELOW: usize = 512;

/// Outgoing bytes: encoded headers and referenced data, in order.
#[derive(Debug, Default)]
pub struct SendQueue {
    /// Frozen pieces, in order, ahead of `tail`, each with the memory it keeps alive beyond its own bytes (a
    /// slice of a larger buffer: see [`SendQueue::push_data_pdu`]'s `pins`).
    chunks: VecDeque<(Bytes, usize)>,
    /// Sum of the chunks' pins.
    pinned: usize,
    /// Headers encoded since the last data chunk.
    tail: BytesMut,
    len: usize,
}

impl SendQueue {
    /// An empty queue.
    pub fn new() -> SendQueue {
        SendQueue { chunks: VecDeque::new(), pinned: 0, tail: BytesMut::with_capacity(16 * 1024), len: 0 }
    }

    /// Bytes waiting.
    pub fn len(&self) -> usize {
        self.len + self.tail.len()
    }

    /// Memory the waiting data keeps alive: its bytes, and what the buffers it is a slice of hold beyond them
    /// ([`SendQueue::push_data_pdu`]'s `pins`). What a limit on a connection's memory should count.
    pub fn weight(&self) -> usize {
        self.len() + self.pinned
    }

    /// Nothing waiting.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// The buffer PDU headers are encoded into (after everything queued so far).
    pub fn header_buf(&mut self) -> &mut BytesMut {
        &mut self.tail
    }

    /// Append a PDU's data after what is queued, without copying it (short data is copied).
    pub fn push_data(&mut self, data: Bytes) {
        self.push_pinned(data, 0);
    }

    /// [`SendQueue::push_data`], `data` keeping `pins` bytes alive beyond its own until sent, if queued by
    /// reference (copied, it pins nothing).
    fn push_pinned(&mut self, data: Bytes, pins: usize) {
        if data.len() < COPY_BELOW {
            self.tail.extend_from_slice(&data);
            return;
        }
        self.seal();
        self.len += data.len();
        self.pinned += pins;
        self.chunks.push_back((data, pins));
    }

    /// Queue one H2CData or C2HData PDU (Figures 28 and 23): its header, `data` by reference, then the data
    /// digest if `framing` negotiated one. `flags` carries LAST_PDU / SUCCESS. `pins`: if `data` is a slice of
    /// a larger buffer it keeps alive until sent, that buffer's size, counted in [`SendQueue::weight`] until
    /// then (0: nothing beyond the data; data short enough to be copied pins nothing either).
    #[allow(clippy::too_many_arguments)]
    pub fn push_data_pdu(
        &mut self,
        framing: &crate::pdu::Framing,
        ty: crate::pdu::PduType,
        flags: u8,
        cccid: u16,
        ttag: u16,
        datao: u32,
        data: Bytes,
        pins: usize,
    ) {
        crate::pdu::encode_data_header(&mut self.tail, framing, ty, flags, cccid, ttag, datao, data.len() as u32);
        let digest = framing.ddgst.then(|| crate::digest::digest_bytes(&data));
        self.push_pinned(data, pins);
        if let Some(d) = digest {
            self.tail.extend_from_slice(&d);
        }
    }

    fn seal(&mut self) {
        if !self.tail.is_empty() {
            let t = self.tail.split().freeze();
            self.len += t.len();
            self.chunks.push_back((t, 0));
        }
    }

    /// How many slices [`SendQueue::io_slices`] would fill, given room.
    pub fn slice_count(&self) -> usize {
        self.chunks.len() + usize::from(!self.tail.is_empty())
    }

    /// Fill `dst` with the waiting bytes in order; returns how many slices were used.
    pub fn io_slices<'a>(&'a self, dst: &mut [IoSlice<'a>]) -> usize {
        let mut n = 0;
        for c in &self.chunks {
            if n == dst.len() {
                return n;
            }
            dst[n] = IoSlice::new(&c.0);
            n += 1;
        }
        if n < dst.len() && !self.tail.is_empty() {
            dst[n] = IoSlice::new(&self.tail);
            n += 1;
        }
        n
    }

    /// `n` bytes were written: drop them.
    pub fn advance(&mut self, mut n: usize) {
        while n > 0 {
            let Some((front, pins)) = self.chunks.front_mut() else {
                let k = n.min(self.tail.len());
                self.tail.advance(k);
                return;
            };
            let k = n.min(front.len());
            front.advance(k);
            self.len -= k;
            n -= k;
            if front.is_empty() {
                self.pinned -= *pins;
                self.chunks.pop_front();
            }
        }
    }

    /// Everything waiting, as one contiguous buffer (for a last write before closing), leaving it empty.
    pub fn take_all(&mut self) -> BytesMut {
        let mut all = BytesMut::with_capacity(self.len());
        for (c, _) in self.chunks.drain(..) {
            all.extend_from_slice(&c);
        }
        all.extend_from_slice(&self.tail);
        self.tail.clear();
        self.len = 0;
        self.pinned = 0;
        all
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gather(q: &SendQueue) -> Vec<u8> {
        let mut s = [IoSlice::new(&[]); 64];
        let n = q.io_slices(&mut s);
        s[..n].iter().flat_map(|x| x.iter().copied()).collect()
    }

    #[test]
    fn order_is_kept_and_large_data_is_not_copied() {
        let mut q = SendQueue::new();
        q.header_buf().extend_from_slice(b"h1");
        let big = Bytes::from(vec![7u8; 4096]);
        q.push_data(big.clone());
        q.header_buf().extend_from_slice(b"d1");
        q.push_data(Bytes::from_static(b"small"));
        q.header_buf().extend_from_slice(b"h2");
        assert_eq!(q.len(), 2 + 4096 + 2 + 5 + 2);
        let mut want = b"h1".to_vec();
        want.extend_from_slice(&big);
        want.extend_from_slice(b"d1smallh2");
        assert_eq!(gather(&q), want);
        let mut s = [IoSlice::new(&[]); 8];
        assert_eq!(q.io_slices(&mut s), 3);
        assert_eq!(s[1].as_ptr(), big.as_ptr(), "the data is referenced, not copied");
    }

    #[test]
    fn partial_writes_advance_across_chunks() {
        let mut q = SendQueue::new();
        let mut want = Vec::new();
        for i in 0..10u8 {
            q.header_buf().extend_from_slice(&[i; 24]);
            want.extend_from_slice(&[i; 24]);
            let d = Bytes::from(vec![i.wrapping_mul(3); 1000 + i as usize]);
            want.extend_from_slice(&d);
            q.push_data(d);
        }
        q.header_buf().extend_from_slice(b"end");
        want.extend_from_slice(b"end");
        let mut got = Vec::new();
        let mut step = 1;
        while !q.is_empty() {
            let all = gather(&q);
            let n = step.min(all.len());
            got.extend_from_slice(&all[..n]);
            q.advance(n);
            step = step * 3 + 1;
        }
        assert_eq!(got, want);
        assert_eq!(q.len(), 0);
    }

    #[test]
    fn pinned_weight_lasts_until_the_data_is_sent() {
        let f = crate::pdu::Framing::default();
        let mut q = SendQueue::new();
        let data = Bytes::from(vec![5u8; 4096]);
        q.push_data_pdu(&f, crate::pdu::PduType::C2HData, 0, 1, 0, 0, data, 128 << 10);
        // Short data is copied: it pins nothing.
        q.push_data_pdu(&f, crate::pdu::PduType::C2HData, 0, 2, 0, 0, Bytes::from(vec![6u8; 16]), 128 << 10);
        let len = q.len();
        assert_eq!(q.weight(), len + (128 << 10));
        // The header (24 bytes) and half the data sent: still pinned.
        q.advance(24 + 2048);
        assert_eq!(q.weight(), q.len() + (128 << 10));
        // The rest of that data sent: no longer.
        q.advance(2048);
        assert_eq!(q.weight(), q.len());
        q.advance(q.len());
        assert_eq!((q.len(), q.weight()), (0, 0));
    }

    #[test]
    fn take_all_concatenates() {
        let mut q = SendQueue::new();
        q.header_buf().extend_from_slice(b"a");
        q.push_data(Bytes::from(vec![1u8; 600]));
        q.header_buf().extend_from_slice(b"b");
        let all = q.take_all();
        assert_eq!(all.len(), 602);
        assert!(q.is_empty());
    }
}
