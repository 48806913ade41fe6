//! Tests of the event log: a seeded random walk against an in-memory model, concurrency,
//! corruption and torn tails, snapshots, retention. The crash test (a real child process
//! killed with SIGKILL) is in `core/tests/it/crash.rs`.

use std::collections::HashMap;
use std::io::Write;

use h3o::Resolution;

use super::*;
use crate::event::{Location, MetricRecorded, Unit};

/// A small deterministic generator (SplitMix64), so walks replay exactly from their seed.
pub(crate) struct Rng(u64);

impl Rng {
    pub(crate) fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }

    pub(crate) fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

const STREAMS: [&str; 6] =
    ["sensor_001", "sensor_002", "bus_7", "saga:commission:9", "cell:8828308281fffff", "ünïcode stream"];
const ORGS: [&str; 2] = ["org_a", "org_b"];

/// A deterministic event for position-independent content `n`.
fn event(n: u64, stream: &str) -> Event {
    let location = Location::new(40.70 + (n % 7) as f64 * 0.01, -74.00 - (n % 5) as f64 * 0.01);
    let time = Timestamp::from_secs(1_736_900_000 + (n % 1000) as i64 * 60);
    if n % 5 == 4 {
        let mut event = Event::untyped(format!("evt-{n}"), "/other", "com.example.other").with_time(time);
        event.ext.organization = Some(ORGS[(n % 2) as usize].into());
        return event;
    }
    Event::new(
        format!("evt-{n}"),
        format!("/assets/{stream}"),
        MetricRecorded {
            asset_id: stream.into(),
            metric_type: "pm25".into(),
            value: n as f64,
            unit: Unit::from("ug/m3"),
            location: Some(location),
        },
    )
    .with_time(time)
    .with_organization(ORGS[(n % 2) as usize])
    .with_derived_cell(Resolution::Nine)
}

fn config(durability: Durability, segment_bytes: u64) -> LogConfig {
    LogConfig {
        durability,
        segment_bytes,
        retention: RetentionPolicy::default(),
        checkpoint_every: None,
        clock: Arc::new(|| Timestamp::from_secs(1_800_000_000)),
    }
}

/// What the log should hold.
#[derive(Default)]
struct Model {
    /// (position, stream, seq, event) for every record still in the log.
    records: Vec<(u64, String, u64, Event)>,
    first_position: u64,
    next_position: u64,
    archived: u64,
    seqs: HashMap<String, u64>,
    snapshots: HashMap<String, Snapshot>,
}

fn check_equal(seed: u64, step: usize, log: &EventLog, model: &Model) {
    let ctx = || format!("seed {seed}, step {step}");
    assert_eq!(log.next_position(), model.next_position, "{}", ctx());
    assert_eq!(log.first_position(), model.first_position, "{}", ctx());
    let all: Vec<Record> = log.replay(ReplayFilter::default()).collect::<Result<_>>().unwrap();
    assert_eq!(all.len(), model.records.len(), "{}: replay length", ctx());
    for (record, (position, stream, seq, event)) in all.iter().zip(&model.records) {
        assert_eq!((record.position, &record.stream, record.seq), (*position, stream, *seq), "{}", ctx());
        assert_eq!(&record.event().unwrap(), event, "{}", ctx());
        assert_eq!(record.ty, event.ty, "{}", ctx());
        assert_eq!(record.cell, event.ext.h3cell, "{}", ctx());
    }
    for stream in STREAMS {
        assert_eq!(log.stream_seq(stream), model.seqs.get(stream).copied().unwrap_or(0), "{}: seq of {stream}", ctx());
        let expected: Vec<(u64, u64)> = model.records.iter().filter(|r| r.1 == stream).map(|r| (r.0, r.2)).collect();
        let found: Vec<(u64, u64)> = log.read_stream(stream, 1).unwrap().iter().map(|r| (r.position, r.seq)).collect();
        assert_eq!(found, expected, "{}: history of {stream}", ctx());
        let load = log.load_stream(stream).unwrap();
        let snapshot = model.snapshots.get(stream).cloned();
        let from = snapshot.as_ref().map_or(1, |s| s.seq + 1);
        assert_eq!(load.snapshot, snapshot, "{}: snapshot of {stream}", ctx());
        let tail: Vec<u64> = load.records.iter().map(|r| r.seq).collect();
        let expected_tail: Vec<u64> = expected.iter().map(|r| r.1).filter(|&s| s >= from).collect();
        assert_eq!(tail, expected_tail, "{}: tail of {stream}", ctx());
    }
    // Filtered replays equal the model filtered the same way.
    let some_cell = model.records.iter().find_map(|r| r.3.ext.h3cell);
    let filters = [
        ReplayFilter { types: vec![TypePattern::new("com.smartcities.asset.*")], ..Default::default() },
        ReplayFilter { streams: vec!["bus_7".into(), "sensor_001".into()], ..Default::default() },
        ReplayFilter { organization: Some("org_b".into()), ..Default::default() },
        ReplayFilter {
            from_time: Some(Timestamp::from_secs(1_736_900_000 + 300 * 60)),
            to_time: Some(Timestamp::from_secs(1_736_900_000 + 600 * 60)),
            ..Default::default()
        },
        ReplayFilter { from_position: model.next_position / 2, ..Default::default() },
        ReplayFilter {
            cells: some_cell.and_then(|c| c.parent(Resolution::Seven)).into_iter().collect(),
            ..Default::default()
        },
    ];
    for filter in filters {
        let found: Vec<u64> = log.replay(filter.clone()).map(|r| r.unwrap().position).collect();
        let expected: Vec<u64> = model
            .records
            .iter()
            .filter(|(position, stream, _, event)| {
                let time = event.time.unwrap();
                *position >= filter.from_position
                    && filter.from_time.is_none_or(|t| time >= t)
                    && filter.to_time.is_none_or(|t| time < t)
                    && (filter.types.is_empty() || filter.types.iter().any(|p| p.matches(event.ty.as_str())))
                    && (filter.streams.is_empty() || filter.streams.contains(stream))
                    && filter
                        .organization
                        .as_ref()
                        .is_none_or(|o| event.ext.organization.as_deref() == Some(o.as_str()))
                    && (filter.cells.is_empty()
                        || event
                            .ext
                            .h3cell
                            .is_some_and(|c| filter.cells.iter().any(|&p| c.parent(p.resolution()) == Some(p))))
            })
            .map(|r| r.0)
            .collect();
        assert_eq!(found, expected, "{}: replay with {filter:?}", ctx());
    }
}

