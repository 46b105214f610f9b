//! `holdfast proxy` (a fault-injecting TCP proxy) and `holdfast proxy-ctl` (its control client).

use anyhow::Context as _;
use clap::Args as ClapArgs;
use holdfast_testkit::proxy::Proxy;
use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpStream};
use std::process::ExitCode;
use std::time::Duration;

/// Options of `holdfast proxy`.
#[derive(ClapArgs, Debug)]
pub struct Args {
    /// Address to listen on.
    #[arg(long)]
    listen: SocketAddr,
    /// Address to forward to.
    #[arg(long)]
    upstream: SocketAddr,
    /// Control port (default: an ephemeral port on 127.0.0.1, printed at start).
    #[arg(long)]
    control: Option<SocketAddr>,
}

/// Options of `holdfast proxy-ctl`.
#[derive(ClapArgs, Debug)]
pub struct CtlArgs {
    /// The proxy's control port.
    #[arg(long)]
    control: SocketAddr,
    /// Command: cut | blackhole | delay MS | flap MS | resume | status.
    #[arg(required = true, num_args = 1..)]
    command: Vec<String>,
}

/// Run the proxy until SIGINT/SIGTERM. Prints `listening: ADDR -> UPSTREAM` and `control: ADDR` first.
pub fn run(a: Args) -> anyhow::Result<ExitCode> {
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    rt.block_on(async move {
        let p = match a.control {
            Some(c) => Proxy::start_with_control(a.listen, a.upstream, c).await?,
            None => Proxy::start(a.listen, a.upstream).await?,
        };
        outln!("listening: {} -> {}", p.local_addr(), a.upstream);
        outln!("control: {}", p.control_addr());
        use std::io::Write as _;
        let _ = std::io::stdout().flush();
        use tokio::signal::unix::{signal, SignalKind};
        let mut term = signal(SignalKind::terminate())?;
        tokio::select! {
            _ = term.recv() => {}
            _ = tokio::signal::ctrl_c() => {}
        }
        p.shutdown().await;
        Ok::<_, anyhow::Error>(())
    })?;
    Ok(ExitCode::SUCCESS)
}

/// Send one command line to a proxy's control port and print its reply; exit 0 on `ok ...`, 1 on `error: ...`
/// or anything else (what answered is not a proxy's control port).
pub fn run_ctl(a: CtlArgs) -> anyhow::Result<ExitCode> {
    let mut s = TcpStream::connect_timeout(&a.control, Duration::from_secs(5))
        .with_context(|| format!("cannot reach the proxy control port {}", a.control))?;
    s.set_read_timeout(Some(Duration::from_secs(5)))?;
    writeln!(s, "{}", a.command.join(" "))
        .with_context(|| format!("cannot send to the proxy control port {}", a.control))?;
    let mut reply = String::new();
    BufReader::new(&s).read_line(&mut reply).map_err(|e| match e.kind() {
        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
            anyhow::anyhow!("no reply from {} within 5 s: is it a holdfast proxy's control port?", a.control)
        }
        _ => anyhow::Error::new(e).context(format!("no reply from the proxy control port {}", a.control)),
    })?;
    let reply = reply.trim();
    anyhow::ensure!(!reply.is_empty(), "proxy at {} closed the control connection without a reply", a.control);
    if reply.starts_with("ok") {
        outln!("{reply}");
        return Ok(ExitCode::SUCCESS);
    }
    if reply.starts_with("error:") {
        outln!("{reply}");
        return Ok(ExitCode::from(1));
    }
    let first: String = reply.chars().take(80).collect();
    anyhow::bail!("{} is not a holdfast proxy's control port: it answered {first:?}", a.control)
}
