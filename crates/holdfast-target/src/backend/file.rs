//! File backend: positional reads and writes on a regular file (or block device). Flush is `fdatasync`;
//! FUA writes are followed by `fdatasync` before they complete. Calls block, so the transport runs them on
//! tokio's blocking pool, never on a network task.

use super::{Backend, MediaGate};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

/// A file-backed namespace.
pub struct FileBackend {
    file: File,
    path: PathBuf,
    size: u64,
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
        Ok(FileBackend { file, path: path.to_owned(), size })
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
