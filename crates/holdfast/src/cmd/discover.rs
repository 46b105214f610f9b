//! `holdfast discover ADDR`: list what a discovery controller offers.

use super::common::{runtime, with_default_port, AuthArgs, NVME_TCP_DISCOVERY_PORT};
use clap::Args as ClapArgs;
use holdfast_host::{discover_with_policy, ConnectOptions};
use std::process::ExitCode;
use std::time::Duration;

/// Options of `holdfast discover`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Discovery controller address, HOST[:PORT] (port 8009, the NVMe/TCP discovery port, if left out, as
    /// nvme-cli).
    #[arg(required_unless_present = "addr_flag", value_name = "ADDR")]
    addr: Option<String>,
    /// The address as the other commands take it (the same as ADDR).
    #[arg(long = "addr", value_name = "ADDR", conflicts_with = "addr")]
    addr_flag: Option<String>,
    /// Host NQN.
    #[arg(long)]
    hostnqn: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Connect timeout (ms).
    #[arg(long, default_value_t = 10_000)]
    connect_timeout_ms: u64,
    #[command(flatten)]
    auth: AuthArgs,
}

/// Run.
pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let given = a.addr.or(a.addr_flag).unwrap_or_default();
    let addr = with_default_port(&given, NVME_TCP_DISCOVERY_PORT);
    let mut o = ConnectOptions::new(addr.clone(), "");
    if let Some(h) = a.hostnqn {
        o.hostnqn = h;
    }
    o.connect_timeout = Duration::from_millis(a.connect_timeout_ms);
    a.auth.apply(&mut o);
    let (entries, policy) = runtime()?.block_on(discover_with_policy(o))?;
    if a.json {
        let v: Vec<_> = entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "trtype": e.trtype_name(), "adrfam": e.adrfam_name(),
                    "subtype": e.subtype_name(), "portid": e.portid, "cntlid": e.cntlid, "asqsz": e.asqsz,
                    "trsvcid": e.trsvcid, "subnqn": e.subnqn, "traddr": e.traddr, "treq": e.treq,
                    "secure_channel": e.secure_channel(), "sectype": e.sectype_name(),
                    "sq_flow_disable_supported": e.sq_flow_disable_supported(),
                    "eflags": e.eflags, "duplicate_returned_info": e.duplicate_returned_info(),
                    "persistent_discovery": e.persistent_discovery(), "connectable": e.connectable(),
                })
            })
            .collect();
        let policy = policy.map(|p| {
            serde_json::json!({
                "instance_id": format!("{:016x}", p.instance_id), "generation": p.generation, "kato_ms": p.kato_ms,
                "reconnect_delay_ms": p.reconnect_delay_ms, "reconnect_delay_max_ms": p.reconnect_delay_max_ms,
                "ctrl_loss_tmo_ms": p.ctrl_loss_tmo_ms, "fast_io_fail_tmo_ms": p.fast_io_fail_tmo_ms,
                "cqt_ms": p.cqt_ms, "planned_downtime_ms": p.planned_downtime_ms,
                "timing_advertised": p.advertises_timing(),
            })
        });
        outln!("{}", serde_json::to_string_pretty(&serde_json::json!({ "records": v, "policy": policy }))?);
    } else {
        outln!("Discovery log of {}: {} record(s)", addr, entries.len());
        for (i, e) in entries.iter().enumerate() {
            outln!("===== entry {i} =====");
            outln!("trtype:  {}  adrfam: {}", e.trtype_name(), e.adrfam_name());
            outln!("subtype: {}", e.subtype_name());
            outln!("traddr:  {}", e.traddr);
            outln!("trsvcid: {}", e.trsvcid);
            outln!("subnqn:  {}", e.subnqn);
            let sqflow = if e.sq_flow_disable_supported() { ", SQ flow control disable supported" } else { "" };
            outln!(
                "treq:    secure channel {}{sqflow}  sectype: {}",
                e.secure_channel(),
                if e.trtype == holdfast_proto::log_page::TRTYPE_TCP { e.sectype_name() } else { "-" }
            );
            let mut eflags = Vec::new();
            if e.duplicate_returned_info() {
                eflags.push("duplicate returned info");
            }
            if e.persistent_discovery() {
                eflags.push("persistent connections");
            }
            outln!(
                "portid:  {}  cntlid: {:#x}  asqsz: {}  eflags: {}",
                e.portid,
                e.cntlid,
                e.asqsz,
                if eflags.is_empty() { "none".to_string() } else { eflags.join(", ") }
            );
            if !e.connectable() {
                outln!(
                    "note:    holdfast's host cannot connect here ({})",
                    if e.trtype != holdfast_proto::log_page::TRTYPE_TCP {
                        "another transport than TCP"
                    } else {
                        "a TLS secure channel is required, and holdfast has no TLS"
                    }
                );
            }
        }
        match policy {
            // The page with its timing fields clear (POLICY_SET 0): the discovery controller has no subsystem
            // this host may use, so no policy to give; its zeros are not values.
            Some(p) if !p.advertises_timing() => outln!(
                "connection policy: no timing advertised to this host (no subsystem here allows it), host defaults \
                 apply; planned downtime {} ms, instance {:016x}",
                p.planned_downtime_ms,
                p.instance_id
            ),
            Some(p) => outln!(
                "connection policy (discovery controller): kato {} ms, reconnect delay {}..{} ms, ctrl_loss_tmo {}, \
                 fast_io_fail_tmo {}, cqt {} ms, planned downtime {} ms, instance {:016x}",
                p.kato_ms,
                p.reconnect_delay_ms,
                p.reconnect_delay_max_ms,
                if p.ctrl_loss_tmo_ms == holdfast_proto::policy::CTRL_LOSS_NEVER {
                    "never".to_string()
                } else {
                    format!("{} ms", p.ctrl_loss_tmo_ms)
                },
                if p.fast_io_fail_tmo_ms == 0 { "off".to_string() } else { format!("{} ms", p.fast_io_fail_tmo_ms) },
                p.cqt_ms,
                p.planned_downtime_ms,
                p.instance_id
            ),
            None => outln!("connection policy: none advertised"),
        }
    }
    Ok(ExitCode::SUCCESS)
}
