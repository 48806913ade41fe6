//! Cell actors running the shipped congestion rule inside a running twin.

use std::time::Duration;

use citytwin_core::cep::parse_rules;
use citytwin_core::event::{
    AssetCommissioned, AssetCreated, Event, Location, MetricRecorded, Payload, Severity, Timestamp,
    TrafficIncidentReported, TypePattern, Unit,
};
use citytwin_core::log::{Durability, LogConfig};
use citytwin_twin::bus::Filter;
use citytwin_twin::cell::{CellConfig, cell_aggregates_at};
use citytwin_twin::city::{Twin, TwinConfig};
use h3o::Resolution;

const T0: i64 = 1_736_899_200;
const A: Location = Location::new(40.7128, -74.006);
const B: Location = Location::new(40.758, -73.9855);
const C: Location = Location::new(40.6892, -74.0445);

async fn sensor(twin: &Twin, id: &str, at: Location) {
    let created = Event::new(
        format!("{id}-created"),
        "/inventory",
        AssetCreated {
            asset_id: id.into(),
            asset_type: "traffic_counter".into(),
            name: None,
            location: Some(at),
            reporting_interval_s: None,
            attributes: Default::default(),
        },
    )
    .with_time(Timestamp::from_secs(T0 - 60));
    twin.ingest(created).await.unwrap();
    let commissioned = Event::new(
        format!("{id}-commissioned"),
        "/inventory",
        AssetCommissioned { asset_id: id.into(), commissioned_by: None, firmware_version: None },
    )
    .with_time(Timestamp::from_secs(T0 - 30));
    twin.ingest(commissioned).await.unwrap();
}

