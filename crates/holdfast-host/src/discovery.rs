//! Discovery (NVMe over Fabrics 1.1 §5): connect to a discovery controller and read its log page.

use crate::controller::{get_log_page, Controller};
use crate::error::{Error, Result};
use crate::options::ConnectOptions;
use bytes::BytesMut;
use holdfast_proto::fabrics::DISCOVERY_NQN;
use holdfast_proto::log_page::{self as lp, field_str, DiscoveryLogEntry, LID_DISCOVERY};
use holdfast_proto::policy::{ConnectionPolicy, LID_HOLDFAST_POLICY};
use holdfast_proto::Status;

/// One discovery log entry, decoded.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DiscoveryEntry {
    /// Transport type (3 = TCP).
    pub trtype: u8,
    /// Address family (1 = IPv4, 2 = IPv6).
    pub adrfam: u8,
    /// Subsystem type (2 = NVM, 3 = current discovery, 1 = referral).
    pub subtype: u8,
    /// Transport requirements.
    pub treq: u8,
    /// Port ID.
    pub portid: u16,
    /// Controller ID (FFFFh = dynamic).
    pub cntlid: u16,
    /// Admin max SQ size.
    pub asqsz: u16,
    /// Transport service ID (TCP port).
    pub trsvcid: String,
    /// Subsystem NQN.
    pub subnqn: String,
    /// Transport address.
    pub traddr: String,
    /// Entry flags (EFLAGS: bit 0 DUPRETINFO, bit 1 EPCSD, bit 2 NCC).
    pub eflags: u16,
    /// For TCP, the security type (TSAS byte 0: 0 none, 1 TLS 1.2, 2 TLS 1.3).
    pub sectype: u8,
}

impl DiscoveryEntry {
    fn from(e: &DiscoveryLogEntry) -> Self {
        DiscoveryEntry {
            trtype: e.trtype,
            adrfam: e.adrfam,
            subtype: e.subtype,
            treq: e.treq,
            portid: e.portid.get(),
            cntlid: e.cntlid.get(),
            asqsz: e.asqsz.get(),
            trsvcid: field_str(&e.trsvcid),
            subnqn: field_str(&e.subnqn),
            traddr: field_str(&e.traddr),
            eflags: e.eflags.get(),
            sectype: if e.trtype == lp::TRTYPE_TCP { e.tcp_sectype() } else { 0 },
        }
    }
    /// The transport in words (TRTYPE).
    pub fn trtype_name(&self) -> String {
        match self.trtype {
            lp::TRTYPE_RDMA => "rdma".into(),
            lp::TRTYPE_FC => "fc".into(),
            lp::TRTYPE_TCP => "tcp".into(),
            lp::TRTYPE_LOOP => "loop".into(),
            t => format!("unknown ({t})"),
        }
    }
    /// The address family in words (ADRFAM).
    pub fn adrfam_name(&self) -> String {
        match self.adrfam {
            lp::ADRFAM_IPV4 => "ipv4".into(),
            lp::ADRFAM_IPV6 => "ipv6".into(),
            lp::ADRFAM_IB => "ib".into(),
            lp::ADRFAM_FC => "fc".into(),
            lp::ADRFAM_LOOP => "loop".into(),
            a => format!("unknown ({a})"),
        }
    }
    /// The secure channel requirement (TREQ bits 1:0) in words.
    pub fn secure_channel(&self) -> &'static str {
        match self.treq & lp::TREQ_SECURE_MASK {
            lp::TREQ_SECURE_NOT_SPECIFIED => "not specified",
            lp::TREQ_SECURE_REQUIRED => "required",
            lp::TREQ_SECURE_NOT_REQUIRED => "not required",
            _ => "reserved",
        }
    }
    /// The security type in words (TSAS SECTYPE, TCP).
    pub fn sectype_name(&self) -> &'static str {
        match self.sectype {
            0 => "none",
            1 => "tls 1.2",
            2 => "tls 1.3",
            _ => "reserved",
        }
    }
    /// Whether this host can connect to the entry: a TCP transport without a required secure channel
    /// (holdfast's host has no TLS). An entry of another transport, or one that requires TLS (TREQ 01b, as an
    /// nvmet port with `addr_tsas` tls1.3 lists it), is not one it can use.
    pub fn connectable(&self) -> bool {
        self.trtype == lp::TRTYPE_TCP && self.treq & lp::TREQ_SECURE_MASK != lp::TREQ_SECURE_REQUIRED
    }
    /// DUPRETINFO (EFLAGS bit 0): the entry's discovery controller returns this same log, so a host need not
    /// connect to it too (libnvme's connect-all skips such an entry).
    pub fn duplicate_returned_info(&self) -> bool {
        self.eflags & lp::EFLAGS_DUPRETINFO != 0
    }
    /// EPCSD (EFLAGS bit 1): the entry's discovery controller takes persistent connections.
    pub fn persistent_discovery(&self) -> bool {
        self.eflags & lp::EFLAGS_EPCSD != 0
    }
    /// The subsystem supports disabling SQ flow control (TREQ bit 2): connect to it with
    /// [`ConnectOptions::disable_sqflow`] set, as libnvme does.
    pub fn sq_flow_disable_supported(&self) -> bool {
        self.treq & holdfast_proto::log_page::TREQ_DISABLE_SQFLOW != 0
    }
    /// The subsystem type in words.
    pub fn subtype_name(&self) -> &'static str {
        match self.subtype {
            1 => "referral",
            2 => "nvme subsystem",
            3 => "current discovery subsystem",
            _ => "unknown",
        }
    }
}

