//! Reservations (NVMe Base 2.0 §8.19, the commands in §7.2-7.5): Reservation Register, Report,
//! Acquire and Release, and the check every I/O command passes ([`Reservations::check`]).
//!
//! A namespace's registrants are hosts, known by their Host Identifier: every controller of a host (its
//! queues through any port, its association after a reconnect) shares its registration. The reservation has
//! a type and a holder; with an All Registrants type every registrant holds it. Preempt and Abort completes
//! once the preempted hosts' commands in flight have finished (as nvmet waits for them; they are not cut
//! short), and every I/O command checks the reservation again once it counts as in flight, so none of theirs
//! lands after it.
//!
//! Persist Through Power Loss (PTPL; RESCAP bit 0, Feature 83h, Register's CPTPL) for a namespace on a regular
//! file: while it is on, every change is written to `<file>.holdfast-pr` (a temporary file, fsync, rename,
//! fsync of the directory) before the command completes, and a target that opens the namespace again (a
//! restart, a reload) starts from it, so a cluster's fencing survives the target's restart. Otherwise the
//! registrations and the reservation live as long as the namespace does in this process.
//!
//! Reservation notices (log page 80h, the I/O Command Set Specific event) go to the hosts a change concerns
//! (`notices`). A reload that replaces a namespace under the same identifiers shares these reservations with
//! its successor ([`Reservations::rehome`]).

use crate::config::parse_hex;
use crate::controller::Controller;
use crate::namespace::Namespace;
use crate::request::{Deferred, Exec, Outcome, ParseResult, Request, Response};
use bytes::Bytes;
use holdfast_proto::reservation::{self as r, Registrant, ReservationReport, ReservationType};
use holdfast_proto::{Status, SubmissionEntry};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

/// Which reservation command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    /// Reservation Register (opcode 0Dh).
    Register,
    /// Reservation Report (0Eh).
    Report,
    /// Reservation Acquire (11h).
    Acquire,
    /// Reservation Release (15h).
    Release,
}

#[derive(Debug, Default, Clone, PartialEq)]
struct State {
    /// Persist Through Power Loss is on: the state is kept in the namespace's reservation file.
    ptpl: bool,
    /// Generation: moves with every registration, unregistration, key replacement, preemption and clear.
    gen: u32,
    /// Registrants in the order they registered: (Host Identifier, key).
    registrants: Vec<([u8; 16], u64)>,
    /// The reservation: its type and the host that holds it (with an All Registrants type, one of them; the
    /// reservation goes only with the last registrant).
    reservation: Option<(ReservationType, [u8; 16])>,
}

impl State {
    fn key_of(&self, host: &[u8; 16]) -> Option<u64> {
        self.registrants.iter().find(|(h, _)| h == host).map(|(_, k)| *k)
    }
    fn holds(&self, host: &[u8; 16]) -> bool {
        match self.reservation {
            Some((t, _)) if t.all_registrants() => self.key_of(host).is_some(),
            Some((_, h)) => h == *host,
            None => false,
        }
    }
    /// Remove `host`'s registration; the reservation goes with it if it held it (with an All Registrants type,
    /// only when no registrant is left).
    fn unregister(&mut self, host: &[u8; 16]) {
        self.registrants.retain(|(h, _)| h != host);
        if let Some((t, holder)) = self.reservation {
            if t.all_registrants() {
                match self.registrants.first() {
                    None => self.reservation = None,
                    Some((h, _)) if holder == *host => self.reservation = Some((t, *h)),
                    Some(_) => {}
                }
            } else if holder == *host {
                self.reservation = None;
            }
        }
    }
}

/// One namespace's registrations and reservation.
#[derive(Debug, Default)]
pub struct Reservations {
    /// True while there is a reservation: the I/O path's check is one load of this when there is none.
    reserved: AtomicBool,
    state: Mutex<State>,
    /// Held by a change from the state it starts from until it is published ([`Reservations::commit`]): changes
    /// one at a time, while the state lock is held only to read and to publish, never across the record's
    /// fsyncs (the I/O path's check takes it, on the connection's task, while a reservation is held). Lock
    /// order: `persist`, `state`, `file`.
    persist: Mutex<()>,
    /// The reservation file, for a namespace that can persist through power loss (one on a regular file).
    /// Changed only by [`Reservations::rehome`] (a reload that moves the namespace), under the state lock.
    file: Mutex<Option<PathBuf>>,
    /// The namespace's NGUID, written in the file: a file left by another namespace is not taken.
    nguid: [u8; 16],
}

/// The reservation file of a namespace whose data is the file `data`: `<data>.holdfast-pr`.
fn record_path(data: &Path) -> PathBuf {
    let mut name = data.as_os_str().to_owned();
    name.push(".holdfast-pr");
    PathBuf::from(name)
}

/// The reservation file's contents (TOML).
#[derive(Debug, Serialize, Deserialize)]
struct Saved {
    /// What wrote it.
    written_by: String,
    /// The namespace's NGUID (hex).
    nguid: String,
    generation: u32,
    /// The reservation's type (1..=6), if any, and its holder's Host Identifier (hex).
    reservation_type: Option<u8>,
    holder: Option<String>,
    /// Registrants: Host Identifier and key (hex: keys are 64 bits, TOML integers 63).
    #[serde(default)]
    registrant: Vec<SavedRegistrant>,
}

