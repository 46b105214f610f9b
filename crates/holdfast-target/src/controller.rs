//! A controller: the association between one host and one subsystem, created by the admin queue's Connect.
//! Holds CC/CSTS, the feature values, the keep-alive clock, outstanding Asynchronous Event Requests and the
//! events waiting for them, and the error log. Its queues are separate connection tasks that reach it through
//! an `Arc`; tearing it down cancels all of them at once.

use crate::backend::AssociationGate;
use crate::subsystem::{Subsystem, Target};
use holdfast_proto::fabrics::{cc, csts};
use holdfast_proto::features::{event_type, notice, AsyncEvent};
use holdfast_proto::log_page::{LID_ANA, LID_CHANGED_NS_LIST, LID_DISCOVERY, LID_RESERVATION_NOTIFICATION};
use holdfast_proto::policy::{AEN_INFO_POLICY_CHANGED, LID_HOLDFAST_POLICY};
use holdfast_proto::Status;
use parking_lot::Mutex;
use std::collections::VecDeque;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Most I/O queues a controller grants: 128, as Linux nvmet (NVMET_NR_QUEUES). A Linux host asks for one per
/// CPU plus any write and poll queues asked for, and gives what is granted to default queues first: with 64,
/// a host of 64 CPUs or more got none of the write or poll queues it asked for.
pub const MAX_IO_QUEUES: u16 = 128;
/// CAP.MQES + 1: the deepest queue a host may ask for.
pub const MAX_QUEUE_ENTRIES: u32 = 1024;
/// Admin queue depth a host may ask for (and ASQSZ in the discovery log).
pub const ADMIN_QUEUE_ENTRIES: u32 = 32;
/// Asynchronous Event Requests a controller holds (AERL + 1).
pub const MAX_AERS: usize = 4;
/// Error log entries kept (ELPE + 1).
pub const ERROR_LOG_ENTRIES: usize = 64;
/// Reservation notices a controller keeps unread at most (as Linux nvmet): a host that never reads them costs
/// no more.
pub const RESERVATION_NOTICES_MAX: usize = 64;
/// Keep Alive granularity advertised in KAS, in 100 ms units.
pub const KAS_100MS: u16 = 1;

/// An event for the admin queue's task: complete a held AER.
#[derive(Debug, Clone, Copy)]
pub struct AerCompletion {
    /// CID of the held AER.
    pub cid: u16,
    /// Completion dword 0 (event type, info, log page); None: the AER is dropped without a completion (a
    /// Controller Level Reset ended it).
    pub dw0: Option<u32>,
    /// [`CtrlState::resets`] when it was matched with its event: a completion matched before a reset that
    /// its queue has not sent yet is not sent (the event goes back for the AERs posted after the reset).
    pub resets: u64,
}

/// One Error Information log entry's content.
#[derive(Debug, Clone, Copy)]
pub struct ErrorRecord {
    /// Error count at the time.
    pub count: u64,
    /// Submission queue.
    pub sqid: u16,
    /// Command.
    pub cid: u16,
    /// Status.
    pub status: Status,
    /// Namespace, if any.
    pub nsid: u32,
    /// LBA, if any.
    pub lba: u64,
    /// The error is the transport's (a digest that did not match): the entry names the transport type.
    pub transport: bool,
}

/// One flush at a time per controller for its shutdown notifications ([`Controller::write_cc`]).
#[derive(Debug, Default, Clone, Copy)]
pub struct ShutdownFlush {
    /// A flush is running.
    pub running: bool,
    /// Another notification came while it ran: one more flush follows, covering every write before it.
    pub again: bool,
}

/// Feature values (NVMe Base 2.0 §5.27.1).
#[derive(Debug, Clone)]
pub struct Features {
    /// FID 01h.
    pub arbitration: u32,
    /// FID 02h.
    pub power_management: u32,
    /// FID 04h, by (TMPSEL, THSEL).
    pub temp_thresholds: [[u16; 2]; 9],
    /// FID 05h: the default; a namespace's is in [`CtrlState::error_recovery`] once set.
    pub error_recovery: u32,
    /// FID 06h: Volatile Write Cache enabled.
    pub write_cache: bool,
    /// FID 08h.
    pub irq_coalescing: u32,
    /// FID 0Ah.
    pub write_atomicity: u32,
    /// FID 0Bh.
    pub async_event_config: u32,
    /// FID 16h: Host Behavior Support data.
    pub host_behavior: [u8; 512],
    /// FID 80h.
    pub sw_progress: u32,
}

