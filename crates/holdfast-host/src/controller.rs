//! A controller association: the admin queue, the I/O queues, keep-alive and asynchronous events
//! (NVMe over Fabrics 1.1 §3.3 and §7; NVMe Base 2.0 §3.5.2 "Controller Initialization").
//!
//! Connect sequence: ICReq → Connect (admin, dynamic CNTLID, KATO) → Property Get CAP/VS → Property Set
//! CC.EN → CSTS.RDY within CAP.TO → Identify Controller → Set Features Number of Queues → one Connect per
//! I/O queue → keep-alive task and an outstanding Asynchronous Event Request.

use crate::error::{Error, Result};
use crate::options::ConnectOptions;
use crate::queue::{self, Command, Completion, QueueExit, QueueParams};
use crate::transport;
use bytes::Bytes;
use holdfast_proto::fabrics::{
    self, cap, cc, csts, property, ConnectCommand, ConnectData, InvalidParameter, PropertyCommand,
};
use holdfast_proto::identify::{self, IdentifyController};
use holdfast_proto::opcode::{admin as aop, admin_name, fctype_name, io_name, FABRICS};
use holdfast_proto::policy::{ConnectionPolicy, LID_HOLDFAST_POLICY};
use holdfast_proto::sqe::get_log_page;
use holdfast_proto::{Status, SubmissionEntry};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;
use zerocopy::{FromBytes, IntoBytes};

/// Admin queue size (entries) we ask for.
pub const ADMIN_QUEUE_SIZE: u16 = 32;
/// In-capsule data the admin queue always accepts (NVMe/TCP 1.0 §3.3.3).
pub const ADMIN_INCAPSULE: usize = 8192;
/// Largest transfer we issue as one command when the controller sets no MDTS.
pub const DEFAULT_MAX_TRANSFER: usize = 1 << 20;

struct Inner {
    opts: ConnectOptions,
    cntlid: u16,
    id: Box<IdentifyController>,
    cap: u64,
    vs: u32,
    admin: mpsc::Sender<Command>,
    io: Vec<mpsc::Sender<Command>>,
    rr: AtomicUsize,
    max_transfer: usize,
    failed: Mutex<Option<String>>,
    cancel: CancellationToken,
    /// Stops the keep-alive task alone (before an orderly shutdown).
    ka_stop: CancellationToken,
    policy: Mutex<Option<ConnectionPolicy>>,
}

/// A live controller association. Cheap to clone.
#[derive(Clone)]
pub struct Controller {
    inner: Arc<Inner>,
}

/// The name of a command, for errors.
pub fn command_name(sqe: &SubmissionEntry, admin: bool) -> &'static str {
    if sqe.opcode == FABRICS {
        fctype_name(sqe.fctype())
    } else if admin {
        admin_name(sqe.opcode)
    } else {
        io_name(sqe.opcode)
    }
}

/// Send a command and wait for its completion; an error status becomes [`Error::Nvme`].
pub async fn submit(
    tx: &mpsc::Sender<Command>,
    sqe: SubmissionEntry,
    data_out: Bytes,
    data_in_len: usize,
    name: &'static str,
) -> Result<Completion> {
    let rx = send(tx, sqe, data_out, data_in_len, name, true, false).await?;
    finish(rx, name).await
}

/// Queue a command; the receiver yields its completion.
pub async fn send(
    tx: &mpsc::Sender<Command>,
    sqe: SubmissionEntry,
    data_out: Bytes,
    data_in_len: usize,
    name: &'static str,
    replayable: bool,
    long_lived: bool,
) -> Result<oneshot::Receiver<Result<Completion>>> {
    let (reply, rx) = oneshot::channel();
    let cmd = Command { sqe, data_out, data_in_len, name, replayable, long_lived, reply };
    tx.send(cmd).await.map_err(|_| Error::NotConnected("the queue is gone".into()))?;
    Ok(rx)
}

/// Wait for a queued command.
pub async fn finish(rx: oneshot::Receiver<Result<Completion>>, name: &'static str) -> Result<Completion> {
    let c = rx.await.map_err(|_| Error::NotConnected("the queue went away before the command completed".into()))??;
    if c.status().is_success() {
        Ok(c)
    } else {
        Err(Error::Nvme { command: name, status: c.status() })
    }
}

