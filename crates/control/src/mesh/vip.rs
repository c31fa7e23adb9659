//! Service virtual IPs for Services that do not set `spec.clusterIP`.
//!
//! An address is derived from a hash of the service's host name, so the same Service gets
//! the same VIP across recomputes and across control-plane restarts; a collision probes
//! the next free address. Addresses written as `clusterIP` by other Services are never
//! handed out.

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::net::{IpAddr, Ipv4Addr};
use std::str::FromStr;

/// Why a VIP range is not acceptable.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VipRangeError {
    /// Not `a.b.c.d/len`.
    #[error("service VIP range `{0}` is not an IPv4 CIDR; write it as `10.96.0.0/16`")]
    Syntax(String),
    /// The prefix leaves fewer than two host addresses, or is over 32.
    #[error("service VIP range `{0}` is too small; use a prefix length from 8 to 30, e.g. `10.96.0.0/16`")]
    Size(String),
}

/// An IPv4 CIDR from which VIPs are allocated (default `10.96.0.0/16`, as kubeadm's
/// service CIDR).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct VipRange {
    base: u32,
    prefix: u8,
}

impl VipRange {
    /// A range from its network address and prefix length.
    pub fn new(network: Ipv4Addr, prefix: u8) -> Result<Self, VipRangeError> {
        if !(8..=30).contains(&prefix) {
            return Err(VipRangeError::Size(format!("{network}/{prefix}")));
        }
        let mask = u32::MAX << (32 - u32::from(prefix));
        Ok(Self {
            base: u32::from(network) & mask,
            prefix,
        })
    }

    /// Number of addresses handed out (network and broadcast addresses excluded).
    fn usable(&self) -> u32 {
        (1u32 << (32 - u32::from(self.prefix))) - 2
    }

    fn contains(&self, ip: IpAddr) -> bool {
        match ip {
            IpAddr::V4(v4) => {
                let mask = u32::MAX << (32 - u32::from(self.prefix));
                u32::from(v4) & mask == self.base
            }
            IpAddr::V6(_) => false,
        }
    }
}

impl Default for VipRange {
    fn default() -> Self {
        Self {
            base: u32::from(Ipv4Addr::new(10, 96, 0, 0)),
            prefix: 16,
        }
    }
}

impl fmt::Display for VipRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", Ipv4Addr::from(self.base), self.prefix)
    }
}

impl FromStr for VipRange {
    type Err = VipRangeError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ip, len) = s
            .split_once('/')
            .ok_or_else(|| VipRangeError::Syntax(s.to_owned()))?;
        let ip: Ipv4Addr = ip
            .parse()
            .map_err(|_| VipRangeError::Syntax(s.to_owned()))?;
        let len: u8 = len
            .parse()
            .map_err(|_| VipRangeError::Syntax(s.to_owned()))?;
        Self::new(ip, len)
    }
}

/// Allocated VIPs, by service host name.
#[derive(Debug, Default)]
pub(crate) struct VipAllocator {
    range: VipRange,
    by_host: BTreeMap<String, IpAddr>,
    taken: BTreeSet<IpAddr>,
    /// Addresses Services claim through `spec.clusterIP`, with how many claim each.
    explicit: BTreeMap<IpAddr, usize>,
}

impl VipAllocator {
    pub(crate) fn new(range: VipRange) -> Self {
        Self {
            range,
            ..Self::default()
        }
    }

    /// Records that a Service claims `ip` explicitly.
    pub(crate) fn claim(&mut self, ip: IpAddr) {
        *self.explicit.entry(ip).or_default() += 1;
    }

    /// Undoes [`VipAllocator::claim`].
    pub(crate) fn unclaim(&mut self, ip: IpAddr) {
        if let Some(n) = self.explicit.get_mut(&ip) {
            *n -= 1;
            if *n == 0 {
                self.explicit.remove(&ip);
            }
        }
    }

    /// The VIP of `host`, allocating one on first use. `None` when the range is full.
    pub(crate) fn get_or_allocate(&mut self, host: &str) -> Option<IpAddr> {
        if let Some(ip) = self.by_host.get(host) {
            return Some(*ip);
        }
        let usable = self.range.usable();
        let start = fnv1a(host.as_bytes()) % u64::from(usable);
        for i in 0..u64::from(usable) {
            let offset = u32::try_from((start + i) % u64::from(usable)).unwrap_or(0) + 1;
            let ip = IpAddr::V4(Ipv4Addr::from(self.range.base + offset));
            if !self.taken.contains(&ip) && !self.explicit.contains_key(&ip) {
                self.taken.insert(ip);
                self.by_host.insert(host.to_owned(), ip);
                return Some(ip);
            }
        }
        None
    }

    /// Frees the VIP of a deleted Service (or one that now sets `clusterIP`).
    pub(crate) fn release(&mut self, host: &str) {
        if let Some(ip) = self.by_host.remove(host) {
            self.taken.remove(&ip);
        }
    }

    /// True when an explicit `clusterIP` lies in the allocation range.
    pub(crate) fn in_range(&self, ip: IpAddr) -> bool {
        self.range.contains(ip)
    }
}

/// FNV-1a, 64 bit: a fixed hash, so VIPs do not change with the Rust version.
fn fnv1a(bytes: &[u8]) -> u64 {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in bytes {
        h ^= u64::from(*b);
        h = h.wrapping_mul(0x0000_0100_0000_01b3);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vips_are_stable_and_distinct() {
        let mut a = VipAllocator::new(VipRange::default());
        let r = a.get_or_allocate("reviews.default.svc.cluster.local");
        let d = a.get_or_allocate("details.default.svc.cluster.local");
        assert_ne!(r, d);
        assert_eq!(a.get_or_allocate("reviews.default.svc.cluster.local"), r);
        let mut b = VipAllocator::new(VipRange::default());
        assert_eq!(b.get_or_allocate("reviews.default.svc.cluster.local"), r);
        a.release("reviews.default.svc.cluster.local");
        assert_eq!(a.get_or_allocate("reviews.default.svc.cluster.local"), r);
    }

    #[test]
    fn small_range_fills_up_and_skips_claims() {
        let range: VipRange = "192.168.5.0/30".parse().unwrap();
        let mut a = VipAllocator::new(range);
        a.claim("192.168.5.1".parse().unwrap());
        assert_eq!(
            a.get_or_allocate("a").map(|ip| ip.to_string()),
            Some("192.168.5.2".to_string())
        );
        assert_eq!(a.get_or_allocate("b"), None);
    }

    #[test]
    fn bad_ranges_are_explained() {
        assert_eq!(
            "10.96.0.0".parse::<VipRange>().unwrap_err().to_string(),
            "service VIP range `10.96.0.0` is not an IPv4 CIDR; write it as `10.96.0.0/16`"
        );
        assert!(matches!(
            "10.0.0.0/31".parse::<VipRange>(),
            Err(VipRangeError::Size(_))
        ));
    }
}