#[derive(Debug, Serialize, Deserialize)]
struct SavedRegistrant {
    host: String,
    key: String,
}

impl Reservations {
    /// The reservations of a namespace on the regular file `data` whose NGUID is `nguid`: persistable, and
    /// as its reservation file left them if there is one (with PTPL on). A file that cannot be read or is not
    /// this namespace's is an error naming it: starting without the fencing it records could let a fenced
    /// host write.
    pub fn persistable(data: &Path, nguid: [u8; 16]) -> anyhow::Result<Reservations> {
        let file = record_path(data);
        let pr = Reservations { file: Mutex::new(Some(file.clone())), nguid, ..Default::default() };
        let text = match std::fs::read_to_string(&file) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(pr),
            Err(e) => anyhow::bail!("{}: cannot read the reservation file: {e}", file.display()),
        };
        let bad = |why: String| anyhow::anyhow!("{}: {why} (remove it to start without reservations)", file.display());
        let saved: Saved =
            toml::from_str(&text).map_err(|e| bad(format!("not a reservation file: {}", e.message())))?;
        if parse_hex::<16>(&saved.nguid) != Some(nguid) {
            return Err(bad(format!("the reservations of another namespace (NGUID {})", saved.nguid)));
        }
        let mut st = State { ptpl: true, gen: saved.generation, ..Default::default() };
        for r in &saved.registrant {
            let host =
                parse_hex::<16>(&r.host).ok_or_else(|| bad(format!("host \"{}\" is not 32 hex digits", r.host)))?;
            let key = u64::from_str_radix(&r.key, 16).map_err(|_| bad(format!("key \"{}\" is not hex", r.key)))?;
            st.registrants.push((host, key));
        }
        st.reservation = match (saved.reservation_type, &saved.holder) {
            (None, _) => None,
            (Some(t), Some(h)) => Some((
                ReservationType::from_u8(t).ok_or_else(|| bad(format!("reservation type {t}")))?,
                parse_hex::<16>(h)
                    .filter(|h| st.key_of(h).is_some())
                    .ok_or_else(|| bad(format!("holder {h} is not a registrant")))?,
            )),
            (Some(_), None) => return Err(bad("a reservation without its holder".into())),
        };
        tracing::info!(
            file = %file.display(),
            registrants = st.registrants.len(),
            "reservations restored (persist through power loss): {}",
            st.reservation.map_or("no reservation".to_string(), |(t, h)| format!("{} held by host {}", t.name(), hex(&h)))
        );
        pr.publish(&st);
        *pr.state.lock() = st;
        Ok(pr)
    }

    /// A reload replaced the namespace under the same identifiers (grown, or moved to another file) and its
    /// successor shares these reservations (the same `Arc`: a command in flight on the old namespace changes
    /// what the new one checks, nothing is copied and lost): they now live beside `data` (None: where they
    /// cannot persist). Moved, the state is written there (or that file removed, with Persist Through Power
    /// Loss off) and the old file removed, so that neither a restart nor a move back finds a stale record;
    /// where nothing can persist, Persist Through Power Loss goes off. What there is, for the reload's notes.
    pub fn rehome(&self, data: Option<&Path>) -> String {
        let _one = self.persist.lock();
        let mut st = self.state.lock();
        let new = data.map(record_path);
        let mut file = self.file.lock();
        let mut note = String::new();
        if *file != new {
            let old = std::mem::replace(&mut *file, new.clone());
            drop(file);
            if new.is_none() && st.ptpl {
                st.ptpl = false;
                note.push_str(", persist through power loss off (nothing to keep them in here)");
            }
            if new.is_some() {
                if let Err(e) = self.write_file(&st) {
                    tracing::error!(file = ?new, "the reservations cannot be written to their new file: {e}");
                    st.ptpl = false;
                    note.push_str(", persist through power loss off (their file cannot be written)");
                }
            }
            if let Some(old) = old {
                if let Err(e) = std::fs::remove_file(&old) {
                    if e.kind() != std::io::ErrorKind::NotFound {
                        tracing::warn!(file = %old.display(), "the old reservation file cannot be removed: {e}");
                    }
                }
            }
        }
        format!(
            "{} registrant(s), {}{note}",
            st.registrants.len(),
            st.reservation.map_or("no reservation".to_string(), |(t, h)| format!(
                "{} held by host {}",
                t.name(),
                hex(&h)
            ))
        )
    }

    /// Whether it holds anything (a registration, a reservation, Persist Through Power Loss on).
    pub fn is_empty(&self) -> bool {
        *self.state.lock() == State::default()
    }

    /// Whether the namespace can persist its reservations (RESCAP bit 0).
    pub fn ptpl_capable(&self) -> bool {
        self.file.lock().is_some()
    }

    /// Whether Persist Through Power Loss is on (Feature 83h).
    pub fn ptpl(&self) -> bool {
        self.state.lock().ptpl
    }

    /// Set Features 83h: turn Persist Through Power Loss on or off.
    pub fn set_ptpl(&self, on: bool) -> Result<(), Status> {
        let _one = self.persist.lock();
        let before = self.state.lock().clone();
        self.commit(State { ptpl: on, ..before.clone() }, &before)
    }

    /// Keep `next`, changed from `before` (the state, as read under [`Reservations::persist`], which the
    /// caller holds): written to the reservation file first while PTPL is on (the file removed when it goes
    /// off), without the state lock; if that fails, the state stays `before` and the command fails. Then
    /// published.
    fn commit(&self, next: State, before: &State) -> Result<(), Status> {
        if next != *before && (next.ptpl || before.ptpl) {
            if let Err(e) = self.write_file(&next) {
                tracing::error!(file = ?self.file.lock(), "reservations not changed: the reservation file cannot be written: {e}");
                return Err(Status::INTERNAL_ERROR);
            }
        }
        let mut st = self.state.lock();
        *st = next;
        self.publish(&st);
        Ok(())
    }

    fn write_file(&self, st: &State) -> std::io::Result<()> {
        let Some(file) = self.file.lock().clone() else { return Err(std::io::Error::other("no reservation file")) };
        let file = &file;
        let dir = file.parent().filter(|d| !d.as_os_str().is_empty()).unwrap_or(Path::new("."));
        if !st.ptpl {
            // Removed durably, as it is written: otherwise a crash could bring back the older state it held.
            return match std::fs::remove_file(file) {
                Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(e),
                Err(_) => Ok(()),
                Ok(()) => std::fs::File::open(dir)?.sync_all(),
            };
        }
        let saved = Saved {
            written_by: concat!("holdfast ", env!("CARGO_PKG_VERSION")).into(),
            nguid: hex(&self.nguid),
            generation: st.gen,
            reservation_type: st.reservation.map(|(t, _)| t as u8),
            holder: st.reservation.map(|(_, h)| hex(&h)),
            registrant: st
                .registrants
                .iter()
                .map(|(h, k)| SavedRegistrant { host: hex(h), key: format!("{k:016x}") })
                .collect(),
        };
        let text = toml::to_string(&saved).map_err(std::io::Error::other)?;
        let mut tmp = file.as_os_str().to_owned();
        tmp.push(".tmp");
        let tmp = PathBuf::from(tmp);
        {
            use std::io::Write;
            let mut f = std::fs::File::create(&tmp)?;
            f.write_all(text.as_bytes())?;
            f.sync_all()?;
        }
        std::fs::rename(&tmp, file)?;
        std::fs::File::open(dir)?.sync_all()
    }

    /// Whether host `hostid` may run a command of the write group (`write`: Write, Write Zeroes, Dataset
    /// Management, Flush) or the read group (Read) on this namespace: Reservation Conflict (DNR) if the
    /// reservation's type keeps it out.
    #[inline]
    pub fn check(&self, hostid: &[u8; 16], write: bool) -> Result<(), Status> {
        if !self.reserved.load(Ordering::Acquire) {
            return Ok(());
        }
        self.check_reserved(hostid, write)
    }

    #[inline(never)]
    fn check_reserved(&self, hostid: &[u8; 16], write: bool) -> Result<(), Status> {
        let st = self.state.lock();
        match st.reservation {
            Some((t, _)) if !st.holds(hostid) && !t.allows(write, st.key_of(hostid).is_some()) => {
                Err(Status::RESERVATION_CONFLICT.with_dnr())
            }
            _ => Ok(()),
        }
    }

    fn publish(&self, st: &State) {
        self.reserved.store(st.reservation.is_some(), Ordering::Release);
    }
}

