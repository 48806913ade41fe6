//! Cell actors: geographic sharding of complex event processing.
//!
//! One `CellActor` per H3 cell at the routing resolution (default 8) runs the CEP rules
//! (`citytwin_core::cep::Engine`) on the events located in its cell. A bus pump task feeds
//! `CellRouterActor` with batches drained from a bus subscription; the router splits each
//! batch by cell (one message per cell per batch, not per event), spawns cell actors on
//! demand under its supervision, and advances every cell's watermark as global event time
//! moves on, so quiet cells still close their windows and fire negations.
//!
//! Alerts become `alert.triggered` events: appended to the cell's stream (`cell:<hex>`) and
//! published. Each cell keeps its latest window results (the per-cell aggregates read model).
//! [`cell_aggregates_at`] rebuilds a cell's (or a parent cell's) aggregates as they were at a
//! past time from the log.
//!
//! Rules grouped by cell must group at the routing resolution or finer: a cell actor sees only
//! its own cell, except for neighbourhood rules (`neighbours = k`), which see the events of the
//! cell's k-ring, keyed by the centre cell (the router sends each event to every cell within k
//! of it). Rules grouped by asset but not by cell run in asset partitions instead (a moving
//! asset's events reach one engine wherever it is), rules grouped by neither in one city-wide
//! host ([`Scope`]). City-level views roll cells up to parents ([`crate::rollup`]).

use std::collections::{BTreeMap, HashMap};
use std::sync::Arc;
use std::time::Duration;

use citytwin_core::cep::{Engine, EngineConfig, Key, Output, Rule, WindowResult};
use citytwin_core::event::Timestamp;
use citytwin_core::log::{EventLog, Expected, ReplayFilter};
use h3o::{CellIndex, Resolution};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use rustc_hash::FxHashMap;

use crate::bus::{Bus, Delivered, Filter};
use crate::rollup::Rollups;
use crate::writer::LogWriter;

/// The log stream of a cell's derived events.
pub fn cell_stream(cell: CellIndex) -> String {
    format!("cell:{cell}")
}

/// The routing cell of an event: its `h3cell` (or location) at `resolution`.
pub fn routing_cell(event: &citytwin_core::event::Event, resolution: Resolution) -> Option<CellIndex> {
    let cell = event.ext.h3cell.or_else(|| event.location().and_then(|l| l.cell(resolution)))?;
    if cell.resolution() < resolution { None } else { cell.parent(resolution) }
}

/// Cell settings.
#[derive(Debug, Clone)]
pub struct CellConfig {
    /// Routing resolution.
    pub resolution: Resolution,
    /// The rules every cell runs.
    pub rules: Arc<Vec<Rule>>,
    /// CEP settings.
    pub engine: EngineConfig,
    /// Advance every cell's watermark each time global event time moves this far.
    pub tick: Duration,
    /// City-level rollups fed with every final window result.
    pub rollups: Rollups,
}

impl CellConfig {
    /// The distinct k-ring distances of the neighbourhood rules.
    pub fn ring_distances(&self) -> Vec<u32> {
        let mut distances: Vec<u32> = self.rules.iter().map(|r| r.neighbours).filter(|k| *k > 0).collect();
        distances.sort_unstable();
        distances.dedup();
        distances
    }

    /// Routing at resolution 8, rollups at 6 and 4.
    pub fn new(rules: Vec<Rule>) -> Self {
        CellConfig {
            resolution: Resolution::Eight,
            rules: Arc::new(rules),
            engine: EngineConfig::default(),
            tick: Duration::from_secs(10),
            rollups: Rollups::new(vec![Resolution::Six, Resolution::Four]),
        }
    }
}

/// Messages of a cell actor.
#[derive(Debug)]
pub enum CellMsg {
    /// Events located in this cell, in commit order.
    Events(Vec<Delivered>),
    /// Events located within `k` steps of this cell, for its neighbourhood rules of distance k.
    Ring(u32, Vec<Delivered>),
    /// Move the watermark (global event time has moved on).
    Advance(Timestamp),
    /// Latest window result per (rule, key).
    Aggregates(RpcReplyPort<Vec<WindowResult>>),
    /// Move the watermark to the time and reply once the resulting alerts are appended.
    Flush(Timestamp, RpcReplyPort<()>),
}

