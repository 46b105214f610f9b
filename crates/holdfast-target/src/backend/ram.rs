//! RAM backend: any size, allocated lazily in 128 KiB chunks (a never-written chunk reads as zeroes and costs
//! nothing), each chunk behind its own lock so that queues never contend on one global lock.
//!
//! Chunks are copy-on-write: a read that lies within one chunk returns the chunk's memory itself (a
//! [`Bytes`] that shares it, no copy), and a write to a chunk that such a read still holds copies the chunk
//! first, so the read keeps the data as it was when it ran. The chunk size trades the cost of that copy
//! (rare: only while a response referencing the chunk is being sent) against how many reads fit in one
//! chunk (every aligned transfer up to 128 KiB).

use super::{prefetch_line, Backend, CompareAndWrite, MediaGate};
use bytes::Bytes;
use parking_lot::RwLock;
use std::io;
use std::sync::Arc;

const CHUNK_SHIFT: u32 = 17;
const CHUNK: u64 = 1 << CHUNK_SHIFT;

/// Reads up to this long have the start of their data prefetched with the rest of a batch ([`Backend::prefetch`]
/// stage 2); longer ones are few per batch, and the hardware prefetcher follows the kernel's copy through them.
const DATA_PREFETCH_MAX: usize = 16 * 1024;
/// Of each such read, this many bytes (cache lines from its start) are prefetched. Measured at 4 KiB randread
/// QD32 from a written 1 GiB namespace (`bench/ab.sh`, target side, no polling), the target's CPU per read
/// against none: 256 B x0.939, 512 B x0.944, 1 KiB x0.917, the whole 4 KiB x1.012 (a batch's 64 lines per
/// read queue up behind the core's few outstanding misses, and the prefetching stalls as long as the copy
/// would have). A read's first lines started early are what the kernel's copy waits on; the stream
/// prefetcher brings the rest.
const DATA_PREFETCH_BYTES: usize = 1024;

/// What a never-written chunk reads as.
static ZEROES: [u8; CHUNK as usize] = [0; CHUNK as usize];

/// A RAM namespace backend.
pub struct RamBackend {
    size: u64,
    chunks: Box<[Chunk]>,
}

/// One lazily allocated chunk.
type Chunk = RwLock<Option<Arc<Box<[u8]>>>>;

/// The most MiB of RAM namespaces this machine takes (the configuration refuses more): a backend allocates its
/// table of chunks (16 bytes per 128 KiB) at once, and the tables together may take at most 1/16 of the
/// machine's memory (8 TiB of namespaces on a machine of 16 GiB). The chunks themselves are allocated only
/// when written, so a namespace may be larger than the memory (until it is filled).
pub fn max_total_mib() -> u64 {
    // SAFETY: sysconf has no preconditions and only reads system parameters.
    let (pages, page) = unsafe { (libc::sysconf(libc::_SC_PHYS_PAGES), libc::sysconf(libc::_SC_PAGESIZE)) };
    if pages <= 0 || page <= 0 {
        return u64::MAX;
    }
    let table_bytes = (pages as u64).saturating_mul(page as u64) / 16;
    table_bytes.saturating_mul(CHUNK / std::mem::size_of::<Chunk>() as u64) >> 20
}

/// The part of a chunk's memory that a response holds ([`Bytes::from_owner`]): built for the read's own range,
/// so that the `Bytes` needs no `slice` (a clone and a drop of its count) after it is made.
struct Shared {
    chunk: Arc<Box<[u8]>>,
    at: usize,
    len: usize,
}

impl AsRef<[u8]> for Shared {
    fn as_ref(&self) -> &[u8] {
        &self.chunk[self.at..self.at + self.len]
    }
}

/// The chunk's bytes for writing: in place if nothing else holds it, else a private copy first.
fn writable(slot: &mut Option<Arc<Box<[u8]>>>) -> &mut [u8] {
    let arc = slot.get_or_insert_with(|| Arc::new(vec![0u8; CHUNK as usize].into_boxed_slice()));
    if Arc::get_mut(arc).is_none() {
        *arc = Arc::new(arc.as_ref().clone());
    }
    Arc::get_mut(arc).map(|b| &mut b[..]).unwrap_or_else(|| unreachable!("a fresh Arc is unique"))
}

