//! Get Log Page (NVMe Base 2.0 §5.16) and every log an NVM controller offers: Supported Log Pages, Error
//! Information, SMART / Health, Firmware Slot, Changed Namespace List, Commands Supported and Effects,
//! Asymmetric Namespace Access ([`crate::ana`]), and holdfast's connection-policy page. The discovery log is built in [`super::discovery`].

use crate::controller::{Controller, ERROR_LOG_ENTRIES};
use crate::request::{QueueCtx, Request, Response};
use holdfast_proto::log_page::{self as lp, ErrorInformationEntry, SmartHealthLog};
use holdfast_proto::opcode::{admin as aop, io as iop};
use holdfast_proto::policy;
use holdfast_proto::sqe::get_log_page as glp;
use holdfast_proto::Status;
use std::sync::atomic::Ordering;
use zerocopy::{FromZeros, IntoBytes};

/// Log pages an NVM controller supports.
pub const IO_LOGS: &[u8] = &[
    lp::LID_SUPPORTED_LOG_PAGES,
    lp::LID_ERROR_INFO,
    lp::LID_SMART_HEALTH,
    lp::LID_FIRMWARE_SLOT,
    lp::LID_CHANGED_NS_LIST,
    lp::LID_COMMANDS_SUPPORTED_EFFECTS,
    lp::LID_ANA,
    lp::LID_RESERVATION_NOTIFICATION,
    policy::LID_HOLDFAST_POLICY,
];

/// Get Log Page: build the whole page, return the window the command asked for.
pub fn get_log_page(ctx: &QueueCtx, c: &Controller, req: &Request) -> Response {
    let lid = glp::lid(&req.sqe);
    let offset = glp::offset(&req.sqe);
    // A byte offset, dword aligned: no log here is indexed (Offset Type, CDW14 bit 23, is for a log whose
    // Supported Log Pages entry sets IOS, NVMe Base 2.0 §5.16: none of ours does).
    if !offset.is_multiple_of(4) || glp::ot(&req.sqe) {
        return Response::err(Status::INVALID_FIELD.with_dnr());
    }
    // Reading without RAE re-enables the log's events: before the page is taken, so that an event raised
    // while it is built is reported anew (unmasked after, it would find the log still masked and be lost).
    // A read that then fails has unmasked it early, which costs at most an event with nothing new.
    if !glp::rae(&req.sqe) {
        c.unmask_log(lid);
    }
    let page: Vec<u8> = if c.subsys.is_discovery {
        match lid {
            lp::LID_DISCOVERY => super::discovery::discovery_log(ctx, c, glp::lsp(&req.sqe)),
            // The discovery controller logs its failed commands too (ELPE, and the More bit of their
            // completions, say so), as an I/O controller does.
            lp::LID_ERROR_INFO => error_log(c),
            policy::LID_HOLDFAST_POLICY => policy_page(c),
            _ => return Response::err(Status::INVALID_LOG_PAGE.with_dnr()),
        }
    } else {
        match lid {
            lp::LID_SUPPORTED_LOG_PAGES => supported_log_pages(IO_LOGS),
            lp::LID_ERROR_INFO => error_log(c),
            // The controller's log, for NSID FFFFFFFFh (or 0): it is not kept per namespace (LPA bit 0 clear),
            // and a namespace's is then to be refused (NVMe Base 1.4 §5.14.1.2, 2.0 §5.16.1.3) rather than answered with the
            // controller's, which a host would read as that namespace's figures.
            lp::LID_SMART_HEALTH => match req.sqe.nsid() {
                0 | 0xFFFF_FFFF => smart_log(c).as_bytes().to_vec(),
                _ => return Response::err(Status::INVALID_FIELD.with_dnr()),
            },
            lp::LID_FIRMWARE_SLOT => firmware_slot_log(),
            // Read without clearing; cleared below once the command is known to succeed.
            lp::LID_CHANGED_NS_LIST => changed_ns_list(c),
            // Per I/O Command Set (CDW14 CSI): the NVM Command Set's is the only one (as Linux nvmet answers other
            // sets without Zoned Namespaces).
            lp::LID_COMMANDS_SUPPORTED_EFFECTS => match glp::csi(&req.sqe) {
                0 => commands_effects().as_bytes().to_vec(),
                _ => return Response::err(Status::INVALID_LOG_PAGE.with_dnr()),
            },
            // Asymmetric Namespace Access: the groups' states through this controller's port; LSP bit 0
            // (RGO) asks for the groups without their NSIDs.
            lp::LID_ANA => {
                let rgo = glp::lsp(&req.sqe) & lp::ANA_LSP_RGO != 0;
                let mut page = c.target.ana.log(&c.ana, &c.subsys).to_bytes(rgo);
                page.resize(page.len().max(crate::ana::log_len(rgo)), 0);
                page
            }
            // The oldest reservation notice, taken by the read (RAE or not: RAE keeps the event masked, not
            // the notice), unless the read starts at the page's end and so returns none of it (past the end
            // is refused below).
            lp::LID_RESERVATION_NOTIFICATION => {
                let size = core::mem::size_of::<lp::ReservationNotification>();
                if offset >= size as u64 {
                    vec![0; size]
                } else {
                    c.take_reservation_notice().as_bytes().to_vec()
                }
            }
            policy::LID_HOLDFAST_POLICY => policy_page(c),
            _ => return Response::err(Status::INVALID_LOG_PAGE.with_dnr()),
        }
    };
    if offset > page.len() as u64 {
        return Response::err(Status::INVALID_FIELD.with_dnr());
    }
    // The Changed Namespace List holds the changes since it was last read, RAE or not (RAE keeps the event,
    // not the list: Linux nvmet clears it at every read too): the NSIDs this read returned go (a read of part of
    // the page takes only its part). NSIDs added while the page was built stay for the next read.
    if lid == lp::LID_CHANGED_NS_LIST && !c.subsys.is_discovery {
        let start = (offset as usize).min(page.len());
        let reported = page_nsids(&page[start..start.saturating_add(req.len).min(page.len())]);
        c.state.lock().changed_nsids.retain(|n| !reported.contains(n) && !reported.contains(&0xFFFF_FFFF));
    }
    if !glp::rae(&req.sqe) {
        // Read: the notice still waiting for it goes. Events raised while the page was built were queued
        // after it and stay.
        c.log_read(lid);
    }
    Response::data(lp::log_page_slice(&page, offset, req.len))
}