/// Where a rule host's events come from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Scope {
    /// One H3 cell: the rules grouped by cell (and neighbourhood rules).
    Cell(CellIndex),
    /// One of the partitions of the assets (by a hash of the asset id): the rules grouped by
    /// asset and not by cell, which must see an asset's events wherever it is (buses move).
    Assets(u32),
    /// The whole city: the rules grouped by neither cell nor asset (by type or metric).
    City,
}

impl Scope {
    /// The log stream of the host's alerts.
    pub fn stream(self) -> String {
        match self {
            Scope::Cell(cell) => cell_stream(cell),
            Scope::Assets(k) => format!("rules:assets:{k}"),
            Scope::City => "rules:city".to_owned(),
        }
    }
}

impl Scope {
    /// Whether hosts of this kind run `rule`: cells the rules grouped by cell (and
    /// neighbourhood rules), asset partitions those grouped by asset but not by cell, the city
    /// the rest.
    fn runs(self, rule: &Rule) -> bool {
        use citytwin_core::cep::rules::GroupBy;
        let by_cell = rule.neighbours > 0 || rule.group_by.contains(&GroupBy::Cell);
        let by_asset = rule.group_by.contains(&GroupBy::Asset);
        match self {
            Scope::Cell(_) => by_cell,
            Scope::Assets(_) => !by_cell && by_asset,
            Scope::City => !by_cell && !by_asset,
        }
    }
}

/// Partitions of the asset-keyed rules.
const ASSET_PARTITIONS: u32 = 4;

/// The asset partition of an asset id (FNV-1a: stable across runs and builds).
fn partition_of(asset: &str) -> u32 {
    let mut hash: u32 = 0x811c_9dc5;
    for byte in asset.bytes() {
        hash = (hash ^ u32::from(byte)).wrapping_mul(0x0100_0193);
    }
    hash % ASSET_PARTITIONS
}

/// What a rule host (cell actor) starts with.
#[derive(Debug, Clone)]
pub struct CellArgs {
    scope: Scope,
    config: CellConfig,
    writer: LogWriter,
}

/// A cell actor's state.
#[derive(Debug)]
pub struct CellState {
    args: CellArgs,
    /// Rules over the cell's own events.
    engine: Engine,
    /// Neighbourhood rules by k-ring distance, over the events of the cell and its ring.
    rings: BTreeMap<u32, Engine>,
    latest: BTreeMap<(Arc<str>, Key), WindowResult>,
    alerts: u64,
}

/// Runs the CEP rules of one cell (see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct CellActor;

impl CellActor {
    async fn handle_outputs(&self, outputs: Vec<Output>, state: &mut CellState) -> Result<(), ActorProcessingErr> {
        let mut alerts = Vec::new();
        for output in outputs {
            match output {
                Output::Window(result) => {
                    if result.emission == citytwin_core::cep::Emission::Final {
                        state.args.config.rollups.add(&result);
                    }
                    state.latest.insert((Arc::clone(&result.rule_id), result.key.clone()), result);
                }
                Output::Alert(alert) => alerts.push(alert.to_event()),
                Output::Late(late) => {
                    tracing::debug!(scope = ?state.args.scope, rule = %late.rule_id, event = %late.event_id, "late event")
                }
                Output::Untimed { event_id } => {
                    tracing::debug!(scope = ?state.args.scope, event = %event_id, "untimed event")
                }
            }
        }
        if alerts.is_empty() {
            return Ok(());
        }
        state.alerts += alerts.len() as u64;
        state.args.writer.append_published(state.args.scope.stream(), Expected::Any, alerts).await?;
        Ok(())
    }
}

impl Actor for CellActor {
    type Msg = CellMsg;
    type State = CellState;
    type Arguments = CellArgs;

