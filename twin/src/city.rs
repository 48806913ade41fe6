//! The twin's front door: [`Twin`] (the narrow interface the simulator and the server use)
//! and `CityActor`, the root supervisor of the shard supervisors.
//!
//! Supervision tree: `CityActor` → `ShardActor` × n → `AssetActor` per live asset. Assets hash
//! to shards (FNV-1a of the asset id, stable across runs). A shard that fails is restarted
//! (its assets rehydrate from the log on their next message) up to `max_restarts` within
//! `restart_window`; beyond that the city stops and the failure is logged.

use std::borrow::BorrowMut;
use std::collections::VecDeque;
use std::path::PathBuf;
use std::sync::{Arc, RwLock};
use std::time::Duration;

use citytwin_core::event::{Event, Timestamp, ValidationError};
use citytwin_core::log::{EventLog, Expected, LogConfig};
use ractor::rpc::CallResult;
use ractor::{Actor, ActorId, ActorProcessingErr, ActorRef, SupervisionEvent};
use tokio::sync::broadcast;

use crate::asset::actor::{AssetConfig, AssetMsg, BatchFailure, CommandError};
use crate::asset::logic::{AssetCommand, AssetState};
use crate::bus::{Bus, Filter, Subscription};
use crate::cell::{CellConfig, CellRouterActor, CellRouterArgs, CellRouterMsg};
use crate::deadletter::{
    DEAD_LETTER_STREAM, DeadLetterReason, ReprocessReport, RetryPolicy, dead_letter_entry, reprocess,
};
use crate::delivery::{DeliveryClass, DeliveryClasses, IngestCounts, IngestStats};
use crate::route::{NO_SLOT, Routed};
use crate::shard::{Directory, Occupancy, ShardActor, ShardArgs, ShardEvent, ShardMsg};
use crate::writer::LogWriter;

/// The default of [`TwinConfig::max_live_assets`].
pub const DEFAULT_MAX_LIVE_ASSETS: usize = 250_000;

/// How a twin runs.
#[derive(Debug, Clone)]
pub struct TwinConfig {
    /// Where the event log lives.
    pub data_dir: PathBuf,
    /// Event log settings.
    pub log: LogConfig,
    /// Number of shards.
    pub shards: usize,
    /// Asset actor settings.
    pub asset: AssetConfig,
    /// Restarts allowed per window before escalating (per shard for assets, for the city
    /// for shards).
    pub max_restarts: usize,
    /// See `max_restarts`.
    pub restart_window: Duration,
    /// Capacity of the event bus in published batches (one per group commit); subscribers
    /// that fall further behind catch up from the log.
    pub bus_capacity: usize,
    /// Appends queued for the writer before producers wait.
    pub writer_queue: usize,
    /// Most events per log append (a group commit, published as one bus batch). 2,048 by
    /// default: a group's bus batch is one allocation of about 0.5 MB per 2k events, and
    /// groups of 8k (the earlier default) ran to tens of MB at a city-scale run's rate,
    /// fresh pages for the kernel to zero every time (a 3-hour slice of `day-100k.toml`
    /// took 37.5–37.9 s of user CPU against 39.4–41.1 s).
    pub writer_max_batch: usize,
    /// Cell actors and their CEP rules; `None` runs no cell actors.
    pub cells: Option<CellConfig>,
    /// Commands in flight through the actors at most (bounds every mailbox).
    pub max_in_flight: usize,
    /// Delivery class per event type.
    pub delivery: DeliveryClasses,
    /// Most asset actors in memory in the twin, live or stopping (0: no limit), split evenly
    /// over the shards (at least one per shard). Near it some of the least recently active
    /// passivate whatever their idle time (the lowest ranked: see the shard's `make_room`),
    /// and at it a waking asset waits for one to stop (see [`ShardArgs::max_live`]). About
    /// 11–15 KB each live, under 1 KB passivated.
    pub max_live_assets: usize,
}

