//! Run reports: what a scenario produced (events, alerts by rule and cell and hour, the key
//! metric per cell, KPIs), as deterministic JSON (`report.json`: same scenario and seed, same
//! bytes) and as HTML with SVG plots (`report.html`).

use std::collections::{BTreeMap, HashMap};
use std::fmt::Write as _;

use citytwin_core::event::{Event, Payload, Timestamp};
use h3o::CellIndex;
use serde::{Deserialize, Serialize};

use crate::generate::Truth;
use crate::scenario::Scenario;
use crate::svg;

/// Key figures for planners (compared by `citytwin compare`).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Kpis {
    /// Σ window length of congestion alerts (cell-minutes congested).
    pub congestion_minutes: f64,
    /// Σ window length of PM2.5 alerts, in hours (cell-hours above the limit).
    pub pm25_exceedance_hours: f64,
    /// Asset-minutes without readings (faults and power loss; generator ground truth).
    pub offline_minutes: f64,
    /// Readings that failed a quality check.
    pub quality_failures: u64,
    /// Traffic incidents reported.
    pub traffic_incidents: u64,
    /// Utility outages.
    pub outages: u64,
}

/// The key metric in one cell.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct CellStats {
    /// Readings.
    pub count: u64,
    /// Mean.
    pub mean: f64,
    /// Maximum.
    pub max: f64,
}

/// A run's report.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Report {
    /// Scenario (city) name.
    pub scenario: String,
    /// Seed.
    pub seed: u64,
    /// Simulated start and end (RFC 3339).
    pub start: String,
    /// End.
    pub end: String,
    /// Digest of the generated event stream.
    pub digest: String,
    /// Events generated.
    pub events: u64,
    /// Assets (including those added by interventions).
    pub assets: u64,
    /// Generated events by type.
    pub events_by_type: BTreeMap<String, u64>,
    /// Generated events per simulated minute.
    pub events_per_minute: Vec<u64>,
    /// Alerts raised by the twin.
    pub alerts_total: u64,
    /// Alerts by rule.
    pub alerts_by_rule: BTreeMap<String, u64>,
    /// Alerts by rule, then cell (`-` when the alert has no cell).
    pub alerts_by_rule_and_cell: BTreeMap<String, BTreeMap<String, u64>>,
    /// Alerts by rule per simulated hour.
    pub alerts_per_hour: BTreeMap<String, Vec<u64>>,
    /// The metric mapped per cell, and its unit.
    pub key_metric: String,
    /// Its unit.
    pub key_unit: String,
    /// The key metric per cell.
    pub cells: BTreeMap<String, CellStats>,
    /// Key figures.
    pub kpis: Kpis,
}

/// What a report counts of one alert: its rule, cell and time (an alert event is a kilobyte
/// or so; a run that raises millions keeps only this much of each until it is counted).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AlertSeen {
    /// The rule that raised it.
    pub rule_id: String,
    /// Its cell, or the event's.
    pub cell: Option<CellIndex>,
    /// When.
    pub time: Option<Timestamp>,
}

impl AlertSeen {
    /// The counted parts of an `alert.triggered` event (`None` for any other event).
    pub fn of(event: &Event) -> Option<AlertSeen> {
        let Some(Payload::AlertTriggered(alert)) = event.payload() else { return None };
        Some(AlertSeen { rule_id: alert.rule_id.clone(), cell: alert.cell.or(event.ext.h3cell), time: event.time })
    }
}

/// Builds a [`Report`] from the generated events and the alerts.
#[derive(Debug)]
pub struct ReportBuilder {
    report: Report,
    start: i64,
    resolution: h3o::Resolution,
    cells: HashMap<CellIndex, (f64, u64, f64)>,
    /// Window length (minutes) of each windowed rule.
    rule_minutes: BTreeMap<String, f64>,
}

