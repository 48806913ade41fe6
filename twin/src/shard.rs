//! `ShardActor`: supervises the asset actors of one shard (assets hash to shards).
//!
//! It spawns an asset actor on the first message for the asset (rehydrating it from the
//! log), forwards commands without waiting for them, sweeps its live actors' activity clocks
//! (one timer per shard, no message per actor), passivates idle actors with a handshake
//! (messages that arrive while an actor stops are held and delivered to its successor, so
//! one asset never has two writers), passivates some of the least recently active ones (the
//! lowest ranked) at once when nearly `max_live` are live (and holds the first messages of
//! an asset with no actor while `max_live` are live or stopping: see
//! [`ShardArgs::max_live`]), and restarts actors that fail, up to `max_restarts` within
//! `restart_window`; beyond that it fails itself (escalation to the city supervisor).

use std::collections::{HashMap, VecDeque};
use std::time::Duration;

use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use rustc_hash::FxHashMap;
use smol_str::SmolStr;
use tokio::sync::broadcast;

use crate::asset::actor::{Activity, AssetActor, AssetArgs, AssetConfig, AssetMsg, CommandReply, rehydrate};
use crate::asset::inbox::Inbox;
use crate::asset::logic::{AssetCommand, AssetState};
use crate::completion::Part;
use crate::route::AssetGroup;

/// The live asset actors of one shard, shared read-only with the twin so that commands for a
/// live actor go to it directly (the shard stays on the path for spawning, passivation and
/// restarts). Only the shard writes it.
pub type Directory = std::sync::Arc<std::sync::RwLock<HashMap<String, ActorRef<AssetMsg>>>>;

/// What a shard reports about its actors (for tests, metrics and the read side).
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ShardEvent {
    /// An asset actor started (fresh, rehydrated, or restarted).
    Started(String),
    /// An idle asset actor stopped.
    Passivated(String),
    /// An asset actor failed and was restarted.
    Restarted(String),
}

/// Messages of a [`ShardActor`].
#[derive(Debug)]
pub enum ShardMsg {
    /// Route a command to an asset (boxed, as in [`AssetMsg::Command`]).
    Command(String, Box<AssetCommand>, RpcReplyPort<CommandReply>),
    /// An ingest batch's commands for the shard's assets, one group per asset (see
    /// [`crate::route`]), each answered through its group's part.
    Batch(Vec<AssetGroup>),
    /// The state of an asset (read from its snapshot and tail when passivated, without
    /// waking it).
    GetState(String, RpcReplyPort<AssetState>),
    /// How many actors are live, stopping, and assets waiting for room, with the most actors
    /// in memory at once and the number of waits so far.
    Occupancy(RpcReplyPort<Occupancy>),
    /// Periodic: passivate the live asset actors that have been idle long enough.
    Sweep,
}

/// Shard settings.
#[derive(Debug, Clone)]
pub struct ShardArgs {
    /// The shard's number (for names and logs).
    pub shard: usize,
    /// The event log.
    pub log: citytwin_core::log::EventLog,
    /// The batching writer shared by the shard's assets.
    pub writer: crate::writer::LogWriter,
    /// Asset actor settings.
    pub asset: AssetConfig,
    /// Restarts allowed within `restart_window` before escalating.
    pub max_restarts: usize,
    /// See `max_restarts`.
    pub restart_window: Duration,
    /// Shard lifecycle notifications.
    pub events: Option<broadcast::Sender<ShardEvent>>,
    /// The shared directory of live actors (see [`Directory`]).
    pub directory: Option<Directory>,
    /// Most asset actors in memory in this shard, live or stopping (0: no limit): an
    /// active-entity limit, as Akka's sharding has, so memory stays bounded under a burst of
    /// new or waking assets, whatever the idle timeout.
    ///
    /// An actor asked to passivate stays in memory until it has drained, snapshotted and
    /// stopped, so the shard keeps an eighth of the limit for those: beyond `max_live` less
    /// an eighth live, some of the least recently active passivate at once (see
    /// `ShardState::make_room` for which); with `max_live` live or stopping, an asset with no
    /// actor waits (its messages held in order) until one has stopped. Under thrash (more
    /// active assets than the limit) memory then follows the limit, not the number of
    /// commands in flight.
    pub max_live: usize,
}

