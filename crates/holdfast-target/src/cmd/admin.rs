//! Admin commands of an NVM controller (NVMe Base 2.0 §5): Identify, Get/Set Features, Keep Alive (no-op
//! here: every command resets the keep-alive clock), Asynchronous Event Request, Abort. Get Log Page is in
//! [`super::log_page`].

use crate::controller::{Controller, KAS_100MS, MAX_AERS, MAX_IO_QUEUES, MAX_QUEUE_ENTRIES};
use crate::namespace::Namespace;
use crate::request::{Deferred, Outcome, QueueCtx, Request, Response, MAX_TRANSFER, MDTS};
use crate::transport::tcp::IO_INCAPSULE;
use holdfast_proto::fabrics::VERSION_2_0;
use holdfast_proto::features as fid;
use holdfast_proto::identify::{self as id, IdentifyController, IdentifyNamespace};
use holdfast_proto::sqe::{features, identify};
use holdfast_proto::Status;
use std::sync::atomic::Ordering;
use zerocopy::{FromZeros, IntoBytes};

/// CRDT1 and CRDT2 in 100 ms units (CRDT3 follows the policy's reconnect delay).
pub const CRDT_100MS: [u16; 2] = [1, 10];

/// Firmware revision reported in Identify and the Firmware Slot log.
pub const FIRMWARE_REV: &str = concat!("hf", env!("CARGO_PKG_VERSION"));

/// Fill the fields every holdfast controller reports the same way (I/O and discovery).
pub fn common_identify(c: &Controller) -> IdentifyController {
    let mut d = IdentifyController::new_zeroed();
    id::set_ascii(&mut d.sn, &c.subsys.serial);
    id::set_ascii(&mut d.mn, &c.subsys.model);
    id::set_ascii(&mut d.fr, FIRMWARE_REV);
    d.rab = 6;
    d.mdts = MDTS;
    d.cntlid.set(c.cntlid);
    d.aerl = (MAX_AERS - 1) as u8;
    d.lpa = id::LPA_EXTENDED_DATA;
    d.elpe = (crate::controller::ERROR_LOG_ENTRIES - 1) as u8;
    d.kas.set(KAS_100MS);
    d.sqes = 0x66;
    d.cqes = 0x44;
    d.sgls.set(id::SGLS_SUPPORTED | id::SGLS_OFFSET);
    d.subnqn = holdfast_proto::fabrics::nqn_to_field(&c.subsys.nqn);
    d
}

