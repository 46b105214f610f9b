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
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

/// Settings that are not part of the configuration file (command-line, tests).
#[derive(Clone, Debug)]
pub struct TargetSettings {
    /// Hold a reconnecting host's new association until its dead ones have drained (design §5). Only tests
    /// turn this off, to show the stale write it prevents.
    pub drain: bool,
    /// Test only: delay every write this long before it reaches the media.
    pub test_delay_writes: Option<Duration>,
}

impl Default for TargetSettings {
    fn default() -> Self {
        TargetSettings { drain: true, test_delay_writes: None }
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
    allow_any_host: bool,
    allowed_hosts: HashSet<String>,
    /// Port IDs it is exported on (empty = all).
    pub ports: Vec<u16>,
    /// Namespaces by NSID.
    pub namespaces: RwLock<BTreeMap<u32, Arc<Namespace>>>,
    /// Connection policy.
    pub policy: RwLock<PolicyConfig>,
    /// Live controllers by CNTLID.
    controllers: Mutex<BTreeMap<u16, Weak<Controller>>>,
    next_cntlid: Mutex<u16>,
    /// Associations that died with commands still in flight, by (host NQN, host ID).
    dead: Mutex<Vec<DeadQueue>>,
    /// SMART counters.
    pub stats: Stats,
}

/// A dead queue with commands in flight: (host NQN, host ID, its gate).
type DeadQueue = (String, [u8; 16], Arc<AssociationGate>);

/// Highest CNTLID a dynamic controller may get (NVMe-oF 1.1 §4.2: 0xFFF0..0xFFFF are reserved).
pub const MAX_CNTLID: u16 = 0xFFEF;

impl Subsystem {
    fn new(nqn: &str, serial: String, model: String, is_discovery: bool) -> Self {
        Subsystem {
            nqn: nqn.to_owned(),
            serial,
            model,
            is_discovery,
            allow_any_host: true,
            allowed_hosts: HashSet::new(),
            ports: Vec::new(),
            namespaces: RwLock::new(BTreeMap::new()),
            policy: RwLock::new(PolicyConfig::default()),
            controllers: Mutex::new(BTreeMap::new()),
            next_cntlid: Mutex::new(1),
            dead: Mutex::new(Vec::new()),
            stats: Stats::default(),
        }
    }

    /// May `hostnqn` connect?
    pub fn host_allowed(&self, hostnqn: &str) -> bool {
        self.allow_any_host || self.allowed_hosts.contains(hostnqn)
    }

    /// Is the subsystem exported on `port_id`?
    pub fn on_port(&self, port_id: u16) -> bool {
        self.ports.is_empty() || self.ports.contains(&port_id)
    }

    /// A namespace by NSID.
    pub fn namespace(&self, nsid: u32) -> Option<Arc<Namespace>> {
        self.namespaces.read().get(&nsid).cloned()
    }

    /// Allocate a CNTLID not used by a live controller.
    pub fn alloc_cntlid(&self) -> Option<u16> {
        let ctrls = self.controllers.lock();
        let mut next = self.next_cntlid.lock();
        for _ in 0..MAX_CNTLID {
            let id = *next;
            *next = if id >= MAX_CNTLID { 1 } else { id + 1 };
            if ctrls.get(&id).is_none_or(|w| w.strong_count() == 0) {
                return Some(id);
            }
        }
        None
    }

    /// Register a live controller.
    pub fn add_controller(&self, c: &Arc<Controller>) {
        self.controllers.lock().insert(c.cntlid, Arc::downgrade(c));
    }

    /// Forget a controller.
    pub fn remove_controller(&self, cntlid: u16) {
        self.controllers.lock().remove(&cntlid);
    }

    /// A live controller by CNTLID.
    pub fn controller(&self, cntlid: u16) -> Option<Arc<Controller>> {
        self.controllers.lock().get(&cntlid).and_then(Weak::upgrade)
    }

    /// All live controllers.
    pub fn controllers(&self) -> Vec<Arc<Controller>> {
        self.controllers.lock().values().filter_map(Weak::upgrade).collect()
    }

    /// Remember a dead association whose commands are still in flight.
    pub fn add_dead_association(&self, hostnqn: &str, hostid: [u8; 16], gate: Arc<AssociationGate>) {
        let mut d = self.dead.lock();
        d.retain(|(_, _, g)| g.inflight() > 0);
        if gate.inflight() > 0 {
            d.push((hostnqn.to_owned(), hostid, gate));
        }
    }

