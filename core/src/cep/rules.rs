//! CEP rules: the validated rule model and its TOML form (documented in `docs/rules.md`).
//!
//! Parsing has two stages: TOML text to a `toml::Table`, then a walk over the table that
//! builds [`Rule`]s and collects *every* problem with its path
//! (`rules[2].pattern.within: expected a duration like "5m" ...`), so an author fixes a file in
//! one round.

use std::fmt;
use std::time::Duration;

use h3o::Resolution;
use toml::{Table, Value};

use crate::duration::parse_duration;
use crate::event::{Severity, TypePattern};

/// What a window or pattern groups events by. Keys combine the parts in the order given.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum GroupBy {
    /// The asset id (payload `asset_id`, else `subject`).
    Asset,
    /// The asset's type, as registered by `asset.created` events or the host.
    AssetType,
    /// The metric type (for other events: their type).
    Metric,
    /// The H3 cell at the rule's `cell_resolution` (finer event cells map to their parent).
    Cell,
}

impl GroupBy {
    /// The name used in rule files.
    pub const fn name(self) -> &'static str {
        match self {
            GroupBy::Asset => "asset",
            GroupBy::AssetType => "asset_type",
            GroupBy::Metric => "metric",
            GroupBy::Cell => "cell",
        }
    }
}

/// An aggregate function.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum AggFn {
    /// Number of values.
    Count,
    /// Sum.
    Sum,
    /// Mean.
    Avg,
    /// Minimum.
    Min,
    /// Maximum.
    Max,
    /// The value with the latest event time (ties: the later arrival).
    Last,
    /// Median, from a bounded sketch (1% relative accuracy).
    P50,
    /// 95th percentile, from a bounded sketch (1% relative accuracy).
    P95,
}

impl AggFn {
    /// The name used in rule files and outputs.
    pub const fn name(self) -> &'static str {
        match self {
            AggFn::Count => "count",
            AggFn::Sum => "sum",
            AggFn::Avg => "avg",
            AggFn::Min => "min",
            AggFn::Max => "max",
            AggFn::Last => "last",
            AggFn::P50 => "p50",
            AggFn::P95 => "p95",
        }
    }

    fn parse(text: &str) -> Option<Self> {
        [AggFn::Count, AggFn::Sum, AggFn::Avg, AggFn::Min, AggFn::Max, AggFn::Last, AggFn::P50, AggFn::P95]
            .into_iter()
            .find(|f| f.name() == text)
    }

    /// Whether this function needs the percentile sketch.
    pub const fn needs_sketch(self) -> bool {
        matches!(self, AggFn::P50 | AggFn::P95)
    }
}

/// A comparison.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum CmpOp {
    /// `>`
    Gt,
    /// `>=`
    Ge,
    /// `<`
    Lt,
    /// `<=`
    Le,
    /// `==`
    Eq,
    /// `!=`
    Ne,
}

impl CmpOp {
    fn parse(text: &str) -> Option<Self> {
        Some(match text {
            ">" => CmpOp::Gt,
            ">=" => CmpOp::Ge,
            "<" => CmpOp::Lt,
            "<=" => CmpOp::Le,
            "==" => CmpOp::Eq,
            "!=" => CmpOp::Ne,
            _ => return None,
        })
    }

    /// `left <op> right`.
    pub fn holds(self, left: f64, right: f64) -> bool {
        match self {
            CmpOp::Gt => left > right,
            CmpOp::Ge => left >= right,
            CmpOp::Lt => left < right,
            CmpOp::Le => left <= right,
            CmpOp::Eq => left == right,
            CmpOp::Ne => left != right,
        }
    }

    /// The operator's text.
    pub const fn symbol(self) -> &'static str {
        match self {
            CmpOp::Gt => ">",
            CmpOp::Ge => ">=",
            CmpOp::Lt => "<",
            CmpOp::Le => "<=",
            CmpOp::Eq => "==",
            CmpOp::Ne => "!=",
        }
    }
}

/// Which events a pattern step, a negation or an `unless` clause matches. Every given part
/// must hold.
#[derive(Debug, Clone, PartialEq)]
pub struct Matcher {
    /// The event type (wildcards allowed).
    pub types: Option<TypePattern>,
    /// Only `metric.recorded` events of this metric.
    pub metric: Option<String>,
    /// A condition on the event's value (metric value, or `battery_pct` of `battery_low`).
    pub value: Option<(CmpOp, f64)>,
}

