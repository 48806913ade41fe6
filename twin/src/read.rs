//! CQRS read models: projections of the committed events, optimised for queries.
//!
//! - assets: a lean summary of every asset (type, organization, status, cell, last values);
//! - inventory: counts by type, status and cell (derived from the asset summaries);
//! - cells: per-cell activity (assets, readings, alerts);
//! - open alerts: triggered and not yet acknowledged.
//!
//! A key design decision: projections depend only on the order of events *within* a stream
//! (which the bus preserves) and not across streams, so the live projection fed by the bus
//! equals one rebuilt from the log in position order ([`ReadModels::rebuild`]).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::{Arc, RwLock};

use citytwin_core::event::{Event, EventKind, Location, Payload, Severity, Timestamp};
use citytwin_core::log::{EventLog, ReplayFilter};
use h3o::{CellIndex, Resolution};
use serde::Serialize;
use tokio::sync::watch;

use crate::asset::logic::Lifecycle;
use crate::bus::{Bus, Filter};

/// What the read side knows of one asset.
#[derive(Debug, Clone, PartialEq)]
pub struct AssetSummary {
    /// Its type.
    pub asset_type: String,
    /// Its organization.
    pub organization: Option<String>,
    /// Lifecycle status.
    pub status: Lifecycle,
    /// Its cell at the read side's resolution.
    pub cell: Option<CellIndex>,
    /// Where it is, as last reported (creation, coming online, a located reading).
    pub location: Option<Location>,
    /// Last time it was heard from.
    pub last_seen: Option<Timestamp>,
    /// Latest value per metric, with its time.
    pub last_values: BTreeMap<String, (f64, Timestamp)>,
}

/// An alert not yet acknowledged.
#[derive(Debug, Clone, PartialEq)]
pub struct OpenAlert {
    /// The rule.
    pub rule_id: String,
    /// Severity.
    pub severity: Severity,
    /// The asset, if any.
    pub asset_id: Option<String>,
    /// The cell, if any.
    pub cell: Option<CellIndex>,
    /// When.
    pub time: Option<Timestamp>,
    /// Named actions.
    pub actions: Vec<String>,
}

/// Activity of one cell.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct CellActivity {
    /// Readings located in the cell.
    pub readings: u64,
    /// Alerts raised in the cell.
    pub alerts: u64,
}

/// The read models. See the module documentation.
#[derive(Debug, Clone, PartialEq)]
pub struct ReadModels {
    resolution: Resolution,
    /// Every asset the twin knows.
    pub assets: BTreeMap<String, AssetSummary>,
    /// Per-cell activity.
    pub cells: BTreeMap<CellIndex, CellActivity>,
    /// Alerts by id, not yet acknowledged.
    pub open_alerts: BTreeMap<String, OpenAlert>,
    acknowledged: BTreeSet<String>,
    /// Events applied.
    pub applied: u64,
}

/// Inventory counts.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct Inventory {
    /// Assets by type.
    pub by_type: BTreeMap<String, u64>,
    /// Assets by status.
    pub by_status: BTreeMap<&'static str, u64>,
    /// Assets by cell.
    pub by_cell: BTreeMap<String, u64>,
}

impl ReadModels {
    /// Empty read models placing assets in cells at `resolution`.
    pub fn new(resolution: Resolution) -> Self {
        ReadModels {
            resolution,
            assets: BTreeMap::new(),
            cells: BTreeMap::new(),
            open_alerts: BTreeMap::new(),
            acknowledged: BTreeSet::new(),
            applied: 0,
        }
    }

    /// Rebuilds the read models from the log, in position order.
    ///
    /// # Errors
    /// When the log cannot be read.
    pub fn rebuild(log: &EventLog, resolution: Resolution) -> citytwin_core::Result<Self> {
        let mut models = ReadModels::new(resolution);
        for record in log.replay(ReplayFilter::default()) {
            models.apply(&record?.event()?);
        }
        Ok(models)
    }

    /// Counts by type, status and cell.
    pub fn inventory(&self) -> Inventory {
        self.inventory_of(|_| true)
    }

    /// Counts by type, status and cell of the assets `include` accepts (one organization's).
    pub fn inventory_of(&self, include: impl Fn(&AssetSummary) -> bool) -> Inventory {
        let mut inventory = Inventory::default();
        for summary in self.assets.values().filter(|summary| include(summary)) {
            *inventory.by_type.entry(summary.asset_type.clone()).or_default() += 1;
            *inventory.by_status.entry(summary.status.name()).or_default() += 1;
            if let Some(cell) = summary.cell {
                *inventory.by_cell.entry(cell.to_string()).or_default() += 1;
            }
        }
        inventory
    }

    fn cell_of(&self, event: &Event) -> Option<CellIndex> {
        crate::cell::routing_cell(event, self.resolution)
    }