/// Identify Controller for an NVM (I/O) controller (NVMe Base 2.0 Figure 275; NVMe-oF 1.1 Figure 28).
pub fn identify_controller(c: &Controller) -> IdentifyController {
    let mut d = common_identify(c);
    let policy = c.subsys.policy.read().clone();
    // Several controllers (one per host association), several ports, and ANA reporting (crate::ana).
    d.cmic = id::CMIC_MULTI_CTRL | id::CMIC_MULTI_PORT | id::CMIC_ANA;
    d.set_holdfast_uniquifier(c.uniquifier);
    d.ver.set(VERSION_2_0);
    d.oaes.set(id::OAES_NS_ATTR | id::OAES_ANA_CHANGE);
    // Any command resets the keep-alive timer here, but TBKAS (traffic-based keep-alive) is not advertised:
    // with it, a Linux host before 6.4 (and its stable backports) skips a Keep Alive whenever it saw a
    // completion in the last KATO, which can leave up to two KATOs between the commands this controller
    // sees, and the watchdog allows KATO + KAS. Without it the host sends Keep Alive every KATO (KATO / 2
    // since 6.4) whatever the traffic.
    d.ctratt.set(id::CTRATT_HOST_ID_128);
    d.cntrltype = id::CNTRLTYPE_IO;
    d.acl = 3;
    d.frmw = 0x03; // one slot, slot 1 read-only
    d.lpa |= id::LPA_CMD_EFFECTS;
    d.maxcmd.set(MAX_QUEUE_ENTRIES as u16);
    d.nn.set(crate::MAX_NSID);
    // ANA (NVMe Base 2.1 §8.1.1): with CMIC bit 3 the Linux host refuses a controller whose MNAN is 0 or above
    // NN, and sizes its ANA log reads as NANAGRPID descriptors plus MNAN NSIDs (within MDTS).
    d.mnan.set(crate::MAX_NSID);
    d.anatt = crate::ana::ANATT_S;
    d.anacap = crate::ana::ANACAP;
    d.anagrpmax.set(crate::ana::ANAGRPMAX);
    d.nanagrpid.set(crate::ana::ANAGRPMAX);
    d.oncs.set(id::ONCS_COMPARE | id::ONCS_DSM | id::ONCS_WRITE_ZEROES | id::ONCS_SAVE_SELECT | id::ONCS_RESERVATIONS);
    // Compare and Write (cmd::io::execute_fused) holds its whole range, so any of them within MDTS is atomic;
    // ACWU is said in logical blocks for every format at once: MDTS in the largest blocks, 4 KiB.
    d.fuses.set(id::FUSES_COMPARE_AND_WRITE);
    d.acwu.set((MAX_TRANSFER / 4096 - 1) as u16);
    d.vwc = id::VWC_PRESENT | id::VWC_FLUSH_BROADCAST;
    d.cqt.set(policy.cqt_ms.min(u16::MAX as u32) as u16);
    // Command Retry Delay Times (100 ms units), selected by CRD in retryable statuses once the host enables
    // ACRE (Host Behavior Support): CRD 1 for transient transport errors, 2 and 3 for longer waits.
    d.crdt1.set(CRDT_100MS[0]);
    d.crdt2.set(CRDT_100MS[1]);
    d.crdt3.set((policy.reconnect_delay_ms / 100).clamp(1, u16::MAX as u32) as u16);
    d.ioccsz.set(((64 + IO_INCAPSULE) / 16) as u32);
    d.iorcsz.set(1);
    d.msdbd = 1;
    d.ofcs.set(1); // Disconnect supported
    d
}

/// Identify Namespace (NVM Command Set 1.0 Figure 97).
pub fn identify_namespace(ns: &Namespace) -> IdentifyNamespace {
    let mut d = IdentifyNamespace::new_zeroed();
    d.nsze.set(ns.nblocks);
    d.ncap.set(ns.nblocks);
    d.nuse.set(ns.nblocks);
    d.nlbaf = 0;
    d.flbas = 0;
    d.dlfeat = id::DLFEAT_READS_ZEROES | id::DLFEAT_WRITE_ZEROES_DEAC;
    d.nmic = 1; // may be attached to several controllers
    d.rescap = holdfast_proto::reservation::RESCAP_ALL_TYPES_IEKEY;
    if ns.pr.ptpl_capable() {
        d.rescap |= holdfast_proto::reservation::RESCAP_PTPL;
    }
    if ns.read_only {
        d.nsattr |= id::NSATTR_WRITE_PROTECTED;
    }
    d.nvmcap = ((ns.nblocks as u128) << ns.lba_shift()).to_le_bytes();
    d.anagrpid.set(ns.ana_group());
    d.nguid = ns.ids.nguid;
    d.eui64 = ns.ids.eui64;
    d.lbaf[0].lbads = ns.lba_shift() as u8;
    d
}

/// I/O Command Set Independent Identify Namespace (CNS 08h; NVMe Base 2.0 Figure 280): what CNS 00h says
/// of sharing, reservations, the ANA group and write protection, and that the namespace is ready.
pub fn identify_namespace_independent(ns: &Namespace) -> id::IdentifyNamespaceIndependent {
    let full = identify_namespace(ns);
    let mut d = id::IdentifyNamespaceIndependent::new_zeroed();
    d.nmic = full.nmic;
    d.rescap = full.rescap;
    d.anagrpid = full.anagrpid;
    d.nsattr = full.nsattr;
    d.nstat = id::NSTAT_READY;
    d
}

fn ns_or_inactive(c: &Controller, nsid: u32) -> Result<Option<std::sync::Arc<Namespace>>, Status> {
    if nsid == 0 || (nsid > crate::MAX_NSID && nsid != 0xFFFF_FFFF) {
        return Err(Status::INVALID_NAMESPACE.with_dnr());
    }
    Ok(c.subsys.namespace(nsid))
}