/// Pieces of a write at least this long are copied with non-temporal stores ([`copy_in`]): one page, the
/// usual block and transfer size. At 32 KiB (before), a 4 KiB random write's copy into a cold chunk was a
/// quarter of the target's CPU, spent waiting for 64 line fills. Streamed, measured with `bench/ab.sh`
/// (1 GiB written namespace, target side, 5-6 alternated pairs): randwrite QD32 IOPS x1.09 and QD128 x1.13
/// with busy polling; target CPU per I/O x0.81-0.94 at QD32 and x0.87 at QD128 without; QD8 unchanged.
/// Shorter pieces (sub-page writes) keep ordinary stores: not measured either way.
#[cfg_attr(not(target_arch = "x86_64"), allow(dead_code))]
const STREAM_MIN: usize = 4 * 1024;

/// Copy a write's data into a chunk. On x86_64 a piece of a page or more goes around the caches
/// (non-temporal stores): its destination is rarely cached (a namespace is much larger than the caches), and
/// ordinary stores may read each destination line in first, only to overwrite all of it, and fill the cache
/// with lines nobody is about to read. (Measured on an AMD EPYC: the copy's share of the target at 128 KiB
/// writes fell from 27 % to 21.5 %, and the kernel's copy into the receive buffer from 23 % to 15 %.)
fn copy_in(dst: &mut [u8], src: &[u8]) {
    #[cfg(target_arch = "x86_64")]
    if dst.len() >= STREAM_MIN {
        stream_copy(dst, src);
        return;
    }
    dst.copy_from_slice(src);
}

/// `dst.copy_from_slice(src)` with SSE2 non-temporal stores for the whole cache lines of `dst` (ordinary
/// stores for the partial lines at either end), then a store fence, so that the data is visible to every
/// core before the chunk's lock is released.
#[cfg(target_arch = "x86_64")]
fn stream_copy(dst: &mut [u8], src: &[u8]) {
    use core::arch::x86_64::{__m128i, _mm_loadu_si128, _mm_sfence, _mm_stream_si128};
    assert_eq!(dst.len(), src.len());
    let head = dst.as_ptr().align_offset(64).min(dst.len());
    let body = (dst.len() - head) & !63;
    dst[..head].copy_from_slice(&src[..head]);
    for i in (head..head + body).step_by(16) {
        // SAFETY: i..i+16 lies within both slices (head + body <= len, equal lengths, asserted above); the
        // load is unaligned-tolerant, and dst + i is 16-byte aligned (dst + head is 64-byte aligned, and
        // i - head is a multiple of 16), as MOVNTDQ requires. SSE2 is part of x86_64.
        unsafe {
            let v = _mm_loadu_si128(src.as_ptr().add(i).cast::<__m128i>());
            _mm_stream_si128(dst.as_mut_ptr().add(i).cast::<__m128i>(), v);
        }
    }
    dst[head + body..].copy_from_slice(&src[head + body..]);
    // SAFETY: SFENCE has no operands and no preconditions.
    unsafe { _mm_sfence() };
}

impl RamBackend {
    /// A zero-filled backend of `size` bytes.
    pub fn new(size: u64) -> Self {
        let n = size.div_ceil(CHUNK) as usize;
        RamBackend { size, chunks: (0..n).map(|_| RwLock::new(None)).collect() }
    }

    fn check_range(&self, offset: u64, len: u64) -> io::Result<()> {
        match offset.checked_add(len) {
            Some(end) if end <= self.size => Ok(()),
            _ => Err(io::Error::new(io::ErrorKind::InvalidInput, "range beyond the end of the namespace")),
        }
    }

    /// Visit the chunk pieces of [offset, offset+len): (chunk index, offset in chunk, piece length, position).
    fn pieces(offset: u64, len: u64) -> impl Iterator<Item = (usize, usize, usize, usize)> {
        let mut pos = 0u64;
        std::iter::from_fn(move || {
            if pos >= len {
                return None;
            }
            let abs = offset + pos;
            let idx = (abs >> CHUNK_SHIFT) as usize;
            let within = (abs & (CHUNK - 1)) as usize;
            let n = ((CHUNK as usize - within) as u64).min(len - pos) as usize;
            let item = (idx, within, n, pos as usize);
            pos += n as u64;
            Some(item)
        })
    }
}

