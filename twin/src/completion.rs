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

use crate::asset::actor::{BatchFailure, BatchReply, CommandError};

/// The slots of one batch (see the module documentation).
#[derive(Debug)]
pub struct Collector {
    slots: Mutex<Slots>,
    done: tokio::sync::Notify,
}

/// Per slot, the number of events its command appended, or one of the two marks below. Four
/// bytes a slot rather than a whole [`BatchReply`] (80): an ingest call of 1M readings has
/// 1M slots, and nearly every answer is a count.
#[derive(Debug)]
struct Slots {
    appended: Vec<u32>,
    /// The failed slots' failures, in the order they came.
    failures: Vec<(u32, Option<BatchFailure>)>,
    remaining: usize,
}

/// A slot not filled yet.
const UNFILLED: u32 = u32::MAX;
/// A slot whose failure is in `Slots::failures`.
const FAILED: u32 = u32::MAX - 1;

impl Collector {
    /// A collector of `len` answers.
    pub fn new(len: usize) -> Arc<Collector> {
        Arc::new(Collector {
            slots: Mutex::new(Slots { appended: vec![UNFILLED; len], failures: Vec::new(), remaining: len }),
            done: tokio::sync::Notify::new(),
        })
    }

    /// Waits until every slot is filled and returns the answers.
    pub async fn wait(&self) -> Answers {
        loop {
            // Registered before the check, so a fill in between is not missed.
            let notified = self.done.notified();
            {
                let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
                if slots.remaining == 0 {
                    let mut failures = std::mem::take(&mut slots.failures);
                    failures.sort_unstable_by_key(|(slot, _)| *slot);
                    return Answers { appended: std::mem::take(&mut slots.appended), failures };
                }
            }
            notified.await;
        }
    }

    fn fill(&self, answers: impl Iterator<Item = (u32, BatchReply)>) {
        let finished = {
            let mut slots = self.slots.lock().unwrap_or_else(PoisonError::into_inner);
            let Slots { appended, failures, remaining } = &mut *slots;
            for (index, answer) in answers {
                let slot = &mut appended[index as usize];
                if *slot == UNFILLED {
                    *slot = match answer {
                        // A command appends a handful of events; a count beyond the marks is
                        // clamped (no caller adds them up).
                        Ok(count) => u32::try_from(count).unwrap_or(FAILED - 1).min(FAILED - 1),
                        Err(failure) => {
                            failures.push((index, Some(failure)));
                            FAILED
                        }
                    };
                    *remaining -= 1;
                }
            }
            *remaining == 0
        };
        if finished {
            self.done.notify_one();
        }
    }
}

/// A filled collector's answers, in slot order (see [`Collector::wait`]).
#[derive(Debug)]
pub struct Answers {
    appended: Vec<u32>,
    /// Sorted by slot; `None` once taken.
    failures: Vec<(u32, Option<BatchFailure>)>,
}

impl Answers {
    /// How many answers.
    pub fn len(&self) -> usize {
        self.appended.len()
    }

    /// Whether there are none.
    pub fn is_empty(&self) -> bool {
        self.appended.is_empty()
    }

    /// The answer of `slot`, in any order of slots (a caller filling its results in its own
    /// order). A failure moves out: take each slot once.
    ///
    /// # Panics
    /// When `slot` is out of range, or its failure was taken already.
    pub fn take(&mut self, slot: usize) -> BatchReply {
        match self.appended[slot] {
            FAILED => {
                let at = self
                    .failures
                    .binary_search_by_key(&u32::try_from(slot).unwrap_or(u32::MAX), |(slot, _)| *slot)
                    .expect("a failure per failed slot");
                Err(self.failures[at].1.take().expect("a failure is taken once"))
            }
            count => Ok(count as usize),
        }
    }
}

impl IntoIterator for Answers {
    type Item = BatchReply;
    type IntoIter = AnswersIter;