/// Read the discovery log of the discovery controller at `opts.addr` (the subsystem NQN is ignored).
/// The log is read again if its generation counter changes while it is read. A read is one-shot: unless
/// `opts.ctrl_loss_tmo` says otherwise, a connection lost under it fails it at once (as nvme-cli's
/// `discover`), where an I/O controller's default would ride through for 600 s.
pub async fn discover(opts: ConnectOptions) -> Result<Vec<DiscoveryEntry>> {
    Ok(discover_with_policy(opts).await?.0)
}

/// [`discover`], and the connection policy the discovery controller advertises (holdfast's vendor log
/// page; None from a target that has none).
pub async fn discover_with_policy(mut opts: ConnectOptions) -> Result<(Vec<DiscoveryEntry>, Option<ConnectionPolicy>)> {
    opts.subnqn = DISCOVERY_NQN.into();
    opts.nr_io_queues = 0;
    opts.ctrl_loss_tmo.get_or_insert(std::time::Duration::ZERO);
    let ctrl = Controller::connect(opts).await?;
    let r = read_log(&ctrl).await;
    // Another target answers Invalid Log Page: no policy, not an error.
    let policy = match get_log_page(ctrl.admin_queue(), LID_HOLDFAST_POLICY, 0, 512, 0).await {
        Ok(page) => ConnectionPolicy::from_bytes(&page).ok(),
        Err(_) => None,
    };
    let _ = ctrl.shutdown().await;
    Ok((r?, policy))
}

/// A little-endian u64 at `at`, 0 if the buffer is short (never a panic on peer data).
fn le64(b: &[u8], at: usize) -> u64 {
    b.get(at..at + 8).and_then(|s| s.try_into().ok()).map(u64::from_le_bytes).unwrap_or(0)
}