    async fn pre_start(&self, _myself: ActorRef<CellMsg>, args: CellArgs) -> Result<CellState, ActorProcessingErr> {
        let local: Vec<Rule> =
            args.config.rules.iter().filter(|r| r.neighbours == 0 && args.scope.runs(r)).cloned().collect();
        let engine = Engine::new(local, args.config.engine);
        let mut rings = BTreeMap::new();
        let rings_here = matches!(args.scope, Scope::Cell(_));
        for k in args.config.ring_distances().into_iter().filter(|_| rings_here) {
            let rules: Vec<Rule> = args.config.rules.iter().filter(|r| r.neighbours == k).cloned().collect();
            rings.insert(k, Engine::new(rules, args.config.engine));
        }
        Ok(CellState { args, engine, rings, latest: BTreeMap::new(), alerts: 0 })
    }

    async fn handle(
        &self,
        _myself: ActorRef<CellMsg>,
        message: CellMsg,
        state: &mut CellState,
    ) -> Result<(), ActorProcessingErr> {
        let mut outputs = Vec::new();
        match message {
            CellMsg::Events(batch) => {
                for committed in &batch {
                    state.engine.process(&committed.event, &mut outputs);
                }
            }
            CellMsg::Ring(k, batch) => {
                if let (Some(engine), Scope::Cell(cell)) = (state.rings.get_mut(&k), state.args.scope) {
                    // Neighbourhood rules key by the centre cell: present each event as if
                    // it were located here.
                    for committed in &batch {
                        let mut event = committed.event.clone();
                        event.ext.h3cell = Some(cell);
                        engine.process(&event, &mut outputs);
                    }
                }
            }
            CellMsg::Advance(to) => {
                state.engine.advance_watermark(to, &mut outputs);
                for engine in state.rings.values_mut() {
                    engine.advance_watermark(to, &mut outputs);
                }
            }
            CellMsg::Aggregates(reply) => {
                let _ = reply.send(state.latest.values().cloned().collect());
            }
            CellMsg::Flush(to, reply) => {
                state.engine.advance_watermark(to, &mut outputs);
                for engine in state.rings.values_mut() {
                    engine.advance_watermark(to, &mut outputs);
                }
                self.handle_outputs(outputs, state).await?;
                let _ = reply.send(());
                return Ok(());
            }
        }
        self.handle_outputs(outputs, state).await
    }
}

/// Messages of the cell router.
#[derive(Debug)]
pub enum CellRouterMsg {
    /// A batch drained from the bus.
    Route(Vec<Delivered>),
    /// The latest aggregates of a cell (empty when it has no actor).
    Aggregates(CellIndex, RpcReplyPort<Vec<WindowResult>>),
    /// Cells with an actor.
    Cells(RpcReplyPort<Vec<CellIndex>>),
    /// Once `upto` events have been routed (as many as the bus had published when the
    /// flush was asked for), move every cell's watermark to `to` and reply when their alerts
    /// are appended (the end of a run).
    Flush {
        /// The watermark.
        to: Timestamp,
        /// Events that must have been routed first.
        upto: u64,
        /// Answered when done.
        reply: RpcReplyPort<()>,
    },
}

/// What the router starts with.
#[derive(Debug, Clone)]
pub struct CellRouterArgs {
    /// Cell settings.
    pub config: CellConfig,
    /// Appends alerts.
    pub writer: LogWriter,
    /// Publishes alerts; the router's pump subscribes to it.
    pub bus: Bus,
}

/// The router's state.
#[derive(Debug)]
pub struct CellRouterState {
    args: CellRouterArgs,
    /// Every rule host (cells, asset partitions, the city), started on demand.
    hosts: FxHashMap<Scope, ActorRef<CellMsg>>,
    ids: HashMap<ractor::ActorId, Scope>,
    max_time: Option<Timestamp>,
    next_tick: Option<Timestamp>,
    /// Events routed (received from the bus) so far.
    routed: u64,
    /// Whether there are asset-keyed / city-wide rules at all.
    asset_rules: bool,
    city_rules: bool,
    /// Flushes waiting for routing to reach their position.
    flushes: Vec<(Timestamp, u64, RpcReplyPort<()>)>,
}

/// Routes events to cell actors and supervises them (see the module documentation).
#[derive(Debug, Clone, Copy, Default)]
pub struct CellRouterActor;