/// Identify (NVMe Base 2.0 §5.17).
pub fn identify(_ctx: &QueueCtx, c: &Controller, req: &Request) -> Response {
    let nsid = req.sqe.nsid();
    let csi = identify::csi(&req.sqe);
    match identify::cns(&req.sqe) {
        id::CNS_NAMESPACE => match ns_or_inactive(c, nsid) {
            Ok(Some(ns)) => Response::data(identify_namespace(&ns).as_bytes().to_vec()),
            // The capabilities common to all namespaces are for controllers with Namespace Management
            // (OACS bit 3), which this one is not: Invalid Namespace (NVMe Base 2.0 §5.17.2.1), as nvmet.
            Ok(None) if nsid == 0xFFFF_FFFF => Response::err(Status::INVALID_NAMESPACE.with_dnr()),
            Ok(None) => Response::data(vec![0u8; 4096]), // inactive NSID: zero-filled
            Err(s) => Response::err(s),
        },
        // Mandatory for an NVMe 2.0 I/O controller; recent Linux hosts ask for it first when they scan a
        // namespace (and take NSTAT bit 0 clear for a namespace not ready, which they skip).
        id::CNS_CS_INDEPENDENT_NAMESPACE => match ns_or_inactive(c, nsid) {
            Ok(Some(ns)) => Response::data(identify_namespace_independent(&ns).as_bytes().to_vec()),
            Ok(None) if nsid == 0xFFFF_FFFF => Response::err(Status::INVALID_NAMESPACE.with_dnr()),
            Ok(None) => Response::data(vec![0u8; 4096]),
            Err(s) => Response::err(s),
        },
        id::CNS_CONTROLLER => Response::data(identify_controller(c).as_bytes().to_vec()),
        id::CNS_ACTIVE_NS_LIST => {
            if nsid >= 0xFFFF_FFFE {
                return Response::err(Status::INVALID_NAMESPACE.with_dnr());
            }
            let list: Vec<u32> = c.subsys.namespaces.read().keys().copied().filter(|&n| n > nsid).collect();
            Response::data(id::active_ns_list(&list).to_vec())
        }
        id::CNS_NS_DESC_LIST => match ns_or_inactive(c, nsid) {
            Ok(Some(ns)) => Response::data(
                id::ns_descriptor_list(&[
                    id::NsDescriptor::Eui64(ns.ids.eui64),
                    id::NsDescriptor::Nguid(ns.ids.nguid),
                    id::NsDescriptor::Uuid(ns.ids.uuid),
                    id::NsDescriptor::Csi(0),
                ])
                .to_vec(),
            ),
            _ => Response::err(Status::INVALID_NAMESPACE.with_dnr()),
        },
        // NVM command set specific structures: nothing beyond the defaults (all zero).
        id::CNS_CSI_NAMESPACE if csi == 0 => match ns_or_inactive(c, nsid) {
            Ok(None) if nsid == 0xFFFF_FFFF => Response::err(Status::INVALID_NAMESPACE.with_dnr()),
            Ok(_) => Response::data(vec![0u8; 4096]),
            Err(s) => Response::err(s),
        },
        id::CNS_CSI_CONTROLLER if csi == 0 => Response::data(vec![0u8; 4096]),
        id::CNS_CSI_ACTIVE_NS_LIST if csi == 0 => {
            if nsid >= 0xFFFF_FFFE {
                return Response::err(Status::INVALID_NAMESPACE.with_dnr());
            }
            let list: Vec<u32> = c.subsys.namespaces.read().keys().copied().filter(|&n| n > nsid).collect();
            Response::data(id::active_ns_list(&list).to_vec())
        }
        _ => Response::err(Status::INVALID_FIELD.with_dnr()),
    }
}

const SEL_DEFAULT: u8 = 1;
const SEL_SAVED: u8 = 2;
const SEL_SUPPORTED: u8 = 3;
/// Supported-capabilities bit: changeable.
const CAP_CHANGEABLE: u32 = 1 << 2;
/// Supported-capabilities bit: namespace specific.
const CAP_NS_SPECIFIC: u32 = 1 << 1;

