//! `holdfast bench`: a workload generator with verification.
//!
//! `--qd` is the number of I/Os kept outstanding on each queue (`--queues`), so `qd × queues` in all. With
//! `--verify` every written block starts with a 32-byte header — magic, LBA, write generation, CRC32C of the
//! block — followed by bytes derived from (LBA, generation); the last acknowledged generation of every I/O
//! unit is remembered and every read of a written unit is checked against it. Two I/Os never overlap; a unit
//! whose write failed is uncertain (its old or its attempted generation is accepted) until it is written again.
//! Write-only workloads read every unit they wrote back once the run is over (not counted in its figures);
//! read-only ones have nothing of this run's to check, and refuse `--verify`.
//!
//! A run ends when its time is over (or at a first Ctrl-C): no I/O starts after that, and the I/Os in flight
//! are waited for during a bounded grace period ([`grace`]); the report then says how many never completed,
//! and the state of the controller they wait on, and the exit status is 1. A second Ctrl-C stops waiting at
//! once, and reports too.

use super::common::{runtime, NamespaceArgs};
use bytes::{BufMut, Bytes, BytesMut};
use clap::{Args as ClapArgs, ValueEnum};
use hdrhistogram::Histogram;
use holdfast_host::controller::{Event, State};
use holdfast_host::{Controller, Namespace};
use holdfast_proto::digest::{crc32c, crc32c_append};
use rand::{Rng, SeedableRng};
use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// Workloads.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Workload {
    /// Sequential reads.
    Read,
    /// Sequential writes.
    Write,
    /// Random reads.
    Randread,
    /// Random writes.
    Randwrite,
    /// Random reads and writes (`--mix` percent reads).
    Randrw,
}

impl Workload {
    /// As the command line and the report name it.
    fn name(self) -> String {
        format!("{self:?}").to_lowercase()
    }
}

/// Options of `holdfast bench`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    ns: NamespaceArgs,
    /// Workload.
    #[arg(long, value_enum, default_value = "randread")]
    workload: Workload,
    /// I/O size in bytes (one block or more, a multiple of the block size).
    #[arg(long, default_value_t = 4096)]
    bs: u32,
    /// Outstanding I/Os per queue.
    #[arg(long, default_value_t = 16)]
    qd: u32,
    /// I/O queues (per controller).
    #[arg(long, default_value_t = 1)]
    queues: u16,
    /// Controllers (associations) to open, each with --queues queues of --qd: for scale tests.
    #[arg(long, default_value_t = 1)]
    controllers: u16,
    /// Run time in seconds (default 10 unless --size is given). Once it is over no I/O starts, and the I/Os in
    /// flight are waited for a tenth of the run time (at least 5 s, at most 60 s): those still outstanding then
    /// are reported (with the controller's state), and the exit status is 1.
    #[arg(long)]
    time: Option<f64>,
    /// Bytes of the namespace to use (default: all of it; more than the namespace holds is refused); with no
    /// --time, stop after this much I/O (failed I/O included).
    #[arg(long)]
    size: Option<u64>,
    /// Percentage of reads, for randrw only [default: 50].
    #[arg(long)]
    mix: Option<u32>,
    /// Verify every read against what was written.
    #[arg(long)]
    verify: bool,
    /// Print one JSON object.
    #[arg(long)]
    json: bool,
    /// Random seed.
    #[arg(long, default_value_t = 1)]
    seed: u64,
    /// Adaptive busy polling: after network activity keep polling this many microseconds instead of
    /// sleeping (as polled initiators do); 0 turns it off.
    #[arg(long, default_value_t = 200)]
    busy_poll_us: u64,
}

const MAGIC: u64 = 0x3154_4e45_4246_4648; // "HFBENT1"
const UNKNOWN: u64 = 1 << 63;
/// A worker's pause after an I/O error other than the controller's loss.
const ERROR_PAUSE: Duration = Duration::from_millis(10);
/// The percentage of reads of randrw without `--mix`.
const DEFAULT_MIX: u32 = 50;
/// The run time without `--time` or `--size`.
const DEFAULT_TIME: Duration = Duration::from_secs(10);
/// Bounds of the wait for the I/Os in flight once no more start ([`grace`]).
const GRACE_MIN: Duration = Duration::from_secs(5);
const GRACE_MAX: Duration = Duration::from_secs(60);
/// I/Os still in flight this long after the run time is over are not the last ones of a working target
/// finishing (those take well under a second): the wait for them is said on stderr, which may be all a user
/// watching a redirected run sees.
const NOTICE_AFTER: Duration = Duration::from_secs(1);

/// How often the longest stall is sampled ([`StallClock`]): its resolution.
const STALL_TICK: Duration = Duration::from_millis(10);

/// The longest stall: the longest time in which no I/O succeeded while the run was doing I/O (the workers always
/// keep I/Os outstanding, or are pausing after one failed), from the run's start to its end. That is an outage as
/// the application sees it, the time to notice the loss (a connection reset, or KATO or an I/O timeout passing on
/// a path that went silent) and I/O failing fast included, not only the host's reconnect. Sampled every
/// [`STALL_TICK`] from the count of I/Os that succeeded: a stall is from the first sample that saw the count
/// still to the last one that did, so it reads up to a tick short.
struct StallClock {
    ops: u64,
    since: Instant,
    longest: Duration,
}

impl StallClock {
    fn new(ops: u64, now: Instant) -> Self {
        StallClock { ops, since: now, longest: Duration::ZERO }
    }

    /// The count of I/Os that succeeded is `ops` at `now`: the longest stall so far.
    fn sample(&mut self, ops: u64, now: Instant) -> Duration {
        if ops != self.ops {
            (self.ops, self.since) = (ops, now);
        } else {
            self.longest = self.longest.max(now.saturating_duration_since(self.since));
        }
        self.longest
    }
}