/// A shard's actors at one moment (see [`ShardMsg::Occupancy`]); summed over the shards by
/// `Twin::occupancy`.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Occupancy {
    /// Live asset actors.
    pub live: usize,
    /// Actors asked to stop (passivating or failed) that have not stopped yet.
    pub stopping: usize,
    /// Assets with messages waiting for room to start an actor.
    pub waiting: usize,
    /// The most actors in memory (live plus stopping) at once since the shard started (over
    /// several shards: the sum of their peaks, an upper bound).
    pub peak: usize,
    /// How many times an asset had to wait for room since the shard started.
    pub waited: u64,
}

impl std::ops::Add for Occupancy {
    type Output = Occupancy;

    fn add(self, other: Occupancy) -> Occupancy {
        Occupancy {
            live: self.live + other.live,
            stopping: self.stopping + other.stopping,
            waiting: self.waiting + other.waiting,
            peak: self.peak + other.peak,
            waited: self.waited + other.waited,
        }
    }
}

/// A live asset actor, as its shard sees it.
#[derive(Debug)]
struct Live {
    actor: ActorRef<AssetMsg>,
    activity: Activity,
    inbox: Inbox,
    /// The asset's fixed rank under the live-actor limit (see [`rank`]).
    rank: u64,
}

/// A fixed pseudo-random rank per asset (a hash of its id). When the live-actor limit
/// passivates, it takes the lowest ranks among the least recently active, so from one round
/// of readings to the next the same assets keep their actors. (A hash, not a counter:
/// stable across passivations and restarts without any state.)
fn rank(asset_id: &str) -> u64 {
    use std::hash::BuildHasher;
    rustc_hash::FxBuildHasher.hash_one(asset_id)
}

/// An asset whose actor is stopping (passivating, or failed and about to restart).
#[derive(Debug, Default)]
struct Stopping {
    /// A passivating actor's inbox: it drains it before it stops; whatever is left when it is
    /// gone goes to the successor, ahead of `held`.
    inbox: Option<Inbox>,
    /// Messages that arrived meanwhile, for the successor.
    held: Vec<AssetMsg>,
}

/// The shard's state.
#[derive(Debug)]
pub struct ShardState {
    args: ShardArgs,
    live: FxHashMap<SmolStr, Live>,
    ids: HashMap<ActorId, String>,
    /// Assets whose actor is stopping.
    stopping: FxHashMap<String, Stopping>,
    /// Assets with no actor whose messages wait for room (see [`ShardArgs::max_live`]), in
    /// arrival order, each with its messages in order.
    waiting: FxHashMap<String, Vec<AssetMsg>>,
    admission: VecDeque<String>,
    /// Actors started during the current message, not yet in the directory.
    unpublished: Vec<String>,
    /// The most actors in memory at once (live plus stopping).
    peak: usize,
    /// How many times an asset had to wait for room.
    waited: u64,
    restarts: VecDeque<tokio::time::Instant>,
}

impl ShardState {
    /// Makes an actor live. It joins the shared directory only at the end of the shard's
    /// message ([`ShardState::publish_started`]), once the messages held for it have been
    /// delivered: a command sent straight to it cannot overtake them.
    fn set_live(&mut self, asset_id: &str, live: Live) {
        if self.args.directory.is_some() {
            self.unpublished.push(asset_id.to_owned());
        }
        self.live.insert(SmolStr::from(asset_id), live);
    }

    /// Publishes the actors started while handling one message that are still live, under
    /// one write lock.
    fn publish_started(&mut self) {
        if self.unpublished.is_empty() {
            return;
        }
        if let Some(directory) = &self.args.directory
            && let Ok(mut directory) = directory.write()
        {
            for asset_id in self.unpublished.drain(..) {
                if let Some(live) = self.live.get(asset_id.as_str()) {
                    directory.insert(asset_id, live.actor.clone());
                }
            }
        }
        self.unpublished.clear();
    }

    /// Forgets a live actor (its inbox comes back untouched).
    fn unset_live(&mut self, asset_id: &str) -> Option<Live> {
        if let Some(directory) = &self.args.directory
            && let Ok(mut directory) = directory.write()
        {
            directory.remove(asset_id);
        }
        self.live.remove(asset_id)
    }