    fn into_iter(self) -> AnswersIter {
        AnswersIter { appended: self.appended.into_iter(), failures: self.failures.into_iter() }
    }
}

/// The answers of [`Answers`], one per slot in slot order.
#[derive(Debug)]
pub struct AnswersIter {
    appended: std::vec::IntoIter<u32>,
    failures: std::vec::IntoIter<(u32, Option<BatchFailure>)>,
}

impl Iterator for AnswersIter {
    type Item = BatchReply;

    fn next(&mut self) -> Option<BatchReply> {
        match self.appended.next()? {
            FAILED => Some(Err(self
                .failures
                .next()
                .and_then(|(_, failure)| failure)
                .expect("a failure per failed slot, not taken"))),
            count => Some(Ok(count as usize)),
        }
    }

    fn size_hint(&self) -> (usize, Option<usize>) {
        self.appended.size_hint()
    }
}

impl ExactSizeIterator for AnswersIter {}

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
        if self.runs.is_empty() {
            // The usual case (an idle asset's inbox takes a batch's part): taken as it is.
            self.runs = std::mem::take(&mut other.runs);
            return;
        }
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

    /// Adds one slot of `collector` after this part's slots (no new run, and no reference
    /// taken, when the last run is the same collector's).
    pub fn push_slot(&mut self, collector: &Arc<Collector>, slot: u32) {
        match self.runs.last_mut() {
            Some((last, mine)) if Arc::ptr_eq(last, collector) => mine.push(slot),
            _ => self.runs.push((Arc::clone(collector), vec![slot])),
        }
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
            .into_iter()
            .map(|a| match a {
                Ok(n) => n.to_string(),
                Err(failure) => failure.error.to_string(),
            })
            .collect();
        let stopped = "storing the events failed: the asset actor stopped before answering";
        assert_eq!(shown, ["0", "1", stopped, stopped, "40"]);
    }

    #[tokio::test]
    async fn an_empty_part_takes_the_first_absorbed_as_it_is_and_answers_can_be_taken_in_any_order() {
        let (first, second) = (Collector::new(3), Collector::new(2));
        let mut part = Part::empty();
        part.absorb(Part::new(Arc::clone(&first), vec![2, 0, 1]));
        part.absorb(Part::new(Arc::clone(&second), vec![1, 0]));
        assert_eq!(part.len(), 5);
        // Commands in order: first's 2, 0, 1, then second's 1, 0; the fourth one failed.
        let failed = || BatchFailure { error: CommandError::Storage("disk full".into()), event: None };
        part.answer([Ok(10), Ok(11), Ok(12), Err(failed()), Ok(14)]);
        let mut answers = first.wait().await;
        assert_eq!([answers.take(2), answers.take(0), answers.take(1)].map(Result::ok), [Some(10), Some(11), Some(12)]);
        let mut answers = second.wait().await;
        assert_eq!(answers.take(0).ok(), Some(14));
        let failure = answers.take(1).expect_err("slot 1 failed");
        assert_eq!(failure.error.to_string(), "storing the events failed: disk full");
    }

    #[test]
    fn push_slot_extends_the_last_run_of_the_same_collector() {
        let (first, second) = (Collector::new(3), Collector::new(1));
        let mut part = Part::empty();
        part.push_slot(&first, 0);
        part.push_slot(&first, 2);
        part.push_slot(&second, 0);
        part.push_slot(&first, 1);
        assert_eq!(part.len(), 4);
        assert_eq!(part.runs.len(), 3, "first, second, first again");
        assert_eq!(Arc::strong_count(&first), 3, "one reference per run, not per slot");
        part.answer((0..4).map(Ok));
    }

    #[tokio::test]
    async fn split_off_hands_on_the_later_slots_whichever_run_they_are_in() {
        let shown = |answers: Answers| answers.into_iter().map(|a| a.ok()).collect::<Vec<_>>();
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
