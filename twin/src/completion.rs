//! Answers of one ingest batch, finished in parts by many actors.
//!
//! A batch spread over thousands of asset actors used to cost one reply channel per asset and
//! a task gathering them. Instead the caller holds one [`Collector`] with a slot per command;
//! each asset gets a [`Part`] naming its slots, and whoever finishes that part (the asset for
//! rejections, the log writer once the asset's events are committed) fills them. The caller
//! is woken once, when the last slot is filled.
//!
//! A part that is dropped unanswered (an actor that stopped with the message in its mailbox)
//! fills its slots with an error, so a caller never waits for an answer that cannot come.

use std::sync::{Arc, Mutex, PoisonError};

use crate::asset::actor::{BatchReply, CommandError};

/// The slots of one batch (see the module documentation).
#[derive(Debug)]
pub struct Collector {
    slots: Mutex<Slots>,
    done: tokio::sync::Notify,
}

#[derive(Debug)]
struct Slots {
    results: Vec<Option<BatchReply>>,
    remaining: usize,
}

impl Collector {
    /// A collector of `len` answers.
    pub fn new(len: usize) -> Arc<Collector> {
        Arc::new(Collector {
            slots: Mutex::new(Slots { results: (0..len).map(|_| None).collect(), remaining: len }),
            done: tokio::sync::Notify::new(),
        })
    }

    /// Waits until every slot is filled and returns the answers in slot order.
    pub async fn wait(&self) -> Vec<BatchReply> {
        loop {
            // Registered before the check, so a fill in between is not missed.
            let notified = self.done.notified();
            {
                let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
                if slots.remaining == 0 {
                    return std::mem::take(&mut slots.results)
                        .into_iter()
                        .map(|r| r.expect("every slot is filled"))
                        .collect();
                }
            }
            notified.await;
        }
    }

    fn fill(&self, answers: impl Iterator<Item = (u32, BatchReply)>) {
        let finished = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            for (index, answer) in answers {
                let slot = &mut slots.results[index as usize];
                if slot.is_none() {
                    *slot = Some(answer);
                    slots.remaining -= 1;
                }
            }
            slots.remaining == 0
        };
        if finished {
            self.done.notify_one();
        }
    }
}

/// Some slots of one or more [`Collector`]s: the commands one actor answers, in order.
///
/// A part usually holds slots of one collector (one ingest batch); an asset actor that drains
/// several batches' commands at once holds one part made of several (see [`Part::absorb`]).
pub struct Part {
    /// Consecutive slots of one collector each, in command order.
    runs: Vec<(Arc<Collector>, Vec<u32>)>,
}

impl std::fmt::Debug for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Part").field("slots", &self.len()).finish_non_exhaustive()
    }
}

impl Part {
    /// The slots `indices` of `collector`.
    pub fn new(collector: Arc<Collector>, indices: Vec<u32>) -> Part {
        Part { runs: vec![(collector, indices)] }
    }

    /// A part that owes nothing (to [`absorb`](Part::absorb) others into).
    pub fn empty() -> Part {
        Part { runs: Vec::new() }
    }

    /// How many answers this part owes.
    pub fn len(&self) -> usize {
        self.runs.iter().map(|(_, indices)| indices.len()).sum()
    }

    /// Whether it owes none.
    pub fn is_empty(&self) -> bool {
        self.runs.iter().all(|(_, indices)| indices.is_empty())
    }

    /// Appends `other`'s slots after this part's: answers are then given to this part's
    /// commands first, then to `other`'s.
    pub fn absorb(&mut self, mut other: Part) {
        for (collector, indices) in other.runs.drain(..) {
            match self.runs.last_mut() {
                Some((last, mine)) if Arc::ptr_eq(last, &collector) => mine.extend(indices),
                _ => self.runs.push((collector, indices)),
            }
        }
    }

    /// Splits off the slots of the commands from position `at` on (this part keeps the
    /// first `at`): for commands handed on unanswered.
    pub fn split_off(&mut self, at: usize) -> Part {
        let mut rest = Part::empty();
        let mut kept = 0;
        let mut runs = std::mem::take(&mut self.runs).into_iter();
        for (collector, mut indices) in runs.by_ref() {
            if kept + indices.len() <= at {
                kept += indices.len();
                self.runs.push((collector, indices));
                continue;
            }
            let tail = indices.split_off(at - kept);
            if !indices.is_empty() {
                self.runs.push((Arc::clone(&collector), indices));
            }
            rest.runs.push((collector, tail));
            break;
        }
        rest.runs.extend(runs);
        rest
    }