fn connect_refusal(status: Status, dw0: u32, o: &ConnectOptions) -> Error {
    let reason = match status.code() {
        s if s == Status::CONNECT_INVALID_HOST => format!("host {} is not allowed to use {}", o.hostnqn, o.subnqn),
        s if s == Status::CONNECT_INVALID_PARAMETERS => {
            let ip = InvalidParameter::from_dw0(dw0);
            match (ip.in_data, ip.offset) {
                (true, 256) => format!("the target has no subsystem {}", o.subnqn),
                (true, 512) => format!("the host NQN {} was rejected", o.hostnqn),
                (true, 16) => "the controller ID was rejected (controller gone?)".into(),
                (d, off) => {
                    format!("invalid parameter at byte {off} of the {}", if d { "Connect data" } else { "command" })
                }
            }
        }
        s if s == Status::CONNECT_CONTROLLER_BUSY => {
            "controller busy (the target may still be draining an older association); retry later".into()
        }
        s if s == Status::CONNECT_INCOMPATIBLE_FORMAT => "incompatible Connect format".into(),
        _ => status.name(true).to_string(),
    };
    Error::ConnectRefused { reason: format!("{reason} ({})", status.name(true)), status }
}

/// Open one queue: TCP + ICReq, spawn its task, send Connect. Returns the CNTLID from the response.
async fn open_queue(
    o: &ConnectOptions,
    qid: u16,
    size: u16,
    cntlid: u16,
    max_incapsule: usize,
    max_transfer: usize,
    cancel: &CancellationToken,
) -> Result<(mpsc::Sender<Command>, u16, tokio::task::JoinHandle<QueueExit>)> {
    let conn = transport::connect(&o.addr, o.hdgst, o.ddgst, max_transfer.max(64 << 10), o.connect_timeout).await?;
    let params = QueueParams {
        qid,
        depth: size - 1,
        framing: conn.framing,
        max_incapsule,
        maxh2cdata: conn.maxh2cdata,
        io_timeout: if qid == 0 { o.io_timeout.max(Duration::from_secs(10)) } else { o.io_timeout },
        addr: o.addr.clone(),
    };
    let (tx, rx) = mpsc::channel(size as usize * 2);
    let handle =
        tokio::spawn(queue::run(conn.stream, conn.decoder, conn.inbuf, params, rx, Vec::new(), cancel.clone()));
    let kato = if qid == 0 { o.kato.as_millis() as u32 } else { 0 };
    let cmd = ConnectCommand::new(0, qid, size - 1, kato);
    let data = ConnectData::new(o.hostid, cntlid, &o.subnqn, &o.hostnqn);
    let rx = send(&tx, cmd.to_sqe(), Bytes::copy_from_slice(data.as_bytes()), 0, "Connect", false, false).await?;
    let c = tokio::time::timeout(o.connect_timeout, rx)
        .await
        .map_err(|_| Error::Timeout { what: format!("Connect of queue {qid}"), after: o.connect_timeout })?
        .map_err(|_| Error::NotConnected("the queue went away during Connect".into()))??;
    if !c.status().is_success() {
        cancel.cancel();
        return Err(connect_refusal(c.status(), c.cqe.dw0.get(), o));
    }
    Ok((tx, c.cqe.dw0.get() as u16, handle))
}

async fn property_get(tx: &mpsc::Sender<Command>, ofst: u32, wide: bool) -> Result<u64> {
    let c = submit(tx, PropertyCommand::new(0, ofst, wide, None).to_sqe(), Bytes::new(), 0, "Property Get").await?;
    Ok(c.cqe.result64())
}

async fn property_set(tx: &mpsc::Sender<Command>, ofst: u32, v: u32) -> Result<()> {
    submit(tx, PropertyCommand::new(0, ofst, false, Some(v as u64)).to_sqe(), Bytes::new(), 0, "Property Set").await?;
    Ok(())
}

/// Identify with the given CNS and NSID: 4096 bytes.
pub async fn identify_raw(tx: &mpsc::Sender<Command>, cns: u8, nsid: u32) -> Result<Bytes> {
    let mut s = SubmissionEntry::new(aop::IDENTIFY, 0);
    s.nsid.set(nsid);
    s.cdw10.set(cns as u32);
    Ok(submit(tx, s, Bytes::new(), 4096, "Identify").await?.data)
}

