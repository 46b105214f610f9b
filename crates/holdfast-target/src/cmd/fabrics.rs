//! Fabrics commands (NVMe over Fabrics 1.1 §3): Connect, Property Get, Property Set, Disconnect, and
//! Authentication Send / Receive ([`super::auth`]).

use crate::controller::{Controller, ADMIN_QUEUE_ENTRIES, MAX_QUEUE_ENTRIES};
use crate::request::{DataDir, Exec, ParseResult, QueueCtx, Request, Response};
use crate::subsystem::Subsystem;
use holdfast_proto::fabrics::{
    cap, nqn_from_field, property, ConnectCommand, ConnectData, InvalidParameter, NqnError, PropertyCommand,
    CATTR_DISABLE_SQ_FLOW, CNTLID_DYNAMIC, CONNECT_DATA_SIZE, VERSION_1_3, VERSION_2_0,
};
use holdfast_proto::opcode::fctype;
use holdfast_proto::Status;
use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::Duration;

/// KATO a discovery controller gets when the host asks for none (Linux nvmet does the same: 120 s).
pub const DISCOVERY_DEFAULT_KATO_MS: u32 = 120_000;
/// CAP.TO: worst-case time to ready, in 500 ms units.
pub const CAP_TIMEOUT_500MS: u8 = 10;

/// Parse a Fabrics command.
pub fn parse(ctx: &QueueCtx, sqe: &holdfast_proto::SubmissionEntry) -> ParseResult {
    let (exec, dir) = match sqe.fctype() {
        fctype::CONNECT if ctx.ctrl.is_none() => (Exec::Connect, DataDir::ToController),
        fctype::CONNECT => return Err(Status::COMMAND_SEQUENCE_ERROR.with_dnr()),
        _ if ctx.ctrl.is_none() => return Err(Status::COMMAND_SEQUENCE_ERROR.with_dnr()),
        fctype::AUTH_SEND | fctype::AUTH_RECEIVE => {
            let cmd = holdfast_proto::auth::AuthCommand::from_sqe(sqe);
            let len = super::auth::check_command(&cmd)?;
            let (exec, dir) = if sqe.fctype() == fctype::AUTH_SEND {
                (Exec::AuthSend, DataDir::ToController)
            } else {
                (Exec::AuthReceive, DataDir::ToHost)
            };
            return Ok(Request { sqe: *sqe, exec, dir, len });
        }
        fctype::DISCONNECT => (Exec::Disconnect, DataDir::None),
        // Property Get / Set on a queue that has yet to authenticate: refused like any other command (stricter
        // than nvmet, which lets them through; the Linux host authenticates before it reads CAP).
        fctype::PROPERTY_GET | fctype::PROPERTY_SET if ctx.auth_pending => {
            return Err(Status::AUTHENTICATION_REQUIRED.with_dnr())
        }
        fctype::PROPERTY_GET if ctx.qid == 0 => (Exec::PropertyGet, DataDir::None),
        fctype::PROPERTY_SET if ctx.qid == 0 => (Exec::PropertySet, DataDir::None),
        _ => return Err(Status::INVALID_OPCODE.with_dnr()),
    };
    let len = if dir == DataDir::ToController { CONNECT_DATA_SIZE } else { 0 };
    if exec_is_connect(&exec) && sqe.dptr.len() as usize != CONNECT_DATA_SIZE {
        return Err(Status::SGL_LENGTH_INVALID.with_dnr());
    }
    Ok(Request { sqe: *sqe, exec, dir, len })
}

fn exec_is_connect(e: &Exec) -> bool {
    matches!(e, Exec::Connect)
}

fn invalid(offset: usize, in_data: bool) -> Response {
    Response {
        status: Status::CONNECT_INVALID_PARAMETERS.with_dnr(),
        dw0: InvalidParameter { offset: offset as u16, in_data }.to_dw0(),
        ..Default::default()
    }
}

