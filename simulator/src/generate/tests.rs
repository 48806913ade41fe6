use std::path::Path;

use citytwin_core::event::{EventKind, Payload};

use super::*;
use crate::StreamDigest;
use crate::scenario::{Zone, parse};

/// Seeds are fixed and printed: a failure names the scenario seed to replay.
const SEED: u64 = 20_261_128;

fn scenario(extra: &str) -> Arc<Scenario> {
    let text = format!(
        r#"
[city]
name = "Generator test"
seed = {SEED}
start = "2025-01-13T00:00:00Z"
duration = "1d"
area = {{ center = [40.75, -73.98], radius_km = 1.5 }}

[[populations]]
type = "traffic_counter"
count = 300
id_prefix = "tc"
interval = "5m"
jitter = "30s"
faults = {{ offline_per_day = 1.0, offline_duration = "1h", out_of_range_per_day = 1.0, stuck_per_day = 1.0, stuck_duration = "2h" }}
battery = {{ start_pct = [10, 20], drain_pct_per_day = 5 }}

[[populations.metrics]]
name = "vehicle_count"
unit = "{{count}}"
distribution = {{ kind = "poisson", lambda = 10 }}
profile = "traffic"
range = [0, 1000]
decimals = 0

[[populations.metrics]]
name = "avg_speed"
unit = "km/h"
distribution = {{ kind = "normal", mean = 40, sd = 4 }}
profile = "traffic_speed"
noise = 0.05
range = [0, 130]

[[populations]]
type = "streetlight"
count = 200
id_prefix = "sl"
interval = "15m"

[[populations.metrics]]
name = "power"
unit = "W"
distribution = {{ kind = "constant", value = 70 }}

[[incidents]]
kind = "traffic"
per_day = 5
duration = "30m"

[[incidents]]
kind = "dashboard_view"
per_day = 20
{extra}
"#
    );
    Arc::new(parse(Path::new("test.toml"), &text).unwrap_or_else(|e| panic!("seed {SEED}: {e}")))
}

/// Runs a whole scenario in windows of `step`, returning every sample and the digest.
fn run(scenario: &Arc<Scenario>, threads: usize, step_s: i64) -> (Vec<Sample>, Generator, String) {
    let plan = Arc::new(Plan::new(Arc::clone(scenario)));
    let mut generator = Generator::new(plan, threads);
    let mut samples = Vec::new();
    let mut digest = StreamDigest::default();
    while !generator.finished() {
        let until = Timestamp::from_nanos(generator.now().as_nanos() + step_s * 1_000_000_000);
        let first = samples.len();
        generator.window(until, &mut samples);
        for sample in &samples[first..] {
            digest.add(&generator.plan().event(sample));
        }
    }
    (samples, generator, digest.hex())
}

#[test]
fn the_stream_is_identical_for_any_thread_count_and_window_size() {
    let scenario = scenario("");
    let (one, gen_one, digest_one) = run(&scenario, 1, 600);
    let (four, gen_four, digest_four) = run(&scenario, 4, 3600);
    assert!(one.len() > 100_000, "seed {SEED}: only {} samples", one.len());
    assert_eq!(one.len(), four.len(), "seed {SEED}");
    assert!(one == four, "seed {SEED}: streams differ");
    assert_eq!(digest_one, digest_four, "seed {SEED}");
    assert_eq!(gen_one.truth(), gen_four.truth(), "seed {SEED}");
    // Time order, and a different seed gives a different stream.
    assert!(one.windows(2).all(|w| (w[0].time, w[0].asset, w[0].seq) < (w[1].time, w[1].asset, w[1].seq)));
    let mut other = (*scenario).clone();
    other.seed += 1;
    let (_, _, digest_other) = run(&Arc::new(other), 2, 3600);
    assert_ne!(digest_one, digest_other, "seed {SEED}");
}

#[test]
fn the_event_maker_makes_the_plans_events_and_renews_its_source_copy() {
    let scenario = scenario("");
    let plan = Arc::new(Plan::new(Arc::clone(&scenario)));
    let mut generator = Generator::new(Arc::clone(&plan), 2);
    let mut samples = Vec::new();
    generator.window(Timestamp::from_nanos(scenario.start.as_nanos() + 3_600_000_000_000), &mut samples);
    let shared_by = EventMaker::SHARED_BY as usize;
    assert!(samples.len() > 2 * shared_by, "seed {SEED}: only {} samples in the first hour", samples.len());
    let mut maker = EventMaker::new(Arc::clone(&plan));
    let made: Vec<Event> = samples.iter().map(|sample| maker.event(sample)).collect();
    for (sample, event) in samples.iter().zip(&made) {
        assert_eq!(*event, plan.event(sample), "seed {SEED}: {sample:?}");
    }
    // Asset events share one copy of the source per `SHARED_BY`, not the plan's.
    let copies: std::collections::HashSet<*const u8> =
        made.iter().filter(|e| e.ty.kind() == Some(EventKind::MetricRecorded)).map(|e| e.source.as_ptr()).collect();
    assert!(!copies.contains(&plan.source.as_ptr()), "seed {SEED}");
    assert!(copies.len() >= made.len() / shared_by, "seed {SEED}: {} copies for {}", copies.len(), made.len());
}