impl TwinConfig {
    /// Defaults with the log in `data_dir`.
    pub fn new(data_dir: impl Into<PathBuf>) -> Self {
        TwinConfig {
            data_dir: data_dir.into(),
            log: LogConfig::default(),
            shards: 8,
            asset: AssetConfig::default(),
            max_restarts: 10,
            restart_window: Duration::from_secs(60),
            bus_capacity: 4096,
            writer_queue: 16_384,
            writer_max_batch: 2_048,
            cells: None,
            max_in_flight: 65_536,
            delivery: DeliveryClasses::default(),
            max_live_assets: DEFAULT_MAX_LIVE_ASSETS,
        }
    }
}

/// Why an event was not accepted.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum IngestError {
    /// Not a valid event (every problem listed); dead-lettered.
    #[error("invalid event: {0}")]
    Invalid(ValidationError),
    /// The asset refused it; dead-lettered.
    #[error(transparent)]
    Refused(#[from] CommandError),
    /// Too much load: the (at-most-once) event was shed; retry after the hint.
    #[error("overloaded: event shed (at-most-once telemetry); retry after {retry_after:?}")]
    Overloaded {
        /// A hint for the producer.
        retry_after: Duration,
    },
    /// The twin is stopping or a shard is gone.
    #[error("the twin is unavailable: {0}")]
    Unavailable(String),
}

/// Stable shard of an asset: FNV-1a of its id.
pub fn shard_of(asset_id: &str, shards: usize) -> usize {
    let hash =
        asset_id.bytes().fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3));
    (hash % shards.max(1) as u64) as usize
}

/// The log stream of events not about one asset (incidents, weather, outages).
pub const CITY_STREAM: &str = "city";

/// A running twin.
#[derive(Debug)]
pub struct Twin {
    city: ActorRef<CityMsg>,
    city_handle: tokio::task::JoinHandle<()>,
    shards: Arc<RwLock<Vec<ActorRef<ShardMsg>>>>,
    log: EventLog,
    writer: LogWriter,
    bus: Bus,
    shard_events: broadcast::Sender<ShardEvent>,
    cells: Option<(ActorRef<CellRouterMsg>, tokio::task::JoinHandle<()>)>,
    in_flight: Arc<tokio::sync::Semaphore>,
    delivery: DeliveryClasses,
    stats: Arc<IngestStats>,
    directories: Vec<Directory>,
    recovery: crate::recovery::FoldReport,
}

impl Twin {
    /// Opens the log (recovering it) and starts the supervision tree.
    ///
    /// # Errors
    /// When the log cannot be opened or the actors cannot start.
    pub async fn start(config: TwinConfig) -> Result<Twin, ActorProcessingErr> {
        let (dir, log_config) = (config.data_dir.join("log"), config.log.clone());
        // Recovery: open the log (verifying it), then bring every asset's snapshot up to date
        // with it in one pass, so each asset rehydrates from one read.
        let (log, recovery) = tokio::task::spawn_blocking(move || {
            let log = EventLog::open(dir, log_config)?;
            let recovery = crate::recovery::fold_assets(&log)?;
            Ok::<_, citytwin_core::Error>((log, recovery))
        })
        .await??;
        let bus = Bus::new(log.clone(), config.bus_capacity);
        let writer = LogWriter::start(log.clone(), config.writer_queue, config.writer_max_batch, Some(bus.clone()));
        let (shard_events, _) = broadcast::channel(1024);
        let shards = Arc::new(RwLock::new(Vec::new()));
        let directories: Vec<Directory> = (0..config.shards.max(1)).map(|_| Directory::default()).collect();
        let args = CityArgs {
            directories: directories.clone(),
            config,
            log: log.clone(),
            writer: writer.clone(),
            shard_events: shard_events.clone(),
            shards: Arc::clone(&shards),
        };
        let cell_config = args.config.cells.clone();
        let in_flight = Arc::new(tokio::sync::Semaphore::new(args.config.max_in_flight.max(1)));
        let delivery = args.config.delivery.clone();
        let (city, city_handle) = Actor::spawn(None, CityActor, args).await?;
        let cells = match cell_config {
            Some(config) => {
                let args = CellRouterArgs { config, writer: writer.clone(), bus: bus.clone() };
                Some(Actor::spawn(None, CellRouterActor, args).await?)
            }
            None => None,
        };
        let stats = Arc::new(IngestStats::default());
        Ok(Twin {
            city,
            city_handle,
            shards,
            log,
            writer,
            bus,
            shard_events,
            cells,
            in_flight,
            delivery,
            stats,
            directories,
            recovery,
        })
    }

