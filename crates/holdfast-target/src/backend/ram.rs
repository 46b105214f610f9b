//! RAM backend: any size, allocated lazily in 1 MiB chunks (a never-written chunk reads as zeroes and costs
//! nothing), each chunk behind its own lock so that queues never contend on one global lock.

use super::{Backend, MediaGate};
use parking_lot::RwLock;
use std::io;

const CHUNK_SHIFT: u32 = 20;
const CHUNK: u64 = 1 << CHUNK_SHIFT;

/// A RAM namespace backend.
pub struct RamBackend {
    size: u64,
    chunks: Box<[Chunk]>,
}

/// One lazily allocated 1 MiB chunk.
type Chunk = RwLock<Option<Box<[u8]>>>;

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
            let c = g.get_or_insert_with(|| vec![0u8; CHUNK as usize].into_boxed_slice());
            c[within..within + n].copy_from_slice(&data[pos..pos + n]);
        }
        Ok(())
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
                *g = None; // a whole chunk: free it
            } else if let Some(c) = g.as_mut() {
                c[within..within + n].fill(0);
            }
        }
        Ok(())
    }
    fn describe(&self) -> String {
        format!("ram {} MiB", self.size >> 20)
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
