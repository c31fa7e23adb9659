//! Choosing among weighted routes and among a route's endpoints: round robin, least
//! request (two random choices), random and passthrough, with per-endpoint counts of
//! active connections.

use std::collections::hash_map::RandomState;
use std::hash::BuildHasher;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, OnceLock};

use crate::config::{Endpoint, EndpointTls, LoadBalancer};

/// A uniformly distributed 64-bit value.
///
/// SipHash keyed with the process's random `RandomState` keys over a counter: a keyed
/// PRF of distinct inputs, so the outputs are independent and unpredictable enough for
/// load balancing, without a new dependency or a lock.
pub(crate) fn random_u64() -> u64 {
    static KEYS: OnceLock<RandomState> = OnceLock::new();
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    KEYS.get_or_init(RandomState::new).hash_one(n)
}

/// A uniform value in `0..n` (`n > 0`), by multiply-shift: no modulo bias worth
/// mentioning (at most `n / 2^64`).
pub(crate) fn random_below(n: u64) -> u64 {
    ((u128::from(random_u64()) * u128::from(n)) >> 64) as u64
}

/// The index whose weight interval contains `r` (`r < sum of weights`); weights of 0
/// are never chosen. `None` when every weight is 0.
pub(crate) fn pick_weighted(weights: impl IntoIterator<Item = u32>, r: u64) -> Option<usize> {
    let mut upto = 0u64;
    for (i, w) in weights.into_iter().enumerate() {
        upto += u64::from(w);
        if r < upto {
            return Some(i);
        }
    }
    None
}

/// Counts one active connection to an endpoint (or through a service port) for as long
/// as it lives.
#[derive(Debug)]
pub(crate) struct ActiveGuard(Arc<AtomicUsize>);

impl ActiveGuard {
    /// Counts one more.
    pub(crate) fn acquire(counter: &Arc<AtomicUsize>) -> Self {
        counter.fetch_add(1, Ordering::AcqRel);
        Self(counter.clone())
    }

    /// Counts one more unless `max` are already active.
    pub(crate) fn try_acquire(counter: &Arc<AtomicUsize>, max: u32) -> Option<Self> {
        let max = max as usize;
        counter
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < max).then_some(n + 1)
            })
            .ok()
            .map(|_| Self(counter.clone()))
    }
}

impl Drop for ActiveGuard {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// One endpoint to try, with the counter of its active connections.
#[derive(Debug)]
pub(crate) struct Candidate {
    pub(crate) endpoint: Endpoint,
    pub(crate) load: Option<Arc<AtomicUsize>>,
}

/// The endpoints of one route and how to choose among them.
#[derive(Debug)]
pub(crate) struct EndpointPool {
    pub(crate) endpoints: Vec<Endpoint>,
    /// Active connections per endpoint (same order), shared by every pool that lists
    /// the address and kept across configuration updates.
    pub(crate) loads: Vec<Arc<AtomicUsize>>,
    pub(crate) load_balancer: LoadBalancer,
    next: AtomicUsize,
}

impl EndpointPool {
    pub(crate) fn new(
        endpoints: Vec<Endpoint>,
        loads: Vec<Arc<AtomicUsize>>,
        load_balancer: LoadBalancer,
    ) -> Self {
        Self {
            endpoints,
            loads,
            load_balancer,
            next: AtomicUsize::new(0),
        }
    }

    /// The endpoints to try, in order: the balancer's choice first, then the next ones,
    /// at most `attempts`. `original` is the connection's original destination (captured
    /// traffic only); PASSTHROUGH sends the connection there and nowhere else, and falls
    /// back to round robin without one.
    pub(crate) fn attempt_order(
        &self,
        original: Option<SocketAddr>,
        attempts: usize,
    ) -> Vec<Candidate> {
        if let (LoadBalancer::Passthrough, Some(addr)) = (self.load_balancer, original) {
            // A listed endpoint keeps its TLS settings; any other address is reached in
            // plaintext, as Envoy's original-destination cluster does.
            let listed = self.endpoints.iter().position(|e| e.address == addr);
            return vec![match listed {
                Some(i) => self.candidate(i),
                None => Candidate {
                    endpoint: Endpoint {
                        address: addr,
                        tls: EndpointTls::Disable,
                        identity: None,
                    },
                    load: None,
                },
            }];
        }
        let n = self.endpoints.len();
        if n == 0 {
            return Vec::new();
        }
        let start = match self.load_balancer {
            LoadBalancer::RoundRobin | LoadBalancer::Passthrough => {
                self.next.fetch_add(1, Ordering::Relaxed) % n
            }
            LoadBalancer::Random => random_below(n as u64) as usize,
            LoadBalancer::LeastRequest => self.least_loaded_of_two(),
        };
        (0..attempts.min(n))
            .map(|i| self.candidate((start + i) % n))
            .collect()
    }

    /// Power of two choices: two distinct random endpoints, the one with fewer active
    /// connections wins (the first on a tie).
    fn least_loaded_of_two(&self) -> usize {
        let n = self.endpoints.len();
        if n == 1 {
            return 0;
        }
        let a = random_below(n as u64) as usize;
        let mut b = random_below(n as u64 - 1) as usize;
        if b >= a {
            b += 1;
        }
        let load = |i: usize| self.loads.get(i).map_or(0, |l| l.load(Ordering::Acquire));
        if load(b) < load(a) {
            b
        } else {
            a
        }
    }

    fn candidate(&self, i: usize) -> Candidate {
        Candidate {
            endpoint: self.endpoints[i].clone(),
            load: self.loads.get(i).cloned(),
        }
    }
}