/// How long the I/Os in flight are waited for once no more start (the run time is over, or Ctrl-C): a tenth of
/// the run time, at least [`GRACE_MIN`] and at most [`GRACE_MAX`] (`GRACE_MIN` for a run limited by `--size`
/// alone). A working target completes them in milliseconds; the wait lets a run that ends during a short outage
/// (a target restarting, a path failing over) see them complete, and longer runs, failover tests, longer
/// outages. It is bounded whatever the host's ctrl_loss_tmo (600 s by default), during which I/O to a target
/// that is gone for good stays queued: the run time is what the user asked for, and the report is due then,
/// with what did not complete.
fn grace(a: &Args) -> Duration {
    match (a.time, a.size) {
        (None, Some(_)) => GRACE_MIN,
        (t, _) => (t.map(Duration::from_secs_f64).unwrap_or(DEFAULT_TIME) / 10).clamp(GRACE_MIN, GRACE_MAX),
    }
}

struct Shared {
    ops: AtomicU64,
    bytes: AtomicU64,
    /// Bytes of the I/Os started (or about to be), failed ones included: what `--size` without `--time` limits.
    issued: AtomicU64,
    errors: AtomicU64,
    mismatches: AtomicU64,
    first_problems: Mutex<Vec<String>>,
    /// Per I/O unit: the last acknowledged write generation (0: never written), with `UNKNOWN` set while the
    /// unit is uncertain (a write to it failed).
    gens: Vec<AtomicU64>,
    /// Per I/O unit, while it is uncertain: the generations of the first and of the last write to it that failed
    /// since its last acknowledged one. Any of those writes may have landed (a failed write is not known not
    /// to have reached the media, and a later failure, perhaps never sent, says nothing of an earlier one), and
    /// every generation between them written to this unit was one of them: a block of this unit's LBA with a
    /// generation in that range is one of them.
    alt_first: Vec<AtomicU64>,
    alt: Vec<AtomicU64>,
    busy: Vec<AtomicBool>,
    next_gen: AtomicU64,
    cursor: AtomicU64,
    stop: AtomicBool,
    /// The longest time in which no I/O succeeded, in µs ([`StallClock`]).
    longest_stall_us: AtomicU64,
    outages: AtomicU64,
    /// The longest outage as the host saw it: from the loss noticed (a connection reset, or KATO or an
    /// I/O timeout passing) to the reconnect.
    longest_outage_ms: AtomicU64,
    /// When the host found the target restarted (a new instance ID), at a reconnect.
    restarts: Mutex<Vec<Instant>>,
    /// Events were missed (the controller's channel overflowed): a restart cannot be ruled out.
    events_missed: AtomicBool,
    /// Units read back and checked after a write-only run with `--verify`.
    read_back: AtomicU64,
    /// Set while the connection is down: the progress line says so.
    down: Mutex<Option<(Instant, u32, String)>>,
    lost: Mutex<Option<String>>,
}

impl Shared {
    fn problem(&self, s: String) {
        let mut p = self.first_problems.lock().unwrap_or_else(|e| e.into_inner());
        if p.len() < 5 {
            p.push(s);
        }
    }

    /// Shared state for `vunits` verified I/O units (0 without `--verify`).
    fn new(vunits: usize) -> Shared {
        let zeroes = || (0..vunits).map(|_| AtomicU64::new(0)).collect();
        Shared {
            ops: AtomicU64::new(0),
            bytes: AtomicU64::new(0),
            issued: AtomicU64::new(0),
            errors: AtomicU64::new(0),
            mismatches: AtomicU64::new(0),
            first_problems: Mutex::new(Vec::new()),
            gens: zeroes(),
            alt_first: zeroes(),
            alt: zeroes(),
            busy: (0..vunits).map(|_| AtomicBool::new(false)).collect(),
            next_gen: AtomicU64::new(0),
            cursor: AtomicU64::new(0),
            stop: AtomicBool::new(false),
            longest_stall_us: AtomicU64::new(0),
            outages: AtomicU64::new(0),
            longest_outage_ms: AtomicU64::new(0),
            restarts: Mutex::new(Vec::new()),
            events_missed: AtomicBool::new(false),
            read_back: AtomicU64::new(0),
            down: Mutex::new(None),
            lost: Mutex::new(None),
        }
    }

    /// A write of generation `gen` to `unit` ended. Acknowledged: the unit holds `gen`. Failed: it keeps its
    /// last acknowledged generation and becomes uncertain, or stays so, with `gen` the last failed attempt.
    /// (One I/O at a time per unit: `busy`.)
    fn write_ended(&self, unit: u64, gen: u64, ok: bool) {
        let u = unit as usize;
        if ok {
            self.gens[u].store(gen, Ordering::Release);
            return;
        }
        if self.gens[u].load(Ordering::Acquire) & UNKNOWN == 0 {
            self.alt_first[u].store(gen, Ordering::Release);
        }
        self.alt[u].store(gen, Ordering::Release);
        self.gens[u].fetch_or(UNKNOWN, Ordering::AcqRel);
    }

    /// Check the data read from `unit` (at `lba`) against the generation last written there; count and note
    /// a mismatch. A unit never written in this run is not checked. After a failed write the unit is
    /// uncertain: the old generation or that of any write that failed since (or, if never written before,
    /// anything) is acceptable, block by block, until the next good write.
    fn check_unit(&self, unit: u64, lba: u64, data: &[u8], block: usize) {
        let gen = self.gens[unit as usize].load(Ordering::Acquire);
        if gen == 0 {
            return;
        }
        let uncertain = gen & UNKNOWN != 0;
        let prev = gen & !UNKNOWN;
        if prev == 0 {
            // Uncertain, never acknowledged: its old data, which may be anything, or a failed write's.
            return;
        }
        let (first, last) =
            (self.alt_first[unit as usize].load(Ordering::Acquire), self.alt[unit as usize].load(Ordering::Acquire));
        for (i, chunk) in data.chunks(block).enumerate() {
            let l = lba + i as u64;
            let Some(p) = check_block(chunk, l, prev) else { continue };
            if uncertain && block_generation(chunk, l).is_ok_and(|g| (first..=last).contains(&g)) {
                continue;
            }
            self.mismatches.fetch_add(1, Ordering::Relaxed);
            let or = if uncertain { format!(" (or one of {first}..={last})") } else { String::new() };
            self.problem(format!("verify: {p}{or}"));
            break;
        }
    }
}