impl Backend for RamBackend {
    fn size(&self) -> u64 {
        self.size
    }
    fn blocking(&self) -> bool {
        false
    }
    fn read_at(&self, offset: u64, buf: &mut [u8], gate: &MediaGate) -> io::Result<()> {
        self.check_range(offset, buf.len() as u64)?;
        gate.check()?;
        for (idx, within, n, pos) in Self::pieces(offset, buf.len() as u64) {
            let dst = &mut buf[pos..pos + n];
            match &*self.chunks[idx].read() {
                Some(c) => dst.copy_from_slice(&c[within..within + n]),
                None => dst.fill(0),
            }
        }
        Ok(())
    }
    fn read_inline(&self, offset: u64, len: usize, gate: &MediaGate) -> Option<io::Result<Bytes>> {
        let within = (offset & (CHUNK - 1)) as usize;
        if len == 0 || within + len > CHUNK as usize {
            return None; // spans chunks: copied by read_append
        }
        if let Err(e) = self.check_range(offset, len as u64).and_then(|_| gate.check()) {
            return Some(Err(e));
        }
        let chunk = self.chunks[(offset >> CHUNK_SHIFT) as usize].read().clone();
        Some(Ok(match chunk {
            Some(chunk) => Bytes::from_owner(Shared { chunk, at: within, len }),
            None => Bytes::from_static(&ZEROES[..len]),
        }))
    }
    fn inline_read_pins(&self, data: &Bytes) -> usize {
        if ZEROES.as_ptr_range().contains(&data.as_ptr()) {
            0
        } else {
            CHUNK as usize
        }
    }
    fn prefetch(&self, offset: u64, len: usize, stage: u8) {
        let Some(chunk) = self.chunks.get((offset >> CHUNK_SHIFT) as usize) else { return };
        if stage == 0 {
            // The entry: its lock word and the pointer to the chunk's shared header.
            prefetch_line(chunk);
            return;
        }
        let within = (offset & (CHUNK - 1)) as usize;
        if stage == 2 && (len > DATA_PREFETCH_MAX || within + len > CHUNK as usize) {
            return;
        }
        let Some(g) = chunk.try_read() else { return };
        let Some(c) = &*g else { return };
        if stage == 2 {
            // The start of the data (the header, brought in at stage 1, holds the pointer to it).
            let data = c.as_ptr().wrapping_add(within);
            for at in (0..len.min(DATA_PREFETCH_BYTES)).step_by(64) {
                prefetch_line(data.wrapping_add(at));
            }
        } else {
            // The header `read_inline` clones: its counts and the pointer to the data. `as_ptr` is the address
            // of that pointer, just after the counts, which may start on the line before.
            let p = Arc::as_ptr(c).cast::<u8>();
            prefetch_line(p);
            prefetch_line(p.wrapping_sub(2 * std::mem::size_of::<usize>()));
        }
    }
    fn read_append(&self, offset: u64, len: usize, out: &mut bytes::BytesMut, gate: &MediaGate) -> io::Result<()> {
        self.check_range(offset, len as u64)?;
        gate.check()?;
        out.reserve(len);
        for (idx, within, n, _) in Self::pieces(offset, len as u64) {
            match &*self.chunks[idx].read() {
                Some(c) => {
                    out.extend_from_slice(&c[within..within + n]);
                }
                None => out.resize(out.len() + n, 0),
            }
        }
        Ok(())
    }
    fn write_at(&self, offset: u64, data: &[u8], _fua: bool, gate: &MediaGate) -> io::Result<()> {
        self.check_range(offset, data.len() as u64)?;
        gate.check()?;
        for (idx, within, n, pos) in Self::pieces(offset, data.len() as u64) {
            let mut g = self.chunks[idx].write();
            copy_in(&mut writable(&mut g)[within..within + n], &data[pos..pos + n]);
        }
        Ok(())
    }
    /// Every chunk of the range is locked for writing, in ascending order, for the compare and the write
    /// together; every other call holds one chunk at a time, so none waits for this one while holding what it
    /// waits for.
    fn compare_and_write(
        &self,
        offset: u64,
        expected: &[u8],
        data: &[u8],
        _fua: bool,
        gate: &MediaGate,
    ) -> CompareAndWrite {
        debug_assert_eq!(expected.len(), data.len());
        let len = data.len() as u64;
        if let Err(e) = self.check_range(offset, len).and_then(|()| gate.check()) {
            return CompareAndWrite::ReadFailed(e);
        }
        if len == 0 {
            return CompareAndWrite::Written;
        }
        let first = (offset >> CHUNK_SHIFT) as usize;
        let last = ((offset + len - 1) >> CHUNK_SHIFT) as usize;
        let mut held: smallvec::SmallVec<[_; 3]> = self.chunks[first..=last].iter().map(|c| c.write()).collect();
        for (idx, within, n, pos) in Self::pieces(offset, len) {
            let want = &expected[pos..pos + n];
            let equal = match &*held[idx - first] {
                Some(c) => &c[within..within + n] == want,
                None => want.iter().all(|&b| b == 0),
            };
            if !equal {
                return CompareAndWrite::Miscompare;
            }
        }
        for (idx, within, n, pos) in Self::pieces(offset, len) {
            copy_in(&mut writable(&mut held[idx - first])[within..within + n], &data[pos..pos + n]);
        }
        CompareAndWrite::Written
    }
    fn flush(&self, gate: &MediaGate) -> io::Result<()> {
        gate.check()
    }
    fn write_zeroes(&self, offset: u64, len: u64, gate: &MediaGate) -> io::Result<()> {
        self.deallocate(offset, len, gate)
    }
    fn deallocate(&self, offset: u64, len: u64, gate: &MediaGate) -> io::Result<()> {
        self.check_range(offset, len)?;
        gate.check()?;
        for (idx, within, n, _) in Self::pieces(offset, len) {
            let mut g = self.chunks[idx].write();
            if within == 0 && n == CHUNK as usize {
                *g = None; // a whole chunk: free it (a response still holding it keeps its copy)
            } else if g.is_some() {
                writable(&mut g)[within..within + n].fill(0);
            }
        }
        Ok(())
    }
    fn describe(&self) -> String {
        format!("ram {} MiB", self.size >> 20)
    }
    fn volatile(&self) -> bool {
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_append_matches_read_at_across_written_and_unwritten_chunks() {
        let b = RamBackend::new(3 * CHUNK);
        let g = MediaGate::open();
        let data: Vec<u8> = (0..4096u32).map(|i| (i % 251) as u8 + 1).collect();
        b.write_at(CHUNK - 2048, &data, false, &g).unwrap();
        let mut want = vec![0u8; 8192];
        b.read_at(CHUNK - 4096, &mut want, &g).unwrap();
        let mut out = bytes::BytesMut::from(&b"prefix"[..]);
        b.read_append(CHUNK - 4096, 8192, &mut out, &g).unwrap();
        assert_eq!(&out[..6], b"prefix");
        assert_eq!(&out[6..], &want[..]);
        assert_eq!(&out[6 + 2048..6 + 6144], &data[..]);
        // Past the end: an error, nothing appended.
        let mut out = bytes::BytesMut::new();
        assert!(b.read_append(3 * CHUNK - 512, 4096, &mut out, &g).is_err());
        assert!(out.is_empty());
    }

    #[test]
    fn shared_reads_are_snapshots_and_writes_copy_on_write() {
        let b = RamBackend::new(4 * CHUNK);
        let g = MediaGate::open();
        let one = vec![1u8; 8192];
        b.write_at(CHUNK + 4096, &one, false, &g).unwrap();
        // Within one chunk: shared, and equal to what read_at gives.
        let r = b.read_inline(CHUNK + 4096, 8192, &g).unwrap().unwrap();
        assert_eq!(&r[..], &one[..]);
        // A write while the read is held does not change the read; a new read sees the write.
        b.write_at(CHUNK + 4096, &[2u8; 4096], false, &g).unwrap();
        b.deallocate(CHUNK + 8192, 4096, &g).unwrap();
        assert_eq!(&r[..], &one[..], "an earlier read is a snapshot");
        let r2 = b.read_inline(CHUNK + 4096, 8192, &g).unwrap().unwrap();
        assert_eq!(&r2[..4096], &[2u8; 4096][..]);
        assert_eq!(&r2[4096..], &[0u8; 4096][..]);
        // Freeing the whole chunk while a read holds it.
        b.deallocate(CHUNK, CHUNK, &g).unwrap();
        assert_eq!(&r2[..4096], &[2u8; 4096][..]);
        assert!(b.read_inline(CHUNK, 4096, &g).unwrap().unwrap().iter().all(|&x| x == 0));
        // Spanning two chunks: not shared (the caller copies); out of range: an error.
        assert!(b.read_inline(CHUNK - 512, 1024, &g).is_none());
        assert!(b.read_inline(4 * CHUNK - 512, 512, &g).unwrap().is_ok());
        assert!(RamBackend::new(CHUNK / 2).read_inline(CHUNK / 2 - 512, 1024, &g).unwrap().is_err());
        // Unwritten: zeroes, which keep no chunk alive; a written chunk's share keeps all of it.
        let z = b.read_inline(3 * CHUNK, 4096, &g).unwrap().unwrap();
        assert!(z.iter().all(|&x| x == 0));
        assert_eq!((b.inline_read_pins(&z), b.inline_read_pins(&r2)), (0, CHUNK as usize), "pins");
        // Prefetch hints, anywhere (written, unwritten, past the end, while a writer holds the chunk), change
        // nothing.
        b.write_at(CHUNK + 4096, &[3u8; 4096], false, &g).unwrap();
        let hint = |b: &RamBackend| {
            for off in [0, CHUNK + 4096, 2 * CHUNK - 512, 3 * CHUNK, 4 * CHUNK, u64::MAX] {
                for len in [0, 512, 4096, DATA_PREFETCH_MAX, DATA_PREFETCH_MAX + 1, usize::MAX] {
                    for stage in 0..3 {
                        b.prefetch(off, len, stage);
                    }
                }
            }
        };
        hint(&b);
        let held = b.chunks[1].write();
        hint(&b);
        drop(held);
        assert_eq!(&b.read_inline(CHUNK + 4096, 4096, &g).unwrap().unwrap()[..], &[3u8; 4096][..]);
    }

    #[test]
    fn large_writes_streamed_past_the_cache_read_back_exactly() {
        // Source and destination misaligned every which way; lengths below a line, around whole lines, past the
        // threshold.
        let src: Vec<u8> = (0..STREAM_MIN as u32 + 100).map(|i| (i * 7 + i / 251) as u8).collect();
        let cases = [(0, 0, STREAM_MIN), (3, 5, STREAM_MIN + 17), (15, 0, STREAM_MIN + 1), (1, 1, 20), (7, 2, 130)];
        for (d_off, s_off, len) in cases {
            let mut dst = vec![0xEEu8; len + 40];
            stream_copy_or_plain(&mut dst[d_off..d_off + len], &src[s_off..s_off + len]);
            assert_eq!(&dst[d_off..d_off + len], &src[s_off..s_off + len], "{d_off} {s_off} {len}");
            assert!(dst[..d_off].iter().chain(&dst[d_off + len..]).all(|&x| x == 0xEE), "wrote outside");
        }
        // Through the backend: a whole chunk and a piece spanning two chunks.
        let b = RamBackend::new(4 * CHUNK);
        let g = MediaGate::open();
        let data: Vec<u8> = (0..(CHUNK + 4096) as u32).map(|i| (i % 253) as u8).collect();
        b.write_at(CHUNK - 4096, &data, false, &g).unwrap();
        let mut out = vec![0u8; data.len()];
        b.read_at(CHUNK - 4096, &mut out, &g).unwrap();
        assert_eq!(out, data);
    }

    fn stream_copy_or_plain(dst: &mut [u8], src: &[u8]) {
        #[cfg(target_arch = "x86_64")]
        stream_copy(dst, src);
        #[cfg(not(target_arch = "x86_64"))]
        copy_in(dst, src);
    }

    /// Compare and Write across two chunks is atomic (both chunks held for the compare and the write).
    #[test]
    fn compare_and_write_across_chunks_loses_no_increment() {
        let b = Arc::new(RamBackend::new(4 * CHUNK));
        crate::backend::checks::compare_and_write_loses_no_increment(b, CHUNK - 8);
    }

    #[test]
    fn sparse_read_write_across_chunks() {
        let b = RamBackend::new(3 * CHUNK + 512);
        let g = MediaGate::open();
        let data: Vec<u8> = (0..8192u32).map(|i| i as u8).collect();
        b.write_at(CHUNK - 4096, &data, false, &g).unwrap();
        let mut out = vec![0xFFu8; 8192];
        b.read_at(CHUNK - 4096, &mut out, &g).unwrap();
        assert_eq!(out, data);
        let mut z = vec![0xFFu8; 512];
        b.read_at(3 * CHUNK, &mut z, &g).unwrap();
        assert!(z.iter().all(|&x| x == 0));
        b.deallocate(CHUNK - 4096, 8192, &g).unwrap();
        b.read_at(CHUNK - 4096, &mut out, &g).unwrap();
        assert!(out.iter().all(|&x| x == 0));
        assert!(b.read_at(3 * CHUNK, &mut vec![0; 1024], &g).is_err());
    }
}