/// Asynchronous Event Configuration bits we can report.
pub const AEC_SUPPORTED: u32 = 0xFF | (1 << 8) | (1 << 11);

/// The features Set Features changes (or answers for: Host Identifier).
const SET_FIDS: &[u8] = &[
    fid::ARBITRATION,
    fid::POWER_MANAGEMENT,
    fid::TEMPERATURE_THRESHOLD,
    fid::ERROR_RECOVERY,
    fid::VOLATILE_WRITE_CACHE,
    fid::NUMBER_OF_QUEUES,
    fid::WRITE_ATOMICITY,
    fid::ASYNC_EVENT_CONFIG,
    fid::KEEP_ALIVE_TIMER,
    fid::HOST_BEHAVIOR_SUPPORT,
    fid::SOFTWARE_PROGRESS_MARKER,
    fid::HOST_IDENTIFIER,
];

/// The namespace-specific ones among them (Get Features Select 011b says so): Error Recovery, whose scope is
/// the namespace (NVMe Base 2.0 Figure 317; Write Atomicity Normal's is the controller). The reservation
/// features (82h, 83h) are namespace specific too, handled apart.
const NS_SPECIFIC_FIDS: &[u8] = &[fid::ERROR_RECOVERY];

/// The namespaces a Get or Set Features of a namespace-specific feature names, checked as NVMe Base 2.0 §5.15
/// and §5.27 say (and QEMU's controller checks): NSID FFFFFFFFh is every namespace for a Set, and for a Get
/// Invalid Field where the feature says so (`get_all`: the reservation features, §5.27.1.20-21), else Invalid
/// Namespace; NSID 0h or above the largest NSID, Invalid Namespace; an NSID of no namespace, Invalid Field.
fn feature_namespaces(c: &Controller, nsid: u32, set: bool, get_all: Status) -> Result<Vec<u32>, Status> {
    match nsid {
        0xFFFF_FFFF if set => Ok(c.subsys.namespaces.read().keys().copied().collect()),
        0xFFFF_FFFF => Err(get_all.with_dnr()),
        0 => Err(Status::INVALID_NAMESPACE.with_dnr()),
        n if n > crate::MAX_NSID => Err(Status::INVALID_NAMESPACE.with_dnr()),
        n if c.subsys.namespace(n).is_none() => Err(Status::INVALID_FIELD.with_dnr()),
        n => Ok(vec![n]),
    }
}