/// After a write-only run with `--verify`: read back every unit it wrote, `qd` at a time on each
/// namespace handle's queues, and check each, counting the units read back (`read_back`) and those that could
/// not be (`errors`). False if `quit` (a second Ctrl-C) cut it short: the counts are then of what was done.
async fn read_back(
    nss: &[Namespace],
    sh: &Arc<Shared>,
    a: &Arc<Args>,
    units: u64,
    per_io: u64,
    quit: &CancellationToken,
) -> bool {
    let cursor = Arc::new(AtomicU64::new(0));
    let failed = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for w in 0..(a.qd as usize * a.queues as usize) {
        let (ns, sh, cursor, failed, a) = (nss[0].clone(), sh.clone(), cursor.clone(), failed.clone(), a.clone());
        tasks.push(tokio::spawn(async move {
            let block = ns.block_size() as usize;
            loop {
                let unit = cursor.fetch_add(1, Ordering::Relaxed);
                if unit >= units {
                    return;
                }
                if sh.gens[unit as usize].load(Ordering::Acquire) == 0 {
                    continue;
                }
                match ns.read_on(Some(w % a.queues as usize), unit * per_io, per_io).await {
                    Ok(data) => {
                        sh.check_unit(unit, unit * per_io, &data, block);
                        sh.read_back.fetch_add(1, Ordering::Relaxed);
                    }
                    Err(e) => {
                        sh.errors.fetch_add(1, Ordering::Relaxed);
                        if failed.fetch_add(1, Ordering::Relaxed) == 0 {
                            sh.problem(format!("verify read-back error: {e}"));
                        }
                    }
                }
            }
        }));
    }
    let done = tokio::select! {
        _ = async {
            for t in tasks.iter_mut() {
                let _ = t.await;
            }
        } => true,
        _ = quit.cancelled() => false,
    };
    for t in &tasks {
        t.abort();
    }
    done
}

fn fill_block(buf: &mut BytesMut, lba: u64, gen: u64, block: usize) {
    let start = buf.len();
    buf.put_u64_le(MAGIC);
    buf.put_u64_le(lba);
    buf.put_u64_le(gen);
    buf.put_u32_le(0);
    buf.put_u32_le(0);
    let mut x = lba.wrapping_mul(0x9E37_79B9_7F4A_7C15) ^ gen.wrapping_mul(0xD1B5_4A32_D192_ED03) | 1;
    while buf.len() - start < block {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        buf.put_u64_le(x);
    }
    buf.truncate(start + block);
    let crc = crc32c(&buf[start..start + block]);
    buf[start + 24..start + 28].copy_from_slice(&crc.to_le_bytes());
}

/// Check one block; None if good, else what is wrong.
fn check_block(b: &[u8], lba: u64, gen: u64) -> Option<String> {
    match block_generation(b, lba) {
        Err(Some(p)) => Some(p),
        Err(None) => Some(format!("lba {lba}: no verify header (expected generation {gen})")),
        Ok(g) if g != gen => Some(format!("lba {lba}: generation {g} where {gen} was last acknowledged (stale data)")),
        Ok(_) => None,
    }
}

/// The generation a block of `lba` carries, once its header and checksum are checked; Err(None): no verify
/// header, Err(Some(problem)) otherwise.
fn block_generation(b: &[u8], lba: u64) -> Result<u64, Option<String>> {
    let u = |o: usize| u64::from_le_bytes(b[o..o + 8].try_into().unwrap_or_default());
    if u(0) != MAGIC {
        return Err(None);
    }
    if u(8) != lba {
        return Err(Some(format!("lba {lba}: holds the data of lba {}", u(8))));
    }
    // CRC32C of the block with its checksum field read as zero, without copying the block.
    let crc = u32::from_le_bytes(b[24..28].try_into().unwrap_or_default());
    let computed = crc32c_append(crc32c_append(crc32c(&b[..24]), &[0; 4]), &b[28..]);
    if computed != crc {
        return Err(Some(format!("lba {lba}: checksum mismatch (corrupt data)")));
    }
    Ok(u(16))
}