impl Default for Features {
    fn default() -> Self {
        let mut t = [[0u16; 2]; 9];
        t[0] = [0x0FFF, 0]; // over-temperature default: maximum, under-temperature 0 (Figure 294)
        Features {
            arbitration: 0,
            power_management: 0,
            temp_thresholds: t,
            error_recovery: 0,
            write_cache: true,
            irq_coalescing: 0,
            write_atomicity: 0,
            async_event_config: 0,
            host_behavior: [0; 512],
            sw_progress: 0,
        }
    }
}

/// Mutable controller state.
pub struct CtrlState {
    /// Controller Configuration.
    pub cc: u32,
    /// Controller Status.
    pub csts: u32,
    /// Features.
    pub features: Features,
    /// I/O queues granted (count, not 0's based): [`MAX_IO_QUEUES`], what Get Features Number of Queues
    /// reports as the default, until the host's Set Features asks for fewer. A host may connect I/O queues
    /// without asking (Linux nvmet checks only its subsystem's maximum).
    pub io_queues_granted: u16,
    /// Set Features Number of Queues has allocated [`CtrlState::io_queues_granted`]: a later one answers the
    /// same (the allocation does not change until a reset, NVMe Base 2.0 §5.27.1.5).
    pub io_queues_allocated: bool,
    /// Set once an I/O queue connected (Number of Queues may no longer change).
    pub io_queue_connected: bool,
    /// I/O queue IDs bound to a live connection: a second Connect for one of them is refused (as Linux's
    /// nvmet does: the queue exists already). Cleared as each queue's connection ends.
    pub live_qids: std::collections::BTreeSet<u16>,
    /// CIDs of held AERs.
    pub aers: VecDeque<u16>,
    /// Events waiting for an AER (completion dword 0).
    pub pending_events: VecDeque<u32>,
    /// Event types (by log page) reported and not yet cleared by reading the log page.
    pub masked_logs: Vec<u8>,
    /// Namespaces changed since the Changed Namespace List was last read.
    pub changed_nsids: Vec<u32>,
    /// Reservation notices not yet read (Reservation Notification log page), oldest first: (Log Page Count,
    /// type, NSID). At most [`RESERVATION_NOTICES_MAX`]; the count of every notice raised since, kept or not.
    pub resv_notices: VecDeque<(u64, u8, u32)>,
    /// The Log Page Count of the last reservation notice raised.
    pub resv_count: u64,
    /// Reservation Notification Mask (Feature 82h) of each namespace that has one set.
    pub resv_masks: std::collections::HashMap<u32, u32>,
    /// Error Recovery (Feature 05h, namespace specific) of each namespace that has one set.
    pub error_recovery: std::collections::HashMap<u32, u32>,
    /// Error log, newest first.
    pub errors: VecDeque<ErrorRecord>,
    /// Total errors ever logged.
    pub error_count: u64,
    /// Admin queue task's AER channel.
    pub aer_tx: Option<mpsc::UnboundedSender<AerCompletion>>,
    /// The shutdown notifications' flush of the file namespaces ([`Controller::write_cc`]).
    pub shutdown_flush: ShutdownFlush,
    /// A Controller Level Reset (CC.EN 1 to 0) is under way: its I/O queues are closing and the commands they
    /// had on the media finishing, and CSTS.RDY still reads 1 until both are done ([`Controller::csts`]).
    /// The fenced gates of those queues, to wait for.
    pub resetting: Option<Vec<Arc<AssociationGate>>>,
    /// Controller Level Resets so far ([`AerCompletion::resets`]).
    pub resets: u64,
}

