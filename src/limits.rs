//! Rate limits: per client on the endpoints that authenticate clients
//! (token, PAR, CIBA, introspection, revocation), per peer address on the
//! same endpoints before any work is done, and per address on the login
//! forms (each login costs an argon2 hash). GCRA limiters (governor), in
//! memory per node: with N nodes behind a balancer the effective limit is up
//! to N times the setting. 0 turns a limit off.

use std::net::IpAddr;
use std::num::NonZeroU32;
use std::time::Duration;

use governor::clock::{Clock, DefaultClock};
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};

use crate::config::Config;

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, DefaultClock>;

/// The limiters of one node.
pub struct RateLimits {
    client: Option<Keyed<String>>,
    address: Option<Keyed<IpAddr>>,
    login: Option<Keyed<IpAddr>>,
    clock: DefaultClock,
}

fn limiter<K: std::hash::Hash + Eq + Clone>(quota: Option<Quota>) -> Option<Keyed<K>> {
    quota.map(RateLimiter::keyed)
}

fn per_second(n: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(n)?;
    let burst = NonZeroU32::new(n.saturating_mul(2)).unwrap_or(rate);
    Some(Quota::per_second(rate).allow_burst(burst))
}

fn per_minute(n: u32) -> Option<Quota> {
    let rate = NonZeroU32::new(n)?;
    Some(Quota::per_minute(rate).allow_burst(rate))
}

/// Why a request was refused: wait this long.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited(pub Duration);

impl Limited {
    /// Whole seconds to wait (at least 1), for `Retry-After`.
    pub fn retry_after(self) -> u64 {
        self.0.as_secs() + u64::from(self.0.subsec_nanos() > 0)
    }
}

impl RateLimits {
    /// The limits configured.
    pub fn new(config: &Config) -> Self {
        RateLimits {
            client: limiter(per_second(config.rate_limit_client)),
            address: limiter(per_second(config.rate_limit_address)),
            login: limiter(per_minute(config.rate_limit_login)),
            clock: DefaultClock::default(),
        }
    }

    fn check<K: std::hash::Hash + Eq + Clone>(
        &self,
        l: Option<&Keyed<K>>,
        key: &K,
    ) -> Result<(), Limited> {
        match l.map(|l| l.check_key(key)) {
            Some(Err(not_until)) => Err(Limited(not_until.wait_time_from(self.clock.now()))),
            _ => Ok(()),
        }
    }

    /// One request of an authenticated client.
    pub fn client(&self, client_id: &str) -> Result<(), Limited> {
        self.check(self.client.as_ref(), &client_id.to_owned())
    }

    /// One request to a client-authenticating endpoint from an address.
    pub fn address(&self, ip: IpAddr) -> Result<(), Limited> {
        self.check(self.address.as_ref(), &ip)
    }

    /// One login attempt from an address.
    pub fn login(&self, ip: IpAddr) -> Result<(), Limited> {
        self.check(self.login.as_ref(), &ip)
    }

    /// Forgets keys whose limits are back to full (called periodically).
    pub fn prune(&self) {
        if let Some(l) = &self.client {
            l.retain_recent();
        }
        if let Some(l) = &self.address {
            l.retain_recent();
        }
        if let Some(l) = &self.login {
            l.retain_recent();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config(client: u32, login: u32) -> Config {
        let mut c = Config::resolve(Default::default(), Default::default()).unwrap();
        c.rate_limit_client = client;
        c.rate_limit_login = login;
        c
    }

    #[test]
    fn bursts_then_refuses_with_a_wait() {
        let l = RateLimits::new(&config(5, 3));
        for _ in 0..10 {
            assert!(l.client("a").is_ok());
        }
        let Err(wait) = l.client("a") else {
            panic!("not limited")
        };
        assert!(wait.retry_after() >= 1);
        // Another client has its own budget.
        assert!(l.client("b").is_ok());
        let ip: IpAddr = "192.0.2.1".parse().unwrap();
        for _ in 0..3 {
            assert!(l.login(ip).is_ok());
        }
        assert!(l.login(ip).is_err());
        assert!(l.login("192.0.2.2".parse().unwrap()).is_ok());
    }

    #[test]
    fn zero_turns_a_limit_off() {
        let l = RateLimits::new(&config(0, 0));
        for _ in 0..10_000 {
            assert!(l.client("a").is_ok());
        }
    }
}
