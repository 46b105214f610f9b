//! The target's registry: subsystems (including the discovery subsystem), their namespaces and live
//! controllers, the ports, and the state shared between them (discovery generation counter, instance ID,
//! dead associations still draining).

use crate::backend::{delay::DelayWrites, file::FileBackend, ram::RamBackend, AssociationGate, Backend};
use crate::config::{BackendKind, Config, PolicyConfig, SubsystemConfig};
use crate::controller::Controller;
use crate::namespace::Namespace;
use holdfast_proto::fabrics::DISCOVERY_NQN;
use parking_lot::{Mutex, RwLock};
use std::collections::{BTreeMap, HashSet};
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Settings that are not part of the configuration file (command-line, tests).
#[derive(Clone, Debug)]
pub struct TargetSettings {
    /// Hold a reconnecting host's new association until its dead ones have drained (README, No stale writes). Only tests
    /// turn this off, to show the stale write it prevents.
    pub drain: bool,
    /// Test only: delay writes this long before they reach the media...
    pub test_delay_writes: Option<Duration>,
    /// ...every N-th write (1 = all).
    pub test_delay_every: u64,
    /// Test only: every flush of a namespace waits this long first (a slow disk's `fdatasync`).
    pub test_delay_flushes: Option<Duration>,
    /// Adaptive busy polling: after socket activity the runtime keeps polling for this long instead of
    /// sleeping (zero: never spin). See [`holdfast_rt::BusyPoll`].
    pub busy_poll: Duration,
}

impl Default for TargetSettings {
    fn default() -> Self {
        TargetSettings {
            drain: true,
            test_delay_writes: None,
            test_delay_every: 1,
            test_delay_flushes: None,
            busy_poll: Duration::ZERO,
        }
    }
}

/// Counters behind the SMART / Health log.
#[derive(Debug, Default)]
pub struct Stats {
    /// Bytes read by hosts.
    pub bytes_read: AtomicU64,
    /// Bytes written by hosts.
    pub bytes_written: AtomicU64,
    /// Read commands.
    pub read_cmds: AtomicU64,
    /// Write commands.
    pub write_cmds: AtomicU64,
    /// Media and data integrity errors.
    pub media_errors: AtomicU64,
    /// Commands failed, admin and I/O, whatever the status (those of an association that ended, Aborted
    /// SQ Deletion, are not failures): what each controller's Error Information log records, summed.
    pub failed_cmds: AtomicU64,
    /// Flushes of every namespace (shutdown notifications, target stop).
    pub whole_flushes: AtomicU64,
}

/// Who may use a subsystem, and where it is exported.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Access {
    /// Admit any host.
    pub allow_any_host: bool,
    /// Admitted host NQNs.
    pub allowed_hosts: HashSet<String>,
    /// Port IDs it is exported on (empty = all).
    pub ports: Vec<u16>,
}

impl Access {
    /// Who may connect and where, in a line: "any host" or the hosts listed (sorted), and the ports.
    pub fn describe(&self) -> String {
        let hosts = if self.allow_any_host {
            "any host".to_string()
        } else if self.allowed_hosts.is_empty() {
            "no host (allowed_hosts is empty)".to_string()
        } else {
            let mut h: Vec<&str> = self.allowed_hosts.iter().map(String::as_str).collect();
            h.sort_unstable();
            format!("hosts {}", h.join(", "))
        };
        let ports = if self.ports.is_empty() {
            "every port".to_string()
        } else {
            format!("port(s) {}", self.ports.iter().map(u16::to_string).collect::<Vec<_>>().join(", "))
        };
        format!("{hosts}, on {ports}")
    }

    /// Is host `hostnqn` admitted?
    pub fn admits(&self, hostnqn: &str) -> bool {
        self.allow_any_host || self.allowed_hosts.contains(hostnqn)
    }
    /// Is the subsystem exported on port `port_id`?
    pub fn exported_on(&self, port_id: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port_id)
    }
}

/// What the discovery log is built from: the ports, each NVM subsystem's access, and the GENCTR that names
/// this state, published whole ([`Target::discovery_changed`]). A reload changes subsystems, access lists and
/// ports in steps (some awaiting listeners); a log built from them meanwhile would carry the old GENCTR with
/// new entries, which a host reading the log in two commands (header, then entries) takes for one state.
#[derive(Debug, Default)]
pub struct DiscoveryView {
    /// Discovery Log Page GENCTR of this state.
    pub genctr: u64,
    /// The ports served.
    pub ports: Vec<Port>,
    /// Each NVM subsystem's NQN and access, in NQN order.
    pub subsystems: Vec<(String, Access)>,
    /// Other discovery controllers the log refers hosts to.
    pub referrals: Vec<Referral>,
}

/// A referral to another discovery controller ([`crate::config::ReferralConfig`]).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Referral {
    /// Its address.
    pub addr: SocketAddr,
    /// Its port ID there.
    pub portid: u16,
    /// Listed to hosts that came in on these ports (empty: every port).
    pub ports: Vec<u16>,
}

/// The referrals of a (validated) configuration.
fn referrals_of(cfg: &Config) -> Vec<Referral> {
    cfg.referrals
        .iter()
        .filter_map(|r| Some(Referral { addr: r.address.parse().ok()?, portid: r.portid, ports: r.ports.clone() }))
        .collect()
}

/// An NVM subsystem (or the discovery subsystem).
pub struct Subsystem {
    /// Subsystem NQN.
    pub nqn: String,
    /// Serial number.
    pub serial: String,
    /// Model number.
    pub model: String,
    /// True for the discovery subsystem.
    pub is_discovery: bool,
    access: RwLock<Access>,
    /// Namespaces by NSID.
    pub namespaces: RwLock<BTreeMap<u32, Arc<Namespace>>>,
    /// Connection policy.
    pub policy: RwLock<PolicyConfig>,
    /// Incremented whenever the policy changes.
    pub policy_generation: AtomicU64,
    /// Live controllers by CNTLID; None: the CNTLID is handed out to a Connect that is making its controller
    /// ([`Subsystem::alloc_cntlid`], until [`Subsystem::add_controller`]).
    controllers: Mutex<BTreeMap<u16, Option<Weak<Controller>>>>,
    /// Where dynamic CNTLIDs come from.
    cntlids: Mutex<CntlidRange>,
    /// Associations that died with commands still in flight, by (host NQN, host ID). Shared with every
    /// subsystem the target has had under this NQN ([`Target::dead_list`]): one removed by a reload and added
    /// again by another is the same subsystem to a host, on the same media if it names the same files.
    dead: DeadList,
    /// SMART counters.
    pub stats: Stats,
}

/// A dead queue with commands in flight: (host NQN, host ID, its gate).
type DeadQueue = (String, [u8; 16], Arc<AssociationGate>);

/// The dead queues of the subsystems of one NQN.
type DeadList = Arc<Mutex<Vec<DeadQueue>>>;

/// The CNTLIDs a subsystem's controllers get (`cntlid_min..=cntlid_max`, validated by the config), handed out
/// round robin from `next`.
struct CntlidRange {
    next: u16,
    min: u16,
    max: u16,
}

impl CntlidRange {
    fn new(min: u16, max: u16) -> Self {
        CntlidRange { next: min, min, max }
    }
}

/// Lowest CNTLID a dynamic controller gets by default (as nvmet's `attr_cntlid_min`); a subsystem's
/// `cntlid_min` may not go below it.
pub const MIN_CNTLID: u16 = 1;

/// Highest CNTLID a dynamic controller may get (NVMe-oF 1.1 §4.2: 0xFFF0..0xFFFF are reserved).
pub const MAX_CNTLID: u16 = 0xFFEF;

