//! The twin through its narrow interface: ingest, state, bus, dead letters, restart.

use std::time::Duration;

use citytwin_core::event::{
    AssetCommissioned, AssetCreated, Event, Location, MetricRecorded, Severity, Timestamp, TrafficIncidentReported,
    TypePattern, Unit,
};
use citytwin_core::log::{Durability, LogConfig};
use citytwin_twin::asset::logic::Lifecycle;
use citytwin_twin::bus::Filter;
use citytwin_twin::city::{IngestError, Twin, TwinConfig, shard_of};
use citytwin_twin::deadletter::dead_letters;

const T0: i64 = 1_736_899_200;

fn config(dir: &std::path::Path) -> TwinConfig {
    TwinConfig {
        shards: 3,
        log: LogConfig { durability: Durability::Always, ..LogConfig::default() },
        ..TwinConfig::new(dir)
    }
}

fn created(id: &str) -> Event {
    Event::new(
        format!("{id}-created"),
        "/inventory",
        AssetCreated {
            asset_id: id.into(),
            asset_type: "traffic_counter".into(),
            name: None,
            location: Some(Location::new(40.7128, -74.006)),
            reporting_interval_s: None,
            attributes: Default::default(),
        },
    )
    .with_time(Timestamp::from_secs(T0))
    .with_organization("org_a")
}

fn commissioned(id: &str) -> Event {
    Event::new(
        format!("{id}-commissioned"),
        "/inventory",
        AssetCommissioned { asset_id: id.into(), commissioned_by: None, firmware_version: None },
    )
    .with_time(Timestamp::from_secs(T0 + 1))
}

