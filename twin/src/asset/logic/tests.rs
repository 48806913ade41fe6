//! Given / when / then tests of the asset logic, without actors.

use citytwin_core::event::{
    AssetCommissioned, AssetCreated, AssetDecommissioned, AssetDeleted, AssetMaintenance, MetricRecorded,
};

use super::*;

const T0: i64 = 1_736_899_200;

fn at(secs: i64) -> Timestamp {
    Timestamp::from_secs(T0 + secs)
}

fn created(id: &str) -> Event {
    Event::new(
        format!("{id}-created"),
        "/inventory",
        AssetCreated {
            asset_id: id.into(),
            asset_type: "air_quality_sensor".into(),
            name: None,
            location: Some(Location::new(40.7128, -74.006)),
            reporting_interval_s: Some(60),
            attributes: BTreeMap::new(),
        },
    )
    .with_time(at(0))
    .with_organization("org_a")
}

fn commissioned(id: &str, secs: i64) -> Event {
    Event::new(
        format!("{id}-commissioned"),
        "/inventory",
        AssetCommissioned { asset_id: id.into(), commissioned_by: None, firmware_version: Some("1.0".into()) },
    )
    .with_time(at(secs))
}

fn reading(id: &str, n: u32, metric: &str, value: f64, secs: i64) -> Event {
    Event::new(
        format!("{id}-r{n}"),
        "/sensors",
        MetricRecorded {
            asset_id: id.into(),
            metric_type: metric.into(),
            value,
            unit: Unit::from("ug/m3"),
            location: None,
        },
    )
    .with_time(at(secs))
}

/// Given `history`, when `command`, then the result; the state is the fold of the history.
fn given(history: &[Event]) -> AssetState {
    let mut state = AssetState { asset_id: "s1".into(), ..AssetState::default() };
    for event in history {
        apply(&mut state, event);
    }
    state
}

fn kinds(events: &[Event]) -> Vec<&str> {
    events.iter().map(|e| e.ty.as_str().trim_start_matches("com.smartcities.")).collect()
}

#[test]
fn lifecycle_follows_the_allowed_transitions() {
    let state = given(&[]);
    assert_eq!(decide(&state, &observe(reading("s1", 1, "pm25", 3.0, 5))), Err(Rejection::UnknownAsset("s1".into())));
    let events = decide(&state, &observe(created("s1"))).unwrap();
    assert_eq!(kinds(&events), ["asset.created"]);

    let state = given(&events);
    assert_eq!(state.status, Lifecycle::Created);
    assert_eq!(
        decide(&state, &observe(reading("s1", 1, "pm25", 3.0, 5))).unwrap_err().to_string(),
        "asset \"s1\" is created: com.smartcities.asset.metric_recorded is not allowed"
    );
    // Another creation is refused; the same one again is a redelivery (nothing to store).
    let mut another = created("s1");
    another.id = "s1-created-again".into();
    assert_eq!(decide(&state, &observe(another)), Err(Rejection::AlreadyExists("s1".into())));
    assert_eq!(decide(&state, &observe(created("s1"))), Ok(Vec::new()));

    let state = given(&[created("s1"), commissioned("s1", 10)]);
    assert_eq!(state.status, Lifecycle::Commissioned);
    assert_eq!(state.firmware.as_deref(), Some("1.0"));
    // Maintenance, then back; decommissioning; deletion only after it.
    let maintenance = |phase| {
        Event::new(
            format!("m-{phase:?}"),
            "/ops",
            AssetMaintenance { asset_id: "s1".into(), reason: "calibration".into(), phase, until: None },
        )
        .with_time(at(20))
    };
    assert!(decide(&state, &observe(maintenance(MaintenancePhase::Completed))).is_err());
    let state = given(&[created("s1"), commissioned("s1", 10), maintenance(MaintenancePhase::Started)]);
    assert_eq!(state.status, Lifecycle::Maintenance);
    let delete = Event::new("d", "/inventory", AssetDeleted { asset_id: "s1".into(), reason: None }).with_time(at(30));
    assert!(matches!(decide(&state, &observe(delete.clone())), Err(Rejection::InvalidTransition { .. })));
    let decommission =
        Event::new("x", "/inventory", AssetDecommissioned { asset_id: "s1".into(), reason: None }).with_time(at(30));
    let state = given(&[created("s1"), commissioned("s1", 10), maintenance(MaintenancePhase::Started), decommission]);
    assert_eq!(state.status, Lifecycle::Decommissioned);
    assert!(decide(&state, &observe(reading("s1", 1, "pm25", 3.0, 40))).is_err(), "no readings after decommissioning");
    assert_eq!(kinds(&decide(&state, &observe(delete)).unwrap()), ["asset.deleted"]);
}

