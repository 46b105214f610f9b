//! `holdfast target-ctl`: talk to a running target's control socket (announce a planned restart).

use anyhow::Context;
use clap::{Args as ClapArgs, Subcommand};
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Options of `holdfast target-ctl`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Control socket of the target (default: the one for --port).
    #[arg(long, conflicts_with = "port")]
    control: Option<PathBuf>,
    /// TCP port of the target's first listener (finds its default control socket).
    #[arg(long)]
    port: Option<u16>,
    #[command(subcommand)]
    action: Action,
}

#[derive(Subcommand, Debug)]
enum Action {
    /// Advertise a planned restart: hosts keep I/O queued at least this long.
    AnnounceRestart {
        /// Expected downtime, e.g. 30s, 1500ms, 2m.
        #[arg(long, value_parser = parse_duration)]
        downtime: Duration,
    },
    /// Withdraw an announced restart.
    CancelRestart,
    /// Show the target's instance, controllers and planned downtime.
    Status,
}

/// Parse "30s", "1500ms", "2m" or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(v) = s.strip_suffix("ms") {
        (v, 1)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60_000)
    } else {
        (s, 1000)
    };
    let n: f64 = num.trim().parse().map_err(|_| format!("\"{s}\" is not a duration like 30s, 1500ms or 2m"))?;
    if !(0.0..=4.0e6).contains(&(n * mult as f64 / 1000.0)) {
        return Err(format!("\"{s}\" is out of range"));
    }
    Ok(Duration::from_millis((n * mult as f64) as u64))
}

/// Send one command, print the reply.
pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let path = match (a.control, a.port) {
        (Some(p), _) => p,
        (None, Some(port)) => holdfast_target::control::default_path(port),
        (None, None) => anyhow::bail!("say which target: --control PATH or --port N"),
    };
    let line = match a.action {
        Action::AnnounceRestart { downtime } => format!("announce-restart {}", downtime.as_millis()),
        Action::CancelRestart => "cancel-restart".into(),
        Action::Status => "status".into(),
    };
    let mut s = UnixStream::connect(&path)
        .with_context(|| format!("cannot reach the target's control socket {}", path.display()))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    writeln!(s, "{line}")?;
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).context("no reply from the target")?;
    let reply = reply.trim();
    outln!("{reply}");
    Ok(if reply.starts_with("ok") { ExitCode::SUCCESS } else { ExitCode::from(1) })
}

#[cfg(test)]
mod tests {
    #[test]
    fn durations() {
        use std::time::Duration;
        assert_eq!(super::parse_duration("30s"), Ok(Duration::from_secs(30)));
        assert_eq!(super::parse_duration("1500ms"), Ok(Duration::from_millis(1500)));
        assert_eq!(super::parse_duration("2m"), Ok(Duration::from_secs(120)));
        assert!(super::parse_duration("x").is_err());
    }
}
