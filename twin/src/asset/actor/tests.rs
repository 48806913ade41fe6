//! Asset actors under a shard, against a real event log in a temp dir.

use std::time::Duration;

use citytwin_core::event::{AssetCommissioned, AssetCreated, Location, MetricRecorded, Payload, Unit};
use citytwin_core::log::{Durability, LogConfig};
use ractor::rpc::CallResult;
use tokio::sync::broadcast;

use super::*;
use crate::asset::logic::Lifecycle;
use crate::deadletter::dead_letters;
use crate::shard::{Occupancy, ShardActor, ShardArgs, ShardEvent, ShardMsg};

/// Test-only fault injection: a reading of a metric named `poison*` panics inside the
/// asset's logic, as a bug triggered by one event would.
pub(crate) fn maybe_panic(command: &AssetCommand) {
    if let AssetCommand::Observe(event) = command
        && let Some(Payload::MetricRecorded(m)) = event.payload()
        && m.metric_type.starts_with("poison")
        && !m.metric_type.starts_with("poison_apply")
    {
        panic!("poison pill in {}", event.id);
    }
}

/// Test-only fault injection: applying a reading of a metric named `poison_apply*` panics,
/// as a bug in `apply` would (the state is then suspect: the actor must restart).
pub(crate) fn maybe_panic_applying(event: &Event) {
    if let Some(Payload::MetricRecorded(m)) = event.payload()
        && m.metric_type.starts_with("poison_apply")
    {
        panic!("poison pill applying {}", event.id);
    }
}

const T0: i64 = 1_736_899_200;
const WAIT: Duration = Duration::from_secs(20);

struct Twin {
    shard: ActorRef<ShardMsg>,
    events: broadcast::Receiver<ShardEvent>,
    published: crate::bus::Subscription,
    log: EventLog,
    writer: crate::writer::LogWriter,
    handle: tokio::task::JoinHandle<()>,
    /// The shard's directory of live actors (what `Twin::route` reads).
    directory: crate::shard::Directory,
}

async fn start(dir: &std::path::Path, asset: AssetConfig) -> Twin {
    start_limited(dir, asset, 0).await
}

/// A shard where only the live-actor limit passivates (the idle timeout never fires here).
async fn start_limit_only(dir: &std::path::Path, max_live: usize) -> Twin {
    let config = AssetConfig { idle_timeout: Duration::from_secs(3600), ..AssetConfig::default() };
    start_limited(dir, config, max_live).await
}

/// A shard with at most `max_live` live asset actors (0: no limit).
async fn start_limited(dir: &std::path::Path, asset: AssetConfig, max_live: usize) -> Twin {
    let log = EventLog::open(dir, LogConfig { durability: Durability::Always, ..LogConfig::default() }).unwrap();
    let (events_tx, events) = broadcast::channel(1024);
    let bus = crate::bus::Bus::new(log.clone(), 1024);
    let published = bus.subscribe(crate::bus::Filter::default());
    let directory = crate::shard::Directory::default();
    let writer = crate::writer::LogWriter::start(log.clone(), 1024, 4096, Some(bus));
    let args = ShardArgs {
        shard: 0,
        log: log.clone(),
        writer: writer.clone(),
        asset,
        max_restarts: 3,
        restart_window: Duration::from_secs(60),
        events: Some(events_tx),
        directory: Some(directory.clone()),
        max_live,
    };
    let (shard, handle) = Actor::spawn(None, ShardActor, args).await.unwrap();
    Twin { shard, events, published, log, writer, handle, directory }
}

/// Sends `events` to the shard as one batch (one group per asset, as `Twin::ingest_batch`
/// routes them) whose `i`th reading answers in `slots[i]`, and waits (bounded) for every
/// answer, in slot order.
async fn send_batch(twin: &Twin, events: Vec<Event>, slots: Vec<u32>) -> Vec<BatchReply> {
    let collector = crate::completion::Collector::new(events.len());
    let mut groups: Vec<crate::route::AssetGroup> = Vec::new();
    for (event, slot) in events.into_iter().zip(slots) {
        let asset_id = event.asset_id().unwrap();
        let at = match groups.iter().position(|g| g.asset_id == asset_id) {
            Some(at) => at,
            None => {
                let part = crate::completion::Part::empty();
                groups.push(crate::route::AssetGroup { asset_id: asset_id.into(), commands: Vec::new(), part });
                groups.len() - 1
            }
        };
        groups[at].commands.push(AssetCommand::Observe(event));
        groups[at].part.push_slot(&collector, slot);
    }
    twin.shard.cast(ShardMsg::Batch(groups)).unwrap();
    tokio::time::timeout(WAIT, collector.wait()).await.expect("every command answered").into_iter().collect()
}