/// Parse a reservation command on namespace `ns` (found, and reachable through the controller's port): the
/// data it moves (the keys, 16 bytes or 8 for a Release; a Report, NUMD + 1 dwords) against its SGL.
pub fn parse(sqe: &SubmissionEntry, ns: Arc<Namespace>, cmd: Command) -> ParseResult {
    use crate::request::DataDir;
    let sgl = sqe.dptr.len() as usize;
    let (dir, len) = match cmd {
        Command::Report => {
            let numd = (sqe.cdw10.get() as usize + 1) * 4;
            if sqe.cdw11.get() & r::REPORT_EDS == 0 {
                // Hosts are known here by 128-bit Host Identifiers, which only the extended structure holds.
                return Err(Status::HOST_ID_INCONSISTENT.with_dnr());
            }
            if !(64..=crate::request::MAX_TRANSFER).contains(&numd) {
                return Err(Status::INVALID_FIELD.with_dnr());
            }
            if sgl != numd {
                return Err(Status::SGL_LENGTH_INVALID.with_dnr());
            }
            (DataDir::ToHost, numd)
        }
        Command::Release => (DataDir::ToController, 8),
        Command::Register | Command::Acquire => (DataDir::ToController, 16),
    };
    // The keys: at least the structure, at most a page (a host may send a longer buffer).
    if dir == DataDir::ToController && !(len..=4096).contains(&sgl) {
        return Err(Status::SGL_LENGTH_INVALID.with_dnr());
    }
    let len = if dir == DataDir::ToController { sgl } else { len };
    Ok(Request { sqe: *sqe, exec: Exec::Reservation { ns, cmd }, dir, len })
}

