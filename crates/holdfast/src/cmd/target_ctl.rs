//! `holdfast target-ctl`: talk to a running target's control socket (announce a planned restart, list its
//! controllers and I/O counters, reload its configuration).

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
        /// Expected downtime, e.g. 30s, 1500ms, 2m, 1h.
        #[arg(long, value_parser = parse_duration)]
        downtime: Duration,
        /// Withdraw the announcement (hosts notified) if the target has not restarted this long after it, so
        /// that a restart called off does not change how hosts treat the target's next failure.
        #[arg(long, value_parser = parse_duration, default_value = "10m")]
        lapse: Duration,
    },
    /// Withdraw an announced restart.
    CancelRestart,
    /// Show the target's instance, controllers and planned downtime.
    Status,
    /// List the controllers (host associations): subsystem, CNTLID, host, its address, port, I/O queues, KATO.
    Controllers {
        /// The target's JSON as it is.
        #[arg(long)]
        json: bool,
    },
    /// Tear down controllers (host associations): their connections close, their commands in flight are fenced.
    /// A host still allowed connects again; take it off `allowed_hosts` (and reload) first to keep it out.
    Disconnect {
        /// Of this subsystem only (required with --cntlid).
        #[arg(long)]
        subsystem: Option<String>,
        /// The controller with this ID.
        #[arg(long, requires = "subsystem", required_unless_present = "host")]
        cntlid: Option<u16>,
        /// Every controller of this host NQN.
        #[arg(long)]
        host: Option<String>,
    },
    /// Reload the target's configuration file (as SIGHUP does) and say what changed, or why it was not applied.
    Reload,
    /// Each subsystem's I/O counters since the target started.
    Stats {
        /// The target's JSON as it is.
        #[arg(long)]
        json: bool,
    },
}

/// Parse "30s", "1500ms", "2m", "1h" or a bare number of seconds.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let s = s.trim();
    let (num, mult) = if let Some(v) = s.strip_suffix("ms") {
        (v, 1)
    } else if let Some(v) = s.strip_suffix('s') {
        (v, 1000)
    } else if let Some(v) = s.strip_suffix('m') {
        (v, 60_000)
    } else if let Some(v) = s.strip_suffix('h') {
        (v, 3_600_000)
    } else {
        (s, 1000)
    };
    let n: f64 = num.trim().parse().map_err(|_| format!("\"{s}\" is not a duration like 30s, 1500ms, 2m or 1h"))?;
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
    let (line, table, json) = match a.action {
        Action::AnnounceRestart { lapse, .. } if lapse.is_zero() => {
            anyhow::bail!("--lapse {lapse:?}: an announcement has to stand for some time")
        }
        Action::AnnounceRestart { downtime, lapse } => {
            (format!("announce-restart {} {}", downtime.as_millis(), lapse.as_millis()), None, false)
        }
        Action::CancelRestart => ("cancel-restart".into(), None, false),
        Action::Status => ("status".into(), None, false),
        Action::Reload => ("reload".into(), None, false),
        Action::Controllers { json } => ("controllers".into(), Some(controllers_table as Table), json),
        Action::Stats { json } => ("stats".into(), Some(stats_table as Table), json),
        Action::Disconnect { subsystem, cntlid, host } => {
            let mut line = String::from("disconnect");
            for (k, v) in [("subsystem", subsystem), ("cntlid", cntlid.map(|c| c.to_string())), ("host", host)] {
                if let Some(v) = v {
                    anyhow::ensure!(
                        !v.is_empty() && !v.contains(char::is_whitespace),
                        "--{k} {v:?}: an NQN has no spaces"
                    );
                    line += &format!(" {k}={v}");
                }
            }
            (line, None, false)
        }
    };
    // The default socket lives in the temporary directory, where anyone may make files: one another user made
    // there (owned by neither this user nor root) is not the target's, and is not talked to.
    if let Ok(m) = std::fs::symlink_metadata(&path) {
        use std::os::unix::fs::MetadataExt;
        if !holdfast_target::control::trusted_user(m.uid()) {
            anyhow::bail!(
                "{} belongs to user {}, not to this user or root: not a target's control socket of ours, left alone",
                path.display(),
                m.uid()
            );
        }
    }
    let mut s = UnixStream::connect(&path).with_context(|| match a.port {
        // The default socket is named after the target's first listener's port, whichever it listens on.
        Some(port) => format!(
            "cannot reach the control socket of a target whose first listener is on port {port} ({}): is one \
             running, with that port first (a target on several ports names its socket after the first), and \
             without a --control of its own?",
            path.display()
        ),
        None => format!("cannot reach the target's control socket {}", path.display()),
    })?;
    // A reload may create and size file namespaces, and waits for the target's main loop.
    let wait = if line == "reload" { Duration::from_secs(120) } else { Duration::from_secs(5) };
    s.set_read_timeout(Some(wait))?;
    writeln!(s, "{line}")?;
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            anyhow::anyhow!("no reply from the target within {} s (is it stopped?)", wait.as_secs())
        }
        _ => anyhow::Error::from(e).context("no reply from the target"),
    })?;
    let reply = reply.trim();
    if reply.is_empty() {
        anyhow::bail!("the target closed the control connection without a reply");
    }
    // The target's refusals are errors (stderr, exit 1), never output a script would read as JSON.
    if let Some(e) = reply.strip_prefix("error: ") {
        anyhow::bail!("{e}");
    }
    match (reply.strip_prefix("ok "), table) {
        (Some(j), Some(_)) if json => outln!("{j}"),
        (Some(j), Some(table)) => table(j)?,
        (Some(r), None) => outln!("{r}"),
        _ => outln!("{reply}"),
    }
    Ok(ExitCode::SUCCESS)
}

