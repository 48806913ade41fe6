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

/// Some slots of a [`Collector`]: the commands one actor answers.
pub struct Part {
    collector: Arc<Collector>,
    indices: Vec<u32>,
}

impl std::fmt::Debug for Part {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Part").field("slots", &self.indices.len()).finish_non_exhaustive()
    }
}

impl Part {
    /// The slots `indices` of `collector`.
    pub fn new(collector: Arc<Collector>, indices: Vec<u32>) -> Part {
        Part { collector, indices }
    }

    /// How many answers this part owes.
    pub fn len(&self) -> usize {
        self.indices.len()
    }

    /// Whether it owes none.
    pub fn is_empty(&self) -> bool {
        self.indices.is_empty()
    }

    /// Splits the part by `keys` (one key per slot, in order) into one part per key, in
    /// the order the keys first appear; with each, the positions of its slots in this part.
    pub fn split<K: Eq + std::hash::Hash + Clone>(mut self, keys: &[K]) -> Vec<(K, Vec<usize>, Part)> {
        let indices = std::mem::take(&mut self.indices);
        let mut groups: Vec<(K, Vec<usize>, Vec<u32>)> = Vec::new();
        let mut at: std::collections::HashMap<K, usize> = std::collections::HashMap::new();
        if indices.len() > keys.len() {
            // Slots without a key stay with this part, answered with an error when it drops.
            self.indices = indices[keys.len()..].to_vec();
        }
        for (position, (index, key)) in indices.into_iter().zip(keys).enumerate() {
            let group = *at.entry(key.clone()).or_insert_with(|| {
                groups.push((key.clone(), Vec::new(), Vec::new()));
                groups.len() - 1
            });
            groups[group].1.push(position);
            groups[group].2.push(index);
        }
        groups
            .into_iter()
            .map(|(key, positions, indices)| (key, positions, Part::new(Arc::clone(&self.collector), indices)))
            .collect()
    }

    /// Answers the part's commands in order; slots left without an answer get an error.
    pub fn answer(mut self, answers: impl IntoIterator<Item = BatchReply>) {
        let indices = std::mem::take(&mut self.indices);
        let mut answers = answers.into_iter();
        self.collector.fill(indices.into_iter().map(|index| {
            let answer = answers.next().unwrap_or_else(|| Err(unanswered().into()));
            (index, answer)
        }));
    }
}

fn unanswered() -> CommandError {
    CommandError::Storage("the asset actor stopped before answering".into())
}

impl Drop for Part {
    fn drop(&mut self) {
        if !self.indices.is_empty() {
            let indices = std::mem::take(&mut self.indices);
            self.collector.fill(indices.into_iter().map(|index| (index, Err(unanswered().into()))));
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
    async fn an_empty_collector_is_done_at_once() {
        assert!(Collector::new(0).wait().await.is_empty());
    }
}