impl Subsystem {
    fn new(nqn: &str, serial: String, model: String, is_discovery: bool) -> Self {
        Subsystem {
            nqn: nqn.to_owned(),
            serial,
            model,
            is_discovery,
            access: RwLock::new(Access { allow_any_host: true, allowed_hosts: HashSet::new(), ports: Vec::new() }),
            namespaces: RwLock::new(BTreeMap::new()),
            policy: RwLock::new(PolicyConfig::default()),
            policy_generation: AtomicU64::new(1),
            controllers: Mutex::new(BTreeMap::new()),
            cntlids: Mutex::new(CntlidRange::new(MIN_CNTLID, MAX_CNTLID)),
            dead: DeadList::default(),
            stats: Stats::default(),
        }
    }

    /// May `hostnqn` connect?
    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        self.access.read().admits(hostnqn)
    }

    /// Who may connect and where, in a line ([`Access::describe`]).
    pub fn describe_access(&self) -> String {
        self.access.read().describe()
    }

    /// Is the subsystem exported on `port_id`?
    pub fn on_port(&self, port_id: u16) -> bool {
        self.access.read().exported_on(port_id)
    }

    /// Make every namespace's completed writes durable (`fdatasync` on a file backend; nothing to do on RAM),
    /// each even after another failed; a failure is logged, and the first is returned. Blocks: from a blocking
    /// thread.
    pub fn flush_namespaces(&self) -> std::io::Result<()> {
        self.stats.whole_flushes.fetch_add(1, Ordering::Relaxed);
        let mut first = Ok(());
        for ns in self.namespaces.read().values() {
            if let Err(e) = ns.backend.flush(&crate::backend::MediaGate::open()) {
                tracing::error!("flush of {} nsid {} failed: {e}", self.nqn, ns.nsid);
                if first.is_ok() {
                    first = Err(e);
                }
            }
        }
        first
    }

    /// Whether any namespace has a backend whose writes may sit in a volatile cache (a file's page cache).
    pub fn has_file_namespaces(&self) -> bool {
        self.file_namespace().is_some()
    }

    /// A namespace whose backend's writes may sit in a volatile cache (a file's page cache), if any: its I/O
    /// threads are where work that flushes them all runs.
    pub fn file_namespace(&self) -> Option<Arc<Namespace>> {
        self.namespaces.read().values().find(|n| n.backend.blocking()).cloned()
    }

    /// A namespace by NSID.
    pub fn namespace(&self, nsid: u32) -> Option<Arc<Namespace>> {
        self.namespaces.read().get(&nsid).cloned()
    }

    /// Allocate a CNTLID not used by a live controller, nor handed out to another Connect still making its
    /// controller: held for the caller until it registers that controller ([`Subsystem::add_controller`]).
    pub fn alloc_cntlid(&self) -> Option<u16> {
        let mut ctrls = self.controllers.lock();
        let mut ids = self.cntlids.lock();
        let (min, max) = (ids.min, ids.max);
        for _ in min..=max {
            let id = ids.next;
            ids.next = if id >= max { min } else { id + 1 };
            if ctrls.get(&id).is_none_or(|w| w.as_ref().is_some_and(|w| w.strong_count() == 0)) {
                ctrls.insert(id, None);
                return Some(id);
            }
        }
        None
    }

    /// Register a live controller (its CNTLID from [`Subsystem::alloc_cntlid`]).
    pub fn add_controller(&self, c: &Arc<Controller>) {
        self.controllers.lock().insert(c.cntlid, Some(Arc::downgrade(c)));
    }

    /// Forget a controller.
    pub fn remove_controller(&self, cntlid: u16) {
        self.controllers.lock().remove(&cntlid);
    }

    /// A live controller by CNTLID.
    pub fn controller(&self, cntlid: u16) -> Option<Arc<Controller>> {
        self.controllers.lock().get(&cntlid).and_then(|w| w.as_ref()?.upgrade())
    }

    /// All live controllers.
    pub fn controllers(&self) -> Vec<Arc<Controller>> {
        self.controllers.lock().values().filter_map(|w| w.as_ref()?.upgrade()).collect()
    }

    /// Remember a dead association whose commands are still in flight (once: the teardown and the queue's
    /// exit both report it).
    pub fn add_dead_association(&self, hostnqn: &str, hostid: [u8; 16], gate: Arc<AssociationGate>) {
        let mut d = self.dead.lock();
        d.retain(|(_, _, g)| g.inflight() > 0);
        if gate.inflight() > 0 && !d.iter().any(|(_, _, g)| Arc::ptr_eq(g, &gate)) {
            d.push((hostnqn.to_owned(), hostid, gate));
        }
    }

    /// Commands of this host's dead associations still in flight.
    pub fn dead_inflight(&self, hostnqn: &str, hostid: &[u8; 16]) -> u64 {
        self.dead_inflight_where(|n, id| n == hostnqn && id == hostid)
    }

    /// Commands of the dead associations of the host with Host Identifier `hostid` (any host NQN) still in
    /// flight.
    pub fn dead_inflight_of(&self, hostid: &[u8; 16]) -> u64 {
        self.dead_inflight_where(|_, id| id == hostid)
    }

    /// Commands in flight of the dead associations whose (host NQN, Host Identifier) `which` picks; the
    /// drained ones are forgotten.
    fn dead_inflight_where(&self, which: impl Fn(&str, &[u8; 16]) -> bool) -> u64 {
        let mut d = self.dead.lock();
        d.retain(|(_, _, g)| g.inflight() > 0);
        d.iter().filter(|(n, id, _)| which(n, id)).map(|(_, _, g)| g.inflight()).sum()
    }

    /// Wait (at most `limit`) until every command of this host's dead associations has finished or been
    /// dropped before touching media. True if drained.
    pub async fn drain_host(&self, hostnqn: &str, hostid: &[u8; 16], limit: Duration) -> bool {
        let deadline = Instant::now() + limit;
        loop {
            if self.dead_inflight(hostnqn, hostid) == 0 {
                return true;
            }
            if Instant::now() >= deadline {
                return false;
            }
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }
}

/// What a reload changed.
#[derive(Debug, Default)]
pub struct ReloadSummary {
    /// One line per change.
    pub notes: Vec<String>,
    /// What could not be applied although the rest was (a moved port whose new address could not be bound).
    pub errors: Vec<String>,
    /// The discovery generation counter afterwards.
    pub genctr: u64,
}

/// A listener as the discovery log describes it.
#[derive(Clone, Debug)]
pub struct Port {
    /// PORTID.
    pub id: u16,
    /// The address it listens on.
    pub addr: SocketAddr,
}

/// The first GENCTR of a run: milliseconds since the Unix epoch (at least 1). Each run starts above every value
/// a run before it reached, unless that run made more configuration changes than milliseconds passed (each
/// is a reload) or the clock was set back; NVMe-oF §5.3 asks only that GENCTR change with the log.
fn initial_genctr() -> u64 {
    std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(1, |d| d.as_millis() as u64).max(1)
}

/// The files of a configuration's file namespaces as they were before it was built: dropped without
/// [`FilesUndo::keep`] (the build failed), each file the build created is removed and each it grew is cut back
/// to its length, so that a refused start or reload leaves the disk as it found it.
struct FilesUndo(Vec<(PathBuf, Option<u64>)>);