    /// Forgets a live or passivating actor that is gone (or going: it failed) and holds what
    /// it left in its inbox, ahead of whatever was held or arrives from now on, for its
    /// successor.
    fn hold_for_successor(&mut self, asset_id: &str) {
        let live = self.unset_live(asset_id).map(|live| live.inbox);
        let stopping = self.stopping.entry(asset_id.to_owned()).or_default();
        let left = live.or_else(|| stopping.inbox.take()).and_then(|inbox| inbox.take());
        if let Some((commands, part)) = left {
            stopping.held.insert(0, AssetMsg::Batch(commands, part));
        }
    }

    /// Leaves commands in a live actor's inbox through `push` (which says whether the inbox
    /// was empty) and wakes the actor then with a `Drain`; marks it active at `now_ms`, so the
    /// live-actor limit applied afterwards does not pick the asset it just fed (it would drain
    /// its inbox first all the same).
    fn push_live(&mut self, asset_id: &str, now_ms: u64, push: impl FnOnce(&Inbox) -> bool) {
        let live = self.live.get(asset_id).expect("commands are pushed to live actors only");
        live.activity.touch_at(now_ms);
        if push(&live.inbox)
            && let Err(ractor::MessagingErr::SendErr(_)) = live.actor.cast(AssetMsg::Drain)
        {
            // The actor is failing and its supervision event is on its way: its inbox is held
            // for the successor instead of being lost.
            tracing::debug!(asset = %asset_id, "asset actor is stopping; holding its inbox for its successor");
            self.hold_for_successor(asset_id);
        }
        self.enforce_live_limit();
    }

    /// Stops a live actor: it takes `Passivate` after what is already in its mailbox (a
    /// `Drain` of its inbox among it, and it drains again before it stops); what arrives
    /// meanwhile is held for its successor, behind anything its inbox still holds then.
    fn passivate(&mut self, asset_id: &str) {
        if let Some(live) = self.unset_live(asset_id) {
            self.stopping.insert(asset_id.to_owned(), Stopping { inbox: Some(live.inbox), held: Vec::new() });
            let _ = live.actor.cast(AssetMsg::Passivate);
        }
    }

    /// Whether messages for an asset with no live actor must be held rather than start one:
    /// its actor is stopping (they go to its successor), it already waits for room, or there
    /// is no room (it starts waiting).
    fn must_hold(&mut self, asset_id: &str) -> bool {
        if self.stopping.contains_key(asset_id) || self.waiting.contains_key(asset_id) {
            return true;
        }
        if !self.must_wait() {
            return false;
        }
        self.waiting.insert(asset_id.to_owned(), Vec::new());
        self.admission.push_back(asset_id.to_owned());
        self.waited += 1;
        true
    }

    /// Holds a message for the successor of a stopping actor, or for an asset waiting for
    /// room (after [`ShardState::must_hold`] said so).
    fn hold(&mut self, asset_id: &str, message: AssetMsg) {
        match self.stopping.get_mut(asset_id) {
            Some(stopping) => stopping.held.push(message),
            None => self.waiting.entry(asset_id.to_owned()).or_default().push(message),
        }
    }

    /// Whether a new actor must wait for room: `max_live` actors are live or stopping.
    /// Checked after enforcing the limit; when nothing is stopping yet (a limit under eight
    /// keeps no room for stopping actors), it passivates some now (see
    /// [`ShardState::make_room`]). So whenever it answers yes an actor is stopping, and its
    /// end lets a waiting asset in.
    fn must_wait(&mut self) -> bool {
        let limit = self.args.max_live;
        if limit == 0 {
            return false;
        }
        self.enforce_live_limit();
        if self.live.len() + self.stopping.len() < limit {
            return false;
        }
        if self.stopping.is_empty() {
            self.make_room(1 + limit / 16);
        }
        true
    }

    /// Over `max_live` less an eighth (the room that actors asked to stop take while they
    /// finish), passivates the excess plus a sixteenth of the limit (chosen by
    /// [`ShardState::make_room`]), so one scan of the live set pays for many spawns.
    fn enforce_live_limit(&mut self) {
        let limit = self.args.max_live;
        let target = limit - limit / 8;
        if limit == 0 || self.live.len() <= target {
            return;
        }
        self.make_room(self.live.len() - target + limit / 16);
    }