/// Sends a command to an asset through its shard and waits (bounded) for the answer.
async fn command_to(shard: &ActorRef<ShardMsg>, asset: &str, command: AssetCommand) -> CommandReply {
    let asset = asset.to_owned();
    match shard.call(|reply| ShardMsg::Command(asset, Box::new(command), reply), Some(WAIT)).await.unwrap() {
        CallResult::Success(reply) => reply,
        other => panic!("no reply: {other:?}"),
    }
}

impl Twin {
    async fn command(&self, asset: &str, command: AssetCommand) -> CommandReply {
        command_to(&self.shard, asset, command).await
    }

    async fn observe(&self, event: Event) -> CommandReply {
        let asset = event.asset_id().unwrap().to_owned();
        self.command(&asset, AssetCommand::Observe(event)).await
    }

    async fn state(&self, asset: &str) -> AssetState {
        let asset = asset.to_owned();
        match self.shard.call(|reply| ShardMsg::GetState(asset, reply), Some(WAIT)).await.unwrap() {
            CallResult::Success(state) => state,
            other => panic!("no reply: {other:?}"),
        }
    }

    async fn occupancy(&self) -> Occupancy {
        match self.shard.call(ShardMsg::Occupancy, Some(WAIT)).await.unwrap() {
            CallResult::Success(occupancy) => occupancy,
            other => panic!("no reply: {other:?}"),
        }
    }

    async fn live(&self) -> usize {
        self.occupancy().await.live
    }

    /// Checks that the directory names as many actors as are live, all running: none
    /// missing (each is published once its shard message ends), none stale (passivated).
    async fn check_directory(&self) {
        // Answered after every earlier shard message, so their actors are published by now.
        let live = self.live().await;
        let directory = self.directory.read().unwrap();
        assert_eq!(directory.len(), live, "the directory names the live actors");
        for (asset, actor) in directory.iter() {
            assert_eq!(actor.get_status(), ractor::ActorStatus::Running, "{asset} is in the directory");
        }
    }

    /// Whether the shard has already sent `expected` (among the notifications not read yet).
    fn has_sent(&mut self, expected: &ShardEvent) -> bool {
        loop {
            match self.events.try_recv() {
                Ok(event) if &event == expected => return true,
                Ok(_) | Err(broadcast::error::TryRecvError::Lagged(_)) => {}
                Err(_) => return false,
            }
        }
    }

    /// Waits (bounded) for a shard notification.
    async fn expect_event(&mut self, expected: ShardEvent) {
        let found = tokio::time::timeout(WAIT, async {
            loop {
                if self.events.recv().await.unwrap() == expected {
                    return;
                }
            }
        })
        .await;
        assert!(found.is_ok(), "no {expected:?} within {WAIT:?}");
    }

    async fn stop(self) {
        self.shard.stop(None);
        self.handle.await.unwrap();
    }
}

fn created(id: &str, interval: Option<u32>) -> Event {
    Event::new(
        format!("{id}-created"),
        "/inventory",
        AssetCreated {
            asset_id: id.into(),
            asset_type: "air_quality_sensor".into(),
            name: None,
            location: Some(Location::new(40.7128, -74.006)),
            reporting_interval_s: interval,
            attributes: Default::default(),
        },
    )
    .with_time(Timestamp::from_secs(T0))
}

fn commissioned(id: &str) -> Event {
    Event::new(
        format!("{id}-commissioned"),
        "/inventory",
        AssetCommissioned { asset_id: id.into(), commissioned_by: None, firmware_version: None },
    )
    .with_time(Timestamp::from_secs(T0 + 1))
}

fn reading(id: &str, n: u32, metric: &str, value: f64, time: Timestamp) -> Event {
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
    .with_time(time)
}

/// An asset's state, after checking that each of its events is stored once.
async fn stored_once(twin: &Twin, asset: &str) -> AssetState {
    let state = twin.state(asset).await;
    assert_eq!(twin.log.stream_seq(&asset_stream(asset)), state.version, "{asset}: every event stored once");
    state
}

