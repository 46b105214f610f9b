//! Command handling, one file per command set (the Linux nvmet layout): [`fabrics`] (Connect, Property
//! Get/Set, Disconnect), [`admin`] (Identify, Get/Set Features, Keep Alive, AER, Abort), [`log_page`] (Get Log
//! Page, every log), [`discovery`] (the discovery controller's Identify and log page), [`io`] (NVM commands),
//! [`reservation`] (Reservation Register / Report / Acquire / Release).
//!
//! [`parse`] picks the execute step; [`execute`] runs it (a fused operation's two commands:
//! [`io::execute_fused`]).

pub mod admin;
pub mod auth;
pub mod discovery;
pub mod fabrics;
pub mod io;
pub mod log_page;
pub mod reservation;

use crate::request::{DataDir, Exec, Outcome, ParseResult, QueueCtx, Request, Response, MAX_TRANSFER};
use bytes::Bytes;
use holdfast_proto::opcode::{self, admin as aop};
use holdfast_proto::sgl;
use holdfast_proto::{Status, SubmissionEntry};

/// Check the SGL of a command against the data it moves: a transport data block or in-capsule data block
/// whose length is `len` (NVMe/TCP 1.0 §3.3.3, §3.3.5), `dir` the way it moves. `incapsule` is the in-capsule
/// data length received.
pub fn check_sgl(sqe: &SubmissionEntry, len: usize, dir: DataDir, incapsule: usize) -> Result<(), Status> {
    let d = &sqe.dptr;
    if len == 0 {
        return Ok(());
    }
    match d.id {
        sgl::ID_TRANSPORT => {
            if incapsule != 0 {
                return Err(Status::SGL_TYPE_INVALID.with_dnr());
            }
        }
        sgl::ID_INCAPSULE => {
            // In-capsule data is data for the controller (NVMe/TCP 1.0 §3.3.3): a command whose data goes to
            // the host (a Read, an Identify) has nowhere to put it. Invalid Field, as the Linux target answers.
            if dir != DataDir::ToController {
                return Err(Status::INVALID_FIELD.with_dnr());
            }
            if d.addr.get() != 0 {
                return Err(Status::SGL_OFFSET_INVALID.with_dnr());
            }
            if incapsule != len {
                return Err(Status::SGL_LENGTH_INVALID.with_dnr());
            }
        }
        _ => return Err(Status::SGL_TYPE_INVALID.with_dnr()),
    }
    if d.len() as usize != len {
        return Err(Status::SGL_LENGTH_INVALID.with_dnr());
    }
    Ok(())
}

/// The data length an admin command's own fields give, where they give one, against its SGL's: Identify
/// returns 4096 bytes, Get Log Page (NUMDU:NUMDL + 1) dwords. A mismatch is Data SGL Length Invalid, as
/// Linux nvmet answers (nvmet_check_transfer_len); the host built one of the two wrong.
pub fn check_transfer_len(sqe: &SubmissionEntry) -> Result<(), Status> {
    let want = match sqe.opcode {
        aop::IDENTIFY => 4096,
        aop::GET_LOG_PAGE => holdfast_proto::sqe::get_log_page::len_bytes(sqe),
        _ => return Ok(()),
    };
    if sqe.dptr.len() as u64 != want {
        return Err(Status::SGL_LENGTH_INVALID.with_dnr());
    }
    Ok(())
}

/// A request for a command whose data length is the SGL's length (admin and fabrics commands).
fn sgl_sized(sqe: &SubmissionEntry, exec: Exec, dir: DataDir, max: usize) -> ParseResult {
    let len = if dir == DataDir::None { 0 } else { sqe.dptr.len() as usize };
    if len > max {
        return Err(Status::INVALID_FIELD.with_dnr());
    }
    Ok(Request { sqe: *sqe, exec, dir, len })
}