    /// Passivates `count` live actors: of the least recently active three quarters, those of
    /// lowest [`rank`] (one scan of their clocks).
    ///
    /// Plain least-recently-active order would be the worst choice for assets that report
    /// periodically, as a city's do: the actor idle longest is the next one due. With more
    /// such assets active than the limit, every reading would then wake a passivated asset,
    /// even 10 % over the limit. Ranking keeps the same assets live from one round to the
    /// next, so many of their readings find their actor (in a simulation of the rule with
    /// readings in rounds: two thirds of them with 10 % more assets than the limit, one in six
    /// with four times as many; none in plain order), while the most recently active quarter
    /// is not chosen, so a burst still finds its actor (with four or more live; the clocks
    /// count whole milliseconds, so among actors touched in the same one the split is
    /// arbitrary).
    fn make_room(&mut self, count: usize) {
        let count = count.min(self.live.len());
        if count == 0 {
            return;
        }
        let now = Activity::now_ms();
        let mut by_idle: Vec<(Duration, u64, &SmolStr)> =
            self.live.iter().map(|(asset_id, live)| (live.activity.idle_at(now), live.rank, asset_id)).collect();
        let oldest = (by_idle.len() - by_idle.len() / 4).max(count);
        if oldest < by_idle.len() {
            by_idle.select_nth_unstable_by(oldest - 1, |a, b| b.0.cmp(&a.0));
            by_idle.truncate(oldest);
        }
        by_idle.select_nth_unstable_by_key(count - 1, |&(_, rank, _)| rank);
        let victims: Vec<SmolStr> = by_idle[..count].iter().map(|(_, _, asset_id)| (*asset_id).clone()).collect();
        tracing::debug!(
            shard = self.args.shard,
            count,
            limit = self.args.max_live,
            "live-actor limit: passivating the lowest ranked of the least recently active"
        );
        for asset_id in victims {
            self.passivate(&asset_id);
        }
    }
}

/// The shard supervisor (see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct ShardActor;

impl ShardActor {
    async fn actor_for(
        &self,
        myself: &ActorRef<ShardMsg>,
        asset_id: &str,
        state: &mut ShardState,
    ) -> Result<ActorRef<AssetMsg>, ActorProcessingErr> {
        if let Some(live) = state.live.get(asset_id) {
            return Ok(live.actor.clone());
        }
        let (activity, inbox) = (Activity::new(), Inbox::default());
        let args = AssetArgs {
            asset_id: asset_id.to_owned(),
            log: state.args.log.clone(),
            writer: state.args.writer.clone(),
            config: state.args.asset.clone(),
            shard: Some(myself.clone()),
            activity: activity.clone(),
            inbox: inbox.clone(),
        };
        let (actor, _) = Actor::spawn_linked(None, AssetActor, args, myself.get_cell()).await?;
        state.ids.insert(actor.get_id(), asset_id.to_owned());
        state.set_live(asset_id, Live { actor: actor.clone(), activity, inbox, rank: rank(asset_id) });
        state.peak = state.peak.max(state.live.len() + state.stopping.len());
        notify(state, ShardEvent::Started(asset_id.to_owned()));
        Ok(actor)
    }

    async fn deliver(
        &self,
        myself: &ActorRef<ShardMsg>,
        asset_id: String,
        message: AssetMsg,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        if !state.live.contains_key(asset_id.as_str()) && state.must_hold(&asset_id) {
            state.hold(&asset_id, message);
            return Ok(());
        }
        let actor = self.actor_for(myself, &asset_id, state).await?;
        // Active from now: the live-actor limit below should not pick the asset it just fed
        // (it would take its message first all the same).
        if let Some(live) = state.live.get(asset_id.as_str()) {
            live.activity.touch();
        }
        match actor.cast(message) {
            Ok(()) => {}
            Err(ractor::MessagingErr::SendErr(message)) => {
                // The actor is failing and its supervision event is on its way: hold the
                // message for the successor instead of losing it.
                tracing::debug!(asset = %asset_id, "asset actor is stopping; holding the message for its successor");
                state.hold_for_successor(&asset_id);
                state.stopping.entry(asset_id).or_default().held.push(message);
            }
            Err(error) => tracing::error!(asset = %asset_id, %error, "asset actor unreachable; message dropped"),
        }
        // After the cast: an actor chosen here takes its message before it stops.
        state.enforce_live_limit();
        Ok(())
    }

