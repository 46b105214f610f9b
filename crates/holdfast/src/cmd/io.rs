//! `holdfast read` and `holdfast write`: move bytes between a namespace and a file or stdin/stdout.

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

/// 1 MiB transfers kept in flight at once by `read` and `write`.
const WINDOW: usize = 8;
/// I/O queues `read` and `write` use.
const QUEUES: u16 = 2;

fn blocks(ns: &Namespace, what: &str, v: u64) -> anyhow::Result<u64> {
    let bs = ns.block_size as u64;
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
        ns.nsid,
        ns.size()
    );
    Ok((lba, n))
}

/// Run `read`.
pub fn run_read(a: ReadArgs) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async move {
        let (c, ns) = a.ns.open(a.ns.options(QUEUES)).await?;
        // The whole range first: the output file is not created (emptied) for a read that cannot be done.
        let (lba, n) = byte_range(&ns, a.offset, a.length, "length")?;
        let mut out: Box<dyn Write> = match &a.output {
            Some(p) if p.as_os_str() != "-" => {
                Box::new(std::fs::File::create(p).with_context(|| format!("cannot create {}", p.display()))?)
            }
            _ => Box::new(std::io::stdout().lock()),
        };
        // 1 MiB pieces, up to WINDOW in flight over the queues, written out in order.
        let chunk = (1024 * 1024 / ns.block_size as u64).max(1);
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
        c.shutdown().await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Run `write`.
pub fn run_write(a: WriteArgs) -> anyhow::Result<ExitCode> {
    let mut data = Vec::new();
    match &a.input {
        Some(p) if p.as_os_str() != "-" => {
            data = std::fs::read(p).with_context(|| format!("cannot read {}", p.display()))?;
        }
        _ => {
            std::io::stdin().read_to_end(&mut data)?;
        }
    }
    runtime()?.block_on(async move {
        let (c, ns) = a.ns.open(a.ns.options(QUEUES)).await?;
        // The whole range before anything is sent: a write refused halfway would have changed the first part.
        let (lba, _) = byte_range(&ns, a.offset, data.len() as u64, "input")?;
        let data = Bytes::from(data);
        // 1 MiB pieces (at least a block), up to WINDOW in flight over the queues.
        let chunk = (1024 * 1024 / ns.block_size as usize * ns.block_size as usize).max(ns.block_size as usize);
        let mut inflight = std::collections::VecDeque::new();
        let mut at = 0;
        while at < data.len() || !inflight.is_empty() {
            while at < data.len() && inflight.len() < WINDOW {
                let k = (data.len() - at).min(chunk);
                let (ns, piece) = (ns.clone(), data.slice(at..at + k));
                let lba = lba + (at / ns.block_size as usize) as u64;
                let fua = a.fua;
                inflight.push_back(tokio::spawn(async move { ns.write(lba, piece, fua).await }));
                at += k;
            }
            if let Some(t) = inflight.pop_front() {
                t.await??;
            }
        }
        c.shutdown().await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