#[allow(clippy::too_many_arguments)]
async fn worker(
    ns: Namespace,
    sh: Arc<Shared>,
    queue: usize,
    a: Arc<Args>,
    units: u64,
    seed: u64,
    deadline: Option<Instant>,
    byte_limit: Option<u64>,
    hist: Arc<Mutex<Histogram<u64>>>,
) {
    // A small generator (xoshiro256++, 32 bytes of state): each worker keeps one, and StdRng's (ChaCha12, over 300
    // bytes with its block of output) came to more than 1.2 MiB at 256 controllers x 4 queues x QD 4, over half the
    // core's L2 cache, besides about 30 instructions per I/O to refill the blocks. Nothing here needs a
    // cryptographic generator.
    let mut rng = rand::rngs::SmallRng::seed_from_u64(seed);
    let bs = a.bs as u64;
    let block = ns.block_size() as u64;
    let per_io = bs / block;
    let mut last_end = Instant::now();
    let pattern = {
        let mut b = BytesMut::with_capacity(bs as usize);
        fill_block(&mut b, 0, 0, bs as usize);
        b.freeze()
    };
    loop {
        // The deadline is checked with the clock read for the latency of the previous I/O.
        if sh.stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| last_end >= d) {
            break;
        }
        // The I/O's share of the limit is taken before it starts (a failed one keeps it): checking the bytes
        // completed let every worker in flight at the limit go on, and failed I/O never end the run. Only whole
        // I/Os within the limit run: one that would end past it (a limit that is no multiple of --bs) does not.
        if byte_limit.is_some_and(|l| sh.issued.fetch_add(bs, Ordering::Relaxed) + bs > l) {
            break;
        }
        let is_read = match a.workload {
            Workload::Read | Workload::Randread => true,
            Workload::Write | Workload::Randwrite => false,
            Workload::Randrw => rng.gen_range(0..100) < a.mix.unwrap_or(DEFAULT_MIX),
        };
        let mut unit = match a.workload {
            Workload::Read | Workload::Write => sh.cursor.fetch_add(1, Ordering::Relaxed) % units,
            _ => rng.gen_range(0..units),
        };
        if a.verify {
            let mut got = false;
            for _ in 0..64 {
                if !sh.busy[unit as usize].swap(true, Ordering::Acquire) {
                    got = true;
                    break;
                }
                unit = (unit + 1) % units;
            }
            if !got {
                if byte_limit.is_some() {
                    sh.issued.fetch_sub(bs, Ordering::Relaxed);
                }
                tokio::task::yield_now().await;
                last_end = Instant::now();
                continue;
            }
        }
        let lba = unit * per_io;
        // Not verifying, the clock read at the end of the previous I/O starts this one: one clock read per
        // I/O, not two (the few instructions between are in the latency). Verifying, writes generate their
        // data first, which is not the I/O's latency.
        let t0 = if a.verify { Instant::now() } else { last_end };
        let result = if is_read {
            match ns.read_on(Some(queue), lba, per_io).await {
                Ok(data) => {
                    if a.verify {
                        sh.check_unit(unit, lba, &data, block as usize);
                    }
                    Ok(())
                }
                Err(e) => Err(e),
            }
        } else {
            let gen = sh.next_gen.fetch_add(1, Ordering::Relaxed) + 1;
            let data: Bytes = if a.verify {
                let mut buf = BytesMut::with_capacity(bs as usize);
                for i in 0..per_io {
                    fill_block(&mut buf, lba + i, gen, block as usize);
                }
                buf.freeze()
            } else {
                // Not verifying: one shared buffer, as fio and SPDK's perf do; generating unique blocks
                // would measure the generator.
                pattern.clone()
            };
            let r = ns.write_on(Some(queue), lba, data, false).await;
            if a.verify {
                sh.write_ended(unit, gen, r.is_ok());
            }
            r
        };
        last_end = Instant::now();
        let us = last_end.duration_since(t0).as_micros().max(1) as u64;
        if a.verify {
            sh.busy[unit as usize].store(false, Ordering::Release);
        }
        match result {
            Ok(()) => {
                let _ = hist.lock().unwrap_or_else(|p| p.into_inner()).record(us);
                sh.ops.fetch_add(1, Ordering::Relaxed);
                sh.bytes.fetch_add(bs, Ordering::Relaxed);
            }
            Err(e) => {
                sh.errors.fetch_add(1, Ordering::Relaxed);
                sh.problem(format!("{} error: {e}", if is_read { "read" } else { "write" }));
                if matches!(e, holdfast_host::Error::ControllerLost(_) | holdfast_host::Error::NotConnected(_)) {
                    // The controller is gone for good: no point in spinning.
                    sh.stop.store(true, Ordering::Relaxed);
                } else {
                    // A controller failing fast answers at once: without a pause each worker would go round
                    // (and count) hundreds of thousands of errors a second until the connection is back.
                    tokio::time::sleep(ERROR_PAUSE).await;
                    last_end = Instant::now();
                }
            }
        }
    }
}

