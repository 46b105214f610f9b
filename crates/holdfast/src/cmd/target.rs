//! `holdfast target`: run the NVMe/TCP target, from a TOML file or the quick mode's flags.

use anyhow::Context;
use clap::Args as ClapArgs;
use holdfast_target::config::{BackendKind, Config, NamespaceConfig, PolicyConfig, PortConfig, SubsystemConfig};
use holdfast_target::{Server, Target, TargetSettings};
use std::path::PathBuf;
use std::process::ExitCode;
use std::time::Duration;

/// Options of `holdfast target`.
#[derive(ClapArgs, Debug)]
#[command(
    after_help = "Quick mode: holdfast target --listen 127.0.0.1:4420 --nqn nqn.2026-01.io.holdfast:demo --ram-mib 256\n\
                        Config file: holdfast target --config target.toml"
)]
pub struct Args {
    /// Configuration file (TOML); excludes the quick-mode and policy flags (the file says all that).
    #[arg(long, short = 'c', conflicts_with_all = [
        "listen", "nqn", "ram_mib", "file", "size_mib", "block_size", "read_only", "kato_ms", "reconnect_delay_ms",
        "reconnect_delay_max_ms", "ctrl_loss_tmo_ms", "fast_io_fail_tmo_ms", "cqt_ms", "cntlid_min", "cntlid_max",
        "ana_state",
    ])]
    config: Option<PathBuf>,
    /// Quick mode: address to listen on (NVMe/TCP and discovery).
    #[arg(long)]
    listen: Option<String>,
    /// Quick mode: subsystem NQN (namespace 1, any host allowed).
    #[arg(long)]
    nqn: Option<String>,
    /// Quick mode: a RAM namespace of this many MiB.
    #[arg(long, conflicts_with = "file")]
    ram_mib: Option<u64>,
    /// Quick mode: a file namespace at this path (created, at --size-mib, if missing).
    #[arg(long)]
    file: Option<PathBuf>,
    /// Quick mode: size of the file namespace in MiB (grows the file; default: its current size).
    #[arg(long)]
    size_mib: Option<u64>,
    /// Quick mode: logical block size, 512 or 4096.
    #[arg(long, default_value_t = 512)]
    block_size: u32,
    /// Quick mode: export the file namespace write protected (the file opened read-only, never grown; Identify
    /// says so, and writes fail with Namespace is Write Protected).
    #[arg(long, requires = "file")]
    read_only: bool,
    /// Policy: keep-alive timeout hosts should use (ms).
    #[arg(long)]
    kato_ms: Option<u32>,
    /// Policy: first reconnect delay (ms).
    #[arg(long)]
    reconnect_delay_ms: Option<u32>,
    /// Policy: cap of the reconnect backoff (ms).
    #[arg(long)]
    reconnect_delay_max_ms: Option<u32>,
    /// Policy: how long hosts keep reconnecting before failing I/O for good (ms).
    #[arg(long)]
    ctrl_loss_tmo_ms: Option<u32>,
    /// Policy: fail I/O fast after this long disconnected, 0 = off (ms).
    #[arg(long)]
    fast_io_fail_tmo_ms: Option<u32>,
    /// Policy: command quiesce time (ms).
    #[arg(long)]
    cqt_ms: Option<u32>,
    /// Quick mode: lowest CNTLID of the subsystem's controllers. Two targets serving one NQN on two paths
    /// (multipath) need disjoint ranges, e.g. --cntlid-min 1 --cntlid-max 32767 and --cntlid-min 32768.
    #[arg(long, default_value_t = holdfast_target::subsystem::MIN_CNTLID)]
    cntlid_min: u16,
    /// Quick mode: highest CNTLID of the subsystem's controllers (at most 0xFFEF = 65519).
    #[arg(long, default_value_t = holdfast_target::subsystem::MAX_CNTLID)]
    cntlid_max: u16,
    /// Quick mode: the ANA state of the namespace through this target's port (optimized, non-optimized,
    /// inaccessible, persistent-loss, change): two targets serving one file on two paths, one optimized and
    /// one non-optimized, make a Linux multipath host prefer the first.
    #[arg(long)]
    ana_state: Option<String>,
    /// Control socket (default: $TMPDIR/holdfast-target-PORT.sock for the first port).
    #[arg(long)]
    control: Option<PathBuf>,
    /// Planned downtime announced on SIGUSR1 (ms); withdrawn after 10 minutes unless the target restarted.
    #[arg(long, default_value_t = 30_000)]
    sigusr1_downtime_ms: u32,
    /// Adaptive busy polling: after network activity keep polling this many microseconds instead of
    /// sleeping (lower latency, one core busy while I/O flows); 0 turns it off.
    // 50 by default, the kernel's recommended `net.core.busy_poll` for a few sockets: it covers the gap
    // between a host's commands on loopback and LAN round trips, and stops answering each command of a host
    // that sends them slower than that the moment it arrives. Answers that early cost such a host (short of
    // CPU, one command per segment: the Linux host under emulation) a wake-up each. Under that host
    // (`bench/side-by-side.sh`, 4 KiB QD32, medians of 5 and 8 two-round runs) 50 got 0.88 and 0.85 of
    // nvmet's IOPS at random reads and writes, 200 got 0.85 and 0.815; on loopback the two are the same
    // (`bench/ab.sh`: QD1 x1.004, QD32 x0.998). `bench` keeps 200: it waits for its target's answers, and
    // spinning only speeds its own completions.
    #[arg(long, default_value_t = 50)]
    busy_poll_us: u64,
    /// Test only: delay every write this long before it reaches the media.
    #[arg(long, hide = true)]
    test_delay_writes_ms: Option<u64>,
    /// Test only: delay only every N-th write (with --test-delay-writes-ms).
    #[arg(long, hide = true, default_value_t = 1)]
    test_delay_every: u64,
    /// Test only: admit a reconnecting host without draining its old association (allows stale writes).
    #[arg(long, hide = true)]
    test_no_drain: bool,
}

