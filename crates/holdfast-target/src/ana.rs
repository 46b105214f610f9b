//! Asymmetric Namespace Access (NVMe Base 2.1 §8.1.1 "Asymmetric Namespace Access Reporting"): every
//! namespace belongs to an ANA group (`[[subsystem.namespace]] ana_group`, default 1) and every port gives
//! each group a state (`[[port]] ana_state`, `ana_groups`), as Linux nvmet's configfs does. A multipath host
//! (the Linux host's native multipath) sends I/O down the Optimized paths, falls back to Non-Optimized ones,
//! and moves I/O off a path whose group turns Inaccessible, Persistent Loss or Change; a reload that changes
//! a state sends the controllers behind that port an ANA Change notice.
//!
//! Commands that use a namespace whose group is not accessible through the controller's port fail with the
//! state's path-related status (Asymmetric Access Inaccessible / Persistent Loss / Transition, no DNR), checked
//! in [`crate::cmd::io::parse`]. The log page (LID 0Ch) is built by [`Ana::log`].

use crate::config::Config;
use crate::subsystem::Subsystem;
use holdfast_proto::log_page::{AnaGroup, AnaLog, AnaState};
use parking_lot::RwLock;
use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicU64, AtomicU8, Ordering};
use std::sync::Arc;

/// ANAGRPMAX and NANAGRPID: ANA group IDs run 1..=this (nvmet's NVMET_MAX_ANAGRPS).
pub const ANAGRPMAX: u32 = 128;
/// ANATT, seconds: how long a group stays in the Change state at most (nvmet and SPDK: 10). The target
/// never enters Change by itself; a configuration that sets it keeps it until the next reload, and a Linux
/// host resets the controller after twice this.
pub const ANATT_S: u8 = 10;
/// ANACAP: the states this controller reports (bits 0-4: Optimized, Non-Optimized, Inaccessible, Persistent
/// Loss, Change). Bit 6 (ANAGRPID never changes while attached) is not set: a reload may move a namespace.
pub const ANACAP: u8 = 0x1F;

/// The length the Asymmetric Namespace Access log page is served at: as long as Identify Controller lets a host
/// compute it (a header, NANAGRPID descriptors, and without RGO MNAN NSIDs), zeroes after the descriptors. A
/// host reads that many bytes, and libnvme (nvme-cli's `ana-log`) reads them 4 KiB at a time: an offset past
/// the descriptors must still be inside the page.
pub fn log_len(rgo: bool) -> usize {
    AnaLog::len_for(ANAGRPMAX as usize, if rgo { 0 } else { crate::MAX_NSID as usize })
}

/// A port's configured states: `default` for every group but those in `groups`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct PortAnaConfig {
    /// The state of a group `groups` does not name.
    pub default: AnaState,
    /// States of chosen groups.
    pub groups: BTreeMap<u32, AnaState>,
}

impl PortAnaConfig {
    /// Group `grp`'s state.
    pub fn state(&self, grp: u32) -> AnaState {
        self.groups.get(&grp).copied().unwrap_or(self.default)
    }
}

/// The ANA states of every group through one port, read on the I/O path (one atomic load per command).
pub struct PortAna {
    /// Index: ANA group ID (0 unused).
    states: Box<[AtomicU8]>,
    /// Each group's descriptor Change Count: the target's count when that group last changed here.
    chgcnt: Box<[AtomicU64]>,
}

impl PortAna {
    fn new(cfg: &PortAnaConfig, chgcnt: u64) -> PortAna {
        let n = ANAGRPMAX as usize + 1;
        PortAna {
            states: (0..n).map(|g| AtomicU8::new(cfg.state(g as u32) as u8)).collect(),
            chgcnt: (0..n).map(|_| AtomicU64::new(chgcnt)).collect(),
        }
    }

    /// The status a command that uses a namespace of group `grp` fails with through this port, if any: the
    /// I/O path's check, one load and a comparison while the group is Optimized or Non-Optimized.
    #[inline]
    pub fn command_status(&self, grp: u32) -> Option<holdfast_proto::Status> {
        const OPTIMIZED: u8 = AnaState::Optimized as u8;
        const NON_OPTIMIZED: u8 = AnaState::NonOptimized as u8;
        match self.states.get(grp as usize).map(|s| s.load(Ordering::Relaxed)) {
            None | Some(OPTIMIZED | NON_OPTIMIZED) => None,
            Some(v) => AnaState::from_u8(v).and_then(AnaState::command_status),
        }
    }

    /// Group `grp`'s state through this port (Optimized for an ID out of range, which configuration refuses).
    pub fn state(&self, grp: u32) -> AnaState {
        self.states
            .get(grp as usize)
            .and_then(|s| AnaState::from_u8(s.load(Ordering::Relaxed)))
            .unwrap_or(AnaState::Optimized)
    }
}

/// Every port's ANA states and the log page's Change Count.
pub struct Ana {
    ports: RwLock<BTreeMap<u16, Arc<PortAna>>>,
    chgcnt: AtomicU64,
}

/// What [`Ana::apply`] changed.
#[derive(Debug, Default)]
pub struct AnaChanges {
    /// Ports through which some group's state changed.
    pub ports: Vec<u16>,
    /// One line per change, for the reload summary.
    pub notes: Vec<String>,
}