/// Get Features (NVMe Base 2.0 §5.15).
pub fn get_features(c: &Controller, req: &Request) -> Response {
    let f = features::fid(&req.sqe);
    let sel = features::sel(&req.sqe);
    // Select 100b..111b is reserved, for the features answered with data too.
    if sel > SEL_SUPPORTED {
        return Response::err(Status::INVALID_FIELD.with_dnr());
    }
    if f == fid::RESERVATION_PERSISTENCE {
        return get_reservation_persistence(c, req);
    }
    if f == fid::RESERVATION_NOTIFICATION_MASK {
        return reservation_notification_mask(c, req, None);
    }
    let ns_specific = NS_SPECIFIC_FIDS.contains(&f);
    // Checked before the state lock is taken (the namespace table has its own lock).
    if ns_specific {
        if let Err(s) = feature_namespaces(c, req.sqe.nsid(), false, Status::INVALID_NAMESPACE) {
            return Response::err(s);
        }
    }
    let def = crate::controller::Features::default();
    let st = c.state.lock();
    // No feature here is saveable (Set Features with SV fails, Select 011b never says SAVEABLE): the saved value
    // of one is its default (NVMe Base 2.0 §5.15, Select; QEMU's controller answers the same).
    let current = !matches!(sel, SEL_DEFAULT | SEL_SAVED);
    let cur = if current { &st.features } else { &def };
    let cdw11 = req.sqe.cdw11.get();
    let value = match f {
        fid::ARBITRATION => cur.arbitration,
        fid::POWER_MANAGEMENT => cur.power_management,
        fid::TEMPERATURE_THRESHOLD => {
            let tmpsel = ((cdw11 >> 16) & 0xF) as usize;
            let thsel = ((cdw11 >> 20) & 0x3) as usize;
            if tmpsel > 8 || thsel > 1 {
                return Response::err(Status::INVALID_FIELD.with_dnr());
            }
            cur.temp_thresholds[tmpsel][thsel] as u32 | (tmpsel as u32) << 16 | (thsel as u32) << 20
        }
        fid::ERROR_RECOVERY if current => st.error_recovery.get(&req.sqe.nsid()).copied().unwrap_or(def.error_recovery),
        fid::ERROR_RECOVERY => def.error_recovery,
        fid::VOLATILE_WRITE_CACHE => cur.write_cache as u32,
        fid::NUMBER_OF_QUEUES => {
            let n = if current { st.io_queues_granted } else { MAX_IO_QUEUES };
            (n as u32 - 1) | ((n as u32 - 1) << 16)
        }
        fid::WRITE_ATOMICITY => cur.write_atomicity,
        fid::ASYNC_EVENT_CONFIG => cur.async_event_config,
        fid::KEEP_ALIVE_TIMER => {
            if current {
                c.kato_ms.load(Ordering::Relaxed)
            } else {
                c.subsys.policy.read().kato_ms
            }
        }
        fid::HOST_BEHAVIOR_SUPPORT => {
            if sel == SEL_SUPPORTED {
                return Response::dw0(CAP_CHANGEABLE);
            }
            return Response::data(cur.host_behavior.to_vec());
        }
        fid::SOFTWARE_PROGRESS_MARKER => cur.sw_progress,
        fid::HOST_IDENTIFIER => {
            if sel == SEL_SUPPORTED {
                return Response::dw0(0);
            }
            if cdw11 & 1 == 0 {
                return Response::err(Status::INVALID_FIELD.with_dnr()); // only the 128-bit Host ID exists
            }
            return Response::data(c.hostid.to_vec());
        }
        _ => return Response::err(Status::INVALID_FIELD.with_dnr()),
    };
    if sel == SEL_SUPPORTED {
        let changeable = f != fid::NUMBER_OF_QUEUES || !st.io_queue_connected;
        return Response::dw0(
            if changeable { CAP_CHANGEABLE } else { 0 } | if ns_specific { CAP_NS_SPECIFIC } else { 0 },
        );
    }
    Response::dw0(value)
}

/// Feature 82h, Reservation Notification Mask (NVMe Base 2.0 §5.27.1.20): which kinds of reservation notice
/// this controller's host gets for the namespace the command names ([`Controller::reservation_notice`]); Set
/// with NSID FFFFFFFFh sets it for every namespace. Per controller, as features are.
fn reservation_notification_mask(c: &Controller, req: &Request, set: Option<u32>) -> Response {
    use holdfast_proto::features::resv_mask;
    let nsid = req.sqe.nsid();
    let nsids = match feature_namespaces(c, nsid, set.is_some(), Status::INVALID_FIELD) {
        Ok(n) => n,
        Err(s) => return Response::err(s),
    };
    match set {
        None => match features::sel(&req.sqe) {
            SEL_SUPPORTED => Response::dw0(CAP_NS_SPECIFIC | CAP_CHANGEABLE),
            SEL_DEFAULT | SEL_SAVED => Response::dw0(0),
            s if s > SEL_SUPPORTED => Response::err(Status::INVALID_FIELD.with_dnr()),
            _ => Response::dw0(c.state.lock().resv_masks.get(&nsid).copied().unwrap_or(0)),
        },
        Some(mask) if mask & !resv_mask::ALL != 0 => Response::err(Status::INVALID_FIELD.with_dnr()),
        Some(mask) => {
            let mut st = c.state.lock();
            for n in nsids {
                st.resv_masks.insert(n, mask);
            }
            Response::ok()
        }
    }
}

