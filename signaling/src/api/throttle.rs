//! Failed sign-ins, counted so that a password cannot be guessed at network speed and so that
//! nobody can lock the real owner out of their account.
//!
//! Three counts, each over a sliding five-minute window:
//! - per **source** (an IPv4 address, or an IPv6 /64): many failures from one source, whatever
//!   the usernames (a password sprayed across accounts), refuse that source for the rest of
//!   the window. The bound is generous, because officials of a whole province may share one
//!   address behind a gateway.
//! - per **username and source**: a few failures refuse that username from that source only.
//!   The owner, signing in from elsewhere, is not refused.
//! - per **username**, from every source: past a few failures each further attempt is held
//!   for a second before it is checked, never refused. Guessing from many addresses slows
//!   down; the owner waits a second.
//!
//! Failures are counted whether or not the username exists, so the throttle does not reveal
//! which accounts exist either. The password hashes themselves are bounded elsewhere
//! (`store::accounts`: a process-wide limit on hashes running and waiting).

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// Failures allowed per username from one source in one window.
pub const MAX_FAILURES_PER_ACCOUNT_AND_SOURCE: u32 = 5;
/// Failures allowed per source, any usernames, in one window.
pub const MAX_FAILURES_PER_SOURCE: u32 = 30;
/// Failures per username, from every source, after which each attempt is delayed.
pub const DELAY_AFTER_ACCOUNT_FAILURES: u32 = 5;
/// How long such an attempt is held before its password is checked.
pub const ACCOUNT_DELAY: Duration = Duration::from_secs(1);
/// The window, in milliseconds.
pub const WINDOW_MS: i64 = 5 * 60 * 1000;
/// Keys tracked per count at most; beyond it windows that ended are forgotten, then the
/// oldest.
const MAX_TRACKED: usize = 20_000;

/// Where a sign-in comes from: an IPv4 address or an IPv6 /64 (one host usually holds a whole
/// /64, so counting single IPv6 addresses would count nothing).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct Source(u128);

impl Source {
    pub fn new(ip: IpAddr) -> Self {
        match ip {
            IpAddr::V4(v4) => Self(u128::from(u32::from(v4))),
            IpAddr::V6(v6) => match v6.to_ipv4_mapped() {
                Some(v4) => Self(u128::from(u32::from(v4))),
                None => Self(u128::from(v6) & !((1u128 << 64) - 1) | 1 << 127),
            },
        }
    }
}

/// Why a sign-in is refused before its password is checked: the seconds to wait.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Refused {
    pub retry_after_s: i64,
}

/// What to do with an attempt that may go ahead.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Allowed {
    Now,
    /// Hold it this long first: its username failed often lately.
    After(Duration),
}

/// A count of failures in the window that started at `since`.
#[derive(Debug, Clone, Copy)]
struct Window {
    count: u32,
    since: i64,
}

#[derive(Debug)]
struct Counts<K> {
    windows: HashMap<K, Window>,
}

impl<K: Eq + Hash + Clone> Counts<K> {
    fn new() -> Self {
        Self {
            windows: HashMap::new(),
        }
    }

    /// The failures of `key` in the current window, and when that window ends.
    fn current(&self, key: &K, now_ms: i64) -> Option<(u32, i64)> {
        self.windows
            .get(key)
            .filter(|w| now_ms - w.since < WINDOW_MS)
            .map(|w| (w.count, w.since + WINDOW_MS))
    }

    fn add(&mut self, key: K, now_ms: i64) -> u32 {
        if self.windows.len() >= MAX_TRACKED && !self.windows.contains_key(&key) {
            self.windows.retain(|_, w| now_ms - w.since < WINDOW_MS);
            if self.windows.len() >= MAX_TRACKED
                && let Some(oldest) = self
                    .windows
                    .iter()
                    .min_by_key(|(_, w)| w.since)
                    .map(|(k, _)| k.clone())
            {
                self.windows.remove(&oldest);
            }
        }
        let window = self.windows.entry(key).or_insert(Window {
            count: 0,
            since: now_ms,
        });
        if now_ms - window.since >= WINDOW_MS {
            *window = Window {
                count: 0,
                since: now_ms,
            };
        }
        window.count += 1;
        window.count
    }

    fn clear(&mut self, key: &K) {
        self.windows.remove(key);
    }
}

#[derive(Debug)]
struct Failures {
    by_source: Counts<Source>,
    by_account_and_source: Counts<(String, Source)>,
    by_account: Counts<String>,
}

/// Shared by every request handler (cheap to clone).
#[derive(Debug, Clone)]
pub struct LoginThrottle {
    failures: Arc<Mutex<Failures>>,
}

impl Default for LoginThrottle {
    fn default() -> Self {
        Self {
            failures: Arc::new(Mutex::new(Failures {
                by_source: Counts::new(),
                by_account_and_source: Counts::new(),
                by_account: Counts::new(),
            })),
        }
    }
}