impl FilesUndo {
    fn snapshot(cfg: &Config) -> FilesUndo {
        // Each path resolved (its directory, then its name; a symbolic link to the file followed): what is
        // removed or cut back is the file the build made, not a link an operator made to it.
        let resolve = |p: &Path| -> PathBuf {
            if let Ok(c) = std::fs::canonicalize(p) {
                return c;
            }
            let target = std::fs::read_link(p).ok().map(|t| p.parent().unwrap_or(Path::new("")).join(t));
            crate::config::resolved_to_be(target.as_deref().unwrap_or(p))
        };
        let paths = cfg.subsystems.iter().flat_map(|s| &s.namespaces).filter_map(|n| n.path.as_deref().map(resolve));
        FilesUndo(
            paths
                // A file's length, or none yet; anything else there (a block device) is never created or
                // resized: left out.
                .filter_map(|p| match std::fs::metadata(&p) {
                    Ok(m) if m.is_file() => Some((p, Some(m.len()))),
                    Ok(_) => None,
                    Err(_) => Some((p, None)),
                })
                .collect(),
        )
    }

    /// The build succeeded: leave the files as they are now.
    fn keep(mut self) {
        self.0.clear();
    }
}

impl Drop for FilesUndo {
    fn drop(&mut self) {
        for (p, before) in self.0.drain(..) {
            let Ok(now) = std::fs::metadata(&p) else { continue };
            match before {
                None if now.is_file() => {
                    if let Err(e) = std::fs::remove_file(&p) {
                        tracing::warn!(
                            "{}: created for a configuration that failed, and not removed: {e}",
                            p.display()
                        );
                    }
                }
                Some(len) if now.len() > len => {
                    let cut = std::fs::OpenOptions::new().write(true).open(&p).and_then(|f| f.set_len(len));
                    if let Err(e) = cut {
                        tracing::warn!("{}: grown for a configuration that failed, and not cut back: {e}", p.display());
                    }
                }
                _ => {}
            }
        }
    }
}

/// Do `a` and `b` name the same file (the same inode, however spelled)? Two RAM namespaces (no paths) are
/// "the same" here: neither has a file.
fn same_file(a: Option<&Path>, b: Option<&Path>) -> bool {
    match (a, b) {
        (None, None) => true,
        (Some(a), Some(b)) => match (file_key(a), file_key(b)) {
            (Some(x), Some(y)) => x == y,
            _ => a == b,
        },
        _ => false,
    }
}

/// A retired file namespace's media gate, by its file ([`file_key`]).
type RetiredGate = ((u64, u64), Arc<crate::backend::AssociationGate>);

/// The key a file is known by across reloads: (device, inode).
fn file_key(p: &Path) -> Option<(u64, u64)> {
    use std::os::unix::fs::MetadataExt;
    std::fs::metadata(p).ok().map(|m| (m.dev(), m.ino()))
}

/// Make what retired namespace `n` acknowledged durable, on a thread of its own once its writes still on their
/// way have landed (at most [`RETIRE_WAIT`]): no host can Flush it any more (its NSID is gone, or another
/// namespace's), and the write cache may still hold its acknowledged writes. The reload does not wait for it.
fn flush_once_drained(n: Arc<Namespace>) -> Option<std::thread::JoinHandle<bool>> {
    let (nsid, what) = (n.nsid, n.backend.describe());
    let spawned = std::thread::Builder::new().name(format!("hf-retired-ns{nsid}")).spawn(move || {
        // Those that entered after the retirement are refused before the media: the earlier ones are the wait.
        if let Some(g) = &n.media {
            g.wait_for_earlier_until(Some(std::time::Instant::now() + RETIRE_WAIT));
        }
        match n.backend.flush(&crate::backend::MediaGate::open()) {
            Ok(()) => {
                tracing::debug!(nsid = n.nsid, "retired namespace flushed: {}", n.backend.describe());
                true
            }
            Err(e) => {
                tracing::error!(nsid = n.nsid, "flush of the retired namespace {} failed: {e}", n.backend.describe());
                false
            }
        }
    });
    match spawned {
        Ok(t) => Some(t),
        Err(e) => {
            tracing::error!(nsid, "no thread to flush the retired namespace {what}: {e}");
            None
        }
    }
}

/// How long a write of a namespace that took over a retired namespace's file waits for the retired writes
/// still at the media ([`Namespace::retire`]) before it is refused (retryable): a stuck file system holds
/// that namespace's writes, never the reload or the other connections.
pub const RETIRE_WAIT: std::time::Duration = std::time::Duration::from_secs(30);

/// The whole target: every subsystem and port.
pub struct Target {
    subsystems: RwLock<BTreeMap<String, Arc<Subsystem>>>,
    /// The discovery subsystem.
    pub discovery: Arc<Subsystem>,
    /// Ports.
    pub ports: RwLock<Vec<Port>>,
    /// Discovery log generation counter: bumped on every configuration change. It starts at the wall-clock
    /// time in milliseconds ([`initial_genctr`]), so a restarted target does not repeat a GENCTR its previous
    /// run gave to other contents (a host caching the log by GENCTR would keep a stale one).
    pub genctr: AtomicU64,
    /// What discovery reports, as last published ([`Target::publish_discovery_view`]).
    pub discovery_view: RwLock<Arc<DiscoveryView>>,
    /// Changes at every start: a host can tell a restart from a network blip.
    pub instance_id: u64,
    /// Non-configuration settings.
    pub settings: TargetSettings,
    /// When the target started, on [`holdfast_rt::coarse_ms`]'s clock (keep-alive clocks count from here).
    pub epoch_ms: u64,
    /// An announced planned restart: hosts keep I/O queued at least this long (0 = none).
    pub planned_downtime_ms: std::sync::atomic::AtomicU32,
    /// The generation of the policy page on discovery controllers, which serve the policy of a subsystem
    /// they list ([`crate::cmd::log_page::policy_of`]): moved whenever what any discovery controller serves
    /// changes, another subsystem's policy after a reload included (each subsystem's own generation counts
    /// that subsystem's changes only, so it could stand still, or go back, across such a switch).
    pub discovery_policy_generation: AtomicU64,
    /// The announcement in force ([`crate::control::announce_restart`]): its number (each announcement or
    /// withdrawal takes the next, so a lapse timer knows whether its announcement still stands), and when it
    /// lapses, on [`Target::now_ms`]'s clock (0: none).
    pub planned_restart: Mutex<crate::control::PlannedRestart>,
    /// Busy polling (None: off); the server starts its spinner.
    pub busy_poll: Option<Arc<holdfast_rt::BusyPoll>>,
    /// Connections waiting for a Connect, limited in all and per address.
    pub unbound: Arc<crate::transport::admission::Unbound>,
    /// The dead associations of each NQN's subsystem, outliving the subsystem ([`dead_list`]).
    dead_lists: Mutex<BTreeMap<String, DeadList>>,
    /// DH-HMAC-CHAP keys by host NQN (`[[host]]`): read at each Connect, replaced whole by a reload.
    host_keys: RwLock<Arc<HostKeyMap>>,
    /// Asymmetric Namespace Access: each port's group states.
    pub ana: crate::ana::Ana,
    /// Referrals to other discovery controllers (`[[referral]]`), replaced whole by a reload.
    referrals: RwLock<Vec<Referral>>,
    /// The media gates of file namespaces a reload retired while writes of theirs were still in flight, by file
    /// ([`file_key`]): a namespace served on that file later (this reload or another) waits for them.
    retired: Mutex<Vec<RetiredGate>>,
    /// The threads flushing retired namespaces ([`flush_once_drained`]), finished ones dropped at each reload:
    /// [`Target::join_retired_flushes`] waits for them at stop.
    retired_flushes: Mutex<Vec<std::thread::JoinHandle<bool>>>,
}

