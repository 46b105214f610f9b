//! `holdfast resv`: a namespace's reservations (NVMe Base 2.0 §8.19): register, acquire, preempt, release,
//! clear, report. The host's registration is its Host Identifier's (`--hostid`; else the UUID of a UUID-based
//! `--hostnqn`; else `/etc/nvme/hostid`), shared by every controller it has on the subsystem.

use super::common::{runtime, NamespaceArgs};
use anyhow::Context;
use clap::{Args as ClapArgs, Subcommand};
use holdfast_proto::reservation::{self as r, ReservationType};
use std::process::ExitCode;

/// Options of `holdfast resv`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    #[command(flatten)]
    ns: NamespaceArgs,
    /// Print JSON (report).
    #[arg(long)]
    json: bool,
    #[command(subcommand)]
    action: Action,
}

/// What to do.
#[derive(Subcommand, Debug)]
pub enum Action {
    /// Register this host with a key.
    Register {
        /// The key (decimal or 0x hex).
        #[arg(long, value_parser = parse_key)]
        key: u64,
        /// Persist Through Power Loss, on or off: whether the namespace's reservations and registrations outlive
        /// a target restart (nvme-cli's --cptpl 3 / 2; a namespace whose RESCAP bit 0 is clear refuses on).
        #[arg(long, value_parser = parse_on_off)]
        ptpl: Option<bool>,
    },
    /// Unregister this host (the reservation goes with it if it held it).
    Unregister {
        /// This host's key.
        #[arg(long, value_parser = parse_key)]
        key: u64,
        /// Ignore the current key (IEKEY).
        #[arg(long)]
        ignore_key: bool,
        /// Persist Through Power Loss, on or off, as for register.
        #[arg(long, value_parser = parse_on_off)]
        ptpl: Option<bool>,
    },
    /// Replace this host's key.
    Replace {
        /// This host's key.
        #[arg(long, value_parser = parse_key)]
        key: u64,
        /// The new key.
        #[arg(long, value_parser = parse_key)]
        new_key: u64,
        /// Ignore the current key (IEKEY).
        #[arg(long)]
        ignore_key: bool,
    },
    /// Acquire a reservation.
    Acquire {
        /// This host's key.
        #[arg(long, value_parser = parse_key)]
        key: u64,
        /// Type: we, ea, we-ro, ea-ro, we-ar, ea-ar (or 1..6).
        #[arg(long = "type", value_parser = parse_type)]
        rtype: ReservationType,
    },
    /// Preempt the holder or other registrants by their key.
    Preempt {
        /// This host's key.
        #[arg(long, value_parser = parse_key)]
        key: u64,
        /// The key of the registrants (or holder) to preempt.
        #[arg(long, value_parser = parse_key)]
        preempt_key: u64,
        /// Type of the reservation taken.
        #[arg(long = "type", value_parser = parse_type)]
        rtype: ReservationType,
        /// Preempt and Abort: the preempted hosts' commands in flight finish first.
        #[arg(long)]
        abort: bool,
    },
    /// Release the reservation this host holds.
    Release {
        /// This host's key.
        #[arg(long, value_parser = parse_key)]
        key: u64,
        /// Its type.
        #[arg(long = "type", value_parser = parse_type)]
        rtype: ReservationType,
    },
    /// Clear every registration and the reservation.
    Clear {
        /// This host's key.
        #[arg(long, value_parser = parse_key)]
        key: u64,
    },
    /// Show the registrants and the reservation.
    Report,
}

fn parse_on_off(s: &str) -> Result<bool, String> {
    match s {
        "on" => Ok(true),
        "off" => Ok(false),
        _ => Err(format!("\"{s}\" is neither on nor off")),
    }
}

fn parse_key(s: &str) -> Result<u64, String> {
    let v = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u64::from_str_radix(h, 16),
        None => s.parse(),
    };
    v.map_err(|_| format!("\"{s}\" is not a 64-bit key (decimal or 0x hex)"))
}

const TYPES: [(&str, ReservationType); 6] = [
    ("we", ReservationType::WriteExclusive),
    ("ea", ReservationType::ExclusiveAccess),
    ("we-ro", ReservationType::WriteExclusiveRegistrantsOnly),
    ("ea-ro", ReservationType::ExclusiveAccessRegistrantsOnly),
    ("we-ar", ReservationType::WriteExclusiveAllRegistrants),
    ("ea-ar", ReservationType::ExclusiveAccessAllRegistrants),
];

