//! `AssetActor`: hosts one asset's `decide` / `apply`, persists to the event log, publishes,
//! replies, snapshots, detects missed heartbeats and passivates when idle.
//!
//! Message flow for a command: `decide` (a rejection goes back through the reply port and the
//! actor carries on) → append the events to the asset's stream with the expected sequence
//! (single writer) → `apply` → publish → reply. A panic in `decide` or `apply` is caught: the
//! offending event goes to the dead-letter stream with the panic message and the actor fails,
//! so its supervisor restarts it and it rebuilds from the log. In a batch, a panic in
//! `decide` refuses that command alone (the state is untouched); a panic in `apply` fails the
//! actor after the commands before it are submitted, and the commands after it go back to
//! the inbox, which the shard hands to the successor: they run on the rebuilt state.

use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::Arc;
use std::time::Duration;

use citytwin_core::event::{Event, Timestamp};
use citytwin_core::log::{EventLog, Expected};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};

use super::inbox::Inbox;
use super::logic::{AssetCommand, AssetState, Rejection, apply, decide, decide_lean, heartbeat_grace};
use crate::bus::Committed;
use crate::deadletter::{DeadLetterReason, dead_letter};

/// The log stream of an asset.
pub fn asset_stream(asset_id: &str) -> String {
    format!("asset:{asset_id}")
}

/// A source of "now" (event time in a simulation, wall time live).
pub type Clock = Arc<dyn Fn() -> Timestamp + Send + Sync>;

/// The system clock.
pub fn system_clock() -> Clock {
    Arc::new(|| {
        let since = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).unwrap_or_default();
        Timestamp::from_nanos(i64::try_from(since.as_nanos()).unwrap_or(i64::MAX))
    })
}

/// Settings shared by every asset actor.
#[derive(Clone)]
pub struct AssetConfig {
    /// Save a snapshot after this many events since the last one.
    pub snapshot_every: u64,
    /// Stop (passivate) after this long without a message.
    pub idle_timeout: Duration,
    /// "Now", for heartbeat checks.
    pub clock: Clock,
}

impl std::fmt::Debug for AssetConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssetConfig")
            .field("snapshot_every", &self.snapshot_every)
            .field("idle_timeout", &self.idle_timeout)
            .finish_non_exhaustive()
    }
}

impl Default for AssetConfig {
    fn default() -> Self {
        AssetConfig { snapshot_every: 100, idle_timeout: Duration::from_secs(300), clock: system_clock() }
    }
}

/// Why a command failed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum CommandError {
    /// A business rule refused it; nothing was written.
    #[error(transparent)]
    Rejected(#[from] Rejection),
    /// The log could not store it; nothing was acknowledged.
    #[error("storing the events failed: {0}")]
    Storage(String),
    /// The command made the asset's logic panic; it is in the dead-letter queue.
    #[error("the command crashed the asset (dead-lettered): {0}")]
    Poison(String),
}

/// What a command produced: the events appended (empty when there was nothing to do).
pub type CommandReply = Result<Vec<Event>, CommandError>;

/// The failure of an asset actor that a command crashed, carrying that command's answer: its
/// supervisor (the shard) sends it once the asset's successor runs. Answered by the failing
/// actor instead, a caller's next command could reach that actor's mailbox before it stopped,
/// and be dropped with it.
#[derive(Debug)]
pub struct Crashed {
    message: String,
    reply: std::sync::Mutex<Option<RpcReplyPort<CommandReply>>>,
}

impl Crashed {
    /// Sends the command's answer ([`CommandError::Poison`]); once.
    pub fn answer(&self) {
        let reply = self.reply.lock().unwrap_or_else(std::sync::PoisonError::into_inner).take();
        if let Some(reply) = reply {
            // A caller that gave up waiting is not an error.
            let _ = reply.send(Err(CommandError::Poison(self.message.clone())));
        }
    }
}

impl Drop for Crashed {
    /// Answers when the shard did not (it failed while restarting the asset, or stopped): the
    /// caller learns that its command ran and crashed, not that it never reached the actor,
    /// which would have it sent again.
    fn drop(&mut self) {
        self.answer();
    }
}

