//! `holdfast log`: a controller's log pages, decoded as `nvme error-log` and `nvme smart-log` show them: the
//! Error Information log (LID 01h, NVMe Base 2.1 §5.1.12.1.2) and SMART / Health Information (LID 02h,
//! §5.1.12.1.3).

use super::common::{runtime, SubsystemArgs};
use anyhow::Context;
use clap::{Args as ClapArgs, ValueEnum};
use holdfast_host::controller::command_name;
use holdfast_host::Controller;
use holdfast_proto::log_page::{self as lp, ErrorInformationEntry, SmartHealthLog};
use holdfast_proto::{Status, SubmissionEntry};
use std::process::ExitCode;

/// Which log page.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Page {
    /// Error Information (LID 01h): the controller's most recent failed commands, newest first.
    Error,
    /// SMART / Health Information (LID 02h): critical warnings, data units and commands, media errors.
    Smart,
}

/// Options of `holdfast log`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    subsystem: SubsystemArgs,
    /// The log page.
    #[arg(long, value_enum)]
    page: Page,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Read log page `lid` of the whole controller (NSID FFFFFFFFh), `len` bytes, all of them.
async fn get_log(c: &Controller, lid: u8, len: usize) -> anyhow::Result<bytes::Bytes> {
    let data = c.log_page(lid, 0xFFFF_FFFF, len).await.with_context(|| lp::log_page_name(lid))?;
    anyhow::ensure!(data.len() >= len, "the {} log came {} bytes short", lp::log_page_name(lid), len - data.len());
    Ok(data)
}

/// Run.
pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let o = a.subsystem.options(0);
    runtime()?.block_on(async move {
        let c = Controller::connect(o).await?;
        let v = match a.page {
            Page::Error => {
                // ELPE + 1 entries (Identify Controller, zero-based).
                let n = c.identify().elpe as usize + 1;
                let data = get_log(&c, lp::LID_ERROR_INFO, n * 64).await?;
                let entries: Vec<serde_json::Value> = data
                    .chunks_exact(64)
                    .filter_map(ErrorInformationEntry::from_slice)
                    .filter(|e| e.error_count.get() != 0)
                    .map(|e| error_entry(&e))
                    .collect();
                serde_json::json!({ "entries": entries, "capacity": n })
            }
            Page::Smart => smart(
                &SmartHealthLog::from_slice(&get_log(&c, lp::LID_SMART_HEALTH, 512).await?)
                    .ok_or_else(|| anyhow::anyhow!("a SMART log shorter than 512 bytes"))?,
            ),
        };
        if a.json {
            outln!("{}", serde_json::to_string_pretty(&v)?);
        } else {
            match a.page {
                Page::Error => {
                    let entries = v["entries"].as_array().map(Vec::as_slice).unwrap_or_default();
                    outln!(
                        "Error Information log of controller {} of {}: {} entr{} (of {} kept)",
                        c.cntlid(),
                        a.subsystem.nqn,
                        entries.len(),
                        if entries.len() == 1 { "y" } else { "ies" },
                        v["capacity"]
                    );
                    for e in entries {
                        outln!(
                            "error {}: queue {} cid {} {} ({}), nsid {} lba {}: {}{}",
                            e["error_count"],
                            e["sqid"],
                            e["cid"],
                            e["command"].as_str().unwrap_or("?"),
                            e["opcode"].as_str().unwrap_or("?"),
                            e["nsid"],
                            e["lba"],
                            e["status"].as_str().unwrap_or("?"),
                            e["parameter_error_location"]
                                .as_str()
                                .map(|l| format!(", in the command's {l}"))
                                .unwrap_or_default()
                        );
                    }
                }
                Page::Smart => {
                    outln!("SMART / Health Information log of controller {} of {}", c.cntlid(), a.subsystem.nqn);
                    for (k, v) in v.as_object().into_iter().flatten() {
                        outln!("  {k:<28} {v}");
                    }
                }
            }
        }
        c.shutdown().await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// One Error Information entry, decoded: the command by name (an admin one on queue 0), the status by name, the
/// parameter in error as byte.bit of the submission entry.
fn error_entry(e: &ErrorInformationEntry) -> serde_json::Value {
    let sqid = e.sqid.get();
    let status = Status::from_cqe_word(e.status.get());
    let loc = e.parameter_error_location.get();
    serde_json::json!({
        "error_count": e.error_count.get(),
        "sqid": sqid,
        "cid": e.cid.get(),
        "opcode": format!("{:#04x}", e.opc),
        "command": command_name(&SubmissionEntry::new(e.opc, 0), sqid == 0),
        "status": status.to_string(),
        "dnr": status.dnr(),
        "parameter_error_location": (loc != 0xFFFF).then(|| format!("byte {} bit {}", loc & 0xFF, (loc >> 8) & 0x7)),
        "lba": e.lba.get(),
        "nsid": e.nsid.get(),
        "transport_type": e.trtype,
    })
}

/// The SMART / Health log, decoded: the temperature in °C (null when not reported), the critical warning bits by
/// name, the counters as numbers (data units are thousands of 512-byte blocks, rounded up).
fn smart(l: &SmartHealthLog) -> serde_json::Value {
    let n = |b: &[u8; 16]| u64::try_from(lp::u128_from(b)).unwrap_or(u64::MAX);
    let warnings: Vec<&str> = [
        (lp::CRIT_WARN_SPARE, "available spare below threshold"),
        (lp::CRIT_WARN_TEMPERATURE, "temperature"),
        (lp::CRIT_WARN_DEGRADED, "reliability degraded"),
        (lp::CRIT_WARN_READ_ONLY, "media read only"),
        (lp::CRIT_WARN_VOLATILE_BACKUP, "volatile memory backup failed"),
        (lp::CRIT_WARN_PMR_READ_ONLY, "persistent memory region read only"),
    ]
    .into_iter()
    .filter(|(bit, _)| l.critical_warning & bit != 0)
    .map(|(_, name)| name)
    .collect();
    let kelvin = l.composite_temperature.get();
    serde_json::json!({
        "critical_warning": warnings,
        "temperature_c": (kelvin != 0).then(|| i32::from(kelvin) - 273),
        "available_spare_pct": l.available_spare,
        "available_spare_threshold_pct": l.available_spare_threshold,
        "percentage_used": l.percentage_used,
        // In units of 1000 512-byte blocks, rounded up (as the log counts them).
        "data_units_read": n(&l.data_units_read),
        "data_units_written": n(&l.data_units_written),
        "host_read_commands": n(&l.host_read_commands),
        "host_write_commands": n(&l.host_write_commands),
        "controller_busy_minutes": n(&l.controller_busy_time),
        "power_cycles": n(&l.power_cycles),
        "power_on_hours": n(&l.power_on_hours),
        "unsafe_shutdowns": n(&l.unsafe_shutdowns),
        "media_errors": n(&l.media_errors),
        "error_log_entries": n(&l.num_err_log_entries),
    })
}
