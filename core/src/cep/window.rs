//! Window rules: assignment on arrival, closing by watermark, late updates, early results,
//! conditions, negation and cooldown.

use std::cmp::Reverse;
use std::collections::{BTreeMap, BinaryHeap};
use std::sync::Arc;

use super::agg::Acc;
use super::rules::{AggFn, Rule, RuleKind, WindowRule, WindowSpec};
use super::{
    Alert, Emission, Fact, Incoming, KeyTable, LateEvent, MAX_CAUSES, Output, WindowResult, decode_key, key_bytes,
};
use crate::event::{EcoString, Timestamp};

fn nanos(d: std::time::Duration) -> i64 {
    i64::try_from(d.as_nanos()).unwrap_or(i64::MAX)
}

#[derive(Debug)]
struct Win {
    start: i64,
    end: i64,
    accs: Vec<Acc>,
    count: u64,
    vetoed: bool,
    fired: bool,
    alerted: bool,
    dirty: bool,
    causes: Vec<EcoString>,
    correlation: Option<String>,
}

#[derive(Debug, Default)]
struct KeyWindows {
    windows: Vec<Win>,
    cooldown_until: i64,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum TimerKind {
    /// Emit the final result (window end reached).
    Close,
    /// Drop the window (end + allowed lateness reached).
    Purge,
    /// Drop the key if it holds nothing (cooldown over).
    Forget,
}

#[derive(Debug)]
pub(crate) struct WindowOp {
    rule: Arc<Rule>,
    rule_id: Arc<str>,
    spec: WindowSpec,
    /// Metrics aggregated, with the functions to emit and whether they need the sketch.
    metrics: Vec<(String, Vec<AggFn>, bool)>,
    /// (metric index, function, op, threshold) per condition.
    conditions: Vec<(usize, AggFn, super::rules::CmpOp, f64)>,
    lateness: i64,
    early_every: Option<i64>,
    next_early: Option<i64>,
    keys: KeyTable<KeyWindows>,
    timers: BinaryHeap<Reverse<(i64, TimerKind, u32, i64)>>,
    open_windows: usize,
}

impl WindowOp {
    pub(crate) fn new(rule: Arc<Rule>) -> Self {
        let RuleKind::Window(WindowRule { window, aggregates, when, early_every, .. }) = &rule.kind else {
            unreachable!("WindowOp is built for window rules")
        };
        let mut metrics: Vec<(String, Vec<AggFn>, bool)> = Vec::new();
        let index_of = |metric: &str, metrics: &mut Vec<(String, Vec<AggFn>, bool)>| match metrics
            .iter()
            .position(|m| m.0 == metric)
        {
            Some(i) => i,
            None => {
                metrics.push((metric.to_owned(), Vec::new(), false));
                metrics.len() - 1
            }
        };
        for (metric, functions) in aggregates {
            let i = index_of(metric, &mut metrics);
            for &function in functions {
                if !metrics[i].1.contains(&function) {
                    metrics[i].1.push(function);
                }
            }
        }
        let conditions = when
            .iter()
            .map(|c| {
                let i = index_of(&c.metric, &mut metrics);
                if !metrics[i].1.contains(&c.aggregate) {
                    metrics[i].1.push(c.aggregate);
                }
                (i, c.aggregate, c.op, c.value)
            })
            .collect();
        for metric in &mut metrics {
            metric.2 = metric.1.iter().any(|f| f.needs_sketch());
        }
        WindowOp {
            rule_id: rule.id.as_str().into(),
            spec: *window,
            metrics,
            conditions,
            lateness: nanos(rule.allowed_lateness),
            early_every: early_every.map(nanos),
            next_early: None,
            keys: KeyTable::default(),
            timers: BinaryHeap::new(),
            open_windows: 0,
            rule,
        }
    }

    pub(crate) fn state_size(&self) -> usize {
        self.open_windows + self.keys.len()
    }

    fn window_rule(&self) -> &WindowRule {
        match &self.rule.kind {
            RuleKind::Window(w) => w,
            RuleKind::Pattern(_) => unreachable!("WindowOp holds a window rule"),
        }
    }

