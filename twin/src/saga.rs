//! The asset-commissioning saga: reserve asset id → configure device → register in
//! inventory → activate monitoring, with compensations run in reverse when a step fails.
//!
//! The saga's state is event-sourced in its own stream (`saga:commission:<id>`): each step's
//! completion and each compensation is an event, appended *after* the effect succeeded.
//! [`CommissioningSaga::run`] first rebuilds the saga from its stream, so a process that
//! crashed mid-saga resumes where it stopped. A step whose effect happened but whose event
//! was not yet written runs again on resume: steps and compensations must be idempotent
//! (they are keyed by the saga id).

use std::fmt;
use std::future::Future;

use citytwin_core::event::{Data, Event, Timestamp};
use citytwin_core::log::{EventLog, Expected};
use serde_json::json;

/// The steps, in order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Step {
    /// Reserve the asset id (no other asset may take it).
    ReserveId,
    /// Push configuration to the device.
    ConfigureDevice,
    /// Register the asset in the inventory (the twin's `asset.created`).
    RegisterInventory,
    /// Start monitoring (the twin's `asset.commissioned`).
    ActivateMonitoring,
}

impl Step {
    /// Every step, in order.
    pub const ALL: [Step; 4] =
        [Step::ReserveId, Step::ConfigureDevice, Step::RegisterInventory, Step::ActivateMonitoring];

    /// The step's name in saga events.
    pub const fn name(self) -> &'static str {
        match self {
            Step::ReserveId => "reserve_id",
            Step::ConfigureDevice => "configure_device",
            Step::RegisterInventory => "register_inventory",
            Step::ActivateMonitoring => "activate_monitoring",
        }
    }

    fn parse(name: &str) -> Option<Step> {
        Step::ALL.into_iter().find(|s| s.name() == name)
    }
}

impl fmt::Display for Step {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// The effects of the steps and their compensations. Each must be idempotent per saga id.
pub trait CommissioningEffects: Send + Sync {
    /// Performs `step`.
    fn execute(&self, saga_id: &str, step: Step) -> impl Future<Output = Result<(), String>> + Send;
    /// Undoes `step`.
    fn compensate(&self, saga_id: &str, step: Step) -> impl Future<Output = Result<(), String>> + Send;
}

/// Where a saga stands.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct SagaState {
    /// Steps completed, in order.
    pub completed: Vec<Step>,
    /// The step that failed and why, once one has.
    pub failed: Option<(Step, String)>,
    /// Steps compensated, in the order compensated.
    pub compensated: Vec<Step>,
}

/// The outcome of a saga.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SagaOutcome {
    /// Every step completed.
    Completed,
    /// A step failed and every completed step was compensated.
    Compensated {
        /// The step that failed.
        failed: Step,
        /// Why.
        reason: String,
    },
}

/// Saga event types.
pub const STEP_COMPLETED: &str = "com.smartcities.saga.step_completed";
/// A step failed; compensation starts.
pub const STEP_FAILED: &str = "com.smartcities.saga.step_failed";
/// A step was compensated.
pub const STEP_COMPENSATED: &str = "com.smartcities.saga.step_compensated";

/// One commissioning saga over the event log.
#[derive(Debug, Clone)]
pub struct CommissioningSaga {
    log: EventLog,
    saga_id: String,
    organization: Option<String>,
}

impl SagaState {
    /// Where the saga stands: `running`, `completed`, `compensating` (a step failed and not
    /// every completed step is undone yet) or `compensated`.
    pub fn status(&self) -> &'static str {
        match &self.failed {
            None if self.completed.len() == Step::ALL.len() => "completed",
            None => "running",
            Some(_) if self.compensated.len() < self.completed.len() => "compensating",
            Some(_) => "compensated",
        }
    }

    fn apply(&mut self, event: &Event) {
        let Some(Data::Json(data)) = &event.data else { return };
        let Some(step) = data["step"].as_str().and_then(Step::parse) else { return };
        match event.ty.as_str() {
            STEP_COMPLETED => self.completed.push(step),
            STEP_FAILED => self.failed = Some((step, data["reason"].as_str().unwrap_or_default().to_owned())),
            STEP_COMPENSATED => self.compensated.push(step),
            _ => {}
        }
    }
}