/// Run a parsed reservation command from `ctrl`'s host, `data` its keys. On a namespace whose reservations
/// are kept in a file (Persist Through Power Loss), a command that may change them runs off the connection's
/// task, on the namespace's I/O threads: writing the record takes two fsyncs, which on a slow disk held every
/// connection of the runtime (one thread when the target is pinned to a core).
pub fn execute(ctrl: &Arc<Controller>, req: &Request, data: Bytes) -> Outcome {
    let Exec::Reservation { ns, cmd } = &req.exec else { return Response::err(Status::INTERNAL_ERROR).into() };
    if *cmd == Command::Report {
        let st = ns.pr.state.lock();
        let report = ReservationReport {
            gen: st.gen,
            ptpls: st.ptpl,
            rtype: st.reservation.map(|(t, _)| t),
            registrants: st
                .registrants
                .iter()
                .map(|(h, k)| Registrant { hostid: *h, rkey: *k, holds: st.holds(h) })
                .collect(),
        };
        return Response::data(Bytes::from(report.to_bytes(req.len))).into();
    }
    let (cmd, cdw10) = (*cmd, req.sqe.cdw10.get());
    // Registrants are known by Host Identifier: a host that connected with none (0h) cannot be told from another
    // that did the same, and the two would be one registrant, each free to write under the other's reservation
    // and to replace its key. Such a host may read the report, and change nothing.
    if ctrl.hostid == [0; 16] {
        return Response::err(Status::COMMAND_SEQUENCE_ERROR.with_dnr()).into();
    }
    if ns.pr.ptpl_capable() {
        let (ctrl, ns, data) = (ctrl.clone(), ns.clone(), crate::request::detach_small(data));
        return Outcome::Later(Deferred::off_task(ns.clone(), move || match change(&ctrl, &ns, cmd, cdw10, &data) {
            Ok(preempted) => {
                wait_for_preempted(&ctrl.subsys, &preempted);
                Response::ok()
            }
            Err(s) => Response::err(s),
        }));
    }
    match change(ctrl, ns, cmd, cdw10, &data) {
        Ok(preempted) if !preempted.is_empty() => {
            let subsys = ctrl.subsys.clone();
            Outcome::Later(Deferred::off_task(ns.clone(), move || {
                wait_for_preempted(&subsys, &preempted);
                Response::ok()
            }))
        }
        Ok(_) => Response::ok().into(),
        Err(s) => Response::err(s).into(),
    }
}

/// Register, Acquire or Release (`cmd`, `cdw10` its dword 10, `data` its keys) on `ns` for `ctrl`'s host:
/// the state changed (and recorded, where it persists), the notices it owes other hosts raised. Ok: for a
/// Preempt and Abort, the hosts whose commands in flight must finish before it completes (none otherwise).
fn change(ctrl: &Controller, ns: &Namespace, cmd: Command, cdw10: u32, data: &[u8]) -> Result<Vec<[u8; 16]>, Status> {
    let host = ctrl.hostid;
    let pr = &ns.pr;
    let Some((crkey, other)) = r::ReservationKeys::parse(data) else {
        return Err(Status::SGL_LENGTH_INVALID.with_dnr());
    };
    let iekey = cdw10 & r::IEKEY != 0;
    let _one = pr.persist.lock();
    let before = pr.state.lock().clone();
    let mut st = before.clone();
    let mut result = match cmd {
        Command::Register => register(&mut st, &host, cdw10, iekey, crkey, other, pr.ptpl_capable()),
        Command::Acquire => acquire(&mut st, &host, cdw10, iekey, crkey, other),
        Command::Release => release(&mut st, &host, cdw10, iekey, crkey),
        Command::Report => Ok(()),
    };
    if result.is_err() {
        st = before.clone(); // a refused command changes nothing, whatever it had done before refusing
    }
    if let Err(e) = pr.commit(st.clone(), &before) {
        result = Err(e);
        st = before.clone();
    }
    if st.reservation != before.reservation {
        let now = st.reservation.map_or("none".to_string(), |(t, h)| format!("{} held by host {}", t.name(), hex(&h)));
        tracing::info!(subsys = %ctrl.subsys.nqn, nsid = ns.nsid, host = ?ctrl.hostnqn, "reservation: {now}");
    }
    // Preempt and Abort: the preempted hosts' commands in flight (on this target: every media access of their
    // controllers, and of their dead associations) finish before the command completes, so that none lands
    // after the preempting host is told it has the namespace. Their commands that enter after the change are
    // refused by the check `io::execute` makes once a command is in flight.
    let preempted: Vec<[u8; 16]> =
        before.registrants.iter().map(|(h, _)| *h).filter(|h| *h != host && st.key_of(h).is_none()).collect();
    let owed = if result.is_ok() { notices(&before, &st, &host, cmd) } else { Vec::new() };
    drop(_one);
    for (to, rnlpt) in owed {
        for c in ctrl.subsys.controllers().iter().filter(|c| c.hostid == to) {
            c.reservation_notice(rnlpt, ns.nsid);
        }
    }
    result?;
    let abort = cmd == Command::Acquire && r::action(cdw10) == r::RACQA_PREEMPT_AND_ABORT;
    Ok(if abort { preempted } else { Vec::new() })
}

