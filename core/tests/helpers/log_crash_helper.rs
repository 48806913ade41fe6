//! Crash-test helper: `citytwin-log-crash-helper <dir> <writers>` opens the event log in
//! `<dir>` with `Durability::Always` and small segments, then appends from `<writers>`
//! threads (one stream each, so group commit is exercised) and prints `ACK <position>
//! <stream> <seq>` for every append that returned, until it is killed. It stops by itself
//! after 100,000 appends. It writes the heads checkpoint at every segment roll.

use std::io::Write;
use std::sync::{Arc, Mutex};

#[path = "crash_event.rs"]
mod crash_event;

use citytwin_core::log::{Durability, EventLog, Expected, LogConfig};
use crash_event::expected_event;

fn main() {
    let mut args = std::env::args().skip(1);
    let dir = args.next().expect("usage: citytwin-log-crash-helper <dir> <writers>");
    let writers: usize = args.next().and_then(|w| w.parse().ok()).unwrap_or(2);
    // A heads checkpoint at every roll (when none is being written), so kills also land while
    // one is written and reopening starts from one.
    let config = LogConfig {
        durability: Durability::Always,
        segment_bytes: 8 << 10,
        checkpoint_every: Some(std::time::Duration::ZERO),
        ..LogConfig::default()
    };
    let log = EventLog::open(&dir, config).expect("the crash helper opens the log");
    let stdout = Arc::new(Mutex::new(std::io::stdout()));
    std::thread::scope(|scope| {
        for writer in 0..writers {
            let (log, stdout) = (log.clone(), Arc::clone(&stdout));
            scope.spawn(move || {
                let stream = format!("writer-{writer}");
                for _ in 0..100_000 / writers {
                    let seq = log.stream_seq(&stream);
                    let event = expected_event(&stream, seq + 1);
                    let appended = log.append(&stream, Expected::Seq(seq), &event).expect("append");
                    let mut out = stdout.lock().unwrap();
                    writeln!(out, "ACK {} {stream} {}", appended.position, appended.seq).unwrap();
                    out.flush().unwrap();
                }
            });
        }
    });
}
