//! The discovery controller (NVMe-oF 1.1 §5): Identify Controller, the Discovery log page (LID 70h) with one
//! entry per (subsystem this host may use, port) plus one per port for the current discovery subsystem, and
//! the few other admin commands a discovery controller accepts.

use crate::controller::{Controller, ADMIN_QUEUE_ENTRIES, MAX_QUEUE_ENTRIES};
use crate::request::{DataDir, Exec, ParseResult, QueueCtx, Request, Response, MAX_TRANSFER};
use crate::subsystem::DiscoveryView;
use holdfast_proto::fabrics::{DISCOVERY_NQN, VERSION_1_3};
use holdfast_proto::features as fid;
use holdfast_proto::identify as id;
use holdfast_proto::log_page::{self as lp, DiscoveryLogEntry};
use holdfast_proto::opcode::admin as aop;
use holdfast_proto::sqe::{features, identify};
use holdfast_proto::{Status, SubmissionEntry};
use std::net::{IpAddr, SocketAddr};
use zerocopy::IntoBytes;

/// Asynchronous Event Configuration bit 31: Discovery Log Page Change notices.
pub const AEC_DISCOVERY_CHANGE: u32 = 1 << 31;

/// Parse an admin command on a discovery controller.
pub fn parse(_ctx: &QueueCtx, sqe: &SubmissionEntry) -> ParseResult {
    let (exec, dir) = match sqe.opcode {
        aop::IDENTIFY => (Exec::Identify, DataDir::ToHost),
        aop::GET_LOG_PAGE => (Exec::GetLogPage, DataDir::ToHost),
        aop::GET_FEATURES => match features::fid(sqe) {
            fid::KEEP_ALIVE_TIMER | fid::ASYNC_EVENT_CONFIG => (Exec::GetFeatures, DataDir::None),
            _ => return Err(Status::INVALID_FIELD.with_dnr()),
        },
        aop::SET_FEATURES => match features::fid(sqe) {
            fid::KEEP_ALIVE_TIMER | fid::ASYNC_EVENT_CONFIG => (Exec::SetFeatures, DataDir::None),
            _ => return Err(Status::INVALID_FIELD.with_dnr()),
        },
        aop::KEEP_ALIVE => (Exec::KeepAlive, DataDir::None),
        aop::ASYNC_EVENT_REQUEST => (Exec::AsyncEvent, DataDir::None),
        _ => return Err(Status::INVALID_OPCODE.with_dnr()),
    };
    let len = if dir == DataDir::None { 0 } else { sqe.dptr.len() as usize };
    // MDTS, as on the NVM controllers (a host reads a long discovery log in pieces, by offset).
    if len > MAX_TRANSFER {
        return Err(Status::INVALID_FIELD.with_dnr());
    }
    Ok(Request { sqe: *sqe, exec, dir, len })
}

/// Identify on a discovery controller: only CNS 01h.
pub fn identify(_ctx: &QueueCtx, c: &Controller, req: &Request) -> Response {
    if identify::cns(&req.sqe) != id::CNS_CONTROLLER {
        return Response::err(Status::INVALID_FIELD.with_dnr());
    }
    let mut d = super::admin::common_identify(c);
    d.ver.set(VERSION_1_3);
    d.cntrltype = id::CNTRLTYPE_DISCOVERY;
    d.oaes.set(AEC_DISCOVERY_CHANGE);
    // As an I/O controller's, and nvmet's (a high value, not a limit): the Linux host sizes its view of the
    // controller by the smaller of MAXCMD and CAP.MQES and warned "clamping down" at every discovery at 32.
    d.maxcmd.set(MAX_QUEUE_ENTRIES as u16);
    d.subnqn = holdfast_proto::fabrics::nqn_to_field(DISCOVERY_NQN);
    d.ofcs.set(id::OFCS_DISCONNECT); // Disconnect is taken here too (fabrics::disconnect)
    Response::data(d.as_bytes().to_vec())
}

fn adrfam(a: &SocketAddr) -> u8 {
    if a.is_ipv4() {
        lp::ADRFAM_IPV4
    } else {
        lp::ADRFAM_IPV6
    }
}