/// The reservation notices (NVMe Base 2.0 §8.19.6, the Reservation Notification log page) that `host`'s `cmd`,
/// which changed `before` into `after`, owes other hosts: (Host Identifier, [`lp::rnlpt`] type). As Linux nvmet
/// sends them: a registration another host's Preempt removed, Registration Preempted; every registration a
/// Clear removed, Reservation Preempted; the reservation of a Registrants Only or All Registrants type
/// released (by a Release, or its holder leaving) or any reservation's type changed by a Preempt, Reservation
/// Released to the hosts still registered. Never to `host` itself.
fn notices(before: &State, after: &State, host: &[u8; 16], cmd: Command) -> Vec<([u8; 16], u8)> {
    use holdfast_proto::log_page as lp;
    let mut owed = Vec::new();
    let gone = before.registrants.iter().map(|(h, _)| *h).filter(|h| h != host && after.key_of(h).is_none());
    let kind = match cmd {
        Command::Acquire => Some(lp::rnlpt::REGISTRATION_PREEMPTED),
        Command::Release => Some(lp::rnlpt::RESERVATION_PREEMPTED), // a Clear: only it unregisters others
        _ => None,
    };
    if let Some(kind) = kind {
        owed.extend(gone.map(|h| (h, kind)));
    }
    let released = match (before.reservation, after.reservation) {
        (Some((t, _)), None) => !matches!(t, ReservationType::WriteExclusive | ReservationType::ExclusiveAccess),
        (Some((t, _)), Some((u, _))) => t != u,
        _ => false,
    };
    if released {
        owed.extend(
            after.registrants.iter().filter(|(h, _)| h != host).map(|(h, _)| (*h, lp::rnlpt::RESERVATION_RELEASED)),
        );
    }
    owed
}

/// Wait until the commands of the hosts `hosts` in flight on `subsys` (those of their live controllers that
/// began before the call, and all of their dead associations', which take no new ones) have finished: a
/// blocking thread's wait.
fn wait_for_preempted(subsys: &crate::subsystem::Subsystem, hosts: &[[u8; 16]]) {
    for c in subsys.controllers().iter().filter(|c| hosts.contains(&c.hostid)) {
        c.wait_for_earlier_media();
    }
    let start = std::time::Instant::now();
    let mut warned = false;
    while hosts.iter().map(|h| subsys.dead_inflight_of(h)).sum::<u64>() > 0 {
        if !warned && start.elapsed() > std::time::Duration::from_secs(10) {
            tracing::warn!(subsys = %subsys.nqn, "Preempt and Abort: still waiting for a preempted host's dead association");
            warned = true;
        }
        std::thread::sleep(std::time::Duration::from_millis(1));
    }
}

fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

const CONFLICT: Status = Status::RESERVATION_CONFLICT;

/// Reservation Register: register `nrkey`, unregister, or replace the key (CRKEY checked unless IEKEY); then
/// CPTPL: 10b turns Persist Through Power Loss off, 11b on, 01b is reserved. On a namespace that is not
/// `ptpl_capable` (RAM) 11b leaves it off, as nvmet does, and the report's PTPLS says so: the Linux host sets
/// 11b on every Register it sends for the kernel's persistent reservation calls (`nvme_pr_register`), which
/// would all fail there if it were refused.
fn register(
    st: &mut State,
    host: &[u8; 16],
    cdw10: u32,
    iekey: bool,
    crkey: u64,
    nrkey: u64,
    ptpl_capable: bool,
) -> Result<(), Status> {
    let cptpl = cdw10 >> 30;
    if cptpl == 0b01 {
        return Err(Status::INVALID_FIELD.with_dnr());
    }
    register_action(st, host, cdw10, iekey, crkey, nrkey)?;
    match cptpl {
        0b10 => st.ptpl = false,
        0b11 if ptpl_capable => st.ptpl = true,
        _ => {}
    }
    Ok(())
}

fn register_action(
    st: &mut State,
    host: &[u8; 16],
    cdw10: u32,
    iekey: bool,
    crkey: u64,
    nrkey: u64,
) -> Result<(), Status> {
    let mine = st.key_of(host);
    match r::action(cdw10) {
        r::RREGA_REGISTER => match mine {
            // Registering again with the key it has succeeds (the generation moves, as for every successful
            // Register, NVMe Base 2.0 Reservation Status data structure, GEN; nvmet counts it too); with another
            // key, a conflict.
            Some(k) if k == nrkey => {}
            Some(_) => return Err(CONFLICT.with_dnr()),
            None => st.registrants.push((*host, nrkey)),
        },
        r::RREGA_UNREGISTER => match mine {
            Some(k) if iekey || k == crkey => st.unregister(host),
            _ => return Err(CONFLICT.with_dnr()),
        },
        r::RREGA_REPLACE => match mine {
            Some(k) if iekey || k == crkey => {
                if let Some(e) = st.registrants.iter_mut().find(|(h, _)| h == host) {
                    e.1 = nrkey;
                }
            }
            // A host not registered has no key to replace, IEKEY or not (as nvmet answers).
            _ => return Err(CONFLICT.with_dnr()),
        },
        _ => return Err(Status::INVALID_FIELD.with_dnr()),
    }
    st.gen = st.gen.wrapping_add(1);
    Ok(())
}