fn tail_segment(dir: &Path) -> PathBuf {
    segment::list(dir).unwrap().last().unwrap().1.clone()
}

/// Returns how many (torn tails, segments deleted by retention, snapshots) the walk made.
fn random_walk(seed: u64) -> (u32, usize, u32) {
    let mut stats = (0, 0, 0);
    let mut dir = tempfile::tempdir().unwrap();
    let mut rng = Rng(seed);
    let segment_bytes = 2_000 + rng.below(6_000);
    let mut cfg = config(Durability::Never, segment_bytes);
    cfg.retention = RetentionPolicy { max_age: None, max_bytes: Some(20_000), require_archive: true };
    let mut log = EventLog::open(dir.path(), cfg.clone()).unwrap();
    let mut model = Model::default();
    let mut n = 0u64;
    for step in 0..120 {
        match rng.below(100) {
            0..=59 => {
                let size = 1 + rng.below(12) as usize;
                let picks: Vec<&str> = (0..size).map(|_| STREAMS[rng.below(STREAMS.len() as u64) as usize]).collect();
                let events: Vec<Event> = picks
                    .iter()
                    .map(|s| {
                        n += 1;
                        event(n, s)
                    })
                    .collect();
                let wrong = rng.below(10) == 0;
                let mut seqs = model.seqs.clone();
                let batch: Vec<Append<'_>> = picks
                    .iter()
                    .zip(&events)
                    .enumerate()
                    .map(|(i, (stream, event))| {
                        let current = seqs.get(*stream).copied().unwrap_or(0);
                        seqs.insert(stream.to_string(), current + 1);
                        let expected = match (i, wrong, rng.below(2)) {
                            (0, true, _) => Expected::Seq(current + 1),
                            (_, _, 0) => Expected::Any,
                            _ => Expected::Seq(current),
                        };
                        Append { stream, expected, event }
                    })
                    .collect();
                let result = log.append_batch(&batch);
                if wrong {
                    assert!(
                        matches!(result, Err(Error::WrongExpectedSequence { .. })),
                        "seed {seed}, step {step}: {result:?}"
                    );
                } else {
                    let appended = result.unwrap();
                    for ((append, done), event) in batch.iter().zip(&appended).zip(&events) {
                        assert_eq!(done.position, model.next_position, "seed {seed}, step {step}");
                        model.next_position += 1;
                        model.seqs.insert(append.stream.to_owned(), done.seq);
                        model.records.push((done.position, append.stream.to_owned(), done.seq, event.clone()));
                    }
                }
            }
            60..=71 => {
                // Closed (a heads checkpoint of everything), closed and the checkpoint lost
                // (every record indexed), or crashed (the last explicit checkpoint, if any,
                // and the records after it indexed).
                match rng.below(3) {
                    0 => drop(log),
                    1 => {
                        drop(log);
                        let _ = std::fs::remove_file(dir.path().join(checkpoint::CHECKPOINT_FILE));
                    }
                    _ => {
                        let image = tempfile::tempdir().unwrap();
                        crash_image(dir.path(), image.path());
                        drop(log);
                        dir = image;
                    }
                }
                log = EventLog::open(dir.path(), cfg.clone()).unwrap();
            }
            72..=81 => {
                // A crash in the middle of writing an unacknowledged frame: part of a frame at
                // the tail. Reopening must drop it and lose nothing acknowledged.
                if rng.below(2) == 0 {
                    drop(log);
                } else {
                    let image = tempfile::tempdir().unwrap();
                    crash_image(dir.path(), image.path());
                    drop(log);
                    dir = image;
                }
                let mut frame_bytes = Vec::new();
                let stream = STREAMS[0];
                let head = model.seqs.get(stream).copied().unwrap_or(0);
                frame::write_frame(
                    &mut frame_bytes,
                    &frame::NewRecord {
                        position: model.next_position,
                        seq: head + 1,
                        time: Timestamp::EPOCH,
                        prev_position: frame::NO_PREV,
                        prev_offset: 0,
                        stream,
                        event: &event(999_999, stream),
                    },
                );
                let cut = 1 + rng.below(frame_bytes.len() as u64 - 1) as usize;
                let mut file = std::fs::OpenOptions::new().append(true).open(tail_segment(dir.path())).unwrap();
                file.write_all(&frame_bytes[..cut]).unwrap();
                drop(file);
                stats.0 += 1;
                log = EventLog::open(dir.path(), cfg.clone()).unwrap();
            }
            82..=86 => {
                let stream = STREAMS[rng.below(STREAMS.len() as u64) as usize];
                let seq = model.seqs.get(stream).copied().unwrap_or(0);
                if seq > 0 {
                    let at = 1 + rng.below(seq);
                    let snapshot = Snapshot { seq: at, state: format!("state of {stream} at {at}").into_bytes() };
                    log.save_snapshot(stream, at, &snapshot.state).unwrap();
                    model.snapshots.insert(stream.to_owned(), snapshot);
                    stats.2 += 1;
                }
            }
            87..=90 => log.checkpoint().unwrap(),
            _ => {
                let proposed = model.first_position + rng.below(model.next_position - model.first_position + 1);
                log.set_archived(proposed).unwrap();
                // The watermark never moves back.
                model.archived = model.archived.max(proposed);
                let watermark = model.archived;
                assert_eq!(log.archived(), watermark, "seed {seed}, step {step}");
                let report = log.apply_retention(Timestamp::from_secs(1_800_000_000)).unwrap();
                let first = report.first_position;
                stats.1 += report.deleted_segments.len();
                assert!(
                    first <= watermark.max(model.first_position),
                    "seed {seed}, step {step}: deleted unarchived records"
                );
                assert!(first >= model.first_position, "seed {seed}, step {step}");
                model.records.retain(|r| r.0 >= first);
                model.first_position = first;
            }
        }
        if step % 10 == 9 {
            check_equal(seed, step, &log, &model);
        }
    }
    check_equal(seed, 120, &log, &model);
    stats
}

