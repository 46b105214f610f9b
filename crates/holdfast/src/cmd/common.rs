//! Options shared by the host commands.

use clap::Args as ClapArgs;
use holdfast_host::{ConnectOptions, Controller, Namespace};
use std::time::Duration;

/// How to reach the target.
#[derive(ClapArgs, Debug, Clone)]
pub struct HostArgs {
    /// Target address, HOST[:PORT] (port 4420, the NVMe/TCP I/O port, if left out, as nvme-cli).
    #[arg(long)]
    pub addr: String,
    /// Host NQN (default: /etc/nvme/hostnqn, or derived from the machine ID).
    #[arg(long)]
    pub hostnqn: Option<String>,
    /// Host Identifier, a UUID: what reservations know the host by (default: /etc/nvme/hostid, else the UUID of
    /// a --hostnqn of the form nqn.2014-08.org.nvmexpress:uuid:<UUID>, else derived from the machine ID).
    #[arg(long, value_parser = parse_hostid)]
    pub hostid: Option<[u8; 16]>,
    /// Header and data digests.
    #[arg(long)]
    pub digests: bool,
    /// Limit for the TCP connect and ICReq/ICResp (ms).
    #[arg(long, default_value_t = 10_000)]
    pub connect_timeout_ms: u64,
    /// Limit for one command (ms): a longer wait counts as a lost connection, and a command unanswered on 3
    /// connections fails with a timeout.
    #[arg(long, default_value_t = 30_000, value_parser = clap::value_parser!(u64).range(1..))]
    pub io_timeout_ms: u64,
    /// Host override of the keep-alive timeout (ms; default: the target's policy).
    #[arg(long)]
    pub kato_ms: Option<u64>,
    /// Host override of the first reconnect delay (ms).
    #[arg(long)]
    pub reconnect_delay_ms: Option<u64>,
    /// Host override of the reconnect backoff cap (ms).
    #[arg(long)]
    pub reconnect_delay_max_ms: Option<u64>,
    /// Host override of the controller loss timeout (ms).
    #[arg(long)]
    pub ctrl_loss_tmo_ms: Option<u64>,
    /// Host override of the fast I/O fail timeout (ms, 0 = off).
    #[arg(long)]
    pub fast_io_fail_tmo_ms: Option<u64>,
    /// Ask the target to disable SQ flow control (as nvme-cli's --disable-sqflow, which libnvme sets when a
    /// discovery log entry's TREQ allows it): reads may then complete with their data alone.
    #[arg(long)]
    pub disable_sqflow: bool,
    #[command(flatten)]
    pub auth: AuthArgs,
}

/// The NVMe/TCP transport's well-known ports (NVMe/TCP 1.0 §3.3.1, IANA): 4420 for I/O controllers, 8009 for
/// discovery controllers. nvme-cli (libnvme's default trsvcid) fills them in the same way.
pub const NVME_TCP_IO_PORT: u16 = 4420;
/// See [`NVME_TCP_IO_PORT`].
pub const NVME_TCP_DISCOVERY_PORT: u16 = 8009;

/// `addr` with `port` added when it names a host alone (`10.0.0.1`, `::1`, `[::1]`, `storage1`); anything
/// else unchanged (the connect then says what it expected).
pub fn with_default_port(addr: &str, port: u16) -> String {
    if addr.parse::<std::net::SocketAddr>().is_ok() {
        return addr.to_string();
    }
    if let Ok(ip) = addr.parse::<std::net::IpAddr>() {
        return std::net::SocketAddr::new(ip, port).to_string();
    }
    let bracketed = addr.starts_with('[') && addr.ends_with(']');
    if bracketed || (!addr.is_empty() && !addr.contains(':')) {
        return format!("{addr}:{port}");
    }
    addr.to_string()
}