/// Reservation Acquire: acquire, or preempt the holder or other registrants by their key (PRKEY).
fn acquire(st: &mut State, host: &[u8; 16], cdw10: u32, iekey: bool, crkey: u64, prkey: u64) -> Result<(), Status> {
    let Some(t) = r::ReservationType::from_u8(r::rtype(cdw10)) else { return Err(Status::INVALID_FIELD.with_dnr()) };
    if iekey {
        return Err(Status::INVALID_FIELD.with_dnr()); // IEKEY is for Register only (NVMe 1.3 and later)
    }
    if st.key_of(host) != Some(crkey) {
        return Err(CONFLICT.with_dnr());
    }
    match r::action(cdw10) {
        r::RACQA_ACQUIRE => match st.reservation {
            None => st.reservation = Some((t, *host)),
            Some((held, _)) if st.holds(host) && held == t => {}
            Some(_) => return Err(CONFLICT.with_dnr()),
        },
        r::RACQA_PREEMPT | r::RACQA_PREEMPT_AND_ABORT => {
            preempt(st, host, t, prkey)?;
            st.gen = st.gen.wrapping_add(1);
        }
        _ => return Err(Status::INVALID_FIELD.with_dnr()),
    }
    Ok(())
}

/// Preempt (NVMe Base 2.0 §8.19.7): without a reservation, or under an All Registrants one with a PRKEY other
/// than 0, the registrants with key PRKEY are unregistered (none: a conflict); PRKEY 0 under an All
/// Registrants reservation, or the holder's key, takes the reservation (type `t`) and unregisters the others
/// with that key (all others, for 0). A holder preempts itself by its own key (a new type, the others with
/// that key unregistered); with another key it fences the registrants that have it, keeping its reservation
/// as it is, as anyone's Preempt does, and with 0 it is Invalid Field. (SPDK's target takes it so; Linux
/// nvmet changed only the type whatever PRKEY said, so that a holder fencing a failed node by its key left
/// it registered, and able to write under a Registrants Only reservation.)
fn preempt(st: &mut State, host: &[u8; 16], t: ReservationType, prkey: u64) -> Result<(), Status> {
    let unregister_others_with = |st: &mut State, key: Option<u64>| {
        let gone: Vec<[u8; 16]> = st
            .registrants
            .iter()
            .filter(|(h, k)| h != host && key.is_none_or(|key| *k == key))
            .map(|(h, _)| *h)
            .collect();
        for h in &gone {
            st.unregister(h);
        }
        gone.len()
    };
    match st.reservation {
        Some((held, _)) if held.all_registrants() && prkey == 0 => {
            st.reservation = Some((t, *host));
            unregister_others_with(st, None);
        }
        Some((held, holder)) if !held.all_registrants() && st.key_of(&holder) == Some(prkey) => {
            st.reservation = Some((t, *host));
            unregister_others_with(st, Some(prkey));
        }
        // A reservation held by another host under a key that is not PRKEY, and PRKEY 0.
        Some(_) if prkey == 0 => return Err(Status::INVALID_FIELD.with_dnr()),
        _ => {
            // No reservation, or one not held with PRKEY: only registrations go. Unregistering the caller
            // itself by its own key is allowed too.
            let own = st.key_of(host) == Some(prkey);
            let n = unregister_others_with(st, Some(prkey));
            if own {
                st.unregister(host);
            }
            if n == 0 && !own {
                return Err(CONFLICT.with_dnr());
            }
        }
    }
    Ok(())
}

