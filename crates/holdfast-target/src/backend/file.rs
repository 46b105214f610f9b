//! File backend: positional reads and writes on a regular file (or block device). Flush is `fdatasync`;
//! FUA writes are followed by `fdatasync` before they complete. Calls block, so they run on the
//! namespace's I/O threads (`backend::pool`), never on a network task.

use super::{Backend, MediaGate};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};

/// A file-backed namespace.
pub struct FileBackend {
    file: File,
    path: PathBuf,
    size: u64,
    /// preadv2(RWF_NOWAIT) works here (cleared if the kernel or filesystem refuses it).
    nowait: AtomicBool,
}

impl FileBackend {
    /// Open (creating if needed) `path`. With `size` the file is extended to it if shorter; without, the
    /// current length is used.
    pub fn open(path: &Path, size: Option<u64>) -> io::Result<Self> {
        let file = OpenOptions::new().read(true).write(true).create(size.is_some()).truncate(false).open(path)?;
        let meta = file.metadata()?;
        let cur = if meta.file_type().is_block_device() { block_device_size(&file)? } else { meta.len() };
        let size = match size {
            Some(s) if s > cur && !meta.file_type().is_block_device() => {
                file.set_len(s)?;
                s
            }
            Some(s) if s > cur => {
                return Err(io::Error::new(io::ErrorKind::InvalidInput, format!("device is only {cur} bytes")))
            }
            Some(s) => s,
            None => cur,
        };
        Ok(FileBackend { file, path: path.to_owned(), size, nowait: AtomicBool::new(true) })
    }
}

use std::os::unix::fs::FileTypeExt;

fn block_device_size(f: &File) -> io::Result<u64> {
    use std::io::{Seek, SeekFrom};
    let mut f = f.try_clone()?;
    f.seek(SeekFrom::End(0))
}

fn datasync(f: &File) -> io::Result<()> {
    f.sync_data()
}

impl Backend for FileBackend {
    fn size(&self) -> u64 {
        self.size
    }
    fn blocking(&self) -> bool {
        true
    }
    fn read_at(&self, offset: u64, buf: &mut [u8], gate: &MediaGate) -> io::Result<()> {
        gate.check()?;
        let mut done = 0;
        while done < buf.len() {
            match self.file.read_at(&mut buf[done..], offset + done as u64) {
                Ok(0) => {
                    buf[done..].fill(0); // past the end of a sparse/short file
                    break;
                }
                Ok(n) => done += n,
                Err(e) if e.kind() == io::ErrorKind::Interrupted => {}
                Err(e) => return Err(e),
            }
        }
        Ok(())
    }
    fn read_inline(&self, offset: u64, len: usize, gate: &MediaGate) -> Option<io::Result<bytes::Bytes>> {
        if !self.nowait.load(Ordering::Relaxed) || len == 0 || offset.saturating_add(len as u64) > self.size {
            return None;
        }
        if let Err(e) = gate.check() {
            return Some(Err(e));
        }
        let mut buf = bytes::BytesMut::zeroed(len);
        let iov = libc::iovec { iov_base: buf.as_mut_ptr() as *mut libc::c_void, iov_len: len };
        // SAFETY: `iov` describes `buf`, valid and writable for `len` bytes for the whole call; the file
        // descriptor is owned by `self.file` and open.
        let n = unsafe {
            libc::preadv2(std::os::fd::AsRawFd::as_raw_fd(&self.file), &iov, 1, offset as libc::off_t, libc::RWF_NOWAIT)
        };
        if n == len as isize {
            return Some(Ok(buf.freeze()));
        }
        if n < 0 {
            let e = io::Error::last_os_error().raw_os_error();
            if e == Some(libc::EOPNOTSUPP) || e == Some(libc::EINVAL) || e == Some(libc::ENOSYS) {
                self.nowait.store(false, Ordering::Relaxed);
            }
        }
        None // not (all) in the page cache, or a short file: the namespace's I/O threads read it
    }
    fn write_at(&self, offset: u64, data: &[u8], fua: bool, gate: &MediaGate) -> io::Result<()> {
        gate.check()?;
        self.file.write_all_at(data, offset)?;
        if fua {
            datasync(&self.file)?;
        }
        Ok(())
    }
    fn flush(&self, gate: &MediaGate) -> io::Result<()> {
        gate.check()?;
        datasync(&self.file)
    }
    fn write_zeroes(&self, offset: u64, len: u64, gate: &MediaGate) -> io::Result<()> {
        gate.check()?;
        // FALLOC_FL_ZERO_RANGE where the filesystem has it; otherwise write zeroes.
        // SAFETY: fallocate on an owned, open file descriptor with plain integer arguments.
        let r = unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&self.file),
                libc::FALLOC_FL_ZERO_RANGE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r == 0 {
            return Ok(());
        }
        let zeros = vec![0u8; (len.min(1 << 20)) as usize];
        let mut pos = 0;
        while pos < len {
            let n = (len - pos).min(zeros.len() as u64) as usize;
            self.file.write_all_at(&zeros[..n], offset + pos)?;
            pos += n as u64;
        }
        Ok(())
    }
    fn deallocate(&self, offset: u64, len: u64, gate: &MediaGate) -> io::Result<()> {
        gate.check()?;
        // SAFETY: as above; punching a hole keeps the size and makes the range read as zeroes.
        let r = unsafe {
            libc::fallocate(
                std::os::fd::AsRawFd::as_raw_fd(&self.file),
                libc::FALLOC_FL_PUNCH_HOLE | libc::FALLOC_FL_KEEP_SIZE,
                offset as libc::off_t,
                len as libc::off_t,
            )
        };
        if r == 0 {
            Ok(())
        } else {
            self.write_zeroes(offset, len, gate)
        }
    }
    fn describe(&self) -> String {
        format!("file {} ({} MiB)", self.path.display(), self.size >> 20)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn read_inline_answers_from_the_page_cache() {
        let dir = tempfile::tempdir().unwrap();
        let b = FileBackend::open(&dir.path().join("ns.img"), Some(1 << 20)).unwrap();
        let g = MediaGate::open();
        let data: Vec<u8> = (0..8192u32).map(|i| (i % 253) as u8).collect();
        b.write_at(4096, &data, false, &g).unwrap();
        match b.read_inline(4096, 8192, &g) {
            Some(r) => assert_eq!(&r.unwrap()[..], &data[..]),
            // Only acceptable where the kernel or filesystem has no RWF_NOWAIT.
            None => assert!(!b.nowait.load(Ordering::Relaxed), "cached data not read without blocking"),
        }
        assert!(b.read_inline((1 << 20) - 4096, 8192, &g).is_none(), "past the end: the blocking path answers");
    }

    #[test]
    fn persists_across_reopen() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("ns.img");
        let g = MediaGate::open();
        {
            let b = FileBackend::open(&p, Some(1 << 20)).unwrap();
            b.write_at(4096, &[7u8; 4096], true, &g).unwrap();
        }
        let b = FileBackend::open(&p, None).unwrap();
        assert_eq!(b.size(), 1 << 20);
        let mut buf = vec![0u8; 4096];
        b.read_at(4096, &mut buf, &g).unwrap();
        assert!(buf.iter().all(|&x| x == 7));
        b.deallocate(4096, 4096, &g).unwrap();
        b.read_at(4096, &mut buf, &g).unwrap();
        assert!(buf.iter().all(|&x| x == 0));
    }
}