/// Print a JSON reply as a table.
type Table = fn(&str) -> anyhow::Result<()>;

fn controllers_table(j: &str) -> anyhow::Result<()> {
    let v: Vec<holdfast_target::control::ControllerInfo> =
        serde_json::from_str(j).context("the target's controller list")?;
    outln!(
        "{:<40} {:>6} {:<22} {:>4} {:>3} {:>7} {:>5} {:>8}  {:<36}  HOST NQN",
        "SUBSYSTEM",
        "CNTLID",
        "HOST ADDRESS",
        "PORT",
        "IOQ",
        "KATO MS",
        "READY",
        "AGE S",
        "HOST ID"
    );
    for c in v {
        outln!(
            "{:<40} {:>6} {:<22} {:>4} {:>3} {:>7} {:>5} {:>8}  {:<36}  {}",
            c.subsystem,
            c.cntlid,
            c.host_addr,
            c.port,
            c.io_queues,
            c.kato_ms,
            if c.ready { "yes" } else { "no" },
            c.age_s,
            c.hostid,
            c.hostnqn
        );
    }
    Ok(())
}

fn stats_table(j: &str) -> anyhow::Result<()> {
    let v: Vec<holdfast_target::control::SubsystemStats> = serde_json::from_str(j).context("the target's counters")?;
    outln!(
        "{:<40} {:>3} {:>5} {:>12} {:>12} {:>14} {:>14} {:>12} {:>12}",
        "SUBSYSTEM",
        "NS",
        "CTRLS",
        "READS",
        "WRITES",
        "BYTES READ",
        "BYTES WRITTEN",
        "MEDIA ERRORS",
        "FAILED CMDS"
    );
    for s in v {
        outln!(
            "{:<40} {:>3} {:>5} {:>12} {:>12} {:>14} {:>14} {:>12} {:>12}",
            s.subsystem,
            s.namespaces,
            s.controllers,
            s.read_cmds,
            s.write_cmds,
            s.bytes_read,
            s.bytes_written,
            s.media_errors,
            s.failed_cmds
        );
    }
    Ok(())
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