/// DH-HMAC-CHAP keys by host NQN.
pub type HostKeyMap = std::collections::HashMap<String, Arc<crate::config::HostKeys>>;

/// The keys of every `[[host]]` (validated: [`Config::validate`] refused any that does not parse).
fn host_keys_of(cfg: &Config) -> HostKeyMap {
    cfg.hosts.iter().filter_map(|h| Some((h.nqn.clone(), Arc::new(h.keys().ok()?)))).collect()
}

/// The list of dead associations of the subsystem `nqn`, the one its earlier subsystems had if any still holds
/// commands in flight (README, No stale writes: a subsystem removed by a reload, its controllers torn down while a write was
/// on its way to the media, then added again, must still hold its hosts' new associations until that write is
/// done). Lists with nothing in flight and no subsystem are forgotten here.
fn dead_list(lists: &Mutex<BTreeMap<String, DeadList>>, nqn: &str) -> DeadList {
    let mut lists = lists.lock();
    lists.retain(|_, l| Arc::strong_count(l) > 1 || l.lock().iter().any(|(_, _, g)| g.inflight() > 0));
    lists.entry(nqn.to_owned()).or_default().clone()
}

/// Open namespace `n`'s backend; errors name its key, `key` (`subsystem[i].namespace[j]`).
fn open_backend(
    n: &crate::config::NamespaceConfig,
    settings: &TargetSettings,
    key: &str,
) -> anyhow::Result<Arc<dyn Backend>> {
    let b: Arc<dyn Backend> = match n.backend {
        BackendKind::Ram => Arc::new(RamBackend::new(n.size_bytes().unwrap_or(0))),
        BackendKind::File => {
            let path = n.path.as_ref().ok_or_else(|| anyhow::anyhow!("{key}.path: a file namespace needs one"))?;
            let open = if n.read_only { FileBackend::open_read_only } else { FileBackend::open };
            Arc::new(open(path, n.size_bytes()).map_err(|e| {
                // A size the file or device cannot give (a read-only file is never grown, a device never):
                // `size_mib` is what is wrong, and the file opened.
                if e.kind() == std::io::ErrorKind::InvalidInput {
                    return anyhow::anyhow!("{key}.size_mib: {}: {e}", path.display());
                }
                let hint = match e.raw_os_error() {
                    Some(libc::EROFS | libc::EACCES | libc::EPERM) if !n.read_only => {
                        " (read_only = true exports it write protected)"
                    }
                    _ => "",
                };
                anyhow::anyhow!("{key}.path: cannot open {}: {e}{hint}", path.display())
            })?)
        }
    };
    // A file (or device) served at its own length may end in part of a block, which no command can reach.
    let bs = u64::from(n.block_size.max(1));
    if let (BackendKind::File, Some(path)) = (n.backend, &n.path) {
        let size = b.size();
        anyhow::ensure!(
            size >= bs,
            "{key}.path: {} is {size} bytes, less than one {bs}-byte block: no block to serve",
            path.display()
        );
        if !size.is_multiple_of(bs) {
            tracing::warn!(
                path = %path.display(),
                "{key}: {} is {size} bytes, not a whole number of {bs}-byte blocks: its last {} bytes are not exported",
                path.display(),
                size % bs
            );
        }
    }
    Ok(match (settings.test_delay_writes, settings.test_delay_flushes) {
        (None, None) => b,
        (writes, flushes) => {
            Arc::new(DelayWrites::new(b, writes.unwrap_or_default(), settings.test_delay_every, flushes))
        }
    })
}

/// What changed between two access lists, in a line: hosts allowed or no longer, any host, the ports.
fn access_change(old: &Access, new: &Access) -> String {
    let mut parts = Vec::new();
    if old.allow_any_host != new.allow_any_host {
        parts.push(if new.allow_any_host {
            "any host allowed".to_string()
        } else {
            "only listed hosts allowed".to_string()
        });
    }
    // The hosts in `a` and not in `b`, sorted, as a list.
    let beyond = |a: &HashSet<String>, b: &HashSet<String>| {
        let mut v: Vec<&str> = a.difference(b).map(String::as_str).collect();
        v.sort_unstable();
        v.join(", ")
    };
    for (what, hosts) in [
        ("hosts allowed", beyond(&new.allowed_hosts, &old.allowed_hosts)),
        ("hosts no longer allowed", beyond(&old.allowed_hosts, &new.allowed_hosts)),
    ] {
        if !hosts.is_empty() {
            parts.push(format!("{what}: {hosts}"));
        }
    }
    if old.ports != new.ports {
        let list = |p: &[u16]| if p.is_empty() { "all".to_string() } else { format!("{p:?}") };
        parts.push(format!("exported on ports {} (was {})", list(&new.ports), list(&old.ports)));
    }
    format!("access updated: {}", parts.join("; "))
}

fn access_of(s: &SubsystemConfig) -> Access {
    Access {
        allow_any_host: s.allow_any_host,
        allowed_hosts: s.allowed_hosts.iter().cloned().collect(),
        ports: s.ports.clone(),
    }
}

/// A reload's change of one namespace of a subsystem: replaced or added (with where its reservations are to
/// live: [`reservation_home`]), or removed (None).
type NamespaceChange = (Arc<Subsystem>, u32, Option<(Arc<Namespace>, Option<PathBuf>)>);

/// Where namespace `n` keeps its reservations while Persist Through Power Loss is on: beside its data, for a
/// namespace on a regular file (a block device has no place for them, RAM no lasting one).
fn reservation_home(n: &crate::config::NamespaceConfig) -> Option<&Path> {
    n.path.as_deref().filter(|p| n.backend == crate::config::BackendKind::File && p.is_file())
}

/// Namespace `n` of `s`, opened; with the reservations `carry` of the namespace it replaces under the same
/// identifiers (a reload: [`Reservations::rehome`] moves them once it applies), else its own (from its
/// reservation file, if it has one).
///
/// [`Reservations::rehome`]: crate::cmd::reservation::Reservations::rehome
fn build_namespace(
    s: &SubsystemConfig,
    n: &crate::config::NamespaceConfig,
    settings: &TargetSettings,
    key: &str,
    carry: Option<Arc<crate::cmd::reservation::Reservations>>,
) -> anyhow::Result<Namespace> {
    let backend = open_backend(n, settings, key)?;
    if backend.size() < n.block_size as u64 {
        let what = if n.size_mib.is_some() { "size_mib" } else { "path" };
        anyhow::bail!(
            "{key}.{what}: namespace {} of {} has {} bytes, less than one block ({})",
            n.nsid,
            s.nqn,
            backend.size(),
            n.block_size
        );
    }
    let ids = n.ids(&s.nqn);
    let pr = match (carry, reservation_home(n)) {
        (Some(pr), _) => Some(pr),
        (None, Some(p)) => Some(Arc::new(
            crate::cmd::reservation::Reservations::persistable(p, ids.nguid)
                .map_err(|e| anyhow::anyhow!("{key}.path: {e}"))?,
        )),
        (None, None) => None,
    };
    let mut ns = Namespace::new(n.nsid, n.block_size, backend, ids);
    ns.read_only = n.read_only;
    *ns.ana_group.get_mut() = n.ana_group;
    if let Some(pr) = pr {
        ns.pr = pr;
    }
    Ok(ns)
}