    /// What recovery did at startup (the assets' snapshots brought up to date with the log).
    pub fn recovery(&self) -> &crate::recovery::FoldReport {
        &self.recovery
    }

    /// The event log (read side: replay, time travel, dead letters).
    pub fn log(&self) -> &EventLog {
        &self.log
    }

    /// Committed events that pass `filter`, from now on, gap-free.
    pub fn subscribe(&self, filter: Filter) -> Subscription {
        self.bus.subscribe(filter)
    }

    /// The bus (to subscribe from other components).
    pub fn bus(&self) -> &Bus {
        &self.bus
    }

    /// Shard notifications (actor starts, passivations, restarts).
    pub fn shard_events(&self) -> broadcast::Receiver<ShardEvent> {
        self.shard_events.subscribe()
    }

    fn shard_for(&self, asset_id: &str) -> Result<ActorRef<ShardMsg>, IngestError> {
        let shards = self.shards.read().map_err(|_| IngestError::Unavailable("shard table poisoned".into()))?;
        shards
            .get(shard_of(asset_id, shards.len()))
            .cloned()
            .ok_or_else(|| IngestError::Unavailable("no shards".into()))
    }

    /// Validates and ingests one event: routed to its asset (which decides, persists and
    /// publishes), or, for events about no asset, appended to the city stream and published.
    /// Invalid and refused events go to the dead-letter queue with the reason.
    ///
    /// # Errors
    /// See [`IngestError`].
    pub async fn ingest(&self, event: Event) -> Result<Vec<Event>, IngestError> {
        let (error, event) = match self.ingest_inner(event).await {
            Ok(events) => return Ok(events),
            Err(failed) => failed,
        };
        let reason = match &error {
            IngestError::Invalid(problems) => Some(DeadLetterReason::InvalidFormat(problems.to_string())),
            IngestError::Refused(CommandError::Rejected(rejection)) => {
                Some(DeadLetterReason::Rejected(rejection.to_string()))
            }
            IngestError::Overloaded { .. } => {
                Some(DeadLetterReason::Shed("at-most-once event shed under overload".into()))
            }
            _ => None,
        };
        if let (Some(reason), Some(event)) = (reason, event) {
            self.dead_letter(event, reason).await;
        }
        Err(error)
    }

    /// As [`Twin::ingest`], but a failure is only returned, not dead-lettered (for
    /// reprocessing dead letters).
    ///
    /// # Errors
    /// See [`IngestError`].
    pub async fn try_ingest(&self, event: Event) -> Result<Vec<Event>, IngestError> {
        self.ingest_inner(event).await.map_err(|(error, _)| error)
    }

    /// Ingests; a failure comes back with the event when it is still at hand (for the
    /// dead-letter queue), so the success path never copies it.
    async fn ingest_inner(&self, event: Event) -> Result<Vec<Event>, (IngestError, Option<Event>)> {
        if let Err(error) = event.validate() {
            IngestStats::add(&self.stats.invalid);
            return Err((IngestError::Invalid(error), Some(event)));
        }
        // Bounded load: at-most-once telemetry is shed when every slot is taken; everything
        // else waits for one (backpressure on the producer).
        let _permit = match self.delivery.class_of(event.ty.as_str()) {
            DeliveryClass::AtMostOnce => match Arc::clone(&self.in_flight).try_acquire_owned() {
                Ok(permit) => permit,
                Err(_) => {
                    IngestStats::add(&self.stats.shed);
                    return Err((IngestError::Overloaded { retry_after: Duration::from_millis(100) }, Some(event)));
                }
            },
            DeliveryClass::AtLeastOnce => match Arc::clone(&self.in_flight).acquire_owned().await {
                Ok(permit) => permit,
                Err(_) => return Err((IngestError::Unavailable("the twin is stopping".into()), Some(event))),
            },
        };
        let result = self.route(event).await;
        match &result {
            Ok(_) => IngestStats::add(&self.stats.accepted),
            Err((IngestError::Refused(CommandError::Rejected(_)), _)) => IngestStats::add(&self.stats.rejected),
            Err(_) => {}
        }
        result
    }