/// A controller.
pub struct Controller {
    /// Controller ID.
    pub cntlid: u16,
    /// Its subsystem.
    pub subsys: Arc<Subsystem>,
    /// The target.
    pub target: Arc<Target>,
    /// Host NQN from Connect.
    pub hostnqn: String,
    /// Host ID from Connect.
    pub hostid: [u8; 16],
    /// Port the admin queue came in on.
    pub port_id: u16,
    /// The ANA states of every group through that port ([`crate::ana`]), read by each I/O command.
    pub ana: Arc<crate::ana::PortAna>,
    /// Local address of the admin connection (discovery reports it for wildcard listeners).
    pub local_addr: SocketAddr,
    /// The host's address on the admin connection.
    pub peer_addr: SocketAddr,
    /// When it was created ([`Target::now_ms`]).
    pub created_ms: u64,
    /// Keep Alive Timeout in ms (0 = disabled).
    pub kato_ms: AtomicU32,
    /// Notified when Set Features changes KATO: the keep-alive watchdog re-arms with the new value at once.
    pub kato_changed: tokio::sync::Notify,
    last_activity_ms: AtomicU64,
    /// State behind a lock (admin path only; the I/O path never takes it).
    pub state: Mutex<CtrlState>,
    /// Cancelled when the controller is torn down: every queue task exits.
    pub cancel: CancellationToken,
    torn_down: AtomicBool,
    /// Random, and so different for every controller ever created (across restarts too): with the CNTLID, names
    /// this association in a Fence Association ([`crate::cmd::admin::fence_association`]), even after the
    /// CNTLID was given to another. Reported in Identify Controller's vendor-specific area.
    pub uniquifier: u64,
    /// The media gates of the queues bound to this controller, with their queue IDs ([`Controller::bind_gate`]):
    /// killed by the teardown itself (the I/O queues' by a reset too), not by each queue task when it gets
    /// round to exiting.
    gates: Mutex<Vec<(u16, std::sync::Weak<AssociationGate>)>>,
    /// Cancelled by a Controller Level Reset (and with `cancel`): the I/O queues connected before it close.
    /// A child of `cancel`, replaced by a fresh one at each reset for the queues connected after it.
    io_cancel: Mutex<CancellationToken>,
    /// CSTS.RDY, mirrored out of `state` for the I/O path.
    ready: AtomicBool,
    /// Volatile write cache disabled (Set Features 06h): writes are made durable before completion.
    /// Mirrored out of `state` for the I/O path.
    pub write_through: AtomicBool,
}

