//! CEP tests: data-driven fixtures (`fixtures/*.txt`: rules + events → expected outputs),
//! a property test against a naive recompute-from-scratch reference, rule-file validation,
//! and bounded state.
//!
//! Fixture format, three sections:
//!
//! ```text
//! --- rules
//! [[rules]] ... (TOML)
//! --- events
//! place A 40.7128,-74.0060          a named location; cells render as @A
//! 00:00:10 metric a1 pm25=40 at=A   metric.recorded (optional id=, corr=)
//! 00:00:20 incident at=A            traffic.incident_reported
//! 00:00:30 battery a1 12            asset.battery_low with battery_pct 12
//! 00:00:40 online a1                asset.online (a heartbeat)
//! 00:00:50 created a1 traffic_counter
//! watermark 00:10:00                advance the watermark explicitly
//! --- expect
//! window <rule> <key> [start, end) <final|early|update> count=N name=value ...
//! alert <rule> <severity> <key> at <time> values{...} causes=... [corr=...] [actions=...]
//! late <rule> <event id> t=<time> wm=<time>
//! ```
//!
//! Times are offsets from 2025-01-15T00:00:00Z. Every fixture also checks that state drains
//! to zero once the watermark passes everything. `UPDATE_FIXTURES=1` rewrites the expect
//! sections (review the diff: it is the test).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::Duration;

use h3o::Resolution;

use super::*;
use crate::event::{AssetCreated, AssetOnline, BatteryLow, Location, MetricRecorded, TrafficIncidentReported, Unit};

const BASE_SECS: i64 = 1_736_899_200; // 2025-01-15T00:00:00Z

fn parse_time(text: &str) -> Timestamp {
    let (hms, millis) = text.split_once('.').unwrap_or((text, "0"));
    let parts: Vec<i64> = hms.split(':').map(|p| p.parse().unwrap_or_else(|_| panic!("bad time {text}"))).collect();
    let secs = match parts.as_slice() {
        [h, m, s] => h * 3600 + m * 60 + s,
        [m, s] => m * 60 + s,
        _ => panic!("bad time {text}"),
    };
    Timestamp::from_millis((BASE_SECS + secs) * 1000 + millis.parse::<i64>().unwrap())
}

fn show_time(t: Timestamp) -> String {
    let offset_ms = t.as_millis() - BASE_SECS * 1000;
    let (secs, ms) = (offset_ms.div_euclid(1000), offset_ms.rem_euclid(1000));
    let sign = if secs < 0 { "-" } else { "" };
    let secs = secs.abs();
    let base = format!("{sign}{:02}:{:02}:{:02}", secs / 3600, secs / 60 % 60, secs % 60);
    if ms == 0 { base } else { format!("{base}.{ms:03}") }
}

enum Step {
    Event(Box<Event>),
    Watermark(Timestamp),
}

struct Fixture {
    rules: String,
    steps: Vec<Step>,
    places: Vec<(String, Location)>,
    expect: String,
}