/// An NSID that can name one namespace: 1 to FFFFFFFEh (0 is none, FFFFFFFFh every one).
pub fn parse_nsid(s: &str) -> Result<u32, String> {
    let n = match s.strip_prefix("0x").or_else(|| s.strip_prefix("0X")) {
        Some(h) => u32::from_str_radix(h, 16),
        None => s.parse(),
    }
    .map_err(|_| format!("\"{s}\" is not a namespace ID (1 to 4294967294, decimal or 0x hex)"))?;
    match n {
        0 => Err("0 names no namespace: 1 to 4294967294".into()),
        0xFFFF_FFFF => Err("4294967295 (FFFFFFFFh) stands for every namespace: name one, 1 to 4294967294".into()),
        n => Ok(n),
    }
}

/// A Host Identifier given as a UUID (nil and all-ones are not identifiers).
fn parse_hostid(s: &str) -> Result<[u8; 16], String> {
    match uuid::Uuid::parse_str(s) {
        Ok(u) if !u.is_nil() && !u.is_max() => Ok(*u.as_bytes()),
        Ok(_) => Err(format!("{s} is not a Host Identifier (nil and all-ones UUIDs are reserved)")),
        Err(e) => Err(format!("\"{s}\" is not a UUID: {e}")),
    }
}

/// DH-HMAC-CHAP secrets (nvme-cli's flags of the same names).
#[derive(ClapArgs, Debug, Clone, Default)]
pub struct AuthArgs {
    /// The host's DH-HMAC-CHAP secret, "DHHC-1:XX:<base64>:" (`nvme gen-dhchap-key`): used on every queue whose
    /// Connect asks for in-band authentication, at every reconnect.
    #[arg(long, value_name = "SECRET")]
    pub dhchap_secret: Option<Secret>,
    /// The controller's DH-HMAC-CHAP secret: authenticate the controller too (bidirectional).
    #[arg(long, value_name = "SECRET")]
    pub dhchap_ctrl_secret: Option<Secret>,
}

impl AuthArgs {
    /// Put the secrets into `o`.
    pub fn apply(&self, o: &mut ConnectOptions) {
        o.dhchap_secret = self.dhchap_secret.as_ref().map(|s| s.0.clone());
        o.dhchap_ctrl_secret = self.dhchap_ctrl_secret.as_ref().map(|s| s.0.clone());
    }
}

/// A secret given on the command line: its `Debug` never shows it.
#[derive(Clone)]
pub struct Secret(pub String);

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("<secret>")
    }
}

impl std::str::FromStr for Secret {
    type Err = std::convert::Infallible;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        Ok(Secret(s.to_string()))
    }
}

impl HostArgs {
    /// Connection options for subsystem `nqn`.
    pub fn options(&self, nqn: &str) -> ConnectOptions {
        let mut o = ConnectOptions::new(with_default_port(&self.addr, NVME_TCP_IO_PORT), nqn);
        if let Some(h) = &self.hostnqn {
            // Its Host Identifier as the library chooses it for a host NQN (the UUID of a UUID-based one, unless
            // /etc/nvme/hostid says this machine's).
            (o.hostnqn, o.hostid) = holdfast_host::options::host_identity(Some(h));
        }
        if let Some(id) = self.hostid {
            o.hostid = id;
        }
        o.hdgst = self.digests;
        o.ddgst = self.digests;
        o.connect_timeout = Duration::from_millis(self.connect_timeout_ms);
        o.io_timeout = Duration::from_millis(self.io_timeout_ms);
        let ms = |v: Option<u64>| v.map(Duration::from_millis);
        o.kato = ms(self.kato_ms);
        o.reconnect_delay = ms(self.reconnect_delay_ms);
        o.reconnect_delay_max = ms(self.reconnect_delay_max_ms);
        o.ctrl_loss_tmo = ms(self.ctrl_loss_tmo_ms);
        o.fast_io_fail_tmo = ms(self.fast_io_fail_tmo_ms);
        o.disable_sqflow = self.disable_sqflow;
        self.auth.apply(&mut o);
        o
    }
}

/// A subsystem of a target: how to reach it, and its NQN (`identify`; the namespace commands through
/// [`NamespaceArgs`]).
#[derive(ClapArgs, Debug, Clone)]
pub struct SubsystemArgs {
    #[command(flatten)]
    pub host: HostArgs,
    /// Subsystem NQN.
    #[arg(long)]
    pub nqn: String,
}