/// A window.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum WindowSpec {
    /// Fixed, non-overlapping windows of `size`, aligned to the epoch.
    Tumbling {
        /// Window length.
        size: Duration,
    },
    /// Windows of `size` starting every `slide` (hopping); each event is in `size / slide` windows.
    Sliding {
        /// Window length.
        size: Duration,
        /// Distance between window starts.
        slide: Duration,
    },
    /// Per-key windows that close after `gap` without events; overlapping sessions merge.
    Session {
        /// Inactivity gap.
        gap: Duration,
    },
}

/// `aggregate(metric) op value` over a window.
#[derive(Debug, Clone, PartialEq)]
pub struct Condition {
    /// The metric.
    pub metric: String,
    /// The aggregate of its values in the window.
    pub aggregate: AggFn,
    /// The comparison.
    pub op: CmpOp,
    /// The threshold.
    pub value: f64,
}

/// A window rule: aggregates per key and window; an alert when every `when` condition holds
/// and no `unless` event occurred in the same key and window.
#[derive(Debug, Clone, PartialEq)]
pub struct WindowRule {
    /// The window.
    pub window: WindowSpec,
    /// Aggregates to compute and emit, by metric.
    pub aggregates: Vec<(String, Vec<AggFn>)>,
    /// Conditions that must all hold for an alert (empty: no alert, aggregates only).
    pub when: Vec<Condition>,
    /// Negative conditions: an event matching any of these in the window vetoes the alert.
    pub unless: Vec<Matcher>,
    /// Emit partial results each time event time crosses a multiple of this.
    pub early_every: Option<Duration>,
}

/// How a sequence picks its next event.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Selection {
    /// The next step must be the very next relevant event of the key (relevant: matching any
    /// step or the negation of the rule).
    StrictContiguity,
    /// Events that do not match the next step are skipped; the first that does is taken
    /// (default).
    SkipTillNextMatch,
    /// Every matching event both advances a copy of the run and leaves the run waiting
    /// (all combinations; bounded per key).
    SkipTillAnyMatch,
}

/// A negation after the last step: no matching event within `within`.
#[derive(Debug, Clone, PartialEq)]
pub struct Absent {
    /// The events whose absence is required.
    pub matcher: Matcher,
    /// How long after the last step.
    pub within: Duration,
}

/// A sequence pattern, optionally followed by a negation.
#[derive(Debug, Clone, PartialEq)]
pub struct PatternRule {
    /// The steps, in order (at least one).
    pub steps: Vec<Matcher>,
    /// The whole sequence must fit in this, measured from the first step.
    pub within: Option<Duration>,
    /// Selection strategy.
    pub selection: Selection,
    /// The negation.
    pub absent: Option<Absent>,
}

/// Window or pattern.
#[derive(Debug, Clone, PartialEq)]
pub enum RuleKind {
    /// See [`WindowRule`].
    Window(WindowRule),
    /// See [`PatternRule`].
    Pattern(PatternRule),
}

/// A validated rule.
#[derive(Debug, Clone, PartialEq)]
pub struct Rule {
    /// Unique id (`congestion`).
    pub id: String,
    /// Human name.
    pub name: Option<String>,
    /// Severity of its alerts.
    pub severity: Severity,
    /// Grouping.
    pub group_by: Vec<GroupBy>,
    /// Resolution of the `cell` key part.
    pub cell_resolution: Option<Resolution>,
    /// Named actions for the host to route with each alert.
    pub actions: Vec<String>,
    /// Alert message.
    pub message: Option<String>,
    /// How long after a window closes late events still update it.
    pub allowed_lateness: Duration,
    /// After an alert for a key, suppress the rule's alerts for that key this long.
    pub cooldown: Option<Duration>,
    /// Neighbourhood: a cell host evaluates the rule over the events of the cell and its
    /// k-ring (cells within `neighbours` steps), keyed by the centre cell. 0: the cell alone.
    pub neighbours: u32,
    /// Window or pattern.
    pub kind: RuleKind,
}

impl Rule {
    /// The length of the rule's window (a session window's gap); `None` for pattern rules.
    pub fn window_length(&self) -> Option<Duration> {
        match &self.kind {
            RuleKind::Window(rule) => Some(match rule.window {
                WindowSpec::Tumbling { size } | WindowSpec::Sliding { size, .. } => size,
                WindowSpec::Session { gap } => gap,
            }),
            RuleKind::Pattern(_) => None,
        }
    }
}