    /// Routes an event; returns how many late reports it made.
    pub(crate) fn on_event(
        &mut self,
        incoming: &Incoming<'_>,
        facts: &[Fact<'_>],
        watermark: Option<i64>,
        key_buf: &mut Vec<u8>,
        out: &mut Vec<Output>,
    ) -> u64 {
        let mut late = 0;
        for fact in facts {
            let metric_index = fact.metric.and_then(|m| self.metrics.iter().position(|(name, _, _)| name == m));
            let vetoes = self.window_rule().unless.iter().any(|m| m.matches(incoming.event, fact));
            if metric_index.is_none() && !vetoes {
                continue;
            }
            if !key_bytes(&self.rule.group_by, self.rule.cell_resolution, incoming, fact, key_buf) {
                continue;
            }
            let value = fact.value.unwrap_or(0.0);
            let expired =
                self.assign(key_buf, fact.time, metric_index.map(|i| (i, value)), vetoes, incoming, watermark, out);
            if expired {
                late += 1;
                out.push(Output::Late(LateEvent {
                    rule_id: Arc::clone(&self.rule_id),
                    event_id: incoming.event.id.to_string(),
                    time: Timestamp::from_nanos(fact.time),
                    watermark: Timestamp::from_nanos(watermark.unwrap_or(i64::MIN)),
                }));
            }
        }
        late
    }

    /// Adds a value (and/or a veto) to the key's windows; returns whether some window it
    /// belonged to had already been purged (a late event beyond the allowed lateness).
    #[allow(clippy::too_many_arguments)]
    fn assign(
        &mut self,
        key: &[u8],
        time: i64,
        sample: Option<(usize, f64)>,
        vetoes: bool,
        incoming: &Incoming<'_>,
        watermark: Option<i64>,
        out: &mut Vec<Output>,
    ) -> bool {
        let metrics = &self.metrics;
        let new_accs = || metrics.iter().map(|(_, _, sketch)| Acc::new(*sketch)).collect::<Vec<_>>();
        let wm = watermark.unwrap_or(i64::MIN);
        let mut expired = false;
        let mut updated_fired: Vec<i64> = Vec::new();
        if let WindowSpec::Session { gap } = self.spec {
            let gap = nanos(gap);
            if time.saturating_add(gap).saturating_add(self.lateness) <= wm {
                return true;
            }
            let Some((i, value)) = sample else {
                return false;
            };
            let slot = self.keys.slot(key, KeyWindows::default);
            let state = self.keys.get_mut(slot).expect("slot just interned");
            // Merge every session the new point touches.
            let mut merged = Win {
                start: time,
                end: time.saturating_add(gap),
                accs: new_accs(),
                count: 0,
                vetoed: false,
                fired: false,
                alerted: false,
                dirty: true,
                causes: Vec::new(),
                correlation: None,
            };
            let mut kept = Vec::with_capacity(state.windows.len());
            for win in state.windows.drain(..) {
                let touches = !win.fired && time >= win.start.saturating_sub(gap) && time < win.end;
                if touches {
                    merged.start = merged.start.min(win.start);
                    merged.end = merged.end.max(win.end);
                    for (mine, theirs) in merged.accs.iter_mut().zip(&win.accs) {
                        mine.merge(theirs);
                    }
                    merged.count += win.count;
                    merged.causes.extend(win.causes);
                    merged.causes.truncate(MAX_CAUSES);
                    merged.correlation = merged.correlation.or(win.correlation);
                    self.open_windows -= 1;
                } else {
                    kept.push(win);
                }
            }
            merged.accs[i].add(value, time);
            merged.count += 1;
            note_cause(&mut merged, incoming);
            self.timers.push(Reverse((merged.end, TimerKind::Close, slot, merged.start)));
            kept.push(merged);
            kept.sort_by_key(|w| w.start);
            state.windows = kept;
            self.open_windows += 1;
            return false;
        }
        let (size, slide) = match self.spec {
            WindowSpec::Tumbling { size } => (nanos(size), nanos(size)),
            WindowSpec::Sliding { size, slide } => (nanos(size), nanos(slide)),
            WindowSpec::Session { .. } => unreachable!("sessions are handled above"),
        };
        let last_start = time.div_euclid(slide) * slide;
        let mut slot = None;
        for k in (0..size / slide).rev() {
            let start = last_start - k * slide;
            let end = start + size;
            if end.saturating_add(self.lateness) <= wm {
                expired = true;
                continue;
            }
            let slot = *slot.get_or_insert_with(|| self.keys.slot(key, KeyWindows::default));
            let state = self.keys.get_mut(slot).expect("slot interned");
            let position = state.windows.iter().position(|w| w.start == start);
            let win = match position {
                Some(p) => &mut state.windows[p],
                None => {
                    state.windows.push(Win {
                        start,
                        end,
                        accs: new_accs(),
                        count: 0,
                        vetoed: false,
                        fired: false,
                        alerted: false,
                        dirty: false,
                        causes: Vec::new(),
                        correlation: None,
                    });
                    self.open_windows += 1;
                    self.timers.push(Reverse((end, TimerKind::Close, slot, start)));
                    if self.lateness > 0 {
                        self.timers.push(Reverse((end.saturating_add(self.lateness), TimerKind::Purge, slot, start)));
                    }
                    state.windows.last_mut().expect("just pushed")
                }
            };
            if let Some((i, value)) = sample {
                win.accs[i].add(value, time);
                win.count += 1;
                note_cause(win, incoming);
            }
            win.vetoed |= vetoes;
            win.dirty = true;
            if win.fired {
                updated_fired.push(start);
            }
        }
        if let Some(slot) = slot {
            for start in updated_fired {
                self.emit(slot, start, Emission::Update, out);
            }
        }
        expired
    }

    fn emit(&mut self, slot: u32, start: i64, emission: Emission, out: &mut Vec<Output>) {
        let key_bytes = self.keys.key(slot).expect("live slot").to_vec();
        let cooldown = self.rule.cooldown.map(nanos);
        let Some(state) = self.keys.get_mut(slot) else {
            return;
        };
        let Some(win) = state.windows.iter_mut().find(|w| w.start == start) else {
            return;
        };
        win.dirty = false;
        let key = decode_key(&key_bytes);
        let mut values = Vec::new();
        for ((metric, functions, _), acc) in self.metrics.iter().zip(&win.accs) {
            for &function in functions {
                if let Some(value) = acc.value(function) {
                    values.push((format!("{}({metric})", function.name()), value));
                }
            }
        }
        out.push(Output::Window(WindowResult {
            rule_id: Arc::clone(&self.rule_id),
            key: key.clone(),
            start: Timestamp::from_nanos(win.start),
            end: Timestamp::from_nanos(win.end),
            emission,
            count: win.count,
            values,
        }));
        if emission == Emission::Early || self.conditions.is_empty() || win.alerted || win.vetoed {
            return;
        }
        let mut alert_values = BTreeMap::new();
        for &(i, function, op, threshold) in &self.conditions {
            match win.accs[i].value(function) {
                Some(value) if op.holds(value, threshold) => {
                    alert_values.insert(format!("{}({})", function.name(), self.metrics[i].0), value);
                }
                _ => return,
            }
        }
        if win.end < state.cooldown_until {
            return;
        }
        win.alerted = true;
        if let Some(cooldown) = cooldown {
            state.cooldown_until = win.end.saturating_add(cooldown);
            self.timers.push(Reverse((state.cooldown_until, TimerKind::Forget, slot, 0)));
        }
        out.push(Output::Alert(Alert {
            rule_id: Arc::clone(&self.rule_id),
            severity: self.rule.severity,
            key,
            time: Timestamp::from_nanos(win.end),
            window: Some((Timestamp::from_nanos(win.start), Timestamp::from_nanos(win.end))),
            values: alert_values,
            causes: win.causes.iter().map(ToString::to_string).collect(),
            correlation: win.correlation.clone(),
            actions: self.rule.actions.clone(),
            message: self.rule.message.clone(),
        }));
    }

    pub(crate) fn on_watermark(&mut self, watermark: i64, out: &mut Vec<Output>) {
        if let Some(every) = self.early_every {
            let following = watermark.div_euclid(every).saturating_mul(every).saturating_add(every);
            let next = *self.next_early.get_or_insert(following);
            if watermark >= next {
                self.next_early = Some(following);
                let dirty: Vec<(u32, i64)> = self
                    .keys
                    .slots
                    .iter()
                    .enumerate()
                    .filter_map(|(slot, s)| s.as_ref().map(|(_, state)| (slot as u32, state)))
                    .flat_map(|(slot, state)| {
                        state
                            .windows
                            .iter()
                            .filter(|w| w.dirty && !w.fired && w.end > watermark)
                            .map(move |w| (slot, w.start))
                    })
                    .collect();
                for (slot, start) in dirty {
                    self.emit(slot, start, Emission::Early, out);
                }
            }
        }
        while let Some(&Reverse((at, kind, slot, start))) = self.timers.peek() {
            if at > watermark {
                break;
            }
            self.timers.pop();
            match kind {
                TimerKind::Close => {
                    let Some(state) = self.keys.get_mut(slot) else {
                        continue;
                    };
                    let Some(win) = state.windows.iter_mut().find(|w| w.start == start) else {
                        continue;
                    };
                    if win.end != at || win.fired {
                        // A session that grew since this timer was set; its own timer follows.
                        continue;
                    }
                    win.fired = true;
                    self.emit(slot, start, Emission::Final, out);
                    if self.lateness == 0 || matches!(self.spec, WindowSpec::Session { .. }) {
                        self.drop_window(slot, start, watermark);
                    }
                }
                TimerKind::Purge => self.drop_window(slot, start, watermark),
                TimerKind::Forget => self.forget_if_idle(slot, watermark),
            }
        }
    }

    fn drop_window(&mut self, slot: u32, start: i64, watermark: i64) {
        let Some(state) = self.keys.get_mut(slot) else {
            return;
        };
        let before = state.windows.len();
        state.windows.retain(|w| w.start != start);
        self.open_windows -= before - state.windows.len();
        self.forget_if_idle(slot, watermark);
    }

    fn forget_if_idle(&mut self, slot: u32, watermark: i64) {
        let idle = self.keys.get_mut(slot).is_some_and(|s| s.windows.is_empty() && s.cooldown_until <= watermark);
        if idle {
            self.keys.remove(slot);
        }
    }
}

fn note_cause(win: &mut Win, incoming: &Incoming<'_>) {
    if win.causes.len() < MAX_CAUSES {
        win.causes.push(incoming.event.id.clone());
    }
    if win.correlation.is_none() {
        win.correlation.clone_from(&incoming.event.ext.rare.correlationid);
    }
}
