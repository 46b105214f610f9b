//! How many connections may be without an NVM controller at once: waiting for a Connect, or connected to
//! the discovery controller (which any host may use, with a keep-alive as long as it likes). A connection
//! counts from accept until a Connect binds its queue to an NVM subsystem's controller and, for a host that
//! must authenticate (DH-HMAC-CHAP), until the queue has (or it ends); one that sends nothing is closed after
//! 10 s, but until then a peer opening connections in a loop held a file descriptor and ~88 KiB each (and,
//! connecting as a listed host, a controller), and once the descriptors ran out no host could connect.
//!
//! The limits: [`MAX_UNBOUND`] in all and [`MAX_UNBOUND_PER_ADDR`] from one address, except that an address
//! holding fewer than [`UNBOUND_FLOOR_PER_ADDR`] is let in over the total (up to [`MAX_UNBOUND_HARD`]), so that
//! a few addresses filling the total cannot lock every other host out. The floor is what one host needs at
//! once: the Linux host opens every I/O queue's connection (up to 128 per controller here,
//! [`crate::controller::MAX_IO_QUEUES`]) before it sends their Connects, plus its admin and discovery
//! connections. Over the limits a new connection is closed at once.
//!
//! An "address" is an IPv4 address or an IPv6 /64 ([`peer_key`]): one IPv6 host may use every address of its
//! /64 (RFC 8981 temporary addresses, or simply as many as it likes), and counted one by one each would get a
//! floor of its own, a total of its own making. Peers with many networks of their own still find the total and
//! the hard ceiling.

use parking_lot::Mutex;
use std::collections::HashMap;
use std::net::{IpAddr, Ipv6Addr};
use std::sync::Arc;

/// Connections without an NVM controller, all addresses together (unless under the floor).
pub const MAX_UNBOUND: usize = 4096;
/// Connections without an NVM controller from one address.
pub const MAX_UNBOUND_PER_ADDR: u32 = 1024;
/// An address holding fewer is let in whatever the total, up to [`MAX_UNBOUND_HARD`].
pub const UNBOUND_FLOOR_PER_ADDR: u32 = 160;
/// Connections without an NVM controller beyond which none is let in, floor or not: without it every new
/// address (or IPv6 network) would bring 160 more.
pub const MAX_UNBOUND_HARD: usize = 2 * MAX_UNBOUND;

/// What a connection from `addr` is counted against: the IPv4 address (an IPv4-mapped IPv6 one as IPv4), or
/// the /64 of a global IPv6 address (a link-local one as itself: every host on a link shares fe80::/64).
fn peer_key(addr: IpAddr) -> IpAddr {
    match addr.to_canonical() {
        IpAddr::V6(v6) if !v6.is_unicast_link_local() => {
            IpAddr::V6(Ipv6Addr::from(u128::from(v6) & !(u64::MAX as u128)))
        }
        a => a,
    }
}

/// The connections waiting for a Connect, by peer address.
#[derive(Default)]
pub struct Unbound {
    inner: Mutex<(usize, HashMap<IpAddr, u32>)>,
}

impl Unbound {
    /// Count a new connection from `addr`, unless a limit is reached (None: close it).
    pub fn admit(self: &Arc<Self>, addr: IpAddr) -> Option<UnboundGuard> {
        self.admit_within(addr, Limits::DEFAULT)
    }