impl Controller {
    /// A new, disabled controller.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cntlid: u16,
        subsys: Arc<Subsystem>,
        target: Arc<Target>,
        hostnqn: String,
        hostid: [u8; 16],
        port_id: u16,
        local_addr: SocketAddr,
        peer_addr: SocketAddr,
        kato_ms: u32,
    ) -> Arc<Self> {
        let now = target.now_ms();
        let cancel = CancellationToken::new();
        let ana = target.ana.port(port_id);
        Arc::new(Controller {
            cntlid,
            subsys,
            target,
            hostnqn,
            hostid,
            port_id,
            ana,
            local_addr,
            peer_addr,
            created_ms: now,
            kato_ms: AtomicU32::new(kato_ms),
            kato_changed: tokio::sync::Notify::new(),
            last_activity_ms: AtomicU64::new(now),
            gates: Mutex::new(Vec::new()),
            uniquifier: rand::random::<u64>() | 1,
            state: Mutex::new(CtrlState {
                cc: 0,
                csts: 0,
                features: Features::default(),
                io_queues_granted: MAX_IO_QUEUES,
                io_queue_connected: false,
                live_qids: std::collections::BTreeSet::new(),
                aers: VecDeque::new(),
                pending_events: VecDeque::new(),
                masked_logs: Vec::new(),
                changed_nsids: Vec::new(),
                resv_notices: VecDeque::new(),
                resv_count: 0,
                resv_masks: std::collections::HashMap::new(),
                error_recovery: std::collections::HashMap::new(),
                io_queues_allocated: false,
                errors: VecDeque::new(),
                error_count: 0,
                aer_tx: None,
                shutdown_flush: ShutdownFlush::default(),
                resetting: None,
                resets: 0,
            }),
            io_cancel: Mutex::new(cancel.child_token()),
            cancel,
            torn_down: AtomicBool::new(false),
            ready: AtomicBool::new(false),
            write_through: AtomicBool::new(false),
        })
    }

    /// Note traffic: any command resets the keep-alive clock (as traffic-based keep-alive would; CTRATT.TBKAS
    /// itself is not advertised, see `cmd::admin::identify_controller`).
    #[inline]
    pub fn touch(&self) {
        self.last_activity_ms.store(self.target.now_ms(), Ordering::Relaxed);
    }

    /// True if enabled and ready.
    pub fn ready(&self) -> bool {
        self.ready.load(Ordering::Acquire)
    }

    /// I/O queues bound to it and live (connected, not fenced by a reset or the teardown).
    pub fn io_queues(&self) -> usize {
        self.gates.lock().iter().filter(|(qid, g)| *qid != 0 && g.upgrade().is_some_and(|g| !g.is_dead())).count()
    }

    /// True once torn down.
    pub fn is_torn_down(&self) -> bool {
        self.torn_down.load(Ordering::SeqCst)
    }

    /// Apply a CC write (NVMe Base 2.0 §3.6.1 and §3.6.2): EN 0→1 sets CSTS.RDY (after checking the queue
    /// entry sizes), EN 1→0 is a Controller Level Reset (the I/O queues close; CSTS.RDY reads 0 once they are gone
    /// and their commands off the media, [`Controller::csts`]), SHN starts a shutdown, complete once the file namespaces'
    /// volatile write cache (the page cache) is on the media. Returns Err for an invalid CC value.
    pub fn write_cc(self: &Arc<Self>, new: u32) -> Result<(), Status> {
        // Looked up before the state lock is taken (the namespace table has its own lock), and only for a
        // shutdown notification.
        let flush = new & cc::SHN_MASK != 0 && self.subsys.has_file_namespaces();
        let mut st = self.state.lock();
        let old = st.cc;
        if new & cc::EN != 0 && old & cc::EN == 0 {
            // Enabling: I/O queue entry sizes must be 64/16 bytes on an I/O controller, MPS 4 KiB, NVM set,
            // round robin arbitration (CAP.AMS advertises no other; as Linux nvmet, a controller enabled with
            // a setting it does not support reports Controller Fatal Status instead of ready).
            let io_ok = self.subsys.is_discovery || (cc::iosqes(new) == 6 && cc::iocqes(new) == 4);
            if !io_ok || cc::mps(new) != 0 || cc::css(new) != 0 || cc::ams(new) != 0 {
                // (During a reset not yet seen done CSTS then reads RDY and CFS until it is; `ready` stays
                // false either way.)
                st.csts |= csts::CFS;
                st.cc = new;
                return Ok(());
            }
            st.csts = (st.csts & !csts::SHST_MASK) | csts::RDY;
            // Enabled again before the reset was seen done (a host that did not wait for CSTS.RDY 0): what is
            // left of it goes on in the background, fenced.
            st.resetting = None;
        } else if new & cc::EN == 0 && old & cc::EN != 0 {
            // A Controller Level Reset (NVMe Base 2.0 §3.7.2): the controller stops processing commands and its
            // I/O queues are deleted. Their connections close now, and what they had not started on the media
            // never lands; CSTS.RDY reads 0 once those queues are gone and what they had on the media has
            // finished ([`Controller::csts`]), so that nothing of theirs lands after the host has seen the
            // reset done (and issued anything anew). SPDK's target does the same; Linux nvmet leaves the I/O
            // queues connected. Commands on any queue are refused meanwhile (`ready`, below).
            st.csts &= !csts::CFS;
            let gates = self.fence_queues(|qid| qid != 0);
            std::mem::replace(&mut *self.io_cancel.lock(), self.cancel.child_token()).cancel();
            st.resetting = Some(gates);
            st.resets += 1;
            // No I/O queue exists now: Number of Queues may be set again, as during any initialization.
            st.io_queue_connected = false;
            st.io_queues_allocated = false;
            // The held Asynchronous Event Requests end too, without a completion: the host posts new ones once
            // it enabled the controller again, and may have given their CIDs to other commands by then.
            let resets = st.resets;
            for cid in std::mem::take(&mut st.aers) {
                if let Some(tx) = &st.aer_tx {
                    let _ = tx.send(AerCompletion { cid, dw0: None, resets });
                }
            }
        }
        if new & cc::SHN_MASK != 0 && old & cc::SHN_MASK == 0 {
            // Every completed write is already on the backend, but a file namespace's may still be in the page
            // cache: the shutdown flushes them (fdatasync on the namespaces' I/O threads, never on this task)
            // and says "occurring" meanwhile, as a drive writes its cache back before it reports the shutdown
            // complete. RAM namespaces have nothing to write back.
            // One flush at a time per controller: a host toggling SHN asks for one more after the running one
            // (which may have started before writes it must cover), never for one per toggle (a peer looping
            // Property Set queued millions of blocking jobs).
            match tokio::runtime::Handle::try_current() {
                Ok(rt) if flush => {
                    st.csts = (st.csts & !csts::SHST_MASK) | csts::SHST_OCCURRING;
                    if st.shutdown_flush.running {
                        st.shutdown_flush.again = true;
                    } else {
                        st.shutdown_flush.running = true;
                        let ctrl = self.clone();
                        rt.spawn_blocking(move || loop {
                            // A failure is logged; the shutdown still completes (NVMe has no failed shutdown).
                            let _ = ctrl.subsys.flush_namespaces();
                            let mut st = ctrl.state.lock();
                            if std::mem::take(&mut st.shutdown_flush.again) {
                                continue;
                            }
                            st.shutdown_flush.running = false;
                            if st.cc & cc::SHN_MASK != 0 && st.csts & csts::SHST_MASK == csts::SHST_OCCURRING {
                                st.csts = (st.csts & !csts::SHST_MASK) | csts::SHST_COMPLETE;
                            }
                            return;
                        });
                    }
                }
                _ => st.csts = (st.csts & !csts::SHST_MASK) | csts::SHST_COMPLETE,
            }
        } else if new & cc::SHN_MASK == 0 {
            st.csts &= !csts::SHST_MASK;
        }
        st.cc = new;
        self.ready.store(st.csts & csts::RDY != 0 && st.resetting.is_none(), Ordering::Release);
        Ok(())
    }

    /// CSTS as a Property Get reads it: a reset under way ([`CtrlState::resetting`]) ends here, CSTS.RDY
    /// going to 0, once the I/O queues it closes are gone and their commands off the media.
    pub fn csts(&self) -> u32 {
        let mut st = self.state.lock();
        let done =
            st.resetting.as_ref().is_some_and(|g| st.live_qids.is_empty() && g.iter().all(|g| g.inflight() == 0));
        if done {
            st.resetting = None;
            st.csts &= !csts::RDY;
        }
        st.csts
    }

    /// The token an I/O queue connected now watches: cancelled by the next Controller Level Reset or the
    /// teardown.
    pub fn io_queues_cancel(&self) -> CancellationToken {
        self.io_cancel.lock().clone()
    }

    /// Record a failed command for the Error Information log (NVMe Base 2.0 §5.16.1.2): its queue, CID,
    /// status, namespace and, for a command that addresses LBAs, its starting LBA. Called for every completion
    /// that failed, once, by the transport, which sees them all ([`crate::transport::tcp`]). A success, or an
    /// Aborted SQ Deletion (the command did not fail: its association ended), logs nothing.
    ///
    /// Returns the status the completion carries: with More set when an entry was made (NVMe Base 2.0
    /// Figure 96: More says the log has information for this command; Linux nvmet sets it the same way).
    #[must_use]
    #[inline]
    pub fn log_error(
        &self,
        sqid: u16,
        sqe: &holdfast_proto::SubmissionEntry,
        status: Status,
        transport: bool,
    ) -> Status {
        if status.is_success() || status.code() == Status::ABORTED_SQ_DELETION {
            return status;
        }
        self.log_failed(sqid, sqe, status, transport)
    }

    /// [`Controller::log_error`] for a status that is logged (kept out of line: every success passes through).
    #[cold]
    fn log_failed(&self, sqid: u16, sqe: &holdfast_proto::SubmissionEntry, status: Status, transport: bool) -> Status {
        use holdfast_proto::opcode::io;
        let lba = match sqe.opcode {
            io::READ | io::WRITE | io::WRITE_ZEROES | io::COMPARE | io::VERIFY if sqid != 0 => {
                holdfast_proto::sqe::rw::slba(sqe)
            }
            _ => 0,
        };
        let (cid, nsid) = (sqe.cid(), sqe.nsid());
        self.subsys.stats.failed_cmds.fetch_add(1, Ordering::Relaxed);
        let mut st = self.state.lock();
        st.error_count += 1;
        let count = st.error_count;
        st.errors.push_front(ErrorRecord { count, sqid, cid, status, nsid, lba, transport });
        st.errors.truncate(ERROR_LOG_ENTRIES);
        status.with_more()
    }

    /// Queue an asynchronous event (completion dword 0) for log page `lid`, if the host enabled events of
    /// this kind (`config_bit` of Asynchronous Event Configuration; None = always) and the same log page is
    /// not already reported and unread.
    pub fn raise_event(&self, dw0: u32, lid: u8, config_bit: Option<u32>) {
        let mut st = self.state.lock();
        if let Some(bit) = config_bit {
            if st.features.async_event_config & (1 << bit) == 0 {
                return;
            }
        }
        if st.masked_logs.contains(&lid) {
            return;
        }
        st.masked_logs.push(lid);
        st.pending_events.push_back(dw0);
        Self::deliver(&mut st);
    }

    /// Pair pending events with held AERs.
    pub fn deliver(st: &mut CtrlState) {
        while !st.aers.is_empty() && !st.pending_events.is_empty() {
            let (Some(cid), Some(dw0)) = (st.aers.pop_front(), st.pending_events.pop_front()) else { break };
            if let Some(tx) = &st.aer_tx {
                let _ = tx.send(AerCompletion { cid, dw0: Some(dw0), resets: st.resets });
            }
        }
    }

    /// The host reads log page `lid` without RAE: events of that kind may be reported again.
    pub fn unmask_log(&self, lid: u8) {
        self.state.lock().masked_logs.retain(|l| *l != lid);
    }

    /// The host has read log page `lid` (without RAE, which [`Controller::unmask_log`] saw before the page
    /// was taken): a notice of it raised before that and still waiting for an AER is dropped (delivered now,
    /// it would be a second notice of what the host has just read). One raised since (the log is masked
    /// again: while masked none is raised, so there is at most one) stays: it may be of a change the page
    /// did not hold.
    pub fn log_read(&self, lid: u8) {
        let mut st = self.state.lock();
        let of_lid = |dw0: &u32| AsyncEvent::from_dword(*dw0).log_page == lid;
        let keep_last = st.masked_logs.contains(&lid);
        let mut left = st.pending_events.iter().filter(|d| of_lid(d)).count().saturating_sub(usize::from(keep_last));
        st.pending_events.retain(|d| {
            if left > 0 && of_lid(d) {
                left -= 1;
                return false;
            }
            true
        });
    }

    /// Asynchronous Event Configuration changed to `enabled`: events of a class now off that still wait for
    /// an AER are dropped (and their logs unmasked, so that the class reports again once it is back on).
    pub fn event_classes_changed(st: &mut CtrlState, enabled: u32) {
        let off = |lid: u8| match lid {
            LID_CHANGED_NS_LIST => enabled & (1 << 8) == 0,
            LID_ANA => enabled & (1 << 11) == 0,
            LID_DISCOVERY => enabled & (1 << 31) == 0,
            _ => false,
        };
        let dropped: Vec<u8> =
            st.pending_events.iter().map(|&dw0| AsyncEvent::from_dword(dw0).log_page).filter(|&lid| off(lid)).collect();
        st.pending_events.retain(|&dw0| !off(AsyncEvent::from_dword(dw0).log_page));
        st.masked_logs.retain(|l| !dropped.contains(l));
    }

    /// Namespaces of the subsystem were attached, detached or changed: add them to the Changed Namespace
    /// List and send a Namespace Attribute Changed notice (if enabled by Asynchronous Event Configuration
    /// bit 8).
    pub fn namespaces_changed(&self, nsids: &[u32]) {
        {
            let mut st = self.state.lock();
            for n in nsids {
                if !st.changed_nsids.contains(n) {
                    st.changed_nsids.push(*n);
                }
            }
        }
        let ev =
            AsyncEvent { event_type: event_type::NOTICE, info: notice::NS_ATTR_CHANGED, log_page: LID_CHANGED_NS_LIST };
        self.raise_event(ev.to_dword(), LID_CHANGED_NS_LIST, Some(8));
    }

    /// Another host's reservation command concerns this controller's host: a notice of type `rnlpt`
    /// ([`holdfast_proto::log_page::rnlpt`]) for namespace `nsid`, unless the host masked that type for it
    /// (Feature 82h). Kept for the Reservation Notification log page (the oldest
    /// [`RESERVATION_NOTICES_MAX`]; one over that is lost, its count skipped, as the page's count shows), and
    /// an I/O Command Specific event says a notice is there (NVMe Base 2.0 §8.19.6).
    pub fn reservation_notice(&self, rnlpt: u8, nsid: u32) {
        {
            let mut st = self.state.lock();
            if st.resv_masks.get(&nsid).copied().unwrap_or(0) & holdfast_proto::features::resv_mask::of(rnlpt) != 0 {
                return;
            }
            st.resv_count = st.resv_count.checked_add(1).unwrap_or(1);
            if st.resv_notices.len() < RESERVATION_NOTICES_MAX {
                let count = st.resv_count;
                st.resv_notices.push_back((count, rnlpt, nsid));
            }
        }
        let ev = AsyncEvent {
            event_type: event_type::IO_SPECIFIC,
            info: holdfast_proto::features::io_specific::RESERVATION_LOG_AVAILABLE,
            log_page: LID_RESERVATION_NOTIFICATION,
        };
        self.raise_event(ev.to_dword(), LID_RESERVATION_NOTIFICATION, None);
    }

    /// The Reservation Notification log page: the oldest notice, taken (all zeroes, Empty, when there is none).
    pub fn take_reservation_notice(&self) -> holdfast_proto::log_page::ReservationNotification {
        use zerocopy::FromZeros;
        let mut page = holdfast_proto::log_page::ReservationNotification::new_zeroed();
        let mut st = self.state.lock();
        if let Some((count, rnlpt, nsid)) = st.resv_notices.pop_front() {
            page.lpc.set(count);
            page.rnlpt = rnlpt;
            page.nalp = st.resv_notices.len().min(255) as u8;
            page.nsid.set(nsid);
        }
        page
    }

    /// An ANA group's state through this controller's port changed, or a namespace moved between groups:
    /// Asymmetric Namespace Access Change notice (Asynchronous Event Configuration bit 11).
    pub fn ana_changed(&self) {
        let ev = AsyncEvent { event_type: event_type::NOTICE, info: notice::ANA_CHANGE, log_page: LID_ANA };
        self.raise_event(ev.to_dword(), LID_ANA, Some(11));
    }

    /// The discovery log changed: Discovery Log Page Change notice (Asynchronous Event Configuration bit 31).
    pub fn discovery_changed(&self) {
        let ev = AsyncEvent { event_type: event_type::NOTICE, info: notice::DISCOVERY_CHANGE, log_page: LID_DISCOVERY };
        self.raise_event(ev.to_dword(), LID_DISCOVERY, Some(31));
    }

    /// The connection policy changed: a vendor-specific notice pointing at the policy log page, always
    /// sent (hosts that do not know it ignore vendor events).
    pub fn raise_policy_changed(&self) {
        let ev =
            AsyncEvent { event_type: event_type::VENDOR, info: AEN_INFO_POLICY_CHANGED, log_page: LID_HOLDFAST_POLICY };
        self.raise_event(ev.to_dword(), LID_HOLDFAST_POLICY, None);
    }

    /// Block until every media access of this controller's queues that began before the call has finished
    /// ([`AssociationGate::wait_for_earlier`]; a blocking thread's wait).
    pub fn wait_for_earlier_media(&self) {
        let gates: Vec<_> = self.gates.lock().iter().filter_map(|(_, g)| g.upgrade()).collect();
        for g in gates {
            g.wait_for_earlier();
        }
    }

    /// Note that queue `qid`, bound to this controller, passes its media accesses through `gate`, so that the
    /// teardown fences them (README, No stale writes), and a Controller Level Reset those of the I/O queues. A queue bound
    /// after the teardown began has its gate killed here.
    pub fn bind_gate(&self, qid: u16, gate: &Arc<AssociationGate>) {
        {
            let mut g = self.gates.lock();
            g.retain(|(_, w)| w.strong_count() > 0);
            g.push((qid, Arc::downgrade(gate)));
        }
        // After the push: a teardown that took the list before it has set `torn_down` before taking it.
        if self.torn_down.load(Ordering::SeqCst) {
            self.fence_gate(gate);
        }
    }

    /// Close `gate` (one of this controller's queues): its commands that have not touched media never will,
    /// and what it still has in flight is registered with the subsystem as this host's dead association, for
    /// a reconnecting host to wait for (README, No stale writes).
    pub fn fence_gate(&self, gate: &Arc<AssociationGate>) {
        gate.kill();
        self.subsys.add_dead_association(&self.hostnqn, self.hostid, gate.clone());
    }

    /// Fence the gates of the live queues whose IDs `which` picks ([`Controller::fence_gate`]); those gates.
    fn fence_queues(&self, which: impl Fn(u16) -> bool) -> Vec<Arc<AssociationGate>> {
        let gates: Vec<_> =
            self.gates.lock().iter().filter(|(qid, _)| which(*qid)).filter_map(|(_, g)| g.upgrade()).collect();
        for g in &gates {
            self.fence_gate(g);
        }
        gates
    }

    /// Tear the association down: every queue's media gate is killed now (commands that have not touched
    /// media yet never will) and what is still in flight is registered with the subsystem, so that a new
    /// association of this host waits for it (README, No stale writes: the fence holds from this moment, not from when
    /// each queue task gets round to exiting); then every queue is cancelled and the controller forgotten.
    /// Idempotent.
    pub fn teardown(&self, reason: &str) {
        if self.torn_down.swap(true, Ordering::SeqCst) {
            return;
        }
        self.fence_queues(|_| true);
        self.cancel.cancel();
        self.subsys.remove_controller(self.cntlid);
        if !self.subsys.is_discovery || crate::peer_log::allow() {
            tracing::info!(cntlid = self.cntlid, subsys = %self.subsys.nqn, host = ?self.hostnqn, "controller torn down: {reason}");
        }
    }

    /// Run the keep-alive watchdog until the controller is torn down: no command within KATO (plus the
    /// granularity) tears it down (NVMe Base 2.0 §3.9.4).
    pub async fn keep_alive_watchdog(self: Arc<Self>) {
        loop {
            let kato = self.kato_ms.load(Ordering::Relaxed) as u64;
            let wait = if kato == 0 { 1000 } else { kato + KAS_100MS as u64 * 100 };
            let since = self.target.now_ms().saturating_sub(self.last_activity_ms.load(Ordering::Relaxed));
            let sleep = if kato != 0 && since >= wait { 0 } else { wait.saturating_sub(since).max(50) };
            if sleep == 0 {
                // A host that went silent (its machine gone, a path blackholed): a warning an operator looks for,
                // with where it was.
                if !self.subsys.is_discovery {
                    tracing::warn!(
                        cntlid = self.cntlid, subsys = %self.subsys.nqn, host = ?self.hostnqn, peer = %self.peer_addr,
                        "the host stopped answering: keep-alive timer expired (KATO {kato} ms, no command for {since} ms)"
                    );
                }
                self.teardown(&format!("keep-alive timer expired (KATO {kato} ms, no command for {since} ms)"));
                return;
            }
            tokio::select! {
                _ = tokio::time::sleep(Duration::from_millis(sleep)) => {}
                // A lower KATO counts from the last command now, not once the old one has run out.
                _ = self.kato_changed.notified() => {}
                _ = self.cancel.cancelled() => return,
            }
        }
    }
}