#[test]
fn events_are_valid_cloudevents_and_faults_show() {
    let scenario = scenario("");
    let (samples, generator, _) = run(&scenario, 2, 3600);
    let plan = generator.plan();
    let mut kinds = std::collections::BTreeMap::<EventKind, usize>::new();
    let mut low_battery = 0;
    for sample in &samples {
        let event = plan.event(sample);
        event.validate().unwrap_or_else(|e| panic!("seed {SEED}: {e}\n{event:?}"));
        *kinds.entry(event.kind().expect("a known kind")).or_default() += 1;
        if let Some(Payload::MetricRecorded(m)) = event.payload()
            && m.metric_type == "battery"
            && m.value < 15.0
        {
            low_battery += 1;
        }
    }
    assert_eq!(kinds[&EventKind::AssetCreated], 500, "seed {SEED}");
    assert_eq!(kinds[&EventKind::AssetCommissioned], 500, "seed {SEED}");
    assert!(kinds[&EventKind::TrafficIncidentReported] >= 1, "seed {SEED}: {kinds:?}");
    assert!(kinds[&EventKind::DashboardViewed] >= 5, "seed {SEED}: {kinds:?}");
    assert!(kinds[&EventKind::MetricQualityCheckFailed] >= 100, "seed {SEED}: {kinds:?}");
    assert!(low_battery > 100, "seed {SEED}: batteries drain below 15 %");
    let truth = generator.truth();
    assert!(truth.offline_ns > 0 && truth.quality_failures > 0, "seed {SEED}: {truth:?}");
    // Counters: 288 slots a day; offline periods (one a day, an hour long) remove some.
    let readings = kinds[&EventKind::MetricRecorded];
    assert!(readings > 300 * 2 * 250 && readings < 300 * 3 * 290 + 200 * 97, "seed {SEED}: {readings}");
}

#[test]
fn traffic_follows_the_rush_hours() {
    let scenario = scenario("");
    let (samples, generator, _) = run(&scenario, 1, 3600);
    let plan = generator.plan();
    let mut per_hour = [0.0f64; 24];
    for sample in &samples {
        // (Out-of-range faults read 2010: not traffic.)
        if let What::Reading { metric: 0, value } = sample.what
            && plan.assets[sample.asset as usize].population == 0
            && value <= 1000.0
        {
            per_hour[((sample.time / 3_600_000_000_000) % 24) as usize] += value;
        }
    }
    assert!(per_hour[8] > 5.0 * per_hour[3], "seed {SEED}: {per_hour:?}");
    assert!(per_hour[18] > 5.0 * per_hour[3], "seed {SEED}: {per_hour:?}");
}

#[test]
fn interventions_scale_add_and_silence() {
    let extra = r#"
[[interventions]]
name = "heavier traffic"
from = "10:00"
to = "11:00"
effect = { kind = "scale", metric = "vehicle_count", factor = 3.0 }

[[interventions]]
name = "new counters"
from = "2025-01-13T12:00:00Z"
to = "2025-01-13T14:00:00Z"
effect = { kind = "add_assets", population = "traffic_counter", count = 50, center = [40.75, -73.98], radius_m = 300 }

[[interventions]]
name = "substation"
from = "2025-01-13T20:00:00Z"
to = "2025-01-13T21:00:00Z"
effect = { kind = "fail_substation", facility = "sub-7", center = [40.75, -73.98], radius_m = 800 }
"#;
    let base = scenario("");
    let variant = scenario(extra);
    let (base_samples, _, _) = run(&base, 2, 3600);
    let (samples, generator, _) = run(&variant, 2, 3600);
    let plan = generator.plan();
    let count_in = |samples: &[Sample], hour: i64| -> f64 {
        samples
            .iter()
            .filter(|s| s.time / 3_600_000_000_000 % 24 == hour && s.asset < 300)
            .filter_map(|s| match s.what {
                What::Reading { metric: 0, value }
                    if plan.assets[s.asset as usize].population == 0 && value <= 1000.0 =>
                {
                    Some(value)
                }
                _ => None,
            })
            .sum()
    };
    let (before, after) = (count_in(&base_samples, 10), count_in(&samples, 10));
    assert!(after > 2.5 * before && after < 3.5 * before, "seed {SEED}: {before} → {after}");
    // 50 more counters, created at noon, reporting until 14:00.
    assert_eq!(plan.assets.len(), 550);
    let added: Vec<&Sample> = samples.iter().filter(|s| s.asset >= 500 && s.what != What::City).collect();
    assert!(added.iter().all(|s| (12..14).contains(&(s.time / 3_600_000_000_000 % 24))), "seed {SEED}");
    assert_eq!(added.iter().filter(|s| s.what == What::Created).count(), 50);
    // Streetlights in the zone go offline at 20:00 and come back at 21:00, announced once.
    let offline: Vec<&Sample> = samples.iter().filter(|s| s.what == What::Offline).collect();
    let online = samples.iter().filter(|s| s.what == What::Online).count();
    assert!(!offline.is_empty(), "seed {SEED}");
    assert_eq!(offline.len(), online, "seed {SEED}");
    assert!(offline.iter().all(|s| s.time / 3_600_000_000_000 % 24 == 20), "seed {SEED}");
    let outages = plan.city_events.iter().filter(|e| e.kind() == Some(EventKind::UtilityOutageDetected)).count();
    assert_eq!(outages, 1);
}

