//! Address management of the bridge plugin: one pool per address family.
//!
//! A pool hands out addresses of its subnet round-robin (the cursor moves
//! past each address handed out, so a freed address is not reused at once:
//! a dying netns may still hold it for a moment). The network address, the
//! gateway (the first host address unless configured) and, for IPv4, the
//! broadcast address are never handed out. What is allocated is not stored here: it lives in the
//! pods' records, and [`Pool::mark_used`] rebuilds the pool after a restart.

use std::collections::HashSet;
use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use ipnetwork::IpNetwork;

#[derive(Debug)]
pub struct Pool {
    subnet: IpNetwork,
    /// First and last address that may be handed out, as numbers.
    first: u128,
    last: u128,
    used: HashSet<u128>,
    /// Where the next search starts.
    cursor: u128,
    /// The bridge's address, never handed out.
    gateway: u128,
}

fn to_u128(ip: IpAddr) -> u128 {
    match ip {
        IpAddr::V4(a) => u32::from(a) as u128,
        IpAddr::V6(a) => u128::from(a),
    }
}

impl Pool {
    /// A pool whose gateway is the subnet's first host address.
    pub fn new(subnet: IpNetwork) -> Self {
        Self::with_gateway(subnet, None)
    }

    /// A pool with this gateway (checked to be a host address of the
    /// subnet by the config), or the first host address.
    pub fn with_gateway(subnet: IpNetwork, gateway: Option<IpAddr>) -> Self {
        let net = to_u128(subnet.network());
        let size_bits = match subnet {
            IpNetwork::V4(n) => 32 - u32::from(n.prefix()),
            IpNetwork::V6(n) => 128 - u32::from(n.prefix()),
        };
        let top = if size_bits >= 128 {
            u128::MAX
        } else {
            net + ((1u128 << size_bits) - 1)
        };
        let last = match subnet {
            IpNetwork::V4(_) => top - 1, // broadcast
            IpNetwork::V6(_) => top,
        };
        let first = net + 1;
        let gateway = gateway
            .filter(|g| subnet.contains(*g))
            .map(to_u128)
            .filter(|g| (first..=last).contains(g))
            .unwrap_or(first);
        Self {
            subnet,
            first,
            last,
            used: HashSet::new(),
            cursor: first,
            gateway,
        }
    }

    pub fn subnet(&self) -> IpNetwork {
        self.subnet
    }

    /// The gateway, the bridge's address.
    pub fn gateway(&self) -> IpAddr {
        self.addr_of(self.gateway)
    }

    fn addr_of(&self, n: u128) -> IpAddr {
        match self.subnet {
            IpNetwork::V4(_) => IpAddr::V4(Ipv4Addr::from(n as u32)),
            IpNetwork::V6(_) => IpAddr::V6(Ipv6Addr::from(n)),
        }
    }

    pub fn contains(&self, ip: IpAddr) -> bool {
        self.subnet.contains(ip)
    }

    /// How many addresses the pool can hand out in all (its host
    /// addresses but the gateway).
    pub fn capacity(&self) -> u128 {
        self.last.saturating_sub(self.first)
    }

    pub fn in_use(&self) -> usize {
        self.used.len()
    }

    /// The next free address after the cursor, wrapping once; None when the
    /// subnet is exhausted.
    pub fn allocate(&mut self) -> Option<IpAddr> {
        if self.used.len() as u128 >= self.capacity() {
            return None;
        }
        let mut n = self.cursor.clamp(self.first, self.last.max(self.first));
        // At most `used + 2` probes (the gateway is one) find a free address.
        for _ in 0..=self.used.len() + 1 {
            if n != self.gateway && !self.used.contains(&n) {
                self.used.insert(n);
                self.cursor = if n >= self.last { self.first } else { n + 1 };
                return Some(self.addr_of(n));
            }
            n = if n >= self.last { self.first } else { n + 1 };
        }
        None
    }

    /// Take an address known to be in use (recovery). Addresses outside the
    /// pool are ignored (false).
    pub fn mark_used(&mut self, ip: IpAddr) -> bool {
        let n = to_u128(ip);
        if !self.contains(ip) || n < self.first || n > self.last || n == self.gateway {
            return false;
        }
        self.used.insert(n);
        // Continue after the highest address in use, the best guess of
        // where the round-robin was.
        if n >= self.cursor {
            self.cursor = if n >= self.last { self.first } else { n + 1 };
        }
        true
    }