    /// Validates and ingests many events with one message per shard and one per asset (each
    /// asset persists its share in one append): the high-throughput path for the simulator and
    /// the gateways. Returns one result per event, in order: how many events it appended (the
    /// event itself plus derived ones, such as `asset.online`); invalid and refused events are
    /// dead-lettered. Batches wait for capacity (backpressure) rather than shed. Nothing is
    /// copied on the way: each event moves into its asset's group (see [`crate::route`]),
    /// then into the log and onto the bus. `events` is a `Vec`, or `&mut` one for a caller
    /// that reuses its buffer: it is left empty, with its capacity.
    ///
    /// # Errors
    /// Per event, see [`IngestError`].
    ///
    /// # Panics
    /// With 2^32 − 2 events or more in one call.
    ///
    /// # Cancel safety
    /// Not cancel safe: dropped while it waits for capacity, it has taken nothing (events lent
    /// as `&mut Vec` are still there); dropped later, part of the batch may be ingested
    /// without the caller learning which, and its invalid events may not be dead-lettered.
    pub async fn ingest_batch(&self, mut events: impl BorrowMut<Vec<Event>>) -> Vec<Result<usize, IngestError>> {
        let events = events.borrow_mut();
        let total = events.len();
        // Each event's result, set once below (`answered` counts them): invalid, about the
        // city, or answered by its asset through the collector.
        let mut results: Vec<Result<usize, IngestError>> = (0..total).map(|_| Ok(0)).collect();
        let mut answered = 0usize;
        let permits = u32::try_from(total.min(self.in_flight.available_permits().max(1))).unwrap_or(u32::MAX);
        let _permit = match Arc::clone(&self.in_flight).acquire_many_owned(permits.max(1)).await {
            Ok(permit) => permit,
            Err(_) => {
                events.clear();
                return (0..total).map(|_| Err(IngestError::Unavailable("the twin is stopping".into()))).collect();
            }
        };
        let shard_count = self.shards.read().map(|s| s.len()).unwrap_or(0).max(1);
        // The batch's dead letters, appended together (a flood of bad input costs one append
        // per call, not one per event).
        let mut dead_letters: Vec<Event> = Vec::new();
        let Routed { shards: per_shard, collector, slot_of, city } =
            crate::route::route(events, shard_count, |index, event, problems| {
                IngestStats::add(&self.stats.invalid);
                dead_letters.push(dead_letter_entry(event, &DeadLetterReason::InvalidFormat(problems.to_string())));
                results[index] = Err(IngestError::Invalid(problems));
                answered += 1;
            });
        if !city.1.is_empty() {
            answered += city.0.len();
            match self.writer.append_published(CITY_STREAM.to_owned(), Expected::Any, city.1).await {
                Ok(_) => {
                    IngestStats::add_n(&self.stats.accepted, city.0.len() as u64);
                    for index in &city.0 {
                        results[*index] = Ok(1);
                    }
                }
                Err(error) => {
                    for index in city.0 {
                        results[index] = Err(IngestError::Unavailable(error.0.clone()));
                    }
                }
            }
        }
        // Each shard gets its assets' groups in one message. One collector for the whole batch
        // (made by `route`): the assets (or the writer, once their events are committed) fill
        // its slots, and this call is woken once.
        for (shard, groups) in per_shard.into_iter().enumerate() {
            if groups.is_empty() {
                continue;
            }
            // A message that is not delivered drops its groups, whose parts answer with an error.
            if let Some(actor) = self.shards.read().ok().and_then(|s| s.get(shard).cloned()) {
                let _ = actor.cast(ShardMsg::Batch(groups));
            }
        }
        let mut answers = collector.wait().await;
        // In the batch's order (each result written once, in turn); one count for the call.
        let mut accepted = 0;
        for (index, &slot) in slot_of.iter().enumerate() {
            if slot == NO_SLOT {
                continue;
            }
            answered += 1;
            results[index] = match answers.take(slot as usize) {
                Ok(appended) => {
                    accepted += 1;
                    Ok(appended)
                }
                Err(BatchFailure { error, event }) => {
                    if let CommandError::Rejected(rejection) = &error {
                        IngestStats::add(&self.stats.rejected);
                        if let Some(event) = event {
                            dead_letters
                                .push(dead_letter_entry(&event, &DeadLetterReason::Rejected(rejection.to_string())));
                        }
                    }
                    Err(IngestError::Refused(error))
                }
            };
        }
        IngestStats::add_n(&self.stats.accepted, accepted);
        // Durable before the refusals are answered, as each one was when appended alone. When
        // the log refuses the group (one entry it cannot store), each goes alone, so one bad
        // entry does not cost the others their place in the queue.
        if let Err(error) = self.dead_letter_entries(dead_letters.clone()).await {
            tracing::warn!(%error, "dead-lettering a batch's refused events together failed; appending them one by one");
            for entry in dead_letters {
                let id = entry.id.clone();
                if let Err(error) = self.dead_letter_entries(vec![entry]).await {
                    tracing::error!(%error, entry = %id, "could not dead-letter a refused event");
                }
            }
        }
        assert_eq!(answered, total, "every event has its result");
        results
    }