    /// Commands of this host's dead associations still in flight.
    pub fn dead_inflight(&self, hostnqn: &str, hostid: &[u8; 16]) -> u64 {
        let mut d = self.dead.lock();
        d.retain(|(_, _, g)| g.inflight() > 0);
        d.iter().filter(|(n, id, _)| n == hostnqn && id == hostid).map(|(_, _, g)| g.inflight()).sum()
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

/// A listener as the discovery log describes it.
#[derive(Clone, Debug)]
pub struct Port {
    /// PORTID.
    pub id: u16,
    /// The address it listens on.
    pub addr: SocketAddr,
}

/// The whole target: every subsystem and port.
pub struct Target {
    subsystems: RwLock<BTreeMap<String, Arc<Subsystem>>>,
    /// The discovery subsystem.
    pub discovery: Arc<Subsystem>,
    /// Ports.
    pub ports: RwLock<Vec<Port>>,
    /// Discovery log generation counter: bumped on every configuration change.
    pub genctr: AtomicU64,
    /// Changes at every start: a host can tell a restart from a network blip.
    pub instance_id: u64,
    /// Non-configuration settings.
    pub settings: TargetSettings,
    /// When the target started (keep-alive clocks count from here).
    pub epoch: Instant,
}

fn open_backend(n: &crate::config::NamespaceConfig, settings: &TargetSettings) -> anyhow::Result<Arc<dyn Backend>> {
    let b: Arc<dyn Backend> = match n.backend {
        BackendKind::Ram => Arc::new(RamBackend::new(n.size_bytes().unwrap_or(0))),
        BackendKind::File => {
            let path = n.path.as_ref().ok_or_else(|| anyhow::anyhow!("file namespace without a path"))?;
            Arc::new(
                FileBackend::open(path, n.size_bytes())
                    .map_err(|e| anyhow::anyhow!("cannot open {}: {e}", path.display()))?,
            )
        }
    };
    Ok(match settings.test_delay_writes {
        Some(d) => Arc::new(DelayWrites::new(b, d)),
        None => b,
    })
}

fn build_subsystem(s: &SubsystemConfig, settings: &TargetSettings) -> anyhow::Result<Subsystem> {
    let serial = s.serial.clone().unwrap_or_else(|| crate::config::derived_serial(&s.nqn));
    let model = s.model.clone().unwrap_or_else(|| "holdfast".into());
    let mut sub = Subsystem::new(&s.nqn, serial, model, false);
    sub.allow_any_host = s.allow_any_host;
    sub.allowed_hosts = s.allowed_hosts.iter().cloned().collect();
    sub.ports = s.ports.clone();
    *sub.policy.get_mut() = s.policy.clone();
    for n in &s.namespaces {
        let backend = open_backend(n, settings)?;
        if backend.size() < n.block_size as u64 {
            anyhow::bail!("namespace {} of {} is smaller than one block", n.nsid, s.nqn);
        }
        sub.namespaces.get_mut().insert(n.nsid, Arc::new(Namespace::new(n.nsid, n.block_size, backend, n.ids(&s.nqn))));
    }
    Ok(sub)
}

impl Target {
    /// Build the target from a validated configuration (opens every backend).
    pub fn new(cfg: &Config, settings: TargetSettings) -> anyhow::Result<Arc<Target>> {
        let mut subs = BTreeMap::new();
        for s in &cfg.subsystems {
            subs.insert(s.nqn.clone(), Arc::new(build_subsystem(s, &settings)?));
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
        Ok(Arc::new(Target {
            subsystems: RwLock::new(subs),
            discovery: Arc::new(disc),
            ports: RwLock::new(ports),
            genctr: AtomicU64::new(1),
            instance_id: rand::random::<u64>() | 1,
            settings,
            epoch: Instant::now(),
        }))
    }

    /// A subsystem by NQN (the discovery NQN gives the discovery subsystem).
    pub fn subsystem(&self, nqn: &str) -> Option<Arc<Subsystem>> {
        if nqn == DISCOVERY_NQN {
            return Some(self.discovery.clone());
        }
        self.subsystems.read().get(nqn).cloned()
    }

    /// Every NVM subsystem.
    pub fn subsystems(&self) -> Vec<Arc<Subsystem>> {
        self.subsystems.read().values().cloned().collect()
    }

    /// Milliseconds since the target started.
    pub fn now_ms(&self) -> u64 {
        self.epoch.elapsed().as_millis() as u64
    }

    /// Record a configuration change: discovery controllers see a new GENCTR.
    pub fn bump_genctr(&self) {
        self.genctr.fetch_add(1, Ordering::SeqCst);
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