fn parse_fixture(text: &str) -> Fixture {
    let section = |name: &str| {
        let start =
            text.find(&format!("--- {name}\n")).unwrap_or_else(|| panic!("missing --- {name}")) + name.len() + 5;
        let end = text[start..].find("\n--- ").map_or(text.len(), |e| start + e + 1);
        text[start..end].to_owned()
    };
    let mut places: Vec<(String, Location)> = Vec::new();
    let mut steps = Vec::new();
    for (n, line) in section("events").lines().enumerate() {
        let line = line.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let words: Vec<&str> = line.split_whitespace().collect();
        if words[0] == "place" {
            let (lat, lng) = words[2].split_once(',').unwrap();
            places.push((words[1].to_owned(), Location::new(lat.parse().unwrap(), lng.parse().unwrap())));
            continue;
        }
        if words[0] == "watermark" {
            steps.push(Step::Watermark(parse_time(words[1])));
            continue;
        }
        let time = parse_time(words[0]);
        let mut options: BTreeMap<&str, &str> = BTreeMap::new();
        let mut positional = Vec::new();
        for word in &words[2..] {
            match word.split_once('=') {
                Some((k, v)) if ["id", "corr", "at"].contains(&k) => {
                    options.insert(k, v);
                }
                _ => positional.push(*word),
            }
        }
        let location = options
            .get("at")
            .map(|name| places.iter().find(|(p, _)| p == name).unwrap_or_else(|| panic!("unknown place {name}")).1);
        let id = options.get("id").map_or_else(|| format!("e{}", n + 1), |id| (*id).to_owned());
        let mut event = match words[1] {
            "metric" => {
                let (metric, value) = positional[1].split_once('=').unwrap();
                Event::new(
                    &id,
                    "/fixture",
                    MetricRecorded {
                        asset_id: positional[0].into(),
                        metric_type: metric.into(),
                        value: value.parse().unwrap(),
                        unit: Unit::from("1"),
                        location,
                    },
                )
            }
            "incident" => Event::new(
                &id,
                "/fixture",
                TrafficIncidentReported {
                    incident_id: id.clone(),
                    kind: "accident".into(),
                    location: location.expect("incidents need at="),
                    severity: Severity::Major,
                    expected_duration_s: None,
                    description: None,
                },
            ),
            "battery" => Event::new(
                &id,
                "/fixture",
                BatteryLow {
                    asset_id: positional[0].to_owned(),
                    battery_pct: positional[1].parse().unwrap(),
                    threshold_pct: None,
                },
            ),
            "online" => Event::new(&id, "/fixture", AssetOnline { asset_id: positional[0].to_owned(), location }),
            "created" => Event::new(
                &id,
                "/fixture",
                AssetCreated {
                    asset_id: positional[0].to_owned(),
                    asset_type: positional[1].to_owned(),
                    name: None,
                    location,
                    reporting_interval_s: None,
                    attributes: BTreeMap::new(),
                },
            ),
            other => panic!("line {}: unknown event kind {other}", n + 1),
        }
        .with_time(time);
        if let Some(corr) = options.get("corr") {
            event = event.with_correlation(*corr);
        }
        steps.push(Step::Event(Box::new(event.with_derived_cell(Resolution::Ten))));
    }
    Fixture { rules: section("rules"), steps, places, expect: section("expect") }
}

fn render(outputs: &[Output], places: &[(String, Location)]) -> String {
    let show_key = |key: &Key| {
        let mut text = key.to_string();
        if let Some(cell) = key.cell()
            && let Some((name, _)) = places.iter().find(|(_, loc)| loc.cell(cell.resolution()) == Some(cell))
        {
            text = text.replace(&cell.to_string(), &format!("@{name}"));
        }
        text
    };
    let mut out = String::new();
    for output in outputs {
        match output {
            Output::Window(w) => {
                let emission = match w.emission {
                    Emission::Early => "early",
                    Emission::Final => "final",
                    Emission::Update => "update",
                };
                write!(
                    out,
                    "window {} {} [{}, {}) {emission} count={}",
                    w.rule_id,
                    show_key(&w.key),
                    show_time(w.start),
                    show_time(w.end),
                    w.count
                )
                .unwrap();
                for (name, value) in &w.values {
                    write!(out, " {name}={}", round(*value)).unwrap();
                }
            }
            Output::Alert(a) => {
                let values: Vec<String> = a.values.iter().map(|(k, v)| format!("{k}={}", round(*v))).collect();
                write!(
                    out,
                    "alert {} {} {} at {} values{{{}}} causes={}",
                    a.rule_id,
                    a.severity,
                    show_key(&a.key),
                    show_time(a.time),
                    values.join(", "),
                    a.causes.join(",")
                )
                .unwrap();
                if let Some(corr) = &a.correlation {
                    write!(out, " corr={corr}").unwrap();
                }
                if !a.actions.is_empty() {
                    write!(out, " actions={}", a.actions.join(",")).unwrap();
                }
            }
            Output::Late(l) => {
                write!(out, "late {} {} t={} wm={}", l.rule_id, l.event_id, show_time(l.time), show_time(l.watermark))
                    .unwrap()
            }
            Output::Untimed { event_id } => write!(out, "untimed {event_id}").unwrap(),
        }
        out.push('\n');
    }
    out
}

/// Rounds for display so fixtures read naturally (sketch values are approximate).
fn round(value: f64) -> String {
    let rounded = (value * 1000.0).round() / 1000.0;
    format!("{rounded}")
}