/// Get Log Page: `len` bytes of `lid` at `offset`.
pub async fn get_log_page(tx: &mpsc::Sender<Command>, lid: u8, nsid: u32, len: usize, offset: u64) -> Result<Bytes> {
    let mut s = SubmissionEntry::new(aop::GET_LOG_PAGE, 0);
    s.nsid.set(nsid);
    get_log_page::set(&mut s, lid, 0, len as u32, offset);
    Ok(submit(tx, s, Bytes::new(), len, "Get Log Page").await?.data)
}

/// Supervise a queue task: when it ends with an error, fail the association (every pending and later
/// command fails with the reason). Reconnection builds on the same exit information.
fn supervise(
    inner: std::sync::Weak<Inner>,
    qid: u16,
    h: tokio::task::JoinHandle<QueueExit>,
    cancel: CancellationToken,
) {
    tokio::spawn(async move {
        let Ok(mut exit) = h.await else { return };
        let reason = match &exit.error {
            Some(e) => e.to_string(),
            None => return,
        };
        if let Some(inner) = inner.upgrade() {
            let mut f = inner.failed.lock().unwrap_or_else(|p| p.into_inner());
            if f.is_none() {
                tracing::warn!(addr = %inner.opts.addr, qid, "controller lost: {reason}");
                *f = Some(reason.clone());
            }
        }
        cancel.cancel();
        for c in exit.pending.drain(..) {
            let _ = c.reply.send(Err(Error::NotConnected(reason.clone())));
        }
        exit.rx.close();
        while let Some(c) = exit.rx.recv().await {
            let _ = c.reply.send(Err(Error::NotConnected(reason.clone())));
        }
    });
}