/// Subsystem `s`, `subsystem[i]` in the configuration, with its namespaces opened; `dead` is where the
/// dead associations of its NQN are kept ([`Target::dead_list`]).
fn build_subsystem(
    i: usize,
    s: &SubsystemConfig,
    settings: &TargetSettings,
    dead: DeadList,
) -> anyhow::Result<Subsystem> {
    let serial = s.serial.clone().unwrap_or_else(|| crate::config::derived_serial(&s.nqn));
    let model = s.model.clone().unwrap_or_else(|| "holdfast".into());
    let mut sub = Subsystem::new(&s.nqn, serial, model, false);
    sub.dead = dead;
    *sub.access.get_mut() = access_of(s);
    *sub.policy.get_mut() = s.policy.clone();
    *sub.cntlids.get_mut() = CntlidRange::new(s.cntlid_min, s.cntlid_max);
    for (j, n) in s.namespaces.iter().enumerate() {
        let ns = build_namespace(s, n, settings, &format!("subsystem[{i}].namespace[{j}]"), None)?;
        sub.namespaces.get_mut().insert(n.nsid, Arc::new(ns));
    }
    Ok(sub)
}

impl Target {
    /// Build the target from a validated configuration (opens every backend).
    pub fn new(cfg: &Config, settings: TargetSettings) -> anyhow::Result<Arc<Target>> {
        // A start that fails (a later namespace's file cannot be opened) leaves no file created or grown.
        let files = FilesUndo::snapshot(cfg);
        let mut subs = BTreeMap::new();
        let dead_lists = Mutex::new(BTreeMap::new());
        for (i, s) in cfg.subsystems.iter().enumerate() {
            let dead = dead_list(&dead_lists, &s.nqn);
            subs.insert(s.nqn.clone(), Arc::new(build_subsystem(i, s, &settings, dead)?));
        }
        let disc = Subsystem::new(
            DISCOVERY_NQN,
            crate::config::derived_serial(DISCOVERY_NQN),
            "holdfast discovery".into(),
            true,
        );
        let ports = cfg
            .ports
            .iter()
            .map(|p| Ok(Port { id: p.id, addr: p.listen.parse()? }))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let target = Arc::new(Target {
            subsystems: RwLock::new(subs),
            discovery: Arc::new(disc),
            ports: RwLock::new(ports),
            genctr: AtomicU64::new(initial_genctr()),
            discovery_view: RwLock::default(),
            instance_id: rand::random::<u64>() | 1,
            epoch_ms: holdfast_rt::coarse_ms(),
            planned_downtime_ms: std::sync::atomic::AtomicU32::new(0),
            discovery_policy_generation: AtomicU64::new(1),
            planned_restart: Mutex::default(),
            busy_poll: holdfast_rt::BusyPoll::new(settings.busy_poll),
            unbound: Arc::default(),
            dead_lists,
            host_keys: RwLock::new(Arc::new(host_keys_of(cfg))),
            ana: crate::ana::Ana::new(cfg),
            referrals: RwLock::new(referrals_of(cfg)),
            retired: Mutex::default(),
            retired_flushes: Mutex::default(),
            settings,
        });
        files.keep();
        target.publish_discovery_view();
        Ok(target)
    }

    /// Publish what discovery reports now (ports, subsystems, access, GENCTR) as one state. Only where GENCTR
    /// moves ([`Target::discovery_changed`]) or the ports are first bound ([`crate::server::Server::start`]).
    pub fn publish_discovery_view(&self) {
        let view = DiscoveryView {
            genctr: self.genctr.load(Ordering::SeqCst),
            ports: self.ports.read().clone(),
            subsystems: self.subsystems().iter().map(|s| (s.nqn.clone(), s.access.read().clone())).collect(),
            referrals: self.referrals.read().clone(),
        };
        *self.discovery_view.write() = Arc::new(view);
    }