impl Ana {
    /// The states `cfg` gives (a validated configuration).
    pub fn new(cfg: &Config) -> Ana {
        let ports = cfg
            .ports
            .iter()
            .map(|p| (p.id, Arc::new(PortAna::new(&p.ana().unwrap_or_else(|_| all_optimized()), 1))))
            .collect();
        Ana { ports: RwLock::new(ports), chgcnt: AtomicU64::new(1) }
    }

    /// Port `id`'s states (a port the configuration does not have gets every group Optimized, and keeps
    /// them: [`Ana::apply`] sets them once it is configured).
    pub fn port(&self, id: u16) -> Arc<PortAna> {
        if let Some(p) = self.ports.read().get(&id) {
            return p.clone();
        }
        let chgcnt = self.chgcnt.load(Ordering::SeqCst);
        self.ports.write().entry(id).or_insert_with(|| Arc::new(PortAna::new(&all_optimized(), chgcnt))).clone()
    }

    /// Take the states of a new configuration: each group whose state changed through a port gets the next
    /// Change Count. The notes name the changes of the groups in `used` (those with namespaces).
    pub fn apply(&self, cfg: &Config, used: &BTreeSet<u32>) -> AnaChanges {
        let mut out = AnaChanges::default();
        let mut count = None;
        for p in &cfg.ports {
            let Ok(want) = p.ana() else { continue };
            let port = self.port(p.id);
            let (mut said, mut unused) = (Vec::new(), 0);
            for grp in 1..=ANAGRPMAX {
                let (old, new) = (port.state(grp), want.state(grp));
                if old == new {
                    continue;
                }
                let count = *count.get_or_insert_with(|| self.bump());
                port.states[grp as usize].store(new as u8, Ordering::SeqCst);
                port.chgcnt[grp as usize].store(count, Ordering::SeqCst);
                if used.contains(&grp) {
                    said.push(format!("group {grp} {old} -> {new}"));
                } else {
                    unused += 1;
                }
            }
            if said.is_empty() && unused == 0 {
                continue;
            }
            out.ports.push(p.id);
            if unused > 0 {
                said.push(format!("{unused} group(s) without namespaces"));
            }
            out.notes.push(format!("port {}: ANA {}", p.id, said.join(", ")));
        }
        out
    }

    /// A namespace moved between groups, or one was added or removed: the page's contents changed.
    pub fn membership_changed(&self) {
        self.bump();
    }

    fn bump(&self) -> u64 {
        self.chgcnt.fetch_add(1, Ordering::SeqCst) + 1
    }

    /// The Asymmetric Namespace Access log page of a controller of `subsys` on `port`: a descriptor for each
    /// group that has namespaces of the subsystem, in ascending group order, each with its NSIDs ascending
    /// (the Linux host walks them in step with its own sorted list).
    pub fn log(&self, port: &PortAna, subsys: &Subsystem) -> AnaLog {
        let mut groups: BTreeMap<u32, Vec<u32>> = BTreeMap::new();
        for (nsid, ns) in subsys.namespaces.read().iter() {
            groups.entry(ns.ana_group()).or_default().push(*nsid);
        }
        AnaLog {
            chgcnt: self.chgcnt.load(Ordering::SeqCst),
            groups: groups
                .into_iter()
                .map(|(anagrpid, nsids)| AnaGroup {
                    anagrpid,
                    chgcnt: port.chgcnt.get(anagrpid as usize).map_or(0, |c| c.load(Ordering::SeqCst)),
                    state: port.state(anagrpid),
                    nsids,
                })
                .collect(),
        }
    }
}

fn all_optimized() -> PortAnaConfig {
    PortAnaConfig { default: AnaState::Optimized, groups: BTreeMap::new() }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(port_extra: &str) -> Config {
        let text = crate::config::tests::GOOD.replace("[[port]]\n", &format!("[[port]]\n{port_extra}\n"));
        Config::parse(&text, "t").unwrap()
    }

    #[test]
    fn states_come_from_the_port_and_changes_count() {
        let cfg = config("ana_state = \"non-optimized\"\nana_groups = { \"2\" = \"inaccessible\" }");
        let ana = Ana::new(&cfg);
        let id = cfg.ports[0].id;
        let p = ana.port(id);
        assert_eq!(
            (p.state(1), p.state(2), p.state(3)),
            (AnaState::NonOptimized, AnaState::Inaccessible, AnaState::NonOptimized)
        );

        let used = BTreeSet::from([1, 2]);
        let same = ana.apply(&cfg, &used);
        assert!(same.ports.is_empty() && same.notes.is_empty(), "{same:?}");

        let flipped = config("ana_groups = { \"1\" = \"change\" }");
        let ch = ana.apply(&flipped, &used);
        assert_eq!(ch.ports, vec![id]);
        // Group 1 non-optimized -> change, 2 inaccessible -> optimized, every other group non-optimized -> optimized.
        assert_eq!(
            ch.notes,
            vec![format!(
                "port {id}: ANA group 1 non-optimized -> change, group 2 inaccessible -> optimized, 126 group(s) \
                 without namespaces"
            )]
        );
        assert_eq!((p.state(1), p.state(2)), (AnaState::Change, AnaState::Optimized), "the same PortAna sees it");
        assert!(p.chgcnt[1].load(Ordering::SeqCst) > 1);

        // A port not configured: every group optimized.
        assert_eq!(ana.port(999).state(7), AnaState::Optimized);
    }
}