async fn reading(twin: &Twin, id: &str, metric: &str, value: f64, at: Location, secs: i64) {
    let event = Event::new(
        format!("{id}-{metric}-{secs}"),
        "/sensors",
        MetricRecorded {
            asset_id: id.into(),
            metric_type: metric.into(),
            value,
            unit: Unit::from("1"),
            location: Some(at),
        },
    )
    .with_time(Timestamp::from_secs(T0 + secs))
    .with_derived_cell(Resolution::Ten);
    twin.ingest(event).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn congestion_alerts_come_from_the_cell_actors() {
    let dir = tempfile::tempdir().unwrap();
    let rules =
        std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios/rules/congestion.toml")).unwrap();
    let cells = CellConfig::new(parse_rules(&rules).unwrap());
    let config = TwinConfig {
        shards: 2,
        log: LogConfig { durability: Durability::Never, ..LogConfig::default() },
        cells: Some(cells.clone()),
        ..TwinConfig::new(dir.path())
    };
    let twin = Twin::start(config).await.unwrap();
    let mut alerts =
        twin.subscribe(Filter { types: vec![TypePattern::new("com.smartcities.alert.*")], ..Filter::default() });
    for (id, at) in [("ca", A), ("sa", A), ("cb", B), ("sb", B), ("cc", C)] {
        sensor(&twin, id, at).await;
    }
    // A: congested. B: congested, but an incident was reported there.
    reading(&twin, "ca", "vehicle_count", 70.0, A, 10).await;
    reading(&twin, "ca", "vehicle_count", 45.0, A, 70).await;
    reading(&twin, "sa", "avg_speed", 14.0, A, 80).await;
    reading(&twin, "cb", "vehicle_count", 130.0, B, 20).await;
    reading(&twin, "sb", "avg_speed", 9.0, B, 30).await;
    let incident = Event::new(
        "incident-b",
        "/traffic",
        TrafficIncidentReported {
            incident_id: "incident-b".into(),
            kind: "accident".into(),
            location: B,
            severity: Severity::Major,
            expected_duration_s: None,
            description: None,
        },
    )
    .with_time(Timestamp::from_secs(T0 + 40))
    .with_derived_cell(Resolution::Ten);
    twin.ingest(incident).await.unwrap();
    // Event time moves on elsewhere in the city: every cell's window [00:00, 00:05) closes.
    reading(&twin, "cc", "vehicle_count", 1.0, C, 400).await;

    let alert =
        tokio::time::timeout(Duration::from_secs(20), alerts.recv()).await.expect("a congestion alert").unwrap();
    let cell_a = A.cell(Resolution::Eight).unwrap();
    assert_eq!(alert.event.ext.h3cell, Some(cell_a));
    let Some(Payload::AlertTriggered(payload)) = alert.event.payload() else { panic!("{:?}", alert.event) };
    assert_eq!(payload.rule_id, "congestion");
    assert_eq!(payload.values.get("sum(vehicle_count)"), Some(&115.0));
    assert_eq!(payload.actions, ["update_traffic_map", "notify:traffic_management_center"]);
    assert_eq!(
        alert.event.ext.rare.causationid.as_deref(),
        Some("ca-vehicle_count-10,ca-vehicle_count-70,sa-avg_speed-80")
    );

    // B closed its window too (it answers after processing the same watermark advance), and raised nothing.
    let b = twin.cell_aggregates(B.cell(Resolution::Eight).unwrap()).await.unwrap();
    assert_eq!(b.len(), 1);
    assert_eq!(b[0].values, [("sum(vehicle_count)".to_owned(), 130.0), ("avg(avg_speed)".to_owned(), 9.0)]);
    assert!(alerts.try_recv().is_none(), "no alert where an incident was reported");

    // The live aggregates equal the ones rebuilt from the log (per-cell time travel).
    let live = twin.cell_aggregates(cell_a).await.unwrap();
    let rebuilt = cell_aggregates_at(twin.log(), &cells, cell_a, Timestamp::from_secs(T0 + 400)).unwrap();
    assert_eq!(live, rebuilt);
    let earlier = cell_aggregates_at(twin.log(), &cells, cell_a, Timestamp::from_secs(T0 + 200)).unwrap();
    assert!(earlier.is_empty(), "before 00:05 the window had not closed");
    // City-level rollups: A's window is in its resolution-6 parent.
    let rollups = cells.rollups.latest("congestion", Resolution::Six);
    let (_, a_parent) = &rollups[&cell_a.parent(Resolution::Six).unwrap()];
    assert!(a_parent.values["sum(vehicle_count)"] >= 115.0);
    // The parent cell at resolution 6 holds A's results too.
    let parent =
        cell_aggregates_at(twin.log(), &cells, cell_a.parent(Resolution::Six).unwrap(), Timestamp::from_secs(T0 + 400))
            .unwrap();
    assert!(parent.iter().any(|r| r.key.cell() == Some(cell_a)));
    twin.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn neighbourhood_rules_see_the_k_ring_keyed_by_the_centre_cell() {
    let dir = tempfile::tempdir().unwrap();
    let rules = parse_rules(
        r#"
[[rules]]
id = "busy_area"
group_by = ["cell"]
cell_resolution = 8
neighbours = 1
window = { kind = "tumbling", size = "5m" }
when = [{ metric = "vehicle_count", aggregate = "sum", op = ">", value = 100 }]
"#,
    )
    .unwrap();
    let config = TwinConfig {
        shards: 2,
        log: LogConfig { durability: Durability::Never, ..LogConfig::default() },
        cells: Some(CellConfig::new(rules)),
        ..TwinConfig::new(dir.path())
    };
    let twin = Twin::start(config).await.unwrap();
    let mut alerts =
        twin.subscribe(Filter { types: vec![TypePattern::new("com.smartcities.alert.*")], ..Filter::default() });
    let cell_a = A.cell(Resolution::Eight).unwrap();
    let cell_n = cell_a.grid_disk::<Vec<_>>(1).into_iter().find(|c| *c != cell_a).unwrap();
    let n_centre: h3o::LatLng = cell_n.into();
    let n = Location::new(n_centre.lat(), n_centre.lng());
    for (id, at) in [("ca", A), ("cn", n), ("cc", C)] {
        sensor(&twin, id, at).await;
    }
    // 60 vehicles in each of two adjacent cells: each alone is under 100, their rings are not.
    reading(&twin, "ca", "vehicle_count", 60.0, A, 10).await;
    reading(&twin, "cn", "vehicle_count", 60.0, n, 20).await;
    reading(&twin, "cc", "vehicle_count", 1.0, C, 400).await;
    let mut centres = Vec::new();
    while centres.len() < 4 {
        let alert =
            tokio::time::timeout(Duration::from_secs(20), alerts.recv()).await.expect("neighbourhood alerts").unwrap();
        centres.push(alert.event.ext.h3cell.unwrap());
    }
    // The cells whose 1-ring holds both: A, N and the two cells next to both.
    let expected: Vec<_> = {
        let ring_a: Vec<_> = cell_a.grid_disk(1);
        let ring_n: Vec<_> = cell_n.grid_disk(1);
        let mut both: Vec<_> = ring_a.into_iter().filter(|c| ring_n.contains(c)).collect();
        both.sort();
        both
    };
    centres.sort();
    assert_eq!(centres, expected);
    assert!(centres.contains(&cell_a) && centres.contains(&cell_n));
    twin.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn asset_rules_follow_a_moving_asset_across_cells_and_flush_ends_a_run() {
    let dir = tempfile::tempdir().unwrap();
    let rules = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/../scenarios/rules/sensor-offline.toml"))
        .unwrap();
    let config = TwinConfig {
        shards: 2,
        log: LogConfig { durability: Durability::Never, ..LogConfig::default() },
        cells: Some(CellConfig::new(parse_rules(&rules).unwrap())),
        ..TwinConfig::new(dir.path())
    };
    let twin = Twin::start(config).await.unwrap();
    sensor(&twin, "bus1", A).await;
    // A bus reporting every minute while it shuttles between two distant cells: silent in
    // each cell for longer than 15 minutes at a time, never silent as an asset.
    for minute in 0..40 {
        let at = if (minute / 20) % 2 == 0 { A } else { B };
        reading(&twin, "bus1", "passengers", 12.0, at, minute * 60).await;
    }
    let alerts = |twin: &Twin| {
        twin.log()
            .replay(citytwin_core::log::ReplayFilter {
                types: vec![TypePattern::new("com.smartcities.alert.triggered")],
                ..Default::default()
            })
            .map(|r| r.unwrap().stream)
            .collect::<Vec<String>>()
    };
    // Up to 10 minutes after the last reading: nothing (per-cell evaluation would have fired
    // in cell A twenty minutes ago).
    twin.flush_cells(Timestamp::from_secs(T0 + 39 * 60 + 600)).await.unwrap();
    assert_eq!(alerts(&twin), Vec::<String>::new(), "a moving asset that keeps reporting is not offline");
    // Past 15 minutes of silence: exactly one alert, from the asset partition's stream.
    twin.flush_cells(Timestamp::from_secs(T0 + 39 * 60 + 16 * 60)).await.unwrap();
    let streams = alerts(&twin);
    assert_eq!(streams.len(), 1, "{streams:?}");
    assert!(streams[0].starts_with("rules:assets:"), "{streams:?}");
    twin.shutdown().await.unwrap();
}