fn quick_config(a: &Args) -> anyhow::Result<Config> {
    let listen = a.listen.clone().context("quick mode needs --listen ADDR:PORT (or use --config FILE)")?;
    let nqn = a.nqn.clone().context("quick mode needs --nqn NQN")?;
    let (backend, path, size_mib) = match (&a.ram_mib, &a.file) {
        (Some(_), None) if a.size_mib.is_some() => {
            anyhow::bail!("command line: --size-mib is for --file; --ram-mib gives the RAM namespace's size")
        }
        (Some(m), None) => (BackendKind::Ram, None, Some(*m)),
        (None, Some(p)) => {
            if a.size_mib.is_none() && !p.exists() {
                anyhow::bail!("command line: --file {}: no such file (--size-mib N creates it)", p.display());
            }
            (BackendKind::File, Some(p.clone()), a.size_mib)
        }
        _ => anyhow::bail!("quick mode needs --ram-mib N or --file PATH [--size-mib N]"),
    };
    let ram = backend == BackendKind::Ram;
    let mut policy = PolicyConfig::default();
    let set = |dst: &mut u32, v: Option<u32>| {
        if let Some(v) = v {
            *dst = v;
        }
    };
    set(&mut policy.kato_ms, a.kato_ms);
    set(&mut policy.reconnect_delay_ms, a.reconnect_delay_ms);
    set(&mut policy.reconnect_delay_max_ms, a.reconnect_delay_max_ms);
    if a.reconnect_delay_ms.is_some() && a.reconnect_delay_max_ms.is_none() {
        policy.reconnect_delay_max_ms = policy.reconnect_delay_max_ms.max(policy.reconnect_delay_ms);
    }
    set(&mut policy.ctrl_loss_tmo_ms, a.ctrl_loss_tmo_ms);
    set(&mut policy.fast_io_fail_tmo_ms, a.fast_io_fail_tmo_ms);
    set(&mut policy.cqt_ms, a.cqt_ms);
    let cfg = Config {
        ports: vec![PortConfig { id: 1, listen, ana_state: a.ana_state.clone(), ana_groups: Default::default() }],
        subsystems: vec![SubsystemConfig {
            nqn,
            serial: None,
            model: None,
            allow_any_host: true,
            allowed_hosts: vec![],
            ports: vec![],
            cntlid_min: a.cntlid_min,
            cntlid_max: a.cntlid_max,
            policy,
            namespaces: vec![NamespaceConfig {
                nsid: 1,
                backend,
                path,
                size_mib,
                block_size: a.block_size,
                read_only: a.read_only,
                uuid: None,
                nguid: None,
                eui64: None,
                ana_group: 1,
            }],
        }],
        hosts: vec![],
        referrals: vec![],
    };
    // Name the flag, not the config key: `subsystem[0].policy.cqt_ms` is `--cqt-ms` here.
    cfg.validate("command line").map_err(|e| {
        let key = ["subsystem[0].namespace[0].", "subsystem[0].policy.", "subsystem[0].", "port[0]."]
            .iter()
            .find_map(|p| e.key.strip_prefix(p))
            .unwrap_or(&e.key);
        let flag = match key {
            "size_mib" if ram => "ram-mib".to_string(),
            "path" => "file".to_string(),
            k => k.replace('_', "-"),
        };
        anyhow::anyhow!("command line: --{flag}: {}", e.reason)
    })?;
    Ok(cfg)
}