/// Where a host reaches a port: the port's own address, or for a port listening on a wildcard address the
/// address this host reached the target at (`local`), if that listener accepts it: an IPv4 address on
/// 0.0.0.0, any address on [::] (dual-stack, the Linux default). None: this host's address says nothing of
/// where an IPv4 wildcard port can be reached (the host came in over IPv6), and the port is left out rather
/// than listed at an address it does not listen on.
fn reachable_addr(port: SocketAddr, local: IpAddr) -> Option<SocketAddr> {
    if !port.ip().is_unspecified() {
        return Some(port);
    }
    // A host on IPv4 that reached a [::] listener shows as ::ffff:a.b.c.d: listed as the IPv4 address it is.
    let local = local.to_canonical();
    match (port.ip(), local) {
        (IpAddr::V4(_), IpAddr::V6(_)) => None,
        _ => Some(SocketAddr::new(local, port.port())),
    }
}

/// The Discovery log page for this controller's host. LSP bit 1 (PLEO) limits it to the port the host is
/// connected to. A port listening on a wildcard address reports the address the host reached us at
/// (`reachable_addr`).
pub fn discovery_log(ctx: &QueueCtx, c: &Controller, lsp: u8) -> Vec<u8> {
    let port_local_only = lsp & 0x2 != 0;
    // One published state, entries and GENCTR together.
    let view = c.target.discovery_view.read().clone();
    let entries = entries_for(&view, &c.hostnqn, c.local_addr.ip(), ctx.port.id, port_local_only);
    lp::discovery_log_bytes(view.genctr, &entries)
}

/// The entries of the log `view` gives host `hostnqn`, which reached the target at `local` through port
/// `host_port`: every port's (or with `port_local_only` that port's), each with the subsystems exported there
/// that admit the host and the discovery subsystem itself; then the referrals listed to that port's hosts.
///
/// A port's own discovery entry (SUBTYPE 3) says DUPRETINFO only when that port's discovery controller would
/// give this host the same log (NVMe Base 2.1, Discovery Log Page Entry, EFLAGS bit 0: nvme-cli's connect-all
/// then skips it): always for the port asked through, and for another port only if its log, read at the
/// address listed for it, has the same entries. Referrals listed to some ports only, or a wildcard port that
/// one address family cannot reach, make the logs of two ports differ.
pub fn entries_for(
    view: &DiscoveryView,
    hostnqn: &str,
    local: IpAddr,
    host_port: u16,
    port_local_only: bool,
) -> Vec<DiscoveryLogEntry> {
    let recs = records(view, hostnqn, local, host_port, port_local_only);
    let same_as_ours = |theirs: &[(DiscoveryLogEntry, Option<IpAddr>)]| {
        theirs.len() == recs.len() && theirs.iter().zip(&recs).all(|(a, b)| entry_bytes(&a.0) == entry_bytes(&b.0))
    };
    let mut entries: Vec<DiscoveryLogEntry> = recs.iter().map(|(e, _)| *e).collect();
    for (e, (_, at)) in entries.iter_mut().zip(&recs) {
        let Some(at) = *at else { continue };
        let port = e.portid.get();
        if port == host_port || (!port_local_only && same_as_ours(&records(view, hostnqn, at, port, false))) {
            e.eflags.set(e.eflags.get() | lp::EFLAGS_DUPRETINFO);
        }
    }
    entries
}

/// [`entries_for`]'s entries without DUPRETINFO, each port's discovery entry with the address it is listed at.
fn records(
    view: &DiscoveryView,
    hostnqn: &str,
    local: IpAddr,
    host_port: u16,
    port_local_only: bool,
) -> Vec<(DiscoveryLogEntry, Option<IpAddr>)> {
    let mut entries = Vec::new();
    for port in view.ports.iter().filter(|p| !port_local_only || p.id == host_port) {
        let Some(addr) = reachable_addr(port.addr, local) else { continue };
        let traddr = addr.ip().to_string();
        let trsvcid = addr.port().to_string();
        for (nqn, _) in view.subsystems.iter().filter(|(_, a)| a.exported_on(port.id) && a.admits(hostnqn)) {
            entries.push((entry(lp::SUBTYPE_NVME, port.id, &traddr, &trsvcid, nqn, adrfam(&addr)), None));
        }
        let disc = entry(lp::SUBTYPE_CURRENT_DISCOVERY, port.id, &traddr, &trsvcid, DISCOVERY_NQN, adrfam(&addr));
        entries.push((disc, Some(addr.ip())));
    }
    for r in view.referrals.iter().filter(|r| r.ports.is_empty() || r.ports.contains(&host_port)) {
        let e = entry(
            lp::SUBTYPE_REFERRAL,
            r.portid,
            &r.addr.ip().to_string(),
            &r.addr.port().to_string(),
            DISCOVERY_NQN,
            adrfam(&r.addr),
        );
        entries.push((e, None));
    }
    entries
}