impl std::fmt::Display for Crashed {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Crashed {}

/// A command of a batch that failed, with its observed event handed back when the asset still
/// holds it (a rejection), so the caller can dead-letter it without having kept a copy.
#[derive(Debug)]
pub struct BatchFailure {
    /// Why.
    pub error: CommandError,
    /// The observed event, when it was not already dead-lettered by the asset.
    pub event: Option<Box<Event>>,
}

impl From<CommandError> for BatchFailure {
    fn from(error: CommandError) -> Self {
        BatchFailure { error, event: None }
    }
}

/// What a command of a batch produced: how many events it appended (the high-throughput path
/// answers with counts; the events themselves went to the log and the bus).
pub type BatchReply = Result<usize, BatchFailure>;

/// Messages of an [`AssetActor`].
#[derive(Debug)]
pub enum AssetMsg {
    /// Decide, persist, apply, publish, reply. (Boxed: a message is as large as its largest
    /// variant, and `Drain`s are the many.)
    Command(Box<AssetCommand>, RpcReplyPort<CommandReply>),
    /// Several commands: decided and applied in order, persisted in one append, answered
    /// together (one result per command, in order) once the append is committed.
    Batch(Vec<AssetCommand>, crate::completion::Part),
    /// Run everything pending in the actor's [`Inbox`] as one batch (sent by the shard when
    /// the inbox was empty).
    Drain,
    /// The current state.
    GetState(RpcReplyPort<AssetState>),
    /// A heartbeat deadline set when the asset was last heard from.
    HeartbeatDeadline,
    /// Periodic idleness check of an actor without a shard.
    IdleCheck,
    /// The shard passivates this actor (it was idle): stop now, after everything queued before.
    Passivate,
    /// An append submitted without waiting was refused: the state holds events the log does
    /// not, so the actor rebuilds its state from the log (in place: what is queued behind
    /// this message is kept; a rebuild that cannot read the log fails the actor).
    StorageFailed(String),
}

/// When an asset actor last handled a command or query, shared with its shard: the shard's
/// sweep reads it to find idle actors without sending each one a message (at a million
/// assets, per-actor idle checks outnumbered the readings).
#[derive(Debug, Clone, Default)]
pub struct Activity(Arc<std::sync::atomic::AtomicU64>);

impl Activity {
    /// Milliseconds since the process's first use of an activity clock (monotonic).
    pub fn now_ms() -> u64 {
        static EPOCH: std::sync::OnceLock<std::time::Instant> = std::sync::OnceLock::new();
        EPOCH.get_or_init(std::time::Instant::now).elapsed().as_millis() as u64
    }

    /// A clock that says "active now".
    pub fn new() -> Activity {
        let activity = Activity::default();
        activity.touch();
        activity
    }

    /// Notes activity now.
    pub fn touch(&self) {
        self.0.store(Self::now_ms(), std::sync::atomic::Ordering::Relaxed);
    }

    /// Says "active at `now_ms`" (a time from [`Activity::now_ms`]): one clock read for many.
    pub fn touch_at(&self, now_ms: u64) {
        self.0.store(now_ms, std::sync::atomic::Ordering::Relaxed);
    }

    /// How long since the last activity.
    pub fn idle_for(&self) -> Duration {
        self.idle_at(Self::now_ms())
    }