    /// Ends a run: once the cells have seen every event committed so far, moves every
    /// cell's watermark to `to` (closing windows, firing negations whose deadline passed) and
    /// returns when the resulting alerts are appended and published. Without cell actors
    /// there is nothing to do.
    ///
    /// # Errors
    /// When the cell router is gone.
    pub async fn flush_cells(&self, to: Timestamp) -> Result<(), IngestError> {
        let Some((router, _)) = &self.cells else { return Ok(()) };
        let upto = self.bus.published();
        ractor::call!(router, |reply| CellRouterMsg::Flush { to, upto, reply })
            .map_err(|e| IngestError::Unavailable(format!("cell router: {e}")))
    }

    /// Counters of the ingest path (accepted, shed, invalid, rejected).
    pub fn stats(&self) -> IngestCounts {
        self.stats.counts()
    }

    async fn route(&self, event: Event) -> Result<Vec<Event>, (IngestError, Option<Event>)> {
        let Some(asset_id) = event.asset_id().map(str::to_owned) else {
            let events = vec![event];
            self.writer
                .append_published(CITY_STREAM.to_owned(), Expected::Any, events.clone())
                .await
                .map_err(|e| (IngestError::Unavailable(e.0), None))?;
            return Ok(events);
        };
        // Fast path: straight to the live actor. A command it did not take (it stopped first:
        // passivation, failure) was not processed, so it is safe to go round through the shard,
        // which holds messages for successors. The one copy kept for that also serves the
        // dead-letter queue when the asset refuses the event.
        let live = self
            .directories
            .get(shard_of(&asset_id, self.directories.len()))
            .and_then(|directory| directory.read().ok().and_then(|d| d.get(&asset_id).cloned()));
        let event = match live {
            Some(actor) => {
                let kept = event.clone();
                let command = AssetCommand::Observe(event);
                // NOTE: no timeout: a live actor always answers or drops the reply port (then
                // SenderError below); a timeout would cost a timer per command (measured 7 %).
                match actor.call(|reply| AssetMsg::Command(Box::new(command), reply), None).await {
                    Ok(CallResult::Success(Ok(events))) => return Ok(events),
                    Ok(CallResult::Success(Err(error))) => return Err((IngestError::Refused(error), Some(kept))),
                    // Unknown whether it ran: do not run it twice.
                    Ok(CallResult::Timeout) => {
                        return Err((IngestError::Unavailable("the asset did not answer in time".into()), None));
                    }
                    Ok(CallResult::SenderError) | Err(_) => kept,
                }
            }
            None => event,
        };
        // Slow path (first message to an asset, or one passivating): through the shard.
        let kept = event.clone();
        let shard = self.shard_for(&asset_id).map_err(|e| (e, None))?;
        let command = AssetCommand::Observe(event);
        let reply = shard
            .call(|reply| ShardMsg::Command(asset_id, Box::new(command), reply), Some(Duration::from_secs(30)))
            .await
            .map_err(|e| (IngestError::Unavailable(e.to_string()), None))?;
        match reply {
            CallResult::Success(Ok(events)) => Ok(events),
            CallResult::Success(Err(error)) => Err((IngestError::Refused(error), Some(kept))),
            other => Err((IngestError::Unavailable(format!("{other:?}")), None)),
        }
    }