impl ReportBuilder {
    /// A builder for `scenario`; `rule_minutes` gives the window length of windowed rules.
    pub fn new(scenario: &Scenario, rule_minutes: BTreeMap<String, f64>) -> Self {
        let minutes = usize::try_from(scenario.duration.as_secs().div_ceil(60)).unwrap_or(0);
        let (key_metric, key_unit) = scenario
            .populations
            .iter()
            .flat_map(|p| &p.metrics)
            .find(|m| m.name == "pm25")
            .or_else(|| scenario.populations.iter().flat_map(|p| &p.metrics).next())
            .map(|m| (m.name.clone(), m.unit.to_string()))
            .unwrap_or_default();
        ReportBuilder {
            report: Report {
                scenario: scenario.name.clone(),
                seed: scenario.seed,
                start: scenario.start.to_rfc3339(),
                end: scenario.end().to_rfc3339(),
                events_per_minute: vec![0; minutes],
                key_metric,
                key_unit,
                ..Report::default()
            },
            start: scenario.start.as_nanos(),
            resolution: scenario.resolution,
            cells: HashMap::new(),
            rule_minutes,
        }
    }

    fn minute(&self, time: Option<Timestamp>) -> Option<usize> {
        usize::try_from((time?.as_nanos() - self.start) / 60_000_000_000).ok()
    }

    /// Counts one generated event.
    pub fn observe(&mut self, event: &Event) {
        self.report.events += 1;
        if let Some(kind) = event.kind() {
            *self.report.events_by_type.entry(kind.short_name().to_owned()).or_default() += 1;
        }
        if let Some(minute) = self.minute(event.time)
            && let Some(slot) = self.report.events_per_minute.get_mut(minute)
        {
            *slot += 1;
        }
        match event.payload() {
            Some(Payload::MetricRecorded(m)) if m.metric_type == self.report.key_metric => {
                if let Some(cell) = event.ext.h3cell.and_then(|c| c.parent(self.resolution)) {
                    let entry = self.cells.entry(cell).or_insert((0.0, 0, f64::MIN));
                    entry.0 += m.value;
                    entry.1 += 1;
                    entry.2 = entry.2.max(m.value);
                }
            }
            Some(Payload::TrafficIncidentReported(_)) => self.report.kpis.traffic_incidents += 1,
            Some(Payload::UtilityOutageDetected(_)) => self.report.kpis.outages += 1,
            _ => {}
        }
    }

    /// Counts one `alert.triggered` event (any other event is ignored).
    pub fn observe_alert(&mut self, event: &Event) {
        if let Some(alert) = AlertSeen::of(event) {
            self.count_alert(&alert);
        }
    }

    /// Counts one alert. Counting is order-independent (sums of one constant per rule), so
    /// alerts may be counted in any order and the report is the same.
    pub fn count_alert(&mut self, alert: &AlertSeen) {
        self.report.alerts_total += 1;
        *self.report.alerts_by_rule.entry(alert.rule_id.clone()).or_default() += 1;
        let cell = alert.cell.map_or_else(|| "-".to_owned(), |c| c.to_string());
        *self.report.alerts_by_rule_and_cell.entry(alert.rule_id.clone()).or_default().entry(cell).or_default() += 1;
        let hours = self.report.events_per_minute.len().div_ceil(60).max(1);
        if let Some(minute) = self.minute(alert.time) {
            let per_hour = self.report.alerts_per_hour.entry(alert.rule_id.clone()).or_insert_with(|| vec![0; hours]);
            if let Some(slot) = per_hour.get_mut(minute / 60) {
                *slot += 1;
            }
        }
        let minutes = self.rule_minutes.get(&alert.rule_id).copied().unwrap_or(0.0);
        if alert.rule_id.contains("congestion") {
            self.report.kpis.congestion_minutes += minutes;
        }
        if alert.rule_id.contains("pm25") {
            self.report.kpis.pm25_exceedance_hours += minutes / 60.0;
        }
    }