fn run_fixture(name: &str) {
    let path = format!("{}/src/cep/fixtures/{name}.txt", env!("CARGO_MANIFEST_DIR"));
    let text = std::fs::read_to_string(&path).unwrap();
    let fixture = parse_fixture(&text);
    let rules_text: String = fixture
        .rules
        .lines()
        .map(|line| match line.strip_prefix("include ") {
            Some(file) => std::fs::read_to_string(format!("{}/../{file}", env!("CARGO_MANIFEST_DIR"))).unwrap() + "\n",
            None => format!("{line}\n"),
        })
        .collect();
    let rules = parse_rules(&rules_text).unwrap_or_else(|e| panic!("{name}: rules do not parse:\n{e}"));
    let config = EngineConfig { max_out_of_orderness: Duration::from_secs(10), ..EngineConfig::default() };
    let mut engine = Engine::new(rules, config);
    // Explicit watermark steps appear in the output, so fixtures show what a watermark fired.
    let mut found = String::new();
    for step in &fixture.steps {
        let mut outputs = Vec::new();
        match step {
            Step::Event(event) => engine.process(event, &mut outputs),
            Step::Watermark(to) => {
                engine.advance_watermark(*to, &mut outputs);
                found.push_str(&format!("watermark {}\n", show_time(*to)));
            }
        }
        found.push_str(&render(&outputs, &fixture.places));
    }
    if std::env::var("UPDATE_FIXTURES").is_ok() {
        let start = text.find("--- expect\n").unwrap() + "--- expect\n".len();
        std::fs::write(&path, format!("{}{found}", &text[..start])).unwrap();
    } else {
        assert_eq!(found.trim(), fixture.expect.trim(), "{name}: outputs differ (left: found, right: expected)");
    }
    let mut rest = Vec::new();
    engine.advance_watermark(Timestamp::MAX, &mut rest);
    assert_eq!(engine.state_size(), 0, "{name}: state must drain once the watermark passes everything: {engine:?}");
}

macro_rules! fixtures {
    ($($name:ident),* $(,)?) => {
        $(
            #[test]
            fn $name() {
                run_fixture(stringify!($name));
            }
        )*
    };
}

fixtures!(
    tumbling_avg_per_asset,
    sliding_windows,
    session_windows_merge,
    lateness_and_late_events,
    early_emission,
    grouping_by_cell_and_type,
    percentiles,
    congestion,
    sequence_within,
    sequence_strict_contiguity,
    sequence_skip_till_any_match,
    negation_after_step,
    negation_at_window_edges,
    single_step_and_cooldown,
    absence_rearmed_by_every_event,
);

mod reference {
    //! A deliberately naive reference: recompute every window and every match from scratch
    //! over the whole input, and compare with the incremental engine on random streams with
    //! out-of-order (and some late) events.

    use std::collections::BTreeMap;

    use proptest::prelude::*;

    use super::*;

    const BOUND_S: i64 = 10;

    #[derive(Debug, Clone)]
    struct Input {
        asset: usize,
        time: i64,
        value: f64,
    }

    fn stream() -> impl Strategy<Value = Vec<Input>> {
        proptest::collection::vec((0..4usize, 0..40i64, 0..100u32), 1..120).prop_map(|raw| {
            // A rising clock with jitter of up to ±15 s around it: mostly within the 10 s
            // bound, sometimes late.
            let mut clock = 0i64;
            raw.into_iter()
                .map(|(asset, step, value)| {
                    clock += step % 8;
                    let jitter = (step % 31) - 15;
                    Input { asset, time: (clock + jitter).max(0), value: f64::from(value) }
                })
                .collect()
        })
    }

    fn events(inputs: &[Input]) -> Vec<Event> {
        inputs
            .iter()
            .enumerate()
            .map(|(i, input)| {
                Event::new(
                    format!("e{i}"),
                    "/prop",
                    MetricRecorded {
                        asset_id: crate::event::eco_format!("a{}", input.asset),
                        metric_type: "x".into(),
                        value: input.value,
                        unit: Unit::from("1"),
                        location: None,
                    },
                )
                .with_time(Timestamp::from_secs(BASE_SECS + input.time))
            })
            .collect()
    }

    /// The watermark before each input (None before the first).
    fn watermarks_before(inputs: &[Input]) -> Vec<Option<i64>> {
        let mut wm: Option<i64> = None;
        inputs
            .iter()
            .map(|input| {
                let before = wm;
                let candidate = input.time - BOUND_S;
                wm = Some(wm.map_or(candidate, |w| w.max(candidate)));
                before
            })
            .collect()
    }