#[test]
fn first_reading_brings_the_asset_online_and_stats_accumulate() {
    let history = [created("s1"), commissioned("s1", 10)];
    let state = given(&history);
    let events = decide(&state, &observe(reading("s1", 1, "pm25", 30.0, 60))).unwrap();
    assert_eq!(kinds(&events), ["asset.metric_recorded", "asset.online"]);
    assert_eq!(events[1].ext.rare.causationid.as_deref(), Some("s1-r1"));
    let mut all = history.to_vec();
    all.extend(events);
    all.push(reading("s1", 2, "pm25", 10.0, 120));
    all.push(reading("s1", 3, "pm25", 20.0, 90)); // out of order: not the last value
    let state = given(&all);
    assert_eq!(state.status, Lifecycle::Online);
    let pm25 = &state.metrics["pm25"];
    assert_eq!((pm25.count, pm25.last, pm25.min, pm25.max, pm25.mean()), (3, 10.0, 10.0, 30.0, 20.0));
    assert_eq!(state.last_seen, Some(at(120)));
    assert_eq!(state.version, 6);
}

#[test]
fn thresholds_alert_once_per_crossing() {
    let mut history = vec![created("s1"), commissioned("s1", 10)];
    let set = AssetCommand::SetThreshold {
        metric: "pm25".into(),
        threshold: Some(Threshold { above: Some(55.0), below: None, severity: Severity::Critical }),
        event_id: "cfg1".into(),
        time: at(11),
    };
    history.extend(decide(&given(&history), &set).unwrap());
    let state = given(&history);
    assert_eq!(state.thresholds["pm25"].0.above, Some(55.0));
    assert_eq!(state.thresholds["pm25"].0.severity, Severity::Critical);

    let mut run = |n: u32, value: f64| {
        let events = decide(&given(&history), &observe(reading("s1", n, "pm25", value, 60 + i64::from(n)))).unwrap();
        history.extend(events.clone());
        events
    };
    assert_eq!(kinds(&run(1, 40.0)), ["asset.metric_recorded", "asset.online"]);
    let crossing = run(2, 80.0);
    assert_eq!(kinds(&crossing), ["asset.metric_recorded", "alert.triggered"]);
    let Some(Payload::AlertTriggered(alert)) = crossing[1].payload() else { panic!() };
    assert_eq!((alert.threshold, alert.actual_value, alert.severity), (Some(55.0), Some(80.0), Severity::Critical));
    assert_eq!(kinds(&run(3, 90.0)), ["asset.metric_recorded"], "still above: no second alert");
    assert_eq!(kinds(&run(4, 30.0)), ["asset.metric_recorded"], "back within: re-armed");
    assert_eq!(kinds(&run(5, 60.0)), ["asset.metric_recorded", "alert.triggered"]);
}

#[test]
fn battery_low_is_derived_once_until_recharged() {
    let mut history = vec![created("s1"), commissioned("s1", 10), reading("s1", 0, "pm25", 1.0, 20)];
    history.push(Event::new("on", "/x", AssetOnline { asset_id: "s1".into(), location: None }).with_time(at(20)));
    let mut run = |n: u32, value: f64| {
        let events = decide(&given(&history), &observe(reading("s1", n, "battery", value, 30 + i64::from(n)))).unwrap();
        history.extend(events.clone());
        kinds(&events).iter().map(|k| (*k).to_owned()).collect::<Vec<_>>()
    };
    assert_eq!(run(1, 50.0), ["asset.metric_recorded"]);
    assert_eq!(run(2, 15.0), ["asset.metric_recorded"], "15 % is not below 15 %");
    assert_eq!(run(3, 14.5), ["asset.metric_recorded", "asset.battery_low"]);
    assert_eq!(run(4, 12.0), ["asset.metric_recorded"]);
    assert_eq!(run(5, 90.0), ["asset.metric_recorded"]);
    assert_eq!(run(6, 10.0), ["asset.metric_recorded", "asset.battery_low"]);
}

#[test]
fn heartbeat_check_takes_a_silent_asset_offline() {
    let mut history = vec![created("s1"), commissioned("s1", 10)];
    history.extend(decide(&given(&history), &observe(reading("s1", 1, "pm25", 1.0, 100))).unwrap());
    let state = given(&history);
    // Interval 60 s, grace two intervals.
    assert!(decide(&state, &AssetCommand::CheckHeartbeat { now: at(219) }).unwrap().is_empty());
    let offline = decide(&state, &AssetCommand::CheckHeartbeat { now: at(220) }).unwrap();
    assert_eq!(kinds(&offline), ["asset.offline"]);
    history.extend(offline);
    let state = given(&history);
    assert_eq!(state.status, Lifecycle::Offline);
    assert_eq!(state.last_seen, Some(at(100)), "going offline is not a sign of life");
    assert!(decide(&state, &AssetCommand::CheckHeartbeat { now: at(1000) }).unwrap().is_empty(), "already offline");
    let back = decide(&state, &observe(reading("s1", 2, "pm25", 1.0, 1000))).unwrap();
    assert_eq!(kinds(&back), ["asset.metric_recorded", "asset.online"]);
}