    /// The report, with the stream digest and the generator's ground truth.
    pub fn finish(mut self, digest: String, assets: u64, truth: Truth) -> Report {
        self.report.digest = digest;
        self.report.assets = assets;
        self.report.kpis.offline_minutes = (truth.offline_ns as f64 / 60e9 * 10.0).round() / 10.0;
        self.report.kpis.quality_failures = truth.quality_failures;
        self.report.cells = self
            .cells
            .into_iter()
            .map(|(cell, (sum, count, max))| {
                let mean = (sum / count as f64 * 100.0).round() / 100.0;
                (cell.to_string(), CellStats { count, mean, max })
            })
            .collect();
        self.report
    }
}

impl Report {
    /// Pretty JSON (deterministic: maps are ordered).
    ///
    /// # Panics
    /// Never: the report is plain data.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a report serializes") + "\n"
    }

    /// Cells with the most alerts, most first.
    pub fn top_cells(&self, n: usize) -> Vec<(String, u64)> {
        let mut by_cell: BTreeMap<&str, u64> = BTreeMap::new();
        for cells in self.alerts_by_rule_and_cell.values() {
            for (cell, count) in cells {
                if cell != "-" {
                    *by_cell.entry(cell).or_default() += count;
                }
            }
        }
        let mut cells: Vec<(String, u64)> = by_cell.into_iter().map(|(c, n)| (c.to_owned(), n)).collect();
        cells.sort_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        cells.truncate(n);
        cells
    }

    /// Alerts per simulated hour, one line per rule.
    fn alerts_chart(&self, title: &str) -> String {
        let hours = self.events_per_minute.len().div_ceil(60);
        let labels: Vec<String> = (0..hours).map(|h| format!("+{h}h")).collect();
        let series: Vec<(String, Vec<f64>)> = self
            .alerts_per_hour
            .iter()
            .map(|(rule, counts)| (rule.clone(), counts.iter().map(|&n| n as f64).collect()))
            .collect();
        svg::line_chart(title, "alerts", &labels, &series)
    }

    /// A self-contained HTML page with the summary, the KPIs and the plots. `timing` is a
    /// line about wall-clock speed (kept out of the JSON so that stays deterministic).
    pub fn to_html(&self, timing: &str) -> String {
        let mut html = String::new();
        let _ = write!(
            html,
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>citytwin run: {name}</title>\
             <style>body{{font-family:sans-serif;max-width:820px;margin:2em auto;color:#222}}\
             table{{border-collapse:collapse}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
             th{{background:#f4f4f4}}td:first-child,th:first-child{{text-align:left}}</style></head><body>\
             <h1>{name}</h1><p>Seed {seed}, {start} → {end}. {events} events from {assets} assets; \
             stream digest <code>{digest}</code>. {timing}</p>",
            name = svg::escape(&self.scenario),
            seed = self.seed,
            start = self.start,
            end = self.end,
            events = self.events,
            assets = self.assets,
            digest = self.digest,
            timing = svg::escape(timing),
        );
        html.push_str("<h2>Key figures</h2><table><tr><th>KPI</th><th>value</th></tr>");
        let k = &self.kpis;
        for (name, value) in [
            ("alerts", self.alerts_total as f64),
            ("congestion (cell-minutes)", k.congestion_minutes),
            ("PM2.5 exceedance (cell-hours)", k.pm25_exceedance_hours),
            ("offline (asset-minutes)", k.offline_minutes),
            ("quality-check failures", k.quality_failures as f64),
            ("traffic incidents", k.traffic_incidents as f64),
            ("utility outages", k.outages as f64),
        ] {
            let _ = write!(html, "<tr><td>{name}</td><td>{value}</td></tr>");
        }
        html.push_str("</table><h2>Alerts by rule</h2><table><tr><th>rule</th><th>alerts</th><th>cells</th></tr>");
        for (rule, count) in &self.alerts_by_rule {
            let cells = self.alerts_by_rule_and_cell.get(rule).map_or(0, BTreeMap::len);
            let _ = write!(html, "<tr><td>{}</td><td>{count}</td><td>{cells}</td></tr>", svg::escape(rule));
        }
        html.push_str("</table><h2>Plots</h2>");
        let minute_labels: Vec<String> =
            (0..self.events_per_minute.len()).map(|m| format!("{:02}:{:02}", m / 60 % 24, m % 60)).collect();
        html.push_str(&svg::line_chart(
            "Events per minute",
            "events",
            &minute_labels,
            &[("events".to_owned(), self.events_per_minute.iter().map(|&n| n as f64).collect())],
        ));
        html.push_str(&self.alerts_chart("Alerts per hour, by rule"));
        let cells: Vec<(CellIndex, f64)> =
            self.cells.iter().filter_map(|(cell, stats)| Some((cell.parse().ok()?, stats.mean))).collect();
        html.push_str(&svg::cell_map(&format!("Mean {} per cell", self.key_metric), &self.key_unit, &cells));
        let top: Vec<(String, f64)> = self.top_cells(15).into_iter().map(|(c, n)| (c, n as f64)).collect();
        html.push_str(&svg::bar_chart("Cells with the most alerts", &top));
        html.push_str("</body></html>\n");
        html
    }
}

/// One compared figure.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Delta {
    /// What.
    pub name: String,
    /// In the base.
    pub base: f64,
    /// In the variant.
    pub variant: f64,
}

impl Delta {
    /// Variant minus base.
    pub fn change(&self) -> f64 {
        self.variant - self.base
    }

    /// Relative change in %, when the base is not zero.
    pub fn percent(&self) -> Option<f64> {
        (self.base != 0.0).then(|| 100.0 * self.change() / self.base)
    }
}

/// A base run against a variant run: KPIs, alerts by rule and by cell.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Comparison {
    /// Base scenario name.
    pub base: String,
    /// Variant scenario name.
    pub variant: String,
    /// KPIs.
    pub kpis: Vec<Delta>,
    /// Alerts by rule.
    pub alerts_by_rule: Vec<Delta>,
    /// Alerts by (rule, cell), largest changes first (at most 25).
    pub alerts_by_cell: Vec<Delta>,
    #[serde(skip)]
    reports: Option<Box<(Report, Report)>>,
}

impl Comparison {
    /// Compares two reports.
    pub fn new(base: &Report, variant: &Report) -> Self {
        let kpi =
            |name: &str, f: fn(&Report) -> f64| Delta { name: name.to_owned(), base: f(base), variant: f(variant) };
        let kpis = vec![
            kpi("events", |r| r.events as f64),
            kpi("assets", |r| r.assets as f64),
            kpi("alerts", |r| r.alerts_total as f64),
            kpi("congestion cell-minutes", |r| r.kpis.congestion_minutes),
            kpi("pm25 exceedance cell-hours", |r| r.kpis.pm25_exceedance_hours),
            kpi("offline asset-minutes", |r| r.kpis.offline_minutes),
            kpi("quality-check failures", |r| r.kpis.quality_failures as f64),
            kpi("traffic incidents", |r| r.kpis.traffic_incidents as f64),
            kpi("utility outages", |r| r.kpis.outages as f64),
        ];
        let rules: std::collections::BTreeSet<&String> =
            base.alerts_by_rule.keys().chain(variant.alerts_by_rule.keys()).collect();
        let alerts_by_rule = rules
            .into_iter()
            .map(|rule| Delta {
                name: rule.clone(),
                base: base.alerts_by_rule.get(rule).copied().unwrap_or(0) as f64,
                variant: variant.alerts_by_rule.get(rule).copied().unwrap_or(0) as f64,
            })
            .collect();
        let mut cells: BTreeMap<String, (f64, f64)> = BTreeMap::new();
        for (side, report) in [(0, base), (1, variant)] {
            for (rule, by_cell) in &report.alerts_by_rule_and_cell {
                for (cell, count) in by_cell {
                    let entry = cells.entry(format!("{rule} @ {cell}")).or_default();
                    if side == 0 { entry.0 += *count as f64 } else { entry.1 += *count as f64 }
                }
            }
        }
        let mut alerts_by_cell: Vec<Delta> =
            cells.into_iter().map(|(name, (b, v))| Delta { name, base: b, variant: v }).collect();
        alerts_by_cell.sort_by(|a, b| b.change().abs().total_cmp(&a.change().abs()).then_with(|| a.name.cmp(&b.name)));
        alerts_by_cell.truncate(25);
        Comparison {
            base: base.scenario.clone(),
            variant: variant.scenario.clone(),
            kpis,
            alerts_by_rule,
            alerts_by_cell,
            reports: Some(Box::new((base.clone(), variant.clone()))),
        }
    }

    fn table(title: &str, rows: &[Delta]) -> String {
        let mut out = format!("{title:<34} {:>12} {:>12} {:>12} {:>9}\n", "base", "variant", "change", "%");
        for row in rows {
            let percent = row.percent().map_or_else(|| "-".to_owned(), |p| format!("{p:+.1}"));
            let _ = writeln!(
                out,
                "{:<34} {:>12} {:>12} {:>+12} {:>9}",
                row.name,
                trim(row.base),
                trim(row.variant),
                trim(row.change()),
                percent
            );
        }
        out
    }

    /// The tables as text (for the terminal).
    pub fn to_text(&self) -> String {
        format!(
            "{} (base) vs {} (variant)\n\n{}\n{}\n{}",
            self.base,
            self.variant,
            Self::table("KPI", &self.kpis),
            Self::table("alerts by rule", &self.alerts_by_rule),
            Self::table("alerts by rule @ cell (largest changes)", &self.alerts_by_cell)
        )
    }

    /// JSON (deterministic).
    ///
    /// # Panics
    /// Never: plain data.
    pub fn to_json(&self) -> String {
        serde_json::to_string_pretty(self).expect("a comparison serializes") + "\n"
    }

    /// HTML with the tables and side-by-side plots.
    pub fn to_html(&self) -> String {
        let mut html = format!(
            "<!doctype html><html><head><meta charset=\"utf-8\"><title>citytwin compare</title>\
             <style>body{{font-family:sans-serif;max-width:1560px;margin:2em auto;color:#222}}\
             table{{border-collapse:collapse;margin-bottom:1em}}td,th{{border:1px solid #ccc;padding:3px 8px;text-align:right}}\
             th{{background:#f4f4f4}}td:first-child,th:first-child{{text-align:left}}.side{{display:flex;gap:20px}}</style></head>\
             <body><h1>{} vs {}</h1>",
            svg::escape(&self.base),
            svg::escape(&self.variant)
        );
        for (title, rows) in [
            ("KPIs", &self.kpis),
            ("Alerts by rule", &self.alerts_by_rule),
            ("Alerts by rule and cell", &self.alerts_by_cell),
        ] {
            let _ = write!(
                html,
                "<h2>{title}</h2><table><tr><th></th><th>base</th><th>variant</th><th>change</th><th>%</th></tr>"
            );
            for row in rows {
                let percent = row.percent().map_or_else(|| "-".to_owned(), |p| format!("{p:+.1}"));
                let _ = write!(
                    html,
                    "<tr><td>{}</td><td>{}</td><td>{}</td><td>{:+}</td><td>{percent}</td></tr>",
                    svg::escape(&row.name),
                    trim(row.base),
                    trim(row.variant),
                    trim(row.change())
                );
            }
            html.push_str("</table>");
        }
        if let Some(reports) = &self.reports {
            let (base, variant) = (&reports.0, &reports.1);
            html.push_str("<h2>Alerts per hour</h2><div class=\"side\">");
            for report in [base, variant] {
                html.push_str(&report.alerts_chart(&report.scenario));
            }
            html.push_str("</div><h2>Key metric per cell</h2><div class=\"side\">");
            for report in [base, variant] {
                let cells: Vec<(CellIndex, f64)> =
                    report.cells.iter().filter_map(|(cell, stats)| Some((cell.parse().ok()?, stats.mean))).collect();
                html.push_str(&svg::cell_map(
                    &format!("{}: mean {}", report.scenario, report.key_metric),
                    &report.key_unit,
                    &cells,
                ));
            }
            html.push_str("</div>");
        }
        html.push_str("</body></html>\n");
        html
    }
}

fn trim(value: f64) -> f64 {
    (value * 10.0).round() / 10.0
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use citytwin_core::event::{AlertTriggered, Severity};

    use super::*;

    #[test]
    fn alerts_and_events_are_counted_and_the_json_round_trips() {
        let scenario = crate::scenario::parse(
            Path::new("t.toml"),
            r#"
[city]
name = "R"
seed = 3
start = "2025-01-15T00:00:00Z"
duration = "2h"
area = { center = [40.75, -73.98], radius_km = 1.0 }
"#,
        )
        .unwrap();
        let mut builder = ReportBuilder::new(&scenario, BTreeMap::from([("congestion".to_owned(), 5.0)]));
        let cell: CellIndex = "882a100d25fffff".parse().unwrap();
        let alert = |minute: i64| {
            Event::new(
                format!("a{minute}"),
                "/t",
                AlertTriggered {
                    alert_id: format!("a{minute}"),
                    rule_id: "congestion".into(),
                    severity: Severity::Major,
                    asset_id: None,
                    cell: Some(cell),
                    threshold: None,
                    actual_value: None,
                    values: BTreeMap::new(),
                    actions: Vec::new(),
                    message: None,
                },
            )
            .with_time(Timestamp::from_secs(1_736_899_200 + minute * 60))
        };
        builder.observe_alert(&alert(10));
        builder.observe_alert(&alert(70));
        builder.observe_alert(&alert(75));
        let report = builder.finish("abc".into(), 0, Truth { offline_ns: 90 * 60_000_000_000, ..Truth::default() });
        assert_eq!(report.alerts_total, 3);
        assert_eq!(report.alerts_per_hour["congestion"], vec![1, 2]);
        assert_eq!(report.kpis.congestion_minutes, 15.0);
        assert_eq!(report.kpis.offline_minutes, 90.0);
        assert_eq!(report.top_cells(5), vec![(cell.to_string(), 3)]);
        assert_eq!(report.events_per_minute.len(), 120);
        let back: Report = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(back, report);
        let html = report.to_html("fast");
        assert!(html.contains("<svg") && html.contains("congestion"));

        let mut variant = report.clone();
        variant.scenario = "V".into();
        variant.kpis.congestion_minutes = 30.0;
        *variant.alerts_by_rule.get_mut("congestion").unwrap() = 6;
        variant.alerts_by_rule.insert("pm25_hourly".into(), 2);
        let comparison = Comparison::new(&report, &variant);
        let congestion = comparison.kpis.iter().find(|d| d.name == "congestion cell-minutes").unwrap();
        assert_eq!((congestion.base, congestion.variant, congestion.percent()), (15.0, 30.0, Some(100.0)));
        let rules: Vec<(&str, f64, f64)> =
            comparison.alerts_by_rule.iter().map(|d| (d.name.as_str(), d.base, d.variant)).collect();
        assert_eq!(rules, [("congestion", 3.0, 6.0), ("pm25_hourly", 0.0, 2.0)]);
        let text = comparison.to_text();
        assert!(text.contains("R (base) vs V (variant)") && text.contains("+100.0"), "{text}");
        assert!(comparison.to_html().matches("<svg").count() >= 4);
    }
}
