//! `holdfast read` and `holdfast write`: move bytes between a namespace and a file or stdin/stdout; `flush`,
//! `write-zeroes` and `trim`: the namespace commands that move none.

use super::common::{runtime, NamespaceArgs};
use anyhow::Context;
use bytes::Bytes;
use clap::Args as ClapArgs;
use holdfast_host::Namespace;
use std::io::{Read, Write};
use std::path::PathBuf;
use std::process::ExitCode;

/// Options of `holdfast read`.
#[derive(ClapArgs, Debug)]
pub struct ReadArgs {
    #[command(flatten)]
    ns: NamespaceArgs,
    /// Byte offset (a multiple of the block size).
    #[arg(long, default_value_t = 0)]
    offset: u64,
    /// Bytes to read (a multiple of the block size).
    #[arg(long)]
    length: u64,
    /// Output file ("-" or absent: stdout).
    #[arg(long)]
    output: Option<PathBuf>,
}

/// Options of `holdfast write`.
#[derive(ClapArgs, Debug)]
pub struct WriteArgs {
    #[command(flatten)]
    ns: NamespaceArgs,
    /// Byte offset (a multiple of the block size).
    #[arg(long, default_value_t = 0)]
    offset: u64,
    /// Input file ("-" or absent: stdin); its length must be a multiple of the block size.
    #[arg(long)]
    input: Option<PathBuf>,
    /// Force Unit Access: durable before the write completes.
    #[arg(long)]
    fua: bool,
}

/// Options of `holdfast write-zeroes` and `holdfast trim`.
#[derive(ClapArgs, Debug)]
pub struct RangeArgs {
    #[command(flatten)]
    ns: NamespaceArgs,
    /// Byte offset (a multiple of the block size).
    #[arg(long, default_value_t = 0)]
    offset: u64,
    /// Bytes (a multiple of the block size); `--length all` to the end of the namespace (never by default: a
    /// forgotten length would zero or trim the whole namespace).
    #[arg(long, value_parser = parse_length)]
    length: Length,
}

/// `--length` of `write-zeroes` and `trim`: bytes, or the rest of the namespace.
#[derive(Clone, Copy, Debug)]
pub enum Length {
    /// This many bytes.
    Bytes(u64),
    /// From the offset to the end of the namespace.
    All,
}

fn parse_length(s: &str) -> Result<Length, String> {
    match s {
        "all" => Ok(Length::All),
        _ => s.parse().map(Length::Bytes).map_err(|_| format!("\"{s}\" is neither a number of bytes nor all")),
    }
}

/// Options of `holdfast flush`.
#[derive(ClapArgs, Debug)]
pub struct FlushArgs {
    #[command(flatten)]
    ns: NamespaceArgs,
}

/// 1 MiB transfers kept in flight at once by `read` and `write`.
const WINDOW: usize = 8;
/// I/O queues `read` and `write` use.
const QUEUES: u16 = 2;

fn blocks(ns: &Namespace, what: &str, v: u64) -> anyhow::Result<u64> {
    let bs = ns.block_size() as u64;
    anyhow::ensure!(v.is_multiple_of(bs), "{what} {v} is not a multiple of the {bs}-byte block size");
    Ok(v / bs)
}

/// The blocks (first, count) of `len` bytes at byte `offset`, refused in the bytes the command line gave (the
/// namespace's own check speaks of blocks): nothing to do, not whole blocks, or beyond the end.
fn byte_range(ns: &Namespace, offset: u64, len: u64, what: &str) -> anyhow::Result<(u64, u64)> {
    anyhow::ensure!(len > 0, "{what} is 0 bytes: nothing to do");
    let (lba, n) = (blocks(ns, "offset", offset)?, blocks(ns, what, len)?);
    anyhow::ensure!(
        offset.checked_add(len).is_some_and(|end| end <= ns.size()),
        "bytes {offset}..{} are beyond the end of namespace {} ({} bytes)",
        offset.saturating_add(len),
        ns.nsid(),
        ns.size()
    );
    Ok((lba, n))
}