#[test]
fn random_walk_matches_the_model() {
    let seeds: Vec<u64> = match std::env::var("CITYTWIN_SEED") {
        Ok(seed) => vec![seed.parse().expect("CITYTWIN_SEED is a number")],
        Err(_) => (1..=12).collect(),
    };
    let mut totals = (0, 0, 0);
    for seed in seeds {
        eprintln!("random walk seed {seed} (rerun with CITYTWIN_SEED={seed})");
        let (torn, deleted, snapshots) = random_walk(seed);
        totals = (totals.0 + torn, totals.1 + deleted, totals.2 + snapshots);
    }
    eprintln!("torn tails, deleted segments, snapshots: {totals:?}");
    assert!(totals.0 > 0 && totals.1 > 0 && totals.2 > 0, "the walks must exercise every operation: {totals:?}");
}

#[test]
fn a_log_open_elsewhere_is_refused_before_anything_is_read_or_repaired() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), config(Durability::Always, 1 << 20)).unwrap();
    log.append("a", Expected::Seq(0), &event(1, "a")).unwrap();
    drop(log);
    // Another process has it open, and its tail as a live writer leaves it between a write
    // and its sync: half a frame.
    let mut other = std::fs::OpenOptions::new().write(true).open(dir.path().join("LOCK")).unwrap();
    other.try_lock().unwrap();
    other.set_len(0).unwrap();
    other.write_all(b"4242").unwrap();
    let tail = tail_segment(dir.path());
    let len = std::fs::metadata(&tail).unwrap().len();
    std::fs::OpenOptions::new().append(true).open(&tail).unwrap().write_all(&[7; 9]).unwrap();
    match EventLog::open(dir.path(), config(Durability::Always, 1 << 20)) {
        Err(error @ Error::InUse { holder: Some(4242), .. }) => {
            let message = error.to_string();
            assert!(message.contains("in use by process 4242"), "{message}");
            assert!(message.contains(&dir.path().display().to_string()), "{message}");
        }
        other => panic!("expected InUse by 4242, got {other:?}"),
    }
    assert_eq!(std::fs::metadata(&tail).unwrap().len(), len + 9, "the refused open cut nothing off");
    // That process ends: the next open owns the log, and repairs the torn tail.
    drop(other);
    let log = EventLog::open(dir.path(), config(Durability::Always, 1 << 20)).unwrap();
    assert_eq!((log.next_position(), log.stream_seq("a")), (1, 1));
    assert_eq!(std::fs::metadata(&tail).unwrap().len(), len, "the torn tail is cut off");
}

#[test]
fn wrong_expected_sequence_writes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), config(Durability::Always, 1 << 20)).unwrap();
    let e = event(1, "a");
    log.append("a", Expected::Seq(0), &e).unwrap();
    let batch = [
        Append { stream: "b", expected: Expected::Seq(0), event: &e },
        Append { stream: "a", expected: Expected::Seq(0), event: &e },
    ];
    match log.append_batch(&batch) {
        Err(Error::WrongExpectedSequence { stream, expected, actual }) => {
            assert_eq!((stream.as_str(), expected, actual), ("a", 0, 1))
        }
        other => panic!("expected a sequence mismatch, got {other:?}"),
    }
    assert_eq!(log.next_position(), 1);
    assert_eq!(log.stream_seq("b"), 0);
    // A stream the batch already extended is put back too, however often it was extended.
    let batch = [
        Append { stream: "a", expected: Expected::Seq(1), event: &e },
        Append { stream: "a", expected: Expected::Seq(2), event: &e },
        Append { stream: "c", expected: Expected::Any, event: &e },
        Append { stream: "c", expected: Expected::Seq(0), event: &e },
    ];
    assert!(matches!(log.append_batch(&batch), Err(Error::WrongExpectedSequence { .. })));
    assert_eq!((log.next_position(), log.stream_seq("a"), log.stream_seq("c")), (1, 1, 0));
    // Expectations are evaluated in batch order, so a batch may extend a stream twice.
    let batch = [
        Append { stream: "a", expected: Expected::Seq(1), event: &e },
        Append { stream: "a", expected: Expected::Seq(2), event: &e },
    ];
    assert_eq!(log.append_batch(&batch).unwrap().iter().map(|a| a.seq).collect::<Vec<_>>(), [2, 3]);
    // The stream's chain of back-pointers skips nothing and holds nothing refused.
    let history: Vec<u64> = log.read_stream("a", 1).unwrap().iter().map(|r| r.seq).collect();
    assert_eq!(history, [1, 2, 3]);
}