/// The namespace Feature 83h, Reservation Persistence (NVMe Base 2.0 §5.27.1.21), names: one namespace, for
/// a Set too (each namespace's state is its own; FFFFFFFFh is not taken as "all" by a Set).
fn ptpl_namespace(c: &Controller, req: &Request, set: bool) -> Result<std::sync::Arc<Namespace>, Status> {
    let nsid = req.sqe.nsid();
    if set && nsid == 0xFFFF_FFFF {
        return Err(Status::INVALID_NAMESPACE.with_dnr());
    }
    feature_namespaces(c, nsid, false, Status::INVALID_FIELD)?;
    c.subsys.namespace(nsid).ok_or(Status::INVALID_FIELD.with_dnr())
}

/// Get Features 83h, Reservation Persistence: the namespace's Persist Through Power Loss State, or (Select
/// 11b) whether it can be changed ([`crate::cmd::reservation::Reservations::ptpl_capable`]).
fn get_reservation_persistence(c: &Controller, req: &Request) -> Response {
    let ns = match ptpl_namespace(c, req, false) {
        Ok(ns) => ns,
        Err(s) => return Response::err(s),
    };
    match features::sel(&req.sqe) {
        SEL_SUPPORTED => Response::dw0(CAP_NS_SPECIFIC | if ns.pr.ptpl_capable() { CAP_CHANGEABLE } else { 0 }),
        SEL_DEFAULT => Response::dw0(0),
        s if s > SEL_SUPPORTED => Response::err(Status::INVALID_FIELD.with_dnr()),
        _ => Response::dw0(ns.pr.ptpl() as u32),
    }
}

/// Set Features 83h, Reservation Persistence: turn Persist Through Power Loss on (only where the namespace
/// can persist) or off. Where it can, off the connection's task: it writes or removes the namespace's
/// reservation record, with fsyncs.
fn set_reservation_persistence(c: &Controller, req: &Request, on: bool) -> Outcome {
    let ns = match ptpl_namespace(c, req, true) {
        Ok(ns) => ns,
        Err(s) => return Response::err(s).into(),
    };
    let set = move |ns: &Namespace| match ns.pr.set_ptpl(on) {
        Ok(()) => Response::ok(),
        Err(s) => Response::err(s),
    };
    match ns.pr.ptpl_capable() {
        false if on => Response::err(Status::INVALID_FIELD.with_dnr()).into(),
        false => set(&ns).into(),
        true => Outcome::Later(Deferred::off_task(ns.clone(), move || set(&ns))),
    }
}