/// Does the log of the discovery controller `c` differ between `before` and `after` (GENCTR aside)? Only then
/// is it sent a Discovery Log Page Change notice, as Linux nvmet notifies only the hosts a change concerns
/// (`nvmet_subsys_disc_changed`): a notice is masked until the host reads the log, so one spent on another
/// host's change can keep a host (reading with RAE set) from hearing of a change of its own.
pub fn log_changed_for(c: &Controller, before: &DiscoveryView, after: &DiscoveryView) -> bool {
    let of = |v: &DiscoveryView| entries_for(v, &c.hostnqn, c.local_addr.ip(), c.port_id, false);
    let (b, a) = (of(before), of(after));
    b.len() != a.len() || b.iter().zip(&a).any(|(x, y)| entry_bytes(x) != entry_bytes(y))
}

fn entry(subtype: u8, portid: u16, traddr: &str, trsvcid: &str, subnqn: &str, adrfam: u8) -> DiscoveryLogEntry {
    let mut e =
        DiscoveryLogEntry::build(subtype, portid, 0xFFFF, ADMIN_QUEUE_ENTRIES as u16, trsvcid, subnqn, traddr, adrfam);
    // Secure channel "not specified": no TLS is offered. Of another target's discovery controller nothing is
    // known (TREQ 0, no EFLAGS).
    if subtype == lp::SUBTYPE_REFERRAL {
        return e;
    }
    e.treq = lp::TREQ_DISABLE_SQFLOW;
    if subtype == lp::SUBTYPE_CURRENT_DISCOVERY {
        // Persistent connections are taken (KATO, log change events); DUPRETINFO where it holds, [`entries_for`].
        e.eflags.set(lp::EFLAGS_EPCSD);
    }
    e
}

/// Bytes of an entry (for tests).
pub fn entry_bytes(e: &DiscoveryLogEntry) -> &[u8] {
    e.as_bytes()
}

#[cfg(test)]
mod tests {
    use super::reachable_addr;
    use std::net::SocketAddr;

    #[test]
    fn a_wildcard_port_is_listed_only_at_an_address_it_accepts() {
        let at = |port: &str, local: &str| {
            reachable_addr(port.parse().unwrap(), local.parse().unwrap()).map(|a: SocketAddr| a.to_string())
        };
        // A bound address is listed as it is, whatever the host came in over.
        assert_eq!(at("10.1.2.3:4420", "::1").as_deref(), Some("10.1.2.3:4420"));
        // Wildcards: the host's own way in, when the listener takes that family.
        assert_eq!(at("0.0.0.0:4420", "192.0.2.7").as_deref(), Some("192.0.2.7:4420"));
        assert_eq!(at("[::]:4420", "2001:db8::7").as_deref(), Some("[2001:db8::7]:4420"));
        assert_eq!(at("[::]:4420", "192.0.2.7").as_deref(), Some("192.0.2.7:4420"));
        assert_eq!(at("[::]:4420", "::ffff:192.0.2.7").as_deref(), Some("192.0.2.7:4420"), "IPv4-mapped");
        assert_eq!(at("0.0.0.0:4420", "::ffff:192.0.2.7").as_deref(), Some("192.0.2.7:4420"), "IPv4-mapped");
        // An IPv4 wildcard port seen from IPv6: no address to give.
        assert_eq!(at("0.0.0.0:4420", "::1"), None);
    }
}
