//! Pattern rules: sequences with a selection strategy and a time bound, and negation after
//! the last step, over events in event-time order.

use std::cmp::Reverse;
use std::collections::BinaryHeap;
use std::sync::Arc;

use super::rules::{PatternRule, Rule, RuleKind, Selection};
use super::{Alert, Fact, Incoming, KeyTable, MAX_CAUSES, Output, Pending, decode_key, key_bytes};
use crate::event::Timestamp;

/// Bit of a step mask that says "matches the negation".
pub(crate) const ABSENT_BIT: u32 = 1 << 31;

fn nanos(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

#[derive(Debug, Clone)]
struct Run {
    id: u64,
    next_step: usize,
    start: i64,
    last: i64,
    /// Triggering event ids (shared with the buffered events: no copy per run).
    causes: Vec<Arc<str>>,
    /// The value of each step that carried one, by step (named only when an alert is made).
    values: Vec<(usize, f64)>,
    correlation: Option<Arc<str>>,
    /// Set once every step matched and the negation is being waited out.
    absent_until: Option<i64>,
}

#[derive(Debug, Default)]
struct KeyRuns {
    runs: Vec<Run>,
    cooldown_until: i64,
    /// When the key's pending expiry timer fires (one per key, for its oldest incomplete run).
    expiry_at: Option<i64>,
    /// When the key's pending absence timer fires (one per key, for its earliest negation
    /// deadline: a run that is cancelled and replaced costs no timer).
    absence_at: Option<i64>,
}

impl KeyRuns {
    /// Schedules the absence timer for the earliest negation deadline, unless one at or
    /// before it is pending.
    fn schedule_absence(&mut self, slot: u32, timers: &mut BinaryHeap<Reverse<(i64, TimerKind, u32, u64)>>) {
        let Some(next) = self.runs.iter().filter_map(|r| r.absent_until).min() else {
            return;
        };
        if self.absence_at.is_none_or(|at| at > next) {
            self.absence_at = Some(next);
            timers.push(Reverse((next, TimerKind::Absence, slot, 0)));
        }
    }

    /// Schedules the expiry of the oldest incomplete run, if none is scheduled.
    fn schedule_expiry(
        &mut self,
        within: Option<i64>,
        slot: u32,
        timers: &mut BinaryHeap<Reverse<(i64, TimerKind, u32, u64)>>,
    ) {
        let (Some(within), None) = (within, self.expiry_at) else {
            return;
        };
        let oldest = self.runs.iter().filter(|r| r.absent_until.is_none()).map(|r| r.start).min();
        if let Some(oldest) = oldest {
            let at = oldest.saturating_add(within);
            self.expiry_at = Some(at);
            timers.push(Reverse((at, TimerKind::Expiry, slot, 0)));
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    /// The key's earliest negation deadline: fire the runs still waiting that are due.
    Absence,
    /// The sequence's `within` ran out: drop the run if still incomplete.
    Expiry,
    /// Cooldown over: drop the key if idle.
    Forget,
}

#[derive(Debug)]
pub(crate) struct PatternOp {
    rule: Arc<Rule>,
    rule_id: Arc<str>,
    /// The name of each step's value in alerts: `pm25[0]` (a pm25 reading), `value[1]`.
    value_names: Vec<String>,
    within: Option<i64>,
    absent_within: Option<i64>,
    selection: Selection,
    max_runs: usize,
    keys: KeyTable<KeyRuns>,
    timers: BinaryHeap<Reverse<(i64, TimerKind, u32, u64)>>,
    next_run: u64,
    runs: usize,
    /// Runs dropped because a key exceeded `max_runs_per_key`.
    pub(crate) dropped_runs: u64,
}

impl PatternOp {
    pub(crate) fn new(rule: Arc<Rule>, max_runs: usize) -> Self {
        let pattern = pattern_of(&rule);
        let value_names = pattern
            .steps
            .iter()
            .enumerate()
            .map(|(step, m)| format!("{}[{step}]", m.metric.as_deref().unwrap_or("value")))
            .collect();
        PatternOp {
            rule_id: rule.id.as_str().into(),
            value_names,
            within: pattern.within.map(nanos),
            absent_within: pattern.absent.as_ref().map(|a| nanos(a.within)),
            selection: pattern.selection,
            max_runs: max_runs.max(1),
            keys: KeyTable::default(),
            timers: BinaryHeap::new(),
            next_run: 0,
            runs: 0,
            dropped_runs: 0,
            rule,
        }
    }

    pub(crate) fn rule_id(&self) -> &Arc<str> {
        &self.rule_id
    }

    pub(crate) fn state_size(&self) -> usize {
        self.runs + self.keys.len()
    }

    /// Which steps (bits 0..) and whether the negation (bit 31) this fact matches, with the
    /// group key; `None` when it is irrelevant to the rule.
    pub(crate) fn classify(
        &self,
        incoming: &Incoming<'_>,
        fact: &Fact<'_>,
        key_buf: &mut Vec<u8>,
    ) -> Option<(u32, Box<[u8]>)> {
        let pattern = pattern_of(&self.rule);
        let mut mask = 0u32;
        for (i, step) in pattern.steps.iter().enumerate().take(31) {
            if step.matches(incoming.event, fact) {
                mask |= 1 << i;
            }
        }
        if pattern.absent.as_ref().is_some_and(|a| a.matcher.matches(incoming.event, fact)) {
            mask |= ABSENT_BIT;
        }
        if mask == 0 || !key_bytes(&self.rule.group_by, self.rule.cell_resolution, incoming, fact, key_buf) {
            return None;
        }
        Some((mask, key_buf.as_slice().into()))
    }

    /// Processes one event (in event-time order).
    pub(crate) fn on_event(
        &mut self,
        entry: &Pending,
        key: &[u8],
        mask: u32,
        value: Option<f64>,
        out: &mut Vec<Output>,
    ) {
        let time = entry.time;
        let n_steps = pattern_of(&self.rule).steps.len();
        let slot = self.keys.slot(key, KeyRuns::default);
        let state = self.keys.get_mut(slot).expect("slot just interned");
        let before = state.runs.len();
        // 1. The negation: an absent-matching event cancels runs waiting it out.
        if mask & ABSENT_BIT != 0 {
            state.runs.retain(|run| !run.absent_until.is_some_and(|until| run.last <= time && time < until));
        }
        // 2. Runs whose time bound passed can no longer complete.
        if let Some(within) = self.within {
            state.runs.retain(|run| run.absent_until.is_some() || time < run.start.saturating_add(within));
        }
        // 3. Advance incomplete runs.
        let step_of = |run: &Run| run.next_step;
        let mut completed: Vec<Run> = Vec::new();
        let mut spawned: Vec<Run> = Vec::new();
        let mut kept = Vec::with_capacity(state.runs.len() + 1);
        for mut run in state.runs.drain(..) {
            if run.absent_until.is_some() {
                kept.push(run);
                continue;
            }
            let step = step_of(&run);
            let matches = mask & (1 << step) != 0;
            match (self.selection, matches) {
                (_, true) => {
                    if self.selection == Selection::SkipTillAnyMatch {
                        // Keep the run waiting too: a later event may also match this step.
                        spawned.push(run.clone());
                    }
                    advance(&mut run, entry, step, value);
                    if run.next_step == n_steps { completed.push(run) } else { kept.push(run) }
                }
                (Selection::StrictContiguity, false) => {}
                (_, false) => kept.push(run),
            }
        }
        kept.extend(spawned);
        // 4. A first-step match starts a run.
        if mask & 1 != 0 {
            self.next_run += 1;
            let mut run = Run {
                id: self.next_run,
                next_step: 0,
                start: time,
                last: time,
                causes: Vec::new(),
                values: Vec::new(),
                correlation: None,
                absent_until: None,
            };
            advance(&mut run, entry, 0, value);
            if run.next_step == n_steps { completed.push(run) } else { kept.push(run) }
        }
        state.runs = kept;
        state.schedule_expiry(self.within, slot, &mut self.timers);
        for mut run in completed {
            match self.absent_within {
                Some(within) => {
                    let until = run.last.saturating_add(within);
                    run.absent_until = Some(until);
                    state.runs.push(run);
                }
                None => {
                    let time = run.last;
                    if let Some(alert) = alert_for(&self.rule, &self.rule_id, &self.value_names, key, run, time, state)
                    {
                        if let Some(until) = self.rule.cooldown.map(|c| time.saturating_add(nanos(c))) {
                            self.timers.push(Reverse((until, TimerKind::Forget, slot, 0)));
                        }
                        out.push(Output::Alert(alert));
                    }
                }
            }
        }
        if state.runs.len() > self.max_runs {
            let excess = state.runs.len() - self.max_runs;
            state.runs.drain(..excess);
            self.dropped_runs += excess as u64;
        }
        state.schedule_absence(slot, &mut self.timers);
        self.runs = self.runs + state.runs.len() - before;
        if state.runs.is_empty() && state.cooldown_until <= time {
            self.keys.remove(slot);
        }
    }

    /// Fires negations whose deadline is at or before `upto` and drops expired runs.
    pub(crate) fn fire_deadlines(&mut self, upto: i64, out: &mut Vec<Output>) {
        while let Some(&Reverse((at, kind, slot, _))) = self.timers.peek() {
            if at > upto {
                break;
            }
            self.timers.pop();
            let Some(state) = self.keys.get_mut(slot) else {
                continue;
            };
            match kind {
                TimerKind::Absence => {
                    // A timer superseded by an earlier one, or of a key whose slot was reused.
                    if state.absence_at != Some(at) {
                        continue;
                    }
                    state.absence_at = None;
                    // The runs due at this deadline, in the order they were started.
                    let mut due: Vec<Run> = Vec::new();
                    state.runs.retain(|r| {
                        let fire = r.absent_until == Some(at);
                        if fire {
                            due.push(r.clone());
                        }
                        !fire
                    });
                    due.sort_by_key(|r| r.id);
                    self.runs -= due.len();
                    let key = self.keys.key(slot).expect("live slot").to_vec();
                    let state = self.keys.get_mut(slot).expect("live slot");
                    for run in due {
                        if let Some(alert) =
                            alert_for(&self.rule, &self.rule_id, &self.value_names, &key, run, at, state)
                        {
                            if let Some(until) = self.rule.cooldown.map(|c| at.saturating_add(nanos(c))) {
                                self.timers.push(Reverse((until, TimerKind::Forget, slot, 0)));
                            }
                            out.push(Output::Alert(alert));
                        }
                    }
                    state.schedule_absence(slot, &mut self.timers);
                }
                TimerKind::Expiry => {
                    // A timer of a key that was purged and whose slot was reused does not
                    // match the new key's schedule: ignore it.
                    if state.expiry_at != Some(at) {
                        continue;
                    }
                    state.expiry_at = None;
                    let within = self.within.unwrap_or(i64::MAX);
                    let before = state.runs.len();
                    state.runs.retain(|r| r.absent_until.is_some() || r.start.saturating_add(within) > at);
                    self.runs -= before - state.runs.len();
                    state.schedule_expiry(self.within, slot, &mut self.timers);
                }
                TimerKind::Forget => {}
            }
            let state = self.keys.get_mut(slot).expect("live slot");
            if state.runs.is_empty() && state.cooldown_until <= upto {
                self.keys.remove(slot);
            }
        }
    }
}

fn pattern_of(rule: &Rule) -> &PatternRule {
    match &rule.kind {
        RuleKind::Pattern(p) => p,
        RuleKind::Window(_) => unreachable!("PatternOp holds a pattern rule"),
    }
}

fn advance(run: &mut Run, entry: &Pending, step: usize, value: Option<f64>) {
    run.next_step += 1;
    run.last = entry.time;
    if run.causes.len() < MAX_CAUSES {
        run.causes.push(Arc::clone(&entry.event_id));
    }
    if run.correlation.is_none() {
        run.correlation.clone_from(&entry.correlation);
    }
    if let Some(value) = value {
        run.values.push((step, value));
    }
}

/// The alert for a completed run, unless the key is cooling down (then `None`).
fn alert_for(
    rule: &Rule,
    rule_id: &Arc<str>,
    value_names: &[String],
    key: &[u8],
    run: Run,
    time: i64,
    state: &mut KeyRuns,
) -> Option<Alert> {
    if time < state.cooldown_until {
        return None;
    }
    if let Some(cooldown) = rule.cooldown {
        state.cooldown_until = time.saturating_add(nanos(cooldown));
    }
    Some(Alert {
        rule_id: Arc::clone(rule_id),
        severity: rule.severity,
        key: decode_key(key),
        time: Timestamp::from_nanos(time),
        window: None,
        values: run.values.into_iter().map(|(step, value)| (value_names[step].clone(), value)).collect(),
        causes: run.causes.iter().map(|c| c.to_string()).collect(),
        correlation: run.correlation.as_deref().map(str::to_owned),
        actions: rule.actions.clone(),
        message: rule.message.clone(),
    })
}