    fn run_engine(rules: &str, events: &[Event]) -> Vec<Output> {
        let config =
            EngineConfig { max_out_of_orderness: Duration::from_secs(BOUND_S as u64), ..EngineConfig::default() };
        let mut engine = Engine::new(parse_rules(rules).unwrap(), config);
        let mut out = Vec::new();
        for event in events {
            engine.process(event, &mut out);
        }
        engine.advance_watermark(Timestamp::MAX, &mut out);
        assert_eq!(engine.state_size(), 0, "state drains");
        out
    }

    type WindowRow = (String, i64, i64, u64, Vec<(String, u64)>);

    /// Every window's (key, start, end, count, value bits) and the late event ids.
    fn engine_windows(outputs: &[Output]) -> (Vec<WindowRow>, Vec<String>) {
        let mut windows = Vec::new();
        let mut late = Vec::new();
        for output in outputs {
            match output {
                Output::Window(w) => windows.push((
                    w.key.to_string(),
                    (w.start.as_secs() - BASE_SECS),
                    (w.end.as_secs() - BASE_SECS),
                    w.count,
                    w.values.iter().map(|(n, v)| (n.clone(), v.to_bits())).collect(),
                )),
                Output::Late(l) => late.push(l.event_id.clone()),
                other => panic!("unexpected output {other:?}"),
            }
        }
        windows.sort();
        late.sort();
        (windows, late)
    }