    /// How long the activity was idle at `now_ms` (one [`Activity::now_ms`] for a scan of
    /// many clocks).
    pub fn idle_at(&self, now_ms: u64) -> Duration {
        Duration::from_millis(now_ms.saturating_sub(self.0.load(std::sync::atomic::Ordering::Relaxed)))
    }
}

/// What an asset actor starts with.
#[derive(Clone)]
pub struct AssetArgs {
    /// The asset.
    pub asset_id: String,
    /// The event log (reads: rehydration, snapshots, dead letters).
    pub log: EventLog,
    /// The batching writer (appends, and publishes what it committed).
    pub writer: crate::writer::LogWriter,
    /// Settings.
    pub config: AssetConfig,
    /// The supervising shard (it passivates the actor; without one the actor stops by itself
    /// when idle).
    pub shard: Option<ActorRef<crate::shard::ShardMsg>>,
    /// When the actor was last active (shared with the shard's sweep).
    pub activity: Activity,
    /// The batched commands its shard leaves for it (see [`Inbox`]).
    pub inbox: Inbox,
}

impl std::fmt::Debug for AssetArgs {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AssetArgs").field("asset_id", &self.asset_id).finish_non_exhaustive()
    }
}

/// The actor's state: the asset state plus bookkeeping.
#[derive(Debug)]
pub struct AssetActorState {
    args: AssetArgs,
    stream: String,
    asset: AssetState,
    since_snapshot: u64,
    /// When the asset was last heard from (receive time), and the pending heartbeat timer:
    /// one per asset, re-armed when it fires early, cancelled when the actor stops (a pending
    /// timer holds a reference to the actor and would keep a passivated actor in memory).
    last_heard: tokio::time::Instant,
    heartbeat: Option<tokio::task::AbortHandle>,
    /// Appends submitted to the writer and not yet answered. A successor reads the log, so
    /// the actor waits for these before it stops or fails.
    unanswered: Arc<std::sync::atomic::AtomicUsize>,
}

/// The asset actor (the behaviour; see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct AssetActor;

/// Rebuilds an asset from its latest snapshot and the records after it.
///
/// # Errors
/// When the log cannot be read or holds undecodable records.
pub fn rehydrate(log: &EventLog, asset_id: &str) -> Result<AssetState, ActorProcessingErr> {
    let load = log.load_stream(&asset_stream(asset_id))?;
    let mut state = match &load.snapshot {
        Some(snapshot) => rmp_serde::from_slice(&snapshot.state)?,
        None => AssetState { asset_id: asset_id.to_owned(), ..AssetState::default() },
    };
    for record in &load.records {
        apply(&mut state, &record.event()?);
    }
    Ok(state)
}

/// The state of an asset as it was at `time`: its events up to `time` folded from the start
/// of its stream (time travel).
///
/// # Errors
/// When the log cannot be read.
pub fn state_at(log: &EventLog, asset_id: &str, time: Timestamp) -> Result<AssetState, ActorProcessingErr> {
    let mut state = AssetState { asset_id: asset_id.to_owned(), ..AssetState::default() };
    for record in log.read_stream(&asset_stream(asset_id), 1)? {
        if record.time > time {
            break;
        }
        apply(&mut state, &record.event()?);
    }
    Ok(state)
}

/// Appends an asset's events with the expected sequence `expected` through the batching
/// writer, which publishes them, and waits for the answer. (The batch path does not wait:
/// see [`AssetActor::run_batch`].) Every append of an asset goes through the one writer
/// queue, so its appends stay in order.
async fn persist(
    state: &AssetActorState,
    expected: u64,
    events: Vec<Event>,
) -> Result<Vec<citytwin_core::log::Appended>, crate::writer::WriteError> {
    state.args.writer.append_published(state.stream.clone(), Expected::Seq(expected), events).await
}

/// The event a command carries (an observation), if any.
fn observed_event(command: AssetCommand) -> Option<Box<Event>> {
    match command {
        AssetCommand::Observe(event) => Some(Box::new(event)),
        _ => None,
    }
}

fn panic_text(panic: &(dyn std::any::Any + Send)) -> String {
    panic
        .downcast_ref::<&str>()
        .map(|s| (*s).to_owned())
        .or_else(|| panic.downcast_ref::<String>().cloned())
        .unwrap_or_else(|| "panic with a non-text payload".to_owned())
}

