//! The crash test: a real child process appends with `Durability::Always` and prints every
//! acknowledged position; it is killed with SIGKILL at random moments (seeded), the log is
//! reopened, and every acknowledged event must be there, intact, with nothing after the last
//! good frame. Finally a byte is flipped in a middle segment: open must fail loudly.

use std::collections::BTreeMap;
use std::io::{BufRead, BufReader};
use std::process::{Command, Stdio};

#[path = "../helpers/crash_event.rs"]
mod crash_event;

use citytwin_core::log::{Durability, EventLog, LogConfig, ReplayFilter};
use crash_event::expected_event;

/// SplitMix64, so a failing run replays from its seed.
struct Rng(u64);

impl Rng {
    fn below(&mut self, n: u64) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        (z ^ (z >> 31)) % n
    }
}

fn open(dir: &std::path::Path) -> EventLog {
    let config = LogConfig { durability: Durability::Always, segment_bytes: 8 << 10, ..LogConfig::default() };
    EventLog::open(dir, config).expect("the log reopens after a crash")
}

#[test]
fn sigkill_at_random_moments_loses_no_acknowledged_event() {
    let seed: u64 = std::env::var("CITYTWIN_SEED").ok().and_then(|s| s.parse().ok()).unwrap_or(20_261_128);
    eprintln!("crash test seed {seed} (rerun with CITYTWIN_SEED={seed})");
    let mut rng = Rng(seed);
    let dir = tempfile::tempdir().unwrap();
    // position -> (stream, seq) of every acknowledged append, over all rounds.
    let mut acked: BTreeMap<u64, (String, u64)> = BTreeMap::new();
    let rounds = 24;
    for round in 0..rounds {
        let writers = 1 + rng.below(3);
        let kill_after = rng.below(120);
        let mut child = Command::new(env!("CARGO_BIN_EXE_citytwin-log-crash-helper"))
            .arg(dir.path())
            .arg(writers.to_string())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("the helper starts");
        let mut lines = BufReader::new(child.stdout.take().unwrap()).lines();
        let mut seen = 0;
        while seen < kill_after {
            match lines.next() {
                Some(Ok(line)) => {
                    record_ack(&line, &mut acked);
                    seen += 1;
                }
                _ => break,
            }
        }
        child.kill().expect("SIGKILL the helper");
        child.wait().unwrap();
        // Lines printed before the kill are acknowledgements too.
        for line in lines.map_while(Result::ok) {
            record_ack(&line, &mut acked);
        }

        let log = open(dir.path());
        let context = format!("seed {seed}, round {round}, killed after {kill_after} acks with {writers} writers");
        let records: Vec<_> =
            log.replay(ReplayFilter::default()).collect::<Result<_, _>>().unwrap_or_else(|e| panic!("{context}: {e}"));
        assert_eq!(records.len() as u64, log.next_position(), "{context}: every frame before the end is readable");
        for (i, record) in records.iter().enumerate() {
            assert_eq!(record.position, i as u64, "{context}: positions are gap-free");
            let event = record.event().unwrap_or_else(|e| panic!("{context}: position {i}: {e}"));
            assert_eq!(event, expected_event(&record.stream, record.seq), "{context}: position {i} is intact");
        }
        for (position, (stream, seq)) in &acked {
            let record = records
                .get(*position as usize)
                .unwrap_or_else(|| panic!("{context}: acknowledged position {position} lost"));
            assert_eq!((&record.stream, record.seq), (stream, *seq), "{context}: acknowledged position {position}");
        }
        // Recovery left nothing after the last good frame: a second open truncates nothing.
        let sizes = segment_sizes(dir.path());
        drop(log);
        drop(open(dir.path()));
        assert_eq!(segment_sizes(dir.path()), sizes, "{context}: a second recovery found more to cut");
    }
    assert!(acked.len() > 100, "the rounds acknowledged too few appends to mean anything: {}", acked.len());

    // A flipped byte in a middle segment is corruption, not a torn tail.
    let segments: Vec<_> = segment_sizes(dir.path()).into_keys().collect();
    assert!(segments.len() >= 3, "expected several segments, got {}", segments.len());
    let middle = &segments[segments.len() / 2];
    let mut bytes = std::fs::read(middle).unwrap();
    let at = bytes.len() / 3;
    bytes[at] ^= 0xff;
    std::fs::write(middle, &bytes).unwrap();
    let config = LogConfig { durability: Durability::Always, segment_bytes: 8 << 10, ..LogConfig::default() };
    let error =
        EventLog::open(dir.path(), config).expect_err("a flipped byte in a middle segment must fail open").to_string();
    let name = middle.file_name().unwrap().to_string_lossy();
    assert!(error.contains(&*name) && error.contains("offset"), "the error names the file and offset: {error}");
}

fn record_ack(line: &str, acked: &mut BTreeMap<u64, (String, u64)>) {
    let mut parts = line.split(' ');
    if parts.next() != Some("ACK") {
        return;
    }
    let (Some(position), Some(stream), Some(seq)) = (parts.next(), parts.next(), parts.next()) else {
        return;
    };
    let (Ok(position), Ok(seq)) = (position.parse(), seq.parse()) else {
        return;
    };
    acked.insert(position, (stream.to_owned(), seq));
}

fn segment_sizes(dir: &std::path::Path) -> BTreeMap<std::path::PathBuf, u64> {
    std::fs::read_dir(dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.extension().is_some_and(|e| e == "seg"))
        .map(|p| {
            let len = std::fs::metadata(&p).unwrap().len();
            (p, len)
        })
        .collect()
}