    fn reference_windows(inputs: &[Input], size: i64, slide: i64) -> (Vec<WindowRow>, Vec<String>) {
        let watermarks = watermarks_before(inputs);
        // (asset, start) -> values in arrival order
        let mut windows: BTreeMap<(usize, i64), Vec<f64>> = BTreeMap::new();
        let mut late = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            let last_start = input.time.div_euclid(slide) * slide;
            let mut was_late = false;
            for k in 0..size / slide {
                let start = last_start - k * slide;
                if watermarks[i].is_some_and(|wm| start + size <= wm) {
                    was_late = true;
                } else {
                    windows.entry((input.asset, start)).or_default().push(input.value);
                }
            }
            if was_late {
                late.push(format!("e{i}"));
            }
        }
        let mut rows: Vec<WindowRow> = windows
            .into_iter()
            .map(|((asset, start), values)| {
                // Folded in arrival order, as the engine does, so floats match bit for bit.
                let sum = values.iter().fold(0.0, |acc, v| acc + v);
                let min = values.iter().copied().fold(f64::INFINITY, f64::min);
                let max = values.iter().copied().fold(f64::NEG_INFINITY, f64::max);
                let n = values.len() as u64;
                let aggregates = vec![
                    ("count(x)".to_owned(), (n as f64).to_bits()),
                    ("sum(x)".to_owned(), sum.to_bits()),
                    ("avg(x)".to_owned(), (sum / n as f64).to_bits()),
                    ("min(x)".to_owned(), min.to_bits()),
                    ("max(x)".to_owned(), max.to_bits()),
                ];
                (format!("asset=a{asset}"), start, start + size, n, aggregates)
            })
            .collect();
        rows.sort();
        late.sort();
        (rows, late)
    }

    /// Non-late inputs in the order pattern rules see them: by (time, arrival).
    fn in_event_time_order(inputs: &[Input]) -> (Vec<(usize, &Input)>, Vec<String>) {
        let watermarks = watermarks_before(inputs);
        let mut late = Vec::new();
        let mut kept: Vec<(usize, &Input)> = Vec::new();
        for (i, input) in inputs.iter().enumerate() {
            if watermarks[i].is_some_and(|wm| input.time < wm) {
                late.push(format!("e{i}"));
            } else {
                kept.push((i, input));
            }
        }
        kept.sort_by_key(|(i, input)| (input.time, *i));
        late.sort();
        (kept, late)
    }

    type AlertRow = (String, i64, Vec<String>);

    fn engine_alerts(outputs: &[Output]) -> (Vec<AlertRow>, Vec<String>) {
        let mut alerts = Vec::new();
        let mut late = Vec::new();
        for output in outputs {
            match output {
                Output::Alert(a) => alerts.push((a.key.to_string(), a.time.as_secs() - BASE_SECS, a.causes.clone())),
                Output::Late(l) => late.push(l.event_id.clone()),
                other => panic!("unexpected output {other:?}"),
            }
        }
        alerts.sort();
        late.sort();
        (alerts, late)
    }

    proptest! {
        #![proptest_config(ProptestConfig { cases: 200, ..ProptestConfig::default() })]

        #[test]
        fn tumbling_matches_reference(inputs in stream()) {
            let rules = r#"[[rules]]
id = "w"
group_by = ["asset"]
window = { kind = "tumbling", size = "30s" }
aggregates = [{ metric = "x", functions = ["count", "sum", "avg", "min", "max"] }]"#;
            let found = engine_windows(&run_engine(rules, &events(&inputs)));
            prop_assert_eq!(found, reference_windows(&inputs, 30, 30));
        }

        #[test]
        fn sliding_matches_reference(inputs in stream()) {
            let rules = r#"[[rules]]
id = "w"
group_by = ["asset"]
window = { kind = "sliding", size = "40s", slide = "10s" }
aggregates = [{ metric = "x", functions = ["count", "sum", "avg", "min", "max"] }]"#;
            let found = engine_windows(&run_engine(rules, &events(&inputs)));
            prop_assert_eq!(found, reference_windows(&inputs, 40, 10));
        }

        #[test]
        fn sequence_matches_reference(inputs in stream()) {
            let rules = r#"[[rules]]
id = "s"
group_by = ["asset"]
pattern = { sequence = [{ metric = "x", op = ">", value = 70 }, { metric = "x", op = "<", value = 20 }], within = "30s" }"#;
            let found = engine_alerts(&run_engine(rules, &events(&inputs)));
            let (ordered, late) = in_event_time_order(&inputs);
            let is_a = |v: f64| v > 70.0;
            let is_b = |v: f64| v < 20.0;
            let mut alerts = Vec::new();
            for (pos, (i, a)) in ordered.iter().enumerate() {
                if !is_a(a.value) {
                    continue;
                }
                let completion = ordered[pos + 1..].iter().find(|(_, b)| b.asset == a.asset && is_b(b.value));
                if let Some((j, b)) = completion
                    && b.time < a.time + 30
                {
                    alerts.push((format!("asset=a{}", a.asset), b.time, vec![format!("e{i}"), format!("e{j}")]));
                }
            }
            alerts.sort();
            // Events matching neither step are not reported late (they are irrelevant).
            let relevant_late: Vec<String> = late.into_iter().filter(|id| {
                let v = inputs[id[1..].parse::<usize>().unwrap()].value;
                is_a(v) || is_b(v)
            }).collect();
            prop_assert_eq!(found, (alerts, relevant_late));
        }

        #[test]
        fn negation_matches_reference(inputs in stream()) {
            let rules = r#"[[rules]]
id = "n"
group_by = ["asset"]
pattern = { sequence = [{ metric = "x", op = ">", value = 60 }], absent = { metric = "x", op = "<", value = 30, within = "20s" } }"#;
            let found = engine_alerts(&run_engine(rules, &events(&inputs)));
            let (ordered, late) = in_event_time_order(&inputs);
            let mut alerts = Vec::new();
            for (pos, (i, a)) in ordered.iter().enumerate() {
                if a.value <= 60.0 {
                    continue;
                }
                let deadline = a.time + 20;
                let cancelled = ordered[pos + 1..].iter().any(|(_, c)| c.asset == a.asset && c.value < 30.0 && c.time < deadline);
                if !cancelled {
                    alerts.push((format!("asset=a{}", a.asset), deadline, vec![format!("e{i}")]));
                }
            }
            alerts.sort();
            let relevant_late: Vec<String> = late.into_iter().filter(|id| {
                let v = inputs[id[1..].parse::<usize>().unwrap()].value;
                !(30.0..=60.0).contains(&v)
            }).collect();
            prop_assert_eq!(found, (alerts, relevant_late));
        }
    }
}