impl AssetActor {
    async fn run_command(
        &self,
        myself: &ActorRef<AssetMsg>,
        command: AssetCommand,
        state: &mut AssetActorState,
    ) -> Result<CommandReply, ActorProcessingErr> {
        let decided = catch_unwind(AssertUnwindSafe(|| {
            #[cfg(test)]
            tests::maybe_panic(&command);
            decide(&state.asset, &command)
        }));
        let events = match decided {
            Ok(Ok(events)) => events,
            Ok(Err(rejection)) => return Ok(Err(CommandError::Rejected(rejection))),
            Err(panic) => return Err(self.poisoned(observed_event(command), panic_text(&*panic), state).await),
        };
        if events.is_empty() {
            return Ok(Ok(events));
        }
        // The reply carries the events, and the writer publishes them: one copy.
        let written = persist(state, state.asset.version, events.clone()).await;
        if let Err(error) = written {
            // Nothing was acknowledged; a poisoned log fails every later write too.
            tracing::error!(asset = %state.asset.asset_id, %error, "asset could not persist its events");
            return Ok(Err(CommandError::Storage(error.0)));
        }
        let applied = catch_unwind(AssertUnwindSafe(|| {
            for event in &events {
                apply(&mut state.asset, event);
            }
        }));
        if let Err(panic) = applied {
            return Err(self.poisoned(observed_event(command), panic_text(&*panic), state).await);
        }
        state.since_snapshot += events.len() as u64;
        if state.since_snapshot >= state.args.config.snapshot_every {
            self.snapshot(state).await?;
        }
        self.arm_heartbeat(myself, state);
        Ok(Ok(events))
    }

    /// Runs a batch: each command is decided against the state left by the previous ones and
    /// applied at once; all resulting events go to the writer in one append, without waiting
    /// for it: the writer thread publishes them and `part` is answered once they are committed,
    /// while the actor goes on with its next message (group commit across actors). Returns
    /// the failure when the actor must restart (a panic while applying).
    async fn run_batch(
        &self,
        myself: &ActorRef<AssetMsg>,
        commands: Vec<AssetCommand>,
        mut part: crate::completion::Part,
        state: &mut AssetActorState,
    ) -> Option<ActorProcessingErr> {
        let start_version = state.asset.version;
        let mut outcomes: Vec<BatchReply> = Vec::with_capacity(commands.len());
        // As the writer publishes them (see `LogWriter::submit`): moved once, here.
        let mut events: Vec<Committed> = Vec::with_capacity(commands.len());
        let mut failure = None;
        let mut commands = commands.into_iter();
        for command in commands.by_ref() {
            let decided = catch_unwind(AssertUnwindSafe(|| {
                #[cfg(test)]
                tests::maybe_panic(&command);
                decide_lean(&state.asset, &command)
            }));
            match decided {
                Ok(Ok(decision)) => {
                    let observed = decision.keeps_event;
                    let first = events.len();
                    decision.for_each_event(command, |event| events.push(Committed { position: 0, event }));
                    let applied = catch_unwind(AssertUnwindSafe(|| {
                        for Committed { event, .. } in &events[first..] {
                            #[cfg(test)]
                            tests::maybe_panic_applying(event);
                            apply(&mut state.asset, event);
                        }
                    }));
                    if let Err(panic) = applied {
                        // The observed event (first, when stored) is what goes to the dead-letter
                        // queue; this command's events are not appended.
                        let mut decided = events.split_off(first);
                        let event = observed.then(|| Box::new(decided.swap_remove(0).event));
                        let error = self.poisoned(event, panic_text(&*panic), state).await;
                        outcomes.push(Err(CommandError::Poison(error.to_string()).into()));
                        failure = Some(error);
                        break;
                    }
                    outcomes.push(Ok(events.len() - first));
                }
                Ok(Err(rejection)) => {
                    let event = observed_event(command);
                    outcomes.push(Err(BatchFailure { error: CommandError::Rejected(rejection), event }));
                }
                Err(panic) => {
                    // `decide` is pure: the state is intact, the rest of the batch goes on.
                    let error = self.poisoned(observed_event(command), panic_text(&*panic), state).await;
                    outcomes.push(Err(CommandError::Poison(error.to_string()).into()));
                }
            }
        }
        // After a failure, the commands not run yet go back to the inbox, ahead of anything
        // pending: the shard hands the inbox to the successor, which runs them on its
        // rebuilt state. Without a shard nobody would, so they are refused (retryable).
        let rest: Vec<AssetCommand> = commands.collect();
        if !rest.is_empty() {
            if state.args.shard.is_some() {
                let rest_part = part.split_off(outcomes.len());
                state.args.inbox.put_back(rest, rest_part);
            } else {
                let refused =
                    || Err(CommandError::Storage("the asset restarted before this command ran".into()).into());
                outcomes.extend(rest.iter().map(|_| refused()));
            }
        }
        if events.is_empty() {
            part.answer(outcomes);
            return failure;
        }
        state.since_snapshot += events.len() as u64;
        // A snapshot of the state with these events, saved once they are in the log (a
        // snapshot must never be ahead of the log).
        let snapshot = if failure.is_none() && state.since_snapshot >= state.args.config.snapshot_every {
            state.since_snapshot = 0;
            match rmp_serde::to_vec(&state.asset) {
                Ok(bytes) => Some((state.asset.version, bytes)),
                Err(error) => return Some(error.into()),
            }
        } else {
            None
        };
        let done = self.on_committed(myself, outcomes, part, snapshot, state);
        state.unanswered.fetch_add(1, std::sync::atomic::Ordering::AcqRel);
        state.args.writer.submit(state.stream.clone(), Expected::Seq(start_version), events, done).await;
        if failure.is_none() {
            self.arm_heartbeat(myself, state);
        }
        failure
    }