/// Set Features (NVMe Base 2.0 §5.27).
pub fn set_features(c: &Controller, req: &Request, data: &[u8]) -> Outcome {
    if features::save(&req.sqe) {
        return Response::err(Status::FEATURE_NOT_SAVEABLE.with_dnr()).into();
    }
    let f = features::fid(&req.sqe);
    let v = req.sqe.cdw11.get();
    if f == fid::RESERVATION_PERSISTENCE {
        return set_reservation_persistence(c, req, v & 1 != 0);
    }
    if f == fid::RESERVATION_NOTIFICATION_MASK {
        return reservation_notification_mask(c, req, Some(v)).into();
    }
    // A feature that is not namespace specific belongs to the controller: a command naming a namespace for it
    // (an NSID other than 0h and FFFFFFFFh) is Feature Not Namespace Specific (NVMe Base 2.0 §5.27, as QEMU's
    // controller answers); an NSID that names none at all, Invalid Namespace. Unknown FIDs are Invalid Field below.
    let nsid = req.sqe.nsid();
    let ns_specific = NS_SPECIFIC_FIDS.contains(&f);
    if SET_FIDS.contains(&f) && !ns_specific && nsid != 0 && nsid != 0xFFFF_FFFF {
        let status = if nsid <= crate::MAX_NSID { Status::FEATURE_NOT_NS_SPECIFIC } else { Status::INVALID_NAMESPACE };
        return Response::err(status.with_dnr()).into();
    }
    // A namespace-specific one names a namespace, or every one (FFFFFFFFh).
    let nsids = if ns_specific {
        match feature_namespaces(c, nsid, true, Status::INVALID_NAMESPACE) {
            Ok(n) => n,
            Err(s) => return Response::err(s).into(),
        }
    } else {
        Vec::new()
    };
    // The namespace whose I/O threads write the volatile write cache back when it is turned off (below),
    // looked up before the state lock is taken (the namespace table has its own lock).
    let writeback = if f == fid::VOLATILE_WRITE_CACHE && v & 1 == 0 { c.subsys.file_namespace() } else { None };
    let mut st = c.state.lock();
    match f {
        fid::ARBITRATION => st.features.arbitration = v,
        fid::POWER_MANAGEMENT => {
            if v & 0x1F != 0 {
                return Response::err(Status::INVALID_FIELD.with_dnr()).into(); // only power state 0 exists
            }
            st.features.power_management = v;
        }
        fid::TEMPERATURE_THRESHOLD => {
            let tmpsel = ((v >> 16) & 0xF) as usize;
            let thsel = ((v >> 20) & 0x3) as usize;
            if thsel > 1 || (tmpsel > 8 && tmpsel != 0xF) {
                return Response::err(Status::INVALID_FIELD.with_dnr()).into();
            }
            let sensors = if tmpsel == 0xF { 0..9 } else { tmpsel..tmpsel + 1 };
            for s in sensors {
                st.features.temp_thresholds[s][thsel] = v as u16;
            }
        }
        fid::ERROR_RECOVERY => {
            if v & (1 << 16) != 0 {
                return Response::err(Status::INVALID_FIELD.with_dnr()).into(); // DULBE needs NSFEAT bit 2
            }
            for n in nsids {
                st.error_recovery.insert(n, v);
            }
        }
        fid::VOLATILE_WRITE_CACHE => {
            let was_on = std::mem::replace(&mut st.features.write_cache, v & 1 != 0);
            c.write_through.store(v & 1 == 0, std::sync::atomic::Ordering::Release);
            // Turned off: what the cache holds goes to the media before the command completes, as a drive
            // writes its cache back when it is disabled. A host stops sending Flush once the cache is off
            // (Linux clears the queue's write cache flag), so writes completed while it was on would
            // otherwise never be made durable. Writes completing from now on are durable by themselves
            // (`cmd::io::run`, which also covers one still on its way to the cache now).
            if let Some(ns) = writeback.filter(|_| was_on && v & 1 == 0) {
                let subsys = c.subsys.clone();
                return Outcome::Later(Deferred::off_task(ns, move || match subsys.flush_namespaces() {
                    Ok(()) => Response::ok(),
                    Err(e) => Response::err(super::io::media_status(&e, true)),
                }));
            }
        }
        fid::NUMBER_OF_QUEUES => {
            if st.io_queue_connected {
                return Response::err(Status::COMMAND_SEQUENCE_ERROR.with_dnr()).into();
            }
            let (nsqr, ncqr) = (v & 0xFFFF, v >> 16);
            if nsqr == 0xFFFF || ncqr == 0xFFFF {
                return Response::err(Status::INVALID_FIELD.with_dnr()).into();
            }
            // The first allocates; a later one (before any I/O queue) is answered with that allocation, which
            // does not change until a reset (NVMe Base 2.0 §5.27.1.5; Linux nvmet's is fixed).
            let n = if st.io_queues_allocated {
                st.io_queues_granted
            } else {
                ((nsqr.min(ncqr) + 1) as u16).min(MAX_IO_QUEUES)
            };
            st.io_queues_granted = n;
            st.io_queues_allocated = true;
            return Response::dw0((n as u32 - 1) | ((n as u32 - 1) << 16)).into();
        }
        fid::WRITE_ATOMICITY => st.features.write_atomicity = v & 1,
        fid::ASYNC_EVENT_CONFIG => {
            let supported = if c.subsys.is_discovery { super::discovery::AEC_DISCOVERY_CHANGE } else { AEC_SUPPORTED };
            // An event this controller never reports cannot be enabled: Invalid Field, nothing changed (as Linux
            // nvmet answers). Dropping the bit and succeeding let the host wait for a notice that never comes.
            if v & !supported != 0 {
                return Response::err(Status::INVALID_FIELD.with_dnr()).into();
            }
            st.features.async_event_config = v;
            Controller::event_classes_changed(&mut st, v);
        }
        fid::KEEP_ALIVE_TIMER => {
            // A discovery controller takes 0 as at Connect: two minutes, not "never" (an unauthenticated peer
            // would otherwise hold it for ever).
            let v = if v == 0 && c.subsys.is_discovery { super::fabrics::DISCOVERY_DEFAULT_KATO_MS } else { v };
            // Round up to the Keep Alive granularity (KAS).
            let g = KAS_100MS as u32 * 100;
            c.kato_ms.store(v.div_ceil(g).saturating_mul(g), Ordering::Relaxed);
            // no wrap to a tiny KATO (found by fuzzing)
            c.kato_changed.notify_one();
        }
        fid::HOST_BEHAVIOR_SUPPORT => {
            if data.len() < 512 {
                return Response::err(Status::SGL_LENGTH_INVALID.with_dnr()).into();
            }
            st.features.host_behavior.copy_from_slice(&data[..512]);
        }
        fid::SOFTWARE_PROGRESS_MARKER => st.features.sw_progress = v & 0xFF,
        fid::HOST_IDENTIFIER => return Response::err(Status::COMMAND_SEQUENCE_ERROR.with_dnr()).into(),
        _ => return Response::err(Status::INVALID_FIELD.with_dnr()).into(),
    }
    Response::ok().into()
}