/// Run the benchmark.
pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    anyhow::ensure!(a.qd >= 1 && a.qd <= 1023, "--qd must be 1..=1023");
    anyhow::ensure!(a.queues >= 1 && a.queues <= 64, "--queues must be 1..=64");
    if let Some(m) = a.mix {
        // Refused, not ignored: `--workload randread --mix 70` reads only, which is not what its user asked for.
        anyhow::ensure!(
            a.workload == Workload::Randrw,
            "--mix {m} is for --workload randrw (the percentage of its I/Os that are reads): {} does only {}",
            a.workload.name(),
            if reads_only(&a) { "reads" } else { "writes" }
        );
        anyhow::ensure!(m <= 100, "--mix {m}: give a percentage of reads, 0..=100");
    }
    anyhow::ensure!(a.controllers >= 1 && a.controllers <= 1024, "--controllers must be 1..=1024");
    if let Some(t) = a.time {
        anyhow::ensure!(t.is_finite() && t > 0.0 && t <= 1e7, "--time {t}: give seconds above 0 (at most 10^7)");
    }
    anyhow::ensure!(a.size != Some(0), "--size 0: give the bytes of the region to use, above 0");
    anyhow::ensure!(
        !(a.verify && reads_only(&a)),
        "--verify checks what this run wrote: a read-only workload writes nothing (use randrw with --mix below 100, \
         or a write workload, whose units are read back at the end)"
    );
    let grace = grace(&a);
    let a = Arc::new(a);
    let rt = runtime()?;
    rt.block_on(async move {
        let mut o = a.ns.options(a.queues);
        o.queue_size = (a.qd + 1).clamp(2, 1024) as u16;
        // One poller for every controller: they share this runtime.
        o.busy_poll = holdfast_rt::BusyPoll::new(Duration::from_micros(a.busy_poll_us));
        if let Some(p) = &o.busy_poll {
            p.spawn();
        }
        let mut ctrls = Vec::new();
        let mut nss = Vec::new();
        for _ in 0..a.controllers {
            let (c, ns) = a.ns.open(o.clone()).await?;
            nss.push(ns);
            ctrls.push(c);
        }
        let ns = nss[0].clone();
        anyhow::ensure!(
            a.bs >= ns.block_size(),
            "--bs {}: the I/O size must be at least one block ({} bytes)",
            a.bs,
            ns.block_size()
        );
        anyhow::ensure!(
            a.bs.is_multiple_of(ns.block_size()),
            "--bs {} is not a multiple of the {}-byte block size",
            a.bs,
            ns.block_size()
        );
        // A run that writes to a write-protected namespace would fail every write for its whole time.
        anyhow::ensure!(
            reads_only(&a) || !ns.write_protected(),
            "{} is write protected (Identify Namespace NSATTR bit 0): a {} run would fail every write; \
             read or randread (or randrw --mix 100) only reads",
            a.ns.describe(),
            format!("{:?}", a.workload).to_lowercase()
        );
        if let Some(s) = a.size {
            // Refused, not clamped: the region was clamped to the namespace but --size stayed the byte budget of a
            // run without --time, so that a run meant to write the namespace once went on for many times that.
            anyhow::ensure!(
                s <= ns.size(),
                "--size {s} bytes is larger than {} ({} bytes)",
                a.ns.describe(),
                ns.size()
            );
        }
        let region = a.size.unwrap_or(ns.size());
        let units = region / a.bs as u64;
        anyhow::ensure!(
            units > 0,
            "{} ({region} bytes) holds no {}-byte I/O",
            if a.size.is_some() { "--size" } else { "the namespace" },
            a.bs
        );
        let (deadline, byte_limit) = match (a.time, a.size) {
            (Some(t), _) => (Some(Instant::now() + Duration::from_secs_f64(t)), None),
            (None, Some(s)) => (None, Some(s)),
            (None, None) => (Some(Instant::now() + DEFAULT_TIME), None),
        };
        let vunits = if a.verify { units as usize } else { 0 };
        let sh = Arc::new(Shared::new(vunits));
        // Outages and target restarts, from the controller's event stream.
        let watchers: Vec<_> = ctrls.iter().map(|c| {
            let (sh, mut ev) = (sh.clone(), c.events());
            tokio::spawn(async move {
                use tokio::sync::broadcast::error::RecvError;
                loop {
                    let e = match ev.recv().await {
                        Ok(e) => e,
                        // Events were dropped (the channel overflowed): go on with those that follow.
                        Err(RecvError::Lagged(_)) => {
                            sh.events_missed.store(true, Ordering::Relaxed);
                            continue;
                        }
                        Err(RecvError::Closed) => return,
                    };
                    match e {
                        Event::Reconnecting { attempt, cause, .. } => {
                            let mut d = sh.down.lock().unwrap_or_else(|p| p.into_inner());
                            let since = d.as_ref().map(|x| x.0).unwrap_or_else(Instant::now);
                            *d = Some((since, attempt, cause));
                        }
                        Event::Restored { outage, target_restarted, .. } => {
                            *sh.down.lock().unwrap_or_else(|p| p.into_inner()) = None;
                            sh.outages.fetch_add(1, Ordering::Relaxed);
                            sh.longest_outage_ms.fetch_max(outage.as_millis() as u64, Ordering::Relaxed);
                            if target_restarted {
                                sh.restarts.lock().unwrap_or_else(|p| p.into_inner()).push(Instant::now());
                            }
                        }
                        Event::Failed { reason } => {
                            *sh.lost.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason);
                        }
                        _ => {}
                    }
                }
            })
        }).collect();
        // Ctrl-C ends the run early, with its report (what was done until then): no I/O starts, and those in
        // flight are waited for as at the end of the run time. A second one (or a first once no I/O starts, as
        // during the read-back) stops waiting and reports at once; a third quits without a report.
        let interrupted = Arc::new(AtomicBool::new(false));
        let quit = CancellationToken::new();
        let on_sigint = {
            let (sh, interrupted, quit) = (sh.clone(), interrupted.clone(), quit.clone());
            tokio::spawn(async move {
                while tokio::signal::ctrl_c().await.is_ok() {
                    let issuing = !sh.stop.swap(true, Ordering::Relaxed) && deadline.is_none_or(|d| Instant::now() < d);
                    // `interrupted` says the run was cut short (exit 130 if nothing failed): not by a Ctrl-C that
                    // comes once its time is over, which only stops the wait (what is outstanding then is the
                    // failure it is, exit 1).
                    if issuing && !interrupted.swap(true, Ordering::Relaxed) {
                        eprintln!(
                            "\nholdfast: interrupted: finishing the I/Os in flight, for {:.1} s at most (Ctrl-C again to \
                             stop waiting)",
                            grace.as_secs_f64()
                        );
                    } else if !quit.is_cancelled() {
                        eprintln!("\nholdfast: interrupted: reporting what was done (Ctrl-C again to quit at once)");
                        quit.cancel();
                    } else {
                        std::process::exit(130);
                    }
                }
            })
        };
        let t0 = Instant::now();
        // The longest stall, sampled from the count of I/Os that succeeded (kept per I/O already): timing it per
        // I/O instead cost the workers three more atomic operations each, on the path the figures measure.
        let stall_clock = {
            let sh = sh.clone();
            tokio::spawn(async move {
                let mut clock = StallClock::new(sh.ops.load(Ordering::Relaxed), Instant::now());
                let mut tick = tokio::time::interval(STALL_TICK);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let longest = clock.sample(sh.ops.load(Ordering::Relaxed), Instant::now());
                    sh.longest_stall_us.store(longest.as_micros() as u64, Ordering::Relaxed);
                }
            })
        };
        let cpu0 = holdfast_rt::process_cpu();
        let mut tasks = Vec::new();
        // Latency histograms, a few shards shared by the workers (one per worker cost 4096 large histograms
        // at 256 controllers).
        let nworkers = a.qd as usize * a.queues as usize * a.controllers as usize;
        let shards: Vec<Arc<Mutex<Histogram<u64>>>> = (0..nworkers.min(16))
            .map(|_| Ok(Arc::new(Mutex::new(latency_histogram()?))))
            .collect::<anyhow::Result<_>>()?;
        for w in 0..nworkers {
            let q = w % a.queues as usize;
            let ns = nss[(w / a.queues as usize) % nss.len()].clone();
            tasks.push(tokio::spawn(worker(ns, sh.clone(), q, a.clone(), units, a.seed.wrapping_mul(1000).wrapping_add(w as u64), deadline, byte_limit, shards[w % shards.len()].clone())));
        }
        let progress = std::io::stderr().is_terminal() && !a.json;
        let ticker = {
            let sh = sh.clone();
            tokio::spawn(async move {
                let (mut last_ops, mut last_bytes) = (0, 0);
                loop {
                    tokio::time::sleep(Duration::from_secs(1)).await;
                    let (o, b) = (sh.ops.load(Ordering::Relaxed), sh.bytes.load(Ordering::Relaxed));
                    if progress {
                        let down = sh.down.lock().unwrap_or_else(|p| p.into_inner()).clone();
                        let status = match down {
                            Some((since, attempt, cause)) => format!(
                                "RECONNECTING for {:.1} s (attempt {attempt}: {})",
                                since.elapsed().as_secs_f64(),
                                cause.chars().take(60).collect::<String>()
                            ),
                            None => format!("outages {}", sh.outages.load(Ordering::Relaxed)),
                        };
                        eprint!(
                            "\r\x1b[K[{:>5.0}s] {:>9} IOPS {:>9.1} MB/s  errors {}  mismatches {}  {status}",
                            t0.elapsed().as_secs_f64(),
                            o - last_ops,
                            (b - last_bytes) as f64 / 1e6,
                            sh.errors.load(Ordering::Relaxed),
                            sh.mismatches.load(Ordering::Relaxed)
                        );
                    }
                    (last_ops, last_bytes) = (o, b);
                }
            })
        };
        let abandoned = wait_for_workers(&mut tasks, &sh, &ctrls, deadline, grace, &quit, &interrupted, progress).await;
        let ended = Instant::now();
        // Nothing starts from now on (the read-back aside): a Ctrl-C now stops the wait at once.
        sh.stop.store(true, Ordering::Relaxed);
        // A worker has one I/O at a time: one still running now is waiting on its I/O.
        let outstanding = tasks.iter().filter(|t| !t.is_finished()).count() as u64;
        let states = controller_states(&ctrls);
        for t in &tasks {
            t.abort();
        }
        // A stall going on when the run ended counts too (I/Os failing to the end, or never completing): the
        // clock has sampled it to its last tick.
        stall_clock.abort();
        let mut hist = latency_histogram()?;
        for h in &shards {
            let _ = hist.add(&*h.lock().unwrap_or_else(|p| p.into_inner()));
        }
        ticker.abort();
        // An outage still going on at the end (or that ended with the controller lost) counts too, until now.
        let unrestored = sh.down.lock().unwrap_or_else(|p| p.into_inner()).take().map(|(since, _, _)| {
            sh.outages.fetch_add(1, Ordering::Relaxed);
            sh.longest_outage_ms.fetch_max(since.elapsed().as_millis() as u64, Ordering::Relaxed);
        });
        for w in &watchers {
            w.abort();
        }
        if progress {
            eprintln!();
        }
        let secs = ended.duration_since(t0).as_secs_f64();
        let cpu1 = holdfast_rt::process_cpu();
        let lost = sh.lost.lock().unwrap_or_else(|p| p.into_inner()).clone();
        // The read-back needs a controller, and every write ended (one still in flight could land after its unit
        // was read back).
        let mut read_back_done = None;
        let read_back_skipped = if !(a.verify && writes_only(&a)) {
            None
        } else if lost.is_some() {
            Some("the controller was lost")
        } else if outstanding > 0 {
            Some("I/Os still outstanding")
        } else if quit.is_cancelled() {
            Some("interrupted")
        } else {
            read_back_done = Some(read_back(&nss, &sh, &a, units, a.bs as u64 / ns.block_size() as u64, &quit).await);
            None
        };
        let shut_down = async {
            for c in &ctrls {
                let _ = c.shutdown().await;
            }
        };
        if outstanding > 0 || quit.is_cancelled() {
            // An orderly shutdown waits on the target (its Property commands) that has left I/Os unanswered: given
            // up, it still ends the controller at once.
            let _ = tokio::time::timeout(Duration::from_secs(1), shut_down).await;
        } else {
            shut_down.await;
        }
        let ops = sh.ops.load(Ordering::Relaxed);
        let bytes = sh.bytes.load(Ordering::Relaxed);
        let errors = sh.errors.load(Ordering::Relaxed);
        let mismatches = sh.mismatches.load(Ordering::Relaxed);
        let problems = sh.first_problems.lock().unwrap_or_else(|e| e.into_inner()).clone();
        let read_back_units = read_back_done.map(|_| sh.read_back.load(Ordering::Relaxed));
        let restarts: Vec<f64> = sh
            .restarts
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|r| (r.saturating_duration_since(t0).as_secs_f64() * 10.0).round() / 10.0)
            .collect();
        let q = |p: f64| if hist.is_empty() { 0 } else { hist.value_at_quantile(p) };
        // This process's CPU per I/O over the run (all its threads): what the host side costs, steadier than
        // IOPS on a shared machine.
        let per_io = |t0: Duration, t1: Duration| {
            if ops == 0 { 0.0 } else { ((t1.saturating_sub(t0)).as_secs_f64() * 1e6 / ops as f64 * 100.0).round() / 100.0 }
        };
        let (cpu_user, cpu_sys) = (per_io(cpu0.0, cpu1.0), per_io(cpu0.1, cpu1.1));
        let report = serde_json::json!({
            "workload": a.workload.name(), "bs": a.bs, "qd": a.qd, "queues": a.queues,
            "controllers": a.controllers,
            "seconds": (secs * 1000.0).round() / 1000.0, "ops": ops,
            "iops": (ops as f64 / secs).round(), "mbps": ((bytes as f64 / secs / 1e6) * 10.0).round() / 10.0,
            "errors": errors, "verify": a.verify, "verify_mismatches": mismatches, "verify_read_back": read_back_units,
            "cpu_us_per_io": { "user": cpu_user, "sys": cpu_sys },
            "lat_us": { "p50": q(0.5), "p99": q(0.99), "p999": q(0.999), "max": if hist.is_empty() { 0 } else { hist.max() } },
            "outages": sh.outages.load(Ordering::Relaxed), "longest_outage_ms": sh.longest_outage_ms.load(Ordering::Relaxed),
            "outage_not_restored": unrestored.is_some(),
            "longest_stall_ms": sh.longest_stall_us.load(Ordering::Relaxed) / 1000,
            "target_restarts_s": restarts,
            "outstanding": outstanding, "unfinished": abandoned.as_ref().filter(|_| outstanding > 0),
            "controller_state": states,
            "problems": problems, "controller_lost": lost,
            "interrupted": interrupted.load(Ordering::Relaxed),
        });
        let interrupted = interrupted.load(Ordering::Relaxed);
        if a.json {
            outln!("{report}");
        } else {
            outln!(
                "{} bs={} qd={} queues={}{}: {:.0} IOPS, {:.1} MB/s over {:.1} s{}",
                a.workload.name(),
                a.bs,
                a.qd,
                a.queues,
                if a.controllers > 1 { format!(" controllers={}", a.controllers) } else { String::new() },
                ops as f64 / secs,
                bytes as f64 / secs / 1e6,
                secs,
                if interrupted { " (interrupted)" } else { "" }
            );
            outln!("latency us: p50 {} p99 {} p99.9 {} max {}", q(0.5), q(0.99), q(0.999), report["lat_us"]["max"]);
            outln!("cpu us per I/O (this process): {cpu_user:.2} user + {cpu_sys:.2} system");
            let how = match (a.verify, read_back_units, read_back_skipped) {
                (false, _, _) => " (not verifying)".to_string(),
                (true, Some(n), _) if read_back_done == Some(false) => {
                    format!(" ({n} units written read back after the run, before Ctrl-C stopped it)")
                }
                (true, Some(n), _) => format!(" ({n} units written read back after the run)"),
                (true, None, Some(why)) => format!(" (what was written not read back: {why})"),
                (true, None, None) => String::new(),
            };
            let restarted = restart_note(&restarts, a.verify && mismatches > 0, sh.events_missed.load(Ordering::Relaxed));
            outln!("errors {errors}, verify mismatches {mismatches}{how}{restarted}");
            let outages = match sh.outages.load(Ordering::Relaxed) {
                0 => "outages 0".to_string(),
                n if unrestored.is_some() => format!(
                    "outages {n} (longest {} ms, from the loss noticed to the reconnect; the last never reconnected, \
                     counted to the end of the run)",
                    report["longest_outage_ms"]
                ),
                n => format!("outages {n} (longest {} ms, from the loss noticed to the reconnect)", report["longest_outage_ms"]),
            };
            outln!("{outages}; longest stall {} ms (no I/O succeeded)", report["longest_stall_ms"]);
            if let Some(why) = abandoned.as_ref().filter(|_| outstanding > 0) {
                outln!("unfinished: {outstanding} I/Os still outstanding {why}; {states}");
            }
            for p in &problems {
                outln!("  {p}");
            }
        }
        if let Some(reason) = lost {
            eprintln!("holdfast: error: controller lost: {reason}");
        }
        on_sigint.abort();
        Ok::<_, anyhow::Error>(if errors > 0 || mismatches > 0 || (outstanding > 0 && !interrupted) {
            ExitCode::from(1)
        } else if interrupted {
            ExitCode::from(130)
        } else {
            ExitCode::SUCCESS
        })
    })
}

