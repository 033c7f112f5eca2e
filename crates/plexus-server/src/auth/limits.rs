//! Login attempts are limited per username and per client address: after too many
//! failures in a window, further attempts are refused (429) until the window ends, even
//! with the right password, so guessing costs an attacker time, not just requests.

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

impl LoginLimiter {
    /// `Err(seconds to wait)` when the user or the address used up its failures.
    pub fn check(&self, user: &str, address: &str) -> Result<(), u64> {
        let map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        let now = Instant::now();
        let wait = |key: String, max: u32| -> Option<u64> {
            let (n, start) = map.get(&key)?;
            let left = WINDOW.checked_sub(now.duration_since(*start))?;
            (*n >= max).then(|| left.as_secs().max(1))
        };
        match wait(format!("u:{user}"), MAX_FAILURES_PER_USER)
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
        for key in [format!("u:{user}"), format!("a:{address}")] {
            let e = map.entry(key).or_insert((0, now));
            if now.duration_since(e.1) >= WINDOW {
                *e = (0, now);
            }
            e.0 += 1;
        }
    }

    /// A successful login clears the user's failures (not the address's).
    pub fn succeeded(&self, user: &str) {
        let mut map = self.failures.lock().unwrap_or_else(|p| p.into_inner());
        map.remove(&format!("u:{user}"));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn failures_lock_the_user_then_the_address() {
        let l = LoginLimiter::default();
        for _ in 0..MAX_FAILURES_PER_USER {
            assert!(l.check("ada", "10.0.0.1").is_ok());
            l.failed("ada", "10.0.0.1");
        }
        let wait = l.check("ada", "10.0.0.9").unwrap_err();
        assert!(wait > 0 && wait <= WINDOW.as_secs());
        assert!(
            l.check("grace", "10.0.0.9").is_ok(),
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