/// Run the target until SIGINT or SIGTERM.
pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let cfg = match &a.config {
        Some(p) => Config::load(p).map_err(|e| anyhow::anyhow!("{e}"))?,
        None => quick_config(&a)?,
    };
    if cfg.subsystems.is_empty() {
        // Valid (a discovery-only target, subsystems added by a reload later), but more often a mistake.
        tracing::warn!("the configuration has no [[subsystem]]: hosts can discover this target but use nothing on it");
    }
    let settings = TargetSettings {
        drain: !a.test_no_drain,
        test_delay_writes: a.test_delay_writes_ms.map(Duration::from_millis),
        test_delay_every: a.test_delay_every,
        test_delay_flushes: None,
        busy_poll: Duration::from_micros(a.busy_poll_us),
    };
    let rt = super::common::runtime()?;
    let open_files = holdfast_rt::raise_open_files_limit();
    rt.block_on(async move {
        let a = a;
        if let Some((before, after)) = open_files.filter(|(b, a)| a > b) {
            tracing::debug!("open files limit raised from {before} to {after}");
        }
        // What fails here (a backend that does not open, a port already taken) names its key; with a
        // configuration file, the file too.
        let in_file = |e: anyhow::Error| match &a.config {
            Some(p) => anyhow::anyhow!("{}: {e}", p.display()),
            // Quick mode: the flag the user gave, not the key of a file there is none of.
            None => {
                let e = format!("{e:#}");
                let flags = [
                    ("subsystem[0].namespace[0].path: ", "--file: "),
                    ("subsystem[0].namespace[0].size_mib: ", "--size-mib: "),
                    ("port 1 (listen ", "--listen ("),
                ];
                match flags.iter().find_map(|(key, flag)| e.strip_prefix(key).map(|rest| format!("{flag}{rest}"))) {
                    Some(e) => anyhow::anyhow!("command line: {e}"),
                    None => anyhow::anyhow!(e),
                }
            }
        };
        // Before anything is announced: a SIGHUP that comes once the target says where it listens reloads
        // (before, it takes its default action and ends the process).
        let mut signals = Signals::new();
        // Ports first: a start whose address is taken fails before a file namespace's file is created.
        let listeners = holdfast_target::server::Listeners::bind_config(&cfg).map_err(in_file)?;
        // A control socket asked for by name is part of the start: one that cannot be had fails it, before any
        // namespace is opened (the default one, named after the first port, is only warned about below).
        let named_control = match &a.control {
            Some(path) => Some(holdfast_target::control::bind(path).map_err(|e| {
                let why = if e.kind() == std::io::ErrorKind::AddrInUse {
                    " (a process answers on it: another target given the same --control?)"
                } else {
                    ""
                };
                anyhow::anyhow!("command line: --control {}: {e}{why}", path.display())
            })?),
            None => None,
        };
        let target = Target::new(&cfg, settings).map_err(|e| {
            // The socket bound for it goes with the start that failed.
            if let (Some(_), Some(path)) = (&named_control, &a.control) {
                let _ = std::fs::remove_file(path);
            }
            in_file(e)
        })?;
        let mut server = Server::start_on(target.clone(), listeners);
        for (id, addr) in &server.bound {
            tracing::info!(port = id, "listening on {addr} (NVMe/TCP and discovery)");
        }
        for s in target.subsystems() {
            // Who may connect and what hosts are told, as the configuration resolved them (a subsystem open to
            // no host, or to any, is seen at a glance).
            tracing::info!(subsys = %s.nqn, "access: {}; policy: {}", s.describe_access(), s.policy.read().describe());
            for ns in s.namespaces.read().values() {
                tracing::info!(subsys = %s.nqn, nsid = ns.nsid, block_size = ns.block_size, blocks = ns.nblocks, "namespace: {}", ns.backend.describe());
            }
        }
        if !target.settings.drain {
            tracing::warn!("TEST MODE: reconnecting hosts are admitted without draining; stale writes are possible");
        }
        // `target-ctl reload` asks through the control socket, and gets the outcome back.
        let (reload_tx, mut reload_rx) = tokio::sync::mpsc::channel::<holdfast_target::control::ReloadRequest>(4);
        let control = a.control.clone().unwrap_or_else(|| holdfast_target::control::default_path(server.bound[0].1.port()));
        // Bound before the connect lines, which say the target is ready (for `target-ctl` too). Only a socket
        // file this target created is removed at exit.
        let bound = match named_control {
            Some(listener) => Ok(listener),
            None => holdfast_target::control::bind(&control),
        };
        let control_bound = match bound {
            Ok(listener) => {
                tracing::info!("control socket at {}", control.display());
                let (t, s) = (target.clone(), server.shutdown.clone());
                let reload = a.config.is_some().then(|| reload_tx.clone());
                tokio::spawn(async move {
                    if let Err(e) = holdfast_target::control::serve(t, listener, s, reload).await {
                        tracing::warn!("control socket failed: {e}");
                    }
                });
                true
            }
            Err(e) => {
                // Whose socket it is: the one given by --control, or the default named after the first port.
                // (The default one: a --control that cannot be had failed the start.)
                let why = match e.kind() {
                    std::io::ErrorKind::AddrInUse => {
                        " (another target whose first port has the same TCP port number, on another address?); left \
                         alone, --control PATH chooses another"
                    }
                    _ => "",
                };
                tracing::warn!(
                    "control socket {} unavailable: {e}{why}; this target runs without one (target-ctl cannot \
                     reach it)",
                    control.display()
                );
                false
            }
        };
        // Best effort: a server whose stdout is gone (a pipe whose reader took the first line and left) goes on
        // serving; println! would panic.
        let mut lines = String::new();
        for (_, addr) in &server.bound {
            let host = if addr.ip().is_unspecified() { "<this-host-address>".to_string() } else { addr.ip().to_string() };
            lines += &format!("discover: nvme discover -t tcp -a {host} -s {}\n", addr.port());
            for s in target.subsystems().iter().filter(|s| s.on_port(server.bound.iter().find(|b| b.1 == *addr).map(|b| b.0).unwrap_or(0))) {
                lines += &format!("connect:  nvme connect -t tcp -a {host} -s {} -n {}\n", addr.port(), s.nqn);
            }
        }
        {
            use std::io::Write;
            let mut out = std::io::stdout().lock();
            if let Err(e) = out.write_all(lines.as_bytes()).and_then(|()| out.flush()) {
                tracing::debug!("stdout: {e}");
            }
        }
        let config_path = a.config.clone();
        loop {
            let asked = tokio::select! {
                signal = signals.next() => match signal {
                    Signal::Stop => break,
                    Signal::Announce => {
                        holdfast_target::control::announce_restart(
                            &target,
                            a.sigusr1_downtime_ms,
                            holdfast_target::control::DEFAULT_RESTART_LAPSE,
                        );
                        continue;
                    }
                    Signal::Reload => None,
                },
                Some(asked) = reload_rx.recv() => Some(asked),
            };
            let Some(path) = &config_path else {
                tracing::warn!("SIGHUP: nothing to reload in quick mode (no --config file)");
                continue;
            };
            let origin = if asked.is_some() { "reload (target-ctl)" } else { "SIGHUP" };
            let reply = reload(&mut server, path, origin).await;
            if let Some(asked) = asked {
                let _ = asked.send(reply);
            }
        }
        if control_bound {
            let _ = std::fs::remove_file(&control);
        }
        tracing::info!("shutting down: closing connections, flushing namespaces");
        // A failed final flush fails the process: a supervisor must not take the target for one that stopped
        // cleanly and serve the files again as if their acknowledged writes were there.
        anyhow::ensure!(
            server.stop().await,
            "stopped, but flushing the file namespaces failed (logged above): writes acknowledged before may be \
             lost; check the files before serving them again"
        );
        tracing::info!("stopped");
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Reload the configuration file `path` into `server` (on SIGHUP or `target-ctl reload`, named by `origin` in the
/// log) and log what changed; the reply line for `target-ctl`: `ok ...`, or `error: ...` when the file was not
/// applied or applied in part.
async fn reload(server: &mut Server, path: &std::path::Path, origin: &str) -> String {
    // The control socket's replies are one line each: notes or errors of several lines are joined.
    reload_reply(server, path, origin).await.replace('\n', "; ")
}

async fn reload_reply(server: &mut Server, path: &std::path::Path, origin: &str) -> String {
    let reloaded = match Config::load(path) {
        Ok(c) => server.reload(&c).await,
        Err(e) => Err(anyhow::Error::from(e)),
    };
    match reloaded {
        Ok(s) if s.notes.is_empty() && s.errors.is_empty() => {
            tracing::info!("{origin}: {} reloaded, nothing changed", path.display());
            format!("ok {} reloaded, nothing changed", path.display())
        }
        Ok(s) => {
            for n in &s.notes {
                tracing::info!("{origin}: {n}");
            }
            for e in &s.errors {
                tracing::error!("{origin}: {e}");
            }
            if s.errors.is_empty() {
                tracing::info!(genctr = s.genctr, "{origin}: {} applied", path.display());
                format!("ok {} applied: {}", path.display(), s.notes.join("; "))
            } else {
                tracing::error!(genctr = s.genctr, "{origin}: {} applied except for the errors above", path.display());
                format!(
                    "error: {} applied except for: {} (applied: {})",
                    path.display(),
                    s.errors.join("; "),
                    s.notes.join("; ")
                )
            }
        }
        Err(e) => {
            tracing::error!("{origin}: {} not applied, the old configuration stays: {e:#}", path.display());
            format!("error: {} not applied, the old configuration stays: {e:#}", path.display())
        }
    }
}

enum Signal {
    Stop,
    Reload,
    Announce,
}

/// The target's signal handlers, made once for its whole run: SIGINT / SIGTERM stop the target; SIGHUP reloads
/// the configuration file; SIGUSR1 announces a planned restart. Made anew for each wait, a signal that arrived
/// while the one before was handled (a SIGTERM during a reload, or with a SIGUSR1 in the same wake-up, whose
/// handler the `select` dropped) was lost: a new handler sees only signals that come after it is made, and once
/// one has been made the default action (terminating) no longer happens.
struct Signals(Option<[tokio::signal::unix::Signal; 4]>);

impl Signals {
    fn new() -> Signals {
        use tokio::signal::unix::{signal, SignalKind};
        let kinds =
            [SignalKind::terminate(), SignalKind::interrupt(), SignalKind::hangup(), SignalKind::user_defined1()];
        let made: Result<Vec<_>, _> = kinds.into_iter().map(signal).collect();
        Signals(made.ok().and_then(|v| v.try_into().ok()))
    }

    /// The next signal.
    async fn next(&mut self) -> Signal {
        let Some([term, int, hup, usr1]) = &mut self.0 else {
            return std::future::pending().await;
        };
        // Stops first: a stop that came with another signal is not put off behind it.
        tokio::select! {
            biased;
            _ = term.recv() => Signal::Stop,
            _ = int.recv() => Signal::Stop,
            _ = hup.recv() => Signal::Reload,
            _ = usr1.recv() => Signal::Announce,
        }
    }
}