/// Wait for the workers to end. Once no I/O starts (the run time is over, Ctrl-C, or a controller lost) the I/Os in
/// flight are waited for `grace` at most, and a second Ctrl-C (`quit`) stops the wait at once; `Some(why)` when
/// the wait was given up with workers left, `why` saying when, as the report puts it.
#[allow(clippy::too_many_arguments)]
async fn wait_for_workers(
    tasks: &mut [JoinHandle<()>],
    sh: &Shared,
    ctrls: &[Controller],
    deadline: Option<Instant>,
    grace: Duration,
    quit: &CancellationToken,
    interrupted: &AtomicBool,
    progress: bool,
) -> Option<String> {
    // When no more I/O was to start: the deadline itself, or when the stop was seen (within a tick).
    let mut no_more_since: Option<Instant> = None;
    let mut noticed = false;
    for i in 0..tasks.len() {
        loop {
            tokio::select! {
                _ = &mut tasks[i] => break,
                _ = quit.cancelled() => return Some("when Ctrl-C stopped the wait".to_string()),
                _ = tokio::time::sleep(Duration::from_millis(100)) => {}
            }
            let now = Instant::now();
            if no_more_since.is_none() && (sh.stop.load(Ordering::Relaxed) || deadline.is_some_and(|d| now >= d)) {
                no_more_since = Some(deadline.filter(|d| now >= *d).unwrap_or(now));
            }
            let Some(since) = no_more_since else { continue };
            let after = if interrupted.load(Ordering::Relaxed) {
                "the interrupt"
            } else if deadline.is_some_and(|d| since >= d) {
                "the run time was over"
            } else {
                "the run stopped"
            };
            if now.duration_since(since) >= grace {
                return Some(format!("{:.1} s after {after}", grace.as_secs_f64()));
            }
            let n = tasks.iter().filter(|t| !t.is_finished()).count();
            if !noticed && now.duration_since(since) >= NOTICE_AFTER && n > 0 {
                noticed = true;
                eprintln!(
                    "{}holdfast: waiting {:.1} s at most after {after} for the {n} I/Os still in flight (Ctrl-C to \
                     stop waiting): {}",
                    if progress { "\n" } else { "" },
                    grace.as_secs_f64(),
                    controller_states(ctrls)
                );
            }
        }
    }
    None
}