    /// What the writer thread does once a batch's append is answered (and published): answer
    /// the part, save the snapshot; or, when the append was refused, tell the actor to rebuild
    /// (its state holds events the log does not) and answer with the error.
    fn on_committed(
        &self,
        myself: &ActorRef<AssetMsg>,
        outcomes: Vec<BatchReply>,
        part: crate::completion::Part,
        snapshot: Option<(u64, Vec<u8>)>,
        state: &AssetActorState,
    ) -> crate::writer::Done {
        let (actor, unanswered) = (myself.clone(), Arc::clone(&state.unanswered));
        let (snapshots, stream) = (state.args.writer.snapshots().clone(), state.stream.clone());
        Box::new(move |result| {
            match result {
                Ok(()) => {
                    part.answer(outcomes);
                    if let Some((seq, bytes)) = snapshot {
                        snapshots.offer(stream, seq, bytes);
                    }
                }
                Err(error) => {
                    tracing::error!(%stream, %error, "asset could not persist a batch; rebuilding it from the log");
                    // Queued before the answer: whatever a caller sends the asset after seeing
                    // the refusal reaches it after the rebuild (one mailbox, first in first out).
                    let _ = actor.cast(AssetMsg::StorageFailed(error.0.clone()));
                    part.answer(outcomes.into_iter().map(|outcome| match outcome {
                        Ok(_) => Err(CommandError::Storage(error.0.clone()).into()),
                        failed => failed,
                    }));
                }
            }
            unanswered.fetch_sub(1, std::sync::atomic::Ordering::AcqRel);
        })
    }

    /// Waits until the writer has answered this actor's submitted appends (before a
    /// successor reads its stream).
    async fn settle(&self, state: &AssetActorState) {
        if state.unanswered.load(std::sync::atomic::Ordering::Acquire) > 0
            && let Err(error) = state.args.writer.flush().await
        {
            tracing::error!(asset = %state.asset.asset_id, %error, "waiting for the writer failed");
        }
    }

