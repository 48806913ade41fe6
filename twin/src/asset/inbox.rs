//! `Inbox`: the batched commands waiting for one asset actor.
//!
//! Under load an asset's commands arrive in many small pieces: an ingest batch of 10,000
//! readings over 100,000 assets holds about one reading per asset, and one actor message per
//! piece cost more than deciding the reading (mailbox, wake-up, writer request, answer). So
//! the shard appends a batch's commands for the asset here and sends the actor a `Drain`
//! message only when the inbox was empty; the actor takes everything pending at once. While
//! the actor waits its turn on the runtime, later batches' commands join the same drain:
//! batching per mailbox drain, and the busier the twin, the larger the drains.
//!
//! Order: commands are taken in the order they were appended, and a `Drain` is sent before
//! any later message to the actor, so the mailbox order of the shard's messages holds.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use super::logic::AssetCommand;
use crate::completion::Part;

/// How many drains asset actors made and how many commands they took, process-wide: the
/// batching this buys (the `bench` command reports commands per drain).
pub static DRAINS: DrainStats = DrainStats { drains: AtomicU64::new(0), commands: AtomicU64::new(0) };

/// See [`DRAINS`].
#[derive(Debug)]
pub struct DrainStats {
    drains: AtomicU64,
    commands: AtomicU64,
}

impl DrainStats {
    /// Notes a drain of `commands` commands.
    pub fn record(&self, commands: usize) {
        self.drains.fetch_add(1, Ordering::Relaxed);
        self.commands.fetch_add(commands as u64, Ordering::Relaxed);
    }

    /// Drains and commands so far.
    pub fn totals(&self) -> (u64, u64) {
        (self.drains.load(Ordering::Relaxed), self.commands.load(Ordering::Relaxed))
    }
}

/// See the module documentation. Cheap to clone (one shared inbox).
#[derive(Debug, Clone, Default)]
pub struct Inbox(Arc<Mutex<Pending>>);

#[derive(Debug)]
struct Pending {
    commands: Vec<AssetCommand>,
    part: Part,
    /// A `Drain` is on its way to the actor (it will take what is here).
    armed: bool,
}

impl Default for Pending {
    fn default() -> Self {
        Pending { commands: Vec::new(), part: Part::empty(), armed: false }
    }
}

impl Inbox {
    /// Appends commands, answered through `part` (one slot per command, in order). Returns
    /// whether the actor must be sent a `Drain`: none is on its way yet.
    pub fn push(&self, commands: Vec<AssetCommand>, part: Part) -> bool {
        let mut pending = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        if pending.commands.is_empty() {
            pending.commands = commands;
        } else {
            pending.commands.extend(commands);
        }
        pending.part.absorb(part);
        !std::mem::replace(&mut pending.armed, true)
    }

    /// Puts commands taken earlier back in front of whatever is pending, answered through
    /// `part` (an actor that must fail hands the rest of its drain to its successor). Sends
    /// no `Drain`: whoever takes the inbox next (the successor) finds them first.
    pub fn put_back(&self, mut commands: Vec<AssetCommand>, mut part: Part) {
        let mut pending = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        commands.append(&mut pending.commands);
        pending.commands = commands;
        part.absorb(std::mem::replace(&mut pending.part, Part::empty()));
        pending.part = part;
    }

    /// Takes every pending command with its part (the actor, on `Drain`); the next push sends
    /// a new `Drain`. `None` when nothing is pending.
    pub fn take(&self) -> Option<(Vec<AssetCommand>, Part)> {
        let mut pending = self.0.lock().unwrap_or_else(PoisonError::into_inner);
        pending.armed = false;
        if pending.commands.is_empty() && pending.part.is_empty() {
            return None;
        }
        Some((std::mem::take(&mut pending.commands), std::mem::replace(&mut pending.part, Part::empty())))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::completion::Collector;
    use citytwin_core::event::Timestamp;

    fn check(at: i64) -> AssetCommand {
        AssetCommand::CheckHeartbeat { now: Timestamp::from_nanos(at) }
    }

    /// The times of `check` commands, in order.
    fn times(commands: &[AssetCommand]) -> Vec<i64> {
        commands
            .iter()
            .map(|c| match c {
                AssetCommand::CheckHeartbeat { now } => now.as_nanos(),
                other => panic!("unexpected {other:?}"),
            })
            .collect()
    }

    #[tokio::test]
    async fn only_the_first_push_after_a_take_wakes_the_actor_and_a_take_gets_everything_in_order() {
        let (first, second) = (Collector::new(2), Collector::new(1));
        let inbox = Inbox::default();
        assert!(inbox.push(vec![check(1), check(2)], Part::new(Arc::clone(&first), vec![1, 0])));
        assert!(!inbox.push(vec![check(3)], Part::new(Arc::clone(&second), vec![0])), "a drain is already on its way");
        let (commands, part) = inbox.take().expect("pending commands");
        assert_eq!(times(&commands), [1, 2, 3]);
        assert_eq!(part.len(), 3);
        part.answer([Ok(10), Ok(20), Ok(30)]);
        let answers = |c: &Arc<Collector>| {
            let c = Arc::clone(c);
            async move { c.wait().await.into_iter().map(|a| a.map_err(|f| f.error.to_string())).collect::<Vec<_>>() }
        };
        assert_eq!(answers(&first).await, [Ok(20), Ok(10)]);
        assert_eq!(answers(&second).await, [Ok(30)]);
        assert!(inbox.take().is_none());
        assert!(inbox.push(vec![check(4)], Part::new(Collector::new(1), vec![0])), "taken: the next push wakes again");
    }

    #[tokio::test]
    async fn commands_put_back_come_first_with_their_answers() {
        let (pending, handed_back) = (Collector::new(1), Collector::new(2));
        let inbox = Inbox::default();
        assert!(inbox.push(vec![check(3)], Part::new(Arc::clone(&pending), vec![0])));
        inbox.put_back(vec![check(1), check(2)], Part::new(Arc::clone(&handed_back), vec![1, 0]));
        let (commands, part) = inbox.take().expect("pending commands");
        assert_eq!(times(&commands), [1, 2, 3]);
        part.answer([Ok(10), Ok(20), Ok(30)]);
        let oks = |answers: crate::completion::Answers| {
            answers.into_iter().map(|a: crate::asset::actor::BatchReply| a.ok()).collect::<Vec<_>>()
        };
        assert_eq!(oks(handed_back.wait().await), [Some(20), Some(10)]);
        assert_eq!(oks(pending.wait().await), [Some(30)]);
    }
}