#[test]
fn concurrent_writers_get_gap_free_positions_and_whole_frames() {
    let dir = tempfile::tempdir().unwrap();
    for durability in [Durability::Always, Durability::Interval(Duration::from_millis(2)), Durability::Never] {
        let log = EventLog::open(dir.path().join(format!("{durability:?}")), config(durability, 64 << 10)).unwrap();
        let per_thread: u64 = if durability == Durability::Always { 60 } else { 600 };
        let threads = 4;
        let positions: Vec<Vec<Appended>> = std::thread::scope(|scope| {
            let handles: Vec<_> = (0..threads)
                .map(|t| {
                    let log = log.clone();
                    scope.spawn(move || {
                        let stream = format!("writer-{t}");
                        let mut out = Vec::new();
                        for i in 0..per_thread {
                            let events: Vec<Event> =
                                (0..(i % 3 + 1)).map(|k| event(t * 1_000_000 + i * 10 + k, &stream)).collect();
                            let batch: Vec<Append<'_>> = events
                                .iter()
                                .map(|e| Append { stream: &stream, expected: Expected::Any, event: e })
                                .collect();
                            out.extend(log.append_batch(&batch).unwrap());
                        }
                        out
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let mut all: Vec<u64> = positions.iter().flatten().map(|a| a.position).collect();
        all.sort_unstable();
        let total = all.len() as u64;
        assert_eq!(all, (0..total).collect::<Vec<_>>(), "{durability:?}: positions must be gap-free");
        drop(log);
        // Reopen verifies every frame's checksum; each stream's records arrive in order.
        let log = EventLog::open(dir.path().join(format!("{durability:?}")), config(durability, 64 << 10)).unwrap();
        let mut last_seq: HashMap<String, u64> = HashMap::new();
        for record in log.replay(ReplayFilter::default()) {
            let record = record.unwrap();
            let seq = last_seq.entry(record.stream.clone()).or_default();
            assert_eq!(record.seq, *seq + 1, "{durability:?}");
            *seq = record.seq;
            let event = record.event().unwrap();
            assert!(
                event.asset_id().is_none_or(|a| a == record.stream),
                "{durability:?}: record of {} holds an event of {:?}",
                record.stream,
                event.asset_id()
            );
        }
        assert_eq!(last_seq.values().sum::<u64>(), total);
    }
}

fn build_segments(dir: &Path, n: u64) -> Vec<PathBuf> {
    let log = EventLog::open(dir, config(Durability::Never, 4_096)).unwrap();
    for i in 0..n {
        log.append(STREAMS[(i % 3) as usize], Expected::Any, &event(i, STREAMS[(i % 3) as usize])).unwrap();
    }
    drop(log);
    segment::list(dir).unwrap().into_iter().map(|(_, p)| p).collect()
}

#[test]
fn a_flipped_byte_in_a_middle_segment_fails_open_naming_file_and_offset() {
    let dir = tempfile::tempdir().unwrap();
    let segments = build_segments(dir.path(), 200);
    assert!(segments.len() >= 3, "need several segments, got {}", segments.len());
    let middle = &segments[segments.len() / 2];
    let mut bytes = std::fs::read(middle).unwrap();
    let at = bytes.len() / 2;
    bytes[at] ^= 0x40;
    std::fs::write(middle, &bytes).unwrap();
    let error = EventLog::open(dir.path(), config(Durability::Never, 4_096)).unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, Error::Recovery(RecoveryError::Corrupt { .. })), "{text}");
    let name = middle.file_name().unwrap().to_str().unwrap();
    assert!(text.contains(name) && text.contains("offset"), "the error names the file and the offset: {text}");
}

/// A log of ten events of stream `s`, closed, in a new directory.
fn closed_log_of_ten(durability: Durability) -> tempfile::TempDir {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), config(durability, 1 << 20)).unwrap();
    for i in 0..10 {
        log.append("s", Expected::Any, &event(i, "s")).unwrap();
    }
    drop(log);
    dir
}

#[test]
fn a_flipped_byte_before_valid_frames_of_the_tail_is_corruption_not_a_torn_tail() {
    let dir = closed_log_of_ten(Durability::Never);
    let tail = tail_segment(dir.path());
    let mut bytes = std::fs::read(&tail).unwrap();
    bytes[segment::HEADER_LEN as usize + 20] ^= 1; // inside the first frame's body
    std::fs::write(&tail, &bytes).unwrap();
    let error = EventLog::open(dir.path(), config(Durability::Never, 1 << 20)).unwrap_err();
    assert!(error.to_string().contains("checksum mismatch"), "{error}");
}

#[test]
fn a_torn_tail_is_truncated_and_logged_state_kept() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), config(Durability::Always, 1 << 20)).unwrap();
    for i in 0..5 {
        log.append("s", Expected::Any, &event(i, "s")).unwrap();
    }
    drop(log);
    let tail = tail_segment(dir.path());
    let good_len = std::fs::metadata(&tail).unwrap().len();
    std::fs::OpenOptions::new()
        .append(true)
        .open(&tail)
        .unwrap()
        .write_all(&[0x55, 0x00, 0x00, 0x00, 1, 2, 3])
        .unwrap();
    let log = EventLog::open(dir.path(), config(Durability::Always, 1 << 20)).unwrap();
    assert_eq!(std::fs::metadata(&tail).unwrap().len(), good_len, "the torn bytes are cut off");
    assert_eq!(log.next_position(), 5);
    assert_eq!(log.append("s", Expected::Seq(5), &event(5, "s")).unwrap(), Appended { position: 5, seq: 6 });
}