    /// Splits the part by `keys` (one key per slot, in order) into one part per key, in
    /// the order the keys first appear; with each, the positions of its slots in this part.
    pub fn split<K: Eq + std::hash::Hash + Clone>(mut self, keys: &[K]) -> Vec<(K, Vec<usize>, Part)> {
        let runs = std::mem::take(&mut self.runs);
        let mut groups: Vec<(K, Vec<usize>, Part)> = Vec::new();
        let mut at: rustc_hash::FxHashMap<K, usize> =
            rustc_hash::FxHashMap::with_capacity_and_hasher(keys.len(), Default::default());
        let mut keys = keys.iter();
        let mut position = 0;
        for (collector, indices) in runs {
            let mut unkeyed = Vec::new();
            for index in indices {
                let Some(key) = keys.next() else {
                    // Slots without a key stay with this part, answered with an error when it
                    // drops.
                    unkeyed.push(index);
                    continue;
                };
                let group = *at.entry(key.clone()).or_insert_with(|| {
                    groups.push((key.clone(), Vec::new(), Part::empty()));
                    groups.len() - 1
                });
                let (_, positions, part) = &mut groups[group];
                positions.push(position);
                match part.runs.last_mut() {
                    Some((last, mine)) if Arc::ptr_eq(last, &collector) => mine.push(index),
                    _ => part.runs.push((Arc::clone(&collector), vec![index])),
                }
                position += 1;
            }
            if !unkeyed.is_empty() {
                self.runs.push((collector, unkeyed));
            }
        }
        groups
    }

    /// Answers the part's commands in order; slots left without an answer get an error.
    pub fn answer(mut self, answers: impl IntoIterator<Item = BatchReply>) {
        let mut answers = answers.into_iter();
        for (collector, indices) in std::mem::take(&mut self.runs) {
            collector.fill(indices.into_iter().map(|index| {
                let answer = answers.next().unwrap_or_else(|| Err(unanswered().into()));
                (index, answer)
            }));
        }
    }
}

fn unanswered() -> CommandError {
    CommandError::Storage("the asset actor stopped before answering".into())
}

impl Drop for Part {
    fn drop(&mut self) {
        for (collector, indices) in std::mem::take(&mut self.runs) {
            if !indices.is_empty() {
                collector.fill(indices.into_iter().map(|index| (index, Err(unanswered().into()))));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn parts_fill_their_slots_and_a_dropped_part_answers_with_an_error() {
        let collector = Collector::new(5);
        let first = Part::new(Arc::clone(&collector), vec![4, 0]);
        let second = Part::new(Arc::clone(&collector), vec![1, 3]);
        let third = Part::new(Arc::clone(&collector), vec![2]);
        let waiter = tokio::spawn({
            let collector = Arc::clone(&collector);
            async move { collector.wait().await }
        });
        first.answer([Ok(40), Ok(0)]);
        // One answer short: the second slot gets the error.
        second.answer([Ok(1)]);
        drop(third);
        let answers = waiter.await.unwrap();
        let shown: Vec<String> = answers
            .iter()
            .map(|a| match a {
                Ok(n) => n.to_string(),
                Err(failure) => failure.error.to_string(),
            })
            .collect();
        let stopped = "storing the events failed: the asset actor stopped before answering";
        assert_eq!(shown, ["0", "1", stopped, stopped, "40"]);
    }

    #[tokio::test]
    async fn a_part_made_of_several_batches_splits_and_answers_each_batch_in_order() {
        let (first, second) = (Collector::new(3), Collector::new(2));
        let mut part = Part::new(Arc::clone(&first), vec![2, 0, 1]);
        part.absorb(Part::new(Arc::clone(&second), vec![1, 0]));
        assert_eq!(part.len(), 5);
        // Keys per slot, in order: a, b, a | b, a.
        let groups = part.split(&["a", "b", "a", "b", "a"]);
        let keys: Vec<_> = groups.iter().map(|(key, positions, part)| (*key, positions.clone(), part.len())).collect();
        assert_eq!(keys, [("a", vec![0, 2, 4], 3), ("b", vec![1, 3], 2)]);
        for (key, positions, part) in groups {
            part.answer(positions.iter().map(|&p| if key == "a" { Ok(p) } else { Ok(100 + p) }));
        }
        let shown = |answers: Vec<BatchReply>| answers.into_iter().map(|a| a.ok()).collect::<Vec<_>>();
        // first: slot 2 <- position 0 (a), slot 0 <- position 1 (b), slot 1 <- position 2 (a).
        assert_eq!(shown(first.wait().await), [Some(101), Some(2), Some(0)]);
        // second: slot 1 <- position 3 (b), slot 0 <- position 4 (a).
        assert_eq!(shown(second.wait().await), [Some(4), Some(103)]);
    }

    #[tokio::test]
    async fn split_off_hands_on_the_later_slots_whichever_run_they_are_in() {
        let shown = |answers: Vec<BatchReply>| answers.into_iter().map(|a| a.ok()).collect::<Vec<_>>();
        for at in 0..=5 {
            let (first, second) = (Collector::new(3), Collector::new(2));
            let mut part = Part::new(Arc::clone(&first), vec![2, 0, 1]);
            part.absorb(Part::new(Arc::clone(&second), vec![1, 0]));
            let rest = part.split_off(at);
            assert_eq!((part.len(), rest.len()), (at, 5 - at), "at {at}");
            // Positions 0..at answered by the kept part, the others by the rest.
            part.answer((0..at).map(Ok));
            rest.answer((at..5).map(|p| Ok(100 + p)));
            let tagged = |p: usize| Some(if p < at { p } else { 100 + p });
            assert_eq!(shown(first.wait().await), [tagged(1), tagged(2), tagged(0)], "at {at}");
            assert_eq!(shown(second.wait().await), [tagged(4), tagged(3)], "at {at}");
        }
    }

    #[tokio::test]
    async fn an_empty_collector_is_done_at_once() {
        assert!(Collector::new(0).wait().await.is_empty());
    }
}