/// Reservation Release: release the reservation (type must match), or clear every registration.
fn release(st: &mut State, host: &[u8; 16], cdw10: u32, iekey: bool, crkey: u64) -> Result<(), Status> {
    if iekey {
        return Err(Status::INVALID_FIELD.with_dnr());
    }
    if st.key_of(host) != Some(crkey) {
        return Err(CONFLICT.with_dnr());
    }
    match r::action(cdw10) {
        r::RRELA_RELEASE => match st.reservation {
            // Releasing a reservation it does not hold (or none) is no change.
            Some((t, _)) if st.holds(host) => {
                if r::ReservationType::from_u8(r::rtype(cdw10)) != Some(t) {
                    return Err(Status::INVALID_FIELD.with_dnr());
                }
                st.reservation = None;
            }
            _ => {}
        },
        r::RRELA_CLEAR => {
            st.registrants.clear();
            st.reservation = None;
            st.gen = st.gen.wrapping_add(1);
        }
        _ => return Err(Status::INVALID_FIELD.with_dnr()),
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use ReservationType::*;

    const A: [u8; 16] = [0xA; 16];
    const B: [u8; 16] = [0xB; 16];
    const C: [u8; 16] = [0xC; 16];

    fn reg(st: &mut State, h: &[u8; 16], key: u64) {
        register(st, h, 0, false, 0, key, false).unwrap();
    }
    fn acq(action: u8, t: ReservationType) -> u32 {
        action as u32 | (t as u32) << 8
    }

    #[test]
    fn register_acquire_release_and_their_conflicts() {
        let mut st = State::default();
        reg(&mut st, &A, 1);
        reg(&mut st, &A, 1); // the same key again: succeeds, the registration unchanged, the generation moved
        assert_eq!(register(&mut st, &A, 0, false, 0, 2, false), Err(CONFLICT.with_dnr()), "another key");
        reg(&mut st, &B, 2);
        assert_eq!(st.gen, 3, "every successful Register moves the generation");
        assert_eq!(st.registrants, [(A, 1), (B, 2)]);
        // Acquire with a wrong key, then right; B cannot acquire over it; A again with its type is no change.
        assert_eq!(acquire(&mut st, &A, acq(0, WriteExclusive), false, 9, 0), Err(CONFLICT.with_dnr()));
        acquire(&mut st, &A, acq(0, WriteExclusive), false, 1, 0).unwrap();
        assert_eq!(acquire(&mut st, &B, acq(0, WriteExclusive), false, 2, 0), Err(CONFLICT.with_dnr()));
        acquire(&mut st, &A, acq(0, WriteExclusive), false, 1, 0).unwrap();
        assert_eq!(acquire(&mut st, &A, acq(0, ExclusiveAccess), false, 1, 0), Err(CONFLICT.with_dnr()));
        assert_eq!(st.gen, 3, "acquiring does not move the generation");
        // B releasing what it does not hold: no change. A releasing with the wrong type: Invalid Field.
        release(&mut st, &B, release_of(WriteExclusive), false, 2).unwrap();
        assert!(st.holds(&A));
        assert_eq!(release(&mut st, &A, release_of(ExclusiveAccess), false, 1), Err(Status::INVALID_FIELD.with_dnr()));
        release(&mut st, &A, release_of(WriteExclusive), false, 1).unwrap();
        assert_eq!(st.reservation, None);
        // Unregistering the holder releases; replace with IEKEY ignores the current key.
        acquire(&mut st, &A, acq(0, ExclusiveAccess), false, 1, 0).unwrap();
        register(&mut st, &A, 2 | r::IEKEY, true, 0, 7, false).unwrap();
        assert_eq!(register(&mut st, &C, 2 | r::IEKEY, true, 0, 7, false), Err(CONFLICT.with_dnr()), "C has no key");
        assert_eq!(st.key_of(&A), Some(7));
        assert!(st.holds(&A), "a new key keeps the reservation");
        register(&mut st, &A, 1, false, 7, 0, false).unwrap();
        assert_eq!((st.reservation, st.key_of(&A)), (None, None));
        let cptpl = |v: u32| v << 30;
        // Without PTPL (RAM), 11b (the Linux host's every Register) registers and leaves PTPL off.
        register(&mut st, &A, cptpl(3), false, 0, 1, false).unwrap();
        assert_eq!((st.key_of(&A), st.ptpl), (Some(1), false), "no PTPL");
        register(&mut st, &A, 1, false, 1, 0, false).unwrap();
        assert_eq!(register(&mut st, &A, cptpl(1), false, 0, 1, true), Err(Status::INVALID_FIELD.with_dnr()), "01b");
        register(&mut st, &A, cptpl(3), false, 0, 1, true).unwrap();
        assert!(st.ptpl);
    }

    /// A Release's CDW10 for type `t` (action 0, release).
    fn release_of(t: ReservationType) -> u32 {
        (t as u32) << 8
    }

    #[test]
    fn notices_go_to_the_hosts_a_change_concerns() {
        use holdfast_proto::log_page::rnlpt::*;
        let mut st = State::default();
        reg(&mut st, &A, 1);
        reg(&mut st, &B, 2);
        reg(&mut st, &C, 3);
        acquire(&mut st, &A, acq(0, WriteExclusiveRegistrantsOnly), false, 1, 0).unwrap();
        // C preempts the holder A, with another type: A's registration preempted; B, still registered, hears
        // that the reservation (of a Registrants Only type) was released; C nothing.
        let before = st.clone();
        acquire(&mut st, &C, acq(1, ExclusiveAccess), false, 3, 1).unwrap();
        let owed = notices(&before, &st, &C, Command::Acquire);
        assert_eq!(owed, vec![(A, REGISTRATION_PREEMPTED), (B, RESERVATION_RELEASED)]);
        // C releases Exclusive Access (neither Registrants Only nor All Registrants): nobody hears.
        let before = st.clone();
        release(&mut st, &C, (ExclusiveAccess as u32) << 8, false, 3).unwrap();
        assert_eq!(notices(&before, &st, &C, Command::Release), vec![]);
        // B takes Write Exclusive - Registrants Only and leaves (unregisters): C hears it was released.
        acquire(&mut st, &B, acq(0, WriteExclusiveRegistrantsOnly), false, 2, 0).unwrap();
        let before = st.clone();
        register(&mut st, &B, 1, false, 2, 0, false).unwrap();
        assert_eq!(notices(&before, &st, &B, Command::Register), vec![(C, RESERVATION_RELEASED)]);
        // A Clear: every other registrant hears Reservation Preempted.
        reg(&mut st, &A, 1);
        let before = st.clone();
        release(&mut st, &C, 1, false, 3).unwrap();
        assert_eq!(notices(&before, &st, &C, Command::Release), vec![(A, RESERVATION_PREEMPTED)]);
    }

    /// The holder's own Preempt (NVMe Base 2.0 §8.19.7): by another host's key it fences that host (unregistered,
    /// told so) and keeps its reservation as it was; by 0 it is Invalid Field; by its own key it takes a new
    /// type and unregisters the others that share its key. The first two used to change the type only: the
    /// fenced host stayed registered and could go on writing under a Registrants Only reservation.
    #[test]
    fn a_holder_preempting_another_key_fences_that_host() {
        let mut st = State::default();
        reg(&mut st, &A, 1);
        reg(&mut st, &B, 2);
        reg(&mut st, &C, 1);
        acquire(&mut st, &A, acq(0, WriteExclusiveRegistrantsOnly), false, 1, 0).unwrap();
        // What the I/O path checks (Reservations::check_reserved): may host `h` write?
        let may_write = |st: &State, h: &[u8; 16]| {
            st.holds(h) || st.reservation.is_none_or(|(t, _)| t.allows(true, st.key_of(h).is_some()))
        };
        assert!(may_write(&st, &B), "a registrant writes under Registrants Only");
        let before = st.clone();
        acquire(&mut st, &A, acq(1, ExclusiveAccess), false, 1, 2).unwrap();
        assert_eq!(st.key_of(&B), None, "B fenced");
        assert_eq!(st.reservation, Some((WriteExclusiveRegistrantsOnly, A)), "the reservation as it was");
        let told = notices(&before, &st, &A, Command::Acquire);
        assert_eq!(told, vec![(B, holdfast_proto::log_page::rnlpt::REGISTRATION_PREEMPTED)]);
        assert!(!may_write(&st, &B), "B may no longer write");
        assert_eq!(acquire(&mut st, &A, acq(1, ExclusiveAccess), false, 1, 0), Err(Status::INVALID_FIELD.with_dnr()));
        // By its own key: the new type, and C (key 1 too) unregistered.
        acquire(&mut st, &A, acq(1, ExclusiveAccess), false, 1, 1).unwrap();
        assert_eq!(st.reservation, Some((ExclusiveAccess, A)));
        assert_eq!(st.registrants.iter().map(|(h, _)| *h).collect::<Vec<_>>(), vec![A]);
    }

    #[test]
    fn preempt_takes_the_reservation_or_the_registrations() {
        let mut st = State::default();
        reg(&mut st, &A, 1);
        reg(&mut st, &B, 2);
        reg(&mut st, &C, 3);
        acquire(&mut st, &A, acq(0, WriteExclusiveRegistrantsOnly), false, 1, 0).unwrap();
        // C preempts by the holder's key: it holds, A's registration is gone, B's stays.
        acquire(&mut st, &C, acq(1, ExclusiveAccess), false, 3, 1).unwrap();
        assert_eq!(st.reservation, Some((ExclusiveAccess, C)));
        assert_eq!(st.registrants.iter().map(|(h, _)| *h).collect::<Vec<_>>(), vec![B, C]);
        // B preempts a key nobody has: conflict; by C's key while C holds: B takes it.
        assert_eq!(acquire(&mut st, &B, acq(1, WriteExclusive), false, 2, 99), Err(CONFLICT.with_dnr()));
        acquire(&mut st, &B, acq(2, WriteExclusive), false, 2, 3).unwrap();
        assert_eq!((st.reservation, st.registrants.len()), (Some((WriteExclusive, B)), 1));

        // All Registrants: every registrant holds; PRKEY 0 takes it alone and unregisters the others.
        let mut st = State::default();
        reg(&mut st, &A, 1);
        reg(&mut st, &B, 2);
        acquire(&mut st, &A, acq(0, ExclusiveAccessAllRegistrants), false, 1, 0).unwrap();
        assert!(st.holds(&A) && st.holds(&B));
        assert!(Reservations::default().check(&C, false).is_ok(), "no reservation: anything goes");
        // The holder A leaving keeps the reservation for B.
        register(&mut st, &A, 1, false, 1, 0, false).unwrap();
        assert_eq!(st.reservation.map(|(t, _)| t), Some(ExclusiveAccessAllRegistrants));
        assert!(st.holds(&B));
        reg(&mut st, &C, 3);
        acquire(&mut st, &C, acq(1, WriteExclusive), false, 3, 0).unwrap();
        assert_eq!((st.reservation, st.registrants.len()), (Some((WriteExclusive, C)), 1));
    }

    #[test]
    fn the_io_check_follows_the_type() {
        let pr = Reservations::default();
        {
            let mut st = pr.state.lock();
            reg(&mut st, &A, 1);
            reg(&mut st, &B, 2);
            acquire(&mut st, &A, acq(0, WriteExclusiveRegistrantsOnly), false, 1, 0).unwrap();
            pr.publish(&st);
        }
        assert_eq!(pr.check(&A, true), Ok(()), "the holder");
        assert_eq!(pr.check(&B, true), Ok(()), "a registrant");
        assert_eq!(pr.check(&C, false), Ok(()), "anyone reads");
        assert_eq!(pr.check(&C, true), Err(CONFLICT.with_dnr()), "a stranger writes");
        {
            let mut st = pr.state.lock();
            release(&mut st, &A, release_of(WriteExclusiveRegistrantsOnly), false, 1).unwrap();
            pr.publish(&st);
        }
        assert_eq!(pr.check(&C, true), Ok(()), "released");
    }
}