/// One saga as [`sagas`] lists it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SagaSummary {
    /// The saga's id.
    pub saga_id: String,
    /// The organization it runs for, when it names one.
    pub organization: Option<String>,
    /// Its state, folded from its events.
    pub state: SagaState,
}

/// Every commissioning saga in the log, by id (one pass over the saga events).
///
/// # Errors
/// When the log cannot be read.
pub fn sagas(log: &EventLog) -> citytwin_core::Result<Vec<SagaSummary>> {
    use citytwin_core::log::ReplayFilter;
    let filter = ReplayFilter {
        types: vec![citytwin_core::event::TypePattern::new("com.smartcities.saga.step_*")],
        ..ReplayFilter::default()
    };
    let mut by_id: std::collections::BTreeMap<String, SagaSummary> = std::collections::BTreeMap::new();
    for record in log.replay(filter) {
        let event = record?.event()?;
        let Some(saga_id) = event.rare.subject.clone() else { continue };
        let summary = by_id.entry(saga_id.clone()).or_insert_with(|| SagaSummary {
            saga_id,
            organization: event.ext.organization.as_deref().map(str::to_owned),
            state: SagaState::default(),
        });
        summary.state.apply(&event);
    }
    Ok(by_id.into_values().collect())
}

impl CommissioningSaga {
    /// The saga `saga_id` (new or to resume).
    pub fn new(log: EventLog, saga_id: impl Into<String>) -> Self {
        CommissioningSaga { log, saga_id: saga_id.into(), organization: None }
    }

    /// Records the organization the saga runs for on its events (listings filter by it).
    #[must_use]
    pub fn for_organization(mut self, organization: Option<String>) -> Self {
        self.organization = organization;
        self
    }

    /// The saga's stream.
    pub fn stream(&self) -> String {
        format!("saga:commission:{}", self.saga_id)
    }

    /// The saga's state, folded from its stream.
    ///
    /// # Errors
    /// When the log cannot be read.
    pub fn state(&self) -> citytwin_core::Result<SagaState> {
        let mut state = SagaState::default();
        for record in self.log.read_stream(&self.stream(), 1)? {
            state.apply(&record.event()?);
        }
        Ok(state)
    }

    fn record(&self, ty: &str, step: Step, reason: Option<&str>, time: Timestamp) -> citytwin_core::Result<()> {
        let seq = self.log.stream_seq(&self.stream());
        let mut event = Event::untyped(format!("{}:{ty}:{step}", self.stream()), "/twin/sagas", ty).with_time(time);
        event.rare.subject = Some(self.saga_id.clone());
        event.ext.rare.correlationid = Some(self.saga_id.clone());
        event.ext.organization = self.organization.as_deref().map(Into::into);
        event.data = Some(Data::Json(json!({ "saga_id": self.saga_id, "step": step.name(), "reason": reason })));
        self.log.append(&self.stream(), Expected::Seq(seq), &event)?;
        Ok(())
    }

    /// Runs (or resumes) the saga to its end: the remaining steps, or, after a failure, the
    /// remaining compensations in reverse order. `now` stamps the saga's events.
    ///
    /// # Errors
    /// When the log fails, or a compensation fails (the saga then stays resumable: run it
    /// again once the cause is fixed).
    pub async fn run(
        &self,
        effects: &impl CommissioningEffects,
        now: impl Fn() -> Timestamp,
    ) -> Result<SagaOutcome, String> {
        let mut state = self.state().map_err(|e| e.to_string())?;
        if state.failed.is_none() {
            for step in Step::ALL.into_iter().skip(state.completed.len()) {
                match effects.execute(&self.saga_id, step).await {
                    Ok(()) => {
                        self.record(STEP_COMPLETED, step, None, now()).map_err(|e| e.to_string())?;
                        state.completed.push(step);
                    }
                    Err(reason) => {
                        self.record(STEP_FAILED, step, Some(&reason), now()).map_err(|e| e.to_string())?;
                        state.failed = Some((step, reason));
                        break;
                    }
                }
            }
        }
        let Some((failed, reason)) = state.failed.clone() else { return Ok(SagaOutcome::Completed) };
        for step in state.completed.iter().rev().skip(state.compensated.len()) {
            effects.compensate(&self.saga_id, *step).await.map_err(|e| format!("compensating {step} failed: {e}"))?;
            self.record(STEP_COMPENSATED, *step, None, now()).map_err(|e| e.to_string())?;
        }
        Ok(SagaOutcome::Compensated { failed, reason })
    }
}