/// Every problem found in a rule file.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub struct RuleErrors(pub Vec<RuleError>);

/// One problem: where and what.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct RuleError {
    /// Path into the file (`rules[2].pattern.within`).
    pub path: String,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for RuleErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, error) in self.0.iter().enumerate() {
            if i > 0 {
                f.write_str("\n")?;
            }
            write!(f, "{}: {}", error.path, error.message)?;
        }
        Ok(())
    }
}

/// Parses and validates a rule file.
///
/// # Errors
/// Every problem, each with its path.
pub fn parse_rules(text: &str) -> Result<Vec<Rule>, RuleErrors> {
    let table: Table = text.parse().map_err(|e: toml::de::Error| {
        RuleErrors(vec![RuleError { path: "(file)".into(), message: e.message().to_owned() }])
    })?;
    let mut walker = Walker::default();
    walker.known_keys("", &table, &["rules"]);
    let mut rules = Vec::new();
    match table.get("rules") {
        None => walker.error("rules", "missing: a rule file holds [[rules]] tables"),
        Some(Value::Array(items)) => {
            for (i, item) in items.iter().enumerate() {
                let path = format!("rules[{i}]");
                match item {
                    Value::Table(rule) => {
                        if let Some(rule) = walker.rule(&path, rule) {
                            rules.push(rule);
                        }
                    }
                    _ => walker.error(&path, "expected a table"),
                }
            }
        }
        Some(_) => walker.error("rules", "expected an array of tables ([[rules]])"),
    }
    let mut seen = std::collections::HashSet::new();
    for (i, rule) in rules.iter().enumerate() {
        if !seen.insert(rule.id.clone()) {
            walker.error(&format!("rules[{i}].id"), &format!("duplicate rule id {:?}", rule.id));
        }
    }
    if walker.errors.is_empty() { Ok(rules) } else { Err(RuleErrors(walker.errors)) }
}

#[derive(Default)]
struct Walker {
    errors: Vec<RuleError>,
}

fn join(path: &str, key: &str) -> String {
    if path.is_empty() { key.to_owned() } else { format!("{path}.{key}") }
}

impl Walker {
    fn error(&mut self, path: &str, message: &str) {
        self.errors.push(RuleError { path: path.to_owned(), message: message.to_owned() });
    }

    fn known_keys(&mut self, path: &str, table: &Table, known: &[&str]) {
        for key in table.keys() {
            if !known.contains(&key.as_str()) {
                self.error(&join(path, key), &format!("unknown key (expected one of: {})", known.join(", ")));
            }
        }
    }

    fn string(&mut self, path: &str, table: &Table, key: &str, required: bool) -> Option<String> {
        match table.get(key) {
            None if required => {
                self.error(&join(path, key), "missing");
                None
            }
            None => None,
            Some(Value::String(text)) => Some(text.clone()),
            Some(_) => {
                self.error(&join(path, key), "expected a string");
                None
            }
        }
    }

    fn number(&mut self, path: &str, table: &Table, key: &str) -> Option<f64> {
        match table.get(key) {
            None => {
                self.error(&join(path, key), "missing");
                None
            }
            Some(Value::Integer(i)) => Some(*i as f64),
            Some(Value::Float(f)) if f.is_finite() => Some(*f),
            Some(_) => {
                self.error(&join(path, key), "expected a finite number");
                None
            }
        }
    }

    fn duration(&mut self, path: &str, table: &Table, key: &str, required: bool) -> Option<Duration> {
        let text = self.string(path, table, key, required)?;
        match parse_duration(&text) {
            Ok(d) if d.is_zero() => {
                self.error(&join(path, key), "must be longer than zero");
                None
            }
            Ok(d) => Some(d),
            Err(message) => {
                self.error(&join(path, key), &message);
                None
            }
        }
    }

