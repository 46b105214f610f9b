//! Discovery (NVMe over Fabrics 1.1 §5): connect to a discovery controller and read its log page.

use crate::controller::{get_log_page, Controller};
use crate::error::{Error, Result};
use crate::options::ConnectOptions;
use bytes::BytesMut;
use holdfast_proto::fabrics::DISCOVERY_NQN;
use holdfast_proto::log_page::{field_str, DiscoveryLogEntry, LID_DISCOVERY};
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
        }
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