async fn bring_up(twin: &Twin, id: &str, interval: Option<u32>) {
    twin.observe(created(id, interval)).await.unwrap();
    twin.observe(commissioned(id)).await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commands_persist_and_the_state_survives_a_restart() {
    let dir = tempfile::tempdir().unwrap();
    let twin = start(dir.path(), AssetConfig::default()).await;
    bring_up(&twin, "s1", None).await;
    let events = twin.observe(reading("s1", 1, "pm25", 42.0, Timestamp::from_secs(T0 + 60))).await.unwrap();
    assert_eq!(events.len(), 2, "the reading and the derived asset.online");
    let before = twin.state("s1").await;
    assert_eq!((before.status, before.version), (Lifecycle::Online, 4));
    assert_eq!(twin.log.stream_seq(&asset_stream("s1")), 4);
    twin.stop().await;

    let twin = start(dir.path(), AssetConfig::default()).await;
    assert_eq!(twin.state("s1").await, before, "rebuilt from the log");
    twin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejections_reply_and_the_actor_keeps_running() {
    let dir = tempfile::tempdir().unwrap();
    let mut twin = start(dir.path(), AssetConfig::default()).await;
    let early = twin.observe(reading("s1", 1, "pm25", 1.0, Timestamp::from_secs(T0))).await;
    assert_eq!(early, Err(CommandError::Rejected(Rejection::UnknownAsset("s1".into()))));
    twin.expect_event(ShardEvent::Started("s1".into())).await;
    bring_up(&twin, "s1", None).await;
    assert_eq!(twin.state("s1").await.status, Lifecycle::Commissioned);
    assert_eq!(twin.live().await, 1, "the same actor served the rejection and what followed");
    assert!(twin.events.try_recv().is_err(), "no restart, no second start");
    assert_eq!(twin.log.stream_seq(&asset_stream("s1")), 2, "the rejected reading was not stored");
    twin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_assets_passivate_and_rehydrate_on_the_next_message() {
    let dir = tempfile::tempdir().unwrap();
    let config = AssetConfig { idle_timeout: Duration::from_millis(100), ..AssetConfig::default() };
    let mut twin = start(dir.path(), config).await;
    bring_up(&twin, "s1", None).await;
    twin.observe(reading("s1", 1, "pm25", 7.0, Timestamp::from_secs(T0 + 60))).await.unwrap();
    let before = twin.state("s1").await;
    twin.expect_event(ShardEvent::Started("s1".into())).await;
    twin.expect_event(ShardEvent::Passivated("s1".into())).await;
    assert_eq!(twin.live().await, 0, "only active assets stay in memory");
    assert_eq!(twin.state("s1").await, before, "a query reads the passivated asset from its snapshot");
    assert_eq!(twin.live().await, 0, "without waking it");
    assert!(twin.events.try_recv().is_err(), "no actor started for a query");
    // The next command rehydrates it: same state, then the reading on top.
    twin.observe(reading("s1", 2, "pm25", 9.0, Timestamp::from_secs(T0 + 120))).await.unwrap();
    twin.expect_event(ShardEvent::Started("s1".into())).await;
    let after = twin.state("s1").await;
    assert_eq!((after.version, after.metrics["pm25"].count), (before.version + 1, 2), "rehydrated, then applied");
    twin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn beyond_the_live_limit_actors_passivate_at_once_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let mut twin = start_limit_only(dir.path(), 16).await;
    for i in 0..120 {
        let asset = format!("s{i:03}");
        bring_up(&twin, &asset, None).await;
        twin.observe(reading(&asset, 1, "pm25", f64::from(i), Timestamp::from_secs(T0 + 60))).await.unwrap();
        assert!(twin.live().await <= 16, "{} live after {asset}", twin.live().await);
    }
    // They really stopped (not only left the live set): at least 104 of 120 passivated.
    let mut passivated = 0;
    while passivated < 104 {
        match tokio::time::timeout(WAIT, twin.events.recv()).await {
            Ok(Ok(ShardEvent::Passivated(_))) => passivated += 1,
            Ok(Ok(_)) => {}
            other => panic!("only {passivated} passivated: {other:?}"),
        }
    }
    // A second round wakes every asset again (rehydrated from its passivation snapshot).
    for i in 0..120 {
        let asset = format!("s{i:03}");
        twin.observe(reading(&asset, 2, "pm25", f64::from(i) + 0.5, Timestamp::from_secs(T0 + 120))).await.unwrap();
    }
    assert!(twin.live().await <= 16);
    for i in 0..120 {
        let asset = format!("s{i:03}");
        let state = stored_once(&twin, &asset).await;
        let pm25 = &state.metrics["pm25"];
        assert_eq!((pm25.count, pm25.last), (2, f64::from(i) + 0.5), "{asset}: both readings, in order");
    }
    twin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn under_thrash_actors_in_memory_stay_within_the_limit_and_nothing_is_lost() {
    let dir = tempfile::tempdir().unwrap();
    let twin = start_limit_only(dir.path(), 16).await;
    // 200 assets at once, each created, commissioned and read twice in order: far more
    // first messages in flight than the limit, so the shard must hold some while the actors
    // it passivated are still stopping.
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200u32 {
        let shard = twin.shard.clone();
        tasks.spawn(async move {
            let asset = format!("s{i:03}");
            command_to(&shard, &asset, AssetCommand::Observe(created(&asset, None))).await.unwrap();
            command_to(&shard, &asset, AssetCommand::Observe(commissioned(&asset))).await.unwrap();
            for n in 1..=2 {
                let time = Timestamp::from_secs(T0 + 60 * i64::from(n));
                let event = reading(&asset, n, "pm25", f64::from(i * 10 + n), time);
                command_to(&shard, &asset, AssetCommand::Observe(event)).await.unwrap();
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
    let occupancy = twin.occupancy().await;
    // Live and stopping together, never more than the limit; the limit was reached (the
    // shard had to hold assets back).
    assert_eq!(occupancy.peak, 16, "actors in memory at once: {occupancy:?}");
    assert!(occupancy.waited > 0, "some assets had to wait for room: {occupancy:?}");
    assert_eq!(occupancy.waiting, 0, "every waiting asset was let in: {occupancy:?}");
    twin.check_directory().await;
    for i in 0..200u32 {
        let asset = format!("s{i:03}");
        let state = stored_once(&twin, &asset).await;
        let pm25 = &state.metrics["pm25"];
        assert_eq!((pm25.count, pm25.last), (2, f64::from(i * 10 + 2)), "{asset}: both readings, in order");
        assert_eq!(state.status, Lifecycle::Online, "{asset}");
    }
    twin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn assets_reporting_in_rounds_just_over_the_limit_mostly_find_their_actor() {
    let dir = tempfile::tempdir().unwrap();
    let mut twin = start_limit_only(dir.path(), 64).await;
    // 72 assets (an eighth over the limit) reporting in turn, round after round, as a city's
    // periodic sensors do. Passivating the least recently active would passivate exactly the
    // asset due next: every reading after the first round would wake an actor.
    let assets: Vec<String> = (0..72).map(|i| format!("s{i:02}")).collect();
    for asset in &assets {
        bring_up(&twin, asset, None).await;
    }
    let (rounds, mut readings, mut starts) = (6u32, 0u32, 0u32);
    for round in 1..=rounds {
        for (i, asset) in assets.iter().enumerate() {
            let time = Timestamp::from_secs(T0 + 60 * i64::from(round));
            twin.observe(reading(asset, round, "pm25", f64::from(round) + i as f64, time)).await.unwrap();
        }
        // A start is announced before the actor gets its message, so before the answer.
        let started = std::iter::from_fn(|| twin.events.try_recv().ok())
            .filter(|event| matches!(event, ShardEvent::Started(_)))
            .count();
        if round > 2 {
            readings += u32::try_from(assets.len()).unwrap();
            starts += u32::try_from(started).unwrap();
        }
    }
    assert!(starts * 2 < readings, "{starts} of {readings} readings in rounds 3 to {rounds} woke an actor");
    let occupancy = twin.occupancy().await;
    assert!(occupancy.peak <= 64, "{occupancy:?}");
    twin.check_directory().await;
    for asset in &assets {
        assert_eq!(stored_once(&twin, asset).await.metrics["pm25"].count, u64::from(rounds), "{asset}");
    }
    twin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_limit_of_one_serves_assets_in_turn_without_losing_anything() {
    let dir = tempfile::tempdir().unwrap();
    let twin = start_limit_only(dir.path(), 1).await;
    for asset in ["a", "b", "c"] {
        bring_up(&twin, asset, None).await;
    }
    // Five readings per asset, all sent before any answer: each asset's messages queue up
    // (stopping, waiting) while the one actor allowed serves the others.
    let mut replies = Vec::new();
    for n in 1..=5u32 {
        for asset in ["a", "b", "c"] {
            let event = reading(asset, n, "pm25", f64::from(n), Timestamp::from_secs(T0 + 60 * i64::from(n)));
            let command = AssetCommand::Observe(event);
            let (asset, shard) = (asset.to_owned(), twin.shard.clone());
            replies.push(tokio::spawn(async move { command_to(&shard, &asset, command).await }));
        }
    }
    for reply in replies {
        reply.await.unwrap().unwrap();
    }
    let occupancy = twin.occupancy().await;
    assert_eq!(occupancy.peak, 1, "one actor in memory at a time: {occupancy:?}");
    assert!(occupancy.waited > 0, "assets waited for room: {occupancy:?}");
    for asset in ["a", "b", "c"] {
        let state = stored_once(&twin, asset).await;
        assert_eq!(state.metrics["pm25"].count, 5, "{asset}: every reading");
    }
    twin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn snapshots_are_taken_every_n_events() {
    let dir = tempfile::tempdir().unwrap();
    let config = AssetConfig { snapshot_every: 3, ..AssetConfig::default() };
    let twin = start(dir.path(), config).await;
    bring_up(&twin, "s1", None).await;
    for n in 0..4 {
        twin.observe(reading("s1", n, "pm25", f64::from(n), Timestamp::from_secs(T0 + 60 + i64::from(n))))
            .await
            .unwrap();
    }
    // 2 lifecycle + 4 readings + 1 online = 7 events; snapshots after 3 (at 4) and again at 7.
    let load = twin.log.load_stream(&asset_stream("s1")).unwrap();
    let snapshot = load.snapshot.expect("a snapshot");
    assert_eq!(snapshot.seq, 7);
    assert!(load.records.is_empty());
    let state: AssetState = rmp_serde::from_slice(&snapshot.state).unwrap();
    assert_eq!(state, twin.state("s1").await);
    twin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_poison_event_is_dead_lettered_the_actor_restarts_and_siblings_keep_running() {
    let dir = tempfile::tempdir().unwrap();
    let mut twin = start(dir.path(), AssetConfig::default()).await;
    bring_up(&twin, "s1", None).await;
    bring_up(&twin, "s2", None).await;
    let poison = twin.observe(reading("s1", 9, "poison_metric", 1.0, Timestamp::from_secs(T0 + 60))).await;
    let Err(CommandError::Poison(message)) = poison else { panic!("expected a poison reply, got {poison:?}") };
    assert!(message.contains("poison pill in s1-r9"), "{message}");
    // Answered once the successor runs (so the caller's next command cannot reach the failing
    // actor and be dropped with it).
    assert!(twin.has_sent(&ShardEvent::Restarted("s1".into())), "the poison answer came before the restart");
    // The sibling never noticed; the restarted actor rebuilt from the log and carries on.
    twin.observe(reading("s2", 1, "pm25", 5.0, Timestamp::from_secs(T0 + 61))).await.unwrap();
    twin.observe(reading("s1", 1, "pm25", 6.0, Timestamp::from_secs(T0 + 62))).await.unwrap();
    assert_eq!(twin.state("s1").await.metrics["pm25"].last, 6.0);
    assert_eq!(twin.state("s2").await.metrics["pm25"].last, 5.0);
    // The failed actor left the directory and its successor took its place.
    twin.check_directory().await;
    assert!(twin.directory.read().unwrap().contains_key("s1"));
    let letters = dead_letters(&twin.log).unwrap();
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].reason, "panicked");
    assert!(letters[0].message.contains("poison pill in s1-r9"), "{letters:?}");
    assert_eq!(letters[0].original.as_ref().map(|e| e.id.as_str()), Some("s1-r9"));
    twin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_drain_poisoned_while_applying_hands_its_other_commands_to_the_restarted_actor() {
    let dir = tempfile::tempdir().unwrap();
    let mut twin = start(dir.path(), AssetConfig::default()).await;
    bring_up(&twin, "s1", None).await;
    let at = |s: i64| Timestamp::from_secs(T0 + s);
    let batch = vec![
        reading("s1", 1, "pm25", 1.0, at(60)),
        reading("s1", 2, "poison_apply", 2.0, at(61)),
        reading("s1", 3, "pm25", 3.0, at(62)),
        reading("s1", 4, "pm25", 4.0, at(63)),
    ];
    let answers = send_batch(&twin, batch, vec![0, 1, 2, 3]).await;
    let answers: Vec<Result<usize, String>> = answers.into_iter().map(|a| a.map_err(|f| f.error.to_string())).collect();
    assert!(answers[0].is_ok(), "before the poison: committed, {answers:?}");
    assert!(answers[1].as_ref().is_err_and(|e| e.contains("poison pill applying s1-r2")), "{answers:?}");
    assert!(answers[2..].iter().all(Result::is_ok), "after it: run by the successor, not refused: {answers:?}");
    twin.expect_event(ShardEvent::Restarted("s1".into())).await;
    let state = twin.state("s1").await;
    assert_eq!(state.metrics["pm25"].last, 4.0);
    assert_eq!(state.metrics["pm25"].count, 3);
    assert!(!state.metrics.contains_key("poison_apply"), "the poison event is not in the state");
    let letters = dead_letters(&twin.log).unwrap();
    assert_eq!(letters.iter().map(|l| l.original.as_ref().map(|e| e.id.as_str())).collect::<Vec<_>>(), [Some("s1-r2")]);
    twin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_interleaving_assets_reaches_each_in_order_and_answers_every_slot() {
    let dir = tempfile::tempdir().unwrap();
    let twin = start(dir.path(), AssetConfig::default()).await;
    let assets = ["s1", "s2", "s3"];
    for id in assets {
        bring_up(&twin, id, None).await;
    }
    // Round-robin over the assets, as a feed sends them; the second reading of s2 repeats
    // its first one's id (a duplicate: accepted, nothing stored), and slots run backwards.
    let mut batch = Vec::new();
    for n in 1..=4u32 {
        for (a, id) in assets.iter().enumerate() {
            let id_n = if *id == "s2" && n == 2 { 1 } else { n };
            let value = f64::from(n * 10 + a as u32);
            batch.push(reading(id, id_n, "pm25", value, Timestamp::from_secs(T0 + 60 + i64::from(n))));
        }
    }
    let len = batch.len();
    let answers = send_batch(&twin, batch, (0..len as u32).rev().collect()).await;
    // Slot len-1-i answers command i with the number of events it stored: each asset's
    // first reading also brings it online, and command 4 is s2's duplicate.
    for (slot, answer) in answers.into_iter().enumerate() {
        let command = len - 1 - slot;
        let expected = match command {
            0..=2 => 2,
            4 => 0,
            _ => 1,
        };
        let stored = answer.map_err(|f| f.error.to_string());
        assert_eq!(stored, Ok(expected), "command {command} (slot {slot})");
    }
    for (a, id) in assets.iter().enumerate() {
        let state = stored_once(&twin, id).await;
        // Applied in the batch's order: the last value is the fourth reading's.
        assert_eq!(state.metrics["pm25"].last, f64::from(40 + a as u32), "{id}");
        assert_eq!(state.metrics["pm25"].count, if *id == "s2" { 3 } else { 4 }, "{id}");
    }
    twin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_past_the_snapshot_interval_leaves_a_snapshot_once_committed() {
    let dir = tempfile::tempdir().unwrap();
    let config = AssetConfig { snapshot_every: 3, ..AssetConfig::default() };
    let twin = start(dir.path(), config).await;
    bring_up(&twin, "s1", None).await;
    assert_eq!(twin.log.snapshot_seq(&asset_stream("s1")), None, "2 lifecycle events: under the interval");
    let batch = (1..=4u32)
        .map(|n| reading("s1", n, "pm25", f64::from(n), Timestamp::from_secs(T0 + 60 + i64::from(n))))
        .collect();
    send_batch(&twin, batch, vec![0, 1, 2, 3]).await;
    // Answered means committed; the writer thread offers the snapshot right after answering,
    // so once the writer has flushed, and then the saver, the snapshot holds all 7 events
    // (2 lifecycle, online, 4 readings).
    twin.writer.flush().await.unwrap();
    twin.writer.snapshots().flush().await;
    let snapshot = twin.log.load_snapshot(&asset_stream("s1")).unwrap().expect("a snapshot");
    assert_eq!(snapshot.seq, 7);
    let state: AssetState = rmp_serde::from_slice(&snapshot.state).unwrap();
    assert_eq!(state, twin.state("s1").await);
    assert_eq!(twin.writer.snapshots().skipped(), 0);
    twin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missed_heartbeat_takes_the_asset_offline() {
    let dir = tempfile::tempdir().unwrap();
    let mut twin = start(dir.path(), AssetConfig::default()).await;
    // Reporting every second: two seconds of silence means offline.
    bring_up(&twin, "s1", Some(1)).await;
    let now = (system_clock())();
    twin.observe(reading("s1", 1, "pm25", 1.0, now)).await.unwrap();
    let offline = tokio::time::timeout(WAIT, async {
        loop {
            let committed = twin.published.recv().await.unwrap();
            if committed.event.ty.as_str() == "com.smartcities.asset.offline" {
                return committed.event.clone();
            }
        }
    })
    .await
    .expect("an asset.offline event");
    let Some(Payload::AssetOffline(payload)) = offline.payload() else { panic!() };
    assert_eq!((payload.reason.as_deref(), payload.last_seen), (Some("heartbeat_timeout"), Some(now)));
    assert_eq!(twin.state("s1").await.status, Lifecycle::Offline);
    twin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn state_at_a_past_time_is_rebuilt_from_the_log() {
    let dir = tempfile::tempdir().unwrap();
    let twin = start(dir.path(), AssetConfig::default()).await;
    bring_up(&twin, "s1", None).await;
    for n in 0..5 {
        twin.observe(reading("s1", n, "pm25", f64::from(n) * 10.0, Timestamp::from_secs(T0 + 100 * i64::from(n + 1))))
            .await
            .unwrap();
    }
    let at_250 = state_at(&twin.log, "s1", Timestamp::from_secs(T0 + 250)).unwrap();
    assert_eq!(at_250.metrics["pm25"].count, 2);
    assert_eq!(at_250.metrics["pm25"].last, 10.0);
    let at_start = state_at(&twin.log, "s1", Timestamp::from_secs(T0)).unwrap();
    assert_eq!(at_start.status, Lifecycle::Created);
    twin.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_shard_escalates_after_too_many_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), LogConfig { durability: Durability::Never, ..LogConfig::default() }).unwrap();
    let args = ShardArgs {
        shard: 7,
        log: log.clone(),
        writer: crate::writer::LogWriter::start(log.clone(), 64, 64, None),
        asset: AssetConfig::default(),
        max_restarts: 1,
        restart_window: Duration::from_secs(600),
        events: None,
        directory: None,
        max_live: 0,
    };
    let (shard, handle) = Actor::spawn(None, ShardActor, args).await.unwrap();
    let command = |n: u32| {
        let event = reading("s1", n, "poison_metric", 1.0, Timestamp::from_secs(T0 + i64::from(n)));
        move |reply| ShardMsg::Command("s1".into(), Box::new(AssetCommand::Observe(event)), reply)
    };
    // The asset is unknown, but the poison pill fires in `decide` before any rule.
    let first = shard.call(command(1), Some(WAIT)).await.unwrap();
    assert!(matches!(first, CallResult::Success(Err(CommandError::Poison(_)))));
    // The second failure within the window exceeds max_restarts = 1: the shard fails.
    let _ = shard.call(command(2), Some(WAIT)).await;
    let finished = tokio::time::timeout(WAIT, handle).await;
    assert!(finished.is_ok(), "the shard escalated (stopped) instead of restarting forever");
    assert_eq!(dead_letters(&log).unwrap().len(), 2, "both poison events were dead-lettered");
}

#[tokio::test]
async fn a_crash_the_shard_could_not_answer_is_still_answered_as_a_poison() {
    // The shard fails while restarting the asset (or stops first) and drops the failure: the
    // caller must learn that its command crashed, not that it never ran (it would resend it).
    let (tx, rx) = ractor::concurrency::oneshot();
    let crashed = Crashed {
        message: "asset s1 crashed on a command: boom".into(),
        reply: std::sync::Mutex::new(Some(tx.into())),
    };
    drop(crashed);
    match rx.await {
        Ok(Err(CommandError::Poison(message))) => assert!(message.contains("boom"), "{message}"),
        other => panic!("expected a poison answer, got {other:?}"),
    }
}