/// The controllers' states, for the report of I/Os that did not complete: "controller STATE" or, with several,
/// "controllers: N STATE, M STATE".
fn controller_states(ctrls: &[Controller]) -> String {
    let mut seen: Vec<(String, usize)> = Vec::new();
    for c in ctrls {
        let s = match c.state() {
            State::Live => "live".to_string(),
            State::Reconnecting { attempt, cause, failing_fast } => format!(
                "reconnecting (attempt {attempt}: {cause}){}",
                if failing_fast { ", failing I/O fast" } else { "" }
            ),
            State::Failed { reason } => format!("lost ({reason})"),
        };
        match seen.iter_mut().find(|(x, _)| *x == s) {
            Some((_, n)) => *n += 1,
            None => seen.push((s, 1)),
        }
    }
    match &seen[..] {
        [(s, 1)] if ctrls.len() == 1 => format!("controller {s}"),
        _ => format!("controllers: {}", seen.iter().map(|(s, n)| format!("{n} {s}")).collect::<Vec<_>>().join(", ")),
    }
}

/// What the report says of target restarts (at `restarts`, seconds into the run), after the mismatch count:
/// mismatches after a restart are what a namespace that does not persist shows, which a user reading them alone
/// would take for corruption. `explain` (there are mismatches) says so; `missed` (events were dropped) says a
/// restart cannot be ruled out.
fn restart_note(restarts: &[f64], explain: bool, missed: bool) -> String {
    if restarts.is_empty() {
        return if missed && explain {
            "; events from the controller were missed: the target may have restarted".to_string()
        } else {
            String::new()
        };
    }
    let at = restarts.iter().map(|s| format!("{s:.1} s")).collect::<Vec<_>>().join(", ");
    let why = if explain {
        ": a namespace that does not persist starts empty, and writes acknowledged before a restart may be lost (the \
         mismatches after it count all the same)"
    } else {
        ""
    };
    format!("; the target restarted (new instance ID) at {at}{why}")
}