#[test]
fn daily_windows_repeat_every_day_in_local_time() {
    let windows = occurrences(Window::Daily(8 * 3600, 10 * 3600), 0, 3 * 86_400_000_000_000, 0);
    assert_eq!(windows.len(), 3);
    assert_eq!(windows[1], (86_400_000_000_000 + 8 * 3_600_000_000_000, 86_400_000_000_000 + 10 * 3_600_000_000_000));
    // Overnight windows wrap; an offset moves them.
    let night = occurrences(Window::Daily(22 * 3600, 2 * 3600), 0, 86_400_000_000_000, 3600);
    assert_eq!(night[0].0, 21 * 3_600_000_000_000);
}

#[test]
fn the_helsinki_scenario_puts_counters_on_roads_moves_buses_and_closes_a_road() {
    let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("../scenarios/helsinki-centre.toml");
    let scenario = Arc::new(crate::scenario::load(&path).unwrap_or_else(|e| panic!("{e}")));
    let roads = scenario.roads.clone().expect("the scenario has roads");
    let plan = Arc::new(Plan::new(Arc::clone(&scenario)));
    // Counters stand on primary/secondary/tertiary roads.
    for asset in plan.assets.iter().filter(|a| a.population == 0) {
        let nearest = roads.roads.iter().map(|r| r.distance_m(asset.location)).fold(f64::MAX, f64::min);
        assert!(nearest < 1.0, "{} is {nearest} m off the road network", asset.id);
    }
    let mut generator = Generator::new(Arc::clone(&plan), 2);
    let mut samples = Vec::new();
    generator.window(scenario.end(), &mut samples);
    // Buses move: one bus's readings fall in several cells over the day.
    let bus = plan.assets.iter().position(|a| a.population == 1).unwrap() as u32;
    let cells: std::collections::BTreeSet<_> = samples
        .iter()
        .filter(|s| s.asset == bus && matches!(s.what, What::Reading { .. }))
        .filter_map(|s| plan.event(s).ext.h3cell)
        .collect();
    assert!(cells.len() >= 3, "the bus visited {} cells", cells.len());
    // Mannerheimintie's counters read no vehicles from 07:00 to 10:00 local (05:00–08:00 UTC).
    let closed = Zone::Roads(roads.matching("Mannerheimintie").into_iter().cloned().collect(), 30.0);
    let on_it: Vec<u32> = plan
        .assets
        .iter()
        .enumerate()
        .filter(|(_, a)| a.population == 0 && closed.contains(a.location))
        .map(|(i, _)| i as u32)
        .collect();
    assert!(!on_it.is_empty());
    let hour = |s: &Sample| (s.time / 3_600_000_000_000 + 2) % 24;
    let (mut during, mut after) = (0.0, 0.0);
    for s in samples.iter().filter(|s| on_it.contains(&s.asset)) {
        if let What::Reading { metric: 0, value } = s.what {
            match hour(s) {
                7..=9 => during += value,
                11..=13 => after += value,
                _ => {}
            }
        }
    }
    assert_eq!(during, 0.0);
    assert!(after > 0.0);
}

#[test]
fn the_bucketed_sort_gives_the_stream_order_of_a_full_sort() {
    // Times over a ten-minute span with many ties (whole seconds), plus a far outlier, and
    // assets/counters in any order: the order must be exactly `order_key`'s.
    let mut rng = SimRng::new(SEED, 7);
    let start = 1_736_899_200_000_000_000i64;
    let mut samples: Vec<Sample> = (0..50_000u32)
        .map(|i| Sample {
            time: start + rng.below(600) as i64 * 1_000_000_000,
            asset: rng.below(5_000) as u32,
            seq: i,
            what: What::Created,
        })
        .collect();
    samples.push(Sample { time: start + 86_400_000_000_000, asset: 3, seq: 9, what: What::Online });
    let mut expected = samples.clone();
    expected.sort_unstable_by_key(order_key);
    let mut scratch = Vec::new();
    sort_stream(&mut samples, &mut scratch);
    assert!(samples == expected, "seed {SEED}: the bucketed sort differs from the full sort");
    // Again with a scratch buffer left from a larger window.
    samples.truncate(20_000);
    let mut expected = samples.clone();
    expected.sort_unstable_by_key(order_key);
    samples.reverse();
    sort_stream(&mut samples, &mut scratch);
    assert!(samples == expected, "seed {SEED}: a reused scratch buffer changed the order");
}

#[test]
fn event_ids_read_as_the_formatted_asset_and_sequence() {
    for (asset, seq) in [("tc-000001", 0), ("aq-030755", 9), ("a", 10), ("bus_7", 1_440), ("x-y", u32::MAX)] {
        assert_eq!(event_id(asset, seq), eco_format!("{asset}-{seq}"));
    }
}