impl Controller {
    /// Connect, enable and set up the queues.
    pub async fn connect(o: ConnectOptions) -> Result<Controller> {
        if o.queue_size < 2 || o.queue_size > 1024 {
            return Err(Error::Invalid(format!("queue size {} is outside 2..=1024", o.queue_size)));
        }
        let cancel = CancellationToken::new();
        let (admin, cntlid, ah) =
            open_queue(&o, 0, ADMIN_QUEUE_SIZE, fabrics::CNTLID_DYNAMIC, ADMIN_INCAPSULE, 1 << 20, &cancel).await?;
        let setup = async {
            let capv = property_get(&admin, property::CAP, true).await?;
            let vs = property_get(&admin, property::VS, false).await? as u32;
            property_set(&admin, property::CC, cc::ENABLE_DEFAULT).await?;
            let ready_limit = Duration::from_millis(500 * cap::timeout_500ms(capv).max(1) as u64);
            let t0 = Instant::now();
            loop {
                let st = property_get(&admin, property::CSTS, false).await? as u32;
                if st & csts::CFS != 0 {
                    return Err(Error::Protocol {
                        qid: 0,
                        what: "controller fatal status (CSTS.CFS) while enabling".into(),
                    });
                }
                if st & csts::RDY != 0 {
                    break;
                }
                if t0.elapsed() > ready_limit {
                    return Err(Error::Timeout { what: "waiting for CSTS.RDY".into(), after: ready_limit });
                }
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
            let idb = identify_raw(&admin, identify::CNS_CONTROLLER, 0).await?;
            let id = IdentifyController::read_from_bytes(&idb[..4096])
                .map_err(|_| Error::Protocol { qid: 0, what: "short Identify".into() })?;
            Ok::<_, Error>((capv, vs, Box::new(id)))
        };
        let (capv, vs, id) = match setup.await {
            Ok(v) => v,
            Err(e) => {
                cancel.cancel();
                return Err(e);
            }
        };
        if id.cntlid.get() != cntlid && id.cntrltype != identify::CNTRLTYPE_DISCOVERY {
            tracing::warn!("Identify CNTLID {} differs from Connect's {cntlid}", id.cntlid.get());
        }
        let mdts = id.mdts;
        let max_transfer =
            if mdts == 0 { DEFAULT_MAX_TRANSFER } else { (4096usize << mdts.min(20)).min(DEFAULT_MAX_TRANSFER) };
        let is_discovery = o.subnqn == fabrics::DISCOVERY_NQN;
        let mut io = Vec::new();
        let mut handles = Vec::new();
        if !is_discovery && o.nr_io_queues > 0 {
            let mut s = SubmissionEntry::new(aop::SET_FEATURES, 0);
            s.cdw10.set(holdfast_proto::features::NUMBER_OF_QUEUES as u32);
            let n = o.nr_io_queues as u32 - 1;
            s.cdw11.set(n | n << 16);
            let c = submit(&admin, s, Bytes::new(), 0, "Set Features (Number of Queues)").await?;
            let granted = ((c.cqe.dw0.get() & 0xFFFF).min(c.cqe.dw0.get() >> 16) + 1) as u16;
            let nq = o.nr_io_queues.min(granted);
            let mqes = cap::mqes(capv) as u32 + 1;
            let size = (o.queue_size as u32).min(mqes) as u16;
            let ioccsz = id.ioccsz.get() as usize * 16;
            let max_incapsule = ioccsz.saturating_sub(64);
            for qid in 1..=nq {
                let (tx, _, h) = open_queue(&o, qid, size, cntlid, max_incapsule, max_transfer, &cancel).await?;
                io.push(tx);
                handles.push((qid, h));
            }
        }
        let inner = Arc::new(Inner {
            opts: o,
            cntlid,
            id,
            cap: capv,
            vs,
            admin,
            io,
            rr: AtomicUsize::new(0),
            max_transfer,
            failed: Mutex::new(None),
            ka_stop: cancel.child_token(),
            cancel: cancel.clone(),
            policy: Mutex::new(None),
        });
        supervise(Arc::downgrade(&inner), 0, ah, cancel.clone());
        for (qid, h) in handles {
            supervise(Arc::downgrade(&inner), qid, h, cancel.clone());
        }
        let ctrl = Controller { inner };
        if !is_discovery {
            if let Ok(b) = get_log_page(&ctrl.inner.admin, LID_HOLDFAST_POLICY, 0, 512, 0).await {
                if let Ok(p) = ConnectionPolicy::from_bytes(&b) {
                    tracing::debug!(?p, "target advertises a connection policy");
                    *ctrl.inner.policy.lock().unwrap_or_else(|p| p.into_inner()) = Some(p);
                }
            }
        }
        ctrl.start_keep_alive();
        ctrl.start_async_events();
        Ok(ctrl)
    }

    fn start_keep_alive(&self) {
        let kato = self.inner.opts.kato;
        if kato.is_zero() {
            return;
        }
        let weak = Arc::downgrade(&self.inner);
        let (admin, cancel) = (self.inner.admin.clone(), self.inner.ka_stop.clone());
        tokio::spawn(async move {
            let period = (kato / 2).max(Duration::from_millis(100));
            loop {
                tokio::select! {
                    _ = cancel.cancelled() => return,
                    _ = tokio::time::sleep(period) => {}
                }
                let ka = SubmissionEntry::new(aop::KEEP_ALIVE, 0);
                let r = tokio::time::timeout(kato, submit(&admin, ka, Bytes::new(), 0, "Keep Alive")).await;
                let err = match r {
                    Ok(Ok(_)) => continue,
                    Ok(Err(e)) => e.to_string(),
                    Err(_) => format!("no Keep Alive response within KATO ({kato:?})"),
                };
                if let Some(inner) = weak.upgrade() {
                    let mut f = inner.failed.lock().unwrap_or_else(|p| p.into_inner());
                    if f.is_none() {
                        tracing::warn!(addr = %inner.opts.addr, "controller lost: {err}");
                        *f = Some(err);
                    }
                }
                cancel.cancel();
                return;
            }
        });
    }

    fn start_async_events(&self) {
        let (admin, cancel) = (self.inner.admin.clone(), self.inner.cancel.clone());
        tokio::spawn(async move {
            loop {
                let aer = SubmissionEntry::new(aop::ASYNC_EVENT_REQUEST, 0);
                let Ok(rx) = send(&admin, aer, Bytes::new(), 0, "Asynchronous Event Request", false, true).await else {
                    return;
                };
                let r = tokio::select! {
                    _ = cancel.cancelled() => return,
                    r = rx => r,
                };
                match r {
                    Ok(Ok(c)) if c.status().is_success() => {
                        let ev = holdfast_proto::features::AsyncEvent::from_dword(c.cqe.dw0.get());
                        tracing::info!(
                            event_type = ev.event_type,
                            info = ev.info,
                            log_page = ev.log_page,
                            "asynchronous event"
                        );
                        // Reading the log page clears the event so the controller may report more.
                        let _ = get_log_page(&admin, ev.log_page, 0xFFFF_FFFF, 512, 0).await;
                    }
                    _ => return,
                }
            }
        });
    }

    /// Fail fast if the association is gone.
    fn check(&self) -> Result<()> {
        match &*self.inner.failed.lock().unwrap_or_else(|p| p.into_inner()) {
            Some(r) => Err(Error::NotConnected(r.clone())),
            None => Ok(()),
        }
    }

    /// Run an admin command.
    pub async fn admin(&self, sqe: SubmissionEntry, data_out: Bytes, data_in_len: usize) -> Result<Completion> {
        self.check()?;
        submit(&self.inner.admin, sqe, data_out, data_in_len, command_name(&sqe, true)).await
    }

    /// Queue an I/O command on the next I/O queue (round robin); await the receiver for the completion.
    pub async fn io_send(
        &self,
        hint: Option<usize>,
        sqe: SubmissionEntry,
        data_out: Bytes,
        data_in_len: usize,
    ) -> Result<oneshot::Receiver<Result<Completion>>> {
        self.check()?;
        if self.inner.io.is_empty() {
            return Err(Error::Invalid("this controller has no I/O queues".into()));
        }
        let i = hint.unwrap_or_else(|| self.inner.rr.fetch_add(1, Ordering::Relaxed)) % self.inner.io.len();
        send(&self.inner.io[i], sqe, data_out, data_in_len, command_name(&sqe, false), true, false).await
    }

    /// Identify Controller data.
    pub fn identify(&self) -> &IdentifyController {
        &self.inner.id
    }
    /// CNTLID.
    pub fn cntlid(&self) -> u16 {
        self.inner.cntlid
    }
    /// CAP.
    pub fn cap(&self) -> u64 {
        self.inner.cap
    }
    /// VS.
    pub fn version(&self) -> u32 {
        self.inner.vs
    }
    /// Number of I/O queues.
    pub fn io_queues(&self) -> usize {
        self.inner.io.len()
    }
    /// Largest transfer of one command, in bytes.
    pub fn max_transfer(&self) -> usize {
        self.inner.max_transfer
    }
    /// The options used.
    pub fn options(&self) -> &ConnectOptions {
        &self.inner.opts
    }
    /// The connection policy the target advertised, if any.
    pub fn policy(&self) -> Option<ConnectionPolicy> {
        *self.inner.policy.lock().unwrap_or_else(|p| p.into_inner())
    }
    /// The admin queue's sender (for discovery and tools).
    pub fn admin_queue(&self) -> &mpsc::Sender<Command> {
        &self.inner.admin
    }
    /// Active namespace IDs.
    pub async fn active_namespaces(&self) -> Result<Vec<u32>> {
        self.check()?;
        Ok(identify::parse_active_ns_list(&identify_raw(&self.inner.admin, identify::CNS_ACTIVE_NS_LIST, 0).await?))
    }

    /// Orderly shutdown: CC.SHN = normal, wait for CSTS.SHST complete (bounded), close every queue.
    pub async fn shutdown(&self) -> Result<()> {
        self.inner.ka_stop.cancel();
        if self.check().is_ok() {
            let admin = &self.inner.admin;
            let r = async {
                let ccv = property_get(admin, property::CC, false).await? as u32;
                property_set(admin, property::CC, (ccv & !cc::SHN_MASK) | cc::SHN_NORMAL).await?;
                let t0 = Instant::now();
                while t0.elapsed() < Duration::from_secs(5) {
                    let st = property_get(admin, property::CSTS, false).await? as u32;
                    if st & csts::SHST_MASK == csts::SHST_COMPLETE {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(10)).await;
                }
                Ok::<_, Error>(())
            };
            let r = tokio::time::timeout(Duration::from_secs(6), r).await;
            if let Ok(Err(e)) = &r {
                tracing::debug!("shutdown notification failed: {e}");
            }
        }
        *self.inner.failed.lock().unwrap_or_else(|p| p.into_inner()) = Some("controller shut down".into());
        self.inner.cancel.cancel();
        Ok(())
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        self.cancel.cancel();
    }
}