/// Whether the run only reads: `read`, `randread`, or `randrw` with `--mix 100`.
fn reads_only(a: &Args) -> bool {
    matches!(a.workload, Workload::Read | Workload::Randread) || (a.workload == Workload::Randrw && a.mix == Some(100))
}

/// Whether the run only writes: `write`, `randwrite`, or `randrw` with `--mix 0`.
fn writes_only(a: &Args) -> bool {
    matches!(a.workload, Workload::Write | Workload::Randwrite) || (a.workload == Workload::Randrw && a.mix == Some(0))
}

/// Latencies in µs from 1 µs to an hour, 3 significant digits: the workers' shards and their sum.
fn latency_histogram() -> anyhow::Result<Histogram<u64>> {
    Ok(Histogram::<u64>::new_with_bounds(1, 3_600_000_000, 3)?)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn verify_header_round_trip_and_failures() {
        let mut b = BytesMut::new();
        fill_block(&mut b, 42, 7, 512);
        assert_eq!(b.len(), 512);
        assert_eq!(check_block(&b, 42, 7), None);
        assert!(check_block(&b, 42, 8).unwrap().contains("stale"));
        assert!(check_block(&b, 43, 7).unwrap().contains("holds the data of lba 42"));
        let mut c = b.to_vec();
        c[300] ^= 1;
        assert!(check_block(&c, 42, 7).unwrap().contains("checksum"));
        assert!(check_block(&[0u8; 512], 42, 7).unwrap().contains("no verify header"));
        // Different generations of one block differ beyond the header.
        let mut d = BytesMut::new();
        fill_block(&mut d, 42, 8, 512);
        assert_ne!(b[32..], d[32..]);
    }

    /// After two failed writes to a unit, the data of either may be there (the first may have landed, the
    /// second may never have been sent), or the last acknowledged; older data may not.
    #[test]
    fn every_write_that_failed_since_the_last_acknowledged_one_may_have_landed() {
        let sh = Shared::new(1);
        let block = |gen: u64| {
            let mut b = BytesMut::new();
            fill_block(&mut b, 42, gen, 512);
            b
        };
        sh.write_ended(0, 2, true);
        sh.write_ended(0, 3, true);
        sh.write_ended(0, 5, false);
        sh.write_ended(0, 9, false);
        for g in [3, 5, 9] {
            sh.check_unit(0, 42, &block(g), 512);
            assert_eq!(sh.mismatches.load(Ordering::Relaxed), 0, "generation {g}: {:?}", sh.first_problems.lock());
        }
        sh.check_unit(0, 42, &block(2), 512);
        assert_eq!(sh.mismatches.load(Ordering::Relaxed), 1, "generation 2 is older than the acknowledged 3");
        // A good write ends the uncertainty: only its data then.
        sh.write_ended(0, 11, true);
        sh.check_unit(0, 42, &block(5), 512);
        assert_eq!(sh.mismatches.load(Ordering::Relaxed), 2, "generation 5 after 11 was acknowledged");
    }

    /// The wait for the I/Os in flight after the run: a tenth of the run time, from 5 s to 60 s.
    #[test]
    fn the_grace_period_is_a_tenth_of_the_run_time_within_bounds() {
        use clap::Parser;
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            a: Args,
        }
        let grace_of = |more: &[&str]| {
            let base = ["bench", "--addr", "127.0.0.1:4420", "--nqn", "nqn.2026-01.io.holdfast:t"];
            grace(&Cli::try_parse_from(base.iter().chain(more)).unwrap().a)
        };
        let s = Duration::from_secs;
        assert_eq!(grace_of(&[]), s(5));
        assert_eq!(grace_of(&["--time", "2"]), s(5));
        assert_eq!(grace_of(&["--time", "300"]), s(30));
        assert_eq!(grace_of(&["--time", "3600"]), s(60));
        assert_eq!(grace_of(&["--size", "1048576"]), s(5));
        assert_eq!(grace_of(&["--size", "1048576", "--time", "120"]), s(12));
    }

    /// The longest stall is the longest time in which no I/O succeeded, an ongoing one included: a target that
    /// stopped answering for less than KATO, which the host never saw as an outage, stalls the run all the same.
    #[test]
    fn the_longest_stall_is_the_longest_time_without_a_success() {
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut c = StallClock::new(0, t0);
        assert_eq!(c.sample(3, at(10)), Duration::ZERO);
        assert_eq!(c.sample(9, at(20)), Duration::ZERO);
        for ms in (30..=3020).step_by(10) {
            c.sample(9, at(ms));
        }
        assert_eq!(c.sample(12, at(3030)), Duration::from_millis(3000), "3 s without a success");
        assert_eq!(c.sample(15, at(3040)), Duration::from_millis(3000));
        // A stall still going on counts as far as it went.
        assert_eq!(c.sample(15, at(7040)), Duration::from_millis(4000));
    }

    /// A unit this run never wrote before a write to it failed holds its old data or that write's: the old data
    /// may be anything, a block another run wrote with its own generation or the shared pattern of a run
    /// without --verify among them. Those used to be mismatches.
    #[test]
    fn after_a_failed_first_write_any_old_data_is_accepted() {
        let sh = Shared::new(1);
        sh.write_ended(0, 5, false);
        let mut other_run = BytesMut::new();
        fill_block(&mut other_run, 42, 3, 512);
        let mut pattern = BytesMut::new();
        fill_block(&mut pattern, 0, 0, 512);
        for old in [&other_run[..], &pattern[..], &[0u8; 512][..]] {
            sh.check_unit(0, 42, old, 512);
        }
        assert_eq!(sh.mismatches.load(Ordering::Relaxed), 0, "{:?}", sh.first_problems.lock());
    }
}