    fn strings(&mut self, path: &str, table: &Table, key: &str) -> Vec<String> {
        match table.get(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| match item {
                    Value::String(text) => Some(text.clone()),
                    _ => {
                        self.error(&format!("{}[{i}]", join(path, key)), "expected a string");
                        None
                    }
                })
                .collect(),
            Some(_) => {
                self.error(&join(path, key), "expected an array of strings");
                Vec::new()
            }
        }
    }

    fn tables<'a>(&mut self, path: &str, table: &'a Table, key: &str) -> Vec<(String, &'a Table)> {
        match table.get(key) {
            None => Vec::new(),
            Some(Value::Array(items)) => items
                .iter()
                .enumerate()
                .filter_map(|(i, item)| {
                    let item_path = format!("{}[{i}]", join(path, key));
                    match item {
                        Value::Table(t) => Some((item_path, t)),
                        _ => {
                            self.error(&item_path, "expected a table");
                            None
                        }
                    }
                })
                .collect(),
            Some(_) => {
                self.error(&join(path, key), "expected an array of tables");
                Vec::new()
            }
        }
    }

    fn rule(&mut self, path: &str, table: &Table) -> Option<Rule> {
        self.known_keys(
            path,
            table,
            &[
                "id",
                "name",
                "severity",
                "group_by",
                "cell_resolution",
                "actions",
                "message",
                "allowed_lateness",
                "cooldown",
                "neighbours",
                "window",
                "aggregates",
                "when",
                "unless",
                "early_every",
                "pattern",
            ],
        );
        let errors_before = self.errors.len();
        let id = self.string(path, table, "id", true);
        if id.as_deref().is_some_and(str::is_empty) {
            self.error(&join(path, "id"), "must not be empty");
        }
        let name = self.string(path, table, "name", false);
        let message = self.string(path, table, "message", false);
        let severity = match self.string(path, table, "severity", false).as_deref() {
            None | Some("warning") => Severity::Warning,
            Some("info") => Severity::Info,
            Some("major") => Severity::Major,
            Some("critical") => Severity::Critical,
            Some(other) => {
                self.error(
                    &join(path, "severity"),
                    &format!("expected one of info, warning, major, critical, found {other:?}"),
                );
                Severity::Warning
            }
        };
        let group_by: Vec<GroupBy> = self
            .strings(path, table, "group_by")
            .iter()
            .enumerate()
            .filter_map(|(i, part)| {
                let found = [GroupBy::Asset, GroupBy::AssetType, GroupBy::Metric, GroupBy::Cell]
                    .into_iter()
                    .find(|g| g.name() == part);
                if found.is_none() {
                    self.error(
                        &format!("{path}.group_by[{i}]"),
                        &format!("expected one of asset, asset_type, metric, cell, found {part:?}"),
                    );
                }
                found
            })
            .collect();
        let cell_resolution = match table.get("cell_resolution") {
            None => None,
            Some(Value::Integer(res)) => match u8::try_from(*res).ok().and_then(|r| Resolution::try_from(r).ok()) {
                Some(res) => Some(res),
                None => {
                    self.error(&join(path, "cell_resolution"), "expected an H3 resolution 0..=15");
                    None
                }
            },
            Some(_) => {
                self.error(&join(path, "cell_resolution"), "expected an integer H3 resolution 0..=15");
                None
            }
        };
        if group_by.contains(&GroupBy::Cell) && cell_resolution.is_none() && !table.contains_key("cell_resolution") {
            self.error(&join(path, "cell_resolution"), "missing: grouping by cell needs a resolution");
        }
        let actions = self.strings(path, table, "actions");
        let allowed_lateness = match table.get("allowed_lateness") {
            None => Some(Duration::ZERO),
            Some(_) => match self.string(path, table, "allowed_lateness", true).map(|t| parse_duration(&t)) {
                Some(Ok(d)) => Some(d),
                Some(Err(message)) => {
                    self.error(&join(path, "allowed_lateness"), &message);
                    None
                }
                None => None,
            },
        };
        let cooldown = self.duration(path, table, "cooldown", false);
        let neighbours = match table.get("neighbours") {
            None => 0,
            Some(Value::Integer(k)) if (0..=3).contains(k) => *k as u32,
            Some(_) => {
                self.error(&join(path, "neighbours"), "expected a k-ring distance 0..=3");
                0
            }
        };
        if neighbours > 0 && !group_by.contains(&GroupBy::Cell) {
            self.error(&join(path, "neighbours"), "a neighbourhood rule must group by cell (the centre cell)");
        }

        let kind = match (table.get("window"), table.get("pattern")) {
            (Some(_), Some(_)) => {
                self.error(path, "a rule has either a window or a pattern, not both");
                None
            }
            (None, None) => {
                self.error(path, "a rule needs a window (aggregates and conditions) or a pattern (sequence)");
                None
            }
            (Some(_), None) => self.window_rule(path, table).map(RuleKind::Window),
            (None, Some(pattern)) => {
                for key in ["aggregates", "when", "unless", "early_every"] {
                    if table.contains_key(key) {
                        self.error(&join(path, key), "only window rules take this key");
                    }
                }
                match pattern {
                    Value::Table(pattern) => self.pattern_rule(&join(path, "pattern"), pattern).map(RuleKind::Pattern),
                    _ => {
                        self.error(&join(path, "pattern"), "expected a table");
                        None
                    }
                }
            }
        };
        if self.errors.len() > errors_before {
            return None;
        }
        Some(Rule {
            id: id?,
            name,
            severity,
            group_by,
            cell_resolution,
            actions,
            message,
            allowed_lateness: allowed_lateness?,
            cooldown,
            neighbours,
            kind: kind?,
        })
    }

    fn window_rule(&mut self, path: &str, table: &Table) -> Option<WindowRule> {
        let window_path = join(path, "window");
        let window = match table.get("window") {
            Some(Value::Table(window)) => {
                self.known_keys(&window_path, window, &["kind", "size", "slide", "gap"]);
                match self.string(&window_path, window, "kind", true).as_deref() {
                    Some("tumbling") => {
                        for key in ["slide", "gap"] {
                            if window.contains_key(key) {
                                self.error(&join(&window_path, key), "tumbling windows take only a size");
                            }
                        }
                        self.duration(&window_path, window, "size", true).map(|size| WindowSpec::Tumbling { size })
                    }
                    Some("sliding") => {
                        let size = self.duration(&window_path, window, "size", true);
                        let slide = self.duration(&window_path, window, "slide", true);
                        match (size, slide) {
                            (Some(size), Some(slide)) if slide > size || size.as_nanos() % slide.as_nanos() != 0 => {
                                self.error(&join(&window_path, "slide"), "must divide the size (size = n × slide)");
                                None
                            }
                            (Some(size), Some(slide)) => Some(WindowSpec::Sliding { size, slide }),
                            _ => None,
                        }
                    }
                    Some("session") => {
                        self.duration(&window_path, window, "gap", true).map(|gap| WindowSpec::Session { gap })
                    }
                    Some(other) => {
                        self.error(
                            &join(&window_path, "kind"),
                            &format!("expected tumbling, sliding or session, found {other:?}"),
                        );
                        None
                    }
                    None => None,
                }
            }
            _ => {
                self.error(&window_path, "expected a table like { kind = \"tumbling\", size = \"5m\" }");
                None
            }
        };
        let mut aggregates: Vec<(String, Vec<AggFn>)> = Vec::new();
        for (item_path, item) in self.tables(path, table, "aggregates") {
            self.known_keys(&item_path, item, &["metric", "functions"]);
            let metric = self.string(&item_path, item, "metric", true);
            let functions: Vec<AggFn> = self
                .strings(&item_path, item, "functions")
                .iter()
                .enumerate()
                .filter_map(|(i, name)| {
                    let found = AggFn::parse(name);
                    if found.is_none() {
                        self.error(
                            &format!("{item_path}.functions[{i}]"),
                            &format!("expected one of count, sum, avg, min, max, last, p50, p95, found {name:?}"),
                        );
                    }
                    found
                })
                .collect();
            if functions.is_empty() && item.contains_key("functions") {
                self.error(&join(&item_path, "functions"), "must name at least one function");
            }
            if let Some(metric) = metric {
                aggregates.push((metric, functions));
            }
        }
        let mut when = Vec::new();
        for (item_path, item) in self.tables(path, table, "when") {
            self.known_keys(&item_path, item, &["metric", "aggregate", "op", "value"]);
            let metric = self.string(&item_path, item, "metric", true);
            let aggregate = self.string(&item_path, item, "aggregate", true).and_then(|name| {
                let found = AggFn::parse(&name);
                if found.is_none() {
                    self.error(
                        &join(&item_path, "aggregate"),
                        &format!("expected one of count, sum, avg, min, max, last, p50, p95, found {name:?}"),
                    );
                }
                found
            });
            let op = self.op(&item_path, item, true);
            let value = self.number(&item_path, item, "value");
            if let (Some(metric), Some(aggregate), Some(op), Some(value)) = (metric, aggregate, op, value) {
                when.push(Condition { metric, aggregate, op, value });
            }
        }
        let unless: Vec<Matcher> = self
            .tables(path, table, "unless")
            .into_iter()
            .filter_map(|(item_path, item)| self.matcher(&item_path, item))
            .collect();
        if matches!(window, Some(WindowSpec::Session { .. })) && !unless.is_empty() {
            self.error(
                &join(path, "unless"),
                "negative conditions are supported on tumbling and sliding windows, not sessions",
            );
        }
        let early_every = self.duration(path, table, "early_every", false);
        if !table.contains_key("aggregates") && !table.contains_key("when") {
            self.error(path, "a window rule needs aggregates to emit or when-conditions to alert on");
        }
        Some(WindowRule { window: window?, aggregates, when, unless, early_every })
    }

    fn op(&mut self, path: &str, table: &Table, required: bool) -> Option<CmpOp> {
        let text = self.string(path, table, "op", required)?;
        let op = CmpOp::parse(&text);
        if op.is_none() {
            self.error(&join(path, "op"), &format!("expected one of >, >=, <, <=, ==, !=, found {text:?}"));
        }
        op
    }

    fn matcher(&mut self, path: &str, table: &Table) -> Option<Matcher> {
        self.known_keys(path, table, &["type", "metric", "op", "value"]);
        let types = self.string(path, table, "type", false).map(TypePattern::new);
        let metric = self.string(path, table, "metric", false);
        let value = match (table.contains_key("op"), table.contains_key("value")) {
            (false, false) => None,
            (true, true) => {
                let op = self.op(path, table, true);
                let value = self.number(path, table, "value");
                Some((op?, value?))
            }
            (true, false) => {
                self.error(&join(path, "value"), "missing: op needs a value");
                None
            }
            (false, true) => {
                self.error(&join(path, "op"), "missing: value needs an op");
                None
            }
        };
        if types.is_none() && metric.is_none() && value.is_none() {
            self.error(path, "a matcher needs at least one of type, metric, or op and value");
            return None;
        }
        Some(Matcher { types, metric, value })
    }

    fn pattern_rule(&mut self, path: &str, table: &Table) -> Option<PatternRule> {
        self.known_keys(path, table, &["sequence", "within", "selection", "absent"]);
        let steps: Vec<Option<Matcher>> = self
            .tables(path, table, "sequence")
            .into_iter()
            .map(|(item_path, item)| self.matcher(&item_path, item))
            .collect();
        if steps.is_empty() {
            self.error(
                &join(path, "sequence"),
                "missing: a pattern needs at least one step, like [{ type = \"...\" }]",
            );
        }
        let within = self.duration(path, table, "within", false);
        let selection = match self.string(path, table, "selection", false).as_deref() {
            None | Some("skip_till_next_match") => Some(Selection::SkipTillNextMatch),
            Some("strict_contiguity") => Some(Selection::StrictContiguity),
            Some("skip_till_any_match") => Some(Selection::SkipTillAnyMatch),
            Some(other) => {
                self.error(
                    &join(path, "selection"),
                    &format!(
                        "expected strict_contiguity, skip_till_next_match or skip_till_any_match, found {other:?}"
                    ),
                );
                None
            }
        };
        let absent = match table.get("absent") {
            None => None,
            Some(Value::Table(absent)) => {
                let absent_path = join(path, "absent");
                let mut matcher_table = absent.clone();
                let within = self.duration(&absent_path, absent, "within", true);
                matcher_table.remove("within");
                let matcher = self.matcher(&absent_path, &matcher_table);
                match (matcher, within) {
                    (Some(matcher), Some(within)) => Some(Absent { matcher, within }),
                    _ => return None,
                }
            }
            Some(_) => {
                self.error(&join(path, "absent"), "expected a table like { type = \"...\", within = \"1m\" }");
                return None;
            }
        };
        if steps.len() > 1 && within.is_none() {
            self.error(&join(path, "within"), "missing: a sequence of several steps needs a time bound like \"5m\"");
        }
        let steps: Option<Vec<Matcher>> = steps.into_iter().collect();
        Some(PatternRule { steps: steps?, within, selection: selection?, absent })
    }
}
