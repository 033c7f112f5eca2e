//! Login attempts are limited per username *from one client address*, and per address:
//! after too many failures in a window, further attempts from there are refused (429)
//! until the window ends, even with the right password, so guessing costs an attacker
//! time, not just requests. The user's limit is keyed with the address so that nobody
//! can lock a user out by failing on purpose: the real user, from their own address,
//! still signs in.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub const WINDOW: Duration = Duration::from_secs(300);
pub const MAX_FAILURES_PER_USER: u32 = 5;
pub const MAX_FAILURES_PER_ADDRESS: u32 = 20;

#[derive(Default)]
pub struct LoginLimiter {
    failures: Mutex<HashMap<String, (u32, Instant)>>,
}

/// Usernames are the same whatever their case, so their limits are too.
fn user_key(user: &str, address: &str) -> String {
    format!("u:{}|{address}", user.to_ascii_lowercase())
}

impl LoginLimiter {
    /// `Err(seconds to wait)` when the user from this address, or the address, used up
    /// its failures.
    pub fn check(&self, user: &str, address: &str) -> Result<(), u64> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let wait = |key: String, max: u32| -> Option<u64> {
            let (n, start) = map.get(&key)?;
            let left = WINDOW.checked_sub(now.duration_since(*start))?;
            (*n >= max).then(|| left.as_secs().max(1))
        };
        match wait(user_key(user, address), MAX_FAILURES_PER_USER)
            .or_else(|| wait(format!("a:{address}"), MAX_FAILURES_PER_ADDRESS))
        {
            Some(secs) => Err(secs),
            None => Ok(()),
        }
    }

    pub fn failed(&self, user: &str, address: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        if map.len() > 100_000 {
            map.retain(|_, (_, start)| now.duration_since(*start) < WINDOW);
        }
        for key in [user_key(user, address), format!("a:{address}")] {
            let e = map.entry(key).or_insert((0, now));
            if now.duration_since(e.1) >= WINDOW {
                *e = (0, now);
            }
            e.0 += 1;
        }
    }

    /// A successful login clears the user's failures from that address (not the
    /// address's own count).
    pub fn succeeded(&self, user: &str, address: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&user_key(user, address));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_lock_the_user_at_that_address_then_the_address() {
        let l = LoginLimiter::default();
        for _ in 0..MAX_FAILURES_PER_USER {
            assert!(l.check("ada", "10.0.0.1").is_ok());
            l.failed("ADA", "10.0.0.1");
        }
        let wait = l.check("ada", "10.0.0.1").unwrap_err();
        assert!(wait > 0 && wait <= WINDOW.as_secs());
        assert!(
            l.check("ada", "10.0.0.9").is_ok(),
            "failures elsewhere do not lock the user out"
        );
        assert!(
            l.check("grace", "10.0.0.1").is_ok(),
            "other users are not locked"
        );
        for i in 0..MAX_FAILURES_PER_ADDRESS {
            l.failed(&format!("u{i}"), "10.0.0.2");
        }
        assert!(
            l.check("someone-new", "10.0.0.2").is_err(),
            "the address is locked"
        );
    }
}

/// Refused credentials, aggregated so that a flood of bad tokens cannot fill the audit
/// log, without losing count: the first refusal of an (address, reason) in a window is
/// audited at once, the rest are counted and audited as one record when the window is
/// flushed (every few seconds by the server, and when it stops).
#[derive(Default)]
pub struct RefusalLog {
    pending: Mutex<HashMap<(String, String), (Instant, u64)>>,
}

impl RefusalLog {
    /// Whether this refusal is the first of its window (audit it now).
    pub fn note(&self, address: &str, reason: &str) -> bool {
        let mut map = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        match map.get_mut(&(address.to_owned(), reason.to_owned())) {
            Some((_, later)) => {
                *later += 1;
                false
            }
            None => {
                map.insert((address.to_owned(), reason.to_owned()), (Instant::now(), 0));
                true
            }
        }
    }

    /// Windows at least `age` old (all of them for zero): (address, reason, refusals
    /// not audited yet). They are closed; the next refusal opens a new one.
    pub fn drain(&self, age: Duration) -> Vec<(String, String, u64)> {
        let mut map = self.pending.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let done: Vec<(String, String)> = map
            .iter()
            .filter(|(_, (start, _))| now.duration_since(*start) >= age)
            .map(|(k, _)| k.clone())
            .collect();
        done.into_iter()
            .filter_map(|k| {
                let (_, n) = map.remove(&k)?;
                (n > 0).then_some((k.0, k.1, n))
            })
            .collect()
    }
}

#[cfg(test)]
mod refusal_tests {
    use super::*;

    #[test]
    fn a_flood_is_one_record_now_and_one_count_later() {
        let log = RefusalLog::default();
        assert!(log.note("10.0.0.1", "bad token"));
        for _ in 0..999 {
            assert!(!log.note("10.0.0.1", "bad token"));
        }
        assert!(
            log.note("10.0.0.2", "bad token"),
            "each address has its window"
        );
        assert!(
            log.drain(Duration::from_secs(60)).is_empty(),
            "windows still open"
        );
        let mut drained = log.drain(Duration::ZERO);
        drained.sort();
        assert_eq!(drained, vec![("10.0.0.1".into(), "bad token".into(), 999)]);
        assert!(log.note("10.0.0.1", "bad token"), "a new window");
    }
}
