//! Recovery: a restart folds the log into the assets' snapshots once, in one pass.

use citytwin_core::event::{AssetCommissioned, AssetCreated, Event, Location, MetricRecorded, Timestamp, Unit};
use citytwin_core::log::{Durability, LogConfig};
use citytwin_twin::asset::actor::asset_stream;
use citytwin_twin::asset::logic::AssetState;
use citytwin_twin::city::{Twin, TwinConfig};

const T0: i64 = 1_736_899_200;
const ASSETS: u32 = 40;

fn config(dir: &std::path::Path) -> TwinConfig {
    TwinConfig {
        shards: 3,
        log: LogConfig { durability: Durability::Always, ..LogConfig::default() },
        ..TwinConfig::new(dir)
    }
}

fn events(asset: u32, readings: std::ops::Range<u32>) -> Vec<Event> {
    let id = format!("r{asset:03}");
    let location = Location::new(60.17 + f64::from(asset) * 0.001, 24.94);
    let mut events = Vec::new();
    if readings.start == 0 {
        events.push(
            Event::new(
                format!("{id}-created"),
                "/inventory",
                AssetCreated {
                    asset_id: id.clone(),
                    asset_type: "air_quality_sensor".into(),
                    name: None,
                    location: Some(location),
                    reporting_interval_s: None,
                    attributes: Default::default(),
                },
            )
            .with_time(Timestamp::from_secs(T0)),
        );
        events.push(
            Event::new(
                format!("{id}-commissioned"),
                "/inventory",
                AssetCommissioned { asset_id: id.clone(), commissioned_by: None, firmware_version: None },
            )
            .with_time(Timestamp::from_secs(T0 + 1)),
        );
    }
    for n in readings {
        events.push(
            Event::new(
                format!("{id}-r{n}"),
                "/sensors",
                MetricRecorded {
                    asset_id: id.as_str().into(),
                    metric_type: "pm25".into(),
                    value: f64::from(asset * 100 + n),
                    unit: Unit::from("ug/m3"),
                    location: Some(location),
                },
            )
            .with_time(Timestamp::from_secs(T0 + 60 * i64::from(n + 1))),
        );
    }
    events
}

async fn states(twin: &Twin) -> Vec<AssetState> {
    let mut states = Vec::new();
    for asset in 0..ASSETS {
        states.push(twin.asset_state(&format!("r{asset:03}")).await.unwrap());
    }
    states
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_folds_the_log_into_snapshots_once_and_assets_come_back_as_they_were() {
    let dir = tempfile::tempdir().unwrap();
    let twin = Twin::start(config(dir.path())).await.unwrap();
    assert_eq!(twin.recovery().events, 0, "an empty log has nothing to fold");
    let first: Vec<Event> = (0..ASSETS).flat_map(|a| events(a, 0..12)).collect();
    assert!(twin.ingest_batch(first).await.iter().all(Result::is_ok));
    let before = states(&twin).await;
    assert!(before.iter().all(|s| s.metrics["pm25"].count == 12));
    let end = twin.log().next_position();
    twin.shutdown().await.unwrap();

    // First restart: every asset event is folded, every asset gets a current snapshot.
    let twin = Twin::start(config(dir.path())).await.unwrap();
    let recovery = twin.recovery().clone();
    // 12 readings, created, commissioned and the asset.online the first reading caused.
    assert_eq!((recovery.from, recovery.to, recovery.events), (0, end, u64::from(ASSETS) * 15));
    assert_eq!(recovery.assets, ASSETS as usize);
    for asset in 0..ASSETS {
        let stream = asset_stream(&format!("r{asset:03}"));
        let load = twin.log().load_stream(&stream).unwrap();
        assert_eq!(load.snapshot.map(|s| s.seq), Some(15), "{stream}: a snapshot at its last event");
        assert!(load.records.is_empty(), "{stream}: nothing left to replay");
    }
    assert_eq!(states(&twin).await, before, "the same states, from one read each");
    assert_eq!(twin.live_assets().await.unwrap(), 0, "and no actor woken to answer");
    // Later events: the next restart folds only those.
    let more: Vec<Event> = (0..ASSETS / 2).flat_map(|a| events(a, 12..15)).collect();
    assert!(twin.ingest_batch(more).await.iter().all(Result::is_ok));
    let before = states(&twin).await;
    let end2 = twin.log().next_position();
    twin.shutdown().await.unwrap();

    let twin = Twin::start(config(dir.path())).await.unwrap();
    let recovery = twin.recovery().clone();
    assert_eq!((recovery.from, recovery.to), (end, end2));
    assert_eq!((recovery.events, recovery.assets), (u64::from(ASSETS / 2) * 3, ASSETS as usize / 2));
    assert_eq!(states(&twin).await, before);
    twin.shutdown().await.unwrap();

    // Snapshots are caches: without them (the cursor still at the end) the assets are
    // rebuilt from their records, the same.
    for entry in std::fs::read_dir(dir.path().join("log/snapshots")).unwrap() {
        let path = entry.unwrap().path();
        if path.file_name().unwrap().to_string_lossy().starts_with("table-") {
            std::fs::remove_file(path).unwrap();
        }
    }
    let twin = Twin::start(config(dir.path())).await.unwrap();
    assert_eq!(twin.recovery().events, 0, "the cursor says everything was folded");
    assert_eq!(states(&twin).await, before, "rebuilt from the log without snapshots");
    twin.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn when_passivation_snapshots_cover_the_log_only_the_streams_behind_are_read() {
    let dir = tempfile::tempdir().unwrap();
    let mut idle = config(dir.path());
    idle.asset.idle_timeout = std::time::Duration::from_millis(50);
    let twin = Twin::start(idle).await.unwrap();
    let mut shard_events = twin.shard_events();
    let all: Vec<Event> = (0..ASSETS).flat_map(|a| events(a, 0..5)).collect();
    assert!(twin.ingest_batch(all).await.iter().all(Result::is_ok));
    // Every asset goes idle and passivates, leaving a snapshot of its state.
    let mut passivated = std::collections::HashSet::new();
    tokio::time::timeout(std::time::Duration::from_secs(20), async {
        while passivated.len() < ASSETS as usize {
            if let citytwin_twin::shard::ShardEvent::Passivated(id) = shard_events.recv().await.unwrap() {
                passivated.insert(id);
            }
        }
    })
    .await
    .expect("every idle asset passivates");
    let before = states(&twin).await;
    twin.shutdown().await.unwrap();

    // Nothing below the end is missing from the snapshots: no replay of the log at all.
    let twin = Twin::start(config(dir.path())).await.unwrap();
    let recovery = twin.recovery().clone();
    assert_eq!((recovery.replayed, recovery.events, recovery.assets), (false, 0, 0), "{recovery:?}");
    assert_eq!(states(&twin).await, before);
    // One asset takes one more reading; the twin stops with it live (no passivation snapshot).
    assert!(twin.ingest_batch(events(7, 5..6)).await.iter().all(Result::is_ok));
    let before = states(&twin).await;
    twin.shutdown().await.unwrap();

    let twin = Twin::start(config(dir.path())).await.unwrap();
    let recovery = twin.recovery().clone();
    assert_eq!((recovery.events, recovery.assets), (1, 1), "one reading of one asset was behind: {recovery:?}");
    assert_eq!(states(&twin).await, before);
    twin.shutdown().await.unwrap();
}