    fn admit_within(self: &Arc<Self>, addr: IpAddr, l: Limits) -> Option<UnboundGuard> {
        let addr = peer_key(addr);
        let mut g = self.inner.lock();
        let (all, by_addr) = &mut *g;
        let n = by_addr.entry(addr).or_insert(0);
        if *all >= l.hard || (*n >= l.floor && (*all >= l.total || *n >= l.per_addr)) {
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

    /// Connections counted now from `addr` (its IPv4 address or IPv6 /64, as counted).
    pub fn count_from(&self, addr: IpAddr) -> u32 {
        self.inner.lock().1.get(&peer_key(addr)).copied().unwrap_or(0)
    }
}

/// The limits [`Unbound::admit`] applies (smaller in tests).
#[derive(Clone, Copy)]
struct Limits {
    total: usize,
    per_addr: u32,
    floor: u32,
    hard: usize,
}

impl Limits {
    const DEFAULT: Limits = Limits {
        total: MAX_UNBOUND,
        per_addr: MAX_UNBOUND_PER_ADDR,
        floor: UNBOUND_FLOOR_PER_ADDR,
        hard: MAX_UNBOUND_HARD,
    };
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

    const L: Limits = Limits { total: 5, per_addr: 3, floor: 1, hard: 100 };

    #[test]
    fn limits_in_all_and_per_address_and_release_on_drop() {
        let u = Arc::new(Unbound::default());
        let a: IpAddr = "192.0.2.1".parse().unwrap();
        let b: IpAddr = "192.0.2.2".parse().unwrap();
        let c: IpAddr = "192.0.2.3".parse().unwrap();
        // Floor 1: every address gets one whatever the total.
        let held: Vec<_> = (0..3).map(|_| u.admit_within(a, L).unwrap()).collect();
        assert!(u.admit_within(a, L).is_none(), "per address");
        // The same address written as IPv4-mapped IPv6 is the same address.
        assert!(u.admit_within("::ffff:192.0.2.1".parse().unwrap(), L).is_none());
        let more: Vec<_> = (0..2).map(|_| u.admit_within(b, L).unwrap()).collect();
        assert_eq!(u.count(), 5);
        assert!(u.admit_within(b, L).is_none(), "in all");
        // A third address, under the floor: let in over the total; its second is not.
        let floor = u.admit_within(c, L).expect("an address holding none is let in");
        assert!(u.admit_within(c, L).is_none(), "over the floor and the total");
        assert_eq!(u.count(), 6);
        drop(held);
        assert_eq!(u.count(), 3);
        assert!(u.admit_within(a, L).is_some(), "free again");
        drop((more, floor));
        assert_eq!(u.count(), 0);
        assert!(u.inner.lock().1.is_empty(), "no address left behind");
    }

    /// The addresses of one IPv6 /64 are one peer: cycling through them gets it no floor of its own each, nor
    /// past its per-address limit; another /64 (or a link-local neighbour) is another peer. However many peers
    /// there are, the hard ceiling holds.
    #[test]
    fn an_ipv6_network_is_one_peer_and_the_floor_stops_at_the_hard_ceiling() {
        let u = Arc::new(Unbound::default());
        let net = |i: u16| -> IpAddr { format!("2001:db8:0:1::{i:x}").parse().unwrap() };
        let l = Limits { total: 4, per_addr: 3, floor: 2, hard: 6 };
        let held: Vec<_> = (1..=3).map(|i| u.admit_within(net(i), l).expect("within the per-address limit")).collect();
        assert!(u.admit_within(net(4), l).is_none(), "a fourth address of the same /64 is its fourth connection");
        assert_eq!(u.inner.lock().1.len(), 1, "one peer");
        let other: IpAddr = "2001:db8:0:2::1".parse().unwrap();
        let more = u.admit_within(other, l).expect("another /64 is another peer");
        // The total (4) is reached; peers under the floor (2) still get in, up to the hard ceiling (6).
        let floor: Vec<_> =
            ["2001:db8:0:3::1", "fe80::1", "fe80::2"].iter().map(|a| u.admit_within(a.parse().unwrap(), l)).collect();
        assert!(floor[0].is_some() && floor[1].is_some(), "under the floor, over the total");
        assert!(floor[2].is_none(), "at the hard ceiling even a peer under the floor is refused");
        assert_eq!(u.count(), 6);
        drop((held, more, floor));
        assert_eq!(u.count(), 0);
        assert!(u.inner.lock().1.is_empty(), "no peer left behind");
    }
}