fn parse_type(s: &str) -> Result<ReservationType, String> {
    TYPES
        .iter()
        .find(|(n, _)| *n == s)
        .map(|(_, t)| *t)
        .or_else(|| s.parse::<u8>().ok().and_then(ReservationType::from_u8))
        .ok_or_else(|| format!("\"{s}\" is not a reservation type (we, ea, we-ro, ea-ro, we-ar, ea-ar, or 1..6)"))
}

/// Run.
pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    runtime()?.block_on(async move {
        let (c, ns) = a.ns.open(a.ns.options(1)).await?;
        let what = a.ns.describe();
        let ptpl_on = matches!(a.action, Action::Register { ptpl: Some(true), .. } | Action::Unregister { ptpl: Some(true), .. });
        anyhow::ensure!(
            !ptpl_on || ns.identify().rescap & 1 != 0,
            "{what} cannot keep reservations through a power loss or restart (RESCAP bit 0 clear: a RAM namespace has \
             nowhere to keep them; a file namespace can): --ptpl on refused"
        );
        // What a Reservation Conflict means for each action, beyond the status's name.
        let conflict_hint = match &a.action {
            Action::Register { .. } => {
                "this host is registered already, with another key? (`replace` changes it; `report` lists the registrants)"
            }
            Action::Unregister { .. } | Action::Replace { .. } => {
                "the key is not this host's registration (`report` lists the registrants; --ignore-key skips the check)"
            }
            Action::Acquire { .. } | Action::Preempt { .. } => {
                "this host is not registered with that key, or another holds a reservation of another type"
            }
            Action::Release { .. } | Action::Clear { .. } => "the key is not this host's registration (`report` lists them)",
            Action::Report => "",
        };
        let what = match &a.action {
            Action::Clear { .. } => format!("{what}: clear (a Reservation Release with RRELA 1)"),
            _ => what,
        };
        let done = match a.action {
            Action::Register { key, ptpl } => ns.reservation_register_ptpl(r::RREGA_REGISTER, 0, key, false, ptpl).await,
            Action::Unregister { key, ignore_key, ptpl } => {
                ns.reservation_register_ptpl(r::RREGA_UNREGISTER, key, 0, ignore_key, ptpl).await
            }
            Action::Replace { key, new_key, ignore_key } => {
                ns.reservation_register(r::RREGA_REPLACE, key, new_key, ignore_key).await
            }
            Action::Acquire { key, rtype } => ns.reservation_acquire(r::RACQA_ACQUIRE, rtype, key, 0).await,
            Action::Preempt { key, preempt_key, rtype, abort } => {
                let action = if abort { r::RACQA_PREEMPT_AND_ABORT } else { r::RACQA_PREEMPT };
                ns.reservation_acquire(action, rtype, key, preempt_key).await
            }
            Action::Release { key, rtype } => ns.reservation_release(false, rtype, key).await,
            // The type is not looked at by a clear.
            Action::Clear { key } => ns.reservation_release(true, ReservationType::WriteExclusive, key).await,
            Action::Report => {
                let rep = ns.reservation_report().await.with_context(|| what.clone())?;
                let type_name = rep.rtype.map(|t| TYPES.iter().find(|(_, x)| *x == t).map_or("?", |(n, _)| n));
                if a.json {
                    let regs: Vec<_> = rep
                        .registrants
                        .iter()
                        .map(|g| serde_json::json!({ "hostid": uuid::Uuid::from_bytes(g.hostid).to_string(), "key": format!("0x{:x}", g.rkey), "holds": g.holds }))
                        .collect();
                    outln!(
                        "{}",
                        serde_json::json!({ "generation": rep.gen, "type": type_name, "ptpl": rep.ptpls, "registrants": regs })
                    );
                } else {
                    outln!("{what}: generation {}, persist through power loss {}", rep.gen, if rep.ptpls { "on" } else { "off" });
                    match rep.rtype {
                        Some(t) => outln!("  reservation: {} ({})", t.name(), type_name.unwrap_or("?")),
                        None => outln!("  reservation: none"),
                    }
                    for g in &rep.registrants {
                        outln!("  registrant {} key 0x{:x}{}", uuid::Uuid::from_bytes(g.hostid), g.rkey, if g.holds { " (holds)" } else { "" });
                    }
                }
                Ok(())
            }
        };
        done.map_err(|e| {
            if e.status().is_some_and(|s| s.code() == holdfast_proto::Status::RESERVATION_CONFLICT) {
                anyhow::anyhow!("{what}: {e}: {conflict_hint}")
            } else {
                anyhow::Error::from(e).context(what.clone())
            }
        })?;
        c.shutdown().await?;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}