#[test]
fn wrong_asset_and_untimed_events_are_rejected() {
    let state = given(&[created("s1"), commissioned("s1", 10)]);
    assert_eq!(
        decide(&state, &observe(reading("s2", 1, "pm25", 1.0, 20))),
        Err(Rejection::WrongAsset { expected: "s1".into(), found: "s2".into() })
    );
    let mut untimed = reading("s1", 1, "pm25", 1.0, 20);
    untimed.time = None;
    assert_eq!(decide(&state, &observe(untimed)), Err(Rejection::Untimed("s1-r1".into())));
}

#[test]
fn state_round_trips_through_a_snapshot() {
    let mut history = vec![created("s1"), commissioned("s1", 10)];
    history.extend(decide(&given(&history), &observe(reading("s1", 1, "pm25", 42.0, 100))).unwrap());
    let state = given(&history);
    let bytes = rmp_serde::to_vec(&state).unwrap();
    let back: AssetState = rmp_serde::from_slice(&bytes).unwrap();
    assert_eq!(back, state);
}

fn observe(event: Event) -> AssetCommand {
    AssetCommand::Observe(event)
}

#[test]
fn an_event_naming_another_organization_is_refused_and_one_naming_none_is_accepted() {
    let mut create = created("s1");
    create.ext.organization = Some("acme".into());
    let state = given(&[create, commissioned("s1", 10)]);
    let mut foreign = reading("s1", 1, "pm25", 3.0, 20);
    foreign.ext.organization = Some("globex".into());
    assert_eq!(
        decide(&state, &observe(foreign)).unwrap_err().to_string(),
        "asset \"s1\" belongs to organization \"acme\", not \"globex\""
    );
    let mut own = reading("s1", 2, "pm25", 3.0, 20);
    own.ext.organization = Some("acme".into());
    assert_eq!(kinds(&decide(&state, &observe(own)).unwrap()), ["asset.metric_recorded", "asset.online"]);
    assert!(decide(&state, &observe(reading("s1", 3, "pm25", 3.0, 20))).is_ok());
}

#[test]
fn a_redelivered_observation_is_accepted_without_being_stored_again() {
    let mut history = vec![created("s1"), commissioned("s1", 10)];
    for n in 1..=3 {
        history.extend(decide(&given(&history), &observe(reading("s1", n, "pm25", 30.0, 60 + i64::from(n)))).unwrap());
    }
    let state = given(&history);
    // The same event again (same source and id): nothing to store, no alert, no rejection.
    assert_eq!(decide(&state, &observe(reading("s1", 2, "pm25", 99.0, 62))).unwrap(), Vec::<Event>::new());
    // The same id from another source is another event.
    let mut other = reading("s1", 2, "pm25", 5.0, 70);
    other.source = "/elsewhere".into();
    assert_eq!(kinds(&decide(&state, &observe(other)).unwrap()), ["asset.metric_recorded"]);
    // Only the latest RecentIds::CAPACITY identities are remembered.
    let mut long = history.clone();
    for n in 10..10 + RecentIds::CAPACITY as u32 {
        long.push(reading("s1", n, "pm25", 1.0, 100 + i64::from(n)));
    }
    let state = given(&long);
    assert!(
        !state.recent.contains(&reading("s1", 1, "pm25", 30.0, 61)),
        "forgotten after {} more",
        RecentIds::CAPACITY
    );
    assert!(state.recent.contains(&reading("s1", 10 + RecentIds::CAPACITY as u32 - 1, "pm25", 1.0, 0)));
    // A snapshot keeps them.
    let bytes = rmp_serde::to_vec(&state).unwrap();
    assert_eq!(rmp_serde::from_slice::<AssetState>(&bytes).unwrap().recent, state.recent);
}

#[test]
fn an_identity_is_fnv_1a_over_source_separator_and_id_whichever_source_came_before() {
    // The plain definition, byte by byte: snapshots keep these hashes, so they must not drift.
    let plain = |event: &Event| {
        let bytes = event.source.bytes().chain([0xff]).chain(event.id.bytes());
        bytes.fold(0xcbf2_9ce4_8422_2325u64, |h, b| (h ^ u64::from(b)).wrapping_mul(0x0000_0100_0000_01b3))
    };
    let mut events = vec![reading("s1", 1, "pm25", 1.0, 60), reading("s1", 2, "pm25", 1.0, 61)];
    let mut other = reading("s1", 3, "pm25", 1.0, 62);
    other.source = "/a/longer/source/than/the/first/one".into();
    events.push(other);
    events.push(reading("s1", 4, "pm25", 1.0, 63));
    let mut empty = reading("s1", 5, "pm25", 1.0, 64);
    empty.source = "".into();
    events.push(empty);
    for event in events.iter().chain(&events) {
        assert_eq!(RecentIds::identity(event), plain(event), "{} from {:?}", event.id, event.source);
    }
    let mut pinned = reading("s1", 6, "pm25", 1.0, 65);
    (pinned.source, pinned.id) = ("/x".into(), "r1".into());
    assert_eq!(RecentIds::identity(&pinned), 0x2542_5273_9483_8eea);
}