impl CellRouterActor {
    /// The rule host of `scope`, started under the router's supervision on first use.
    async fn host(
        &self,
        myself: &ActorRef<CellRouterMsg>,
        scope: Scope,
        state: &mut CellRouterState,
    ) -> Result<ActorRef<CellMsg>, ActorProcessingErr> {
        if let Some(actor) = state.hosts.get(&scope) {
            return Ok(actor.clone());
        }
        let args = CellArgs { scope, config: state.args.config.clone(), writer: state.args.writer.clone() };
        let (actor, _) = Actor::spawn_linked(None, CellActor, args, myself.get_cell()).await?;
        state.ids.insert(actor.get_id(), scope);
        state.hosts.insert(scope, actor.clone());
        Ok(actor)
    }
}

impl Actor for CellRouterActor {
    type Msg = CellRouterMsg;
    type State = CellRouterState;
    type Arguments = CellRouterArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<CellRouterMsg>,
        args: CellRouterArgs,
    ) -> Result<CellRouterState, ActorProcessingErr> {
        // The pump: drain the bus in batches into the router's mailbox.
        // Events published before the subscription count as routed (flushes compare counts).
        let routed = args.bus.published();
        let asset_rules = args.config.rules.iter().any(|r| Scope::Assets(0).runs(r));
        let city_rules = args.config.rules.iter().any(|r| Scope::City.runs(r));
        // Paced: asset actors wait rather than let the pump fall into catch-up (`crate::bus`).
        let mut subscription = args.bus.subscribe_paced(Filter::default());
        let router = myself.clone();
        tokio::spawn(async move {
            while let Some(batch) = subscription.recv_batch(8192).await {
                if router.cast(CellRouterMsg::Route(batch)).is_err() {
                    return;
                }
            }
        });
        Ok(CellRouterState {
            args,
            hosts: FxHashMap::default(),
            ids: HashMap::new(),
            max_time: None,
            next_tick: None,
            routed,
            flushes: Vec::new(),
            asset_rules,
            city_rules,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<CellRouterMsg>,
        message: CellRouterMsg,
        state: &mut CellRouterState,
    ) -> Result<(), ActorProcessingErr> {
        match message {
            CellRouterMsg::Route(batch) => {
                state.routed += batch.len() as u64;
                let resolution = state.args.config.resolution;
                // Fx, not SipHash: one lookup per event, keys are ours (cell indexes).
                let mut by_cell: FxHashMap<CellIndex, Vec<Delivered>> = FxHashMap::default();
                // Rules keyed by asset see an asset's events wherever it is (with a location or
                // not); city-wide rules see everything. Both get the batch in commit order.
                if state.asset_rules {
                    let mut partitions: Vec<Vec<Delivered>> = vec![Vec::new(); ASSET_PARTITIONS as usize];
                    for committed in &batch {
                        if let Some(asset) = committed.event.asset_id() {
                            partitions[partition_of(asset) as usize].push(committed.clone());
                        }
                    }
                    for (k, events) in partitions.into_iter().enumerate() {
                        if !events.is_empty() {
                            let actor = self.host(&myself, Scope::Assets(k as u32), state).await?;
                            actor.cast(CellMsg::Events(events))?;
                        }
                    }
                }
                if state.city_rules {
                    let actor = self.host(&myself, Scope::City, state).await?;
                    actor.cast(CellMsg::Events(batch.clone()))?;
                }
                for committed in batch {
                    if let Some(time) = committed.event.time {
                        state.max_time = state.max_time.max(Some(time));
                    }
                    if let Some(cell) = routing_cell(&committed.event, resolution) {
                        by_cell.entry(cell).or_default().push(committed);
                    }
                }
                // Neighbourhood rules: every cell within k of an event's cell gets it too.
                let mut rings: FxHashMap<(CellIndex, u32), Vec<Delivered>> = FxHashMap::default();
                for k in state.args.config.ring_distances() {
                    for (cell, events) in &by_cell {
                        for neighbour in cell.grid_disk::<Vec<_>>(k) {
                            rings.entry((neighbour, k)).or_default().extend(events.iter().cloned());
                        }
                    }
                }
                for (cell, events) in by_cell {
                    let actor = self.host(&myself, Scope::Cell(cell), state).await?;
                    actor.cast(CellMsg::Events(events))?;
                }
                for ((cell, k), events) in rings {
                    let actor = self.host(&myself, Scope::Cell(cell), state).await?;
                    actor.cast(CellMsg::Ring(k, events))?;
                }
                // Move quiet cells' watermarks along with global event time.
                let tick = i64::try_from(state.args.config.tick.as_nanos()).unwrap_or(i64::MAX).max(1);
                if let Some(max_time) = state.max_time {
                    let due = state.next_tick.is_none_or(|next| max_time >= next);
                    if due {
                        let bound = state.args.config.engine.max_out_of_orderness;
                        let watermark = max_time.saturating_sub(bound);
                        for actor in state.hosts.values() {
                            actor.cast(CellMsg::Advance(watermark))?;
                        }
                        state.next_tick =
                            Some(Timestamp::from_nanos((max_time.as_nanos() / tick + 1).saturating_mul(tick)));
                    }
                }
            }
            CellRouterMsg::Aggregates(cell, reply) => match state.hosts.get(&Scope::Cell(cell)) {
                Some(actor) => actor.cast(CellMsg::Aggregates(reply))?,
                None => {
                    let _ = reply.send(Vec::new());
                }
            },
            CellRouterMsg::Cells(reply) => {
                let cells = state.hosts.keys().filter_map(|scope| match scope {
                    Scope::Cell(cell) => Some(*cell),
                    _ => None,
                });
                let _ = reply.send(cells.collect());
            }
            CellRouterMsg::Flush { to, upto, reply } => state.flushes.push((to, upto, reply)),
        }
        // Serve the flushes whose events have all been routed; a task waits for the cells so
        // the router keeps routing.
        let (ready, waiting): (Vec<_>, Vec<_>) =
            std::mem::take(&mut state.flushes).into_iter().partition(|(_, upto, _)| *upto <= state.routed);
        state.flushes = waiting;
        for (to, _, reply) in ready {
            let cells: Vec<ActorRef<CellMsg>> = state.hosts.values().cloned().collect();
            tokio::spawn(async move {
                for cell in cells {
                    // A cell that stopped has nothing left to flush.
                    let _ = ractor::call!(cell, CellMsg::Flush, to);
                }
                let _ = reply.send(());
            });
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        _myself: ActorRef<CellRouterMsg>,
        event: SupervisionEvent,
        state: &mut CellRouterState,
    ) -> Result<(), ActorProcessingErr> {
        let (cell, error) = match &event {
            SupervisionEvent::ActorFailed(cell, error) => (cell, error.to_string()),
            SupervisionEvent::ActorTerminated(cell, _, reason) => (cell, reason.clone().unwrap_or_default()),
            _ => return Ok(()),
        };
        if let Some(scope) = state.ids.remove(&cell.get_id()) {
            // The next event for the host starts a fresh actor; windows it held are lost but a
            // cell's can be rebuilt from the log with `cell_aggregates_at`.
            tracing::warn!(?scope, %error, "rule host stopped; it restarts on its next event");
            state.hosts.remove(&scope);
        }
        Ok(())
    }
}

/// The aggregates of `cell` (a routing cell, or a parent: then of every cell under it) as they
/// were at `time`: the cell's events up to `time` replayed from the log through the rules.
///
/// # Errors
/// When the log cannot be read.
pub fn cell_aggregates_at(
    log: &EventLog,
    config: &CellConfig,
    cell: CellIndex,
    time: Timestamp,
) -> citytwin_core::Result<Vec<WindowResult>> {
    let filter = ReplayFilter { cells: vec![cell], to_time: Some(time), ..ReplayFilter::default() };
    let mut engine = Engine::new(config.rules.as_ref().clone(), config.engine);
    let mut outputs = Vec::new();
    for record in log.replay(filter) {
        let event = record?.event()?;
        if event.kind() == Some(citytwin_core::event::EventKind::AlertTriggered) {
            continue;
        }
        engine.process(&event, &mut outputs);
    }
    engine.advance_watermark(time, &mut outputs);
    let mut latest: BTreeMap<(Arc<str>, Key), WindowResult> = BTreeMap::new();
    for output in outputs {
        if let Output::Window(result) = output
            && result.end <= time
        {
            latest.insert((Arc::clone(&result.rule_id), result.key.clone()), result);
        }
    }
    Ok(latest.into_values().collect())
}