#[test]
fn snapshots_ahead_of_the_log_are_ignored() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), config(Durability::Always, 1 << 20)).unwrap();
    for i in 0..3 {
        log.append("s", Expected::Any, &event(i, "s")).unwrap();
    }
    assert!(matches!(log.save_snapshot("s", 4, b"x"), Err(Error::Rejected(_))));
    log.save_snapshot("s", 3, b"state@3").unwrap();
    drop(log);
    // Simulate losing the last record (an unsynced append under a relaxed policy).
    let tail = tail_segment(dir.path());
    let log = EventLog::open(dir.path(), config(Durability::Always, 1 << 20)).unwrap();
    let offset_of_last = {
        let records = log.read_stream("s", 3).unwrap();
        assert_eq!(records.len(), 1);
        let state = lock(&log.inner.state);
        u64::from(state.streams["s"].offset)
    };
    drop(log);
    // A crash, not a close: no checkpoint says the last record was synced.
    std::fs::remove_file(dir.path().join(checkpoint::CHECKPOINT_FILE)).unwrap();
    std::fs::OpenOptions::new().write(true).open(&tail).unwrap().set_len(offset_of_last + 5).unwrap();
    let log = EventLog::open(dir.path(), config(Durability::Always, 1 << 20)).unwrap();
    let load = log.load_stream("s").unwrap();
    assert_eq!(load.snapshot, None, "a snapshot at 3 when the log holds 2 must not be used");
    assert_eq!(load.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2]);
    // The stream grows back to sequence 3 with another event: the old state@3 is not it.
    log.append("s", Expected::Seq(2), &event(9, "s")).unwrap();
    let load = log.load_stream("s").unwrap();
    assert_eq!(load.snapshot, None, "the stale snapshot was dropped when the log was opened");
    assert_eq!(load.records.iter().map(|r| r.seq).collect::<Vec<_>>(), [1, 2, 3]);
}

#[test]
fn retention_keeps_unarchived_segments_and_sequences_continue() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Durability::Never, 4_096);
    cfg.retention =
        RetentionPolicy { max_age: Some(Duration::from_secs(3600)), max_bytes: None, require_archive: true };
    let log = EventLog::open(dir.path(), cfg.clone()).unwrap();
    for i in 0..300 {
        let stream = if i < 100 { "old" } else { "new" };
        log.append(stream, Expected::Any, &event(i, stream)).unwrap();
    }
    let now = Timestamp::from_secs(1_736_900_000 + 2_000 * 60);
    assert!(log.apply_retention(now).unwrap().deleted_segments.is_empty(), "nothing archived, nothing deleted");
    log.set_archived(150).unwrap();
    let report = log.apply_retention(now).unwrap();
    assert!(!report.deleted_segments.is_empty());
    assert!(report.first_position <= 150 && report.first_position > 0, "{report:?}");
    let first = report.first_position;
    assert!(log.read(first - 1).unwrap().is_none());
    assert_eq!(log.read(first).unwrap().unwrap().position, first);
    drop(log);
    let log = EventLog::open(dir.path(), cfg).unwrap();
    assert_eq!(log.archived(), 150, "the watermark survives a restart");
    assert_eq!(log.first_position(), first);
    assert_eq!(log.stream_seq("old"), 100, "a stream whose records were all deleted keeps its sequence");
    assert_eq!(log.append("old", Expected::Seq(100), &event(1, "old")).unwrap().seq, 101);
}

#[test]
fn poisoned_log_refuses_writes() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), config(Durability::Always, 1 << 20)).unwrap();
    log.append("s", Expected::Any, &event(1, "s")).unwrap();
    let _ = log.poison(Error::Rejected("simulated fsync failure".into()));
    assert!(matches!(log.append("s", Expected::Any, &event(2, "s")), Err(Error::Poisoned)));
    assert!(log.is_poisoned());
    drop(log);
    let log = EventLog::open(dir.path(), config(Durability::Always, 1 << 20)).unwrap();
    assert_eq!(log.next_position(), 1, "reopening recovers");
    assert!(!log.is_poisoned());
}

#[test]
fn retired_stream_names_round_trip() {
    for name in ["plain", "with space", "quote\"s", "back\\slash", "tab\tnew\nline", "ünï ✓"] {
        assert_eq!(unescape(&name.escape_default().to_string()).as_deref(), Some(name));
    }
}