/// Run `read`.
pub fn run_read(a: ReadArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async move {
        let (c, ns) = a.ns.open(a.ns.options(QUEUES)).await?;
        let restarts = c.target_restarts();
        // The whole range first: the output file is not created (emptied) for a read that cannot be done.
        let (lba, n) = byte_range(&ns, a.offset, a.length, "length")?;
        let mut out: Box<dyn Write> = match &a.output {
            Some(p) if p.as_os_str() != "-" => {
                Box::new(std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?)
            }
            _ => Box::new(std::io::stdout().lock()),
        };
        // 1 MiB pieces, up to WINDOW in flight over the queues, written out in order.
        let chunk = (1024 * 1024 / ns.block_size() as u64).max(1);
        let mut inflight = std::collections::VecDeque::new();
        let mut at = 0;
        while at < n || !inflight.is_empty() {
            while at < n && inflight.len() < WINDOW {
                let k = (n - at).min(chunk);
                let ns = ns.clone();
                inflight.push_back(tokio::spawn(async move { ns.read(lba + at, k).await }));
                at += k;
            }
            if let Some(t) = inflight.pop_front() {
                out.write_all(&t.await??)?;
            }
        }
        out.flush()?;
        // What was read before a restart and what after may come from different contents (a namespace that does
        // not persist starts empty): said, not an error (one that persists reads the same).
        if c.target_restarts() != restarts {
            tracing::warn!(
                "the target restarted (new instance ID) during the read: a namespace that does not persist started \
                 empty part-way"
            );
        }
        c.shutdown().await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Run `write`.
///
/// The input is streamed, 1 MiB at a time with [`WINDOW`] pieces in flight: a file's length is known first, so
/// that its whole range is checked before anything is sent; a pipe's only at its end, and one longer than the
/// namespace (or not whole blocks) fails once what fitted is written, saying how much (as dd). The write ends
/// with a Flush (unless `--fua` made each piece durable already), and fails if the target restarted meanwhile:
/// what it had acknowledged before may be gone.
pub fn run_write(a: WriteArgs) -> anyhow::Result<ExitCode> {
    let (input, name): (Box<dyn Read + Send>, String) = match &a.input {
        Some(p) if p.as_os_str() != "-" => (
            Box::new(std::fs::File::open(p).with_context(|| format!("cannot read {}", p.display()))?),
            p.display().to_string(),
        ),
        _ => (Box::new(std::io::stdin()), "stdin".into()),
    };
    // A regular file's length (stdin redirected from one included); none for a pipe or a device.
    let known_len = match &a.input {
        Some(p) if p.as_os_str() != "-" => std::fs::metadata(p).ok(),
        _ => std::fs::metadata("/dev/stdin").ok(),
    }
    .filter(|m| m.is_file())
    .map(|m| m.len());
    runtime()?.block_on(async move {
        let (c, ns) = a.ns.open(a.ns.options(QUEUES)).await?;
        let restarts = c.target_restarts();
        let bs = ns.block_size() as u64;
        let lba = blocks(&ns, "offset", a.offset)?;
        if let Some(len) = known_len {
            // The whole range before anything is sent: a write refused halfway would have changed the first part.
            byte_range(&ns, a.offset, len, "input")?;
        }
        // 1 MiB pieces (whole blocks), read by a thread of their own (reads of a file or a pipe block), at most
        // two waiting: the memory held is that and the pieces in flight, whatever the input's size.
        let chunk = ((1 << 20) / bs * bs).max(bs) as usize;
        let (tx, mut rx) = tokio::sync::mpsc::channel::<std::io::Result<Bytes>>(2);
        std::thread::spawn(move || read_pieces(input, chunk, tx));
        let mut inflight = std::collections::VecDeque::new();
        let (mut sent, mut written, mut eof) = (0u64, 0u64, false);
        let mut refused = None;
        while (!eof && refused.is_none()) || !inflight.is_empty() {
            while !eof && refused.is_none() && inflight.len() < WINDOW {
                let Some(piece) = rx.recv().await else {
                    eof = true;
                    break;
                };
                let mut piece = piece.with_context(|| format!("cannot read {name}"))?;
                let len = piece.len() as u64;
                let end = a.offset.saturating_add(sent + len);
                if !len.is_multiple_of(bs) {
                    refused =
                        Some(format!("{name} is {} bytes, not a multiple of the {bs}-byte block size", sent + len));
                } else if end > ns.size() {
                    refused = Some(format!(
                        "{name} reaches byte {end}, beyond the end of namespace {} ({} bytes)",
                        ns.nsid(),
                        ns.size()
                    ));
                }
                if refused.is_some() {
                    // What fits of this last piece is written too (whole blocks, up to the namespace's end), as
                    // dd does, so that the error's count is all the input that could be.
                    let room = ns.size().saturating_sub(a.offset.saturating_add(sent));
                    piece.truncate((len.min(room) / bs * bs) as usize);
                }
                if !piece.is_empty() {
                    let len = piece.len() as u64;
                    let (ns, at) = (ns.clone(), lba + sent / bs);
                    let fua = a.fua;
                    inflight.push_back((len, tokio::spawn(async move { ns.write(at, piece, fua).await })));
                    sent += len;
                }
            }
            if let Some((len, t)) = inflight.pop_front() {
                t.await??;
                written += len;
            }
        }
        if let Some(why) = refused {
            // What was written is made durable all the same, as a whole write's would be, and the error says
            // whether it is there.
            let flushed = if written > 0 && !a.fua { ns.flush().await.err() } else { None };
            let mut said =
                format!("{why}: its first {written} bytes were written at offset {}, the rest not", a.offset);
            if let Some(e) = flushed {
                said += &format!("; the Flush after them failed ({e}): they may not be durable");
            }
            if c.target_restarts() != restarts {
                said +=
                    "; the target restarted (new instance ID) meanwhile: what it had acknowledged before may be gone";
            }
            anyhow::bail!("{said}");
        }
        anyhow::ensure!(sent > 0, "{name} is 0 bytes: nothing to do");
        if !a.fua {
            ns.flush().await.context("Flush after the write")?;
        }
        // Counted before anything completes on a new association: the same count after the Flush means it
        // covered every piece on the instance that acknowledged it.
        if c.target_restarts() != restarts {
            anyhow::bail!(
                "the target restarted (new instance ID) while {sent} bytes were written: what it had acknowledged \
                 before may be gone (a namespace that does not persist starts empty): write them again"
            );
        }
        c.shutdown().await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Run `flush`: what the namespace acknowledged is made durable (NVM Command Set 1.0 §3.2.2), and the flush
/// fails if the target restarted while it was outstanding (what it covered may be gone).
pub fn run_flush(a: FlushArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async move {
        let (c, ns) = a.ns.open(a.ns.options(1)).await?;
        let restarts = c.target_restarts();
        ns.flush().await.with_context(|| a.ns.describe())?;
        anyhow::ensure!(
            c.target_restarts() == restarts,
            "the target restarted (new instance ID) during the flush: what it had acknowledged before may be gone"
        );
        c.shutdown().await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Which of the range commands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RangeOp {
    /// Write Zeroes: the range reads as zeroes afterwards.
    WriteZeroes,
    /// Dataset Management, deallocate.
    Trim,
}

/// Run `write-zeroes` (then a Flush) or `trim` over `--offset`/`--length`.
pub fn run_range(a: RangeArgs, op: RangeOp) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async move {
        let (c, ns) = a.ns.open(a.ns.options(1)).await?;
        let restarts = c.target_restarts();
        let len = match a.length {
            Length::Bytes(n) => n,
            Length::All => ns.size().saturating_sub(a.offset),
        };
        let (lba, n) = byte_range(&ns, a.offset, len, "length")?;
        let what = a.ns.describe();
        match op {
            RangeOp::WriteZeroes => {
                if !ns.supports_write_zeroes() {
                    tracing::info!("the controller has no Write Zeroes (ONCS bit 3): zeroing with writes");
                }
                ns.write_zeroes(lba, n).await.with_context(|| format!("{what}: write zeroes"))?;
                // Durable before it says so, as `write` (a file target's zeroed range is in its page cache).
                ns.flush().await.context("Flush after the zeroing")?;
                anyhow::ensure!(
                    c.target_restarts() == restarts,
                    "the target restarted (new instance ID) while the range was zeroed: zero it again"
                );
            }
            RangeOp::Trim => ns.deallocate(lba, n).await.with_context(|| format!("{what}: trim"))?,
        }
        outln!("{len} bytes at offset {} {}", a.offset, if op == RangeOp::Trim { "deallocated" } else { "zeroed" });
        c.shutdown().await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Read `input` in pieces of `chunk` bytes (the last may be shorter) into `tx`, until its end, an error, or
/// nobody waiting for them.
fn read_pieces(mut input: Box<dyn Read + Send>, chunk: usize, tx: tokio::sync::mpsc::Sender<std::io::Result<Bytes>>) {
    loop {
        let mut buf = vec![0u8; chunk];
        let mut n = 0;
        while n < chunk {
            match input.read(&mut buf[n..]) {
                Ok(0) => break,
                Ok(k) => n += k,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    let _ = tx.blocking_send(Err(e));
                    return;
                }
            }
        }
        if n == 0 {
            return;
        }
        buf.truncate(n);
        if tx.blocking_send(Ok(Bytes::from(buf))).is_err() || n < chunk {
            return;
        }
    }
}