    /// A subsystem by NQN (the discovery NQN gives the discovery subsystem).
    pub fn subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        if nqn == DISCOVERY_NQN {
            return Some(self.discovery.clone());
        }
        self.subsystems.read().get(nqn).cloned()
    }

    /// The DH-HMAC-CHAP keys host `hostnqn` must authenticate with on `subsys`, if it must: the subsystem
    /// lists the host (a subsystem with `allow_any_host` authenticates no one, as Linux nvmet) and the host
    /// has keys. Discovery controllers never ask.
    pub fn auth_keys(&self, subsys: &Subsystem, hostnqn: &str) -> Option<Arc<crate::config::HostKeys>> {
        if subsys.is_discovery {
            return None;
        }
        let listed = {
            let a = subsys.access.read();
            !a.allow_any_host && a.allowed_hosts.contains(hostnqn)
        };
        if !listed {
            return None;
        }
        self.host_keys.read().get(hostnqn).cloned()
    }

    /// Wait (a blocking thread's wait) for the flushes of retired namespaces still under way: false if one
    /// failed, or found no thread to run on.
    pub fn join_retired_flushes(&self) -> bool {
        let flushes: Vec<_> = self.retired_flushes.lock().drain(..).collect();
        flushes.into_iter().map(|t| t.join().unwrap_or(false)).filter(|ok| !ok).count() == 0
    }

    /// Every NVM subsystem.
    pub fn subsystems(&self) -> Vec<Arc<Subsystem>> {
        self.subsystems.read().values().cloned().collect()
    }

    /// Milliseconds since the target started, to within a clock tick (a few ms): read for every command.
    pub fn now_ms(&self) -> u64 {
        holdfast_rt::coarse_ms().saturating_sub(self.epoch_ms)
    }

    /// Record a configuration change: discovery controllers see a new GENCTR.
    pub fn bump_genctr(&self) {
        self.genctr.fetch_add(1, Ordering::SeqCst);
    }

    /// What discovery reports changed: a new GENCTR, and a Discovery Log Page Change notice to every
    /// discovery controller that asked for it and whose host's log is not what it was.
    pub fn discovery_changed(&self) {
        let before = self.discovery_view.read().clone();
        self.bump_genctr();
        self.publish_discovery_view();
        let after = self.discovery_view.read().clone();
        for c in self.discovery.controllers() {
            if crate::cmd::discovery::log_changed_for(&c, &before, &after) {
                c.discovery_changed();
            }
        }
    }

    /// After a reload: the discovery controllers whose policy page changed (another subsystem's policy, that
    /// subsystem's changed, or its namespaces' volatility) get a policy-changed notice, and the discovery
    /// controllers' generation moves once for all of them.
    fn discovery_policies_changed(&self, before: Vec<(Arc<Controller>, holdfast_proto::policy::ConnectionPolicy)>) {
        let changed: Vec<_> = before
            .into_iter()
            .filter(|(c, was)| {
                let now = crate::cmd::log_page::policy_of(c);
                holdfast_proto::policy::ConnectionPolicy { generation: was.generation, ..now } != *was
            })
            .collect();
        if changed.is_empty() {
            return;
        }
        self.discovery_policy_generation.fetch_add(1, Ordering::SeqCst);
        for (c, _) in changed {
            c.raise_policy_changed();
        }
    }

    /// Apply a new configuration to the running target (SIGHUP): subsystems and namespaces are added,
    /// removed or replaced, access lists and policies updated. Controllers of a subsystem whose namespaces
    /// changed get a Namespace Attribute Changed notice; if what discovery reports changed, GENCTR moves
    /// and discovery controllers get a Discovery Log Page Change notice. Ports are the running server's
    /// business ([`crate::server::Server::reload`]).
    pub fn reload(&self, cfg: &Config) -> anyhow::Result<ReloadSummary> {
        let (mut summary, discovery_changed) = self.reload_quiet(cfg)?;
        if discovery_changed {
            self.discovery_changed();
            summary.genctr = self.genctr.load(Ordering::SeqCst);
        }
        Ok(summary)
    }

    /// [`Target::reload`] without the discovery change notice: returns whether discovery's view changed,
    /// for a caller that changes more (ports) and raises one notice for all of it.
    pub fn reload_quiet(&self, cfg: &Config) -> anyhow::Result<(ReloadSummary, bool)> {
        let mut summary = ReloadSummary::default();
        // What each discovery controller serves as the policy now: compared with what it serves once the
        // reload is applied ([`Target::discovery_policies_changed`]).
        let disc_policies: Vec<_> = self
            .discovery
            .controllers()
            .into_iter()
            .map(|c| {
                let p = crate::cmd::log_page::policy_of(&c);
                (c, p)
            })
            .collect();
        // Build everything new first, so that a backend that fails to open changes nothing: the files the
        // build created or grew are put back as they were if it fails ([`FilesUndo`]).
        let files = FilesUndo::snapshot(cfg);
        let mut fresh: BTreeMap<String, Subsystem> = BTreeMap::new();
        let mut ns_new: Vec<NamespaceChange> = Vec::new();
        // Namespaces kept as they are but moved to another ANA group: (subsystem, namespace, new group).
        let mut regrouped: Vec<(Arc<Subsystem>, Arc<Namespace>, u32)> = Vec::new();
        let current = self.subsystems.read().clone();
        for (i, s) in cfg.subsystems.iter().enumerate() {
            match current.get(&s.nqn) {
                None => {
                    let dead = dead_list(&self.dead_lists, &s.nqn);
                    fresh.insert(s.nqn.clone(), build_subsystem(i, s, &self.settings, dead)?);
                }
                Some(old) => {
                    let have = old.namespaces.read().clone();
                    for (j, n) in s.namespaces.iter().enumerate() {
                        let same = have.get(&n.nsid).is_some_and(|o| {
                            o.block_size == n.block_size
                                && o.read_only == n.read_only
                                && o.ids == n.ids(&s.nqn)
                                && n.size_bytes().is_none_or(|b| o.backend.size() == b)
                                // The same file (or RAM, which has none). Not a substring of the old
                                // description: a RAM namespace's empty path is in every one, and a path that is a
                                // prefix of the old (`vol.img` for `vol.img.old`) names another file.
                                && o.backend.path() == n.path.as_deref()
                        });
                        if !same {
                            let key = format!("subsystem[{i}].namespace[{j}]");
                            // The same namespace to hosts (its identifiers): its reservations go on, shared.
                            let carry = have.get(&n.nsid).filter(|o| o.ids == n.ids(&s.nqn)).map(|o| o.pr.clone());
                            let ns = build_namespace(s, n, &self.settings, &key, carry)?;
                            let home = reservation_home(n).map(Path::to_path_buf);
                            ns_new.push((old.clone(), n.nsid, Some((Arc::new(ns), home))));
                        } else if let Some(o) = have.get(&n.nsid).filter(|o| o.ana_group() != n.ana_group) {
                            regrouped.push((old.clone(), o.clone(), n.ana_group));
                        }
                    }
                    for nsid in have.keys().filter(|k| !s.namespaces.iter().any(|n| n.nsid == **k)) {
                        ns_new.push((old.clone(), *nsid, None));
                    }
                }
            }
        }
        files.keep();
        // Apply. First the file namespaces this reload removes or replaces (whole subsystems' too) are retired:
        // their writes not yet at the media refused (retryable); the namespaces that now serve their files (by
        // another NSID or subsystem, or anew) wait, before each write, for those already at the media. Without
        // it a write accepted there could land after a newer one written through the new one.
        {
            let subs = self.subsystems.read();
            let mut retiring: Vec<Arc<Namespace>> = ns_new
                .iter()
                .filter_map(|(sub, nsid, _)| sub.namespaces.read().get(nsid).cloned())
                .filter(|n| n.media.is_some())
                .collect();
            for (nqn, s) in subs.iter() {
                if !cfg.subsystems.iter().any(|c| &c.nqn == nqn) {
                    retiring.extend(s.namespaces.read().values().filter(|n| n.media.is_some()).cloned());
                }
            }
            drop(subs);
            let mut retired = self.retired.lock();
            // Those whose last write has landed are done with.
            retired.retain(|(_, g)| g.inflight() > 0);
            let mut flushes = self.retired_flushes.lock();
            flushes.retain(|t| !t.is_finished());
            for n in &retiring {
                n.retire();
                if let (Some(key), Some(g)) = (n.backend.path().and_then(file_key), &n.media) {
                    retired.push((key, g.clone()));
                }
                flushes.extend(flush_once_drained(n.clone()));
            }
            drop(flushes);
            // Every namespace this reload starts serving on a file waits for the retired writes to that file.
            let fresh_ns = fresh.values().flat_map(|s| s.namespaces.read().values().cloned().collect::<Vec<_>>());
            let replaced_ns = ns_new.iter().filter_map(|(_, _, n)| n.as_ref().map(|(n, _)| n.clone()));
            for n in fresh_ns.chain(replaced_ns) {
                let (Some(key), Some(g)) = (n.backend.path().and_then(file_key), &n.media) else { continue };
                let before: Vec<_> = retired.iter().filter(|(k, _)| *k == key).map(|(_, g)| g.clone()).collect();
                if !before.is_empty() {
                    g.set_after(before);
                }
            }
        }
        let mut discovery_changed = false;
        let referrals = referrals_of(cfg);
        if *self.referrals.read() != referrals {
            let list: Vec<String> = referrals.iter().map(|r| format!("{} (port ID {})", r.addr, r.portid)).collect();
            summary.notes.push(if list.is_empty() {
                "referrals: none".to_string()
            } else {
                format!("referrals: {}", list.join(", "))
            });
            *self.referrals.write() = referrals;
            discovery_changed = true;
        }
        {
            let mut subs = self.subsystems.write();
            for (nqn, s) in fresh {
                summary.notes.push(format!("subsystem {nqn} added"));
                subs.insert(nqn, Arc::new(s));
                discovery_changed = true;
            }
            let gone: Vec<String> =
                subs.keys().filter(|k| !cfg.subsystems.iter().any(|s| &s.nqn == *k)).cloned().collect();
            for nqn in gone {
                if let Some(s) = subs.remove(&nqn) {
                    for c in s.controllers() {
                        c.teardown("subsystem removed from the configuration");
                    }
                }
                summary.notes.push(format!("subsystem {nqn} removed"));
                discovery_changed = true;
            }
        }
        let mut changed: BTreeMap<String, (Arc<Subsystem>, Vec<u32>)> = BTreeMap::new();
        for (sub, nsid, ns) in ns_new {
            let mut map = sub.namespaces.write();
            match ns {
                Some((ns, home)) => {
                    let (what, volatile) = (ns.backend.describe(), ns.backend.volatile());
                    // The same namespace to hosts (its identifiers): their registrations and reservation go on
                    // (shared with the namespace it replaces), kept where this one keeps them.
                    let same_ids = map.get(&nsid).is_some_and(|o| o.ids == ns.ids);
                    if same_ids {
                        let kept = ns.pr.rehome(home.as_deref());
                        if !ns.pr.is_empty() {
                            summary.notes.push(format!("{} nsid {nsid}: reservations kept: {kept}", sub.nqn));
                        }
                    }
                    let new_path = ns.backend.path().map(Path::to_path_buf);
                    summary.notes.push(match map.insert(nsid, ns) {
                        None => format!("{} nsid {nsid} added: {what}", sub.nqn),
                        // Other identifiers: another namespace to hosts (the Linux host drops the old one).
                        Some(_) if !same_ids => {
                            format!("{} nsid {nsid} replaced by another namespace (new identifiers): {what}", sub.nqn)
                        }
                        // Same NSID and identifiers, other contents: hosts cannot tell (a Linux host keeps its
                        // page cache and a mounted file system on it). A warning, with what to do.
                        Some(_) if volatile => {
                            tracing::warn!(
                                subsys = %sub.nqn, nsid,
                                "RAM namespace replaced under the same identifiers: its contents start empty, and \
                                 hosts see the same disk (give it new identifiers, uuid/nguid/eui64, to have them \
                                 see another)"
                            );
                            format!(
                                "{} nsid {nsid} replaced: {what}, whose contents start empty (a RAM namespace is not \
                                 resized in place)",
                                sub.nqn
                            )
                        }
                        Some(old) if !same_file(old.backend.path(), new_path.as_deref()) => {
                            tracing::warn!(
                                subsys = %sub.nqn, nsid,
                                "namespace now on another file ({what}) under the same identifiers: hosts see the \
                                 same disk (give it new identifiers, uuid/nguid/eui64, if its data is another's)"
                            );
                            format!("{} nsid {nsid} replaced: now {what}, same identifiers", sub.nqn)
                        }
                        Some(_) => format!("{} nsid {nsid} replaced: {what}", sub.nqn),
                    });
                }
                None => {
                    summary.notes.push(format!("{} nsid {nsid} removed", sub.nqn));
                    map.remove(&nsid);
                }
            }
            changed.entry(sub.nqn.clone()).or_insert_with(|| (sub.clone(), Vec::new())).1.push(nsid);
        }
        for s in &cfg.subsystems {
            if let Some(sub) = self.subsystem(&s.nqn) {
                let a = access_of(s);
                if *sub.access.read() != a {
                    let old = std::mem::replace(&mut *sub.access.write(), a.clone());
                    summary.notes.push(format!("{}: {}", s.nqn, access_change(&old, &a)));
                    // A host taken off the list: its live associations go on (below), which the operator may
                    // not expect: named, with them.
                    for h in old.allowed_hosts.iter().filter(|h| !a.admits(h)) {
                        let live: Vec<String> = sub
                            .controllers()
                            .iter()
                            .filter(|c| &c.hostnqn == h && sub.on_port(c.port_id))
                            .map(|c| c.cntlid.to_string())
                            .collect();
                        if !live.is_empty() {
                            summary.notes.push(format!(
                                "{}: host {h} is no longer allowed; its association(s) (CNTLID {}) go on until they \
                                 end (target-ctl disconnect --host ends them): it cannot connect again",
                                s.nqn,
                                live.join(", ")
                            ));
                        }
                    }
                    discovery_changed = true;
                    // Associations through a port the subsystem is no longer exported on end, as when Linux
                    // nvmet unlinks a subsystem from a port. (A host taken off the list keeps its association
                    // until it ends, as on nvmet: the list is checked at Connect.)
                    for c in sub.controllers() {
                        if !sub.on_port(c.port_id) {
                            c.teardown("subsystem no longer exported on this port");
                        }
                    }
                }
                {
                    let mut ids = sub.cntlids.lock();
                    if (ids.min, ids.max) != (s.cntlid_min, s.cntlid_max) {
                        *ids = CntlidRange::new(s.cntlid_min, s.cntlid_max);
                        summary.notes.push(format!(
                            "{}: new controllers get CNTLIDs {}..={}",
                            s.nqn, s.cntlid_min, s.cntlid_max
                        ));
                    }
                }
                // A subsystem's serial and model number are part of its identity to hosts (the Linux host
                // takes a controller with another serial for another subsystem): kept while it runs, and said.
                let serial = s.serial.clone().unwrap_or_else(|| crate::config::derived_serial(&s.nqn));
                let model = s.model.clone().unwrap_or_else(|| "holdfast".into());
                if serial != sub.serial || model != sub.model {
                    summary.errors.push(format!(
                        "{}: serial and model stay \"{}\" / \"{}\" until the target restarts (a host connected \
                         would take another for another subsystem)",
                        s.nqn, sub.serial, sub.model
                    ));
                }
                if *sub.policy.read() != s.policy {
                    *sub.policy.write() = s.policy.clone();
                    sub.policy_generation.fetch_add(1, Ordering::SeqCst);
                    summary.notes.push(format!("{}: connection policy updated", s.nqn));
                    // (The discovery controllers that serve this subsystem's policy are told at the end.)
                    for c in sub.controllers() {
                        c.raise_policy_changed();
                    }
                }
            }
        }
        for (sub, nsids) in changed.values() {
            for c in sub.controllers() {
                c.namespaces_changed(nsids);
            }
        }
        // ANA: the log page changes with the namespaces it lists, and each controller behind a port whose
        // states changed, or of a subsystem whose namespace changed group, gets an ANA Change notice.
        if !changed.is_empty() || !regrouped.is_empty() {
            self.ana.membership_changed();
        }
        let mut ana_notice: Vec<Arc<Subsystem>> = Vec::new();
        for (sub, ns, group) in regrouped {
            summary.notes.push(format!("{} nsid {}: ANA group {} -> {group}", sub.nqn, ns.nsid, ns.ana_group()));
            ns.ana_group.store(group, Ordering::SeqCst);
            if !ana_notice.iter().any(|s| Arc::ptr_eq(s, &sub)) {
                ana_notice.push(sub);
            }
        }
        let used: std::collections::BTreeSet<u32> = self
            .subsystems()
            .iter()
            .flat_map(|s| s.namespaces.read().values().map(|n| n.ana_group()).collect::<Vec<_>>())
            .collect();
        let ana = self.ana.apply(cfg, &used);
        summary.notes.extend(ana.notes);
        for sub in self.subsystems() {
            let moved = ana_notice.iter().any(|s| Arc::ptr_eq(s, &sub));
            for c in sub.controllers() {
                if moved || ana.ports.contains(&c.port_id) {
                    c.ana_changed();
                }
            }
        }
        let keys = host_keys_of(cfg);
        if **self.host_keys.read() != keys {
            // Associations already authenticated keep going; new Connects (and re-authentications) use these.
            *self.host_keys.write() = Arc::new(keys);
            summary.notes.push("DH-HMAC-CHAP host keys updated (new associations use them)".into());
        }
        summary.genctr = self.genctr.load(Ordering::SeqCst);
        self.discovery_policies_changed(disc_policies);
        Ok((summary, discovery_changed))
    }

    /// Every live controller of every subsystem (discovery included).
    pub fn all_controllers(&self) -> Vec<Arc<Controller>> {
        let mut v = self.discovery.controllers();
        for s in self.subsystems() {
            v.extend(s.controllers());
        }
        v
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A read-only file namespace asked to be larger than its file (which is never grown) is refused under
    /// `size_mib`, the key at fault, not as a file that cannot be opened.
    #[test]
    fn a_size_a_read_only_file_cannot_give_names_size_mib() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("small.img");
        std::fs::write(&f, vec![0u8; 1 << 20]).unwrap();
        let text = format!(
            "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"nqn.2026-01.io.holdfast:t\"\n\
             allow_any_host = true\n[[subsystem.namespace]]\nnsid = 1\nbackend = \"file\"\npath = \"{}\"\n\
             size_mib = 4\nread_only = true\n",
            f.display()
        );
        let e = Target::new(&Config::parse(&text, "t.toml").unwrap(), Default::default()).err().unwrap().to_string();
        assert!(e.starts_with("subsystem[0].namespace[0].size_mib: ") && e.contains("never grown"), "{e}");
    }

    /// A reload that puts a namespace on another file under the same identifiers says so (hosts see the same
    /// disk); the same file spelled another way is only re-opened.
    #[test]
    fn a_reload_says_when_a_namespace_is_on_another_file_under_the_same_identifiers() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir(dir.path().join("d")).unwrap();
        let cfg = |p: &Path| {
            let text = format!(
                "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"nqn.2026-01.io.holdfast:t\"\n\
                 allow_any_host = true\n[[subsystem.namespace]]\nnsid = 1\nbackend = \"file\"\npath = \"{}\"\n\
                 size_mib = 1\n",
                p.display()
            );
            Config::parse(&text, "t.toml").unwrap()
        };
        let x = dir.path().join("d").join("x.img");
        let t = Target::new(&cfg(&x), Default::default()).unwrap();
        let respelled = dir.path().join("d").join("..").join("d").join("x.img");
        let notes = t.reload(&cfg(&respelled)).unwrap().notes.join("\n");
        assert!(notes.contains("nsid 1 replaced: file") && !notes.contains("same identifiers"), "{notes}");
        let notes = t.reload(&cfg(&dir.path().join("y.img"))).unwrap().notes.join("\n");
        assert!(notes.contains("nsid 1 replaced: now file") && notes.contains("same identifiers"), "{notes}");
    }

    /// A start or reload that fails on one namespace's file leaves the others' files as it found them: none
    /// created, none grown (they were: 64 MiB and an 8 MiB file left behind by a refused reload).
    #[test]
    fn a_refused_start_or_reload_creates_and_grows_no_file() {
        let dir = tempfile::tempdir().unwrap();
        let (x, created, nowhere) =
            (dir.path().join("x.img"), dir.path().join("created.img"), dir.path().join("nodir").join("y.img"));
        let ns = |nsid: u32, p: &Path, mib: u32| {
            format!(
                "[[subsystem.namespace]]\nnsid = {nsid}\nbackend = \"file\"\npath = \"{}\"\nsize_mib = {mib}\n",
                p.display()
            )
        };
        let head = "[[port]]\nid = 1\nlisten = \"127.0.0.1:0\"\n[[subsystem]]\nnqn = \"nqn.2026-01.io.holdfast:t\"\n\
                    allow_any_host = true\n";
        let cfg = |body: String| Config::parse(&format!("{head}{body}"), "t.toml").unwrap();
        // A start: the second namespace's file is created, then the third cannot be.
        let bad = cfg(ns(1, &x, 1) + &ns(2, &created, 8) + &ns(3, &nowhere, 1));
        assert!(Target::new(&bad, Default::default()).is_err());
        assert!(!x.exists() && !created.exists(), "files left by a refused start");
        // A reload: namespace 1 grown, namespace 2 created, then namespace 3 fails.
        let t = Target::new(&cfg(ns(1, &x, 1)), Default::default()).unwrap();
        let bad = cfg(ns(1, &x, 64) + &ns(2, &created, 8) + &ns(3, &nowhere, 1));
        assert!(t.reload(&bad).is_err());
        assert_eq!(std::fs::metadata(&x).unwrap().len(), 1 << 20, "the running namespace's file grown");
        assert!(!created.exists(), "a file created by the refused reload");
    }

    /// The startup line of a subsystem's access: any host, no host at all (seen at a glance), or the hosts
    /// listed, sorted, with the ports; and the policy hosts are told.
    #[test]
    fn access_and_policy_are_described_in_a_line() {
        let any = Access { allow_any_host: true, allowed_hosts: HashSet::new(), ports: vec![] };
        assert_eq!(any.describe(), "any host, on every port");
        let none = Access { allow_any_host: false, ..any.clone() };
        assert_eq!(none.describe(), "no host (allowed_hosts is empty), on every port");
        let listed = Access {
            allow_any_host: false,
            allowed_hosts: ["nqn.b".to_string(), "nqn.a".to_string()].into(),
            ports: vec![1, 3],
        };
        assert_eq!(listed.describe(), "hosts nqn.a, nqn.b, on port(s) 1, 3");
        let p = PolicyConfig { fast_io_fail_tmo_ms: 0, ..PolicyConfig::default() };
        assert!(p.describe().contains("fast_io_fail_tmo off"), "{}", p.describe());
        let p = PolicyConfig { fast_io_fail_tmo_ms: 2500, ..p };
        assert!(p.describe().contains("fast_io_fail_tmo 2500 ms"), "{}", p.describe());
    }

    /// Two admin Connects on two threads, both past `alloc_cntlid` before either has registered its controller
    /// (`cmd::fabrics::connect` makes the controller in between): the second must not get the CNTLID the first
    /// holds, or two live controllers share it (the second replacing the first in the table).
    #[test]
    fn a_cntlid_handed_out_is_not_handed_out_again_before_its_controller_is_registered() {
        let text = crate::config::tests::GOOD
            .replace("allow_any_host = true", "allow_any_host = true\ncntlid_min = 7\ncntlid_max = 7");
        let target = Target::new(&Config::parse(&text, "t").unwrap(), TargetSettings::default()).unwrap();
        let s = target.subsystems()[0].clone();
        assert_eq!((s.alloc_cntlid(), s.alloc_cntlid()), (Some(7), None), "CNTLID 7 handed out twice");
        let addr = "127.0.0.1:1".parse().unwrap();
        let c = Controller::new(7, s.clone(), target.clone(), "h".into(), [1; 16], 1, addr, addr, 0);
        s.add_controller(&c);
        assert!(s.controller(7).is_some_and(|x| Arc::ptr_eq(&x, &c)));
        assert_eq!(s.alloc_cntlid(), None, "in use");
        c.teardown("test");
        assert_eq!(s.alloc_cntlid(), Some(7), "free again once its controller is gone");
    }

    /// A reload's note says what of the access changed (it said "access list updated", for a port moved too).
    #[test]
    fn an_access_change_is_said_as_it_is() {
        let a = |any: bool, hosts: &[&str], ports: &[u16]| Access {
            allow_any_host: any,
            allowed_hosts: hosts.iter().map(|h| h.to_string()).collect(),
            ports: ports.to_vec(),
        };
        assert_eq!(
            access_change(&a(false, &["h1", "h2"], &[1]), &a(false, &["h2", "h3"], &[3])),
            "access updated: hosts allowed: h3; hosts no longer allowed: h1; exported on ports [3] (was [1])"
        );
        assert_eq!(access_change(&a(false, &[], &[]), &a(true, &[], &[])), "access updated: any host allowed");
    }

    /// A reload that changes a running subsystem's serial number keeps the old one and says so: applied, it
    /// would make a host take the subsystem for another at its next connect; ignored (as it was), "nothing
    /// changed" was logged.
    #[test]
    fn a_reload_that_changes_the_serial_says_it_waits_for_a_restart() {
        let good = Config::parse(crate::config::tests::GOOD, "t").unwrap();
        let target = Target::new(&good, TargetSettings::default()).unwrap();
        let before = target.subsystems()[0].serial.clone();
        let text =
            crate::config::tests::GOOD.replace("allow_any_host = true", "allow_any_host = true\nserial = \"NEW1\"");
        let summary = target.reload(&Config::parse(&text, "t").unwrap()).unwrap();
        assert_eq!(target.subsystems()[0].serial, before);
        assert!(summary.errors.iter().any(|e| e.contains("until the target restarts")), "{summary:?}");
        assert!(target.reload(&good).unwrap().errors.is_empty(), "no change, nothing said");
    }
}
