//! Timers for every run in one heap: a sleeping step costs a heap entry, not a task.

use crate::pools::RunId;
use plexus_core::machine::{Millis, TimerPurpose, Unit};
use std::cmp::Reverse;
use std::collections::BinaryHeap;

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
struct Entry {
    at: Millis,
    seq: u64,
    run: RunId,
    step: usize,
    item: Option<u32>,
    attempt: u32,
    purpose: u8,
}

#[derive(Debug, Default)]
pub struct Timers {
    heap: BinaryHeap<Reverse<Entry>>,
    seq: u64,
}

fn purpose_code(p: TimerPurpose) -> u8 {
    match p {
        TimerPurpose::Retry => 0,
        TimerPurpose::Elapsed => 1,
        TimerPurpose::Timeout => 2,
    }
}

fn purpose_of(code: u8) -> TimerPurpose {
    match code {
        0 => TimerPurpose::Retry,
        1 => TimerPurpose::Elapsed,
        _ => TimerPurpose::Timeout,
    }
}

pub struct Due {
    pub run: RunId,
    pub unit: Unit,
    pub attempt: u32,
    pub purpose: TimerPurpose,
}

impl Timers {
    pub fn set(&mut self, at: Millis, run: RunId, unit: Unit, attempt: u32, purpose: TimerPurpose) {
        self.seq += 1;
        self.heap.push(Reverse(Entry {
            at,
            seq: self.seq,
            run,
            step: unit.step,
            item: unit.item,
            attempt,
            purpose: purpose_code(purpose),
        }));
    }

    pub fn next_at(&self) -> Option<Millis> {
        self.heap.peek().map(|Reverse(e)| e.at)
    }

    pub fn pop_due(&mut self, now: Millis) -> Vec<Due> {
        let mut due = Vec::new();
        while self.heap.peek().is_some_and(|Reverse(e)| e.at <= now) {
            let Reverse(e) = self.heap.pop().expect("peeked");
            due.push(Due {
                run: e.run,
                unit: Unit {
                    step: e.step,
                    item: e.item,
                },
                attempt: e.attempt,
                purpose: purpose_of(e.purpose),
            });
        }
        due
    }
}