async fn read_log(ctrl: &Controller) -> Result<Vec<DiscoveryEntry>> {
    let admin = ctrl.admin_queue();
    for _ in 0..5 {
        let h = get_log_page(admin, LID_DISCOVERY, 0, 1024, 0).await?;
        if h.len() < 16 {
            return Err(Error::Protocol {
                qid: 0,
                what: format!("the discovery log's header was cut short ({} bytes)", h.len()),
            });
        }
        let genctr = le64(&h, 0);
        let numrec = le64(&h, 8);
        if numrec > 4096 {
            return Err(Error::Protocol { qid: 0, what: format!("discovery log claims {numrec} records") });
        }
        // The whole log from offset 0, in one command when the controller's transfer limit (MDTS) allows:
        // header and records then agree. A larger log is read in pieces (SPDK's target fails a transfer over
        // its 128 KiB I/O size with a C2HTermReq), and the header read again after the last piece: an
        // unchanged GENCTR means no piece saw a different log (NVMe-oF 1.1 §5.3).
        let total = (numrec as usize + 1) * 1024;
        let piece = (ctrl.max_transfer() & !1023).max(4096);
        let log = if total <= piece {
            get_log_page(admin, LID_DISCOVERY, 0, total, 0).await?
        } else {
            let mut log = BytesMut::with_capacity(total);
            let mut restart = false;
            while log.len() < total {
                let n = piece.min(total - log.len());
                match get_log_page(admin, LID_DISCOVERY, 0, n, log.len() as u64).await {
                    // A piece cut short is continued from where it stopped, at a whole dword (Get Log Page's
                    // offset and length are in dwords); one that brought no whole dword ends the read (asked
                    // again, it would bring nothing again).
                    Ok(part) if part.len() < 4 => {
                        return Err(Error::Protocol {
                            qid: 0,
                            what: format!("the discovery log's piece at offset {} came back empty", log.len()),
                        })
                    }
                    Ok(part) => log.extend_from_slice(&part[..part.len() & !3]),
                    // The controller says the log changed (Discover Restart): start over.
                    Err(e) if e.status().is_some_and(|s| s.code() == Status::DISCOVER_RESTART) => {
                        restart = true;
                        break;
                    }
                    // The log may have shrunk since its header was read (a piece's offset past its new end is
                    // Invalid Field, as holdfast's target answers): start over if GENCTR moved; if it did not,
                    // the refusal is the controller's answer, and the caller's.
                    Err(e) if e.status().is_some_and(|s| s.code() == Status::INVALID_FIELD) => {
                        if le64(&get_log_page(admin, LID_DISCOVERY, 0, 1024, 0).await?, 0) == genctr {
                            return Err(e);
                        }
                        restart = true;
                        break;
                    }
                    Err(e) => return Err(e),
                }
            }
            if restart || le64(&get_log_page(admin, LID_DISCOVERY, 0, 1024, 0).await?, 0) != genctr {
                continue;
            }
            log.freeze()
        };
        if log.len() < 16 {
            return Err(Error::Protocol {
                qid: 0,
                what: format!("the discovery log was cut short ({} bytes, less than its header)", log.len()),
            });
        }
        if le64(&log, 0) != genctr {
            continue; // changed between the two reads: start over (NVMe-oF 1.1 §5.3, GENCTR)
        }
        let numrec = le64(&log, 8).min(numrec) as usize;
        let records: Vec<&[u8]> = log.get(1024..).unwrap_or_default().chunks_exact(1024).take(numrec).collect();
        if records.len() < numrec {
            return Err(Error::Protocol {
                qid: 0,
                what: format!(
                    "the discovery log's NUMREC says {numrec} records, but the controller returned {} bytes of it",
                    log.len()
                ),
            });
        }
        // A record of all zeroes is none (TRTYPE 0 is reserved, SUBNQN empty): a controller that padded the log
        // it described with zeroes would otherwise list phantom entries.
        if let Some(i) = records.iter().position(|r| r.iter().all(|&b| b == 0)) {
            return Err(Error::Protocol {
                qid: 0,
                what: format!(
                    "the discovery log's NUMREC says {numrec} records, but record {i} is empty: the controller \
                     returned less than the log it described"
                ),
            });
        }
        return Ok(records
            .into_iter()
            .filter_map(DiscoveryLogEntry::from_slice)
            .map(|e| DiscoveryEntry::from(&e))
            .collect());
    }
    Err(Error::Protocol { qid: 0, what: "the discovery log kept changing while it was read".into() })
}

#[cfg(test)]
mod tests {
    use super::*;

    /// TREQ, TSAS and EFLAGS decoded: an entry that requires TLS, or of another transport, is not one this host
    /// can connect to.
    #[test]
    fn entries_say_whether_this_host_can_use_them() {
        let mut e =
            DiscoveryLogEntry::build(lp::SUBTYPE_NVME, 1, 0xFFFF, 32, "4420", "nqn.x", "10.0.0.1", lp::ADRFAM_IPV4);
        e.treq = lp::TREQ_SECURE_REQUIRED;
        e.tsas[0] = 2;
        e.eflags.set(lp::EFLAGS_DUPRETINFO);
        let d = DiscoveryEntry::from(&e);
        assert_eq!((d.secure_channel(), d.sectype_name(), d.trtype_name()), ("required", "tls 1.3", "tcp".into()));
        assert!(!d.connectable() && d.duplicate_returned_info() && !d.persistent_discovery());
        e.treq = lp::TREQ_SECURE_NOT_REQUIRED;
        assert!(DiscoveryEntry::from(&e).connectable(), "TLS offered, not required");
        e.trtype = lp::TRTYPE_RDMA;
        let d = DiscoveryEntry::from(&e);
        assert!(!d.connectable() && d.trtype_name() == "rdma" && d.sectype == 0, "TSAS is TCP's only");
    }
}