#[test]
fn a_damaged_snapshot_is_ignored_and_the_stream_replayed() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), config(Durability::Always, 1 << 20)).unwrap();
    for i in 0..4 {
        log.append("s", Expected::Any, &event(i, "s")).unwrap();
    }
    log.save_snapshot("s", 3, b"state@3").unwrap();
    assert_eq!(log.load_stream("s").unwrap().snapshot.map(|s| s.seq), Some(3));
    let tables = snapshot::table_files(&dir.path().join("snapshots"));
    assert_eq!(tables.len(), 1, "one table for every stream's snapshots");
    let path = &tables[0];
    let mut bytes = std::fs::read(path).unwrap();
    let last = bytes.len() - 1;
    bytes[last] ^= 0xff;
    std::fs::write(path, &bytes).unwrap();
    let load = log.load_stream("s").unwrap();
    assert_eq!(load.snapshot, None, "a snapshot is a cache: damage means replaying more");
    assert_eq!(load.records.len(), 4);
    // Reopening cuts the damaged entry off; the next save is found again.
    drop(log);
    let log = EventLog::open(dir.path(), config(Durability::Always, 1 << 20)).unwrap();
    assert_eq!(log.load_stream("s").unwrap().snapshot, None);
    log.save_snapshot("s", 4, b"state@4").unwrap();
    assert_eq!(log.load_stream("s").unwrap().snapshot.map(|s| s.seq), Some(4));
}

#[test]
fn durability_parses_what_it_prints() {
    for text in ["always", "never", "interval", "interval:20ms"] {
        assert_eq!(Durability::parse(text).unwrap().to_string(), text);
    }
    assert_eq!(Durability::parse("interval").unwrap(), Durability::Interval(std::time::Duration::from_millis(5)));
    let error = Durability::parse("sometimes").unwrap_err();
    assert!(error.contains("always, interval"), "{error}");
}

#[test]
fn a_cancelled_replay_stops_before_the_next_block_instead_of_scanning_for_a_match() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(dir.path(), config(Durability::Never, 64 << 20)).unwrap();
    // Stream "rare" has the first and the last of five blocks' records; the rest is "busy".
    let total = 5 * segment::BLOCK_FRAMES;
    let events: Vec<Event> = (0..total).map(|i| event(i * 5, "s")).collect();
    let batch: Vec<Append<'_>> = events
        .iter()
        .enumerate()
        .map(|(i, event)| Append {
            stream: if i == 0 || i as u64 == total - 1 { "rare" } else { "busy" },
            expected: Expected::Any,
            event,
        })
        .collect();
    log.append_batch(&batch).unwrap();
    let rare = || ReplayFilter { streams: vec!["rare".into()], ..Default::default() };
    let all: Vec<u64> = log.replay(rare()).map(|r| r.unwrap().position).collect();
    assert_eq!(all, [0, total - 1], "without cancellation the scan finds both");
    // Cancelled once the first match is seen: the scan ends at the next block.
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
    let flag = std::sync::Arc::clone(&seen);
    let mut replay = log.replay(rare()).until_cancelled(move || flag.load(std::sync::atomic::Ordering::Relaxed));
    assert_eq!(replay.next().unwrap().unwrap().position, 0);
    seen.store(true, std::sync::atomic::Ordering::Relaxed);
    assert!(replay.next().is_none(), "the scan stopped");
}

#[test]
fn a_missing_middle_segment_fails_open_with_the_gap() {
    let dir = tempfile::tempdir().unwrap();
    let segments = build_segments(dir.path(), 200);
    assert!(segments.len() >= 3, "need several segments, got {}", segments.len());
    std::fs::remove_file(&segments[segments.len() / 2]).unwrap();
    let error = EventLog::open(dir.path(), config(Durability::Never, 4_096)).unwrap_err();
    assert!(matches!(error, Error::Recovery(RecoveryError::Gap { .. })), "{error}");
}

/// Segments of more frames than the reader of `EventLog::open` hands over at a time.
const BIG_SEGMENT: u64 = 8 << 20;

/// A log of `total` records over `streams` streams in segments of [`BIG_SEGMENT`]; each
/// stream's next sequence.
fn build_big(dir: &Path, streams: &[String], total: u64) -> Vec<u64> {
    let mut next = vec![1u64; streams.len()];
    let log = EventLog::open(dir, config(Durability::Never, BIG_SEGMENT)).unwrap();
    for n in 0..total {
        let s = (n * 31 % streams.len() as u64) as usize;
        log.append(&streams[s], Expected::Seq(next[s] - 1), &event(n, &streams[s])).unwrap();
        next[s] += 1;
    }
    let segments = segment::list(dir).unwrap();
    assert!(segments.len() >= 2, "several segments: {segments:?}");
    assert!(segments[1].0 > 2 * SCANNED_CHUNK as u64, "a segment of several chunks: {segments:?}");
    next
}

#[test]
fn reopening_a_log_of_many_segments_and_streams_restores_every_stream_head() {
    // Segments of several chunks of frames, many streams: the heads indexed on open take the
    // next append of each stream at exactly its next sequence.
    let dir = tempfile::tempdir().unwrap();
    let streams: Vec<String> = (0..97).map(|n| format!("asset-{n}")).collect();
    let total = 100_000;
    let next = build_big(dir.path(), &streams, total);
    let log = EventLog::open(dir.path(), config(Durability::Never, BIG_SEGMENT)).unwrap();
    assert_eq!(log.next_position(), total);
    for (s, stream) in streams.iter().enumerate() {
        assert_eq!(log.stream_seq(stream), next[s] - 1, "{stream}");
        log.append(stream, Expected::Seq(next[s] - 1), &event(total + s as u64, stream)).unwrap();
    }
    assert_eq!(log.read_stream(&streams[5], 1).unwrap().len() as u64, next[5]);
}