/// Connect (NVMe-oF 1.1 §3.3): create a controller (admin queue) or bind an I/O queue to one. Awaited by
/// the transport directly, since it binds the queue and may wait for a reconnecting host's old association
/// to drain (README, No stale writes).
///
/// A Connect for a queue that already exists is aborted with Command Sequence Error (NVMe-oF 1.1 §3.3). The
/// parser refuses one that arrives on a bound queue; this catches one parsed before the queue was bound and
/// run after (its data came through R2T behind an earlier Connect's).
pub async fn connect(ctx: &mut QueueCtx, req: &Request, data: &[u8]) -> Response {
    if let Some(ctrl) = &ctx.ctrl {
        crate::peer_log::peer_warn!(peer = %ctx.peer_addr, cntlid = ctrl.cntlid, qid = ctx.qid, "Connect on a queue already connected");
        return Response::err(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    }
    let cmd = ConnectCommand::from_sqe(&req.sqe);
    if cmd.recfmt.get() != 0 {
        return Response::err(Status::CONNECT_INCOMPATIBLE_FORMAT.with_dnr());
    }
    let Some(d) = ConnectData::from_slice(data) else {
        return Response::err(Status::SGL_LENGTH_INVALID.with_dnr());
    };
    let subnqn = match nqn_from_field(&d.subnqn) {
        Ok(n) => n.to_owned(),
        Err(_) => return invalid(256, true),
    };
    // An empty Host NQN is an anonymous host: admitted where any host is (`allow_any_host`), refused with
    // Connect Invalid Host where hosts are listed. The Linux target takes it the same way, and SPDK's
    // `spdk_nvme_perf` and `spdk_nvme_identify` send one unless given `hostnqn:` in their transport ID.
    // The Host Identifier still tells such hosts apart (I/O queue binding, draining an old association).
    let hostnqn = match nqn_from_field(&d.hostnqn) {
        Ok(n) => n.to_owned(),
        Err(NqnError::Empty) => String::new(),
        Err(_) => return invalid(512, true),
    };
    let subsys = match admit(ctx, &subnqn, &hostnqn) {
        Ok(s) => s,
        Err(r) => return r,
    };
    let qid = cmd.qid.get();
    let sqsize = cmd.sqsize.get() as u32; // 0's based
    if qid == 0 {
        if d.cntlid.get() != CNTLID_DYNAMIC {
            return invalid(16, true);
        }
        if sqsize == 0 || sqsize >= ADMIN_QUEUE_ENTRIES {
            return invalid(44, false);
        }
        let mut kato = cmd.kato.get();
        if subsys.is_discovery && kato == 0 {
            kato = DISCOVERY_DEFAULT_KATO_MS;
        }
        // Rounded up to the Keep Alive granularity (KAS), as Set Features rounds it (and nvmet rounds a Connect's
        // to its own, a second): Get Features then reports what the timer runs with.
        let g = crate::controller::KAS_100MS as u32 * 100;
        kato = kato.div_ceil(g).saturating_mul(g);
        if !subsys.is_discovery && ctx.target.settings.drain {
            let cqt = Duration::from_millis(subsys.policy.read().cqt_ms as u64);
            let pending = subsys.dead_inflight(&hostnqn, &d.hostid);
            if pending > 0 {
                tracing::info!(host = ?hostnqn, pending, "holding Connect until the host's previous association drains");
            }
            if !subsys.drain_host(&hostnqn, &d.hostid, cqt).await {
                tracing::warn!(host = ?hostnqn, "previous association did not drain within CQT {cqt:?}: Controller Busy");
                return Response::err(Status::CONNECT_CONTROLLER_BUSY);
            }
            // The wait may have lasted up to CQT: a reload meanwhile may have removed the subsystem (or put a
            // new one under its NQN), taken it off this port or the host off its list. Admitted again, so that
            // no controller is made for a subsystem that is gone (its teardown at the reload could not see
            // this one).
            match admit(ctx, &subnqn, &hostnqn) {
                Ok(s) if Arc::ptr_eq(&s, &subsys) => {}
                Ok(_) => return invalid(256, true),
                Err(r) => return r,
            }
        }
        let Some(cntlid) = subsys.alloc_cntlid() else {
            return Response::err(Status::CONNECT_CONTROLLER_BUSY.with_dnr());
        };
        let ctrl = Controller::new(
            cntlid,
            subsys.clone(),
            ctx.target.clone(),
            hostnqn.clone(),
            d.hostid,
            ctx.port.id,
            ctx.local_addr,
            ctx.peer_addr,
            kato,
        );
        subsys.add_controller(&ctrl);
        // A reload on another worker thread between the admission above and the line before may have removed
        // the subsystem, taken it off this port or the host off its list, and torn down the controllers it
        // found, without this one: admitted again now that it is listed, it is either among those or refused
        // here (found by a review; a window of microseconds).
        match admit(ctx, &subnqn, &hostnqn) {
            Ok(s) if Arc::ptr_eq(&s, &subsys) => {}
            other => {
                ctrl.teardown("the configuration changed during its Connect");
                return other.err().unwrap_or_else(|| invalid(256, true));
            }
        }
        tokio::spawn(ctrl.clone().keep_alive_watchdog());
        // Any host may make discovery controllers, as many as it likes: those lines within the peer-caused limit.
        if !subsys.is_discovery || crate::peer_log::allow() {
            tracing::info!(cntlid, subsys = %subnqn, host = ?hostnqn, peer = %ctx.peer_addr, kato_ms = kato, "controller created");
        }
        ctx.ctrl = Some(ctrl);
        ctx.qid = 0;
        ctx.size = sqsize + 1;
        ctx.sq_flow_disabled = cmd.cattr & CATTR_DISABLE_SQ_FLOW != 0;
        return Response::dw0(cntlid as u32 | require_auth(ctx, &subsys, &subnqn, &hostnqn));
    }
    // An I/O queue joins an existing controller of this host.
    let Some(ctrl) = subsys.controller(d.cntlid.get()).filter(|c| c.hostnqn == hostnqn && c.hostid == d.hostid) else {
        return invalid(16, true);
    };
    if subsys.is_discovery {
        return invalid(42, false);
    }
    if !ctrl.ready() {
        return Response::err(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    }
    if sqsize == 0 || sqsize >= MAX_QUEUE_ENTRIES {
        return invalid(44, false);
    }
    if qid > ctrl.state.lock().io_queues_granted {
        return invalid(42, false);
    }
    ctx.qid = qid;
    // A queue that must authenticate first takes its ID once its host has proven itself
    // ([`claim_io_queue`], from the exchange); until then the ID is only checked to be free.
    let authreq = require_auth(ctx, &subsys, &subnqn, &hostnqn);
    if let Err(s) = claim_io_queue(&ctrl, qid, authreq == 0) {
        (ctx.qid, ctx.auth, ctx.auth_pending) = (0, None, false);
        return Response::err(s);
    }
    ctx.qid_claim_pending = authreq != 0;
    ctx.size = sqsize + 1;
    ctx.sq_flow_disabled = cmd.cattr & CATTR_DISABLE_SQ_FLOW != 0;
    let cntlid = ctrl.cntlid;
    ctx.ctrl = Some(ctrl);
    Response::dw0(cntlid as u32 | authreq)
}

/// I/O queue `qid` of `ctrl` comes to life (`take`: the queue takes the ID) or may (`!take`: the ID is free,
/// for a queue that takes it once authenticated), or the status that refuses it: Command Sequence Error if the
/// controller is resetting or not ready, or the queue exists already.
pub fn claim_io_queue(ctrl: &Controller, qid: u16, take: bool) -> Result<(), Status> {
    {
        let mut st = ctrl.state.lock();
        // Checked under the lock a Controller Level Reset holds: a reset since the Connect's check of readiness
        // (which cleared `io_queue_connected` and deletes every I/O queue) refuses this one too.
        if st.resetting.is_some() || st.csts & holdfast_proto::fabrics::csts::RDY == 0 {
            return Err(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
        }
        // The queue exists already, on another connection (NVMe-oF 1.1 §3.3: a queue is created by its Connect
        // and lives as long as its connection). Linux's nvmet answers the same.
        if st.live_qids.contains(&qid) {
            return Err(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
        }
        if !take {
            return Ok(());
        }
        // Granted at its Connect; a Set Features Number of Queues while it authenticated may have granted fewer.
        if qid > st.io_queues_granted {
            return Err(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
        }
        st.live_qids.insert(qid);
        st.io_queue_connected = true;
    }
    // Traffic from the host, like any command (Linux before 6.7 starts its Keep Alives only once every I/O
    // queue is connected).
    ctrl.touch();
    Ok(())
}

/// Connect response Dword 0, AUTHREQ: ATR, authentication transaction required (NVMe-oF; nvmet's
/// NVME_CONNECT_AUTHREQ_ATR).
pub const AUTHREQ_ATR: u32 = 1 << 17;

/// A queue just connected of a host that must authenticate on `subsys` (it is listed and has keys, read now:
/// a reload's new keys apply from the next Connect): its exchange starts, every other command is refused
/// until it succeeds, and the Connect response says so (AUTHREQ ATR). Else 0.
fn require_auth(ctx: &mut QueueCtx, subsys: &Subsystem, subnqn: &str, hostnqn: &str) -> u32 {
    match ctx.target.auth_keys(subsys, hostnqn) {
        Some(keys) => {
            ctx.auth = Some(Box::new(super::auth::QueueAuth::new(keys, hostnqn, subnqn)));
            ctx.auth_pending = true;
            AUTHREQ_ATR
        }
        None => 0,
    }
}

/// CAP: the same for discovery controllers, as Linux nvmet's. MQES bounds I/O queues, which a discovery
/// controller has none of (its admin queue's bound is ASQSZ, [`ADMIN_QUEUE_ENTRIES`]); the Linux host still
/// sizes its view of the controller by it (and by MAXCMD) and warned "clamping down" at every `nvme discover`
/// while it was 31.
fn cap_value() -> u64 {
    cap::build((MAX_QUEUE_ENTRIES - 1) as u16, CAP_TIMEOUT_500MS)
}

/// Property Get (NVMe-oF 1.1 §3.4).
pub fn property_get(ctx: &QueueCtx, req: &Request) -> Response {
    let p = PropertyCommand::from_sqe(&req.sqe);
    let Some(ctrl) = &ctx.ctrl else { return Response::err(Status::COMMAND_SEQUENCE_ERROR) };
    let (value, size): (u64, usize) = match p.ofst.get() {
        property::CAP => (cap_value(), 8),
        property::VS => (if ctrl.subsys.is_discovery { VERSION_1_3 } else { VERSION_2_0 } as u64, 4),
        property::CC => (ctrl.state.lock().cc as u64, 4),
        property::CSTS => (ctrl.csts() as u64, 4),
        property::NSSR => (0, 4),
        property::CRTO => {
            let to = CAP_TIMEOUT_500MS as u64;
            (to | (to << 16), 4)
        }
        _ => return Response::err(Status::INVALID_FIELD.with_dnr()),
    };
    if p.size() != Some(size) {
        return Response::err(Status::INVALID_FIELD.with_dnr());
    }
    Response { dw0: value as u32, dw1: (value >> 32) as u32, ..Default::default() }
}

/// Property Set (NVMe-oF 1.1 §3.5): only CC is writable.
pub fn property_set(ctx: &QueueCtx, req: &Request) -> Response {
    let p = PropertyCommand::from_sqe(&req.sqe);
    let Some(ctrl) = &ctx.ctrl else { return Response::err(Status::COMMAND_SEQUENCE_ERROR) };
    match (p.ofst.get(), p.size()) {
        (property::CC, Some(4)) => match ctrl.write_cc(p.value.get() as u32) {
            Ok(()) => Response::ok(),
            Err(s) => Response::err(s),
        },
        _ => Response::err(Status::INVALID_FIELD.with_dnr()),
    }
}

/// The subsystem `subnqn` for a Connect from host `hostnqn` on this queue's port, or the refusal: Connect
/// Invalid Parameters at SUBNQN if there is none here (or it is not exported on this port), Connect Invalid
/// Host if the host is not on its list.
fn admit(ctx: &QueueCtx, subnqn: &str, hostnqn: &str) -> Result<Arc<Subsystem>, Response> {
    let Some(subsys) = ctx.target.subsystem(subnqn) else {
        crate::peer_log::peer_warn!(peer = %ctx.peer_addr, host = ?hostnqn, "Connect to unknown subsystem {subnqn:?}");
        return Err(invalid(256, true));
    };
    if !subsys.is_discovery && !subsys.on_port(ctx.port.id) {
        crate::peer_log::peer_warn!(
            peer = %ctx.peer_addr, host = ?hostnqn,
            "Connect to subsystem {subnqn:?}, which is not exported on port {}", ctx.port.id
        );
        return Err(invalid(256, true));
    }
    if !subsys.host_allowed(hostnqn) {
        let who = if hostnqn.is_empty() { "with an empty host NQN".to_string() } else { format!("{hostnqn:?}") };
        crate::peer_log::peer_warn!(peer = %ctx.peer_addr, "host {who} is not allowed on {subnqn:?}");
        return Err(Response::err(Status::CONNECT_INVALID_HOST.with_dnr()));
    }
    Ok(subsys)
}

/// Disconnect (NVMe-oF 1.1a §3.x): delete this queue; on the admin queue, the whole association. The
/// transport closes the connection after sending the response.
pub fn disconnect(ctx: &mut QueueCtx) -> Response {
    ctx.close_after_response = true;
    if ctx.qid == 0 {
        if let Some(c) = &ctx.ctrl {
            c.kato_ms.store(0, Ordering::Relaxed);
        }
    }
    Response::ok()
}
