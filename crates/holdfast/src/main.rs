//! `holdfast`: one CLI for the NVMe/TCP target, the host tools, the benchmark, the fault proxy and the NBD
//! bridge.
//! Each subcommand lives in its own file under `cmd/`.

use clap::{Parser, Subcommand};

/// `println!` that reports a closed stdout as an error instead of panicking.
macro_rules! outln {
    ($($t:tt)*) => {{
        use std::io::Write as _;
        writeln!(std::io::stdout().lock(), $($t)*)?
    }};
}

mod cmd;
use holdfast::nbd;

/// mimalloc: per-I/O buffers (a 128 KiB read, a receive buffer after its PDUs were split off) come back
/// from thread-local free lists instead of glibc's mmap/munmap round trips and their page faults (measured
/// in BENCHMARKS.md and the commit that added it).
#[global_allocator]
static GLOBAL: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// holdfast: an NVMe over Fabrics (TCP) target and host.
#[derive(Parser)]
#[command(name = "holdfast", version, about, long_about = None)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run an NVMe/TCP target (storage server).
    Target(cmd::target::Args),
    /// List the subsystems a discovery controller offers.
    Discover(cmd::discover::Args),
    /// Identify a controller (and a namespace).
    Identify(cmd::identify::Args),
    /// A namespace's reservations: register, acquire, preempt, release, clear, report.
    Resv(cmd::resv::Args),
    /// Read from a namespace to a file or stdout.
    Read(cmd::io::ReadArgs),
    /// Write a file or stdin to a namespace.
    Write(cmd::io::WriteArgs),
    /// Flush a namespace: what it acknowledged is made durable.
    Flush(cmd::io::FlushArgs),
    /// Zero a range of a namespace (Write Zeroes; writes of zeroes where the controller has none).
    WriteZeroes(cmd::io::RangeArgs),
    /// Deallocate (trim) a range of a namespace (Dataset Management).
    Trim(cmd::io::RangeArgs),
    /// Read a controller's Error Information or SMART / Health log page.
    Log(cmd::log::Args),
    /// Benchmark and verify a namespace.
    Bench(cmd::bench::Args),
    /// A fault-injecting TCP proxy (cut, blackhole, delay, flap) for testing ride-through.
    Proxy(cmd::proxy::Args),
    /// Send a command to a running proxy.
    ProxyCtl(cmd::proxy::CtlArgs),
    /// Control a running target: announce or cancel a planned restart, its status, controllers (and ending
    /// their associations), I/O counters, and reloading its configuration file.
    TargetCtl(cmd::target_ctl::Args),
    /// Serve a namespace as an NBD export, so that NBD clients (QEMU, qemu-img, nbdcopy, the Linux NBD
    /// client) use it unmodified and ride through target outages.
    Nbd(cmd::nbd::Args),
    /// Generate a DH-HMAC-CHAP secret (DHHC-1), as `nvme gen-dhchap-key` does.
    GenDhchapKey(cmd::gen_key::Args),
}

fn main() -> std::process::ExitCode {
    // The process `holdfast nbd --device` starts to run its device (not a command for people: no clap).
    let args: Vec<std::ffi::OsString> = std::env::args_os().take(3).collect();
    if args.len() == 3 && args[1] == nbd::device::DEVICE_PROCESS_ARG {
        return nbd::device::run_device_process(&args[2].to_string_lossy());
    }
    let cli = Cli::parse();
    init_tracing();
    let r = match cli.command {
        Command::Target(a) => cmd::target::run(a),
        Command::TargetCtl(a) => cmd::target_ctl::run(a),
        Command::Discover(a) => cmd::discover::run(a),
        Command::Identify(a) => cmd::identify::run(a),
        Command::Resv(a) => cmd::resv::run(a),
        Command::Read(a) => cmd::io::run_read(a),
        Command::Write(a) => cmd::io::run_write(a),
        Command::Flush(a) => cmd::io::run_flush(a),
        Command::WriteZeroes(a) => cmd::io::run_range(a, cmd::io::RangeOp::WriteZeroes),
        Command::Trim(a) => cmd::io::run_range(a, cmd::io::RangeOp::Trim),
        Command::Log(a) => cmd::log::run(a),
        Command::Bench(a) => cmd::bench::run(a),
        Command::Proxy(a) => cmd::proxy::run(a),
        Command::ProxyCtl(a) => cmd::proxy::run_ctl(a),
        Command::Nbd(a) => cmd::nbd::run(a),
        Command::GenDhchapKey(a) => cmd::gen_key::run(a),
    };
    match r {
        Ok(code) => code,
        // A reader that went away (`holdfast discover | head`) is not an error worth a message.
        Err(e) if e.downcast_ref::<std::io::Error>().is_some_and(|e| e.kind() == std::io::ErrorKind::BrokenPipe) => {
            std::process::ExitCode::from(141)
        }
        Err(e) => {
            // Best effort (not eprintln!, which panics): stderr may be a terminal that hung up (`nbd --device`
            // outlives a SIGHUP).
            use std::io::Write as _;
            let _ = writeln!(std::io::stderr(), "holdfast: error: {e:#}");
            std::process::ExitCode::from(1)
        }
    }
}

fn init_tracing() {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::new(log_directives(std::env::var("HOLDFAST_LOG").ok().as_deref()));
    // Colours only on a terminal: a log redirected to a file (a service's journal, a test's log) stays plain text.
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_target(false)
        .with_ansi(ansi)
        // A log line that cannot be written (stderr a pipe whose reader went: a `| tee` killed, a log shipper
        // restarting) is lost, not reported: the report went to stderr with eprintln!, which panics on a broken
        // pipe, so that any later line (a peer merely connecting) ended the target.
        .log_internal_errors(false)
        .init();
}

/// The filter directives for `HOLDFAST_LOG` (unset or empty: info). A bare level is taken in the spellings
/// people use ("warning" is warn): tracing's filter reads any other word as a module name, so that
/// `HOLDFAST_LOG=warning` kept only the lines of a module called "warning", none, errors included.
fn log_directives(v: Option<&str>) -> String {
    match v.map(str::trim) {
        None | Some("") => "info".into(),
        Some(v) => v
            .split(',')
            .map(|d| match d.trim().to_ascii_lowercase().as_str() {
                "warning" => "warn".to_string(),
                "err" => "error".to_string(),
                "information" => "info".to_string(),
                "none" => "off".to_string(),
                _ => d.trim().to_string(),
            })
            .collect::<Vec<_>>()
            .join(","),
    }
}

#[cfg(test)]
mod tests {
    /// Unset or empty is info; levels spelled as people spell them are levels, in a list too.
    #[test]
    fn log_directives_take_the_usual_spellings() {
        assert_eq!(super::log_directives(None), "info");
        assert_eq!(super::log_directives(Some(" ")), "info");
        assert_eq!(super::log_directives(Some("warning")), "warn");
        assert_eq!(super::log_directives(Some("WARNING,holdfast_host=debug")), "warn,holdfast_host=debug");
        assert_eq!(super::log_directives(Some("debug")), "debug");
    }
}