#[test]
fn a_stream_sequence_that_does_not_follow_fails_open_naming_the_record_while_the_reader_is_mid_segment() {
    // A retired stream's remembered sequence ahead of its first record: the indexing thread
    // fails on the first record of the first segment while the reader has chunks to go.
    let dir = tempfile::tempdir().unwrap();
    let streams: Vec<String> = (0..97).map(|n| format!("asset-{n}")).collect();
    build_big(dir.path(), &streams, 100_000);
    std::fs::write(dir.path().join(RETIRED_FILE), "999 asset-0\n").unwrap();
    // Without a heads checkpoint, every record is indexed and checked.
    std::fs::remove_file(dir.path().join(checkpoint::CHECKPOINT_FILE)).unwrap();
    let error = EventLog::open(dir.path(), config(Durability::Never, BIG_SEGMENT)).unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, Error::Recovery(RecoveryError::Corrupt { .. })), "{text}");
    let first = &segment::list(dir.path()).unwrap()[0].1;
    let name = first.file_name().unwrap().to_str().unwrap();
    let offset = format!("offset {}", segment::HEADER_LEN);
    assert!(text.contains(name) && text.contains(&offset) && text.contains("expected 1000"), "{text}");
}

/// The position the heads checkpoint in `dir` covers (it must be there and verify).
fn checkpoint_covers(dir: &Path) -> u64 {
    match checkpoint::read(dir) {
        checkpoint::Read::Found(found) => found.covered,
        other => panic!("no usable heads checkpoint in {}: {other:?}", dir.display()),
    }
}

/// Every stream's head as the log answers it: (stream, last sequence, its records' positions).
fn heads_of(log: &EventLog, streams: &[String]) -> Vec<(String, u64, Vec<u64>)> {
    streams
        .iter()
        .map(|s| {
            let positions = log.read_stream(s, 1).unwrap().iter().map(|r| r.position).collect();
            (s.clone(), log.stream_seq(s), positions)
        })
        .collect()
}

/// A copy of the log's files as they are now: what a crash of the process would leave.
fn crash_image(from: &Path, to: &Path) {
    for entry in std::fs::read_dir(from).unwrap() {
        let entry = entry.unwrap();
        let target = to.join(entry.file_name());
        if entry.file_type().unwrap().is_dir() {
            std::fs::create_dir_all(&target).unwrap();
            crash_image(&entry.path(), &target);
        } else {
            std::fs::copy(entry.path(), &target).unwrap();
        }
    }
}

#[test]
fn closing_writes_a_heads_checkpoint_and_a_crash_after_more_appends_indexes_them_on_top_of_it() {
    let dir = tempfile::tempdir().unwrap();
    let streams: Vec<String> = (0..97).map(|n| format!("asset-{n}")).collect();
    let total = 100_000;
    build_big(dir.path(), &streams, total);
    assert_eq!(checkpoint_covers(dir.path()), total, "closing checkpoints every record");
    let log = EventLog::open(dir.path(), config(Durability::Never, BIG_SEGMENT)).unwrap();
    for n in 0..300 {
        let stream = &streams[(n * 7 % 13) as usize];
        log.append(stream, Expected::Any, &event(total + n, stream)).unwrap();
    }
    log.append("a-new-stream", Expected::Seq(0), &event(total + 300, "a-new-stream")).unwrap();
    let mut all = streams.clone();
    all.push("a-new-stream".into());
    let live = heads_of(&log, &all);
    let image = tempfile::tempdir().unwrap();
    crash_image(dir.path(), image.path());
    assert_eq!(checkpoint_covers(image.path()), total, "the crash image holds the checkpoint from before");
    let reopened = EventLog::open(image.path(), config(Durability::Never, BIG_SEGMENT)).unwrap();
    assert_eq!(reopened.next_position(), total + 301);
    assert_eq!(heads_of(&reopened, &all), live, "the checkpoint's heads plus the records after it");
    drop(reopened);
    // And the same without any checkpoint: every record indexed.
    std::fs::remove_file(image.path().join(checkpoint::CHECKPOINT_FILE)).unwrap();
    let indexed = EventLog::open(image.path(), config(Durability::Never, BIG_SEGMENT)).unwrap();
    assert_eq!(heads_of(&indexed, &all), live);
}

#[test]
fn a_heads_checkpoint_stands_for_the_records_it_covers() {
    // A retired sequence that contradicts the records is an error when they are indexed (see
    // the test above on sequences), but records the checkpoint covers are not indexed again:
    // the checkpoint's head wins, which shows opening did not index them.
    let dir = tempfile::tempdir().unwrap();
    let streams: Vec<String> = (0..97).map(|n| format!("asset-{n}")).collect();
    let next = build_big(dir.path(), &streams, 100_000);
    std::fs::write(dir.path().join(RETIRED_FILE), "999 asset-0\n").unwrap();
    let log = EventLog::open(dir.path(), config(Durability::Never, BIG_SEGMENT)).unwrap();
    assert_eq!(log.stream_seq("asset-0"), next[0] - 1);
}

#[test]
fn a_roll_writes_the_heads_checkpoint_when_due_and_a_crash_reopens_from_it() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Durability::Never, 4_096);
    cfg.checkpoint_every = Some(Duration::ZERO);
    let log = EventLog::open(dir.path(), cfg.clone()).unwrap();
    for i in 0..200 {
        let stream = STREAMS[(i % 4) as usize];
        log.append(stream, Expected::Any, &event(i, stream)).unwrap();
    }
    log.wait_for_checkpoint_writer();
    let covered = checkpoint_covers(dir.path());
    let bases: Vec<u64> = segment::list(dir.path()).unwrap().iter().map(|(base, _)| *base).collect();
    assert!(covered > 0 && covered < 200, "a roll's checkpoint, not a close's: {covered}");
    assert!(bases.contains(&covered), "it covers exactly the sealed segments: {covered} in {bases:?}");
    let streams: Vec<String> = STREAMS.iter().map(|s| (*s).to_owned()).collect();
    let live = heads_of(&log, &streams);
    let image = tempfile::tempdir().unwrap();
    crash_image(dir.path(), image.path());
    let reopened = EventLog::open(image.path(), cfg).unwrap();
    assert_eq!(reopened.next_position(), 200);
    assert_eq!(heads_of(&reopened, &streams), live);
}

