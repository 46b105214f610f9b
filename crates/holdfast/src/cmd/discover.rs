//! `holdfast discover ADDR`: list what a discovery controller offers.

use super::common::runtime;
use clap::Args as ClapArgs;
use holdfast_host::{discover, ConnectOptions};
use std::process::ExitCode;
use std::time::Duration;

/// Options of `holdfast discover`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Discovery controller address, IP:PORT.
    addr: String,
    /// Host NQN.
    #[arg(long)]
    hostnqn: Option<String>,
    /// Print JSON.
    #[arg(long)]
    json: bool,
    /// Connect timeout (ms).
    #[arg(long, default_value_t = 10_000)]
    connect_timeout_ms: u64,
}

/// Run.
pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let mut o = ConnectOptions::new(a.addr.clone(), "");
    if let Some(h) = a.hostnqn {
        o.hostnqn = h;
    }
    o.connect_timeout = Duration::from_millis(a.connect_timeout_ms);
    let entries = runtime()?.block_on(discover(o))?;
    if a.json {
        let v: Vec<_> = entries
            .iter()
            .map(|e| {
                serde_json::json!({
                    "trtype": if e.trtype == 3 { "tcp".to_string() } else { e.trtype.to_string() },
                    "adrfam": match e.adrfam { 1 => "ipv4".to_string(), 2 => "ipv6".to_string(), x => x.to_string() },
                    "subtype": e.subtype_name(), "portid": e.portid, "cntlid": e.cntlid, "asqsz": e.asqsz,
                    "trsvcid": e.trsvcid, "subnqn": e.subnqn, "traddr": e.traddr, "treq": e.treq,
                })
            })
            .collect();
        outln!("{}", serde_json::to_string_pretty(&serde_json::json!({ "records": v }))?);
    } else {
        outln!("Discovery log of {}: {} record(s)", a.addr, entries.len());
        for (i, e) in entries.iter().enumerate() {
            outln!("===== entry {i} =====");
            outln!("subtype: {}", e.subtype_name());
            outln!("traddr:  {}", e.traddr);
            outln!("trsvcid: {}", e.trsvcid);
            outln!("subnqn:  {}", e.subnqn);
            outln!("portid:  {}  cntlid: {:#x}  asqsz: {}  treq: {:#x}", e.portid, e.cntlid, e.asqsz, e.treq);
        }
    }
    Ok(ExitCode::SUCCESS)
}