    pub fn release(&mut self, ip: IpAddr) {
        self.used.remove(&to_u128(ip));
    }

    pub fn allocated(&self) -> Vec<IpAddr> {
        let mut v: Vec<u128> = self.used.iter().copied().collect();
        v.sort_unstable();
        v.into_iter().map(|n| self.addr_of(n)).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pool(s: &str) -> Pool {
        Pool::new(s.parse().unwrap())
    }

    #[test]
    fn hands_out_host_addresses_round_robin_and_never_the_gateway() {
        let mut p = pool("10.1.0.0/29"); // .0 net, .1 gw, .2-.6 pods, .7 bcast
        assert_eq!(p.gateway().to_string(), "10.1.0.1");
        assert_eq!(p.capacity(), 5);
        let got: Vec<String> = (0..5).map(|_| p.allocate().unwrap().to_string()).collect();
        assert_eq!(
            got,
            ["10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5", "10.1.0.6"]
        );
        assert_eq!(p.allocate(), None, "exhausted");
        p.release("10.1.0.3".parse().unwrap());
        p.release("10.1.0.5".parse().unwrap());
        // The cursor wrapped: the lowest free one after it.
        assert_eq!(p.allocate().unwrap().to_string(), "10.1.0.3");
        assert_eq!(p.allocate().unwrap().to_string(), "10.1.0.5");
        assert_eq!(p.allocate(), None);
    }

    #[test]
    fn a_configured_gateway_is_skipped_and_the_first_address_is_handed_out() {
        let net = "10.1.0.0/29".parse().unwrap();
        let mut p = Pool::with_gateway(net, Some("10.1.0.6".parse().unwrap()));
        assert_eq!(p.gateway().to_string(), "10.1.0.6");
        assert_eq!(p.capacity(), 5);
        let got: Vec<String> = (0..5).map(|_| p.allocate().unwrap().to_string()).collect();
        assert_eq!(
            got,
            ["10.1.0.1", "10.1.0.2", "10.1.0.3", "10.1.0.4", "10.1.0.5"]
        );
        assert_eq!(p.allocate(), None);
        assert!(!p.mark_used("10.1.0.6".parse().unwrap()));
        // One outside the subnet falls back to the first host address.
        let q = Pool::with_gateway(net, Some("10.2.0.1".parse().unwrap()));
        assert_eq!(q.gateway().to_string(), "10.1.0.1");
    }

    #[test]
    fn a_freed_address_is_not_reused_at_once() {
        let mut p = pool("10.1.0.0/24");
        let a = p.allocate().unwrap();
        p.release(a);
        let b = p.allocate().unwrap();
        assert_ne!(a, b);
    }

    #[test]
    fn recovery_marks_addresses_and_continues_after_the_highest() {
        let mut p = pool("10.1.0.0/24");
        assert!(p.mark_used("10.1.0.7".parse().unwrap()));
        assert!(p.mark_used("10.1.0.3".parse().unwrap()));
        assert!(!p.mark_used("10.2.0.3".parse().unwrap()), "outside");
        assert!(!p.mark_used("10.1.0.1".parse().unwrap()), "gateway");
        assert!(!p.mark_used("10.1.0.255".parse().unwrap()), "broadcast");
        assert_eq!(p.allocate().unwrap().to_string(), "10.1.0.8");
        assert_eq!(p.in_use(), 3);
        assert_eq!(
            p.allocated()
                .iter()
                .map(|a| a.to_string())
                .collect::<Vec<_>>(),
            ["10.1.0.3", "10.1.0.7", "10.1.0.8"]
        );
    }

    #[test]
    fn ipv6_pools_work_on_large_subnets() {
        let mut p = pool("fd89::/64");
        assert_eq!(p.gateway().to_string(), "fd89::1");
        assert_eq!(p.allocate().unwrap().to_string(), "fd89::2");
        assert_eq!(p.capacity(), (1u128 << 64) - 2);
        let mut q = pool("fd89::/120");
        for _ in 0..254 {
            assert!(q.allocate().is_some());
        }
        assert_eq!(q.allocate(), None, "::0 and ::1 are not handed out");
    }

    #[test]
    fn fifty_allocations_are_distinct() {
        let mut p = pool("10.1.0.0/24");
        let mut seen = HashSet::new();
        for _ in 0..50 {
            assert!(seen.insert(p.allocate().unwrap()));
        }
    }
}