#[test]
fn damage_below_the_checkpointed_position_is_corruption_not_a_torn_tail() {
    let dir = closed_log_of_ten(Durability::Always);
    assert_eq!(checkpoint_covers(dir.path()), 10);
    let tail = tail_segment(dir.path());
    let len = std::fs::metadata(&tail).unwrap().len();
    std::fs::OpenOptions::new().write(true).open(&tail).unwrap().set_len(len - 5).unwrap();
    let error = EventLog::open(dir.path(), config(Durability::Always, 1 << 20)).unwrap_err();
    let text = error.to_string();
    assert!(matches!(error, Error::Recovery(RecoveryError::Corrupt { .. })), "{text}");
    assert!(text.contains("below position 10") && text.contains(checkpoint::CHECKPOINT_FILE), "{text}");
    // Without the checkpoint's word for it, the cut frame is a torn tail.
    std::fs::remove_file(dir.path().join(checkpoint::CHECKPOINT_FILE)).unwrap();
    let log = EventLog::open(dir.path(), config(Durability::Always, 1 << 20)).unwrap();
    assert_eq!((log.next_position(), log.stream_seq("s")), (9, 9));
}

#[test]
fn a_checkpoint_beyond_the_end_of_the_log_means_synced_records_are_missing() {
    let dir = tempfile::tempdir().unwrap();
    let segments = build_segments(dir.path(), 200);
    std::fs::remove_file(segments.last().unwrap()).unwrap();
    let error = EventLog::open(dir.path(), config(Durability::Never, 4_096)).unwrap_err();
    let text = error.to_string();
    assert!(text.contains("synced records are missing") && text.contains("below 200"), "{text}");
}

#[test]
fn a_damaged_heads_checkpoint_is_ignored_and_every_record_indexed() {
    let dir = tempfile::tempdir().unwrap();
    let streams: Vec<String> = STREAMS.iter().map(|s| (*s).to_owned()).collect();
    build_segments(dir.path(), 200);
    let log = EventLog::open(dir.path(), config(Durability::Never, 4_096)).unwrap();
    let expected = heads_of(&log, &streams);
    drop(log);
    let path = dir.path().join(checkpoint::CHECKPOINT_FILE);
    let mut bytes = std::fs::read(&path).unwrap();
    bytes[40] ^= 0x01;
    std::fs::write(&path, &bytes).unwrap();
    std::fs::write(dir.path().join(RETIRED_FILE), "999 sensor_001\n").unwrap();
    // Indexed again from the records, the contradicting retired sequence is found.
    let error = EventLog::open(dir.path(), config(Durability::Never, 4_096)).unwrap_err();
    assert!(error.to_string().contains("expected 1000"), "{error}");
    std::fs::remove_file(dir.path().join(RETIRED_FILE)).unwrap();
    let log = EventLog::open(dir.path(), config(Durability::Never, 4_096)).unwrap();
    assert_eq!(heads_of(&log, &streams), expected);
}

#[test]
fn retention_past_the_heads_checkpoint_removes_it_and_sequences_continue() {
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = config(Durability::Never, 4_096);
    cfg.retention = RetentionPolicy { max_age: None, max_bytes: Some(8_192), require_archive: false };
    let log = EventLog::open(dir.path(), cfg.clone()).unwrap();
    for i in 0..20 {
        log.append("early", Expected::Any, &event(i, "early")).unwrap();
    }
    log.checkpoint().unwrap();
    assert_eq!(checkpoint_covers(dir.path()), 20);
    let stale = std::fs::read(dir.path().join(checkpoint::CHECKPOINT_FILE)).unwrap();
    for i in 20..30 {
        log.append("early", Expected::Any, &event(i, "early")).unwrap();
    }
    for i in 30..300 {
        log.append("late", Expected::Any, &event(i, "late")).unwrap();
    }
    let report = log.apply_retention(Timestamp::from_secs(1_800_000_000)).unwrap();
    assert!(report.first_position > 30, "retention deleted records after the checkpoint: {report:?}");
    assert!(!dir.path().join(checkpoint::CHECKPOINT_FILE).exists(), "the stale checkpoint is removed");
    drop(log);
    assert_eq!(checkpoint_covers(dir.path()), 300, "closing writes a new one");
    let log = EventLog::open(dir.path(), cfg.clone()).unwrap();
    assert_eq!((log.stream_seq("early"), log.stream_seq("late")), (30, 270));
    assert_eq!(log.append("early", Expected::Seq(30), &event(1, "early")).unwrap().seq, 31);
    drop(log);
    // A stale checkpoint found anyway (say, retention's removal lost in a crash) says "early"
    // is at 20, and none of its later records is left to index: it must be ignored.
    std::fs::write(dir.path().join(checkpoint::CHECKPOINT_FILE), &stale).unwrap();
    let log = EventLog::open(dir.path(), cfg).unwrap();
    assert_eq!((log.stream_seq("early"), log.stream_seq("late")), (31, 270));
}