impl SubsystemArgs {
    /// Connection options for the subsystem, with `nr_io_queues` I/O queues.
    pub fn options(&self, nr_io_queues: u16) -> ConnectOptions {
        let mut o = self.host.options(&self.nqn);
        o.nr_io_queues = nr_io_queues;
        o
    }
}

/// One namespace of a subsystem: what `read`, `write`, `bench`, `resv` and `nbd` work on.
#[derive(ClapArgs, Debug, Clone)]
pub struct NamespaceArgs {
    #[command(flatten)]
    pub subsystem: SubsystemArgs,
    /// Namespace.
    #[arg(long, default_value_t = 1, value_parser = parse_nsid)]
    pub nsid: u32,
}

impl NamespaceArgs {
    /// Connection options for the namespace's subsystem, with `nr_io_queues` I/O queues.
    pub fn options(&self, nr_io_queues: u16) -> ConnectOptions {
        self.subsystem.options(nr_io_queues)
    }

    /// Connect with `o` (from [`NamespaceArgs::options`], adjusted) and open the namespace.
    pub async fn open(&self, o: ConnectOptions) -> anyhow::Result<(Controller, Namespace)> {
        anyhow::ensure!(
            self.subsystem.nqn != holdfast_proto::fabrics::DISCOVERY_NQN,
            "{} is the discovery subsystem, which has no namespaces (`holdfast discover` reads its log)",
            self.subsystem.nqn
        );
        let c = Controller::connect(o).await?;
        let ns = Namespace::open(&c, self.nsid).await?;
        Ok((c, ns))
    }

    /// "namespace N of NQN", as messages name it.
    pub fn describe(&self) -> String {
        format!("namespace {} of {}", self.nsid, self.subsystem.nqn)
    }
}

/// Bytes as lowercase hexadecimal, as identifiers (EUI-64, NGUID, Host Identifier) are printed.
pub fn hex(b: &[u8]) -> String {
    b.iter().map(|x| format!("{x:02x}")).collect()
}

/// The runtime for a command: one worker thread per CPU this process may run on (its affinity mask, so
/// `taskset -c 1 holdfast bench` gets one), or `HOLDFAST_WORKER_THREADS`. With a single CPU the runtime is
/// current-thread: every task runs on the thread that drives the socket, with no cross-thread wake-ups
/// (an eventfd write and a context switch per hand-off when two workers share one core).
pub fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    let threads = std::env::var("HOLDFAST_WORKER_THREADS")
        .ok()
        .and_then(|v| v.parse::<usize>().ok())
        .filter(|n| *n > 0)
        .unwrap_or_else(|| std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1));
    let rt = if threads == 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()?
    } else {
        tokio::runtime::Builder::new_multi_thread().worker_threads(threads).enable_all().build()?
    };
    Ok(rt)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn an_nsid_names_one_namespace() {
        assert_eq!(parse_nsid("1"), Ok(1));
        assert_eq!(parse_nsid("0xFFFFFFFE"), Ok(0xFFFF_FFFE));
        assert!(parse_nsid("0").unwrap_err().contains("names no namespace"));
        assert!(parse_nsid("4294967295").unwrap_err().contains("stands for every namespace"));
        assert!(parse_nsid("4294967296").unwrap_err().contains("is not a namespace ID"));
    }

    #[test]
    fn a_host_alone_gets_the_default_port() {
        for (addr, want) in [
            ("10.0.0.1", "10.0.0.1:8009"),
            ("10.0.0.1:4420", "10.0.0.1:4420"),
            ("::1", "[::1]:8009"),
            ("[::1]", "[::1]:8009"),
            ("[::1]:4421", "[::1]:4421"),
            ("storage1", "storage1:8009"),
            ("storage1:4420", "storage1:4420"),
            ("", ""),
            ("fe80::1%eth0", "fe80::1%eth0"),
        ] {
            assert_eq!(with_default_port(addr, NVME_TCP_DISCOVERY_PORT), want, "{addr}");
        }
    }
}