    /// Leaves a batch of commands in the asset's inbox, waking the actor when the inbox was
    /// empty (see [`Inbox`]); held for the successor while the actor stops.
    async fn deliver_batch(
        &self,
        myself: &ActorRef<ShardMsg>,
        asset_id: &str,
        commands: Vec<AssetCommand>,
        part: Part,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        // The hot path first: a live actor (it cannot be stopping at the same time).
        if !state.live.contains_key(asset_id) {
            if state.must_hold(asset_id) {
                state.hold(asset_id, AssetMsg::Batch(commands, part));
                return Ok(());
            }
            self.actor_for(myself, asset_id, state).await?;
        }
        state.push_live(asset_id, Activity::now_ms(), |inbox| inbox.push(commands, part));
        Ok(())
    }

    /// Starts waiting assets, first come first served, while there is room, each with its
    /// messages in order.
    async fn admit_waiting(
        &self,
        myself: &ActorRef<ShardMsg>,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        while !state.admission.is_empty() && !state.must_wait() {
            let Some(asset_id) = state.admission.pop_front() else { break };
            for message in state.waiting.remove(&asset_id).unwrap_or_default() {
                self.deliver(myself, asset_id.clone(), message, state).await?;
            }
        }
        Ok(())
    }
}

fn notify(state: &ShardState, event: ShardEvent) {
    if let Some(events) = &state.args.events {
        let _ = events.send(event);
    }
}

impl Actor for ShardActor {
    type Msg = ShardMsg;
    type State = ShardState;
    type Arguments = ShardArgs;