    /// Retries every pending dead letter whose original event is known, with exponential
    /// backoff; marks each resolved or exhausted.
    ///
    /// # Errors
    /// When the log cannot be read or written.
    pub async fn reprocess_dead_letters(&self, policy: RetryPolicy) -> citytwin_core::Result<ReprocessReport> {
        reprocess(&self.log, policy, |event| async move {
            self.try_ingest(event).await.map(|_| ()).map_err(|e| e.to_string())
        })
        .await
    }

    /// Dead-letters through the batching writer, so that a burst (shedding under overload)
    /// costs one append per batch, not one per event.
    async fn dead_letter(&self, event: Event, reason: DeadLetterReason) {
        let entry = dead_letter_entry(&event, &reason);
        if let Err(error) = self.writer.append(DEAD_LETTER_STREAM.to_owned(), Expected::Any, vec![entry]).await {
            tracing::error!(%error, event = %event.id, "could not dead-letter an event");
        }
    }

    /// Puts entries built by the gateways (refused before they reached the twin: undecodable,
    /// unauthorized) into the dead-letter queue, durably, in one append.
    ///
    /// # Errors
    /// When the log refuses the append (the caller must then not acknowledge the input).
    pub async fn dead_letter_entries(&self, entries: Vec<Event>) -> Result<(), IngestError> {
        if entries.is_empty() {
            return Ok(());
        }
        self.writer
            .append(DEAD_LETTER_STREAM.to_owned(), Expected::Any, entries)
            .await
            .map(|_| ())
            .map_err(|e| IngestError::Unavailable(e.0))
    }

    /// The current state of an asset (rehydrated if it was passivated).
    ///
    /// # Errors
    /// When the twin is unavailable.
    pub async fn asset_state(&self, asset_id: &str) -> Result<AssetState, IngestError> {
        let shard = self.shard_for(asset_id)?;
        let id = asset_id.to_owned();
        match shard.call(|reply| ShardMsg::GetState(id, reply), Some(Duration::from_secs(30))).await {
            Ok(CallResult::Success(state)) => Ok(state),
            other => Err(IngestError::Unavailable(format!("{other:?}"))),
        }
    }

    /// Live asset actors over all shards (not counting those stopping).
    ///
    /// # Errors
    /// When the twin is unavailable.
    pub async fn live_assets(&self) -> Result<usize, IngestError> {
        Ok(self.occupancy().await?.live)
    }

    /// The asset actors over all shards: live, stopping, assets waiting for room under the
    /// live-actor limit, and how often one had to wait (a count that grows while more assets
    /// are active than `max_live_assets` allows).
    ///
    /// # Errors
    /// When a shard does not answer.
    pub async fn occupancy(&self) -> Result<Occupancy, IngestError> {
        let shards = self.shards.read().map_err(|_| IngestError::Unavailable("shard table poisoned".into()))?.clone();
        let mut total = Occupancy::default();
        for shard in shards {
            match shard.call(ShardMsg::Occupancy, Some(Duration::from_secs(30))).await {
                Ok(CallResult::Success(occupancy)) => total = total + occupancy,
                other => return Err(IngestError::Unavailable(format!("{other:?}"))),
            }
        }
        Ok(total)
    }

    /// The latest window results of a routing cell (empty without cell actors).
    ///
    /// # Errors
    /// When the twin is unavailable.
    pub async fn cell_aggregates(
        &self,
        cell: h3o::CellIndex,
    ) -> Result<Vec<citytwin_core::cep::WindowResult>, IngestError> {
        let Some((router, _)) = &self.cells else { return Ok(Vec::new()) };
        match router.call(|reply| CellRouterMsg::Aggregates(cell, reply), Some(Duration::from_secs(30))).await {
            Ok(CallResult::Success(results)) => Ok(results),
            other => Err(IngestError::Unavailable(format!("{other:?}"))),
        }
    }

