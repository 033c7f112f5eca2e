//! The cache plugins keep through the engine (CacheGet/CacheSet): bytes by key, per
//! tenant and plugin, with a time to live, bounded in total size (the oldest entries go
//! first). It lives in memory: a cache, not a store — a restart empties it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

type Key = (String, String, String);

pub struct PluginCache {
    inner: Mutex<Entries>,
    capacity: usize,
}

#[derive(Default)]
struct Entries {
    map: HashMap<Key, (Vec<u8>, Option<Instant>, u64)>,
    /// Keys in the order they were set, with the generation of that set.
    order: VecDeque<(Key, u64)>,
    bytes: usize,
    generation: u64,
}

impl PluginCache {
    /// A cache holding at most `capacity` bytes of values.
    pub fn new(capacity: usize) -> Self {
        PluginCache {
            inner: Mutex::default(),
            capacity,
        }
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Entries> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The value under `key`, unless it expired. An empty value is a miss (the Go SDK
    /// treats it as one).
    pub fn get(&self, tenant: &str, plugin: &str, key: &str) -> Option<Vec<u8>> {
        let k = (tenant.to_owned(), plugin.to_owned(), key.to_owned());
        let mut e = self.lock();
        let expired = match e.map.get(&k) {
            Some((_, Some(until), _)) => Instant::now() >= *until,
            Some(_) => false,
            None => return None,
        };
        if expired {
            if let Some((v, _, _)) = e.map.remove(&k) {
                e.bytes -= v.len();
            }
            return None;
        }
        e.map
            .get(&k)
            .map(|(v, _, _)| v.clone())
            .filter(|v| !v.is_empty())
    }

    /// Keeps `value`; `false` when it alone is larger than the whole cache.
    pub fn set(
        &self,
        tenant: &str,
        plugin: &str,
        key: &str,
        value: Vec<u8>,
        ttl: Option<Duration>,
    ) -> bool {
        if value.len() > self.capacity {
            return false;
        }
        let k: Key = (tenant.to_owned(), plugin.to_owned(), key.to_owned());
        let mut e = self.lock();
        e.generation += 1;
        let generation = e.generation;
        e.bytes += value.len();
        if let Some((old, _, _)) = e.map.insert(
            k.clone(),
            (value, ttl.map(|t| Instant::now() + t), generation),
        ) {
            e.bytes -= old.len();
        }
        e.order.push_back((k, generation));
        while e.bytes > self.capacity {
            let Some((oldest, g)) = e.order.pop_front() else {
                break;
            };
            // Only the newest set of a key counts; older ones are stale entries.
            if e.map
                .get(&oldest)
                .is_some_and(|(_, _, current)| *current == g)
                && let Some((v, _, _)) = e.map.remove(&oldest)
            {
                e.bytes -= v.len();
            }
        }
        // Stale order entries are dropped as they reach the front; keep the queue from
        // growing without bound when one key is set over and over.
        if e.order.len() > 2 * e.map.len() + 1024 {
            let Entries { map, order, .. } = &mut *e;
            order.retain(|(k, g)| map.get(k).is_some_and(|(_, _, c)| c == g));
        }
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_are_kept_per_tenant_and_plugin_and_expire() {
        let c = PluginCache::new(1024);
        assert!(c.set("t1", "p", "k", vec![1, 2, 3], None));
        assert_eq!(c.get("t1", "p", "k"), Some(vec![1, 2, 3]));
        assert_eq!(c.get("t2", "p", "k"), None, "another tenant");
        assert_eq!(c.get("t1", "q", "k"), None, "another plugin");
        c.set("t1", "p", "short", vec![9], Some(Duration::from_millis(1)));
        std::thread::sleep(Duration::from_millis(5));
        assert_eq!(c.get("t1", "p", "short"), None);
        c.set("t1", "p", "empty", vec![], None);
        assert_eq!(c.get("t1", "p", "empty"), None, "empty is a miss");
    }

    #[test]
    fn the_oldest_values_go_when_the_cache_is_full() {
        let c = PluginCache::new(10);
        c.set("t", "p", "a", vec![0; 4], None);
        c.set("t", "p", "b", vec![0; 4], None);
        c.set("t", "p", "a", vec![1; 4], None);
        c.set("t", "p", "c", vec![0; 4], None);
        assert_eq!(c.get("t", "p", "b"), None, "b was the oldest");
        assert_eq!(c.get("t", "p", "a"), Some(vec![1; 4]));
        assert!(c.get("t", "p", "c").is_some());
        assert!(!c.set("t", "p", "huge", vec![0; 11], None));
    }
}
