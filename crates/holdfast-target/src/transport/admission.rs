//! How many connections may be without an NVM controller at once: waiting for a Connect, or connected to
//! the discovery controller (which any host may use, with a keep-alive as long as it likes). A connection
//! counts from accept until a Connect binds its queue to an NVM subsystem's controller (or it ends); one that
//! sends nothing is closed after 10 s, but until then a peer opening connections in a loop held a file
//! descriptor and ~88 KiB each, and once the descriptors ran out no host could connect.
//!
//! The limits: [`MAX_UNBOUND`] in all and [`MAX_UNBOUND_PER_ADDR`] from one address, except that an address
//! holding fewer than [`UNBOUND_FLOOR_PER_ADDR`] is always let in, so that a few addresses filling the total
//! cannot lock every other host out. The floor is what one host needs at once: the Linux host opens every I/O
//! queue's connection (up to 128 per controller here, [`crate::controller::MAX_IO_QUEUES`]) before it sends
//! their Connects, plus its admin and discovery connections. Over the limits a new connection is closed at once.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Arc;

/// Connections without an NVM controller, all addresses together (unless under the floor).
pub const MAX_UNBOUND: usize = 4096;
/// Connections without an NVM controller from one address.
pub const MAX_UNBOUND_PER_ADDR: u32 = 1024;
/// An address holding fewer is let in whatever the total.
pub const UNBOUND_FLOOR_PER_ADDR: u32 = 160;

/// The connections waiting for a Connect, by peer address.
#[derive(Default)]
pub struct Unbound {
    inner: Mutex<(usize, HashMap<IpAddr, u32>)>,
}

impl Unbound {
    /// Count a new connection from `addr`, unless a limit is reached (None: close it).
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> Option<UnboundGuard> {
        self.admit_within(addr, MAX_UNBOUND, MAX_UNBOUND_PER_ADDR, UNBOUND_FLOOR_PER_ADDR)
    }

    fn admit_within(self: &Arc<Self>, addr: IpAddr, total: usize, per_addr: u32, floor: u32) -> Option<UnboundGuard> {
        let addr = addr.to_canonical();
        let mut g = self.inner.lock();
        let (all, by_addr) = &mut *g;
        let n = by_addr.entry(addr).or_insert(0);
        if *n >= floor && (*all >= total || *n >= per_addr) {
            if *n == 0 {
                by_addr.remove(&addr);
            }
            return None;
        }
        *n += 1;
        *all += 1;
        Some(UnboundGuard { unbound: self.clone(), addr })
    }

    /// Connections counted now.
    pub fn count(&self) -> usize {
        self.inner.lock().0
    }
}

/// A connection counted in [`Unbound`] until this is dropped (its queue bound, or the connection ended).
pub struct UnboundGuard {
    unbound: Arc<Unbound>,
    addr: IpAddr,
}

impl Drop for UnboundGuard {
    fn drop(&mut self) {
        let mut g = self.unbound.inner.lock();
        let (all, by_addr) = &mut *g;
        *all -= 1;
        if let Some(n) = by_addr.get_mut(&self.addr) {
            *n -= 1;
            if *n == 0 {
                by_addr.remove(&self.addr);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn limits_in_all_and_per_address_and_release_on_drop() {
        let u = Arc::new(Unbound::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        // Floor 1: every address gets one whatever the total.
        let held: Vec<_> = (0..3).map(|_| u.admit_within(a, 5, 3, 1).unwrap()).collect();
        assert!(u.admit_within(a, 5, 3, 1).is_none(), "per address");
        // The same address written as IPv4-mapped IPv6 is the same address.
        assert!(u.admit_within("::ffff:192.0.2.1".parse().unwrap(), 5, 3, 1).is_none());
        let more: Vec<_> = (0..2).map(|_| u.admit_within(b, 5, 3, 1).unwrap()).collect();
        assert_eq!(u.count(), 5);
        assert!(u.admit_within(b, 5, 3, 1).is_none(), "in all");
        // A third address, under the floor: let in over the total; its second is not.
        let floor = u.admit_within(c, 5, 3, 1).expect("an address holding none is let in");
        assert!(u.admit_within(c, 5, 3, 1).is_none(), "over the floor and the total");
        assert_eq!(u.count(), 6);
        drop(held);
        assert_eq!(u.count(), 3);
        assert!(u.admit_within(a, 5, 3, 1).is_some(), "free again");
        drop((more, floor));
        assert_eq!(u.count(), 0);
        assert!(u.inner.lock().1.is_empty(), "no address left behind");
    }
}