    async fn pre_start(&self, myself: ActorRef<ShardMsg>, args: ShardArgs) -> Result<ShardState, ActorProcessingErr> {
        // One timer per shard drives passivation of its actors (not one per actor). A sweep
        // only reads clocks, so it can run often: an idle actor outlives its timeout by at
        // most an eighth of it (fewer actors live at once).
        let sweep = (args.asset.idle_timeout / 8).clamp(Duration::from_millis(10), Duration::from_secs(5));
        myself.send_interval(sweep, || ShardMsg::Sweep);
        // A restarted shard starts with no live actors: forget its predecessor's.
        if let Some(directory) = &args.directory
            && let Ok(mut directory) = directory.write()
        {
            directory.clear();
        }
        Ok(ShardState {
            args,
            live: FxHashMap::default(),
            ids: HashMap::new(),
            stopping: FxHashMap::default(),
            waiting: FxHashMap::default(),
            admission: VecDeque::new(),
            unpublished: Vec::new(),
            peak: 0,
            waited: 0,
            restarts: VecDeque::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ShardMsg>,
        message: ShardMsg,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            ShardMsg::Command(asset_id, command, reply) => {
                self.deliver(&myself, asset_id, AssetMsg::Command(command, reply), state).await?
            }
            ShardMsg::GetState(asset_id, reply) => {
                if state.live.contains_key(asset_id.as_str())
                    || state.stopping.contains_key(&asset_id)
                    || state.waiting.contains_key(&asset_id)
                {
                    self.deliver(&myself, asset_id, AssetMsg::GetState(reply), state).await?
                } else {
                    // A passivated (or unknown) asset: a query reads its state from its snapshot
                    // and tail without waking an actor, so browsing a city of millions of
                    // assets does not fill memory with actors. No actor runs for it, and the
                    // shard handles one message at a time, so nobody writes it meanwhile.
                    // NOTE: read inline: one positioned read of the page cache (the snapshot
                    // is current after recovery and at passivation), cheaper than a hand-off
                    // to the blocking pool.
                    match rehydrate(&state.args.log, &asset_id) {
                        Ok(asset) => {
                            let _ = reply.send(asset);
                        }
                        // The caller sees the dropped reply as "unavailable".
                        Err(error) => tracing::error!(asset = %asset_id, %error, "reading a passivated asset failed"),
                    }
                }
            }
            ShardMsg::Batch(groups) => {
                // Each asset's commands join its inbox together, in their order, each
                // answering its own slot: the shard never waits, and the asset takes them
                // all in one drain. For a live actor: one lookup, one lock, one wake-up, and
                // the group's list becomes the inbox's when that is empty. (Groups left when
                // this fails midway are dropped: their parts answer with an error.)
                let now = Activity::now_ms();
                for AssetGroup { asset_id, commands, part } in groups {
                    if state.live.contains_key(asset_id.as_str()) {
                        state.push_live(&asset_id, now, |inbox| inbox.push(commands, part));
                    } else {
                        self.deliver_batch(&myself, &asset_id, commands, part, state).await?;
                    }
                }
            }
            ShardMsg::Sweep => {
                // Reads each live actor's activity clock: no message to the busy ones.
                let (idle_timeout, now) = (state.args.asset.idle_timeout, Activity::now_ms());
                let idle: Vec<SmolStr> = state
                    .live
                    .iter()
                    .filter(|(_, live)| live.activity.idle_at(now) >= idle_timeout)
                    .map(|(asset_id, _)| asset_id.clone())
                    .collect();
                for asset_id in idle {
                    tracing::debug!(asset = %asset_id, "asset idle: passivating");
                    state.passivate(&asset_id);
                }
            }
            ShardMsg::Occupancy(reply) => {
                let _ = reply.send(Occupancy {
                    live: state.live.len(),
                    stopping: state.stopping.len(),
                    waiting: state.waiting.len(),
                    peak: state.peak,
                    waited: state.waited,
                });
            }
        }
        state.publish_started();
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<ShardMsg>,
        event: SupervisionEvent,
        state: &mut ShardState,
    ) -> Result<(), ActorProcessingErr> {
        match event {
            SupervisionEvent::ActorTerminated(cell, _, _) => {
                let Some(asset_id) = state.ids.remove(&cell.get_id()) else {
                    return Ok(());
                };
                state.hold_for_successor(&asset_id);
                let held = state.stopping.remove(&asset_id).unwrap_or_default().held;
                notify(state, ShardEvent::Passivated(asset_id.clone()));
                // Its room goes to the longest waiting first; its own held messages queue up
                // behind them when there is no room left.
                self.admit_waiting(&myself, state).await?;
                for message in held {
                    self.deliver(&myself, asset_id.clone(), message, state).await?;
                }
            }
            SupervisionEvent::ActorFailed(cell, error) => {
                let Some(asset_id) = state.ids.remove(&cell.get_id()) else {
                    return Ok(());
                };
                // What it had not drained yet goes to its successor (after the restart below).
                state.hold_for_successor(&asset_id);
                let now = tokio::time::Instant::now();
                state.restarts.push_back(now);
                while state.restarts.front().is_some_and(|t| now.duration_since(*t) > state.args.restart_window) {
                    state.restarts.pop_front();
                }
                if state.restarts.len() > state.args.max_restarts {
                    // A crashing command is answered as its failure is dropped, on return.
                    return Err(format!(
                        "shard {}: more than {} asset restarts within {:?}; escalating (last: {asset_id}: {error})",
                        state.args.shard, state.args.max_restarts, state.args.restart_window
                    )
                    .into());
                }
                tracing::warn!(shard = state.args.shard, asset = %asset_id, %error, "asset actor failed; restarting it from the log");
                let held = state.stopping.remove(&asset_id).unwrap_or_default().held;
                self.actor_for(&myself, &asset_id, state).await?;
                notify(state, ShardEvent::Restarted(asset_id.clone()));
                for message in held {
                    self.deliver(&myself, asset_id.clone(), message, state).await?;
                }
                // The crashing command is answered now that its successor runs: the caller's
                // next command goes to the successor.
                if let Some(crashed) = error.downcast_ref::<crate::asset::actor::Crashed>() {
                    crashed.answer();
                }
                // The successor may have taken the shard over its limit: passivating the excess
                // makes the room that waiting assets need.
                self.admit_waiting(&myself, state).await?;
            }
            _ => {}
        }
        state.publish_started();
        Ok(())
    }
}