/// Parse a command on this queue: choose its execute step, or the status to fail it with.
pub fn parse(ctx: &QueueCtx, sqe: &SubmissionEntry) -> ParseResult {
    // Every command over a fabric uses SGLs, with PSDT 01b (NVMe-oF 1.1 §2.1; NVMe/TCP 1.0 §3.3.3): PRPs
    // (00b) mean nothing here, and a host sending them has built the command for another transport. Invalid
    // Field, as the Linux target answers, Fabrics commands included.
    if sqe.psdt() != holdfast_proto::sqe::PSDT_SGL >> 6 {
        return Err(Status::INVALID_FIELD.with_dnr());
    }
    // Fused operations (NVMe Base 2.0 §3.4.2): Compare and Write alone (FUSES bit 0), on I/O queues; FUSE
    // set on anything else, Fabrics commands included, is Invalid Field (Linux nvmet checks it on every
    // command). The transport pairs the two commands ([`io::fused_pair`]) and runs them together
    // ([`io::execute_fused`]).
    match (sqe.fuse(), sqe.opcode) {
        (0, _) => {}
        (holdfast_proto::sqe::FUSE_FIRST, opcode::io::COMPARE)
        | (holdfast_proto::sqe::FUSE_SECOND, opcode::io::WRITE)
            if ctx.qid != 0 => {}
        _ => return Err(Status::INVALID_FIELD.with_dnr()),
    }
    if sqe.opcode == opcode::FABRICS {
        return fabrics::parse(ctx, sqe);
    }
    let Some(ctrl) = &ctx.ctrl else {
        // Nothing but Fabrics commands before Connect (NVMe-oF 1.1 §3.3).
        return Err(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    };
    // A queue that must authenticate runs nothing until it has (NVMe Base 2.0 §8.13.5; nvmet's
    // nvmet_check_auth_status): one flag, false on every queue of a host without keys.
    if ctx.auth_pending {
        return Err(Status::AUTHENTICATION_REQUIRED.with_dnr());
    }
    if !ctrl.ready() {
        return Err(Status::COMMAND_SEQUENCE_ERROR.with_dnr());
    }
    if ctx.qid != 0 {
        return io::parse(ctx, ctrl, sqe);
    }
    check_transfer_len(sqe)?;
    if ctrl.subsys.is_discovery {
        return discovery::parse(ctx, sqe);
    }
    let max = MAX_TRANSFER;
    match sqe.opcode {
        aop::IDENTIFY => sgl_sized(sqe, Exec::Identify, DataDir::ToHost, max),
        aop::GET_LOG_PAGE => sgl_sized(sqe, Exec::GetLogPage, DataDir::ToHost, max),
        aop::GET_FEATURES => sgl_sized(sqe, Exec::GetFeatures, DataDir::ToHost, max),
        aop::SET_FEATURES => sgl_sized(sqe, Exec::SetFeatures, DataDir::ToController, 4096),
        aop::KEEP_ALIVE => sgl_sized(sqe, Exec::KeepAlive, DataDir::None, 0),
        aop::ASYNC_EVENT_REQUEST => sgl_sized(sqe, Exec::AsyncEvent, DataDir::None, 0),
        aop::ABORT => sgl_sized(sqe, Exec::Abort, DataDir::None, 0),
        aop::HOLDFAST_FENCE_ASSOCIATION => sgl_sized(sqe, Exec::FenceAssociation, DataDir::None, 0),
        _ => Err(Status::INVALID_OPCODE.with_dnr()),
    }
}

/// Run a parsed request with its host data (empty unless it moves data to the controller).
pub fn execute(ctx: &mut QueueCtx, req: Request, data: Bytes) -> Outcome {
    if let Some(c) = &ctx.ctrl {
        c.touch();
    }
    match req.exec {
        // Connect binds the queue and may wait for a drain: the transport awaits fabrics::connect itself.
        Exec::Connect => Response::err(Status::COMMAND_SEQUENCE_ERROR).into(),
        Exec::PropertyGet => fabrics::property_get(ctx, &req).into(),
        Exec::PropertySet => fabrics::property_set(ctx, &req).into(),
        Exec::Disconnect => fabrics::disconnect(ctx).into(),
        Exec::AuthSend => auth::send(ctx, &data).into(),
        Exec::AuthReceive => auth::receive(ctx, &req).into(),
        Exec::Identify => match &ctx.ctrl {
            Some(c) if c.subsys.is_discovery => discovery::identify(ctx, c, &req).into(),
            Some(c) => admin::identify(ctx, c, &req).into(),
            None => Response::err(Status::COMMAND_SEQUENCE_ERROR).into(),
        },
        Exec::GetLogPage => match &ctx.ctrl {
            Some(c) => log_page::get_log_page(ctx, c, &req).into(),
            None => Response::err(Status::COMMAND_SEQUENCE_ERROR).into(),
        },
        Exec::GetFeatures => with_ctrl(ctx, |c| admin::get_features(c, &req)),
        Exec::SetFeatures => match &ctx.ctrl {
            Some(c) => admin::set_features(c, &req, &data),
            None => Response::err(Status::COMMAND_SEQUENCE_ERROR).into(),
        },
        // With the Keep Alive Timer disabled (KATO 0) there is no timer to restart: Keep Alive Timeout Invalid
        // (generic status 1Ah), as nvmet's `nvmet_execute_keep_alive` answers. Any command counts as traffic.
        Exec::KeepAlive => match &ctx.ctrl {
            Some(c) if c.kato_ms.load(std::sync::atomic::Ordering::Relaxed) == 0 => {
                Response::err(Status::KEEP_ALIVE_INVALID).into()
            }
            _ => Response::ok().into(),
        },
        Exec::AsyncEvent => match &ctx.ctrl {
            Some(c) => admin::async_event_request(c, &req),
            None => Response::err(Status::COMMAND_SEQUENCE_ERROR).into(),
        },
        Exec::Abort => admin::abort(&req).into(),
        Exec::FenceAssociation => with_ctrl(ctx, |c| admin::fence_association(c, &req)),
        Exec::Read { .. }
        | Exec::Compare { .. }
        | Exec::Write { .. }
        | Exec::Flush { .. }
        | Exec::WriteZeroes { .. }
        | Exec::DatasetManagement { .. } => io::execute(ctx, req, data),
        Exec::Reservation { .. } => match &ctx.ctrl {
            Some(c) => reservation::execute(c, &req, data),
            None => Response::err(Status::COMMAND_SEQUENCE_ERROR).into(),
        },
    }
}

fn with_ctrl(ctx: &QueueCtx, f: impl FnOnce(&crate::controller::Controller) -> Response) -> Outcome {
    match &ctx.ctrl {
        Some(c) => f(c).into(),
        None => Response::err(Status::COMMAND_SEQUENCE_ERROR).into(),
    }
}
