//! The live read models equal the ones rebuilt from the log.

use citytwin_core::event::{
    AlertAcknowledged, AssetCommissioned, AssetCreated, Event, Location, MetricRecorded, Timestamp, Unit,
};
use citytwin_core::log::{Durability, LogConfig};
use citytwin_twin::asset::logic::Lifecycle;
use citytwin_twin::city::{Twin, TwinConfig};
use citytwin_twin::read::{LiveReadModels, ReadModels};
use h3o::Resolution;

const T0: i64 = 1_736_899_200;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn live_projections_equal_projections_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let config = TwinConfig {
        shards: 3,
        log: LogConfig { durability: Durability::Never, ..LogConfig::default() },
        ..TwinConfig::new(dir.path())
    };
    let twin = Twin::start(config).await.unwrap();
    let mut live = LiveReadModels::start(twin.bus(), Resolution::Eight);
    let types = ["air_quality_sensor", "traffic_counter", "streetlight"];
    let mut committed = 0;
    for i in 0..30u32 {
        let id = format!("a{i}");
        let location = Location::new(40.70 + f64::from(i % 6) * 0.01, -74.0);
        let created = Event::new(
            format!("{id}-c"),
            "/inv",
            AssetCreated {
                asset_id: id.clone(),
                asset_type: types[(i % 3) as usize].into(),
                name: None,
                location: Some(location),
                reporting_interval_s: None,
                attributes: Default::default(),
            },
        )
        .with_time(Timestamp::from_secs(T0))
        .with_organization(if i % 2 == 0 { "org_a" } else { "org_b" });
        committed += twin.ingest(created).await.unwrap().len();
        if i % 5 == 4 {
            continue; // some stay merely created
        }
        let commissioned = Event::new(
            format!("{id}-m"),
            "/inv",
            AssetCommissioned { asset_id: id.clone(), commissioned_by: None, firmware_version: None },
        )
        .with_time(Timestamp::from_secs(T0 + 1));
        committed += twin.ingest(commissioned).await.unwrap().len();
        if i % 3 == 0 {
            continue; // some never report
        }
        for n in 0..3 {
            let reading = Event::new(
                format!("{id}-r{n}"),
                "/s",
                MetricRecorded {
                    asset_id: id.as_str().into(),
                    metric_type: "pm25".into(),
                    value: f64::from(i * 10 + n),
                    unit: Unit::from("ug/m3"),
                    location: Some(location),
                },
            )
            .with_time(Timestamp::from_secs(T0 + 60 * i64::from(n + 1)));
            committed += twin.ingest(reading).await.unwrap().len();
        }
    }
    live.wait_applied(committed as u64).await.unwrap();
    let live = live.snapshot();
    let rebuilt = ReadModels::rebuild(twin.log(), Resolution::Eight).unwrap();
    assert_eq!(live, rebuilt, "the live projection equals the one rebuilt from the log");
    let inventory = live.inventory();
    assert_eq!(inventory.by_type.values().sum::<u64>(), 30);
    assert_eq!(inventory.by_type["traffic_counter"], 10);
    assert_eq!(inventory.by_status["created"], 6, "a4, a9, ... were never commissioned");
    assert_eq!(inventory.by_status["online"], 16, "every commissioned asset that reported is online");
    assert_eq!(live.assets["a7"].last_values["pm25"].0, 72.0);
    assert_eq!(live.assets["a7"].status, Lifecycle::Online);
    assert_eq!(live.cells.values().map(|c| c.readings).sum::<u64>(), 16 * 3);
    twin.shutdown().await.unwrap();
}

#[test]
fn acknowledged_alerts_close_even_when_the_acknowledgement_comes_first() {
    let alert = |id: &str| {
        Event::new(
            id,
            "/cep/x",
            citytwin_core::event::AlertTriggered {
                alert_id: id.into(),
                rule_id: "x".into(),
                severity: citytwin_core::event::Severity::Major,
                asset_id: None,
                cell: None,
                threshold: None,
                actual_value: None,
                values: Default::default(),
                actions: vec![],
                message: None,
            },
        )
        .with_time(Timestamp::from_secs(T0))
    };
    let ack = |id: &str| {
        Event::new(
            format!("ack-{id}"),
            "/ops",
            AlertAcknowledged { alert_id: id.into(), acknowledged_by: "ops".into(), note: None },
        )
        .with_time(Timestamp::from_secs(T0 + 1))
    };
    let mut models = ReadModels::new(Resolution::Eight);
    for event in [alert("x1"), alert("x2"), ack("x1"), ack("x3"), alert("x3")] {
        models.apply(&event);
    }
    assert_eq!(models.open_alerts.keys().collect::<Vec<_>>(), ["x2"]);
}