/// LID 00h: bit 0 (LSUPP) of the entry of each supported log.
pub fn supported_log_pages(lids: &[u8]) -> Vec<u8> {
    let mut v = vec![0u8; 1024];
    for &l in lids {
        v[l as usize * 4] = 1;
    }
    v
}

fn error_log(c: &Controller) -> Vec<u8> {
    let st = c.state.lock();
    let mut v = Vec::with_capacity(ERROR_LOG_ENTRIES * 64);
    for i in 0..ERROR_LOG_ENTRIES {
        let mut e = ErrorInformationEntry::new_zeroed();
        if let Some(r) = st.errors.get(i) {
            e.error_count.set(r.count);
            e.sqid.set(r.sqid);
            e.cid.set(r.cid);
            e.status.set(r.status.to_cqe_word(false));
            e.parameter_error_location.set(0xFFFF);
            e.lba.set(r.lba);
            e.nsid.set(r.nsid);
            // Transport Type only for an error of the transport's; 0 otherwise (Figure "Error Information
            // Log Entry Data Structure"), as Linux nvmet leaves it.
            if r.transport {
                e.trtype = lp::TRTYPE_TCP;
            }
        }
        v.extend_from_slice(e.as_bytes());
    }
    v
}

fn smart_log(c: &Controller) -> SmartHealthLog {
    let s = &c.subsys.stats;
    let mut d = SmartHealthLog::new_zeroed();
    d.available_spare = 100;
    d.available_spare_threshold = 10;
    // Data units are thousands of 512-byte units, rounded up (Figure 207).
    let units = |b: u64| (b / 512).div_ceil(1000) as u128;
    d.data_units_read = lp::u128_le(units(s.bytes_read.load(Ordering::Relaxed)));
    d.data_units_written = lp::u128_le(units(s.bytes_written.load(Ordering::Relaxed)));
    d.host_read_commands = lp::u128_le(s.read_cmds.load(Ordering::Relaxed) as u128);
    d.host_write_commands = lp::u128_le(s.write_cmds.load(Ordering::Relaxed) as u128);
    d.power_cycles = lp::u128_le(1);
    d.power_on_hours = lp::u128_le((c.target.now_ms() / 3_600_000) as u128);
    d.media_errors = lp::u128_le(s.media_errors.load(Ordering::Relaxed) as u128);
    d.num_err_log_entries = lp::u128_le(c.state.lock().error_count as u128);
    d
}