/// The commissioning saga's effects on a running twin.
///
/// - reserve id: an append with expected sequence 0 to `reservation:<asset>` (optimistic
///   concurrency makes the reservation unique; a reservation by the same saga counts as done);
/// - configure device: the `configure` callback (the device-management integration);
/// - register in inventory: ingest `asset.created`;
/// - activate monitoring: ingest `asset.commissioned`.
///
/// Compensations release the reservation, call `reset`, ingest `asset.deleted` and
/// `asset.decommissioned`. Every step tolerates having been done already (idempotent).
pub struct TwinEffects<'a, C, R> {
    /// The twin.
    pub twin: &'a crate::city::Twin,
    /// What to register.
    pub asset: citytwin_core::event::AssetCreated,
    /// The owning organization.
    pub organization: Option<String>,
    /// Configures the device.
    pub configure: C,
    /// Resets the device.
    pub reset: R,
    /// Time stamp of the saga's events.
    pub now: Timestamp,
}

impl<C, R> std::fmt::Debug for TwinEffects<'_, C, R> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TwinEffects").field("asset", &self.asset.asset_id).finish_non_exhaustive()
    }
}

fn reservation_stream(asset_id: &str) -> String {
    format!("reservation:{asset_id}")
}

impl<C, R> TwinEffects<'_, C, R>
where
    C: Fn(&str) -> Result<(), String> + Send + Sync,
    R: Fn(&str) -> Result<(), String> + Send + Sync,
{
    fn lifecycle_event(&self, saga_id: &str, suffix: &str, payload: impl Into<citytwin_core::event::Payload>) -> Event {
        let mut event = Event::new(format!("{saga_id}:{suffix}"), "/twin/sagas", payload).with_time(self.now);
        event.rare.subject = Some(self.asset.asset_id.clone());
        event.ext.organization = self.organization.as_deref().map(Into::into);
        event.ext.rare.correlationid = Some(saga_id.to_owned());
        event
    }

    async fn ingest_idempotent(&self, event: Event) -> Result<(), String> {
        use crate::asset::actor::CommandError;
        use crate::asset::logic::Rejection;
        match self.twin.try_ingest(event).await {
            Ok(_) => Ok(()),
            // Done before (a resumed saga): fine.
            Err(crate::city::IngestError::Refused(CommandError::Rejected(
                Rejection::AlreadyExists(_) | Rejection::InvalidTransition { .. },
            ))) => Ok(()),
            Err(error) => Err(error.to_string()),
        }
    }
}