    /// Sends the command's event to the dead-letter queue and returns the error that fails
    /// the actor (so it restarts from the log).
    async fn poisoned(
        &self,
        event: Option<Box<Event>>,
        message: String,
        state: &AssetActorState,
    ) -> ActorProcessingErr {
        tracing::error!(asset = %state.asset.asset_id, %message, "poison command: dead-lettering it and restarting the asset");
        if let Some(event) = event {
            let log = state.args.log.clone();
            let reason = DeadLetterReason::Panicked(message.clone());
            let stored = tokio::task::spawn_blocking(move || dead_letter(&log, &event, &reason)).await;
            if let Ok(Err(error)) | Err(error) = stored.map_err(|e| citytwin_core::Error::Rejected(e.to_string())) {
                tracing::error!(%error, "could not dead-letter the poison event");
            }
        }
        format!("asset {} crashed on a command: {message}", state.asset.asset_id).into()
    }

    async fn snapshot(&self, state: &mut AssetActorState) -> Result<(), ActorProcessingErr> {
        let bytes = rmp_serde::to_vec(&state.asset)?;
        let (log, stream, seq) = (state.args.log.clone(), state.stream.clone(), state.asset.version);
        tokio::task::spawn_blocking(move || log.save_snapshot(&stream, seq, &bytes)).await??;
        state.since_snapshot = 0;
        Ok(())
    }

    /// Notes that the asset was heard from and makes sure one heartbeat timer is pending.
    fn arm_heartbeat(&self, myself: &ActorRef<AssetMsg>, state: &mut AssetActorState) {
        state.last_heard = tokio::time::Instant::now();
        if let Some(interval) = state.asset.reporting_interval_s
            && state.asset.status == super::logic::Lifecycle::Online
            && state.heartbeat.is_none()
        {
            let timer = myself.send_after(heartbeat_grace(interval), || AssetMsg::HeartbeatDeadline);
            state.heartbeat = Some(timer.abort_handle());
        }
    }
}

impl Actor for AssetActor {
    type Msg = AssetMsg;
    type State = AssetActorState;
    type Arguments = AssetArgs;

    async fn post_stop(
        &self,
        _myself: ActorRef<AssetMsg>,
        state: &mut AssetActorState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(timer) = state.heartbeat.take() {
            timer.abort();
        }
        Ok(())
    }

    async fn pre_start(
        &self,
        myself: ActorRef<AssetMsg>,
        args: AssetArgs,
    ) -> Result<AssetActorState, ActorProcessingErr> {
        // NOTE: read inline: after recovery and passivation the snapshot is current, so this
        // is one positioned read of the page cache, cheaper than a hand-off to the blocking
        // pool (which cost two thread wake-ups per rehydration).
        let asset = rehydrate(&args.log, &args.asset_id)?;
        let idle = args.config.idle_timeout;
        if args.shard.is_none() {
            // Under a shard, the shard's sweep finds idle actors: no timer task per actor.
            myself.send_interval(idle.max(Duration::from_millis(10)) / 2, || AssetMsg::IdleCheck);
        }
        args.activity.touch();
        let mut state = AssetActorState {
            stream: asset_stream(&args.asset_id),
            args,
            asset,
            since_snapshot: 0,
            last_heard: tokio::time::Instant::now(),
            heartbeat: None,
            unanswered: Arc::default(),
        };
        self.arm_heartbeat(&myself, &mut state);
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<AssetMsg>,
        message: AssetMsg,
        state: &mut AssetActorState,
    ) -> Result<(), ActorProcessingErr> {
        let result = self.handle_message(&myself, message, state).await;
        if result.is_err() {
            // The supervisor rebuilds a successor from the log: let the log catch up first.
            self.settle(state).await;
        }
        result
    }
}

impl AssetActor {
    /// Stops after the submitted appends are answered, leaving a snapshot of the state it
    /// stops with (so the next rehydration, or a query, is one read).
    async fn passivate(&self, myself: &ActorRef<AssetMsg>, state: &mut AssetActorState) {
        self.settle(state).await;
        if state.since_snapshot > 0 {
            // NOTE: written inline (one append to the snapshot table) rather than through the
            // blocking pool: passivation happens for every asset that goes quiet.
            let saved = rmp_serde::to_vec(&state.asset)
                .map_err(|e| citytwin_core::Error::Rejected(e.to_string()))
                .and_then(|bytes| state.args.log.save_snapshot(&state.stream, state.asset.version, &bytes));
            match saved {
                Ok(()) => state.since_snapshot = 0,
                Err(error) => {
                    tracing::warn!(asset = %state.asset.asset_id, %error, "no snapshot at passivation (it is only a cache)")
                }
            }
        }
        myself.stop(Some("passivated".into()));
    }

