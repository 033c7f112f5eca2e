//! Executor pools: a queued unit is an entry in a queue, never a task or a thread. Slots are
//! granted first-come first-served and all at once (`pool_slots`), so a large request is
//! not starved by a stream of small ones.

use plexus_core::machine::Unit;
use std::collections::{BTreeMap, HashMap, VecDeque};

pub type RunId = std::sync::Arc<str>;

#[derive(Debug)]
struct Pool {
    capacity: u32,
    used: u32,
    queue: VecDeque<(RunId, Unit, u32)>,
}

#[derive(Debug, Default)]
pub struct Pools {
    pools: HashMap<String, Pool>,
    held: HashMap<(RunId, Unit), (String, u32)>,
}

#[derive(Debug, Clone, serde::Serialize)]
pub struct PoolStats {
    pub name: String,
    pub capacity: u32,
    pub used: u32,
    pub queued: usize,
}

impl Pools {
    pub fn new(capacities: &BTreeMap<String, u32>) -> Self {
        let pools = capacities
            .iter()
            .map(|(name, &capacity)| {
                (
                    name.clone(),
                    Pool {
                        capacity: capacity.max(1),
                        used: 0,
                        queue: VecDeque::new(),
                    },
                )
            })
            .collect();
        Pools {
            pools,
            held: HashMap::new(),
        }
    }

    /// Queues a request. Unknown pools (a manifest validated against other settings) are
    /// created with one slot so the run still makes progress.
    pub fn enqueue(&mut self, run: RunId, unit: Unit, pool: &str, slots: u32) {
        let p = self.pools.entry(pool.to_owned()).or_insert_with(|| Pool {
            capacity: 1,
            used: 0,
            queue: VecDeque::new(),
        });
        let slots = slots.clamp(1, p.capacity);
        p.queue.push_back((run, unit, slots));
    }

    /// Grants queued requests that fit, in order, across all pools.
    pub fn grant(&mut self) -> Vec<(RunId, Unit)> {
        let mut granted = Vec::new();
        for (name, p) in &mut self.pools {
            while let Some((_, _, slots)) = p.queue.front() {
                if p.used + slots > p.capacity {
                    break;
                }
                let (run, unit, slots) = p.queue.pop_front().expect("front exists");
                p.used += slots;
                self.held.insert((run.clone(), unit), (name.clone(), slots));
                granted.push((run, unit));
            }
        }
        granted
    }

    /// Releases the unit's slots, or removes its request if it is still queued.
    pub fn release(&mut self, run: &RunId, unit: Unit) {
        if let Some((pool, slots)) = self.held.remove(&(run.clone(), unit)) {
            if let Some(p) = self.pools.get_mut(&pool) {
                p.used = p.used.saturating_sub(slots);
            }
            return;
        }
        for p in self.pools.values_mut() {
            if let Some(pos) = p.queue.iter().position(|(r, u, _)| r == run && *u == unit) {
                p.queue.remove(pos);
                return;
            }
        }
    }

    pub fn stats(&self) -> Vec<PoolStats> {
        let mut s: Vec<PoolStats> = self
            .pools
            .iter()
            .map(|(name, p)| PoolStats {
                name: name.clone(),
                capacity: p.capacity,
                used: p.used,
                queued: p.queue.len(),
            })
            .collect();
        s.sort_by(|a, b| a.name.cmp(&b.name));
        s
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn u(step: usize) -> Unit {
        Unit { step, item: None }
    }

    #[test]
    fn grants_in_order_and_atomically() {
        let mut pools = Pools::new(&BTreeMap::from([("gpu".to_owned(), 4)]));
        let r: RunId = "r".into();
        pools.enqueue(r.clone(), u(0), "gpu", 3);
        pools.enqueue(r.clone(), u(1), "gpu", 3);
        pools.enqueue(r.clone(), u(2), "gpu", 1);
        assert_eq!(pools.grant(), vec![(r.clone(), u(0))]);
        // u(2) would fit but waits behind u(1): no starvation of the big request.
        assert!(pools.grant().is_empty());
        pools.release(&r, u(0));
        assert_eq!(pools.grant(), vec![(r.clone(), u(1)), (r.clone(), u(2))]);
        assert_eq!(pools.stats()[0].used, 4);
    }

    #[test]
    fn release_of_a_queued_request_removes_it() {
        let mut pools = Pools::new(&BTreeMap::from([("p".to_owned(), 1)]));
        let r: RunId = "r".into();
        pools.enqueue(r.clone(), u(0), "p", 1);
        pools.enqueue(r.clone(), u(1), "p", 1);
        pools.grant();
        pools.release(&r, u(1));
        pools.release(&r, u(0));
        assert!(pools.grant().is_empty());
        assert_eq!(pools.stats()[0].queued, 0);
    }
}