/// Asynchronous Event Request (NVMe Base 2.0 §5.2): held until an event; AERL + 1 may be outstanding.
pub fn async_event_request(c: &Controller, req: &Request) -> Outcome {
    let mut st = c.state.lock();
    if st.aers.len() >= MAX_AERS {
        return Response::err(Status::AER_LIMIT_EXCEEDED.with_dnr()).into();
    }
    st.aers.push_back(req.sqe.cid());
    Controller::deliver(&mut st);
    Outcome::Held
}

/// Fence Association (holdfast, vendor-specific admin opcode C1h; README, No stale writes). A host that reconnected names
/// its previous association's controller: CNTLID in CDW10 bits 15:0, its uniquifier (Identify Controller,
/// vendor-specific area) in CDW11 (low 32 bits) and CDW12 (high). If that controller is still alive, has that
/// uniquifier (not a later controller that got the CNTLID, nor one of another target instance) and is this
/// host's (the same HostNQN and HostID), it is torn down now, which closes its queues' media gates and
/// registers what they still have in flight. Completion Dword 0: how many commands of this host's ended
/// associations are still in flight; the host issues the command again until it reads 0, and only then issues
/// anything else. This covers what the drain at Connect cannot: an old association the target had not yet seen end
/// (a partition the host noticed first, healed before the target's KATO ran out), whose late commands would
/// otherwise still run. Any other controller is left alone.
pub fn fence_association(c: &Controller, req: &Request) -> Response {
    let old = (req.sqe.cdw10.get() & 0xFFFF) as u16;
    let uniquifier = req.sqe.cdw11.get() as u64 | (req.sqe.cdw12.get() as u64) << 32;
    if old == c.cntlid && uniquifier == c.uniquifier {
        // Itself.
        return Response::err(Status::INVALID_FIELD.with_dnr());
    }
    if let Some(o) = c
        .subsys
        .controller(old)
        .filter(|o| o.uniquifier == uniquifier && o.hostnqn == c.hostnqn && o.hostid == c.hostid)
    {
        o.teardown(&format!("fenced by the same host's new association (cntlid {})", c.cntlid));
    }
    // With the drain switched off (a test-only setting, as at Connect) nothing is waited for.
    let left = if c.target.settings.drain { c.subsys.dead_inflight(&c.hostnqn, &c.hostid) } else { 0 };
    Response::dw0(left.min(u32::MAX as u64) as u32)
}

/// Abort (NVMe Base 2.0 §5.1): commands here are never abortable once received, so the answer is always
/// "command not aborted" (dword 0 bit 0 set), which the specification allows.
pub fn abort(_req: &Request) -> Response {
    Response::dw0(1)
}