fn reading(id: &str, n: u32, value: f64) -> Event {
    Event::new(
        format!("{id}-r{n}"),
        "/sensors",
        MetricRecorded {
            asset_id: id.into(),
            metric_type: "vehicle_count".into(),
            value,
            unit: Unit::from("{vehicles}"),
            location: Some(Location::new(40.7128, -74.006)),
        },
    )
    .with_time(Timestamp::from_secs(T0 + 60 + i64::from(n)))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ingest_routes_persists_publishes_and_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let twin = Twin::start(config(dir.path())).await.unwrap();
    let mut bus = twin.subscribe(Filter::default());
    let mut alerts_only =
        twin.subscribe(Filter { types: vec![TypePattern::new("com.smartcities.traffic.*")], ..Filter::default() });
    let assets = ["c1", "c2", "c3", "c4", "c5"];
    assert!(
        assets.iter().map(|a| shard_of(a, 3)).collect::<std::collections::HashSet<_>>().len() > 1,
        "assets spread over shards"
    );
    for asset in assets {
        twin.ingest(created(asset)).await.unwrap();
        twin.ingest(commissioned(asset)).await.unwrap();
        let events = twin.ingest(reading(asset, 1, 12.0)).await.unwrap();
        assert_eq!(events.len(), 2, "reading + asset.online");
    }
    // Events about no asset go to the city stream, and to subscribers.
    let incident = Event::new(
        "i1",
        "/traffic",
        TrafficIncidentReported {
            incident_id: "i1".into(),
            kind: "accident".into(),
            location: Location::new(40.7128, -74.006),
            severity: Severity::Major,
            expected_duration_s: None,
            description: None,
        },
    )
    .with_time(Timestamp::from_secs(T0 + 90));
    twin.ingest(incident).await.unwrap();
    let mut seen = Vec::new();
    while seen.len() < 21 {
        let committed = tokio::time::timeout(Duration::from_secs(20), bus.recv()).await.expect("published").unwrap();
        seen.push((committed.position, committed.event.id.clone()));
    }
    seen.sort();
    assert_eq!(
        seen.iter().map(|s| s.0).collect::<Vec<_>>(),
        (0..21).collect::<Vec<_>>(),
        "every event, with its position"
    );
    assert_eq!(seen.last().map(|s| s.1.as_str()), Some("i1"));
    let incident = tokio::time::timeout(Duration::from_secs(20), alerts_only.recv()).await.unwrap().unwrap();
    assert_eq!(incident.event.id, "i1", "the filtered subscription skipped the asset events");
    let before = twin.asset_state("c3").await.unwrap();
    assert_eq!((before.status, before.metrics["vehicle_count"].last), (Lifecycle::Online, 12.0));
    twin.shutdown().await.unwrap();
    // A restart: nothing of the first twin holds its log any more (subscriptions read it).
    drop((bus, alerts_only));

    let twin = Twin::start(config(dir.path())).await.unwrap();
    assert_eq!(twin.asset_state("c3").await.unwrap(), before, "rebuilt from the log after a restart");
    assert_eq!(twin.log().next_position(), 21);
    twin.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_and_refused_events_get_a_reason_and_go_to_the_dead_letter_queue() {
    let dir = tempfile::tempdir().unwrap();
    let twin = Twin::start(config(dir.path())).await.unwrap();
    let mut invalid = reading("c1", 1, 1.0);
    invalid.source = "not a uri".into();
    match twin.ingest(invalid).await {
        Err(IngestError::Invalid(problems)) => assert_eq!(problems.to_string(), "source is not a URI-reference"),
        other => panic!("expected an invalid-event error, got {other:?}"),
    }
    let refused = twin.ingest(reading("ghost", 1, 1.0)).await.unwrap_err();
    assert_eq!(refused.to_string(), "unknown asset \"ghost\": it was never created");
    let letters = dead_letters(twin.log()).unwrap();
    let reasons: Vec<(&str, &str)> = letters.iter().map(|l| (l.reason.as_str(), l.message.as_str())).collect();
    assert_eq!(
        reasons,
        [
            ("invalid_format", "source is not a URI-reference"),
            ("rejected", "unknown asset \"ghost\": it was never created")
        ]
    );
    assert_eq!(letters[1].original.as_ref().map(|e| e.id.as_str()), Some("ghost-r1"));
    // The twin keeps running.
    twin.ingest(created("c1")).await.unwrap();
    twin.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn only_active_assets_stay_in_memory() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    config.asset.idle_timeout = Duration::from_millis(100);
    let twin = Twin::start(config).await.unwrap();
    let mut shard_events = twin.shard_events();
    for i in 0..20 {
        twin.ingest(created(&format!("a{i}"))).await.unwrap();
    }
    // All twenty passivate once idle.
    let mut passivated = 0;
    tokio::time::timeout(Duration::from_secs(20), async {
        while passivated < 20 {
            if let citytwin_twin::shard::ShardEvent::Passivated(_) = shard_events.recv().await.unwrap() {
                passivated += 1;
            }
        }
    })
    .await
    .expect("every idle asset passivates");
    assert_eq!(twin.live_assets().await.unwrap(), 0);
    assert_eq!(twin.asset_state("a7").await.unwrap().status, Lifecycle::Created, "read from its snapshot");
    assert_eq!(twin.live_assets().await.unwrap(), 0, "a query does not wake a passivated asset");
    twin.ingest(commissioned("a7")).await.unwrap();
    assert_eq!(twin.live_assets().await.unwrap(), 1, "a command does");
    assert_eq!(twin.asset_state("a7").await.unwrap().status, Lifecycle::Commissioned);
    twin.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letters_are_reprocessed_with_backoff_and_marked() {
    use citytwin_twin::deadletter::{DeadLetterStatus, RetryPolicy};
    let dir = tempfile::tempdir().unwrap();
    let twin = Twin::start(config(dir.path())).await.unwrap();
    // Readings that arrive before their asset exists are refused and dead-lettered.
    assert!(twin.ingest(reading("late", 1, 5.0)).await.is_err());
    assert!(twin.ingest(reading("ghost", 1, 5.0)).await.is_err());
    twin.ingest(created("late")).await.unwrap();
    twin.ingest(commissioned("late")).await.unwrap();
    let policy =
        RetryPolicy { max_attempts: 3, base_delay: Duration::from_millis(1), max_delay: Duration::from_millis(4) };
    assert_eq!(
        (policy.delay(0), policy.delay(1), policy.delay(2), policy.delay(5)),
        (Duration::ZERO, Duration::from_millis(1), Duration::from_millis(2), Duration::from_millis(4))
    );
    let report = twin.reprocess_dead_letters(policy).await.unwrap();
    assert_eq!((report.resolved, report.exhausted, report.attempts), (1, 1, 1 + 3));
    let statuses: Vec<(String, DeadLetterStatus)> =
        dead_letters(twin.log()).unwrap().into_iter().map(|l| (l.original.unwrap().id.to_string(), l.status)).collect();
    assert_eq!(
        statuses,
        [("late-r1".to_owned(), DeadLetterStatus::Resolved), ("ghost-r1".to_owned(), DeadLetterStatus::Exhausted)]
    );
    assert_eq!(twin.asset_state("late").await.unwrap().metrics["vehicle_count"].last, 5.0);
    // Nothing pending: a second run retries nothing and creates no new dead letters.
    assert_eq!(twin.reprocess_dead_letters(policy).await.unwrap().attempts, 0);
    assert_eq!(dead_letters(twin.log()).unwrap().len(), 2);
    twin.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn overload_sheds_telemetry_visibly_and_makes_everything_else_wait() {
    use citytwin_twin::deadletter::dead_letters;
    let dir = tempfile::tempdir().unwrap();
    let twin = Twin::start(TwinConfig { max_in_flight: 1, ..config(dir.path()) }).await.unwrap();
    for asset in ["c1", "c2"] {
        twin.ingest(created(asset)).await.unwrap();
        twin.ingest(commissioned(asset)).await.unwrap();
    }
    // 50 readings offered at once through one slot: the first takes it, the rest are shed.
    let offered: Vec<_> = (0..50).map(|n| twin.ingest(reading("c1", n, 1.0))).collect();
    let results = futures_join_all(offered).await;
    let shed = results.iter().filter(|r| matches!(r, Err(IngestError::Overloaded { .. }))).count();
    let accepted = results.iter().filter(|r| r.is_ok()).count();
    assert_eq!(accepted + shed, 50, "every offered event is either accepted or visibly shed");
    assert!(shed >= 1, "one slot cannot take 50 at once");
    assert_eq!(twin.stats().shed as usize, shed);
    let letters = dead_letters(twin.log()).unwrap();
    assert_eq!(letters.iter().filter(|l| l.reason == "shed").count(), shed, "each shed event is dead-lettered");
    // At-least-once events never shed: they wait for the slot.
    let lifecycle: Vec<_> = ["c3", "c4", "c5"].iter().map(|a| twin.ingest(created(a))).collect();
    assert!(futures_join_all(lifecycle).await.iter().all(Result::is_ok));
    twin.shutdown().await.unwrap();
}

/// Polls every future in one task (so they contend for the twin's slots at the same time).
async fn futures_join_all<F: std::future::Future>(futures: Vec<F>) -> Vec<F::Output> {
    let mut futures: Vec<std::pin::Pin<Box<F>>> = futures.into_iter().map(Box::pin).collect();
    let mut outputs: Vec<Option<F::Output>> = futures.iter().map(|_| None).collect();
    std::future::poll_fn(|cx| {
        let mut pending = false;
        for (future, output) in futures.iter_mut().zip(outputs.iter_mut()) {
            if output.is_none() {
                match future.as_mut().poll(cx) {
                    std::task::Poll::Ready(value) => *output = Some(value),
                    std::task::Poll::Pending => pending = true,
                }
            }
        }
        if pending { std::task::Poll::Pending } else { std::task::Poll::Ready(()) }
    })
    .await;
    outputs.into_iter().map(|o| o.expect("every future finished")).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_ingest_answers_each_event_in_order() {
    let dir = tempfile::tempdir().unwrap();
    let twin = Twin::start(config(dir.path())).await.unwrap();
    let mut invalid = reading("c1", 9, 1.0);
    invalid.source = "not a uri".into();
    let incident = Event::new(
        "i1",
        "/traffic",
        TrafficIncidentReported {
            incident_id: "i1".into(),
            kind: "roadwork".into(),
            location: Location::new(40.7128, -74.006),
            severity: Severity::Info,
            expected_duration_s: None,
            description: None,
        },
    )
    .with_time(Timestamp::from_secs(T0 + 5));
    let batch = vec![
        created("c1"),
        created("c2"),
        commissioned("c1"),
        reading("c1", 1, 10.0),
        reading("c1", 2, 20.0),
        invalid,
        reading("c2", 1, 5.0), // c2 is not commissioned: refused
        incident,
        commissioned("c2"),
        reading("c2", 2, 7.0),
    ];
    let results = twin.ingest_batch(batch).await;
    let summary: Vec<String> = results
        .iter()
        .map(|r| match r {
            Ok(appended) => format!("ok:{appended}"),
            Err(IngestError::Invalid(_)) => "invalid".into(),
            Err(IngestError::Refused(_)) => "refused".into(),
            Err(other) => format!("{other}"),
        })
        .collect();
    assert_eq!(summary, ["ok:1", "ok:1", "ok:1", "ok:2", "ok:1", "invalid", "refused", "ok:1", "ok:1", "ok:2"]);
    let c1 = twin.asset_state("c1").await.unwrap();
    assert_eq!((c1.metrics["vehicle_count"].count, c1.metrics["vehicle_count"].last), (2, 20.0));
    assert_eq!(twin.asset_state("c2").await.unwrap().metrics["vehicle_count"].last, 7.0);
    let reasons: Vec<String> = dead_letters(twin.log()).unwrap().into_iter().map(|l| l.reason).collect();
    assert_eq!(reasons, ["invalid_format", "rejected"]);
    let stats = twin.stats();
    assert_eq!((stats.accepted, stats.invalid, stats.rejected), (8, 1, 1));
    twin.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_event_is_lost_or_doubled_while_assets_passivate_under_load() {
    let dir = tempfile::tempdir().unwrap();
    let mut config = config(dir.path());
    // An idle timeout of zero: every idle check (each 5 ms) passivates the asset, busy or not,
    // so ingest constantly races with passivation and rehydration.
    config.asset.idle_timeout = Duration::ZERO;
    let twin = std::sync::Arc::new(Twin::start(config).await.unwrap());
    let mut shard_events = twin.shard_events();
    for asset in ["p1", "p2"] {
        twin.ingest(created(asset)).await.unwrap();
        twin.ingest(commissioned(asset)).await.unwrap();
    }
    let mut tasks = Vec::new();
    for t in 0..8u32 {
        let twin = std::sync::Arc::clone(&twin);
        tasks.push(tokio::spawn(async move {
            for n in 0..200u32 {
                let asset = if (t + n) % 2 == 0 { "p1" } else { "p2" };
                twin.ingest(reading(asset, t * 1000 + n, 1.0)).await.unwrap();
                if n % 7 == 0 {
                    tokio::task::yield_now().await;
                }
            }
        }));
    }
    for task in tasks {
        task.await.unwrap();
    }
    let total: u64 = ["p1", "p2"].iter().map(|a| twin.log().stream_seq(&format!("asset:{a}"))).sum();
    let p1 = twin.asset_state("p1").await.unwrap();
    let p2 = twin.asset_state("p2").await.unwrap();
    let readings = p1.metrics["vehicle_count"].count + p2.metrics["vehicle_count"].count;
    assert_eq!(readings, 8 * 200, "every acknowledged reading applied exactly once");
    // 2 lifecycle events each, the readings, and one asset.online each.
    assert_eq!(total, 2 * 2 + 8 * 200 + 2);
    let mut passivations = 0;
    while let Ok(event) = shard_events.try_recv() {
        passivations += u32::from(matches!(event, citytwin_twin::shard::ShardEvent::Passivated(_)));
    }
    assert!(passivations > 0, "the test must actually race with passivation");
    std::sync::Arc::into_inner(twin).unwrap().shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_refused_group_append_fails_its_batch_and_the_asset_is_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let twin = Twin::start(config(dir.path())).await.unwrap();
    let batch = vec![created("g1"), commissioned("g1"), reading("g1", 1, 10.0), created("g2"), commissioned("g2")];
    assert!(twin.ingest_batch(batch).await.iter().all(Result::is_ok));
    // A write behind the live actor's back: its next expected sequence no longer holds, so
    // the writer refuses that actor's next batch (and only that one).
    let foreign = reading("g1", 2, 99.0);
    twin.log().append("asset:g1", citytwin_core::log::Expected::Any, &foreign).unwrap();
    let results = twin.ingest_batch(vec![reading("g1", 3, 30.0), reading("g2", 1, 5.0)]).await;
    match &results[0] {
        Err(IngestError::Refused(error)) => {
            assert!(error.to_string().contains("is at sequence 5, expected 4"), "a precise storage error, got: {error}")
        }
        other => panic!("the batch against a stale sequence must be refused, got {other:?}"),
    }
    assert!(matches!(results[1], Ok(n) if n >= 1), "the other asset's command is committed: {:?}", results[1]);
    // The refused asset restarted from the log: it holds the foreign reading, not the refused one,
    // and takes new readings again.
    let g1 = twin.asset_state("g1").await.unwrap();
    assert_eq!((g1.metrics["vehicle_count"].count, g1.metrics["vehicle_count"].last), (2, 99.0));
    let again = twin.ingest_batch(vec![reading("g1", 4, 40.0)]).await;
    assert!(matches!(again[0], Ok(n) if n >= 1), "the rebuilt asset accepts readings: {:?}", again[0]);
    let g1 = twin.asset_state("g1").await.unwrap();
    assert_eq!((g1.metrics["vehicle_count"].count, g1.metrics["vehicle_count"].last), (3, 40.0));
    twin.shutdown().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redelivered_event_is_acknowledged_once_stored_once() {
    let dir = tempfile::tempdir().unwrap();
    let twin = Twin::start(config(dir.path())).await.unwrap();
    assert!(twin.ingest_batch(vec![created("d1"), commissioned("d1")]).await.iter().all(Result::is_ok));
    let first = twin.ingest_batch(vec![reading("d1", 1, 10.0)]).await;
    assert!(matches!(first[0], Ok(n) if n >= 1), "{first:?}");
    let stored = twin.log().read_stream("asset:d1", 1).unwrap().len();
    // The broker redelivers it (twice in one batch, once alone): accepted, nothing appended.
    let again = twin.ingest_batch(vec![reading("d1", 1, 10.0), reading("d1", 1, 10.0)]).await;
    assert!(again.iter().all(|r| matches!(r, Ok(0))), "{again:?}");
    assert!(matches!(twin.ingest(reading("d1", 1, 10.0)).await, Ok(ref events) if events.is_empty()));
    assert_eq!(twin.log().read_stream("asset:d1", 1).unwrap().len(), stored);
    assert_eq!(twin.asset_state("d1").await.unwrap().metrics["vehicle_count"].count, 1);
    twin.shutdown().await.unwrap();
}