    /// Runs everything pending in the inbox as one batch; returns the failure when the actor
    /// must restart (see [`AssetActor::run_batch`]).
    async fn drain_inbox(
        &self,
        myself: &ActorRef<AssetMsg>,
        state: &mut AssetActorState,
    ) -> Option<ActorProcessingErr> {
        let (commands, part) = state.args.inbox.take()?;
        super::inbox::DRAINS.record(commands.len());
        state.args.activity.touch();
        self.run_batch(myself, commands, part, state).await
    }

    async fn handle_message(
        &self,
        myself: &ActorRef<AssetMsg>,
        message: AssetMsg,
        state: &mut AssetActorState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            AssetMsg::Command(command, reply) => {
                state.args.activity.touch();
                let outcome = self.run_command(myself, *command, state).await;
                match outcome {
                    Ok(result) => {
                        // A caller that gave up waiting is not an error of the asset.
                        let _ = reply.send(result);
                    }
                    Err(failure) => {
                        let reply = std::sync::Mutex::new(Some(reply));
                        return Err(Box::new(Crashed { message: failure.to_string(), reply }));
                    }
                }
            }
            AssetMsg::Batch(commands, part) => {
                state.args.activity.touch();
                if let Some(failure) = self.run_batch(myself, commands, part, state).await {
                    return Err(failure);
                }
            }
            AssetMsg::Drain => {
                if let Some(failure) = self.drain_inbox(myself, state).await {
                    return Err(failure);
                }
            }
            AssetMsg::GetState(reply) => {
                state.args.activity.touch();
                let _ = reply.send(state.asset.clone());
            }
            AssetMsg::HeartbeatDeadline => {
                state.heartbeat = None;
                if let Some(interval) = state.asset.reporting_interval_s {
                    // Heard from since the timer was set: wait out the rest of the grace.
                    let remaining = heartbeat_grace(interval).saturating_sub(state.last_heard.elapsed());
                    if !remaining.is_zero() {
                        let timer = myself.send_after(remaining, || AssetMsg::HeartbeatDeadline);
                        state.heartbeat = Some(timer.abort_handle());
                        return Ok(());
                    }
                }
                let now = (state.args.config.clock)();
                let outcome = self.run_command(myself, AssetCommand::CheckHeartbeat { now }, state).await?;
                if let Err(error) = outcome {
                    tracing::warn!(asset = %state.asset.asset_id, %error, "heartbeat check failed");
                }
            }
            AssetMsg::IdleCheck => {
                // Only actors without a shard check themselves; a shard's sweep reads their
                // activity clocks instead.
                if state.args.activity.idle_for() >= state.args.config.idle_timeout {
                    tracing::debug!(asset = %state.asset.asset_id, "asset idle: stopping");
                    self.passivate(myself, state).await;
                }
            }
            AssetMsg::Passivate => {
                // The shard stopped filling the inbox when it chose to passivate; a `Drain` for
                // what it holds may still be queued behind this message: run it now.
                if let Some(failure) = self.drain_inbox(myself, state).await {
                    return Err(failure);
                }
                self.passivate(myself, state).await
            }
            AssetMsg::StorageFailed(error) => {
                // Rebuilt in place rather than by a restart: a failing actor drops its mailbox,
                // and with it the commands and queries queued behind this message. Appends
                // still in flight are answered first, so the rebuild reads all that stuck.
                tracing::warn!(asset = %state.asset.asset_id, %error, "an append was refused; rebuilding the asset from the log");
                self.settle(state).await;
                let (log, id) = (state.args.log.clone(), state.asset.asset_id.clone());
                state.asset = tokio::task::spawn_blocking(move || rehydrate(&log, &id)).await??;
                state.since_snapshot = 0;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests;