#[test]
fn state_returns_to_zero_after_the_stream_ends() {
    let rules = ["congestion", "air-quality", "sensor-offline", "battery-low"]
        .iter()
        .map(|name| {
            std::fs::read_to_string(format!("{}/../scenarios/rules/{name}.toml", env!("CARGO_MANIFEST_DIR"))).unwrap()
        })
        .collect::<Vec<_>>()
        .join("\n");
    let mut engine = Engine::new(parse_rules(&rules).unwrap(), EngineConfig::default());
    let mut out = Vec::new();
    for i in 0..5_000u32 {
        let location = Location::new(40.70 + f64::from(i % 50) * 0.002, -74.0 + f64::from(i % 7) * 0.002);
        let metric = ["vehicle_count", "avg_speed", "pm25"][(i % 3) as usize];
        let event = Event::new(
            format!("e{i}"),
            "/s",
            MetricRecorded {
                asset_id: crate::event::eco_format!("asset{}", i % 300),
                metric_type: metric.into(),
                value: f64::from(i % 90),
                unit: Unit::from("1"),
                location: Some(location),
            },
        )
        .with_time(Timestamp::from_secs(BASE_SECS + i64::from(i)));
        engine.process(&event, &mut out);
    }
    assert!(engine.state_size() > 0, "the stream left open windows and runs");
    engine.advance_watermark(Timestamp::from_secs(BASE_SECS + 10 * 86_400), &mut out);
    assert_eq!(engine.state_size(), 0, "{engine:?}");
    assert!(out.iter().any(|o| matches!(o, Output::Alert(a) if &*a.rule_id == "sensor_offline")));
}

#[test]
fn untimed_events_are_reported() {
    let mut engine = Engine::new(Vec::new(), EngineConfig::default());
    let mut out = Vec::new();
    engine.process(&Event::untyped("x1", "/s", "com.example.t"), &mut out);
    assert_eq!(out, [Output::Untimed { event_id: "x1".into() }]);
}

#[test]
fn alerts_become_alert_triggered_events() {
    let rules = parse_rules(
        &std::fs::read_to_string(format!("{}/../scenarios/rules/congestion.toml", env!("CARGO_MANIFEST_DIR"))).unwrap(),
    )
    .unwrap();
    let mut engine = Engine::new(rules, EngineConfig::default());
    let location = Location::new(40.7128, -74.006);
    let mut out = Vec::new();
    for (i, (metric, value)) in
        [("vehicle_count", 70.0), ("vehicle_count", 40.0), ("avg_speed", 12.0)].into_iter().enumerate()
    {
        let event = Event::new(
            format!("src-{i}"),
            "/s",
            MetricRecorded {
                asset_id: "c1".into(),
                metric_type: metric.into(),
                value,
                unit: Unit::from("1"),
                location: Some(location),
            },
        )
        .with_time(Timestamp::from_secs(BASE_SECS + i as i64))
        .with_correlation("rush-hour-1");
        engine.process(&event, &mut out);
    }
    engine.advance_watermark(Timestamp::from_secs(BASE_SECS + 600), &mut out);
    let alert = out
        .iter()
        .find_map(|o| match o {
            Output::Alert(a) => Some(a),
            _ => None,
        })
        .expect("a congestion alert");
    let event = alert.to_event();
    event.validate().unwrap();
    assert_eq!(event.kind(), Some(crate::event::EventKind::AlertTriggered));
    assert_eq!(event.ext.rare.causationid.as_deref(), Some("src-0,src-1,src-2"));
    assert_eq!(event.ext.rare.correlationid.as_deref(), Some("rush-hour-1"));
    assert_eq!(event.ext.h3cell, location.cell(Resolution::Eight));
    let Some(crate::event::Payload::AlertTriggered(payload)) = event.payload() else { panic!() };
    assert_eq!(payload.rule_id, "congestion");
    assert_eq!(payload.actions, ["update_traffic_map", "notify:traffic_management_center"]);
    assert_eq!(payload.values.get("sum(vehicle_count)"), Some(&110.0));
}

