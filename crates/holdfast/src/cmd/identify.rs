//! `holdfast identify`: Identify Controller (and Namespace) of a subsystem.

use super::common::{hex, runtime, SubsystemArgs};
use clap::Args as ClapArgs;
use holdfast_host::{Controller, Namespace};
use holdfast_proto::identify::{get_ascii, NsDescriptor};
use holdfast_proto::log_page::AnaLog;
use std::process::ExitCode;

/// Options of `holdfast identify`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    subsystem: SubsystemArgs,
    /// Also identify this namespace.
    #[arg(long, value_parser = super::common::parse_nsid)]
    nsid: Option<u32>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

/// Run.
pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let o = a.subsystem.options(if a.nsid.is_some() { 1 } else { 0 });
    runtime()?.block_on(async move {
        let c = Controller::connect(o).await?;
        let id = c.identify();
        let ns = match a.nsid {
            Some(n) => Some(Namespace::open(&c, n).await?),
            None => None,
        };
        let nsids = c.active_namespaces().await.unwrap_or_default();
        let mut ctrl = serde_json::json!({
            "sn": get_ascii(&id.sn), "mn": get_ascii(&id.mn), "fr": get_ascii(&id.fr),
            "cntlid": c.cntlid(), "ver": format!("{}.{}.{}", c.version() >> 16, (c.version() >> 8) & 0xFF, c.version() & 0xFF),
            "mdts": id.mdts, "kas": id.kas.get(), "cqt": id.cqt.get(), "nn": id.nn.get(), "oncs": id.oncs.get(),
            "fuses": id.fuses.get(), "acwu": id.acwu.get(), "vwc": id.vwc, "sgls": id.sgls.get(), "ioccsz": id.ioccsz.get(), "iorcsz": id.iorcsz.get(),
            "crdt": [id.crdt1.get(), id.crdt2.get(), id.crdt3.get()], "subnqn": holdfast_proto::log_page::field_str(&id.subnqn),
            "active_namespaces": nsids,
            // The same, decoded: MDTS in bytes (as this host uses it), the optional commands ONCS names, the
            // write cache, the retry delays in ms.
            "max_transfer_bytes": c.max_transfer(), "optional_commands": optional_commands(id.oncs.get()),
            "volatile_write_cache": id.vwc & 1 != 0,
            "crdt_ms": [id.crdt1.get() as u32 * 100, id.crdt2.get() as u32 * 100, id.crdt3.get() as u32 * 100],
        });
        if let Some(p) = c.policy() {
            ctrl["policy"] = serde_json::json!({
                "instance_id": format!("{:016x}", p.instance_id), "kato_ms": p.kato_ms, "reconnect_delay_ms": p.reconnect_delay_ms,
                "reconnect_delay_max_ms": p.reconnect_delay_max_ms, "ctrl_loss_tmo_ms": p.ctrl_loss_tmo_ms,
                "fast_io_fail_tmo_ms": p.fast_io_fail_tmo_ms, "cqt_ms": p.cqt_ms, "planned_downtime_ms": p.planned_downtime_ms,
                "generation": p.generation,
                // FLAGS bit 1: a restart of the target loses what the subsystem's namespaces hold (RAM).
                "volatile_data": p.volatile_data,
            });
        }
        // Asymmetric Namespace Access: each group's state through this controller (its port), where reported.
        let ana = if id.cmic & holdfast_proto::identify::CMIC_ANA != 0 { ana_log(&c, &id).await } else { None };
        if let Some(log) = &ana {
            ctrl["ana"] = log
                .groups
                .iter()
                .map(|g| serde_json::json!({ "group": g.anagrpid, "state": g.state.name(), "nsids": g.nsids }))
                .collect();
        }
        let nsj = ns.as_ref().map(|n| {
            let mut ids = serde_json::Map::new();
            for d in n.descriptors() {
                match d {
                    NsDescriptor::Eui64(v) => ids.insert("eui64".into(), hex(v).into()),
                    NsDescriptor::Nguid(v) => ids.insert("nguid".into(), hex(v).into()),
                    NsDescriptor::Uuid(v) => ids.insert("uuid".into(), uuid::Uuid::from_bytes(*v).to_string().into()),
                    NsDescriptor::Csi(v) => ids.insert("csi".into(), (*v).into()),
                };
            }
            let mut j = serde_json::json!({
                "nsid": n.nsid(), "nsze": n.nblocks(), "block_size": n.block_size(), "bytes": n.size(), "ids": ids,
                "write_protected": n.write_protected(),
            });
            if let Some(g) = ana.as_ref().and_then(|l| l.groups.iter().find(|g| g.nsids.contains(&n.nsid()))) {
                j["ana_group"] = g.anagrpid.into();
                j["ana_state"] = g.state.name().into();
            }
            j
        });
        if a.json {
            outln!("{}", serde_json::to_string_pretty(&serde_json::json!({ "controller": ctrl, "namespace": nsj }))?);
        } else {
            outln!("controller {} of {}", c.cntlid(), a.subsystem.nqn);
            for (k, v) in ctrl.as_object().into_iter().flatten() {
                outln!("  {k:<18} {v}");
            }
            if let Some(n) = nsj {
                outln!("namespace {}", a.nsid.unwrap_or(0));
                for (k, v) in n.as_object().into_iter().flatten() {
                    outln!("  {k:<18} {v}");
                }
            }
        }
        c.shutdown().await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// The optional NVM commands and features Identify Controller ONCS says the controller supports (NVMe Base 2.0
/// Figure 275, bits 0-8), by name.
fn optional_commands(oncs: u16) -> Vec<&'static str> {
    const NAMES: [&str; 9] = [
        "compare",
        "write uncorrectable",
        "dataset management",
        "write zeroes",
        "save/select in features",
        "reservations",
        "timestamp",
        "verify",
        "copy",
    ];
    NAMES.iter().enumerate().filter(|(bit, _)| oncs & (1 << bit) != 0).map(|(_, n)| *n).collect()
}

/// The controller's Asymmetric Namespace Access log page (LID 0Ch), as long as Identify Controller says it can
/// be (NANAGRPID descriptors and MNAN NSIDs, within 1 MiB); None, with a warning, if it cannot be read.
async fn ana_log(c: &Controller, id: &holdfast_proto::identify::IdentifyController) -> Option<AnaLog> {
    let len = AnaLog::len_for(id.nanagrpid.get() as usize, id.mnan.get() as usize).next_multiple_of(4).min(1 << 20);
    let got = match c.log_page(holdfast_proto::log_page::LID_ANA, 0xFFFF_FFFF, len).await {
        Ok(data) => AnaLog::parse(&data).map_err(|e| e.to_string()),
        Err(e) => Err(e.to_string()),
    };
    got.map_err(|e| tracing::warn!("ANA log page: {e}")).ok()
}