fn firmware_slot_log() -> Vec<u8> {
    let mut d = lp::FirmwareSlotInfo::new_zeroed();
    d.afi = 1;
    holdfast_proto::identify::set_ascii(&mut d.frs[0], super::admin::FIRMWARE_REV);
    d.as_bytes().to_vec()
}

/// The NSIDs a Changed Namespace List page holds (FFFFFFFFh: more than it can list).
fn page_nsids(page: &[u8]) -> Vec<u32> {
    page.chunks_exact(4).map(|b| u32::from_le_bytes([b[0], b[1], b[2], b[3]])).take_while(|&n| n != 0).collect()
}

fn changed_ns_list(c: &Controller) -> Vec<u8> {
    let st = c.state.lock();
    let list = st.changed_nsids.clone();
    let mut d = lp::ChangedNamespaceList::new_zeroed();
    if list.len() > d.nsid.len() {
        d.nsid[0].set(0xFFFF_FFFF);
    } else {
        for (slot, n) in d.nsid.iter_mut().zip(&list) {
            slot.set(*n);
        }
    }
    d.as_bytes().to_vec()
}

fn commands_effects() -> lp::CommandsSupportedAndEffects {
    let mut d = lp::CommandsSupportedAndEffects::new_zeroed();
    for op in [
        aop::GET_LOG_PAGE,
        aop::IDENTIFY,
        aop::ABORT,
        aop::SET_FEATURES,
        aop::GET_FEATURES,
        aop::ASYNC_EVENT_REQUEST,
        aop::KEEP_ALIVE,
        aop::HOLDFAST_FENCE_ASSOCIATION,
    ] {
        d.acs[op as usize].set(lp::EFFECTS_CSUPP);
    }
    for op in [iop::READ, iop::COMPARE] {
        d.iocs[op as usize].set(lp::EFFECTS_CSUPP);
    }
    d.iocs[iop::FLUSH as usize].set(lp::EFFECTS_CSUPP | lp::EFFECTS_LBCC);
    for op in [iop::WRITE, iop::WRITE_ZEROES, iop::DATASET_MANAGEMENT] {
        d.iocs[op as usize].set(lp::EFFECTS_CSUPP | lp::EFFECTS_LBCC);
    }
    for op in [iop::RESERVATION_REGISTER, iop::RESERVATION_REPORT, iop::RESERVATION_ACQUIRE, iop::RESERVATION_RELEASE] {
        d.iocs[op as usize].set(lp::EFFECTS_CSUPP);
    }
    d
}

/// holdfast's connection-policy page (README, Connection policy), the same on discovery and I/O controllers.
pub fn policy_page(c: &Controller) -> Vec<u8> {
    policy_of(c).to_log_page().as_bytes().to_vec()
}

/// The policy [`policy_page`] serves to `c`. On an I/O controller its subsystem's, with that subsystem's
/// generation; on a discovery controller the first subsystem's that this host may use through its port, with
/// the discovery controllers' own generation ([`crate::subsystem::Target::discovery_policy_generation`]).
pub fn policy_of(c: &Controller) -> policy::ConnectionPolicy {
    let sub = if c.subsys.is_discovery {
        // The discovery controller serves the policy of the subsystems this host may use through this port (those
        // its discovery log lists): the first one.
        c.target
            .subsystems()
            .into_iter()
            .find(|s| !s.is_discovery && s.on_port(c.port_id) && s.host_allowed(&c.hostnqn))
    } else {
        Some(c.subsys.clone())
    };
    let mut p = policy::ConnectionPolicy {
        instance_id: c.target.instance_id,
        planned_downtime_ms: c.target.planned_downtime_ms.load(Ordering::SeqCst),
        ..Default::default()
    };
    if let Some(s) = sub {
        let pc = s.policy.read().clone();
        p.kato_ms = pc.kato_ms;
        p.reconnect_delay_ms = pc.reconnect_delay_ms;
        p.reconnect_delay_max_ms = pc.reconnect_delay_max_ms;
        p.ctrl_loss_tmo_ms = pc.ctrl_loss_tmo_ms;
        p.fast_io_fail_tmo_ms = pc.fast_io_fail_tmo_ms;
        p.cqt_ms = pc.cqt_ms;
        p.generation = s.policy_generation.load(Ordering::SeqCst);
        // A RAM namespace (no file behind it) starts empty at the next start of the target.
        p.volatile_data = s.namespaces.read().values().any(|n| n.backend.path().is_none());
    }
    if c.subsys.is_discovery {
        p.generation = c.target.discovery_policy_generation.load(Ordering::SeqCst);
    }
    p
}