impl<C, R> CommissioningEffects for TwinEffects<'_, C, R>
where
    C: Fn(&str) -> Result<(), String> + Send + Sync,
    R: Fn(&str) -> Result<(), String> + Send + Sync,
{
    async fn execute(&self, saga_id: &str, step: Step) -> Result<(), String> {
        let asset_id = self.asset.asset_id.as_str();
        match step {
            Step::ReserveId => {
                let stream = reservation_stream(asset_id);
                let log = self.twin.log();
                let mut event =
                    Event::untyped(format!("{saga_id}:reserved"), "/twin/sagas", "com.smartcities.saga.id_reserved")
                        .with_time(self.now);
                event.data = Some(Data::Json(json!({ "asset_id": asset_id, "saga_id": saga_id })));
                let current = log.stream_seq(&stream);
                let holder = log
                    .read_stream(&stream, current.max(1))
                    .ok()
                    .and_then(|records| records.last().and_then(|r| r.event().ok()))
                    .filter(|e| e.ty.as_str() == "com.smartcities.saga.id_reserved");
                match holder {
                    Some(held) if held.id == event.id => Ok(()),
                    Some(_) => Err(format!("asset id {asset_id:?} is reserved by another saga")),
                    None if log.stream_seq(&crate::asset::actor::asset_stream(asset_id)) > 0 => {
                        Err(format!("asset id {asset_id:?} is already in use"))
                    }
                    None => log.append(&stream, Expected::Seq(current), &event).map(|_| ()).map_err(|e| e.to_string()),
                }
            }
            Step::ConfigureDevice => (self.configure)(asset_id),
            Step::RegisterInventory => {
                self.ingest_idempotent(self.lifecycle_event(saga_id, "created", self.asset.clone())).await
            }
            Step::ActivateMonitoring => {
                let payload = citytwin_core::event::AssetCommissioned {
                    asset_id: asset_id.to_owned(),
                    commissioned_by: Some(format!("saga {saga_id}")),
                    firmware_version: None,
                };
                self.ingest_idempotent(self.lifecycle_event(saga_id, "commissioned", payload)).await
            }
        }
    }

    async fn compensate(&self, saga_id: &str, step: Step) -> Result<(), String> {
        let asset_id = self.asset.asset_id.as_str();
        match step {
            Step::ReserveId => {
                let stream = reservation_stream(asset_id);
                let mut event =
                    Event::untyped(format!("{saga_id}:released"), "/twin/sagas", "com.smartcities.saga.id_released")
                        .with_time(self.now);
                event.data = Some(Data::Json(json!({ "asset_id": asset_id, "saga_id": saga_id })));
                self.twin.log().append(&stream, Expected::Any, &event).map(|_| ()).map_err(|e| e.to_string())
            }
            Step::ConfigureDevice => (self.reset)(asset_id),
            Step::RegisterInventory => {
                let payload = citytwin_core::event::AssetDeleted {
                    asset_id: asset_id.to_owned(),
                    reason: Some(format!("saga {saga_id} compensated")),
                };
                self.ingest_idempotent(self.lifecycle_event(saga_id, "deleted", payload)).await
            }
            Step::ActivateMonitoring => {
                let payload = citytwin_core::event::AssetDecommissioned {
                    asset_id: asset_id.to_owned(),
                    reason: Some(format!("saga {saga_id} compensated")),
                };
                self.ingest_idempotent(self.lifecycle_event(saga_id, "decommissioned", payload)).await
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use citytwin_core::log::{Durability, LogConfig};

    use super::*;

    /// Records every effect; fails `fail_at`; can "crash" (stop answering) after `crash_after` effects.
    #[derive(Default)]
    struct Effects {
        fail_at: Option<Step>,
        crash_after: Option<usize>,
        crashed: tokio::sync::Notify,
        calls: Mutex<Vec<String>>,
    }

    impl CommissioningEffects for Effects {
        async fn execute(&self, _saga: &str, step: Step) -> Result<(), String> {
            let crashed = {
                let mut calls = self.calls.lock().unwrap();
                let crashed = self.crash_after.is_some_and(|n| calls.len() >= n);
                if !crashed {
                    calls.push(format!("do {step}"));
                }
                crashed
            };
            if crashed {
                // A crash: say so, and never complete.
                self.crashed.notify_one();
                std::future::pending::<()>().await;
            }
            if self.fail_at == Some(step) { Err(format!("{step} refused by the device")) } else { Ok(()) }
        }

        async fn compensate(&self, _saga: &str, step: Step) -> Result<(), String> {
            self.calls.lock().unwrap().push(format!("undo {step}"));
            Ok(())
        }
    }

    fn log(dir: &std::path::Path) -> EventLog {
        EventLog::open(dir, LogConfig { durability: Durability::Always, ..LogConfig::default() }).unwrap()
    }

    fn now() -> Timestamp {
        Timestamp::from_secs(1_736_899_200)
    }

    #[tokio::test]
    async fn completes_every_step_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let saga = CommissioningSaga::new(log(dir.path()), "s-1");
        let effects = Effects::default();
        assert_eq!(saga.run(&effects, now).await, Ok(SagaOutcome::Completed));
        assert_eq!(
            *effects.calls.lock().unwrap(),
            ["do reserve_id", "do configure_device", "do register_inventory", "do activate_monitoring"]
        );
        assert_eq!(saga.state().unwrap().completed, Step::ALL);
        assert_eq!(saga.state().unwrap().status(), "completed");
        // Running a completed saga again does nothing.
        let again = Effects::default();
        assert_eq!(saga.run(&again, now).await, Ok(SagaOutcome::Completed));
        assert!(again.calls.lock().unwrap().is_empty());
    }

    #[tokio::test]
    async fn a_failure_at_each_step_compensates_the_completed_ones_in_reverse() {
        for (i, failing) in Step::ALL.into_iter().enumerate() {
            let dir = tempfile::tempdir().unwrap();
            let saga = CommissioningSaga::new(log(dir.path()), format!("s-{i}"));
            let effects = Effects { fail_at: Some(failing), ..Effects::default() };
            let outcome = saga.run(&effects, now).await.unwrap();
            assert_eq!(
                outcome,
                SagaOutcome::Compensated { failed: failing, reason: format!("{failing} refused by the device") }
            );
            let mut expected: Vec<String> = Step::ALL[..=i].iter().map(|s| format!("do {s}")).collect();
            expected.extend(Step::ALL[..i].iter().rev().map(|s| format!("undo {s}")));
            assert_eq!(*effects.calls.lock().unwrap(), expected, "failing at {failing}");
            let state = saga.state().unwrap();
            assert_eq!(state.compensated, Step::ALL[..i].iter().rev().copied().collect::<Vec<_>>());
            assert_eq!(state.status(), "compensated");
        }
    }

    #[tokio::test]
    async fn a_crash_mid_saga_resumes_without_repeating_recorded_steps() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path());
        let saga = CommissioningSaga::new(log.clone(), "s-crash");
        let crashing = Effects { crash_after: Some(2), ..Effects::default() };
        // The third effect hangs forever, like a process that died: abandon the run there.
        tokio::select! {
            outcome = saga.run(&crashing, now) => panic!("the run should have crashed: {outcome:?}"),
            () = crashing.crashed.notified() => {}
        }
        assert_eq!(saga.state().unwrap().completed, [Step::ReserveId, Step::ConfigureDevice]);
        assert_eq!(saga.state().unwrap().status(), "running");
        // The process dies: nothing of it holds the log any more.
        drop((saga, log));

        // A new process reopens the log and resumes.
        let saga = CommissioningSaga::new(EventLog::open(dir.path(), LogConfig::default()).unwrap(), "s-crash");
        let resumed = Effects { fail_at: Some(Step::ActivateMonitoring), ..Effects::default() };
        let outcome = saga.run(&resumed, now).await.unwrap();
        assert!(matches!(outcome, SagaOutcome::Compensated { failed: Step::ActivateMonitoring, .. }));
        assert_eq!(
            *resumed.calls.lock().unwrap(),
            [
                "do register_inventory",
                "do activate_monitoring",
                "undo register_inventory",
                "undo configure_device",
                "undo reserve_id"
            ]
        );
    }

    #[tokio::test]
    async fn sagas_lists_every_saga_with_its_organization_and_state() {
        let dir = tempfile::tempdir().unwrap();
        let log = log(dir.path());
        let done = CommissioningSaga::new(log.clone(), "s-a").for_organization(Some("acme".into()));
        assert_eq!(done.run(&Effects::default(), now).await, Ok(SagaOutcome::Completed));
        let failed = CommissioningSaga::new(log.clone(), "s-b");
        let effects = Effects { fail_at: Some(Step::RegisterInventory), ..Effects::default() };
        failed.run(&effects, now).await.unwrap();
        let listed = sagas(&log).unwrap();
        let summary: Vec<(&str, Option<&str>, &str)> =
            listed.iter().map(|s| (s.saga_id.as_str(), s.organization.as_deref(), s.state.status())).collect();
        assert_eq!(summary, [("s-a", Some("acme"), "completed"), ("s-b", None, "compensated")]);
        assert_eq!(listed[1].state, failed.state().unwrap(), "one pass over the log folds like the stream");
        assert_eq!(listed[1].state.failed.as_ref().map(|(step, _)| *step), Some(Step::RegisterInventory));
    }
}