fn retry_after(ends_ms: i64, now_ms: i64) -> Refused {
    Refused {
        retry_after_s: (ends_ms - now_ms).div_euclid(1000) + 1,
    }
}

impl LoginThrottle {
    fn lock(&self) -> std::sync::MutexGuard<'_, Failures> {
        // The counts stay meaningful whatever panicked while they were held: a poisoned lock
        // must not open the throttle (nor close the server).
        self.failures.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Whether `username` may try from `source` now.
    pub fn check(&self, username: &str, source: Source, now_ms: i64) -> Result<Allowed, Refused> {
        let failures = self.lock();
        if let Some((count, ends)) = failures.by_source.current(&source, now_ms)
            && count >= MAX_FAILURES_PER_SOURCE
        {
            return Err(retry_after(ends, now_ms));
        }
        let account = key(username);
        if let Some((count, ends)) = failures
            .by_account_and_source
            .current(&(account.clone(), source), now_ms)
            && count >= MAX_FAILURES_PER_ACCOUNT_AND_SOURCE
        {
            return Err(retry_after(ends, now_ms));
        }
        match failures.by_account.current(&account, now_ms) {
            Some((count, _)) if count >= DELAY_AFTER_ACCOUNT_FAILURES => {
                Ok(Allowed::After(ACCOUNT_DELAY))
            }
            _ => Ok(Allowed::Now),
        }
    }

    /// Counts a failed sign-in; returns the username's failures from every source in the
    /// window (for the log).
    pub fn failed(&self, username: &str, source: Source, now_ms: i64) -> u32 {
        let mut failures = self.lock();
        let account = key(username);
        failures.by_source.add(source, now_ms);
        failures
            .by_account_and_source
            .add((account.clone(), source), now_ms);
        failures.by_account.add(account, now_ms)
    }

    /// A successful sign-in clears its username's count from its source.
    pub fn succeeded(&self, username: &str, source: Source) {
        self.lock()
            .by_account_and_source
            .clear(&(key(username), source));
    }
}

fn key(username: &str) -> String {
    username.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> Source {
        Source::new(text.parse().expect("ip"))
    }

    #[test]
    fn failures_refuse_the_source_not_the_owner() {
        let throttle = LoginThrottle::default();
        let attacker = ip("203.0.113.7");
        let owner = ip("198.51.100.20");
        for _ in 0..MAX_FAILURES_PER_ACCOUNT_AND_SOURCE {
            assert!(throttle.check("Admin", attacker, 0).is_ok());
            throttle.failed("Admin", attacker, 0);
        }
        assert!(
            throttle.check("admin", attacker, 1_000).is_err(),
            "the same account from the same source, any case"
        );
        // The owner, elsewhere, is only slowed down.
        assert_eq!(
            throttle.check("admin", owner, 1_000),
            Ok(Allowed::After(ACCOUNT_DELAY))
        );
        assert_eq!(
            throttle.check("someone-else", attacker, 1_000),
            Ok(Allowed::Now)
        );
        assert_eq!(
            throttle.check("admin", attacker, WINDOW_MS + 1),
            Ok(Allowed::Now)
        );
        throttle.succeeded("admin", attacker);
        assert!(throttle.check("admin", attacker, 1_000).is_ok());
    }

    #[test]
    fn spraying_usernames_from_one_source_refuses_the_source() {
        let throttle = LoginThrottle::default();
        let sprayer = ip("2001:db8::1");
        for n in 0..MAX_FAILURES_PER_SOURCE {
            assert!(throttle.check(&format!("user{n}"), sprayer, 0).is_ok());
            throttle.failed(&format!("user{n}"), sprayer, 0);
        }
        let refused = throttle.check("fresh-name", sprayer, 1_000);
        assert_eq!(
            refused,
            Err(Refused {
                retry_after_s: (WINDOW_MS - 1_000) / 1000 + 1
            })
        );
        // The rest of its /64 is the same source; another network is not.
        assert!(
            throttle
                .check("fresh-name", ip("2001:db8::99"), 1_000)
                .is_err()
        );
        assert!(
            throttle
                .check("fresh-name", ip("2001:db9::1"), 1_000)
                .is_ok()
        );
    }

    #[test]
    fn a_panic_while_counting_does_not_open_the_throttle() {
        let throttle = LoginThrottle::default();
        let source = ip("192.0.2.1");
        for _ in 0..MAX_FAILURES_PER_ACCOUNT_AND_SOURCE {
            throttle.failed("admin", source, 0);
        }
        let poisoner = throttle.clone();
        let _ = std::thread::spawn(move || {
            let _held = poisoner.failures.lock();
            panic!("poison the lock");
        })
        .join();
        assert!(throttle.failures.is_poisoned());
        assert!(throttle.check("admin", source, 1_000).is_err());
    }

    #[test]
    fn ipv4_mapped_addresses_are_their_ipv4_source() {
        assert_eq!(ip("::ffff:192.0.2.1"), ip("192.0.2.1"));
        assert_ne!(ip("::1"), ip("0.0.0.1"));
    }
}