    /// Stops every actor, flushes the log and writes its heads checkpoint.
    ///
    /// The log's directory stays locked until everything that reads the log is gone: the
    /// twin's own threads end by themselves once it is dropped, but a [`Subscription`] or an
    /// [`EventLog`] handle taken from it keeps it open. A twin started again on the same
    /// directory in this process waits a while for that, then fails with
    /// [`citytwin_core::Error::InUse`].
    ///
    /// # Errors
    /// When the final sync fails.
    pub async fn shutdown(self) -> Result<(), ActorProcessingErr> {
        if let Some((router, handle)) = self.cells {
            router.stop(None);
            handle.await?;
        }
        self.city.stop(None);
        self.city_handle.await?;
        // Snapshots are a cache, but a restart rehydrates faster with them.
        self.writer.snapshots().flush().await;
        // Synced, and the heads checkpointed (`checkpoint` syncs first): a restart indexes only
        // what is appended after.
        let log = self.log.clone();
        tokio::task::spawn_blocking(move || log.checkpoint()).await??;
        Ok(())
    }
}

/// Messages of the city supervisor (it only supervises).
#[derive(Debug)]
pub enum CityMsg {}

/// What the city supervisor starts with (built by [`Twin::start`]).
#[derive(Debug)]
pub struct CityArgs {
    directories: Vec<Directory>,
    config: TwinConfig,
    log: EventLog,
    writer: LogWriter,
    shard_events: broadcast::Sender<ShardEvent>,
    shards: Arc<RwLock<Vec<ActorRef<ShardMsg>>>>,
}

/// The city supervisor's state.
#[derive(Debug)]
pub struct CityState {
    args: CityArgs,
    ids: Vec<ActorId>,
    restarts: VecDeque<tokio::time::Instant>,
}

/// The root supervisor (see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct CityActor;

impl CityActor {
    async fn spawn_shard(
        &self,
        myself: &ActorRef<CityMsg>,
        shard: usize,
        state: &CityArgs,
    ) -> Result<ActorRef<ShardMsg>, ActorProcessingErr> {
        let args = ShardArgs {
            shard,
            log: state.log.clone(),
            writer: state.writer.clone(),
            asset: state.config.asset.clone(),
            max_restarts: state.config.max_restarts,
            restart_window: state.config.restart_window,
            events: Some(state.shard_events.clone()),
            directory: state.directories.get(shard).cloned(),
            max_live: state.config.max_live_assets.div_ceil(state.config.shards.max(1)),
        };
        let (actor, _) = Actor::spawn_linked(None, ShardActor, args, myself.get_cell()).await?;
        Ok(actor)
    }
}

impl Actor for CityActor {
    type Msg = CityMsg;
    type State = CityState;
    type Arguments = CityArgs;

    async fn pre_start(&self, myself: ActorRef<CityMsg>, args: CityArgs) -> Result<CityState, ActorProcessingErr> {
        let mut shards = Vec::with_capacity(args.config.shards);
        for shard in 0..args.config.shards.max(1) {
            shards.push(self.spawn_shard(&myself, shard, &args).await?);
        }
        let ids = shards.iter().map(|shard| shard.get_id()).collect();
        *args.shards.write().map_err(|_| "shard table poisoned")? = shards;
        Ok(CityState { args, ids, restarts: VecDeque::new() })
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<CityMsg>,
        event: SupervisionEvent,
        state: &mut CityState,
    ) -> Result<(), ActorProcessingErr> {
        if let SupervisionEvent::ActorFailed(cell, error) = event {
            let Some(shard) = state.ids.iter().position(|id| *id == cell.get_id()) else {
                return Ok(());
            };
            let now = tokio::time::Instant::now();
            state.restarts.push_back(now);
            while state.restarts.front().is_some_and(|t| now.duration_since(*t) > state.args.config.restart_window) {
                state.restarts.pop_front();
            }
            if state.restarts.len() > state.args.config.max_restarts {
                tracing::error!(shard, %error, "too many shard failures: stopping the twin");
                return Err(format!("too many shard failures; last: shard {shard}: {error}").into());
            }
            tracing::warn!(shard, %error, "shard failed; restarting it");
            let actor = self.spawn_shard(&myself, shard, &state.args).await?;
            state.ids[shard] = actor.get_id();
            state.args.shards.write().map_err(|_| "shard table poisoned")?[shard] = actor;
        }
        Ok(())
    }
}