    /// Applies one committed event.
    pub fn apply(&mut self, event: &Event) {
        self.applied += 1;
        let cell = self.cell_of(event);
        let Some(payload) = event.payload() else { return };
        if let Some(Payload::AlertTriggered(alert)) = Some(payload) {
            if let Some(cell) = alert
                .cell
                .or(cell)
                .and_then(|c| if c.resolution() >= self.resolution { c.parent(self.resolution) } else { None })
            {
                self.cells.entry(cell).or_default().alerts += 1;
            }
            if !self.acknowledged.contains(&alert.alert_id) {
                self.open_alerts.insert(
                    alert.alert_id.clone(),
                    OpenAlert {
                        rule_id: alert.rule_id.clone(),
                        severity: alert.severity,
                        asset_id: alert.asset_id.clone(),
                        cell: alert.cell,
                        time: event.time,
                        actions: alert.actions.clone(),
                    },
                );
            }
            return;
        }
        match payload {
            Payload::AlertAcknowledged(ack) => self.acknowledge(&ack.alert_id),
            Payload::UserAlertAcknowledged(ack) => self.acknowledge(&ack.alert_id),
            _ => {}
        }
        let Some(asset_id) = payload.asset_id() else { return };
        if let Payload::AssetCreated(created) = payload {
            let cell = created.location.and_then(|l| l.cell(self.resolution));
            self.assets.insert(
                asset_id.to_owned(),
                AssetSummary {
                    asset_type: created.asset_type.clone(),
                    organization: event.ext.organization.as_deref().map(str::to_owned),
                    status: Lifecycle::Created,
                    cell,
                    location: created.location,
                    last_seen: event.time,
                    last_values: BTreeMap::new(),
                },
            );
            return;
        }
        let Some(summary) = self.assets.get_mut(asset_id) else { return };
        if event.kind() != Some(EventKind::AssetOffline) {
            summary.last_seen = summary.last_seen.max(event.time);
        }
        match payload {
            Payload::AssetCommissioned(_) => summary.status = Lifecycle::Commissioned,
            Payload::AssetOnline(online) => {
                summary.status = Lifecycle::Online;
                if let Some(location) = online.location {
                    summary.cell = location.cell(self.resolution);
                    summary.location = Some(location);
                }
            }
            Payload::AssetOffline(_) => summary.status = Lifecycle::Offline,
            Payload::AssetMaintenance(m) => {
                summary.status = match m.phase {
                    citytwin_core::event::MaintenancePhase::Started => Lifecycle::Maintenance,
                    citytwin_core::event::MaintenancePhase::Completed => Lifecycle::Offline,
                }
            }
            Payload::AssetDecommissioned(_) => summary.status = Lifecycle::Decommissioned,
            Payload::AssetDeleted(_) => summary.status = Lifecycle::Deleted,
            Payload::MetricRecorded(m) => {
                // The hot path: a metric seen before, from where the asset was.
                let time = event.time.unwrap_or_default();
                match summary.last_values.get_mut(m.metric_type.as_str()) {
                    Some(last) if time >= last.1 => *last = (m.value, time),
                    Some(_) => {}
                    None => {
                        summary.last_values.insert(m.metric_type.to_string(), (m.value, time));
                    }
                }
                if let Some(location) = m.location
                    && summary.location != Some(location)
                {
                    summary.cell = cell.or_else(|| location.cell(self.resolution));
                    summary.location = Some(location);
                }
                if let Some(cell) = cell {
                    self.cells.entry(cell).or_default().readings += 1;
                }
            }
            _ => {}
        }
    }

    fn acknowledge(&mut self, alert_id: &str) {
        if self.open_alerts.remove(alert_id).is_none() {
            // The acknowledgement overtook the alert on the bus.
            self.acknowledged.insert(alert_id.to_owned());
        }
    }
}

/// Read models kept current from the bus by a background task.
#[derive(Debug, Clone)]
pub struct LiveReadModels {
    models: Arc<RwLock<ReadModels>>,
    applied: watch::Receiver<u64>,
}

impl LiveReadModels {
    /// Starts the projection task: it subscribes to `bus` now and applies every committed
    /// event (gap-free, see [`crate::bus`]).
    pub fn start(bus: &Bus, resolution: Resolution) -> Self {
        Self::start_from(bus, ReadModels::new(resolution))
    }

    /// As [`LiveReadModels::start`], from models already built (rebuilt from the log at
    /// startup, while nothing is being ingested yet).
    pub fn start_from(bus: &Bus, models: ReadModels) -> Self {
        let models = Arc::new(RwLock::new(models));
        let (tx, applied) = watch::channel(0);
        // Paced: asset actors wait rather than let the projection fall into catch-up.
        let mut subscription = bus.subscribe_paced(Filter::default());
        let shared = Arc::clone(&models);
        tokio::spawn(async move {
            // One lock and one notification per batch drained from the bus, not per event.
            while let Some(batch) = subscription.recv_batch(8192).await {
                let count = {
                    let Ok(mut models) = shared.write() else { return };
                    for committed in &batch {
                        models.apply(&committed.event);
                    }
                    models.applied
                };
                if tx.send(count).is_err() {
                    return;
                }
            }
        });
        LiveReadModels { models, applied }
    }

    /// A copy of the current read models.
    pub fn snapshot(&self) -> ReadModels {
        self.models.read().map(|m| m.clone()).unwrap_or_else(|poisoned| poisoned.into_inner().clone())
    }

    /// Reads the current models in place (no copy); keep `read` short, the projection waits.
    pub fn read<R>(&self, read: impl FnOnce(&ReadModels) -> R) -> R {
        match self.models.read() {
            Ok(models) => read(&models),
            Err(poisoned) => read(&poisoned.into_inner()),
        }
    }

    /// Events applied so far.
    pub fn applied(&self) -> u64 {
        *self.applied.borrow()
    }

    /// Waits until at least `count` events have been applied.
    ///
    /// # Errors
    /// When the projection task stopped first.
    pub async fn wait_applied(&mut self, count: u64) -> Result<(), watch::error::RecvError> {
        self.applied.wait_for(|&n| n >= count).await.map(|_| ())
    }
}
