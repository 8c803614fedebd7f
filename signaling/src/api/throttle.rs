//! Failed sign-ins per username: after a few in a short window the username is refused for
//! the rest of it, so a password cannot be guessed at network speed.
//!
//! Keyed by username rather than address: the attack to stop is many guesses at one account,
//! and officials of a whole province may share one address behind a gateway.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

/// Failed sign-ins allowed per username in one window.
pub const MAX_FAILURES: u32 = 5;
/// The window, in milliseconds.
pub const WINDOW_MS: i64 = 5 * 60 * 1000;
/// Usernames tracked at most; beyond it the oldest windows are forgotten first.
const MAX_TRACKED: usize = 10_000;

/// Shared by every request handler (cheap to clone).
#[derive(Debug, Clone, Default)]
pub struct LoginThrottle {
    failures: Arc<Mutex<HashMap<String, (u32, i64)>>>,
}

impl LoginThrottle {
    /// Whether `username` may try now; `Err` carries the seconds until it may.
    pub fn check(&self, username: &str, now_ms: i64) -> Result<(), i64> {
        let Ok(failures) = self.failures.lock() else {
            return Ok(());
        };
        match failures.get(&key(username)) {
            Some((count, since)) if *count >= MAX_FAILURES && now_ms - since < WINDOW_MS => {
                Err((WINDOW_MS - (now_ms - since)).div_euclid(1000) + 1)
            }
            _ => Ok(()),
        }
    }

    /// Counts a failed sign-in.
    pub fn failed(&self, username: &str, now_ms: i64) {
        let Ok(mut failures) = self.failures.lock() else {
            return;
        };
        if failures.len() >= MAX_TRACKED {
            failures.retain(|_, (_, since)| now_ms - *since < WINDOW_MS);
        }
        let entry = failures.entry(key(username)).or_insert((0, now_ms));
        if now_ms - entry.1 >= WINDOW_MS {
            *entry = (0, now_ms);
        }
        entry.0 += 1;
    }

    /// A successful sign-in clears the count.
    pub fn succeeded(&self, username: &str) {
        if let Ok(mut failures) = self.failures.lock() {
            failures.remove(&key(username));
        }
    }
}

fn key(username: &str) -> String {
    username.trim().to_lowercase()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_username_is_refused_after_repeated_failures_until_the_window_ends() {
        let throttle = LoginThrottle::default();
        for _ in 0..MAX_FAILURES {
            assert!(throttle.check("Admin", 0).is_ok());
            throttle.failed("Admin", 0);
        }
        assert!(
            throttle.check("admin", 1_000).is_err(),
            "the same account, any case"
        );
        assert!(throttle.check("someone-else", 1_000).is_ok());
        assert!(throttle.check("admin", WINDOW_MS + 1).is_ok());
        throttle.succeeded("admin");
        assert!(throttle.check("admin", 1_000).is_ok());
    }
}