#[test]
fn rule_files_report_every_error_with_its_path() {
    let text = r#"
[[rules]]
id = "ok"
window = { kind = "tumbling", size = "5m" }
aggregates = [{ metric = "pm25", functions = ["avg"] }]

[[rules]]
id = "bad_window"
group_by = ["cell", "street"]
window = { kind = "sliding", size = "5m", slide = "2m" }
when = [{ metric = "pm25", aggregate = "median", op = "=>", value = "high" }]

[[rules]]
id = "bad_pattern"
severity = "apocalyptic"
pattern = { sequence = [{ type = "a" }, { metric = "x" }], within = "five minutes", absent = { type = "c" } }
extra = 1

[[rules]]
id = "ok"
pattern = { sequence = [{}] }
"#;
    let errors = parse_rules(text).unwrap_err();
    let found: Vec<String> = errors.0.iter().map(|e| format!("{}: {}", e.path, e.message)).collect();
    let expected = [
        "rules[1].group_by[1]: expected one of asset, asset_type, metric, cell, found \"street\"",
        "rules[1].cell_resolution: missing: grouping by cell needs a resolution",
        "rules[1].window.slide: must divide the size (size = n × slide)",
        "rules[1].when[0].aggregate: expected one of count, sum, avg, min, max, last, p50, p95, found \"median\"",
        "rules[1].when[0].op: expected one of >, >=, <, <=, ==, !=, found \"=>\"",
        "rules[1].when[0].value: expected a finite number",
        "rules[2].extra: unknown key (expected one of: id, name, severity, group_by, cell_resolution, actions, message, allowed_lateness, cooldown, neighbours, window, aggregates, when, unless, early_every, pattern)",
        "rules[2].severity: expected one of info, warning, major, critical, found \"apocalyptic\"",
        "rules[2].pattern.within: expected a duration like \"5m\", \"30s\" or \"1h30m\", found \"five minutes\"",
        "rules[2].pattern.absent.within: missing",
        "rules[3].pattern.sequence[0]: a matcher needs at least one of type, metric, or op and value",
    ];
    assert_eq!(found, expected, "\n{}", found.join("\n"));
    assert!(parse_rules("rules = 5").unwrap_err().to_string().contains("rules: expected an array of tables"));
    assert!(parse_rules("[[rules]\n").unwrap_err().to_string().starts_with("(file):"));
}

#[test]
fn shipped_rule_files_parse() {
    for name in ["congestion", "air-quality", "sensor-offline", "battery-low"] {
        let text =
            std::fs::read_to_string(format!("{}/../scenarios/rules/{name}.toml", env!("CARGO_MANIFEST_DIR"))).unwrap();
        let rules = parse_rules(&text).unwrap_or_else(|e| panic!("{name}.toml:\n{e}"));
        assert_eq!(rules.len(), 1, "{name}");
    }
}

#[test]
fn batch_readings_count_at_their_own_times() {
    use crate::event::{MetricBatchIngested, Reading};
    let rules = parse_rules(
        r#"
[[rules]]
id = "w"
window = { kind = "tumbling", size = "1m" }
aggregates = [{ metric = "x", functions = ["sum"] }]

[[rules]]
id = "p"
pattern = { sequence = [{ metric = "x", op = ">", value = 5 }, { metric = "x", op = "<", value = 5 }], within = "5m" }
"#,
    )
    .unwrap();
    let mut engine = Engine::new(rules, EngineConfig::default());
    let reading = |secs: i64, value: f64| Reading {
        metric_type: "x".into(),
        value,
        unit: Unit::from("1"),
        time: Timestamp::from_secs(BASE_SECS + secs),
    };
    // Listed out of time order: the pattern must see 10 (00:00:30) before 1 (00:01:30).
    let batch = Event::new(
        "b1",
        "/s",
        MetricBatchIngested {
            asset_id: "a".into(),
            readings: vec![reading(90, 1.0), reading(30, 10.0)],
            location: None,
        },
    )
    .with_time(Timestamp::from_secs(BASE_SECS + 90));
    let mut out = Vec::new();
    engine.process(&batch, &mut out);
    engine.advance_watermark(Timestamp::from_secs(BASE_SECS + 3600), &mut out);
    let windows: Vec<(i64, Vec<(String, f64)>)> = out
        .iter()
        .filter_map(|o| match o {
            Output::Window(w) => Some((w.start.as_secs() - BASE_SECS, w.values.clone())),
            _ => None,
        })
        .collect();
    assert_eq!(windows, [(0, vec![("sum(x)".to_owned(), 10.0)]), (60, vec![("sum(x)".to_owned(), 1.0)])]);
    let alerts: Vec<i64> = out
        .iter()
        .filter_map(|o| match o {
            Output::Alert(a) => Some(a.time.as_secs() - BASE_SECS),
            _ => None,
        })
        .collect();
    assert_eq!(alerts, [90], "A (10 at 00:00:30) then B (1 at 00:01:30)");
}
